/*
 * agent_internal.h - the agent's state, shared by its files.
 *
 * Lock order: agent->lock protects the region table, the per-page owner
 * arrays and the image table. It is held while a read is mapped (so a lease
 * break cannot miss a mapping made concurrently) but never across a copying
 * pread, so I/O threads only wait for one another's mmap(2) calls, which the
 * kernel serialises on the mm anyway.
 *
 * With the content scanner, agent->lock comes before the engine's locks
 * (regions_lock, then the merge lock): the read path maps image pages through
 * md__engine_exclude() while holding agent->lock; the scanner takes
 * agent->lock (the image-page index, agent/imagepages.c) only outside the
 * engine's locks. md__agent_unmap holds all three across the VMM's munmap.
 *
 * unmerge_lock (one unmerge at a time, scan.c) comes before all of them, and
 * io_unseen_lock (md_agent_io_unseen's work, scan.c) before agent->lock;
 * writes_lock (the VMM's writes in flight, writes.c) after agent->lock, and
 * is held around nothing else.
 */
#ifndef MD_AGENT_INTERNAL_H
#define MD_AGENT_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "hints.h"
#include "memdedup.h"
#include "merge.h"
#include "rangeset.h"
#include "scanner.h"
#include "stats_file.h"
#include "sys.h"

#define MD_PAGE ((uintptr_t)MD_PAGE_SIZE)

#include <sys/mman.h>
#ifndef MADV_GUARD_INSTALL
/* Linux 6.13's guard regions (private file mappings since 6.15), which
 * older headers lack: the numbers are the same on every architecture. */
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif

/* Owner records, allocated once per registered range: the parts a split
 * leaves share them (refs), so a split allocates nothing. */
struct md__owners {
	size_t refs;
	uint32_t id[];
};

/* A registered range of guest RAM. owner[i] is the id of the image page i is
 * mapped from (0: not mapped from an image). */
struct md__region {
	uintptr_t start, end;
	unsigned advice;
	struct md__rangeset advice_pending; /* mapped by reads, not advised yet */
	uint32_t *owner;                    /* into owners->id */
	struct md__owners *owners;
};

/* BREAKING: a writer waits for the lease while the image's pages are made
 * private (tried again every 50 ms while memory is short, until the kernel
 * would let the writer in anyway); no read maps the image and no lease is
 * asked for meanwhile. */
enum md__lease_state { MD_LEASE_NONE, MD_LEASE_HELD, MD_LEASE_BREAKING };

/* An image file seen as the source of reads into guest RAM. */
struct md__image {
	uint32_t id;
	dev_t dev;
	ino_t ino;
	int fd;                    /* the agent's own O_RDONLY description */
	int shmem;                 /* on tmpfs: its mappings take the file's NUMA policy */
	enum md__lease_state lease;
	off_t size;                /* valid while the lease is held */
	const unsigned char *view; /* read-only mapping of all of it, made on
	                            * first use while the lease is held */
	time_t used;               /* when a read last shared from it (monotonic s) */
	struct timespec retry_at;  /* next lease attempt when not held; while
	                            * breaking, when the writer gets in anyway */
	uint64_t idle_writes;      /* once let go when idle: 1 + the writes begun by
	                            * then (md__writes_mark), taken when used was idle_used */
	time_t idle_used;
	uint64_t writes_before;    /* while breaking, once its pages are private:
	                            * writes from guest RAM begun before then
	                            * (writes.c) must end before the writer gets
	                            * in; 0 until then */
	uintptr_t private_at;      /* while breaking, where the next part of the
	                            * pages made private begins (regions.c) */
	int private_err;           /* the first failure of this pass of parts */
	time_t break_began;        /* while breaking, since when (monotonic s) */
	int lost;                  /* while breaking, the kernel took the lease back
	                            * (lease-break-time ran out): the writer is in */
	uint64_t unchecked;        /* pages made private since a look found it held */
	uint64_t late;             /* pages made private once it may have been lost */
};

/* A write from the VMM's memory in flight (writes.c), on its caller's stack. */
struct md__write {
	uint64_t seq;
	struct md__write *prev, *next;
};

/* The ranges the agent may have a record of, for calls that must not wait
 * for its lock (ours.c): written under agent->lock, read lock-free. */
#define MD_OURS_MAX 256
struct md__ours {
	unsigned seq;              /* odd while being written */
	unsigned epoch;            /* which count a plain call joins (bit 0) */
	unsigned plain[2];         /* plain calls under way, by epoch */
	unsigned n;
	uintptr_t start[MD_OURS_MAX], end[MD_OURS_MAX];	/* sorted, disjoint */
	/* The writer's own (agent->lock): what the last full look saw. */
	uint64_t sig;
	struct timespec looked;
};

/* The memory limits of the agent's cgroup and its ancestors, kept from its
 * start for a VMM that chroots where /proc and /sys are not (memroom.c):
 * the nearest MD_MEMROOM_LEVELS levels with a limit (while /proc and /sys
 * are there, every level is read anew). */
#define MD_MEMROOM_LEVELS 8
#define MD_MEMROOM_FILES 5
struct md__memroom {
	int fd[MD_MEMROOM_LEVELS][MD_MEMROOM_FILES];	/* limit, usage, memory.stat, v2's memory.high
							 * or v1's memsw limit, v1's memsw usage
							 * (-1: none) */
	dev_t dev[MD_MEMROOM_LEVELS][MD_MEMROOM_FILES];	/* their files, to tell them from one the */
	ino_t ino[MD_MEMROOM_LEVELS][MD_MEMROOM_FILES];	/* VMM put at a number (md__same_file) */
	unsigned n;                     /* levels with a limit */
	unsigned seen;                  /* levels whose limit file opened at all */
	const char *inactive;           /* memory.stat's key of inactive page cache */
};
int md__memroom_open(struct md__memroom *m);	/* 0, or -ENOENT without /proc */
void md__memroom_close(struct md__memroom *m);
/* What copies may take: the host's available memory, or less if a cgroup
 * limit leaves less (the cgroup as /proc says now, else as kept). */
uint64_t md__memroom_available(const struct md__memroom *kept);
/* Tests only: where memroom.c reads self/cgroup, self/mountinfo and
 * meminfo ("/proc"). */
extern const char *md__memroom_proc;

struct md_agent {
	pthread_mutex_t lock;
	unsigned lock_wanted;      /* threads in md__agent_enter, not in yet */
	struct md__ours ours;         /* see ours.c */
	struct md__region *regions;   /* sorted by start, disjoint */
	size_t nregions, regions_cap;
	/* Pages the owner records name an image for (a lease break makes them
	 * private), and how many were ever given one (md__owners_set). */
	uint64_t owned, owner_sets;
	/* The last complete walk of them (accounting.c): those the guest had
	 * not written, and owner_sets at its start. Pages a break must copy
	 * are at most those plus owner_sets since (md__break_room). */
	int walked;
	uint64_t walk_unwritten, walk_sets;
	struct md__image *images;
	size_t nimages, images_cap;
	/* When a walk for images to let go, to keep our descriptors under a
	 * share of the VMM's RLIMIT_NOFILE, last found none (monotonic s;
	 * images.c, image_fds_room). */
	time_t image_fds_full_at;
	/* Descriptions of our own of the files the VMM held open read-only
	 * when it chrooted (md__images_before_chroot): with /proc gone, the
	 * first image of such a file to want one takes it (fd -1 then). */
	struct md__spare { dev_t dev; ino_t ino; int fd, vmm_fd; } *spares;
	size_t nspares;
	/* Filesystems (st_dev) found lately to have leases that do not see
	 * every writer, and until when that verdict holds: without it, every
	 * read of such a file asked fstatfs again (a round trip to the server
	 * on NFS, to the daemon on FUSE). And the files of images, whose
	 * filesystem passed (it stays mounted while we hold them): a read of
	 * one needs no fstatfs. Under probe_lock alone (md__image_probe runs
	 * without agent->lock; image_add takes both). */
	pthread_mutex_t probe_lock;
	struct { dev_t dev; time_t until; } no_lease_fs[8];
	struct md__probed { dev_t dev; ino_t ino; int shmem; } *probed;
	size_t nprobed, probed_cap;

	/* Where pages may be private copies inside file mappings (an image's,
	 * the pool's) that no record tracks any more: made private by a lease
	 * break, or left guest RAM while still mapped. A discard there must
	 * replace them by anonymous memory, or it would show the file's page
	 * again (md__discard_forgotten). Covers at least those places. */
	struct md__rangeset forgotten;
	/* Guest RAM given up to the VMM's own userfaultfd (md_agent_userfault),
	 * with the advice it had: not taken back while that registration
	 * lasts, as a mapping of ours there would drop it (a snapshot would
	 * miss writes); merged again once the VMM unregisters it
	 * (md_agent_userfault_end). */
	struct md__handed {
		uintptr_t start, end;
		unsigned advice;
		unsigned tag;           /* which handover (md__agent_userfault_undo) */
		int opted_out;          /* advised unmergeable since: not taken back */
	} *handed;
	size_t nhanded;
	unsigned handovers;

	int kernel_ksm;
	/* Kernel KSM over the whole process is off for the scanner's sake and
	 * wanted on (as it was at start, or as the VMM asked since): back on
	 * when the scanner goes (md__scan_free). */
	int merge_any_wanted;
	int io_unseen;          /* md_agent_io_unseen was called (set under lock) */
	int io_unseen_done;     /* and its first call had done all it does (atomic) */
	uint64_t io_unseen_left; /* pages it left shared, memory short (1 if a copy failed;
	                          * atomic): in merge_fallbacks */
	int future_locked;      /* mlockall(MCL_FUTURE) in force: nothing more registered */
	int fork_copies_ram;    /* a region is not MADV_DONTFORK: a fork() copies it (set under
	                         * lock, read without it before a fork: regions.c) */
	unsigned flags;
	uint64_t max_vmas;
	struct md__vmas vmas;         /* the process's mappings: the last count + those made
	                               * since, by us and by the engine (sys.h) */
	unsigned share_min_pages;     /* fewer whole pages per read: copied */
	unsigned image_idle_s;        /* an image nothing maps is let go after this */
	time_t images_walked;         /* md__images_release_idle's last walk (monotonic s) */
	unsigned leave_waited;        /* md__scan_leave_old_pool's seconds waited, short of memory */

	uint64_t *ctr;                /* MD_CTR_COUNT counters, maybe in the stats file */
	uint64_t local_ctr[MD_CTR_COUNT];
	uint64_t reported[MD_CTR_COUNT]; /* as last sent to memdedupd */
	struct md__stats_file *stats_map;
	int stats_fd;                 /* holds the file's lock while stats_map is there */
	dev_t stats_dev;              /* its file (md__same_file) */
	ino_t stats_ino;
	char stats_path[PATH_MAX];

	/* The content scanner; engine is NULL when it is off or failed. */
	struct md__engine *engine;
	struct md__hints hints;
	struct md__scanner scanner;
	struct md__imagepages *imgpages;	/* NULL: not scanning, or no read-time sharing */
	int scanner_started;
	unsigned scan_explicit;	/* MD_SET_*: set by our options or md_agent_set (atomic); the
				 * daemon's defaults do not override them */
	pthread_mutex_t unmerge_lock;	/* one unmerge at a time (scan.c); taken before any other */
	pthread_mutex_t io_unseen_lock;	/* md_agent_io_unseen's work, once (scan.c); before agent->lock */
	int paused_here;	/* md_agent_pause's (atomic): a welcome does not resume it */
	struct md__memroom memroom;	/* the cgroup's limits, kept from the start (memroom.c) */
	pthread_mutex_t pause_lock;	/* pause_set's, and a refused unmerge's restore (scan.c) */
	pthread_mutex_t tunables_lock;	/* a tunable's value with its scan_explicit bit: the VMM's
					 * own (md_agent_set) and memdedupd's for all (scan.c) */
	unsigned pause_gen;	/* pause_set's calls (pause_lock): a refused unmerge restores the
				 * pause it found only if no one set it meanwhile */
	int welcome_due;	/* paused until the agent thread's first HELLO is answered or fails */
	int daemon_paused;	/* memdedupd's PAUSE not followed by its RESUME (agent thread): a
				 * new memdedupd knows only root's pause of all, and its WELCOME
				 * would resume one by pid or a user's own (scan.c) */
	uint64_t daemon_paused_gen;	/* the pool generation of the memdedupd that paused it: only
					 * its WELCOME may say it was resumed meanwhile */
	uid_t joined_uid;	/* the effective uid memdedupd saw at the last connect (agent thread) */
	int user_moving, user_was_paused;	/* user_changed's state (agent thread) */
	int unmerged;		/* paused by an unmerge, until resumed (1; 2: one memdedupd asked, which
				 * records it and says in its WELCOME when resumed); a new daemon's
				 * WELCOME does not resume it */
	int unmerging;		/* an unmerge runs (pause_lock): no WELCOME resumes the scanner
				 * between its parts */
	int unmerge_wanted;	/* the pause such a WELCOME asked for (pause_lock), -1 none: a
				 * refused unmerge applies it if nothing set the pause since */
	unsigned unmerge_wanted_gen;	/* pause_gen as that WELCOME left it */
	struct timespec next_connect;	/* to memdedupd, while disconnected */
	struct timespec rate_at;	/* the merge rate's last update, and the reap's */
	struct timespec break_at;
	uint64_t rate_merged, rate_broken;
	/* md__scan_account's last walk of the pages' state, and when. */
	uint64_t walk_sharing, walk_fill, walk_unshared, walk_zero, walk_activity;
	size_t walk_meta;	/* the engine's metadata bytes */
	unsigned walk_age;

	int lease_signal;
	long lease_break_s;	/* /proc/sys/fs/lease-break-time at the start,
				 * for when /proc is gone (a chroot); -1 if it
				 * could not be read then (0 is the kernel's "never") */
	long lease_break_now;	/* md__lease_break_s, as the agent's thread read it
				 * last (once a second; atomic) */
	pid_t thread_tid;
	pthread_t thread;
	int stop;
	int breaking;	/* images MD_LEASE_BREAKING (under lock; read racily) */
	/* While a root VMM takes another uid (md__images_uid_change until its
	 * call returned): no lease on a file that uid does not own, which
	 * it could not give back. (uid_t)-1: none under way. */
	uid_t lease_uid;

	/* Writes in flight, oldest first (writes.c). writes_lock is taken
	 * alone, or inside agent->lock; never the other way round. */
	pthread_mutex_t writes_lock;
	struct md__write *writes_oldest, *writes_newest;
	uint64_t writes_seq;	/* the last write's number (0: none yet) */
};

static inline void md__count(struct md_agent *a, enum md__ctr c, uint64_t n)
{
	__atomic_fetch_add(&a->ctr[c], n, __ATOMIC_RELAXED);
}
static inline void md__set(struct md_agent *a, enum md__ctr c, uint64_t v)
{
	__atomic_store_n(&a->ctr[c], v, __ATOMIC_RELAXED);
}
void md__fallback(struct md_agent *a, enum md_fallback why, uint64_t pages);
/* Room for one more mapping over guest RAM (and the split it may cause)
 * within the VMA budget, counting those made since the last VMA count,
 * the engine's merges too. The estimate only rises (a merge's mappings
 * counted, not those a write or a discard took back): counted again
 * before a refusal, at most once a second, as the engine's budget is. */
static inline int md__vma_room(struct md_agent *a)
{
	if (md__vmas_estimate(&a->vmas) + 2 <= a->max_vmas)
		return 1;
	if (!md__vmas_count_due(&a->vmas))
		return 0;
	uint64_t counted = md__vmas_count(&a->vmas);
	if (counted)
		md__set(a, MD_CTR_VMAS, counted);
	return counted && md__vmas_estimate(&a->vmas) + 2 <= a->max_vmas;
}

/* regions.c (all under agent->lock) */
struct md__region *md__region_find(struct md_agent *a, uintptr_t addr, size_t len);
/* Names image id (0: none) as what the n pages of r from addr are mapped
 * from, counted in a->owned and a->owner_sets. */
void md__owners_set(struct md_agent *a, struct md__region *r, uintptr_t addr, size_t n, uint32_t id);
int md__regions_add(struct md_agent *a, uintptr_t start, uintptr_t end, unsigned advice);
int md__regions_remove(struct md_agent *a, uintptr_t start, uintptr_t end);
/* Tests only: the next this many growths of the region records fail
 * (ENOMEM). 0 otherwise. */
extern int md__regions_fail_reserve;
/* Tests only: the next md__privatize fails with this (a negative errno)
 * and copies nothing. 0 otherwise. */
extern int md__privatize_fail;
/* Tests only: called by an unmerge between two parts of its copies, its
 * locks let go (the agent's, the regions', the engine's), and between two
 * parts of a lease break's or an unmerge's image pages made private (the
 * agent's lock let go). */
extern void (*md__part_hook)(struct md_agent *a);
/* Tests only: called when a read whose copies around its mapped pages
 * failed went whole, before it forgets the pages it overwrote (where
 * another read could map them again). */
extern void (*md__overwritten_hook)(struct md_agent *a);
/* Tests only: the copies around a read's mapped pages fail with this errno
 * (as an I/O error would), and the read goes whole. 0 otherwise. */
extern int md__edges_fail;
/* Tests only: the copies of pool pages (an unmerge's runs) fail with this
 * errno from the one after the first md__copy_fail_after on, copying
 * nothing. 0 otherwise. */
extern int md__copy_fail;
extern unsigned md__copy_fail_after;
/* Tests only: md_agent_io_unseen's first call sleeps this long (us) before
 * it is done, and then counts md__io_unseen_slept. */
extern unsigned md__io_unseen_delay_us, md__io_unseen_slept;
/* Tests only: how many times copies of pool pages (unseen I/O's, an
 * unmerge's) let the agent's lock go between parts. */
extern unsigned md__pool_copies_let_in;
/* Tests only: called with our descriptor of an image just before its lease
 * is taken (where the VMM's close and open could come). */
extern void (*md__image_lease_hook)(int fd);
/* Tests only: called with our descriptor of an image just before it is
 * mapped into guest RAM, its lease taken (where the VMM's close, or dup2
 * over it, could come). */
extern void (*md__image_map_hook)(int fd);
/* Tests only: called once a read's image pages for the buffer [dst,
 * dst+len) are mapped (aside), before the lease is looked at again. */
extern void (*md__image_mapped_hook)(void *dst, size_t len);
/* Tests only: called with our descriptor of an image just before
 * md__image_seek looks for data or holes through it (where the VMM's close,
 * or dup2 over it, could come). */
extern void (*md__image_seek_hook)(int fd);
/* Advice given [start, end) (MD_ADV_* bits, MD_ADV_UNDO): see
 * md__advice_after; 1 if some taken back stays on a region covered in part. */
int md__regions_advise(struct md_agent *a, uintptr_t start, uintptr_t end, unsigned advice);
/* 1 if a fork() copies some of the guest RAM in [start, end) (agent->lock
 * held): a region there is not MADV_DONTFORK, or was in part advised
 * MADV_DOFORK since. */
int md__regions_forked(struct md_agent *a, uintptr_t start, uintptr_t end);
/* Makes every page in [start,end) mapped from image id (0: from any image)
 * private, so the file can change without the guest seeing it. */
int md__privatize(struct md_agent *a, uintptr_t start, uintptr_t end, uint32_t id);
/* The same from *at on, up to budget pages (a part: md__privatize_part_pages
 * for a lease break's or an unmerge's, which let the agent's lock go
 * between parts); *at moves past what was looked at, to end when done. */
int md__privatize_from(struct md_agent *a, uintptr_t *at, uintptr_t end, uint32_t id, size_t budget);
extern size_t md__privatize_part_pages;
/* Pages mapped from an image (shared at read time or merged onto one) that
 * the guest has not written: the copies making them private needs. */
uint64_t md__owned_unwritten_pages(const struct md_agent *a);
/* Replaces pages mapped from an image in [start,end) by anonymous zero pages. */
int md__discard(struct md_agent *a, uintptr_t start, uintptr_t end);
/* Replaces the parts of [start,end) in a->forgotten that lie in private
 * file mappings, outside the engine's regions (its discard replaced what
 * it tracks), by anonymous zero pages with the same protection and advice. */
int md__discard_forgotten(struct md_agent *a, uintptr_t start, uintptr_t end);
/* Re-applies the region's advice to a fresh mapping inside it. */
void md__apply_advice(struct md_agent *a, const struct md__region *r, uintptr_t addr, size_t len);
/* Gives the advice to every mapping made by reads since the last call: one
 * madvise per region, off the guest's I/O path. */
void md__regions_flush_advice(struct md_agent *a);
/* fork()'s prepare handler. The advice the VMM gave (MADV_DONTFORK)
 * reaches the mappings reads made since the last flush before the child
 * copies them. And guest RAM the child does copy (not MADV_DONTFORK) has
 * its pages shared from an image or the pool made private copies of ours
 * first: the child, which runs plain, holds no reference of its own, and
 * would see them change (a pool slot freed and punched once we let it go
 * or exit, an image's page after a lease break). The locks that keep reads
 * and merges from mapping them again stay held until md__regions_after_fork
 * (the agent's, the engine's merge lock): the returned MD_FORK_* bits. Each
 * waited for a second at most; a fork whose child gets shared pages all
 * the same (those locks busy, memory short for the copies) is counted
 * (fork_shared) and said once in the log. */
#define MD_FORK_AGENT_LOCK 1
#define MD_FORK_ENGINE_LOCK 2
int md__regions_before_fork(struct md_agent *a);
/* The parent's (child 0) or the child's handler: lets go of what held
 * says (in the child only the count of md__in_agent: its agent is gone). */
void md__regions_after_fork(struct md_agent *a, int held, int child);
/* Whether copies of pages may take that much memory now: pages and 64 MiB
 * to spare within what the host and the agent's cgroup leave. */
int md__room_for_copies(struct md_agent *a, uint64_t pages);
/* The advice still owed to read-time mappings in [start, end), given now:
 * for memory that stays mapped as its records go (agent->lock held). */
void md__regions_flush_advice_in(struct md_agent *a, uintptr_t start, uintptr_t end);
void md__regions_free(struct md_agent *a);

/* images.c */
/* What the VMM's descriptor of a read is, looked at before agent->lock is
 * taken: fstat and fstatfs may wait on a network filesystem's server (on a
 * hard mount, for good), and the lock must not wait with them (every read
 * and unmap of the VMM, and the lease breaks, take it). */
struct md__fd_probe {
	int why;	/* -1: a file whose reads may be shared; else the md_fallback */
	int shmem;	/* on tmpfs (why -1) */
	int direct;	/* open with O_DIRECT (why -1) */
	struct stat st;	/* why -1 */
};
void md__image_probe(struct md_agent *a, int fd, struct md__fd_probe *p);
/* (under agent->lock) */
/* Finds or creates the image behind fd, as probed, and makes sure its lease
 * is held. Returns the image, or NULL with *why set. */
struct md__image *md__image_lease(struct md_agent *a, int fd, const struct md__fd_probe *p,
				  enum md_fallback *why);
/* 1 if img's lease is held by our own descriptor still; else 0, and if it
 * was held, its pages are made private and the lease given up, as on a
 * break (agent->lock held). */
int md__image_held(struct md_agent *a, struct md__image *img);
/* md__image_held without its side effect: 1 if img's lease is held by our
 * own descriptor, which stands at img->fd (nothing else changes: safe
 * under the engine's lock). */
int md__image_fixed(const struct md__image *img);
/* The image the agent has met with file (dev, ino), or NULL (lock held):
 * the table keeps every one. dev MD_ANY_DEV matches any device: a
 * mapping shows its superblock's, which on btrfs is not the subvolume's
 * that stat gives. */
#define MD_ANY_DEV ((dev_t)-1)
struct md__image *md__image_find(const struct md_agent *a, dev_t dev, ino_t ino);
/* The image of that file (fstat of its descriptor) if it is known and its
 * lease held, else NULL (never takes a lease). */
struct stat;
struct md__image *md__image_leased(struct md_agent *a, const struct stat *st);
/* The kernel asked for the lease on fd back (fd < 0: any lease F_GETLEASE
 * shows being broken): privatize, then release. */
void md__image_lease_broken(struct md_agent *a, int fd);
/* From the agent's thread, once a second: lets go of images no page of
 * guest RAM is mapped from, unused for image_idle_s (md_agent_options). */
void md__images_release_idle(struct md_agent *a);
/* The VMM (root) is about to take fsuid as its file-system uid: leases on
 * images that uid does not own are given back first (their pages made
 * private), while the kernel still lets us. */
void md__images_uid_change(struct md_agent *a, uid_t fsuid);
/* The call md__images_uid_change came before has returned. */
void md__images_uid_changed(struct md_agent *a);
/* The VMM is about to chroot (QEMU's -chroot), where /proc may be gone:
 * a description of our own is opened of every regular file it holds open
 * read-only, for images read after it to be leased. */
void md__images_before_chroot(struct md_agent *a);
/* The chroot failed, or /proc is there in the new root: those go. */
void md__images_spares_drop(struct md_agent *a);
/* Tries again to make private the pages of images whose break found memory
 * short; gives their leases back once done, or when time is up. Returns
 * how many still wait (agent->breaking). */
int md__image_breaks_retry(struct md_agent *a);
/* lseek(img->fd, off, whence) for SEEK_DATA or SEEK_HOLE (a tmpfs image's
 * holes), with the description's position put back after: see images.c. */
off_t md__image_seek(const struct md__image *img, off_t off, int whence);
/* A read-only view of all of img while its lease is held (mapped on first
 * use; gone with the lease), or NULL. */
const unsigned char *md__image_view(struct md_agent *a, struct md__image *img);
void md__images_free(struct md_agent *a);
/* The kernel's lease-break-time in seconds: as read now, or at the agent's
 * start where /proc is gone; 45, its default, if never read. 0 (or less):
 * leases never time out. */
long md__lease_break_s(const struct md_agent *a);
/* The same as read now (a negative setting as 0), or -1. */
long md__lease_break_s_now(void);
/* Whether pages more mapped from images (a read's, a merge's) leave few
 * enough that a lease break can make them all private well within
 * lease-break-time (a->lease_break_now), at md__break_pages_per_s (tests
 * lower it); 0 is said once in the log. (agent->lock held) */
int md__break_room(struct md_agent *a, uint64_t pages);
extern unsigned long md__break_pages_per_s;

/* writes.c */
/* The number of the last write begun: those up to it are the ones whose
 * pages may be the ones before a change of mappings made now. */
uint64_t md__writes_mark(struct md_agent *a);
/* 1 once no write numbered up to mark is in flight. */
int md__writes_ended(struct md_agent *a, uint64_t mark);

/* readshare.c */
struct md__read_plan {
	size_t total;      /* what pread would return: min(len, size - off) */
	size_t head;       /* bytes copied before the mapped pages */
	size_t map_len;    /* bytes mapped, whole pages */
	size_t tail;       /* bytes copied after them */
	int fallback;      /* -1, or the md_fallback why nothing is mapped */
};
void md__plan_read(uintptr_t buf, size_t len, uint64_t off, uint64_t file_size,
		   struct md__read_plan *p);
/* 0 if the kernel takes the buffers iov[0..cnt) whole, as a read's or
 * process_madvise's (access_ok), else -EFAULT. */
struct iovec;
int md__kernel_takes(const struct iovec *iov, int cnt);

/* scan.c: the agent's side of the content scanner */
#define MD_SET_PAGES (1u << 0)
#define MD_SET_SLEEP (1u << 1)
#define MD_SET_CPU (1u << 2)
#define MD_SET_ORDER (1u << 3)
#define MD_SET_HINTS (1u << 4)
void md__scan_init(struct md_agent *a, const md_agent_options *o);
int md__scan_register(struct md_agent *a, uintptr_t start, size_t len, unsigned advice);
/* Refreshes the scanner's counters; reap: also finds the merged pages
 * written since (a walk of /proc/self/pagemap), and returns how many. */
int md__scan_account(struct md_agent *a, int reap);
/* From the agent thread, once a second: moves pages still mapping an old
 * pool (memdedupd restarted) off it, a bounded number, while the scanner
 * runs and memory allows (md__engine_leave_file). */
void md__scan_leave_old_pool(struct md_agent *a);
/* A number that changes whenever reads or merges happen. */
uint64_t md__scan_activity(struct md_agent *a);
/* Does a CONTROL memdedupd forwarded (the agent's thread), and answers it. */
struct md__msg_control;
/* A WELCOME's pause (paused or not), kept where something else keeps it. */
int md__scan_welcome_pause(struct md_agent *a, int paused);
void md__scan_apply_control(struct md_agent *a, const struct md__msg_control *ctl);
/* From the agent thread, often: reconnects to memdedupd, applies its
 * CONTROL messages; report: also send our counters. */
void md__scan_daemon(struct md_agent *a, int report);
/* Whether a counter that status readers wait on moved since the last
 * report (not the clocks, nor what an idle scan moves every pass). */
int md__counters_moved(const struct md_agent *a);
void md__scan_free(struct md_agent *a);
/* Before a fork (md__regions_before_fork, agent->lock held): takes the
 * merge lock, waiting until `until` at most (CLOCK_REALTIME), and copies
 * every page of guest RAM that is not MADV_DONTFORK mapped from a pool
 * slot into a private page of ours, as a guest write would (the reap then
 * gives the slots back). Returns 1 if the lock is held (md__scan_fork_done
 * lets it go after the fork), 0 if not (no scanner, or it stayed taken);
 * *why says why pages stay shared (the lock, memory short, a copy that
 * failed), left NULL if none does. */
int md__scan_fork_prepare(struct md_agent *a, const struct timespec *until, const char **why);
void md__scan_fork_done(struct md_agent *a);

/* imagepages.c: guest pages equal to image pages, merged onto the image */
struct md__imagepages;
int md__imagepages_new(struct md__imagepages **out);
void md__imagepages_free(struct md__imagepages *ip);
/* The read path mapped n pages of image img from page pgoff (agent->lock);
 * or, copied, copied them there (a read too small to map). */
void md__imagepages_queue(struct md_agent *a, uint32_t img, uint64_t pgoff, size_t n, uintptr_t addr,
			  int copied);
/* Offers the image pages to the scanner (before it starts). */
void md__imagepages_attach(struct md_agent *a);
/* Memory the index takes. */
uint64_t md__imagepages_bytes(const struct md__imagepages *ip);

/* agent.c */
struct md__resident;
/* Whether a quiet process's pages moved enough since a walk (then, since
 * seconds ago) for another walk to find something: 64 pages, or any after
 * 5 minutes; not known (statm unreadable): yes. */
int md__walk_worth(int known, const struct md__resident *now, const struct md__resident *then,
		   unsigned since);

/* agent.c: the VMM's munmap, MAP_FIXED mmap or mremap over [addr,
 * addr+len), done by op(arg) (0 or -errno) with the scanner kept out; the
 * range is forgotten if op succeeded, else as md__engine_unmap says
 * (keep_mapped: op was a munmap). Returns op's result. */
int md__agent_unmap(md_agent *a, void *addr, size_t len, int (*op)(void *arg), void *arg, int keep_mapped);
/* The VMM is about to lock [start, end) in memory (mlock, mlock2), or all
 * its memory (mlockall: all = 1): guest RAM there is given up first, as
 * md_agent_unregister does. A locked private mapping is filled by write
 * faults when mapped or locked, so what is shared there would become
 * private copies behind the engine's back. 0, or -errno when shared pages
 * cannot be made private (memory short): the VMM's call must then fail. */
int md__agent_lock(md_agent *a, uintptr_t start, uintptr_t end, int all);
/* The VMM's mbind (libnuma's, or syscall(2)), through call (the C
 * library's syscall): followed for the mappings the agent and the engine
 * make (policies.h), and kept off the mappings of shared memory that are
 * the agent's (the pool, images on tmpfs), whose policy is their file's,
 * for every process. The call's result, errno as it left it. */
long md__agent_mbind(md_agent *a, long (*call)(long, ...), void *addr, unsigned long len, int mode,
		     const unsigned long *nodes, unsigned long maxnode, unsigned flags);
/* The VMM's madvise(MADV_COLLAPSE) of [start, end): passed on for the
 * parts the pool or an image does not map there, none of which a merge
 * maps meanwhile. A collapse of those would make their file's pages huge
 * (the pool's shmem, for every process of the domain), whatever the host's
 * shmem_enabled says. 0, or the first part's -errno. */
int md__agent_collapse(md_agent *a, uintptr_t start, uintptr_t end);
/* The VMM asks of [start, end) what only anonymous memory takes
 * (MADV_WIPEONFORK, whose child must read zeroes; mseal, after which a
 * discard of a private file mapping fails; and after MADV_GUARD_INSTALL,
 * over which a read shared at read time would map its image): its merged
 * pages are moved into anonymous memory with their content while the
 * engine holds them (md__engine_unregister_anon) as the range is given up
 * for good, as by md__agent_lock (a merge there would map the pool
 * again). why says what the VMM does, for the log. 0, or -errno (some
 * pages stay in file mappings: the VMM's call is made all the same, as
 * without us). */
int md__agent_give_up_anon(md_agent *a, uintptr_t start, uintptr_t end, const char *why);
/* Moves the copies RAM given up before left in the pool's mappings in
 * [start, end) (a->forgotten) into anonymous memory with their content
 * (md__engine_move_copies), for md__agent_give_up_anon; agent->lock held.
 * 0 or the first -errno (those left stay in their file mappings). */
int md__move_forgotten(struct md_agent *a, uintptr_t start, uintptr_t end);
/* Whether mlockall(MCL_FUTURE) holds now (set after the VMM's call
 * succeeded): nothing is registered while it does. */
void md__agent_lock_future(md_agent *a, int future);
/* The VMM gives [start, end) a protection other than read-write (mprotect,
 * pkey_mprotect): the mappings the engine and the agent make over guest
 * RAM are read-write, so guest RAM there is given up first, as by
 * md__agent_lock. 0, or -errno: the VMM's call must then fail. */
int md__agent_protect(md_agent *a, uintptr_t start, uintptr_t end);
/* The registered parts of [start, end), clipped to it, with their
 * advice (MD_ADV_*), before the VMM's mremap unregisters them: what a
 * failed mremap registers again (md_agent_register). *v is malloc'd
 * (NULL if none). 0 or -ENOMEM. */
struct md__registered {
	uintptr_t lo, hi;
	unsigned advice;
};
int md__agent_registered(md_agent *a, uintptr_t start, uintptr_t end, struct md__registered **v, size_t *n);
/* agent.c: the VMM's mremap moved (or resized) [old, old+old_len) to
 * [now, now+now_len): forgotten copies move with their mappings. */
void md__agent_moved(md_agent *a, void *old, size_t old_len, void *now, size_t now_len, int old_stays);
/* The VMM's registration failed (err: its errno) after md_agent_userfault
 * gave memory up on this thread: what that call gave up (only that) is
 * registered again. */
void md__agent_userfault_undo(md_agent *a, int err);

/* accounting.c */
/* Refreshes the shared-now and break counters (a walk of /proc/self/pagemap
 * over the shared pages) and, if count_vmas, the VMA count (a read of
 * /proc/self/maps: milliseconds with thousands of mappings). */
void md__account(struct md_agent *a, int count_vmas);

/* Linux 6.4's switch for kernel KSM over a whole process, newer than
 * Debian 12's headers. */
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif

/* unseen_io.c */
/* 1 if the entries a liburing submit call on ring (a struct io_uring) is
 * about to hand the kernel include one that may write user memory. */
int md__uring_submits_writes(const void *ring);
/* Calls fn(arg, addr, len) for each MADVISE entry among those: the page
 * range each discards (MADV_DONTNEED, _LOCKED, FREE, GUARD_INSTALL). */
void md__uring_discards(const void *ring, void (*fn)(void *arg, void *addr, size_t len, int advice), void *arg);
/* What madvise(advice) over [addr, addr+len) does before the kernel's call
 * (md_agent_madvise_discard), without that call: an io_uring MADVISE entry
 * makes it. -errno where the kernel would refuse it (unknown advice, locked
 * copies), nothing replaced. */
int md__agent_discard_for(md_agent *a, void *addr, size_t len, int advice);
/* 1 unless an io_uring_register opcode is known to neither pin user memory
 * (buffers), let the kernel write it outside an entry (zero-copy receive),
 * nor move the rings. */
int md__uring_register_pins(unsigned opcode);
/* 1 if an ioctl request maps memory for a device's DMA (VFIO, iommufd) or
 * sets up a device that will (vhost-vdpa). */
int md__ioctl_maps_dma(unsigned long request);
/* The data buffers of an SG_IO request at arg (v3's sg_io_hdr, 'S'; v4's
 * sg_io_v4, 'Q'), as ranges into addr/len, at most max: their count, 0 for
 * none (no data, a header the kernel cannot read, an interface it
 * refuses), or -1 when they cannot be told (unreadable iovecs, more than
 * max, reads of our own memory refused). */
int md__sg_io_buffers(const void *arg, uintptr_t *addr, size_t *len, size_t max);
/* 1 if part of [addr, addr + len) is registered guest RAM. */
int md__agent_ram_overlaps(struct md_agent *a, uintptr_t addr, size_t len);
/* ours.c */
/* 1 if [s, e) is none of the agent's: the caller makes its call plainly,
 * without agent->lock, then calls md__ours_end(token). 0: it may be ours
 * (nothing to end). Lock-free. */
int md__ours_begin(struct md__ours *o, uintptr_t s, uintptr_t e, unsigned *token);
void md__ours_end(struct md__ours *o, unsigned token);
/* 1 if [s, e) is none of the agent's now (a call with nothing to do there
 * unless it is). */
int md__ours_none(struct md_agent *a, uintptr_t s, uintptr_t e);
/* Before the agent acts on [s, e) (agent->lock held): publishes it, and
 * waits for the plain calls that did not see it. */
void md__ours_grow(struct md_agent *a, uintptr_t s, uintptr_t e);
/* Publishes what the records cover now (agent->lock held). */
void md__ours_refresh(struct md_agent *a);

/* The agent's lock, counted in md__in_agent (sys.h). Letting it go
 * publishes what the records cover (md__ours_refresh). Cancellation is
 * off while it is held (md__cancel_off): calls under it are cancellation
 * points (open, close, the log's write), and a VMM thread cancelled in
 * one would leave it held for good. */
static inline void md__agent_enter(struct md_agent *a)
{
	md__cancel_off();
	__atomic_add_fetch(&a->lock_wanted, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&a->lock);
	__atomic_sub_fetch(&a->lock_wanted, 1, __ATOMIC_RELAXED);
	md__in_agent++;
}

static inline void md__agent_leave(struct md_agent *a)
{
	md__ours_refresh(a);
	md__in_agent--;
	pthread_mutex_unlock(&a->lock);
	md__cancel_on();
}

/* On the agent's thread, between two parts of a long job (an unmerge
 * memdedupd asked for, a change of user): the lease breaks signalled
 * meanwhile, which that thread alone takes, are begun, and those short of
 * memory tried again. Waiting for the whole job, a break could outlast
 * the kernel's lease-break-time, and the writer then wrote a file whose
 * pages the guest still mapped. Elsewhere, or within a break, nothing. */
void md__agent_thread_leases(struct md_agent *a);

/* Between two parts of a long job under the agent's lock: the VMM's calls
 * waiting for it get in (and md__part_hook runs, in tests). A mutex let go
 * is not handed to a waiter: one just woken found it taken again, and
 * waited for the whole job. So one of those waiting goes first: slept for
 * until it is in, 2 ms at most (a waiter woken behind a busy vCPU thread
 * may take that long to run, and more may keep coming). */
static inline void md__agent_let_in(struct md_agent *a)
{
	/* Still off between the parts, nanosleep's time too: the job holds
	 * more than this lock (unmerge_lock, its half-done state). */
	MD_NOCANCEL_SCOPE();
	md__agent_leave(a);
	unsigned waiting = __atomic_load_n(&a->lock_wanted, __ATOMIC_RELAXED);
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (waiting && __atomic_load_n(&a->lock_wanted, __ATOMIC_RELAXED) >= waiting) {
		nanosleep(&(struct timespec){ 0, 50000 }, NULL);
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) >= 2000000L)
			break;
	}
	void (*hook)(struct md_agent *) = __atomic_load_n(&md__part_hook, __ATOMIC_RELAXED);
	if (hook)
		hook(a);
	md__agent_thread_leases(a);
	md__agent_enter(a);
}

#endif
