/*
 * hashbench.c - the page checksum's cost: XXH3-64 of a 4 KiB page, built for
 * the x86-64 baseline (SSE2) and as md__page_hash runs it (AVX2 where the
 * CPU has it), over pages in cache (1 MiB, hashed again and again) and out
 * of it (256 MiB, each page once a round, as the scanner meets guest RAM).
 * Usage: hashbench [ROUNDS]   Prints one JSON line per set.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include "checksum.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ns per page of fn over n pages from base, rounds times. */
static double time_hash(uint64_t (*fn)(const void *), const unsigned char *base, size_t n,
			int rounds, uint64_t *sink)
{
	double t0 = now();
	for (int r = 0; r < rounds; r++)
		for (size_t i = 0; i < n; i++)
			*sink += fn(base + i * 4096);
	return (now() - t0) * 1e9 / ((double)n * rounds);
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 3;
	size_t big = 65536, small = 256;	/* pages: 256 MiB, 1 MiB */
	unsigned char *m = mmap(NULL, big * 4096, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (m == MAP_FAILED || rounds < 1) {
		fprintf(stderr, "hashbench: %s\n", rounds < 1 ? "ROUNDS must be positive" : "no memory");
		return 1;
	}
	for (size_t i = 0; i < big * 4096; i += 8)
		*(uint64_t *)(m + i) = i * 0x9e3779b97f4a7c15ull + 1;
	uint64_t sink = 0;
	struct { const char *name; size_t n; int rounds; } sets[] = {
		{ "in_cache_1MiB", small, rounds * 2000 }, { "out_of_cache_256MiB", big, rounds },
	};
	for (size_t k = 0; k < 2; k++) {
		double base = time_hash(md__page_hash_sse2, m, sets[k].n, sets[k].rounds, &sink);
		double used = time_hash(md__page_hash, m, sets[k].n, sets[k].rounds, &sink);
		printf("{\"set\": \"%s\", \"sse2_ns_per_page\": %.1f, \"md__page_hash_ns_per_page\": %.1f, "
		       "\"speedup\": %.2f}\n", sets[k].name, base, used, base / used);
	}
	return sink == 42;	/* keeps the hashes from being optimized away */
}
