/* sys.h - raw system calls, so the agent never re-enters its own interposers
 * (the preloaded syscall(2) one passes these straight to the C library's). */
#ifndef MD_SYS_H
#define MD_SYS_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

ssize_t md__sys_pread(int fd, void *buf, size_t len, off_t off);
ssize_t md__sys_pwrite(int fd, const void *buf, size_t len, off_t off);
/* The same calls made for the VMM (its pread, preadv, pwrite...: the C
 * library's are cancellation points): a cancel pending, or sent while the
 * call blocks, acts in it (asynchronous for the call's duration, as the C
 * library's own SYSCALL_CANCEL), but only where no more than the VMM's
 * call itself has cancellation off (md__cancel_off once: no lock of ours
 * held); elsewhere they are md__sys_*. undo(arg), unless NULL, is called
 * if it acts (the thread then exits): what the caller began for the call
 * (a read in flight, a write recorded) ends. */
ssize_t md__vmm_pread(int fd, void *buf, size_t len, off_t off, void (*undo)(void *), void *arg);
ssize_t md__vmm_preadv2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags,
			void (*undo)(void *), void *arg);
ssize_t md__vmm_pwrite(int fd, const void *buf, size_t len, off_t off, void (*undo)(void *), void *arg);
ssize_t md__vmm_pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags,
			 void (*undo)(void *), void *arg);
void *md__sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int md__sys_munmap(void *addr, size_t len);
void *md__sys_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr);
int md__sys_madvise(void *addr, size_t len, int advice);
/* pthread_create with every signal blocked in the new thread from its
 * start (as QEMU makes its own): our threads run inside the VMM, whose
 * process-wide signals are its own threads' to take. 0 or -errno. */
int md__thread_create(pthread_t *t, void *(*fn)(void *), void *arg);
/* The preload library's syscall(2) takes mprotect itself (and mlock and
 * mbind): these go to the C library's, which the preload library names
 * here (md__libc_syscall) when it starts. */
extern long (*md__libc_syscall)(long nr, ...);
int md__sys_mprotect(void *addr, size_t len, int prot);
int md__sys_mlock2(const void *addr, size_t len, unsigned flags);
int md__sys_ioctl(int fd, unsigned long request, void *arg);
pid_t md__sys_gettid(void);

/* Copies the n pages of our own memory at p[0..n) (n at most 64) to buf,
 * page i at buf + i * 4096, through the kernel (process_vm_readv): one
 * call, adjacent pages as one range. On success points p[i] at its copy and
 * returns 0; else returns -errno and leaves p as it was. Why: on some
 * machines our first touch of a page (a guest page of a huge page a merge
 * split, a pool or image page we map and never read) costs 4-5 us, a
 * shadow page-table fault under the hypervisor, and the copy 0.4-2 us
 * (`build/ptcost`, docs/benchmarks.md). Reading an absent page populates
 * it: only pages known present (or file pages) may be read so. */
#define MD_COPY_PAGES_MAX 64
int md__copy_own_pages(void *buf, const void **p, size_t n);

/* 0 if the kernel says the len bytes at p cannot be read (a caller's
 * pointer that would make its system call fail with EFAULT), 1 otherwise
 * (also when it cannot tell: process_vm_readv refused). Checked through
 * the kernel, as an interposer must not fault where the system call it
 * stands in for would have failed; at most 16 KiB (IOV_MAX iovecs). */
int md__readable(const void *p, size_t len);
/* Copies len bytes of this process's memory at src to dst through the
 * kernel: 0, -EFAULT (not all readable) without a fault, or another
 * -errno (the kernel refused: a seccomp filter, say). */
int md__copy_in(void *dst, const void *src, size_t len);

/* 1 if a mapping of this process shares part of [a, a+len) (MAP_SHARED:
 * memory other processes or devices also write), 0 if none, or -errno. */
int md__range_shared(uintptr_t a, size_t len);
/* Which of these kinds of mapping overlap [a, a+len) (smaps' VmFlags), and
 * which advice every one of them has: a mask of MD_VMF_* (0 if none does),
 * or -errno if smaps cannot be read. */
#define MD_VMF_HUGETLB  1u	/* MAP_HUGETLB, hugetlbfs ("ht"): any */
#define MD_VMF_LOCKED   2u	/* mlock, mlockall, MAP_LOCKED ("lo"): any */
#define MD_VMF_DONTFORK 4u	/* MADV_DONTFORK ("dc"): all */
#define MD_VMF_DONTDUMP 8u	/* MADV_DONTDUMP ("dd"): all */
#define MD_VMF_HUGEPAGE 16u	/* MADV_HUGEPAGE ("hg"): all */
#define MD_VMF_NOT_RW   32u	/* not readable and writable only (PROT_READ, PROT_NONE, PROT_EXEC): any */
#define MD_VMF_USERFAULT 64u	/* registered with a userfaultfd ("um", "uw", "ui"): any */
#define MD_VMF_WIPEONFORK 128u	/* MADV_WIPEONFORK ("wf"): any */
int md__range_vmflags(uintptr_t a, size_t len);
/* [a, end) as runs mapped and not, in order (from /proc/self/maps):
 * *runs (malloc'd; the caller frees it) and *n. 0 or -errno. */
struct md__run {
	uintptr_t lo, hi;
	int mapped;
};
int md__range_runs(uintptr_t a, uintptr_t end, struct md__run **runs, size_t *n);
/* The parts of [a, end) whose mappings a userfaultfd covers (MD_VMF_USERFAULT),
 * clipped, in order: *runs (malloc'd; the caller frees it) and *n (their
 * mapped field 1). 0 or -errno. */
int md__range_userfault_runs(uintptr_t a, uintptr_t end, struct md__run **runs, size_t *n);
/* Calls fn(arg, lo, hi) for each mapping (VMA) overlapping [a, end),
 * clipped to it, in address order, as they were before the first call (fn
 * may change them). 0 or -errno. */
int md__range_mappings(uintptr_t a, uintptr_t end, void (*fn)(void *arg, uintptr_t lo, uintptr_t hi), void *arg);
/* The private mappings of files (pool, image, memfd: an inode) that
 * overlap [a, end), clipped to it, in address order, with what a mapping
 * replacing them must have again: protection, advice (MD_ADV_* bits, from
 * smaps' VmFlags) and MADV_MERGEABLE. *vmas is malloc'd (the caller frees
 * it). 0 or -errno. */
struct md__vma {
	uintptr_t lo, hi;
	int prot;
	unsigned advice;
	int mergeable;
	dev_t dev;	/* its file */
	ino_t ino;
	int pool;	/* a memdedup pool's memfd */
	int locked;	/* VmFlags lo: 1, and lf (locked on fault): | 2 */
};
int md__range_file_vmas(uintptr_t a, uintptr_t end, struct md__vma **vmas, size_t *n);
/* 1 if no file mapping overlaps [a, end), 0 if one does; -ENOTTY on a
 * kernel that cannot tell without smaps (before Linux 6.11), or -errno.
 * One ioctl, where smaps walks every page table of the process. */
int md__range_no_file_vmas(uintptr_t a, uintptr_t end);
/* The mappings of files (an inode) overlapping [a, end), clipped to it, in
 * address order, with their file and whether it is a memdedup pool (by
 * the memfd's name). *v is malloc'd (the caller frees it). 0 or -errno.
 * Found one at a time by PROCMAP_QUERY where the kernel has it (Linux
 * 6.11), at the cost of the file mappings of the range; else every line
 * of /proc/self/maps is read. */
struct md__file_map {
	uintptr_t lo, hi;
	dev_t dev;
	ino_t ino;
	int pool;
};
int md__range_file_maps(uintptr_t a, uintptr_t end, struct md__file_map **v, size_t *n);
/* Opens NAME of /proc/self read-only (O_CLOEXEC, and flags): fd, or -1
 * with errno. Where /proc is not there any more (the VMM chrooted after
 * the agent first looked, as QEMU's -chroot does), maps, smaps, pagemap
 * and statm (without flags) come from descriptors kept at the first open
 * that worked, shared with other threads: read them with pread. */
int md__proc_open(const char *name, int flags);
/* Whether descriptor fd is still the file (dev, ino) it was opened as. The
 * agent's descriptors live in the VMM's table: the VMM may close one and
 * put a file of its own at the number (its open taking the lowest number,
 * a dup2); such a number is never used, nor closed, as ours. */
int md__same_file(int fd, dev_t dev, ino_t ino);
/* Closes fd if it is still (dev, ino): md__same_file. */
void md__close_if_same(int fd, dev_t dev, ino_t ino);
/* Notes fd's (dev, ino): 0, or -errno (fd closed then). */
int md__fd_note(int fd, dev_t *dev, ino_t *ino);
/* Lines of /proc/self/maps: the process's mappings (VMAs) now. */
uint64_t md__count_vmas(void);
/* The process's mappings as the agent and its engine both reckon them:
 * the last count plus every mapping either made since (each adds its own,
 * so neither spends room the other took: each had its own estimate, and
 * together they passed vm.max_map_count, where the VMM's own mmaps fail).
 * Lock-free: adds and counts come from any thread. */
struct md__vmas {
	uint64_t est;           /* the last count + adds since (atomic) */
	uint64_t adds;          /* every add ever (atomic) */
	uint64_t counted_ns;    /* CLOCK_MONOTONIC of the last count tried (atomic) */
	uint64_t counts;        /* counts tried (atomic) */
};
void md__vmas_add(struct md__vmas *v, uint64_t n);
uint64_t md__vmas_estimate(const struct md__vmas *v);
/* Counts for real; the estimate becomes the count plus what was added
 * meanwhile. The count, or 0 if it failed (the estimate stays: 0 would
 * open the whole budget again). */
uint64_t md__vmas_count(struct md__vmas *v);
/* 1 if no count was tried in the last second. */
int md__vmas_count_due(const struct md__vmas *v);
/* The pages the process maps now, all of them and those of files and
 * shared memory (RssFile + RssShmem), from /proc/self/statm: a
 * copy-on-write break of a file page moves one of them by one page (a
 * mapped file page replaced by an anonymous one, or a new anonymous page
 * where the file page was not mapped yet), without a walk of the page
 * tables. statm_fd: /proc/self/statm, kept open (an open a second was a
 * sixth of the agent thread's time once idle). Returns 0 or -errno. */
struct md__resident {
	uint64_t all, files;
};
int md__resident_pages(int statm_fd, struct md__resident *out);
/* Reads a small file (of /proc or /sys) whole into buf, NUL-terminated, at
 * most size - 1 bytes: its length, or -errno (buf then empty). */
ssize_t md__read_text(const char *path, char *buf, size_t size);
/* How many pages moved from one reading to the other (in either count). */
uint64_t md__resident_moved(const struct md__resident *a, const struct md__resident *b);
/* A mapping made over guest RAM does not inherit the advice of the one it
 * replaced: give it back (MD_ADV_* bits; kernel_ksm adds MADV_MERGEABLE).
 * Nor its NUMA policy: see policies.h for the mappings that take it. Not
 * advised MADV_DONTDUMP, it is kept in core dumps (md__coredump_file_pages). */
void md__advise_new_mapping(void *addr, size_t len, unsigned advice, int kernel_ksm);
/* Pages of the pool or an image mapped over guest RAM are a private
 * mapping of a file, never written: the kernel's default coredump_filter
 * (0x33) leaves them out of a core dump, and guest RAM a VMM dumps (QEMU's
 * dump-guest-core=on) would be missing from it. Once, at the first such
 * mapping over RAM not advised MADV_DONTDUMP: /proc/self/coredump_filter
 * gets this bit (MMF_DUMP_MAPPED_PRIVATE), which the process's children
 * inherit. A failure is logged once, nothing more. */
#define MD_COREDUMP_FILE_PRIVATE 0x4ul
void md__coredump_file_pages(void);
/* Nonzero on a thread that is inside the agent (holds its lock), or is
 * one of ours (the scanner, the agent's thread, the fault thread): the
 * preload library then passes the calls it interposes straight to the
 * kernel. An allocator that gives memory back with madvise or munmap
 * (jemalloc, tcmalloc, mimalloc), called by our free() under our locks,
 * came back into the agent and waited for its own lock for good. */
extern __thread unsigned md__in_agent;

/* pthread_cancel of a VMM thread inside the agent: cancellation is off
 * while the agent works on a VMM thread (its calls, its locks held), as
 * it never is in the C library calls the VMM made (madvise, munmap...):
 * one acting in an open() of ours under agent->lock left the lock held
 * for good, and every later read waited for it. Nested: the state the
 * VMM had comes back when the outermost ends. Only the VMM's own read
 * and write system calls let it act (md__vmm_pread...). */
extern __thread unsigned md__nocancel;	/* depth */
extern __thread int md__nocancel_was;	/* the VMM's state before the outermost */
static inline void md__cancel_off(void)
{
	if (md__nocancel++ == 0)
		pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &md__nocancel_was);
}
static inline void md__cancel_on(void)
{
	/* 0: a cancel acted in a VMM's call (md__vmm_pread), whose frames
	 * are unwound: nothing to end. */
	if (md__nocancel && --md__nocancel == 0)
		pthread_setcancelstate(md__nocancel_was, NULL);
}
/* Cancellation off from here to the end of the enclosing block, every
 * return included: one line at the top of a VMM's call into the agent. */
static inline void md__cancel_scope_end(int *unused)
{
	(void)unused;
	md__cancel_on();
}
#define MD_NOCANCEL_SCOPE() \
	int md__nocancel_scope __attribute__((cleanup(md__cancel_scope_end), unused)) = (md__cancel_off(), 0)

/* mountinfo's octal escapes (\040 for a space) undone in s, in place. */
void md__mount_unescape(char *s);

/* 1 if every name of the comma-separated list names is one of the
 * comma-separated opts (a mount's options, say). */
int md__options_have(const char *names, const char *opts);

/* The mount through which this process sees cgroup path of the hierarchy
 * of controllers ctrls (a /proc/self/cgroup line's, "" for cgroup v2), from
 * the mountinfo file at mountinfo: of the mounts of the hierarchy that
 * show path, the one showing the most above it (its root, else the
 * shortest part: a container's mount, a bind mount of a subtree, may come
 * before a full mount, and limits above it count). 0 and its mount point in at, the
 * part of the hierarchy it shows ("/" for all) in shows; -ESRCH if the
 * hierarchy is mounted but no mount shows path; -ENOENT if it is not
 * mounted; another negative errno if mountinfo cannot be read. Reads on
 * the stack, never malloc: the agent asks before a fork. */
int md__cgroup_mount(const char *mountinfo, const char *ctrls, const char *path, char *at, size_t at_size,
		     char *shows, size_t shows_size);

#endif
