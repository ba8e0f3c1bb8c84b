/*
 * ours.c - the address ranges the agent may have a record of, published
 * for calls that must not wait for the agent's lock.
 *
 * Why. An allocator that gives memory back with the public madvise or
 * munmap while holding its own lock (gperftools' tcmalloc, jemalloc) would
 * wait there for the agent's lock, while a thread holding the agent's lock
 * allocates, waiting for the allocator's: a deadlock. Such memory is never
 * guest RAM. The interposed calls ask this set first (md__ours_begin) and
 * go to the kernel plainly, without the lock, for a range none of ours.
 *
 * The set covers at least every region, every range given up to the VMM's
 * userfaultfd, every place of forgotten copies and every engine region
 * (more when they are more ranges than fit: the two closest ranges are
 * joined, or the new one joins its nearest, whichever covers less). It is written under the agent's lock (md__ours_refresh, as the
 * lock is let go) and read under a sequence count.
 *
 * Growing is the dangerous direction: a call that read the old set and goes
 * plainly must be over before the agent acts on a new range (registers it
 * with userfaultfd, maps pages there), or an munmap or a discard would land
 * behind the agent's back. So md__ours_grow(), called before any such step,
 * publishes first and then waits for every plain call begun before (two
 * counts of calls under way, by epoch, as SRCU does: a call that counts
 * itself after the publication reads the new set). Shrinking needs no wait:
 * a stale range only sends a call through the lock, as before.
 */
#include <sched.h>
#include <string.h>
#include <time.h>

#include "agent_internal.h"

/* 1 if [s, e) overlaps a published range: a consistent snapshot. */
static int published_overlaps(const struct md__ours *o, uintptr_t s, uintptr_t e)
{
	for (;;) {
		unsigned seq = __atomic_load_n(&o->seq, __ATOMIC_ACQUIRE);
		if (seq & 1) {
			sched_yield();	/* a writer is between its two stores */
			continue;
		}
		unsigned n = __atomic_load_n(&o->n, __ATOMIC_RELAXED);
		int hit = 0;
		for (unsigned i = 0; i < n && i < MD_OURS_MAX; i++)
			hit |= __atomic_load_n(&o->start[i], __ATOMIC_RELAXED) < e &&
			       __atomic_load_n(&o->end[i], __ATOMIC_RELAXED) > s;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&o->seq, __ATOMIC_RELAXED) == seq)
			return hit;
	}
}

int md__ours_begin(struct md__ours *o, uintptr_t s, uintptr_t e, unsigned *token)
{
	unsigned ep = __atomic_load_n(&o->epoch, __ATOMIC_SEQ_CST) & 1;
	__atomic_add_fetch(&o->plain[ep], 1, __ATOMIC_SEQ_CST);
	/* Counted before the set is read: a writer that did not see this
	 * count published before this read (see drain()). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (e > s && !published_overlaps(o, s, e)) {
		*token = ep;
		return 1;
	}
	__atomic_sub_fetch(&o->plain[ep], 1, __ATOMIC_RELEASE);
	return 0;
}

void md__ours_end(struct md__ours *o, unsigned token)
{
	__atomic_sub_fetch(&o->plain[token & 1], 1, __ATOMIC_RELEASE);
}

int md__ours_none(struct md_agent *a, uintptr_t s, uintptr_t e)
{
	unsigned token;
	if (!md__ours_begin(&a->ours, s, e, &token))
		return 0;
	md__ours_end(&a->ours, token);
	return 1;
}

static void wait_zero(const unsigned *count)
{
	struct timespec ns = { 0, 20000 };
	for (int i = 0; __atomic_load_n(count, __ATOMIC_ACQUIRE); i++) {
		if (i < 16)
			sched_yield();
		else
			nanosleep(&ns, NULL);
	}
}

/* Waits for the plain calls that may have read the set before the last
 * publication: those of the other epoch (counted before the last flip, and
 * perhaps still reading), then, the epoch flipped, this one's. A call
 * counted after either wait saw its count's epoch and read the set after
 * the publication. Writers are one at a time (the agent's lock). */
static void drain(struct md__ours *o)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	unsigned ep = __atomic_load_n(&o->epoch, __ATOMIC_RELAXED) & 1;
	wait_zero(&o->plain[ep ^ 1]);
	__atomic_store_n(&o->epoch, ep ^ 1, __ATOMIC_SEQ_CST);
	wait_zero(&o->plain[ep]);
}

/* A set being built: sorted, disjoint, touching ranges joined. */
struct build {
	unsigned n;
	uintptr_t start[MD_OURS_MAX], end[MD_OURS_MAX];
};

/* Joins the two neighbours of b closest to each other if they are closer
 * than near: 1 if it did (a slot is free then). */
static int join_closest(struct build *b, uintptr_t near)
{
	unsigned k = 0;
	uintptr_t best = UINTPTR_MAX;
	for (unsigned j = 0; j + 1 < b->n; j++)
		if (b->start[j + 1] - b->end[j] < best) {
			best = b->start[j + 1] - b->end[j];
			k = j;
		}
	if (best >= near)
		return 0;
	b->end[k] = b->end[k + 1];
	memmove(&b->start[k + 1], &b->start[k + 2], (b->n - k - 2) * sizeof(b->start[0]));
	memmove(&b->end[k + 1], &b->end[k + 2], (b->n - k - 2) * sizeof(b->end[0]));
	b->n--;
	return 1;
}

/* Adds [s, e). Full, the two ranges closest to each other are joined, the
 * new one among them: more is covered than needed (its calls take the
 * lock), never less, and the least more (joined to its nearest alone, a
 * range far from the others covered the memory between, an allocator's,
 * say). */
static void build_add(struct build *b, uintptr_t s, uintptr_t e)
{
	if (s >= e)
		return;
	unsigned i = 0;
	while (i < b->n && b->end[i] < s)
		i++;	/* the first range ending at or after s */
	if (i == b->n || b->start[i] > e) {
		uintptr_t before = i > 0 ? s - b->end[i - 1] : UINTPTR_MAX;
		uintptr_t after = i < b->n ? b->start[i] - e : UINTPTR_MAX;
		if (b->n == MD_OURS_MAX && join_closest(b, before < after ? before : after)) {
			i = 0;	/* moved: found again */
			while (i < b->n && b->end[i] < s)
				i++;
		}
		if (b->n < MD_OURS_MAX) {
			memmove(&b->start[i + 1], &b->start[i], (b->n - i) * sizeof(b->start[0]));
			memmove(&b->end[i + 1], &b->end[i], (b->n - i) * sizeof(b->end[0]));
			b->start[i] = s;
			b->end[i] = e;
			b->n++;
			return;
		}
		/* The nearer of the ranges before and after it takes it in. */
		if (i == b->n || (i > 0 && s - b->end[i - 1] < b->start[i] - e))
			i--;
	}
	if (s < b->start[i])
		b->start[i] = s;
	if (e > b->end[i])
		b->end[i] = e;
	/* What it now reaches after it joins it (those before end short of
	 * s: the first loop). */
	unsigned j = i + 1;
	while (j < b->n && b->start[j] <= b->end[i]) {
		if (b->end[j] > b->end[i])
			b->end[i] = b->end[j];
		j++;
	}
	memmove(&b->start[i + 1], &b->start[j], (b->n - j) * sizeof(b->start[0]));
	memmove(&b->end[i + 1], &b->end[j], (b->n - j) * sizeof(b->end[0]));
	b->n -= j - i - 1;
}

/* 1 if every range of next lies inside a published range (both sorted,
 * disjoint, touching ones joined). */
static int within_published(const struct md__ours *o, const struct build *next)
{
	unsigned j = 0;
	for (unsigned i = 0; i < next->n; i++) {
		while (j < o->n && o->end[j] <= next->start[i])
			j++;
		if (j == o->n || o->start[j] > next->start[i] || o->end[j] < next->end[i])
			return 0;
	}
	return 1;
}

static int same_as_published(const struct md__ours *o, const struct build *next)
{
	return next->n == o->n && memcmp(next->start, o->start, next->n * sizeof(next->start[0])) == 0 &&
	       memcmp(next->end, o->end, next->n * sizeof(next->end[0])) == 0;
}

/* Publishes next (agent->lock held), waiting for the plain calls under
 * way if it covers anything the last did not. */
static void publish(struct md__ours *o, const struct build *next)
{
	if (same_as_published(o, next))
		return;
	int grows = !within_published(o, next);
	unsigned seq = o->seq;
	__atomic_store_n(&o->seq, seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	for (unsigned i = 0; i < next->n; i++) {
		__atomic_store_n(&o->start[i], next->start[i], __ATOMIC_RELAXED);
		__atomic_store_n(&o->end[i], next->end[i], __ATOMIC_RELAXED);
	}
	__atomic_store_n(&o->n, next->n, __ATOMIC_RELAXED);
	__atomic_store_n(&o->seq, seq + 2, __ATOMIC_RELEASE);
	if (grows)
		drain(o);
}

void md__ours_grow(struct md_agent *a, uintptr_t s, uintptr_t e)
{
	struct md__ours *o = &a->ours;
	struct build next;
	next.n = o->n;
	memcpy(next.start, o->start, o->n * sizeof(o->start[0]));
	memcpy(next.end, o->end, o->n * sizeof(o->end[0]));
	build_add(&next, s, e);
	publish(o, &next);
}

/* What the records' ranges add up to, cheaply: the set is built again
 * only when it moved (or a second passed: an engine region trimmed alone
 * would not move it). */
static uint64_t records_sig(const struct md_agent *a)
{
	uint64_t h = 0xcbf29ce484222325ull;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 0x100000001b3ull)
	for (size_t i = 0; i < a->nregions; i++) {
		MIX(a->regions[i].start);
		MIX(a->regions[i].end);
	}
	for (size_t i = 0; i < a->nhanded; i++) {
		MIX(a->handed[i].start);
		MIX(a->handed[i].end);
	}
	for (size_t i = 0; i < a->forgotten.n; i++) {
		MIX(a->forgotten.start[i]);
		MIX(a->forgotten.end[i]);
	}
	/* The engine's regions change under agent->lock (register_locked). */
	MIX(a->engine ? a->engine->nregions + 1 : 0);
#undef MIX
	return h;
}

void md__ours_refresh(struct md_agent *a)
{
	struct timespec now;
	uint64_t sig = records_sig(a);
	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	if (sig == a->ours.sig && now.tv_sec == a->ours.looked.tv_sec)
		return;
	a->ours.sig = sig;
	a->ours.looked = now;
	struct build next = { 0 };
	for (size_t i = 0; i < a->nregions; i++)
		build_add(&next, a->regions[i].start, a->regions[i].end);
	for (size_t i = 0; i < a->nhanded; i++)
		build_add(&next, a->handed[i].start, a->handed[i].end);
	for (size_t i = 0; i < a->forgotten.n; i++)
		build_add(&next, a->forgotten.start[i], a->forgotten.end[i]);
	/* The engine's regions lie in ours but for one it could not let go
	 * (no memory to split it): agent->lock comes before regions_lock. */
	struct md__engine *en = a->engine;
	if (en) {
		pthread_rwlock_rdlock(&en->regions_lock);
		for (size_t i = 0; i < en->nregions; i++)
			build_add(&next, en->regions[i].start, en->regions[i].end);
		pthread_rwlock_unlock(&en->regions_lock);
	}
	publish(&a->ours, &next);
}
