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
 *   - a userfaultfd write-protect (a merge's freeze) of one page at a time
 *     and of 64 and 512 pages in one call, per page, the same three ways;
 *   - reading a page of a file (a pool or image page) we map but never
 *     touched: through the mapping, through the kernel (process_vm_readv
 *     of the mapping), or with pread from the file, one page at a time,
 *     every other page;
 *   - the first read of a 4 KiB page of a transparent huge page that a
 *     mapping split, against one of an intact huge page, and a second read.
 * Needs root for frame numbers. Usage: ptcost [PAGES]   Prints JSON lines.
 */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
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

/* Write-protects n present pages through userfaultfd, span pages per call
 * (every other page when span is 1), in microseconds per page frozen; -1
 * without userfaultfd write-protect. */
static double wp_cost(size_t n, size_t span)
{
	int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) != 0) {
		if (uffd >= 0)
			close(uffd);
		return -1;
	}
	char *m = map_aligned(n * PG, MADV_NOHUGEPAGE);
	memset(m, 1, n * PG);
	struct uffdio_register reg = { .range = { (uintptr_t)m, n * PG }, .mode = UFFDIO_REGISTER_MODE_WP };
	double us = -1;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) == 0) {
		size_t step = span == 1 ? 2 : span, frozen = 0;
		double t = now();
		for (size_t i = 0; i + span <= n; i += step, frozen += span) {
			struct uffdio_writeprotect wp = { .range = { (uintptr_t)(m + i * PG), span * PG },
							  .mode = UFFDIO_WRITEPROTECT_MODE_WP };
			if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
				perror("UFFDIO_WRITEPROTECT");
				exit(1);
			}
		}
		us = (now() - t) * 1e6 / (double)frozen;
	}
	close(uffd);
	munmap(m, n * PG);
	return us;
}

/* The cost per page of f(n, span) with no sibling, an idle and a busy one. */
static void with_siblings(double (*f)(size_t, size_t), size_t n, size_t span, double out[3])
{
	for (int k = 0; k < 3; k++) {
		pthread_t t;
		int idle = k == 1;
		stop = 0;
		if (k)
			pthread_create(&t, NULL, sibling, &idle);
		usleep(20000);
		out[k] = f(n, span);
		stop = 1;
		if (k)
			pthread_join(t, NULL);
	}
}

enum { READ_TOUCH, READ_KERNEL, READ_PREAD };

/* Reads every other page of a fresh mapping of an n-page memfd the given
 * way, in microseconds per page. */
static double file_read_cost(size_t n, int how)
{
	int fd = memfd_create("ptcost", MFD_CLOEXEC);
	static char buf[PG];
	if (fd < 0 || ftruncate(fd, (off_t)(n * PG)) != 0) {
		perror("memfd");
		exit(1);
	}
	for (size_t i = 0; i < n; i++) {
		memset(buf, (int)i, PG);
		if (pwrite(fd, buf, PG, (off_t)(i * PG)) != (ssize_t)PG) {
			perror("pwrite");
			exit(1);
		}
	}
	const char *m = mmap(NULL, n * PG, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	uint64_t s = 0;
	pid_t self = getpid();
	double t = now();
	for (size_t i = 0; i < n; i += 2) {
		struct iovec loc = { buf, PG }, rem = { (void *)(m + i * PG), PG };
		if (how == READ_TOUCH)
			memcpy(buf, m + i * PG, PG);
		else if (how == READ_KERNEL ? process_vm_readv(self, &loc, 1, &rem, 1, 0) != (ssize_t)PG :
			 pread(fd, buf, PG, (off_t)(i * PG)) != (ssize_t)PG) {
			perror("read");
			exit(1);
		}
		s += (uint64_t)buf[i % PG];
	}
	double us = (now() - t) * 1e6 / (double)(n / 2);
	sink = s;
	munmap((void *)m, n * PG);
	close(fd);
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

	static const size_t spans[] = { 1, 64, 512 };
	for (size_t k = 0; k < sizeof(spans) / sizeof(spans[0]); k++) {
		double c[3];
		with_siblings(wp_cost, n, spans[k], c);
		printf("{\"test\":\"write_protect\",\"pages_per_call\":%zu,\"alone_us\":%.2f,"
		       "\"idle_sibling_us\":%.2f,\"busy_sibling_us\":%.2f}\n", spans[k], c[0], c[1], c[2]);
	}

	printf("{\"test\":\"read_file_page\",\"touch_us\":%.2f,\"process_vm_readv_us\":%.2f,"
	       "\"pread_us\":%.2f}\n", file_read_cost(n, READ_TOUCH), file_read_cost(n, READ_KERNEL),
	       file_read_cost(n, READ_PREAD));

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
