/* test_daemon.c - memdedupd in a process of its own, driven through the
 * client library and raw sockets: pools per user, publish/lookup through the
 * read-only descriptor, references dropped with the agents that die, a
 * daemon that dies, malformed peers, CONTROL, and the CLI's commands. */
#include <dirent.h>
#include <linux/sched.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "client.h"
#include "daemon.h"
#include "daemon_util.h"
#include "index.h"
#include "proc.h"
#include "runner.h"
#include "stats_file.h"

#define PG MD_MSG_PAGE

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Publishes n pages of seeds seed.. and returns the first slot. */
static uint32_t publish(struct md__client *c, unsigned seed, uint32_t n, unsigned char *pages,
			uint64_t *hash)
{
	uint32_t first;
	for (uint32_t i = 0; i < n; i++) {
		td_fill_page(pages + i * PG, seed + i);
		hash[i] = md__page_hash(pages + i * PG);
	}
	ASSERT_EQ(md__client_publish(c, hash, pages, n, &first), 0);
	return first;
}

TEST_IMPL(daemon_publish_copies_past_index_bound)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[MD_PUBLISH_MAX * PG];
	uint64_t hash[MD_PUBLISH_MAX];
	uint32_t first, slot1;
	int fd;

	/* Multi-page PUBLISHes of one page: the index bounds how many copies
	 * it keeps of one tag, and the copies past that are published all
	 * the same, never offered to a lookup. */
	td_start(&t, 8 * MD_PUBLISH_MAX);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	td_fill_page(pages, 7);
	hash[0] = md__page_hash(pages);
	for (uint32_t i = 1; i < MD_PUBLISH_MAX; i++) {
		memcpy(pages + i * PG, pages, PG);
		hash[i] = hash[0];
	}
	uint32_t n = (MD_INDEX_PROBES + MD_PUBLISH_MAX - 1) / MD_PUBLISH_MAX + 1;
	for (uint32_t k = 0; k < n; k++)
		ASSERT_EQ(md__client_publish(c, hash, pages, MD_PUBLISH_MAX, &first), 0);
	json_t *st = td_status(&t);
	json_t *dom = td_domain(st, w.domain_id);
	ASSERT(dom);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), n * MD_PUBLISH_MAX);
	ASSERT(td_int(dom, "index_entries") <= MD_INDEX_PROBES);
	/* The pool's generation as WELCOME and the agent's log say it. */
	char gen[24];
	snprintf(gen, sizeof(gen), "%llu", (unsigned long long)w.generation);
	ASSERT(json_is_string(json_object_get(dom, "generation")));
	ASSERT(strcmp(json_string_value(json_object_get(dom, "generation")), gen) == 0);
	json_decref(st);
	ASSERT_EQ(md__client_lookup(c, hash, NULL, 1, &slot1), 0);
	ASSERT(slot1 >= 1 && slot1 <= n * MD_PUBLISH_MAX);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_publish_lookup)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[3 * PG];
	uint64_t hash[3];
	uint32_t slot1[4];
	int fd;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	ASSERT_EQ(w.pool_pages, 64);
	ASSERT(w.generation != 0);
	uint32_t first = publish(c, 1, 3, pages, hash);

	uint64_t q[4] = { hash[0], hash[1], hash[2], 12345 };
	ASSERT_EQ(md__client_lookup(c, q, NULL, 4, slot1), 0);
	ASSERT_EQ(slot1[0], first + 1);
	ASSERT_EQ(slot1[1], first + 2);
	ASSERT_EQ(slot1[2], first + 3);
	ASSERT_EQ(slot1[3], 0);
	/* A hash that shares only its high half with a page's (all the
	 * index keeps) names no slot. */
	q[0] = hash[0] ^ 0xffffffffu;
	ASSERT_EQ(md__client_lookup(c, q, NULL, 1, slot1), 0);
	ASSERT_EQ(slot1[0], 0);

	/* What we read through the received descriptor is what we published. */
	const unsigned char *v = mmap(NULL, 64 * PG, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT(v != MAP_FAILED);
	ASSERT_EQ(memcmp(v + (size_t)first * PG, pages, 3 * PG), 0);
	/* And nothing can write the pool through it. */
	void *wm = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT(wm == MAP_FAILED && (errno == EACCES || errno == EPERM));
	ASSERT_EQ(write(fd, pages, 16), -1);
	ASSERT_EQ(errno, EBADF);
	ASSERT(pwrite(fd, pages, 16, 0) == -1 && errno == EBADF);
	ASSERT(fcntl(fd, F_GETFL) >= 0 && (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
	/* A private mapping is copy-on-write: the writer's copy only. */
	unsigned char *pm = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd,
				 (off_t)first * PG);
	ASSERT(pm != MAP_FAILED);
	pm[0] ^= 0xff;
	ASSERT(v[(size_t)first * PG] == pages[0]);
	munmap(pm, PG);

	/* A wrong hash is refused; the connection stays. */
	uint64_t bad = hash[0] ^ 1;
	uint32_t s;
	ASSERT_EQ(md__client_publish(c, &bad, pages, 1, &s), -EINVAL);

	/* REF / UNREF: all or none; the last UNREF frees and unindexes. */
	uint32_t refs[2] = { first, 63 };
	ASSERT_EQ(md__client_ref(c, refs, 2, +1), -EINVAL);	/* 63 is not live */
	ASSERT_EQ(md__client_ref(c, refs, 1, +1), 0);
	/* A read told: the read pairs' table is made, and counted below. */
	struct md__read_run run = { md__read_key(1, 2), 0, 0x7f0000010000ull, 1 };
	ASSERT_EQ(md__client_reads(c, &run, 1), 0);
	json_t *st = td_status(&t);
	json_t *dom = td_domain(st, w.domain_id);
	ASSERT(dom);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 3);
	ASSERT_EQ(td_int(dom, "pages_sharing"), 1);	/* 4 references to 3 pages: KSM's 1 */
	ASSERT_EQ(td_int(dom, "index_entries"), 3);
	ASSERT_EQ(td_int(dom, "references"), 4);
	ASSERT_EQ(td_int(json_array_get(json_object_get(st, "agents"), 0), "references"), 4);
	/* No REPORT yet: no age to say. */
	ASSERT(json_is_null(json_object_get(json_array_get(json_object_get(st, "agents"), 0), "report_age_seconds")));
	/* The saving less the bookkeeping: 17 bytes a slot handed out (up to
	 * the pool's end), the index table as made (3 entries), the
	 * sightings (16 bytes an entry; the lookup of 12345 made them) and
	 * read pairs (12) at their size, and the agent's reference table (4
	 * bytes a slot: 1,024, cut to the pool's 64). */
	struct md__index ix;
	ASSERT_EQ(md__index_init(&ix, 1024), 0);
	long long meta = (long long)(first + 3) * 17 + (long long)md__index_bytes(&ix) +
			 td_int(dom, "sighting_slots") * 16 + td_int(dom, "read_slots") * 12 + 64 * 4;
	md__index_free(&ix);
	ASSERT(td_int(dom, "sighting_slots") > 0);
	ASSERT(td_int(dom, "read_slots") > 0);
	ASSERT_EQ(td_int(dom, "general_profit"), 1 * PG - meta);
	/* The totals, of this one domain. */
	json_t *tot = json_object_get(st, "totals");
	ASSERT_EQ(td_int(tot, "domains"), 1);
	ASSERT_EQ(td_int(tot, "pool_live_pages"), 3);
	ASSERT_EQ(td_int(tot, "pool_bytes"), 3 * PG);
	ASSERT_EQ(td_int(tot, "pages_shared"), 3);
	ASSERT_EQ(td_int(tot, "pages_sharing"), 1);
	ASSERT_EQ(td_int(tot, "general_profit"), 1 * PG - meta);
	json_decref(st);
	/* A later page (here from past every domain) lists no domain; its
	 * totals are still those of all. */
	struct md__client *sc = td_connect(&t);
	static char page[MD_MSG_MAX];
	struct md__msg sm = { .hdr.type = MD_MSG_STATUS, .u.status = { UINT32_MAX, 0 } };
	unsigned char req[MD_MSG_HDR_SIZE + 8];
	uint32_t plen = sizeof(page);
	unsigned type;
	ssize_t n = md__msg_encode(&sm, req, sizeof(req));
	ASSERT(n > 0);
	ASSERT_EQ(md__client_request(sc, MD_MSG_STATUS, req + MD_MSG_HDR_SIZE, (uint32_t)n - MD_MSG_HDR_SIZE,
				     page, &plen, &type), 0);
	ASSERT_EQ(type, MD_MSG_STATUS_R);
	md__client_free(sc);
	st = json_loadb(page, plen, 0, NULL);
	ASSERT(st);
	ASSERT_EQ(json_array_size(json_object_get(st, "domains")), 0);
	tot = json_object_get(st, "totals");
	ASSERT_EQ(td_int(tot, "pool_live_pages"), 3);
	ASSERT_EQ(td_int(tot, "pages_sharing"), 1);
	ASSERT_EQ(td_int(tot, "general_profit"), 1 * PG - meta);
	json_decref(st);
	uint32_t un[2] = { first, first };
	ASSERT_EQ(md__client_ref(c, un, 2, -1), 0);
	ASSERT_EQ(md__client_ref(c, un, 1, -1), -EINVAL);	/* no longer held */
	ASSERT_EQ(md__client_lookup(c, q, NULL, 1, slot1), 0);
	ASSERT_EQ(slot1[0], 0);
	st = td_status(&t);
	dom = td_domain(st, w.domain_id);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 2);
	ASSERT_EQ(td_int(dom, "index_entries"), 2);
	json_decref(st);

	/* Pipelined PUBLISHes: a page equal to a live one (here: to the page
	 * before it in the same send) gets that one's slot, a wrong hash is
	 * refused alone, and the connection stays. */
	static unsigned char four[4 * PG];
	uint64_t h4[4];
	uint32_t s4[4];
	int st4[4];
	td_fill_page(four, 40);
	td_fill_page(four + PG, 41);
	memcpy(four + 2 * PG, four + PG, PG);
	td_fill_page(four + 3 * PG, 43);
	for (int i = 0; i < 4; i++)
		h4[i] = md__page_hash(four + i * PG);
	h4[3] ^= 1;
	const void *p4[4] = { four, four + PG, four + 2 * PG, four + 3 * PG };
	ASSERT_EQ(md__client_publish_each(c, h4, p4, 4, s4, st4), 0);
	ASSERT_EQ(st4[0], 0);
	ASSERT_EQ(st4[1], 0);
	ASSERT_EQ(st4[2], 0);
	ASSERT_EQ(st4[3], -EINVAL);
	ASSERT(s4[0] != s4[1]);
	ASSERT_EQ(s4[2], s4[1]);
	ASSERT_EQ(memcmp(v + (size_t)s4[0] * PG, four, PG), 0);
	ASSERT_EQ(memcmp(v + (size_t)s4[1] * PG, four + PG, PG), 0);
	st = td_status(&t);
	dom = td_domain(st, w.domain_id);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 4);
	ASSERT_EQ(td_int(dom, "pages_sharing"), 1);
	json_decref(st);
	ASSERT_EQ(md__client_publish_each(c, h4, p4, 0, s4, st4), -EINVAL);
	ASSERT_EQ(md__client_publish_each(c, h4, p4, MD_PUBLISH_EACH_MAX + 1, s4, st4), -EINVAL);

	/* REPORT shows in status. */
	uint64_t ctr[3] = { 5, 6, 7 };
	ASSERT_EQ(md__client_report(c, ctr, 3), 0);
	st = td_status(&t);
	json_t *a = json_array_get(json_object_get(st, "agents"), 0);
	ASSERT(a);
	ASSERT_EQ(td_int(a, "pid"), getpid());
	ASSERT_EQ(json_integer_value(json_array_get(json_object_get(a, "counters"), 2)), 7);
	double age = json_real_value(json_object_get(a, "report_age_seconds"));
	ASSERT(json_is_real(json_object_get(a, "report_age_seconds")) && age >= 0 && age < 60);
	json_decref(st);
	/* Beyond JSON's integers (a damaged agent's), as the CLI shows its
	 * own: 2^63 - 1; the general profit signed. They showed negative. */
	uint64_t big[MD_CTR_COUNT] = { 0 };
	big[0] = UINT64_MAX;
	big[MD_CTR_GENERAL_PROFIT] = (uint64_t)-4096;
	ASSERT_EQ(md__client_report(c, big, MD_CTR_COUNT), 0);
	st = td_status(&t);
	a = json_array_get(json_object_get(st, "agents"), 0);
	ASSERT_EQ(json_integer_value(json_array_get(json_object_get(a, "counters"), 0)), INT64_MAX);
	json_t *named = json_object_get(a, "counters_named");
	ASSERT_EQ(td_int(named, md__ctr_name(0)), INT64_MAX);
	ASSERT_EQ(td_int(named, "general_profit"), -4096);
	ASSERT_EQ(json_object_size(named), MD_CTR_COUNT);	/* every counter sent, named */
	ASSERT(json_object_get(named, md__ctr_name(MD_CTR_COUNT - 1)));
	json_decref(st);

	munmap((void *)v, 64 * PG);
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}


/* A PUBLISH of several pages is refused whole if any page's hash is not
 * its own, the last as the first: a false hash in the index names a slot
 * of other content to every lookup of it. */
TEST_IMPL(daemon_publish_checks_every_hash)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[3 * PG];
	uint64_t hash[3];
	uint32_t first, slot1[3];
	int fd;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	for (uint32_t i = 0; i < 3; i++) {
		td_fill_page(pages + i * PG, 70 + i);
		hash[i] = md__page_hash(pages + i * PG);
	}
	for (int bad = 0; bad < 3; bad++) {
		hash[bad] ^= 1;
		ASSERT_EQ(md__client_publish(c, hash, pages, 3, &first), -EINVAL);
		hash[bad] ^= 1;
	}
	json_t *st = td_status(&t);
	json_t *dom = td_domain(st, w.domain_id);
	ASSERT(dom);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 0);
	ASSERT_EQ(td_int(dom, "references"), 0);
	json_decref(st);
	ASSERT_EQ(md__client_lookup(c, hash, NULL, 3, slot1), 0);
	for (int i = 0; i < 3; i++)
		ASSERT(slot1[i] == 0 || slot1[i] == MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__client_publish(c, hash, pages, 3, &first), 0);	/* the connection stays */
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* A slot freed by its last UNREF keeps its page until the punch (a second
 * of quiet later): a REF of it then must be refused, or an agent would map
 * it and the punch zero it under its guest. Refused again once punched. */
TEST_IMPL(daemon_ref_of_freed_slot_refused)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[PG];
	uint64_t hash[1];
	int fd;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	uint32_t s = publish(c, 500, 1, pages, hash);	/* one reference, ours */
	ASSERT_EQ(md__client_ref(c, &s, 1, -1), 0);
	ASSERT_EQ(md__client_ref(c, &s, 1, +1), -EINVAL);	/* freed, not punched yet */
	json_t *st = td_status(&t);
	json_t *dom = td_domain(st, w.domain_id);
	ASSERT(dom);
	ASSERT_EQ(td_int(dom, "references"), 0);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 0);
	json_decref(st);
	for (double t0 = now(); test_file_blocks(fd) > 0 && now() - t0 < 10;)
		usleep(20000);
	ASSERT_EQ(test_file_blocks(fd), 0);	/* punched */
	ASSERT_EQ(md__client_ref(c, &s, 1, +1), -EINVAL);
	st = td_status(&t);
	dom = td_domain(st, w.domain_id);
	ASSERT_EQ(td_int(dom, "references"), 0);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 0);
	json_decref(st);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* A REF naming a slot past the pool's end is refused before the slot's
 * state is read (out of the table's bounds), and the daemon lives on. */
TEST_IMPL(daemon_ref_past_pool_refused)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[PG];
	uint64_t hash[1];
	int fd;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	uint32_t s = publish(c, 510, 1, pages, hash);
	uint32_t far[] = { 0xfffffff0u, 64, 0x7fffffffu, 1u << 24 };
	for (unsigned i = 0; i < sizeof(far) / sizeof(far[0]); i++) {
		ASSERT_EQ(md__client_ref(c, &far[i], 1, +1), -EINVAL);
		uint32_t two[2] = { s, far[i] };	/* all or none */
		ASSERT_EQ(md__client_ref(c, two, 2, +1), -EINVAL);
	}
	ASSERT(md__daemon_alive(t.sock));
	json_t *st = td_status(&t);
	json_t *dom = td_domain(st, w.domain_id);
	ASSERT(dom);
	ASSERT_EQ(td_int(dom, "references"), 1);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 1);
	json_decref(st);
	ASSERT_EQ(md__client_ref(c, &s, 1, -1), 0);	/* the connection still serves */
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}
/* A random session against a model of the pool: publishes of a few
 * contents (an equal live page gives its slot), REF and UNREF of live,
 * dead and never-used slots, more than held or not, lookups; every answer
 * as the model says, and at the end every page freed. Seeded: the same
 * session every run. */
TEST_IMPL(daemon_random_session)
{
	enum { CONTENTS = 6, POOL = 32, OPS = 600 };
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char page[CONTENTS][PG];
	uint64_t hash[CONTENTS];
	int held[POOL] = { 0 };		/* our references per slot */
	int content_of[POOL];		/* live slot: its content */
	int fd;
	unsigned seed = 12345;

	for (int c = 0; c < CONTENTS; c++) {
		td_fill_page(page[c], 900 + (unsigned)c);
		hash[c] = md__page_hash(page[c]);
	}
	td_start(&t, POOL);
	struct md__client *cl = td_agent(&t, NULL, &w, &fd);
	for (int op = 0; op < OPS; op++) {
		unsigned r = rand_r(&seed) % 100;
		int c = rand_r(&seed) % CONTENTS;
		int live = -1;
		for (int s = 0; s < POOL; s++)
			if (held[s] && content_of[s] == c)
				live = s;
		if (r < 35) {
			uint32_t slot;
			ASSERT_EQ(md__client_publish(cl, &hash[c], page[c], 1, &slot), 0);
			ASSERT(slot < POOL);
			if (live >= 0)
				ASSERT_EQ((int)slot, live);	/* the live copy's slot */
			else
				ASSERT_EQ(held[slot], 0);	/* a free one */
			held[slot]++;
			content_of[slot] = c;
		} else if (r < 65) {
			/* REF of one to three slots, any of them maybe dead. */
			uint32_t sl[3];
			uint32_t n = 1 + rand_r(&seed) % 3;
			int ok = 1;
			for (uint32_t i = 0; i < n; i++) {
				sl[i] = rand_r(&seed) % (POOL + 4);	/* some past the pool */
				ok &= sl[i] < POOL && held[sl[i]] > 0;
			}
			ASSERT_EQ(md__client_ref(cl, sl, n, +1), ok ? 0 : -EINVAL);
			for (uint32_t i = 0; ok && i < n; i++)
				held[sl[i]]++;
		} else if (r < 92) {
			/* UNREF: all or none, each slot at most as often as held. */
			uint32_t sl[3];
			uint32_t n = 1 + rand_r(&seed) % 3;
			int want[POOL + 4] = { 0 }, ok = 1;
			for (uint32_t i = 0; i < n; i++) {
				sl[i] = rand_r(&seed) % (POOL + 4);
				want[sl[i]]++;
			}
			for (uint32_t i = 0; i < n; i++)
				ok &= sl[i] < POOL && want[sl[i]] <= held[sl[i]];
			ASSERT_EQ(md__client_ref(cl, sl, n, -1), ok ? 0 : -EINVAL);
			for (uint32_t i = 0; ok && i < n; i++)
				held[sl[i]]--;
		} else {
			uint32_t slot1;
			ASSERT_EQ(md__client_lookup(cl, &hash[c], NULL, 1, &slot1), 0);
			ASSERT_EQ(slot1, live >= 0 ? (uint32_t)live + 1 : 0);
		}
	}
	int nlive = 0;
	for (int s = 0; s < POOL; s++)
		nlive += held[s] > 0;
	json_t *st = td_status(&t);
	ASSERT_EQ(td_int(td_domain(st, w.domain_id), "pool_live_pages"), nlive);
	json_decref(st);
	for (int s = 0; s < POOL; s++)
		for (; held[s] > 0; held[s]--)
			ASSERT_EQ(md__client_ref(cl, (uint32_t[]){ (uint32_t)s }, 1, -1), 0);
	st = td_status(&t);
	ASSERT_EQ(td_int(td_domain(st, w.domain_id), "pool_live_pages"), 0);
	json_decref(st);
	close(fd);
	md__client_free(cl);
	td_stop(&t);
	return 0;
}

/* A user other than root holds at most a pool's worth of pages in all
 * its domains together: 64 domains of a pool each would take 64 pools of
 * the host's memory. */
TEST_IMPL(daemon_pool_pages_per_uid)
{
	struct tdaemon t;
	struct passwd *pw = getpwnam("nobody");
	if (getuid() != 0 || !pw)
		SKIP("needs root and a 'nobody' user");
	td_start(&t, 8);
	/* Root's pool full first: other users' pages are not counted. */
	static unsigned char rpages[8 * PG];
	uint64_t rhash[8];
	uint32_t rfirst;
	for (unsigned i = 0; i < 8; i++) {
		td_fill_page(rpages + i * PG, 80 + i);
		rhash[i] = md__page_hash(rpages + i * PG);
	}
	struct md__msg_welcome rw;
	int rfd;
	struct md__client *rc = td_agent(&t, NULL, &rw, &rfd);
	ASSERT_EQ(md__client_publish(rc, rhash, rpages, 8, &rfirst), 0);
	/* Root is held to no pool's worth across its domains: a page more in
	 * another domain of its own is taken. */
	pid_t rkid = fork();
	ASSERT(rkid >= 0);
	if (rkid == 0) {
		struct md__msg_welcome w;
		struct md__client *c;
		int fd;
		td_fill_page(rpages, 90);
		rhash[0] = md__page_hash(rpages);
		if (md__client_connect(&c, t.sock) || md__client_hello(c, "r2", 0, &w, &fd))
			_exit(1);
		_exit(md__client_publish(c, rhash, rpages, 1, &rfirst) == 0 ? 0 : 2);
	}
	int rst;
	ASSERT_EQ(waitpid(rkid, &rst, 0), rkid);
	ASSERT(WIFEXITED(rst));
	ASSERT_EQ(WEXITSTATUS(rst), 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static unsigned char pages[8 * PG];
		uint64_t hash[8];
		uint32_t first;
		struct md__msg_welcome w;
		struct md__client *c;
		int fd;
		if (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) || setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid))
			_exit(10);
		for (unsigned i = 0; i < 8; i++) {
			td_fill_page(pages + i * PG, 40 + i);
			hash[i] = md__page_hash(pages + i * PG);
		}
		if (md__client_connect(&c, t.sock) || md__client_hello(c, "a", 0, &w, &fd) ||
		    md__client_publish(c, hash, pages, 7, &first))
			_exit(11);
		pid_t grandkid = fork();	/* one process, one domain */
		if (grandkid == 0) {
			if (md__client_connect(&c, t.sock) || md__client_hello(c, "b", 0, &w, &fd))
				_exit(12);
			if (md__client_publish(c, hash + 7, pages + 7 * PG, 1, &first))
				_exit(13);	/* the eighth fits */
			uint32_t eighth = first;
			td_fill_page(pages, 60);
			hash[0] = md__page_hash(pages);
			if (md__client_publish(c, hash, pages, 1, &first) != -ENOSPC)
				_exit(14);
			/* A copy of a live page takes no new slot: still given. */
			if (md__client_publish(c, hash + 7, pages + 7 * PG, 1, &first) || first != eighth)
				_exit(16);
			_exit(0);
		}
		int st;
		if (grandkid < 0 || waitpid(grandkid, &st, 0) != grandkid || !WIFEXITED(st))
			_exit(15);
		_exit(WEXITSTATUS(st));
	}
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	md__client_free(rc);
	close(rfd);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_domains_per_uid)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[PG];
	uint64_t hash;
	int fd, pfd[2];

	struct passwd *pw = getpwnam("nobody");
	if (getuid() != 0 || !pw)
		SKIP("needs root and a 'nobody' user");
	td_start(&t, 64);
	struct md__client *c = td_agent(&t, "shared", &w, &fd);
	publish(c, 9, 1, pages, &hash);

	/* Named domains of one user are distinct too. */
	struct md__msg_welcome w2;
	int fd2;
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__client *c2 = td_agent(&t, "other", &w2, &fd2);
		_exit(w2.domain_id != w.domain_id ? 0 : 1);
		(void)c2;
	}
	int st;
	ASSERT(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0);

	ASSERT(pipe(pfd) == 0);
	kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		/* Another user asking for the same name gets another pool. */
		if (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) || setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid))
			_exit(10);
		struct md__client *c2;
		if (md__client_connect(&c2, t.sock))
			_exit(11);
		if (md__client_hello(c2, "shared", 0, &w2, &fd2))
			_exit(12);
		if (w2.domain_id == w.domain_id || w2.generation == w.generation)
			_exit(13);
		uint32_t s1 = 99;
		if (md__client_lookup(c2, &hash, NULL, 1, &s1) || s1 != 0)
			_exit(14);
		/* Nor can it reopen its read-only pool for writing. */
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd2);
		int rw = open(path, O_RDWR);
		if (rw >= 0 || errno != EACCES)
			_exit(15);
		/* Its status shows its own domain only. */
		char buf[65536];
		uint32_t len = sizeof(buf) - 1;
		unsigned type;
		struct md__client *c3 = td_connect(&t);
		if (md__client_request(c3, MD_MSG_STATUS, NULL, 0, buf, &len, &type))
			_exit(16);
		md__client_free(c3);
		buf[len] = '\0';
		if (strstr(buf, "\"uid\":0,") || !strstr(buf, "\"name\":\"shared\""))
			_exit(17);
		_exit(0);
	}
	ASSERT(waitpid(kid, &st, 0) == kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	/* And ours is still found by us. */
	uint32_t s1;
	ASSERT_EQ(md__client_lookup(c, &hash, NULL, 1, &s1), 0);
	ASSERT(s1 != 0);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* Reads what the daemon sent on its own until cond holds (up to 2 s);
 * cond is evaluated once more after, so it must stay true when repeated. */
#define POLL_UNTIL(c, cond) do { \
	struct md__msg_control ctl_; \
	for (int i_ = 0; i_ < 200 && !(cond); i_++) { \
		md__client_next_control(c, &ctl_); \
		usleep(10000); \
	} \
	ASSERT(cond); \
} while (0)

/* Lets a child agent that waits on sync[0] go, and checks it exited 0. */
static void child_release(pid_t kid, int sync[2])
{
	int st;
	ASSERT(write(sync[1], "x", 1) == 1);
	ASSERT(waitpid(kid, &st, 0) == kid && WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	close(sync[0]);
	close(sync[1]);
}

/* A connection of our own, spoken to message by message. */
static int raw_connect(const struct tdaemon *t)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(fd >= 0);
	td_sockaddr(t, &sa);
	ASSERT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	return fd;
}

static void raw_send(int fd, const struct md__msg *m)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	ssize_t n = md__msg_encode(m, buf, sizeof(buf));
	ASSERT(n > 0);
	ASSERT(send(fd, buf, (size_t)n, MSG_NOSIGNAL) == n);
}

static void raw_hello(int fd, const char *domain)
{
	struct md__msg m = { .hdr = { .type = MD_MSG_HELLO, .seq = 1 } };
	m.u.hello.pid = (uint32_t)getpid();
	m.u.hello.domain_len = (uint16_t)strlen(domain);
	snprintf(m.u.hello.domain, sizeof(m.u.hello.domain), "%s", domain);
	raw_send(fd, &m);
}

static int read_msg_bytes(int fd, void *buf, size_t n)
{
	for (size_t done = 0; done < n;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ASSERT(poll(&p, 1, 20000) == 1);
		ssize_t r = read(fd, (char *)buf + done, n - done);
		if (r <= 0)
			return 0;
		done += (size_t)r;
	}
	return 1;
}

/* The next message's type (decoded into *m), 0 at EOF. */
static unsigned raw_next(int fd, struct md__msg *m)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	struct md__msg_hdr h;
	if (!read_msg_bytes(fd, buf, MD_MSG_HDR_SIZE))
		return 0;
	ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), 0);
	ASSERT(read_msg_bytes(fd, buf + MD_MSG_HDR_SIZE, h.length));
	ASSERT_EQ(md__msg_decode(buf, MD_MSG_HDR_SIZE + h.length, m), 0);
	return h.type;
}

/* The SHAREs an agent's raw connection holds up to the reply of a LOOKUP
 * sent now, and the last one's number in *last: everything queued for it
 * before the LOOKUP was handled. */
static int shares_before_reply(int fd, uint32_t *last)
{
	static struct md__msg m;
	unsigned type;
	int n = 0;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP, .seq = 7 } };
	m.u.lookup.n = 1;
	m.u.lookup.hash[0] = 12345;
	raw_send(fd, &m);
	while ((type = raw_next(fd, &m)) != MD_MSG_LOOKUP_R) {
		ASSERT(type != 0 && type != MD_MSG_ERROR);
		if (type == MD_MSG_SHARE) {
			*last = m.u.share.part;
			n++;
		}
	}
	return n;
}

/* An agent streaming READS of 128 full runs (131,072 pages each, a few
 * milliseconds of work apiece) does not hold another peer's request: the
 * daemon handled every READS already read from a connection before it
 * looked at the next one, and 48 such agents made everyone's requests time
 * out. Both are there when the daemon wakes (it was stopped), the stream
 * first: the other's answer comes after one or two of the stream's (one a
 * wake-up). */
TEST_IMPL(daemon_reads_stream_fair)
{
	struct tdaemon t;
	static struct md__msg m;
	const int sent = 24;
	td_start(&t, 4096);
	int f = raw_connect(&t);
	raw_hello(f, "stream");
	ASSERT_EQ(raw_next(f, &m), MD_MSG_WELCOME);
	int v = raw_connect(&t);
	unsigned type;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_STATUS, .seq = 4 } };
	raw_send(v, &m);	/* accepted before the pause */
	while ((type = raw_next(v, &m)) != MD_MSG_STATUS_R)
		ASSERT(type != 0 && type != MD_MSG_ERROR);
	td_pause(&t);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_READS } };
	m.u.reads.n = MD_READS_MAX;
	for (uint32_t i = 0; i < MD_READS_MAX; i++)
		m.u.reads.run[i] = (struct md__read_run){ 77, (uint64_t)i * MD_READ_RUN_PAGES * PG,
							  0x10000000ull + (uint64_t)i * MD_READ_RUN_PAGES * PG,
							  MD_READ_RUN_PAGES };
	for (int k = 0; k < sent; k++) {
		m.hdr.seq = 100 + (uint32_t)k;
		raw_send(f, &m);
	}
	usleep(10000);	/* the stream is ready first */
	m = (struct md__msg){ .hdr = { .type = MD_MSG_STATUS, .seq = 5 } };
	raw_send(v, &m);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	while ((type = raw_next(v, &m)) != MD_MSG_STATUS_R)
		ASSERT(type != 0 && type != MD_MSG_ERROR);
	/* The stream's answers sent before: all there now (each written as
	 * its request was handled), and maybe a few sent since, while we
	 * count: 16 or more, all of one wake-up, without the budget. (Of
	 * its 131,072 file pages, a few share the reads table's half of
	 * their tags: those are named, CANDIDATES.) */
	int before = 0;
	for (struct pollfd p = { f, POLLIN, 0 }; poll(&p, 1, 0) == 1;) {
		type = raw_next(f, &m);
		ASSERT(type == MD_MSG_ACK || type == MD_MSG_SHARE || type == MD_MSG_CANDIDATES);
		before += type == MD_MSG_ACK;
	}
	ASSERT(before <= sent / 3);
	/* And the stream is served whole. */
	for (int acks = before; acks < sent;) {
		type = raw_next(f, &m);
		ASSERT(type == MD_MSG_ACK || type == MD_MSG_SHARE || type == MD_MSG_CANDIDATES);
		if (type == MD_MSG_ACK) {
			ASSERT_EQ(m.u.ack.status, 0);
			acks++;
		}
	}
	close(f);
	close(v);
	td_stop(&t);
	return 0;
}

/* Connected agents in the STATUS document. */
static int agents_connected(const struct tdaemon *t)
{
	json_t *st = td_status(t), *a;
	size_t i;
	int n = 0;
	json_array_foreach(json_object_get(st, "agents"), i, a)
		n += json_is_true(json_object_get(a, "connected"));
	json_decref(st);
	return n;
}

/* Agents that come and go together, all handled in one pass of the loop:
 * every other agent is told their number once, not once for each. */
TEST_IMPL(daemon_share_coalesced)
{
	enum { K = 30 };	/* a HELLO, then an EOF and a pidfd, each: one epoll_wait's worth */
	static struct md__msg m;
	struct tdaemon t;
	int ready[2], release[2];
	pid_t kid[K];
	uint32_t last = 0;
	char b;

	td_start(&t, 64);
	int v = raw_connect(&t);
	raw_hello(v, "share");
	ASSERT_EQ(raw_next(v, &m), MD_MSG_WELCOME);
	ASSERT_EQ(shares_before_reply(v, &last), 1);
	ASSERT_EQ(last, MD_SHARE_ALL);

	/* K HELLOs waiting in their sockets when the daemon resumes. */
	ASSERT(pipe(ready) == 0 && pipe(release) == 0);
	td_pause(&t);
	for (int i = 0; i < K; i++) {
		kid[i] = fork();
		ASSERT(kid[i] >= 0);
		if (kid[i] == 0) {
			close(release[1]);
			int fd = raw_connect(&t);
			raw_hello(fd, "share");
			if (write(ready[1], "k", 1) != 1)
				_exit(1);
			_exit(read(release[0], &b, 1) == 0 ? 0 : 1);	/* EOF: released */
		}
	}
	close(release[0]);
	for (int i = 0; i < K; i++)
		ASSERT_EQ(read(ready[0], &b, 1), 1);
	ASSERT_EQ(kill(t.pid, SIGCONT), 0);
	for (int i = 0; i < 2000 && agents_connected(&t) != K + 1; i++)
		usleep(10000);
	ASSERT_EQ(agents_connected(&t), K + 1);
	ASSERT(shares_before_reply(v, &last) <= 2);
	ASSERT_EQ(last, MD_SHARE_ALL / (K + 1));

	/* And all gone while it is stopped. */
	td_pause(&t);
	close(release[1]);
	for (int i = 0; i < K; i++) {
		int st;
		ASSERT_EQ(waitpid(kid[i], &st, 0), kid[i]);
		ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	ASSERT_EQ(kill(t.pid, SIGCONT), 0);
	for (int i = 0; i < 2000 && agents_connected(&t) != 1; i++)
		usleep(10000);
	ASSERT_EQ(agents_connected(&t), 1);
	ASSERT(shares_before_reply(v, &last) <= 2);
	ASSERT_EQ(last, MD_SHARE_ALL);
	close(ready[0]);
	close(ready[1]);
	close(v);
	td_stop(&t);
	return 0;
}

/* Reads an ERROR off a raw connection, checks its status and text, and
 * that the daemon closes the connection after it. */
static void raw_refused(int fd, uint32_t seq, int status, const char *text)
{
	static struct md__msg m;
	ASSERT_EQ(raw_next(fd, &m), MD_MSG_ERROR);
	ASSERT_EQ(m.hdr.seq, seq);
	ASSERT_EQ(m.u.text.status, status);
	if (!strstr(m.u.text.text, text)) {
		fprintf(stderr, "ERROR says '%s', not '%s'\n", m.u.text.text, text);
		ASSERT(0);
	}
	ASSERT_EQ(raw_next(fd, &m), 0);
}

/* A request refused whatever its payload is refused at its header: no room
 * is made for the payload, no wait for it (a PUBLISH's is 256 KiB). */
TEST_IMPL(daemon_agent_only_refused_at_header)
{
	static struct md__msg m;
	unsigned char hdr[MD_MSG_HDR_SIZE];
	struct tdaemon t;

	td_start(&t, 64);
	int fd = raw_connect(&t);
	md__msg_hdr_encode(hdr, MD_MSG_PUBLISH, md__msg_max_len(MD_MSG_PUBLISH), 5);
	ASSERT(send(fd, hdr, sizeof(hdr), MSG_NOSIGNAL) == (ssize_t)sizeof(hdr));
	raw_refused(fd, 5, -EPROTO, "PUBLISH before HELLO");
	close(fd);

	/* A second HELLO, its header only. */
	fd = raw_connect(&t);
	raw_hello(fd, "hdr");
	ASSERT_EQ(raw_next(fd, &m), MD_MSG_WELCOME);
	md__msg_hdr_encode(hdr, MD_MSG_HELLO, md__msg_max_len(MD_MSG_HELLO), 6);
	ASSERT(send(fd, hdr, sizeof(hdr), MSG_NOSIGNAL) == (ssize_t)sizeof(hdr));
	for (;;) {
		unsigned type = raw_next(fd, &m);
		if (type != MD_MSG_SHARE) {
			ASSERT_EQ(type, MD_MSG_ERROR);
			break;
		}
	}
	ASSERT_EQ(m.hdr.seq, 6);
	ASSERT_EQ(m.u.text.status, -EPROTO);
	ASSERT(strstr(m.u.text.text, "HELLO twice"));
	ASSERT_EQ(raw_next(fd, &m), 0);
	close(fd);

	/* Whole, they are refused as before. */
	fd = raw_connect(&t);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP, .seq = 8 } };
	m.u.lookup.n = 1;
	raw_send(fd, &m);
	raw_refused(fd, 8, -EPROTO, "LOOKUP before HELLO");
	close(fd);
	td_stop(&t);
	return 0;
}

/* A process's peak resident memory, in KiB (VmHWM). */
static long peak_kib(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	const char *p = strstr(file_text(path), "\nVmHWM:");
	ASSERT(p);
	return strtol(p + strlen("\nVmHWM:"), NULL, 10);
}

/* An agent's connection that closes behind a header read_conn refused (a
 * STATUS_R's, a megabyte long) with megabytes more in its socket: what is
 * left is looked through for UNREFs, but not past that header. Before, room
 * was made for its length and the socket read into it, up to 16 MiB: the
 * daemon's peak memory grew by the megabyte (review). */
TEST_IMPL(daemon_close_no_room_after_refused_header)
{
	if (geteuid() != 0)
		SKIP("needs root: megabytes in flight on one socket (SO_SNDBUFFORCE)");
	static struct md__msg m;
	static unsigned char out[4 * (MD_MSG_HDR_SIZE + MD_MSG_MAX)];
	struct tdaemon t;

	td_start(&t, 64);
	int fd = raw_connect(&t), big = 16 << 20;
	ASSERT(setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) == 0);
	raw_hello(fd, "hwm");
	ASSERT_EQ(raw_next(fd, &m), MD_MSG_WELCOME);
	ASSERT_EQ(raw_next(fd, &m), MD_MSG_SHARE);
	/* STATUS_Rs whole, as a peer that sends replies would: the daemon
	 * stopped, so that it finds them all in the socket at once. */
	size_t n = 0;
	for (int i = 0; i < 4; i++) {
		md__msg_hdr_encode(out + n, MD_MSG_STATUS_R, MD_MSG_MAX, 9 + (uint32_t)i);
		memset(out + n + MD_MSG_HDR_SIZE, 'x', MD_MSG_MAX);
		n += MD_MSG_HDR_SIZE + MD_MSG_MAX;
	}
	long before = peak_kib(t.pid);
	td_pause(&t);
	ASSERT_EQ(send(fd, out, n, MSG_NOSIGNAL | MSG_DONTWAIT), (ssize_t)n);
	ASSERT_EQ(kill(t.pid, SIGCONT), 0);
	raw_refused(fd, 9, -EBADMSG, "STATUS_R is not a request");	/* and closed: EOF */
	close(fd);
	long grew = peak_kib(t.pid) - before;
	if (grew >= 512)
		fprintf(stderr, "memdedupd's peak grew by %ld KiB\n", grew);
	ASSERT(grew < 512);
	/* Gone from the daemon's records (its only agent, holding nothing),
	 * which answers on. */
	json_t *st = NULL;
	for (int i = 0; i < 200; i++) {
		json_decref(st);
		st = td_status(&t);
		if (json_array_size(json_object_get(st, "agents")) == 0)
			break;
		usleep(10000);
	}
	ASSERT_EQ(json_array_size(json_object_get(st, "agents")), 0);
	json_decref(st);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_candidates_and_share)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	unsigned char page[PG];
	uint64_t h1, h2, got[8];
	uint32_t s1, first;
	int fd, sync[2];

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, "cand", &w, &fd);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);

	/* In one process: the same page looked up again is no duplicate, a
	 * second page with its content is, and once it is published the
	 * first page comes back as a candidate. */
	td_fill_page(page, 1);
	h1 = md__page_hash(page);
	uint64_t a1 = 0x7f0000001000ull, a2 = 0x7f0000002000ull;
	ASSERT_EQ(md__client_lookup(c, &h1, &a1, 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	ASSERT_EQ(md__client_lookup(c, &h1, &a1, 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	ASSERT_EQ(md__client_lookup(c, &h1, &a2, 1, &s1), 0);
	ASSERT_EQ(s1, MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__client_take_candidates(c, got, 8), 0);
	ASSERT_EQ(md__client_publish(c, &h1, page, 1, &first), 0);
	size_t ncand = 0;
	POLL_UNTIL(c, (ncand += md__client_take_candidates(c, got, 8)) >= 1);
	ASSERT_EQ(ncand, 1);
	ASSERT_EQ(got[0], a1);
	ASSERT_EQ(md__client_lookup(c, &h1, &a1, 1, &s1), 0);
	ASSERT_EQ(s1, first + 1);

	/* Across processes: the first sighter is told when another agent
	 * publishes; the rate is split between the two while both are on. */
	td_fill_page(page, 2);
	h2 = md__page_hash(page);
	uint64_t a3 = 0x7f0000003000ull;
	ASSERT_EQ(md__client_lookup(c, &h2, &a3, 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	ASSERT(pipe(sync) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__msg_welcome w2;
		int fd2;
		uint64_t a5 = 0x7f0000005000ull;
		uint32_t k1, kf;
		struct md__client *c2 = td_agent(&t, "cand", &w2, &fd2);
		if (md__client_lookup(c2, &h2, &a5, 1, &k1) || k1 != MD_LOOKUP_PUBLISH)
			_exit(1);
		if (md__client_publish(c2, &h2, page, 1, &kf))
			_exit(2);
		char b;
		if (read(sync[0], &b, 1) != 1)	/* stay until the parent saw it all */
			_exit(3);
		_exit(0);
	}
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 2);
	ncand = 0;
	POLL_UNTIL(c, (ncand += md__client_take_candidates(c, got, 8)) >= 1);
	ASSERT_EQ(ncand, 1);
	ASSERT_EQ(got[0], a3);
	child_release(kid, sync);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);

	/* An agent that exits while another process keeps its connection
	 * open (a child it forked): it no longer shares the rate. */
	int hold[2], up[2], go[2];
	ASSERT(pipe(hold) == 0 && pipe(up) == 0 && pipe(go) == 0);
	kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__msg_welcome w2;
		int fd2;
		char b;
		close(hold[1]);
		close(go[1]);
		struct md__client *c2 = td_agent(&t, "cand", &w2, &fd2);
		(void)c2;
		if (fork() == 0) {	/* keeps the socket open until released */
			if (read(hold[0], &b, 1) < 0)
				_exit(1);
			_exit(0);
		}
		/* Exits once the parent saw it share the rate. */
		if (write(up[1], "x", 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(1);
		_exit(0);
	}
	close(hold[0]);
	close(go[0]);
	char b;
	ASSERT_EQ(read(up[0], &b, 1), 1);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 2);
	ASSERT_EQ(write(go[1], "x", 1), 1);
	int kst;
	ASSERT_EQ(waitpid(kid, &kst, 0), kid);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);
	close(hold[1]);
	close(go[1]);
	close(up[0]);
	close(up[1]);
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

struct resume_arg {
	const struct tdaemon *t;
	struct md__client *c;
};

/* Resumes the stopped daemon once c's HELLO waits in its socket, unread. */
static void *resume_after_hello(void *arg)
{
	struct resume_arg *r = arg;
	int queued = 0;
	for (int i = 0; i < 500 && !queued; i++) {
		if (ioctl(md__client_fd(r->c), SIOCOUTQ, &queued) != 0)
			queued = 0;
		if (!queued)
			usleep(2000);
	}
	kill(r->t->pid, SIGCONT);
	return NULL;
}

TEST_IMPL(daemon_share_told_to_newcomer)
{
	/* One agent leaves and another says HELLO while the daemon is
	 * stopped: both are handled in one pass of its loop, the number of
	 * agents stays 1, and the newcomer must still be told it. */
	struct tdaemon t;
	struct md__msg_welcome w;
	int fd, up[2], hold[2];
	char b;

	td_start(&t, 64);
	ASSERT(pipe(up) == 0 && pipe(hold) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__client *c1 = td_agent(&t, "share", &w, &fd);
		(void)c1;
		if (write(up[1], "x", 1) != 1 || read(hold[0], &b, 1) < 0)
			_exit(1);
		_exit(0);
	}
	ASSERT_EQ(read(up[0], &b, 1), 1);
	struct md__client *c = td_connect(&t);
	usleep(100000);	/* accepted, no HELLO yet */
	td_pause(&t);
	ASSERT_EQ(kill(kid, SIGKILL), 0);
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	pthread_t th;
	struct resume_arg ra = { &t, c };
	ASSERT_EQ(pthread_create(&th, NULL, resume_after_hello, &ra), 0);
	ASSERT_EQ(md__client_hello(c, "share", 0, &w, &fd), 0);
	ASSERT_EQ(pthread_join(th, NULL), 0);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);
	close(fd);
	md__client_free(c);
	close(up[0]);
	close(up[1]);
	close(hold[0]);
	close(hold[1]);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_agent_connection_not_admin)
{
	/* An agent's connection asks for no STATUS or CONTROL: root's agent
	 * may run in a VMM that has dropped root since it connected. */
	struct tdaemon t;
	struct md__msg_welcome w;
	unsigned char reply[512];
	uint32_t len = sizeof(reply);
	unsigned type;
	int fd;

	td_start(&t, 64);
	static char big[MD_MSG_MAX];
	uint32_t blen = sizeof(big);
	struct md__client *c = td_agent(&t, "adm", &w, &fd);
	ASSERT(md__client_request(c, MD_MSG_STATUS, NULL, 0, big, &blen, &type) != 0 ||
	       type != MD_MSG_STATUS_R);
	md__client_free(c);
	close(fd);
	c = td_agent(&t, "adm", &w, &fd);
	struct md__msg m = { .hdr.type = MD_MSG_CONTROL };
	unsigned char buf[256];
	m.u.control.op = MD_CTL_SET;
	strcpy(m.u.control.key, "pages_to_scan");
	strcpy(m.u.control.value, "5");
	ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
	ASSERT(n > 0);
	len = sizeof(reply);
	ASSERT(md__client_request(c, MD_MSG_CONTROL, buf + MD_MSG_HDR_SIZE, (uint32_t)n - MD_MSG_HDR_SIZE,
				  reply, &len, &type) != 0 || type != MD_MSG_CONTROL_R);
	md__client_free(c);
	close(fd);
	/* The daemon's tunables are as they were. */
	json_t *st = td_status(&t);
	json_t *tun = json_object_get(json_object_get(st, "daemon"), "tunables");
	ASSERT(tun);
	ASSERT(td_int(tun, "pages_to_scan") != 5);
	json_decref(st);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_candidates_batched)
{
	/* Another agent publishes 70 pages this agent sighted first, back to
	 * back: every address comes back, in CANDIDATES of up to 64 (sent
	 * when full, and when the daemon has handled what it read). */
	enum { NP = 70 };
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[NP * PG];
	uint64_t h[NP], addr[NP], got[128];
	uint32_t s1[NP];
	int fd, sync[2];

	td_start(&t, 256);
	struct md__client *c = td_agent(&t, "batch", &w, &fd);
	for (unsigned i = 0; i < NP; i++) {
		td_fill_page(pages + i * PG, 300 + i);
		h[i] = md__page_hash(pages + i * PG);
		addr[i] = 0x7f0000100000ull + (uint64_t)i * PG;
	}
	ASSERT_EQ(md__client_lookup(c, h, addr, NP, s1), 0);
	for (unsigned i = 0; i < NP; i++)
		ASSERT_EQ(s1[i], 0);
	ASSERT(pipe(sync) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__msg_welcome w2;
		int fd2, st[NP];
		uint64_t other[NP];
		uint32_t k[NP], slot[NP];
		char b;
		struct md__client *c2 = td_agent(&t, "batch", &w2, &fd2);
		for (unsigned i = 0; i < NP; i++)
			other[i] = 0x7f0000900000ull + (uint64_t)i * PG;
		if (md__client_lookup(c2, h, other, NP, k))
			_exit(1);
		for (unsigned i = 0; i < NP; i++)
			if (k[i] != MD_LOOKUP_PUBLISH)
				_exit(2);
		/* 280 KiB in one send: more than the socket holds, so
		 * sendmsg stops inside an iovec at least once. */
		const void *pp[NP];
		for (unsigned i = 0; i < NP; i++)
			pp[i] = pages + i * PG;
		if (md__client_publish_each(c2, h, pp, NP, slot, st))
			_exit(3);
		for (unsigned i = 0; i < NP; i++)
			if (st[i])
				_exit(5);
		_exit(read(sync[0], &b, 1) == 1 ? 0 : 4);
	}
	size_t n = 0;
	POLL_UNTIL(c, (n += md__client_take_candidates(c, got + n, 128 - n)) >= NP);
	ASSERT_EQ(n, NP);
	for (unsigned i = 0; i < NP; i++) {
		int found = 0;
		for (size_t j = 0; j < n; j++)
			found |= got[j] == addr[i];
		ASSERT(found);
	}
	child_release(kid, sync);
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* Candidates until n came or 2 s passed, then 50 ms more (a further one
 * would have come with them); their number. */
static size_t take_candidates(struct md__client *c, uint64_t *got, size_t max, size_t n)
{
	size_t k = 0;
	struct md__msg_control ctl;
	for (int i = 0; i < 200 && k < n; i++) {
		k += md__client_take_candidates(c, got + k, max - k);
		md__client_next_control(c, &ctl);
		if (k < n)
			usleep(10000);
	}
	usleep(50000);
	return k + md__client_take_candidates(c, got + k, max - k);
}

TEST_IMPL(daemon_reads_pair)
{
	/* A READS of a file page another page of the domain was read into
	 * names the new copy (the agent publishes its own pairs): its
	 * lookup, untagged as a candidate's, publishes, and the other page
	 * is named back: one lookup pairs both. Never across domains, never
	 * a page with itself, and an entry pairs once. */
	struct tdaemon t;
	struct md__msg_welcome w;
	unsigned char page[PG];
	uint64_t got[8], key = md__read_key(8, 1234), key_other = md__read_key(8, 99);
	uint32_t s1, first;
	int fd, ready[2], done[2];

	td_start(&t, 64);
	ASSERT(pipe(ready) == 0 && pipe(done) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {	/* another domain read key_other's first page */
		struct md__msg_welcome w2;
		int fd2;
		char b;
		struct md__client *c2 = td_agent(&t, "elsewhere", &w2, &fd2);
		struct md__read_run r = { key_other, 0, 0x7f0000100000ull, 1 };
		if (md__client_reads(c2, &r, 1) || write(ready[1], "r", 1) != 1)
			_exit(1);
		_exit(read(done[0], &b, 1) == 1 ? 0 : 2);
	}
	char b;
	ASSERT(read(ready[0], &b, 1) == 1);
	struct md__client *c = td_agent(&t, "pair", &w, &fd);
	uint64_t x = 0x7f0000010000ull, y = 0x7f0000020000ull;
	struct md__read_run run = { key, 0, x, 4 };
	ASSERT_EQ(md__client_reads(c, &run, 1), 0);

	/* The file's third page, read again at y: y is named. */
	struct md__read_run at_y = { key, 2 * PG, y, 1 };
	ASSERT_EQ(md__client_reads(c, &at_y, 1), 0);
	ASSERT_EQ(take_candidates(c, got, 8, 1), 1);
	ASSERT_EQ(got[0], y);
	/* Its lookup publishes, and x + 2 pages comes back. */
	td_fill_page(page, 21);
	uint64_t h = md__page_hash(page);
	ASSERT_EQ(md__client_lookup(c, &h, &y, 1, &s1), 0);
	ASSERT_EQ(s1, MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__client_publish(c, &h, page, 1, &first), 0);
	ASSERT_EQ(take_candidates(c, got, 8, 1), 1);
	ASSERT_EQ(got[0], x + 2 * PG);
	/* That pair is made: the same file page read a third time meets
	 * nothing; a page read again is not its own twin; another domain's
	 * read of a file page meets nothing here. */
	struct md__read_run again[3] = { { key, 2 * PG, y + PG, 1 }, { key, PG, x + PG, 1 }, { key_other, 0, y + 4 * PG, 1 } };
	ASSERT_EQ(md__client_reads(c, again, 3), 0);
	ASSERT_EQ(take_candidates(c, got, 8, 0), 0);
	json_t *st = td_status(&t), *dom = td_domain(st, w.domain_id);
	ASSERT_EQ(td_int(dom, "read_named"), 1);
	ASSERT_EQ(td_int(dom, "read_pairs"), 1);
	ASSERT_EQ(td_int(dom, "read_slots"), 4096);	/* a few pages told: the smallest */
	json_decref(st);
	/* A guest reading much: the table doubles while it is an eighth
	 * full, keeping what it held (lossy: four entries a bucket, full for
	 * one in 500 of those put), and the pages read again meet. */
	uint64_t key_big = md__read_key(8, 5555);
	struct md__read_run big[5], one[200];
	for (unsigned r = 0; r < 5; r++)
		big[r] = (struct md__read_run){ key_big, (uint64_t)r * 1000 * PG,
						0x7f0001000000ull + (uint64_t)r * 1000 * PG, 1000 };
	ASSERT_EQ(md__client_reads(c, big, 5), 0);
	for (unsigned i = 0; i < 200; i++)	/* before and after it grew */
		one[i] = (struct md__read_run){ key_big, (uint64_t)(i * 23) * PG, 0x7f0100000000ull + (uint64_t)i * PG, 1 };
	ASSERT_EQ(md__client_reads(c, one, 100), 0);
	ASSERT_EQ(md__client_reads(c, one + 100, 100), 0);
	st = td_status(&t);
	dom = td_domain(st, w.domain_id);
	ASSERT_EQ(td_int(dom, "read_slots"), 65536);	/* 5,000 entries */
	ASSERT(td_int(dom, "read_named") >= 1 + 196);
	json_decref(st);
	/* A run that is not whole pages is refused, and nothing breaks. */
	struct md__read_run bad = { key, 0, x + 100, 1 };
	ASSERT(md__client_reads(c, &bad, 1) < 0);

	ASSERT(write(done[1], "x", 1) == 1);
	int ws;
	ASSERT(waitpid(kid, &ws, 0) == kid && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	close(ready[0]);
	close(ready[1]);
	close(done[0]);
	close(done[1]);
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* Pipes ready and go, and a child connected as another agent of the
 * domain (*c2, in the child only; 0 returned there). */
static pid_t fork_peer(struct tdaemon *t, const char *domain, int ready[2], int go[2], struct md__client **c2)
{
	ASSERT(pipe(ready) == 0 && pipe(go) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__msg_welcome w2;
		int fd2;
		*c2 = td_agent(t, domain, &w2, &fd2);
	}
	return kid;
}

TEST_IMPL(daemon_reads_pair_publisher)
{
	/* Two agents read the same file pages (READS), nobody looked them
	 * up. The child's READS meets ours first, so the child publishes the
	 * pairs of the two from then on: its copies are named to it, ours
	 * come back once it published, and a later pair that our READS
	 * meets names the child's copy, not ours. Without one publisher both
	 * published by turns, and neither guest's runs mapped consecutive
	 * slots. */
	struct tdaemon t;
	struct md__msg_welcome w;
	unsigned char page[PG];
	uint64_t key = md__read_key(9, 4321), x = 0x7f0000040000ull, y = 0x7f0000080000ull, got[8];
	int fd, ready[2], go[2];
	char b;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, "pairs", &w, &fd);
	struct md__read_run run = { key, 0, x, 2 };
	ASSERT_EQ(md__client_reads(c, &run, 1), 0);
	struct md__client *c2;
	pid_t kid = fork_peer(&t, "pairs", ready, go, &c2);
	if (kid == 0) {
		uint32_t k1, first;
		uint64_t cg[8];
		struct md__read_run r2 = { key, 0, y, 3 };
		if (md__client_reads(c2, &r2, 1) || take_candidates(c2, cg, 8, 2) != 2 ||
		    !((cg[0] == y && cg[1] == y + PG) || (cg[1] == y && cg[0] == y + PG)))
			_exit(1);	/* both its copies, to publish */
		for (unsigned i = 0; i < 2; i++) {
			uint64_t yi = y + i * PG, hi;
			td_fill_page(page, 40 + i);
			hi = md__page_hash(page);
			if (md__client_lookup(c2, &hi, &yi, 1, &k1) || k1 != MD_LOOKUP_PUBLISH ||
			    md__client_publish(c2, &hi, page, 1, &first))
				_exit(2);
		}
		if (write(ready[1], "1", 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(3);
		/* Our READS of the third file page named the child's copy. */
		if (take_candidates(c2, cg, 8, 1) != 1 || cg[0] != y + 2 * PG)
			_exit(4);
		_exit(write(ready[1], "2", 1) == 1 && read(go[0], &b, 1) == 1 ? 0 : 5);
	}
	close(ready[1]);	/* a child that failed is an end of file */
	ASSERT(read(ready[0], &b, 1) == 1 && b == '1');
	/* Published by the child: both our copies come back. */
	ASSERT_EQ(take_candidates(c, got, 8, 2), 2);
	ASSERT((got[0] == x && got[1] == x + PG) || (got[1] == x && got[0] == x + PG));
	struct md__read_run third = { key, 2 * PG, x + 2 * PG, 1 };
	ASSERT_EQ(md__client_reads(c, &third, 1), 0);
	ASSERT(write(go[1], "1", 1) == 1);
	ASSERT(read(ready[0], &b, 1) == 1 && b == '2');
	ASSERT_EQ(take_candidates(c, got, 8, 0), 0);	/* not ours */
	json_t *st = td_status(&t), *dom = td_domain(st, w.domain_id);
	ASSERT_EQ(td_int(dom, "read_named"), 3);
	ASSERT_EQ(td_int(dom, "read_pairs"), 2);
	json_decref(st);
	child_release(kid, go);
	close(ready[0]);
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_reads_name_looked_up_twin)
{
	/* The child reads two file pages and looks the first up (a first
	 * sighting: nobody else read it yet). Our READS of the same pages
	 * then names our copy of the first (its lookup publishes, and the
	 * child's copy comes back to it) and, as the pair's publisher, our
	 * copy of the second, which nobody looked up: its lookup finds the
	 * pool's page, and the child's copy is named at once. A page read
	 * after its twin's lookup found the pool is named as its READS comes
	 * in. Before, such pairs waited for the agents' own hinted visits,
	 * which the rate split and the hints' newest-first order put off by
	 * seconds in a bench of two guests. */
	struct tdaemon t;
	struct md__msg_welcome w;
	unsigned char page[PG];
	uint64_t key = md__read_key(9, 8765), x = 0x7f0000140000ull, y = 0x7f0000180000ull, got[8];
	uint32_t s1, first;
	int fd, ready[2], go[2];
	char b;

	td_fill_page(page, 60);
	uint64_t h = md__page_hash(page);
	td_start(&t, 64);
	struct md__client *c = td_agent(&t, "named", &w, &fd);
	struct md__client *c2;
	pid_t kid = fork_peer(&t, "named", ready, go, &c2);
	if (kid == 0) {
		uint32_t k1;
		uint64_t cg[8];
		struct md__read_run r2 = { key, 0, y, 3 };
		uint64_t tag = md__read_tag(key, 0);
		if (md__client_reads(c2, &r2, 1) || md__client_lookup_tagged(c2, &h, &y, &tag, 1, &k1) || k1 != 0)
			_exit(1);	/* nobody else read it: a first sighting */
		if (write(ready[1], "1", 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(2);
		if (take_candidates(c2, cg, 8, 2) != 2 ||
		    !((cg[0] == y && cg[1] == y + PG) || (cg[1] == y && cg[0] == y + PG)))
			_exit(3);
		/* The third file page holds that content too: the pool has it. */
		uint64_t y2 = y + 2 * PG, tag2 = md__read_tag(key, 2 * PG);
		if (md__client_lookup_tagged(c2, &h, &y2, &tag2, 1, &k1) || k1 == 0 || k1 == MD_LOOKUP_PUBLISH)
			_exit(4);
		_exit(write(ready[1], "2", 1) == 1 && read(go[0], &b, 1) == 1 ? 0 : 5);
	}
	close(ready[1]);	/* a child that failed is an end of file */
	ASSERT(read(ready[0], &b, 1) == 1 && b == '1');
	struct md__read_run run = { key, 0, x, 2 };
	ASSERT_EQ(md__client_reads(c, &run, 1), 0);
	ASSERT_EQ(take_candidates(c, got, 8, 2), 2);
	ASSERT((got[0] == x && got[1] == x + PG) || (got[1] == x && got[0] == x + PG));
	/* Visited as candidates (untagged): the child's sighting pairs the
	 * first; the second finds the pool's page (the same content). */
	ASSERT_EQ(md__client_lookup(c, &h, &x, 1, &s1), 0);
	ASSERT_EQ(s1, MD_LOOKUP_PUBLISH);
	ASSERT_EQ(md__client_publish(c, &h, page, 1, &first), 0);
	uint64_t x1 = x + PG;
	ASSERT_EQ(md__client_lookup(c, &h, &x1, 1, &s1), 0);
	ASSERT(s1 != 0 && s1 != MD_LOOKUP_PUBLISH);
	ASSERT(write(go[1], "1", 1) == 1);
	ASSERT(read(ready[0], &b, 1) == 1 && b == '2');
	/* The third we read now, after the child's lookup: named at once. */
	struct md__read_run run2 = { key, 2 * PG, x + 2 * PG, 1 };
	ASSERT_EQ(md__client_reads(c, &run2, 1), 0);
	ASSERT_EQ(take_candidates(c, got, 8, 1), 1);
	ASSERT_EQ(got[0], x + 2 * PG);
	/* All read again: each was named once. */
	struct md__read_run again = { key, 0, x, 3 };
	ASSERT_EQ(md__client_reads(c, &again, 1), 0);
	ASSERT_EQ(take_candidates(c, got, 8, 0), 0);
	json_t *st = td_status(&t), *dom = td_domain(st, w.domain_id);
	ASSERT_EQ(td_int(dom, "read_named"), 3);
	ASSERT_EQ(td_int(dom, "read_pairs"), 1);	/* the second: the first paired by the sighting */
	json_decref(st);
	child_release(kid, go);
	close(ready[0]);
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_hello_wrong_pid)
{
	struct tdaemon t;
	struct md__msg m = { .hdr = { .type = MD_MSG_HELLO, .seq = 5 } }, r;
	unsigned char buf[128];

	td_start(&t, 16);
	m.u.hello.pid = (uint32_t)getppid();	/* not us */
	ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
	ASSERT(n > 0);
	ASSERT_EQ(td_raw(&t, buf, (size_t)n, &r), MD_MSG_ERROR);	/* and closed */
	ASSERT_EQ(r.hdr.seq, 5);
	ASSERT_EQ(r.u.text.status, -EPERM);
	json_t *st = td_status(&t);
	ASSERT_EQ(json_array_size(json_object_get(st, "agents")), 0);
	json_decref(st);
	td_stop(&t);
	return 0;
}

static off_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? st.st_size : -1;
}

TEST_IMPL(daemon_log_flood_bounded)
{
	/* Any local user may connect and misbehave in a loop: the daemon's
	 * lines about it are limited in rate, or they fill the log (on /run,
	 * a tmpfs). */
	struct tdaemon t;
	struct md__msg r;
	char log[400];

	td_start(&t, 16);
	snprintf(log, sizeof(log), "%s/log", t.dir);
	off_t before = file_size(log);
	ASSERT(before >= 0);
	for (int i = 0; i < 6000; i++)
		ASSERT_EQ(td_raw(&t, "GET / HTTP/1.0\r\n\r\n", 18, &r), MD_MSG_ERROR);
	/* Still answering, and saying what it left out. */
	json_t *st = td_status(&t);
	json_decref(st);
	usleep(200000);	/* room for a few lines again */
	struct md__msg_welcome w;
	int fd;
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	md__client_free(c);
	close(fd);
	usleep(100000);
	off_t grown = file_size(log) - before;
	printf("  log grew %lld bytes for 6000 bad connections\n", (long long)grown);
	ASSERT(grown > 0);
	ASSERT(grown < 200 * 1024);	/* a line each, about 100 bytes: 600 KB */
	ASSERT_EQ(td_sh("grep -q 'lines about peers left out' %s", log), 0);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_malformed_closes)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg r;
	unsigned char buf[64];
	int fd;

	td_start(&t, 16);
	/* A well-behaved agent, connected throughout. */
	struct md__client *good = td_agent(&t, NULL, &w, &fd);

	memcpy(buf, "GET / HTTP/1.0\r\n\r\n", 18);
	ASSERT_EQ(td_raw(&t, buf, 18, &r), MD_MSG_ERROR);
	ASSERT_EQ(r.u.text.status, -EPROTO);
	md__msg_hdr_encode(buf, MD_MSG_PUBLISH, 0x7fffffff, 3);	/* huge length */
	ASSERT_EQ(td_raw(&t, buf, 16, &r), MD_MSG_ERROR);
	ASSERT_EQ(r.u.text.status, -EMSGSIZE);
	ASSERT_EQ(r.hdr.seq, 3);
	md__msg_hdr_encode(buf, MD_MSG_LOOKUP, 12, 4);		/* count > length */
	memset(buf + 16, 0, 12);
	buf[16] = 9;
	ASSERT_EQ(td_raw(&t, buf, 28, &r), MD_MSG_ERROR);
	ASSERT_EQ(r.u.text.status, -EBADMSG);
	md__msg_hdr_encode(buf, MD_MSG_REF, 8, 4);		/* REF before HELLO */
	memset(buf + 16, 0, 8);
	buf[16] = 1;
	ASSERT_EQ(td_raw(&t, buf, 24, &r), MD_MSG_ERROR);
	ASSERT_EQ(r.u.text.status, -EPROTO);
	md__msg_hdr_encode(buf, MD_MSG_WELCOME, 0, 4);		/* not a request */
	ASSERT_EQ(td_raw(&t, buf, 16, &r), MD_MSG_ERROR);
	/* A reply's header is refused as it comes, its length never awaited
	 * nor made room for (a STATUS_R may be a megabyte). */
	md__msg_hdr_encode(buf, MD_MSG_STATUS_R, MD_MSG_MAX, 5);
	ASSERT_EQ(td_raw(&t, buf, 16, &r), MD_MSG_ERROR);
	ASSERT_EQ(r.u.text.status, -EBADMSG);
	ASSERT_EQ(r.hdr.seq, 5);
	md__msg_hdr_encode(buf, MD_MSG_STATUS, 0, 4);
	buf[4] = 9;						/* version */
	ASSERT_EQ(td_raw(&t, buf, 16, &r), MD_MSG_ERROR);
	ASSERT_EQ(r.u.text.status, -EPROTONOSUPPORT);
	/* Half a header, then gone. */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	td_sockaddr(&t, &sa);
	int raw = socket(AF_UNIX, SOCK_STREAM, 0);
	ASSERT(connect(raw, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	ASSERT(write(raw, buf, 7) == 7);
	close(raw);

	/* The good one never noticed. */
	uint64_t h = 1;
	uint32_t s;
	ASSERT_EQ(md__client_lookup(good, &h, NULL, 1, &s), 0);
	json_t *st = td_status(&t);
	ASSERT_EQ(json_array_size(json_object_get(st, "agents")), 1);
	json_decref(st);
	md__client_free(good);
	td_stop(&t);
	return 0;
}

/* Peers that owe bytes (no request since they connected, half a message)
 * are dropped after MD_D_STALL_MS, each holding a connection slot of their
 * user and a buffer; an agent quiet after its requests is not. */
TEST_IMPL(daemon_drops_stalled_peers)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	int fd;
	td_start(&t, 16);
	struct md__client *good = td_agent(&t, NULL, &w, &fd);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	td_sockaddr(&t, &sa);
	int silent = socket(AF_UNIX, SOCK_STREAM, 0), half = socket(AF_UNIX, SOCK_STREAM, 0);
	ASSERT(connect(silent, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	ASSERT(connect(half, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	unsigned char buf[MD_MSG_HDR_SIZE];
	md__msg_hdr_encode(buf, MD_MSG_STATUS, 0, 1);
	ASSERT(write(half, buf, 7) == 7);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < 2; i++) {
		struct pollfd p = { i ? half : silent, POLLIN, 0 };
		ASSERT(poll(&p, 1, MD_D_STALL_MS + 5000) == 1);
		ASSERT_EQ(read(p.fd, buf, sizeof(buf)), 0);	/* hung up */
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ASSERT(t1.tv_sec - t0.tv_sec >= MD_D_STALL_MS / 1000 - 1);
	close(silent);
	close(half);
	uint64_t h = 1;
	uint32_t s;
	ASSERT_EQ(md__client_lookup(good, &h, NULL, 1, &s), 0);	/* quiet, not dropped */
	char log[400];
	snprintf(log, sizeof(log), "%s/log", t.dir);
	ASSERT(strstr(file_text(log), "dropped: no request"));
	ASSERT(strstr(file_text(log), "dropped: half a message"));
	md__client_free(good);
	td_stop(&t);
	return 0;
}


static size_t encode(struct md__msg *m, unsigned char *buf, size_t size)
{
	ssize_t n = md__msg_encode(m, buf, size);
	ASSERT(n > 0);
	return (size_t)n;
}

/* Requests pipelined in one write, many more than the daemon handles per
 * wake-up, then one cut in two writes: every reply comes, in order. */
TEST_IMPL(daemon_stream_framing)
{
	struct tdaemon t;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static struct md__msg m, r;
	static unsigned char buf[64 * 1024], in[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	const uint32_t nreq = 101;

	td_start(&t, 16);
	td_sockaddr(&t, &sa);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(fd >= 0);
	ASSERT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	memset(&m, 0, sizeof(m));
	m.hdr = (struct md__msg_hdr){ .type = MD_MSG_HELLO, .seq = 1 };
	m.u.hello.pid = (uint32_t)getpid();
	size_t len = encode(&m, buf, sizeof(buf));
	ASSERT(send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len);
	td_read_all(fd, in, MD_MSG_HDR_SIZE);	/* the pool's descriptor is dropped by read() */
	ASSERT_EQ(md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &r.hdr), 0);
	ASSERT_EQ(r.hdr.type, MD_MSG_WELCOME);
	td_read_all(fd, in + MD_MSG_HDR_SIZE, r.hdr.length);

	/* Many more than a wake-up's batch in one write, nothing after
	 * them to wake the daemon again; then one cut inside its header. */
	len = 0;
	for (uint32_t i = 0; i < nreq; i++) {
		memset(&m, 0, sizeof(m));
		m.hdr = (struct md__msg_hdr){ .type = MD_MSG_LOOKUP, .seq = 100 + i };
		m.u.lookup.n = 1;
		m.u.lookup.hash[0] = 1000 + i;
		len += encode(&m, buf + len, sizeof(buf) - len);
	}
	size_t last = len - encode(&m, in, sizeof(in));
	ASSERT(send(fd, buf, last, MSG_NOSIGNAL) == (ssize_t)last);
	for (uint32_t i = 0; i < nreq; i++) {
		if (i == nreq - 1) {
			ASSERT(send(fd, buf + last, 10, MSG_NOSIGNAL) == 10);
			usleep(50 * 1000);
			ASSERT(send(fd, buf + last + 10, len - last - 10, MSG_NOSIGNAL) ==
			       (ssize_t)(len - last - 10));
		}
		struct md__msg_hdr h;
		for (;;) {	/* SHARE may come unasked (seq 0) */
			td_read_all(fd, in, MD_MSG_HDR_SIZE);
			ASSERT_EQ(md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &h), 0);
			td_read_all(fd, in + MD_MSG_HDR_SIZE, h.length);
			if (h.seq)
				break;
		}
		ASSERT_EQ(md__msg_decode(in, MD_MSG_HDR_SIZE + h.length, &r), 0);
		ASSERT_EQ(r.hdr.type, MD_MSG_LOOKUP_R);
		ASSERT_EQ(r.hdr.seq, 100 + i);
		ASSERT_EQ(r.u.lookup_r.n, 1);
	}
	/* Each counted once: every answer came. */
	json_t *st = td_status(&t);
	json_t *agents = json_object_get(st, "agents");
	ASSERT_EQ(json_array_size(agents), 1);
	ASSERT_EQ(td_int(json_array_get(agents, 0), "requests"), nreq);
	json_decref(st);
	close(fd);
	td_stop(&t);
	return 0;
}

static void send_with_fd(int fd, const void *buf, size_t len, int pass)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &pass, sizeof(int));
	ASSERT(sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)len);
}

/* A socket listening at path, for a fake daemon. */
/* The descriptor send_with_fd passed with one byte over sock. */
static int recv_held_fd(int sock)
{
	char c;
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { &c, 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	ASSERT(recvmsg(sock, &mh, MSG_CMSG_CLOEXEC) == 1);
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	ASSERT(cm && cm->cmsg_type == SCM_RIGHTS);
	int held;
	memcpy(&held, CMSG_DATA(cm), sizeof(held));
	return held;
}

static int listen_at(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(l >= 0);
	ASSERT(bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	ASSERT(listen(l, 1) == 0);
	return l;
}

/* A process of user nobody with the pid given (free now), pausing; -1 if
 * the kernel does not let us choose it (clone3 set_tid: Linux 5.5, and
 * CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN). */
static pid_t nobody_with_pid(pid_t pid)
{
	struct passwd *pw = getpwnam("nobody");
	if (getuid() != 0 || !pw)
		return -1;
	struct clone_args args = { .exit_signal = SIGCHLD, .set_tid = (uint64_t)(uintptr_t)&pid,
				   .set_tid_size = 1 };
	long r = syscall(SYS_clone3, &args, sizeof(args));
	if (r == 0) {
		if (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) == 0 &&
		    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) == 0)
			pause();
		_exit(1);
	}
	return r > 0 ? (pid_t)r : -1;
}

/* HELLO comes once per connection. An agent's record goes with its
 * process, but a connection it left to another process (an inherited
 * descriptor) stays, naming the dead pid: a second HELLO there was
 * served, with a pidfd opened then of whatever process had the pid by
 * then, maybe another user's (whose own HELLO was then -EBUSY). It is
 * refused now (-EPROTO) and the connection closed; here the pid even goes
 * to a process of nobody's first, where the kernel lets us choose it. */
TEST_IMPL(daemon_hello_once)
{
	struct tdaemon t;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static struct md__msg m, r;
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	struct md__msg_hdr h;
	int sp[2];

	td_start(&t, 16);
	td_sockaddr(&t, &sa);
	ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		ASSERT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
		m.hdr = (struct md__msg_hdr){ .type = MD_MSG_HELLO, .seq = 1 };
		m.u.hello.pid = (uint32_t)getpid();
		size_t len = encode(&m, buf, sizeof(buf));
		ASSERT(send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len);
		td_read_all(fd, buf, MD_MSG_HDR_SIZE);	/* the pool's descriptor is dropped */
		ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), 0);
		ASSERT_EQ(h.type, MD_MSG_WELCOME);
		td_read_all(fd, buf + MD_MSG_HDR_SIZE, h.length);
		send_with_fd(sp[1], "c", 1, fd);	/* the connection outlives us */
		_exit(0);
	}
	int held = recv_held_fd(sp[0]);
	ASSERT_EQ(waitpid(kid, NULL, 0), kid);
	/* The daemon saw it exit: its record went, its connection stays. */
	size_t agents = 1;
	for (int i = 0; i < 200 && agents; i++, usleep(10000)) {
		json_t *st = td_status(&t);
		agents = json_array_size(json_object_get(st, "agents"));
		json_decref(st);
	}
	ASSERT_EQ(agents, 0);
	pid_t reused = nobody_with_pid(kid);
	m.hdr = (struct md__msg_hdr){ .type = MD_MSG_HELLO, .seq = 9 };
	m.u.hello.pid = (uint32_t)kid;
	size_t len = encode(&m, buf, sizeof(buf));
	ASSERT(send(held, buf, len, MSG_NOSIGNAL) == (ssize_t)len);
	do {	/* the SHARE sent when it joined comes first (seq 0) */
		td_read_all(held, buf, MD_MSG_HDR_SIZE);
		ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), 0);
		td_read_all(held, buf + MD_MSG_HDR_SIZE, h.length);
	} while (h.seq == 0);
	ASSERT_EQ(md__msg_decode(buf, MD_MSG_HDR_SIZE + h.length, &r), 0);
	ASSERT_EQ(r.hdr.type, MD_MSG_ERROR);
	ASSERT_EQ(r.hdr.seq, 9);
	ASSERT_EQ(r.u.text.status, -EPROTO);
	struct pollfd p = { held, POLLIN, 0 };
	char c;
	ASSERT(poll(&p, 1, 3000) == 1);
	ASSERT(read(held, &c, 1) <= 0);	/* closed */
	json_t *st = td_status(&t);
	ASSERT_EQ(json_array_size(json_object_get(st, "agents")), 0);
	json_decref(st);
	if (reused > 0) {
		ASSERT(kill(reused, SIGKILL) == 0);
		ASSERT_EQ(waitpid(reused, NULL, 0), reused);
	}
	close(held);
	close(sp[0]);
	close(sp[1]);
	td_stop(&t);
	return 0;
}


/* A connection whose opener exited before any HELLO, handed on to another
 * process (SCM_RIGHTS): a HELLO there naming the opener's pid is refused
 * (-ESRCH), no record made. Served, with the pid reused it could take a
 * live agent's record over. */
TEST_IMPL(daemon_hello_after_opener_exited)
{
	struct tdaemon t;
	static struct md__msg m, r;
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	int sp[2];

	td_start(&t, 16);
	ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		int fd = raw_connect(&t);
		/* A STATUS answered on a later connection: ours was accepted
		 * (one queue, in order), its pidfd taken while we live. */
		json_decref(td_status(&t));
		send_with_fd(sp[1], "c", 1, fd);
		_exit(0);
	}
	int held = recv_held_fd(sp[0]);
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	m.hdr = (struct md__msg_hdr){ .type = MD_MSG_HELLO, .seq = 3 };
	m.u.hello.pid = (uint32_t)kid;
	size_t len = encode(&m, buf, sizeof(buf));
	ASSERT(send(held, buf, len, MSG_NOSIGNAL) == (ssize_t)len);
	ASSERT_EQ(raw_next(held, &r), MD_MSG_ERROR);
	ASSERT_EQ(r.hdr.seq, 3);
	ASSERT_EQ(r.u.text.status, -ESRCH);
	ASSERT(strstr(r.u.text.text, "has exited"));	/* not a pidfd missing at accept */
	ASSERT_EQ(raw_next(held, &r), 0);	/* closed */
	json_t *s = td_status(&t);
	ASSERT_EQ(json_array_size(json_object_get(s, "agents")), 0);
	ASSERT_EQ(json_array_size(json_object_get(s, "domains")), 0);
	json_decref(s);
	close(held);
	close(sp[0]);
	close(sp[1]);
	td_stop(&t);
	return 0;
}
/* An agent of domain "fz" for one input: HELLO, retried while the daemon
 * has not yet seen the last connection of this process go. */
static struct md__client *corpus_agent(const struct tdaemon *t)
{
	for (int i = 0; i < 1000; i++) {
		struct md__client *c;
		struct md__msg_welcome w;
		int fd, err = md__client_connect(&c, t->sock);
		if (!err && (err = md__client_hello(c, "fz", 0, &w, &fd)) == 0) {
			close(fd);
			return c;
		}
		if (!err || err != -EBUSY)
			_exit(11);
		md__client_free(c);
		usleep(1000);
	}
	_exit(12);
}

/* Past the decoder: every input of the protocol corpus goes to a live
 * memdedupd from an agent (after its HELLO), as it is and behind a correct
 * header of the type its first byte names, so REF, UNREF, PUBLISH and the
 * rest reach dispatch and the reference counts with what a fuzzer found.
 * The daemon answers or hangs up on each and lives on; once the agent's
 * process exits, every reference it took is gone with it. */
TEST_IMPL(daemon_survives_corpus)
{
	struct tdaemon t;
	int hold[2], ready[2], st;
	char b = 0;
	td_start(&t, 64);
	/* Another agent keeps the domain with four live slots, so the
	 * inputs' REFs and UNREFs of low slots meet live pages. */
	ASSERT(pipe(hold) == 0 && pipe(ready) == 0);
	pid_t holder = fork();
	ASSERT(holder >= 0);
	if (holder == 0) {
		static unsigned char pages[4 * PG];
		uint64_t hash[4];
		struct md__msg_welcome w;
		int fd;
		close(hold[1]);
		struct md__client *c = td_agent(&t, "fz", &w, &fd);
		b = publish(c, 90, 4, pages, hash) == 0 ? 'k' : 'x';
		if (write(ready[1], &b, 1) != 1)
			_exit(1);
		_exit(read(hold[0], &b, 1) == 0 ? 0 : 1);	/* EOF: released */
	}
	close(hold[0]);
	close(ready[1]);	/* a holder that failed is EOF, not a wait */
	ASSERT_EQ(read(ready[0], &b, 1), 1);
	ASSERT_EQ(b, 'k');
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static unsigned char in[MD_MSG_HDR_SIZE + 300000], msg[MD_MSG_HDR_SIZE + 300000];
		char path[512];
		int n = 0;
		DIR *dir = opendir("fuzz/corpus/protocol");
		if (!dir)
			_exit(10);
		for (struct dirent *de; (de = readdir(dir));) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "fuzz/corpus/protocol/%s", de->d_name);
			FILE *f = fopen(path, "rb");
			size_t size = f ? fread(in, 1, sizeof(in), f) : 0;
			if (f)
				fclose(f);
			if (size == 0 || size == sizeof(in))
				continue;
			unsigned type = in[0] % (MD_MSG_TYPE_END - 1) + 1;
			for (int way = 0; way < 2; way++) {
				size_t len = size;
				const unsigned char *bytes = in;
				if (way == 1) {
					if (size - 1 > md__msg_max_len(type))
						continue;
					md__msg_hdr_encode(msg, type, (uint32_t)(size - 1), 7);
					memcpy(msg + MD_MSG_HDR_SIZE, in + 1, size - 1);
					bytes = msg;
					len = MD_MSG_HDR_SIZE + size - 1;
				}
				struct md__client *c = corpus_agent(&t);
				(void)!send(md__client_fd(c), bytes, len, MSG_NOSIGNAL);
				md__client_free(c);
			}
			if (++n % 100 == 0 && !md__daemon_alive(t.sock))
				_exit(13);
		}
		closedir(dir);
		_exit(n >= 800 ? 0 : 14);
	}
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	/* The inputs' agent gone: only the holder's four pages and
	 * references are left. */
	json_t *js = NULL, *dom = NULL;
	for (int i = 0; i < 300; i++) {
		json_decref(js);
		js = td_status(&t);
		if (json_array_size(json_object_get(js, "agents")) == 1)
			break;
		usleep(10000);
	}
	ASSERT_EQ(json_array_size(json_object_get(js, "agents")), 1);
	dom = json_array_get(json_object_get(js, "domains"), 0);
	ASSERT(dom);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 4);
	ASSERT_EQ(td_int(dom, "pages_sharing"), 0);	/* each page shown once */
	json_decref(js);
	close(hold[1]);
	ASSERT_EQ(waitpid(holder, &st, 0), holder);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(ready[0]);
	td_stop(&t);	/* exits 0: it did not crash */
	return 0;
}

/* A pool descriptor as a daemon might send it: a memfd, sealed against
 * shrinking or not, reopened read-only or not. */
static int test_pool_fd(int sealed, int rdonly)
{
	char path[64];
	int fd = memfd_create("memdedup-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	ASSERT(fd >= 0);
	if (sealed)
		ASSERT(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
	if (!rdonly)
		return fd;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	ASSERT(ro >= 0);
	close(fd);
	return ro;
}

/* A fake daemon's WELCOME answering seq, with pass as the pool. */
static void fake_send_welcome(int c, uint32_t seq, int pass)
{
	static struct md__msg m;
	static unsigned char buf[256];
	m.hdr = (struct md__msg_hdr){ .type = MD_MSG_WELCOME, .seq = seq };
	m.u.welcome.domain_id = 5;
	m.u.welcome.pool_pages = 16;
	md__tunables_default(&m.u.welcome.tun);
	send_with_fd(c, buf, encode(&m, buf, sizeof(buf)), pass);
}

/* A fake daemon at path that answers one HELLO with a WELCOME carrying
 * pass, then waits for the client to go. */
static pid_t fake_welcome(const char *path, int pass)
{
	unlink(path);
	int l = listen_at(path);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static unsigned char in[MD_MSG_HDR_SIZE + 128];
		struct md__msg_hdr h;
		char x;
		int c = accept(l, NULL, NULL);
		if (c < 0)
			_exit(1);
		td_read_all(c, in, MD_MSG_HDR_SIZE);
		ASSERT_EQ(md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &h), 0);
		ASSERT_EQ(h.type, MD_MSG_HELLO);
		td_read_all(c, in + MD_MSG_HDR_SIZE, h.length);
		fake_send_welcome(c, h.seq, pass);
		while (read(c, &x, 1) > 0)	/* until the client goes */
			;
		_exit(0);
	}
	close(l);
	return kid;
}

/* A memdedupd older than HELLO's flags refuses one with a flag as
 * malformed, and the connection with it: the agent says HELLO again
 * without, on a new one (else it could never join a daemon still running
 * from before an upgrade). */
TEST_IMPL(daemon_client_hello_to_older_daemon)
{
	char dir[] = "/tmp/md-old-XXXXXX", path[64];
	ASSERT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/sock", dir);
	int l = listen_at(path), pass = test_pool_fd(1, 1);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static unsigned char in[MD_MSG_HDR_SIZE + 128], out[512];
		static struct md__msg m;
		struct md__msg_hdr h;
		char x;
		for (int round = 0; round < 2; round++) {
			int c = accept(l, NULL, NULL);
			if (c < 0)
				_exit(1);
			td_read_all(c, in, MD_MSG_HDR_SIZE);
			if (md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &h) != 0 || h.type != MD_MSG_HELLO)
				_exit(2);
			td_read_all(c, in + MD_MSG_HDR_SIZE, h.length);
			const unsigned char *f = in + MD_MSG_HDR_SIZE + 4;
			uint32_t flags = f[0] | (uint32_t)f[1] << 8 | (uint32_t)f[2] << 16 | (uint32_t)f[3] << 24;
			if (round == 0) {	/* as an older daemon: unknown bits */
				if (flags != MD_HELLO_NO_POOL_MAPS)
					_exit(3);
				m = (struct md__msg){ .hdr = { .type = MD_MSG_ERROR, .seq = h.seq } };
				m.u.text.status = -EBADMSG;
				snprintf(m.u.text.text, sizeof(m.u.text.text), "malformed HELLO payload");
				size_t n = encode(&m, out, sizeof(out));
				if (write(c, out, n) != (ssize_t)n)
					_exit(4);
				close(c);
				continue;
			}
			if (flags)
				_exit(5);
			fake_send_welcome(c, h.seq, pass);
			while (read(c, &x, 1) > 0)	/* until the client goes */
				;
			_exit(0);
		}
		_exit(6);
	}
	close(l);
	struct md__client *c;
	struct md__msg_welcome w;
	int fd, st;
	ASSERT_EQ(md__client_open(&c, path, NULL, MD_HELLO_NO_POOL_MAPS, &w, &fd), 0);
	ASSERT_EQ(w.domain_id, 5);
	ASSERT_EQ(md__client_hello_flags(c), 0);	/* welcomed without: CONTROLs name it always */
	close(fd);
	md__client_free(c);
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	close(pass);
	unlink(path);
	rmdir(dir);
	return 0;
}

/* The client takes as a pool only a read-only descriptor of a file sealed
 * against shrinking: a guest page mapped from a slot cut off would raise
 * SIGBUS in the VMM, and a pool it could write is other guests' pages. */
TEST_IMPL(daemon_client_checks_pool)
{
	char dir[] = "/tmp/md-pool-XXXXXX", path[64];
	ASSERT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/sock", dir);
	int pipefd[2];
	ASSERT(pipe(pipefd) == 0);
	struct { int fd, want; } cases[] = {
		{ test_pool_fd(1, 1), 0 },		/* as memdedupd sends it */
		{ test_pool_fd(0, 1), -EPROTO },	/* may shrink */
		{ test_pool_fd(1, 0), -EPROTO },	/* writable */
		{ pipefd[0], -EPROTO },			/* not a file */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		pid_t kid = fake_welcome(path, cases[i].fd);
		close(cases[i].fd);
		struct md__client *c;
		struct md__msg_welcome w;
		int pool = -1, st;
		ASSERT_EQ(md__client_connect(&c, path), 0);
		ASSERT_EQ(md__client_hello(c, NULL, 0, &w, &pool), cases[i].want);
		ASSERT_EQ(pool >= 0, cases[i].want == 0);
		if (pool >= 0)
			close(pool);
		md__client_free(c);
		ASSERT_EQ(waitpid(kid, &st, 0), kid);
		ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	close(pipefd[1]);
	unlink(path);
	rmdir(dir);
	return 0;
}

/* The next message on c, decoded into m (its bytes in buf). */
static void fake_recv(int c, struct md__msg *m, unsigned char *buf)
{
	struct md__msg_hdr h;
	td_read_all(c, buf, MD_MSG_HDR_SIZE);
	ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), 0);
	td_read_all(c, buf + MD_MSG_HDR_SIZE, h.length);
	ASSERT_EQ(md__msg_decode(buf, MD_MSG_HDR_SIZE + h.length, m), 0);
}

static void fake_reply(int c, struct md__msg *m, unsigned type, uint32_t seq)
{
	static unsigned char buf[512];
	m->hdr.type = type;
	m->hdr.seq = seq;
	ASSERT(write(c, buf, encode(m, buf, sizeof(buf))) > 0);
}

/* Slots of the UNREFs the fake daemon reads next, up to the LOOKUP after
 * them (answered); each UNREF is ACKed with status. Returns how many, in
 * got[] (a bitmap of slots < 64), and the largest UNREF in *most. */
static unsigned fake_unrefs(int c, int status, uint64_t *got, uint32_t *most)
{
	static struct md__msg m, r;
	static unsigned char buf[MD_MSG_HDR_SIZE + 8192];
	unsigned n = 0;
	for (*got = 0, *most = 0;;) {
		fake_recv(c, &m, buf);
		if (m.hdr.type == MD_MSG_LOOKUP) {
			r.u.lookup_r.n = m.u.lookup.n;
			memset(r.u.lookup_r.slot1, 0, sizeof(r.u.lookup_r.slot1));
			fake_reply(c, &r, MD_MSG_LOOKUP_R, m.hdr.seq);
			return n;
		}
		ASSERT_EQ(m.hdr.type, MD_MSG_UNREF);
		for (uint32_t i = 0; i < m.u.refs.n; i++) {
			ASSERT(m.u.refs.slot[i] < 64);
			*got |= 1ull << m.u.refs.slot[i];
		}
		n += m.u.refs.n;
		*most = m.u.refs.n > *most ? m.u.refs.n : *most;
		r.u.ack.status = status;
		fake_reply(c, &r, MD_MSG_ACK, m.hdr.seq);
	}
}

/* Late replies against a fake daemon that answers exactly when the test
 * says: of two PUBLISHes one answered in time and one late, both slots go
 * back (the caller took neither) in one UNREF; the daemon refuses it, and
 * they go again one by one. */
TEST_IMPL(daemon_client_late_replies)
{
	char dir[] = "/tmp/md-late-XXXXXX", path[64];
	ASSERT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/sock", dir);
	int go[2], l = listen_at(path);
	ASSERT(pipe(go) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static struct md__msg m, r, p2;
		static unsigned char buf[MD_MSG_HDR_SIZE + 8192];
		uint64_t got;
		uint32_t most;
		char x;
		close(go[1]);
		int c = accept(l, NULL, NULL);
		ASSERT(c >= 0);
		fake_recv(c, &m, buf);
		ASSERT_EQ(m.hdr.type, MD_MSG_HELLO);
		fake_send_welcome(c, m.hdr.seq, test_pool_fd(1, 1));
		fake_recv(c, &m, buf);
		ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
		fake_recv(c, &p2, buf);
		ASSERT_EQ(p2.hdr.type, MD_MSG_PUBLISH);
		r.u.publish_r.first_slot = 5;
		r.u.publish_r.n = 1;
		fake_reply(c, &r, MD_MSG_PUBLISH_R, m.hdr.seq);
		ASSERT(read(go[0], &x, 1) == 1);	/* the client timed out */
		r.u.publish_r.first_slot = 6;
		fake_reply(c, &r, MD_MSG_PUBLISH_R, p2.hdr.seq);
		/* Both back in one UNREF, refused; then one by one. */
		ASSERT_EQ(fake_unrefs(c, -EINVAL, &got, &most), 2);
		ASSERT(got == ((1ull << 5) | (1ull << 6)) && most == 2);
		ASSERT_EQ(fake_unrefs(c, 0, &got, &most), 2);
		ASSERT(got == ((1ull << 5) | (1ull << 6)) && most == 1);
		ASSERT_EQ(fake_unrefs(c, 0, &got, &most), 0);
		_exit(0);
	}
	close(l);
	close(go[0]);
	static unsigned char pages[2 * PG];
	const void *each[2] = { pages, pages + PG };
	uint64_t hash[2], h = 1;
	uint32_t slot[2], s1;
	int status[2], fd, st;
	struct md__client *c;
	struct md__msg_welcome w;
	for (int i = 0; i < 2; i++) {
		td_fill_page(pages + i * PG, 60 + (unsigned)i);
		hash[i] = md__page_hash(pages + i * PG);
	}
	ASSERT_EQ(md__client_connect(&c, path), 0);
	ASSERT_EQ(md__client_hello(c, NULL, 0, &w, &fd), 0);
	/* The first reply comes at once, the second only after the
	 * timeout: then every request may take as long as it needs. */
	md__client_set_timeout(c, 1000);
	ASSERT_EQ(md__client_publish_each(c, hash, each, 2, slot, status), -ETIMEDOUT);
	md__client_set_timeout(c, 5000);
	ASSERT(write(go[1], "g", 1) == 1);
	int err = -ETIMEDOUT;
	for (double end = now() + 5; err == -ETIMEDOUT && now() < end;) {
		err = md__client_lookup(c, &h, NULL, 1, &s1);
		if (err == -ETIMEDOUT)
			usleep(2000);
	}
	ASSERT_EQ(err, 0);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), 0);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), 0);
	md__client_free(c);
	close(fd);
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(go[1]);
	unlink(path);
	rmdir(dir);
	return 0;
}

/* An UNMERGE's notices (CONTROL_R, seq 0, -EINPROGRESS) restart only a
 * CLI's wait for its CONTROL's answer: an agent's LOOKUP a daemon answers
 * with notices alone is a broken peer, not a wait renewed for good. */
TEST_IMPL(daemon_client_notices_only_for_control)
{
	char dir[] = "/tmp/md-notices-XXXXXX", path[64];
	ASSERT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/sock", dir);
	int l = listen_at(path);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static struct md__msg m, n;
		static unsigned char buf[MD_MSG_HDR_SIZE + 8192];
		int c = accept(l, NULL, NULL);
		ASSERT(c >= 0);
		fake_recv(c, &m, buf);
		ASSERT_EQ(m.hdr.type, MD_MSG_HELLO);
		fake_send_welcome(c, m.hdr.seq, test_pool_fd(1, 1));
		fake_recv(c, &m, buf);
		ASSERT_EQ(m.hdr.type, MD_MSG_LOOKUP);
		n.u.text.status = -EINPROGRESS;
		/* Till the client goes (its write fails) or 10 s. */
		for (int i = 0; i < 200; i++) {
			fake_reply(c, &n, MD_MSG_CONTROL_R, 0);
			usleep(50 * 1000);
		}
		_exit(0);
	}
	close(l);
	struct md__client *c;
	struct md__msg_welcome w;
	int fd;
	uint64_t h = 1;
	uint32_t slot;
	ASSERT_EQ(md__client_connect(&c, path), 0);
	ASSERT_EQ(md__client_hello(c, NULL, 0, &w, &fd), 0);
	close(fd);
	md__client_set_timeout(c, 500);
	double t0 = now();
	int err = md__client_lookup(c, &h, NULL, 1, &slot);
	ASSERT(err < 0 && err != -ETIMEDOUT);
	ASSERT(now() - t0 < 3);
	md__client_free(c);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	unlink(path);
	rmdir(dir);
	return 0;
}

/* The client's side of the stream, against a fake daemon: a reply and
 * unasked messages in one write (the descriptor with the reply), and
 * messages cut anywhere, in pieces that come apart in time. */
TEST_IMPL(daemon_client_framing)
{
	char dir[] = "/tmp/md-framing-XXXXXX", path[64];
	ASSERT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/sock", dir);
	int l = listen_at(path);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static struct md__msg m;
		static unsigned char buf[8192], in[MD_MSG_HDR_SIZE + MD_MSG_MAX];
		struct md__msg_hdr h;
		int c = accept(l, NULL, NULL);
		if (c < 0)
			_exit(1);
		td_read_all(c, in, MD_MSG_HDR_SIZE);	/* HELLO */
		ASSERT_EQ(md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &h), 0);
		td_read_all(c, in + MD_MSG_HDR_SIZE, h.length);
		size_t len = 0;
		memset(&m, 0, sizeof(m));
		m.hdr = (struct md__msg_hdr){ .type = MD_MSG_WELCOME, .seq = h.seq };
		m.u.welcome.domain_id = 5;
		m.u.welcome.pool_pages = 16;
		m.u.welcome.tun = (struct md__tunables){ .pages_to_scan = 100, .sleep_millisecs = 20,
							 .cpu_percent = 100, .hint_ratio = 4 };
		len += encode(&m, buf + len, sizeof(buf) - len);
		memset(&m, 0, sizeof(m));
		m.hdr.type = MD_MSG_SHARE;
		m.u.share.part = MD_SHARE_ALL / 3;
		len += encode(&m, buf + len, sizeof(buf) - len);
		memset(&m, 0, sizeof(m));
		m.hdr.type = MD_MSG_CANDIDATES;
		m.u.candidates.n = 2;
		m.u.candidates.addr[0] = 0x1000;
		m.u.candidates.addr[1] = 0x2000;
		len += encode(&m, buf + len, sizeof(buf) - len);
		send_with_fd(c, buf, len, test_pool_fd(1, 1));

		td_read_all(c, in, MD_MSG_HDR_SIZE);	/* LOOKUP */
		ASSERT_EQ(md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &h), 0);
		td_read_all(c, in + MD_MSG_HDR_SIZE, h.length);
		len = 0;
		memset(&m, 0, sizeof(m));
		m.hdr.type = MD_MSG_CANDIDATES;
		m.u.candidates.n = 1;
		m.u.candidates.addr[0] = 0x3000;
		len += encode(&m, buf + len, sizeof(buf) - len);
		memset(&m, 0, sizeof(m));
		m.hdr = (struct md__msg_hdr){ .type = MD_MSG_LOOKUP_R, .seq = h.seq };
		m.u.lookup_r.n = 1;
		m.u.lookup_r.slot1[0] = 7;
		len += encode(&m, buf + len, sizeof(buf) - len);
		size_t cut = len;
		memset(&m, 0, sizeof(m));
		m.hdr.type = MD_MSG_CANDIDATES;
		m.u.candidates.n = 1;
		m.u.candidates.addr[0] = 0x4000;
		len += encode(&m, buf + len, sizeof(buf) - len);
		/* In the middle of a header; past it, in a payload; the rest
		 * with the start of the next message. */
		size_t parts[] = { 10, 18, cut + 5 - 28, len - cut - 5 };
		for (size_t i = 0, off = 0; i < 4; off += parts[i++]) {
			ASSERT(send(c, buf + off, parts[i], MSG_NOSIGNAL) == (ssize_t)parts[i]);
			usleep(100 * 1000);
		}
		char x;
		while (read(c, &x, 1) > 0)	/* until the client goes */
			;
		_exit(0);
	}
	close(l);
	struct md__client *c;
	ASSERT_EQ(md__client_connect(&c, path), 0);
	struct md__msg_welcome w;
	int pool = -1;
	ASSERT_EQ(md__client_hello(c, NULL, 0, &w, &pool), 0);
	ASSERT(pool >= 0);
	ASSERT_EQ(w.domain_id, 5);
	ASSERT_EQ(w.pool_pages, 16);
	close(pool);
	/* They came with the WELCOME: already read, the socket is empty. */
	uint64_t got[4];
	ASSERT_EQ(md__client_take_candidates(c, got, 4), 2);
	ASSERT_EQ(got[0], 0x1000);
	ASSERT_EQ(got[1], 0x2000);
	ASSERT_EQ(md__client_share(c), MD_SHARE_ALL / 3);

	uint64_t h = 42;
	uint32_t slot1 = 0;
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &slot1), 0);
	ASSERT_EQ(slot1, 7);
	/* Met on the way to the reply: queued. The next one is in halves. */
	ASSERT_EQ(md__client_take_candidates(c, got, 4), 1);
	ASSERT_EQ(got[0], 0x3000);
	size_t n = 0;
	for (double end = now() + 3; n == 0 && now() < end; usleep(10 * 1000))
		n = md__client_take_candidates(c, got, 4);
	ASSERT_EQ(n, 1);
	ASSERT_EQ(got[0], 0x4000);
	md__client_free(c);
	int status;
	ASSERT_EQ(waitpid(kid, &status, 0), kid);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	unlink(path);
	rmdir(dir);
	return 0;
}

/* Waits up to ms for the domain's live pages to reach want. */
static int wait_live(struct tdaemon *t, uint32_t id, long long want, int ms)
{
	for (double end = now() + ms / 1000.0; now() < end; usleep(10000)) {
		json_t *st = td_status(t);
		json_t *dom = td_domain(st, id);
		long long live = dom ? td_int(dom, "pool_live_pages") : -1;
		json_decref(st);
		if (live == want)
			return 1;
	}
	return 0;
}

TEST_IMPL(daemon_agent_killed)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	int fd, pfd[2];

	td_start(&t, 64);
	/* We stay in the domain, so it (and its counters) outlive the kid. */
	struct md__client *c = td_agent(&t, "vm", &w, &fd);
	ASSERT(pipe(pfd) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static unsigned char pages[8 * PG];
		uint64_t hash[8];
		struct md__msg_welcome w2;
		int fd2;
		struct md__client *c2 = td_agent(&t, "vm", &w2, &fd2);
		uint32_t first = publish(c2, 100, 8, pages, hash);
		ASSERT_EQ(md__client_ref(c2, &first, 1, +1), 0);
		char ok = 'k';
		ASSERT(write(pfd[1], &ok, 1) == 1);
		pause();
		_exit(0);
	}
	char b;
	ASSERT(read(pfd[0], &b, 1) == 1);
	ASSERT(wait_live(&t, w.domain_id, 8, 20000));
	json_t *st = td_status(&t);
	ASSERT_EQ(td_int(td_domain(st, w.domain_id), "pages_sharing"), 1);	/* 9 references, 8 pages */
	json_decref(st);
	/* The kid's pages were found by us, then it dies holding them. */
	ASSERT(kill(kid, SIGKILL) == 0);
	ASSERT(waitpid(kid, NULL, 0) == kid);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	st = td_status(&t);
	json_t *dom = td_domain(st, w.domain_id);
	ASSERT_EQ(td_int(dom, "pages_sharing"), 0);
	ASSERT_EQ(td_int(dom, "index_entries"), 0);
	ASSERT_EQ(td_int(dom, "agents"), 1);
	ASSERT_EQ(json_array_size(json_object_get(st, "agents")), 1);
	json_decref(st);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* A reference stands for a page of the agent's that maps the slot (or is
 * about to), so an agent holds at most as many as its address space has
 * pages, and MD_D_REFS_OWED it may owe back: beyond, REF is -EDQUOT, and
 * only near that bound. One slot REFed 1,024 times a message could reach
 * 2^32 references before, and as the agent exited the daemon dropped them
 * one at a time, for seconds; now a slot's go in one step (at this bound
 * one put at a time would take milliseconds too: the bound is what is
 * checked), and the page is freed with the agent. */
TEST_IMPL(daemon_refs_bounded)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	int fd, pfd[2];
	uint64_t vsize, vres;
	FILE *sf = fopen("/proc/self/statm", "r");
	ASSERT(sf && fscanf(sf, "%lu %lu", &vsize, &vres) == 2);
	fclose(sf);
	if (vsize > (1ull << 24))	/* the kid, forked, has as many */
		SKIP("an address space of %llu pages (AddressSanitizer's shadow) is too many REFs to reach "
		     "the bound in a test", (unsigned long long)vsize);

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, "vm", &w, &fd);
	ASSERT(pipe(pfd) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static unsigned char page[PG];
		static uint32_t slots[MD_REF_MAX];
		uint64_t hash, taken = 0;
		struct md__msg_welcome w2;
		int fd2, err = 0;
		struct md__client *c2 = td_agent(&t, "vm", &w2, &fd2);
		uint32_t slot = publish(c2, 500, 1, page, &hash);
		for (uint32_t i = 0; i < MD_REF_MAX; i++)
			slots[i] = slot;
		uint64_t size, res;
		FILE *f = fopen("/proc/self/statm", "r");
		ASSERT(f && fscanf(f, "%lu %lu", &size, &res) == 2);
		fclose(f);
		/* Past the bound, whatever the process grows by meanwhile. */
		for (uint64_t k = 0; k < (size + MD_D_REFS_OWED) / MD_REF_MAX + 256 && !err; k++)
			if ((err = md__client_ref(c2, slots, MD_REF_MAX, +1)) == 0)
				taken += MD_REF_MAX;
		ASSERT_EQ(err, -EDQUOT);
		/* One at a time up to the bound; then a PUBLISH, whose page
		 * comes with a reference, is refused too. */
		uint32_t first;
		for (uint32_t k = 0; k <= MD_REF_MAX && (err = md__client_ref(c2, slots, 1, +1)) == 0; k++)
			taken++;
		ASSERT_EQ(err, -EDQUOT);
		td_fill_page(page, 501);
		hash = md__page_hash(page);
		ASSERT_EQ(md__client_publish(c2, &hash, page, 1, &first), -EDQUOT);
		/* Refused near the bound, not before: a real VM's references
		 * all come in. */
		ASSERT(taken + MD_REF_MAX > size + MD_D_REFS_OWED);
		ASSERT(write(pfd[1], &taken, sizeof(taken)) == sizeof(taken));
		pause();
		_exit(0);
	}
	uint64_t taken;
	close(pfd[1]);	/* a kid that failed: EOF, not a wait */
	ASSERT(read(pfd[0], &taken, sizeof(taken)) == sizeof(taken));
	uint64_t size, res;
	char statm[64];
	snprintf(statm, sizeof(statm), "/proc/%d/statm", (int)kid);
	FILE *f = fopen(statm, "r");
	ASSERT(f && fscanf(f, "%lu %lu", &size, &res) == 2);
	fclose(f);
	ASSERT(taken + 1 <= size + MD_D_REFS_OWED);	/* and the publisher's own */
	json_t *st = td_status(&t);
	size_t i;
	json_t *a;
	long long refs = -1;
	json_array_foreach(json_object_get(st, "agents"), i, a)
		if (td_int(a, "pid") == kid)
			refs = td_int(a, "references");
	json_decref(st);
	ASSERT_EQ(refs, (long long)taken + 1);
	ASSERT(kill(kid, SIGKILL) == 0);
	ASSERT(waitpid(kid, NULL, 0) == kid);
	/* Its references go with it: the daemon still answers, and the page
	 * nobody else holds is freed. */
	uint64_t h = 12345;
	uint32_t s1;
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* Freed pool pages go back to the host, not one punch at a time (each one
 * a TLB shootdown in every agent mapping the pool) but together, once
 * memdedupd has had a second without messages. */
TEST_IMPL(daemon_pool_trimmed_when_quiet)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[8 * PG];
	uint64_t hash[8];
	uint32_t slots[8];
	int fd;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	uint32_t first = publish(c, 300, 8, pages, hash);	/* we hold each once */
	long long full = test_file_blocks(fd);
	ASSERT(full >= 8 * PG / 512);
	for (uint32_t i = 0; i < 8; i++)
		slots[i] = first + i;
	/* Freed by the REF, so not punched before a second after t_free. */
	double t_free = now();
	ASSERT_EQ(md__client_ref(c, slots, 8, -1), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	/* A STATUS is a message: the quiet second starts after its answer,
	 * so not before t0, taken before it is asked (a stall of ours
	 * cannot move t0 past the daemon's second). */
	double t0 = now();
	json_decref(td_status(&t));
	/* Freed, not punched yet: a publication would rewrite them in place.
	 * Looked at only while the second since the free has not passed
	 * (always, but on a machine stalled that long). */
	if (now() - t_free < 0.9)
		ASSERT_EQ(test_file_blocks(fd), full);
	while (test_file_blocks(fd) > 0 && now() - t0 < 10)
		usleep(20000);
	ASSERT_EQ(test_file_blocks(fd), 0);
	ASSERT(now() - t0 >= 0.5);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* A private daemon, and an agent of this process that published two pages
 * and lost its connection (as after a malformed message) while we live
 * on: the record keeps its references, the pages stay. Returns the first
 * slot; *w: its WELCOME. */
static uint32_t agent_gone_holding_two(struct tdaemon *t, struct md__msg_welcome *w)
{
	static unsigned char pages[2 * PG];
	uint64_t hash[2];
	int fd;
	td_start(t, 64);
	struct md__client *c = td_agent(t, NULL, w, &fd);
	uint32_t first = publish(c, 7, 2, pages, hash);
	close(fd);
	md__client_free(c);
	usleep(200000);
	ASSERT(wait_live(t, w->domain_id, 2, 20000));
	return first;
}

TEST_IMPL(daemon_reconnect_keeps_refs)
{
	struct tdaemon t;
	struct md__msg_welcome w, w2;
	int fd2;

	/* Our pages must not be freed under our mappings. */
	uint32_t first = agent_gone_holding_two(&t, &w);
	struct md__client *c;
	json_t *st = td_status(&t);
	json_t *a = json_array_get(json_object_get(st, "agents"), 0);
	ASSERT(a && json_is_false(json_object_get(a, "connected")));
	ASSERT_EQ(td_int(a, "hellos"), 1);
	json_decref(st);
	/* Back: the same pool, our references still ours, the record's
	 * second connection. */
	c = td_agent(&t, NULL, &w2, &fd2);
	ASSERT_EQ(w2.domain_id, w.domain_id);
	ASSERT(w2.generation == w.generation);
	st = td_status(&t);
	a = json_array_get(json_object_get(st, "agents"), 0);
	ASSERT(a && json_is_true(json_object_get(a, "connected")));
	ASSERT_EQ(td_int(a, "hellos"), 2);
	json_decref(st);
	uint32_t un[2] = { first, first + 1 };
	ASSERT_EQ(md__client_ref(c, un, 2, -1), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* In a child: an agent of t's memdedupd that published two pages (from
 * seed) and closed its connection; then a byte to ready, and, given one on
 * go, an exec of sleep (a program without the agent), as a program that
 * closes its descriptors before it execs does; go closed, it exits. */
static pid_t closes_then_execs(const struct tdaemon *t, unsigned seed, int ready, const int go[2])
{
	pid_t p = fork();
	ASSERT(p >= 0);
	if (p)
		return p;
	static unsigned char pages[2 * PG];
	uint64_t hash[2];
	struct md__msg_welcome w;
	int fd;
	char x;
	close(go[1]);
	struct md__client *c = td_agent(t, NULL, &w, &fd);
	publish(c, seed, 2, pages, hash);
	md__client_free(c);
	close(fd);
	if (write(ready, &x, 1) != 1)
		_exit(100);
	if (read(go[0], &x, 1) == 1)
		execl("/bin/sleep", "sleep", "30", (char *)NULL);
	_exit(0);
}

static int live_becomes(const struct tdaemon *t, long long want, int ms)
{
	for (double end = now() + ms / 1000.0; now() < end; usleep(10000))
		if (td_domains_int(t, "pool_live_pages") == want)
			return 1;
	return 0;
}

/* pid's row in t's STATUS: 1 with its references in *refs and whether it
 * is connected in *conn, or 0: none. */
static int agent_row(const struct tdaemon *t, pid_t pid, long long *refs, int *conn)
{
	json_t *st = td_status(t);
	json_t *a = td_find(json_object_get(st, "agents"), "pid", pid);
	if (a) {
		*refs = td_int(a, "references");
		*conn = json_is_true(json_object_get(a, "connected"));
	}
	json_decref(st);
	return a != NULL;
}

/* Two agents' processes close their connections (their records keep the
 * pages they published: they may map them); one then execs a program
 * without the agent. memdedupd, looking again a second later at the
 * address space the agent joined with, finds it gone: that record and its
 * references go, while the program runs on (they stayed until it exited).
 * The other, which only lost its connection, keeps its record through
 * every look. */
TEST_IMPL(daemon_closed_then_exec_gives_back)
{
	struct tdaemon t;
	int ready[2], go[2][2], conn;
	long long refs;
	char x;
	td_start(&t, 64);
	ASSERT(pipe(ready) == 0);
	ASSERT(pipe(go[0]) == 0);
	ASSERT(pipe(go[1]) == 0);
	pid_t vmm = closes_then_execs(&t, 10, ready[1], go[0]);
	pid_t lost = closes_then_execs(&t, 20, ready[1], go[1]);
	close(go[0][0]);
	close(go[1][0]);
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	double closed = now();
	ASSERT(live_becomes(&t, 4, 20000));
	ASSERT_EQ(write(go[0][1], &x, 1), 1);
	/* At the latest at the longer period's look. */
	ASSERT(live_becomes(&t, 2, (MD_D_LOOK_LATER_MS + MD_D_LOOK_MS) * 3 / 2));
	ASSERT_EQ(agent_row(&t, vmm, &refs, &conn), 0);
	ASSERT_EQ(waitpid(vmm, NULL, WNOHANG), 0);	/* it runs on */
	/* Past the quick looks. */
	double left = closed + (MD_D_LOOKS + 1) * MD_D_LOOK_MS / 1000.0 + 0.5 - now();
	if (left > 0)
		usleep((useconds_t)(left * 1e6));
	ASSERT_EQ(agent_row(&t, lost, &refs, &conn), 1);
	ASSERT_EQ(refs, 2);
	ASSERT_EQ(conn, 0);
	ASSERT_EQ(td_domains_int(&t, "pool_live_pages"), 2);
	ASSERT_EQ(kill(vmm, SIGKILL), 0);
	ASSERT_EQ(waitpid(vmm, NULL, 0), vmm);
	close(go[0][1]);
	close(go[1][1]);
	ASSERT_EQ(waitpid(lost, NULL, 0), lost);
	ASSERT(live_becomes(&t, 0, 20000));
	close(ready[0]);
	close(ready[1]);
	td_stop(&t);
	return 0;
}

/* The n lowest descriptor numbers pid has free, in fd[0..n). */
static void lowest_free_fds_now(pid_t pid, int *fd, int n)
{
	char path[64];
	unsigned char used[4096] = { 0 };
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	ASSERT(dir);
	for (struct dirent *e; (e = readdir(dir));) {
		long k = e->d_name[0] == '.' ? -1 : strtol(e->d_name, NULL, 10);
		if (k >= 0 && k < (long)sizeof(used))
			used[k] = 1;
	}
	closedir(dir);
	int found = 0;
	for (int k = 0; k < (int)sizeof(used) && found < n; k++)
		if (!used[k])
			fd[found++] = k;
	ASSERT_EQ(found, n);
}

/* The same, once the daemon has closed what it was closing (a STATUS
 * connection of ours a moment ago): the same ones, 100 ms apart. */
static void lowest_free_fds(pid_t pid, int *fd, int n)
{
	int again[3];
	ASSERT(n <= 3);
	lowest_free_fds_now(pid, fd, n);
	for (int i = 0; i < 50; i++) {
		usleep(100000);
		lowest_free_fds_now(pid, again, n);
		if (memcmp(again, fd, (size_t)n * sizeof(*fd)) == 0)
			return;
		memcpy(fd, again, (size_t)n * sizeof(*fd));
	}
	ASSERT(0);	/* never settled */
}

/* A reconnect the daemon cannot watch (no pidfd: out of descriptors) is
 * refused like a new agent: by its pid alone, a connection from a process
 * gone whose pid a live agent took would take over that agent's record and
 * free pages it still maps. The record waits for a connection it can
 * watch. */
/* A kernel without SO_PEERPIDFD (before Linux 6.5, Debian 12's 6.1; a shim
 * here): memdedupd takes a pidfd of the peer's pid at accept, when the peer
 * may have exited and its pid gone to another user's process, whose record
 * a HELLO on the inherited connection would take over (its references
 * dropped under its guest). A process whose uids are none of the uid that
 * connected is not taken for the peer: refused. The peer itself having
 * changed its uids before the accept stands in for such a process here
 * (the daemon cannot tell them apart: that peer is refused once, and
 * connects again as its new user). The same process, unchanged, is
 * welcome through the same fallback. */
static int hello_from_child(const struct tdaemon *t, uid_t become)
{
	int go[2], ready[2];
	ASSERT(pipe(go) == 0 && pipe(ready) == 0);
	td_pause(t);
	pid_t child = fork();
	ASSERT(child >= 0);
	if (child == 0) {
		struct md__client *c;
		struct md__msg_welcome w;
		int fd = -1;
		char x = 0;
		/* Connected while the daemon is stopped: accepted later. */
		if (md__client_connect(&c, t->sock) != 0)
			_exit(100);
		if (become && setresuid(become, become, become) != 0)
			_exit(101);
		if (write(ready[1], &x, 1) != 1 || read(go[0], &x, 1) != 1)
			_exit(102);
		int err = md__client_hello(c, NULL, 0, &w, &fd);
		_exit(err == 0 ? 0 : err == -ESRCH ? 3 : 104);
	}
	char x = 0;
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	ASSERT(kill(t->pid, SIGCONT) == 0);
	ASSERT_EQ(write(go[1], &x, 1), 1);
	int st;
	ASSERT_EQ(waitpid(child, &st, 0), child);
	close(go[0]);
	close(go[1]);
	close(ready[0]);
	close(ready[1]);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST_IMPL(daemon_fallback_pidfd_checks_uid)
{
	if (geteuid() != 0)
		SKIP("needs root: the peer changes its uid");
	char shim[600];
	const char *first = getenv("MD_TEST_PRELOAD_FIRST");	/* libasan, first */
	snprintf(shim, sizeof(shim), "%s%s%s/libnopeerpidfd-stub.so", first ? first : "", first ? ":" : "",
		 build_dir());
	setenv("LD_PRELOAD", shim, 1);
	struct tdaemon t;
	td_start(&t, 64);
	unsetenv("LD_PRELOAD");
	ASSERT_EQ(hello_from_child(&t, 0), 0);
	ASSERT_EQ(hello_from_child(&t, 65534), 3);
	td_stop(&t);
	return 0;
}

/* The same fallback short of descriptors after its pidfd_open: the peer's
 * status cannot be read (EMFILE), and the HELLO is refused for the
 * daemon's shortage (-EMFILE, which the agent says is memdedupd's), not as
 * from a process that has exited (-ESRCH, which it was before). */
TEST_IMPL(daemon_fallback_pidfd_shortage_said)
{
	char shim[600];
	const char *first = getenv("MD_TEST_PRELOAD_FIRST");	/* libasan, first */
	snprintf(shim, sizeof(shim), "%s%s%s/libnopeerpidfd-stub.so", first ? first : "", first ? ":" : "",
		 build_dir());
	setenv("LD_PRELOAD", shim, 1);
	struct tdaemon t;
	td_start(&t, 64);
	unsetenv("LD_PRELOAD");
	/* The connection's descriptor fits, and the pidfd, not the status
	 * file's. */
	int free_fd[3];
	lowest_free_fds(t.pid, free_fd, 3);
	struct rlimit back, low;
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, NULL, &back) == 0);
	low = (struct rlimit){ (rlim_t)free_fd[2], back.rlim_max };
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &low, NULL) == 0);
	struct md__client *c;
	struct md__msg_welcome w;
	int fd = -1;
	ASSERT_EQ(md__client_connect(&c, t.sock), 0);
	int err = md__client_hello(c, NULL, 0, &w, &fd);
	md__client_free(c);
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &back, NULL) == 0);
	ASSERT_EQ(err, -EMFILE);
	/* And with descriptors again, welcome through the same fallback. */
	c = td_agent(&t, NULL, &w, &fd);
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_reconnect_needs_pidfd)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__client *c;
	int fd, free_fd[2];

	uint32_t first = agent_gone_holding_two(&t, &w);
	/* The connection's descriptor fits, the pidfd would not. */
	lowest_free_fds(t.pid, free_fd, 2);
	struct rlimit back, low;
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, NULL, &back) == 0);
	low = (struct rlimit){ (rlim_t)free_fd[1], back.rlim_max };
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &low, NULL) == 0);
	ASSERT_EQ(md__client_connect(&c, t.sock), 0);
	int err = md__client_hello(c, NULL, 0, &w, &fd);
	md__client_free(c);
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &back, NULL) == 0);
	ASSERT_EQ(err, -EMFILE);
	ASSERT(wait_live(&t, w.domain_id, 2, 20000));
	/* Watched again: the same references, ours to give back. */
	c = td_agent(&t, NULL, &w, &fd);
	uint32_t un[2] = { first, first + 1 };
	ASSERT_EQ(md__client_ref(c, un, 2, -1), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* A live agent's HELLO on a new connection while its old one stays open
 * (kept by a child its VMM forked, which runs without an agent, or not yet
 * seen closed): the record moves to the new connection, references and
 * all, and the old one is closed. Refused, the agent could not reconnect
 * for as long as the child lived. */
/* An agent of a fresh daemon holding two pool pages (published from seed);
 * its first slot, their hashes in hash[2]. */
static struct md__client *agent_holding_two(struct tdaemon *t, unsigned seed, struct md__msg_welcome *w,
					    int *fd, uint32_t *first, uint64_t *hash)
{
	static unsigned char pages[2 * PG];
	td_start(t, 64);
	struct md__client *c = td_agent(t, NULL, w, fd);
	*first = publish(c, seed, 2, pages, hash);
	ASSERT(wait_live(t, w->domain_id, 2, 20000));
	return c;
}

TEST_IMPL(daemon_hello_again_takes_record)
{
	struct tdaemon t;
	struct md__msg_welcome w, w2;
	uint64_t hash[2];
	uint32_t first;
	int fd, fd2;

	struct md__client *old = agent_holding_two(&t, 40, &w, &fd, &first, hash);
	struct md__client *c = td_agent(&t, NULL, &w2, &fd2);
	ASSERT_EQ(w2.domain_id, w.domain_id);
	json_t *st = td_status(&t);
	ASSERT_EQ(json_array_size(json_object_get(st, "agents")), 1);
	json_decref(st);
	/* The old connection was closed: nothing more goes through it. */
	uint32_t s;
	ASSERT(md__client_lookup(old, hash, NULL, 1, &s) < 0);
	/* The references are the new connection's to give back. */
	uint32_t un[2] = { first, first + 1 };
	ASSERT_EQ(md__client_ref(c, un, 2, -1), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	md__client_free(old);
	close(fd);
	close(fd2);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* The same while the old connection is still open, back mapping no pool
 * page (it exec'd, a child keeping the socket): the record goes with its
 * references, as after a plain reconnect (review). */
TEST_IMPL(daemon_hello_again_after_exec)
{
	struct tdaemon t;
	struct md__msg_welcome w, w2;
	uint64_t hash[2];
	uint32_t first;
	struct md__client *c;
	int fd, fd2;

	struct md__client *old = agent_holding_two(&t, 50, &w, &fd, &first, hash);
	ASSERT_EQ(md__client_connect(&c, t.sock), 0);
	ASSERT_EQ(md__client_hello(c, NULL, MD_HELLO_NO_POOL_MAPS, &w2, &fd2), 0);
	/* The old record went once the new one was made (which took its
	 * domain): its references with it, their pages freed. */
	ASSERT_EQ(w2.domain_id, w.domain_id);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	md__client_free(old);
	close(fd);
	close(fd2);
	md__client_free(c);
	td_stop(&t);
	return 0;
}


/* Whether the daemon saw our agent's connection go (its record kept). */
static int own_record_disconnected(const struct tdaemon *t)
{
	for (double end = now() + 20; now() < end; usleep(10000)) {
		json_t *st = td_status(t);
		json_t *a = td_find(json_object_get(st, "agents"), "pid", getpid());
		int gone = a && json_is_false(json_object_get(a, "connected"));
		json_decref(st);
		if (gone)
			return 1;
	}
	return 0;
}

/* A process whose record (disconnected) still holds references in one
 * domain says HELLO for another domain, or as another uid: refused
 * (-EBUSY). Joined to the old record, it would cross domains (or users);
 * given a new one, the old record's references would go while the pages
 * may still be mapped. */
TEST_IMPL(daemon_hello_other_domain_while_holding_refused)
{
	struct tdaemon t;
	struct md__msg_welcome w, w2;
	static unsigned char pages[PG];
	uint64_t hash[1];
	struct md__client *c;
	int fd, fd2 = -1;

	td_start(&t, 64);
	c = td_agent(&t, "a", &w, &fd);
	uint32_t s = publish(c, 520, 1, pages, hash);
	md__client_free(c);
	close(fd);
	ASSERT(own_record_disconnected(&t));
	c = td_connect(&t);
	ASSERT_EQ(md__client_hello(c, "b", 0, &w2, &fd2), -EBUSY);
	md__client_free(c);
	if (geteuid() == 0) {	/* the same pid as another user (seteuid before connect) */
		ASSERT(seteuid(65534) == 0);
		c = td_connect(&t);
		ASSERT(seteuid(0) == 0);
		ASSERT_EQ(md__client_hello(c, "a", 0, &w2, &fd2), -EBUSY);
		md__client_free(c);
	}
	json_t *st = td_status(&t);
	json_t *dom = td_domain(st, w.domain_id);
	ASSERT(dom);
	ASSERT_EQ(td_int(dom, "references"), 1);
	ASSERT_EQ(td_int(dom, "pool_live_pages"), 1);
	ASSERT_EQ(json_array_size(json_object_get(st, "domains")), 1);
	json_t *agents = json_object_get(st, "agents");
	ASSERT_EQ(json_array_size(agents), 1);
	json_t *a = json_array_get(agents, 0);
	ASSERT_EQ(td_int(a, "domain_id"), w.domain_id);
	const char *named = json_string_value(json_object_get(a, "domain"));
	ASSERT(named && strcmp(named, "a") == 0);	/* not "b" */
	ASSERT_EQ(td_int(a, "uid"), geteuid());
	ASSERT_EQ(td_int(a, "references"), 1);
	json_decref(st);
	/* Back in "a": the record and its reference are ours again. */
	c = td_agent(&t, "a", &w2, &fd2);
	ASSERT_EQ(w2.domain_id, w.domain_id);
	ASSERT_EQ(md__client_ref(c, &s, 1, -1), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	md__client_free(c);
	close(fd2);
	td_stop(&t);
	return 0;
}
/* Back mapping no pool page (the process exec'd): the record goes with its
 * references, where a plain reconnect keeps them (daemon_reconnect_keeps_refs). */
TEST_IMPL(daemon_reconnect_without_pool_maps)
{
	struct tdaemon t;
	struct md__msg_welcome w, w2;
	struct md__client *c;
	int fd;

	agent_gone_holding_two(&t, &w);
	ASSERT_EQ(md__client_connect(&c, t.sock), 0);
	ASSERT_EQ(md__client_hello(c, NULL, MD_HELLO_NO_POOL_MAPS, &w2, &fd), 0);
	/* The record went once the new one was made (in the same domain,
	 * which it kept): its references with it, their pages freed. */
	ASSERT_EQ(w2.domain_id, w.domain_id);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_dies_client_enotconn)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	uint64_t h = 1;
	uint32_t s;
	int fd;

	td_start(&t, 16);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	/* The pool outlives the daemon in our descriptor. */
	ASSERT(kill(t.pid, SIGKILL) == 0);
	ASSERT(waitpid(t.pid, NULL, 0) == t.pid);
	double t0 = now();
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s), -ENOTCONN);
	ASSERT(now() - t0 < 1.5);	/* at once, not after the 2 s deadline */
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s), -ENOTCONN);
	struct md__msg_control ctl;
	ASSERT_EQ(md__client_next_control(c, &ctl), -ENOTCONN);
	md__client_free(c);
	const void *v = mmap(NULL, 16 * PG, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT(v != MAP_FAILED);
	ASSERT(md__client_connect(&c, t.sock) == -ECONNREFUSED);

	/* A daemon that hangs: the timeout, not forever. */
	td_start(&t, 16);
	c = td_agent(&t, NULL, &w, &fd);
	md__client_set_timeout(c, 300);
	td_pause(&t);
	t0 = now();
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s), -ETIMEDOUT);
	ASSERT(now() - t0 < 1.5);
	kill(t.pid, SIGCONT);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* This agent's references as the daemon counts them. */
static long long my_references(const struct tdaemon *t)
{
	json_t *st = td_status(t);
	json_t *a = json_array_get(json_object_get(st, "agents"), 0);
	long long v = a && td_int(a, "pid") == getpid() ? td_int(a, "references") : -1;
	json_decref(st);
	return v;
}

/* A lookup once the daemon has caught up with c (up to 5 s). */
static int lookup_caught_up(struct md__client *c)
{
	uint64_t h = 1;
	uint32_t s;
	int err = -ETIMEDOUT;
	for (double end = now() + 5; err == -ETIMEDOUT && now() < end;) {
		err = md__client_lookup(c, &h, NULL, 1, &s);
		if (err == -ETIMEDOUT)
			usleep(10000);
	}
	return err;
}

/* A daemon that stops answering for a while (a stalled host, SIGSTOP
 * here): the request times out and the connection lives on; while a reply
 * is late, requests fail at once and an UNREF waits its turn; and what the
 * late replies granted goes back, since the caller took none of it. Before,
 * the connection went and those references stayed pinned until the
 * process exited. */
TEST_IMPL(daemon_late_replies_given_back)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[3 * PG];
	const void *each[2] = { pages + PG, pages + 2 * PG };
	uint64_t hash[3], h = 1;
	uint32_t s, slot[2];
	int fd, status[2];

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	uint32_t a = publish(c, 40, 1, pages, hash);	/* held once */
	ASSERT_EQ(my_references(&t), 1);

	/* A REF answered late. Each request made while it is stopped waits
	 * 400 ms; the others as long as they need. */
	md__client_set_timeout(c, 400);
	td_pause(&t);
	ASSERT_EQ(md__client_ref(c, &a, 1, +1), -ETIMEDOUT);
	ASSERT(md__client_alive(c));
	/* A wait would be the whole timeout, 10 s: told apart from "at
	 * once" with room for a loaded machine's stalls. */
	md__client_set_timeout(c, 10000);
	double t0 = now();
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s), -ETIMEDOUT);
	ASSERT(now() - t0 < 5);	/* at once, not another timeout */
	ASSERT(kill(t.pid, SIGCONT) == 0);
	md__client_set_timeout(c, 5000);
	ASSERT_EQ(lookup_caught_up(c), 0);
	ASSERT_EQ(my_references(&t), 1);

	/* PUBLISHes answered late, and an UNREF asked meanwhile. */
	for (int i = 1; i < 3; i++) {
		td_fill_page(pages + i * PG, 40 + (unsigned)i);
		hash[i] = md__page_hash(pages + i * PG);
	}
	md__client_set_timeout(c, 400);
	td_pause(&t);
	ASSERT_EQ(md__client_publish_each(c, hash + 1, each, 2, slot, status), -ETIMEDOUT);
	ASSERT_EQ(md__client_ref(c, &a, 1, -1), 0);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	md__client_set_timeout(c, 5000);
	ASSERT_EQ(lookup_caught_up(c), 0);
	ASSERT_EQ(my_references(&t), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	ASSERT(md__client_alive(c));

	/* An UNREF answered late counts once: it went, so it is done (a
	 * caller that tried again would drop a reference of a page it
	 * still maps). */
	uint32_t u = publish(c, 43, 1, pages, hash);
	ASSERT_EQ(md__client_ref(c, &u, 1, +1), 0);	/* two pages map it */
	md__client_set_timeout(c, 400);
	td_pause(&t);
	ASSERT_EQ(md__client_ref(c, &u, 1, -1), 0);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	md__client_set_timeout(c, 5000);
	ASSERT_EQ(lookup_caught_up(c), 0);
	ASSERT_EQ(my_references(&t), 1);
	ASSERT(md__client_alive(c));
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* A batch of one-page PUBLISHes larger than the socket's buffer, sent while
 * the daemon is stopped past the client's timeout: the send fails, the
 * client takes none of the pages and hangs up. The PUBLISHes that went
 * whole wait in the daemon's socket: read once it is back, each grant was
 * a reference in the record the agent's reconnect gets back, which nothing
 * gave back until the process exited (review: 18 of 64). A peer that hung
 * up reads no reply: only its UNREFs are applied. Again with a child
 * forked meanwhile holding a copy of the socket (a VMM's child runs
 * without an agent): the client's hang-up is seen all the same. */
TEST_IMPL(daemon_publish_cut_short_not_granted)
{
	enum { K = 64 };	/* the scanner's batch: 256 KiB */
	struct tdaemon t;
	static unsigned char pages[K * PG];
	const void *each[K];
	uint64_t hash[K];
	uint32_t slot[K];
	int fd, status[K];

	td_start(&t, 4 * K);
	for (uint32_t i = 0; i < K; i++) {
		td_fill_page(pages + i * PG, 700 + i);
		hash[i] = md__page_hash(pages + i * PG);
		each[i] = pages + i * PG;
	}
	for (int held = 0; held < 2; held++) {
		struct md__msg_welcome w;
		struct md__client *c = td_agent(&t, NULL, &w, &fd);
		int hold[2];
		pid_t kid = -1;
		ASSERT(pipe(hold) == 0);
		if (held) {
			kid = fork();
			ASSERT(kid >= 0);
			if (kid == 0) {
				char b;
				close(hold[1]);
				_exit(read(hold[0], &b, 1) == 0 ? 0 : 1);	/* EOF: released */
			}
		}
		md__client_set_timeout(c, 400);
		td_pause(&t);
		ASSERT_EQ(md__client_publish_each(c, hash, each, K, slot, status), -ETIMEDOUT);
		ASSERT(!md__client_alive(c));	/* cut short: the stream is lost */
		md__client_free(c);
		close(fd);
		ASSERT(kill(t.pid, SIGCONT) == 0);
		/* Once the daemon is done with that connection (a HELLO
		 * before would take the record over, and drop what is left
		 * unread), the same process again, as the agent a second
		 * later: the record it gets back, if one was kept, holds
		 * nothing the process was granted. */
		for (int i = 0; i < 500 && agents_connected(&t) != 0; i++)
			usleep(10000);
		ASSERT_EQ(agents_connected(&t), 0);
		c = td_agent(&t, NULL, &w, &fd);
		ASSERT_EQ(lookup_caught_up(c), 0);
		long long refs = my_references(&t);
		if (refs != 0)
			fprintf(stderr, "  references the record holds: %lld (the client holds 0)\n", refs);
		ASSERT_EQ(refs, 0);
		ASSERT(wait_live(&t, w.domain_id, 0, 5000));
		md__client_free(c);
		close(fd);
		close(hold[1]);
		close(hold[0]);
		int st;
		ASSERT(kid < 0 || (waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0));
	}
	td_stop(&t);
	return 0;
}

/* A REF whose reply does not come within MD_CLIENT_LATE_MAX_MS (the daemon
 * stopped): the client gives the connection up, and hangs up. The daemon,
 * back, found the REF in the closed socket and applied it: the record the
 * reconnect gets back held one reference more than the agent knows of,
 * pinned until the process exited (review). */
TEST_IMPL(daemon_late_past_bound_not_granted)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[PG];
	uint64_t hash[1], h = 1;
	uint32_t s;
	int fd;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	uint32_t a = publish(c, 80, 1, pages, hash);	/* held once */
	ASSERT_EQ(my_references(&t), 1);
	md__client_set_timeout(c, 400);
	td_pause(&t);
	ASSERT_EQ(md__client_ref(c, &a, 1, +1), -ETIMEDOUT);
	ASSERT(md__client_alive(c));
	usleep((MD_CLIENT_LATE_MAX_MS + 500) * 1000);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s), -ENOTCONN);
	md__client_free(c);
	close(fd);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	c = td_agent(&t, NULL, &w, &fd);	/* the record kept: the same domain */
	ASSERT_EQ(lookup_caught_up(c), 0);
	long long refs = my_references(&t);
	if (refs != 1)
		fprintf(stderr, "  references held by the record: %lld (the client holds 1)\n", refs);
	ASSERT_EQ(refs, 1);
	/* The one it holds goes back, and with it the page. */
	ASSERT_EQ(md__client_ref(c, &a, 1, -1), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 5000));
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* UNREFs sent whole on a connection the daemon then gives up before reading
 * them (its HELLO on a new connection takes the record, or it closes) are
 * applied all the same: the client counted them done and never sends them
 * again, so their pages stayed pinned until the process exited (review).
 * Here the daemon stopped reading the old connection, whose replies pile
 * up unread (1 MiB: MD_D_OUT_PAUSE). */
/* An UNREF also naming a slot not held (a client may send one it lost
 * track of) is refused whole on a live connection, whose ACK has the
 * client send each slot alone; one left by a connection taken over has
 * no one to tell: each of its slots goes alone then, not one kept until
 * the process exits (review). */
static void takeover_applies_unrefs(int with_unheld)
{
	struct tdaemon t;
	struct md__msg_welcome w, w2;
	uint64_t hash[2];
	uint32_t first;
	int fd, fd2;
	struct md__client *old = agent_holding_two(&t, 60, &w, &fd, &first, hash);
	int ofd = md__client_fd(old), big = 16 << 20;
	ASSERT(setsockopt(ofd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) == 0);
	static unsigned char out[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	static struct md__msg m;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP, .seq = 1000 } };
	m.u.lookup.n = MD_LOOKUP_MAX;
	for (uint32_t i = 0; i < MD_LOOKUP_MAX; i++)
		m.u.lookup.hash[i] = 1000 + i;
	size_t n = encode(&m, out, sizeof(out));
	for (int i = 0; i < 1000; i++)	/* about 2 MiB of replies, never read */
		ASSERT_EQ(send(ofd, out, n, MSG_NOSIGNAL | MSG_DONTWAIT), (ssize_t)n);
	usleep(300000);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_UNREF, .seq = 5000 } };
	m.u.refs.n = with_unheld ? 2 : 1;
	m.u.refs.slot[0] = first;
	m.u.refs.slot[1] = first + 1000;	/* not held */
	n = encode(&m, out, sizeof(out));
	ASSERT_EQ(send(ofd, out, n, MSG_NOSIGNAL | MSG_DONTWAIT), (ssize_t)n);
	usleep(100000);
	ASSERT_EQ(my_references(&t), 2);	/* not read yet */
	struct md__client *c = td_agent(&t, NULL, &w2, &fd2);
	ASSERT_EQ(my_references(&t), 1);
	uint32_t second = first + 1;
	ASSERT_EQ(md__client_ref(c, &second, 1, -1), 0);
	ASSERT(wait_live(&t, w.domain_id, 0, 20000));
	md__client_free(old);
	md__client_free(c);
	close(fd);
	close(fd2);
	td_stop(&t);
}

TEST_IMPL(daemon_takeover_applies_sent_unrefs)
{
	if (geteuid() != 0)
		SKIP("needs root: a socket buffer past the sysctl's limit (SO_SNDBUFFORCE)");
	takeover_applies_unrefs(0);
	takeover_applies_unrefs(1);
	return 0;
}


/* A CONTROL as the CLI sends it (token: 0 or MD_CONTROL_NOTICES); its
 * answer's status, and text. */
static int control_token(struct md__client *cli, unsigned op, int pid, const char *key,
			 const char *value, char *text, uint32_t token)
{
	struct md__msg m = { .hdr.type = MD_MSG_CONTROL }, r;
	m.u.control.token = token;
	unsigned char buf[256], reply[512];
	uint32_t len = sizeof(reply);
	unsigned type;
	m.u.control.op = op;
	m.u.control.pid = pid;
	if (key) {
		strcpy(m.u.control.key, key);
		strcpy(m.u.control.value, value);
	}
	ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
	ASSERT(n > 0);
	ASSERT_EQ(md__client_request(cli, MD_MSG_CONTROL, buf + MD_MSG_HDR_SIZE,
				     (uint32_t)n - MD_MSG_HDR_SIZE, reply, &len, &type), 0);
	ASSERT_EQ(type, MD_MSG_CONTROL_R);
	ASSERT_EQ(md__msg_decode_payload(type, reply, len, &r), 0);
	if (text)
		strcpy(text, r.u.text.text);
	return r.u.text.status;
}

static int control(struct md__client *cli, unsigned op, int pid, const char *key,
		   const char *value, char *text)
{
	return control_token(cli, op, pid, key, value, text, 0);
}

/* A CONTROL sent from a thread of its own: it is answered only once the
 * agents have answered. */
struct control_call {
	struct md__client *cli;
	unsigned op;
	int pid;
	const char *key, *value;
	uint32_t token;
	char text[MD_TEXT_MAX + 1];
	int status;
	pthread_t thread;
};

static void *control_thread(void *arg)
{
	struct control_call *k = arg;
	k->status = control_token(k->cli, k->op, k->pid, k->key, k->value, k->text, k->token);
	return NULL;
}

static void control_start_token(struct control_call *k, struct md__client *cli, unsigned op, int pid,
				const char *key, const char *value, uint32_t token)
{
	*k = (struct control_call){ .cli = cli, .op = op, .pid = pid, .key = key, .value = value, .token = token };
	ASSERT_EQ(pthread_create(&k->thread, NULL, control_thread, k), 0);
}

static void control_start(struct control_call *k, struct md__client *cli, unsigned op, int pid,
			  const char *key, const char *value)
{
	control_start_token(k, cli, op, pid, key, value, 0);
}

static int control_end(struct control_call *k)
{
	ASSERT_EQ(pthread_join(k->thread, NULL), 0);
	return k->status;
}

/* The next CONTROL the agent gets, waiting for it. */
static void next_control(struct md__client *agent, struct md__msg_control *ctl)
{
	int err = -EAGAIN;
	for (int i = 0; i < 400 && err == -EAGAIN; i++)
		if ((err = md__client_next_control(agent, ctl)) == -EAGAIN)
			usleep(5000);
	ASSERT_EQ(err, 0);
	ASSERT(ctl->token != 0);
}

/* The child's exit status (it exited, not killed). */
static int child_exit(pid_t kid)
{
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	return WEXITSTATUS(st);
}

/* An agent's refusal as agents word it, at its longest: it reached the
 * CLI cut mid-word ("...(64 MiB kept spare); n (done by 0 of 1 agent)"). */
#define SHORT_OF_MEMORY "not enough memory for the copies: 100 MiB to copy, 120 MiB available (64 MiB kept " \
			"spare); nothing changed"

/* An agent in a child process, for the CONTROL tests: it says each CONTROL
 * it gets on up ('P', 'R', 'U', 'S': its op), answers each at once but an
 * UNMERGE, which it answers on cmd: 'a' done, 'r' refused (SHORT_OF_MEMORY);
 * 's' on cmd: its REPORT says it stopped for good; cmd's end: it goes. */
struct fake_agent {
	pid_t pid;
	int cmd, up;	/* the parent's ends */
};

static void fake_agent_run(const struct tdaemon *t, int cmd, int up)
{
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	uint32_t unmerge = 0;
	int fd;
	char b;
	if (fcntl(cmd, F_SETFL, O_NONBLOCK) < 0)
		_exit(1);
	struct md__client *o = td_agent(t, NULL, &w, &fd);
	if (write(up, "r", 1) != 1)
		_exit(2);
	for (;;) {
		if (md__client_next_control(o, &ctl) == 0) {
			char op = "?PRUS"[ctl.op < MD_CTL_OP_END ? ctl.op : 0];
			if (write(up, &op, 1) != 1)
				_exit(3);
			if (ctl.op == MD_CTL_UNMERGE)
				unmerge = ctl.token;
			else if (md__client_control_done(o, ctl.token, 0, NULL))
				_exit(4);
		}
		ssize_t r = read(cmd, &b, 1);
		if (r == 0)
			_exit(0);
		if (r == 1 && (b == 'a' || b == 'r') &&
		    md__client_control_done(o, unmerge, b == 'a' ? 0 : -ENOMEM, b == 'a' ? NULL : SHORT_OF_MEMORY))
			_exit(5);
		if (r == 1 && b == 's') {
			uint64_t ctr[MD_CTR_COUNT] = { 0 };
			ctr[MD_CTR_SCAN_STATE] = MD_SCAN_STATE_STOPPED;
			if (md__client_report(o, ctr, MD_CTR_COUNT))
				_exit(6);
		}
		usleep(5000);
	}
}

/* The cmd ends of those running: a later one closes its copies, or an
 * earlier one never saw its end. */
static int fake_agent_cmds[8];
static unsigned fake_agent_n;

/* Starts one, connected once this returns, of uid (0: ours). */
static void fake_agent_start_as(const struct tdaemon *t, struct fake_agent *f, uid_t uid)
{
	int cmd[2], up[2];
	char b;
	ASSERT(fake_agent_n < sizeof(fake_agent_cmds) / sizeof(*fake_agent_cmds));
	ASSERT(pipe(cmd) == 0 && pipe(up) == 0);
	f->pid = fork();
	ASSERT(f->pid >= 0);
	if (f->pid == 0) {
		for (unsigned i = 0; i < fake_agent_n; i++)
			close(fake_agent_cmds[i]);
		close(cmd[1]);
		close(up[0]);
		if (uid && (setresgid(uid, uid, uid) || setresuid(uid, uid, uid)))
			_exit(7);
		fake_agent_run(t, cmd[0], up[1]);
	}
	fake_agent_cmds[fake_agent_n++] = cmd[1];
	close(cmd[0]);
	close(up[1]);
	f->cmd = cmd[1];
	f->up = up[0];
	ASSERT_EQ(read(f->up, &b, 1), 1);
	ASSERT_EQ(b, 'r');
}

static void fake_agent_start(const struct tdaemon *t, struct fake_agent *f)
{
	fake_agent_start_as(t, f, 0);
}

/* The next CONTROL's op it said, within ms; 0 if none. */
static char fake_agent_got(struct fake_agent *f, int ms)
{
	struct pollfd p = { .fd = f->up, .events = POLLIN };
	char b = 0;
	if (poll(&p, 1, ms) == 1 && read(f->up, &b, 1) != 1)
		b = 0;
	return b;
}

static void fake_agent_tell(struct fake_agent *f, char what)
{
	ASSERT_EQ(write(f->cmd, &what, 1), 1);
}

/* Makes it go (if it has not), and checks it exited well. */
static void fake_agent_end(struct fake_agent *f)
{
	for (unsigned i = 0; i < fake_agent_n; i++)
		if (fake_agent_cmds[i] == f->cmd)
			fake_agent_cmds[i] = fake_agent_cmds[--fake_agent_n];
	if (f->cmd >= 0)
		close(f->cmd);
	f->cmd = -1;
	int st;
	ASSERT_EQ(waitpid(f->pid, &st, 0), f->pid);
	close(f->up);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
}

/* The rate is shared by the agents that scan: one that memdedupd holds
 * paused (a PAUSE of it, an UNMERGE until its refusal, the default pause
 * unless a RESUME by pid lifted it) or whose REPORT said it stopped for good
 * takes no part, and takes it back as it resumes. A paused agent's part
 * went unused: the other scanned half the rate set for all. */
TEST_IMPL(daemon_share_leaves_paused_agents)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	int fd;

	td_start(&t, 16);
	struct fake_agent o;
	fake_agent_start(&t, &o);
	pid_t kid = o.pid;
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 2);
	/* Paused by pid, then resumed. */
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, kid, NULL, NULL, NULL), 0);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);
	ASSERT_EQ(control(cli, MD_CTL_RESUME, kid, NULL, NULL, NULL), 0);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 2);
	/* Unmerging, then refused: it scans again. */
	control_start(&k, cli, MD_CTL_UNMERGE, kid, NULL, NULL);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);
	fake_agent_tell(&o, 'r');
	ASSERT_EQ(control_end(&k), -ENOMEM);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 2);
	/* The default pause (this agent answers too): each is told the part
	 * it would have alone, and each resumed by pid scans its part. */
	control_start(&k, cli, MD_CTL_PAUSE, 0, NULL, NULL);
	next_control(c, &ctl);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), 0);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);
	control_start(&k, cli, MD_CTL_RESUME, getpid(), NULL, NULL);
	next_control(c, &ctl);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), 0);
	ASSERT_EQ(control(cli, MD_CTL_RESUME, kid, NULL, NULL, NULL), 0);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 2);
	control_start(&k, cli, MD_CTL_RESUME, 0, NULL, NULL);
	next_control(c, &ctl);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), 0);
	ASSERT_EQ(lookup_caught_up(c), 0);	/* a SHARE of that pass came before its answer */
	ASSERT_EQ(md__client_share(c), MD_SHARE_ALL / 2);
	/* An UNMERGE queued behind another's takes its agent's part when
	 * its turn comes, not when the request came (nor never). */
	struct fake_agent o2;
	struct control_call k2;
	fake_agent_start(&t, &o2);
	struct md__client *cli2 = td_connect(&t);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 3);
	while (fake_agent_got(&o, 0))	/* the controls before */
		;
	control_start(&k, cli, MD_CTL_UNMERGE, kid, NULL, NULL);
	ASSERT_EQ(fake_agent_got(&o, 2000), 'U');
	control_start(&k2, cli2, MD_CTL_UNMERGE, o2.pid, NULL, NULL);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 2);
	ASSERT_EQ(fake_agent_got(&o2, 200), 0);	/* its turn not come */
	fake_agent_tell(&o, 'a');
	ASSERT_EQ(control_end(&k), 0);
	ASSERT_EQ(fake_agent_got(&o2, 2000), 'U');
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);
	fake_agent_tell(&o2, 'r');
	ASSERT_EQ(control_end(&k2), -ENOMEM);
	ASSERT_EQ(control(cli, MD_CTL_RESUME, kid, NULL, NULL, NULL), 0);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 3);
	fake_agent_end(&o2);
	md__client_free(cli2);
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 2);
	/* Stopped for good, as its REPORT says. */
	fake_agent_tell(&o, 's');
	POLL_UNTIL(c, md__client_share(c) == MD_SHARE_ALL / 1);
	fake_agent_end(&o);
	md__client_free(cli);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* An agent that never answers: the CLI hears so at the deadline (600 ms
 * here, a minute by default; then, not at the daemon's next second), named; the agent's late answer is dropped,
 * and its connection stays. A bad deadline is a usage error. */
TEST_IMPL(daemon_control_deadline)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	int fd;

	ASSERT_EQ(td_sh("MEMDEDUP_CONTROL_WAIT_MS=99 %s/memdedupd --foreground --run-dir %s/bad 2>%s/bad.err",
			build_dir(), test_dir(), test_dir()), 2);
	ASSERT_EQ(td_sh("grep -q 'MEMDEDUP_CONTROL_WAIT_MS must be' %s/bad.err", test_dir()), 0);
	td_start_waiting(&t, 16, 600);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	control_start(&k, cli, MD_CTL_PAUSE, getpid(), NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(control_end(&k), -ETIMEDOUT);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	/* Seen when it passed: the loop woke each second, and saw it then. */
	if (took >= 0.9)
		fprintf(stderr, "  answered after %.2f s\n", took);
	ASSERT(took >= 0.6 && took < 0.9);
	char want[64];
	snprintf(want, sizeof(want), "pid %d did not answer in 0.6 s", (int)getpid());
	ASSERT(strstr(k.text, want));
	ASSERT_EQ(md__client_control_done(agent, ctl.token, 0, NULL), 0);	/* too late */
	ASSERT_EQ(lookup_caught_up(agent), 0);	/* a request goes through after it */
	ASSERT(md__client_alive(agent));
	/* Two more agents that never answer, and this one that does: the
	 * first silent one named, and all three counted. */
	int ready[2], go[2];
	pid_t kid[2];
	char x;
	ASSERT(pipe(ready) == 0 && pipe(go) == 0);
	for (int i = 0; i < 2; i++) {
		kid[i] = fork();
		ASSERT(kid[i] >= 0);
		if (kid[i] == 0) {
			struct md__msg_welcome kw;
			int kfd;
			close(ready[0]);
			close(go[1]);
			struct md__client *silent = td_agent(&t, NULL, &kw, &kfd);
			if (write(ready[1], "r", 1) != 1 || read(go[0], &x, 1) != 0)
				_exit(1);
			md__client_free(silent);
			_exit(0);
		}
	}
	close(ready[1]);
	close(go[0]);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(read(ready[0], &x, 1), 1);
	control_start(&k, cli, MD_CTL_PAUSE, 0, NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), -ETIMEDOUT);
	ASSERT(strstr(k.text, "did not answer in 0.6 s"));
	ASSERT(strstr(k.text, "(done by 1 of 3 agents)"));
	close(go[1]);
	close(ready[0]);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(child_exit(kid[i]), 0);
	md__client_free(cli);
	md__client_free(agent);
	close(fd);
	td_stop(&t);
	return 0;
}

/* UNMERGE of all goes to one agent at a time, the next once the last
 * answered or went: each agent checks the memory for its copies against
 * what is left, and two checking at once both found room that was there
 * for one, copied together, and the OOM killer killed a VMM. */
TEST_IMPL(daemon_unmerge_one_agent_at_a_time)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	struct fake_agent o;
	int fd;

	td_start(&t, 16);
	fake_agent_start(&t, &o);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t);
	char want[MD_TEXT_MAX + 1];
	snprintf(want, sizeof(want), "pid %d: %s (done by 1 of 2 agents)", (int)o.pid, SHORT_OF_MEMORY);
	for (int round = 0; round < 2; round++) {
		/* Whichever comes first, the other hears of it only once the
		 * first answered: the second round's first goes away. */
		control_start(&k, cli, MD_CTL_UNMERGE, 0, NULL, NULL);
		usleep(300000);
		int kid_first = fake_agent_got(&o, 0) == 'U';
		int mine_first = md__client_next_control(c, &ctl) == 0;
		ASSERT(kid_first != mine_first);
		if (mine_first) {
			ASSERT_EQ(ctl.op, MD_CTL_UNMERGE);
			ASSERT_EQ(fake_agent_got(&o, 200), 0);	/* not yet */
			ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
			ASSERT_EQ(fake_agent_got(&o, 2000), 'U');
			if (round == 0)
				fake_agent_tell(&o, 'r');
			else
				fake_agent_end(&o);
		} else {
			ASSERT_EQ(md__client_next_control(c, &ctl), -EAGAIN);	/* not yet */
			if (round == 0)
				fake_agent_tell(&o, 'r');
			else
				fake_agent_end(&o);
			next_control(c, &ctl);
			ASSERT_EQ(ctl.op, MD_CTL_UNMERGE);
			ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
		}
		if (round == 0) {
			ASSERT_EQ(control_end(&k), -ENOMEM);
			if (!strstr(k.text, want))
				fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
			ASSERT(strstr(k.text, want));
		} else {
			ASSERT_EQ(control_end(&k), -ESRCH);
			ASSERT(strstr(k.text, "went away"));
			ASSERT(strstr(k.text, "(done by 1 of 2 agents)"));
		}
	}
	md__client_free(cli);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* UNMERGEs of separate requests (two users', or two of one user's) went to
 * their agents at once: each agent's memory check saw none of the other's
 * copies, and both copying brought the cgroup's OOM killer back. One agent
 * copies at a time, daemon-wide: a later request's agents wait their turn
 * behind the earlier's, and a PAUSE of one still waiting takes it off (its
 * UNMERGE answered then, not after the earlier's). */
TEST_IMPL(daemon_unmerge_requests_one_agent_at_a_time)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k1, k2, k3;
	struct fake_agent o;
	int fd;

	td_start(&t, 16);
	fake_agent_start(&t, &o);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli1 = td_connect(&t), *cli2 = td_connect(&t), *cli3 = td_connect(&t);
	control_start(&k1, cli1, MD_CTL_UNMERGE, o.pid, NULL, NULL);
	ASSERT_EQ(fake_agent_got(&o, 2000), 'U');
	control_start(&k2, cli2, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	usleep(300000);
	ASSERT_EQ(md__client_next_control(c, &ctl), -EAGAIN);	/* the other still copies */
	fake_agent_tell(&o, 'a');
	ASSERT_EQ(control_end(&k1), 0);
	next_control(c, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_UNMERGE);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k2), 0);
	ASSERT(strcmp(k2.text, "unmerge done by 1 agent") == 0);

	control_start(&k1, cli1, MD_CTL_UNMERGE, o.pid, NULL, NULL);
	ASSERT_EQ(fake_agent_got(&o, 2000), 'U');
	control_start(&k2, cli2, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	usleep(200000);
	control_start(&k3, cli3, MD_CTL_PAUSE, getpid(), NULL, NULL);
	next_control(c, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_PAUSE);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k3), 0);
	ASSERT_EQ(control_end(&k2), 0);
	if (strcmp(k2.text, "unmerge done by 0 agents; 1 not sent it, paused or resumed since"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k2.text);
	ASSERT(strcmp(k2.text, "unmerge done by 0 agents; 1 not sent it, paused or resumed since") == 0);
	fake_agent_tell(&o, 'a');
	ASSERT_EQ(control_end(&k1), 0);
	usleep(200000);
	ASSERT_EQ(md__client_next_control(c, &ctl), -EAGAIN);	/* never sent it */
	fake_agent_end(&o);
	md__client_free(cli3);
	md__client_free(cli2);
	md__client_free(cli1);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* The one of agents (0..n-1: a fake one, n: c) sent an UNMERGE next, within
 * 2 s; its token in *token when it is c. */
static int unmerge_turn(struct fake_agent *f, int n, struct md__client *c, uint32_t *token)
{
	struct md__msg_control ctl;
	for (int i = 0; i < 400; i++) {
		for (int j = 0; j < n; j++)
			if (fake_agent_got(&f[j], 0) == 'U')
				return j;
		if (c && md__client_next_control(c, &ctl) == 0 && ctl.op == MD_CTL_UNMERGE) {
			*token = ctl.token;
			return n;
		}
		usleep(5000);
	}
	ASSERT(!"no agent was sent the UNMERGE");
	return -1;
}

/* Agents that each take most of the deadline to unmerge, one after
 * another: the request's one deadline passed before the last one's turn,
 * which was not sent it. Each agent's turn has the deadline to itself, and
 * a CLI that asks (MD_CONTROL_NOTICES, as memdedup's) is told each turn and
 * waits its own time again from it (700 ms here, the whole taking more). */
TEST_IMPL(daemon_unmerge_deadline_per_agent)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct control_call k;
	struct fake_agent o[2];
	int fd;

	td_start_waiting(&t, 16, 600);
	for (int i = 0; i < 2; i++)
		fake_agent_start(&t, &o[i]);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t);
	md__client_set_timeout(cli, 700);
	control_start_token(&k, cli, MD_CTL_UNMERGE, 0, NULL, NULL, MD_CONTROL_NOTICES);
	for (int turn = 0; turn < 3; turn++) {
		uint32_t token = 0;
		int who = unmerge_turn(o, 2, c, &token);
		usleep(400000);
		if (who < 2)
			fake_agent_tell(&o[who], 'a');
		else
			ASSERT_EQ(md__client_control_done(c, token, 0, NULL), 0);
	}
	ASSERT_EQ(control_end(&k), 0);
	if (strcmp(k.text, "unmerge done by 3 agents"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strcmp(k.text, "unmerge done by 3 agents") == 0);
	for (int i = 0; i < 2; i++)
		fake_agent_end(&o[i]);
	md__client_free(cli);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* An UNMERGE whose first agent did not answer in time is answered then,
 * the agents still queued behind it not sent it: each of those is counted
 * in the answer too ("done by 0 of 3 agents"), as it was matched and not
 * done. Counted were only those sent it ("of 1 agent"). */
TEST_IMPL(daemon_unmerge_timeout_counts_unsent)
{
	struct tdaemon t;
	struct control_call k;
	struct fake_agent o[3];
	uint32_t token;

	td_start_waiting(&t, 16, 600);
	for (int i = 0; i < 3; i++)
		fake_agent_start(&t, &o[i]);
	struct md__client *cli = td_connect(&t);
	md__client_set_timeout(cli, 5000);
	control_start(&k, cli, MD_CTL_UNMERGE, 0, NULL, NULL);
	int first = unmerge_turn(o, 3, NULL, &token);
	ASSERT_EQ(control_end(&k), -ETIMEDOUT);
	if (!strstr(k.text, "2 more not sent it") || !strstr(k.text, "(done by 0 of 3 agents)"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strstr(k.text, "2 more not sent it"));
	ASSERT(strstr(k.text, "(done by 0 of 3 agents)"));
	for (int i = 0; i < 3; i++)
		if (i != first)
			ASSERT_EQ(fake_agent_got(&o[i], 0), 0);
	for (int i = 0; i < 3; i++)
		fake_agent_end(&o[i]);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

/* Every agent an UNMERGE matched is in the answer: one that exited while
 * it waited its turn was in no count ("done by 1 agent" of 2), and the
 * daemon's log said "sent to 1 of 0 agents" of one it could not send. */
TEST_IMPL(daemon_unmerge_counts_agents_gone)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	struct fake_agent o[2];
	char text[MD_TEXT_MAX + 1];
	uint32_t token;
	int fd;

	td_start(&t, 16);
	for (int i = 0; i < 2; i++)
		fake_agent_start(&t, &o[i]);
	struct md__client *cli = td_connect(&t);
	/* One copies; the other exits while it waits. */
	control_start(&k, cli, MD_CTL_UNMERGE, 0, NULL, NULL);
	int first = unmerge_turn(o, 2, NULL, &token);
	fake_agent_end(&o[!first]);
	usleep(300000);	/* the daemon sees it go */
	fake_agent_tell(&o[first], 'a');
	ASSERT_EQ(control_end(&k), 0);
	if (strcmp(k.text, "unmerge done by 1 agent; 1 exited before its turn"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strcmp(k.text, "unmerge done by 1 agent; 1 exited before its turn") == 0);
	fake_agent_end(&o[first]);
	/* A record kept (paused) without its connection: not sent it. */
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	control_start(&k, cli, MD_CTL_PAUSE, getpid(), NULL, NULL);
	next_control(c, &ctl);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), 0);
	md__client_free(c);
	close(fd);
	usleep(300000);
	ASSERT_EQ(control(cli, MD_CTL_UNMERGE, 0, NULL, NULL, text), -ENOTCONN);
	ASSERT(strstr(text, "(done by 0 of 1 agent)"));
	ASSERT(td_sh("grep -q 'unmerge for 1 agent, sent to one at a time' %s/log", t.dir) == 0);
	ASSERT(td_sh("grep -q ' of 0 agents' %s/log", t.dir) != 0);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

/* An agent whose connection closes while it waits its turn, its record
 * kept (paused), is not unmerged: the CLI hears at its turn that it is not
 * connected, not that it exited (which read as all done). */
TEST_IMPL(daemon_unmerge_agent_detached_before_turn)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	struct fake_agent o;
	uint32_t token;
	char want[96];
	int fd;

	td_start(&t, 16);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	fake_agent_start(&t, &o);	/* the newer record: its turn comes first */
	struct md__client *cli = td_connect(&t);
	control_start(&k, cli, MD_CTL_PAUSE, getpid(), NULL, NULL);
	next_control(c, &ctl);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), 0);
	control_start(&k, cli, MD_CTL_UNMERGE, 0, NULL, NULL);
	ASSERT_EQ(unmerge_turn(&o, 1, c, &token), 0);
	md__client_free(c);
	close(fd);
	usleep(300000);	/* the daemon sees it go */
	fake_agent_tell(&o, 'a');
	ASSERT_EQ(control_end(&k), -ENOTCONN);
	snprintf(want, sizeof(want), "pid %d is not connected", (int)getpid());
	if (!strstr(k.text, want) || !strstr(k.text, "(done by 1 of 2 agents)"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strstr(k.text, want) && strstr(k.text, "(done by 1 of 2 agents)"));
	fake_agent_end(&o);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

/* An agent waiting its turn behind another request's agent that does not
 * answer (a VMM stopped) exits: its request is answered then ("1 exited
 * before its turn"), not once the earlier agent's turn is over. */
TEST_IMPL(daemon_unmerge_queued_agent_exits)
{
	struct tdaemon t;
	struct control_call k1, k2;
	struct fake_agent o[2];

	td_start_waiting(&t, 16, 5000);
	for (int i = 0; i < 2; i++)
		fake_agent_start(&t, &o[i]);
	struct md__client *cli1 = td_connect(&t), *cli2 = td_connect(&t);
	md__client_set_timeout(cli1, 10000);
	md__client_set_timeout(cli2, 10000);
	control_start(&k1, cli1, MD_CTL_UNMERGE, o[0].pid, NULL, NULL);
	ASSERT_EQ(fake_agent_got(&o[0], 2000), 'U');
	control_start(&k2, cli2, MD_CTL_UNMERGE, o[1].pid, NULL, NULL);
	usleep(300000);
	ASSERT_EQ(fake_agent_got(&o[1], 0), 0);	/* queued behind o[0] */
	double t0 = now();
	fake_agent_end(&o[1]);
	ASSERT_EQ(control_end(&k2), 0);
	if (now() - t0 >= 2)
		fprintf(stderr, "  answered after %.2f s\n", now() - t0);
	ASSERT(now() - t0 < 2);
	if (strcmp(k2.text, "unmerge done by 0 agents; 1 exited before its turn"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k2.text);
	ASSERT(strcmp(k2.text, "unmerge done by 0 agents; 1 exited before its turn") == 0);
	fake_agent_tell(&o[0], 'a');
	ASSERT_EQ(control_end(&k1), 0);
	fake_agent_end(&o[0]);
	md__client_free(cli2);
	md__client_free(cli1);
	td_stop(&t);
	return 0;
}

/* The notice of an UNMERGE's turn goes to every CLI waiting with one: it
 * named the agent's pid, another user's agent too. It names none. */
TEST_IMPL(daemon_unmerge_notice_names_no_pid)
{
	struct tdaemon t;
	struct fake_agent o;
	struct md__msg m = { .hdr = { .type = MD_MSG_CONTROL, .seq = 1 } }, r;
	char pid[32];

	td_start(&t, 16);
	fake_agent_start(&t, &o);
	int fd = raw_connect(&t);
	m.u.control.op = MD_CTL_UNMERGE;
	m.u.control.pid = o.pid;
	m.u.control.token = MD_CONTROL_NOTICES;
	raw_send(fd, &m);
	ASSERT_EQ(fake_agent_got(&o, 2000), 'U');
	ASSERT_EQ(raw_next(fd, &r), MD_MSG_CONTROL_R);
	ASSERT_EQ(r.hdr.seq, 0);
	ASSERT_EQ(r.u.text.status, -EINPROGRESS);
	snprintf(pid, sizeof(pid), "%d", (int)o.pid);
	if (strstr(r.u.text.text, "pid") || strstr(r.u.text.text, pid))
		fprintf(stderr, "  the notice says '%s'\n", r.u.text.text);
	ASSERT(!strstr(r.u.text.text, "pid") && !strstr(r.u.text.text, pid));
	fake_agent_tell(&o, 'a');
	ASSERT_EQ(raw_next(fd, &r), MD_MSG_CONTROL_R);
	ASSERT_EQ(r.hdr.seq, 1);
	ASSERT_EQ(r.u.text.status, 0);
	close(fd);
	fake_agent_end(&o);
	td_stop(&t);
	return 0;
}

/* Sends an UNMERGE of o[0] (from c0, silent) then one of o[1] (from c1,
 * queued behind it), and waits for the first to pass its deadline. */
static void unmerge_times_out_before(struct control_call *k, struct md__client *c0, struct md__client *c1,
				     uint32_t token1, struct fake_agent *o)
{
	control_start(&k[0], c0, MD_CTL_UNMERGE, o[0].pid, NULL, NULL);
	ASSERT_EQ(fake_agent_got(&o[0], 2000), 'U');
	control_start_token(&k[1], c1, MD_CTL_UNMERGE, o[1].pid, NULL, NULL, token1);
	ASSERT_EQ(control_end(&k[0]), -ETIMEDOUT);
	ASSERT(strstr(k[0].text, "did not answer in 1.0 s"));
}

/* An agent's turn passed without its answer: it may still be copying, and
 * the next agent, sent its UNMERGE at once, checked its memory beside those
 * copies (the OOM killer the queue is there to keep away). The queue waits
 * until the late one answers, goes, or a second wait (1 s here) passes; a
 * CLI waiting with notices is told, and waits its own time again. */
TEST_IMPL(daemon_unmerge_held_after_timeout)
{
	struct tdaemon t;
	struct control_call k[2];
	struct fake_agent o[2];

	td_start_waiting(&t, 16, 1000);
	for (int i = 0; i < 2; i++)
		fake_agent_start(&t, &o[i]);
	struct md__client *cli0 = td_connect(&t), *cli1 = td_connect(&t);
	md__client_set_timeout(cli0, 10000);
	md__client_set_timeout(cli1, 10000);
	/* Its late answer lets the next go. */
	unmerge_times_out_before(k, cli0, cli1, 0, o);
	ASSERT_EQ(fake_agent_got(&o[1], 300), 0);
	fake_agent_tell(&o[0], 'a');
	ASSERT_EQ(fake_agent_got(&o[1], 400), 'U');
	fake_agent_tell(&o[1], 'a');
	ASSERT_EQ(control_end(&k[1]), 0);
	/* Silent, the second wait's end. Within 1.5 s of the first's end,
	 * the last notice: waiting 2 s for its turn, this CLI is told of the
	 * hold. */
	md__client_set_timeout(cli1, 1500);
	unmerge_times_out_before(k, cli0, cli1, MD_CONTROL_NOTICES, o);
	double t0 = now();
	ASSERT_EQ(fake_agent_got(&o[1], 700), 0);
	ASSERT_EQ(fake_agent_got(&o[1], 2000), 'U');
	if (now() - t0 < 0.9)
		fprintf(stderr, "  sent after %.2f s\n", now() - t0);
	ASSERT(now() - t0 >= 0.9);
	fake_agent_tell(&o[1], 'a');
	ASSERT_EQ(control_end(&k[1]), 0);
	ASSERT(strcmp(k[1].text, "unmerge done by 1 agent") == 0);
	/* Gone, it answers no more. */
	md__client_set_timeout(cli1, 10000);
	unmerge_times_out_before(k, cli0, cli1, 0, o);
	ASSERT_EQ(fake_agent_got(&o[1], 300), 0);
	fake_agent_end(&o[0]);
	ASSERT_EQ(fake_agent_got(&o[1], 400), 'U');
	fake_agent_tell(&o[1], 'a');
	ASSERT_EQ(control_end(&k[1]), 0);
	fake_agent_end(&o[1]);
	md__client_free(cli1);
	md__client_free(cli0);
	td_stop(&t);
	return 0;
}

/* A connection of uid's (SO_PEERCRED: the effective uid at connect). Its
 * seteuid is every thread's: made before threads of ours send on it. */
static struct md__client *connect_as(const struct tdaemon *t, uid_t uid)
{
	ASSERT(seteuid(uid) == 0);
	struct md__client *c = td_connect(t);
	ASSERT(seteuid(0) == 0);
	md__client_set_timeout(c, 10000);
	return c;
}

/* Turns went to the oldest request first, daemon-wide: one user's requests
 * over agents that never answer (a VMM stopped) held every other user's
 * for a wait each (16 requests of as many agents, a minute each). The uids
 * take turns: after a turn of one, each other uid waiting has one before
 * its next, in a round (uid 65534's second request after root's and 65533's,
 * which came later), each uid's requests oldest first. */
TEST_IMPL(daemon_unmerge_turns_between_users)
{
	struct tdaemon t;
	struct control_call k[4];
	struct fake_agent o[4];
	uid_t uid[4] = { 65534, 65534, 0, 65533 };
	uint32_t token;

	if (getuid() != 0)
		SKIP("needs root");
	td_start(&t, 16);
	struct md__client *cli[4];
	for (int i = 0; i < 4; i++) {
		fake_agent_start_as(&t, &o[i], uid[i]);
		cli[i] = connect_as(&t, uid[i]);
	}
	control_start(&k[0], cli[0], MD_CTL_UNMERGE, o[0].pid, NULL, NULL);
	ASSERT_EQ(fake_agent_got(&o[0], 2000), 'U');
	for (int i = 1; i < 4; i++) {
		control_start(&k[i], cli[i], MD_CTL_UNMERGE, o[i].pid, NULL, NULL);
		usleep(200000);	/* queued in this order */
	}
	for (int i = 1; i < 4; i++)
		ASSERT_EQ(fake_agent_got(&o[i], 0), 0);
	fake_agent_tell(&o[0], 'a');
	ASSERT_EQ(control_end(&k[0]), 0);
	int seen = 0;
	for (int turn = 0; turn < 3; turn++) {
		int who = 1 + unmerge_turn(o + 1, 3, NULL, &token);
		if (turn < 2 && who == 1)
			fprintf(stderr, "  uid 65534's second request had turn %d\n", turn + 2);
		ASSERT(turn == 2 || who != 1);
		ASSERT(!(seen & 1 << who));
		seen |= 1 << who;
		usleep(100000);
		for (int i = 1; i < 4; i++)
			ASSERT_EQ(fake_agent_got(&o[i], 0), 0);	/* one at a time */
		fake_agent_tell(&o[who], 'a');
		ASSERT_EQ(control_end(&k[who]), 0);
		ASSERT(strcmp(k[who].text, "unmerge done by 1 agent") == 0);
	}
	for (int i = 0; i < 4; i++) {
		fake_agent_end(&o[i]);
		md__client_free(cli[i]);
	}
	td_stop(&t);
	return 0;
}

/* Freed pool pages are punched once memdedupd has had a second without
 * messages (daemon_pool_trimmed_when_quiet), also beside an UNMERGE queue of an agent that does not answer, under
 * a MEMDEDUP_CONTROL_WAIT_MS below a second (300 ms): each turn's deadline,
 * and the hold after it, woke memdedupd before its quiet second was over,
 * and the pages stayed until the queue's end (8 turns, 4.8 s here). */
TEST_IMPL(daemon_pool_trimmed_beside_unmerge_queue)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	static unsigned char pages[8 * PG];
	uint64_t hash[8];
	uint32_t slots[8];
	struct control_call k[8];
	struct md__client *cli[8];
	int fd;

	td_start_waiting(&t, 64, 300);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	uint32_t first = publish(c, 300, 8, pages, hash);
	long long full = test_file_blocks(fd);
	ASSERT(full >= 8 * PG / 512);
	for (uint32_t i = 0; i < 8; i++)
		slots[i] = first + i;
	double t0 = now();
	for (int i = 0; i < 8; i++) {
		cli[i] = td_connect(&t);
		md__client_set_timeout(cli[i], 20000);
		control_start(&k[i], cli[i], MD_CTL_UNMERGE, getpid(), NULL, NULL);
	}
	usleep(100000);
	ASSERT_EQ(md__client_ref(c, slots, 8, -1), 0);	/* c never answers its UNMERGEs */
	while (test_file_blocks(fd) > 0 && now() - t0 < 10)
		usleep(20000);
	double took = now() - t0;
	if (took >= 3.5)
		fprintf(stderr, "  punched after %.2f s\n", took);
	ASSERT(took < 3.5);
	ASSERT_EQ(test_file_blocks(fd), 0);
	for (int i = 0; i < 8; i++) {
		ASSERT_EQ(control_end(&k[i]), -ETIMEDOUT);
		md__client_free(cli[i]);
	}
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* A RESUME of all while an UNMERGE's queue runs: the agent still queued
 * got the RESUME, then the UNMERGE, and ended unmerged and paused, the
 * opposite of the later command. The later command wins: the queued agent
 * is not sent the UNMERGE. */
TEST_IMPL(daemon_resume_supersedes_queued_unmerge)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k, r;
	struct fake_agent o;
	int fd;

	td_start(&t, 16);
	fake_agent_start(&t, &o);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t), *cli2 = td_connect(&t);
	control_start(&k, cli, MD_CTL_UNMERGE, 0, NULL, NULL);
	usleep(300000);
	int kid_first = fake_agent_got(&o, 0) == 'U';
	int mine_first = md__client_next_control(c, &ctl) == 0;
	ASSERT(kid_first != mine_first);
	uint32_t unmerge = ctl.token;
	/* The first holds its answer; a RESUME of all reaches both. */
	control_start(&r, cli2, MD_CTL_RESUME, 0, NULL, NULL);
	next_control(c, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_RESUME);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);
	ASSERT_EQ(fake_agent_got(&o, 2000), 'R');
	ASSERT_EQ(control_end(&r), 0);
	ASSERT(strstr(r.text, "done by 2 agents"));
	/* Now the first answers the UNMERGE: the second is not sent it. */
	if (mine_first)
		ASSERT_EQ(md__client_control_done(c, unmerge, 0, NULL), 0);
	else
		fake_agent_tell(&o, 'a');
	usleep(300000);
	if (mine_first)
		ASSERT_EQ(fake_agent_got(&o, 0), 0);
	else
		ASSERT_EQ(md__client_next_control(c, &ctl), -EAGAIN);
	ASSERT_EQ(control_end(&k), 0);
	if (!strstr(k.text, "done by 1 agent; 1 not sent it, paused or resumed since"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strstr(k.text, "done by 1 agent; 1 not sent it, paused or resumed since"));
	fake_agent_end(&o);
	md__client_free(cli2);
	md__client_free(cli);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* A refusal's reason reaches the CLI whole when it fits, and cut at a
 * word, said with "...", when it does not: it was cut at 100 bytes,
 * mid-word. */
TEST_IMPL(daemon_refusal_reason_whole)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	char want[MD_TEXT_MAX + 1], longer[MD_TEXT_MAX + 1] = "";
	int fd;

	td_start(&t, 16);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t);
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, -ENOMEM, SHORT_OF_MEMORY), 0);
	ASSERT_EQ(control_end(&k), -ENOMEM);
	snprintf(want, sizeof(want), "unmerge: pid %d: %s (done by 0 of 1 agent)", (int)getpid(), SHORT_OF_MEMORY);
	if (strcmp(k.text, want) != 0)
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strcmp(k.text, want) == 0);
	/* As long as a reason may be: cut after a whole word. */
	while (strlen(longer) + 8 < MD_TEXT_MAX)
		strcat(longer, "abcdefg ");
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, -ENOMEM, longer), 0);
	ASSERT_EQ(control_end(&k), -ENOMEM);
	ASSERT(strlen(k.text) <= MD_TEXT_MAX);
	ASSERT(strstr(k.text, " abcdefg... (done by 0 of 1 agent)"));
	/* At the bound: a reason that just fits is whole, one a byte longer
	 * is cut, and the count after it stays whole either way. */
	char head[64], tail[] = " (done by 0 of 1 agent)", reason[MD_TEXT_MAX + 1];
	snprintf(head, sizeof(head), "unmerge: pid %d: ", (int)getpid());
	for (size_t over = 0; over < 2; over++) {
		size_t n = MD_TEXT_MAX - strlen(head) - strlen(tail) + over;
		snprintf(reason, n + 1, "%s", longer);
		control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
		next_control(agent, &ctl);
		ASSERT_EQ(md__client_control_done(agent, ctl.token, -ENOMEM, reason), 0);
		ASSERT_EQ(control_end(&k), -ENOMEM);
		size_t len = strlen(k.text);
		if (over)
			snprintf(want, sizeof(want), "...%s", tail);
		else
			ASSERT(snprintf(want, sizeof(want), "%s%s%s", head, reason, tail) < (int)sizeof(want));
		if (len < strlen(want) || strcmp(k.text + len - strlen(want), want) != 0)
			fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
		ASSERT(len >= strlen(want) && strcmp(k.text + len - strlen(want), want) == 0);
		ASSERT(len <= MD_TEXT_MAX);
	}
	md__client_free(cli);
	md__client_free(agent);
	close(fd);
	td_stop(&t);
	return 0;
}

/* Of several failures, the CLI hears the first's reason and status: an
 * agent's refusal, not the timeout of the one sent it after. */
TEST_IMPL(daemon_control_first_failure_said)
{
	struct tdaemon t;
	struct control_call k;
	struct fake_agent o[2];

	td_start_waiting(&t, 16, 500);
	for (int i = 0; i < 2; i++)
		fake_agent_start(&t, &o[i]);
	struct md__client *cli = td_connect(&t);
	control_start(&k, cli, MD_CTL_UNMERGE, 0, NULL, NULL);
	int first = unmerge_turn(o, 2, NULL, NULL);
	fake_agent_tell(&o[first], 'r');
	ASSERT_EQ(fake_agent_got(&o[!first], 2000), 'U');	/* never answered */
	ASSERT_EQ(control_end(&k), -ENOMEM);
	if (!strstr(k.text, SHORT_OF_MEMORY) || !strstr(k.text, "(done by 0 of 2 agents)"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strstr(k.text, SHORT_OF_MEMORY) && strstr(k.text, "(done by 0 of 2 agents)"));
	for (int i = 0; i < 2; i++)
		fake_agent_end(&o[i]);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_late_unmerge_refusal)
{
	/* An agent that refuses an UNMERGE after the daemon stopped waiting
	 * is as it was: merged, and not paused when it comes back. */
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	int fd;

	td_start_waiting(&t, 16, 300);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	ASSERT(!(w.state & MD_WELCOME_PAUSED));
	struct md__client *cli = td_connect(&t);
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_UNMERGE);
	ASSERT_EQ(control_end(&k), -ETIMEDOUT);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, -ENOMEM, "not enough memory"), 0);
	ASSERT_EQ(lookup_caught_up(agent), 0);
	md__client_free(agent);
	close(fd);
	usleep(100000);
	agent = td_agent(&t, NULL, &w, &fd);
	ASSERT(!(w.state & MD_WELCOME_PAUSED));
	md__client_free(agent);
	close(fd);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

/* An agent answers an UNMERGE late, done, after a second one was sent it
 * (once the hold after the first's turn was over), and refuses that one:
 * the first's copies were made, so it stays unmerged and paused. */
TEST_IMPL(daemon_late_unmerge_done_outlives_refusal)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control first, second;
	struct control_call k;
	int fd;

	td_start_waiting(&t, 16, 300);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t);
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &first);
	ASSERT_EQ(control_end(&k), -ETIMEDOUT);
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &second);
	ASSERT(second.token != first.token);
	ASSERT_EQ(md__client_control_done(agent, first.token, 0, NULL), 0);
	ASSERT_EQ(md__client_control_done(agent, second.token, -ENOMEM, "not enough memory"), 0);
	ASSERT_EQ(control_end(&k), -ENOMEM);
	json_t *st = td_status(&t);
	json_t *a = json_array_get(json_object_get(st, "agents"), 0);
	ASSERT_EQ(td_int(a, "pid"), getpid());
	ASSERT(json_is_true(json_object_get(a, "unmerged")));
	ASSERT(json_is_true(json_object_get(a, "paused")));
	json_decref(st);
	md__client_free(agent);
	close(fd);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

/* An agent's CONTROL_DONE (an UNMERGE refused) sent to a daemon stopped,
 * and its connection given up before the daemon read it: the daemon takes
 * no request of a peer that hung up (it reads no reply), but how the
 * CONTROL went is applied all the same. Dropped, the CLI was told the
 * agent went away without answering, and the agent's next WELCOME paused
 * it as if it had unmerged. */
TEST_IMPL(daemon_hung_up_control_done_applied)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	int fd;

	td_start(&t, 16);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t);
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_UNMERGE);
	md__client_set_timeout(agent, 300);
	td_pause(&t);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, -ENOMEM, "not enough memory"), 0);	/* sent */
	md__client_free(agent);
	close(fd);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	ASSERT_EQ(control_end(&k), -ENOMEM);
	if (!strstr(k.text, "not enough memory"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strstr(k.text, "not enough memory"));
	agent = td_agent(&t, NULL, &w, &fd);
	ASSERT(!(w.state & MD_WELCOME_PAUSED));
	md__client_free(agent);
	close(fd);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

/* An UNMERGE that went through, then another the agent refused (memory
 * short, or the VMM's own unmerge running): the refusal puts back what it
 * found, so the agent stays paused by the first. It was cleared, and the
 * agent's next WELCOME let it merge again with no RESUME. */
TEST_IMPL(daemon_second_unmerge_refused_keeps_pause)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	int fd;

	td_start(&t, 16);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli = td_connect(&t);
	int status[2] = { 0, -ENOMEM };
	for (int i = 0; i < 2; i++) {
		control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
		next_control(agent, &ctl);
		ASSERT_EQ(ctl.op, MD_CTL_UNMERGE);
		ASSERT_EQ(md__client_control_done(agent, ctl.token, status[i], status[i] ? "short" : NULL), 0);
		ASSERT_EQ(control_end(&k), status[i]);
	}
	md__client_free(agent);
	close(fd);
	usleep(100000);
	agent = td_agent(&t, NULL, &w, &fd);
	ASSERT(w.state & MD_WELCOME_PAUSED);
	md__client_free(agent);
	close(fd);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

/* Whether this process's agent, gone and back, is told to stay paused. */
static int rejoins_paused(struct tdaemon *t, struct md__client **agent, int *fd)
{
	struct md__msg_welcome w;
	md__client_free(*agent);
	close(*fd);
	usleep(100000);
	*agent = td_agent(t, NULL, &w, fd);
	return (w.state & MD_WELCOME_PAUSED) != 0;
}

/* Two UNMERGEs in flight (two CLIs; the second sent once the first's
 * deadline passed), both refused: the second's copy of
 * the state before it was the first's mark, no unmerge, and its refusal
 * put that back: paused at the next WELCOME though nothing was unmerged.
 * And an UNMERGE that went through, a second one sent, a RESUME from
 * another CLI, then the second's refusal: it put back the pause the
 * RESUME had lifted. Found by the review of the session's diff. */
TEST_IMPL(daemon_unmerge_refusals_put_back_only_theirs)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control c1, c2, c3;
	struct control_call k1, k2, k3;
	int fd;

	td_start_waiting(&t, 16, 500);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	struct md__client *cli1 = td_connect(&t), *cli2 = td_connect(&t);
	control_start(&k1, cli1, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &c1);
	control_start(&k2, cli2, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	ASSERT_EQ(control_end(&k1), -ETIMEDOUT);
	next_control(agent, &c2);
	ASSERT_EQ(md__client_control_done(agent, c1.token, -ENOMEM, "short"), 0);
	ASSERT_EQ(md__client_control_done(agent, c2.token, -ENOMEM, "short"), 0);
	ASSERT_EQ(control_end(&k2), -ENOMEM);
	ASSERT(!rejoins_paused(&t, &agent, &fd));

	control_start(&k1, cli1, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &c1);
	ASSERT_EQ(md__client_control_done(agent, c1.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k1), 0);
	control_start(&k2, cli1, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &c2);
	control_start(&k3, cli2, MD_CTL_RESUME, getpid(), NULL, NULL);
	next_control(agent, &c3);
	ASSERT_EQ(c3.op, MD_CTL_RESUME);
	ASSERT_EQ(md__client_control_done(agent, c3.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k3), 0);
	ASSERT_EQ(md__client_control_done(agent, c2.token, -ENOMEM, "short"), 0);
	ASSERT_EQ(control_end(&k2), -ENOMEM);
	ASSERT(!rejoins_paused(&t, &agent, &fd));
	md__client_free(agent);
	close(fd);
	md__client_free(cli1);
	md__client_free(cli2);
	td_stop(&t);
	return 0;
}

/* CONTROLs that reach no agent, answered at once, and domains made and
 * dropped, in a loop: any user may send them, and the daemon's lines about
 * them are limited in rate as those about bad peers are. */
TEST_IMPL(daemon_control_log_bounded)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	char log[400], text[MD_TEXT_MAX + 1], dom[32];
	int fd;

	td_start(&t, 16);
	snprintf(log, sizeof(log), "%s/log", t.dir);
	off_t before = file_size(log);
	ASSERT(before >= 0);
	struct md__client *cli = td_connect(&t);
	for (int i = 0; i < 6000; i++)
		ASSERT_EQ(control(cli, MD_CTL_RESUME, 0, NULL, NULL, text), 0);
	for (int i = 0; i < 1000; i++) {
		snprintf(dom, sizeof(dom), "churn%d", i);
		struct md__client *c = td_agent(&t, dom, &w, &fd);
		md__client_free(c);
		close(fd);
	}
	md__client_free(cli);
	usleep(100000);
	off_t grown = file_size(log) - before;
	printf("  log grew %lld bytes for 6000 CONTROLs and 1000 domains\n", (long long)grown);
	ASSERT(grown > 0);
	ASSERT(grown < 200 * 1024);	/* two lines each, about 60 bytes: 720 KB and more */
	ASSERT_EQ(td_sh("grep -q 'lines about peers left out' %s", log), 0);
	td_stop(&t);
	return 0;
}

/* One STATUS page. */
static int status_req(struct md__client *c, char *buf)
{
	struct md__msg m = { .hdr.type = MD_MSG_STATUS };
	unsigned char req[MD_MSG_HDR_SIZE + 8];
	uint32_t len = MD_MSG_MAX;
	unsigned type;
	ssize_t n = md__msg_encode(&m, req, sizeof(req));
	ASSERT(n > 0);
	int err = md__client_request(c, MD_MSG_STATUS, req + MD_MSG_HDR_SIZE, (uint32_t)n - MD_MSG_HDR_SIZE,
				     buf, &len, &type);
	if (err || type == MD_MSG_STATUS_R)
		return err;
	static struct md__msg r;
	ASSERT_EQ(type, MD_MSG_ERROR);
	ASSERT_EQ(md__msg_decode_payload(type, buf, len, &r), 0);
	return r.u.text.status;
}

/* STATUS documents built for a user other than root are limited in bytes
 * a second (each counts 4 KiB at least; MEMDEDUP_STATUS_KB_PER_S): one
 * user asking for them in a loop held every other peer for seconds. Past
 * the limit it is answered EAGAIN, root is not held, and a second later it
 * is answered again. */
TEST_IMPL(daemon_status_limited_per_user)
{
	if (geteuid() != 0)
		SKIP("needs root: the requester becomes another user");
	struct tdaemon t;
	int go[2], done[2];
	setenv("MEMDEDUP_STATUS_KB_PER_S", "64", 1);	/* 16 small pages a second */
	td_start(&t, 16);
	unsetenv("MEMDEDUP_STATUS_KB_PER_S");
	ASSERT(pipe(go) == 0 && pipe(done) == 0);
	pid_t child = fork();
	ASSERT(child >= 0);
	if (child == 0) {
		static char buf[MD_MSG_MAX];
		char x = 0;
		int ok = 0, again = 0, other = 0, last = 0;
		if (setgid(65534) != 0 || setuid(65534) != 0)
			_exit(100);
		struct md__client *c = td_connect(&t);
		for (int i = 0; i < 200; i++) {
			int err = status_req(c, buf);
			ok += err == 0, again += err == -EAGAIN, other += err && err != -EAGAIN;
			last = err && err != -EAGAIN ? err : last;
		}
		if (write(done[1], &x, 1) != 1 || read(go[0], &x, 1) != 1)
			_exit(101);
		usleep(1100000);
		int later = status_req(c, buf);
		md__client_free(c);
		fprintf(stderr, "  uid 65534: %d answered, %d EAGAIN, %d other (%d); a second later %d\n", ok, again, other, last,
		       later);
		_exit(other ? 150 + (-last & 63) : again < 100 || ok < 16 || ok > 100 ? 103 : later ? 104 : 0);
	}
	char x = 0;
	close(done[1]);	/* a child that failed early closes the pipe */
	ASSERT_EQ(read(done[0], &x, 1), 1);
	/* Root's, at once, and as many: root is not limited. */
	static char rbuf[MD_MSG_MAX];
	struct md__client *rc = td_connect(&t);
	for (int i = 0; i < 200; i++)
		ASSERT_EQ(status_req(rc, rbuf), 0);
	md__client_free(rc);
	ASSERT_EQ(write(go[1], &x, 1), 1);
	int status;
	ASSERT_EQ(waitpid(child, &status, 0), child);
	ASSERT(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	td_stop(&t);
	return 0;
}

/* The token buckets (STATUS bytes, log lines about peers) earn rate
 * tokens a second, whole tokens only: the time of a part token counts
 * toward the next. Taken as spent, a refill 150 ms on at 7 a second
 * earned 1 and lost 8 ms: polled every 150 ms the rate was 6.7, at 20 a
 * second every 70 ms, 14. Never past burst, and full it restarts. */
TEST_IMPL(daemon_bucket_keeps_part_tokens)
{
	int64_t start = md__now_ms() - 150;
	struct md__bucket b = { 0, start };
	int64_t got = md__bucket_refill(&b, 7, 100);
	ASSERT(got >= 1 && got < 100);
	ASSERT_EQ(b.tokens, got);
	ASSERT_EQ(b.at_ms, start + got * 1000 / 7);
	b = (struct md__bucket){ 95, md__now_ms() - 36000000 };	/* ten hours on */
	ASSERT_EQ(md__bucket_refill(&b, 7, 100), 100);
	ASSERT(md__now_ms() - b.at_ms < 1000);
	b = (struct md__bucket){ -3, start };
	ASSERT_EQ(md__bucket_refill(&b, 0, 100), -3);			/* no rate: nothing earned */
	return 0;
}

TEST_IMPL(daemon_control)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	char text[MD_TEXT_MAX + 1];
	int fd;

	td_start(&t, 16);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	ASSERT_EQ(w.tun.pages_to_scan, 100);
	ASSERT_EQ(w.state, 0);
	struct md__client *cli = td_connect(&t);

	/* Refused before anything is sent. */
	ASSERT_EQ(control(cli, MD_CTL_SET, 0, "pages", "5", text), -EINVAL);
	ASSERT(strstr(text, "unknown key"));
	ASSERT_EQ(control(cli, MD_CTL_SET, 0, "pages_to_scan", "0", text), -EINVAL);
	ASSERT_EQ(control(cli, MD_CTL_SET, 0, "order", "up", text), -EINVAL);
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, 999999, NULL, NULL, text), -ESRCH);
	usleep(50000);
	ASSERT_EQ(md__client_next_control(agent, &ctl), -EAGAIN);

	/* A good one reaches the agent, queued while it waits for a reply
	 * of its own; the CLI has its answer once the agent said it is done. */
	control_start(&k, cli, MD_CTL_SET, 0, "pages_to_scan", "500");
	usleep(100000);
	uint64_t h = 3;
	uint32_t s;
	ASSERT_EQ(md__client_lookup(agent, &h, NULL, 1, &s), 0);
	next_control(agent, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_SET);
	ASSERT_EQ(strcmp(ctl.key, "pages_to_scan"), 0);
	ASSERT_EQ(strcmp(ctl.value, "500"), 0);
	ASSERT_EQ(ctl.pid, getpid());	/* always: it did not ask (MD_HELLO_CONTROL_PID) */
	ASSERT_EQ(md__client_control_done(agent, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), 0);
	ASSERT(strstr(k.text, "done by 1 agent"));
	/* An agent that refuses: the CLI hears which and why. */
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_UNMERGE);
	/* An answer nobody waits for (a token never given) is acknowledged
	 * and changes nothing. */
	ASSERT_EQ(md__client_control_done(agent, ctl.token + 1000, 0, NULL), 0);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, -ENOMEM, "not enough memory for the copies"), 0);
	ASSERT_EQ(control_end(&k), -ENOMEM);
	char want[64];
	snprintf(want, sizeof(want), "pid %d: not enough memory", (int)getpid());
	ASSERT(strstr(k.text, want));
	ASSERT(strstr(k.text, "done by 0 of 1 agent"));
	ASSERT(md__client_alive(agent));
	/* A refusal's errno is EEXIST, a SET's "keeps its own value": of
	 * another command it is a refusal still, not counted as kept. */
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, MD_CTL_KEPT_OWN, "exists"), 0);
	ASSERT_EQ(control_end(&k), MD_CTL_KEPT_OWN);
	ASSERT(strstr(k.text, "done by 0 of 1 agent"));
	/* An unmerge done is remembered: the agent's record outlives its
	 * connection (it holds no reference), and its WELCOME says paused
	 * until a resume, also one that came while it was away. */
	control_start(&k, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), 0);
	for (int round = 0; round < 2; round++) {
		md__client_free(agent);
		close(fd);
		for (int i = 0; i < 200 && agents_connected(&t); i++)
			usleep(20000);	/* the daemon sees it go */
		ASSERT_EQ(agents_connected(&t), 0);
		if (round)
			ASSERT_EQ(control(cli, MD_CTL_RESUME, 0, NULL, NULL, text), 0);
		agent = td_agent(&t, NULL, &w, &fd);
		ASSERT_EQ(!(w.state & MD_WELCOME_PAUSED), round);
	}
	if (strcmp(text, "resume done by 0 agents; 1 not connected now gets it when back"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", text);
	ASSERT(strcmp(text, "resume done by 0 agents; 1 not connected now gets it when back") == 0);
	/* One CONTROL at a time per connection: a request sent behind one
	 * still waiting for its agent is answered after it, in order. */
	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		unsigned char out[256], in[MD_MSG_HDR_SIZE + MD_MSG_MAX];
		struct md__msg m = { .hdr = { .type = MD_MSG_CONTROL, .seq = 1 } }, r;
		m.u.control.op = MD_CTL_PAUSE;
		ssize_t n1 = md__msg_encode(&m, out, sizeof(out));
		m = (struct md__msg){ .hdr = { .type = MD_MSG_STATUS, .seq = 2 } };
		ssize_t n2 = md__msg_encode(&m, out + n1, sizeof(out) - (size_t)n1);
		ASSERT(n1 > 0 && n2 > 0);
		int raw = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		td_sockaddr(&t, &sa);
		ASSERT(connect(raw, (struct sockaddr *)&sa, sizeof(sa)) == 0);
		ASSERT_EQ(send(raw, out, (size_t)(n1 + n2), MSG_NOSIGNAL), n1 + n2);
		next_control(agent, &ctl);
		ASSERT_EQ(ctl.op, MD_CTL_PAUSE);
		usleep(100000);	/* the STATUS would have been answered by now */
		struct pollfd pf = { raw, POLLIN, 0 };
		ASSERT_EQ(poll(&pf, 1, 0), 0);
		ASSERT_EQ(md__client_control_done(agent, ctl.token, 0, NULL), 0);
		for (uint32_t seq = 1; seq <= 2; seq++) {
			struct md__msg_hdr rh;
			ASSERT(recv(raw, in, MD_MSG_HDR_SIZE, MSG_WAITALL) == MD_MSG_HDR_SIZE);
			ASSERT_EQ(md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &rh), 0);
			ASSERT(recv(raw, in + MD_MSG_HDR_SIZE, rh.length, MSG_WAITALL) == (ssize_t)rh.length);
			ASSERT_EQ(md__msg_decode(in, MD_MSG_HDR_SIZE + rh.length, &r), 0);
			ASSERT_EQ(rh.seq, seq);
			ASSERT_EQ(rh.type, seq == 1 ? MD_MSG_CONTROL_R : MD_MSG_STATUS_R);
		}
		close(raw);
	}
	/* An agent that goes away before it answers. */
	control_start(&k, cli, MD_CTL_RESUME, 0, NULL, NULL);
	next_control(agent, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_RESUME);
	md__client_free(agent);
	ASSERT_EQ(control_end(&k), -ESRCH);
	ASSERT(strstr(k.text, "went away"));

	/* A new agent starts with the defaults as changed (pid 0 only);
	 * with no agent connected, the answer comes at once. */
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, 0, NULL, NULL, text), 0);
	ASSERT(strstr(text, "done by 0 agents"));
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__msg_welcome w2;
		int fd2;
		struct md__client *a2 = td_agent(&t, NULL, &w2, &fd2);
		(void)a2;
		_exit(w2.tun.pages_to_scan == 500 && w2.tun.order == MD_ORDER_LINEAR &&
		      (w2.state & MD_WELCOME_PAUSED) ? 0 : 1);
	}
	int st;
	ASSERT(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	json_t *js = td_status(&t);
	json_t *tun = json_object_get(json_object_get(js, "daemon"), "tunables");
	ASSERT_EQ(td_int(tun, "pages_to_scan"), 500);
	json_decref(js);
	md__client_free(cli);
	td_stop(&t);
	return 0;
}

/* A CONTROL's agents may answer in any order: the first sent answering
 * first must not leave the daemon waiting for it still, and the others'
 * answers unheard (a timeout of agents that had all answered). */
TEST_IMPL(daemon_control_answers_in_any_order)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	struct fake_agent f;
	int fd;

	td_start_waiting(&t, 16, 3000);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	fake_agent_start(&t, &f);	/* the newest record: sent it first */
	struct md__client *cli = td_connect(&t);
	control_start(&k, cli, MD_CTL_PAUSE, 0, NULL, NULL);
	ASSERT_EQ(fake_agent_got(&f, 5000), 'P');
	usleep(200000);	/* its answer, sent at once, is in */
	next_control(agent, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_PAUSE);
	ASSERT_EQ(md__client_control_done(agent, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&k), 0);
	if (strcmp(k.text, "pause done by 2 agents"))
		fprintf(stderr, "  CONTROL_R says '%s'\n", k.text);
	ASSERT(strcmp(k.text, "pause done by 2 agents") == 0);
	fake_agent_end(&f);
	md__client_free(cli);
	md__client_free(agent);
	close(fd);
	td_stop(&t);
	return 0;
}


/* One CONTROL from a raw connection, beside the silent agent: 1 if the
 * agent was sent it (the CONTROL waits for its answer, which never comes),
 * 0 if the daemon refused it at once (-EUSERS, its text in why). The
 * connection closes either way, as a CLI that gives up would, unless
 * *keep: then it is left there (-1 if it closed). */
static int control_kept(const struct tdaemon *t, struct md__client *agent, unsigned op, char *why, int *keep);
static int control_and_close(const struct tdaemon *t, struct md__client *agent, unsigned op,
			     char *why)
{
	return control_kept(t, agent, op, why, NULL);
}

static int control_kept(const struct tdaemon *t, struct md__client *agent, unsigned op, char *why, int *keep)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct md__msg m = { .hdr = { .type = MD_MSG_CONTROL, .seq = 1 } }, r;
	unsigned char buf[256];
	struct md__msg_control ctl;
	int got = -1;

	m.u.control.op = op;
	size_t len = encode(&m, buf, sizeof(buf));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	td_sockaddr(t, &sa);
	ASSERT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	ASSERT(send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len);
	while (got < 0) {
		struct pollfd p[2] = { { fd, POLLIN, 0 }, { md__client_fd(agent), POLLIN, 0 } };
		int ready = poll(p, 2, keep ? 100 : 3000);
		if (!ready && keep) {
			got = 1;	/* waits for its turn, behind the UNMERGE sent */
			break;
		}
		ASSERT(ready > 0);
		if (p[0].revents) {
			struct md__msg_hdr h;
			td_read_all(fd, buf, MD_MSG_HDR_SIZE);
			ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), 0);
			ASSERT(h.length <= sizeof(buf) - MD_MSG_HDR_SIZE);
			td_read_all(fd, buf + MD_MSG_HDR_SIZE, h.length);
			ASSERT_EQ(md__msg_decode(buf, MD_MSG_HDR_SIZE + h.length, &r), 0);
			ASSERT_EQ(r.hdr.type, MD_MSG_CONTROL_R);
			ASSERT_EQ(r.u.text.status, -EUSERS);
			strcpy(why, r.u.text.text);
			got = 0;
		} else if (md__client_next_control(agent, &ctl) == 0) {
			ASSERT_EQ(ctl.op, op);
			got = 1;
		}
	}
	if (keep && got)
		*keep = fd;
	else
		close(fd);
	if (keep && !got)
		*keep = -1;
	return got;
}

/* Each CONTROL waiting for agents holds memory sized by every agent, and
 * was kept until its agents answered or a minute passed even once its
 * requester had gone: a user connecting, sending a CONTROL and closing in
 * a loop, beside an agent of its own that never answers, piled them up
 * without bound. Now one whose requester went is dropped at once unless
 * it is an UNMERGE (whose refusals still clear the agent's unmerged
 * state), and a user other than root has at most MD_D_CONTROLS_PER_UID
 * waiting: beyond, CONTROL_R -EUSERS, saying so. */
/* In a child: an agent of t's memdedupd in domain (NULL: the default;
 * ready said once it is), sent a CONTROL op, which it answers done, then
 * gone from the daemon. Exits 100 or 101 if a step fails. */
static void agent_answers_ops_then_goes(const struct tdaemon *t, const char *domain, const unsigned *ops, int n,
					int ready)
{
	struct md__client *agent;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	int fd = -1;
	char x = 0;
	if (md__client_open(&agent, t->sock, domain, 0, &w, &fd) != 0 || write(ready, &x, 1) != 1)
		_exit(100);
	for (int k = 0; k < n; k++) {
		int err = -EAGAIN;
		for (int i = 0; i < 400 && err == -EAGAIN; i++)
			if ((err = md__client_next_control(agent, &ctl)) == -EAGAIN)
				usleep(5000);
		if (err || ctl.op != ops[k] || md__client_control_done(agent, ctl.token, 0, NULL) != 0)
			_exit(101);
	}
	md__client_free(agent);
	close(fd);
	usleep(200000);	/* the daemon sees it go */
}

static void agent_answers_then_goes(const struct tdaemon *t, const char *domain, unsigned op, int ready)
{
	agent_answers_ops_then_goes(t, domain, &op, 1, ready);
}

/* Forks a child agent of t's memdedupd (in domain, NULL: the default)
 * that is sent an UNMERGE, answers it done and goes from the daemon (its
 * record kept, holding nothing, to say "paused"), then exits with
 * rejoin(t): 0 if it joined again paused. */
static void unmerged_then_rejoins(struct tdaemon *t, const char *domain, int (*rejoin)(struct tdaemon *t))
{
	int ready[2];
	ASSERT(pipe(ready) == 0);
	pid_t child = fork();
	ASSERT(child >= 0);
	if (child == 0) {
		agent_answers_then_goes(t, domain, MD_CTL_UNMERGE, ready[1]);
		_exit(rejoin(t));
	}
	char x, text[MD_TEXT_MAX + 1];
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	struct md__client *cli = td_connect(t);
	ASSERT_EQ(control(cli, MD_CTL_UNMERGE, child, NULL, NULL, text), 0);
	int st;
	ASSERT_EQ(waitpid(child, &st, 0), child);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	md__client_free(cli);
	close(ready[0]);
	close(ready[1]);
}

/* HELLO again with flags, and gone again: 0 if the WELCOME says paused. */
static int rejoin_paused(struct tdaemon *t, unsigned flags)
{
	struct md__client *agent;
	struct md__msg_welcome w;
	int fd;
	int err = md__client_open(&agent, t->sock, NULL, flags, &w, &fd);
	if (err)
		return err == -EBUSY ? 3 : 104;
	md__client_free(agent);
	close(fd);
	return w.state & MD_WELCOME_PAUSED ? 0 : 1;
}

static int rejoin_as_nobody(struct tdaemon *t)
{
	if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
		return 102;
	return rejoin_paused(t, 0);
}

static int rejoin_after_exec(struct tdaemon *t)
{
	return rejoin_paused(t, MD_HELLO_NO_POOL_MAPS);	/* what an exec'd agent says */
}

/* A process unmerged, then gone from memdedupd (its record kept, holding
 * nothing, to say "paused"), whose user changes (QEMU's -runas drops root
 * after the agent joined): its HELLO as the new user was refused for as
 * long as it lived ("still holds references"). It joins, still paused. */
TEST_IMPL(daemon_user_change_after_unmerge)
{
	if (geteuid() != 0)
		SKIP("needs root: the agent changes its uid");
	struct tdaemon t;
	td_start(&t, 16);
	unmerged_then_rejoins(&t, NULL, rejoin_as_nobody);
	td_stop(&t);
	return 0;
}

/* A process unmerged, then exec'd (QEMU's cpr-exec): its new agent says
 * HELLO mapping no pool page, and the record's references go, but not the
 * unmerge's pause, which is the process's until a RESUME: it was lost,
 * and the exec'd VMM merged again. */
TEST_IMPL(daemon_exec_after_unmerge_stays_paused)
{
	struct tdaemon t;
	td_start(&t, 16);
	unmerged_then_rejoins(&t, NULL, rejoin_after_exec);
	td_stop(&t);
	return 0;
}

/* Agents of t's memdedupd, each alone in domain "held<i>" until killed. */
static void hold_domains(struct tdaemon *t, pid_t *pid, int n)
{
	int ready[2];
	ASSERT(pipe(ready) == 0);
	for (int i = 0; i < n; i++) {
		pid[i] = fork();
		ASSERT(pid[i] >= 0);
		if (pid[i] == 0) {
			struct md__client *c;
			struct md__msg_welcome w;
			char name[16], x = 0;
			int fd;
			close(ready[0]);
			snprintf(name, sizeof(name), "held%d", i);
			if (md__client_open(&c, t->sock, name, 0, &w, &fd) != 0 || write(ready[1], &x, 1) != 1)
				_exit(100);
			close(ready[1]);
			for (;;)
				pause();
		}
	}
	close(ready[1]);	/* one that failed reads as the end */
	for (int i = 0; i < n; i++) {
		char x;
		ASSERT_EQ(read(ready[0], &x, 1), 1);
	}
	close(ready[0]);
}

static pid_t held_domains[MD_D_DOMAINS_PER_UID];

/* The exec'd agent's HELLO refused (its user holds as many domains as it
 * may, "new" one more), then, a domain gone, taken: 0 if still paused. */
static int rejoin_refused_then_room(struct tdaemon *t)
{
	struct md__client *agent;
	struct md__msg_welcome w;
	int fd, err = md__client_open(&agent, t->sock, "new", MD_HELLO_NO_POOL_MAPS, &w, &fd);
	if (err != -EUSERS)
		return 105;
	kill(held_domains[1], SIGKILL);
	for (int i = 0; i < 300 && err == -EUSERS; i++) {
		usleep(10000);	/* until the daemon sees it go */
		err = md__client_open(&agent, t->sock, "new", MD_HELLO_NO_POOL_MAPS, &w, &fd);
	}
	if (err)
		return 106;
	md__client_free(agent);
	close(fd);
	return w.state & MD_WELCOME_PAUSED ? 0 : 1;
}

/* The exec'd agent names another domain, its user holding as many as it
 * may, one of them the old record's alone: that one goes with the record,
 * so the HELLO is not a domain too many. 0 if joined, still paused. */
static int rejoin_new_domain(struct tdaemon *t)
{
	struct md__client *agent;
	struct md__msg_welcome w;
	int fd, err = md__client_open(&agent, t->sock, "new", MD_HELLO_NO_POOL_MAPS, &w, &fd);
	if (err)
		return err == -EUSERS ? 107 : 108;
	md__client_free(agent);
	close(fd);
	return w.state & MD_WELCOME_PAUSED ? 0 : 1;
}

/* nheld domains held by other agents of the user, then an agent in domain
 * unmerged and back through rejoin (0 if it joined again paused). */
static void unmerged_beside_held_domains(int nheld, const char *domain, int (*rejoin)(struct tdaemon *t))
{
	struct tdaemon t;
	td_start(&t, 16);
	hold_domains(&t, held_domains, nheld);
	unmerged_then_rejoins(&t, domain, rejoin);
	for (int i = 0; i < nheld; i++) {
		kill(held_domains[i], SIGKILL);
		waitpid(held_domains[i], NULL, 0);
	}
	td_stop(&t);
}

TEST_IMPL(daemon_exec_into_new_domain_at_limit)
{
	unmerged_beside_held_domains(MD_D_DOMAINS_PER_UID - 1, "solo", rejoin_new_domain);
	return 0;
}

/* A HELLO memdedupd refuses (here: a domain too many) after an exec took
 * the unmerged record's place: the record, and with it the pause, went
 * before the refusal, and the next HELLO merged again. Now the old record
 * goes only once the new one is made. */
TEST_IMPL(daemon_refused_hello_keeps_pause)
{
	unmerged_beside_held_domains(MD_D_DOMAINS_PER_UID, "held0", rejoin_refused_then_room);
	return 0;
}

/* An agent paused by pid (`memdedup pause --pid`), then gone from
 * memdedupd and back (a reply 10 s late, the daemon's restart of the
 * connection): it stays paused until a RESUME, as one paused by default
 * does. Its WELCOME said resume, and it merged again. A RESUME while it is
 * away counts as done, and its next WELCOME says so. */
TEST_IMPL(daemon_pause_by_pid_outlives_reconnect)
{
	struct tdaemon t;
	td_start(&t, 16);
	int ready[2], go[2];
	ASSERT(pipe(ready) == 0 && pipe(go) == 0);
	pid_t child = fork();
	ASSERT(child >= 0);
	if (child == 0) {
		char x = 0;
		agent_answers_then_goes(&t, NULL, MD_CTL_PAUSE, ready[1]);
		int err = rejoin_paused(&t, 0);
		if (err)
			_exit(err);
		usleep(200000);	/* the daemon sees it go */
		if (write(ready[1], &x, 1) != 1 || read(go[0], &x, 1) != 1)	/* resumed meanwhile */
			_exit(103);
		_exit(rejoin_paused(&t, 0) == 1 ? 0 : 2);
	}
	close(ready[1]);	/* a child that ended early reads as the end */
	close(go[0]);
	char x, text[MD_TEXT_MAX + 1];
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	struct md__client *cli = td_connect(&t);
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, child, NULL, NULL, text), 0);
	if (read(ready[0], &x, 1) != 1) {	/* it was not told paused */
		int st;
		ASSERT_EQ(waitpid(child, &st, 0), child);
		ASSERT(WIFEXITED(st));
		ASSERT_EQ(WEXITSTATUS(st), 0);
	}
	ASSERT_EQ(control(cli, MD_CTL_RESUME, child, NULL, NULL, text), 0);
	ASSERT_EQ(write(go[1], "g", 1), 1);
	int st;
	ASSERT_EQ(waitpid(child, &st, 0), child);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	md__client_free(cli);
	close(ready[0]), close(go[1]);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_controls_per_uid)
{
	struct tdaemon t;
	struct passwd *pw = getpwnam("nobody");
	if (getuid() != 0 || !pw)
		SKIP("needs root and a 'nobody' user");
	td_start(&t, 16);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__msg_welcome w;
		char why[MD_TEXT_MAX + 1] = "";
		int fd, n = 0;
		if (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) || setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid))
			_exit(10);
		struct md__client *agent = td_agent(&t, NULL, &w, &fd);
		/* Gone requesters of a PAUSE leave nothing behind: all go out. */
		for (int i = 0; i < 2 * MD_D_CONTROLS_PER_UID; i++)
			n += control_and_close(&t, agent, MD_CTL_PAUSE, why);
		ASSERT_EQ(n, 2 * MD_D_CONTROLS_PER_UID);
		usleep(100000);	/* the daemon sees the last one close */
		/* UNMERGEs stay while their agent may answer, and those
		 * waiting their turn while their requester is there: the
		 * bound. One whose requester went before its turn is gone. */
		ASSERT_EQ(control_and_close(&t, agent, MD_CTL_UNMERGE, why), 1);
		for (int i = 0; i < 2 * MD_D_CONTROLS_PER_UID; i++) {
			int waiting;
			ASSERT_EQ(control_kept(&t, agent, MD_CTL_UNMERGE, why, &waiting), 1);
			close(waiting);
		}
		usleep(100000);	/* the daemon sees the last one close */
		n = 0;
		int kept[2 * MD_D_CONTROLS_PER_UID];
		for (int i = 1; i < 2 * MD_D_CONTROLS_PER_UID; i++)
			n += control_kept(&t, agent, MD_CTL_UNMERGE, why, &kept[i]);
		ASSERT_EQ(n, MD_D_CONTROLS_PER_UID - 1);
		char want[128];
		snprintf(want, sizeof(want), "uid %u has %u CONTROLs waiting", (unsigned)pw->pw_uid,
			 MD_D_CONTROLS_PER_UID);
		ASSERT(strstr(why, want));
		/* Not "within" the wait: those ahead in the queue each have theirs. */
		if (!strstr(why, "try again once one is answered (unmerges go one agent at a time"))
			fprintf(stderr, "  the refusal says '%s'\n", why);
		ASSERT(strstr(why, "try again once one is answered (unmerges go one agent at a time"));
		ASSERT_EQ(control_and_close(&t, agent, MD_CTL_PAUSE, why), 0);
		ASSERT(md__client_alive(agent));
		for (int i = 1; i < 2 * MD_D_CONTROLS_PER_UID; i++)
			if (kept[i] >= 0)
				close(kept[i]);
		_exit(0);
	}
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	/* Root has no such bound: its UNMERGEs past it all wait their turn. */
	struct md__msg_welcome w;
	char why[MD_TEXT_MAX + 1] = "";
	int fd, n = 0, kept[MD_D_CONTROLS_PER_UID + 1];
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);
	ASSERT_EQ(control_and_close(&t, agent, MD_CTL_UNMERGE, why), 1);
	for (int i = 0; i <= MD_D_CONTROLS_PER_UID; i++)
		n += control_kept(&t, agent, MD_CTL_UNMERGE, why, &kept[i]);
	if (n != MD_D_CONTROLS_PER_UID + 1)
		fprintf(stderr, "  root's refusal says '%s'\n", why);
	ASSERT_EQ(n, MD_D_CONTROLS_PER_UID + 1);
	for (int i = 0; i <= MD_D_CONTROLS_PER_UID; i++)
		if (kept[i] >= 0)
			close(kept[i]);
	md__client_free(agent);
	close(fd);
	td_stop(&t);
	return 0;
}

/* As nobody: an agent root pauses (by pid) and that goes from memdedupd,
 * its record kept paused; its user's RESUME is refused, and it joins again
 * paused. Then that user's PAUSE of root's own agent (ppid) is as if it
 * were absent. Exits 0 if all went so. */
static int resume_over_admin_as_nobody(struct tdaemon *t, int ready, int go)
{
	char x = 0, text[MD_TEXT_MAX + 1];
	if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
		return 102;
	agent_answers_then_goes(t, NULL, MD_CTL_PAUSE, ready);
	struct md__client *cli = td_connect(t);
	if (control(cli, MD_CTL_RESUME, getpid(), NULL, NULL, text) != -EPERM || !strstr(text, "administrator"))
		return 2;
	if (rejoin_paused(t, 0) != 0)
		return 3;
	if (control(cli, MD_CTL_PAUSE, getppid(), NULL, NULL, text) != -ESRCH)
		return 4;
	/* Root pauses all: no RESUME of this user's undoes it. */
	if (write(ready, &x, 1) != 1 || read(go, &x, 1) != 1)
		return 5;
	if (control(cli, MD_CTL_RESUME, 0, NULL, NULL, text) != -EPERM)
		return 6;
	md__client_free(cli);
	return 0;
}

/* A pause root set (memdedup pause, by pid or of all) is root's to lift:
 * another user's RESUME ran its agents again under it. And a user's
 * CONTROL never reaches another user's agent. */
TEST_IMPL(daemon_user_resume_not_over_admin)
{
	struct tdaemon t;
	if (getuid() != 0 || !getpwnam("nobody"))
		SKIP("needs root and a 'nobody' user");
	td_start(&t, 16);
	struct md__msg_welcome w;
	int pool, ready[2], go[2];
	struct md__client *mine = td_agent(&t, NULL, &w, &pool);	/* root's own agent */
	ASSERT(pipe(ready) == 0 && pipe(go) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		close(ready[0]);
		close(go[1]);
		_exit(resume_over_admin_as_nobody(&t, ready[1], go[0]));
	}
	close(ready[1]);
	close(go[0]);
	char x, text[MD_TEXT_MAX + 1];
	struct md__client *cli = td_connect(&t);
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, kid, NULL, NULL, text), 0);
	ASSERT_EQ(read(ready[0], &x, 1), 1);	/* its refusals seen */
	struct md__msg_control ctl;
	ASSERT_EQ(md__client_next_control(mine, &ctl), -EAGAIN);	/* nobody's PAUSE */
	/* Root pauses all (its own agent answers), then nobody tries. */
	struct control_call call;
	control_start(&call, cli, MD_CTL_PAUSE, 0, NULL, NULL);
	next_control(mine, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_PAUSE);
	ASSERT_EQ(md__client_control_done(mine, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&call), 0);
	ASSERT_EQ(write(go[1], "g", 1), 1);
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	/* Nor a RESUME of all by a user with no agent (none refuses it, and
	 * it would be "done by 0 agents"): the pause of all is refused as such. */
	pid_t none = fork();
	ASSERT(none >= 0);
	if (none == 0) {
		if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
			_exit(102);
		struct md__client *nc = td_connect(&t);
		int err = control(nc, MD_CTL_RESUME, 0, NULL, NULL, text);
		if (err != -EPERM || !strstr(text, "only they resume it"))
			fprintf(stderr, "  nobody's RESUME of all: %d '%s'\n", err, text);
		_exit(err == -EPERM && strstr(text, "only they resume it") ? 0 : 1);
	}
	ASSERT_EQ(child_exit(none), 0);
	json_t *status = td_status(&t);
	ASSERT(json_is_true(json_object_get(json_object_get(status, "daemon"), "paused")));
	json_decref(status);
	md__client_free(cli);
	md__client_free(mine);
	close(pool);
	close(ready[0]), close(go[1]);
	td_stop(&t);
	return 0;
}
/* A child that runs as_nobody(t, the write end of a pipe) and exits with
 * its result; *ready: the read end. */
static pid_t fork_as_nobody(struct tdaemon *t, int (*as_nobody)(struct tdaemon *, int), int *ready)
{
	int p[2];
	ASSERT(pipe(p) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		close(p[0]);
		_exit(as_nobody(t, p[1]));
	}
	close(p[1]);
	*ready = p[0];
	return kid;
}

/* As nobody: an agent that refuses root's UNMERGE (memory short), then is
 * paused and resumed by its own user. Exits 0 if the RESUME was taken. */
static int own_resume_after_refusal_as_nobody(struct tdaemon *t, int ready)
{
	struct md__client *agent;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call call;
	int fd;
	char x = 0;
	if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
		return 102;
	if (md__client_open(&agent, t->sock, NULL, 0, &w, &fd) != 0 || write(ready, &x, 1) != 1)
		return 100;
	next_control(agent, &ctl);
	if (ctl.op != MD_CTL_UNMERGE || md__client_control_done(agent, ctl.token, -ENOMEM, "short") != 0)
		return 2;
	struct md__client *cli = td_connect(t);
	for (unsigned op = MD_CTL_PAUSE;; op = MD_CTL_RESUME) {
		control_start(&call, cli, op, getpid(), NULL, NULL);
		next_control(agent, &ctl);
		if (ctl.op != op || md__client_control_done(agent, ctl.token, 0, NULL) != 0)
			return 3;
		if (control_end(&call) != 0)
			return op == MD_CTL_PAUSE ? 4 : 5;
		if (op == MD_CTL_RESUME)
			break;
	}
	md__client_free(cli);
	md__client_free(agent);
	close(fd);
	return 0;
}

/* Root's UNMERGE the agent refused holds nothing: its user's own PAUSE
 * and RESUME later are theirs (the RESUME was refused as root's to give). */
TEST_IMPL(daemon_user_resume_after_refused_unmerge)
{
	struct tdaemon t;
	if (getuid() != 0 || !getpwnam("nobody"))
		SKIP("needs root and a 'nobody' user");
	td_start(&t, 16);
	int ready;
	pid_t kid = fork_as_nobody(&t, own_resume_after_refusal_as_nobody, &ready);
	char x, text[MD_TEXT_MAX + 1];
	ASSERT_EQ(read(ready, &x, 1), 1);
	struct md__client *cli = td_connect(&t);
	ASSERT_EQ(control(cli, MD_CTL_UNMERGE, kid, NULL, NULL, text), -ENOMEM);
	ASSERT_EQ(child_exit(kid), 0);
	md__client_free(cli);
	close(ready);
	td_stop(&t);
	return 0;
}

/* A CONTROL of this user's for its own agent (pid), answered by that
 * agent: the status of the CONTROL_R. */
static int own_control_answered(struct tdaemon *t, struct md__client *cli, struct md__client *agent, unsigned op)
{
	struct md__msg_control ctl;
	struct control_call call;
	control_start(&call, cli, op, getpid(), NULL, NULL);
	int err = -EAGAIN;
	for (int i = 0; i < 200 && err == -EAGAIN; i++)
		if ((err = md__client_next_control(agent, &ctl)) == -EAGAIN)
			usleep(5000);
	if (err == 0 && (ctl.op != op || md__client_control_done(agent, ctl.token, 0, NULL) != 0))
		return -EPROTO;
	(void)t;
	return control_end(&call);
}

/* As nobody: an agent under root's pause of all. Its user's own PAUSE and
 * RESUME: the RESUME refused, until root resumed the agent alone; then
 * taken. Exits 0 if all went so. */
static int own_resume_after_admin_resumed_alone_as_nobody(struct tdaemon *t, int ready)
{
	struct md__client *agent;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	char x = 0, text[MD_TEXT_MAX + 1];
	int fd;
	if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
		return 102;
	if (md__client_open(&agent, t->sock, NULL, 0, &w, &fd) != 0 || write(ready, &x, 1) != 1)
		return 100;
	next_control(agent, &ctl);	/* root's PAUSE of all */
	if (ctl.op != MD_CTL_PAUSE || md__client_control_done(agent, ctl.token, 0, NULL) != 0)
		return 2;
	struct md__client *cli = td_connect(t);
	if (own_control_answered(t, cli, agent, MD_CTL_PAUSE) != 0)
		return 3;
	if (control(cli, MD_CTL_RESUME, getpid(), NULL, NULL, text) != -EPERM || !strstr(text, "administrator"))
		return 4;
	if (write(ready, &x, 1) != 1)
		return 101;
	next_control(agent, &ctl);	/* root's RESUME of this agent */
	if (ctl.op != MD_CTL_RESUME || md__client_control_done(agent, ctl.token, 0, NULL) != 0)
		return 5;
	if (own_control_answered(t, cli, agent, MD_CTL_PAUSE) != 0)
		return 6;
	if (own_control_answered(t, cli, agent, MD_CTL_RESUME) != 0)
		return 7;
	md__client_free(cli);
	md__client_free(agent);
	close(fd);
	return 0;
}

/* Root paused all, then resumed one user's agent alone: that user may
 * pause it and resume it again (every RESUME by pid of a user was refused
 * while memdedupd was paused). One root did not resume alone stays
 * root's to resume. */
TEST_IMPL(daemon_user_resumes_agent_admin_resumed_alone)
{
	struct tdaemon t;
	if (getuid() != 0 || !getpwnam("nobody"))
		SKIP("needs root and a 'nobody' user");
	td_start(&t, 16);
	int ready;
	pid_t kid = fork_as_nobody(&t, own_resume_after_admin_resumed_alone_as_nobody, &ready);
	char x, text[MD_TEXT_MAX + 1];
	ASSERT_EQ(read(ready, &x, 1), 1);
	struct md__client *cli = td_connect(&t);
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, 0, NULL, NULL, text), 0);
	ASSERT_EQ(read(ready, &x, 1), 1);
	ASSERT_EQ(control(cli, MD_CTL_RESUME, kid, NULL, NULL, text), 0);
	ASSERT_EQ(child_exit(kid), 0);
	md__client_free(cli);
	close(ready);
	td_stop(&t);
	return 0;
}

/* As nobody: an agent root unmerged, whose own user then sends an UNMERGE
 * it refuses, then a RESUME. Exits 0 if that RESUME was refused as root's
 * to give. */
static int own_refusal_keeps_root_hold_as_nobody(struct tdaemon *t, int ready)
{
	struct md__client *agent;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call call;
	char x = 0, text[MD_TEXT_MAX + 1];
	int fd;
	if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
		return 102;
	if (md__client_open(&agent, t->sock, NULL, 0, &w, &fd) != 0 || write(ready, &x, 1) != 1)
		return 100;
	next_control(agent, &ctl);	/* root's, taken */
	if (ctl.op != MD_CTL_UNMERGE || md__client_control_done(agent, ctl.token, 0, NULL) != 0)
		return 2;
	struct md__client *cli = td_connect(t);
	control_start(&call, cli, MD_CTL_UNMERGE, getpid(), NULL, NULL);
	next_control(agent, &ctl);	/* its own, refused */
	if (ctl.op != MD_CTL_UNMERGE || md__client_control_done(agent, ctl.token, -EBUSY, "busy") != 0)
		return 3;
	if (control_end(&call) != -EBUSY)
		return 4;
	if (control(cli, MD_CTL_RESUME, getpid(), NULL, NULL, text) != -EPERM)
		return 5;
	md__client_free(cli);
	md__client_free(agent);
	close(fd);
	return 0;
}

/* Root's UNMERGE that went through is root's to lift: the user's own
 * UNMERGE, refused, does not make it theirs. */
TEST_IMPL(daemon_user_refused_unmerge_keeps_root_hold)
{
	struct tdaemon t;
	if (getuid() != 0 || !getpwnam("nobody"))
		SKIP("needs root and a 'nobody' user");
	td_start(&t, 16);
	int ready;
	pid_t kid = fork_as_nobody(&t, own_refusal_keeps_root_hold_as_nobody, &ready);
	char x, text[MD_TEXT_MAX + 1];
	ASSERT_EQ(read(ready, &x, 1), 1);
	struct md__client *cli = td_connect(&t);
	ASSERT_EQ(control(cli, MD_CTL_UNMERGE, kid, NULL, NULL, text), 0);
	ASSERT_EQ(child_exit(kid), 0);
	md__client_free(cli);
	close(ready);
	td_stop(&t);
	return 0;
}

/* As nobody: an agent that asked for pids in CONTROLs (as the engine's
 * does) sets its own user's SET of all their agents as its own value
 * (its pid), then root's as the default's share (pid 0). Exits 0 if so. */
static int user_set_own_as_nobody(struct tdaemon *t, int ready)
{
	struct md__client *agent;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call call;
	char x = 0;
	int fd;
	if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
		return 102;
	if (md__client_open(&agent, t->sock, NULL, MD_HELLO_CONTROL_PID, &w, &fd) != 0)
		return 100;
	struct md__client *cli = td_connect(t);
	control_start(&call, cli, MD_CTL_SET, 0, "pages_to_scan", "50");
	next_control(agent, &ctl);
	if (ctl.op != MD_CTL_SET || ctl.pid != getpid())
		return 2;	/* a share, which the next WELCOME overwrote */
	if (md__client_control_done(agent, ctl.token, 0, NULL) != 0 || control_end(&call) != 0)
		return 3;
	if (write(ready, &x, 1) != 1)
		return 101;
	next_control(agent, &ctl);	/* root's */
	if (ctl.op != MD_CTL_SET || ctl.pid != 0 || md__client_control_done(agent, ctl.token, 0, NULL) != 0)
		return 4;
	md__client_free(cli);
	md__client_free(agent);
	close(fd);
	return 0;
}

/* A user's `memdedup set` of all their agents (no --pid) sets no default,
 * so it reaches each agent as its own value, which outlives a reconnect;
 * root's sets the default, each agent's share of it. */
TEST_IMPL(daemon_user_set_is_each_agents_own)
{
	struct tdaemon t;
	if (getuid() != 0 || !getpwnam("nobody"))
		SKIP("needs root and a 'nobody' user");
	td_start(&t, 16);
	int ready;
	pid_t kid = fork_as_nobody(&t, user_set_own_as_nobody, &ready);
	char x, text[MD_TEXT_MAX + 1];
	struct md__client *cli = td_connect(&t);
	if (read(ready, &x, 1) == 1)
		ASSERT_EQ(control(cli, MD_CTL_SET, 0, "pages_to_scan", "300", text), 0);
	ASSERT_EQ(child_exit(kid), 0);
	md__client_free(cli);
	close(ready);
	td_stop(&t);
	return 0;
}

/* As nobody, beside root's agent: its CONTROLs of all its agents (pid 0)
 * PAUSE, SET and UNMERGE its own agent alone, changing no default; it then
 * RESUMEs it. Once root paused all (its agent held by no pause of its
 * own), its RESUME of all is refused, and reaches no agent. Exits 0 if
 * all went so. */
static int all_is_own_as_nobody(struct tdaemon *t, int ready, int go)
{
	static const unsigned op[] = { MD_CTL_PAUSE, MD_CTL_SET, MD_CTL_UNMERGE, MD_CTL_RESUME };
	struct md__client *agent;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call call;
	char x = 0, text[MD_TEXT_MAX + 1];
	int fd, bad = 0;
	if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
		return 102;
	if (md__client_open(&agent, t->sock, NULL, 0, &w, &fd) != 0)
		return 100;
	struct md__client *cli = td_connect(t);
	md__client_set_timeout(cli, 10000);	/* past the daemon's deadline */
	for (unsigned i = 0; i < sizeof(op) / sizeof(op[0]); i++) {
		/* Root looks between the UNMERGE and the RESUME. */
		if (op[i] == MD_CTL_RESUME && (write(ready, &x, 1) != 1 || read(go, &x, 1) != 1))
			return 101;
		int set = op[i] == MD_CTL_SET;
		control_start(&call, cli, op[i], 0, set ? "pages_to_scan" : NULL, set ? "7" : NULL);
		next_control(agent, &ctl);
		if (ctl.op != op[i] || md__client_control_done(agent, ctl.token, 0, NULL) != 0)
			bad = bad ? bad : 10 + (int)i;
		/* Root's agent answers nothing: had it been sent it, this
		 * waited for the deadline. */
		if (control_end(&call) != 0)
			bad = bad ? bad : 20 + (int)i;
	}
	/* Root's PAUSE of all, answered. */
	if (write(ready, &x, 1) != 1)
		return 101;
	next_control(agent, &ctl);
	if (ctl.op != MD_CTL_PAUSE || md__client_control_done(agent, ctl.token, 0, NULL) != 0)
		bad = bad ? bad : 3;
	if (read(go, &x, 1) != 1)
		return 101;
	if (control(cli, MD_CTL_RESUME, 0, NULL, NULL, text) != -EPERM || !strstr(text, "administrator"))
		bad = bad ? bad : 4;
	usleep(200000);
	if (md__client_next_control(agent, &ctl) != -EAGAIN)
		bad = bad ? bad : 5;
	md__client_free(cli);
	md__client_free(agent);
	close(fd);
	return bad;
}

/* A user's CONTROL of all its agents (pid 0) is of its own agents alone:
 * root's get nothing of it (PAUSE, SET, UNMERGE), and the defaults stay
 * (the daemon's tunables, its pause); and while root has paused all, the
 * user's RESUME of all is refused, also with its own agents held by no
 * pause of root's by pid. */
TEST_IMPL(daemon_user_all_is_own_agents)
{
	struct tdaemon t;
	if (getuid() != 0 || !getpwnam("nobody"))
		SKIP("needs root and a 'nobody' user");
	/* Not a minute: a CONTROL sent to root's silent agent would end. */
	td_start_waiting(&t, 16, 3000);
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call call;
	int pool, ready[2], go[2];
	char x;
	struct md__client *mine = td_agent(&t, NULL, &w, &pool);	/* root's own agent */
	json_t *st = td_status(&t);
	json_t *tun = json_object_get(json_object_get(st, "daemon"), "tunables");
	long long pages_to_scan = td_int(tun, "pages_to_scan");
	ASSERT(pages_to_scan != 7);
	json_decref(st);
	ASSERT(pipe(ready) == 0 && pipe(go) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		close(ready[0]);
		close(go[1]);
		_exit(all_is_own_as_nobody(&t, ready[1], go[0]));
	}
	close(ready[1]);
	close(go[0]);
	ASSERT_EQ(read(ready[0], &x, 1), 1);	/* its PAUSE, SET and UNMERGE done */
	ASSERT_EQ(md__client_next_control(mine, &ctl), -EAGAIN);
	st = td_status(&t);
	json_t *daemon = json_object_get(st, "daemon");
	ASSERT_EQ(td_int(json_object_get(daemon, "tunables"), "pages_to_scan"), pages_to_scan);
	ASSERT(json_is_false(json_object_get(daemon, "paused")));
	json_decref(st);
	ASSERT_EQ(write(go[1], "g", 1), 1);
	/* Root pauses all (both agents answer), then the user resumes all. */
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	control_start(&call, td_connect(&t), MD_CTL_PAUSE, 0, NULL, NULL);
	next_control(mine, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_PAUSE);
	ASSERT_EQ(md__client_control_done(mine, ctl.token, 0, NULL), 0);
	ASSERT_EQ(control_end(&call), 0);
	md__client_free(call.cli);
	ASSERT_EQ(write(go[1], "g", 1), 1);
	ASSERT_EQ(child_exit(kid), 0);
	ASSERT_EQ(md__client_next_control(mine, &ctl), -EAGAIN);
	st = td_status(&t);
	ASSERT(json_is_true(json_object_get(json_object_get(st, "daemon"), "paused")));
	json_decref(st);
	md__client_free(mine);
	close(pool);
	close(ready[0]), close(go[1]);
	td_stop(&t);
	return 0;
}

/* A CONTROL naming an agent kept detached (it paused, then went; its
 * process lives): a SET cannot reach it (-ENOTCONN, said), a RESUME is
 * taken for when it is back. */
TEST_IMPL(daemon_control_detached_agent)
{
	struct tdaemon t;
	td_start(&t, 16);
	int ready[2], go[2];
	ASSERT(pipe(ready) == 0 && pipe(go) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		char x = 0;
		close(ready[0]);
		close(go[1]);
		agent_answers_then_goes(&t, NULL, MD_CTL_PAUSE, ready[1]);
		if (write(ready[1], &x, 1) != 1 || read(go[0], &x, 1) != 1)
			_exit(103);
		_exit(rejoin_paused(&t, 0) == 1 ? 0 : 2);	/* resumed while away */
	}
	close(ready[1]);
	close(go[0]);
	char x, text[MD_TEXT_MAX + 1];
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	struct md__client *cli = td_connect(&t);
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, kid, NULL, NULL, text), 0);
	ASSERT_EQ(read(ready[0], &x, 1), 1);	/* gone, its record kept paused */
	ASSERT_EQ(control(cli, MD_CTL_SET, kid, "pages_to_scan", "200", text), -ENOTCONN);
	ASSERT(strstr(text, "not connected"));
	ASSERT_EQ(control(cli, MD_CTL_RESUME, kid, NULL, NULL, text), 0);
	ASSERT(strstr(text, "when back"));
	ASSERT_EQ(write(go[1], "g", 1), 1);
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	md__client_free(cli);
	close(ready[0]), close(go[1]);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_cli_control)
{
	struct tdaemon t;
	const char *b = build_dir();
	ASSERT_EQ(td_sh("%s/memdedup pause --help >/dev/null 2>&1", b), 0);
	ASSERT_EQ(td_sh("%s/memdedup resume --help >/dev/null", b), 0);
	ASSERT_EQ(td_sh("%s/memdedup unmerge --help >/dev/null", b), 0);
	/* An unmerge sets no default for agents that start later. */
	ASSERT_EQ(td_sh("%s/memdedup unmerge --help | grep -q 'start later'", b), 1);
	ASSERT_EQ(td_sh("%s/memdedup set --help >/dev/null", b), 0);
	/* Wrong usage: 2, daemon or not. */
	ASSERT_EQ(td_sh("%s/memdedup pause extra 2>/dev/null", b), 2);
	ASSERT_EQ(td_sh("%s/memdedup unmerge --pid 2>/dev/null", b), 2);
	ASSERT_EQ(td_sh("%s/memdedup unmerge --pid x1 2>/dev/null", b), 2);
	ASSERT_EQ(td_sh("%s/memdedup set 2>/dev/null", b), 2);
	ASSERT_EQ(td_sh("%s/memdedup set pages_to_scan 2>/dev/null", b), 2);
	ASSERT_EQ(td_sh("%s/memdedup set =5 2>/dev/null", b), 2);
	/* No daemon: 1, and says so. */
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s/none %s/memdedup pause 2>%s/err", test_dir(), b, test_dir()), 1);
	ASSERT_EQ(td_sh("grep -q 'not running' %s/err", test_dir()), 0);
	td_start(&t, 16);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=200 order=random >/dev/null", t.sock, b), 0);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=0 2>%s/err", t.sock, b, test_dir()), 2);
	ASSERT_EQ(td_sh("grep -q 'pages_to_scan must be' %s/err", test_dir()), 0);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set bogus=1 2>/dev/null", t.sock, b), 2);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup unmerge --pid 999999 2>/dev/null", t.sock, b), 1);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup pause >/dev/null", t.sock, b), 0);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup resume >/dev/null", t.sock, b), 0);
	json_t *js = td_status(&t);
	json_t *tun = json_object_get(json_object_get(js, "daemon"), "tunables");
	ASSERT_EQ(td_int(tun, "pages_to_scan"), 200);
	json_decref(js);
	td_stop(&t);
	return 0;
}

/* A status document larger than a message comes in pages: 200 agents
 * with 256 counters of 19 digits are about 1.5 MB. */
#define PAGED_AGENTS 200
#define PAGED_COUNTER(i, k) (1000000000000000000ull + (uint64_t)(i) * 1000 + (k))

TEST_IMPL(daemon_status_pages)
{
	struct tdaemon t;
	pid_t kids[PAGED_AGENTS];
	int sync[2], ready[2];
	char path[400];

	td_start(&t, 16);
	ASSERT(pipe(sync) == 0 && pipe(ready) == 0);
	for (int i = 0; i < PAGED_AGENTS; i++) {
		kids[i] = fork();
		ASSERT(kids[i] >= 0);
		if (kids[i] == 0) {
			static uint64_t ctr[MD_REPORT_MAX];
			struct md__msg_welcome w;
			int fd;
			char b;
			close(sync[1]);
			struct md__client *c = td_agent(&t, i % 2 ? "odd" : "even", &w, &fd);
			for (unsigned k = 0; k < MD_REPORT_MAX; k++)
				ctr[k] = PAGED_COUNTER(i, k);
			b = md__client_report(c, ctr, MD_REPORT_MAX) == 0;
			ASSERT(write(ready[1], &b, 1) == 1);
			_exit(read(sync[0], &b, 1) == 0 ? 0 : 1);	/* EOF: released */
		}
	}
	close(sync[0]);
	for (int i = 0; i < PAGED_AGENTS; i++) {
		char b = 0;
		ASSERT(read(ready[0], &b, 1) == 1);
		ASSERT_EQ(b, 1);
	}
	/* One request gets one page, saying where the next starts. */
	json_t *st = td_status(&t);
	size_t first = json_array_size(json_object_get(st, "agents"));
	ASSERT(first > 0 && first < PAGED_AGENTS);
	ASSERT(json_is_object(json_object_get(st, "next")));
	ASSERT_EQ(td_int(json_object_get(st, "totals"), "agents"), PAGED_AGENTS);
	/* In the order pages go through them: domains by id, agents by pid. */
	const char *order[][2] = { { "domains", "id" }, { "agents", "pid" } };
	for (int o = 0; o < 2; o++) {
		json_t *list = json_object_get(st, order[o][0]);
		for (size_t i = 1; i < json_array_size(list); i++)
			ASSERT(td_int(json_array_get(list, i - 1), order[o][1]) <
			       td_int(json_array_get(list, i), order[o][1]));
	}
	ASSERT_EQ(json_array_size(json_object_get(st, "domains")), 2);
	json_decref(st);

	/* The CLI puts the pages together: every agent once, whole. */
	snprintf(path, sizeof(path), "%s/status.json", t.dir);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s MEMDEDUP_RUN_DIR=%s %s/memdedup status --json >%s",
			t.sock, t.dir, build_dir(), path), 0);
	json_t *all = json_load_file(path, 0, NULL);
	ASSERT(all);
	json_t *dd = json_object_get(all, "daemon"), *agents = json_object_get(dd, "agents"), *a;
	ASSERT_EQ(json_array_size(agents), PAGED_AGENTS);
	ASSERT_EQ(json_array_size(json_object_get(dd, "domains")), 2);
	ASSERT(json_object_get(dd, "next") == NULL);
	int seen[PAGED_AGENTS] = {0};
	size_t j;
	json_array_foreach(agents, j, a) {
		int i = 0;
		while (i < PAGED_AGENTS && kids[i] != td_int(a, "pid"))
			i++;
		ASSERT(i < PAGED_AGENTS);
		ASSERT_EQ(seen[i]++, 0);
		json_t *ctr = json_object_get(a, "counters");
		ASSERT_EQ(json_array_size(ctr), MD_REPORT_MAX);
		for (unsigned k = 0; k < MD_REPORT_MAX; k += 51)
			ASSERT(json_integer_value(json_array_get(ctr, (size_t)k)) ==
			       (json_int_t)PAGED_COUNTER(i, k));
	}
	json_decref(all);
	close(sync[1]);
	for (int i = 0; i < PAGED_AGENTS; i++) {
		int wst;
		ASSERT(waitpid(kids[i], &wst, 0) == kids[i]);
		ASSERT(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
	}
	close(ready[0]), close(ready[1]);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_single_instance)
{
	struct tdaemon t;
	const char *b = build_dir();
	td_start(&t, 16);
	/* Same run dir: the pid file lock. Same socket elsewhere: it answers. */
	ASSERT_EQ(td_sh("%s/memdedupd --foreground --run-dir %s --socket %s/other 2>/dev/null", b, t.dir, t.dir),
		  MD_D_EXIT_HELD);
	ASSERT_EQ(td_sh("mkdir -p %s/x && %s/memdedupd --foreground --run-dir %s/x --socket %s 2>/dev/null",
		     t.dir, b, t.dir, t.sock), MD_D_EXIT_HELD);
	ASSERT(md__daemon_alive(t.sock));
	ASSERT_EQ(td_sh("%s/memdedupd --pool-pages 0 2>/dev/null", b), 2);
	ASSERT_EQ(td_sh("%s/memdedupd --bogus 2>/dev/null", b), 2);
	/* What the terminal is shown of a bad argument has no escape in it. */
	ASSERT_EQ(td_sh("%s/memdedupd \"$(printf 'x\\033[31m')\" 2>%s/err; grep -qF \"'x?[31m'\" %s/err && "
			"! grep -q \"$(printf '\\033')\" %s/err", b, t.dir, t.dir, t.dir), 0);
	ASSERT_EQ(td_sh("%s/memdedupd --pool-pages=abc 2>%s/err; grep -qF \"not 'abc'\" %s/err", b, t.dir, t.dir),
		  0);
	ASSERT_EQ(td_sh("%s/memdedupd --help >/dev/null", b), 0);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_ensure_starts)
{
	char dir[300], exe[300], sock[400], pidf[400];
	snprintf(dir, sizeof(dir), "%s/ens", test_dir());
	ASSERT(mkdir(dir, 0755) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	snprintf(pidf, sizeof(pidf), "%s/memdedupd.pid", dir);
	snprintf(exe, sizeof(exe), "%s/memdedupd", build_dir());
	ASSERT(access(exe, X_OK) == 0);	/* built by make all, which the tests need */
	setenv("MEMDEDUP_RUN_DIR", dir, 1);
	unsetenv("MEMDEDUP_SOCKET");
	ASSERT(!md__daemon_alive(NULL));
	/* A descriptor the VMM had open (without close-on-exec), as a lock
	 * file or a pipe: the daemon must not keep it. */
	int keep[2];
	ASSERT(pipe2(keep, O_NONBLOCK) == 0);
	ASSERT_EQ(md__daemon_ensure(exe, NULL), 0);
	ASSERT(md__daemon_alive(sock));
	close(keep[1]);
	char c;
	/* End of file, not EAGAIN: no writer is left, the daemon included. */
	ASSERT_EQ(read(keep[0], &c, 1), 0);
	close(keep[0]);
	ASSERT_EQ(md__daemon_ensure(exe, NULL), 0);	/* already there: nothing started */
	FILE *f = fopen(pidf, "r");
	ASSERT(f);
	int pid = 0;
	ASSERT(fscanf(f, "%d", &pid) == 1 && pid > 0);
	fclose(f);
	/* It daemonized: not our child, in a session of its own. */
	ASSERT(getsid(pid) == pid);
	ASSERT(kill(pid, SIGTERM) == 0);
	/* Not our child: its exit shows as its files going. */
	for (int i = 0; i < 200 && access(pidf, F_OK) == 0; i++)
		usleep(10000);
	ASSERT(access(pidf, F_OK) != 0);
	ASSERT(access(sock, F_OK) != 0);
	ASSERT_EQ(md__daemon_ensure("/nonexistent/memdedupd", NULL), -ENOENT);
	/* The exec's own errno; a program that ran and exited 127 (the
	 * dynamic loader's exit when a library is missing) is no missing
	 * program. */
	char fake[600];
	snprintf(fake, sizeof(fake), "%s/fake-memdedupd", test_dir());
	ASSERT_EQ(td_sh("printf '#!/bin/sh\\nexit 127\\n' > %s && chmod 644 %s", fake, fake), 0);
	ASSERT_EQ(md__daemon_ensure(fake, NULL), -EACCES);
	ASSERT_EQ(chmod(fake, 0755), 0);
	ASSERT_EQ(md__daemon_ensure(fake, NULL), -ELIBACC);
	return 0;
}

/* Two VMMs start memdedupd at once where a daemon was killed (its pid
 * file left, naming a dead process): the one that loses the lock read that
 * pid at once, exited 1, and its VMM was told memdedupd was not started
 * when the other was about to listen. Both find it now, every round, and
 * the daemon that lost says nothing on their terminal: "another daemon
 * holds .../memdedupd.pid" reached it, though all was well. */
TEST_IMPL(daemon_ensure_at_once_after_crash)
{
	char dir[300], exe[300], pidf[400], errf[400];
	snprintf(dir, sizeof(dir), "%s/ens2", test_dir());
	ASSERT(mkdir(dir, 0755) == 0);
	snprintf(pidf, sizeof(pidf), "%s/memdedupd.pid", dir);
	snprintf(errf, sizeof(errf), "%s/ensure.err", test_dir());
	snprintf(exe, sizeof(exe), "%s/memdedupd", build_dir());
	setenv("MEMDEDUP_RUN_DIR", dir, 1);
	unsetenv("MEMDEDUP_SOCKET");
	for (int round = 0; round < 30; round++) {
		FILE *f = fopen(pidf, "w");
		ASSERT(f);
		fprintf(f, "%d\n", 0x3ffffff0);	/* no such process */
		fclose(f);
		pid_t kid[2];
		for (int k = 0; k < 2; k++) {
			kid[k] = fork();
			ASSERT(kid[k] >= 0);
			if (kid[k] == 0) {
				int efd = open(errf, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
				if (efd < 0 || dup2(efd, 2) != 2)
					_exit(2);
				_exit(md__daemon_ensure(exe, NULL) == 0 ? 0 : 1);
			}
		}
		int st[2];
		for (int k = 0; k < 2; k++)
			ASSERT(waitpid(kid[k], &st[k], 0) == kid[k]);
		/* Stopped before any check: a daemon in a session of its own
		 * would outlive a failed test. */
		int pid = 0;
		for (int i = 0; i < 100 && !pid; i++) {
			if ((f = fopen(pidf, "r")) && fscanf(f, "%d", &pid) != 1)
				pid = 0;
			if (f)
				fclose(f);
			if (!pid)
				usleep(20000);
		}
		ASSERT(pid > 0 && kill(pid, SIGTERM) == 0);
		for (int i = 0; i < 200 && access(pidf, F_OK) == 0; i++)
			usleep(10000);
		ASSERT(access(pidf, F_OK) != 0);
		for (int k = 0; k < 2; k++)
			ASSERT(WIFEXITED(st[k]) && WEXITSTATUS(st[k]) == 0);
	}
	if (strstr(file_text(errf), "another daemon"))
		fprintf(stderr, "  said: %s", file_text(errf));
	ASSERT(!strstr(file_text(errf), "another daemon"));
	/* Started by hand, it still says so. */
	ASSERT_EQ(md__daemon_ensure(exe, NULL), 0);
	ASSERT_EQ(td_sh("%s 2>%s/by-hand.err", exe, test_dir()), MD_D_EXIT_HELD);
	ASSERT_EQ(td_sh("grep -q 'another daemon' %s/by-hand.err", test_dir()), 0);
	int pid = 0;
	FILE *f = fopen(pidf, "r");
	ASSERT(f && fscanf(f, "%d", &pid) == 1 && pid > 0);
	fclose(f);
	ASSERT(kill(pid, SIGTERM) == 0);
	for (int i = 0; i < 200 && access(pidf, F_OK) == 0; i++)
		usleep(10000);
	ASSERT(access(pidf, F_OK) != 0);
	return 0;
}

/* The number status shows for agent pid (-1: not listed). */
static long long agent_number(const struct tdaemon *t, pid_t pid)
{
	json_t *st = td_status(t), *a;
	long long num = -1;
	size_t i;
	json_array_foreach(json_object_get(st, "agents"), i, a)
		if (json_integer_value(json_object_get(a, "pid")) == pid)
			num = json_integer_value(json_object_get(a, "number"));
	json_decref(st);
	return num;
}

/* Forks an agent of domain "num" that stays until child_release(); returns
 * its pid once status lists it, with its number in *num. */
static pid_t numbered_agent(const struct tdaemon *t, int sync[2], long long *num)
{
	ASSERT(pipe(sync) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__msg_welcome w;
		int fd;
		char b;
		struct md__client *c = td_agent(t, "num", &w, &fd);
		_exit(read(sync[0], &b, 1) == 1 && c ? 0 : 1);
	}
	*num = -1;
	for (int i = 0; i < 200 && (*num = agent_number(t, kid)) < 0; i++)
		usleep(10000);
	return kid;
}

TEST_IMPL(daemon_agent_numbers)
{
	/* A first sighting names its agent by number: numbers are distinct,
	 * and given in turn, so an agent gone leaves its number unused until
	 * the others have been given (its sightings would name the new one's
	 * pages). */
	struct tdaemon t;
	struct md__msg_welcome w;
	int fd, sync[2];
	long long num;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, "num", &w, &fd);
	ASSERT_EQ(agent_number(&t, getpid()), 1);
	pid_t kid = numbered_agent(&t, sync, &num);
	ASSERT_EQ(num, 2);
	child_release(kid, sync);
	for (int i = 0; i < 200 && agent_number(&t, kid) >= 0; i++)
		usleep(10000);
	ASSERT_EQ(agent_number(&t, kid), -1);	/* gone with its process */
	kid = numbered_agent(&t, sync, &num);
	ASSERT_EQ(num, 3);	/* not 2 again */
	ASSERT_EQ(agent_number(&t, getpid()), 1);
	child_release(kid, sync);
	close(fd);
	md__client_free(c);
	td_stop(&t);
	return 0;
}

/* Child of a pid namespace below the test's: HELLO with `claim` (0: the
 * client's own, getpid() there), then 'y' or 'n' on report[1], then stays
 * until sync[0] reads a byte. */
static void hello_in_namespace(const struct tdaemon *t, uint32_t claim, int report, int sync)
{
	char b = 'n';
	if (claim == 0) {
		struct md__client *c;
		struct md__msg_welcome w;
		int fd;
		if (md__client_connect(&c, t->sock) == 0 && md__client_hello(c, NULL, 0, &w, &fd) == 0)
			b = 'y';
	} else {
		struct md__msg m = { .hdr = { .type = MD_MSG_HELLO, .seq = 3 } }, r;
		unsigned char buf[128];
		m.u.hello.pid = claim;
		ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
		if (n > 0 && td_raw(t, buf, (size_t)n, &r) == MD_MSG_ERROR && r.u.text.status == -EPERM)
			b = 'y';	/* refused, as it should be */
	}
	if (write(report, &b, 1) != 1 || read(sync, &b, 1) < 0)
		_exit(1);
	_exit(0);
}

TEST_IMPL(daemon_agent_in_pid_namespace)
{
	/* A VMM in a container knows only its pid in its own namespace: the
	 * daemon takes that pid in HELLO, and lists the agent by its pid in
	 * the daemon's. A pid that is neither is still refused. */
	struct tdaemon t;
	int sync[2], report[2];

	td_start(&t, 16);
	for (int claim = 2; claim >= 0; claim -= 2) {	/* refused first: none listed */
		ASSERT(pipe(sync) == 0 && pipe(report) == 0);
		pid_t kid = fork();
		ASSERT(kid >= 0);
		if (kid == 0) {
			if (unshare(CLONE_NEWPID) != 0) {
				char e = (char)errno;
				_exit(write(report[1], "e", 1) == 1 && write(report[1], &e, 1) == 1 ? 0 : 1);
			}
			pid_t inner = fork();	/* pid 1 of the new namespace */
			if (inner == 0)
				hello_in_namespace(&t, (uint32_t)claim, report[1], sync[0]);
			int st = 0;
			waitpid(inner, &st, 0);
			_exit(inner > 0 && WIFEXITED(st) ? WEXITSTATUS(st) : 1);
		}
		char b = 0;
		ASSERT_EQ(read(report[0], &b, 1), 1);
		if (b == 'e') {
			char e = 0;
			ASSERT_EQ(read(report[0], &e, 1), 1);
			child_release(kid, sync);
			SKIP("cannot make a pid namespace: %s", strerror(e));
		}
		ASSERT_EQ(b, 'y');
		/* Listed by its pid here: the namespace's only process is the
		 * kid's child. */
		json_t *st = td_status(&t), *a;
		size_t i, listed = 0;
		pid_t mine = 0;
		json_array_foreach(json_object_get(st, "agents"), i, a) {
			listed++;
			mine = (pid_t)json_integer_value(json_object_get(a, "pid"));
		}
		json_decref(st);
		ASSERT_EQ(listed, claim == 0 ? 1u : 0u);
		if (claim == 0) {
			char path[64], line[256];
			snprintf(path, sizeof(path), "/proc/%d/status", (int)mine);
			FILE *f = fopen(path, "r");
			ASSERT(f != NULL);
			pid_t ppid = 0;
			while (fgets(line, sizeof(line), f))
				if (sscanf(line, "PPid: %d", &ppid) == 1)
					break;
			fclose(f);
			ASSERT_EQ(ppid, kid);
		}
		child_release(kid, sync);
		close(report[0]);
		close(report[1]);
	}
	td_stop(&t);
	return 0;
}

/* A sighting is matched by the whole hash: other content whose hash has
 * the bucket and the top 16 bits of a sighting's (bits 0 and 26 are in no
 * bucket domain.c makes, in tables of up to 1 Mi slots) is no second copy,
 * and its publication names no candidate. With those 16 bits alone, the
 * asker was told to publish a page nobody else had, and the first page's
 * agent was named a page of other content. */
TEST_IMPL(daemon_sightings_whole_hash)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	unsigned char page[PG];
	uint64_t got[8];
	uint32_t s1, first;
	int fd;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, "whole", &w, &fd);
	td_fill_page(page, 9);
	uint64_t h = md__page_hash(page);
	uint64_t near[2] = { h ^ 1, h ^ 1ull << 26 };
	for (int i = 0; i < 2; i++) {
		ASSERT((near[i] ^ (near[i] >> 29)) % (1u << 20) / 2 == (h ^ (h >> 29)) % (1u << 20) / 2);
		ASSERT_EQ(near[i] >> 48, h >> 48);
	}
	uint64_t a[4] = { 0x7f0000100000ull, 0x7f0000101000ull, 0x7f0000102000ull, 0x7f0000103000ull };
	ASSERT_EQ(md__client_lookup(c, &h, &a[0], 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	ASSERT_EQ(md__client_lookup(c, &near[0], &a[1], 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	ASSERT_EQ(md__client_lookup(c, &near[1], &a[2], 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	/* A second copy of near[0]'s content is one (its sighting waits). */
	ASSERT_EQ(md__client_lookup(c, &near[0], &a[3], 1, &s1), 0);
	ASSERT_EQ(s1, MD_LOOKUP_PUBLISH);
	/* The page of h published: near[0]'s sighting is not its content. */
	ASSERT_EQ(md__client_publish(c, &h, page, 1, &first), 0);
	ASSERT_EQ(lookup_caught_up(c), 0);	/* candidates would have come before its answer */
	ASSERT_EQ(md__client_take_candidates(c, got, 8), 0);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_sightings_table)
{
	/* The first-sighting table is sized by the RAM the domain's agents
	 * registered (one slot per page, 64 Ki at least), and a page whose
	 * address an entry cannot hold meets sightings but is never one. */
	struct tdaemon t;
	struct md__msg_welcome w;
	unsigned char page[PG];
	uint32_t s1;
	int fd;

	td_start(&t, 64);
	struct md__client *c = td_agent(&t, "seen", &w, &fd);
	td_fill_page(page, 7);
	uint64_t h = md__page_hash(page), high = 1ull << 47, a1 = 0x7f0000001000ull;
	ASSERT_EQ(md__client_lookup(c, &h, &high, 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	uint64_t high2 = high + PG;
	ASSERT_EQ(md__client_lookup(c, &h, &high2, 1, &s1), 0);
	ASSERT_EQ(s1, 0);	/* the first was not recorded */
	ASSERT_EQ(md__client_lookup(c, &h, &a1, 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	ASSERT_EQ(md__client_lookup(c, &h, &high, 1, &s1), 0);
	ASSERT_EQ(s1, MD_LOOKUP_PUBLISH);
	json_t *st = td_status(&t);
	ASSERT_EQ(td_int(td_domain(st, w.domain_id), "sighting_slots"), 65536);
	json_decref(st);

	/* 300,000 pages registered: the next lookup remakes it with 256 Ki
	 * slots, empty (a sighting lost costs a pass, nothing more). */
	uint64_t ctr[2] = { 1, 300000ull * PG };
	ASSERT_EQ(md__client_report(c, ctr, 2), 0);
	uint64_t a2 = 0x7f0000002000ull;
	ASSERT_EQ(md__client_lookup(c, &h, &a2, 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	st = td_status(&t);
	ASSERT_EQ(td_int(td_domain(st, w.domain_id), "sighting_slots"), 262144);
	json_decref(st);
	/* Back to a small registration: a quarter or less shrinks it. */
	ctr[1] = 1000ull * PG;
	ASSERT_EQ(md__client_report(c, ctr, 2), 0);
	ASSERT_EQ(md__client_lookup(c, &h, &a2, 1, &s1), 0);
	st = td_status(&t);
	ASSERT_EQ(td_int(td_domain(st, w.domain_id), "sighting_slots"), 65536);
	json_decref(st);

	/* A page of another hash in the same bucket (as domain.c places
	 * them, in 64 Ki slots), looked up between two copies, does not
	 * make them miss each other: a bucket holds two sightings. */
	td_fill_page(page, 8);
	h = md__page_hash(page);
	uint64_t ha = 0x7f0000010000ull, hb = 0x7f0000020000ull, hc = 0x7f0000030000ull;
	uint64_t other = h ^ 1ull << 63;	/* another tag (the top 16 bits), same bucket */
	ASSERT_EQ((other ^ (other >> 29)) & 0xfffe, (h ^ (h >> 29)) & 0xfffe);
	ASSERT_EQ(md__client_lookup(c, &h, &ha, 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	ASSERT_EQ(md__client_lookup(c, &other, &hc, 1, &s1), 0);
	ASSERT_EQ(s1, 0);
	ASSERT_EQ(md__client_lookup(c, &h, &hb, 1, &s1), 0);
	ASSERT_EQ(s1, MD_LOOKUP_PUBLISH);
	close(fd);
	md__client_free(c);

	/* A user other than root that claims more than its process has
	 * resident sizes no table for it: 2^45 bytes claimed leave it at the
	 * least (8 MiB would have been given). */
	struct passwd *pw = getpwnam("nobody");
	if (getuid() == 0 && pw) {
		pid_t kid = fork();
		ASSERT(kid >= 0);
		if (kid == 0) {
			struct md__msg_welcome w2;
			struct md__client *n;
			int fd2;
			uint64_t big[2] = { 1, 1ull << 45 }, a3 = 0x7f0000003000ull;
			if (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) ||
			    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid))
				_exit(10);
			if (md__client_connect(&n, t.sock) || md__client_hello(n, "claims", 0, &w2, &fd2) ||
			    md__client_report(n, big, 2) || md__client_lookup(n, &h, &a3, 1, &s1))
				_exit(11);
			json_t *js = td_status(&t);
			long long slots = td_int(td_domain(js, w2.domain_id), "sighting_slots");
			_exit(slots == 65536 ? 0 : 12);
		}
		int kst;
		ASSERT_EQ(waitpid(kid, &kst, 0), kid);
		ASSERT(WIFEXITED(kst));
		ASSERT_EQ(WEXITSTATUS(kst), 0);
	}
	td_stop(&t);
	return 0;
}

/* The administrator's UNMERGE of all, a user's agent still waiting its
 * turn (root's own agent first): the user's RESUME of it took it out of
 * the queue, and the administrator was told the unmerge went well, its
 * pages never copied. Sent, the same RESUME was refused: now it is while
 * queued too, and the user's PAUSE of it (allowed) leaves the
 * administrator's unmerge to come. */
TEST_IMPL(daemon_user_keeps_admin_unmerge_queued)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	struct md__msg_control ctl;
	struct control_call k;
	struct fake_agent o;
	int fd;
	if (getuid() != 0 || !getpwnam("nobody"))
		SKIP("needs root and a 'nobody' user (65534)");
	td_start(&t, 16);
	fake_agent_start_as(&t, &o, 65534);
	struct md__client *c = td_agent(&t, NULL, &w, &fd);	/* newest: first in the queue */
	struct md__client *cli = td_connect(&t);
	control_start(&k, cli, MD_CTL_UNMERGE, 0, NULL, NULL);
	next_control(c, &ctl);
	ASSERT_EQ(ctl.op, MD_CTL_UNMERGE);
	uint32_t unmerge = ctl.token;
	ASSERT_EQ(fake_agent_got(&o, 300), 0);	/* nobody's agent waits its turn */
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		char text[MD_TEXT_MAX + 1];
		if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
			_exit(10);
		struct md__client *nc = td_connect(&t);
		int err = control(nc, MD_CTL_RESUME, o.pid, NULL, NULL, text);
		if (err != -EPERM || !strstr(text, "administrator")) {
			fprintf(stderr, "  nobody's RESUME of its queued agent: %d '%s'\n", err, text);
			_exit(11);
		}
		err = control(nc, MD_CTL_PAUSE, o.pid, NULL, NULL, text);
		if (err != 0) {
			fprintf(stderr, "  nobody's PAUSE of its queued agent: %d '%s'\n", err, text);
			_exit(12);
		}
		_exit(0);
	}
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	ASSERT_EQ(fake_agent_got(&o, 2000), 'P');
	ASSERT_EQ(md__client_control_done(c, unmerge, 0, NULL), 0);
	ASSERT_EQ(fake_agent_got(&o, 5000), 'U');	/* its turn came */
	fake_agent_tell(&o, 'a');
	ASSERT_EQ(control_end(&k), 0);
	ASSERT(strstr(k.text, "2 agent") != NULL);
	fake_agent_end(&o);
	md__client_free(cli);
	md__client_free(c);
	close(fd);
	td_stop(&t);
	return 0;
}

/* A process whose agent holds a pool page exec's (QEMU's cpr-exec) while
 * a child it forked keeps the old connection open, and its new agent's
 * HELLO, which takes that connection's record over, is refused (a domain
 * too many for its user). The record was left as no close would leave it:
 * never looked at again, its references (pages nobody maps since the
 * exec) kept until the process exited. Now it is left as the old
 * connection's close would have: the exec is seen, the references go. */
TEST_IMPL(daemon_refused_takeover_sheds_references)
{
	struct tdaemon t;
	pid_t held[MD_D_DOMAINS_PER_UID];
	int in[2], ready[2], go[2];
	td_start(&t, 16);
	hold_domains(&t, held, MD_D_DOMAINS_PER_UID);	/* as many as root may have */
	ASSERT(pipe(in) == 0 && pipe(ready) == 0 && pipe(go) == 0);
	pid_t p = fork();
	ASSERT(p >= 0);
	if (p == 0) {
		struct md__client *c;
		struct md__msg_welcome w;
		static unsigned char page[PG];
		uint64_t hash;
		uint32_t slot;
		int fd;
		char x;
		close(in[1]), close(ready[0]), close(go[1]);
		if (md__client_open(&c, t.sock, "held0", 0, &w, &fd) != 0)
			_exit(100);
		td_fill_page(page, 41);
		hash = md__page_hash(page);
		if (md__client_publish(c, &hash, page, 1, &slot) != 0)
			_exit(101);
		pid_t q = fork();	/* keeps the connection open past the exec */
		if (q == 0) {
			for (;;)
				pause();
		}
		if (q < 0 || write(ready[1], &q, sizeof(q)) != sizeof(q) || read(go[0], &x, 1) != 1)
			_exit(102);
		if (dup2(in[0], 0) != 0)
			_exit(103);
		const char *first = getenv("MD_TEST_PRELOAD_FIRST");	/* libasan */
		char preload[1024], exe[1024];
		snprintf(preload, sizeof(preload), "%s%s%s/libmemdedup-preload.so", first ? first : "",
			 first ? ":" : "", build_dir());
		snprintf(exe, sizeof(exe), "%s/testproc", build_dir());
		setenv("LD_PRELOAD", preload, 1);
		setenv("MEMDEDUP_SOCKET", t.sock, 1);
		setenv("MEMDEDUP_SCAN", "1", 1);
		setenv("MEMDEDUP_DOMAIN", "new", 1);
		setenv("MEMDEDUP_KERNEL_KSM", "0", 1);
		execl(exe, "testproc", (char *)NULL);
		_exit(127);
	}
	close(in[0]), close(ready[1]), close(go[0]);
	pid_t q;
	ASSERT_EQ(read(ready[0], &q, sizeof(q)), (ssize_t)sizeof(q));
	ASSERT_EQ(td_domains_int(&t, "references"), 1);	/* the page it published */
	ASSERT_EQ(write(go[1], "x", 1), 1);
	ASSERT_EQ(write(in[1], "map 64\n", 7), 7);	/* its agent joins memdedupd */
	long long refs = 1;
	for (int i = 0; i < 500 && refs; i++) {
		usleep(10000);
		refs = td_domains_int(&t, "references");
	}
	ASSERT_EQ(td_sh("grep -q 'too many domains' %s/log", t.dir), 0);	/* refused */
	close(in[1]);	/* testproc ends */
	int st;
	ASSERT_EQ(waitpid(p, &st, 0), p);
	kill(q, SIGKILL);
	for (int i = 0; i < MD_D_DOMAINS_PER_UID; i++) {
		kill(held[i], SIGKILL);
		waitpid(held[i], NULL, 0);
	}
	ASSERT_EQ(refs, 0);
	td_stop(&t);
	return 0;
}

/* Under root's pause of all, root's RESUME --pid of an agent scans it
 * alone, and outlives its reconnect, as its own pause does: the record
 * forgot it at the HELLO, and the WELCOME said the default pause (a
 * connection lost, a stalled daemon, undid the operator's resume). So
 * too a RESUME of an agent that is away ("gets it when back"), which was
 * lost (review). */
static void resumed_then_rejoins(int away)
{
	struct tdaemon t;
	td_start(&t, 16);
	int ready[2], go[2];
	ASSERT(pipe(ready) == 0 && pipe(go) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		/* Away: its own pause answered before it goes; else the
		 * default pause and the resume. */
		static const unsigned away_ops[] = { MD_CTL_PAUSE }, here_ops[] = { MD_CTL_PAUSE, MD_CTL_RESUME };
		char x = 0;
		close(ready[0]);
		close(go[1]);
		agent_answers_ops_then_goes(&t, NULL, away ? away_ops : here_ops, away ? 1 : 2, ready[1]);
		if (write(ready[1], &x, 1) != 1 || read(go[0], &x, 1) != 1)
			_exit(103);
		_exit(rejoin_paused(&t, 0) == 1 ? 0 : 2);	/* 0: it scans */
	}
	close(ready[1]);
	close(go[0]);
	char x, text[MD_TEXT_MAX + 1];
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	struct md__client *cli = td_connect(&t);
	if (away) {
		ASSERT_EQ(control(cli, MD_CTL_PAUSE, kid, NULL, NULL, text), 0);
		ASSERT_EQ(read(ready[0], &x, 1), 1);	/* gone, its record kept paused */
	}
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, 0, NULL, NULL, text), 0);	/* root: the default */
	ASSERT_EQ(control(cli, MD_CTL_RESUME, kid, NULL, NULL, text), 0);
	if (away)
		ASSERT(strstr(text, "when back"));
	else
		ASSERT_EQ(read(ready[0], &x, 1), 1);	/* gone after both */
	ASSERT_EQ(write(go[1], "g", 1), 1);
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	md__client_free(cli);
	close(ready[0]), close(go[1]);
	td_stop(&t);
}

TEST_IMPL(daemon_resume_by_pid_outlives_reconnect)
{
	resumed_then_rejoins(0);
	resumed_then_rejoins(1);
	return 0;
}

/* Whether t's memdedupd is paused with pages_to_scan pts (its status),
 * and a new agent's WELCOME says the same. */
static void daemon_holds(const struct tdaemon *t, int paused, long long pts)
{
	json_t *st = td_status(t), *dm = json_object_get(st, "daemon");
	ASSERT_EQ(json_is_true(json_object_get(dm, "paused")), paused);
	ASSERT_EQ(td_int(json_object_get(dm, "tunables"), "pages_to_scan"), pts);
	json_decref(st);
	struct md__msg_welcome w;
	int fd;
	struct md__client *agent = td_agent(t, NULL, &w, &fd);
	ASSERT_EQ(!!(w.state & MD_WELCOME_PAUSED), paused);
	ASSERT_EQ(w.tun.pages_to_scan, pts);
	md__client_free(agent);
	close(fd);
}

/* root's pause of all and tunables outlive memdedupd: one started again in
 * its run directory (after a SIGKILL, as an OOM kill or a crash) holds
 * them, and its agents find them in their WELCOME. They scanned again,
 * with the built-in tunables, and nothing said so (review). */
TEST_IMPL(daemon_pause_and_tunables_outlive_restart)
{
	struct tdaemon t;
	char text[MD_TEXT_MAX + 1];
	struct md__msg_welcome w;
	td_start(&t, 16);
	md__tunables_default(&w.tun);
	ASSERT(w.tun.pages_to_scan != 777);
	struct md__client *cli = td_connect(&t);
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, 0, NULL, NULL, text), 0);
	ASSERT_EQ(control(cli, MD_CTL_SET, 0, "pages_to_scan", "777", text), 0);
	md__client_free(cli);
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	td_restart(&t);
	daemon_holds(&t, 1, 777);
	ASSERT_EQ(td_sh("grep -q 'memdedupd.state: paused, pages_to_scan=777' %s/log", t.dir), 0);
	/* Resumed, and stopped plainly: started again, not paused. */
	cli = td_connect(&t);
	ASSERT_EQ(control(cli, MD_CTL_RESUME, 0, NULL, NULL, text), 0);
	md__client_free(cli);
	td_stop(&t);
	td_restart(&t);
	daemon_holds(&t, 0, 777);
	td_stop(&t);
	return 0;
}

/* A state file that is not whole and ours is said in the log and taken
 * for nothing: the built-in defaults, the daemon up. */
TEST_IMPL(daemon_state_file_malformed_ignored)
{
	static const struct {
		const char *text, *said;
		int mode;
		size_t len;	/* 0: strlen(text) */
	} bad[] = {
		{ "paused=1\npages_to_scan=777\nbogus=1\n", "line 3: unknown key", 0600, 0 },
		{ "paused=1\npages_to_scan=0\n", "line 2: pages_to_scan must be", 0600, 0 },
		{ "paused=2\n", "line 1: paused must be 0 or 1", 0600, 0 },
		{ "paused=1\npages_to_scan=777", "line 2 is not ended", 0600, 0 },
		{ "paused\n", "line 1 is no KEY=VALUE", 0600, 0 },
		{ "paused=1\n\0", "a NUL byte", 0600, 10 },
		{ "paused=1\n", "only we may write", 0666, 0 },
	};
	struct tdaemon t;
	struct md__tunables def;
	md__tunables_default(&def);
	td_start(&t, 16);
	td_stop(&t);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char path[400];
		snprintf(path, sizeof(path), "%s/memdedupd.state", t.dir);
		FILE *f = fopen(path, "w");
		size_t len = bad[i].len ? bad[i].len : strlen(bad[i].text);
		ASSERT(f && fwrite(bad[i].text, 1, len, f) == len && fclose(f) == 0);
		ASSERT_EQ(chmod(path, (mode_t)bad[i].mode), 0);
		ASSERT_EQ(td_sh(": > %s/log", t.dir), 0);
		td_restart(&t);
		daemon_holds(&t, 0, def.pages_to_scan);
		ASSERT_EQ(td_sh("grep -q 'memdedupd.state: .*%s.*the built-in defaults taken' %s/log", bad[i].said,
				t.dir), 0);
		td_stop(&t);
	}
	return 0;
}

/* The totals' general_profit saturates: five domains whose agents report
 * absurd zero pages (a damaged or lying agent's word) wrapped it negative,
 * an overflow of a signed integer. */
TEST_IMPL(daemon_totals_profit_saturates)
{
	struct tdaemon t;
	const char *names[5] = { "ra", "rb", "rc", "rd", "re" };
	int ready[2], stop[2];
	pid_t kid[5];
	char x;
	td_start(&t, 64);
	ASSERT(pipe(ready) == 0 && pipe(stop) == 0);
	for (int i = 0; i < 5; i++) {
		kid[i] = fork();
		ASSERT(kid[i] >= 0);
		if (kid[i] == 0) {
			struct md__msg_welcome w;
			int fd;
			close(stop[1]);
			uint64_t ctr[MD_CTR_COUNT] = { 0 };
			ctr[MD_CTR_ZERO_PAGES] = (uint64_t)1 << 62;	/* a damaged or lying agent's */
			struct md__client *c = td_agent(&t, names[i], &w, &fd);
			if (md__client_report(c, ctr, MD_CTR_COUNT) != 0)
				_exit(1);
			if (write(ready[1], "x", 1) != 1)
				_exit(2);
			while (read(stop[0], &x, 1) > 0)
				;
			_exit(0);
		}
	}
	close(stop[0]);
	for (int i = 0; i < 5; i++)
		ASSERT(read(ready[0], &x, 1) == 1);
	json_t *st = td_status(&t);
	json_t *tot = json_object_get(st, "totals");
	long long p = td_int(tot, "general_profit");
	fprintf(stderr, "  domains %lld, totals general_profit %lld\n", td_int(tot, "domains"), p);
	close(stop[1]);
	for (int i = 0; i < 5; i++)
		waitpid(kid[i], NULL, 0);
	ASSERT_EQ(td_int(tot, "domains"), 5);
	ASSERT_EQ(p, INT64_MAX);	/* each domain's at most a quarter of it */
	json_decref(st);
	td_stop(&t);
	return 0;
}

/* Under root's pause of all, root's RESUME --pid of an agent is the
 * process's as its PAUSE --pid is: an exec that keeps the guest (QEMU's
 * cpr-exec: a new agent says HELLO with MD_HELLO_NO_POOL_MAPS) kept a
 * PAUSE --pid, but lost the RESUME --pid (review). */
TEST_IMPL(daemon_resume_by_pid_outlives_exec)
{
	struct tdaemon t;
	td_start(&t, 16);
	int ready[2], go[2];
	ASSERT(pipe(ready) == 0 && pipe(go) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static const unsigned ops[] = { MD_CTL_PAUSE, MD_CTL_RESUME };
		char x = 0;
		close(ready[0]);
		close(go[1]);
		agent_answers_ops_then_goes(&t, NULL, ops, 2, ready[1]);
		if (write(ready[1], &x, 1) != 1 || read(go[0], &x, 1) != 1)
			_exit(103);
		_exit(rejoin_paused(&t, MD_HELLO_NO_POOL_MAPS) == 1 ? 0 : 2);	/* 0: it scans */
	}
	close(ready[1]);
	close(go[0]);
	char x, text[MD_TEXT_MAX + 1];
	ASSERT_EQ(read(ready[0], &x, 1), 1);
	struct md__client *cli = td_connect(&t);
	ASSERT_EQ(control(cli, MD_CTL_PAUSE, 0, NULL, NULL, text), 0);	/* root: the default */
	ASSERT_EQ(control(cli, MD_CTL_RESUME, kid, NULL, NULL, text), 0);
	ASSERT_EQ(read(ready[0], &x, 1), 1);	/* gone after both */
	json_t *st = td_status(&t);
	json_t *a = td_find(json_object_get(st, "agents"), "pid", kid);
	ASSERT(a);
	ASSERT(json_is_false(json_object_get(a, "paused")));	/* before the exec: scans */
	json_decref(st);
	ASSERT_EQ(write(go[1], "g", 1), 1);
	int wst;
	ASSERT_EQ(waitpid(kid, &wst, 0), kid);
	ASSERT(WIFEXITED(wst));
	ASSERT_EQ(WEXITSTATUS(wst), 0);
	md__client_free(cli);
	close(ready[0]), close(go[1]);
	td_stop(&t);
	return 0;
}
