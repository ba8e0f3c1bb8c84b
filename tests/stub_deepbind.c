/*
 * stub_deepbind.c - a library a test's testproc loads with RTLD_DEEPBIND or
 * dlmopen: its calls to the C library (its madvise) do not reach the
 * agent's interposers.
 */
#include <stddef.h>
#include <sys/mman.h>

int deep_discard(void *p, size_t len);
__attribute__((visibility("default"))) int deep_discard(void *p, size_t len)
{
	return madvise(p, len, MADV_DONTNEED);
}
