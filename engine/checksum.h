/* checksum.h - page checksums: the volatility filter and the index key. */
#ifndef MD_ENGINE_CHECKSUM_H
#define MD_ENGINE_CHECKSUM_H
#include <stdint.h>

/* XXH3-64 of one 4 KiB page. A match is a hint, never proof of equality. */
uint64_t md__page_hash(const void *page);
/* 1 if the page is all zero bytes. */
int md__page_is_zero(const void *page);
/* 1 if the page is one 8-byte word repeated (*word gets it; zero pages
 * included): freed kernel memory poisoned with one byte, say. */
int md__page_fill(const void *page, uint64_t *word);
/* 1 if the page is word repeated. */
int md__page_is_filled(const void *page, uint64_t word);
/* The two builds md__page_hash chooses from; the AVX2 one only where the
 * CPU has it. Equal results. */
uint64_t md__page_hash_sse2(const void *page);
uint64_t md__page_hash_avx2(const void *page);
#endif
