/*
 * rangeset.h - a few address ranges that cover at least what was added:
 * where new mappings still lack their region's advice (MADV_DONTFORK, ...),
 * where private copies may lie in file mappings no record tracks.
 *
 * Giving the advice to a whole region walked every one of its thousands of
 * mappings each second while guests read or merged; the ranges of one
 * second are few. When more come than fit, one range grows to cover the
 * new one (the nearest): more is advised than needed, never less, and
 * advice to a range that has it already is a no-op.
 */
#ifndef MD_RANGESET_H
#define MD_RANGESET_H
#include <stddef.h>
#include <stdint.h>

#define MD_RANGESET_MAX 32

struct md__rangeset {
	size_t n;
	uintptr_t start[MD_RANGESET_MAX], end[MD_RANGESET_MAX];
};

/* Adds [start, end) (start < end). Never fails. */
void md__rangeset_add(struct md__rangeset *s, uintptr_t start, uintptr_t end);
/* Takes [start, end) out of s, where that keeps the ranges within
 * MD_RANGESET_MAX (a range it would cut in two when s is full stays whole:
 * covering more is allowed). */
void md__rangeset_remove(struct md__rangeset *s, uintptr_t start, uintptr_t end);
/* 1 if [start, end) overlaps a range of s. */
int md__rangeset_overlaps(const struct md__rangeset *s, uintptr_t start, uintptr_t end);
#endif
