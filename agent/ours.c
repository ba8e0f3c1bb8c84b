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
 * (more when they are more ranges than fit: a range grows to take in its
 * nearest). It is written under the agent's lock (md__ours_refresh, as the
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
		for (unsigned i = 0; i < n && i < MD_RANGESET_MAX; i++)
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

/* 1 if every range of next lies inside ranges of the published set. */
static int within_published(const struct md__ours *o, const struct md__rangeset *next)
{
	for (size_t i = 0; i < next->n; i++) {
		uintptr_t pos = next->start[i];
		while (pos < next->end[i]) {
			uintptr_t to = pos;
			for (unsigned j = 0; j < o->n; j++)
				if (o->start[j] <= pos && o->end[j] > to)
					to = o->end[j];
			if (to == pos)
				return 0;
			pos = to;
		}
	}
	return 1;
}

static int same_as_published(const struct md__ours *o, const struct md__rangeset *next)
{
	if (next->n != o->n)
		return 0;
	for (size_t i = 0; i < next->n; i++)
		if (next->start[i] != o->start[i] || next->end[i] != o->end[i])
			return 0;
	return 1;
}

/* Publishes next (agent->lock held), waiting for the plain calls under
 * way if it covers anything the last did not. */
static void publish(struct md__ours *o, const struct md__rangeset *next)
{
	if (same_as_published(o, next))
		return;
	int grows = !within_published(o, next);
	unsigned seq = o->seq;
	__atomic_store_n(&o->seq, seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	for (size_t i = 0; i < next->n; i++) {
		__atomic_store_n(&o->start[i], next->start[i], __ATOMIC_RELAXED);
		__atomic_store_n(&o->end[i], next->end[i], __ATOMIC_RELAXED);
	}
	__atomic_store_n(&o->n, (unsigned)next->n, __ATOMIC_RELAXED);
	__atomic_store_n(&o->seq, seq + 2, __ATOMIC_RELEASE);
	if (grows)
		drain(o);
}

void md__ours_grow(struct md_agent *a, uintptr_t s, uintptr_t e)
{
	struct md__ours *o = &a->ours;
	struct md__rangeset next = { .n = o->n };
	for (unsigned i = 0; i < o->n; i++) {
		next.start[i] = o->start[i];
		next.end[i] = o->end[i];
	}
	md__rangeset_add(&next, s, e);
	publish(o, &next);
}

void md__ours_refresh(struct md_agent *a)
{
	struct md__rangeset next = { 0 };
	for (size_t i = 0; i < a->nregions; i++)
		md__rangeset_add(&next, a->regions[i].start, a->regions[i].end);
	for (size_t i = 0; i < a->nhanded; i++)
		md__rangeset_add(&next, a->handed[i].start, a->handed[i].end);
	for (size_t i = 0; i < a->forgotten.n; i++)
		md__rangeset_add(&next, a->forgotten.start[i], a->forgotten.end[i]);
	/* The engine's regions lie in ours but for one it could not let go
	 * (no memory to split it): agent->lock comes before regions_lock. */
	struct md__engine *en = a->engine;
	if (en) {
		pthread_rwlock_rdlock(&en->regions_lock);
		for (size_t i = 0; i < en->nregions; i++)
			md__rangeset_add(&next, en->regions[i].start, en->regions[i].end);
		pthread_rwlock_unlock(&en->regions_lock);
	}
	publish(&a->ours, &next);
}
