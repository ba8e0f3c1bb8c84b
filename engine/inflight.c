/* inflight.c - reads in flight into guest RAM (see inflight.h). */
#include "inflight.h"

#define TOKEN_OVERFLOW (-1)

/* Relaxed: a busy check may read a slot being refilled (see below). */
static void store(uintptr_t *p, uintptr_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}

int md__inflight_begin(struct md__inflight *f, const struct iovec *iov, int cnt)
{
	for (int s = 0; s < MD_IO_SLOTS; s++) {
		struct md__io_slot *sl = &f->slot[s];
		int free = 0;
		if (__atomic_load_n(&sl->used, __ATOMIC_RELAXED) ||
		    !__atomic_compare_exchange_n(&sl->used, &free, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			continue;
		unsigned n = 0;
		if (cnt <= MD_IO_RANGES) {
			for (int i = 0; i < cnt; i++)
				if (iov[i].iov_len) {
					store(&sl->lo[n], (uintptr_t)iov[i].iov_base);
					store(&sl->hi[n++], (uintptr_t)iov[i].iov_base + iov[i].iov_len);
				}
		} else {
			/* Too many buffers to keep apart: one range over all. */
			uintptr_t lo = UINTPTR_MAX, hi = 0;
			for (int i = 0; i < cnt; i++)
				if (iov[i].iov_len) {
					uintptr_t b = (uintptr_t)iov[i].iov_base;
					lo = b < lo ? b : lo;
					hi = b + iov[i].iov_len > hi ? b + iov[i].iov_len : hi;
				}
			if (hi > lo) {
				store(&sl->lo[n], lo);
				store(&sl->hi[n++], hi);
			}
		}
		__atomic_store_n(&sl->n, n, __ATOMIC_RELAXED);
		/* Sequentially consistent: this store must be seen by a freeze
		 * whose write-protect comes after the read's pin (inflight.h). */
		__atomic_store_n(&sl->active, 1, __ATOMIC_SEQ_CST);
		return s;
	}
	__atomic_fetch_add(&f->overflow, 1, __ATOMIC_SEQ_CST);
	return TOKEN_OVERFLOW;
}

void md__inflight_end(struct md__inflight *f, int token)
{
	if (token == TOKEN_OVERFLOW) {
		__atomic_fetch_sub(&f->overflow, 1, __ATOMIC_SEQ_CST);
		return;
	}
	struct md__io_slot *sl = &f->slot[token];
	__atomic_store_n(&sl->active, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&sl->used, 0, __ATOMIC_RELEASE);
}

void md__inflight_block(struct md__inflight *f)
{
	__atomic_fetch_add(&f->overflow, 1, __ATOMIC_SEQ_CST);
}

/* A slot may be ended and claimed again while we read it: only reads in
 * flight through the whole check matter (inflight.h), and their ranges do
 * not change under us. */
int md__inflight_busy(struct md__inflight *f, uintptr_t addr, size_t len)
{
	if (__atomic_load_n(&f->overflow, __ATOMIC_SEQ_CST))
		return 1;
	uintptr_t end = addr + len;
	for (int s = 0; s < MD_IO_SLOTS; s++) {
		struct md__io_slot *sl = &f->slot[s];
		if (!__atomic_load_n(&sl->active, __ATOMIC_SEQ_CST))
			continue;
		unsigned n = __atomic_load_n(&sl->n, __ATOMIC_RELAXED);
		for (unsigned i = 0; i < n && i < MD_IO_RANGES; i++)
			if (__atomic_load_n(&sl->lo[i], __ATOMIC_RELAXED) < end &&
			    __atomic_load_n(&sl->hi[i], __ATOMIC_RELAXED) > addr)
				return 1;
	}
	return 0;
}
