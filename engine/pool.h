/*
 * pool.h - the content pool: pages that never change once published.
 *
 * The pool is a sealed-against-shrinking memfd. The engine appends pages
 * with pwrite and never rewrites a published page; holders map it through a
 * second, read-only descriptor with MAP_PRIVATE, so a write gives the writer
 * a private copy and the pool page stays as it was. A page whose last
 * reference goes is punched out of the file and its slot reused later.
 *
 * Slot states: FREE (a hole, on the free list or beyond the end), RESERVED
 * (handed to a publisher, not written yet), LIVE (written; refs counts the
 * mappings that may show it). Not thread-safe: the engine's lock covers it.
 *
 * A freed slot keeps its page for a while (dirty[]): freed slots are
 * punched in one go, sorted and coalesced, when MD_POOL_DIRTY have gathered
 * or at md__pool_trim(), and only then reused. Each punch zaps the page
 * from every holder's view, a TLB shootdown on the cores running them; a
 * punch per freed page was a quarter of memdedupd's time while two booting
 * guests churned. Nobody maps a freed slot any more (the last reference
 * went with the last mapping), but the kernel may still hold its page (an
 * O_DIRECT write from guest RAM pins it and sends it later): a slot is
 * never rewritten in place, the punch gives it a new page.
 */
#ifndef MD_ENGINE_POOL_H
#define MD_ENGINE_POOL_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum md__slot { MD_SLOT_FREE, MD_SLOT_RESERVED, MD_SLOT_LIVE };

#define MD_POOL_DIRTY 256u	/* freed slots whose pages are not punched yet */

struct md__pool {
	int fd;                    /* read-write: the engine's alone */
	int ro_fd;                 /* read-only: what holders map */
	const unsigned char *view; /* PROT_READ, MAP_SHARED view of all slots */
	size_t max_pages;          /* slots the view covers */
	size_t end;                /* slots ever handed out (file size / page) */
	uint32_t *refs;
	uint8_t *state;
	uint32_t *free;            /* freed slots, punched, reused (LIFO) */
	size_t nfree;
	uint32_t dirty[MD_POOL_DIRTY]; /* freed slots still holding their page */
	size_t ndirty;
	uint64_t published, freed, reused;
	uint64_t unpunched;        /* freed slots never used again: see md__pool_trim */
	/* The memfd's identity. In a VMM's process the descriptors are used
	 * by number, and the VMM may close one of them or put a file of its
	 * own at its number (dup2): a write or punch would then land in that
	 * file, and a mapping show its bytes to the guest. */
	dev_t dev;
	ino_t ino;
	int lost;                  /* a descriptor was found not to be the pool
				    * any more: no write, punch or mapping
				    * through them from then on */
};

/* Tests only: the next this many punches of freed slots fail (EIO). */
extern int md__pool_fail_punches;

/* Creates a pool of at most max_pages pages (address space is reserved for
 * the view, no memory). */
int md__pool_open(struct md__pool *p, size_t max_pages);
void md__pool_close(struct md__pool *p);
/* Reserves n slots with consecutive offsets; *first gets the first. One slot
 * comes from the free list (punched slots) when it can; runs are appended so
 * that adjacent guest pages get adjacent pool offsets, or, once the pool's
 * end is reached, taken from n punched free slots in a row. -ENOSPC: no
 * room for them. */
int md__pool_reserve(struct md__pool *p, size_t n, uint32_t *first);
/* Gives reserved, unwritten slots back. */
void md__pool_unreserve(struct md__pool *p, uint32_t first, size_t n);
/* Writes n pages from src into reserved slots from first on and makes them
 * LIVE with no references. Refuses (-EPERM) anything but RESERVED slots:
 * a published page is never rewritten. */
int md__pool_publish(struct md__pool *p, uint32_t first, const void *src, size_t n);
/* Takes / drops a reference. Dropping the last frees the slot (punches the
 * page out of the file); returns 1 then, else 0. */
void md__pool_get(struct md__pool *p, uint32_t slot);
int md__pool_put(struct md__pool *p, uint32_t slot);
/* Drops n references at once (all it has, if fewer), as md__pool_put. */
int md__pool_put_n(struct md__pool *p, uint32_t slot, uint32_t n);
/* Frees a LIVE slot nobody references (an unused publication). */
void md__pool_drop_unused(struct md__pool *p, uint32_t slot);
/* 1 if fd (p->fd or p->ro_fd) is still a descriptor of the pool's file;
 * else 0, and p->lost is set for good (said once in the log). */
int md__pool_fd_ok(struct md__pool *p, int fd);
/* Punches the pages of the freed slots not reused yet; returns how many. */
size_t md__pool_trim(struct md__pool *p);
static inline const unsigned char *md__pool_page(const struct md__pool *p, uint32_t slot)
{
	return p->view + (size_t)slot * 4096u;
}
static inline uint64_t md__pool_live(const struct md__pool *p)
{
	return p->published - p->freed;
}
#endif
