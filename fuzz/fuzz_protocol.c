/* fuzz_protocol.c - memdedupd's message decoder on arbitrary bytes. The
 * daemon decodes whatever any local user sends, and an agent whatever the
 * socket brings: every type must be rejected or decoded, never crash, and
 * whatever decodes must encode back to the same bytes (nothing read past
 * the declared lengths, nothing accepted that we would not send).
 *
 * The input is tried three ways: as a whole message (header included); with
 * its first byte choosing a type and the rest taken as that type's payload
 * behind a correct header (so the fuzzer reaches every payload decoder
 * without having to find the magic first); and as a payload for
 * md__msg_decode_payload. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_round_trip(const uint8_t *buf, size_t size, const struct md__msg *m)
{
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
	if (md__msg_hdr_decode(buf, size, &h) == 0 && h.length > md__msg_max_len(h.type))
		__builtin_trap();
	if (md__msg_decode(buf, size, &m) == 0)
		check_round_trip(buf, size, &m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct md__msg m;
	try_whole(data, size);
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
	md__msg_decode_payload(type, p, (uint32_t)plen, &m);
	free(p);
	return 0;
}
