#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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

/* One line of /proc/self/maps: 1 if it maps part of [a, end) shared. */
static int line_shares(const char *line, uintptr_t a, uintptr_t end)
{
	unsigned long lo, hi;
	char perms[5];
	if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) != 3)
		return 0;
	return lo < end && hi > a && perms[3] == 's';
}

/* msync without flags only checks that the range is mapped (ENOMEM where
 * it is not), writes nothing back and allocates nothing. */
int md__range_mapped(uintptr_t a, size_t len)
{
	return syscall(SYS_msync, a, len, 0) == 0;
}

int md__range_shared(uintptr_t a, size_t len)
{
	char buf[65536];
	size_t have = 0;
	int shared = 0;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			shared = -errno;
			break;
		}
		have += (size_t)n;
		buf[have] = 0;
		char *line = buf, *nl;
		while ((nl = memchr(line, '\n', (size_t)(buf + have - line)))) {
			*nl = 0;
			shared |= line_shares(line, a, a + len);
			line = nl + 1;
		}
		if (n == 0) {
			shared |= line_shares(line, a, a + len);	/* a last line without a newline */
			break;
		}
		/* Keep the partial line; a line never fills the buffer. */
		have = (size_t)(buf + have - line);
		memmove(buf, line, have);
		if (have == sizeof(buf) - 1)
			have = 0;
	}
	close(fd);
	return shared;
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
