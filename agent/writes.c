/*
 * writes.c - writes from the VMM's memory in flight, which a lease break
 * waits for.
 *
 * A write with O_DIRECT (QEMU's cache=none) pins the pages it writes from,
 * and the device reads them by DMA while the call runs. When such a page is
 * an image's page cache page (shared at read time, or merged onto the
 * image), making guest RAM private at a lease break does not take it from
 * the write: the write still holds the file's page, and once the lease is
 * given back the writer's bytes in it would reach the disk, content the
 * guest never wrote. So the VMM's writes are numbered and kept in a list
 * while in flight; a break, once the image's pages are private, notes the
 * last number begun (md__writes_mark) and gives the lease back only when
 * every write up to it has returned (md__writes_ended). A write begun after
 * the mark found the pages private, as nothing maps the image meanwhile.
 * Only the pwrite family is followed (as reads, only the pread family):
 * Linux AIO and io_uring reads stop sharing altogether (unseen_io.c).
 */
#include <pthread.h>

#include "agent_internal.h"
#include "sys.h"

static void write_begin(struct md_agent *a, struct md__write *w)
{
	pthread_mutex_lock(&a->writes_lock);
	w->seq = ++a->writes_seq;
	w->next = NULL;
	w->prev = a->writes_newest;
	if (w->prev)
		w->prev->next = w;
	else
		a->writes_oldest = w;
	a->writes_newest = w;
	pthread_mutex_unlock(&a->writes_lock);
}

static void write_end(struct md_agent *a, struct md__write *w)
{
	pthread_mutex_lock(&a->writes_lock);
	if (w->prev)
		w->prev->next = w->next;
	else
		a->writes_oldest = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		a->writes_newest = w->prev;
	pthread_mutex_unlock(&a->writes_lock);
}

uint64_t md__writes_mark(struct md_agent *a)
{
	pthread_mutex_lock(&a->writes_lock);
	uint64_t mark = a->writes_seq;
	pthread_mutex_unlock(&a->writes_lock);
	return mark;
}

int md__writes_ended(struct md_agent *a, uint64_t mark)
{
	pthread_mutex_lock(&a->writes_lock);
	int ended = !a->writes_oldest || a->writes_oldest->seq > mark;
	pthread_mutex_unlock(&a->writes_lock);
	return ended;
}

struct write_rec {
	struct md_agent *a;
	struct md__write *w;
};

/* A cancel of the VMM's thread acted in its write (md__vmm_pwrite): its
 * record, on the stack the thread leaves, goes (or a break waited for it
 * for good). */
static void write_undo(void *p)
{
	const struct write_rec *r = p;
	write_end(r->a, r->w);
}

/* Each one makes the system call the VMM asked for: a seccomp filter may
 * allow pwrite64 and not pwritev. errno is as the call left it. A
 * cancellation point, as the C library's, in that call alone. */
ssize_t md_agent_pwritev(md_agent *a, int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	MD_NOCANCEL_SCOPE();
	struct md__write w;
	struct write_rec r = { a, &w };
	if (a)
		write_begin(a, &w);
	ssize_t n = md__vmm_pwritev2(fd, iov, iovcnt, off, flags, a ? write_undo : NULL, &r);
	if (a)
		write_end(a, &w);
	return n;
}

ssize_t md_agent_pwrite(md_agent *a, int fd, const void *buf, size_t len, off_t off)
{
	MD_NOCANCEL_SCOPE();
	struct md__write w;
	struct write_rec r = { a, &w };
	if (a)
		write_begin(a, &w);
	ssize_t n = md__vmm_pwrite(fd, buf, len, off, a ? write_undo : NULL, &r);
	if (a)
		write_end(a, &w);
	return n;
}
