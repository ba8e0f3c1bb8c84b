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
#include <sys/syscall.h>

#include "log.h"

#define PAGE 4096ul
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
	size_t words = (maxnode + 8 * sizeof(long) - 1) / (8 * sizeof(long));
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

long md__policy_mbind(long (*call)(long, ...), void *addr, unsigned long len, int mode,
		      const unsigned long *nodes, unsigned long maxnode, unsigned flags)
{
	pthread_mutex_lock(&lock);
	syscall_fn = call;
	long r = call(SYS_mbind, addr, len, mode, nodes, maxnode, flags);
	int saved = errno;
	if (r == 0 && len) {
		/* The kernel took addr page-aligned and len rounded up. */
		uintptr_t lo = (uintptr_t)addr, hi = (lo + len + PAGE - 1) & ~(PAGE - 1);
		int err = cut(lo, hi);
		if (!err && (mode & ~MPOL_MODE_FLAGS) != MPOL_DEFAULT)
			err = add(lo, hi, mode, nodes, maxnode);
		if (err)
			md__log_once(88, "cannot follow the VMM's NUMA policy (mbind) of %p (%lu bytes): %s; "
				     "pages merged or shared there may be allocated on other nodes when written",
				     addr, len, strerror(-err));
	}
	pthread_mutex_unlock(&lock);
	errno = saved;
	return r;
}

void md__policy_apply(uintptr_t addr, size_t len)
{
	if (!__atomic_load_n(&n, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < n; i++) {
		const struct policy *p = &v[i];
		uintptr_t lo = p->lo > addr ? p->lo : addr, hi = p->hi < addr + len ? p->hi : addr + len;
		/* No MPOL_MF_MOVE: the pages now mapped there are the pool's
		 * or an image's, shared, not the guest's to move. */
		if (lo < hi && syscall_fn(SYS_mbind, lo, hi - lo, p->mode, p->nodes, p->maxnode, 0) != 0)
			md__log_once(89, "cannot give a new mapping over guest RAM the VMM's NUMA policy: %s",
				     strerror(errno));
	}
	pthread_mutex_unlock(&lock);
}

void md__policy_forget(uintptr_t addr, size_t len)
{
	if (!__atomic_load_n(&n, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&lock);
	cut(addr, addr + len);
	pthread_mutex_unlock(&lock);
}

void md__policy_move(uintptr_t old, size_t len, uintptr_t new_addr)
{
	if (!__atomic_load_n(&n, __ATOMIC_ACQUIRE) || old == new_addr)
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
			md__log_once(88, "cannot follow the VMM's NUMA policy of memory it moved: pages "
				     "merged or shared there may be allocated on other nodes when written");
	}
	cut(old, old + len);
	pthread_mutex_unlock(&lock);
}
