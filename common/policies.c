/*
 * policies.c - the NUMA memory policies the VMM gave ranges of its memory
 * (see policies.h).
 */
#include "policies.h"

#include <errno.h>
#include <linux/mempolicy.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <linux/magic.h>

#include "log.h"
#include "memdedup.h"
#include "sys.h"

#define PAGE ((uintptr_t)MD_PAGE_SIZE)
/* More node bits than any machine has: a mask beyond is not followed. */
#define MAX_NODE_WORDS 64

struct policy {
	uintptr_t lo, hi;
	int mode;			/* with its mode flags */
	unsigned long maxnode;		/* as the VMM gave it */
	unsigned long nodes[MAX_NODE_WORDS];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct policy *v;
static size_t n, cap;		/* n read without the lock as a hint only (atomic) */
static long (*syscall_fn)(long, ...);	/* the C library's, from the first mbind */
/* VMM's mbind calls under way: a mapping made after one took effect must
 * wait for its record, not see none yet (atomic). */
static unsigned binding;

static int none(void)
{
	return !__atomic_load_n(&n, __ATOMIC_SEQ_CST) && !__atomic_load_n(&binding, __ATOMIC_SEQ_CST);
}

/* Takes [lo, hi) out of every policy, splitting one that spans it: 0, or
 * -ENOMEM when a split finds no memory (that policy is then cut at lo
 * only: less followed, never applied where it was not given). */
static int cut(uintptr_t lo, uintptr_t hi)
{
	int err = 0;
	for (size_t i = 0; i < n;) {
		struct policy *p = &v[i];
		if (p->hi <= lo || p->lo >= hi) {
			i++;
			continue;
		}
		if (p->lo < lo && p->hi > hi) {
			if (n == cap) {
				size_t c = cap ? 2 * cap : 4;
				struct policy *g = realloc(v, c * sizeof(*g));
				if (!g) {
					p->hi = lo;
					err = -ENOMEM;
					i++;
					continue;
				}
				v = g;
				cap = c;
				p = &v[i];
			}
			v[n] = *p;
			v[n].lo = hi;
			__atomic_store_n(&n, n + 1, __ATOMIC_RELEASE);
			p->hi = lo;
			i++;
			continue;
		}
		if (p->lo < lo) {
			p->hi = lo;
		} else if (p->hi > hi) {
			p->lo = hi;
		} else {
			v[i] = v[n - 1];
			__atomic_store_n(&n, n - 1, __ATOMIC_RELEASE);
			continue;
		}
		i++;
	}
	return err;
}

static int add(uintptr_t lo, uintptr_t hi, int mode, const unsigned long *nodes, unsigned long maxnode)
{
	/* The kernel reads maxnode - 1 bits of the mask (get_nodes), no
	 * more: nor may we, the caller's mask may end there. */
	size_t bits = maxnode && nodes ? maxnode - 1 : 0;
	size_t words = (bits + 8 * sizeof(long) - 1) / (8 * sizeof(long));
	if (words > MAX_NODE_WORDS)
		return -E2BIG;
	if (n == cap) {
		size_t c = cap ? 2 * cap : 4;
		struct policy *g = realloc(v, c * sizeof(*g));
		if (!g)
			return -ENOMEM;
		v = g;
		cap = c;
	}
	struct policy *p = &v[n];
	*p = (struct policy){ .lo = lo, .hi = hi, .mode = mode, .maxnode = maxnode };
	if (nodes)
		memcpy(p->nodes, nodes, words * sizeof(long));
	__atomic_store_n(&n, n + 1, __ATOMIC_RELEASE);
	return 0;
}

/* Before a call made in pieces: what the kernel would refuse of the whole
 * (arguments, a hole in the range) refused here, before any piece is
 * bound. The arguments are tried on a page of our own. 0, or -1 and errno. */
static long checked(long (*call)(long, ...), uintptr_t lo, uintptr_t hi, int mode, const unsigned long *nodes,
		    unsigned long maxnode, unsigned flags)
{
	void *page = md__sys_mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		return -1;
	long r = call(SYS_mbind, page, PAGE, mode, nodes, maxnode, flags);
	int saved = errno;
	md__sys_munmap(page, PAGE);
	errno = saved;
	if (r != 0)
		return r;
	struct md__run *run;
	size_t nrun;
	int err = md__range_runs(lo, (hi + PAGE - 1) & ~(PAGE - 1), &run, &nrun);
	if (err) {
		errno = -err;
		return -1;
	}
	int hole = 0;
	for (size_t i = 0; i < nrun; i++)
		hole |= !run[i].mapped;
	free(run);
	if (hole) {
		errno = EFAULT;
		return -1;
	}
	return 0;
}

long md__policy_mbind(long (*call)(long, ...), void *addr, unsigned long len, int mode,
		      const unsigned long *nodes, unsigned long maxnode, unsigned flags,
		      const struct md__span *skip, size_t nskip)
{
	uintptr_t lo = (uintptr_t)addr, hi = lo + len, cur = lo;
	/* A call the kernel refuses (an address inside a page, a range that
	 * wraps) goes to it as it is, and nothing is recorded. */
	if (lo % PAGE || hi < lo || hi > UINTPTR_MAX - PAGE)
		return call(SYS_mbind, addr, len, mode, nodes, maxnode, flags);
	__atomic_add_fetch(&binding, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&lock);
	syscall_fn = call;
	long r = 0;
	int calls = 0;
	if (nskip && (r = checked(call, lo, hi, mode, nodes, maxnode, flags)) != 0)
		nskip = 0, cur = hi, calls = 1;	/* refused as a whole, as the kernel would */
	/* The call where the spans to skip are not (one call without any). */
	for (size_t i = 0; i < nskip && r == 0 && cur < hi; i++) {
		if (skip[i].hi <= cur)
			continue;
		if (skip[i].lo > cur) {
			r = call(SYS_mbind, cur, (skip[i].lo < hi ? skip[i].lo : hi) - cur, mode, nodes, maxnode, flags);
			calls++;
		}
		cur = skip[i].hi;
	}
	if (r == 0 && (cur < hi || !calls)) {
		r = call(SYS_mbind, cur, hi > cur ? hi - cur : 0, mode, nodes, maxnode, flags);
		calls++;
	}
	int saved = errno;
	/* Refused before anything was bound: the first call failed for a
	 * reason the kernel finds before it changes a mapping (bad arguments,
	 * a hole, a move not allowed). Not EIO (a strict call's pages that
	 * did not move: older kernels bound first) nor ENOMEM (short half
	 * way). The policy there stays as it was, and followed. */
	int untouched = r != 0 && calls == 1 && (saved == EINVAL || saved == EFAULT || saved == EPERM);
	if (len && !untouched) {
		/* The kernel took addr page-aligned and len rounded up. A
		 * failed call may have bound part: nothing is followed there. */
		uintptr_t end = (lo + len + PAGE - 1) & ~(PAGE - 1);
		int err = cut(lo, end);
		if (!err && r == 0 && (mode & ~MPOL_MODE_FLAGS) != MPOL_DEFAULT)
			err = add(lo, end, mode, nodes, maxnode);
		if (err)
			md__log_once(88, "cannot follow the VMM's NUMA policy (mbind) of %p (%lu bytes): %s; "
				     "pages merged or shared there may be allocated on other nodes when written",
				     addr, len, strerror(-err));
	}
	pthread_mutex_unlock(&lock);
	__atomic_sub_fetch(&binding, 1, __ATOMIC_SEQ_CST);
	errno = saved;
	return r;
}

void md__policy_apply_to(uintptr_t dst, uintptr_t addr, size_t len)
{
	if (none())
		return;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < n; i++) {
		const struct policy *p = &v[i];
		uintptr_t lo = p->lo > addr ? p->lo : addr, hi = p->hi < addr + len ? p->hi : addr + len;
		/* No MPOL_MF_MOVE: the pages now mapped there are an image's
		 * (page cache other processes map too), or none yet. */
		if (lo < hi && syscall_fn(SYS_mbind, dst + (lo - addr), hi - lo, p->mode, p->nodes, p->maxnode, 0) != 0)
			md__log_once(89, "cannot give a new mapping over guest RAM the VMM's NUMA policy: %s",
				     strerror(errno));
	}
	pthread_mutex_unlock(&lock);
}

void md__policy_apply(uintptr_t addr, size_t len)
{
	md__policy_apply_to(addr, addr, len);
}

void md__policy_apply_file(uintptr_t addr, size_t len, int fd)
{
	struct statfs fs;
	if (none())
		return;
	/* A private mapping of shared memory (an image on tmpfs) takes its
	 * policy from the file, for every process: never set there. */
	if (fstatfs(fd, &fs) != 0 || fs.f_type == TMPFS_MAGIC)
		return;
	md__policy_apply(addr, len);
}

void md__policy_forget(uintptr_t addr, size_t len)
{
	if (none())
		return;
	pthread_mutex_lock(&lock);
	cut(addr, addr + len);
	pthread_mutex_unlock(&lock);
}

void md__policy_move(uintptr_t old, size_t len, uintptr_t new_addr)
{
	if (none() || old == new_addr)
		return;
	pthread_mutex_lock(&lock);
	cut(new_addr, new_addr + len);
	/* The part of each policy inside the moved range goes with it (the
	 * kernel split the mapping there); the rest stays. */
	size_t had = n;
	for (size_t i = 0; i < had; i++) {
		struct policy p = v[i];
		uintptr_t lo = p.lo > old ? p.lo : old, hi = p.hi < old + len ? p.hi : old + len;
		if (lo >= hi)
			continue;
		if (add(lo - old + new_addr, hi - old + new_addr, p.mode, p.nodes, p.maxnode) != 0)
			md__log_once(124, "cannot follow the VMM's NUMA policy of memory it moved: pages "
				     "merged or shared there may be allocated on other nodes when written");
	}
	cut(old, old + len);
	pthread_mutex_unlock(&lock);
}

/* Around fork: the lock taken before, let go in both processes after, so
 * the child never finds it held by a thread it does not have. */
static void fork_prepare(void)
{
	pthread_mutex_lock(&lock);
}

static void fork_done(void)
{
	pthread_mutex_unlock(&lock);
}

void md__policy_atfork(void)
{
	pthread_atfork(fork_prepare, fork_done, fork_done);
}

void md__policy_child(void)
{
	lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	__atomic_store_n(&binding, 0, __ATOMIC_RELAXED);
}
