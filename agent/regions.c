/*
 * regions.c - the guest RAM the agent may touch, and the per-page record of
 * which pages are mapped from which image.
 *
 * Only memory that asked for merging is registered; everything the agent maps
 * lies inside a region. The owner array is what makes lease breaks safe: it
 * names every page that still shows file content, so all of them can be made
 * private before a writer may change the file.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#include "agent_internal.h"
#include "log.h"
#include "policies.h"
#include "sys.h"

static int region_cmp(const void *x, const void *y)
{
	const struct md__region *a = x, *b = y;
	return a->start < b->start ? -1 : a->start > b->start;
}

/* Whether fork() copies some of region r into the child: a record keeps
 * DONTFORK only where all its memory has it (md__advice_after). */
static int forked(const struct md__region *r)
{
	return !(r->advice & MD_ADV_DONTFORK);
}

int md__regions_forked(struct md_agent *a, uintptr_t start, uintptr_t end)
{
	for (size_t i = 0; i < a->nregions; i++)
		if (a->regions[i].start < end && start < a->regions[i].end && forked(&a->regions[i]))
			return 1;
	return 0;
}

static void regions_publish(struct md_agent *a)
{
	uint64_t bytes = 0;
	int copied = 0;
	for (size_t i = 0; i < a->nregions; i++) {
		bytes += a->regions[i].end - a->regions[i].start;
		copied |= forked(&a->regions[i]);
	}
	md__set(a, MD_CTR_REGIONS, a->nregions);
	md__set(a, MD_CTR_REGISTERED_BYTES, bytes);
	__atomic_store_n(&a->fork_copies_ram, copied, __ATOMIC_RELAXED);
}

int md__agent_ram_overlaps(struct md_agent *a, uintptr_t addr, size_t len)
{
	int hit = 0;
	uintptr_t end = addr + len < addr ? UINTPTR_MAX : addr + len;
	/* Lock-free for memory none of the agent's (the VMM's heap). */
	if (md__ours_none(a, addr, end))
		return 0;
	md__agent_enter(a);
	for (size_t i = 0; i < a->nregions && !hit; i++)
		hit = a->regions[i].start < end && addr < a->regions[i].end;
	md__agent_leave(a);
	return hit;
}

struct md__region *md__region_find(struct md_agent *a, uintptr_t addr, size_t len)
{
	size_t lo = 0, hi = a->nregions;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct md__region *r = &a->regions[mid];
		if (addr < r->start)
			hi = mid;
		else if (addr >= r->end)
			lo = mid + 1;
		else
			return len <= r->end - addr ? r : NULL;
	}
	return NULL;
}

/* Room for one record more than there are, so that a split, which adds
 * one, never needs memory (the records grow here, when a range is added). */
int md__regions_fail_reserve;	/* tests only: see agent_internal.h */

static int regions_reserve(struct md_agent *a, size_t more)
{
	if (a->nregions + more + 1 <= a->regions_cap)
		return 0;
	if (__atomic_load_n(&md__regions_fail_reserve, __ATOMIC_RELAXED) > 0 &&
	    __atomic_sub_fetch(&md__regions_fail_reserve, 1, __ATOMIC_RELAXED) >= 0)
		return -ENOMEM;
	size_t cap = a->regions_cap ? a->regions_cap * 2 : 16;
	while (cap < a->nregions + more + 1)
		cap *= 2;
	struct md__region *n = realloc(a->regions, cap * sizeof(*n));
	if (!n)
		return -ENOMEM;
	a->regions = n;
	a->regions_cap = cap;
	return 0;
}

static void owners_put(struct md__owners *o)
{
	if (--o->refs == 0)
		free(o);
}

void md__owners_set(struct md_agent *a, struct md__region *r, uintptr_t addr, size_t n, uint32_t id)
{
	uint32_t *o = &r->owner[(addr - r->start) / MD_PAGE];
	for (size_t i = 0; i < n; i++) {
		if (o[i] && !id)
			a->owned--;
		else if (!o[i] && id)
			a->owned++;
		o[i] = id;
	}
	if (id)
		a->owner_sets += n;
}

/* The next gap of [*cur, end) that none of the first n regions covers, in
 * [*gs, *ge); 0 when none is left. */
static int next_gap(struct md_agent *a, size_t n, size_t *i, uintptr_t *cur, uintptr_t end, uintptr_t *gs,
		    uintptr_t *ge)
{
	for (; *i < n && *cur < end; ++*i) {
		struct md__region *r = &a->regions[*i];
		if (r->end <= *cur || r->start >= end)
			continue;
		uintptr_t s = *cur;
		*cur = r->end;
		if (r->start > s) {
			*gs = s;
			*ge = r->start;
			++*i;
			return 1;
		}
	}
	if (*cur >= end)
		return 0;
	*gs = *cur;
	*ge = *cur = end;
	return 1;
}

int md__regions_add(struct md_agent *a, uintptr_t start, uintptr_t end, unsigned advice)
{
	/* Parts already registered keep their owner records; only the gaps
	 * between them become new regions. Everything the gaps need is had
	 * first: a failure changes nothing (the VMM's madvise fails whole,
	 * and no part of it shares at read time). */
	size_t n = a->nregions, ngaps = 0, i = 0;
	uintptr_t cur = start, gs, ge;
	while (next_gap(a, n, &i, &cur, end, &gs, &ge))
		ngaps++;
	struct md__owners **o = calloc(ngaps + 1, sizeof(*o));
	int err = !o || regions_reserve(a, ngaps) ? -ENOMEM : 0;
	size_t g = 0;
	for (i = 0, cur = start; !err && next_gap(a, n, &i, &cur, end, &gs, &ge); g++)
		if (!(o[g] = calloc(1, sizeof(**o) + (ge - gs) / MD_PAGE * sizeof(o[g]->id[0]))))
			err = -ENOMEM;
	if (err) {
		for (size_t k = 0; o && k < g; k++)
			free(o[k]);
		free(o);
		return err;
	}
	/* The regions it overlaps take the advice too, as md__advice_after
	 * gives it: DONTFORK over part of one a fork copies leaves it copied
	 * (without it, a fork left its pages shared with images, for a lease
	 * break to change under the child). */
	for (i = 0; i < n; i++) {
		struct md__region *r = &a->regions[i];
		int part = 0;
		r->advice = md__advice_after(r->advice, r->start, r->end, start, end, advice, &part);
	}
	/* The array has room: pushing moves nothing the loop looks at. */
	for (i = 0, cur = start, g = 0; next_gap(a, n, &i, &cur, end, &gs, &ge); g++) {
		o[g]->refs = 1;
		a->regions[a->nregions++] = (struct md__region){ .start = gs, .end = ge, .advice = advice,
								 .owner = o[g]->id, .owners = o[g] };
	}
	free(o);
	qsort(a->regions, a->nregions, sizeof(*a->regions), region_cmp);
	regions_publish(a);
	return 0;
}

int md__regions_remove(struct md_agent *a, uintptr_t start, uintptr_t end)
{
	/* A record must go with its memory (a stale one would make a later
	 * mapping there guest RAM to read-time sharing), and must stay while
	 * its pages may still show an image (a lease break privatizes only
	 * what records name). So a split allocates nothing: its parts share
	 * the owner records, and there is always room for the one record
	 * more that a range inside a region leaves. */
	for (size_t i = 0; i < a->nregions; i++)
		if (a->regions[i].start < start && a->regions[i].end > end &&
		    a->nregions == a->regions_cap && regions_reserve(a, 0) != 0) {
			md__log_once(40, "cannot split a region record (out of memory): "
				     "[%#lx, %#lx) stays registered", (unsigned long)start,
				     (unsigned long)end);
			return -ENOMEM;
		}
	for (size_t i = 0; i < a->nregions; i++) {
		struct md__region *r = &a->regions[i];
		if (r->end <= start || r->start >= end)
			continue;
		struct md__region old = *r;

		/* Its pages inside [start, end) leave the records. */
		uintptr_t lo = old.start > start ? old.start : start, hi = old.end < end ? old.end : end;
		for (size_t p = (lo - old.start) / MD_PAGE; p < (hi - old.start) / MD_PAGE; p++)
			a->owned -= old.owner[p] != 0;
		/* Remove r, then put back what lies outside [start, end),
		 * with the ranges still to advise (clipped when advised). */
		a->regions[i] = a->regions[--a->nregions];
		i--;
		if (old.end > end) {
			struct md__region *n = &a->regions[a->nregions++];
			*n = old;
			n->start = end;
			n->owner = old.owner + (end - old.start) / MD_PAGE;
			n->owners->refs++;
		}
		if (old.start < start) {
			struct md__region *n = &a->regions[a->nregions++];
			*n = old;
			n->end = start;
			n->owners->refs++;
		}
		owners_put(old.owners);
	}
	qsort(a->regions, a->nregions, sizeof(*a->regions), region_cmp);
	regions_publish(a);
	/* Room again for the next split (if not now, it is made then). */
	regions_reserve(a, 0);
	return 0;
}

int md__regions_advise(struct md_agent *a, uintptr_t start, uintptr_t end, unsigned advice)
{
	int partial = 0;
	for (size_t i = 0; i < a->nregions; i++) {
		struct md__region *r = &a->regions[i];
		int part = 0;
		/* The kernel's call that follows reaches the mappings we made
		 * there; the record keeps DONTFORK only where all of it has it,
		 * so a fork copies the region's mappings wherever it copies
		 * some of its memory (md__advice_after). */
		r->advice = md__advice_after(r->advice, r->start, r->end, start, end, advice, &part);
		partial |= part;
	}
	regions_publish(a);
	return partial;
}

void md__apply_advice(struct md_agent *a, const struct md__region *r, uintptr_t addr, size_t len)
{
	md__advise_new_mapping((void *)addr, len, r->advice, a->kernel_ksm);
	md__policy_apply(addr, len);	/* anonymous memory only */
}

/* Image mappings made at read time: their policy was given then
 * (readshare.c), by image. */
static void advise_ranges(struct md_agent *a, const struct md__region *r, const struct md__rangeset *rs)
{
	for (size_t k = 0; k < rs->n; k++) {
		uintptr_t s = rs->start[k] > r->start ? rs->start[k] : r->start;
		uintptr_t e = rs->end[k] < r->end ? rs->end[k] : r->end;
		if (s < e)
			md__advise_new_mapping((void *)s, e - s, r->advice, a->kernel_ksm);
	}
}

/* agent->lock held. */
static void flush_advice_locked(struct md_agent *a)
{
	for (size_t i = 0; i < a->nregions; i++) {
		struct md__region *r = &a->regions[i];
		/* Anonymous parts have the advice already: a no-op for them.
		 * A region split since keeps the ranges: clip them. */
		advise_ranges(a, r, &r->advice_pending);
		r->advice_pending.n = 0;
	}
}

void md__regions_flush_advice_in(struct md_agent *a, uintptr_t start, uintptr_t end)
{
	for (size_t i = 0; i < a->nregions; i++) {
		struct md__region clip = a->regions[i];
		clip.start = clip.start > start ? clip.start : start;
		clip.end = clip.end < end ? clip.end : end;
		if (clip.start < clip.end)
			advise_ranges(a, &clip, &a->regions[i].advice_pending);
	}
}

void md__regions_flush_advice(struct md_agent *a)
{
	md__agent_enter(a);
	flush_advice_locked(a);
	md__agent_leave(a);
}

/* Calls fn on every maximal run of pages in [*at, end) whose owner matches
 * id (0: any image), then clears their owner where fn succeeded: a run it
 * failed on still shows the file. Stops once budget pages were passed to
 * fn, *at moved to the first page not looked at (to end when all were).
 * Returns the pages done. */
typedef int (*run_fn)(struct md_agent *a, struct md__region *r, uintptr_t addr, size_t len);

static uint64_t for_each_run(struct md_agent *a, uintptr_t *at, uintptr_t end, uint32_t id,
			     size_t budget, run_fn fn, int *err)
{
	uint64_t pages = 0;
	for (size_t i = 0; i < a->nregions; i++) {	/* in address order */
		struct md__region *r = &a->regions[i];
		uintptr_t s = *at > r->start ? *at : r->start;
		uintptr_t e = end < r->end ? end : r->end;
		if (s >= e)
			continue;
		size_t p = (s - r->start) / MD_PAGE, pe = (e - r->start) / MD_PAGE;
		while (p < pe) {
			if (!r->owner[p] || (id && r->owner[p] != id)) {
				p++;
				continue;
			}
			if (!budget) {
				*at = r->start + p * MD_PAGE;
				return pages;
			}
			size_t q = p;
			while (q < pe && q - p < budget && r->owner[q] && (!id || r->owner[q] == id))
				q++;
			budget -= q - p;
			int e2 = fn(a, r, r->start + p * MD_PAGE, (q - p) * MD_PAGE);
			if (e2 && !*err)
				*err = e2;
			if (!e2) {
				memset(&r->owner[p], 0, (q - p) * sizeof(*r->owner));
				a->owned -= q - p;
				pages += q - p;
			}
			p = q;
		}
	}
	*at = end;
	return pages;
}

/* Whether this kernel knows MADV_POPULATE_WRITE (Linux 5.14): EINVAL also
 * means a mapping without write permission, where the older kernels'
 * fallback below would fault. Asked once, of a page of our own. */
static int populate_write_known(void)
{
	static int known = -1;
	int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
	if (k < 0) {
		void *p = md__sys_mmap(NULL, MD_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		k = p != MAP_FAILED && md__sys_madvise(p, MD_PAGE, MADV_POPULATE_WRITE) == 0;
		if (p != MAP_FAILED)
			md__sys_munmap(p, MD_PAGE);
		__atomic_store_n(&known, k, __ATOMIC_RELAXED);
	}
	return k;
}

/* A write to each page of [p, p + len) that cannot undo a concurrent
 * guest write to the same word: an atomic add of zero (kernels before
 * 5.14, without MADV_POPULATE_WRITE). */
static void touch_for_write(uintptr_t p, size_t len)
{
	for (uintptr_t end = p + len; p < end; p += MD_PAGE)
		__atomic_fetch_add((volatile uint64_t *)p, 0, __ATOMIC_SEQ_CST);
}

/* Pages the VMM made read-only take no write fault: each of their mappings
 * is copied into anonymous memory aside, given its protection and advice,
 * and moved into place in one step. The lease is still held, so the copy
 * is the content the guest saw; no guest write can race with it. Writable
 * mappings are written (populate: with MADV_POPULATE_WRITE). */
static int replace_read_only(struct md_agent *a, struct md__region *r, uintptr_t addr, size_t len, int populate)
{
	struct md__vma *v;
	size_t n;
	int err = md__range_file_vmas(addr, addr + len, &v, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n && !err; i++) {
		size_t l = v[i].hi - v[i].lo;
		if (v[i].prot & PROT_WRITE) {
			/* Writable: the advice stopped at an earlier mapping
			 * and never reached this one. */
			if (!populate)
				touch_for_write(v[i].lo, l);
			else if (md__sys_madvise((void *)v[i].lo, l, MADV_POPULATE_WRITE) != 0)
				err = -errno;
			continue;
		}
		void *tmp = md__sys_mmap(NULL, l, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (tmp == MAP_FAILED) {
			err = -errno;
			break;
		}
		/* Not even readable (PROT_NONE): readable for the copy, the
		 * VMM reads nothing there meanwhile; the copy takes its place
		 * with the protection it had. */
		if (!(v[i].prot & PROT_READ) && md__sys_mprotect((void *)v[i].lo, l, PROT_READ) != 0) {
			err = -errno;
			md__sys_munmap(tmp, l);
			break;
		}
		memcpy(tmp, (const void *)v[i].lo, l);
		if (md__sys_mprotect(tmp, l, v[i].prot) != 0 ||
		    md__sys_mremap(tmp, l, l, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)v[i].lo) == MAP_FAILED) {
			err = -errno;
			md__sys_munmap(tmp, l);
			if (!(v[i].prot & PROT_READ))	/* as the VMM made it */
				md__sys_mprotect((void *)v[i].lo, l, v[i].prot);
			break;
		}
		md__apply_advice(a, r, v[i].lo, l);
	}
	free(v);
	return err;
}

static int privatize_run(struct md_agent *a, struct md__region *r, uintptr_t addr, size_t len)
{
	/* The copies stay in the image's mapping, untracked from now on. */
	md__rangeset_add(&a->forgotten, addr, addr + len);
	/* A write fault on a private file page copies it; pages the guest has
	 * written already are left as they are, and a guest write racing with
	 * us lands either before the copy (and is copied) or after it. */
	if (md__sys_madvise((void *)addr, len, MADV_POPULATE_WRITE) == 0)
		return 0;
	int err = -errno;
	/* A kernel that knows the advice refuses it (EINVAL) where the VMM
	 * made the pages read-only. */
	if (err == -EINVAL && populate_write_known())
		return replace_read_only(a, r, addr, len, 1);
	if (err != -EINVAL && err != -ENOSYS)
		return err;	/* memory short */
	/* Kernels before 5.14: writes, where the VMM lets us write. */
	return replace_read_only(a, r, addr, len, 0);
}

int md__privatize_fail;	/* tests only: see agent_internal.h */
/* 8 MiB of copies a part (MADV_POPULATE_WRITE); tests lower it
 * (agent_internal.h). */
size_t md__privatize_part_pages = 2048;

int md__privatize(struct md_agent *a, uintptr_t start, uintptr_t end, uint32_t id)
{
	return md__privatize_from(a, &start, end, id, SIZE_MAX);
}

int md__privatize_from(struct md_agent *a, uintptr_t *at, uintptr_t end, uint32_t id, size_t budget)
{
	int err = __atomic_exchange_n(&md__privatize_fail, 0, __ATOMIC_RELAXED);
	if (err) {
		*at = end;	/* as if every run had failed */
		return err;
	}
	uint64_t pages = for_each_run(a, at, end, id, budget, privatize_run, &err);
	md__count(a, MD_CTR_PRIVATIZED, pages);
	if (err)
		md__log_once(24, "making shared pages private failed (%s)%s", strerror(-err),
			     err == -ENOMEM || err == -EAGAIN ? "; a lease break tries again" : "");
	return err;
}

/* Pages mapped from an image that the guest has not written, in the
 * regions fork() copies (forked_only) or in all. */
static uint64_t owned_unwritten(const struct md_agent *a, int forked_only)
{
	uint64_t n = 0, pm[512];
	/* A page the guest wrote is a private copy already: making it
	 * private moves it, a part at a time, and needs no memory more. Any
	 * page pagemap cannot tell about counts as one to copy. */
	int fd = md__proc_open("pagemap", 0);
	for (size_t i = 0; i < a->nregions; i++) {
		const struct md__region *r = &a->regions[i];
		size_t np = (r->end - r->start) / MD_PAGE;
		if (forked_only && !forked(r))
			continue;
		for (size_t p = 0; p < np;) {
			if (!r->owner[p]) {
				p++;
				continue;
			}
			size_t k = p;
			while (k < np && r->owner[k] && k - p < 512)
				k++;
			size_t m = k - p;
			off_t off = (off_t)((r->start / MD_PAGE + p) * sizeof(pm[0]));
			if (fd >= 0 && md__sys_pread(fd, pm, m * sizeof(pm[0]), off) == (ssize_t)(m * sizeof(pm[0])))
				for (size_t j = 0; j < m; j++)
					n += !md__pm_private_anon(pm[j]);
			else
				n += m;
			p = k;
		}
	}
	if (fd >= 0)
		close(fd);
	return n;
}

uint64_t md__owned_unwritten_pages(const struct md_agent *a)
{
	return owned_unwritten(a, 0);
}

int md__room_for_copies(struct md_agent *a, uint64_t pages)
{
	return pages * MD_PAGE + (64u << 20) <= md__memroom_available(&a->memroom);
}

/* A fork whose child gets pages still shared, for why: counted, and said
 * once. */
static void fork_left_shared(struct md_agent *a, const char *why)
{
	md__count(a, MD_CTR_FORK_SHARED, 1);
	md__log_once(130, "the VMM forked with guest RAM not MADV_DONTFORK whose pages shared from the pool "
		     "or an image could not all be made its own first (%s): the child's copy of those may "
		     "change under it (a pool page once this process lets it go or exits, an image's after "
		     "a lease break); counted in fork_shared", why);
}

/* Makes the image pages of the regions fork() copies private, as a lease
 * break does (copies in the image's mapping). NULL, or why some stay. */
static const char *fork_privatize(struct md_agent *a)
{
	uint64_t owned = owned_unwritten(a, 1);
	if (!owned)
		return NULL;
	if (!md__room_for_copies(a, owned))
		return "memory short for the copies";
	int err = 0;
	uint64_t pages = 0;
	for (size_t i = 0; i < a->nregions; i++) {
		uintptr_t at = a->regions[i].start;
		if (forked(&a->regions[i]))
			pages += for_each_run(a, &at, a->regions[i].end, 0, SIZE_MAX, privatize_run, &err);
	}
	md__count(a, MD_CTR_PRIVATIZED, pages);
	return err ? "a copy of an image's page failed" : NULL;
}

int md__regions_before_fork(struct md_agent *a)
{
	/* Not waiting long for the locks: another thread holding one may
	 * wait for a lock the forking thread holds (an allocator's, taken by
	 * its own prepare handler, which runs before ours). A second, where
	 * guest RAM goes to the child: what the locks are held for is its
	 * content. fork() is no cancellation point: cancellation is off until
	 * the locks are let go (here, or md__regions_after_fork). */
	md__cancel_off();
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	int copied = __atomic_load_n(&a->fork_copies_ram, __ATOMIC_RELAXED);
	if (copied) {
		until.tv_sec++;
	} else {
		until.tv_nsec += 100000000;	/* 0.1 s */
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
	}
	if (pthread_mutex_timedlock(&a->lock, &until) != 0) {
		if (copied)
			fork_left_shared(a, "the agent's lock stayed taken for a second");
		md__cancel_on();
		return 0;
	}
	md__in_agent++;
	flush_advice_locked(a);
	copied = 0;
	for (size_t i = 0; i < a->nregions && !copied; i++)
		copied = forked(&a->regions[i]);
	if (!copied) {
		/* QEMU's guest RAM: nothing shared goes to the child. Let go
		 * without md__agent_leave's refresh of our ranges, which
		 * waits for the engine's regions lock, held by a thread that
		 * may wait for the forking thread too (the agent's, freeing
		 * memory as it connects to memdedupd). The flush changes no
		 * record. */
		md__in_agent--;
		pthread_mutex_unlock(&a->lock);
		md__cancel_on();
		return 0;
	}
	/* Under the agent's lock no read maps an image there, nor does a
	 * merge onto an image; under the merge lock, no merge maps the pool:
	 * both held until the child is made. */
	const char *why = fork_privatize(a);
	const char *pool_why = NULL;
	int held = MD_FORK_AGENT_LOCK;
	if (md__scan_fork_prepare(a, &until, &pool_why))
		held |= MD_FORK_ENGINE_LOCK;
	why = why ? why : pool_why;
	if (why)
		fork_left_shared(a, why);
	return held;
}

void md__regions_after_fork(struct md_agent *a, int held, int child)
{
	if (!(held & MD_FORK_AGENT_LOCK))
		return;
	md__in_agent--;
	if (child) {
		md__cancel_on();
		return;	/* the child's agent is gone (it runs plain) */
	}
	if (held & MD_FORK_ENGINE_LOCK)
		md__scan_fork_done(a);
	/* Without md__agent_leave's refresh (see above): the records now
	 * cover no more than before. */
	pthread_mutex_unlock(&a->lock);
	md__cancel_on();
}

static int discard_run(struct md_agent *a, struct md__region *r, uintptr_t addr, size_t len)
{
	void *m = md__sys_mmap((void *)addr, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (m == MAP_FAILED)
		return -errno;
	/* Counted: a balloon discarding page by page splits the image's
	 * mapping, and reads and merges must leave the VMM its room. */
	md__vmas_add(&a->vmas, 2);
	md__apply_advice(a, r, addr, len);
	if (r->advice & MD_ADV_HUGEPAGE)
		md__sys_madvise((void *)addr, len, MADV_HUGEPAGE);
	return 0;
}

int md__discard(struct md_agent *a, uintptr_t start, uintptr_t end)
{
	int err = 0;
	for_each_run(a, &start, end, 0, SIZE_MAX, discard_run, &err);
	if (err)
		md__log_once(41, "cannot replace shared pages by anonymous memory on discard: %s", strerror(-err));
	return err;
}

/* MADV_HUGEPAGE over [lo, hi) where a record says the VMM gave it: an
 * image's mapping made at read time never has it (no advice but the
 * region's DONTFORK and DONTDUMP reaches it), so anonymous memory taking
 * the place of copies there took none from it, and the guest's RAM lost
 * its huge pages for good. */
static void huge_where_recorded(struct md_agent *a, uintptr_t lo, uintptr_t hi)
{
	for (size_t i = 0; i < a->nregions; i++) {
		const struct md__region *r = &a->regions[i];
		uintptr_t s = r->start > lo ? r->start : lo, e = r->end < hi ? r->end : hi;
		if (s < e && (r->advice & MD_ADV_HUGEPAGE))
			md__sys_madvise((void *)s, e - s, MADV_HUGEPAGE);
	}
}

/* Replaces [lo, hi) of the private file mapping v by anonymous memory with
 * v's protection, advice and policy, but for what the engine covers (its
 * discard makes that zeroes). 0 or -errno. */
static int forget_copies(struct md_agent *a, const struct md__vma *v, uintptr_t lo, uintptr_t hi)
{
	for (uintptr_t end = hi; lo < end; lo = hi) {
		hi = end;
		if (a->engine && md__engine_covers(a->engine, lo, end, &hi))
			continue;
		void *m = md__sys_mmap((void *)lo, hi - lo, v->prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (m == MAP_FAILED)
			return -errno;
		md__advise_new_mapping(m, hi - lo, v->advice, v->mergeable);
		md__policy_apply(lo, hi - lo);
		if (v->advice & MD_ADV_HUGEPAGE)
			md__sys_madvise(m, hi - lo, MADV_HUGEPAGE);
		huge_where_recorded(a, lo, hi);
		md__vmas_add(&a->vmas, 2);
		/* Locked as the copies were (MADV_DONTNEED_LOCKED leaves its
		 * range locked); within the limit, as they were before. */
		if ((v->locked & 1) && md__sys_mlock2(m, hi - lo, v->locked & 2 ? MLOCK_ONFAULT : 0) != 0)
			md__log_once(140, "cannot lock again the zeroes of a discard of locked memory: %s",
				     strerror(errno));
	}
	return 0;
}

typedef int (*forgotten_fn)(struct md_agent *a, const struct md__vma *v, uintptr_t lo, uintptr_t hi);

/* Calls fn over each part of [start, end) where the forgotten set says
 * copies may lie, in the pool's mappings (and an image's, with images):
 * beside them, in the range asked, and where the set grew over guest RAM
 * between copies (it holds 32 ranges), a private file mapping is the VMM's
 * own, which the kernel's discard leaves showing its file. Goes on past a
 * failure unless stop; 0 or the first -errno. */
static int walk_forgotten(struct md_agent *a, uintptr_t start, uintptr_t end, int images, int stop,
			  forgotten_fn fn)
{
	if (!md__rangeset_overlaps(&a->forgotten, start, end))
		return 0;
	/* The set covers at least the copies, and after a handover or an
	 * unregister all of guest RAM: a balloon's page-by-page discards
	 * there read smaps each (35 ms a page with 4 GiB resident). */
	if (md__range_no_file_vmas(start, end) == 1)
		return 0;
	struct md__vma *v;
	size_t n;
	int err = md__range_file_vmas(start, end, &v, &n);
	if (err)
		return err;
	const struct md__rangeset *f = &a->forgotten;
	for (size_t i = 0; i < n && !(err && stop); i++) {
		if (!v[i].pool && !(images && md__image_find(a, MD_ANY_DEV, v[i].ino)))
			continue;
		for (size_t k = 0; k < f->n && !(err && stop); k++) {
			uintptr_t lo = v[i].lo > f->start[k] ? v[i].lo : f->start[k];
			uintptr_t hi = v[i].hi < f->end[k] ? v[i].hi : f->end[k];
			int r = lo < hi ? fn(a, &v[i], lo, hi) : 0;
			err = err ? err : r;
		}
	}
	free(v);
	return err;
}

int md__discard_forgotten(struct md_agent *a, uintptr_t start, uintptr_t end)
{
	int err = walk_forgotten(a, start, end, 1, 1, forget_copies);
	if (err)
		md__log_once(42, "cannot replace private copies in file mappings on discard: %s", strerror(-err));
	return err;
}

static int move_copies(struct md_agent *a, const struct md__vma *v, uintptr_t lo, uintptr_t hi)
{
	return md__engine_move_copies(a->engine, v, lo, hi);
}

int md__move_forgotten(struct md_agent *a, uintptr_t start, uintptr_t end)
{
	/* The pool's mappings alone: an image's pages are its page cache's. */
	return a->engine ? walk_forgotten(a, start, end, 0, 0, move_copies) : 0;
}

void md__regions_free(struct md_agent *a)
{
	for (size_t i = 0; i < a->nregions; i++)
		owners_put(a->regions[i].owners);
	free(a->regions);
	a->regions = NULL;
	a->nregions = a->regions_cap = 0;
	a->owned = 0;
}
