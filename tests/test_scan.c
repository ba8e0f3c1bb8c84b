/*
 * test_scan.c - the content scanner inside the agent, in the manner of
 * Linux's KSM selftests: duplicates merged (same frame in pagemap), zero
 * pages dropped, copy-on-write after merge, hints, unmerge, tunables, and
 * writers racing the scanner without losing a write.
 */
#include <dirent.h>
#include <errno.h>
#include <linux/mempolicy.h>
#include <linux/userfaultfd.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "agent_internal.h"	/* the scanner's tunables */
#include "cgroup.h"
#include "checksum.h"
#include "daemon_util.h"
#include "log.h"
#include "memdedup.h"
#include "merge.h"	/* md__engine_fail_slices */
#include "proc.h"
#include "remote.h"
#include "runner.h"
#include "zeropage.h"

#define PG 4096u

static const char *const fast_scan[] = {
	"MEMDEDUP_SCAN=1", "MEMDEDUP_PAGES_TO_SCAN=2000", "MEMDEDUP_SLEEP_MS=1", NULL
};

static int merged_256(const md_stats *s) { return s->merged >= 256 && s->zero_pages >= 256; }
static int merged_256_only(const md_stats *s) { return s->merged >= 256; }

static int zero_none(const md_stats *s) { return s->zero_pages == 0; }
static uint64_t zero_want;
static int zero_wanted(const md_stats *s)
{
	return s->zero_pages >= zero_want;
}

static uint64_t passes_want;
static int passes_done(const md_stats *s) { return s->full_scans >= passes_want; }

TEST_IMPL(scan_merges_duplicates)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 2048");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 1"), "ok") == 0);
	/* What was written, hashed before any merge: both copies are
	 * compared with it, not with each other (one pool page mapped
	 * wrongly under both would show the same wrong content twice). */
	char h0[32];
	snprintf(h0, sizeof(h0), "%s", proc_cmd(&a, "hash 0 %u", 256 * PG));
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 1", 512 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "zero %u 256", 1024 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 2", 1536 * PG), "ok") == 0);	/* unique */
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_256), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 256 * PG), h0) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 512 * PG, 256 * PG), h0) == 0);
	/* Zero pages dropped: not there, or on the kernel's zero page. */
	uint64_t zpfn = test_zero_pfn();
	for (unsigned i = 0; i < 256; i++) {
		struct pm z = proc_page(&a, (1024 + i) * PG);
		ASSERT(!z.present || (zpfn && z.pfn == zpfn));
	}
	md_stats z0, z1;
	ASSERT_EQ(proc_stats(&a, &z0), 0);	/* before the read: no drop since */
	proc_cmd(&a, "hash %u %u", 1024 * PG, 256 * PG);	/* read them */
	for (unsigned i = 0; i < 256; i++) {
		struct pm x = proc_page(&a, i * PG), y = proc_page(&a, (512 + i) * PG);
		ASSERT(x.present && y.present && x.pfn == y.pfn);
		ASSERT(proc_page(&a, (1536 + i) * PG).pfn != x.pfn);
	}
	if (zpfn) {
		/* Read again, they show the zero page: nothing left to drop,
		 * and not counted again while the scanner goes round. */
		for (unsigned i = 0; i < 256; i++)
			ASSERT_EQ(proc_page(&a, (1024 + i) * PG).pfn, zpfn);
		passes_want = z0.full_scans + 2;	/* the stats file lags up to a second */
		ASSERT_EQ(proc_stats_wait(&a, &z1, 20000, passes_done), 0);
		ASSERT_EQ(z1.zero_pages, z0.zero_pages);
		ASSERT_EQ(proc_page(&a, 1024 * PG).pfn, zpfn);
	} else {
		/* No zero page: the read gave each its own page of zeroes,
		 * which the scanner finds and drops again; each counted once
		 * (they were counted at every drop, as it was). */
		unsigned left = 256;
		for (int t = 0; t < 400 && left; t++) {
			usleep(50000);
			left = 0;
			for (unsigned i = 0; i < 256; i++)
				left += proc_page(&a, (1024 + i) * PG).present;
		}
		ASSERT_EQ(left, 0);
		zero_want = 256;
		ASSERT_EQ(proc_stats_wait(&a, &z1, 20000, zero_wanted), 0);
		passes_want = z1.full_scans + 2;	/* counted again if at all by then */
		ASSERT_EQ(proc_stats_wait(&a, &z1, 20000, passes_done), 0);
		ASSERT_EQ(z1.zero_pages, 256);
	}
	/* A write after merge: only the writer's copy changes. */
	char p517[32];
	snprintf(p517, sizeof(p517), "%s", proc_cmd(&a, "hash %u %u", 517 * PG, PG));
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 5 * PG, PG), p517) == 0);
	ASSERT(strcmp(proc_cmd(&a, "write %u 7", 5 * PG + 100), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 5 * PG, PG), p517) != 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 517 * PG, PG), p517) == 0);
	ASSERT(proc_page(&a, 5 * PG).pfn != proc_page(&a, 517 * PG).pfn);
	ASSERT(s.pages_sharing >= 256 && s.pool_pages >= 128 && s.pool_pages <= 256 + 16);
	ASSERT(s.general_profit > 0);
	/* The dropped zero pages written: no longer zero pages, nor profit. */
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 9", 1024 * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &z1, 20000, zero_none), 0);
	ASSERT(z1.general_profit < s.general_profit);
	proc_stop(&a);
	return 0;
}

/* RssAnon of pid, in bytes. */
static long long rss_anon(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	const char *t = strstr(file_text(path), "RssAnon:");
	ASSERT(t);
	return atoll(t + 8) * 1024;
}


/* general_profit takes what the scanner's metadata really costs: with
 * nothing to merge, it is minus about the memory the process grew by
 * beyond its pages (it counted 7 bytes a page, a ninth of it here). */
TEST_IMPL(scan_profit_counts_metadata)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose own pages change the resident count");
	struct proc a;
	proc_start(&a, fast_scan);
	long long before = rss_anon(a.pid);	/* no scanner yet: nothing asked for merging */
	proc_cmd(&a, "map 16384");	/* 64 MiB of unique pages */
	ASSERT(strcmp(proc_cmd(&a, "fill 0 16384 8"), "ok") == 0);
	md_stats s;
	passes_want = 3;
	ASSERT_EQ(proc_stats_wait(&a, &s, 30000, passes_done), 0);
	passes_want = s.full_scans + 2;	/* and a walk after those passes */
	ASSERT_EQ(proc_stats_wait(&a, &s, 30000, passes_done), 0);
	long long grown = rss_anon(a.pid) - before - 16384ll * 4096;
	fprintf(stderr, "  grown by %lld bytes beyond the pages, profit %lld\n", grown,
		(long long)s.general_profit);
	ASSERT(s.merged == 0);
	ASSERT(grown > 0);
	ASSERT(-s.general_profit >= grown / 2);
	ASSERT(-s.general_profit <= grown * 2);
	proc_stop(&a);
	return 0;
}

static int merge_rate_seen(const md_stats *s) { return s->merge_rate > 0; }
static int broken_64(const md_stats *s) { return s->scan_breaks >= 64; }

/* The rates: merges per second while the scanner merges, and merged pages
 * written per second once a reap found them. The agent's thread passed
 * twice a second, the second pass at once, whose tiny interval swallowed
 * the reap's breaks: break_rate stayed 0. */
TEST_IMPL(scan_rates)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 4096");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 2048 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 2048 1", 2048 * PG), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merge_rate_seen), 0);
	ASSERT(s.merge_rate <= 2 * s.merged);	/* per second, over half a second or more */
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_256_only), 0);
	usleep(1500000);
	for (unsigned i = 0; i < 64; i++)
		ASSERT(strcmp(proc_cmd(&a, "write %u 7", i * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 70000, broken_64), 0);
	ASSERT(s.break_rate > 0);
	proc_stop(&a);
	return 0;
}

static int filled_300(const md_stats *s) { return s->filled_pages >= 300; }

/* Memory a guest freed and poisoned with one byte (0xcc): mapped from the
 * agent's fill strip, 16 frames for all of it, counted in the statistics
 * as filled_pages; a write gives the writer its own copy. */
/* 1 if the VmFlags of the mapping of process pid holding addr has flag. */
static int vm_flag(int pid, unsigned long addr, const char *flag)
{
	char path[64], line[512];
	int in = 0, found = 0;
	snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
	FILE *f = fopen(path, "r");
	ASSERT(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = addr >= lo && addr < hi;
		} else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			char want[8];
			snprintf(want, sizeof(want), " %s", flag);
			found = strstr(line + 8, want) != NULL;
			break;
		}
	}
	fclose(f);
	return found;
}

/* With our scanner on, kernel KSM never gets the memory too, even when
 * asked to (two scanners replacing one page could lose a write); without
 * it, the advice is passed on. */
TEST_IMPL(scan_not_given_to_kernel_ksm)
{
	static const char *const scan_ksm[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_KERNEL_KSM=1", NULL };
	static const char *const ksm_only[] = { "MEMDEDUP_KERNEL_KSM=1", NULL };
	struct proc a, b;
	proc_start(&a, scan_ksm);
	proc_start(&b, ksm_only);
	unsigned long pa = strtoul(proc_cmd(&a, "map 64"), NULL, 16);
	unsigned long pb = strtoul(proc_cmd(&b, "map 64"), NULL, 16);
	ASSERT(pa && pb);
	ASSERT_EQ(vm_flag(a.pid, pa, "mg"), 0);
	ASSERT_EQ(vm_flag(b.pid, pb, "mg"), 1);
	proc_stop(&a);
	proc_stop(&b);
	return 0;
}

/* 1 if the n pages at `at` and the n at `twin`, both page `first` on of a
 * fill with seed, are pair by pair on one frame (read first: a merged page
 * is mapped, there once touched); asserts both still hold what was written
 * (one wrong frame under both would pass a frame check alone). */
static int pairs_merged_from(struct proc *a, unsigned at, unsigned twin, unsigned n,
			     unsigned seed, unsigned first)
{
	ASSERT_EQ(proc_num(a, "unfilled %u %u %u %u", at * PG, n, seed, first), 0);
	ASSERT_EQ(proc_num(a, "unfilled %u %u %u %u", twin * PG, n, seed, first), 0);
	for (unsigned i = 0; i < n; i++) {
		struct pm x = proc_page(a, (at + i) * PG), y = proc_page(a, (twin + i) * PG);
		if (!x.present || !y.present || x.pfn != y.pfn)
			return 0;
	}
	return 1;
}

static int pairs_merged(struct proc *a, unsigned at, unsigned twin, unsigned n, unsigned seed)
{
	return pairs_merged_from(a, at, twin, n, seed, 0);
}

/* Waits up to 20 s for pairs_merged. */
static int pairs_merge(struct proc *a, unsigned at, unsigned twin, unsigned n, unsigned seed)
{
	for (int t = 0; t < 400; t++, usleep(50000))
		if (pairs_merged(a, at, twin, n, seed))
			return 1;
	return 0;
}

static uint64_t breaks_want;
static int breaks_done(const md_stats *s) { return s->scan_breaks >= breaks_want; }

/* process_madvise(2) on the VMM's own memory (Linux 6.13 takes any advice
 * there): a discard of merged pages reads zeroes, as madvise's does,
 * through the C library's function and syscall(2). The kernel's own
 * zapped the pool's mapping: the page read its pool slot again, its old
 * content, and once the guest had written the page, its slot reaped and
 * reused, another page's. */
TEST_IMPL(scan_process_madvise_discard_yields_zeroes)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 512");
	long long r = proc_num(&a, "pmadvise %u %u 1 0 dontneed sym", 511 * PG, PG);
	if (r == -EINVAL || r == -ENOSYS) {
		proc_stop(&a);
		SKIP("process_madvise(MADV_DONTNEED) on its own memory needs Linux 6.13 (%lld)", r);
	}
	ASSERT_EQ(r, PG);
	/* 64 pairs: pages 0.. and 64.. */
	ASSERT(strcmp(proc_cmd(&a, "fill 0 64 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 1", 64 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 64, 64, 1));
	const char *z = hex(fnv_zero(PG));
	ASSERT(strcmp(proc_cmd(&a, "pmadvise 0 %u 1 0 dontneed sym", PG), "4096") == 0);
	ASSERT(strcmp(proc_cmd(&a, "pmadvise %u %u 1 0 dontneed raw", PG, PG), "4096") == 0);
	for (unsigned i = 0; i < 2; i++)
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", i * PG, PG), z) == 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 2 1 0", 64 * PG), 0);	/* their twins kept theirs */
	/* The other 62 pairs written, both copies; once the reap let their
	 * slots go, 62 new pairs merged, into slots those may have been. */
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	breaks_want = s.scan_breaks + 124;
	ASSERT(strcmp(proc_cmd(&a, "fill %u 62 3", 2 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 62 4", 66 * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, breaks_done), 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 62 5", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 62 5", 384 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 256, 384, 62, 5));
	char others[62][17];
	for (unsigned i = 0; i < 62; i++)
		snprintf(others[i], sizeof(others[i]), "%s", proc_cmd(&a, "hash %u %u", (256 + i) * PG, PG));
	/* Written pages discarded, one range each (the C library's) and all
	 * in one (syscall(2)). */
	ASSERT(strcmp(proc_cmd(&a, "pmadvise %u %u 62 %u dontneed sym", 2 * PG, PG, PG), "253952") == 0);
	ASSERT(strcmp(proc_cmd(&a, "pmadvise %u %u 1 0 dontneed raw", 66 * PG, 62 * PG), "253952") == 0);
	unsigned zero = 0, other = 0;
	for (unsigned i = 0; i < 128; i++) {
		if (i % 64 < 2)
			continue;
		const char *h = proc_cmd(&a, "hash %u %u", i * PG, PG);
		zero += strcmp(h, z) == 0;
		for (unsigned k = 0; k < 62; k++)
			if (strcmp(h, others[k]) == 0) {
				other++;
				break;
			}
	}
	printf("  of 124 written pages discarded: %u zero, %u another page's content\n", zero, other);
	ASSERT_EQ(other, 0);
	ASSERT_EQ(zero, 124);
	ASSERT(pairs_merged(&a, 256, 384, 62, 5));
	proc_stop(&a);
	return 0;
}

/* MADV_GUARD_INSTALL (Linux 6.13; on private file mappings, which merged
 * pages are, since 6.15) zaps its range as a discard does: once
 * MADV_GUARD_REMOVE took the guard away, merged pages read zeroes, not
 * their pool slot again, through madvise, syscall(2) and process_madvise.
 * The kernel's own zap left the pool's mapping there, empty: a read
 * faulted the slot's page back in. On a kernel without guard regions (a
 * seccomp filter says so as one would) the call is refused with nothing
 * discarded. */
TEST_IMPL(scan_guard_discard_yields_zeroes)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 512");
	long long r = proc_num(&a, "advise 0 0 guardinstall");
	if (r != 0) {
		proc_stop(&a);
		SKIP("no guard regions (MADV_GUARD_INSTALL: Linux 6.13): %lld", r);
	}
	/* 64 pairs: pages 0.. and 64.. */
	ASSERT(strcmp(proc_cmd(&a, "fill 0 64 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 1", 64 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 64, 64, 1));
	/* Pages 0, 1 and 2-9: madvise, syscall(2), one range of 8; 10 and 11
	 * through process_madvise (the C library's, syscall(2)). */
	ASSERT(strcmp(proc_cmd(&a, "advise 0 %u guardinstall", PG), "0") == 0);
	ASSERT(strcmp(proc_cmd(&a, "advise %u %u guardinstall raw", PG, PG), "0") == 0);
	ASSERT(strcmp(proc_cmd(&a, "advise %u %u guardinstall", 2 * PG, 8 * PG), "0") == 0);
	unsigned n = 12;
	r = proc_num(&a, "pmadvise %u %u 1 0 guardinstall sym", 10 * PG, PG);
	if (r == -EINVAL || r == -ENOSYS) {
		printf("  no process_madvise on its own memory (%lld)\n", r);
		n = 10;
	} else {
		ASSERT_EQ(r, PG);
		ASSERT(strcmp(proc_cmd(&a, "pmadvise %u %u 1 0 guardinstall raw", 11 * PG, PG), "4096") == 0);
	}
	ASSERT_EQ(proc_num(&a, "guarded 0 %u", n), n);
	/* Guarded pages the scanner cannot read, through passes. */
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	uint64_t passes = s.full_scans;
	for (int t = 0; t < 200 && s.full_scans < passes + 3; t++, usleep(20000))
		ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT(s.full_scans >= passes + 3);
	ASSERT_EQ(proc_num(&a, "guarded 0 %u", n), n);
	ASSERT(strcmp(proc_cmd(&a, "advise 0 %u guardremove", n * PG), "0") == 0);
	ASSERT_EQ(proc_num(&a, "guarded 0 %u", n), 0);
	const char *z = hex(fnv_zero(PG));
	for (unsigned i = 0; i < n; i++)
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", i * PG, PG), z) == 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 64 1 0", 64 * PG), 0);	/* their twins kept theirs */
	ASSERT_EQ(proc_num(&a, "unfilled %u 52 1 12", 12 * PG), 0);
	/* Without guard regions: refused, page 12 kept. */
	ASSERT_EQ(proc_num(&a, "noguard"), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u guardinstall", 12 * PG, PG), -EINVAL);
	ASSERT_EQ(proc_num(&a, "advise %u %u guardinstall raw", 12 * PG, PG), -EINVAL);
	if (n == 12)
		ASSERT_EQ(proc_num(&a, "pmadvise %u %u 1 0 guardinstall sym", 12 * PG, PG), -EINVAL);
	ASSERT_EQ(proc_num(&a, "unfilled %u 1 1 12", 12 * PG), 0);
	proc_stop(&a);
	return 0;
}

/* Starts p with the scanner at full speed, logging to test_dir()/name (a
 * fresh file: a test may start more than one), whose path goes to log. */
static void start_scan_logged(struct proc *p, const char *name, char *log, size_t size)
{
	char logenv[700];
	snprintf(log, size, "%s/%s", test_dir(), name);
	unlink(log);
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], logenv, NULL };
	proc_start(p, env);
}

static int fell_back(const md_stats *s) { return s->merge_fallbacks >= 8; }

/* A merge that falls back leaves its pages as they were, and says so: in
 * merge_fallbacks, and once in the log. Here the mapping budget (1) is
 * spent before the first merge. */
TEST_IMPL(scan_merge_fallbacks_said)
{
	char log[600], logenv[700];
	snprintf(log, sizeof(log), "%s/fallbacks.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], logenv,
			      "MEMDEDUP_MAX_VMAS=1", "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 512");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 3"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 3", 256 * PG), "ok") == 0);
	char h[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", 256 * PG));
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, fell_back), 0);
	ASSERT_EQ(s.merged, 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 256 * PG, 256 * PG), h) == 0);
	for (unsigned i = 0; i < 256; i += 17)
		ASSERT(proc_page(&a, i * PG).pfn != proc_page(&a, (256 + i) * PG).pfn);
	proc_stop(&a);
	const char *text = file_text(log);
	const char *said = strstr(text, "merges wait: the mapping budget");
	ASSERT(said && !strstr(said + 1, "merges wait: the mapping budget"));
	return 0;
}

/* Guest RAM holding 256 pairs of equal pages; `io` (a testproc command,
 * before the RAM exists when `early`, as QEMU sets up Linux AIO when it
 * opens its drives; when `reads`, given a file's descriptor, offset 0, a
 * page's length and the RAM's last page) answers `result` and is I/O the
 * agent cannot follow: nothing is merged, and the log says what stopped it.
 * A second process of the same shape, started beside it, does the same
 * without that I/O (the same read through pread, which the agent sees):
 * it merges its 256 pairs and its scanner goes twice more over its RAM,
 * the window in which the first is watched. Were the scanner not running
 * at all, or too slow for the wait, that one fails; were the first still
 * merging, its pairs would share frames by then. (Waiting a fixed 2 s for
 * "nothing merged", as it did, passed with no scanner at all.) */
static int stops_for_unseen_io(int early, int reads, const char *io, const char *result,
			       const char *said)
{
	char log[600], seenlog[600], file[600];
	snprintf(file, sizeof(file), "%s/disk", test_dir());
	static char block[PG];
	memset(block, 'd', sizeof(block));
	int fd = open(file, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	ASSERT(fd >= 0 && write(fd, block, sizeof(block)) == (ssize_t)sizeof(block));
	close(fd);
	struct proc a, b;
	start_scan_logged(&a, "unseen.log", log, sizeof(log));
	if ((strncmp(io, "uring", 5) == 0 || strncmp(io, "rawuring", 8) == 0) &&
	    proc_num(&a, "uring poll") < 0) {
		proc_stop(&a);
		SKIP("io_uring is not available here (kernel.io_uring_disabled, seccomp)");
	}
	start_scan_logged(&b, "seen.log", seenlog, sizeof(seenlog));
	if (early)
		ASSERT(strcmp(proc_cmd(&a, "%s", io), result) == 0);
	proc_cmd(&a, "map 520");
	proc_cmd(&b, "map 520");
	if (!early && reads) {
		long long vfd = proc_num(&a, "open %s", file), bfd = proc_num(&b, "open %s", file);
		ASSERT(vfd >= 0 && bfd >= 0);
		ASSERT(strcmp(proc_cmd(&a, "%s %lld 0 %u %u", io, vfd, PG, 512 * PG), result) == 0);
		ASSERT_EQ(proc_num(&b, "read %lld 0 %u %u", bfd, PG, 512 * PG), PG);
	} else if (!early) {
		ASSERT(strcmp(proc_cmd(&a, "%s", io), result) == 0);
	}
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 5"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 5", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&b, "fill 0 256 5"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&b, "fill %u 256 5", 256 * PG), "ok") == 0);
	md_stats s, sb;
	ASSERT_EQ(proc_stats_wait(&b, &sb, 20000, merged_256_only), 0);
	passes_want = sb.full_scans + 2;
	ASSERT_EQ(proc_stats_wait(&b, &sb, 20000, passes_done), 0);
	ASSERT_EQ(sb.io_unseen, 0);
	ASSERT(pairs_merged(&b, 0, 256, 256, 5));
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.merged, 0);
	ASSERT_EQ(s.pages_sharing, 0);
	ASSERT_EQ(s.io_unseen, 1);
	for (unsigned i = 0; i < 256; i++)
		ASSERT(proc_page(&a, i * PG).pfn != proc_page(&a, (256 + i) * PG).pfn);
	proc_stop(&a);
	proc_stop(&b);
	ASSERT(strstr(file_text(log), "content scanning stops merging"));
	ASSERT(strstr(file_text(log), said));
	ASSERT(!strstr(file_text(seenlog), "stops merging"));
	return 0;
}

/* 32 pairs of guest RAM merged before the VMM begins I/O the agent does
 * not see (io, answering result): the pairs are private once the call
 * returns, their content as it was. Left on the pool's page, a read-only
 * long-term pin (QEMU's RDMA migration registers with no write access, a
 * DMA map a device only reads) could take that page, and the guest's
 * next write went to a copy the device never reads: stale content sent. */
static int unmerged_for_unseen_io(const char *io, const char *result)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 64");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 32 6"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 32 6", 32 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 32, 32, 6));
	ASSERT(strcmp(proc_cmd(&a, "%s", io), result) == 0);
	for (unsigned i = 0; i < 32; i++) {
		struct pm x = proc_page(&a, i * PG), y = proc_page(&a, (32 + i) * PG);
		ASSERT(x.present && y.present && x.pfn != y.pfn);
	}
	ASSERT_EQ(proc_num(&a, "unfilled 0 32 6 0"), 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 32 6 0", 32 * PG), 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.io_unseen, 1);
	ASSERT_EQ(s.merge_fallbacks, 0);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(scan_unmerges_for_rdma)
{
	char io[700];
	snprintf(io, sizeof(io), "rdma %s/libibverbs-stub.so ro", build_dir());
	return unmerged_for_unseen_io(io, "0");
}

TEST_IMPL(scan_unmerges_for_device_dma)
{
	return unmerged_for_unseen_io("vfio", "-9");
}

/* A line of /proc/meminfo, in kB, or -1. */
static long meminfo_kb(const char *key)
{
	const char *t = file_text("/proc/meminfo"), *at = t ? strstr(t, key) : NULL;
	return at ? strtol(at + strlen(key), NULL, 10) : -1;
}

/* MADV_COLLAPSE over merged guest RAM: the pool's pages (shmem, shared by
 * every process of the domain) are not made huge, whatever the host's
 * shmem_enabled says (at never, they were: ShmemHugePages grew); the
 * VMM's anonymous memory around them is asked, and its answer is the
 * call's. */
TEST_IMPL(scan_collapse_leaves_pool_pages)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 4096 huge");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 1024 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 1024 1", 2048 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 1024 2", 1024 * PG), "ok") == 0);	/* unique */
	ASSERT(pairs_merge(&a, 0, 2048, 1024, 1));
	/* The kernel's collapse of the pool's pages may fail for a while
	 * (the scanner reading them holds them): the call reaching them is
	 * seen where it starts, the pool's mapping of pages 0.. (EXDEV). */
	ASSERT_EQ(proc_num(&a, "collapsewatch 0"), 0);
	long before = meminfo_kb("ShmemHugePages:");
	long long r = proc_num(&a, "collapse 0 %u", 4096 * PG);
	long after = meminfo_kb("ShmemHugePages:");
	printf("  MADV_COLLAPSE: %lld, ShmemHugePages %ld -> %ld kB\n", r, before, after);
	/* The VMM's parts are the scanner's userfaultfd's, which the kernel
	 * does not collapse (EINVAL), as on a kernel without it. */
	ASSERT(r == 0 || r == -EINVAL || r == -EAGAIN || r == -EBUSY);
	ASSERT(before >= 0 && after <= before);
	ASSERT(pairs_merged(&a, 0, 2048, 1024, 1));
	ASSERT_EQ(proc_num(&a, "unfilled %u 1024 2 0", 1024 * PG), 0);
	proc_stop(&a);
	return 0;
}

/* MADV_COLLAPSE and MADV_WIPEONFORK over a range that wraps past the top of
 * the address space (the kernel answers EINVAL) ended a plain call that had
 * not begun: the count of calls in flight went below zero, and the next
 * registration (MADV_MERGEABLE) waited for it to come back to zero, for
 * ever, under the agent's lock (the session's diff review). */
TEST_IMPL(scan_wrapping_advice_keeps_agent)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 64");
	long long top = (long long)(UINTPTR_MAX - 4095 - a.base);
	ASSERT_EQ(proc_num(&a, "collapse %lld 8192", top), -EINVAL);
	ASSERT_EQ(proc_num(&a, "wipe %lld 8192", top), -EINVAL);
	/* Registered, answered (a hang is the runner's timeout), merged. */
	proc_cmd(&a, "map 128");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 64 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 1", 64 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 64, 64, 1));
	proc_stop(&a);
	return 0;
}

/* A private agent's 512 pages: pages 0-63 twins of 64-127 (seed 1), 256-319
 * of 320-383 (seed 2), both merged. */
static void merged_twin_groups(struct proc *a)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	proc_start(a, env);
	proc_cmd(a, "map 512");
	ASSERT(strcmp(proc_cmd(a, "fill 0 64 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(a, "fill %u 64 1", 64 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(a, "fill %u 64 2", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(a, "fill %u 64 2", 320 * PG), "ok") == 0);
	ASSERT(pairs_merge(a, 0, 64, 64, 1));
	ASSERT(pairs_merge(a, 256, 320, 64, 2));
}

/* MADV_WIPEONFORK takes only private anonymous memory: over merged guest
 * RAM (the pool's private file mappings) it failed with EINVAL, where the
 * VMM's own memory takes it. The merged pages are made anonymous with
 * their content first, and the range given up (a merge there would map
 * the pool again, and a child would read it, not zeroes); the rest merges
 * on. */
TEST_IMPL(scan_wipeonfork_over_merged_ram)
{
	struct proc a;
	merged_twin_groups(&a);
	ASSERT_EQ(proc_num(&a, "wipe 0 %u", 128 * PG), 0);
	ASSERT_EQ(proc_num(&a, "unfilled 0 64 1 0"), 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 64 1 0", 64 * PG), 0);
	for (unsigned i = 0; i < 128; i++) {
		struct pm p = proc_page(&a, i * PG);
		ASSERT(p.present && !p.file);
	}
	ASSERT(pairs_merged(&a, 256, 320, 64, 2));
	/* The same through process_madvise on itself (Linux 6.13), which
	 * passed it to the kernel (EINVAL over the pool's mappings). */
	long long r = proc_num(&a, "pmadvise %u %u 1 0 wipeonfork sym", 256 * PG, 128 * PG);
	if (r != -EINVAL || proc_num(&a, "pmadvise 0 0 1 0 dontneed sym") == 0) {
		ASSERT_EQ(r, 128 * PG);
		ASSERT_EQ(proc_num(&a, "unfilled %u 64 2 0", 256 * PG), 0);
		for (unsigned i = 256; i < 384; i++)
			ASSERT(!proc_page(&a, i * PG).file);
	}
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 3", 384 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 3", 448 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 384, 448, 64, 3));
	proc_stop(&a);
	return 0;
}

/* MADV_WIPEONFORK over the VMM's own private file mapping in guest RAM (a
 * memory backend with share=off): its pages are file pages to the engine
 * too, but no pool's; they are the VMM's, left as without us. The call
 * fails (EINVAL), no anonymous copy is made, and a page never written
 * through the mapping still shows the file's later change (it was copied
 * into anonymous memory, the call passing, the change unseen). */
TEST_IMPL(scan_wipeonfork_leaves_vmm_file)
{
	struct proc a;
	char path[96];
	merged_twin_groups(&a);
	snprintf(path, sizeof(path), "/dev/shm/memdedup-test-wipe-%d", (int)getpid());
	int w = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ASSERT(w >= 0);
	int fd = (int)proc_num(&a, "open %s rw", path);
	unlink(path);
	ASSERT(fd >= 0);
	char page[PG];
	memset(page, 0x5a, sizeof(page));
	ASSERT(pwrite(w, page, PG, 0) == (ssize_t)PG);
	ASSERT(ftruncate(w, 16 * PG) == 0);
	ASSERT_EQ(proc_num(&a, "mapfile %u %u %d", 480 * PG, 16 * PG, fd), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 480 * PG, 16 * PG), 0);
	const char *z = hex(fnv_zero(PG));
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 481 * PG, PG), z) == 0);
	ASSERT_EQ(proc_num(&a, "wipe %u %u", 480 * PG, 16 * PG), -EINVAL);
	ASSERT(proc_page(&a, 481 * PG).file);
	memset(page, 0x77, sizeof(page));
	ASSERT(pwrite(w, page, PG, PG) == (ssize_t)PG);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 481 * PG, PG), z) != 0);
	close(w);
	ASSERT(pairs_merged(&a, 0, 64, 64, 1));
	proc_stop(&a);
	return 0;
}

/* n pages of guest RAM in the VMM's own private file mapping (a memory
 * backend with share=off: a memfd, no two pages alike, nothing to merge),
 * registered with a scanning agent of its own. */
static unsigned char *vmm_file_ram(md_agent **a, int *fd, size_t n)
{
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = "private",
			       .pages_to_scan = 1000, .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	*fd = memfd_create("vmm-ram", MFD_CLOEXEC);
	ASSERT(*fd >= 0);
	unsigned char page[PG];
	for (size_t i = 0; i < n; i++) {
		memset(page, 0xab, sizeof(page));
		page[0] = (unsigned char)i;
		ASSERT(pwrite(*fd, page, PG, (off_t)(i * PG)) == (ssize_t)PG);
	}
	unsigned char *m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, *fd, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(*a, m, n * PG, 0), 0);
	return m;
}

/* A discard of guest RAM in the VMM's own private file mapping shows its
 * file again, as without the agent: the engine took its pages for file
 * pages of its own, a pool's, and mapped anonymous zeroes over them
 * (review). Pages the VMM wrote too. */
TEST_IMPL(scan_discard_leaves_vmm_file)
{
	md_agent *a;
	const size_t n = 16;
	int fd;
	unsigned char page[PG], *m = vmm_file_ram(&a, &fd, n);
	m[2 * PG + 100] = 7;	/* a private copy of its own */
	ASSERT_EQ(md_agent_madvise_discard(a, m + PG, 2 * PG, MADV_DONTNEED), 0);
	for (size_t i = 0; i < n; i++) {
		ASSERT(pread(fd, page, PG, (off_t)(i * PG)) == (ssize_t)PG);
		ASSERT(memcmp(m + i * PG, page, PG) == 0);
	}
	md_agent_free(a);
	munmap(m, n * PG);
	close(fd);
	return 0;
}

/* An unmerge, and I/O the agent cannot follow, make the pages that map a
 * pool's private copies: the VMM's own file's pages are no pool's, and
 * stay its file's (a change to the file shows in guest RAM, as without the
 * agent), not copied nor counted as shared (review). */
static void vmm_file_left_by(int io_unseen)
{
	md_agent *a;
	const size_t n = 16;
	int fd;
	unsigned char page[PG], *m = vmm_file_ram(&a, &fd, n);
	(void)*(volatile unsigned char *)(m + 3 * PG);	/* read: the file's page, mapped */
	if (io_unseen)
		md_agent_io_unseen(a, "test: io_uring reads");
	else
		ASSERT_EQ(md_agent_unmerge(a), 0);
	ASSERT(self_pagemap(m + 3 * PG) & (1ull << 61));	/* still the file's page */
	memset(page, 0x77, sizeof(page));
	ASSERT(pwrite(fd, page, PG, 3 * PG) == (ssize_t)PG);	/* the file changes */
	ASSERT(memcmp(m + 3 * PG, page, PG) == 0);
	md_agent_free(a);
	munmap(m, n * PG);
	close(fd);
}

TEST_IMPL(scan_unmerge_leaves_vmm_file)
{
	vmm_file_left_by(0);
	vmm_file_left_by(1);
	return 0;
}

/* Guest RAM given up (MADV_UNMERGEABLE) keeps its pages shared from an
 * image as private copies in the image's mappings; advised again, it is
 * guest RAM again, and a discard there reads zeroes, as it did before it
 * was given up, not the image's pages: those mappings are the agent's,
 * not a file of the VMM's own, which a discard leaves to the kernel. */
TEST_IMPL(scan_discard_after_advised_again_yields_zeroes)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/again.img", test_dir());
	make_image(img, 1 << 20, 17);
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 2048");
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, 1u << 20), 1 << 20);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", 2048 * PG), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u mergeable", 2048 * PG), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontneed", 16 * PG), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 16 * PG), hex(fnv_zero(16 * PG))) == 0);
	proc_stop(&a);
	return 0;
}

/* The same rule where a mapping's device is not stat's: on btrfs a file
 * mapped names the superblock's device, stat the subvolume's. An image's
 * mapping was taken for a file of the VMM's own there, and a discard of
 * its copies read the image (a review, on a btrfs loop mount). Faked with
 * another device number. */
TEST_IMPL(scan_image_file_found_by_inode)
{
	char img[512], *m;
	snprintf(img, sizeof(img), "%s/subvol.img", test_dir());
	make_image(img, 16 * PG, 18);
	md_agent *a;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = "private" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	m = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, m, 16 * PG, 0), 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	struct stat st;
	ASSERT_EQ(fstat(fd, &st), 0);
	md__agent_enter(a);
	int as_stat = a->engine->agent_file(a->engine->agent_file_arg, st.st_dev, st.st_ino);
	int other_dev = a->engine->agent_file(a->engine->agent_file_arg, st.st_dev + 1, st.st_ino);
	int other_ino = a->engine->agent_file(a->engine->agent_file_arg, st.st_dev, st.st_ino + 1);
	md__agent_leave(a);
	ASSERT(as_stat && other_dev && !other_ino);
	md_agent_free(a);
	close(fd);
	munmap(m, 16 * PG);
	return 0;
}

/* MADV_WIPEONFORK over fresh merged ranges whose twins lie outside them,
 * the scanner kept busy merging elsewhere: the merged pages were moved
 * into anonymous memory with the engine's locks let go before the
 * unregister, and a scanner's batch in between could merge them back
 * (their twins keep the slot in the index); the unregister then made
 * them private in place, in the pool's mapping still, and the advice
 * failed (EINVAL): 5 to 12 calls of 16 a run. Each call must succeed. */
TEST_IMPL(scan_wipeonfork_races_merges)
{
	const char *env[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_PAGES_TO_SCAN=16384", "MEMDEDUP_SLEEP_MS=1",
			      "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 32768");
	int failed = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	unsigned k;
	for (k = 0; k < 16; k++) {
		/* Twins at 512k, the range at 8192 + 512k (many runs to move:
		 * the scanner reads the first moved while the last move); the
		 * churn (pages 16384-32767, 8192 twins of new content each
		 * time) keeps its batches long. */
		unsigned seed = 100 + k, at = 8192 + 512 * k;
		ASSERT(strcmp(proc_cmd(&a, "fill %u 512 %u", 512 * k * PG, seed), "ok") == 0);
		ASSERT(strcmp(proc_cmd(&a, "fill %u 512 %u", at * PG, seed), "ok") == 0);
		ASSERT(pairs_merge(&a, 512 * k, at, 512, seed));
		ASSERT(strcmp(proc_cmd(&a, "fill %u 8192 %u", 16384 * PG, 1000 + k), "ok") == 0);
		ASSERT(strcmp(proc_cmd(&a, "fill %u 8192 %u", 24576 * PG, 1000 + k), "ok") == 0);
		usleep(1000 * (k % 8));
		long long r = proc_num(&a, "wipe %u %u", at * PG, 512 * PG);
		failed += r != 0;
		ASSERT(r == 0 || r == -EINVAL);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (t1.tv_sec - t0.tv_sec > 8)
			break;
	}
	printf("  %d of %u calls failed\n", failed, k);
	ASSERT_EQ(failed, 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 512 %u 0", 8192 * PG, 100), 0);
	proc_stop(&a);
	return 0;
}

/* MADV_WIPEONFORK and mseal over RAM given up before (MADV_UNMERGEABLE):
 * its copies stayed in the pool's private file mappings, where the advice
 * failed with EINVAL and, sealed, a discard failed with EPERM and kept the
 * page's content; they are moved into anonymous memory with it first. */
TEST_IMPL(scan_wipeonfork_over_given_up_ram)
{
	struct proc a;
	merged_twin_groups(&a);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", 512 * PG), 0);
	ASSERT_EQ(proc_num(&a, "wipe 0 %u", 128 * PG), 0);
	ASSERT_EQ(proc_num(&a, "unfilled 0 64 1 0"), 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 64 1 0", 64 * PG), 0);
	long long r = proc_num(&a, "seal %u %u", 256 * PG, 128 * PG);
	if (r != -ENOSYS && r != -EPERM) {
		ASSERT_EQ(r, 0);
		ASSERT_EQ(proc_num(&a, "unfilled %u 64 2 0", 256 * PG), 0);
		ASSERT_EQ(proc_num(&a, "advise %u %u dontneed", 256 * PG, PG), 0);
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 256 * PG, PG), hex(fnv_zero(PG))) == 0);
		ASSERT_EQ(proc_num(&a, "unfilled %u 63 2 1", 257 * PG), 0);
	}
	proc_stop(&a);
	return 0;
}

/* The same move while the VMM's threads write the pages: a write racing
 * the copy waits for it (write-protected meanwhile) and lands in the new
 * page; none is lost. */
TEST_IMPL(scan_wipeonfork_over_given_up_ram_keeps_writes)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 2048");
	for (unsigned k = 0; k < 4; k++) {
		ASSERT(strcmp(proc_cmd(&a, "fill %u 64 %u", 512 * k * PG, k + 1), "ok") == 0);
		ASSERT(strcmp(proc_cmd(&a, "fill %u 64 %u", (512 * k + 64) * PG, k + 1), "ok") == 0);
		ASSERT(pairs_merge(&a, 512 * k, 512 * k + 64, 64, k + 1));
	}
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", 2048 * PG), 0);
	for (unsigned k = 0; k < 4; k++) {
		const char *r = proc_cmd(&a, "writewipe 4 80 %u %u %u", 512 * k * PG, 128 * PG, 5 * k * k);
		printf("  after %u ms: %s\n", 5 * k * k, r);
		ASSERT(strcmp(r, "0 ok") == 0);
	}
	proc_stop(&a);
	return 0;
}

static int own_pool_empty(const md_stats *s) { return s->pool_pages == 0 && s->pages_sharing == 0; }

/* A child sharing our memory (CLONE_VM|CLONE_VFORK, posix_spawn's) is no
 * fork: the agent stays the parent's, and a discard of merged pages still
 * reads zeroes, not their pool slot (vm_child_keeps_agent). */
TEST_IMPL(scan_vm_child_keeps_agent)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 64");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 16 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 16 1", 16 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 16, 16, 1));
	ASSERT_EQ(proc_num(&a, "vmchild clone"), 0);
	ASSERT_EQ(proc_num(&a, "vmchild sys"), 0);
	ASSERT_EQ(proc_num(&a, "vmchild clone3"), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontneed", 16 * PG), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 16 * PG), hex(fnv_zero(16 * PG))) == 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 16 1 0", 16 * PG), 0);
	proc_stop(&a);
	return 0;
}

/* A fork() of guest RAM that is not MADV_DONTFORK, its pages merged in
 * the process's own pool: the child ran plain, mapping the pool's slots
 * with no reference of its own, and once the parent wrote both copies of
 * a pair the slot it let go was punched (or reused) under the child,
 * which read zeroes (review). The parent's merged pages are made private
 * copies first: the child's are its own, and the parent's reap gives the
 * slots back as for pages written. */
TEST_IMPL(scan_fork_child_keeps_merged_pages)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	md_stats s;
	proc_start(&a, env);
	proc_cmd(&a, "map 512");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 128 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 1", 128 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 128, 128, 1));
	/* MADV_DONTFORK over the rest alone: the record takes the bit, but
	 * a fork still copies pages 0-255 (review: they were skipped). */
	ASSERT_EQ(proc_num(&a, "advise %u %u dontfork", 256 * PG, 256 * PG), 0);
	ASSERT(proc_num(&a, "forkkeep") > 0);
	/* Both copies of every pair written: the slots are let go, and the
	 * pool punches them within a second. */
	ASSERT(strcmp(proc_cmd(&a, "fill 0 128 2"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 3", 128 * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 30000, own_pool_empty), 0);
	usleep(2500000);
	for (unsigned at = 0; at < 256; at += 128) {
		const char *r = proc_cmd(&a, "kid unfilled %u 128 1 0", at * PG);
		printf("  the child's pages at %u not as written: %s of 128\n", at, r);
		ASSERT(strcmp(r, "0") == 0);
	}
	ASSERT(strcmp(proc_cmd(&a, "kid quit"), "0") == 0);
	ASSERT_EQ(proc_num(&a, "unfilled 0 128 2 0"), 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 128 3 0", 128 * PG), 0);
	/* And the parent merges again what it makes equal. */
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 3", 256 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 128, 256, 128, 3));
	proc_stop(&a);
	return 0;
}

/* Guest RAM advised MADV_DONTFORK, then MADV_DOFORK over part of it: the
 * kernel's call reached the pool's mappings made before, which the fork
 * then copied as they were. */
TEST_IMPL(scan_fork_after_partial_dofork_keeps_pages)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	md_stats s;
	proc_start(&a, env);
	proc_cmd(&a, "map 512");
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontfork", 512 * PG), 0);
	ASSERT(strcmp(proc_cmd(&a, "fill 0 128 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 1", 128 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 128, 128, 1));
	ASSERT_EQ(proc_num(&a, "advise 0 %u dofork", 256 * PG), 0);
	ASSERT(proc_num(&a, "forkkeep") > 0);
	ASSERT(strcmp(proc_cmd(&a, "fill 0 128 2"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 3", 128 * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 30000, own_pool_empty), 0);
	usleep(2500000);
	for (unsigned at = 0; at < 256; at += 128) {
		const char *r = proc_cmd(&a, "kid unfilled %u 128 1 0", at * PG);
		printf("  the child's pages at %u not as written: %s of 128\n", at, r);
		ASSERT(strcmp(r, "0") == 0);
	}
	ASSERT(strcmp(proc_cmd(&a, "kid quit"), "0") == 0);
	proc_stop(&a);
	return 0;
}

/* Guest RAM advised MADV_DONTFORK over part of it (or all of it, then
 * MADV_DOFORK over part), merged only after: a fork copies the part the
 * VMM did not keep from it, the pages the agent mapped there included.
 * The region's record took DONTFORK whole, so did those mappings, and the
 * child died of SIGSEGV reading them (review). */
static void merged_after_partial_fork_advice(int undo)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 512");
	if (undo) {
		ASSERT_EQ(proc_num(&a, "advise 0 %u dontfork", 512 * PG), 0);
		ASSERT_EQ(proc_num(&a, "advise %u %u dofork", 256 * PG, 256 * PG), 0);
	} else {
		ASSERT_EQ(proc_num(&a, "advise 0 %u dontfork", 256 * PG), 0);
	}
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 1", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 1", 384 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 256, 384, 64, 1));
	ASSERT(proc_num(&a, "forkkeep") > 0);
	const char *r = proc_cmd(&a, "kid unfilled %u 64 1 0", 256 * PG);
	printf("  the child's merged pages not as written: %s of 64\n", r);
	ASSERT(strcmp(r, "0") == 0);
	ASSERT(strcmp(proc_cmd(&a, "kid quit"), "0") == 0);
	proc_stop(&a);
}

TEST_IMPL(scan_fork_after_partial_dontfork_merges_later)
{
	merged_after_partial_fork_advice(0);
	merged_after_partial_fork_advice(1);
	return 0;
}

/* The same fork with memory short for the copies (a cgroup's limit below
 * the 64 MiB kept spare): the fork is made all the same, as without us,
 * the parent's pages left merged; counted in fork_shared each time, and
 * said once. */
TEST_IMPL(scan_fork_short_of_memory_said)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg))
		SKIP("no memory cgroup of our own to be had here");
	char log[600], logenv[700];
	snprintf(log, sizeof(log), "%s/fork.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", logenv, NULL };
	struct proc a;
	md_stats s;
	proc_start(&a, env);
	proc_cmd(&a, "map 512");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 128 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 1", 128 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 128, 128, 1));
	ASSERT_EQ(cgroup_limit(&cg, 40ull << 20), 0);
	ASSERT_EQ(cgroup_enter(&cg, a.pid), 0);
	for (int k = 0; k < 2; k++) {
		ASSERT(proc_num(&a, "forkkeep") > 0);
		ASSERT(strcmp(proc_cmd(&a, "kid unfilled 0 128 1 0"), "0") == 0);
		ASSERT(strcmp(proc_cmd(&a, "kid quit"), "0") == 0);
	}
	ASSERT(pairs_merged(&a, 0, 128, 128, 1));
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.fork_shared, 2);
	proc_stop(&a);
	const char *want = "forked with guest RAM not MADV_DONTFORK whose pages shared from the pool or an "
			   "image could not all be made its own first (memory short for the copies)";
	const char *told = strstr(file_text(log), want);
	ASSERT(told && !strstr(told + 1, want));
	return 0;
}

/* mseal(2) (Linux 6.10) over merged guest RAM: a discard of a sealed
 * private file mapping (a merged page's) fails with EPERM and keeps its
 * content, where the VMM's own sealed memory reads zeroes. The merged
 * pages are made anonymous and the range given up before the seal (no
 * merge could map there after it anyway); the rest merges on. */
TEST_IMPL(scan_seal_over_merged_ram)
{
	struct proc a;
	merged_twin_groups(&a);
	long long r = proc_num(&a, "seal 0 %u", 128 * PG);
	if (r == -ENOSYS || r == -EPERM) {
		proc_stop(&a);
		SKIP("no mseal here (Linux 6.10, seccomp): %lld", r);
	}
	ASSERT_EQ(r, 0);
	ASSERT_EQ(proc_num(&a, "unfilled 0 64 1 0"), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontneed", 2 * PG), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u dontneed raw", 64 * PG, PG), 0);
	const char *z = hex(fnv_zero(PG));
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", PG), z) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", PG, PG), z) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 64 * PG, PG), z) == 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 62 1 2", 2 * PG), 0);
	ASSERT(pairs_merged(&a, 256, 320, 64, 2));
	proc_stop(&a);
	return 0;
}

/* A library loaded with RTLD_DEEPBIND, or into a namespace of its own
 * (dlmopen), calls the C library past the agent (its madvise, munmap,
 * pread): merging stops for good, as for I/O the agent does not see. */
TEST_IMPL(scan_stops_for_deepbind)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose runtime refuses RTLD_DEEPBIND (google/sanitizers#611)");
	char io[700];
	const char *how[] = { "deep", "ns" };
	for (int i = 0; i < 2; i++) {
		snprintf(io, sizeof(io), "dlopen %s %s/libdeepbind-stub.so", how[i], build_dir());
		int r = stops_for_unseen_io(0, 0, io, "0", "(dlopen with RTLD_DEEPBIND, or dlmopen)");
		if (r)
			return r;
	}
	return 0;
}

/* A userfaultfd of the VMM's that registered nothing may still act on
 * guest RAM the scanner's registered (Linux 6.18 asks only that the
 * mapping be registered, with any): taking off the protection of a page
 * frozen for a merge, filling a page it dropped. The range is given up
 * first, its merged pages made private with their content, and the
 * kernel answers as without the agent (nothing registered: ENOENT). */
TEST_IMPL(scan_gives_ram_to_vmm_userfault_ops)
{
	char log[600];
	struct proc a;
	start_scan_logged(&a, "uffdops.log", log, sizeof(log));
	proc_cmd(&a, "map 512");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 64 3"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 3", 64 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 4", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 4", 320 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 64, 64, 3));
	ASSERT(pairs_merge(&a, 256, 320, 64, 4));
	ASSERT_EQ(proc_num(&a, "uffdop wp 0 %u", 64 * PG), -ENOENT);
	ASSERT_EQ(proc_num(&a, "uffdop zero %u %u", 128 * PG, 8 * PG), -ENOENT);
	ASSERT_EQ(proc_num(&a, "uffdop copy %u %u", 256 * PG, PG), -ENOENT);
	for (unsigned i = 0; i < 64; i += 5)
		ASSERT(proc_page(&a, i * PG).pfn != proc_page(&a, (64 + i) * PG).pfn);
	ASSERT_EQ(proc_num(&a, "unfilled 0 64 3 0"), 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 64 4 0", 256 * PG), 0);
	ASSERT(pairs_merged_from(&a, 257, 321, 63, 4, 1));	/* the rest is the scanner's still */
	/* UFFDIO_MOVE takes its pages from src: that range is given up too,
	 * its content kept, not only dst's. */
	ASSERT(proc_num(&a, "uffdop move %u %u %u", 200 * PG, 8 * PG, 340 * PG) < 0);
	for (unsigned i = 0; i < 8; i++)
		ASSERT(proc_page(&a, (340 + i) * PG).pfn != proc_page(&a, (276 + i) * PG).pfn);
	ASSERT_EQ(proc_num(&a, "unfilled %u 8 4 20", 340 * PG), 0);
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "acts on guest RAM"));
	return 0;
}

static uint64_t merged_want;
static int merged_enough(const md_stats *s) { return s->merged >= merged_want; }
static int nothing_sharing(const md_stats *s) { return s->pages_sharing == 0; }

/* Locked memory (QEMU's -overcommit mem-lock=on is mlockall(MCL_CURRENT |
 * MCL_FUTURE)): the kernel fills a locked private mapping by write faults
 * the moment it is mapped, so a merge there is a private copy at once (the
 * pages "merged" and counted, none shared), and the mapping replacing the
 * page is not locked by a range's mlock. Locked RAM is left alone. */
TEST_IMPL(scan_locked_memory_not_merged)
{
	char log[600];
	struct proc a, b;
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose mlock and mlockall lock nothing and never reach the agent");

	/* All of it locked before the RAM is mapped: none registered. */
	start_scan_logged(&a, "mlockall.log", log, sizeof(log));
	ASSERT_EQ(proc_num(&a, "mlockall both"), 0);
	proc_cmd(&a, "map 512");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 1", 256 * PG), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.regions, 0);
	ASSERT_EQ(s.registered_bytes, 0);
	ASSERT_EQ(proc_num(&a, "vmflag 0 lo"), 1);
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "is locked in memory"));

	/* Merged first, then a range locked: made private before the lock,
	 * and nothing merged there again; the rest still is. */
	start_scan_logged(&b, "mlock.log", log, sizeof(log));
	proc_cmd(&b, "map 1536");
	ASSERT(strcmp(proc_cmd(&b, "fill 0 256 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&b, "fill %u 256 1", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&b, "fill %u 512 2", 512 * PG), "ok") == 0);	/* unique */
	ASSERT_EQ(proc_stats_wait(&b, &s, 20000, merged_256_only), 0);
	ASSERT(pairs_merged(&b, 0, 256, 256, 1));
	char h[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&b, "hash 0 %u", 512 * PG));
	ASSERT_EQ(proc_num(&b, "mlock 0 %u", 511 * PG + 1), 0);	/* to the end of page 511 */
	for (unsigned i = 0; i < 256; i++) {
		struct pm x = proc_page(&b, i * PG), y = proc_page(&b, (256 + i) * PG);
		ASSERT(x.present && y.present && !x.file && !y.file && x.pfn != y.pfn);
	}
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", 512 * PG), h) == 0);
	/* The gauge follows the agent's walks, seconds apart. */
	ASSERT_EQ(proc_stats_wait(&b, &s, 20000, nothing_sharing), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)1024 * PG);
	/* New duplicates in the locked range and, as a control that the
	 * scanner goes on, in the rest. */
	uint64_t before = s.merged;
	ASSERT(strcmp(proc_cmd(&b, "fill 0 128 7"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&b, "fill %u 128 7", 128 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&b, "fill %u 128 9", 512 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&b, "fill %u 128 9", 640 * PG), "ok") == 0);
	merged_want = before + 128;
	ASSERT_EQ(proc_stats_wait(&b, &s, 20000, merged_enough), 0);
	passes_want = s.full_scans + 2;
	ASSERT_EQ(proc_stats_wait(&b, &s, 20000, passes_done), 0);
	ASSERT_EQ(s.merged, before + 128);
	for (unsigned i = 0; i < 128; i++)
		ASSERT(proc_page(&b, i * PG).pfn != proc_page(&b, (128 + i) * PG).pfn);
	ASSERT(pairs_merged(&b, 512, 640, 128, 9));
	ASSERT_EQ(proc_num(&b, "vmflag 0 lo"), 1);
	ASSERT_EQ(proc_num(&b, "vmflag %u lo", 511 * PG), 1);
	proc_stop(&b);
	ASSERT(strstr(file_text(log), "locks guest RAM in memory (mlock)"));
	return 0;
}

/* mlockall(MCL_CURRENT) over RAM merged already (a VMM locking once it is
 * up): the kernel's locking would make every page a copy behind the
 * agent's back, its records still naming pool pages. Guest RAM is given
 * up first, as for mlock: unregistered, private, its content kept
 * (scan_locked_memory_not_merged tests mlockall before the RAM). */
TEST_IMPL(scan_lock_all_gives_up_merged)
{
	char log[600];
	struct proc a;
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose mlock and mlockall lock nothing and never reach the agent");
	start_scan_logged(&a, "mlockall-current.log", log, sizeof(log));
	proc_cmd(&a, "map 512");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 1", 256 * PG), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_256_only), 0);
	ASSERT(pairs_merged(&a, 0, 256, 256, 1));
	char h[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", 512 * PG));
	ASSERT_EQ(proc_num(&a, "mlockall current"), 0);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, 0);
	for (unsigned i = 0; i < 256; i++) {
		struct pm x = proc_page(&a, i * PG), y = proc_page(&a, (256 + i) * PG);
		ASSERT(x.present && y.present && !x.file && !y.file && x.pfn != y.pfn);
	}
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 512 * PG), h) == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, nothing_sharing), 0);
	ASSERT_EQ(proc_num(&a, "vmflag 0 lo"), 1);
	ASSERT_EQ(proc_num(&a, "munlockall"), 0);
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "the VMM locks guest RAM in memory (mlockall"));
	return 0;
}

/* The lock on memory mapped later ends as the kernel's does: with
 * munlockall, or with an mlockall(MCL_CURRENT) alone. Guest RAM the VMM
 * maps after either is registered again; a lock kept in the agent's mind
 * refused it for good. */
TEST_IMPL(scan_lock_all_ended_registers_later_ram)
{
	struct proc a;
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose mlock and mlockall lock nothing and never reach the agent");
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 16");	/* the agent starts */
	ASSERT_EQ(proc_num(&a, "mlockall both"), 0);
	ASSERT_EQ(proc_num(&a, "munlockall"), 0);
	proc_cmd(&a, "map 64");
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)64 * PG);
	ASSERT_EQ(proc_num(&a, "mlockall current"), 0);	/* gives up the 64 pages */
	proc_cmd(&a, "map 32");
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)32 * PG);
	ASSERT_EQ(proc_num(&a, "munlockall"), 0);
	proc_stop(&a);
	return 0;
}

/* Guest RAM the VMM makes read-only (or gives a protection key): the
 * mappings a merge or a discard puts there are read-write, and would make
 * it writable again behind the VMM's back. It is made private and given
 * up, until the VMM asks for merging there again. */
TEST_IMPL(scan_protected_memory_given_up)
{
	char log[600];
	struct proc a;
	start_scan_logged(&a, "protect.log", log, sizeof(log));
	proc_cmd(&a, "map 1024");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 1", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 512 2", 512 * PG), "ok") == 0);	/* unique */
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_256_only), 0);
	ASSERT(pairs_merged(&a, 0, 256, 256, 1));
	char h[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", 512 * PG));
	ASSERT_EQ(proc_num(&a, "protect 0 %u ro", 512 * PG), 0);
	ASSERT(strcmp(proc_cmd(&a, "perms 0"), "r--p") == 0);
	ASSERT(strcmp(proc_cmd(&a, "perms %u", 511 * PG), "r--p") == 0);
	for (unsigned i = 0; i < 256; i++)
		ASSERT(proc_page(&a, i * PG).pfn != proc_page(&a, (256 + i) * PG).pfn);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 512 * PG), h) == 0);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)512 * PG);
	/* Asked for merging while read-only: refused, the duplicates stay
	 * apart and the memory read-only. */
	ASSERT_EQ(proc_num(&a, "advise 0 %u mergeable", 512 * PG), 0);
	passes_want = s.full_scans + 2;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, passes_done), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)512 * PG);
	ASSERT(strcmp(proc_cmd(&a, "perms 0"), "r--p") == 0);
	for (unsigned i = 0; i < 256; i++)
		ASSERT(proc_page(&a, i * PG).pfn != proc_page(&a, (256 + i) * PG).pfn);
	/* Writable again, duplicates there: not merged (nor is the rest's
	 * control pair missed); merged once advised mergeable again. */
	ASSERT_EQ(proc_num(&a, "protect 0 %u rw", 512 * PG), 0);
	ASSERT(strcmp(proc_cmd(&a, "fill 0 128 7"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 7", 128 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 9", 512 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 9", 640 * PG), "ok") == 0);
	uint64_t before = s.merged;
	merged_want = before + 128;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_enough), 0);
	passes_want = s.full_scans + 2;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, passes_done), 0);
	ASSERT_EQ(s.merged, before + 128);
	ASSERT(proc_page(&a, 8 * PG).pfn != proc_page(&a, 136 * PG).pfn);
	ASSERT_EQ(proc_num(&a, "advise 0 %u mergeable", 512 * PG), 0);
	merged_want = before + 256;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_enough), 0);
	ASSERT(pairs_merged(&a, 0, 128, 128, 7));
	/* Executable as well: the mappings put there would not be. */
	ASSERT_EQ(proc_num(&a, "protect 0 %u %d", 128 * PG, PROT_READ | PROT_WRITE | PROT_EXEC), 0);
	for (unsigned i = 0; i < 128; i++)
		ASSERT(proc_page(&a, i * PG).pfn != proc_page(&a, (128 + i) * PG).pfn);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)896 * PG);
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "changes the protection of guest RAM (mprotect)"));
	ASSERT(strstr(file_text(log), "is not readable and writable only: not merged"));
	return 0;
}

/* An mbind the kernel refuses as a whole (a node that is not there) binds
 * nothing, and the VMM's earlier policy there stays: pages mapped there
 * later (a read shared at read time) still get it. The refused call
 * erased the agent's record of it. */
TEST_IMPL(refused_mbind_keeps_policy)
{
	struct proc a;
	char img[600];
	snprintf(img, sizeof(img), "%s/image", test_dir());
	make_image(img, 1 << 20, 12);
	proc_start(&a, NULL);
	proc_cmd(&a, "map 1024");
	if (proc_num(&a, "policy 0") < 0) {
		proc_stop(&a);
		SKIP("this kernel has no NUMA policies (CONFIG_NUMA)");
	}
	ASSERT_EQ(proc_num(&a, "mbind 0 %u sym", 512 * PG), 0);
	ASSERT_EQ(proc_num(&a, "mbind 0 %u sym bad", 512 * PG), -EINVAL);
	ASSERT_EQ(proc_num(&a, "policy %u", 130 * PG), MPOL_BIND);	/* the kernel's: kept */
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u", fd, 64 * PG, 128 * PG), 64 * PG);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 64);
	ASSERT_EQ(proc_num(&a, "policy %u", 130 * PG), MPOL_BIND);	/* given with the mapping */
	proc_stop(&a);
	return 0;
}

/* QEMU binds a memory backend to host nodes (host-nodes=, policy=bind)
 * with mbind after its MADV_MERGEABLE. The kernel keeps the policy with the
 * mapping: the anonymous memory a discard puts over guest RAM, and the
 * image pages a read shares, must be given it again, or the guest's writes
 * there are allocated on any node. Memory mapped anew in a bound range has
 * no policy, and gets none. Pool pages are not given it: a mapping of
 * shared memory takes its policy from the file, for every process that
 * maps those pages (a kernel rule), and their copies are made in place. */
TEST_IMPL(scan_keeps_numa_policy)
{
	struct proc a;
	char img[600];
	snprintf(img, sizeof(img), "%s/image", test_dir());
	make_image(img, 1 << 20, 11);
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 1536");
	if (proc_num(&a, "policy 0") < 0) {
		proc_stop(&a);
		SKIP("this kernel has no NUMA policies (CONFIG_NUMA)");
	}
	ASSERT_EQ(proc_num(&a, "mbind 0 %u sys", 512 * PG), 0);	/* through syscall(2) */
	ASSERT_EQ(proc_num(&a, "mbind %u %u sym", 512 * PG, 512 * PG), 0);	/* libnuma's symbol */
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 1", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 4", 512 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 4", 1024 * PG), "ok") == 0);	/* not bound */
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 5", 1152 * PG), "ok") == 0);	/* unique */
	md_stats s;
	merged_want = 384;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_enough), 0);
	ASSERT(pairs_merged(&a, 0, 256, 256, 1));
	ASSERT(pairs_merged(&a, 512, 1024, 128, 4));
	ASSERT_EQ(proc_num(&a, "policy %u", 1200 * PG), MPOL_DEFAULT);	/* never bound */
	ASSERT_EQ(proc_num(&a, "policy %u", 1040 * PG), MPOL_DEFAULT);	/* the pool's, untouched */
	/* The VMM binding merged pages again: not through the pool's
	 * mappings, which would bind the pool's pages for every process
	 * (the twins at 1024, never bound, would show it). */
	ASSERT_EQ(proc_num(&a, "mbind %u %u sym", 512 * PG, 128 * PG), 0);
	ASSERT_EQ(proc_num(&a, "policy %u", 1040 * PG), MPOL_DEFAULT);
	ASSERT_EQ(proc_num(&a, "policy %u", 700 * PG), MPOL_BIND);
	/* Discarded, merged pages: anonymous memory over them, bound. */
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontneed", 16 * PG), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u dontneed", 512 * PG, 16 * PG), 0);
	ASSERT_EQ(proc_num(&a, "policy 0"), MPOL_BIND);
	ASSERT_EQ(proc_num(&a, "policy %u", 515 * PG), MPOL_BIND);
	/* A read shared at read time: image pages mapped, bound. */
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u", fd, 64 * PG, 768 * PG), 64 * PG);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 64);
	ASSERT_EQ(proc_num(&a, "policy %u", 770 * PG), MPOL_BIND);	/* given with the mapping */
	/* An image kept in shared memory (tmpfs): its pages mapped at read
	 * time are not bound, which would bind the file for everyone. */
	char shm[64];
	snprintf(shm, sizeof(shm), "/dev/shm/memdedup-test-%d", (int)getpid());
	make_image(shm, 1 << 20, 12);
	int mfd = open(shm, O_RDONLY);
	int sfd = (int)proc_num(&a, "open %s", shm);
	unlink(shm);	/* gone with the last descriptor, whatever happens */
	ASSERT(mfd >= 0 && sfd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u", sfd, 64 * PG, 896 * PG), 64 * PG);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 128);
	void *view = mmap(NULL, 64 * PG, PROT_READ, MAP_SHARED, mfd, 0);
	ASSERT(view != MAP_FAILED);
	int mode = -1;
	ASSERT_EQ(syscall(SYS_get_mempolicy, &mode, NULL, 0ul, view, (unsigned long)MPOL_F_ADDR), 0);
	munmap(view, 64 * PG);
	close(mfd);
	ASSERT_EQ(mode, MPOL_DEFAULT);
	/* Fresh memory where bound memory was: discarded after a merge, and
	 * left unbound. */
	ASSERT_EQ(proc_num(&a, "unmap %u %x", 512 * PG, 128 * PG), 0);
	ASSERT_EQ(proc_num(&a, "remap %u 128", 512 * PG), 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 4", 512 * PG), "ok") == 0);
	merged_want = s.merged + 128;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_enough), 0);
	ASSERT(pairs_merged(&a, 512, 1024, 128, 4));
	ASSERT_EQ(proc_num(&a, "advise %u %u dontneed", 600 * PG, 4 * PG), 0);
	ASSERT_EQ(proc_num(&a, "policy %u", 600 * PG), MPOL_DEFAULT);
	ASSERT_EQ(proc_num(&a, "policy %u", 700 * PG), MPOL_BIND);
	proc_stop(&a);
	return 0;
}

/* aio=native: Linux AIO set up, before the RAM. */
TEST_IMPL(scan_stops_for_unseen_io)
{
	return stops_for_unseen_io(1, 0, "iosetup", "0", "set up Linux AIO");
}

/* aio=io_uring: a read submitted through liburing into guest RAM. */
TEST_IMPL(scan_stops_for_uring_reads)
{
	return stops_for_unseen_io(0, 1, "uring read", "4096", "submitted reads or writes through io_uring");
}

/* The same read through syscall(2) and the kernel's ring layout (Rust's
 * io-uring crate: Cloud Hypervisor's block devices), no liburing: not
 * judged, any entry submitted so stops merging. */
TEST_IMPL(scan_stops_for_raw_uring_reads)
{
	return stops_for_unseen_io(0, 1, "rawuring read", "4096", "submitted io_uring entries through syscall(2)");
}

/* A ring the kernel's own thread polls: no call to judge its entries at. */
TEST_IMPL(scan_stops_for_sqpoll)
{
	return stops_for_unseen_io(0, 0, "rawuring sqpoll", "0", "whose entries the kernel polls (SQPOLL)");
}

/* Memory registered with an RDMA adapter (QEMU's RDMA migration calls
 * ibv_reg_mr_iova2, its pvrdma device, up to QEMU 9.0, ibv_reg_mr): pinned. A stand-in
 * library answers; "0" shows the call reached it. */
TEST_IMPL(scan_stops_for_rdma)
{
	char io[700];
	const char *how[] = { "", "iova2", "rereg" };	/* rereg: a region moved onto it */
	for (int i = 0; i < 3; i++) {
		snprintf(io, sizeof(io), "rdma %s/libibverbs-stub.so %s", build_dir(), how[i]);
		int r = stops_for_unseen_io(0, 0, io, "0", "registered memory with an RDMA adapter");
		if (r)
			return r;
	}
	return 0;
}

/* Buffers registered with a ring (fixed buffers) stay pinned. */
TEST_IMPL(scan_stops_for_uring_buffers)
{
	return stops_for_unseen_io(0, 0, "uring register", "0", "registered buffers with io_uring (pinned)");
}

/* A device given memory for DMA through VFIO (the ioctl need not succeed:
 * the agent stops before it). */
TEST_IMPL(scan_stops_for_device_dma)
{
	return stops_for_unseen_io(0, 0, "vfio", "-9", "gave a device memory for DMA");
}

/* A vhost-vdpa device (its set-up ioctls; the kernel's vhost-net ones do
 * not count). */
TEST_IMPL(scan_stops_for_vdpa)
{
	return stops_for_unseen_io(0, 0, "vdpa", "-9", "for DMA (VFIO, iommufd or vhost-vdpa)");
}

/* A zero-copy send of guest RAM (QEMU's multifd migration with
 * zero-copy-send=on) pins its pages until sent: through the C library and
 * through syscall(2). Without SO_ZEROCOPY the flag does nothing, and
 * merging goes on. */
TEST_IMPL(scan_stops_for_zerocopy_send)
{
	struct proc a;
	md_stats s;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 16");
	ASSERT_EQ(proc_num(&a, "zcsend off"), PG);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.io_unseen, 0);
	proc_stop(&a);
	int err = stops_for_unseen_io(0, 0, "zcsend raw", "4096", "sends with MSG_ZEROCOPY");
	/* sendto's flags are its fourth argument, not sendmsg's third. */
	err = err ? err : stops_for_unseen_io(0, 0, "zcsend rawto", "4096", "sends with MSG_ZEROCOPY");
	return err ? err : stops_for_unseen_io(0, 0, "zcsend", "4096", "sends with MSG_ZEROCOPY");
}

/* Guest RAM of 512 pages: 64 pairs merged (pages 0.. and 64..), then the
 * other 62 pairs written, both copies, their slots reaped, and 62 new
 * pairs merged (256.. and 384..) into slots those may have had. The
 * testproc command `discard` makes for an offset and a length, answering
 * `ok`, of page 0 (merged, unwritten) and of the 124
 * written pages (two calls): they read zeroes, none another page's
 * content (their pool slot again), and the new pairs stay merged. Set-up
 * first when `setup` (a command answering 0 or a negative errno; a
 * missing feature is a skip). */
typedef void discard_cmd_fn(char *cmd, size_t size, unsigned off, unsigned len);

static int written_merged_discarded(const char *setup, discard_cmd_fn *discard, const char *ok)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 512");
	if (setup) {
		long long r = proc_num(&a, "%s", setup);
		if (r == -ENOSYS || r == -EINVAL) {
			proc_stop(&a);
			SKIP("%s: %lld", setup, r);
		}
		ASSERT_EQ(r, 0);
	}
	ASSERT(strcmp(proc_cmd(&a, "fill 0 64 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 1", 64 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 64, 64, 1));
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	breaks_want = s.scan_breaks + 124;
	ASSERT(strcmp(proc_cmd(&a, "fill %u 62 3", 2 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 62 4", 66 * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, breaks_done), 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 62 5", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 62 5", 384 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 256, 384, 62, 5));
	char others[62][17], cmd[200];
	for (unsigned i = 0; i < 62; i++)
		snprintf(others[i], sizeof(others[i]), "%s", proc_cmd(&a, "hash %u %u", (256 + i) * PG, PG));
	const char *z = hex(fnv_zero(PG));
	discard(cmd, sizeof(cmd), 0, PG);
	ASSERT(strcmp(proc_cmd(&a, "%s", cmd), ok) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", PG), z) == 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u 1 1 0", 64 * PG), 0);	/* its twin kept its own */
	discard(cmd, sizeof(cmd), 2 * PG, 62 * PG);
	ASSERT(strcmp(proc_cmd(&a, "%s", cmd), ok) == 0);
	discard(cmd, sizeof(cmd), 66 * PG, 62 * PG);
	ASSERT(strcmp(proc_cmd(&a, "%s", cmd), ok) == 0);
	unsigned zero = 0, other = 0;
	for (unsigned i = 0; i < 128; i++) {
		if (i % 64 < 2)
			continue;
		const char *h = proc_cmd(&a, "hash %u %u", i * PG, PG);
		zero += strcmp(h, z) == 0;
		for (unsigned k = 0; k < 62; k++)
			if (strcmp(h, others[k]) == 0) {
				other++;
				break;
			}
	}
	printf("  %s: of 124 written pages discarded, %u zero, %u another page's content\n", cmd, zero, other);
	ASSERT_EQ(other, 0);
	ASSERT_EQ(zero, 124);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	if (s.io_unseen) {
		/* A discard the agent cannot see (io_uring's) made every
		 * merged page private before it went on: content kept. */
		ASSERT_EQ(proc_num(&a, "unfilled %u 62 5 0", 256 * PG), 0);
		ASSERT_EQ(proc_num(&a, "unfilled %u 62 5 0", 384 * PG), 0);
		ASSERT(!pairs_merged(&a, 256, 384, 62, 5));
	} else {
		ASSERT(pairs_merged(&a, 256, 384, 62, 5));
	}
	proc_stop(&a);
	return 0;
}

/* A MADVISE entry submitted through liburing (the kernel's zap, on a
 * worker, unseen) discards merged pages as madvise() does: zeroes, not
 * their pool slot again (its old content, or another page's once reused). */
static void uring_dontneed(char *cmd, size_t size, unsigned off, unsigned len)
{
	snprintf(cmd, size, "uring dontneed 0 0 %u %u", len, off);
}

TEST_IMPL(scan_uring_discard_yields_zeroes)
{
	return written_merged_discarded(NULL, uring_dontneed, "0");
}

static void uring_dontneed64(char *cmd, size_t size, unsigned off, unsigned len)
{
	snprintf(cmd, size, "uring dontneed64 0 0 %u %u", len, off);
}

/* The same with the length in the entry's 64-bit off (Linux 6.5's
 * io_uring_prep_madvise64), its 32-bit len 0. A kernel before takes no
 * off there (EINVAL, asked of a process of its own: its first entry
 * stops merging): a skip. */
TEST_IMPL(scan_uring_discard64_yields_zeroes)
{
	struct proc a;
	proc_start(&a, NULL);
	proc_cmd(&a, "map 16");
	long long r = proc_num(&a, "uring dontneed64 0 0 %u 0", PG);
	proc_stop(&a);
	if (r == -EINVAL || r == -ENOSYS || r == -EPERM)
		SKIP("io_uring MADVISE with a 64-bit length: %lld", r);
	ASSERT_EQ(r, 0);
	return written_merged_discarded(NULL, uring_dontneed64, "0");
}

static void posix_dontneed_locked(char *cmd, size_t size, unsigned off, unsigned len)
{
	snprintf(cmd, size, "posixadvise %u %u %d", off, len, MADV_DONTNEED_LOCKED);
}

/* glibc's posix_madvise makes its own system call: its advice other than
 * POSIX_MADV_DONTNEED (which glibc ignores) reaches the kernel, and
 * MADV_DONTNEED_LOCKED there discards merged pages as madvise() must:
 * zeroes. POSIX_MADV_DONTNEED still changes nothing, and a refusal is the
 * error number returned, errno kept. */
TEST_IMPL(scan_posix_madvise_discard_yields_zeroes)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 16");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 4 7"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "posixadvise 0 %u %d", PG, POSIX_MADV_DONTNEED), "0") == 0);
	ASSERT_EQ(proc_num(&a, "unfilled 0 4 7 0"), 0);
	ASSERT(strcmp(proc_cmd(&a, "posixadvise 0 %u 12345", PG), "22") == 0);	/* EINVAL */
	proc_stop(&a);
	return written_merged_discarded(NULL, posix_dontneed_locked, "0");
}

static int merged_512(const md_stats *s) { return s->merged >= 512; }
static int merged_384(const md_stats *s) { return s->merged >= 384 && s->zero_pages >= 64; }

/* The VMM's own userfaultfd over guest RAM (QEMU's postcopy migration
 * registers it for missing pages; the scanner's registration made that
 * fail with EBUSY): the agent gives the range up first, its merged pages
 * made private with their content, the zero pages it dropped put back (a
 * page not there is one still to come for postcopy, which waited for it
 * forever), and merges there no more. A page the VMM discarded is its
 * own hole, left as it is. */
/* An image of 16 pages opened read-only in a: its descriptor there. */
static long long open_test_image(struct proc *a)
{
	char file[600];
	static char block[16 * PG];
	snprintf(file, sizeof(file), "%s/image", test_dir());
	memset(block, 'i', sizeof(block));
	int fd = open(file, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	ASSERT(fd >= 0 && write(fd, block, sizeof(block)) == (ssize_t)sizeof(block));
	close(fd);
	long long vfd = proc_num(a, "open %s", file);
	ASSERT(vfd >= 0);
	return vfd;
}

/* 1 if a read of the image into the 16 pages from page `at` was copied
 * there, not shared at read time (no mapping of the image's). */
static int read_copied(struct proc *a, long long vfd, unsigned at)
{
	ASSERT_EQ(proc_num(a, "read %lld 0 %u %u", vfd, 16 * PG, at * PG), 16 * PG);
	proc_cmd(a, "hash %u %u", at * PG, 16 * PG);
	for (unsigned i = 0; i < 16; i++) {
		struct pm x = proc_page(a, (at + i) * PG);
		if (!x.present || x.file)
			return 0;
	}
	return 1;
}

/* After a handover to the VMM's userfaultfd, n new pairs of equal pages in
 * RAM still ours (pages at.. and twin.., fill seed; discarded first, as a
 * guest's freed memory, else pages merged there would wait for a reap to
 * be seen written) merge, and the scanner then goes at least twice over
 * the registered RAM: the window in which what the VMM holds must stay
 * unmerged. Were the scanner stopped by the handover, nothing here would
 * merge; were it merging there still, the pairs given up (merged in a pass
 * or two before) would be merged again by then. A fixed sleep, as it was,
 * proved neither. */
static void merges_beside_handover(struct proc *a, unsigned at, unsigned twin, unsigned n, unsigned seed)
{
	ASSERT_EQ(proc_num(a, "advise %u %u dontneed", at * PG, n * PG), 0);
	ASSERT_EQ(proc_num(a, "advise %u %u dontneed", twin * PG, n * PG), 0);
	ASSERT(strcmp(proc_cmd(a, "fill %u %u %u", at * PG, n, seed), "ok") == 0);
	ASSERT(strcmp(proc_cmd(a, "fill %u %u %u", twin * PG, n, seed), "ok") == 0);
	int merged = 0;
	for (int t = 0; t < 400 && !(merged = pairs_merged(a, at, twin, n, seed)); t++)
		usleep(50000);
	ASSERT(merged);
	/* Passes after they merged: the file lags up to a second, so from
	 * the first count written since. */
	md_stats s;
	ASSERT_EQ(proc_stats(a, &s), 0);
	passes_want = s.full_scans + 1;
	ASSERT_EQ(proc_stats_wait(a, &s, 20000, passes_done), 0);
	passes_want = s.full_scans + 2;
	ASSERT_EQ(proc_stats_wait(a, &s, 20000, passes_done), 0);
	ASSERT(pairs_merged(a, at, twin, n, seed));
}

TEST_IMPL(scan_gives_ram_to_vmm_userfault)
{
	char log[600];
	struct proc a;
	start_scan_logged(&a, "uffd.log", log, sizeof(log));
	proc_cmd(&a, "map 1024");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 3"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 3", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 5", 512 * PG), "ok") == 0);	/* unique */
	ASSERT(strcmp(proc_cmd(&a, "zero %u 64", 576 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 4", 640 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 4", 768 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 6", 896 * PG), "ok") == 0);	/* unique */
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_384), 0);
	ASSERT(pairs_merged(&a, 0, 256, 256, 3));
	for (unsigned i = 0; i < 64; i++)
		ASSERT(!proc_page(&a, (576 + i) * PG).present);	/* dropped */
	ASSERT_EQ(proc_num(&a, "advise %u %u dontneed", 600 * PG, 8 * PG), 0);
	/* Pages the VMM's userfaultfd would wait for are never read here. */
	char h[32], h2[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", 576 * PG));
	snprintf(h2, sizeof(h2), "%s", proc_cmd(&a, "hash %u %u", 640 * PG, 320 * PG));

	/* The merged pairs, the unique pages and the dropped zero pages go to
	 * the VMM's userfaultfd. */
	ASSERT_EQ(proc_num(&a, "uffd 0 %u missing", 640 * PG), 0);
	for (unsigned i = 0; i < 64; i++)
		ASSERT_EQ(proc_page(&a, (576 + i) * PG).present, i < 24 || i >= 32);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 576 * PG), h) == 0);
	/* Pages 960-1023, untouched so far, are still the scanner's. */
	merges_beside_handover(&a, 960, 992, 32, 7);
	for (unsigned i = 0; i < 256; i++) {
		struct pm x = proc_page(&a, i * PG), y = proc_page(&a, (256 + i) * PG);
		ASSERT(x.present && y.present && !x.file && !y.file && x.pfn != y.pfn);
	}
	for (unsigned i = 0; i < 64; i++)
		ASSERT(proc_page(&a, (512 + i) * PG).present);
	ASSERT_EQ(proc_num(&a, "uffd %u %u wp", 896 * PG, 64 * PG), 0);
	/* The rest is the scanner's still. */
	ASSERT(pairs_merged(&a, 640, 768, 128, 4));
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 576 * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 640 * PG, 320 * PG), h2) == 0);
	/* Write-protection (a background snapshot) takes merged pages too,
	 * made private in the pool's mapping. */
	ASSERT_EQ(proc_num(&a, "uffd %u %u wp", 640 * PG, 256 * PG), 0);
	for (unsigned i = 0; i < 128; i += 7)
		ASSERT(proc_page(&a, (640 + i) * PG).pfn != proc_page(&a, (768 + i) * PG).pfn);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 576 * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 640 * PG, 320 * PG), h2) == 0);
	/* Advised again, it stays the VMM's: a mapping of ours there (a read
	 * shared at read time, here) would drop the VMM's registration. */
	long long vfd = open_test_image(&a);
	ASSERT_EQ(proc_num(&a, "advise 0 %u mergeable", 1024 * PG), 0);
	ASSERT(read_copied(&a, vfd, 512));
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "its own userfaultfd"));
	return 0;
}

static uint64_t merged_want;
static int merged_wanted(const md_stats *s) { return s->merged >= merged_want; }

/* Once the VMM's userfaultfd lets go of guest RAM (a background snapshot
 * or a postcopy migration is over: UFFDIO_UNREGISTER), or the kernel
 * refuses its registration, the scanner takes it back and merges there
 * again; a part still registered stays the VMM's, and a part advised
 * unmergeable meanwhile stays unmerged (the rest of it does not). */
/* A registration of the VMM's that the kernel refuses because guest RAM
 * holds pages shared from an image (no userfaultfd covers a disk file's
 * mapping): the RAM taken back was registered again as a whole, which
 * failed the same way, and the scanner lost it for good. */
TEST_IMPL(scan_takes_ram_back_beside_image)
{
	char log[600];
	struct proc a;
	start_scan_logged(&a, "uffd-image.log", log, sizeof(log));
	proc_cmd(&a, "map 1024");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 3"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 3", 256 * PG), "ok") == 0);
	long long vfd = open_test_image(&a);
	ASSERT_EQ(proc_num(&a, "read %lld 0 %u %u", vfd, 16 * PG, 960 * PG), 16 * PG);
	proc_cmd(&a, "hash %u %u", 960 * PG, 16 * PG);
	ASSERT(!read_copied(&a, vfd, 960));	/* shared at read time */
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_256_only), 0);
	char h[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", 1024 * PG));
	ASSERT_EQ(proc_num(&a, "uffd 0 %u wp", 1024 * PG), -EINVAL);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1024 * PG), h) == 0);
	merged_want = s.merged + 256;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_wanted), 0);
	ASSERT(pairs_merged(&a, 0, 256, 256, 3));
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1024 * PG), h) == 0);
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "pages shared from a disk image"));
	return 0;
}

TEST_IMPL(scan_takes_ram_back_from_vmm_userfault)
{
	char log[600];
	struct proc a;
	start_scan_logged(&a, "uffd-end.log", log, sizeof(log));
	proc_cmd(&a, "map 1024");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 3"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 3", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 4", 512 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 4", 768 * PG), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_512), 0);
	char h[32], hhi[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", 1024 * PG));
	snprintf(hhi, sizeof(hhi), "%s", proc_cmd(&a, "hash %u %u", 512 * PG, 512 * PG));
	/* A registration the kernel refuses: the RAM, given up first, is
	 * taken back at once, and what was made private merges again. */
	ASSERT_EQ(proc_num(&a, "uffd 0 %u bad", 512 * PG), -EINVAL);
	merged_want = s.merged + 256;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_wanted), 0);
	ASSERT(pairs_merged_from(&a, 7, 263, 1, 3, 7));
	ASSERT_EQ(proc_num(&a, "uffd 0 %u wp", 1024 * PG), 0);
	for (unsigned i = 0; i < 256; i += 5)
		ASSERT(proc_page(&a, i * PG).pfn != proc_page(&a, (256 + i) * PG).pfn);
	/* An unregistration the kernel refuses (a length off the pages)
	 * lets go of nothing: the RAM stays the VMM's. */
	ASSERT_EQ(proc_num(&a, "uffdoff 0 %u", 512 * PG + 1), -EINVAL);
	/* The first half let go of, the second still the VMM's. */
	ASSERT_EQ(proc_num(&a, "uffdoff 0 %u", 512 * PG), 0);
	merged_want = s.merged + 256;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_wanted), 0);
	ASSERT(pairs_merged(&a, 0, 256, 256, 3));
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1024 * PG), h) == 0);
	/* New pairs in the half taken back (pages 0-31 and 256-287, the
	 * pairs they held still pairs) merge while the half the VMM holds
	 * stays unmerged. */
	merges_beside_handover(&a, 0, 256, 32, 8);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 512 * PG, 512 * PG), hhi) == 0);
	for (unsigned i = 0; i < 256; i++) {
		struct pm x = proc_page(&a, (512 + i) * PG), y = proc_page(&a, (768 + i) * PG);
		ASSERT(x.present && y.present && x.pfn != y.pfn);
	}
	/* A registration over both halves that the kernel refuses takes back
	 * what it gave up (the first half), not the half the VMM still
	 * holds: a read there is copied, not shared (a mapping of ours would
	 * drop the VMM's registration). */
	long long vfd = open_test_image(&a);
	ASSERT_EQ(proc_num(&a, "uffd 0 %u bad", 1024 * PG), -EINVAL);
	merged_want = s.merged + 256;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_wanted), 0);
	ASSERT(pairs_merged_from(&a, 9, 265, 1, 8, 9));
	ASSERT(read_copied(&a, vfd, 512));
	/* Advised again meanwhile, the part still registered is refused,
	 * also after it was advised unmergeable in between; advised
	 * unmergeable, it is not taken back when the VMM lets go. */
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 512 * PG, 512 * PG), 0);
	ASSERT(read_copied(&a, vfd, 528));
	ASSERT_EQ(proc_num(&a, "advise %u %u unmergeable", 512 * PG, 512 * PG), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 512 * PG, 512 * PG), 0);
	ASSERT(read_copied(&a, vfd, 544));
	/* A part advised unmergeable is not taken back when the VMM lets go;
	 * the rest is, and merges again, with the middle of that part
	 * advised mergeable once more (pages 512-575 now hold the image's
	 * content, read above). */
	ASSERT_EQ(proc_num(&a, "advise %u %u unmergeable", 512 * PG, 128 * PG), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 576 * PG, 16 * PG), 0);
	ASSERT_EQ(proc_num(&a, "uffdoff %u %u", 512 * PG, 512 * PG), 0);
	ASSERT(read_copied(&a, vfd, 560));
	merged_want = s.merged + 128 + 16;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_wanted), 0);
	ASSERT(pairs_merged_from(&a, 640, 896, 128, 4, 128));
	ASSERT(pairs_merged_from(&a, 576, 832, 16, 4, 64));
	for (unsigned i = 80; i < 128; i += 5)
		ASSERT(proc_page(&a, (512 + i) * PG).pfn != proc_page(&a, (768 + i) * PG).pfn);
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "merged again"));
	return 0;
}

/* RAM the VMM's userfaultfd holds that moves elsewhere (mremap) is no
 * longer held where it was (the kernel drops the registration from a moved
 * mapping): fresh memory mapped there merges; the part that did not move
 * is still held (a read there is copied, not shared). */
TEST_IMPL(scan_forgets_vmm_hold_on_moved_ram)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 1024");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 3"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 3", 256 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 512 5", 512 * PG), "ok") == 0);	/* unique */
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_256_only), 0);
	ASSERT_EQ(proc_num(&a, "uffd %u %u wp", 512 * PG, 512 * PG), 0);
	ASSERT_EQ(proc_num(&a, "move %u 128", 896 * PG), 0);
	ASSERT_EQ(proc_num(&a, "remap %u 128", 896 * PG), 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 128 3", 896 * PG), "ok") == 0);
	merged_want = s.merged + 128;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_wanted), 0);
	ASSERT(pairs_merged(&a, 896, 0, 128, 3));
	long long vfd = open_test_image(&a);
	ASSERT(read_copied(&a, vfd, 800));
	proc_stop(&a);
	return 0;
}

/* RAM the VMM's userfaultfd holds, whose move the kernel refuses, still
 * asks for merging: merged again once the VMM lets go (review: the
 * refused move had marked the hold opted out for good). */
TEST_IMPL(scan_refused_move_keeps_vmm_hold_mergeable)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 1024");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 3"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 3", 256 * PG), "ok") == 0);
	ASSERT(pairs_merge(&a, 0, 256, 256, 3));
	ASSERT_EQ(proc_num(&a, "uffd 0 %u wp", 1024 * PG), 0);	/* handed to the VMM */
	ASSERT(!pairs_merged(&a, 0, 256, 256, 3));
	ASSERT_EQ(proc_num(&a, "overmove 0 1024"), -EINVAL);
	ASSERT_EQ(proc_num(&a, "uffdoff 0 %u", 1024 * PG), 0);	/* let go: taken back */
	ASSERT(pairs_merge(&a, 0, 256, 256, 3));
	proc_stop(&a);
	return 0;
}

/* MADV_MERGEABLE over a range that wraps is the kernel's EINVAL, not a
 * success with nothing registered (review). */
TEST_IMPL(scan_mergeable_wrapping_range_refused)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 64");
	ASSERT_EQ(proc_num(&a, "advise 0 %lld mergeable", (long long)(UINTPTR_MAX - a.base + 8193)), -EINVAL);
	proc_stop(&a);
	return 0;
}

static int registered_all(const md_stats *s) { return s->registered_bytes == 1024 * PG; }

/* Guest RAM the VMM moves (mremap) keeps its advice where it goes, and
 * stays registered there: unregistered before the move and never again,
 * its pages were no longer shared at read time nor merged. */
TEST_IMPL(scan_moved_ram_stays_registered)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 1024");
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, registered_all), 0);
	ASSERT(strcmp(proc_cmd(&a, "fill 0 64 3"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 64 3", 64 * PG), "ok") == 0);
	ASSERT_EQ(proc_num(&a, "move 0 128"), 0);	/* the twins move, together */
	ASSERT_EQ(proc_num(&a, "remap 0 128"), 0);	/* fresh memory where they were */
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, 1152 * PG);	/* the moved 128 pages too */
	merged_want = s.merged + 64;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_enough), 0);	/* merged where they went */
	proc_stop(&a);
	return 0;
}

static int zero_64(const md_stats *s) { return s->zero_pages >= 64; }

/* Memory that stops asking for merging (MADV_UNMERGEABLE) gets back the
 * zero pages the scanner dropped: a userfaultfd for missing pages the VMM
 * registers there later would take them for pages still to come. */
TEST_IMPL(scan_unmergeable_fills_dropped)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 256");
	ASSERT(strcmp(proc_cmd(&a, "zero 0 64"), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, zero_64), 0);
	unsigned there = 64;
	for (int t = 0; t < 200 && there; t++) {	/* all dropped */
		there = 0;
		for (unsigned i = 0; i < 64; i++)
			there += proc_page(&a, i * PG).present;
		if (there)
			usleep(100000);
	}
	ASSERT_EQ(there, 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", 256 * PG), 0);
	for (unsigned i = 0; i < 64; i++)
		ASSERT(proc_page(&a, i * PG).present);
	ASSERT_EQ(proc_num(&a, "uffd 0 %u missing", 64 * PG), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 64 * PG), hex(fnv_zero(64 * PG))) == 0);
	proc_stop(&a);
	return 0;
}

static int filled_64_no_zero(const md_stats *s) { return s->filled_pages >= 64 && s->zero_pages == 0; }

/* Zero pages dropped, then poisoned by the guest (freed memory filled with
 * one byte): mapped from a fill strip, and no longer counted as zero pages
 * (they were, for good, beside the fill pages). */
TEST_IMPL(scan_dropped_then_poisoned)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 256");
	ASSERT(strcmp(proc_cmd(&a, "zero 0 64"), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, zero_64), 0);
	ASSERT(strcmp(proc_cmd(&a, "poison 0 64 204"), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, filled_64_no_zero), 0);
	proc_stop(&a);
	return 0;
}

/* A VMM whose allocator gives memory back with madvise (jemalloc,
 * tcmalloc, mimalloc): our own free()s under the agent's or the engine's
 * locks came back into the agent through it and waited for its lock for
 * good. They go to the kernel plainly; the VMM's own still go through. */
/* A testproc whose allocator discards (freemadvise how), with 512 pages
 * merged and their hash in h; -ENOSYS under AddressSanitizer. */
static int start_merged_freemadvise(struct proc *a, const char *how, char *h, size_t hsize)
{
	md_stats s;
	proc_start(a, fast_scan);
	if (proc_num(a, "freemadvise %s", how) == -ENOSYS) {
		proc_stop(a);
		return -ENOSYS;
	}
	proc_cmd(a, "map 1024");
	proc_cmd(a, "fill 0 512 5");
	proc_cmd(a, "fill %u 512 5", 512 * PG);
	ASSERT_EQ(proc_stats_wait(a, &s, 20000, merged_512), 0);
	snprintf(h, hsize, "%s", proc_cmd(a, "hash 0 %u", 1024 * PG));
	return 0;
}

TEST_IMPL(scan_allocator_madvise_no_deadlock)
{
	struct proc a;
	char h[32];
	if (start_merged_freemadvise(&a, "", h, sizeof(h)))
		SKIP("under AddressSanitizer, whose free() the testproc cannot replace");
	/* The region goes (its records freed), its pages made private. */
	ASSERT(strcmp(proc_cmd(&a, "advise 0 %u unmergeable", 1024 * PG), "0") == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1024 * PG), h) == 0);
	proc_stop(&a);
	return 0;
}

/* An allocator that holds its own lock across the madvise it gives memory
 * back with (tcmalloc): a thread of the VMM waited there for the agent's
 * lock while the agent, holding it, waited for the allocator's to allocate
 * (registering and giving up guest RAM allocate under it). Memory none of
 * the agent's now goes to the kernel without the agent's lock. */
TEST_IMPL(scan_allocator_lock_no_deadlock)
{
	struct proc a;
	char h[32];
	if (start_merged_freemadvise(&a, "locked", h, sizeof(h)))
		SKIP("under AddressSanitizer, whose allocator the testproc cannot replace");
	ASSERT_EQ(proc_num(&a, "allocstorm 4000"), 0);
	for (int i = 0; i < 300; i++) {
		unsigned off = (unsigned)(i % 8) * 64 * PG;
		ASSERT_EQ(proc_num(&a, "advise %u %u unmergeable", off, 64 * PG), 0);
		ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", off, 64 * PG), 0);
	}
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1024 * PG), h) == 0);
	proc_stop(&a);
	return 0;
}

/* Kernel KSM over the whole process (prctl PR_SET_MEMORY_MERGE, which
 * systemd's MemoryKSM=yes sets before exec) would merge the pages our
 * scanner freezes: turned off when the scanner starts, and not passed on
 * while it runs. Without the scanner, the VMM's call goes through. */
TEST_IMPL(scan_turns_off_kernel_merge_any)
{
	/* The kernel walks every mapping when merge-any goes off, the
	 * sanitizer's terabytes of shadow too: 94-126 s (the timeout is 120). */
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose shadow takes the kernel minutes to walk");
	struct proc a, b;
	proc_start(&a, fast_scan);
	long long set = proc_num(&a, "mergeany rawset 1");	/* before the agent, as from exec */
	if (set == -EINVAL) {
		proc_stop(&a);
		SKIP("no prctl PR_SET_MEMORY_MERGE here (Linux 6.4)");
	}
	ASSERT_EQ(set, 0);
	ASSERT_EQ(proc_num(&a, "mergeany get"), 1);
	proc_cmd(&a, "map 64");	/* the agent and its scanner start */
	ASSERT_EQ(proc_num(&a, "mergeany get"), 0);
	ASSERT_EQ(proc_num(&a, "mergeany set 1"), 0);
	ASSERT_EQ(proc_num(&a, "mergeany get"), 0);
	ASSERT_EQ(proc_num(&a, "mergeany rawset 1"), 0);	/* syscall(2), as a VMM may */
	ASSERT_EQ(proc_num(&a, "mergeany get"), 0);
	proc_stop(&a);
	proc_start(&b, NULL);
	proc_cmd(&b, "map 64");
	ASSERT_EQ(proc_num(&b, "mergeany set 1"), 0);
	ASSERT_EQ(proc_num(&b, "mergeany get"), 1);
	ASSERT_EQ(proc_num(&b, "mergeany set 0"), 0);
	proc_stop(&b);
	return 0;
}

/* The scanner turned kernel KSM over the whole process off (systemd's
 * MemoryKSM=yes): when it goes, the agent freed or failed to start, it is
 * turned on again; one that was off stays off. It stayed off for good. */
TEST_IMPL(scan_gives_kernel_merge_any_back)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose shadow takes the kernel minutes to walk");
	if (prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0) {
		ASSERT_EQ(errno, EINVAL);
		SKIP("no prctl PR_SET_MEMORY_MERGE here (Linux 6.4)");
	}
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = "private" };
	md_agent *a;
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0), 0);
	md_agent_free(a);
	ASSERT_EQ(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0), 1);
	ASSERT_EQ(prctl(PR_SET_MEMORY_MERGE, 0, 0, 0, 0), 0);
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	md_agent_free(a);
	ASSERT_EQ(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0), 0);
	return 0;
}

/* QEMU sets up a ring for every event loop, polls and timeouts only: the
 * scanner goes on merging; and so it does beside a ring set up through
 * syscall(2) that submits nothing. */
TEST_IMPL(scan_merges_beside_event_rings)
{
	char log[600];
	struct proc a;
	start_scan_logged(&a, "rings.log", log, sizeof(log));
	long long first = proc_num(&a, "uring poll");
	if (first < 0) {
		proc_stop(&a);
		SKIP("io_uring is not available here (kernel.io_uring_disabled, seccomp)");
	}
	ASSERT_EQ(first, 3);
	proc_cmd(&a, "map 512");
	ASSERT_EQ(proc_num(&a, "uring poll"), 3);
	/* A ring set up through syscall(2), not polled by the kernel: only
	 * what it submits would stop merging. */
	ASSERT_EQ(proc_num(&a, "rawuring setup"), 0);
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 5"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 5", 256 * PG), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_256_only), 0);
	ASSERT_EQ(proc_num(&a, "uring poll"), 3);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.io_unseen, 0);
	ASSERT(pairs_merged(&a, 0, 256, 256, 5));
	proc_stop(&a);
	ASSERT(!strstr(file_text(log), "stops merging"));
	return 0;
}

/* A munmap that fails (EINVAL here: a length past the end of the address
 * space, with 5-level paging too) unmaps nothing: merged pages keep their pool pages, which later
 * merges must not reuse under them, and stay merged. */
TEST_IMPL(scan_failed_unmap_keeps_pages)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 1024");
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 7", 512 * PG), "ok") == 0);
	char h[32];	/* what was written, before any merge */
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash %u %u", 512 * PG, 256 * PG));
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 7", 768 * PG), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_256_only), 0);
	ASSERT_EQ(proc_num(&a, "unmap %u 4000000000000000", 512 * PG), -EINVAL);	/* 2^62 */
	/* New duplicates below: merging them takes free pool slots. */
	ASSERT(strcmp(proc_cmd(&a, "fill 0 256 9"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 256 9", 256 * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_512), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 512 * PG, 256 * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 768 * PG, 256 * PG), h) == 0);
	for (unsigned i = 0; i < 256; i += 15)
		ASSERT(proc_page(&a, (512 + i) * PG).pfn == proc_page(&a, (768 + i) * PG).pfn);
	/* Unmapped for real, it is forgotten, and the rest stays merged. */
	ASSERT_EQ(proc_num(&a, "unmap %u %x", 512 * PG, 512 * PG), 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 5000, NULL), 0);
	ASSERT(pairs_merged(&a, 0, 256, 256, 9));
	proc_stop(&a);
	return 0;
}

TEST_IMPL(scan_fill_pages)
{
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 1024");
	ASSERT(strcmp(proc_cmd(&a, "poison %u 300 204", 100 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill 0 50 3"), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, filled_300), 0);
	ASSERT_EQ(s.filled_pages, 300);
	char h[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash %u %u", 100 * PG, PG));
	/* All 300 on the strip's 16 frames (where a run starts depends on
	 * when the scanner saw the pages being written). */
	uint64_t frames[300];
	size_t nframes = 0;
	for (unsigned i = 0; i < 300; i++) {
		/* Read first: a mapped page is there once touched. */
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", (100 + i) * PG, PG), h) == 0);
		struct pm x = proc_page(&a, (100 + i) * PG);
		ASSERT(x.present);
		size_t k = 0;
		while (k < nframes && frames[k] != x.pfn)
			k++;
		if (k == nframes)
			frames[nframes++] = x.pfn;
	}
	ASSERT_EQ(nframes, 16);
	ASSERT(strcmp(proc_cmd(&a, "write %u 7", 120 * PG + 5), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 120 * PG, PG), h) != 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 104 * PG, PG), h) == 0);
	ASSERT(proc_page(&a, 120 * PG).pfn != proc_page(&a, 104 * PG).pfn);
	proc_stop(&a);
	return 0;
}

static int hinted_merge(const md_stats *s) { return s->merged_from_hints > 0; }

TEST_IMPL(scan_hints_guide_scanner)
{
	/* The image is open for writing, so no lease: the reads are copied,
	 * and each pushes a hint. A slow linear scan over a large region
	 * would take long; the hints find the duplicates first. */
	char img[512];
	snprintf(img, sizeof(img), "%s/hinted", test_dir());
	make_image(img, 1 << 20, 11);
	const char *env[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_PAGES_TO_SCAN=64", "MEMDEDUP_SLEEP_MS=5", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 65536");
	int fd = (int)proc_num(&a, "open %s rw", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, 1u << 20), 1 << 20);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u 65536", fd, 1u << 20, 100u << 20), 1 << 20);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, hinted_merge), 0);
	ASSERT(s.hints_pushed >= 32);
	ASSERT(s.fallbacks[MD_FB_NO_LEASE] > 0);
	char want[32];
	snprintf(want, sizeof(want), "%016llx", (unsigned long long)fnv_file(img, 0, 1 << 20));
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1u << 20), want) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 100u << 20, 1u << 20), want) == 0);
	/* The pages merged so far: the two copies show one frame. */
	int same = 0;
	for (unsigned i = 0; i < 256; i++) {
		struct pm x = proc_page(&a, i * PG), y = proc_page(&a, (100u << 20) + i * PG);
		same += x.present && x.pfn == y.pfn;
	}
	ASSERT(same >= (int)s.merged_from_hints / 2 && same > 0);
	proc_stop(&a);
	return 0;
}

static int merged_1024(const md_stats *s) { return s->merged >= 1024; }

/* Writers that waited on a frozen page a round must see at least (a fault
 * thread that let them in without the merge lock lost about one write in
 * 50 waits: 8-22 lost in rounds of 200-600 waits). */
#define STRESS_MEETINGS 64
static uint64_t waits_want;
static int waits_seen(const md_stats *s) { return s->wp_waits >= waits_want; }

TEST_IMPL(scan_stress_no_lost_write)
{
	/* Two halves of identical pages; for 10 s four writers write random
	 * words of random pages, each into a page and its twin, so the twins
	 * keep becoming equal and being merged while written; the scanner runs
	 * at full speed. Each writer then reads back the last value of every
	 * word it wrote, in both twins. */
	const char *env[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_PAGES_TO_SCAN=100000", "MEMDEDUP_SLEEP_MS=1", NULL };
	int ms = getenv("MD_STRESS_MS") ? atoi(getenv("MD_STRESS_MS")) : 10000;
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 2048");
	proc_cmd(&a, "fill 0 1024 3");
	proc_cmd(&a, "fill %u 1024 3", 1024 * PG);
	md_stats s0, s;
	ASSERT_EQ(proc_stats_wait(&a, &s0, 20000, merged_1024), 0);
	uint64_t merged0 = s0.merged;
	/* Merges go on while the writers run (the baseline is converged),
	 * and must meet them: a writer that waited on a frozen page is what
	 * a merge letting it in before its mapping would lose. Paced writes
	 * alone met next to none (0-7 waits in 10 s: a written page is
	 * skipped until it stays, and merged once its writer has left it),
	 * and a fault thread that let writers in without the merge lock
	 * passed: a thread more (meet) writes every page it finds frozen, as
	 * it is. Written merged pages merge again only once a reap found
	 * them (every 3 s under writes, up to a minute after a quiet spell):
	 * a round that met fewer than STRESS_MEETINGS is run again, three in
	 * all; a long one (check-all's 10 minutes) must meet them in one,
	 * within the runner's timeout. */
	for (int round = 0;; round++) {
		const char *r = proc_cmd(&a, "writers 4 %d 0 %u meet", ms, 2048 * PG);
		if (strcmp(r, "ok") != 0)
			fprintf(stderr, "  writers: %s\n", r);
		ASSERT(strcmp(r, "ok") == 0);
		waits_want = s0.wp_waits + STRESS_MEETINGS;
		if (proc_stats_wait(&a, &s, 3000, waits_seen) != 0)	/* the counters lag up to a second */
			ASSERT_EQ(proc_stats(&a, &s), 0);
		fprintf(stderr, "  merged %llu, abandoned %llu, writers waited %llu\n",
			(unsigned long long)(s.merged - s0.merged), (unsigned long long)(s.abandoned - s0.abandoned),
			(unsigned long long)(s.wp_waits - s0.wp_waits));
		if (s.wp_waits >= s0.wp_waits + STRESS_MEETINGS)
			break;
		ASSERT(round < 2 && ms < 60000);
		s0 = s;
	}
	ASSERT(s.merged > merged0);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(scan_stress_catches_lost_write)
{
	/* The check of the test above, shown to work: one write is dropped
	 * early, in the first window. That word is written again when the
	 * window comes back (1.6 s later), so only the check made as the
	 * window moved on can see it (or the final one, if the writer fell
	 * behind under load): either way the writers must report it. */
	const char *env[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_PAGES_TO_SCAN=100000", "MEMDEDUP_SLEEP_MS=1",
			      "MD_TESTPROC_DROP_WRITE=100", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 2048");
	proc_cmd(&a, "fill 0 1024 3");
	proc_cmd(&a, "fill %u 1024 3", 1024 * PG);
	const char *r = proc_cmd(&a, "writers 4 2000 0 %u twin", 2048 * PG);
	fprintf(stderr, "  writers: %s\n", r);
	ASSERT(strncmp(r, "lost ", 5) == 0);
	proc_stop(&a);
	return 0;
}

static int wait_merged(md_agent *a, uint64_t n)
{
	md_stats s;
	for (int i = 0; i < 400; i++) {
		md_agent_stats(a, &s);
		if (s.pages_sharing >= n)
			return 0;
		usleep(50000);
	}
	return -ETIMEDOUT;
}

/* An agent in this process, scanning fast, and len bytes of anonymous
 * memory (not registered yet). */
static char *inproc_agent(md_agent **a, unsigned pages_to_scan, size_t len)
{
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = pages_to_scan,
			       .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	return m;
}

/* n pages of m, no two alike, registered with a. */
static char *unique_pages(md_agent *a, char *m, size_t n)
{
	for (size_t i = 0; i < n * PG; i++)
		m[i] = (char)((i / PG) * 13 + i % 241 + 1);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	return m;
}

/* An agent in this process, scanning fast, and n pages of its RAM
 * registered, no two alike. */
static char *unique_ram(md_agent **a, size_t n)
{
	return unique_pages(*a, inproc_agent(a, 2000, n * PG), n);
}

/* The same at the rate o sets. */
static char *unique_ram_at(md_agent **a, size_t n, const md_agent_options *o)
{
	ASSERT_EQ(md_agent_new(a, o), 0);
	char *m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	return unique_pages(*a, m, n);
}

/* The byte at i of n pages in pairs: pages k and k + n / 2 alike, each
 * page unlike the others (no fill pages). */
static char pairs_byte(size_t i, size_t n)
{
	return (char)((i / PG) % (n / 2) * 31 + i % PG);
}

/* 1 if the n pages at m still hold pairs_byte's content. */
static int pairs_intact(const char *m, size_t n)
{
	for (size_t i = 0; i < n * PG; i++)
		if (m[i] != pairs_byte(i, n))
			return 0;
	return 1;
}

/* Without memdedupd (merging within the process), pages checked, stable
 * and without a partner count as KSM's pages_unshared, as with it: they
 * were never aged here, and the counter stayed 0. */
TEST_IMPL(scan_unshared_without_daemon)
{
	md_agent *a;
	const size_t n = 64;
	char *m = inproc_agent(&a, 1000, 2 * n * PG);
	for (size_t i = 0; i < n * PG; i++) {
		m[i] = (char)((i / PG) * 7 + i % 251);	/* unique */
		m[n * PG + i] = (char)(pairs_byte(i, n) + 3);	/* pairs */
	}
	ASSERT_EQ(md_agent_register(a, m, 2 * n * PG, 0), 0);
	md_stats st = { 0 };
	for (int i = 0; i < 250 && (st.pages_unshared != n || st.pages_sharing != n); i++) {
		usleep(20000);
		md_agent_stats(a, &st);
	}
	ASSERT_EQ(st.pages_sharing, n);
	ASSERT_EQ(st.pages_unshared, n);
	md_agent_free(a);
	munmap(m, 2 * n * PG);
	return 0;
}

/* Unique pages found zero since (the guest freed them) are dropped: they
 * count no more as pages_unshared, and what they save counts in
 * general_profit, as KSM counts its zero pages. */
TEST_IMPL(scan_zeroed_unique_pages_counted)
{
	md_agent *a;
	const size_t n = 64, z = 16;
	char *m = inproc_agent(&a, 1000, n * PG);
	for (size_t i = 0; i < n * PG; i++)
		m[i] = (char)((i / PG) * 7 + i % 251 + 1);	/* unique */
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	md_stats st = { 0 };
	for (int i = 0; i < 250 && st.pages_unshared != n; i++) {
		usleep(20000);
		md_agent_stats(a, &st);
	}
	ASSERT_EQ(st.pages_unshared, n);
	int64_t profit = st.general_profit;
	memset(m, 0, z * PG);
	for (int i = 0; i < 250 && st.zero_pages != z; i++) {
		usleep(20000);
		md_agent_stats(a, &st);
	}
	ASSERT_EQ(st.zero_pages, z);
	ASSERT_EQ(st.pages_unshared, n - z);
	fprintf(stderr, "  profit %lld, then %lld\n", (long long)profit, (long long)st.general_profit);
	ASSERT(st.general_profit - profit >= (int64_t)((z - 1) * PG));
	/* Found zero again (read back in, on a kernel without a zero page; a
	 * write of zeroes here), dropped again and aged like a unique page
	 * (engine_scanner_zero_read_again_quiet): not unshared either. */
	memset(m, 0, z * PG);
	uint64_t passes = st.full_scans;
	for (int i = 0; i < 500 && st.full_scans < passes + 4; i++) {
		usleep(20000);
		md_agent_stats(a, &st);
	}
	ASSERT(st.full_scans >= passes + 4);
	ASSERT_EQ(st.zero_pages, z);
	ASSERT_EQ(st.pages_unshared, n - z);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* The agent's published pages_sharing, as memdedupd gets it (its thread's
 * walks): md_agent_stats() would walk anew. Waits up to 5 s (the walk is
 * once a second) for it to reach want. */
static uint64_t sharing_published(md_agent *a, uint64_t want)
{
	uint64_t v = 0;
	for (int i = 0; i < 50; i++) {
		v = __atomic_load_n(&a->ctr[MD_CTR_PAGES_SHARING], __ATOMIC_RELAXED);
		if (v == want)
			break;
		usleep(100000);
	}
	return v;
}

/* pages_sharing (and with it general_profit) follows guest RAM the VMM
 * unmaps, unregisters, discards or forgets: the walk that counts it was
 * done again only when merges or writes moved, and stayed at the pages
 * merged before an unmap of all of them for half a minute (review,
 * memdedup status). */
TEST_IMPL(scan_sharing_follows_unmap)
{
	md_agent *a;
	const size_t k = 16;	/* four parts, few pages: no reap is due for them */
	char *m = inproc_agent(&a, 1000, 4 * k * PG);
	for (size_t i = 0; i < 4 * k; i++)
		memset(m + i * PG, (int)(i % 4) + 1, PG);	/* four contents */
	ASSERT_EQ(md_agent_register(a, m, 4 * k * PG, 0), 0);
	ASSERT_EQ(wait_merged(a, 4 * k), 0);
	ASSERT_EQ(sharing_published(a, 4 * k), 4 * k);
	ASSERT_EQ(md_agent_pause(a, 1), 0);	/* no merges move the walk */

	ASSERT_EQ(md_agent_unmap(a, m, k * PG), 0);
	ASSERT_EQ(sharing_published(a, 3 * k), 3 * k);
	ASSERT_EQ(md_agent_unregister(a, m + k * PG, k * PG), 0);	/* MADV_UNMERGEABLE */
	ASSERT_EQ(sharing_published(a, 2 * k), 2 * k);
	ASSERT_EQ(md_agent_discard(a, m + 2 * k * PG, k * PG), 0);
	ASSERT_EQ(madvise(m + 2 * k * PG, k * PG, MADV_DONTNEED), 0);
	ASSERT_EQ(sharing_published(a, k), k);
	ASSERT_EQ(md_agent_forget(a, m + 3 * k * PG, k * PG), 0);	/* about to be unmapped */
	ASSERT_EQ(sharing_published(a, 0), 0);
	md_agent_free(a);
	munmap(m + k * PG, 3 * k * PG);
	return 0;
}

/* Seconds since t0 on the monotonic clock. */
static double secs_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Waits (up to 20 s each) until the scanner found a pass quiet by itself
 * and sleeps: the batch that did the work (first checksums, merges) is
 * over, and its sleep was sized. full_scans and merges count as they
 * happen, mid-batch: a store to idle made then was undone by the batch's
 * end (0: work found), or lengthened the sleep about to be sized to 32
 * times a second, past the wait for one more pass. */
static void wait_scanner_asleep_quiet(md_agent *a)
{
	for (int i = 0; i < 2000 && !__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED); i++)
		usleep(10000);
	ASSERT(__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED) > 0);
	ASSERT(thread_blocked_in(getpid(), "md-scan", SYS_futex, 20000));
}

/* A scanner slowed down on a quiet host (32 times its sleep) takes up the
 * reads' hints within one sleep at the set rate, not at the end of its
 * long one: the pages reads just filled are the likeliest duplicates. */
TEST_IMPL(scan_hints_end_idle_sleep)
{
	md_agent *a;
	const size_t n = 256;
	/* A set sleep of a second (one batch of 300 pages a wake-up, none
	 * gathered), so the idle one is 32 s: no event tells the scanner's
	 * early wake-up from its late one, only when it came, and a bound
	 * far from both cannot be missed by a loaded host nor met without
	 * the poke. */
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 300, .sleep_ms = 1000 };
	char *m = unique_ram_at(&a, n, &o);
	/* A disk the guest may write: its reads are copied, and hinted. */
	char path[600];
	snprintf(path, sizeof(path), "%s/disk", test_dir());
	make_image(path, 16 * PG, 7);
	int fd = open(path, O_RDWR);
	ASSERT(fd >= 0);
	md_stats st;
	/* Every checksum taken, nothing more to do. */
	wait_scanner_asleep_quiet(a);
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	uint64_t passes = st.full_scans;
	__atomic_store_n(&a->scanner.idle, MD_SCAN_IDLE_MAX, __ATOMIC_RELAXED);
	/* One more pass, found quiet: the scanner now sleeps 1 s << 5. */
	for (int i = 0; i < 2000 && st.full_scans == passes; i++, usleep(10000))
		md_agent_stats(a, &st);
	ASSERT(st.full_scans > passes);
	ASSERT_EQ(__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED), MD_SCAN_IDLE_MAX);
	uint64_t hinted = st.pages_hinted;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ASSERT_EQ(md_agent_pread(a, fd, m + 8 * PG, 16 * PG, 0), (ssize_t)(16 * PG));
	/* Visited within 12 s: about 1 s with the poke, 32 s without. */
	while (st.pages_hinted == hinted && secs_since(&t0) < 12) {
		usleep(5000);
		md_agent_stats(a, &st);
	}
	printf("  hinted pages visited %.3f s after the read, the idle sleep being 32 s\n", secs_since(&t0));
	ASSERT(st.pages_hinted > hinted);
	close(fd);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

static void resume(void *a)
{
	ASSERT(md_agent_pause(a, 0) == 0);
}

/* A resume (the VMM's, or memdedupd's) brings the set rate back at once,
 * also over an idle sleep, which lasts a second at a time: the resume
 * ends it, as new hints do (a review: it waited for the second's end). */
TEST_IMPL(scan_resume_ends_idle_sleep)
{
	md_agent *a;
	const size_t n = 16;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 100, .sleep_ms = 50 };
	char *m = unique_ram_at(&a, n, &o);
	md_stats st;
	for (int i = 0; i < 200; i++, usleep(20000))
		if (md_agent_stats(a, &st) == 0 && st.full_scans >= 1)
			break;
	ASSERT(st.full_scans >= 1);
	__atomic_store_n(&a->scanner.idle, MD_SCAN_IDLE_MAX, __ATOMIC_RELAXED);
	/* Its next sleep is idle: 150 ms << 5, a second at a time. */
	usleep(300000);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	ASSERT_EQ(__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED), 0);
	__atomic_store_n(&a->scanner.idle, MD_SCAN_IDLE_MAX, __ATOMIC_RELAXED);
	/* A resume right after it wakes at a second's end: it wakes again
	 * at once, not at the next second's. */
	ASSERT(thread_switches("md-scan") >= 0);
	ASSERT(wakes_on("md-scan", resume, a));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* The child's part of agent_in_forked_child_counts_own_pages: 0 if its
 * agent counts its own write, else the step that went wrong. */
static int child_counts_own_write(const char *img)
{
	md_agent_options o = { .run_dir = "" };
	md_agent *a;
	md_stats st;
	/* As a daemon does: every inherited descriptor closed, and numbers
	 * reused for files of its own, which the agent must leave alone. */
	if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
		return 16;
	for (int fd = 3; fd < 64; fd++)
		if (open("/dev/null", O_RDONLY) != fd)
			return 17;
	if (md_agent_new(&a, &o) != 0)
		return 10;
	char *m = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int fd = open(img, O_RDONLY);
	if (m == MAP_FAILED || fd < 0 || md_agent_register(a, m, 64 * PG, 0) != 0)
		return 11;
	if (md_agent_pread(a, fd, m, 64 * PG, 0) != (ssize_t)(64 * PG))
		return 12;
	m[0] ^= 1;	/* a copy-on-write break */
	md_agent_stats(a, &st);
	md_agent_free(a);
	struct stat null, here;
	if (stat("/dev/null", &null) != 0)
		return 18;
	for (int k = 3; k < 64; k++)
		if (fstat(k, &here) != 0 || here.st_rdev != null.st_rdev)
			return 19;
	return st.pages_shared_at_read != 64 ? 13 : st.breaks != 1 ? 14 : st.pages_shared != 63 ? 15 : 0;
}

/* An agent made anew in a forked child (libmemdedup's VMM, its own agent
 * freed before the fork) counts the child's pages: it read its parent's
 * through the descriptor of pagemap its parent's agent had opened. So
 * does one in a child made by _Fork, which runs no atfork handler. */
TEST_IMPL(agent_in_forked_child_counts_own_pages)
{
	char img[600];
	snprintf(img, sizeof(img), "%s/img", test_dir());
	make_image(img, 64 * PG, 3);
	md_agent_options o = { .run_dir = "" };
	md_agent *a;
	md_stats st;
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	md_agent_stats(a, &st);	/* pagemap opened */
	md_agent_free(a);
	for (int handlers = 1; handlers >= 0; handlers--) {
		pid_t pid = handlers ? fork() : _Fork();
		ASSERT(pid >= 0);
		if (pid == 0)
			_exit(child_counts_own_write(img));
		int status;
		ASSERT_EQ(waitpid(pid, &status, 0), pid);
		ASSERT(WIFEXITED(status));
		ASSERT_EQ(WEXITSTATUS(status), 0);
	}
	return 0;
}

/* Whether the scanner's or the agent thread's call to memdedupd waits for
 * its answer, within ms. */
static int daemon_call_waits(int ms)
{
	for (int waited = 0; waited <= ms; waited += 10, usleep(10000))
		if (thread_blocked_in(getpid(), "md-scan", SYS_poll, 0) ||
		    thread_blocked_in(getpid(), "md-agent", SYS_poll, 0))
			return 1;
	return 0;
}

/* Gives the agent's requests to memdedupd 20 s for their answers (2 s,
 * MD_CLIENT_TIMEOUT_MS, by default), set under the connection's lock: no
 * request is in flight then, so every later one has the new deadline.
 * With memdedupd stopped, a VMM call that waited for an answer returns
 * only once the request timed out, which daemon_late tells: an event,
 * 20 s away from a call that did not wait, not the call's time. */
static void daemon_timeout_long(md_agent *a)
{
	struct md__remote *rm = a->engine->remote;
	pthread_mutex_lock(&rm->lock);
	ASSERT(rm->c);
	md__client_set_timeout(rm->c, 20000);
	pthread_mutex_unlock(&rm->lock);
}

/* How many of the agent's requests to memdedupd timed out, their answers
 * still owed (or UINT_MAX if the connection went). Read without the
 * connection's lock, which a request waiting for a stopped daemon holds:
 * the connection is not freed meanwhile (a slow daemon keeps it). */
static unsigned daemon_late(md_agent *a)
{
	struct md__client *c = __atomic_load_n(&a->engine->remote->c, __ATOMIC_RELAXED);
	return c ? md__client_late(c) : UINT_MAX;
}

/* The VMM's unmap of guest RAM waits for no scanner batch whose questions a
 * stalled memdedupd has not answered: the scanner lets go of the regions
 * during its round trips (it waited up to the 2 s reply deadline). */
TEST_IMPL(scan_unmap_not_held_by_daemon)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 256, nb = 16;
	td_start(&t, 4096);
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 10000, .sleep_ms = 1,
			       .domain = "held", .daemon_socket = t.sock };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *b = mmap(NULL, nb * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(b != MAP_FAILED && m != MAP_FAILED);
	/* Pages not of one repeated word (no fill pages): b's unique, m's
	 * in pairs. */
	for (size_t i = 0; i < nb * PG; i++)
		b[i] = (char)((i / PG) * 7 + i % 251);
	for (size_t i = 0; i < n * PG; i++)
		m[i] = pairs_byte(i, n);
	ASSERT_EQ(md_agent_register(a, b, nb * PG, 0), 0);
	/* Welcomed first: stopped before, the daemon holds back the HELLO,
	 * and the scanner waits for the welcome, asking nothing. */
	for (int i = 0; i < 500 && !md__remote_connected(a->engine->remote); i++)
		usleep(10000);
	ASSERT(md__remote_connected(a->engine->remote));
	daemon_timeout_long(a);
	td_pause(&t);
	/* b's checksums taken, its next visit asks: the question waits for
	 * the answer, and still does after the calls below - or the agent's
	 * thread's report, asked first, waits, and the scanner's question
	 * behind it (seen under AddressSanitizer: the scanner never got to
	 * poll, its question failed at once after the report's deadline). */
	ASSERT(daemon_call_waits(5000));
	/* The VMM's calls on guest RAM meanwhile: more RAM asks for merging,
	 * and RAM goes. */
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	ASSERT_EQ(md_agent_unmap(a, b, nb * PG), 0);
	/* They did not wait for the scanner's question: held by its batch,
	 * they would have returned only once it had timed out. It still
	 * waits. */
	ASSERT_EQ(daemon_late(a), 0);
	ASSERT(daemon_call_waits(0));
	ASSERT(kill(t.pid, SIGCONT) == 0);
	/* Merging goes on once it answers again. */
	ASSERT_EQ(wait_merged(a, n / 2), 0);
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	munmap(m, n * PG);
	td_stop(&t);
	return 0;
}

/* n pages of fresh RAM in pairs, no fill pages (not registered). */
static char *pairs_ram(size_t n)
{
	char *m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	for (size_t i = 0; i < n * PG; i++)
		m[i] = pairs_byte(i, n);
	return m;
}

/* An agent of this process scanning fast (domain: NULL, the default, or
 * as named), without memdedupd, and n pages of RAM in pairs registered and
 * merged: the pages. */
static char *pairs_merged_here(md_agent **a, const char *domain, size_t n)
{
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = domain,
			       .pages_to_scan = 1000, .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	char *m = pairs_ram(n);
	ASSERT_EQ(md_agent_register(*a, m, n * PG, 0), 0);
	ASSERT_EQ(wait_merged(*a, n / 2), 0);
	return m;
}

/* 1 if the n pages at m of this process are all present and anonymous
 * memory (no file's page, a pool's or an image's), as pagemap shows. */
static int pages_anon_present(const char *m, size_t n)
{
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ASSERT(pm >= 0);
	int ok = 1;
	for (size_t i = 0; i < n && ok; i++) {
		uint64_t e = 0;
		ASSERT_EQ(pread(pm, &e, sizeof(e), (off_t)((uintptr_t)(m + i * PG) / PG * 8)), 8);
		ok = (e >> 63) && !((e >> 61) & 1);
	}
	close(pm);
	return ok;
}

/* 1 if pairs_ram's n pages at m are all private after an unmerge, as
 * pagemap shows them whatever the agent counts: each, once read, present
 * and anonymous (not the pool's file page), on another frame than its
 * twin n / 2 pages on. */
static int pairs_private(const char *m, size_t n)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	ASSERT(fd >= 0);
	int ok = 1;
	for (size_t i = 0; i < n / 2 && ok; i++) {
		uint64_t e[2];
		for (int k = 0; k < 2; k++) {
			const char *p = m + (i + k * n / 2) * PG;
			(void)*(volatile const char *)p;
			ASSERT(pread(fd, &e[k], 8, (off_t)((uintptr_t)p / PG * 8)) == 8);
		}
		ok = e[0] >> 61 == 4 && e[1] >> 61 == 4 &&
		     (e[0] & ((1ull << 55) - 1)) != (e[1] & ((1ull << 55) - 1));
	}
	close(fd);
	return ok;
}

/* A private memdedupd, an agent of this process with its domain "held",
 * and n pages of RAM in pairs (no fill pages), merged: n / 2 pool pages. */
static char *merged_pairs(struct tdaemon *t, md_agent **a, size_t n)
{
	td_start(t, 4096);
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 10000, .sleep_ms = 1,
			       .domain = "held", .daemon_socket = t->sock };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	char *m = pairs_ram(n);
	ASSERT_EQ(md_agent_register(*a, m, n * PG, 0), 0);
	ASSERT_EQ(wait_merged(*a, n / 2), 0);
	long long live = 0;
	for (int i = 0; i < 100 && (live = td_domains_int(t, "pool_live_pages")) != (long long)n / 2; i++)
		usleep(20000);
	ASSERT_EQ(live, (long long)n / 2);
	return m;
}

/* Waits up to 5 s for memdedupd's pool to hold no page; 0 if it does. */
static long long pool_emptied(const struct tdaemon *t)
{
	long long live = 0;
	for (int i = 0; i < 250 && (live = td_domains_int(t, "pool_live_pages")) != 0; i++)
		usleep(20000);
	return live;
}

/* Waits up to 5 s for memdedupd to list this process as an agent. */
static int listed_by(const struct tdaemon *t)
{
	int listed = 0;
	for (int i = 0; i < 100 && !listed; i++) {
		json_t *st = td_status(t);
		listed = td_find(json_object_get(st, "agents"), "pid", getpid()) != NULL;
		json_decref(st);
		if (!listed)
			usleep(50000);
	}
	return listed;
}

/* Nor does the VMM's unmap of merged guest RAM wait for the references it
 * gives back: they were sent to memdedupd as the merge lock was let go, on
 * the VMM's thread, which then waited for a stalled daemon's answer up to
 * the reply deadline, and every thread that wanted the lock with it. They
 * go later, from the agent's own threads, and the pool pages are freed. */
TEST_IMPL(scan_unmap_merged_not_held_by_daemon)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 256;
	char *m = merged_pairs(&t, &a, n);
	daemon_timeout_long(a);
	td_pause(&t);
	ASSERT_EQ(md_agent_unmap(a, m, n * PG), 0);
	/* No request timed out: an unmap that sent the UNREFs itself would
	 * have returned only once their answer had. */
	ASSERT_EQ(daemon_late(a), 0);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	/* The references reach the daemon all the same: nobody maps the pool
	 * pages any more, and they are freed. */
	ASSERT_EQ(pool_emptied(&t), 0);
	md_agent_free(a);
	td_stop(&t);
	return 0;
}

/* Whether this process's agent has reported to memdedupd (within 10 s):
 * its counters go after its welcome is applied, in the same call of the
 * agent's thread, so once they are there, it was. */
static int welcome_applied(const struct tdaemon *t)
{
	int reported = 0;
	for (int i = 0; i < 200 && !reported; i++) {
		json_t *st = td_status(t);
		json_t *me = td_find(json_object_get(st, "agents"), "pid", getpid());
		reported = json_is_real(json_object_get(me, "report_age_seconds"));
		json_decref(st);
		if (!reported)
			usleep(50000);
	}
	return reported;
}

/* Linear order and hints on, chosen by the VMM (`memdedup run
 * --scan-order=linear --hints=on`), are its own as random order and no
 * hints are: memdedupd's defaults (here random, no hints) replaced them at
 * its welcome, as they do an agent's that chose nothing. */
TEST_IMPL(scan_own_order_and_hints_outlive_defaults)
{
	struct tdaemon t;
	td_start(&t, 4096);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set order=random >/dev/null", t.sock, build_dir()), 0);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set hint_ratio=0 >/dev/null", t.sock, build_dir()), 0);
	for (int own = 0; own < 2; own++) {
		md_agent *a;
		md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = "w", .daemon_socket = t.sock };
		if (own)
			o.flags |= MD_OPT_SCAN_LINEAR | MD_OPT_HINTS;
		ASSERT_EQ(md_agent_new(&a, &o), 0);
		char *m = pairs_ram(64);
		ASSERT_EQ(md_agent_register(a, m, 64 * PG, 0), 0);
		ASSERT(welcome_applied(&t));
		ASSERT_EQ(__atomic_load_n(&a->scanner.random_order, __ATOMIC_RELAXED), !own);
		ASSERT_EQ(__atomic_load_n(&a->scanner.ratio, __ATOMIC_RELAXED), own ? 4 : 0);
		md_agent_free(a);
		munmap(m, 64 * PG);
		usleep(200000);	/* its record gone before the next one's HELLO */
	}
	md_agent *a;
	md_agent_options bad = { .run_dir = "", .flags = MD_OPT_SCAN | MD_OPT_SCAN_LINEAR | MD_OPT_SCAN_RANDOM };
	ASSERT_EQ(md_agent_new(&a, &bad), -EINVAL);
	bad.flags = MD_OPT_SCAN | MD_OPT_HINTS | MD_OPT_NO_HINTS;
	ASSERT_EQ(md_agent_new(&a, &bad), -EINVAL);
	td_stop(&t);
	return 0;
}

/* Watches the thread named comm for a wait in poll(2) (seen), until stop. */
struct poll_watch {
	const char *comm;
	int stop, seen;
};

static void *watch_poll(void *p)
{
	struct poll_watch *w = p;
	while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) && !w->seen)
		w->seen = thread_blocked_in(getpid(), w->comm, SYS_poll, 0);
	return NULL;
}

/* An agent of the default domain whose first HELLO times out (a daemon
 * stopped, or busy) waits for the daemon and says HELLO when it answers;
 * it went private for good, as if there were no daemon at all. And the
 * HELLO is not the VMM thread's: the agent is made at the VMM's first
 * call on guest RAM, under the agent's lock, which it held up to the reply
 * deadline. */
TEST_IMPL(scan_default_domain_waits_for_slow_daemon)
{
	struct tdaemon t;
	md_agent *a;
	td_start(&t, 4096);
	td_pause(&t);
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .daemon_socket = t.sock };
	/* The VMM's thread, this one, never waits for the daemon's answer
	 * in md_agent_new: a HELLO made there would be seen waiting in
	 * poll(2), for the whole 2 s of its deadline. Seen, not timed. */
	char comm[16] = "";
	ASSERT_EQ(prctl(PR_GET_NAME, comm), 0);
	ASSERT_EQ(prctl(PR_SET_NAME, "md-test-vmm"), 0);
	struct poll_watch w = { .comm = "md-test-vmm" };
	pthread_t watcher;
	ASSERT_EQ(pthread_create(&watcher, NULL, watch_poll, &w), 0);
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	__atomic_store_n(&w.stop, 1, __ATOMIC_RELEASE);
	pthread_join(watcher, NULL);
	ASSERT_EQ(prctl(PR_SET_NAME, comm), 0);
	ASSERT(!w.seen);
	usleep(2500000);	/* its first HELLO timed out (the 2 s deadline), the next waits */
	ASSERT(kill(t.pid, SIGCONT) == 0);
	ASSERT(listed_by(&t));
	md_agent_free(a);
	td_stop(&t);
	return 0;
}

/* The scanner waits for memdedupd's welcome (the daemon may be paused,
 * and its rates are the ones to scan at), but not for a daemon that does
 * not answer: once a HELLO timed out it scans meanwhile, as it was. */
TEST_IMPL(scan_waits_for_welcome_not_for_stalled_daemon)
{
	struct tdaemon t;
	md_agent *a;
	td_start(&t, 4096);
	td_pause(&t);
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .daemon_socket = t.sock };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(__atomic_load_n(&a->scanner.paused, __ATOMIC_SEQ_CST), 1);	/* its HELLO waits (2 s) */
	for (int i = 0; i < 1000 && __atomic_load_n(&a->scanner.paused, __ATOMIC_SEQ_CST); i++)
		usleep(10000);
	ASSERT_EQ(__atomic_load_n(&a->scanner.paused, __ATOMIC_SEQ_CST), 0);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	ASSERT(listed_by(&t));
	md_agent_free(a);
	td_stop(&t);
	return 0;
}

/* What the VMM set itself before memdedupd's welcome came (the agent's
 * thread says HELLO after md_agent_new returns) stays: its pause, and its
 * tunables; the welcome replaced them with the daemon's. */
TEST_IMPL(scan_vmm_settings_outlive_welcome)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 64;
	td_start(&t, 4096);
	td_pause(&t);	/* the welcome comes after the VMM's calls */
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .sleep_ms = 1, .domain = "w",
			       .daemon_socket = t.sock };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	ASSERT_EQ(md_agent_set(a, "pages_to_scan", "7"), 0);
	char *m = pairs_ram(n);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	ASSERT(welcome_applied(&t));
	ASSERT_EQ(__atomic_load_n(&a->scanner.paused, __ATOMIC_SEQ_CST), 1);
	ASSERT_EQ(__atomic_load_n(&a->scanner.batch, __ATOMIC_RELAXED), 7);
	md_stats s;
	md_agent_stats(a, &s);
	ASSERT_EQ(s.pages_sharing, 0);
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	ASSERT_EQ(wait_merged(a, n / 2), 0);
	md_agent_free(a);
	munmap(m, n * PG);
	td_stop(&t);
	return 0;
}

/* The agents a's part of the daemon's rate is an equal cut among (its
 * part's whole of them); 0 before any. */
static unsigned share_of(md_agent *a)
{
	unsigned part = __atomic_load_n(&a->scanner.share_batch, __ATOMIC_RELAXED);
	return part ? MD_SCAN_PART_ALL / part : 0;
}

static size_t batch_of(md_agent *a)
{
	return __atomic_load_n(&a->scanner.batch, __ATOMIC_RELAXED);
}

/* `memdedup set --pid P` gives that agent a value of its own: it scanned its
 * share of it (half, beside another agent), as of a value for all. One for
 * all after it leaves that value alone, as it does `memdedup run`'s
 * (review). */
TEST_IMPL(scan_set_for_one_agent_is_its_own)
{
	struct tdaemon t;
	md_agent *a;
	td_start(&t, 4096);
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .sleep_ms = 1, .daemon_socket = t.sock };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = pairs_ram(64);
	ASSERT_EQ(md_agent_register(a, m, 64 * PG, 0), 0);
	char sock[400];
	snprintf(sock, sizeof(sock), "MEMDEDUP_SOCKET=%s", t.sock);
	const char *env[] = { "MEMDEDUP_SCAN=1", sock, NULL };
	struct proc b;
	proc_start(&b, env);
	proc_cmd(&b, "map 64");
	for (int i = 0; i < 500 && share_of(a) != 2; i++)
		usleep(20000);
	ASSERT_EQ(share_of(a), 2);	/* the daemon's rate is for both */
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set --pid %d pages_to_scan=1000 >/dev/null", t.sock,
			build_dir(), (int)getpid()), 0);
	for (int i = 0; i < 500 && share_of(a) != 1; i++)
		usleep(20000);
	ASSERT_EQ(batch_of(a), 1000);
	ASSERT_EQ(share_of(a), 1);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=400 >/dev/null", t.sock, build_dir()),
		  0);
	usleep(300000);	/* a tick of the agent's: the share set again */
	ASSERT_EQ(batch_of(a), 1000);
	ASSERT_EQ(share_of(a), 1);
	proc_stop(&b);
	md_agent_free(a);
	munmap(m, 64 * PG);
	td_stop(&t);
	return 0;
}

/* A CPU cap the VMM gave this agent itself (`memdedup run --cpu-percent`)
 * is its own, as its own pages_to_scan is: not shared with memdedupd's
 * other agents, whose share of the daemon's rate it still takes for the
 * pages it did not set. */
TEST_IMPL(scan_own_cpu_cap_not_shared)
{
	struct tdaemon t;
	md_agent *a;
	td_start(&t, 4096);
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .sleep_ms = 1, .cpu_percent = 50,
			       .daemon_socket = t.sock };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = pairs_ram(64);
	ASSERT_EQ(md_agent_register(a, m, 64 * PG, 0), 0);
	char sock[400];
	snprintf(sock, sizeof(sock), "MEMDEDUP_SOCKET=%s", t.sock);
	const char *env[] = { "MEMDEDUP_SCAN=1", sock, NULL };
	struct proc b;
	proc_start(&b, env);
	proc_cmd(&b, "map 64");
	for (int i = 0; i < 500 && share_of(a) != 2; i++)
		usleep(20000);
	ASSERT_EQ(share_of(a), 2);	/* the daemon's rate is for both */
	ASSERT_EQ(__atomic_load_n(&a->scanner.share_cpu, __ATOMIC_RELAXED), MD_SCAN_PART_ALL);
	ASSERT_EQ(__atomic_load_n(&a->scanner.cpu_percent, __ATOMIC_RELAXED), 50);
	proc_stop(&b);
	md_agent_free(a);
	munmap(m, 64 * PG);
	td_stop(&t);
	return 0;
}

/* The scanner's state for `memdedup status` is what a pause or resume left
 * as soon as it returns (memdedupd answers `memdedup pause` then, and a
 * status right after read the state before it, up to the agent's next
 * second). Read from the counters, not through md_agent_stats, which
 * publishes it again. */
TEST_IMPL(scan_pause_state_shown_at_once)
{
	md_agent *a;
	const size_t n = 16;
	char *m = inproc_agent(&a, 100, n * PG);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	struct md__msg_control pause = { .op = MD_CTL_PAUSE }, resume = { .op = MD_CTL_RESUME };
	for (int i = 0; i < 50; i++) {
		ASSERT_EQ(md_agent_pause(a, 1), 0);
		ASSERT_EQ(__atomic_load_n(&a->ctr[MD_CTR_SCAN_STATE], __ATOMIC_RELAXED), MD_SCAN_STATE_PAUSED);
		ASSERT_EQ(md_agent_pause(a, 0), 0);
		ASSERT_EQ(__atomic_load_n(&a->ctr[MD_CTR_SCAN_STATE], __ATOMIC_RELAXED), MD_SCAN_STATE_SCANNING);
		md__scan_apply_control(a, &pause);
		ASSERT_EQ(__atomic_load_n(&a->ctr[MD_CTR_SCAN_STATE], __ATOMIC_RELAXED), MD_SCAN_STATE_PAUSED);
		md__scan_apply_control(a, &resume);
		ASSERT_EQ(__atomic_load_n(&a->ctr[MD_CTR_SCAN_STATE], __ATOMIC_RELAXED), MD_SCAN_STATE_SCANNING);
	}
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* An agent freed gives back the references its last unmaps let go of: the
 * daemon keeps its record, and so what it pinned, until the process goes. */
TEST_IMPL(scan_free_gives_back_references)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 64;
	char *m = merged_pairs(&t, &a, n);
	ASSERT_EQ(md_agent_pause(a, 1), 0);	/* no batch sends them */
	ASSERT_EQ(md_agent_unmap(a, m, n * PG), 0);
	md_agent_free(a);
	ASSERT_EQ(pool_emptied(&t), 0);
	td_stop(&t);
	return 0;
}

/* 1 if p lies in a mapping of a memdedup pool. */
static int in_pool_map(const void *p)
{
	struct md__file_map *v;
	size_t n;
	ASSERT_EQ(md__range_file_maps((uintptr_t)p, (uintptr_t)p + PG, &v, &n), 0);
	int pool = n == 1 && v[0].pool;
	free(v);
	return pool;
}

/* The slot + 1 the page at p maps in a's engine, 0 for none. */
static uint32_t slot_of(md_agent *a, const char *p)
{
	struct md__engine *e = a->engine;
	pthread_mutex_lock(&e->lock);
	struct md__eregion *r = md__engine_region(e, (uintptr_t)p, PG);
	uint32_t s = r ? MD_REF_SLOT(r->ref[((uintptr_t)p - r->start) / PG]) : 0;
	pthread_mutex_unlock(&e->lock);
	return s;
}

/* Waits until the pages at p and p + PG map one slot: it (slot + 1). */
static uint32_t pair_merged(md_agent *a, const char *p)
{
	for (int i = 0; i < 400; i++) {
		uint32_t s = slot_of(a, p);
		if (s && slot_of(a, p + PG) == s)
			return s;
		usleep(20000);
	}
	return 0;
}

/* Whether slot s + 1 of a's own pool was let go and punched (a reap and a
 * trim come with md_agent_stats), for a publication to take again. */
static int slot_reusable(md_agent *a, uint32_t s)
{
	md_stats st;
	md_agent_stats(a, &st);
	pthread_mutex_lock(&a->engine->lock);
	int free_now = 0;
	for (size_t i = 0; i < a->engine->pool.nfree; i++)	/* punched slots */
		free_now |= a->engine->pool.free[i] == s - 1;
	pthread_mutex_unlock(&a->engine->lock);
	return free_now;
}

/* The content of seed: page seed of scan_free_moves_pool_pages's RAM. */
static void seed_page(char *p, unsigned seed)
{
	for (size_t j = 0; j < PG; j++)
		p[j] = (char)(seed * 31 + j);
}

static int seeded(const char *p, unsigned seed)
{
	for (size_t j = 0; j < PG; j++)
		if (p[j] != (char)(seed * 31 + j))
			return 0;
	return 1;
}

/* An agent freed while its guest RAM stays mapped: nothing steered a
 * discard of a page merged into the pool any more, and the kernel's showed
 * the pool's page again, not zeroes: the page's own content, or after its
 * slot was let go and taken again, another page's (review: page 0 read
 * B). Copies RAM given up left in the pool's mappings the same. Every
 * such page is moved into anonymous memory first. */
TEST_IMPL(scan_free_moves_pool_pages)
{
	md_agent *a;
	const size_t n = 64;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = "private",
			       .pages_to_scan = 1000, .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	for (size_t i = 0; i < n; i++)	/* no two alike */
		seed_page(m + i * PG, (unsigned)i);
	seed_page(m, 100);	/* A */
	seed_page(m + PG, 100);
	seed_page(m + 20 * PG, 101);	/* merged, never written */
	seed_page(m + 21 * PG, 101);
	seed_page(m + 30 * PG, 103);	/* to be given up */
	seed_page(m + 31 * PG, 103);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	uint32_t sa = pair_merged(a, m), sd = pair_merged(a, m + 30 * PG);
	ASSERT(sa && sd && pair_merged(a, m + 20 * PG));
	/* Both copies of A written: its slot is let go, then B's. */
	m[0] ^= 1;
	m[PG] ^= 2;
	for (int i = 0; i < 100 && !slot_reusable(a, sa); i++)
		usleep(20000);
	ASSERT(slot_reusable(a, sa));
	seed_page(m + 10 * PG, 102);	/* B */
	seed_page(m + 11 * PG, 102);
	ASSERT_EQ(pair_merged(a, m + 10 * PG), sa);
	/* D given up: its copies stay in the pool's mappings, its slot is
	 * let go, then E's. */
	ASSERT_EQ(md_agent_unregister(a, m + 30 * PG, 2 * PG), 0);
	ASSERT(in_pool_map(m + 30 * PG));
	for (int i = 0; i < 100 && !slot_reusable(a, sd); i++)
		usleep(20000);
	ASSERT(slot_reusable(a, sd));
	seed_page(m + 40 * PG, 104);	/* E */
	seed_page(m + 41 * PG, 104);
	ASSERT_EQ(pair_merged(a, m + 40 * PG), sd);
	md_agent_free(a);
	for (size_t i = 0; i < n; i++)
		ASSERT(!in_pool_map(m + i * PG));
	/* Each as written, and a discard reads zeroes, as without the agent. */
	static const char zero[PG];
	const unsigned seeds[][2] = { { 1, 100 }, { 10, 102 }, { 11, 102 }, { 21, 101 }, { 31, 103 }, { 40, 104 },
				      { 41, 104 }, { 5, 5 } };
	for (size_t k = 0; k < sizeof(seeds) / sizeof(seeds[0]); k++) {
		char want[PG];
		seed_page(want, seeds[k][1]);
		want[0] ^= (char)(seeds[k][0] == 1 ? 2 : 0);
		ASSERT(memcmp(m + seeds[k][0] * PG, want, PG) == 0);
	}
	const unsigned discarded[] = { 0, 1, 10, 20, 30, 40, 5 };
	for (size_t k = 0; k < sizeof(discarded) / sizeof(discarded[0]); k++) {
		ASSERT_EQ(madvise(m + discarded[k] * PG, PG, MADV_DONTNEED), 0);
		if (memcmp(m + discarded[k] * PG, zero, PG) != 0)
			fprintf(stderr, "  page %u after a discard: %s\n", discarded[k],
				seeded(m + discarded[k] * PG, 102) ? "B, another page's" : "not zeroes");
		ASSERT(memcmp(m + discarded[k] * PG, zero, PG) == 0);
	}
	munmap(m, n * PG);
	return 0;
}


/* The protection of the mapping at p, as /proc/self/maps says ("rw-"). */
static const char *prot_of(const void *p)
{
	static char perms[4];
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	ASSERT(f);
	perms[0] = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char pr[5];
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, pr) == 3 && lo <= (uintptr_t)p && (uintptr_t)p < hi) {
			memcpy(perms, pr, 3);
			perms[3] = 0;
		}
	}
	fclose(f);
	return perms;
}

/* A scanning agent over n pages, the first two alike and merged, then given
 * up (unregistered): their copies stay in the pool's mappings. */
static char *given_up_pair(md_agent **ap, size_t n)
{
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = "private",
			       .pages_to_scan = 1000, .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(ap, &o), 0);
	char *m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	for (size_t i = 0; i < n; i++)
		seed_page(m + i * PG, (unsigned)i);
	seed_page(m, 100);
	seed_page(m + PG, 100);
	ASSERT_EQ(md_agent_register(*ap, m, n * PG, 0), 0);
	ASSERT(pair_merged(*ap, m));
	ASSERT_EQ(md_agent_unregister(*ap, m, 2 * PG), 0);
	ASSERT(in_pool_map(m) && in_pool_map(m + PG));
	return m;
}

/* Copies RAM given up left in the pool's mappings, moved into anonymous
 * memory as the agent ends, keep the protection the VMM gave them since:
 * a read-only page made writable would take a stray write the VMM's
 * mprotect was there to stop. */
TEST_IMPL(scan_free_moved_copies_keep_protection)
{
	md_agent *a;
	const size_t n = 8;
	char *m = given_up_pair(&a, n);
	ASSERT_EQ(mprotect(m, 2 * PG, PROT_READ), 0);
	md_agent_free(a);
	char want[PG];
	seed_page(want, 100);
	for (size_t i = 0; i < 2; i++) {
		ASSERT(!in_pool_map(m + i * PG));
		ASSERT(strcmp(prot_of(m + i * PG), "r--") == 0);
		ASSERT(memcmp(m + i * PG, want, PG) == 0);
	}
	munmap(m, n * PG);
	return 0;
}

/* The same copies locked by the VMM since (mlock) stay where they are: a
 * new mapping would have to be locked again, and moved over unlocked, the
 * VMM's lock was lost without a word. */
TEST_IMPL(scan_free_locked_copies_left)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose mlock and mlockall lock nothing and never reach the agent");
	md_agent *a;
	const size_t n = 8;
	char *m = given_up_pair(&a, n);
	if (mlock(m, 2 * PG) != 0) {
		md_agent_free(a);
		munmap(m, n * PG);
		SKIP("mlock refused (%s)", strerror(errno));
	}
	md_agent_free(a);
	char want[PG];
	seed_page(want, 100);
	for (size_t i = 0; i < 2; i++) {
		ASSERT(in_pool_map(m + i * PG));
		ASSERT(memcmp(m + i * PG, want, PG) == 0);
	}
	munmap(m, n * PG);
	return 0;
}
/* The same once merging stopped for I/O the agent does not see (io_uring,
 * a device's DMA), whose transfers a copy could lose: the pages stay where
 * they are, as written, and the log says once that a discard of one shows
 * the pool's page. */
TEST_IMPL(scan_free_without_moves_said)
{
	md_agent *a;
	const size_t n = 64;
	char log[600];
	snprintf(log, sizeof(log), "%s/free.log", test_dir());
	unlink(log);
	char *m = pairs_merged_here(&a, "private", n);
	ASSERT_EQ(md__log_open(log), 0);
	md_agent_io_unseen(a, "did I/O in a test");
	md_agent_free(a);
	md__log_open(NULL);
	ASSERT(strstr(file_text(log), "pages still map the pool (64 of guest RAM)"));
	ASSERT(in_pool_map(m));
	ASSERT(pairs_intact(m, n));
	munmap(m, n * PG);
	return 0;
}

/* A record must go with its memory. An unmap inside a region splits its
 * record, into the spare one kept for that; a split that found none (not
 * made again after the last one, memory short) kept the record of memory
 * gone, and a read into whatever the VMM mapped there later was taken for
 * one into guest RAM (review). Now that region's record goes whole, the
 * rest of it made private. */
/* The same for the holes a VMM's MAP_FIXED mmap or mremap left, failing
 * after the kernel unmapped the old pages (Linux up to 6.6): their records
 * stayed when a split found no spare one. */
static int unmapped_page_then_failed(void *arg)
{
	syscall(SYS_munmap, arg, PG);
	errno = ENOMEM;
	return -1;
}

/* Every other page of a region unmapped (plainly, or by a map that then
 * failed) while the records cannot grow: none of them keeps a record. */
static int split_without_memory(int failed_map)
{
	md_agent *a;
	const size_t n = 48;
	char *m = inproc_agent(&a, 100, n * PG);
	for (size_t i = 0; i < n; i++)
		memset(m + i * PG, (int)i + 1, PG);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	md__regions_fail_reserve = 1000;	/* the records never grow again */
	for (size_t i = 1; i < n; i += 2) {
		if (failed_map)
			ASSERT(md__agent_unmap(a, m + i * PG, PG, unmapped_page_then_failed, m + i * PG, 0) != 0);
		else
			ASSERT_EQ(md_agent_unmap(a, m + i * PG, PG), 0);
	}
	md__regions_fail_reserve = 0;
	md__agent_enter(a);
	int stale = 0, kept = 0;
	for (size_t i = 0; i < n; i++) {
		int found = md__region_find(a, (uintptr_t)m + i * PG, PG) != NULL;
		stale += i % 2 && found;
		kept += !(i % 2) && found;
	}
	md__agent_leave(a);
	ASSERT_EQ(stale, 0);
	ASSERT(kept > 0);	/* those split before the records ran out */
	for (size_t i = 0; i < n; i += 2)
		ASSERT_EQ(m[i * PG + 7], (char)(i + 1));
	md_agent_free(a);
	for (size_t i = 0; i < n; i += 2)
		munmap(m + i * PG, PG);
	return 0;
}

TEST_IMPL(scan_unmap_split_without_memory)
{
	return split_without_memory(0);
}

TEST_IMPL(scan_failed_map_split_without_memory)
{
	return split_without_memory(1);
}

/* A userfaultfd of the test's own, as a VMM's: -1 if none can be had. */
static int vmm_uffd(void)
{
	int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (u < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		u = dev < 0 ? -1 : ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		if (dev >= 0)
			close(dev);
	}
	struct uffdio_api api = { .api = UFFD_API };
	if (u >= 0 && ioctl(u, UFFDIO_API, &api) != 0) {
		close(u);
		u = -1;
	}
	return u;
}

/* The VMM's userfaultfd registering its RAM again between its unregister and
 * the agent's taking that RAM back (two threads of the VMM, or the agent's
 * late): the agent recorded the RAM again though the engine could not
 * register it, and a read there would map over the VMM's registration,
 * ending it (review). The RAM stays the VMM's. */
TEST_IMPL(scan_take_back_leaves_vmm_registration)
{
	md_agent *a;
	const size_t n = 16;
	char *m = inproc_agent(&a, 100, n * PG);
	memset(m, 1, n * PG);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	ASSERT_EQ(md_agent_userfault(a, m, n * PG), 1);	/* given up: the VMM's now */
	int u = vmm_uffd();
	ASSERT(u >= 0);
	struct uffdio_register reg = { .range = { (uintptr_t)m, n * PG }, .mode = UFFDIO_REGISTER_MODE_MISSING };
	struct uffdio_range r = { (uintptr_t)m, n * PG };
	ASSERT(ioctl(u, UFFDIO_REGISTER, &reg) == 0);
	ASSERT(ioctl(u, UFFDIO_UNREGISTER, &r) == 0);
	ASSERT(ioctl(u, UFFDIO_REGISTER, &reg) == 0);	/* again, before the agent hears of the first */
	md_agent_userfault_end(a, m, n * PG);
	md__agent_enter(a);
	int recorded = md__region_find(a, (uintptr_t)m, PG) != NULL;
	md__agent_leave(a);
	ASSERT(!recorded);
	/* Once the VMM lets go for good, the RAM is taken back. */
	ASSERT(ioctl(u, UFFDIO_UNREGISTER, &r) == 0);
	ASSERT_EQ(md_agent_userfault_end(a, m, n * PG), 0);
	md__agent_enter(a);
	recorded = md__region_find(a, (uintptr_t)m, PG) != NULL;
	md__agent_leave(a);
	ASSERT(recorded);
	close(u);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* The VMM's mmap over part of guest RAM it holds with a userfaultfd of its
 * own, failed after the kernel unmapped the old pages (Linux up to 6.6, at
 * the map count's limit): the VMM's hold there went with the memory. Kept,
 * the end of the VMM's registration took back what the allocator mapped
 * in the hole since, memory that never asked for merging. */
static int unmapped_then_failed(void *arg)
{
	syscall(SYS_munmap, arg, 4 * PG);
	errno = ENOMEM;
	return -1;
}

TEST_IMPL(scan_failed_map_over_handed_ram_forgets_hold)
{
	md_agent *a;
	const size_t n = 16;
	char *m = inproc_agent(&a, 100, n * PG);
	memset(m, 1, n * PG);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	ASSERT_EQ(md_agent_userfault(a, m, n * PG), 1);	/* given up: the VMM's now */
	ASSERT(md__agent_unmap(a, m + 4 * PG, 4 * PG, unmapped_then_failed, m + 4 * PG, 0) != 0);
	char *heap = mmap(m + 4 * PG, 4 * PG, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	ASSERT(heap == m + 4 * PG);
	ASSERT_EQ(md_agent_userfault_end(a, m, n * PG), 0);
	md__agent_enter(a);
	int heap_recorded = md__region_find(a, (uintptr_t)heap, PG) != NULL;
	int ram_recorded = md__region_find(a, (uintptr_t)m, PG) && md__region_find(a, (uintptr_t)m + 8 * PG, PG);
	md__agent_leave(a);
	ASSERT(!heap_recorded);
	ASSERT(ram_recorded);	/* the rest taken back */
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* An in-process agent's two regions of n pages side by side, eight
 * contents eight copies each in both, merged. */
static char *two_regions_merged(md_agent **a, size_t n)
{
	char *m = inproc_agent(a, 10000, 2 * n * PG);
	for (size_t i = 0; i < 2 * n; i++)
		memset(m + i * PG, (int)(i % 8) + 1, PG);
	ASSERT_EQ(md_agent_register(*a, m, n * PG, 0), 0);
	ASSERT_EQ(md_agent_register(*a, m + n * PG, n * PG, 0), 0);
	ASSERT_EQ(wait_merged(*a, 2 * n - 8), 0);
	return m;
}

/* The same over two regions, the first to be cut: the call fails with
 * ENOMEM and changes nothing in either, as the agent's records say. The
 * engine had given up the second already (made private, its references
 * dropped, out of the scan) while the agent kept it registered (review). */
TEST_IMPL(scan_unregister_two_regions_short_of_memory)
{
	md_agent *a;
	const size_t n = 64;
	char *m = two_regions_merged(&a, n);
	md_stats s0, s1;
	md_agent_stats(a, &s0);
	md__engine_fail_slices = 1;
	ASSERT_EQ(md_agent_unregister(a, m + n / 2 * PG, (n / 2 + n) * PG), -ENOMEM);
	md__engine_fail_slices = 0;
	md_agent_stats(a, &s1);
	pthread_rwlock_rdlock(&a->engine->regions_lock);
	int b_in_engine = md__engine_region(a->engine, (uintptr_t)m + n * PG, PG) != NULL;
	pthread_rwlock_unlock(&a->engine->regions_lock);
	md__agent_enter(a);
	int b_in_agent = md__region_find(a, (uintptr_t)m + n * PG, PG) != NULL;
	md__agent_leave(a);
	ASSERT(b_in_agent);
	ASSERT(b_in_engine);
	ASSERT_EQ(s1.regions, s0.regions);
	ASSERT(s1.pages_sharing >= s0.pages_sharing);
	md_agent_free(a);
	return 0;
}

/* No memory to cut a merged page out of its region. The VMM's unregister
 * (MADV_UNMERGEABLE, mprotect, mremap) fails with ENOMEM and changes
 * nothing, as the kernel's calls may; it reported success while the engine
 * kept merging there. Its unmap goes through as without us, and the region
 * is given up whole, its pages made private (it stayed registered over
 * memory the VMM would map anew). */
TEST_IMPL(scan_unregister_short_of_memory_fails)
{
	md_agent *a;
	const size_t n = 64;
	char *m = inproc_agent(&a, 10000, n * PG);
	for (size_t i = 0; i < n; i++)
		memset(m + i * PG, (int)(i % 8) + 1, PG);	/* eight contents, eight copies each */
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	ASSERT_EQ(wait_merged(a, n - 8), 0);
	md_stats s0, s1;
	md_agent_stats(a, &s0);

	md__engine_fail_slices = 1;
	ASSERT_EQ(md_agent_unregister(a, m + 9 * PG, PG), -ENOMEM);
	md__engine_fail_slices = 0;
	ASSERT_EQ(m[9 * PG + 100], (char)(9 % 8) + 1);	/* still merged, as it was */
	md_agent_stats(a, &s1);
	ASSERT_EQ(s1.regions, s0.regions);
	ASSERT(s1.pages_sharing >= s0.pages_sharing);

	md__engine_fail_slices = 2;
	ASSERT_EQ(md_agent_unmap(a, m + 10 * PG, PG), 0);
	md__engine_fail_slices = 0;
	unsigned char vec;
	ASSERT(mincore(m + 10 * PG, PG, &vec) != 0 && errno == ENOMEM);	/* gone */
	/* The rest given up: private, exact, merged no more. */
	for (size_t i = 0; i < n; i++)
		if (i != 10)
			ASSERT_EQ(m[i * PG + 100], (char)(i % 8) + 1);
	/* A discard there reads zeroes, as the kernel's would: the copies
	 * lie in pool mappings, and dropped they showed the pool page. */
	ASSERT_EQ(md_agent_discard(a, m + 20 * PG, PG), 0);
	ASSERT_EQ(madvise(m + 20 * PG, PG, MADV_DONTNEED), 0);
	for (size_t i = 0; i < PG; i++)
		ASSERT_EQ(m[20 * PG + i], 0);
	ASSERT_EQ(m[21 * PG + 100], (char)(21 % 8) + 1);
	for (int i = 0; i < 50; i++) {
		md_agent_stats(a, &s1);
		if (s1.pages_sharing == 0)
			break;
		usleep(100000);
	}
	ASSERT_EQ(s1.pages_sharing, 0);
	m[9 * PG] = 0x55;	/* writes go through */
	ASSERT_EQ(m[9 * PG], 0x55);
	md_agent_free(a);
	return 0;
}

/* The system call thread tid of this process is blocked in, -1 if it
 * runs (or was woken and is about to) or is gone. */
static long task_syscall(pid_t tid)
{
	char path[64], buf[128];
	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	char *end;
	long nr = strtol(buf, &end, 10);
	return end != buf ? nr : -1;
}

/* The id of this process's thread named comm, 0 if none. */
static pid_t task_named(const char *comm)
{
	pid_t tid = 0;
	DIR *d = opendir("/proc/self/task");
	ASSERT(d);
	for (struct dirent *e; !tid && (e = readdir(d));) {
		if (e->d_name[0] == '.')
			continue;
		char path[300], name[32];
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		snprintf(name, sizeof(name), "%s", file_text(path));
		name[strcspn(name, "\n")] = '\0';
		if (strcmp(name, comm) == 0)
			tid = atoi(e->d_name);
	}
	closedir(d);
	return tid;
}

/* Watches the scanner's thread (tid) for a wait in its sleep's futex,
 * seen twice 20 ms apart, while the thread that stops it (stopper) waits
 * in pthread_join (a futex), until done. The stop's wake-up is written
 * before the join: seen then, the sleep goes on regardless of the stop. */
struct stop_watch {
	struct md__scanner *s;
	pid_t tid, stopper;
	int done, seen;
};

static void *watch_stopped_sleep(void *p)
{
	struct stop_watch *w = p;
	while (!__atomic_load_n(&w->done, __ATOMIC_ACQUIRE) && !w->seen) {
		if (__atomic_load_n(&w->s->stop, __ATOMIC_RELAXED) && task_syscall(w->stopper) == SYS_futex &&
		    task_syscall(w->tid) == SYS_futex) {
			usleep(20000);
			w->seen = task_syscall(w->tid) == SYS_futex;
		} else {
			usleep(1000);
		}
	}
	return NULL;
}

/* The scanner's sleep (sleep_millisecs up to 10 s, 32 times that on a
 * quiet host) ends when it is stopped: an unmerge or the VMM's exit waited
 * it out, the agent's thread answering no lease break meanwhile. */
TEST_IMPL(scan_stop_ends_sleep)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 100, .sleep_ms = 10000 };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	memset(m, 3, 64 * PG);
	ASSERT_EQ(md_agent_register(a, m, 64 * PG, 0), 0);
	/* A batch (its pages read), then a sleep of 10 s at least. */
	md_stats s;
	for (int i = 0; i < 100 && (md_agent_stats(a, &s) != 0 || !s.pages_scanned); i++)
		usleep(50000);
	ASSERT(s.pages_scanned > 0);
	/* Asleep now (30 s: three batches of 100 gathered into one): the
	 * unmerge's stop ends the sleep at once, the thread never seen
	 * still in it while the unmerge waits for it to end. Seen, not
	 * timed: without the wake-up the stop waited up to a second (the
	 * sleep is slept a second at a time); without that either, 30 s. */
	pid_t tid = task_named("md-scan");
	ASSERT(tid > 0);
	ASSERT(thread_blocked_in(getpid(), "md-scan", SYS_futex, 5000));
	struct stop_watch w = { .s = &a->scanner, .tid = tid, .stopper = (pid_t)syscall(SYS_gettid) };
	pthread_t watcher;
	ASSERT_EQ(pthread_create(&watcher, NULL, watch_stopped_sleep, &w), 0);
	ASSERT_EQ(md_agent_unmerge(a), 0);
	__atomic_store_n(&w.done, 1, __ATOMIC_RELEASE);
	pthread_join(watcher, NULL);
	ASSERT(!w.seen);
	md_agent_free(a);
	return 0;
}

struct toggler {
	char *m;
	size_t len;
	volatile int stop;
	pthread_mutex_t lock;	/* held while a piece is inaccessible */
	unsigned long toggles;
};

/* The VMM making pieces of its RAM inaccessible and accessible again. */
static void *toggle_protection(void *p)
{
	struct toggler *t = p;
	uint64_t x = 88172645463325252ull;
	while (!t->stop) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		size_t off = (size_t)(x % (t->len / (16 * PG))) * 16 * PG;
		pthread_mutex_lock(&t->lock);
		mprotect(t->m + off, 16 * PG, PROT_NONE);
		usleep(200);
		mprotect(t->m + off, 16 * PG, PROT_READ | PROT_WRITE);
		pthread_mutex_unlock(&t->lock);
		__atomic_fetch_add(&t->toggles, 1, __ATOMIC_RELAXED);
		usleep(50);
	}
	return NULL;
}

/* Pages the VMM makes PROT_NONE between the scanner's visit and its
 * compare: the compare's copy through the kernel fails, and the merge is
 * abandoned; reading them through the VMM's mapping instead, as it did
 * then, was SIGSEGV in the VMM. */
TEST_IMPL(scan_pages_made_inaccessible)
{
	md_agent *a;
	size_t len = 4096 * PG;
	char *m = inproc_agent(&a, 10000, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	struct toggler t = { m, len, 0, PTHREAD_MUTEX_INITIALIZER, 0 };
	pthread_t th;
	ASSERT_EQ(pthread_create(&th, NULL, toggle_protection, &t), 0);
	/* 3 s at least, until 1,000 changes of protection (a loaded machine
	 * runs the thread less often), within 50 s. */
	int rounds = 0;
	for (; rounds < 500 && (rounds < 30 || __atomic_load_n(&t.toggles, __ATOMIC_RELAXED) < 1000); rounds++) {
		pthread_mutex_lock(&t.lock);
		for (size_t i = 0; i < len; i += PG)
			*(volatile uint64_t *)(m + i + (size_t)rounds * 8) = (i % (64 * PG)) + 1;
		pthread_mutex_unlock(&t.lock);
		usleep(100000);
	}
	t.stop = 1;
	pthread_join(th, NULL);
	md_stats s;
	md_agent_stats(a, &s);
	fprintf(stderr, "  merged %llu, abandoned %llu, %lu pieces made inaccessible\n",
		(unsigned long long)s.merged, (unsigned long long)s.abandoned, t.toggles);
	/* The merges and the protection changes overlapped (3 s of both;
	 * without the fix the VMM died within 0.3 s). */
	ASSERT(s.merged > 0);
	ASSERT(t.toggles >= 1000);
	for (size_t i = 0; i < len; i += PG)
		for (int round = 0; round < rounds; round++)
			ASSERT_EQ(*(uint64_t *)(m + i + (size_t)round * 8), (i % (64 * PG)) + 1);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* The signal mask of each thread named name: how many there are, and
 * whether all of them block every one of the VMM's usual signals. */
static int threads_block(const char *name, int *all_block)
{
	DIR *d = opendir("/proc/self/task");
	ASSERT(d);
	int n = 0;
	*all_block = 1;
	for (struct dirent *e; (e = readdir(d));) {
		char path[300], line[256], comm[32] = "";
		unsigned long long blk = 0;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
		if (strcmp(comm, name) != 0)
			continue;
		n++;
		snprintf(path, sizeof(path), "/proc/self/task/%s/status", e->d_name);
		f = fopen(path, "r");
		ASSERT(f);
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "SigBlk: %llx", &blk) == 1)
				break;
		fclose(f);
		static const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM, SIGIO };
		for (size_t k = 0; k < sizeof(sigs) / sizeof(sigs[0]); k++)
			if (!(blk & (1ull << (sigs[k] - 1))))
				*all_block = 0;
	}
	closedir(d);
	return n;
}

/* Threads of this process named name. */
static int threads_named(const char *name)
{
	int all;
	return threads_block(name, &all);
}

/* A VMM's calls that succeed leave its errno as they found it, as libc's
 * do, though the agent's work inside them failed at something (the run
 * directory there already as the agent starts, the engine's userfaultfd
 * unregistering a range it never protected); libaio's io_setup returns
 * -errno and leaves errno; a MSG_ZEROCOPY send on no socket fails as the
 * kernel says, and stops no sharing (nothing is pinned). */
TEST_IMPL(scan_success_keeps_errno)
{
	char log[600], logenv[700];
	snprintf(log, sizeof(log), "%s/errno.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	const char *env[] = { logenv, "MEMDEDUP_SCAN=1", "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	char want[128];
	proc_start(&a, env);
	snprintf(want, sizeof(want), "0 777 0 777 %d 777 -1 %d", -EINVAL, ENOTSOCK);
	const char *got = proc_cmd(&a, "errnokept");
	printf("  %s\n", got);
	ASSERT(strcmp(got, want) == 0);
	proc_stop(&a);
	ASSERT(!strstr(file_text(log), "MSG_ZEROCOPY"));
	return 0;
}

/* The same over pages a read shared from an image, where the agent's own
 * calls fail on the way (the engine's userfaultfd cannot unregister an
 * image's mapping, a lease is refused while a writer holds the file):
 * a read copied for want of a lease, mlock, mprotect, MADV_UNMERGEABLE,
 * an mremap that moves and one that does not leave errno as found. */
TEST_IMPL(scan_success_keeps_errno_over_images)
{
	const char *env[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_DOMAIN=private", NULL };
	char img[600], busy[600], want[128];
	snprintf(img, sizeof(img), "%s/errno-image", test_dir());
	snprintf(busy, sizeof(busy), "%s/errno-busy", test_dir());
	make_image(img, 32 * PG, 91);
	make_image(busy, 16 * PG, 92);
	struct proc a;
	proc_start(&a, env);
	int fd = (int)proc_num(&a, "open %s", img), bfd = (int)proc_num(&a, "open %s", busy);
	int wfd = (int)proc_num(&a, "open %s rw", busy);
	ASSERT(fd >= 0 && bfd >= 0 && wfd >= 0);
	snprintf(want, sizeof(want), "%d 777 0 777 0 777 0 777 0 777 0 777", 16 * PG);
	const char *got = proc_cmd(&a, "errnoimage %d %d", fd, bfd);
	printf("  %s\n", got);
	ASSERT(strcmp(got, want) == 0);
	proc_stop(&a);
	return 0;
}

/* The agent's threads run inside the VMM: its process-wide signals (a
 * SIGTERM, a SIGCHLD) are for its own threads, which a VMM that takes
 * them with signalfd or sigwait blocks only in its own. Ours block every
 * signal from their start, whatever the thread that made them had. */
TEST_IMPL(scan_threads_block_signals)
{
	md_agent *a;
	size_t len = 64 * PG;
	sigset_t none;
	sigemptyset(&none);
	ASSERT(pthread_sigmask(SIG_SETMASK, &none, NULL) == 0);
	char *m = inproc_agent(&a, 1000, len);
	memset(m, 1, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	int all = 0;
	ASSERT_EQ(threads_block("md-agent", &all), 1);
	ASSERT(all);
	ASSERT_EQ(threads_block("md-scan", &all), 1);
	ASSERT(all);
	ASSERT_EQ(threads_block("md-uffd", &all), 1);
	ASSERT(all);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* In a child: an agent of its own, 64 pages merged in pairs, then the
 * process chrooted where there is no /proc (QEMU's -chroot), or with
 * with_proc a /proc but no /sys (in a mount namespace of its own, which
 * goes with it). Aborts, or exits 5, if any step fails. */
static md_agent *merged_then_chrooted(const char *root, int with_proc)
{
	md_agent *a;
	char proc[600];
	snprintf(proc, sizeof(proc), "%s/proc", root);
	/* Before the agent's threads: a mount namespace is each thread's. */
	if (with_proc && (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
			  (mkdir(proc, 0755) != 0 && errno != EEXIST) || mount("proc", proc, "proc", 0, NULL) != 0))
		_exit(5);
	pairs_merged_here(&a, "private", 64);
	if (chroot(root) != 0 || chdir("/") != 0)
		_exit(5);
	return a;
}

/* An unmerge after the VMM chrooted where there is no /proc (QEMU's
 * -chroot with -runas): the memory available read as none, and every
 * unmerge was refused, the one a change of user makes too. */
TEST_IMPL(scan_unmerge_after_chroot)
{
	char root[512];
	snprintf(root, sizeof(root), "%s/unmerge-root", test_dir());
	ASSERT(mkdir(root, 0755) == 0 || errno == EEXIST);
	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0) {
		md_agent *a = merged_then_chrooted(root, 0);
		int err = md_agent_unmerge(a);
		md_stats s;
		_exit(err ? 6 : md_agent_stats(a, &s) != 0 || s.pages_sharing ? 7 : 0);
	}
	int st;
	ASSERT(waitpid(pid, &st, 0) == pid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	return 0;
}

/* The kernel's lease-break-time after the VMM chrooted where there is no
 * /proc: the value from the agent's start. It was taken for the default,
 * 45 s, and a break short of memory gave up early, letting a writer in
 * with pages still mapped from the image, where the limit was longer. */
TEST_IMPL(scan_lease_break_time_after_chroot)
{
	char root[512];
	snprintf(root, sizeof(root), "%s/lease-root", test_dir());
	ASSERT(mkdir(root, 0755) == 0 || errno == EEXIST);
	/* Put back by a guard of its own, whatever becomes of the test. */
	int guard = set_until_exit("/proc/sys/fs/lease-break-time", "7");
	ASSERT(guard >= 0);
	pid_t pid = fork();
	if (pid == 0) {
		md_agent *a;
		md_agent_options o = { .run_dir = "", .domain = "private" };
		if (md_agent_new(&a, &o) != 0)
			_exit(2);
		if (chroot(root) != 0 || chdir("/") != 0)
			_exit(3);
		_exit(md__lease_break_s(a) == 7 ? 0 : 4);
	}
	int st = 0;
	pid_t got = pid > 0 ? waitpid(pid, &st, 0) : -1;
	close(guard);
	ASSERT(pid > 0 && got == pid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	return 0;
}

/* How many descriptors of this process name the file at path. */
static int fds_naming(const char *path)
{
	struct stat want, st;
	int n = 0;
	if (stat(path, &want) != 0)
		return -1;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	for (struct dirent *e; (e = readdir(d));)
		if (e->d_name[0] != '.' && fstat(atoi(e->d_name), &st) == 0 && st.st_dev == want.st_dev &&
		    st.st_ino == want.st_ino)
			n++;
	closedir(d);
	return n;
}

/* The spares a chroot keeps of the VMM's read-only files (64 at most):
 * the slots of those closed since serve a later chroot's files. */
TEST_IMPL(image_spare_slots_reused)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "", .domain = "private" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char path[600];
	int fds[64];
	for (int i = 0; i < 64; i++) {
		snprintf(path, sizeof(path), "%s/spare-%d", test_dir(), i);
		make_image(path, PG, (unsigned)i);
		fds[i] = open(path, O_RDONLY);
		ASSERT(fds[i] >= 0);
	}
	md__images_before_chroot(a);
	ASSERT_EQ(fds_naming(path), 2);	/* the last file's, and its spare */
	for (int i = 0; i < 64; i++)
		close(fds[i]);
	md__images_release_idle(a);	/* the spares of files closed go */
	ASSERT_EQ(fds_naming(path), 0);
	snprintf(path, sizeof(path), "%s/spare-late", test_dir());
	make_image(path, PG, 99);
	int fd = open(path, O_RDONLY);
	ASSERT(fd >= 0);
	md__images_before_chroot(a);	/* a second chroot */
	ASSERT_EQ(fds_naming(path), 2);
	close(fd);
	md_agent_free(a);
	return 0;
}

/* The same after the VMM, in a memory cgroup, chrooted: the cgroup's
 * limit is read through the files kept from the agent's start. Without
 * them no limit was seen, and an unmerge the cgroup had no room for
 * went ahead (the kernel reclaims or kills the VMM then). */
static int unmerge_in_cgroup_after_chroot(int with_proc)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg) != 0)
		SKIP("no memory cgroup of our own to be had here");
	char root[512];
	snprintf(root, sizeof(root), "%s/unmerge-root%s", test_dir(), with_proc ? "-proc" : "");
	ASSERT(mkdir(root, 0755) == 0 || errno == EEXIST);
	ASSERT_EQ(cgroup_limit(&cg, 1ull << 30), 0);	/* a limit when the agent starts */
	int down[2], up[2];	/* to the child, from it */
	ASSERT_EQ(pipe(down), 0);
	ASSERT_EQ(pipe(up), 0);
	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0) {
		char c;
		if (read(down[0], &c, 1) != 1)	/* in the cgroup */
			_exit(2);
		md_agent *a = merged_then_chrooted(root, with_proc);
		if (write(up[1], "m", 1) != 1 || read(down[0], &c, 1) != 1)	/* the limit lowered */
			_exit(6);
		if (md_agent_unmerge(a) != -ENOMEM)
			_exit(7);
		md_stats s;
		if (md_agent_stats(a, &s) != 0 || s.pages_sharing != 64)
			_exit(8);
		if (write(up[1], "r", 1) != 1 || read(down[0], &c, 1) != 1)	/* the limit raised */
			_exit(9);
		if (md_agent_unmerge(a) != 0)
			_exit(10);
		_exit(md_agent_stats(a, &s) != 0 || s.pages_sharing ? 11 : 0);
	}
	close(up[1]);	/* a child that ended early reads as the end */
	close(down[0]);
	char c = 0;
	ASSERT_EQ(cgroup_enter(&cg, pid), 0);
	ASSERT_EQ(write(down[1], "e", 1), 1);
	if (read(up[0], &c, 1) == 1 && c == 'm') {
		/* Below the 64 MiB an unmerge keeps spare. */
		ASSERT_EQ(cgroup_limit(&cg, cgroup_usage(&cg) + (32ull << 20)), 0);
		ASSERT_EQ(write(down[1], "l", 1), 1);
		if (read(up[0], &c, 1) == 1 && c == 'r') {
			ASSERT_EQ(cgroup_limit(&cg, 1ull << 30), 0);
			ASSERT_EQ(write(down[1], "h", 1), 1);
		}
	}
	close(down[1]);	/* a child waiting on a step that failed here ends */
	int st;
	ASSERT(waitpid(pid, &st, 0) == pid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	return 0;
}

TEST_IMPL(scan_unmerge_after_chroot_keeps_cgroup_limit)
{
	return unmerge_in_cgroup_after_chroot(0);
}

/* The same where the chroot has a /proc but no /sys: the cgroup was
 * found, none of its files, and that read as no limit. */
TEST_IMPL(scan_unmerge_after_chroot_with_proc_keeps_cgroup_limit)
{
	return unmerge_in_cgroup_after_chroot(1);
}

/* Pages shared at read time that the guest has written since are private
 * copies already: an unmerge needs no memory for them. They were counted
 * as copies to make, and an unmerge (the same count stops unseen I/O from
 * making the image pages private) was refused with room for all it had to
 * do. 64 MiB read, then written, under a limit 96 MiB above the use: 64
 * MiB of copies and the 64 MiB kept spare would not fit. */
TEST_IMPL(scan_unmerge_counts_only_unwritten_pages)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg) != 0)
		SKIP("no memory cgroup of our own to be had here");
	const size_t len = 64u << 20;
	char img[600];
	snprintf(img, sizeof(img), "%s/written-image", test_dir());
	make_image(img, len, 5);
	int down[2], up[2];	/* to the child, from it */
	ASSERT_EQ(pipe(down), 0);
	ASSERT_EQ(pipe(up), 0);
	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0) {
		char c;
		md_agent *a;
		if (read(down[0], &c, 1) != 1)	/* in the cgroup */
			_exit(2);
		char *m = inproc_agent(&a, 100, len);
		int fd = open(img, O_RDONLY);
		if (fd < 0 || md_agent_register(a, m, len, 0) != 0 || md_agent_pause(a, 0) != 0)
			_exit(3);
		if (md_agent_pread(a, fd, m, len, 0) != (ssize_t)len)
			_exit(4);
		md_stats s;
		if (md_agent_stats(a, &s) != 0 || s.pages_shared_at_read != len / PG)
			_exit(5);
		for (size_t i = 0; i < len; i += PG)
			m[i] ^= 1;	/* every page written: a private copy */
		if (write(up[1], "w", 1) != 1 || read(down[0], &c, 1) != 1)	/* the limit lowered */
			_exit(6);
		if (md_agent_unmerge(a) != 0)
			_exit(7);
		_exit(md_agent_stats(a, &s) != 0 || s.pages_shared ? 8 : 0);
	}
	close(up[1]);
	close(down[0]);
	char c = 0;
	ASSERT_EQ(cgroup_enter(&cg, pid), 0);
	ASSERT_EQ(write(down[1], "e", 1), 1);
	if (read(up[0], &c, 1) == 1 && c == 'w') {
		ASSERT_EQ(cgroup_limit(&cg, cgroup_usage(&cg) + (96ull << 20)), 0);
		ASSERT_EQ(write(down[1], "l", 1), 1);
	}
	close(down[1]);
	int st;
	ASSERT(waitpid(pid, &st, 0) == pid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	return 0;
}

/* An unmerge before any RAM was registered started a scanner that was
 * never made: resumed, it crashed; with RAM registered then, a second one
 * ran beside it. */
TEST_IMPL(scan_unmerge_before_registration)
{
	md_agent *a;
	size_t len = 512 * PG;
	char *m = inproc_agent(&a, 1000, len);
	ASSERT_EQ(md_agent_unmerge(a), 0);
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	usleep(100000);
	for (size_t i = 0; i < len; i += 8)
		*(uint64_t *)(m + i) = (i % (256 * PG)) * 2654435761u + 1;	/* two equal halves */
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(wait_merged(a, 256), 0);
	ASSERT_EQ(threads_named("md-scan"), 1);
	for (size_t i = 0; i < len; i += 8)
		ASSERT_EQ(*(uint64_t *)(m + i), (i % (256 * PG)) * 2654435761u + 1);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

static void *unmerge_often(void *arg)
{
	for (int i = 0; i < 200; i++)
		ASSERT_EQ(md_agent_unmerge(arg), 0);
	return NULL;
}

static void *unmerge_refused_often(void *arg)
{
	for (int i = 0; i < 50; i++)
		ASSERT_EQ(md_agent_unmerge(arg), -ENOMEM);
	return NULL;
}

static int scanner_paused(md_agent *a)
{
	return __atomic_load_n(&a->scanner.paused, __ATOMIC_SEQ_CST);
}

/* memdedupd killed and started again between an unmerge's first two parts;
 * the agent's thread reconnects and applies the new daemon's WELCOME (not
 * paused) meanwhile. */
static struct tdaemon *restart_daemon;

static void daemon_back_between_parts(struct md_agent *a)
{
	if (!restart_daemon)
		return;
	struct tdaemon *t = restart_daemon;
	restart_daemon = NULL;
	uint64_t gen = a->engine->remote->generation;
	kill(t->pid, SIGKILL);
	waitpid(t->pid, NULL, 0);
	td_restart(t);
	for (int i = 0; i < 500 && (!md__remote_connected(a->engine->remote) || a->engine->remote->generation == gen);
	     i++)
		usleep(10000);
	welcome_applied(t);	/* and its WELCOME applied, before the next part */
}

/* An unmerge pauses the scanner until resumed, whatever a WELCOME says
 * while it runs: a reconnect's (a restarted daemon knows of no pause)
 * resumed the scanner between the unmerge's parts, and once the unmerge
 * was done the scanner merged all again at once (found by a review). */
TEST_IMPL(scan_unmerge_kept_paused_through_welcome)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 64, ni = 256;
	char *m = merged_pairs(&t, &a, n);
	char img[600];
	snprintf(img, sizeof(img), "%s/unmerge-welcome", test_dir());
	make_image(img, ni * PG, 81);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	char *r = mmap(NULL, ni * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(r != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, r, ni * PG, 0), 0);
	ASSERT_EQ(md_agent_pread(a, fd, r, ni * PG, 0), (ssize_t)(ni * PG));
	restart_daemon = &t;
	md__privatize_part_pages = 16;	/* the image's pages in 16 parts */
	md__part_hook = daemon_back_between_parts;
	int err = md_agent_unmerge(a);
	md__part_hook = NULL;
	md__privatize_part_pages = 2048;
	ASSERT(restart_daemon == NULL);	/* the hook ran */
	ASSERT_EQ(err, 0);
	ASSERT(md__remote_connected(a->engine->remote));	/* welcomed anew */
	ASSERT_EQ(scanner_paused(a), 1);
	usleep(1500000);	/* a scanner let run merges these pairs in a few batches */
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_sharing, 0);
	ASSERT_EQ(scanner_paused(a), 1);
	md_agent_free(a);
	td_stop(&t);
	close(fd);
	munmap(r, ni * PG);
	munmap(m, n * PG);
	return 0;
}

/* memdedupd's UNMERGE leaves the scanner paused until memdedupd resumes
 * it: a new daemon (restarted) knows nothing of it, and its WELCOME (not
 * paused) leaves the pause; only the daemon that asked may lift it so. */
TEST_IMPL(scan_daemon_unmerge_kept_over_new_daemon)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 64;
	char *m = merged_pairs(&t, &a, n);
	struct md__msg_control um = { .op = MD_CTL_UNMERGE };
	md__scan_apply_control(a, &um);
	ASSERT_EQ(__atomic_load_n(&a->unmerged, __ATOMIC_RELAXED), 2);
	ASSERT_EQ(scanner_paused(a), 1);
	uint64_t gen = a->engine->remote->generation;
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	for (int i = 0; i < 500 && (!md__remote_connected(a->engine->remote) || a->engine->remote->generation == gen);
	     i++)
		usleep(10000);
	ASSERT(a->engine->remote->generation != gen);
	ASSERT(welcome_applied(&t));
	ASSERT_EQ(scanner_paused(a), 1);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_sharing, 0);
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	td_stop(&t);
	munmap(m, n * PG);
	return 0;
}

/* Pages still in a restarted memdedupd's old pool are moved off it only
 * while the scanner runs: paused (by the VMM here; an unmerge's, unseen
 * I/O's), a page replaced could lose a write the agent does not see. Once
 * resumed, they go. */
TEST_IMPL(scan_old_pool_kept_while_paused)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 64;
	char *m = merged_pairs(&t, &a, n);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	uint64_t gen = a->engine->remote->generation;
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	for (int i = 0; i < 500 && (!md__remote_connected(a->engine->remote) || a->engine->remote->generation == gen);
	     i++)
		usleep(10000);
	ASSERT(a->engine->remote->generation != gen);
	ASSERT_EQ(__atomic_load_n(&a->engine->leave_old, __ATOMIC_RELAXED), 1);
	/* Four of the agent's thread's passes (nothing moves while paused:
	 * no walk resets the count), each of which would move pages off. */
	for (int i = 0; i < 1000 && __atomic_load_n(&a->walk_age, __ATOMIC_RELAXED) < 4; i++)
		usleep(20000);
	ASSERT(__atomic_load_n(&a->walk_age, __ATOMIC_RELAXED) >= 4);
	ASSERT_EQ(__atomic_load_n(&a->engine->leave_old, __ATOMIC_RELAXED), 1);
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	for (int i = 0; i < 500 && __atomic_load_n(&a->engine->leave_old, __ATOMIC_RELAXED); i++)
		usleep(20000);
	ASSERT_EQ(__atomic_load_n(&a->engine->leave_old, __ATOMIC_RELAXED), 0);
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	td_stop(&t);
	munmap(m, n * PG);
	return 0;
}

/* The passes that move pages off a restarted memdedupd's old pool
 * (md__engine_leave_file, called here with the agent paused, as its thread
 * calls it): pages the guest wrote go at once; unwritten ones, a copy more
 * each, only in a pass with room for all of them, and counted meanwhile; a
 * run a read in flight holds is tried again. The old pool is left for good
 * (leave_old) only once no page is kept on it: else its memory stays in
 * use for as long as the process lives. */
TEST_IMPL(scan_old_pool_left_in_passes)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 64, h = n / 2;
	char *m = merged_pairs(&t, &a, n);
	/* The second half written: private copies in the pool's mapping,
	 * their twins in the first half unique from now on. */
	for (size_t i = h; i < n; i++)
		m[i * PG + 1] ^= 0x5a;
	char *want = malloc(n * PG);
	ASSERT(want);
	memcpy(want, m, n * PG);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	struct md__engine *e = a->engine;
	uint64_t gen = e->remote->generation;
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	for (int i = 0; i < 500 && (!md__remote_connected(e->remote) || e->remote->generation == gen); i++)
		usleep(10000);
	ASSERT(e->remote->generation != gen);
	ASSERT_EQ(__atomic_load_n(&e->leave_old, __ATOMIC_RELAXED), 1);

	/* No room for copies: the written pages move, the unwritten stay,
	 * counted, and the pool is not left. */
	ASSERT_EQ(md__engine_leave_file(e, 4 * n, 0), h);
	ASSERT(pages_anon_present(m + h * PG, h));
	for (size_t i = 0; i < h; i++)
		ASSERT(!pages_anon_present(m + i * PG, 1));
	ASSERT_EQ(e->leave_last_unwritten, h);
	ASSERT_EQ(__atomic_load_n(&e->leave_old, __ATOMIC_RELAXED), 1);

	/* Room, but a read in flight into the first page holds its run. */
	struct iovec iov = { m, PG };
	int token = md__inflight_begin(&e->io, &iov, 1);
	ASSERT(md__engine_leave_file(e, 4 * n, 1) < h);
	md__inflight_end(&e->io, token);
	ASSERT(!pages_anon_present(m, 1));
	ASSERT_EQ(__atomic_load_n(&e->leave_old, __ATOMIC_RELAXED), 1);

	/* Tried again: every page off the old pool, and left. */
	md__engine_leave_file(e, 4 * n, 1);
	ASSERT(pages_anon_present(m, n));
	ASSERT_EQ(__atomic_load_n(&e->leave_old, __ATOMIC_RELAXED), 0);
	ASSERT(memcmp(m, want, n * PG) == 0);
	md_agent_free(a);
	td_stop(&t);
	munmap(m, n * PG);
	free(want);
	return 0;
}

struct step_held {
	int entered, release;
};

/* The scanner's image index, asked in a visit: holds the visit until let go. */
static int find_held(void *arg, uint64_t hash, const void *page, uint64_t *cookie)
{
	struct step_held *h = arg;
	(void)hash, (void)page, (void)cookie;
	__atomic_store_n(&h->entered, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&h->release, __ATOMIC_SEQ_CST))
		usleep(1000);
	return 0;
}

static void *daemon_pauses(void *arg)
{
	struct md__msg_control pause = { .op = MD_CTL_PAUSE };
	md__scan_apply_control(arg, &pause);
	return NULL;
}

/* memdedupd's PAUSE is answered once the scanner's step has ended, as
 * kernel KSM's run=0 waits for ksmd's batch: answered at once, the visit
 * under way could still merge after `memdedup pause` returned. */
TEST_IMPL(scan_daemon_pause_waits_for_step)
{
	md_agent *a;
	const size_t n = 16;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN | MD_OPT_NO_SHARING, .domain = "private",
			       .pages_to_scan = 1000, .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	struct step_held h = { 0, 0 };
	/* No image index (no read-time sharing): the visits ask ours. */
	ASSERT(a->scanner.files.find == NULL);
	a->scanner.files = (struct md__file_source){ &h, find_held, NULL };
	char *m = pairs_ram(n);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	for (int i = 0; i < 500 && !__atomic_load_n(&h.entered, __ATOMIC_SEQ_CST); i++)
		usleep(10000);
	ASSERT(__atomic_load_n(&h.entered, __ATOMIC_SEQ_CST));
	pthread_t th;
	ASSERT_EQ(pthread_create(&th, NULL, daemon_pauses, a), 0);
	/* Not answered while the visit is held (up to 2 s, PAUSE_WAIT_MS). */
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += 300000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	int early = pthread_timedjoin_np(th, NULL, &until) == 0;
	__atomic_store_n(&h.release, 1, __ATOMIC_SEQ_CST);
	if (!early)
		ASSERT_EQ(pthread_join(th, NULL), 0);
	ASSERT(!early);
	ASSERT_EQ(scanner_paused(a), 1);
	ASSERT_EQ(__atomic_load_n(&a->scanner.stepping, __ATOMIC_SEQ_CST), 0);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* A reap that finds dozens of merged pages written ends an idle scanner's
 * sleep and holds it at its set rate until its cursor has been round past
 * them (md__scanner_hold): they merge again only when it comes by, and an
 * idle scanner took a minute and more to (2,048 pages written: 54 s to the
 * set rate, 83 s to half of them merged again; 10 and 14 s so). */
TEST_IMPL(scan_breaks_end_idle_sleep)
{
	md_agent *a;
	const size_t n = 256;
	char *m = pairs_merged_here(&a, NULL, n);
	md_stats st;
	/* The merges' batch over (its progress, counted at its end, which a
	 * loaded machine may put after the count of pages sharing, ended the
	 * idle spell set below): quiet since, at a set sleep of 1 ms. */
	for (int i = 0; i < 2000 && __atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED) != MD_SCAN_IDLE_MAX; i++)
		usleep(10000);
	ASSERT_EQ(__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED), MD_SCAN_IDLE_MAX);
	/* Idle at a set sleep of a second: the scanner sleeps 32 s once the
	 * pass under way is over, and a pass is a batch. */
	__atomic_store_n(&a->scanner.sleep_ms, 1000, __ATOMIC_RELAXED);
	__atomic_store_n(&a->scanner.idle, MD_SCAN_IDLE_MAX, __ATOMIC_RELAXED);
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	uint64_t passes = st.full_scans;
	for (int i = 0; i < 2000 && st.full_scans == passes; i++, usleep(10000))
		md_agent_stats(a, &st);
	ASSERT(st.full_scans > passes);
	ASSERT_EQ(__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED), MD_SCAN_IDLE_MAX);
	for (size_t i = 0; i < n / 2; i++)
		m[i * PG + 1] ^= 1;
	ASSERT_EQ(md_agent_stats(a, &st), 0);	/* reaps: the writes found */
	ASSERT_EQ(st.scan_breaks, n / 2);
	ASSERT_EQ(__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED), 0);
	ASSERT(__atomic_load_n(&a->scanner.hold_pass, __ATOMIC_RELAXED) > st.full_scans);
	/* Awake: a pass within about a set sleep, not 32 s. */
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	passes = st.full_scans;
	while (st.full_scans == passes && secs_since(&t0) < 12) {
		usleep(5000);
		md_agent_stats(a, &st);
	}
	printf("  a pass %.3f s after the reap, the idle sleep being 32 s\n", secs_since(&t0));
	ASSERT(st.full_scans > passes);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* Another agent of domain "cand", connected first (the share of the rate
 * its coming changes ends a sleep too), forked: on the word (go), it
 * publishes the content of m's n pages, and stays (its pages pinned) until
 * told; it writes to done once connected and once published. Then waits,
 * for a's part of the rate seen and a's pages looked up (a second visit:
 * the first takes the checksums), found nowhere, aged: the daemon knows
 * them as first sightings. */
static pid_t cand_publisher(struct tdaemon *t, md_agent *a, const char *m, size_t n, int go[2], int done[2])
{
	ASSERT(pipe(go) == 0 && pipe(done) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__msg_welcome w;
		int fd;
		char b = 1;
		struct md__client *c = td_agent(t, "cand", &w, &fd);
		if (write(done[1], &b, 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(3);
		for (size_t i = 0; i < n; i++) {
			uint64_t h = md__page_hash(m + i * PG), addr = 0x7f0000000000ull + i * PG;
			uint32_t s1, first;
			if (md__client_lookup(c, &h, &addr, 1, &s1) || s1 != MD_LOOKUP_PUBLISH)
				_exit(1);
			if (md__client_publish(c, &h, m + i * PG, 1, &first))
				_exit(2);
		}
		if (write(done[1], &b, 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(3);
		_exit(0);
	}
	char b = 1;
	ASSERT_EQ(read(done[0], &b, 1), 1);
	md_stats st = { 0 };
	for (int i = 0; i < 1000 && (st.pages_unshared < n ||
				     __atomic_load_n(&a->scanner.share_cpu, __ATOMIC_RELAXED) != MD_SCAN_PART_ALL / 2); i++) {
		usleep(20000);
		ASSERT_EQ(md_agent_stats(a, &st), 0);
	}
	ASSERT_EQ(st.pages_unshared, n);
	ASSERT_EQ(__atomic_load_n(&a->scanner.share_cpu, __ATOMIC_RELAXED), MD_SCAN_PART_ALL / 2);
	ASSERT_EQ(st.candidates, 0);
	return kid;
}

/* A daemon, an agent of domain "cand" scanning n unique pages at
 * pages_to_scan every sleep_ms, and its publisher (cand_publisher). */
struct cand_run {
	struct tdaemon t;
	md_agent *a;
	char *m;
	size_t n;
	int go[2], done[2];
	pid_t kid;
};

static void cand_up(struct cand_run *r, size_t n, unsigned pages_to_scan, unsigned sleep_ms)
{
	r->n = n;
	td_start(&r->t, 4096);
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = pages_to_scan,
			       .sleep_ms = sleep_ms, .domain = "cand", .daemon_socket = r->t.sock };
	ASSERT_EQ(md_agent_new(&r->a, &o), 0);
	r->m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(r->m != MAP_FAILED);
	unique_pages(r->a, r->m, n);
	r->kid = cand_publisher(&r->t, r->a, r->m, n, r->go, r->done);
}

static void cand_down(struct cand_run *r)
{
	char b = 1;
	ASSERT_EQ(write(r->go[1], &b, 1), 1);
	int status;
	ASSERT_EQ(waitpid(r->kid, &status, 0), r->kid);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(r->go[0]);
	close(r->go[1]);
	close(r->done[0]);
	close(r->done[1]);
	md_agent_free(r->a);
	td_stop(&r->t);
	munmap(r->m, r->n * PG);
}

/* Candidates (memdedupd names a page this agent looked up whose content
 * another agent has just published) end an idle scanner's sleep, as new
 * hints do: merged all but certainly, they waited for its end (32 s at a
 * set sleep of a second). */
TEST_IMPL(scan_candidates_end_idle_sleep)
{
	struct cand_run r;
	const size_t n = 16;
	cand_up(&r, n, 300, 1000);
	md_agent *a = r.a;
	char b = 1;
	md_stats st = { 0 };
	/* Idle after one more pass: asleep for 32 s. */
	wait_scanner_asleep_quiet(a);
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	__atomic_store_n(&a->scanner.idle, MD_SCAN_IDLE_MAX, __ATOMIC_RELAXED);
	uint64_t passes = st.full_scans;
	for (int i = 0; i < 2000 && st.full_scans == passes; i++, usleep(10000))
		md_agent_stats(a, &st);
	ASSERT(st.full_scans > passes);
	ASSERT_EQ(__atomic_load_n(&a->scanner.idle, __ATOMIC_RELAXED), MD_SCAN_IDLE_MAX);
	ASSERT_EQ(write(r.go[1], &b, 1), 1);
	ASSERT_EQ(read(r.done[0], &b, 1), 1);
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* Visited within 12 s: about 2 s with the poke, 32 s without. */
	while (st.merged_from_candidates == 0 && secs_since(&t0) < 12) {
		usleep(5000);
		md_agent_stats(a, &st);
	}
	printf("  candidates merged %.3f s after they were published, the idle sleep being 32 s\n",
	       secs_since(&t0));
	ASSERT(st.merged_from_candidates > 0);
	cand_down(&r);
	return 0;
}

/* Candidates are merged outside the agent's own rate, up to
 * MD_SCAN_CANDIDATES a batch, not a batch's pages of them: memdedupd gives
 * an agent whose lookups find nothing a small part of the rate, and its
 * peer, whose visits find the twins of its pages, the most; bound by its
 * own batch, the first merged what the second found at a quarter of the
 * pace (docs/benchmarks.md, fifty-seventh session). */
TEST_IMPL(scan_candidates_outside_own_rate)
{
	struct cand_run r;
	const size_t n = 512;
	cand_up(&r, n, 2000, 20);
	md_agent *a = r.a;
	char b = 1;
	/* Now 2 pages (1 of them its part) every 0.5 s: gathered, 8 pages a
	 * wake-up every 4 s. */
	__atomic_store_n(&a->scanner.batch, 2, __ATOMIC_RELAXED);
	__atomic_store_n(&a->scanner.sleep_ms, 500, __ATOMIC_RELAXED);
	/* A new rate ends the sleep under way within a second (a slice of
	 * it), and the batch after it sleeps at the new one. */
	usleep(1500000);
	md_stats st = { 0 };
	ASSERT_EQ(write(r.go[1], &b, 1), 1);
	ASSERT_EQ(read(r.done[0], &b, 1), 1);
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (st.merged_from_candidates < n && secs_since(&t0) < 40) {
		usleep(20000);
		md_agent_stats(a, &st);
	}
	printf("  %llu of %zu candidates merged in %.1f s, at a rate of 8 pages a wake-up every 4 s\n",
	       (unsigned long long)st.merged_from_candidates, n, secs_since(&t0));
	ASSERT_EQ(st.merged_from_candidates, n);
	cand_down(&r);
	return 0;
}

/* pages_sharing follows a switch of pools: memdedupd restarted (or the
 * VMM's user changed), the slots of the old pool are forgotten, and the
 * agent's published count drops with them at its next walk, not up to
 * 30 s later (nothing else that makes a walk due moved). */
TEST_IMPL(scan_sharing_follows_pool_switch)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 64;
	char *m = merged_pairs(&t, &a, n);
	ASSERT_EQ(sharing_published(a, n), n);
	ASSERT_EQ(md_agent_pause(a, 1), 0);	/* no merges move the walk, nor merge anew */
	/* Past the agent's thread's first reaps (merges made them due), which
	 * walk too: 5 of its passes without a walk. */
	for (int i = 0; i < 1000 && __atomic_load_n(&a->walk_age, __ATOMIC_RELAXED) < 5; i++)
		usleep(20000);
	ASSERT(__atomic_load_n(&a->walk_age, __ATOMIC_RELAXED) >= 5);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);	/* a walk now: the next by age 30 s on */
	ASSERT_EQ(s.pages_sharing, n);
	uint64_t gen = a->engine->remote->generation;
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	for (int i = 0; i < 500 && (!md__remote_connected(a->engine->remote) || a->engine->remote->generation == gen);
	     i++)
		usleep(10000);
	ASSERT(a->engine->remote->generation != gen);
	ASSERT_EQ(sharing_published(a, 0), 0);
	md_agent_free(a);
	td_stop(&t);
	munmap(m, n * PG);
	return 0;
}

/* The mapping budget's estimate only rises (a merge's mappings are counted,
 * not those a guest's write or a discard takes back): the read path counts
 * again before it copies a read for want of room, as the engine does
 * before it refuses a merge. It went by the estimate, and copied reads
 * with a few hundred mappings in the process, until the engine counted. */
TEST_IMPL(read_budget_counted_again_before_copying)
{
	md_agent *a;
	char img[600];
	const size_t n = 16;
	char *m = inproc_agent(&a, 100, 4 * n * PG);
	ASSERT_EQ(md_agent_register(a, m, 4 * n * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	snprintf(img, sizeof(img), "%s/budget-image", test_dir());
	make_image(img, n * PG, 71);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	/* An estimate past the budget, last counted long ago. */
	__atomic_store_n(&a->vmas.est, a->max_vmas, __ATOMIC_RELAXED);
	__atomic_store_n(&a->vmas.counted_ns, 0, __ATOMIC_RELAXED);
	ASSERT_EQ(md_agent_pread(a, fd, m, n * PG, 0), (ssize_t)(n * PG));
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, n);
	ASSERT(s.vmas < a->max_vmas);
	/* Past the budget within the second of a count (md_agent_stats
	 * counted too): copied. */
	__atomic_store_n(&a->vmas.est, a->max_vmas, __ATOMIC_RELAXED);
	ASSERT_EQ(md_agent_pread(a, fd, m + 2 * n * PG, n * PG, 0), (ssize_t)(n * PG));
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, n);
	ASSERT(memcmp(m + 2 * n * PG, m, n * PG) == 0);
	close(fd);
	md_agent_free(a);
	munmap(m, 4 * n * PG);
	return 0;
}

/* The writer's go, given between the first two parts of an unmerge; each
 * part of the unmerge then takes 150 ms. */
static int writer_go = -1;

static void writer_between_parts(struct md_agent *a)
{
	if (writer_go >= 0) {
		if (write(writer_go, "g", 1) != 1)
			abort();
		close(writer_go);
		writer_go = -1;
	}
	/* The unmerge's parts only: a break's own take no time. */
	if (!__atomic_load_n(&a->breaking, __ATOMIC_RELAXED))
		usleep(150000);
}

/* An unmerge memdedupd asks for runs on the agent's thread, which alone
 * takes lease signals: a writer that opens an image meanwhile has its
 * break begun between two parts. It waited for the whole unmerge (16
 * parts of 150 ms here), the kernel let the writer in after its
 * lease-break-time (1 s here), and the guest read the writer's bytes in
 * the pages not yet private. */
TEST_IMPL(scan_daemon_unmerge_takes_lease_breaks)
{
	struct tdaemon t;
	md_agent *a;
	char *pairs = merged_pairs(&t, &a, 64);
	const size_t n = 256;
	char img[600], *orig = malloc(n * PG);
	ASSERT(orig);
	snprintf(img, sizeof(img), "%s/unmerge-break", test_dir());
	make_image(img, n * PG, 61);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(pread(fd, orig, n * PG, 0), (ssize_t)(n * PG));
	char *m = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, n * PG, 0), (ssize_t)(n * PG));
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, n);

	int guard = set_until_exit("/proc/sys/fs/lease-break-time", "1");
	ASSERT(guard >= 0);
	int go[2];
	ASSERT_EQ(pipe(go), 0);
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0) {
		char c, junk[4096];
		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(3);
		int wfd = open(img, O_WRONLY);
		memset(junk, 0xee, sizeof(junk));
		for (size_t off = 0; wfd >= 0 && off < n * PG; off += sizeof(junk))
			if (pwrite(wfd, junk, sizeof(junk), (off_t)off) != (ssize_t)sizeof(junk))
				_exit(2);
		_exit(wfd >= 0 ? 0 : 1);
	}
	close(go[0]);
	writer_go = go[1];
	md__privatize_part_pages = 16;
	md__part_hook = writer_between_parts;
	int rc = td_sh("MEMDEDUP_SOCKET=%s %s/memdedup unmerge --pid %d >/dev/null", t.sock, build_dir(),
		       (int)getpid());
	md__part_hook = NULL;
	md__privatize_part_pages = 2048;
	if (writer_go >= 0)
		close(writer_go);
	int st;
	ASSERT_EQ(waitpid(writer, &st, 0), writer);
	close(guard);
	ASSERT_EQ(rc, 0);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* What the guest read stays what it read: the writer's bytes are the
	 * file's, not guest RAM's. */
	ASSERT(memcmp(m, orig, n * PG) == 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	md_agent_free(a);
	td_stop(&t);
	munmap(m, n * PG);
	munmap(pairs, 64 * PG);
	free(orig);
	close(fd);
	return 0;
}

#define TURN_PAGES 38400u	/* 150 MiB an agent */

static void first_part_waits(struct md_agent *a)
{
	static int waited;
	(void)a;
	if (!waited++)
		usleep(500000);
}

/* A child's agent of memdedupd's at sock, TURN_PAGES of one content
 * merged; then md__part_hook holds its unmerge's copies after their first
 * part, and a byte on ready says so. Never returns. */
static void turn_agent(const char *sock, int ready)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 20000, .sleep_ms = 1,
			       .daemon_socket = sock };
	if (md_agent_new(&a, &o) != 0)
		_exit(2);
	char *m = mmap(NULL, TURN_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		_exit(3);
	memset(m, 7, TURN_PAGES * PG);
	if (md_agent_register(a, m, TURN_PAGES * PG, 0) != 0 || wait_merged(a, TURN_PAGES - 256) != 0)
		_exit(4);
	md__part_hook = first_part_waits;
	if (write(ready, "r", 1) != 1)
		_exit(5);
	for (;;)
		pause();
}

/* `memdedup unmerge` of two agents in one cgroup with room for one's
 * copies (150 MiB and the 64 MiB kept spare) but not both's: each agent
 * holds its copies half a second after their first part (7 MiB), so an
 * agent sent the unmerge at the same time checks the memory while the
 * first's copies are still to come, and goes on too: the cgroup's OOM
 * killer then killed one. memdedupd sends it one agent at a time: the
 * second finds the first's copies made, and refuses. (The cross test of
 * testproc's agents passes without that when the two checks happen a few
 * milliseconds apart.) */
TEST_IMPL(scan_unmerge_turns_see_copies_made)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg) != 0)
		SKIP("no memory cgroup of our own to be had here");
	struct tdaemon t;
	td_start(&t, 65536);
	int ready[2];
	pid_t kid[2];
	char c, path[600];
	ASSERT_EQ(pipe(ready), 0);
	for (int i = 0; i < 2; i++) {
		kid[i] = fork();
		ASSERT(kid[i] >= 0);
		if (kid[i] == 0)
			turn_agent(t.sock, ready[1]);
	}
	close(ready[1]);	/* a child that fails: the read ends */
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(read(ready[0], &c, 1), 1);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(cgroup_enter(&cg, kid[i]), 0);
	ASSERT_EQ(cgroup_limit(&cg, cgroup_usage(&cg) + (240ull << 20)), 0);
	snprintf(path, sizeof(path), "%s/out", test_dir());
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup unmerge >%s 2>&1", t.sock, build_dir(), path), 1);
	const char *out = file_text(path);
	fprintf(stderr, "  %s", out);
	int refused = 0;
	for (int i = 0; i < 2; i++) {
		ASSERT_EQ(waitpid(kid[i], NULL, WNOHANG), 0);	/* not killed */
		char want[64];
		snprintf(want, sizeof(want), "pid %d: not enough memory", (int)kid[i]);
		refused += strstr(out, want) != NULL;
	}
	ASSERT_EQ(refused, 1);
	ASSERT(strstr(out, "(done by 1 of 2 agents)"));
	ASSERT_EQ(cgroup_limit(&cg, 1ull << 30), 0);
	for (int i = 0; i < 2; i++) {
		kill(kid[i], SIGKILL);
		waitpid(kid[i], NULL, 0);
	}
	close(ready[0]);
	td_stop(&t);
	close(cg.guard);
	return 0;
}

/* memdedupd's PAUSE, applied by the agent's thread while the VMM's unmerge
 * is refused for want of memory: the refused unmerge put back the pause it
 * had found (none), and the operator's pause was lost. */
TEST_IMPL(scan_refused_unmerge_keeps_daemon_pause)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg) != 0)
		SKIP("no memory cgroup of our own to be had here");
	md_agent *a;
	const size_t n = 64;
	char *m = pairs_merged_here(&a, NULL, n);
	ASSERT_EQ(cgroup_enter(&cg, getpid()), 0);
	/* Below the 64 MiB an unmerge keeps spare: refused. */
	ASSERT_EQ(cgroup_limit(&cg, cgroup_usage(&cg) + (32ull << 20)), 0);
	ASSERT_EQ(md_agent_unmerge(a), -ENOMEM);
	ASSERT_EQ(scanner_paused(a), 0);
	struct md__msg_control pause = { .op = MD_CTL_PAUSE }, resume = { .op = MD_CTL_RESUME };
	for (int round = 0; round < 20; round++) {
		pthread_t t;
		ASSERT_EQ(pthread_create(&t, NULL, unmerge_refused_often, a), 0);
		usleep(1000 + 500 * (unsigned)round);
		md__scan_apply_control(a, &pause);
		pthread_join(t, NULL);
		ASSERT_EQ(scanner_paused(a), 1);
		md__scan_apply_control(a, &resume);
		ASSERT_EQ(scanner_paused(a), 0);
	}
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_sharing, n);	/* refused: still merged */
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* A reconnect's WELCOME (not paused) while the VMM's unmerge, refused
 * for want of memory, runs, 20 times at moments further apart: with the
 * VMM's own pause (vmm_paused) or without, the scanner ends as that says:
 * 0, or the test fails. */
static int welcome_during_refused_unmerges(int vmm_paused)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg) != 0)
		SKIP("no memory cgroup of our own to be had here");
	md_agent *a;
	const size_t n = 64;
	char *m = pairs_merged_here(&a, NULL, n);
	if (vmm_paused)
		ASSERT_EQ(md_agent_pause(a, 1), 0);
	ASSERT_EQ(cgroup_enter(&cg, getpid()), 0);
	ASSERT_EQ(cgroup_limit(&cg, cgroup_usage(&cg) + (32ull << 20)), 0);
	for (int round = 0; round < 20; round++) {
		pthread_t t;
		ASSERT_EQ(pthread_create(&t, NULL, unmerge_refused_often, a), 0);
		usleep(1000 + 500 * (unsigned)round);
		md__scan_welcome_pause(a, 0);
		pthread_join(t, NULL);
		ASSERT_EQ(scanner_paused(a), vmm_paused);
	}
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* Without the VMM's pause: kept paused for the unmerge, then left paused
 * by it (the welcome had set the pause since), though memdedupd said run.
 * The refused unmerge applies what the welcome asked for. */
TEST_IMPL(scan_refused_unmerge_applies_welcome)
{
	return welcome_during_refused_unmerges(0);
}

/* With the VMM's own pause: the welcome (not paused) during the refused
 * unmerge is kept paused for the VMM, and the unmerge, putting back what
 * the welcome asked, keeps the VMM's pause too. */
TEST_IMPL(scan_refused_unmerge_keeps_vmm_pause)
{
	return welcome_during_refused_unmerges(1);
}

/* memdedupd's RESUME is the operator's: it lifts the VMM's own pause too,
 * for good, so that a later welcome (not paused) leaves it resumed. */
TEST_IMPL(scan_daemon_resume_lifts_vmm_pause)
{
	md_agent *a;
	const size_t n = 16;
	char *m = inproc_agent(&a, 100, n * PG);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	md__scan_welcome_pause(a, 0);
	ASSERT_EQ(scanner_paused(a), 1);	/* the VMM's pause kept */
	struct md__msg_control resume = { .op = MD_CTL_RESUME };
	md__scan_apply_control(a, &resume);
	ASSERT_EQ(scanner_paused(a), 0);
	md__scan_welcome_pause(a, 1);
	md__scan_welcome_pause(a, 0);
	ASSERT_EQ(scanner_paused(a), 0);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

static void *io_unseen_first(void *arg)
{
	md_agent_io_unseen(arg, "test");
	return NULL;
}

/* A second caller of md_agent_io_unseen (another I/O thread submitting)
 * returns only once the first has stopped the merges and made the pages
 * shared with images private: it found the flag set and went on to
 * submit, its transfer pinning pages a merge could still replace. */
TEST_IMPL(scan_io_unseen_second_caller_waits)
{
	md_agent *a;
	const size_t n = 64;
	char *m = inproc_agent(&a, 1000, n * PG);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	md__io_unseen_delay_us = 300000;
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, io_unseen_first, a), 0);
	while (!__atomic_load_n(&a->io_unseen, __ATOMIC_SEQ_CST))
		usleep(1000);
	md_agent_io_unseen(a, "test");
	unsigned slept = __atomic_load_n(&md__io_unseen_slept, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	md__io_unseen_delay_us = 0;
	ASSERT_EQ(slept, 1);	/* the first was done when the second returned */
	ASSERT(md__inflight_busy(&a->engine->io, (uintptr_t)m, PG));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* The host's memory available said to be kb from now on (a fake
 * /proc/meminfo under the test's directory), until md__memroom_proc is
 * "/proc" again. */
static void fake_available(unsigned kb)
{
	static char proc[600];
	char meminfo[700];
	snprintf(proc, sizeof(proc), "%s/proc", test_dir());
	snprintf(meminfo, sizeof(meminfo), "%s/meminfo", proc);
	ASSERT(mkdir(proc, 0755) == 0 || errno == EEXIST);
	FILE *f = fopen(meminfo, "w");
	ASSERT(f && fprintf(f, "MemAvailable: %u kB\n", kb) > 0 && fclose(f) == 0);
	md__memroom_proc = proc;
}

/* md_agent_io_unseen with the host's memory available said to be kb. */
static void io_unseen_with_available(md_agent *a, unsigned kb)
{
	fake_available(kb);
	md_agent_io_unseen(a, "test");
	md__memroom_proc = "/proc";
}

/* Memory short for the copies when I/O the agent does not see begins:
 * the merged pages stay merged, which is said (loudly: a read-only pin
 * may then send stale content) and counted in merge_fallbacks. */
TEST_IMPL(scan_io_unseen_short_of_memory_counted)
{
	md_agent *a;
	const size_t n = 64;
	char *m = pairs_merged_here(&a, NULL, n);
	io_unseen_with_available(a, 1024);
	ASSERT(!pairs_private(m, n));
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT(s.merge_fallbacks >= n / 2);
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* The pool pages' copies at unseen I/O go in parts, the agent's lock let
 * go between them, as an unmerge's: a lease break (answered under that
 * lock) waited for all of them, seconds of a large guest, and could pass
 * lease-break-time (review of the change). 8,192 pages, 4,096 copies:
 * three parts or more. */
TEST_IMPL(scan_io_unseen_copies_in_parts)
{
	md_agent *a;
	const size_t n = 8192;
	char *m = pairs_merged_here(&a, NULL, n);
	unsigned before = __atomic_load_n(&md__pool_copies_let_in, __ATOMIC_RELAXED);
	md_agent_io_unseen(a, "test");
	ASSERT(__atomic_load_n(&md__pool_copies_let_in, __ATOMIC_RELAXED) - before >= 2);
	ASSERT(pairs_private(m, n));
	for (size_t i = 0; i < n * PG; i += 997)
		ASSERT(m[i] == pairs_byte(i, n));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* pairs_merged_here's n pages (4096: runs of 1,820 pages, a part's worth of
 * copies), once all of them are counted sharing (one run, all of it), with
 * the stats that say so in *s0. */
static char *pairs_all_merged_here(md_agent **a, size_t n, md_stats *s0)
{
	char *m = pairs_merged_here(a, NULL, n);
	for (int i = 0; i < 2000 && md_agent_stats(*a, s0) == 0 && s0->pages_sharing < n; i++)
		usleep(5000);
	ASSERT_EQ(s0->pages_sharing, n);
	return m;
}

/* As the VMM begins unseen I/O, with a copy that fails (and the ones after
 * it: the hook fails all from the second on): the runs copied before it
 * give their slots back; those from the one that failed on keep theirs
 * (which of their pages were copied is not known): a page still mapping
 * the pool's, its slot given back, could be freed and reused for another
 * content under it. */
TEST_IMPL(scan_io_unseen_failed_copy_keeps_slots)
{
	md_agent *a;
	const size_t n = 4096;
	md_stats s0, s;
	char *m = pairs_all_merged_here(&a, n, &s0);
	md__copy_fail = EIO;
	md__copy_fail_after = 1;	/* the second run, and all after it */
	md_agent_io_unseen(a, "test");
	md__copy_fail = 0;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT(s.pages_sharing > 0);	/* from the second run on */
	ASSERT(s.pages_sharing + 1024 < n);	/* the first run's given back */
	ASSERT(s.merge_fallbacks > s0.merge_fallbacks);
	ASSERT(!pairs_private(m, n));
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* Unseen I/O begins over n = 64 pages merged in pairs (64 copies to make) and
 * an image's ip pages shared at read time, with 64 MiB and room pages of
 * memory available: the image pages go private if they fit, the pool's if
 * they fit in what the image pages' copies left. */
static int io_unseen_images_then_pool(size_t ip, unsigned room)
{
	md_agent *a;
	const size_t n = 64;
	char *m = pairs_merged_here(&a, NULL, n);
	char img[512];
	snprintf(img, sizeof(img), "%s/first.img", test_dir());
	make_image(img, ip * PG, 31);
	char *r = mmap(NULL, ip * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(r != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, r, ip * PG, 0), 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, r, ip * PG, 0), (ssize_t)(ip * PG));
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, ip);
	io_unseen_with_available(a, 65536 + room * 4);
	int images = ip <= room, pool = n + (images ? ip : 0) <= room;
	char *want = malloc(ip * PG);
	ASSERT(want);
	ASSERT_EQ(pread(fd, want, ip * PG, 0), (ssize_t)(ip * PG));
	ASSERT(memcmp(r, want, ip * PG) == 0);	/* read: present */
	ASSERT_EQ(pages_anon_present(r, ip), images);	/* not the image's pages */
	ASSERT_EQ(pairs_private(m, n), pool);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT(s.merge_fallbacks >= (images ? 0 : ip) + (pool ? 0 : n));
	md_agent_free(a);
	munmap(m, n * PG);
	munmap(r, ip * PG);
	close(fd);
	free(want);
	return 0;
}

/* With memory for the image pages' copies but not for the pool's too,
 * the image pages still go private (a pin of one would hold it where a
 * lease break cannot wait), the pool's stay merged, counted: both were
 * left when the two together did not fit (review of the change). */
TEST_IMPL(scan_io_unseen_images_private_first)
{
	/* Room for the image's 16, not the pool's 64 too. */
	return io_unseen_images_then_pool(16, 24);
}

/* Without room for the image pages' copies, the pool's have all of it:
 * they were counted as if the image pages had been copied too, and stayed
 * merged where a device could read them stale. */
TEST_IMPL(scan_io_unseen_pool_private_when_images_short)
{
	return io_unseen_images_then_pool(96, 80);
}

/* A fork copies the pool pages of the guest RAM it copies, and those only:
 * RAM advised MADV_DONTFORK (QEMU's guest RAM) goes to no child, and stays
 * merged in the parent. */
TEST_IMPL(scan_fork_copies_only_forked_ram)
{
	md_agent *a;
	const size_t n = 64;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 1000, .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *kept = pairs_ram(n), *forked = pairs_ram(n);
	ASSERT_EQ(md_agent_register(a, kept, n * PG, MD_ADV_DONTFORK), 0);
	ASSERT_EQ(md_agent_register(a, forked, n * PG, 0), 0);
	ASSERT_EQ(wait_merged(a, 2 * n - n / 2), 0);	/* all on n / 2 pool pages */
	ASSERT_EQ(md_agent_pause(a, 1), 0);	/* nothing merged again meanwhile */
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	const char *why = NULL;
	ASSERT_EQ(md__scan_fork_prepare(a, &until, &why), 1);
	md__scan_fork_done(a);
	ASSERT(why == NULL);
	ASSERT(pairs_private(forked, n));
	ASSERT(!pairs_private(kept, n));
	/* The copies are private already, their slots not back yet (no
	 * reap): nothing to copy, no memory needed. They were counted, and
	 * the next fork short of memory left its child sharing them. */
	fake_available(1024);
	ASSERT_EQ(md__scan_fork_prepare(a, &until, &why), 1);
	md__scan_fork_done(a);
	md__memroom_proc = "/proc";
	ASSERT(why == NULL);
	/* Nor once their slots are back (the reap), whatever the RAM a fork
	 * does not copy holds. */
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	fake_available(1024);
	ASSERT_EQ(md__scan_fork_prepare(a, &until, &why), 1);
	md__scan_fork_done(a);
	md__memroom_proc = "/proc";
	ASSERT(why == NULL);
	ASSERT(pairs_intact(kept, n) && pairs_intact(forked, n));
	md_agent_free(a);
	munmap(kept, n * PG);
	munmap(forked, n * PG);
	return 0;
}

/* memdedupd's RESUME while the VMM's user changes (its pages being given
 * back to the old user's pool): kept for after the move. Applied at once,
 * the scanner merged into the old pool again, whose references must all
 * come back before the new user's HELLO is taken. */
TEST_IMPL(scan_resume_waits_for_user_move)
{
	md_agent *a;
	const size_t n = 64;
	char *m = pairs_merged_here(&a, NULL, n);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	a->user_moving = 1;	/* as user_changed leaves it, its pages private */
	a->user_was_paused = 1;
	struct md__msg_control resume = { .op = MD_CTL_RESUME };
	md__scan_apply_control(a, &resume);
	ASSERT_EQ(scanner_paused(a), 1);
	ASSERT_EQ(a->user_was_paused, 0);	/* resumed once in the new domain */
	ASSERT_EQ(__atomic_load_n(&a->paused_here, __ATOMIC_RELAXED), 0);
	/* A PAUSE then is kept for after the move too, not lost at its end. */
	struct md__msg_control pause = { .op = MD_CTL_PAUSE };
	md__scan_apply_control(a, &pause);
	ASSERT_EQ(scanner_paused(a), 1);
	ASSERT_EQ(a->user_was_paused, 1);
	a->user_moving = 0;
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* Two unmerges at once (the VMM's, and memdedupd's on the agent's thread)
 * each stopped and started the scanner's thread: one thread joined twice,
 * its eventfd closed twice (another's descriptor by then), two scanner
 * threads on one scanner's tables. */
TEST_IMPL(scan_unmerges_at_once)
{
	md_agent *a;
	const size_t n = 256;
	char *m = pairs_merged_here(&a, NULL, n);
	pthread_t t1, t2;
	ASSERT_EQ(pthread_create(&t1, NULL, unmerge_often, a), 0);
	ASSERT_EQ(pthread_create(&t2, NULL, unmerge_often, a), 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	ASSERT_EQ(threads_named("md-scan"), 1);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_sharing, 0);
	ASSERT(pairs_private(m, n));
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	ASSERT_EQ(wait_merged(a, n / 2), 0);
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* An unmerge whose copy of a run fails stops there (memory short: more
 * copies only make it shorter) and gives back the slots of the runs it
 * copied before. It went on copying, and gave back none of that part's:
 * the reap found those pages private and counted them as written by the
 * guest (scan_breaks). */
TEST_IMPL(scan_unmerge_failed_copy_stops_gives_back)
{
	md_agent *a;
	const size_t n = 4096;
	md_stats s0, s;
	char *m = pairs_all_merged_here(&a, n, &s0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	/* The first run fails: nothing more copied. */
	md__copy_fail = EIO;
	md__copy_fail_after = 0;
	ASSERT_EQ(md_agent_unmerge(a), -EIO);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_sharing, s0.pages_sharing);
	ASSERT_EQ(s.scan_breaks, s0.scan_breaks);
	/* The second: the first one's slots given back by the unmerge. */
	md__copy_fail_after = 1;
	ASSERT_EQ(md_agent_unmerge(a), -EIO);
	md__copy_fail = 0;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT(s.pages_sharing > 0);
	ASSERT(s.pages_sharing + 1024 < s0.pages_sharing);
	ASSERT_EQ(s.scan_breaks, s0.scan_breaks);
	/* memdedupd's, failed the same way: memdedupd records the agent
	 * unmerged on its MD_CTL_PART_DONE, so the agent is unmerged for
	 * memdedupd (2): its WELCOME says paused until it is resumed. */
	md__copy_fail = EIO;
	md__copy_fail_after = 0;
	struct md__msg_control unm = { .op = MD_CTL_UNMERGE };
	md__scan_apply_control(a, &unm);
	md__copy_fail = 0;
	ASSERT_EQ(__atomic_load_n(&a->unmerged, __ATOMIC_RELAXED), 2);
	ASSERT_EQ(md_agent_unmerge(a), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_sharing, 0);
	ASSERT(pairs_private(m, n));
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* An unmerge over a merged page a failed thaw left write-protected: the
 * copy lifts the protection first, or its write fault waited for the fault
 * thread, which waited for the engine's lock the unmerge holds (a hang). */
TEST_IMPL(scan_unmerge_lifts_protection_left)
{
	md_agent *a;
	const size_t n = 64;
	char *m = pairs_merged_here(&a, NULL, n);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	/* What a thaw that failed would leave (kernels whose WRITEPROTECT
	 * stops at a mapping's end). */
	ASSERT_EQ(md__uffd_register_wp(&a->engine->uffd, (uintptr_t)m, n * PG), 0);
	ASSERT_EQ(md__uffd_wp(&a->engine->uffd, (uintptr_t)(m + PG), PG, 1), 0);
	ASSERT_EQ(md_agent_unmerge(a), 0);
	ASSERT(pairs_private(m, n));
	ASSERT(pairs_intact(m, n));
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* Between two parts of an unmerge: a read as the VMM's, which takes the
 * agent's lock (a deadlock, and the test's timeout, if the unmerge still
 * held it), counted. */
static int unmerge_parts, unmerge_part_reads;

static void read_between_parts(md_agent *a)
{
	char buf[256];
	struct iovec iov = { buf, sizeof(buf) };
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	unmerge_parts++;
	if (fd >= 0 && md_agent_preadv(a, fd, &iov, 1, 0, 0) > 0)
		unmerge_part_reads++;
	if (fd >= 0)
		close(fd);
}

/* A guest writing while an unmerge copies: each write a new value into
 * the first 8 bytes of a page, the last one kept in last[]. */
struct part_writer {
	char *m;
	size_t n;
	uint64_t *last;
	int stop;
	uint64_t writes;
};

static void *write_during_unmerge(void *arg)
{
	struct part_writer *w = arg;
	uint64_t x = 88172645463325252ull;
	while (!__atomic_load_n(&w->stop, __ATOMIC_RELAXED)) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		size_t i = x % w->n;
		uint64_t v = ++w->writes;
		memcpy(w->m + i * PG, &v, sizeof(v));
		w->last[i] = v;
	}
	return NULL;
}

/* An unmerge copies in parts and lets the VMM's calls in between them: a
 * read (its agent's lock) waited for all of a large guest's copies,
 * seconds of stalled I/O. 32,768 merged pages go in about 18 parts, a read
 * gets in between each two, a writer's every write stays, and the memory
 * is whole and private after. */
TEST_IMPL(scan_unmerge_in_parts)
{
	md_agent *a;
	const size_t n = 32768;
	char *m = pairs_merged_here(&a, NULL, n);
	/* Writes to the first copies only: a write makes a page private
	 * too, and their twins, which the unmerge alone makes private,
	 * would have been written nearly all. */
	struct part_writer w = { m, n / 2, calloc(n, sizeof(uint64_t)), 0, 0 };
	ASSERT(w.last);
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, write_during_unmerge, &w), 0);
	md__part_hook = read_between_parts;
	int err = md_agent_unmerge(a);
	md__part_hook = NULL;
	__atomic_store_n(&w.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	ASSERT_EQ(err, 0);
	printf("  %d parts, %d reads between them, %llu writes\n", unmerge_parts, unmerge_part_reads,
	       (unsigned long long)w.writes);
	ASSERT(unmerge_parts >= 4);
	ASSERT_EQ(unmerge_part_reads, unmerge_parts);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_sharing, 0);
	ASSERT(pairs_private(m, n));
	for (size_t i = 0; i < n * PG; i++) {
		size_t pg = i / PG;
		if (w.last[pg] && i % PG < sizeof(uint64_t))
			continue;	/* checked below */
		ASSERT(m[i] == (char)(pg % (n / 2) * 31 + i % PG));
	}
	for (size_t pg = 0; pg < n; pg++) {
		uint64_t v;
		memcpy(&v, m + pg * PG, sizeof(v));
		ASSERT(!w.last[pg] || v == w.last[pg]);
	}
	free(w.last);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* A thread waiting for the agent's lock gets it between two parts of a
 * job (md__agent_let_in): a mutex let go is not handed over, and the job's
 * thread took it back before the waiter, just woken, could. Tried 20
 * times: a waiter is let in each time, unless not scheduled within the
 * 2 ms the job waits for it (a loaded machine); without the hand-over,
 * almost never. */
struct lock_waiter {
	md_agent *a;
	int in;
};

static void *wait_for_agent_lock(void *arg)
{
	struct lock_waiter *w = arg;
	md__agent_enter(w->a);
	__atomic_store_n(&w->in, 1, __ATOMIC_RELAXED);
	md__agent_leave(w->a);
	return NULL;
}

TEST_IMPL(agent_lock_handed_over_between_parts)
{
	md_agent *a;
	char *m = inproc_agent(&a, 1000, 16 * PG);
	int let_in = 0, k = 0;
	for (; k < 100 && let_in < 15; k++) {
		struct lock_waiter w = { a, 0 };
		pthread_t t;
		md__agent_enter(a);
		ASSERT_EQ(pthread_create(&t, NULL, wait_for_agent_lock, &w), 0);
		for (int i = 0; i < 2000 && !__atomic_load_n(&a->lock_wanted, __ATOMIC_RELAXED); i++)
			usleep(500);
		usleep(2000);	/* asleep in the lock by now */
		md__agent_let_in(a);
		let_in += __atomic_load_n(&w.in, __ATOMIC_RELAXED);
		md__agent_leave(a);
		pthread_join(t, NULL);
	}
	printf("  the waiter got in between parts %d times of %d\n", let_in, k);
	ASSERT(let_in >= 15);
	md_agent_free(a);
	munmap(m, 16 * PG);
	return 0;
}

/* Image pages made private go in parts too: a lease break's (on the agent's
 * thread) and an unmerge's. Two 4 MiB images shared at read time, 1,024
 * pages each, made private 64 pages a part: a read as the VMM's gets in
 * between every two parts (their lock), a guest writing all the while
 * keeps every write, and the memory shows the images' content as read,
 * though the first is overwritten by the writer the break let in. */
TEST_IMPL(image_pages_private_in_parts)
{
	char img[2][512];
	const size_t per = 1024, n = 2 * per;
	char *orig = malloc(n * PG);	/* the images' content, as read */
	ASSERT(orig);
	md_agent *a;
	char *m = inproc_agent(&a, 1000, n * PG);
	memset(m, 0x5a, n * PG);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);	/* nothing merges onto the images */
	int fd[2];
	for (int k = 0; k < 2; k++) {
		snprintf(img[k], sizeof(img[k]), "%s/parts-%d", test_dir(), k);
		make_image(img[k], per * PG, 40 + (unsigned)k);
		fd[k] = open(img[k], O_RDONLY);
		ASSERT(fd[k] >= 0);
		ASSERT_EQ(pread(fd[k], orig + k * per * PG, per * PG, 0), (ssize_t)(per * PG));
		ASSERT_EQ(md_agent_pread(a, fd[k], m + k * per * PG, per * PG, 0), (ssize_t)(per * PG));
	}
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, n);

	md__privatize_part_pages = 64;
	md__part_hook = read_between_parts;
	struct part_writer w = { m, n, calloc(n, sizeof(uint64_t)), 0, 0 };
	ASSERT(w.last);
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, write_during_unmerge, &w), 0);
	/* The first image's writer: in once its pages are private. */
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0) {
		int wfd = open(img[0], O_WRONLY);
		char junk[4096];
		memset(junk, 0xee, sizeof(junk));
		for (size_t off = 0; wfd >= 0 && off < per * PG; off += sizeof(junk))
			if (pwrite(wfd, junk, sizeof(junk), (off_t)off) != (ssize_t)sizeof(junk))
				_exit(2);
		_exit(wfd >= 0 && fsync(wfd) == 0 ? 0 : 1);
	}
	int status;
	ASSERT_EQ(waitpid(writer, &status, 0), writer);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	int break_parts = unmerge_parts;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	ASSERT_EQ(s.pages_privatized, per);
	/* The second image's pages, by an unmerge (the VMM's). */
	ASSERT_EQ(md_agent_unmerge(a), 0);
	md__part_hook = NULL;
	md__privatize_part_pages = 2048;
	__atomic_store_n(&w.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	printf("  %d parts in the lease break, %d in the unmerge, %d reads between them, %llu writes\n",
	       break_parts, unmerge_parts - break_parts, unmerge_part_reads, (unsigned long long)w.writes);
	/* 16 parts of 64 each; the hook runs between two, but for the break's
	 * first two: the first is made where the break is seen, which lets
	 * the lock go too. */
	ASSERT_EQ(break_parts, 14);
	ASSERT_EQ(unmerge_parts - break_parts, 15);
	ASSERT_EQ(unmerge_part_reads, unmerge_parts);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_privatized, n);
	/* Each page its last write, the rest as the image was read. */
	for (size_t pg = 0; pg < n; pg++) {
		uint64_t v;
		memcpy(&v, m + pg * PG, sizeof(v));
		size_t from = w.last[pg] ? sizeof(v) : 0;
		ASSERT(!w.last[pg] || v == w.last[pg]);
		ASSERT(memcmp(m + pg * PG + from, orig + pg * PG + from, PG - from) == 0);
	}
	for (size_t pg = 0; pg < n; pg += 97)	/* present, anonymous: a copy */
		ASSERT((self_pagemap(m + pg * PG) >> 61) == 4);
	free(w.last);
	free(orig);
	md_agent_free(a);
	munmap(m, n * PG);
	close(fd[0]);
	close(fd[1]);
	return 0;
}

/* Once paused: the batch under way ends; then nothing moves for 300 ms
 * (within 18 s: a loaded machine may run the batch late). s1 and s2 are
 * the statistics at both ends of the still 300 ms. */
static int scanner_still(md_agent *a, md_stats *s1, md_stats *s2)
{
	for (int i = 0; i < 60; i++) {
		md_agent_stats(a, s1);
		usleep(300000);
		md_agent_stats(a, s2);
		if (s1->full_scans == s2->full_scans &&
		    s1->pages_scanned + s1->pages_hinted == s2->pages_scanned + s2->pages_hinted)
			return 0;
	}
	return -ETIMEDOUT;
}

TEST_IMPL(scan_unmerge_and_tunables)
{
	md_agent *a;
	size_t len = 512 * PG;
	char *m = inproc_agent(&a, 1000, len);
	for (size_t i = 0; i < len; i += 8)
		*(uint64_t *)(m + i) = (i % (256 * PG)) * 2654435761u + 1;	/* two equal halves */
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(wait_merged(a, 256), 0);

	ASSERT_EQ(md_agent_set(a, "pages_to_scan", "0"), -EINVAL);
	ASSERT_EQ(md_agent_set(a, "pages_to_scan", "12x"), -EINVAL);
	ASSERT_EQ(md_agent_set(a, "cpu_percent", "101"), -EINVAL);
	ASSERT_EQ(md_agent_set(a, "order", "sideways"), -EINVAL);
	ASSERT_EQ(md_agent_set(a, "no_such_knob", "1"), -EINVAL);
	ASSERT_EQ(md_agent_set(a, "pages_to_scan", "500"), 0);
	ASSERT_EQ(md_agent_set(a, "order", "Random"), 0);	/* any case, as MEMDEDUP_SCAN_ORDER */
	ASSERT_EQ(md_agent_set(a, "cpu_percent", "50"), 0);
	ASSERT_EQ(md_agent_set(a, "hint_ratio", "0"), 0);
	/* Where the running scanner reads them. */
	ASSERT_EQ(a->scanner.batch, 500);
	ASSERT_EQ(a->scanner.random_order, 1);
	ASSERT_EQ(a->scanner.cpu_percent, 50);
	ASSERT_EQ(a->scanner.ratio, 0);

	/* Paused: the scanner's passes stop (every page is merged: there is
	 * nothing left to read, but the cursor still goes round). */
	md_stats s1, s2;
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	ASSERT_EQ(scanner_still(a, &s1, &s2), 0);
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	for (int i = 0; i < 400 && s2.full_scans <= s1.full_scans; i++) {
		usleep(50000);
		md_agent_stats(a, &s2);
	}
	ASSERT(s2.full_scans > s1.full_scans);

	/* Unmerge: every merged page private again, content intact. */
	ASSERT_EQ(md_agent_unmerge(a), 0);
	md_agent_stats(a, &s1);
	ASSERT_EQ(s1.pages_sharing, 0);
	ASSERT_EQ(s1.pool_pages, 0);
	for (size_t i = 0; i < len; i += 8)
		ASSERT(*(uint64_t *)(m + i) == (i % (256 * PG)) * 2654435761u + 1);
	ASSERT(pages_anon_present(m, 512));
	/* And it stays paused, as KSM does after run=2: its passes stop,
	 * and nothing merges again. */
	ASSERT_EQ(scanner_still(a, &s1, &s2), 0);
	ASSERT_EQ(s2.pages_sharing, 0);
	ASSERT_EQ(s2.io_unseen, 0);
	/* Stopped for I/O it cannot follow: no resuming (it could merge
	 * nothing), and the state shows. */
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	md_agent_io_unseen(a, "did I/O in a test");
	ASSERT_EQ(md_agent_pause(a, 0), -EPERM);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	ASSERT_EQ(md_agent_pause(a, 0), -EPERM);
	ASSERT_EQ(scanner_still(a, &s1, &s2), 0);
	ASSERT_EQ(s1.io_unseen, 1);
	md_agent_free(a);
	return 0;
}

static uint64_t self_pfn(const void *p)
{
	uint64_t e = self_pagemap(p);
	return (e >> 63) ? e & ((1ull << 55) - 1) : 0;
}

/* The frame of the page at p once read (a merged page is not present
 * until touched), 0 if it still is not present. */
static uint64_t touched_pfn(const char *p)
{
	(void)*(volatile const char *)p;
	return self_pfn(p);
}

/* Waits until every pair of pages (i, i + 32) but skip's shares a frame,
 * and pair skip too unless skip < 0. */
static int wait_pairs(const char *m, int skip)
{
	for (int t = 0; t < 400; t++) {
		int ok = 1;
		for (int i = 0; i < 32 && ok; i++)
			if (i != skip) {
				uint64_t x = touched_pfn(m + i * PG), y = touched_pfn(m + (i + 32) * PG);
				ok = x != 0 && x == y;
			}
		if (ok)
			return 0;
		usleep(50000);
	}
	return -ETIMEDOUT;
}

struct blocked_read {
	md_agent *a;
	int fd;
	void *buf;
	ssize_t got;
	pid_t tid;
};

static void *blocked_reader(void *arg)
{
	struct blocked_read *r = arg;
	struct iovec io = { r->buf, PG };
	__atomic_store_n(&r->tid, gettid(), __ATOMIC_RELEASE);
	r->got = md_agent_preadv(r->a, r->fd, &io, 1, -1, 0);
	return NULL;
}

/* Waits until the reader sleeps in a read system call on its descriptor
 * (the agent recorded the read before making it). */
static int wait_blocked_read(struct blocked_read *r)
{
	for (int i = 0; i < 2000; i++) {
		long nr = task_syscall_on(__atomic_load_n(&r->tid, __ATOMIC_ACQUIRE), r->fd);
		if (nr == SYS_read || nr == SYS_pread64 || nr == SYS_readv || nr == SYS_preadv || nr == SYS_preadv2)
			return 0;
		usleep(10000);
	}
	return -ETIMEDOUT;
}

/* A page a read is writing (here a read blocked on an empty pipe, standing
 * for an O_DIRECT read whose DMA the page tables do not see) is never
 * replaced while the read runs: its twin merges with everything else, it
 * stays its own page; once the read returns, it merges too. */
TEST_IMPL(scan_leaves_pages_being_read)
{
	md_agent *a;
	size_t len = 64 * PG;
	char *m = inproc_agent(&a, 1000, len);
	for (size_t i = 0; i < len; i += 8)
		*(uint64_t *)(m + i) = (i % (32 * PG)) * 2654435761u + 7;	/* two equal halves */
	int p[2];
	ASSERT_EQ(pipe(p), 0);
	pthread_t t;
	struct blocked_read r = { a, p[0], m + 5 * PG, 0, 0 };
	ASSERT_EQ(pthread_create(&t, NULL, blocked_reader, &r), 0);
	ASSERT_EQ(wait_blocked_read(&r), 0);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(wait_pairs(m, 5), 0);
	md_stats s0, s1;
	md_agent_stats(a, &s0);
	for (int i = 0; i < 100; i++) {
		md_agent_stats(a, &s1);
		if (s1.full_scans >= s0.full_scans + 3)
			break;
		usleep(50000);
	}
	ASSERT(s1.full_scans >= s0.full_scans + 3);
	uint64_t f5 = touched_pfn(m + 5 * PG), f37 = touched_pfn(m + 37 * PG);
	ASSERT(f5 != 0 && f37 != 0 && f5 != f37);
	/* The read brings the page's own bytes: it returns, and the page
	 * merges with its twin. */
	ASSERT_EQ(write(p[1], m + 37 * PG, PG), (ssize_t)PG);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(r.got, (ssize_t)PG);
	ASSERT_EQ(wait_pairs(m, -1), 0);
	for (size_t i = 0; i < len; i += 8)
		ASSERT(*(uint64_t *)(m + i) == (i % (32 * PG)) * 2654435761u + 7);
	close(p[0]);
	close(p[1]);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* Copies RAM given up before (MADV_UNMERGEABLE) left in the pool's
 * mappings are moved into anonymous memory for MADV_WIPEONFORK or mseal
 * only where no read is writing them: the move copied them with an
 * O_DIRECT read in flight, whose DMA then landed in the old pages, gone
 * (review: a 1 MiB read returned whole, 1-4 of its pages without the
 * file's bytes). The read here blocks on an empty pipe, standing for it:
 * its mapping stays (-EBUSY) until it returns, then moves. */
TEST_IMPL(scan_given_up_copies_left_while_read)
{
	md_agent *a;
	const size_t n = 64;
	char *m = pairs_merged_here(&a, "private", n);
	ASSERT_EQ(md_agent_unregister(a, m, n * PG), 0);
	ASSERT(in_pool_map(m + 5 * PG));
	int p[2];
	ASSERT_EQ(pipe(p), 0);
	pthread_t t;
	struct blocked_read r = { a, p[0], m + 5 * PG, 0, 0 };
	ASSERT_EQ(pthread_create(&t, NULL, blocked_reader, &r), 0);
	ASSERT_EQ(wait_blocked_read(&r), 0);
	ASSERT_EQ(md__agent_give_up_anon(a, (uintptr_t)m, (uintptr_t)m + n * PG, "asks MADV_WIPEONFORK of"), -EBUSY);
	ASSERT(in_pool_map(m + 5 * PG));
	char page[PG];
	memset(page, 0x3c, sizeof(page));
	ASSERT_EQ(write(p[1], page, PG), (ssize_t)PG);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(r.got, (ssize_t)PG);
	ASSERT_EQ(md__agent_give_up_anon(a, (uintptr_t)m, (uintptr_t)m + n * PG, "asks MADV_WIPEONFORK of"), 0);
	for (size_t i = 0; i < n; i++)
		ASSERT(!in_pool_map(m + i * PG));
	ASSERT(memcmp(m + 5 * PG, page, PG) == 0);
	for (size_t i = 0; i < n * PG; i++)
		if (i / PG != 5)
			ASSERT(m[i] == pairs_byte(i, n));
	close(p[0]);
	close(p[1]);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

static int merged_image_256(const md_stats *s) { return s->merged_image >= 256; }

/* Lines of /proc/PID/maps that map the file at path shared, read-only:
 * the agent's view of an image (guest RAM maps it private). */
static int views_of(pid_t pid, const char *path)
{
	char name[64], line[1024];
	int n = 0;
	snprintf(name, sizeof(name), "/proc/%d/maps", (int)pid);
	FILE *f = fopen(name, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, path) && strstr(line, " r--s ");
	fclose(f);
	return n;
}

TEST_IMPL(scan_merges_onto_image)
{
	/* The guest reads an image (shared at read time), then copies what it
	 * read elsewhere in its RAM, as into a tmpfs: the scanner maps the
	 * copies from the image as well, with no pool page. A write changes
	 * only the writer's page; the image opened for writing changes
	 * nothing the guest sees, copies included. */
	char img[512], want[32], page5[32];
	snprintf(img, sizeof(img), "%s/copied", test_dir());
	make_image(img, 1 << 20, 12);
	snprintf(want, sizeof(want), "%016llx", (unsigned long long)fnv_file(img, 0, 1 << 20));
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 2048");
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 0", fd, 1u << 20), 1 << 20);
	ASSERT(strcmp(proc_cmd(&a, "copy 0 %u %u", 1024 * PG, 1u << 20), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_image_256), 0);
	ASSERT(s.pages_shared_at_read >= 256 && s.image_pages_indexed >= 256);
	ASSERT_EQ(s.pool_pages, 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1u << 20), want) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 1024 * PG, 1u << 20), want) == 0);
	for (unsigned i = 0; i < 256; i++) {
		struct pm x = proc_page(&a, i * PG), y = proc_page(&a, (1024 + i) * PG);
		ASSERT(x.present && x.file && y.present && y.file && x.pfn == y.pfn);
	}
	/* A write to a merged copy: only that page changes. */
	snprintf(page5, sizeof(page5), "%s", proc_cmd(&a, "hash %u %u", 5 * PG, PG));
	ASSERT(strcmp(proc_cmd(&a, "write %u 7", 1029 * PG + 100), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 1029 * PG, PG), page5) != 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 5 * PG, PG), page5) == 0);
	ASSERT_EQ(fnv_file(img, 0, 1 << 20), strtoull(want, NULL, 16));
	ASSERT(proc_page(&a, 1029 * PG).pfn != proc_page(&a, 5 * PG).pfn);
	/* A writer opens the image: it waits until every page mapped from it,
	 * merged copies too, is private, and the agent's view of it (which
	 * merges compare with) is gone; then it overwrites the file. */
	ASSERT_EQ(views_of(a.pid, img), 1);
	char old_copy[32], junk[65536];
	snprintf(old_copy, sizeof(old_copy), "%s", proc_cmd(&a, "hash %u %u", 1024 * PG, 1u << 20));
	int wfd = open(img, O_WRONLY);
	ASSERT(wfd >= 0);
	memset(junk, 0xee, sizeof(junk));
	for (size_t off = 0; off < (1u << 20); off += sizeof(junk))
		ASSERT(pwrite(wfd, junk, sizeof(junk), (off_t)off) == (ssize_t)sizeof(junk));
	fsync(wfd);
	close(wfd);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1u << 20), want) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 1024 * PG, 1u << 20), old_copy) == 0);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT(s.pages_privatized >= 512 - 1);
	ASSERT_EQ(views_of(a.pid, img), 0);
	proc_stop(&a);
	return 0;
}

static int shared_512(const md_stats *s) { return s->pages_shared == 512; }
static int merged_image_512(const md_stats *s) { return s->merged_image >= 512; }
static int shared_768(const md_stats *s) { return s->pages_shared == 768; }

/* Pages the scanner maps from an image count as shared (pages_shared, a
 * pagemap walk's) seconds after its merges stop, not at the next walk due
 * by time (up to a minute on). A first copy settles the counts; a second,
 * with no read to walk at, must show within 15 s. */
TEST_IMPL(scan_image_merges_counted_when_over)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/counted", test_dir());
	make_image(img, 1 << 20, 13);
	struct proc a;
	proc_start(&a, fast_scan);
	proc_cmd(&a, "map 4096");
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 0", fd, 1u << 20), 1 << 20);
	ASSERT(strcmp(proc_cmd(&a, "copy 0 %u %u", 1024 * PG, 1u << 20), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 90000, shared_512), 0);	/* the read, the copy */
	ASSERT_EQ(s.merged_image, 256);
	sleep(4);	/* the walks of the read's start and end are over */
	ASSERT(strcmp(proc_cmd(&a, "copy 0 %u %u", 2048 * PG, 1u << 20), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_image_512), 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 15000, shared_768), 0);
	char want[32];
	snprintf(want, sizeof(want), "%016llx", (unsigned long long)fnv_file(img, 0, 1 << 20));
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 2048 * PG, 1u << 20), want) == 0);	/* maps them */
	for (unsigned i = 0; i < 256; i += 51)
		ASSERT_EQ(proc_page(&a, (2048 + i) * PG).pfn, proc_page(&a, i * PG).pfn);
	proc_stop(&a);
	return 0;
}

static int indexed_256(const md_stats *s) { return s->image_pages_indexed >= 256; }
static int indexed_512(const md_stats *s) { return s->image_pages_indexed >= 512; }
static int merged_image_32(const md_stats *s) { return s->merged_image >= 32; }

/* A process with `pages` of RAM, scanning fast, and a 2 MiB image named
 * name (path in img[512]) open in it; returns its descriptor there. */
static int start_on_2mib_image(struct proc *a, char *img, const char *name, unsigned seed,
			       unsigned pages)
{
	snprintf(img, 512, "%s/%s", test_dir(), name);
	make_image(img, 2 << 20, seed);
	proc_start(a, fast_scan);
	proc_cmd(a, "map %u", pages);
	int fd = (int)proc_num(a, "open %s", img);
	ASSERT(fd >= 0);
	return fd;
}

/* RAM's first 32 pages show the image's second MiB: copied to page dst,
 * they merge onto the image, the same frames as the read's. */
static void second_mib_copy_merges(struct proc *a, const char *img, unsigned dst, md_stats *s)
{
	ASSERT(strcmp(proc_cmd(a, "copy 0 %u %u", dst * PG, 32 * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(a, s, 20000, merged_image_32), 0);
	char want[32];
	snprintf(want, sizeof(want), "%016llx", (unsigned long long)fnv_file(img, 1 << 20, 32 * PG));
	ASSERT(strcmp(proc_cmd(a, "hash %u %u", dst * PG, 32 * PG), want) == 0);
	ASSERT(strcmp(proc_cmd(a, "hash 0 %u", 32 * PG), want) == 0);	/* faults both in */
	for (unsigned i = 0; i < 32; i++)
		ASSERT_EQ(proc_page(a, (dst + i) * PG).pfn, proc_page(a, i * PG).pfn);
}

TEST_IMPL(scan_image_index_remapped)
{
	/* Two reads map different image pages at the same guest RAM, one
	 * right after the other: the index, which hashes image pages where
	 * they were mapped, must not file what RAM shows now under the first
	 * read's pages, or copies of the second would match the wrong file
	 * pages and never merge. */
	char img[512];
	struct proc a;
	int fd = start_on_2mib_image(&a, img, "remapped", 14, 600);
	ASSERT_EQ(proc_num(&a, "reread %d 0 %u %u 0", fd, 1u << 20, 1u << 20), 1 << 20);
	md_stats s;
	second_mib_copy_merges(&a, img, 300, &s);
	proc_stop(&a);
	return 0;
}

/* An agent in this process, paused: the test feeds the index of image
 * pages and hands it matches itself, as the scanner's thread would after
 * a batch. len bytes of RAM registered (0x5a), and an image of `pages`
 * pages (seed) at img[512] under name, open for reading in *fd. */
static char *paused_on_image(md_agent **a, size_t len, char *img, const char *name, size_t pages,
			     unsigned seed, int *fd)
{
	snprintf(img, 512, "%s/%s", test_dir(), name);
	make_image(img, pages * PG, seed);
	char *m = inproc_agent(a, 2000, len);
	memset(m, 0x5a, len);
	ASSERT_EQ(md_agent_register(*a, m, len, 0), 0);
	ASSERT_EQ(md_agent_pause(*a, 1), 0);
	*fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(*fd >= 0);
	return m;
}

/* Frees what paused_on_image made. */
static void paused_on_image_done(md_agent *a, char *m, size_t len, int fd)
{
	md_agent_free(a);
	munmap(m, len);
	close(fd);
}

/* The scanner's thread after a batch with no match: what reads queued is
 * indexed (up to one feed's worth). */
static void feed_image_index(md_agent *a)
{
	a->scanner.files.merge(a->scanner.files.arg, NULL, NULL, 0);
}

/* 1 if the index of image pages has an entry for page's content (at
 * *cookie). */
static int image_entry(md_agent *a, const void *page, uint64_t *cookie)
{
	return a->scanner.files.find(a->scanner.files.arg, md__page_hash(page), page, cookie);
}

/* The scanner's match of the n pages at p with entries cookie[0..n):
 * merged onto the image; returns how many (merged_image's growth). */
static uint64_t merge_onto_image(md_agent *a, char *p, const uint64_t *cookie, size_t n)
{
	md_stats s;
	uintptr_t addr[64];
	ASSERT(n <= 64);
	for (size_t i = 0; i < n; i++)
		addr[i] = (uintptr_t)(p + i * PG);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	uint64_t before = s.merged_image;
	a->scanner.files.merge(a->scanner.files.arg, addr, cookie, n);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	return s.merged_image - before;
}

/* Reads map pages of an image over RAM that earlier reads mapped, before
 * one feed of the index: what they remapped of the earlier runs is left
 * out (a run remapped whole, its tail, or its middle: all of that run),
 * and the entries name what RAM shows. Filed as the earlier run's (the
 * same content, so the later's were skipped), a copy matched file pages
 * it is not: its compare failed, and it never merged. */
TEST_IMPL(scan_image_index_skips_remapped_in_one_feed)
{
	char img[512];
	md_agent *a;
	int fd;
	char *m = paused_on_image(&a, 160 * PG, img, "remapped-once", 128, 74, &fd);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 16 * PG), 16 * PG);	/* whole */
	ASSERT_EQ(md_agent_pread(a, fd, m + 64 * PG, 32 * PG, 32 * PG), 32 * PG);
	ASSERT_EQ(md_agent_pread(a, fd, m + 80 * PG, 16 * PG, 0), 16 * PG);	/* its tail */
	ASSERT_EQ(md_agent_pread(a, fd, m + 100 * PG, 32 * PG, 64 * PG), 32 * PG);
	ASSERT_EQ(md_agent_pread(a, fd, m + 108 * PG, 16 * PG, 96 * PG), 16 * PG);	/* its middle */
	feed_image_index(a);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.image_pages_indexed, 4 * 16);
	/* Copies of what each run left shows: three pages of the first
	 * remapping, then one of each other run. */
	memcpy(m + 140 * PG, m + 5 * PG, 3 * PG);
	const unsigned from[] = { 70, 85, 110 };
	for (int k = 0; k < 3; k++)
		memcpy(m + (144 + k) * PG, m + from[k] * PG, PG);
	uint64_t cookie[3];
	for (int i = 0; i < 3; i++)
		ASSERT(image_entry(a, m + (140 + i) * PG, &cookie[i]));
	ASSERT_EQ(merge_onto_image(a, m + 140 * PG, cookie, 3), 3);
	ASSERT(memcmp(m + 140 * PG, m + 5 * PG, 3 * PG) == 0);	/* faults both in */
	for (int i = 0; i < 3; i++)
		ASSERT_EQ(self_pagemap(m + (140 + i) * PG), self_pagemap(m + (5 + i) * PG));
	ASSERT(self_pagemap(m + 140 * PG) & (1ull << 61));	/* the image's page */
	for (int k = 0; k < 3; k++) {
		char *p = m + (144 + k) * PG;
		ASSERT(image_entry(a, p, &cookie[0]));
		ASSERT_EQ(merge_onto_image(a, p, cookie, 1), 1);
		ASSERT(memcmp(p, m + from[k] * PG, PG) == 0);
		ASSERT_EQ(self_pagemap(p), self_pagemap(m + from[k] * PG));
	}
	paused_on_image_done(a, m, 160 * PG, fd);
	return 0;
}

/* The same with the second read still queued when the first is fed (one
 * feed takes 2,048 pages at most): the first's pages it remapped (the head
 * of its first run) are left out then, and indexed as the second's by the
 * next feed. */
TEST_IMPL(scan_image_index_skips_remapped_still_queued)
{
	char img[512];
	md_agent *a;
	int fd;
	const size_t ram = 2100;
	char *m = paused_on_image(&a, ram * PG, img, "remapped-queued", 2064, 75, &fd);
	ASSERT_EQ(md_agent_pread(a, fd, m, 2048 * PG, 0), 2048 * PG);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 2048 * PG), 16 * PG);
	feed_image_index(a);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.image_pages_indexed, 2048 - 16);
	feed_image_index(a);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.image_pages_indexed, 2048);
	uint64_t cookie;
	for (int k = 0; k < 2; k++) {	/* the second read's page, and the first's past it */
		char *p = m + (2080 + k) * PG, *from = m + (3 + 17 * k) * PG;
		memcpy(p, from, PG);
		ASSERT(image_entry(a, p, &cookie));
		ASSERT_EQ(merge_onto_image(a, p, &cookie, 1), 1);
		ASSERT(memcmp(p, from, PG) == 0);	/* faults both in */
		ASSERT_EQ(self_pagemap(p), self_pagemap(from));
	}
	paused_on_image_done(a, m, ram * PG, fd);
	return 0;
}

TEST_IMPL(scan_image_index_bounded)
{
	/* The index of image pages holds no more entries than guest RAM has
	 * pages (300 here): reading 512 pages of images starts it over, and
	 * what was read last is what copies merge onto. */
	char img[512];
	struct proc a;
	int fd = start_on_2mib_image(&a, img, "bounded", 13, 300);
	md_stats s;
	/* Indexed where the read mapped them: the first MiB before the
	 * second replaces it in RAM (a page no longer mapped is not hashed). */
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 0", fd, 1u << 20), 1 << 20);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, indexed_256), 0);
	ASSERT_EQ(proc_num(&a, "read %d %u %u 0 0", fd, 1u << 20, 1u << 20), 1 << 20);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, indexed_512), 0);
	/* RAM now shows the second MiB; a copy of its first 32 pages merges. */
	second_mib_copy_merges(&a, img, 256, &s);
	/* Pages of the first MiB, brought in by no read the agent sees: their
	 * entries are gone, so they stay anonymous once the scanner has been
	 * over them (two passes: the first only notes their checksums). */
	ASSERT_EQ(proc_num(&a, "rawread %d 0 %u %u", fd, 4 * PG, 290 * PG), 4 * PG);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	uint64_t passes = s.full_scans;
	for (int i = 0; i < 200 && s.full_scans < passes + 3; i++) {
		usleep(50000);
		ASSERT_EQ(proc_stats(&a, &s), 0);
	}
	ASSERT(s.full_scans >= passes + 3);
	usleep(300000);	/* a batch's matches merge once the batch is done */
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.merged_image, 32);
	proc_cmd(&a, "hash %u %u", 290 * PG, PG);	/* a mapping not touched shows no frame */
	ASSERT(!proc_page(&a, 290 * PG).file);
	proc_stop(&a);
	return 0;
}

/* The index holds as many entries as guest RAM has pages (32 here), no
 * more: filled exactly, it keeps them all; one feed past that starts it
 * over with what that feed reads. */
TEST_IMPL(scan_image_index_starts_over_past_ram)
{
	char img[512];
	md_agent *a;
	int fd;
	uint64_t cookie;
	md_stats s;
	char *m = paused_on_image(&a, 32 * PG, img, "starts-over", 48, 76, &fd);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	uint64_t bytes0 = md__imagepages_bytes(a->imgpages);
	feed_image_index(a);
	/* Its entries count as metadata (general_profit), beside its hash
	 * table (which 16 entries do not grow). */
	ASSERT(md__imagepages_bytes(a->imgpages) > bytes0);
	ASSERT_EQ(md_agent_pread(a, fd, m + 16 * PG, 16 * PG, 16 * PG), 16 * PG);
	feed_image_index(a);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.image_pages_indexed, 32);
	ASSERT(image_entry(a, m, &cookie) && image_entry(a, m + 16 * PG, &cookie));
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 32 * PG), 16 * PG);
	feed_image_index(a);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.image_pages_indexed, 48);
	ASSERT(image_entry(a, m, &cookie));
	ASSERT(!image_entry(a, m + 16 * PG, &cookie));	/* indexed before the start over */
	/* 16 entries, and 17 pages more: one past RAM's pages. */
	ASSERT_EQ(md_agent_pread(a, fd, m + 15 * PG, 17 * PG, 0), 17 * PG);
	feed_image_index(a);
	ASSERT(!image_entry(a, m, &cookie));
	ASSERT(image_entry(a, m + 15 * PG, &cookie));
	paused_on_image_done(a, m, 32 * PG, fd);
	return 0;
}

static int swap_from = -1, swap_to = -1;

/* The VMM puts another file over the agent's descriptor of an image (its
 * open taking the number, or a dup2). */
static void swap_image_fd(int fd)
{
	swap_from = fd;
	ASSERT_EQ(dup2(swap_to, fd), fd);
}

/* A read of a 16-page image (seed) into 16 pages of guest RAM while *hook
 * puts another file over the agent's descriptor of it: the read has the
 * image's bytes, none shared at read time. The agent, RAM, the descriptor
 * swapped and the VMM's own are left for the caller's checks. */
static int read_with_fd_swapped(void (**hook)(int), unsigned seed, md_agent **a, char **m, int *fd)
{
	char img[512], other[512];
	snprintf(img, sizeof(img), "%s/leased", test_dir());
	snprintf(other, sizeof(other), "%s/other", test_dir());
	make_image(img, 16 * PG, seed);
	make_image(other, 16 * PG, seed + 1);
	md_agent_options o = { .run_dir = "", .domain = "private" };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	*m = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(*m != MAP_FAILED);
	/* Advised as QEMU's guest RAM: what replaces a mapping keeps it. */
	ASSERT_EQ(madvise(*m, 16 * PG, MADV_DONTFORK), 0);
	ASSERT_EQ(md_agent_register(*a, *m, 16 * PG, MD_ADV_DONTFORK), 0);
	*fd = open(img, O_RDONLY | O_CLOEXEC);
	swap_to = open(other, O_RDONLY | O_CLOEXEC);
	swap_from = -1;
	ASSERT(*fd >= 0 && swap_to >= 0);
	*hook = swap_image_fd;
	ssize_t n = md_agent_pread(*a, *fd, *m, 16 * PG, 0);
	*hook = NULL;
	ASSERT(swap_from >= 0);	/* the hook ran: the read got that far */
	ASSERT_EQ(n, 16 * PG);
	static char want[16 * PG];
	ASSERT_EQ(pread(*fd, want, sizeof(want), 0), (ssize_t)sizeof(want));
	ASSERT(memcmp(*m, want, sizeof(want)) == 0);	/* the image's bytes, not the other file's */
	md_stats s;
	ASSERT_EQ(md_agent_stats(*a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	return 0;
}

static void fd_swapped_done(md_agent *a, char *m, int fd)
{
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(swap_from);
	close(swap_to);
	close(fd);
}

/* The VMM's open takes the number of the agent's descriptor of an image
 * between its check and its lease: the lease is on the VMM's file then,
 * and is given back, the read copied. The VMM's file was leased and
 * mapped into guest RAM as the image. */
TEST_IMPL(image_lease_on_number_vmm_took)
{
	md_agent *a;
	char *m;
	int fd;
	ASSERT_EQ(read_with_fd_swapped(&md__image_lease_hook, 21, &a, &m, &fd), 0);
	ASSERT_EQ(fcntl(swap_from, F_GETLEASE), F_UNLCK);	/* the VMM's file holds none */
	fd_swapped_done(a, m, fd);
	return 0;
}

/* The VMM's dup2 over the agent's descriptor of an image lands between
 * its lease and its mmap: what was mapped is the VMM's file, with no lease
 * on it. The mapping goes before anyone reads it (the lease looked at
 * again after the mmap), and the read is copied from the image. */
TEST_IMPL(image_fd_replaced_before_map_copied)
{
	md_agent *a;
	char *m;
	int fd;
	ASSERT_EQ(read_with_fd_swapped(&md__image_map_hook, 23, &a, &m, &fd), 0);
	/* The lease went with the descriptor: the image's break starts at
	 * once (what earlier reads mapped from it is made private now, not
	 * at the agent thread's next look, up to a second later). */
	md__agent_enter(a);
	ASSERT_EQ(a->nimages, 1);
	int held = a->images[0].lease == MD_LEASE_HELD;
	md__agent_leave(a);
	ASSERT(!held);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.fallbacks[MD_FB_NO_LEASE], 16);
	/* Guest RAM maps no file: its pages (read, so present) are anonymous
	 * memory, with the region's advice. */
	ASSERT(pages_anon_present(m, 16));
	ASSERT(vm_flag(getpid(), (unsigned long)m, "dc"));
	fd_swapped_done(a, m, fd);
	return 0;
}

/* The same swap seen from guest RAM: the read's buffer never shows the
 * other file's bytes, not even between the mapping and the look at the
 * lease that undoes it. Mapped straight over the buffer, they were there
 * for a guest reading its buffer in flight (the VMM's file, in guest RAM). */
static int mapped_seen, mapped_showed_other;
static void look_at_buffer(void *dst, size_t len)
{
	static char other[PG];
	mapped_seen++;
	ASSERT_EQ(pread(swap_to, other, PG, 0), PG);
	for (size_t k = 0; k < len; k += PG)
		mapped_showed_other |= memcmp((char *)dst + k, other, PG) == 0;
}

TEST_IMPL(image_fd_replaced_never_in_guest_ram)
{
	md_agent *a;
	char *m;
	int fd;
	mapped_seen = mapped_showed_other = 0;
	md__image_mapped_hook = look_at_buffer;
	ASSERT_EQ(read_with_fd_swapped(&md__image_map_hook, 25, &a, &m, &fd), 0);
	md__image_mapped_hook = NULL;
	ASSERT_EQ(mapped_seen, 1);
	ASSERT(!mapped_showed_other);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.fallbacks[MD_FB_NO_LEASE], 16);
	ASSERT(pages_anon_present(m, 16));
	fd_swapped_done(a, m, fd);
	return 0;
}

/* An in-process agent (domain private) whose 16 pages of RAM (*m) read
 * all of a new 16-page image (img[512], from seed), shared at read time;
 * returns the image's descriptor. */
static int agent_read_image(md_agent **a, char **m, char *img, unsigned seed)
{
	snprintf(img, 512, "%s/leased", test_dir());
	make_image(img, 16 * PG, seed);
	md_agent_options o = { .run_dir = "", .domain = "private" };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	*m = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(*m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(*a, *m, 16 * PG, 0), 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(*a, fd, *m, 16 * PG, 0), 16 * PG);
	md_stats s;
	ASSERT_EQ(md_agent_stats(*a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	return fd;
}

/* A write from guest RAM held by a userfaultfd fault on its second page:
 * the first, shared with an image, is pinned meanwhile (with O_DIRECT, the
 * image's page cache page itself). */
struct held_write {
	md_agent *a;
	int fd, uffd;
	struct iovec iov[2];
	ssize_t result;
};

static void *held_write_thread(void *arg)
{
	struct held_write *w = arg;
	w->result = md_agent_pwritev(w->a, w->fd, w->iov, 2, 0, 0);
	return NULL;
}

/* A lease break whose copies fail other than for want of memory (a bad
 * sector's page: EFAULT, a poisoned one: EHWPOISON) gave the lease back at
 * once, without waiting for the writes from guest RAM begun before: one
 * with O_DIRECT still holding the image's page would carry the writer's
 * bytes. The writer now waits for that write as it does when the copies
 * succeed (lease_break_waits_for_direct_write). */
TEST_IMPL(image_break_failed_copy_waits_for_write)
{
	char img[512], out[512], *m;
	md_agent *a;
	int fd = agent_read_image(&a, &m, img, 23);
	snprintf(out, sizeof(out), "%s/written-out", test_dir());
	uint64_t page0 = fnv_file(img, 0, PG);

	struct held_write w = { .a = a, .result = -2 };
	w.fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
	if (w.fd < 0)	/* no O_DIRECT here: the write is held all the same */
		w.fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ASSERT(w.fd >= 0);
	char *held = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(held != MAP_FAILED);
	w.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	ASSERT(w.uffd >= 0);
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { .range = { (uintptr_t)held, PG }, .mode = UFFDIO_REGISTER_MODE_MISSING };
	ASSERT_EQ(ioctl(w.uffd, UFFDIO_API, &api), 0);
	ASSERT_EQ(ioctl(w.uffd, UFFDIO_REGISTER, &reg), 0);
	w.iov[0] = (struct iovec){ m, PG };
	w.iov[1] = (struct iovec){ held, PG };
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, held_write_thread, &w), 0);
	struct uffd_msg msg;
	ASSERT_EQ(read(w.uffd, &msg, sizeof(msg)), (ssize_t)sizeof(msg));	/* the first page is in */

	md__privatize_fail = -EFAULT;
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0)
		_exit(open(img, O_WRONLY) >= 0 ? 0 : 1);
	int status = 0, in_early = 0;
	for (int ms = 0; ms < 1000 && !in_early; ms += 10) {
		usleep(10000);
		in_early = waitpid(writer, &status, WNOHANG) == writer;
	}
	struct uffdio_zeropage zero = { .range = { (uintptr_t)held, PG } };
	ASSERT_EQ(ioctl(w.uffd, UFFDIO_ZEROPAGE, &zero), 0);
	pthread_join(t, NULL);
	ASSERT_EQ(w.result, 2 * PG);
	if (!in_early)
		ASSERT_EQ(waitpid(writer, &status, 0), writer);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_EQ(md__privatize_fail, 0);	/* the break tried */
	ASSERT(!in_early);
	ASSERT(fnv_file(out, 0, PG) == page0);
	md_agent_free(a);
	close(w.uffd);
	close(w.fd);
	close(fd);
	munmap(held, PG);
	munmap(m, 16 * PG);
	return 0;
}

/* A lease break whose copies failed lets the writer in with pages still
 * the image's: those are counted (error fallbacks) and said once, not a
 * break like any other. */
TEST_IMPL(image_break_failed_copy_counts_pages_left)
{
	char img[512], *m;
	md_agent *a;
	md_stats s0, s;
	int fd = agent_read_image(&a, &m, img, 24);
	ASSERT_EQ(md_agent_stats(a, &s0), 0);
	md__privatize_fail = -EFAULT;
	int wfd = open(img, O_WRONLY);
	ASSERT(wfd >= 0);
	ASSERT_EQ(md__privatize_fail, 0);	/* the break tried */
	size_t left = 0;
	for (size_t i = 0; i < 16; i++) {
		(void)*(volatile char *)(m + i * PG);	/* present, to be seen */
		left += (self_pagemap(m + i * PG) & (1ull << 61)) != 0;	/* the image's page */
	}
	ASSERT_EQ(left, 16);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.lease_breaks, s0.lease_breaks + 1);
	ASSERT_EQ(s.fallbacks[MD_FB_ERROR] - s0.fallbacks[MD_FB_ERROR], left);
	md_agent_free(a);
	close(wfd);
	close(fd);
	munmap(m, 16 * PG);
	return 0;
}

/* A break whose copies failed leaves pages the image's after its lease
 * went; a writer then cut the file short, and a read of those pages is a
 * SIGBUS. The scanner's queue of image pages to hash (paused, it keeps
 * them) holds such a read: it is left out, and the read after it, of an
 * image still leased, is hashed. Hashed anyway, the scanner's thread took
 * the SIGBUS and the VMM died (a mutant of the lease check in feed()). */
TEST_IMPL(scan_image_cut_after_failed_break_not_hashed)
{
	char cut[512], kept[512];
	snprintf(cut, sizeof(cut), "%s/cut-short", test_dir());
	snprintf(kept, sizeof(kept), "%s/kept", test_dir());
	make_image(cut, 16 * PG, 71);
	make_image(kept, 16 * PG, 72);
	md_agent *a;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = "private", .pages_to_scan = 1000,
			       .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	char *m = mmap(NULL, 32 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, m, 32 * PG, 0), 0);
	int fd = open(cut, O_RDONLY | O_CLOEXEC), kfd = open(kept, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0 && kfd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	ASSERT_EQ(md_agent_pread(a, kfd, m + 16 * PG, 16 * PG, 0), 16 * PG);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 32);
	ASSERT_EQ(s.image_pages_indexed, 0);

	md__privatize_fail = -EFAULT;
	int wfd = open(cut, O_WRONLY | O_TRUNC);
	ASSERT(wfd >= 0);
	ASSERT_EQ(md__privatize_fail, 0);	/* the break tried */
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	for (int i = 0; i < 400 && (md_agent_stats(a, &s), s.image_pages_indexed < 16); i++)
		usleep(10000);
	ASSERT_EQ(s.image_pages_indexed, 16);	/* kept's, in the same feed */
	/* The file long enough again (zeroes): the agent's free may read it. */
	ASSERT_EQ(ftruncate(wfd, 16 * PG), 0);
	md_agent_free(a);
	close(wfd);
	close(kfd);
	close(fd);
	munmap(m, 32 * PG);
	return 0;
}

/* Pages hashed from an image, which a writer then cut short (its break
 * made every page private): read again, the image is leased again at its
 * new size. The guest's copies of the old tail still find their entries:
 * they are dropped, not mapped past the end of the file (a SIGBUS in the
 * scanner's compare, then in the guest: a mutant of merge_run's size
 * check); the copies of what is left merge onto the image. */
TEST_IMPL(scan_image_entries_past_new_end_dropped)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/shortened", test_dir());
	make_image(img, 32 * PG, 73);
	md_agent *a;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .domain = "private", .pages_to_scan = 1000,
			       .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, 128 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, m, 128 * PG, 0), 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 32 * PG, 0), 32 * PG);
	md_stats s;
	for (int i = 0; i < 400 && (md_agent_stats(a, &s), s.image_pages_indexed < 32); i++)
		usleep(10000);
	ASSERT_EQ(s.image_pages_indexed, 32);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	memcpy(m + 64 * PG, m, 32 * PG);	/* the guest copies what it read */
	char *copies = malloc(32 * PG);
	ASSERT(copies);
	memcpy(copies, m + 64 * PG, 32 * PG);
	int wfd = open(img, O_WRONLY);	/* the break makes m's pages private */
	ASSERT(wfd >= 0);
	ASSERT_EQ(ftruncate(wfd, 16 * PG), 0);
	close(wfd);
	/* Read again until leased again (a second after the break). */
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	uint64_t shared0 = s.pages_shared_at_read;
	for (int i = 0; i < 500 && s.pages_shared_at_read < shared0 + 16; i++) {
		ASSERT_EQ(md_agent_pread(a, fd, m + 32 * PG, 16 * PG, 0), 16 * PG);
		ASSERT_EQ(md_agent_stats(a, &s), 0);
		if (s.pages_shared_at_read < shared0 + 16)
			usleep(10000);
	}
	ASSERT_EQ(s.pages_shared_at_read, shared0 + 16);
	uint64_t merged0 = s.merged_image, passes0 = s.full_scans;
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	for (int i = 0; i < 1000 && (md_agent_stats(a, &s), s.full_scans < passes0 + 3); i++)
		usleep(10000);
	ASSERT(s.full_scans >= passes0 + 3);
	/* One run of the copies, over the new end: its entries dropped. */
	ASSERT_EQ(s.merged_image, merged0);
	for (int i = 64; i < 96; i++)
		ASSERT(!(self_pagemap(m + i * PG) & (1ull << 61)));
	ASSERT(memcmp(m + 64 * PG, copies, 32 * PG) == 0);
	free(copies);
	md_agent_free(a);
	close(fd);
	munmap(m, 128 * PG);
	return 0;
}

/* An indexed image whose lease a writer broke, not read again since: a
 * copy's match drops its entry, unmerged (the file may have changed).
 * Kept, it would keep the copy from the pool on every pass. */
TEST_IMPL(scan_image_entries_of_broken_lease_dropped)
{
	char img[512];
	md_agent *a;
	int fd;
	char *m = paused_on_image(&a, 64 * PG, img, "broken", 16, 77, &fd);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	feed_image_index(a);
	memcpy(m + 40 * PG, m + 3 * PG, PG);
	char want[PG];
	memcpy(want, m + 3 * PG, PG);
	uint64_t cookie;
	ASSERT(image_entry(a, m + 40 * PG, &cookie));
	int wfd = open(img, O_WRONLY);	/* the break makes m's pages private */
	ASSERT(wfd >= 0);
	close(wfd);
	ASSERT_EQ(merge_onto_image(a, m + 40 * PG, &cookie, 1), 0);
	ASSERT(!image_entry(a, m + 40 * PG, &cookie));
	ASSERT(memcmp(m + 40 * PG, want, PG) == 0);
	ASSERT(!(self_pagemap(m + 40 * PG) & (1ull << 61)));
	paused_on_image_done(a, m, 64 * PG, fd);
	return 0;
}

/* A copy the scanner matched, then a read mapped the image over it (the
 * same page) before the batch's merges: it is the image's already, left
 * as the read mapped it, not merged (counted) again. */
TEST_IMPL(scan_image_merge_leaves_pages_shared_meanwhile)
{
	char img[512];
	md_agent *a;
	int fd;
	char *m = paused_on_image(&a, 64 * PG, img, "meanwhile", 16, 78, &fd);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	feed_image_index(a);
	memcpy(m + 35 * PG, m + 3 * PG, PG);
	uint64_t cookie;
	ASSERT(image_entry(a, m + 35 * PG, &cookie));
	ASSERT_EQ(md_agent_pread(a, fd, m + 32 * PG, 16 * PG, 0), 16 * PG);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 32);
	uint64_t vmas = __atomic_load_n(&a->vmas.adds, __ATOMIC_SEQ_CST);
	ASSERT_EQ(merge_onto_image(a, m + 35 * PG, &cookie, 1), 0);
	ASSERT_EQ(__atomic_load_n(&a->vmas.adds, __ATOMIC_SEQ_CST), vmas);
	ASSERT_EQ(self_pagemap(m + 35 * PG), self_pagemap(m + 3 * PG));
	paused_on_image_done(a, m, 64 * PG, fd);
	return 0;
}

static int lost_fd = -1, lost_to = -1, lost_seen;

/* The VMM puts another file over the agent's descriptor of an image in
 * the middle of a merge onto it. */
static void lose_image_fd(uintptr_t addr, size_t n)
{
	(void)addr;
	(void)n;
	ASSERT_EQ(dup2(lost_to, lost_fd), lost_fd);
	lost_seen++;
}

/* A merge onto an image whose descriptor the VMM replaced meanwhile fails
 * (-EBADF from the engine): the lease goes at once, as a break's, its
 * pages made private, not at the once-a-second look. */
TEST_IMPL(scan_image_merge_lost_fd_lets_lease_go)
{
	char img[512], other[512];
	md_agent *a;
	int fd;
	char *m = paused_on_image(&a, 64 * PG, img, "lost-fd", 16, 79, &fd);
	snprintf(other, sizeof(other), "%s/lost-fd-other", test_dir());
	make_image(other, 16 * PG, 80);
	lost_to = open(other, O_RDONLY | O_CLOEXEC);
	ASSERT(lost_to >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	feed_image_index(a);
	memcpy(m + 40 * PG, m + 3 * PG, PG);
	char want[PG];
	memcpy(want, m + 3 * PG, PG);
	uint64_t cookie;
	ASSERT(image_entry(a, m + 40 * PG, &cookie));
	md__agent_enter(a);
	ASSERT_EQ(a->nimages, 1);
	ASSERT_EQ(a->images[0].lease, MD_LEASE_HELD);
	lost_fd = a->images[0].fd;
	md__agent_leave(a);
	md__engine_compare_hook = lose_image_fd;
	ASSERT_EQ(merge_onto_image(a, m + 40 * PG, &cookie, 1), 0);
	md__engine_compare_hook = NULL;
	ASSERT_EQ(lost_seen, 1);	/* the merge got as far as its compare */
	md__agent_enter(a);
	int lease = a->images[0].lease;
	md__agent_leave(a);
	ASSERT(lease != MD_LEASE_HELD);
	ASSERT(memcmp(m + 40 * PG, want, PG) == 0);
	ASSERT(!(self_pagemap(m + 40 * PG) & (1ull << 61)));
	paused_on_image_done(a, m, 64 * PG, fd);
	close(lost_to);
	return 0;
}

/* A lease signal the agent's thread takes late, after the break it told
 * of was finished (a read saw it first) and the image leased again: every
 * page shared since was made private, for no writer. Now a signal is
 * weighed as the once-a-second look is, by the lease the descriptor
 * holds. */
/* (A signal with the kernel's si_code can be queued only by the thread it
 * is for: the agent thread's handling of one is called as it would.) */
TEST_IMPL(image_stale_lease_signal_ignored)
{
	char img[512], *m;
	md_agent *a;
	int fd = agent_read_image(&a, &m, img, 24);
	md_stats s;
	ASSERT_EQ(a->nimages, 1);
	int afd = a->images[0].fd;
	ASSERT_EQ(fcntl(afd, F_GETLEASE), F_RDLCK);
	md__image_lease_broken(a, afd);	/* a signal naming our descriptor */
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.lease_breaks, 0);
	ASSERT_EQ(s.pages_privatized, 0);
	ASSERT_EQ(fcntl(afd, F_GETLEASE), F_RDLCK);
	/* A real one is still answered: a writer gets in, the pages go. */
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0)
		_exit(open(img, O_WRONLY) >= 0 ? 0 : 1);
	int st;
	ASSERT_EQ(waitpid(writer, &st, 0), writer);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	ASSERT_EQ(s.pages_privatized, 16);
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(fd);
	return 0;
}

/* The kernel clears a description's lease signal and owner when its lease
 * goes: taken again after a break, the lease has them set again, or the
 * next writer's break would be told to no one and wait for the agent's
 * once-a-second look. */
TEST_IMPL(image_leased_again_keeps_signal)
{
	char img[512], *m;
	md_agent *a;
	int fd = agent_read_image(&a, &m, img, 25);
	ASSERT_EQ(a->nimages, 1);
	int afd = a->images[0].fd;
	ASSERT_EQ(fcntl(afd, F_GETSIG), a->lease_signal);
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0)
		_exit(open(img, O_WRONLY) >= 0 ? 0 : 1);
	int st;
	ASSERT_EQ(waitpid(writer, &st, 0), writer);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* Leased again by a read, a second after the break at the latest. */
	for (int i = 0; i < 100 && fcntl(afd, F_GETLEASE) != F_RDLCK; i++) {
		ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), (ssize_t)(16 * PG));
		if (fcntl(afd, F_GETLEASE) != F_RDLCK)
			usleep(20000);
	}
	ASSERT_EQ(fcntl(afd, F_GETLEASE), F_RDLCK);
	ASSERT_EQ(fcntl(afd, F_GETSIG), a->lease_signal);
	struct f_owner_ex owner;
	ASSERT_EQ(fcntl(afd, F_GETOWN_EX, &owner), 0);
	ASSERT(owner.type == F_OWNER_TID && owner.pid == a->thread_tid);
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(fd);
	return 0;
}

/* A read that finds its image's lease being broken for a writer (whose
 * open waits, F_GETLEASE saying F_UNLCK) before the agent's thread has
 * answered the signal starts the break itself. It said "an image's lease
 * went with the agent's descriptor (closed or replaced by the VMM)", which
 * misled: the descriptor was still ours. The agent's lock is held here
 * across the check, as a read would, so that the thread's answer cannot
 * come first. */
TEST_IMPL(image_break_seen_by_read_not_said_fd_lost)
{
	char img[512], log[600], *m;
	snprintf(log, sizeof(log), "%s/agent.log", test_dir());
	ASSERT_EQ(md__log_open(log), 0);
	md_agent *a;
	int fd = agent_read_image(&a, &m, img, 25);
	ASSERT_EQ(a->nimages, 1);
	struct md__image *im = &a->images[0];
	md__agent_enter(a);
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0)
		_exit(open(img, O_WRONLY) >= 0 ? 0 : 1);
	for (int ms = 0; ms < 5000 && fcntl(im->fd, F_GETLEASE) != F_UNLCK; ms++)
		usleep(1000);
	ASSERT_EQ(fcntl(im->fd, F_GETLEASE), F_UNLCK);
	ASSERT_EQ(md__image_held(a, im), 0);
	md__agent_leave(a);
	int st;
	ASSERT_EQ(waitpid(writer, &st, 0), writer);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	ASSERT_EQ(s.pages_privatized, 16);
	ASSERT(strstr(file_text(log), "an image's lease was broken"));
	ASSERT(!strstr(file_text(log), "went with the agent's descriptor"));
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(fd);
	return 0;
}

/* The same check finding another file at our descriptor's number (the
 * VMM's close and open) still says so. */
TEST_IMPL(image_fd_replaced_said_by_read)
{
	char img[512], other[512], log[600], *m;
	snprintf(log, sizeof(log), "%s/agent.log", test_dir());
	snprintf(other, sizeof(other), "%s/other", test_dir());
	make_image(other, 16 * PG, 27);
	ASSERT_EQ(md__log_open(log), 0);
	md_agent *a;
	int fd = agent_read_image(&a, &m, img, 26);
	ASSERT_EQ(a->nimages, 1);
	struct md__image *im = &a->images[0];
	int ofd = open(other, O_RDONLY | O_CLOEXEC);
	ASSERT(ofd >= 0);
	md__agent_enter(a);
	ASSERT_EQ(dup2(ofd, im->fd), im->fd);
	ASSERT_EQ(md__image_held(a, im), 0);
	md__agent_leave(a);
	ASSERT(strstr(file_text(log), "went with the agent's descriptor"));
	static char want[16 * PG];
	ASSERT_EQ(pread(fd, want, sizeof(want), 0), (ssize_t)sizeof(want));
	ASSERT(memcmp(m, want, sizeof(want)) == 0);
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(ofd);
	close(fd);
	return 0;
}

/* A read whose copies around its mapped pages failed (an I/O error, here
 * md__edges_fail) goes whole over them, and forgets them as the image's:
 * but another read may map the image over them again first (here, the
 * hook), whose pages must stay on record, or a lease break would leave
 * them showing the file as its writer changes it. */
static int overwritten_fd;
static char *overwritten_ram;

static int overwritten_hook_ran;

static void read_again_over(md_agent *a)
{
	overwritten_hook_ran = 1;
	md__edges_fail = 0;	/* this read's own edges are copied */
	ssize_t n = md_agent_pread(a, overwritten_fd, overwritten_ram, 16 * PG, 16 * PG);
	ASSERT_EQ(n, 16 * PG);
	/* Read by the guest: present, and still the file's. */
	unsigned sum = 0;
	for (size_t i = 0; i < 16; i++)
		sum += *(volatile unsigned char *)(overwritten_ram + i * PG);
	(void)sum;
}

TEST_IMPL(read_gone_whole_keeps_remapped_records)
{
	char img[512];
	static unsigned char data[32 * PG + 100], want[16 * PG];
	snprintf(img, sizeof(img), "%s/odd-again.img", test_dir());
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 13 + i / PG);
	int w = open(img, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	ASSERT(w >= 0 && write(w, data, sizeof(data)) == (ssize_t)sizeof(data));
	close(w);
	int dfd = open(img, O_RDONLY);
	ASSERT(dfd >= 0);
	overwritten_fd = open(img, O_RDONLY);
	ASSERT(overwritten_fd >= 0);
	md_agent *a;
	char *m = inproc_agent(&a, 1000, 64 * PG);
	memset(m, 0x5a, 64 * PG);
	ASSERT_EQ(md_agent_register(a, m, 64 * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	overwritten_ram = m;
	md__overwritten_hook = read_again_over;
	md__edges_fail = EIO;
	ASSERT_EQ(md_agent_pread(a, dfd, m, 17 * PG, 16 * PG), (ssize_t)(16 * PG + 100));
	md__edges_fail = 0;
	ASSERT(overwritten_hook_ran);
	md__overwritten_hook = NULL;
	memcpy(want, data + 16 * PG, sizeof(want));
	ASSERT(memcmp(m, want, sizeof(want)) == 0);
	/* A writer opens the image: the pages the hook's read mapped are made
	 * private first, and keep what the guest read. */
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0) {
		int wfd = open(img, O_WRONLY);
		static char junk[32 * PG];
		memset(junk, 0xee, sizeof(junk));
		_exit(wfd >= 0 && pwrite(wfd, junk, sizeof(junk), 0) == (ssize_t)sizeof(junk) &&
		      fsync(wfd) == 0 ? 0 : 1);
	}
	int status;
	ASSERT_EQ(waitpid(writer, &status, 0), writer);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT(memcmp(m, want, sizeof(want)) == 0);
	md_agent_free(a);
	munmap(m, 64 * PG);
	close(dfd);
	close(overwritten_fd);
	return 0;
}

/* What the kernel does with a read before any byte moves, the agent does
 * too: one of nothing reads nothing and is no read of guest RAM to count
 * (it counted one, and a fallback); a buffer that wraps fails with EFAULT,
 * nothing written. */
TEST_IMPL(read_edges_as_kernel)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/edges.img", test_dir());
	make_image(img, 16 * PG, 3);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = inproc_agent(&a, 1000, 16 * PG);
	memset(m, 0x5a, 16 * PG);
	ASSERT_EQ(md_agent_register(a, m, 16 * PG, 0), 0);
	md_stats s;
	ASSERT_EQ(md_agent_pread(a, fd, m, 0, 0), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.reads_seen, 0);
	ASSERT_EQ(s.fallbacks_total, 0);
	errno = 0;
	ASSERT_EQ(md_agent_pread(a, fd, m, SIZE_MAX - (size_t)(uintptr_t)m + 2, 0), -1);
	ASSERT_EQ(errno, EFAULT);
	ASSERT_EQ(m[0], 0x5a);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.reads_seen, 0);
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(fd);
	return 0;
}

/* An agent in this process without a scanner, and len bytes of RAM
 * registered, filled with 0x5a. */
static char *reading_agent(md_agent **a, size_t len)
{
	md_agent_options o = { .run_dir = "", .domain = "private" };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT(m != MAP_FAILED);
	memset(m, 0x5a, len < 64 * PG ? len : 64 * PG);
	ASSERT_EQ(md_agent_register(*a, m, len, 0), 0);
	return m;
}

/* I/O the agent cannot follow, first seen with pages shared from images
 * (made private then, if memory allows): the VMM's call that brought it
 * leaves errno as found. Asking what memory there is opened cgroup v2's
 * root memory.max, which does not exist: ENOENT on a cgroup v2 host (a
 * review, with the root's line bound over /proc/self/cgroup, as here). */
TEST_IMPL(io_unseen_keeps_errno)
{
	char img[512], cg[512];
	snprintf(img, sizeof(img), "%s/unseen.img", test_dir());
	make_image(img, 64 * PG, 21);
	snprintf(cg, sizeof(cg), "%s/cgroup", test_dir());
	FILE *f = fopen(cg, "w");
	ASSERT(f && fputs("0::/\n", f) >= 0 && fclose(f) == 0);
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
	    mount(cg, "/proc/self/cgroup", NULL, MS_BIND, NULL) != 0)
		SKIP("cannot bind a file over /proc/self/cgroup here");
	md_agent *a;
	char *m = reading_agent(&a, 64 * PG);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 64 * PG, 0), 64 * PG);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 64);
	errno = 777;
	md_agent_io_unseen(a, "set up Linux AIO (a test)");
	ASSERT_EQ(errno, 777);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.io_unseen, 1);
	md_agent_free(a);
	munmap(m, 64 * PG);
	close(fd);
	return 0;
}

/* The kernel answers an O_DIRECT read whole: over a hole at the end of
 * the file it writes zeroes up to the length asked, past the end too, and
 * returns the bytes up to the end. The agent read the edge past its
 * mapped pages alone, a read that succeeds over a hole and leaves the rest
 * of the buffer as it was (review). Compared with the plain read into a
 * buffer filled alike: bytes and return value. */
TEST_IMPL(read_direct_hole_at_end_as_kernel)
{
	char img[512];
	static unsigned char data[20 * PG];
	snprintf(img, sizeof(img), "%s/hole-end.img", test_dir());
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 11 + i / PG + 1);
	/* Data in the first 20 pages; a hole after them, up to the end. */
	const off_t sizes[2] = { 32 * PG + 100, 32 * PG };
	for (int k = 0; k < 2; k++) {
		int w = open(img, O_CREAT | O_TRUNC | O_WRONLY, 0600);
		ASSERT(w >= 0 && write(w, data, sizeof(data)) == (ssize_t)sizeof(data));
		ASSERT(ftruncate(w, sizes[k]) == 0 && fsync(w) == 0);
		close(w);
		int dfd = open(img, O_RDONLY | O_DIRECT);
		if (dfd < 0 && errno == EINVAL)
			SKIP("no O_DIRECT on the test directory's filesystem");
		ASSERT(dfd >= 0);
		char *want = mmap(NULL, 17 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ASSERT(want != MAP_FAILED);
		memset(want, 0x5a, 17 * PG);
		errno = 0;
		ssize_t plain = pread(dfd, want, 17 * PG, 16 * PG);
		int plain_err = errno;
		md_agent *a;
		char *m = reading_agent(&a, 64 * PG);
		errno = 0;
		ssize_t n = md_agent_pread(a, dfd, m, 17 * PG, 16 * PG);
		ASSERT_EQ(n, plain);
		if (n < 0)
			ASSERT_EQ(errno, plain_err);
		ASSERT(memcmp(m, want, 17 * PG) == 0);
		ASSERT_EQ((unsigned char)m[17 * PG], 0x5a);
		md_stats s;
		ASSERT_EQ(md_agent_stats(a, &s), 0);
		ASSERT_EQ(s.pages_shared_at_read, 0);
		ASSERT_EQ(s.fallbacks[MD_FB_PARTIAL], 17);
		/* A read of whole pages inside the file is still shared. */
		ASSERT_EQ(md_agent_pread(a, dfd, m + 32 * PG, 16 * PG, 0), (ssize_t)(16 * PG));
		ASSERT(memcmp(m + 32 * PG, data, 16 * PG) == 0);
		ASSERT_EQ(md_agent_stats(a, &s), 0);
		ASSERT_EQ(s.pages_shared_at_read, 16);
		md_agent_free(a);
		munmap(m, 64 * PG);
		munmap(want, 17 * PG);
		close(dfd);
	}
	return 0;
}

/* A read whose copies around its mapped pages failed went whole over
 * them: its pages are counted as a fallback, not also as shared at read
 * time, nor its bytes as a shared read's (review). */
TEST_IMPL(read_gone_whole_not_counted_shared)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/whole.img", test_dir());
	make_image(img, 32 * PG + 100, 9);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, 64 * PG);
	static char want[17 * PG];
	ASSERT_EQ(pread(fd, want, 17 * PG, 16 * PG), (ssize_t)(16 * PG + 100));
	md__edges_fail = EIO;
	ssize_t n = md_agent_pread(a, fd, m, 17 * PG, 16 * PG);
	md__edges_fail = 0;
	ASSERT_EQ(n, (ssize_t)(16 * PG + 100));
	ASSERT(memcmp(m, want, 16 * PG + 100) == 0);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.reads_seen, 1);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.read_shared_bytes, 0);
	ASSERT_EQ(s.fallbacks[MD_FB_ERROR], 17);
	ASSERT_EQ(s.fallbacks[MD_FB_PARTIAL], 0);
	ASSERT_EQ(s.fallbacks_total, 17);
	/* The same read with its edges copied: shared, the tail a fallback. */
	ASSERT_EQ(md_agent_pread(a, fd, m + 32 * PG, 17 * PG, 16 * PG), (ssize_t)(16 * PG + 100));
	ASSERT(memcmp(m + 32 * PG, want, 16 * PG + 100) == 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	ASSERT_EQ(s.read_shared_bytes, 16 * PG + 100);
	ASSERT_EQ(s.fallbacks[MD_FB_PARTIAL], 1);
	ASSERT_EQ(s.fallbacks_total, 18);
	md_agent_free(a);
	munmap(m, 64 * PG);
	close(fd);
	return 0;
}

/* A read gone whole that ends on a page boundary (a head, no tail) forgets
 * its mapped pages as the image's too: private copies now, which would
 * stay in the bound of what a break must copy (md__break_room) and keep
 * later reads from being shared; a discard of them reads zeroes. */
TEST_IMPL(read_gone_whole_to_page_end_forgets_pages)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/whole-end.img", test_dir());
	make_image(img, 32 * PG, 9);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, 64 * PG);
	static char want[16 * PG + 100];
	ASSERT_EQ(pread(fd, want, sizeof(want), 16 * PG - 100), (ssize_t)sizeof(want));
	md__edges_fail = EIO;
	ssize_t n = md_agent_pread(a, fd, m + PG - 100, sizeof(want), 16 * PG - 100);
	md__edges_fail = 0;
	ASSERT_EQ(n, (ssize_t)sizeof(want));
	ASSERT(memcmp(m + PG - 100, want, sizeof(want)) == 0);
	ASSERT(pages_anon_present(m + PG, 16));
	md__agent_enter(a);
	uint64_t owned = a->owned;
	md__agent_leave(a);
	ASSERT_EQ(owned, 0);
	/* Copies in the image's mapping still: a discard reads zeroes, not
	 * the image again. */
	ASSERT_EQ(md_agent_madvise_discard(a, m + PG, 16 * PG, MADV_DONTNEED), 0);
	for (size_t i = 0; i < 16 * PG; i++)
		ASSERT_EQ(m[PG + i], 0);
	md_agent_free(a);
	munmap(m, 64 * PG);
	close(fd);
	return 0;
}

/* The kernel checks every segment of a preadv before it reads a byte: one
 * of a negative length (as ssize_t) fails the call with EINVAL, nothing
 * read. The agent read the segments before it first (review). */
TEST_IMPL(preadv_bad_segment_as_kernel)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/segments.img", test_dir());
	make_image(img, 64 * PG, 5);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, 64 * PG);
	struct iovec iov[2] = { { m, 16 * PG }, { m + 16 * PG, (size_t)SSIZE_MAX + 1 } };
	errno = 0;
	ASSERT_EQ(md_agent_preadv(a, fd, iov, 2, 0, 0), -1);
	ASSERT_EQ(errno, EINVAL);
	for (size_t i = 0; i < 32 * PG; i++)
		ASSERT_EQ((unsigned char)m[i], 0x5a);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.reads_seen, 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	md_agent_free(a);
	munmap(m, 64 * PG);
	close(fd);
	return 0;
}

/* A preadv2 into guest RAM with flags is the kernel's, flags and all: one
 * it does not know fails (EOPNOTSUPP), nothing read; one it knows reads a
 * copy, counted as such, nothing mapped. */
TEST_IMPL(preadv_flags_reach_kernel)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/flags.img", test_dir());
	make_image(img, 16 * PG, 5);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, 16 * PG);
	struct iovec iov = { m, 16 * PG };
	errno = 0;
	ASSERT_EQ(md_agent_preadv(a, fd, &iov, 1, 0, 0x40000000), -1);
	ASSERT_EQ(errno, EOPNOTSUPP);
	ASSERT_EQ(m[0], 0x5a);
	static char want[16 * PG];
	ASSERT_EQ(pread(fd, want, sizeof(want), 0), (ssize_t)sizeof(want));
	ASSERT_EQ(md_agent_preadv(a, fd, &iov, 1, 0, RWF_DSYNC), (ssize_t)(16 * PG));
	ASSERT(memcmp(m, want, sizeof(want)) == 0);
	ASSERT(pages_anon_present(m, 16));
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.fallbacks[MD_FB_FLAGS], 16);
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(fd);
	return 0;
}

/* Reads fd at off through the agent into m (guest RAM) and through the
 * kernel into u (alike, outside it), 64 pages each filled with 0x5a
 * first: as a preadv of two segments, l1 bytes and l2 (or, given end, up
 * to that address), or (!v) as one pread of their sum. The same count,
 * errno and bytes, or the test fails. */
static int read_as_kernel(md_agent *a, int fd, char *m, char *u, size_t l1, size_t l2, uintptr_t end,
			  off_t off, int v)
{
	char *buf[2] = { u, m };
	ssize_t n[2];
	int err[2];
	for (int i = 0; i < 2; i++) {
		memset(buf[i], 0x5a, 64 * PG);
		size_t second = end ? end - (uintptr_t)(buf[i] + l1) : l2;
		struct iovec iov[2] = { { buf[i], l1 }, { buf[i] + l1, second } };
		errno = 0;
		if (buf[i] == u)
			n[i] = v ? preadv(fd, iov, 2, off) : pread(fd, u, l1 + second, off);
		else
			n[i] = v ? md_agent_preadv(a, fd, iov, 2, off, 0) : md_agent_pread(a, fd, m, l1 + second, off);
		err[i] = errno;
	}
	printf("  %s at %#llx, %zu + %s%#lx: kernel %zd (%s), agent %zd\n", v ? "preadv" : "pread",
	       (unsigned long long)off, l1, end ? "to " : "", end ? (unsigned long)end : (unsigned long)l2,
	       n[0], strerror(err[0]), n[1]);
	ASSERT_EQ(n[1], n[0]);
	if (n[1] < 0)
		ASSERT_EQ(err[1], err[0]);
	ASSERT(memcmp(m, u, 64 * PG) == 0);
	return 0;
}

/* A read longer than MAX_RW_COUNT whose buffer ends past the address space
 * a user may name (not wrapping) fails with EFAULT in the kernel, before a
 * byte moves: it checks the buffer at its full length, then cuts the read.
 * The agent cut it first, and read the image into the buffer (review).
 * The ends: just past x86-64's 47 bits (which a kernel with 5-level page
 * tables takes: then both read), past every kernel's, and one that makes
 * the length past SSIZE_MAX (a review of the fix: the agent's probe took
 * it); as pread and as preadv. Compared with the kernel's own read into a buffer alike, outside
 * guest RAM. */
TEST_IMPL(read_past_address_space_as_kernel)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/far.img", test_dir());
	make_image(img, 16 * PG, 9);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, 64 * PG);
	char *u = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(u != MAP_FAILED);
	const uintptr_t ends[3] = { ((uintptr_t)1 << 47) + PG, (uintptr_t)1 << 62,
				    ((uintptr_t)1 << 63) + ((uintptr_t)1 << 62) };
	for (int k = 0; k < 3; k++)
		for (int v = 0; v < 2; v++)
			ASSERT_EQ(read_as_kernel(a, fd, m, u, 16 * PG, 0, ends[k], 0, v), 0);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	md_agent_free(a);
	munmap(m, 64 * PG);
	munmap(u, 64 * PG);
	close(fd);
	return 0;
}

/* Any lease-break-time at or below 0 is the kernel's "never" (fs/locks.c
 * times a break out only for a positive one): a negative one was taken
 * for unreadable, and so for 45 s (a review). Set for a moment. */
TEST_IMPL(lease_break_time_negative_is_never)
{
	int guard = set_until_exit("/proc/sys/fs/lease-break-time", "-1");
	ASSERT(guard >= 0);
	long s = md__lease_break_s_now();
	close(guard);
	ASSERT_EQ(s, 0);
	return 0;
}

/* fs.lease-break-time 0 is no time-out in the kernel (fs/locks.c): its
 * writer waits for the lease as long as it takes. The agent took it for a
 * deadline of now, and a break short of memory gave up at its first try,
 * letting the writer in with the image's pages still mapped; and where
 * /proc is gone it took a 0 read at its start for 45 (review). Here the
 * agent in a chroot without /proc, started as if it read 0 (the host's
 * value stays) and as if it read nothing (the default then). */
TEST_IMPL(image_break_without_time_out_waits_for_memory)
{
	char root[512], img[512];
	snprintf(root, sizeof(root), "%s/never-root", test_dir());
	ASSERT(mkdir(root, 0755) == 0 || errno == EEXIST);
	snprintf(img, sizeof(img), "%s/never.img", test_dir());
	const size_t n = 64;
	make_image(img, n * PG, 23);
	uint64_t orig = fnv_file(img, 0, n * PG);
	int go[2], done[2];
	ASSERT(pipe(go) == 0 && pipe(done) == 0);
	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0) {
		md_agent *a;
		md_stats s;
		char c, *m = reading_agent(&a, n * PG), *want = malloc(n * PG);
		int fd = open(img, O_RDONLY);
		if (!want || fd < 0 || pread(fd, want, n * PG, 0) != (ssize_t)(n * PG) ||
		    md_agent_pread(a, fd, m, n * PG, 0) != (ssize_t)(n * PG) || md_agent_stats(a, &s) != 0 ||
		    s.pages_shared_at_read != n)
			_exit(2);
		if (chroot(root) != 0 || chdir("/") != 0)
			_exit(3);
		a->lease_break_s = -1;
		int unread = md__lease_break_s(a) == 45;
		a->lease_break_s = 0;
		int never = md__lease_break_s(a) == 0;
		md__privatize_fail = -ENOMEM;	/* the break's first try finds memory short */
		if (write(go[1], "g", 1) != 1 || read(done[0], &c, 1) != 1)
			_exit(4);
		if (memcmp(m, want, n * PG) != 0)
			_exit(5);	/* the writer's bytes */
		_exit(!unread ? 6 : !never ? 7 : 0);
	}
	char c;
	ASSERT_EQ(read(go[0], &c, 1), 1);
	/* Waits until the agent gives the lease back: its second try, 50 ms
	 * on (the host's lease-break-time, 45 s, is the test's bound). */
	int wfd = open(img, O_WRONLY);
	ASSERT(wfd >= 0);
	char junk[4096];
	memset(junk, 0xee, sizeof(junk));
	for (size_t off = 0; off < n * PG; off += sizeof(junk))
		ASSERT_EQ(pwrite(wfd, junk, sizeof(junk), (off_t)off), (ssize_t)sizeof(junk));
	close(wfd);
	ASSERT(fnv_file(img, 0, n * PG) != orig);
	ASSERT_EQ(write(done[1], "d", 1), 1);
	int st = 0;
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	return 0;
}

static void slow_part(struct md_agent *a)
{
	(void)a;
	usleep(100000);
}

/* A lease break slower than fs.lease-break-time (1 s here, put back as
 * soon as the writer is in; parts of 16 pages 100 ms apart, 1.6 s for
 * 256): the kernel lets the writer in before the last pages are made
 * private, and those may show the guest its bytes. The agent counted a
 * clean break and said its pages were made private. It now looks at
 * /proc/self/fdinfo, where the lease shows while the kernel holds it,
 * before each part and before it gives the lease back: it says so, and
 * counts the pages made private late as error fallbacks (review). */
TEST_IMPL(image_break_past_lease_time_said)
{
	char img[512], log[600];
	snprintf(log, sizeof(log), "%s/agent.log", test_dir());
	ASSERT_EQ(md__log_open(log), 0);
	snprintf(img, sizeof(img), "%s/slow.img", test_dir());
	const size_t n = 256;
	make_image(img, n * PG, 29);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, n * PG);
	ASSERT_EQ(md_agent_pread(a, fd, m, n * PG, 0), (ssize_t)(n * PG));
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, n);

	md__privatize_part_pages = 16;
	md__part_hook = slow_part;
	int guard = set_until_exit("/proc/sys/fs/lease-break-time", "1");
	ASSERT(guard >= 0);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid_t writer = fork();
	if (writer == 0)
		_exit(open(img, O_WRONLY) >= 0 ? 0 : 1);
	int st = 0;
	pid_t got = writer > 0 ? waitpid(writer, &st, 0) : -1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	close(guard);	/* the host's value back at once */
	ASSERT(writer > 0 && got == writer);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	printf("  the writer waited %ld ms\n", ms);
	ASSERT(ms >= 900);	/* let in by the kernel, not by the agent */
	for (int i = 0; i < 100 && (md_agent_stats(a, &s) != 0 || !s.lease_breaks); i++)
		usleep(50000);
	md__part_hook = NULL;
	md__privatize_part_pages = 2048;
	ASSERT_EQ(s.lease_breaks, 1);
	ASSERT_EQ(s.pages_privatized, n);
	printf("  pages made private late: %llu\n", (unsigned long long)s.fallbacks[MD_FB_ERROR]);
	ASSERT(s.fallbacks[MD_FB_ERROR] >= 16 && s.fallbacks[MD_FB_ERROR] <= n);
	ASSERT(strstr(file_text(log), "WRITER GOT IN BEFORE ITS LEASE BREAK WAS DONE"));
	ASSERT(!strstr(file_text(log), "its shared pages were made private"));
	md_agent_free(a);
	munmap(m, n * PG);
	close(fd);
	return 0;
}

/* 1 if this process's page at addr (read first) is the page cache's
 * frame of img at off: shared at read time, not a copy. */
static int self_page_is_image(const volatile char *addr, const char *img, off_t off)
{
	(void)addr[0];
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	const volatile char *f = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, off);
	ASSERT(f != MAP_FAILED);
	(void)f[0];
	uint64_t mine = self_pagemap((const void *)addr), its = self_pagemap((const void *)f);
	munmap((void *)f, PG);
	close(fd);
	const uint64_t pfn = (1ull << 55) - 1;
	return (mine >> 63) && (its >> 63) && (mine & pfn) == (its & pfn);
}

/* Pages shared at read time from leased images are made private by a
 * lease break before the writer may go on: there must not be more than it
 * can copy within fs.lease-break-time (a 512 MiB guest's took 2.4 s, and
 * past that the kernel lets the writer in). Past half of it at the rate
 * assumed (lowered here: about 40 pages in all), reads of images are
 * copied, counted as no_lease; pages the guest wrote since (a walk of
 * them) need no copy, and leave room again (review). */
TEST_IMPL(image_reads_copied_past_break_bound)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/bound.img", test_dir());
	const size_t n = 128;
	make_image(img, n * PG, 31);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, n * PG), *want = malloc(n * PG);
	ASSERT(want);
	ASSERT_EQ(pread(fd, want, n * PG, 0), (ssize_t)(n * PG));
	/* A bound from 32 to 47 pages: 45 at the default 45 s. */
	long s = md__lease_break_s(a);
	md__break_pages_per_s = s > 0 ? (64 + (unsigned long)s - 1) / (unsigned long)s : 0;
	unsigned long most = s > 0 ? (unsigned long)s * md__break_pages_per_s / 2 : 0;
	if (most < 32 || most >= 48)
		SKIP("fs.lease-break-time is %ld s here: no bound of 32 to 47 pages", s);
	printf("  bound: %lu pages\n", most);
	/* Two reads of 16 pages shared, the third copied. */
	for (size_t k = 0; k < 3; k++)
		ASSERT_EQ(md_agent_pread(a, fd, m + k * 16 * PG, 16 * PG, (off_t)(k * 16 * PG)), (ssize_t)(16 * PG));
	ASSERT(memcmp(m, want, 48 * PG) == 0);
	for (size_t i = 0; i < 48; i++)
		ASSERT_EQ(self_page_is_image(m + i * PG, img, (off_t)(i * PG)), i < 32);
	md_stats st;
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	ASSERT_EQ(st.pages_shared_at_read, 32);
	ASSERT_EQ(st.fallbacks[MD_FB_NO_LEASE], 16);
	/* The bound is reached exactly, not a page short of it. */
	md__agent_enter(a);
	ASSERT(md__break_room(a, most - 32));
	ASSERT(!md__break_room(a, most - 32 + 1));
	md__agent_leave(a);
	/* The guest writes what it read: those need no copy any more, as the
	 * walk (md_agent_stats) finds. */
	for (size_t i = 0; i < 32; i++)
		m[i * PG] ^= 1;
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	ASSERT_EQ(md_agent_pread(a, fd, m + 64 * PG, 16 * PG, 64 * PG), (ssize_t)(16 * PG));
	ASSERT(memcmp(m + 64 * PG, want + 64 * PG, 16 * PG) == 0);
	for (size_t i = 64; i < 80; i++)
		ASSERT(self_page_is_image(m + i * PG, img, (off_t)(i * PG)));
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	ASSERT_EQ(st.pages_shared_at_read, 48);
	ASSERT_EQ(st.fallbacks[MD_FB_NO_LEASE], 16);
	/* The records' count follows them: written pages keep theirs, RAM
	 * given up takes its own along. */
	ASSERT_EQ(a->owned, 48);
	ASSERT_EQ(md_agent_unmap(a, m + 8 * PG, 16 * PG), 0);
	ASSERT_EQ(a->owned, 32);
	md__break_pages_per_s = 50000;
	md_agent_free(a);
	munmap(m, n * PG);
	free(want);
	close(fd);
	return 0;
}

/* While a root VMM gives root up (md__images_uid_change, before its
 * setuid call, until md__images_uid_changed after it), a read of an image
 * the new uid does not own takes no lease: that uid could not give it
 * back, and the image's writers would wait out fs.lease-break-time. The
 * read is copied; once the call returned, shared again. */
TEST_IMPL(image_not_leased_while_giving_root_up)
{
	if (geteuid() != 0)
		SKIP("needs root (a root VMM giving root up)");
	char img[512];
	snprintf(img, sizeof(img), "%s/uidgap.img", test_dir());
	make_image(img, 64 * PG, 33);
	struct stat st;
	ASSERT(stat(img, &st) == 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, 64 * PG);
	md__images_uid_change(a, st.st_uid + 1);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), (ssize_t)(16 * PG));
	ASSERT(!self_page_is_image(m, img, 0));
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.fallbacks[MD_FB_NO_LEASE], 16);
	md__images_uid_changed(a);
	ASSERT_EQ(md_agent_pread(a, fd, m + 16 * PG, 16 * PG, 16 * PG), (ssize_t)(16 * PG));
	ASSERT(self_page_is_image(m + 16 * PG, img, 16 * PG));
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	md_agent_free(a);
	munmap(m, 64 * PG);
	close(fd);
	return 0;
}

/* The bound of image_reads_copied_past_break_bound holds for the
 * scanner's merges onto images too: a break makes those private as well
 * (review). 32 pages shared at read time, and copies of them elsewhere in
 * guest RAM, which the scanner would map from the image: no more of them
 * than the bound leaves; all once it is raised. */
TEST_IMPL(scan_image_merges_within_break_bound)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/merge-bound", test_dir());
	make_image(img, 32 * PG, 33);
	md_agent *a;
	size_t len = 256 * PG;
	char *m = inproc_agent(&a, 2000, len);
	memset(m, 0x5a, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	long s = md__lease_break_s(a);
	md__break_pages_per_s = s > 0 ? (64 + (unsigned long)s - 1) / (unsigned long)s : 0;
	unsigned long most = s > 0 ? (unsigned long)s * md__break_pages_per_s / 2 : 0;
	if (most < 32 || most >= 48)
		SKIP("fs.lease-break-time is %ld s here: no bound of 32 to 47 pages", s);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 32 * PG, 0), (ssize_t)(32 * PG));
	memcpy(m + 128 * PG, m, 32 * PG);
	md_stats st;
	uint64_t passes0 = 0;
	for (int i = 0; i < 400; i++) {
		ASSERT_EQ(md_agent_stats(a, &st), 0);
		if (!passes0 && st.image_pages_indexed >= 32)
			passes0 = st.full_scans;
		if (passes0 && st.full_scans >= passes0 + 10)
			break;
		usleep(20000);
	}
	printf("  bound %lu: %llu merged onto the image in %llu passes\n", most,
	       (unsigned long long)st.merged_image, (unsigned long long)(st.full_scans - passes0));
	ASSERT(passes0 && st.full_scans >= passes0 + 10);
	ASSERT_EQ(st.pages_shared_at_read, 32);
	ASSERT(32 + st.merged_image <= most);
	md__break_pages_per_s = 50000;
	for (int i = 0; i < 400 && st.merged_image < 32; i++) {
		usleep(20000);
		ASSERT_EQ(md_agent_stats(a, &st), 0);
	}
	ASSERT_EQ(st.merged_image, 32);
	md_agent_free(a);
	munmap(m, len);
	close(fd);
	return 0;
}

/* The kernel checks a read's end (its offset plus the length it reads:
 * a preadv's segments together, cut to MAX_RW_COUNT; a pread's whole
 * length, before the cut) before a byte moves: past the largest file
 * offset it fails with EINVAL. The agent read segment by segment, and the
 * first read past the end of the file returned 0 (review). Compared with
 * the kernel's own reads into a buffer alike, outside guest RAM; an end
 * right at the largest offset reads (nothing). */
TEST_IMPL(read_end_past_largest_offset_as_kernel)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/end.img", test_dir());
	make_image(img, 16 * PG, 9);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, 64 * PG);
	char *u = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(u != MAP_FAILED);
	const off_t near = 0x7ffffffffffe0000ll, far = LLONG_MAX - (2ll << 30);
	const struct { off_t off; size_t len1, len2; int v; } cases[] = {
		{ near, 16 * PG, 16 * PG, 1 },		/* one past the largest offset */
		{ near, 16 * PG, 16 * PG - 1, 1 },	/* at it: read, nothing */
		{ near, 32 * PG, 0, 0 },
		{ far, 3ull << 30, 0, 0 },		/* past it; the end of the agent's cut inside */
		{ far, 64 * PG, (3ull << 30) - 64 * PG, 1 },	/* past it; preadv's cut end inside: reads */
		{ -2, 16 * PG, 16 * PG, 1 },
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++)
		ASSERT_EQ(read_as_kernel(a, fd, m, u, cases[k].len1, cases[k].len2, 0, cases[k].off, cases[k].v), 0);
	md_agent_free(a);
	munmap(m, 64 * PG);
	munmap(u, 64 * PG);
	close(fd);
	return 0;
}

/* A preadv reads MAX_RW_COUNT (0x7ffff000) bytes at most, as a pread: the
 * segments past it are not read, and the count says so (review). The
 * first segment is mapped from a sparse image: no memory is filled. */
TEST_IMPL(preadv_cut_at_max_rw_count)
{
	const size_t max = 0x7ffff000, len = max + 64 * PG;
	char img[512];
	snprintf(img, sizeof(img), "%s/sparse.img", test_dir());
	int w = open(img, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	ASSERT(w >= 0 && ftruncate(w, (off_t)len) == 0);
	close(w);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	md_agent *a;
	char *m = reading_agent(&a, len);
	memset(m + max, 0x5a, 64 * PG);
	/* The first segment stops a page short of the cap: the second is
	 * cut to one page, the third not read. */
	struct iovec iov[3] = { { m, max - PG }, { m + max - PG, 16 * PG }, { m + max + 15 * PG, 16 * PG } };
	/* A segment past the cut that the kernel refuses (its end past the
	 * address space) fails the call whole, before a byte moves. */
	struct iovec bad[3] = { iov[0], iov[1], { (void *)(((uintptr_t)1 << 62) - 16 * PG), 16 * PG } };
	errno = 0;
	ASSERT_EQ(md_agent_preadv(a, fd, bad, 3, 0, 0), -1);
	ASSERT_EQ(errno, EFAULT);
	ASSERT_EQ((unsigned char)m[0], 0x5a);
	ASSERT_EQ(md_agent_preadv(a, fd, iov, 3, 0, 0), (ssize_t)max);
	for (size_t i = max - PG; i < max; i++)
		ASSERT_EQ(m[i], 0);
	for (size_t i = max; i < max + 64 * PG; i++)
		ASSERT_EQ((unsigned char)m[i], 0x5a);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.bytes_read, max);
	/* Gone before the agent: it would make its shared pages private
	 * copies (2 GiB of memory). */
	ASSERT_EQ(md_agent_unmap(a, m, len), 0);
	md_agent_free(a);
	close(fd);
	return 0;
}

TEST_IMPL(scan_image_index_prunes_written)
{
	/* The index of image pages hashes them where the read mapped them,
	 * after the read: a page the guest wrote in between is filed under
	 * its new content. The scanner then finds it (or a copy) and the
	 * merge compares it with the file, in vain; the entry must go then,
	 * or every pass would freeze the page again. The page keeps what
	 * the guest wrote. */
	char img[512];
	snprintf(img, sizeof(img), "%s/written", test_dir());
	make_image(img, 1 << 20, 15);
	md_agent *a;
	size_t len = 512 * PG;
	char *m = inproc_agent(&a, 2000, len);
	memset(m, 0x5a, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);	/* nothing is indexed until it resumes */
	usleep(50000);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 1 << 20, 0), 1 << 20);
	md_stats s;
	md_agent_stats(a, &s);
	ASSERT(s.pages_shared_at_read >= 256);
	/* Page 3 written, and its new content copied to page 300. */
	memset(m + 3 * PG + 100, 0x77, 64);
	memcpy(m + 300 * PG, m + 3 * PG, PG);
	unsigned char want[PG];
	memcpy(want, m + 3 * PG, PG);
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	/* The copy is tried against the file (every time the cursor comes
	 * round within the batch that first finds it: this RAM is small),
	 * then never again: over the next passes nothing more is abandoned. */
	uint64_t passes0 = 0, abandoned0 = 0;
	for (int i = 0; i < 400; i++) {
		md_agent_stats(a, &s);
		if (!passes0 && s.abandoned) {
			passes0 = s.full_scans;
			abandoned0 = s.abandoned;
		}
		if (passes0 && s.full_scans >= passes0 + 20)
			break;
		usleep(50000);
	}
	ASSERT(passes0 && s.full_scans >= passes0 + 20);
	ASSERT_EQ(s.abandoned, abandoned0);
	ASSERT_EQ(s.merged_image, 0);
	ASSERT(memcmp(m + 3 * PG, want, PG) == 0 && memcmp(m + 300 * PG, want, PG) == 0);
	md_agent_free(a);
	munmap(m, len);
	close(fd);
	return 0;
}

/* The same by hand: a page written before the feed, its copy matched, the
 * merge's compare fails; the entry goes at once, and the copy stays the
 * guest's (no owner record names the image for it). */
TEST_IMPL(scan_image_failed_merge_drops_written_entry)
{
	char img[512];
	md_agent *a;
	int fd;
	char *m = paused_on_image(&a, 64 * PG, img, "written-by-hand", 16, 85, &fd);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	memset(m + 3 * PG + 100, 0x77, 64);
	feed_image_index(a);
	memcpy(m + 40 * PG, m + 3 * PG, PG);
	uint64_t cookie;
	ASSERT(image_entry(a, m + 40 * PG, &cookie));
	ASSERT_EQ(merge_onto_image(a, m + 40 * PG, &cookie, 1), 0);
	ASSERT(!image_entry(a, m + 40 * PG, &cookie));
	ASSERT(memcmp(m + 40 * PG, m + 3 * PG, PG) == 0);
	md__agent_enter(a);
	struct md__region *r = md__region_find(a, (uintptr_t)(m + 40 * PG), PG);
	ASSERT(r && !r->owner[((uintptr_t)m - r->start) / PG + 40]);
	md__agent_leave(a);
	paused_on_image_done(a, m, 64 * PG, fd);
	return 0;
}

/* A sparse image on tmpfs (its first MiB data, its second a hole), read by
 * a guest: the first MiB shared, then 4 pages of the hole copied (a small
 * read), which the guest overwrites before the scanner indexes them. The
 * index files the guest's new content under the hole's pages; the scanner
 * finds those guest pages and merges them onto the image. The compare read
 * the agent's view of the image over the hole: that allocated pages in the
 * file (the image grew by 16 KiB), and on a full tmpfs it was a SIGBUS in
 * the scanner's memcmp, the VMM gone. An entry on a hole goes, unread; the
 * guest's copy of the last page of data, just before those pages in RAM
 * (one run with them), still merges. */
static int image_hole_entry(int full)
{
	char dir[600], img[700];
	const char *none = own_tmpfs(dir, sizeof(dir), "2m");
	if (none)
		SKIP("%s", none);
	snprintf(img, sizeof(img), "%s/img", dir);
	int w = open(img, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT(w >= 0);
	static unsigned char data[1 << 20];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 7 + i / PG + 3);
	ASSERT(pwrite(w, data, sizeof(data), 0) == (ssize_t)sizeof(data));
	ASSERT(ftruncate(w, 2 << 20) == 0);
	close(w);
	if (full) {	/* the rest of the tmpfs taken */
		char fill[700];
		snprintf(fill, sizeof(fill), "%s/fill", dir);
		int f = open(fill, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		ASSERT(f >= 0);
		while (write(f, data, PG) == (ssize_t)PG)
			;
		ASSERT(errno == ENOSPC);
		close(f);
	}
	struct stat st0, st;
	ASSERT(stat(img, &st0) == 0);
	md_agent *a;
	size_t len = 512 * PG;
	char *m = inproc_agent(&a, 2000, len);
	memset(m, 0x5a, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);	/* nothing is indexed until it resumes */
	usleep(50000);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 1 << 20, 0), 1 << 20);
	ASSERT_EQ(md_agent_pread(a, fd, m + 400 * PG, 4 * PG, 1 << 20), 4 * PG);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 256);
	ASSERT_EQ(s.read_small_pages, 4);
	/* The guest reuses the buffer before the index is fed. */
	for (size_t i = 0; i < 4 * PG; i++)
		m[400 * PG + i] = (char)(i * 13 + i / PG + 1);
	unsigned char want[4 * PG];
	memcpy(want, m + 400 * PG, sizeof(want));
	memcpy(m + 399 * PG, m + 255 * PG, PG);
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	for (int i = 0; i < 400 && (md_agent_stats(a, &s), s.image_pages_indexed < 260); i++)
		usleep(50000);
	ASSERT_EQ(s.image_pages_indexed, 260);
	/* Passes over those pages (the first only notes their checksums),
	 * and a batch's matches merge once the batch is done. */
	uint64_t passes = s.full_scans;
	for (int i = 0; i < 400 && (md_agent_stats(a, &s), s.full_scans < passes + 4 || !s.merged_image); i++)
		usleep(50000);
	ASSERT(s.full_scans >= passes + 4);
	usleep(300000);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.merged_image, 1);
	ASSERT(memcmp(m + 399 * PG, data + 255 * PG, PG) == 0);
	ASSERT(self_pagemap(m + 399 * PG) & (1ull << 61));	/* the image's page */
	ASSERT(memcmp(m + 400 * PG, want, sizeof(want)) == 0);
	ASSERT(stat(img, &st) == 0);
	printf("  image allocated %lld KiB before, %lld after; abandoned %llu, merge_fallbacks %llu\n",
	       (long long)st0.st_blocks / 2, (long long)st.st_blocks / 2, (unsigned long long)s.abandoned,
	       (unsigned long long)s.merge_fallbacks);
	ASSERT_EQ(st.st_blocks, st0.st_blocks);	/* no hole filled */
	/* Nor a merge tried on them: none fell back, none abandoned. */
	ASSERT_EQ(s.merge_fallbacks, 0);
	ASSERT_EQ(s.abandoned, 0);
	md_agent_free(a);
	munmap(m, len);
	close(fd);
	umount2(dir, MNT_DETACH);
	return 0;
}

TEST_IMPL(scan_tmpfs_image_hole_not_read)
{
	return image_hole_entry(0);
}

TEST_IMPL(scan_full_tmpfs_image_hole_not_read)
{
	return image_hole_entry(1);
}

/* The same by hand, on a run of a copied page of data and the hole's
 * pages after it: the hole's entries go, the data page's stays, and the
 * page merges on its own. */
TEST_IMPL(scan_tmpfs_image_hole_entries_dropped_alone)
{
	char dir[600], img[700];
	const char *none = own_tmpfs(dir, sizeof(dir), "1m");
	if (none)
		SKIP("%s", none);
	snprintf(img, sizeof(img), "%s/img", dir);
	make_image(img, 16 * PG, 86);
	ASSERT(truncate(img, 32 * PG) == 0);
	md_agent *a;
	char *m = inproc_agent(&a, 2000, 128 * PG);
	memset(m, 0x5a, 128 * PG);
	ASSERT_EQ(md_agent_register(a, m, 128 * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	ASSERT_EQ(md_agent_pread(a, fd, m + 100 * PG, 4 * PG, 16 * PG), 4 * PG);	/* copied */
	for (size_t i = 0; i < 4 * PG; i++)	/* the guest reuses the buffer */
		m[100 * PG + i] = (char)(i * 13 + i / PG + 1);
	memcpy(m + 99 * PG, m + 15 * PG, PG);
	feed_image_index(a);
	uint64_t cookie[5];
	for (int i = 0; i < 5; i++)
		ASSERT(image_entry(a, m + (99 + i) * PG, &cookie[i]));
	ASSERT_EQ(merge_onto_image(a, m + 99 * PG, cookie, 5), 0);
	for (int i = 1; i < 5; i++)
		ASSERT(!image_entry(a, m + (99 + i) * PG, &cookie[i]));
	ASSERT(image_entry(a, m + 99 * PG, &cookie[0]));
	ASSERT_EQ(merge_onto_image(a, m + 99 * PG, cookie, 1), 1);
	ASSERT(memcmp(m + 99 * PG, m + 15 * PG, PG) == 0);	/* faults both in */
	ASSERT_EQ(self_pagemap(m + 99 * PG), self_pagemap(m + 15 * PG));
	md_agent_free(a);
	munmap(m, 128 * PG);
	close(fd);
	umount2(dir, MNT_DETACH);
	return 0;
}

/* A tmpfs image's holes are found with lseek(SEEK_DATA / SEEK_HOLE) on
 * the agent's descriptor, which moves the position of the open file at
 * that number: the VMM's own, once it has put a file of its own there
 * (close and open, dup2) since the lease was looked at. Its next read or
 * write would have used the position the agent's seek left (the image's
 * next hole: a review's test saw 262144). Put back now, for a read and
 * for a scanner's merge onto the image; the read gets the image's bytes,
 * the merge maps nothing of the VMM's file. */
TEST_IMPL(image_seek_leaves_vmm_file_position)
{
	char dir[600], img[700], other[512];
	const char *none = own_tmpfs(dir, sizeof(dir), "1m");
	if (none)
		SKIP("%s", none);
	snprintf(img, sizeof(img), "%s/img", dir);
	snprintf(other, sizeof(other), "%s/other", test_dir());
	make_image(img, 16 * PG, 91);
	ASSERT(truncate(img, 32 * PG) == 0);	/* a hole after the data */
	make_image(other, 16 * PG, 92);
	const off_t vmm_at = 3 * PG + 5;	/* where the VMM's file was */
	md_agent *a;
	char *m = inproc_agent(&a, 2000, 128 * PG);
	memset(m, 0x5a, 128 * PG);
	ASSERT_EQ(md_agent_register(a, m, 128 * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	static char want[16 * PG];
	ASSERT_EQ(pread(fd, want, sizeof(want), 0), (ssize_t)sizeof(want));

	/* A read (the leased image, then the number swapped at the seek). */
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);	/* leased, shared */
	swap_to = open(other, O_RDONLY | O_CLOEXEC);
	ASSERT(swap_to >= 0);
	ASSERT_EQ(lseek(swap_to, vmm_at, SEEK_SET), vmm_at);
	swap_from = -1;
	int vmm_fd = dup(fd);	/* the image, for the VMM's later reads below */
	ASSERT(vmm_fd >= 0);
	md__image_seek_hook = swap_image_fd;
	ssize_t n = md_agent_pread(a, vmm_fd, m + 32 * PG, 16 * PG, 0);
	md__image_seek_hook = NULL;
	ASSERT(swap_from >= 0);	/* the hook ran: the read looked for holes */
	ASSERT_EQ(n, 16 * PG);
	ASSERT(memcmp(m + 32 * PG, want, sizeof(want)) == 0);
	ASSERT_EQ(lseek(swap_from, 0, SEEK_CUR), vmm_at);	/* the VMM's file where it was */
	close(swap_to);
	md_agent_free(a);
	close(swap_from);	/* the VMM's file at the agent's old number */

	/* A merge onto the image by the scanner: the number swapped after
	 * the lease was looked at, at the look for holes. */
	m = inproc_agent(&a, 2000, 128 * PG);
	memset(m, 0x5a, 128 * PG);
	ASSERT_EQ(md_agent_register(a, m, 128 * PG, 0), 0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	ASSERT_EQ(md_agent_pread(a, vmm_fd, m, 16 * PG, 0), 16 * PG);
	memcpy(m + 99 * PG, m + 15 * PG, PG);
	feed_image_index(a);
	uint64_t cookie;
	ASSERT(image_entry(a, m + 99 * PG, &cookie));
	swap_to = open(other, O_RDONLY | O_CLOEXEC);
	ASSERT(swap_to >= 0);
	ASSERT_EQ(lseek(swap_to, vmm_at, SEEK_SET), vmm_at);
	swap_from = -1;
	md__image_seek_hook = swap_image_fd;
	uint64_t merged = merge_onto_image(a, m + 99 * PG, &cookie, 1);
	md__image_seek_hook = NULL;
	ASSERT(swap_from >= 0);
	ASSERT_EQ(merged, 0);	/* the number is not the image's any more */
	ASSERT(memcmp(m + 99 * PG, want + 15 * PG, PG) == 0);
	ASSERT_EQ(lseek(swap_from, 0, SEEK_CUR), vmm_at);
	md_agent_free(a);
	munmap(m, 128 * PG);
	close(swap_to);
	close(swap_from);
	close(vmm_fd);
	umount2(dir, MNT_DETACH);
	return 0;
}

/* A copy of an image page merged onto the image: its mappings counted
 * once in the VMA estimate the agent shares with its engine. Both counted
 * them, and the budget ran out at half what the kernel allows: reads
 * copied, merges refused, until the next count. */
TEST_IMPL(scan_image_merge_counted_once)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/counted", test_dir());
	make_image(img, 16 * PG, 17);
	md_agent *a;
	const size_t n = 64;
	char *m = unique_ram(&a, n);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	md_stats s;
	for (int i = 0; i < 400 && (md_agent_stats(a, &s), s.image_pages_indexed < 16); i++)
		usleep(50000);
	ASSERT(s.image_pages_indexed >= 16);
	/* The first merge maps a view of the image too (one mapping); the
	 * second only its own. */
	uint64_t adds = 0;
	for (unsigned k = 1; k <= 2; k++) {
		adds = __atomic_load_n(&a->vmas.adds, __ATOMIC_SEQ_CST);
		memcpy(m + (30 + 10 * k) * PG, m + (3 + 2 * k) * PG, PG);
		for (int i = 0; i < 400 && (md_agent_stats(a, &s), s.merged_image < k); i++)
			usleep(50000);
		ASSERT_EQ(s.merged_image, k);
	}
	usleep(200000);	/* nothing else maps meanwhile */
	ASSERT_EQ(__atomic_load_n(&a->vmas.adds, __ATOMIC_SEQ_CST) - adds, 2);
	md_agent_free(a);
	munmap(m, n * PG);
	close(fd);
	return 0;
}

/* One batch's matches merge in runs: guest pages side by side, equal to
 * pages side by side in one image. Pages of a batch that are not (the
 * file pages apart, another image's, the guest pages apart) each merge
 * on their own: taken as one run, a run's compare with the wrong file
 * pages failed, and none of it merged. */
TEST_IMPL(scan_image_merge_runs_only_adjacent)
{
	char img[512], other[512];
	md_agent *a;
	int fd;
	char *m = paused_on_image(&a, 64 * PG, img, "runs", 16, 83, &fd);
	snprintf(other, sizeof(other), "%s/runs-other", test_dir());
	make_image(other, 16 * PG, 84);
	int ofd = open(other, O_RDONLY | O_CLOEXEC);
	ASSERT(ofd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	ASSERT_EQ(md_agent_pread(a, ofd, m + 16 * PG, 16 * PG, 0), 16 * PG);
	feed_image_index(a);
	/* Copies at 40.. of: pages 5 and 9 (apart in the file), 3 and the
	 * other image's 4, 6 and 7 (apart in RAM). */
	const unsigned at[] = { 40, 41, 44, 45, 48, 50 }, from[] = { 5, 9, 3, 16 + 4, 6, 7 };
	uintptr_t addr[6];
	uint64_t cookie[6];
	for (int i = 0; i < 6; i++) {
		memcpy(m + at[i] * PG, m + from[i] * PG, PG);
		ASSERT(image_entry(a, m + at[i] * PG, &cookie[i]));
		addr[i] = (uintptr_t)(m + at[i] * PG);
	}
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	uint64_t merged0 = s.merged_image;
	a->scanner.files.merge(a->scanner.files.arg, addr, cookie, 6);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.merged_image - merged0, 6);
	for (int i = 0; i < 6; i++) {
		ASSERT(memcmp(m + at[i] * PG, m + from[i] * PG, PG) == 0);	/* faults both in */
		ASSERT_EQ(self_pagemap(m + at[i] * PG), self_pagemap(m + from[i] * PG));
	}
	paused_on_image_done(a, m, 64 * PG, fd);
	close(ofd);
	return 0;
}

/* Two image pages whose hashes share the high half, all the index of
 * image pages keeps (found by trying counters: pages of 0xa5 starting with
 * 23,196 and 25,837). The second was never indexed ("the same content"),
 * and a guest's copy of it matched the first's entry, failed the compare
 * on every pass and never merged. */
TEST_IMPL(scan_image_index_whole_hash)
{
	unsigned char pg[2][PG];
	const uint64_t counter[2] = { 23196, 25837 };
	for (int k = 0; k < 2; k++) {
		memset(pg[k], 0xa5, PG);
		memcpy(pg[k], &counter[k], sizeof(counter[k]));
	}
	uint64_t h0 = md__page_hash(pg[0]), h1 = md__page_hash(pg[1]);
	ASSERT(h0 != h1 && h0 >> 32 == h1 >> 32);	/* else the pair is no longer one */
	char img[512];
	snprintf(img, sizeof(img), "%s/halves", test_dir());
	make_image(img, 16 * PG, 19);
	int fd = open(img, O_WRONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(pwrite(fd, pg[0], PG, 0), PG);
	ASSERT_EQ(pwrite(fd, pg[1], PG, PG), PG);
	close(fd);
	fd = open(img, O_RDONLY);	/* not open for writing: leased */
	ASSERT(fd >= 0);
	md_agent *a;
	const size_t n = 64;
	char *m = unique_ram(&a, n);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	md_stats s;
	for (int i = 0; i < 100 && (md_agent_stats(a, &s), s.image_pages_indexed < 16); i++)
		usleep(20000);
	ASSERT_EQ(s.image_pages_indexed, 16);
	memcpy(m + 40 * PG, pg[1], PG);	/* a guest's copy of the second */
	for (int i = 0; i < 400 && (md_agent_stats(a, &s), s.merged_image < 1); i++)
		usleep(20000);
	ASSERT_EQ(s.merged_image, 1);
	ASSERT_EQ(s.abandoned, 0);
	ASSERT(memcmp(m + 40 * PG, pg[1], PG) == 0);
	md_agent_free(a);
	munmap(m, n * PG);
	close(fd);
	return 0;
}

/* How many filesystem verdicts the agent keeps for the file at path. */
static size_t probed_entries(md_agent *a, const char *path)
{
	struct stat st;
	size_t n = 0;
	ASSERT(stat(path, &st) == 0);
	pthread_mutex_lock(&a->probe_lock);
	for (size_t i = 0; i < a->nprobed; i++)
		n += a->probed[i].dev == st.st_dev && a->probed[i].ino == st.st_ino;
	pthread_mutex_unlock(&a->probe_lock);
	return n;
}

/* What probing an image's filesystem found is kept while the agent's
 * descriptor holds the file open, and forgotten when it lets the image go:
 * the filesystem may then go, and its device number come back as another's
 * (one whose leases do not see every writer), with a file of that inode
 * number. Leased again, it is probed and kept again. */
TEST_IMPL(image_probe_forgotten_when_let_go)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/probed", test_dir());
	make_image(img, 16 * PG, 23);
	md_agent *a;
	md_agent_options o = { .run_dir = "", .image_idle_s = 1 };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, m, 16 * PG, 0), 0);
	int fd = open(img, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	md_stats s;
	md_agent_stats(a, &s);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	ASSERT_EQ(probed_entries(a, img), 1);
	/* Nothing maps it any more: let go within a few seconds. */
	ASSERT_EQ(md_agent_discard(a, m, 16 * PG), 0);
	int gone = 0;
	for (int i = 0; i < 100 && !gone; i++) {
		usleep(50000);
		md__agent_enter(a);
		gone = a->nimages == 1 && a->images[0].fd < 0;
		md__agent_leave(a);
	}
	ASSERT(gone);
	ASSERT_EQ(probed_entries(a, img), 0);
	/* Eight images more meanwhile: the cache keeps room for the first's
	 * verdict all the same (it filled up: every read of it probed). */
	for (int k = 0; k < 8; k++) {
		char other[540];
		snprintf(other, sizeof(other), "%s.%d", img, k);
		make_image(other, 16 * PG, 24 + (unsigned)k);
		int ofd = open(other, O_RDONLY);
		ASSERT(ofd >= 0);
		ASSERT_EQ(md_agent_pread(a, ofd, m, 16 * PG, 0), 16 * PG);
		close(ofd);
	}
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	md_agent_stats(a, &s);
	ASSERT_EQ(s.pages_shared_at_read, 16 * 10);	/* leased and shared again */
	ASSERT_EQ(probed_entries(a, img), 1);
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(fd);
	return 0;
}

TEST_IMPL(scan_image_copied_read_merges)
{
	/* A read too small to map is copied; when its image is leased (other
	 * reads of it were mapped), its whole pages are indexed as the image's
	 * all the same, and the scanner maps them from the image: a guest that
	 * copied what another mapped would otherwise keep its copy (the pool
	 * never sees a page mapped from an image). Content stays the file's. */
	char img[512], want[32];
	struct proc a;
	int fd = start_on_2mib_image(&a, img, "copied", 16, 600);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 0", fd, 1u << 20), 1 << 20);	/* leased, mapped */
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	uint64_t small0 = s.read_small_pages;
	ASSERT_EQ(proc_num(&a, "read %d %u %u %u 0", fd, 1u << 20, 4 * PG, 400 * PG), 4 * PG);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.read_small_pages, small0 + 4);	/* copied, not mapped */
	for (int i = 0; i < 200 && s.merged_image < 4; i++) {
		usleep(50000);
		ASSERT_EQ(proc_stats(&a, &s), 0);
	}
	ASSERT_EQ(s.merged_image, 4);
	snprintf(want, sizeof(want), "%016llx", (unsigned long long)fnv_file(img, 1 << 20, 4 * PG));
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 400 * PG, 4 * PG), want) == 0);
	for (unsigned i = 0; i < 4; i++)
		ASSERT(proc_page(&a, (400 + i) * PG).file);
	proc_stop(&a);
	return 0;
}

/* A page the VMM discarded before the index was fed, of a copied read or
 * of a mapped one, is left out: hashing it where the read put it would
 * fill its hole in. */
TEST_IMPL(scan_image_discarded_pages_left_out)
{
	char img[512];
	md_agent *a;
	int fd;
	char *m = paused_on_image(&a, 128 * PG, img, "copied-discarded", 32, 81, &fd);
	static const char zero[PG];
	int w = open(img, O_WRONLY);	/* page 7 zeroes: left out, as zero pages are */
	ASSERT(w >= 0 && pwrite(w, zero, PG, 7 * PG) == PG);
	close(w);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);	/* leased, mapped */
	ASSERT_EQ(md_agent_pread(a, fd, m + 100 * PG, 4 * PG, 16 * PG), 4 * PG);	/* copied */
	/* Discarded: a page of each, the mapped one then no longer the
	 * image's (its owner record cleared). */
	for (int k = 0; k < 2; k++) {
		char *p = m + (k ? 101 : 5) * PG;
		ASSERT_EQ(md_agent_madvise_discard(a, p, PG, MADV_DONTNEED), 0);
		ASSERT(!(self_pagemap(p) & (1ull << 63)));
	}
	feed_image_index(a);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.image_pages_indexed, 14 + 3);
	ASSERT(!(self_pagemap(m + 5 * PG) & (1ull << 63)));	/* still holes */
	ASSERT(!(self_pagemap(m + 101 * PG) & (1ull << 63)));
	uint64_t cookie;
	ASSERT(image_entry(a, m + 102 * PG, &cookie));
	paused_on_image_done(a, m, 128 * PG, fd);
	return 0;
}

/* Reads come while the scanner is paused: the queue of runs to index
 * takes 4,096, and leaves those after out (the guest's copies of them
 * merge through the pool), the runs queued kept whole. */
TEST_IMPL(scan_image_queue_full_leaves_later_reads_out)
{
	char img[512];
	md_agent *a;
	int fd;
	const size_t ram = 4200, pages = 16 + 4096;
	char *m = paused_on_image(&a, ram * PG, img, "queue-full", pages, 82, &fd);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);	/* leased, mapped */
	for (size_t i = 16; i < pages; i++)	/* copied, one run each */
		ASSERT_EQ(md_agent_pread(a, fd, m + i * PG, PG, (off_t)(i * PG)), PG);
	md_stats s;
	for (int i = 0; i < 100; i++)
		feed_image_index(a);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.image_pages_indexed, pages - 1);
	uint64_t cookie;
	ASSERT(image_entry(a, m, &cookie) && image_entry(a, m + 15 * PG, &cookie));
	ASSERT(image_entry(a, m + (pages - 2) * PG, &cookie));
	ASSERT(!image_entry(a, m + (pages - 1) * PG, &cookie));
	paused_on_image_done(a, m, ram * PG, fd);
	return 0;
}

/* The counters' walk reads /proc/self/pagemap through a descriptor it
 * keeps: the VMM closing that number and putting a file of its own there
 * (dup2) had the file's bytes taken for page-table entries (here: words
 * that read as written pages), and pages_shared read 0. Checked before
 * each read now, and opened again, as the engine's own. */
TEST_IMPL(agent_counts_with_pagemap_replaced)
{
	char img[600], fake[600];
	snprintf(img, sizeof(img), "%s/img", test_dir());
	snprintf(fake, sizeof(fake), "%s/fake", test_dir());
	make_image(img, 64 * PG, 3);
	int ff = open(fake, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ASSERT(ff >= 0);
	static uint64_t words[8 * 4096];
	for (size_t i = 0; i < sizeof(words) / sizeof(*words); i++)
		words[i] = 1ull << 63;	/* present, anonymous and private: written */
	ASSERT_EQ(write(ff, words, sizeof(words)), (ssize_t)sizeof(words));
	md_agent_options o = { .run_dir = "" };
	md_agent *a;
	md_stats st;
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(m != MAP_FAILED && fd >= 0);
	ASSERT_EQ(md_agent_register(a, m, 64 * PG, 0), 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 64 * PG, 0), (ssize_t)(64 * PG));
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	ASSERT_EQ(st.pages_shared, 64);
	char self[64], link[256];
	snprintf(self, sizeof(self), "/proc/%d/pagemap", (int)getpid());
	int replaced = 0;
	for (int k = 3; k < 1024; k++) {
		char p[64];
		snprintf(p, sizeof(p), "/proc/self/fd/%d", k);
		ssize_t n = readlink(p, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = '\0';
		if (strcmp(link, self) == 0 && dup2(ff, k) == k)
			replaced++;
	}
	ASSERT(replaced >= 1);
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	ASSERT_EQ(st.pages_shared, 64);
	ASSERT_EQ(st.breaks, 0);
	md_agent_free(a);
	munmap(m, 64 * PG);
	close(fd);
	close(ff);
	return 0;
}

/* Under the READ_IMPLIES_EXEC personality (setarch -X, old 32-bit
 * programs) every readable mapping is executable, guest RAM included, and
 * so are the mappings the agent puts there: such RAM is not refused as
 * executable memory is (a review's find). */
TEST_IMPL(register_under_read_implies_exec)
{
	ASSERT(personality(READ_IMPLIES_EXEC) != -1);
	char img[512];
	snprintf(img, sizeof(img), "%s/rie", test_dir());
	make_image(img, 16 * PG, 31);
	md_agent *a;
	md_agent_options o = { .run_dir = "", .domain = "private" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, m, 16 * PG, 0), 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * PG, 0), 16 * PG);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.registered_bytes, 16 * PG);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	md_agent_free(a);
	munmap(m, 16 * PG);
	close(fd);
	return 0;
}

/* Unseen I/O begins, memory enough, and the image pages' copies fail
 * (memory gone since the look, an I/O error reading the image): the pages
 * left shared were neither counted nor said, the failure thrown away. Now
 * in merge_fallbacks, as those a short memory leaves, and said. */
TEST_IMPL(scan_io_unseen_failed_image_copies_counted)
{
	md_agent *a;
	const size_t n = 64, ip = 16;
	char *m = pairs_merged_here(&a, NULL, n);
	char img[512];
	snprintf(img, sizeof(img), "%s/first.img", test_dir());
	make_image(img, ip * PG, 31);
	char *r = mmap(NULL, ip * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(r != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, r, ip * PG, 0), 0);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(md_agent_pread(a, fd, r, ip * PG, 0), (ssize_t)(ip * PG));
	md_stats s0, s;
	ASSERT_EQ(md_agent_stats(a, &s0), 0);
	md__privatize_fail = -ENOMEM;
	md_agent_io_unseen(a, "test");
	md__privatize_fail = 0;
	ASSERT_EQ(pages_anon_present(r, ip), 0);	/* left shared */
	ASSERT(pairs_private(m, n));	/* the pool's copies made */
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT(s.merge_fallbacks >= s0.merge_fallbacks + ip);
	md_agent_free(a);
	munmap(m, n * PG);
	munmap(r, ip * PG);
	close(fd);
	return 0;
}

/* general_profit's pages: what merging saves is every page mapped from
 * the pool and every zero page dropped, less the pool's own pages (KSM's
 * general_profit: pages_sharing... less what it costs). What is left once
 * those are taken out is the metadata: more than nothing, and far less
 * than the pages (scan_profit_counts_metadata: some bytes a page). */
static int merged_512_zero_512(const md_stats *s) { return s->merged >= 512 && s->zero_pages >= 512; }
TEST_IMPL(scan_profit_counts_pages)
{
	const char *env[] = { fast_scan[0], fast_scan[1], fast_scan[2], "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 4096");
	ASSERT(strcmp(proc_cmd(&a, "fill 0 512 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 512 1", 512 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "zero %u 512", 1024 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "fill %u 2560 2", 1536 * PG), "ok") == 0);	/* unique */
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_512_zero_512), 0);
	passes_want = s.full_scans + 2;	/* settled: the same report's counts */
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, passes_done), 0);
	long long meta = ((long long)s.pages_sharing + (long long)s.zero_pages - (long long)s.pool_pages) * PG -
			 s.general_profit;
	fprintf(stderr, "  sharing %llu, zero %llu, pool %llu, profit %lld: metadata %lld bytes\n",
		(unsigned long long)s.pages_sharing, (unsigned long long)s.zero_pages,
		(unsigned long long)s.pool_pages, (long long)s.general_profit, meta);
	ASSERT_EQ(s.pages_sharing, 1024);
	ASSERT_EQ(s.pool_pages, 512);
	ASSERT_EQ(s.zero_pages, 512);
	ASSERT(meta > 0);
	ASSERT(meta < 256 * PG);	/* 1 MiB: a quarter of the pages saved */
	proc_stop(&a);
	return 0;
}

/* md_agent_forget short of memory: the engine gives the region up whole,
 * the rest made private copies in the pool's mappings, which the agent now
 * counts among the copies a discard must empty (as after md__agent_unmap):
 * a discard there read the pool page again, not zeroes (review). A second
 * region of the same content keeps the slots referenced. */
TEST_IMPL(scan_forget_short_of_memory_discard_reads_zeroes)
{
	md_agent *a;
	const size_t n = 64;
	char *m = two_regions_merged(&a, n);
	md__engine_fail_slices = 1;
	ASSERT_EQ(md_agent_forget(a, m + 10 * PG, PG), 0);
	md__engine_fail_slices = 0;
	ASSERT_EQ(munmap(m + 10 * PG, PG), 0);
	ASSERT_EQ(m[20 * PG + 100], (char)(20 % 8) + 1);
	ASSERT_EQ(md_agent_discard(a, m + 20 * PG, PG), 0);
	ASSERT_EQ(madvise(m + 20 * PG, PG, MADV_DONTNEED), 0);
	for (size_t i = 0; i < PG; i++)
		ASSERT_EQ(m[20 * PG + i], 0);
	md_agent_free(a);
	return 0;
}

/* Merged pages the guest wrote since their merge (not reaped yet) are
 * private copies already: an unmerge needs no memory for them, as for
 * image pages (scan_unmerge_counts_only_unwritten_pages). It was refused,
 * "16 MiB to copy", when memory was short, the time it is asked for. */
TEST_IMPL(scan_unmerge_counts_only_unwritten_pool_pages)
{
	md_agent *a;
	const size_t n = 4096;	/* 16 MiB merged */
	md_stats s0;
	char *m = pairs_all_merged_here(&a, n, &s0);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	for (size_t i = 0; i < n; i++)
		m[i * PG] ^= 1;	/* every merged page written: private copies */
	fake_available(65536 + 4096);	/* 4 MiB past the 64 MiB margin */
	int err = md_agent_unmerge(a);
	md__memroom_proc = "/proc";
	fprintf(stderr, "unmerge with every page written: %d\n", err);
	ASSERT_EQ(err, 0);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* An unmerge's copies are no unique pages: pages that had aged (unique
 * for passes) before a partner came and they merged counted in
 * pages_unshared after the unmerge; they are young again, as a reap makes
 * the written ones. */
TEST_IMPL(scan_unmerged_pages_not_counted_unshared)
{
	md_agent *a;
	const size_t n = 64;
	char *m = inproc_agent(&a, 1000, 2 * n * PG);
	for (size_t i = 0; i < 2 * n * PG; i++)
		m[i] = (char)((i / PG) * 7 + i % 251);	/* unique */
	ASSERT_EQ(md_agent_register(a, m, 2 * n * PG, 0), 0);
	md_stats st = { 0 };
	for (int i = 0; i < 250 && st.pages_unshared != 2 * n; i++) {
		usleep(20000);
		md_agent_stats(a, &st);
	}
	ASSERT_EQ(st.pages_unshared, 2 * n);
	memcpy(m + n * PG, m, n * PG);	/* the second half as the first: pairs */
	for (int i = 0; i < 500 && st.pages_sharing != 2 * n; i++) {
		usleep(20000);
		md_agent_stats(a, &st);
	}
	ASSERT_EQ(st.pages_sharing, 2 * n);
	fprintf(stderr, "merged: sharing %llu unshared %llu\n", (unsigned long long)st.pages_sharing,
		(unsigned long long)st.pages_unshared);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	ASSERT_EQ(md_agent_unmerge(a), 0);
	ASSERT_EQ(md_agent_stats(a, &st), 0);
	fprintf(stderr, "unmerged: sharing %llu unshared %llu\n", (unsigned long long)st.pages_sharing,
		(unsigned long long)st.pages_unshared);
	ASSERT_EQ(st.pages_sharing, 0);
	ASSERT_EQ(st.pages_unshared, 0);
	md_agent_free(a);
	munmap(m, 2 * n * PG);
	return 0;
}

/* An unmerge with nothing to copy needs no memory: it was refused
 * (-ENOMEM, "0 MiB to copy") whenever less than the 64 MiB margin was
 * available, as in a VMM's cgroup near its limit, also a second unmerge
 * right after one that went through. */
TEST_IMPL(scan_unmerge_nothing_to_copy_not_refused)
{
	md_agent *a;
	const size_t n = 64;
	char *m = inproc_agent(&a, 1000, n * PG);
	unique_pages(a, m, n);
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	fake_available(16 * 1024);	/* 16 MiB available */
	int err = md_agent_unmerge(a);
	md__memroom_proc = "/proc";
	fprintf(stderr, "unmerge with no page merged, 16 MiB available: %d\n", err);
	ASSERT_EQ(err, 0);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* `memdedup unmerge` whose copies fail part of the way (memory gone since
 * the check): the CLI says so and that the agent stays paused, and
 * memdedupd records it unmerged. It was told a plain failure, read as a
 * refusal that changed nothing, and memdedupd counted the agent as
 * scanning (its share of the rate, its status, the admin's hold). */
TEST_IMPL(scan_unmerge_part_done_said_and_recorded)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 512;	/* two regions of 256 pages in pairs */
	td_start(&t, 4096);
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 10000, .sleep_ms = 1,
			       .domain = "held", .daemon_socket = t.sock };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = pairs_ram(n / 2), *m2 = pairs_ram(n / 2);
	ASSERT_EQ(md_agent_register(a, m, n / 2 * PG, 0), 0);
	ASSERT_EQ(md_agent_register(a, m2, n / 2 * PG, 0), 0);
	ASSERT(welcome_applied(&t));
	md_stats s0, s;
	for (int i = 0; i < 200 && md_agent_stats(a, &s0) == 0 && s0.pages_sharing < n; i++)
		usleep(10000);
	md__copy_fail = ENOMEM;
	md__copy_fail_after = 1;	/* the first run copied, the rest fail */
	char path[600];
	snprintf(path, sizeof(path), "%s/out", test_dir());
	int rc = td_sh("MEMDEDUP_SOCKET=%s %s/memdedup unmerge >%s 2>&1", t.sock, build_dir(), path);
	md__copy_fail = 0;
	const char *out = file_text(path);
	fprintf(stderr, "  exit %d: %s", rc, out);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	fprintf(stderr, "  pages_sharing %llu -> %llu, agent paused %d unmerged %d\n",
		(unsigned long long)s0.pages_sharing, (unsigned long long)s.pages_sharing, scanner_paused(a),
		__atomic_load_n(&a->unmerged, __ATOMIC_RELAXED));
	json_t *st = td_status(&t);
	json_t *me = td_find(json_object_get(st, "agents"), "pid", getpid());
	int daemon_paused = json_is_true(json_object_get(me, "paused"));
	int daemon_unmerged = json_is_true(json_object_get(me, "unmerged"));
	fprintf(stderr, "  memdedupd: paused %d unmerged %d\n", daemon_paused, daemon_unmerged);
	json_decref(st);
	ASSERT(s.pages_sharing > 0 && s.pages_sharing < s0.pages_sharing);	/* part done */
	ASSERT_EQ(scanner_paused(a), 1);	/* paused until resumed */
	/* As memdedupd's record: a WELCOME saying resumed ends it. */
	ASSERT_EQ(__atomic_load_n(&a->unmerged, __ATOMIC_RELAXED), 2);
	ASSERT_EQ(rc, 1);
	ASSERT(strstr(out, "copies failed part of the way"));
	ASSERT(strstr(out, "paused until resumed"));
	ASSERT(daemon_paused && daemon_unmerged);
	md_agent_free(a);
	td_stop(&t);
	munmap(m, n / 2 * PG);
	munmap(m2, n / 2 * PG);
	return 0;
}

/* The present bit of one of this process's pages, in pagemap. */
static int page_present(const void *p)
{
	uint64_t pm = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT(pread(fd, &pm, 8, (off_t)((uintptr_t)p / PG * 8)) == 8);
	close(fd);
	return (int)(pm >> 63);
}

/* Dropped zero pages the guest took back (read back in on a kernel
 * without a zero page, or written with zeroes), which a reap counted as
 * held (undropped), are dropped again by the scanner (zero_again): the
 * published zero_pages (and general_profit) must count them again at the
 * agent's next second, as a first drop does. */
TEST_IMPL(scan_zero_again_published)
{
	md_agent *a;
	const size_t n = 64;
	char *m = inproc_agent(&a, 1000, n * PG);
	memset(m, 0, n * PG);
	ASSERT_EQ(md_agent_register(a, m, n * PG, 0), 0);
	md_stats st = { 0 };
	for (int i = 0; i < 250 && st.zero_pages != n; i++) {
		usleep(20000);
		md_agent_stats(a, &st);
	}
	ASSERT_EQ(st.zero_pages, n);
	sleep(4);	/* the agent's thread reaped since the drops (every 3 s) */
	ASSERT_EQ(md_agent_pause(a, 1), 0);
	memset(m, 0, n * PG);	/* taken back: pages of their own */
	md_agent_stats(a, &st);	/* a reap finds them held */
	ASSERT_EQ(st.zero_pages, 0);
	ASSERT_EQ(md_agent_pause(a, 0), 0);
	size_t left = n;
	for (int t = 0; t < 250 && left; t++) {
		usleep(20000);
		left = 0;
		for (size_t i = 0; i < n; i++)
			left += page_present(m + i * PG);
	}
	ASSERT_EQ(left, 0);	/* all dropped again */
	uint64_t v = 0;
	int waited = 0;
	for (; waited < 100; waited++) {	/* 10 s */
		v = __atomic_load_n(&a->ctr[MD_CTR_ZERO_PAGES], __ATOMIC_RELAXED);
		if (v == n)
			break;
		usleep(100000);
	}
	fprintf(stderr, "  published zero_pages %llu after %.1f s (dropped: %zu)\n",
		(unsigned long long)v, waited / 10.0, n);
	ASSERT_EQ(v, n);
	md_agent_free(a);
	munmap(m, n * PG);
	return 0;
}

/* A pause by pid kept over a new memdedupd outlives the agent's next
 * connection to that new daemon too (the VMM replaced the pool's
 * descriptor): the same daemon as the last connection, but not the one
 * that paused it, it never heard of the pause, and its WELCOME resumed the
 * agent (review). Another VMM of the domain keeps its pool, and so its
 * generation. */
TEST_IMPL(scan_kept_pause_outlives_reconnect_to_new_daemon)
{
	struct tdaemon t;
	md_agent *a;
	const size_t n = 64;
	char *m = merged_pairs(&t, &a, n);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup pause --pid %d >/dev/null", t.sock, build_dir(),
			(int)getpid()), 0);
	ASSERT_EQ(scanner_paused(a), 1);
	struct md__remote *rm = a->engine->remote;
	uint64_t gen = rm->generation;
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	for (int i = 0; i < 500 && (!md__remote_connected(rm) || rm->generation == gen); i++)
		usleep(10000);
	ASSERT(rm->generation != gen);
	ASSERT(welcome_applied(&t));
	usleep(300000);
	ASSERT_EQ(scanner_paused(a), 1);	/* kept over the new daemon: as designed */
	/* Another VMM of the domain (a second agent) keeps B's pool. */
	int ready[2];
	ASSERT(pipe(ready) == 0);
	pid_t other = fork();
	ASSERT(other >= 0);
	if (other == 0) {
		struct md__client *c;
		struct md__msg_welcome w;
		int pfd = -1;
		if (md__client_open(&c, t.sock, "held", MD_HELLO_CONTROL_PID, &w, &pfd) != 0)
			_exit(3);
		char x = 1;
		if (write(ready[1], &x, 1) != 1)
			_exit(4);
		for (;;)
			pause();
	}
	char x;
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	/* The same daemon again. */
	gen = rm->generation;
	uint64_t connects = __atomic_load_n(&rm->connects, __ATOMIC_RELAXED);
	int victim = open("/dev/null", O_RDONLY);
	ASSERT(victim >= 0);
	ASSERT(dup2(victim, rm->ro_fd) == rm->ro_fd);
	ASSERT_EQ(md__remote_fd_ok(rm), 0);	/* as the scanner's next map would find */
	for (int i = 0; i < 500 && (!md__remote_connected(rm) ||
				    __atomic_load_n(&rm->connects, __ATOMIC_RELAXED) == connects); i++)
		usleep(10000);
	ASSERT(__atomic_load_n(&rm->connects, __ATOMIC_RELAXED) != connects);
	ASSERT_EQ(rm->generation, gen);	/* the same daemon */
	usleep(500000);	/* its WELCOME applied */
	fprintf(stderr, "scanner paused after reconnect to the same new daemon: %d\n", scanner_paused(a));
	ASSERT_EQ(scanner_paused(a), 1);	/* nobody resumed it */
	kill(other, SIGKILL);
	waitpid(other, NULL, 0);
	md_agent_free(a);
	td_stop(&t);
	close(victim);
	munmap(m, n * PG);
	return 0;
}
