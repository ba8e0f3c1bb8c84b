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
 * ordinary read.
 *
 * An image is shared only while the agent holds a read lease on it (see
 * fcntl(2), F_SETLEASE): the kernel grants one only while nobody has the file
 * open for writing, and makes any later opener for writing or truncater wait
 * until the agent gives the lease back. Before it does, the agent turns every
 * page still mapped from the file into a private copy, so what the guest sees
 * never changes behind its back. A guest write to a shared page gets a private
 * copy (a copy-on-write break).
 *
 * Nothing here ever makes a guest read fail: whenever sharing is impossible
 * (no lease, no memory, the mapping limit), the read is done as usual and the
 * reason is counted and logged once.
 *
 * Conventions: every fallible function returns 0 or a negative errno; the
 * read functions return what pread(2)/preadv(2) would (a byte count, or -1
 * with errno set).
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
	/* Pass MADV_MERGEABLE on to the kernel (kernel KSM) too. */
	int kernel_ksm;
	/* Directory for the agent's statistics file (what `memdedup status`
	 * reads); NULL: $MEMDEDUP_RUN_DIR, else /run/memdedup for root, else
	 * $XDG_RUNTIME_DIR/memdedup. An empty string: no statistics file. */
	const char *run_dir;
	/* The most mappings (VMAs) the agent may create; 0: a default derived
	 * from vm.max_map_count. */
	uint64_t max_vmas;
	/* MD_OPT_* flags; unknown bits are rejected with -EINVAL. */
	unsigned flags;
} md_agent_options;

/* Do not share reads at all: count them only (for comparisons). */
#define MD_OPT_NO_SHARING (1u << 0)
/* Fault the shared pages in at read time (MADV_POPULATE_READ) instead of at
 * the guest's first touch. */
#define MD_OPT_POPULATE (1u << 1)
#define MD_OPT_ALL (MD_OPT_NO_SHARING | MD_OPT_POPULATE)

/* Why a read, or part of one, was not shared. */
enum md_fallback {
	MD_FB_UNALIGNED,     /* buffer and file offset differ modulo the page size */
	MD_FB_PARTIAL,       /* no whole page in the read */
	MD_FB_NOT_FILE,      /* pipe, socket, device: not a regular file */
	MD_FB_NO_LEASE,      /* file may change: open for writing, or lease refused */
	MD_FB_ENOMEM,        /* mmap failed for lack of memory or the map limit */
	MD_FB_VMA_LIMIT,     /* the agent's own mapping budget is spent */
	MD_FB_FLAGS,         /* preadv2 flags or offset -1 */
	MD_FB_ERROR,         /* anything else (an I/O error while mapping, ...) */
	MD_FB_COUNT
};

/* Counters of one agent. Monotonic unless marked "now". */
typedef struct md_stats {
	uint64_t regions;              /* now: registered regions */
	uint64_t registered_bytes;     /* now: bytes in them */
	uint64_t reads_seen;           /* reads whose destination is guest RAM */
	uint64_t bytes_read;           /* bytes those reads returned */
	uint64_t pages_shared_at_read; /* pages mapped from an image at read time */
	uint64_t pages_shared;         /* now: pages still mapped from an image */
	uint64_t breaks;               /* now: of those mapped, written since (private) */
	uint64_t pages_privatized;     /* copied privately because a lease broke */
	uint64_t lease_breaks;         /* leases the kernel asked back */
	uint64_t vmas;                 /* now: mappings in the process */
	uint64_t fallbacks[MD_FB_COUNT];
	uint64_t fallbacks_total;
	uint64_t agent_cpu_ns;         /* CPU time of the agent's own thread */
} md_stats;

/* Returns a short name of a fallback reason ("unaligned", ...). */
MD_API const char *md_fallback_name(enum md_fallback reason);

/* Creates an agent. There is at most one per process (it installs a lease
 * signal and owns the statistics file): a second gets -EBUSY. */
MD_API int md_agent_new(md_agent **agentp, const md_agent_options *opts);
/* Stops the agent. Shared pages stay mapped and stay correct: the leases go
 * with the mappings' files. */
MD_API void md_agent_free(md_agent *agent);

/* Registers [addr, addr+len) as guest RAM that may be shared. addr and len
 * must be page-aligned. advice is the madvise(2) advice the VMM gave the range
 * that a new mapping must inherit (MD_ADV_* bits). */
MD_API int md_agent_register(md_agent *agent, void *addr, size_t len, unsigned advice);
/* Forgets [addr, addr+len); pages shared there stay as they are. */
MD_API int md_agent_unregister(md_agent *agent, void *addr, size_t len);
/* Adds advice bits to what new mappings in [addr, addr+len) inherit. */
MD_API int md_agent_advise(md_agent *agent, void *addr, size_t len, unsigned advice);
#define MD_ADV_DONTFORK  (1u << 0)
#define MD_ADV_DONTDUMP  (1u << 1)
#define MD_ADV_HUGEPAGE  (1u << 2)

/* Tells the agent the VMM is about to discard [addr, addr+len) (MADV_DONTNEED
 * and friends): pages mapped from an image there are replaced by anonymous
 * memory, so the discard yields zeroes as the VMM expects, not file content. */
MD_API int md_agent_discard(md_agent *agent, void *addr, size_t len);
/* Tells the agent [addr, addr+len) was unmapped or mapped anew by the VMM:
 * it is no longer guest RAM that asked for merging. */
MD_API int md_agent_forget(md_agent *agent, void *addr, size_t len);

/* pread(2) and preadv2(2) that share what they can (flags as preadv2). */
MD_API ssize_t md_agent_pread(md_agent *agent, int fd, void *buf, size_t len, off_t off);
MD_API ssize_t md_agent_preadv(md_agent *agent, int fd, const struct iovec *iov,
			int iovcnt, off_t off, int flags);

/* Fills *stats with the agent's counters, refreshing the "now" ones. */
MD_API int md_agent_stats(md_agent *agent, md_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
