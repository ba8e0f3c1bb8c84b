/*
 * rxbuf.h - the receiving end of a message stream (memdedupd's connections,
 * the client's): bytes read ahead of what was handled, whole messages taken
 * from the front. One recv takes whatever is waiting, so a batch of
 * pipelined messages costs one call, not a header and a payload read each.
 */
#ifndef MD_RXBUF_H
#define MD_RXBUF_H
#include <stddef.h>

#include "protocol.h"

#define MD_RXBUF_SIZE 16384u   /* the buffer, most of the time */

struct md__rxbuf {
	unsigned char *buf;
	size_t head, len, cap;     /* bytes [head, len) are not handled yet */
};

/* The next message at head: 1 if it is all there (its header in *h, its
 * size with the header in *need), 0 if more bytes are needed (at least
 * *need in all from head), or the error of md__msg_hdr_decode for a bad
 * header: its length is checked before anyone makes room for it. */
int md__rxbuf_next(const struct md__rxbuf *b, struct md__msg_hdr *h, size_t *need);
/* Makes room for need bytes from head on (what was handled is dead space),
 * and shrinks a big buffer once nothing is kept in it. The caller gave up
 * the bytes of the messages it took before. 0, or -ENOMEM. */
int md__rxbuf_room(struct md__rxbuf *b, size_t need);
/* Frees a big buffer once nothing is kept in it. */
void md__rxbuf_trim(struct md__rxbuf *b);
void md__rxbuf_free(struct md__rxbuf *b);
#endif
