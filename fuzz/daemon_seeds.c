/* daemon_seeds.c - writes sessions with memdedupd, in fuzz_daemon.c's input
 * format, into a corpus directory as seed-<name> (`make fuzz-seeds`): an
 * agent's life (HELLO, then each request, references taken, given back,
 * refused), two agents meeting, the CLI's requests (one that reads no
 * reply too), CONTROLs forwarded to agents and their answers (or none: a
 * timeout), a takeover and a reconnect, the refusals, a user's full pool,
 * connections that close with requests unread behind them, and agents
 * that hang up with a batch unread (or half read). Encoded by
 * this version's encoder, with the FUZZ_PIDs in the HELLOs, they follow the
 * protocol as it changes; the replay (fuzz_daemon.c) fails on a corpus
 * that no longer draws each kind of reply from the daemon. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checksum.h"
#include "fuzz_daemon.h"
#include "protocol.h"

/* The session being written, and its last chunk (whose bytes grow as
 * messages to the same peer are added). */
static unsigned char sess[4u << 20];
static size_t sess_len, chunk_at, chunk_peer = ~(size_t)0;
static unsigned next_flags;	/* FUZZ_OP_TICK for the next chunk */
static unsigned deaf_peers;	/* chunks of these peers: FUZZ_OP_DEAF */
static uint32_t seq;
static int bad;

static void begin(void)
{
	sess_len = 0;
	chunk_peer = ~(size_t)0;
	next_flags = deaf_peers = 0;
	seq = 0;
}

static void op(unsigned o)
{
	sess[sess_len++] = (unsigned char)(o | next_flags);
	next_flags = 0;
	chunk_peer = ~(size_t)0;
}

/* Bytes to a peer, in the chunk before if it was that peer's send. */
static void bytes(unsigned peer, const void *b, size_t n)
{
	if (chunk_peer != peer) {
		op(FUZZ_OP_SEND | peer | (deaf_peers & 1u << peer ? FUZZ_OP_DEAF : 0));
		chunk_at = sess_len;
		sess_len += 3;
		chunk_peer = peer;
	}
	memcpy(sess + sess_len, b, n);
	sess_len += n;
	size_t len = sess_len - chunk_at - 3;
	sess[chunk_at] = (unsigned char)len;
	sess[chunk_at + 1] = (unsigned char)(len >> 8);
	sess[chunk_at + 2] = (unsigned char)(len >> 16);
}

/* The next chunk goes in with this one (FUZZ_OP_HOLD). */
static void hold(void)
{
	sess[chunk_at - 1] |= FUZZ_OP_HOLD;
	chunk_peer = ~(size_t)0;
}

/* The next bytes in a chunk of their own (a peer closed by the daemon
 * meanwhile gets a new connection). */
static void split(void)
{
	chunk_peer = ~(size_t)0;
}

/* Time passes before the next chunk (FUZZ_OP_TICK). */
static void tick(void)
{
	next_flags |= FUZZ_OP_TICK;
	chunk_peer = ~(size_t)0;
}

/* The process of the next chunk's peer exits first (FUZZ_OP_EXIT). */
static void exit_next(void)
{
	next_flags |= FUZZ_OP_EXIT;
	chunk_peer = ~(size_t)0;
}

/* The peer's replies are read (0) or not (1) from its next chunk on. */
static void deaf(unsigned peer, int on)
{
	deaf_peers = on ? deaf_peers | 1u << peer : deaf_peers & ~(1u << peer);
	chunk_peer = ~(size_t)0;
}

static void msg(unsigned peer, struct md__msg *m, unsigned type)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	m->hdr.type = (uint16_t)type;
	m->hdr.seq = ++seq;
	ssize_t n = md__msg_encode(m, buf, sizeof(buf));
	if (n < 0) {
		fprintf(stderr, "daemon_seeds: a %s does not encode: %s\n", md__msg_type_name(type),
			strerror((int)-n));
		bad = 1;
		return;
	}
	bytes(peer, buf, (size_t)n);
}

/* A header alone: its payload never comes (or comes later). */
static void header(unsigned peer, unsigned type, uint32_t length)
{
	unsigned char h[MD_MSG_HDR_SIZE];
	md__msg_hdr_encode(h, type, length, ++seq);
	bytes(peer, h, sizeof(h));
}

static void save(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(sess, 1, sess_len, f) != sess_len || fclose(f) != 0) {
		fprintf(stderr, "daemon_seeds: cannot write %s\n", path);
		bad = 1;
	}
}

static struct md__msg m;

static struct md__msg *clear(void)
{
	memset(&m, 0, sizeof(m));
	return &m;
}

/* HELLO naming the peer's own pid. */
static void hello(unsigned peer, uint32_t flags, const char *domain)
{
	clear();
	m.u.hello.pid = (uint32_t)FUZZ_PID_OF(peer);
	m.u.hello.flags = flags;
	m.u.hello.domain_len = (uint16_t)strlen(domain);
	memcpy(m.u.hello.domain, domain, strlen(domain) + 1);
	msg(peer, &m, MD_MSG_HELLO);
}

static unsigned char pages[MD_PUBLISH_MAX * MD_MSG_PAGE];

/* Page i of content seed s. */
static const unsigned char *page(unsigned i, unsigned s)
{
	unsigned char *p = pages + (size_t)i * MD_MSG_PAGE;
	for (unsigned k = 0; k < MD_MSG_PAGE; k++)
		p[k] = (unsigned char)(s * 31 + k / 64);
	return p;
}

/* PUBLISH of n pages of seeds s.. (their hashes true). Slots are given
 * from 0 up in a fresh pool, as the sessions below count on. */
static void publish(unsigned peer, uint32_t n, unsigned s)
{
	clear();
	for (uint32_t i = 0; i < n; i++)
		m.u.publish.hash[i] = md__page_hash(page(i, s + i));
	m.u.publish.n = n;
	m.u.publish.pages = pages;
	msg(peer, &m, MD_MSG_PUBLISH);
}

static void lookup(unsigned peer, uint64_t hash, uint64_t addr, uint64_t tag)
{
	clear();
	m.u.lookup.n = 2;
	m.u.lookup.hash[0] = hash, m.u.lookup.addr[0] = addr, m.u.lookup.tag[0] = tag;
	m.u.lookup.hash[1] = 0x1234, m.u.lookup.addr[1] = addr + 0x10000;
	msg(peer, &m, MD_MSG_LOOKUP);
}

static void refs(unsigned peer, unsigned type, const uint32_t *slots, uint32_t n)
{
	clear();
	m.u.refs.n = n;
	memcpy(m.u.refs.slot, slots, n * sizeof(*slots));
	msg(peer, &m, type);
}

static void control(unsigned peer, unsigned ctl, int32_t pid, const char *key, const char *value)
{
	clear();
	m.u.control.op = ctl;
	m.u.control.pid = pid;
	if (key) {
		snprintf(m.u.control.key, sizeof(m.u.control.key), "%s", key);
		snprintf(m.u.control.value, sizeof(m.u.control.value), "%s", value);
	}
	msg(peer, &m, MD_MSG_CONTROL);
}

static void control_done(unsigned peer, uint32_t token, int32_t status, const char *text)
{
	clear();
	m.u.control_done.token = token;
	m.u.control_done.result.status = status;
	snprintf(m.u.control_done.result.text, sizeof(m.u.control_done.result.text), "%s", text);
	msg(peer, &m, MD_MSG_CONTROL_DONE);
}

static void status(unsigned peer, uint32_t domain_from, uint32_t agent_from)
{
	clear();
	m.u.status.domain_from = domain_from;
	m.u.status.agent_from = agent_from;
	msg(peer, &m, MD_MSG_STATUS);
}

static void report(unsigned peer, uint64_t registered_bytes)
{
	clear();
	m.u.report.n = 60;
	for (uint32_t i = 0; i < m.u.report.n; i++)
		m.u.report.counters[i] = i * 3;
	m.u.report.counters[1] = registered_bytes;	/* MD_CTR_REGISTERED_BYTES */
	msg(peer, &m, MD_MSG_REPORT);
}

static void reads(unsigned peer, uint64_t key, uint64_t addr, uint32_t npages)
{
	clear();
	m.u.reads.n = 2;
	m.u.reads.run[0] = (struct md__read_run){ key, 0, addr, npages };
	m.u.reads.run[1] = (struct md__read_run){ key, 1u << 20, addr + (1u << 24), 1 };
	msg(peer, &m, MD_MSG_READS);
}

/* An agent's life on peer 0: every request, references taken and given
 * back, duplicates in one message, an UNREF refused (and undone). */
static void agent_session(const char *dir)
{
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "fz");
	report(0, 64ull << 20);
	uint64_t key = md__read_key(8, 12);
	reads(0, key, 0x7f0000100000, 16);
	uint64_t h = md__page_hash(page(0, 1));
	lookup(0, h, 0x7f0000001000, 0);
	lookup(0, h, 0x7f0000002000, 0);	/* a second copy: publish */
	publish(0, 1, 1);	/* slot 0; a candidate for 0x7f0000001000 */
	lookup(0, h, 0x7f0000003000, 0);	/* found: slot 1 */
	lookup(0, 0x5555, 0x7f0000004000, md__read_tag(key, 4096));	/* a read's pair */
	publish(0, 3, 2);	/* slots 1..3 */
	publish(0, 1, 1);	/* equal to slot 0: given it */
	refs(0, MD_MSG_REF, (const uint32_t[]){ 1, 1, 2 }, 3);
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 1, 1 }, 2);
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 2, 3, 3, 3 }, 4);	/* 3 is held once: undone */
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 40 }, 1);	/* never held */
	refs(0, MD_MSG_REF, (const uint32_t[]){ 2, 50 }, 2);	/* 50 is not live */
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0, 0, 1, 2, 2, 3 }, 6);	/* all held */
	control_done(0, 0, 0, "");	/* nothing waits for it */
	tick();	/* the freed slots punched */
	publish(0, 2, 9);
	clear();
	m.u.publish.n = 1;
	m.u.publish.hash[0] = 1;	/* not the page's */
	m.u.publish.pages = page(0, 3);
	msg(0, &m, MD_MSG_PUBLISH);
	lookup(0, h, 0x7f0000001000, 0);
	status(0, 0, 0);	/* not on an agent's connection: refused, closed */
	op(FUZZ_OP_HANGUP | 0);
	save(dir, "agent");
}

/* An agent's process exits holding references and owing a CONTROL (its
 * pidfd turns readable): they go, the other agent's stay; its connection,
 * kept open by a child, says HELLO again; a new process with its pid
 * joins; the other agent's process exits too. */
static void exit_session(const char *dir)
{
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "ex");
	hello(2, MD_HELLO_CONTROL_PID, "ex");
	publish(2, 2, 21);	/* slots 0 and 1 */
	lookup(0, md__page_hash(page(0, 21)), 0x7f0000001000, 0);	/* found */
	refs(0, MD_MSG_REF, (const uint32_t[]){ 0 }, 1);
	control(1, MD_CTL_PAUSE, 0, NULL, NULL);	/* to both */
	control_done(0, 1, 0, "");
	exit_next();
	status(3, 0, 0);	/* peer 2's process exits; peer 3 is a new one */
	hello(2, MD_HELLO_CONTROL_PID, "ex");	/* on the connection it left */
	op(FUZZ_OP_CLOSE | 2);
	hello(2, MD_HELLO_CONTROL_PID, "ex");
	publish(2, 1, 22);
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0 }, 1);
	tick();
	status(1, 0, 0);
	exit_next();
	op(FUZZ_OP_CLOSE | 0);
	status(1, 0, 0);
	save(dir, "exit");
}

/* Two agents of one domain (peers 0 and 2): a first sighting named as a
 * candidate when the other publishes, a read paired with the other's
 * lookup, the rate shared, a CONTROL to both (one answers, one goes). */
static void two_agents_session(const char *dir)
{
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "two");
	report(0, 512ull << 20);
	uint64_t key = md__read_key(8, 40);
	reads(0, key, 0x7f0000200000, 32);
	hello(2, MD_HELLO_CONTROL_PID, "two");
	report(2, 512ull << 20);
	uint64_t h = md__page_hash(page(0, 11)), h2 = md__page_hash(page(0, 12));
	lookup(2, h2, 0x7f0000900000, md__read_tag(key, 3 * 4096));	/* A's read: publish */
	publish(2, 1, 12);	/* A's page named to it */
	lookup(0, h, 0x7f0000001000, 0);	/* A's first sighting */
	lookup(2, h, 0x7f0000901000, 0);	/* B's: publish */
	publish(2, 1, 11);	/* A told */
	lookup(0, h, 0x7f0000001000, 0);	/* found */
	refs(0, MD_MSG_REF, (const uint32_t[]){ 0, 1 }, 2);
	control(1, MD_CTL_PAUSE, 0, NULL, NULL);	/* token 1, to both */
	control_done(0, 1, 0, "");
	op(FUZZ_OP_HANGUP | 2);	/* B goes before it answers */
	control(1, MD_CTL_SET, 0, "pages_to_scan", "500");	/* token 2, to A */
	tick();	/* A never answers: timed out */
	status(1, 0, 0);
	control_done(0, 2, 0, "");	/* late */
	status(1, 0, 0);
	control(1, MD_CTL_UNMERGE, 0, NULL, NULL);	/* token 3: B is not connected */
	control_done(0, 3, 0, "");
	control(1, MD_CTL_PAUSE, 0, NULL, NULL);	/* token 4: its CLI goes first */
	op(FUZZ_OP_CLOSE | 1);
	control_done(0, 4, 0, "");
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0, 1 }, 2);
	op(FUZZ_OP_HANGUP | 0);
	save(dir, "two-agents");
}

/* The CLI's requests on peer 1 (root) and peer 3 (another user), with no
 * agent and then one; more STATUS pages than a wake-up's budget. */
static void cli_session(const char *dir)
{
	begin();
	status(1, 0, 0);
	status(1, UINT32_MAX, 1234);
	control(1, MD_CTL_SET, 0, "pages_to_scan", "200");
	control(1, MD_CTL_SET, 0, "sleep_millisecs", "0");
	control(1, MD_CTL_SET, 0, "no_such_key", "1");
	control(1, MD_CTL_SET, 0, "cpu_percent", "101");
	control(1, MD_CTL_PAUSE, 0, NULL, NULL);
	control(1, MD_CTL_RESUME, 0, NULL, NULL);
	control(1, MD_CTL_UNMERGE, 1234, NULL, NULL);
	status(3, 0, 0);
	control(3, MD_CTL_PAUSE, 0, NULL, NULL);
	control(3, MD_CTL_SET, 0, "hint_ratio", "4");
	hello(0, MD_HELLO_CONTROL_PID, "");
	publish(0, 2, 4);
	for (int i = 0; i < 6; i++)
		status(1, 0, 0);
	status(1, 1, FUZZ_PID);
	status(3, 0, 0);
	control(3, MD_CTL_PAUSE, FUZZ_PID, NULL, NULL);	/* root's agent: not another user's */
	op(FUZZ_OP_HANGUP | 3);
	op(FUZZ_OP_HANGUP | 1);
	op(FUZZ_OP_HANGUP | 0);
	save(dir, "cli");
}

/* A CLI that reads no reply (peer 1) asks for STATUS pages (2 KiB each)
 * until its socket is full and the daemon's queue for it grows; once it
 * reads again, the queue drains. (To MD_D_OUT_PAUSE, where the daemon stops
 * handling its requests, would take 500 pages, 30 ms: left to the
 * fuzzer.) */
static void deaf_cli_session(const char *dir)
{
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "deaf");
	report(0, 1ull << 30);
	publish(0, 4, 30);
	deaf(1, 1);
	for (int i = 0; i < 120; i++)
		status(1, 0, 0);
	deaf(1, 0);
	status(1, 0, 0);
	op(FUZZ_OP_HANGUP | 1);
	op(FUZZ_OP_HANGUP | 0);
	save(dir, "deaf-cli");
}

/* CONTROLs from peer 1 forwarded to the agent on peer 0, and its
 * answers: done, refused, late, never (its CLI goes, then it goes). */
static void control_session(const char *dir)
{
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "ctl");
	publish(0, 2, 5);
	control(1, MD_CTL_PAUSE, 0, NULL, NULL);	/* token 1 */
	control_done(0, 1, 0, "");
	control(1, MD_CTL_UNMERGE, FUZZ_PID, NULL, NULL);	/* token 2 */
	control_done(0, 2, -ENOMEM, "not enough memory available");
	control(1, MD_CTL_SET, 0, "pages_to_scan", "1000");	/* token 3 */
	status(1, 0, 0);	/* waits behind the SET */
	control_done(0, 3, 0, "");
	control_done(0, 3, 0, "");	/* late */
	control(1, MD_CTL_UNMERGE, 0, NULL, NULL);	/* token 4: left unanswered */
	op(FUZZ_OP_CLOSE | 1);
	control_done(0, 4, 0, "");	/* its CLI went: an UNMERGE still counts */
	control(3, MD_CTL_RESUME, 0, NULL, NULL);	/* another user: not its agent */
	control(1, MD_CTL_RESUME, 0, NULL, NULL);	/* token 5..: the agent goes first */
	op(FUZZ_OP_HANGUP | 0);
	hello(0, 0, "ctl");	/* back, without MD_HELLO_CONTROL_PID */
	control(1, MD_CTL_SET, 0, "cpu_percent", "20");
	control_done(0, 7, -EINVAL, "");	/* tokens 5 and 6 were the RESUMEs */
	op(FUZZ_OP_HANGUP | 1);
	op(FUZZ_OP_HANGUP | 0);
	save(dir, "control");

	/* An agent holding nothing unmerges and goes: its record stays to
	 * say paused, and its next HELLO, of another domain, is paused. */
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "um");
	control(1, MD_CTL_UNMERGE, FUZZ_PID, NULL, NULL);	/* token 1 */
	control_done(0, 1, 0, "");
	op(FUZZ_OP_HANGUP | 0);
	status(1, 0, 0);
	hello(0, MD_HELLO_CONTROL_PID, "um2");
	control(1, MD_CTL_PAUSE, 0, NULL, NULL);	/* token 2: never answered */
	tick();
	control(1, MD_CTL_RESUME, 0, NULL, NULL);	/* token 3 */
	control_done(0, 2, 0, "");	/* late */
	control_done(0, 3, 0, "");
	op(FUZZ_OP_HANGUP | 1);
	op(FUZZ_OP_HANGUP | 0);
	save(dir, "unmerged");
}

/* The same process's HELLO on peer 1 while peer 0, its agent, still has
 * requests unread (more than a wake-up's batch): the UNREFs among them
 * are applied as peer 0 is given up. Then a reconnect after a hang-up
 * (the record kept with its references), the same process as another
 * user refused while they are held, and an exec'd process
 * (MD_HELLO_NO_POOL_MAPS). */
static void takeover_session(const char *dir)
{
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "tk");
	publish(0, 4, 6);
	/* Lookups of 6 KiB each: past the batch what is left is still in
	 * the socket, and all of it fits there (its buffer's default). */
	for (int i = 0; i < 22; i++) {
		clear();
		m.u.lookup.n = 256;
		for (uint32_t k = 0; k < m.u.lookup.n; k++) {
			m.u.lookup.hash[k] = 0x1000 + (uint64_t)i * 256 + k;
			m.u.lookup.addr[k] = 0x7f0000010000 + ((uint64_t)i * 256 + k) * 4096;
		}
		msg(0, &m, MD_MSG_LOOKUP);
	}
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0, 1 }, 2);
	hold();
	hello(1, MD_HELLO_CONTROL_PID, "tk");
	/* Peer 0 was closed: a new connection, before HELLO, and one to
	 * another domain while the agent is connected. */
	lookup(0, 0x77, 0x7f0000020000, 0);
	split();
	hello(0, MD_HELLO_CONTROL_PID, "tk-other");
	op(FUZZ_OP_HANGUP | 1);	/* slots 2 and 3 held, detached */
	hello(0, MD_HELLO_CONTROL_PID, "tk");	/* back */
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 2 }, 1);
	op(FUZZ_OP_HANGUP | 0);
	hello(1, MD_HELLO_NO_POOL_MAPS, "tk");	/* exec'd: the references go */
	refs(1, MD_MSG_UNREF, (const uint32_t[]){ 3 }, 1);	/* refused: not held now */
	op(FUZZ_OP_HANGUP | 1);
	/* Peer 2's process, holding references, becomes another user
	 * (peer 3): refused until it lets them go (exec'd). */
	hello(2, MD_HELLO_CONTROL_PID, "rs");
	publish(2, 1, 40);
	op(FUZZ_OP_HANGUP | 2);
	hello(3, MD_HELLO_CONTROL_PID, "rs");
	hello(3, MD_HELLO_NO_POOL_MAPS, "rs");
	publish(3, 1, 40);
	op(FUZZ_OP_HANGUP | 3);
	save(dir, "takeover");
}

/* Requests refused: before HELLO (at the header: no room made for 256
 * KiB), a reply's type (a STATUS_R of a megabyte), HELLO twice, a HELLO
 * of another pid, a bad header, a malformed payload. */
static void refusal_session(const char *dir)
{
	begin();
	header(3, MD_MSG_PUBLISH, md__msg_max_len(MD_MSG_PUBLISH));
	header(2, MD_MSG_STATUS_R, MD_MSG_MAX);
	hello(0, 0, "r");
	hello(0, 0, "r");
	clear();
	m.u.hello.pid = 1234;
	msg(1, &m, MD_MSG_HELLO);
	clear();
	m.u.lookup.n = 1;
	msg(3, &m, MD_MSG_LOOKUP);
	unsigned char junk[MD_MSG_HDR_SIZE] = "not a header!!!";
	bytes(2, junk, sizeof(junk));
	/* A domain name with a space (which the encoder would refuse). */
	unsigned char bad_domain[MD_MSG_HDR_SIZE + 10 + 10];
	clear();
	m.u.hello.pid = FUZZ_PID;
	m.u.hello.domain_len = 10;
	memcpy(m.u.hello.domain, "bad_domain", 11);
	m.hdr.type = MD_MSG_HELLO;
	m.hdr.seq = ++seq;
	if (md__msg_encode(&m, bad_domain, sizeof(bad_domain)) != (ssize_t)sizeof(bad_domain))
		bad = 1;
	bad_domain[MD_MSG_HDR_SIZE + 10 + 3] = ' ';
	bytes(1, bad_domain, sizeof(bad_domain));
	save(dir, "refusals");
	/* A payload that breaks its type's rules (a count past the bytes). */
	begin();
	hello(0, 0, "r");
	unsigned char lk[MD_MSG_HDR_SIZE + 4 + 24] = { 0 };
	md__msg_hdr_encode(lk, MD_MSG_LOOKUP, 4 + 24, 9);
	lk[MD_MSG_HDR_SIZE] = 2;	/* n = 2 in room for 1 */
	bytes(0, lk, sizeof(lk));
	save(dir, "malformed");
}

/* Another user's agent (peer 3) fills the pool: a PUBLISH of the most
 * pages, a page equal to a live one still given its slot, a new one
 * refused (the user's pool's worth), then pages given back and room
 * again once they are punched. */
static void full_pool_session(const char *dir)
{
	begin();
	hello(3, MD_HELLO_CONTROL_PID, "full");
	report(3, 1ull << 20);
	publish(3, MD_PUBLISH_MAX, 100);
	publish(3, 1, 100);	/* equal to slot 0 */
	publish(3, 1, 7);	/* no room */
	uint32_t all[MD_PUBLISH_MAX];
	for (uint32_t i = 0; i < MD_PUBLISH_MAX; i++)
		all[i] = i;
	refs(3, MD_MSG_REF, all, MD_PUBLISH_MAX);
	refs(3, MD_MSG_UNREF, all, MD_PUBLISH_MAX);
	refs(3, MD_MSG_UNREF, all + 1, 8);
	publish(3, 4, 7);	/* the freed slots not punched yet: full */
	tick();
	publish(3, 4, 7);
	status(1, 0, 0);
	status(2, 0, 0);
	op(FUZZ_OP_HANGUP | 3);
	save(dir, "full-pool");
}

/* Connections that close with requests unread behind a refusal: the
 * UNREFs sent whole are applied, nothing after a header refused is read
 * (a STATUS_R's megabyte is not made room for). */
static void unread_at_close_session(const char *dir)
{
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "cl");
	publish(0, 4, 20);
	unsigned char lk[MD_MSG_HDR_SIZE + 4 + 24] = { 0 };
	md__msg_hdr_encode(lk, MD_MSG_LOOKUP, 4 + 24, 9);
	lk[MD_MSG_HDR_SIZE] = 2;	/* malformed: the connection closes */
	bytes(0, lk, sizeof(lk));
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0, 1 }, 2);	/* applied at the close */
	header(0, MD_MSG_STATUS_R, MD_MSG_MAX);
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 2 }, 1);	/* a STATUS_R's payload: not read */
	op(FUZZ_OP_HANGUP | 0);
	hello(1, MD_HELLO_CONTROL_PID, "cl");
	refs(1, MD_MSG_UNREF, (const uint32_t[]){ 2, 3 }, 2);
	header(1, MD_MSG_STATUS_R, MD_MSG_MAX);	/* refused at its header */
	op(FUZZ_OP_HANGUP | 1);
	save(dir, "unread-at-close");
}

/* A message cut: its first n bytes only (a send cut short). */
static void cut(unsigned peer, struct md__msg *mm, unsigned type, size_t n)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	mm->hdr.type = (uint16_t)type;
	mm->hdr.seq = ++seq;
	ssize_t len = md__msg_encode(mm, buf, sizeof(buf));
	if (len < 0 || (size_t)len <= n) {
		fprintf(stderr, "daemon_seeds: a %s cut at %zu does not encode shorter\n",
			md__msg_type_name(type), n);
		bad = 1;
		return;
	}
	bytes(peer, buf, n);
}

/* A READS of the most runs of the most pages: more than a connection's
 * work in one wake-up (MD_D_BUDGET), so what follows it is deferred. */
static void reads_big(unsigned peer)
{
	clear();
	m.u.reads.n = MD_READS_MAX;
	for (uint32_t i = 0; i < MD_READS_MAX; i++)
		m.u.reads.run[i] = (struct md__read_run){ md__read_key(9, 50 + i), 0,
							  0x7f0000000000 + ((uint64_t)i << 24), MD_READ_RUN_PAGES };
	msg(peer, &m, MD_MSG_READS);
}

/* Agents that hang up (close) with a batch of requests still in the
 * daemon's socket, as a PUBLISH batch cut short by the client's timeout
 * leaves them: nothing is granted of them (a PUBLISH, a REF: the record
 * the reconnect gets back holds only what the agent was answered), but
 * their UNREFs and CONTROL_DONEs are applied (the CLI hears the refused
 * UNMERGE, and the agent is not left paused). First with all of it unread
 * (the hang-up seen with the bytes), then behind a wake-up that handled a
 * batch and deferred the rest (the hang-up seen by the deferred
 * connection's poll), then a half-close, still served to its end. */
static void hung_up_session(const char *dir)
{
	begin();
	hello(0, MD_HELLO_CONTROL_PID, "hu");
	publish(0, 4, 50);	/* slots 0..3 */
	refs(0, MD_MSG_REF, (const uint32_t[]){ 0, 1 }, 2);	/* 0 and 1 held twice */
	control(1, MD_CTL_UNMERGE, FUZZ_PID, NULL, NULL);	/* token 1, to peer 0 */
	split();
	publish(0, 2, 60);	/* not granted */
	refs(0, MD_MSG_REF, (const uint32_t[]){ 2, 3 }, 2);	/* not granted */
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0, 1, 2 }, 3);	/* applied */
	control_done(0, 1, -ENOMEM, "not enough memory available");	/* applied */
	publish(0, 1, 61);	/* not granted */
	clear();
	m.u.publish.n = 1;
	m.u.publish.hash[0] = md__page_hash(page(0, 62));
	m.u.publish.pages = pages;
	cut(0, &m, MD_MSG_PUBLISH, MD_MSG_HDR_SIZE + 100);	/* half of one */
	hold();
	op(FUZZ_OP_CLOSE | 0);
	/* Back (not paused): slots 0, 1 and 3 held once, 2 not at all. */
	hello(0, MD_HELLO_CONTROL_PID, "hu");
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 2 }, 1);	/* refused */
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0, 1, 3 }, 3);
	status(1, 0, 0);
	op(FUZZ_OP_HANGUP | 1);
	op(FUZZ_OP_HANGUP | 0);
	save(dir, "hung-up");

	begin();
	hello(0, MD_HELLO_CONTROL_PID, "hd");
	publish(0, 2, 70);	/* slots 0, 1 */
	control(1, MD_CTL_PAUSE, 0, NULL, NULL);	/* token 1, to peer 0 */
	split();
	reads_big(0);	/* handled: the rest deferred */
	publish(0, 2, 72);	/* not granted */
	refs(0, MD_MSG_REF, (const uint32_t[]){ 0 }, 1);	/* not granted */
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 1 }, 1);	/* applied */
	control_done(0, 1, 0, "");	/* applied: the PAUSE done */
	hold();
	op(FUZZ_OP_CLOSE | FUZZ_OP_HOLD | 0);
	hello(0, MD_HELLO_CONTROL_PID, "hd");	/* paused; slot 0 held once */
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0, 0 }, 2);	/* refused */
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 0 }, 1);
	/* Shut down writing only: all of it is served, every reply read. */
	split();
	publish(0, 1, 73);	/* slot 2 */
	reads_big(0);
	publish(0, 2, 74);
	refs(0, MD_MSG_UNREF, (const uint32_t[]){ 2 }, 1);
	hold();
	op(FUZZ_OP_HANGUP | FUZZ_OP_HOLD | 0);
	status(1, 0, 0);
	op(FUZZ_OP_HANGUP | 1);
	save(dir, "hung-up-deferred");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: daemon_seeds DIR\n");
		return 2;
	}
	agent_session(argv[1]);
	two_agents_session(argv[1]);
	cli_session(argv[1]);
	deaf_cli_session(argv[1]);
	control_session(argv[1]);
	takeover_session(argv[1]);
	refusal_session(argv[1]);
	full_pool_session(argv[1]);
	unread_at_close_session(argv[1]);
	exit_session(argv[1]);
	hung_up_session(argv[1]);
	return bad;
}
