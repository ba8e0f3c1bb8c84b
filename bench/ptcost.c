/*
 * ptcost.c - what the page-table work of a merge costs on this machine, in
 * the conditions a scanner inside a VMM meets. Machines differ here by an
 * order of magnitude (docs/benchmarks.md, tenth session), and the numbers
 * explain the scanner's CPU better than any profile of it:
 *   - whether a read of untouched anonymous memory maps the kernel's zero
 *     page (two such pages on one frame) or allocates (a kernel booted with
 *     pvm_no_zero_page=1);
 *   - mmap(MAP_FIXED) over one present page (a merge), with no other thread,
 *     with a sibling thread that wakes every millisecond (an idle vCPU: its
 *     CPU is lazy and gets no TLB shootdown), and with a sibling busy on the
 *     other core (a running vCPU: every unmapping waits for its shootdown);
 *   - the first read of a 4 KiB page of a transparent huge page that a
 *     mapping split, against one of an intact huge page, and a second read.
 * Needs root for frame numbers. Usage: ptcost [PAGES]   Prints JSON lines.
 */
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096ul
#define HUGE (2ul << 20)

static volatile int stop;
static volatile uint64_t sink;
static char *busy_mem;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void pin(int cpu)
{
	cpu_set_t c;
	CPU_ZERO(&c);
	CPU_SET(cpu, &c);
	sched_setaffinity(0, sizeof(c), &c);
}

static uint64_t pagemap(const void *a)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0 || pread(fd, &e, 8, (off_t)((uintptr_t)a / PG * 8)) != 8)
		e = 0;
	if (fd >= 0)
		close(fd);
	return e;
}

static char *map_aligned(size_t len, int advice)
{
	char *m = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	m = (char *)(((uintptr_t)m + HUGE - 1) & ~(HUGE - 1));
	madvise(m, len, advice);
	return m;
}

static void *sibling(void *arg)
{
	int idle = *(int *)arg;
	pin(1);
	while (!stop) {
		if (idle)
			usleep(1000);
		else
			for (size_t i = 0; i < 4096 && !stop; i++)
				busy_mem[i * 64]++;
	}
	return NULL;
}

/* mmap over every other page of n present pages, in microseconds each. */
static double remap_cost(size_t n)
{
	char *m = map_aligned(n * PG, MADV_NOHUGEPAGE);
	memset(m, 1, n * PG);
	double t = now();
	for (size_t i = 0; i < n; i += 2)
		if (mmap(m + i * PG, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
			 -1, 0) == MAP_FAILED) {
			perror("mmap");
			exit(1);
		}
	double us = (now() - t) * 1e6 / (double)(n / 2);
	munmap(m, n * PG);
	return us;
}

static double remap_with_sibling(size_t n, int idle)
{
	pthread_t t;
	stop = 0;
	pthread_create(&t, NULL, sibling, &idle);
	usleep(20000);
	double us = remap_cost(n);
	stop = 1;
	pthread_join(t, NULL);
	return us;
}

/* Reads 7 of every 8 pages (those no mapping replaced), us per page. */
static double touch(const char *m, size_t n)
{
	uint64_t s = 0;
	double t = now();
	for (size_t i = 0; i < n; i++)
		if (i % 8)
			s += *(volatile const uint64_t *)(m + i * PG);
	sink = s;
	return (now() - t) * 1e6 / (double)(n - n / 8);
}

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 16384;
	if (n < 1024 || n > (1ul << 22) || n % 512) {
		fprintf(stderr, "usage: ptcost [PAGES: 1024..4194304, a multiple of 512]\n");
		return 2;
	}
	pin(0);
	busy_mem = map_aligned(HUGE, MADV_NOHUGEPAGE);
	memset(busy_mem, 0, HUGE);

	volatile char *z = map_aligned(2 * PG, MADV_NOHUGEPAGE);
	(void)z[0];
	(void)z[PG];
	uint64_t f0 = pagemap((const void *)z) & ((1ull << 55) - 1);
	uint64_t f1 = pagemap((const void *)(z + PG)) & ((1ull << 55) - 1);
	printf("{\"test\":\"zero_page\",\"reads_share_a_frame\":%s}\n", f0 && f0 == f1 ? "true" : "false");

	double alone = remap_cost(n);
	double idle = remap_with_sibling(n, 1);
	double busy = remap_with_sibling(n, 0);
	printf("{\"test\":\"remap_page\",\"alone_us\":%.2f,\"idle_sibling_us\":%.2f,\"busy_sibling_us\":%.2f}\n",
	       alone, idle, busy);

	char *m = map_aligned(n * PG, MADV_HUGEPAGE);
	memset(m, 1, n * PG);
	double intact = touch(m, n);
	for (size_t i = 0; i < n; i += 8)
		mmap(m + i * PG, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	double first = touch(m, n), second = touch(m, n);
	printf("{\"test\":\"touch_after_split\",\"intact_huge_us\":%.3f,\"first_after_split_us\":%.3f,"
	       "\"second_us\":%.3f}\n", intact, first, second);
	return 0;
}
