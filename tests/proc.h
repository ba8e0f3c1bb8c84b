/* proc.h - drive a testproc (a stand-in VMM with the agent preloaded) and
 * look at it from outside: its answers, its pagemap, its statistics file. */
#ifndef MD_TEST_PROC_H
#define MD_TEST_PROC_H
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "memdedup.h"

struct proc {
	pid_t pid;
	FILE *in, *out;
	uintptr_t base;
};

/* Where the binaries under test are: $MD_BUILD_DIR, else build. */
const char *build_dir(void);
/* A fresh directory for this test: run dir for stats, images. */
const char *test_dir(void);
/* Writes a file of n bytes of deterministic pseudo-random content. */
void make_image(const char *path, size_t n, unsigned seed);
uint64_t fnv_file(const char *path, off_t off, size_t n);
/* A hash as the testproc prints it (one of four buffers, reused). */
const char *hex(uint64_t h);
/* The same hash of n zero bytes (what the testproc's hash says of them). */
uint64_t fnv_zero(size_t n);

/* Starts build/testproc with the preload and extra "KEY=VALUE" env (NULL-ended). */
void proc_start(struct proc *p, const char *const *env);
/* The same as pid 1 of a pid namespace of its own (as root), as in a
 * container; p->pid is its pid here. */
void proc_start_pid_ns(struct proc *p, const char *const *env);
/* In a time namespace of its own, with proc_timens_offsets written to its
 * /proc/self/timens_offsets (default: booted 100,000 s earlier). */
void proc_start_time_ns(struct proc *p, const char *const *env);
extern const char *proc_timens_offsets;
/* Sends a command line, returns the answer line (static buffer). */
const char *proc_cmd(struct proc *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
long long proc_num(struct proc *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A file's contents (up to 64 KiB; "" when it does not exist), in a static
 * buffer. */
const char *file_text(const char *path);
/* The last word (the STATE column) of pid's row in `memdedup status`'s
 * table out, "" if none (one buffer, reused). */
const char *status_row_state(const char *out, pid_t pid);
/* Writes text to the file at path (a sysctl, say) and puts back what it
 * held (a sysfs choice's bracketed word) when the test ends, failed or not: a guard process waits for the
 * returned descriptor to close (the test's exit closes it). -errno if
 * the file cannot be read or written. */
int set_until_exit(const char *path, const char *text);
/* This process's /proc/self/pagemap entry for addr. */
uint64_t self_pagemap(const void *addr);
/* A tmpfs of the given size ("256k") of this test's own, in a mount
 * namespace of its own, at test_dir()/sparse (its path into at): NULL, or why
 * none can be had (for SKIP). */
const char *own_tmpfs(char *at, size_t size, const char *bytes);
void proc_stop(struct proc *p);

/* Pagemap of the process for base+doff: PFN (0 if not present) and flags. */
struct pm { uint64_t pfn; int present, file; };
struct pm proc_page(struct proc *p, size_t doff);
/* 1 if the page at doff is the image's page at off: the page cache's very
 * frame (shared at read time), not a copy. */
int proc_page_is_image(struct proc *p, size_t doff, const char *img, off_t off);
/* 1 if the page at doff shows a file's page or none yet: a mapping from an
 * image nothing copied. pagemap read once: read twice, a scanner touching
 * the page between the reads (it hashes image pages in place) made a page
 * not there yet look present and anonymous. */
int proc_page_from_file(struct proc *p, size_t doff);
/* Descriptors of pid, other than not_fd (-1: none), whose link names want
 * (its first prefix bytes; 0: all of it): how many, and the last one in
 * *fd if fd is not NULL. */
int proc_fds_naming(pid_t pid, const char *want, size_t prefix, int not_fd, int *fd);
/* The system call thread tid of this process is in, if its first argument
 * is fd (/proc/self/task/TID/syscall): its number, else -1. */
long task_syscall_on(pid_t tid, int fd);
/* Why nobody may open a userfaultfd here, NULL if nobody may not (the tests
 * of that refusal need it refused): run as root, under the sysctl
 * vm.unprivileged_userfaultfd=0, /dev/userfaultfd closed to others. */
const char *uffd_open_to_nobody(void);
/* Waits up to ms for a thread of pid named comm to be blocked in system
 * call nr (SYS_poll, say): 1 once it is, seen twice 20 ms apart; 0 if not.
 * How a test knows its scanner waits for a stopped memdedupd's answer. */
int thread_blocked_in(pid_t pid, const char *comm, long nr, int ms);
/* Reads the agent's statistics of p; waits up to ms for cond on them. */
int proc_stats(struct proc *p, md_stats *s);
int proc_stats_wait(struct proc *p, md_stats *s, int ms, int (*cond)(const md_stats *));
/* The times the thread named name of this process was switched in, or -1. */
long thread_switches(const char *name);
/* 1 if the thread named name, right after it woke by itself (up to 2 s
 * waited for that), wakes again within 300 ms of event(arg): what ends its
 * sleep is the event, not its clock, a second or more away then. */
int wakes_on(const char *name, void (*event)(void *), void *arg);

/* In a syscall(2) stand-in (md__libc_syscall, common/sys.h), declares a
 * and takes the call's six arguments into it. */
#define SYSCALL_ARGS(nr, a) \
	long a[6]; \
	do { \
		va_list ap_; \
		va_start(ap_, nr); \
		for (int i_ = 0; i_ < 6; i_++) \
			a[i_] = va_arg(ap_, long); \
		va_end(ap_); \
	} while (0)

#endif
