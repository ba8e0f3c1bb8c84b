/* protocol_seeds.c - writes one valid message of every type, encoded by this
 * version's encoder, into a corpus directory as seed-<TYPE> (`make
 * fuzz-seeds`), and variants as seed-<TYPE>-<what>: what every agent sends
 * (a HELLO with MD_HELLO_CONTROL_PID), the default domain, a paused
 * WELCOME, each CONTROL, and the largest message of a type (a STATUS_R of
 * MD_MSG_MAX bytes, a PUBLISH of MD_PUBLISH_MAX pages). The fuzzer mutates
 * from them, and the replay (which must decode a whole message of every
 * type, see fuzz_protocol.c) notices a corpus left behind by a change of
 * the protocol. Messages that break a rule go as seed-<TYPE>-<what> too,
 * written byte by byte: a key or value a byte too long, a key for another
 * operation than SET, a CONTROL_DONE shorter than its token, counts whose
 * length wraps in 32 bits, and one message for each rule only the decoder
 * checks (a field out of range, a byte more or fewer than the length its
 * fields give, another magic, an unknown type). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

/* Writes m as seed-<TYPE>, or seed-<TYPE>-<variant>. */
static int write_seed(const char *dir, struct md__msg *m, unsigned type, const char *variant)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	char path[4096];
	m->hdr.type = (uint16_t)type;
	m->hdr.seq = 7;
	ssize_t n = md__msg_encode(m, buf, sizeof(buf));
	if (n < 0) {
		fprintf(stderr, "protocol_seeds: %s does not encode: %s\n", md__msg_type_name(type),
			strerror((int)-n));
		return 1;
	}
	snprintf(path, sizeof(path), "%s/seed-%s%s%s", dir, md__msg_type_name(type), variant ? "-" : "",
		 variant ? variant : "");
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(buf, 1, (size_t)n, f) != (size_t)n || fclose(f) != 0) {
		fprintf(stderr, "protocol_seeds: cannot write %s\n", path);
		return 1;
	}
	return 0;
}

/* Writes len bytes of payload behind a header of type as
 * seed-<TYPE>-<variant>: messages the encoder refuses to make, for the
 * decoder to refuse too. A magic other than 0 replaces the header's; a
 * type we do not know is named type<number>. */
static int write_raw_magic(const char *dir, unsigned type, const void *payload, uint32_t len,
			   const char *variant, uint32_t magic)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	char path[4096];
	md__msg_hdr_encode(buf, type, len, 7);
	for (int i = 0; magic && i < 4; i++)
		buf[i] = (unsigned char)(magic >> (8 * i));
	memcpy(buf + MD_MSG_HDR_SIZE, payload, len);
	if (type > 0 && type < MD_MSG_TYPE_END)
		snprintf(path, sizeof(path), "%s/seed-%s-%s", dir, md__msg_type_name(type), variant);
	else
		snprintf(path, sizeof(path), "%s/seed-type%u-%s", dir, type, variant);
	FILE *f = fopen(path, "wb");
	size_t n = MD_MSG_HDR_SIZE + (size_t)len;
	if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0) {
		fprintf(stderr, "protocol_seeds: cannot write %s\n", path);
		return 1;
	}
	return 0;
}

static int write_raw(const char *dir, unsigned type, const void *payload, uint32_t len, const char *variant)
{
	return write_raw_magic(dir, type, payload, len, variant, 0);
}

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* m's payload, encoded as type, into p (of MD_MSG_MAX bytes): its length;
 * m is cleared for the next. */
static uint32_t payload_of(struct md__msg *m, unsigned type, unsigned char *p)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	m->hdr.type = (uint16_t)type;
	ssize_t n = md__msg_encode(m, buf, sizeof(buf));
	if (n < (ssize_t)MD_MSG_HDR_SIZE) {
		fprintf(stderr, "protocol_seeds: %s does not encode\n", md__msg_type_name(type));
		exit(1);
	}
	memcpy(p, buf + MD_MSG_HDR_SIZE, (size_t)n - MD_MSG_HDR_SIZE);
	memset(m, 0, sizeof(*m));
	return (uint32_t)n - MD_MSG_HDR_SIZE;
}

/* A CONTROL's payload (op, pid 0, token 5, key and value of kl and vl
 * bytes) into p: its length. */
static uint32_t control_payload(unsigned char *p, uint32_t op, unsigned kl, unsigned vl)
{
	memset(p, 0, 16);
	p[0] = (unsigned char)op;
	p[8] = 5;
	p[12] = (unsigned char)kl;
	p[14] = (unsigned char)vl;
	memset(p + 16, 'k', kl);
	memset(p + 16 + kl, 'v', vl);
	return 16 + kl + vl;
}

/* CONTROLs and a CONTROL_DONE that break a rule of the decoder's: a key
 * or a value a byte longer than the arrays they are decoded into, a key
 * given to an operation other than SET, a key without a value, a
 * CONTROL_DONE too short for its token. */
static int write_refused(const char *dir)
{
	unsigned char p[16 + MD_KEY_MAX + MD_VALUE_MAX];
	int bad = 0;
	bad |= write_raw(dir, MD_MSG_CONTROL, p, control_payload(p, MD_CTL_SET, MD_KEY_MAX + 1, 1),
			 "key-too-long");
	bad |= write_raw(dir, MD_MSG_CONTROL, p, control_payload(p, MD_CTL_SET, 1, MD_VALUE_MAX + 1),
			 "value-too-long");
	bad |= write_raw(dir, MD_MSG_CONTROL, p, control_payload(p, MD_CTL_PAUSE, 1, 1), "pause-with-key");
	bad |= write_raw(dir, MD_MSG_CONTROL, p, control_payload(p, MD_CTL_SET, 1, 0), "key-without-value");
	memset(p, 5, 3);
	bad |= write_raw(dir, MD_MSG_CONTROL_DONE, p, 3, "short");
	return bad;
}

/* Messages that break a rule only the decoder checks (what the encoder is
 * given cannot say it): a valid message with a field or its length
 * changed, each refused by one check alone. A decoder without that check
 * takes the message, and the replay's round trip traps on it (or, for a
 * message cut short, the ASan replay on the read past it). */
static int write_decode_refused(const char *dir)
{
	static struct md__msg m;
	static unsigned char p[MD_MSG_MAX];
	uint32_t len;
	int bad = 0;

	m.u.hello.pid = 1234;
	strcpy(m.u.hello.domain, "blue");
	len = payload_of(&m, MD_MSG_HELLO, p);
	p[len] = 'x';
	bad |= write_raw(dir, MD_MSG_HELLO, p, len + 1, "trailing");
	put32(p, 0x80000000u);
	bad |= write_raw(dir, MD_MSG_HELLO, p, len, "pid-past-int32");

	m.u.welcome.domain_id = 1;
	m.u.welcome.pool_pages = 1024;
	md__tunables_default(&m.u.welcome.tun);
	len = payload_of(&m, MD_MSG_WELCOME, p);
	bad |= write_raw(dir, MD_MSG_WELCOME, p, len - 1, "short");
	put32(p + 36, 2);		/* state: a bit past MD_WELCOME_PAUSED */
	bad |= write_raw(dir, MD_MSG_WELCOME, p, len, "unknown-state");
	put32(p + 36, 0);
	put32(p + 4, 0);		/* pool_pages */
	bad |= write_raw(dir, MD_MSG_WELCOME, p, len, "no-pool");

	m.u.publish_r.first_slot = 3, m.u.publish_r.n = 2;
	len = payload_of(&m, MD_MSG_PUBLISH_R, p);
	bad |= write_raw(dir, MD_MSG_PUBLISH_R, p, len - 1, "short");

	m.u.status.agent_from = 1234;
	len = payload_of(&m, MD_MSG_STATUS, p);
	bad |= write_raw(dir, MD_MSG_STATUS, p, len - 4, "half-cursor");

	/* Statuses: 0 or a negative errno, -4095 the lowest. */
	len = payload_of(&m, MD_MSG_ACK, p);
	put32(p, (uint32_t)-4096);
	bad |= write_raw(dir, MD_MSG_ACK, p, len, "status-past-errno");
	m.u.text.status = -EINVAL;
	strcpy(m.u.text.text, "unknown key");
	len = payload_of(&m, MD_MSG_ERROR, p);
	p[len] = 'x';
	bad |= write_raw(dir, MD_MSG_ERROR, p, len + 1, "trailing");
	put32(p, (uint32_t)-4096);
	bad |= write_raw(dir, MD_MSG_ERROR, p, len, "status-past-errno");

	/* A PAUSE of op 0, of the first op past the last, of pid -1. */
	m.u.control.op = MD_CTL_PAUSE;
	m.u.control.token = 5;
	len = payload_of(&m, MD_MSG_CONTROL, p);
	put32(p, 0);
	bad |= write_raw(dir, MD_MSG_CONTROL, p, len, "op-0");
	put32(p, MD_CTL_OP_END);
	bad |= write_raw(dir, MD_MSG_CONTROL, p, len, "op-unknown");
	put32(p, MD_CTL_PAUSE);
	put32(p + 4, UINT32_MAX);
	bad |= write_raw(dir, MD_MSG_CONTROL, p, len, "pid-negative");

	/* A whole ACK of another magic ("MDD2"); a header of the first type
	 * past the last, with no payload (as long as such a type's longest). */
	len = payload_of(&m, MD_MSG_ACK, p);
	bad |= write_raw_magic(dir, MD_MSG_ACK, p, len, "other-magic", MD_MSG_MAGIC + (1u << 24));
	bad |= write_raw(dir, MD_MSG_TYPE_END, p, 0, "empty");
	return bad;
}

/* Counts whose payload length wraps in 32 bits to the length given: a
 * REPORT of 2^29 counters in 4 bytes (4 + 8 * n), a LOOKUP of 0x0AAAAAAB
 * hashes in 12 (4 + 24 * n). Only the bound on n and a length check
 * that does not wrap keep the decoder within the payload and its arrays. */
static int write_wrapping(const char *dir)
{
	unsigned char p[12] = { 0 };
	int bad = 0;
	put32(p, 0x20000000u);
	bad |= write_raw(dir, MD_MSG_REPORT, p, 4, "count-wraps");
	put32(p, 0x0aaaaaabu);
	bad |= write_raw(dir, MD_MSG_LOOKUP, p, 12, "count-wraps");
	return bad;
}

/* Variants the daemon and the agents meet that the seeds above are not. */
static int write_variants(const char *dir)
{
	static struct md__msg m;
	static unsigned char pages[MD_PUBLISH_MAX * MD_MSG_PAGE];
	static char json[MD_MSG_MAX + 1];
	static const struct { unsigned op; const char *name; } ops[] = {
		{ MD_CTL_PAUSE, "pause" }, { MD_CTL_RESUME, "resume" }, { MD_CTL_UNMERGE, "unmerge" },
	};
	int bad = 0;

	/* Every agent's HELLO (engine/remote.c), and one of the default domain. */
	memset(&m, 0, sizeof(m));
	m.u.hello.pid = 1234;
	m.u.hello.flags = MD_HELLO_CONTROL_PID;
	m.u.hello.domain_len = 4;
	memcpy(m.u.hello.domain, "blue", 5);
	bad |= write_seed(dir, &m, MD_MSG_HELLO, "control-pid");
	m.u.hello.domain_len = 0;
	m.u.hello.domain[0] = '\0';
	bad |= write_seed(dir, &m, MD_MSG_HELLO, "default-domain");

	memset(&m, 0, sizeof(m));
	m.u.welcome.domain_id = 2;
	m.u.welcome.pool_pages = 1024;
	m.u.welcome.generation = 100;
	md__tunables_default(&m.u.welcome.tun);
	m.u.welcome.state = MD_WELCOME_PAUSED;
	bad |= write_seed(dir, &m, MD_MSG_WELCOME, "paused");

	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		memset(&m, 0, sizeof(m));
		m.u.control.op = ops[i].op;
		m.u.control.pid = i == 2 ? 1234 : 0;
		m.u.control.token = 6 + (uint32_t)i;
		bad |= write_seed(dir, &m, MD_MSG_CONTROL, ops[i].name);
	}

	memset(&m, 0, sizeof(m));
	m.u.control_done.token = 5;
	bad |= write_seed(dir, &m, MD_MSG_CONTROL_DONE, "ok");

	/* A SET of the longest key and value. */
	memset(&m, 0, sizeof(m));
	m.u.control.op = MD_CTL_SET;
	m.u.control.token = 9;
	memset(m.u.control.key, 'k', MD_KEY_MAX);
	memset(m.u.control.value, 'v', MD_VALUE_MAX);
	bad |= write_seed(dir, &m, MD_MSG_CONTROL, "longest");

	/* The largest messages: a STATUS_R of MD_MSG_MAX bytes (a JSON
	 * document padded out), a PUBLISH of MD_PUBLISH_MAX pages. */
	memset(&m, 0, sizeof(m));
	size_t n = (size_t)snprintf(json, sizeof(json), "{\"agents\": [], \"pad\": \"");
	memset(json + n, 'x', MD_MSG_MAX - n - 2);
	memcpy(json + MD_MSG_MAX - 2, "\"}", 2);
	m.u.status_r.json = json;
	m.u.status_r.len = MD_MSG_MAX;
	bad |= write_seed(dir, &m, MD_MSG_STATUS_R, "max");

	memset(&m, 0, sizeof(m));
	m.u.publish.n = MD_PUBLISH_MAX;
	for (uint32_t i = 0; i < MD_PUBLISH_MAX; i++) {
		memset(pages + (size_t)i * MD_MSG_PAGE, (int)i, MD_MSG_PAGE);
		m.u.publish.hash[i] = 0x1000 + i;
	}
	m.u.publish.pages = pages;
	bad |= write_seed(dir, &m, MD_MSG_PUBLISH, "max");
	return bad;
}

int main(int argc, char **argv)
{
	static struct md__msg m;
	static unsigned char pages[2 * MD_MSG_PAGE];
	static const char json[] = "{\"agents\": []}";
	int bad = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: protocol_seeds DIR\n");
		return 2;
	}
	for (unsigned type = 1; type < MD_MSG_TYPE_END; type++) {
		memset(&m, 0, sizeof(m));
		switch (type) {
		case MD_MSG_HELLO:
			m.u.hello.pid = 1234;
			m.u.hello.domain_len = 4;
			memcpy(m.u.hello.domain, "blue", 5);
			break;
		case MD_MSG_WELCOME:
			m.u.welcome.domain_id = 1;
			m.u.welcome.pool_pages = 1024;
			m.u.welcome.generation = 99;
			md__tunables_default(&m.u.welcome.tun);
			break;
		case MD_MSG_LOOKUP:
			m.u.lookup.n = 2;
			m.u.lookup.hash[0] = 0x1111, m.u.lookup.hash[1] = 0x2222;
			m.u.lookup.addr[0] = 0x7f0000000000, m.u.lookup.addr[1] = 0x7f0000001000;
			m.u.lookup.tag[1] = md__read_tag(md__read_key(8, 12), 4096);
			break;
		case MD_MSG_LOOKUP_R:
			m.u.lookup_r.n = 2;
			m.u.lookup_r.slot1[0] = 5, m.u.lookup_r.slot1[1] = MD_LOOKUP_PUBLISH;
			break;
		case MD_MSG_PUBLISH:
			memset(pages + MD_MSG_PAGE, 0xa5, MD_MSG_PAGE);
			m.u.publish.n = 2;
			m.u.publish.hash[0] = 0x1111, m.u.publish.hash[1] = 0x2222;
			m.u.publish.pages = pages;
			break;
		case MD_MSG_PUBLISH_R:
			m.u.publish_r.first_slot = 3, m.u.publish_r.n = 2;
			break;
		case MD_MSG_REF:
		case MD_MSG_UNREF:
			m.u.refs.n = 3;
			m.u.refs.slot[0] = 1, m.u.refs.slot[1] = 2, m.u.refs.slot[2] = 9;
			break;
		case MD_MSG_ACK:
			m.u.ack.status = -ENOMEM;
			break;
		case MD_MSG_REPORT:
			m.u.report.n = 4;
			m.u.report.counters[0] = 10, m.u.report.counters[3] = 40;
			break;
		case MD_MSG_STATUS:
			m.u.status.domain_from = UINT32_MAX;
			m.u.status.agent_from = 1234;
			break;
		case MD_MSG_STATUS_R:
			m.u.status_r.json = json;
			m.u.status_r.len = sizeof(json) - 1;
			break;
		case MD_MSG_CONTROL:
			m.u.control.op = MD_CTL_SET;
			m.u.control.token = 5;
			strcpy(m.u.control.key, "pages_to_scan");
			strcpy(m.u.control.value, "200");
			break;
		case MD_MSG_CONTROL_R:
		case MD_MSG_ERROR:
			m.u.text.status = -EINVAL;
			strcpy(m.u.text.text, "unknown key");
			break;
		case MD_MSG_CONTROL_DONE:
			m.u.control_done.token = 5;
			m.u.control_done.result.status = -ENOMEM;
			strcpy(m.u.control_done.result.text, "not enough memory available");
			break;
		case MD_MSG_CANDIDATES:
			m.u.candidates.n = 1;
			m.u.candidates.addr[0] = 0x7f0000002000;
			break;
		case MD_MSG_SHARE:
			m.u.share.part = MD_SHARE_ALL / 2;
			break;
		case MD_MSG_READS:
			m.u.reads.n = 1;
			m.u.reads.run[0] = (struct md__read_run){ md__read_key(8, 12), 8192, 0x7f0000003000, 4 };
			break;
		default:
			fprintf(stderr, "protocol_seeds: no seed for type %u (%s): add one\n", type,
				md__msg_type_name(type));
			bad = 1;
			continue;
		}
		bad |= write_seed(argv[1], &m, type, NULL);
	}
	return bad | write_variants(argv[1]) | write_refused(argv[1]) | write_wrapping(argv[1]) |
	       write_decode_refused(argv[1]);
}
