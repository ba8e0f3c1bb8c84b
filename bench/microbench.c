/*
 * microbench.c - the cost per 4 KiB page of sharing at read time, against a
 * plain pread(2) that copies (Ozaki & Nakao: merge_page 0.17 us vs 1.6 us).
 *
 * A warm image (in the page cache) is read into pre-faulted anonymous "guest
 * RAM" in reads of 1..32 pages, once by copying and once through the agent,
 * which maps the pages instead. The first touch of a shared page (a minor
 * fault) is timed apart, since the guest pays it later, not at read time.
 * The alternative design, a sealed content pool, is timed too: the first
 * reader of a block copies it into a memfd (once per block for all guests)
 * and maps that; later readers only map it.
 *
 * Then the same reads under the conditions of a real guest, each reported
 * apart: guest RAM backed by transparent huge pages (QEMU asks for them with
 * MADV_HUGEPAGE, so a mapping over it first splits a huge PMD), and a second
 * thread of the process busy on the other core touching guest RAM (like a
 * vCPU, so every unmapping of present pages sends it a TLB shootdown). For
 * these the TLB shootdowns (/proc/interrupts) and PMD splits (/proc/vmstat)
 * per read are reported, system-wide deltas over the sharing reads.
 * Usage: microbench [IMAGE_MB] [ROUNDS]   Prints JSON lines. (Whole numbers:
 * IMAGE_MB 1..1048576, default 64; ROUNDS 1..1000000, default 5; others
 * exit 2.)
 */
#include <errno.h>
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

#include "memdedup.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

#define HUGE (2u << 20)

/* Guest RAM, populated (it normally is by the time the guest reads): in 4 KiB
 * pages, or 2 MiB-aligned and backed by transparent huge pages as QEMU's is.
 * Release with free_ram(). */
static char *fresh_ram(size_t len, int thp)
{
	size_t map_len = len + HUGE;
	char *m = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	char *a = (char *)(((uintptr_t)m + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
	if (a > m)
		munmap(m, (size_t)(a - m));
	munmap(a + len, (size_t)(m + map_len - (a + len)));
	/* Not a failure when the kernel has no THP: the result says so. */
	madvise(a, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	memset(a, 1, len);
	return a;
}

static void free_ram(char *m, size_t len)
{
	munmap(m, len);
}

/* A field of a /proc file: the number after the first line starting with
 * key (summed over the columns for /proc/interrupts), 0 if absent. */
static uint64_t proc_number(const char *path, const char *key)
{
	char line[4096];
	uint64_t v = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		char *p = line;
		while (*p == ' ')
			p++;
		if (strncmp(p, key, strlen(key)) != 0)
			continue;
		p += strlen(key);
		for (;;) {
			char *end;
			unsigned long long x = strtoull(p, &end, 10);
			if (end == p)
				break;
			v += x;
			p = end;
		}
		break;
	}
	fclose(f);
	return v;
}

static uint64_t anon_huge_kb(void)
{
	return proc_number("/proc/self/smaps_rollup", "AnonHugePages:");
}

static void pin(pthread_t t, int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(t, sizeof(set), &set);	/* best effort */
}

/* The stand-in vCPU: on the other core, reads a byte of every page of its
 * part of guest RAM, over and over, until told to stop. */
struct toucher {
	pthread_t thread;
	const char *mem;
	size_t len;
	int stop;
	uint64_t passes;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	uint64_t sum = 0;
	while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
		for (size_t i = 0; i < t->len; i += 4096)
			sum += (unsigned char)t->mem[i];
		t->passes++;
	}
	return (void *)(uintptr_t)sum;
}

static void toucher_start(struct toucher *t, const char *mem, size_t len)
{
	*t = (struct toucher){ .mem = mem, .len = len };
	if (pthread_create(&t->thread, NULL, toucher_main, t) != 0) {
		perror("pthread_create");
		exit(1);
	}
	pin(t->thread, 1);
}

static void toucher_stop(struct toucher *t)
{
	__atomic_store_n(&t->stop, 1, __ATOMIC_RELAXED);
	pthread_join(t->thread, NULL);
}

static volatile uint64_t sink;

/* The pool design: copy [off, off+len) of the image into the memfd at the
 * same offset (first reader), then map it privately over the buffer. */
static double pool_round(int fd, int pool, char *ram, size_t len, size_t chunk, int first)
{
	static char buf[32 * 4096];
	double t0 = now();
	for (size_t off = 0; off < len; off += chunk) {
		if (first && (pread(fd, buf, chunk, (off_t)off) != (ssize_t)chunk ||
			      pwrite(pool, buf, chunk, (off_t)off) != (ssize_t)chunk))
			exit(1);
		if (mmap(ram + off, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
			 pool, (off_t)off) == MAP_FAILED)
			exit(1);
	}
	return now() - t0;
}

static double touch(const char *m, size_t len)
{
	double t0 = now();
	for (size_t i = 0; i < len; i += 4096)
		sink += (unsigned char)m[i];
	return now() - t0;
}

/* Reads [0, len) of the image into ram in reads of chunk bytes, through the
 * agent (sharing) or plain pread (copying). Returns the seconds taken. */
static double read_all(md_agent *agent, int fd, char *ram, size_t len, size_t chunk)
{
	double t0 = now();
	for (size_t off = 0; off < len; off += chunk) {
		ssize_t n = agent ? md_agent_pread(agent, fd, ram + off, chunk, (off_t)off)
				  : pread(fd, ram + off, chunk, (off_t)off);
		if (n != (ssize_t)chunk) {
			fprintf(stderr, "microbench: short read\n");
			exit(1);
		}
	}
	return now() - t0;
}

static void no_fallbacks(md_agent *agent)
{
	md_stats s;
	md_agent_stats(agent, &s);
	if (s.fallbacks_total) {
		fprintf(stderr, "microbench: %llu pages fell back\n", (unsigned long long)s.fallbacks_total);
		exit(1);
	}
}

/* Section 2's first table: 4 KiB pages, nothing else running; and the pool. */
static void base_table(md_agent *agent, int fd, size_t len, int rounds)
{
	static const size_t pages_per_read[] = { 1, 4, 16, 32 };
	for (size_t k = 0; k < sizeof(pages_per_read) / sizeof(*pages_per_read); k++) {
		size_t chunk = pages_per_read[k] * 4096;
		double t_copy = 0, t_share = 0, t_touch = 0, t_pool_first = 0, t_pool_next = 0;
		for (int r = 0; r < rounds; r++) {
			char *ram = fresh_ram(len, 0);
			t_copy += read_all(NULL, fd, ram, len, chunk);
			free_ram(ram, len);

			ram = fresh_ram(len, 0);
			md_agent_register(agent, ram, len, 0);
			t_share += read_all(agent, fd, ram, len, chunk);
			t_touch += touch(ram, len);
			no_fallbacks(agent);
			md_agent_forget(agent, ram, len);
			free_ram(ram, len);

			int pool = memfd_create("pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
			if (pool < 0 || ftruncate(pool, (off_t)len) != 0)
				exit(1);
			ram = fresh_ram(len, 0);
			t_pool_first += pool_round(fd, pool, ram, len, chunk, 1);
			free_ram(ram, len);
			ram = fresh_ram(len, 0);
			t_pool_next += pool_round(fd, pool, ram, len, chunk, 0);
			free_ram(ram, len);
			close(pool);
		}
		double pages = (double)(len / 4096) * rounds;
		printf("{\"pages_per_read\": %zu, \"pread_copy_us_per_page\": %.3f, "
		       "\"share_us_per_page\": %.3f, \"first_touch_us_per_page\": %.3f, "
		       "\"ratio_share_to_copy\": %.3f, \"pool_first_reader_us_per_page\": %.3f, "
		       "\"pool_later_reader_us_per_page\": %.3f}\n",
		       pages_per_read[k], t_copy / pages * 1e6, t_share / pages * 1e6,
		       t_touch / pages * 1e6, t_share / t_copy, t_pool_first / pages * 1e6,
		       t_pool_next / pages * 1e6);
		fflush(stdout);
	}
}

/* What a read costs in a guest's conditions: THP-backed RAM or not, a busy
 * second thread on the other core or not. Copy and share run under the same
 * conditions; the kernel's counters are taken over the sharing reads. */
static void guest_conditions(md_agent *agent, int fd, size_t len, int rounds)
{
	static const size_t pages_per_read[] = { 1, 2, 4, 8, 16, 32 };
	size_t tlen = 32u << 20;	/* the "vCPU"'s part of guest RAM */
	pin(pthread_self(), 0);
	for (int thp = 0; thp <= 1; thp++)
		for (int busy = 0; busy <= 1; busy++)
			for (size_t k = 0; k < sizeof(pages_per_read) / sizeof(*pages_per_read); k++) {
				size_t chunk = pages_per_read[k] * 4096;
				double t_copy = 0, t_share = 0;
				uint64_t tlb = 0, splits = 0, huge_kb = 0;
				for (int r = 0; r < rounds; r++) {
					struct toucher t;
					char *ram = fresh_ram(len + tlen, thp);
					if (busy)
						toucher_start(&t, ram + len, tlen);
					t_copy += read_all(NULL, fd, ram, len, chunk);
					if (busy)
						toucher_stop(&t);
					free_ram(ram, len + tlen);

					ram = fresh_ram(len + tlen, thp);
					huge_kb += anon_huge_kb();
					md_agent_register(agent, ram, len + tlen, thp ? MD_ADV_HUGEPAGE : 0);
					if (busy)
						toucher_start(&t, ram + len, tlen);
					uint64_t tlb0 = proc_number("/proc/interrupts", "TLB:");
					uint64_t split0 = proc_number("/proc/vmstat", "thp_split_pmd ");
					t_share += read_all(agent, fd, ram, len, chunk);
					tlb += proc_number("/proc/interrupts", "TLB:") - tlb0;
					splits += proc_number("/proc/vmstat", "thp_split_pmd ") - split0;
					if (busy)
						toucher_stop(&t);
					no_fallbacks(agent);
					md_agent_forget(agent, ram, len + tlen);
					free_ram(ram, len + tlen);
				}
				double pages = (double)(len / 4096) * rounds, reads = pages / (double)pages_per_read[k];
				printf("{\"ram\": \"%s\", \"busy_thread\": %s, \"pages_per_read\": %zu, "
				       "\"copy_us_per_page\": %.3f, \"share_us_per_page\": %.3f, "
				       "\"ratio_share_to_copy\": %.3f, \"tlb_shootdowns_per_read\": %.2f, "
				       "\"pmd_splits_per_read\": %.3f, \"anon_huge_mb\": %llu}\n",
				       thp ? "thp" : "4k", busy ? "true" : "false", pages_per_read[k],
				       t_copy / pages * 1e6, t_share / pages * 1e6, t_share / t_copy,
				       (double)tlb / reads, (double)splits / reads,
				       (unsigned long long)(huge_kb / 1024 / (uint64_t)rounds));
				fflush(stdout);
			}
}

/* S as a whole number in [min, max], or -1. */
static long long arg_num(const char *s, long long min, long long max)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		return -1;
	return v;
}

int main(int argc, char **argv)
{
	long long mb = argc > 1 ? arg_num(argv[1], 1, 1ll << 20) : 64;
	long long rounds = argc > 2 ? arg_num(argv[2], 1, 1000000) : 5;
	if (argc > 3 || mb < 0 || rounds < 0) {
		fprintf(stderr, "usage: microbench [IMAGE_MB] [ROUNDS]\n"
				"  IMAGE_MB: whole MiB, 1..1048576 (default 64); ROUNDS: 1..1000000 (default 5)\n");
		return 2;
	}
	size_t len = (size_t)mb << 20;
	char path[] = "/tmp/memdedup-microbench-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0) {
		perror("image");
		return 1;
	}
	if (ftruncate(fd, (off_t)len) != 0) {
		perror("image");
		unlink(path);
		return 1;
	}
	/* Random-ish content; then reopen read-only so a lease is possible. */
	char *w = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (w == MAP_FAILED) {
		perror("image mmap");
		unlink(path);
		return 1;
	}
	for (size_t i = 0; i < len; i += 8)
		*(uint64_t *)(w + i) = i * 0x9e3779b97f4a7c15ull;
	munmap(w, len);
	fsync(fd);
	close(fd);
	fd = open(path, O_RDONLY);
	int open_err = errno;
	/* Gone from /tmp at once: an exit(1) below, or a Ctrl-C, left the
	 * image (IMAGE_MB of it, in a tmpfs perhaps) behind. */
	unlink(path);
	if (fd < 0) {
		errno = open_err;
		perror(path);
		return 1;
	}

	md_agent *agent;
	/* Every whole page shared, whatever the read's size: the cost of
	 * sharing is what is measured (the agent's default copies reads of
	 * fewer than MD_SHARE_MIN_PAGES_DEFAULT pages). */
	md_agent_options o = { .run_dir = "", .share_min_pages = 1 };
	if (md_agent_new(&agent, &o) != 0) {
		fprintf(stderr, "microbench: no agent\n");
		close(fd);
		return 1;
	}
	const char *only = getenv("MICROBENCH_ONLY");	/* "base" or "guest" */
	if (!only || strcmp(only, "guest") != 0)
		base_table(agent, fd, len, (int)rounds);
	if (!only || strcmp(only, "base") != 0)
		guest_conditions(agent, fd, len, (int)rounds);
	md_agent_free(agent);
	close(fd);
	return 0;
}
