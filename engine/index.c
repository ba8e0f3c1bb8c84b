/*
 * index.c - the content index (see index.h): open addressing with linear
 * probing, tombstones for removals, rebuilt at double size past 70 % use.
 * An entry keeps the hash's high half only (its tag): the bucket and the
 * filter's bit come from the tag and the table's key, so a rebuild needs
 * nothing else, and an entry is 8 bytes. Two hashes with one tag are told
 * apart by the callers' byte compares, as two hashes that collide whole are.
 *
 * The hashes are unkeyed (XXH3 of page content a guest or a local user
 * chooses), so the placement is keyed instead, and no run is probed past
 * MD_INDEX_PROBES: equal tags land in one bucket whatever the key.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "index.h"

#define DELETED UINT32_MAX

/* splitmix64's finalizer: every input bit moves every output bit. */
static uint64_t mix64(uint64_t x)
{
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Without the kernel's randomness (its pool not ready yet early in boot,
 * or a seccomp filter refusing getrandom) the time and an address stand
 * in: harder to guess than no key, and MD_INDEX_PROBES bounds what a
 * guessed one costs anyway. */
static uint64_t new_key(const void *salt)
{
	uint64_t k;
	if (getrandom(&k, sizeof(k), GRND_NONBLOCK) == (ssize_t)sizeof(k))
		return k;
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return mix64(((uint64_t)t.tv_sec << 32 ^ (uint64_t)t.tv_nsec) ^ mix64((uintptr_t)salt));
}

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
	ix->key = new_key(ix->e);
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

/* Where a tag goes, under this table's key: its low bits pick the bucket,
 * its high ones the filter's bit, so that tags of one bucket fall on
 * different bits. */
static uint64_t place(const struct md__index *ix, uint32_t tag)
{
	return mix64((uint64_t)tag ^ ix->key);
}

static size_t bucket(const struct md__index *ix, uint32_t tag)
{
	return (size_t)place(ix, tag) & (ix->cap - 1);
}

static uint64_t *filter_word(const struct md__index *ix, uint32_t tag, uint64_t *bit)
{
	uint64_t p = place(ix, tag);
	size_t b = (size_t)(p >> 32 | p << 32) & (ix->cap * 8 - 1);
	*bit = 1ull << (b % 64);
	return &ix->filter[b / 64];
}

static int filter_may_have(const struct md__index *ix, uint32_t tag)
{
	uint64_t bit;
	return (*filter_word(ix, tag, &bit) & bit) != 0;
}

static size_t next(const struct md__index *ix, size_t i)
{
	return (i + 1) & (ix->cap - 1);
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

/* 0, or -ENOSPC: no free entry within MD_INDEX_PROBES of the bucket. */
static int put(struct md__index *ix, uint32_t tag, uint32_t slot1)
{
	size_t i = bucket(ix, tag), n = 1;
	for (; ix->e[i].slot && ix->e[i].slot != DELETED; i = next(ix, i), n++)
		if (n == MD_INDEX_PROBES) {
			ix->probes += n;
			return -ENOSPC;
		}
	ix->probes += n;
	if (!ix->e[i].slot)
		ix->used++;
	ix->e[i] = (struct md__index_entry){ tag, slot1 };
	ix->live++;
	filter_add(ix, tag);
	return 0;
}

static int grow(struct md__index *ix)
{
	struct md__index n;
	/* Rebuild at the same size when mostly tombstones, else double. */
	size_t cap = ix->live * 2 >= ix->cap ? ix->cap * 2 : ix->cap;
	int err = md__index_init(&n, cap);
	if (err)
		return err;
	/* Under the new key an entry may find no room near its bucket (only
	 * hundreds of entries of one tag crowd it so): it is forgotten, which
	 * costs the merges its slot would have made. */
	n.probes = ix->probes;
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
	int err = put(ix, tag_of(hash), slot + 1);
	ix->changes++;
	/* Past 50 % use a run of MD_INDEX_PROBES is unlikely but not unheard
	 * of, and a bigger table breaks it up. Entries of one tag stay in one
	 * bucket however big the table: refused, and below 50 % without a
	 * rebuild, so that they cannot make it grow without end. */
	/* And no more often than once per quarter of cap changes: a run
	 * of one tag that no rebuild breaks up made every refused insert
	 * past 50 % (tombstones counted) rebuild the whole table. */
	if (err == -ENOSPC && ix->used * 2 >= ix->cap && ix->changes >= ix->cap / 4) {
		err = grow(ix);
		if (!err)
			err = put(ix, tag_of(hash), slot + 1);
	}
	return err;
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
	size_t i = bucket(ix, tag);
	for (size_t n = 0; n < MD_INDEX_PROBES && ix->e[i].slot; n++, i = next(ix, i)) {
		ix->probes++;
		if (ix->e[i].tag == tag && ix->e[i].slot == slot + 1) {
			ix->e[i].slot = DELETED;
			ix->live--;
			ix->changes++;
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
	size_t i = bucket(ix, tag);
	for (size_t n = 0; n < MD_INDEX_PROBES && ix->e[i].slot; n++, i = next(ix, i)) {
		struct md__index_entry *e = &ix->e[i];
		ix->probes++;
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

int64_t md__index_find_with(struct md__index *ix, uint64_t hash, md__slot_hash_fn same, const void *arg)
{
	uint32_t tag = tag_of(hash);
	if (!filter_may_have(ix, tag))
		return -1;
	size_t i = bucket(ix, tag);
	for (size_t n = 0; n < MD_INDEX_PROBES && ix->e[i].slot; n++, i = next(ix, i)) {
		struct md__index_entry *e = &ix->e[i];
		ix->probes++;
		if (e->slot != DELETED && e->tag == tag && same(arg, e->slot - 1, hash))
			return e->slot - 1;
	}
	return -1;
}

static int in_slot_hash(const void *slot_hash, uint32_t slot, uint64_t hash)
{
	return ((const uint64_t *)slot_hash)[slot] == hash;
}

int64_t md__index_find_hash(struct md__index *ix, uint64_t hash, const uint64_t *slot_hash)
{
	return md__index_find_with(ix, hash, in_slot_hash, slot_hash);
}

int md__index_has(const struct md__index *ix, uint64_t hash)
{
	uint32_t tag = tag_of(hash);
	if (!filter_may_have(ix, tag))
		return 0;
	size_t i = bucket(ix, tag);
	for (size_t n = 0; n < MD_INDEX_PROBES && ix->e[i].slot; n++, i = next(ix, i))
		if (ix->e[i].slot != DELETED && ix->e[i].tag == tag)
			return 1;
	return 0;
}
