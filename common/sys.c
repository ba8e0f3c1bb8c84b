#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "memdedup.h"

/* syscall(2) returns -1 and sets errno like the libc wrappers do. */
ssize_t md__sys_pread(int fd, void *buf, size_t len, off_t off)
{
	return syscall(SYS_pread64, fd, buf, len, off);
}

int md__copy_own_pages(void *buf, const void **p, size_t n)
{
	struct iovec loc[MD_COPY_PAGES_MAX], rem[MD_COPY_PAGES_MAX];
	size_t niov = 0;
	if (n > MD_COPY_PAGES_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (niov && (const char *)rem[niov - 1].iov_base + rem[niov - 1].iov_len == p[i]) {
			rem[niov - 1].iov_len += 4096;
			loc[niov - 1].iov_len += 4096;
			continue;
		}
		rem[niov] = (struct iovec){ (void *)p[i], 4096 };
		loc[niov++] = (struct iovec){ (char *)buf + i * 4096, 4096 };
	}
	ssize_t got = process_vm_readv(getpid(), loc, niov, rem, niov, 0);
	if (got != (ssize_t)(n * 4096))
		return got < 0 ? -errno : -EFAULT;
	for (size_t i = 0; i < n; i++)
		p[i] = (const char *)buf + i * 4096;
	return 0;
}

ssize_t md__sys_preadv2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	/* The kernel takes the offset as two longs; on 64-bit the high one is 0. */
	if (flags == 0 && off != -1)
		return syscall(SYS_preadv, fd, iov, iovcnt, (long)off, 0L);
	return syscall(SYS_preadv2, fd, iov, iovcnt, (long)off, 0L, flags);
}

void *md__sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

int md__sys_munmap(void *addr, size_t len)
{
	return (int)syscall(SYS_munmap, addr, len);
}

int md__sys_ioctl(int fd, unsigned long request, void *arg)
{
	return (int)syscall(SYS_ioctl, fd, request, arg);
}

int md__sys_madvise(void *addr, size_t len, int advice)
{
	return (int)syscall(SYS_madvise, addr, len, advice);
}

pid_t md__sys_gettid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

uint64_t md__count_vmas(void)
{
	char buf[65536];
	uint64_t lines = 0;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (char *p = buf; (p = memchr(p, '\n', (size_t)(buf + n - p))); p++)
			lines++;
	}
	close(fd);
	return lines;
}

/* Calls line(arg, lo, hi, perms) for each mapping in /proc/self/maps, in
 * address order. 0, or -errno if the file cannot be read. */
static int maps_each(void (*line)(void *arg, uintptr_t lo, uintptr_t hi, const char *perms), void *arg)
{
	char buf[65536];
	size_t have = 0;
	int err = 0;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = -errno;
			break;
		}
		have += (size_t)n;
		buf[have] = 0;
		char *p = buf, *nl;
		/* At the end, a last line may come without a newline. */
		while ((nl = memchr(p, '\n', (size_t)(buf + have - p))) || (n == 0 && *p)) {
			unsigned long lo, hi;
			char perms[5];
			if (nl)
				*nl = 0;
			if (sscanf(p, "%lx-%lx %4s", &lo, &hi, perms) == 3)
				line(arg, lo, hi, perms);
			p = nl ? nl + 1 : p + strlen(p);
		}
		if (n == 0)
			break;
		/* Keep the partial line; a line never fills the buffer. */
		have = (size_t)(buf + have - p);
		memmove(buf, p, have);
		if (have == sizeof(buf) - 1)
			have = 0;
	}
	close(fd);
	return err;
}

struct shares {
	uintptr_t a, end;
	int shared;
};

/* A mapping that shares part of [a, end) (MAP_SHARED: perms "...s"). */
static void line_shares(void *arg, uintptr_t lo, uintptr_t hi, const char *perms)
{
	struct shares *s = arg;
	s->shared |= lo < s->end && hi > s->a && perms[3] == 's';
}

int md__range_shared(uintptr_t a, size_t len)
{
	struct shares s = { a, a + len, 0 };
	int err = maps_each(line_shares, &s);
	return err ? err : s.shared;
}

struct runs {
	uintptr_t cursor, end;
	struct md__run *run;
	size_t n, cap;
	int err;
};

static void runs_push(struct runs *r, uintptr_t lo, uintptr_t hi, int mapped)
{
	if (r->n && r->run[r->n - 1].mapped == mapped && r->run[r->n - 1].hi == lo) {
		r->run[r->n - 1].hi = hi;	/* adjacent mappings: one run */
		return;
	}
	if (r->n == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 16;
		struct md__run *grown = realloc(r->run, cap * sizeof(*grown));
		if (!grown) {
			r->err = -ENOMEM;
			return;
		}
		r->run = grown;
		r->cap = cap;
	}
	r->run[r->n++] = (struct md__run){ lo, hi, mapped };
}

static void line_runs(void *arg, uintptr_t lo, uintptr_t hi, const char *perms)
{
	struct runs *r = arg;
	(void)perms;
	if (hi <= r->cursor || lo >= r->end)
		return;
	if (lo > r->cursor)
		runs_push(r, r->cursor, lo, 0);
	uintptr_t to = hi < r->end ? hi : r->end;
	runs_push(r, lo > r->cursor ? lo : r->cursor, to, 1);
	r->cursor = to;
}

int md__range_runs(uintptr_t a, uintptr_t end, struct md__run **runs, size_t *n)
{
	struct runs r = { a, end, NULL, 0, 0, 0 };
	int err = maps_each(line_runs, &r);
	if (!err && r.cursor < end)
		runs_push(&r, r.cursor, end, 0);
	err = err ? err : r.err;
	if (err) {
		free(r.run);
		return err;
	}
	*runs = r.run;
	*n = r.n;
	return 0;
}

int md__resident_pages(int statm_fd, struct md__resident *out)
{
	char buf[256];
	unsigned long size, resident, shared;
	ssize_t n = pread(statm_fd, buf, sizeof(buf) - 1, 0);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	if (sscanf(buf, "%lu %lu %lu", &size, &resident, &shared) != 3)
		return -EINVAL;
	out->all = resident;
	out->files = shared;
	return 0;
}

static uint64_t distance(uint64_t a, uint64_t b)
{
	return a > b ? a - b : b - a;
}

uint64_t md__resident_moved(const struct md__resident *a, const struct md__resident *b)
{
	return distance(a->all, b->all) + distance(a->files, b->files);
}

void md__advise_new_mapping(void *addr, size_t len, unsigned advice, int kernel_ksm)
{
	if (kernel_ksm)
		md__sys_madvise(addr, len, MADV_MERGEABLE);
	if (advice & MD_ADV_DONTFORK)
		md__sys_madvise(addr, len, MADV_DONTFORK);
	if (advice & MD_ADV_DONTDUMP)
		md__sys_madvise(addr, len, MADV_DONTDUMP);
}
