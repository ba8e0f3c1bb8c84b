#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "memdedup.h"

/* The C library's syscall(2), set by the preload library (whose own
 * syscall() routes the memory, read and write calls below to the agent); else ours. The
 * agent's own calls must reach the kernel, never the agent again. */
long (*md__libc_syscall)(long nr, ...);

static long (*raw(void))(long, ...)
{
	long (*call)(long, ...) = __atomic_load_n(&md__libc_syscall, __ATOMIC_ACQUIRE);
	return call ? call : syscall;
}

/* syscall(2) returns -1 and sets errno like the libc wrappers do. */
ssize_t md__sys_pread(int fd, void *buf, size_t len, off_t off)
{
	return raw()(SYS_pread64, fd, buf, len, off);
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

int md__copy_in(void *dst, const void *src, size_t len)
{
	struct iovec loc = { dst, len }, rem = { (void *)src, len };
	ssize_t got = process_vm_readv(getpid(), &loc, 1, &rem, 1, 0);
	return got == (ssize_t)len ? 0 : got < 0 ? -errno : -EFAULT;
}

int md__readable(const void *p, size_t len)
{
	/* Every local piece is the same scratch: the bytes are only read. */
	char scratch[512];
	struct iovec loc[32], rem = { (void *)p, len };
	if (len > sizeof(scratch) * 32)
		return 1;
	for (size_t i = 0; i < 32; i++)
		loc[i] = (struct iovec){ scratch, sizeof(scratch) };
	ssize_t got = process_vm_readv(getpid(), loc, (len + sizeof(scratch) - 1) / sizeof(scratch), &rem, 1, 0);
	return got == (ssize_t)len || (got < 0 && errno != EFAULT);
}

ssize_t md__sys_pwrite(int fd, const void *buf, size_t len, off_t off)
{
	return raw()(SYS_pwrite64, fd, buf, len, off);
}

__thread unsigned md__nocancel;
__thread int md__nocancel_was;

struct vmm_undo {
	void (*fn)(void *);
	void *arg;
};

static void vmm_undone(void *p)
{
	const struct vmm_undo *u = p;
	if (u->fn)
		u->fn(u->arg);
}

/* The system call, cancellation asynchronous while it runs: only the
 * call itself (and the C library's syscall, which holds nothing) is in
 * that window. Switching to it acts on a cancel already pending. */
static long async_call(long nr, const long *v)
{
	int type, err;
	pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &type);
	long r = raw()(nr, v[0], v[1], v[2], v[3], v[4], v[5]);
	err = errno;
	pthread_setcanceltype(type, NULL);
	errno = err;
	return r;
}

static long vmm_call(long nr, const long *v, void (*undo)(void *), void *arg)
{
	/* Deeper than the VMM's call: a lock of ours is held. Or the VMM
	 * had cancellation off itself. */
	if (md__nocancel > 1 || (md__nocancel == 1 && md__nocancel_was != PTHREAD_CANCEL_ENABLE))
		return raw()(nr, v[0], v[1], v[2], v[3], v[4], v[5]);
	struct vmm_undo u = { undo, arg };
	int lift = md__nocancel == 1, err;
	long r;
	pthread_cleanup_push(vmm_undone, &u);
	if (lift) {
		md__nocancel = 0;	/* as it is once cancelled: the thread is the VMM's alone */
		pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
	}
	r = async_call(nr, v);
	err = errno;
	if (lift) {
		pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
		md__nocancel = 1;
	}
	pthread_cleanup_pop(0);
	errno = err;
	return r;
}

ssize_t md__vmm_pread(int fd, void *buf, size_t len, off_t off, void (*undo)(void *), void *arg)
{
	const long v[6] = { fd, (long)buf, (long)len, (long)off, 0, 0 };
	return vmm_call(SYS_pread64, v, undo, arg);
}

ssize_t md__vmm_preadv2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags,
			void (*undo)(void *), void *arg)
{
	/* The system call the VMM's would be (the C library's preadv2 is
	 * preadv without flags or the current offset's -1). The kernel takes
	 * the offset as two longs; on 64-bit the high one is 0. */
	const long v[6] = { fd, (long)iov, iovcnt, (long)off, 0, flags };
	return vmm_call(flags == 0 && off != -1 ? SYS_preadv : SYS_preadv2, v, undo, arg);
}

ssize_t md__vmm_pwrite(int fd, const void *buf, size_t len, off_t off, void (*undo)(void *), void *arg)
{
	const long v[6] = { fd, (long)buf, (long)len, (long)off, 0, 0 };
	return vmm_call(SYS_pwrite64, v, undo, arg);
}

ssize_t md__vmm_pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags,
			 void (*undo)(void *), void *arg)
{
	const long v[6] = { fd, (long)iov, iovcnt, (long)off, 0, flags };
	return vmm_call(flags == 0 && off != -1 ? SYS_pwritev : SYS_pwritev2, v, undo, arg);
}

void *md__sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)raw()(SYS_mmap, addr, len, prot, flags, fd, off);
}

void *md__sys_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr)
{
	return (void *)raw()(SYS_mremap, old, old_len, new_len, flags, new_addr);
}

int md__sys_munmap(void *addr, size_t len)
{
	return (int)raw()(SYS_munmap, addr, len);
}

int md__sys_ioctl(int fd, unsigned long request, void *arg)
{
	/* The engine's userfaultfd calls: never the VMM's (preload.c's
	 * syscall() hands SYS_ioctl to its ioctl). */
	return (int)raw()(SYS_ioctl, fd, request, arg);
}

int md__thread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int err = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -err;
}

int md__sys_madvise(void *addr, size_t len, int advice)
{
	return (int)raw()(SYS_madvise, addr, len, advice);
}

int md__sys_mprotect(void *addr, size_t len, int prot)
{
	return (int)raw()(SYS_mprotect, addr, len, prot);
}

int md__sys_mlock2(const void *addr, size_t len, unsigned flags)
{
	return (int)raw()(SYS_mlock2, addr, len, flags);
}

pid_t md__sys_gettid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* The files of /proc/self the agent reads, opened at the first open that
 * worked, for after a chroot (md__proc_open). Files, never the directory:
 * a descriptor of a directory outside the new root is a way out of it.
 * Checked by process (a child's would show its parent's) and identity
 * (a VMM may close the number and put another file there). */
static const char *const proc_kept_names[] = { "maps", "smaps", "pagemap", "statm" };
#define PROC_KEPT_N (sizeof(proc_kept_names) / sizeof(proc_kept_names[0]))
static struct {
	pthread_mutex_t lock;
	int set;
	pid_t pid;
	int fd[PROC_KEPT_N];
	dev_t dev[PROC_KEPT_N];
	ino_t ino[PROC_KEPT_N];
} proc_kept = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* A forked child keeps its parent's descriptors until it execs: closed,
 * and its own taken at its first open. */
static void proc_kept_child(void)
{
	for (size_t i = 0; i < PROC_KEPT_N; i++)
		if (proc_kept.set && proc_kept.fd[i] >= 0)
			close(proc_kept.fd[i]);
	proc_kept.lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	__atomic_store_n(&proc_kept.set, 0, __ATOMIC_RELEASE);
}

static void proc_keep(void)
{
	static int at_fork;
	pthread_mutex_lock(&proc_kept.lock);
	if (!at_fork)
		at_fork = pthread_atfork(NULL, NULL, proc_kept_child) == 0;
	if (!proc_kept.set) {
		proc_kept.pid = getpid();
		for (size_t i = 0; i < PROC_KEPT_N; i++) {
			char path[32];
			struct stat st;
			snprintf(path, sizeof(path), "/proc/self/%s", proc_kept_names[i]);
			proc_kept.fd[i] = open(path, O_RDONLY | O_CLOEXEC);
			if (proc_kept.fd[i] >= 0 && fstat(proc_kept.fd[i], &st) == 0) {
				proc_kept.dev[i] = st.st_dev;
				proc_kept.ino[i] = st.st_ino;
			} else if (proc_kept.fd[i] >= 0) {
				close(proc_kept.fd[i]);
				proc_kept.fd[i] = -1;
			}
		}
		__atomic_store_n(&proc_kept.set, 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&proc_kept.lock);
}

/* A descriptor of the kept file name (its own, sharing the kept one's
 * offset: read it with pread), or -1. */
static int proc_reopen(const char *name)
{
	int fd = -1;
	pthread_mutex_lock(&proc_kept.lock);
	for (size_t i = 0; i < PROC_KEPT_N && proc_kept.set && proc_kept.pid == getpid(); i++) {
		struct stat st;
		if (strcmp(name, proc_kept_names[i]) == 0 && proc_kept.fd[i] >= 0 &&
		    fstat(proc_kept.fd[i], &st) == 0 && st.st_dev == proc_kept.dev[i] &&
		    st.st_ino == proc_kept.ino[i])
			fd = fcntl(proc_kept.fd[i], F_DUPFD_CLOEXEC, 0);
	}
	pthread_mutex_unlock(&proc_kept.lock);
	return fd;
}

int md__same_file(int fd, dev_t dev, ino_t ino)
{
	struct stat st;
	return fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

void md__close_if_same(int fd, dev_t dev, ino_t ino)
{
	if (md__same_file(fd, dev, ino))
		close(fd);
}

int md__fd_note(int fd, dev_t *dev, ino_t *ino)
{
	struct stat st;
	if (fd < 0)
		return -EBADF;
	if (fstat(fd, &st) != 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	*dev = st.st_dev;
	*ino = st.st_ino;
	return 0;
}

int md__proc_open(const char *name, int flags)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/%s", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC | flags);
	if (fd >= 0) {
		if (!__atomic_load_n(&proc_kept.set, __ATOMIC_ACQUIRE))
			proc_keep();
		return fd;
	}
	/* No /proc where we are now (the VMM chrooted, as QEMU's -chroot
	 * does, after its RAM was set up). */
	int err = errno;
	fd = flags ? -1 : proc_reopen(name);
	if (fd < 0)
		errno = err;
	return fd;
}

uint64_t md__count_vmas(void)
{
	char buf[65536];
	uint64_t lines = 0;
	int fd = md__proc_open("maps", 0);
	if (fd < 0)
		return 0;
	/* pread, at offsets of our own: the descriptor may share its offset
	 * with another thread's (md__proc_open after a chroot). */
	for (off_t at = 0;;) {
		ssize_t n = md__sys_pread(fd, buf, sizeof(buf), at);	/* not the interposed one */
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			lines = 0;	/* a part is no count */
		if (n <= 0)
			break;
		at += n;
		for (char *p = buf; (p = memchr(p, '\n', (size_t)(buf + n - p))); p++)
			lines++;
	}
	close(fd);
	return lines;
}

void md__vmas_add(struct md__vmas *v, uint64_t n)
{
	/* adds first: a count that read it before this add's est moved has
	 * it counted twice at worst, never missed (md__vmas_count). */
	__atomic_add_fetch(&v->adds, n, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&v->est, n, __ATOMIC_SEQ_CST);
}

uint64_t md__vmas_estimate(const struct md__vmas *v)
{
	return __atomic_load_n(&v->est, __ATOMIC_SEQ_CST);
}

static uint64_t monotonic_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int md__vmas_count_due(const struct md__vmas *v)
{
	return monotonic_ns() - __atomic_load_n(&v->counted_ns, __ATOMIC_RELAXED) >= 1000000000ull;
}

uint64_t md__vmas_count(struct md__vmas *v)
{
	__atomic_store_n(&v->counted_ns, monotonic_ns(), __ATOMIC_RELAXED);
	__atomic_add_fetch(&v->counts, 1, __ATOMIC_RELAXED);
	uint64_t before = __atomic_load_n(&v->adds, __ATOMIC_SEQ_CST);
	uint64_t n = md__count_vmas();
	if (!n)
		return 0;
	/* The count and the adds since it began; an add whose est moved
	 * after our read of it fails the exchange, and we take it in. */
	uint64_t est = __atomic_load_n(&v->est, __ATOMIC_SEQ_CST);
	for (;;) {
		uint64_t want = n + (__atomic_load_n(&v->adds, __ATOMIC_SEQ_CST) - before);
		if (__atomic_compare_exchange_n(&v->est, &est, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			return n;
	}
}

/* Calls line(arg, text) for each line of a file of /proc/self, in order.
 * 0, or -errno if the file cannot be read. */
static int proc_lines(const char *name, void (*line)(void *arg, char *text), void *arg)
{
	char buf[65536];
	size_t have = 0;
	int err = 0;
	int fd = md__proc_open(name, 0);
	if (fd < 0)
		return -errno;
	for (off_t at = 0;;) {	/* pread: see md__count_vmas */
		ssize_t n = md__sys_pread(fd, buf + have, sizeof(buf) - 1 - have, at);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = -errno;
			break;
		}
		at += n;
		have += (size_t)n;
		buf[have] = 0;
		char *p = buf, *nl;
		/* At the end, a last line may come without a newline. */
		while ((nl = memchr(p, '\n', (size_t)(buf + have - p))) || (n == 0 && *p)) {
			if (nl)
				*nl = 0;
			line(arg, p);
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

struct maps_line {
	void (*line)(void *arg, uintptr_t lo, uintptr_t hi, const char *perms);
	void *arg;
};

static void maps_line(void *arg, char *text)
{
	struct maps_line *m = arg;
	unsigned long lo, hi;
	char perms[5];
	if (sscanf(text, "%lx-%lx %4s", &lo, &hi, perms) == 3)
		m->line(m->arg, lo, hi, perms);
}

/* Calls line(arg, lo, hi, perms) for each mapping in /proc/self/maps, in
 * address order. 0, or -errno if the file cannot be read. */
static int maps_each(void (*line)(void *arg, uintptr_t lo, uintptr_t hi, const char *perms), void *arg)
{
	struct maps_line m = { line, arg };
	return proc_lines("maps", maps_line, &m);
}

struct file_ids {
	uintptr_t a, end;
	struct md__file_map *v;
	size_t n, cap;
	int err;
};

/* A mapping's path in maps or smaps names a memdedup pool (its memfd). */
static int is_pool_path(const char *path)
{
	return strncmp(path, "/memfd:memdedup-pool", 20) == 0 && (path[20] == 0 || path[20] == ' ' ||
								   path[20] == '\n');
}

/* Adds the mapping [lo, hi) of a file, clipped to the range asked. */
static void file_id_add(struct file_ids *f, uintptr_t lo, uintptr_t hi, dev_t dev, ino_t ino, int pool)
{
	if (f->n == f->cap) {
		size_t cap = f->cap ? 2 * f->cap : 8;
		struct md__file_map *g = realloc(f->v, cap * sizeof(*g));
		if (!g) {
			f->err = -ENOMEM;
			return;
		}
		f->v = g;
		f->cap = cap;
	}
	f->v[f->n++] = (struct md__file_map){ lo > f->a ? lo : f->a, hi < f->end ? hi : f->end, dev, ino, pool };
}

static void file_id_line(void *arg, char *text)
{
	struct file_ids *f = arg;
	unsigned long lo, hi, off, ino;
	unsigned maj, mnr;
	int path = 0;
	if (f->err || sscanf(text, "%lx-%lx %*4s %lx %x:%x %lu %n", &lo, &hi, &off, &maj, &mnr, &ino, &path) < 6 ||
	    !ino || lo >= f->end || hi <= f->a)
		return;
	file_id_add(f, lo, hi, makedev(maj, mnr), (ino_t)ino, path && is_pool_path(text + path));
}

static int file_maps_queried(struct file_ids *f);

int md__range_file_maps(uintptr_t a, uintptr_t end, struct md__file_map **v, size_t *n)
{
	struct file_ids f = { a, end, NULL, 0, 0, 0 };
	int err = file_maps_queried(&f);
	if (err) {	/* no query (-ENOTTY), or it failed: every mapping's line */
		free(f.v);
		f = (struct file_ids){ a, end, NULL, 0, 0, 0 };
		err = proc_lines("maps", file_id_line, &f);
	}
	err = err ? err : f.err;
	if (err) {
		free(f.v);
		return err;
	}
	*v = f.v;
	*n = f.n;
	return 0;
}

/* Appends r to the growing array *v of *n (room for *cap): 0, or -ENOMEM
 * with the array as it was. */
static int run_append(struct md__run **v, size_t *n, size_t *cap, struct md__run r)
{
	if (*n == *cap) {
		size_t c = *cap ? 2 * *cap : 16;
		struct md__run *grown = realloc(*v, c * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		*v = grown;
		*cap = c;
	}
	(*v)[(*n)++] = r;
	return 0;
}

struct mappings_in {
	uintptr_t a, end;
	struct md__run *v;
	size_t n, cap;
	int err;
};

static void mapping_in(void *arg, uintptr_t lo, uintptr_t hi, const char *perms)
{
	struct mappings_in *m = arg;
	(void)perms;
	if (!m->err && lo < m->end && hi > m->a)
		m->err = run_append(&m->v, &m->n, &m->cap,
				    (struct md__run){ lo > m->a ? lo : m->a, hi < m->end ? hi : m->end, 1 });
}

int md__range_mappings(uintptr_t a, uintptr_t end, void (*fn)(void *arg, uintptr_t lo, uintptr_t hi), void *arg)
{
	/* All read first: fn may change mappings (a registration merges or
	 * splits them), which would shift the text still to be read. */
	struct mappings_in m = { a, end, NULL, 0, 0, 0 };
	int err = maps_each(mapping_in, &m);
	err = err ? err : m.err;
	for (size_t i = 0; i < m.n && !err; i++)
		fn(arg, m.v[i].lo, m.v[i].hi);
	free(m.v);
	return err;
}

struct file_vmas {
	uintptr_t a, end;
	struct md__vma cur;	/* the mapping whose lines are being read; lo == hi: none */
	struct md__vma *vma;
	size_t n, cap;
	int err;
};

/* smaps: a header line per mapping ("lo-hi perms offset dev inode path"),
 * then its fields, VmFlags last. */
static void file_vma_line(void *arg, char *text)
{
	struct file_vmas *f = arg;
	unsigned long lo, hi, off, inode;
	unsigned maj, mnr;
	char perms[5];
	int path = 0;
	if (sscanf(text, "%lx-%lx %4s %lx %x:%x %lu %n", &lo, &hi, perms, &off, &maj, &mnr, &inode, &path) >= 7) {
		f->cur = (struct md__vma){ 0 };
		/* Private, of a file (an inode: anonymous memory has none). */
		if (inode && perms[3] == 'p' && lo < f->end && hi > f->a) {
			f->cur.lo = lo > f->a ? lo : f->a;
			f->cur.hi = hi < f->end ? hi : f->end;
			f->cur.dev = makedev(maj, mnr);
			f->cur.ino = (ino_t)inode;
			f->cur.pool = path && is_pool_path(text + path);
			f->cur.prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
				      (perms[2] == 'x' ? PROT_EXEC : 0);
		}
		return;
	}
	if (strncmp(text, "VmFlags:", 8) != 0 || f->cur.lo == f->cur.hi)
		return;
	char *save = NULL;
	for (char *t = strtok_r(text + 8, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
		f->cur.advice |= strcmp(t, "dc") == 0 ? MD_ADV_DONTFORK : 0;
		f->cur.advice |= strcmp(t, "dd") == 0 ? MD_ADV_DONTDUMP : 0;
		f->cur.advice |= strcmp(t, "hg") == 0 ? MD_ADV_HUGEPAGE : 0;
		f->cur.mergeable |= strcmp(t, "mg") == 0;
		f->cur.locked |= strcmp(t, "lo") == 0 ? 1 : strcmp(t, "lf") == 0 ? 2 : 0;
	}
	if (f->n == f->cap) {
		size_t cap = f->cap ? 2 * f->cap : 8;
		struct md__vma *grown = realloc(f->vma, cap * sizeof(*grown));
		if (!grown) {
			f->err = -ENOMEM;
			return;
		}
		f->vma = grown;
		f->cap = cap;
	}
	f->vma[f->n++] = f->cur;
	f->cur.hi = f->cur.lo;
}

int md__range_file_vmas(uintptr_t a, uintptr_t end, struct md__vma **vmas, size_t *n)
{
	struct file_vmas f = { .a = a, .end = end };
	int err = proc_lines("smaps", file_vma_line, &f);
	err = err ? err : f.err;
	if (err) {
		free(f.vma);
		return err;
	}
	*vmas = f.vma;
	*n = f.n;
	return 0;
}

/* The kernel's query of one mapping (Linux 6.11, uapi linux/fs.h), spelled
 * out for the older headers this builds with. */
struct md__procmap_query {
	uint64_t size, query_flags, query_addr;
	uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
	uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
	uint64_t vma_name_addr, build_id_addr;
};
#define MD_PROCMAP_QUERY _IOWR('f', 17, struct md__procmap_query)
#define MD_PROCMAP_VMA_SHARED 0x08	/* as a filter: VM_MAYSHARE, maps' "s" */
#define MD_PROCMAP_COVERING_OR_NEXT 0x10
#define MD_PROCMAP_FILE_BACKED 0x20

/* 1 if a mapping with all of the query's filter flags overlaps [a, end), 0
 * if none does, -ENOTTY on a kernel without the query, or -errno. Asked
 * inside the VMM's calls, which return with errno as they found it: none
 * from a on is ENOENT. */
static int first_vma_from(uintptr_t a, uintptr_t end, uint64_t filter)
{
	int saved = errno;
	/* Opened each time: a descriptor kept would show a forked child its
	 * parent's mappings. */
	int fd = md__proc_open("maps", 0);
	if (fd < 0) {
		int err = errno;
		errno = saved;
		return -err;
	}
	struct md__procmap_query q = {
		.size = sizeof(q),
		.query_flags = MD_PROCMAP_COVERING_OR_NEXT | filter,
		.query_addr = a,
	};
	int r = md__sys_ioctl(fd, MD_PROCMAP_QUERY, &q);
	int err = errno;
	close(fd);
	errno = saved;
	if (r != 0)
		return err == ENOENT ? 0 : -err;	/* ENOENT: none from a on */
	return q.vma_start < end;
}

/* md__range_file_maps's mappings through that query, one file mapping
 * at a time from f->a on: where maps' text is every mapping of the
 * process, read whole for a range of a page (a discard of one page of
 * guest RAM: 100 ms at 50,000 mappings). -ENOTTY without it (before
 * Linux 6.11). Asked inside the VMM's calls, as first_vma_from. */
static int file_maps_queried(struct file_ids *f)
{
	int saved = errno, err = 0;
	int fd = md__proc_open("maps", 0);
	if (fd < 0) {
		err = -errno;
		errno = saved;
		return err;
	}
	char name[PATH_MAX];	/* a shorter buffer than the path fails the query */
	for (uintptr_t at = f->a; at < f->end && !f->err;) {
		struct md__procmap_query q = {
			.size = sizeof(q),
			.query_flags = MD_PROCMAP_COVERING_OR_NEXT | MD_PROCMAP_FILE_BACKED,
			.query_addr = at,
			.vma_name_addr = (uintptr_t)name,
			.vma_name_size = sizeof(name),
		};
		if (md__sys_ioctl(fd, MD_PROCMAP_QUERY, &q) != 0) {
			err = errno == ENOENT ? 0 : -errno;	/* ENOENT: none from at on */
			break;
		}
		if (q.vma_start >= f->end || q.vma_end <= at)
			break;
		if (q.inode)	/* as maps' lines: those without one are left out */
			file_id_add(f, q.vma_start, q.vma_end, makedev(q.dev_major, q.dev_minor), (ino_t)q.inode,
				    q.vma_name_size && is_pool_path(name));
		at = q.vma_end;
	}
	close(fd);
	errno = saved;
	return err;
}

int md__range_no_file_vmas(uintptr_t a, uintptr_t end)
{
	int r = first_vma_from(a, end, MD_PROCMAP_FILE_BACKED);
	return r < 0 ? r : !r;
}

struct vmflags_vmas {
	uintptr_t a, end;
	int in, found;
	unsigned all;	/* the advice every mapping has */
	int seen;
	uintptr_t lo, hi;	/* the mapping whose lines are read, clipped */
	int record;		/* md__range_userfault_runs: where MD_VMF_USERFAULT, in uffd */
	int read_exec;		/* the process's personality has READ_IMPLIES_EXEC */
	struct md__run *uffd;
	size_t nuffd, uffd_cap;
	int err;
};

/* smaps: the VmFlags of the mappings overlapping [a, end). */
static void vmflags_line(void *arg, char *text)
{
	struct vmflags_vmas *h = arg;
	unsigned long lo, hi;
	char perms[5];
	if (sscanf(text, "%lx-%lx %4s", &lo, &hi, perms) == 3 && strchr(text, ' ') > strchr(text, '-')) {
		h->in = lo < h->end && hi > h->a;
		h->lo = lo > h->a ? lo : h->a;
		h->hi = hi < h->end ? hi : h->end;
		/* Executable too under READ_IMPLIES_EXEC (setarch -X), where
		 * the mappings put there are as well. */
		if (h->in && (perms[0] != 'r' || perms[1] != 'w' || (perms[2] != '-' && !h->read_exec)))
			h->found |= MD_VMF_NOT_RW;
		return;
	}
	if (!h->in || strncmp(text, "VmFlags:", 8) != 0)
		return;
	unsigned v = 0;
	int uffd = 0;
	char *save;
	for (char *f = strtok_r(text + 8, " \n", &save); f; f = strtok_r(NULL, " \n", &save)) {
		if (strcmp(f, "ht") == 0)
			h->found |= MD_VMF_HUGETLB;
		else if (strcmp(f, "lo") == 0)
			h->found |= MD_VMF_LOCKED;
		else if (strcmp(f, "wf") == 0)
			h->found |= MD_VMF_WIPEONFORK;
		else if (strcmp(f, "dc") == 0)
			v |= MD_VMF_DONTFORK;
		else if (strcmp(f, "dd") == 0)
			v |= MD_VMF_DONTDUMP;
		else if (strcmp(f, "hg") == 0)
			v |= MD_VMF_HUGEPAGE;
		else if (strcmp(f, "um") == 0 || strcmp(f, "uw") == 0 || strcmp(f, "ui") == 0)
			uffd = 1;
	}
	h->all = h->seen ? h->all & v : v;
	h->seen = 1;
	if (!uffd)
		return;
	h->found |= MD_VMF_USERFAULT;
	if (h->record && !h->err)
		h->err = run_append(&h->uffd, &h->nuffd, &h->uffd_cap, (struct md__run){ h->lo, h->hi, 1 });
}

int md__range_vmflags(uintptr_t a, size_t len)
{
	int persona = personality(0xffffffff);
	struct vmflags_vmas h = { .a = a, .end = a + len, .read_exec = persona != -1 && (persona & READ_IMPLIES_EXEC) };
	int err = proc_lines("smaps", vmflags_line, &h);
	return err ? err : h.found | (int)h.all;
}

int md__range_userfault_runs(uintptr_t a, uintptr_t end, struct md__run **runs, size_t *n)
{
	struct vmflags_vmas h = { .a = a, .end = end, .record = 1 };
	int err = proc_lines("smaps", vmflags_line, &h);
	err = err ? err : h.err;
	if (err) {
		free(h.uffd);
		return err;
	}
	*runs = h.uffd;
	*n = h.nuffd;
	return 0;
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
	/* The kernel's query first: a merge's freeze asks this of a mapping it
	 * must register, and reading all of /proc/self/maps, thousands of
	 * mappings once merges split guest RAM, was a tenth of the scanner's
	 * CPU. */
	int r = first_vma_from(a, a + len, MD_PROCMAP_VMA_SHARED);
	if (r != -ENOTTY)
		return r;
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
	if (!r->err)
		r->err = run_append(&r->run, &r->n, &r->cap, (struct md__run){ lo, hi, mapped });
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

ssize_t md__read_text(const char *path, char *buf, size_t size)
{
	buf[0] = '\0';
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, size - 1);
	int err = n < 0 ? -errno : 0;
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return err ? err : n;
}

int md__resident_pages(int statm_fd, struct md__resident *out)
{
	char buf[256];
	unsigned long size, resident, shared;
	ssize_t n = md__sys_pread(statm_fd, buf, sizeof(buf) - 1, 0);	/* not the interposed one */
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

void md__coredump_file_pages(void)
{
	static int done;
	if (__atomic_load_n(&done, __ATOMIC_RELAXED) || __atomic_exchange_n(&done, 1, __ATOMIC_RELAXED))
		return;
	MD_NOCANCEL_SCOPE();
	int saved = errno;	/* inside the VMM's calls */
	char buf[32];
	unsigned long v = 0;
	int err = 0, fd = md__proc_open("coredump_filter", O_RDWR);
	ssize_t n = fd < 0 ? -1 : md__sys_pread(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0) {
		err = n == 0 ? EIO : errno;
	} else {
		buf[n] = 0;
		v = strtoul(buf, NULL, 16);
		int len = snprintf(buf, sizeof(buf), "%#lx", v | MD_COREDUMP_FILE_PRIVATE);
		if (!(v & MD_COREDUMP_FILE_PRIVATE) && md__sys_pwrite(fd, buf, (size_t)len, 0) != len)
			err = errno;
	}
	if (fd >= 0)
		close(fd);
	if (err)
		md__log_once(145, "cannot add file-backed private mappings to core dumps (/proc/self/coredump_filter"
			     " %#lx: %s): guest RAM shared with images or merged is missing from a core dump",
			     v, strerror(err));
	errno = saved;
}

void md__advise_new_mapping(void *addr, size_t len, unsigned advice, int kernel_ksm)
{
	if (!(advice & MD_ADV_DONTDUMP))
		md__coredump_file_pages();
	if (kernel_ksm)
		md__sys_madvise(addr, len, MADV_MERGEABLE);
	if (advice & MD_ADV_DONTFORK)
		md__sys_madvise(addr, len, MADV_DONTFORK);
	if (advice & MD_ADV_DONTDUMP)
		md__sys_madvise(addr, len, MADV_DONTDUMP);
}

__thread unsigned md__in_agent;

void md__mount_unescape(char *s)
{
	char *d = s;
	for (; *s; s++, d++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*d = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*d = *s;
		}
	}
	*d = '\0';
}

int md__options_have(const char *names, const char *opts)
{
	for (const char *c = names; *c;) {
		size_t n = strcspn(c, ",");
		int found = 0;
		for (const char *o = opts; *o && !found;) {
			size_t m = strcspn(o, ",");
			found = m == n && strncmp(o, c, n) == 0;
			o += m + (o[m] == ',');
		}
		if (!found)
			return 0;
		c += n + (c[n] == ',');
	}
	return 1;
}

/* One mountinfo line, split in place: -1 if not a mount of the hierarchy
 * of ctrls, 0 if one that does not show path or shows less of it than one
 * found before (a root of best characters or more), 1 if it shows more:
 * its mount point and root copied out. */
static int cgroup_mount_line(char *line, const char *ctrls, const char *path, size_t best, char *at,
			     size_t at_size, char *shows, size_t shows_size)
{
	char *f[5] = { 0 }, *save, *dash = strstr(line, " - ");
	if (!dash)
		return -1;
	*dash = '\0';
	char *type = strtok_r(dash + 3, " ", &save), *src = type ? strtok_r(NULL, " ", &save) : NULL;
	char *opts = src ? strtok_r(NULL, " ", &save) : NULL;
	if (!opts || strcmp(type, *ctrls ? "cgroup" : "cgroup2") != 0 || !md__options_have(ctrls, opts))
		return -1;
	f[0] = strtok_r(line, " ", &save);
	for (int i = 1; i < 5 && f[i - 1]; i++)
		f[i] = strtok_r(NULL, " ", &save);
	if (!f[0] || !f[4])
		return -1;
	char *root = f[3], *point = f[4];
	md__mount_unescape(root);
	md__mount_unescape(point);
	size_t n = strlen(root);
	if (strcmp(root, "/") != 0 && (strncmp(path, root, n) != 0 || (path[n] != '/' && path[n] != '\0')))
		return 0;
	if (n >= best || n >= shows_size || strlen(point) >= at_size)
		return 0;
	strcpy(shows, root);
	strcpy(at, point);
	return 1;
}

int md__cgroup_mount(const char *mountinfo, const char *ctrls, const char *path, char *at, size_t at_size,
		     char *shows, size_t shows_size)
{
	char buf[8192];
	int fd = open(mountinfo, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int err = -ENOENT;
	size_t have = 0;
	off_t off = 0;
	int skip = 0;	/* in a line longer than the buffer: not a cgroup's */
	size_t best = SIZE_MAX;	/* the length of the root shown by the mount found */
	for (;;) {
		ssize_t n = md__sys_pread(fd, buf + have, sizeof(buf) - 1 - have, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += n;
		have += (size_t)n;
		buf[have] = '\0';
		char *line = buf, *nl;
		while ((nl = strchr(line, '\n'))) {
			*nl = '\0';
			int found = skip ? -1 :
				    cgroup_mount_line(line, ctrls, path, best, at, at_size, shows, shows_size);
			if (found > 0) {
				err = 0;
				best = strlen(shows);
				if (best == 1)
					goto close_fd;	/* all of it */
			} else if (found == 0 && err) {
				err = -ESRCH;
			}
			skip = 0;
			line = nl + 1;
		}
		have -= (size_t)(line - buf);
		if (have == sizeof(buf) - 1) {
			have = 0;
			skip = 1;
		}
		memmove(buf, line, have);
	}
close_fd:
	close(fd);
	return err;
}
