/*
 * merge.c - the merge primitive and the engine around it (see merge.h).
 *
 * One merge, with engine->lock held throughout:
 *   1. freeze: UFFDIO_WRITEPROTECT the guest pages. The ioctl returns after
 *      the TLB flush, so from then on no CPU can change them; a writer takes
 *      a write-protect fault and sleeps until the fault thread wakes it.
 *   2. compare every page byte for byte with its pool page.
 *   3. check in /proc/self/pagemap that every page still carries the
 *      write-protect bit: a zap (MADV_DONTNEED by someone who bypassed
 *      md__engine_discard) drops it, and the page could then have been
 *      written unseen.
 *   4. equal runs: mmap(MAP_PRIVATE|MAP_FIXED) the pool's read-only
 *      descriptor over them (not registered for write-protect: a write
 *      there breaks copy-on-write in the kernel, no fault of ours) and
 *      re-apply the region's advice; unequal runs: un-protect (which wakes
 *      their writers).
 * A writer that faulted during 1-4 is woken by the fault thread once the
 * lock is free, and its retried fault finds either the pool mapping (the
 * kernel copies the page, equal to what the writer would have written into,
 * and the write lands in the copy) or the original, writable page.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checksum.h"
#include "log.h"
#include "merge.h"
#include "policies.h"
#include "sys.h"

#define MAX_RUN 512

static uint64_t default_max_vmas(void)
{
	long v = 65530;
	char buf[32];
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		if (n > 0) {
			buf[n] = 0;
			v = atol(buf);
		}
		close(fd);
	}
	/* Leave room for the VMM's own mappings and the agent's read-time
	 * sharing: hitting the limit makes the VMM's next mmap fail. */
	return v > 10000 ? (uint64_t)v - 5000 : (uint64_t)v / 2;
}

/* The frame of the kernel's zero page, as /proc/self/pagemap shows it
 * (0 if it hides frames from us, or if there is none). The zero page is
 * not a normal page, so pagemap flags it neither anonymous-exclusive nor
 * file: only its frame tells a dropped zero page that was read again from
 * a page to visit. Some kernels have no zero page for anonymous memory
 * (a guest kernel booted with pvm_no_zero_page=1): a read fault there
 * allocates a page, which is why two pages are read and must show the same
 * frame. Without one, a dropped page read again is a fresh page of zeroes,
 * visited and dropped again (merge.h: zero_pfn). */
static uint64_t zero_pfn(int pagemap_fd)
{
	uint64_t pm[2] = {0, 0};
	volatile unsigned char *p = md__sys_mmap(NULL, 2 * MD_EPAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if ((void *)p == MAP_FAILED)
		return 0;
	/* Not the huge zero page, whose 4 KiB frames differ. */
	md__sys_madvise((void *)p, 2 * MD_EPAGE, MADV_NOHUGEPAGE);
	(void)p[0];	/* a read fault maps the zero page, where there is one */
	(void)p[MD_EPAGE];
	if (md__sys_pread(pagemap_fd, pm, sizeof(pm), (off_t)((uintptr_t)p / MD_EPAGE * sizeof(pm[0]))) !=
	    (ssize_t)sizeof(pm))
		pm[0] = 0;
	md__sys_munmap((void *)p, 2 * MD_EPAGE);
	uint64_t f = pm[0] & MD_PM_PFN, g = pm[1] & MD_PM_PFN;
	if (!(pm[0] & MD_PM_PRESENT) || !(pm[1] & MD_PM_PRESENT) || !f)
		return 0;
	if (f != g) {
		static int told;
		if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
			md__log("this kernel maps no zero page (read faults allocate): a dropped zero "
				"page read again is a page of its own until the scanner drops it again");
		return 0;
	}
	return f;
}

/* The fault thread: see the lock in merge.h. */
static void on_fault(void *arg, uintptr_t addr)
{
	struct md__engine *e = arg;
	pthread_mutex_lock(&e->lock);
	/* No merge runs now, so the page is no longer frozen on purpose: it
	 * was replaced (its range may not even be registered any more: just
	 * wake the writer) or given back (un-protect is a harmless repeat).
	 * A page no region holds any more may have been handed over since the
	 * fault (the VMM's own userfaultfd, write-protecting for a background
	 * snapshot), and the kernel un-protects a page for any userfaultfd its
	 * mapping is registered with: only wake it. Regions change under this
	 * lock. */
	if (!md__engine_region(e, addr, MD_EPAGE) || md__uffd_wp(&e->uffd, addr, MD_EPAGE, 0) != 0)
		md__uffd_wake(&e->uffd, addr, MD_EPAGE);
	e->st.wp_faults++;
	pthread_mutex_unlock(&e->lock);
}

int md__engine_init(struct md__engine *e, const struct md__engine_options *opts)
{
	struct md__engine_options o = opts ? *opts : (struct md__engine_options){ 0 };
	int err;

	memset(e, 0, sizeof(*e));
	e->pagemap_fd = -1;
	if (!o.pool_pages)
		o.pool_pages = 1u << 20;
	e->max_vmas = o.max_vmas ? o.max_vmas : default_max_vmas();
	e->vmas = o.vmas ? o.vmas : &e->own_vmas;
	pthread_rwlock_init(&e->regions_lock, NULL);
	pthread_mutex_init(&e->lock, NULL);
	pthread_mutex_init(&e->unref_lock, NULL);

	/* WP_UNPOPULATED lets a never-touched page be frozen too; without it
	 * freeze() faults pages in first. Shmem WP covers the pool mappings. */
	err = md__uffd_open(&e->uffd, MD_UFFD_FEATURE_WP_UNPOPULATED |
			    MD_UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0);
	if (err)
		goto undo_lock;
	err = md__pool_open(&e->pool, o.pool_pages);
	if (err)
		goto close_uffd;
	err = md__index_init(&e->index, 1024);
	if (err)
		goto close_pool;
	e->slot_hash = calloc(o.pool_pages, sizeof(*e->slot_hash));
	if (!e->slot_hash) {
		err = -ENOMEM;
		goto free_index;
	}
	e->pagemap_fd = md__proc_open("pagemap", 0);
	struct stat pst;
	if (e->pagemap_fd < 0 || fstat(e->pagemap_fd, &pst) != 0) {
		err = -errno;
		if (e->pagemap_fd >= 0)
			close(e->pagemap_fd);
		goto free_hashes;
	}
	e->pagemap_dev = pst.st_dev;
	e->pagemap_ino = pst.st_ino;
	e->zero_pfn = zero_pfn(e->pagemap_fd);
	static const uint64_t zeroes[MD_EPAGE / sizeof(uint64_t)];
	e->zero_hash = (uint16_t)md__page_hash(zeroes);
	err = md__uffd_start(&e->uffd, on_fault, e);
	if (err)
		goto close_pagemap;
	e->st.vmas = md__vmas_count(e->vmas);	/* with the thread's stack */
	return 0;

close_pagemap:
	close(e->pagemap_fd);
free_hashes:
	free(e->slot_hash);
free_index:
	md__index_free(&e->index);
close_pool:
	md__pool_close(&e->pool);
close_uffd:
	md__uffd_close(&e->uffd);
undo_lock:
	pthread_mutex_destroy(&e->unref_lock);
	pthread_mutex_destroy(&e->lock);
	pthread_rwlock_destroy(&e->regions_lock);
	return err;
}

static void region_free(struct md__eregion *r)
{
	free(r->ref);
	free(r->hash);
	free(r->seen);
	free(r->dropped);
}

static void dropped_bit(struct md__eregion *r, size_t i, int on)
{
	if (on)
		r->dropped[i / 8] |= (uint8_t)(1u << (i % 8));
	else
		r->dropped[i / 8] &= (uint8_t)~(1u << (i % 8));
}

/* Every change counted: the agent counts zero pages again only when one
 * was (a page dropped again after a reap found it held moves no other
 * counter, and zero_pages stayed short until the 30-second recount). */
static void dropped_set(struct md__engine *e, struct md__eregion *r, size_t i, int on)
{
	if (md__dropped(r, i) == !!on)
		return;
	dropped_bit(r, i, on);
	__atomic_add_fetch(&e->dropped_gen, 1, __ATOMIC_RELEASE);
}

void md__engine_present(struct md__engine *e, struct md__eregion *r, size_t i)
{
	if (!md__dropped(r, i))
		return;	/* the common case: no lock */
	pthread_mutex_lock(&e->lock);
	if (md__dropped(r, i)) {
		dropped_set(e, r, i, 0);
		e->st.undropped++;	/* the agent's walk counts again */
	}
	pthread_mutex_unlock(&e->lock);
}

size_t md__engine_meta_bytes(const struct md__engine *e)
{
	size_t n = 0;
	for (size_t i = 0; i < e->nregions; i++) {
		size_t np = (e->regions[i].end - e->regions[i].start) / MD_EPAGE;
		n += np * MD_EPAGE_META + (np + 7) / 8;
	}
	/* The pool's arrays and the slots' checksums, as far as slots were
	 * handed out (calloc'd beyond that, untouched); the index. */
	n += e->pool.end * (sizeof(*e->pool.refs) + sizeof(*e->pool.state) + sizeof(*e->pool.free) +
			    sizeof(*e->slot_hash));
	return n + md__index_bytes(&e->index);
}

size_t md__engine_dropped_pages(const struct md__eregion *r)
{
	size_t n = 0, np = (r->end - r->start) / MD_EPAGE;
	for (size_t b = 0; b < (np + 7) / 8; b++)
		n += (size_t)__builtin_popcount(__atomic_load_n(&r->dropped[b], __ATOMIC_RELAXED));
	return n;
}

static int pagemap_ours(const struct md__engine *e, int fd)
{
	return md__same_file(fd, __atomic_load_n(&e->pagemap_dev, __ATOMIC_ACQUIRE),
			     __atomic_load_n(&e->pagemap_ino, __ATOMIC_ACQUIRE));
}

/* Serializes the reopens of md__engine_pagemap; its reads take none. */
static pthread_mutex_t pagemap_reopen = PTHREAD_MUTEX_INITIALIZER;

ssize_t md__engine_pagemap(struct md__engine *e, uintptr_t addr, size_t n, uint64_t *pm)
{
	int fd = __atomic_load_n(&e->pagemap_fd, __ATOMIC_ACQUIRE);
	if (!pagemap_ours(e, fd)) {
		/* Not closed: the number is the VMM's now. A fresh open is
		 * ours by construction (procfs may give it another inode once
		 * no descriptor held the old one): its identity is recorded
		 * before its number is published, so a reader that sees the
		 * number sees it ours. */
		pthread_mutex_lock(&pagemap_reopen);
		fd = __atomic_load_n(&e->pagemap_fd, __ATOMIC_ACQUIRE);
		if (!pagemap_ours(e, fd)) {
			int again = md__proc_open("pagemap", 0);
			struct stat st;
			if (again < 0 || fstat(again, &st) != 0) {
				int err = errno;
				if (again >= 0)
					close(again);
				pthread_mutex_unlock(&pagemap_reopen);
				md__log_once(147, "the VMM closed the agent's /proc/self/pagemap descriptor, and it "
					     "cannot be opened again (%s): no merge until it can", strerror(err));
				errno = EBADF;
				return -1;
			}
			__atomic_store_n(&e->pagemap_dev, st.st_dev, __ATOMIC_RELEASE);
			__atomic_store_n(&e->pagemap_ino, st.st_ino, __ATOMIC_RELEASE);
			__atomic_store_n(&e->pagemap_fd, again, __ATOMIC_RELEASE);
			fd = again;
			md__log_once(146, "the VMM closed the agent's /proc/self/pagemap descriptor, or put a file "
				     "of its own at its number: opened again");
		}
		pthread_mutex_unlock(&pagemap_reopen);
	}
	return md__sys_pread(fd, pm, n * sizeof(uint64_t), (off_t)(addr / MD_EPAGE * sizeof(uint64_t)));
}

void md__engine_fini(struct md__engine *e)
{
	/* Closing the userfaultfd ends registrations; merged pages stay
	 * mapped from the pool, which lives on in those mappings. */
	md__uffd_close(&e->uffd);
	for (size_t i = 0; i < e->nregions; i++)
		region_free(&e->regions[i]);
	free(e->regions);
	free(e->slot_hash);
	free(e->cmp_buf);
	md__index_free(&e->index);
	md__pool_close(&e->pool);
	if (pagemap_ours(e, e->pagemap_fd))
		close(e->pagemap_fd);
	free(e->unref_q);
	pthread_mutex_destroy(&e->unref_lock);
	pthread_mutex_destroy(&e->lock);
	pthread_rwlock_destroy(&e->regions_lock);
}

struct md__eregion *md__engine_region(struct md__engine *e, uintptr_t addr, size_t len)
{
	for (size_t i = 0; i < e->nregions; i++) {
		struct md__eregion *r = &e->regions[i];
		if (addr >= r->start && addr < r->end)
			return len <= r->end - addr ? r : NULL;
	}
	return NULL;
}

int md__engine_covers(struct md__engine *e, uintptr_t lo, uintptr_t hi, uintptr_t *end)
{
	int in = 0;
	*end = hi;
	pthread_rwlock_rdlock(&e->regions_lock);
	for (size_t i = 0; i < e->nregions; i++) {
		const struct md__eregion *r = &e->regions[i];
		if (r->start <= lo && lo < r->end) {
			in = 1;
			*end = r->end < hi ? r->end : hi;
			break;
		}
		if (r->start > lo && r->start < *end)
			*end = r->start;
	}
	pthread_rwlock_unlock(&e->regions_lock);
	return in;
}

/* Whether a file mapped privately in guest RAM, (dev, ino), is the
 * VMM's own (a memory backend with share=off): neither a pool's nor one
 * the agent maps there itself (md__engine.agent_file). */
static int vmm_file(const struct md__engine *e, int pool, dev_t dev, ino_t ino)
{
	return !pool && !(e->agent_file && e->agent_file(e->agent_file_arg, dev, ino));
}

/* Pages of [a, a+len) in private file mappings when registered (memory
 * made private and forgotten, advised again): a later zero page there must
 * become anonymous memory, as a discard would show the file's page. 0, or
 * -errno when the mappings cannot be read: the region is not registered
 * then (all of it taken for a file's, the freeze would let the compare's
 * read fill the VMM's holes, which only file pages may have). *vmm_files
 * set if one is the VMM's own file's. */
static int mark_file_pages(const struct md__engine *e, uintptr_t a, size_t len, uint32_t *ref, int *vmm_files)
{
	struct md__vma *v;
	size_t n;
	int err = md__range_file_vmas(a, a + len, &v, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n; i++) {
		*vmm_files |= vmm_file(e, v[i].pool, v[i].dev, v[i].ino);
		for (uintptr_t p = v[i].lo; p < v[i].hi; p += MD_EPAGE)
			ref[(p - a) / MD_EPAGE] = MD_REF_FILE;
	}
	free(v);
	return 0;
}

static void unregister_mapping(void *uffd, uintptr_t lo, uintptr_t hi)
{
	md__uffd_unregister(uffd, lo, hi - lo);
}

struct register_each {
	struct md__uffd *uffd;
	int err;
	size_t done;
};

/* EINVAL: a mapping no userfaultfd can cover, a disk image's (its pages
 * made private there, by a lease break or a handover): left out, as a
 * freeze there fails (freeze), and the rest registered. */
static void register_mapping(void *arg, uintptr_t lo, uintptr_t hi)
{
	struct register_each *r = arg;
	int err = md__uffd_register_wp(r->uffd, lo, hi - lo);
	r->done += !err;
	if (err && err != -EINVAL && !r->err)
		r->err = err;
}

/* [a, a+len) registered for write-protection, one mapping at a time where
 * the whole refuses: RAM registered again (advised again, given back by
 * the VMM's userfaultfd) may hold image mappings. Memory none of whose
 * mappings can be (a private mapping of a disk file as guest RAM) is
 * refused, as it was. */
static int register_wp(struct md__engine *e, uintptr_t a, size_t len)
{
	int err = md__uffd_register_wp(&e->uffd, a, len);
	if (err != -EINVAL)
		return err;
	struct register_each r = { &e->uffd, 0, 0 };
	err = md__range_mappings(a, a + len, register_mapping, &r);
	err = err ? err : r.err ? r.err : r.done ? 0 : -EINVAL;
	if (err)
		md__range_mappings(a, a + len, unregister_mapping, &e->uffd);
	return err;
}

static int register_one(struct md__engine *e, uintptr_t a, size_t len, unsigned advice)
{
	int err = -EINVAL;

	pthread_rwlock_wrlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < e->nregions; i++)
		if (a < e->regions[i].end && a + len > e->regions[i].start)
			goto unlock;
	struct md__eregion *n = realloc(e->regions, (e->nregions + 1) * sizeof(*n));
	if (!n) {
		err = -ENOMEM;
		goto unlock;
	}
	e->regions = n;
	size_t np = len / MD_EPAGE;
	struct md__eregion r = { a, a + len, advice, calloc(np, sizeof(uint32_t)),
				 calloc(np, sizeof(uint16_t)), calloc(np, 1), calloc((np + 7) / 8, 1), 0 };
	if (!r.ref || !r.hash || !r.seen || !r.dropped) {
		err = -ENOMEM;
		goto free_arrays;
	}
	err = mark_file_pages(e, a, len, r.ref, &r.vmm_files);
	if (!err)
		err = register_wp(e, a, len);
	if (err)
		goto free_arrays;
	e->regions[e->nregions++] = r;
	e->layout_gen++;
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return 0;

free_arrays:
	region_free(&r);
unlock:
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return err;
}

/* The VMM may advise a range again, or a larger one: only the parts not
 * registered yet become new regions, as in the agent (md__regions_add). */
int md__engine_register(struct md__engine *e, void *addr, size_t len, unsigned advice)
{
	uintptr_t cur = (uintptr_t)addr, end = cur + len;

	if ((cur | len) % MD_EPAGE || !len || end < cur)
		return -EINVAL;
	while (cur < end) {
		uintptr_t next = end, covered = 0;
		pthread_rwlock_rdlock(&e->regions_lock);
		for (size_t i = 0; i < e->nregions; i++) {
			const struct md__eregion *r = &e->regions[i];
			if (r->start <= cur && cur < r->end)
				covered = r->end;
			else if (r->start > cur && r->start < next)
				next = r->start;
		}
		pthread_rwlock_unlock(&e->regions_lock);
		if (covered) {
			cur = covered;
			continue;
		}
		int err = register_one(e, cur, next - cur, advice);
		if (err)
			return err;
		cur = next;
	}
	return 0;
}

static void apply_advice(const struct md__eregion *r, uintptr_t addr, size_t len)
{
	/* MD_EADV_* are the MD_ADV_* bits. Never MADV_MERGEABLE: the engine
	 * is the only scanner of what it merges (agent/scan.c). */
	md__advise_new_mapping((void *)addr, len, r->advice, 0);
}

static void thaw(struct md__engine *e, uintptr_t addr, size_t len)
{
	if (md__uffd_wp(&e->uffd, addr, len, 0) != 0)
		md__uffd_wake(&e->uffd, addr, len);
}

/* The pagemap entries of the n pages from addr into pm: 0 or -EIO. */
static int pagemap_read(struct md__engine *e, uintptr_t addr, size_t n, uint64_t *pm)
{
	size_t len = n * sizeof(uint64_t);
	return md__engine_pagemap(e, addr, n, pm) == (ssize_t)len ? 0 : -EIO;
}

static int budget_ok(struct md__engine *e, size_t new_vmas);

/* Write-protects the n pages at addr (in r), with their pagemap entries
 * from before into pm (MAX_RUN of them) - only if none is a hole in
 * anonymous memory: that is the VMM's, discarded since the scanner's
 * visit, and the compare's read would fill it in behind its back (a
 * balloon's page, one a postcopy destination waits for). In the pool's
 * mapping a page not there yet reads the file. Under the
 * lock no discard comes between the check and the compare
 * (md__engine_discard). */
void (*md__engine_freeze_hook)(uintptr_t a, size_t n);	/* tests only: see merge.h */

static int freeze(struct md__engine *e, const struct md__eregion *r, uintptr_t addr, size_t n, uint64_t *pm)
{
	size_t len = n * MD_EPAGE, first = (addr - r->start) / MD_EPAGE;
	/* The scanner saw these pages free before its round trip to
	 * memdedupd; a read may have mapped an image over one since
	 * (md__engine_exclude). Its content is the image's, and merging it
	 * would leave the agent's record of the image page stale. */
	for (size_t i = 0; i < n; i++)
		if (r->ref[first + i] & MD_REF_IMAGE) {
			e->st.io_busy++;
			return -EBUSY;
		}
	if (pagemap_read(e, addr, n, pm)) {
		e->st.freeze_failed += n;
		return -EIO;
	}
	for (size_t i = 0; i < n; i++)
		if (!md__pm_has_page(pm[i]) && !(r->ref[first + i] & MD_REF_FILE)) {
			e->st.holes += n;
			return -EAGAIN;
		}
	/* Without WP_UNPOPULATED a missing page cannot carry the protection,
	 * and its first write would not fault: make every page present. */
	if (!(e->uffd.features & MD_UFFD_FEATURE_WP_UNPOPULATED) &&
	    md__sys_madvise((void *)addr, len, MADV_POPULATE_READ) != 0) {
		e->st.freeze_failed += n;
		return -errno;
	}
	int err = md__uffd_wp(&e->uffd, addr, len, 1);
	if (err == -ENOENT) {
		/* Part of it is a mapping made since registration whose
		 * registration failed: register, then try again - unless it
		 * is shared memory, which only a region gone stale (its
		 * forgetting failed) could hold here: a private page put over
		 * it would hide another sharer's writes. */
		if (md__range_shared(addr, len) != 0)
			err = -EPERM;
		/* Registering part of a mapping splits it, as a new
		 * mapping would: within the budget (the caller reckoned
		 * its own mappings before). */
		else if (!budget_ok(e, 2))
			err = -ENOSPC;
		else if ((err = md__uffd_register_wp(&e->uffd, addr, len)) == 0)
			md__vmas_add(e->vmas, 2);
		if (!err)
			err = md__uffd_wp(&e->uffd, addr, len, 1);
	}
	/* The ioctl protects mapping by mapping (before Linux 6.4 page by
	 * page, md__uffd_wp): a failure may leave some pages protected,
	 * whose writers would wait for the fault thread. */
	if (err) {
		thaw(e, addr, len);
		if (err != -ENOSPC)	/* that one is budget_refused */
			e->st.freeze_failed += n;
		return err;
	}
	void (*hook)(uintptr_t, size_t) = __atomic_load_n(&md__engine_freeze_hook, __ATOMIC_RELAXED);
	if (hook)
		hook(addr, n);
	/* After the protection, before the compare: see inflight.h. */
	if (md__inflight_busy(&e->io, addr, len)) {
		thaw(e, addr, len);
		e->st.io_busy++;
		return -EBUSY;
	}
	return 0;
}

#define CMP_PAGES MD_COPY_PAGES_MAX

/* The compare buffers: CMP_PAGES pages of frozen guest memory, then
 * CMP_PAGES of what they must equal. NULL if there is no memory. */
static unsigned char *cmp_buf(struct md__engine *e)
{
	if (!e->cmp_buf)
		e->cmp_buf = aligned_alloc(64, 2 * CMP_PAGES * MD_EPAGE);
	return e->cmp_buf;
}

/* The content of the n (at most CMP_PAGES) frozen pages at a, for the
 * compare that proves a merge: a copy read through the kernel (which
 * spares our first touch of them, md__copy_own_pages), or NULL if that
 * fails, and the merge is abandoned. */
void (*md__engine_compare_hook)(uintptr_t a, size_t n);	/* tests only: see merge.h */

static const unsigned char *frozen_pages(struct md__engine *e, uintptr_t a, size_t n)
{
	const void *p[CMP_PAGES];
	unsigned char *b = cmp_buf(e);
	for (size_t i = 0; i < n; i++)
		p[i] = (const void *)(a + i * MD_EPAGE);
	/* Not through the VMM's mapping when the copy fails: a page it made
	 * PROT_NONE since the visit would be SIGSEGV in the VMM. */
	if (!b || md__copy_own_pages(b, p, n) != 0)
		return NULL;
	void (*hook)(uintptr_t, size_t) = __atomic_load_n(&md__engine_compare_hook, __ATOMIC_RELAXED);
	if (hook)
		hook(a, n);
	return b;
}

/* What the n (at most CMP_PAGES) pool or image pages at p[0..n) hold, for
 * the same compare: p[i] set to their copies in the second buffer, or
 * left as they are if that fails (then -EFAULT, or -ENOMEM). */
static int other_pages(struct md__engine *e, const unsigned char **p, size_t n)
{
	unsigned char *b = cmp_buf(e);
	return b ? md__copy_own_pages(b + CMP_PAGES * MD_EPAGE, (const void **)p, n) : -ENOMEM;
}

/* 1 if every page of the run still carries the write-protect bit. */
static int still_frozen(struct md__engine *e, uintptr_t addr, size_t n)
{
	uint64_t pm[MAX_RUN];
	if (pagemap_read(e, addr, n, pm))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(pm[i] & MD_PM_UFFD_WP))
			return 0;
	return 1;
}

/* One UNREF for n slots of pool generation gen; if memdedupd refuses it
 * (a slot of a pool from before a reconnection is not held), the client's
 * give-back queue splits it, so the valid ones still go: only then, as an
 * UNREF that went but failed otherwise may yet be applied. Not one round
 * trip each here: up to 512 of a slow daemon's held the caller (the agent's
 * thread, which takes lease breaks) for minutes. A dead daemon counts
 * nothing. */
int md__engine_unref_n(struct md__engine *e, const uint32_t *slot, size_t n, uint64_t gen)
{
	int err = md__remote_ref_n(e->remote, slot, (uint32_t)n, -1, gen);
	if (err == -EINVAL && n > 1)
		md__remote_give_back(e->remote, slot, n, gen);
	return err == -EINVAL ? 0 : err;
}

/* Adds n slots of pool generation gen to the queue md__engine_send_unrefs
 * sends (their order does not matter). If it cannot grow (memory short),
 * they are not given back: their pool pages stay until this process goes
 * (a round trip instead would hold the caller's lock). */
static void unrefs_queue(struct md__engine *e, const uint32_t *slot, size_t n, uint64_t gen)
{
	pthread_mutex_lock(&e->unref_lock);
	int kept = 0;
	if (e->nunref_q && e->unref_gen != gen)
		e->nunref_q = 0;	/* an older pool's: md__engine_remote_connect forgets them too */
	if (e->nunref_q + n > e->unref_cap) {
		size_t cap = e->unref_cap ? e->unref_cap * 2 : 4 * MD_REF_BATCH;
		while (cap < e->nunref_q + n)
			cap *= 2;
		uint32_t *q = realloc(e->unref_q, cap * sizeof(*q));
		if (q) {
			e->unref_q = q;
			e->unref_cap = cap;
		}
	}
	if (e->nunref_q + n <= e->unref_cap) {
		memcpy(e->unref_q + e->nunref_q, slot, n * sizeof(*slot));
		e->nunref_q += n;
		e->unref_gen = gen;
		kept = 1;
	}
	pthread_mutex_unlock(&e->unref_lock);
	if (!kept)
		md__log_once(92, "could not keep %zu pool references to give back to memdedupd: "
			     "they stay pinned until this process exits", n);
}

/* Moves the lock's batch of slots to that queue (lock held). */
static void defer_unrefs(struct md__engine *e)
{
	if (!e->nunref)
		return;
	unrefs_queue(e, e->unref, e->nunref, e->remote->generation);	/* changes under the lock only */
	e->nunref = 0;
}

/* UNREFs sent per call at most, within MD_RT_PASS_MS: the agent's thread,
 * which sends them too, also answers lease breaks. */
#define MD_UNREF_PASS (64 * MD_REF_BATCH)

void md__engine_send_unrefs(struct md__engine *e)
{
	/* Kept while there is no connection: the same daemon's takes them
	 * (another's connect forgets them), and owed they would be capped. */
	if (!e->remote || !md__remote_connected(e->remote))
		return;
	pthread_mutex_lock(&e->unref_lock);
	uint32_t *q = e->unref_q;
	size_t n = e->nunref_q;
	uint64_t gen = e->unref_gen;
	e->unref_q = NULL;
	e->nunref_q = e->unref_cap = 0;
	pthread_mutex_unlock(&e->unref_lock);
	size_t at = 0;
	int64_t start = md__rt_begin();
	while (at < n && at < MD_UNREF_PASS) {
		size_t m = n - at < MD_REF_BATCH ? n - at : MD_REF_BATCH;
		int err = md__engine_unref_n(e, q + at, m, gen);
		at += m;	/* sent, queued by the client, or owed: done with here */
		/* A daemon gone, or slow: the rest waits for the next call. */
		if (err || !md__rt_more(start))
			break;
	}
	/* The rest back in the queue, unless the pool is another's now (the
	 * queue holds the new pool's slots then). Under the merge lock, as
	 * md__engine_remote_connect switches pools under it. */
	if (at < n) {
		pthread_mutex_lock(&e->lock);
		if (e->remote->generation == gen)
			unrefs_queue(e, q + at, n - at, gen);
		pthread_mutex_unlock(&e->lock);
	}
	free(q);
}

/* Drops what page i of r holds in the pool (it is being replaced). */
void md__engine_release_ref(struct md__engine *e, struct md__eregion *r, size_t i)
{
	uint32_t s = MD_REF_SLOT(r->ref[i]);
	if (s && (r->ref[i] & MD_REF_FILL)) {
		md__pool_put(&e->pool, s - 1);	/* never the last: the strip's own stays */
	} else if (s && e->remote) {
		e->unref[e->nunref++] = s - 1;
		if (e->nunref == MD_REF_BATCH)
			defer_unrefs(e);
	} else if (s && md__pool_put(&e->pool, s - 1)) {
		md__index_remove(&e->index, e->slot_hash[s - 1], s - 1);
	}
	r->ref[i] = 0;
}
#define release_ref md__engine_release_ref

void md__engine_unlock(struct md__engine *e)
{
	defer_unrefs(e);
	pthread_mutex_unlock(&e->lock);
}

const unsigned char *md__engine_pool_page(struct md__engine *e, uint32_t slot)
{
	if (e->remote)
		return e->remote->view + (size_t)slot * MD_EPAGE;
	return md__pool_page(&e->pool, slot);
}

int md__engine_fail_slices;	/* tests only: see merge.h */

/* Copies pages [from, from+n) of r's per-page arrays into a new region
 * (left all NULL if that fails). */
static int region_slice(const struct md__eregion *r, size_t from, size_t n, struct md__eregion *out)
{
	*out = (struct md__eregion){ 0 };
	if (__atomic_load_n(&md__engine_fail_slices, __ATOMIC_RELAXED) > 0 &&
	    __atomic_sub_fetch(&md__engine_fail_slices, 1, __ATOMIC_RELAXED) >= 0)
		return -ENOMEM;
	*out = (struct md__eregion){ r->start + from * MD_EPAGE, r->start + (from + n) * MD_EPAGE,
				     r->advice, malloc(n * sizeof(uint32_t)),
				     malloc(n * sizeof(uint16_t)), malloc(n), calloc((n + 7) / 8, 1),
				     r->vmm_files };
	if (!out->ref || !out->hash || !out->seen || !out->dropped) {
		region_free(out);
		*out = (struct md__eregion){ 0 };
		return -ENOMEM;
	}
	memcpy(out->ref, r->ref + from, n * sizeof(uint32_t));
	memcpy(out->hash, r->hash + from, n * sizeof(uint16_t));
	memcpy(out->seen, r->seen + from, n);
	for (size_t i = 0; i < n; i++)
		dropped_bit(out, i, md__dropped(r, from + i));
	return 0;
}

/* Whether the page at p of r (MD_REF_FILE alone: a file page without a
 * slot) lies in a mapping of the VMM's own file, no pool's nor the
 * agent's (a memory backend with share=off): the VMM's to keep as it is,
 * never copied. *v holds the maps of [lo, hi), read once, and only for a
 * region that had such a mapping (*nv SIZE_MAX: not yet; on a failed
 * read, none: every such page is taken for a pool's, copied as before). */
static int vmm_file_page(const struct md__engine *e, const struct md__eregion *r, uintptr_t p, uintptr_t lo,
			 uintptr_t hi, struct md__file_map **v, size_t *nv)
{
	if (!r->vmm_files)
		return 0;
	if (*nv == SIZE_MAX && md__range_file_maps(lo, hi, v, nv) != 0) {
		*v = NULL;
		*nv = 0;
	}
	for (size_t k = 0; k < *nv; k++)
		if ((*v)[k].lo <= p && p < (*v)[k].hi)
			return vmm_file(e, (*v)[k].pool, (*v)[k].dev, (*v)[k].ino);
	return 0;
}

int md__engine_vmm_file_at(const struct md__engine *e, const struct md__eregion *r, size_t i,
			   struct md__file_map **v, size_t *nv)
{
	return r->ref[i] == MD_REF_FILE && vmm_file_page(e, r, r->start + i * MD_EPAGE, r->start, r->end, v, nv);
}

/* Pages [i, j) of r stay mapped but leave the engine: each one mapped from
 * a file (pool or image) becomes a private copy, a run at a time; the
 * VMM's own file's pages stay its file's (vmm_file_page). Pages that
 * cannot be copied keep their pool reference (see MD_UNREG_MAPPED).
 * Called after the range left userfaultfd, so no write fault can wait for
 * the lock we hold. */
static void privatize_pages(struct md__engine *e, struct md__eregion *r, size_t i, size_t j)
{
	struct md__file_map *v = NULL;
	size_t nv = SIZE_MAX;
	uintptr_t lo = r->start + i * MD_EPAGE, hi = r->start + j * MD_EPAGE;
	while (i < j) {
		if (!r->ref[i] || (r->ref[i] == MD_REF_FILE &&
				   vmm_file_page(e, r, r->start + i * MD_EPAGE, lo, hi, &v, &nv))) {
			i++;
			continue;
		}
		size_t k = i;
		while (k < j && r->ref[k] &&
		       !(r->ref[k] == MD_REF_FILE && vmm_file_page(e, r, r->start + k * MD_EPAGE, lo, hi, &v, &nv)))
			k++;
		if (md__sys_madvise((void *)(r->start + i * MD_EPAGE), (k - i) * MD_EPAGE,
				    MADV_POPULATE_WRITE) != 0) {
			md__log_once(62, "cannot make merged pages private (%s): their pool pages stay "
				     "allocated until the process exits", strerror(errno));
			for (; i < k; i++)
				if (MD_REF_SLOT(r->ref[i]) && !(r->ref[i] & MD_REF_FILL)) {
					e->st.refs_kept++;
					r->ref[i] = 0;	/* the reference stays taken */
				}
			continue;
		}
		i = k;
	}
	free(v);
}

/* Puts back the zero pages the engine dropped in [a, end) that are still
 * not there (MD_UNREG_HANDOVER), before anything is forgotten: by reading
 * them, runs at a time, which maps the zero page where the kernel has one
 * and takes no memory then, and never waits for a write-protection. */
static int fill_dropped(struct md__engine *e, uintptr_t a, uintptr_t end)
{
	uint64_t pm[MAX_RUN];
	int err = 0;	/* the first failure; the other runs are still filled */
	for (size_t ri = 0; ri < e->nregions; ri++) {
		const struct md__eregion *r = &e->regions[ri];
		uintptr_t s0 = a > r->start ? a : r->start, s1 = end < r->end ? end : r->end;
		for (uintptr_t p = s0; p < s1; p += MAX_RUN * MD_EPAGE) {
			size_t n = (s1 - p) / MD_EPAGE < MAX_RUN ? (s1 - p) / MD_EPAGE : MAX_RUN;
			size_t first = (p - r->start) / MD_EPAGE, k;
			for (k = 0; k < n && !md__dropped(r, first + k); k++)
				;
			if (k == n)
				continue;
			if (pagemap_read(e, p, n, pm)) {
				err = err ? err : -EIO;
				continue;
			}
			/* A page the guest touches meanwhile is there: populating
			 * it again changes nothing. */
			for (k = 0; k < n;) {
				size_t j = k;
				while (j < n && md__dropped(r, first + j) && !(pm[j] & MD_PM_PRESENT))
					j++;
				if (j > k && md__sys_madvise((void *)(p + k * MD_EPAGE), (j - k) * MD_EPAGE,
							     MADV_POPULATE_READ) != 0 && !err)
					err = errno == EINVAL ? -EIO : -errno;
				k = j + (j == k);
			}
		}
	}
	return err;
}

/* What is left of r once [s0, s1) goes, allocated before anything is done
 * to r: left and right (NULL where nothing is left), and room in the table
 * for both. */
static int region_remains(struct md__engine *e, const struct md__eregion *r, uintptr_t s0, uintptr_t s1,
			  struct md__eregion *left, struct md__eregion *right)
{
	size_t np = (r->end - r->start) / MD_EPAGE, i0 = (s0 - r->start) / MD_EPAGE,
	       i1 = (s1 - r->start) / MD_EPAGE;
	int err;
	*left = *right = (struct md__eregion){ 0 };
	if (i0 > 0 && (err = region_slice(r, 0, i0, left)))
		return err;
	if (i1 < np && (err = region_slice(r, i1, np - i1, right)))
		goto free_left;
	if (left->ref && right->ref) {
		struct md__eregion *n = realloc(e->regions, (e->nregions + 1) * sizeof(*n));
		if (!n) {
			err = -ENOMEM;
			goto free_right;
		}
		e->regions = n;
	}
	return 0;

free_right:
	region_free(right);
free_left:
	region_free(left);
	*left = *right = (struct md__eregion){ 0 };
	return err;
}

/* The remains of each region [a, end) cuts, allocated ahead (both locks
 * held): an unmap must not take the memory away and then find no memory
 * to forget it with, or the scanner would visit whatever is mapped there
 * next. */
struct remains {
	uintptr_t start;	/* of the region cut */
	struct md__eregion left, right;
};

static void remains_free(struct remains *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		region_free(&v[i].left);
		region_free(&v[i].right);
	}
	free(v);
}

/* 0 and *out (*n entries, NULL if none), or -ENOMEM with nothing done. */
static int remains_prepare(struct md__engine *e, uintptr_t a, uintptr_t end, struct remains **out, size_t *n)
{
	size_t k = 0, both = 0;
	*out = NULL;
	*n = 0;
	for (size_t ri = 0; ri < e->nregions; ri++)
		k += e->regions[ri].start < end && e->regions[ri].end > a;
	if (!k)
		return 0;
	struct remains *v = calloc(k, sizeof(*v));
	if (!v)
		return -ENOMEM;
	size_t j = 0;
	for (size_t ri = 0; ri < e->nregions; ri++) {
		const struct md__eregion *r = &e->regions[ri];
		if (r->end <= a || r->start >= end)
			continue;
		uintptr_t s0 = a > r->start ? a : r->start, s1 = end < r->end ? end : r->end;
		size_t np = (r->end - r->start) / MD_EPAGE, i0 = (s0 - r->start) / MD_EPAGE,
		       i1 = (s1 - r->start) / MD_EPAGE;
		v[j].start = r->start;
		if ((i0 > 0 && region_slice(r, 0, i0, &v[j].left)) ||
		    (i1 < np && region_slice(r, i1, np - i1, &v[j].right))) {
			remains_free(v, j + 1);
			return -ENOMEM;
		}
		both += v[j].left.ref && v[j].right.ref;
		j++;
	}
	/* Each region cut in two takes one more entry in the table. */
	if (both) {
		struct md__eregion *t = realloc(e->regions, (e->nregions + both) * sizeof(*t));
		if (!t) {
			remains_free(v, k);
			return -ENOMEM;
		}
		e->regions = t;
	}
	*out = v;
	*n = k;
	return 0;
}

/* The registered pages of [a, end). */
static size_t registered_pages(const struct md__engine *e, uintptr_t a, uintptr_t end)
{
	size_t n = 0;
	for (size_t ri = 0; ri < e->nregions; ri++) {
		const struct md__eregion *r = &e->regions[ri];
		uintptr_t s0 = a > r->start ? a : r->start, s1 = end < r->end ? end : r->end;
		n += s0 < s1 ? (s1 - s0) / MD_EPAGE : 0;
	}
	return n;
}

/* n pages the VMM let go stay registered: no memory to split their region. */
static void unreg_failed(struct md__engine *e, size_t n, int err)
{
	e->st.unreg_failed += n;
	md__log_once(67, "guest RAM the VMM let go stays registered for merging: no memory "
		     "to split its region (%s)", strerror(-err));
}

/* md__engine_unregister with both locks held. A region whose remains
 * cannot be allocated (memory short) stays as it was, registered, with its
 * references: done first, its forgetting would leave pages private and
 * references dropped in a region the scanner still visits. Without pre,
 * the others still go; -ENOMEM then, said once, and counted in
 * unreg_failed (md__engine_unregister prepares every region's remains
 * first, so that none goes: the agent's records stay as they were). With
 * pre, the remains come from there (remains_prepare for the same range,
 * its entries taken: freed by the caller empty). */
static int unregister_locked(struct md__engine *e, uintptr_t a, uintptr_t end, int how,
			     struct remains *pre, size_t npre)
{
	int err = 0;
	/* The scanner's pagemap windows and pending pages here are stale: the
	 * memory may go and another mapping come, whose holes its read
	 * would fill (read_guest; a batch lets go of the regions' lock while
	 * it waits for memdedupd). */
	__atomic_add_fetch(&e->zap_gen, 1, __ATOMIC_RELEASE);
	/* Memory that stays mapped gets back the zero pages we dropped: a
	 * userfaultfd for missing pages the VMM registers there, now or
	 * later, would take them for pages still to come. Only the handover
	 * fails for it; else the holes stay, as they were. */
	if (how == MD_UNREG_HANDOVER || how == MD_UNREG_MAPPED) {
		err = fill_dropped(e, a, end);
		if (err && how == MD_UNREG_HANDOVER)
			return err;
		err = 0;
		how = MD_UNREG_MAPPED;
	}
	for (size_t ri = 0; ri < e->nregions;) {
		struct md__eregion r = e->regions[ri], left, right;
		if (r.end <= a || r.start >= end) {
			ri++;
			continue;
		}
		uintptr_t s0 = a > r.start ? a : r.start, s1 = end < r.end ? end : r.end;
		int rerr = -ENOMEM;
		size_t pi = 0;
		while (pi < npre && pre[pi].start != r.start)
			pi++;
		if (pi < npre) {
			left = pre[pi].left;
			right = pre[pi].right;
			pre[pi].left = pre[pi].right = (struct md__eregion){ 0 };
			pre[pi].start = 0;
			rerr = 0;
		} else {
			rerr = region_remains(e, &r, s0, s1, &left, &right);
		}
		if (rerr) {
			unreg_failed(e, (s1 - s0) / MD_EPAGE, rerr);
			err = err ? err : rerr;
			ri++;
			continue;
		}
		/* Fails harmlessly where the memory is already gone; and as a
		 * whole if one mapping in the range cannot be registered (an
		 * image's: the kernel write-protects anonymous memory and
		 * shmem only), leaving the others registered, maybe with a
		 * protection a failed thaw left, which the copies below would
		 * wait on forever: then one mapping at a time. */
		if (md__uffd_unregister(&e->uffd, s0, s1 - s0) != 0)
			md__range_mappings(s0, s1, unregister_mapping, &e->uffd);
		if (how == MD_UNREG_MAPPED)
			privatize_pages(e, &r, (s0 - r.start) / MD_EPAGE, (s1 - r.start) / MD_EPAGE);
		for (uintptr_t p = s0; p < s1; p += MD_EPAGE)
			release_ref(e, &r, (p - r.start) / MD_EPAGE);
		region_free(&r);
		/* Replace r by what is left of it, at the end of the table,
		 * where it is skipped (outside [a, end)); the next region
		 * moves to ri. */
		memmove(&e->regions[ri], &e->regions[ri + 1], (e->nregions - ri - 1) * sizeof(r));
		e->nregions--;
		e->layout_gen++;
		if (left.ref)
			e->regions[e->nregions++] = left;
		if (right.ref)
			e->regions[e->nregions++] = right;
	}
	return err;
}


int md__engine_touches(struct md__engine *e, uintptr_t addr, size_t len)
{
	int touches = 0;
	pthread_rwlock_rdlock(&e->regions_lock);
	for (size_t i = 0; i < e->nregions && !touches; i++)
		touches = e->regions[i].start < addr + len && e->regions[i].end > addr;
	pthread_rwlock_unlock(&e->regions_lock);
	return touches;
}

/* After an unmap of [a, end) with no memory for the remains of the regions
 * it cut: each such region is given up whole (which needs no allocation),
 * its parts still mapped made private first (a page that cannot be keeps
 * its reference: privatize_pages). The VMM's call behaves as without us;
 * those parts are merged no more. Both locks held. */
static void give_up_whole(struct md__engine *e, uintptr_t a, uintptr_t end)
{
	for (size_t ri = 0; ri < e->nregions;) {
		struct md__eregion *r = &e->regions[ri];
		if (r->end <= a || r->start >= end) {
			ri++;
			continue;
		}
		uintptr_t rs = r->start, re = r->end;
		size_t np = (re - rs) / MD_EPAGE;
		/* Out of userfaultfd before the copies, as unregister_locked
		 * does: a protection a failed thaw left would make a copy
		 * wait for the fault thread, which waits for our lock. */
		if (md__uffd_unregister(&e->uffd, rs, re - rs) != 0)
			md__range_mappings(rs, re, unregister_mapping, &e->uffd);
		if (rs < a) {
			fill_dropped(e, rs, a);
			privatize_pages(e, r, 0, (a - rs) / MD_EPAGE);
		}
		if (re > end) {
			fill_dropped(e, end, re);
			privatize_pages(e, r, (end - rs) / MD_EPAGE, np);
		}
		e->st.unreg_failed += (size_t)((a > rs ? a - rs : 0) + (re > end ? re - end : 0)) / MD_EPAGE;
		if (e->gave_up_end == e->gave_up_start || rs < e->gave_up_start)
			e->gave_up_start = rs;
		if (re > e->gave_up_end)
			e->gave_up_end = re;
		unregister_locked(e, rs, re, MD_UNREG_GONE, NULL, 0);	/* whole: no slices */
		ri += ri < e->nregions && e->regions[ri].start == rs;	/* never, but never loop */
	}
	md__log_once(69, "guest RAM beside what the VMM unmapped is merged no more: no memory to "
		     "split its region");
}

static int anonymize_locked(struct md__engine *e, uintptr_t s, uintptr_t end, size_t *left);

/* md__engine_unregister's body, both locks held, its pages first moved
 * into anonymous memory if anon_err (md__engine_unregister_anon). Every
 * region's remains are allocated first: short of memory for one, none goes
 * (the agent's records stay as they were for the call that fails). Memory
 * already gone cannot stay registered (the scanner would visit what is
 * mapped there next): the regions it cuts are given up whole then, as
 * after an unmap. */
static int unregister_prepared(struct md__engine *e, uintptr_t a, uintptr_t end, int how, int *anon_err)
{
	struct remains *pre;
	size_t npre;
	int err = remains_prepare(e, a, end, &pre, &npre);
	e->gave_up_start = e->gave_up_end = 0;
	if (err && how == MD_UNREG_GONE) {
		give_up_whole(e, a, end);
		return 0;	/* forgotten all the same */
	}
	if (err) {
		unreg_failed(e, registered_pages(e, a, end), err);
		return err;
	}
	if (anon_err)
		*anon_err = anonymize_locked(e, a, end, NULL);
	err = unregister_locked(e, a, end, how, pre, npre);
	remains_free(pre, npre);
	return err;
}

int md__engine_unregister(struct md__engine *e, void *addr, size_t len, int how)
{
	pthread_rwlock_wrlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	int err = unregister_prepared(e, (uintptr_t)addr, (uintptr_t)addr + len, how, NULL);
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return err;
}

/* Both locks are held across op, so the scanner cannot read the memory
 * while it goes, and nothing is frozen (a merge holds the merge lock from
 * freeze to thaw): no thread of the VMM waits for us while op waits for
 * the mm. A failed op leaves what is still mapped registered, with its
 * references: forgetting it first would free slots its pages still map. */
int md__engine_unmap(struct md__engine *e, void *addr, size_t len, int (*op)(void *arg), void *arg,
		     int keep_mapped)
{
	uintptr_t a = (uintptr_t)addr, end = a + len;
	pthread_rwlock_wrlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	struct remains *pre;
	size_t npre;
	/* Allocated before the call: once the memory is gone there must be
	 * no failing to forget it, or the scanner would visit whatever the
	 * VMM maps there next. Without the memory, the regions it cuts are
	 * given up whole afterwards. */
	int prepared = remains_prepare(e, a, end, &pre, &npre) == 0;
	e->gave_up_start = e->gave_up_end = 0;
	int r = op(arg);
	struct md__run *run;
	size_t n;
	if (r == 0 && !prepared) {
		give_up_whole(e, a, end);
	} else if (r == 0) {
		unregister_locked(e, a, end, MD_UNREG_GONE, pre, npre);
	} else if (md__range_runs(a, end, &run, &n) == 0) {
		/* What is gone is forgotten. What is mapped stays after a
		 * failed munmap (which unmaps nothing), or a failed call that
		 * left all of it; else it may be the old memory or, in a hole
		 * the call left, another thread's new mapping: made private
		 * and forgotten. A run that cannot be (memory short) stays. */
		keep_mapped |= n == 1 && run[0].mapped;
		for (size_t i = 0; i < n; i++)
			if (!(run[i].mapped && keep_mapped) &&
			    unregister_locked(e, run[i].lo, run[i].hi,
					      run[i].mapped ? MD_UNREG_MAPPED : MD_UNREG_GONE, NULL, 0) != 0 &&
			    !run[i].mapped)
				give_up_whole(e, run[i].lo, run[i].hi);	/* gone: forgotten all the same */
		free(run);
	} else {
		/* Where is what not known: references that cannot be copied
		 * away are kept, never dropped under a mapping. */
		unregister_locked(e, a, end, MD_UNREG_MAPPED, NULL, 0);
	}
	if (prepared)
		remains_free(pre, npre);
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return r;
}

int md__engine_advise(struct md__engine *e, void *addr, size_t len, unsigned advice)
{
	uintptr_t a = (uintptr_t)addr;
	int partial = 0;
	pthread_rwlock_wrlock(&e->regions_lock);
	for (size_t i = 0; i < e->nregions; i++) {
		struct md__eregion *r = &e->regions[i];
		r->advice = md__advice_after(r->advice, r->start, r->end, a, a + len, advice, &partial);
	}
	pthread_rwlock_unlock(&e->regions_lock);
	return partial;
}

/* Page i of r now shows an image page: not ours, left alone by the scanner. */
static void set_image(struct md__engine *e, struct md__eregion *r, size_t i)
{
	release_ref(e, r, i);
	r->ref[i] = MD_REF_IMAGE;
	dropped_set(e, r, i, 0);	/* a zero page dropped before shows the image now */
}

static void remake_lost(struct md__engine *e, struct md__eregion *r, uintptr_t addr, size_t n,
			const unsigned char *content);

int md__engine_exclude(struct md__engine *e, void *addr, size_t len,
		       int (*map)(void *arg), void *arg)
{
	uintptr_t a = (uintptr_t)addr;

	pthread_rwlock_rdlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	/* Under the merge lock no page here is frozen: the image mapping
	 * cannot be overwritten by a merge that compared the old content. */
	int err = map(arg);
	for (uintptr_t p = a; p < a + len; p += MD_EPAGE) {
		struct md__eregion *r = md__engine_region(e, p, MD_EPAGE);
		if (!r)
			continue;
		size_t i = (p - r->start) / MD_EPAGE;
		if (err == 0) {
			set_image(e, r, i);
		} else if (err == 1) {	/* fresh anonymous memory: nothing of ours */
			release_ref(e, r, i);
			dropped_set(e, r, i, 0);
		} else {
			/* The old mapping stays, unless the kernel unmapped it
			 * before failing (see remake_lost): zeroes then, which
			 * the VMM's copying read overwrites. */
			remake_lost(e, r, p, 1, NULL);
		}
	}
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return err;
}

int md__engine_locked(struct md__engine *e, int (*op)(void *arg), void *arg)
{
	pthread_rwlock_rdlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	int r = op(arg);
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return r;
}

void (*md__engine_count_hook)(void);	/* tests only: see merge.h */

static int budget_ok(struct md__engine *e, size_t new_vmas)
{
	if (md__vmas_estimate(e->vmas) + new_vmas <= e->max_vmas)
		return 1;
	/* The estimate only ever rises: count for real before refusing, but
	 * not twice within a second. A count reads all of /proc/self/maps
	 * (2 us a mapping: 110 ms at 55,000), and this runs with a run's
	 * pages frozen: at the budget, each further mapping of a run counted
	 * again while the run's writers waited. A count that failed keeps
	 * the estimate, and refuses. */
	if (md__vmas_count_due(e->vmas)) {
		void (*hook)(void) = __atomic_load_n(&md__engine_count_hook, __ATOMIC_RELAXED);
		if (hook)
			hook();
		e->budget_counts++;
		uint64_t counted = md__vmas_count(e->vmas);
		if (counted)
			e->st.vmas = counted;
		if (counted && md__vmas_estimate(e->vmas) + new_vmas <= e->max_vmas)
			return 1;
	}
	e->st.budget_refused++;
	return 0;
}

/* Whether the n pages from a, of a run frozen and checked when the budget
 * had counted `since` times, are still frozen: a count (110 ms at 55,000
 * mappings) may take long enough for a zap that did not come through
 * md__engine_discard to take a page and its protection, and a write to
 * follow into a fresh page a mapping would replace. Every part of the run
 * mapped after a count is checked again, not only the part whose budget
 * check counted: all of it was frozen through the count. */
static int frozen_since(struct md__engine *e, uintptr_t a, size_t n, uint64_t since)
{
	if (e->budget_counts == since || still_frozen(e, a, n))
		return 1;
	e->st.abandoned += n;	/* as pages that changed under the protection */
	return 0;
}

/* A further mapping of such a run: within the VMA budget, and still
 * frozen. */
static int further_mapping_ok(struct md__engine *e, uintptr_t a, size_t n, uint64_t since)
{
	return budget_ok(e, 2) && frozen_since(e, a, n, since);
}

/* The region of the n pages from a, if a mapping may replace them (lock
 * held); else NULL and *err: -EINVAL, not registered; -ENOSPC, the VMA
 * budget is spent. */
static struct md__eregion *replaceable(struct md__engine *e, uintptr_t a, size_t n, int *err)
{
	struct md__eregion *r = md__engine_region(e, a, n * MD_EPAGE);
	*err = !r ? -EINVAL : budget_ok(e, 2) ? 0 : -ENOSPC;
	return *err ? NULL : r;
}

int md__engine_fail_maps;	/* tests only: see merge.h */

/* Tests only: a map over [addr, addr+len) fails as one before Linux 6.6
 * could, the old pages gone (see merge.h). */
static int map_fails(uintptr_t addr, size_t len)
{
	if (__atomic_load_n(&md__engine_fail_maps, __ATOMIC_RELAXED) <= 0 ||
	    __atomic_sub_fetch(&md__engine_fail_maps, 1, __ATOMIC_RELAXED) < 0)
		return 0;
	md__sys_munmap((void *)addr, len);
	errno = ENOMEM;
	return 1;
}

/* The mmap(MAP_FIXED) that replaces registered pages. */
static void *map_fixed(uintptr_t addr, size_t len, int flags, int fd, off_t off)
{
	if (map_fails(addr, len))
		return MAP_FAILED;
	return md__sys_mmap((void *)addr, len, PROT_READ | PROT_WRITE, flags | MAP_FIXED, fd, off);
}

/* map_fixed for a mapping made aside: moves it over [addr, addr+len). */
static void *map_fixed_moved(void *aside, uintptr_t addr, size_t len)
{
	if (map_fails(addr, len))
		return MAP_FAILED;
	return md__sys_mremap(aside, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)addr);
}

/* Anonymous memory of r's just moved over [a, a+len): registered with
 * userfaultfd, advised and placed as the rest of r, counted. */
static void anon_mapped(struct md__engine *e, const struct md__eregion *r, uintptr_t a, size_t len)
{
	md__uffd_register_wp(&e->uffd, a, len);
	apply_advice(r, a, len);
	md__policy_apply(a, len);
	if (r->advice & MD_EADV_HUGEPAGE)
		md__sys_madvise((void *)a, len, MADV_HUGEPAGE);
	md__vmas_add(e->vmas, 2);
}

/* Maps the n pages of content (zeroes if NULL) at a, where nothing is
 * mapped, as anonymous memory of r's, as the engine's own mappings are. The
 * hole is taken first, so that a mapping another thread put there since is
 * not replaced; the copy is made aside and moved in at once, so that no
 * one reads it half written. */
static int remake_run(struct md__engine *e, struct md__eregion *r, uintptr_t a, size_t n,
		      const unsigned char *content)
{
	size_t len = n * MD_EPAGE;
	int err;
	void *hold = md__sys_mmap((void *)a, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
				  -1, 0);
	if (hold == MAP_FAILED)
		return -errno;
	if (hold != (void *)a) {	/* before Linux 4.17 the flag is a hint */
		err = -EEXIST;
		goto unmap_hold;
	}
	void *tmp = md__sys_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (tmp == MAP_FAILED) {
		err = -errno;
		goto unmap_hold;
	}
	md__policy_apply_to((uintptr_t)tmp, a, len);
	if (content)
		memcpy(tmp, content, len);
	else
		memset(tmp, 0, len);	/* there, as the page was: a hole is the VMM's (freeze) */
	if (md__sys_mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)a) == MAP_FAILED) {
		err = -errno;
		goto unmap_tmp;
	}
	anon_mapped(e, r, a, len);
	size_t first = (a - r->start) / MD_EPAGE;
	for (size_t i = 0; i < n; i++) {
		release_ref(e, r, first + i);	/* in anonymous memory now */
		dropped_set(e, r, first + i, 0);
	}
	e->st.map_remade += n;
	return 0;

unmap_tmp:
	md__sys_munmap(tmp, len);
unmap_hold:
	md__sys_munmap(hold, len);
	return err;
}

/* After a failed map_fixed over the n frozen pages at addr (lock held).
 * Up to Linux 6.6 mmap_region() unmaps the old pages before steps that can
 * still fail (the commit charge under strict overcommit, a VMA's
 * allocation, a file's ->mmap): the guest's pages would be gone, and the
 * VMM's next touch a SIGSEGV. Their content is known: they are frozen and
 * compared equal with content (n pages; NULL: zeroes), or a discard's,
 * zeroes from now on. Each run of them not mapped any more is made again
 * with it. */
static void remake_lost(struct md__engine *e, struct md__eregion *r, uintptr_t addr, size_t n,
			const unsigned char *content)
{
	unsigned char vec;
	for (size_t i = 0, j; i < n; i = j) {
		for (j = i; j < n && mincore((void *)(addr + j * MD_EPAGE), MD_EPAGE, &vec) != 0 &&
			    errno == ENOMEM; j++)
			;
		if (j == i) {
			j++;
			continue;
		}
		int err = remake_run(e, r, addr + i * MD_EPAGE, j - i, content ? content + i * MD_EPAGE : NULL);
		if (err)
			md__log("guest RAM at %#lx (%zu pages) lost its mapping after a failed mmap, "
				"and cannot be mapped again: %s", (unsigned long)(addr + i * MD_EPAGE), j - i,
				strerror(-err));
	}
}

/* Whether the descriptor the n pages at hand map pool pages from is
 * still that pool's (remote: memdedupd's, else ours), checked right
 * before each use: it is used by number, and the VMM may have closed it or
 * put a file of its own there (dup2), whose bytes the guest would read
 * instead. Else counted: those pages stay as they were. */
static int pool_fd_ok(struct md__engine *e, int remote, size_t n)
{
	int ok = remote ? md__remote_fd_ok(e->remote) : md__pool_fd_ok(&e->pool, e->pool.ro_fd);
	if (!ok)
		e->st.pool_replaced += n;
	return ok;
}

/* Whether a descriptor of that pool was found replaced already: -EBADF
 * before n pages are frozen for nothing, counted as pool_fd_ok does. */
static int pool_lost(struct md__engine *e, int remote, size_t n)
{
	int lost = remote ? __atomic_load_n(&e->remote->fd_lost, __ATOMIC_RELAXED) : e->pool.lost;
	if (lost)
		e->st.pool_replaced += n;
	return lost ? -EBADF : 0;
}

void (*md__engine_pool_checked_hook)(int fd);	/* tests only: see merge.h */

int md__engine_map_moved(void *dst, size_t len, int fd, off_t off, int (*look)(void *arg), void *arg,
			 enum md__map_step *failed)
{
	int err;
	void *aside = md__sys_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, off);
	if (aside == MAP_FAILED) {
		*failed = MD_MAP_ASIDE;
		return -errno;
	}
	if (look && !look(arg)) {
		*failed = MD_MAP_LOOK;
		err = -EBADF;
		goto unmap_aside;
	}
	if (map_fixed_moved(aside, (uintptr_t)dst, len) != MAP_FAILED)
		return 0;
	*failed = MD_MAP_MOVE;
	err = -errno;
unmap_aside:
	md__sys_munmap(aside, len);
	return err;
}

struct pool_look {
	struct md__engine *e;
	int remote, fd;
	size_t n;
};

static int pool_looked(void *arg)
{
	struct pool_look *l = arg;
	if (!pool_fd_ok(l->e, l->remote, l->n))
		return 0;
	void (*hook)(int) = __atomic_load_n(&md__engine_pool_checked_hook, __ATOMIC_RELAXED);
	if (hook)
		hook(l->fd);
	return 1;
}

/* Maps n pages of the pool at fd from slot over the frozen pages at addr,
 * through md__engine_map_moved with pool_fd_ok as the look. 0, or -EBADF
 * (that pool's descriptor replaced, counted) or another negative errno
 * (counted as map_failed) with the pages as they were (or made again:
 * remake_lost). */
static int map_pool_moved(struct md__engine *e, struct md__eregion *r, uintptr_t addr, size_t n, int fd,
			  uint32_t slot, int remote)
{
	struct pool_look l = { .e = e, .remote = remote, .fd = fd, .n = n };
	enum md__map_step step;
	int err = md__engine_map_moved((void *)addr, n * MD_EPAGE, fd, (off_t)slot * MD_EPAGE, pool_looked, &l,
				       &step);
	if (!err || step == MD_MAP_LOOK)	/* counted by pool_looked */
		return err;
	/* A number closed since the caller looked (EBADF) or given to a
	 * file that cannot be mapped so: counted as replaced. */
	if (step == MD_MAP_ASIDE && !pool_fd_ok(e, remote, n))
		return -EBADF;
	e->st.map_failed += n;
	if (step == MD_MAP_MOVE)
		remake_lost(e, r, addr, n, remote ? md__engine_pool_page(e, slot) : md__pool_page(&e->pool, slot));
	return err;
}

/* Maps n pool slots from slot over the frozen pages at addr. */
static int map_pool(struct md__engine *e, struct md__eregion *r, uintptr_t addr,
		    size_t n, uint32_t slot)
{
	int fd = e->remote ? e->remote->ro_fd : e->pool.ro_fd;
	int err = map_pool_moved(e, r, addr, n, fd, slot, e->remote != NULL);
	if (err)
		return err;
	/* Not registered with userfaultfd here: freeze() registers a mapping
	 * the first time it must freeze it again (after a copy-on-write
	 * break, rare). Not advised here either: the caller advises the
	 * whole run it mapped at once (apply_advice), before it lets go of
	 * the lock. Left to the agent's thread, merges spread over all guest
	 * RAM made it advise nearly all of it, walking thousands of
	 * mappings, every second of a convergence. */
	/* At most two new VMAs (the split halves of what it replaced);
	 * fewer when it joins a neighbour with adjacent pool offsets. */
	md__vmas_add(e->vmas, 2);
	size_t first = (addr - r->start) / MD_EPAGE;
	/* The new references before the old go: a page of the run that held
	 * one of these slots (written since, not reaped yet) must not free
	 * it on the way, for a one-page publication to rewrite in place
	 * under this mapping. A remote slot was pinned by whoever asked for
	 * this merge. */
	for (size_t i = 0; i < n && !e->remote; i++)
		md__pool_get(&e->pool, slot + (uint32_t)i);
	for (size_t i = 0; i < n; i++) {
		release_ref(e, r, first + i);
		dropped_set(e, r, first + i, 0);	/* no longer a dropped zero page */
		r->ref[first + i] = MD_REF_FILE | (slot + (uint32_t)i + 1);
	}
	return 0;
}

/* 1 if one of the n pages at addr lies in a file mapping (the pool's, an
 * image's): zeroes there take a mapping of their own. */
static int run_in_file(const struct md__eregion *r, uintptr_t addr, size_t n)
{
	size_t first = (addr - r->start) / MD_EPAGE;
	for (size_t i = 0; i < n; i++)
		if (r->ref[first + i] & (MD_REF_FILE | MD_REF_IMAGE))
			return 1;
	return 0;
}

/* Replaces pages by anonymous zero-fill memory (file mappings: the pool's,
 * an image's) or drops them (anonymous mappings), so they read as zeroes
 * again. */
static int zero_run(struct md__engine *e, struct md__eregion *r, uintptr_t addr, size_t n)
{
	size_t first = (addr - r->start) / MD_EPAGE;
	if (run_in_file(r, addr, n)) {
		/* MADV_DONTNEED in a private file mapping would show the file's
		 * page again, not zeroes: a pool slot since reused, an image
		 * a writer changed after its lease broke (the agent made the
		 * page a private copy, in the same mapping). */
		void *m = map_fixed(addr, n * MD_EPAGE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED) {
			int err = -errno;
			e->st.map_failed += n;
			remake_lost(e, r, addr, n, NULL);
			return err;
		}
		md__uffd_register_wp(&e->uffd, addr, n * MD_EPAGE);
		apply_advice(r, addr, n * MD_EPAGE);
		md__policy_apply(addr, n * MD_EPAGE);
		if (r->advice & MD_EADV_HUGEPAGE)
			md__sys_madvise((void *)addr, n * MD_EPAGE, MADV_HUGEPAGE);
		md__vmas_add(e->vmas, 2);
	} else if (md__sys_madvise((void *)addr, n * MD_EPAGE, MADV_DONTNEED) != 0) {
		return -errno;
	}
	for (size_t i = 0; i < n; i++)
		release_ref(e, r, first + i);
	return 0;
}

int md__engine_merge(struct md__engine *e, void *addr, size_t n, uint32_t slot)
{
	uint32_t slots[MAX_RUN];
	if (n == 0 || n > MAX_RUN)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		slots[i] = slot + (uint32_t)i;
	return md__engine_merge_slots(e, addr, n, slots, NULL);
}

/* What md__engine_merge_slots found for each page. */
enum { EQ_DIFFERS, EQ_SAME, EQ_NO_SLOT };

static int slot_mergeable(struct md__engine *e, uint32_t slot)
{
	if (e->remote)
		return md__remote_valid(e->remote, slot, 1);
	return (size_t)slot < e->pool.end && e->pool.state[slot] == MD_SLOT_LIVE;
}

int md__engine_merge_slots(struct md__engine *e, void *addr, size_t n, const uint32_t *slots,
			   unsigned char *done)
{
	uintptr_t a = (uintptr_t)addr;
	unsigned char eq[MAX_RUN];
	int err, merged = 0;

	if (done && n <= MAX_RUN)
		memset(done, 0, n);
	if (a % MD_EPAGE || n == 0 || n > MAX_RUN)
		return -EINVAL;
	pthread_mutex_lock(&e->lock);
	struct md__eregion *r = replaceable(e, a, n, &err);
	/* Before the freeze too: a pool found replaced freezes nothing. */
	err = !r ? err : pool_fd_ok(e, e->remote != NULL, n) ? 0 : -EBADF;
	if (err)
		goto unlock;
	/* One freeze, one check and one advice for the whole run of guest
	 * pages, whatever slots they go to: a guest's copies of one page
	 * lie side by side and map the same slot, a mapping each. */
	uint64_t pm[MAX_RUN];
	err = freeze(e, r, a, n, pm);
	if (err)
		goto unlock;
	/* Unequal pages are abandoned merges; pages whose slot is not live
	 * are only left as they were. */
	for (size_t c = 0; c < n; c += CMP_PAGES) {
		size_t m = n - c < CMP_PAGES ? n - c : CMP_PAGES, np = 0;
		const unsigned char *g = frozen_pages(e, a + c * MD_EPAGE, m), *pp[CMP_PAGES];
		for (size_t i = c; i < c + m; i++) {
			/* Not read (no memory, or EFAULT): left as they were,
			 * a fallback, not pages that differed. */
			eq[i] = !g ? EQ_NO_SLOT : slot_mergeable(e, slots[i]) ? EQ_DIFFERS : EQ_NO_SLOT;
			if (eq[i] == EQ_DIFFERS)
				pp[np++] = md__engine_pool_page(e, slots[i]);
		}
		e->st.freeze_failed += g ? 0 : m;
		if (np && other_pages(e, pp, np) != 0) {
			/* The pool's pages not read either (a slot's page
			 * gone from the file): the same fallback. The
			 * pointers themselves are never compared: a page
			 * not there would be a SIGBUS in the VMM. */
			for (size_t i = c; i < c + m; i++)
				if (eq[i] == EQ_DIFFERS) {
					eq[i] = EQ_NO_SLOT;
					e->st.freeze_failed++;
				}
			continue;
		}
		for (size_t i = c, k = 0; i < c + m && g; i++)
			if (eq[i] == EQ_DIFFERS && memcmp(g + (i - c) * MD_EPAGE, pp[k++], MD_EPAGE) == 0)
				eq[i] = EQ_SAME;
	}
	if (!still_frozen(e, a, n))
		for (size_t i = 0; i < n; i++)
			eq[i] = eq[i] == EQ_SAME ? EQ_DIFFERS : eq[i];
	uint64_t since = e->budget_counts;

	size_t lo = n, hi = 0;	/* the merged span, advised at once */
	for (size_t i = 0; i < n;) {
		size_t j = i + 1;
		if (eq[i] == EQ_SAME)	/* equal pages of consecutive slots map at once */
			while (j < n && eq[j] == EQ_SAME && slots[j] == slots[i] + (j - i))
				j++;
		else
			while (j < n && eq[j] == eq[i])
				j++;
		uintptr_t ra = a + i * MD_EPAGE;
		size_t rlen = (j - i) * MD_EPAGE;
		/* The first mapping was reckoned with the run (replaceable);
		 * each further one, which a page between that differs makes,
		 * is reckoned as it comes. */
		if (eq[i] == EQ_SAME && (lo == n || further_mapping_ok(e, ra, j - i, since)) &&
		    map_pool(e, r, ra, j - i, slots[i]) == 0) {
			merged += (int)(j - i);
			if (done)
				memset(done + i, 1, j - i);
			lo = i < lo ? i : lo;
			hi = j;
		} else {
			/* Unequal, or mmap failed and left the page as it
			 * was (or made it again, remake_lost): give it back
			 * to its writers. */
			if (eq[i] == EQ_DIFFERS)
				e->st.abandoned += j - i;
			thaw(e, ra, rlen);
		}
		i = j;
	}
	if (merged) {
		/* Pages between that were not merged get their region's
		 * advice again (or early, for a read's mapping the agent has
		 * not advised yet): the same flags, nothing changes for them. */
		apply_advice(r, a + lo * MD_EPAGE, (hi - lo) * MD_EPAGE);
		/* A writer that hit the freeze waits: wake it to fault again
		 * on the new mapping. */
		md__uffd_wake(&e->uffd, a + lo * MD_EPAGE, (hi - lo) * MD_EPAGE);
	}
	e->st.merged += (uint64_t)merged;
	err = merged;
unlock:
	md__engine_unlock(e);
	return err;
}

int md__engine_merge_file(struct md__engine *e, void *addr, size_t n, int fd, off_t off,
			  const void *content, int (*still_fixed)(void *arg), void *arg)
{
	uintptr_t a = (uintptr_t)addr;
	int err;

	if (a % MD_EPAGE || off % MD_EPAGE || n == 0 || n > MAX_RUN)
		return -EINVAL;
	pthread_rwlock_rdlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	struct md__eregion *r = replaceable(e, a, n, &err);
	if (!r)
		goto unlock;
	uint64_t pm[MAX_RUN];
	err = freeze(e, r, a, n, pm);
	if (err)
		goto unlock;
	/* All or nothing: the callers pass runs of pages that matched by
	 * hash, which are equal unless a guest wrote one just now. */
	err = 0;
	int differ = 0;
	for (size_t c = 0; c < n && !differ; c += CMP_PAGES) {
		size_t m = n - c < CMP_PAGES ? n - c : CMP_PAGES;
		const unsigned char *f[CMP_PAGES];
		for (size_t i = 0; i < m; i++)
			f[i] = (const unsigned char *)content + (c + i) * MD_EPAGE;
		/* Not read straight when the copy fails: an image's page
		 * may be a SIGBUS (the agent's view of a tmpfs image over a
		 * hole, on a full tmpfs), here in the VMM. */
		const unsigned char *g = other_pages(e, f, m) == 0 ? frozen_pages(e, a + c * MD_EPAGE, m) : NULL;
		if (!g) {
			e->st.freeze_failed += n;	/* not read: a fallback */
			err = -EFAULT;	/* not 0, which says a page differed */
			goto thaw_pages;
		}
		differ = memcmp(g, f[0], m * MD_EPAGE) != 0;
	}
	if (differ || !still_frozen(e, a, n)) {
		e->st.abandoned += n;
		goto thaw_pages;
	}
	/* Mapped aside first and moved over the frozen pages once the caller
	 * has seen the descriptor is still what holds the file fixed. */
	enum md__map_step step;
	err = md__engine_map_moved(addr, n * MD_EPAGE, fd, off, still_fixed, arg, &step);
	if (err) {
		if (step == MD_MAP_LOOK)
			e->st.image_replaced += n;	/* equal, not mapped: a fallback */
		else
			e->st.map_failed += n;
		if (step == MD_MAP_MOVE)
			remake_lost(e, r, a, n, content);
		goto thaw_pages;
	}
	/* Not registered with userfaultfd (file pages other than shmem cannot
	 * be write-protected): like a page shared at read time, the scanner
	 * leaves it alone from now on, written or not. */
	apply_advice(r, a, n * MD_EPAGE);
	md__policy_apply_file(a, n * MD_EPAGE, fd);
	md__vmas_add(e->vmas, 2);
	size_t first = (a - r->start) / MD_EPAGE;
	for (size_t i = 0; i < n; i++)
		set_image(e, r, first + i);
	md__uffd_wake(&e->uffd, a, n * MD_EPAGE);
	e->st.merged_file += n;
	err = (int)n;
	goto unlock;

thaw_pages:
	thaw(e, a, n * MD_EPAGE);
unlock:
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return err;
}

/* Freezes the n pages at addr and sets eq[i] when page i is word
 * repeated, all 0 if the protection did not hold (see still_frozen). */
static int freeze_filled(struct md__engine *e, const struct md__eregion *r, uintptr_t a, size_t n,
			 uint64_t word, unsigned char *eq, uint64_t *pm)
{
	int err = freeze(e, r, a, n, pm);
	if (err)
		return err;
	for (size_t c = 0; c < n; c += CMP_PAGES) {
		size_t m = n - c < CMP_PAGES ? n - c : CMP_PAGES;
		const unsigned char *g = frozen_pages(e, a + c * MD_EPAGE, m);
		if (!g) {	/* not read: a fallback, not pages that differed */
			thaw(e, a, n * MD_EPAGE);
			e->st.freeze_failed += n;
			return -EFAULT;
		}
		for (size_t i = 0; i < m; i++)
			eq[c + i] = md__page_is_filled(g + i * MD_EPAGE, word);
	}
	if (!still_frozen(e, a, n))
		memset(eq, 0, n);
	return 0;
}

/* A page that held something before the drop's freeze: md__pm_has_page(),
 * and not the kernel's zero page. */
static int had_content(const struct md__engine *e, uint64_t pm)
{
	return md__pm_has_page(pm) && !((pm & MD_PM_PRESENT) && e->zero_pfn && (pm & MD_PM_PFN) == e->zero_pfn);
}

int md__engine_merge_zero(struct md__engine *e, void *addr, size_t n)
{
	uintptr_t a = (uintptr_t)addr;
	unsigned char z[MAX_RUN];
	int err, dropped = 0;

	if (a % MD_EPAGE || n == 0 || n > MAX_RUN)
		return -EINVAL;
	pthread_mutex_lock(&e->lock);
	struct md__eregion *r = md__engine_region(e, a, n * MD_EPAGE);
	err = -EINVAL;
	if (!r)
		goto unlock;
	/* Only pages there before the freeze (a hole the VMM made since the
	 * scanner's window makes the run wait for its next visit), and of
	 * those only the ones that held something are marked ours. */
	/* Zeroes in a file mapping take a mapping of their own (zero_run),
	 * and the freeze may register part of it (another split). */
	err = -ENOSPC;
	if (run_in_file(r, a, n) && !budget_ok(e, 4))
		goto unlock;
	uint64_t pm[MAX_RUN];
	err = freeze_filled(e, r, a, n, 0, z, pm);
	if (err)
		goto unlock;
	uint64_t since = e->budget_counts;
	size_t first = (a - r->start) / MD_EPAGE;
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j < n && z[j] == z[i])
			j++;
		uintptr_t ra = a + i * MD_EPAGE;
		size_t rlen = (j - i) * MD_EPAGE;
		/* A drop in a file mapping splits it (a guest zeroing pages it
		 * wrote after their merge: Windows, init_on_free): within the
		 * budget, like a merge, or the page stays as it is. */
		if (z[i] &&
		    (run_in_file(r, ra, j - i) ? further_mapping_ok(e, ra, j - i, since)
					       : frozen_since(e, ra, j - i, since)) &&
		    zero_run(e, r, ra, j - i) == 0) {
			for (size_t k = i; k < j; k++) {
				size_t p = first + k;
				/* Zero when last dropped or read too: read
				 * in again (no zero page), not new work. The
				 * dropped bit alone would not tell it once a
				 * reap found the page there (undropped). */
				if (md__dropped(r, p) || (r->seen[p] && r->hash[p] == e->zero_hash)) {
					e->st.zero_again++;
					r->seen[p] = md__seen_aged(r->seen[p]);
				} else {
					dropped++;
					r->hash[p] = e->zero_hash;
					r->seen[p] = MD_SEEN;
				}
				if (had_content(e, pm[k]))
					dropped_set(e, r, p, 1);
			}
			/* The zap took the protection with the page. */
			md__uffd_wake(&e->uffd, ra, rlen);
		} else {
			/* Written since the scanner saw zeroes (or since the
			 * compare: the protection lost), as merge_fill counts. */
			if (!z[i])
				e->st.abandoned += j - i;
			thaw(e, ra, rlen);
		}
		i = j;
	}
	e->st.zero += (uint64_t)dropped;
	err = dropped;
unlock:
	md__engine_unlock(e);
	return err;
}

/* The strip of word, made if there is none yet (lock held); its first
 * slot, or -ENOSPC. */
static int64_t fill_strip(struct md__engine *e, uint64_t word)
{
	struct md__fill *f = NULL;
	for (size_t i = 0; i < MD_FILLS; i++) {
		if (e->fills[i].slot && e->fills[i].word == word)
			return (int64_t)e->fills[i].slot - 1;
		if (!e->fills[i].slot && !f)
			f = &e->fills[i];
	}
	if (!f)
		return -ENOSPC;
	uint64_t page[MD_EPAGE / sizeof(uint64_t)];
	for (size_t k = 0; k < MD_EPAGE / sizeof(uint64_t); k++)
		page[k] = word;
	uint32_t slot;
	int err = md__pool_reserve(&e->pool, MD_FILL_STRIP, &slot);
	if (err)
		return err;
	if (slot + MD_FILL_STRIP > MD_REF_SLOTS_MAX) {
		md__pool_unreserve(&e->pool, slot, MD_FILL_STRIP);
		return -ENOSPC;
	}
	for (uint32_t k = 0; k < MD_FILL_STRIP; k++) {
		err = md__pool_publish(&e->pool, slot + k, page, 1);
		if (err) {
			for (uint32_t j = 0; j < k; j++)
				md__pool_put(&e->pool, slot + j);
			md__pool_unreserve(&e->pool, slot + k, MD_FILL_STRIP - k);
			return err;
		}
		md__pool_get(&e->pool, slot + k);	/* the strip's own */
	}
	*f = (struct md__fill){ word, slot + 1 };
	return slot;
}

/* Maps the n frozen, equal pages at addr from the strip at slot, up to
 * MD_FILL_STRIP pages per mapping, each within the VMA budget but the
 * first of the merge (reckoned with it: first set); the rest of a run the
 * budget refuses is thawed. */
static int map_fill(struct md__engine *e, struct md__eregion *r, uintptr_t addr, size_t n,
		    uint32_t slot, int first_of_merge, uint64_t since)
{
	for (size_t done = 0; done < n;) {
		size_t k = n - done < MD_FILL_STRIP ? n - done : MD_FILL_STRIP;
		uintptr_t a = addr + done * MD_EPAGE;
		/* Equal pages refused by the budget are counted there
		 * (budget_refused), not as abandoned: they did not differ. */
		if (!(first_of_merge && done == 0) && !further_mapping_ok(e, a, k, since)) {
			thaw(e, a, (n - done) * MD_EPAGE);
			return (int)done;
		}
		int err = map_pool_moved(e, r, a, k, e->pool.ro_fd, slot, 0);
		if (err) {
			/* The rest of the run is left too: counted as a
			 * replaced pool's pages, as these k were. */
			e->st.pool_replaced += err == -EBADF ? n - done - k : 0;
			thaw(e, a, (n - done) * MD_EPAGE);
			return (int)done;
		}
		md__vmas_add(e->vmas, 2);
		size_t first = (a - r->start) / MD_EPAGE;
		for (size_t i = 0; i < k; i++) {
			release_ref(e, r, first + i);
			md__pool_get(&e->pool, slot + (uint32_t)i);
			r->ref[first + i] = MD_REF_FILE | MD_REF_FILL | (slot + (uint32_t)i + 1);
			dropped_set(e, r, first + i, 0);
		}
		done += k;
	}
	return (int)n;
}

int md__engine_merge_fill(struct md__engine *e, void *addr, size_t n, uint64_t word)
{
	uintptr_t a = (uintptr_t)addr;
	unsigned char eq[MAX_RUN];
	int err, merged = 0;

	if (a % MD_EPAGE || n == 0 || n > MAX_RUN || word == 0)
		return -EINVAL;
	pthread_mutex_lock(&e->lock);
	/* The first mapping and its two split halves; each further one (a
	 * strip's worth of pages more, or pages between that differ) is
	 * reckoned as it comes (map_fill). */
	struct md__eregion *r = md__engine_region(e, a, n * MD_EPAGE);
	err = !r ? -EINVAL : pool_lost(e, 0, n);
	err = err ? err : budget_ok(e, 2) ? 0 : -ENOSPC;
	if (err)
		goto unlock;
	int64_t slot = fill_strip(e, word);
	if (slot < 0) {
		err = (int)slot;
		e->st.pool_replaced += err == -EBADF ? n : 0;	/* md__pool_fd_ok */
		goto unlock;
	}
	uint64_t pm[MAX_RUN];
	err = freeze_filled(e, r, a, n, word, eq, pm);
	if (err)
		goto unlock;
	uint64_t since = e->budget_counts;
	size_t lo = n, hi = 0;
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j < n && eq[j] == eq[i])
			j++;
		uintptr_t ra = a + i * MD_EPAGE;
		if (!eq[i]) {
			e->st.abandoned += j - i;
			thaw(e, ra, (j - i) * MD_EPAGE);
		} else {
			int m = map_fill(e, r, ra, j - i, (uint32_t)slot, lo == n, since);
			merged += m;
			lo = i < lo ? i : lo;
			hi = i + (size_t)m > hi ? i + (size_t)m : hi;
		}
		i = j;
	}
	if (merged) {
		apply_advice(r, a + lo * MD_EPAGE, (hi - lo) * MD_EPAGE);
		md__uffd_wake(&e->uffd, a + lo * MD_EPAGE, (hi - lo) * MD_EPAGE);
	}
	e->st.filled += (uint64_t)merged;
	err = merged;
unlock:
	md__engine_unlock(e);
	return err;
}

int md__engine_publish(struct md__engine *e, void *addr, size_t n, uint32_t *slotp)
{
	uintptr_t a = (uintptr_t)addr;
	uint32_t slot;
	int err;

	/* Into our own pool only (with memdedupd's, map_pool would map its
	 * pool's slot of that number), and through one read of the frozen
	 * pages: never guest RAM read in place, which the VMM may have made
	 * inaccessible. */
	if (a % MD_EPAGE || n == 0 || n > CMP_PAGES || e->remote)
		return -EINVAL;
	pthread_mutex_lock(&e->lock);
	struct md__eregion *r = replaceable(e, a, n, &err);
	if (!r || (err = pool_lost(e, 0, n)))
		goto unlock;
	err = md__pool_reserve(&e->pool, n, &slot);
	if (err)
		goto unlock;
	uint64_t pm[MAX_RUN];
	err = freeze(e, r, a, n, pm);
	if (err)
		goto unreserve;
	/* Frozen, so what we copy (read through the kernel, frozen_pages) is
	 * what stays; the compare after the copy is the same proof a merge
	 * needs (a short write, a bug, a page that was not frozen after all
	 * all show up here). */
	const unsigned char *g = frozen_pages(e, a, n);
	e->st.freeze_failed += g ? 0 : n;
	err = g ? md__pool_publish(&e->pool, slot, g, n) : -EFAULT;
	e->st.pool_replaced += err == -EBADF ? n : 0;	/* md__pool_fd_ok */
	if (err)
		goto thaw_pages;
	err = -EAGAIN;
	if (memcmp(g, md__pool_page(&e->pool, slot), n * MD_EPAGE) != 0 || !still_frozen(e, a, n)) {
		e->st.abandoned += n;
		goto drop_slots;
	}
	err = map_pool(e, r, a, n, slot);
	if (err)
		goto drop_slots;
	apply_advice(r, a, n * MD_EPAGE);
	for (size_t i = 0; i < n; i++) {
		uint64_t h = md__page_hash(g + i * MD_EPAGE);
		e->slot_hash[slot + i] = h;
		md__index_insert(&e->index, h, slot + (uint32_t)i);
	}
	md__uffd_wake(&e->uffd, a, n * MD_EPAGE);
	e->st.published += n;
	*slotp = slot;
	md__engine_unlock(e);
	return (int)n;

drop_slots:
	for (size_t i = 0; i < n; i++)
		md__pool_drop_unused(&e->pool, slot + (uint32_t)i);
thaw_pages:
	thaw(e, a, n * MD_EPAGE);
unreserve:
	md__pool_unreserve(&e->pool, slot, n);
unlock:
	md__engine_unlock(e);
	return err;
}

static const void *slot_page(void *arg, uint32_t slot)
{
	return md__pool_page(arg, slot);
}

int64_t md__engine_lookup(struct md__engine *e, const void *page, uint64_t hash)
{
	pthread_mutex_lock(&e->lock);
	int64_t s = md__index_find(&e->index, hash, page, slot_page, &e->pool);
	md__engine_unlock(e);
	return s;
}

int md__engine_discard(struct md__engine *e, void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr;
	int err = 0;

	int ours = 0;
	pthread_mutex_lock(&e->lock);
	/* Every region the range overlaps: a discard may span two. Under the
	 * lock: a zap in the middle of a merge would drop the write-protection
	 * of a frozen page (see still_frozen). */
	/* A run that fails (its map, memory short) does not stop the rest:
	 * the VMM is told the discard failed, with as much of it done as
	 * could be (zeroes, or remade with its content). */
	for (size_t ri = 0; ri < e->nregions; ri++) {
		struct md__eregion *r = &e->regions[ri];
		uintptr_t s0 = a > r->start ? a : r->start, s1 = a + len < r->end ? a + len : r->end;
		struct md__file_map *v = NULL;
		size_t nv = SIZE_MAX;
		ours |= s0 < s1;
		/* Pages of the VMM's own private file mapping are left to its
		 * discard, which shows its file again there, as without us:
		 * zeroes in anonymous memory would not be (privatize_pages). */
		for (uintptr_t p = s0; p < s1;) {
			size_t i = (p - r->start) / MD_EPAGE, n = 0;
			while (p + n * MD_EPAGE < s1 && n < MAX_RUN &&
			       !(r->ref[i + n] == MD_REF_FILE && vmm_file_page(e, r, p + n * MD_EPAGE, s0, s1, &v, &nv)))
				n++;
			if (!n) {
				p += MD_EPAGE;
				continue;
			}
			int rerr = zero_run(e, r, p, n);
			err = err ? err : rerr;
			for (size_t k = 0; k < n && !rerr; k++)	/* the VMM's holes now */
				dropped_set(e, r, i + k, 0);
			p += n * MD_EPAGE;
		}
		free(v);
	}
	/* The range is holes now (zero_run), before the VMM's own zap: a
	 * merge after this finds them (freeze), and the scanner's windows
	 * read before are stale (see md__scanner_step). */
	if (ours)
		__atomic_add_fetch(&e->zap_gen, 1, __ATOMIC_RELEASE);
	md__engine_unlock(e);
	return err;
}

/* Whether any of the n pages from page base of r is a dropped zero page
 * (base a multiple of 8: whole bytes of the bitmap, its bits past the
 * region's end clear). */
static int any_dropped(const struct md__eregion *r, size_t base, size_t n)
{
	for (size_t b = base / 8; b < (base + n + 7) / 8; b++)
		if (r->dropped[b])
			return 1;
	return 0;
}

int md__engine_reap(struct md__engine *e)
{
	uint64_t pm[MAX_RUN];
	int broken = 0;

	pthread_mutex_lock(&e->lock);
	for (size_t ri = 0; ri < e->nregions; ri++) {
		struct md__eregion *r = &e->regions[ri];
		size_t np = (r->end - r->start) / MD_EPAGE;
		for (size_t base = 0; base < np; base += MAX_RUN) {
			size_t n = np - base < MAX_RUN ? np - base : MAX_RUN;
			size_t k;
			for (k = 0; k < n && !MD_REF_SLOT(r->ref[base + k]); k++)
				;
			int drops = any_dropped(r, base, n);
			if (k == n && !drops)
				continue;
			if (pagemap_read(e, r->start + base * MD_EPAGE, n, pm))
				continue;
			/* A dropped zero page the guest wrote since holds
			 * memory again: no zero page any more (zero_pages, the
			 * profit), not only once the cursor comes round to it
			 * (half an hour for a GiB at the idle rate). The kernel's
			 * zero page, which a read maps, pagemap flags neither
			 * exclusive nor file, frames hidden or not; without one
			 * a read maps a page of its own, which holds memory too
			 * (a drop again is no new work: md__engine_merge_zero). */
			for (size_t i = 0; drops && i < n; i++) {
				uint64_t p = pm[i];
				int held = (p & MD_PM_PRESENT) ? !(p & MD_PM_FILE) && (p & MD_PM_EXCLUSIVE)
							       : md__pm_private_anon(p);
				if (held && md__dropped(r, base + i)) {
					dropped_set(e, r, base + i, 0);
					e->st.undropped++;
				}
			}
			for (size_t i = 0; i < n; i++) {
				if (!MD_REF_SLOT(r->ref[base + i]))
					continue;
				/* A private anonymous page where the pool page
				 * was: the guest wrote it. Not present, or a
				 * file page (even migrating): it still reads the
				 * pool page, whose slot must stay. */
				if (!md__pm_private_anon(pm[i]))
					continue;
				release_ref(e, r, base + i);
				r->ref[base + i] = MD_REF_FILE;
				/* Written: young again (an age from before its
				 * merge would count it in pages_unshared, and
				 * skip it, until the cursor came by). */
				if (r->seen[base + i])
					r->seen[base + i] = MD_SEEN;
				broken++;
			}
		}
	}
	e->st.cow_broken += (uint64_t)broken;
	md__engine_unlock(e);
	return broken;
}

/* Moves the n frozen-to-be pages at a (MD_REF_FILE alone) into anonymous
 * memory of their own (both locks held): as a merge, the copy is taken
 * under write-protection and made aside, then moved over them, so a write
 * waits for the move and lands in the new page. Returns n or -errno. */
static int leave_run(struct md__engine *e, struct md__eregion *r, uintptr_t a, size_t n)
{
	uint64_t pm[MAX_RUN];
	size_t len = n * MD_EPAGE, first = (a - r->start) / MD_EPAGE;
	if (!budget_ok(e, 2))
		return -ENOSPC;
	int err = freeze(e, r, a, n, pm);
	if (err)
		return err;
	const unsigned char *g = frozen_pages(e, a, n);
	void *aside = g ? md__sys_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
			: MAP_FAILED;
	if (aside == MAP_FAILED) {
		e->st.freeze_failed += g ? 0 : n;
		err = g ? -ENOMEM : -EFAULT;	/* either tried again next pass */
		goto thaw_pages;
	}
	md__policy_apply_to((uintptr_t)aside, a, len);	/* the copies on the VMM's nodes */
	memcpy(aside, g, len);
	if (!still_frozen(e, a, n)) {
		e->st.abandoned += n;
		err = -EAGAIN;
		goto unmap_aside;
	}
	if (map_fixed_moved(aside, a, len) == MAP_FAILED) {
		err = -errno;
		e->st.map_failed += n;
		remake_lost(e, r, a, n, g);
		goto unmap_aside;
	}
	anon_mapped(e, r, a, len);
	for (size_t i = 0; i < n; i++)
		release_ref(e, r, first + i);	/* a slot's reference too (md__engine_unregister_anon) */
	md__uffd_wake(&e->uffd, a, len);
	e->st.left_file += n;
	return (int)n;

unmap_aside:
	md__sys_munmap(aside, len);
thaw_pages:
	thaw(e, a, len);
	return err;
}

/* The spans of this process's mappings of a pool file that is neither the
 * engine's own nor memdedupd's current one: an old pool's (memdedupd
 * restarted, or the domain changed), in address order. MD_REF_FILE alone
 * says only "a file page": a private mapping of the VMM's own file (a
 * memory backend with share=off) is one too, and is left alone. */
static int old_pool_spans(struct md__engine *e, struct md__file_map **v, size_t *n)
{
	struct stat own, cur;
	own.st_ino = cur.st_ino = 0;
	own.st_dev = cur.st_dev = 0;
	/* As recorded when opened: the VMM may have put a file of its own
	 * at either number since. */
	pthread_mutex_lock(&e->lock);
	if (e->pool.fd >= 0) {
		own.st_dev = e->pool.dev;
		own.st_ino = e->pool.ino;
	}
	if (e->remote && e->remote->ro_fd >= 0) {
		cur.st_dev = e->remote->dev;
		cur.st_ino = e->remote->ino;
	}
	pthread_mutex_unlock(&e->lock);
	int err = md__range_file_maps(0, UINTPTR_MAX, v, n);
	if (err)
		return err;
	size_t k = 0;
	for (size_t i = 0; i < *n; i++) {
		const struct md__file_map *m = &(*v)[i];
		int mine = (m->ino == own.st_ino && m->dev == own.st_dev) ||
			   (m->ino == cur.st_ino && m->dev == cur.st_dev);
		if (m->pool && !mine)
			(*v)[k++] = *m;
	}
	*n = k;
	return 0;
}

/* Outcome of the run at a (its pages in *len): moved (n), left (0: not
 * guest RAM, or unwritten pages without room), or an error: -EAGAIN,
 * -EBUSY, -ENOMEM and -ENOSPC are tried again next pass; -ESTALE: the
 * VMM's mappings changed since the spans were read (gen), the call ends;
 * any other (a mapping that cannot be write-protected) is not tried again. */
static int leave_span_run(struct md__engine *e, uintptr_t a, uintptr_t hi, uint64_t gen, size_t *len)
{
	uint64_t pm[MAX_RUN];
	int err = 0;
	*len = (hi - a) / MD_EPAGE;
	pthread_rwlock_rdlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	/* A span read before an unmap (or a VMM's mapping of its own file put
	 * there since, registered again) is not an old pool's any more. */
	if (__atomic_load_n(&e->zap_gen, __ATOMIC_ACQUIRE) != gen) {
		err = -ESTALE;
		goto unlock;
	}
	struct md__eregion *r = md__engine_region(e, a, MD_EPAGE);
	if (!r) {
		/* Not guest RAM (given up, made private in place): left, up
		 * to the next region. */
		for (size_t i = 0; i < e->nregions; i++)
			if (e->regions[i].start > a && e->regions[i].start < a + *len * MD_EPAGE)
				*len = (e->regions[i].start - a) / MD_EPAGE;
		e->leave_outside += *len;
		goto unlock;
	}
	*len = 1;
	size_t first = (a - r->start) / MD_EPAGE, n = 0;
	uintptr_t end = hi < r->end ? hi : r->end;
	while (a + n * MD_EPAGE < end && n < CMP_PAGES && r->ref[first + n] == MD_REF_FILE)
		n++;
	if (!n)
		goto unlock;
	*len = n;
	if (pagemap_read(e, a, n, pm)) {
		err = -EAGAIN;
		goto unlock;
	}
	/* A page the guest wrote is a private copy already: moved, it costs
	 * nothing. One still reading the old pool's page is a copy more until
	 * every process has left that pool. */
	if (!e->leave_copy) {
		size_t k = 0;
		while (k < n && md__pm_private_anon(pm[k]))
			k++;
		if (!k) {	/* unwritten pages first: counted, left */
			while (k < n && !md__pm_private_anon(pm[k]))
				k++;
			e->leave_unwritten += k;
			*len = k;
			goto unlock;
		}
		n = *len = k;	/* the written ones */
	}
	err = leave_run(e, r, a, n);
unlock:
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return err;
}

void (*md__engine_leave_hook)(uintptr_t a);	/* tests only: see merge.h */

size_t md__engine_leave_file(struct md__engine *e, size_t max, int copy_unwritten)
{
	struct md__file_map *v;
	size_t nv, moved = 0, tried = 0;
	if (!__atomic_load_n(&e->leave_old, __ATOMIC_RELAXED))
		return 0;
	uint64_t gen = __atomic_load_n(&e->zap_gen, __ATOMIC_ACQUIRE);
	if (old_pool_spans(e, &v, &nv) != 0)
		return 0;
	/* Decided for the whole pass: with room for all the unwritten pages
	 * the last pass counted, all of them; else none. */
	if (!e->leave_at)
		e->leave_copy = copy_unwritten;
	/* Runs are taken one at a time under the locks. The VMM's threads
	 * may unmap or map over guest RAM meanwhile (a mapping of its own
	 * file there, registered again, shows MD_REF_FILE pages too): each
	 * run checks that none did since the spans were read (zap_gen),
	 * else the call ends, and the next reads them again. */
	size_t i = 0;
	while (i < nv && v[i].hi <= e->leave_at)
		i++;
	for (; i < nv && tried < max; i++) {
		uintptr_t a = v[i].lo > e->leave_at ? v[i].lo : e->leave_at;
		int stale = 0;
		while (a < v[i].hi && tried < max) {
			size_t len;
			int err = leave_span_run(e, a, v[i].hi, gen, &len);
			void (*hook)(uintptr_t) = __atomic_load_n(&md__engine_leave_hook, __ATOMIC_RELAXED);
			if (hook)
				hook(a);
			if (err == -ESTALE) {
				stale = 1;	/* read the spans again next call */
				break;
			}
			if (err > 0)
				moved += (size_t)err;
			else if (err == -EAGAIN || err == -EBUSY || err == -ENOMEM || err == -ENOSPC ||
				 err == -EFAULT)
				e->leave_failed = 1;
			a += len * MD_EPAGE;
			tried += len;
		}
		e->leave_at = a;
		if (stale || a < v[i].hi)
			break;
	}
	if (i == nv) {
		if (e->leave_outside)
			md__log_once(116, "pages outside guest RAM the agent holds still map memdedupd's old "
				     "pool (%llu): its memory stays in use while they do",
				     (unsigned long long)e->leave_outside);
		/* A pass is over. Done when nothing is left to try again and
		 * no unwritten page waited for room; the next pass starts at
		 * the lowest address, its count of unwritten pages anew. */
		e->leave_last_unwritten = e->leave_unwritten;
		if (!e->leave_failed && !e->leave_unwritten)
			__atomic_store_n(&e->leave_old, 0, __ATOMIC_RELAXED);
		e->leave_failed = 0;
		e->leave_unwritten = 0;
		e->leave_outside = 0;
		e->leave_at = 0;
	}
	free(v);
	return moved;
}

/* md__engine_unregister_anon's move, both locks held: only where a pool's file
 * is mapped. MD_REF_FILE alone says only "a file page": a private mapping
 * of the VMM's own file (a memory backend with share=off) is one too, and
 * is the VMM's to keep, as without us (its advice fails there as it
 * would, and its pages still show the file's later changes). With left
 * (md__engine_leave_pools), a run that fails does not stop the rest: its
 * pages are added to *left. */
static int anonymize_locked(struct md__engine *e, uintptr_t s, uintptr_t end, size_t *left)
{
	struct md__file_map *v;
	size_t nv;
	int err = md__range_file_maps(s, end, &v, &nv);
	if (err)
		return err;
	for (size_t k = 0; k < nv && (left || !err); k++) {
		if (!v[k].pool)
			continue;
		for (size_t ri = 0; ri < e->nregions && (left || !err); ri++) {
			struct md__eregion *r = &e->regions[ri];
			uintptr_t lo = v[k].lo > r->start ? v[k].lo : r->start;
			uintptr_t hi = v[k].hi < r->end ? v[k].hi : r->end;
			for (uintptr_t a = lo; a < hi && (left || !err);) {
				size_t i = (a - r->start) / MD_EPAGE, n = 0;
				/* Pool pages (a slot, one forgotten, a fill
				 * strip's); an image's cannot be frozen, and
				 * stay. */
				while (a + n * MD_EPAGE < hi && n < CMP_PAGES &&
				       (r->ref[i + n] & (MD_REF_FILE | MD_REF_IMAGE)) == MD_REF_FILE)
					n++;
				if (!n) {
					a += MD_EPAGE;
					continue;
				}
				int moved = leave_run(e, r, a, n);
				if (moved < 0) {
					err = err ? err : moved;
					if (left)
						*left += n;
				}
				a += n * MD_EPAGE;
			}
		}
	}
	free(v);
	return err;
}

int md__engine_unregister_anon(struct md__engine *e, void *addr, size_t len, int *anon_err)
{
	uintptr_t s = (uintptr_t)addr, end = s + len;
	/* One hold of the write lock for both: a scanner's batch between them
	 * could merge the moved pages back (their twins outside the range
	 * keep the slot in the index), which the unregister would then only
	 * make private in place, in the pool's mapping still. */
	pthread_rwlock_wrlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	*anon_err = 0;
	int err = unregister_prepared(e, s, end, MD_UNREG_MAPPED, anon_err);
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return err;
}

int md__engine_leave_pools(struct md__engine *e, size_t *left)
{
	int err;
	pthread_rwlock_wrlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	/* A run whose protection a zap took while it was copied (-EAGAIN) is
	 * tried again; other failures would only fail again. */
	for (int pass = 0; pass < 3; pass++) {
		*left = 0;
		err = anonymize_locked(e, 0, UINTPTR_MAX, left);
		if (err != -EAGAIN)
			break;
	}
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	return err;
}

int md__engine_move_copies(struct md__engine *e, const struct md__vma *v, uintptr_t lo, uintptr_t hi)
{
	size_t len = hi - lo;
	int fl = md__range_vmflags(lo, len);
	if (fl < 0)
		return fl;
	/* Locked (a new mapping would have to be locked again, the call
	 * failing where the old one was not), the VMM's userfaultfd's (ours
	 * cannot register there), unreadable: left. */
	if ((fl & (MD_VMF_LOCKED | MD_VMF_USERFAULT | MD_VMF_HUGETLB)) || !(v->prot & PROT_READ))
		return -EBUSY;
	void *aside = md__sys_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (aside == MAP_FAILED)
		return -errno;
	int err = 0, wp = (v->prot & PROT_WRITE) != 0;
	pthread_rwlock_rdlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	/* Write-protected while copied (a registration of its own, gone with
	 * the old mapping): a write waits for the move (the fault thread, on
	 * no region's page, only wakes it once our lock is free) and lands in
	 * the new page. */
	if (wp && md__uffd_register_wp(&e->uffd, lo, len) != 0) {
		err = -EBUSY;
		goto unlock;
	}
	if (wp && md__uffd_wp(&e->uffd, lo, len, 1) != 0) {
		err = -EBUSY;
		goto unregister;
	}
	/* After the protection, before the copy, as freeze() does: a read
	 * still writing these pages (O_DIRECT, behind the page tables) would
	 * land in the old ones, gone with the move. */
	if (md__inflight_busy(&e->io, lo, len)) {
		err = -EBUSY;
		goto unprotect;
	}
	md__policy_apply_to((uintptr_t)aside, lo, len);
	memcpy(aside, (const void *)lo, len);
	if (md__sys_mprotect(aside, len, v->prot) != 0) {
		err = -errno;
		goto unprotect;
	}
	md__advise_new_mapping(aside, len, v->advice, v->mergeable);
	if (fl & MD_VMF_HUGEPAGE)
		md__sys_madvise(aside, len, MADV_HUGEPAGE);
	/* Not map_fixed_moved: its test failures unmap the place, which
	 * only a region's pages are remade in. */
	if (md__sys_mremap(aside, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)lo) == MAP_FAILED) {
		err = -errno;
		goto unprotect;
	}
	aside = MAP_FAILED;
	md__vmas_add(e->vmas, 2);
	md__uffd_wake(&e->uffd, lo, len);
	goto unlock;

unprotect:
	md__uffd_wp(&e->uffd, lo, len, 0);
unregister:
	md__uffd_unregister(&e->uffd, lo, len);
	md__uffd_wake(&e->uffd, lo, len);
unlock:
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	if (aside != MAP_FAILED)
		md__sys_munmap(aside, len);
	return err;
}

uint64_t md__engine_shared_pages(struct md__engine *e)
{
	return md__engine_shared_pages_in(e, NULL, NULL, 0);
}

uint64_t md__engine_shared_pages_in(struct md__engine *e, int (*in)(void *arg, uintptr_t s, uintptr_t end),
				    void *arg, int slots_only)
{
	uint64_t pm[MAX_RUN], n_shared = 0;
	for (size_t ri = 0; ri < e->nregions; ri++) {
		struct md__eregion *r = &e->regions[ri];
		struct md__file_map *v = NULL;
		size_t np = (r->end - r->start) / MD_EPAGE, nv = SIZE_MAX;
		if (in && !in(arg, r->start, r->end))
			continue;
		for (size_t base = 0; base < np; base += MAX_RUN) {
			size_t n = np - base < MAX_RUN ? np - base : MAX_RUN, some = 0;
			for (size_t i = 0; i < n; i++)
				some += MD_REF_SLOT(r->ref[base + i]) != 0 ||
					(!slots_only && r->ref[base + i] == MD_REF_FILE);
			if (!some)
				continue;
			/* A page the guest wrote since its merge (not reaped
			 * yet) is a private copy already: pagemap tells. So is
			 * one whose slot was forgotten (memdedupd restarted).
			 * The VMM's own file's pages are not pool pages. */
			int known = pagemap_read(e, r->start + base * MD_EPAGE, n, pm) == 0;
			for (size_t i = 0; i < n; i++) {
				int unwritten = !known || !md__pm_private_anon(pm[i]);
				if (MD_REF_SLOT(r->ref[base + i]))
					n_shared += unwritten;
				else if (!slots_only && r->ref[base + i] == MD_REF_FILE)
					n_shared += unwritten && !md__engine_vmm_file_at(e, r, base + i, &v, &nv);
			}
		}
		free(v);
	}
	return n_shared;
}

void md__engine_trim(struct md__engine *e)
{
	if (e->remote)
		return;
	pthread_mutex_lock(&e->lock);
	md__pool_trim(&e->pool);
	md__engine_unlock(e);
}

void md__engine_stats(struct md__engine *e, struct md__engine_stats *st)
{
	pthread_mutex_lock(&e->lock);
	*st = e->st;
	md__engine_unlock(e);
}
