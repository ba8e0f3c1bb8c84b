/* fuzz_util.h - what the fuzz targets that drive live descriptors share:
 * the leak check and the little-endian lengths of their op scripts. */
#ifndef MD_FUZZ_UTIL_H
#define MD_FUZZ_UTIL_H

#include <dirent.h>
#include <stdint.h>

/* Descriptors open in this process: as many after an input as before, or
 * one leaked. */
static inline int count_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	int n = 0;
	if (!dir)
		return -1;
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

static inline uint32_t get24(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

#endif
