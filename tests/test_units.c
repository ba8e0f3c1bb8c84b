/* test_units.c - the pure logic: read planning, the region table, the
 * statistics file parser, the protocol's shared rules, and the API's
 * argument checks. */
#include <errno.h>
#include <linux/bsg.h>
#include <scsi/sg.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/vfio.h>
#include <linux/vhost.h>
#include <linux/filter.h>
#include <linux/mempolicy.h>
#include <linux/seccomp.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_internal.h"
#include "cgroup.h"
#include "checksum.h"
#include "daemon.h"
#include "index.h"
#include "inflight.h"
#include "log.h"
#include "policies.h"
#include "printable.h"
#include "proc.h"
#include "protocol.h"
#include "runner.h"
#include "stats_file.h"
#include "sys.h"

/* A line the log cannot take (a full disk, a full FIFO) leaves errno as
 * it was: the agent logs inside the VMM's calls, which return with it. */
TEST_IMPL(log_keeps_errno)
{
	ASSERT_EQ(md__log_open("/dev/full"), 0);
	errno = 777;
	md__log("a line /dev/full refuses");
	ASSERT_EQ(errno, 777);
	md__log_once(255, "and one said once");
	ASSERT_EQ(errno, 777);
	return 0;
}

/* A log path of "-" is stderr (log.h), not a file named "-" made in the
 * VMM's working directory. */
TEST_IMPL(log_dash_is_stderr)
{
	ASSERT_EQ(chdir(test_dir()), 0);
	ASSERT_EQ(md__log_open("-"), 0);
	md__log("a line for stderr");
	ASSERT(access("-", F_OK) != 0);
	ASSERT_EQ(md__log_open(""), 0);	/* MEMDEDUP_LOG= (empty): stderr too */
	return 0;
}

/* md__log_once says a key's line once, and keys 64 apart are keys of
 * their own. */
TEST_IMPL(log_once_said_once)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/log", test_dir());
	ASSERT_EQ(md__log_open(path), 0);
	md__log_once(100, "key 100 first");
	md__log_once(100, "key 100 again");
	md__log_once(164, "key 164 first");
	const char *text = file_text(path);
	ASSERT(strstr(text, "key 100 first\n"));
	ASSERT(!strstr(text, "key 100 again"));
	ASSERT(strstr(text, "key 164 first\n"));
	return 0;
}

/* The log is appended to (a file of earlier runs, or of another process
 * of the VMM's, is kept), a line at a time: one longer than the agent's
 * buffer is cut, still a line of its own, with no NUL in it; shorter ones
 * (the longest that fits) whole. */
TEST_IMPL(log_appends_whole_lines)
{
	char path[512], line[1024], text[4096], head[64];
	snprintf(path, sizeof(path), "%s/log", test_dir());
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ASSERT(fd >= 0 && write(fd, "an earlier line\n", 16) == 16 && close(fd) == 0);
	ASSERT_EQ(md__log_open(path), 0);
	int h = snprintf(head, sizeof(head), "memdedup[%d]: ", (int)getpid());
	/* Lines of 'x': too long, then around the longest that fits (the
	 * 511 and 510 bytes a 512-byte buffer takes, its NUL and newline
	 * aside). */
	const int len[] = { 1023, 511 - h, 510 - h, 509 - h };
	memset(line, 'x', sizeof(line) - 1);
	for (int i = 0; i < 4; i++)
		md__log("%.*s", len[i], line);
	md__log("a short one");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ssize_t n = read(fd, text, sizeof(text) - 1);
	close(fd);
	ASSERT(n > 16 && !memchr(text, '\0', (size_t)n));
	text[n] = '\0';
	ASSERT(strncmp(text, "an earlier line\n", 16) == 0);
	char *at = text + 16;
	int cut = 0;
	for (int i = 0; i < 4; i++) {
		char *end = strchr(at, '\n');
		ASSERT(end && strncmp(at, head, (size_t)h) == 0);
		int xs = (int)(end - at) - h;
		ASSERT_EQ(strspn(at + h, "x"), (size_t)xs);
		cut = i ? cut : xs;	/* the longest, cut */
		ASSERT(cut > 400 && xs == (len[i] < cut ? len[i] : cut));
		at = end + 1;
	}
	snprintf(line, sizeof(line), "%sa short one\n", head);
	ASSERT_EQ(strcmp(at, line), 0);
	return 0;
}

/* The kernel's query of mappings (PROCMAP_QUERY) says ENOENT for none
 * from an address on: asked inside the VMM's madvise (is the range all
 * anonymous?), it left errno so after the call succeeded. It showed under
 * AddressSanitizer, whose mappings put some checks past the last one. */
TEST_IMPL(mapping_query_keeps_errno)
{
	const uintptr_t top = ((uintptr_t)1 << 47) - 2 * 4096;	/* past the stack */
	errno = 777;
	int r = md__range_no_file_vmas(top, top + 4096);
	printf("  no file mappings at %#lx: %d\n", (unsigned long)top, r);
	ASSERT(r == 1 || r == -ENOTTY);	/* a kernel before 6.11 has no query */
	ASSERT_EQ(errno, 777);
	errno = 777;
	ASSERT(md__range_shared(top, 4096) >= 0);
	ASSERT_EQ(errno, 777);
	return 0;
}

TEST_IMPL(plan_aligned)
{
	struct md__read_plan p;
	md__plan_read(0x10000, 65536, 8192, 1 << 20, &p);
	ASSERT_EQ(p.fallback, -1);
	ASSERT_EQ(p.total, 65536);
	ASSERT_EQ(p.head, 0);
	ASSERT_EQ(p.map_len, 65536);
	ASSERT_EQ(p.tail, 0);
	/* Congruent but not aligned: whole pages inside, the rest copied. */
	md__plan_read(0x10000 + 100, 3 * 4096, 100, 1 << 20, &p);
	ASSERT_EQ(p.fallback, -1);
	ASSERT_EQ(p.head, 4096 - 100);
	ASSERT_EQ(p.map_len, 2 * 4096);
	ASSERT_EQ(p.tail, 100);
	ASSERT_EQ(p.head + p.map_len + p.tail, p.total);
	return 0;
}

TEST_IMPL(plan_unaligned)
{
	struct md__read_plan p;
	md__plan_read(0x10000 + 512, 65536, 0, 1 << 20, &p);
	ASSERT_EQ(p.fallback, MD_FB_UNALIGNED);
	ASSERT_EQ(p.map_len, 0);
	return 0;
}

TEST_IMPL(plan_eof)
{
	struct md__read_plan p;
	/* The file ends 1000 bytes into the third page: two pages mapped, the
	 * rest copied, and the read returns what pread would. */
	md__plan_read(0x10000, 65536, 0, 2 * 4096 + 1000, &p);
	ASSERT_EQ(p.fallback, -1);
	ASSERT_EQ(p.total, 2 * 4096 + 1000);
	ASSERT_EQ(p.map_len, 2 * 4096);
	ASSERT_EQ(p.tail, 1000);
	md__plan_read(0x10000, 65536, 1 << 20, 1 << 20, &p);
	ASSERT_EQ(p.total, 0);
	ASSERT_EQ(p.map_len, 0);
	ASSERT(p.fallback == MD_FB_PARTIAL);
	return 0;
}

TEST_IMPL(plan_partial)
{
	struct md__read_plan p;
	md__plan_read(0x10000 + 8, 4096, 8, 1 << 20, &p);
	ASSERT_EQ(p.fallback, MD_FB_PARTIAL);
	md__plan_read(0x10000, 4095, 0, 1 << 20, &p);
	ASSERT_EQ(p.fallback, MD_FB_PARTIAL);
	return 0;
}

static void agent_init(struct md_agent *a)
{
	memset(a, 0, sizeof(*a));
	a->ctr = a->local_ctr;
}

/* Whatever was added is inside some range; touching ranges join; past
 * MD_RANGESET_MAX the nearest range grows. */
static int covered(const struct md__rangeset *s, uintptr_t a, uintptr_t b)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->start[i] <= a && b <= s->end[i])
			return 1;
	return 0;
}

TEST_IMPL(rangeset_covers)
{
	struct md__rangeset s = { 0 };
	md__rangeset_add(&s, 0x10000, 0x20000);
	md__rangeset_add(&s, 0x20000, 0x30000);	/* touches: joins */
	ASSERT_EQ(s.n, 1);
	ASSERT(s.start[0] == 0x10000 && s.end[0] == 0x30000);
	md__rangeset_add(&s, 0x18000, 0x19000);	/* inside: nothing new */
	ASSERT_EQ(s.n, 1);
	uintptr_t added[3 * MD_RANGESET_MAX][2];
	size_t n = 0;
	for (uintptr_t i = 0; i < 3 * MD_RANGESET_MAX; i++) {
		/* Far apart, in a scattered order. */
		uintptr_t a = 0x100000000ull + ((i * 37) % (3 * MD_RANGESET_MAX)) * 0x100000;
		md__rangeset_add(&s, a, a + 0x3000);
		added[n][0] = a;
		added[n++][1] = a + 0x3000;
		ASSERT(s.n <= MD_RANGESET_MAX);
	}
	ASSERT_EQ(s.n, MD_RANGESET_MAX);
	ASSERT(covered(&s, 0x10000, 0x30000));
	for (size_t i = 0; i < n; i++)
		ASSERT(covered(&s, added[i][0], added[i][1]));

	/* Full, the closest two are joined, not the newest and its nearest:
	 * pages forgotten here and there in one block of guest RAM, then
	 * one in a block far from it, leave the memory between uncovered
	 * (an allocator's there went through the agent's lock). */
	struct md__rangeset f = { 0 };
	const uintptr_t block = 0x7f0000000000ull, other = block + 0x40000000ull;
	for (uintptr_t i = 0; i < MD_RANGESET_MAX + 8; i++)
		md__rangeset_add(&f, block + i * 0x4000, block + i * 0x4000 + 0x1000);
	md__rangeset_add(&f, other, other + 0x1000);
	for (uintptr_t i = 0; i < MD_RANGESET_MAX + 8; i++)
		ASSERT(covered(&f, block + i * 0x4000, block + i * 0x4000 + 0x1000));
	ASSERT(covered(&f, other, other + 0x1000));
	ASSERT(!md__rangeset_overlaps(&f, block + 0x100000, other));

	/* Distances run from a range's end, however long it is: a long range
	 * and one just past its end are the closest two, not two small ones
	 * farther apart (measured from its start, the long one looked far). */
	const uintptr_t big = 0x1000000, small = 0x10000000;
	for (int before = 0; before < 2; before++) {	/* the near one past its end, then before its start */
		struct md__rangeset g = { 0 };
		uintptr_t near = before ? big - 0x11000 : big + 0x110000;
		md__rangeset_add(&g, big, big + 0x100000);
		md__rangeset_add(&g, near, near + 0x1000);
		for (uintptr_t k = 0; k + 2 < MD_RANGESET_MAX; k++)
			md__rangeset_add(&g, small + k * 0x20000, small + k * 0x20000 + 0x1000);
		ASSERT_EQ(g.n, MD_RANGESET_MAX);
		md__rangeset_add(&g, 0x40000000, 0x40001000);
		ASSERT(covered(&g, big, big + 0x100000) && covered(&g, near, near + 0x1000));
		ASSERT(covered(&g, 0x40000000, 0x40001000));
		for (uintptr_t k = 0; k + 2 < MD_RANGESET_MAX; k++) {
			ASSERT(covered(&g, small + k * 0x20000, small + k * 0x20000 + 0x1000));
			ASSERT(!md__rangeset_overlaps(&g, small + k * 0x20000 + 0x1000, small + (k + 1) * 0x20000));
		}
	}
	return 0;
}

/* 1 if the page at p is in the published set of a (ours.c). */
static int ours_has(md_agent *a, uintptr_t p)
{
	unsigned token;
	if (!md__ours_begin(&a->ours, p, p + 4096, &token))
		return 1;
	md__ours_end(&a->ours, token);
	return 0;
}

/* The published set of ranges none of the agent's calls may skip its lock
 * for: every range grown is covered, sorted and disjoint, exactly while
 * they fit, more (never less) once they do not; a refresh covers what
 * the records cover. */
TEST_IMPL(ours_set_covers)
{
	md_agent *a = calloc(1, sizeof(*a));
	ASSERT(a);
	static uintptr_t lo[1000], hi[1000];
	unsigned seed = 7;
	for (int i = 0; i < 1000; i++) {
		seed = seed * 1103515245u + 12345u;
		lo[i] = 0x10000000ul + (uintptr_t)(seed >> 8 & 0xffff) * 4096 * 4;
		hi[i] = lo[i] + 4096 * (1 + (seed & 3));
		md__ours_grow(a, lo[i], hi[i]);
		ASSERT(a->ours.n <= MD_OURS_MAX);
		for (unsigned k = 1; k < a->ours.n; k++)
			ASSERT(a->ours.end[k - 1] < a->ours.start[k]);	/* sorted, apart */
		if (i % 97 == 0 || i == 999)
			for (int j = 0; j <= i; j++)
				for (uintptr_t p = lo[j]; p < hi[j]; p += 4096)
					ASSERT(ours_has(a, p));
		if (i == 100) {	/* not full yet: nothing else */
			ASSERT(a->ours.n < MD_OURS_MAX);
			ASSERT(!ours_has(a, 0x0ff00000ul));
			for (unsigned k = 0; k + 1 < a->ours.n; k++)
				ASSERT(!ours_has(a, a->ours.end[k]));	/* the gaps stay out */
		}
	}
	ASSERT_EQ(a->ours.n, MD_OURS_MAX);
	/* Full, a range far from the rest joins nothing far: the two closest
	 * ranges are joined instead, and the memory between stays out. */
	const uintptr_t far = 0x100000000ul;	/* the others lie below 0x50000000 */
	md__ours_grow(a, far, far + 4096);
	ASSERT(ours_has(a, far));
	ASSERT(!ours_has(a, 0x80000000ul) && !ours_has(a, far - 4096));
	for (int j = 0; j < 1000; j++)
		for (uintptr_t p = lo[j]; p < hi[j]; p += 4096)
			ASSERT(ours_has(a, p));
	/* A refresh: what the records cover, nothing of the grown ranges. */
	struct md__region r[2] = { { .start = 0x7000000, .end = 0x7004000 },
				   { .start = 0x7004000, .end = 0x7008000 } };
	a->regions = r;
	a->nregions = 2;
	md__rangeset_add(&a->forgotten, 0x9000000, 0x9001000);
	md__ours_refresh(a);
	ASSERT_EQ(a->ours.n, 2);	/* the regions touch: one range */
	ASSERT(ours_has(a, 0x7007000) && ours_has(a, 0x9000000));
	ASSERT(!ours_has(a, lo[0]) && !ours_has(a, 0x7008000));
	/* A range touching one from below joins it; one that reaches into
	 * the next takes in all of it; one that fills a gap joins both. */
	md__ours_grow(a, 0x6fff000, 0x7000000);
	ASSERT_EQ(a->ours.n, 2);
	md__ours_grow(a, 0xa000000, 0xa002000);
	md__ours_grow(a, 0x9001000, 0xa001000);
	ASSERT_EQ(a->ours.n, 2);
	ASSERT(ours_has(a, 0xa001000) && !ours_has(a, 0xa002000));
	md__ours_grow(a, 0x7008000, 0x9000000);
	ASSERT_EQ(a->ours.n, 1);
	ASSERT(ours_has(a, 0x6fff000) && ours_has(a, 0x8000000) && ours_has(a, 0xa001000));
	ASSERT(!ours_has(a, 0x6ffe000) && !ours_has(a, 0xa002000));
	free(a);
	return 0;
}

TEST_IMPL(rangeset_remove)
{
	struct md__rangeset s = { 0 };
	md__rangeset_add(&s, 0x10000, 0x40000);
	md__rangeset_add(&s, 0x100000, 0x110000);
	md__rangeset_remove(&s, 0x20000, 0x30000);	/* cut in two */
	ASSERT_EQ(s.n, 3);
	ASSERT(covered(&s, 0x10000, 0x20000) && covered(&s, 0x30000, 0x40000));
	ASSERT(!md__rangeset_overlaps(&s, 0x20000, 0x30000));
	md__rangeset_remove(&s, 0x38000, 0x108000);	/* trims two, drops none */
	ASSERT(!md__rangeset_overlaps(&s, 0x38000, 0x108000));
	ASSERT(covered(&s, 0x30000, 0x38000) && covered(&s, 0x108000, 0x110000));
	md__rangeset_remove(&s, 0, UINTPTR_MAX);	/* all gone */
	ASSERT_EQ(s.n, 0);
	/* Ranges that overlap (add grows the nearest): both are cut. */
	md__rangeset_add(&s, 0x0, 0x10000);
	md__rangeset_add(&s, 0x20000, 0x30000);
	md__rangeset_add(&s, 0x8000, 0x28000);
	md__rangeset_remove(&s, 0x21000, 0x24000);
	ASSERT(!md__rangeset_overlaps(&s, 0x21000, 0x24000));
	ASSERT(covered(&s, 0x0, 0x21000) && covered(&s, 0x24000, 0x30000));
	md__rangeset_remove(&s, 0, UINTPTR_MAX);
	/* Full: a cut in two keeps the range whole (it covers at least). */
	for (uintptr_t i = 0; i < MD_RANGESET_MAX; i++)
		md__rangeset_add(&s, 0x100000 * (i + 1), 0x100000 * (i + 1) + 0x10000);
	ASSERT_EQ(s.n, MD_RANGESET_MAX);
	md__rangeset_remove(&s, 0x104000, 0x108000);
	ASSERT_EQ(s.n, MD_RANGESET_MAX);
	ASSERT(covered(&s, 0x100000, 0x110000));
	return 0;
}

TEST_IMPL(regions_add_overlap)
{
	struct md_agent a;
	agent_init(&a);
	ASSERT_EQ(md__regions_add(&a, 0x10000, 0x20000, 0), 0);
	md__region_find(&a, 0x10000, 4096)->owner[3] = 7;
	/* Overlapping registration keeps the existing record and fills gaps. */
	ASSERT_EQ(md__regions_add(&a, 0x8000, 0x28000, MD_ADV_DONTFORK), 0);
	ASSERT_EQ(a.nregions, 3);
	ASSERT_EQ(a.local_ctr[MD_CTR_REGISTERED_BYTES], 0x20000);
	struct md__region *r = md__region_find(&a, 0x13000, 4096);
	ASSERT(r && r->start == 0x10000 && r->owner[3] == 7);
	ASSERT(r->advice & MD_ADV_DONTFORK);
	ASSERT(md__region_find(&a, 0x8000, 0x8000) != NULL);
	/* A range crossing two records is not in one region. */
	ASSERT(md__region_find(&a, 0xf000, 0x2000) == NULL);
	ASSERT(md__region_find(&a, 0x30000, 1) == NULL);
	md__regions_free(&a);
	return 0;
}

/* Whether a device transfer (SG_IO's buffers) touches guest RAM: a buffer
 * ending where a region starts, or starting where one ends, does not (it
 * stopped read sharing for good); one whose length runs past the end of
 * the address space does, from its start. With more regions than the set
 * of the agent's memory keeps apart, the gaps between them lie in it. */
TEST_IMPL(agent_ram_overlaps_edges)
{
	enum { N = 300 };
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, 2 * N * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	for (int i = 0; i < N; i++)
		ASSERT_EQ(md_agent_register(a, m + (2 * i + 1) * 4096, 4096, 0), 0);
	for (int i = 0; i < N; i++) {
		uintptr_t gap = (uintptr_t)m + 2 * i * 4096;
		ASSERT_EQ(md__agent_ram_overlaps(a, gap, 4096), 0);
		ASSERT_EQ(md__agent_ram_overlaps(a, gap + 4096 - 1, 2), 1);
		ASSERT_EQ(md__agent_ram_overlaps(a, gap + 4096, SIZE_MAX), 1);
	}
	md_agent_free(a);
	munmap(m, 2 * N * 4096);
	return 0;
}

TEST_IMPL(regions_remove_split)
{
	struct md_agent a;
	agent_init(&a);
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x200000, 0), 0);
	struct md__region *r = md__region_find(&a, 0x100000, 1);
	for (int i = 0; i < 256; i++)
		r->owner[i] = (uint32_t)i + 1;
	ASSERT_EQ(md__regions_remove(&a, 0x140000, 0x150000), 0);
	ASSERT_EQ(a.nregions, 2);
	ASSERT_EQ(a.local_ctr[MD_CTR_REGISTERED_BYTES], 0x100000 - 0x10000);
	r = md__region_find(&a, 0x100000, 1);
	ASSERT(r && r->end == 0x140000 && r->owner[0x3f] == 0x40);
	r = md__region_find(&a, 0x150000, 1);
	ASSERT(r && r->end == 0x200000 && r->owner[0] == 0x51);
	ASSERT(md__region_find(&a, 0x148000, 1) == NULL);
	ASSERT_EQ(md__regions_remove(&a, 0, 0x1000000), 0);
	ASSERT_EQ(a.nregions, 0);
	md__regions_free(&a);
	return 0;
}

/* A split takes the record spare the last change left: the one after it
 * needs no memory either (an unmap on a VMM thread short of memory). The
 * room for the next split is made when the last was done, not when it is
 * needed. */
TEST_IMPL(regions_split_room_made_ahead)
{
	struct md_agent a;
	agent_init(&a);
	for (uintptr_t at = 0x1000000; a.nregions + 1 < 16; at += 0x100000)
		ASSERT_EQ(md__regions_add(&a, at, at + 0x10000, 0), 0);
	ASSERT_EQ(a.regions_cap, 16);
	ASSERT_EQ(md__regions_remove(&a, 0x1004000, 0x1005000), 0);
	ASSERT_EQ(a.nregions, 16);
	md__regions_fail_reserve = 1;
	int err = md__regions_remove(&a, 0x1104000, 0x1105000);
	md__regions_fail_reserve = 0;
	ASSERT_EQ(err, 0);
	ASSERT_EQ(a.nregions, 17);
	ASSERT(md__region_find(&a, 0x1105000, 0xb000) != NULL);
	ASSERT(md__region_find(&a, 0x1104000, 1) == NULL);
	md__regions_free(&a);
	return 0;
}

/* The count of pages recorded as an image's (what bounds the reads shared
 * to what a lease break can make private in time) follows the records: a
 * page set again counts once, one cleared that was not set counts
 * nothing, and records removed take their pages along. Too high, reads
 * were copied for good; too low, more were shared than a break makes
 * private before the kernel lets the writer in. */
TEST_IMPL(owners_count_follows_records)
{
	struct md_agent a;
	agent_init(&a);
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x110000, 0), 0);
	ASSERT_EQ(md__regions_add(&a, 0x200000, 0x210000, 0), 0);
	struct md__region *r = md__region_find(&a, 0x100000, 1);
	md__owners_set(&a, r, 0x100000, 4, 3);
	md__owners_set(&a, r, 0x100000, 4, 5);
	ASSERT_EQ(a.owned, 4);
	md__owners_set(&a, r, 0x100000, 8, 0);
	ASSERT_EQ(a.owned, 0);
	md__owners_set(&a, r, 0x102000, 4, 3);
	r = md__region_find(&a, 0x200000, 1);
	md__owners_set(&a, r, 0x20f000, 1, 3);
	ASSERT_EQ(a.owned, 5);
	/* A removal over more than the records: each takes its own. */
	ASSERT_EQ(md__regions_remove(&a, 0x80000, 0x180000), 0);
	ASSERT_EQ(a.owned, 1);
	ASSERT_EQ(md__regions_remove(&a, 0x1f0000, 0x300000), 0);
	ASSERT_EQ(a.owned, 0);
	md__regions_free(&a);
	return 0;
}

/* An agent of this process (no daemon, no scanning), 32 pages of RAM
 * registered, and a 16-page image made as name (seed) open in *fd: the
 * RAM. */
static char *image_and_ram(md_agent **a, const char *name, unsigned seed, int *fd)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/%s", test_dir(), name);
	make_image(img, 16 * 4096, seed);
	*fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(*fd >= 0);
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	char *m = mmap(NULL, 32 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(*a, m, 32 * 4096, 0), 0);
	return m;
}

/* The count of pages mapped from images (what bounds the reads shared to
 * what a lease break can make private in time) counts a page read again
 * once: counted twice, it never came back down as pages were let go, and
 * reads were copied for good (no_lease). */
TEST_IMPL(image_pages_counted_once_when_read_again)
{
	md_agent *a;
	int fd;
	char *m = image_and_ram(&a, "again.img", 29, &fd);
	for (int k = 0; k < 3; k++)
		ASSERT_EQ(md_agent_pread(a, fd, m, 16 * 4096, 0), 16 * 4096);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 48);
	md__agent_enter(a);
	uint64_t owned = a->owned;
	md__agent_leave(a);
	ASSERT_EQ(owned, 16);
	ASSERT_EQ(md_agent_unmap(a, m, 16 * 4096), 0);
	md__agent_enter(a);
	owned = a->owned;
	md__agent_leave(a);
	ASSERT_EQ(owned, 0);
	md_agent_free(a);
	munmap(m, 32 * 4096);
	close(fd);
	return 0;
}

static off_t pread_fails_from;	/* see pread_failing_syscall */
static long pread_failing_syscall(long nr, ...);

/* The image pages an unmerge or a fork would copy, which the memory check
 * weighs: those the guest has not written, each read at its own pagemap
 * entry. Read one page off, a written page beside a run stood for the
 * run's first, unwritten one: fewer copies than there were, made without
 * the memory for them. */
TEST_IMPL(owned_unwritten_pages_counted)
{
	md_agent *a;
	int fd;
	char *m = image_and_ram(&a, "unwritten.img", 37, &fd);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * 4096, 0), 16 * 4096);
	m[16 * 4096] = 1;	/* the guest's own page after the run */
	md__agent_enter(a);
	uint64_t before = md__owned_unwritten_pages(a);
	md__agent_leave(a);
	m[0] = 1;	/* a page of the run, written: a private copy already */
	md__agent_enter(a);
	uint64_t after = md__owned_unwritten_pages(a);
	md__agent_leave(a);
	ASSERT_EQ(before, 16);
	ASSERT_EQ(after, 15);
	/* Pagemap unreadable: each page counts as one to copy, the written
	 * one too (room asked for too much, never too little). */
	pread_fails_from = 0;
	md__libc_syscall = pread_failing_syscall;
	md__agent_enter(a);
	uint64_t unknown = md__owned_unwritten_pages(a);
	md__agent_leave(a);
	md__libc_syscall = NULL;
	ASSERT_EQ(unknown, 16);
	md_agent_free(a);
	munmap(m, 32 * 4096);
	close(fd);
	return 0;
}

/* A registration that cannot have its records changes nothing, the
 * advice of the records already there included: a MADV_DONTFORK taken
 * by them though the VMM's madvise failed has a fork leave their pages
 * shared from an image in the child (they are made private first only
 * where the child gets a copy). Re-registering what is registered adds
 * no record. */
TEST_IMPL(regions_add_failed_changes_nothing)
{
	struct md_agent a;
	agent_init(&a);
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x104000, 0), 0);
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x104000, 0), 0);
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x102000, 0), 0);
	ASSERT_EQ(a.nregions, 1);
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x108000, 0), 0);
	ASSERT_EQ(a.nregions, 2);
	/* Records up to the array's room (one kept spare). */
	while (a.nregions + 2 < a.regions_cap) {
		uintptr_t at = 0x1000000 + a.nregions * 0x10000;
		ASSERT_EQ(md__regions_add(&a, at, at + 0x4000, 0), 0);
	}
	size_t n = a.nregions;
	md__regions_fail_reserve = 1;
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x2000000, MD_ADV_DONTFORK), -ENOMEM);
	md__regions_fail_reserve = 0;
	ASSERT_EQ(a.nregions, n);
	for (size_t i = 0; i < a.nregions; i++)
		ASSERT(!(a.regions[i].advice & MD_ADV_DONTFORK));
	md__regions_free(&a);
	return 0;
}

/* Whether a fork copies guest RAM (how long it waits for the agent's lock
 * to make the image pages there private first, and whether it counts
 * them left shared when it could not) asks every record, not the last
 * one in address order. */
TEST_IMPL(fork_copies_ram_asks_every_region)
{
	struct md_agent a;
	agent_init(&a);
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x110000, 0), 0);
	ASSERT_EQ(md__regions_add(&a, 0x200000, 0x210000, MD_ADV_DONTFORK), 0);
	ASSERT_EQ(a.fork_copies_ram, 1);
	ASSERT_EQ(md__regions_remove(&a, 0x100000, 0x110000), 0);
	ASSERT_EQ(a.fork_copies_ram, 0);
	md__regions_free(&a);
	return 0;
}

/* MADV_DONTFORK over a whole region, from its first byte to its last,
 * keeps fork() from copying it; over part of a region fork copied, the
 * rest is still copied. Counted as copied, a fork made the region's image
 * and pool pages private first for nothing (and waited a second for the
 * agent's lock); counted as not copied, the child kept pages shared that
 * may change under it. */
TEST_IMPL(dontfork_advice_follows_regions)
{
	struct md_agent a;
	agent_init(&a);
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x110000, 0), 0);
	ASSERT_EQ(md__regions_add(&a, 0x200000, 0x210000, 0), 0);
	ASSERT_EQ(a.fork_copies_ram, 1);
	ASSERT_EQ(md__regions_advise(&a, 0x100000, 0x110000, MD_ADV_DONTFORK), 0);
	ASSERT(!md__regions_forked(&a, 0x100000, 0x110000));
	ASSERT(md__regions_forked(&a, 0x200000, 0x210000));
	ASSERT_EQ(md__regions_advise(&a, 0x200000, 0x208000, MD_ADV_DONTFORK), 0);
	ASSERT(md__regions_forked(&a, 0x208000, 0x210000));
	ASSERT_EQ(a.fork_copies_ram, 1);
	ASSERT_EQ(md__regions_advise(&a, 0x200000, 0x210000, MD_ADV_DONTFORK), 0);
	ASSERT(!md__regions_forked(&a, 0x200000, 0x210000));
	ASSERT_EQ(a.fork_copies_ram, 0);
	/* MADV_DOFORK over part: that part is copied again (the record
	 * keeps no DONTFORK, not said as kept). */
	ASSERT_EQ(md__regions_advise(&a, 0x204000, 0x208000, MD_ADV_DONTFORK | MD_ADV_UNDO), 0);
	ASSERT(md__regions_forked(&a, 0x200000, 0x210000));
	ASSERT_EQ(a.fork_copies_ram, 1);
	md__regions_free(&a);
	return 0;
}

/* Pages that cannot be made private keep their owner (they still show the
 * image); those that could lose it, and leave the count of image pages. */
TEST_IMPL(privatize_keeps_failed_owners)
{
	struct md_agent a;
	agent_init(&a);
	/* Nothing is mapped at 1 MiB: populating it fails. */
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x200000, 0), 0);
	char *m = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md__regions_add(&a, (uintptr_t)m, (uintptr_t)m + 16 * 4096, 0), 0);
	struct md__region *r = md__region_find(&a, 0x100000, 1);
	md__owners_set(&a, r, 0x100000, 8, 3);
	struct md__region *q = md__region_find(&a, (uintptr_t)m, 1);
	md__owners_set(&a, q, (uintptr_t)m, 8, 3);
	ASSERT(md__privatize(&a, 0, UINTPTR_MAX, 3) < 0);
	ASSERT_EQ(a.owned, 8);
	r = md__region_find(&a, 0x100000, 1);
	q = md__region_find(&a, (uintptr_t)m, 1);
	for (int i = 0; i < 8; i++) {
		ASSERT_EQ(r->owner[i], 3);
		ASSERT_EQ(q->owner[i], 0);
	}
	md__regions_free(&a);
	munmap(m, 16 * 4096);
	return 0;
}

/* The permissions of the mapping at p in /proc/self/maps ("r--p"), "" if
 * none (one buffer, reused). */
static const char *self_perms(const void *p)
{
	static char perms[8];
	char line[1024];
	perms[0] = '\0';
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return perms;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char pr[8];
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, pr) == 3 && lo <= (uintptr_t)p && (uintptr_t)p < hi) {
			snprintf(perms, sizeof(perms), "%s", pr);
			break;
		}
	}
	fclose(f);
	return perms;
}

/* Whether the mapping at p has the VmFlags flag fl ("dc") in
 * /proc/self/smaps. */
static int self_vmflag(const void *p, const char *fl)
{
	char line[1024];
	int in = 0, has = 0;
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = lo <= (uintptr_t)p && (uintptr_t)p < hi;
		else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			char want[8];
			snprintf(want, sizeof(want), " %s", fl);
			for (char *w = strstr(line, want); w && !has; w = strstr(w + 1, want))
				has = w[strlen(want)] == ' ' || w[strlen(want)] == '\n';
			break;
		}
	}
	fclose(f);
	return has;
}

/* A lease break over pages the VMM made read-only, or not even readable,
 * itself (a VMM linking libmemdedup.so, or raw syscalls: no interposer
 * gives the stretch up first, as the preload's mprotect does): the write
 * fault refuses them, so they are copied aside and moved into place. The
 * content stays what the guest read, no page is the file's any more, and
 * each stretch keeps the VMM's protection (a copy left writable lets the
 * guest write what the VMM protected) and the region's advice (a copy
 * without MADV_DONTFORK goes to every child). */
TEST_IMPL(lease_break_read_only_stretch_in_process)
{
	enum { PAGES = 64 };
	const size_t len = PAGES * 4096, ro = 16 * 4096, none = 40 * 4096;
	char img[512];
	snprintf(img, sizeof(img), "%s/ro-stretch.img", test_dir());
	make_image(img, len, 23);
	char *orig = malloc(len);
	ASSERT(orig);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(pread(fd, orig, len, 0), (ssize_t)len);
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(madvise(m, len, MADV_DONTFORK), 0);
	ASSERT_EQ(md_agent_register(a, m, len, MD_ADV_DONTFORK), 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, len, 0), (ssize_t)len);
	/* The advice the agent's thread gives new mappings within a second,
	 * given now: what the copies have is then theirs alone. */
	md__regions_flush_advice(a);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, PAGES);
	ASSERT(memcmp(m, orig, len) == 0);	/* read: present, the file's */
	for (size_t off = 0; off < len; off += 4096)
		ASSERT(self_pagemap(m + off) & (1ull << 61));
	ASSERT_EQ(mprotect(m + ro, ro, PROT_READ), 0);
	ASSERT_EQ(mprotect(m + none, 4 * 4096, PROT_NONE), 0);
	ASSERT(strcmp(self_perms(m + ro), "r--p") == 0);
	ASSERT(self_vmflag(m + ro, "dc"));
	pid_t w = fork();
	ASSERT(w >= 0);
	if (w == 0) {
		/* In once the pages are private: then overwrites it all. */
		int wfd = open(img, O_WRONLY);
		char junk[4096];
		memset(junk, 0xee, sizeof(junk));
		for (size_t off = 0; wfd >= 0 && off < len; off += sizeof(junk))
			if (pwrite(wfd, junk, sizeof(junk), (off_t)off) != (ssize_t)sizeof(junk))
				_exit(2);
		_exit(wfd >= 0 && fsync(wfd) == 0 ? 0 : 1);
	}
	int status;
	ASSERT_EQ(waitpid(w, &status, 0), w);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	for (size_t off = 0; off < len; off += 4096)
		ASSERT(!(self_pagemap(m + off) & (1ull << 61)));
	ASSERT(strcmp(self_perms(m + ro), "r--p") == 0);
	ASSERT(strcmp(self_perms(m + 2 * ro - 4096), "r--p") == 0);
	ASSERT(strcmp(self_perms(m + none), "---p") == 0);
	ASSERT(strcmp(self_perms(m + none + 3 * 4096), "---p") == 0);
	ASSERT(strcmp(self_perms(m), "rw-p") == 0);
	ASSERT(strcmp(self_perms(m + 2 * ro), "rw-p") == 0);
	ASSERT(strcmp(self_perms(m + none + 4 * 4096), "rw-p") == 0);
	ASSERT(strcmp(self_perms(m + len - 4096), "rw-p") == 0);
	ASSERT(self_vmflag(m + ro, "dc") && self_vmflag(m + none, "dc"));
	ASSERT_EQ(mprotect(m + none, 4 * 4096, PROT_READ), 0);
	ASSERT(memcmp(m, orig, len) == 0);
	/* The copies left in the image's mapping, made read-only since, then
	 * discarded: zeroes (the kernel's discard would show the file, the
	 * writer's bytes), read-only still. */
	const size_t late = 48 * 4096;
	ASSERT_EQ(mprotect(m + late, 4 * 4096, PROT_READ), 0);
	ASSERT_EQ(md_agent_madvise_discard(a, m + late, 4 * 4096, MADV_DONTNEED), 0);
	ASSERT(strcmp(self_perms(m + late), "r--p") == 0);
	for (size_t off = late; off < late + 4 * 4096; off++)
		ASSERT_EQ(m[off], 0);
	ASSERT(memcmp(m + late + 4 * 4096, orig + late + 4 * 4096, len - late - 4 * 4096) == 0);
	md_agent_free(a);
	munmap(m, len);
	close(fd);
	free(orig);
	return 0;
}

/* Pages mapped from an image, then discarded, become anonymous memory
 * with the region's advice: MADV_HUGEPAGE, MADV_DONTFORK, MADV_DONTDUMP
 * (the kernel's own discard leaves the mapping's flags as they were).
 * So do the copies a lease break left in the image's mapping. Without
 * it the guest's RAM there lost its transparent huge pages for good, or
 * went to every child and into core dumps. */
TEST_IMPL(discard_keeps_region_advice)
{
	const unsigned advice = MD_ADV_HUGEPAGE | MD_ADV_DONTFORK | MD_ADV_DONTDUMP;
	char img[512];
	snprintf(img, sizeof(img), "%s/huge.img", test_dir());
	make_image(img, 16 * 4096, 43);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	char *m = mmap(NULL, 32 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	if (madvise(m, 32 * 4096, MADV_HUGEPAGE) != 0) {
		munmap(m, 32 * 4096);
		close(fd);
		SKIP("no transparent huge pages: %s", strerror(errno));
	}
	ASSERT_EQ(madvise(m, 32 * 4096, MADV_DONTFORK), 0);
	ASSERT_EQ(madvise(m, 32 * 4096, MADV_DONTDUMP), 0);
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(md_agent_register(a, m, 32 * 4096, advice), 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * 4096, 0), 16 * 4096);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	/* The advice the agent's thread gives the image's mapping within a
	 * second, given now: what the copies have is then theirs alone. */
	md__regions_flush_advice(a);
	ASSERT_EQ(md_agent_madvise_discard(a, m + 4 * 4096, 4 * 4096, MADV_DONTNEED), 0);
	/* A writer: the lease break leaves copies in the image's mapping. */
	pid_t w = fork();
	ASSERT(w >= 0);
	if (w == 0) {
		int wfd = open(img, O_WRONLY);
		_exit(wfd >= 0 && pwrite(wfd, "x", 1, 0) == 1 ? 0 : 1);
	}
	int status;
	ASSERT_EQ(waitpid(w, &status, 0), w);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	ASSERT_EQ(md_agent_madvise_discard(a, m + 10 * 4096, 2 * 4096, MADV_DONTNEED), 0);
	const size_t at[2] = { 4 * 4096, 10 * 4096 };
	for (int k = 0; k < 2; k++) {
		ASSERT(self_vmflag(m + at[k], "hg"));
		ASSERT(self_vmflag(m + at[k], "dc"));
		ASSERT(self_vmflag(m + at[k], "dd"));
		ASSERT_EQ(m[at[k]], 0);
		ASSERT_EQ(m[at[k] + 2 * 4096 - 1], 0);
	}
	md_agent_free(a);
	munmap(m, 32 * 4096);
	close(fd);
	return 0;
}

static void valid_file(struct md__stats_file *f)
{
	memset(f, 0, sizeof(*f));
	memcpy(f->magic, MD_STATS_MAGIC, 8);
	f->version = MD_STATS_VERSION;
	f->header_size = offsetof(struct md__stats_file, counters);
	f->ncounters = MD_CTR_COUNT;
	f->pid = 42;
	strcpy(f->command, "qemu");
	f->counters[MD_CTR_SHARED_NOW] = 1234;
	f->counters[MD_CTR_FALLBACK0 + MD_FB_NO_LEASE] = 5;
}

/* Reads in flight: each read's buffers kept apart, more than 16 as one
 * range over them all (from the lowest buffer, in any order), runs
 * overlapping either edge busy, more reads than slots or a block: every
 * range busy. */
TEST_IMPL(inflight_ranges)
{
	static struct md__inflight f;
	struct iovec two[2] = { { (void *)0x10000, 0x1000 }, { (void *)0x30000, 0x2000 } };
	int t = md__inflight_begin(&f, two, 2);
	ASSERT_EQ(md__inflight_busy(&f, 0x10000, 0x1000), 1);
	ASSERT_EQ(md__inflight_busy(&f, 0x31000, 0x1000), 1);
	ASSERT_EQ(md__inflight_busy(&f, 0x20000, 0x1000), 0);	/* between the two */
	ASSERT_EQ(md__inflight_busy(&f, 0x11000, 0x1000), 0);	/* just after */
	ASSERT_EQ(md__inflight_busy(&f, 0xf000, 0x1000), 0);	/* just before */
	md__inflight_end(&f, t);
	ASSERT_EQ(md__inflight_busy(&f, 0x10000, 0x1000), 0);

	struct iovec many[MD_IO_RANGES + 1];
	for (int i = 0; i <= MD_IO_RANGES; i++)
		many[i] = (struct iovec){ (void *)(uintptr_t)(0x100000 + i * 0x2000), 0x1000 };
	/* 16 buffers are still kept apart, the last one too. */
	t = md__inflight_begin(&f, many, MD_IO_RANGES);
	ASSERT_EQ(md__inflight_busy(&f, 0x101000, 0x1000), 0);
	ASSERT_EQ(md__inflight_busy(&f, 0x100000 + (MD_IO_RANGES - 1) * 0x2000, 0x1000), 1);
	md__inflight_end(&f, t);
	t = md__inflight_begin(&f, many, MD_IO_RANGES + 1);
	ASSERT_EQ(md__inflight_busy(&f, 0x101000, 0x1000), 1);	/* a gap, inside the span */
	ASSERT_EQ(md__inflight_busy(&f, 0x100000 + (MD_IO_RANGES + 1) * 0x2000, 0x1000), 0);
	md__inflight_end(&f, t);

	/* More than 16 buffers, highest first: the one range starts at the
	 * lowest buffer, not at the first one given (a merge would replace a
	 * page an O_DIRECT read still writes). */
	for (int i = 0; i <= MD_IO_RANGES; i++)
		many[i] = (struct iovec){ (void *)(uintptr_t)(0x100000 + (MD_IO_RANGES - i) * 0x2000), 0x1000 };
	t = md__inflight_begin(&f, many, MD_IO_RANGES + 1);
	ASSERT_EQ(md__inflight_busy(&f, 0x100000, 0x1000), 1);	/* the lowest buffer, given last */
	ASSERT_EQ(md__inflight_busy(&f, 0x100000 + MD_IO_RANGES * 0x2000, 0x1000), 1);	/* the highest, given first */
	ASSERT_EQ(md__inflight_busy(&f, 0xff000, 0x1000), 0);
	md__inflight_end(&f, t);

	/* Runs straddling a read's start, its end, or holding it whole. */
	struct iovec one = { (void *)0x40000, 0x2000 };
	t = md__inflight_begin(&f, &one, 1);
	ASSERT_EQ(md__inflight_busy(&f, 0x3f000, 0x2000), 1);	/* over its start */
	ASSERT_EQ(md__inflight_busy(&f, 0x41000, 0x2000), 1);	/* over its end */
	ASSERT_EQ(md__inflight_busy(&f, 0x3f000, 0x4000), 1);	/* over it all */
	ASSERT_EQ(md__inflight_busy(&f, 0x40800, 0x800), 1);	/* inside it */
	ASSERT_EQ(md__inflight_busy(&f, 0x42000, 0x1000), 0);	/* just after */
	ASSERT_EQ(md__inflight_busy(&f, 0x3f000, 0x1000), 0);	/* just before */
	md__inflight_end(&f, t);
	ASSERT_EQ(md__inflight_busy(&f, 0x41000, 0x2000), 0);

	/* Blocked (the VMM writes guest RAM unseen): every range busy, for
	 * good, through reads that begin and end after it. */
	static struct md__inflight b;
	ASSERT_EQ(md__inflight_busy(&b, 0x900000, 0x1000), 0);
	md__inflight_block(&b);
	ASSERT_EQ(md__inflight_busy(&b, 0x900000, 0x1000), 1);
	ASSERT_EQ(md__inflight_busy(&b, 0, 1), 1);
	t = md__inflight_begin(&b, &one, 1);
	md__inflight_end(&b, t);
	ASSERT_EQ(md__inflight_busy(&b, 0x900000, 0x1000), 1);

	int tok[MD_IO_SLOTS + 1];
	for (int i = 0; i <= MD_IO_SLOTS; i++)
		tok[i] = md__inflight_begin(&f, two, 1);
	ASSERT_EQ(md__inflight_busy(&f, 0x900000, 0x1000), 1);	/* one read without a slot */
	md__inflight_end(&f, tok[MD_IO_SLOTS]);
	ASSERT_EQ(md__inflight_busy(&f, 0x900000, 0x1000), 0);
	ASSERT_EQ(md__inflight_busy(&f, 0x10000, 0x1000), 1);
	for (int i = 0; i < MD_IO_SLOTS; i++)
		md__inflight_end(&f, tok[i]);
	ASSERT_EQ(md__inflight_busy(&f, 0x10000, 0x1000), 0);
	return 0;
}

TEST_IMPL(stats_parse_valid)
{
	struct md__stats_file f;
	struct md__stats_snapshot s;
	valid_file(&f);
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), 0);
	ASSERT_EQ(s.pid, 42);
	ASSERT_EQ(s.stats.pages_shared, 1234);
	ASSERT_EQ(s.stats.fallbacks[MD_FB_NO_LEASE], 5);
	ASSERT(strcmp(s.command, "qemu") == 0);
	/* Every counter as far as the last this version knows. */
	f.counters[MD_CTR_COUNT - 1] = 77;
	ASSERT_EQ(MD_CTR_COUNT - 1, MD_CTR_FILL_MAPPED);
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), 0);
	ASSERT_EQ(s.stats.fill_mapped, 77);
	/* An older agent with fewer counters is still read, as far as it has
	 * them. */
	f.ncounters = 3;
	f.counters[MD_CTR_READS_SEEN] = 9;
	ASSERT_EQ(MD_CTR_READS_SEEN, 2);
	ASSERT_EQ(md__stats_parse(&f, f.header_size + 3 * 8, &s), 0);
	ASSERT_EQ(s.stats.reads_seen, 9);
	ASSERT_EQ(s.stats.pages_shared, 0);
	ASSERT_EQ(s.stats.fork_shared, 0);
	/* A newer agent's file, read as far as this version's struct reaches. */
	valid_file(&f);
	f.ncounters = MD_CTR_COUNT + 8;
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), 0);
	ASSERT_EQ(s.stats.pages_shared, 1234);
	return 0;
}

/* Every counter has a name of its own (memdedupd's status keys them by
 * it): the fallbacks' from their reasons, the first of them included. */
TEST_IMPL(stats_counter_names)
{
	for (int i = 0; i < MD_CTR_COUNT; i++) {
		const char *n = md__ctr_name((enum md__ctr)i);
		ASSERT(n != NULL && *n && strcmp(n, "unknown") != 0);
		for (int j = 0; j < i; j++)
			ASSERT(strcmp(n, md__ctr_name((enum md__ctr)j)) != 0);
	}
	for (int k = 0; k < MD_FB_COUNT; k++)
		ASSERT(strcmp(md__ctr_name((enum md__ctr)(MD_CTR_FALLBACK0 + k)), md_fallback_name((enum md_fallback)k)) == 0);
	ASSERT(strcmp(md__ctr_name(MD_CTR_COUNT), "unknown") == 0);
	return 0;
}

TEST_IMPL(stats_parse_rejects)
{
	struct md__stats_file f;
	struct md__stats_snapshot s;
	valid_file(&f);
	ASSERT_EQ(md__stats_parse(&f, 10, &s), -EINVAL);
	ASSERT_EQ(md__stats_parse(&f, sizeof(f) - 8, &s), -EINVAL);
	f.magic[0] = 'X';
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), -EINVAL);
	valid_file(&f);
	f.version = 99;
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), -EINVAL);
	valid_file(&f);
	f.ncounters = 0xffffffff;
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), -EINVAL);
	f.ncounters = 4097;
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), -EINVAL);
	f.ncounters = 4096;	/* a newer agent's, read as far as this version's */
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), 0);
	valid_file(&f);
	f.pid = 0;
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), -EINVAL);
	valid_file(&f);
	memset(f.command, 'a', sizeof(f.command));
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), -EINVAL);
	valid_file(&f);
	f.header_size = 8;
	ASSERT_EQ(md__stats_parse(&f, sizeof(f), &s), -EINVAL);
	return 0;
}

/* VmSize of this process, in bytes. */
static size_t vm_size(void)
{
	char line[256];
	size_t kb = 0;
	FILE *f = fopen("/proc/self/status", "r");
	ASSERT(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmSize: %zu kB", &kb) == 1)
			break;
	fclose(f);
	ASSERT(kb > 0);
	return kb << 10;
}

/* Unregistering part of a region splits its record without memory: the
 * record must go with what is unmapped (a stale one would make a later
 * mapping there guest RAM), and what is left must keep its owner records
 * (a lease break privatizes only what they name). */
TEST_IMPL(agent_unregister_splits_without_memory)
{
	const size_t len = (size_t)8 << 30;	/* an owner array of 8 MiB */
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	md_stats s;
	struct rlimit old, low;
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			 -1, 0);
	ASSERT(mem != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, mem, len, 0), 0);
	ASSERT(getrlimit(RLIMIT_AS, &old) == 0);
	low = (struct rlimit){ vm_size() + (1 << 20), old.rlim_max };
	ASSERT(setrlimit(RLIMIT_AS, &low) == 0);
	ASSERT_EQ(md_agent_unregister(a, mem + 4096, 4096), 0);
	ASSERT_EQ(md_agent_unmap(a, mem + len - 8192, 4096), 0);
	ASSERT(setrlimit(RLIMIT_AS, &old) == 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 3);
	ASSERT_EQ(s.registered_bytes, len - 8192);
	/* The records' array full but for the one spare, no room for another
	 * (the first split takes the spare one) nor memory to give the
	 * region's rest up (its pages made private): the record stays, and
	 * md_agent_forget says so. */
	for (char *at = mem + len / 2; a->nregions + 1 < a->regions_cap; at += 8192)
		ASSERT_EQ(md_agent_unregister(a, at, 4096), 0);
	size_t nr = a->nregions;
	md__regions_fail_reserve = 1000;
	int forgot1 = md_agent_forget(a, mem + len / 4, 4096);
	md__privatize_fail = -ENOMEM;
	int forgot2 = md_agent_forget(a, mem + len / 8, 4096);
	md__privatize_fail = 0;
	md__regions_fail_reserve = 0;
	ASSERT_EQ(forgot1, 0);
	ASSERT_EQ(forgot2, -ENOMEM);
	ASSERT_EQ(a->nregions, nr + 1);
	ASSERT(md__region_find(a, (uintptr_t)mem + len / 8, 4096) != NULL);
	md_agent_free(a);
	munmap(mem, len);
	return 0;
}

/* syscall(2), but munmap fails with ENOMEM (a split of a mapping the
 * kernel has no memory for). */
static long munmap_failing_syscall(long nr, ...)
{
	SYSCALL_ARGS(nr, a);
	if (nr == SYS_munmap) {
		errno = ENOMEM;
		return -1;
	}
	return syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* md_agent_unmap whose munmap fails says munmap's error and changes
 * nothing: the RAM, still mapped, stays registered, shared and merged.
 * Over a hole (memory gone some other way) the record of the hole goes
 * all the same: what is mapped there later is not guest RAM. */
TEST_IMPL(agent_unmap_failed_changes_nothing)
{
	const size_t len = 16 * 4096;
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	md_stats s;
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	md__libc_syscall = munmap_failing_syscall;
	int r1 = md_agent_unmap(a, m + 4 * 4096, 4 * 4096);
	md__libc_syscall = NULL;
	ASSERT_EQ(r1, -ENOMEM);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 1);
	ASSERT_EQ(s.registered_bytes, len);
	ASSERT_EQ(syscall(SYS_munmap, m + 8 * 4096, 4096), 0);
	md__libc_syscall = munmap_failing_syscall;
	int r2 = md_agent_unmap(a, m + 4 * 4096, 8 * 4096);
	md__libc_syscall = NULL;
	ASSERT_EQ(r2, -ENOMEM);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 2);
	ASSERT_EQ(s.registered_bytes, len - 4096);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* A registration whose records cannot all be had (an owner array of 8 MiB
 * for the last gap, the address space limited) changes nothing: the gap
 * before it was registered, the VMM's madvise failing all the same. */
TEST_IMPL(agent_register_without_memory_changes_nothing)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose own allocator stops at the address-space limit");
	const size_t len = (size_t)8 << 30;
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	md_stats s;
	struct rlimit old, low;
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			 -1, 0);
	ASSERT(mem != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, mem, 4096, 0), 0);
	ASSERT_EQ(md_agent_register(a, mem + 8192, 4096, 0), 0);
	ASSERT(getrlimit(RLIMIT_AS, &old) == 0);
	low = (struct rlimit){ vm_size() + (1 << 20), old.rlim_max };
	ASSERT(setrlimit(RLIMIT_AS, &low) == 0);
	int err = md_agent_register(a, mem, len, 0);
	ASSERT(setrlimit(RLIMIT_AS, &old) == 0);
	ASSERT_EQ(err, -ENOMEM);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 2);
	ASSERT_EQ(s.registered_bytes, 8192);
	ASSERT_EQ(md_agent_register(a, mem, len, 0), 0);	/* with the memory: whole */
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.registered_bytes, len);
	md_agent_free(a);
	munmap(mem, len);
	return 0;
}

/* The statistics file of a pid used before: ours, it is made 0600 (an
 * older agent's was 0644); another user's (a shared run directory) is left
 * as it is, and this agent takes the next name. */
TEST_IMPL(agent_stats_file_owned)
{
	char dir[] = "/tmp/md-stats-XXXXXX", path[64], next[64];
	ASSERT(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/agent-%d.stats", dir, (int)getpid());
	int fd = open(path, O_WRONLY | O_CREAT, 0644);
	ASSERT(fd >= 0 && fchmod(fd, 0644) == 0 && write(fd, "stale", 5) == 5);
	close(fd);
	md_agent *a;
	md_agent_options o = { .run_dir = dir };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	struct stat st;
	ASSERT_EQ(stat(path, &st), 0);
	ASSERT_EQ(st.st_mode & 0777, 0600);
	ASSERT_EQ(st.st_size, (off_t)sizeof(struct md__stats_file));
	md_agent_free(a);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ASSERT(fd >= 0 && fchmod(fd, 0666) == 0 && fchown(fd, 65534, 65534) == 0 && write(fd, "theirs", 6) == 6);
	close(fd);
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(stat(path, &st), 0);
	ASSERT_EQ(st.st_uid, 65534);
	ASSERT_EQ(st.st_size, 6);
	ASSERT_EQ(st.st_mode & 0777, 0666);
	snprintf(next, sizeof(next), "%s/agent-%d.2.stats", dir, (int)getpid());
	ASSERT_EQ(stat(next, &st), 0);
	ASSERT_EQ(st.st_uid, geteuid());
	ASSERT_EQ(st.st_mode & 0777, 0600);
	md_agent_free(a);
	ASSERT(access(next, F_OK) != 0);
	ASSERT_EQ(stat(path, &st), 0);	/* not ours to remove */
	unlink(path);
	rmdir(dir);
	return 0;
}

/* Every name for this pid but the last another user's: the agent takes the
 * last one (MD_STATS_NAMES of them are tried), and leaves theirs alone. */
TEST_IMPL(agent_stats_file_takes_last_name)
{
	char dir[] = "/tmp/md-stats-XXXXXX", path[MD_STATS_NAMES + 1][64];
	ASSERT(mkdtemp(dir));
	for (int k = 1; k <= MD_STATS_NAMES; k++) {
		if (k == 1)
			snprintf(path[k], sizeof(path[k]), "%s/agent-%d.stats", dir, (int)getpid());
		else
			snprintf(path[k], sizeof(path[k]), "%s/agent-%d.%d.stats", dir, (int)getpid(), k);
		if (k == MD_STATS_NAMES)
			break;
		int fd = open(path[k], O_WRONLY | O_CREAT | O_EXCL, 0644);
		ASSERT(fd >= 0 && fchown(fd, 65534, 65534) == 0);
		close(fd);
	}
	md_agent *a;
	md_agent_options o = { .run_dir = dir };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	struct stat st;
	ASSERT_EQ(stat(path[MD_STATS_NAMES], &st), 0);
	ASSERT_EQ(st.st_uid, geteuid());
	ASSERT_EQ(st.st_size, (off_t)sizeof(struct md__stats_file));
	md_agent_free(a);
	ASSERT(access(path[MD_STATS_NAMES], F_OK) != 0);
	for (int k = 1; k < MD_STATS_NAMES; k++) {
		ASSERT_EQ(stat(path[k], &st), 0);	/* not ours to remove */
		ASSERT_EQ(st.st_uid, 65534);
		unlink(path[k]);
	}
	rmdir(dir);
	return 0;
}

TEST_IMPL(agent_api_rejects)
{
	md_agent *a, *b;
	md_agent_options o = { .run_dir = "" , .flags = 1u << 30 };
	ASSERT_EQ(md_agent_new(&a, &o), -EINVAL);
	o.flags = 0;
	o.share_min_pages = MD_SHARE_MIN_PAGES_MAX + 1;
	ASSERT_EQ(md_agent_new(&a, &o), -EINVAL);
	o.share_min_pages = MD_SHARE_MIN_PAGES_MAX;
	/* The scanner's tunables out of their ranges (memdedup set's). */
	const md_agent_options bad[] = {
		{ .run_dir = "", .flags = MD_OPT_SCAN, .pages_to_scan = 100001 },
		{ .run_dir = "", .flags = MD_OPT_SCAN, .sleep_ms = 10001 },
		{ .run_dir = "", .flags = MD_OPT_SCAN, .cpu_percent = 101 },
		{ .run_dir = "", .flags = MD_OPT_SCAN, .hint_ratio = 9 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ASSERT_EQ(md_agent_new(&a, &bad[i]), -EINVAL);
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(md_agent_new(&b, &o), -EBUSY);
	char *mem = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(mem != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, mem + 1, 4096, 0), -EINVAL);
	ASSERT_EQ(md_agent_register(a, mem, 100, 0), -EINVAL);
	ASSERT_EQ(md_agent_register(a, mem, 0, 0), -EINVAL);
	ASSERT_EQ(md_agent_register(a, mem, 4096, 1u << 20), -EINVAL);
	ASSERT_EQ(md_agent_register(a, mem, 1 << 20, 0), 0);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 1);
	ASSERT_EQ(s.registered_bytes, 1 << 20);
	ASSERT_EQ(md_agent_unregister(a, mem, 1 << 20), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 0);
	/* Shared memory is refused, also when only part of the range is. */
	char *sh = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT(sh != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, sh, 1 << 20, 0), -EPERM);
	ASSERT(mmap(mem + (1 << 19), 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
		    -1, 0) == mem + (1 << 19));
	ASSERT_EQ(md_agent_register(a, mem, 1 << 20, 0), -EPERM);
	ASSERT_EQ(md_agent_register(a, mem, 1 << 19, 0), 0);	/* the private part */
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 1);
	/* md_agent_unmap: a failed munmap (past the address space) forgets
	 * nothing; the real one forgets what it unmapped. */
	ASSERT_EQ(md_agent_unmap(a, mem + 1, 4096), -EINVAL);
	ASSERT_EQ(md_agent_unmap(NULL, mem, 4096), -EINVAL);
	ASSERT_EQ(md_agent_unmap(a, mem, (size_t)1 << 62), -EINVAL);	/* past 5-level paging too */
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.registered_bytes, 1 << 19);
	ASSERT_EQ(md_agent_unmap(a, mem + (1 << 18), 1 << 18), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.registered_bytes, 1 << 18);
	munmap(sh, 1 << 20);
	md_agent_free(a);
	munmap(mem, 1 << 20);
	/* Freed: a new one may be made. */
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	md_agent_free(a);
	return 0;
}

TEST_IMPL(proc_start_time)
{
	/* A command name with spaces and a parenthesis must not confuse it. */
	int p[2];
	int named[2];
	ASSERT(pipe(p) == 0 && pipe(named) == 0);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_NAME, "a) b c", 0, 0, 0);
		char c = 1;
		close(p[1]);
		ASSERT(write(named[1], &c, 1) == 1);	/* renamed */
		ASSERT(read(p[0], &c, 1) >= 0);
		_exit(0);
	}
	char c;
	close(named[1]);
	ASSERT(read(named[0], &c, 1) == 1);
	close(named[0]);
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	ASSERT(f && fgets(buf, sizeof(buf), f));
	fclose(f);
	unsigned long long want = 0;
	ASSERT(sscanf(strrchr(buf, ')') + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u"
		      " %*d %*d %*d %*d %*d %*d %llu", &want) == 1);
	ASSERT(want != 0);
	ASSERT_EQ(md__proc_start_time(pid), want);
	close(p[1]);
	waitpid(pid, NULL, 0);
	ASSERT_EQ(md__proc_start_time(pid), 0);
	return 0;
}

/* A new file renamed onto path: its inode. */
static ino_t new_file_at(const char *path)
{
	struct stat st;
	char tmp[600];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT(fd >= 0 && fstat(fd, &st) == 0);
	close(fd);
	ASSERT(rename(tmp, path) == 0);
	return st.st_ino;
}

static ino_t inode_at(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0 ? st.st_ino : 0;
}

static void file_renamed_onto(const char *path)
{
	new_file_at(path);
}

/* md__stats_file_remove removes the file it was given, never one that
 * took its name: another file there is left (-ESTALE), also one renamed
 * onto the name while the removal runs (a second `status` removing the
 * same stale file, then a new agent of that pid making its own). The
 * removal looked, then unlinked the name: that new agent's file went. */
TEST_IMPL(stats_file_remove_only_its_file)
{
	char path[512], left[600];
	struct stat st;
	snprintf(path, sizeof(path), "%s/agent-7.stats", test_dir());
	snprintf(left, sizeof(left), "%s/.removing-%d", test_dir(), (int)getpid());
	/* Its file: removed. */
	new_file_at(path);
	int fd = open(path, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(md__stats_file_remove(fd, path), 0);
	ASSERT(access(path, F_OK) != 0);
	ASSERT(fstat(fd, &st) == 0 && st.st_nlink == 0);
	close(fd);
	/* Another file there: left where it is. */
	new_file_at(path);
	fd = open(path, O_RDONLY);
	ASSERT(fd >= 0);
	ino_t other = new_file_at(path);
	ASSERT_EQ(md__stats_file_remove(fd, path), -ESTALE);
	ASSERT_EQ(inode_at(path), other);
	ASSERT(access(left, F_OK) != 0);
	/* And one more made there meanwhile, the one we moved being no one's
	 * now: the new one stays. */
	md__stats_remove_hook = file_renamed_onto;
	ASSERT_EQ(md__stats_file_remove(fd, path), -ESTALE);
	ino_t newest = inode_at(path);
	ASSERT(newest != 0 && newest != other);
	ASSERT(access(left, F_OK) != 0);
	close(fd);
	/* Its file, and another renamed onto the name while it is removed:
	 * the other stays. */
	new_file_at(path);
	fd = open(path, O_RDONLY);
	ASSERT(fd >= 0);
	int err = md__stats_file_remove(fd, path);
	md__stats_remove_hook = NULL;
	ASSERT_EQ(err, 0);	/* ours, moved away before the new one came */
	ASSERT(inode_at(path) != 0);	/* the new file survives */
	ASSERT(fstat(fd, &st) == 0 && st.st_nlink == 0);	/* ours is gone */
	ASSERT(access(left, F_OK) != 0);
	close(fd);
	return 0;
}

/* A file md__stats_file_remove moved away is removed by a later reader
 * once its remover died (a `status` killed between its rename and its
 * unlink left it for good), but not while the remover lives, nor while a
 * process (its agent) locks it. */
TEST_IMPL(stats_removal_leftover_removed)
{
	char name[64], path[600], mine[64], other[600];
	pid_t dead = fork();
	ASSERT(dead >= 0);
	if (dead == 0)
		_exit(0);
	ASSERT_EQ(waitpid(dead, NULL, 0), dead);
	snprintf(name, sizeof(name), ".removing-%d", (int)dead);
	snprintf(path, sizeof(path), "%s/%s", test_dir(), name);
	snprintf(mine, sizeof(mine), ".removing-%d", (int)getpid());
	ASSERT(new_file_at(path) != 0);
	snprintf(other, sizeof(other), "%s/%s", test_dir(), mine);
	ASSERT(new_file_at(other) != 0);
	snprintf(other, sizeof(other), "%s/.removing-12ab", test_dir());
	ASSERT(new_file_at(other) != 0);
	ASSERT_EQ(md__stats_removal_leftover(test_dir(), mine), 0);
	ASSERT_EQ(md__stats_removal_leftover(test_dir(), ".removing-12ab"), 0);
	/* Not a name a remover gives (its pid, "%d"): a leading zero. */
	char zero[64], zpath[600];
	snprintf(zero, sizeof(zero), ".removing-0%d", (int)dead);
	snprintf(zpath, sizeof(zpath), "%s/%s", test_dir(), zero);
	ASSERT(new_file_at(zpath) != 0);
	ASSERT_EQ(md__stats_removal_leftover(test_dir(), zero), 0);
	ASSERT_EQ(access(zpath, F_OK), 0);
	ASSERT_EQ(md__stats_removal_leftover(test_dir(), "agent-1.stats"), 0);
	/* Locked by a live process: kept. */
	int go[2];
	ASSERT_EQ(pipe(go), 0);
	pid_t holder = fork();
	ASSERT(holder >= 0);
	if (holder == 0) {
		int fd = open(path, O_RDWR);
		struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
		char c = fd >= 0 && fcntl(fd, F_SETLK, &l) == 0;
		if (write(go[1], &c, 1) != 1)
			_exit(1);
		pause();	/* till killed */
		_exit(0);
	}
	char c = 0;
	ASSERT_EQ(read(go[0], &c, 1), 1);
	ASSERT_EQ(c, 1);
	ASSERT_EQ(md__stats_removal_leftover(test_dir(), name), 0);
	ASSERT_EQ(access(path, F_OK), 0);
	kill(holder, SIGKILL);
	ASSERT_EQ(waitpid(holder, NULL, 0), holder);
	close(go[0]);
	close(go[1]);
	ASSERT_EQ(md__stats_removal_leftover(test_dir(), name), 1);
	ASSERT(access(path, F_OK) != 0);
	snprintf(path, sizeof(path), "%s/%s", test_dir(), mine);
	ASSERT_EQ(access(path, F_OK), 0);
	ASSERT_EQ(access(other, F_OK), 0);
	return 0;
}

/* The mbind calls policies.c makes, through a stand-in for syscall(2). */
static struct { unsigned long lo, hi; int mode; } mbinds[16];
static int nmbinds;

static long fake_syscall(long nr, ...)
{
	va_list ap;
	va_start(ap, nr);
	unsigned long addr = va_arg(ap, unsigned long), len = va_arg(ap, unsigned long);
	int mode = va_arg(ap, int);
	va_end(ap);
	if (nr == SYS_mbind && nmbinds < 16) {
		mbinds[nmbinds].lo = addr;
		mbinds[nmbinds].hi = addr + len;
		mbinds[nmbinds++].mode = mode;
	}
	return 0;
}

/* Applied over [lo, hi): the calls made, in order, as "lo-hi:mode ..." in
 * pages from 0x100000. */
static const char *applied(unsigned long lo, unsigned long hi)
{
	static char out[256];
	size_t k = 0;
	nmbinds = 0;
	md__policy_apply(0x100000 + lo * 4096, (hi - lo) * 4096);
	out[0] = 0;
	for (int i = 0; i < nmbinds; i++)
		k += (size_t)snprintf(out + k, sizeof(out) - k, "%s%lu-%lu:%d", i ? " " : "",
				      (mbinds[i].lo - 0x100000) / 4096, (mbinds[i].hi - 0x100000) / 4096,
				      mbinds[i].mode);
	return out;
}

static void policy_set(unsigned long lo, unsigned long hi, int mode)
{
	unsigned long node0 = 1;
	md__policy_mbind(fake_syscall, (void *)(0x100000 + lo * 4096), (hi - lo) * 4096, mode, &node0, 2, 0, NULL, 0);
}

#define ASSERT_APPLIED(lo, hi, want) do { \
	const char *got_ = applied(lo, hi); \
	if (strcmp(got_, want) != 0) \
		fprintf(stderr, "applied over %d-%d: \"%s\", not \"%s\"\n", lo, hi, got_, want); \
	ASSERT(strcmp(got_, want) == 0); \
} while (0)

/* What the VMM bound, split by what it bound again, unmapped or moved. */
TEST_IMPL(policies_follow_ranges)
{
	ASSERT_APPLIED(0, 100, "");
	policy_set(10, 50, MPOL_BIND);
	ASSERT_APPLIED(0, 100, "10-50:2");
	policy_set(20, 30, MPOL_DEFAULT);	/* a hole in the middle */
	ASSERT_APPLIED(0, 100, "10-20:2 30-50:2");
	policy_set(25, 35, MPOL_PREFERRED);
	ASSERT_APPLIED(0, 100, "10-20:2 35-50:2 25-35:1");
	ASSERT_APPLIED(12, 14, "12-14:2");
	md__policy_forget(0x100000 + 15 * 4096, 20 * 4096);	/* 15-35 unmapped */
	ASSERT_APPLIED(0, 100, "10-15:2 35-50:2");
	md__policy_move(0x100000 + 35 * 4096, 15 * 4096, 0x100000 + 60 * 4096);
	ASSERT_APPLIED(0, 100, "10-15:2 60-75:2");
	/* A move of part of a policy: that part goes, the rest stays. */
	md__policy_move(0x100000 + 60 * 4096, 5 * 4096, 0x100000 + 80 * 4096);
	ASSERT_APPLIED(0, 100, "10-15:2 65-75:2 80-85:2");
	/* The mask is read as far as the kernel reads it (maxnode - 1 bits),
	 * no further: here it ends where the readable memory does. */
	char *pg = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(pg != MAP_FAILED && mprotect(pg + 4096, 4096, PROT_NONE) == 0);
	unsigned long *mask = (unsigned long *)(pg + 4096) - 1;
	*mask = 1;
	md__policy_mbind(fake_syscall, (void *)(0x100000 + 95 * 4096), 4096, MPOL_BIND, mask, 65, 0, NULL, 0);
	ASSERT_APPLIED(95, 96, "95-96:2");
	munmap(pg, 2 * 4096);
	/* A misaligned length is rounded up, as the kernel does. */
	md__policy_mbind(fake_syscall, (void *)(0x100000 + 90 * 4096), 10, MPOL_BIND, NULL, 0, 0, NULL, 0);
	ASSERT_APPLIED(88, 95, "90-91:2");
	/* Spans skipped (the pool's mappings) in memory that is mapped: the
	 * arguments are tried on a page of its own first, then the call goes
	 * around the spans, and the policy is followed over all of it. */
	char *m = mmap(NULL, 32 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	uintptr_t b = (uintptr_t)m;
	unsigned long node0 = 1;
	const struct md__span skip[] = { { b + 5 * 4096, b + 7 * 4096 }, { b + 10 * 4096, b + 15 * 4096 } };
	nmbinds = 0;
	ASSERT_EQ(md__policy_mbind(fake_syscall, m, 15 * 4096, MPOL_BIND, &node0, 2, 0, skip, 2), 0);
	ASSERT_EQ(nmbinds, 3);	/* the trial, then two pieces */
	ASSERT(mbinds[1].lo == b && mbinds[1].hi == b + 5 * 4096);
	ASSERT(mbinds[2].lo == b + 7 * 4096 && mbinds[2].hi == b + 10 * 4096);
	nmbinds = 0;
	md__policy_apply(b, 32 * 4096);
	ASSERT(nmbinds == 1 && mbinds[0].lo == b && mbinds[0].hi == b + 15 * 4096);
	/* All of it skipped: only the trial is made. */
	nmbinds = 0;
	ASSERT_EQ(md__policy_mbind(fake_syscall, m + 5 * 4096, 2 * 4096, MPOL_BIND, &node0, 2, 0, skip, 1), 0);
	ASSERT_EQ(nmbinds, 2);
	ASSERT(mbinds[1].hi == mbinds[1].lo);	/* of no length */
	/* A hole in the range: refused as a whole, as the kernel does,
	 * nothing bound, nothing followed there. */
	ASSERT_EQ(munmap(m + 20 * 4096, 4096), 0);
	nmbinds = 0;
	errno = 0;
	ASSERT_EQ(md__policy_mbind(fake_syscall, m + 16 * 4096, 8 * 4096, MPOL_BIND, &node0, 2, 0, skip, 2), -1);
	ASSERT_EQ(errno, EFAULT);
	ASSERT_EQ(nmbinds, 1);	/* the trial only */
	nmbinds = 0;
	md__policy_apply(b + 16 * 4096, 8 * 4096);
	ASSERT_EQ(nmbinds, 0);
	/* Refused as a whole over a policy given before: nothing was bound,
	 * so that policy is still the one there, and followed. */
	ASSERT_EQ(md__policy_mbind(fake_syscall, m + 24 * 4096, 4 * 4096, MPOL_PREFERRED, &node0, 2, 0, NULL, 0), 0);
	ASSERT_EQ(munmap(m + 26 * 4096, 4096), 0);
	errno = 0;
	ASSERT_EQ(md__policy_mbind(fake_syscall, m + 24 * 4096, 4 * 4096, MPOL_BIND, &node0, 2, 0, skip, 2), -1);
	ASSERT_EQ(errno, EFAULT);
	nmbinds = 0;
	md__policy_apply(b + 24 * 4096, 4 * 4096);
	ASSERT_EQ(nmbinds, 1);
	ASSERT(mbinds[0].lo == b + 24 * 4096 && mbinds[0].hi == b + 28 * 4096 && mbinds[0].mode == MPOL_PREFERRED);
	/* A private mapping of a tmpfs file (a memfd) takes its policy from
	 * the file, for every process that maps it: none is set there; on
	 * another file system it is. */
	int mfd = memfd_create("policy", MFD_CLOEXEC), pfd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	ASSERT(mfd >= 0 && pfd >= 0);
	nmbinds = 0;
	md__policy_apply_file(b + 24 * 4096, 4 * 4096, mfd);
	ASSERT_EQ(nmbinds, 0);
	md__policy_apply_file(b + 24 * 4096, 4 * 4096, pfd);
	ASSERT_EQ(nmbinds, 1);
	close(mfd);
	close(pfd);
	/* An address inside a page goes to the kernel as it is. */
	nmbinds = 0;
	md__policy_mbind(fake_syscall, m + 100, 4096, MPOL_BIND, &node0, 2, 0, skip, 2);
	ASSERT(nmbinds == 1 && mbinds[0].lo == b + 100);
	munmap(m, 32 * 4096);
	return 0;
}

TEST_IMPL(range_no_file_vmas)
{
	size_t pg = 4096;
	char *m = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	uintptr_t b = (uintptr_t)m;
	int r = md__range_no_file_vmas(b, b + 16 * pg);
	if (r == -ENOTTY)
		SKIP("this kernel has no PROCMAP_QUERY (Linux 6.11)");
	ASSERT_EQ(r, 1);
	int fd = memfd_create("t", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(ftruncate(fd, 4 * pg), 0);
	ASSERT(mmap(m + 4 * pg, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0) == m + 4 * pg);
	ASSERT_EQ(md__range_no_file_vmas(b, b + 4 * pg), 1);
	ASSERT_EQ(md__range_no_file_vmas(b, b + 16 * pg), 0);
	ASSERT_EQ(md__range_no_file_vmas(b + 3 * pg, b + 5 * pg), 0);
	ASSERT_EQ(md__range_no_file_vmas(b + 7 * pg, b + 8 * pg), 0);
	ASSERT_EQ(md__range_no_file_vmas(b + 8 * pg, b + 16 * pg), 1);
	close(fd);
	munmap(m, 16 * pg);
	return 0;
}

static double units_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* md__range_file_maps: the file mappings of the range, clipped, with their
 * file and whether it is a pool's; at the cost of the mappings there, not
 * of all the process's (a discard of one page of guest RAM read every
 * line of /proc/self/maps: 100 ms at 50,000 mappings). */
/* syscall(2), but for ioctl: ENOTTY, as a kernel without PROCMAP_QUERY
 * (before Linux 6.11) answers the query. */
static long no_query_syscall(long nr, ...)
{
	SYSCALL_ARGS(nr, a);
	if (nr == SYS_ioctl) {
		errno = ENOTTY;
		return -1;
	}
	return syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* 16 pages of anonymous memory with a memfd named as the pool's mapped
 * over pages 4-7 (read-only) and one of the VMM's own over 8-11: the
 * layout the md__range_file_maps tests ask about (fstat of each in *sp,
 * *so). */
static char *pool_and_own_maps(int *pool, int *own, struct stat *sp, struct stat *so)
{
	size_t pg = 4096;
	char *m = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	*pool = memfd_create("memdedup-pool", MFD_CLOEXEC);
	*own = memfd_create("t", MFD_CLOEXEC);
	ASSERT(*pool >= 0 && *own >= 0);
	ASSERT_EQ(ftruncate(*pool, 4 * pg), 0);
	ASSERT_EQ(ftruncate(*own, 4 * pg), 0);
	ASSERT(mmap(m + 4 * pg, 4 * pg, PROT_READ, MAP_PRIVATE | MAP_FIXED, *pool, 0) == m + 4 * pg);
	ASSERT(mmap(m + 8 * pg, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, *own, 0) == m + 8 * pg);
	ASSERT(fstat(*pool, sp) == 0 && fstat(*own, so) == 0);
	return m;
}

/* What md__range_file_maps says of pages 5-9 of that layout at b: the
 * pool's part, then the VMM's file. */
static void pool_then_own(const struct md__file_map *v, size_t n, uintptr_t b, const struct stat *sp,
			  const struct stat *so)
{
	size_t pg = 4096;
	ASSERT_EQ(n, 2);
	ASSERT(v[0].lo == b + 5 * pg && v[0].hi == b + 8 * pg && v[0].pool);
	ASSERT(v[0].dev == sp->st_dev && v[0].ino == sp->st_ino);
	ASSERT(v[1].lo == b + 8 * pg && v[1].hi == b + 10 * pg && !v[1].pool);
	ASSERT(v[1].dev == so->st_dev && v[1].ino == so->st_ino);
}

/* md__range_file_maps from the lines of /proc/self/maps, where the kernel
 * has no query: the same mappings as the query finds, anonymous memory
 * (inode 0) left out. */
TEST_IMPL(range_file_maps_from_maps_text)
{
	size_t pg = 4096;
	int pool, own;
	struct stat sp, so;
	char *m = pool_and_own_maps(&pool, &own, &sp, &so);
	uintptr_t b = (uintptr_t)m;
	struct md__file_map *v;
	size_t n;
	md__libc_syscall = no_query_syscall;
	int r1 = md__range_file_maps(b + 5 * pg, b + 10 * pg, &v, &n);
	md__libc_syscall = NULL;
	ASSERT_EQ(r1, 0);
	pool_then_own(v, n, b, &sp, &so);
	free(v);
	md__libc_syscall = no_query_syscall;
	r1 = md__range_file_maps(b, b + 16 * pg, &v, &n);
	md__libc_syscall = NULL;
	ASSERT_EQ(r1, 0);
	ASSERT_EQ(n, 2);	/* the anonymous pages around them are not a file's */
	free(v);
	/* A mapping that only touches the range (ends where it begins, or
	 * begins where it ends) is not in it. */
	md__libc_syscall = no_query_syscall;
	int r2 = md__range_file_maps(b + 12 * pg, b + 16 * pg, &v, &n);
	md__libc_syscall = NULL;
	ASSERT_EQ(r2, 0);
	ASSERT_EQ(n, 0);
	free(v);
	md__libc_syscall = no_query_syscall;
	r2 = md__range_file_maps(b, b + 4 * pg, &v, &n);
	md__libc_syscall = NULL;
	ASSERT_EQ(r2, 0);
	ASSERT_EQ(n, 0);
	free(v);
	/* Maps' text longer than the reader's buffer, read in many parts:
	 * every line found. */
	enum { MORE = 3000 };
	char *x = mmap(NULL, MORE * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT(x != MAP_FAILED);
	for (size_t i = 0; i < MORE; i++)	/* protections alternating: none joins its neighbour */
		ASSERT(mmap(x + i * pg, pg, i % 2 ? PROT_READ : PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, own,
			    0) == x + i * pg);
	md__libc_syscall = no_query_syscall;
	r1 = md__range_file_maps((uintptr_t)x, (uintptr_t)x + MORE * pg, &v, &n);
	md__libc_syscall = NULL;
	ASSERT_EQ(r1, 0);
	ASSERT_EQ(n, MORE);
	for (size_t i = 0; i < MORE; i++)
		ASSERT(v[i].lo == (uintptr_t)x + i * pg && v[i].hi == v[i].lo + pg && v[i].ino == so.st_ino);
	free(v);
	munmap(x, MORE * pg);
	munmap(m, 16 * pg);
	close(pool);
	close(own);
	return 0;
}

/* syscall(2), but a pread at or past pread_fails_from fails with EIO. */
static off_t pread_fails_from;
static long pread_failing_syscall(long nr, ...)
{
	SYSCALL_ARGS(nr, a);
	if (nr == SYS_pread64 && a[3] >= pread_fails_from) {
		errno = EIO;
		return -1;
	}
	return syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* syscall(2), with an add to adding_to (another thread's mapping made)
 * at the first read of a count. */
static struct md__vmas *adding_to;
static long pread_adding_syscall(long nr, ...)
{
	SYSCALL_ARGS(nr, a);
	if (nr == SYS_pread64 && a[3] == 0 && adding_to)
		md__vmas_add(adding_to, 7);
	return syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* A count of the mappings that cannot read all of maps is no count (0),
 * not the lines read before the failure; and the estimate stays as it
 * was: 0, or a part, would open the mapping budget again. Adds made
 * during a count stay in the estimate. */
TEST_IMPL(vmas_count_failed_keeps_estimate)
{
	enum { MORE = 3000 };	/* maps read in many parts */
	size_t pg = 4096;
	char *x = mmap(NULL, MORE * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT(x != MAP_FAILED);
	for (size_t i = 0; i < MORE; i += 2)
		ASSERT_EQ(mprotect(x + i * pg, pg, PROT_READ), 0);
	uint64_t all = md__count_vmas();
	ASSERT(all > MORE);
	pread_fails_from = 1;	/* the first part read, the next fails */
	md__libc_syscall = pread_failing_syscall;
	uint64_t part = md__count_vmas();
	md__libc_syscall = NULL;
	ASSERT_EQ(part, 0);
	struct md__vmas v = { 0 };
	md__vmas_add(&v, 100000);
	pread_fails_from = 0;
	md__libc_syscall = pread_failing_syscall;
	uint64_t n = md__vmas_count(&v);
	md__libc_syscall = NULL;
	ASSERT_EQ(n, 0);
	ASSERT_EQ(md__vmas_estimate(&v), 100000);
	ASSERT(md__vmas_count(&v) > MORE);
	ASSERT(md__vmas_estimate(&v) > MORE && md__vmas_estimate(&v) < 100000);
	/* A mapping added while the count reads maps may be missing from the
	 * lines: it stays in the estimate. */
	adding_to = &v;
	md__libc_syscall = pread_adding_syscall;
	n = md__vmas_count(&v);
	md__libc_syscall = NULL;
	adding_to = NULL;
	ASSERT_EQ(md__vmas_estimate(&v), n + 7);
	munmap(x, MORE * pg);
	return 0;
}

/* An agent's count of its mappings that fails (/proc/self/maps unreadable)
 * leaves the counter as the last count made, not 0. */
TEST_IMPL(agent_vmas_counter_kept_when_count_fails)
{
	md_agent *a;
	int fd;
	char *m = image_and_ram(&a, "vmas.img", 41, &fd);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT(s.vmas > 0);
	pread_fails_from = 0;	/* every pread: maps and pagemap alike */
	md__libc_syscall = pread_failing_syscall;
	int err = md_agent_stats(a, &s);
	md__libc_syscall = NULL;
	ASSERT_EQ(err, 0);
	ASSERT(s.vmas > 0);
	md_agent_free(a);
	munmap(m, 32 * 4096);
	close(fd);
	return 0;
}

/* A count of the mappings is due when none was made, then not again for
 * a second (each reads all of /proc/self/maps); each count made is counted. */
TEST_IMPL(vmas_counted_once_a_second)
{
	struct md__vmas v = { 0 };
	ASSERT(md__vmas_count_due(&v));
	ASSERT(md__vmas_count(&v) > 0);
	ASSERT_EQ(v.counts, 1);
	ASSERT(!md__vmas_count_due(&v));
	usleep(200 * 1000);
	ASSERT(!md__vmas_count_due(&v));
	v.counted_ns -= 1000000000ull;	/* as a second later */
	ASSERT(md__vmas_count_due(&v));
	return 0;
}

/* A read of maps or smaps that fails part way is an error, not the
 * mappings read before it taken for all of them: a file mapping or a hole
 * missed would be merged over or registered. */
TEST_IMPL(proc_read_failure_is_an_error)
{
	enum { MORE = 400 };	/* maps read in many parts */
	size_t pg = 4096;
	char *x = mmap(NULL, MORE * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT(x != MAP_FAILED);
	for (size_t i = 0; i < MORE; i += 2)
		ASSERT_EQ(mprotect(x + i * pg, pg, PROT_READ), 0);
	uintptr_t lo = (uintptr_t)x, hi = lo + MORE * pg;
	for (off_t from = 0; from < 2; from++) {
		struct md__vma *v = NULL;
		struct md__run *run = NULL;
		size_t n;
		pread_fails_from = from;
		md__libc_syscall = pread_failing_syscall;
		int r[4] = { md__range_file_vmas(0, UINTPTR_MAX, &v, &n), md__range_runs(lo, hi, &run, &n),
			     md__range_vmflags(lo, hi - lo), md__range_userfault_runs(0, UINTPTR_MAX, &run, &n) };
		md__libc_syscall = NULL;
		for (int i = 0; i < 4; i++)
			ASSERT_EQ(r[i], -EIO);
	}
	munmap(x, MORE * pg);
	return 0;
}

/* md__read_text's text ends where the file's does, whatever the buffer
 * held before; a file that cannot be opened leaves it empty. */
TEST_IMPL(read_text_ends_at_file_end)
{
	char path[512], buf[64];
	snprintf(path, sizeof(path), "%s/text", test_dir());
	FILE *f = fopen(path, "w");
	ASSERT(f && fputs("12 34\n", f) >= 0 && fclose(f) == 0);
	memset(buf, 'x', sizeof(buf));
	ASSERT_EQ(md__read_text(path, buf, sizeof(buf)), 6);
	ASSERT(strcmp(buf, "12 34\n") == 0);
	memset(buf, 'x', sizeof(buf));
	ASSERT_EQ(md__read_text(path, buf, 4), 3);	/* cut to the buffer, still a string */
	ASSERT(strcmp(buf, "12 ") == 0);
	memset(buf, 'x', sizeof(buf));
	snprintf(path, sizeof(path), "%s/no-such-text", test_dir());
	ASSERT_EQ(md__read_text(path, buf, sizeof(buf)), -ENOENT);
	ASSERT_EQ(buf[0], 0);
	return 0;
}

/* md__coredump_file_pages runs inside the VMM's calls: when
 * coredump_filter cannot be read, it says so (once) and leaves errno and
 * the filter as they were. */
TEST_IMPL(coredump_filter_failure_keeps_errno)
{
	char text[32];
	FILE *f = fopen("/proc/self/coredump_filter", "r+");
	ASSERT(f && fgets(text, sizeof(text), f));
	unsigned long base = strtoul(text, NULL, 16) & ~MD_COREDUMP_FILE_PRIVATE;
	rewind(f);
	ASSERT(fprintf(f, "%#lx", base) > 0 && fclose(f) == 0);
	pread_fails_from = 0;
	md__libc_syscall = pread_failing_syscall;
	errno = 777;
	md__coredump_file_pages();
	int err = errno;
	md__libc_syscall = NULL;
	ASSERT_EQ(err, 777);
	ASSERT(md__read_text("/proc/self/coredump_filter", text, sizeof(text)) > 0);
	ASSERT_EQ(strtoul(text, NULL, 16), base);
	return 0;
}

TEST_IMPL(range_file_maps_of_a_page)
{
	size_t pg = 4096;
	int pool, own;
	struct stat sp, so;
	char *m = pool_and_own_maps(&pool, &own, &sp, &so);
	uintptr_t b = (uintptr_t)m;
	struct md__file_map *v;
	size_t n;
	ASSERT_EQ(md__range_file_maps(b + 5 * pg, b + 10 * pg, &v, &n), 0);
	pool_then_own(v, n, b, &sp, &so);
	free(v);
	ASSERT_EQ(md__range_file_maps(b, b + 4 * pg, &v, &n), 0);
	ASSERT_EQ(n, 0);
	free(v);
	if (md__range_no_file_vmas(b, b + pg) == -ENOTTY)
		SKIP("this kernel has no PROCMAP_QUERY (Linux 6.11): every line of maps is read");
	/* 20,000 mappings more (one page of the file each, protections
	 * alternating, so that none joins its neighbour). */
	enum { MORE = 20000 };
	char *x = mmap(NULL, MORE * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT(x != MAP_FAILED);
	for (size_t i = 0; i < MORE; i++)
		ASSERT(mmap(x + i * pg, pg, i % 2 ? PROT_READ : PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, own,
			    0) == x + i * pg);
	/* The least of a few of each: a loaded machine may stop either for
	 * milliseconds, which the least of them does not see. */
	double whole = 1e9, page = 1e9;
	for (int k = 0; k < 3; k++) {
		double t0 = units_now();
		ASSERT(md__count_vmas() > MORE);	/* every line of maps */
		double t = units_now() - t0;
		whole = t < whole ? t : whole;
	}
	for (int k = 0; k < 10; k++) {
		double t0 = units_now();
		ASSERT_EQ(md__range_file_maps(b + 5 * pg, b + 6 * pg, &v, &n), 0);
		double t = units_now() - t0;
		page = t < page ? t : page;
		ASSERT(n == 1 && v[0].pool);
		free(v);
	}
	printf("  all of maps read in %.2f ms, the mappings of a page found in %.3f ms\n", whole * 1e3, page * 1e3);
	ASSERT(page * 20 < whole);
	munmap(x, MORE * pg);
	close(pool);
	close(own);
	munmap(m, 16 * pg);
	return 0;
}

/* md__range_file_vmas: only private mappings of files, clipped, with what
 * a mapping replacing one must have again. A MAP_SHARED mapping taken in
 * would be copied into anonymous memory (replace_read_only), where the
 * VMM's writes no longer reach the file; anonymous memory is no file's. */
TEST_IMPL(range_file_vmas_private_files_only)
{
	size_t pg = 4096;
	char *m = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	uintptr_t b = (uintptr_t)m;
	/* A name the pool's only begins: not a pool. */
	int pool = memfd_create("memdedup-pool", MFD_CLOEXEC), own = memfd_create("memdedup-pools", MFD_CLOEXEC);
	ASSERT(pool >= 0 && own >= 0);
	ASSERT_EQ(ftruncate(pool, 4 * pg), 0);
	ASSERT_EQ(ftruncate(own, 8 * pg), 0);
	/* [2, 4) shared, [4, 6) the pool's, read-only, [6, 8) own, read-write
	 * and advised, [8, 10) own again, PROT_NONE and locked. */
	ASSERT(mmap(m + 2 * pg, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, own, 0) == m + 2 * pg);
	ASSERT(mmap(m + 4 * pg, 2 * pg, PROT_READ, MAP_PRIVATE | MAP_FIXED, pool, 0) == m + 4 * pg);
	ASSERT(mmap(m + 6 * pg, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, own, 2 * pg) == m + 6 * pg);
	ASSERT_EQ(madvise(m + 6 * pg, 2 * pg, MADV_DONTDUMP), 0);
	ASSERT_EQ(madvise(m + 6 * pg, 2 * pg, MADV_DONTFORK), 0);
	ASSERT_EQ(madvise(m + 6 * pg, 2 * pg, MADV_MERGEABLE), 0);
	ASSERT(mmap(m + 8 * pg, 2 * pg, PROT_NONE, MAP_PRIVATE | MAP_FIXED, own, 4 * pg) == m + 8 * pg);
	int locked = mlock2(m + 8 * pg, 2 * pg, MLOCK_ONFAULT) == 0;
	struct stat sp, so;
	ASSERT(fstat(pool, &sp) == 0 && fstat(own, &so) == 0);
	struct md__vma *v;
	size_t n;
	ASSERT_EQ(md__range_file_vmas(b + pg, b + 9 * pg, &v, &n), 0);
	ASSERT_EQ(n, 3);
	ASSERT(v[0].lo == b + 4 * pg && v[0].hi == b + 6 * pg && v[0].pool && v[0].prot == PROT_READ);
	ASSERT(v[0].dev == sp.st_dev && v[0].ino == sp.st_ino && !v[0].advice && !v[0].mergeable);
	ASSERT(v[1].lo == b + 6 * pg && v[1].hi == b + 8 * pg && !v[1].pool);
	ASSERT(v[1].dev == so.st_dev && v[1].ino == so.st_ino && v[1].prot == (PROT_READ | PROT_WRITE));
	ASSERT_EQ(v[1].advice, MD_ADV_DONTDUMP | MD_ADV_DONTFORK);
	ASSERT(v[1].mergeable && !v[1].locked);
	ASSERT(v[2].lo == b + 8 * pg && v[2].hi == b + 9 * pg && v[2].prot == 0);	/* clipped */
	ASSERT(!locked || v[2].locked);
	free(v);
	/* The shared mapping alone, and the anonymous memory around: none. */
	ASSERT_EQ(md__range_file_vmas(b, b + 4 * pg, &v, &n), 0);
	ASSERT_EQ(n, 0);
	free(v);
	ASSERT_EQ(md__range_file_vmas(b + 10 * pg, b + 16 * pg, &v, &n), 0);
	ASSERT_EQ(n, 0);
	free(v);
	if (locked)
		munlock(m + 8 * pg, 2 * pg);
	munmap(m, 16 * pg);
	close(pool);
	close(own);
	return 0;
}

/* md__range_vmflags: advice that every mapping of the range has (the
 * agent gives it to all the mappings it makes there: DONTDUMP taken as
 * all of it's would leave guest RAM out of core dumps), and what any has
 * that keeps the range from merging; a mapping beside the range is not in
 * it. */
TEST_IMPL(range_vmflags_any_and_all)
{
	size_t pg = 4096;
	char *m = mmap(NULL, 12 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	uintptr_t b = (uintptr_t)m;
	ASSERT_EQ(madvise(m, 8 * pg, MADV_DONTFORK), 0);
	ASSERT_EQ(madvise(m, 4 * pg, MADV_DONTDUMP), 0);
	ASSERT_EQ(mprotect(m + 8 * pg, pg, PROT_READ), 0);
	ASSERT_EQ(mprotect(m + 11 * pg, pg, PROT_WRITE), 0);	/* writable, not readable */
	/* By the system call: AddressSanitizer's mlock locks nothing. */
	int locked = syscall(SYS_mlock, m + 10 * pg, pg) == 0;
	ASSERT_EQ(md__range_vmflags(b, 4 * pg), (int)(MD_VMF_DONTFORK | MD_VMF_DONTDUMP));
	ASSERT_EQ(md__range_vmflags(b, 8 * pg), (int)MD_VMF_DONTFORK);
	ASSERT_EQ(md__range_vmflags(b + 4 * pg, 4 * pg), (int)MD_VMF_DONTFORK);
	ASSERT_EQ(md__range_vmflags(b + 2 * pg, 7 * pg), (int)MD_VMF_NOT_RW);
	ASSERT_EQ(md__range_vmflags(b + 9 * pg, pg), 0);
	ASSERT_EQ(md__range_vmflags(b + 11 * pg, pg), (int)MD_VMF_NOT_RW);
	if (locked) {
		ASSERT_EQ(md__range_vmflags(b + 9 * pg, 2 * pg), (int)MD_VMF_LOCKED);
		syscall(SYS_munlock, m + 10 * pg, pg);
	}
	munmap(m, 12 * pg);
	return 0;
}

/* md__range_shared: a MAP_SHARED mapping anywhere in the range, and only
 * there (MAP_PRIVATE of the same file is not). */
TEST_IMPL(range_shared_finds_shared_maps)
{
	size_t pg = 4096;
	char *m = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	uintptr_t b = (uintptr_t)m;
	int fd = memfd_create("t", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(ftruncate(fd, 8 * pg), 0);
	ASSERT(mmap(m + 4 * pg, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == m + 4 * pg);
	ASSERT(mmap(m + 6 * pg, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0) == m + 6 * pg);
	ASSERT_EQ(md__range_shared(b, 4 * pg), 0);
	ASSERT_EQ(md__range_shared(b, 16 * pg), 1);
	ASSERT_EQ(md__range_shared(b + 3 * pg, 2 * pg), 1);
	ASSERT_EQ(md__range_shared(b + 5 * pg, pg), 1);
	ASSERT_EQ(md__range_shared(b + 6 * pg, 10 * pg), 0);
	/* The same from maps' lines, where the kernel has no query (before
	 * Linux 6.11); a range that ends where the shared mapping begins, or
	 * begins where it ends, does not share. */
	md__libc_syscall = no_query_syscall;
	int r[6] = { md__range_shared(b, 4 * pg), md__range_shared(b, 16 * pg), md__range_shared(b + 3 * pg, 2 * pg),
		     md__range_shared(b + 5 * pg, pg), md__range_shared(b + 6 * pg, 10 * pg),
		     md__range_shared(b + 2 * pg, 2 * pg) };
	md__libc_syscall = NULL;
	static const int want[6] = { 0, 1, 1, 1, 0, 0 };
	for (int i = 0; i < 6; i++)
		ASSERT_EQ(r[i], want[i]);
	close(fd);
	munmap(m, 16 * pg);
	return 0;
}

/* In the child, after a chroot: 1 if md__range_shared sees the MAP_SHARED
 * page the child made, 0 if it sees none (another process's maps), or
 * -errno. own: the child's first md__proc_open is before the chroot. */
static int chrooted_child_sees(const char *root, int own)
{
	if (own) {
		int fd = md__proc_open("maps", 0);
		if (fd < 0)
			return -errno;
		close(fd);
	}
	char *x = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (x == MAP_FAILED || chroot(root) != 0)
		return -errno;
	return md__range_shared((uintptr_t)x, 4096);
}

/* The files of /proc/self kept for after a chroot are the process's own:
 * a forked child takes its own at its first open, one forked without the
 * atfork handlers (a raw fork) finds none rather than its parent's, and
 * a kept number the VMM closed and reused for another file is not read. */
/* The descriptor number md__proc_open keeps /proc/self/NAME at, or -1. */
static int kept_fd(const char *name)
{
	char link[64], want_link[64], path[300];
	snprintf(want_link, sizeof(want_link), "/proc/%d/%s", (int)getpid(), name);
	for (int i = 0; i < 1024; i++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", i);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		if (n > 0) {
			link[n] = 0;
			if (strcmp(link, want_link) == 0)
				return i;
		}
	}
	return -1;
}

TEST_IMPL(proc_kept_files_are_own)
{
	char root[512];
	snprintf(root, sizeof(root), "%s/empty-root", test_dir());
	ASSERT(mkdir(root, 0755) == 0 || errno == EEXIST);
	int fd = md__proc_open("maps", 0);	/* kept from now on */
	ASSERT(fd >= 0);
	close(fd);
	int kept = kept_fd("maps");
	ASSERT(kept >= 0);
	int want[2] = { 1, -ENOENT };
	for (int raw = 0; raw < 2; raw++) {
		pid_t pid = raw ? (pid_t)syscall(SYS_fork) : fork();
		ASSERT(pid >= 0);
		/* A child of fork() has the parent's closed at once (-EBADF). */
		if (pid == 0 && !raw && fcntl(kept, F_GETFD) >= 0)
			_exit(100 - EBADF);
		if (pid == 0)
			_exit(chrooted_child_sees(root, !raw) + 100);
		int status;
		ASSERT_EQ(waitpid(pid, &status, 0), pid);
		ASSERT(WIFEXITED(status));
		if (WEXITSTATUS(status) == 100 - EPERM)
			SKIP("chroot needs CAP_SYS_CHROOT");
		ASSERT_EQ(WEXITSTATUS(status) - 100, want[raw]);
	}
	/* The kept maps' number, given to another file; pagemap's to
	 * another file of /proc (the same device). */
	int other = memfd_create("not-maps", MFD_CLOEXEC);
	ASSERT(other >= 0 && dup2(other, kept) == kept);
	int pagemap = kept_fd("pagemap"), status = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	ASSERT(pagemap >= 0 && status >= 0 && dup2(status, pagemap) == pagemap);
	ASSERT_EQ(chroot(root), 0);
	errno = 0;
	ASSERT_EQ(md__proc_open("maps", 0), -1);
	ASSERT_EQ(errno, ENOENT);
	ASSERT_EQ(md__proc_open("pagemap", 0), -1);
	const char *own[] = { "smaps", "statm" };	/* still its own, every one kept */
	for (int i = 0; i < 2; i++) {
		fd = md__proc_open(own[i], 0);
		ASSERT(fd >= 0);
		close(fd);
	}
	return 0;
}

/* md__copy_own_pages: copies in p's order (adjacent pages as one range),
 * file pages as well as anonymous ones, and all or nothing: a page that
 * cannot be read leaves p as it was. */
TEST_IMPL(copy_own_pages_all_or_nothing)
{
	int fd = memfd_create("t", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(ftruncate(fd, 4096), 0);
	ASSERT_EQ(pwrite(fd, "file", 4, 0), 4);
	const char *f = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	char *m = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	static char buf[MD_COPY_PAGES_MAX * 4096];
	ASSERT(f != MAP_FAILED && m != MAP_FAILED);
	for (int i = 0; i < 4; i++)
		memset(m + i * 4096, 'a' + i, 4096);
	const void *p[5] = { m + 2 * 4096, m, m + 4096, f, m + 3 * 4096 };
	ASSERT_EQ(md__copy_own_pages(buf, p, 5), 0);
	static const char want[] = "cabfd";
	for (int i = 0; i < 5; i++) {
		ASSERT(p[i] == buf + i * 4096);
		ASSERT_EQ(((const char *)p[i])[i == 3 ? 0 : 4095], want[i]);
	}
	ASSERT_EQ(memcmp(buf + 3 * 4096, "file", 4), 0);
	const void *most[MD_COPY_PAGES_MAX];	/* as many as it takes */
	for (int i = 0; i < MD_COPY_PAGES_MAX; i++)
		most[i] = m + (i % 4) * 4096;
	ASSERT_EQ(md__copy_own_pages(buf, most, MD_COPY_PAGES_MAX), 0);
	ASSERT_EQ(((const char *)most[MD_COPY_PAGES_MAX - 1])[4095], 'a' + (MD_COPY_PAGES_MAX - 1) % 4);

	ASSERT_EQ(munmap(m + 4096, 4096), 0);	/* a hole: nothing to read */
	const void *q[3] = { m, m + 4096, m + 2 * 4096 };
	ASSERT(md__copy_own_pages(buf, q, 3) < 0);
	ASSERT(q[0] == m && q[1] == m + 4096 && q[2] == m + 2 * 4096);
	ASSERT_EQ(md__copy_own_pages(buf, q, MD_COPY_PAGES_MAX + 1), -EINVAL);
	munmap(m, 4 * 4096);
	munmap((void *)f, 4096);
	close(fd);
	return 0;
}

/* md__copy_in copies every byte asked or fails with EFAULT, and
 * md__readable says so beforehand: a VMM's argument that ends in a hole
 * is the kernel's EFAULT, never a copy of what the stack held. */
TEST_IMPL(copy_in_all_or_efault)
{
	char *m = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char dst[64] = { 0 };
	ASSERT(m != MAP_FAILED);
	for (int i = 0; i < 4096; i++)
		m[i] = (char)(i % 251 + 1);
	ASSERT_EQ(munmap(m + 4096, 4096), 0);
	ASSERT_EQ(md__copy_in(dst, m + 4096 - 32, 32), 0);
	ASSERT_EQ(memcmp(dst, m + 4096 - 32, 32), 0);
	ASSERT_EQ(md__readable(m + 4096 - 32, 32), 1);
	memset(dst, 0, sizeof(dst));
	ASSERT_EQ(md__copy_in(dst, m + 4096 - 16, 32), -EFAULT);	/* its end in the hole */
	ASSERT_EQ(md__readable(m + 4096 - 16, 32), 0);
	ASSERT_EQ(md__readable(m + 4096, 8), 0);
	ASSERT_EQ(md__readable(m, 4096), 1);
	munmap(m, 4096);
	/* Where the kernel will not say (a filter refuses process_vm_readv),
	 * md__readable cannot tell: 1, the VMM's call then gets the kernel's
	 * answer; md__copy_in says why. In a child: the filter is for good. */
	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0) {
		struct sock_filter f[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_readv, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
			_exit(2);
		_exit(md__readable(m + 4096, 8) == 1 && md__copy_in(dst, m + 4096, 8) == -EPERM ? 0 : 1);
	}
	int status;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	return 0;
}

/* The agent walks the pages it shared (copy-on-write breaks) only after
 * the pages the process maps moved since its last walk: a write to a
 * private file page moves them by one, whether the page was mapped (read)
 * or not yet; reads of mapped pages do not. (statm counts to the page on
 * this machine's kernel, 6.18; one that left per-CPU deltas out of it
 * would fail the exact counts here, and the agent's gate would only see
 * 64 moved pages late, or walk after 5 minutes anyway.) */
TEST_IMPL(cow_break_changes_resident_pages)
{
	/* Seen: 12 pages more across the break, 4 runs in 5 (its shadow
	 * memory and allocator pages count as the process's too). */
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose own pages change the resident count");
	int fd = memfd_create("t", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(ftruncate(fd, 4 * 4096), 0);
	ASSERT_EQ(pwrite(fd, "shared", 6, 4096), 6);
	ASSERT_EQ(pwrite(fd, "unread", 6, 3 * 4096), 6);
	volatile char *m = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ASSERT(m != MAP_FAILED);
	int statm = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
	ASSERT(statm >= 0);
	struct md__resident before, after, later;
	ASSERT_EQ(md__resident_pages(-1, &before), -EBADF);
	int cut = memfd_create("statm", MFD_CLOEXEC);	/* a statm of two fields: no reading */
	ASSERT(cut >= 0 && write(cut, "100 40\n", 7) == 7);
	ASSERT_EQ(md__resident_pages(cut, &before), -EINVAL);
	close(cut);
	/* Once through all of it first: a forked test maps the runner's
	 * code as it first runs it (file pages too). */
	for (int round = 0; round < 2; round++) {
		ASSERT_EQ(m[4096], 's');	/* mapped by the read */
		ASSERT_EQ(md__resident_pages(statm, &before), 0);
		ASSERT(before.all > 0 && before.files > 0 && before.files <= before.all);
		for (int i = 0; i < 100; i++)
			ASSERT_EQ(m[4096 + i % 6], "shared"[i % 6]);
		ASSERT_EQ(md__resident_pages(statm, &after), 0);
		ASSERT(round == 0 || md__resident_moved(&before, &after) == 0);	/* reads of a mapped page */
	}
	m[4096] = 'S';				/* the break of a mapped page */
	ASSERT_EQ(md__resident_pages(statm, &after), 0);
	ASSERT_EQ(after.all, before.all);	/* a file page became an anonymous one */
	ASSERT_EQ(md__resident_moved(&before, &after), 1);
	/* Page 3: never read here (fault-around may have mapped it with
	 * page 1: drop it from the mapping). */
	ASSERT_EQ(madvise((void *)(m + 3 * 4096), 4096, MADV_DONTNEED), 0);
	ASSERT_EQ(md__resident_pages(statm, &after), 0);
	m[3 * 4096] = 'U';			/* the break of an unmapped page */
	ASSERT_EQ(md__resident_pages(statm, &later), 0);
	ASSERT_EQ(later.files, after.files);	/* a new anonymous page */
	ASSERT_EQ(md__resident_moved(&after, &later), 1);
	ASSERT_EQ(md__resident_moved(&later, &after), 1);
	char c;
	ASSERT_EQ(pread(fd, &c, 1, 4096), 1);
	ASSERT_EQ(c, 's');
	ASSERT_EQ(pread(fd, &c, 1, 3 * 4096), 1);
	ASSERT_EQ(c, 'u');
	close(statm);
	munmap((void *)m, 4 * 4096);
	close(fd);
	return 0;
}

/* A quiet process is walked again only when its pages moved enough for a
 * walk to find something: 64, or any after 5 minutes. */
TEST_IMPL(quiet_walks_wait_for_moved_pages)
{
	struct md__resident then = { 1000, 400 }, now = then;
	ASSERT(md__walk_worth(0, &now, &then, 0));	/* not known: walk */
	ASSERT(!md__walk_worth(1, &now, &then, 100000));
	now.all += 40;
	now.files -= 23;
	ASSERT(!md__walk_worth(1, &now, &then, 299));
	ASSERT(md__walk_worth(1, &now, &then, 300));
	now.files--;
	ASSERT(md__walk_worth(1, &now, &then, 60));
	ASSERT(md__walk_worth(1, &then, &now, 60));
	return 0;
}

/* A range as runs mapped and not, from /proc/self/maps: what a failed
 * munmap or mmap left is told apart from what it took. */
TEST_IMPL(range_runs_mapped_and_gone)
{
	char *m = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT(munmap(m + 2 * 4096, 2 * 4096) == 0);
	ASSERT(munmap(m + 7 * 4096, 4096) == 0);
	/* Two mappings of different protection side by side: one run. */
	ASSERT(mprotect(m + 4 * 4096, 4096, PROT_READ) == 0);
	uintptr_t a = (uintptr_t)m;
	struct md__run *run;
	size_t n;
	ASSERT_EQ(md__range_runs(a + 4096, a + 8 * 4096, &run, &n), 0);
	ASSERT_EQ(n, 4);
	const struct md__run want[] = {
		{ a + 4096, a + 2 * 4096, 1 }, { a + 2 * 4096, a + 4 * 4096, 0 },
		{ a + 4 * 4096, a + 7 * 4096, 1 }, { a + 7 * 4096, a + 8 * 4096, 0 },
	};
	for (size_t i = 0; i < n; i++) {
		ASSERT_EQ(run[i].lo, want[i].lo);
		ASSERT_EQ(run[i].hi, want[i].hi);
		ASSERT_EQ(run[i].mapped, want[i].mapped);
	}
	free(run);
	/* From the end of a mapping: nothing of it, not even an empty run. */
	ASSERT_EQ(md__range_runs(a + 2 * 4096, a + 4 * 4096, &run, &n), 0);
	ASSERT_EQ(n, 1);
	ASSERT(run[0].lo == a + 2 * 4096 && run[0].hi == a + 4 * 4096 && !run[0].mapped);
	free(run);
	munmap(m, 7 * 4096);
	return 0;
}

struct mappings_seen {
	size_t n;
	uintptr_t lo[8], hi[8];
};

static void mapping_seen(void *arg, uintptr_t lo, uintptr_t hi)
{
	struct mappings_seen *s = arg;
	if (s->n < 8) {
		s->lo[s->n] = lo;
		s->hi[s->n] = hi;
	}
	s->n++;
	/* Merges the mapping with its neighbours: the calls after are
	 * still the mappings as they were. */
	mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE);
}

/* md__range_mappings calls its function once for each mapping that
 * overlaps the range, clipped to it: a registration of a mapping's part
 * outside the range would take the VMM's neighbouring memory too. */
TEST_IMPL(range_mappings_clipped)
{
	char *m = mmap(NULL, 6 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	uintptr_t a = (uintptr_t)m;
	ASSERT(mprotect(m + 2 * 4096, 2 * 4096, PROT_READ) == 0);
	struct mappings_seen s = { 0 };
	ASSERT_EQ(md__range_mappings(a + 4096, a + 5 * 4096, mapping_seen, &s), 0);
	ASSERT_EQ(s.n, 3);
	const uintptr_t want[][2] = { { a + 4096, a + 2 * 4096 }, { a + 2 * 4096, a + 4 * 4096 },
				      { a + 4 * 4096, a + 5 * 4096 } };
	for (size_t i = 0; i < 3; i++) {
		ASSERT_EQ(s.lo[i], want[i][0]);
		ASSERT_EQ(s.hi[i], want[i][1]);
	}
	ASSERT(mprotect(m + 2 * 4096, 2 * 4096, PROT_READ) == 0);
	s = (struct mappings_seen){ 0 };	/* the one that starts at its end is none of it */
	ASSERT_EQ(md__range_mappings(a + 2 * 4096, a + 4 * 4096, mapping_seen, &s), 0);
	ASSERT_EQ(s.n, 1);
	ASSERT_EQ(s.lo[0], a + 2 * 4096);
	ASSERT_EQ(s.hi[0], a + 4 * 4096);
	munmap(m, 6 * 4096);
	return 0;
}

/* io_uring_register: only operations known to leave user memory alone
 * (files, eventfds, the workers, ...) let merging go on. */
TEST_IMPL(uring_register_judged)
{
	ASSERT(md__uring_register_pins(IORING_REGISTER_BUFFERS));
	ASSERT(md__uring_register_pins(IORING_REGISTER_BUFFERS2));
	ASSERT(md__uring_register_pins(IORING_REGISTER_BUFFERS_UPDATE));
	ASSERT(md__uring_register_pins(IORING_REGISTER_BUFFERS | (1u << 31)));	/* a registered ring's */
	ASSERT(md__uring_register_pins(30));	/* Linux 6.13's CLONE_BUFFERS: not known here */
	ASSERT(md__uring_register_pins(33));	/* RESIZE_RINGS */
	ASSERT(!md__uring_register_pins(IORING_REGISTER_FILES));
	ASSERT(!md__uring_register_pins(IORING_REGISTER_EVENTFD | (1u << 31)));
	ASSERT(!md__uring_register_pins(IORING_UNREGISTER_BUFFERS));
	ASSERT(!md__uring_register_pins(IORING_REGISTER_FILE_ALLOC_RANGE));
	return 0;
}

/* The entries a liburing submit hands the kernel are judged one by one,
 * from sqe_head to sqe_tail around the ring, never more than it holds. */
TEST_IMPL(uring_entries_judged)
{
	struct io_uring_sqe sqes[2 * 8];
	struct io_uring r;
	memset(&r, 0, sizeof(r));
	memset(sqes, 0, sizeof(sqes));
	ASSERT(!md__uring_submits_writes(NULL));
	ASSERT(!md__uring_submits_writes(&r));	/* not set up */
	r.sq.sqes = sqes;
	r.sq.sqe_tail = 1;
	/* liburing 2.1/2.2's layout: padding where mask and entries are. */
	ASSERT(md__uring_submits_writes(&r));
	unsigned kmask = 7;
	r.sq.kring_mask = &kmask;
	r.sq.ring_entries = 8;
	ASSERT(md__uring_submits_writes(&r));	/* no mask */
	r.sq.ring_mask = 7;
	kmask = 15;
	ASSERT(md__uring_submits_writes(&r));	/* not the kernel's */
	kmask = 7;
	for (unsigned i = 0; i < 8; i++)
		sqes[i].opcode = i % 2 ? IORING_OP_POLL_ADD : IORING_OP_TIMEOUT;
	r.sq.sqe_head = 0xfffffffe;	/* the counters wrap */
	r.sq.sqe_tail = 6;
	ASSERT(!md__uring_submits_writes(&r));
	sqes[5].opcode = IORING_OP_READV;	/* index 5: past the wrap */
	ASSERT(md__uring_submits_writes(&r));
	r.sq.sqe_tail = 5;			/* not queued */
	ASSERT(!md__uring_submits_writes(&r));
	sqes[5].opcode = IORING_OP_MADVISE;	/* may discard guest RAM */
	r.sq.sqe_tail = 6;
	ASSERT(md__uring_submits_writes(&r));
	sqes[5].opcode = IORING_OP_WRITE;	/* may pin what it sends (O_DIRECT) */
	ASSERT(md__uring_submits_writes(&r));
	sqes[5].opcode = IORING_OP_SEND;
	ASSERT(!md__uring_submits_writes(&r));
	sqes[5].msg_flags = MSG_ZEROCOPY;	/* pins what it sends until sent */
	ASSERT(md__uring_submits_writes(&r));
	sqes[5].opcode = IORING_OP_SENDMSG;
	ASSERT(md__uring_submits_writes(&r));
	sqes[5].msg_flags = MSG_DONTWAIT;
	ASSERT(!md__uring_submits_writes(&r));
	sqes[5].ioprio = IORING_RECVSEND_FIXED_BUF;	/* a registered buffer */
	ASSERT(md__uring_submits_writes(&r));
	sqes[5].ioprio = 0;
	r.sq.sqe_head = 100;			/* corrupt: still one lap */
	sqes[(100 + 8) & 7].opcode = IORING_OP_READ;
	ASSERT(md__uring_submits_writes(&r));
	sqes[(100 + 8) & 7].opcode = IORING_OP_NOP;
	ASSERT(!md__uring_submits_writes(&r));
	/* 128-byte entries: entry i is sqes[2 * i]. */
	r.flags = IORING_SETUP_SQE128;
	r.sq.sqe_head = 0;
	r.sq.sqe_tail = 2;
	ASSERT(!md__uring_submits_writes(&r));
	sqes[2].opcode = IORING_OP_RECV;
	ASSERT(md__uring_submits_writes(&r));
	sqes[2].opcode = IORING_OP_NOP;
	sqes[1].opcode = IORING_OP_RECV;	/* the second half of entry 0 */
	ASSERT(!md__uring_submits_writes(&r));
	ASSERT(md__ioctl_maps_dma(VFIO_IOMMU_MAP_DMA));
	ASSERT(md__ioctl_maps_dma(VFIO_IOMMU_MAP_DMA | (1ul << 40)));	/* high bits ignored, as the kernel does */
	ASSERT(!md__ioctl_maps_dma(VFIO_IOMMU_UNMAP_DMA));
	ASSERT(md__ioctl_maps_dma(VHOST_VDPA_GET_DEVICE_ID));
	ASSERT(md__ioctl_maps_dma(VHOST_VDPA_GET_IOVA_RANGE));
	ASSERT(!md__ioctl_maps_dma(VHOST_GET_FEATURES));	/* vhost-net too */
	ASSERT(!md__ioctl_maps_dma(VHOST_NET_SET_BACKEND));
	ASSERT(md__ioctl_maps_dma(VHOST_SCSI_SET_ENDPOINT));	/* the target writes pinned frames */
	ASSERT(md__ioctl_maps_dma(_IO(';', 0x85)));	/* iommufd's IOMMU_IOAS_MAP */
	return 0;
}

struct discards {
	unsigned n;
	uintptr_t addr[8];
	size_t len[8];
	int advice[8];
};

static void discard_seen(void *arg, void *addr, size_t len, int advice)
{
	struct discards *d = arg;
	if (d->n < 8) {
		d->addr[d->n] = (uintptr_t)addr;
		d->len[d->n] = len;
		d->advice[d->n] = advice;
	}
	d->n++;
}

/* The MADVISE entries of a liburing submit whose discard the agent does
 * first, as the kernel will: those advising a discard (DONTNEED, its
 * locked form, FREE, guard pages), with the length the kernel takes (its
 * 64-bit off before the 32-bit len), whole pages. An entry the kernel
 * refuses (a buffer index, a file, an unaligned start) discards nothing:
 * emptied by the agent, the guest's pages there were lost. Other advice
 * (WILLNEED) and other opcodes (FADVISE) leave RAM as it is. */
TEST_IMPL(uring_discards_as_kernel)
{
	struct io_uring_sqe sqes[8];
	struct io_uring r;
	unsigned kmask = 7;
	memset(&r, 0, sizeof(r));
	memset(sqes, 0, sizeof(sqes));
	r.sq.sqes = sqes;
	r.sq.kring_mask = &kmask;
	r.sq.ring_entries = 8;
	r.sq.ring_mask = 7;
	r.sq.sqe_head = 6;
	r.sq.sqe_tail = 6 + 8;
	const int advice[8] = { MADV_DONTNEED, MADV_FREE, MADV_DONTNEED_LOCKED, MADV_WILLNEED,
				MADV_DONTNEED, MADV_DONTNEED, MADV_DONTNEED, MADV_DONTNEED };
	for (unsigned i = 0; i < 8; i++) {
		struct io_uring_sqe *e = &sqes[(6 + i) & 7];
		e->opcode = IORING_OP_MADVISE;
		e->addr = 0x100000 + i * 0x10000;
		e->len = 4096 + 1;	/* rounded up to whole pages */
		e->fadvise_advice = (unsigned)advice[i];
	}
	sqes[(6 + 4) & 7].buf_index = 1;	/* refused by the kernel */
	sqes[(6 + 5) & 7].splice_fd_in = 3;	/* refused too */
	sqes[(6 + 6) & 7].addr += 512;		/* not page-aligned: refused */
	sqes[(6 + 7) & 7].off = 3 * 4096;	/* the 64-bit length */
	struct discards d = { 0 };
	md__uring_discards(&r, discard_seen, &d);
	ASSERT_EQ(d.n, 4);
	const uintptr_t want_addr[4] = { 0x100000, 0x110000, 0x120000, 0x170000 };
	const size_t want_len[4] = { 8192, 8192, 8192, 3 * 4096 };
	const int want_advice[4] = { MADV_DONTNEED, MADV_FREE, MADV_DONTNEED_LOCKED, MADV_DONTNEED };
	for (unsigned i = 0; i < 4; i++) {
		ASSERT_EQ(d.addr[i], want_addr[i]);
		ASSERT_EQ(d.len[i], want_len[i]);
		ASSERT_EQ(d.advice[i], want_advice[i]);
	}
	/* FADVISE carries its advice in the same field: not a discard. */
	for (unsigned i = 0; i < 8; i++)
		sqes[i].opcode = IORING_OP_FADVISE;
	d.n = 0;
	md__uring_discards(&r, discard_seen, &d);
	ASSERT_EQ(d.n, 0);
	return 0;
}

/* The io_uring operations that let merging go on are these alone: any
 * other, of those this liburing knows, may write, pin or discard guest
 * RAM (a read, a receive, statx's buffer, provided buffers, madvise). */
TEST_IMPL(uring_opcodes_judged_by_list)
{
	static const unsigned leave[] = { IORING_OP_NOP, IORING_OP_FSYNC, IORING_OP_SYNC_FILE_RANGE,
					  IORING_OP_FALLOCATE, IORING_OP_FADVISE, IORING_OP_POLL_ADD,
					  IORING_OP_POLL_REMOVE, IORING_OP_TIMEOUT, IORING_OP_TIMEOUT_REMOVE,
					  IORING_OP_LINK_TIMEOUT, IORING_OP_ASYNC_CANCEL, IORING_OP_CLOSE,
					  IORING_OP_SHUTDOWN, IORING_OP_SEND, IORING_OP_SENDMSG };
	struct io_uring_sqe sqes[8];
	struct io_uring r;
	unsigned kmask = 7;
	memset(&r, 0, sizeof(r));
	r.sq.sqes = sqes;
	r.sq.kring_mask = &kmask;
	r.sq.ring_entries = 8;
	r.sq.ring_mask = 7;
	r.sq.sqe_tail = 1;
	for (unsigned op = 0; op < IORING_OP_LAST; op++) {
		int listed = 0;
		for (size_t k = 0; k < sizeof(leave) / sizeof(leave[0]); k++)
			listed |= leave[k] == op;
		memset(sqes, 0, sizeof(sqes));
		sqes[0].opcode = (uint8_t)op;
		if (md__uring_submits_writes(&r) != !listed) {
			printf("  opcode %u judged %s\n", op, listed ? "a write" : "leaving memory alone");
			ASSERT(0);
		}
	}
	return 0;
}

TEST_IMPL(parse_bool_strict)
{
	/* The words of yes and no, in any case; nothing else (the agent's
	 * MEMDEDUP_DISABLE=false once disabled it). */
	const char *yes[] = { "1", "on", "yes", "true", "ON", "Yes", "TRUE" };
	const char *no[] = { "0", "off", "no", "false", "OFF", "No", "False" };
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		ASSERT_EQ(md__parse_bool(yes[i]), 1);
		ASSERT_EQ(md__parse_bool(no[i]), 0);
	}
	const char *bad[] = { "", "2", "-1", "y", "n", "t", "f", "enable", "disabled", " 1", "1 ",
			      "on\n", "yess", "00", "01", "truefalse" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ASSERT_EQ(md__parse_bool(bad[i]), -EINVAL);
	return 0;
}

/* m encoded, the u32 at payload offset off set to v (off < 0: left), and
 * decoded: md__msg_decode's result. */
static int decoded_with(struct md__msg *m, int off, uint32_t v)
{
	static unsigned char b[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	static struct md__msg out;
	ssize_t n = md__msg_encode(m, b, sizeof(b));
	if (n < 0)
		return (int)n;
	for (int i = 0; off >= 0 && i < 4; i++)
		b[MD_MSG_HDR_SIZE + off + i] = (unsigned char)(v >> (8 * i));
	return md__msg_decode(b, (size_t)n, &out);
}

/* The rules the protocol's encoder and decoder share (a tunable's range, a
 * key's or a text's characters, a domain's length): broken in a message
 * received, it is refused; broken in one to send, it does not encode. Each
 * value just past a bound is refused, the bound itself taken. */
TEST_IMPL(proto_shared_rules)
{
	static struct md__msg m;
	static unsigned char b[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	static const struct { int off; uint32_t ok, bad; } tun[] = {
		{ 16, 1, 0 }, { 16, MD_PAGES_TO_SCAN_MAX, MD_PAGES_TO_SCAN_MAX + 1 },
		{ 20, MD_SLEEP_MS_MAX, MD_SLEEP_MS_MAX + 1 },
		{ 24, 1, 0 }, { 24, MD_CPU_PERCENT_MAX, MD_CPU_PERCENT_MAX + 1 },
		{ 28, MD_ORDER_RANDOM, MD_ORDER_RANDOM + 1 },
		{ 32, MD_HINT_RATIO_MAX, MD_HINT_RATIO_MAX + 1 },
	};

	/* WELCOME's tunables: pages_to_scan, sleep_millisecs, cpu_percent,
	 * order, hint_ratio at offsets 16 to 32. */
	m = (struct md__msg){ .hdr.type = MD_MSG_WELCOME };
	m.u.welcome.pool_pages = 16;
	md__tunables_default(&m.u.welcome.tun);
	for (size_t i = 0; i < sizeof(tun) / sizeof(tun[0]); i++) {
		ASSERT_EQ(decoded_with(&m, tun[i].off, tun[i].ok), 0);
		ASSERT_EQ(decoded_with(&m, tun[i].off, tun[i].bad), -EBADMSG);
	}
	m.u.welcome.tun.hint_ratio = MD_HINT_RATIO_MAX + 1;
	ASSERT_EQ(md__msg_encode(&m, b, sizeof(b)), -EINVAL);

	/* SET's key and value: visible ASCII but '='. The key is
	 * "pages_to_scan", bytes 16 to 28 of the payload, the value "200"
	 * bytes 29 to 31. */
	m = (struct md__msg){ .hdr.type = MD_MSG_CONTROL };
	m.u.control.op = MD_CTL_SET;
	strcpy(m.u.control.key, "pages_to_scan");
	strcpy(m.u.control.value, "200");
	ASSERT_EQ(decoded_with(&m, 16, 0x7e7e7e7eu), 0);			/* "~~~~" */
	ASSERT_EQ(decoded_with(&m, 16, 0x7e7e3d7eu), -EBADMSG);		/* "~=~~" */
	ASSERT_EQ(decoded_with(&m, 16, 0x7e7e7f7eu), -EBADMSG);		/* DEL */
	ASSERT_EQ(decoded_with(&m, 28, 0x30307e6eu), 0);			/* the key's last, "~00" */
	ASSERT_EQ(decoded_with(&m, 28, 0x3030806eu), -EBADMSG);		/* a value byte past ASCII */
	strcpy(m.u.control.value, "2=0");
	ASSERT_EQ(md__msg_encode(&m, b, sizeof(b)), -EINVAL);

	/* Texts: printable ASCII and tabs, MD_TEXT_MAX bytes at most. */
	m = (struct md__msg){ .hdr.type = MD_MSG_ERROR };
	m.u.text.status = -EINVAL;
	strcpy(m.u.text.text, "a\tb~");
	ASSERT_EQ(decoded_with(&m, -1, 0), 0);
	ASSERT_EQ(decoded_with(&m, 6, 0x7e620961u), 0);
	ASSERT_EQ(decoded_with(&m, 6, 0x7f620961u), -EBADMSG);		/* DEL */
	ASSERT_EQ(decoded_with(&m, 6, 0xc3620961u), -EBADMSG);		/* UTF-8's first byte */
	memset(m.u.text.text, 'x', MD_TEXT_MAX);
	ASSERT_EQ(decoded_with(&m, -1, 0), 0);
	m.u.text.text[MD_TEXT_MAX] = 'x';	/* unterminated: a byte too long */
	ASSERT_EQ(md__msg_encode(&m, b, sizeof(b)), -EINVAL);
	/* The longest text goes in CONTROL_DONE (behind its token) too. */
	m = (struct md__msg){ .hdr.type = MD_MSG_CONTROL_DONE };
	m.u.control_done.token = 1;
	memset(m.u.control_done.result.text, 'x', MD_TEXT_MAX);
	ASSERT_EQ(decoded_with(&m, -1, 0), 0);

	/* Domains: the agent's and the CLI's names, copied into a HELLO's
	 * array of MD_DOMAIN_MAX bytes and its NUL. */
	char dom[MD_DOMAIN_MAX + 2];
	memset(dom, 'd', sizeof(dom) - 1);
	dom[MD_DOMAIN_MAX + 1] = '\0';
	ASSERT(!md__domain_valid(dom, MD_DOMAIN_MAX + 1));
	ASSERT(md__domain_valid(dom, MD_DOMAIN_MAX));
	m = (struct md__msg){ .hdr.type = MD_MSG_HELLO };
	m.u.hello.pid = 1;
	memcpy(m.u.hello.domain, dom, MD_DOMAIN_MAX);	/* the longest, sent and taken */
	ASSERT_EQ(decoded_with(&m, -1, 0), 0);
	return 0;
}

/* md__printable, as its header says: printable UTF-8 kept, one '?' for
 * each control (C0, DEL, C1), invisible format character (zero widths,
 * the bidirectional overrides that reorder a line, BOM) and byte that is
 * not UTF-8 (a continuation byte missing, overlong forms, surrogates);
 * cut before a character that would not fit, the NUL within size. */
static int printable_is(const char *in, const char *want)
{
	char buf[64];
	return strcmp(md__printable(in, buf, sizeof(buf)), want) == 0;
}

TEST_IMPL(printable_text)
{
	ASSERT(printable_is("vm-1 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "vm-1 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
	ASSERT(printable_is("a\tb\x1b[2J\x7f\xc2\x9b", "a?b?[2J??"));
	ASSERT(printable_is("\xe2\x80\xae" "exe.txt", "?exe.txt"));		/* U+202E */
	ASSERT(printable_is("x\xe2\x80\x8by\xef\xbb\xbf\xe2\x81\xa0", "x?y??"));	/* U+200B, BOM, U+2060 */
	ASSERT(printable_is("\xe2\x80\xafz", "\xe2\x80\xafz"));			/* U+202F: shown */
	ASSERT(printable_is("\xc3(", "?("));					/* no continuation */
	ASSERT(printable_is("\xe2\x28\xa1", "?(?"));
	ASSERT(printable_is("\xc0\xaf\xe0\x80\xaf", "?????"));			/* overlong '/' */
	ASSERT(printable_is("\xed\xa0\x80", "???"));				/* U+D800 */
	ASSERT(printable_is("\xf4\x90\x80\x80\xff", "?????"));			/* past U+10FFFF */
	/* Cut to fit: 5 bytes hold 4 characters and the NUL; the euro sign
	 * (3 bytes) is left out whole. A canary past size stays. */
	char buf[8];
	memset(buf, 'Z', sizeof(buf));
	ASSERT(strcmp(md__printable("abcdef", buf, 5), "abcd") == 0);
	ASSERT_EQ(buf[5], 'Z');
	ASSERT(strcmp(md__printable("ab\xe2\x82\xac", buf, 5), "ab") == 0);
	ASSERT(strcmp(md__printable("ab\x1b", buf, 4), "ab?") == 0);
	memset(buf, 'Z', sizeof(buf));
	ASSERT(strcmp(md__printable("abc\x1b", buf, 4), "abc") == 0);
	ASSERT_EQ(buf[4], 'Z');
	ASSERT(strcmp(md__printable("x", buf, 1), "") == 0);
	return 0;
}

TEST_IMPL(index_resists_chosen_tags)
{
	enum { N = 50000, LOOKUPS = 1000, COPIES = 1000 };
	uint64_t *slot_hash = calloc(N + COPIES, sizeof(*slot_hash));
	struct md__index ix;
	ASSERT(slot_hash);
	ASSERT_EQ(md__index_init(&ix, 1024), 0);
	/* Tags alike in their low 16 bits: placed by those bits, they all
	 * fell in two buckets, a run of tens of thousands each. */
	for (uint32_t k = 1; k <= N; k++) {
		slot_hash[k - 1] = (uint64_t)(k << 16) << 32 | k;
		ASSERT_EQ(md__index_insert(&ix, slot_hash[k - 1], k - 1), 0);
	}
	ASSERT(ix.probes <= (uint64_t)N * 16);
	/* A tag indexed, with another low half: past the filter, and no entry
	 * has the whole hash. */
	uint64_t before = ix.probes;
	for (uint32_t k = 1; k <= LOOKUPS; k++) {
		uint64_t p = ix.probes;
		ASSERT_EQ(md__index_find_hash(&ix, (uint64_t)(k << 16) << 32 | 0xdead, slot_hash), -1);
		ASSERT(ix.probes - p <= MD_INDEX_PROBES);
	}
	ASSERT(ix.probes - before <= (uint64_t)LOOKUPS * 16);

	/* One page published over and over has one tag, under any key: the
	 * run stays bounded, the copies past it are refused. */
	const uint64_t same = 0x123456789abcdef0ull;
	size_t placed = 0;
	for (uint32_t j = 0; j < COPIES; j++) {
		uint64_t p = ix.probes;
		slot_hash[N + j] = same;
		int err = md__index_insert(&ix, same, N + j);
		ASSERT(err == 0 || err == -ENOSPC);
		placed += !err;
		ASSERT(ix.probes - p <= MD_INDEX_PROBES);
	}
	ASSERT(placed >= 1 && placed <= MD_INDEX_PROBES);
	ASSERT_EQ(ix.live, N + placed);
	uint64_t p = ix.probes;
	ASSERT_EQ(md__index_find_hash(&ix, (same & ~0xffffffffull) | 1, slot_hash), -1);
	ASSERT(ix.probes - p <= MD_INDEX_PROBES);
	int64_t s = md__index_find_hash(&ix, same, slot_hash);
	ASSERT(s >= N && slot_hash[s] == same);
	/* What the bound cut short is a miss, never another entry. */
	for (uint32_t k = 0; k < N; k++)
		ASSERT_EQ(md__index_find_hash(&ix, slot_hash[k], slot_hash), k);
	size_t removed = 0;
	for (uint32_t j = 0; j < COPIES; j++) {
		int err = md__index_remove(&ix, same, N + j);
		ASSERT(err == 0 || err == -ENOENT);
		removed += !err;
	}
	ASSERT_EQ(removed, placed);
	ASSERT_EQ(ix.live, N);
	md__index_free(&ix);
	free(slot_hash);
	return 0;
}

/* Where index.c puts a tag in a table of cap entries under key (its
 * place(): splitmix64's finalizer of tag ^ key). */
static size_t index_bucket_of(uint64_t key, uint32_t tag, size_t cap)
{
	uint64_t x = (uint64_t)tag ^ key;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return (size_t)(x ^ (x >> 31)) & (cap - 1);
}

/* Past half full, a run of MD_INDEX_PROBES made of different tags (many
 * near one bucket, by chance or chosen against a guessed key) is broken up
 * by a bigger table: the insert that found no room succeeds, where refusing
 * it would lose that page's merges for nothing. */
TEST_IMPL(index_full_run_grows)
{
	enum { CAP = 1024, SPREAD = 520, CROWD = 190 };
	uint64_t *slot_hash = calloc(SPREAD + CROWD, sizeof(*slot_hash));
	struct md__index ix;
	ASSERT(slot_hash);
	ASSERT_EQ(md__index_init(&ix, CAP), 0);
	ASSERT_EQ(ix.cap, CAP);
	ix.key = 0x5eed;	/* known, so that tags can be chosen against it */
	uint32_t n = 0, tag = 1;
	for (; n < SPREAD; n++, tag++)
		slot_hash[n] = (uint64_t)(tag * 2654435761u) << 32 | n;
	/* Different tags, all of one bucket: their run takes in the spread
	 * entries after it, past MD_INDEX_PROBES well before 70 % use. */
	for (uint32_t t = 1; n < SPREAD + CROWD; t++)
		if (index_bucket_of(ix.key, t, CAP) == 7) {
			slot_hash[n] = (uint64_t)t << 32 | n;
			n++;
		}
	for (uint32_t i = 0; i < n; i++)
		ASSERT_EQ(md__index_insert(&ix, slot_hash[i], i), 0);
	ASSERT(n * 10 < CAP * 7);
	ASSERT_EQ(ix.cap, 2 * CAP);	/* grown for the run, not for its use */
	for (uint32_t i = 0; i < n; i++)
		ASSERT_EQ(md__index_find_hash(&ix, slot_hash[i], slot_hash), i);
	md__index_free(&ix);
	free(slot_hash);
	return 0;
}

static const unsigned char *run_page_wanted;
static const void *run_page(void *arg, uint32_t slot)
{
	static const unsigned char other[4096];
	return slot == *(const uint32_t *)arg ? run_page_wanted : other;
}

/* A run of one tag is as long as MD_INDEX_PROBES: every lookup and
 * removal looks at all of it, the last entry too. */
TEST_IMPL(index_whole_run_searched)
{
	enum { P = MD_INDEX_PROBES };
	uint64_t slot_hash[P + 1];
	static unsigned char page[4096];
	struct md__index ix;
	ASSERT_EQ(md__index_init(&ix, 4096), 0);
	for (uint32_t i = 0; i <= P; i++) {
		slot_hash[i] = 0xfeedf00dull << 32 | i;	/* one tag, whole hashes apart */
		ASSERT_EQ(md__index_insert(&ix, slot_hash[i], i), i < P ? 0 : -ENOSPC);
	}
	for (uint32_t i = 0; i < P; i++)
		ASSERT_EQ(md__index_find_hash(&ix, slot_hash[i], slot_hash), i);
	ASSERT_EQ(md__index_find_hash(&ix, slot_hash[P], slot_hash), -1);
	/* Only the last one's bytes are the page's. */
	uint32_t last = P - 1;
	memset(page, 0x3c, sizeof(page));
	run_page_wanted = page;
	ASSERT_EQ(md__index_find(&ix, slot_hash[0], page, run_page, &last), last);
	for (uint32_t i = P; i-- > 0;)
		ASSERT_EQ(md__index_remove(&ix, slot_hash[i], i), 0);
	ASSERT_EQ(ix.live, 0);
	ASSERT(!md__index_has(&ix, slot_hash[0]));
	md__index_free(&ix);
	return 0;
}

TEST_IMPL(scan_off_hint_says_what_to_do)
{
	/* Opening /dev/userfaultfd fails with EACCES, the syscall with EPERM:
	 * both say what to change. */
	ASSERT(strstr(md__uffd_hint(-EACCES), "vm.unprivileged_userfaultfd=1"));
	ASSERT(strstr(md__uffd_hint(-EACCES), "/dev/userfaultfd"));
	ASSERT(strstr(md__uffd_hint(-EPERM), "vm.unprivileged_userfaultfd=1"));
	ASSERT(strstr(md__uffd_hint(-ENOSYS), "userfaultfd unavailable"));
	ASSERT_EQ(strlen(md__uffd_hint(-ENOMEM)), 0);
	return 0;
}

/* What an unmerge's copies may take, where the limit is on a cgroup above
 * more levels without one than the agent keeps (MD_MEMROOM_LEVELS): cgroup
 * v1 says "no limit" with a number (2^63 less a page), which was taken for
 * a limit, so the nearest unlimited levels were kept and the real limit
 * above them never read: the host's free memory was the room. The kept
 * levels are read only where /proc does not show the cgroup (after a
 * chroot): looked at both ways, through /proc and without it. */
TEST_IMPL(memroom_limit_above_unlimited_levels)
{
	struct test_cgroup cg;
	char deepest[1024], buf[4096];
	if (cgroup_make(&cg) != 0)
		SKIP("no memory cgroup of our own to be had here");
	ASSERT(md__read_text("/proc/meminfo", buf, sizeof(buf)) > 0 && strstr(buf, "MemAvailable:"));
	uint64_t host = strtoull(strstr(buf, "MemAvailable:") + 13, NULL, 10) * 1024;
	/* Without /proc the host's room is sysinfo's free memory: the limit
	 * well below both, or the bug's room (the host's) passes for it. */
	struct sysinfo si;
	ASSERT_EQ(sysinfo(&si), 0);
	uint64_t host_free = ((uint64_t)si.freeram + si.bufferram) * si.mem_unit;
	uint64_t limit = (host_free < host ? host_free : host) / 4;
	ASSERT(limit > (64ull << 20));
	ASSERT_EQ(cgroup_limit(&cg, limit), 0);
	ASSERT_EQ(cgroup_nest(&cg, MD_MEMROOM_LEVELS + 1, deepest, sizeof(deepest)), 0);
	int p[2];
	ASSERT_EQ(pipe(p), 0);
	pid_t c = fork();
	ASSERT(c >= 0);
	if (c == 0) {
		/* "0" moves the writer itself. */
		uint64_t room[2] = { 0, 0 };
		struct md__memroom m;
		if (write_text(deepest, "cgroup.procs", "0") == 0 && md__memroom_open(&m) == 0) {
			room[0] = md__memroom_available(&m);
			md__memroom_proc = "/nonexistent-proc";	/* as in a chroot */
			room[1] = md__memroom_available(&m);
			md__memroom_proc = "/proc";
			md__memroom_close(&m);
		}
		_exit(write(p[1], room, sizeof(room)) == (ssize_t)sizeof(room) ? 0 : 1);
	}
	close(p[1]);
	uint64_t room[2] = { 0, 0 };
	ASSERT_EQ(read(p[0], room, sizeof(room)), (ssize_t)sizeof(room));
	close(p[0]);
	int status;
	ASSERT_EQ(waitpid(c, &status, 0), c);
	close(cg.guard);
	for (int k = 0; k < 2; k++) {
		ASSERT(room[k] > 0);	/* the child got into the deepest cgroup */
		ASSERT(room[k] <= limit);
	}
	return 0;
}

/* A file of a fake /proc and cgroup tree under the test's directory (rel
 * under it, its directories made), holding text made from fmt, where "@"
 * stands for the test's directory. */
static int fake_put(const char *rel, const char *fmt, ...)
{
	char path[1024], text[4096], out[8192];
	snprintf(path, sizeof(path), "%s/%s", test_dir(), rel);
	for (char *p = path + strlen(test_dir()) + 1; (p = strchr(p, '/')); p++) {
		*p = '\0';
		if (mkdir(path, 0755) != 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	size_t o = 0, dl = strlen(test_dir());
	for (const char *t = text; *t && o + dl < sizeof(out) - 1; t++) {
		if (*t == '@') {
			memcpy(out + o, test_dir(), dl);
			o += dl;
		} else {
			out[o++] = *t;
		}
	}
	out[o] = '\0';
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	int ok = fputs(out, f) >= 0;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* A cgroup level of the fake tree: its limit file's text (name, value),
 * usage, and a second limit (v2's memory.high, v1's memsw limit) if
 * name2, with v1's memsw usage if usage2. */
static int fake_level(const char *dir, const char *name, const char *limit, const char *usage_name,
		      unsigned long long usage, const char *name2, const char *limit2, const char *usage2_name,
		      unsigned long long usage2)
{
	char rel[1024];
	int err = 0;
	snprintf(rel, sizeof(rel), "%s/%s", dir, name);
	err |= fake_put(rel, "%s\n", limit);
	snprintf(rel, sizeof(rel), "%s/%s", dir, usage_name);
	err |= fake_put(rel, "%llu\n", usage);
	snprintf(rel, sizeof(rel), "%s/memory.stat", dir);
	err |= fake_put(rel, "anon 4096\ninactive_file 0\ntotal_inactive_file 0\n");
	if (name2) {
		snprintf(rel, sizeof(rel), "%s/%s", dir, name2);
		err |= fake_put(rel, "%s\n", limit2);
	}
	if (usage2_name) {
		snprintf(rel, sizeof(rel), "%s/%s", dir, usage2_name);
		err |= fake_put(rel, "%llu\n", usage2);
	}
	return err;
}

#define MiB (1ull << 20)

/* md__memroom_available through the fake /proc (host_kb available), and
 * the levels md__memroom_open kept in *kept if not NULL. */
static uint64_t fake_room_host(unsigned *kept, unsigned long long host_kb)
{
	char proc[1024];
	snprintf(proc, sizeof(proc), "%s/proc", test_dir());
	if (fake_put("proc/meminfo", "MemTotal: 134217728 kB\nMemAvailable: %llu kB\n", host_kb) != 0)
		return 0;
	md__memroom_proc = proc;
	struct md__memroom m;
	uint64_t room = 0;
	if (md__memroom_open(&m) == 0) {
		room = md__memroom_available(&m);
		if (kept)
			*kept = m.n;
		md__memroom_close(&m);
	}
	md__memroom_proc = "/proc";
	return room;
}

/* The same with 64 GiB available: the cgroup's limits decide. */
static uint64_t fake_room(unsigned *kept)
{
	return fake_room_host(kept, 64ull << 20);
}

/* The host's MemAvailable bounds the room whatever the cgroup says: with
 * no limit on any level (most hosts) it is all there is, and taken for
 * none every unmerge passed the check, the copies left to the kernel's
 * reclaim or its OOM killer. */
TEST_IMPL(memroom_host_available_counts)
{
	ASSERT_EQ(fake_put("proc/self/mountinfo", "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "0::/vm\n"), 0);
	ASSERT_EQ(fake_level("unified/vm", "memory.max", "max", "memory.current", 900 * MiB, "memory.high", "max",
			     NULL, 0), 0);
	ASSERT_EQ(fake_room_host(NULL, 102400), 100 * MiB);
	/* A limit that leaves more than the host has: the host's. */
	ASSERT_EQ(fake_put("unified/vm/memory.max", "%llu\n", 2048 * MiB), 0);
	ASSERT_EQ(fake_room_host(NULL, 102400), 100 * MiB);
	/* One that leaves less: the limit's. */
	ASSERT_EQ(fake_room_host(NULL, 4096 * 1024), 1148 * MiB);
	return 0;
}

/* The room is asked on the VMM's threads too (an unmerge, a fork), whose
 * errno stays as it was: a cgroup file not there (v2's root has no
 * memory.max, no level memory.high) is ENOENT, a /proc not there too. */
TEST_IMPL(memroom_keeps_errno)
{
	char proc[1024];
	snprintf(proc, sizeof(proc), "%s/proc", test_dir());
	ASSERT_EQ(fake_put("proc/self/mountinfo", "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "0::/vm\n"), 0);
	ASSERT_EQ(fake_put("proc/meminfo", "MemTotal: 1048576 kB\nMemAvailable: 102400 kB\n"), 0);
	ASSERT_EQ(fake_level("unified/vm", "memory.max", "157286400", "memory.current", 100 * MiB, NULL, NULL, NULL,
			     0), 0);
	struct md__memroom m;
	md__memroom_proc = proc;
	int opened = md__memroom_open(&m) == 0;
	errno = 777;
	uint64_t room = opened ? md__memroom_available(&m) : 0;
	int e1 = errno;
	md__memroom_proc = "/nonexistent-proc";
	errno = 778;
	uint64_t bare = opened ? md__memroom_available(&m) : 0;
	int e2 = errno;
	md__memroom_proc = "/proc";
	if (opened)
		md__memroom_close(&m);
	ASSERT(opened);
	ASSERT_EQ(room, 50 * MiB);
	ASSERT(bare > 0);
	ASSERT_EQ(e1, 777);
	ASSERT_EQ(e2, 778);
	return 0;
}

/* Copies (an unmerge's, a fork's) go ahead only with 64 MiB left to the
 * VMM and the host once they are made: without it, the last copies take
 * memory the VMM needs and the kernel reclaims or kills it. */
TEST_IMPL(room_for_copies_leaves_margin)
{
	ASSERT_EQ(fake_put("proc/self/mountinfo", "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "0::/\n"), 0);
	char proc[1024];
	snprintf(proc, sizeof(proc), "%s/proc", test_dir());
	/* 64 MiB and 100 pages available on the host, no cgroup limit. */
	ASSERT_EQ(fake_put("proc/meminfo", "MemTotal: 1048576 kB\nMemAvailable: %u kB\n", 65536 + 400), 0);
	struct md_agent a;
	agent_init(&a);
	md__memroom_proc = proc;
	int fits = md__room_for_copies(&a, 100), over = md__room_for_copies(&a, 101);
	md__memroom_proc = "/proc";
	ASSERT(fits);
	ASSERT(!over);
	return 0;
}

/* A fork weighs the copies it would make against the memory there is:
 * those of the image pages in the regions it copies alone (a region
 * MADV_DONTFORK goes to no child), and with less room than they take
 * makes none and says so (fork_shared). Weighing every region's, the
 * fork left the child sharing pages it had the room to make its own;
 * weighing none, it made copies the VMM's memory had no room for. */
TEST_IMPL(fork_copies_weighed_for_forked_regions)
{
	char img[512], proc[1024];
	snprintf(img, sizeof(img), "%s/fork-weigh.img", test_dir());
	make_image(img, 16 * 4096, 41);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	char *m = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(madvise(m, 32 * 4096, MADV_DONTFORK), 0);
	ASSERT_EQ(md_agent_register(a, m, 32 * 4096, MD_ADV_DONTFORK), 0);
	ASSERT_EQ(md_agent_register(a, m + 32 * 4096, 32 * 4096, 0), 0);
	ASSERT_EQ(md_agent_pread(a, fd, m, 16 * 4096, 0), 16 * 4096);
	ASSERT_EQ(md_agent_pread(a, fd, m + 32 * 4096, 16 * 4096, 0), 16 * 4096);
	/* No cgroup in the fake /proc: the host's 64 MiB margin and room
	 * for 16 pages less one, then for 16. */
	snprintf(proc, sizeof(proc), "%s/proc", test_dir());
	md_stats s;
	for (int k = 0; k < 2; k++) {
		ASSERT_EQ(fake_put("proc/meminfo", "MemTotal: 1048576 kB\nMemAvailable: %u kB\n",
				   65536 + (16 - (k == 0)) * 4), 0);
		md__memroom_proc = proc;
		int held = md__regions_before_fork(a);
		md__regions_after_fork(a, held, 0);
		md__memroom_proc = "/proc";
		ASSERT_EQ(md_agent_stats(a, &s), 0);
		ASSERT_EQ(s.fork_shared, 1);
		ASSERT_EQ(s.pages_privatized, k == 0 ? 0 : 16);
	}
	for (int i = 0; i < 16; i++) {
		ASSERT_EQ(*(volatile char *)(m + i * 4096), *(volatile char *)(m + (32 + i) * 4096));
		ASSERT(self_pagemap(m + i * 4096) & (1ull << 61));	/* the image's still */
		ASSERT(!(self_pagemap(m + (32 + i) * 4096) & (1ull << 61)));
	}
	md_agent_free(a);
	munmap(m, 64 * 4096);
	close(fd);
	return 0;
}

/* A fork whose copies of image pages failed (memory short, though the
 * check found room) says so and counts it (fork_shared): the child keeps
 * pages that change under it after a lease break, and the pages keep
 * their records. */
TEST_IMPL(fork_failed_copies_counted)
{
	struct md_agent a;
	agent_init(&a);
	/* Nothing is mapped at 1 MiB: populating it fails. */
	ASSERT_EQ(md__regions_add(&a, 0x100000, 0x110000, 0), 0);
	md__owners_set(&a, md__region_find(&a, 0x100000, 1), 0x100000, 4, 3);
	int held = md__regions_before_fork(&a);
	md__regions_after_fork(&a, held, 0);
	ASSERT_EQ(a.local_ctr[MD_CTR_FORK_SHARED], 1);
	ASSERT_EQ(a.local_ctr[MD_CTR_PRIVATIZED], 0);
	ASSERT_EQ(a.owned, 4);
	md__regions_free(&a);
	return 0;
}

/* cgroup v2's memory.high is a limit too (past it the kernel throttles
 * the VMM and reclaims): a parent without memory.max but with
 * memory.high left the whole host as room. */
TEST_IMPL(memroom_v2_high_is_a_limit)
{
	ASSERT_EQ(fake_put("proc/self/mountinfo",
			   "31 30 0:28 / @/cpu rw,relatime - cgroup cgroup rw,cpu\n"
			   "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "1:cpu:/\n0::/vm/qemu\n"), 0);
	ASSERT_EQ(fake_level("unified/vm", "memory.max", "max", "memory.current", 900 * MiB, "memory.high",
			     "1048576000", NULL, 0), 0);
	ASSERT_EQ(fake_level("unified/vm/qemu", "memory.max", "max", "memory.current", 800 * MiB,
			     "memory.high", "max", NULL, 0), 0);
	ASSERT_EQ(fake_room(NULL), 100 * MiB);
	/* Past memory.high already: no room. */
	ASSERT_EQ(fake_put("unified/vm/memory.high", "%llu\n", 500 * MiB), 0);
	ASSERT_EQ(fake_room(NULL), 0);
	/* memory.max the lower. */
	ASSERT_EQ(fake_put("unified/vm/memory.high", "max\n"), 0);
	ASSERT_EQ(fake_put("unified/vm/qemu/memory.max", "%llu\n", 850 * MiB), 0);
	ASSERT_EQ(fake_room(NULL), 50 * MiB);
	return 0;
}

/* Every level is read, however many have a limit: nine nested levels,
 * each limited, the tightest at the top, gave the room of the eight
 * nearest (MD_MEMROOM_LEVELS, the descriptors kept for after a chroot). */
TEST_IMPL(memroom_reads_every_level)
{
	char dir[1024] = "unified", cg[1024] = "";
	ASSERT_EQ(fake_put("proc/self/mountinfo", "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	for (int l = 1; l <= MD_MEMROOM_LEVELS + 2; l++) {
		size_t n = strlen(dir), c = strlen(cg);
		snprintf(dir + n, sizeof(dir) - n, "/l%d", l);
		snprintf(cg + c, sizeof(cg) - c, "/l%d", l);
		char limit[32];
		snprintf(limit, sizeof(limit), "%llu", l == 1 ? 200 * MiB : (10240ull - (unsigned)l) * MiB);
		ASSERT_EQ(fake_level(dir, "memory.max", limit, "memory.current", 100 * MiB, "memory.high", "max",
				     NULL, 0), 0);
	}
	ASSERT_EQ(fake_put("proc/self/cgroup", "0::%s\n", cg), 0);
	unsigned kept = 0;
	ASSERT_EQ(fake_room(&kept), 100 * MiB);
	ASSERT_EQ(kept, MD_MEMROOM_LEVELS);
	return 0;
}

/* The room is the cgroup's the VMM is in now, not the one it started in
 * (kept for after a chroot): moved since to a cgroup with less room, the
 * copies of an unmerge took memory the new limit did not leave. The page
 * cache the kernel reclaims first (inactive_file) counts as room. */
TEST_IMPL(memroom_follows_moved_cgroup)
{
	char proc[1024];
	snprintf(proc, sizeof(proc), "%s/proc", test_dir());
	ASSERT_EQ(fake_put("proc/self/mountinfo", "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	ASSERT_EQ(fake_put("proc/meminfo", "MemTotal: 134217728 kB\nMemAvailable: %llu kB\n", 64ull << 20), 0);
	ASSERT_EQ(fake_level("unified/a", "memory.max", "314572800", "memory.current", 100 * MiB, "memory.high",
			     "max", NULL, 0), 0);
	ASSERT_EQ(fake_level("unified/b", "memory.max", "157286400", "memory.current", 100 * MiB, "memory.high",
			     "max", NULL, 0), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "0::/a\n"), 0);
	md__memroom_proc = proc;
	struct md__memroom m;
	uint64_t room[3] = { 0, 0, 0 };
	if (md__memroom_open(&m) == 0) {
		room[0] = md__memroom_available(&m);
		if (fake_put("proc/self/cgroup", "0::/b\n") == 0)
			room[1] = md__memroom_available(&m);
		if (fake_put("unified/b/memory.stat", "anon 4096\ninactive_file %llu\n", 30 * MiB) == 0)
			room[2] = md__memroom_available(&m);
		md__memroom_close(&m);
	}
	md__memroom_proc = "/proc";
	ASSERT_EQ(room[0], 200 * MiB);
	ASSERT_EQ(room[1], 50 * MiB);
	ASSERT_EQ(room[2], 80 * MiB);
	return 0;
}

/* The memory controller's hierarchy is found where mountinfo says: v1's
 * co-mounted with cpu (/sys/fs/cgroup/cpu,memory), one whose mount shows
 * a part of the hierarchy (a container's), at a path with a space, and
 * v2 at /sys/fs/cgroup/unified on a hybrid host. Fixed paths found none
 * of them, and the whole host was the room. v1's memsw limit counts too,
 * against memory and swap used. */
TEST_IMPL(memroom_cgroup_mounts_found)
{
	/* v1, memory with cpu. */
	ASSERT_EQ(fake_put("proc/self/mountinfo",
			   "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
			   "31 30 0:28 / @/cpu,memory rw,relatime - cgroup cgroup rw,cpu,memory\n"
			   "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "5:cpu,memory:/vm\n0::/vm\n"), 0);
	ASSERT_EQ(fake_level("cpu,memory/vm", "memory.limit_in_bytes", "314572800", "memory.usage_in_bytes",
			     100 * MiB, NULL, NULL, NULL, 0), 0);
	ASSERT_EQ(fake_level("unified/vm", "memory.max", "max", "memory.current", 0, NULL, NULL, NULL, 0), 0);
	ASSERT_EQ(fake_room(NULL), 200 * MiB);
	ASSERT_EQ(fake_level("cpu,memory/vm", "memory.limit_in_bytes", "314572800", "memory.usage_in_bytes",
			     100 * MiB, "memory.memsw.limit_in_bytes", "262144000", "memory.memsw.usage_in_bytes",
			     150 * MiB), 0);
	ASSERT_EQ(fake_room(NULL), 100 * MiB);
	/* A container's mount of part of the hierarchy, at a path with a
	 * space (mountinfo's \040). */
	ASSERT_EQ(fake_put("proc/self/mountinfo",
			   "34 30 0:31 /lxc/c1 @/mem\\040two rw,relatime - cgroup cgroup rw,memory\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "4:memory:/lxc/c1/vm\n"), 0);
	ASSERT_EQ(fake_level("mem two/vm", "memory.limit_in_bytes", "52428800", "memory.usage_in_bytes",
			     10 * MiB, NULL, NULL, NULL, 0), 0);
	ASSERT_EQ(fake_room(NULL), 40 * MiB);
	/* Hybrid: no v1 memory hierarchy, v2 at unified. */
	ASSERT_EQ(fake_put("proc/self/mountinfo",
			   "31 30 0:28 / @/cpu rw,relatime - cgroup cgroup rw,cpu\n"
			   "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "1:cpu:/\n0::/vm\n"), 0);
	ASSERT_EQ(fake_level("unified/vm", "memory.max", "73400320", "memory.current", 20 * MiB, NULL, NULL,
			     NULL, 0), 0);
	ASSERT_EQ(fake_room(NULL), 50 * MiB);
	/* A bind mount of a subtree (a container's view, or systemd's)
	 * before the full mount: the full one shows the limit above it. */
	ASSERT_EQ(fake_put("proc/self/mountinfo",
			   "35 30 0:31 /lxc @/lxc-only rw,relatime - cgroup cgroup rw,memory\n"
			   "36 30 0:31 / @/memory rw,relatime - cgroup cgroup rw,memory\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "4:memory:/lxc/vm\n"), 0);
	ASSERT_EQ(fake_level("memory/lxc", "memory.limit_in_bytes", "104857600", "memory.usage_in_bytes",
			     30 * MiB, NULL, NULL, NULL, 0), 0);
	ASSERT_EQ(fake_level("memory/lxc/vm", "memory.limit_in_bytes", "9223372036854771712",
			     "memory.usage_in_bytes", 20 * MiB, NULL, NULL, NULL, 0), 0);
	ASSERT_EQ(fake_level("lxc-only/vm", "memory.limit_in_bytes", "9223372036854771712",
			     "memory.usage_in_bytes", 20 * MiB, NULL, NULL, NULL, 0), 0);
	ASSERT_EQ(fake_room(NULL), 70 * MiB);
	return 0;
}

/* The level a mount shows at its root is read too: in a container with a
 * cgroup namespace (Docker's default on cgroup v2) that is the container's
 * own cgroup, the one with the limit, and a VMM in a cgroup below it saw
 * the host's memory as room. Likewise a v1 mount of part of a hierarchy. */
TEST_IMPL(memroom_limit_at_mount_root)
{
	ASSERT_EQ(fake_put("proc/self/mountinfo", "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "0::/vm\n"), 0);
	ASSERT_EQ(fake_level("unified", "memory.max", "157286400", "memory.current", 100 * MiB, "memory.high", "max",
			     NULL, 0), 0);
	ASSERT_EQ(fake_level("unified/vm", "memory.max", "max", "memory.current", 90 * MiB, "memory.high", "max",
			     NULL, 0), 0);
	ASSERT_EQ(fake_room(NULL), 50 * MiB);
	ASSERT_EQ(fake_put("proc/self/mountinfo",
			   "34 30 0:31 /lxc/c1 @/mem rw,relatime - cgroup cgroup rw,memory\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "4:memory:/lxc/c1/vm\n"), 0);
	ASSERT_EQ(fake_level("mem", "memory.limit_in_bytes", "52428800", "memory.usage_in_bytes", 30 * MiB, NULL,
			     NULL, NULL, 0), 0);
	ASSERT_EQ(fake_level("mem/vm", "memory.limit_in_bytes", "9223372036854771712", "memory.usage_in_bytes",
			     20 * MiB, NULL, NULL, NULL, 0), 0);
	ASSERT_EQ(fake_room(NULL), 20 * MiB);
	return 0;
}

/* A mountinfo line with fewer than five fields before " - " is no mount:
 * its missing fields are not taken from whatever the stack held (the
 * stack is sprayed with a pointer to a path that would be taken). */
static char cgroup_spray_str[] = "/sprayed";
__attribute__((noinline)) static void cgroup_spray(void)
{
	char *volatile v[8192];
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		v[i] = cgroup_spray_str;
}

TEST_IMPL(cgroup_mount_short_line_no_mount)
{
	char mi[1024], at[256], shows[256];
	snprintf(mi, sizeof(mi), "%s/mountinfo", test_dir());
	FILE *f = fopen(mi, "w");
	ASSERT(f != NULL);
	fprintf(f, "1 2 - cgroup2 cgroup2 rw\n");
	ASSERT_EQ(fclose(f), 0);
	at[0] = shows[0] = 0;
	cgroup_spray();
	ASSERT_EQ(md__cgroup_mount(mi, "", "/sprayed/x", at, sizeof(at), shows, sizeof(shows)), -ENOENT);
	return 0;
}

/* md__cgroup_mount, the mount through which a cgroup is seen (memroom's
 * walk up its levels, `memdedup run` moving its daemon to the top). */
TEST_IMPL(cgroup_mount_shows_most)
{
	char mi[1024], at[256], shows[256], longline[9000];
	snprintf(mi, sizeof(mi), "%s/mountinfo", test_dir());
	ASSERT_EQ(md__cgroup_mount(mi, "memory", "/a", at, sizeof(at), shows, sizeof(shows)), -ENOENT);
	/* A line longer than the reader's buffer, whose tail looks like a
	 * cgroup mount, is skipped whole. */
	memset(longline, 'x', sizeof(longline));
	memcpy(longline, "20 1 0:1 / /x", 13);
	snprintf(longline + sizeof(longline) - 64, 64, " 1 0:7 / /tail rw - cgroup cgroup rw,memory");
	FILE *f = fopen(mi, "w");
	ASSERT(f != NULL);
	fprintf(f, "%s\n"
		"21 1 0:2 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
		"22 1 0:3 /a/b /sub rw - cgroup cgroup rw,memory\n"
		"23 1 0:3 /a /mem\\040a rw - cgroup cgroup rw,memory\n"
		"24 1 0:4 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n", longline);
	ASSERT_EQ(fclose(f), 0);
	/* Of the two that show /a/b/c, the one showing more; mountinfo's
	 * escapes undone. */
	ASSERT_EQ(md__cgroup_mount(mi, "memory", "/a/b/c", at, sizeof(at), shows, sizeof(shows)), 0);
	ASSERT(strcmp(at, "/mem a") == 0);
	ASSERT(strcmp(shows, "/a") == 0);
	ASSERT_EQ(md__cgroup_mount(mi, "memory", "/a", at, sizeof(at), shows, sizeof(shows)), 0);
	ASSERT(strcmp(shows, "/a") == 0);
	/* /ab is not below /a; the hierarchy is mounted but not there. */
	ASSERT_EQ(md__cgroup_mount(mi, "memory", "/ab", at, sizeof(at), shows, sizeof(shows)), -ESRCH);
	/* Every controller of the line, v2 apart from v1. */
	ASSERT_EQ(md__cgroup_mount(mi, "cpu,cpuacct", "/x", at, sizeof(at), shows, sizeof(shows)), 0);
	ASSERT(strcmp(at, "/sys/fs/cgroup/cpu") == 0);
	ASSERT_EQ(md__cgroup_mount(mi, "cpu,io", "/x", at, sizeof(at), shows, sizeof(shows)), -ENOENT);
	/* Whole names: cpu is not cpuset's or cpuacct's hierarchy. */
	ASSERT(!md__options_have("cpu", "rw,cpuset,cpuacct"));
	ASSERT(!md__options_have("cpuset", "rw,cpu"));
	ASSERT(md__options_have("cpu", "rw,cpuset,cpu"));
	ASSERT(md__options_have("cpuacct,cpu", "rw,cpu,cpuacct"));
	ASSERT_EQ(md__cgroup_mount(mi, "", "/x", at, sizeof(at), shows, sizeof(shows)), 0);
	ASSERT(strcmp(at, "/sys/fs/cgroup/unified") == 0);
	ASSERT(strcmp(shows, "/") == 0);
	/* A mount point that does not fit is not taken. */
	ASSERT_EQ(md__cgroup_mount(mi, "", "/x", at, 8, shows, sizeof(shows)), -ESRCH);
	ASSERT_EQ(md__cgroup_mount("/nonexistent/mountinfo", "", "/x", at, sizeof(at), shows, sizeof(shows)),
		  -ENOENT);
	return 0;
}

/* The data buffers of SG_IO requests, v3 and v4, as the ioctl interposer
 * judges them against guest RAM. */
TEST_IMPL(sg_io_buffers_found)
{
	static unsigned char b1[100], b2[200];
	uintptr_t addr[4];
	size_t len[4];
	struct sg_iovec v[2] = { { b1, sizeof(b1) }, { b2, sizeof(b2) } };
	struct sg_io_hdr h = { .interface_id = 'S', .dxfer_direction = SG_DXFER_TO_DEV, .dxfer_len = 300,
			       .dxferp = b1 };
	ASSERT_EQ(md__sg_io_buffers(&h, addr, len, 4), 1);
	ASSERT(addr[0] == (uintptr_t)b1 && len[0] == 300);
	h.iovec_count = 2;
	h.dxferp = v;
	ASSERT_EQ(md__sg_io_buffers(&h, addr, len, 4), 2);
	ASSERT(addr[1] == (uintptr_t)b2 && len[1] == sizeof(b2));
	ASSERT_EQ(md__sg_io_buffers(&h, addr, len, 1), -1);	/* more than it holds */
	h.dxferp = (void *)8;	/* iovecs that cannot be read: cannot tell */
	ASSERT_EQ(md__sg_io_buffers(&h, addr, len, 4), -1);
	h.dxfer_len = 0;	/* no data */
	ASSERT_EQ(md__sg_io_buffers(&h, addr, len, 4), 0);
	h.interface_id = 'Z';	/* refused by the kernel */
	h.dxfer_len = 300;
	ASSERT_EQ(md__sg_io_buffers(&h, addr, len, 4), 0);
	ASSERT_EQ(md__sg_io_buffers((void *)8, addr, len, 4), 0);	/* the kernel's EFAULT */
	struct sg_io_v4 q = { .guard = 'Q', .dout_xferp = (uintptr_t)b1, .dout_xfer_len = 10,
			      .din_xferp = (uintptr_t)v, .din_xfer_len = 300, .din_iovec_count = 2 };
	/* v4 (bsg): the flat buffer is what the kernel maps, the iovecs its
	 * counts name are looked at as well. */
	ASSERT_EQ(md__sg_io_buffers(&q, addr, len, 4), 4);
	ASSERT(addr[0] == (uintptr_t)b1 && len[0] == 10);
	ASSERT(addr[1] == (uintptr_t)v && len[1] == 300);
	ASSERT(addr[3] == (uintptr_t)b2);
	/* Out buffers filling all it holds, an in buffer too: cannot tell,
	 * and nothing written past the arrays (a canary after the third). */
	struct sg_io_v4 full = { .guard = 'Q', .dout_xferp = (uintptr_t)v, .dout_xfer_len = 300,
				 .dout_iovec_count = 2, .din_xferp = (uintptr_t)b1, .din_xfer_len = 100 };
	addr[3] = 0x5a5a;
	len[3] = 0xa5a5;
	ASSERT_EQ(md__sg_io_buffers(&full, addr, len, 3), -1);
	ASSERT(addr[3] == 0x5a5a && len[3] == 0xa5a5);
	return 0;
}

/* An SG_IO request with more iovecs than the interposer reads at once
 * (16): every one is found, the seventeenth and later ones at their own
 * place (read again from the first, a buffer in guest RAM past them went
 * unseen and the device's DMA wrote a merged page). A request with no
 * data direction transfers nothing, whatever its length says. */
TEST_IMPL(sg_io_many_iovecs_found)
{
	enum { N = 20 };
	static unsigned char buf[N][64];
	struct sg_iovec v[N];
	uintptr_t addr[N];
	size_t len[N];
	for (unsigned i = 0; i < N; i++)
		v[i] = (struct sg_iovec){ buf[i], 10 + i };
	struct sg_io_hdr h = { .interface_id = 'S', .dxfer_direction = SG_DXFER_FROM_DEV, .dxfer_len = 1000,
			       .iovec_count = N, .dxferp = v };
	ASSERT_EQ(md__sg_io_buffers(&h, addr, len, N), N);
	for (unsigned i = 0; i < N; i++) {
		ASSERT_EQ(addr[i], (uintptr_t)buf[i]);
		ASSERT_EQ(len[i], 10 + i);
	}
	struct sg_io_v4 q = { .guard = 'Q', .din_xferp = (uintptr_t)v, .din_xfer_len = 1000,
			      .din_iovec_count = N - 1 };
	ASSERT_EQ(md__sg_io_buffers(&q, addr, len, N), N);
	ASSERT_EQ(addr[N - 1], (uintptr_t)buf[N - 2]);
	h.dxfer_direction = SG_DXFER_NONE;
	ASSERT_EQ(md__sg_io_buffers(&h, addr, len, N), 0);
	return 0;
}

/* memdedupd's check of a slot a REF names: within the pool, live, and
 * with room for the references one message may add (n of them): a count
 * that wrapped would free the page while agents still map it. */
TEST_IMPL(domain_slot_ok_bounds)
{
	static struct md__domain dom;
	uint32_t refs[4] = { 1, UINT32_MAX - 1, UINT32_MAX, 0 };
	uint8_t state[4] = { MD_SLOT_LIVE, MD_SLOT_LIVE, MD_SLOT_LIVE, MD_SLOT_FREE };
	dom.pool.refs = refs;
	dom.pool.state = state;
	dom.pool.end = 4;
	ASSERT(md__domain_slot_ok(&dom, 0, 1));
	ASSERT(md__domain_slot_ok(&dom, 0, MD_REF_MAX));
	ASSERT(md__domain_slot_ok(&dom, 1, 1));		/* to UINT32_MAX */
	ASSERT(!md__domain_slot_ok(&dom, 1, 2));	/* past it */
	ASSERT(!md__domain_slot_ok(&dom, 1, MD_REF_MAX));
	ASSERT(!md__domain_slot_ok(&dom, 2, 1));
	ASSERT(!md__domain_slot_ok(&dom, 3, 1));	/* freed */
	state[3] = MD_SLOT_RESERVED;			/* not written yet */
	ASSERT(!md__domain_slot_ok(&dom, 3, 1));
	dom.pool.end = 1;				/* past the end */
	ASSERT(!md__domain_slot_ok(&dom, 1, 1));
	ASSERT(!md__domain_slot_ok(&dom, 0xfffffff0u, 1));
	return 0;
}

/* A single page published equal to a live one is given that slot, but
 * not once the slot's count is full: it gets a slot of its own. Given it,
 * the count wraps, and the next UNREF frees a page agents still map. */
TEST_IMPL(domain_publish_full_slot_not_shared)
{
	static struct md__domain dom;
	static unsigned char page[4096];
	ASSERT_EQ(md__pool_open(&dom.pool, 16), 0);
	ASSERT_EQ(md__index_init(&dom.index, 1024), 0);
	dom.slot_hash = calloc(16, sizeof(*dom.slot_hash));
	ASSERT(dom.slot_hash);
	memset(page, 0x6b, sizeof(page));
	uint64_t h = md__page_hash(page);
	uint32_t s, s2;
	ASSERT_EQ(md__domain_publish(&dom, &h, page, 1, &s, 0), 0);
	ASSERT_EQ(md__domain_publish(&dom, &h, page, 1, &s2, 0), 0);
	ASSERT_EQ(s2, s);	/* a copy of a live page: its slot */
	ASSERT_EQ(dom.pool.refs[s], 2);
	dom.pool.refs[s] = UINT32_MAX;
	ASSERT_EQ(md__domain_publish(&dom, &h, page, 1, &s2, 0), 0);
	ASSERT(s2 != s);
	ASSERT_EQ(dom.pool.refs[s], UINT32_MAX);
	ASSERT_EQ(dom.pool.refs[s2], 1);
	md__index_free(&dom.index);
	md__pool_close(&dom.pool);
	free(dom.slot_hash);
	return 0;
}

/* The sightings' buckets are two entries, at even places: a hash whose
 * bucket is the table's last must fill its two ways within the table (an
 * entry past it, a canary here, stays as it was), and meet its sighting
 * there again. */
TEST_IMPL(domain_sightings_last_bucket_within_table)
{
	static struct md__domain dom;
	uint64_t nm;
	const size_t cap = 1u << 16;	/* the least, for a domain that registered nothing */
	struct md__seen *seen = calloc(cap + 1, sizeof(*seen));
	ASSERT(seen);
	seen[cap] = (struct md__seen){ 0x5a5a5a5a5a5a5a5aull, 0xa5a5a5a5a5a5a5a5ull };
	ASSERT_EQ(md__index_init(&dom.index, 1024), 0);
	dom.seen = seen;
	dom.seen_cap = cap;
	/* (hash ^ hash >> 29) & (cap - 1) of cap - 1 or cap - 2 (bits from 45 up
	 * shift away below 16): the last bucket, cap - 2. */
	const uint64_t hash[3] = { cap - 1, (cap - 1) | 1ull << 50, (cap - 2) | 1ull << 51 };
	for (int i = 0; i < 3; i++)
		ASSERT_EQ(md__domain_lookup(&dom, hash[i], 1, 0x1000ull * (i + 1), 0, &nm), 0);
	ASSERT_EQ(dom.seen_cap, cap);	/* not remade: the same table */
	ASSERT(seen[cap].hash == 0x5a5a5a5a5a5a5a5aull && seen[cap].where == 0xa5a5a5a5a5a5a5a5ull);
	/* The last two of the bucket, the newest first. */
	ASSERT(seen[cap - 2].hash == hash[2] && seen[cap - 1].hash == hash[1]);
	/* Another page of the second content: a second copy. */
	ASSERT(md__domain_lookup(&dom, hash[1], 1, 0x9000, 0, &nm) == MD_LOOKUP_PUBLISH);
	md__domain_seen_free(&dom);
	md__index_free(&dom.index);
	return 0;
}

/* A first sighting is named back to its agent (md__domain_published) only
 * once another copy was told to publish: a page looked up again is no
 * second copy, unless another was seen meanwhile (then it publishes too,
 * its twin being there); the page of an agent without a number (all 4095
 * given) is never a sighting, which nobody could be named back. */
TEST_IMPL(domain_sightings_asked_named_back)
{
	static struct md__domain dom;
	const uint64_t h = 0x123456789abcdef0ull, h2 = 0x0fedcba987654321ull;
	unsigned num;
	uint64_t addr, nm;
	ASSERT_EQ(md__index_init(&dom.index, 1024), 0);
	ASSERT_EQ(md__domain_lookup(&dom, h2, 0, 0x1000, 0, &nm), 0);
	ASSERT_EQ(md__domain_lookup(&dom, h2, 2, 0x2000, 0, &nm), 0);	/* the first sighting */
	ASSERT_EQ(md__domain_published(&dom, h2, &num, &addr), 0);	/* nobody asked */
	ASSERT_EQ(md__domain_lookup(&dom, h, 1, 0x7000, 0, &nm), 0);
	ASSERT_EQ(md__domain_lookup(&dom, h, 1, 0x7000, 0, &nm), 0);
	ASSERT_EQ(md__domain_published(&dom, h, &num, &addr), 0);
	ASSERT_EQ(md__domain_lookup(&dom, h, 2, 0x9000, 0, &nm), MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__domain_lookup(&dom, h, 1, 0x7000, 0, &nm), MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__domain_published(&dom, h, &num, &addr), 1);
	ASSERT(num == 1 && addr == 0x7000);
	ASSERT_EQ(md__domain_published(&dom, h, &num, &addr), 0);	/* once */
	md__domain_seen_free(&dom);
	md__index_free(&dom.index);
	return 0;
}

/* The reads table doubles as reads come in, but no further than the
 * sightings' size (64 Ki entries for a domain that registered nothing):
 * any agent may send READS of as many pages as it likes, and each
 * doubling past that was memdedupd's memory, a table per domain. */
TEST_IMPL(domain_reads_table_bounded)
{
	static struct md__domain dom;
	static uint64_t named[MD_READ_RUN_PAGES];
	struct md__read_run run = { .key = 7, .off = 0, .addr = 0x7f0000000000ull, .npages = 1024 };
	size_t met = 0;
	for (int i = 0; i < 1024; i++) {	/* 1 Mi pages read */
		met += md__domain_reads(&dom, 1, &run, named);
		run.off += 1024 * 4096;
		run.addr += 1024 * 4096;
	}
	ASSERT(dom.reads_cap >= 4096);
	ASSERT(dom.reads_cap <= 65536);
	/* Every file page was read once: only the tags' kept high halves
	 * meet, by chance (about 16 of 2^20 pages in a full table). */
	ASSERT(met < 256);
	free(dom.reads);
	free(dom.pending);
	return 0;
}

/* Two guests read one file page: the second read (READS) pairs the two
 * copies. If the first was looked up with its tag already, the second is
 * named to its agent (its lookup finds the first's content). If not, the
 * copy of the pair's publisher is named, and its lookup, untagged as a
 * candidate's, publishes and names the other back, even when the cursor
 * had looked it up before, untagged, its twin not read yet. The content
 * in the pool already names the other at once. Once a pair. */
static uint64_t where_at(unsigned num, uint64_t addr)
{
	return (uint64_t)num << MD_WHERE_PAGE_BITS | addr >> 12;
}

TEST_IMPL(domain_reads_pair_at_second_read)
{
	static struct md__domain dom;
	const uint64_t key = md__read_key(8, 77), h[4] = { 0x1111, 0x2222, 0x3333, 0x4444 };
	const uint64_t at1 = 0x10000, at2 = 0x20000;
	uint64_t nm, named[4];
	unsigned num;
	uint64_t addr;
	ASSERT_EQ(md__index_init(&dom.index, 1024), 0);
	/* File page 0: agent 2 read it and looked it up (a first sighting). */
	struct md__read_run r2 = { key, 0, at2, 4 }, r1 = { key, 0, at1, 1 };
	ASSERT_EQ(md__domain_reads(&dom, 2, &r2, named), 0);
	ASSERT_EQ(md__domain_lookup(&dom, h[0], 2, at2, md__read_tag(key, 0), &nm), 0);
	ASSERT_EQ(nm, 0);
	ASSERT_EQ(md__domain_reads(&dom, 1, &r1, named), 1);
	ASSERT_EQ(named[0], where_at(1, at1));
	ASSERT_EQ(md__domain_lookup(&dom, h[0], 1, at1, 0, &nm), MD_LOOKUP_PUBLISH);
	ASSERT_EQ(nm, 0);
	ASSERT_EQ(md__domain_published(&dom, h[0], &num, &addr), 1);
	ASSERT(num == 2 && addr == at2);
	ASSERT_EQ(dom.read_pairs, 0);	/* paired by the sighting */
	/* File page 1, looked up by nobody: agent 1's read met agent 2's
	 * first, so agent 1 publishes the pairs of the two: its copy is
	 * named, and agent 2's comes back once it is published. */
	struct md__read_run r1b = { key, 4096, at1 + 4096, 1 };
	ASSERT_EQ(md__domain_reads(&dom, 1, &r1b, named), 1);
	ASSERT_EQ(named[0], where_at(1, at1 + 4096));
	ASSERT_EQ(md__domain_lookup(&dom, h[1], 1, at1 + 4096, 0, &nm), MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__domain_published(&dom, h[1], &num, &addr), 1);
	ASSERT(num == 2 && addr == at2 + 4096);
	ASSERT_EQ(dom.read_pairs, 1);
	/* File page 2, read by agent 1 last, but agent 2's cursor looked its
	 * copy up untagged first: agent 1 still publishes, its copy is named,
	 * and agent 2's sighting of its own page comes back to it. */
	ASSERT_EQ(md__domain_lookup(&dom, h[2], 2, at2 + 8192, 0, &nm), 0);
	struct md__read_run r1c = { key, 8192, at1 + 8192, 1 };
	ASSERT_EQ(md__domain_reads(&dom, 1, &r1c, named), 1);
	ASSERT_EQ(named[0], where_at(1, at1 + 8192));
	ASSERT_EQ(md__domain_lookup(&dom, h[2], 1, at1 + 8192, 0, &nm), MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__domain_published(&dom, h[2], &num, &addr), 1);
	ASSERT(num == 2 && addr == at2 + 8192);
	/* File page 3: agent 1's own cursor looked its copy up before its
	 * read was told: that sighting of its own page pairs with agent 2's. */
	ASSERT_EQ(md__domain_lookup(&dom, h[3], 1, at1 + 12288, 0, &nm), 0);
	struct md__read_run r1d = { key, 12288, at1 + 12288, 1 };
	ASSERT_EQ(md__domain_reads(&dom, 1, &r1d, named), 1);	/* met agent 2's read */
	ASSERT_EQ(named[0], where_at(1, at1 + 12288));
	ASSERT_EQ(md__domain_lookup(&dom, h[3], 1, at1 + 12288, 0, &nm), MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__domain_published(&dom, h[3], &num, &addr), 1);
	ASSERT(num == 2 && addr == at2 + 12288);
	ASSERT_EQ(dom.read_pairs, 3);
	/* Read again: each pair was met once; a page is not its own twin. */
	ASSERT_EQ(md__domain_reads(&dom, 1, &r1, named), 0);
	ASSERT_EQ(md__domain_reads(&dom, 1, &r1, named), 0);
	ASSERT_EQ(dom.read_named, 4);
	md__domain_seen_free(&dom);
	md__index_free(&dom.index);
	free(dom.reads);
	free(dom.pending);
	return 0;
}

/* Two copies of a file page (two guests' reads) pair while two reads of
 * other file pages land in the first copy's bucket between theirs: with
 * two entries a bucket, the first copy's went, and its pair with it (a
 * third of a bench's hinted lookups, bench-dbg-h3). The table's bucket of
 * a tag, as domain.c computes it, for a table of 4,096 entries (its
 * first). */
static size_t reads_bucket_4096(uint64_t tag)
{
	return (size_t)((uint32_t)(tag >> 32) * 2654435761u) & (4096 - 4);
}

TEST_IMPL(domain_reads_pair_outlives_bucket_mates)
{
	static struct md__domain dom;
	const uint64_t key = md__read_key(8, 78);
	uint64_t named[1];
	ASSERT_EQ(md__index_init(&dom.index, 1024), 0);
	struct md__read_run r2 = { key, 0, 0x20000, 1 }, r1 = { key, 0, 0x10000, 1 };
	ASSERT_EQ(md__domain_reads(&dom, 2, &r2, named), 0);
	ASSERT_EQ(dom.reads_cap, 4096);
	size_t want = reads_bucket_4096(md__read_tag(key, 0)), found = 0;
	for (uint64_t off = 4096; found < 3 && off < (1ull << 32); off += 4096) {
		if (reads_bucket_4096(md__read_tag(key, off)) != want ||
		    (uint32_t)(md__read_tag(key, off) >> 32) == (uint32_t)(md__read_tag(key, 0) >> 32))
			continue;
		struct md__read_run r3 = { key, off, 0x30000 + found * 4096, 1 };
		ASSERT_EQ(md__domain_reads(&dom, 3, &r3, named), 0);
		found++;
	}
	ASSERT_EQ(found, 3);
	ASSERT_EQ(dom.reads_cap, 4096);	/* not grown: the same buckets */
	ASSERT_EQ(md__domain_reads(&dom, 1, &r1, named), 1);
	ASSERT_EQ(dom.read_named, 1);
	md__domain_seen_free(&dom);
	md__index_free(&dom.index);
	free(dom.reads);
	free(dom.pending);
	return 0;
}

/* Agent num reads file pages [0, n) of key into base on, in runs of step
 * pages: how many were named; each named page's where goes to all (if
 * given). */
static size_t read_file_pages(struct md__domain *dom, unsigned num, uint64_t key, uint64_t base, uint32_t n,
			      uint32_t step, uint64_t *all)
{
	static uint64_t named[MD_READ_RUN_PAGES];
	size_t met = 0;
	for (uint32_t i = 0; i < n; i += step) {
		struct md__read_run r = { key, (uint64_t)i * 4096, base + (uint64_t)i * 4096, step };
		size_t got = md__domain_reads(dom, num, &r, named);
		if (all)
			memcpy(all + met, named, got * sizeof(*named));
		met += got;
	}
	return met;
}

/* A guest reading an image ahead of another: its reads' entries wait in
 * the table until the other's reads of the same file pages meet them.
 * Grown only when half as many entries were added as it had, the table
 * was nearly full before each doubling, and full buckets dropped entries
 * still waited for (7,267 of 41,013 in bench-dbg-p5). */
TEST_IMPL(domain_reads_lagging_guest_pairs)
{
	static struct md__domain dom;
	const uint64_t key = md__read_key(8, 79);
	const uint32_t n = 30000;
	dom.registered_pages = 1u << 18;	/* two guests of 512 MiB */
	ASSERT_EQ(read_file_pages(&dom, 2, key, 0x100000000ull, n, 250, NULL), 0);
	size_t met = read_file_pages(&dom, 1, key, 0x200000000ull, n, 250, NULL);
	ASSERT(met >= n - n / 200);	/* a bucket of 4 is full for about 0.2 % of those put */
	ASSERT(dom.reads_cap <= dom.registered_pages);
	free(dom.reads);
	free(dom.pending);
	return 0;
}

/* Once the lagging guest's reads met the other's, the table grown for them
 * is nearly empty: MD_READS_QUIET_MS after the last READS it is made small
 * again (not sooner), keeping the entries still waiting, and not again
 * at that size. */
TEST_IMPL(domain_reads_table_shrinks_after_reads)
{
	static struct md__domain dom;
	static struct md__daemon d;
	const uint64_t key = md__read_key(8, 81);
	dom.registered_pages = 1u << 18;
	d.domains = &dom;
	ASSERT_EQ(read_file_pages(&dom, 2, key, 0x100000000ull, 30000, 250, NULL), 0);
	size_t grown = dom.reads_cap;
	ASSERT(grown >= 30000 * 8);
	md__domains_shrink(&d, dom.reads_ms + MD_READS_QUIET_MS);
	ASSERT_EQ(dom.reads_cap, grown);	/* every entry still waits */
	ASSERT(read_file_pages(&dom, 1, key, 0x200000000ull, 30000, 250, NULL) >= 30000 - 150);
	/* Ten more pages agent 2 read, waiting for agent 1's reads. */
	struct md__read_run more = { key, 30000ull * 4096, 0x300000000ull, 10 };
	static uint64_t named[MD_READ_RUN_PAGES];
	ASSERT_EQ(md__domain_reads(&dom, 2, &more, named), 0);
	md__domains_shrink(&d, dom.reads_ms + MD_READS_QUIET_MS - 1);
	ASSERT_EQ(dom.reads_cap, grown);	/* reads came just now */
	md__domains_shrink(&d, dom.reads_ms + MD_READS_QUIET_MS);
	size_t small = dom.reads_cap;
	ASSERT(small * 8 <= grown);
	ASSERT(small >= dom.reads_live * 8);
	md__domains_shrink(&d, dom.reads_ms + 10 * MD_READS_QUIET_MS);
	ASSERT_EQ(dom.reads_cap, small);	/* as small as it could be */
	/* The waiting entries were kept: agent 1's reads of the ten meet them. */
	more.addr = 0x400000000ull;
	ASSERT_EQ(md__domain_reads(&dom, 1, &more, named), 10);
	free(dom.reads);
	free(dom.pending);
	return 0;
}

/* Pairs whose named pages are not looked up yet wait side by side: each
 * named page's lookup finds its partner (told to publish, the partner
 * named back) while thousands of others wait. Direct-mapped, a pair put
 * took the slot of one still waiting (1,015-2,023 of 33,000-36,000 in
 * bench-dbg-p4, p5). */
TEST_IMPL(domain_reads_pending_pairs_kept)
{
	static struct md__domain dom;
	static uint64_t all[4000];
	const uint64_t key = md__read_key(8, 80);
	const uint32_t n = 4000;
	uint64_t nm;
	ASSERT_EQ(md__index_init(&dom.index, 1024), 0);
	ASSERT_EQ(read_file_pages(&dom, 1, key, 0x100000000ull, n, 200, NULL), 0);
	/* Agent 2's reads met agent 1's: agent 2 publishes, its copies named. */
	size_t nn = read_file_pages(&dom, 2, key, 0x200000000ull, n, 200, all), paired = 0;
	ASSERT(nn >= n - n / 200);
	for (size_t k = 0; k < nn; k++) {
		ASSERT_EQ(all[k] >> MD_WHERE_PAGE_BITS, 2);
		uint64_t at = (all[k] & ((1ull << MD_WHERE_PAGE_BITS) - 1)) << 12;
		paired += md__domain_lookup(&dom, 0x5151000000000000ull + k * 0x10001ull, 2, at, 0, &nm) ==
			  MD_LOOKUP_PUBLISH;
	}
	ASSERT(paired >= nn - nn / 100);	/* about 0.4 % lost in full buckets */
	ASSERT_EQ(dom.read_pairs, paired);
	md__domain_seen_free(&dom);
	md__index_free(&dom.index);
	free(dom.reads);
	free(dom.pending);
	return 0;
}

/* The descriptors an agent keeps (its statistics file's, the thread's
 * statm, the cgroup files kept for after a chroot) are closed at its end
 * only if the VMM did not put a file of its own at their numbers since:
 * md_agent_free closed the VMM's files (a review's find). */
static int fds_naming(const char *suffix, int *fds, int max)
{
	int n = 0;
	size_t sl = strlen(suffix);
	for (int fd = 3; fd < 1024 && n < max; fd++) {
		char l[64], t[PATH_MAX];
		snprintf(l, sizeof(l), "/proc/self/fd/%d", fd);
		ssize_t len = readlink(l, t, sizeof(t) - 1);
		if (len <= 0)
			continue;
		t[len] = '\0';
		if ((size_t)len >= sl && strcmp(t + len - sl, suffix) == 0)
			fds[n++] = fd;
	}
	return n;
}

TEST_IMPL(agent_free_leaves_vmm_files_at_its_numbers)
{
	char dir[600], victim[600], proc[1024];
	snprintf(dir, sizeof(dir), "%s/run", test_dir());
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(victim, sizeof(victim), "%s/vmm-file", test_dir());
	int v = open(victim, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ASSERT(v >= 0);
	md_agent *a;
	md_agent_options o = { .run_dir = dir };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	usleep(100000);	/* its thread runs */
	int fds[16], n = fds_naming(".stats", fds, 1);
	ASSERT_EQ(n, 1);
	n += fds_naming("/statm", fds + n, 15);
	ASSERT(n >= 2);
	for (int i = 0; i < n; i++)
		ASSERT_EQ(dup2(v, fds[i]), fds[i]);	/* the VMM's file at the agent's numbers */
	md_agent_free(a);
	for (int i = 0; i < n; i++)
		ASSERT(fcntl(fds[i], F_GETFD) >= 0);
	snprintf(proc, sizeof(proc), "%s/proc", test_dir());
	ASSERT_EQ(fake_put("proc/self/mountinfo", "40 30 0:37 / @/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0);
	ASSERT_EQ(fake_put("proc/self/cgroup", "0::/vm\n"), 0);
	ASSERT_EQ(fake_level("unified/vm", "memory.max", "157286400", "memory.current", 100 * MiB, NULL, NULL, NULL,
			     0), 0);
	struct md__memroom m;
	md__memroom_proc = proc;
	ASSERT_EQ(md__memroom_open(&m), 0);
	md__memroom_proc = "/proc";
	ASSERT_EQ(m.n, 1u);
	int lim = m.fd[0][0];
	ASSERT(lim >= 0);
	ASSERT_EQ(dup2(v, lim), lim);
	md__memroom_close(&m);
	ASSERT(fcntl(lim, F_GETFD) >= 0);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	close(lim);
	close(v);
	return 0;
}

/* A run of MD_INDEX_PROBES entries of one tag (one page published again
 * and again: a PUBLISH of n > 1 pages does not look for equal live pages)
 * makes every further insert of that tag fail with -ENOSPC; past 50 % use,
 * tombstones counted, that failure rebuilt the whole table at the same
 * size, and with live entries just under half of cap one insert and one
 * removal brought it back: a rebuild, O(cap), every few operations in
 * memdedupd's only thread. Now at most one per cap/4 changes. */
TEST_IMPL(index_refused_tag_rebuilds_bounded)
{
	enum { CAP = 1024, ROUNDS = 100 };
	struct md__index ix;
	ASSERT_EQ(md__index_init(&ix, CAP), 0);
	const uint64_t same = 0x0badcafe00000000ull;
	uint32_t slot = 0;
	for (; slot < MD_INDEX_PROBES; slot++)
		ASSERT_EQ(md__index_insert(&ix, same | slot, slot), 0);
	uint64_t k = 1;
	unsigned rebuilds = 0;
	for (uint32_t r = 0; r < ROUNDS; r++) {
		/* Other live pages up to just under half of cap. */
		for (; ix.live < CAP / 2 - 2; k++, slot++)
			(void)md__index_insert(&ix, k * 0x9e3779b97f4a7c15ull, slot);
		uint64_t other = (uint64_t)(r + 1) * 0xc2b2ae3d27d4eb4full;
		if (md__index_insert(&ix, other, 100000 + r) == 0)
			ASSERT_EQ(md__index_remove(&ix, other, 100000 + r), 0);
		uint64_t key = ix.key;
		(void)md__index_insert(&ix, same | (200000 + r), 200000 + r);
		rebuilds += ix.key != key;
	}
	md__index_free(&ix);
	fprintf(stderr, "%u whole-table rebuilds in %u rounds\n", rebuilds, (unsigned)ROUNDS);
	/* Amortized, one per quarter of cap inserts and removals would do. */
	ASSERT(rebuilds <= 3);
	return 0;
}
