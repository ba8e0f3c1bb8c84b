/*
 * rxbuf.c - the receiving end of a message stream (see rxbuf.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rxbuf.h"

int md__rxbuf_next(const struct md__rxbuf *b, struct md__msg_hdr *h, size_t *need)
{
	size_t have = b->len - b->head;
	*need = MD_MSG_HDR_SIZE;
	if (have < MD_MSG_HDR_SIZE)
		return 0;
	int err = md__msg_hdr_decode(b->buf + b->head, have, h);
	if (err)
		return err;
	*need += h->length;
	return have >= *need;
}

int md__rxbuf_room(struct md__rxbuf *b, size_t need)
{
	size_t have = b->len - b->head;
	if (b->buf && b->head + need <= b->cap && (have || b->cap <= MD_RXBUF_SIZE))
		return 0;
	if (have)
		memmove(b->buf, b->buf + b->head, have);
	b->head = 0;
	b->len = have;
	size_t cap = need > MD_RXBUF_SIZE ? need : MD_RXBUF_SIZE;
	if (have && cap < b->cap)
		cap = b->cap;
	if (cap != b->cap || !b->buf) {
		unsigned char *n = realloc(b->buf, cap);
		if (!n)
			return -ENOMEM;
		b->buf = n;
		b->cap = cap;
	}
	return 0;
}

void md__rxbuf_trim(struct md__rxbuf *b)
{
	if (b->head == b->len && b->cap > MD_RXBUF_SIZE)
		md__rxbuf_free(b);
}

void md__rxbuf_free(struct md__rxbuf *b)
{
	free(b->buf);
	*b = (struct md__rxbuf){ 0 };
}
