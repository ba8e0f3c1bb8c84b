/*
 * merge.h - the engine: registered guest RAM, the content pool, the index,
 * and the merge primitive that maps pool pages copy-on-write over guest
 * pages with equal content.
 *
 * The rule: a guest page is replaced only while it is write-protected with
 * userfaultfd and after it compared equal, byte for byte, with the pool page
 * that replaces it. A hash is never proof. A guest write that comes during a
 * merge waits, then lands in a private copy of the merged page (equal to the
 * old content) or in the original page if the merge was abandoned.
 *
 * Lock: engine->lock is held by a merge from before the write-protect to
 * after the pages are either replaced or un-protected, and by the fault
 * thread while it resolves a fault. So no page is write-protected while the
 * fault thread holds the lock, and un-protecting whatever faulted is always
 * right. See docs/design-content-sharing.md.
 *
 * Lock order: regions_lock, then lock. The scanner holds regions_lock for
 * reading across a batch (it reads guest pages outside the merge lock), so a
 * region can only be removed - and its memory unmapped - between batches.
 * The agent's own lock comes before both.
 */
#ifndef MD_ENGINE_MERGE_H
#define MD_ENGINE_MERGE_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "index.h"
#include "inflight.h"
#include "pool.h"
#include "remote.h"
#include "sys.h"	/* struct md__vmas */
#include "uffd.h"

#define MD_EPAGE 4096u
/* Pool references dropped per UNREF at most (within MD_REF_MAX). */
#define MD_REF_BATCH 512u

/* Bits of a /proc/self/pagemap entry. */
#define MD_PM_PRESENT (1ull << 63)
#define MD_PM_SWAP (1ull << 62)
#define MD_PM_FILE (1ull << 61)     /* file page or shared anonymous */
#define MD_PM_UFFD_WP (1ull << 57)
#define MD_PM_EXCLUSIVE (1ull << 56) /* mapped once: never the kernel's zero page */
#define MD_PM_PFN ((1ull << 55) - 1)

/* A pagemap entry showing a private anonymous page, present or swapped: a
 * page written since a file page was mapped there. A swap entry of a file
 * page (a pool page being migrated, say) also shows MD_PM_SWAP, with
 * MD_PM_FILE: still the file page. A swap entry with the write-protect bit
 * may be a userfaultfd marker over nothing, where the next read maps the
 * file page again: not taken for a private page (a swapped one waits for
 * its swap-in), so its file page keeps its reference. */
static inline int md__pm_private_anon(uint64_t pm)
{
	if (!(pm & MD_PM_PRESENT) && (pm & MD_PM_SWAP) && (pm & MD_PM_UFFD_WP))
		return 0;
	return (pm & (MD_PM_PRESENT | MD_PM_SWAP)) && !(pm & MD_PM_FILE);
}

/* A pagemap entry showing a page with content: there, or in swap (a swap
 * entry with the write-protect bit may be a userfaultfd marker over
 * nothing). Anything else in anonymous memory is a hole, which a read
 * would fill in. */
static inline int md__pm_has_page(uint64_t pm)
{
	return (pm & MD_PM_PRESENT) || ((pm & MD_PM_SWAP) && !(pm & MD_PM_UFFD_WP));
}

/* Advice a replacing mapping must inherit (same bits as MD_ADV_*). */
#define MD_EADV_DONTFORK (1u << 0)
#define MD_EADV_DONTDUMP (1u << 1)
#define MD_EADV_HUGEPAGE (1u << 2)
#define MD_EADV_UNDO     (1u << 31)	/* the bits are taken back (MADV_DOFORK...) */

/* What a record of [rs, re) with advice have holds after advice (MD_EADV_*
 * bits) given [s, e): bits added wherever the range overlaps it, taken back
 * (MD_EADV_UNDO) only where it covers it whole. One record holds one
 * advice: covered in part, its new mappings keep the more careful one (not
 * dumped, not huge; *partial set where that is kept against an undo), but
 * for DONTFORK, which a record has only where all its memory has it: a
 * fork copies the rest, and the mappings we make there must be copied too
 * (made DONTFORK, the child found holes in guest RAM its VMM never kept
 * from it, and died of SIGSEGV there). */
static inline unsigned md__advice_after(unsigned have, uintptr_t rs, uintptr_t re, uintptr_t s, uintptr_t e,
					unsigned advice, int *partial)
{
	int whole = s <= rs && re <= e;
	if (rs >= e || re <= s)
		return have;
	if (!(advice & MD_EADV_UNDO))
		return have | (whole ? advice : advice & ~MD_EADV_DONTFORK);
	if (whole)
		return have & ~advice;
	*partial |= (have & advice & ~(MD_EADV_DONTFORK | MD_EADV_UNDO)) != 0;
	return have & ~(advice & MD_EADV_DONTFORK);
}

/* ref[] of a page: bit 31 set when the page lies in a mapping of the pool
 * (even after a copy-on-write break), low bits the pool slot + 1 it still
 * shows (0: none). */
#define MD_REF_FILE (1u << 31)
/* The page is mapped from a disk image by read-time sharing: not ours. */
#define MD_REF_IMAGE (1u << 30)
/* With MD_REF_FILE: the slot is one of our own pool's fill strips (below),
 * even when the other slots are memdedupd's. */
#define MD_REF_FILL (1u << 29)
#define MD_REF_SLOT(r) ((r) & ~(MD_REF_FILE | MD_REF_IMAGE | MD_REF_FILL))
/* Slots must stay below the flag bits. */
#define MD_REF_SLOTS_MAX (MD_REF_FILL - 1u)
/* Nothing for the scanner to do: merged already, or an image page. */
#define MD_REF_BUSY(r) ((r) & ~MD_REF_FILE)

/* seen[] of a page: 0 until the scanner has its checksum; then MD_SEEN, the
 * page's age (passes it was visited, unchanged and without a partner,
 * capped at 3) and how many passes the cursor still skips it. Like KSM's
 * smart scan, a page that stays unique is visited every 2^age passes; a
 * partner appearing elsewhere reaches it sooner as a candidate. */
#define MD_SEEN 1u
#define MD_SEEN_AGE(s) (((s) >> 1) & 3u)
#define MD_SEEN_SKIP(s) ((s) >> 4)
#define MD_SEEN_MAKE(age, skip) (MD_SEEN | (unsigned)(age) << 1 | (unsigned)(skip) << 4)
/* seen[] of a page found as it was once more: a step older, and skipped for
 * 2^age - 1 passes. */
static inline uint8_t md__seen_aged(uint8_t seen)
{
	unsigned age = MD_SEEN_AGE(seen);
	age += age < 3;
	return (uint8_t)MD_SEEN_MAKE(age, (1u << age) - 1);
}

/* What the engine keeps per registered page: ref, hash and seen. */
#define MD_EPAGE_META (sizeof(uint32_t) + sizeof(uint16_t) + sizeof(uint8_t))

struct md__eregion {
	uintptr_t start, end;
	unsigned advice;
	uint32_t *ref;
	uint16_t *hash;    /* last checksum the scanner saw, its low 16 bits: a
	                    * volatility filter only (a changed page passes it
	                    * once in 65,536 visits, and is then looked up and
	                    * compared like any other), 2 bytes a page less in
	                    * every guest's process than KSM's 32-bit one */
	uint8_t *seen;     /* the scanner's state of the page: MD_SEEN_* */
	uint8_t *dropped;  /* bitmap: the engine dropped the page as a zero page
	                    * and the VMM has not discarded it since, so where it
	                    * is not there the hole is ours, not the VMM's
	                    * (MD_UNREG_HANDOVER fills it), and while it is not
	                    * there it counts as a zero page (md__engine_present
	                    * clears it when the scanner reads it written).
	                    * Written under the merge lock only, unlike seen[]. */
	int vmm_files;     /* a private mapping of the VMM's own file (none of
	                    * a pool's nor the agent's: md__engine.agent_file)
	                    * was in it when registered (a memory backend with
	                    * share=off): its MD_REF_FILE pages may be that
	                    * file's, never else (a mapping the VMM puts over
	                    * guest RAM later leaves the engine) */
};

/* Whether page i of r is a dropped zero page (a racy read: a hint, unless
 * the merge lock is held). */
static inline int md__dropped(const struct md__eregion *r, size_t i)
{
	return (__atomic_load_n(&r->dropped[i / 8], __ATOMIC_RELAXED) >> (i % 8)) & 1;
}

struct md__engine_stats {
	uint64_t merged;        /* guest pages replaced by pool pages */
	uint64_t merged_file;   /* guest pages replaced by equal image pages */
	uint64_t zero;          /* zero pages dropped (now on the zero frame) */
	uint64_t zero_again;    /* not in zero: pages dropped again that were
				 * zero when last dropped or read, and so since
				 * as far as the scanner knows (read again on a
				 * kernel without a zero page, or with its frames
				 * hidden: a page of zeroes of their own) */
	uint64_t undropped;     /* of zero, found written since (md__engine_present,
				 * md__engine_reap) */
	uint64_t filled;        /* pages of one repeated word mapped from a fill strip */
	uint64_t published;     /* guest pages copied into the pool as first copy */
	uint64_t abandoned;     /* pages that differed under write-protect */
	uint64_t map_failed;    /* mmap refused: the page stayed as it was */
	uint64_t map_remade;    /* of those, pages the failed mmap had unmapped
				 * (Linux <= 6.6), mapped again with their content */
	uint64_t budget_refused;/* merges refused by the VMA budget */
	uint64_t image_replaced;/* pages of merges onto an image whose descriptor
				 * the VMM closed or replaced meanwhile */
	uint64_t pool_replaced; /* pages of merges (and publications) refused:
				 * a descriptor of the pool they go to (ours,
				 * or memdedupd's) was not that pool's any more,
				 * the VMM closed it or put a file of its own at
				 * its number (md__pool_fd_ok, md__remote_fd_ok) */
	uint64_t freeze_failed; /* pages of runs the write-protection could not
				 * be set on (pagemap, populate, the ioctl), or
				 * whose frozen content, or the pool or image
				 * pages it must equal, could not be read */
	uint64_t cow_broken;    /* merged pages since written (found by reap) */
	uint64_t wp_faults;     /* writers that waited on a merge */
	uint64_t refs_kept;     /* references kept for pages left mapped that
				 * could not be made private (unregister) */
	uint64_t unreg_failed;  /* pages an unregister left registered, or,
				 * the memory gone, gave up beside its range:
				 * no memory to split their region */
	uint64_t io_busy;       /* runs left alone: a read was writing them,
				 * or had mapped an image over one */
	uint64_t holes;         /* pages of runs left alone: one was a hole (the
				 * VMM discarded it since the visit) */
	uint64_t vmas;          /* last count of the process's mappings */
	uint64_t left_file;     /* pages moved off a pool's file whose slot is
				 * forgotten (memdedupd restarted) into
				 * anonymous memory of their own */
};

struct md__engine_options {
	size_t pool_pages;      /* pool slots; 0: 1 Mi (4 GiB) */
	uint64_t max_vmas;      /* 0: vm.max_map_count - 5000 */
	struct md__vmas *vmas;  /* the process's estimate, shared with the
				 * agent's mappings; NULL: the engine's own */
};

/* A fill strip: MD_FILL_STRIP consecutive slots of our own pool, each one
 * page of one repeated word (freed guest kernel memory is poisoned with
 * 0xcc, say: thousands of such pages side by side). A run of those pages
 * maps a strip in one mmap, one VMA for 16 pages; mapped from one pool
 * page, each would be a mapping of its own (a VMA holds consecutive file
 * offsets only). The engine holds a reference on every slot of its strips,
 * which live as long as it does: 64 KiB a word, in each process. */
#define MD_FILL_STRIP 16u
#define MD_FILLS 4u
struct md__fill {
	uint64_t word;
	uint32_t slot;          /* the strip's first slot + 1; 0: unused */
};

struct md__engine {
	pthread_rwlock_t regions_lock;	/* see the lock order above */
	pthread_mutex_t lock;   /* the merge lock; see above */
	struct md__uffd uffd;
	struct md__pool pool;       /* our own pool, when remote is NULL */
	struct md__remote *remote;  /* memdedupd's pool of our domain, or NULL */
	struct md__index index;
	uint64_t *slot_hash;    /* checksum of each live pool slot */
	struct md__eregion *regions;
	size_t nregions;
	int pagemap_fd;	/* md__engine_pagemap's, checked to be still ours */
	dev_t pagemap_dev;
	ino_t pagemap_ino;
	unsigned char *cmp_buf;	/* the compare's copies: frozen pages, then what they must equal */
	uint64_t budget_counts; /* counts of every mapping budget_ok made (merge lock) */
	uint64_t zero_pfn;      /* the kernel's zero page in pagemap, 0: unknown or none */
	uint16_t zero_hash;     /* a zero page's checksum, as hash[] keeps it */
	uint64_t layout_gen;    /* region table changes (the random pass's) */
	uint64_t zap_gen;       /* VMM discards done (md__engine_discard), counted
				 * under the lock once the range is holes,
				 * unregisters begun and pools forgotten (atomic) */
	uint64_t dropped_gen;   /* changes of regions' dropped bits (atomic) */
	uint64_t max_vmas;
	struct md__vmas *vmas;  /* upper bound since the last count (options) */
	struct md__vmas own_vmas;
	/* What the last md__engine_unmap gave up whole, beside its range
	 * included ([0, 0): nothing): pages made private in pool mappings,
	 * which only their caller can track from then on. */
	uintptr_t gave_up_start, gave_up_end;
	struct md__fill fills[MD_FILLS];
	struct md__engine_stats st;
	/* Pool references of memdedupd's slots dropped but not yet sent
	 * (lock held): one UNREF for many pages. One round trip per page made
	 * a reap of boot-time copy-on-write breaks thousands of round trips,
	 * under the merge lock, at 10x KSM's rate. */
	uint32_t unref[MD_REF_BATCH];
	size_t nunref;
	/* Where md__engine_unlock moves them: the scanner and the agent's
	 * thread send them (md__engine_send_unrefs), holding no lock. Sent at
	 * the unlock, a VMM thread's munmap of merged pages waited for a slow
	 * daemon's answer, and with it every thread that wanted the merge
	 * lock (the fault thread). A reference sent late only keeps its pool
	 * page a while longer. unref_lock is innermost, held for copies only;
	 * unref_gen is the pool's generation the slots belong to. */
	pthread_mutex_t unref_lock;
	uint32_t *unref_q;
	size_t nunref_q, unref_cap;
	uint64_t unref_gen;
	struct md__inflight io; /* the VMM's reads into guest RAM (any thread) */
	/* Pages still mapping an old pool's file (md__engine_leave_file):
	 * set when the pool changed under merged pages, cleared after a pass
	 * that left none (atomic). The pass's cursor, whether a run of it is
	 * to be tried again, whether it copies unwritten pages, those it left
	 * for want of room and those the last whole pass left, and pages of
	 * old pools outside guest RAM (the agent's thread alone). */
	int leave_old, leave_failed, leave_copy;
	uintptr_t leave_at;
	uint64_t leave_unwritten, leave_last_unwritten, leave_outside;
	/* Whether the file (dev, ino) is one the agent maps into guest RAM
	 * itself (a disk image: read-time sharing, and its copies in RAM
	 * given up and advised again), which a page of the VMM's own file
	 * is not (vmm_file_page). Called under the agent's lock, which every
	 * registration, unregister and discard comes with. NULL: none. */
	int (*agent_file)(void *arg, dev_t dev, ino_t ino);
	void *agent_file_arg;
};

/* Tests only: the engine's next this many mmaps over registered pages fail
 * as Linux up to 6.6 can fail them, ENOMEM with the old pages unmapped
 * already; nothing else makes that happen on demand. 0 otherwise. */
extern int md__engine_fail_maps;
/* Tests only: called where the VMA budget counts every mapping (a slow
 * read of /proc/self/maps, with a run's pages frozen), standing for what
 * may come meanwhile. NULL otherwise. */
extern void (*md__engine_count_hook)(void);
/* Tests only: called once the n frozen pages at a were read for a merge's
 * compare, before the check that they are still write-protected,
 * standing for a raw zap and a write that may come meanwhile. NULL
 * otherwise. */
extern void (*md__engine_compare_hook)(uintptr_t a, size_t n);
/* Tests only: called once the n pages at a are write-protected for a
 * merge, before the check for reads in flight into them, standing for a
 * read (O_DIRECT, pinning them) that starts meanwhile. NULL otherwise. */
extern void (*md__engine_freeze_hook)(uintptr_t a, size_t n);
/* Tests only: called by md__engine_leave_file after each run it tried (at
 * a), no lock held, standing for a VMM's unmap and mapping that may come
 * between two runs. NULL otherwise. */
extern void (*md__engine_leave_hook)(uintptr_t a);
/* Tests only: called once a merge found the pool's descriptor fd still the
 * pool's, before what it mapped from it replaces guest pages, standing for
 * a VMM thread that puts a file of its own at that number meanwhile (dup2).
 * NULL otherwise. */
extern void (*md__engine_pool_checked_hook)(int fd);
/* Tests only: the engine's next this many allocations of what is left of a
 * region an unregister splits fail (ENOMEM). 0 otherwise. */
extern int md__engine_fail_slices;

/* One UNREF for n slots of memdedupd's pool generation gen; if refused (a
 * slot not held), handed to the client's own UNREFs, which split it when
 * refused again, so the valid ones still go: one round trip here. */
int md__engine_unref_n(struct md__engine *e, const uint32_t *slot, size_t n, uint64_t gen);
int md__engine_init(struct md__engine *e, const struct md__engine_options *opts);
void md__engine_fini(struct md__engine *e);
/* Registers guest RAM [addr, addr+len) (page-aligned). */
int md__engine_register(struct md__engine *e, void *addr, size_t len, unsigned advice);

/* Drops what page i of r holds in the pool (lock held). A reference to a
 * slot of memdedupd's pool is queued, and sent by md__engine_send_unrefs(). */
void md__engine_release_ref(struct md__engine *e, struct md__eregion *r, size_t i);
/* Moves the queued references aside for md__engine_send_unrefs, then drops
 * the merge lock: no round trip to memdedupd. */
void md__engine_unlock(struct md__engine *e);
/* Sends the references dropped so far to memdedupd (no engine lock held:
 * round trips, as many as MD_RT_PASS_MS allows; the rest stay queued for
 * the next call). Those of a pool from before a reconnection to another
 * daemon are forgotten, as that daemon is. */
void md__engine_send_unrefs(struct md__engine *e);
/* The content of pool slot s (lock held, slot known valid). */
const unsigned char *md__engine_pool_page(struct md__engine *e, uint32_t slot);
/* Forgets guest RAM [addr, addr+len): drops its pool references and its
 * registration. MD_UNREG_GONE: the memory is about to be unmapped or
 * replaced. MD_UNREG_MAPPED: it stays mapped (it no longer asks for
 * merging, or moves): every page mapped from the pool or an image is made a
 * private copy first, since a slot nobody references is punched or reused
 * and the page would then read zeroes or another page's content. A page
 * that cannot be copied (memory short) keeps its reference, which is then
 * only dropped when the engine goes; counted in refs_kept. */
#define MD_UNREG_GONE 0
#define MD_UNREG_MAPPED 1
/* As MD_UNREG_MAPPED, for the VMM's own userfaultfd (postcopy migration):
 * it takes a page that is not there for one not received yet, and waits for
 * it forever. Both put back the zero pages the engine dropped first; here,
 * if that fails, -errno and nothing is forgotten. Short of memory to split
 * a region the range cuts, no region goes: -ENOMEM, said once in the log,
 * the registered pages of the range counted in unreg_failed (the agent's
 * records stay as they were for the call that fails); with MD_UNREG_GONE
 * (the memory is gone already) the regions it cuts are given up whole
 * instead (their rest made private copies, [gave_up_start, gave_up_end)),
 * and 0. */
#define MD_UNREG_HANDOVER 2
int md__engine_unregister(struct md__engine *e, void *addr, size_t len, int how);
/* Whether [addr, addr+len) overlaps a registered region (taken under the
 * regions lock for reading: it does not wait for a scanner's batch). */
int md__engine_touches(struct md__engine *e, uintptr_t addr, size_t len);
/* Runs op(arg), which unmaps or replaces [addr, addr+len) (the VMM's munmap,
 * MAP_FIXED mmap or mremap) and returns 0 or -errno, with the scanner kept
 * out; then forgets the range (MD_UNREG_GONE) if op succeeded. If it failed:
 * what is gone is forgotten (MD_UNREG_GONE), what is still mapped stays
 * registered if keep_mapped (op was a munmap) or all of it is, else is
 * unregistered with MD_UNREG_MAPPED. Returns op's result. A region op
 * cuts whose remains find no memory is given up whole (its parts still
 * mapped made private), counted in unreg_failed, and said in
 * gave_up_start/gave_up_end: a discard there would show the pool page. */
int md__engine_unmap(struct md__engine *e, void *addr, size_t len, int (*op)(void *arg), void *arg,
		     int keep_mapped);
/* Adds advice bits to the regions overlapping [addr, addr+len). */
/* Returns 1 if some advice taken back stays on a region covered in part
 * (md__advice_after), else 0. */
int md__engine_advise(struct md__engine *e, void *addr, size_t len, unsigned advice);
/* Runs map(arg) - which replaces [addr, addr+len) by an image mapping - with
 * no merge in progress, then marks those pages as image pages the scanner
 * leaves alone (dropping any pool reference they had). map returns 0 when
 * it mapped the image, 1 when it left fresh anonymous memory there instead
 * (the engine forgets what it had of those pages), -errno when its mmap
 * failed (pages the kernel unmapped on the way are made again, zeroes). */
int md__engine_exclude(struct md__engine *e, void *addr, size_t len,
		       int (*map)(void *arg), void *arg);
/* Runs op(arg) with no merge in progress and none starting: no mapping
 * of the engine's is made meanwhile. Returns op's result. */
int md__engine_locked(struct md__engine *e, int (*op)(void *arg), void *arg);
/* Merges n guest pages from addr with the pool slots from slot on. Returns
 * the pages merged (those that compared equal, on a live slot), or -errno. */
int md__engine_merge(struct md__engine *e, void *addr, size_t n, uint32_t slot);
/* The same with a slot per page: page i with slots[i]. A slot that is not
 * live (or not in the daemon's pool) leaves its page as it was. done, if
 * not NULL, gets done[i] = 1 for each page i that now shows its pool page
 * (the caller's pin on that slot now belongs to the page). */
int md__engine_merge_slots(struct md__engine *e, void *addr, size_t n, const uint32_t *slots,
			   unsigned char *done);
/* Merges n guest pages from addr with n pages of a file that cannot change
 * while the caller holds what proves it (a read lease): content is what the
 * file holds at off, read by the caller. All pages are frozen and compared
 * with content; if all are equal they are mapped MAP_PRIVATE from fd at off
 * and marked MD_REF_IMAGE. The mapping is made aside first; still_fixed, if
 * not NULL, is then asked (under the engine's lock: it must not call the
 * engine) whether fd is still the descriptor that holds the file fixed,
 * and only then is the mapping moved over the guest's pages. Returns n, 0
 * (they differ), -EBADF (still_fixed said no: nothing changed), or
 * -errno. */
int md__engine_merge_file(struct md__engine *e, void *addr, size_t n, int fd, off_t off,
			  const void *content, int (*still_fixed)(void *arg), void *arg);
/* The step of md__engine_map_moved that failed. */
enum md__map_step { MD_MAP_ASIDE = 1, MD_MAP_LOOK, MD_MAP_MOVE };
/* Maps len bytes of fd from off, MAP_PRIVATE and read-write, over
 * [dst, dst+len) so that no other file is ever what dst shows: mapped
 * aside first, look(arg) (if not NULL) then asked whether fd is still the
 * file meant, and only then moved over dst. fd is a number, which another
 * thread of the VMM may close or put a file of its own at (dup2) between
 * a caller's check and its use: mapped straight over guest RAM, that file
 * would be what the guest reads. 0, or a negative errno with *failed the
 * step: MD_MAP_LOOK (-EBADF: look said no) and MD_MAP_ASIDE leave dst as
 * it was; after MD_MAP_MOVE dst may be unmapped (Linux up to 6.6), for the
 * caller to make again. Honours md__engine_fail_maps at the move. */
int md__engine_map_moved(void *dst, size_t len, int fd, off_t off, int (*look)(void *arg), void *arg,
			 enum md__map_step *failed);
/* Page i of r holds something other than zeroes (the scanner read it): a
 * page dropped as zero before and written since is no longer a dropped one. */
void md__engine_present(struct md__engine *e, struct md__eregion *r, size_t i);
/* The bytes the engine keeps per page, per pool slot and in its index:
 * general_profit's metadata. */
size_t md__engine_meta_bytes(const struct md__engine *e);
/* Pages of r dropped as zero pages and not seen there since. */
size_t md__engine_dropped_pages(const struct md__eregion *r);

/* Drops those of n pages from addr that are all zero. Returns how many of
 * those were new work: a page zero at its last drop or visit too (hash[]
 * says so, or its dropped bit) is dropped again but counted in zero_again,
 * not returned, and aged (seen[]): on a kernel without a zero page (or
 * with its frames hidden from us) a guest that only reads its dropped
 * pages shows each as a present page of zeroes again, and counted as new
 * work they kept an idle scanner at its set rate. */
int md__engine_merge_zero(struct md__engine *e, void *addr, size_t n);
/* Maps those of n pages from addr that are word repeated (not zero) from a
 * fill strip of our own pool (made on first use), a strip per MD_FILL_STRIP
 * pages side by side. Returns the count, or -errno (-ENOSPC: no strip for
 * one more word, or the VMA budget is spent). */
int md__engine_merge_fill(struct md__engine *e, void *addr, size_t n, uint64_t word);
/* Copies n guest pages (at most MD_COPY_PAGES_MAX) into new, consecutive
 * slots of the engine's own pool (*slot the first; -EINVAL with memdedupd's)
 * and maps them back over the guest pages, so the guest shares them from
 * now on; indexes them. Returns n, or -errno. */
int md__engine_publish(struct md__engine *e, void *addr, size_t n, uint32_t *slot);
/* Finds the live slot whose content equals page (hash its XXH3), or -1. */
int64_t md__engine_lookup(struct md__engine *e, const void *page, uint64_t hash);
/* The VMM discards [addr, addr+len): zeroes from now on, pool or not. The
 * engine's pages there become holes now, under the merge lock (the VMM's
 * own discard follows); those of the VMM's own private file mapping are
 * left to that discard, which shows its file again, as without us. */
int md__engine_discard(struct md__engine *e, void *addr, size_t len);
/* 1 if lo lies in a region of e, and *end is where that stops (at most hi);
 * else 0, and *end is where the next region starts (at most hi). */
int md__engine_covers(struct md__engine *e, uintptr_t lo, uintptr_t hi, uintptr_t *end);
/* Finds merged pages written since (copy-on-write breaks) and drops their
 * pool references; returns how many. */
int md__engine_reap(struct md__engine *e);
/* Pages mapped from a pool, the pool's page still (both locks held): those
 * with a slot, and those whose slot was forgotten when memdedupd went (a
 * new daemon's pool replaced the old one, which they still map) unless
 * pagemap shows them written since. What an unmerge copies. */
uint64_t md__engine_shared_pages(struct md__engine *e);
/* The same in the regions that in(arg, start, end) takes (all if in is
 * NULL); with slots_only, only pages with a slot: then it allocates
 * nothing (a fork's prepare handler may run with an allocator's locks
 * held). */
uint64_t md__engine_shared_pages_in(struct md__engine *e, int (*in)(void *arg, uintptr_t s, uintptr_t end),
				    void *arg, int slots_only);
/* Whether page i of r, a file page without a slot (MD_REF_FILE alone),
 * lies in a mapping of the VMM's own file (a memory backend with
 * share=off): the VMM's to keep as it is, never copied nor counted shared.
 * *v and *nv hold the region's maps, read once: NULL and SIZE_MAX at first,
 * *v freed by the caller. */
int md__engine_vmm_file_at(const struct md__engine *e, const struct md__eregion *r, size_t i,
			   struct md__file_map **v, size_t *nv);
/* Moves up to max pages of guest RAM still mapped from an old pool's file
 * (memdedupd restarted, or the domain changed: their slots are forgotten)
 * into anonymous memory with their content, write-protected and copied as
 * a merge is, from where the last call stopped; returns how many. While
 * one page of it is mapped, the whole old pool stays in memory. Pages the
 * guest wrote since (private copies already) always go; those still
 * reading the old pool's page only with copy_unwritten (each is a copy
 * more until every process left that pool): e->leave_last_unwritten says
 * how many the last pass left. Once a pass left none, e->leave_old goes
 * to 0. The agent's thread alone calls it. */
size_t md__engine_leave_file(struct md__engine *e, size_t max, int copy_unwritten);
/* md__engine_unregister (MD_UNREG_MAPPED) of [addr, addr+len), its pages
 * mapped from a pool moved first into anonymous memory with their
 * content, frozen and copied as md__engine_leave_file does, in the same
 * hold of the locks (no merge maps the pool there again in between): a
 * private file mapping is refused advice only anonymous memory takes
 * (MADV_WIPEONFORK), and sealed (mseal), refuses discards. Image pages,
 * and the VMM's own file's, stay. The unregister's result; *anon_err: 0,
 * or the first run's -errno (-EBUSY once merging stopped for I/O unseen,
 * whose transfers a copy could lose; those pages are made private in
 * place, as by the unregister alone). */
int md__engine_unregister_anon(struct md__engine *e, void *addr, size_t len, int *anon_err);
/* The engine goes while guest RAM stays (md_agent_free): nothing would
 * make a discard of a page mapped from a pool read zeroes any more
 * (md__engine_discard), and its slot, let go or reused meanwhile, would
 * show what the page no longer holds, or what another does. Moves every
 * such page of every region into anonymous memory with its content,
 * frozen and copied as md__engine_unregister_anon does, its pool
 * reference dropped (queued for memdedupd). Pages that cannot be (memory
 * short, the VMA budget, a read in flight, merging stopped for I/O
 * unseen: -EBUSY) keep their reference and mapping; *left counts them.
 * 0 or the first run's -errno. */
int md__engine_leave_pools(struct md__engine *e, size_t *left);
/* Moves [lo, hi) of v, a pool's private mapping that holds copies of RAM
 * given up before (no region's: MADV_UNMERGEABLE, mlock), into anonymous
 * memory with its content, v's protection, advice and the VMM's policy,
 * for the same calls as md__engine_unregister_anon; write-protected
 * while copied, so no write is lost. A locked mapping, one a userfaultfd
 * of the VMM's covers, an unreadable one, or one a read in flight writes
 * (md__inflight_busy, as for a merge) is left (-EBUSY). 0 or -errno
 * (left as it was). */
struct md__vma;
/* Reads the pagemap entries of the n pages from addr into pm: bytes read
 * (as pread), or -1. Its descriptor is used by number: a VMM that closed
 * it and opened a file of its own there would have had that file's bytes
 * taken for page-table entries (a page written taken for one not, at a
 * lease break). Checked first, and opened again when it is not ours. */
ssize_t md__engine_pagemap(struct md__engine *e, uintptr_t addr, size_t n, uint64_t *pm);
int md__engine_move_copies(struct md__engine *e, const struct md__vma *v, uintptr_t lo, uintptr_t hi);
/* The engine's region holding [addr, addr+len), or NULL (lock held). */
struct md__eregion *md__engine_region(struct md__engine *e, uintptr_t addr, size_t len);
void md__engine_stats(struct md__engine *e, struct md__engine_stats *st);
/* Punches our own pool's freed pages (see pool.h); memdedupd trims its. */
void md__engine_trim(struct md__engine *e);
#endif
