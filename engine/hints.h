/*
 * hints.h - a bounded circular stack of I/O hints (address, length) for the
 * scanner (KSM++): the newest hint is taken first, because recently read
 * pages are the likeliest duplicates that have not changed yet; when full,
 * the oldest is dropped, so an I/O burst costs bounded memory and ages out.
 * Thread-safe: I/O threads push, the scanner pops.
 */
#ifndef MD_ENGINE_HINTS_H
#define MD_ENGINE_HINTS_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct md__hint {
	uintptr_t addr;
	size_t len;
	uint64_t key;    /* md__read_key of the file read; 0: not known */
	uint64_t off;    /* file offset that landed at addr */
};

/* Hints with a key not yet told to memdedupd (READS), oldest first. */
#define MD_HINTS_FRESH 256

struct md__hints {
	pthread_mutex_t lock;
	struct md__hint *slot;
	size_t cap;
	size_t top;      /* index one past the newest */
	size_t count;    /* hints held */
	uint64_t pushed, popped, dropped;  /* pushed, dropped: atomic, read without the lock */
	struct md__hint fresh[MD_HINTS_FRESH];	/* a ring: nfresh from fresh_head */
	size_t fresh_head, nfresh;
};

int md__hints_init(struct md__hints *h, size_t cap);
void md__hints_free(struct md__hints *h);
/* Pushes a hint; drops the oldest if full. A hint with a key is also kept
 * to be reported (at most MD_HINTS_FRESH, the newest). */
void md__hints_push(struct md__hints *h, uintptr_t addr, size_t len, uint64_t key, uint64_t off);
/* Moves up to max unreported keyed hints into out, oldest first; returns
 * how many. */
size_t md__hints_take_fresh(struct md__hints *h, struct md__hint *out, size_t max);
/* Pops the newest hint into *out; 0 if the stack is empty, else 1. */
int md__hints_pop(struct md__hints *h, struct md__hint *out);
size_t md__hints_count(struct md__hints *h);
#endif
