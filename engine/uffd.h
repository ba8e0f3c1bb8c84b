/*
 * uffd.h - userfaultfd in write-protect mode: the engine's way to freeze a
 * page while it compares and replaces it, and the thread that resolves the
 * write faults guest threads take on frozen pages.
 */
#ifndef MD_ENGINE_UFFD_H
#define MD_ENGINE_UFFD_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Feature bits newer than the installed 6.1 UAPI headers. */
#define MD_UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1ull << 12)
#define MD_UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#define MD_UFFD_FEATURE_WP_ASYNC (1ull << 15)
#define MD_UFFD_FEATURE_MOVE (1ull << 16)

/* Called by the fault thread for every write-protect fault; it must resolve
 * the fault (un-protect or wake the page), or the writer sleeps forever. */
typedef void (*md__uffd_fault_fn)(void *arg, uintptr_t addr);

struct md__uffd {
	int fd;
	uint64_t features;   /* what UFFDIO_API granted */
	int stop_fd;         /* a socket the fault thread polls, ended by a byte */
	int stop_wfd;        /* from its other end (a socketpair's: no SIGPIPE) */
	dev_t dev, stop_dev; /* their files, to tell them from files the VMM puts */
	ino_t ino, stop_ino, stop_wino; /* at their numbers (close then open, dup2) */
	int lost;            /* fd found replaced: no protect or registration any more */
	int stopping;        /* md__uffd_close asked the thread to end (atomic) */
	pthread_t thread;
	int thread_started;
	md__uffd_fault_fn fn;
	void *arg;
	uint64_t faults;     /* write-protect faults seen */
};

/* Opens a userfaultfd (the syscall, else /dev/userfaultfd) and negotiates
 * write-protect features: those in want that the kernel has are granted;
 * those in need must be, or -ENOTSUP. */
int md__uffd_open(struct md__uffd *u, uint64_t want, uint64_t need);
/* 0 if this process may open a userfaultfd, else why not (-EPERM, -EACCES,
 * -ENOSYS...); md__uffd_hint(err) is what to do about it ("" if nothing). */
int md__uffd_usable(void);
const char *md__uffd_hint(int err);
/* Registers [addr, addr+len) for write-protect tracking. */
int md__uffd_register_wp(struct md__uffd *u, uintptr_t addr, size_t len);
int md__uffd_unregister(struct md__uffd *u, uintptr_t addr, size_t len);
/* Write-protects (protect != 0) or un-protects the range; un-protecting wakes
 * the threads waiting on it. -ENOENT: some of it is not registered. */
int md__uffd_wp(struct md__uffd *u, uintptr_t addr, size_t len, int protect);
/* Tests only: md__uffd_wp's calls over more than one page fail as Linux
 * before 6.4 fails those that cross mappings (ENOENT). 0 otherwise. */
extern int md__uffd_one_page_only;
/* Wakes threads waiting on faults in the range (registered or not). */
int md__uffd_wake(struct md__uffd *u, uintptr_t addr, size_t len);
/* Starts the fault thread. */
int md__uffd_start(struct md__uffd *u, md__uffd_fault_fn fn, void *arg);
/* Stops the thread and closes the descriptor: registrations end, and every
 * write-protected page becomes writable again (the kernel drops them). */
void md__uffd_close(struct md__uffd *u);
#endif
