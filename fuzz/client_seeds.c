/* client_seeds.c - writes sessions of an agent with a daemon, in
 * fuzz_client.c's input format, into a corpus directory as seed-<name>
 * (`make fuzz-seeds`): an agent's life (connect, each request answered,
 * the unsolicited messages, a reconnect), late replies and what they
 * granted given back (nothing of what they refused), refused UNREFs
 * split, CONTROL_DONEs kept while the daemon is behind, the HELLO said
 * again without its flags, pools that are not what the protocol promises,
 * replies out of protocol, full queues, the daemon going (in the middle
 * of a message too), and the
 * engine's side: merges with the slots the daemon names, a scanner's
 * batches and CANDIDATES.
 * Encoded by this version's encoder with seqs relative to the requests
 * (fuzz_client.h), they follow the protocol as it changes; the replay
 * (fuzz_client.c) fails on a corpus that no longer reaches each outcome. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_client.h"
#include "protocol.h"

#define REL(k) (0x80000000u | ((uint32_t)(k) & 0x7fffffffu))

/* The session being written, and its last SEND chunk (whose bytes grow as
 * messages are added). */
static unsigned char sess[4u << 20];
static size_t sess_len, chunk_at;
static int in_chunk;
static int bad;
static struct md__msg m;

static void begin(void)
{
	sess_len = 0;
	in_chunk = 0;
}

static void byte(unsigned b)
{
	sess[sess_len++] = (unsigned char)b;
}

/* A call (FC_*) with its flags and argument bytes (as many as it takes). */
static void call(unsigned op, unsigned flags, unsigned a, unsigned b)
{
	static const unsigned char nargs[FC_OP_END] = {
		[FC_LOOKUP] = 1, [FC_PUBLISH_EACH] = 1, [FC_PUBLISH] = 1, [FC_REF] = 2, [FC_REPORT] = 1,
		[FC_READS] = 1, [FC_CONTROL_DONE] = 1, [FC_CANDIDATES] = 1, [FC_REQUEST] = 2,
		[FC_GIVE_BACK] = 2, [FC_HELLO] = 1, [FC_SCAN] = 1, [FC_MERGE] = 2, [FC_TOUCH] = 1,
		[FC_UNREGISTER] = 1,
	};
	in_chunk = 0;
	byte(op | flags << 5);
	if (nargs[op] > 0)
		byte(a);
	if (nargs[op] > 1)
		byte(b);
}

static void op0(unsigned op)
{
	call(op, 0, 0, 0);
}

/* The next bytes in a SEND of their own, with a descriptor of fd_kind. */
static void send_fd(unsigned fd_kind)
{
	byte(FC_SEND | fd_kind << 5);
	chunk_at = sess_len;
	sess_len += 3;
	in_chunk = 1;
}

static void bytes(const void *b, size_t n)
{
	if (!in_chunk)
		send_fd(FC_FD_NONE);
	memcpy(sess + sess_len, b, n);
	sess_len += n;
	size_t len = sess_len - chunk_at - 3;
	sess[chunk_at] = (unsigned char)len;
	sess[chunk_at + 1] = (unsigned char)(len >> 8);
	sess[chunk_at + 2] = (unsigned char)(len >> 16);
}

/* m as type, seq as given (REL: relative to the last request). */
static void msg(unsigned type, uint32_t seq)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	m.hdr.type = (uint16_t)type;
	m.hdr.seq = seq;
	ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
	if (n < 0) {
		fprintf(stderr, "client_seeds: a %s does not encode: %s\n", md__msg_type_name(type),
			strerror((int)-n));
		bad = 1;
		return;
	}
	bytes(buf, (size_t)n);
	memset(&m, 0, sizeof(m));
}

static void save(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(sess, 1, sess_len, f) != sess_len || fclose(f) != 0) {
		fprintf(stderr, "client_seeds: cannot write %s\n", path);
		bad = 1;
	}
}

static void welcome(uint64_t generation, uint32_t pool_pages, unsigned fd_kind)
{
	send_fd(fd_kind);
	m.u.welcome.domain_id = 1;
	m.u.welcome.pool_pages = pool_pages;
	m.u.welcome.generation = generation;
	md__tunables_default(&m.u.welcome.tun);
	msg(MD_MSG_WELCOME, REL(1));
}

/* A connect the daemon welcomes with a pool of FC_POOL_PAGES. */
static void join(uint64_t generation)
{
	welcome(generation, FC_POOL_PAGES, FC_FD_POOL);
	op0(FC_CONNECT);
}

static void ack(int status, uint32_t seq)
{
	m.u.ack.status = status;
	msg(MD_MSG_ACK, seq);
}

static void error_msg(int status, const char *text, uint32_t seq)
{
	m.u.text.status = status;
	snprintf(m.u.text.text, sizeof(m.u.text.text), "%s", text);
	msg(MD_MSG_ERROR, seq);
}

static void lookup_r(uint32_t seq, uint32_t n, const uint32_t *slot1)
{
	m.u.lookup_r.n = n;
	memcpy(m.u.lookup_r.slot1, slot1, n * sizeof(*slot1));
	msg(MD_MSG_LOOKUP_R, seq);
}

static void publish_r(uint32_t seq, uint32_t first, uint32_t n)
{
	m.u.publish_r.first_slot = first;
	m.u.publish_r.n = n;
	msg(MD_MSG_PUBLISH_R, seq);
}

static void control(unsigned op, int pid, uint32_t token)
{
	m.u.control.op = op;
	m.u.control.pid = pid;
	m.u.control.token = token;
	if (op == MD_CTL_SET) {
		strcpy(m.u.control.key, "sleep_millisecs");
		strcpy(m.u.control.value, "50");
	}
	msg(MD_MSG_CONTROL, 0);
}

/* CANDIDATES naming n guest pages from page first on. */
static void candidates(unsigned first, unsigned n)
{
	m.u.candidates.n = n;
	for (unsigned i = 0; i < n; i++)
		m.u.candidates.addr[i] = FC_RAM_ADDR + (uint64_t)(first + i) % FC_RAM_PAGES * MD_MSG_PAGE;
	msg(MD_MSG_CANDIDATES, 0);
}

static void share(uint32_t part)
{
	m.u.share.part = part;
	msg(MD_MSG_SHARE, 0);
}

/* An agent's life: every request answered, unsolicited messages, the
 * CLI's requests, a HELLO again, a drop and a reconnect to the same
 * daemon. */
static void agent(const char *dir)
{
	begin();
	join(7);
	lookup_r(REL(1), 4, (uint32_t[]){ 1, 0, MD_LOOKUP_PUBLISH, 3 });
	call(FC_LOOKUP, 0, 3, 0);
	ack(0, REL(1));
	call(FC_REF, 0, 1, 0);	/* slots 0, 1 */
	publish_r(REL(1), 4, 1);
	publish_r(REL(2), 5, 1);
	call(FC_PUBLISH_EACH, 0, 1, 0);
	ack(0, REL(1));
	call(FC_REF, 1 | 4, 0, 2);	/* UNREF of a slot held: 4 */
	ack(0, REL(1));
	call(FC_REPORT, 0, 8, 0);
	ack(0, REL(1));
	call(FC_READS, 0, 3, 0);
	publish_r(REL(1), 6, 2);
	call(FC_PUBLISH, 0, 1, 0);
	control(MD_CTL_SET, 0, 9);
	control(MD_CTL_PAUSE, 0, 10);
	candidates(0, 3);
	share(MD_SHARE_ALL / 3);
	op0(FC_NEXT_CONTROL);
	ack(0, REL(1));
	call(FC_CONTROL_DONE, 0, 9, 0);
	call(FC_CANDIDATES, 0, 0, 0);
	op0(FC_SHARE);
	static const char json[] = "{\"agents\": []}";
	m.u.status_r.json = json;
	m.u.status_r.len = sizeof(json) - 1;
	msg(MD_MSG_STATUS_R, REL(1));
	call(FC_REQUEST, 0, 0, 16);
	m.u.text.status = 0;
	strcpy(m.u.text.text, "paused 2 agents");
	msg(MD_MSG_CONTROL_R, REL(1));
	call(FC_REQUEST, 0, 1, 16);
	welcome(7, FC_POOL_PAGES, FC_FD_POOL);
	call(FC_HELLO, 0, 2, 0);
	op0(FC_DROP);
	join(7);
	ack(0, REL(1));
	call(FC_REPORT, 0, 1, 0);
	save(dir, "agent");
}

/* After a reply out of protocol: the next call finds the connection gone,
 * the engine connects again. */
static void again(uint64_t generation)
{
	call(FC_REPORT, 0, 0, 0);
	join(generation);
}

/* Replies that come after their request timed out: what they grant goes
 * back (UNREF) before the next request; a refused UNREF of several slots
 * goes again, a slot at a time. */
static void late(const char *dir)
{
	begin();
	join(8);
	call(FC_LOOKUP, 0, 0, 0);	/* times out */
	lookup_r(REL(0), 1, (uint32_t[]){ 2 });
	ack(0, REL(1));
	call(FC_REPORT, 0, 0, 0);
	call(FC_PUBLISH_EACH, 0, 1, 0);	/* two pages, both late */
	publish_r(REL(-1), 3, 1);
	publish_r(REL(0), 4, 1);
	ack(0, REL(1));	/* the UNREF of slots 3 and 4 */
	ack(0, REL(2));
	call(FC_REPORT, 0, 0, 0);
	call(FC_REF, 0, 2, 8);	/* slots 8-10: late */
	ack(0, REL(0));
	ack(0, REL(1));
	ack(0, REL(2));
	call(FC_READS, 0, 0, 0);
	call(FC_PUBLISH, 0, 3, 0);	/* late, and the next one fails at once */
	call(FC_LOOKUP, 0, 1, 0);
	publish_r(REL(0), 11, 4);
	call(FC_CANDIDATES, 0, 0, 0);	/* reads it: given back with the next request */
	ack(0, REL(1));
	ack(-ENOENT, REL(2));
	call(FC_REPORT, 0, 0, 0);
	call(FC_REF, 1, 2, 20);	/* an UNREF of slots 20-22: late, refused */
	ack(-EINVAL, REL(0));
	for (int i = 1; i <= 3; i++)
		ack(i == 2 ? -EINVAL : 0, REL(i));
	ack(0, REL(4));
	call(FC_REPORT, 0, 0, 0);
	/* A reply owed for too long: the connection goes. */
	call(FC_LOOKUP, 0, 0, 0);
	op0(FC_SLEEP);
	call(FC_REPORT, 0, 0, 0);
	save(dir, "late");
}

/* Late replies that grant nothing: a REF refused, and a PUBLISH
 * answered with another count of slots (out of protocol: the connection
 * goes); PUBLISH_EACHes answered out of protocol, in time, by more slots
 * than one page takes, and by an ACK. Whatever the client gave back of
 * them, or let its caller hold (given back here), would be slots the
 * daemon never granted: the ledger of fuzz_client.c traps. */
static void late_refused(const char *dir)
{
	begin();
	join(21);
	call(FC_REF, 0, 2, 30);	/* slots 30-32: late */
	ack(-EINVAL, REL(0));	/* refused: nothing to give back */
	ack(0, REL(1));
	call(FC_REPORT, 0, 0, 0);
	call(FC_PUBLISH, 0, 1, 0);	/* two pages: late */
	publish_r(REL(0), 40, 3);	/* given three slots */
	call(FC_REPORT, 0, 0, 0);
	again(21);
	publish_r(REL(1), 50, 2);	/* one page given two slots */
	call(FC_PUBLISH_EACH, 0, 0, 0);
	call(FC_REF, 1 | 4, 0, 100);	/* an UNREF of what it holds: none (slot 100 then) */
	again(21);
	ack(0, REL(1));	/* the UNREF owed to this connection, sent first */
	publish_r(REL(2), 60, 1);	/* the first page's slot */
	ack(0, REL(3));	/* the second page's answered by an ACK (of status 0: slot 0) */
	call(FC_PUBLISH_EACH, 0, 1, 0);
	call(FC_REF, 1 | 4, 1, 100);
	again(21);
	ack(0, REL(1));	/* the UNREF of what the connection owes (slot 60 given back among it) */
	ack(0, REL(2));
	call(FC_REPORT, 0, 0, 0);
	save(dir, "late-refused");
}

/* CONTROL_DONEs while a reply is late: kept, and sent in order once it
 * came, when the agent looks for CONTROLs (the CLI waits for them). */
static void dones_kept(const char *dir)
{
	begin();
	join(22);
	call(FC_LOOKUP, 0, 0, 0);	/* times out */
	control(MD_CTL_PAUSE, 0, 21);
	control(MD_CTL_RESUME, 0, 22);
	call(FC_CONTROL_DONE, 0, 21, 0);	/* behind the LOOKUP: kept */
	call(FC_CONTROL_DONE, 0, 22, 0);
	lookup_r(REL(0), 1, (uint32_t[]){ 0 });
	ack(0, REL(1));
	ack(0, REL(2));
	op0(FC_NEXT_CONTROL);	/* the two CONTROLs; then the LOOKUP settled, both DONEs sent */
	save(dir, "dones-kept");
}

/* Replies that grant the caller nothing, each followed by an UNREF of what
 * the caller holds: a client that took one as a grant gives back slots
 * the daemon never granted (the ledger traps). A PUBLISH of two pages
 * answered in time by one slot; a REF and a PUBLISH_EACH refused by ERRORs
 * of status 0; LOOKUPs of two answered by three entries and by one (the
 * harness traps a LOOKUP taken from either); a late PUBLISH_EACH's replies
 * after a PUBLISH_R of the HELLO's seq, which no request owes; a late
 * PUBLISH of two pages given one slot. */
static void not_granted(const char *dir)
{
	begin();
	join(25);
	publish_r(REL(1), 40, 1);
	call(FC_PUBLISH, 0, 1, 0);
	call(FC_REF, 1 | 4, 1, 100);	/* an UNREF of what it holds: none (slots 100, 101 then) */
	again(25);
	ack(0, REL(1));	/* the UNREF owed to this connection, sent first */
	error_msg(0, "refused", REL(2));
	call(FC_REF, 0, 1, 44);	/* slots 44, 45 */
	error_msg(0, "refused", REL(1));
	error_msg(0, "refused", REL(2));
	call(FC_PUBLISH_EACH, 0, 1, 0);
	ack(0, REL(1));
	call(FC_REF, 1 | 4, 1, 100);
	lookup_r(REL(1), 3, (uint32_t[]){ 1, 2, 3 });
	call(FC_LOOKUP, 0, 1, 0);
	again(25);
	lookup_r(REL(1), 1, (uint32_t[]){ 1 });
	call(FC_LOOKUP, 0, 1, 0);
	again(25);
	call(FC_PUBLISH_EACH, 0, 1, 0);	/* two pages, both late */
	publish_r(REL(-2), 9, 1);	/* the HELLO's seq */
	publish_r(REL(-1), 8, 1);
	publish_r(REL(0), 10, 1);
	call(FC_REF, 1 | 4, 1, 100);
	again(25);
	ack(0, REL(1));
	ack(0, REL(2));
	call(FC_REPORT, 0, 0, 0);
	call(FC_PUBLISH, 0, 1, 0);	/* two pages: late */
	publish_r(REL(0), 50, 1);	/* given one slot */
	call(FC_REPORT, 0, 0, 0);
	call(FC_REF, 1 | 4, 1, 100);
	again(25);
	ack(0, REL(1));
	ack(0, REL(2));
	call(FC_REPORT, 0, 0, 0);
	save(dir, "not-granted");
}

/* Refusals: a REF, a PUBLISH, an UNREF of the engine's, which it sends
 * again a slot at a time. */
static void refused(const char *dir)
{
	begin();
	join(9);
	ack(-EINVAL, REL(1));
	call(FC_REF, 0, 1, 30);
	error_msg(-ENOSPC, "pool full", REL(1));
	publish_r(REL(2), 6, 1);
	call(FC_PUBLISH_EACH, 0, 1, 0);
	call(FC_MERGE, 0, 1, 0);	/* pages 0, 1 */
	call(FC_TOUCH, 0, 0, 0);
	call(FC_TOUCH, 0, 1, 0);
	op0(FC_REAP);
	ack(-EINVAL, REL(1));	/* the UNREF of both */
	ack(0, REL(2));
	ack(0, REL(3));
	op0(FC_UNREFS);
	save(dir, "refused");
}

/* The HELLO with flags refused as malformed (an older daemon): said again
 * without them, on a new connection. */
static void retry(const char *dir)
{
	begin();
	send_fd(FC_FD_NONE);
	error_msg(-EBADMSG, "malformed HELLO", REL(1));
	welcome(10, FC_POOL_PAGES, FC_FD_POOL);
	op0(FC_CONNECT);
	ack(0, REL(1));
	call(FC_REPORT, 0, 0, 0);
	save(dir, "retry");
}

/* Pools that are not what the protocol promises, then ones too short for
 * the slots named: nothing past the file is read or mapped. */
static void pools(const char *dir)
{
	static const unsigned refused[] = { FC_FD_NONE, FC_FD_WRITABLE, FC_FD_UNSEALED, FC_FD_PIPE };
	begin();
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		welcome(11, FC_POOL_PAGES, refused[i]);
		op0(FC_CONNECT);
	}
	welcome(11, 0x20000000, FC_FD_POOL);	/* past the engine's slots */
	op0(FC_CONNECT);
	welcome(11, FC_POOL_PAGES, FC_FD_TWO);
	op0(FC_CONNECT);
	call(FC_MERGE, 0, 3, 0);	/* pages 0-3, slots 0-3 */
	op0(FC_DROP);
	welcome(12, FC_POOL_PAGES, FC_FD_SHORT);
	op0(FC_CONNECT);
	call(FC_MERGE, 0, 3, 0);	/* slots 0, 1 in the file, 2, 3 past it */
	call(FC_MERGE, 0, 4 * 4 + 3, 14);	/* pages 4-7 */
	op0(FC_DROP);
	/* As many slots as the engine takes, a file of FC_POOL_PAGES. */
	welcome(12, 0x1fffffff, FC_FD_POOL);
	op0(FC_CONNECT);
	call(FC_MERGE, 0, 2 * 4 + 3, 14);	/* pages 2-5: slots 14, 15 in the file, 16, 17 past it */
	call(FC_MERGE, 0, 4 * 4 + 3, 254);	/* slots UINT32_MAX - 1, UINT32_MAX, 0, 1 */
	op0(FC_DROP);
	welcome(13, FC_POOL_PAGES, FC_FD_EMPTY);
	op0(FC_CONNECT);
	call(FC_MERGE, 0, 3, 0);
	call(FC_MERGE, 0, 4 * 4 + 3, 0xfffffffe);
	save(dir, "pools");
}

/* Merges with the daemon's slots, written over, reaped, given back;
 * pages unregistered; a reconnect to another daemon forgets the slots. */
static void merges(const char *dir)
{
	begin();
	join(14);
	ack(0, REL(1));
	call(FC_REF, 0, 3, 0);	/* slots 0-3 held */
	call(FC_MERGE, 1, 3, 0);	/* pages 0-3 with them */
	call(FC_MERGE, 0, 4 * 4 + 3, 4);	/* pages 4-7 with slots 4-7 */
	call(FC_TOUCH, 0, 1, 0);
	op0(FC_REAP);
	ack(0, REL(1));
	op0(FC_UNREFS);
	call(FC_UNREGISTER, 1, 2, 0);	/* stays mapped: a private copy */
	call(FC_UNREGISTER, 0, 3, 0);	/* gone */
	ack(0, REL(1));
	op0(FC_UNREFS);
	op0(FC_HANGUP);
	call(FC_REPORT, 0, 0, 0);	/* the daemon went */
	call(FC_REF, 1, 1, 5);	/* owed to the next connection */
	join(14);
	ack(0, REL(1));
	ack(0, REL(2));
	call(FC_REPORT, 0, 0, 0);
	op0(FC_CLOSE);
	call(FC_REPORT, 0, 0, 0);
	join(15);
	call(FC_MERGE, 0, 4 * 4 + 3, 4);
	save(dir, "merges");
}

/* An UNREF sent whole whose ACK never came: the daemon hung up after
 * reading it. It may have applied it, so the next connection to the same
 * daemon must not have it again (the ledger traps a slot given back twice):
 * one to send there is only one the connection could not send whole. */
static void unref_unanswered(const char *dir)
{
	begin();
	join(9);
	ack(0, REL(1));
	call(FC_REF, 0, 0, 5);	/* slot 5 held */
	op0(FC_HANGUP);
	call(FC_REF, 1 | 4, 0, 0);	/* its UNREF: sent, the connection gone */
	join(9);
	ack(0, REL(1));	/* for an UNREF sent again, were there one */
	ack(0, REL(2));
	call(FC_REPORT, 0, 0, 0);
	save(dir, "unref-unanswered");
}

/* The scanner's batches: pages seen, then looked up, pinned, published and
 * merged with what the daemon says; then CANDIDATES visited first. */
static void scan(const char *dir)
{
	begin();
	join(16);
	call(FC_SCAN, 0, 7, 0);	/* 8 pages seen */
	/* 8 pages looked up: pages 0 and 1 in the pool (slots 0 and 1), 2
	 * and 3 to publish, the others not. */
	lookup_r(REL(1), 8, (uint32_t[]){ 1, 2, MD_LOOKUP_PUBLISH, MD_LOOKUP_PUBLISH, 0, 0, 0, 0 });
	ack(0, REL(2));	/* the REF of slots 0, 1 */
	publish_r(REL(3), 2, 1);
	publish_r(REL(4), 3, 1);
	call(FC_SCAN, 0, 7, 0);
	/* Pages 4-7 named: visited first, looked up, merged with slots 0-3. */
	candidates(4, 4);
	lookup_r(REL(1), 4, (uint32_t[]){ 1, 2, 3, 4 });
	ack(0, REL(2));
	call(FC_SCAN, 0, 7, 0);
	/* Written over, reaped: given back at the end of a batch. */
	call(FC_TOUCH, 0, 4, 0);
	call(FC_TOUCH, 0, 5, 0);
	op0(FC_REAP);
	ack(0, REL(1));
	call(FC_SCAN, 0, 0, 0);
	save(dir, "scan");
}

/* Replies out of protocol: each drops the connection. */
static void broken(const char *dir)
{
	begin();
	join(17);
	ack(0, REL(1));	/* a LOOKUP answered by an ACK */
	call(FC_LOOKUP, 0, 0, 0);
	again(17);
	lookup_r(REL(1), 1, (uint32_t[]){ 1 });	/* by fewer slots than it asked */
	call(FC_LOOKUP, 0, 1, 0);
	again(17);
	publish_r(REL(1), 0, 3);	/* a PUBLISH of 2 pages given 3 */
	call(FC_PUBLISH, 0, 1, 0);
	again(17);
	ack(0, REL(0));	/* a seq answered before (the HELLO's) */
	call(FC_REPORT, 0, 0, 0);
	again(17);
	ack(0, 0);	/* an ACK nobody asked for */
	call(FC_REPORT, 0, 0, 0);
	again(17);
	error_msg(-EMFILE, "too many connections", 0);	/* the daemon refuses us */
	call(FC_REPORT, 0, 0, 0);
	again(17);
	bytes("MDD2garbage-garbage", 19);	/* not a header */
	call(FC_REPORT, 0, 0, 0);
	again(17);
	/* Half a reply: the request times out, the rest comes later. */
	static unsigned char half[MD_MSG_HDR_SIZE + 4];
	md__msg_hdr_encode(half, MD_MSG_ACK, 4, REL(1));
	bytes(half, MD_MSG_HDR_SIZE + 2);
	call(FC_REPORT, 0, 0, 0);
	bytes(half + MD_MSG_HDR_SIZE + 2, 2);
	ack(0, REL(1));
	call(FC_REPORT, 0, 0, 0);
	/* A header longer than any message of its type. */
	md__msg_hdr_encode(half, MD_MSG_ACK, 5000, REL(1));
	bytes(half, MD_MSG_HDR_SIZE);
	call(FC_REPORT, 0, 0, 0);
	again(17);
	/* A WELCOME that is no reply, with a pool. */
	send_fd(FC_FD_POOL);
	m.u.welcome.pool_pages = 1;
	md__tunables_default(&m.u.welcome.tun);
	msg(MD_MSG_WELCOME, 0);
	call(FC_REPORT, 0, 0, 0);
	save(dir, "broken");
}

/* The daemon goes with messages unread: a refusal read when a request
 * cannot be sent, a late reply settled as the connection goes; requests
 * sent a piece at a time; the CLI's request answered late. */
static void daemon_goes(const char *dir)
{
	begin();
	join(19);
	error_msg(-EMFILE, "too many connections", 0);
	op0(FC_CLOSE);
	call(FC_REPORT, 0, 0, 0);
	again(19);
	call(FC_GIVE_BACK, 0, 1, 40);	/* slots 40, 41: not held, tainted */
	op0(FC_NEXT_CONTROL);	/* idle: gives them back */
	ack(0, REL(0));
	op0(FC_CLOSE);
	call(FC_REPORT, 0, 0, 0);
	join(19);
	op0(FC_SMALL_BUF);
	publish_r(REL(1), 32, 16);
	call(FC_PUBLISH, 0, 15, 0);
	for (int i = 1; i <= 16; i++)
		publish_r(REL(i), 48 + (uint32_t)i, 1);
	call(FC_PUBLISH_EACH, 0, 15, 0);
	call(FC_REQUEST, 0, 0, 64);	/* a STATUS: late */
	static const char json[] = "{\"agents\": []}";
	m.u.status_r.json = json;
	m.u.status_r.len = sizeof(json) - 1;
	msg(MD_MSG_STATUS_R, REL(0));
	ack(0, REL(1));
	call(FC_REPORT, 0, 0, 0);
	save(dir, "daemon-goes");
}

/* More CONTROLs and CANDIDATES than the client keeps, a STATUS reply larger
 * than the room given, ERRORs for the CLI. */
static void queues(const char *dir)
{
	begin();
	join(18);
	for (uint32_t i = 0; i < 70; i++)
		control(MD_CTL_RESUME, 0, i);
	for (unsigned i = 0; i < 70; i++)
		candidates(i, MD_CANDIDATES_MAX);
	share(MD_SHARE_ALL);
	op0(FC_NEXT_CONTROL);
	call(FC_CANDIDATES, 0, 255, 0);
	call(FC_CANDIDATES, 0, 255, 0);
	static char json[600];
	memset(json, 'x', sizeof(json));
	m.u.status_r.json = json;
	m.u.status_r.len = sizeof(json);
	msg(MD_MSG_STATUS_R, REL(1));
	call(FC_REQUEST, 0, 2, 1);
	error_msg(-EINVAL, "unknown key", REL(1));
	call(FC_REQUEST, 0, 7, 16);
	save(dir, "queues");
}

/* m as type, seq as given, cut after its first n bytes. */
static void msg_cut(unsigned type, uint32_t seq, size_t n)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	m.hdr.type = (uint16_t)type;
	m.hdr.seq = seq;
	ssize_t len = md__msg_encode(&m, buf, sizeof(buf));
	if (len < 0 || (size_t)len <= n) {
		fprintf(stderr, "client_seeds: a %s cut at %zu does not encode longer\n",
			md__msg_type_name(type), n);
		bad = 1;
		return;
	}
	bytes(buf, n);
	memset(&m, 0, sizeof(m));
}

/* The daemon hangs up in the middle of a message: of a WELCOME with its
 * pool (the connect fails, the descriptor that came is closed), of a
 * reply in time and of a late one (what it would grant is not the
 * client's: neither held nor given back), of a header, of a CONTROL while
 * the CLI's STATUS waits. Each call fails, none waits for the rest. */
static void hangs_up_mid_message(const char *dir)
{
	begin();
	send_fd(FC_FD_POOL);
	m.u.welcome.domain_id = 1;
	m.u.welcome.pool_pages = FC_POOL_PAGES;
	m.u.welcome.generation = 24;
	md__tunables_default(&m.u.welcome.tun);
	msg_cut(MD_MSG_WELCOME, REL(1), MD_MSG_HDR_SIZE + 8);
	op0(FC_HANGUP);
	op0(FC_CONNECT);
	join(24);
	m.u.lookup_r.n = 2;
	m.u.lookup_r.slot1[0] = 1;
	m.u.lookup_r.slot1[1] = MD_LOOKUP_PUBLISH;
	msg_cut(MD_MSG_LOOKUP_R, REL(1), MD_MSG_HDR_SIZE + 6);
	op0(FC_HANGUP);
	call(FC_LOOKUP, 0, 1, 0);
	call(FC_REPORT, 0, 0, 0);
	join(24);
	m.u.publish_r.first_slot = 3;
	m.u.publish_r.n = 1;
	msg_cut(MD_MSG_PUBLISH_R, REL(1), MD_MSG_HDR_SIZE / 2);
	op0(FC_CLOSE);
	call(FC_PUBLISH_EACH, 0, 0, 0);
	call(FC_REPORT, 0, 0, 0);
	join(24);
	call(FC_REF, 0, 1, 3);	/* slots 3, 4: late */
	m.u.ack.status = 0;
	msg_cut(MD_MSG_ACK, REL(0), MD_MSG_HDR_SIZE + 2);
	op0(FC_HANGUP);
	call(FC_REPORT, 0, 0, 0);
	join(24);
	control(MD_CTL_PAUSE, 0, 5);
	m.u.control.op = MD_CTL_RESUME;
	m.u.control.token = 6;
	msg_cut(MD_MSG_CONTROL, 0, MD_MSG_HDR_SIZE + 3);
	op0(FC_HANGUP);
	call(FC_REQUEST, 0, 0, 64);	/* a STATUS */
	op0(FC_NEXT_CONTROL);
	call(FC_CONTROL_DONE, 0, 5, 0);
	save(dir, "hangs-up-mid-message");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: client_seeds DIR\n");
		return 2;
	}
	agent(argv[1]);
	late(argv[1]);
	late_refused(argv[1]);
	not_granted(argv[1]);
	dones_kept(argv[1]);
	refused(argv[1]);
	retry(argv[1]);
	pools(argv[1]);
	merges(argv[1]);
	unref_unanswered(argv[1]);
	scan(argv[1]);
	broken(argv[1]);
	daemon_goes(argv[1]);
	queues(argv[1]);
	hangs_up_mid_message(argv[1]);
	return bad;
}
