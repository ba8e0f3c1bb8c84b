/*
 * memdedup.h - the public interface of memdedup, and its manual.
 *
 * memdedup deduplicates the memory of virtual machines from user space. Its
 * agent lives inside the VMM process. It can be preloaded into an unmodified
 * QEMU (`memdedup run -- qemu-system-x86_64 ...`, which sets LD_PRELOAD to
 * libmemdedup-preload.so), or a VMM can link libmemdedup and call this API
 * itself.
 *
 * Read-time sharing
 * -----------------
 * A VMM registers its guest RAM (what asked for merging: the preload does so on
 * madvise(MADV_MERGEABLE)). When it then reads a disk image into guest RAM with
 * md_agent_pread()/md_agent_preadv(), every whole, page-aligned 4 KiB page of
 * the read is mapped copy-on-write from the image's page cache instead of being
 * copied, so every guest reading the same image shares one host copy. The rest
 * of the read (partial pages, pipes, sockets, files that may change) is an
 * ordinary read, and so is a read of fewer whole pages than share_min_pages
 * (default 16): mapping them would cost more than copying them.
 *
 * An image is shared only while the agent holds a read lease on it (see
 * fcntl(2), F_SETLEASE): the kernel grants one only while nobody has the file
 * open for writing, and makes any later opener for writing or truncater wait
 * until the agent gives the lease back. Before it does, the agent turns every
 * page still mapped from the file into a private copy, so what the guest sees
 * never changes behind its back. A guest write to a shared page gets a private
 * copy (a copy-on-write break).
 *
 * Content scanning
 * ----------------
 * With MD_OPT_SCAN the agent also runs a scanner (after Linux's KSM and
 * KSM++): it visits registered pages a batch at a time, skips pages whose
 * checksum changed since its last visit (volatile), and merges a page with an
 * equal one only after write-protecting it (userfaultfd) and comparing it
 * byte for byte; the merged page is mapped copy-on-write from a content pool
 * whose pages never change. All-zero pages are dropped to the kernel's zero
 * page. Every read into guest RAM that could not be shared at read time is
 * pushed as a hint (address, length) onto a bounded circular stack, and the
 * scanner visits hinted pages first, at a ratio it adapts to which source
 * finds more merges.
 *
 * Nothing here ever makes a guest read fail: whenever sharing is impossible
 * (no lease, no memory, the mapping limit), the read is done as usual and the
 * reason is counted and logged once.
 *
 * Conventions: every fallible function returns 0 or a negative errno; the
 * read functions return what pread(2)/preadv(2) would (a byte count, or -1
 * with errno set). Once md_agent_new has returned, every call on the agent
 * may be made from any thread, at the same time as others: each takes the
 * locks it needs (the preload library makes them from all of the VMM's
 * threads at once: reads, writes, discards, registrations). md_agent_free
 * is the exception: call it only once no other call on the agent is in
 * progress or will be made.
 */
#ifndef MEMDEDUP_H
#define MEMDEDUP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Only the API is exported from the shared libraries; everything else is
 * hidden, so nothing of the agent can clash with the VMM's own symbols. */
#define MD_API __attribute__((visibility("default")))

#define MD_VERSION_MAJOR 0
#define MD_VERSION_MINOR 1

/* The page size memdedup shares at; reads are shared in whole pages of it. */
#define MD_PAGE_SIZE 4096u

typedef struct md_agent md_agent;

/* Options of an agent. Zero-initialise, then set what you need. */
typedef struct md_agent_options {
	/* Pass MADV_MERGEABLE on to the kernel (kernel KSM) too. Ignored
	 * with MD_OPT_SCAN: content scanning is then ours alone, as two
	 * scanners merging one page could lose a write. */
	int kernel_ksm;
	/* Directory for the agent's statistics file (what `memdedup status`
	 * reads); NULL: $MEMDEDUP_RUN_DIR, else /run/memdedup for root, else
	 * $XDG_RUNTIME_DIR/memdedup, else /tmp/memdedup-<uid> (a 0700
	 * directory of the user's). An empty string: no statistics file. The
	 * agent keeps it open with a lock (fcntl F_SETLK) until md_agent_free:
	 * that tells `memdedup status` it lives. */
	const char *run_dir;
	/* The most mappings (VMAs) the agent may create; 0: a default derived
	 * from vm.max_map_count. */
	uint64_t max_vmas;
	/* MD_OPT_* flags; unknown bits are rejected with -EINVAL. */
	unsigned flags;
	/* Scanner tunables (MD_OPT_SCAN); 0 takes the default; out of range:
	 * -EINVAL. */
	unsigned pages_to_scan;   /* pages per batch, 1..100000 (default 100) */
	unsigned sleep_ms;        /* ms between batches, 1..10000 (default 20) */
	unsigned cpu_percent;     /* CPU cap of the scanner, % of one core, 1..100 (default 100) */
	unsigned hint_ratio;      /* hinted visits of every 8 to start with, 1..8 (default 4) */
	/* The sharing domain: pages of different domains never share a frame.
	 * "private": merge only within this process (a pool of its own).
	 * NULL or "": the default domain of this Unix user in memdedupd if
	 * one is there at start (a slow or busy one is waited for), else
	 * private. Any other name: that domain of this user in memdedupd
	 * (waiting for it if it is not running), private if the name or the
	 * socket's path cannot be used (said in the log). */
	const char *domain;
	const char *daemon_socket;  /* NULL: $MEMDEDUP_SOCKET or the default */
	/* Reads that would map fewer whole pages than this are copied as
	 * usual (and hinted to the scanner) instead of shared: below it one
	 * mmap costs more than the copy it replaces. 1..MD_SHARE_MIN_PAGES_MAX;
	 * 0 takes MD_SHARE_MIN_PAGES_DEFAULT; above the maximum: -EINVAL. */
	unsigned share_min_pages;
	/* An image no page of guest RAM is mapped from any more, and that no
	 * read shared from for this many seconds, is let go (its lease, its
	 * mapping and the agent's descriptor of it: a file the VMM deleted
	 * keeps its space while held); a later read leases it again.
	 * 1..MD_IMAGE_IDLE_S_MAX; 0 takes MD_IMAGE_IDLE_S_DEFAULT. */
	unsigned image_idle_s;
} md_agent_options;

/* The break-even of the microbenchmark (docs/benchmarks.md section 2). */
#define MD_SHARE_MIN_PAGES_DEFAULT 16u
#define MD_SHARE_MIN_PAGES_MAX 4096u
#define MD_IMAGE_IDLE_S_DEFAULT 60u
#define MD_IMAGE_IDLE_S_MAX 86400u

/* Do not share reads at all: count them only (for comparisons). */
#define MD_OPT_NO_SHARING (1u << 0)
/* Fault the shared pages in at read time (MADV_POPULATE_READ) instead of at
 * the guest's first touch. */
#define MD_OPT_POPULATE (1u << 1)
/* Run the content scanner. */
#define MD_OPT_SCAN (1u << 2)
/* Visit pages in random order instead of linear. */
#define MD_OPT_SCAN_RANDOM (1u << 3)
/* Scan without hints (for comparisons). */
#define MD_OPT_NO_HINTS (1u << 4)
/* Linear order, or hints on, as this agent's own choice (the default's
 * values, which memdedupd's defaults would otherwise replace): with
 * MD_OPT_SCAN_RANDOM or MD_OPT_NO_HINTS, -EINVAL. */
#define MD_OPT_SCAN_LINEAR (1u << 5)
#define MD_OPT_HINTS (1u << 6)
#define MD_OPT_ALL (MD_OPT_NO_SHARING | MD_OPT_POPULATE | MD_OPT_SCAN | MD_OPT_SCAN_RANDOM | \
		    MD_OPT_NO_HINTS | MD_OPT_SCAN_LINEAR | MD_OPT_HINTS)

/* Why a read, or part of one, was not shared. */
enum md_fallback {
	MD_FB_UNALIGNED,     /* buffer and file offset differ modulo the page size */
	MD_FB_PARTIAL,       /* no whole page in the read */
	MD_FB_NOT_FILE,      /* pipe, socket, device: not a regular file */
	MD_FB_NO_LEASE,      /* file may change: open for writing, or lease refused (or not
	                      * asked: the agent's descriptors of images at their cap; or
	                      * more pages mapped from images than a lease break could
	                      * make private in half of fs.lease-break-time) */
	MD_FB_ENOMEM,        /* mmap failed for lack of memory or the map limit */
	MD_FB_VMA_LIMIT,     /* the agent's own mapping budget is spent */
	MD_FB_FLAGS,         /* preadv2 flags or offset -1 */
	MD_FB_ERROR,         /* anything else (an I/O error while mapping, ...; and pages a
	                      * lease break made private after the kernel had let the
	                      * writer in, lease-break-time run out) */
	MD_FB_COUNT
};

/* Counters of one agent. Monotonic unless marked "now". */
typedef struct md_stats {
	uint64_t regions;              /* now: registered regions */
	uint64_t registered_bytes;     /* now: bytes in them */
	uint64_t reads_seen;           /* reads whose destination is guest RAM */
	uint64_t bytes_read;           /* bytes those reads returned */
	uint64_t read_ns;              /* time spent in them, sharing or copying */
	uint64_t pages_shared_at_read; /* pages mapped from an image at read time */
	uint64_t pages_shared;         /* now: pages still mapped from an image, shared
	                                  at read time or merged onto it by the
	                                  scanner (merged_image) */
	uint64_t breaks;               /* now: of those mapped, written since (private) */
	uint64_t pages_privatized;     /* copied privately because a lease broke */
	uint64_t lease_breaks;         /* leases the kernel asked back */
	uint64_t vmas;                 /* now: mappings in the process */
	uint64_t fallbacks[MD_FB_COUNT]; /* pages of reads that were copied, not
	                                  shared, by reason (a read of no whole page
	                                  and a partial page at a read's edge count
	                                  one each) */
	uint64_t fallbacks_total;      /* their sum */
	uint64_t agent_cpu_ns;         /* CPU time of the agent's own thread */
	/* The content scanner (all 0 without MD_OPT_SCAN). */
	uint64_t pages_scanned;        /* visits by the linear/random cursor */
	uint64_t pages_hinted;         /* visits from hints */
	uint64_t merged;               /* pages merged with a pool page (not those
	                                  mapped from fill strips: filled_pages) */
	uint64_t merged_from_hints;    /* of those, found through hints */
	uint64_t zero_pages;           /* now: all-zero pages dropped (they read as the
	                                  zero page) and not seen written or read
	                                  since (KSM's ksm_zero_pages) */
	uint64_t published;            /* pages sent to the pool as first copy (with
	                                  memdedupd, also those it answered with an
	                                  equal page another agent just published) */
	uint64_t volatile_skips;       /* visits skipped because the page's checksum
	                                  changed since the cursor's last visit (the
	                                  volatility filter), a running total; a
	                                  page's first visit, with no checksum before,
	                                  is not one */
	uint64_t abandoned;            /* merges abandoned: changed under protection */
	uint64_t full_scans;           /* passes over all registered RAM */
	uint64_t scan_breaks;          /* merged pages since written */
	uint64_t wp_waits;             /* guest writes that waited for a merge */
	uint64_t hints_pushed, hints_dropped;
	uint64_t pages_sharing;        /* now: guest pages mapped from the pool,
	                                  fill strips included (`status`'s MERGED;
	                                  also pages_mapped_from_pool in its JSON).
	                                  Not KSM's pages_sharing (pages saved):
	                                  memdedupd's domains give that */
	uint64_t pool_pages;           /* now: pages of the process's own pool in use
	                                  (KSM's pages_shared); with memdedupd only its
	                                  fill strips: the domain's pool is in
	                                  memdedupd's status */
	uint64_t scan_cpu_ns;          /* CPU time of the scanner thread, all of it
	                                  (its sleeps' and pauses' wake-ups too) */
	int64_t general_profit;        /* now: bytes saved minus metadata bytes (with
	                                  memdedupd, like KSM's per process: the pages
	                                  merged, less the metadata) */
	uint64_t merge_rate;           /* now: pages merged per second (last second) */
	uint64_t break_rate;           /* now: merged pages written per second, over
	                                  the time between the walks that find them */
	uint64_t pages_unshared;       /* now: unique pages still checked (KSM's) */
	uint64_t smart_skips;          /* visits saved on pages that stayed unique */
	uint64_t candidates;           /* pages memdedupd named: their content was
	                                * just published by another page */
	uint64_t merged_from_candidates; /* of merged, found through candidates */
	uint64_t read_small_pages;     /* pages of reads below share_min_pages: copied
	                                  by choice (and hinted), not a fallback */
	uint64_t merged_image;         /* guest pages the scanner found equal to image
	                                  pages shared at read time and mapped from the
	                                  image (no pool page needed) */
	uint64_t image_pages_indexed;  /* image pages hashed for that */
	uint64_t zero_pages_near_hints; /* of zero_pages, found in the huge page
	                                   of a read (a hint), right after it */
	/* What read_ns splits into, to price sharing against copying in the
	 * VMM's own conditions: */
	uint64_t read_shared_ns;       /* in reads that mapped image pages */
	uint64_t read_shared_bytes;    /* the bytes those reads returned */
	uint64_t read_page_ns;         /* in copied reads of exactly one 4 KiB page */
	uint64_t reads_page;           /* how many such reads */
	uint64_t hint_ratio;           /* now: of every 8 visits, how many go to
	                                  hints while there are any (adapted) */
	uint64_t filled_pages;         /* pages of one repeated non-zero word (freed
	                                  guest kernel memory poisoned with 0xcc, say)
	                                  mapped from the process's fill strips, ever:
	                                  not less when they are written or unmerged.
	                                  Apart from merged; those mapped now are in
	                                  pages_sharing */
	uint64_t io_unseen;            /* now: 1 once I/O the agent cannot follow
	                                  (Linux AIO, io_uring reads, a device's DMA)
	                                  stopped read-time sharing and merging for
	                                  good (md_agent_io_unseen) */
	uint64_t merge_fallbacks;      /* merges (and moves of merged pages) that
	                                  fell back, leaving pages as they were:
	                                  pages whose mapping the kernel refused or
	                                  whose write-protection could not be set or
	                                  read (or the image pages they must equal),
	                                  runs the mapping budget refused,
	                                  and pages equal to an image whose
	                                  descriptor the VMM closed or replaced,
	                                  or whose lease was being broken,
	                                  meanwhile; pages memdedupd's pool had
	                                  no room for (full, or the user's share
	                                  of pools spent); and pages left shared when
	                                  I/O the agent cannot follow began, the
	                                  memory for their copies short (1 if a
	                                  copy failed) (each reason said once in
	                                  the log) */
	uint64_t scan_state;           /* now: the scanner's state, MD_SCAN_STATE_*
	                                  (0: no scanner) */
	uint64_t fork_shared;          /* fork()s (and daemon()s) of the VMM, with
	                                  guest RAM not MADV_DONTFORK, whose child
	                                  got pages of it still shared from the pool
	                                  or an image, which may change under it:
	                                  their copies, made first, could not all be
	                                  made (memory short, the agent's locks
	                                  taken for a second; said once in the log) */
	uint64_t fill_mapped;          /* now: of pages_sharing, those mapped from
	                                  the process's own fill strips (with
	                                  memdedupd, its domain's saving counts
	                                  them less the strips: pool_pages) */
} md_stats;

/* md_stats.scan_state: what the scanner does now, whoever asked. */
enum md_scan_state {
	MD_SCAN_STATE_NONE = 0,      /* no scanner (no MD_OPT_SCAN, or it failed) */
	MD_SCAN_STATE_SCANNING,      /* merging */
	MD_SCAN_STATE_PAUSED,        /* paused (memdedupd's PAUSE, md_agent_pause,
	                                a welcome from a paused memdedupd...) */
	MD_SCAN_STATE_UNMERGED,      /* paused by an unmerge, until a resume */
	MD_SCAN_STATE_STOPPED        /* stopped for good: io_unseen */
};

/* Returns a short name of a fallback reason ("unaligned", ...). */
MD_API const char *md_fallback_name(enum md_fallback reason);

/* Creates an agent. There is at most one per process (it installs a lease
 * signal and owns the statistics file): a second gets -EBUSY. Unknown
 * flags and tunables out of range: -EINVAL. With MD_OPT_SCAN, a scanner
 * that cannot start (no userfaultfd here) is said in the log and the agent
 * runs without it (the VMM must not fail for us): md_agent_pause,
 * md_agent_set and md_agent_unmerge then return -EINVAL. */
MD_API int md_agent_new(md_agent **agentp, const md_agent_options *opts);
/* Stops the agent; call it only once no other thread uses the agent (no call
 * on it in progress, none to come). The leases go with it, so pages shared
 * from images (at read time, or merged onto an image by the scanner) are
 * made private copies first; when memory is short for that, the log says so,
 * and a later writer of the image may change what those pages show. Pages
 * mapped from the pool (merged, or written since: MD_OPT_SCAN) are moved
 * into anonymous memory with their content first, a copy each (what merging
 * saved is spent again), so that a later discard reads zeroes: with nothing
 * left to steer it, it would show the pool's page, which may hold another
 * page's content by then. Where that cannot be done (memory short, the
 * mapping limit, merging stopped for I/O the agent does not see), the log
 * says so once; those pages read as written, but a discard of one shows the
 * pool's page, not zeroes. An exiting process need not call it. */
MD_API void md_agent_free(md_agent *agent);

/* Registers [addr, addr+len) as guest RAM that may be shared. addr and len
 * must be page-aligned. advice is the madvise(2) advice the VMM gave the range
 * that a new mapping must inherit (MD_ADV_* bits, MD_ADV_UNDO excluded). An
 * unaligned or empty range, or advice bits other than those, is refused
 * with -EINVAL. Memory mapped MAP_SHARED
 * (other processes or devices write it too) is refused with -EPERM, and so
 * is hugetlbfs memory (its huge pages cannot be merged by 4 KiB) and locked
 * memory (mlock, mlockall: the kernel fills a locked private mapping with
 * private copies as soon as it is made; the preload library also gives up
 * RAM the VMM locks later, and registers none while mlockall(MCL_FUTURE)
 * holds), and so is memory that is not both readable and writable. Memory
 * a userfaultfd of the VMM's covers already (registered before it asked
 * for merging) is refused with -EBUSY: a mapping of ours there would end
 * that registration. A range with unmapped holes registers what is mapped
 * and returns -ENOMEM, as madvise(2) does. */
MD_API int md_agent_register(md_agent *agent, void *addr, size_t len, unsigned advice);
/* Forgets [addr, addr+len), which stays mapped: pages shared there are made
 * private copies first (their content stays as it is). */
MD_API int md_agent_unregister(md_agent *agent, void *addr, size_t len);
/* Tells the agent the VMM is about to register [addr, addr+len) with its
 * own userfaultfd (QEMU's postcopy migration and background snapshots do):
 * a range belongs to one userfaultfd only, and the scanner's holds guest
 * RAM, so the VMM's registration would fail (EBUSY). The agent gives the
 * guest RAM there up as md_agent_unregister does (shared pages made private
 * copies, no more merging or sharing at read time there), after putting
 * back the zero pages the scanner dropped (a userfaultfd for missing pages
 * would take those for pages still to come), and says so once in the log.
 * The preload library calls it on the VMM's UFFDIO_REGISTER. 1 if it gave
 * memory up, 0 if none there was the agent's, or -errno (memory short): then
 * the preload library fails the registration, and what went is registered
 * again. Until md_agent_userfault_end, the range is refused to
 * md_agent_register (the preload library also takes back what one call gave
 * up when the VMM's own registration then fails). Pages shared at read
 * time stay private copies in the image's mapping, which no userfaultfd
 * covers: the kernel then refuses the VMM's registration (EINVAL). Making
 * them anonymous while vCPUs run could lose a guest write, so the refusal
 * stands, said in the log. */
MD_API int md_agent_userfault(md_agent *agent, void *addr, size_t len);
/* Tells the agent the VMM's userfaultfd no longer covers [addr, addr+len)
 * (its UFFDIO_UNREGISTER succeeded: a snapshot or a postcopy migration is
 * over): guest RAM given up there by md_agent_userfault is registered again,
 * with the advice it had, and merged again. 0, or the first -errno of those
 * registrations (md_agent_register). */
MD_API int md_agent_userfault_end(md_agent *agent, void *addr, size_t len);
/* Adds advice bits to what new mappings in [addr, addr+len) inherit; with
 * MD_ADV_UNDO, takes them back (MADV_DOFORK, MADV_DODUMP, MADV_NOHUGEPAGE)
 * from the registered ranges [addr, addr+len) covers whole: a range covered
 * only in part keeps them, said once in the log (advice is kept per range
 * registered, and the more careful one stays). */
MD_API int md_agent_advise(md_agent *agent, void *addr, size_t len, unsigned advice);
#define MD_ADV_DONTFORK  (1u << 0)
#define MD_ADV_DONTDUMP  (1u << 1)
#define MD_ADV_HUGEPAGE  (1u << 2)
#define MD_ADV_UNDO      (1u << 31)

/* Tells the agent the VMM is about to discard [addr, addr+len) (MADV_DONTNEED
 * and friends): pages mapped from an image or the pool there are replaced by
 * anonymous memory, so the discard yields zeroes as the VMM expects, not file
 * content (a private mapping of the VMM's own file stays, and its discard
 * shows that file, as without the agent). Returns 0, or -errno if some could
 * not be (memory short): the VMM must then not discard, as those pages would
 * read back as file content. */
MD_API int md_agent_discard(md_agent *agent, void *addr, size_t len);
/* md_agent_discard, then the VMM's madvise(addr, len, advice) itself
 * (MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE, or MADV_GUARD_INSTALL,
 * whose zap must leave zeroes too, read once MADV_GUARD_REMOVE took the
 * guard away), the range kept out of every merge until the kernel is done:
 * a merge that freezes a page written after md_agent_discard would
 * otherwise map over it while the kernel's zap drops its write-protection,
 * and a write made then is lost. Advice the kernel does not know is
 * refused, nothing discarded, and so is a discard of locked memory (but
 * MADV_DONTNEED_LOCKED), -EINVAL as the kernel's. Returns 0, or -errno
 * (md_agent_discard's, or madvise's). Prefer it. */
MD_API int md_agent_madvise_discard(md_agent *agent, void *addr, size_t len, int advice);
/* Tells the agent [addr, addr+len) is about to be unmapped or mapped anew by
 * the VMM: it is no longer guest RAM that asked for merging. Call it before:
 * the scanner must not touch memory that is gone. If the unmapping then
 * fails, the pages it left mapped may show other content: prefer
 * md_agent_unmap. */
MD_API int md_agent_forget(md_agent *agent, void *addr, size_t len);
/* munmap(2) of [addr, addr+len) through the agent: the scanner is kept out
 * while the memory goes, and the range is forgotten once gone. If munmap
 * fails nothing changes. Returns 0 or munmap's -errno. The preload library
 * does the same for the VMM's munmap, MAP_FIXED mmap and fixed mremap. */
MD_API int md_agent_unmap(md_agent *agent, void *addr, size_t len);

/* pread(2) and preadv2(2) that share what they can (flags as preadv2). */
MD_API ssize_t md_agent_pread(md_agent *agent, int fd, void *buf, size_t len, off_t off);
MD_API ssize_t md_agent_preadv(md_agent *agent, int fd, const struct iovec *iov,
			int iovcnt, off_t off, int flags);
/* pwrite(2) and pwritev2(2) (flags as pwritev2), for the VMM's writes from
 * guest RAM. A write with O_DIRECT holds the pages it writes from while it
 * runs, which may be an image's: a lease break waits for the writes begun
 * before its pages were made private (at most until the kernel lets the
 * writer in), so the disk never gets the writer's bytes in the guest's
 * place. A VMM linking the agent writes guest RAM through these; the
 * preload library routes the pwrite family here. */
MD_API ssize_t md_agent_pwrite(md_agent *agent, int fd, const void *buf, size_t len, off_t off);
MD_API ssize_t md_agent_pwritev(md_agent *agent, int fd, const struct iovec *iov,
			 int iovcnt, off_t off, int flags);

/* Pauses (1) or resumes (0) the scanner. -EPERM to resume once merging
 * stopped for good (md_agent_io_unseen). memdedupd does not resume what
 * this paused when the agent connects to it (only `memdedup resume`
 * does); it pauses it when told to (`memdedup pause`). */
MD_API int md_agent_pause(md_agent *agent, int paused);
/* Tells the agent the VMM will write guest RAM in ways it does not see
 * (Linux AIO, io_uring, a device doing DMA): a merge or a read shared at
 * read time could then replace a page a transfer is still using, so from
 * now on reads are copied and content scanning stops merging, for good;
 * said once in the log with `what` ("set up Linux AIO"). Before it
 * returns, every page shared (merged, or shared with an image) is made
 * private, as md_agent_unmerge makes them: a device pinning one read-only
 * would go on reading it after the guest's write (not done, said and
 * counted in merge_fallbacks, when memory is short). Call it before the
 * transfer or the pin. The preload
 * library calls it when QEMU sets up Linux AIO (aio=native), submits
 * io_uring entries that may write memory (aio=io_uring) or registers ring
 * buffers, maps memory for a device's DMA (VFIO, iommufd, vhost-vdpa,
 * vhost-scsi), passes SCSI commands through into guest RAM (SG_IO),
 * registers memory with an RDMA adapter, or sends with MSG_ZEROCOPY. */
MD_API void md_agent_io_unseen(md_agent *agent, const char *what);
/* Sets a scanner tunable live: pages_to_scan, sleep_millisecs, cpu_percent
 * (1..100), hint_ratio (0..8 hinted visits of every 8, 0: no hints), order
 * (linear|random, in any case). -EINVAL for an unknown key or a value out
 * of range, and nothing changes. A value set here is this agent's, as one
 * of its options: memdedupd's own value of the key no longer replaces it
 * when the agent connects, nor does `memdedup set` for all agents
 * (`memdedup set --pid` naming this one does). */
MD_API int md_agent_set(md_agent *agent, const char *key, const char *value);
/* Turns every page shared back into a private copy, like KSM's run=2:
 * pages merged into the pool, pages shared at read time and pages the
 * scanner merged onto an image; then pauses the scanner until
 * md_agent_pause(agent, 0). Reads after it are shared at read time again.
 * Zero pages stay dropped: they read as the zeroes the guest wrote, and a
 * copy would only cost memory. Image pages made private stay out of the
 * scanner's merges from then on (no userfaultfd protects a mapping of a
 * disk file). Refuses with -ENOMEM, having changed nothing (not
 * paused either), when the host or the process's memory cgroup has not the
 * memory for the copies and 64 MiB to spare; -EINVAL without MD_OPT_SCAN
 * (nothing is merged then: pages shared at read time stay so). The copies
 * can also fail part of the way, with the -errno of what failed (-ENOMEM
 * too, when memory runs short meanwhile): some pages are private copies
 * then, the others still shared, and the scanner stays paused
 * (MD_SCAN_STATE_UNMERGED) until md_agent_pause(agent, 0), as a running
 * scanner would merge the copies again at once. */
MD_API int md_agent_unmerge(md_agent *agent);

/* Fills *stats with the agent's counters, refreshing the "now" ones. */
MD_API int md_agent_stats(md_agent *agent, md_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
