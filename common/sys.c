#include "sys.h"

#include <sys/syscall.h>
#include <unistd.h>

/* syscall(2) returns -1 and sets errno like the libc wrappers do. */
ssize_t md__sys_pread(int fd, void *buf, size_t len, off_t off)
{
	return syscall(SYS_pread64, fd, buf, len, off);
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

int md__sys_madvise(void *addr, size_t len, int advice)
{
	return (int)syscall(SYS_madvise, addr, len, advice);
}

pid_t md__sys_gettid(void)
{
	return (pid_t)syscall(SYS_gettid);
}
