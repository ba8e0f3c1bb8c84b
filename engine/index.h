/*
 * index.h - the content index: page hash -> pool slot. Several slots may
 * share a hash, or the high half of one that the index keeps (a collision,
 * or the same content published twice); lookups resolve them by comparing
 * bytes, never by the hash alone. Not thread-safe: the engine's lock
 * covers it.
 */
#ifndef MD_ENGINE_INDEX_H
#define MD_ENGINE_INDEX_H
#include <stddef.h>
#include <stdint.h>

struct md__index_entry {
	uint32_t tag;      /* the hash's high half */
	uint32_t slot;     /* pool slot + 1; 0 empty; UINT32_MAX deleted */
};

struct md__index {
	struct md__index_entry *e;
	size_t cap;        /* power of two */
	size_t used;       /* live + deleted entries */
	size_t live;
	uint64_t collisions; /* byte compares that found a different page */
	/* Eight bits per bucket, one set for every entry's tag: most lookups
	 * are misses, and a miss in this bitmap, a sixteenth of the table's
	 * size, costs no probe of the table's scattered cache lines. Bits of
	 * removed entries stay set until `removed` reaches a quarter of cap,
	 * then it is made anew. */
	uint64_t *filter;  /* cap / 8 words */
	size_t removed;
	/* A secret of this table's, mixed into where a tag goes and which
	 * filter bit it sets: the hashes come from guests' pages (and, in
	 * memdedupd, from any local user), who could otherwise choose pages
	 * whose entries all pile up in one run. */
	uint64_t key;
	uint64_t probes;   /* entries looked at, for the tests */
	size_t changes;    /* inserts and removals since the table was made */
};

/* No entry is further than this from its bucket: an insert that finds no
 * room within it fails, a rebuild forgets such an entry (its merges are
 * missed, as if never inserted), and a lookup looks no further. Pages
 * equal to each other (or hashes chosen to share a tag) share a bucket
 * whatever the key; this bounds what they cost. */
#define MD_INDEX_PROBES 256

/* Gives the content of a slot, for the byte compare (NULL: unreadable, no
 * match). */
typedef const void *(*md__slot_page_fn)(void *arg, uint32_t slot);

int md__index_init(struct md__index *ix, size_t cap);
void md__index_free(struct md__index *ix);
/* 0, -EINVAL for a slot past UINT32_MAX - 2, -ENOMEM, or -ENOSPC: no room
 * within MD_INDEX_PROBES of its bucket (hundreds of entries with its tag
 * already), nothing added. */
int md__index_insert(struct md__index *ix, uint64_t hash, uint32_t slot);
/* Removes the entry (hash, slot); 0 or -ENOENT. */
int md__index_remove(struct md__index *ix, uint64_t hash, uint32_t slot);
/* Finds a slot whose content equals page byte for byte; -1 if none. With
 * page NULL (fn unused), the first slot under this hash: a candidate for a
 * caller that compares under write-protect itself, never proof. */
int64_t md__index_find(struct md__index *ix, uint64_t hash, const void *page,
		       md__slot_page_fn fn, void *arg);
/* Says whether slot's whole hash is hash (the index keeps only its high
 * half): its owner keeps the rest. */
typedef int (*md__slot_hash_fn)(const void *arg, uint32_t slot, uint64_t hash);
/* The first slot under this hash whose whole hash is hash, as same() says;
 * -1 if none. A candidate, as above: for a caller that keeps the hashes
 * but compares later (an agent's image pages) or never (memdedupd). */
int64_t md__index_find_with(struct md__index *ix, uint64_t hash, md__slot_hash_fn same, const void *arg);
/* md__index_find_with where slot_hash[s] is slot s's whole hash. */
int64_t md__index_find_hash(struct md__index *ix, uint64_t hash, const uint64_t *slot_hash);
/* Bytes the index holds: its table and its filter. */
size_t md__index_bytes(const struct md__index *ix);
/* 0 if the filter says no entry has this hash; 1 if one may. */
int md__index_may_have(const struct md__index *ix, uint64_t hash);
/* 1 if some entry has this hash's high half (no compare, and another
 * hash may share the half: a hint only). */
int md__index_has(const struct md__index *ix, uint64_t hash);
#endif
