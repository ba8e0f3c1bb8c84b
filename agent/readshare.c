/*
 * readshare.c - sharing at read time.
 *
 * A read into guest RAM is split into a head, a run of whole pages and a tail.
 * The whole pages are mapped copy-on-write from the image (MAP_PRIVATE|
 * MAP_FIXED over the guest's buffer) when the image is leased and the buffer
 * and file offset agree modulo the page size; the head and tail, and any read
 * that cannot be shared, are copied by an ordinary pread. The guest sees the
 * same bytes either way: the mapping shows the file's content, which the lease
 * keeps constant, and its writes go to private copies.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_internal.h"
#include "log.h"
#include "protocol.h"
#include "policies.h"
#include "sys.h"

/* The kernel's MAX_RW_COUNT: the most one read moves. */
#define MD_RW_MAX ((size_t)0x7ffff000)

/* The kernel checks each buffer at its full length (access_ok: its end
 * inside the address space the user may name, which depends on the kernel
 * and the machine) before it cuts a read to MD_RW_MAX, and refuses the
 * read with EFAULT before a byte moves. Asked of the kernel itself:
 * process_vm_readv checks its local buffers so before it copies, here one
 * byte into a scratch byte put first, nothing into the buffers. Any other
 * answer than EFAULT (a sandbox's filter) is taken for a yes, as before. */
int md__kernel_takes(const struct iovec *iov, int cnt)
{
	static const char byte;
	char scratch;
	struct iovec loc[64], rem = { (void *)&byte, 1 };
	int saved = errno, refused = 0;
	loc[0] = (struct iovec){ &scratch, 1 };
	for (int k = 0; k < cnt && !refused;) {
		int m = cnt - k < 63 ? cnt - k : 63;
		memcpy(loc + 1, iov + k, (size_t)m * sizeof(*iov));
		refused = process_vm_readv(getpid(), loc, (unsigned long)m + 1, &rem, 1, 0) < 0 && errno == EFAULT;
		k += m;
	}
	errno = saved;
	return refused ? -EFAULT : 0;
}

static uintptr_t round_up(uintptr_t x) { return (x + MD_PAGE - 1) & ~(MD_PAGE - 1); }
static uintptr_t round_down(uintptr_t x) { return x & ~(MD_PAGE - 1); }
static uint64_t pages_of(size_t len) { return (len + MD_PAGE - 1) / MD_PAGE; }

/* Whole pages of guest RAM inside [buf, buf+len): the most a read can map. */
static size_t whole_pages(uintptr_t buf, size_t len)
{
	uintptr_t first = round_up(buf), last = round_down(buf + len);
	return last > first ? (last - first) / MD_PAGE : 0;
}

/* 1 if the buffer lies on the file's page boundaries: only then can whole
 * file pages be mapped into it. */
static int congruent(uintptr_t buf, uint64_t off)
{
	return ((buf - (uintptr_t)off) & (MD_PAGE - 1)) == 0;
}

void md__plan_read(uintptr_t buf, size_t len, uint64_t off, uint64_t file_size,
		   struct md__read_plan *p)
{
	memset(p, 0, sizeof(*p));
	p->fallback = -1;
	p->total = off >= file_size ? 0 : (file_size - off < len ? (size_t)(file_size - off) : len);
	if (!congruent(buf, off)) {
		p->fallback = MD_FB_UNALIGNED;
		return;
	}
	/* Only pages that the file fills completely: a page past the end of
	 * the file would fault (SIGBUS) when mapped. */
	uintptr_t first = round_up(buf), last = round_down(buf + p->total);
	if (p->total == 0 || last <= first) {
		p->fallback = MD_FB_PARTIAL;
		return;
	}
	p->head = first - buf;
	p->map_len = last - first;
	p->tail = p->total - p->head - p->map_len;
}

void md__fallback(struct md_agent *a, enum md_fallback why, uint64_t pages)
{
	md__count(a, MD_CTR_FALLBACK0 + why, pages);
	md__count(a, MD_CTR_FALLBACK_TOTAL, pages);
}

/* Names the image guest RAM [addr, addr+len) of r is mapped from (0: none,
 * anonymous memory), for lease breaks, discards and the counters. */
static void owners_set(struct md_agent *a, struct md__region *r, uintptr_t addr, size_t len, uint32_t id)
{
	md__owners_set(a, r, addr, len / MD_PAGE, id);
}

/* The buffer must still be mapped for the copying read. A failed MAP_FIXED
 * leaves the old mapping in place on current kernels; make sure of it. */
static void ensure_mapped(struct md_agent *a, struct md__region *r, uintptr_t addr, size_t len)
{
	unsigned char vec;
	for (uintptr_t p = addr; p < addr + len; p += MD_PAGE) {
		if (mincore((void *)p, MD_PAGE, &vec) == 0 || errno != ENOMEM)
			continue;
		if (md__sys_mmap((void *)p, MD_PAGE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
			md__apply_advice(a, r, p, MD_PAGE);
			owners_set(a, r, p, MD_PAGE, 0);	/* what an earlier read mapped there went */
		} else
			md__log("guest RAM at %#lx lost its mapping after a failed mmap", (unsigned long)p);
	}
}

struct map_args {
	void *dst;
	size_t len;
	int fd;
	off_t off;
	int err;
	int lost;	/* mapped aside, then the lease found gone (err -EBADF) */
};

void (*md__image_map_hook)(int fd);	/* tests only: see agent_internal.h */
void (*md__image_mapped_hook)(void *dst, size_t len);	/* tests only: see agent_internal.h */

/* The look of map_image: whether the descriptor still holds the image's
 * lease. The VMM may have closed its number, or put another file there,
 * since it was looked at before the engine's locks were taken; our
 * description, once closed, cannot hold a lease again, so held once
 * mapped aside, the mapping is of the image. */
static int lease_held(void *arg)
{
	struct map_args *m = arg;
	if (md__image_mapped_hook)
		md__image_mapped_hook(m->dst, m->len);
	return fcntl(m->fd, F_GETLEASE) == F_RDLCK;
}

/* Maps the image over the buffer. Failed, the buffer is as it was and the
 * read copied, or, the move failed, may be unmapped (the caller makes it
 * again: ensure_mapped). */
static int map_image(void *arg)
{
	struct map_args *m = arg;
	enum md__map_step step;
	if (md__image_map_hook)
		md__image_map_hook(m->fd);
	m->err = md__engine_map_moved(m->dst, m->len, m->fd, m->off, lease_held, m, &step);
	m->lost = m->err && step == MD_MAP_LOOK;
	return m->err;
}

/* A tmpfs image's holes are not mapped: a fault on a hole of a tmpfs file
 * allocates a page in the file (a pread of it does not), which stays after
 * the VMM, changes what SEEK_HOLE tells the VMM, and on a full tmpfs is a
 * SIGBUS where the plain read succeeds. The mapping stops at the first
 * hole, the rest copied; 0 (counted) if too little is left to map. */
static int data_only(struct md_agent *a, const struct md__image *img, off_t map_off,
		     struct md__read_plan *plan)
{
	off_t end = map_off + (off_t)plan->map_len;
	off_t data = md__image_seek(img, map_off, SEEK_DATA);
	off_t hole = data == map_off ? md__image_seek(img, map_off, SEEK_HOLE) : map_off;
	if (hole < 0)
		hole = map_off;
	if (hole >= end)
		return 1;
	size_t keep = (size_t)(hole - map_off) & ~(size_t)(MD_PAGE - 1);
	if (keep / MD_PAGE < a->share_min_pages || keep == 0) {
		md__fallback(a, MD_FB_PARTIAL, pages_of(plan->total));
		return 0;
	}
	plan->tail += plan->map_len - keep;
	plan->map_len = keep;
	return 1;
}

/* Maps whole pages of one read segment. Returns the bytes mapped (the plan's
 * head is then still to be copied, and the tail), or 0 when the segment must
 * be copied whole. Called with the buffer known to be in region r. */
static size_t share_locked(struct md_agent *a, struct md__region *r, int fd, const struct md__fd_probe *probe,
			   uintptr_t buf, size_t len, off_t off, struct md__read_plan *plan)
{
	enum md_fallback why = MD_FB_ERROR;
	struct md__image *img = md__image_lease(a, fd, probe, &why);

	if (!img) {
		md__fallback(a, why, pages_of(len));
		return 0;
	}
	md__plan_read(buf, len, (uint64_t)off, (uint64_t)img->size, plan);
	if (plan->fallback >= 0) {
		/* A read entirely past the end of the file counts as partial. */
		md__fallback(a, (enum md_fallback)plan->fallback, pages_of(len));
		return 0;
	}
	if (probe->direct && (plan->head || plan->tail || plan->total < len)) {
		/* The kernel answers an O_DIRECT read whole, not as the sum
		 * of its parts: over a hole at the end of the file it writes
		 * zeroes up to len, past the end too, and an edge off the
		 * device's blocks fails the read (EINVAL) where the edge's
		 * own read over a hole would not. Read as asked, before
		 * anything is mapped: a read that then failed would leave
		 * the image's pages in the guest's buffer. */
		md__fallback(a, MD_FB_PARTIAL, pages_of(len));
		md__log_once(126, "O_DIRECT reads into guest RAM that are not whole pages of an image "
			     "(its end, or a buffer off the page boundaries) are copied");
		return 0;
	}
	if (plan->map_len / MD_PAGE < a->share_min_pages) {
		/* Cut short by the end of the file. */
		md__count(a, MD_CTR_READ_SMALL, pages_of(len));
		return 0;
	}
	if (!md__break_room(a, plan->map_len / MD_PAGE)) {
		md__fallback(a, MD_FB_NO_LEASE, pages_of(len));
		return 0;
	}
	if (!md__vma_room(a)) {
		md__fallback(a, MD_FB_VMA_LIMIT, pages_of(len));
		md__log_once(30, "the mapping budget (%llu VMAs) is spent: reads are copied",
			     (unsigned long long)a->max_vmas);
		return 0;
	}

	uintptr_t dst = buf + plan->head;
	off_t map_off = off + (off_t)plan->head;
	if (img->shmem && !data_only(a, img, map_off, plan))
		return 0;
	struct map_args m = { (void *)dst, plan->map_len, img->fd, map_off, 0, 0 };
	if (a->engine)
		/* With no merge in flight on these pages, and kept out of the
		 * scanner's reach afterwards: whatever part of them the engine
		 * has (its regions are looked at under its lock; they may have
		 * parted from ours after an allocation failed). */
		md__engine_exclude(a->engine, m.dst, m.len, map_image, &m);
	else
		map_image(&m);
	if (m.lost) {	/* not an mmap that failed (EBADF too, for a closed descriptor) */
		md__image_held(a, img);	/* gives the lease up, as on a break */
		md__fallback(a, MD_FB_NO_LEASE, pages_of(len));
		return 0;
	}
	if (m.err) {
		int err = -m.err;
		md__fallback(a, err == ENOMEM ? MD_FB_ENOMEM : MD_FB_ERROR, pages_of(len));
		md__log_once(31, "mmap of an image into guest RAM failed (%s%s): reads are copied",
			     strerror(err), err == ENOMEM ? ", memory or vm.max_map_count" : "");
		ensure_mapped(a, r, dst, plan->map_len);
		return 0;
	}
	md__vmas_add(&a->vmas, 2);	/* the new VMA, and the split it may cause */
	if (!(r->advice & MD_ADV_DONTDUMP))
		md__coredump_file_pages();	/* now: its advice comes later */
	if (!img->shmem)	/* a tmpfs file's mappings take the file's policy */
		md__policy_apply(dst, plan->map_len);	/* the VMM's NUMA policy, if any */
	/* MADV_DONTFORK and MADV_MERGEABLE (with kernel KSM) come within a
	 * second, for all new mappings at once (md__regions_flush_advice):
	 * two madvise calls per read were a tenth of its cost. A fork()
	 * mostly comes after them: its prepare handler flushes them first
	 * (best effort, see before_fork in preload.c). */
	md__rangeset_add(&r->advice_pending, dst, dst + plan->map_len);
	if ((a->flags & MD_OPT_POPULATE) &&
	    md__sys_madvise((void *)dst, plan->map_len, MADV_POPULATE_READ) != 0 && errno != EINVAL) {
		/* An I/O error: undo, and let the copying read report it. */
		int err = errno;
		int undone = md__sys_mmap((void *)dst, plan->map_len, PROT_READ | PROT_WRITE,
					  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED;
		if (undone)
			md__apply_advice(a, r, dst, plan->map_len);
		/* Else still the image's: recorded, so a lease break finds them. */
		owners_set(a, r, dst, plan->map_len, undone ? 0 : img->id);
		md__fallback(a, MD_FB_ERROR, pages_of(len));
		md__log_once(32, "faulting in image pages failed (%s): reads are copied", strerror(err));
		return 0;
	}
	size_t n = plan->map_len / MD_PAGE;
	owners_set(a, r, dst, plan->map_len, img->id);
	/* Counted as shared by read_segment, once the read did not go
	 * whole over these pages. */
	md__imagepages_queue(a, img->id, (uint64_t)map_off / MD_PAGE, n, dst, 0);
	return plan->map_len;
}

/* Copies [off, off+len) into buf with ordinary reads until done, EOF or error;
 * returns the bytes read, or -1 with errno when nothing was. */
static ssize_t copy_range(int fd, char *buf, size_t len, off_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = md__sys_pread(fd, buf + done, len - done, off + (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return done ? (ssize_t)done : -1;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* A read into guest RAM was copied, not shared. The scanner should look
 * there first (a hint). With memdedupd and hints on, the hint carries the
 * file it read (not for a read at the file position, off -1: where in the
 * file is not known), so memdedupd learns which file page went where and another
 * guest's scanner, meeting the same file page, names this copy (READS). A
 * small read of a leased image is also indexed as that image's pages (the
 * buffer is aligned with the file), so the scanner maps its whole pages
 * from it like those the other reads mapped. One fstat serves both. */
static void copied_read(struct md_agent *a, int fd, uintptr_t buf, size_t n, off_t off, int small)
{
	struct stat st;
	int tell = off >= 0 && a->engine->remote && __atomic_load_n(&a->scanner.ratio, __ATOMIC_RELAXED);
	int index = small && a->imgpages;
	/* Only a descriptor open for reading alone: no other can be leased,
	 * and no other guest reads a writable disk; fstat of one on NFS
	 * would first write its dirty pages back to the server. */
	int fl = tell || index ? fcntl(fd, F_GETFL) : -1;
	int file = fl >= 0 && (fl & O_ACCMODE) == O_RDONLY && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
	uintptr_t first = round_up(buf), end = round_down(buf + n);
	if (file && index && end > first) {
		md__agent_enter(a);
		struct md__image *img = md__image_leased(a, &st);
		if (img)
			md__imagepages_queue(a, img->id, ((uint64_t)off + (first - buf)) / MD_PAGE,
					     (end - first) / MD_PAGE, first, 1);
		md__agent_leave(a);
	}
	/* Hints off (hint_ratio=0): nothing is pushed, nor the scanner woken
	 * for it. */
	if (!__atomic_load_n(&a->scanner.ratio, __ATOMIC_RELAXED))
		return;
	uint64_t key = file && tell ? md__read_key((uint64_t)st.st_dev, (uint64_t)st.st_ino) : 0;
	md__hints_push(&a->hints, buf, n, key, (uint64_t)off);
	md__scanner_poke(&a->scanner);
}

/* A read in flight (md__inflight_begin), ended should a cancel of the
 * VMM's thread act in its system call (md__vmm_pread). */
struct inflight_read {
	struct md__inflight *io;
	int token;
};

static void inflight_undo(void *p)
{
	const struct inflight_read *r = p;
	md__inflight_end(r->io, r->token);
}

static ssize_t read_copied(struct md_agent *a, int fd, void *buf, size_t len, off_t off, int small,
			   size_t mapped, const struct md__read_plan *plan, struct inflight_read *r, int *whole);

/* The parts of a copied read [buf, buf+n) that lie in guest RAM, each
 * hinted as a read of its own: a read across regions that meet, or
 * reaching into RAM from memory that is not (md__region_find finds
 * neither). */
static void copied_parts(struct md_agent *a, int fd, uintptr_t buf, size_t n, off_t off)
{
	uintptr_t ps[16], pe[16];
	size_t np = 0;
	if (md__ours_none(a, buf, buf + n))	/* most reads outside RAM: no lock */
		return;
	md__agent_enter(a);
	for (size_t k = 0; k < a->nregions && np < 16; k++) {
		const struct md__region *r = &a->regions[k];
		uintptr_t s = r->start > buf ? r->start : buf, e = r->end < buf + n ? r->end : buf + n;
		if (e > s && e - s >= MD_PAGE) {
			ps[np] = s;
			pe[np++] = e;
		}
	}
	md__agent_leave(a);
	for (size_t k = 0; k < np; k++)
		copied_read(a, fd, ps[k], pe[k] - ps[k], off < 0 ? -1 : off + (off_t)(ps[k] - buf), 0);
}

/* A plain read, recorded while in flight when the scanner runs: the
 * system call the VMM made, preadv or pread (one), since a seccomp filter
 * may allow pread64 and not preadv. */
static ssize_t tracked_preadv(struct md_agent *a, int fd, const struct iovec *iov, int cnt, off_t off,
			      int flags, int one)
{
	if (!a->engine)
		return one ? md__vmm_pread(fd, iov->iov_base, iov->iov_len, off, NULL, NULL) :
			     md__vmm_preadv2(fd, iov, cnt, off, flags, NULL, NULL);
	struct inflight_read r = { &a->engine->io, md__inflight_begin(&a->engine->io, iov, cnt) };
	ssize_t n = one ? md__vmm_pread(fd, iov->iov_base, iov->iov_len, off, inflight_undo, &r) :
			  md__vmm_preadv2(fd, iov, cnt, off, flags, inflight_undo, &r);
	md__inflight_end(r.io, r.token);
	return n;
}

/* Whether a segment of a read into guest RAM could be mapped: 1, or 0 and
 * why not counted (if count; *small set for a read too small to be worth a
 * mapping, which the scanner is told of as such). */
static int may_share(struct md_agent *a, const void *buf, size_t len, off_t off, int count, int *small)
{
	int why = -1;
	*small = 0;
	if (count)
		md__count(a, MD_CTR_READS_SEEN, 1);
	if (a->flags & MD_OPT_NO_SHARING)
		return 0;	/* counted as seen only: the baseline of comparisons */
	if (__atomic_load_n(&a->io_unseen, __ATOMIC_ACQUIRE))
		return 0;	/* a device may hold pages we would replace: md_agent_io_unseen */
	if (len < MD_PAGE) {
		why = MD_FB_PARTIAL;
	} else if (!congruent((uintptr_t)buf, (uint64_t)off)) {
		/* Before any image is leased (a descriptor and a lease kept
		 * while the process lives): a buffer off the file's page
		 * boundaries can never be shared (QEMU's 9p server reads into
		 * guest RAM at offset 11). */
		why = MD_FB_UNALIGNED;
	} else if (whole_pages((uintptr_t)buf, len) < a->share_min_pages) {
		/* One mmap costs more than copying this few pages (and, with
		 * another thread of the VMM running, a TLB shootdown to its
		 * core): copy, and hint the scanner. */
		*small = 1;
		if (count)
			md__count(a, MD_CTR_READ_SMALL, pages_of(len));
		return 0;
	} else {
		return 1;
	}
	if (count)
		md__fallback(a, (enum md_fallback)why, why == MD_FB_PARTIAL ? 1 : pages_of(len));
	return 0;
}

/* One segment of a read into guest RAM. Returns what pread would. */
static ssize_t read_segment(struct md_agent *a, int fd, void *buf, size_t len, off_t off)
{
	struct md__read_plan plan;
	struct md__fd_probe probe = { .why = MD_FB_ERROR };
	size_t mapped = 0;
	uint64_t t0 = now_ns();

	/* Before the lock (md__image_probe): only for a read into guest RAM
	 * that may be mapped, as may_share will say (it counts, so it runs
	 * once, under the lock); the published ranges (ours.c) tell without
	 * the lock or a system call. */
	if (!(a->flags & MD_OPT_NO_SHARING) && len >= MD_PAGE && congruent((uintptr_t)buf, (uint64_t)off) &&
	    whole_pages((uintptr_t)buf, len) >= a->share_min_pages) {
		if (!md__ours_none(a, (uintptr_t)buf, (uintptr_t)buf + len))
			md__image_probe(a, fd, &probe);
	}
	md__agent_enter(a);
	struct md__region *r = md__region_find(a, (uintptr_t)buf, len);
	if (!r) {
		struct md__region *first = md__region_find(a, (uintptr_t)buf, 1);
		size_t head = first ? first->end - (uintptr_t)buf : 0;
		md__agent_leave(a);
		/* Under O_DIRECT the kernel takes or refuses the read whole
		 * (its alignment): a part mapped before the other is refused
		 * would leave image pages in a buffer the kernel never wrote. */
		int fl = head && (((uintptr_t)buf | len) & (MD_PAGE - 1)) ? fcntl(fd, F_GETFL) : 0;
		if (fl > 0 && (fl & O_DIRECT)) {
			struct iovec io = { buf, len };
			md__count(a, MD_CTR_READS_SEEN, 1);
			ssize_t n = tracked_preadv(a, fd, &io, 1, off, 0, 1);
			if (n > 0)
				md__count(a, MD_CTR_BYTES_READ, (uint64_t)n);
			if (a->engine && n >= (ssize_t)MD_PAGE)
				copied_read(a, fd, (uintptr_t)buf, (size_t)n, off, 0);
			md__count(a, MD_CTR_READ_NS, now_ns() - t0);
			return n;
		}
		if (head) {
			/* Across region records (RAM registered in parts, which
			 * meet at a page boundary): each part as a read of its
			 * own. A short first part ends the read, as pread's
			 * caller expects; a failure after it fails the read
			 * (md_agent_preadv says why). */
			ssize_t n1 = read_segment(a, fd, buf, head, off);
			if (n1 < (ssize_t)head)
				return n1;
			ssize_t n2 = read_segment(a, fd, (char *)buf + head, len - head, off + (off_t)head);
			return n2 < 0 ? -1 : n1 + n2;
		}
		/* Not in a region; its end may still overlap scanned RAM. */
		struct iovec io = { buf, len };
		ssize_t n = tracked_preadv(a, fd, &io, 1, off, 0, 1);
		if (a->engine && n >= (ssize_t)MD_PAGE)
			copied_parts(a, fd, (uintptr_t)buf, (size_t)n, off);
		return n;
	}
	int small = 0;
	if (may_share(a, buf, len, off, 1, &small))
		mapped = share_locked(a, r, fd, &probe, (uintptr_t)buf, len, off, &plan);
	md__agent_leave(a);

	/* The scanner must not replace pages the kernel may be writing
	 * behind the page tables (O_DIRECT): engine/inflight.h. */
	struct iovec io = { buf, len };
	struct inflight_read rec = { a->engine ? &a->engine->io : NULL, 0 };
	if (rec.io)
		rec.token = md__inflight_begin(rec.io, &io, 1);
	int whole = 0;
	ssize_t n = read_copied(a, fd, buf, len, off, small, mapped, &plan, rec.io ? &rec : NULL, &whole);
	if (rec.io)
		md__inflight_end(rec.io, rec.token);
	if (n > 0)
		md__count(a, MD_CTR_BYTES_READ, (uint64_t)n);
	/* The cost of a read into guest RAM, shared or copied: with
	 * MD_OPT_NO_SHARING the same reads give the cost of copying; a
	 * plain 4 KiB pread's cost is measured as the guest issues them. */
	uint64_t ns = now_ns() - t0;
	md__count(a, MD_CTR_READ_NS, ns);
	if (mapped && !whole) {
		/* Not a read that went whole over its mapped pages: those
		 * are private copies, counted as a fallback (read_copied). */
		md__count(a, MD_CTR_SHARED_AT_READ, mapped / MD_PAGE);
		if (plan.head || plan.tail)
			md__fallback(a, MD_FB_PARTIAL, (plan.head != 0) + pages_of(plan.tail));
		md__count(a, MD_CTR_READ_SHARED_NS, ns);
		md__count(a, MD_CTR_READ_SHARED_BYTES, n > 0 ? (uint64_t)n : 0);
	} else if (!mapped && len == MD_PAGE && n == (ssize_t)MD_PAGE) {
		md__count(a, MD_CTR_READ_PAGE_NS, ns);
		md__count(a, MD_CTR_READS_PAGE, 1);
	}
	return n;
}

/* Mapped pages a whole read then wrote over: private copies now, no
 * image's any more (as a lease break leaves them, privatize_run), or the
 * next walk counted them as written since they were shared. Only those
 * that are copies now: between that read, made without the lock, and here
 * another read may have mapped an image over some again, whose records a
 * lease break must find. A page pagemap cannot tell keeps its record (a
 * break makes it private again: nothing). */
void (*md__overwritten_hook)(struct md_agent *a);	/* tests only: see agent_internal.h */

static void forget_overwritten(struct md_agent *a, uintptr_t addr, size_t len)
{
	uint64_t pm[512];
	void (*hook)(struct md_agent *) = __atomic_load_n(&md__overwritten_hook, __ATOMIC_RELAXED);
	if (hook)
		hook(a);
	int fd = md__proc_open("pagemap", 0);
	md__agent_enter(a);
	struct md__region *r = md__region_find(a, addr, len);
	for (uintptr_t p = addr; r && fd >= 0 && p < addr + len;) {
		size_t n = (addr + len - p) / MD_PAGE < 512 ? (addr + len - p) / MD_PAGE : 512;
		if (md__sys_pread(fd, pm, n * sizeof(pm[0]), (off_t)(p / MD_PAGE * sizeof(pm[0]))) !=
		    (ssize_t)(n * sizeof(pm[0])))
			break;
		for (size_t i = 0; i < n; i++)
			if (md__pm_private_anon(pm[i]))	/* in memory or swapped, not the file's */
				owners_set(a, r, p + i * MD_PAGE, MD_PAGE, 0);
		p += n * MD_PAGE;
	}
	if (r)
		md__rangeset_add(&a->forgotten, addr, addr + len);
	md__agent_leave(a);
	if (fd >= 0)
		close(fd);
}

int md__edges_fail;	/* tests only: see agent_internal.h */

/* The bytes of a read into guest RAM that read_segment did not map; *whole
 * set if it read them all, the mapped pages too. r: the read in flight, if
 * recorded. Only a read mapping nothing is the VMM's own system call, where
 * a cancel may act: the others read a leased image around or over pages
 * mapped, whose records must follow them. */
static ssize_t read_copied(struct md_agent *a, int fd, void *buf, size_t len, off_t off, int small,
			   size_t mapped, const struct md__read_plan *plan, struct inflight_read *r, int *whole)
{
	ssize_t n;
	*whole = 0;
	if (!mapped) {
		n = md__vmm_pread(fd, buf, len, off, r ? inflight_undo : NULL, r);
		if (a->engine && n >= (ssize_t)MD_PAGE)
			copied_read(a, fd, (uintptr_t)buf, (size_t)n, off, small);
	} else {
		/* The mapped pages are the file's: copy only around them. The
		 * size is fixed by the lease, so these reads are not short. */
		char *b = buf;
		int fail = __atomic_load_n(&md__edges_fail, __ATOMIC_RELAXED);
		ssize_t h = fail ? -1 : copy_range(fd, b, plan->head, off);
		ssize_t t = fail ? -1 : copy_range(fd, b + plan->head + mapped, plan->tail,
						   off + (off_t)(plan->head + mapped));
		if (fail)
			errno = fail;
		if (h < 0 || t < 0 || (size_t)h != plan->head || (size_t)t != plan->tail) {
			/* The VMM's own read as it asked it (an I/O error
			 * on the edges): the mapped pages take the file's
			 * bytes again, private now. The guest's I/O never
			 * fails for us. */
			int err = h < 0 || t < 0 ? errno : EIO;
			*whole = 1;
			n = md__sys_pread(fd, buf, len, off);
			int saved = errno;	/* the VMM's, if that failed too */
			if (n >= (ssize_t)(plan->head + mapped))
				forget_overwritten(a, (uintptr_t)buf + plan->head, mapped);
			md__fallback(a, MD_FB_ERROR, pages_of(len));
			md__log_once(33, "copying around image pages failed (%s): the read went whole",
				     strerror(err));
			if (a->engine && n >= (ssize_t)MD_PAGE)
				copied_read(a, fd, (uintptr_t)buf, (size_t)n, off, small);
			errno = saved;
		} else {
			n = (ssize_t)plan->total;
			/* Pages after a tmpfs image's hole are copied in the
			 * tail (data_only): hinted as any copied read. */
			if (a->engine && plan->tail >= MD_PAGE)
				copied_read(a, fd, (uintptr_t)b + plan->head + mapped, plan->tail,
					    off + (off_t)(plan->head + mapped), 0);
		}
	}
	return n;
}

/* The VMM's pread: a cancellation point, as the C library's (a cancel
 * pending acts first, before anything is read or mapped), and then only in
 * its system calls (md__vmm_pread): the agent's own work is not one. */
ssize_t md_agent_pread(md_agent *a, int fd, void *buf, size_t len, off_t off)
{
	pthread_testcancel();
	MD_NOCANCEL_SCOPE();
	if (off < 0) {	/* the kernel's answer, before any of ours */
		errno = EINVAL;
		return -1;
	}
	/* As the kernel: a buffer that wraps fails before a byte moves, a
	 * read is cut to MAX_RW_COUNT, and one of nothing moves nothing. A
	 * longer buffer is the kernel's to check whole first, a cut one
	 * would pass; one past SSIZE_MAX too (process_vm_readv refuses its
	 * length with EINVAL, not EFAULT, and would seem to take it). Its
	 * end too, at the full length: past the largest file offset, EINVAL. */
	struct iovec whole = { buf, len };
	if (!a || !len || (uintptr_t)buf + len < (uintptr_t)buf || len > (size_t)SSIZE_MAX ||
	    len > (uint64_t)(LLONG_MAX - off) || (len > MD_RW_MAX && md__kernel_takes(&whole, 1) != 0))
		return md__vmm_pread(fd, buf, len, off, NULL, NULL);
	if (len > MD_RW_MAX)
		len = MD_RW_MAX;
	/* A read that succeeds leaves errno as the kernel's would: the
	 * agent's own calls (a lease refused) may have set it. */
	int saved = errno;
	ssize_t n = read_segment(a, fd, buf, len, off);
	if (n >= 0)
		errno = saved;
	return n;
}

/* How many segments from iov, at most MD_IO_RANGES (what a read in
 * flight records range by range: past it, one span would keep the scanner
 * off the pages between), are certain to be copied whole: each in one
 * region (in[k] set) or in none, and never to be mapped. */
static int copied_run(struct md_agent *a, const struct iovec *iov, int cnt, off_t off, unsigned char *in)
{
	int k = 0, small;
	md__agent_enter(a);
	for (; k < cnt && k < MD_IO_RANGES; off += (off_t)iov[k++].iov_len) {
		uintptr_t b = (uintptr_t)iov[k].iov_base;
		size_t len = iov[k].iov_len;
		in[k] = len && md__region_find(a, b, len) != NULL;
		if (in[k] ? may_share(a, iov[k].iov_base, len, off, 0, &small)
			  : len && (md__region_find(a, b, 1) || md__region_find(a, b + len - 1, 1)))
			break;
	}
	md__agent_leave(a);
	return k;
}

/* The segments of a copied run in one call, each counted and hinted to the
 * scanner as read_segment would. Returns what preadv would. */
static ssize_t copied_segments(struct md_agent *a, int fd, const struct iovec *iov, int cnt, off_t off,
			       const unsigned char *in)
{
	uint64_t t0 = now_ns();
	ssize_t n = tracked_preadv(a, fd, iov, cnt, off, 0, 0);
	uint64_t ns = now_ns() - t0;
	if (n < 0)
		return n;
	size_t left = (size_t)n, got[MD_IO_RANGES];
	int small[MD_IO_RANGES], reached = 0, in_ram = 0;
	/* The segments read, as read_segment counts them; those past a
	 * short one (the end of the file) were not read. */
	md__agent_enter(a);
	for (off_t o = off; reached < cnt; o += (off_t)iov[reached++].iov_len) {
		int k = reached;
		size_t len = iov[k].iov_len;
		got[k] = len < left ? len : left;
		left -= got[k];
		small[k] = 0;
		if (in[k]) {
			in_ram = 1;
			may_share(a, iov[k].iov_base, len, o, 1, &small[k]);
			md__count(a, MD_CTR_BYTES_READ, got[k]);
			/* A 4 KiB read's cost, as the guest issues them:
			 * the call's share. */
			if (len == MD_PAGE && got[k] == MD_PAGE) {
				md__count(a, MD_CTR_READ_PAGE_NS, ns / (uint64_t)cnt);
				md__count(a, MD_CTR_READS_PAGE, 1);
			}
		}
		if (got[k] < len) {
			reached++;
			break;
		}
	}
	if (in_ram)
		md__count(a, MD_CTR_READ_NS, ns);
	md__agent_leave(a);
	/* Outside the lock, which the hints to the scanner take. */
	for (int k = 0; k < reached && a->engine; off += (off_t)iov[k++].iov_len)
		if (in[k] && got[k] >= MD_PAGE)
			copied_read(a, fd, (uintptr_t)iov[k].iov_base, got[k], off, small[k]);
	return n;
}

/* A read the agent copied whole (preadv2 flags, the file position): each
 * segment it filled in guest RAM, a page or more, is hinted like any read
 * copied (copied_read). */
static void copied_whole(struct md_agent *a, int fd, const struct iovec *iov, int iovcnt, ssize_t n, off_t off)
{
	if (!a->engine || n <= 0)
		return;
	size_t done = 0;
	for (int i = 0; i < iovcnt && done < (size_t)n; done += iov[i++].iov_len) {
		size_t len = iov[i].iov_len < (size_t)n - done ? iov[i].iov_len : (size_t)n - done;
		if (len >= MD_PAGE)
			copied_parts(a, fd, (uintptr_t)iov[i].iov_base, len, off == -1 ? -1 : off + (off_t)done);
	}
}

static int any_in_ram(struct md_agent *a, const struct iovec *iov, int iovcnt)
{
	int found = 0;
	md__agent_enter(a);
	for (int i = 0; i < iovcnt && !found; i++)
		found = iov[i].iov_len && md__region_find(a, (uintptr_t)iov[i].iov_base, 1) != NULL;
	md__agent_leave(a);
	return found;
}

static ssize_t preadv_errno(md_agent *a, int fd, const struct iovec *iov, int iovcnt, off_t off,
			    int flags);

ssize_t md_agent_preadv(md_agent *a, int fd, const struct iovec *iov, int iovcnt,
			off_t off, int flags)
{
	pthread_testcancel();	/* as md_agent_pread */
	MD_NOCANCEL_SCOPE();
	int saved = errno;	/* as md_agent_pread */
	ssize_t n = preadv_errno(a, fd, iov, iovcnt, off, flags);
	if (n >= 0)
		errno = saved;
	return n;
}

static ssize_t preadv_errno(md_agent *a, int fd, const struct iovec *iov, int iovcnt, off_t off,
			    int flags)
{
	/* The kernel's EFAULT for an iovec array that cannot be read, not
	 * our SIGSEGV reading it. */
	if (!a || iovcnt <= 0 || iovcnt > IOV_MAX || !md__readable(iov, (size_t)iovcnt * sizeof(*iov)))
		return md__vmm_preadv2(fd, iov, iovcnt, off, flags, NULL, NULL);
	if (!any_in_ram(a, iov, iovcnt)) {
		/* A segment may still reach into RAM from below it. */
		ssize_t n = tracked_preadv(a, fd, iov, iovcnt, off, flags, 0);
		int saved = errno;
		copied_whole(a, fd, iov, iovcnt, n, off);
		errno = saved;
		return n;
	}
	if (off == -1 || flags != 0) {
		md__log_once(91, "reads into guest RAM with preadv2 flags or at the file position "
			     "are copied");
		ssize_t n = tracked_preadv(a, fd, iov, iovcnt, off, flags, 0);
		int saved = errno;
		md__fallback(a, MD_FB_FLAGS, n > 0 ? pages_of((size_t)n) : 0);	/* pages, as the others */
		copied_whole(a, fd, iov, iovcnt, n, off);
		errno = saved;
		return n;
	}
	/* As the kernel, before a byte moves: a segment of a negative length
	 * fails the call (EINVAL), one that wraps too (EFAULT), with the
	 * kernel's own answer. And the call reads MAX_RW_COUNT bytes at most:
	 * the segment that reaches it is cut (read alone, at cut_len), the
	 * segments after it are not read. */
	int cnt = iovcnt, cut = 0;
	size_t sum = 0, cut_len = 0;
	for (int k = 0; k < iovcnt; k++) {
		size_t l = iov[k].iov_len;
		if ((ssize_t)l < 0 || (uintptr_t)iov[k].iov_base + l < (uintptr_t)iov[k].iov_base)
			return md__vmm_preadv2(fd, iov, iovcnt, off, flags, NULL, NULL);
		if (!cut && l > MD_RW_MAX - sum) {
			cnt = k + 1;
			cut = 1;
			cut_len = MD_RW_MAX - sum;
		} else if (!cut) {
			sum += l;
		}
	}
	/* The kernel also checks the call's end (its offset plus the length
	 * it will read, cut) before a byte moves: one past the largest file
	 * offset fails with EINVAL, where the agent's first segment would
	 * read past the end of the file and return 0. A negative offset
	 * fails too. */
	size_t call_len = cut ? MD_RW_MAX : sum;
	if (off < 0 || (call_len && call_len > (uint64_t)(LLONG_MAX - off)))
		return md__vmm_preadv2(fd, iov, iovcnt, off, flags, NULL, NULL);
	/* Every segment, past the cut too, is checked whole by the kernel
	 * first (md__kernel_takes): a read the agent cuts must not pass one it
	 * would refuse. */
	if (cut && md__kernel_takes(iov, iovcnt) != 0)
		return md__vmm_preadv2(fd, iov, iovcnt, off, flags, NULL, NULL);
	/* Under O_DIRECT the kernel takes or refuses the vector whole, by
	 * the alignment of all its segments together: a segment off the page
	 * boundaries could be refused alone where the call is taken (Linux
	 * 6.18 takes segments off the blocks whose sum is whole), or be
	 * refused after earlier ones were mapped, where the kernel moves no
	 * byte. Such a vector is the kernel's, as the VMM made it. */
	uintptr_t ragged = 0;
	for (int k = 0; k < cnt; k++)
		ragged |= (uintptr_t)iov[k].iov_base | iov[k].iov_len;
	if (ragged & (MD_PAGE - 1)) {
		int fl = fcntl(fd, F_GETFL);
		if (fl >= 0 && (fl & O_DIRECT)) {
			md__log_once(126, "O_DIRECT reads into guest RAM that are not whole pages of an image "
				     "(its end, or a buffer off the page boundaries) are copied");
			ssize_t n = tracked_preadv(a, fd, iov, iovcnt, off, flags, 0);
			int saved = errno;
			md__fallback(a, MD_FB_PARTIAL, n > 0 ? pages_of((size_t)n) : 0);
			copied_whole(a, fd, iov, iovcnt, n, off);
			errno = saved;
			return n;
		}
	}
	/* Segment by segment, as preadv fills them: stop at a short read. A
	 * segment that could be mapped is a read of its own; the segments
	 * between such ones go in one call, as the VMM made it (128 KiB of a
	 * guest's scattered 4 KiB pages was 32 reads, 32 device requests
	 * under O_DIRECT). */
	size_t total = 0;
	unsigned char in[MD_IO_RANGES];
	for (int i = 0; i < cnt;) {
		int room = cnt - i - cut;
		int m = room > 0 ? copied_run(a, iov + i, room, off + (off_t)total, in) : 0;
		size_t want = 0;
		ssize_t n;
		if (m > 1) {
			for (int k = 0; k < m; k++)
				want += iov[i + k].iov_len;
			n = copied_segments(a, fd, iov + i, m, off + (off_t)total, in);
		} else {
			m = 1;
			want = cut && i == cnt - 1 ? cut_len : iov[i].iov_len;
			n = want ? read_segment(a, fd, iov[i].iov_base, want, off + (off_t)total) : 0;
		}
		/* An error after a part is the call's error (errno as the
		 * failed part left it), as the kernel's O_DIRECT preadv
		 * fails whole: a short count would say end of file, and QEMU
		 * takes a short preadv for one the system lacks, and stops
		 * using preadv for good. */
		if (n < 0)
			return -1;
		total += (size_t)n;
		if ((size_t)n < want)
			break;
		i += m;
	}
	return (ssize_t)total;
}
