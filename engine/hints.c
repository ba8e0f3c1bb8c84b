/*
 * hints.c - the bounded circular stack of I/O hints (see hints.h).
 *
 * A ring buffer used as a stack: push writes at top and advances it, pop
 * steps top back. When count reaches cap, a push overwrites the slot at top,
 * which is the oldest hint: the stack forgets from the bottom.
 */
#include <errno.h>
#include <stdlib.h>

#include "hints.h"

int md__hints_init(struct md__hints *h, size_t cap)
{
	*h = (struct md__hints){ 0 };
	if (cap == 0)
		return -EINVAL;
	h->slot = calloc(cap, sizeof(*h->slot));
	if (!h->slot)
		return -ENOMEM;
	h->cap = cap;
	pthread_mutex_init(&h->lock, NULL);
	return 0;
}

void md__hints_free(struct md__hints *h)
{
	if (h->slot)
		pthread_mutex_destroy(&h->lock);
	free(h->slot);
	h->slot = NULL;
}

void md__hints_push(struct md__hints *h, uintptr_t addr, size_t len, uint64_t key, uint64_t off)
{
	struct md__hint x = { addr, len, key, off };
	pthread_mutex_lock(&h->lock);
	h->slot[h->top] = x;
	if (key) {
		/* Full (the scanner paused, memdedupd away): the oldest go;
		 * they matter least. */
		if (h->nfresh == MD_HINTS_FRESH) {
			h->fresh_head = (h->fresh_head + 1) % MD_HINTS_FRESH;
			h->nfresh--;
		}
		h->fresh[(h->fresh_head + h->nfresh++) % MD_HINTS_FRESH] = x;
	}
	h->top = (h->top + 1) % h->cap;
	if (h->count == h->cap)
		__atomic_fetch_add(&h->dropped, 1, __ATOMIC_RELAXED);	/* the slot just written held the oldest */
	else
		__atomic_store_n(&h->count, h->count + 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&h->pushed, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&h->lock);
}

int md__hints_pop(struct md__hints *h, struct md__hint *out)
{
	int got = 0;
	/* The scanner asks for every hinted share of its visits, and mostly
	 * finds none once reads stop: no lock for that. A push racing with
	 * this read is popped the next time. */
	if (!__atomic_load_n(&h->count, __ATOMIC_RELAXED))
		return 0;
	pthread_mutex_lock(&h->lock);
	if (h->count) {
		h->top = (h->top + h->cap - 1) % h->cap;
		*out = h->slot[h->top];
		__atomic_store_n(&h->count, h->count - 1, __ATOMIC_RELAXED);
		h->popped++;
		got = 1;
	}
	pthread_mutex_unlock(&h->lock);
	return got;
}

size_t md__hints_take_fresh(struct md__hints *h, struct md__hint *out, size_t max)
{
	pthread_mutex_lock(&h->lock);
	size_t n = h->nfresh < max ? h->nfresh : max;
	for (size_t i = 0; i < n; i++)
		out[i] = h->fresh[(h->fresh_head + i) % MD_HINTS_FRESH];
	h->fresh_head = (h->fresh_head + n) % MD_HINTS_FRESH;
	h->nfresh -= n;
	pthread_mutex_unlock(&h->lock);
	return n;
}

size_t md__hints_count(struct md__hints *h)
{
	pthread_mutex_lock(&h->lock);
	size_t n = h->count;
	pthread_mutex_unlock(&h->lock);
	return n;
}
