/* test_protocol.c - memdedupd's messages: every type survives an encode /
 * decode round trip, and the decoder refuses what breaks a rule. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "protocol.h"
#include "runner.h"
#include "rxbuf.h"

static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX + 64];

/* Encodes m, decodes it into *out, and checks the bytes re-encode equal. */
static size_t round_trip(const struct md__msg *m, struct md__msg *out)
{
	static unsigned char again[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	ssize_t n = md__msg_encode(m, buf, sizeof(buf));
	ASSERT(n >= (ssize_t)MD_MSG_HDR_SIZE);
	ASSERT_EQ((size_t)n, md__msg_encoded_len(m));
	ASSERT_EQ(memcmp(buf, "MDD1", 4), 0);
	ASSERT_EQ(md__msg_decode(buf, (size_t)n, out), 0);
	ASSERT_EQ(out->hdr.type, m->hdr.type);
	ASSERT_EQ(out->hdr.seq, m->hdr.seq);
	ASSERT_EQ(out->hdr.length, (size_t)n - MD_MSG_HDR_SIZE);
	ASSERT_EQ(md__msg_encode(out, again, sizeof(again)), n);
	ASSERT_EQ(memcmp(buf, again, (size_t)n), 0);
	/* Every shorter prefix is refused. */
	for (size_t cut = 0; cut < (size_t)n; cut += 1 + cut / 4)
		ASSERT(md__msg_decode(buf, cut, out) < 0);
	return (size_t)n;
}

TEST_IMPL(daemon_proto_round_trip)
{
	static struct md__msg m, o;
	static unsigned char pages[MD_PUBLISH_MAX * MD_MSG_PAGE];

	m = (struct md__msg){ .hdr = { .type = MD_MSG_HELLO, .seq = 1 } };
	m.u.hello.pid = 1234;
	strcpy(m.u.hello.domain, "vm-group_1.a");
	round_trip(&m, &o);
	ASSERT_EQ(o.u.hello.pid, 1234);
	ASSERT_EQ(strcmp(o.u.hello.domain, "vm-group_1.a"), 0);
	ASSERT_EQ(o.u.hello.domain_len, 12);
	m.u.hello.domain[0] = '\0';	/* the default domain */
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE + 10);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_WELCOME, .seq = 2 } };
	m.u.welcome = (struct md__msg_welcome){ 7, 1024, 0x1122334455667788ull,
						{ 100, 20, 50, MD_ORDER_RANDOM, 3 }, MD_WELCOME_PAUSED };
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE + MD_WELCOME_LEN);
	ASSERT_EQ(memcmp(&o.u.welcome, &m.u.welcome, sizeof(m.u.welcome)), 0);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP, .seq = 3 } };
	m.u.lookup.n = MD_LOOKUP_MAX;
	for (unsigned i = 0; i < MD_LOOKUP_MAX; i++) {
		m.u.lookup.hash[i] = 0x0102030405060708ull * (i + 1);
		m.u.lookup.addr[i] = 0x7f0000000000ull + 4096ull * i;
		m.u.lookup.tag[i] = i % 3 ? md__read_tag(42, 4096ull * i) : 0;
	}
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE + md__msg_max_len(MD_MSG_LOOKUP));
	ASSERT_EQ(o.u.lookup.hash[MD_LOOKUP_MAX - 1], m.u.lookup.hash[MD_LOOKUP_MAX - 1]);
	ASSERT_EQ(memcmp(o.u.lookup.addr, m.u.lookup.addr, sizeof(m.u.lookup.addr)), 0);
	ASSERT_EQ(memcmp(o.u.lookup.tag, m.u.lookup.tag, sizeof(m.u.lookup.tag)), 0);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_READS, .seq = 4 } };
	m.u.reads.n = MD_READS_MAX;
	for (unsigned i = 0; i < MD_READS_MAX; i++)
		m.u.reads.run[i] = (struct md__read_run){ md__read_key(3, i), 4096ull * i * 7,
							  0x7f0000000000ull + (1ull << 22) * i,
							  1 + i % MD_READ_RUN_PAGES };
	m.u.reads.run[5].npages = MD_READ_RUN_PAGES;
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE + md__msg_max_len(MD_MSG_READS));
	for (unsigned i = 0; i < MD_READS_MAX; i++) {
		const struct md__read_run *x = &m.u.reads.run[i], *y = &o.u.reads.run[i];
		ASSERT(x->key == y->key && x->off == y->off && x->addr == y->addr &&
		       x->npages == y->npages);
	}
	/* Tags: a function of the file and the offset only, never 0. */
	ASSERT(md__read_tag(md__read_key(8, 1), 4096) == md__read_tag(md__read_key(8, 1), 4096));
	ASSERT(md__read_tag(md__read_key(8, 1), 4096) != md__read_tag(md__read_key(8, 1), 8192));
	ASSERT(md__read_tag(md__read_key(8, 1), 4096) != md__read_tag(md__read_key(8, 2), 4096));
	ASSERT(md__read_key(8, 1) != md__read_key(9, 1));

	m = (struct md__msg){ .hdr = { .type = MD_MSG_CANDIDATES } };
	m.u.candidates.n = MD_CANDIDATES_MAX;
	for (unsigned i = 0; i < MD_CANDIDATES_MAX; i++)
		m.u.candidates.addr[i] = 0x7f0000000000ull + 8192ull * i;
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE + md__msg_max_len(MD_MSG_CANDIDATES));
	ASSERT_EQ(memcmp(o.u.candidates.addr, m.u.candidates.addr, sizeof(m.u.candidates.addr)), 0);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_SHARE } };
	m.u.share.part = 7;
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE + 4);
	ASSERT_EQ(o.u.share.part, 7);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP_R, .seq = 3 } };
	m.u.lookup_r.n = 2;
	m.u.lookup_r.slot1[0] = 0;
	m.u.lookup_r.slot1[1] = 99;
	round_trip(&m, &o);
	ASSERT_EQ(o.u.lookup_r.slot1[1], 99);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_PUBLISH, .seq = 4 } };
	m.u.publish.n = MD_PUBLISH_MAX;
	for (unsigned i = 0; i < sizeof(pages); i++)
		pages[i] = (unsigned char)(i * 7 + i / 4096);
	m.u.publish.pages = pages;
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE + md__msg_max_len(MD_MSG_PUBLISH));
	ASSERT_EQ(memcmp(o.u.publish.pages, pages, sizeof(pages)), 0);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_PUBLISH_R, .seq = 4 } };
	m.u.publish_r.first_slot = 10;
	m.u.publish_r.n = 3;
	round_trip(&m, &o);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_REF, .seq = 5 } };
	m.u.refs.n = MD_REF_MAX;
	for (unsigned i = 0; i < MD_REF_MAX; i++)
		m.u.refs.slot[i] = i * 3;
	round_trip(&m, &o);
	m.hdr.type = MD_MSG_UNREF;
	m.u.refs.n = 1;
	round_trip(&m, &o);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_ACK, .seq = 6 } };
	m.u.ack.status = -EINVAL;
	round_trip(&m, &o);
	ASSERT_EQ(o.u.ack.status, -EINVAL);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_REPORT, .seq = 7 } };
	m.u.report.n = 0;
	round_trip(&m, &o);
	m.u.report.n = MD_REPORT_MAX;
	m.u.report.counters[MD_REPORT_MAX - 1] = UINT64_MAX;
	round_trip(&m, &o);
	ASSERT(o.u.report.counters[MD_REPORT_MAX - 1] == UINT64_MAX);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_STATUS, .seq = 8 } };
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE);	/* the first page: empty */
	m.u.status.agent_from = 4242;
	ASSERT_EQ(round_trip(&m, &o), MD_MSG_HDR_SIZE + 8);
	ASSERT_EQ(o.u.status.domain_from, 0);
	ASSERT_EQ(o.u.status.agent_from, 4242);
	m.u.status.domain_from = UINT32_MAX;
	round_trip(&m, &o);
	ASSERT_EQ(o.u.status.domain_from, UINT32_MAX);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_STATUS_R, .seq = 8 } };
	m.u.status_r.json = "{\"a\":1}";
	m.u.status_r.len = 7;
	round_trip(&m, &o);
	ASSERT_EQ(memcmp(o.u.status_r.json, "{\"a\":1}", 7), 0);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_CONTROL, .seq = 9 } };
	m.u.control.op = MD_CTL_SET;
	m.u.control.pid = 42;
	strcpy(m.u.control.key, "pages_to_scan");
	strcpy(m.u.control.value, "500");
	round_trip(&m, &o);
	ASSERT_EQ(strcmp(o.u.control.value, "500"), 0);
	m.u.control = (struct md__msg_control){ .op = MD_CTL_UNMERGE, .token = 0xfeedf00d };
	round_trip(&m, &o);
	ASSERT_EQ(o.u.control.token, 0xfeedf00d);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_CONTROL_DONE, .seq = 10 } };
	m.u.control_done.token = 77;
	m.u.control_done.result.status = -ENOMEM;
	strcpy(m.u.control_done.result.text, "not enough memory");
	round_trip(&m, &o);
	ASSERT_EQ(o.u.control_done.token, 77);
	ASSERT_EQ(o.u.control_done.result.status, -ENOMEM);
	ASSERT_EQ(strcmp(o.u.control_done.result.text, "not enough memory"), 0);
	m.u.control_done.result.status = 1;	/* not an errno */
	ASSERT(md__msg_encode(&m, buf, sizeof(buf)) < 0);

	m = (struct md__msg){ .hdr = { .type = MD_MSG_CONTROL_R, .seq = 9 } };
	m.u.text.status = -ESRCH;
	strcpy(m.u.text.text, "no agent with pid 42");
	round_trip(&m, &o);
	m.hdr.type = MD_MSG_ERROR;
	m.u.text.text[0] = '\0';
	round_trip(&m, &o);
	return 0;
}

/* Encodes a header and raw payload into buf; returns the length. */
static size_t raw(unsigned type, const void *payload, uint32_t len)
{
	md__msg_hdr_encode(buf, type, len, 1);
	if (len)
		memcpy(buf + MD_MSG_HDR_SIZE, payload, len);
	return MD_MSG_HDR_SIZE + len;
}

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

TEST_IMPL(daemon_proto_rejects)
{
	static struct md__msg m;
	static unsigned char p[MD_MSG_MAX];
	struct md__msg_hdr h;
	size_t n;

	/* Header. */
	n = raw(MD_MSG_STATUS, NULL, 0);
	ASSERT_EQ(md__msg_decode(buf, n, &m), 0);
	ASSERT_EQ(md__msg_hdr_decode(buf, n - 1, &h), -EBADMSG);	/* truncated */
	buf[0] = 'X';
	ASSERT_EQ(md__msg_decode(buf, n, &m), -EPROTO);			/* magic */
	n = raw(MD_MSG_STATUS, NULL, 0);
	buf[4] = 1;	/* version 1: LOOKUP had no addresses */
	ASSERT_EQ(md__msg_decode(buf, n, &m), -EPROTONOSUPPORT);	/* version */
	n = raw(0, NULL, 0);
	ASSERT_EQ(md__msg_decode(buf, n, &m), -EBADMSG);		/* type 0 */
	n = raw(MD_MSG_TYPE_END, NULL, 0);
	ASSERT_EQ(md__msg_decode(buf, n, &m), -EBADMSG);		/* unknown type */
	md__msg_hdr_encode(buf, MD_MSG_HELLO, 0xffffffffu, 1);		/* huge length */
	ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), -EMSGSIZE);
	md__msg_hdr_encode(buf, MD_MSG_STATUS_R, MD_MSG_MAX + 1, 1);
	ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), -EMSGSIZE);
	md__msg_hdr_encode(buf, MD_MSG_STATUS, 9, 1);			/* STATUS: 0 or 8 */
	ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), -EMSGSIZE);
	n = raw(MD_MSG_STATUS, NULL, 0);
	ASSERT_EQ(md__msg_decode(buf, n + 1, &m), -EBADMSG);		/* trailing byte */
	n = raw(MD_MSG_STATUS, "\1\0\0\0\2\0\0", 7);
	ASSERT_EQ(md__msg_decode(buf, n, &m), -EBADMSG);		/* half a cursor */
	n = raw(MD_MSG_STATUS, "\0\0\0\0\0\0\0\0", 8);
	ASSERT_EQ(md__msg_decode(buf, n, &m), -EBADMSG);		/* the first page is empty */

	/* Counts against lengths. */
	memset(p, 0, sizeof(p));
	put32(p, 2);		/* two hashes, addresses and tags; one of each present */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_LOOKUP, p, 28), &m), -EBADMSG);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_LOOKUP, p, 36), &m), -EBADMSG);	/* version 2's */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_LOOKUP, p, 52), &m), 0);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_LOOKUP, p, 60), &m), -EBADMSG);	/* extra */
	put32(p, 0);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_LOOKUP, p, 4), &m), -EBADMSG);	/* empty */
	put32(p, 0xffffffffu);	/* a count that would overflow 4 + 16n */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_LOOKUP, p, 36), &m), -EBADMSG);
	put32(p, 0x10000001u);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_LOOKUP, p, 20), &m), -EBADMSG);
	put32(p, MD_CANDIDATES_MAX + 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CANDIDATES, p, 12), &m), -EBADMSG);
	put32(p, 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CANDIDATES, p, 12), &m), 0);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CANDIDATES, p, 20), &m), -EBADMSG);
	put32(p, 0);		/* SHARE among no agent */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_SHARE, p, 4), &m), -EBADMSG);
	put32(p, MD_SHARE_ALL + 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_SHARE, p, 4), &m), -EBADMSG);
	put32(p, 3);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_SHARE, p, 4), &m), 0);
	ASSERT_EQ(m.u.share.part, 3);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_SHARE, p, 3), &m), -EBADMSG);
	put32(p, MD_REF_MAX + 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_REF, p, 4 + 4 * 10), &m), -EBADMSG);
	/* READS: whole pages of user space, 1..1024 a run, offsets that do
	 * not wrap. */
	memset(p, 0, 64);
	put32(p, 1);
	put64(p + 4, 77);				/* key */
	put64(p + 12, 8192);				/* off */
	put64(p + 20, 0x7f0000001000ull);		/* addr */
	put32(p + 28, 3);				/* npages */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), 0);
	ASSERT_EQ(m.u.reads.run[0].npages, 3);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 31), &m), -EBADMSG);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 60), &m), -EBADMSG);
	put32(p + 28, 0);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), -EBADMSG);
	put32(p + 28, MD_READ_RUN_PAGES + 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), -EBADMSG);
	put32(p + 28, 1);
	put64(p + 20, 0x7f0000001008ull);		/* not a page */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), -EBADMSG);
	put64(p + 20, 1ull << 47);			/* not user space */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), -EBADMSG);
	put64(p + 20, 0x1000);
	put64(p + 12, UINT64_MAX - 100);		/* the run's offsets wrap */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), -EBADMSG);
	put64(p + 12, 0);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), 0);
	/* Each bound as the run's last page meets it: its last byte, not
	 * its first, must be in user space and its offsets not wrap. */
	put64(p + 20, (1ull << 47) - 4096);		/* the last page of user space */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), 0);
	put32(p + 28, 2);				/* its second page past it */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), -EBADMSG);
	put64(p + 20, 0x1000);
	put64(p + 12, UINT64_MAX - 8191);		/* two pages: the last offset wraps */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), -EBADMSG);
	put64(p + 12, UINT64_MAX - 8192);		/* ends at UINT64_MAX */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), 0);
	put64(p + 12, 0);
	put32(p + 28, 1);
	put32(p, MD_READS_MAX + 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_READS, p, 32), &m), -EBADMSG);
	put32(p, 1);		/* one page without its content */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_PUBLISH, p, 12), &m), -EBADMSG);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_PUBLISH, p, 12 + 4096), &m), 0);
	put32(p, MD_PUBLISH_MAX + 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_PUBLISH, p, 12 + 4096), &m), -EBADMSG);
	put32(p, MD_REPORT_MAX + 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_REPORT, p, 4), &m), -EBADMSG);
	put32(p, 0xffffffffu);	/* PUBLISH_R whose run would wrap */
	put32(p + 4, 2);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_PUBLISH_R, p, 8), &m), -EBADMSG);
	put32(p, 0xfffffffeu);	/* the run's end one past: wraps to 0 */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_PUBLISH_R, p, 8), &m), -EBADMSG);
	put32(p, 0xfffffffdu);	/* slots 0xfffffffd and 0xfffffffe: the last run that fits */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_PUBLISH_R, p, 8), &m), 0);

	/* HELLO: pid, flags, domain length and characters. */
	memset(p, 0, 16);
	put32(p, 100);
	p[8] = 3;
	memcpy(p + 10, "a/b", 3);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_HELLO, p, 13), &m), -EBADMSG);
	memcpy(p + 10, "a.b", 3);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_HELLO, p, 13), &m), 0);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_HELLO, p, 12), &m), -EBADMSG);
	p[8] = 65;
	memset(p + 10, 'a', 65);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_HELLO, p, 75), &m), -EMSGSIZE);
	p[8] = 0;
	put32(p + 4, MD_HELLO_NO_POOL_MAPS);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_HELLO, p, 10), &m), 0);
	ASSERT_EQ(m.u.hello.flags, MD_HELLO_NO_POOL_MAPS);
	put32(p + 4, MD_HELLO_FLAGS_ALL + 1);	/* unknown flag */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_HELLO, p, 10), &m), -EBADMSG);
	put32(p + 4, 0);
	put32(p, 0);		/* pid 0 */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_HELLO, p, 10), &m), -EBADMSG);

	/* WELCOME: tunables and state bits as SET would allow. */
	memset(p, 0, MD_WELCOME_LEN);
	put32(p + 4, 16);		/* pool_pages */
	put32(p + 16, 100);		/* pages_to_scan */
	put32(p + 24, 100);		/* cpu_percent */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_WELCOME, p, MD_WELCOME_LEN), &m), 0);
	put32(p + 28, 2);		/* order */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_WELCOME, p, MD_WELCOME_LEN), &m), -EBADMSG);
	put32(p + 28, 0);
	put32(p + 36, 2);		/* unknown state bit */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_WELCOME, p, MD_WELCOME_LEN), &m), -EBADMSG);

	/* CONTROL: op, key/value presence and characters. */
	memset(p, 0, 32);
	put32(p, MD_CTL_PAUSE);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 16), &m), 0);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 12), &m), -EBADMSG);	/* version 3's */
	put32(p, 99);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 16), &m), -EBADMSG);
	put32(p, MD_CTL_SET);	/* SET without a key */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 16), &m), -EBADMSG);
	p[12] = 1, p[14] = 1, p[16] = 'k', p[17] = '\n';
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 18), &m), -EBADMSG);
	p[17] = 'v';
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 18), &m), 0);
	put32(p + 4, 0xffffffffu);	/* negative pid */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 18), &m), -EBADMSG);
	put32(p + 4, 0);
	p[14] = 0;	/* a key without a value */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 17), &m), -EBADMSG);
	p[14] = 1;
	put32(p, MD_CTL_PAUSE);	/* a key and a value for an operation other than SET */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 18), &m), -EBADMSG);
	/* The longest key and value fit the decoded message's arrays; one
	 * byte more of either is refused, not written past them. */
	put32(p, MD_CTL_SET);
	p[12] = MD_KEY_MAX, p[14] = MD_VALUE_MAX;
	memset(p + 16, 'k', MD_KEY_MAX);
	memset(p + 16 + MD_KEY_MAX, 'v', MD_VALUE_MAX);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 16 + MD_KEY_MAX + MD_VALUE_MAX), &m), 0);
	ASSERT_EQ(strlen(m.u.control.key), MD_KEY_MAX);
	ASSERT_EQ(strlen(m.u.control.value), MD_VALUE_MAX);
	p[12] = MD_KEY_MAX + 1, p[14] = 1;
	memset(p + 16, 'k', MD_KEY_MAX + 1);
	p[16 + MD_KEY_MAX + 1] = 'v';
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 16 + MD_KEY_MAX + 2), &m), -EBADMSG);
	p[12] = 1, p[14] = MD_VALUE_MAX + 1;
	memset(p + 17, 'v', MD_VALUE_MAX + 1);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL, p, 16 + 1 + MD_VALUE_MAX + 1), &m), -EBADMSG);

	/* CONTROL_DONE: a token, then a status and text as CONTROL_R's. */
	memset(p, 0, 32);
	put32(p, 5);
	put32(p + 4, (uint32_t)-ENOMEM);
	p[8] = 2, p[10] = 'n', p[11] = 'o';
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL_DONE, p, 12), &m), 0);
	ASSERT_EQ(m.u.control_done.token, 5);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL_DONE, p, 11), &m), -EBADMSG);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL_DONE, p, 3), &m), -EBADMSG);
	/* Too short for its token, it is refused before a byte past its
	 * end is read: the message ends where an unmapped page begins. */
	unsigned char *two = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(two != MAP_FAILED);
	ASSERT_EQ(mprotect(two + 4096, 4096, PROT_NONE), 0);
	for (uint32_t len = 0; len < 4; len++) {
		unsigned char *at = two + 4096 - MD_MSG_HDR_SIZE - len;
		md__msg_hdr_encode(at, MD_MSG_CONTROL_DONE, len, 1);
		memset(at + MD_MSG_HDR_SIZE, 5, len);
		ASSERT_EQ(md__msg_decode(at, MD_MSG_HDR_SIZE + len, &m), -EBADMSG);
		ASSERT_EQ(md__msg_decode_payload(MD_MSG_CONTROL_DONE, two + 4096 - len, len, &m), -EBADMSG);
	}
	munmap(two, 2 * 4096);
	put32(p + 4, 7);	/* a status that is no errno */
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_CONTROL_DONE, p, 12), &m), -EBADMSG);

	/* ERROR text: no control characters, status a negative errno. */
	memset(p, 0, 16);
	put32(p, (uint32_t)-EINVAL);
	p[4] = 2, p[6] = 'o', p[7] = 0x1b;
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_ERROR, p, 8), &m), -EBADMSG);
	p[7] = 'k';
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_ERROR, p, 8), &m), 0);
	put32(p, 5);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_ERROR, p, 8), &m), -EBADMSG);
	ASSERT_EQ(md__msg_decode(buf, raw(MD_MSG_STATUS_R, "{\0}", 3), &m), -EBADMSG);
	/* A payload read by itself (the CLI's replies) is held to its
	 * type's largest too: STATUS_R's text has no other bound. */
	static char doc[MD_MSG_MAX + 1];
	memset(doc, ' ', sizeof(doc));
	ASSERT_EQ(md__msg_decode_payload(MD_MSG_STATUS_R, doc, MD_MSG_MAX, &m), 0);
	ASSERT_EQ(md__msg_decode_payload(MD_MSG_STATUS_R, doc, MD_MSG_MAX + 1, &m), -EBADMSG);

	/* The encoder keeps the same rules. */
	m = (struct md__msg){ .hdr.type = MD_MSG_LOOKUP };
	ASSERT_EQ(md__msg_encode(&m, buf, sizeof(buf)), -EINVAL);		/* n = 0 */
	m.u.lookup.n = 1;
	ASSERT_EQ(md__msg_encode(&m, buf, 10), -EMSGSIZE);
	m = (struct md__msg){ .hdr.type = MD_MSG_HELLO };
	m.u.hello.pid = 1;
	strcpy(m.u.hello.domain, "bad name");
	ASSERT_EQ(md__msg_encode(&m, buf, sizeof(buf)), -EINVAL);
	m = (struct md__msg){ .hdr.type = MD_MSG_TYPE_END };
	ASSERT_EQ(md__msg_encode(&m, buf, sizeof(buf)), -EINVAL);
	return 0;
}

TEST_IMPL(daemon_tunables)
{
	struct md__tunables t, d;
	char msg[MD_TEXT_MAX];
	md__tunables_default(&t);
	d = t;
	ASSERT_EQ(md__tunable_set(&t, "pages_to_scan", "100000", msg, sizeof(msg)), 0);
	ASSERT_EQ(t.pages_to_scan, 100000);
	ASSERT_EQ(md__tunable_set(&t, "pages_to_scan", "100001", msg, sizeof(msg)), -EINVAL);
	ASSERT(strstr(msg, "1 to 100000"));
	ASSERT_EQ(md__tunable_set(&t, "pages_to_scan", "0", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "sleep_millisecs", "0", msg, sizeof(msg)), 0);
	ASSERT_EQ(md__tunable_set(&t, "sleep_millisecs", "-1", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "sleep_millisecs", "10x", msg, sizeof(msg)), -EINVAL);
	/* Digits only: strtoull alone would take a sign or leading blanks. */
	ASSERT_EQ(md__tunable_set(&t, "sleep_millisecs", "+5", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "sleep_millisecs", " 5", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "sleep_millisecs", "-0", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "sleep_millisecs", "", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "cpu_percent", "101", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "cpu_percent", "1", msg, sizeof(msg)), 0);
	ASSERT_EQ(md__tunable_set(&t, "hint_ratio", "9", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "hint_ratio", "8", msg, sizeof(msg)), 0);
	ASSERT_EQ(md__tunable_set(&t, "order", "random", msg, sizeof(msg)), 0);
	ASSERT_EQ(t.order, MD_ORDER_RANDOM);
	ASSERT_EQ(md__tunable_set(&t, "order", "sideways", msg, sizeof(msg)), -EINVAL);
	ASSERT_EQ(md__tunable_set(&t, "pages", "1", msg, sizeof(msg)), -EINVAL);
	ASSERT(strstr(msg, "unknown key 'pages'"));
	ASSERT(d.pages_to_scan == 100 && d.hint_ratio == 4);
	return 0;
}

/* Appends n bytes to the receive buffer as a recv would (room first). */
static void rx_put(struct md__rxbuf *b, const unsigned char *p, size_t n, size_t need)
{
	ASSERT_EQ(md__rxbuf_room(b, need), 0);
	ASSERT(b->cap - b->len >= n);
	memcpy(b->buf + b->len, p, n);
	b->len += n;
}

/* The receive buffer: whole messages come out in order however the bytes
 * arrive; a big one grows the buffer, which shrinks once it is handled; a
 * bad header is told before any room is made for it. */
TEST_IMPL(daemon_proto_rxbuf)
{
	static struct md__msg m;
	static unsigned char big[MD_MSG_HDR_SIZE + MD_MSG_MAX], pages[8 * MD_MSG_PAGE];
	struct md__rxbuf b = { 0 };
	struct md__msg_hdr h;
	size_t need, len = 0;

	for (uint32_t i = 0; i < 3; i++) {	/* REF of 1, 2, 3 slots */
		memset(&m, 0, sizeof(m));
		m.hdr = (struct md__msg_hdr){ .type = MD_MSG_REF, .seq = 10 + i };
		m.u.refs.n = i + 1;
		ssize_t n = md__msg_encode(&m, buf + len, sizeof(buf) - len);
		ASSERT(n > 0);
		len += (size_t)n;
	}
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), 0);
	ASSERT_EQ(need, MD_MSG_HDR_SIZE);
	/* A byte at a time: no message before its last byte. */
	size_t took = 0;
	uint32_t seq = 10;
	for (size_t i = 0; i < len; i++) {
		rx_put(&b, buf + i, 1, need);
		int got = md__rxbuf_next(&b, &h, &need);
		ASSERT(got == 0 || got == 1);
		if (got) {
			ASSERT_EQ(h.seq, seq++);
			ASSERT_EQ(md__msg_decode(b.buf + b.head, need, &m), 0);
			ASSERT_EQ(m.u.refs.n, h.seq - 9);
			b.head += need;
			took += need;
			ASSERT_EQ(md__rxbuf_next(&b, &h, &need), 0);
		}
	}
	ASSERT_EQ(seq, 13);
	ASSERT_EQ(took, len);
	ASSERT(b.cap <= MD_RXBUF_SIZE);

	/* A message bigger than the buffer: it grows to hold it whole. */
	memset(&m, 0, sizeof(m));
	m.hdr = (struct md__msg_hdr){ .type = MD_MSG_PUBLISH, .seq = 20 };
	m.u.publish.n = 8;
	memset(pages, 0x5a, sizeof(pages));
	m.u.publish.pages = pages;
	ssize_t n = md__msg_encode(&m, big, sizeof(big));
	ASSERT(n > (ssize_t)MD_RXBUF_SIZE);
	rx_put(&b, big, MD_MSG_HDR_SIZE, need);
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), 0);
	ASSERT_EQ(need, (size_t)n);
	rx_put(&b, big + MD_MSG_HDR_SIZE, (size_t)n - MD_MSG_HDR_SIZE, need);
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), 1);
	ASSERT_EQ(memcmp(b.buf + b.head, big, (size_t)n), 0);
	b.head += need;
	ASSERT(b.cap >= (size_t)n);
	md__rxbuf_trim(&b);	/* nothing kept: back to nothing */
	ASSERT(b.buf == NULL && b.cap == 0);

	/* Half a message kept across a compaction. */
	rx_put(&b, buf, len - 3, MD_MSG_HDR_SIZE);
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), 1);
	b.head += need;
	md__rxbuf_trim(&b);	/* bytes kept: stays */
	ASSERT(b.buf != NULL);
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), 1);
	b.head += need;
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), 0);
	size_t kept = b.len - b.head, cap = b.cap;
	ASSERT_EQ(md__rxbuf_room(&b, cap - b.head + 1), 0);	/* must compact */
	ASSERT_EQ(b.head, 0);
	ASSERT_EQ(b.cap, cap);
	ASSERT_EQ(b.len, kept);
	rx_put(&b, buf + len - 3, 3, need);
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), 1);
	ASSERT_EQ(h.seq, 12);

	/* A bad header is an error at once, whatever follows. */
	md__rxbuf_free(&b);
	memcpy(big, buf, MD_MSG_HDR_SIZE);
	big[0] = 'X';
	rx_put(&b, big, MD_MSG_HDR_SIZE, MD_MSG_HDR_SIZE);
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), -EPROTO);
	md__rxbuf_free(&b);
	md__msg_hdr_encode(big, MD_MSG_PUBLISH, 0x7fffffff, 1);
	rx_put(&b, big, MD_MSG_HDR_SIZE, MD_MSG_HDR_SIZE);
	ASSERT_EQ(md__rxbuf_next(&b, &h, &need), -EMSGSIZE);
	md__rxbuf_free(&b);
	return 0;
}

/* md__rxbuf_room shrinks a big buffer back once nothing is kept in it:
 * the client's has no md__rxbuf_trim, and a STATUS page (1 MiB) would stay
 * in every agent for its life. A big one that keeps bytes stays big, the
 * bytes moved to its front. */
TEST_IMPL(daemon_proto_rxbuf_room_shrinks)
{
	struct md__rxbuf b = { 0 };
	const size_t big = 4 * MD_RXBUF_SIZE;
	ASSERT_EQ(md__rxbuf_room(&b, big), 0);
	ASSERT(b.cap >= big);
	for (size_t i = 0; i < big; i++)
		b.buf[i] = (unsigned char)i;
	b.len = big;
	b.head = big - 10;	/* ten bytes of the next message kept */
	ASSERT_EQ(md__rxbuf_room(&b, MD_MSG_HDR_SIZE), 0);
	ASSERT(b.head == 0 && b.len == 10 && b.cap >= big);
	for (size_t i = 0; i < 10; i++)
		ASSERT_EQ(b.buf[i], (unsigned char)(big - 10 + i));
	b.head = b.len;		/* handled: nothing kept */
	ASSERT_EQ(md__rxbuf_room(&b, MD_MSG_HDR_SIZE), 0);
	ASSERT_EQ(b.cap, MD_RXBUF_SIZE);
	ASSERT(b.buf != NULL && b.head == 0 && b.len == 0);
	md__rxbuf_free(&b);
	return 0;
}
