/*
 * stub_pidfile.c - preloaded into a test's memdedupd: makes the races of
 * its pid file happen every time. MD_STUB_REPLACE_LOCK=PATH: the first
 * flock of PATH finds it replaced meanwhile (by a new file renamed over it,
 * as a daemon going away unlinks its lock before it lets go), so the lock
 * is taken on a file the path no longer names. MD_STUB_SLOW_PID=1: the
 * daemonized memdedupd (the leader of its session) writes its pid file
 * half a second late, and cuts it a fifth of a second late, both after the
 * parent that started it wrote it and returned.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

/* Whether fd is the file at path (a name that ends as path does, when
 * path is "/NAME"). */
static int names(int fd, const char *path)
{
	char link[64], target[4096];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	if (n <= 0)
		return 0;
	target[n] = '\0';
	size_t len = strlen(path);
	return path[0] == '/' && strchr(path + 1, '/') == NULL ?
	       (size_t)n >= len && strcmp(target + n - len, path) == 0 : strcmp(target, path) == 0;
}

__attribute__((visibility("default"))) int flock(int fd, int op)
{
	static int replaced;
	const char *path = getenv("MD_STUB_REPLACE_LOCK");
	if (path && !replaced && names(fd, path)) {
		char tmp[4096];
		replaced = 1;
		snprintf(tmp, sizeof(tmp), "%s.new", path);
		int nfd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (nfd >= 0) {
			close(nfd);
			rename(tmp, path);
		}
	}
	int (*real)(int, int) = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
	return real ? real(fd, op) : -1;
}

/* Whether fd is the pid file and the caller the daemonized memdedupd. */
static int slow_pid(int fd)
{
	return getenv("MD_STUB_SLOW_PID") && getsid(0) == getpid() && names(fd, "/memdedupd.pid");
}

__attribute__((visibility("default"))) int ftruncate(int fd, off_t len)
{
	if (slow_pid(fd))
		usleep(200000);
	int (*real)(int, off_t) = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate");
	return real ? real(fd, len) : -1;
}

__attribute__((visibility("default"))) int ftruncate64(int fd, off_t len)
{
	return ftruncate(fd, len);
}

__attribute__((visibility("default"))) ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	if (slow_pid(fd))
		usleep(500000);
	ssize_t (*real)(int, const void *, size_t, off_t) =
		(ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
	return real ? real(fd, buf, n, off) : -1;
}

__attribute__((visibility("default"))) ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
	return pwrite(fd, buf, n, off);
}
