/*
 * scanner.c - the content scanner, after mm/ksm.c's ksm_do_scan and KSM++.
 *
 * Overview. A thread wakes every sleep_ms and visits batch pages, then
 * sleeps again (a batch below 256 pages is gathered over a few sleeps into
 * one wake-up, at the same pages per second); the batch and the sleep bound
 * its CPU use. Like KSM's
 * pages_to_scan, the batch counts the pages whose content was read: pages
 * not there, merged already, or skipped cost next to nothing and do not
 * count. A whole pass (or 1,024 pages read) that finds next to nothing to
 * do doubles the sleep, up to 32x; a burst of work (merges, zero pages,
 * hints, candidates) restores it, and new hints, memdedupd's candidates
 * and a reap's dozens of merged pages written end such a sleep at once
 * (md__scanner_poke; after a reap, md__scanner_hold keeps the set rate for
 * a pass more). Each visit takes its page from one of
 * two sources:
 *   - the cursor, which walks every registered region page by page (linear
 *     order, like KSM) or jumps to random pages (like ESX), and
 *   - the hints: the bounded circular stack of (address, length) ranges the
 *     VMM's reads just filled, newest first (KSM++): disk content is the
 *     likeliest duplicate, and it is caught before it changes.
 * When a hinted run is done, the 2 MiB huge page it lies in is swept for
 * zero pages (sweep_zero): QEMU backs guest RAM with transparent huge pages,
 * and the untouched rest of the one a read landed in is zero, which no read
 * names. Each huge page is swept once.
 * Of every 8 visits, `ratio` come from hints while there are any, the rest
 * from the cursor, so hints cannot starve the scan of other duplicates. Every
 * 1024 visits the ratio moves one step toward the source that found more
 * merges per visit (between 1 and 7 of 8). A ratio set to 0 turns hints off
 * (and their adaptation): the plain linear or random scan, for comparison.
 *
 * A visit (the page is not frozen yet; nothing here is proof; pages are
 * read through the kernel, the cursor's 64 at a time, see content(), and
 * never once the VMM has discarded memory since the batch's windows were
 * read: the read would fill its hole in, see read_guest()):
 *   0. like ksmd, only pages of anonymous memory that are there are
 *      visited: /proc/self/pagemap says a page never touched or dropped
 *      (not present) or showing the kernel's zero page (present, its frame
 *      the zero page's: pagemap flags it neither anonymous nor file) has
 *      nothing to merge, and dropping it again would only be counted twice;
 *   1. a page still showing a pool page is skipped (already merged);
 *   2. an all-zero page is dropped by md__engine_merge_zero (apart from the
 *      pool: the kernel's zero page needs no pool slot); the linear cursor
 *      drops the zero pages right after it with it (one freeze, one
 *      madvise: the untouched rest of a guest's huge page is such a run)
 *      and steps over them, each counting a quarter of a visit. A page of
 *      one other repeated word (guest kernel memory freed and poisoned
 *      with 0xcc) is mapped from a fill strip of the engine's own pool
 *      (md__engine_merge_fill), with the run after it, in the same way: a
 *      mapping per 16 pages, where the pool's one page of that content
 *      took a mapping per page;
 *   3. the agent's index of image pages (pages the VMM maps from disk
 *      images it reads) is asked first: a page equal to one of them is
 *      mapped from the image after the batch (md__file_source), no pool
 *      page needed - a guest copying files it read, say into a tmpfs; it
 *      is local and cheap, so even a page seen for the first time asks it;
 *   3a. the checksum (XXH3) is compared with the last visit's: a page that
 *      changed is volatile and skipped this time, as is a page's first visit
 *      (counted apart: first_sums, not volatile_skips); pages from hints skip
 *      this filter: the read that just filled them is the one change expected;
 *   4. the index is asked for a pool page with equal content: if there is
 *      one, md__engine_merge freezes, byte-compares and maps it;
 *   5. else the unstable table (this pass's hash -> page, like KSM's
 *      unstable tree) may name another guest page with the same hash: that
 *      one is published into the pool (frozen, copied, compared, mapped
 *      back) and this one merged with it (the merge compares the two);
 *      otherwise this page enters the table. The table is emptied at the end
 *      of a pass, as its entries go stale (see pass_ended()).
 *   With the pool in memdedupd (shared by a domain across processes), 4-5
 *   become: ask the daemon's index, for the whole batch at once, telling it
 *   where each page is; pin what it has (REF) and merge; publish the pages
 *   it says another page has too (its first sighting), and merge them. The
 *   daemon then names the first sighting back to its agent (CANDIDATES),
 *   which visits it at the start of its next batch: both copies merge within
 *   a batch of each other, not a pass. Pages published in cursor order get
 *   consecutive slots; merged as runs, their mappings join into one VMA. A
 *   page the daemon had nothing for ages: the cursor skips it for 1, 3, then
 *   7 passes (KSM's smart scan); its content showing up elsewhere brings it
 *   back as a candidate sooner.
 *
 * The loop can be paused (the thread then blocks until resumed), and its
 * CPU time is capped: after a batch, with c seconds of the thread's CPU
 * since the batch before ended (this batch's, and its sleep's wake-ups),
 * it sleeps at least long enough that c is no more than cpu_percent of
 * the time since the batch began. The
 * daemon's batch and cap are for all its agents together: each takes its
 * share (share_batch, share_cpu).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "log.h"
#include "scanner.h"
#include "sys.h"

/* Visits between two steps of the ratio: 0.4 s at an agent's share of KSM's
 * default rate. At 4,096 the hints of a guest's burst of reads got their
 * share only after the reads had ended. */
#define EPOCH 1024
#define HPAGE ((uintptr_t)2 << 20)	/* a transparent huge page on x86-64 */
/* The cursor's visits in one of the 8 turns of the interleave when they
 * read nothing: as many as a batch allows for each page it reads (see
 * md__scanner_step), so the hints still get their turns within it. */
#define CURSOR_TURN 16
#define GATHER MD_SCAN_PEND	/* pages a wake-up visits at least, when the rate allows */
/* Pages read with fewer than QUIET_FOUND found (1.6 %): slow down. Over
 * 4,096 pages, the five steps down to the slowest rate once guests had
 * converged read 20,480 pages per agent, most of md-scan's time after the
 * convergence (tcpu118 in docs/benchmarks.md). */
#define QUIET_READS 1024
#define QUIET_FOUND 16

/* Made on first use: with memdedupd's pool the daemon keeps this table,
 * and ours would only cost memory (two to four entries of 16 bytes per
 * page of guest RAM: 32-64 MiB for 4 GiB, in a process merging alone). */
static int un_init(struct md__unstable *u, size_t cap)
{
	size_t c = 1024;
	while (c < cap * 2)
		c *= 2;
	u->hash = calloc(c, sizeof(*u->hash));
	u->addr = calloc(c, sizeof(*u->addr));
	u->cap = c;
	return u->hash && u->addr ? 0 : -ENOMEM;
}

/* At the end of a pass, like KSM's unstable tree - but only once a
 * quarter of the table's size in pages was read since: a pass over sparse
 * memory reads little and ends fast, and two hinted copies read in
 * consecutive passes must still meet. A stale entry costs one compare. */
static void pass_ended(struct md__scanner *s)
{
	struct md__unstable *u = &s->un;
	s->st.passes++;
	if (!u->addr || u->reads < u->cap / 4)
		return;
	memset(u->addr, 0, u->cap * sizeof(*u->addr));
	u->reads = 0;
}

/* Returns a page with this hash other than addr, else records addr. The
 * table is lossy when full: a dropped candidate is found next pass. */
static uintptr_t un_find_insert(struct md__unstable *u, uint64_t h, uintptr_t addr)
{
	size_t i = (size_t)h & (u->cap - 1);
	for (size_t k = 0; k < 16; k++, i = (i + 1) & (u->cap - 1)) {
		if (!u->addr[i]) {
			u->hash[i] = h;
			u->addr[i] = addr;
			return 0;
		}
		if (u->hash[i] == h && u->addr[i] != addr)
			return u->addr[i];
		if (u->hash[i] == h)
			return 0;
	}
	return 0;
}

/* Puts addr in place of old as the page of hash h. */
static void un_replace(struct md__unstable *u, uint64_t h, uintptr_t old, uintptr_t addr)
{
	size_t i = (size_t)h & (u->cap - 1);
	for (size_t k = 0; k < 16; k++, i = (i + 1) & (u->cap - 1))
		if (u->hash[i] == h && u->addr[i] == old) {
			u->addr[i] = addr;
			return;
		}
}

int md__scanner_init(struct md__scanner *s, struct md__engine *e, struct md__hints *h)
{
	memset(s, 0, sizeof(*s));
	s->e = e;
	s->hints = h;
	s->batch = 100;
	s->sleep_ms = 20;
	s->ratio = 4;
	s->rng = 0x2545f4914f6cdd1dull;
	return 0;
}

/* The thread's sleeps end early at a wake-up (a stop, a poke, a resume):
 * a count other threads add to, and a futex on it. No descriptor: one in
 * the VMM's table could be closed by the VMM, and its number given to an
 * eventfd or file of the VMM's, which a wake-up would write and a sleep
 * read (its events taken), or poll found always ready (a sleep that
 * spins). A wake-up before a sleep began ends it, as it came after the
 * last one was taken (wakes_seen). */
static void wake_up(struct md__scanner *s)
{
	int saved = errno;	/* on a reading thread of the VMM */
	__atomic_fetch_add(&s->wakes, 1, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &s->wakes, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
	errno = saved;
}

/* Sleeps for *ts at most: 1 if a wake-up ended it (or came before). */
static int sleep_until_woken(struct md__scanner *s, const struct timespec *ts)
{
	uint32_t seen = s->wakes_seen;
	if (__atomic_load_n(&s->wakes, __ATOMIC_SEQ_CST) == seen)
		syscall(SYS_futex, &s->wakes, FUTEX_WAIT_PRIVATE, seen, ts, NULL, 0);
	return __atomic_load_n(&s->wakes, __ATOMIC_SEQ_CST) != seen;
}

/* Takes the wake-ups that came, so the next sleep is whole. */
static void drain_wakes(struct md__scanner *s)
{
	s->wakes_seen = __atomic_load_n(&s->wakes, __ATOMIC_SEQ_CST);
}

static void free_unstable(struct md__scanner *s)
{
	free(s->un.hash);
	free(s->un.addr);
	s->un = (struct md__unstable){ 0 };
}

size_t md__scanner_meta_bytes(const struct md__scanner *s)
{
	size_t n = s->copy ? MD_SCAN_COPY * MD_EPAGE : 0;
	if (s->un.addr)	/* emptied every pass: all of it is touched */
		n += s->un.cap * (sizeof(*s->un.hash) + sizeof(*s->un.addr));
	return n;
}

void md__scanner_free(struct md__scanner *s)
{
	free_unstable(s);
	free(s->copy);
	s->copy = NULL;
}

static uint64_t next_rand(struct md__scanner *s)
{
	s->rng ^= s->rng << 13;
	s->rng ^= s->rng >> 7;
	s->rng ^= s->rng << 17;
	return s->rng;
}

/* A bijection of [0, 2^(2 half)): four Feistel rounds, each mixing one
 * half with a round key (splitmix64's finaliser) into the other. */
static uint64_t feistel(const struct md__scanner *s, uint64_t x)
{
	unsigned h = s->perm.half;
	uint64_t mask = (1ull << h) - 1, l = x >> h, r = x & mask;
	for (int i = 0; i < 4; i++) {
		uint64_t z = r ^ s->perm.key[i];
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		uint64_t t = l ^ (z & mask);
		l = r;
		r = t;
	}
	return (l << h) | r;
}

/* Random order: a pass visits every page once, in the order of a fresh
 * permutation of all regions' pages, like ESX's random sampling without
 * its repeats: independent draws left a third of the pages unvisited each
 * pass. The permutation is a Feistel network over the smallest domain of
 * an even number of bits that holds them, walked until it gives a page
 * (under 4 steps on average): k -> first + k * stride mod total visited
 * every page too, but one stride apart in turn. Pages drawn from all
 * regions at once, not a region first: a region drawn first gave each
 * page of a ROM as many visits as all of RAM's together. A region table
 * that changes mid-pass (layout_gen) starts it again with a new
 * permutation. */
static uintptr_t random_next(struct md__scanner *s)
{
	struct md__engine *e = s->e;
	/* A new pass (total 0), or the region table changed: counted again,
	 * not at every visit. */
	if (!s->perm.total || e->layout_gen != s->perm.gen) {
		uint64_t total = 0;
		for (size_t i = 0; i < e->nregions; i++)
			total += (e->regions[i].end - e->regions[i].start) / MD_EPAGE;
		s->perm.total = total;
		s->perm.gen = e->layout_gen;
		unsigned bits = 0;
		while (bits < 64 && (total - 1) >> bits)
			bits++;
		s->perm.half = (bits + 1) / 2;
		for (int i = 0; i < 4; i++)
			s->perm.key[i] = next_rand(s);
		/* Changed mid-pass, the pass starts again, uncounted: the
		 * rest of a new permutation is not the pages the old one had
		 * not reached, and a pass counted in full_scans left a
		 * quarter of them unvisited. */
		s->perm.done = 0;
	}
	/* Cycle walking: from an index below total, the network's orbit
	 * comes back below total, and distinct indexes reach distinct pages. */
	uint64_t total = s->perm.total, k = s->perm.done;
	do
		k = feistel(s, k);
	while (k >= total);
	if (++s->perm.done >= total) {
		pass_ended(s);	/* as many visits as pages */
		s->perm.done = 0;
		s->perm.total = 0;	/* a fresh permutation next */
	}
	size_t i = 0;
	for (uint64_t np; k >= (np = (e->regions[i].end - e->regions[i].start) / MD_EPAGE); i++)
		k -= np;
	return e->regions[i].start + k * MD_EPAGE;
}

/* The region holding a, else the lowest above it; nregions if none. */
static size_t region_from(const struct md__engine *e, uintptr_t a)
{
	size_t next = e->nregions;
	for (size_t i = 0; i < e->nregions; i++)
		if (e->regions[i].end > a && (next == e->nregions || e->regions[i].start < e->regions[next].start))
			next = i;
	return next;
}

/* The cursor's next page, or 0 when nothing is registered. The linear
 * cursor is an address, not a place in the region table: an unregister
 * reorders the table (and splits regions), and a cursor kept as (region,
 * page) then jumped elsewhere, leaving the rest of a region unvisited in a
 * pass that still counted as full. Regions are visited by address; the
 * pass ends with the highest one's last page. */
static uintptr_t cursor_next(struct md__scanner *s)
{
	struct md__engine *e = s->e;
	if (!e->nregions)
		return 0;
	if (s->random_order)
		return random_next(s);
	/* Zero pages dropped with the last one (zero_run keeps this inside
	 * the region). */
	uintptr_t a = s->at + s->zero_ahead * MD_EPAGE;
	s->zero_ahead = 0;
	size_t ri = s->region;
	if (ri >= e->nregions || a < e->regions[ri].start || a >= e->regions[ri].end) {
		ri = region_from(e, a);	/* the regions changed */
		if (ri == e->nregions) {
			/* Past every region: from the lowest one's start. Left
			 * where it was, a went on past them all, and its next
			 * step ended a second pass at once. */
			pass_ended(s);
			a = 0;
			ri = region_from(e, a);
		}
		if (a < e->regions[ri].start)
			a = e->regions[ri].start;
	}
	s->region = ri;
	s->at = a + MD_EPAGE;
	if (s->at >= e->regions[ri].end && region_from(e, s->at) == e->nregions) {
		/* Pages written since they merged are found by the agent's
		 * accounting (md__engine_reap), not here: passes over sparse
		 * memory come many a second. */
		pass_ended(s);
		s->at = 0;
	}
	return a;
}

/* The next hinted page, or 0 when there are no hints. */
static uintptr_t hint_next(struct md__scanner *s)
{
	while (s->cur.len < MD_EPAGE) {
		if (!s->hints || !md__hints_pop(s->hints, &s->cur))
			return 0;
		/* Whole pages only: round the start up, the end down. */
		uintptr_t a = (s->cur.addr + MD_EPAGE - 1) & ~(uintptr_t)(MD_EPAGE - 1);
		uintptr_t end = (s->cur.addr + s->cur.len) & ~(uintptr_t)(MD_EPAGE - 1);
		s->cur.off += a - s->cur.addr;
		s->cur.addr = a;
		s->cur.len = end > a ? end - a : 0;
		if (s->cur.len)
			s->sweep = a & ~(HPAGE - 1);
	}
	uintptr_t a = s->cur.addr;
	s->hint_tag = s->cur.key ? md__read_tag(s->cur.key, s->cur.off) : 0;
	s->cur.addr += MD_EPAGE;
	s->cur.off += MD_EPAGE;
	s->cur.len -= MD_EPAGE;
	return a;
}

/* Tells memdedupd which file pages the reads since the last batch put
 * where, whole pages only (READS), before this batch's lookups: another
 * agent's visit of the same file page can then merge both copies. */
static void report_reads(struct md__scanner *s)
{
	struct md__hint fresh[MD_HINTS_FRESH];
	struct md__read_run run[MD_READS_MAX];
	uint32_t n = 0;
	size_t nf = md__hints_take_fresh(s->hints, fresh, MD_HINTS_FRESH);
	for (size_t i = 0; i < nf; i++) {
		uintptr_t a = (fresh[i].addr + MD_EPAGE - 1) & ~(uintptr_t)(MD_EPAGE - 1);
		uintptr_t end = (fresh[i].addr + fresh[i].len) & ~(uintptr_t)(MD_EPAGE - 1);
		uint64_t off = fresh[i].off + (a - fresh[i].addr);
		while (a < end && !(a >> 47)) {
			size_t np = (end - a) / MD_EPAGE;
			np = np < MD_READ_RUN_PAGES ? np : MD_READ_RUN_PAGES;
			if (off > UINT64_MAX - np * MD_EPAGE)
				break;
			run[n++] = (struct md__read_run){ fresh[i].key, off, a, (uint32_t)np };
			if (n == MD_READS_MAX) {
				md__remote_reads(s->e->remote, run, n);
				n = 0;
			}
			a += np * MD_EPAGE;
			off += np * MD_EPAGE;
		}
	}
	if (n)
		md__remote_reads(s->e->remote, run, n);
}

/* A visited page stayed unique (no pool page, no partner): it ages, and the
 * cursor skips it for 2^age - 1 passes (the smart scan, see merge.h). */
static void page_aged(struct md__engine *e, uintptr_t a)
{
	struct md__eregion *r = md__engine_region(e, a, MD_EPAGE);
	if (!r)
		return;
	size_t i = (a - r->start) / MD_EPAGE;
	r->seen[i] = md__seen_aged(r->seen[i]);
}

/* Merges the pending pages of[0..n) with slot[0..n): adjacent pages whose
 * slots are consecutive too go in one merge, one mapping (the pool hands
 * out consecutive slots to pages published in cursor order). A slot whose
 * page did not merge goes to unpin; a merged page owns its pin. */
static void merge_pending(struct md__scanner *s, const size_t *of, const uint32_t *slot, size_t n,
			  uint32_t *unpin, size_t *nunpin)
{
	unsigned char done[64];
	for (size_t j = 0; j < n;) {
		/* A run of side-by-side guest pages, whatever their slots: one
		 * freeze and one advice for all (md__engine_merge_slots) -
		 * within one region, as the merge refuses a run over two:
		 * regions often lie side by side (a range advised in two
		 * calls, the pieces an unregister leaves). The caller holds
		 * regions_lock. */
		const struct md__eregion *r = md__engine_region(s->e, s->pend_addr[of[j]], MD_EPAGE);
		size_t run = 1;
		while (j + run < n && run < sizeof(done) &&
		       s->pend_addr[of[j + run]] == s->pend_addr[of[j]] + run * MD_EPAGE &&
		       r && s->pend_addr[of[j + run]] < r->end)
			run++;
		md__engine_merge_slots(s->e, (void *)s->pend_addr[of[j]], run, slot + j, done);
		for (size_t q = 0; q < run; q++) {
			size_t k = of[j + q];
			if (!done[q]) {
				unpin[(*nunpin)++] = slot[j + q];
				continue;
			}
			if (s->pend_hinted[k] < 2)	/* candidates are neither source's */
				s->epoch_merges[s->pend_hinted[k]]++;
			if (s->pend_hinted[k] == 2)
				s->st.merged_candidate++;
			else if (s->pend_hinted[k])
				s->st.merged_hint++;
			else
				s->st.merged_scan++;
		}
		j += run;
	}
}

/* Puts the batch's pending pages in address order, so publications take
 * slots in that order and merge_pending maps runs of adjacent pages with
 * consecutive slots at once. In visit order, two reads that a guest's page
 * cache had interleaved page by page (two hinted runs, visited one after
 * the other) took two streams of slots, and every page or two became a
 * mapping of its own (docs/benchmarks.md, ninth session). Insertion sort:
 * at most MD_SCAN_PEND pages, in ascending runs. */
static void sort_pending(struct md__scanner *s)
{
	for (size_t k = 1; k < s->npend; k++) {
		uint64_t a = s->pend_addr[k], h = s->pend_hash[k], t = s->pend_tag[k];
		unsigned char hi = s->pend_hinted[k];
		size_t j = k;
		for (; j > 0 && s->pend_addr[j - 1] > a; j--) {
			s->pend_addr[j] = s->pend_addr[j - 1];
			s->pend_hash[j] = s->pend_hash[j - 1];
			s->pend_tag[j] = s->pend_tag[j - 1];
			s->pend_hinted[j] = s->pend_hinted[j - 1];
		}
		s->pend_addr[j] = a;
		s->pend_hash[j] = h;
		s->pend_tag[j] = t;
		s->pend_hinted[j] = hi;
	}
}

_Static_assert(MD_SCAN_COPY <= MD_COPY_PAGES_MAX, "a copy buffer's worth is one md__copy_own_pages");

/* The cursor's copy buffer, MD_SCAN_COPY pages; NULL if there is no memory. */
static unsigned char *copy_buf(struct md__scanner *s)
{
	if (!s->copy)
		s->copy = aligned_alloc(64, MD_SCAN_COPY * MD_EPAGE);
	return s->copy;
}

/* Copies the n (at most MD_SCAN_COPY) guest pages p[0..n), which pagemap
 * windows read since the engine's discard count was gen showed there, into
 * buf through the kernel (md__copy_own_pages, which points p[] at the
 * copies): 0, or -EAGAIN if the VMM discarded memory since. A hole the VMM
 * made must stay one until it writes there (a balloon's page, one a
 * postcopy destination waits for), and reading it would fill it in: the
 * check and the read are under the merge lock, under which a discard makes
 * its holes and counts itself (md__engine_discard). */
static int read_guest(struct md__scanner *s, uint64_t gen, void *buf, const void **p, size_t n)
{
	int err = -EAGAIN;
	pthread_mutex_lock(&s->e->lock);
	if (__atomic_load_n(&s->e->zap_gen, __ATOMIC_RELAXED) == gen)
		err = md__copy_own_pages(buf, p, n);
	pthread_mutex_unlock(&s->e->lock);
	return err;
}

/* Copies the guest page at addr, which no window of this batch showed
 * (the unstable table's partner, up to a pass old), into buf: 0 if it is
 * there, else -EAGAIN without reading it. Under the merge lock, no discard
 * comes between the check and the read. */
static int read_guest_page(struct md__scanner *s, uintptr_t addr, void *buf)
{
	uint64_t pm = 0;
	const void *p = (const void *)addr;
	int err = -EAGAIN;
	pthread_mutex_lock(&s->e->lock);
	if (md__engine_pagemap(s->e, addr, 1, &pm) == (ssize_t)sizeof(pm) && md__pm_has_page(pm))
		err = md__copy_own_pages(buf, &p, 1);
	pthread_mutex_unlock(&s->e->lock);
	return err;
}

/* After a discard: the window and the copies are stale, the next read of
 * a window holds from now on. */
static void windows_stale(struct md__scanner *s)
{
	s->pm_n = 0;
	s->copy_have = 0;
	s->step_gen = __atomic_load_n(&s->e->zap_gen, __ATOMIC_ACQUIRE);
}

/* Replaces the n (at most MD_SCAN_COPY) pending guest pages p[0..n) by
 * copies in the cursor's copy buffer (read_guest), which then holds no
 * window: the next visit reads its own. Sending a page from guest RAM was
 * our first touch of it. 0, or -errno: p[] still points at guest RAM. */
static int copy_out(struct md__scanner *s, const void **p, size_t n)
{
	s->copy_have = 0;
	return copy_buf(s) ? read_guest(s, s->pend_gen, s->copy, p, n) : -ENOMEM;
}

/* Round trips to memdedupd go without the regions lock (the caller's, for
 * reading): the VMM's munmap or mmap of guest RAM, which takes it for
 * writing, waited for a slow daemon's answers up to the 2 s deadline.
 * What the lock kept holds without it: each pending page is looked up
 * again and merged under the engine's lock, frozen and compared as ever;
 * the windows and copies are read anew; and a batch whose pool changed
 * meanwhile (a reconnect to another daemon, md__engine_remote_connect, is
 * what the lock kept out) is dropped: its slots are the other pool's. */
static void regions_let_go(struct md__scanner *s)
{
	pthread_rwlock_unlock(&s->e->regions_lock);
}

/* 0 if the batch goes on (the same pool), -1 if it is to be dropped. */
static int regions_again(struct md__scanner *s, uint64_t generation)
{
	pthread_rwlock_rdlock(&s->e->regions_lock);
	windows_stale(s);
	s->pm_fresh = 0;
	return !s->e->remote || s->e->remote->generation == generation ? 0 : -1;
}

/* Steps 4-5 with the daemon's pool, for the candidates of a batch:
 * LOOKUP all their hashes at once (with their addresses, so the daemon can
 * tell us when another agent publishes one of them); pin (REF) and merge
 * those the index has; publish those the daemon says another process has
 * too (KSM's unstable tree, kept by the daemon), then merge them with their
 * copies; the rest stayed unique this time and age. */
static void flush_remote(struct md__scanner *s)
{
	struct md__engine *e = s->e;
	struct md__remote *rm = e->remote;
	size_t n = s->npend;
	uint32_t slot1[MD_SCAN_PEND], pin[MD_SCAN_PEND], pub_slot[MD_SCAN_PEND];
	uint64_t pub_hash[MD_SCAN_PEND];
	const void *pub_page[MD_SCAN_PEND];
	size_t npin = 0, npub = 0, pin_of[MD_SCAN_PEND], pub_of[MD_SCAN_PEND];

	sort_pending(s);
	s->npend = 0;
	if (!n || !md__remote_connected(rm))
		return;
	uint64_t gen = rm->generation;
	regions_let_go(s);
	int err = md__remote_lookup_n(rm, s->pend_hash, s->pend_addr, s->pend_tag, (uint32_t)n, slot1);
	if (regions_again(s, gen) || err)
		return;
	for (size_t k = 0; k < n; k++) {
		if (slot1[k] == MD_LOOKUP_PUBLISH) {
			/* Sent unfrozen (copied just before, copy_out):
			 * memdedupd refuses a page that no longer has the
			 * hash of the visit, and the merge's compare decides,
			 * as ever. */
			pub_page[npub] = (const void *)s->pend_addr[k];
			pub_hash[npub] = s->pend_hash[k];
			pub_of[npub++] = k;
		} else if (slot1[k]) {
			pin[npin] = slot1[k] - 1;
			pin_of[npin++] = k;
		} else {
			page_aged(e, s->pend_addr[k]);
		}
	}
	/* Pin all candidates at once; if one was freed meanwhile the daemon
	 * refuses them all, and then they go one by one, as long as a pass
	 * may take (md__rt_more): the rest wait for their next visit. */
	if (npin) {
		regions_let_go(s);
		if (md__remote_ref_n(rm, pin, (uint32_t)npin, +1, gen) != 0) {
			unsigned char ok[MD_SCAN_PEND];
			size_t kept = 0;
			md__remote_ref_each(rm, pin, npin, ok, gen);
			for (size_t j = 0; j < npin; j++)
				if (ok[j]) {
					pin[kept] = pin[j];
					pin_of[kept++] = pin_of[j];
				}
			npin = kept;
		}
		if (regions_again(s, gen))
			return;
	}
	uint32_t unpin[MD_SCAN_PEND];	/* a pending page pins one slot at most */
	size_t nunpin = 0;
	merge_pending(s, pin_of, pin, npin, unpin, &nunpin);
	/* One page per PUBLISH: the daemon then answers with an equal live
	 * page when another agent published the same content meanwhile (it
	 * compares single pages only), so no content is in the pool twice.
	 * A round trip for 64 of them (the copies they are sent from fill the
	 * cursor's buffer): while guests converge, one per page was most of
	 * this thread's wake-ups. */
	size_t npubd = 0;
	int pub_status[MD_SCAN_PEND];
	for (size_t c = 0; c < npub; c += MD_SCAN_COPY) {
		size_t m = npub - c < MD_SCAN_COPY ? npub - c : MD_SCAN_COPY;
		if (copy_out(s, pub_page + c, m) != 0)
			break;	/* the rest waits for their next visit */
		regions_let_go(s);
		err = md__remote_publish_each(rm, pub_hash + c, pub_page + c, (uint32_t)m, pub_slot + c,
					      pub_status + c, gen);
		if (regions_again(s, gen))
			return;
		if (err)
			break;
		for (size_t j = c; j < c + m; j++) {
			/* No room in the pool: aged as a unique page, not sent
			 * again at every pass (4 KiB each, refused each time)
			 * while the pool stays full. */
			if (pub_status[j] == -ENOSPC) {
				s->st.pool_full++;
				page_aged(s->e, s->pend_addr[pub_of[j]]);
			}
			if (pub_status[j])
				continue;
			s->st.published++;
			pub_slot[npubd] = pub_slot[j];
			pub_of[npubd++] = pub_of[j];
		}
	}
	/* The pages may have changed since they were copied: the compare
	 * under write-protection decides, as always. */
	merge_pending(s, pub_of, pub_slot, npubd, unpin, &nunpin);
	if (nunpin) {
		regions_let_go(s);
		md__engine_unref_n(s->e, unpin, nunpin, gen);	/* one refused slot keeps no other */
		regions_again(s, gen);
	}
}

/* Step 0 of a visit: a page of anonymous memory that is there and is not
 * the kernel's zero page (pagemap flags that one neither anonymous nor file:
 * only its frame tells). */
static int worth_reading(const struct md__engine *e, uint64_t pm)
{
	return (pm & MD_PM_PRESENT) && !(pm & MD_PM_FILE) &&
	       !(e->zero_pfn && (pm & MD_PM_PFN) == e->zero_pfn);
}

/* Reads the pagemap window: entries for up to 256 pages from a, short of
 * end. Returns how many it holds (0: none, the read failed). */
static size_t read_window(struct md__scanner *s, uintptr_t a, uintptr_t end)
{
	size_t n = (end - a) / MD_EPAGE;
	n = n < 256 ? n : 256;
	ssize_t got = md__engine_pagemap(s->e, a, n, s->pm);
	s->pm_base = a;
	s->pm_n = got > 0 ? (size_t)got / sizeof(uint64_t) : 0;
	return s->pm_n;
}

/* Where a pagemap window from page i of r should end: after the last of
 * the next 256 pages a visit may read (not merged, and for the cursor not
 * skipped this pass), page i itself at least. Reading a window walks the
 * page tables entry by entry and mapping by mapping, and once guests have
 * converged every merged page is a mapping of its own: a window over
 * pages no visit reads walks them for nothing. */
static uintptr_t window_end(const struct md__eregion *r, size_t i, int cursor)
{
	size_t np = (r->end - r->start) / MD_EPAGE, last = i;
	size_t lim = np - i > 256 ? i + 256 : np;
	for (size_t k = i + 1; k < lim; k++)
		if (!MD_REF_BUSY(__atomic_load_n(&r->ref[k], __ATOMIC_RELAXED)) &&
		    !(cursor && MD_SEEN_SKIP(r->seen[k])))
			last = k;
	return r->start + (last + 1) * MD_EPAGE;
}

/* Page a's copy if the cursor's last read has it, else NULL. The copies
 * lie side by side, in address order, the pages not read left out. */
static const void *copied(const struct md__scanner *s, uintptr_t a)
{
	size_t k = (a - s->copy_base) / MD_EPAGE;
	if (a < s->copy_base || k >= MD_SCAN_COPY || !(s->copy_have >> k & 1))
		return NULL;
	return s->copy + (size_t)__builtin_popcountll(s->copy_have & ((1ull << k) - 1)) * MD_EPAGE;
}


/* The content of page a of r (in the pagemap window): a copy read through
 * the kernel (read_guest), for the cursor together with the next pages of
 * the window a visit may read; NULL if that fails (the VMM discarded
 * memory since the batch began, say): the page waits for its next visit.
 * On some machines our first touch of a page of a huge page that a merge
 * split costs 4.6 us (a shadow page-table fault under the hypervisor), the
 * copy 0.43 us (`build/ptcost`, docs/benchmarks.md): half the scanner's
 * CPU there. Only pages pagemap shows present are read: the kernel's read
 * of an absent one would populate guest RAM. Never proof: a merge compares
 * under write-protection. */
/* Who reads a page through content(): a visit (its `hinted`), or a run of
 * pages of one word after a visit's page (fills_at). */
enum { READ_CURSOR, READ_HINT, READ_CANDIDATE, READ_RUN };

/* 1 if the pagemap window holds page pg. */
static int in_window(const struct md__scanner *s, uintptr_t pg)
{
	return pg >= s->pm_base && pg < s->pm_base + s->pm_n * MD_EPAGE;
}

static const void *content(struct md__scanner *s, const struct md__eregion *r, uintptr_t a, int who)
{
	/* A hint's page was just filled by a read: never a copy made before. */
	const void *c = who == READ_HINT ? NULL : copied(s, a), *p[MD_SCAN_COPY];
	if (c || !copy_buf(s))
		return c;
	size_t i = (a - r->start) / MD_EPAGE, np = (r->end - r->start) / MD_EPAGE;
	/* Random order, a hint, a candidate: the next visit is elsewhere. A
	 * run takes every page that is there; the cursor leaves out the
	 * pages it skips this pass. */
	size_t lim = who == READ_RUN || (who == READ_CURSOR && !s->random_order) ? MD_SCAN_COPY : 1;
	for (int tries = 0; tries < 2; tries++) {
		uint64_t want = 0;
		size_t n = 0, w = (a - s->pm_base) / MD_EPAGE;
		for (size_t k = 0; k < lim && w + k < s->pm_n && i + k < np; k++) {
			if (k && (MD_REF_BUSY(r->ref[i + k]) ||
				  (who == READ_CURSOR && MD_SEEN_SKIP(r->seen[i + k])) ||
				  !worth_reading(s->e, s->pm[w + k])))
				continue;
			want |= 1ull << k;
			p[n++] = (const void *)(a + k * MD_EPAGE);
		}
		s->copy_base = a;
		s->copy_have = n && read_guest(s, s->step_gen, s->copy, p, n) == 0 ? want : 0;
		if (s->copy_have)
			return s->copy;
		/* The VMM discarded memory since the window: a fresh one, and
		 * the page once more if it is still there. */
		windows_stale(s);
		if (!read_window(s, a, window_end(r, i, who == READ_CURSOR)) || !worth_reading(s->e, s->pm[0]))
			break;
	}
	return NULL;
}

/* How many pages from a (inside the pagemap window, in r) are word
 * repeated and may be merged as such: present anonymous pages no merge
 * holds. At most max. */
static size_t fills_at(struct md__scanner *s, const struct md__eregion *r, uintptr_t a, size_t max,
		       uint64_t word)
{
	size_t i = (a - r->start) / MD_EPAGE, n = 0;
	for (; n < max && !MD_REF_BUSY(r->ref[i + n]); n++) {
		uintptr_t pg = a + n * MD_EPAGE;
		/* content() may have read a window of its own (a discard). */
		if (!in_window(s, pg) || !worth_reading(s->e, s->pm[(pg - s->pm_base) / MD_EPAGE]))
			break;
		const void *c = content(s, r, pg, READ_RUN);
		if (!c || !md__page_is_filled(c, word))
			break;
	}
	return n;
}

/* How many pages from the page a of word repeated, which the cursor found,
 * are the same and may be taken with it: at most 256 in all, and short of
 * the region's last page (so the cursor can step over them without
 * leaving the region). */
static size_t fill_run(struct md__scanner *s, const struct md__eregion *r, uintptr_t a, uint64_t word)
{
	size_t i = (a - r->start) / MD_EPAGE, np = (r->end - r->start) / MD_EPAGE;
	size_t max = i + 2 < np ? np - i - 2 : 0;
	return 1 + fills_at(s, r, a + MD_EPAGE, max < 255 ? max : 255, word);
}

/* Pages [a, a + n) of r, all word repeated (not zero): those that were so
 * at their last visit too are mapped from a fill strip, the others only
 * recorded. Unlike zero pages, these pass the volatility filter: a guest
 * poisons the memory it frees with such a word, and hands much of it out
 * again soon (taken at first sight, a thousand pages per guest were
 * written after their merge). A hint's page is taken at once, as hinted
 * pages are. Returns 0, or -ENOSPC (no strip for one more word). */
static int fill_visit(struct md__scanner *s, struct md__eregion *r, uintptr_t a, const void *page,
		      size_t n, uint64_t word, int hinted)
{
	uint16_t h = (uint16_t)md__page_hash(page);	/* the same for all n */
	size_t first = (a - r->start) / MD_EPAGE;
	/* Not zero pages (any more), mapped from a strip below or not: one
	 * dropped before and written since is no longer a dropped one. */
	for (size_t j = 0; j < n; j++)
		md__engine_present(s->e, r, first + j);
	for (size_t j = 0; j < n;) {
		size_t i = first + j;
		int stable = hinted || (r->seen[i] && r->hash[i] == h);
		size_t k = j + 1;
		while (k < n && (r->seen[first + k] && r->hash[first + k] == h) == stable)
			k++;
		if (stable) {
			int z = md__engine_merge_fill(s->e, (void *)(a + j * MD_EPAGE), k - j, word);
			if (z == -ENOSPC && j == 0)
				return z;	/* else the rest waits for the next pass */
			s->st.filled += z > 0 ? (uint64_t)z : 0;
		} else {
			for (size_t q = j; q < k; q++) {	/* pages, as a visit counts them */
				if (r->seen[first + q])
					s->st.volatile_skips++;
				else
					s->st.first_sums++;
				r->hash[first + q] = h;
				r->seen[first + q] = MD_SEEN;	/* changed: young again */
			}
		}
		j = k;
	}
	return 0;
}

/* sweep_zero's part in region r of the huge page at blk: the zero pages
 * dropped; *checked counts the other pages read. */
static size_t sweep_region(struct md__scanner *s, struct md__eregion *r, uintptr_t blk, size_t *checked)
{
	uintptr_t a = blk > r->start ? blk : r->start;
	uintptr_t end = blk + HPAGE < r->end ? blk + HPAGE : r->end;
	size_t dropped = 0;
	s->pm_n = 0;
	for (uintptr_t pg = a; pg < end;) {
		if (!in_window(s, pg) && !read_window(s, pg, end))
			break;
		size_t run = fills_at(s, r, pg, (end - pg) / MD_EPAGE, 0);
		if (run) {
			int z = md__engine_merge_zero(s->e, (void *)pg, run);
			dropped += z > 0 ? (size_t)z : 0;
			pg += run * MD_EPAGE;
			continue;
		}
		/* Still in the window, unless a read found it stale. */
		if (in_window(s, pg))
			*checked += worth_reading(s->e, s->pm[(pg - s->pm_base) / MD_EPAGE]);
		pg += MD_EPAGE;
	}
	return dropped;
}

/* After a hinted run, its 2 MiB page (KSM++'s hints, extended to zero
 * pages). QEMU backs guest RAM with transparent huge pages: a read lands in
 * a huge page whose untouched rest is zero, and no read names those pages.
 * The sweep drops them, a run per freeze, as the linear cursor would, but
 * now. Most data pages fail the zero check at their first bytes; a huge
 * page is swept once (swept[] remembers the last 256). Returns the rate it
 * used: a quarter of a visit per zero page, a sixteenth per other page. */
static size_t sweep_zero(struct md__scanner *s)
{
	struct md__engine *e = s->e;
	uintptr_t blk = s->sweep, *seen = &s->swept[(blk / HPAGE) % 256];
	size_t dropped = 0, checked = 0;

	s->sweep = 0;
	if (*seen == blk)
		return 0;
	*seen = blk;
	s->pm_fresh = 0;	/* the windows below are not the hinted run's */
	/* Every region in it: guest RAM registered in parts may meet there
	 * (the first alone was swept, the hinted page's maybe not). */
	for (size_t ri = 0; ri < e->nregions; ri++)
		if (e->regions[ri].start < blk + HPAGE && e->regions[ri].end > blk)
			dropped += sweep_region(s, &e->regions[ri], blk, &checked);
	s->pm_n = 0;
	s->st.zero += dropped;
	s->st.zero_swept += dropped;
	return (dropped + 3) / 4 + checked / 16;
}

/* Visits one page found by the cursor (hinted 0), a hint (1) or a daemon's
 * candidate (2); returns 1 if it was merged (the remote path counts its
 * merges itself, when the batch's candidates are resolved). *read is set
 * when the page's content was read: only such visits count against the
 * rate, as only pages that are there count in KSM's pages_to_scan. */
/* 1 if the page waits already for the end of this batch (to be merged
 * with the daemon's pool or onto a file page): a candidate or hint visited
 * first, the cursor reaching it after. Queued twice, it was merged twice
 * (a freeze and a mapping for nothing) and counted twice. */
static int queued(const struct md__scanner *s, uintptr_t a)
{
	for (size_t k = 0; k < s->npend; k++)
		if (s->pend_addr[k] == a)
			return 1;
	for (size_t k = 0; k < s->nfm; k++)
		if (s->fm_addr[k] == a)
			return 1;
	return 0;
}

static int visit(struct md__scanner *s, uintptr_t a, int hinted, int *read)
{
	struct md__engine *e = s->e;
	/* The caller holds regions_lock: r cannot go away under us. */
	struct md__eregion *r = md__engine_region(e, a, MD_EPAGE);
	if (!r)
		return 0;
	size_t i = (a - r->start) / MD_EPAGE;
	uint32_t ref = __atomic_load_n(&r->ref[i], __ATOMIC_RELAXED);
	if (MD_REF_BUSY(ref))
		return 0;
	if (!hinted && MD_SEEN_SKIP(r->seen[i])) {
		r->seen[i] = (uint8_t)(r->seen[i] - (1u << 4));
		s->st.skipped++;
		return 0;
	}
	/* A hint names pages a read has just filled, perhaps since the
	 * window was read this batch: it starts a fresh window (once per
	 * hinted run), or the pages would look absent and the hint be lost. */
	int stale = hinted == 1 && s->pm_fresh != a;
	if (stale || !in_window(s, a)) {
		/* Not past the region's end: the window must stay inside it. */
		if (!read_window(s, a, window_end(r, i, !hinted)))
			return 0;
	}
	if (hinted == 1)
		s->pm_fresh = a + MD_EPAGE;	/* the next page of the run is fresh too */
	/* After the cheap refusals (most visits end there), before the read. */
	if (!worth_reading(e, s->pm[(a - s->pm_base) / MD_EPAGE]) || queued(s, a))
		return 0;
	const void *page = content(s, r, a, hinted);
	if (!page)
		return 0;
	*read = 1;
	/* What the read held at: a run's reads after it (fill_run) may find
	 * a discard and move step_gen on, past what this page was seen at. */
	uint64_t read_gen = s->step_gen;
	uint64_t word, filled[MD_EPAGE / sizeof(uint64_t)];
	if (md__page_fill(page, &word)) {
		/* The linear cursor takes the pages that follow with it when
		 * they are the same word, in one freeze, and steps over them:
		 * zero pages are dropped (one madvise), others mapped from a
		 * fill strip (a mapping per 16 pages). */
		size_t n = !hinted && !s->random_order ? fill_run(s, r, a, word) : 1;
		/* The run's reads may have reused the copy buffer. */
		for (size_t k = 0; k < MD_EPAGE / sizeof(uint64_t); k++)
			filled[k] = word;
		page = filled;
		if (!word) {
			int z = md__engine_merge_zero(e, (void *)a, n);
			s->st.zero += z > 0 ? (uint64_t)z : 0;
			if (!hinted)	/* a hint's or candidate's keeps the cursor's */
				s->zero_ahead = n - 1;
			return 0;	/* counted apart, not as a merge */
		}
		if (fill_visit(s, r, a, page, n, word, hinted) == 0) {
			if (!hinted)
				s->zero_ahead = n - 1;
			return 0;
		}
		/* No strip for one more word: a page like any other. */
	}
	/* Not a zero page (any more): one dropped before was written. Not
	 * from the window, which may be older than a drop. */
	md__engine_present(e, r, i);
	uint64_t h = md__page_hash(page);
	int first = !r->seen[i], changed = first || r->hash[i] != (uint16_t)h;
	r->hash[i] = (uint16_t)h;
	if (hinted || changed)
		r->seen[i] = MD_SEEN;	/* just filled or changed: young again */
	/* A page equal to an image page the VMM maps anyway costs nothing
	 * more once it maps that page too: no pool page is needed. Asked
	 * before the volatility filter, so a copy (a file copied into a
	 * tmpfs) merges on its first visit, not a pass later: the index is
	 * local and a miss costs one probe, so boot churn costs nothing more
	 * here (looking every first visit up in memdedupd did: see
	 * docs/benchmarks.md), and the merge freezes and compares as ever. */
	if (s->files.find && s->nfm < MD_SCAN_PEND &&
	    s->files.find(s->files.arg, h, page, &s->fm_cookie[s->nfm])) {
		s->fm_addr[s->nfm++] = a;
		s->st.file_matches++;
		if (hinted < 2)
			s->epoch_merges[hinted]++;
		return 0;
	}
	if (!hinted && changed) {
		/* A first checksum has nothing to have changed from. */
		if (first)
			s->st.first_sums++;
		else
			s->st.volatile_skips++;
		return 0;
	}
	if (e->remote) {
		/* Resolved with the rest of the batch (flush_remote). */
		if (!s->npend)
			s->pend_gen = read_gen;	/* what copy_out checks */
		s->pend_addr[s->npend] = a;
		s->pend_hash[s->npend] = h;
		s->pend_tag[s->npend] = hinted == 1 ? s->hint_tag : 0;
		s->pend_hinted[s->npend++] = (unsigned char)hinted;
		if (s->npend == MD_SCAN_PEND)
			flush_remote(s);
		return 0;
	}
	int64_t slot = md__engine_lookup(e, page, h);
	if (slot >= 0)
		return md__engine_merge(e, (void *)a, 1, (uint32_t)slot) > 0;
	/* No aging here: without the daemon's candidates, two unique pages
	 * skipping on different passes could never meet in the table. */
	if (!s->un.addr) {
		size_t pages = 0;
		for (size_t ri = 0; ri < e->nregions; ri++)
			pages += (e->regions[ri].end - e->regions[ri].start) / MD_EPAGE;
		if (un_init(&s->un, pages) != 0) {
			free_unstable(s);
			return 0;
		}
	}
	uintptr_t other = un_find_insert(&s->un, h, a);
	if (!other) {
		/* Stable and without a partner: KSM's pages_unshared (age 1),
		 * never skipped (see above). */
		r->seen[i] = (uint8_t)MD_SEEN_MAKE(1, 0);
		return 0;
	}
	/* The other page's region may have gone since it was recorded, the
	 * page changed or become a hole of the VMM's (read_guest_page). */
	struct md__eregion *ro = md__engine_region(e, other, MD_EPAGE);
	unsigned char twin[MD_EPAGE];
	if (!ro || MD_REF_BUSY(ro->ref[(other - ro->start) / MD_EPAGE]) ||
	    read_guest_page(s, other, twin) != 0 || memcmp(twin, page, MD_EPAGE) != 0) {
		un_replace(&s->un, h, other, a);	/* this page is the one to meet now */
		return 0;
	}
	uint32_t ns;
	if (md__engine_publish(e, (void *)other, 1, &ns) != 1)
		return 0;
	s->st.published++;
	return md__engine_merge(e, (void *)a, 1, ns) > 0;
}

static void adapt(struct md__scanner *s)
{
	/* Merges per visit of each source, compared without division. */
	uint64_t sv = s->epoch_visits[0], hv = s->epoch_visits[1];
	uint64_t sm = s->epoch_merges[0], hm = s->epoch_merges[1];
	unsigned ratio = __atomic_load_n(&s->ratio, __ATOMIC_RELAXED), to = ratio;
	if (sv + hv < EPOCH || ratio == 0)
		return;
	/* A source without visits loses: with no reads (no hints) the
	 * cursor's merges take the ratio down to 1, and the next reads win
	 * it back an epoch at a step. Holding it instead, when a source had
	 * under 64 visits, made the hints' t90 later (30.2 and 29.8 s against
	 * 21.9 s, `image98`-`image100` in docs/benchmarks.md): the cursor's
	 * larger share during the reads finds the duplicates no read names
	 * sooner. A ratio of 8 (set so to start with) gives the cursor no
	 * visits while hints last: one step down lets it be measured. */
	if (ratio == 8 && hv)
		to = 7;
	else if (hv && hm * (sv ? sv : 1) > sm * hv && ratio < 7)
		to = ratio + 1;
	else if (sv && sm * (hv ? hv : 1) > hm * sv && ratio > 1)
		to = ratio - 1;
	/* Only if no one set the ratio meanwhile (hints turned off, say:
	 * md_agent_set on another thread); that value wins. */
	if (to != ratio)
		__atomic_compare_exchange_n(&s->ratio, &ratio, to, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
	memset(s->epoch_visits, 0, sizeof(s->epoch_visits));
	memset(s->epoch_merges, 0, sizeof(s->epoch_merges));
}

/* What the scanner has done that a quiet host would not make it do. A
 * checksum new since the last visit counts (a page's first checksum, or a
 * volatile skip: one changed since; hinted pages count as hinted):
 * a pass that only takes them merges nothing (the volatility filter), but
 * the next may merge them all. Without first checksums the
 * linear scan of new guests slowed to a crawl before its second pass (63
 * MB saved in 150 s instead of 283 MB: `image51` in docs/benchmarks.md);
 * without changed ones, a second pass over guests that had rewritten
 * their pages since the first slowed it to 32 times its sleep before the
 * third pass that would have merged them (`image100`). A guest's trickle
 * of writes stays under QUIET_FOUND. */
static uint64_t progress(const struct md__scanner *s)
{
	return s->st.merged_scan + s->st.merged_hint + s->st.merged_candidate + s->st.zero +
	       s->st.filled + s->st.published + s->st.hinted + s->st.candidates +
	       s->st.file_matches + s->st.first_sums + s->st.volatile_skips;
}

/* Paused or stopped: a step ends after the visit under way, as kernel
 * KSM's run=0 waits for ksmd's batch only, not for the next. */
static int halted(const struct md__scanner *s)
{
	return __atomic_load_n(&s->paused, __ATOMIC_SEQ_CST) || __atomic_load_n(&s->stop, __ATOMIC_RELAXED);
}

int md__scanner_step(struct md__scanner *s, size_t npages)
{
	int merges = 0;
	size_t k = 0, examined = 0;
	uint64_t passes = s->st.passes;
	/* File pages read since the last batch are offered before this one's
	 * visits (a hinted copy then finds its file page at once). */
	if (s->files.merge)
		s->files.merge(s->files.arg, NULL, NULL, 0);
	/* Hints off (the plain scan), no lookup carries a tag to meet them.
	 * A round trip: before the regions lock (see regions_let_go). */
	if (s->e->remote && s->hints && __atomic_load_n(&s->ratio, __ATOMIC_RELAXED) &&
	    md__remote_connected(s->e->remote))
		report_reads(s);
	/* Taken before the lock too: the agent's thread may hold the
	 * connection for a round trip. */
	uint64_t cand[MD_SCAN_CANDIDATES];
	size_t nc = s->e->remote ? md__remote_take_candidates(s->e->remote, cand, MD_SCAN_CANDIDATES) : 0;
	pthread_rwlock_rdlock(&s->e->regions_lock);
	s->pm_n = 0;	/* the window is as old as the batch at most */
	s->copy_have = 0;	/* and so are the copies */
	/* Before any window is read: a discard done after this stales them
	 * all (read_guest), one done before shows in them. */
	s->step_gen = __atomic_load_n(&s->e->zap_gen, __ATOMIC_ACQUIRE);
	/* First the pages the daemon named: their content was just
	 * published by another agent, a merge is all but certain. An
	 * address is only a guess: visit() finds it registered or not,
	 * and the merge compares under write-protection as ever. They
	 * do not count against the rate: they finish the visit (of
	 * another agent) that found their copy, as KSM merges the
	 * unstable tree's page in the step that scanned its twin; at
	 * most MD_SCAN_CANDIDATES a batch, whatever this agent's own
	 * part of the rate. Bound by that part (a batch of them a batch),
	 * an agent whose visits found nothing, its part cut to an eighth,
	 * merged the copies its peer's visits found at 650 a second
	 * while the peer published 2,600 (docs/benchmarks.md,
	 * fifty-seventh session). */
	for (size_t c = 0; c < nc && !halted(s); c++) {	/* nfm stays within MD_SCAN_PEND */
		int read = 0;
		s->st.candidates++;
		if (cand[c] % MD_EPAGE == 0 && cand[c] == (uintptr_t)cand[c])
			visit(s, (uintptr_t)cand[c], 2, &read);
	}
	/* Pages that are not there, merged already or skipped cost next to
	 * nothing and do not count; the loop still ends after 16 batches'
	 * worth of them, or when a second pass ends in it: a page visited
	 * again within a batch has had no time to change, and at a batch
	 * larger than the memory's pages, with every page merged, a batch
	 * went round it hundreds of times (a quarter of a core, at a test's
	 * 100,000 pages a batch over 2,048 merged pages). */
	size_t held = 0;
	for (; k < npages && examined < 16 * npages && s->nfm < MD_SCAN_PEND && s->st.passes - passes < 2 &&
	       !halted(s);
	     examined++) {
		uintptr_t a = 0;
		int hinted = 0, read = 0;
		/* A batch lets go of the regions every 256 visits, as in a round
		 * trip (see regions_let_go): without memdedupd, or with little
		 * to ask it (a first pass, memory that changes), no round trip
		 * did, and a batch at a high rate held them 100 ms while the
		 * VMM's munmap of guest RAM waited. What is pending is looked
		 * up again when it is sent, as after a round trip; if the pool
		 * changed meanwhile, it is dropped, as there. */
		if (examined - held >= 256) {
			uint64_t gen = s->e->remote ? s->e->remote->generation : 0;
			held = examined;
			regions_let_go(s);
			if (regions_again(s, gen))
				s->npend = 0;
		}
		/* The interleave counts hints' visits and the cursor's turns:
		 * a turn ends at a page read or after CURSOR_TURN visits of
		 * memory it does not read (absent, merged, skipped). Counting
		 * pages read, the cursor's visits over such memory held the
		 * hints off until it read a page again; counting visits, the
		 * cursor crossed it at a visit in 8 and read nothing for 19 s
		 * while hints came (bench-scan-image122). */
		if (s->interleave % 8 < __atomic_load_n(&s->ratio, __ATOMIC_RELAXED) && (a = hint_next(s)) != 0)
			hinted = 1;
		else
			a = cursor_next(s);
		if (!a)
			break;
		int m = visit(s, a, hinted, &read);
		if (hinted || read || ++s->cursor_dry >= CURSOR_TURN) {
			s->interleave++;
			s->cursor_dry = 0;
		}
		if (hinted && s->sweep && s->cur.len < MD_EPAGE)
			k += sweep_zero(s);
		if (!read)
			continue;
		/* A zero page costs a check, a quarter of a visit's hash,
		 * lookup and merge: a run of them counts that much. */
		k += 1 + (hinted ? 0 : (s->zero_ahead + 3) / 4);
		s->un.reads++;
		merges += m;
		s->epoch_visits[hinted]++;
		s->epoch_merges[hinted] += (uint64_t)m;
		if (hinted) {
			s->st.hinted++;
			s->st.merged_hint += (uint64_t)m;
		} else {
			s->st.scanned++;
			s->st.merged_scan += (uint64_t)m;
		}
		adapt(s);
	}
	/* Paused meanwhile: what the batch found waits for the next visits;
	 * a pause answered while these merged. */
	if (halted(s))
		s->npend = s->nfm = 0;
	if (s->npend)
		flush_remote(s);	/* before the pages may go away */
	pthread_rwlock_unlock(&s->e->regions_lock);
	md__engine_send_unrefs(s->e);	/* the batch's merges' and the VMM's, with no lock held */
	if (s->files.merge)
		s->files.merge(s->files.arg, s->fm_addr, s->fm_cookie, s->nfm);
	s->nfm = 0;
	s->st.ratio = __atomic_load_n(&s->ratio, __ATOMIC_RELAXED);
	/* A whole pass, or QUIET_READS pages read, that found next to
	 * nothing to do (fewer than QUIET_FOUND pages merged, dropped,
	 * published, hinted, named or found with a new checksum: a
	 * guest's trickle) doubles the sleep, up to 32x: a quiet host costs
	 * less. 64 done at any time bring the set rate back. By passes
	 * alone (a pass reads every page not merged, at the set rate), the
	 * scanner stayed near the set rate after the guests had converged:
	 * 0.40 ms of CPU a second per agent, against 0.08-0.14 with the
	 * reads counted too (docs/benchmarks.md). */
	uint64_t done = progress(s), reads = s->st.scanned + s->st.hinted;
	unsigned was_idle = __atomic_load_n(&s->idle, __ATOMIC_RELAXED), idle = was_idle;
	if (done - s->pass_progress >= 64) {
		idle = 0;
		s->pass_progress = done;
		s->pass_reads = reads;
	} else if (s->st.passes != passes || reads - s->pass_reads >= QUIET_READS) {
		/* Held at this rate while the cursor goes round to pages a
		 * reap found written (md__scanner_hold): 1,024 quiet reads
		 * before it got there made it slow down again. */
		if (done - s->pass_progress < QUIET_FOUND &&
		    s->st.passes >= __atomic_load_n(&s->hold_pass, __ATOMIC_RELAXED))
			idle += idle < MD_SCAN_IDLE_MAX;
		s->pass_progress = done;
		s->pass_reads = reads;
	}
	/* Not over a poke made meanwhile (new hints): that 0 stands. */
	__atomic_compare_exchange_n(&s->idle, &was_idle, idle, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
	return merges;
}

static uint64_t clock_ns(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

size_t md__scanner_share(size_t batch, unsigned part, uint64_t *sleep_ns)
{
	/* All agents together keep the set rate: a share rounded up to whole
	 * pages sleeps longer in proportion (rounded up alone, 400 agents
	 * under KSM's 100 pages scanned 400 a sleep; rounded down, 100 under
	 * 199 scanned 100). */
	if (!part || part >= MD_SCAN_PART_ALL || !batch)
		return batch;
	size_t mine = (size_t)(((unsigned __int128)batch * part + MD_SCAN_PART_ALL - 1) / MD_SCAN_PART_ALL);
	*sleep_ns = (uint64_t)((unsigned __int128)*sleep_ns * mine * MD_SCAN_PART_ALL / ((unsigned __int128)batch * part));
	return mine;
}

size_t md__scanner_gather(size_t batch, uint64_t *sleep_ns)
{
	/* A small share (KSM's 100 pages split among agents) is gathered
	 * over a few sleeps into one wake-up of about 256 pages: the pages
	 * per second stay those set, and each wake-up, and each round trip
	 * to the daemon, is worth more (they were a third of this thread's
	 * time). Not without a sleep to gather: at sleep_millisecs=0 the
	 * 1 ms yield stays, and a gathered batch scanned up to 8 times the
	 * pages a second of a larger pages_to_scan that needs none. */
	if (!batch || batch >= GATHER || !*sleep_ns)
		return batch;
	size_t k = (GATHER + batch - 1) / batch;
	k = k < 8 ? k : 8;
	*sleep_ns *= k;
	return batch * k;
}

uint64_t md__scanner_capped(uint64_t cpu_ns, uint64_t wall_ns, uint64_t sleep_ns, unsigned cap, unsigned part)
{
	/* The cap is of one core, shared among agents: a part of it is
	 * cap * part percent, not rounded (16 agents under a 10 % cap took
	 * 1 % each, 16 % in all). */
	uint64_t p = part && part < MD_SCAN_PART_ALL ? part : MD_SCAN_PART_ALL;
	if (!cap || (cap >= 100 && p == MD_SCAN_PART_ALL))
		return sleep_ns;
	unsigned __int128 need = (unsigned __int128)cpu_ns * 100 * MD_SCAN_PART_ALL / ((unsigned __int128)cap * p);
	if (need > wall_ns + sleep_ns)
		return need - wall_ns > UINT64_MAX ? UINT64_MAX : (uint64_t)(need - wall_ns);
	return sleep_ns;
}

/* Whether a tunable the last batch was sized by changed since. */
static int tunables_moved(const struct md__scanner *s, unsigned sleep_ms, size_t batch, unsigned nb, unsigned nc)
{
	return __atomic_load_n(&s->sleep_ms, __ATOMIC_RELAXED) != sleep_ms ||
	       __atomic_load_n(&s->batch, __ATOMIC_RELAXED) != batch ||
	       __atomic_load_n(&s->share_batch, __ATOMIC_RELAXED) != nb ||
	       __atomic_load_n(&s->share_cpu, __ATOMIC_RELAXED) != nc;
}

/* The thread's CPU time since *mark, which moves to now; added to
 * st.cpu_ns. Marked at the end of each batch, the CPU a batch is charged
 * is its own and the sleep's before it: the wake-ups of the sleep count
 * against the cap too. Counted inside the batch alone, the cap did not
 * hold: at sleep_millisecs=1 and a 5 % cap, two agents' scanners used
 * 11.5 % of a core, their wake-ups (a sleep's system call, clock reads) uncounted. */
static uint64_t charge(struct md__scanner *s, uint64_t *mark)
{
	uint64_t now = clock_ns(CLOCK_THREAD_CPUTIME_ID), cpu = now - *mark;
	*mark = now;
	__atomic_store_n(&s->st.cpu_ns, s->st.cpu_ns + cpu, __ATOMIC_RELAXED);
	return cpu;
}

/* Paused: sleeps until woken, a second at a time at most,
 * which a resume wakes (md__scanner_poke sees parked), as a stop does.
 * Woken every set sleep to look, a paused scanner cost 4 % of a core at
 * sleep_millisecs=1. parked is set before paused is looked at, and a
 * resume clears paused before it looks at parked: one of the two sees
 * the other. */
static void park(struct md__scanner *s)
{
	__atomic_store_n(&s->parked, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&s->paused, __ATOMIC_SEQ_CST) && !__atomic_load_n(&s->stop, __ATOMIC_RELAXED)) {
		struct timespec ts = { 1, 0 };
		if (sleep_until_woken(s, &ts))
			drain_wakes(s);
	}
	__atomic_store_n(&s->parked, 0, __ATOMIC_SEQ_CST);
}

static void *scan_thread(void *arg)
{
	struct md__scanner *s = arg;
	pthread_setname_np(pthread_self(), "md-scan");
	md__in_agent = 1;	/* for good (sys.h) */
	uint64_t mark = 0;	/* a thread's CPU clock starts at its creation */
	while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED)) {
		if (__atomic_load_n(&s->paused, __ATOMIC_RELAXED)) {
			park(s);
			charge(s, &mark);
			continue;
		}
		unsigned sleep_ms = __atomic_load_n(&s->sleep_ms, __ATOMIC_RELAXED);
		size_t set_batch = __atomic_load_n(&s->batch, __ATOMIC_RELAXED);
		uint64_t sleep_ns = (uint64_t)sleep_ms * 1000000ull;
		uint64_t wall0 = clock_ns(CLOCK_MONOTONIC);
		unsigned nb = __atomic_load_n(&s->share_batch, __ATOMIC_RELAXED);
		unsigned nc = __atomic_load_n(&s->share_cpu, __ATOMIC_RELAXED);
		size_t batch = md__scanner_gather(md__scanner_share(set_batch, nb, &sleep_ns), &sleep_ns);
		/* Marked before paused is looked at, as a pause stores paused
		 * before it looks at stepping (md__scanner_wait_step): one of
		 * the two sees the other. */
		__atomic_store_n(&s->stepping, 1, __ATOMIC_SEQ_CST);
		if (!__atomic_load_n(&s->paused, __ATOMIC_SEQ_CST))
			md__scanner_step(s, batch);
		__atomic_store_n(&s->stepping, 0, __ATOMIC_SEQ_CST);
		uint64_t cpu = charge(s, &mark);
		uint64_t wall = clock_ns(CLOCK_MONOTONIC) - wall0;
		/* The sleep at the set rate, lengthened for the CPU cap: no
		 * hint cuts it short. Idle (the step may have made it so),
		 * the scanner sleeps 2^idle times the set sleep, and that
		 * part new hints end (md__scanner_poke): the pages reads just
		 * filled are the likeliest duplicates, and change soonest. */
		unsigned cap = __atomic_load_n(&s->cpu_percent, __ATOMIC_RELAXED);
		uint64_t floor = md__scanner_capped(cpu, wall, sleep_ns, cap, nc);
		/* The CPU cap's part alone, without the set sleep's: what a
		 * new tunable waits for. Waiting for floor, a sleep_millisecs
		 * set from 5 s to 1 ms took effect only after the 15 s (5 s
		 * gathered) sleep under way (engine_scanner_new_sleep_ends_sleep). */
		uint64_t cap_floor = md__scanner_capped(cpu, wall, 0, cap, nc);
		unsigned idle = __atomic_load_n(&s->idle, __ATOMIC_RELAXED);
		uint64_t total = sleep_ns << idle;
		total = total > floor ? total : floor;
		total = total > 1000000 ? total : 1000000;	/* always yield a little */
		/* Slept in slices of the set sleep, 100 ms to a second: a stop
		 * and a poke (new hints, a resume) end it at once (wake_up;
		 * at a quiet host's 32x, or a long sleep_millisecs, it
		 * lasts minutes, and the agent's thread, which stops us for an
		 * unmerge, answers no lease break while it waits); a new
		 * tunable, or share of them, counts from the cap's part's end,
		 * within a slice. Idle, a second at a time. Each slice is a
		 * wake-up: slices of the set sleep took the CPU cap's part
		 * of the sleep at sleep_millisecs=1 in a thousand of them a
		 * second, 3 % of a core more than the cap. */
		uint64_t slice = sleep_ns < 100000000 ? 100000000 : sleep_ns > 1000000000 ? 1000000000 : sleep_ns;
		if (idle)
			slice = 1000000000;
		uint64_t start = clock_ns(CLOCK_MONOTONIC);
		for (uint64_t slept = 0; slept < total && !__atomic_load_n(&s->stop, __ATOMIC_RELAXED);) {
			uint64_t d = total - slept < slice ? total - slept : slice;
			/* Poked already: no further than the CPU cap's part. */
			if (idle && !__atomic_load_n(&s->idle, __ATOMIC_RELAXED) && floor - slept < d)
				d = floor - slept;
			struct timespec ts = { (time_t)(d / 1000000000ull), (long)(d % 1000000000ull) };
			if (sleep_until_woken(s, &ts))
				drain_wakes(s);
			/* The time slept, not asked: a wake-up comes early. */
			slept = clock_ns(CLOCK_MONOTONIC) - start;
			if (idle && !__atomic_load_n(&s->idle, __ATOMIC_RELAXED) && slept >= floor)
				break;
			/* Not before the CPU cap's part: a share that moves
			 * with every agent that comes or goes would lift it.
			 * A new cap is that part's own measure. */
			unsigned cap_now = __atomic_load_n(&s->cpu_percent, __ATOMIC_RELAXED);
			int cap_moved = cap_now != cap;
			if (cap_moved)
				cap_floor = md__scanner_capped(cpu, wall, 0, cap_now, nc);
			if (slept >= cap_floor && (cap_moved || tunables_moved(s, sleep_ms, set_batch, nb, nc)))
				break;
		}
	}
	charge(s, &mark);	/* the last sleep's */
	return NULL;
}

void md__scanner_poke(struct md__scanner *s)
{
	/* Read first: the reads that push hints are many, the idle spells
	 * few, and a store each time would move the line between cores.
	 * The one that ends a spell wakes the sleep; on a reading thread of
	 * the VMM, whose errno stays as the read left it. */
	int wake = __atomic_load_n(&s->idle, __ATOMIC_RELAXED) && __atomic_exchange_n(&s->idle, 0, __ATOMIC_RELAXED);
	/* A resume (paused cleared before): the thread sleeps until woken
	 * while paused (park). */
	if (__atomic_load_n(&s->parked, __ATOMIC_SEQ_CST) && !__atomic_load_n(&s->paused, __ATOMIC_SEQ_CST) &&
	    __atomic_exchange_n(&s->parked, 0, __ATOMIC_SEQ_CST))
		wake = 1;
	if (wake)
		wake_up(s);
}

int md__scanner_wait_step(struct md__scanner *s, unsigned ms)
{
	uint64_t until = clock_ns(CLOCK_MONOTONIC) + (uint64_t)ms * 1000000ull;
	while (__atomic_load_n(&s->stepping, __ATOMIC_SEQ_CST)) {
		if (clock_ns(CLOCK_MONOTONIC) >= until)
			return -ETIMEDOUT;
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
	return 0;
}

void md__scanner_hold(struct md__scanner *s)
{
	/* Two: the pass under way may have passed the pages already. */
	__atomic_store_n(&s->hold_pass, __atomic_load_n(&s->st.passes, __ATOMIC_RELAXED) + 2, __ATOMIC_RELAXED);
	md__scanner_poke(s);
}

int md__scanner_start(struct md__scanner *s)
{
	s->stop = 0;
	drain_wakes(s);	/* a stop's, or pokes' while stopped */
	int err = md__thread_create(&s->thread, scan_thread, s);
	if (err)
		return err;
	/* Named here too, not only by itself: a look at the process's
	 * threads right after a start finds it by its name. */
	pthread_setname_np(s->thread, "md-scan");
	__atomic_store_n(&s->running, 1, __ATOMIC_SEQ_CST);	/* an unmerge looks without a lock */
	return 0;
}

void md__scanner_stop(struct md__scanner *s)
{
	if (!__atomic_load_n(&s->running, __ATOMIC_SEQ_CST))
		return;
	__atomic_store_n(&s->stop, 1, __ATOMIC_RELAXED);
	wake_up(s);
	pthread_join(s->thread, NULL);
	__atomic_store_n(&s->running, 0, __ATOMIC_SEQ_CST);
}
