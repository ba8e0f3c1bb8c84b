/*
 * index.c - the content index (see index.h): open addressing with linear
 * probing, tombstones for removals, rebuilt at double size past 70 % use.
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
	if (!ix->e)
		return -ENOMEM;
	ix->cap = c;
	return 0;
}

void md__index_free(struct md__index *ix)
{
	free(ix->e);
	*ix = (struct md__index){ 0 };
}

/* The hash is already well mixed (XXH3): its low bits pick the bucket. */
static size_t bucket(const struct md__index *ix, uint64_t hash)
{
	return (size_t)hash & (ix->cap - 1);
}

static void put(struct md__index *ix, uint64_t hash, uint32_t slot1)
{
	size_t i = bucket(ix, hash);
	while (ix->e[i].slot && ix->e[i].slot != DELETED)
		i = (i + 1) & (ix->cap - 1);
	if (!ix->e[i].slot)
		ix->used++;
	ix->e[i] = (struct md__index_entry){ hash, slot1 };
	ix->live++;
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
			put(&n, ix->e[i].hash, ix->e[i].slot);
	n.collisions = ix->collisions;
	free(ix->e);
	*ix = n;
	return 0;
}

int md__index_insert(struct md__index *ix, uint64_t hash, uint32_t slot)
{
	if ((ix->used + 1) * 10 > ix->cap * 7) {
		int err = grow(ix);
		if (err)
			return err;
	}
	put(ix, hash, slot + 1);
	return 0;
}

int md__index_remove(struct md__index *ix, uint64_t hash, uint32_t slot)
{
	for (size_t i = bucket(ix, hash); ix->e[i].slot; i = (i + 1) & (ix->cap - 1)) {
		if (ix->e[i].hash == hash && ix->e[i].slot == slot + 1) {
			ix->e[i].slot = DELETED;
			ix->live--;
			return 0;
		}
	}
	return -ENOENT;
}

int64_t md__index_find(struct md__index *ix, uint64_t hash, const void *page,
		       md__slot_page_fn fn, void *arg)
{
	for (size_t i = bucket(ix, hash); ix->e[i].slot; i = (i + 1) & (ix->cap - 1)) {
		struct md__index_entry *e = &ix->e[i];
		if (e->slot == DELETED || e->hash != hash)
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

int md__index_has(const struct md__index *ix, uint64_t hash)
{
	for (size_t i = bucket(ix, hash); ix->e[i].slot; i = (i + 1) & (ix->cap - 1))
		if (ix->e[i].slot != DELETED && ix->e[i].hash == hash)
			return 1;
	return 0;
}
