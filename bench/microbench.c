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
 * Usage: microbench [IMAGE_MB] [ROUNDS]   Prints JSON lines.
 */
#include <fcntl.h>
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

static char *fresh_ram(size_t len)
{
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	memset(m, 1, len);	/* guest RAM is normally populated already */
	return m;
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

int main(int argc, char **argv)
{
	size_t mb = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	int rounds = argc > 2 ? atoi(argv[2]) : 5;
	size_t len = mb << 20;
	char path[] = "/tmp/memdedup-microbench-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, (off_t)len) != 0) {
		perror("image");
		return 1;
	}
	/* Random-ish content; then reopen read-only so a lease is possible. */
	char *w = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	for (size_t i = 0; i < len; i += 8)
		*(uint64_t *)(w + i) = i * 0x9e3779b97f4a7c15ull;
	munmap(w, len);
	fsync(fd);
	close(fd);
	fd = open(path, O_RDONLY);

	md_agent *agent;
	md_agent_options o = { .run_dir = "" };
	if (md_agent_new(&agent, &o) != 0) {
		fprintf(stderr, "microbench: no agent\n");
		return 1;
	}
	static const size_t pages_per_read[] = { 1, 4, 16, 32 };
	for (size_t k = 0; k < sizeof(pages_per_read) / sizeof(*pages_per_read); k++) {
		size_t chunk = pages_per_read[k] * 4096;
		double t_copy = 0, t_share = 0, t_touch = 0, t_pool_first = 0, t_pool_next = 0;
		for (int r = 0; r < rounds; r++) {
			char *ram = fresh_ram(len);
			double t0 = now();
			for (size_t off = 0; off < len; off += chunk)
				if (pread(fd, ram + off, chunk, (off_t)off) != (ssize_t)chunk)
					return 1;
			t_copy += now() - t0;
			munmap(ram, len);

			ram = fresh_ram(len);
			md_agent_register(agent, ram, len, 0);
			t0 = now();
			for (size_t off = 0; off < len; off += chunk)
				if (md_agent_pread(agent, fd, ram + off, chunk, (off_t)off) != (ssize_t)chunk)
					return 1;
			t_share += now() - t0;
			t_touch += touch(ram, len);
			md_stats s;
			md_agent_stats(agent, &s);
			if (s.fallbacks_total) {
				fprintf(stderr, "microbench: %llu pages fell back\n",
					(unsigned long long)s.fallbacks_total);
				return 1;
			}
			md_agent_forget(agent, ram, len);
			munmap(ram, len);

			int pool = memfd_create("pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
			if (pool < 0 || ftruncate(pool, (off_t)len) != 0)
				return 1;
			ram = fresh_ram(len);
			t_pool_first += pool_round(fd, pool, ram, len, chunk, 1);
			munmap(ram, len);
			ram = fresh_ram(len);
			t_pool_next += pool_round(fd, pool, ram, len, chunk, 0);
			munmap(ram, len);
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
	}
	md_agent_free(agent);
	close(fd);
	unlink(path);
	return 0;
}
