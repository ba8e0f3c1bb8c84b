/*
 * pool.c - the content pool (see pool.h).
 *
 * Why a memfd and not anonymous memory: only a file lets several mappings (in
 * this process now, in many processes once the daemon owns the pool) show one
 * physical page, and a private mapping of it gives copy-on-write for free.
 * Why the read-only descriptor: a holder that cannot open the pool for
 * writing cannot change a page others share, whatever bug it has; the
 * mapping is MAP_PRIVATE, which needs no write access.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "pool.h"
#include "sys.h"

#define POOL_PAGE 4096u

/* Whether shmem may give the pool's file huge pages on write (the
 * kernel's knobs at always, within_size or force, for the 2 MiB size or
 * any other). Punching a 4 KiB slot out of one zeroes it in place and
 * keeps the page when it cannot be split (a part pinned by an O_DIRECT
 * write in flight), so such a write could send zeroes or the slot's next
 * content. Not something to change on the host for the operator: said. */
static int shmem_huge_on(void)
{
	char path[96], text[128];
	for (unsigned kb = 4; kb <= 2048; kb *= 2) {
		if (kb == 4)	/* the global knob */
			snprintf(path, sizeof(path), "/sys/kernel/mm/transparent_hugepage/shmem_enabled");
		else
			snprintf(path, sizeof(path), "/sys/kernel/mm/transparent_hugepage/hugepages-%ukB/shmem_enabled",
				 kb);
		if (md__read_text(path, text, sizeof(text)) > 0 &&
		    (strstr(text, "[always]") || strstr(text, "[within_size]") || strstr(text, "[force]")))
			return 1;
	}
	return 0;
}

int md__pool_open(struct md__pool *p, size_t max_pages)
{
	char path[64];
	int err;

	memset(p, 0, sizeof(*p));
	p->fd = p->ro_fd = -1;
	p->max_pages = max_pages;
	p->fd = memfd_create("memdedup-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (p->fd < 0)
		return -errno;
	if (shmem_huge_on())
		md__log_once(102, "shmem huge pages are on (transparent_hugepage/shmem_enabled): a pool "
			     "page freed while an O_DIRECT write from it is in flight may change under "
			     "that write; set them to never or advise");
	/* Nobody may shrink the file: a mapping of a truncated page would
	 * SIGBUS the guest. Growing stays allowed; that is how we append. */
	if (fcntl(p->fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
		err = -errno;
		goto close_fd;
	}
	struct stat st;
	if (fstat(p->fd, &st) != 0) {
		err = -errno;
		goto close_fd;
	}
	p->dev = st.st_dev;
	p->ino = st.st_ino;
	snprintf(path, sizeof(path), "fd/%d", p->fd);
	p->ro_fd = md__proc_open(path, 0);
	if (p->ro_fd < 0) {
		err = -errno;
		goto close_fd;
	}
	/* The view may extend past the end of the file: only written slots
	 * are ever read through it. */
	void *v = md__sys_mmap(NULL, max_pages * POOL_PAGE, PROT_READ,
			       MAP_SHARED | MAP_NORESERVE, p->ro_fd, 0);
	if (v == MAP_FAILED) {
		err = -errno;
		goto close_ro;
	}
	p->view = v;
	p->refs = calloc(max_pages, sizeof(*p->refs));
	p->state = calloc(max_pages, sizeof(*p->state));
	p->free = malloc(max_pages * sizeof(*p->free));
	if (!p->refs || !p->state || !p->free) {
		err = -ENOMEM;
		goto free_arrays;
	}
	return 0;

free_arrays:
	free(p->refs);
	free(p->state);
	free(p->free);
	md__sys_munmap((void *)p->view, max_pages * POOL_PAGE);
close_ro:
	close(p->ro_fd);
close_fd:
	close(p->fd);
	p->fd = p->ro_fd = -1;
	return err;
}

/* Whether fd is a descriptor of the pool's file. */
static int same_file(const struct md__pool *p, int fd)
{
	return md__same_file(fd, p->dev, p->ino);
}

int md__pool_fd_ok(struct md__pool *p, int fd)
{
	if (p->lost)
		return 0;
	if (same_file(p, fd))
		return 1;
	p->lost = 1;
	md__log_once(143, "the VMM closed a descriptor of this process's content pool, or put a file of "
		     "its own at its number: no more merging into that pool (pages merged stay)");
	return 0;
}

void md__pool_close(struct md__pool *p)
{
	/* Holders' mappings keep the file alive; only our handles go. Freed
	 * slots waiting for their batch are punched first: once our writable
	 * handle is gone nobody can, and a holder's mapping would keep them. */
	if (p->fd >= 0 && p->ndirty)
		md__pool_trim(p);
	if (p->view)
		md__sys_munmap((void *)p->view, p->max_pages * POOL_PAGE);
	/* Not a number the VMM took over since: its file is not ours to close. */
	if (same_file(p, p->ro_fd))
		close(p->ro_fd);
	if (same_file(p, p->fd))
		close(p->fd);
	free(p->refs);
	free(p->state);
	free(p->free);
	memset(p, 0, sizeof(*p));
	p->fd = p->ro_fd = -1;
}

static int by_slot(const void *x, const void *y);

/* A run of n punched slots from the free list, for a pool with no room at
 * its end: a pool that once reached its end would refuse every run for
 * good, however much of it was freed since. Taken only then: sorting the
 * list costs a pass over it. */
static int reserve_freed_run(struct md__pool *p, size_t n, uint32_t *first)
{
	if (p->ndirty)
		md__pool_trim(p);
	if (n > p->nfree)
		return -ENOSPC;
	/* Ascending, then searched from the low end: the list stays sorted
	 * highest first, so its lowest slots are reused first, as trim
	 * leaves it. */
	qsort(p->free, p->nfree, sizeof(*p->free), by_slot);
	size_t at = SIZE_MAX;
	for (size_t i = 0, run = 1; i + n <= p->nfree && at == SIZE_MAX; i += run) {
		for (run = 1; run < n && p->free[i + run] == p->free[i] + run; run++)
			;
		if (run == n)
			at = i;
	}
	if (at != SIZE_MAX) {
		*first = p->free[at];
		memmove(p->free + at, p->free + at + n, (p->nfree - at - n) * sizeof(*p->free));
		p->nfree -= n;
		memset(p->state + *first, MD_SLOT_RESERVED, n);
		p->reused += n;
	}
	for (size_t i = 0, j = p->nfree; i < j / 2; i++) {	/* highest first again */
		uint32_t t = p->free[i];
		p->free[i] = p->free[j - 1 - i];
		p->free[j - 1 - i] = t;
	}
	return at != SIZE_MAX ? 0 : -ENOSPC;
}

int md__pool_reserve(struct md__pool *p, size_t n, uint32_t *first)
{
	if (n == 0)
		return -EINVAL;
	/* Punched slots only: a freed slot's page may still be held by the
	 * kernel (an O_DIRECT write from guest RAM mapped from it pins the
	 * page and sends it later); rewritten in place, it would send what
	 * the guest never wrote. The punch takes it out of the file, and the
	 * publication gets a new page. Freed slots wait to be punched in
	 * batches (slot_free): one is punched early only when the pool has
	 * no room left. */
	if (n == 1 && !p->nfree && p->ndirty && p->end + 1 > p->max_pages)
		md__pool_trim(p);
	if (n == 1 && p->nfree) {
		*first = p->free[--p->nfree];
		p->state[*first] = MD_SLOT_RESERVED;
		p->reused++;
		return 0;
	}
	if (p->end + n > p->max_pages)
		return reserve_freed_run(p, n, first);
	*first = (uint32_t)p->end;
	memset(p->state + p->end, MD_SLOT_RESERVED, n);
	p->end += n;
	return 0;
}

static int by_slot(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	return a < b ? -1 : a > b;
}

int md__pool_fail_punches;	/* tests only: see pool.h */

static int punch(struct md__pool *p, uint32_t first, size_t n)
{
	if (__atomic_load_n(&md__pool_fail_punches, __ATOMIC_RELAXED) > 0 &&
	    __atomic_sub_fetch(&md__pool_fail_punches, 1, __ATOMIC_RELAXED) >= 0) {
		errno = EIO;
		return -1;
	}
	if (!md__pool_fd_ok(p, p->fd)) {
		errno = EBADF;
		return -1;
	}
	return fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)first * POOL_PAGE,
			 (off_t)n * POOL_PAGE);
}

size_t md__pool_trim(struct md__pool *p)
{
	size_t n = p->ndirty;
	qsort(p->dirty, n, sizeof(*p->dirty), by_slot);
	for (size_t i = 0, run; i < n; i += run) {
		for (run = 1; i + run < n && p->dirty[i + run] == p->dirty[i] + run; run++)
			;
		/* Reading the hole gives zeroes; nobody maps it any more. A
		 * slot whose page stays is not used again: its next page
		 * would be written into the one the kernel may still hold
		 * (see pool.h). */
		if (punch(p, p->dirty[i], run) != 0) {
			if (!p->lost)
				md__log_once(110, "freed pool pages cannot be given back (%s): their slots "
					     "are not used again", strerror(errno));
			p->unpunched += run;
			for (size_t k = i; k < i + run; k++)
				p->dirty[k] = UINT32_MAX;
		}
	}
	/* Lowest last: the free list is LIFO, low slots are reused first. */
	for (size_t i = n; i-- > 0;)
		if (p->dirty[i] != UINT32_MAX)
			p->free[p->nfree++] = p->dirty[i];
	p->ndirty = 0;
	return n;
}

static void slot_free(struct md__pool *p, uint32_t slot)
{
	p->state[slot] = MD_SLOT_FREE;
	if (p->ndirty == MD_POOL_DIRTY)
		md__pool_trim(p);
	p->dirty[p->ndirty++] = slot;
}

void md__pool_unreserve(struct md__pool *p, uint32_t first, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p->state[first + i] == MD_SLOT_RESERVED)
			slot_free(p, first + (uint32_t)i);
}

int md__pool_publish(struct md__pool *p, uint32_t first, const void *src, size_t n)
{
	if ((size_t)first + n > p->end)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (p->state[first + i] != MD_SLOT_RESERVED)
			return -EPERM;
	if (!md__pool_fd_ok(p, p->fd))
		return -EBADF;
	size_t len = n * POOL_PAGE, done = 0;
	while (done < len) {
		/* Not the interposed pwrite: no VMM write to wait for. */
		ssize_t w = md__sys_pwrite(p->fd, (const char *)src + done, len - done,
					   (off_t)first * POOL_PAGE + (off_t)done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		done += (size_t)w;
	}
	for (size_t i = 0; i < n; i++) {
		p->state[first + i] = MD_SLOT_LIVE;
		p->refs[first + i] = 0;
	}
	p->published += n;
	return 0;
}

void md__pool_get(struct md__pool *p, uint32_t slot)
{
	p->refs[slot]++;
}

void md__pool_drop_unused(struct md__pool *p, uint32_t slot)
{
	if (p->state[slot] != MD_SLOT_LIVE || p->refs[slot])
		return;
	p->freed++;
	slot_free(p, slot);
}

int md__pool_put_n(struct md__pool *p, uint32_t slot, uint32_t n)
{
	if (p->state[slot] != MD_SLOT_LIVE || p->refs[slot] == 0 || n == 0)
		return 0;
	p->refs[slot] -= n < p->refs[slot] ? n : p->refs[slot];
	if (p->refs[slot])
		return 0;
	md__pool_drop_unused(p, slot);
	return 1;
}

int md__pool_put(struct md__pool *p, uint32_t slot)
{
	return md__pool_put_n(p, slot, 1);
}
