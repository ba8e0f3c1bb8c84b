/*
 * stats_file.h - the file through which an agent publishes its counters.
 *
 * Each agent keeps one file, <run_dir>/agent-<pid>.stats, mapped shared into
 * its process: the counters are updated in place with relaxed atomics, so
 * publishing costs the read path nothing more than an increment. Readers
 * (`memdedup status`) read(2) it and must treat it as untrusted bytes: a file
 * of a dead process, of another version, or just garbage.
 */
#ifndef MD_STATS_FILE_H
#define MD_STATS_FILE_H
#include <stddef.h>
#include <stdint.h>

#include "memdedup.h"

#define MD_STATS_MAGIC "MDSTATS"   /* 8 bytes with its NUL */
#define MD_STATS_VERSION 1u
#define MD_STATS_COMMAND_LEN 256
/* An agent's file is agent-PID.stats, or agent-PID.K.stats (K from 2 to
 * this) when that one is another live agent's or another user's. */
#define MD_STATS_NAMES 16

/* Counter slots; the order is the file format (append only). */
enum md__ctr {
	MD_CTR_REGIONS,
	MD_CTR_REGISTERED_BYTES,
	MD_CTR_READS_SEEN,
	MD_CTR_BYTES_READ,
	MD_CTR_SHARED_AT_READ,
	MD_CTR_SHARED_NOW,
	MD_CTR_BREAKS,
	MD_CTR_PRIVATIZED,
	MD_CTR_LEASE_BREAKS,
	MD_CTR_VMAS,
	MD_CTR_FALLBACK0,
	MD_CTR_FALLBACK_TOTAL = MD_CTR_FALLBACK0 + MD_FB_COUNT,
	MD_CTR_AGENT_CPU_NS,
	MD_CTR_PAGES_SCANNED,
	MD_CTR_PAGES_HINTED,
	MD_CTR_MERGED,
	MD_CTR_MERGED_FROM_HINTS,
	MD_CTR_ZERO_PAGES,
	MD_CTR_PUBLISHED,
	MD_CTR_VOLATILE,
	MD_CTR_ABANDONED,
	MD_CTR_FULL_SCANS,
	MD_CTR_SCAN_BREAKS,
	MD_CTR_WP_WAITS,
	MD_CTR_HINTS_PUSHED,
	MD_CTR_HINTS_DROPPED,
	MD_CTR_PAGES_SHARING,
	MD_CTR_POOL_PAGES,
	MD_CTR_SCAN_CPU_NS,
	MD_CTR_GENERAL_PROFIT,     /* int64_t stored as uint64_t */
	MD_CTR_MERGE_RATE,         /* pages merged per second, over the last second */
	MD_CTR_BREAK_RATE,         /* merged pages written per second, likewise */
	MD_CTR_READ_NS,            /* time spent in reads into guest RAM */
	MD_CTR_PAGES_UNSHARED,     /* stable unique pages the scanner keeps checking */
	MD_CTR_SMART_SKIPS,        /* visits saved by skipping pages that stayed unique */
	MD_CTR_CANDIDATES,         /* pages memdedupd named after another agent published */
	MD_CTR_MERGED_FROM_CANDIDATES,
	MD_CTR_READ_SMALL,         /* pages of reads below share_min_pages, copied */
	MD_CTR_MERGED_IMAGE,       /* guest pages the scanner merged onto image pages */
	MD_CTR_IMAGE_INDEXED,      /* image pages hashed for that */
	MD_CTR_ZERO_NEAR_HINTS,    /* of zero pages, found sweeping a hint's huge page */
	MD_CTR_READ_SHARED_NS,     /* of READ_NS, in reads that mapped image pages */
	MD_CTR_READ_SHARED_BYTES,  /* the bytes those returned */
	MD_CTR_READ_PAGE_NS,       /* of READ_NS, in copied reads of one 4 KiB page */
	MD_CTR_READS_PAGE,         /* how many those were */
	MD_CTR_HINT_RATIO,         /* now: hinted visits of every 8 */
	MD_CTR_FILLED_PAGES,       /* pages of one repeated word mapped from fill strips */
	MD_CTR_IO_UNSEEN,          /* 1: I/O the agent cannot follow stopped sharing */
	MD_CTR_MERGE_FALLBACKS,    /* pages of merges that fell back, left as they were */
	MD_CTR_SCAN_STATE,         /* now: enum md_scan_state */
	MD_CTR_FORK_SHARED,        /* forks whose child got guest RAM still shared */
	MD_CTR_FILL_MAPPED,        /* now: of PAGES_SHARING, pages mapped from fill strips */
	MD_CTR_COUNT
};

struct md__stats_file {
	char magic[8];
	uint32_t version;
	uint32_t header_size;      /* offsetof(counters) */
	uint32_t ncounters;
	uint32_t pid;
	uint64_t start_time;       /* field 22 of /proc/pid/stat: tells pid reuse */
	char command[MD_STATS_COMMAND_LEN];
	uint64_t counters[MD_CTR_COUNT];
};

/* A validated copy of a stats file. */
struct md__stats_snapshot {
	uint32_t pid;
	uint64_t start_time;
	char command[MD_STATS_COMMAND_LEN];
	md_stats stats;
};

/* Parses len bytes of a stats file. Returns 0, or -EINVAL (bad magic, size,
 * version or command string) without touching *out beyond what it filled. */
int md__stats_parse(const void *buf, size_t len, struct md__stats_snapshot *out);
/* Copies counters into an md_stats (and back). */
void md__stats_from_counters(const uint64_t *ctr, md_stats *out);
/* The name of a counter's JSON key. */
const char *md__ctr_name(enum md__ctr c);
/* Start time of a process (clock ticks since boot), 0 if unknown. */
uint64_t md__proc_start_time(int pid);
/* Whose the statistics file open at fd (any mode) is, s read from it. Its
 * agent holds a write lock on it (POSIX, the whole file) for its life, so
 * that a reader knows it lives whatever pid the file names: the agent's in
 * its own pid namespace, another process's here perhaps. Returns the
 * agent's pid as this process knows it (the lock holder's, if that started
 * when the file's agent did); 0 if it is gone: stale, for
 * md__stats_file_remove before fd is closed (fd holds a read lock till
 * then: no agent takes the file over meanwhile); or -ESRCH if another
 * holds it: alive, neither shown nor removed (an agent out of sight of our
 * pid namespace, or one taking the file over). A file nobody holds (an
 * older agent's, one whose agent exec'd, or on a file system without
 * locks) goes by its pid, and by that process's mapping of it (an agent
 * maps its file for life; an exec unmaps it): 0 if its maps, readable,
 * map no file of its inode. */
int md__stats_file_agent(int fd, const struct md__stats_snapshot *s);
/* Removes path if it is still the file open at fd: 0, -ESTALE if another
 * file is there now (left there), or -errno. Safe against another reader
 * removing the same stale file at once and a new agent taking its name:
 * the file is moved away first, then checked. */
int md__stats_file_remove(int fd, const char *path);
/* Removes name in dir if it is a file md__stats_file_remove moved away
 * and its remover (".removing-PID") died before it removed it, unless a
 * process still locks it: 1 if removed, else 0. */
int md__stats_removal_leftover(const char *dir, const char *name);
/* Tests only: called by md__stats_file_remove once path's file is moved
 * away and before it is checked. */
extern void (*md__stats_remove_hook)(const char *path);
#define MD_HOST_RUN_DIR "/run/memdedup"	/* root's: the host's daemon (memdedupd.service) */
/* The run directory into buf: opt if not NULL, else $MEMDEDUP_RUN_DIR,
 * /run/memdedup for root, $XDG_RUNTIME_DIR/memdedup, /tmp/memdedup-<uid>.
 * 0, -ENAMETOOLONG if it does not fit in size bytes (nothing is created),
 * or, for the /tmp default only, which is created mode 0700 if absent,
 * -EPERM (logged) unless it is a directory of the caller's euid with mode
 * 0700: anyone could have made it first. */
int md__run_dir(const char *opt, char *buf, size_t size);
/* As md__run_dir(NULL), for readers, but creates nothing: the /tmp default,
 * when absent, is named in buf and -ENOENT returned (it holds no agent and
 * no daemon). */
int md__run_dir_lookup(char *buf, size_t size);
#endif
