/*
 * scanner.h - the scanner: visits registered guest RAM a batch at a time,
 * interleaving pages named by I/O hints, and merges what it finds equal.
 * See scanner.c for the algorithm.
 */
#ifndef MD_ENGINE_SCANNER_H
#define MD_ENGINE_SCANNER_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "hints.h"
#include "merge.h"

/* The sleep doubles per idle pass (or 1,024 pages read) up to
 * 2^MD_SCAN_IDLE_MAX times the set one. */
#define MD_SCAN_IDLE_MAX 5

struct md__scanner_stats {
	uint64_t scanned, hinted;          /* pages visited from each source */
	uint64_t merged_scan, merged_hint; /* merges found by each source */
	uint64_t zero, published, passes;
	uint64_t volatile_skips;           /* visits skipped: the checksum changed since the last */
	uint64_t first_sums;               /* visits skipped: a page's first checksum */
	uint64_t zero_swept;               /* of zero: dropped near a hint */
	uint64_t filled;                   /* pages of one repeated word mapped from a fill strip */
	uint64_t skipped;                  /* visits the smart scan saved */
	uint64_t candidates, merged_candidate; /* pages the daemon named, merged */
	uint64_t file_matches;             /* pages found equal to a file page */
	uint64_t pool_full;                /* pages memdedupd had no room for in the
					    * pool (its PUBLISH refused, -ENOSPC: full,
					    * or the user's share of pools spent) */
	uint64_t cpu_ns;                   /* the scanning thread's CPU time, all of it
					    * (its sleeps' and pauses' wake-ups too) */
	unsigned ratio;                    /* now: hinted pages per 8 */
};

/* Pages of files that cannot change (image pages the agent shares at read
 * time), offered by the agent so guest pages equal to them can map them:
 * find() tells whether a page's content is such a file page (a guess; the
 * merge compares); the matches of a batch go to merge() once the batch is
 * done and the engine's locks are free, and merge() is called before and
 * after every batch, also with none, so the agent can index new file pages
 * then. */
struct md__file_source {
	void *arg;
	int (*find)(void *arg, uint64_t hash, const void *page, uint64_t *cookie);
	void (*merge)(void *arg, const uintptr_t *addr, const uint64_t *cookie, size_t n);
};

struct md__unstable {                      /* hash -> guest page, about a pass */
	uint64_t *hash;
	uintptr_t *addr;
	size_t cap;
	size_t reads;                      /* pages read since it was emptied */
};

/* Pages a batch resolves with the daemon at once: a wake-up gathers about
 * this many (GATHER in scanner.c), so a batch costs one round trip of each
 * kind. */
#define MD_SCAN_PEND 256
/* Candidates (pages another agent's visit found the twin of) a batch
 * merges at most, outside the rate. */
#define MD_SCAN_CANDIDATES 1024
/* A part of the tunables (share_batch, share_cpu): the whole of them. */
#define MD_SCAN_PART_ALL 65536u
#define MD_SCAN_COPY 64

struct md__scanner {
	struct md__engine *e;
	struct md__hints *hints;
	/* Tunables, changed live with relaxed atomics. */
	size_t batch;           /* pages per wake-up */
	unsigned sleep_ms;
	unsigned cpu_percent;   /* cap of one core, 0: none */
	/* The daemon's tunables are for all its agents together: this agent
	 * takes the part share_batch of batch pages and share_cpu of
	 * cpu_percent, in 65536ths (MD_SCAN_PART_ALL: all; 0 as all). */
	unsigned share_batch, share_cpu;
	int paused;
	int random_order;
	unsigned ratio;         /* of every 8 pages, how many come from hints */
	uint64_t interleave;    /* hints' visits and cursor's turns ever: which of 8
				 * the next one is, across batches */
	unsigned cursor_dry;    /* the cursor's visits this turn that read nothing */
	uintptr_t at;           /* the linear cursor: the next page to visit */
	size_t region;          /* the region it was in last (a guess) */
	size_t zero_ahead;      /* pages after it dropped as zero: stepped over */
	struct {                /* the random order's permutation of this pass */
		uint64_t total, done, gen;
		uint64_t key[4];        /* its Feistel rounds' keys */
		unsigned half;          /* bits of each half of the domain */
	} perm;
	uint64_t rng;
	struct md__hint cur;    /* the hint being worked through */
	uint64_t hint_tag;      /* md__read_tag of the page hint_next() gave, or 0 */
	uintptr_t sweep;        /* its huge page, swept for zero pages after it */
	uintptr_t swept[256];   /* huge pages swept, by address bits 21-28 */
	struct md__unstable un;
	/* A window of /proc/self/pagemap, refreshed every batch: a filter only
	 * (present anonymous pages are worth a visit), never proof. */
	uint64_t pm[256];
	uintptr_t pm_base;
	size_t pm_n;
	uintptr_t pm_fresh;     /* the next hinted page the window is fresh for */
	unsigned char *copy;    /* MD_SCAN_COPY pages read through the kernel (256 KiB) */
	uintptr_t copy_base;
	uint64_t copy_have;     /* bit k: page copy_base + k is in copy */
	uint64_t step_gen;      /* the engine's zap_gen before the window was
				 * read: it holds while that is still the same */
	uint64_t pend_gen;      /* step_gen when the first pending page was visited */
	/* With the daemon's pool: candidates of this batch, resolved together
	 * (one LOOKUP, one REF, one PUBLISH instead of one each per page). */
	uint64_t pend_addr[MD_SCAN_PEND];
	uint64_t pend_hash[MD_SCAN_PEND];
	uint64_t pend_tag[MD_SCAN_PEND];
	unsigned char pend_hinted[MD_SCAN_PEND];
	size_t npend;
	struct md__file_source files;	/* none: find is NULL */
	/* This batch's pages equal to file pages. A batch ends when these
	 * are full: with 64 and batches of 256, three in four of a tmpfs
	 * copy's pages went to the pool instead of onto the image. */
	uintptr_t fm_addr[MD_SCAN_PEND];
	uint64_t fm_cookie[MD_SCAN_PEND];
	size_t nfm;
	uint64_t epoch_visits[2], epoch_merges[2];	/* [0] scan, [1] hints */
	unsigned idle;          /* idle passes (or 1,024 reads) in a row */
	uint64_t pass_progress; /* progress() at the last pass end or burst */
	uint64_t pass_reads;    /* pages read (scanned + hinted) then */
	uint64_t hold_pass;     /* no slowing down before this pass (atomic): the
				 * agent's reap found merged pages written, which
				 * only the cursor's next visits merge again */
	struct md__scanner_stats st;
	pthread_t thread;
	int running, stop;
	uint32_t wakes;         /* wake-ups that end the thread's sleep (stop, poke): a futex */
	uint32_t wakes_seen;    /* the thread's: those it took (drain_wakes) */
	int parked;             /* 1 while the thread, paused, sleeps until woken (atomic) */
	int stepping;           /* 1 while the thread is in md__scanner_step (atomic) */
};

int md__scanner_init(struct md__scanner *s, struct md__engine *e, struct md__hints *h);
void md__scanner_free(struct md__scanner *s);
/* The bytes its tables take: the unstable table and the copy buffer. */
size_t md__scanner_meta_bytes(const struct md__scanner *s);
/* Visits up to npages pages; returns the merges made within the process
 * (those onto memdedupd's pool are made as the batch ends, and counted in
 * the stats only). Paused or stopped meanwhile, it ends after the visit
 * under way, merging nothing more. */
int md__scanner_step(struct md__scanner *s, size_t npages);
/* The sleeping loop on a thread of its own: step(batch), sleep, again. */
int md__scanner_start(struct md__scanner *s);
void md__scanner_stop(struct md__scanner *s);
/* After paused is set: waits up to ms for the thread to be out of its
 * step, after which it merges nothing until resumed. 0, or -ETIMEDOUT. */
int md__scanner_wait_step(struct md__scanner *s, unsigned ms);
/* New hints: a scanner slowed down on a quiet host (idle) takes up the set
 * rate again, within one sleep at that rate; and after paused is cleared,
 * a resume: the paused thread wakes at once. Any thread, lock-free. */
void md__scanner_poke(struct md__scanner *s);
/* Merged pages were found written (a reap): the set rate again, held
 * until the cursor has been round once more, as it merges them again only
 * when it comes by. Any thread, lock-free. */
void md__scanner_hold(struct md__scanner *s);
/* This agent's pages per wake-up: the part (in 65536ths, 0 as all) of
 * batch; one that rounds up to whole pages lengthens *sleep_ns to match. */
size_t md__scanner_share(size_t batch, unsigned part, uint64_t *sleep_ns);
/* A wake-up's pages for a batch (a share) that small, gathered over up to
 * 8 sleeps (*sleep_ns lengthened to match); as it is with no sleep. */
size_t md__scanner_gather(size_t batch, uint64_t *sleep_ns);
/* The sleep after a batch that took wall_ns, charged cpu_ns of CPU (its
 * own and the sleep's before it), so that this agent uses at most its
 * part (in 65536ths, 0 as all) of cap percent of a core (0: no cap). */
uint64_t md__scanner_capped(uint64_t cpu_ns, uint64_t wall_ns, uint64_t sleep_ns, unsigned cap, unsigned part);
#endif
