/*
 * test_server.c - memdedupd's loop driven in the test's own process, one
 * wake-up at a time (md__server_events), over socket pairs whose far ends
 * the test holds: what one wake-up does, without timing anything.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon.h"
#include "protocol.h"
#include "runner.h"

#define FLOODERS 8
#define ASKS 8	/* STATUS requests each flooder queues */

/* A daemon with no listener, no signals: its loop's state only. */
static struct md__daemon *daemon_up(void)
{
	struct md__daemon *d = calloc(1, sizeof(*d));
	ASSERT(d);
	d->lfd = d->sigfd = -1;
	d->epfd = epoll_create1(EPOLL_CLOEXEC);
	ASSERT(d->epfd >= 0);
	d->listen_ep.kind = MD_EP_LISTEN;
	d->signal_ep.kind = MD_EP_SIGNAL;
	d->pool_pages = 16;
	d->max_conns = 64;
	d->status_bytes_per_s = 0;	/* no STATUS limit: the budget alone counts */
	md__tunables_default(&d->tun);
	d->start_ms = md__now_ms();
	return d;
}

/* A connection of uid's: the test's end of it. */
static int peer_of(struct md__daemon *d, uid_t uid, pid_t pid)
{
	int sv[2];
	ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
	struct ucred cr = { .pid = pid, .uid = uid, .gid = uid };
	ASSERT(md__conn_new(d, sv[1], &cr, -1, -ENOSYS));
	return sv[0];
}

static void send_status(int fd, uint32_t seq)
{
	struct md__msg m = { .hdr = { .type = MD_MSG_STATUS, .seq = seq } };
	unsigned char buf[MD_MSG_HDR_SIZE + 64];
	ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
	ASSERT(n > 0);
	ASSERT(write(fd, buf, (size_t)n) == n);
}

/* Replies read whole from fd so far (non-blocking), added to *got. */
static void count_replies(int fd, size_t *got)
{
	static unsigned char in[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	for (;;) {
		struct md__msg_hdr h;
		ssize_t r = recv(fd, in, MD_MSG_HDR_SIZE, MSG_PEEK | MSG_DONTWAIT);
		if (r < (ssize_t)MD_MSG_HDR_SIZE)
			return;
		ASSERT(md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &h) == 0);
		size_t len = MD_MSG_HDR_SIZE + h.length;
		r = recv(fd, in, len, MSG_PEEK | MSG_DONTWAIT);
		if (r < (ssize_t)len)
			return;	/* the rest comes with a later wake-up */
		ASSERT(recv(fd, in, len, MSG_DONTWAIT) == (ssize_t)len);
		ASSERT_EQ(h.type, MD_MSG_STATUS_R);
		(*got)++;
	}
}

/* One wake-up of the loop: what epoll has, then md__server_events. */
static void wake_up(struct md__daemon *d)
{
	struct epoll_event evs[64];
	int n = epoll_wait(d->epfd, evs, 64, 0);
	ASSERT(n >= 0);
	d->evs = evs;
	d->nev = n;
	md__server_events(d);
}

/* One user's many connections, each with requests queued, and another
 * user's one request: in one wake-up the first user's connections do at
 * most MD_D_USER_BUDGET of work together (here 16 STATUS of 16 each: a
 * connection's own budget is 4 of them) and the other user is answered;
 * each connection stopped waits its turn, in the order it was stopped, so
 * the second wake-up serves the ones the first did not. Each connection's
 * budget alone let the first wake-up do all 64 (twice 8 x 4, the
 * connections deferred served again before the loop waited), and a user
 * with 200 connections make another's LOOKUP wait 765 ms. */
TEST_IMPL(daemon_user_budget_per_wakeup)
{
	struct md__daemon *d = daemon_up();
	int flood[FLOODERS];
	size_t got[FLOODERS] = { 0 }, total = 0, asked = 0;
	for (int i = 0; i < FLOODERS; i++) {
		flood[i] = peer_of(d, 1000, 4000 + i);
		for (uint32_t k = 1; k <= ASKS; k++)
			send_status(flood[i], k);
	}
	int other = peer_of(d, 2000, 5000);
	send_status(other, 1);

	wake_up(d);
	for (int i = 0; i < FLOODERS; i++) {
		count_replies(flood[i], &got[i]);
		total += got[i];
	}
	count_replies(other, &asked);
	ASSERT_EQ(asked, 1);
	ASSERT(total <= 16);
	ASSERT(total >= 4);	/* and the first user not starved either */
	/* The second wake-up: the connections stopped first are served
	 * first: every connection has had a turn by now. */
	wake_up(d);
	for (int i = 0; i < FLOODERS; i++) {
		size_t before = got[i];
		count_replies(flood[i], &got[i]);
		total += got[i] - before;
		ASSERT(got[i] > 0);
	}
	ASSERT(total <= 32);
	/* And all is answered in the end, none lost. */
	for (int round = 0; round < 64 && total < FLOODERS * ASKS; round++) {
		wake_up(d);
		total = 0;
		for (int i = 0; i < FLOODERS; i++) {
			count_replies(flood[i], &got[i]);
			total += got[i];
		}
	}
	ASSERT_EQ(total, FLOODERS * ASKS);
	md__server_close(d);
	for (int i = 0; i < FLOODERS; i++)
		close(flood[i]);
	close(other);
	close(d->epfd);
	free(d);
	return 0;
}
