/*
 * protocol.c - encoding and validated decoding of memdedupd's messages (see
 * protocol.h and docs/protocol.md).
 *
 * Decoding trusts nothing: every count is checked against the payload length
 * before an array is read, lengths must match exactly (no trailing bytes that
 * a later version could give a meaning to silently), and strings are checked
 * byte by byte. Encoding applies the same rules, so whatever we send a
 * well-behaved peer would accept.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "protocol.h"

/* Byte-wise little-endian access: payload fields are not aligned. */
static uint16_t get16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* A payload that is a u32 count n in 1..max and then exactly n elements of
 * size bytes. The length is compared in 64 bits: in 32, a count past max
 * could wrap size * n to the length given, and the bound on n would be all
 * that kept the reads within the payload. */
static int array_count(const unsigned char *p, uint32_t len, uint32_t max, uint32_t size, uint32_t *n)
{
	if (len < 4)
		return 0;
	*n = get32(p);
	return *n != 0 && *n <= max && len == 4 + (uint64_t)size * *n;
}

static unsigned char *put16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	return p + 2;
}

static unsigned char *put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
	return p + 4;
}

static unsigned char *put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	return put32(p + 4, (uint32_t)(v >> 32));
}

static const char *const type_names[MD_MSG_TYPE_END] = {
	[MD_MSG_HELLO] = "HELLO", [MD_MSG_WELCOME] = "WELCOME",
	[MD_MSG_LOOKUP] = "LOOKUP", [MD_MSG_LOOKUP_R] = "LOOKUP_R",
	[MD_MSG_PUBLISH] = "PUBLISH", [MD_MSG_PUBLISH_R] = "PUBLISH_R",
	[MD_MSG_REF] = "REF", [MD_MSG_UNREF] = "UNREF", [MD_MSG_ACK] = "ACK",
	[MD_MSG_REPORT] = "REPORT", [MD_MSG_STATUS] = "STATUS",
	[MD_MSG_STATUS_R] = "STATUS_R", [MD_MSG_CONTROL] = "CONTROL",
	[MD_MSG_CONTROL_R] = "CONTROL_R", [MD_MSG_ERROR] = "ERROR",
	[MD_MSG_CANDIDATES] = "CANDIDATES", [MD_MSG_SHARE] = "SHARE",
	[MD_MSG_READS] = "READS", [MD_MSG_CONTROL_DONE] = "CONTROL_DONE",
};

/* splitmix64's finalizer: every input bit moves every output bit. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

uint64_t md__read_key(uint64_t dev, uint64_t ino)
{
	return mix64(mix64(dev) ^ ino);
}

uint64_t md__read_tag(uint64_t key, uint64_t off)
{
	uint64_t t = mix64(key ^ mix64(off + 0x9e3779b97f4a7c15ull));
	return t ? t : 1;
}

#define READ_RUN_LEN 28u	/* key, off, addr, npages on the wire */

static int read_run_valid(const struct md__read_run *r)
{
	uint64_t bytes = (uint64_t)r->npages * MD_MSG_PAGE;
	return r->npages && r->npages <= MD_READ_RUN_PAGES && r->addr % MD_MSG_PAGE == 0 &&
	       r->addr <= (1ull << 47) - bytes && r->off <= UINT64_MAX - bytes;
}

const char *md__msg_type_name(unsigned type)
{
	return type > 0 && type < MD_MSG_TYPE_END ? type_names[type] : "?";
}

const char *md__control_op_name(unsigned op)
{
	static const char *const names[MD_CTL_OP_END] = {
		[MD_CTL_PAUSE] = "pause", [MD_CTL_RESUME] = "resume",
		[MD_CTL_UNMERGE] = "unmerge", [MD_CTL_SET] = "set",
	};
	return op > 0 && op < MD_CTL_OP_END ? names[op] : "?";
}

uint32_t md__msg_max_len(unsigned type)
{
	switch (type) {
	case MD_MSG_HELLO: return 10 + MD_DOMAIN_MAX;
	case MD_MSG_WELCOME: return MD_WELCOME_LEN;
	case MD_MSG_LOOKUP: return 4 + 24 * MD_LOOKUP_MAX;
	case MD_MSG_LOOKUP_R: return 4 + 4 * MD_LOOKUP_MAX;
	case MD_MSG_PUBLISH: return 4 + (8 + MD_MSG_PAGE) * MD_PUBLISH_MAX;
	case MD_MSG_PUBLISH_R: return 8;
	case MD_MSG_REF:
	case MD_MSG_UNREF: return 4 + 4 * MD_REF_MAX;
	case MD_MSG_ACK: return 4;
	case MD_MSG_REPORT: return 4 + 8 * MD_REPORT_MAX;
	case MD_MSG_STATUS: return 8;
	case MD_MSG_STATUS_R: return MD_MSG_MAX;
	case MD_MSG_CONTROL: return 16 + MD_KEY_MAX + MD_VALUE_MAX;
	case MD_MSG_CONTROL_R:
	case MD_MSG_ERROR: return 6 + MD_TEXT_MAX;
	case MD_MSG_CANDIDATES: return 4 + 8 * MD_CANDIDATES_MAX;
	case MD_MSG_SHARE: return 4;
	case MD_MSG_READS: return 4 + READ_RUN_LEN * MD_READS_MAX;
	case MD_MSG_CONTROL_DONE: return 10 + MD_TEXT_MAX;
	}
	return 0;
}

static int domain_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

int md__domain_valid(const char *name, size_t len)
{
	if (len > MD_DOMAIN_MAX)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (!domain_char((unsigned char)name[i]))
			return 0;
	return 1;
}

/* Keys and values of SET: visible ASCII, no spaces, no '='. */
static int word_valid(const char *s, size_t len, size_t max)
{
	if (len > max)
		return 0;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] > '~' || s[i] == '=')
			return 0;
	return 1;
}

/* Messages for people: printable ASCII and tabs; no NUL, no terminal
 * escapes a hostile daemon could send to the CLI's terminal. */
static int text_valid(const char *s, size_t len)
{
	if (len > MD_TEXT_MAX)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (((unsigned char)s[i] < ' ' && s[i] != '\t') || (unsigned char)s[i] > '~')
			return 0;
	return 1;
}

void md__msg_hdr_encode(void *buf, unsigned type, uint32_t length, uint32_t seq)
{
	unsigned char *p = buf;
	p = put32(p, MD_MSG_MAGIC);
	p = put16(p, MD_MSG_VERSION);
	p = put16(p, (uint16_t)type);
	p = put32(p, length);
	put32(p, seq);
}

/* The ranges SET accepts (md__tunable_set): WELCOME carries no others. */
static int tunables_valid(const struct md__tunables *t)
{
	return t->pages_to_scan >= 1 && t->pages_to_scan <= MD_PAGES_TO_SCAN_MAX && t->sleep_millisecs <= MD_SLEEP_MS_MAX &&
	       t->cpu_percent >= 1 && t->cpu_percent <= 100 && t->order <= MD_ORDER_RANDOM &&
	       t->hint_ratio <= MD_HINT_RATIO_MAX;
}

int md__msg_hdr_decode(const void *buf, size_t len, struct md__msg_hdr *h)
{
	const unsigned char *p = buf;
	if (len < MD_MSG_HDR_SIZE)
		return -EBADMSG;
	h->magic = get32(p);
	h->version = get16(p + 4);
	h->type = get16(p + 6);
	h->length = get32(p + 8);
	h->seq = get32(p + 12);
	if (h->magic != MD_MSG_MAGIC)
		return -EPROTO;
	if (h->version != MD_MSG_VERSION)
		return -EPROTONOSUPPORT;
	if (h->type == 0 || h->type >= MD_MSG_TYPE_END)
		return -EBADMSG;
	if (h->length > md__msg_max_len(h->type))
		return -EMSGSIZE;
	return 0;
}

static int decode_text(const unsigned char *p, uint32_t len, struct md__msg_text *t)
{
	if (len < 6)
		return -EBADMSG;
	t->status = (int32_t)get32(p);
	uint16_t n = get16(p + 4);
	if (len != 6u + n || !text_valid((const char *)p + 6, n))
		return -EBADMSG;
	/* Statuses are 0 or a negative errno: anything else is not ours. */
	if (t->status > 0 || t->status < -4095)
		return -EBADMSG;
	memcpy(t->text, p + 6, n);
	t->text[n] = '\0';
	return 0;
}

static int decode_payload(const unsigned char *p, uint32_t len, struct md__msg *m)
{
	uint32_t n;

	switch (m->hdr.type) {
	case MD_MSG_HELLO: {
		struct md__msg_hello *h = &m->u.hello;
		if (len < 10)
			return -EBADMSG;
		h->pid = get32(p);
		h->flags = get32(p + 4);
		h->domain_len = get16(p + 8);
		if (len != 10u + h->domain_len || !md__domain_valid((const char *)p + 10, h->domain_len))
			return -EBADMSG;
		if (h->pid == 0 || h->pid > INT32_MAX || (h->flags & ~MD_HELLO_FLAGS_ALL))
			return -EBADMSG;
		memcpy(h->domain, p + 10, h->domain_len);
		h->domain[h->domain_len] = '\0';
		return 0;
	}
	case MD_MSG_WELCOME: {
		struct md__msg_welcome *w = &m->u.welcome;
		if (len != MD_WELCOME_LEN)
			return -EBADMSG;
		w->domain_id = get32(p);
		w->pool_pages = get32(p + 4);
		w->generation = get64(p + 8);
		w->tun.pages_to_scan = get32(p + 16);
		w->tun.sleep_millisecs = get32(p + 20);
		w->tun.cpu_percent = get32(p + 24);
		w->tun.order = get32(p + 28);
		w->tun.hint_ratio = get32(p + 32);
		w->state = get32(p + 36);
		if (w->pool_pages == 0 || (w->state & ~MD_WELCOME_PAUSED) || !tunables_valid(&w->tun))
			return -EBADMSG;
		return 0;
	}
	case MD_MSG_LOOKUP:
		if (!array_count(p, len, MD_LOOKUP_MAX, 24, &n))
			return -EBADMSG;
		m->u.lookup.n = n;
		for (uint32_t i = 0; i < n; i++) {
			m->u.lookup.hash[i] = get64(p + 4 + 8 * i);
			m->u.lookup.addr[i] = get64(p + 4 + 8 * n + 8 * i);
			m->u.lookup.tag[i] = get64(p + 4 + 16 * n + 8 * i);
		}
		return 0;
	case MD_MSG_LOOKUP_R:
		if (!array_count(p, len, MD_LOOKUP_MAX, 4, &n))
			return -EBADMSG;
		m->u.lookup_r.n = n;
		for (uint32_t i = 0; i < n; i++)
			m->u.lookup_r.slot1[i] = get32(p + 4 + 4 * i);
		return 0;
	case MD_MSG_PUBLISH:
		if (!array_count(p, len, MD_PUBLISH_MAX, 8 + MD_MSG_PAGE, &n))
			return -EBADMSG;
		m->u.publish.n = n;
		for (uint32_t i = 0; i < n; i++)
			m->u.publish.hash[i] = get64(p + 4 + 8 * i);
		m->u.publish.pages = p + 4 + 8 * n;
		return 0;
	case MD_MSG_PUBLISH_R:
		if (len != 8)
			return -EBADMSG;
		m->u.publish_r.first_slot = get32(p);
		m->u.publish_r.n = get32(p + 4);
		n = m->u.publish_r.n;
		/* slot + n must not wrap: the agent maps the run. */
		if (n == 0 || n > MD_PUBLISH_MAX || m->u.publish_r.first_slot > UINT32_MAX - n)
			return -EBADMSG;
		return 0;
	case MD_MSG_REF:
	case MD_MSG_UNREF:
		if (!array_count(p, len, MD_REF_MAX, 4, &n))
			return -EBADMSG;
		m->u.refs.n = n;
		for (uint32_t i = 0; i < n; i++)
			m->u.refs.slot[i] = get32(p + 4 + 4 * i);
		return 0;
	case MD_MSG_ACK:
		if (len != 4)
			return -EBADMSG;
		m->u.ack.status = (int32_t)get32(p);
		return m->u.ack.status > 0 || m->u.ack.status < -4095 ? -EBADMSG : 0;
	case MD_MSG_REPORT:
		if (len < 4 || (n = get32(p)) > MD_REPORT_MAX || len != 4 + 8ull * n)
			return -EBADMSG;
		m->u.report.n = n;
		for (uint32_t i = 0; i < n; i++)
			m->u.report.counters[i] = get64(p + 4 + 8 * i);
		return 0;
	case MD_MSG_STATUS:
		if (len != 0 && len != 8)
			return -EBADMSG;
		m->u.status.domain_from = len ? get32(p) : 0;
		m->u.status.agent_from = len ? get32(p + 4) : 0;
		/* The first page is sent empty: one encoding per message, as
		 * everywhere else. */
		return len && !m->u.status.domain_from && !m->u.status.agent_from ? -EBADMSG : 0;
	case MD_MSG_STATUS_R:
		/* A document for jansson: text, so no NUL inside. */
		if (len == 0 || memchr(p, '\0', len))
			return -EBADMSG;
		m->u.status_r.json = (const char *)p;
		m->u.status_r.len = len;
		return 0;
	case MD_MSG_CONTROL: {
		struct md__msg_control *c = &m->u.control;
		if (len < 16)
			return -EBADMSG;
		c->op = get32(p);
		c->pid = (int32_t)get32(p + 4);
		c->token = get32(p + 8);
		uint16_t kl = get16(p + 12), vl = get16(p + 14);
		if (c->op == 0 || c->op >= MD_CTL_OP_END || c->pid < 0 || len != 16u + kl + vl)
			return -EBADMSG;
		if (!word_valid((const char *)p + 16, kl, MD_KEY_MAX) ||
		    !word_valid((const char *)p + 16 + kl, vl, MD_VALUE_MAX))
			return -EBADMSG;
		/* SET needs both; the other operations take neither. */
		if ((c->op == MD_CTL_SET) != (kl > 0) || (kl > 0) != (vl > 0))
			return -EBADMSG;
		memcpy(c->key, p + 16, kl);
		c->key[kl] = '\0';
		memcpy(c->value, p + 16 + kl, vl);
		c->value[vl] = '\0';
		return 0;
	}
	case MD_MSG_CONTROL_R:
	case MD_MSG_ERROR:
		return decode_text(p, len, &m->u.text);
	case MD_MSG_CONTROL_DONE:
		if (len < 4)
			return -EBADMSG;
		m->u.control_done.token = get32(p);
		return decode_text(p + 4, len - 4, &m->u.control_done.result);
	case MD_MSG_CANDIDATES:
		if (!array_count(p, len, MD_CANDIDATES_MAX, 8, &n))
			return -EBADMSG;
		m->u.candidates.n = n;
		for (uint32_t i = 0; i < n; i++)
			m->u.candidates.addr[i] = get64(p + 4 + 8 * i);
		return 0;
	case MD_MSG_SHARE:
		if (len != 4 || (n = get32(p)) == 0 || n > MD_SHARE_ALL)
			return -EBADMSG;
		m->u.share.part = n;
		return 0;
	case MD_MSG_READS:
		if (!array_count(p, len, MD_READS_MAX, READ_RUN_LEN, &n))
			return -EBADMSG;
		m->u.reads.n = n;
		for (uint32_t i = 0; i < n; i++) {
			const unsigned char *q = p + 4 + READ_RUN_LEN * i;
			struct md__read_run *r = &m->u.reads.run[i];
			*r = (struct md__read_run){ get64(q), get64(q + 8), get64(q + 16), get32(q + 24) };
			if (!read_run_valid(r))
				return -EBADMSG;
		}
		return 0;
	}
	return -EBADMSG;
}

int md__msg_decode(const void *buf, size_t len, struct md__msg *m)
{
	int err = md__msg_hdr_decode(buf, len, &m->hdr);
	if (err)
		return err;
	if (len != MD_MSG_HDR_SIZE + (size_t)m->hdr.length)
		return -EBADMSG;
	return decode_payload((const unsigned char *)buf + MD_MSG_HDR_SIZE, m->hdr.length, m);
}

int md__msg_decode_payload(unsigned type, const void *payload, uint32_t len, struct md__msg *m)
{
	if (type == 0 || type >= MD_MSG_TYPE_END || len > md__msg_max_len(type))
		return -EBADMSG;
	m->hdr = (struct md__msg_hdr){ MD_MSG_MAGIC, MD_MSG_VERSION, (uint16_t)type, len, 0 };
	return decode_payload(payload, len, m);
}

/* The payload length of m, or 0 with *ok = 0 if m breaks a rule. Counts
 * are multiplied in 64 bits, so that a count past its bound cannot wrap to
 * a length the callers' check against the type's largest lets through. */
static uint64_t payload_len(const struct md__msg *m, int *ok)
{
	uint32_t n;
	size_t l;
	*ok = 1;
	switch (m->hdr.type) {
	case MD_MSG_HELLO:
		l = strnlen(m->u.hello.domain, sizeof(m->u.hello.domain));
		if (!md__domain_valid(m->u.hello.domain, l) || m->u.hello.pid == 0 ||
		    m->u.hello.pid > INT32_MAX || (m->u.hello.flags & ~MD_HELLO_FLAGS_ALL))
			break;
		return 10 + (uint32_t)l;
	case MD_MSG_WELCOME:
		if (m->u.welcome.pool_pages == 0 || (m->u.welcome.state & ~MD_WELCOME_PAUSED) ||
		    !tunables_valid(&m->u.welcome.tun))
			break;
		return MD_WELCOME_LEN;
	case MD_MSG_LOOKUP:
	case MD_MSG_LOOKUP_R:
		n = m->hdr.type == MD_MSG_LOOKUP ? m->u.lookup.n : m->u.lookup_r.n;
		if (n == 0 || n > MD_LOOKUP_MAX)
			break;
		return 4 + (m->hdr.type == MD_MSG_LOOKUP ? 24ull : 4ull) * n;
	case MD_MSG_PUBLISH:
		n = m->u.publish.n;
		if (n == 0 || n > MD_PUBLISH_MAX || !m->u.publish.pages)
			break;
		return 4 + (8ull + MD_MSG_PAGE) * n;
	case MD_MSG_PUBLISH_R:
		n = m->u.publish_r.n;
		if (n == 0 || n > MD_PUBLISH_MAX || m->u.publish_r.first_slot > UINT32_MAX - n)
			break;
		return 8;
	case MD_MSG_REF:
	case MD_MSG_UNREF:
		if (m->u.refs.n == 0 || m->u.refs.n > MD_REF_MAX)
			break;
		return 4 + 4ull * m->u.refs.n;
	case MD_MSG_ACK:
		if (m->u.ack.status > 0 || m->u.ack.status < -4095)
			break;
		return 4;
	case MD_MSG_REPORT:
		if (m->u.report.n > MD_REPORT_MAX)
			break;
		return 4 + 8ull * m->u.report.n;
	case MD_MSG_STATUS:
		*ok = 1;
		return m->u.status.domain_from || m->u.status.agent_from ? 8 : 0;
	case MD_MSG_STATUS_R:
		if (!m->u.status_r.json || m->u.status_r.len == 0 || m->u.status_r.len > MD_MSG_MAX ||
		    memchr(m->u.status_r.json, '\0', m->u.status_r.len))
			break;
		return m->u.status_r.len;
	case MD_MSG_CONTROL: {
		const struct md__msg_control *c = &m->u.control;
		size_t kl = strnlen(c->key, sizeof(c->key)), vl = strnlen(c->value, sizeof(c->value));
		if (c->op == 0 || c->op >= MD_CTL_OP_END || c->pid < 0 ||
		    !word_valid(c->key, kl, MD_KEY_MAX) || !word_valid(c->value, vl, MD_VALUE_MAX) ||
		    (c->op == MD_CTL_SET) != (kl > 0) || (kl > 0) != (vl > 0))
			break;
		return 16 + (uint32_t)(kl + vl);
	}
	case MD_MSG_CONTROL_R:
	case MD_MSG_ERROR:
	case MD_MSG_CONTROL_DONE: {
		const struct md__msg_text *t = m->hdr.type == MD_MSG_CONTROL_DONE ?
					       &m->u.control_done.result : &m->u.text;
		l = strnlen(t->text, sizeof(t->text));
		if (!text_valid(t->text, l) || t->status > 0 || t->status < -4095)
			break;
		return (m->hdr.type == MD_MSG_CONTROL_DONE ? 10 : 6) + (uint32_t)l;
	}
	case MD_MSG_CANDIDATES:
		n = m->u.candidates.n;
		if (n == 0 || n > MD_CANDIDATES_MAX)
			break;
		return 4 + 8ull * n;
	case MD_MSG_SHARE:
		if (m->u.share.part == 0 || m->u.share.part > MD_SHARE_ALL)
			break;
		return 4;
	case MD_MSG_READS:
		n = m->u.reads.n;
		if (n == 0 || n > MD_READS_MAX)
			break;
		for (uint32_t i = 0; i < n; i++)
			if (!read_run_valid(&m->u.reads.run[i]))
				n = 0;
		if (!n)
			break;
		return 4 + (uint64_t)READ_RUN_LEN * n;
	}
	*ok = 0;
	return 0;
}

/* m's payload length, or -EINVAL if it breaks a rule or is longer than any
 * message of its type the decoder takes. */
static int64_t checked_len(const struct md__msg *m)
{
	int ok;
	uint64_t len = payload_len(m, &ok);
	return ok && len <= md__msg_max_len(m->hdr.type) ? (int64_t)len : -EINVAL;
}

size_t md__msg_encoded_len(const struct md__msg *m)
{
	int64_t len = checked_len(m);
	return len < 0 ? 0 : MD_MSG_HDR_SIZE + (size_t)len;
}

void md__msg_publish1_head(void *buf, uint32_t seq, uint64_t hash)
{
	unsigned char *p = buf;
	md__msg_hdr_encode(p, MD_MSG_PUBLISH, 4 + 8 + MD_MSG_PAGE, seq);
	put64(put32(p + MD_MSG_HDR_SIZE, 1), hash);
}

ssize_t md__msg_encode(const struct md__msg *m, void *buf, size_t size)
{
	int64_t wide = checked_len(m);
	if (wide < 0)
		return -EINVAL;
	uint32_t len = (uint32_t)wide;
	if (size < MD_MSG_HDR_SIZE + (size_t)len)
		return -EMSGSIZE;
	unsigned char *p = buf;
	md__msg_hdr_encode(p, m->hdr.type, len, m->hdr.seq);
	p += MD_MSG_HDR_SIZE;

	switch (m->hdr.type) {
	case MD_MSG_HELLO:
		p = put32(p, m->u.hello.pid);
		p = put32(p, m->u.hello.flags);
		p = put16(p, (uint16_t)(len - 10));
		memcpy(p, m->u.hello.domain, len - 10);
		break;
	case MD_MSG_WELCOME: {
		const struct md__msg_welcome *w = &m->u.welcome;
		p = put32(p, w->domain_id);
		p = put32(p, w->pool_pages);
		p = put64(p, w->generation);
		p = put32(p, w->tun.pages_to_scan);
		p = put32(p, w->tun.sleep_millisecs);
		p = put32(p, w->tun.cpu_percent);
		p = put32(p, w->tun.order);
		p = put32(p, w->tun.hint_ratio);
		put32(p, w->state);
		break;
	}
	case MD_MSG_LOOKUP:
		p = put32(p, m->u.lookup.n);
		for (uint32_t i = 0; i < m->u.lookup.n; i++)
			p = put64(p, m->u.lookup.hash[i]);
		for (uint32_t i = 0; i < m->u.lookup.n; i++)
			p = put64(p, m->u.lookup.addr[i]);
		for (uint32_t i = 0; i < m->u.lookup.n; i++)
			p = put64(p, m->u.lookup.tag[i]);
		break;
	case MD_MSG_LOOKUP_R:
		p = put32(p, m->u.lookup_r.n);
		for (uint32_t i = 0; i < m->u.lookup_r.n; i++)
			p = put32(p, m->u.lookup_r.slot1[i]);
		break;
	case MD_MSG_PUBLISH:
		p = put32(p, m->u.publish.n);
		for (uint32_t i = 0; i < m->u.publish.n; i++)
			p = put64(p, m->u.publish.hash[i]);
		memcpy(p, m->u.publish.pages, (size_t)m->u.publish.n * MD_MSG_PAGE);
		break;
	case MD_MSG_PUBLISH_R:
		p = put32(p, m->u.publish_r.first_slot);
		put32(p, m->u.publish_r.n);
		break;
	case MD_MSG_REF:
	case MD_MSG_UNREF:
		p = put32(p, m->u.refs.n);
		for (uint32_t i = 0; i < m->u.refs.n; i++)
			p = put32(p, m->u.refs.slot[i]);
		break;
	case MD_MSG_ACK:
		put32(p, (uint32_t)m->u.ack.status);
		break;
	case MD_MSG_REPORT:
		p = put32(p, m->u.report.n);
		for (uint32_t i = 0; i < m->u.report.n; i++)
			p = put64(p, m->u.report.counters[i]);
		break;
	case MD_MSG_STATUS:
		if (len) {
			p = put32(p, m->u.status.domain_from);
			put32(p, m->u.status.agent_from);
		}
		break;
	case MD_MSG_STATUS_R:
		memcpy(p, m->u.status_r.json, len);
		break;
	case MD_MSG_CONTROL: {
		const struct md__msg_control *c = &m->u.control;
		size_t kl = strlen(c->key), vl = strlen(c->value);
		p = put32(p, c->op);
		p = put32(p, (uint32_t)c->pid);
		p = put32(p, c->token);
		p = put16(p, (uint16_t)kl);
		p = put16(p, (uint16_t)vl);
		memcpy(p, c->key, kl);
		memcpy(p + kl, c->value, vl);
		break;
	}
	case MD_MSG_CONTROL_R:
	case MD_MSG_ERROR:
		p = put32(p, (uint32_t)m->u.text.status);
		p = put16(p, (uint16_t)(len - 6));
		memcpy(p, m->u.text.text, len - 6);
		break;
	case MD_MSG_CONTROL_DONE:
		p = put32(p, m->u.control_done.token);
		p = put32(p, (uint32_t)m->u.control_done.result.status);
		p = put16(p, (uint16_t)(len - 10));
		memcpy(p, m->u.control_done.result.text, len - 10);
		break;
	case MD_MSG_CANDIDATES:
		p = put32(p, m->u.candidates.n);
		for (uint32_t i = 0; i < m->u.candidates.n; i++)
			p = put64(p, m->u.candidates.addr[i]);
		break;
	case MD_MSG_SHARE:
		put32(p, m->u.share.part);
		break;
	case MD_MSG_READS:
		p = put32(p, m->u.reads.n);
		for (uint32_t i = 0; i < m->u.reads.n; i++) {
			const struct md__read_run *r = &m->u.reads.run[i];
			p = put64(p, r->key);
			p = put64(p, r->off);
			p = put64(p, r->addr);
			p = put32(p, r->npages);
		}
		break;
	}
	return (ssize_t)(MD_MSG_HDR_SIZE + len);
}

int md__state_parse(char *text, int *paused, struct md__tunables *tun, char *why, size_t size)
{
	struct md__tunables t = *tun;
	int p = *paused, line = 0;
	char msg[MD_TEXT_MAX + 1];
	for (char *s = text, *nl; *s; s = nl + 1) {
		line++;
		nl = strchr(s, '\n');
		if (!nl) {
			snprintf(why, size, "line %d is not ended", line);
			return -EINVAL;
		}
		*nl = 0;
		char *eq = strchr(s, '=');
		if (!eq) {
			snprintf(why, size, "line %d is no KEY=VALUE", line);
			return -EINVAL;
		}
		*eq = 0;
		if (strcmp(s, "paused") == 0) {
			if (strcmp(eq + 1, "0") != 0 && strcmp(eq + 1, "1") != 0) {
				snprintf(why, size, "line %d: paused must be 0 or 1", line);
				return -EINVAL;
			}
			p = eq[1] == '1';
		} else if (md__tunable_set(&t, s, eq + 1, msg, sizeof(msg)) != 0) {
			snprintf(why, size, "line %d: %s", line, msg);
			return -EINVAL;
		}
	}
	*paused = p;
	*tun = t;
	return 0;
}

void md__tunables_default(struct md__tunables *t)
{
	/* The scanner's own defaults (engine/scanner.c), and no CPU cap. */
	*t = (struct md__tunables){
		.pages_to_scan = 100, .sleep_millisecs = 20, .cpu_percent = 100,
		.order = MD_ORDER_LINEAR, .hint_ratio = 4,
	};
}

int md__parse_uint(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	char *end;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

int md__parse_bool(const char *s)
{
	static const char *const yes[] = { "1", "on", "yes", "true" }, *const no[] = { "0", "off", "no", "false" };
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(s, yes[i]) == 0)
			return 1;
		if (strcasecmp(s, no[i]) == 0)
			return 0;
	}
	return -EINVAL;
}

int md__tunable_set(struct md__tunables *t, const char *key, const char *value,
		    char *msg, size_t size)
{
	static const struct {
		const char *key;
		uint32_t min, max;
		size_t off;
	} nums[] = {
		{ "pages_to_scan", 1, MD_PAGES_TO_SCAN_MAX, offsetof(struct md__tunables, pages_to_scan) },
		{ "sleep_millisecs", 0, MD_SLEEP_MS_MAX, offsetof(struct md__tunables, sleep_millisecs) },
		{ "cpu_percent", 1, MD_CPU_PERCENT_MAX, offsetof(struct md__tunables, cpu_percent) },
		{ "hint_ratio", 0, MD_HINT_RATIO_MAX, offsetof(struct md__tunables, hint_ratio) },
	};
	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		if (strcmp(key, nums[i].key) != 0)
			continue;
		uint32_t v;
		if (md__parse_uint(value, nums[i].min, nums[i].max, &v)) {
			snprintf(msg, size, "%s must be a whole number from %u to %u, not '%s'",
				 key, nums[i].min, nums[i].max, value);
			return -EINVAL;
		}
		memcpy((char *)t + nums[i].off, &v, sizeof(v));
		return 0;
	}
	if (strcmp(key, "order") == 0) {
		if (strcmp(value, "linear") == 0)
			t->order = MD_ORDER_LINEAR;
		else if (strcmp(value, "random") == 0)
			t->order = MD_ORDER_RANDOM;
		else {
			snprintf(msg, size, "order must be 'linear' or 'random', not '%s'", value);
			return -EINVAL;
		}
		return 0;
	}
	snprintf(msg, size, "unknown key '%s' (known: pages_to_scan, sleep_millisecs, "
		 "cpu_percent, order, hint_ratio)", key);
	return -EINVAL;
}
