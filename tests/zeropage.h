/*
 * zeropage.h - the kernel's zero page, as tests see it. Where a kernel
 * has one, a read of untouched anonymous memory maps it, and pagemap shows
 * its frame. A kernel booted with pvm_no_zero_page=1 (seen on some of our
 * CI machines) has none: every read fault allocates a page of its own. A
 * test of dropped zero pages must hold on both: a dropped page is either
 * not there (its next read maps the zero page, or a fresh page of zeroes)
 * or on the zero page's frame, looked at without touching it.
 */
#ifndef MD_TEST_ZEROPAGE_H
#define MD_TEST_ZEROPAGE_H
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "runner.h"

#define TEST_PM_PRESENT (1ull << 63)
#define TEST_PM_PFN ((1ull << 55) - 1)

/* The zero page's frame, or 0 if this kernel has none: two pages read
 * must show the same frame (needs root to see frames). */
static inline uint64_t test_zero_pfn(void)
{
	uint64_t pm[2] = {0, 0};
	volatile char *p = mmap(NULL, 2 * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT((void *)p != MAP_FAILED);
	madvise((void *)p, 2 * 4096, MADV_NOHUGEPAGE);	/* not the huge zero page */
	(void)p[0];
	(void)p[4096];
	int fd = open("/proc/self/pagemap", O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT(pread(fd, pm, sizeof(pm), (off_t)((uintptr_t)p / 4096 * 8)) == (ssize_t)sizeof(pm));
	close(fd);
	munmap((void *)p, 2 * 4096);
	ASSERT((pm[0] & TEST_PM_PRESENT) && (pm[0] & TEST_PM_PFN) != 0);	/* frames need root */
	return (pm[0] & TEST_PM_PFN) == (pm[1] & TEST_PM_PFN) ? pm[0] & TEST_PM_PFN : 0;
}

/* 1 if a pagemap entry shows a dropped page: not there, or on the zero
 * page (zero_pfn from test_zero_pfn, 0 if none). */
static inline int test_pm_dropped(uint64_t pm, uint64_t zero_pfn)
{
	return !(pm & TEST_PM_PRESENT) || (zero_pfn && (pm & TEST_PM_PFN) == zero_pfn);
}
#endif
