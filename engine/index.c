/*
 * index.c - the content index (see index.h): open addressing with linear
 * probing, tombstones for removals, rebuilt at double size past 70 % use.
 * An entry keeps the hash's high half only (its tag): the bucket and the
 * filter's bit come from the tag, so a rebuild needs nothing else, and an
 * entry is 8 bytes. Two hashes with one tag are told apart by the callers'
 * byte compares, as two hashes that collide whole are.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

#define DELETED UINT32_MAX

int md__index_init(struct md__index *ix, size_t cap)
{
	size_t c = 64;
	while (c < cap)
		c *= 2;
	*ix = (struct md__index){ 0 };
	ix->e = calloc(c, sizeof(*ix->e));
	ix->filter = calloc(c / 8, sizeof(*ix->filter));
	if (!ix->e || !ix->filter) {
		md__index_free(ix);
		return -ENOMEM;
	}
	ix->cap = c;
	return 0;
}

void md__index_free(struct md__index *ix)
{
	free(ix->e);
	free(ix->filter);
	*ix = (struct md__index){ 0 };
}

size_t md__index_bytes(const struct md__index *ix)
{
	return ix->cap * sizeof(*ix->e) + ix->cap / 8 * sizeof(*ix->filter);
}

static uint32_t tag_of(uint64_t hash)
{
	return (uint32_t)(hash >> 32);
}

/* The tag is well mixed (XXH3): its low bits pick the bucket. */
static size_t bucket(const struct md__index *ix, uint32_t tag)
{
	return (size_t)tag & (ix->cap - 1);
}

/* The filter's bit for a tag: its bits mixed again, so that tags of one
 * bucket fall on different bits. */
static uint64_t *filter_word(const struct md__index *ix, uint32_t tag, uint64_t *bit)
{
	size_t b = (size_t)((tag * 0x9e3779b97f4a7c15ull) >> 32) & (ix->cap * 8 - 1);
	*bit = 1ull << (b % 64);
	return &ix->filter[b / 64];
}

static int filter_may_have(const struct md__index *ix, uint32_t tag)
{
	uint64_t bit;
	return (*filter_word(ix, tag, &bit) & bit) != 0;
}

int md__index_may_have(const struct md__index *ix, uint64_t hash)
{
	return filter_may_have(ix, tag_of(hash));
}

static void filter_add(struct md__index *ix, uint32_t tag)
{
	uint64_t bit;
	*filter_word(ix, tag, &bit) |= bit;
}

static void put(struct md__index *ix, uint32_t tag, uint32_t slot1)
{
	size_t i = bucket(ix, tag);
	while (ix->e[i].slot && ix->e[i].slot != DELETED)
		i = (i + 1) & (ix->cap - 1);
	if (!ix->e[i].slot)
		ix->used++;
	ix->e[i] = (struct md__index_entry){ tag, slot1 };
	ix->live++;
	filter_add(ix, tag);
}

static int grow(struct md__index *ix)
{
	struct md__index n;
	/* Rebuild at the same size when mostly tombstones, else double. */
	size_t cap = ix->live * 2 >= ix->cap ? ix->cap * 2 : ix->cap;
	int err = md__index_init(&n, cap);
	if (err)
		return err;
	for (size_t i = 0; i < ix->cap; i++)
		if (ix->e[i].slot && ix->e[i].slot != DELETED)
			put(&n, ix->e[i].tag, ix->e[i].slot);
	n.collisions = ix->collisions;
	md__index_free(ix);
	*ix = n;
	return 0;
}

int md__index_insert(struct md__index *ix, uint64_t hash, uint32_t slot)
{
	if (slot >= DELETED - 1)
		return -EINVAL;
	if ((ix->used + 1) * 10 > ix->cap * 7) {
		int err = grow(ix);
		if (err)
			return err;
	}
	put(ix, tag_of(hash), slot + 1);
	return 0;
}

/* Bits of removed entries stay in the filter until a quarter of cap were
 * removed; then it is made anew from the live entries. */
static void refilter(struct md__index *ix)
{
	memset(ix->filter, 0, ix->cap / 8 * sizeof(*ix->filter));
	for (size_t k = 0; k < ix->cap; k++)
		if (ix->e[k].slot && ix->e[k].slot != DELETED)
			filter_add(ix, ix->e[k].tag);
	ix->removed = 0;
}

int md__index_remove(struct md__index *ix, uint64_t hash, uint32_t slot)
{
	uint32_t tag = tag_of(hash);
	for (size_t i = bucket(ix, tag); ix->e[i].slot; i = (i + 1) & (ix->cap - 1)) {
		if (ix->e[i].tag == tag && ix->e[i].slot == slot + 1) {
			ix->e[i].slot = DELETED;
			ix->live--;
			if (++ix->removed >= ix->cap / 4)
				refilter(ix);
			return 0;
		}
	}
	return -ENOENT;
}

int64_t md__index_find(struct md__index *ix, uint64_t hash, const void *page,
		       md__slot_page_fn fn, void *arg)
{
	uint32_t tag = tag_of(hash);
	if (!filter_may_have(ix, tag))
		return -1;
	for (size_t i = bucket(ix, tag); ix->e[i].slot; i = (i + 1) & (ix->cap - 1)) {
		struct md__index_entry *e = &ix->e[i];
		if (e->slot == DELETED || e->tag != tag)
			continue;
		if (!page)
			return e->slot - 1;
		const void *content = fn(arg, e->slot - 1);
		if (content && memcmp(content, page, 4096) == 0)
			return e->slot - 1;
		ix->collisions++;
	}
	return -1;
}

int64_t md__index_find_hash(struct md__index *ix, uint64_t hash, const uint64_t *slot_hash)
{
	uint32_t tag = tag_of(hash);
	if (!filter_may_have(ix, tag))
		return -1;
	for (size_t i = bucket(ix, tag); ix->e[i].slot; i = (i + 1) & (ix->cap - 1)) {
		struct md__index_entry *e = &ix->e[i];
		if (e->slot != DELETED && e->tag == tag && slot_hash[e->slot - 1] == hash)
			return e->slot - 1;
	}
	return -1;
}

int md__index_has(const struct md__index *ix, uint64_t hash)
{
	uint32_t tag = tag_of(hash);
	if (!filter_may_have(ix, tag))
		return 0;
	for (size_t i = bucket(ix, tag); ix->e[i].slot; i = (i + 1) & (ix->cap - 1))
		if (ix->e[i].slot != DELETED && ix->e[i].tag == tag)
			return 1;
	return 0;
}
