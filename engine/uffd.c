/*
 * uffd.c - userfaultfd in write-protect mode (see uffd.h).
 *
 * The descriptor is opened without UFFD_USER_MODE_ONLY: a VMM writes guest
 * RAM from the kernel too (pread into guest RAM by I/O threads), and those
 * writes must wait on a frozen page exactly like vCPU writes do.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "sys.h"
#include "uffd.h"

static int uffd_new_fd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0)
		return fd;
	int sys_err = -errno;
	/* vm.unprivileged_userfaultfd=0 or a seccomp filter may refuse the
	 * syscall while the device (whose permissions the admin chose) works.
	 * Without the device (before Linux 6.1) the syscall's error is the
	 * one to report. */
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return errno == ENOENT ? sys_err : -errno;
	fd = md__sys_ioctl(dev, USERFAULTFD_IOC_NEW, (void *)(long)(O_CLOEXEC | O_NONBLOCK));
	int err = fd < 0 ? -errno : 0;
	close(dev);
	return fd < 0 ? err : fd;
}

static int uffd_api(int fd, uint64_t features, uint64_t *granted)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	if (md__sys_ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	*granted = api.features;
	return 0;
}

int md__uffd_open(struct md__uffd *u, uint64_t want, uint64_t need)
{
	uint64_t have = 0;
	int err;

	memset(u, 0, sizeof(*u));
	u->fd = u->stop_fd = u->stop_wfd = -1;
	want |= need;
	/* UFFDIO_API fails for a feature it does not know and may be called
	 * once per descriptor: ask what exists on a throw-away one first. */
	int probe = uffd_new_fd();
	if (probe < 0)
		return probe;
	err = uffd_api(probe, 0, &have);
	close(probe);
	if (err)
		return err;
	if ((have & need) != need)
		return -ENOTSUP;

	u->fd = uffd_new_fd();
	if (u->fd < 0) {
		err = u->fd;
		goto undo_nothing;
	}
	err = uffd_api(u->fd, want & have, &u->features);
	if (err)
		goto close_fd;
	/* Not an eventfd: every eventfd shows one file, so one of the VMM's
	 * put at its number could not be told from ours. Each socket is a
	 * file of its own. */
	int sv[2];
	struct stat st, sst, wst;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) {
		err = -errno;
		goto close_fd;
	}
	u->stop_fd = sv[0];
	u->stop_wfd = sv[1];
	if (fstat(u->fd, &st) != 0 || fstat(u->stop_fd, &sst) != 0 || fstat(u->stop_wfd, &wst) != 0) {
		err = -errno;
		goto close_stop;
	}
	u->dev = st.st_dev;
	u->ino = st.st_ino;
	u->stop_dev = sst.st_dev;
	u->stop_ino = sst.st_ino;
	u->stop_wino = wst.st_ino;
	return 0;

close_stop:
	close(u->stop_fd);
	close(u->stop_wfd);
	u->stop_fd = u->stop_wfd = -1;
close_fd:
	close(u->fd);
	u->fd = -1;
undo_nothing:
	return err;
}

int md__uffd_usable(void)
{
	int fd = uffd_new_fd();
	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

const char *md__uffd_hint(int err)
{
	/* The userfaultfd syscall fails with EPERM for an unprivileged user
	 * under vm.unprivileged_userfaultfd=0, and then opening the device
	 * (root's, mode 0600 by default) with EACCES. */
	switch (err) {
	case -EPERM:
	case -EACCES:
		return " (userfaultfd unavailable: set the sysctl vm.unprivileged_userfaultfd=1, "
		       "or give this user read-write access to /dev/userfaultfd)";
	case -ENOSYS:
		return " (userfaultfd unavailable: this kernel lacks it, CONFIG_USERFAULTFD)";
	default:
		return "";
	}
}

/* Before every call on the descriptor: at our number the VMM may have
 * put a userfaultfd of its own (a snapshot's), whose registrations and
 * protections an unregister, un-protect or wake of ours would undo (a
 * review). Once ours is gone, the kernel's release of it lifted our
 * protections and woke our waiters: nothing is left to do there. */
static int uffd_ok(struct md__uffd *u)
{
	if (__atomic_load_n(&u->lost, __ATOMIC_RELAXED))
		return 0;
	if (md__same_file(u->fd, u->dev, u->ino))
		return 1;
	__atomic_store_n(&u->lost, 1, __ATOMIC_RELAXED);
	md__log_once(158, "the VMM closed the engine's userfaultfd, or put a file of its own at its number: "
		     "no more merging in this process (pages merged stay)");
	return 0;
}

int md__uffd_register_wp(struct md__uffd *u, uintptr_t addr, size_t len)
{
	if (!uffd_ok(u))
		return -EBADF;
	struct uffdio_register reg = {
		.range = { .start = addr, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	if (md__sys_ioctl(u->fd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	if (!(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT))) {
		/* Not left ours: the VMM's own registration there would fail. */
		struct uffdio_range r = { .start = addr, .len = len };
		md__sys_ioctl(u->fd, UFFDIO_UNREGISTER, &r);
		return -ENOTSUP;
	}
	return 0;
}

int md__uffd_unregister(struct md__uffd *u, uintptr_t addr, size_t len)
{
	if (!uffd_ok(u))	/* never the VMM's own userfaultfd's registrations */
		return -EBADF;
	struct uffdio_range r = { .start = addr, .len = len };
	return md__sys_ioctl(u->fd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

#define WP_PAGE 4096u	/* the base page on x86-64 */

int md__uffd_one_page_only;	/* tests only: see uffd.h */

static int wp_call(struct md__uffd *u, uintptr_t addr, size_t len, int protect)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = addr, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	if (len > WP_PAGE && __atomic_load_n(&md__uffd_one_page_only, __ATOMIC_RELAXED))
		return -ENOENT;
	/* EAGAIN: the mm is changing under us (mmap_changing); try again. */
	for (int tries = 0; tries < 1000; tries++) {
		if (md__sys_ioctl(u->fd, UFFDIO_WRITEPROTECT, &wp) == 0)
			return 0;
		if (errno != EAGAIN)
			return -errno;
	}
	return -EAGAIN;
}

int md__uffd_wp(struct md__uffd *u, uintptr_t addr, size_t len, int protect)
{
	/* Looked at once, not for each page of the fallback below. */
	if (!uffd_ok(u))	/* un-protecting too: never the VMM's pages */
		return -EBADF;
	int err = wp_call(u, addr, len, protect);
	if (err != -ENOENT || len <= WP_PAGE)
		return err;
	/* Before Linux 6.4 a call covers one mapping only: a run across two
	 * (a page merged before beside one that was not, a read's image
	 * mapping) fails whole. Page by page then: protecting stops at the
	 * first page that fails (the caller thaws the run); unprotecting
	 * goes on past it, to leave no writer waiting. */
	err = 0;
	for (size_t off = 0; off < len; off += WP_PAGE) {
		int e = wp_call(u, addr + off, WP_PAGE, protect);
		err = err ? err : e;
		if (e && protect)
			break;
	}
	return err;
}

int md__uffd_wake(struct md__uffd *u, uintptr_t addr, size_t len)
{
	if (!uffd_ok(u))
		return -EBADF;
	struct uffdio_range r = { .start = addr, .len = len };
	return md__sys_ioctl(u->fd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

static void uffd_retry_later(const char *what, int *said)
{
	if (!*said)
		md__log("userfaultfd %s failed: %s; trying again every millisecond", what,
			strerror(errno));
	*said = 1;
	struct timespec ms = { 0, 1000000 };
	nanosleep(&ms, NULL);
}

static void *fault_thread(void *arg)
{
	struct md__uffd *u = arg;
	struct uffd_msg msgs[16];
	pthread_setname_np(pthread_self(), "md-uffd");
	md__in_agent = 1;	/* for good (sys.h) */
	struct pollfd pfd[2] = {
		{ .fd = u->fd, .events = POLLIN },
		{ .fd = u->stop_fd, .events = POLLIN },
	};

	int said = 0;
	for (;;) {
		/* This thread must not end while pages may be frozen: a writer
		 * of one would wait for ever. An unexpected error (ENOMEM) is
		 * said once and tried again a millisecond later. A second at a
		 * time at most: a stop is also seen by its flag, for a stop
		 * socket whose number the VMM took (quiet, it may never be
		 * readable). */
		int r = poll(pfd, 2, 1000);
		if (__atomic_load_n(&u->stopping, __ATOMIC_SEQ_CST))
			return NULL;	/* md__uffd_close */
		if (r < 0) {
			if (errno != EINTR && errno != EAGAIN)
				uffd_retry_later("poll", &said);
			continue;
		}
		/* The stop socket ready with no stop asked: a file of the
		 * VMM's at its number, or its other end gone; never read, nor
		 * polled again. The uffd's: read only if still ours. */
		if (pfd[1].revents)
			pfd[1].fd = -1;
		if (pfd[0].revents && !uffd_ok(u))
			pfd[0].fd = -1;
		if (!pfd[0].revents || pfd[0].fd < 0)
			continue;
		ssize_t n = read(u->fd, msgs, sizeof(msgs));
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				uffd_retry_later("read", &said);
			continue;
		}
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			uintptr_t addr = (uintptr_t)msgs[i].arg.pagefault.address & ~(uintptr_t)4095;
			__atomic_fetch_add(&u->faults, 1, __ATOMIC_RELAXED);
			u->fn(u->arg, addr);
		}
	}
}

int md__uffd_start(struct md__uffd *u, md__uffd_fault_fn fn, void *arg)
{
	u->fn = fn;
	u->arg = arg;
	int err = md__thread_create(&u->thread, fault_thread, u);
	if (err)
		return err;
	/* Named here too: a look at the threads right after finds it. */
	pthread_setname_np(u->thread, "md-uffd");
	u->thread_started = 1;
	return 0;
}

void md__uffd_close(struct md__uffd *u)
{
	if (u->thread_started) {
		/* Joined whatever the send says: a socket that refuses one
		 * more byte is readable already, and the thread sees the flag
		 * within a second anyway; not joined, it ran on over an engine
		 * freed. */
		char one = 1;
		__atomic_store_n(&u->stopping, 1, __ATOMIC_SEQ_CST);
		while (md__same_file(u->stop_wfd, u->stop_dev, u->stop_wino) &&
		       send(u->stop_wfd, &one, 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno == EINTR)
			;
		pthread_join(u->thread, NULL);
		u->thread_started = 0;
	}
	/* Never a number the VMM has put a file of its own at. */
	if (md__same_file(u->stop_fd, u->stop_dev, u->stop_ino))
		close(u->stop_fd);
	if (md__same_file(u->stop_wfd, u->stop_dev, u->stop_wino))
		close(u->stop_wfd);
	if (md__same_file(u->fd, u->dev, u->ino))
		close(u->fd);
	u->fd = u->stop_fd = u->stop_wfd = -1;
}
