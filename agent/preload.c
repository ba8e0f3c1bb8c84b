/*
 * preload.c - the agent inside an unmodified VMM, through LD_PRELOAD.
 *
 * The VMM's calls to the C library are interposed: madvise(MADV_MERGEABLE)
 * registers guest RAM (and creates the agent on first use, so a process that
 * never asks for merging costs nothing), MADV_UNMERGEABLE, munmap, mremap and
 * MAP_FIXED mmaps forget it, discards (madvise, and process_madvise on its
 * own memory; a guard's zap too) are made to yield zeroes, and the
 * pread/preadv family goes through md_agent_pread()/md_agent_preadv(),
 * the pwrite/pwritev family
 * through md_agent_pwrite()/md_agent_pwritev().
 * libaio's io_setup, liburing's submit calls, io_uring through syscall(2),
 * the DMA-mapping ioctls, libibverbs' memory registrations, zero-copy
 * sends and libraries loaded with RTLD_DEEPBIND or dlmopen are watched for
 * I/O the agent does not see (below). MADV_COLLAPSE keeps off the pool's
 * pages; MADV_WIPEONFORK and mseal make guest RAM anonymous first.
 * Options come from the environment (set by `memdedup run`):
 *   MEMDEDUP_KERNEL_KSM=0|1  pass MADV_MERGEABLE on to kernel KSM (default 1)
 *   MEMDEDUP_MAX_VMAS=N      the mapping budget
 *   MEMDEDUP_POPULATE=1      fault shared pages in at read time
 *   MEMDEDUP_NO_SHARING=1    count only
 *   MEMDEDUP_SHARE_MIN_PAGES=N  copy reads of fewer whole pages (1..4096)
 *   MEMDEDUP_IMAGE_IDLE_S=N  let an image go N s after nothing maps it (1..86400)
 *   MEMDEDUP_SCAN=1          run the content scanner; MEMDEDUP_PAGES_TO_SCAN,
 *                            MEMDEDUP_SLEEP_MS, MEMDEDUP_CPU_PERCENT,
 *                            MEMDEDUP_SCAN_ORDER=linear|random tune it;
 *                            MEMDEDUP_HINTS=0 scans without hints;
 *                            MEMDEDUP_DOMAIN the sharing domain
 *   MEMDEDUP_DISABLE=1       do nothing at all
 *   MEMDEDUP_RUN_DIR, MEMDEDUP_LOG
 * Yes/no variables take 1/on/yes/true or 0/off/no/false (any case), numbers
 * digits only; a bad value is said in the log once (when the agent starts)
 * and the default applies: a setting never makes the VMM fail.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <scsi/sg.h>
#include <linux/userfaultfd.h>
#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "agent_internal.h"
#include "log.h"
#include "protocol.h"
#include "memdedup.h"
#include "policies.h"
#include "sys.h"

#define EXPORT __attribute__((visibility("default")))

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25	/* Linux 6.1's, which older headers lack */
#endif

static md_agent *agent;
static int agent_failed;
/* Another copy of this library (another build or install of the agent,
 * or a VMM with one of its own) comes first in the process's scope: its
 * interposers are the ones called, and this one does nothing (two agents
 * would each freeze and map the same guest RAM). */
static int shadowed, copies_looked;
static const char *io_unseen;	/* I/O the agent does not see, before it exists (below) */
static pthread_mutex_t agent_lock = PTHREAD_MUTEX_INITIALIZER;

/* A yes/no variable: 1/on/yes/true or 0/off/no/false, in any case; unset
 * or empty: the default. Anything else is said in the log and the default
 * applies (MEMDEDUP_DISABLE=false must not disable the agent). */
static int env_flag(const char *name, int dflt)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return dflt;
	int on = md__parse_bool(v);
	if (on < 0) {
		md__log("%s='%s' is not one of 1, on, yes, true, 0, off, no, false: using the default (%s)",
			name, v, dflt ? "on" : "off");
		return dflt;
	}
	return on;
}

/* A numeric variable in lo..hi, else 0: the option's default (a bad value
 * is said in the log: `memdedup run` checks them, but not everyone starts
 * the VMM through it). Digits only, the same parser as `memdedup run`'s. */
static unsigned env_uint(const char *name, unsigned lo, unsigned hi)
{
	const char *v = getenv(name);
	unsigned n;
	if (!v || !*v)
		return 0;
	if (md__parse_uint(v, lo, hi, &n)) {
		md__log("%s='%s' is not a number from %u to %u: using the default", name, v, lo, hi);
		return 0;
	}
	return n;
}

static void find_libc_syscall(int own);

/* Threads in agent_get's locked part, counted from before the lock to
 * after it is let go: a child forked meanwhile may have the lock held. */
static int agent_creating;
/* A child forked from a process with an agent, said in its log once. */
static int forked_plain;

static void child_after_fork(void)
{
	/* The child of a process with an agent (or making one) has none of
	 * its threads, and agent_lock may be held by one: it runs plain. A
	 * child forked before any agent existed (QEMU's -daemonize forks
	 * before it maps RAM) makes its own. */
	if (agent || __atomic_load_n(&agent_creating, __ATOMIC_SEQ_CST)) {
		agent = NULL;
		agent_failed = 1;
		forked_plain = 1;
	}
}

/* A child made without the atfork handlers (syscall(SYS_fork), _Fork,
 * clone without CLONE_VM): what they would have done. */
static void plain_child(void)
{
	child_after_fork();
	md__policy_child();
}

static void before_fork(void);
static void after_fork_parent(void);
static void after_fork_child(void);

static void find_first_copy(void);
static int is_shadowed(void);

__attribute__((constructor)) static void preload_init(void)
{
	find_first_copy();
	pthread_atfork(NULL, NULL, child_after_fork);
	md__policy_atfork();
	/* Registered last, so that its prepare handler runs first: before
	 * the policies' own takes their lock, which a thread holding the
	 * agent's may be waiting for. Its parent's handler runs last, once
	 * that lock is let go. */
	pthread_atfork(before_fork, after_fork_parent, after_fork_child);
	find_libc_syscall(1);
}

/* The agent's options from the environment, each read (and a bad one said)
 * once, when the agent is created. */
static void env_options(md_agent_options *o)
{
	o->kernel_ksm = env_flag("MEMDEDUP_KERNEL_KSM", 1);
	/* The mapping budget: vm.max_map_count is an int. */
	o->max_vmas = env_uint("MEMDEDUP_MAX_VMAS", 1, INT32_MAX);
	if (env_flag("MEMDEDUP_POPULATE", 0))
		o->flags |= MD_OPT_POPULATE;
	if (env_flag("MEMDEDUP_NO_SHARING", 0))
		o->flags |= MD_OPT_NO_SHARING;
	if (env_flag("MEMDEDUP_SCAN", 0))
		o->flags |= MD_OPT_SCAN;
	const char *v = getenv("MEMDEDUP_SCAN_ORDER");
	if (v && strcasecmp(v, "random") == 0)
		o->flags |= MD_OPT_SCAN_RANDOM;
	else if (v && strcasecmp(v, "linear") == 0)	/* `memdedup run --scan-order`: the VMM's own */
		o->flags |= MD_OPT_SCAN_LINEAR;
	else if (v && *v)
		md__log("MEMDEDUP_SCAN_ORDER='%s' is neither linear nor random: using the default", v);
	o->pages_to_scan = env_uint("MEMDEDUP_PAGES_TO_SCAN", 1, MD_PAGES_TO_SCAN_MAX);
	o->sleep_ms = env_uint("MEMDEDUP_SLEEP_MS", 1, MD_SLEEP_MS_MAX);
	o->cpu_percent = env_uint("MEMDEDUP_CPU_PERCENT", 1, MD_CPU_PERCENT_MAX);
	if (!env_flag("MEMDEDUP_HINTS", 1))
		o->flags |= MD_OPT_NO_HINTS;
	else if ((v = getenv("MEMDEDUP_HINTS")) && md__parse_bool(v) == 1)	/* `--hints=on`: the VMM's own */
		o->flags |= MD_OPT_HINTS;
	o->domain = getenv("MEMDEDUP_DOMAIN");
	o->daemon_socket = getenv("MEMDEDUP_SOCKET");
	o->share_min_pages = env_uint("MEMDEDUP_SHARE_MIN_PAGES", 1, MD_SHARE_MIN_PAGES_MAX);
	o->image_idle_s = env_uint("MEMDEDUP_IMAGE_IDLE_S", 1, MD_IMAGE_IDLE_S_MAX);
}

static md_agent *agent_get(void)
{
	MD_NOCANCEL_SCOPE();	/* agent_lock across the log's open */
	if (md__in_agent || is_shadowed())
		return NULL;
	md_agent *a = __atomic_load_n(&agent, __ATOMIC_ACQUIRE);
	if (a || __atomic_load_n(&agent_failed, __ATOMIC_RELAXED)) {
		if (!a && __atomic_exchange_n(&forked_plain, 0, __ATOMIC_RELAXED))
			md__log("a child forked from a process with memdedup's agent runs without it");
		return a;
	}
	/* The VMM's call that made it sees its own errno, not the start's
	 * (a run directory there already, EEXIST). */
	int caller_errno = errno;
	__atomic_add_fetch(&agent_creating, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&agent_lock);
	if (!agent && !agent_failed) {
		md_agent_options o = { 0 };
		/* Disabled: nothing at all, not even a log file. */
		const char *dis = getenv("MEMDEDUP_DISABLE");
		int disabled = dis && *dis && md__parse_bool(dis) == 1;
		if (!disabled) {
			/* Before a bad variable is said. */
			const char *log = getenv("MEMDEDUP_LOG");
			int lerr = md__log_open(log);
			if (lerr)
				md__log("cannot open MEMDEDUP_LOG='%s' (%s): logging to stderr", log, strerror(-lerr));
			disabled = env_flag("MEMDEDUP_DISABLE", 0);
		}
		if (disabled) {
			agent_failed = 1;
		} else {
			Dl_info other;
			void *next = dlsym(RTLD_NEXT, "md_agent_new");
			if (next && dladdr(next, &other))
				md__log("another copy of memdedup's agent is loaded after this one (%s): only "
					"this one's calls run", other.dli_fname);
			env_options(&o);
			int err = md_agent_new(&a, &o);
			if (err) {
				md__log("agent not started (%s): the process runs without memdedup", strerror(-err));
				agent_failed = 1;
			} else {
				/* Told before others can use it; and, sequentially
				 * consistent with unseen_io(), after it is
				 * published: one of the two sees the other's store. */
				const char *what = __atomic_load_n(&io_unseen, __ATOMIC_SEQ_CST);
				if (what)
					md_agent_io_unseen(a, what);
				__atomic_store_n(&agent, a, __ATOMIC_SEQ_CST);
				what = __atomic_load_n(&io_unseen, __ATOMIC_SEQ_CST);
				if (what)
					md_agent_io_unseen(a, what);
			}
		}
	}
	a = agent;
	pthread_mutex_unlock(&agent_lock);
	__atomic_sub_fetch(&agent_creating, 1, __ATOMIC_SEQ_CST);
	errno = caller_errno;
	return a;
}

/* The agent, or NULL on a thread inside it or of ours (md__in_agent): its
 * calls go to the kernel plainly. */
static md_agent *agent_peek(void)
{
	return md__in_agent ? NULL : __atomic_load_n(&agent, __ATOMIC_ACQUIRE);
}

/* What the prepare handler holds across the fork, and of which agent (the
 * child's handler finds `agent` gone: child_after_fork runs first). On the
 * forking thread, which runs all three handlers. */
static __thread int fork_held;
static __thread md_agent *fork_agent;

/* The prepare handler of fork() (and of the C library's daemon()): the
 * advice given to guest RAM reaches the mappings reads made since the
 * agent's last flush, and pages shared from the pool or an image in guest
 * RAM the child copies (not MADV_DONTFORK) become private copies of ours,
 * before the child copies them (md__regions_before_fork). Best effort:
 * an agent's lock held for 0.1 s (a second where RAM goes to the child),
 * or a fork that runs no handler (_Fork, syscall(SYS_fork), clone: they
 * may be called from a signal handler, where no lock may be waited for)
 * leaves the advice to the next flush, within a second, and the child
 * with shared pages that may change under it. */
static void before_fork(void)
{
	md_agent *a = agent_peek();
	fork_held = a ? md__regions_before_fork(a) : 0;
	fork_agent = a;
}

static void after_fork_parent(void)
{
	if (fork_held)
		md__regions_after_fork(fork_agent, fork_held, 0);
	fork_held = 0;
}

static void after_fork_child(void)
{
	if (fork_held)
		md__regions_after_fork(fork_agent, fork_held, 1);
	fork_held = 0;
}

static size_t page_len(size_t len)
{
	return (len + MD_PAGE_SIZE - 1) & ~(size_t)(MD_PAGE_SIZE - 1);
}

/* The pages [addr, addr+len) touches, none of the agent's (ours.c): 1,
 * and the call made plainly then ends with plain_end(), so a registration
 * there waits for it. */
static int plain_begin(md_agent *a, const void *addr, size_t len, unsigned *token)
{
	uintptr_t s = (uintptr_t)addr & ~(uintptr_t)(MD_PAGE_SIZE - 1), e = (uintptr_t)addr + len;
	if (!a || len == 0 || e < s || e > UINTPTR_MAX - MD_PAGE_SIZE)
		return 0;
	e = (e + MD_PAGE_SIZE - 1) & ~(uintptr_t)(MD_PAGE_SIZE - 1);
	return md__ours_begin(&a->ours, s, e, token);
}

static void plain_end(md_agent *a, int plain, unsigned token)
{
	if (plain)
		md__ours_end(&a->ours, token);
}

static unsigned advice_bit(int advice)
{
	switch (advice) {
	case MADV_DONTFORK: return MD_ADV_DONTFORK;
	case MADV_DONTDUMP: return MD_ADV_DONTDUMP;
	case MADV_HUGEPAGE: return MD_ADV_HUGEPAGE;
	case MADV_DOFORK: return MD_ADV_DONTFORK | MD_ADV_UNDO;
	case MADV_DODUMP: return MD_ADV_DONTDUMP | MD_ADV_UNDO;
	case MADV_NOHUGEPAGE: return MD_ADV_HUGEPAGE | MD_ADV_UNDO;
	default: return 0;
	}
}

EXPORT int madvise(void *addr, size_t len, int advice)
{
	md_agent *a = NULL;
	size_t plen = page_len(len);

	if ((uintptr_t)addr % MD_PAGE_SIZE || plen == 0)
		return md__sys_madvise(addr, len, advice);
	switch (advice) {
	case MADV_MERGEABLE: {
		int saved = errno;	/* a call that succeeds leaves it */
		if ((uintptr_t)addr + plen < (uintptr_t)addr)
			return md__sys_madvise(addr, len, advice);	/* the kernel's EINVAL */
		a = agent_get();
		int err = a ? md_agent_register(a, addr, plen, 0) : 0;
		if (err && err != -ENOMEM)
			md__log_once(50, "cannot register guest RAM: it is not shared");
		/* Without kernel KSM (or with our own scanner) the advice is
		 * ours alone; a range with a hole fails it, as the kernel's
		 * (what is mapped is registered). */
		if (!a || a->kernel_ksm) {
			errno = saved;
			return md__sys_madvise(addr, len, advice);
		}
		if (err == -ENOMEM) {
			errno = ENOMEM;
			return -1;
		}
		errno = saved;
		return 0;
	}
	case MADV_UNMERGEABLE: {
		/* As kernel KSM's: shared pages that cannot be made private
		 * (memory short) fail the advice, and stay merged. */
		int saved = errno;	/* a call that succeeds leaves it */
		int err = (a = agent_peek()) ? md_agent_unregister(a, addr, plen) : 0;
		if (err) {
			errno = -err;
			return -1;
		}
		errno = saved;
		return md__sys_madvise(addr, len, advice);
	}
	case MADV_REMOVE:
		/* Only for shared writable mappings, which guest RAM the
		 * agent shares is not (registration refuses them, a mapping
		 * put over it is forgotten): the kernel refuses it there, and
		 * discarding first would have zeroed pages it leaves alone. */
		return md__sys_madvise(addr, len, advice);
	case MADV_COLLAPSE: {
		/* Not over the pool's or an image's pages (md__agent_collapse);
		 * memory none of ours goes plainly. */
		unsigned token;
		int saved = errno, err, plain = 0;
		/* plain_end only for a plain_begin that was made: a range that
		 * wraps made none (an end without its begin waited for ever). */
		if (!(a = agent_peek()) || (uintptr_t)addr + plen < (uintptr_t)addr ||
		    (plain = plain_begin(a, addr, plen, &token))) {
			err = md__sys_madvise(addr, len, advice) != 0 ? -errno : 0;
			plain_end(a, plain, token);
		} else {
			err = md__agent_collapse(a, (uintptr_t)addr, (uintptr_t)addr + plen);
		}
		errno = err ? -err : saved;
		return err ? -1 : 0;
	}
	case MADV_WIPEONFORK: {
		/* Only for private anonymous memory: the pool's mappings (and
		 * merges to come) would fail it, and a child would read pool
		 * pages, not zeroes. Made anonymous and given up first. */
		unsigned token;
		int plain = 0;
		if (!(a = agent_peek()) || (uintptr_t)addr + plen < (uintptr_t)addr ||
		    (plain = plain_begin(a, addr, plen, &token))) {
			int r = md__sys_madvise(addr, len, advice);
			plain_end(a, plain, token);
			return r;
		}
		int saved = errno;
		md__agent_give_up_anon(a, (uintptr_t)addr, (uintptr_t)addr + plen, "asks MADV_WIPEONFORK of");
		errno = saved;
		return md__sys_madvise(addr, len, advice);
	}
	case MADV_DONTNEED:
	case MADV_DONTNEED_LOCKED:
	case MADV_FREE:
	case MADV_GUARD_INSTALL: {
		/* Shared pages not replaced would read back as their file's
		 * content, not zeroes: then the discard fails as a whole. A
		 * guard's zap is a discard too: once MADV_GUARD_REMOVE took it
		 * away (which needs nothing of ours), the range is read again. */
		if (!(a = agent_peek()))
			return md__sys_madvise(addr, len, advice);
		int saved = errno;
		int err = md_agent_madvise_discard(a, addr, len, advice);
		/* Then given up: a read there shared at read time would map
		 * the image over the guard (the kernel's read fails EFAULT). */
		if (!err && advice == MADV_GUARD_INSTALL && (uintptr_t)addr + plen > (uintptr_t)addr)
			md__agent_give_up_anon(a, (uintptr_t)addr, (uintptr_t)addr + plen, "installs guard pages in");
		errno = err ? -err : saved;
		return err ? -1 : 0;
	}
	default: {
		unsigned token;
		int plain = 0, r;
		if (advice_bit(advice) && (a = agent_peek()) && !(plain = plain_begin(a, addr, plen, &token)))
			md_agent_advise(a, addr, plen, advice_bit(advice));
		r = md__sys_madvise(addr, len, advice);
		plain_end(a, plain, token);
		return r;
	}
	}
}

static long (*libc_syscall)(long, ...);

/* Silent: every process started with both copies would say it, asking for
 * merging or not (the first copy says so as its agent starts). */
static void find_first_copy(void)
{
	Dl_info first, mine;
	void *f = dlsym(RTLD_DEFAULT, "md_agent_new");
	if (f && dladdr(f, &first) && dladdr((void *)find_first_copy, &mine) &&
	    first.dli_fbase != mine.dli_fbase)
		__atomic_store_n(&shadowed, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&copies_looked, 1, __ATOMIC_RELEASE);
}

/* Looked at when first needed too: an older copy loaded first may call
 * our syscall() (its "next" one) before our constructor runs. */
static int is_shadowed(void)
{
	if (!__atomic_load_n(&copies_looked, __ATOMIC_ACQUIRE))
		find_first_copy();
	return __atomic_load_n(&shadowed, __ATOMIC_RELAXED);
}

/* From our constructor (own, 1), libc's own: the next library's may be an
 * older copy of this one, which hands SYS_mmap back to our mmap, and that
 * to its syscall again. Before it (a library loaded before ours calling
 * mmap from its own start: AddressSanitizer's, whose dlopen interceptor
 * it would then wait for in itself), the next one, by dlsym alone. */
static void find_libc_syscall(int own)
{
	if (!own && __atomic_load_n(&libc_syscall, __ATOMIC_ACQUIRE))
		return;
	long (*call)(long, ...) = NULL;
	void *c = own ? dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD) : NULL;
	if (c) {
		call = (long (*)(long, ...))dlsym(c, "syscall");
		dlclose(c);
	}
	if (!call)
		call = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
	__atomic_store_n(&libc_syscall, call, __ATOMIC_RELEASE);
	__atomic_store_n(&md__libc_syscall, call, __ATOMIC_RELEASE);	/* the agent's raw calls */
}

/* The C library's syscall(2), or NULL with errno ENOSYS. */
static long (*libc(void))(long, ...)
{
	find_libc_syscall(0);
	long (*call)(long, ...) = __atomic_load_n(&libc_syscall, __ATOMIC_ACQUIRE);
	if (!call)
		errno = ENOSYS;
	return call;
}

/* The kernel's call, not ours: syscall(2) inside this library is ours. */
static long libc_call(long nr, long a0, long a1, long a2, long a3)
{
	long (*call)(long, ...) = libc();
	return call ? call(nr, a0, a1, a2, a3) : -1;
}

#ifndef SYS_process_madvise
#define SYS_process_madvise 440	/* the same on every architecture (Linux 5.10) */
#endif
/* The kernel's MAX_RW_COUNT: what one call's iovecs add up to at most. */
#define MAX_RW_COUNT ((size_t)INT_MAX & ~(size_t)(MD_PAGE_SIZE - 1))

/* The advice madvise() above does something of its own for. */
static int advice_ours(int advice)
{
	switch (advice) {
	case MADV_MERGEABLE:
	case MADV_UNMERGEABLE:
	case MADV_DONTNEED:
	case MADV_DONTNEED_LOCKED:
	case MADV_FREE:
	case MADV_GUARD_INSTALL:
	case MADV_COLLAPSE:
	case MADV_WIPEONFORK:
		return 1;
	default:
		return advice_bit(advice) != 0;
	}
}

/* n iovecs at src into dst: 0 or -EFAULT, as the kernel's copy would. */
static int iovecs_in(struct iovec *dst, const struct iovec *src, size_t n)
{
	int err = md__copy_in(dst, src, n * sizeof(*dst));
	if (err == -EFAULT)
		return err;
	if (err)	/* the kernel would not say (a seccomp filter): read them */
		memcpy(dst, src, n * sizeof(*dst));
	return 0;
}

/* process_madvise(2) on this process's own memory (Linux 6.13 takes any
 * advice there): each range goes through madvise() above, as the same
 * call would (a discard of merged pages must read zeroes, not the pool's
 * page, which another page's content may have replaced). Another
 * process's memory, and advice madvise() leaves alone, go to the kernel. */
ssize_t process_madvise(int pidfd, const struct iovec *iov, size_t n, int advice, unsigned int flags);
EXPORT ssize_t process_madvise(int pidfd, const struct iovec *iov, size_t n, int advice, unsigned int flags)
{
	long (*call)(long, ...) = libc();
	if (!call)
		return -1;
	int saved = errno;	/* a call that succeeds leaves it */
	/* What the kernel refuses before it looks at a range is its to say:
	 * flags, too many iovecs, a pidfd it does not take. Whether the pidfd
	 * is ours is its answer too (the same memory, not the same pid: a
	 * thread's pidfd, PIDFD_SELF*), to a call with no range: one with a
	 * discard is refused on another process's memory, and on this one's
	 * before Linux 6.13, as the call itself then is. */
	if (md__in_agent || flags || n == 0 || n > IOV_MAX || !advice_ours(advice) ||
	    call(SYS_process_madvise, pidfd, NULL, 0, MADV_DONTNEED, 0) != 0) {
		errno = saved;
		return call(SYS_process_madvise, pidfd, iov, n, advice, flags);
	}
	/* The kernel's checks of the iovecs, before any range is advised:
	 * readable, no negative length, then each range inside the address
	 * space; their lengths cut to MAX_RW_COUNT in all. */
	struct iovec v[64];
	size_t total = 0, done = 0;
	int err = 0;
	for (size_t i = 0; i < n; i += 64) {
		size_t k = n - i < 64 ? n - i : 64;
		if (iovecs_in(v, iov + i, k)) {
			errno = EFAULT;
			return -1;
		}
		for (size_t j = 0; j < k; j++) {
			if ((ssize_t)v[j].iov_len < 0) {
				errno = EINVAL;
				return -1;
			}
			total += v[j].iov_len < MAX_RW_COUNT - total ? v[j].iov_len : MAX_RW_COUNT - total;
		}
		if (!err && md__kernel_takes(v, (int)k))
			err = EFAULT;
	}
	if (err) {
		errno = err;
		return -1;
	}
	/* As the kernel's loop: the first range, then those not empty, until
	 * the total is advised; it stops at the first error and says how many
	 * bytes were advised, if any. */
	for (size_t i = 0; i < n && done < total && !err; i += 64) {
		size_t k = n - i < 64 ? n - i : 64;
		if (iovecs_in(v, iov + i, k)) {
			err = EFAULT;	/* unmapped by another thread since */
			break;
		}
		for (size_t j = 0; j < k && done < total; j++) {
			size_t len = v[j].iov_len < total - done ? v[j].iov_len : total - done;
			if (len == 0 && i + j > 0)
				continue;
			if (madvise(v[j].iov_base, len, advice) != 0) {
				err = errno;
				break;
			}
			done += len;
		}
	}
	errno = done || !err ? saved : err;
	return done || !err ? (ssize_t)done : -1;
}

/* glibc's posix_madvise makes the system call itself, not through
 * madvise(): any advice but POSIX_MADV_DONTNEED (which it ignores, the
 * POSIX meaning not being the kernel's discard) reaches the kernel,
 * MADV_DONTNEED_LOCKED among them, whose zap of a merged page shows its
 * pool slot again. So it goes through madvise() above, and as glibc's it
 * returns the error number and leaves errno. */
EXPORT int posix_madvise(void *addr, size_t len, int advice)
{
	if (advice == POSIX_MADV_DONTNEED)
		return 0;
	int saved = errno;
	int err = madvise(addr, len, advice) != 0 ? errno : 0;
	errno = saved;
	return err;
}

#ifndef SYS_mseal
#define SYS_mseal 462	/* Linux 6.10, the same on every architecture */
#endif

/* mseal(2) (Linux 6.10; glibc 2.41's function, or syscall(2)): a sealed
 * range can no longer be unmapped, remapped or mapped over, which every
 * merge does, and a discard of a private file mapping there (a merged
 * page's) fails with EPERM where anonymous memory reads zeroes. Guest RAM
 * there is made anonymous and given up first; flags the kernel refuses
 * change nothing. */
static void seal_first(void *addr, size_t len, unsigned long flags)
{
	uintptr_t s = (uintptr_t)addr, e = s + page_len(len);
	md_agent *a = agent_peek();
	if (!a || flags || s % MD_PAGE_SIZE || e <= s)
		return;
	int saved = errno;
	md__agent_give_up_anon(a, s, e, "seals (mseal)");
	errno = saved;
}

int mseal(void *addr, size_t len, unsigned long flags);
EXPORT int mseal(void *addr, size_t len, unsigned long flags)
{
	seal_first(addr, len, flags);
	return (int)libc_call(SYS_mseal, (long)addr, (long)len, (long)flags, 0);
}

/* Locked memory: a private mapping made or locked there is filled at once
 * by write faults (copies), so guest RAM is given up first; a failure to
 * make shared pages private fails the call (mlock's EAGAIN, "could not be
 * locked"; mlockall's ENOMEM). */
static int lock_first(const void *addr, size_t len, int all)
{
	md_agent *a = agent_peek();
	/* The pages the kernel locks: from addr's page to the end's, rounded
	 * up (an end inside a page would be no page boundary at all). */
	uintptr_t s = (uintptr_t)addr & ~(uintptr_t)(MD_PAGE_SIZE - 1);
	uintptr_t e = (uintptr_t)addr + len;
	if (!a || (!all && (len == 0 || e < s || e > UINTPTR_MAX - MD_PAGE_SIZE)))
		return 0;
	e = (e + MD_PAGE_SIZE - 1) & ~(uintptr_t)(MD_PAGE_SIZE - 1);
	int saved = errno;	/* a call that succeeds leaves it */
	int err = md__agent_lock(a, s, all ? 0 : e, all);
	errno = !err ? saved : err == -ENOMEM && !all ? EAGAIN : -err;	/* mlockall has no EAGAIN */
	return err;
}

EXPORT int mlock(const void *addr, size_t len)
{
	unsigned token;
	md_agent *a = agent_peek();
	int plain = plain_begin(a, addr, len, &token);
	int r = !plain && lock_first(addr, len, 0) ? -1 : (int)libc_call(SYS_mlock, (long)addr, (long)len, 0, 0);
	plain_end(a, plain, token);
	return r;
}

EXPORT int mlock2(const void *addr, size_t len, unsigned int flags)
{
	unsigned token;
	md_agent *a = agent_peek();
	int plain = plain_begin(a, addr, len, &token);
	/* Flags the kernel refuses change nothing here either. */
	int r = !plain && !(flags & ~(unsigned)MLOCK_ONFAULT) && lock_first(addr, len, 0) ? -1 :
		(int)libc_call(SYS_mlock2, (long)addr, (long)len, flags, 0);
	plain_end(a, plain, token);
	return r;
}

EXPORT int mlockall(int flags)
{
	/* MCL_CURRENT locks what is mapped; MCL_FUTURE what is mapped later,
	 * the engine's own mappings over guest RAM included. What is given
	 * up stays so if the call fails; MCL_FUTURE is known to hold only
	 * once it succeeded (MCL_CURRENT alone ends it, as the kernel's). */
	int valid = flags && !(flags & ~(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)) && flags != MCL_ONFAULT;
	if (valid && lock_first(NULL, 0, 1))
		return -1;
	int r = (int)libc_call(SYS_mlockall, flags, 0, 0, 0);
	md_agent *a = agent_peek();
	if (r == 0 && a) {
		int saved = errno;
		md__agent_lock_future(a, (flags & MCL_FUTURE) != 0);
		errno = saved;
	}
	return r;
}

#ifndef PROT_SEM
#define PROT_SEM 0x8	/* linux/mman.h's, which the C library's header leaves out */
#endif

/* A protection other than read-write (or a protection key) on guest RAM:
 * the mappings put over it are read-write, so it is given up first. */
static int protect_first(const void *addr, size_t len, int prot, int pkey)
{
	md_agent *a = agent_peek();
	uintptr_t s = (uintptr_t)addr, e = s + page_len(len);
	if (!a || s % MD_PAGE_SIZE || e <= s || (prot == (PROT_READ | PROT_WRITE) && pkey <= 0))
		return 0;
	/* What the kernel refuses changes nothing here either: a protection
	 * it does not know, a key this process was not given. */
	if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM))
		return 0;	/* and PROT_GROWS*: guest RAM never grows */
	if (pkey > 0) {
		void *p = md__sys_mmap(NULL, MD_PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int saved = errno;
		long ok = p == MAP_FAILED ||
			  libc_call(SYS_pkey_mprotect, (long)p, MD_PAGE_SIZE, PROT_READ, pkey) == 0;
		if (p != MAP_FAILED)
			md__sys_munmap(p, MD_PAGE_SIZE);
		errno = saved;
		if (!ok)
			return 0;
	}
	int saved = errno;	/* a call that succeeds leaves it */
	int err = md__agent_protect(a, s, e);
	errno = err ? -err : saved;
	return err;
}

EXPORT int mprotect(void *addr, size_t len, int prot)
{
	unsigned token;
	md_agent *a = agent_peek();
	int plain = plain_begin(a, addr, len, &token);
	int r = !plain && protect_first(addr, len, prot, -1) ? -1 :
		(int)libc_call(SYS_mprotect, (long)addr, (long)len, prot, 0);
	plain_end(a, plain, token);
	return r;
}

int pkey_mprotect(void *addr, size_t len, int prot, int pkey);
EXPORT int pkey_mprotect(void *addr, size_t len, int prot, int pkey)
{
	unsigned token;
	md_agent *a = agent_peek();
	int plain = plain_begin(a, addr, len, &token);
	int r = !plain && protect_first(addr, len, prot, pkey) ? -1 :
		(int)libc_call(SYS_pkey_mprotect, (long)addr, (long)len, prot, pkey);
	plain_end(a, plain, token);
	return r;
}

EXPORT int munlockall(void)
{
	int r = (int)libc_call(SYS_munlockall, 0, 0, 0, 0);
	md_agent *a = agent_peek();
	if (r == 0 && a) {
		int saved = errno;
		md__agent_lock_future(a, 0);
		errno = saved;
	}
	return r;
}

/* NUMA policies (QEMU's host-nodes=, through libnuma's mbind, which makes
 * the system call through syscall(2)): followed, for the mappings the agent
 * makes over guest RAM (policies.h). */
long mbind(void *addr, unsigned long len, int mode, const unsigned long *nodes, unsigned long maxnode,
	   unsigned flags);	/* libnuma's numaif.h: declared here, no header needed to build */
EXPORT long mbind(void *addr, unsigned long len, int mode, const unsigned long *nodes,
		  unsigned long maxnode, unsigned flags)
{
	long (*call)(long, ...) = libc();
	if (!call)
		return -1;
	md_agent *a = agent_peek();
	if (a)
		return md__agent_mbind(a, call, addr, len, mode, nodes, maxnode, flags);
	return md__policy_mbind(call, addr, len, mode, nodes, maxnode, flags, NULL, 0);
}

/* RAM unmapped or replaced goes through md__agent_unmap: the scanner, which
 * reads guest pages, is kept out while it goes, and it is forgotten once
 * gone. A call that fails leaves it registered, with its pool references
 * (forgotten first, their slots could be reused under pages still mapped). */
struct vm_call {
	long nr;		/* SYS_munmap, SYS_mmap or SYS_mremap */
	long arg[6];		/* unused ones are 0 */
	long ret;
};

static int vm_call_run(void *p)
{
	struct vm_call *c = p;
	long (*call)(long, ...) = libc();	/* not ours: it would route the call back here */
	c->ret = call ? call(c->nr, c->arg[0], c->arg[1], c->arg[2], c->arg[3], c->arg[4], c->arg[5]) : -1;
	return c->ret == -1 ? -errno : 0;
}

/* The call on [addr, addr+len) through the agent; errno as the call left it. */
static long vm_call(struct vm_call *c, void *addr, size_t len)
{
	/* A failed munmap unmaps nothing; a failed mmap or mremap may have. */
	int keep_mapped = c->nr == SYS_munmap;
	md_agent *a = agent_peek();
	if (!a || !page_len(len) || (uintptr_t)addr % MD_PAGE_SIZE) {
		vm_call_run(c);
		if (c->ret != -1 && c->nr != SYS_mremap && (uintptr_t)addr % MD_PAGE_SIZE == 0) {
			int saved = errno;
			md__policy_forget((uintptr_t)addr, page_len(len));
			errno = saved;
		}
		return c->ret;
	}
	int caller_errno = errno;
	int r = md__agent_unmap(a, addr, page_len(len), vm_call_run, c, keep_mapped);
	if (r)
		errno = -r;
	else if (c->ret != -1)
		errno = caller_errno;	/* a success leaves it, as the kernel's */
	if (c->ret != -1 && c->nr != SYS_mremap) {
		int saved = errno;
		md__policy_forget((uintptr_t)addr, page_len(len));	/* a new mapping has none */
		errno = saved;
	}
	return c->ret;
}

EXPORT int munmap(void *addr, size_t len)
{
	struct vm_call c = { SYS_munmap, { (long)addr, (long)len }, 0 };
	return (int)vm_call(&c, addr, len);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (!(flags & MAP_FIXED))
		return md__sys_mmap(addr, len, prot, flags, fd, off);
	struct vm_call c = { SYS_mmap, { (long)addr, (long)len, prot, flags, fd, (long)off }, 0 };
	return (void *)vm_call(&c, addr, len);
}
EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL;
	md_agent *a = agent_peek();
	int caller_errno = errno;	/* a call that succeeds leaves it */
	/* The fifth argument for MREMAP_FIXED, and the kernel's hint for
	 * MREMAP_DONTUNMAP (glibc passes it whenever either is set). */
	if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	/* Flags, lengths or addresses the kernel refuses before it looks at
	 * any mapping: refused as they are, guest RAM left shared (it was
	 * all made private for them, and refused ENOMEM, not EINVAL, when
	 * memory was short). Flags unknown here go the long way: a move the
	 * kernel takes must never skip the agent. */
	if (((flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) && !(flags & MREMAP_MAYMOVE)) ||
	    ((flags & MREMAP_DONTUNMAP) && page_len(old_len) != page_len(new_len)) ||
	    (uintptr_t)old % MD_PAGE_SIZE || ((flags & MREMAP_FIXED) && (uintptr_t)new_addr % MD_PAGE_SIZE))
		return md__sys_mremap(old, old_len, new_len, flags, new_addr);
	/* A call that moves nothing, or that the kernel refuses before it
	 * looks (no length), changes nothing here either. */
	if (!(flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) &&
	    (!new_len || page_len(new_len) == page_len(old_len)))
		return md__sys_mremap(old, old_len, new_len, flags, NULL);
	/* A shrink in place moves nothing: an unmap of the part cut off, and
	 * what stays stays shared (made private, all of it, as for a move,
	 * it was refused when memory was short, which the kernel never does). */
	if (!(flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) && (uintptr_t)old % MD_PAGE_SIZE == 0 &&
	    page_len(new_len) && page_len(new_len) < page_len(old_len)) {
		struct vm_call c = { SYS_mremap, { (long)old, (long)old_len, (long)new_len, flags, 0 }, 0 };
		void *cut = (char *)old + page_len(new_len);
		size_t cut_len = page_len(old_len) - page_len(new_len);
		vm_call(&c, cut, cut_len);
		if ((void *)c.ret != MAP_FAILED) {
			int saved = errno;
			md__policy_forget((uintptr_t)cut, cut_len);
			errno = saved;
		}
		return (void *)c.ret;
	}
	/* Pages that move are no longer where the agent tracks them: make them
	 * private first, so a lease break cannot miss them. What was
	 * registered is asked again if the kernel refuses the move. */
	struct md__registered *was = NULL;
	size_t nwas = 0;
	/* An allocator's memory (none of ours, see ours.c): no lock. Not
	 * across a move onto a place of ours (MREMAP_FIXED): what was there
	 * goes through the lock, which a plain call must never wait for. */
	md_agent *peeked = a;
	unsigned token;
	int plain = (uintptr_t)old % MD_PAGE_SIZE == 0 && plain_begin(a, old, old_len, &token);
	if (plain)
		a = NULL;
	if (plain && (flags & MREMAP_FIXED)) {
		plain_end(peeked, plain, token);
		plain = 0;
	}
	if (a && page_len(old_len) && (uintptr_t)old % MD_PAGE_SIZE == 0) {
		if (md__agent_registered(a, (uintptr_t)old, (uintptr_t)old + page_len(old_len), &was, &nwas))
			md__log_once(96, "no memory to note guest RAM's registration before an mremap: "
				     "a move the kernel refuses leaves it unregistered");
		/* If that fails the memory must not move: the agent would
		 * go on tracking, and the scanner merging, what comes to lie
		 * where it was. */
		int err = md_agent_unregister(a, old, page_len(old_len));
		if (err) {
			md__log_once(65, "cannot make guest RAM private before it moves (%s): mremap refused",
				     strerror(-err));
			free(was);
			errno = -err;
			return MAP_FAILED;
		}
	}
	struct vm_call c = { SYS_mremap, { (long)old, (long)old_len, (long)new_len, flags, (long)new_addr }, 0 };
	if (flags & MREMAP_FIXED)	/* what was at new_addr goes */
		vm_call(&c, new_addr, new_len);
	else
		vm_call_run(&c);
	if ((void *)c.ret != MAP_FAILED && (uintptr_t)old % MD_PAGE_SIZE == 0) {
		int saved = caller_errno;
		/* The policy goes with the mapping; a part left behind by a
		 * shrink is unmapped. */
		size_t kept = page_len(new_len) < page_len(old_len) ? page_len(new_len) : page_len(old_len);
		if ((void *)c.ret != old)
			md__policy_move((uintptr_t)old, kept, (uintptr_t)c.ret);
		if (kept < page_len(old_len))
			md__policy_forget((uintptr_t)old + kept, page_len(old_len) - kept);
		if (a)
			md__agent_moved(a, old, page_len(old_len), (void *)c.ret, page_len(new_len),
					(flags & MREMAP_DONTUNMAP) != 0);
		/* The mapping keeps the VMM's advice (MADV_MERGEABLE) where
		 * it went, and so does the agent: registered again there, as
		 * much as was kept. */
		for (size_t i = 0; i < nwas; i++) {
			uintptr_t lo = was[i].lo - (uintptr_t)old + (uintptr_t)c.ret;
			uintptr_t hi = was[i].hi - (uintptr_t)old + (uintptr_t)c.ret;
			if (hi > (uintptr_t)c.ret + kept)
				hi = (uintptr_t)c.ret + kept;
			if (lo < hi)
				md_agent_register(a, (void *)lo, hi - lo, was[i].advice);
		}
		errno = saved;
	} else if (nwas) {
		int saved = errno;
		for (size_t i = 0; i < nwas; i++)
			md_agent_register(a, (void *)was[i].lo, was[i].hi - was[i].lo, was[i].advice);
		errno = saved;
	}
	free(was);
	plain_end(peeked, plain, token);
	return (void *)c.ret;
}

/* Transfers into guest RAM the agent does not see: reads submitted through
 * Linux AIO or io_uring (with O_DIRECT the device writes guest RAM by DMA,
 * behind the write-protection) and devices given guest RAM for DMA. Once
 * the VMM uses one, no page of guest RAM may be replaced any more
 * (engine/inflight.h): the agent copies reads and stops merging
 * (md_agent_io_unseen), or, when it does not exist yet (QEMU opens its
 * drives before its RAM), starts so. */
static void unseen_io(const char *what)
{
	const char *none = NULL;
	__atomic_compare_exchange_n(&io_unseen, &none, what, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	md_agent *a = __atomic_load_n(&agent, __ATOMIC_SEQ_CST);
	if (a)
		md_agent_io_unseen(a, what);
}

/* Linux AIO (QEMU's aio=native): the set-up is enough, as reads and their
 * buffers go straight to the kernel. libaio's io_setup returns -errno. */
int io_setup(int maxevents, void *ctxp);
EXPORT int io_setup(int maxevents, void *ctxp)
{
	int saved = errno;	/* libaio's leaves it as it was */
	unseen_io("set up Linux AIO (aio=native)");
	long r = syscall(SYS_io_setup, maxevents, ctxp);
	int err = r < 0 ? errno : 0;
	errno = saved;
	return -err;
}

/* Zero-copy sends (MSG_ZEROCOPY on an SO_ZEROCOPY socket: QEMU's multifd
 * migration with zero-copy-send=on) pin the pages they send until the
 * kernel has sent them, as a registered buffer does: a page read-time
 * sharing mapped from an image pins the image's page, which a lease break
 * cannot wait for, and a merge replaces a page whose frame the socket still
 * sends. Such a send stops sharing and merging for good. Without
 * SO_ZEROCOPY the kernel ignores the flag, and so do we. */
static void zerocopy_send(int fd, int flags)
{
	int on = 0, saved = errno;
	socklen_t len = sizeof(on);
	if (!(flags & MSG_ZEROCOPY))
		return;
	/* Not a socket (the send fails), or no SO_ZEROCOPY at all (the
	 * kernel ignores the flag): nothing pinned. */
	int asked = getsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &on, &len) == 0;
	if (asked && on)
		unseen_io("sends with MSG_ZEROCOPY (zero-copy migration)");
	errno = saved;
}


/* io_uring through liburing (QEMU's aio=io_uring): not the set-up, which
 * QEMU does for every event loop, but the entries each submit call hands
 * the kernel (agent/unseen_io.c), checked before they are submitted.
 * liburing's own functions are found next in the lookup order; a caller
 * that reached ours without liburing loaded gets -ENOSYS, as liburing
 * returns -errno. */
static void *next_fn(void **slot, const char *name, const char *lib_name)
{
	void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
	if (!f) {
		f = dlsym(RTLD_NEXT, name);
		/* A library loaded by a module of its own (RTLD_LOCAL) is not
		 * in the global scope, but our symbol still shadows its. */
		void *lib = f ? NULL : dlopen(lib_name, RTLD_LAZY | RTLD_NOLOAD);
		if (lib) {
			f = dlsym(lib, name);
			dlclose(lib);
		}
		__atomic_store_n(slot, f, __ATOMIC_RELEASE);
	}
	return f;
}

/* The C library's clone(): the child runs fn on its own stack, and no
 * atfork handler runs. A child that does not share our memory (no
 * CLONE_VM) goes through clone_child, which makes it run plain first; the
 * call's record lives in this frame, which the child has a copy of. */
struct clone_call {
	int (*fn)(void *);
	void *arg;
};

static int clone_child(void *p)
{
	struct clone_call c = *(const struct clone_call *)p;
	plain_child();
	return c.fn(c.arg);
}

int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...);
/* parent_tid, tls and child_tid read whatever the flags, as the C
 * library's clone(2) does (AddressSanitizer: see syscall() below). */
EXPORT __attribute__((no_sanitize_address)) int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...)
{
	static void *next;
	int (*real)(int (*)(void *), void *, int, void *, ...) =
		(int (*)(int (*)(void *), void *, int, void *, ...))next_fn(&next, "clone", "libc.so.6");
	va_list ap;
	va_start(ap, arg);
	/* As glibc reads them: parent_tid, tls, child_tid. */
	pid_t *ptid = va_arg(ap, pid_t *);
	void *tls = va_arg(ap, void *);
	pid_t *ctid = va_arg(ap, pid_t *);
	va_end(ap);
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	if ((flags & CLONE_VM) || !fn)
		return real(fn, stack, flags, arg, ptid, tls, ctid);
	struct clone_call c = { fn, arg };
	return real(clone_child, stack, flags, &c, ptid, tls, ctid);
}

/* The C library's calls that change the process's uid (all its threads:
 * glibc's, never the bare system call; not setfsuid, a thread's own,
 * which keeps CAP_LEASE). Before a root VMM takes another uid (QEMU's
 * -runas), the leases on images that uid does not own are given back:
 * the kernel lets only a file's owner give back a lease on it, and one
 * left would hold every writer of the image for the kernel's
 * lease-break-time. */
static md_agent *uid_change(uid_t fsuid)
{
	md_agent *a = agent_peek();
	if (a)
		md__images_uid_change(a, fsuid);
	return a;
}

#define UID_CALL(name, params, args, fsuid)                                         \
	EXPORT int name params                                                      \
	{                                                                            \
		static void *next;                                                   \
		int(*fn) params = (int(*) params)next_fn(&next, #name, "libc.so.6"); \
		if (!fn) {                                                           \
			errno = ENOSYS;                                              \
			return -1;                                                   \
		}                                                                    \
		md_agent *a = uid_change(fsuid);                                     \
		int ret = fn args, err = errno;                                      \
		if (a)                                                               \
			md__images_uid_changed(a);                                   \
		errno = err;                                                         \
		return ret;                                                          \
	}
UID_CALL(setuid, (uid_t u), (u), u)
UID_CALL(seteuid, (uid_t e), (e), e)
UID_CALL(setreuid, (uid_t r, uid_t e), (r, e), e)
UID_CALL(setresuid, (uid_t r, uid_t e, uid_t s), (r, e, s), e)

/* A VMM that chroots (QEMU's -chroot, after its RAM is set up) may leave
 * /proc behind, and with it the only way to a description of our own of
 * an image to lease: one is opened now of each file it holds read-only. */
EXPORT int chroot(const char *path)
{
	static void *next;
	int (*fn)(const char *) = (int (*)(const char *))next_fn(&next, "chroot", "libc.so.6");
	if (!fn) {
		errno = ENOSYS;
		return -1;
	}
	md_agent *a = agent_peek();
	if (a)
		md__images_before_chroot(a);
	int r = fn(path), err = errno;
	if (a && (r != 0 || access("/proc/self/fd", F_OK) == 0))
		md__images_spares_drop(a);	/* no use for them */
	errno = err;
	return r;
}

/* The C library's fork without the atfork handlers (glibc 2.34). */
pid_t _Fork(void);
EXPORT pid_t _Fork(void)
{
	static void *next;
	pid_t (*fn)(void) = (pid_t (*)(void))next_fn(&next, "_Fork", "libc.so.6");
	if (!fn) {
		errno = ENOSYS;
		return -1;
	}
	pid_t pid = fn();
	if (pid == 0)
		plain_child();
	return pid;
}

/* A library loaded with RTLD_DEEPBIND looks symbols up in itself and its
 * own dependencies, the C library among them, before the preloaded ones;
 * one loaded into a namespace of its own (dlmopen) has a C library of its
 * own: either's madvise, munmap, mmap, mremap, ioctl and pread reach the
 * kernel past the agent (a discard of merged pages, a read into guest RAM
 * in flight unrecorded). So merging and sharing stop for good at such a
 * load, as for I/O the agent does not see, before the library's
 * constructors run. Pages merged before stay in the pool's mappings, where
 * that library's discard shows their pool slot again (docs/ARCHITECTURE.md,
 * known limits). A load that only looks (RTLD_NOLOAD) binds nothing anew. */
static void bypassing_load(const char *how)
{
	md__log_once(137, "the VMM loaded a library with %s: its calls to the C library go around the "
		     "agent, which stops sharing and merging; a discard there of pages merged before may "
		     "read their pool's page again", how);
	unseen_io("loaded a library whose calls to the C library it does not see (dlopen with RTLD_DEEPBIND, "
		  "or dlmopen)");
}

/* The C library's call is made last, a tail call, so that it sees its
 * caller's return address: glibc finds the calling object by it (its
 * RUNPATH, $ORIGIN, its namespace), which must be the VMM's, not ours. */
EXPORT void *dlopen(const char *file, int mode)
{
	static void *next;
	void *(*fn)(const char *, int) = (void *(*)(const char *, int))__atomic_load_n(&next, __ATOMIC_ACQUIRE);
	if (!fn)
		__atomic_store_n(&next, (void *)(fn = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen")),
				 __ATOMIC_RELEASE);
	if ((mode & RTLD_DEEPBIND) && !(mode & RTLD_NOLOAD) && !is_shadowed())
		bypassing_load("RTLD_DEEPBIND");
	return fn ? fn(file, mode) : NULL;
}

EXPORT void *dlmopen(Lmid_t lmid, const char *file, int mode)
{
	static void *next;
	void *(*fn)(Lmid_t, const char *, int) =
		(void *(*)(Lmid_t, const char *, int))__atomic_load_n(&next, __ATOMIC_ACQUIRE);
	if (!fn)
		__atomic_store_n(&next, (void *)(fn = (void *(*)(Lmid_t, const char *, int))dlsym(RTLD_NEXT,
												     "dlmopen")),
				 __ATOMIC_RELEASE);
	if ((lmid != LM_ID_BASE || (mode & RTLD_DEEPBIND)) && !(mode & RTLD_NOLOAD) && !is_shadowed())
		bypassing_load(lmid != LM_ID_BASE ? "dlmopen, in a namespace of its own" : "RTLD_DEEPBIND");
	return fn ? fn(lmid, file, mode) : NULL;
}

/* Calls the next definition of name (in lib_name), or returns missing. */
#define NEXT_OR(missing, lib_name, name, ...)							\
	do {											\
		static void *next;								\
		__typeof__(&name) fn = (__typeof__(&name))next_fn(&next, #name, lib_name);	\
		if (fn)									\
			return fn(__VA_ARGS__);						\
		errno = ENOSYS;								\
		return (missing);							\
	} while (0)
#define URING_NEXT(name, ...) NEXT_OR(-ENOSYS, "liburing.so.2", name, __VA_ARGS__)

/* A MADVISE entry's discard, made before the kernel's as madvise() makes
 * it: merged pages become anonymous zeroes (the kernel's zap alone would
 * show their pool slot again). Merging has stopped by then (unseen_io), so
 * none maps a page there before the kernel's zap runs. */
static void uring_discard(void *arg, void *addr, size_t len, int advice)
{
	/* Refused (locked copies, advice the kernel does not know): the
	 * kernel refuses the entry too, nothing to empty. */
	int err = md__agent_discard_for(arg, addr, len, advice);
	if (err && err != -EINVAL)
		md__log_once(135, "cannot empty guest RAM an io_uring MADVISE entry discards (%s): some pages "
			     "there may read their pool's or image's page again, not zeroes", strerror(-err));
}

static void uring_check(struct io_uring *ring)
{
	if (!md__uring_submits_writes(ring))
		return;
	unseen_io("submitted reads or writes through io_uring (aio=io_uring)");
	md_agent *a = agent_peek();
	if (a) {
		int saved = errno;
		md__uring_discards(ring, uring_discard, a);
		errno = saved;
	}
}

EXPORT int io_uring_submit(struct io_uring *ring)
{
	uring_check(ring);
	URING_NEXT(io_uring_submit, ring);
}

EXPORT int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr)
{
	uring_check(ring);
	URING_NEXT(io_uring_submit_and_wait, ring, wait_nr);
}

EXPORT int io_uring_submit_and_wait_timeout(struct io_uring *ring, struct io_uring_cqe **cqe,
					    unsigned wait_nr, struct __kernel_timespec *ts, sigset_t *sigmask)
{
	uring_check(ring);
	URING_NEXT(io_uring_submit_and_wait_timeout, ring, cqe, wait_nr, ts, sigmask);
}

EXPORT int io_uring_submit_and_get_events(struct io_uring *ring)
{
	uring_check(ring);
	URING_NEXT(io_uring_submit_and_get_events, ring);
}

/* Without the kernel's timeout argument these submit a timeout entry, and
 * with it whatever else is queued. */
EXPORT int io_uring_wait_cqes(struct io_uring *ring, struct io_uring_cqe **cqe, unsigned wait_nr,
			      struct __kernel_timespec *ts, sigset_t *sigmask)
{
	uring_check(ring);
	URING_NEXT(io_uring_wait_cqes, ring, cqe, wait_nr, ts, sigmask);
}

EXPORT int io_uring_wait_cqe_timeout(struct io_uring *ring, struct io_uring_cqe **cqe,
				     struct __kernel_timespec *ts)
{
	uring_check(ring);
	URING_NEXT(io_uring_wait_cqe_timeout, ring, cqe, ts);
}

/* Buffers registered with a ring are pinned for as long as they stay
 * registered: reads (READ_FIXED) would land, and writes (WRITE_FIXED) read,
 * in frames a merge had unmapped. */
static void uring_pins(void)
{
	unseen_io("registered buffers with io_uring (pinned), or memory by an operation it does not know");
}

EXPORT int io_uring_register_buffers(struct io_uring *ring, const struct iovec *iov, unsigned nr)
{
	uring_pins();
	URING_NEXT(io_uring_register_buffers, ring, iov, nr);
}

EXPORT int io_uring_register_buffers_tags(struct io_uring *ring, const struct iovec *iov,
					  const __u64 *tags, unsigned nr)
{
	uring_pins();
	URING_NEXT(io_uring_register_buffers_tags, ring, iov, tags, nr);
}

EXPORT int io_uring_register_buffers_update_tag(struct io_uring *ring, unsigned off,
						const struct iovec *iov, const __u64 *tags, unsigned nr)
{
	uring_pins();
	URING_NEXT(io_uring_register_buffers_update_tag, ring, off, iov, tags, nr);
}

EXPORT int io_uring_register(unsigned fd, unsigned opcode, const void *arg, unsigned nr_args)
{
	if (md__uring_register_pins(opcode))
		uring_pins();
	URING_NEXT(io_uring_register, fd, opcode, arg, nr_args);
}

/* The raw entry points submit entries we cannot see. */
EXPORT int io_uring_enter(unsigned fd, unsigned to_submit, unsigned min_complete, unsigned flags,
			  sigset_t *sig)
{
	if (to_submit)
		unseen_io("submitted io_uring entries it cannot see (io_uring_enter)");
	URING_NEXT(io_uring_enter, fd, to_submit, min_complete, flags, sig);
}

EXPORT int io_uring_enter2(unsigned fd, unsigned to_submit, unsigned min_complete, unsigned flags,
			   sigset_t *sig, size_t sz)
{
	if (to_submit)
		unseen_io("submitted io_uring entries it cannot see (io_uring_enter2)");
	URING_NEXT(io_uring_enter2, fd, to_submit, min_complete, flags, sig, sz);
}

/* Kernel KSM over the whole process while the scanner runs: it would merge
 * pages the scanner froze (md__scan_init turns it off). 1 if the call
 * (option, arg[0..3]) would turn it on, and so is not made: said once. */
static int merge_any_kept_off(long option, const unsigned long *arg)
{
	md_agent *a = agent_peek();
	if (option != PR_SET_MEMORY_MERGE || arg[1] || arg[2] || arg[3] || !a || !a->engine)
		return 0;
	/* What the VMM wants once the scanner goes (racy with the
	 * scanner's end on another thread: a VMM's own race). */
	a->merge_any_wanted = arg[0] != 0;
	if (!arg[0])
		return 0;
	md__log_once(64, "prctl(PR_SET_MEMORY_MERGE) not passed on to kernel KSM: content scanning is on");
	return 1;
}

/* Kernel KSM over the whole process (Linux 6.4): not while our scanner
 * merges it (agent/scan.c), as the advice is not passed on either; nor
 * through syscall(2) (below). */
EXPORT int prctl(int option, ...)
{
	unsigned long arg[4];
	va_list ap;
	va_start(ap, option);
	for (int i = 0; i < 4; i++)
		arg[i] = va_arg(ap, unsigned long);
	va_end(ap);
	if (merge_any_kept_off(option, arg))
		return 0;
	return (int)syscall(SYS_prctl, option, arg[0], arg[1], arg[2], arg[3]);
}

/* The C library's syscall(2): how VMMs without liburing reach io_uring
 * (Rust's io-uring crate, Cloud Hypervisor's block devices) and Linux AIO,
 * and how libnuma makes mbind; locking, protecting, mapping, unmapping and
 * advising memory go the way of the C library's functions above (a
 * discard of merged pages must read zeroes, an unmap must be forgotten).
 * So do the read and write calls the agent follows. Every other call
 * passes through, ours too (common/sys.c: those of these numbers go
 * around it, through md__libc_syscall). The libc's is found once, before the VMM runs
 * (preload_init). */
/* The positions of the read and write calls below are one argument. */
_Static_assert(sizeof(long) == 8 && sizeof(off_t) == 8, "a 64-bit machine");

/* Those read and write calls, through the functions below: not
 * cancellation points, as the C library's syscall(2) is none. The count
 * the kernel takes as a long and refuses past an int's: its answer, not
 * one of a narrowed call. (Flags it takes as an int, as the wrappers do.) */
static long io_syscall(long (*call)(long, ...), long nr, const long *a)
{
	MD_NOCANCEL_SCOPE();
	if (nr != SYS_pread64 && nr != SYS_pwrite64 && a[2] != (int)a[2])
		return call(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	switch (nr) {
	case SYS_pread64:
		return pread((int)a[0], (void *)a[1], (size_t)a[2], (off_t)a[3]);
	case SYS_preadv:
		return preadv((int)a[0], (const struct iovec *)a[1], (int)a[2], (off_t)a[3]);
	case SYS_preadv2:
		return preadv2((int)a[0], (const struct iovec *)a[1], (int)a[2], (off_t)a[3], (int)a[5]);
	case SYS_pwrite64:
		return pwrite((int)a[0], (const void *)a[1], (size_t)a[2], (off_t)a[3]);
	case SYS_pwritev:
		return pwritev((int)a[0], (const struct iovec *)a[1], (int)a[2], (off_t)a[3]);
	default:
		return pwritev2((int)a[0], (const struct iovec *)a[1], (int)a[2], (off_t)a[3], (int)a[5]);
	}
}

/* Six arguments read whatever the call takes, as the C library's own
 * syscall(2) does (the sixth from the caller's stack): AddressSanitizer
 * would take a call with fewer for an overflow of the caller's frame. */
EXPORT __attribute__((no_sanitize_address)) long syscall(long nr, ...)
{
	long a[6];
	va_list ap;
	va_start(ap, nr);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	long (*call)(long, ...) = libc();
	if (!call)
		return -1;
	/* A copy loaded first (an older one) calls this as its "next"
	 * syscall(): handed on to mmap() it would come back here forever. */
	if (is_shadowed())
		return call(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	switch (nr) {
	case SYS_io_setup:
		unseen_io("set up Linux AIO (io_setup)");
		break;
	case SYS_io_uring_setup: {
		/* The kernel's own thread takes a polled ring's entries: no
		 * call tells when. Read after the call: the kernel may change
		 * the flags it was given. */
		long fd = call(nr, a[0], a[1]);
		const struct io_uring_params *p = (const void *)a[1];
		if (fd >= 0 && (p->flags & IORING_SETUP_SQPOLL))
			unseen_io("set up an io_uring whose entries the kernel polls (SQPOLL)");
		return fd;
	}
	case SYS_io_uring_enter:
		/* Before the kernel takes them; entries are not judged here. */
		if ((unsigned)a[1])
			unseen_io("submitted io_uring entries through syscall(2), which it does not judge");
		break;
	case SYS_io_uring_register:
		if (md__uring_register_pins((unsigned)a[1]))
			uring_pins();
		break;
	case SYS_sendmsg:
		zerocopy_send((int)a[0], (int)a[2]);
		break;
	case SYS_sendto:
	case SYS_sendmmsg:
		zerocopy_send((int)a[0], (int)a[3]);
		break;
	case SYS_mlock:
		return mlock((const void *)a[0], (size_t)a[1]);
	case SYS_mlock2:
		return mlock2((const void *)a[0], (size_t)a[1], (unsigned)a[2]);
	case SYS_mlockall:
		return mlockall((int)a[0]);
	case SYS_munlockall:
		return munlockall();
	case SYS_mprotect:
		return mprotect((void *)a[0], (size_t)a[1], (int)a[2]);
	case SYS_madvise:	/* a discard of merged pages must read zeroes */
		return madvise((void *)a[0], (size_t)a[1], (int)a[2]);
	case SYS_process_madvise:	/* so must one through this, on our own memory */
		return process_madvise((int)a[0], (const struct iovec *)a[1], (size_t)a[2], (int)a[3],
				       (unsigned)a[4]);
	case SYS_munmap:
		return munmap((void *)a[0], (size_t)a[1]);
	case SYS_mseal:
		return mseal((void *)a[0], (size_t)a[1], (unsigned long)a[2]);
	case SYS_mmap:
		return (long)mmap((void *)a[0], (size_t)a[1], (int)a[2], (int)a[3], (int)a[4], (off_t)a[5]);
	case SYS_mremap:
		if (a[3] != (int)a[3])
			break;	/* flags the kernel refuses, as it says */
		return (long)mremap((void *)a[0], (size_t)a[1], (size_t)a[2], (int)a[3], (void *)a[4]);
	case SYS_pkey_mprotect:
		return pkey_mprotect((void *)a[0], (size_t)a[1], (int)a[2], (int)a[3]);
	case SYS_prctl:
		if (merge_any_kept_off(a[0], (const unsigned long *)&a[1]))
			return 0;
		break;
	case SYS_fork:
	case SYS_clone:
	case SYS_clone3: {
		/* A process made without the C library's fork() and its
		 * atfork handler: its child runs plain all the same. Not one
		 * that shares our memory (CLONE_VM: a thread, a vfork), whose
		 * state is ours. clone3's flags are the first of its args,
		 * read as the kernel will (a bad pointer is its EFAULT, not
		 * our fault in the caller). */
		uint64_t fl = nr == SYS_fork ? 0 : nr == SYS_clone ? (uint64_t)a[0] : CLONE_VM;
		if (nr == SYS_clone3 && (size_t)a[1] >= sizeof(uint64_t) &&
		    md__copy_in(&fl, (const void *)a[0], sizeof(fl)) != 0)
			fl = CLONE_VM;
		long r = call(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
		if (r == 0 && !(fl & CLONE_VM))
			plain_child();
		return r;
	}
	case SYS_mbind:
		return mbind((void *)a[0], (unsigned long)a[1], (int)a[2], (const unsigned long *)a[3],
			     (unsigned long)a[4], (unsigned)a[5]);
	case SYS_ioctl:	/* DMA maps, SG_IO, the VMM's userfaultfd */
		return ioctl((int)a[0], (unsigned long)a[1], (void *)a[2]);
	/* Reads shared and hinted, writes a lease break waits for, as the C
	 * library's. The position is one argument on 64-bit machines (the
	 * kernel's high half is 0), the flags after it. */
	case SYS_pread64:
	case SYS_preadv:
	case SYS_preadv2:
	case SYS_pwrite64:
	case SYS_pwritev:
	case SYS_pwritev2:
		return io_syscall(call, nr, a);
	}
	return call(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* RDMA (libibverbs, which QEMU links for RDMA migration and its pvrdma
 * device): memory registered with an adapter is pinned and written by it.
 * Declared here, so that building needs no verbs headers. */
struct ibv_pd;
struct ibv_mr;
#define VERBS "libibverbs.so.1"
#define IBV_REREG_MR_CHANGE_TRANSLATION 1	/* verbs.h's enum ibv_rereg_mr_flags */
struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);
struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova, int access);
struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova,
				unsigned int access);
int ibv_rereg_mr(struct ibv_mr *mr, int flags, struct ibv_pd *pd, void *addr, size_t length, int access);

static void rdma_pins(void)
{
	unseen_io("registered memory with an RDMA adapter (libibverbs)");
}

EXPORT struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access)
{
	rdma_pins();
	NEXT_OR(NULL, VERBS, ibv_reg_mr, pd, addr, length, access);
}

EXPORT struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova,
				      int access)
{
	rdma_pins();
	NEXT_OR(NULL, VERBS, ibv_reg_mr_iova, pd, addr, length, iova, access);
}

EXPORT struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova,
				       unsigned int access)
{
	rdma_pins();
	NEXT_OR(NULL, VERBS, ibv_reg_mr_iova2, pd, addr, length, iova, access);
}

EXPORT int ibv_rereg_mr(struct ibv_mr *mr, int flags, struct ibv_pd *pd, void *addr, size_t length,
			int access)
{
	if (flags & IBV_REREG_MR_CHANGE_TRANSLATION)	/* new memory registered */
		rdma_pins();
	NEXT_OR(-1, VERBS, ibv_rereg_mr, mr, flags, pd, addr, length, access);
}

/* Whether an SG_IO request's data buffers may lie in guest RAM: the
 * kernel pins them and the device reads or writes them (QEMU's
 * scsi-block passes the guest's buffers through), like an O_DIRECT
 * transfer nobody records. Its probes (INQUIRY at start-up) use its own
 * heap. One whose buffers cannot be told counts. */
static int sg_io_in_ram(const void *arg)
{
	uintptr_t addr[64];
	size_t len[64];
	md_agent *a = agent_peek();
	if (!a)
		return 0;	/* no guest RAM known yet */
	/* Said already, maybe by another thread still at it (making image
	 * pages private, merges not yet stopped): md_agent_io_unseen waits
	 * for that, and returns at once once done. */
	if (__atomic_load_n(&io_unseen, __ATOMIC_RELAXED))
		return 1;
	int n = md__sg_io_buffers(arg, addr, len, 64);
	for (int i = 0; i < n; i++)
		if (md__agent_ram_overlaps(a, addr[i], len[i]))
			return 1;
	return n < 0;
}

#ifndef UFFDIO_MOVE
#define UFFDIO_MOVE _IOC(_IOC_READ | _IOC_WRITE, UFFDIO, 0x05, 40)	/* Linux 6.8's struct uffdio_move */
#endif
#ifndef UFFDIO_POISON
#define UFFDIO_POISON _IOC(_IOC_READ | _IOC_WRITE, UFFDIO, 0x08, 32)	/* Linux 6.6's struct uffdio_poison */
#endif

/* The ranges a userfaultfd operation other than (un)registering acts on,
 * into r: how many (0: none of them, or an argument the kernel cannot read,
 * its EFAULT). Each works on any mapping some userfaultfd registered, the
 * scanner's included, whichever userfaultfd it is made through. */
static int uffd_op_ranges(unsigned int request, const void *arg, struct uffdio_range *r)
{
	__u64 v[3];	/* a range first, or dst, src and len */
	int moves = request == (unsigned int)UFFDIO_MOVE;
	if (!arg || (request != (unsigned int)UFFDIO_WRITEPROTECT && request != (unsigned int)UFFDIO_ZEROPAGE &&
		     request != (unsigned int)UFFDIO_COPY && request != (unsigned int)UFFDIO_CONTINUE &&
		     request != (unsigned int)UFFDIO_POISON && !moves))
		return 0;
	int copies = request == (unsigned int)UFFDIO_COPY || moves;
	int err = md__copy_in(v, arg, (copies ? 3 : 2) * sizeof(__u64));
	if (err == -EFAULT)
		return 0;
	if (err)	/* the kernel would not say (a seccomp filter): read it */
		memcpy(v, arg, (copies ? 3 : 2) * sizeof(__u64));
	if (!copies) {
		r[0] = (struct uffdio_range){ v[0], v[1] };
		return 1;
	}
	r[0] = (struct uffdio_range){ v[0], v[2] };
	r[1] = (struct uffdio_range){ v[1], v[2] };	/* MOVE takes the pages from src */
	return moves ? 2 : 1;
}

/* A device given guest RAM for DMA (VFIO's type-1 container, iommufd,
 * vhost-vdpa) pins it and writes it without faults. QEMU calls ioctl(2)
 * through the C library, KVM_RUN included: a few comparisons more each. */
EXPORT int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (md__ioctl_maps_dma(request))
		unseen_io("gave a device memory for DMA (VFIO, iommufd or vhost-vdpa)");
	if ((unsigned int)request == SG_IO && sg_io_in_ram(arg))
		unseen_io("passed SCSI commands through with buffers in guest RAM (SG_IO)");
	/* The VMM's own userfaultfd over guest RAM (the engine's calls do not
	 * come here): ours gives the range up first, and takes it back once
	 * the VMM's lets go. */
	md_agent *a;
	/* An argument that cannot be read is the kernel's EFAULT, not our
	 * SIGSEGV. */
	if ((unsigned int)request == (unsigned int)UFFDIO_REGISTER && arg && (a = agent_peek()) &&
	    md__readable(arg, sizeof(struct uffdio_register))) {
		struct uffdio_range r = ((const struct uffdio_register *)arg)->range;
		int gave = md_agent_userfault(a, (void *)(uintptr_t)r.start, (size_t)r.len);
		if (gave < 0 && gave != -EINVAL) {
			errno = -gave;	/* a hole of ours would be taken for a page to come */
			return -1;
		}
		int ret = md__sys_ioctl(fd, request, arg);
		if (ret != 0 && gave > 0) {
			int saved = errno;	/* refused: what it gave up is ours again */
			md__agent_userfault_undo(a, saved);
			errno = saved;
		}
		return ret;
	}
	/* Another userfaultfd of the VMM's acting on guest RAM the scanner's
	 * holds (it need not have registered anything): it would take off
	 * the write-protection of a page frozen for a merge, or fill a page
	 * the scanner dropped. The range is given up first, as for a
	 * registration, and stays the VMM's, whatever the call's answer, until
	 * unregistered or unmapped: the kernel's answer is then the one it
	 * gives without us. One that cannot be given up fails the call. */
	struct uffdio_range ur[2];
	int nur = (a = agent_peek()) ? uffd_op_ranges((unsigned int)request, arg, ur) : 0;
	for (int i = 0; i < nur; i++) {
		int gave = md_agent_userfault(a, (void *)(uintptr_t)ur[i].start, (size_t)ur[i].len);
		if (gave < 0 && gave != -EINVAL) {
			errno = -gave;
			return -1;
		}
		if (gave > 0)
			md__log_once(136, "a userfaultfd of the VMM's acts on guest RAM (UFFDIO_WRITEPROTECT, "
				     "_ZEROPAGE, _COPY, _CONTINUE, _POISON or _MOVE): that memory is given up first");
	}
	if ((unsigned int)request == (unsigned int)UFFDIO_UNREGISTER && arg && (a = agent_peek()) &&
	    md__readable(arg, sizeof(struct uffdio_range))) {
		struct uffdio_range r = *(const struct uffdio_range *)arg;
		int ret = md__sys_ioctl(fd, request, arg);
		if (ret == 0)
			md_agent_userfault_end(a, (void *)(uintptr_t)r.start, (size_t)r.len);
		return ret;
	}
	return md__sys_ioctl(fd, request, arg);
}

EXPORT ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
	return md_agent_pread(agent_peek(), fd, buf, len, off);
}
EXPORT ssize_t pread64(int fd, void *buf, size_t len, off_t off) __attribute__((alias("pread")));

/* A VMM built with _FORTIFY_SOURCE calls these where it knows the
 * buffer's size; one that overflows it is the C library's to abort. */
ssize_t __pread_chk(int fd, void *buf, size_t len, off_t off, size_t buflen);
EXPORT ssize_t __pread_chk(int fd, void *buf, size_t len, off_t off, size_t buflen)
{
	if (len > buflen)
		NEXT_OR(-1, "libc.so.6", __pread_chk, fd, buf, len, off, buflen);
	return md_agent_pread(agent_peek(), fd, buf, len, off);
}
EXPORT ssize_t __pread64_chk(int fd, void *buf, size_t len, off_t off, size_t buflen)
	__attribute__((alias("__pread_chk")));

EXPORT ssize_t preadv(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	/* -1 is preadv2's "at the file position"; preadv refuses it. */
	if (off < 0) {
		errno = EINVAL;
		return -1;
	}
	return md_agent_preadv(agent_peek(), fd, iov, iovcnt, off, 0);
}
EXPORT ssize_t preadv64(int fd, const struct iovec *iov, int iovcnt, off_t off)
	__attribute__((alias("preadv")));

EXPORT ssize_t preadv2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	return md_agent_preadv(agent_peek(), fd, iov, iovcnt, off, flags);
}
EXPORT ssize_t preadv64v2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
	__attribute__((alias("preadv2")));

/* The C library's sends, after a look at their flags (zerocopy_send). */
EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	zerocopy_send(fd, flags);
	NEXT_OR(-1, "libc.so.6", sendmsg, fd, msg, flags);
}

EXPORT int sendmmsg(int fd, struct mmsghdr *v, unsigned n, int flags)
{
	zerocopy_send(fd, flags);
	NEXT_OR(-1, "libc.so.6", sendmmsg, fd, v, n, flags);
}

EXPORT ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	zerocopy_send(fd, flags);
	NEXT_OR(-1, "libc.so.6", send, fd, buf, len, flags);
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen)
{
	zerocopy_send(fd, flags);
	NEXT_OR(-1, "libc.so.6", sendto, fd, buf, len, flags, to, tolen);
}

/* Writes from guest RAM, which a lease break waits for (agent/writes.c). */
EXPORT ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
	return md_agent_pwrite(agent_peek(), fd, buf, len, off);
}
EXPORT ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) __attribute__((alias("pwrite")));

EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	if (off < 0) {	/* as preadv */
		errno = EINVAL;
		return -1;
	}
	return md_agent_pwritev(agent_peek(), fd, iov, iovcnt, off, 0);
}
EXPORT ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t off)
	__attribute__((alias("pwritev")));

EXPORT ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	return md_agent_pwritev(agent_peek(), fd, iov, iovcnt, off, flags);
}
EXPORT ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
	__attribute__((alias("pwritev2")));
