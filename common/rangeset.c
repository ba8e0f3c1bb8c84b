/*
 * rangeset.c - see rangeset.h.
 */
#include "rangeset.h"

/* The distance between [s, e) and [a, b): 0 when they touch or overlap. */
static uintptr_t gap(uintptr_t s, uintptr_t e, uintptr_t a, uintptr_t b)
{
	return b < s ? s - b : a > e ? a - e : 0;
}

void md__rangeset_add(struct md__rangeset *s, uintptr_t start, uintptr_t end)
{
	size_t best = 0;
	uintptr_t best_gap = UINTPTR_MAX;
	for (size_t i = 0; i < s->n; i++) {
		uintptr_t g = gap(s->start[i], s->end[i], start, end);
		if (g < best_gap) {
			best_gap = g;
			best = i;
		}
	}
	if (best_gap != 0 && s->n < MD_RANGESET_MAX) {
		s->start[s->n] = start;
		s->end[s->n++] = end;
		return;
	}
	/* Full: the two ranges closest to each other are joined, the new
	 * one among them, so what comes to be covered beside them is the
	 * least. Joined to its nearest alone, a range far from the others
	 * (guest RAM of another block) covered the memory between, an
	 * allocator's, say, which then went through the agent's lock. */
	size_t a = 0, b = 0;
	uintptr_t pair_gap = UINTPTR_MAX;
	for (size_t i = 0; best_gap && i < s->n; i++)
		for (size_t j = i + 1; j < s->n; j++) {
			uintptr_t g = gap(s->start[i], s->end[i], s->start[j], s->end[j]);
			if (g < pair_gap) {
				pair_gap = g;
				a = i;
				b = j;
			}
		}
	if (pair_gap < best_gap) {
		if (s->start[b] < s->start[a])
			s->start[a] = s->start[b];
		if (s->end[b] > s->end[a])
			s->end[a] = s->end[b];
		s->start[b] = start;
		s->end[b] = end;
		return;
	}
	if (start < s->start[best])
		s->start[best] = start;
	if (end > s->end[best])
		s->end[best] = end;
}

int md__rangeset_overlaps(const struct md__rangeset *s, uintptr_t start, uintptr_t end)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->start[i] < end && s->end[i] > start)
			return 1;
	return 0;
}

void md__rangeset_remove(struct md__rangeset *s, uintptr_t start, uintptr_t end)
{
	for (size_t i = 0; i < s->n;) {
		uintptr_t a = s->start[i], b = s->end[i];
		if (b <= start || a >= end) {
			i++;
			continue;
		}
		if (a < start && b > end) {
			/* Cut in two: the right part takes a slot of its own,
			 * if there is one; else the range stays whole. Ranges
			 * may overlap (add grows the nearest): go on. */
			if (s->n < MD_RANGESET_MAX) {
				s->end[i] = start;
				s->start[s->n] = end;
				s->end[s->n++] = b;
			}
			i++;
			continue;
		}
		if (a < start) {
			s->end[i++] = start;
		} else if (b > end) {
			s->start[i++] = end;
		} else {	/* inside: gone */
			s->n--;
			s->start[i] = s->start[s->n];
			s->end[i] = s->end[s->n];
		}
	}
}
