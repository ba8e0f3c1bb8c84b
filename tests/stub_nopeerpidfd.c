/*
 * stub_nopeerpidfd.c - preloaded into a test's memdedupd: getsockopt's
 * SO_PEERPIDFD fails as on a kernel before Linux 6.5 (ENOPROTOOPT), so the
 * daemon's fallback (a pidfd_open at accept) can be tested here.
 */
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

__attribute__((visibility("default"))) int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	if (level == SOL_SOCKET && name == SO_PEERPIDFD) {
		errno = ENOPROTOOPT;
		return -1;
	}
	int (*real)(int, int, int, void *, socklen_t *) =
		(int (*)(int, int, int, void *, socklen_t *))dlsym(RTLD_NEXT, "getsockopt");
	return real ? real(fd, level, name, val, len) : -1;
}
