/* fuzz_protocol.c - memdedupd's message decoder on arbitrary bytes. The
 * daemon decodes whatever any local user sends, and an agent whatever the
 * socket brings: every type must be rejected or decoded, never crash, and
 * whatever decodes must encode back to the same bytes (nothing read past
 * the declared lengths, nothing accepted that we would not send).
 *
 * The input is tried four ways: as a whole message (header included); with
 * its first byte choosing a type and the rest taken as that type's payload
 * behind a correct header (so the fuzzer reaches every payload decoder
 * without having to find the magic first); as a payload for
 * md__msg_decode_payload; and as a stream (common/rxbuf.c, as memdedupd and
 * the client read it), arriving in chunks whose size its first byte sets. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "rxbuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);

/* Types an input decoded as, whole and as it came (replay only). */
static uint32_t decoded_whole;

/* The strings of a decoded message end within their arrays: a length
 * the decoder let past its bound writes the NUL beyond (into the next
 * field, where neither ASan nor the round trip sees it). */
static int ends(const char *s, size_t size)
{
	return memchr(s, '\0', size) != NULL;
}

static void check_strings(const struct md__msg *m)
{
	int ok = 1;
	switch (m->hdr.type) {
	case MD_MSG_HELLO:
		ok = ends(m->u.hello.domain, sizeof(m->u.hello.domain));
		break;
	case MD_MSG_CONTROL:
		ok = ends(m->u.control.key, sizeof(m->u.control.key)) &&
		     ends(m->u.control.value, sizeof(m->u.control.value));
		break;
	case MD_MSG_CONTROL_R:
	case MD_MSG_ERROR:
		ok = ends(m->u.text.text, sizeof(m->u.text.text));
		break;
	case MD_MSG_CONTROL_DONE:
		ok = ends(m->u.control_done.result.text, sizeof(m->u.control_done.result.text));
		break;
	}
	if (!ok)
		__builtin_trap();
}

static void check_round_trip(const uint8_t *buf, size_t size, const struct md__msg *m)
{
	check_strings(m);
	size_t len = md__msg_encoded_len(m);
	if (len != size)
		__builtin_trap();
	unsigned char *out = malloc(len);
	if (!out)
		return;
	if (md__msg_encode(m, out, len) != (ssize_t)len || memcmp(out, buf, len) != 0)
		__builtin_trap();
	free(out);
}

static void try_whole(const uint8_t *buf, size_t size)
{
	static struct md__msg m;
	struct md__msg_hdr h;
	/* A header taken is one of ours, of a type we know, no longer than
	 * any message of that type. */
	if (md__msg_hdr_decode(buf, size, &h) == 0 &&
	    (h.magic != MD_MSG_MAGIC || h.version != MD_MSG_VERSION || h.type == 0 ||
	     h.type >= MD_MSG_TYPE_END || h.length > md__msg_max_len(h.type)))
		__builtin_trap();
	if (md__msg_decode(buf, size, &m) == 0)
		check_round_trip(buf, size, &m);
}

/* Whole messages out of the stream, in order, until a bad header; each one
 * decoded where it lies. The buffer never holds more than a message's room
 * past what was handled. */
static void try_stream(const uint8_t *data, size_t size)
{
	static struct md__msg m;
	struct md__rxbuf b = { 0 };
	size_t chunk = size ? 1 + data[0] % 64 * 97 : 1, off = 0;
	for (;;) {
		struct md__msg_hdr h;
		size_t need;
		int got = md__rxbuf_next(&b, &h, &need);
		if (got < 0)
			break;
		if (got == 1) {
			if (need != MD_MSG_HDR_SIZE + (size_t)h.length)
				__builtin_trap();
			if (md__msg_decode(b.buf + b.head, need, &m) == 0)
				check_strings(&m);
			b.head += need;
			continue;
		}
		if (off == size || md__rxbuf_room(&b, need) != 0)
			break;
		if (b.cap < b.head + need)
			__builtin_trap();
		size_t n = size - off < chunk ? size - off : chunk;
		if (n > b.cap - b.len)
			n = b.cap - b.len;
		memcpy(b.buf + b.len, data + off, n);
		b.len += n;
		off += n;
	}
	md__rxbuf_free(&b);
}

/* Called by the replay after the corpus: a corpus with no whole message of
 * some type (the seeds of an older protocol, say) exercises only that
 * type's rejections. `make fuzz-seeds` writes a fresh seed of every type. */
int md_fuzz_replay_check(void)
{
	int bad = 0;
	for (unsigned t = 1; t < MD_MSG_TYPE_END; t++)
		if (!(decoded_whole & (1u << t))) {
			fprintf(stderr, "fuzz_protocol: no input of the corpus decodes as a whole %s "
				"(run make fuzz-seeds)\n", md__msg_type_name(t));
			bad = 1;
		}
	return bad;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct md__msg m;
	try_whole(data, size);
	if (md__msg_decode(data, size, &m) == 0)
		decoded_whole |= 1u << m.hdr.type;
	try_stream(data, size);
	if (size < 1)
		return 0;
	unsigned type = 1 + data[0] % (MD_MSG_TYPE_END - 1);
	size_t plen = size - 1;
	if (plen > md__msg_max_len(type))
		return 0;
	unsigned char *buf = malloc(MD_MSG_HDR_SIZE + plen);	/* exact: ASan sees overreads */
	if (!buf)
		return 0;
	md__msg_hdr_encode(buf, type, (uint32_t)plen, 7);
	memcpy(buf + MD_MSG_HDR_SIZE, data + 1, plen);
	try_whole(buf, MD_MSG_HDR_SIZE + plen);
	free(buf);
	unsigned char *p = malloc(plen ? plen : 1);
	if (!p)
		return 0;
	memcpy(p, data + 1, plen);
	if (md__msg_decode_payload(type, p, (uint32_t)plen, &m) == 0)
		check_strings(&m);
	free(p);
	return 0;
}
