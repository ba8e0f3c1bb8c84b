/*
 * test_hints.c - the KSM++ hints: which reads into guest RAM push which
 * hints (agent/readshare.c), and how the agent shows their ratio, in this
 * process (the scanner's side: tests/engine/test_engine.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>
#include "agent_internal.h"
#include "hints.h"
#include "proc.h"
#include "runner.h"

#define PG 4096u

/* An agent that scans within this process, paused: what reads push stays on
 * the stack for the test to pop. */
static md_agent *paused_agent(unsigned extra_flags)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN | extra_flags, .domain = "private" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	if (!a->engine) {
		md_agent_free(a);
		SKIP("no content scanner here (userfaultfd)");
	}
	return a;
}

/* Pops every hint into out (newest first); returns how many. */
static size_t pop_all(md_agent *a, struct md__hint *out, size_t max)
{
	size_t n = 0;
	while (n < max && md__hints_pop(&a->hints, &out[n]))
		n++;
	return n;
}

/* An image of 64 pages (seed), open at *fd, and 64 pages of memory at *m
 * beside a paused_agent(flags), none of it registered yet. */
static md_agent *reader(const char *name, unsigned seed, unsigned flags, char **m, int *fd)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/%s.img", test_dir(), name);
	make_image(img, 64 * PG, seed);
	*fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(*fd >= 0);
	md_agent *a = paused_agent(flags);
	*m = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(*m != MAP_FAILED);
	return a;
}

static void reader_done(md_agent *a, char *m, int fd)
{
	md_agent_free(a);
	munmap(m, 64 * PG);
	close(fd);
}

/* Bytes of [lo, hi) the hints cover (they do not overlap here). */
static size_t covered(const struct md__hint *h, size_t n, uintptr_t lo, uintptr_t hi)
{
	size_t sum = 0;
	for (size_t i = 0; i < n; i++) {
		uintptr_t s = h[i].addr > lo ? h[i].addr : lo, e = h[i].addr + h[i].len < hi ? h[i].addr + h[i].len : hi;
		sum += e > s ? e - s : 0;
	}
	return sum;
}

/* RAM registered in two parts that meet at a page boundary (a range advised
 * in two calls, the pieces an unregister leaves): a read copied at the file
 * position (preadv2's offset -1) across the two parts hints both, as a
 * pread's does (read_segment splits it). It hinted none (review). */
TEST_IMPL(hints_position_read_across_regions)
{
	char *m;
	int fd;
	md_agent *a = reader("hints-across", 7, 0, &m, &fd);
	ASSERT_EQ(md_agent_register(a, m, 32 * PG, 0), 0);
	ASSERT_EQ(md_agent_register(a, m + 32 * PG, 32 * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	struct md__hint h[64];
	pop_all(a, h, 64);

	/* pread across the two parts, off the file's page boundaries (copied
	 * whole): hinted, both parts (the reference). */
	ASSERT_EQ(md_agent_pread(a, fd, m + 16 * PG + 100, 32 * PG, 0), 32 * PG);
	size_t n = pop_all(a, h, 64);
	printf("  pread across the parts: %zu hints, %zu bytes covered\n", n,
	       covered(h, n, (uintptr_t)m, (uintptr_t)m + 64 * PG));
	ASSERT_EQ(covered(h, n, (uintptr_t)m, (uintptr_t)m + 64 * PG), 32 * PG);

	/* The same at the file position. */
	ASSERT(lseek(fd, 0, SEEK_SET) == 0);
	struct iovec io = { m + 16 * PG + 100, 32 * PG };
	ASSERT_EQ(md_agent_preadv(a, fd, &io, 1, -1, 0), 32 * PG);
	n = pop_all(a, h, 64);
	printf("  preadv2 at the file position across the parts: %zu hints, %zu bytes covered\n", n,
	       covered(h, n, (uintptr_t)m, (uintptr_t)m + 64 * PG));
	ASSERT_EQ(covered(h, n, (uintptr_t)m, (uintptr_t)m + 64 * PG), 32 * PG);
	reader_done(a, m, fd);
	return 0;
}

/* A read whose buffer begins in memory that is not guest RAM (registered
 * only from page 16 on) and ends in it hints the part in RAM, which no read
 * shared. It hinted nothing (review). */
TEST_IMPL(hints_read_into_ram_from_below)
{
	char *m;
	int fd;
	md_agent *a = reader("hints-below", 8, 0, &m, &fd);
	ASSERT_EQ(md_agent_register(a, m + 16 * PG, 48 * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	struct md__hint h[64];
	pop_all(a, h, 64);
	ASSERT_EQ(md_agent_pread(a, fd, m + 8 * PG, 24 * PG, 0), 24 * PG);
	size_t n = pop_all(a, h, 64);
	size_t in_ram = covered(h, n, (uintptr_t)m + 16 * PG, (uintptr_t)m + 64 * PG);
	printf("  pread from below RAM into it: %zu hints, %zu bytes of RAM covered\n", n, in_ram);
	ASSERT_EQ(in_ram, 16 * PG);
	/* The same through preadv (any_in_ram looks at each segment's first byte). */
	struct iovec io = { m + 8 * PG, 24 * PG };
	ASSERT_EQ(md_agent_preadv(a, fd, &io, 1, 0, 0), 24 * PG);
	n = pop_all(a, h, 64);
	in_ram = covered(h, n, (uintptr_t)m + 16 * PG, (uintptr_t)m + 64 * PG);
	printf("  preadv from below RAM into it: %zu hints, %zu bytes of RAM covered\n", n, in_ram);
	ASSERT_EQ(in_ram, 16 * PG);
	reader_done(a, m, fd);
	return 0;
}

/* Hints off (MEMDEDUP_HINTS=0, --hints=off, hint_ratio=0: the plain scan
 * of the comparisons): a copied read pushes no hint and does not wake the
 * scanner from the idle sleep its quiet passes set (review). */
TEST_IMPL(hints_off_reads_push_nothing)
{
	char *m;
	int fd;
	md_agent *a = reader("hints-off", 9, MD_OPT_NO_HINTS, &m, &fd);
	ASSERT_EQ(a->scanner.ratio, 0);
	ASSERT_EQ(md_agent_register(a, m, 64 * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	__atomic_store_n(&a->scanner.idle, 5, __ATOMIC_RELAXED);	/* as a quiet pass leaves it */
	uint64_t pushed = a->hints.pushed;
	ASSERT_EQ(md_agent_pread(a, fd, m + 100, 32 * PG, 0), 32 * PG);	/* unaligned: copied */
	printf("  hints off: pushed %llu, held %zu, idle %u\n",
	       (unsigned long long)(a->hints.pushed - pushed), md__hints_count(&a->hints),
	       __atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED));
	ASSERT_EQ(a->hints.pushed - pushed, 0);
	ASSERT_EQ(md__hints_count(&a->hints), 0);
	ASSERT_EQ(__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED), 5);
	reader_done(a, m, fd);
	return 0;
}

/* hint_ratio in the statistics is the ratio now: one set while paused
 * (memdedup pause, or waiting for memdedupd's welcome) shows at once. It
 * was the ratio at the last batch's end (review). */
TEST_IMPL(hints_ratio_shown_now)
{
	md_agent *a = paused_agent(0);
	char *m = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	memset(m, 3, 64 * PG);
	ASSERT_EQ(md_agent_register(a, m, 64 * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	md_stats s;
	ASSERT_EQ(md_agent_set(a, "hint_ratio", "2"), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	printf("  set 2 while paused: hint_ratio shows %llu\n", (unsigned long long)s.hint_ratio);
	ASSERT_EQ(s.hint_ratio, 2);
	ASSERT_EQ(md_agent_set(a, "hint_ratio", "0"), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	printf("  set 0 (hints off) while paused: hint_ratio shows %llu\n", (unsigned long long)s.hint_ratio);
	ASSERT_EQ(s.hint_ratio, 0);
	md_agent_free(a);
	munmap(m, 64 * PG);
	return 0;
}
