/*
 * test_engine.c - the content-sharing engine: its small parts, and the merge
 * primitive proven by outcomes: frames in /proc/self/pagemap, contents read
 * back, and no write lost while merges run at full speed.
 */
#include <dirent.h>
#include <sys/eventfd.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <sys/un.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "client.h"
#include "daemon_util.h"
#include "hints.h"
#include "index.h"
#include "merge.h"
#include "pool.h"
#include "log.h"
#include "proc.h"
#include "runner.h"
#include "zeropage.h"
#include "sys.h"
#include "scanner.h"

#define PG 4096u
#define PM_PRESENT (1ull << 63)
#define PM_FILE (1ull << 61)
#define PM_UFFD_WP (1ull << 57)
#define PFN_MASK ((1ull << 55) - 1)

#define pagemap self_pagemap

static uint64_t pfn(const void *addr)
{
	/* Read first, so the page is present. */
	(void)*(volatile const char *)addr;
	uint64_t e = pagemap(addr);
	ASSERT(e & PM_PRESENT);
	ASSERT((e & PFN_MASK) != 0);	/* PFNs need root (CAP_SYS_ADMIN) */
	return e & PFN_MASK;
}

/* Dropped: not there, or on the zero page (tests/zeropage.h); looked at
 * without touching the page, which on a kernel without a zero page would
 * allocate one. */
static int dropped(const void *addr)
{
	static uint64_t zero_pfn = UINT64_MAX;
	if (zero_pfn == UINT64_MAX)
		zero_pfn = test_zero_pfn();
	return test_pm_dropped(pagemap(addr), zero_pfn);
}

static unsigned char *map_ram(size_t pages)
{
	void *m = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	return m;
}

static void fill(unsigned char *p, unsigned seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (unsigned i = 0; i < PG; i += 4) {
		x = x * 1103515245u + 12345u;
		memcpy(p + i, &x, 4);
	}
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* 0, or the errno that says this process can have no userfaultfd (the
 * system call refused and /dev/userfaultfd not open to us). */
static int uffd_unavailable(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (fd < 0) {
		int err = errno, dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev < 0)
			return err;
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		close(dev);
		if (fd < 0)
			return err;
	}
	close(fd);
	return 0;
}

static void engine_up_with(struct md__engine *e, const struct md__engine_options *o)
{
	int err = md__engine_init(e, o);
	/* Only a missing userfaultfd is a reason to skip: any other failure
	 * (the pool, pagemap, the fault thread) is the engine's. */
	int why = err ? uffd_unavailable() : 0;
	if (why)
		SKIP("userfaultfd unavailable (%s)", strerror(why));
	ASSERT_EQ(err, 0);
}

static void engine_up(struct md__engine *e)
{
	engine_up_with(e, NULL);
}

/* An engine connected to a test daemon (a pool of 1,024 pages) in the
 * domain named. */
static void engine_with_daemon(struct md__engine *e, struct tdaemon *t, struct md__remote *rm, const char *domain)
{
	engine_up(e);
	td_start(t, 1024);
	ASSERT_EQ(md__remote_init(rm, t->sock, domain), 0);
	e->remote = rm;
	ASSERT_EQ(md__engine_remote_connect(e), 0);
}

/* Undoes engine_with_daemon: the engine, its link, then memdedupd. */
static void engine_with_daemon_down(struct md__engine *e, struct md__remote *rm, struct tdaemon *t)
{
	md__engine_fini(e);
	md__remote_fini(rm);
	td_stop(t);
}

TEST_IMPL(engine_hints_stack)
{
	struct md__hints h;
	struct md__hint x;
	/* No room is refused (a push would index an empty ring). */
	ASSERT_EQ(md__hints_init(&h, 0), -EINVAL);
	md__hints_free(&h);
	ASSERT_EQ(md__hints_init(&h, 4), 0);
	ASSERT_EQ(md__hints_pop(&h, &x), 0);
	for (uintptr_t i = 1; i <= 6; i++)
		md__hints_push(&h, i * PG, i, 0, 0);
	/* Newest first; 1 and 2 were the oldest and fell off. */
	ASSERT_EQ(h.dropped, 2);
	ASSERT_EQ(md__hints_count(&h), 4);
	for (uintptr_t i = 6; i >= 3; i--) {
		ASSERT_EQ(md__hints_pop(&h, &x), 1);
		ASSERT_EQ(x.addr, i * PG);
		ASSERT_EQ(x.len, i);
	}
	ASSERT_EQ(md__hints_pop(&h, &x), 0);
	md__hints_push(&h, 7 * PG, 7, 0, 0);
	ASSERT_EQ(md__hints_pop(&h, &x), 1);
	ASSERT_EQ(x.addr, 7 * PG);
	ASSERT_EQ(h.pushed, 7);
	ASSERT_EQ(h.popped, 5);
	/* Hints with a file (key) wait to be reported, oldest first, popped
	 * or not; unreported beyond MD_HINTS_FRESH, the oldest go. */
	static struct md__hint fresh[MD_HINTS_FRESH];
	ASSERT_EQ(md__hints_take_fresh(&h, fresh, MD_HINTS_FRESH), 0);	/* none had a key */
	for (uint64_t i = 0; i < MD_HINTS_FRESH + 44; i++)
		md__hints_push(&h, (uintptr_t)(100 + i) * PG, PG, 9, i * PG);
	ASSERT_EQ(md__hints_take_fresh(&h, fresh, 10), 10);
	ASSERT(fresh[0].off == 44 * PG && fresh[9].off == 53 * PG && fresh[9].key == 9);
	ASSERT_EQ(md__hints_take_fresh(&h, fresh, MD_HINTS_FRESH), MD_HINTS_FRESH - 10);
	ASSERT_EQ(fresh[MD_HINTS_FRESH - 11].off, (uint64_t)(MD_HINTS_FRESH + 43) * PG);
	ASSERT_EQ(md__hints_take_fresh(&h, fresh, MD_HINTS_FRESH), 0);
	md__hints_free(&h);
	return 0;
}

/* Pushers' hints carry tags that tie their fields together. */
#define HINT_PUSHERS 4
#define HINT_PUSHES 200000
static uint64_t hint_tag(uintptr_t addr)
{
	return addr * 0x9e3779b97f4a7c15ull >> 7;
}
static int hint_ok(const struct md__hint *x)
{
	return x->key == (x->addr >> 40) + 1 && x->len == (size_t)(hint_tag(x->addr) & 0xffff) &&
	       x->off == hint_tag(x->addr);
}
static struct md__hints hints_shared;
static int hints_bad, hints_pushed_all;
static void *hint_pusher(void *arg)
{
	uintptr_t t = (uintptr_t)arg;
	for (uintptr_t i = 0; i < HINT_PUSHES; i++) {
		uintptr_t addr = t << 40 | i << 12;
		md__hints_push(&hints_shared, addr, hint_tag(addr) & 0xffff, t + 1, hint_tag(addr));
	}
	return NULL;
}
static void *hint_popper(void *arg)
{
	struct md__hint x, fresh[16];
	uint64_t *n = arg;
	while (!__atomic_load_n(&hints_pushed_all, __ATOMIC_ACQUIRE)) {
		if (md__hints_pop(&hints_shared, &x)) {
			++*n;
			if (!hint_ok(&x))
				__atomic_store_n(&hints_bad, 1, __ATOMIC_RELAXED);
		}
		size_t got = md__hints_take_fresh(&hints_shared, fresh, 16);
		for (size_t i = 0; i < got; i++)
			if (!hint_ok(&fresh[i]))
				__atomic_store_n(&hints_bad, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

/* Four threads push keyed hints at once while one pops: none is lost or
 * counted twice (held + dropped + popped = pushed) and every hint popped
 * or reported is whole, not two pushes' fields mixed. */
TEST_IMPL(engine_hints_threads)
{
	ASSERT_EQ(md__hints_init(&hints_shared, 64), 0);
	pthread_t th[HINT_PUSHERS], pop;
	uint64_t npop = 0;
	ASSERT_EQ(pthread_create(&pop, NULL, hint_popper, &npop), 0);
	for (uintptr_t t = 0; t < HINT_PUSHERS; t++)
		ASSERT_EQ(pthread_create(&th[t], NULL, hint_pusher, (void *)t), 0);
	for (int t = 0; t < HINT_PUSHERS; t++)
		pthread_join(th[t], NULL);
	__atomic_store_n(&hints_pushed_all, 1, __ATOMIC_RELEASE);
	pthread_join(pop, NULL);
	ASSERT_EQ(hints_bad, 0);
	struct md__hints *h = &hints_shared;
	ASSERT_EQ(h->pushed, (uint64_t)HINT_PUSHERS * HINT_PUSHES);
	ASSERT_EQ(h->popped, npop);
	ASSERT(md__hints_count(h) <= h->cap);
	ASSERT_EQ(md__hints_count(h) + h->dropped + h->popped, h->pushed);
	struct md__hint x;
	size_t left = 0;
	while (md__hints_pop(h, &x)) {
		ASSERT(hint_ok(&x));
		left++;
	}
	ASSERT(left <= h->cap);
	ASSERT_EQ(h->dropped + h->popped, h->pushed);
	static struct md__hint fresh[MD_HINTS_FRESH + 1];
	size_t nf = md__hints_take_fresh(h, fresh, MD_HINTS_FRESH + 1);
	ASSERT(nf <= MD_HINTS_FRESH);
	for (size_t i = 0; i < nf; i++)
		ASSERT(hint_ok(&fresh[i]));
	md__hints_free(h);
	return 0;
}

static unsigned char idx_pages[3][PG];
static const void *idx_page(void *arg, uint32_t slot)
{
	(void)arg;
	return idx_pages[slot];
}

/* Well-mixed 64-bit values, as page hashes are. */
static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* The filter in front of the table: every live entry is found through it,
 * also after removals made it anew; most absent hashes stop at it. */
TEST_IMPL(engine_index_filter)
{
	struct md__index ix;
	enum { N = 20000 };
	ASSERT_EQ(md__index_init(&ix, 8), 0);
	for (uint32_t i = 0; i < N; i++)
		ASSERT_EQ(md__index_insert(&ix, mix64(i), i), 0);
	/* Remove every other one: more than a quarter of cap, so the
	 * filter is made anew (at least once) from the entries left. */
	for (uint32_t i = 0; i < N; i += 2)
		ASSERT_EQ(md__index_remove(&ix, mix64(i), i), 0);
	for (uint32_t i = 0; i < N; i++) {
		ASSERT_EQ(md__index_has(&ix, mix64(i)), (int)(i % 2));
		ASSERT_EQ(md__index_find(&ix, mix64(i), NULL, NULL, NULL), i % 2 ? (int64_t)i : -1);
	}
	/* Absent hashes: count those the filter lets through to the table. */
	size_t passed = 0;
	for (uint32_t i = 0; i < N; i++) {
		uint64_t h = mix64(N + i);
		passed += (size_t)md__index_may_have(&ix, h);
		ASSERT(!md__index_has(&ix, h));
	}
	ASSERT(passed < N / 5);
	for (uint32_t i = 1; i < N; i += 2)
		ASSERT(md__index_may_have(&ix, mix64(i)));
	/* Removed hashes stop at the filter too, once it was made anew: only
	 * those removed since keep their bits. And it is made anew once per
	 * quarter of cap removed, not at every removal after the first. */
	passed = 0;
	for (uint32_t i = 0; i < N; i += 2)
		passed += (size_t)md__index_may_have(&ix, mix64(i));
	ASSERT(passed < N / 5);
	ASSERT(ix.removed < ix.cap / 4);
	/* Churn: entries come and go. The rebuilds it takes drop the
	 * tombstones, at the table's size: it never grows for entries gone. */
	size_t cap = ix.cap;
	for (uint32_t r = 0; r < 8; r++) {
		for (uint32_t i = 0; i < N / 4; i++)
			ASSERT_EQ(md__index_insert(&ix, mix64(3 * N + r * N + i), i), 0);
		for (uint32_t i = 0; i < N / 4; i++)
			ASSERT_EQ(md__index_remove(&ix, mix64(3 * N + r * N + i), i), 0);
	}
	ASSERT_EQ(ix.live, N / 2);
	ASSERT_EQ(ix.cap, cap);
	for (uint32_t i = 1; i < N; i += 2)
		ASSERT_EQ(md__index_find(&ix, mix64(i), NULL, NULL, NULL), (int64_t)i);
	ASSERT_EQ(md__index_bytes(&ix), ix.cap * 9);
	md__index_free(&ix);
	return 0;
}

static const void *no_page(void *arg, uint32_t slot)
{
	(void)arg, (void)slot;
	return NULL;
}

TEST_IMPL(engine_index_collision)
{
	struct md__index ix;
	ASSERT_EQ(md__index_init(&ix, 8), 0);
	fill(idx_pages[0], 1);
	fill(idx_pages[1], 2);
	fill(idx_pages[2], 3);
	/* Slots 0 and 1 under one hash: a forced collision. (Hashes are
	 * mixed, as XXH3's are: the index keeps their high half.) */
	ASSERT_EQ(md__index_insert(&ix, mix64(42), 0), 0);
	ASSERT_EQ(md__index_insert(&ix, mix64(42), 1), 0);
	ASSERT_EQ(md__index_find(&ix, mix64(42), idx_pages[1], idx_page, NULL), 1);
	ASSERT_EQ(md__index_find(&ix, mix64(42), idx_pages[0], idx_page, NULL), 0);
	ASSERT(ix.collisions >= 1);
	/* Same hash, content in neither slot: no match, whatever the hash says. */
	ASSERT_EQ(md__index_find(&ix, mix64(42), idx_pages[2], idx_page, NULL), -1);
	ASSERT_EQ(md__index_remove(&ix, mix64(42), 0), 0);
	ASSERT_EQ(md__index_find(&ix, mix64(42), idx_pages[0], idx_page, NULL), -1);
	ASSERT_EQ(md__index_find(&ix, mix64(42), idx_pages[1], idx_page, NULL), 1);
	/* Growth keeps every entry. */
	for (uint32_t i = 0; i < 5000; i++)
		ASSERT_EQ(md__index_insert(&ix, mix64(1000 + i), 2), 0);
	ASSERT_EQ(md__index_find(&ix, mix64(1000 + 4321), idx_pages[2], idx_page, NULL), 2);
	ASSERT_EQ(md__index_find(&ix, mix64(42), idx_pages[1], idx_page, NULL), 1);
	/* A hash alone says only that an entry may match; an unreadable
	 * entry (NULL content) matches nothing. */
	ASSERT(md__index_has(&ix, mix64(42)) && md__index_has(&ix, mix64(1000 + 4999)));
	ASSERT(!md__index_has(&ix, mix64(999)));
	ASSERT_EQ(md__index_find(&ix, mix64(1000 + 7), idx_pages[2], no_page, NULL), -1);
	/* The highest slot an entry holds is UINT32_MAX - 2: one more would be
	 * stored as the tombstone, counted live and never found. */
	ASSERT_EQ(md__index_insert(&ix, mix64(77), UINT32_MAX - 2), 0);
	ASSERT_EQ(md__index_find(&ix, mix64(77), NULL, NULL, NULL), (int64_t)UINT32_MAX - 2);
	size_t live = ix.live;
	ASSERT_EQ(md__index_insert(&ix, mix64(78), UINT32_MAX - 1), -EINVAL);
	ASSERT_EQ(md__index_insert(&ix, mix64(78), UINT32_MAX), -EINVAL);
	ASSERT_EQ(ix.live, live);
	md__index_free(&ix);
	/* The checksum sees a one-byte change; zero detection is exact. */
	static unsigned char a[PG], b[PG];
	fill(a, 9);
	memcpy(b, a, PG);
	ASSERT(md__page_hash(a) == md__page_hash(b));
	b[PG - 1] ^= 1;
	ASSERT(md__page_hash(a) != md__page_hash(b));
	memset(b, 0, PG);
	ASSERT(md__page_is_zero(b));
	b[PG - 1] = 1;
	ASSERT(!md__page_is_zero(b));
	/* Every word of a 64-byte block is compared: one nonzero byte in
	 * word k (0..7) of a block in the middle, at any byte of the word,
	 * and the page is not zero, nor filled with its other words. */
	for (unsigned k = 0; k < 8; k++)
		for (unsigned byte = 0; byte < 8; byte += 7) {
			memset(b, 0, PG);
			b[5 * 64 + k * 8 + byte] = 0x10;
			ASSERT_EQ(md__page_is_zero(b), 0);
			memset(b, 0xa5, PG);
			b[5 * 64 + k * 8 + byte] = 0xa4;
			uint64_t word = 0;
			ASSERT_EQ(md__page_is_filled(b, 0xa5a5a5a5a5a5a5a5ull), 0);
			ASSERT_EQ(md__page_fill(b, &word), 0);
		}
	memset(b, 0xa5, PG);
	uint64_t fillw = 0;
	ASSERT(md__page_fill(b, &fillw) && fillw == 0xa5a5a5a5a5a5a5a5ull);
	/* The AVX2 build gives the baseline's values (agents on different
	 * CPUs share one daemon's index); on a CPU without it, the chosen
	 * one is the baseline. */
	__builtin_cpu_init();
	int avx2 = __builtin_cpu_supports("avx2") != 0;
	for (unsigned k = 0; k < 64; k++) {
		fill(a, 100 + k);
		a[k * 61] = 0;
		uint64_t h = md__page_hash_sse2(a);
		ASSERT(md__page_hash(a) == h);
		if (avx2)
			ASSERT(md__page_hash_avx2(a) == h);
	}
	memset(a, 0, PG);
	ASSERT(!avx2 || md__page_hash_avx2(a) == md__page_hash_sse2(a));
	return 0;
}

/* A pool on shmem that may hand out huge pages says so once: a punched
 * slot of a huge page is zeroed in place (review). The knob is put back
 * when the test ends. */
TEST_IMPL(engine_pool_warns_of_shmem_huge_pages)
{
	const char *knob = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
	struct md__pool p;
	char log[256];
	if (access(knob, W_OK) != 0)
		SKIP("cannot set %s", knob);
	for (unsigned kb = 8; kb <= 2048; kb *= 2) {
		char size_knob[96];
		snprintf(size_knob, sizeof(size_knob), "/sys/kernel/mm/transparent_hugepage/hugepages-%ukB/shmem_enabled", kb);
		const char *v = file_text(size_knob);
		if (strstr(v, "[always]") || strstr(v, "[within_size]") || strstr(v, "[force]"))
			SKIP("shmem huge pages of %u KiB are on already", kb);
	}
	snprintf(log, sizeof(log), "%s/log", test_dir());
	ASSERT_EQ(md__log_open(log), 0);
	int guard = set_until_exit(knob, "never");
	ASSERT(guard >= 0);
	ASSERT_EQ(md__pool_open(&p, 64), 0);
	md__pool_close(&p);
	ASSERT(strstr(file_text(log), "shmem huge pages are on") == NULL);
	/* Said once per process: the global knob's pool is opened in a child,
	 * the 2 MiB size's (where the kernel's own default, inherit, leaves
	 * the global one in charge) here. */
	int on = open(knob, O_WRONLY);
	ASSERT(on >= 0 && write(on, "always", 6) == 6);
	close(on);
	pid_t child = fork();
	ASSERT(child >= 0);
	if (child == 0)
		_exit(md__pool_open(&p, 64) == 0 ? 0 : 1);
	int status;
	ASSERT_EQ(waitpid(child, &status, 0), child);
	/* Back before the next test, not when the guard gets to it: a pool
	 * on huge pages fails engine_pool_reuse_spares_held_page (the held
	 * page is zeroed in place). */
	on = open(knob, O_WRONLY);
	ASSERT(on >= 0 && write(on, "never", 5) == 5);
	close(on);
	close(guard);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	int said = strstr(file_text(log), "shmem huge pages are on") != NULL;
	const char *pmd_knob = "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled";
	if (access(pmd_knob, W_OK) == 0) {
		char was[32] = "";
		const char *w = strchr(file_text(pmd_knob), '[');
		ASSERT(w && sscanf(w, "[%31[a-z_]]", was) == 1);
		guard = set_until_exit(pmd_knob, "always");
		ASSERT(guard >= 0);
		ASSERT_EQ(md__pool_open(&p, 64), 0);
		md__pool_close(&p);
		on = open(pmd_knob, O_WRONLY);	/* its word back at once, as above */
		ASSERT(on >= 0 && write(on, was, strlen(was)) == (ssize_t)strlen(was));
		close(on);
		close(guard);
		const char *first = strstr(file_text(log), "shmem huge pages are on");
		ASSERT(first && strstr(first + 1, "shmem huge pages are on"));
	}
	ASSERT(said);
	return 0;
}

TEST_IMPL(engine_pool_write_once)
{
	struct md__pool p;
	static unsigned char pg[2 * PG];
	uint32_t s, s2;
	ASSERT_EQ(md__pool_open(&p, 64), 0);
	fill(pg, 1);
	fill(pg + PG, 2);
	ASSERT_EQ(md__pool_reserve(&p, 2, &s), 0);
	ASSERT_EQ(s, 0);
	ASSERT_EQ(md__pool_publish(&p, s, pg, 2), 0);
	ASSERT(memcmp(md__pool_page(&p, 1), pg + PG, PG) == 0);
	/* A published page is never rewritten. */
	ASSERT_EQ(md__pool_publish(&p, s, pg + PG, 1), -EPERM);
	/* The holders' descriptor cannot write, nor map shared-writable. */
	ASSERT(write(p.ro_fd, pg, 1) < 0);
	ASSERT(mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, p.ro_fd, 0) == MAP_FAILED);
	ASSERT_EQ(errno, EACCES);
	ASSERT(ftruncate(p.fd, 0) < 0);	/* sealed against shrinking */
	/* A private mapping writes its own copy. */
	unsigned char *m = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, p.ro_fd, 0);
	ASSERT(m != MAP_FAILED);
	m[0] ^= 0xff;
	ASSERT(memcmp(md__pool_page(&p, 0), pg, PG) == 0);
	munmap(m, PG);
	/* Refcounts: the last put frees the slot; its page stays until a
	 * trim punches it out, and only then is the slot reused. */
	md__pool_get(&p, 0);
	md__pool_get(&p, 0);
	ASSERT_EQ(md__pool_put(&p, 0), 0);
	ASSERT_EQ(md__pool_put(&p, 0), 1);
	ASSERT_EQ(md__pool_live(&p), 1);
	ASSERT_EQ(p.ndirty, 1);
	ASSERT_EQ(md__pool_trim(&p), 1);
	ASSERT(md__page_is_zero(md__pool_page(&p, 0)));
	ASSERT_EQ(md__pool_reserve(&p, 1, &s2), 0);
	ASSERT_EQ(s2, 0);
	ASSERT_EQ(p.reused, 1);
	ASSERT_EQ(md__pool_publish(&p, s2, pg + PG, 1), 0);
	ASSERT(memcmp(md__pool_page(&p, 0), pg + PG, PG) == 0);
	/* A run is appended, so its offsets are consecutive. */
	ASSERT_EQ(md__pool_reserve(&p, 3, &s), 0);
	ASSERT_EQ(s, 2);
	md__pool_unreserve(&p, s, 3);
	ASSERT_EQ(md__pool_trim(&p), 3);
	ASSERT_EQ(p.nfree, 3);
	md__pool_close(&p);
	return 0;
}

/* What a slot's state and references guard: a run is never given a freed
 * slot (only one), a referenced page is never freed by a caller giving
 * back what it thinks unused, and a trim punches only freed slots,
 * whatever an earlier batch left in its array. A page freed wrongly is
 * punched: every guest mapping it reads zeroes. */
/* The pool's writes as the test says: an EINTR first, then short ones
 * (a page and a few bytes at most); or none at all (0), or an error. */
enum { WRITES_SHORT, WRITES_NONE, WRITES_FAIL };
static int pool_writes, pool_write_calls;

static long pool_write_syscall(long nr, ...)
{
	SYSCALL_ARGS(nr, a);
	if (nr != SYS_pwrite64)
		return syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	if (pool_writes == WRITES_FAIL || (pool_writes == WRITES_SHORT && !pool_write_calls++)) {
		errno = pool_writes == WRITES_FAIL ? ENOSPC : EINTR;
		return -1;
	}
	if (pool_writes == WRITES_NONE)
		return 0;
	return syscall(nr, a[0], a[1], a[2] < PG + 100 ? a[2] : PG + 100, a[3]);
}

/* A publish writes its pages whole however the kernel cuts the write
 * (interrupted, short): each part at its own offset, until all is
 * written. A write that makes no progress (0) or fails leaves the slots
 * reserved, never live: a live slot with content not written whole would
 * be mapped as the page it was to hold. */
TEST_IMPL(engine_pool_publish_short_writes)
{
	struct md__pool p;
	static unsigned char pg[3 * PG];
	uint32_t s;
	ASSERT_EQ(md__pool_open(&p, 64), 0);
	fill(pg, 1);
	fill(pg + PG, 2);
	fill(pg + 2 * PG, 3);
	ASSERT_EQ(md__pool_reserve(&p, 3, &s), 0);
	pool_writes = WRITES_SHORT;
	md__libc_syscall = pool_write_syscall;
	int r = md__pool_publish(&p, s, pg, 3);
	md__libc_syscall = NULL;
	ASSERT_EQ(r, 0);
	ASSERT_EQ(pool_write_calls, 4);	/* interrupted, then three parts */
	ASSERT(memcmp(md__pool_page(&p, s), pg, 3 * PG) == 0);
	ASSERT_EQ(p.published, 3);
	for (int w = WRITES_NONE; w <= WRITES_FAIL; w++) {
		ASSERT_EQ(md__pool_reserve(&p, 1, &s), 0);
		pool_writes = w;
		md__libc_syscall = pool_write_syscall;
		r = md__pool_publish(&p, s, pg, 1);
		md__libc_syscall = NULL;
		ASSERT_EQ(r, w == WRITES_NONE ? -EIO : -ENOSPC);
		ASSERT_EQ(p.state[s], MD_SLOT_RESERVED);
		ASSERT_EQ(p.published, 3);
		md__pool_unreserve(&p, s, 1);
	}
	md__pool_close(&p);
	return 0;
}

TEST_IMPL(engine_pool_slot_states_guarded)
{
	struct md__pool p;
	enum { N = 6 };
	static unsigned char pg[N * PG];
	uint32_t s, r;
	for (unsigned i = 0; i < N; i++)
		fill(pg + i * PG, 40 + i);
	ASSERT_EQ(md__pool_open(&p, 64), 0);
	/* No slots: refused, as the first it would name is not reserved. */
	ASSERT_EQ(md__pool_reserve(&p, 0, &s), -EINVAL);
	ASSERT_EQ(md__pool_reserve(&p, N, &s), 0);
	ASSERT_EQ(md__pool_publish(&p, s, pg, N), 0);
	/* Past the end: refused for its length, not read beyond. */
	ASSERT_EQ(md__pool_publish(&p, (uint32_t)p.end, pg, 1), -EINVAL);
	for (uint32_t i = 0; i < N; i++)
		md__pool_get(&p, i);
	/* Freed highest first. */
	for (uint32_t i = 4; i-- > 0;)
		ASSERT_EQ(md__pool_put(&p, i), 1);
	ASSERT_EQ(md__pool_trim(&p), 4);
	ASSERT_EQ(p.nfree, 4);
	/* A run of two is appended, not laid over a free slot and the live
	 * one after it. */
	uint32_t run;
	ASSERT_EQ(md__pool_reserve(&p, 2, &run), 0);
	ASSERT_EQ(run, N);
	ASSERT_EQ(p.nfree, 4);
	/* Single slots are given back lowest first. */
	for (uint32_t i = 0; i < 4; i++) {
		ASSERT_EQ(md__pool_reserve(&p, 1, &r), 0);
		ASSERT_EQ(r, i);
	}
	/* The dirty array still holds 0..3 from the batch before; slot 3 is
	 * live again when 0..2 are freed. */
	for (uint32_t i = 0; i < 4; i++) {
		ASSERT_EQ(md__pool_publish(&p, i, pg + i * PG, 1), 0);
		md__pool_get(&p, i);
	}
	for (uint32_t i = 0; i < 3; i++)
		ASSERT_EQ(md__pool_put(&p, i), 1);
	ASSERT_EQ(md__pool_trim(&p), 3);
	ASSERT(memcmp(md__pool_page(&p, 3), pg + 3 * PG, PG) == 0);
	/* A put on a page nobody references (a publication not mapped yet)
	 * frees nothing; nor does giving back as unused one referenced, or
	 * as unwritten a run holding a live slot. */
	uint64_t live = md__pool_live(&p);
	r = run;
	ASSERT_EQ(md__pool_publish(&p, r, pg, 1), 0);
	ASSERT_EQ(md__pool_put(&p, r), 0);
	md__pool_get(&p, r);
	md__pool_drop_unused(&p, r);
	md__pool_unreserve(&p, r, 2);
	ASSERT_EQ(p.state[r], MD_SLOT_LIVE);
	ASSERT_EQ(p.state[r + 1], MD_SLOT_FREE);
	ASSERT_EQ(md__pool_live(&p), live + 1);
	/* Dropping more references than it holds frees it, once. */
	md__pool_get(&p, r);
	ASSERT_EQ(md__pool_put_n(&p, r, 5), 1);
	ASSERT_EQ(p.refs[r], 0);
	ASSERT_EQ(md__pool_put_n(&p, r, 1), 0);
	ASSERT_EQ(md__pool_live(&p), live);
	md__pool_trim(&p);
	for (uint32_t i = 3; i < N; i++)
		ASSERT(memcmp(md__pool_page(&p, i), pg + i * PG, PG) == 0);
	md__pool_close(&p);
	return 0;
}

/* A pool that has reached its end takes a run into punched freed slots
 * (a fill strip, a PUBLISH of several pages): it was refused as full for
 * good, however much was freed. Never over a live slot, nor one whose page
 * is not punched yet (trimmed first), and the single slots left are still
 * given lowest first. */
TEST_IMPL(engine_pool_full_run_reuses_freed)
{
	struct md__pool p;
	enum { N = 8 };
	static unsigned char pg[N * PG];
	uint32_t s, r;
	for (unsigned i = 0; i < N; i++)
		fill(pg + i * PG, 60 + i);
	ASSERT_EQ(md__pool_open(&p, N), 0);
	ASSERT_EQ(md__pool_reserve(&p, N, &s), 0);
	ASSERT_EQ(md__pool_publish(&p, s, pg, N), 0);
	for (uint32_t i = 0; i < N; i++)
		md__pool_get(&p, i);
	ASSERT_EQ(md__pool_reserve(&p, 1, &r), -ENOSPC);
	/* Free 1, 2, 4, 5, 6: not punched yet, in the dirty batch. */
	static const uint32_t freed[] = { 5, 1, 6, 2, 4 };
	for (size_t i = 0; i < sizeof(freed) / sizeof(freed[0]); i++)
		ASSERT_EQ(md__pool_put(&p, freed[i]), 1);
	ASSERT_EQ(md__pool_reserve(&p, 4, &r), -ENOSPC);	/* no four in a row */
	ASSERT_EQ(md__pool_reserve(&p, 3, &r), 0);
	ASSERT_EQ(r, 4);
	for (uint32_t i = 4; i < 7; i++) {
		ASSERT_EQ(p.state[i], MD_SLOT_RESERVED);
		ASSERT(md__page_is_zero(md__pool_page(&p, i)));	/* punched before */
	}
	ASSERT_EQ(md__pool_publish(&p, r, pg + 4 * PG, 3), 0);
	ASSERT_EQ(md__pool_reserve(&p, 2, &r), 0);
	ASSERT_EQ(r, 1);
	md__pool_unreserve(&p, r, 2);
	md__pool_trim(&p);
	ASSERT_EQ(md__pool_reserve(&p, 1, &r), 0);
	ASSERT_EQ(r, 1);
	ASSERT_EQ(md__pool_reserve(&p, 1, &r), 0);
	ASSERT_EQ(r, 2);
	ASSERT_EQ(md__pool_reserve(&p, 1, &r), -ENOSPC);
	for (uint32_t i = 0; i < N; i++)
		if (i != 1 && i != 2)
			ASSERT(memcmp(md__pool_page(&p, i), pg + i * PG, PG) == 0);
	md__pool_close(&p);
	return 0;
}

/* A freed slot's page may still be held by the kernel: an O_DIRECT write
 * from guest RAM mapped from it pins the page and sends it later. A slot
 * taken again must get a new page, never its old one rewritten, or that
 * write sends content the guest never wrote (another VM's). A pipe's
 * vmsplice holds the page as such a write would. */
static int pool_reuse_spares_held_page(size_t max, int punch_fails);

TEST_IMPL(engine_pool_reuse_spares_held_page)
{
	/* With room in the pool (a new slot), and with none (the slot
	 * punched first). */
	for (size_t max = 1; max <= 64; max += 63)
		ASSERT_EQ(pool_reuse_spares_held_page(max, 0), 0);
	/* A punch that fails: the slot is not taken again, even with no
	 * other left (the pool is full). */
	ASSERT_EQ(pool_reuse_spares_held_page(1, 1), 0);
	return 0;
}

static int pool_reuse_spares_held_page(size_t max, int punch_fails)
{
	struct md__pool p;
	static unsigned char pg[2 * PG], got[PG];
	uint32_t s, s2;
	int pipefd[2];
	ASSERT_EQ(md__pool_open(&p, max), 0);
	fill(pg, 1);
	fill(pg + PG, 2);
	ASSERT_EQ(md__pool_reserve(&p, 1, &s), 0);
	ASSERT_EQ(md__pool_publish(&p, s, pg, 1), 0);
	md__pool_get(&p, s);
	unsigned char *m = mmap(NULL, PG, PROT_READ, MAP_PRIVATE, p.ro_fd, (off_t)s * PG);
	ASSERT(m != MAP_FAILED);
	ASSERT(pipe(pipefd) == 0);
	struct iovec iov = { m, PG };
	ASSERT_EQ(vmsplice(pipefd[1], &iov, 1, 0), (ssize_t)PG);
	munmap(m, PG);
	ASSERT_EQ(md__pool_put(&p, s), 1);	/* freed, its page still held */
	md__pool_fail_punches = punch_fails;
	if (punch_fails) {
		ASSERT_EQ(md__pool_reserve(&p, 1, &s2), -ENOSPC);
		ASSERT_EQ(p.unpunched, 1);
	} else {
		ASSERT_EQ(md__pool_reserve(&p, 1, &s2), 0);
		ASSERT_EQ(md__pool_publish(&p, s2, pg + PG, 1), 0);
		ASSERT(memcmp(md__pool_page(&p, s2), pg + PG, PG) == 0);
	}
	ASSERT_EQ(md__pool_fail_punches, 0);
	ASSERT_EQ(read(pipefd[0], got, PG), (ssize_t)PG);
	ASSERT(memcmp(got, pg, PG) == 0);
	close(pipefd[0]);
	close(pipefd[1]);
	md__pool_close(&p);
	return 0;
}

/* Freed pages go back to the host in coalesced punches: not one by one (a
 * TLB shootdown in every holder each), and not never. */
TEST_IMPL(engine_pool_frees_in_batches)
{
	struct md__pool p;
	const size_t n = MD_POOL_DIRTY + 44;
	unsigned char *pg = malloc(n * PG);
	ASSERT(pg);
	for (size_t i = 0; i < n * PG; i++)
		pg[i] = (unsigned char)(i * 7 + i / PG);
	ASSERT_EQ(md__pool_open(&p, 4096), 0);
	uint32_t s;
	ASSERT_EQ(md__pool_reserve(&p, n, &s), 0);
	ASSERT_EQ(md__pool_publish(&p, s, pg, n), 0);
	long long full = test_file_blocks(p.fd);
	ASSERT(full >= (long long)(n * PG / 512));
	for (size_t i = 0; i < n; i++)
		md__pool_get(&p, (uint32_t)i);
	/* A few freed: their memory stays until trimmed or reused. */
	for (size_t i = 0; i < 10; i++)
		ASSERT_EQ(md__pool_put(&p, (uint32_t)i), 1);
	ASSERT_EQ(test_file_blocks(p.fd), full);
	ASSERT_EQ(md__pool_trim(&p), 10);
	ASSERT_EQ(test_file_blocks(p.fd), full - 10 * PG / 512);
	/* (pread: a read through a shared mapping would fill the hole.) */
	unsigned char back[PG];
	ASSERT_EQ(pread(p.fd, back, PG, 3 * PG), (ssize_t)PG);
	ASSERT(md__page_is_zero(back));
	/* Many freed: punched once MD_POOL_DIRTY gathered, the rest waits. */
	for (size_t i = 10; i < n; i++)
		ASSERT_EQ(md__pool_put(&p, (uint32_t)i), 1);
	ASSERT_EQ(p.ndirty, n - 10 - MD_POOL_DIRTY);
	ASSERT_EQ(test_file_blocks(p.fd), (long long)(p.ndirty * PG / 512));
	ASSERT_EQ(md__pool_live(&p), 0);
	/* Punched ones are reused, never one still holding its page (the
	 * kernel may hold it too: engine_pool_reuse_spares_held_page). */
	size_t dirty = p.ndirty;
	uint32_t r;
	ASSERT_EQ(md__pool_reserve(&p, 1, &r), 0);
	ASSERT(r < 10 + MD_POOL_DIRTY);
	ASSERT_EQ(p.ndirty, dirty);
	ASSERT_EQ(md__pool_publish(&p, r, pg, 1), 0);
	ASSERT(memcmp(md__pool_page(&p, r), pg, PG) == 0);
	/* A pool closed (its domain gone) while a holder still maps the file:
	 * what waited for its batch goes too, only r's page stays. */
	int kept = dup(p.ro_fd);
	ASSERT(kept >= 0);
	ASSERT(p.ndirty > 0);
	md__pool_close(&p);
	ASSERT_EQ(test_file_blocks(kept), (long long)(PG / 512));
	close(kept);
	free(pg);
	return 0;
}

/* Two "guests" with the same content: A publishes, B merges. */
TEST_IMPL(engine_merge_shares)
{
	struct md__engine e;
	struct md__engine_stats st;
	const size_t n = 16;
	unsigned char *a = map_ram(n), *b = map_ram(n);
	uint32_t slot;

	engine_up(&e);
	for (size_t i = 0; i < n; i++) {
		fill(a + i * PG, (unsigned)i + 1);
		fill(b + i * PG, (unsigned)i + 1);
	}
	b[5 * PG + 100] ^= 1;	/* one page of B differs by one bit */
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, a, n, &slot), (int)n);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n - 1);

	for (size_t i = 0; i < n; i++) {
		unsigned char want[PG];
		fill(want, (unsigned)i + 1);
		ASSERT(memcmp(a + i * PG, want, PG) == 0);
		ASSERT(pagemap(a + i * PG) & PM_FILE);
		if (i == 5) {
			want[100] ^= 1;
			ASSERT(memcmp(b + i * PG, want, PG) == 0);
			ASSERT(pfn(a + i * PG) != pfn(b + i * PG));
			ASSERT(!(pagemap(b + i * PG) & PM_FILE));
			continue;
		}
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT_EQ(pfn(a + i * PG), pfn(b + i * PG));
		ASSERT_EQ(pfn(b + i * PG), pfn(md__pool_page(&e.pool, slot + (uint32_t)i)));
	}
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.published, n);
	ASSERT_EQ(st.merged, n - 1);
	ASSERT_EQ(st.abandoned, 1);

	/* Copy-on-write: B writes page 3; A and the pool keep the old bytes. */
	uint64_t shared = pfn(a + 3 * PG);
	b[3 * PG + 7] = 0x5a;
	ASSERT_EQ(b[3 * PG + 7], 0x5a);
	ASSERT(pfn(b + 3 * PG) != shared);
	ASSERT_EQ(pfn(a + 3 * PG), shared);
	unsigned char want[PG];
	fill(want, 4);
	ASSERT(memcmp(a + 3 * PG, want, PG) == 0);
	ASSERT(memcmp(md__pool_page(&e.pool, slot + 3), want, PG) == 0);
	/* As a page the scanner had found unique before its partner came. */
	struct md__eregion *rb = md__engine_region(&e, (uintptr_t)b + 3 * PG, PG);
	ASSERT(rb);
	size_t ib = ((uintptr_t)b + 3 * PG - rb->start) / PG;
	rb->seen[ib] = (uint8_t)MD_SEEN_MAKE(2, 3);
	ASSERT_EQ(md__engine_reap(&e), 1);
	ASSERT_EQ(e.pool.refs[slot + 3], 1);
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.cow_broken, 1);
	/* Written: young again, not counted in pages_unshared by its old
	 * age, and visited at the next pass. */
	ASSERT_EQ(rb->seen[ib], MD_SEEN);

	/* The written page can be merged again once its content is back. */
	b[3 * PG + 7] = want[7];
	ASSERT_EQ(md__engine_merge(&e, b + 3 * PG, 1, slot + 3), 1);
	ASSERT_EQ(pfn(b + 3 * PG), shared);

	/* Discard: zeroes, not pool content, and the reference goes. */
	ASSERT_EQ(md__engine_discard(&e, b + 3 * PG, PG), 0);
	ASSERT(md__page_is_zero(b + 3 * PG));
	ASSERT_EQ(e.pool.refs[slot + 3], 1);
	md__engine_fini(&e);
	return 0;
}

/* The reap's test of a pagemap entry: only a private anonymous page (the
 * guest wrote there) gives the pool page up; a file page, even one being
 * migrated (a swap entry with the file bit), still reads the pool. */
TEST_IMPL(engine_pm_private_anon)
{
	ASSERT_EQ(md__pm_private_anon(MD_PM_PRESENT | 1234), 1);
	ASSERT_EQ(md__pm_private_anon(MD_PM_SWAP | 77), 1);
	ASSERT_EQ(md__pm_private_anon(MD_PM_PRESENT | MD_PM_FILE | 1234), 0);
	ASSERT_EQ(md__pm_private_anon(MD_PM_SWAP | MD_PM_FILE | 77), 0);
	ASSERT_EQ(md__pm_private_anon(0), 0);
	ASSERT_EQ(md__pm_private_anon(MD_PM_UFFD_WP), 0);
	/* A write-protect marker over nothing (or a protected page in swap):
	 * the file page's reference stays (review). */
	ASSERT_EQ(md__pm_private_anon(MD_PM_SWAP | MD_PM_UFFD_WP | 3), 0);
	ASSERT_EQ(md__pm_private_anon(MD_PM_PRESENT | MD_PM_UFFD_WP | 1234), 1);
	return 0;
}

/* Memory that stops asking for merging but stays mapped (MADV_UNMERGEABLE,
 * mremap) keeps its content after the engine lets it go, even once the pool
 * slots it was merged onto are freed and punched: its pages became private
 * copies first. */
TEST_IMPL(engine_unregister_keeps_content)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a = map_ram(n), *b = map_ram(n);
	uint32_t slot;

	engine_up(&e);
	for (size_t i = 0; i < n; i++) {
		fill(a + i * PG, (unsigned)i + 40);
		fill(b + i * PG, (unsigned)i + 40);
	}
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, a, n, &slot), (int)n);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	ASSERT_EQ(pfn(b + 2 * PG), pfn(md__pool_page(&e.pool, slot + 2)));

	ASSERT_EQ(md__engine_unregister(&e, b, n * PG, MD_UNREG_MAPPED), 0);
	ASSERT_EQ(md__engine_unregister(&e, a, n * PG, MD_UNREG_MAPPED), 0);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(e.pool.refs[slot + i], 0);
	md__engine_trim(&e);	/* the freed slots are punched */
	for (size_t i = 0; i < n; i++) {
		unsigned char want[PG];
		fill(want, (unsigned)i + 40);
		ASSERT(memcmp(a + i * PG, want, PG) == 0);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(!(pagemap(b + i * PG) & PM_FILE));	/* read first: there */
	}
	md__engine_stats(&e, &(struct md__engine_stats){ 0 });
	ASSERT_EQ(e.st.refs_kept, 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A published page is found by its content (the scanner's look-up without
 * memdedupd), and no more once its slot is freed: a freed slot found there
 * was no merge (not live), and its content was never published again. */
TEST_IMPL(engine_publish_indexes_slot)
{
	struct md__engine e;
	unsigned char *a = map_ram(1), *b = map_ram(1);
	uint32_t slot;

	engine_up(&e);
	fill(a, 290);
	fill(b, 290);
	ASSERT_EQ(md__engine_register(&e, a, PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, PG, 0), 0);
	uint64_t h = md__page_hash(b);
	ASSERT_EQ(md__engine_lookup(&e, b, h), -1);
	ASSERT_EQ(md__engine_publish(&e, a, 1, &slot), 1);
	ASSERT_EQ(md__engine_lookup(&e, b, h), (int64_t)slot);
	ASSERT_EQ(md__engine_unregister(&e, a, PG, MD_UNREG_MAPPED), 0);
	ASSERT_EQ(e.pool.refs[slot], 0);
	ASSERT_EQ(md__engine_lookup(&e, b, h), -1);
	md__engine_fini(&e);
	munmap(a, PG);
	munmap(b, PG);
	return 0;
}

/* n pages of zeroes, registered, each dropped by the engine (started
 * here): their address. */
static unsigned char *dropped_ram(struct md__engine *e, size_t n)
{
	unsigned char *r = map_ram(n);
	engine_up(e);
	memset(r, 0, n * PG);
	ASSERT_EQ(md__engine_register(e, r, n * PG, 0), 0);
	ASSERT_EQ(md__engine_merge_zero(e, r, n), (int)n);
	return r;
}

/* A handover (the VMM's userfaultfd takes the memory) puts back the zero
 * pages the engine dropped first; when it cannot, it fails and changes
 * nothing, the memory still registered: those pages would be missing
 * ones to the VMM's handler. */
TEST_IMPL(engine_handover_needs_dropped_pages_back)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *r = dropped_ram(&e, n + 1);

	/* What is left of a region cut keeps its marks. */
	ASSERT_EQ(md__engine_unregister(&e, r + n * PG, PG, MD_UNREG_GONE), 0);
	ASSERT_EQ(mprotect(r, n * PG, PROT_NONE), 0);	/* no read fills them */
	/* The kernel's EINVAL (PROT_NONE) is not said: the VMM would take
	 * it for userfaultfd unsupported there, not for a failure. */
	int err = md__engine_unregister(&e, r, n * PG, MD_UNREG_HANDOVER);
	ASSERT(err < 0 && err != -EINVAL);
	ASSERT(md__engine_touches(&e, (uintptr_t)r, n * PG));
	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), n);
	ASSERT_EQ(mprotect(r, n * PG, PROT_READ | PROT_WRITE), 0);
	ASSERT_EQ(md__engine_unregister(&e, r, n * PG, MD_UNREG_HANDOVER), 0);
	ASSERT(!md__engine_touches(&e, (uintptr_t)r, n * PG));
	for (size_t i = 0; i < n; i++)
		ASSERT(pagemap(r + i * PG) & PM_PRESENT);
	md__engine_fini(&e);
	munmap(r, (n + 1) * PG);
	return 0;
}

/* A range advised again, and a larger one around it: only what was not
 * registered becomes new regions (an overlap was refused, and the rest of
 * the larger range never scanned). */
TEST_IMPL(engine_register_again)
{
	struct md__engine e;
	unsigned char *m = map_ram(16);
	engine_up(&e);
	ASSERT_EQ(md__engine_register(&e, m + 4 * PG, 4 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, m + 4 * PG, 4 * PG, 0), 0);
	ASSERT_EQ(e.nregions, 1);
	ASSERT_EQ(md__engine_register(&e, m, 16 * PG, 0), 0);
	ASSERT_EQ(e.nregions, 3);
	for (size_t i = 0; i < 16; i++)
		ASSERT(md__engine_region(&e, (uintptr_t)m + i * PG, PG) != NULL);
	ASSERT_EQ(md__engine_register(&e, m + 1, PG, 0), -EINVAL);
	md__engine_fini(&e);
	munmap(m, 16 * PG);
	return 0;
}

/* A discard that spans two registered regions yields zeroes in both, pool
 * pages included (not the pool's content again), and drops their
 * references. A page merged from an image reads zeroes too, not the
 * image's page again (the VMM's MADV_DONTNEED in that private file
 * mapping would show it). */
TEST_IMPL(engine_discard_spans_regions)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a = map_ram(2 * n), *b = map_ram(2 * n);
	uint32_t slot;

	engine_up(&e);
	for (size_t i = 0; i < 2 * n; i++) {
		fill(a + i * PG, (unsigned)(i % n) + 60);
		fill(b + i * PG, (unsigned)(i % n) + 60);
	}
	ASSERT_EQ(md__engine_register(&e, a, 2 * n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b + n * PG, n * PG, 0), 0);
	ASSERT(md__engine_region(&e, (uintptr_t)b, 2 * n * PG) == NULL);	/* two regions */
	ASSERT_EQ(md__engine_publish(&e, a, n, &slot), (int)n);
	ASSERT_EQ(md__engine_merge(&e, a + n * PG, n, slot), (int)n);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	ASSERT_EQ(md__engine_merge(&e, b + n * PG, n, slot), (int)n);
	ASSERT_EQ(e.pool.refs[slot], 4);

	/* The VMM's discard: first ours, then its own MADV_DONTNEED. */
	ASSERT_EQ(md__engine_discard(&e, b + 4 * PG, n * PG), 0);
	ASSERT_EQ(madvise(b + 4 * PG, n * PG, MADV_DONTNEED), 0);
	for (size_t i = 0; i < 2 * n; i++) {
		unsigned char want[PG];
		fill(want, (unsigned)(i % n) + 60);
		if (i >= 4 && i < 4 + n)
			ASSERT(md__page_is_zero(b + i * PG));
		else
			ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(memcmp(a + i * PG, want, PG) == 0);
	}
	/* b's pages 4-7 and 8-11 let go of slots 4-7 and 0-3: each once. */
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(e.pool.refs[slot + i], 3);

	int fd = memfd_create("image", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(write(fd, b, PG), PG);
	ASSERT_EQ(md__engine_merge_file(&e, b, 1, fd, 0, a, NULL, NULL), 1);
	ASSERT(memcmp(b, a, PG) == 0);
	ASSERT(pagemap(b) & PM_FILE);	/* the image's page */
	ASSERT_EQ(md__engine_discard(&e, b, PG), 0);
	ASSERT_EQ(madvise(b, PG, MADV_DONTNEED), 0);
	ASSERT(md__page_is_zero(b));
	ASSERT(!(pagemap(b) & PM_FILE));
	md__engine_fini(&e);
	close(fd);
	munmap(a, 2 * n * PG);
	munmap(b, 2 * n * PG);
	return 0;
}

/* What the VMM made a hole stays one: merges, publications and drops of
 * pages visited before a discard find the hole under write-protection and
 * leave it alone (reading it for the compare would fill it in behind the
 * VMM's back: a balloon's page, a page a postcopy destination waits for). */
TEST_IMPL(engine_leaves_vmm_holes)
{
	struct md__engine e;
	unsigned char *a = map_ram(4), *b = map_ram(4);
	uint32_t slot;

	engine_up(&e);
	for (size_t i = 0; i < 4; i++) {
		fill(a + i * PG, (unsigned)i + 90);
		fill(b + i * PG, (unsigned)i + 90);
	}
	ASSERT_EQ(md__engine_register(&e, a, 4 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, 4 * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, a, 4, &slot), 4);

	/* b's pages 0-2 discarded, as a balloon would, after the scanner saw
	 * them: a merge of 0-3, one of a single page, a publication, a zero
	 * drop and a fill merge all leave them holes. */
	ASSERT_EQ(md__engine_discard(&e, b, 3 * PG), 0);
	ASSERT_EQ(madvise(b, 3 * PG, MADV_DONTNEED), 0);
	ASSERT(md__engine_merge(&e, b, 4, slot) <= 0);
	ASSERT(md__engine_merge(&e, b + PG, 1, slot + 1) <= 0);
	ASSERT(md__engine_publish(&e, b + 2 * PG, 1, &(uint32_t){ 0 }) <= 0);
	ASSERT(md__engine_merge_zero(&e, b, 2) <= 0);
	ASSERT(md__engine_merge_fill(&e, b, 1, 0xccccccccccccccccull) <= 0);
	for (size_t i = 0; i < 3; i++)
		ASSERT(!(pagemap(b + i * PG) & PM_PRESENT));
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT(st.holes >= 5);
	/* Page 3 was no hole: it merges as ever. */
	ASSERT_EQ(md__engine_merge(&e, b + 3 * PG, 1, slot + 3), 1);
	ASSERT_EQ(pfn(b + 3 * PG), pfn(a + 3 * PG));

	md__engine_fini(&e);
	munmap(a, 4 * PG);
	munmap(b, 4 * PG);
	return 0;
}

/* Zero pages the engine dropped and the VMM then discarded are the VMM's
 * holes, not dropped pages any more: not counted as zero pages, and a
 * handover (which puts back the dropped ones still missing) leaves them
 * missing, as a userfaultfd for missing pages the VMM registers there
 * expects (a postcopy destination's pages still to come). */
TEST_IMPL(engine_discard_forgets_dropped)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *r = dropped_ram(&e, n);

	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), n);
	ASSERT_EQ(md__engine_discard(&e, r, 2 * PG), 0);
	ASSERT_EQ(madvise(r, 2 * PG, MADV_DONTNEED), 0);	/* the VMM's own */
	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), 2);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(md__dropped(&e.regions[0], i), i >= 2);
	ASSERT_EQ(md__engine_unregister(&e, r, n * PG, MD_UNREG_HANDOVER), 0);
	for (size_t i = 0; i < 2; i++)
		ASSERT(!(pagemap(r + i * PG) & PM_PRESENT));
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* The VmFlags line of the mapping that holds addr, from /proc/self/smaps. */
static void vm_flags(const void *addr, char *out, size_t size)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int in = 0;
	ASSERT(f != NULL);
	*out = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
		else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			snprintf(out, size, "%s", line + 8);
			break;
		}
	}
	fclose(f);
}

/* Memory already gone (md_agent_forget), with no memory to cut its
 * region: the region is given up whole, its rest made private, not left
 * registered over the hole, where the scanner would visit what the VMM
 * maps next. */
TEST_IMPL(engine_forget_short_of_memory_gives_up_whole)
{
	struct md__engine e;
	unsigned char *a = map_ram(3), *b = map_ram(3);
	uint32_t slot;
	engine_up(&e);
	for (size_t i = 0; i < 3; i++) {
		fill(a + i * PG, (unsigned)i + 20);
		fill(b + i * PG, (unsigned)i + 20);
	}
	ASSERT_EQ(md__engine_register(&e, a, 3 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, 3 * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, a, 3, &slot), 3);
	ASSERT_EQ(md__engine_merge(&e, b, 3, slot), 3);
	ASSERT_EQ(munmap(b + PG, PG), 0);
	md__engine_fail_slices = 1;
	ASSERT_EQ(md__engine_unregister(&e, b + PG, PG, MD_UNREG_GONE), 0);
	md__engine_fail_slices = 0;
	ASSERT(!md__engine_touches(&e, (uintptr_t)b, 3 * PG));
	unsigned char want[PG];
	fill(want, 20);
	ASSERT(memcmp(b, want, PG) == 0);
	ASSERT(!(pagemap(b) & PM_FILE));	/* private now */
	ASSERT_EQ(e.pool.refs[slot], 1);
	md__engine_fini(&e);
	munmap(a, 3 * PG);
	munmap(b, 3 * PG);
	return 0;
}

/* An unregister that cannot allocate what is left of a region (memory
 * short) leaves that region as it was: registered, its pages still merged
 * and referenced. So it leaves the other regions of the range, and once
 * there is memory again they go as ever. */
TEST_IMPL(engine_unregister_short_of_memory)
{
	struct md__engine e;
	struct md__engine_stats st;
	unsigned char *a = map_ram(3), *b = map_ram(5), want[PG];
	uint32_t slot;

	engine_up(&e);
	for (size_t i = 0; i < 3; i++)
		fill(a + i * PG, (unsigned)i + 20);
	for (size_t i = 0; i < 5; i++)
		fill(b + i * PG, (unsigned)(i % 3) + 20);
	ASSERT_EQ(md__engine_register(&e, a, 3 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, 3 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b + 3 * PG, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, a, 3, &slot), 3);
	ASSERT_EQ(md__engine_merge(&e, b, 3, slot), 3);
	ASSERT_EQ(md__engine_merge(&e, b + 3 * PG, 2, slot), 2);
	ASSERT_EQ(e.pool.refs[slot + 1], 3);

	/* b's page 1 cannot be cut out of its region. */
	md__engine_fail_slices = 1;
	ASSERT_EQ(md__engine_unregister(&e, b + PG, PG, MD_UNREG_MAPPED), -ENOMEM);
	ASSERT_EQ(md__engine_fail_slices, 0);
	struct md__eregion *r = md__engine_region(&e, (uintptr_t)b, 3 * PG);
	ASSERT(r != NULL);
	ASSERT_EQ(r->ref[1], MD_REF_FILE | (slot + 2));
	ASSERT_EQ(e.pool.refs[slot + 1], 3);
	ASSERT_EQ(pfn(b + PG), pfn(a + PG));	/* still merged */
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.unreg_failed, 1);

	/* A range over both of b's regions: neither goes (the second went
	 * while the first stayed, and the agent's records, kept whole for
	 * the call that fails, still named it). */
	md__engine_fail_slices = 1;
	ASSERT_EQ(md__engine_unregister(&e, b + PG, 4 * PG, MD_UNREG_MAPPED), -ENOMEM);
	ASSERT(md__engine_region(&e, (uintptr_t)b, 3 * PG) != NULL);
	ASSERT(md__engine_region(&e, (uintptr_t)b + 3 * PG, 2 * PG) != NULL);
	fill(want, 20);
	ASSERT(memcmp(b + 3 * PG, want, PG) == 0);	/* read: there to be looked at */
	ASSERT(pagemap(b + 3 * PG) & PM_FILE);	/* still merged */
	ASSERT_EQ(e.pool.refs[slot], 3);
	ASSERT_EQ(e.pool.refs[slot + 1], 3);
	ASSERT_EQ(e.pool.refs[slot + 2], 2);
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.unreg_failed, 5);	/* the registered pages of the range */

	/* Memory again. */
	ASSERT_EQ(md__engine_unregister(&e, b + PG, 4 * PG, MD_UNREG_MAPPED), 0);
	ASSERT(md__engine_region(&e, (uintptr_t)b, PG) != NULL);
	ASSERT(!md__engine_touches(&e, (uintptr_t)b + PG, 4 * PG));
	ASSERT_EQ(e.pool.refs[slot], 2);
	ASSERT_EQ(e.pool.refs[slot + 1], 1);
	ASSERT_EQ(e.pool.refs[slot + 2], 1);
	for (size_t i = 0; i < 5; i++) {
		fill(want, (unsigned)(i % 3) + 20);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(i == 0 || !(pagemap(b + i * PG) & PM_FILE));
	}
	md__engine_fini(&e);
	munmap(a, 3 * PG);
	munmap(b, 5 * PG);
	return 0;
}

struct unmap_arg {
	void *p;
	size_t len;
};

static int munmap_op(void *arg)
{
	struct unmap_arg *u = arg;
	return munmap(u->p, u->len) == 0 ? 0 : -errno;
}

/* The VMA budget set room mappings above the count now (in the estimate
 * too): the count. */
static uint64_t budget_room(struct md__engine *e, uint64_t room)
{
	uint64_t before = md__count_vmas();
	ASSERT(before > 0);
	e->vmas->est = before;
	e->vmas->counted_ns = 0;	/* the next refusal may count again */
	e->max_vmas = before + room;
	return before;
}

/* a and b, n pages each of the same content (page i: seed + i), both
 * registered, a's published: its first slot. */
static uint32_t twins_published(struct md__engine *e, unsigned char **a, unsigned char **b, size_t n,
				unsigned seed)
{
	uint32_t slot;
	*a = map_ram(n);
	*b = map_ram(n);
	for (size_t i = 0; i < n; i++) {
		fill(*a + i * PG, seed + (unsigned)i);
		fill(*b + i * PG, seed + (unsigned)i);
	}
	engine_up(e);
	ASSERT_EQ(md__engine_register(e, *a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(e, *b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(e, *a, n, &slot), (int)n);
	return slot;
}

/* Merged pages that cannot be made private when they leave (here
 * read-only: no write populates them) keep their pool references: dropped,
 * the last other user's going would free and punch the slots they still
 * map, and the VMM would read zeroes there. */
TEST_IMPL(engine_unregister_keeps_references_it_cannot_copy)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b, want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 250);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	ASSERT_EQ(mprotect(b, n * PG, PROT_READ), 0);
	ASSERT_EQ(md__engine_unregister(&e, b, n * PG, MD_UNREG_MAPPED), 0);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.refs_kept, n);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(e.pool.refs[slot + i], 2);
	ASSERT_EQ(md__engine_unregister(&e, a, n * PG, MD_UNREG_MAPPED), 0);
	md__engine_trim(&e);
	for (size_t i = 0; i < n; i++) {
		ASSERT_EQ(e.pool.refs[slot + i], 1);	/* b's, kept */
		fill(want, 250 + (unsigned)i);
		ASSERT(memcmp(a + i * PG, want, PG) == 0);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(pagemap(b + i * PG) & PM_FILE);	/* the pool's page still */
	}
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

static int fails_doing_nothing(void *arg)
{
	(void)arg;
	return -EINVAL;
}

/* A VMM's call that fails and leaves the memory as it was (all of it
 * still mapped) leaves it registered and merged, as without the call: not
 * made private and forgotten, never to be merged again. */
TEST_IMPL(engine_failed_call_keeps_memory_registered)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b;
	uint32_t slot = twins_published(&e, &a, &b, n, 310);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	ASSERT_EQ(md__engine_unmap(&e, b, n * PG, fails_doing_nothing, NULL, 0), -EINVAL);
	ASSERT(md__engine_touches(&e, (uintptr_t)b, n * PG));
	for (size_t i = 0; i < n; i++) {
		ASSERT_EQ(pfn(b + i * PG), pfn(a + i * PG));
		ASSERT_EQ(e.pool.refs[slot + i], 2);
	}
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* An unmap whose remains find no memory gives the regions it cut up whole,
 * their mapped parts made private: out of userfaultfd first, or a page a
 * failed thaw left protected makes the copy wait for the fault thread,
 * which waits for the engine's lock the unmap holds (the VMM's thread
 * hangs). */
TEST_IMPL(engine_unmap_short_of_memory_unprotects)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a, *b, want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 40);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	/* What a thaw that failed would leave (kernels whose WRITEPROTECT
	 * stops at a mapping's end). */
	ASSERT_EQ(md__uffd_register_wp(&e.uffd, (uintptr_t)b, n * PG), 0);
	ASSERT_EQ(md__uffd_wp(&e.uffd, (uintptr_t)(b + PG), PG, 1), 0);
	md__engine_fail_slices = 2;
	struct unmap_arg u = { b + 4 * PG, 2 * PG };
	ASSERT_EQ(md__engine_unmap(&e, u.p, u.len, munmap_op, &u, 0), 0);
	md__engine_fail_slices = 0;
	ASSERT(!md__engine_touches(&e, (uintptr_t)b, n * PG));	/* given up whole */
	for (size_t i = 0; i < n; i++) {
		if (i == 4 || i == 5)
			continue;
		fill(want, (unsigned)i + 40);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(!(pagemap(b + i * PG) & PM_FILE));	/* private copies */
		b[i * PG] ^= 1;	/* writable, no wait */
	}
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(e.pool.refs[slot + i], 1);	/* a's alone */
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, 4 * PG);
	munmap(b + 6 * PG, 2 * PG);
	return 0;
}

/* Given up whole, a region's parts still mapped get back the zero pages
 * the engine dropped, as memory unregistered otherwise does (a userfaultfd
 * for missing pages registered there later would wait for them), and
 * count as pages that could not be unregistered. */
TEST_IMPL(engine_unmap_short_of_memory_fills_dropped)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *b = dropped_ram(&e, n);

	md__engine_fail_slices = 2;
	struct unmap_arg u = { b + 3 * PG, 2 * PG };
	ASSERT_EQ(md__engine_unmap(&e, u.p, u.len, munmap_op, &u, 0), 0);
	md__engine_fail_slices = 0;
	ASSERT(!md__engine_touches(&e, (uintptr_t)b, n * PG));	/* given up whole */
	for (size_t i = 0; i < n; i++)
		if (i != 3 && i != 4)
			ASSERT(pagemap(b + i * PG) & PM_PRESENT);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.unreg_failed, n - 2);
	md__engine_fini(&e);
	munmap(b, 3 * PG);
	munmap(b + 5 * PG, 3 * PG);
	return 0;
}

/* An mmap(MAP_FIXED) over part of a region that fails after the kernel
 * unmapped the old pages (before Linux 6.7), memory short: what is gone is
 * forgotten all the same (its region given up whole), or the scanner would
 * visit what the VMM maps there next, never asked to merge. */
static int unmap_then_fail(void *arg)
{
	struct unmap_arg *u = arg;
	munmap(u->p, u->len);
	md__engine_fail_slices = 2;	/* after the remains were prepared */
	return -ENOMEM;
}

static int unmap_then_short(void *arg)
{
	struct unmap_arg *u = arg;
	md__engine_fail_slices = 2;	/* after the remains were prepared */
	return munmap(u->p, u->len) == 0 ? 0 : -errno;
}

TEST_IMPL(engine_failed_map_short_of_memory_forgets_gone)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *b = map_ram(n), want[PG];
	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(b + i * PG, (unsigned)i + 50);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	struct unmap_arg u = { b + 2 * PG, 2 * PG };
	ASSERT_EQ(md__engine_unmap(&e, u.p, u.len, unmap_then_fail, &u, 0), -ENOMEM);
	md__engine_fail_slices = 0;
	ASSERT(!md__engine_touches(&e, (uintptr_t)(b + 2 * PG), 2 * PG));
	for (size_t i = 0; i < n; i++) {
		if (i == 2 || i == 3)
			continue;
		fill(want, (unsigned)i + 50);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
	}
	/* An unmap that succeeds, memory short once the remains were
	 * prepared: it cuts the region with them, the rest still merged. */
	ASSERT_EQ(md__engine_register(&e, b + 4 * PG, 4 * PG, 0), 0);
	u = (struct unmap_arg){ b + 5 * PG, PG };
	ASSERT_EQ(md__engine_unmap(&e, u.p, u.len, unmap_then_short, &u, 0), 0);
	md__engine_fail_slices = 0;
	ASSERT(!md__engine_touches(&e, (uintptr_t)(b + 5 * PG), PG));
	ASSERT(md__engine_region(&e, (uintptr_t)(b + 4 * PG), PG) != NULL);
	ASSERT(md__engine_region(&e, (uintptr_t)(b + 6 * PG), 2 * PG) != NULL);
	md__engine_fini(&e);
	munmap(b, 2 * PG);
	munmap(b + 4 * PG, 4 * PG);
	return 0;
}

/* A page merged again with the slot it held (written since, not reaped
 * yet, written back the same): the new reference comes before the old one
 * goes, or the slot's last put frees it under the new mapping. */
TEST_IMPL(engine_merge_onto_own_slot)
{
	struct md__engine e;
	unsigned char *b = map_ram(1), want[PG];
	uint32_t slot;

	engine_up(&e);
	fill(b, 77);
	ASSERT_EQ(md__engine_register(&e, b, PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, b, 1, &slot), 1);
	ASSERT_EQ(e.pool.refs[slot], 1);
	b[0] ^= 1;	/* a private copy now, in the pool's mapping */
	b[0] ^= 1;
	ASSERT_EQ(md__engine_merge(&e, b, 1, slot), 1);
	ASSERT_EQ(e.pool.state[slot], MD_SLOT_LIVE);
	ASSERT_EQ(e.pool.refs[slot], 1);
	ASSERT(md__engine_lookup(&e, b, md__page_hash(b)) == (int64_t)slot);	/* still indexed */
	fill(want, 77);
	ASSERT(memcmp(b, want, PG) == 0);
	md__engine_fini(&e);
	munmap(b, PG);
	return 0;
}

static int map_fails_unmapped(void *arg)
{
	struct unmap_arg *u = arg;	/* as mmap_region() before Linux 6.7 may */
	munmap(u->p, u->len);
	return -ENOMEM;
}

static int map_left_anonymous(void *arg)
{
	struct unmap_arg *u = arg;	/* a read's mapping undone (lease lost) */
	void *m = mmap(u->p, u->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	return m == MAP_FAILED ? -errno : 1;
}

/* A read's image mapping that failed, or was undone: the engine makes again
 * what the kernel unmapped on the way, and lets go of the pool references
 * of pages no longer mapped from the pool. */
TEST_IMPL(engine_exclude_failed_map)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b, vec;
	uint32_t slot = twins_published(&e, &a, &b, n, 60);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	ASSERT_EQ(e.pool.refs[slot], 2);

	struct unmap_arg u = { b, 2 * PG };
	ASSERT_EQ(md__engine_exclude(&e, u.p, u.len, map_fails_unmapped, &u), -ENOMEM);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(mincore(b + i * PG, PG, &vec), 0);	/* mapped again */
	ASSERT_EQ(b[0], 0);	/* zeroes, for the copying read to fill */
	ASSERT_EQ(e.pool.refs[slot], 1);
	ASSERT_EQ(e.pool.refs[slot + 1], 1);
	ASSERT_EQ(e.pool.refs[slot + 2], 2);	/* untouched */

	u.p = b + 2 * PG;
	ASSERT_EQ(md__engine_exclude(&e, u.p, u.len, map_left_anonymous, &u), 1);
	ASSERT_EQ(e.pool.refs[slot + 2], 1);
	ASSERT_EQ(e.pool.refs[slot + 3], 1);
	struct md__eregion *r = md__engine_region(&e, (uintptr_t)b, n * PG);
	ASSERT(r != NULL);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(r->ref[i], 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* Advice taken back (MADV_DODUMP...) from a region covered whole: merges
 * there no longer give it to their mappings. Covered in part, the region
 * keeps it, and says so; but DONTFORK, which a region keeps only where all
 * of it has it (a fork must copy our mappings where it copies the rest),
 * given or taken back over part of it, it holds no more. */
TEST_IMPL(engine_advice_taken_back)
{
	struct md__engine e;
	unsigned char *b = map_ram(4);
	engine_up(&e);
	ASSERT_EQ(md__engine_register(&e, b, 4 * PG, MD_EADV_DONTFORK | MD_EADV_DONTDUMP), 0);
	struct md__eregion *r = md__engine_region(&e, (uintptr_t)b, 4 * PG);
	ASSERT(r != NULL);
	ASSERT_EQ(md__engine_advise(&e, b, 2 * PG, MD_EADV_DONTDUMP | MD_EADV_UNDO), 1);
	ASSERT_EQ(r->advice, MD_EADV_DONTFORK | MD_EADV_DONTDUMP);
	ASSERT_EQ(md__engine_advise(&e, b, 2 * PG, MD_EADV_DONTFORK | MD_EADV_UNDO), 0);
	ASSERT_EQ(r->advice, MD_EADV_DONTDUMP);
	ASSERT_EQ(md__engine_advise(&e, b, 2 * PG, MD_EADV_DONTFORK), 0);
	ASSERT_EQ(r->advice, MD_EADV_DONTDUMP);
	ASSERT_EQ(md__engine_advise(&e, b, 4 * PG, MD_EADV_DONTFORK), 0);
	ASSERT_EQ(r->advice, MD_EADV_DONTFORK | MD_EADV_DONTDUMP);
	ASSERT_EQ(md__engine_advise(&e, b, 4 * PG, MD_EADV_DONTFORK | MD_EADV_UNDO), 0);
	ASSERT_EQ(r->advice, MD_EADV_DONTDUMP);
	ASSERT_EQ(md__engine_advise(&e, b + PG, PG, MD_EADV_HUGEPAGE), 0);
	ASSERT_EQ(r->advice, MD_EADV_DONTDUMP | MD_EADV_HUGEPAGE);
	md__engine_fini(&e);
	munmap(b, 4 * PG);
	return 0;
}

struct image_arg {
	void *p;
	size_t len;
	int fd;
};

static int map_image(void *arg)
{
	struct image_arg *m = arg;	/* a read shared at read time */
	void *p = mmap(m->p, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, m->fd, 0);
	return p == MAP_FAILED ? -errno : 0;
}

/* A read maps an image over pages the scanner found free, between its
 * visit and the merge (its round trip to memdedupd): the merge and the
 * zero-page drop leave them alone, image pages. */
TEST_IMPL(engine_merge_leaves_image_mapped_since)
{
	struct md__engine e;
	const size_t n = 2;
	unsigned char *a, *b, zero[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 90);
	int fd = memfd_create("image", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(write(fd, a, PG), PG);	/* the pool page's content */
	memset(zero, 0, PG);
	ASSERT_EQ(write(fd, zero, PG), PG);

	struct image_arg m = { b, n * PG, fd };
	ASSERT_EQ(md__engine_exclude(&e, m.p, m.len, map_image, &m), 0);
	ASSERT_EQ(md__engine_merge(&e, b, 1, slot), -EBUSY);
	ASSERT_EQ(md__engine_merge_zero(&e, b + PG, 1), -EBUSY);
	struct md__eregion *r = md__engine_region(&e, (uintptr_t)b, n * PG);
	ASSERT(r != NULL);
	for (size_t i = 0; i < n; i++) {
		ASSERT_EQ(r->ref[i], MD_REF_IMAGE);
		ASSERT(memcmp(b + i * PG, i ? zero : a, PG) == 0);	/* read: there */
		ASSERT(pagemap(b + i * PG) & PM_FILE);
	}
	ASSERT_EQ(e.pool.refs[slot], 1);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.io_busy, 2);
	ASSERT_EQ(st.merged, 0);
	ASSERT_EQ(st.zero, 0);
	md__engine_fini(&e);
	close(fd);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A read that maps an image over zero pages the engine dropped, or whose
 * mapping was undone into fresh anonymous memory, leaves no mark of the
 * drop there (not counted as dropped): a handover puts marked pages back,
 * and would fill the VMM's own hole in the fresh memory. */
TEST_IMPL(engine_exclude_clears_dropped_marks)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *b = dropped_ram(&e, n);

	struct md__eregion *r = md__engine_region(&e, (uintptr_t)b, n * PG);
	ASSERT(r != NULL);
	ASSERT_EQ(md__engine_dropped_pages(r), n);
	int fd = memfd_create("image", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(ftruncate(fd, PG), 0);
	struct image_arg m = { b, PG, fd };
	ASSERT_EQ(md__engine_exclude(&e, m.p, m.len, map_image, &m), 0);
	struct unmap_arg u = { b + PG, PG };
	ASSERT_EQ(md__engine_exclude(&e, u.p, u.len, map_left_anonymous, &u), 1);
	ASSERT_EQ(md__engine_dropped_pages(r), n - 2);
	ASSERT_EQ(md__engine_unregister(&e, b, n * PG, MD_UNREG_HANDOVER), 0);
	ASSERT(!(pagemap(b + PG) & PM_PRESENT));	/* the VMM's hole */
	for (size_t i = 2; i < n; i++)
		ASSERT(pagemap(b + i * PG) & PM_PRESENT);
	md__engine_fini(&e);
	close(fd);
	munmap(b, n * PG);
	return 0;
}

/* Unregistering a range with an image mapped in its middle (a disk file's
 * pages, which no userfaultfd takes) fails whole in the kernel: then the
 * guest RAM on either side is unregistered mapping by mapping, not left
 * registered (a protection a failed thaw left would stop its writers). */
static int victim_file(void);
TEST_IMPL(engine_unregister_around_image_mapping)
{
	struct md__engine e;
	unsigned char *b = map_ram(3);
	int fd = victim_file();
	char fl[512];
	struct statfs fs;
	ASSERT_EQ(fstatfs(fd, &fs), 0);
	if (fs.f_type == TMPFS_MAGIC) {
		close(fd);
		munmap(b, 3 * PG);
		SKIP("/tmp is a tmpfs, whose pages a userfaultfd takes: the unregister does not fail");
	}
	engine_up(&e);
	memset(b, 1, 3 * PG);
	ASSERT_EQ(md__engine_register(&e, b, 3 * PG, 0), 0);
	struct image_arg m = { b + PG, PG, fd };
	ASSERT_EQ(md__engine_exclude(&e, m.p, m.len, map_image, &m), 0);
	ASSERT_EQ(b[PG], 0x50);	/* the file's first page */
	ASSERT(pagemap(b + PG) & PM_FILE);
	ASSERT_EQ(md__engine_unregister(&e, b, 3 * PG, MD_UNREG_GONE), 0);
	for (size_t i = 0; i < 3; i += 2) {
		vm_flags(b + i * PG, fl, sizeof(fl));
		ASSERT(strstr(fl, " uw") == NULL);
	}
	/* Advised again, around the image mapping, which no userfaultfd can
	 * cover: the others are registered, a mapping at a time. */
	ASSERT_EQ(md__engine_register(&e, b, 3 * PG, 0), 0);
	ASSERT(md__engine_touches(&e, (uintptr_t)b, 3 * PG));
	for (size_t i = 0; i < 3; i += 2) {
		vm_flags(b + i * PG, fl, sizeof(fl));
		ASSERT(strstr(fl, " uw") != NULL);
	}
	md__engine_fini(&e);
	close(fd);
	munmap(b, 3 * PG);
	return 0;
}

/* A write to p goes through at once: no page was left write-protected
 * (the fault thread counts a write that waited). */
static int write_did_not_wait(struct md__engine *e, unsigned char *p)
{
	unsigned char v = *p;
	*p = (unsigned char)(v ^ 1);
	ASSERT_EQ(*p, (unsigned char)(v ^ 1));
	struct md__engine_stats st;
	md__engine_stats(e, &st);
	ASSERT_EQ(st.wp_faults, 0);
	return 0;
}

/* Before Linux 6.4 (Debian 12's 6.1) a write-protect call covers one
 * mapping: a run across two failed whole, every pass, and never merged.
 * With calls over more than a page failing so, a run still merges (a page
 * at a time), one page that differs is given back to its writers. */
TEST_IMPL(engine_merge_page_by_page_before_6_4)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a, *b, want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 110);
	b[3 * PG + 5] ^= 1;
	md__uffd_one_page_only = 1;
	int merged = md__engine_merge(&e, b, n, slot);
	md__uffd_one_page_only = 0;
	ASSERT_EQ(merged, 7);
	for (size_t i = 0; i < n; i++) {
		fill(want, 110 + (unsigned)i);
		if (i == 3)
			want[5] ^= 1;
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(i == 3 ? pfn(b + i * PG) != pfn(a + i * PG) : pfn(b + i * PG) == pfn(a + i * PG));
	}
	ASSERT_EQ(write_did_not_wait(&e, b + 3 * PG + 5), 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* Un-protecting page by page (a call across mappings failed, as before
 * Linux 6.4) goes on past a page that fails: a writer of a page after it
 * would wait for ever. The first failure is what the call returns. */
TEST_IMPL(engine_unprotect_page_by_page_goes_past_failure)
{
	struct md__uffd u;
	int err = md__uffd_open(&u, 0, 0);
	if (err && uffd_unavailable())
		SKIP("userfaultfd unavailable (%s)", strerror(-err));
	ASSERT_EQ(err, 0);
	unsigned char *m = map_ram(3);
	memset(m, 7, 3 * PG);
	/* Pages 0 and 2 registered, the middle one not: it fails (ENOENT). */
	ASSERT_EQ(md__uffd_register_wp(&u, (uintptr_t)m, PG), 0);
	ASSERT_EQ(md__uffd_register_wp(&u, (uintptr_t)(m + 2 * PG), PG), 0);
	ASSERT_EQ(md__uffd_wp(&u, (uintptr_t)m, PG, 1), 0);
	ASSERT_EQ(md__uffd_wp(&u, (uintptr_t)(m + 2 * PG), PG, 1), 0);
	ASSERT(pagemap(m) & PM_UFFD_WP);
	ASSERT(pagemap(m + 2 * PG) & PM_UFFD_WP);
	/* Any other failure is said too: a freeze that took it for done
	 * would compare and map a page its writers can still write. */
	ASSERT_EQ(md__uffd_wp(&u, (uintptr_t)m + 1, PG, 1), -EINVAL);
	md__uffd_one_page_only = 1;
	err = md__uffd_wp(&u, (uintptr_t)m, 3 * PG, 0);
	md__uffd_one_page_only = 0;
	ASSERT_EQ(err, -ENOENT);
	ASSERT(!(pagemap(m) & PM_UFFD_WP));
	ASSERT(!(pagemap(m + 2 * PG) & PM_UFFD_WP));
	/* Protecting stops at the failure instead (the caller thaws). */
	md__uffd_one_page_only = 1;
	err = md__uffd_wp(&u, (uintptr_t)m, 3 * PG, 1);
	md__uffd_one_page_only = 0;
	ASSERT_EQ(err, -ENOENT);
	ASSERT(pagemap(m) & PM_UFFD_WP);
	ASSERT(!(pagemap(m + 2 * PG) & PM_UFFD_WP));
	md__uffd_close(&u);
	munmap(m, 3 * PG);
	return 0;
}

/* A region gone stale (its forgetting failed) may hold shared memory the
 * VMM mapped over part of it since: the freeze finds that mapping not
 * registered, and must neither register it nor merge over it (a private
 * page there would hide the other sharers' writes). The pages before it,
 * which the protect call reached first, are given back to their writers. */
TEST_IMPL(engine_merge_refuses_shared_memory_since)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b, want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 230);
	unsigned char *s = mmap(b + 2 * PG, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	ASSERT(s == b + 2 * PG);
	fill(s, 232);	/* equal to its slot's page */
	int merged = md__engine_merge(&e, b, n, slot);
	ASSERT_EQ(merged, -EPERM);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.merged, 0);
	for (size_t i = 0; i < n; i++) {
		fill(want, 230 + (unsigned)i);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(pfn(b + i * PG) != pfn(a + i * PG));
		ASSERT_EQ(e.pool.refs[slot + i], 1);
	}
	ASSERT_EQ(write_did_not_wait(&e, b + 5), 0);
	ASSERT_EQ(write_did_not_wait(&e, b + PG + 5), 0);
	ASSERT_EQ(write_did_not_wait(&e, b + 2 * PG + 5), 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* Frozen pages that cannot be read (the VMM made them PROT_NONE since the
 * visit) are a fallback, not pages that differed: left as they were,
 * counted as freeze_failed, not abandoned. */
TEST_IMPL(engine_unreadable_frozen_pages_fall_back)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b, want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 120);
	ASSERT_EQ(mprotect(b, n * PG, PROT_NONE), 0);
	ASSERT(md__engine_merge(&e, b, n, slot) <= 0);
	ASSERT_EQ(mprotect(b, n * PG, PROT_READ | PROT_WRITE), 0);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.merged, 0);
	ASSERT_EQ(st.abandoned, 0);
	ASSERT_EQ(st.freeze_failed, n);
	for (size_t i = 0; i < n; i++) {
		fill(want, 120 + (unsigned)i);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
	}
	ASSERT_EQ(write_did_not_wait(&e, b + 5), 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A merge of the n pages at b, filled from seed on, that fell back: not
 * read, so not pages that changed; each as it was, private, and writable
 * without waiting. */
static void fell_back(struct md__engine *e, unsigned char *b, size_t n, unsigned seed)
{
	struct md__engine_stats st;
	unsigned char want[PG];
	md__engine_stats(e, &st);
	ASSERT_EQ(st.abandoned, 0);
	ASSERT_EQ(st.freeze_failed, n);
	for (size_t i = 0; i < n; i++) {
		fill(want, seed + (unsigned)i);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(!(pagemap(b + i * PG) & PM_FILE));
	}
	ASSERT_EQ(write_did_not_wait(e, b + 5), 0);
}

/* What guest pages must equal to merge onto an image, when it cannot be
 * read (the agent's view of a tmpfs image over a hole, on a full tmpfs: a
 * SIGBUS; past a file's end here): the merge falls back, the guest's pages
 * stay as they were and writable. The compare read it straight, after the
 * copy through the kernel failed: SIGBUS in the scanner, the VMM gone. */
TEST_IMPL(engine_merge_file_unreadable_content_falls_back)
{
	struct md__engine e;
	const size_t n = 2;
	unsigned char *b = map_ram(n);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(b + i * PG, 140 + (unsigned)i);
	int fd = memfd_create("image", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(write(fd, b, n * PG), (ssize_t)(n * PG));
	/* A view of a file of nothing: every access a SIGBUS. */
	int empty = memfd_create("empty", MFD_CLOEXEC);
	ASSERT(empty >= 0);
	void *view = mmap(NULL, n * PG, PROT_READ, MAP_SHARED, empty, 0);
	ASSERT(view != MAP_FAILED);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_merge_file(&e, b, n, fd, 0, view, NULL, NULL), -EFAULT);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.merged_file, 0);
	fell_back(&e, b, n, 140);
	md__engine_fini(&e);
	munmap(view, n * PG);
	close(empty);
	close(fd);
	munmap(b, n * PG);
	return 0;
}

/* Pool pages that cannot be read for the compare (a slot's page gone
 * from under the engine's mapping): the merge falls back, the guest's
 * pages as they were, never compared through the pool's mapping (a
 * SIGBUS in the VMM). */
TEST_IMPL(engine_merge_slots_unreadable_pool_falls_back)
{
	struct md__engine e;
	const size_t n = 2;
	unsigned char *a = map_ram(n), *b = map_ram(n);
	uint32_t slot, slots[2];

	engine_up(&e);
	for (size_t i = 0; i < n; i++) {
		fill(a + i * PG, 150 + (unsigned)i);
		fill(b + i * PG, 150 + (unsigned)i);
	}
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, a, n, &slot), (int)n);
	slots[0] = slot;
	slots[1] = slot + 1;
	void *pp = (void *)md__engine_pool_page(&e, slot);
	ASSERT_EQ(mprotect(pp, n * PG, PROT_NONE), 0);
	ASSERT_EQ(md__engine_merge_slots(&e, b, n, slots, NULL), 0);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.merged, 0);
	fell_back(&e, b, n, 150);
	ASSERT_EQ(mprotect(pp, n * PG, PROT_READ), 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A run of side-by-side guest pages merged at once, each with its own slot:
 * copies of one page map that one slot; a page that differs, and one whose
 * slot is not live, stay as they were; the region's advice covers every
 * new mapping. */
TEST_IMPL(engine_merge_slots_run)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a = map_ram(2), *b = map_ram(n);
	unsigned char want[PG], done[8];
	unsigned seed[8] = { 1, 1, 1, 2, 1, 1, 1, 2 };
	uint32_t slot;

	engine_up(&e);
	fill(a, 1);
	fill(a + PG, 2);
	for (size_t i = 0; i < n; i++)
		fill(b + i * PG, seed[i]);
	b[4 * PG + 9] ^= 1;	/* page 4 differs by a bit */
	ASSERT_EQ(md__engine_register(&e, a, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, MD_EADV_DONTFORK | MD_EADV_DONTDUMP), 0);
	ASSERT_EQ(md__engine_publish(&e, a, 2, &slot), 2);
	uint32_t slots[8] = { slot, slot, slot, slot + 1, slot, slot, slot + 100, slot + 1 };
	ASSERT_EQ(md__engine_merge_slots(&e, b, n, slots, done), 6);

	for (size_t i = 0; i < n; i++) {
		fill(want, seed[i]);
		if (i == 4)
			want[9] ^= 1;
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		if (i == 4 || i == 6) {	/* unequal; slot not live */
			ASSERT_EQ(done[i], 0);
			ASSERT(!(pagemap(b + i * PG) & PM_FILE));
			ASSERT(pfn(b + i * PG) != pfn(a));
			continue;
		}
		ASSERT_EQ(done[i], 1);
		ASSERT_EQ(pfn(b + i * PG), pfn(a + (seed[i] - 1) * PG));
		char fl[512];
		vm_flags(b + i * PG, fl, sizeof(fl));
		ASSERT(strstr(fl, " dc") != NULL);	/* MADV_DONTFORK */
		ASSERT(strstr(fl, " dd") != NULL);	/* MADV_DONTDUMP */
	}
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.merged, 6);
	ASSERT_EQ(st.abandoned, 1);	/* page 4: it changed; page 6 was never tried */
	ASSERT_EQ(e.pool.refs[slot], 1 + 4);
	ASSERT_EQ(e.pool.refs[slot + 1], 1 + 2);

	/* A write to one copy is its own; its neighbours keep the slot. */
	uint64_t shared = pfn(b + PG);
	b[PG + 5] ^= 0xff;
	ASSERT(pfn(b + PG) != shared);
	ASSERT_EQ(pfn(b), shared);
	ASSERT_EQ(pfn(b + 2 * PG), shared);
	fill(want, 1);
	ASSERT(memcmp(b, want, PG) == 0);
	ASSERT(memcmp(a, want, PG) == 0);
	want[5] ^= 0xff;
	ASSERT(memcmp(b + PG, want, PG) == 0);
	md__engine_fini(&e);
	return 0;
}

TEST_IMPL(engine_zero_pages)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *r = map_ram(n), *z = map_ram(1);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		memset(r + i * PG, i == 2 ? 1 : 0, PG);	/* populated, all zero but page 2 */
	ASSERT(!dropped(r));
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__engine_merge_zero(&e, r, n), (int)n - 1);
	for (size_t i = 0; i < n; i++) {
		if (i == 2) {
			ASSERT(!dropped(r + i * PG));
			ASSERT_EQ(r[i * PG + 9], 1);
			continue;
		}
		ASSERT(dropped(r + i * PG));
		ASSERT(md__page_is_zero(r + i * PG));
	}
	ASSERT_EQ(write_did_not_wait(&e, r + 2 * PG + 9), 0);	/* not zero: given back */
	r[2 * PG + 9] = 1;
	/* A write after the drop gets a fresh page, the zero page stays zero. */
	r[0] = 7;
	ASSERT(!dropped(r));
	ASSERT(md__page_is_zero(z));

	/* A zero page inside a pool mapping (merged, then written zero) is
	 * replaced by anonymous memory, not by the pool page again. */
	unsigned char *p = map_ram(2);
	uint32_t slot;
	fill(p, 1);
	fill(p + PG, 2);
	ASSERT_EQ(md__engine_register(&e, p, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, p, 2, &slot), 2);
	memset(p, 0, PG);
	ASSERT_EQ(md__engine_merge_zero(&e, p, 1), 1);
	ASSERT(dropped(p));
	ASSERT(md__page_is_zero(p));
	ASSERT(!(pagemap(p) & PM_FILE));
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.zero, n);
	ASSERT_EQ(st.abandoned, 1);	/* page 2, not zero */
	md__engine_fini(&e);
	return 0;
}

/* A dropped zero page the guest wrote, merged onto a slot before a reap
 * found it written, is no dropped zero page any more (zero_pages). */
TEST_IMPL(engine_merge_of_dropped_page_undrops)
{
	struct md__engine e;
	const size_t n = 2;
	unsigned char *a, *b;
	uint32_t slot = twins_published(&e, &a, &b, n, 280);
	memset(b, 0, PG);
	ASSERT_EQ(md__engine_merge_zero(&e, b, 1), 1);
	const struct md__eregion *r = md__engine_region(&e, (uintptr_t)b, n * PG);
	ASSERT(r != NULL);
	ASSERT_EQ(md__engine_dropped_pages(r), 1);
	fill(b, 280);	/* written again, as a */
	ASSERT_EQ(md__engine_merge(&e, b, 1, slot), 1);
	ASSERT_EQ(pfn(b), pfn(a));
	ASSERT_EQ(md__engine_dropped_pages(r), 0);
	/* The same when the map fails and the page is made again with its
	 * content (remake_lost). */
	memset(b + PG, 0, PG);
	ASSERT_EQ(md__engine_merge_zero(&e, b + PG, 1), 1);
	ASSERT_EQ(md__engine_dropped_pages(r), 1);
	fill(b + PG, 281);
	md__engine_fail_maps = 1;
	ASSERT(md__engine_merge(&e, b + PG, 1, slot + 1) <= 0);
	ASSERT_EQ(md__engine_fail_maps, 0);
	unsigned char want[PG];
	fill(want, 281);
	ASSERT(memcmp(b + PG, want, PG) == 0);
	ASSERT_EQ(md__engine_dropped_pages(r), 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A merged page the guest wrote (a private copy in the pool's mapping),
 * reaped, then zeroed by the guest: dropped, it reads zeroes, not the
 * pool's page again (MADV_DONTNEED in a private file mapping shows the
 * file's page: the reap keeps the page marked as one in a file mapping). */
TEST_IMPL(engine_zero_after_break_not_pool_page)
{
	struct md__engine e;
	unsigned char *a, *b;
	uint32_t slot = twins_published(&e, &a, &b, 1, 330);
	ASSERT_EQ(md__engine_merge(&e, b, 1, slot), 1);
	b[5] ^= 1;
	ASSERT_EQ(md__engine_reap(&e), 1);
	memset(b, 0, PG);
	ASSERT_EQ(md__engine_merge_zero(&e, b, 1), 1);
	ASSERT(md__page_is_zero(b));
	ASSERT(!(pagemap(b) & PM_FILE));
	md__engine_fini(&e);
	munmap(a, PG);
	munmap(b, PG);
	return 0;
}

/* A dropped zero page the guest writes holds memory again: the reap finds
 * it there (it reads pagemap over the runs with dropped pages too, not
 * only the merged ones) and counts it no zero page any more at once, not
 * when the scanner's cursor next comes by (at the idle rate, half an hour
 * for a GiB; zero_pages and the profit counted it meanwhile). One only
 * read stays dropped where the kernel has a zero page (the read maps it);
 * without one, the read allocated a page of zeroes, which holds memory too. */
TEST_IMPL(engine_reap_finds_dropped_written)
{
	struct md__engine e;
	const size_t n = 1024 + 3;	/* two of the reap's runs, and a short one */
	unsigned char *r = map_ram(n);

	engine_up(&e);
	memset(r, 0, n * PG);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	for (size_t i = 0, k; i < n; i += k) {
		k = n - i < 256 ? n - i : 256;
		ASSERT_EQ(md__engine_merge_zero(&e, r + i * PG, k), (int)k);
	}
	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), n);
	for (size_t i = 600; i < 700; i++)
		r[i * PG + 5] = 1;
	r[(n - 1) * PG + 5] = 1;	/* in the last byte of the bitmap, a part of one */
	for (size_t i = 800; i < 850; i++)
		(void)*(volatile unsigned char *)(r + i * PG);
	size_t held = 101 + (test_zero_pfn() ? 0 : 50);
	ASSERT_EQ(md__engine_reap(&e), 0);	/* no merged page to find written */
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.undropped, held);
	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), n - held);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(md__dropped(&e.regions[0], i), (i < 600 || (i >= 700 && i < 800) || i >= 850 ||
							     (i >= 800 && held == 101)) && i != n - 1);
	/* Counted once. */
	ASSERT_EQ(md__engine_reap(&e), 0);
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.undropped, held);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* Mappings of the pool that lie in [lo, hi). */
static size_t pool_mappings(const void *lo, const void *hi)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	size_t n = 0;
	ASSERT(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strstr(line, "memdedup-pool") &&
		    a >= (uintptr_t)lo && b <= (uintptr_t)hi)
			n++;
	}
	fclose(f);
	return n;
}

/* Pages of one repeated word (not zero) map from a fill strip of the
 * engine's own pool: 16 slots of that word, a mapping per 16 pages side by
 * side, so page i and page i + 16 share a frame; a page that differs stays
 * as it was; a write gives the writer its copy only. */
TEST_IMPL(engine_fill_strips)
{
	struct md__engine e;
	const size_t n = 40;
	const uint64_t cc = 0xccccccccccccccccull;
	unsigned char *r = map_ram(n + 6);

	engine_up(&e);
	memset(r, 0xcc, n * PG);
	r[17 * PG + 100] = 1;			/* page 17 differs */
	for (size_t i = n; i < n + 6; i++)
		memset(r + i * PG, 0x11 * (int)(i - n + 1), PG);
	ASSERT_EQ(md__engine_register(&e, r, (n + 6) * PG, 0), 0);
	uint64_t word;
	ASSERT(md__page_fill(r, &word) && word == cc);
	ASSERT(!md__page_fill(r + 17 * PG, &word));
	ASSERT_EQ(md__engine_merge_fill(&e, r, n, 0), -EINVAL);
	ASSERT_EQ(md__engine_merge_fill(&e, r, n, cc), (int)n - 1);
	/* Runs 0-16 and 18-39: strips of 16, 1, 16 and 6 pages. */
	ASSERT_EQ(pfn(r), pfn(r + 16 * PG));
	ASSERT_EQ(pfn(r), pfn(r + 18 * PG));
	ASSERT_EQ(pfn(r + 5 * PG), pfn(r + 23 * PG));
	ASSERT(pfn(r) != pfn(r + PG));
	ASSERT(pagemap(r + 5 * PG) & PM_FILE);
	ASSERT(!(pagemap(r + 17 * PG) & PM_FILE));
	ASSERT_EQ(r[17 * PG + 100], 1);
	ASSERT(pool_mappings(r, r + n * PG) <= 4);
	for (size_t i = 0; i < n; i++)
		ASSERT(i == 17 || md__page_is_filled(r + i * PG, cc));
	/* A write to page 5 leaves page 23, on the same strip page, as it was;
	 * the reap gives back page 5's reference to that strip page only
	 * (counted for each page mapping it: 5, 23 and 39; the strip's own
	 * stays). */
	uint32_t s5 = MD_REF_SLOT(e.regions[0].ref[5]) - 1;
	ASSERT_EQ(MD_REF_SLOT(e.regions[0].ref[23]) - 1, s5);
	ASSERT_EQ(e.pool.refs[s5], 1 + 3);
	uint64_t shared = pfn(r + 23 * PG);
	r[5 * PG + 9] = 7;
	ASSERT(pfn(r + 5 * PG) != shared);
	ASSERT_EQ(pfn(r + 23 * PG), shared);
	ASSERT(md__page_is_filled(r + 23 * PG, cc));
	ASSERT_EQ(r[5 * PG + 9], 7);
	ASSERT_EQ(md__engine_reap(&e), 1);
	ASSERT_EQ(e.pool.refs[s5], 1 + 2);
	md__engine_trim(&e);
	ASSERT(md__page_is_filled(r + 23 * PG, cc));
	/* Three words more fill the engine's four strips; a fifth has none. */
	for (size_t i = n; i < n + 3; i++) {
		ASSERT(md__page_fill(r + i * PG, &word));
		ASSERT_EQ(md__engine_merge_fill(&e, r + i * PG, 1, word), 1);
	}
	ASSERT(md__page_fill(r + (n + 3) * PG, &word));
	ASSERT_EQ(md__engine_merge_fill(&e, r + (n + 3) * PG, 1, word), -ENOSPC);
	ASSERT(!(pagemap(r + (n + 3) * PG) & PM_FILE));
	ASSERT(md__page_is_filled(r + (n + 3) * PG, word));
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.filled, n - 1 + 3);
	ASSERT_EQ(st.abandoned, 1);	/* page 17 */
	md__engine_fini(&e);
	return 0;
}

/* Whether addr is mapped, asked without touching it. */
static int mapped(const void *addr)
{
	unsigned char vec;
	return mincore((void *)((uintptr_t)addr & ~(uintptr_t)(PG - 1)), PG, &vec) == 0;
}

/* The descriptor a merge onto a file maps by number, checked once the
 * mapping is made aside: replaced meanwhile (the VMM's dup2 onto it), the
 * guest's pages stay as they were, not the other file's, and writable. */
static int dup2_other_file(void *arg)
{
	int *fds = arg;	/* {the image's number, another file's} */
	ASSERT_EQ(dup2(fds[1], fds[0]), fds[0]);
	return 0;
}

static int descriptor_fine(void *arg)
{
	(void)arg;
	return 1;
}

TEST_IMPL(engine_merge_file_descriptor_replaced)
{
	struct md__engine e;
	unsigned char *b = map_ram(2), want[PG], other[PG];

	engine_up(&e);
	fill(want, 3);
	fill(other, 4);
	memcpy(b, want, PG);
	memcpy(b + PG, other, PG);
	int fds[2] = { memfd_create("image", MFD_CLOEXEC), memfd_create("other", MFD_CLOEXEC) };
	ASSERT(fds[0] >= 0 && fds[1] >= 0);
	ASSERT_EQ(write(fds[0], want, PG), PG);
	ASSERT_EQ(write(fds[1], other, PG), PG);
	ASSERT_EQ(md__engine_register(&e, b, 2 * PG, 0), 0);
	/* Mapped aside from the image, then the number shows the other file:
	 * a map by number after the check would have shown the guest that
	 * one's page (the mapping aside is the image's, and goes). */
	ASSERT_EQ(md__engine_merge_file(&e, b, 1, fds[0], 0, want, dup2_other_file, fds), -EBADF);
	ASSERT(memcmp(b, want, PG) == 0);
	ASSERT(!(pagemap(b) & PM_FILE));	/* read: present, and still anonymous */
	b[7] ^= 0xff;	/* thawed: the write goes through */
	ASSERT_EQ(b[7], (unsigned char)(want[7] ^ 0xff));
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.abandoned, 0);	/* equal: a fallback, not a page that changed */
	ASSERT_EQ(st.image_replaced, 1);
	ASSERT_EQ(st.merged_file, 0);
	/* A descriptor still fine: mapped from the file it names (the other
	 * one's now). */
	ASSERT_EQ(md__engine_merge_file(&e, b + PG, 1, fds[0], 0, other, descriptor_fine, NULL), 1);
	ASSERT(memcmp(b + PG, other, PG) == 0);
	ASSERT(pagemap(b + PG) & PM_FILE);
	md__engine_fini(&e);
	close(fds[0]);
	close(fds[1]);
	munmap(b, 2 * PG);
	return 0;
}

/* A file standing for one of the VMM's (a disk image) that it puts at the
 * number of a pool descriptor: pages bytes, page i all (0x50 + i). */
#define VICTIM_PAGES 64u
static int victim_file(void)
{
	unsigned char page[PG];
	int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	ASSERT(fd >= 0);
	for (unsigned i = 0; i < VICTIM_PAGES; i++) {
		memset(page, 0x50 + i, PG);
		ASSERT_EQ(pwrite(fd, page, PG, (off_t)i * PG), PG);
	}
	return fd;
}

/* 1 if the victim file holds what victim_file wrote, and nothing more. */
static int victim_intact(int fd)
{
	unsigned char page[PG];
	struct stat st;
	if (fstat(fd, &st) != 0 || st.st_size != (off_t)VICTIM_PAGES * PG)
		return 0;
	for (unsigned i = 0; i < VICTIM_PAGES; i++) {
		if (pread(fd, page, PG, (off_t)i * PG) != PG)
			return 0;
		for (size_t k = 0; k < PG; k++)
			if (page[k] != (unsigned char)(0x50 + i))
				return 0;
	}
	return 1;
}

/* 1 if a page holds one of the victim's pages. */
static int shows_victim(const unsigned char *p)
{
	for (size_t k = 1; k < PG; k++)
		if (p[k] != p[0])
			return 0;
	return p[0] >= 0x50 && p[0] < 0x50 + VICTIM_PAGES;
}

/* The engine's /proc/self/pagemap descriptor too: a file of the VMM's
 * put at its number had its bytes taken for page-table entries (or none
 * read: merges stopped). Opened again; the VMM's file never closed. */
TEST_IMPL(engine_pagemap_descriptor_replaced)
{
	struct md__engine e;
	unsigned char *m = map_ram(2);
	engine_up(&e);
	m[0] = 1;	/* page 0 there, page 1 not */
	int victim = victim_file(), fd = e.pagemap_fd;
	ASSERT(dup2(victim, fd) == fd);
	uint64_t pm[2] = { 0, 0 };
	ASSERT_EQ(md__engine_pagemap(&e, (uintptr_t)m, 2, pm), (ssize_t)sizeof(pm));
	ASSERT(pm[0] & PM_PRESENT);
	ASSERT(!(pm[1] & PM_PRESENT));
	ASSERT(e.pagemap_fd != fd);
	/* And again after every descriptor of it closed (close_range: the
	 * one kept for a chroot too) and the dentries dropped: procfs then
	 * gives the file another inode, which is ours all the same (review:
	 * the reopen was refused for good). */
	struct stat before, after;
	ASSERT(stat("/proc/self/pagemap", &before) == 0);
	int other = victim_file(), second = e.pagemap_fd;
	ASSERT(dup2(other, second) == second);
	DIR *d = opendir("/proc/self/fd");
	ASSERT(d);
	for (struct dirent *de; (de = readdir(d));) {
		char path[64], link[256];
		int n = atoi(de->d_name);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", n);
		ssize_t l = readlink(path, link, sizeof(link) - 1);
		if (l > 0 && n != dirfd(d) && (link[l] = 0, strstr(link, "/pagemap")))
			close(n);
	}
	closedir(d);
	int drop = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);	/* dentries and inodes */
	ASSERT(drop >= 0 && write(drop, "2", 1) == 1);
	close(drop);
	ASSERT(stat("/proc/self/pagemap", &after) == 0);
	if (after.st_ino == before.st_ino)
		printf("  the pagemap's inode was kept (%llu)\n", (unsigned long long)after.st_ino);
	memset(pm, 0xff, sizeof(pm));
	ASSERT_EQ(md__engine_pagemap(&e, (uintptr_t)m, 2, pm), (ssize_t)sizeof(pm));
	ASSERT(pm[0] & PM_PRESENT);
	ASSERT(!(pm[1] & PM_PRESENT));
	md__engine_fini(&e);
	ASSERT(victim_intact(fd));	/* still open at its number */
	ASSERT(victim_intact(second));
	close(fd);
	close(second);
	close(victim);
	close(other);
	munmap(m, 2 * PG);
	return 0;
}

/* The pool's descriptors are used by number: the VMM may close one and
 * open a file that gets the number, or put a file of its own there
 * (dup2). Merges then mapped that file's pages over guest pages, and
 * publications and punches wrote into it (and the compare after a
 * publication read past the pool's end: SIGBUS). Now each use checks the
 * descriptor is still the pool's; merging into that pool stops, and the
 * VMM's file is never written, mapped or closed. */
TEST_IMPL(engine_pool_descriptor_replaced)
{
	enum { N = 8 };
	struct md__engine e;
	struct md__engine_stats st;
	unsigned char *m = map_ram(3 * N), want[N * PG];
	uint32_t slot, other;

	/* The read-only descriptor (what merges map) replaced. */
	engine_up(&e);
	for (size_t i = 0; i < N; i++)
		fill(want + i * PG, (unsigned)(300 + i));
	memcpy(m, want, sizeof(want));
	memcpy(m + N * PG, want, sizeof(want));
	ASSERT_EQ(md__engine_register(&e, m, 3 * N * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, m, N, &slot), N);
	ASSERT_EQ(md__engine_merge(&e, m + N * PG, N, slot), N);
	ASSERT_EQ(pfn(m + N * PG), pfn(m));
	int victim = victim_file(), ro = e.pool.ro_fd;
	ASSERT(dup2(victim, ro) == ro);
	memcpy(m + 2 * N * PG, want, sizeof(want));	/* a third copy of each */
	ASSERT(md__engine_merge(&e, m + 2 * N * PG, N, slot) <= 0);
	for (size_t i = 0; i < 3 * N; i++) {
		ASSERT(!shows_victim(m + i * PG));
		ASSERT(memcmp(m + i * PG, want + (i % N) * PG, PG) == 0);
	}
	ASSERT(!(pagemap(m + 2 * N * PG) & PM_FILE));	/* left as it was */
	m[2 * N * PG] ^= 1;	/* thawed: the write goes through */
	ASSERT_EQ(m[2 * N * PG], want[0] ^ 1);
	m[2 * N * PG] ^= 1;
	/* Merging into that pool stops: no publication, no fill strip. */
	ASSERT(md__engine_publish(&e, m + 2 * N * PG, 1, &other) < 0);
	memset(m + 2 * N * PG, 0xcc, 2 * PG);
	ASSERT(md__engine_merge_fill(&e, m + 2 * N * PG, 2, 0xccccccccccccccccull) <= 0);
	md__engine_stats(&e, &st);
	ASSERT(st.pool_replaced >= N);
	ASSERT_EQ(st.merged, N);
	ASSERT_EQ(st.filled, 0);
	md__engine_fini(&e);
	ASSERT(victim_intact(ro));	/* still open at its number: not closed as ours */
	close(ro);
	ASSERT(victim_intact(victim));
	close(victim);

	/* The writable one (publications, punches) replaced. */
	engine_up(&e);
	memcpy(m, want, sizeof(want));
	memcpy(m + N * PG, want, sizeof(want));
	ASSERT_EQ(md__engine_register(&e, m, 3 * N * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, m, N, &slot), N);
	ASSERT_EQ(md__engine_merge(&e, m + N * PG, N, slot), N);
	victim = victim_file();
	int rw = e.pool.fd;
	ASSERT(dup2(victim, rw) == rw);
	/* Every reference goes: the slots are freed, and punched at the trim. */
	ASSERT_EQ(md__engine_unregister(&e, m, 2 * N * PG, MD_UNREG_MAPPED), 0);
	md__engine_trim(&e);
	ASSERT(victim_intact(victim));
	for (size_t i = 0; i < 2 * N; i++)
		ASSERT(memcmp(m + i * PG, want + (i % N) * PG, PG) == 0);
	memcpy(m + 2 * N * PG, want, PG);
	ASSERT(md__engine_publish(&e, m + 2 * N * PG, 1, &other) < 0);	/* no write, no compare past the end */
	ASSERT(memcmp(m + 2 * N * PG, want, PG) == 0);
	ASSERT(victim_intact(victim));
	md__engine_stats(&e, &st);
	ASSERT(st.pool_replaced >= 1);
	md__engine_fini(&e);
	ASSERT(victim_intact(rw));
	close(rw);
	close(victim);

	/* The writable one replaced with nothing punched since: the next
	 * publication is the first use to find it, before its write. */
	engine_up(&e);
	memcpy(m, want, sizeof(want));
	ASSERT_EQ(md__engine_register(&e, m, N * PG, 0), 0);
	victim = victim_file();
	rw = e.pool.fd;
	ASSERT(dup2(victim, rw) == rw);
	ASSERT(md__engine_publish(&e, m, N, &slot) < 0);
	ASSERT(victim_intact(victim));
	for (size_t i = 0; i < N; i++)
		ASSERT(memcmp(m + i * PG, want + i * PG, PG) == 0);
	m[0] ^= 1;	/* thawed */
	ASSERT_EQ(m[0], want[0] ^ 1);
	md__engine_stats(&e, &st);
	ASSERT(st.pool_replaced >= N);
	md__engine_fini(&e);
	ASSERT(victim_intact(rw));
	close(rw);
	close(victim);
	munmap(m, 3 * N * PG);
	return 0;
}

/* A fill strip made before the pool's read-only descriptor was replaced:
 * the next fill merge, its first use since, finds the descriptor another
 * file's before it maps the strip, as merges do. The VMM's file is never
 * what the guest reads, and the pages are given back to their writers. */
TEST_IMPL(engine_fill_pool_descriptor_replaced)
{
	struct md__engine e;
	struct md__engine_stats st;
	const uint64_t word = 0xccccccccccccccccull;
	unsigned char *m = map_ram(4);

	engine_up(&e);
	memset(m, 0xcc, 4 * PG);
	ASSERT_EQ(md__engine_register(&e, m, 4 * PG, 0), 0);
	ASSERT_EQ(md__engine_merge_fill(&e, m, 2, word), 2);
	int victim = victim_file(), ro = e.pool.ro_fd;
	ASSERT(dup2(victim, ro) == ro);
	ASSERT(md__engine_merge_fill(&e, m + 2 * PG, 2, word) <= 0);
	for (size_t k = 0; k < 4 * PG; k++)
		ASSERT_EQ(m[k], 0xcc);
	ASSERT(!(pagemap(m + 2 * PG) & PM_FILE));	/* left as it was */
	ASSERT_EQ(write_did_not_wait(&e, m + 3 * PG), 0);
	md__engine_stats(&e, &st);
	ASSERT(st.pool_replaced >= 2);
	ASSERT_EQ(st.filled, 2);
	md__engine_fini(&e);
	ASSERT(victim_intact(ro));
	close(ro);
	close(victim);
	munmap(m, 4 * PG);
	return 0;
}

/* The pool's descriptor replaced between the check that it is still the
 * pool's and the mapping that replaces guest pages (another VMM thread's
 * dup2, here at the hook in between): what the guest reads is the pool's
 * page, never the VMM's file. Mapped by number after the check, the
 * guest's pages showed the file (a review's test, racing a thread's dup2,
 * saw it within 0.15 s). The next merge finds the descriptor replaced. */
static int checked_victim = -1;
static void dup2_victim_once(int fd)
{
	if (checked_victim >= 0 && dup2(checked_victim, fd) == fd)
		checked_victim = -1;
}

TEST_IMPL(engine_pool_descriptor_replaced_after_check)
{
	enum { N = 4 };
	const uint64_t word = 0xccccccccccccccccull;
	struct md__engine e;
	struct md__engine_stats st;
	unsigned char *m = map_ram(3 * N), want[N * PG];
	uint32_t slot;

	/* A merge onto published pages. */
	engine_up(&e);
	for (size_t i = 0; i < N; i++)
		fill(want + i * PG, (unsigned)(500 + i));
	memcpy(m, want, sizeof(want));
	memcpy(m + N * PG, want, sizeof(want));
	memcpy(m + 2 * N * PG, want, sizeof(want));
	ASSERT_EQ(md__engine_register(&e, m, 3 * N * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, m, N, &slot), N);
	int victim = victim_file(), ro = e.pool.ro_fd;
	checked_victim = victim;
	md__engine_pool_checked_hook = dup2_victim_once;
	int merged = md__engine_merge(&e, m + N * PG, N, slot);
	md__engine_pool_checked_hook = NULL;
	ASSERT_EQ(checked_victim, -1);	/* the hook ran: the number is the victim's */
	ASSERT_EQ(merged, N);	/* mapped before the number changed: the pool's pages */
	for (size_t i = 0; i < N; i++) {
		ASSERT(!shows_victim(m + (N + i) * PG));
		ASSERT(memcmp(m + (N + i) * PG, want + i * PG, PG) == 0);
		ASSERT_EQ(pfn(m + (N + i) * PG), pfn(m + i * PG));
	}
	ASSERT(md__engine_merge(&e, m + 2 * N * PG, N, slot) <= 0);	/* found replaced */
	ASSERT(memcmp(m + 2 * N * PG, want, sizeof(want)) == 0);
	ASSERT(!(pagemap(m + 2 * N * PG) & PM_FILE));
	md__engine_stats(&e, &st);
	ASSERT(st.pool_replaced >= N);
	ASSERT_EQ(st.merged, N);
	md__engine_fini(&e);
	ASSERT(victim_intact(ro));	/* the VMM's file, at its number, never closed */
	close(ro);
	ASSERT(victim_intact(victim));
	close(victim);

	/* A fill merge (fill strips are mapped from the pool too). */
	engine_up(&e);
	memset(m, 0xcc, 2 * PG);
	ASSERT_EQ(md__engine_register(&e, m, 2 * PG, 0), 0);
	victim = victim_file();
	ro = e.pool.ro_fd;
	checked_victim = victim;
	md__engine_pool_checked_hook = dup2_victim_once;
	merged = md__engine_merge_fill(&e, m, 2, word);
	md__engine_pool_checked_hook = NULL;
	ASSERT_EQ(checked_victim, -1);
	ASSERT_EQ(merged, 2);
	for (size_t k = 0; k < 2 * PG; k++)
		ASSERT_EQ(m[k], 0xcc);
	ASSERT(pagemap(m) & PM_FILE);
	md__engine_fini(&e);
	ASSERT(victim_intact(ro));
	close(ro);
	close(victim);
	munmap(m, 3 * N * PG);
	return 0;
}

/* The same with memdedupd's pool: a merge never maps the file the VMM put
 * at the number of the pool's descriptor; the connection goes at the next
 * call, and the next connect brings a new descriptor to merge from. */
TEST_IMPL(engine_remote_pool_descriptor_replaced)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct md__engine_stats st;
	unsigned char *m = map_ram(2), want[PG];
	uint32_t slot;
	int status;

	engine_with_daemon(&e, &t, &rm, "victim");
	fill(want, 77);
	memcpy(m, want, PG);
	memcpy(m + PG, want, PG);
	ASSERT_EQ(md__engine_register(&e, m, 2 * PG, 0), 0);
	uint64_t h = md__page_hash(want), gen = rm.generation;
	const void *page = want;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, gen), 0);
	ASSERT_EQ(status, 0);
	uint32_t pin[2] = { slot, slot };
	ASSERT_EQ(md__remote_ref_n(&rm, pin, 2, +1, gen), 0);	/* one per page to merge */
	int victim = victim_file(), ro = rm.ro_fd;
	ASSERT(dup2(victim, ro) == ro);
	unsigned char done[1];
	ASSERT(md__engine_merge_slots(&e, m, 1, &slot, done) <= 0);
	ASSERT_EQ(done[0], 0);
	ASSERT(!shows_victim(m));
	ASSERT(memcmp(m, want, PG) == 0);
	ASSERT(!(pagemap(m) & PM_FILE));
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.pool_replaced, 1);
	/* The next call hangs up (what it gives back is owed to the next
	 * connection); the agent's thread connects again. */
	ASSERT_EQ(td_domains_int(&t, "references"), 3);
	ASSERT_EQ(md__engine_unref_n(&e, &slot, 1, gen), -ENOTCONN);
	ASSERT(!md__remote_connected(&rm));
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT_EQ(rm.generation, gen);
	ASSERT(rm.ro_fd != ro);
	ASSERT(victim_intact(ro));	/* not closed as the old pool's */
	ASSERT_EQ(md__engine_merge_slots(&e, m + PG, 1, &slot, done), 1);
	ASSERT_EQ(done[0], 1);
	ASSERT(memcmp(m + PG, want, PG) == 0);
	ASSERT_EQ(pfn(m + PG), pfn(md__engine_pool_page(&e, slot)));
	uint64_t ctr = 0;
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);	/* sends what was owed first */
	ASSERT_EQ(td_domains_int(&t, "references"), 2);	/* the publication's, m + PG's */
	md__engine_fini(&e);
	md__remote_fini(&rm);
	ASSERT(victim_intact(ro));
	ASSERT(victim_intact(victim));
	close(ro);
	close(victim);
	td_stop(&t);
	munmap(m, 2 * PG);
	return 0;
}

/* The connection to memdedupd is used by number too: the VMM putting a
 * socket of its own there (dup2), our next request went into it, the
 * VMM's bytes were taken as memdedupd's, and the hang-up shut down and
 * closed the VMM's socket (a review's test saw all three). Now the
 * number is looked at before each send and receive: found replaced, the
 * connection is over, nothing is sent or taken, and the number is left to
 * the VMM; the next connect makes a new one. */
TEST_IMPL(engine_remote_socket_replaced)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	char buf[64];
	int sv[2];
	engine_with_daemon(&e, &t, &rm, "sock");
	ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	int cfd = md__client_fd(rm.c);
	ASSERT_EQ(dup2(sv[0], cfd), cfd);
	ASSERT_EQ(write(sv[1], "VMM-PEER-DATA", 13), 13);	/* for the VMM to read */
	uint64_t ctr[4] = { 1, 2, 3, 4 };
	ASSERT(md__remote_report(&rm, ctr, 4) < 0);
	ASSERT_EQ(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
	ASSERT_EQ(read(sv[1], buf, sizeof(buf)), -1);	/* nothing of ours reached the VMM's peer */
	ASSERT_EQ(errno, EAGAIN);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);	/* a new connection */
	ASSERT(md__client_fd(rm.c) != cfd);
	ASSERT_EQ(md__remote_report(&rm, ctr, 4), 0);
	ASSERT_EQ(fcntl(cfd, F_SETFL, O_NONBLOCK), 0);
	ASSERT_EQ(read(cfd, buf, sizeof(buf)), 13);	/* the VMM's bytes, still its own */
	engine_with_daemon_down(&e, &rm, &t);
	ASSERT(fcntl(cfd, F_GETFD) >= 0);	/* not closed as ours */
	ASSERT_EQ(write(sv[1], "x", 1), 1);	/* nor shut down */
	close(cfd);
	close(sv[0]);
	close(sv[1]);
	return 0;
}

/* The scanner's wake-ups need no descriptor: an eventfd of its own, in the
 * VMM's table, could be closed by the VMM and its number given to an
 * eventfd or file of the VMM's, which pokes then wrote (8 bytes over a
 * file; an interrupt's or a kick's eventfd), sleeps read (the VMM's events
 * taken) or polled ready for good (a sleep spinning at a whole core), and
 * the scanner's free closed (reviews' tests saw each). A futex now: the
 * process's descriptors are the same before the scanner and after it
 * slept, was poked, stopped and freed. */
static int count_fds(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	ASSERT(d != NULL);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

TEST_IMPL(engine_scanner_holds_no_descriptor)
{
	struct md__engine e;
	struct md__scanner s;
	engine_up(&e);
	int before = count_fds();
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	ASSERT_EQ(count_fds(), before);
	s.sleep_ms = 5000;
	ASSERT_EQ(md__scanner_start(&s), 0);
	usleep(100000);
	double t0 = now();
	md__scanner_stop(&s);	/* ends its 5-s sleep at once */
	ASSERT(now() - t0 < 2.0);
	ASSERT_EQ(count_fds(), before);
	md__scanner_free(&s);
	ASSERT_EQ(count_fds(), before);
	md__engine_fini(&e);
	return 0;
}

/* A discard whose map fails in one run of pages goes on with the next:
 * the VMM is told it failed, with as much done as could be, each failed
 * map counted. A pool page the discard left showed the pool's content,
 * not zeroes. */
TEST_IMPL(engine_discard_goes_on_after_failed_map)
{
	struct md__engine e;
	const size_t n = 1024;	/* two runs of the discard */
	unsigned char *b = map_ram(n), zero[PG];
	uint32_t slot;

	engine_up(&e);
	memset(zero, 0, PG);
	fill(b, 1);
	fill(b + 512 * PG, 2);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, b, 1, &slot), 1);
	ASSERT_EQ(md__engine_publish(&e, b + 512 * PG, 1, &slot), 1);
	md__engine_fail_maps = 1;
	ASSERT_EQ(md__engine_discard(&e, b, n * PG), -ENOMEM);
	ASSERT_EQ(md__engine_fail_maps, 0);
	ASSERT(memcmp(b, zero, PG) == 0);		/* remade, as zeroes */
	ASSERT(memcmp(b + 512 * PG, zero, PG) == 0);	/* the next run done */
	ASSERT(!(pagemap(b + 512 * PG) & PM_FILE));
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.map_failed, 512);
	md__engine_fini(&e);
	munmap(b, n * PG);
	return 0;
}

/* Up to Linux 6.6 a failed MAP_FIXED mmap may have unmapped the pages it
 * was to replace (md__engine_fail_maps does so). A merge, a zero page
 * dropped in a pool mapping, an image merge and a fill merge then each map
 * the guest's pages again, with their content, registered and advised as
 * the region's; a write to them goes through, and they merge later. */
TEST_IMPL(engine_failed_map_remakes)
{
	struct md__engine e;
	const uint64_t cc = 0xccccccccccccccccull;
	unsigned char *a = map_ram(2), *b = map_ram(5);
	unsigned char want[5][PG];
	uint32_t slot, zslot;
	char fl[512];

	engine_up(&e);
	fill(a, 1);
	fill(a + PG, 2);
	fill(want[0], 1);
	fill(want[1], 2);
	memset(want[2], 0, PG);
	fill(want[3], 3);
	memset(want[4], 0xcc, PG);
	fill(b + 2 * PG, 9);	/* published, then written zero (engine_zero_pages) */
	memcpy(b, want[0], PG);
	memcpy(b + PG, want[1], PG);
	memcpy(b + 3 * PG, want[3], PG);
	memcpy(b + 4 * PG, want[4], PG);
	int fd = memfd_create("image", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(write(fd, want[3], PG), PG);
	ASSERT_EQ(md__engine_register(&e, a, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, 5 * PG, MD_EADV_DONTDUMP), 0);
	ASSERT_EQ(md__engine_publish(&e, a, 2, &slot), 2);
	ASSERT_EQ(md__engine_publish(&e, b + 2 * PG, 1, &zslot), 1);
	memset(b + 2 * PG, 0, PG);

	md__engine_fail_maps = 1;
	ASSERT_EQ(md__engine_merge(&e, b, 2, slot), 0);
	md__engine_fail_maps = 1;
	ASSERT_EQ(md__engine_merge_zero(&e, b + 2 * PG, 1), 0);
	md__engine_fail_maps = 1;
	ASSERT_EQ(md__engine_merge_file(&e, b + 3 * PG, 1, fd, 0, want[3], NULL, NULL), -ENOMEM);
	md__engine_fail_maps = 1;
	ASSERT_EQ(md__engine_merge_fill(&e, b + 4 * PG, 1, cc), 0);
	ASSERT_EQ(md__engine_fail_maps, 0);
	for (size_t i = 0; i < 5; i++) {
		ASSERT(mapped(b + i * PG));
		ASSERT(memcmp(b + i * PG, want[i], PG) == 0);
		ASSERT(!(pagemap(b + i * PG) & PM_FILE));
		vm_flags(b + i * PG, fl, sizeof(fl));
		ASSERT(strstr(fl, " dd") != NULL);	/* the region's advice */
		ASSERT(strstr(fl, " uw") != NULL);	/* registered for write-protect */
	}
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.map_failed, 5);	/* every page a failed map was to replace */
	ASSERT_EQ(st.map_remade, 5);
	ASSERT_EQ(e.pool.refs[zslot], 0);	/* the zero page let its slot go */

	/* Writes go through; a page whose content is back merges. */
	for (size_t i = 0; i < 5; i++) {
		b[i * PG + 7] ^= 0xff;
		ASSERT_EQ(b[i * PG + 7], (unsigned char)(want[i][7] ^ 0xff));
	}
	b[PG + 7] = want[1][7];
	ASSERT_EQ(md__engine_merge(&e, b + PG, 1, slot + 1), 1);
	ASSERT_EQ(pfn(b + PG), pfn(a + PG));
	ASSERT(memcmp(b + PG, want[1], PG) == 0);
	md__engine_fini(&e);
	close(fd);
	munmap(a, 2 * PG);
	munmap(b, 5 * PG);
	return 0;
}

/* The VMA budget counts the mappings again before refusing; a count that
 * fails (here: no descriptor left to open /proc/self/maps) must refuse, not
 * start the estimate again from nothing and map past the budget. */
TEST_IMPL(engine_vma_budget_when_uncounted)
{
	struct md__engine e;
	struct md__engine_stats st;
	const size_t n = 64;
	unsigned char *a, *b;
	uint32_t slot = twins_published(&e, &a, &b, n, 1);
	/* Counted now (AddressSanitizer's allocator maps as it goes): room
	 * for about twelve merges of a lone page, two mappings each. */
	uint64_t before = budget_room(&e, 24);

	/* Every descriptor taken: the budget's recount cannot open maps. */
	struct rlimit rl = { 256, 256 };
	ASSERT(setrlimit(RLIMIT_NOFILE, &rl) == 0);	/* this test's own process */
	int fds[4096], nfd = 0;
	while (nfd < 4096 && (fds[nfd] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
		nfd++;
	ASSERT(nfd < 4096);	/* the limit was reached */
	ASSERT_EQ(md__count_vmas(), 0);
	int merged = 0;
	for (size_t i = 0; i < n; i += 2)	/* every other page: a mapping each */
		merged += md__engine_merge(&e, b + i * PG, 1, slot + (uint32_t)i) == 1;
	while (nfd > 0)
		close(fds[--nfd]);

	md__engine_stats(&e, &st);
	/* Two mappings a merge, within what the budget left (the engine's
	 * own, its thread's stack, came after the first count: the budget
	 * is an estimate with room to spare by default). */
	ASSERT(merged > 0);
	ASSERT(merged <= (int)(e.max_vmas - before) / 2);
	ASSERT(st.budget_refused > 0);
	/* And no mapping beyond those merges. Not the process's whole count:
	 * AddressSanitizer's allocator maps more as it goes (1 run in 12
	 * passed the budget by more than 4 with its mappings). */
	ASSERT_EQ(pool_mappings(b, b + n * PG), (size_t)merged);
	for (size_t i = 0; i < n; i++) {
		unsigned char want[PG];
		fill(want, (unsigned)i + 1);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
	}
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* Memory none of whose mappings userfaultfd can protect (a private
 * mapping of a disk file as guest RAM) is refused: registered, every
 * freeze there failed and the scanner read it for nothing. Where some can
 * and another fails otherwise (here: the VMM's userfaultfd holds it), the
 * whole fails, and the mappings registered on the way are let go of: the
 * VMM's userfaultfd could not take them. */
TEST_IMPL(engine_register_refuses_unprotectable_memory)
{
	struct md__engine e;
	int fd = victim_file();
	engine_up(&e);
	unsigned char *f = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ASSERT(f != MAP_FAILED);
	ASSERT_EQ(md__engine_register(&e, f, 2 * PG, 0), -EINVAL);
	ASSERT(!md__engine_touches(&e, (uintptr_t)f, 2 * PG));

	unsigned char *m = map_ram(3);
	ASSERT(mmap(m + PG, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0) == m + PG);
	int vmm = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (vmm < 0)
		SKIP("no second userfaultfd here");
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { .range = { (uintptr_t)m + 2 * PG, PG }, .mode = UFFDIO_REGISTER_MODE_MISSING };
	ASSERT_EQ(ioctl(vmm, UFFDIO_API, &api), 0);
	ASSERT_EQ(ioctl(vmm, UFFDIO_REGISTER, &reg), 0);
	ASSERT(md__engine_register(&e, m, 3 * PG, 0) < 0);
	ASSERT(!md__engine_touches(&e, (uintptr_t)m, 3 * PG));
	char fl[512];
	vm_flags(m, fl, sizeof(fl));
	ASSERT(strstr(fl, " uw") == NULL);
	close(vmm);
	md__engine_fini(&e);
	munmap(m, 3 * PG);
	munmap(f, 2 * PG);
	close(fd);
	return 0;
}

/* A registration that cannot read which of its pages are a file's (here:
 * no descriptor left to open /proc/self/smaps) fails, and changes nothing:
 * once it took every page for a file's, and the freeze then let the
 * compare's read fill holes the VMM made in plain memory. */
TEST_IMPL(engine_register_unknown_mappings_fails)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a = map_ram(n);
	engine_up(&e);
	struct rlimit rl = { 256, 256 };
	ASSERT(setrlimit(RLIMIT_NOFILE, &rl) == 0);	/* this test's own process */
	int fds[4096], nfd = 0;
	while (nfd < 4096 && (fds[nfd] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
		nfd++;
	ASSERT(nfd < 4096);
	int err = md__engine_register(&e, a, n * PG, 0);
	while (nfd > 0)
		close(fds[--nfd]);
	ASSERT_EQ(err, -EMFILE);
	uintptr_t end;
	ASSERT(!md__engine_covers(&e, (uintptr_t)a, (uintptr_t)a + n * PG, &end));
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	return 0;
}

/* The budget is max_vmas itself: a merge whose two new mappings reach it
 * exactly goes on, one past it is refused (no count due to look again). */
TEST_IMPL(engine_vma_budget_reached_exactly)
{
	struct md__engine e;
	const size_t n = 2;
	unsigned char *a, *b;
	uint32_t slot = twins_published(&e, &a, &b, n, 270);
	e.vmas->counted_ns = (uint64_t)(now() * 1e9);
	e.max_vmas = md__vmas_estimate(e.vmas) + 1;
	ASSERT_EQ(md__engine_merge(&e, b, 1, slot), -ENOSPC);
	e.max_vmas = md__vmas_estimate(e.vmas) + 2;
	ASSERT_EQ(md__engine_merge(&e, b, 1, slot), 1);
	ASSERT_EQ(e.budget_counts, 0);
	ASSERT_EQ(pfn(b), pfn(a));
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A run whose pages between differ maps as many pieces: each within the
 * budget, not only the first (8 consecutive slots with pages 3 and 6
 * different are three mappings, four new VMAs). */
TEST_IMPL(engine_merge_run_within_budget)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a, *b, done[8];
	uint32_t slot = twins_published(&e, &a, &b, n, 80), slots[8];
	b[3 * PG + 5] ^= 1;
	b[6 * PG + 5] ^= 1;
	for (size_t i = 0; i < n; i++)
		slots[i] = slot + (uint32_t)i;
	budget_room(&e, 2);
	int merged = md__engine_merge_slots(&e, b, n, slots, done);
	printf("  merged %d, vmas %llu (budget %llu)\n", merged, (unsigned long long)md__count_vmas(),
	       (unsigned long long)e.max_vmas);
	ASSERT_EQ(merged, 3);
	ASSERT(done[0] && done[1] && done[2] && !done[4]);
	/* The merge's own mappings: the process's count also holds the
	 * allocator's and AddressSanitizer's, made meanwhile. */
	ASSERT_EQ(pool_mappings(b, b + n * PG), 1);
	unsigned char want[PG];
	for (size_t i = 0; i < n; i++) {
		fill(want, 80 + (unsigned)i);
		if (i == 3 || i == 6)
			want[5] ^= 1;
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
	}
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A zap that did not come through the engine (a raw madvise of the VMM's)
 * while a budget count runs, a run's pages frozen: the page it took
 * reads zeroes (the discard's), and the further mapping of the run, which
 * would have shown the pool's copy in its place, is not made. */
static unsigned char *zap_during_count;

static void zap_page(void)
{
	syscall(SYS_madvise, zap_during_count, PG, MADV_DONTNEED);
}

TEST_IMPL(engine_further_mapping_rechecks_protection)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a, *b, done[8];
	uint32_t slot = twins_published(&e, &a, &b, n, 90), slots[8];
	b[3 * PG + 5] ^= 1;	/* two runs: 0-2 and 4-7 */
	for (size_t i = 0; i < n; i++)
		slots[i] = slot + (uint32_t)i;
	/* Room for both runs' mappings, the estimate above the count: the
	 * first mapping fits it, the second counts (and fits then). */
	e.vmas->est = budget_room(&e, 4) + 2;
	zap_during_count = b + 5 * PG;
	md__engine_count_hook = zap_page;
	int merged = md__engine_merge_slots(&e, b, n, slots, done);
	md__engine_count_hook = NULL;
	ASSERT_EQ(merged, 3);
	ASSERT(done[0] && done[2] && !done[4] && !done[5]);
	unsigned char want[PG], zero[PG] = { 0 };
	ASSERT(memcmp(b + 5 * PG, zero, PG) == 0);
	for (size_t i = 0; i < n; i++) {
		fill(want, 90 + (unsigned)i);
		if (i == 3)
			want[5] ^= 1;
		ASSERT(i == 5 || memcmp(b + i * PG, want, PG) == 0);
	}
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* The VMM's raw zap of a page and its write into the fresh page, during a
 * budget count made for an earlier part of the run. */
static void zap_and_write(void)
{
	syscall(SYS_madvise, zap_during_count, PG, MADV_DONTNEED);
	memset(zap_during_count, 0x55, PG);
}

/* Every part of a run mapped after a count is checked again, not only the
 * part whose budget check counted: all of it was frozen through the
 * count. Three runs of pool pages (0-1, 3-4, 6-7): the second counts,
 * meanwhile the VMM zaps page 7 and writes it; the third fits without a
 * count, and once was mapped over the write. The same for a run of filled
 * pages mapped strip by strip. (A drop of zero pages checks the same way:
 * engine_zero_drop_rechecks_protection_after_count.) */
TEST_IMPL(engine_later_runs_recheck_protection)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a, *b, done[8], want[PG], written[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 100), slots[8];
	memset(written, 0x55, PG);
	b[2 * PG + 5] ^= 1;
	b[5 * PG + 5] ^= 1;
	for (size_t i = 0; i < n; i++)
		slots[i] = slot + (uint32_t)i;
	/* Room for the first mapping; the second counts (and fits then); the
	 * third fits the count's estimate. */
	e.vmas->est = budget_room(&e, 6) + 4;
	zap_during_count = b + 7 * PG;
	md__engine_count_hook = zap_and_write;
	int merged = md__engine_merge_slots(&e, b, n, slots, done);
	md__engine_count_hook = NULL;
	ASSERT_EQ(e.budget_counts, 1);
	ASSERT_EQ(merged, 4);
	ASSERT(done[0] && done[1] && done[3] && done[4] && !done[6] && !done[7]);
	ASSERT(memcmp(b + 7 * PG, written, PG) == 0);
	for (size_t i = 0; i < 7; i++) {
		fill(want, 100 + (unsigned)i);
		if (i == 2 || i == 5)
			want[5] ^= 1;
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
	}

	/* A run of one filled page repeated, mapped a strip (16 pages) at a
	 * time: the second strip counts, the third fits after it. */
	const size_t m = 3 * MD_FILL_STRIP;
	const uint64_t word = 0x0123456789abcdefull;
	unsigned char *c = map_ram(m), *hit = c + (2 * MD_FILL_STRIP + 3) * PG;
	for (size_t k = 0; k < m * PG / sizeof(word); k++)
		memcpy(c + k * sizeof(word), &word, sizeof(word));
	ASSERT_EQ(md__engine_register(&e, c, m * PG, 0), 0);
	e.vmas->est = budget_room(&e, 6) + 3;
	zap_during_count = hit;
	md__engine_count_hook = zap_and_write;
	int filled = md__engine_merge_fill(&e, c, m, word);
	md__engine_count_hook = NULL;
	ASSERT_EQ(e.budget_counts, 2);
	ASSERT_EQ(filled, (int)(2 * MD_FILL_STRIP));
	ASSERT(memcmp(hit, written, PG) == 0);
	for (size_t k = 0; k < m * PG / sizeof(word); k++)
		ASSERT(c + k * sizeof(word) >= hit && c + k * sizeof(word) < hit + PG ?
		       1 : memcmp(c + k * sizeof(word), &word, sizeof(word)) == 0);
	munmap(c, m * PG);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A drop of zero pages checks the same way: a run of them in a file
 * mapping counts (the pool's zero page at 0 and 2: each run a mapping of
 * its own), meanwhile the VMM zaps page 4, anonymous zeroes, and writes
 * it; dropped after the count without a look, the write was lost. */
TEST_IMPL(engine_zero_drop_rechecks_protection_after_count)
{
	struct md__engine e;
	const size_t n = 5;
	unsigned char *b = map_ram(n), written[PG], want[PG];
	uint32_t slot;

	engine_up(&e);
	memset(b, 0, n * PG);
	fill(b + PG, 240);
	fill(b + 3 * PG, 241);
	memset(written, 0x55, PG);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, b, 1, &slot), 1);
	ASSERT_EQ(md__engine_merge(&e, b + 2 * PG, 1, slot), 1);
	/* Room for the freeze's registration and the first run's mapping;
	 * the second run's counts (and fits then). */
	e.vmas->est = budget_room(&e, 15) + 10;
	zap_during_count = b + 4 * PG;
	md__engine_count_hook = zap_and_write;
	int dropped = md__engine_merge_zero(&e, b, n);
	md__engine_count_hook = NULL;
	ASSERT_EQ(e.budget_counts, 1);
	ASSERT(memcmp(b + 4 * PG, written, PG) == 0);
	ASSERT_EQ(dropped, 2);
	for (size_t i = 0; i < 4; i++) {
		memset(want, 0, PG);
		if (i == 1 || i == 3)
			fill(want, i == 1 ? 240 : 241);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
	}
	ASSERT_EQ(write_did_not_wait(&e, b + 4 * PG + 1), 0);
	md__engine_fini(&e);
	munmap(b, n * PG);
	return 0;
}

/* The same zap and write, once, between a merge's compare and its check
 * that the pages are still write-protected (md__engine_compare_hook), when
 * the pages just read hold zap_during_count. */
static void zap_and_write_at_compare(uintptr_t a, size_t n)
{
	uintptr_t p = (uintptr_t)zap_during_count;
	if (p < a || p >= a + n * PG)
		return;
	md__engine_compare_hook = NULL;
	zap_and_write();
}

/* The page the zap and write hit holds the write, in anonymous memory of
 * its own, and the merge that compared the page before counted it
 * abandoned. */
static int write_kept(struct md__engine *e, const unsigned char *p, uint64_t abandoned)
{
	unsigned char written[PG];
	struct md__engine_stats st;
	memset(written, 0x55, PG);
	ASSERT(md__engine_compare_hook == NULL);	/* the zap came */
	ASSERT(memcmp(p, written, PG) == 0);
	ASSERT(!(pagemap(p) & PM_FILE));
	md__engine_stats(e, &st);
	ASSERT(st.abandoned > abandoned);
	return 0;
}

static uint64_t abandoned_now(struct md__engine *e)
{
	struct md__engine_stats st;
	md__engine_stats(e, &st);
	return st.abandoned;
}

/* Every kind of merge checks that the pages it compared are still
 * write-protected before it maps: a zap that did not come through the
 * engine (the VMM's raw madvise) takes a page and its protection, and
 * the write after it goes to a fresh page that the compare never saw. A
 * merge onto pool slots, onto an image's pages, a drop of zero pages, a
 * run of one filled page, a publication: each leaves the write. */
TEST_IMPL(engine_merges_recheck_protection_after_compare)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b, done[4], want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 120), slots[4];
	for (size_t i = 0; i < n; i++)
		slots[i] = slot + (uint32_t)i;

	uint64_t ab = abandoned_now(&e);
	zap_during_count = b + PG;
	md__engine_compare_hook = zap_and_write_at_compare;
	ASSERT_EQ(md__engine_merge_slots(&e, b, n, slots, done), 0);
	ASSERT_EQ(write_kept(&e, b + PG, ab), 0);
	for (size_t i = 0; i < n; i++) {
		fill(want, 120 + (unsigned)i);
		ASSERT(i == 1 || memcmp(b + i * PG, want, PG) == 0);
	}

	/* Onto an image's page. */
	unsigned char *f = map_ram(1);
	int fd = memfd_create("image", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	fill(want, 130);
	memcpy(f, want, PG);
	ASSERT_EQ(write(fd, want, PG), PG);
	ASSERT_EQ(md__engine_register(&e, f, PG, 0), 0);
	ab = abandoned_now(&e);
	zap_during_count = f;
	md__engine_compare_hook = zap_and_write_at_compare;
	ASSERT_EQ(md__engine_merge_file(&e, f, 1, fd, 0, want, NULL, NULL), 0);
	ASSERT_EQ(write_kept(&e, f, ab), 0);

	/* Zero pages dropped. */
	unsigned char *z = map_ram(2);
	memset(z, 0, 2 * PG);
	ASSERT_EQ(md__engine_register(&e, z, 2 * PG, 0), 0);
	ab = abandoned_now(&e);
	zap_during_count = z;
	md__engine_compare_hook = zap_and_write_at_compare;
	ASSERT(md__engine_merge_zero(&e, z, 2) <= 0);
	ASSERT(!dropped(z));
	ASSERT_EQ(write_kept(&e, z, ab), 0);

	/* A run of one filled page. */
	const uint64_t word = 0x0123456789abcdefull;
	unsigned char *c = map_ram(MD_FILL_STRIP);
	for (size_t k = 0; k < MD_FILL_STRIP * PG / sizeof(word); k++)
		memcpy(c + k * sizeof(word), &word, sizeof(word));
	ASSERT_EQ(md__engine_register(&e, c, MD_FILL_STRIP * PG, 0), 0);
	ab = abandoned_now(&e);
	zap_during_count = c + 3 * PG;
	md__engine_compare_hook = zap_and_write_at_compare;
	ASSERT(md__engine_merge_fill(&e, c, MD_FILL_STRIP, word) <= 0);
	ASSERT_EQ(write_kept(&e, c + 3 * PG, ab), 0);

	/* A publication of the guest's pages into the pool. */
	unsigned char *q = map_ram(2);
	fill(q, 140);
	fill(q + PG, 141);
	ASSERT_EQ(md__engine_register(&e, q, 2 * PG, 0), 0);
	ab = abandoned_now(&e);
	zap_during_count = q;
	md__engine_compare_hook = zap_and_write_at_compare;
	ASSERT(md__engine_publish(&e, q, 2, &slot) < 0);
	ASSERT_EQ(write_kept(&e, q, ab), 0);
	fill(want, 141);
	ASSERT(memcmp(q + PG, want, PG) == 0);
	/* Its slots written and compared, then given up: freed, not left
	 * live with no reference (pool memory kept until the process goes). */
	for (uint32_t k = 0; k < e.pool.end; k++)
		ASSERT(e.pool.state[k] != MD_SLOT_LIVE || e.pool.refs[k] > 0);

	md__engine_fini(&e);
	close(fd);
	munmap(q, 2 * PG);
	munmap(c, MD_FILL_STRIP * PG);
	munmap(z, 2 * PG);
	munmap(f, PG);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* Mappings the agent makes (read-time sharing, in the estimate it shares
 * with the engine) leave the engine's merges less room: each side kept an
 * estimate of its own, and together they passed vm.max_map_count. */
TEST_IMPL(engine_vma_budget_shared)
{
	struct md__engine e;
	struct md__engine_stats st;
	struct md__vmas agent = { 0 };	/* the agent's estimate */
	struct md__engine_options o = { .vmas = &agent };
	const size_t n = 64;
	unsigned char *a = map_ram(n), *b = map_ram(n);
	for (size_t i = 0; i < n; i++) {
		fill(a + i * PG, 200 + (unsigned)i);
		fill(b + i * PG, 200 + (unsigned)i);
	}
	engine_up_with(&e, &o);
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	uint32_t slot;
	ASSERT_EQ(md__engine_publish(&e, a, n, &slot), (int)n);
	uint64_t before = budget_room(&e, 60);
	/* 20 one-page mappings of the agent's, apart (protections alternate),
	 * two VMAs each, as it reckons them. */
	unsigned char *ours = mmap(NULL, 40 * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(ours != MAP_FAILED);
	for (size_t i = 0; i < 40; i += 2) {
		ASSERT(mprotect(ours + i * PG, PG, PROT_READ | PROT_WRITE) == 0);
		md__vmas_add(&agent, 2);
	}
	int merged = 0;
	for (size_t i = 0; i < n; i += 2)	/* every other page: two VMAs each */
		merged += md__engine_merge(&e, b + i * PG, 1, slot + (uint32_t)i) == 1;
	md__engine_stats(&e, &st);
	printf("  merged %d, vmas %llu (budget %llu)\n", merged, (unsigned long long)md__count_vmas(),
	       (unsigned long long)e.max_vmas);
	ASSERT(merged > 0);
	ASSERT(merged <= 10);	/* (60 - 40) / 2 */
	ASSERT(st.budget_refused > 0);
	/* The merges' own mappings only, and the one estimate holds them with
	 * the agent's (39 more VMAs for its 20 pages): not the process's whole
	 * count, where AddressSanitizer's allocator maps as it goes. */
	ASSERT_EQ(pool_mappings(b, b + n * PG), (size_t)merged);
	ASSERT(md__vmas_estimate(&agent) + 4 >= before + 39 + 2 * (uint64_t)merged);
	for (size_t i = 0; i < n; i++) {
		unsigned char want[PG];
		fill(want, 200 + (unsigned)i);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
	}
	md__engine_fini(&e);
	munmap(ours, 40 * PG);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* At the budget, a run whose pages map from as many slots apart counts
 * the process's mappings once, not once for each further mapping while
 * the run's pages are frozen (a count reads all of /proc/self/maps: 110
 * ms at 55,000 mappings, seconds for a run, every writer waiting). */
TEST_IMPL(engine_merge_run_counts_once)
{
	struct md__engine e;
	const size_t n = 16;
	unsigned char *a, *b, done[16];
	uint32_t slot = twins_published(&e, &a, &b, n, 120), slots[8];
	for (size_t i = 0; i < 8; i++)
		slots[i] = slot + 2 * (uint32_t)i;	/* b's pages 0-7: a's 0, 2, 4...: eight mappings */
	for (size_t i = 0; i < 8; i++)
		memcpy(b + i * PG, a + 2 * i * PG, PG);
	budget_room(&e, 2);
	uint64_t counts = e.vmas->counts;
	int merged = md__engine_merge_slots(&e, b, 8, slots, done);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	printf("  merged %d, refused %llu, counts %llu\n", merged, (unsigned long long)st.budget_refused,
	       (unsigned long long)(e.vmas->counts - counts));
	ASSERT_EQ(merged, 1);
	ASSERT_EQ(st.budget_refused, 7);
	ASSERT(e.vmas->counts - counts <= 1);
	for (size_t i = 0; i < 8; i++)
		ASSERT(memcmp(b + i * PG, a + 2 * i * PG, PG) == 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* Fill pages a guest rewrote in part between the visit and the freeze
 * split a run into many mappings: each further one within the VMA budget,
 * not a guess up front by strips (review). */
TEST_IMPL(engine_fill_within_budget)
{
	struct md__engine e;
	const size_t n = 32;
	const uint64_t cc = 0xccccccccccccccccull;
	unsigned char *r = map_ram(n + 2);

	engine_up(&e);
	memset(r, 0xcc, (n + 2) * PG);
	for (size_t i = 1; i < n; i += 2)
		r[i * PG + 7] = 1;	/* every other page differs: 16 runs */
	ASSERT_EQ(md__engine_register(&e, r, (n + 2) * PG, 0), 0);
	/* The strip and the engine's buffers made first: their mappings
	 * (the allocator's, AddressSanitizer's) are not the merge's. */
	ASSERT_EQ(md__engine_merge_fill(&e, r + n * PG, 2, cc), 2);
	budget_room(&e, 6);
	int merged = md__engine_merge_fill(&e, r, n, cc);
	size_t maps = pool_mappings(r, r + n * PG);
	printf("  merged %d in %zu mappings, vmas %llu (budget %llu)\n", merged, maps,
	       (unsigned long long)md__count_vmas(), (unsigned long long)e.max_vmas);
	ASSERT(merged >= 1 && merged < 16);
	ASSERT(maps <= 3);	/* 2 VMAs each: 6 */
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.abandoned, n / 2);	/* those that differ, not those the budget refused */
	ASSERT(st.budget_refused >= 1);
	for (size_t i = 0; i < n; i++)
		ASSERT(i % 2 ? r[i * PG + 7] == 1 : md__page_is_filled(r + i * PG, cc));
	md__engine_fini(&e);
	munmap(r, (n + 2) * PG);
	return 0;
}

TEST_IMPL(engine_zero_drop_within_budget)
{
	/* Merged pages a guest wrote and then zeroed lie in the pool's
	 * mapping: dropping each splits it. Within the VMA budget, as merges
	 * are, or the page stays as it is. */
	struct md__engine e;
	struct md__engine_stats st;
	const size_t n = 64;
	unsigned char *a, *b;
	uint32_t slot = twins_published(&e, &a, &b, n, 1);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);	/* one mapping */
	uint64_t before = budget_room(&e, 20);
	for (size_t i = 0; i < n; i += 2)
		memset(b + i * PG, 0, PG);
	int dropped = 0;
	for (size_t i = 0; i < n; i += 2)
		dropped += md__engine_merge_zero(&e, b + i * PG, 1) == 1;
	md__engine_stats(&e, &st);
	printf("  dropped %d, refused %llu, vmas %llu (budget %llu, before %llu)\n", dropped,
	       (unsigned long long)st.budget_refused, (unsigned long long)md__count_vmas(),
	       (unsigned long long)e.max_vmas, (unsigned long long)before);
	ASSERT(dropped > 0);
	ASSERT(dropped <= 10);
	ASSERT(st.budget_refused > 0);
	ASSERT(md__count_vmas() <= e.max_vmas + 4);
	unsigned char want[PG];
	for (size_t i = 0; i < n; i++) {
		if (i % 2)
			fill(want, (unsigned)i + 1);
		else
			memset(want, 0, PG);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
	}
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A mapping the VMM put over guest RAM whose registration failed is
 * registered by the freeze, which splits it: within the VMA budget for a
 * zero page's drop in anonymous memory too, which reckons no mapping of
 * its own before (the page stays as it is). */
TEST_IMPL(engine_zero_drop_registers_within_budget)
{
	struct md__engine e;
	struct md__engine_stats st;
	const size_t n = 4;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	struct unmap_arg u = { r + PG, PG };
	ASSERT_EQ(map_left_anonymous(&u), 1);	/* not registered */
	memset(r, 0, n * PG);
	budget_room(&e, 1);
	ASSERT_EQ(md__engine_merge_zero(&e, r + PG, 1), -ENOSPC);
	md__engine_stats(&e, &st);
	ASSERT(st.budget_refused >= 1);
	ASSERT_EQ(st.zero, 0);
	ASSERT(pagemap(r + PG) & PM_PRESENT);
	budget_room(&e, 2);
	ASSERT_EQ(md__engine_merge_zero(&e, r + PG, 1), 1);
	ASSERT(!(pagemap(r + PG) & PM_PRESENT));
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

TEST_IMPL(engine_fork_after_merge)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a = map_ram(n), *b = map_ram(n);
	uint32_t slot;
	unsigned char want[PG];

	engine_up(&e);
	for (size_t i = 0; i < n; i++) {
		fill(a + i * PG, (unsigned)i + 10);
		fill(b + i * PG, (unsigned)i + 10);
	}
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, a, n, &slot), (int)n);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	uint64_t shared = pfn(b);

	int up[2], down[2];	/* child -> parent, parent -> child */
	ASSERT_EQ(pipe(up), 0);
	ASSERT_EQ(pipe(down), 0);
	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0) {
		/* The child sees the merged content on the same frame, and
		 * its writes (no userfaultfd in the child) are its own. */
		char ok = 1;
		fill(want, 10);
		ok &= memcmp(b, want, PG) == 0;
		ok &= pfn(b) == shared;
		b[0] ^= 0xff;
		a[1] ^= 0xff;
		ok &= b[0] == (unsigned char)(want[0] ^ 0xff);
		ok &= pfn(b) != shared;
		ok &= write(up[1], &ok, 1) == 1;
		/* Wait for the parent's write before checking isolation. */
		char c;
		ok &= read(down[0], &c, 1) == 1;
		fill(want, 11);
		ok &= memcmp(b + PG, want, PG) == 0;
		_exit(ok ? 0 : 1);
	}
	char ok = 0;
	ASSERT_EQ(read(up[0], &ok, 1), 1);
	ASSERT_EQ(ok, 1);
	/* The child's writes did not reach us. */
	fill(want, 10);
	ASSERT(memcmp(b, want, PG) == 0);
	ASSERT(memcmp(a, want, PG) == 0);
	ASSERT_EQ(pfn(b), shared);
	/* Our write (with the engine's userfaultfd live) is ours alone. */
	b[PG + 1] ^= 0xff;
	ASSERT_EQ(write(down[1], "x", 1), 1);
	int status;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	md__engine_fini(&e);
	return 0;
}

struct waiter {
	volatile unsigned char *p;
	unsigned char v;
	volatile int done;
};

static void *write_one(void *arg)
{
	struct waiter *w = arg;
	w->p[0] = w->v;
	__atomic_store_n(&w->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* The lock, step by step: a writer on a frozen page waits for the merge,
 * then writes into a private copy of the merged page (or the original). */
TEST_IMPL(engine_writer_waits_for_merge)
{
	struct md__engine e;
	unsigned char *a = map_ram(2), *b = map_ram(2);
	uint32_t slot;
	pthread_t t;

	engine_up(&e);
	fill(a, 1);
	fill(b, 1);
	fill(a + PG, 2);
	fill(b + PG, 2);
	ASSERT_EQ(md__engine_register(&e, a, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, a, 2, &slot), 2);

	for (int abandon = 0; abandon < 2; abandon++) {
		unsigned char *pg = b + (size_t)abandon * PG;
		struct waiter w = { pg + 11, 0xa5, 0 };
		/* Do by hand what md__engine_merge does, pausing inside. */
		pthread_mutex_lock(&e.lock);
		ASSERT_EQ(md__uffd_wp(&e.uffd, (uintptr_t)pg, PG, 1), 0);
		ASSERT(pagemap(pg) & PM_UFFD_WP);
		ASSERT_EQ(pthread_create(&t, NULL, write_one, &w), 0);
		usleep(100000);
		ASSERT_EQ(w.done, 0);	/* the writer waits */
		ASSERT(memcmp(pg, md__pool_page(&e.pool, slot + (uint32_t)abandon), PG) == 0);
		if (!abandon) {
			void *m = mmap(pg, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
				       e.pool.ro_fd, (off_t)slot * PG);
			ASSERT(m == pg);
		} else {
			/* md__engine_merge's abandon path: un-protect. */
			ASSERT_EQ(md__uffd_wp(&e.uffd, (uintptr_t)pg, PG, 0), 0);
		}
		usleep(20000);
		if (!abandon)
			ASSERT_EQ(w.done, 0);	/* still waits: the fault thread needs the lock */
		pthread_mutex_unlock(&e.lock);
		ASSERT_EQ(pthread_join(t, NULL), 0);
		ASSERT_EQ(w.done, 1);
		ASSERT_EQ(pg[11], 0xa5);
		unsigned char want[PG];
		fill(want, 1 + (unsigned)abandon);
		ASSERT(memcmp(md__pool_page(&e.pool, slot + (uint32_t)abandon), want, PG) == 0);
		ASSERT(memcmp(a + (size_t)abandon * PG, want, PG) == 0);
		want[11] = 0xa5;
		ASSERT(memcmp(pg, want, PG) == 0);
		ASSERT(!(pagemap(pg) & PM_FILE));	/* a private copy */
	}
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT(st.wp_faults >= 1);
	md__engine_fini(&e);
	return 0;
}

/* What MD_UNREG_HANDOVER does to a region of one page at p, by hand: the
 * test holds both locks. */
static void forget_region(struct md__engine *e, const unsigned char *p)
{
	ASSERT_EQ(md__uffd_unregister(&e->uffd, (uintptr_t)p, PG), 0);
	for (size_t i = 0; i < e->nregions; i++) {
		struct md__eregion *r = &e->regions[i];
		if (r->start != (uintptr_t)p)
			continue;
		ASSERT_EQ(r->end, (uintptr_t)p + PG);
		free(r->ref);
		free(r->hash);
		free(r->seen);
		free(r->dropped);
		*r = e->regions[--e->nregions];
		return;
	}
	ASSERT(0);
}

/* A write fault the fault thread read before the engine let the page go,
 * and the VMM write-protected it with its own userfaultfd (a background
 * snapshot), is resolved by a wake only: un-protecting through the
 * engine's userfaultfd would lift the VMM's protection (the kernel takes
 * any registration for its caller's), and the writes would go unseen into
 * the VMM's snapshot. */
TEST_IMPL(engine_fault_after_handover)
{
	struct md__engine e;
	struct md__uffd vmm;
	struct md__engine_stats st;
	unsigned char *m = map_ram(3), *p = m + PG;
	pthread_t t, t2;

	engine_up(&e);
	for (size_t i = 0; i < 3; i++)
		fill(m + i * PG, (unsigned)i + 70);
	for (size_t i = 0; i < 3; i++)
		ASSERT_EQ(md__engine_register(&e, m + i * PG, PG, 0), 0);
	ASSERT_EQ(md__uffd_open(&vmm, MD_UFFD_FEATURE_WP_UNPOPULATED, 0), 0);

	struct waiter w = { p + 11, 0xa5, 0 }, w2 = { p + 12, 0x5a, 0 };
	pthread_rwlock_wrlock(&e.regions_lock);
	pthread_mutex_lock(&e.lock);
	/* A merge froze p, a guest wrote it: the fault thread has the fault
	 * and waits for the lock. */
	ASSERT_EQ(md__uffd_wp(&e.uffd, (uintptr_t)p, PG, 1), 0);
	ASSERT_EQ(pthread_create(&t, NULL, write_one, &w), 0);
	while (__atomic_load_n(&e.uffd.faults, __ATOMIC_RELAXED) < 1)
		usleep(1000);
	/* The handover goes first, then the VMM registers p and
	 * write-protects it. */
	forget_region(&e, p);
	ASSERT_EQ(md__uffd_register_wp(&vmm, (uintptr_t)p, PG), 0);
	ASSERT_EQ(md__uffd_wp(&vmm, (uintptr_t)p, PG, 1), 0);
	pthread_mutex_unlock(&e.lock);
	pthread_rwlock_unlock(&e.regions_lock);
	do {
		usleep(1000);
		md__engine_stats(&e, &st);
	} while (st.wp_faults < 1);

	ASSERT(pagemap(p) & PM_UFFD_WP);
	/* The writer, woken, and the next one fault into the VMM's
	 * userfaultfd (a kernel that woke the first at the unregister let
	 * it write before the VMM's protection). */
	ASSERT_EQ(pthread_create(&t2, NULL, write_one, &w2), 0);
	struct pollfd pfd = { .fd = vmm.fd, .events = POLLIN };
	ASSERT_EQ(poll(&pfd, 1, 5000), 1);
	struct uffd_msg msg;
	ASSERT_EQ(read(vmm.fd, &msg, sizeof(msg)), sizeof(msg));
	ASSERT_EQ(msg.event, UFFD_EVENT_PAGEFAULT);
	ASSERT(msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP);
	ASSERT_EQ(msg.arg.pagefault.address & ~(uint64_t)(PG - 1), (uintptr_t)p);
	ASSERT(!(w.done && w2.done));
	ASSERT_EQ(md__uffd_wp(&vmm, (uintptr_t)p, PG, 0), 0);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(pthread_join(t2, NULL), 0);
	ASSERT_EQ(p[11], 0xa5);
	ASSERT_EQ(p[12], 0x5a);
	md__uffd_close(&vmm);
	md__engine_fini(&e);
	munmap(m, 3 * PG);
	return 0;
}

/* Features are negotiated: one the kernel lacks (bit 62, which no kernel
 * has) is left out of those asked for, not a failure, unless needed, which
 * fails the open and leaves nothing open. */
TEST_IMPL(engine_uffd_features_negotiated)
{
	const uint64_t none = 1ull << 62;
	struct md__uffd u;
	int err = md__uffd_open(&u, none | MD_UFFD_FEATURE_WP_UNPOPULATED, 0);
	if (err && uffd_unavailable())
		SKIP("userfaultfd unavailable (%s)", strerror(-err));
	ASSERT_EQ(err, 0);
	ASSERT(!(u.features & none));
	md__uffd_close(&u);
	ASSERT_EQ(md__uffd_open(&u, 0, none), -ENOTSUP);
	ASSERT_EQ(u.fd, -1);
	ASSERT_EQ(u.stop_fd, -1);
	return 0;
}

/* The kernel's answer to UFFDIO_REGISTER, without write-protection among
 * the ioctls it allows for the range (as for memory a kernel cannot
 * write-protect). */
static long register_without_wp_syscall(long nr, ...)
{
	SYSCALL_ARGS(nr, a);
	long r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	if (nr == SYS_ioctl && (unsigned long)a[1] == UFFDIO_REGISTER && r == 0)
		((struct uffdio_register *)a[2])->ioctls &= ~(1ull << _UFFDIO_WRITEPROTECT);
	return r;
}

/* A range the kernel registers but cannot write-protect is refused
 * (-ENOTSUP: no merge could freeze its pages) and not left registered to
 * us: another userfaultfd, the VMM's, can still register it. */
TEST_IMPL(engine_uffd_register_needs_writeprotect)
{
	struct md__uffd u, vmm;
	int err = md__uffd_open(&u, 0, 0);
	if (err && uffd_unavailable())
		SKIP("userfaultfd unavailable (%s)", strerror(-err));
	ASSERT_EQ(err, 0);
	ASSERT_EQ(md__uffd_open(&vmm, 0, 0), 0);
	char *m = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	md__libc_syscall = register_without_wp_syscall;
	err = md__uffd_register_wp(&u, (uintptr_t)m, 4 * PG);
	md__libc_syscall = NULL;
	ASSERT_EQ(err, -ENOTSUP);
	ASSERT_EQ(md__uffd_register_wp(&vmm, (uintptr_t)m, 4 * PG), 0);
	md__uffd_close(&vmm);
	md__uffd_close(&u);
	munmap(m, 4 * PG);
	return 0;
}

/* UFFDIO_WRITEPROTECT answers EAGAIN the first wp_busy times (the mm
 * changing under it: mmap_changing), then as the kernel does. */
static int wp_busy;
static long wp_busy_syscall(long nr, ...)
{
	SYSCALL_ARGS(nr, a);
	if (nr == SYS_ioctl && (unsigned long)a[1] == UFFDIO_WRITEPROTECT && wp_busy > 0) {
		wp_busy--;
		errno = EAGAIN;
		return -1;
	}
	return syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* A write-protect the kernel answers EAGAIN (another thread's mmap or
 * fork under way) is tried again: a freeze that gave up at once would
 * fail merges for nothing, and a thaw would leave a writer waiting. A
 * kernel that never stops answering so gets -EAGAIN, after 1,000 tries,
 * not a thread spinning for ever. */
TEST_IMPL(engine_uffd_wp_tried_again_while_mm_changes)
{
	struct md__uffd u;
	int err = md__uffd_open(&u, 0, 0);
	if (err && uffd_unavailable())
		SKIP("userfaultfd unavailable (%s)", strerror(-err));
	ASSERT_EQ(err, 0);
	char *m = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	m[0] = 1;
	ASSERT_EQ(md__uffd_register_wp(&u, (uintptr_t)m, PG), 0);
	md__libc_syscall = wp_busy_syscall;
	wp_busy = 5;
	int protect = md__uffd_wp(&u, (uintptr_t)m, PG, 1);
	int left = wp_busy;
	wp_busy = 999;
	int thaw = md__uffd_wp(&u, (uintptr_t)m, PG, 0);
	wp_busy = 1000;
	int never = md__uffd_wp(&u, (uintptr_t)m, PG, 1);
	int after = wp_busy;
	md__libc_syscall = NULL;
	ASSERT_EQ(protect, 0);
	ASSERT_EQ(left, 0);
	ASSERT_EQ(thaw, 0);
	ASSERT_EQ(never, -EAGAIN);
	ASSERT_EQ(after, 0);
	md__uffd_close(&u);
	munmap(m, PG);
	return 0;
}

/* Where the userfaultfd system call is refused (a seccomp filter, or
 * vm.unprivileged_userfaultfd=0) the device /dev/userfaultfd, whose
 * permissions the administrator chose, still gives one. */
TEST_IMPL(engine_uffd_device_when_syscall_refused)
{
	if (access("/dev/userfaultfd", R_OK | W_OK) != 0)
		SKIP("no usable /dev/userfaultfd here (Linux 6.1, or its mode): %s", strerror(errno));
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_userfaultfd, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
	ASSERT(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
	ASSERT(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0);
	ASSERT(syscall(SYS_userfaultfd, O_CLOEXEC) < 0 && errno == EPERM);
	ASSERT_EQ(md__uffd_usable(), 0);
	struct md__uffd u;
	ASSERT_EQ(md__uffd_open(&u, 0, 0), 0);
	char *m = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	m[0] = 1;
	ASSERT_EQ(md__uffd_register_wp(&u, (uintptr_t)m, PG), 0);
	ASSERT_EQ(md__uffd_wp(&u, (uintptr_t)m, PG, 1), 0);
	md__uffd_close(&u);
	munmap(m, PG);
	return 0;
}

/* md__uffd_close waits for a fault being resolved: the engine it resolves
 * with is freed right after the close. The callback waits a while for the
 * close to return; one that did not wait for it returns at once. */
struct close_wait {
	struct md__uffd u;
	int in_fn, closed, closed_seen, fn_done;
	unsigned char *page;
};
static void close_wait_fault(void *arg, uintptr_t addr)
{
	struct close_wait *w = arg;
	__atomic_store_n(&w->in_fn, 1, __ATOMIC_RELEASE);
	/* Nothing to wait for when the close is right: bounded. */
	for (int i = 0; i < 500 && !__atomic_load_n(&w->closed, __ATOMIC_ACQUIRE); i++)
		usleep(1000);
	w->closed_seen = __atomic_load_n(&w->closed, __ATOMIC_ACQUIRE);
	md__uffd_wp(&w->u, addr, PG, 0);
	__atomic_store_n(&w->fn_done, 1, __ATOMIC_RELEASE);
}
static void *close_wait_write(void *arg)
{
	struct close_wait *w = arg;
	*(volatile unsigned char *)w->page = 1;
	return NULL;
}
static void *close_wait_close(void *arg)
{
	struct close_wait *w = arg;
	md__uffd_close(&w->u);
	__atomic_store_n(&w->closed, 1, __ATOMIC_RELEASE);
	return NULL;
}
TEST_IMPL(engine_uffd_close_waits_for_fault)
{
	static struct close_wait w;
	int err = md__uffd_open(&w.u, 0, 0);
	if (err && uffd_unavailable())
		SKIP("userfaultfd unavailable (%s)", strerror(-err));
	ASSERT_EQ(err, 0);
	w.page = map_ram(1);
	w.page[0] = 7;
	ASSERT_EQ(md__uffd_register_wp(&w.u, (uintptr_t)w.page, PG), 0);
	ASSERT_EQ(md__uffd_wp(&w.u, (uintptr_t)w.page, PG, 1), 0);
	ASSERT_EQ(md__uffd_start(&w.u, close_wait_fault, &w), 0);
	pthread_t writer, closer;
	ASSERT_EQ(pthread_create(&writer, NULL, close_wait_write, &w), 0);
	while (!__atomic_load_n(&w.in_fn, __ATOMIC_ACQUIRE))
		usleep(1000);
	ASSERT_EQ(pthread_create(&closer, NULL, close_wait_close, &w), 0);
	ASSERT_EQ(pthread_join(closer, NULL), 0);
	ASSERT_EQ(pthread_join(writer, NULL), 0);
	/* Done before the close returned, if it waited as it must. */
	while (!__atomic_load_n(&w.fn_done, __ATOMIC_ACQUIRE))
		usleep(1000);
	ASSERT_EQ(w.closed_seen, 0);
	ASSERT_EQ(w.page[0], 1);
	munmap(w.page, PG);
	return 0;
}

/* The userfaultfd and the eventfd that stops its thread are used by
 * number: the VMM putting a file of its own at the eventfd's, the thread
 * found it readable and ended, and a writer of a page frozen after waited
 * for ever (a guest's vCPU); at the userfaultfd's, the thread read the
 * file (its bytes gone, its position moved). Each is looked at before it
 * is read now, and neither number is closed as ours. */
static void unprotect_fault(void *arg, uintptr_t addr)
{
	md__uffd_wp(arg, addr, PG, 0);
}

static void *close_uffd(void *arg)
{
	md__uffd_close(arg);
	return NULL;
}

static void *write_page(void *arg)
{
	*(volatile unsigned char *)arg = 9;
	return NULL;
}

TEST_IMPL(engine_uffd_descriptors_replaced)
{
	static struct md__uffd u;
	int err = md__uffd_open(&u, 0, 0);
	if (err && uffd_unavailable())
		SKIP("userfaultfd unavailable (%s)", strerror(-err));
	ASSERT_EQ(err, 0);
	unsigned char *page = map_ram(1);
	page[0] = 7;
	ASSERT_EQ(md__uffd_register_wp(&u, (uintptr_t)page, PG), 0);
	ASSERT_EQ(md__uffd_start(&u, unprotect_fault, &u), 0);
	int victim = victim_file(), sfd = u.stop_fd;
	ASSERT_EQ(dup2(victim, sfd), sfd);
	usleep(100000);	/* the thread looks at it */
	ASSERT_EQ(md__uffd_wp(&u, (uintptr_t)page, PG, 1), 0);
	pthread_t writer;
	ASSERT_EQ(pthread_create(&writer, NULL, write_page, page), 0);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	ASSERT_EQ(pthread_timedjoin_np(writer, NULL, &until), 0);	/* the fault was resolved */
	ASSERT_EQ(page[0], 9);
	md__uffd_close(&u);
	ASSERT(fcntl(sfd, F_GETFD) >= 0);	/* not closed as ours */
	ASSERT(victim_intact(sfd));
	close(sfd);

	ASSERT_EQ(md__uffd_open(&u, 0, 0), 0);
	ASSERT_EQ(md__uffd_register_wp(&u, (uintptr_t)page, PG), 0);
	ASSERT_EQ(md__uffd_start(&u, unprotect_fault, &u), 0);
	int ufd = u.fd;
	ASSERT_EQ(dup2(victim, ufd), ufd);	/* ours closed: the kernel drops its registration */
	ASSERT_EQ(lseek(ufd, 0, SEEK_SET), 0);
	usleep(100000);
	ASSERT_EQ(md__uffd_wp(&u, (uintptr_t)page, PG, 1), -EBADF);	/* no freeze: no merge */
	ASSERT_EQ(lseek(ufd, 0, SEEK_CUR), 0);	/* never read */
	md__uffd_close(&u);
	ASSERT(fcntl(ufd, F_GETFD) >= 0);
	ASSERT(victim_intact(ufd));
	page[0] = 3;	/* nothing frozen */
	close(ufd);

	/* An eventfd of the VMM's at the stop's number (every eventfd shows
	 * one file: with an eventfd of ours, it passed for ours), and a
	 * socket that stays quiet: a fault is still resolved, the close
	 * returns, and neither is read or closed. */
	for (int quiet = 0; quiet < 2; quiet++) {
		int other[2] = { -1, -1 };
		if (quiet)
			ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, other) == 0);
		else
			ASSERT((other[0] = eventfd(1, EFD_CLOEXEC)) >= 0);	/* one event of the VMM's */
		ASSERT_EQ(md__uffd_open(&u, 0, 0), 0);
		ASSERT_EQ(md__uffd_register_wp(&u, (uintptr_t)page, PG), 0);
		ASSERT_EQ(md__uffd_start(&u, unprotect_fault, &u), 0);
		sfd = u.stop_fd;
		ASSERT_EQ(dup2(other[0], sfd), sfd);
		usleep(100000);
		ASSERT_EQ(md__uffd_wp(&u, (uintptr_t)page, PG, 1), 0);
		ASSERT_EQ(pthread_create(&writer, NULL, write_page, page), 0);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 5;
		ASSERT_EQ(pthread_timedjoin_np(writer, NULL, &until), 0);
		pthread_t closer;
		ASSERT_EQ(pthread_create(&closer, NULL, close_uffd, &u), 0);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 5;
		ASSERT_EQ(pthread_timedjoin_np(closer, NULL, &until), 0);	/* no hang */
		ASSERT(fcntl(sfd, F_GETFD) >= 0);
		if (!quiet) {
			uint64_t v = 0;
			ASSERT_EQ(read(sfd, &v, sizeof(v)), (ssize_t)sizeof(v));
			ASSERT_EQ(v, 1);	/* the VMM's event, still there */
		}
		close(sfd);
		close(other[0]);
		if (other[1] >= 0)
			close(other[1]);
	}
	close(victim);
	munmap(page, PG);
	return 0;
}

/* What a merge costs, and what it does to the number of mappings. */
TEST_IMPL(engine_merge_cost)
{
	struct md__engine e;
	const size_t n = 2048;
	unsigned char *a = map_ram(n), *b = map_ram(n), *c = map_ram(n);
	uint32_t slot;

	engine_up(&e);
	for (size_t i = 0; i < n; i++) {
		fill(a + i * PG, (unsigned)i + 1);
		fill(b + i * PG, (unsigned)i + 1);
		fill(c + i * PG, (unsigned)i + 1);
	}
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, c, n * PG, 0), 0);
	double t0 = now();
	uint32_t first = 0;
	for (size_t i = 0; i < n; i += 64) {
		ASSERT_EQ(md__engine_publish(&e, a + i * PG, 64, &slot), 64);
		if (i == 0)
			first = slot;
		ASSERT_EQ(slot, first + (uint32_t)i);	/* consecutive: slot + i below */
	}
	double t_pub = now() - t0;
	slot = first;

	/* Scattered: every other page of B, one page per merge. */
	uint64_t v0 = md__count_vmas();
	t0 = now();
	for (size_t i = 0; i < n; i += 2)
		ASSERT_EQ(md__engine_merge(&e, b + i * PG, 1, slot + (uint32_t)i), 1);
	double t_scat = now() - t0;
	uint64_t v1 = md__count_vmas();
	/* The pages in between, one at a time: each joins its neighbours'
	 * mappings because their pool offsets are adjacent. */
	t0 = now();
	for (size_t i = 1; i < n; i += 2)
		ASSERT_EQ(md__engine_merge(&e, b + i * PG, 1, slot + (uint32_t)i), 1);
	double t_fill = now() - t0;
	uint64_t v2 = md__count_vmas();
	/* Runs: C in 64-page merges. */
	t0 = now();
	for (size_t i = 0; i < n; i += 64)
		ASSERT_EQ(md__engine_merge(&e, c + i * PG, 64, slot + (uint32_t)i), 64);
	double t_run = now() - t0;
	uint64_t v3 = md__count_vmas();

	printf("  publish: %.2f us/page (64-page runs)\n", t_pub * 1e6 / (double)n);
	printf("  merge 1 scattered page: %.2f us; VMAs +%llu for %zu pages (%.2f per merge)\n",
	       t_scat * 1e6 / (double)(n / 2), (unsigned long long)(v1 - v0), n / 2,
	       (double)(v1 - v0) / (double)(n / 2));
	printf("  merge 1 page between merged neighbours (adjacent offsets): %.2f us; VMAs %lld\n",
	       t_fill * 1e6 / (double)(n / 2), (long long)v2 - (long long)v1);
	printf("  merge 64-page runs: %.2f us/page; VMAs %lld for %zu pages\n",
	       t_run * 1e6 / (double)n, (long long)v3 - (long long)v2, n);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(pfn(b + i * PG), pfn(c + i * PG));
	ASSERT((long long)v2 - (long long)v1 < 0);	/* filling the gaps merged VMAs */
	ASSERT(v3 - v2 <= 2);
	md__engine_fini(&e);
	return 0;
}

/* Pages the scanner found side by side across the boundary of two regions
 * (a range advised in two calls, the pieces an unregister leaves) merge
 * with memdedupd's pool: a run goes to the merge a region at a time, as
 * it refuses a run over two. */
TEST_IMPL(engine_scanner_runs_split_at_regions)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct md__scanner s;
	unsigned char *m = map_ram(4), *x = map_ram(1);
	uint32_t slot;
	int status;

	engine_with_daemon(&e, &t, &rm, "split");
	fill(x, 7);
	for (size_t i = 0; i < 4; i++)
		fill(m + i * PG, 7);
	ASSERT_EQ(md__engine_register(&e, m, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, m + 2 * PG, 2 * PG, 0), 0);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(status, 0);

	/* A pass to see the pages, one to find them unchanged, pend and
	 * merge them. */
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	md__scanner_step(&s, 4);
	md__scanner_step(&s, 4);
	uint64_t shared = pfn(md__engine_pool_page(&e, slot));
	for (size_t i = 0; i < 4; i++) {
		ASSERT_EQ(pfn(m + i * PG), shared);
		ASSERT(memcmp(m + i * PG, x, PG) == 0);
	}
	ASSERT_EQ(s.st.merged_scan, 4);
	md__scanner_free(&s);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(m, 4 * PG);
	munmap(x, PG);
	return 0;
}

/* Fill strips are the engine's own pool's, memdedupd's or not: the
 * references of pages mapped from one go back to that pool, never to
 * memdedupd as UNREFs of slots of the same numbers (someone's pages). */
TEST_IMPL(engine_fill_refs_stay_local_with_daemon)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	const uint64_t cc = 0xccccccccccccccccull;
	unsigned char *x = map_ram(2), *m = map_ram(2);
	uint32_t slot[2];
	int status[2];
	uint64_t h[2];
	const void *page[2];

	engine_with_daemon(&e, &t, &rm, "fill");
	for (size_t i = 0; i < 2; i++) {
		fill(x + i * PG, (unsigned)(320 + i));
		h[i] = md__page_hash(x + i * PG);
		page[i] = x + i * PG;
	}
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 2, slot, status, rm.generation), 0);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 2);
	memset(m, 0xcc, 2 * PG);
	ASSERT_EQ(md__engine_register(&e, m, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_merge_fill(&e, m, 2, cc), 2);
	uint32_t strip = MD_REF_SLOT(e.regions[0].ref[0]) - 1;
	ASSERT_EQ(e.pool.refs[strip], 2);
	ASSERT_EQ(md__engine_unregister(&e, m, 2 * PG, MD_UNREG_MAPPED), 0);
	ASSERT_EQ(e.pool.refs[strip], 1);	/* the strip's own */
	md__engine_send_unrefs(&e);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 2);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, 2 * PG);
	munmap(m, 2 * PG);
	return 0;
}

/* Pages mapped from a fill strip keep their references to the engine's own
 * pool when memdedupd's pool is forgotten (a new daemon): they are not
 * "pages of the old pool" to move off, and their strip references still
 * go back as they are let go. */
TEST_IMPL(engine_fill_refs_kept_across_new_daemon)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	const uint64_t cc = 0xccccccccccccccccull;
	unsigned char *m = map_ram(2);

	engine_with_daemon(&e, &t, &rm, "fill-gen");
	memset(m, 0xcc, 2 * PG);
	ASSERT_EQ(md__engine_register(&e, m, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_merge_fill(&e, m, 2, cc), 2);
	uint32_t ref = e.regions[0].ref[0], strip = MD_REF_SLOT(ref) - 1;
	ASSERT(ref & MD_REF_FILL);
	ASSERT_EQ(e.pool.refs[strip], 2);
	uint64_t gen = rm.generation;
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT(rm.generation != gen);
	ASSERT_EQ(e.regions[0].ref[0], ref);
	ASSERT_EQ(md__engine_unregister(&e, m, 2 * PG, MD_UNREG_MAPPED), 0);
	ASSERT_EQ(e.pool.refs[strip], 1);	/* the strip's own */
	engine_with_daemon_down(&e, &rm, &t);
	munmap(m, 2 * PG);
	return 0;
}

/* A HELLO after the agent let go of memdedupd's pool says it maps no pool
 * page (MD_HELLO_NO_POOL_MAPS), though the engine's own pool stays mapped
 * (fill strips): that one is no daemon's. memdedupd then drops the old
 * record's references, which nobody would give back (they were forgotten
 * with the pool); taken for a pool of memdedupd's, they stayed pinned until
 * the VMM exited. */
TEST_IMPL(engine_hello_no_pool_maps_beside_own_pool)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	const uint64_t cc = 0xccccccccccccccccull;
	unsigned char *x = map_ram(1), *m = map_ram(2);
	uint32_t slot;
	int status;

	engine_with_daemon(&e, &t, &rm, "own-pool");
	fill(x, 350);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(td_domains_int(&t, "references"), 1);
	memset(m, 0xcc, 2 * PG);
	ASSERT_EQ(md__engine_register(&e, m, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_merge_fill(&e, m, 2, cc), 2);	/* the engine's own pool mapped */
	md__engine_remote_drop(&e);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	long long refs = -1;
	for (int i = 0; i < 1000 && (refs = td_domains_int(&t, "references")) != 0; i++)
		usleep(10000);
	ASSERT_EQ(refs, 0);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, PG);
	munmap(m, 2 * PG);
	return 0;
}

/* References of a pool whose daemon went are never sent to the next one:
 * its slots of the same numbers are other pages, which an UNREF would free
 * under whoever maps them. Neither those queued before the reconnection
 * nor a batch's begun before it. */
TEST_IMPL(engine_old_pool_refs_not_sent)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	unsigned char *x = map_ram(4);
	uint32_t slot[4];
	int status[4];
	uint64_t h[4];
	const void *page[4];

	engine_with_daemon(&e, &t, &rm, "gen");
	for (size_t i = 0; i < 4; i++) {
		fill(x + i * PG, (unsigned)(20 + i));
		h[i] = md__page_hash(x + i * PG);
		page[i] = x + i * PG;
	}
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 4, slot, status, rm.generation), 0);
	uint64_t old_gen = rm.generation;
	/* Let go of under the lock: queued, not sent. */
	pthread_mutex_lock(&e.lock);
	for (size_t i = 0; i < 4; i++)
		e.unref[e.nunref++] = slot[i];
	md__engine_unlock(&e);

	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT(rm.generation != old_gen);
	for (size_t i = 0; i < 4; i++)
		fill(x + i * PG, (unsigned)(40 + i));
	for (size_t i = 0; i < 4; i++)
		h[i] = md__page_hash(x + i * PG);
	uint32_t now[4];
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 4, now, status, rm.generation), 0);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 4);
	md__engine_send_unrefs(&e);
	/* A batch of the old pool: its REF refused, its UNREF dropped. */
	ASSERT_EQ(md__remote_ref_n(&rm, slot, 4, -1, old_gen), 0);
	/* Had it been sent, it was applied: an UNREF waits for its ACK. */
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 4);
	ASSERT_EQ(md__remote_ref_n(&rm, slot, 4, +1, old_gen), -ESTALE);
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 4, now, status, old_gen), -ESTALE);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, 4 * PG);
	return 0;
}

/* What the leave hook does once, at the first run: the VMM unmaps the
 * next page of guest RAM and maps its own file there (a memory backend
 * with share=off), registered again: "a file page" to the engine's
 * records, as an old pool's page is. */
static struct md__engine *remap_engine;
static unsigned char *remap_at;
static int remap_fd = -1;

static void vmm_file_mapped_between_runs(uintptr_t a)
{
	(void)a;
	md__engine_leave_hook = NULL;
	ASSERT_EQ(md__engine_unregister(remap_engine, remap_at, PG, MD_UNREG_GONE), 0);
	ASSERT(mmap(remap_at, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, remap_fd, 0) == remap_at);
	ASSERT_EQ(md__engine_register(remap_engine, remap_at, PG, 0), 0);
}

/* The VMM's mappings change while pages are moved off a pool memdedupd no
 * longer serves: the spans of the old pool read before are stale, and a
 * mapping of the VMM's own file put there since is left alone (its pages
 * are "a file page" to the engine too): the call ends, the next reads the
 * spans again. Moved, the VMM's private file mapping became anonymous
 * memory, which no longer shows the file. */
TEST_IMPL(engine_leave_file_spans_stale_after_unmap)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct md__scanner s;
	const size_t n = 2;
	unsigned char *x = map_ram(1), *m = map_ram(n), want[PG];
	uint32_t slot;
	int status;

	engine_with_daemon(&e, &t, &rm, "stale");
	fill(x, 43);
	for (size_t i = 0; i < n; i++)
		fill(m + i * PG, 43);
	ASSERT_EQ(md__engine_register(&e, m, n * PG, 0), 0);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(status, 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	md__scanner_step(&s, n);
	md__scanner_step(&s, n);
	ASSERT_EQ(s.st.merged_scan, n);
	md__scanner_free(&s);
	uint64_t gen = rm.generation;
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT(rm.generation != gen);
	ASSERT_EQ(__atomic_load_n(&e.leave_old, __ATOMIC_RELAXED), 1);

	remap_fd = memfd_create("vmm-ram", MFD_CLOEXEC);
	ASSERT(remap_fd >= 0);
	fill(want, 44);
	ASSERT_EQ(pwrite(remap_fd, want, PG, 0), PG);
	remap_engine = &e;
	remap_at = m + PG;
	md__engine_leave_hook = vmm_file_mapped_between_runs;
	ASSERT_EQ(md__engine_leave_file(&e, 64, 1), 1);	/* the first page; the call ends */
	ASSERT(md__engine_leave_hook == NULL);	/* the remap came */
	md__engine_leave_file(&e, 64, 1);
	ASSERT_EQ(__atomic_load_n(&e.leave_old, __ATOMIC_RELAXED), 0);
	fill(want, 43);
	ASSERT(memcmp(m, want, PG) == 0);
	ASSERT(!(pagemap(m) & PM_FILE));
	/* The VMM's file, still mapped: a change of it shows there. */
	fill(want, 45);
	ASSERT_EQ(pwrite(remap_fd, want, PG, 0), PG);
	ASSERT(memcmp(m + PG, want, PG) == 0);
	ASSERT(pagemap(m + PG) & PM_FILE);
	engine_with_daemon_down(&e, &rm, &t);
	close(remap_fd);
	remap_fd = -1;
	munmap(x, PG);
	munmap(m, n * PG);
	return 0;
}

/* UNREFs owed to a daemon that died are not given to the next one: its
 * slots are numbered from 0 again, and an UNREF of an old number would drop
 * a reference of a page of the new pool still mapped. Owed while no daemon
 * is there, forgotten at the connect; a late give-back of the old pool's
 * queues nothing. */
TEST_IMPL(engine_old_pool_unrefs_not_given_new_daemon)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	unsigned char *x = map_ram(4);
	uint32_t slot[4], now[4];
	int status[4];
	uint64_t h[4], ctr = 0;
	const void *page[4];

	engine_with_daemon(&e, &t, &rm, "owed");
	for (size_t i = 0; i < 4; i++) {
		fill(x + i * PG, (unsigned)(60 + i));
		h[i] = md__page_hash(x + i * PG);
		page[i] = x + i * PG;
	}
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 4, slot, status, rm.generation), 0);
	uint64_t old_gen = rm.generation;

	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), -ENOTCONN);
	ASSERT(!md__remote_connected(&rm));
	/* No daemon to take them: owed. */
	ASSERT_EQ(md__engine_unref_n(&e, slot, 2, old_gen), -ENOTCONN);
	md__remote_give_back(&rm, slot + 2, 2, old_gen);
	ASSERT_EQ(rm.nowed, 4);

	td_restart(&t);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT(rm.generation != old_gen);
	ASSERT_EQ(rm.nowed, 0);
	ASSERT_EQ(md__client_back_slots(rm.c), 0);	/* nothing old to send */
	md__remote_give_back(&rm, slot, 4, old_gen);
	ASSERT_EQ(md__client_back_slots(rm.c), 0);
	ASSERT_EQ(rm.nowed, 0);
	ASSERT_EQ(md__engine_unref_n(&e, slot, 4, old_gen), 0);	/* dropped */
	ASSERT_EQ(md__client_back_slots(rm.c), 0);

	for (size_t i = 0; i < 4; i++) {
		fill(x + i * PG, (unsigned)(80 + i));
		h[i] = md__page_hash(x + i * PG);
	}
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 4, now, status, rm.generation), 0);
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);
	md__engine_send_unrefs(&e);
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 4);
	ASSERT_EQ(td_domains_int(&t, "references"), 4);	/* the publications' */
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, 4 * PG);
	return 0;
}

/* References the client had queued to give back when its connection broke
 * (memdedupd still up) are kept by the engine and given back on the next
 * connection to the same daemon, whose record of the agent still counts
 * them. Dropped with the client, they stayed pinned until the VMM exited. */
TEST_IMPL(engine_lost_connection_gives_back_queued)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	unsigned char *x = map_ram(2);
	uint32_t slot[2];
	int status[2];
	uint64_t h[2], ctr = 0;
	const void *page[2];

	engine_with_daemon(&e, &t, &rm, "broken");
	for (size_t i = 0; i < 2; i++) {
		fill(x + i * PG, (unsigned)(70 + i));
		h[i] = md__page_hash(x + i * PG);
		page[i] = x + i * PG;
	}
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 2, slot, status, rm.generation), 0);
	ASSERT_EQ(td_domains_int(&t, "references"), 2);
	uint64_t gen = rm.generation;
	md__remote_give_back(&rm, slot, 2, gen);	/* queued in the client */
	ASSERT_EQ(md__client_back_slots(rm.c), 2);
	ASSERT(shutdown(md__client_fd(rm.c), SHUT_RDWR) == 0);
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), -ENOTCONN);	/* its UNREF cannot go */
	ASSERT(!md__remote_connected(&rm));
	ASSERT_EQ(rm.nowed, 2);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT_EQ(rm.generation, gen);
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);	/* sends what was owed first */
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);	/* its ACK read */
	ASSERT_EQ(td_domains_int(&t, "references"), 0);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, 2 * PG);
	return 0;
}

/* The agent does not trust the daemon's pool beyond what it can read: a
 * slot past the pool file's size (a compare through the view would raise
 * SIGBUS in the VMM) or past the view mapped is not valid. */
TEST_IMPL(engine_remote_valid_within_pool)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	unsigned char *x = map_ram(2);
	uint32_t slot[2];
	int status[2];
	uint64_t h[2];
	const void *page[2];

	engine_with_daemon(&e, &t, &rm, "valid");
	ASSERT(rm.view_pages >= 2);
	ASSERT_EQ(md__remote_valid(&rm, 0, 1), 0);	/* nothing published: an empty file */
	for (size_t i = 0; i < 2; i++) {
		fill(x + i * PG, (unsigned)(90 + i));
		h[i] = md__page_hash(x + i * PG);
		page[i] = x + i * PG;
	}
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 1, slot, status, rm.generation), 0);
	ASSERT_EQ(slot[0], 0);
	ASSERT_EQ(md__remote_valid(&rm, 0, 1), 1);
	ASSERT_EQ(md__remote_valid(&rm, 1, 1), 0);	/* past the file */
	ASSERT_EQ(md__remote_valid(&rm, 0, 2), 0);
	ASSERT_EQ(md__remote_publish_each(&rm, h + 1, page + 1, 1, slot + 1, status, rm.generation), 0);
	ASSERT_EQ(slot[1], 1);
	ASSERT_EQ(md__remote_valid(&rm, 0, 2), 1);
	/* Inside the file, past the view. */
	size_t view = rm.view_pages;
	rm.view_pages = 1;
	ASSERT_EQ(md__remote_valid(&rm, 0, 1), 1);
	ASSERT_EQ(md__remote_valid(&rm, 1, 1), 0);
	ASSERT_EQ(md__remote_valid(&rm, 0, 2), 0);
	rm.view_pages = view;
	ASSERT_EQ(md__remote_valid(&rm, 1, 1), 1);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, 2 * PG);
	return 0;
}

/* A slot past the pool size seen so far is checked against the pool's own
 * size, never that of a file the VMM put at the descriptor's number: that
 * one's size says nothing of the pool (a compare through the view of a slot
 * past the pool's end raises SIGBUS in the VMM), and the descriptor is
 * taken for lost, for the connection to go. */
TEST_IMPL(engine_remote_valid_not_by_vmm_file)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	unsigned char *x = map_ram(1);
	uint32_t slot;
	int status;

	engine_with_daemon(&e, &t, &rm, "valid-fd");
	fill(x, 95);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(slot, 0);
	ASSERT_EQ(md__remote_valid(&rm, 0, 1), 1);
	ASSERT(rm.view_pages >= VICTIM_PAGES);
	int victim = victim_file(), ro = rm.ro_fd;
	ASSERT(dup2(victim, ro) == ro);
	ASSERT_EQ(md__remote_valid(&rm, 1, 1), 0);	/* inside the victim, past the pool */
	ASSERT_EQ(md__remote_fd_ok(&rm), 0);
	ASSERT_EQ(md__remote_valid(&rm, 0, 1), 1);	/* the size seen before holds */
	md__engine_fini(&e);
	md__remote_fini(&rm);
	ASSERT(victim_intact(ro));	/* not closed as the pool's */
	close(ro);
	close(victim);
	td_stop(&t);
	munmap(x, PG);
	return 0;
}

/* A user change waits until memdedupd has every reference back, or the
 * old user's record keeps some and refuses the new user's HELLO for the
 * life of the VMM. A PUBLISH answered after its caller timed out grants a
 * slot that is given back only when the reply comes: the references were
 * taken for settled before it did. */
/* An engine connected to a private memdedupd at t, its client's timeout
 * 100 ms, and a PUBLISH of x sent while the daemon was stopped: its reply
 * late. Between the PUBLISH and the daemon's SIGCONT, between (if set) is
 * called. */
static void late_publish(struct tdaemon *t, struct md__engine *e, struct md__remote *rm,
			 unsigned char *x, void (*between)(struct md__remote *rm, void *arg), void *arg)
{
	uint32_t slot;
	int status;
	engine_up(e);
	td_start(t, 1024);
	ASSERT_EQ(md__remote_init(rm, t->sock, "late"), 0);
	e->remote = rm;
	ASSERT_EQ(md__engine_remote_connect(e), 0);
	fill(x, 9);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	md__client_set_timeout(rm->c, 100);
	kill(t->pid, SIGSTOP);
	int err = md__remote_publish_each(rm, &h, &page, 1, &slot, &status, rm->generation);
	if (between)
		between(rm, arg);
	kill(t->pid, SIGCONT);
	ASSERT_EQ(err, -ETIMEDOUT);
}

TEST_IMPL(engine_late_grant_not_settled)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	unsigned char *x = map_ram(1);
	uint64_t ctr = 0;

	late_publish(&t, &e, &rm, x, NULL, NULL);
	ASSERT_EQ(md__engine_unrefs_settled(&e), 0);	/* the grant is owed */
	/* As the agent's thread does: requests read the late reply and give
	 * its grant back. */
	for (int i = 0; i < 300 && !md__engine_unrefs_settled(&e); i++) {
		md__remote_report(&rm, &ctr, 1);
		md__engine_send_unrefs(&e);
		usleep(10000);
	}
	ASSERT(md__engine_unrefs_settled(&e));
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 0);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, PG);
	return 0;
}

/* A pool descriptor found replaced while a reply is late: the connection
 * stays until the late reply came and its grant went back (or the client's
 * bound for late replies passed). Hung up at once, a PUBLISH the daemon
 * answered meanwhile granted a slot the record our reconnect takes over
 * kept, pinned until the process exited. */
/* late_publish's between: the VMM puts a file of its own at the number
 * of the pool's descriptor, and the engine finds it so. */
static void replace_pool_fd(struct md__remote *rm, void *victim)
{
	ASSERT(dup2(*(int *)victim, rm->ro_fd) == rm->ro_fd);
	ASSERT_EQ(md__remote_fd_ok(rm), 0);
}

TEST_IMPL(engine_late_grant_settled_before_fd_lost_hang_up)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	unsigned char *x = map_ram(1);
	uint64_t ctr = 0;
	int victim = victim_file();

	late_publish(&t, &e, &rm, x, replace_pool_fd, &victim);
	int ro = rm.ro_fd;
	usleep(300000);	/* the daemon answers the PUBLISH, granting a slot */
	/* As the agent's thread does: calls, and a connect once hung up. */
	for (int i = 0; i < 300 && !(md__remote_connected(&rm) && rm.ro_fd != ro); i++) {
		md__remote_report(&rm, &ctr, 1);
		md__engine_send_unrefs(&e);
		if (!md__remote_connected(&rm))
			md__engine_remote_connect(&e);
		usleep(10000);
	}
	ASSERT(md__remote_connected(&rm) && rm.ro_fd != ro);
	for (int i = 0; i < 300 && !md__engine_unrefs_settled(&e); i++) {
		md__remote_report(&rm, &ctr, 1);
		md__engine_send_unrefs(&e);
		usleep(10000);
	}
	ASSERT(md__engine_unrefs_settled(&e));
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 0);
	ASSERT(victim_intact(ro));
	md__engine_fini(&e);
	md__remote_fini(&rm);
	close(ro);
	close(victim);
	td_stop(&t);
	munmap(x, PG);
	return 0;
}

/* memdedupd reached through a proxy that holds each chunk the daemon sends
 * for delay_ms (descriptors passed on): a daemon slow to answer, each reply
 * well inside the client's timeout. One connection at a time. */
struct slow_proxy {
	int listen_fd;
	char path[96];
	const char *daemon_sock;
	int delay_ms;
	pthread_t accepter;
	int cut;	/* set: the daemon's next chunk is dropped, the connection shut */
	uint32_t welcome_pages;	/* not 0: the pool_pages a WELCOME passed on says */
};
struct relay {
	int from, to, delay_ms;
	int *cut;
	uint32_t *welcome_pages;
};

static void *relay_run(void *arg)
{
	struct relay *r = arg;
	for (;;) {
		char buf[65536];
		union { struct cmsghdr h; char b[CMSG_SPACE(4 * sizeof(int))]; } ctl;
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
				     .msg_controllen = sizeof(ctl.b) };
		ssize_t got = recvmsg(r->from, &mh, 0);
		if (got <= 0)
			break;
		if (r->cut && __atomic_load_n(r->cut, __ATOMIC_ACQUIRE)) {
			for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
				for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
					int fd;
					memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
					close(fd);
				}
			shutdown(r->from, SHUT_RDWR);
			shutdown(r->to, SHUT_RDWR);
			break;
		}
		struct md__msg_hdr hd;
		if (r->welcome_pages && *r->welcome_pages && (size_t)got >= sizeof(hd) + MD_WELCOME_LEN) {
			memcpy(&hd, buf, sizeof(hd));
			if (hd.type == MD_MSG_WELCOME)
				memcpy(buf + sizeof(hd) + offsetof(struct md__msg_welcome, pool_pages),
				       r->welcome_pages, sizeof(uint32_t));
		}
		if (r->delay_ms)
			usleep((useconds_t)r->delay_ms * 1000);
		iov.iov_len = (size_t)got;
		if (!mh.msg_controllen)
			mh.msg_control = NULL;
		if (sendmsg(r->to, &mh, MSG_NOSIGNAL) != got)
			break;
		/* The descriptors passed on are the receiver's now. */
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
			for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				close(fd);
			}
	}
	shutdown(r->to, SHUT_WR);
	free(r);
	return NULL;
}

static void relay_start(int from, int to, int delay_ms, int *cut, uint32_t *welcome_pages)
{
	struct relay *r = malloc(sizeof(*r));
	pthread_t th;
	ASSERT(r);
	*r = (struct relay){ from, to, delay_ms, cut, welcome_pages };
	ASSERT_EQ(pthread_create(&th, NULL, relay_run, r), 0);
	pthread_detach(th);
}

static void *proxy_accept(void *arg)
{
	struct slow_proxy *p = arg;
	for (;;) {
		int c = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			return NULL;
		int d = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p->daemon_sock);
		if (d < 0 || connect(d, (struct sockaddr *)&sa, sizeof(sa)) != 0)
			return NULL;
		relay_start(c, d, 0, NULL, NULL);
		relay_start(d, c, p->delay_ms, &p->cut, &p->welcome_pages);
	}
}

static void slow_proxy_start(struct slow_proxy *p, const char *daemon_sock, int delay_ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const char *dir = getenv("MD_TEST_DIR");	/* the runner's, removed after the test */
	snprintf(p->path, sizeof(p->path), "%s/slow-proxy-%d.sock", dir && strlen(dir) < 60 ? dir : "/tmp",
		 (int)getpid());
	unlink(p->path);
	p->daemon_sock = daemon_sock;
	p->delay_ms = delay_ms;
	p->cut = 0;
	p->welcome_pages = 0;
	p->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(p->listen_fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p->path);
	ASSERT(bind(p->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	ASSERT(listen(p->listen_fd, 8) == 0);
	ASSERT_EQ(pthread_create(&p->accepter, NULL, proxy_accept, p), 0);
}

static void slow_proxy_stop(struct slow_proxy *p)
{
	shutdown(p->listen_fd, SHUT_RDWR);	/* ends the accept */
	pthread_join(p->accepter, NULL);
	close(p->listen_fd);
	unlink(p->path);
}

/* Takes n more references on slot (n >= 1), as merges' pins do. */
static void hold_refs(struct md__remote *rm, uint32_t slot, size_t n)
{
	static uint32_t same[MD_REF_MAX];
	for (size_t i = 0; i < MD_REF_MAX; i++)
		same[i] = slot;
	for (size_t k = 0; k < n; k += MD_REF_MAX)
		ASSERT_EQ(md__remote_ref_n(rm, same, (uint32_t)(n - k < MD_REF_MAX ? n - k : MD_REF_MAX), +1,
					   rm->generation), 0);
}

/* Lets go of n references to slot under the merge lock, as a VMM's
 * discard of that many merged pages does: queued for md__engine_send_unrefs. */
static void let_go(struct md__engine *e, const uint32_t *slots, size_t n)
{
	for (size_t k = 0; k < n; k += MD_REF_BATCH) {
		pthread_mutex_lock(&e->lock);
		for (size_t i = k; i < n && i < k + MD_REF_BATCH; i++)
			e->unref[e->nunref++] = slots[i];
		md__engine_unlock(e);
	}
}

/* What a pass may take: its bound, one round trip past it (the client's
 * timeout, on a loaded machine), and a second of slack; without the bound
 * the proxy's 0.3 s per reply made one 19 s. */
#define PASS_MAX_S ((MD_RT_PASS_MS + MD_CLIENT_TIMEOUT_MS) / 1000.0 + 5)

/* As the agent's thread and the scanner do, until memdedupd holds only
 * left references of ours: passes of md__engine_send_unrefs (each within
 * max_s), and requests that carry the client's own UNREFs. */
static void give_all_back(struct md__engine *e, struct md__remote *rm, const struct tdaemon *t, double max_s,
			  long long left)
{
	uint64_t ctr = 0;
	double end = now() + 60;
	for (;;) {
		double t0 = now();
		md__engine_send_unrefs(e);
		double took = now() - t0;
		if (took >= max_s)
			fprintf(stderr, "a pass of md__engine_send_unrefs took %.1f s\n", took);
		ASSERT(took < max_s);
		md__remote_report(rm, &ctr, 1);
		if (md__engine_unrefs_settled(e) && td_domains_int(t, "references") == left)
			break;
		ASSERT(now() < end);
		usleep(20000);
	}
}

/* More of memdedupd's references let go of under one hold of the lock
 * than its batch holds (an unregister of 600 merged pages): the batch
 * moves to the send queue as it fills, and every one is given back. */
TEST_IMPL(engine_unrefs_past_batch_under_one_lock)
{
	enum { N = MD_REF_BATCH + 88 };
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	unsigned char *x = map_ram(1), *m = map_ram(N);
	uint32_t slot;
	int status;

	engine_with_daemon(&e, &t, &rm, "batch");
	fill(x, 350);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(status, 0);
	hold_refs(&rm, slot, N - 1);	/* the publication's is one */
	ASSERT_EQ(td_domains_int(&t, "references"), N);
	ASSERT_EQ(md__engine_register(&e, m, N * PG, 0), 0);
	/* As if each page were merged onto the slot (the references held). */
	pthread_mutex_lock(&e.lock);
	for (size_t i = 0; i < N; i++)
		e.regions[0].ref[i] = MD_REF_FILE | (slot + 1);
	md__engine_unlock(&e);
	ASSERT_EQ(md__engine_unregister(&e, m, N * PG, MD_UNREG_GONE), 0);
	give_all_back(&e, &rm, &t, PASS_MAX_S, 0);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 0);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, PG);
	munmap(m, N * PG);
	return 0;
}

/* A daemon slow to answer, each reply within the client's 2 s timeout,
 * held the caller of md__engine_send_unrefs (the agent's thread, which
 * alone takes lease breaks, each second) for a round trip per 512
 * references, up to 64 of them a pass: 65 s at a second each (review); a
 * refused UNREF was then sent again one slot at a time, up to 512 round
 * trips, and the scanner's refused REF up to 256. A pass now ends after
 * MD_RT_PASS_MS and the rest waits; a refused UNREF goes to the client's
 * pipelined UNREFs; REFs one by one stop as a pass does. Every reference
 * is given back all the same, once. */
TEST_IMPL(engine_unrefs_bounded_by_slow_daemon)
{
	enum { REFS = 16 * MD_REF_BATCH, PINS = 256 };
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct slow_proxy px;
	unsigned char *x = map_ram(2);
	static uint32_t q[REFS];
	uint32_t slot, slot2;
	int status;

	engine_with_daemon(&e, &t, &rm, "slow");
	fill(x, 9);
	fill(x + PG, 10);
	uint64_t h[2] = { md__page_hash(x), md__page_hash(x + PG) };
	const void *page[2] = { x, x + PG };
	uint32_t slots[2];
	int st2[2];
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 2, slots, st2, rm.generation), 0);
	ASSERT(st2[0] == 0 && st2[1] == 0);
	slot = slots[0];
	slot2 = slots[1];
	hold_refs(&rm, slot, REFS - 1);	/* the publication's is one */
	hold_refs(&rm, slot2, MD_REF_BATCH - 2);
	ASSERT_EQ(td_domains_int(&t, "references"), REFS + MD_REF_BATCH - 1);

	/* The same daemon, through the slow proxy: the agent connects again
	 * (same generation, same record). */
	slow_proxy_start(&px, t.sock, 300);
	pthread_mutex_lock(&rm.lock);
	md__client_free(rm.c);
	rm.c = NULL;
	snprintf(rm.socket, sizeof(rm.socket), "%s", px.path);
	pthread_mutex_unlock(&rm.lock);
	uint64_t gen = rm.generation;
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT_EQ(rm.generation, gen);

	/* UNREFs the daemon takes, more than a pass has time for. */
	for (size_t i = 0; i < REFS; i++)
		q[i] = slot;
	double p0 = now();
	let_go(&e, q, REFS);
	give_all_back(&e, &rm, &t, PASS_MAX_S, MD_REF_BATCH - 1);
	ASSERT_EQ(td_domains_int(&t, "references"), MD_REF_BATCH - 1);	/* slot2's: none twice */
	double p1 = now();
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 1);

	/* One it refuses (a slot not held among those held): split by the
	 * client, the others taken. */
	for (size_t i = 0; i < MD_REF_BATCH; i++)
		q[i] = slot2;
	q[MD_REF_BATCH / 2] = 1000;	/* never published */
	let_go(&e, q, MD_REF_BATCH);
	give_all_back(&e, &rm, &t, PASS_MAX_S, 0);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 0);
	fprintf(stderr, "  all given back in %.1f s, the refused UNREF's in %.1f s\n", p1 - p0, now() - p1);

	/* REFs one by one after one of them all was refused: as long as a
	 * pass may take, those pinned held, the others not. */
	ASSERT_EQ(md__remote_publish_each(&rm, h, page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(status, 0);
	uint32_t pin[PINS];
	unsigned char ok[PINS];
	for (size_t i = 0; i < PINS; i++)
		pin[i] = slot;
	pin[PINS - 1] = 1000;
	ASSERT_EQ(md__remote_ref_n(&rm, pin, PINS, +1, rm.generation), -EINVAL);
	double t0 = now();
	size_t pinned = md__remote_ref_each(&rm, pin, PINS, ok, rm.generation);
	double took = now() - t0;
	fprintf(stderr, "  REFs one by one: %zu pinned in %.1f s\n", pinned, took);
	ASSERT(took < PASS_MAX_S);
	ASSERT(pinned >= 1 && pinned < PINS - 1);
	size_t held = 0;
	for (size_t i = 0; i < PINS; i++)
		held += ok[i];
	ASSERT_EQ(held, pinned);
	ASSERT_EQ(ok[PINS - 1], 0);
	ASSERT_EQ(td_domains_int(&t, "references"), 1 + (long long)pinned);

	md__engine_fini(&e);
	md__remote_fini(&rm);
	slow_proxy_stop(&px);
	td_stop(&t);
	munmap(x, 2 * PG);
	return 0;
}

static void *send_unrefs_thread(void *arg)
{
	md__engine_send_unrefs(arg);
	return NULL;
}

/* A reconnect to another memdedupd while md__engine_send_unrefs waits for
 * the old one's answer: the rest of that pass (cut by its time bound) is
 * the old pool's, and is dropped, not put back in the queue, which holds
 * the new pool's UNREFs by then: a queue of another generation is emptied
 * when UNREFs are added (those of the new pool lost, their pages pinned
 * for the process's life), and a move of the VMM's user waits until the
 * queue is empty (md__engine_unrefs_settled). */
TEST_IMPL(engine_unrefs_of_switched_pool_not_queued_again)
{
	enum { REFS = 4 * MD_REF_BATCH };
	struct tdaemon t, t2;
	struct md__engine e;
	struct md__remote rm;
	struct slow_proxy px;
	unsigned char *x = map_ram(1);
	static uint32_t q[REFS];
	uint32_t slot;
	int status;

	engine_with_daemon(&e, &t, &rm, "mid-pass");
	fill(x, 12);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(status, 0);
	hold_refs(&rm, slot, REFS - 1);	/* the publication's is one */
	/* The same daemon, through a proxy whose every reply takes 1 s: a
	 * pass ends after its first round trip (MD_RT_PASS_MS). */
	slow_proxy_start(&px, t.sock, 1000);
	pthread_mutex_lock(&rm.lock);
	md__client_free(rm.c);
	rm.c = NULL;
	snprintf(rm.socket, sizeof(rm.socket), "%s", px.path);
	pthread_mutex_unlock(&rm.lock);
	uint64_t gen = rm.generation;
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT_EQ(rm.generation, gen);
	td_start(&t2, 1024);

	for (size_t i = 0; i < REFS; i++)
		q[i] = slot;
	let_go(&e, q, REFS);
	pthread_t th;
	ASSERT_EQ(pthread_create(&th, NULL, send_unrefs_thread, &e), 0);
	/* Its first UNREFs sent (the client's lock held for the round
	 * trip): the next connect is to another daemon, and switches pools
	 * before the pass ends. Only connects read the socket's path. */
	int in_flight = 0;
	for (int i = 0; i < 2000 && !in_flight; i++) {
		if (pthread_mutex_trylock(&rm.lock) == 0) {
			pthread_mutex_unlock(&rm.lock);
			usleep(500);
		} else {
			in_flight = 1;
		}
	}
	ASSERT(in_flight);
	ASSERT(strlen(t2.sock) < sizeof(rm.socket));
	memcpy(rm.socket, t2.sock, strlen(t2.sock) + 1);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT(rm.generation != gen);
	ASSERT_EQ(pthread_join(th, NULL), 0);
	ASSERT(md__engine_unrefs_settled(&e));
	md__engine_fini(&e);
	md__remote_fini(&rm);
	slow_proxy_stop(&px);
	td_stop(&t2);
	td_stop(&t);
	munmap(x, PG);
	return 0;
}

/* The VMM closes memdedupd's pool descriptor; the reconnect's new one
 * comes at the same number: it is the pool now, not closed as the old. */
TEST_IMPL(engine_pool_fd_at_same_number_kept)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	uint64_t ctr = 0;

	engine_up(&e);
	td_start(&t, 1024);
	int spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ASSERT(spare >= 0);
	ASSERT_EQ(md__remote_init(&rm, t.sock, "same"), 0);
	e.remote = &rm;
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	/* A page published: the pool stays the same through the reconnect. */
	unsigned char *x = map_ram(1);
	uint32_t slot;
	int status;
	fill(x, 13);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	int ro = rm.ro_fd;
	uint64_t gen = rm.generation;
	ASSERT(ro > spare);
	close(ro);	/* the VMM's doing */
	ASSERT_EQ(md__remote_fd_ok(&rm), 0);
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), -ENOTCONN);	/* hung up */
	ASSERT(!md__remote_connected(&rm));
	/* Every free number below ro taken but one (the socket's): the pool's
	 * descriptor comes at ro. */
	close(spare);
	int held[1024], n = 0, fd;
	while ((fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) != ro) {
		ASSERT(fd >= 0 && fd < ro && n < 1024);
		held[n++] = fd;
	}
	ASSERT(n >= 1);
	close(fd);
	close(held[--n]);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	for (int i = 0; i < n; i++)
		close(held[i]);
	ASSERT_EQ(rm.generation, gen);
	ASSERT_EQ(rm.ro_fd, ro);
	ASSERT(fcntl(ro, F_GETFD) >= 0);
	ASSERT_EQ(md__remote_fd_ok(&rm), 1);
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);
	ASSERT(md__remote_connected(&rm));
	ASSERT_EQ(md__remote_valid(&rm, slot, 1), 1);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(x, PG);
	return 0;
}

/* An agent given no socket path chooses its daemon again at every connect:
 * one started while the daemon it would use was away (the host's, or its
 * user's own) finds it once it answers, rather than trying the path it
 * resolved at start for good. */
TEST_IMPL(engine_remote_default_socket_chosen_at_connect)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	char away[400], there[400], link[450];

	engine_up(&e);
	td_start(&t, 1024);
	snprintf(away, sizeof(away), "%s/away", test_dir());
	snprintf(there, sizeof(there), "%s/there", test_dir());
	snprintf(link, sizeof(link), "%s/memdedupd.sock", there);
	ASSERT(mkdir(away, 0755) == 0 && mkdir(there, 0755) == 0);
	ASSERT(symlink(t.sock, link) == 0);
	ASSERT(setenv("MEMDEDUP_RUN_DIR", away, 1) == 0);
	ASSERT_EQ(md__remote_init(&rm, NULL, "chosen"), 0);
	e.remote = &rm;
	ASSERT(md__engine_remote_connect(&e) < 0);	/* nothing answers there */
	ASSERT(setenv("MEMDEDUP_RUN_DIR", there, 1) == 0);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT(md__remote_connected(&rm));
	engine_with_daemon_down(&e, &rm, &t);
	return 0;
}

/* A WELCOME whose pool is larger than a slot number can name is refused:
 * its slots past MD_REF_SLOTS_MAX would not fit the agent's records. */
TEST_IMPL(engine_welcome_pool_too_large_refused)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct slow_proxy px;

	engine_up(&e);
	td_start(&t, 1024);
	slow_proxy_start(&px, t.sock, 0);
	px.welcome_pages = MD_REF_SLOTS_MAX + 1;
	ASSERT_EQ(md__remote_init(&rm, px.path, "big"), 0);
	e.remote = &rm;
	ASSERT_EQ(md__engine_remote_connect(&e), -EINVAL);
	ASSERT(!md__remote_connected(&rm));
	px.welcome_pages = MD_REF_SLOTS_MAX;	/* the largest taken */
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT_EQ(rm.view_pages, MD_REF_SLOTS_MAX);
	md__engine_fini(&e);
	md__remote_fini(&rm);
	slow_proxy_stop(&px);
	td_stop(&t);
	return 0;
}

/* An UNREF sent whole whose ACK was lost as the connection closed is not
 * owed to the next connection: the daemon may have applied it, and applied
 * twice it would drop a reference of a page still mapped. */
TEST_IMPL(engine_unref_ack_lost_not_sent_again)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct slow_proxy px;
	unsigned char *x = map_ram(1);
	uint32_t slot;
	int status;

	engine_up(&e);
	td_start(&t, 1024);
	slow_proxy_start(&px, t.sock, 0);
	ASSERT_EQ(md__remote_init(&rm, px.path, "ackl"), 0);
	e.remote = &rm;
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	fill(x, 11);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(status, 0);
	hold_refs(&rm, slot, 2);
	ASSERT_EQ(td_domains_int(&t, "references"), 3);
	uint64_t gen = rm.generation;

	/* The UNREF reaches the daemon; its ACK does not come back. */
	__atomic_store_n(&px.cut, 1, __ATOMIC_RELEASE);
	ASSERT_EQ(md__remote_ref_n(&rm, &slot, 1, -1, gen), -ENOTCONN);
	ASSERT(!md__remote_connected(&rm));
	ASSERT_EQ(td_domains_int(&t, "references"), 2);
	ASSERT_EQ(rm.nowed, 0);

	/* The same daemon, straight: nothing given back twice. */
	ASSERT(strlen(t.sock) < sizeof(rm.socket));
	memcpy(rm.socket, t.sock, strlen(t.sock) + 1);
	ASSERT_EQ(md__engine_remote_connect(&e), 0);
	ASSERT_EQ(rm.generation, gen);
	uint64_t ctr = 0;
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);
	md__engine_send_unrefs(&e);
	ASSERT_EQ(md__remote_report(&rm, &ctr, 1), 0);
	ASSERT_EQ(td_domains_int(&t, "references"), 2);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 1);
	md__engine_fini(&e);
	md__remote_fini(&rm);
	slow_proxy_stop(&px);
	td_stop(&t);
	munmap(x, PG);
	return 0;
}

/* Stress: writers change random bytes of random pages, and sometimes copy a
 * template in whole or zero a page, while the merger merges at full speed
 * and drops the pages it finds zero (those zeroed lately: their writes go
 * on, onto the zero page or a hole). Each write first checks what it
 * overwrites against the shadow copy (the byte, or the whole page before a
 * template copy or a zeroing): a page gets thousands of writes a second,
 * over a third of them of the whole page, so a lost write is overwritten within a
 * fraction of a millisecond, and a check of the content at the end alone
 * would not see it. Afterwards every page equals its shadow copy too. */
#define S_PAGES 1024u
#define S_TEMPLATES 8u
#define S_WRITERS 2u
static unsigned char *s_ram, *s_shadow, *s_tmpl;
static volatile int s_stop;
static uint64_t s_writes[S_WRITERS], s_lost[S_WRITERS];

/* Writer 1 stores through the kernel when s_kernel is set: each of its
 * writes is a read(2) from a pipe into the page (copy_to_user, a kernel-mode
 * write fault on a frozen page), as a VMM's I/O thread's pread would be. */
static int s_kernel;
static int s_kerr[S_WRITERS];

static void store(unsigned id, int *p, unsigned char *dst, const void *src, size_t len)
{
	if (!s_kernel || id != 1) {
		memcpy(dst, src, len);
		return;
	}
	static __thread unsigned char drain[PG];
	if (write(p[1], src, len) != (ssize_t)len) {
		s_kerr[id]++;
	} else if (read(p[0], dst, len) != (ssize_t)len) {
		s_kerr[id]++;	/* EFAULT: the bytes stay in the pipe */
		if (read(p[0], drain, len) < 0)
			s_kerr[id]++;
		memcpy(dst, src, len);	/* a failed I/O retried by hand */
	}
}

static void *stress_writer(void *arg)
{
	unsigned id = (unsigned)(uintptr_t)arg;
	uint64_t x = 0x9e3779b97f4a7c15ull * (id + 1), n = 0, lost = 0;
	static unsigned char zeroes[PG];
	int pp[2] = { -1, -1 };
	if (s_kernel && id == 1 && pipe(pp) != 0)
		s_kerr[id]++;
	while (!__atomic_load_n(&s_stop, __ATOMIC_RELAXED)) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		/* Writer id owns the pages p with p % S_WRITERS == id. */
		size_t p = (size_t)(x % (S_PAGES / S_WRITERS)) * S_WRITERS + id;
		unsigned char *g = s_ram + p * PG, *s = s_shadow + p * PG;
		/* Nothing else writes the page: it must hold what this
		 * writer wrote last. */
		if ((x >> 20) % 4 == 0) {
			const unsigned char *t = s_tmpl + ((x >> 24) % S_TEMPLATES) * PG;
			lost += memcmp(g, s, PG) != 0;
			store(id, pp, g, t, PG);
			memcpy(s, t, PG);
		} else if ((x >> 20) % 8 == 1) {
			lost += memcmp(g, s, PG) != 0;
			store(id, pp, g, zeroes, PG);
			memset(s, 0, PG);
		} else {
			size_t off = (size_t)(x >> 32) % PG;
			unsigned char v = (unsigned char)(x >> 8);
			if ((x >> 28) % 2)	/* half the writes put back the template byte */
				v = s_tmpl[((x >> 24) % S_TEMPLATES) * PG + off];
			lost += g[off] != s[off];
			store(id, pp, g + off, &v, 1);
			s[off] = v;
		}
		n++;
	}
	if (pp[0] >= 0) {
		close(pp[0]);
		close(pp[1]);
	}
	s_writes[id] = n;
	s_lost[id] = lost;
	return NULL;
}

static int stress_run(void);

TEST_IMPL(engine_stress_no_lost_write)
{
	return stress_run();
}

/* The same with one writer's stores made by the kernel (read(2) into the
 * pages): none may fail, none be lost. */
TEST_IMPL(engine_stress_kernel_writes_no_lost_write)
{
	s_kernel = 1;
	int r = stress_run();
	printf("  kernel stores that failed: %d\n", s_kerr[1]);
	ASSERT_EQ(s_kerr[1], 0);
	return r;
}

static int stress_run(void)
{
	struct md__engine e;
	pthread_t t[S_WRITERS];
	uint32_t slot;

	engine_up(&e);
	s_ram = map_ram(S_PAGES);
	s_shadow = map_ram(S_PAGES);
	s_tmpl = map_ram(S_TEMPLATES);
	for (unsigned i = 0; i < S_TEMPLATES; i++)
		fill(s_tmpl + i * PG, 100 + i);
	for (size_t p = 0; p < S_PAGES; p++) {
		memcpy(s_ram + p * PG, s_tmpl + (p % S_TEMPLATES) * PG, PG);
		memcpy(s_shadow + p * PG, s_ram + p * PG, PG);
	}
	ASSERT_EQ(md__engine_register(&e, s_tmpl, S_TEMPLATES * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, s_ram, S_PAGES * PG, 0), 0);
	ASSERT_EQ(md__engine_publish(&e, s_tmpl, S_TEMPLATES, &slot), (int)S_TEMPLATES);
	for (unsigned i = 0; i < S_WRITERS; i++)
		ASSERT_EQ(pthread_create(&t[i], NULL, stress_writer, (void *)(uintptr_t)i), 0);

	uint64_t x = 88172645463325252ull, attempts = 0, merged = 0, zero = 0;
	/* 6 s in make check; check-all's MD_STRESS_MS (10 minutes). */
	const char *ms = getenv("MD_STRESS_MS");
	double end = now() + (ms && atoi(ms) > 0 ? atoi(ms) / 1000.0 : 6.0);
	while (now() < end) {
		for (int k = 0; k < 64; k++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			size_t p = (size_t)(x % S_PAGES);
			size_t run = 1 + (x >> 40) % 4;
			if (p + run > S_PAGES)
				run = S_PAGES - p;
			unsigned tm = (unsigned)((x >> 20) % S_TEMPLATES);
			int r;
			/* A run of the same template slot: merge each page of
			 * the run with one pool page, a page at a time, or
			 * drop those of a run that are zero (the pages a
			 * writer zeroed, until it writes them again). */
			unsigned sel = (unsigned)((x >> 50) % 16);
			if (sel < 3) {
				r = md__engine_merge_zero(&e, s_ram + p * PG, run), zero++;
			} else if (sel < 6) {
				/* A run whose pages started as consecutive
				 * templates: one mmap for what still matches. */
				unsigned t0 = (unsigned)(p % S_TEMPLATES);
				if (run > S_TEMPLATES - t0)
					run = S_TEMPLATES - t0;
				r = md__engine_merge(&e, s_ram + p * PG, run, slot + t0);
			} else
				r = md__engine_merge(&e, s_ram + p * PG, 1, slot + tm);
			/* -EAGAIN: a page dropped, a hole until written again */
			ASSERT(r >= 0 || r == -EAGAIN);
			merged += r > 0 ? (uint64_t)r : 0;
			attempts++;
		}
		if ((attempts & 4095) == 0)
			md__engine_reap(&e);
	}
	__atomic_store_n(&s_stop, 1, __ATOMIC_RELAXED);
	for (unsigned i = 0; i < S_WRITERS; i++)
		pthread_join(t[i], NULL);

	size_t bad = 0;
	for (size_t p = 0; p < S_PAGES; p++)
		bad += memcmp(s_ram + p * PG, s_shadow + p * PG, PG) != 0;
	for (unsigned i = 0; i < S_TEMPLATES; i++) {
		unsigned char want[PG];
		fill(want, 100 + i);
		ASSERT(memcmp(md__pool_page(&e.pool, slot + i), want, PG) == 0);
	}
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	printf("  %llu merge attempts, %llu merged, %llu zero pages dropped, %llu abandoned, %llu writers "
	       "waited, %llu+%llu writes, %llu+%llu found their page changed, %zu pages wrong\n",
	       (unsigned long long)attempts, (unsigned long long)merged,
	       (unsigned long long)(st.zero + st.zero_again), (unsigned long long)st.abandoned,
	       (unsigned long long)st.wp_faults,
	       (unsigned long long)s_writes[0], (unsigned long long)s_writes[1],
	       (unsigned long long)s_lost[0], (unsigned long long)s_lost[1], bad);
	ASSERT_EQ(s_lost[0] + s_lost[1], 0);
	ASSERT_EQ(bad, 0);
	ASSERT(merged > 100);
	/* Drops that succeed while the pages' writer goes on: a write between
	 * the compare and the zap that lands before it is lost. */
	ASSERT(st.zero + st.zero_again > 200);
	ASSERT(st.wp_faults > 0);	/* writers did hit frozen pages */
	(void)zero;
	md__engine_fini(&e);
	return 0;
}

/* Hints get their share of the visits while the cursor walks memory it
 * does not read (never touched, here): the interleave counted pages read,
 * so once the cursor's turn came over such memory it kept it, the hints
 * waiting for the batch's end (16 batches' worth of visits). */
TEST_IMPL(engine_scanner_hints_not_held_by_sparse_memory)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 4096, hinted = 8;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	for (size_t i = n - hinted; i < n; i++)	/* the rest never touched */
		fill(r + i * PG, (unsigned)i + 70000);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 4;
	md__hints_push(&h, (uintptr_t)(r + (n - hinted) * PG), hinted * PG, 0, 0);
	/* A batch of 8 pages: half the visits hints, whatever the cursor
	 * finds in its own half. */
	md__scanner_step(&s, hinted);
	ASSERT_EQ(s.st.hinted, hinted);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* And the other way round: while hints come, the cursor still crosses
 * memory it does not read (never touched, here) to the pages beyond. A
 * turn of the cursor was one visit in 8 whatever it read: at a ratio of 7,
 * 512 hinted pages moved it 73 pages, and in a bench of two guests it read
 * nothing for 19 s while their hints came (bench-scan-image122). A turn
 * now goes on to a page read, up to 16 visits. */
TEST_IMPL(engine_scanner_cursor_crosses_sparse_memory_beside_hints)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 2560, gap = 1024, hinted = 512;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	for (size_t i = gap; i < gap + 8; i++)	/* the cursor's, past the gap */
		fill(r + i * PG, (unsigned)i + 80000);
	for (size_t i = n - hinted; i < n; i++)
		fill(r + i * PG, (unsigned)i + 90000);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 7;
	md__hints_push(&h, (uintptr_t)(r + (n - hinted) * PG), hinted * PG, 0, 0);
	for (int i = 0; i < 64 && s.st.hinted < hinted; i++)
		md__scanner_step(&s, 64);
	ASSERT_EQ(s.st.hinted, hinted);
	/* 512 hints: 73 turns of the cursor, 1,168 visits at most. */
	ASSERT(s.st.scanned >= 1);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* The scanner finds duplicates from hints at once and from the linear scan
 * after one pass of the volatility filter, and drops zero pages. */
TEST_IMPL(engine_scanner_merges)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 256, hinted = 64;
	unsigned char *a = map_ram(n), *b = map_ram(n);
	size_t perm[256];

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	/* B holds A's pages: the first 64 at the same place (as if both read
	 * the same file there), the rest shuffled; every 16th page is zero. */
	for (size_t i = 0; i < n; i++)
		perm[i] = i;
	for (size_t i = n - 1; i > hinted; i--) {
		size_t j = hinted + (i * 7919) % (i - hinted + 1);
		size_t t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (size_t i = 0; i < n; i++) {
		if (i % 16 == 15)
			memset(a + i * PG, 0, PG);
		else
			fill(a + i * PG, (unsigned)i + 1);
	}
	for (size_t i = 0; i < n; i++)
		memcpy(b + i * PG, a + perm[i] * PG, PG);
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	md__hints_push(&h, (uintptr_t)a, hinted * PG, 0, 0);
	md__hints_push(&h, (uintptr_t)b, hinted * PG, 0, 0);

	/* Half the visits go to hints: 256 visits use up both, unless the
	 * sweep of a hint's huge page took some of them: then a few more. */
	md__scanner_step(&s, 4 * hinted);
	for (int k = 0; k < 8 && s.cur.len >= PG; k++)
		md__scanner_step(&s, 16);
	ASSERT_EQ(md__hints_count(&h), 0);
	ASSERT(s.cur.len < PG);
	/* Hinted visits count the pages read: the cursor, walking A from
	 * its start too, may drop a zero page of A before its hint comes,
	 * and the sweep after A's run those of B if both share a huge page. */
	ASSERT(s.st.hinted >= 2 * (hinted - hinted / 16) && s.st.hinted <= 2 * hinted);
	ASSERT_EQ(s.st.merged_hint, hinted - hinted / 16);
	for (size_t i = 0; i < hinted; i++)
		if (i % 16 != 15)
			ASSERT_EQ(pfn(a + i * PG), pfn(b + i * PG));

	/* Three passes: the first records checksums, the next merge. */
	for (int k = 0; k < 3; k++)
		md__scanner_step(&s, 2 * n);
	for (size_t i = 0; i < n; i++) {
		if (perm[i] % 16 == 15)
			ASSERT(dropped(b + i * PG));
		ASSERT(memcmp(b + i * PG, a + perm[i] * PG, PG) == 0);
		if (perm[i] % 16 != 15)
			ASSERT_EQ(pfn(b + i * PG), pfn(a + perm[i] * PG));
	}
	printf("  scanned %llu, hinted %llu, merged %llu+%llu (scan+hint), zero %llu, first %llu, volatile %llu, "
	       "published %llu, passes %llu, ratio %u/8\n",
	       (unsigned long long)s.st.scanned, (unsigned long long)s.st.hinted,
	       (unsigned long long)s.st.merged_scan, (unsigned long long)s.st.merged_hint,
	       (unsigned long long)s.st.zero, (unsigned long long)s.st.first_sums,
	       (unsigned long long)s.st.volatile_skips,
	       (unsigned long long)s.st.published, (unsigned long long)s.st.passes, s.st.ratio);
	ASSERT(s.st.passes >= 2);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	return 0;
}

struct discard_in_visit {
	struct md__engine *e;
	unsigned char *addr;
	size_t len;
	int calls;
};

/* The agent's image index, asked on the batch's first visit: the VMM
 * discards pages further on in the scanner's pagemap window meanwhile. */
static int find_and_discard(void *arg, uint64_t hash, const void *page, uint64_t *cookie)
{
	struct discard_in_visit *v = arg;
	(void)hash, (void)page, (void)cookie;
	if (v->calls++ == 0) {
		ASSERT_EQ(md__engine_discard(v->e, v->addr, v->len), 0);
		ASSERT_EQ(madvise(v->addr, v->len, MADV_DONTNEED), 0);
	}
	return 0;
}

/* A hole the VMM makes after the cursor read its pagemap window stays a
 * hole: the window is stale from then on, and the pages it showed there
 * are not read (a read would fill them in behind the VMM's back); the
 * batch goes on with a fresh one. */
TEST_IMPL(engine_scanner_leaves_vmm_holes)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 256;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 500);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	struct discard_in_visit v = { &e, r + 128 * PG, 64 * PG, 0 };
	s.files = (struct md__file_source){ &v, find_and_discard, NULL };
	md__scanner_step(&s, n);
	ASSERT(v.calls >= 1);
	/* The batch went on with a fresh window: every page still there was
	 * read, and the first 64 again, for as many reads as it was given. */
	ASSERT_EQ(s.st.scanned, n);
	/* Read in, they would be zero pages of their own (on this kind of
	 * kernel, without a zero page) that a drop would mark ours, for a
	 * handover to the VMM's userfaultfd to fill in again. */
	ASSERT_EQ(s.st.zero, 0);
	const struct md__eregion *er = md__engine_region(&e, (uintptr_t)r, n * PG);
	for (size_t i = 128; i < 192; i++) {
		ASSERT(!(pagemap(r + i * PG) & PM_PRESENT));
		ASSERT(!(er->dropped[i / 8] >> (i % 8) & 1));
	}
	/* The next batch reads windows of its own: the pages around the
	 * holes are visited again, the holes not. */
	uint64_t before = s.st.scanned;
	md__scanner_step(&s, n);
	ASSERT_EQ(s.st.scanned - before, n);
	ASSERT_EQ(s.st.zero, 0);
	for (size_t i = 128; i < 192; i++)
		ASSERT(!(pagemap(r + i * PG) & PM_PRESENT));
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

TEST_IMPL(engine_scanner_zero_runs)
{
	/* The linear cursor drops a run of zero pages (the untouched rest of
	 * a huge page) in one visit, as far as its pagemap window reaches,
	 * counts each a quarter of a visit, and steps over the run. */
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 512;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	fill(r, 1);
	memset(r + PG, 0, 300 * PG);	/* populated: written, with zeroes */
	fill(r + 301 * PG, 2);		/* the rest is never touched */
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	/* Page 0, then page 1 and the 254 after it: the window of 256. */
	md__scanner_step(&s, 2);
	ASSERT_EQ(s.st.scanned, 2);
	ASSERT_EQ(s.st.zero, 255);
	/* The next visit starts after the run: pages 256-300 in one more. */
	md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.scanned, 3);
	ASSERT_EQ(s.st.zero, 300);
	for (size_t i = 1; i <= 300; i++) {
		ASSERT(dropped(r + i * PG));
		ASSERT(md__page_is_zero(r + i * PG));
	}
	unsigned char want[PG];
	fill(want, 2);
	ASSERT(memcmp(r + 301 * PG, want, PG) == 0);
	fill(want, 1);
	ASSERT(memcmp(r, want, PG) == 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	return 0;
}

/* n pages of unique content, registered, and a linear scanner over them
 * (hints off). */
static unsigned char *unique_pages_scanned(struct md__engine *e, struct md__scanner *s, size_t n)
{
	unsigned char *r = map_ram(n);
	engine_up(e);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(s, e, NULL), 0);
	s->ratio = 0;
	return r;
}

/* Steps s, 256 pages a batch, until it has made pass passes. Returns the
 * highest idle it had before that pass ended; *fell counts the batches
 * after which its idle was lower than before. */
static unsigned step_to_pass(struct md__scanner *s, uint64_t pass, unsigned *fell)
{
	unsigned idle_mid = 0;
	for (int k = 0; k < 200 && s->st.passes < pass; k++) {
		unsigned before = s->idle;
		md__scanner_step(s, 256);
		*fell += s->idle < before;
		if (s->st.passes < pass && s->idle > idle_mid)
			idle_mid = s->idle;
	}
	ASSERT_EQ(s->st.passes, pass);
	return idle_mid;
}

TEST_IMPL(engine_scanner_slows_when_quiet)
{
	/* 3,000 pages of unique content: the first pass takes every page's
	 * checksum (work a new guest needs, though it merges nothing) and
	 * keeps the set rate; the second finds nothing, and each 1,024 pages
	 * it reads double the sleep before the pass ends, and the pass's end
	 * again. */
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 3000;
	unsigned char *r = unique_pages_scanned(&e, &s, n);
	unsigned fell = 0;

	step_to_pass(&s, 1, &fell);
	ASSERT_EQ(s.idle, 0);
	unsigned idle_mid = step_to_pass(&s, 2, &fell);
	ASSERT_EQ(s.st.merged_scan, 0);
	ASSERT_EQ(idle_mid, 2);			/* 2 x 1,024 pages read, nothing found */
	ASSERT_EQ(s.idle, 3);			/* and the pass's end */
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* A reap that found merged pages written holds the scanner at its set rate
 * (md__scanner_hold: an idle sleep ends at once) until its cursor has been
 * round once more, past them: they merge again only when it comes by, and
 * 1,024 quiet reads before it got there slowed it down again (a minute and
 * more for 2,048 pages at the idle rate). Then it slows down as before. */
TEST_IMPL(engine_scanner_held_after_breaks)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 3000;
	unsigned char *r = unique_pages_scanned(&e, &s, n);
	unsigned fell = 0;

	step_to_pass(&s, 2, &fell);
	ASSERT_EQ(s.idle, 3);	/* quiet (engine_scanner_slows_when_quiet) */
	md__scanner_hold(&s);
	ASSERT_EQ(s.idle, 0);
	ASSERT_EQ(s.hold_pass, 4);
	/* The pass under way, which may have passed them, and the next. */
	ASSERT_EQ(step_to_pass(&s, 3, &fell), 0);
	ASSERT_EQ(s.idle, 0);
	ASSERT_EQ(step_to_pass(&s, 4, &fell), 0);
	ASSERT_EQ(s.idle, 1);	/* the end of the pass the hold was for */
	step_to_pass(&s, 5, &fell);
	ASSERT_EQ(s.idle, 4);
	ASSERT_EQ(s.st.merged_scan, 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* volatile_skips counts pages whose checksum changed between two visits,
 * not pages' first visits: 16,384 pages never written after the scanner
 * started showed 16,384 volatile skips after its first pass. Those are
 * first_sums, and still keep the set rate (the first pass is work). */
TEST_IMPL(engine_scanner_first_visits_not_volatile)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 16384;
	unsigned char *r = unique_pages_scanned(&e, &s, n);
	unsigned fell = 0;

	unsigned idle_mid = step_to_pass(&s, 1, &fell);
	ASSERT_EQ(s.st.volatile_skips, 0);
	ASSERT_EQ(s.st.first_sums, n);
	ASSERT_EQ(idle_mid, 0);
	step_to_pass(&s, 2, &fell);
	ASSERT_EQ(s.st.volatile_skips, 0);
	ASSERT_EQ(s.st.first_sums, n);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

TEST_IMPL(engine_scanner_keeps_rate_when_pages_change)
{
	/* The same 3,000 pages, each rewritten with new content between the
	 * first pass and the second: the second finds every checksum changed,
	 * merges nothing, and keeps the set rate all through (the third may
	 * merge what the guest wrote). Quiet again, the third slows down. */
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 3000;
	unsigned char *r = unique_pages_scanned(&e, &s, n);
	unsigned fell = 0;

	step_to_pass(&s, 1, &fell);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)(i + 50000));
	uint64_t volatile_before = s.st.volatile_skips;
	unsigned idle_mid = step_to_pass(&s, 2, &fell);
	ASSERT_EQ(s.st.volatile_skips - volatile_before, n);
	ASSERT_EQ(idle_mid, 0);
	ASSERT_EQ(s.idle, 0);
	idle_mid = step_to_pass(&s, 3, &fell);
	ASSERT_EQ(s.st.merged_scan, 0);
	ASSERT_EQ(idle_mid, 2);
	ASSERT_EQ(s.idle, 3);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* The same 3,000 pages; before the second pass, count pages from first on,
 * 8 apart, are zeroed: the first window of 1,024 reads of that pass finds
 * nothing and slows the scanner down (idle 1). *fell: the batches of the
 * second pass after which the sleep was shorter; returns its idle after. */
static unsigned zeroes_in_second_pass(size_t first, unsigned count, unsigned *fell)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 3000;
	unsigned char *r = unique_pages_scanned(&e, &s, n);

	step_to_pass(&s, 1, fell);
	for (size_t i = 0; i < count; i++)
		memset(r + (first + 8 * i) * PG, 0, PG);
	*fell = 0;
	unsigned idle_mid = step_to_pass(&s, 2, fell);
	ASSERT_EQ(s.st.zero, count);
	ASSERT_EQ(idle_mid, 1);	/* the first window: quiet */
	unsigned idle = s.idle;
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return idle;
}

/* 32 zero pages in the second 1,024 reads: that window finds 32 things to
 * do, not fewer than 16 (slow down) nor 64 (the set rate again), and the
 * sleep stays as the first window left it. */
TEST_IMPL(engine_scanner_keeps_rate_in_band)
{
	unsigned fell = 0;
	unsigned idle = zeroes_in_second_pass(1400, 32, &fell);
	ASSERT_EQ(fell, 0);	/* the second window did not bring the set rate back */
	ASSERT_EQ(idle, 2);	/* and the pass's end: quiet */
	return 0;
}

/* The band's top: 64 things done within a window (64 zero pages in the
 * second 1,024 reads) bring the set rate back, which the first window of
 * that pass had slowed. */
TEST_IMPL(engine_scanner_rate_back_at_64_found)
{
	unsigned fell = 0;
	zeroes_in_second_pass(1100, 64, &fell);
	ASSERT_EQ(fell, 1);	/* the second window: the set rate again */
	return 0;
}

/* Steps s a page read at a time (a run of zero pages counts a quarter of
 * each: a batch of 256 went round twice) until it has made pass passes. */
static void zero_steps_to_pass(struct md__scanner *s, uint64_t pass)
{
	for (int k = 0; k < 100000 && s->st.passes < pass; k++)
		md__scanner_step(s, 1);
	ASSERT_EQ(s->st.passes, pass);
}

/* Zero pages the scanner dropped that the guest reads in again, on a kernel
 * without a zero page (each read allocates a page of zeroes; with frames
 * hidden from us the zero page looks the same), are found there and zero
 * once more: dropped again (each still saves a page) but no new work,
 * counted apart (zero_again, not zero) and aged like pages that stay
 * unique. As new work they kept an idle scanner at its set rate, dropping
 * them every pass (4,096 pages read once a second: 250 ms of its CPU per
 * 20 s, 79,104 drops, against 1.7 ms quiet), and the guest allocating each
 * again. A write of zeroes stands in for the read, on any kernel; a reap
 * in between, which finds them there (no zero pages now), does not make
 * them new either. */
TEST_IMPL(engine_scanner_zero_read_again_quiet)
{
	struct md__engine e;
	struct md__scanner s;
	struct md__engine_stats st;
	const size_t n = 1024;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	memset(r, 0, n * PG);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	zero_steps_to_pass(&s, 1);
	ASSERT_EQ(s.st.zero, n);
	unsigned idle = s.idle;	/* the pass's end, after the drops: quiet */
	for (size_t i = 0; i < n; i++)
		ASSERT(dropped(r + i * PG));
	memset(r, 0, n * PG);
	ASSERT_EQ(md__engine_reap(&e), 0);
	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), 0);
	zero_steps_to_pass(&s, 2);
	md__engine_stats(&e, &st);
	ASSERT_EQ(s.st.zero, n);
	ASSERT_EQ(st.zero, n);
	ASSERT_EQ(st.zero_again, n);
	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), n);
	for (size_t i = 0; i < n; i++)
		ASSERT(dropped(r + i * PG));
	ASSERT_EQ(s.idle, idle + 1);	/* a quiet pass */
	/* Aged: skipped by the next pass, there or not; dropped again by
	 * the one after it, and skipped longer. */
	memset(r, 0, n * PG);
	uint64_t skipped = s.st.skipped;
	zero_steps_to_pass(&s, 3);
	ASSERT_EQ(s.st.skipped - skipped, n);
	zero_steps_to_pass(&s, 4);
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.zero_again, 2 * n);
	ASSERT_EQ(s.st.zero, n);
	skipped = s.st.skipped;
	zero_steps_to_pass(&s, 7);
	ASSERT_EQ(s.st.skipped - skipped, 3 * n);
	ASSERT_EQ(s.idle, 5);
	/* Written with data, then zeroes again after the scanner saw the
	 * data: new work once more. */
	for (size_t i = 0; i < 16; i++)
		fill(r + i * PG, 7 + (unsigned)i);
	zero_steps_to_pass(&s, 9);	/* past the skips: seen written */
	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), n - 16);
	memset(r, 0, 16 * PG);
	zero_steps_to_pass(&s, 10);
	ASSERT_EQ(s.st.zero, n + 16);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* The linear cursor takes a run of pages of one word (freed guest kernel
 * memory poisoned with 0xcc) with the page it found and steps over it, as
 * it does zero pages; unlike those, it maps them from a fill strip only
 * when they were the same at its last visit too (the guest hands such
 * memory out again soon). */
TEST_IMPL(engine_scanner_fill_runs)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 512;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	fill(r, 1);
	memset(r + PG, 0xcc, 300 * PG);
	fill(r + 301 * PG, 2);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	/* The first pass: page 0, then page 1 and the 254 after it (the
	 * window), then pages 256-300: recorded, not merged. */
	md__scanner_step(&s, 2);
	ASSERT_EQ(s.st.scanned, 2);
	md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.scanned, 3);
	ASSERT_EQ(s.st.filled, 0);
	ASSERT_EQ(s.st.first_sums, 1 + 300);	/* pages first seen, a run's each */
	ASSERT_EQ(s.st.volatile_skips, 0);
	ASSERT(!(pagemap(r + PG) & PM_FILE));
	memset(r + 5 * PG, 0xdd, PG);		/* changed since */
	for (int k = 0; k < 20 && s.st.filled < 299; k++)
		md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.filled, 299);
	ASSERT_EQ(s.st.zero, 0);
	for (size_t i = 1; i <= 300; i++) {
		if (i == 5) {
			ASSERT(!(pagemap(r + i * PG) & PM_FILE));
			ASSERT(md__page_is_filled(r + i * PG, 0xddddddddddddddddull));
			continue;
		}
		ASSERT(md__page_is_filled(r + i * PG, 0xccccccccccccccccull));
		ASSERT(pagemap(r + i * PG) & PM_FILE);
	}
	/* Runs 1-4 and 6-255 (page 5 between), each from the strip's start. */
	ASSERT_EQ(pfn(r + PG), pfn(r + 6 * PG));
	ASSERT_EQ(pfn(r + 6 * PG), pfn(r + 22 * PG));
	ASSERT(pfn(r + 6 * PG) != pfn(r + 7 * PG));
	ASSERT(pool_mappings(r, r + n * PG) <= 300 / 16 + 4);
	unsigned char want[PG];
	fill(want, 2);
	ASSERT(memcmp(r + 301 * PG, want, PG) == 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	return 0;
}

/* A run of a word no fill strip is left for: when its first page changed
 * since the last visit and the rest did not, the rest waits for the next
 * pass (the cursor steps over it), and then the run merges through the
 * pool as any pages do. Given up at once, the changed page went on as a
 * page like any other and merged with the next, past the volatility
 * filter. */
TEST_IMPL(engine_scanner_fill_without_strip_waits)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 16;
	unsigned char *r = map_ram(n);
	uint64_t word;

	engine_up(&e);
	for (size_t i = 0; i < 4; i++)
		memset(r + i * PG, 0x11 * (int)(i + 1), PG);	/* one word per strip */
	fill(r + 4 * PG, 1);
	memset(r + 5 * PG, 0x55, 3 * PG);
	for (size_t i = 8; i < n; i++)
		fill(r + i * PG, (unsigned)i);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	for (size_t i = 0; i < 4; i++) {
		ASSERT(md__page_fill(r + i * PG, &word));
		ASSERT_EQ(md__engine_merge_fill(&e, r + i * PG, 1, word), 1);
	}
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	while (s.st.passes < 1)
		md__scanner_step(&s, 1);
	memset(r + 4 * PG, 0x55, PG);	/* the run now starts a page earlier */
	while (s.st.passes < 2)
		md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.volatile_skips, 1);
	ASSERT_EQ(s.st.merged_scan, 0);
	ASSERT_EQ(s.st.filled, 0);
	while (s.st.passes < 3)
		md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.merged_scan, 3);
	ASSERT_EQ(s.st.published, 1);
	for (size_t i = 4; i < 8; i++) {
		ASSERT_EQ(pfn(r + i * PG), pfn(r + 4 * PG));
		ASSERT(md__page_is_filled(r + i * PG, 0x5555555555555555ull));
	}
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* A page the scanner dropped as zero that the guest wrote with a fill
 * word since (its allocator's poison, a different one at each visit) is no
 * dropped page any more: counted as one it made zero_pages and the profit
 * count memory that holds content. */
TEST_IMPL(engine_scanner_fill_written_not_dropped)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 4;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, 10 + (unsigned)i);
	memset(r + 2 * PG, 0, PG);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	for (int k = 0; k < 8 && s.st.zero < 1; k++)
		md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.zero, 1);
	ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), 1);
	/* Poisoned with one word, then another: recorded each time, never
	 * mapped from a strip (not the same at two visits), never zero. */
	for (int pass = 0; pass < 4; pass++) {
		memset(r + 2 * PG, pass % 2 ? 0xdd : 0xcc, PG);
		for (size_t k = 0; k < n; k++)
			md__scanner_step(&s, 1);
		ASSERT_EQ(md__engine_dropped_pages(&e.regions[0]), 0);
	}
	ASSERT_EQ(s.st.filled, 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

TEST_IMPL(engine_scanner_skips_volatile)
{
	/* KSM's volatility filter: a page is looked up only when its checksum
	 * is the one the cursor saw on its last visit. A first visit records
	 * it; a page written between two visits is skipped again, and merges
	 * on the next visit that finds it unchanged. */
	struct md__engine e;
	struct md__scanner s;
	unsigned char *a = map_ram(2), *b = map_ram(2);

	engine_up(&e);
	fill(a, 1);
	fill(a + PG, 2);
	fill(b, 1);	/* a twin from the start */
	fill(b + PG, 3);	/* a twin of a + PG only after the first pass */
	ASSERT_EQ(md__engine_register(&e, a, 2 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, 2 * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	md__scanner_step(&s, 4);	/* first visits: checksums recorded */
	ASSERT_EQ(s.st.first_sums, 4);
	ASSERT_EQ(s.st.volatile_skips, 0);	/* nothing changed yet */
	ASSERT(pfn(a) != pfn(b));

	fill(b + PG, 2);	/* changed: equal to a + PG now */
	md__scanner_step(&s, 4);
	ASSERT_EQ(pfn(a), pfn(b));	/* stable twins merge */
	ASSERT_EQ(s.st.volatile_skips, 1);	/* b + PG changed: skipped */
	ASSERT(pfn(a + PG) != pfn(b + PG));
	md__scanner_step(&s, 2);	/* unchanged since: merges */
	ASSERT_EQ(s.st.volatile_skips, 1);
	ASSERT_EQ(s.st.first_sums, 4);
	ASSERT_EQ(pfn(a + PG), pfn(b + PG));
	unsigned char want[PG];
	fill(want, 2);
	ASSERT(memcmp(b + PG, want, PG) == 0);
	fill(want, 1);
	ASSERT(memcmp(b, want, PG) == 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	return 0;
}

/* Random order is no stride: the pages a pass visits one after another
 * are apart by as many distances as a random permutation's (about 1 - 1/e
 * of them distinct), where first + k * stride gave one. Each page once. */
TEST_IMPL(engine_scanner_random_not_strided)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 1000;
	unsigned char *r = map_ram(n);
	static size_t order[1000];
	static unsigned char dist_seen[1000];

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)(i + 10));
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	s.random_order = 1;
	struct md__eregion *reg = &e.regions[0];
	for (size_t v = 0; v < n; v++) {
		md__scanner_step(&s, 1);
		size_t found = n;
		for (size_t i = 0; i < n; i++) {
			int before = 0;
			for (size_t w = 0; w < v && !before; w++)
				before = order[w] == i;
			if (reg->seen[i] && !before) {
				ASSERT_EQ(found, n);	/* one new page a visit */
				found = i;
			}
		}
		ASSERT(found < n);
		order[v] = found;
	}
	ASSERT_EQ(s.st.passes, 1);
	size_t distinct = 0;
	for (size_t v = 1; v < n; v++) {
		size_t d = (order[v] + n - order[v - 1]) % n;
		distinct += !dist_seen[d];
		dist_seen[d] = 1;
	}
	printf("  %zu distinct distances between %zu visits in turn\n", distinct, n - 1);
	ASSERT(distinct > n / 3);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* In random order a pass visits every page once, whatever region it is
 * in: a region drawn first gave two pages as many visits as 2,048, and
 * ended a pass at nearly every draw of theirs. */
TEST_IMPL(engine_scanner_random_by_page)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 2048;
	unsigned char *big = map_ram(n), *rom = map_ram(2);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(big + i * PG, (unsigned)(i + 10));
	fill(rom, 1);
	fill(rom + PG, 2);
	ASSERT_EQ(md__engine_register(&e, big, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, rom, 2 * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	s.random_order = 1;
	/* A pass is n + 2 visits of n + 2 pages, each page once: with
	 * independent draws about 1 - 1/e of them were seen (1,296), 808
	 * with half the visits spent on the two. */
	md__scanner_step(&s, n + 1);
	ASSERT_EQ(s.st.passes, 0);
	md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.passes, 1);
	ASSERT_EQ(s.st.first_sums, n + 2);	/* every page's first checksum */
	ASSERT_EQ(s.st.volatile_skips, 0);
	/* The next pass, in another order, visits every page once again. */
	for (size_t i = 0; i < n; i++)
		fill(big + i * PG, (unsigned)(i + 20000));
	uint64_t volatile_before = s.st.volatile_skips;
	md__scanner_step(&s, n + 2);
	ASSERT_EQ(s.st.first_sums, n + 2);
	ASSERT_EQ(s.st.passes, 2);
	ASSERT_EQ(s.st.volatile_skips - volatile_before, n);	/* each changed page once */
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(big, n * PG);
	munmap(rom, 2 * PG);
	return 0;
}

/* The VMM lets go of part of a region mid-pass (the region table is
 * reordered and the region split): the linear cursor still visits every
 * page left in the pass, which counts as full only then. Kept as a place
 * in the table, it jumped to another region's middle, and the pages before
 * it went unvisited that pass. */
TEST_IMPL(engine_scanner_cursor_survives_unregister)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t na = 64, nb = 1024, nc = 1024;
	unsigned char *m[3] = { map_ram(na), map_ram(nb), map_ram(nc) };
	const size_t np[3] = { na, nb, nc };

	engine_up(&e);
	for (int j = 0; j < 3; j++) {
		for (size_t i = 0; i < np[j]; i++)
			fill(m[j] + i * PG, (unsigned)(j * 10000 + i + 1));
		ASSERT_EQ(md__engine_register(&e, m[j], np[j] * PG, 0), 0);
	}
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	/* Half a pass, then the first region (first in the table) loses its
	 * first 16 pages. */
	md__scanner_step(&s, (na + nb + nc) / 2);
	ASSERT_EQ(s.st.passes, 0);
	ASSERT_EQ(md__engine_unregister(&e, m[0], 16 * PG, MD_UNREG_MAPPED), 0);
	for (int k = 0; k < 1000 && s.st.passes == 0; k++)
		md__scanner_step(&s, 16);
	ASSERT_EQ(s.st.passes, 1);
	size_t unseen = 0;
	for (int j = 0; j < 3; j++) {
		unsigned char *from = j ? m[j] : m[0] + 16 * PG, *end = m[j] + np[j] * PG;
		struct md__eregion *r = md__engine_region(&e, (uintptr_t)from, PG);
		ASSERT(r);
		for (unsigned char *p = from; p < end; p += PG)
			unseen += !r->seen[((uintptr_t)p - r->start) / PG];
	}
	ASSERT_EQ(unseen, 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	for (int j = 0; j < 3; j++)
		munmap(m[j], np[j] * PG);
	return 0;
}

/* The VMM lets go of the rest of the highest region while the linear
 * cursor is in it: the cursor, past every region now, starts again at the
 * lowest region's start, and that ends one pass (full_scans). It went on
 * from where it was instead, past every region: a visit of a page no
 * longer registered, and a second pass ended at once. */
TEST_IMPL(engine_scanner_wrap_after_unregister_ends_pass)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 128;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, r, 64 * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, r + 64 * PG, 64 * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	md__scanner_step(&s, 96);	/* pages 0-95: the cursor at 96 */
	ASSERT_EQ(s.st.passes, 0);
	ASSERT_EQ(md__engine_unregister(&e, r + 96 * PG, 32 * PG, MD_UNREG_MAPPED), 0);
	md__scanner_step(&s, 1);	/* page 0 again */
	ASSERT_EQ(s.st.passes, 1);
	ASSERT_EQ(s.st.scanned, 97);
	ASSERT_EQ(s.at, (uintptr_t)(r + PG));
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* A ratio of 8 gives the cursor no visits while hints last, so the cursor
 * could never be compared: it steps down to 7 at the first epoch. */
TEST_IMPL(engine_scanner_ratio_leaves_8)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 4096;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 64), 0);
	/* Reads fill RAM in pairs: hints name it. */
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)(i % (n / 2)) + 50000);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 8;
	for (size_t i = 0; i < n; i += 64)
		md__hints_push(&h, (uintptr_t)(r + i * PG), 64 * PG, 0, 0);
	for (int i = 0; i < 20 && s.ratio == 8; i++)
		md__scanner_step(&s, 256);
	ASSERT_EQ(s.ratio, 7);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* The daemon's rate and CPU cap are for all its agents together: each
 * agent's share of pages is whole and its sleep longer in proportion, so
 * together they keep the set rate (rounded up alone, 400 agents under
 * KSM's 100 pages scanned 400 a sleep; rounded down, 100 under 199 pages
 * scanned 100); a cap's share is not rounded (16 under a 10 % cap took
 * 1 % each, 16 % in all). */
TEST_IMPL(engine_scanner_shares_keep_rate)
{
	const unsigned all = MD_SCAN_PART_ALL;
	uint64_t sleep = 20000000;
	ASSERT_EQ(md__scanner_share(100, all, &sleep), 100);
	ASSERT_EQ(sleep, 20000000);
	ASSERT_EQ(md__scanner_share(100, 0, &sleep), 100);	/* none said: all */
	ASSERT_EQ(sleep, 20000000);
	ASSERT_EQ(md__scanner_share(100, all / 2, &sleep), 50);
	ASSERT_EQ(sleep, 20000000);
	ASSERT_EQ(md__scanner_share(100, all / 3, &sleep), 34);
	ASSERT_EQ(sleep, 20400311);	/* 34 pages per 20.4 ms: a third of 100 per 20 ms */
	sleep = 20000000;
	ASSERT_EQ(md__scanner_share(100, all / 400, &sleep), 1);
	ASSERT_EQ(sleep, 80412269);	/* 1 page per 80.4 ms (the part is 163/65536, not 1/400) */
	sleep = 20000000;
	ASSERT_EQ(md__scanner_share(199, all / 100, &sleep), 2);
	ASSERT_EQ(sleep, 20111550);	/* 2 pages per 20.1 ms */
	sleep = 20000000;
	ASSERT_EQ(md__scanner_share(100, all / 8 * 7, &sleep), 88);	/* an uneven part */
	ASSERT_EQ(sleep, 20114285);	/* 87.5 pages per 20 ms */
	sleep = 20000000;
	ASSERT_EQ(md__scanner_share(0, all / 4, &sleep), 0);
	ASSERT_EQ(sleep, 20000000);
	/* 1 ms of CPU in 1 ms: at a sixteenth of 10 % of a core, 160 ms. */
	ASSERT_EQ(md__scanner_capped(1000000, 1000000, 20000000, 10, all / 16), 159000000);
	ASSERT_EQ(md__scanner_capped(1000000, 1000000, 20000000, 10, all), 20000000);	/* 10 ms < 21 */
	ASSERT_EQ(md__scanner_capped(1000000, 1000000, 20000000, 100, all / 4), 20000000);	/* 4 ms < 21 */
	ASSERT_EQ(md__scanner_capped(10000000, 1000000, 20000000, 100, all / 4), 39000000);	/* 25 % */
	ASSERT_EQ(md__scanner_capped(7000000, 1000000, 2000000, 100, all / 8 * 7), 7000000);	/* 87.5 %: 8 ms */
	ASSERT_EQ(md__scanner_capped(1000000, 1000000, 2000000, 100, all), 2000000);	/* no cap at 100 */
	ASSERT_EQ(md__scanner_capped(9000000, 1000000, 2000000, 0, all / 8), 2000000);	/* none */
	return 0;
}

struct unreg_during_step {
	struct md__engine *e;
	struct md__scanner *s;
	void *page;
	uint64_t from, scanned_then;
};

static void *unreg_during_step(void *arg)
{
	struct unreg_during_step *u = arg;
	while (__atomic_load_n(&u->s->st.scanned, __ATOMIC_RELAXED) < u->from)
		;
	md__engine_unregister(u->e, u->page, PG, MD_UNREG_MAPPED);
	u->scanned_then = __atomic_load_n(&u->s->st.scanned, __ATOMIC_RELAXED);
	return NULL;
}

/* A long batch (a high pages_to_scan) lets the VMM's calls on guest RAM
 * in every 256 visits: it held the regions' lock for all of it (100 ms at
 * 100,000 pages), and an munmap waited as long. The unregister ends while
 * the batch still runs. Without memdedupd; and with its pool (one that
 * never answers) and a page waiting for it all batch long (pending: the
 * rest rewritten, volatile), which held the lock to the batch's end. */
static void lets_go_of_regions(int pending)
{
	struct md__engine e;
	struct md__scanner s;
	struct md__remote rm;
	const size_t n = 32768;
	unsigned char *d = map_ram(n), *small = map_ram(4);
	pthread_t th;
	char sock[400];

	engine_up(&e);
	if (pending) {
		snprintf(sock, sizeof(sock), "%s/nobody.sock", test_dir());
		ASSERT_EQ(md__remote_init(&rm, sock, "none"), 0);
		e.remote = &rm;
	}
	for (size_t i = 0; i < n; i++)
		fill(d + i * PG, (unsigned)i + 1);
	fill(small, 7);
	ASSERT_EQ(md__engine_register(&e, d, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, small, 4 * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	md__scanner_step(&s, n + 4);	/* the checksums */
	/* Every 1,024th page stable, so some page pends from early on: at
	 * most 32 (visited once a batch), never the 256 of a round trip. */
	for (size_t i = 0; pending && i < n; i++)
		if (i % 1024)
			fill(d + i * PG, (unsigned)(i + n));
	struct unreg_during_step u = { &e, &s, small, s.st.scanned + 1024, 0 };
	ASSERT(pthread_create(&th, NULL, unreg_during_step, &u) == 0);
	/* With a page pending (page 0 on), within a pass: its end sends
	 * what waits. */
	md__scanner_step(&s, pending ? n - 2048 : 4 * n);
	ASSERT(pthread_join(th, NULL) == 0);
	fprintf(stderr, "  unregistered after %llu of the batch's %llu visits\n",
		(unsigned long long)(u.scanned_then - (u.from - 1024)), (unsigned long long)(s.st.scanned - (u.from - 1024)));
	ASSERT(u.scanned_then < s.st.scanned);
	ASSERT(!md__engine_touches(&e, (uintptr_t)small, PG));
	md__scanner_free(&s);
	md__engine_fini(&e);
	if (pending)
		md__remote_fini(&rm);
	munmap(d, n * PG);
	munmap(small, 4 * PG);
}

TEST_IMPL(engine_scanner_lets_go_of_regions)
{
	lets_go_of_regions(0);
	return 0;
}

TEST_IMPL(engine_scanner_lets_go_of_regions_pending)
{
	lets_go_of_regions(1);
	return 0;
}

/* The share of a core a scanner of 16,384 unique pages used under a 10 %
 * CPU cap over 1.5 s, once idle, while every 20 ms new hints poked it
 * (poke) or its sleep was set again (else). */
static double cap_kept_share(int poke)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 16384;
	unsigned char *d = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 64), 0);
	for (size_t i = 0; i < n; i++)
		fill(d + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, d, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.batch = 100000;
	s.sleep_ms = 1;
	s.cpu_percent = 10;
	s.share_batch = s.share_cpu = MD_SCAN_PART_ALL;
	ASSERT_EQ(md__scanner_start(&s), 0);
	/* Quiet after its first pass: idle. */
	for (int i = 0; i < 300 && __atomic_load_n(&s.idle, __ATOMIC_RELAXED) == 0; i++)
		usleep(10000);
	ASSERT(__atomic_load_n(&s.idle, __ATOMIC_RELAXED) > 0);
	uint64_t cpu0 = __atomic_load_n(&s.st.cpu_ns, __ATOMIC_RELAXED);
	double t0 = now();
	for (int i = 0; i < 75; i++) {
		if (poke)
			md__scanner_poke(&s);
		else
			__atomic_store_n(&s.sleep_ms, 1 + (unsigned)(i % 2), __ATOMIC_RELAXED);
		usleep(20000);
	}
	double share = (double)(__atomic_load_n(&s.st.cpu_ns, __ATOMIC_RELAXED) - cpu0) / 1e9 / (now() - t0);
	md__scanner_stop(&s);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(d, n * PG);
	return share;
}

/* New hints end an idle sleep, not the sleep the CPU cap asks for: a VMM
 * whose reads poke the scanner every 20 ms took 60-80 % of a core under a
 * 10 % cap (8-9 % without the pokes). */
TEST_IMPL(engine_scanner_pokes_keep_cpu_cap)
{
	double share = cap_kept_share(1);
	fprintf(stderr, "  scanner's CPU under a 10 %% cap, poked every 20 ms: %.0f %%\n", share * 100);
	ASSERT(share < 0.3);	/* a bound, not a speed */
	return 0;
}

/* The same with the tunables moving every 20 ms (a share that changes as
 * agents come and go, an operator's set): each change ended the sleep,
 * the CPU cap's part of it too (89 %). */
TEST_IMPL(engine_scanner_tunables_keep_cpu_cap)
{
	double share = cap_kept_share(0);
	fprintf(stderr, "  scanner's CPU under a 10 %% cap, its sleep set every 20 ms: %.0f %%\n", share * 100);
	ASSERT(share < 0.3);	/* a bound, not a speed */
	return 0;
}

/* A thread's CPU time by its own clock, not by what the scanner counts. */
static uint64_t thread_cpu_ns(pthread_t t)
{
	clockid_t c;
	struct timespec ts;
	ASSERT_EQ(pthread_getcpuclockid(t, &c), 0);
	ASSERT_EQ(clock_gettime(c, &ts), 0);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct churn {
	unsigned char *d;
	size_t n;
	int stop;
};

/* A guest that keeps writing its memory: one word of every page, every
 * 20 ms, so every visit finds a new checksum and the scanner stays busy. */
static void *churn(void *arg)
{
	struct churn *c = arg;
	for (uint64_t x = 1; !__atomic_load_n(&c->stop, __ATOMIC_RELAXED); x++, usleep(20000))
		for (size_t i = 0; i < c->n; i++)
			*(volatile uint64_t *)(c->d + i * PG) = x;
	return NULL;
}

/* The CPU cap holds for the scanner thread's real CPU time, its sleeps'
 * wake-ups too, and cpu_ns counts them: the cap and cpu_ns counted the
 * batches alone, and the sleep the cap asked for, taken in slices of the
 * set sleep (here 1 ms: a thousand wake-ups a second), was not counted.
 * Busy (memory that keeps changing, 4,096 pages a batch), under a 1 %
 * cap, it used 3.5-4 % of a core and counted 1 %. */
TEST_IMPL(engine_scanner_cap_holds_real_cpu)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 8192;
	unsigned char *d = map_ram(n);
	pthread_t th;

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(d + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, d, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	struct churn c = { d, n, 0 };
	ASSERT(pthread_create(&th, NULL, churn, &c) == 0);
	s.ratio = 0;
	s.batch = 4096;
	s.sleep_ms = 1;
	s.cpu_percent = 1;
	s.share_batch = s.share_cpu = MD_SCAN_PART_ALL;
	ASSERT_EQ(md__scanner_start(&s), 0);
	usleep(500000);
	uint64_t real0 = thread_cpu_ns(s.thread), counted0 = __atomic_load_n(&s.st.cpu_ns, __ATOMIC_RELAXED);
	double t0 = now();
	usleep(4000000);
	uint64_t real = thread_cpu_ns(s.thread);
	double t = now() - t0;
	uint64_t counted = __atomic_load_n(&s.st.cpu_ns, __ATOMIC_RELAXED);
	unsigned idle = __atomic_load_n(&s.idle, __ATOMIC_RELAXED);
	md__scanner_stop(&s);
	__atomic_store_n(&c.stop, 1, __ATOMIC_RELAXED);
	ASSERT(pthread_join(th, NULL) == 0);
	double share = (double)(real - real0) / 1e9 / t;
	fprintf(stderr, "  scanner's real CPU under a 1 %% cap at 1 ms sleeps: %.2f %% (counted %.2f %%), %llu pages read\n",
		share * 100, (double)(counted - counted0) / 1e9 / t * 100, (unsigned long long)s.st.scanned);
	ASSERT_EQ(idle, 0);	/* busy all along */
	ASSERT(s.st.scanned > n);
	ASSERT(share < 0.02);	/* a bound, not a speed: twice the cap */
	/* All of the thread's CPU time is counted, its last sleep's too. */
	ASSERT(s.st.cpu_ns >= real);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(d, n * PG);
	return 0;
}

/* A paused scanner blocks until resumed: woken every set sleep to look
 * (here 1 ms), it used 4 % of a core doing nothing. A resume wakes it at
 * once. */
TEST_IMPL(engine_paused_scanner_sleeps)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 16;
	unsigned char *d = map_ram(n);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(d + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, d, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.sleep_ms = 1;
	s.share_batch = s.share_cpu = MD_SCAN_PART_ALL;
	s.paused = 1;
	ASSERT_EQ(md__scanner_start(&s), 0);
	usleep(100000);
	uint64_t cpu0 = thread_cpu_ns(s.thread);
	long before = thread_switches("md-scan");
	ASSERT(before >= 0);
	usleep(3000000);
	uint64_t cpu = thread_cpu_ns(s.thread) - cpu0;
	long woke = thread_switches("md-scan") - before;
	fprintf(stderr, "  a paused scanner woke %ld times in 3 s, %.3f ms of CPU\n", woke, (double)cpu / 1e6);
	ASSERT(woke <= 6);	/* 3,000 at its set sleep */
	ASSERT(cpu < 6000000);	/* 0.2 % of a core: a bound, not a speed */
	ASSERT_EQ(__atomic_load_n(&s.st.scanned, __ATOMIC_RELAXED), 0);
	/* Resumed (as the agent does: paused cleared, then a poke), it
	 * scans at once, not at its second's end. */
	__atomic_store_n(&s.paused, 0, __ATOMIC_SEQ_CST);
	md__scanner_poke(&s);
	double t0 = now();
	while (__atomic_load_n(&s.st.scanned, __ATOMIC_RELAXED) == 0 && now() - t0 < 2)
		usleep(1000);
	double took = now() - t0;
	fprintf(stderr, "  resumed, it scanned after %.0f ms\n", took * 1000);
	ASSERT(took < 0.5);
	md__scanner_stop(&s);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(d, n * PG);
	return 0;
}

struct unreg_during_passes {
	struct md__engine *e;
	struct md__scanner *s;
	void *page;
	uint64_t passes_then;
};

static void *unreg_during_passes(void *arg)
{
	struct unreg_during_passes *u = arg;
	while (__atomic_load_n(&u->s->st.passes, __ATOMIC_RELAXED) < 1)
		;
	md__engine_unregister(u->e, u->page, PG, MD_UNREG_MAPPED);
	u->passes_then = __atomic_load_n(&u->s->st.passes, __ATOMIC_RELAXED);
	return NULL;
}

/* The same over memory never touched: visits that read nothing (not
 * there) are cheap, and a batch may make 16 times its pages of them. The
 * lock is let go by visits, not by pages read: counted by pages read, such
 * a batch never let go. */
TEST_IMPL(engine_scanner_lets_go_over_empty_memory)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 1048576;	/* 4 GiB, never touched: a pass long enough for the other thread */
	unsigned char *d = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
				-1, 0), *small = map_ram(4);
	pthread_t th;

	ASSERT(d != MAP_FAILED);
	engine_up(&e);
	fill(small, 7);
	ASSERT_EQ(md__engine_register(&e, d, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, small, 4 * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	md__scanner_step(&s, 4);	/* small's checksums, and some of d */
	uint64_t start = s.st.passes;
	ASSERT_EQ(start, 0);
	struct unreg_during_passes u = { &e, &s, small, 0 };
	ASSERT(pthread_create(&th, NULL, unreg_during_passes, &u) == 0);
	md__scanner_step(&s, 200000);	/* up to 3.2 M visits: two passes over d */
	ASSERT(pthread_join(th, NULL) == 0);
	fprintf(stderr, "  unregistered after %llu of the batch's %llu passes\n",
		(unsigned long long)u.passes_then, (unsigned long long)s.st.passes);
	ASSERT_EQ(s.st.passes, 2);	/* a batch ends with its second pass */
	ASSERT(u.passes_then < s.st.passes);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(d, n * PG);
	munmap(small, 4 * PG);
	return 0;
}

static size_t fm_merged;
static int fm_find(void *arg, uint64_t hash, const void *page, uint64_t *cookie)
{
	(void)arg, (void)hash;
	memcpy(cookie, page, sizeof(*cookie));	/* the content, maybe a copy's */
	return 1;	/* every page is a file page's copy */
}
static void fm_merge(void *arg, const uintptr_t *addr, const uint64_t *cookie, size_t n)
{
	(void)arg;
	for (size_t i = 0; i < n; i++)	/* each address with its own page's cookie */
		ASSERT(memcmp((const void *)addr[i], &cookie[i], sizeof(*cookie)) == 0);
	fm_merged += n;
}

TEST_IMPL(engine_scanner_file_matches_all)
{
	/* Every page equal to a file page goes to the file source, however
	 * many a batch finds: none falls through to the pool. (With room for
	 * 64 a batch, three in four of a 256-page batch's were published.) */
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 1024;
	unsigned char *r = unique_pages_scanned(&e, &s, n);

	s.files = (struct md__file_source){ NULL, fm_find, fm_merge };
	fm_merged = 0;
	/* The index of image pages is asked before the volatility filter:
	 * one pass finds every match, on the pages' first visit. */
	for (int k = 0; k < 64 && s.st.passes < 1; k++)
		md__scanner_step(&s, 512);
	ASSERT_EQ(s.st.passes, 1);
	ASSERT_EQ(s.st.file_matches, n);
	ASSERT_EQ(fm_merged, n);
	ASSERT_EQ(s.st.volatile_skips, 0);
	ASSERT_EQ(s.st.published, 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

TEST_IMPL(engine_scanner_queues_page_once)
{
	/* A batch whose hints and cursor both come to the same pages queues
	 * each for its merge once: the second visit finds it waiting. */
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 16;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.files = (struct md__file_source){ NULL, fm_find, fm_merge };
	fm_merged = 0;
	md__hints_push(&h, (uintptr_t)r, n * PG, 0, 0);
	/* Half the visits hinted, half the cursor's, from the region's start:
	 * both reach every page within the batch. */
	md__scanner_step(&s, 2 * n);
	ASSERT_EQ(md__hints_count(&h), 0);
	ASSERT_EQ(s.st.file_matches, n);
	ASSERT_EQ(fm_merged, n);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

TEST_IMPL(engine_scanner_reads_only_present)
{
	/* The cursor reads its pages through the kernel, many at a time
	 * (content() in scanner.c): only those pagemap shows present. The
	 * kernel's read of an absent page would populate guest RAM. */
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 512;
	unsigned char *r = map_ram(n);
	ASSERT_EQ(madvise(r, n * PG, MADV_NOHUGEPAGE), 0);	/* one fault, one page */
	engine_up(&e);
	for (size_t i = 0; i < n; i += 3)
		fill(r + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	for (int k = 0; k < 64 && s.st.passes < 2; k++)
		md__scanner_step(&s, 256);
	ASSERT_EQ(s.st.passes, 2);
	ASSERT(s.st.scanned >= 2 * ((n + 2) / 3));	/* each written page, each pass */
	unsigned char want[PG];
	for (size_t i = 0; i < n; i++) {
		if (i % 3) {
			ASSERT(!(pagemap(r + i * PG) & PM_PRESENT));
			continue;
		}
		fill(want, (unsigned)i + 1);
		ASSERT(memcmp(r + i * PG, want, PG) == 0);
	}
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* 1,024 pages of RAM from a huge page boundary, each of the first 528 of
 * its own content, the rest zero but page keep (if not 0); registered,
 * a scanner at 7 hinted visits of 8 and a hint of pages 512-527 (a read
 * at the start of the second huge page). The RAM's start. */
static unsigned char *hinted_huge_page(struct md__engine *e, struct md__hints *h, struct md__scanner *s,
				       size_t keep)
{
	const size_t n = 1024, hp = 512;
	unsigned char *m = map_ram(n + hp);
	unsigned char *r = (unsigned char *)(((uintptr_t)m + hp * PG - 1) & ~(uintptr_t)(hp * PG - 1));

	engine_up(e);
	ASSERT_EQ(md__hints_init(h, 16), 0);
	for (size_t i = 0; i < n; i++) {
		if (i >= hp + 16 && i != keep)
			memset(r + i * PG, 0, PG);	/* present, zero */
		else
			fill(r + i * PG, (unsigned)i + 1);
	}
	ASSERT_EQ(md__engine_register(e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(s, e, h), 0);
	s->ratio = 7;
	md__hints_push(h, (uintptr_t)(r + hp * PG), 16 * PG, 0, 0);
	return r;
}

TEST_IMPL(engine_scanner_sweeps_near_hints)
{
	/* After a hinted run, the scanner drops the zero pages of the huge
	 * page the read landed in, once per huge page; a page that is not
	 * zero stays, and the cursor's pages are not touched by it. */
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 1024, hp = 512;
	unsigned char *r = hinted_huge_page(&e, &h, &s, 700);
	/* 7 of the first 8 visits are hinted pages: the run is not done. */
	md__scanner_step(&s, 8);
	ASSERT_EQ(s.st.hinted, 7);
	ASSERT_EQ(s.st.zero, 0);
	/* The run ends: its huge page is swept (pages 528-1023 but 700). */
	md__scanner_step(&s, 16);
	ASSERT_EQ(s.st.hinted, 16);
	ASSERT_EQ(s.st.zero_swept, 495);
	ASSERT_EQ(s.st.zero, 495);
	for (size_t i = hp + 16; i < n; i++)
		if (i != 700)
			ASSERT(dropped(r + i * PG));
	unsigned char want[PG];
	fill(want, 701);
	ASSERT(memcmp(r + 700 * PG, want, PG) == 0);
	ASSERT(!dropped(r + 700 * PG));
	/* Swept once: a page zeroed since stays until the cursor comes. */
	memset(r + 700 * PG, 0, PG);
	md__hints_push(&h, (uintptr_t)(r + hp * PG), 4 * PG, 0, 0);
	md__scanner_step(&s, 8);
	ASSERT_EQ(s.st.zero_swept, 495);
	ASSERT(!dropped(r + 700 * PG));
	for (size_t i = 0; i < hp + 16; i++) {
		fill(want, (unsigned)i + 1);
		ASSERT(memcmp(r + i * PG, want, PG) == 0);
	}
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	return 0;
}

/* Hints of 1,024 pages in pairs and a cursor over 2,048 unique pages, on
 * e up (with memdedupd or not), the ratio at 4: after two epochs of
 * visits (the first holds the first copies, no merge yet, LIFO: the
 * second half first; the second their twins) the hints merged, the
 * cursor did not, and the hints' share has grown. d and u: the RAM. */
static void hints_merge_ratio_grows(struct md__engine *e, struct md__hints *h, struct md__scanner *s,
				    unsigned char **d, unsigned char **u)
{
	const size_t dup = 1024, uniq = 2048;
	*d = map_ram(dup);
	*u = map_ram(uniq);
	ASSERT_EQ(md__hints_init(h, 64), 0);
	for (size_t i = 0; i < dup; i++)
		fill(*d + i * PG, (unsigned)(i % (dup / 2)) + 1);	/* two copies each */
	for (size_t i = 0; i < uniq; i++)
		fill(*u + i * PG, (unsigned)(i + 100000));
	ASSERT_EQ(md__engine_register(e, *u, uniq * PG, 0), 0);
	ASSERT_EQ(md__engine_register(e, *d, dup * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(s, e, h), 0);
	s->ratio = 4;
	for (size_t i = 0; i < dup; i += 16)
		md__hints_push(h, (uintptr_t)(*d + i * PG), 16 * PG, 0, 0);
	for (int i = 0; i < 20 && s->st.hinted + s->st.scanned < 2100; i++)
		md__scanner_step(s, 128);
	ASSERT(s->st.merged_hint > 0);
	ASSERT_EQ(s->st.merged_scan, 0);
	ASSERT(s->ratio > 4);
}

TEST_IMPL(engine_scanner_adapts_ratio)
{
	/* Hints that merge and a cursor that finds nothing: after an epoch
	 * of visits (1,024) in which hints merged, their share has grown. */
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	unsigned char *d, *u;

	engine_up(&e);
	hints_merge_ratio_grows(&e, &h, &s, &d, &u);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	return 0;
}

/* The mirror: hints that merge nothing (reads of unique pages) and a
 * cursor that merges: after an epoch of visits the hints' share has
 * shrunk. */
TEST_IMPL(engine_scanner_adapts_ratio_down)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t dup = 2048, uniq = 1024;
	unsigned char *d = map_ram(dup + uniq), *u = d + dup * PG;

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 64), 0);
	for (size_t i = 0; i < dup; i++)
		fill(d + i * PG, (unsigned)(i / 2) + 1);	/* twins side by side */
	for (size_t i = 0; i < uniq; i++)
		fill(u + i * PG, (unsigned)(i + 100000));
	ASSERT_EQ(md__engine_register(&e, d, (dup + uniq) * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 4;
	/* A first pass, with no hints: the cursor's first checksums (it
	 * merges a page from its second visit on, the volatility filter). */
	for (int i = 0; i < 40 && s.st.passes < 1; i++)
		md__scanner_step(&s, 128);
	ASSERT_EQ(s.st.passes, 1);
	ASSERT_EQ(s.st.merged_scan, 0);
	ASSERT_EQ(s.ratio, 4);
	for (size_t i = 0; i < uniq; i += 16)
		md__hints_push(&h, (uintptr_t)(u + i * PG), 16 * PG, 0, 0);
	uint64_t from = s.st.hinted + s.st.scanned;
	for (int i = 0; i < 20 && s.st.hinted + s.st.scanned < from + 1100; i++)
		md__scanner_step(&s, 128);
	ASSERT(s.st.hinted > 0);
	ASSERT_EQ(s.st.merged_hint, 0);
	ASSERT(s.st.merged_scan > 0);
	ASSERT(s.ratio < 4);
	/* One step an epoch (1,024 visits read), two at most in fewer than
	 * 2,048 visits: each epoch's merges and visits are its own, not
	 * summed since the first (a step at every visit after it). */
	ASSERT(s.st.hinted + s.st.scanned < from + 2048);
	ASSERT(s.ratio >= 2);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(d, (dup + uniq) * PG);
	return 0;
}

/* The ratio moves between 1 and 7 of 8, never to 8 (the cursor would get
 * no visits while hints last: it could not be measured) nor to 0 (hints
 * off for good: a ratio of 0 is not adapted). From 7, hints that merge
 * while the cursor finds nothing keep it at 7; from 1, a cursor that
 * merges while the hints find nothing keeps it at 1. */
TEST_IMPL(engine_scanner_ratio_stays_1_to_7)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t dup = 1024, uniq = 2048;
	unsigned char *d = map_ram(dup), *u = map_ram(uniq);

	/* As engine_scanner_adapts_ratio, from 7. */
	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 64), 0);
	for (size_t i = 0; i < dup; i++)
		fill(d + i * PG, (unsigned)(i % (dup / 2)) + 1);
	for (size_t i = 0; i < uniq; i++)
		fill(u + i * PG, (unsigned)(i + 100000));
	ASSERT_EQ(md__engine_register(&e, u, uniq * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, d, dup * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 7;
	for (size_t i = 0; i < dup; i += 16)
		md__hints_push(&h, (uintptr_t)(d + i * PG), 16 * PG, 0, 0);
	for (int i = 0; i < 20 && s.st.hinted + s.st.scanned < 2100; i++) {
		md__scanner_step(&s, 128);
		ASSERT_EQ(s.ratio, 7);	/* at 8 for an epoch, then back */
	}
	ASSERT(s.st.merged_hint > 0);
	ASSERT_EQ(s.st.merged_scan, 0);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(d, dup * PG);
	munmap(u, uniq * PG);

	/* As engine_scanner_adapts_ratio_down, from 1. */
	const size_t dup2 = 2048, uniq2 = 1024;
	d = map_ram(dup2 + uniq2);
	u = d + dup2 * PG;
	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 64), 0);
	for (size_t i = 0; i < dup2; i++)
		fill(d + i * PG, (unsigned)(i / 2) + 1);
	for (size_t i = 0; i < uniq2; i++)
		fill(u + i * PG, (unsigned)(i + 100000));
	ASSERT_EQ(md__engine_register(&e, d, (dup2 + uniq2) * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 1;
	for (int i = 0; i < 40 && s.st.passes < 1; i++)
		md__scanner_step(&s, 128);
	ASSERT_EQ(s.st.passes, 1);
	for (size_t i = 0; i < uniq2; i += 16)
		md__hints_push(&h, (uintptr_t)(u + i * PG), 16 * PG, 0, 0);
	uint64_t from = s.st.hinted + s.st.scanned;
	for (int i = 0; i < 40 && s.st.hinted + s.st.scanned < from + 2100; i++)
		md__scanner_step(&s, 128);
	ASSERT(s.st.hinted > 0);
	ASSERT_EQ(s.st.merged_hint, 0);
	ASSERT(s.st.merged_scan > 0);
	ASSERT_EQ(s.ratio, 1);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(d, (dup2 + uniq2) * PG);
	return 0;
}

/* "Of every 8 pages, ratio come from hints, the rest from the cursor":
 * counted over batches, not from 0 in each. A batch of fewer than 8 pages
 * (sleep_millisecs=0, a small share of pages_to_scan) gave every visit to
 * hints while reads kept coming, and with no cursor visits the ratio could
 * never adapt down (review). */
TEST_IMPL(engine_scanner_small_batches_leave_cursor_its_part)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 512;
	unsigned char *r = map_ram(n);
	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 7000);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__hints_init(&h, 64), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 1;
	/* A guest reading all along: a hint of 4 pages before each batch. */
	for (int i = 0; i < 400; i++) {
		md__hints_push(&h, (uintptr_t)(r + (size_t)(i % 128) * 4 * PG), 4 * PG, 0, 0);
		md__scanner_step(&s, 1);
	}
	printf("  ratio 1, batches of 1 page: hinted %llu, scanned %llu, ratio now %u\n",
	       (unsigned long long)s.st.hinted, (unsigned long long)s.st.scanned, s.ratio);
	/* At most 1 of 8 visits read from hints, give or take a batch. */
	ASSERT(s.st.scanned >= 6 * s.st.hinted);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* A hint names pages a read just filled: they are visited whatever the
 * smart scan says of what was there before (aged unique pages, skipped by
 * the cursor for passes to come). */
TEST_IMPL(engine_scanner_hints_visit_aged_pages)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 16;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 300);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	struct md__eregion *er = md__engine_region(&e, (uintptr_t)r, n * PG);
	ASSERT(er);
	for (size_t i = 0; i < n; i++)
		er->seen[i] = (uint8_t)MD_SEEN_MAKE(3, 7);	/* unique, skipped for 7 passes */
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 7;
	md__hints_push(&h, (uintptr_t)r, n * PG, 0, 0);
	for (int k = 0; k < 8 && (md__hints_count(&h) || s.cur.len >= PG); k++)
		md__scanner_step(&s, 8);
	ASSERT_EQ(md__hints_count(&h), 0);
	ASSERT_EQ(s.st.hinted, n);	/* every hinted page read */
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(MD_SEEN_SKIP(er->seen[i]), 0);	/* just filled: young again */
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

struct read_in_visit {
	unsigned char *r;
	struct md__hints *h;
	size_t pages;
	int calls;
};

/* The agent's image index, asked on the batch's first visit: meanwhile a
 * read fills pages the cursor's window showed absent, and hints them. */
static int find_and_read(void *arg, uint64_t hash, const void *page, uint64_t *cookie)
{
	struct read_in_visit *v = arg;
	(void)hash, (void)page, (void)cookie;
	if (v->calls++ == 0) {
		for (size_t i = 1; i <= v->pages; i++)
			fill(v->r + i * PG, (unsigned)i + 900);
		md__hints_push(v->h, (uintptr_t)(v->r + PG), v->pages * PG, 0, 0);
	}
	return 0;
}

/* A hint read after the batch's pagemap window was: its pages were absent
 * there, and a visit going by that window took them for absent still and
 * lost the hint. A hinted run starts a fresh window. */
TEST_IMPL(engine_scanner_hint_after_window_read)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 256, hinted = 8;
	unsigned char *r = map_ram(n);
	ASSERT_EQ(madvise(r, n * PG, MADV_NOHUGEPAGE), 0);	/* one fault, one page */

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	fill(r, 1);	/* the rest never touched yet */
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 4;
	struct read_in_visit v = { r, &h, hinted, 0 };
	s.files = (struct md__file_source){ &v, find_and_read, NULL };
	/* The cursor's visit of page 0 reads the window (pages 1-8 absent)
	 * and the read comes in it; the next visits are the hint's. */
	md__scanner_step(&s, 2 * hinted);
	ASSERT(v.calls >= 1);
	for (int k = 0; k < 8 && (md__hints_count(&h) || s.cur.len >= PG); k++)
		md__scanner_step(&s, 2 * hinted);
	ASSERT_EQ(md__hints_count(&h), 0);
	ASSERT_EQ(s.st.hinted, hinted);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

static size_t pause_fm_merged;
static int find_and_pause(void *arg, uint64_t hash, const void *page, uint64_t *cookie)
{
	(void)hash, (void)page, (void)cookie;
	__atomic_store_n(&((struct md__scanner *)arg)->paused, 1, __ATOMIC_SEQ_CST);
	return 1;	/* a file page's copy */
}
static void pause_fm_merge(void *arg, const uintptr_t *addr, const uint64_t *cookie, size_t n)
{
	(void)arg, (void)addr, (void)cookie;
	pause_fm_merged += n;
}

/* Paused during a batch (a pause answered once the step ends, see
 * md__scanner_wait_step): what the batch found waits for the next visits,
 * and nothing is merged after the visit under way. */
TEST_IMPL(engine_scanner_pause_drops_batch)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 64;
	unsigned char *r = unique_pages_scanned(&e, &s, n);

	s.files = (struct md__file_source){ &s, find_and_pause, pause_fm_merge };
	pause_fm_merged = 0;
	md__scanner_step(&s, n);
	ASSERT_EQ(s.st.file_matches, 1);	/* the step ended after that visit */
	ASSERT_EQ(pause_fm_merged, 0);
	ASSERT_EQ(s.nfm, 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* Without memdedupd, the unstable table (hash -> page) is emptied at the
 * end of a pass: its entries go stale, and a table never emptied filled
 * up with them (it is lossy, 16 probes), until no new page could enter
 * and twins met no more. Memory rewritten six times, then in pairs: every
 * pair merges. */
TEST_IMPL(engine_scanner_unstable_table_emptied)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 512;	/* a table of 1,024 entries */
	unsigned char *r = unique_pages_scanned(&e, &s, n);
	unsigned fell = 0;
	uint64_t pass = 0;

	for (unsigned k = 1; k <= 6; k++) {
		for (size_t i = 0; i < n; i++)
			fill(r + i * PG, k * 100000 + (unsigned)i);
		pass += 2;	/* the first visit sees a change, the second enters it */
		step_to_pass(&s, pass, &fell);
	}
	ASSERT_EQ(s.st.merged_scan, 0);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, 900000 + (unsigned)(i / 2));
	/* Three passes: a batch goes on past a pass's end, and the pages it
	 * visited before the writes above see them a pass later. */
	for (int k = 0; k < 100 && s.st.passes < pass + 3; k++)
		md__scanner_step(&s, 256);
	ASSERT(s.st.passes >= pass + 3);
	ASSERT_EQ(s.st.merged_scan, n / 2);
	for (size_t i = 0; i < n; i += 2)
		ASSERT_EQ(pfn(r + i * PG), pfn(r + (i + 1) * PG));
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* The unstable table is emptied at a pass's end only once a quarter of its
 * size in pages was read since it last was: over memory the VMM has mostly
 * discarded, a pass reads two pages, and a hinted copy of a page the last
 * pass recorded must find it at once. A mutant that never counted the
 * reads from zero again emptied the table at every pass's end. */
TEST_IMPL(engine_scanner_unstable_kept_over_sparse_passes)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 512;	/* a table of 1,024 entries: emptied after 256 reads */
	unsigned char *r = unique_pages_scanned(&e, &s, n), want[PG];
	unsigned fell = 0;

	ASSERT_EQ(md__hints_init(&h, 16), 0);
	s.hints = &h;
	step_to_pass(&s, 2, &fell);	/* checksums, then every page recorded: emptied */
	ASSERT_EQ(madvise(r + PG, (n - 2) * PG, MADV_DONTNEED), 0);
	while (s.st.passes < 3)	/* the first and last pages, recorded again */
		md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.scanned, 2 * n + 2);
	/* The last page now as the first (a read): the pass ended before
	 * the last page's visit, so the first page is the one the table
	 * must still hold. */
	fill(r + (n - 1) * PG, 1);
	md__hints_push(&h, (uintptr_t)(r + (n - 1) * PG), PG, 0, 0);
	s.ratio = 7;
	md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.merged_hint, 1);
	ASSERT_EQ(pfn(r), pfn(r + (n - 1) * PG));
	fill(want, 1);
	ASSERT(memcmp(r + (n - 1) * PG, want, PG) == 0);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* A new sleep_millisecs (or pages_to_scan, or share of them) counts from
 * the next slice of the sleep under way once the CPU cap's part of it is
 * over, not from the old sleep's end: set from 5 s (gathered to 15 s, and
 * longer idle) to 1 ms, the scanner kept the old sleep. */
TEST_IMPL(engine_scanner_new_sleep_ends_sleep)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 16;
	unsigned char *d = map_ram(n);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(d + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, d, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	s.share_batch = s.share_cpu = MD_SCAN_PART_ALL;
	s.sleep_ms = 5000;
	/* A start runs on the VMM's thread (its first registration): the
	 * empty read of the wake-ups leaves that thread's errno alone. */
	errno = EXDEV;
	ASSERT_EQ(md__scanner_start(&s), 0);
	ASSERT_EQ(errno, EXDEV);
	for (int i = 0; i < 500 && __atomic_load_n(&s.st.passes, __ATOMIC_RELAXED) == 0; i++)
		usleep(10000);
	ASSERT(__atomic_load_n(&s.st.passes, __ATOMIC_RELAXED) > 0);	/* its first batch: asleep now */
	uint64_t passes = __atomic_load_n(&s.st.passes, __ATOMIC_RELAXED);
	__atomic_store_n(&s.sleep_ms, 1, __ATOMIC_RELAXED);
	double t0 = now();
	while (__atomic_load_n(&s.st.passes, __ATOMIC_RELAXED) == passes && now() - t0 < 5)
		usleep(10000);
	double took = now() - t0;
	fprintf(stderr, "  a batch %.0f ms after the sleep was set from 5 s to 1 ms\n", took * 1000);
	ASSERT(took < 3);	/* a slice is a second at most */
	md__scanner_stop(&s);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(d, n * PG);
	return 0;
}

/* engine_scanner_adapts_ratio with memdedupd's pool: the merges of a
 * batch's pending pages (merge_pending) count for the source that visited
 * them, as the merges without it do, or the ratio never moved with a
 * daemon (every merge of the pool's). */
TEST_IMPL(engine_scanner_adapts_ratio_with_daemon)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct md__hints h;
	struct md__scanner s;
	const size_t dup = 1024, uniq = 2048;
	unsigned char *d, *u;

	engine_with_daemon(&e, &t, &rm, "adapt");
	hints_merge_ratio_grows(&e, &h, &s, &d, &u);
	md__scanner_free(&s);
	md__hints_free(&h);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(d, dup * PG);
	munmap(u, uniq * PG);
	return 0;
}

/* A hinted run's sweep of its huge page counts against the batch (a
 * quarter of a visit per zero page dropped): a batch that swept 496 zero
 * pages ends there, and does not read as many pages more as it was
 * given. */
TEST_IMPL(engine_scanner_sweep_counts_against_batch)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	hinted_huge_page(&e, &h, &s, 0);
	/* 7 hinted visits of 8: the run's 16 pages and 2 of the cursor's in
	 * the first 18 visits, then the sweep, worth 124 visits. */
	md__scanner_step(&s, 24);
	ASSERT_EQ(s.st.hinted, 16);
	ASSERT_EQ(s.st.zero_swept, 496);
	ASSERT_EQ(s.st.scanned, 2);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	return 0;
}

/* A hint names whole pages only: a read that begins or ends inside a page
 * filled only part of it (the rest may be anything, and changing), which
 * its hint must not visit as just filled. */
TEST_IMPL(engine_scanner_hints_whole_pages_only)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 8;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 700);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 7;
	/* From 100 bytes into page 0 to 100 bytes into page 3: pages 1, 2. */
	md__hints_push(&h, (uintptr_t)(r + 100), 3 * PG, 0, 0);
	for (int k = 0; k < 8 && (md__hints_count(&h) || s.cur.len >= PG); k++)
		md__scanner_step(&s, 4);
	ASSERT_EQ(md__hints_count(&h), 0);
	ASSERT_EQ(s.st.hinted, 2);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* The agent's image index, asked on the batch's first visit: meanwhile a
 * read fills pages the cursor's visit copied already with zeroes, and
 * hints them. */
static int find_and_zero(void *arg, uint64_t hash, const void *page, uint64_t *cookie)
{
	struct read_in_visit *v = arg;
	(void)hash, (void)page, (void)cookie;
	if (v->calls++ == 0) {
		memset(v->r + PG, 0, v->pages * PG);
		md__hints_push(v->h, (uintptr_t)(v->r + PG), v->pages * PG, 0, 0);
	}
	return 0;
}

/* A hinted page is read anew, never taken from a copy the cursor made
 * before the read filled it (the cursor copies the pages after its own
 * with it): that copy is the content the read replaced. Here the read
 * wrote zeroes, which the hint's visit drops. */
TEST_IMPL(engine_scanner_hint_not_from_old_copy)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 64, hinted = 8;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 800);
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 7;
	struct read_in_visit v = { r, &h, hinted, 0 };
	s.files = (struct md__file_source){ &v, find_and_zero, NULL };
	/* The cursor's visit of page 0 copies pages 0-63; the read comes in
	 * it; the next 7 visits of 8 are the hint's. */
	md__scanner_step(&s, 1 + hinted);
	ASSERT(v.calls >= 1);
	ASSERT(s.st.hinted >= 6);
	/* Each hinted page, zero, dropped (the cursor's visits after may
	 * drop some of the rest). */
	ASSERT(s.st.zero >= s.st.hinted);
	for (size_t i = 1; i <= s.st.hinted; i++)
		ASSERT(dropped(r + i * PG));
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

struct step_arg {
	struct md__scanner *s;
	size_t n;
};

static void *step_thread(void *arg)
{
	struct step_arg *a = arg;
	md__scanner_step(a->s, a->n);
	return NULL;
}

/* A pool page pinned (REF) for a pending page whose merge then fails (the
 * guest wrote it during the round trip: the compare finds it differs) is
 * given back: kept, the pool page stayed pinned for as long as the
 * process lived. */
TEST_IMPL(engine_scanner_failed_merge_gives_pin_back)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct md__scanner s;
	unsigned char *m = map_ram(1), *x = map_ram(1), want[PG];
	uint32_t slot;
	int status;

	engine_with_daemon(&e, &t, &rm, "pinback");
	fill(x, 7);
	fill(m, 7);
	ASSERT_EQ(md__engine_register(&e, m, PG, 0), 0);
	uint64_t h = md__page_hash(x);
	const void *page = x;
	ASSERT_EQ(md__remote_publish_each(&rm, &h, &page, 1, &slot, &status, rm.generation), 0);
	ASSERT_EQ(status, 0);
	long long refs = td_domains_int(&t, "references");
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	md__scanner_step(&s, 1);	/* its checksum */
	ASSERT_EQ(s.st.first_sums, 1);
	/* The next visit finds it unchanged and asks the daemon, which does
	 * not answer before the page is written. */
	td_pause(&t);
	struct step_arg sa = { &s, 1 };
	pthread_t th;
	ASSERT_EQ(pthread_create(&th, NULL, step_thread, &sa), 0);
	for (int i = 0; i < 1000 && __atomic_load_n(&s.st.scanned, __ATOMIC_RELAXED) < 2; i++)
		usleep(1000);
	ASSERT_EQ(__atomic_load_n(&s.st.scanned, __ATOMIC_RELAXED), 2);	/* pending */
	fill(m, 8);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	ASSERT_EQ(pthread_join(th, NULL), 0);
	ASSERT_EQ(s.st.merged_scan, 0);
	fill(want, 8);
	ASSERT(memcmp(m, want, PG) == 0);
	long long now_refs = -1;
	for (int i = 0; i < 100 && (now_refs = td_domains_int(&t, "references")) != refs; i++) {
		md__engine_send_unrefs(&e);
		usleep(20000);
	}
	ASSERT_EQ(now_refs, refs);	/* the publisher's alone */
	md__scanner_free(&s);
	engine_with_daemon_down(&e, &rm, &t);
	munmap(m, PG);
	munmap(x, PG);
	return 0;
}

/* The VMM unmaps guest RAM while a batch waits for memdedupd's answer to
 * its lookups (the regions' lock let go), and maps memory of its own
 * there, with holes: the page memdedupd then says to publish is not read
 * (a read would fill the new mapping's hole in, behind the VMM's back).
 * The unregister counts as a discard does (zap_gen), which the read of
 * the pending pages checks. */
TEST_IMPL(engine_scanner_unmap_during_lookup_leaves_holes)
{
	struct tdaemon t;
	struct md__engine e;
	struct md__remote rm;
	struct md__scanner s;
	unsigned char *m = map_ram(2);

	engine_with_daemon(&e, &t, &rm, "unmapped");
	fill(m, 31);
	fill(m + PG, 31);	/* a second copy: memdedupd says to publish it */
	ASSERT_EQ(md__engine_register(&e, m, 2 * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	md__scanner_step(&s, 2);	/* their checksums */
	ASSERT_EQ(s.st.first_sums, 2);
	/* The next visits find them unchanged and look them up; memdedupd
	 * answers once the VMM has remapped the place. */
	td_pause(&t);
	struct step_arg sa = { &s, 2 };
	pthread_t th;
	ASSERT_EQ(pthread_create(&th, NULL, step_thread, &sa), 0);
	for (int i = 0; i < 1000 && __atomic_load_n(&s.st.scanned, __ATOMIC_RELAXED) < 4; i++)
		usleep(1000);
	ASSERT_EQ(__atomic_load_n(&s.st.scanned, __ATOMIC_RELAXED), 4);	/* pending */
	/* Taken once the batch lets go of the regions' lock for its lookup. */
	ASSERT_EQ(md__engine_unregister(&e, m, 2 * PG, MD_UNREG_GONE), 0);
	ASSERT_EQ(pthread_tryjoin_np(th, NULL), EBUSY);	/* still waiting for the answer */
	int fd = memfd_create("vmm-ram", MFD_CLOEXEC);
	ASSERT(fd >= 0 && ftruncate(fd, 2 * PG) == 0);
	ASSERT(mmap(m, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == m);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	ASSERT_EQ(pthread_join(th, NULL), 0);
	struct stat st;
	ASSERT(fstat(fd, &st) == 0);
	ASSERT_EQ(st.st_blocks, 0);
	ASSERT(!(pagemap(m) & PM_PRESENT));
	ASSERT(!(pagemap(m + PG) & PM_PRESENT));
	md__scanner_free(&s);
	engine_with_daemon_down(&e, &rm, &t);
	close(fd);
	munmap(m, 2 * PG);
	return 0;
}

/* A hint's (or candidate's) visit of a zero page between two of the
 * cursor's keeps the run the cursor stepped over: the cursor goes on after
 * it. Forgotten, the cursor went back into a run of 0xcc pages it had just
 * recorded and, finding them "unchanged" a moment later, mapped them from
 * a fill strip in the same pass, past the filter that waits for a pass. */
TEST_IMPL(engine_scanner_hint_keeps_cursor_run)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 80;
	unsigned char *r = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	for (size_t i = 0; i < n; i++)
		fill(r + i * PG, (unsigned)i + 1000);
	memset(r + 3 * PG, 0xcc, 16 * PG);	/* the cursor's run: pages 3-18 */
	memset(r + 64 * PG, 0, 8 * PG);		/* the hint's zero pages: 64-71 */
	ASSERT_EQ(md__engine_register(&e, r, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 4;
	md__hints_push(&h, (uintptr_t)(r + 64 * PG), 8 * PG, 0, 0);
	/* Visits 0-3 hinted, 4-7 the cursor's (pages 0-2, then the run from
	 * 3), 8-11 hinted, 12 on the cursor's again: page 19. */
	md__scanner_step(&s, 24);
	ASSERT_EQ(s.st.hinted, 8);
	ASSERT_EQ(s.st.filled, 0);	/* recorded at this pass, not mapped */
	const struct md__eregion *er = md__engine_region(&e, (uintptr_t)r, n * PG);
	ASSERT(er->seen[19]);
	for (size_t i = 3; i < 19; i++)
		ASSERT(!(pagemap(r + i * PG) & PM_FILE));
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(r, n * PG);
	return 0;
}

/* Without memdedupd: a page whose unstable-table partner changed since it
 * was recorded takes its place there, so that a third copy met later in
 * the pass merges with it. */
TEST_IMPL(engine_scanner_unstable_partner_replaced)
{
	struct md__engine e;
	struct md__scanner s;
	unsigned char *r = map_ram(3), want[PG];

	engine_up(&e);
	for (size_t i = 0; i < 3; i++)
		fill(r + i * PG, 5);	/* A, B, C alike */
	ASSERT_EQ(md__engine_register(&e, r, 3 * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	md__scanner_step(&s, 3);	/* their checksums */
	ASSERT_EQ(s.st.first_sums, 3);
	md__scanner_step(&s, 1);	/* A, stable: recorded */
	fill(r, 6);			/* and written since */
	md__scanner_step(&s, 1);	/* B finds A changed: B is recorded */
	ASSERT_EQ(s.st.merged_scan, 0);
	md__scanner_step(&s, 1);	/* C finds B */
	ASSERT_EQ(s.st.merged_scan, 1);
	ASSERT_EQ(pfn(r + PG), pfn(r + 2 * PG));
	fill(want, 5);
	ASSERT(memcmp(r + 2 * PG, want, PG) == 0);
	fill(want, 6);
	ASSERT(memcmp(r, want, PG) == 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, 3 * PG);
	return 0;
}

/* The unstable table's partner may have become a hole of the VMM's since it
 * was recorded (a balloon's page): it is left one, never read in. A mutant
 * that read it without asking pagemap survived. */
TEST_IMPL(engine_scanner_unstable_partner_hole_not_read)
{
	struct md__engine e;
	struct md__scanner s;
	unsigned char *r = map_ram(2), want[PG];

	engine_up(&e);
	fill(r, 5);
	fill(r + PG, 5);
	ASSERT_EQ(md__engine_register(&e, r, 2 * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	md__scanner_step(&s, 2);	/* their checksums */
	md__scanner_step(&s, 1);	/* the first, stable: recorded */
	ASSERT_EQ(madvise(r, PG, MADV_DONTNEED), 0);
	md__scanner_step(&s, 1);	/* the second finds it gone */
	ASSERT_EQ(s.st.merged_scan, 0);
	ASSERT(!(pagemap(r) & PM_PRESENT));
	fill(want, 5);
	ASSERT(memcmp(r + PG, want, PG) == 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(r, 2 * PG);
	return 0;
}

static void poke(void *s)
{
	md__scanner_poke(s);
}

/* An idle scanner sleeps a second at a time, not its set sleep (150 ms
 * here, gathered) at a time to look for a poke: those wake-ups were most
 * of what it cost on a quiet host. A poke ends the sleep at once. */
TEST_IMPL(engine_idle_scanner_sleeps_long)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t n = 16;	/* first checksums under 64: it stays idle */
	unsigned char *d = map_ram(n);

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 64), 0);
	for (size_t i = 0; i < n; i++)
		fill(d + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, d, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.share_batch = s.share_cpu = MD_SCAN_PART_ALL;
	s.sleep_ms = 50;	/* 100 pages every 50 ms, gathered: 300 every 150 */
	__atomic_store_n(&s.idle, MD_SCAN_IDLE_MAX, __ATOMIC_RELAXED);
	ASSERT_EQ(md__scanner_start(&s), 0);
	long before = -1;
	for (int i = 0; i < 100 && before < 0; i++, usleep(10000))
		before = thread_switches("md-scan");
	ASSERT(before >= 0);
	usleep(100000);	/* its first batch done: asleep */
	before = thread_switches("md-scan");
	usleep(1500000);	/* within its first sleep of 4.8 s (150 ms << 5) */
	long woke = thread_switches("md-scan") - before;
	printf("  an idle scanner woke %ld times in 1.5 s\n", woke);
	ASSERT(woke <= 4);	/* 10 at its set sleep */
	ASSERT_EQ(__atomic_load_n(&s.idle, __ATOMIC_RELAXED), MD_SCAN_IDLE_MAX);
	/* A poke right after it wakes at a second's end: it wakes again at
	 * once, not at the next second's. */
	ASSERT(wakes_on("md-scan", poke, &s));
	md__scanner_stop(&s);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(d, n * PG);
	return 0;
}

/* A run merged onto a file is compared page by page, every byte: guest
 * pages equal to the image's but one, anywhere in the run (a page after
 * the first; the last byte of the last page of a run longer than one
 * compare's pages), are no merge at all. Mapped from the file, that page
 * would show the guest the image's content, its own write lost. */
static void merge_file_one_differs(size_t n, size_t at, size_t byte, unsigned seed)
{
	struct md__engine e;
	unsigned char *b = map_ram(n), want[PG];

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(b + i * PG, seed + (unsigned)i);
	int fd = memfd_create("image", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(write(fd, b, n * PG), (ssize_t)(n * PG));
	const unsigned char *view = mmap(NULL, n * PG, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT(view != MAP_FAILED);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	b[at * PG + byte] ^= 0x5a;

	ASSERT_EQ(md__engine_merge_file(&e, b, n, fd, 0, view, NULL, NULL), 0);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.merged_file, 0);
	ASSERT_EQ(st.abandoned, n);
	for (size_t i = 0; i < n; i++) {
		fill(want, seed + (unsigned)i);
		if (i == at)
			want[byte] ^= 0x5a;
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(!(pagemap(b + i * PG) & PM_FILE));
	}
	ASSERT_EQ(write_did_not_wait(&e, b + at * PG + byte), 0);
	/* Equal again (the write above undone, the byte put back): the same
	 * run merges, every page from the file. */
	b[at * PG + byte] ^= 1 ^ 0x5a;
	ASSERT(memcmp(b, view, n * PG) == 0);
	ASSERT_EQ(md__engine_merge_file(&e, b, n, fd, 0, view, NULL, NULL), (int)n);
	ASSERT(memcmp(b, view, n * PG) == 0);	/* read: there to be looked at */
	for (size_t i = 0; i < n; i++)
		ASSERT(pagemap(b + i * PG) & PM_FILE);
	md__engine_fini(&e);
	munmap((void *)view, n * PG);
	close(fd);
	munmap(b, n * PG);
}

TEST_IMPL(engine_merge_file_compares_every_page)
{
	merge_file_one_differs(4, 2, 100, 160);
	merge_file_one_differs(MD_COPY_PAGES_MAX + 6, MD_COPY_PAGES_MAX + 5, PG - 1, 170);
	return 0;
}

/* Pages merged from an image are the image's: the pool references they
 * held go (their slots freed with their last user), and a merge onto a
 * slot leaves them alone (the agent's record of the image page). */
TEST_IMPL(engine_merge_file_releases_pool_pages)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b;
	uint32_t slot = twins_published(&e, &a, &b, n, 260);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	int fd = memfd_create("image", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(write(fd, a, n * PG), (ssize_t)(n * PG));
	const unsigned char *view = mmap(NULL, n * PG, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT(view != MAP_FAILED);
	ASSERT_EQ(md__engine_merge_file(&e, b, n, fd, 0, view, NULL, NULL), (int)n);
	const struct md__eregion *r = md__engine_region(&e, (uintptr_t)b, n * PG);
	ASSERT(r != NULL);
	for (size_t i = 0; i < n; i++) {
		ASSERT_EQ(e.pool.refs[slot + i], 1);	/* a's only */
		ASSERT_EQ(r->ref[(uintptr_t)(b + i * PG - r->start) / PG], MD_REF_IMAGE);
		ASSERT(memcmp(b + i * PG, view + i * PG, PG) == 0);
	}
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), -EBUSY);
	md__engine_fini(&e);
	munmap((void *)view, n * PG);
	close(fd);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* An unregister of merged pages that stay mapped takes them out of
 * userfaultfd before it makes them private: a protection still there (a
 * thaw that failed) would make that copy's write fault, and the fault
 * thread waits for the engine's lock the unregister holds: the VMM's
 * thread (its munmap, its madvise) would hang. With memory for the
 * region's remains (the path give_up_whole does not take). */
struct unreg_call {
	struct md__engine *e;
	void *p;
	size_t len;
	int err;
};

static void *unregister_thread(void *arg)
{
	struct unreg_call *u = arg;
	u->err = md__engine_unregister(u->e, u->p, u->len, MD_UNREG_MAPPED);
	return NULL;
}

TEST_IMPL(engine_unregister_unprotects_first)
{
	struct md__engine e;
	const size_t n = 8;
	unsigned char *a, *b, want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 180);
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	/* What a thaw that failed would leave. */
	ASSERT_EQ(md__uffd_register_wp(&e.uffd, (uintptr_t)b, n * PG), 0);
	ASSERT_EQ(md__uffd_wp(&e.uffd, (uintptr_t)(b + PG), PG, 1), 0);
	ASSERT(pagemap(b + PG) & PM_UFFD_WP);

	struct unreg_call u = { &e, b, 4 * PG, 1 };
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, unregister_thread, &u), 0);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	int joined = pthread_timedjoin_np(t, NULL, &until);
	if (joined != 0)
		fprintf(stderr, "the unregister hung: a copy waits for the fault thread\n");
	ASSERT_EQ(joined, 0);
	ASSERT_EQ(u.err, 0);
	ASSERT(!md__engine_touches(&e, (uintptr_t)b, 4 * PG));
	ASSERT(md__engine_touches(&e, (uintptr_t)b + 4 * PG, 4 * PG));
	for (size_t i = 0; i < n; i++) {
		fill(want, 180 + (unsigned)i);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		if (i < 4) {
			ASSERT(!(pagemap(b + i * PG) & PM_FILE));	/* private copies */
			ASSERT(pfn(b + i * PG) != pfn(a + i * PG));
		} else {
			ASSERT_EQ(pfn(b + i * PG), pfn(a + i * PG));	/* still merged */
		}
	}
	ASSERT_EQ(write_did_not_wait(&e, b + PG + 9), 0);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(e.pool.refs[slot + i], i < 4 ? 1 : 2);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* A slot of the local pool below its end that is not live (freed, its page
 * still there or punched; reserved for a publication) is never merged
 * onto, whatever its page holds: its next publication would rewrite the
 * page under the guest's mapping. */
static void not_merged_onto(struct md__engine *e, unsigned char *g, uint32_t slot, int state)
{
	uint32_t refs = e->pool.refs[slot];
	unsigned char before[PG];
	memcpy(before, g, PG);
	ASSERT_EQ(e->pool.state[slot], state);
	ASSERT_EQ(md__engine_merge_slots(e, g, 1, &slot, NULL), 0);
	ASSERT(!(pagemap(g) & PM_FILE));
	ASSERT(memcmp(g, before, PG) == 0);
	ASSERT_EQ(e->pool.refs[slot], refs);
	ASSERT_EQ(e->pool.state[slot], state);
	ASSERT_EQ(write_did_not_wait(e, g + 11), 0);
}

TEST_IMPL(engine_merge_only_onto_live_slots)
{
	struct md__engine e;
	unsigned char *a, *b;
	uint32_t slot = twins_published(&e, &a, &b, 3, 190);
	ASSERT_EQ(e.pool.refs[slot + 1], 1);
	/* Slot+1's only reference goes: freed, its page not punched yet
	 * (freed slots are punched in batches), so it still holds b's. */
	ASSERT_EQ(md__engine_discard(&e, a + PG, PG), 0);
	ASSERT_EQ(madvise(a + PG, PG, MADV_DONTNEED), 0);
	ASSERT_EQ(e.pool.refs[slot + 1], 0);
	ASSERT(memcmp(md__engine_pool_page(&e, slot + 1), b + PG, PG) == 0);
	not_merged_onto(&e, b + PG, slot + 1, MD_SLOT_FREE);

	/* Punched: it reads zeroes, as a page of zeroes does. */
	md__pool_trim(&e.pool);
	ASSERT(md__page_is_zero(md__engine_pool_page(&e, slot + 1)));
	memset(b + PG, 0, PG);
	not_merged_onto(&e, b + PG, slot + 1, MD_SLOT_FREE);

	/* Reserved for a publication (the free slot reused). */
	uint32_t s;
	ASSERT_EQ(md__pool_reserve(&e.pool, 1, &s), 0);
	ASSERT_EQ(s, slot + 1);
	not_merged_onto(&e, b + PG, slot + 1, MD_SLOT_RESERVED);
	md__pool_unreserve(&e.pool, s, 1);

	/* The live slots beside it merge as ever. */
	uint32_t s2 = slot + 2;
	ASSERT_EQ(md__engine_merge_slots(&e, b + 2 * PG, 1, &s2, NULL), 1);
	ASSERT_EQ(pfn(b + 2 * PG), pfn(a + 2 * PG));
	md__engine_fini(&e);
	munmap(a, 3 * PG);
	munmap(b, 3 * PG);
	return 0;
}

/* A read into guest RAM (O_DIRECT: it pins the pages) that starts after a
 * merge's check for reads in flight would land in the pages the merge
 * replaces: the check comes after the write-protection, which the read's
 * start may precede but not follow unseen. One starting just after the
 * protection stops the merge. */
static struct md__engine *freeze_hook_engine;
static int freeze_hook_token = -1;

static void read_starts_after_protection(uintptr_t a, size_t n)
{
	if (freeze_hook_token >= 0)
		return;
	struct iovec iov = { (void *)a, n * PG };
	freeze_hook_token = md__inflight_begin(&freeze_hook_engine->io, &iov, 1);
}

TEST_IMPL(engine_merge_rechecks_reads_after_protection)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b, want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 200);
	freeze_hook_engine = &e;
	__atomic_store_n(&md__engine_freeze_hook, read_starts_after_protection, __ATOMIC_RELAXED);
	int merged = md__engine_merge(&e, b, n, slot);
	__atomic_store_n(&md__engine_freeze_hook, NULL, __ATOMIC_RELAXED);
	ASSERT(freeze_hook_token >= 0);
	ASSERT_EQ(merged, -EBUSY);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.io_busy, 1);
	ASSERT_EQ(st.merged, 0);
	for (size_t i = 0; i < n; i++) {
		fill(want, 200 + (unsigned)i);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(pfn(b + i * PG) != pfn(a + i * PG));
		ASSERT(!(pagemap(b + i * PG) & PM_FILE));
		ASSERT_EQ(e.pool.refs[slot + i], 1);
	}
	ASSERT_EQ(write_did_not_wait(&e, b + 3), 0);
	b[3] ^= 1;	/* as it was */
	/* The read done: the run merges. */
	md__inflight_end(&e.io, freeze_hook_token);
	freeze_hook_token = -1;
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(pfn(b + i * PG), pfn(a + i * PG));
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* The check that the pages are still protected after the compare cannot
 * read pagemap (the VMM put a file at the engine's descriptor's number,
 * and no descriptor is left to open it again): no proof, no merge; the
 * pages given back to their writers. */
static int pm_fds[4096], pm_nfd;

static void pagemap_lost_at_compare(uintptr_t a, size_t n)
{
	(void)a;
	(void)n;
	md__engine_compare_hook = NULL;
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	dup2(null, freeze_hook_engine->pagemap_fd);
	close(null);
	struct rlimit rl = { 256, 256 };
	setrlimit(RLIMIT_NOFILE, &rl);	/* this test's own process */
	while (pm_nfd < 4096 && (pm_fds[pm_nfd] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
		pm_nfd++;
}

TEST_IMPL(engine_merge_needs_pagemap_after_compare)
{
	struct md__engine e;
	const size_t n = 4;
	unsigned char *a, *b, want[PG];
	uint32_t slot = twins_published(&e, &a, &b, n, 340);
	freeze_hook_engine = &e;
	md__engine_compare_hook = pagemap_lost_at_compare;
	int merged = md__engine_merge(&e, b, n, slot);
	md__engine_compare_hook = NULL;
	ASSERT(pm_nfd > 0 && pm_nfd < 4096);
	while (pm_nfd > 0)
		close(pm_fds[--pm_nfd]);
	ASSERT_EQ(merged, 0);
	for (size_t i = 0; i < n; i++) {
		fill(want, 340 + (unsigned)i);
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		ASSERT(pfn(b + i * PG) != pfn(a + i * PG));
	}
	ASSERT_EQ(write_did_not_wait(&e, b + PG + 3), 0);
	b[PG + 3] ^= 1;	/* as it was */
	/* A descriptor free again: opened again, and the run merges. */
	ASSERT_EQ(md__engine_merge(&e, b, n, slot), (int)n);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* Pages merged onto pool slots are compared every byte: guest pages that
 * differ from their slots' only in their last byte (the first page of a
 * run, one after it, one in a compare's second batch of pages) stay as
 * they are, private and writable; the others of the run merge. */
TEST_IMPL(engine_merge_slots_compares_last_byte)
{
	struct md__engine e;
	const size_t n = MD_COPY_PAGES_MAX + 2;
	const size_t differ[] = { 0, 1, MD_COPY_PAGES_MAX + 1 };
	unsigned char *a = map_ram(n), *b = map_ram(n), want[PG];
	uint32_t slot, rest, slots[MD_COPY_PAGES_MAX + 2];
	engine_up(&e);
	for (size_t i = 0; i < n; i++) {
		fill(a + i * PG, 210 + (unsigned)i);
		fill(b + i * PG, 210 + (unsigned)i);
	}
	ASSERT_EQ(md__engine_register(&e, a, n * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, b, n * PG, 0), 0);
	/* Published in two parts: one publication takes fewer pages. */
	ASSERT_EQ(md__engine_publish(&e, a, n - 2, &slot), (int)n - 2);
	ASSERT_EQ(md__engine_publish(&e, a + (n - 2) * PG, 2, &rest), 2);
	for (size_t i = 0; i < n; i++)
		slots[i] = i < n - 2 ? slot + (uint32_t)i : rest + (uint32_t)(i - (n - 2));
	for (size_t k = 0; k < sizeof(differ) / sizeof(*differ); k++)
		b[differ[k] * PG + PG - 1] ^= 0x80;
	ASSERT_EQ(md__engine_merge_slots(&e, b, n, slots, NULL), (int)n - 3);
	struct md__engine_stats st;
	md__engine_stats(&e, &st);
	ASSERT_EQ(st.abandoned, 3);
	for (size_t i = 0; i < n; i++) {
		int d = i == differ[0] || i == differ[1] || i == differ[2];
		fill(want, 210 + (unsigned)i);
		if (d)
			want[PG - 1] ^= 0x80;
		ASSERT(memcmp(b + i * PG, want, PG) == 0);
		if (d) {
			ASSERT(pfn(b + i * PG) != pfn(a + i * PG));
			ASSERT_EQ(e.pool.refs[slots[i]], 1);
		} else {
			ASSERT_EQ(pfn(b + i * PG), pfn(a + i * PG));
			ASSERT_EQ(e.pool.refs[slots[i]], 2);
		}
	}
	ASSERT_EQ(write_did_not_wait(&e, b + PG + PG - 1), 0);
	md__engine_fini(&e);
	munmap(a, n * PG);
	munmap(b, n * PG);
	return 0;
}

/* Merges onto image pages (the file source, found before the volatility
 * filter) count for the source that visited them in the ratio's
 * adaptation, as merges through the pool do: hints over an image's
 * copies and a cursor that finds nothing give the hints a larger share. */
static int fm_find_marked(void *arg, uint64_t hash, const void *page, uint64_t *cookie)
{
	(void)arg, (void)hash;
	memcpy(cookie, page, sizeof(*cookie));
	return ((const unsigned char *)page)[8] == 0xf1;	/* the image's copies */
}
TEST_IMPL(engine_scanner_adapts_ratio_to_file_matches)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t uniq = 2048, img = 1024;
	unsigned char *u = map_ram(uniq + img), *d = u + uniq * PG;

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 64), 0);
	for (size_t i = 0; i < uniq; i++) {
		fill(u + i * PG, (unsigned)(i + 100000));
		u[i * PG + 8] = 0;
	}
	for (size_t i = 0; i < img; i++) {
		fill(d + i * PG, (unsigned)i + 1);
		d[i * PG + 8] = 0xf1;
	}
	ASSERT_EQ(md__engine_register(&e, u, (uniq + img) * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.files = (struct md__file_source){ NULL, fm_find_marked, fm_merge };
	fm_merged = 0;
	s.ratio = 4;
	for (size_t i = 0; i < img; i += 16)
		md__hints_push(&h, (uintptr_t)(d + i * PG), 16 * PG, 0, 0);
	/* The cursor walks the unique pages from the region's start: it
	 * never reaches the image's copies within these visits. */
	for (int i = 0; i < 20 && s.st.hinted + s.st.scanned < 1100; i++)
		md__scanner_step(&s, 128);
	ASSERT(s.st.file_matches > 0);
	ASSERT_EQ(s.st.merged_scan, 0);
	ASSERT(s.ratio > 4);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(u, (uniq + img) * PG);
	return 0;
}

/* In random order a pass that counts as full (full_scans)
 * must have visited every page, as the linear cursor's does
 * (engine_scanner_cursor_survives_unregister). A region registered in
 * the middle of a pass draws a new permutation for "the rest" of it:
 * pages the old permutation had not reached yet are left unvisited. */
TEST_IMPL(engine_scanner_random_pass_after_register_visits_all)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 2048, nb = 16;
	unsigned char *big = map_ram(n), *more = map_ram(nb);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(big + i * PG, (unsigned)(i + 10));
	for (size_t i = 0; i < nb; i++)
		fill(more + i * PG, (unsigned)(i + 90000));
	ASSERT_EQ(md__engine_register(&e, big, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	s.random_order = 1;
	md__scanner_step(&s, n / 2);	/* half a pass */
	ASSERT_EQ(s.st.passes, 0);
	ASSERT_EQ(md__engine_register(&e, more, nb * PG, 0), 0);	/* the VMM maps a little more */
	for (int k = 0; k < 10000 && s.st.passes == 0; k++)
		md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.passes, 1);
	struct md__eregion *r = md__engine_region(&e, (uintptr_t)big, PG);
	ASSERT(r);
	size_t unseen = 0;
	for (size_t i = 0; i < n; i++)
		unseen += !r->seen[i];
	printf("  %zu of %zu pages never visited in a pass counted as full\n", unseen, n);
	ASSERT_EQ(unseen, 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(big, n * PG);
	munmap(more, nb * PG);
	return 0;
}

/* `memdedup set cpu_percent=...` is live: raising the cap
 * (here from 1 % to none) takes effect within a slice, as a new
 * sleep_millisecs does (engine_scanner_new_sleep_ends_sleep). */
TEST_IMPL(engine_scanner_new_cpu_cap_ends_sleep)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 16384;
	unsigned char *d = map_ram(n);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(d + i * PG, (unsigned)i + 1);
	ASSERT_EQ(md__engine_register(&e, d, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	s.batch = n;
	s.sleep_ms = 1;
	s.cpu_percent = 1;
	s.share_batch = s.share_cpu = MD_SCAN_PART_ALL;
	ASSERT_EQ(md__scanner_start(&s), 0);
	/* The first batch done and charged: asleep for the cap's part. */
	for (int i = 0; i < 10000 && (__atomic_load_n(&s.st.passes, __ATOMIC_RELAXED) == 0 ||
				      __atomic_load_n(&s.st.cpu_ns, __ATOMIC_RELAXED) == 0); i++)
		usleep(1000);
	ASSERT(__atomic_load_n(&s.st.passes, __ATOMIC_RELAXED) > 0);	/* first batch done: asleep */
	uint64_t passes = __atomic_load_n(&s.st.passes, __ATOMIC_RELAXED);
	uint64_t cpu = __atomic_load_n(&s.st.cpu_ns, __ATOMIC_RELAXED);
	__atomic_store_n(&s.cpu_percent, 100, __ATOMIC_RELAXED);	/* the cap lifted */
	double t0 = now();
	while (__atomic_load_n(&s.st.passes, __ATOMIC_RELAXED) == passes && now() - t0 < 30)
		usleep(1000);
	double took = now() - t0;
	fprintf(stderr, "  first batch %.1f ms CPU; next batch %.0f ms after the cap was lifted\n",
		cpu / 1e6, took * 1000);
	md__scanner_stop(&s);
	/* The old cap's sleep: the batch's CPU a hundred times over. */
	double capped = (double)cpu * 100 / 1e9;
	ASSERT(capped > 0.4);
	ASSERT(took < capped / 2);	/* a slice (100 ms at a 1 ms sleep) and the batch */
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(d, n * PG);
	return 0;
}

/* A small share is gathered over a few sleeps into a wake-up of about 256
 * pages; with no sleep (sleep_millisecs=0) there is none to gather: a
 * pages_to_scan of 255 scanned 510 a wake-up, of 256 256, and of 32 256,
 * so a larger one scanned fewer pages a second (review). */
TEST_IMPL(engine_scanner_sleep0_rate_follows_batch)
{
	uint64_t sleep = 20000000;
	ASSERT_EQ(md__scanner_gather(100, &sleep), 300);
	ASSERT_EQ(sleep, 60000000);
	sleep = 20000000;
	ASSERT_EQ(md__scanner_gather(16, &sleep), 128);	/* at most 8 sleeps */
	ASSERT_EQ(sleep, 160000000);
	sleep = 20000000;
	ASSERT_EQ(md__scanner_gather(256, &sleep), 256);
	ASSERT_EQ(sleep, 20000000);
	for (size_t b = 1; b < 600; b++) {
		sleep = 0;
		ASSERT_EQ(md__scanner_gather(b, &sleep), b);
		ASSERT_EQ(sleep, 0);
	}
	sleep = 20000000;
	ASSERT_EQ(md__scanner_gather(0, &sleep), 0);
	return 0;
}

/* The sweep after a hinted run is of the huge page the
 * read landed in, in the read's region: with guest RAM registered in two
 * parts that meet inside that huge page, it swept the other part (the
 * first region in the table that overlaps the huge page), found no zero
 * page there, and marked the huge page swept. */
TEST_IMPL(engine_scanner_sweeps_hinted_region)
{
	struct md__engine e;
	struct md__hints h;
	struct md__scanner s;
	const size_t hp = 512;
	unsigned char *m = map_ram(3 * hp);
	unsigned char *b = (unsigned char *)(((uintptr_t)m + hp * PG - 1) & ~(uintptr_t)(hp * PG - 1));

	engine_up(&e);
	ASSERT_EQ(md__hints_init(&h, 16), 0);
	for (size_t i = 0; i < hp; i++) {
		if (i >= 256 + 16)
			memset(b + i * PG, 0, PG);	/* present, zero: the rest of the read's huge page */
		else
			fill(b + i * PG, (unsigned)i + 1);
	}
	ASSERT_EQ(md__engine_register(&e, b, 256 * PG, 0), 0);		/* first half */
	ASSERT_EQ(md__engine_register(&e, b + 256 * PG, 256 * PG, 0), 0);	/* second half */
	ASSERT_EQ(md__scanner_init(&s, &e, &h), 0);
	s.ratio = 7;
	md__hints_push(&h, (uintptr_t)(b + 256 * PG), 16 * PG, 0, 0);	/* a read into the second half */
	for (int k = 0; k < 10 && s.st.hinted < 16; k++)
		md__scanner_step(&s, 8);
	ASSERT_EQ(s.st.hinted, 16);
	printf("  zero pages swept near the hint: %llu (240 there)\n", (unsigned long long)s.st.zero_swept);
	ASSERT_EQ(s.st.zero_swept, 240);
	md__scanner_free(&s);
	md__hints_free(&h);
	md__engine_fini(&e);
	munmap(m, 3 * hp * PG);
	return 0;
}

/* The random pass noticed a change by its pages' count alone: a small
 * region before guest RAM in the table goes and one of the same size comes
 * (an mremap move, a ROM mapped again) between batches, the table is
 * reordered, and the old permutation went on over new indexes, the pass
 * counted as full with a quarter of the pages unvisited (review). */
TEST_IMPL(engine_scanner_random_pass_after_same_size_move_visits_all)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 2048, nb = 16;
	unsigned char *big = map_ram(n), *x = map_ram(nb), *y = map_ram(nb);

	engine_up(&e);
	for (size_t i = 0; i < n; i++)
		fill(big + i * PG, (unsigned)(i + 10));
	for (size_t i = 0; i < nb; i++) {
		fill(x + i * PG, (unsigned)(i + 90000));
		fill(y + i * PG, (unsigned)(i + 95000));
	}
	ASSERT_EQ(md__engine_register(&e, x, nb * PG, 0), 0);
	ASSERT_EQ(md__engine_register(&e, big, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	s.random_order = 1;
	md__scanner_step(&s, n / 2);	/* half a pass */
	ASSERT_EQ(s.st.passes, 0);
	ASSERT_EQ(md__engine_unregister(&e, x, nb * PG, MD_UNREG_MAPPED), 0);
	ASSERT_EQ(md__engine_register(&e, y, nb * PG, 0), 0);
	for (int k = 0; k < 10000 && s.st.passes == 0; k++)
		md__scanner_step(&s, 1);
	ASSERT_EQ(s.st.passes, 1);
	struct md__eregion *r = md__engine_region(&e, (uintptr_t)big, PG);
	ASSERT(r);
	size_t unseen = 0;
	for (size_t i = 0; i < n; i++)
		unseen += !r->seen[i];
	printf("  %zu of %zu pages never visited in a pass counted as full\n", unseen, n);
	ASSERT_EQ(unseen, 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(big, n * PG);
	munmap(x, nb * PG);
	munmap(y, nb * PG);
	return 0;
}

/* A pool write that says it wrote the page whole but wrote it wrong (its
 * last byte changed): a bug, a bad write. */
static long pool_bad_write_syscall(long nr, ...)
{
	SYSCALL_ARGS(nr, a);
	if (nr != SYS_pwrite64)
		return syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	static unsigned char bad[4 * PG];
	size_t len = (size_t)a[2] < sizeof(bad) ? (size_t)a[2] : sizeof(bad);
	memcpy(bad, (const void *)a[1], len);
	bad[len - 1] ^= 1;
	return syscall(nr, a[0], bad, len, a[3]);
}

/* A publish compares the pool page it wrote with the frozen copy before it
 * maps it over the guest page: a pool page not equal to what the guest
 * wrote is never shown to it, nor indexed. The page stays as it was,
 * given back to its writers. */
TEST_IMPL(engine_publish_compares_pool_page)
{
	struct md__engine e;
	unsigned char *a = map_ram(1), want[PG];
	uint32_t slot = UINT32_MAX;

	engine_up(&e);
	fill(a, 291);
	memcpy(want, a, PG);
	uint64_t before = pfn(a);
	ASSERT_EQ(md__engine_register(&e, a, PG, 0), 0);
	md__libc_syscall = pool_bad_write_syscall;
	int r = md__engine_publish(&e, a, 1, &slot);
	md__libc_syscall = NULL;
	ASSERT_EQ(r, -EAGAIN);
	ASSERT_EQ(slot, UINT32_MAX);
	ASSERT_EQ(e.st.abandoned, 1);
	ASSERT(memcmp(a, want, PG) == 0);
	ASSERT_EQ(pfn(a), before);	/* not the pool's page */
	ASSERT_EQ(md__engine_lookup(&e, want, md__page_hash(want)), -1);
	a[0] ^= 1;	/* thawed: no writer waits */
	md__engine_fini(&e);
	munmap(a, PG);
	return 0;
}

/* Guest RAM in the VMM's own private file mapping (a memory backend with
 * share=off): pages it has not written are its file's pages (pagemap's
 * file bit), which the scanner never reads nor merges, alike or not - the
 * file's changes show in them as without us (step 0 of a visit). */
TEST_IMPL(engine_scanner_leaves_vmm_file_pages)
{
	struct md__engine e;
	struct md__scanner s;
	const size_t n = 4;
	unsigned char page[PG];
	int fd = memfd_create("vmm-ram", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	fill(page, 300);
	for (size_t i = 0; i < n; i++)	/* all alike */
		ASSERT(pwrite(fd, page, PG, (off_t)(i * PG)) == (ssize_t)PG);
	unsigned char *m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ASSERT(m != MAP_FAILED);
	for (size_t i = 0; i < n; i++)
		(void)*(volatile unsigned char *)(m + i * PG);	/* the file's pages, mapped */
	engine_up(&e);
	ASSERT_EQ(md__engine_register(&e, m, n * PG, 0), 0);
	ASSERT_EQ(md__scanner_init(&s, &e, NULL), 0);
	s.ratio = 0;
	for (int i = 0; i < 6; i++)
		md__scanner_step(&s, 16);
	ASSERT(s.st.passes >= 2);
	ASSERT_EQ(s.st.scanned, 0);
	ASSERT_EQ(s.st.published + s.st.merged_scan, 0);
	for (size_t i = 0; i < n; i++)
		ASSERT(self_pagemap(m + i * PG) & PM_FILE);
	memset(page, 0x77, sizeof(page));
	ASSERT(pwrite(fd, page, PG, PG) == (ssize_t)PG);	/* the file changes */
	ASSERT(memcmp(m + PG, page, PG) == 0);
	md__scanner_free(&s);
	md__engine_fini(&e);
	munmap(m, n * PG);
	close(fd);
	return 0;
}


/* A write the kernel makes on the process's behalf (read(2) from a pipe
 * into guest RAM, as a VMM's I/O thread does) into a page a merge froze
 * waits for the merge as a CPU store does, and lands in the page that
 * replaced it: the read neither fails (EFAULT: a userfaultfd opened with
 * UFFD_USER_MODE_ONLY) nor loses its bytes. */
struct kread {
	int fd;
	unsigned char *p;
	size_t len;
	ssize_t got;
	int err, done;
};

static void *kernel_reader(void *arg)
{
	struct kread *k = arg;
	k->got = read(k->fd, k->p, k->len);
	k->err = k->got < 0 ? errno : 0;
	__atomic_store_n(&k->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static struct md__engine *kw_engine;
static struct kread kw;
static pthread_t kw_thread;
static int kw_started, kw_met;

/* At the compare (pages frozen): the read starts, and the merge goes on
 * once it waits on the frozen page (its fault reported) or has ended. */
static void kernel_write_at_compare(uintptr_t a, size_t n)
{
	(void)a, (void)n;
	if (kw_started)
		return;
	uint64_t f0 = __atomic_load_n(&kw_engine->uffd.faults, __ATOMIC_RELAXED);
	kw_started = pthread_create(&kw_thread, NULL, kernel_reader, &kw) == 0;
	for (int i = 0; i < 2000 && kw_started && !__atomic_load_n(&kw.done, __ATOMIC_SEQ_CST); i++) {
		if (__atomic_load_n(&kw_engine->uffd.faults, __ATOMIC_RELAXED) != f0) {
			kw_met = 1;
			break;
		}
		usleep(1000);
	}
}

TEST_IMPL(engine_kernel_write_waits_for_merge)
{
	struct md__engine e;
	unsigned char *a, *b, want[PG], bytes[64];
	uint32_t slot = twins_published(&e, &a, &b, 1, 330);
	int p[2];
	ASSERT_EQ(pipe(p), 0);
	memset(bytes, 0xa5, sizeof(bytes));
	ASSERT_EQ(write(p[1], bytes, sizeof(bytes)), (ssize_t)sizeof(bytes));
	kw_engine = &e;
	kw = (struct kread){ p[0], b + 100, sizeof(bytes), 0, 0, 0 };
	md__engine_compare_hook = kernel_write_at_compare;
	int merged = md__engine_merge(&e, b, 1, slot);
	md__engine_compare_hook = NULL;
	ASSERT(kw_started);
	pthread_join(kw_thread, NULL);
	printf("  merged %d, read %zd (%s), waited on the frozen page: %d\n", merged, kw.got,
	       kw.err ? strerror(kw.err) : "ok", kw_met);
	ASSERT_EQ(kw.err, 0);
	ASSERT_EQ(kw.got, (ssize_t)sizeof(bytes));
	ASSERT(kw_met);		/* it met the freeze */
	ASSERT_EQ(merged, 1);	/* and the merge went on */
	fill(want, 330);
	memcpy(want + 100, bytes, sizeof(bytes));
	ASSERT(memcmp(b, want, PG) == 0);
	ASSERT(!(pagemap(b) & PM_FILE));	/* its own copy now */
	md__engine_fini(&e);
	close(p[0]);
	close(p[1]);
	munmap(a, PG);
	munmap(b, PG);
	return 0;
}

/* The VMM closed the engine's userfaultfd and put one of its own at that
 * number (a background snapshot's), registered over the same RAM, whose
 * pages it write-protects: the engine, told of the memory leaving it
 * later (MADV_UNMERGEABLE), must not unregister or un-protect through the
 * VMM's descriptor (its snapshot would miss the guest's writes). */
TEST_IMPL(engine_unregister_leaves_vmm_uffd_at_our_number)
{
	struct md__engine e;
	engine_up(&e);
	unsigned char *b = map_ram(4);
	memset(b, 1, 4 * PG);
	ASSERT_EQ(md__engine_register(&e, b, 4 * PG, 0), 0);
	int num = e.uffd.fd;
	int vmm = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	ASSERT(vmm >= 0);
	ASSERT_EQ(dup2(vmm, num), num);	/* ours closed: its registration gone */
	close(vmm);
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	ASSERT_EQ(ioctl(num, UFFDIO_API, &api), 0);
	struct uffdio_register reg = { .range = { (uintptr_t)b, 4 * PG }, .mode = UFFDIO_REGISTER_MODE_WP };
	/* Once the fault thread's poll lets go of ours (within a second). */
	int r = -1;
	for (int i = 0; i < 300 && (r = ioctl(num, UFFDIO_REGISTER, &reg)) != 0 && errno == EBUSY; i++)
		usleep(10000);
	ASSERT_EQ(r, 0);
	struct uffdio_writeprotect wp = { .range = { (uintptr_t)b, 4 * PG }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	ASSERT_EQ(ioctl(num, UFFDIO_WRITEPROTECT, &wp), 0);
	ASSERT(pagemap(b) & PM_UFFD_WP);

	int err = md__engine_unregister(&e, b, 4 * PG, MD_UNREG_MAPPED);
	printf("  md__engine_unregister: %d; the VMM's page still protected: %d\n", err,
	       !!(pagemap(b) & PM_UFFD_WP));
	/* The VMM's registration and protection are still there. */
	ASSERT(pagemap(b) & PM_UFFD_WP);
	wp.mode = 0;
	ASSERT_EQ(ioctl(num, UFFDIO_WRITEPROTECT, &wp), 0);	/* still registered: the VMM un-protects */
	md__engine_fini(&e);
	ASSERT(fcntl(num, F_GETFD) >= 0);	/* not closed as ours */
	close(num);
	munmap(b, 4 * PG);
	return 0;
}
