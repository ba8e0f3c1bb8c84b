/*
 * test_server.c - memdedupd's loop driven in the test's own process, one
 * wake-up at a time (md__server_events), over socket pairs whose far ends
 * the test holds: what one wake-up does, without timing anything.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checksum.h"
#include "daemon.h"
#include "proc.h"
#include "protocol.h"
#include "runner.h"
#include "stats_file.h"

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

/* A wake-up with the events given, as epoll would have reported them. */
static void wake_up_with(struct md__daemon *d, struct epoll_event *evs, int n)
{
	d->evs = evs;
	d->nev = n;
	md__server_events(d);
}

/* One wake-up of the loop: what epoll has, then md__server_events. */
static void wake_up(struct md__daemon *d)
{
	struct epoll_event evs[64];
	int n = epoll_wait(d->epfd, evs, 64, 0);
	ASSERT(n >= 0);
	wake_up_with(d, evs, n);
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

/* A connection of uid's with k STATUS requests sent: the server's record
 * of it (the newest connection) in *conn, the test's end returned. */
static int asking_peer(struct md__daemon *d, uid_t uid, pid_t pid, uint32_t k, struct md__conn **conn)
{
	int fd = peer_of(d, uid, pid);
	*conn = d->conns;
	for (uint32_t seq = 1; seq <= k; seq++)
		send_status(fd, seq);
	return fd;
}

/* A deferred connection whose peer hung up is closed by the first loop of
 * the wake-up (the deferred ones), while epoll reported its hang-up in the
 * same wake-up: that event is forgotten with it, not handled on the freed
 * connection (AddressSanitizer: heap-use-after-free in md__server_events
 * when md__ep_forget left this wake-up's events alone). */
TEST_IMPL(daemon_deferred_hung_up_event_forgotten)
{
	struct md__daemon *d = daemon_up();
	struct md__conn *c;
	size_t got = 0;
	int fd = asking_peer(d, 1000, 4000, 8, &c);
	wake_up(d);
	count_replies(fd, &got);
	ASSERT_EQ(got, 4);	/* a connection's budget: 4 STATUS */
	ASSERT(d->defer[0].head == c);
	close(fd);
	wake_up(d);
	ASSERT_EQ(d->nconns, 0);
	ASSERT(!d->defer[0].head && !d->defer[1].head);
	md__server_close(d);
	close(d->epfd);
	free(d);
	return 0;
}

/* A deferred connection closed while last in its queue (its peer hung up,
 * seen in the second loop of the wake-up): one deferred after it is queued
 * behind the one before, and served in the next wake-ups. Left as the
 * queue's end, the closed connection's link took it (freed memory), and it
 * was never served again, its requests waiting in its buffer for good. */
TEST_IMPL(daemon_deferred_tail_closed_keeps_queue)
{
	struct md__daemon *d = daemon_up();
	struct md__conn *c[3];
	int fd[3];
	size_t got[3] = { 0 };
	fd[0] = asking_peer(d, 1000, 4000, 12, &c[0]);
	fd[1] = asking_peer(d, 1000, 4001, 12, &c[1]);
	wake_up(d);
	/* Both stopped at their budget, in the order they were served. */
	struct md__conn *first = d->defer[0].head, *last = first ? first->defer_next : NULL;
	ASSERT(first && last && !last->defer_next);
	ASSERT(d->defer[0].tail == &last->defer_next);
	/* The last one's peer hangs up; a third connection's requests come. */
	fd[2] = asking_peer(d, 1000, 4002, 12, &c[2]);
	struct epoll_event evs[2] = { { .events = EPOLLHUP, .data.ptr = &last->ep },
				      { .events = EPOLLIN, .data.ptr = &c[2]->ep } };
	wake_up_with(d, evs, 2);
	ASSERT_EQ(d->nconns, 2);
	ASSERT(d->defer[0].head == first && first->defer_next == c[2]);
	ASSERT(d->defer[0].tail == &c[2]->defer_next);
	for (int round = 0; round < 8; round++)
		wake_up(d);
	for (int i = 0; i < 3; i++) {
		count_replies(fd[i], &got[i]);
		if (&c[i]->ep != &last->ep)
			ASSERT_EQ(got[i], 12);
	}
	md__server_close(d);
	for (int i = 0; i < 3; i++)
		close(fd[i]);
	close(d->epfd);
	free(d);
	return 0;
}

/* The daemon's state gone with it: its connections, agents, domains. */
static void daemon_down(struct md__daemon *d)
{
	md__server_close(d);
	md__agent_free_all(d);
	md__domain_free_all(d);
	close(d->epfd);
	free(d);
}

/* A process that waits for the write end of gate to close: a pid the
 * daemon can watch, for an agent of the test's making. */
static pid_t waiter(const int gate[2])
{
	pid_t p = fork();
	ASSERT(p >= 0);
	if (p == 0) {
		char x;
		close(gate[1]);
		while (read(gate[0], &x, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	return p;
}

static void waiters_gone(int gate[2], const pid_t *pid, int n)
{
	close(gate[1]);
	close(gate[0]);
	for (int i = 0; i < n; i++)
		ASSERT_EQ(waitpid(pid[i], NULL, 0), pid[i]);
}

static void send_msg(int fd, const struct md__msg *m)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	ssize_t n = md__msg_encode(m, buf, sizeof(buf));
	ASSERT(n > 0);
	ASSERT(write(fd, buf, (size_t)n) == n);
}

/* m, k times, in the server's receive buffer of c as if read already: more
 * than the socket between us holds (a PUBLISH of 64 pages is larger). */
static void queue_in(struct md__conn *c, const struct md__msg *m, unsigned k)
{
	size_t len = md__msg_encoded_len(m);
	ASSERT(len > 0);
	ASSERT_EQ(md__rxbuf_room(&c->in, c->in.len - c->in.head + k * len), 0);
	for (unsigned i = 0; i < k; i++) {
		ASSERT_EQ(md__msg_encode(m, c->in.buf + c->in.len, len), (ssize_t)len);
		c->in.len += len;
	}
}

/* One read of up to len bytes from fd (non-blocking), descriptors that
 * come with them closed and counted in *fds. */
static ssize_t recv_some(int fd, unsigned char *buf, size_t len, unsigned *fds)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} ctl;
	struct iovec iov = { buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
	ssize_t r = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	for (struct cmsghdr *cm = r > 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++, (*fds)++)
				close(((int *)CMSG_DATA(cm))[i]);
	return r;
}

/* len bytes from fd (there already), descriptors that come with them
 * closed. */
static void recv_all(int fd, unsigned char *buf, size_t len)
{
	unsigned fds = 0;
	for (size_t got = 0; got < len;) {
		ssize_t r = recv_some(fd, buf + got, len - got, &fds);
		ASSERT(r > 0);
		got += (size_t)r;
	}
}

/* The next reply on fd, decoded into *m: its type, 0 if none came. The
 * server sent what it queued in the wake-up, whole. */
static unsigned next_reply(int fd, struct md__msg *m)
{
	static unsigned char in[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	struct md__msg_hdr h;
	ssize_t r = recv(fd, in, 1, MSG_PEEK | MSG_DONTWAIT);
	if (r <= 0)
		return 0;
	recv_all(fd, in, MD_MSG_HDR_SIZE);
	ASSERT_EQ(md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &h), 0);
	recv_all(fd, in + MD_MSG_HDR_SIZE, h.length);
	ASSERT_EQ(md__msg_decode(in, MD_MSG_HDR_SIZE + h.length, m), 0);
	return h.type;
}

/* The replies of type on fd so far, the others (SHARE, CANDIDATES, ACK of
 * a trailing request) passed over; none an ERROR. */
static unsigned replies_of(int fd, unsigned type)
{
	static struct md__msg m;
	unsigned n = 0;
	for (unsigned t; (t = next_reply(fd, &m));) {
		ASSERT(t != MD_MSG_ERROR);
		n += t == type;
	}
	return n;
}

/* A connection of uid's, pid a waiter, before its HELLO: the test's end,
 * the server's record of it in *conn. */
static int agent_conn(struct md__daemon *d, uid_t uid, pid_t pid, struct md__conn **conn)
{
	int sv[2];
	ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	ASSERT(pidfd >= 0);
	struct ucred cr = { .pid = pid, .uid = uid, .gid = uid };
	*conn = md__conn_new(d, sv[1], &cr, pidfd, 0);
	ASSERT(*conn);
	return sv[0];
}

static void send_hello(int fd, pid_t pid, const char *dom)
{
	static struct md__msg m;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_HELLO, .seq = 1 } };
	m.u.hello.pid = (uint32_t)pid;
	strcpy(m.u.hello.domain, dom);
	send_msg(fd, &m);
}

/* An agent of uid's in domain dom, pid a waiter: the test's end of its
 * connection, welcomed; the server's record of it in *conn. */
static int agent_in(struct md__daemon *d, uid_t uid, pid_t pid, const char *dom, struct md__conn **conn)
{
	static struct md__msg m;
	int fd = agent_conn(d, uid, pid, conn);
	send_hello(fd, pid, dom);
	wake_up(d);
	ASSERT_EQ(next_reply(fd, &m), MD_MSG_WELCOME);
	return fd;
}

/* An agent of uid's in domain "fair" (see agent_in). */
static int agent_of(struct md__daemon *d, uid_t uid, pid_t pid, struct md__conn **conn)
{
	return agent_in(d, uid, pid, "fair", conn);
}

/* An agent of uid 1000's in domain "fair", its process a waiter on a gate
 * of its own (see agent_in). */
static int lone_agent(struct md__daemon *d, int gate[2], pid_t *pid, struct md__conn **conn)
{
	ASSERT(pipe(gate) == 0);
	*pid = waiter(gate);
	return agent_of(d, 1000, *pid, conn);
}

/* A request that wakes the server for c (epoll sees the socket, not the
 * buffer queue_in filled), handled after what was queued. */
static void nudge(int fd)
{
	static struct md__msg m;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP, .seq = 999 } };
	m.u.lookup.n = 1;
	m.u.lookup.hash[0] = 1;
	send_msg(fd, &m);
}

/* A PUBLISH of 64 pages (one content: a multi-page PUBLISH is not matched
 * against the index). */
static const struct md__msg *publish_64(void)
{
	static unsigned char pages[MD_PUBLISH_MAX * MD_MSG_PAGE];
	static struct md__msg m;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_PUBLISH, .seq = 100 } };
	memset(pages, 0x5a, MD_MSG_PAGE);
	uint64_t hash = md__page_hash(pages);
	for (uint32_t i = 0; i < MD_PUBLISH_MAX; i++) {
		memcpy(pages + (size_t)i * MD_MSG_PAGE, pages, MD_MSG_PAGE);
		m.u.publish.hash[i] = hash;
	}
	m.u.publish.n = MD_PUBLISH_MAX;
	m.u.publish.pages = pages;
	return &m;
}

#define PUB_AGENTS 4
#define PUB_EACH 12	/* PUBLISHes of 64 pages each agent has queued */

/* A user's PUBLISHes of 64 pages cost by their pages: in one wake-up, the
 * one in which another user's request is answered, each connection of the
 * first handles at most MD_D_BUDGET's worth of them, all together
 * MD_D_USER_BUDGET's. At 1 each (a message's), all 48 were handled in that
 * wake-up, and a user's 16 connections made the other's LOOKUP wait 70 ms:
 * each PUBLISH hashes 256 KiB, writes it into the pool and indexes it. */
TEST_IMPL(daemon_publish_budget_per_wakeup)
{
	struct md__daemon *d = daemon_up();
	d->pool_pages = 4096;
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid[PUB_AGENTS];
	struct md__conn *c[PUB_AGENTS];
	int fd[PUB_AGENTS];
	unsigned total = 0;
	size_t asked = 0;
	for (int i = 0; i < PUB_AGENTS; i++) {
		pid[i] = waiter(gate);
		fd[i] = agent_of(d, 1000, pid[i], &c[i]);
	}
	for (int i = 0; i < PUB_AGENTS; i++) {
		queue_in(c[i], publish_64(), PUB_EACH);
		nudge(fd[i]);
	}
	int other = peer_of(d, 2000, 5000);
	send_status(other, 1);

	wake_up(d);
	count_replies(other, &asked);
	ASSERT_EQ(asked, 1);
	unsigned cost = 1 + MD_PUBLISH_MAX / MD_D_PUBLISH_PAGES_PER_UNIT;
	for (int i = 0; i < PUB_AGENTS; i++) {
		unsigned got = replies_of(fd[i], MD_MSG_PUBLISH_R);
		ASSERT(got <= (MD_D_BUDGET + cost - 1) / cost);
		total += got;
	}
	ASSERT(total <= (MD_D_USER_BUDGET + cost - 1) / cost);
	ASSERT(total > 0);
	/* And all are handled in the end, none lost. */
	for (int round = 0; round < 64 && total < PUB_AGENTS * PUB_EACH; round++) {
		wake_up(d);
		for (int i = 0; i < PUB_AGENTS; i++)
			total += replies_of(fd[i], MD_MSG_PUBLISH_R);
	}
	ASSERT_EQ(total, PUB_AGENTS * PUB_EACH);
	daemon_down(d);
	for (int i = 0; i < PUB_AGENTS; i++)
		close(fd[i]);
	close(other);
	waiters_gone(gate, pid, PUB_AGENTS);
	return 0;
}

/* A READS costs by its pages, a unit a run of 1024: one of MD_READS_MAX
 * whole runs is past a connection's budget, and a wake-up handles one of
 * them for the connection. At 1 each, a wake-up handled 64, eight million
 * pages put in the domain's table while the other peers waited. */
TEST_IMPL(daemon_reads_budget_per_wakeup)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = waiter(gate);
	struct md__conn *c;
	int fd = agent_of(d, 1000, pid, &c);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_READS, .seq = 100 } };
	m.u.reads.n = MD_READS_MAX;
	uint64_t run_bytes = (uint64_t)MD_READ_RUN_PAGES * MD_MSG_PAGE;
	for (uint32_t i = 0; i < MD_READS_MAX; i++)
		m.u.reads.run[i] = (struct md__read_run){ .key = 1, .off = i * run_bytes,
							 .addr = (1ull << 32) + i * run_bytes,
							 .npages = MD_READ_RUN_PAGES };
	queue_in(c, &m, 4);
	nudge(fd);
	wake_up(d);
	unsigned total = replies_of(fd, MD_MSG_ACK);
	ASSERT_EQ(total, 1);
	/* And all are handled in the end. */
	for (int round = 0; round < 16 && total < 4; round++) {
		wake_up(d);
		total += replies_of(fd, MD_MSG_ACK);
	}
	ASSERT_EQ(total, 4);
	daemon_down(d);
	close(fd);
	waiters_gone(gate, &pid, 1);
	return 0;
}


#define UNREF_SLOTS 128	/* each UNREF's, all freed by it */
#define UNREFS 36

/* A user's UNREFs cost by the slots they free (each punched): in the
 * wake-up in which another user's request is answered, its connection
 * handles at most MD_D_BUDGET's worth of those that free 128 each. At 1
 * each, all 36 were handled, and a user's UNREFs freeing 1,024 slots each
 * made the other's LOOKUP wait about 0.5 ms apiece, 130 ms for 256. */
TEST_IMPL(daemon_unref_budget_per_wakeup)
{
	static uint32_t slot[UNREFS * UNREF_SLOTS];
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	d->pool_pages = 8192;
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = waiter(gate);
	struct md__conn *c;
	int fd = agent_of(d, 1000, pid, &c);
	/* The pages, 8 PUBLISHes at a time (each a quarter MiB). */
	uint32_t nslots = 0;
	while (nslots < UNREFS * UNREF_SLOTS) {
		queue_in(c, publish_64(), 8);
		nudge(fd);
		for (int round = 0; round < 8; round++) {
			wake_up(d);
			for (unsigned t; (t = next_reply(fd, &m));) {
				ASSERT(t != MD_MSG_ERROR);
				for (uint32_t i = 0; t == MD_MSG_PUBLISH_R && i < m.u.publish_r.n; i++)
					slot[nslots++] = m.u.publish_r.first_slot + i;
			}
		}
	}
	ASSERT_EQ(nslots, UNREFS * UNREF_SLOTS);
	struct md__pool *pool = &c->agent->dom->pool;
	ASSERT_EQ(md__pool_live(pool), nslots);
	for (uint32_t k = 0; k < UNREFS; k++) {
		m = (struct md__msg){ .hdr = { .type = MD_MSG_UNREF, .seq = 2000 + k } };
		m.u.refs.n = UNREF_SLOTS;
		memcpy(m.u.refs.slot, slot + k * UNREF_SLOTS, sizeof(uint32_t) * UNREF_SLOTS);
		queue_in(c, &m, 1);
	}
	nudge(fd);
	int other = peer_of(d, 2000, 5000);
	send_status(other, 1);

	wake_up(d);
	size_t asked = 0;
	count_replies(other, &asked);
	ASSERT_EQ(asked, 1);
	unsigned cost = 1 + UNREF_SLOTS / MD_D_FREED_PER_UNIT, acks = 0;
	for (unsigned t; (t = next_reply(fd, &m));) {
		ASSERT(t != MD_MSG_ERROR);
		if (t == MD_MSG_ACK) {
			ASSERT_EQ(m.u.ack.status, 0);
			acks++;
		}
	}
	ASSERT(acks > 0);
	ASSERT(acks <= (MD_D_BUDGET + cost - 1) / cost);
	ASSERT_EQ(md__pool_live(pool), nslots - acks * UNREF_SLOTS);
	/* And all are handled in the end. */
	for (int round = 0; round < 16 && acks < UNREFS; round++) {
		wake_up(d);
		acks += replies_of(fd, MD_MSG_ACK);
	}
	ASSERT_EQ(acks, UNREFS);
	ASSERT_EQ(md__pool_live(pool), 0);
	daemon_down(d);
	close(fd);
	close(other);
	waiters_gone(gate, &pid, 1);
	return 0;
}

/* An agent's SHARE that could not be queued (short of memory) is queued
 * in the next wake-up: it was marked told before it was queued, and the
 * agent scanned at the rate set for all agents together until its number
 * changed. */
TEST_IMPL(daemon_share_failed_told_again)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid[2] = { waiter(gate), waiter(gate) };
	struct md__conn *c;
	int fd[2];
	fd[0] = agent_of(d, 1000, pid[0], &c);
	wake_up(d);	/* sends what the last queued */
	ASSERT_EQ(next_reply(fd[0], &m), MD_MSG_SHARE);
	ASSERT_EQ(m.u.share.part, MD_SHARE_ALL);
	/* Another user's agent: both agents' number is 2 now, and one of
	 * their SHAREs cannot be queued. */
	md__server_fail_type = MD_MSG_SHARE;
	fd[1] = agent_of(d, 2000, pid[1], &c);
	ASSERT_EQ(md__server_fail_type, 0);	/* one failed */
	/* Each is told in the end: queued again in the next wake-up, whatever
	 * woke it, and sent in the one after. */
	for (int i = 0; i < 4; i++)
		wake_up(d);
	for (int i = 0; i < 2; i++) {
		unsigned got = 0;
		for (unsigned t; (t = next_reply(fd[i], &m));) {
			ASSERT_EQ(t, MD_MSG_SHARE);
			ASSERT_EQ(m.u.share.part, MD_SHARE_ALL / 2);
			got++;
		}
		ASSERT_EQ(got, 1);
	}
	daemon_down(d);
	close(fd[0]);
	close(fd[1]);
	waiters_gone(gate, pid, 2);
	return 0;
}

/* Two agents in domain "fair", of uid 1000 and of uid2, their processes
 * waiters on gate: the test's ends in fd, the server's records in c. */
static void two_agents(struct md__daemon *d, uid_t uid2, int gate[2], pid_t pid[2], struct md__conn *c[2],
		       int fd[2])
{
	ASSERT(pipe(gate) == 0);
	pid[0] = waiter(gate);
	pid[1] = waiter(gate);
	fd[0] = agent_of(d, 1000, pid[0], &c[0]);
	fd[1] = agent_of(d, uid2, pid[1], &c[1]);
}

static void two_agents_gone(struct md__daemon *d, int gate[2], const pid_t pid[2], const int fd[2])
{
	daemon_down(d);
	close(fd[0]);
	close(fd[1]);
	waiters_gone(gate, pid, 2);
}

/* The part of n agents' equal cut; P(0) is 0, no SHARE. */
#define P(n) ((n) ? MD_SHARE_ALL / (n) : 0u)

/* The last SHARE on fd so far, the other replies passed over; was if none
 * came. */
static uint32_t share_told(int fd, uint32_t was)
{
	static struct md__msg m;
	for (unsigned t; (t = next_reply(fd, &m));)
		if (t == MD_MSG_SHARE)
			was = m.u.share.part;
	return was;
}

/* An agent memdedupd holds paused is told the part it would have if it
 * resumed: its user counted among the users that scan even when none of
 * its agents does. Its user left out, an agent of the only other user
 * scanning was told the whole rate, and scanned, once resumed, twice its
 * part until the SHARE that followed. */
TEST_IMPL(daemon_share_paused_counts_its_user)
{
	struct md__daemon *d = daemon_up();
	int gate[2], fd[2];
	pid_t pid[2];
	struct md__conn *c[2];
	two_agents(d, 2000, gate, pid, c, fd);
	wake_up(d);
	ASSERT_EQ(share_told(fd[0], P(0)), P(2));
	ASSERT_EQ(share_told(fd[1], P(0)), P(2));
	/* The second held paused, as a PAUSE of its pid leaves it. */
	c[1]->agent->paused = 1;
	md__reshare(d);
	wake_up(d);
	wake_up(d);
	ASSERT_EQ(share_told(fd[0], P(2)), P(1));
	ASSERT_EQ(share_told(fd[1], P(2)), P(2));
	two_agents_gone(d, gate, pid, fd);
	return 0;
}

/* A user's part of the rate goes to its agents by what their lookups
 * found lately, a quarter of an equal cut each kept whatever they find;
 * another user's part stays its own; and when the finds decay, the cut is
 * equal again. With equal cuts only, a guest reading an image ahead of
 * another kept half its user's rate for lookups that found nothing, while
 * the other's, which paired with its reads, fell behind (t90 22 s after
 * the reads at the default rate, 9.7 s at twice it: docs/benchmarks.md,
 * fifty-seventh session). */
static json_t *status_of(struct md__daemon *d);
static long long status_int(json_t *st, const char *list, long long id, const char *key);

TEST_IMPL(daemon_share_follows_finds)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	int gate[2], fd[2], g3[2];
	pid_t pid[2], pid3;
	struct md__conn *c[2], *c3;
	two_agents(d, 1000, gate, pid, c, fd);
	ASSERT(pipe(g3) == 0);
	pid3 = waiter(g3);
	int fd3 = agent_of(d, 2000, pid3, &c3);
	wake_up(d);
	ASSERT_EQ(share_told(fd[0], 0), P(4));
	ASSERT_EQ(share_told(fd[1], 0), P(4));
	ASSERT_EQ(share_told(fd3, 0), P(2));
	/* The second's lookups of one content at 301 places: a sighting,
	 * then 300 told to publish; the third's (another user's) find
	 * nothing. */
	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP, .seq = 7 } };
	m.u.lookup.n = 301;
	for (uint32_t i = 0; i < m.u.lookup.n; i++) {
		m.u.lookup.hash[i] = 0x5a5a5a5a;
		m.u.lookup.addr[i] = 0x10000000ull + i * MD_MSG_PAGE;
	}
	send_msg(fd[1], &m);
	for (uint32_t i = 0; i < m.u.lookup.n; i++)
		m.u.lookup.hash[i] = 12345 + i;
	send_msg(fd3, &m);
	wake_up(d);
	ASSERT_EQ(c[1]->agent->found, 300);
	ASSERT_EQ(c[0]->agent->found, 0);
	ASSERT_EQ(c3->agent->found, 0);
	/* Within MD_WEIGH_MS, nothing moves; after it, the parts do. */
	wake_up(d);
	wake_up(d);
	ASSERT_EQ(share_told(fd[1], P(4)), P(4));
	md__reweigh(d, d->weighed_ms + MD_WEIGH_MS);
	wake_up(d);
	wake_up(d);	/* sends what the last queued */
	uint32_t p0 = share_told(fd[0], P(4)), p1 = share_told(fd[1], P(4)), p3 = share_told(fd3, P(2));
	ASSERT_EQ(p1, MD_SHARE_ALL / 16 * 7);	/* 7/8 of its user's half */
	ASSERT_EQ(p0, MD_SHARE_ALL / 16);	/* the floor: a quarter of its equal cut */
	ASSERT_EQ(p3, P(2));	/* the other user's half, untouched */
	ASSERT(p0 + p1 + p3 <= MD_SHARE_ALL);
	/* As the status shows them. */
	json_t *st = status_of(d);
	ASSERT_EQ(status_int(st, "agents", pid[1], "found_recent"), 300);
	json_t *e;
	size_t i;
	int seen = 0;
	json_array_foreach(json_object_get(st, "agents"), i, e)
		if (json_integer_value(json_object_get(e, "pid")) == pid[1]) {
			ASSERT(json_real_value(json_object_get(e, "rate_part")) == 0.4375);
			seen = 1;
		}
	ASSERT(seen);
	json_decref(st);
	/* Two halvings without finds: 75 of them left, under FOUND_MIN. */
	md__reweigh(d, d->weighed_ms + 2 * MD_WEIGH_MS);
	ASSERT_EQ(c[1]->agent->found_recent, 75);
	wake_up(d);
	wake_up(d);
	ASSERT_EQ(share_told(fd[0], p0), P(4));
	ASSERT_EQ(share_told(fd[1], p1), P(4));
	ASSERT_EQ(share_told(fd3, p3), P(2));
	/* Its waiter holds the others' gate open: it goes first. */
	waiters_gone(g3, &pid3, 1);
	two_agents_gone(d, gate, pid, fd);
	close(fd3);
	return 0;
}

/* A user's STATUS debt is its own, not its connection's: the user's
 * record stays while it owes, and a connection opened once the last one
 * closed is refused as that one would have been. Forgotten with its last
 * connection, the record gave each new connection a full bucket: a peer
 * connecting again for each STATUS was never limited. */
TEST_IMPL(daemon_status_debt_outlives_connection)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	d->status_bytes_per_s = 1000;	/* a STATUS costs MD_D_STATUS_MIN at least: seconds of debt */
	int fd = peer_of(d, 1000, 4000);
	send_status(fd, 1);
	send_status(fd, 2);
	wake_up(d);
	ASSERT_EQ(next_reply(fd, &m), MD_MSG_STATUS_R);
	ASSERT_EQ(next_reply(fd, &m), MD_MSG_ERROR);
	ASSERT_EQ(m.u.text.status, -EAGAIN);
	close(fd);
	wake_up(d);	/* its hang-up: the user has no connection left */
	ASSERT_EQ(d->nconns, 0);
	fd = peer_of(d, 1000, 4001);
	send_status(fd, 3);
	wake_up(d);
	ASSERT_EQ(next_reply(fd, &m), MD_MSG_ERROR);
	ASSERT_EQ(m.u.text.status, -EAGAIN);
	close(fd);
	daemon_down(d);
	return 0;
}

/* A STATUS_R of a document of len bytes (of spaces), as filler for a
 * peer's queue. */
static const struct md__msg *status_r_of(size_t len)
{
	static char json[MD_MSG_MAX];
	static struct md__msg m;
	ASSERT(len <= sizeof(json) - 64);
	memset(json, ' ', len);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_STATUS_R } };
	m.u.status_r.json = json;
	m.u.status_r.len = (uint32_t)len;
	return &m;
}

/* A connection that closes with replies unsent takes them off its user's
 * count: counted still, they made the user's other connections look as if
 * they let replies pile up (MD_D_OUT_UID_MAX), and a user whose CLIs died
 * mid-reply often enough had its agents' connections dropped. */
TEST_IMPL(daemon_unsent_forgotten_with_connection)
{
	struct md__daemon *d = daemon_up();
	int keep = peer_of(d, 1000, 4000);
	int gone = peer_of(d, 1000, 4001);
	struct md__conn *c = d->conns;	/* gone's: the newest first */
	int small = 4096;
	ASSERT_EQ(setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	for (uint32_t k = 1; k <= 64; k++)
		send_status(gone, k);
	for (int i = 0; i < 16 && c->out_len == c->out_head; i++)
		wake_up(d);
	ASSERT(c->out_len > c->out_head);	/* replies it does not read */
	struct md__user *u = c->user;
	ASSERT_EQ(u->unsent, c->out_len - c->out_head);
	close(gone);
	wake_up(d);
	ASSERT_EQ(d->nconns, 1);
	ASSERT_EQ(u->unsent, 0);	/* nothing is queued for keep */
	/* Nor does a queue dropped count (past MD_D_OUT_MAX: its peer does
	 * not read), its connection closing. */
	c = d->conns;
	int err = 0;
	for (int i = 0; i < 8 && !err; i++)
		err = md__conn_send(d, c, status_r_of(MD_MSG_MAX - 64), -1);
	ASSERT_EQ(err, -ENOBUFS);
	ASSERT(c->closing);
	ASSERT_EQ(u->unsent, 0);
	ASSERT_EQ(md__conn_send(d, c, status_r_of(64), -1), -ENOBUFS);	/* nothing more goes to it */
	ASSERT_EQ(u->unsent, 0);
	close(keep);
	daemon_down(d);
	return 0;
}

/* The descriptors of this process open on the file fd is open on. */
static int fds_on(int fd)
{
	struct stat want, st;
	ASSERT(fstat(fd, &want) == 0);
	DIR *dir = opendir("/proc/self/fd");
	ASSERT(dir);
	int n = 0;
	for (struct dirent *e; (e = readdir(dir));)
		n += e->d_name[0] != '.' && fstat(atoi(e->d_name), &st) == 0 &&
		     st.st_dev == want.st_dev && st.st_ino == want.st_ino;
	closedir(dir);
	return n;
}

/* An agent of uid 1000's in domain "fair" (pid a waiter) whose WELCOME,
 * and the pool's copy with it, waits behind 16 KiB its peer has not read
 * (part of them sent): the test's end, the server's record in *conn. */
static int welcome_waiting(struct md__daemon *d, pid_t pid, struct md__conn **conn)
{
	int fd = agent_conn(d, 1000, pid, conn), small = 4096;
	ASSERT(setsockopt((*conn)->fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
	ASSERT_EQ(md__conn_send(d, *conn, status_r_of(16 << 10), -1), 0);
	send_hello(fd, pid, "fair");
	wake_up(d);
	ASSERT((*conn)->out_fd >= 0);
	return fd;
}

/* The pool's copy queued with a WELCOME is closed once sent (the kernel
 * took its own with the first byte), or with its connection: kept, each
 * agent's HELLO cost memdedupd a descriptor for as long as it ran. */
TEST_IMPL(daemon_welcome_copy_closed_once_sent)
{
	struct md__daemon *d = daemon_up();
	int gate[2], fd[2];
	pid_t pid[2];
	struct md__conn *c[2];
	two_agents(d, 1000, gate, pid, c, fd);	/* their WELCOMEs read */
	int pool = c[0]->agent->dom->pool.ro_fd, held = fds_on(pool);
	close(fd[1]);
	wake_up(d);	/* the second's connection gone, its record kept */
	fd[1] = agent_of(d, 1000, pid[1], &c[1]);	/* a WELCOME more, the pool's copy closed */
	ASSERT_EQ(c[1]->out_fd, -1);
	ASSERT_EQ(fds_on(pool), held);
	/* Or with its connection, closed before the WELCOME was sent. */
	int gate3[2];
	ASSERT(pipe(gate3) == 0);
	pid_t pid3 = waiter(gate3);
	struct md__conn *c3;
	int fd3 = welcome_waiting(d, pid3, &c3);
	ASSERT_EQ(fds_on(pool), held + 1);
	close(fd3);
	wake_up(d);
	ASSERT_EQ(fds_on(pool), held);
	waiters_gone(gate3, &pid3, 1);
	two_agents_gone(d, gate, pid, fd);
	return 0;
}

/* What the server sends on fd until it stops (wake-ups in between), read
 * step bytes at a time into buf: its length; in *fd_at the offset of the
 * read a descriptor came with (the first byte of the send it went with,
 * when step is 1), or -1. */
static size_t read_stream(struct md__daemon *d, int fd, unsigned char *buf, size_t cap, size_t step,
			  long *fd_at)
{
	size_t len = 0;
	*fd_at = -1;
	for (int idle = 0; idle < 4 && len < cap;) {
		wake_up(d);
		idle++;
		for (ssize_t r; len < cap;) {
			unsigned fds = 0;
			r = recv_some(fd, buf + len, step < cap - len ? step : cap - len, &fds);
			if (r <= 0)
				break;
			if (fds && *fd_at < 0)
				*fd_at = (long)len;
			len += (size_t)r;
			idle = 0;
		}
	}
	return len;
}

/* The offset of the first message of type in the stream buf[0..len), or
 * -1; in *n how many there are. */
static long msg_at(const unsigned char *buf, size_t len, unsigned type, unsigned *n)
{
	long at = -1;
	*n = 0;
	for (size_t off = 0; off + MD_MSG_HDR_SIZE <= len;) {
		struct md__msg_hdr h;
		ASSERT_EQ(md__msg_hdr_decode(buf + off, MD_MSG_HDR_SIZE, &h), 0);
		if (h.type == type && !(*n)++)
			at = (long)off;
		off += MD_MSG_HDR_SIZE + h.length;
	}
	return at;
}

/* A WELCOME's descriptor goes with the WELCOME's first byte though the
 * queue was compacted while it waited (its peer slow to read): the offset
 * it is sent at moves with the bytes. Left where it was, it came with
 * bytes of a later message, one the agent looks for no descriptor on. */
TEST_IMPL(daemon_welcome_fd_follows_compacted_queue)
{
	static unsigned char buf[1 << 20];
	struct md__daemon *d = daemon_up();
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = waiter(gate);
	struct md__conn *c;
	int fd = welcome_waiting(d, pid, &c);
	ASSERT(c->out_head > 0);
	ASSERT_EQ(md__conn_send(d, c, status_r_of(c->out_cap), -1), 0);	/* compacts the queue */
	ASSERT_EQ(c->out_head, 0);
	long fd_at;
	size_t len = read_stream(d, fd, buf, sizeof(buf), 1, &fd_at);
	unsigned n;
	ASSERT(fd_at >= 0);
	ASSERT_EQ(msg_at(buf, len, MD_MSG_WELCOME, &n), fd_at);
	ASSERT_EQ(n, 1);
	ASSERT_EQ(msg_at(buf, len, MD_MSG_STATUS_R, &n), 0);
	ASSERT_EQ(n, 2);
	daemon_down(d);
	close(fd);
	waiters_gone(gate, &pid, 1);
	return 0;
}

#define DRAIN_SLOTS (MD_D_DRAIN_REFS + MD_D_DRAIN_REFS / 2)	/* the agent that goes holds */
#define SHARED_SLOTS 64	/* of those, the other agent holds too */

/* DRAIN_SLOTS slots published by the agent of c, straight into its record
 * (the wake-ups' budgets left out): their numbers in slot. */
static void publish_many(struct md__conn *c, uint32_t *slot)
{
	for (uint32_t n = 0; n < DRAIN_SLOTS; n += MD_PUBLISH_MAX) {
		uint32_t first;
		ASSERT_EQ(md__agent_publish(c->agent, &publish_64()->u.publish, &first, 0), 0);
		for (uint32_t i = 0; i < MD_PUBLISH_MAX; i++)
			slot[n + i] = first + i;
	}
}

/* A process's exit, seen: it is reaped, so its pidfd is readable (a
 * later waiter holds its gate open too). */
static void waiter_exits(int gate[2], pid_t pid)
{
	ASSERT_EQ(kill(pid, SIGKILL), 0);
	ASSERT_EQ(waitpid(pid, NULL, 0), pid);
	close(gate[1]);
	close(gate[0]);
}

/* An agent that exits holding DRAIN_SLOTS slots, all but 64 held by it
 * alone: in the wake-up that sees it, another user's request is answered
 * and at most MD_D_DRAIN_REFS slots are freed; its record is found by pid
 * no more while its references go; the rest go over the next wake-ups,
 * which the loop does not wait for, and the slots the other agent holds
 * stay. All were freed in that one wake-up (a user's pool's worth, 1 Mi
 * slots, about half a second by a review's rate), other requests waiting. */
TEST_IMPL(daemon_exit_drained_per_wakeup)
{
	static uint32_t slot[DRAIN_SLOTS];
	struct md__daemon *d = daemon_up();
	d->pool_pages = DRAIN_SLOTS + 1024;
	int gate[2], gate2[2];
	ASSERT(pipe(gate) == 0);
	ASSERT(pipe(gate2) == 0);
	pid_t pid = waiter(gate), pid2 = waiter(gate2);
	struct md__conn *c, *c2;
	int fd = agent_of(d, 1000, pid, &c);
	int fd2 = agent_of(d, 1000, pid2, &c2);
	publish_many(c, slot);
	ASSERT_EQ(md__agent_refs(c2->agent, slot, SHARED_SLOTS, 1), 0);
	struct md__domain *dom = c->agent->dom;
	ASSERT_EQ(md__pool_live(&dom->pool), DRAIN_SLOTS);
	uint64_t freed = dom->pool.freed;

	int other = peer_of(d, 2000, 5000);
	send_status(other, 1);
	waiter_exits(gate, pid);
	wake_up(d);
	size_t asked = 0;
	count_replies(other, &asked);
	ASSERT_EQ(asked, 1);
	ASSERT(dom->pool.freed > freed);
	ASSERT(dom->pool.freed - freed <= MD_D_DRAIN_REFS);
	ASSERT(d->draining);
	ASSERT(!md__agent_find(d, pid));
	ASSERT_EQ(d->agents, c2->agent);
	ASSERT(!d->agents->next);
	/* The rest in the next wake-ups, with no event. */
	for (int round = 0; round < 64 && d->draining; round++) {
		uint64_t before = dom->pool.freed;
		wake_up(d);
		ASSERT(dom->pool.freed - before <= MD_D_DRAIN_REFS);
	}
	ASSERT(!d->draining);
	ASSERT_EQ(md__pool_live(&dom->pool), SHARED_SLOTS);
	for (uint32_t i = 0; i < DRAIN_SLOTS; i++)
		ASSERT_EQ(dom->pool.state[slot[i]] == MD_SLOT_LIVE, i < SHARED_SLOTS);
	ASSERT_EQ(dom->refs_total, SHARED_SLOTS);
	ASSERT_EQ(dom->refs_draining, 0);
	ASSERT_EQ(dom->nagents, 1);
	ASSERT_EQ(dom->nexited, 0);
	/* The other goes too: the domain with it, once its slots went. */
	waiter_exits(gate2, pid2);
	wake_up(d);
	ASSERT(!d->draining);
	ASSERT(!d->domains);
	daemon_down(d);
	close(fd);
	close(fd2);
	close(other);
	return 0;
}

/* A HELLO of pid (as from the process, on a connection of its own),
 * handled as the loop would: 0 with its record in *a, or -errno. */
static int hello_of(struct md__daemon *d, pid_t pid, const char *domain, uint32_t flags,
		    struct md__agent **a)
{
	static struct md__msg_hello h;
	char why[MD_TEXT_MAX + 1];
	int sv[2];
	ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
	close(sv[0]);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	ASSERT(pidfd >= 0);
	struct ucred cr = { .pid = pid, .uid = 1000, .gid = 1000 };
	struct md__conn *c = md__conn_new(d, sv[1], &cr, pidfd, 0);
	ASSERT(c);
	h = (struct md__msg_hello){ .pid = (uint32_t)pid, .flags = flags };
	strcpy(h.domain, domain);
	c->hello = 1;
	int err = md__agent_hello(d, c, &h, why, sizeof(why));
	*a = c->agent;
	return err;
}

/* The record of an agent gone, its references still going, is nobody's:
 * a process with its pid (taken again) makes a record of its own, and
 * goes as it came; the domain stays until the last reference went, and a
 * daemon that stops meanwhile frees it all. (HELLOs straight to the
 * record keeper: a wake-up would give back what is left.) */
TEST_IMPL(daemon_exit_drain_outlives_pid)
{
	static uint32_t slot[DRAIN_SLOTS];
	struct md__daemon *d = daemon_up();
	d->pool_pages = DRAIN_SLOTS + 1024;
	int gate[2], gate2[2];
	ASSERT(pipe(gate) == 0);
	ASSERT(pipe(gate2) == 0);
	pid_t pid = waiter(gate), pid2 = waiter(gate2);
	struct md__conn *c;
	int fd = agent_of(d, 1000, pid, &c);
	publish_many(c, slot);
	struct md__agent *gone = c->agent, *a;
	struct md__domain *dom = gone->dom;
	waiter_exits(gate, pid);
	wake_up(d);
	ASSERT_EQ(d->draining, gone);
	ASSERT(!gone->drain_next);
	ASSERT(!d->agents);
	ASSERT(!c->agent);
	ASSERT_EQ(d->domains, dom);
	ASSERT_EQ(dom->nagents, 1);
	uint64_t live = md__pool_live(&dom->pool);
	ASSERT(live > 0);
	/* Its pid, another process's now (the second waiter's: the record is
	 * told so), says HELLO in the same domain: a record of its own. */
	gone->pid = pid2;
	ASSERT_EQ(hello_of(d, pid2, "fair", 0, &a), 0);
	ASSERT(a != gone);
	ASSERT_EQ(md__agent_find(d, pid2), a);
	ASSERT_EQ(a->nrefs, 0);
	ASSERT_EQ(a->dom, dom);
	ASSERT_EQ(dom->nagents, 2);
	/* It execs and comes back in another domain, mapping no pool page:
	 * its record goes (nothing to give back), the one draining stays,
	 * and so does the domain. Its user at 64 domains with that one,
	 * which goes with the record (the other one's exited), has room
	 * for the new one: it was refused, the domain having two records. */
	struct md__domain *held[MD_D_DOMAINS_PER_UID - 1];
	for (int i = 0; i < MD_D_DOMAINS_PER_UID - 1; i++) {
		char name[16];
		snprintf(name, sizeof(name), "held%d", i);
		ASSERT_EQ(md__domain_get(d, 1000, name, NULL, &held[i]), 0);
	}
	ASSERT_EQ(hello_of(d, pid2, "other", MD_HELLO_NO_POOL_MAPS, &a), 0);
	ASSERT_EQ(md__agent_find(d, pid2), a);
	ASSERT(a->dom != dom);
	ASSERT_EQ(d->draining, gone);
	ASSERT(gone->drain_next);
	ASSERT_EQ(dom->nagents, 2);
	ASSERT_EQ(dom->nexited, 2);
	ASSERT_EQ(md__pool_live(&dom->pool), live);
	for (int i = 0; i < MD_D_DOMAINS_PER_UID - 1; i++)
		md__domain_release(d, held[i]);
	/* The daemon stops with the two records still draining. */
	daemon_down(d);
	close(fd);
	waiters_gone(gate2, &pid2, 1);
	return 0;
}

/* A process that waits on gate: a byte read, it execs sleep (a program
 * without the agent); the write end closed, it exits. */
static pid_t execer(const int gate[2])
{
	pid_t p = fork();
	ASSERT(p >= 0);
	if (p == 0) {
		char x;
		ssize_t r;
		close(gate[1]);
		while ((r = read(gate[0], &x, 1)) < 0 && errno == EINTR)
			;
		if (r == 1)
			execl("/bin/sleep", "sleep", "60", (char *)NULL);
		_exit(0);
	}
	return p;
}

/* The execer pid execs, and runs sleep. */
static void execs(const int gate[2], pid_t pid)
{
	char path[64], comm[32] = "";
	ASSERT_EQ(write(gate[1], "x", 1), 1);
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	for (int i = 0; i < 500 && strcmp(comm, "sleep\n") != 0; i++) {
		usleep(10000);
		FILE *f = fopen(path, "r");
		ASSERT(f);
		if (!fgets(comm, sizeof(comm), f))
			comm[0] = '\0';
		fclose(f);
	}
	ASSERT(strcmp(comm, "sleep\n") == 0);
}

static void drained(struct md__daemon *d)
{
	for (int round = 0; round < 64 && d->draining; round++)
		wake_up(d);
	ASSERT(!d->draining);
}

/* A process whose agent merged execs a program without the agent (no new
 * agent says it maps no pool page any more): its connection closes with
 * the exec, and the address space its HELLO came from is gone, so its
 * references are nobody's. They go, with the record (they stayed until
 * the process exited); unless it is paused (an unmerge's pause is the
 * process's): the record stays, empty, and a new agent's HELLO takes its
 * pause. A VMM that only lost its connection still maps its pages: its
 * record keeps them, looked at again a few times, then at a longer
 * period, which sees an exec long after. And a new agent after an exec
 * that does not say so gets a record of its own: in the old one, its
 * references would go with the old agent's at its next hang-up. */
TEST_IMPL(daemon_exec_without_agent_gives_back)
{
	struct md__daemon *d = daemon_up();
	d->pool_pages = 1024;
	int gate[4][2], fd[4];
	pid_t pid[4];
	struct md__conn *c[4];
	struct md__agent *a[4], *b;
	uint32_t first;
	for (int i = 0; i < 4; i++) {	/* before any connection: none holds another's */
		ASSERT(pipe(gate[i]) == 0);
		pid[i] = execer(gate[i]);
	}
	for (int i = 0; i < 4; i++) {
		fd[i] = agent_of(d, 1000, pid[i], &c[i]);
		a[i] = c[i]->agent;
		ASSERT_EQ(md__agent_publish(a[i], &publish_64()->u.publish, &first, 0), 0);
	}
	struct md__domain *dom = a[0]->dom;
	ASSERT_EQ(md__pool_live(&dom->pool), 4 * MD_PUBLISH_MAX);

	/* Exec'd, then its connection closed (close-on-exec). */
	execs(gate[0], pid[0]);
	close(fd[0]);
	wake_up(d);
	ASSERT(!md__agent_find(d, pid[0]));
	drained(d);
	ASSERT_EQ(md__pool_live(&dom->pool), 3 * MD_PUBLISH_MAX);
	ASSERT_EQ(waitpid(pid[0], NULL, WNOHANG), 0);	/* it runs on */

	/* Its connection lost, nothing more. */
	close(fd[1]);
	wake_up(d);
	ASSERT_EQ(md__agent_find(d, pid[1]), a[1]);
	ASSERT(!a[1]->conn);
	ASSERT(a[1]->look_ms > 0 && d->look_at > 0);
	for (int k = 0; k < MD_D_LOOKS; k++) {
		ASSERT(a[1]->look_ms - md__now_ms() <= MD_D_LOOK_MS);
		a[1]->look_ms = d->look_at = 1;	/* due */
		md__agents_look(d);
		ASSERT_EQ(md__agent_find(d, pid[1]), a[1]);
		ASSERT_EQ(a[1]->nrefs, MD_PUBLISH_MAX);
	}
	ASSERT(a[1]->look_ms - md__now_ms() > MD_D_LOOK_MS);
	ASSERT_EQ(d->look_at, a[1]->look_ms);
	/* It execs later. */
	execs(gate[1], pid[1]);
	a[1]->look_ms = d->look_at = 1;
	md__agents_look(d);
	ASSERT(!md__agent_find(d, pid[1]));
	ASSERT_EQ(d->look_at, 0);
	drained(d);
	ASSERT_EQ(md__pool_live(&dom->pool), 2 * MD_PUBLISH_MAX);

	/* Paused, it execs. */
	a[2]->paused = 1;
	execs(gate[2], pid[2]);
	close(fd[2]);
	wake_up(d);
	ASSERT_EQ(md__agent_find(d, pid[2]), a[2]);
	ASSERT_EQ(a[2]->nrefs, 0);
	ASSERT(a[2]->paused);
	drained(d);
	ASSERT_EQ(md__pool_live(&dom->pool), MD_PUBLISH_MAX);
	ASSERT_EQ(dom->nagents, 2);
	ASSERT_EQ(dom->nexited, 0);
	ASSERT_EQ(hello_of(d, pid[2], "fair", MD_HELLO_NO_POOL_MAPS, &b), 0);
	ASSERT(b->paused);
	ASSERT_EQ(md__agent_find(d, pid[2]), b);

	/* Exec'd, a new agent comes without saying so; the old connection
	 * still open (a child's copy). */
	execs(gate[3], pid[3]);
	ASSERT_EQ(hello_of(d, pid[3], "fair", 0, &b), 0);
	ASSERT(b != a[3]);
	ASSERT_EQ(b->nrefs, 0);
	ASSERT_EQ(md__agent_find(d, pid[3]), b);
	drained(d);
	ASSERT_EQ(md__pool_live(&dom->pool), 0);

	daemon_down(d);
	close(fd[3]);
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(kill(pid[i], SIGKILL), 0);
		ASSERT_EQ(waitpid(pid[i], NULL, 0), pid[i]);
		close(gate[i][0]);
		close(gate[i][1]);
	}
	return 0;
}

/* As a pause, an unmerge: a process that unmerged (its record says so,
 * with no pause of its own) and execs a program without the agent gives
 * its references back, but its record stays, and the next agent's HELLO
 * is told paused: the unmerge is the process's until a RESUME (QEMU's
 * cpr-exec goes on with the same guest). */
TEST_IMPL(daemon_exec_after_unmerge_keeps_record)
{
	struct md__daemon *d = daemon_up();
	d->pool_pages = 1024;
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = execer(gate);
	struct md__conn *c;
	struct md__agent *b;
	uint32_t first;
	int fd = agent_of(d, 1000, pid, &c);
	struct md__agent *a = c->agent;
	struct md__domain *dom = a->dom;
	ASSERT_EQ(md__agent_publish(a, &publish_64()->u.publish, &first, 0), 0);
	a->unmerged = 1;
	execs(gate, pid);
	close(fd);
	wake_up(d);
	ASSERT_EQ(md__agent_find(d, pid), a);
	ASSERT_EQ(a->nrefs, 0);
	ASSERT(a->unmerged && !a->paused);
	drained(d);
	ASSERT_EQ(md__pool_live(&dom->pool), 0);
	ASSERT_EQ(hello_of(d, pid, "fair", MD_HELLO_NO_POOL_MAPS, &b), 0);
	ASSERT(b->unmerged);
	ASSERT_EQ(md__agent_find(d, pid), b);
	daemon_down(d);
	ASSERT_EQ(kill(pid, SIGKILL), 0);
	ASSERT_EQ(waitpid(pid, NULL, 0), pid);
	close(gate[0]);
	close(gate[1]);
	return 0;
}

/* The STATUS document, as root sees it. */
static json_t *status_of(struct md__daemon *d)
{
	char *js;
	size_t len;
	ASSERT_EQ(md__status_json(d, 0, 0, 0, &js, &len), 0);
	json_t *o = json_loadb(js, len, 0, NULL);
	free(js);
	ASSERT(o);
	return o;
}

/* An integer of the named object (domain with id, agent with pid) in a
 * STATUS document's list, or of "totals" (list NULL). */
static long long status_int(json_t *st, const char *list, long long id, const char *key)
{
	json_t *o = NULL, *e;
	size_t i;
	if (!list)
		o = json_object_get(st, "totals");
	json_array_foreach(json_object_get(st, list ? list : ""), i, e)
		if (json_integer_value(json_object_get(e, strcmp(list, "agents") == 0 ? "pid" : "id")) == id)
			o = e;
	ASSERT(o);
	json_t *v = json_object_get(o, key);
	ASSERT(json_is_integer(v));
	return json_integer_value(v);
}

/* While an exited agent's references go back (a wake-up's worth at a
 * time), the domain's figures are its live agents': the record gone from
 * "agents", its references apart ("references_draining") and out of
 * pages_sharing and general_profit, the domain's "references" the sum of
 * its agents'. They showed agents 2, and the dead agent's references to
 * pages another agent holds as pages shared. And a domain whose records
 * all exited is no longer one of the user's 64: a VM restarting under a
 * new name was refused (-EUSERS) while its old domain drained. */
TEST_IMPL(daemon_exit_draining_status)
{
	static uint32_t slot[2 * DRAIN_SLOTS];
	struct md__daemon *d = daemon_up();
	d->pool_pages = 2 * DRAIN_SLOTS + 1024;
	int gate[2], gate2[2], gate3[2];
	ASSERT(pipe(gate) == 0);
	ASSERT(pipe(gate2) == 0);
	ASSERT(pipe(gate3) == 0);
	pid_t pid = waiter(gate), pid2 = waiter(gate2), pid3 = waiter(gate3);
	struct md__conn *c, *c2;
	int fd = agent_of(d, 1000, pid, &c);
	int fd2 = agent_of(d, 1000, pid2, &c2);
	publish_many(c, slot);
	publish_many(c, slot + DRAIN_SLOTS);
	/* The other agent holds the last slots: the dead one's references
	 * to them go after two wake-ups. */
	ASSERT_EQ(md__agent_refs(c2->agent, slot + 2 * DRAIN_SLOTS - SHARED_SLOTS, SHARED_SLOTS, 1), 0);
	struct md__domain *dom = c->agent->dom;
	uint32_t id = dom->id;
	json_t *st = status_of(d);
	ASSERT_EQ(status_int(st, "domains", id, "agents"), 2);
	ASSERT_EQ(status_int(st, "domains", id, "pages_sharing"), SHARED_SLOTS);
	ASSERT_EQ(status_int(st, "domains", id, "references"), 2 * DRAIN_SLOTS + SHARED_SLOTS);
	ASSERT_EQ(status_int(st, "domains", id, "references_draining"), 0);
	long long profit = status_int(st, "domains", id, "general_profit");
	json_decref(st);

	waiter_exits(gate, pid);
	wake_up(d);
	ASSERT(d->draining);
	ASSERT(dom->refs_total > SHARED_SLOTS + MD_D_DRAIN_REFS / 4);	/* still going */
	st = status_of(d);
	ASSERT_EQ(status_int(st, "domains", id, "agents"), 1);
	ASSERT_EQ(status_int(st, "agents", pid2, "references"), SHARED_SLOTS);
	ASSERT_EQ(status_int(st, "domains", id, "references"), SHARED_SLOTS);
	ASSERT_EQ(status_int(st, "domains", id, "references_draining"), (long long)dom->refs_total - SHARED_SLOTS);
	ASSERT_EQ(status_int(st, "domains", id, "pages_sharing"), 0);
	ASSERT_EQ(status_int(st, "domains", id, "general_profit"), profit - SHARED_SLOTS * MD_MSG_PAGE);
	ASSERT_EQ(status_int(st, NULL, 0, "pages_sharing"), 0);
	ASSERT_EQ(status_int(st, NULL, 0, "general_profit"), profit - SHARED_SLOTS * MD_MSG_PAGE);
	ASSERT_EQ(status_int(st, NULL, 0, "agents"), 1);
	json_decref(st);

	/* The other goes too, the references of both still going: the
	 * domain has no agent, and counts no more among its user's: beside
	 * 63 others, a 64th for a VM restarting under another name. */
	waiter_exits(gate2, pid2);
	wake_up(d);
	ASSERT(d->draining);
	ASSERT_EQ(d->domains, dom);
	st = status_of(d);
	ASSERT_EQ(status_int(st, "domains", id, "agents"), 0);
	ASSERT_EQ(status_int(st, "domains", id, "references"), 0);
	ASSERT_EQ(status_int(st, "domains", id, "pages_sharing"), 0);
	json_decref(st);
	struct md__domain *held[MD_D_DOMAINS_PER_UID - 1], *got;
	for (int i = 0; i < MD_D_DOMAINS_PER_UID - 1; i++) {
		char name[16];
		snprintf(name, sizeof(name), "held%d", i);
		ASSERT_EQ(md__domain_get(d, 1000, name, NULL, &held[i]), 0);
	}
	struct md__agent *a;
	ASSERT_EQ(hello_of(d, pid3, "restarted", 0, &a), 0);
	ASSERT(a->dom != dom);
	/* Now 64 that live: no 65th. */
	ASSERT_EQ(md__domain_get(d, 1000, "one more", NULL, &got), -EUSERS);
	/* Its references all gone, the domain goes, and its pool with it. */
	for (int round = 0; round < 64 && d->draining; round++)
		wake_up(d);
	ASSERT(!d->draining);
	for (struct md__domain *o = d->domains; o; o = o->next)
		ASSERT(o != dom);
	for (int i = 0; i < MD_D_DOMAINS_PER_UID - 1; i++)
		md__domain_release(d, held[i]);
	daemon_down(d);
	close(fd);
	close(fd2);
	waiters_gone(gate3, &pid3, 1);
	return 0;
}

/* The bookkeeping a domain's general_profit takes off, as its status
 * gives it: pages_sharing's bytes less the profit. */
static long long domain_meta_of(struct md__daemon *d, uint32_t id)
{
	json_t *st = status_of(d);
	long long meta = status_int(st, "domains", id, "pages_sharing") * MD_MSG_PAGE -
			 status_int(st, "domains", id, "general_profit");
	json_decref(st);
	return meta;
}

/* A domain's general_profit counts each agent's reference table (4 bytes
 * a slot up to the highest it references, zeroed: resident), until its
 * record goes: 16 agents on a pool of 1 Mi slots held 64 MiB it left
 * out. */
TEST_IMPL(daemon_profit_counts_reference_tables)
{
	static uint32_t slot[2048];
	struct md__daemon *d = daemon_up();
	d->pool_pages = 4096;
	int gate[2], gate2[2];
	ASSERT(pipe(gate) == 0);
	ASSERT(pipe(gate2) == 0);
	pid_t pid = waiter(gate), pid2 = waiter(gate2);
	struct md__conn *c, *c2;
	int fd = agent_of(d, 1000, pid, &c);
	int fd2 = agent_of(d, 1000, pid2, &c2);
	for (uint32_t n = 0; n < 2048; n += MD_PUBLISH_MAX) {
		uint32_t first;
		ASSERT_EQ(md__agent_publish(c->agent, &publish_64()->u.publish, &first, 0), 0);
		for (uint32_t i = 0; i < MD_PUBLISH_MAX; i++)
			slot[n + i] = first + i;
	}
	uint32_t id = c->agent->dom->id;
	long long before = domain_meta_of(d, id);
	/* The other agent's first reference: a table of 1,024 slots. */
	ASSERT_EQ(md__agent_refs(c2->agent, &slot[0], 1, 1), 0);
	long long low = domain_meta_of(d, id);
	ASSERT_EQ(low - before, 1024 * 4);
	/* A slot past them: 2,048. */
	ASSERT(slot[1500] >= 1024 && slot[1500] < 2047);
	ASSERT_EQ(md__agent_refs(c2->agent, &slot[1500], 1, 1), 0);
	ASSERT_EQ(domain_meta_of(d, id) - low, 1024 * 4);
	/* Its record gone, its references drained: its table is no more. */
	waiter_exits(gate2, pid2);
	for (int round = 0; round < 64 && (round == 0 || d->draining); round++)
		wake_up(d);
	ASSERT(!d->draining);
	ASSERT_EQ(domain_meta_of(d, id), before);
	daemon_down(d);
	close(fd);
	close(fd2);
	waiters_gone(gate, &pid, 1);
	return 0;
}

/* Domains whose records all exited, going as their references drain, do
 * not count among a user's 64, but are bounded too (a memfd each): at most
 * MD_D_DOMAINS_KEPT_PER_UID of a user, with those that live. */
TEST_IMPL(daemon_domains_going_bounded)
{
	struct md__daemon *d = daemon_up();
	struct md__domain *dom[MD_D_DOMAINS_KEPT_PER_UID], *got;
	char name[16];
	for (int i = 0; i < MD_D_DOMAINS_KEPT_PER_UID; i++) {
		snprintf(name, sizeof(name), "d%d", i);
		ASSERT_EQ(md__domain_get(d, 1000, name, NULL, &dom[i]), 0);
		if (i < MD_D_DOMAINS_PER_UID + 8)
			dom[i]->nexited = dom[i]->nagents;	/* its record exited, draining */
	}
	ASSERT_EQ(md__domain_get(d, 1000, "one more", NULL, &got), -EUSERS);
	/* One that goes makes room; a name kept is always found. */
	dom[0]->nexited = 0;
	md__domain_release(d, dom[0]);
	ASSERT_EQ(md__domain_get(d, 1000, "d1", NULL, &got), 0);
	ASSERT_EQ(got, dom[1]);
	ASSERT_EQ(md__domain_get(d, 1000, "one more", NULL, &got), 0);
	daemon_down(d);
	return 0;
}

/* A domain is found by its whole name: a name that is another's prefix,
 * or has it as its own, is a domain of its own, with a pool of its own
 * (one user's VMs split into domains must never share a frame across
 * them). */
TEST_IMPL(daemon_domain_names_whole)
{
	struct md__daemon *d = daemon_up();
	static const char *const names[] = { "vm", "vm2", "v", "vm-a", "VM" };
	enum { N = sizeof(names) / sizeof(names[0]) };
	struct md__domain *dom[N], *got;
	for (int i = 0; i < N; i++) {
		ASSERT_EQ(md__domain_get(d, 1000, names[i], NULL, &dom[i]), 0);
		ASSERT_EQ(strcmp(dom[i]->name, names[i]), 0);
		for (int j = 0; j < i; j++)
			ASSERT(dom[i] != dom[j] && dom[i]->id != dom[j]->id &&
			       dom[i]->generation != dom[j]->generation);
	}
	for (int i = N - 1; i >= 0; i--) {
		ASSERT_EQ(md__domain_get(d, 1000, names[i], NULL, &got), 0);
		ASSERT_EQ(got, dom[i]);
		md__domain_release(d, got);
	}
	daemon_down(d);
	return 0;
}

/* An agent killed while a CONTROL waits for its answer, its connection
 * kept open (by a child it forked, or its hang-up not seen yet): the
 * requester hears -ESRCH in the wake-up that sees the exit. It waited the
 * whole minute for -ETIMEDOUT, the record gone and nothing to answer. */
TEST_IMPL(daemon_control_agent_killed)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	d->control_wait_ms = 60000;
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = waiter(gate);
	struct md__conn *c;
	int fd = agent_of(d, 1000, pid, &c);
	int cli = peer_of(d, 1000, 5000);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_CONTROL, .seq = 7 } };
	m.u.control.op = MD_CTL_PAUSE;
	m.u.control.pid = pid;
	send_msg(cli, &m);
	wake_up(d);
	wake_up(d);	/* sends what the last queued */
	unsigned t, sent = 0;
	while ((t = next_reply(fd, &m)))
		sent += t == MD_MSG_CONTROL;
	ASSERT_EQ(sent, 1);
	ASSERT_EQ(next_reply(cli, &m), 0);	/* it waits for the agent */
	waiter_exits(gate, pid);
	wake_up(d);
	wake_up(d);
	ASSERT_EQ(next_reply(cli, &m), MD_MSG_CONTROL_R);
	ASSERT_EQ(m.hdr.seq, 7);
	ASSERT_EQ(m.u.text.status, -ESRCH);
	ASSERT(strstr(m.u.text.text, "went away before it answered"));
	ASSERT(!d->controls);
	daemon_down(d);
	close(fd);
	close(cli);
	return 0;
}

/* Whether fd reads EOF now: the daemon closed its end. */
static int closed_by_daemon(int fd)
{
	char b;
	return recv(fd, &b, 1, MSG_DONTWAIT) == 0;
}

/* The token of the CONTROL the agent at fd is sent (its SHAREs passed
 * over) in the next two wake-ups. */
static uint32_t control_token(struct md__daemon *d, int fd)
{
	static struct md__msg m;
	unsigned t;
	wake_up(d);
	wake_up(d);
	while ((t = next_reply(fd, &m)) == MD_MSG_SHARE)
		;
	ASSERT_EQ(t, MD_MSG_CONTROL);
	return m.u.control.token;
}

/* Peers that shut down only their writing, their requests sent: each is
 * answered, then closed (docs/protocol.md). The EOF read with the requests
 * closed the connection at once, their replies dropped: a CLI's STATUS
 * and its CONTROL (waiting for the agent's answer) went unanswered, and an
 * agent's PUBLISH was granted, a reference its record holds that the agent
 * never learned of (found by the daemon fuzz corpus's seed-hung-up-deferred). */
TEST_IMPL(daemon_half_closed_peer_answered)
{
	static struct md__msg m;
	static unsigned char page[MD_MSG_PAGE];
	struct md__daemon *d = daemon_up();
	d->control_wait_ms = 60000;
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = waiter(gate);
	struct md__conn *c;
	int fd = agent_of(d, 1000, pid, &c);

	int cli = peer_of(d, 1000, 5000);
	send_status(cli, 3);
	ASSERT(shutdown(cli, SHUT_WR) == 0);
	wake_up(d);
	ASSERT_EQ(next_reply(cli, &m), MD_MSG_STATUS_R);
	ASSERT_EQ(m.hdr.seq, 3);
	wake_up(d);
	ASSERT(closed_by_daemon(cli));
	close(cli);

	cli = peer_of(d, 1000, 5001);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_CONTROL, .seq = 4 } };
	m.u.control.op = MD_CTL_PAUSE;
	send_msg(cli, &m);
	ASSERT(shutdown(cli, SHUT_WR) == 0);
	uint32_t token = control_token(d, fd);
	unsigned t;
	ASSERT_EQ(next_reply(cli, &m), 0);	/* it waits for the agent */
	ASSERT(!closed_by_daemon(cli));
	m = (struct md__msg){ .hdr = { .type = MD_MSG_CONTROL_DONE, .seq = 2 } };
	m.u.control_done.token = token;
	send_msg(fd, &m);
	wake_up(d);
	wake_up(d);
	ASSERT_EQ(next_reply(cli, &m), MD_MSG_CONTROL_R);
	ASSERT_EQ(m.hdr.seq, 4);
	ASSERT_EQ(m.u.text.status, 0);
	wake_up(d);
	ASSERT(closed_by_daemon(cli));
	close(cli);

	/* The agent: its PUBLISH answered, the reference it holds the one it
	 * was told of. */
	memset(page, 0x3c, sizeof(page));
	m = (struct md__msg){ .hdr = { .type = MD_MSG_PUBLISH, .seq = 3 } };
	m.u.publish.n = 1;
	m.u.publish.hash[0] = md__page_hash(page);
	m.u.publish.pages = page;
	send_msg(fd, &m);
	ASSERT(shutdown(fd, SHUT_WR) == 0);
	wake_up(d);
	while ((t = next_reply(fd, &m)) && t != MD_MSG_PUBLISH_R)
		ASSERT(t == MD_MSG_ACK || t == MD_MSG_SHARE);	/* the CONTROL_DONE's */
	ASSERT_EQ(t, MD_MSG_PUBLISH_R);
	ASSERT_EQ(m.hdr.seq, 3);
	ASSERT_EQ(m.u.publish_r.n, 1);
	wake_up(d);
	ASSERT(closed_by_daemon(fd));
	daemon_down(d);
	close(fd);
	waiters_gone(gate, &pid, 1);
	return 0;
}

/* A CONTROL waiting for its agents, a request behind it buffered and
 * another in the socket: its connection does not wake the loop meanwhile
 * (armed for writing or reading, it woke it at once and again until the
 * agents answered), and once the CONTROL is answered, so are the requests
 * behind it. */
TEST_IMPL(daemon_control_waiting_not_woken)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	d->control_wait_ms = 60000;
	int gate[2];
	pid_t pid;
	struct md__conn *c;
	int fd = lone_agent(d, gate, &pid, &c);
	int cli = peer_of(d, 1000, 5001);
	struct md__conn *cc = d->conns;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_CONTROL, .seq = 4 } };
	m.u.control.op = MD_CTL_PAUSE;
	send_msg(cli, &m);
	send_status(cli, 5);
	uint32_t token = control_token(d, fd);
	ASSERT(cc->awaiting);
	send_status(cli, 6);	/* left in the socket: not read meanwhile either */
	struct epoll_event evs[64];
	int n = epoll_wait(d->epfd, evs, 64, 0);
	for (int i = 0; i < n; i++)
		ASSERT(evs[i].data.ptr != &cc->ep);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_CONTROL_DONE, .seq = 2 } };
	m.u.control_done.token = token;
	send_msg(fd, &m);
	for (int i = 0; i < 3; i++)
		wake_up(d);
	ASSERT_EQ(next_reply(cli, &m), MD_MSG_CONTROL_R);
	ASSERT_EQ(m.hdr.seq, 4);
	ASSERT_EQ(next_reply(cli, &m), MD_MSG_STATUS_R);
	ASSERT_EQ(m.hdr.seq, 5);
	ASSERT_EQ(next_reply(cli, &m), MD_MSG_STATUS_R);
	ASSERT_EQ(m.hdr.seq, 6);
	daemon_down(d);
	close(fd);
	close(cli);
	waiters_gone(gate, &pid, 1);
	return 0;
}

/* A connection taken over with UNREFs of DRAIN_SLOTS slots left in its
 * buffer: the agent's counts drop at once, the pool's over the wake-ups,
 * at most MD_D_DRAIN_REFS in each, and another user's request is answered
 * in the first. All were freed at once, up to 16 MiB of UNREFs. */
TEST_IMPL(daemon_unrefs_left_drained_per_wakeup)
{
	static uint32_t slot[DRAIN_SLOTS];
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	d->pool_pages = DRAIN_SLOTS + 1024;
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = waiter(gate);
	struct md__conn *c, *c2;
	int fd = agent_of(d, 1000, pid, &c);
	publish_many(c, slot);
	struct md__agent *a = c->agent;
	struct md__domain *dom = a->dom;
	/* Its SHARE sent: nothing wakes the server for c, whose UNREFs
	 * would be handled, under the budgets, once it is writable. */
	wake_up(d);
	ASSERT_EQ(next_reply(fd, &m), MD_MSG_SHARE);
	ASSERT_EQ(next_reply(fd, &m), 0);
	for (uint32_t k = 0; k < DRAIN_SLOTS; k += MD_REF_MAX) {
		m = (struct md__msg){ .hdr = { .type = MD_MSG_UNREF, .seq = 2000 + k } };
		m.u.refs.n = DRAIN_SLOTS - k < MD_REF_MAX ? DRAIN_SLOTS - k : MD_REF_MAX;
		memcpy(m.u.refs.slot, slot + k, sizeof(uint32_t) * m.u.refs.n);
		queue_in(c, &m, 1);
	}
	uint64_t freed = dom->pool.freed;
	int other = peer_of(d, 2000, 5000);
	send_status(other, 1);
	/* The same process's HELLO on another connection takes the record. */
	int fd2 = agent_of(d, 1000, pid, &c2);
	ASSERT_EQ(c2->agent, a);
	size_t asked = 0;
	count_replies(other, &asked);
	ASSERT_EQ(asked, 1);
	ASSERT_EQ(a->nrefs, 0);
	ASSERT(dom->pool.freed > freed);
	ASSERT(dom->pool.freed - freed <= MD_D_DRAIN_REFS);
	ASSERT_EQ(d->draining, a);
	ASSERT_EQ(dom->refs_draining, dom->refs_total);	/* none is its any more */
	ASSERT(dom->refs_draining > 0);
	for (int round = 0; round < 64 && d->draining; round++) {
		uint64_t before = dom->pool.freed;
		wake_up(d);
		ASSERT(dom->pool.freed - before <= MD_D_DRAIN_REFS);
	}
	ASSERT(!d->draining);
	ASSERT_EQ(md__pool_live(&dom->pool), 0);
	ASSERT_EQ(dom->refs_total, 0);
	ASSERT_EQ(dom->refs_draining, 0);
	ASSERT_EQ(d->agents, a);
	daemon_down(d);
	close(fd);
	close(fd2);
	close(other);
	waiters_gone(gate, &pid, 1);
	return 0;
}

/* The UNREFs a connection left, drained, are all a live agent gives back:
 * the references it still holds stay, its pages mapped. (An exited
 * agent's drain goes on to every reference it held.) */
TEST_IMPL(daemon_unrefs_left_keep_the_rest)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	d->pool_pages = 1024;
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = waiter(gate);
	struct md__conn *c, *c2, *c3;
	uint32_t first;
	int fd = agent_of(d, 1000, pid, &c);
	struct md__agent *a = c->agent;
	struct md__domain *dom = a->dom;
	ASSERT_EQ(md__agent_publish(a, &publish_64()->u.publish, &first, 0), 0);
	/* Its SHARE sent: nothing wakes the server for c, whose UNREF
	 * would be handled as a request once it is writable. */
	wake_up(d);
	ASSERT_EQ(next_reply(fd, &m), MD_MSG_SHARE);
	ASSERT_EQ(next_reply(fd, &m), 0);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_UNREF, .seq = 2 } };
	m.u.refs.n = 16;
	for (uint32_t i = 0; i < 16; i++)
		m.u.refs.slot[i] = first + i;
	queue_in(c, &m, 1);
	int fd2 = agent_of(d, 1000, pid, &c2);	/* takes the record, the UNREFs left applied */
	ASSERT_EQ(c2->agent, a);
	ASSERT_EQ(a->nrefs, MD_PUBLISH_MAX - 16);
	ASSERT_EQ(dom->refs_total - dom->refs_draining, MD_PUBLISH_MAX - 16);	/* all but its own going */
	/* Not past a request refused at its header (a second HELLO): what
	 * follows it is no request of the agent's. */
	wake_up(d);
	while (next_reply(fd2, &m))
		;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_HELLO, .seq = 3 } };
	m.u.hello.pid = (uint32_t)pid;
	strcpy(m.u.hello.domain, "fair");
	queue_in(c2, &m, 1);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_UNREF, .seq = 4 } };
	m.u.refs.n = 16;
	for (uint32_t i = 0; i < 16; i++)
		m.u.refs.slot[i] = first + 16 + i;
	queue_in(c2, &m, 1);
	int fd3 = agent_of(d, 1000, pid, &c3);
	ASSERT_EQ(c3->agent, a);
	ASSERT_EQ(a->nrefs, MD_PUBLISH_MAX - 16);
	drained(d);
	ASSERT_EQ(a->nrefs, MD_PUBLISH_MAX - 16);
	ASSERT_EQ(dom->refs_total, MD_PUBLISH_MAX - 16);
	ASSERT_EQ(dom->refs_draining, 0);
	ASSERT_EQ(md__pool_live(&dom->pool), MD_PUBLISH_MAX - 16);
	for (uint32_t i = 0; i < MD_PUBLISH_MAX; i++)
		ASSERT_EQ(dom->pool.state[first + i] == MD_SLOT_LIVE, i >= 16);
	daemon_down(d);
	close(fd);
	close(fd2);
	close(fd3);
	waiters_gone(gate, &pid, 1);
	return 0;
}

/* One LOOKUP of hash at addr from fd, handled: the answer's slot1. */
static uint32_t lookup_one(struct md__daemon *d, int fd, uint64_t hash, uint64_t addr)
{
	static struct md__msg m;
	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP, .seq = 7 } };
	m.u.lookup.n = 1;
	m.u.lookup.hash[0] = hash;
	m.u.lookup.addr[0] = addr;
	send_msg(fd, &m);
	wake_up(d);
	for (unsigned t; (t = next_reply(fd, &m));)
		if (t == MD_MSG_LOOKUP_R)
			return m.u.lookup_r.slot1[0];
	ASSERT(!"no LOOKUP_R");
	return 0;
}

/* A first sighting names its agent by number, and numbers are given again
 * once all have been (4095 of them): the agent that now has the number of
 * a sighting's agent, gone, may be of another domain. The domain's next
 * publish of that content names the sighted page to the agent with the
 * number only if it is of the same domain: else an address of one
 * domain's guest went to another's agent, to visit for nothing. */
TEST_IMPL(daemon_candidate_not_sent_across_domains)
{
	static struct md__msg m;
	static unsigned char page[MD_MSG_PAGE];
	struct md__daemon *d = daemon_up();
	int gate_a[2], gate[2];
	ASSERT(pipe(gate_a) == 0 && pipe(gate) == 0);
	pid_t pa = waiter(gate_a), pid[2] = { waiter(gate), waiter(gate) };
	struct md__conn *ca, *cb, *cc;
	memset(page, 0x3c, sizeof(page));
	uint64_t hash = md__page_hash(page);

	/* A, of domain x, sights the page; C joins x. */
	int fa = agent_in(d, 1000, pa, "x", &ca);
	struct md__agent *a = ca->agent;
	unsigned num_a = a->num;
	struct md__domain *x = a->dom;
	ASSERT_EQ(lookup_one(d, fa, hash, 0x7f0000001000ull), 0);
	int fc = agent_in(d, 1000, pid[0], "x", &cc);
	ASSERT(cc->agent->dom == x);
	/* A exits; B, of domain y, is given its number (as once 4095 more
	 * were given). */
	waiter_exits(gate_a, pa);
	for (int i = 0; i < 4 && md__agent_find_num(d, num_a); i++)
		wake_up(d);
	ASSERT(!md__agent_find_num(d, num_a));
	d->last_agent_num = num_a - 1;
	int fb = agent_in(d, 1000, pid[1], "y", &cb);
	ASSERT_EQ(cb->agent->num, num_a);
	ASSERT(cb->agent->dom != x);
	wake_up(d);
	(void)replies_of(fb, MD_MSG_CANDIDATES);	/* its SHARE */

	/* C's copy: told to publish (A's sighting), and publishes. */
	ASSERT_EQ(lookup_one(d, fc, hash, 0x7f0000002000ull), MD_LOOKUP_PUBLISH);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_PUBLISH, .seq = 8 } };
	m.u.publish.n = 1;
	m.u.publish.hash[0] = hash;
	m.u.publish.pages = page;
	send_msg(fc, &m);
	wake_up(d);
	wake_up(d);
	ASSERT_EQ(replies_of(fc, MD_MSG_PUBLISH_R), 1);
	/* B, of y, is told nothing of x's page. */
	ASSERT_EQ(replies_of(fb, MD_MSG_CANDIDATES), 0);

	daemon_down(d);
	close(fa);
	close(fb);
	close(fc);
	waiters_gone(gate, pid, 2);
	return 0;
}

/* Candidates past a message's worth in one wake-up (two PUBLISHes of
 * pages another agent sighted first) all reach that agent: a CANDIDATES
 * goes each time MD_CANDIDATES_MAX are queued, the rest once the wake-up's
 * messages are handled. Never sent when full, they ran past the agent's
 * array. */
TEST_IMPL(daemon_candidates_past_one_message_all_sent)
{
	enum { NC = MD_CANDIDATES_MAX + 6 };
	static struct md__msg m;
	static unsigned char pages[NC * MD_MSG_PAGE];
	uint64_t hash[NC], addr[NC];
	struct md__daemon *d = daemon_up();
	d->pool_pages = 4 * NC;
	int gate[2], fd[2];
	pid_t pid[2];
	struct md__conn *c[2];
	two_agents(d, 1000, gate, pid, c, fd);
	int fa = fd[0], fb = fd[1];
	for (uint32_t i = 0; i < NC; i++) {
		memset(pages + (size_t)i * MD_MSG_PAGE, (int)i + 1, MD_MSG_PAGE);
		hash[i] = md__page_hash(pages + (size_t)i * MD_MSG_PAGE);
		addr[i] = 0x7f0000100000ull + (uint64_t)i * MD_MSG_PAGE;
		ASSERT_EQ(lookup_one(d, fa, hash[i], addr[i]), 0);	/* A sights each first */
		ASSERT_EQ(lookup_one(d, fb, hash[i], 0x7f0000900000ull + (uint64_t)i * MD_MSG_PAGE),
			  MD_LOOKUP_PUBLISH);
	}
	for (uint32_t first = 0; first < NC; first += MD_PUBLISH_MAX) {
		m = (struct md__msg){ .hdr = { .type = MD_MSG_PUBLISH, .seq = 8 + first } };
		m.u.publish.n = NC - first < MD_PUBLISH_MAX ? NC - first : MD_PUBLISH_MAX;
		memcpy(m.u.publish.hash, hash + first, m.u.publish.n * sizeof(hash[0]));
		m.u.publish.pages = pages + (size_t)first * MD_MSG_PAGE;
		queue_in(c[1], &m, 1);
	}
	nudge(fb);
	wake_up(d);	/* both handled */
	wake_up(d);	/* what was queued for A, sent */
	ASSERT_EQ(replies_of(fb, MD_MSG_PUBLISH_R), 2);
	unsigned got = 0;
	for (unsigned t; (t = next_reply(fa, &m));) {
		if (t != MD_MSG_CANDIDATES)
			continue;
		for (uint32_t i = 0; i < m.u.candidates.n; i++, got++)
			ASSERT_EQ(m.u.candidates.addr[i], addr[got]);
	}
	ASSERT_EQ(got, NC);
	two_agents_gone(d, gate, pid, fd);
	return 0;
}

/* No CANDIDATES are queued to an agent with MD_D_OUT_PAUSE unsent: they
 * only save it a wait, and to one that does not read they would pile up
 * (what is sent unasked is bounded by MD_D_OUT_MAX alone). */
TEST_IMPL(daemon_candidates_dropped_past_pause)
{
	static unsigned char stream[3 << 20], page[MD_MSG_PAGE];
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	int gate[2], fd[2];
	pid_t pid[2];
	struct md__conn *c[2];
	two_agents(d, 1000, gate, pid, c, fd);
	memset(page, 0x3c, sizeof(page));
	uint64_t hash = md__page_hash(page);
	ASSERT_EQ(lookup_one(d, fd[0], hash, 0x7f0000001000ull), 0);	/* A sights it first */
	ASSERT_EQ(lookup_one(d, fd[1], hash, 0x7f0000002000ull), MD_LOOKUP_PUBLISH);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(md__conn_send(d, c[0], status_r_of(MD_MSG_MAX - 64), -1), 0);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_PUBLISH, .seq = 8 } };
	m.u.publish.n = 1;
	m.u.publish.hash[0] = hash;
	m.u.publish.pages = page;
	send_msg(fd[1], &m);
	wake_up(d);
	ASSERT(c[0]->out_len - c[0]->out_head >= MD_D_OUT_PAUSE);
	ASSERT_EQ(replies_of(fd[1], MD_MSG_PUBLISH_R), 1);
	long fd_at;
	size_t len = read_stream(d, fd[0], stream, sizeof(stream), 64 << 10, &fd_at);
	unsigned n;
	ASSERT_EQ(msg_at(stream, len, MD_MSG_STATUS_R, &n), 0);
	ASSERT_EQ(n, 2);	/* all read */
	msg_at(stream, len, MD_MSG_CANDIDATES, &n);
	ASSERT_EQ(n, 0);
	two_agents_gone(d, gate, pid, fd);
	return 0;
}

/* A PUBLISH past its user's pool's worth (across the user's domains) is
 * refused with -ENOSPC, the ERROR naming the uid, and counted among the
 * agent's requests; the connection stays: only the request failed, and
 * the next one is answered. */
TEST_IMPL(daemon_publish_past_pool_worth_said)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	int gate[2];
	pid_t pid;
	struct md__conn *c;
	int fd = lone_agent(d, gate, &pid, &c);
	ASSERT(d->pool_pages < MD_PUBLISH_MAX);
	queue_in(c, publish_64(), 1);
	nudge(fd);
	wake_up(d);
	unsigned t;
	while ((t = next_reply(fd, &m)) == MD_MSG_SHARE)
		;
	ASSERT_EQ(t, MD_MSG_ERROR);
	ASSERT_EQ(m.hdr.seq, publish_64()->hdr.seq);
	ASSERT_EQ(m.u.text.status, -ENOSPC);
	ASSERT(strstr(m.u.text.text, "uid 1000 has a pool's worth"));
	ASSERT_EQ(next_reply(fd, &m), MD_MSG_LOOKUP_R);	/* the nudge's: still served */
	ASSERT(!c->closing);
	json_t *st = status_of(d);
	ASSERT_EQ(status_int(st, "agents", pid, "requests"), 2);
	json_decref(st);
	daemon_down(d);
	close(fd);
	waiters_gone(gate, &pid, 1);
	return 0;
}

/* Agent numbers run 1 to MD_AGENT_NUM_MAX, the last given too, and then
 * from 1 again: a number 0 is no number (its pages are never first
 * sightings, and md__agent_find_num finds nobody by it). And an agent
 * that exits takes back the RAM it said it registered, which sizes its
 * domain's sightings: counted for good, a domain's table only grew. */
TEST_IMPL(daemon_agent_numbers_wrap_and_registered_go)
{
	static struct md__msg_report r;
	struct md__daemon *d = daemon_up();
	int gate[2], gate2[2];
	ASSERT(pipe(gate) == 0 && pipe(gate2) == 0);
	pid_t pid = waiter(gate), pid2 = waiter(gate2);
	struct md__conn *c, *c2;
	d->last_agent_num = MD_AGENT_NUM_MAX - 1;
	int fd = agent_in(d, 0, pid, "n", &c);
	ASSERT_EQ(c->agent->num, MD_AGENT_NUM_MAX);
	ASSERT_EQ(md__agent_find_num(d, MD_AGENT_NUM_MAX), c->agent);
	int fd2 = agent_in(d, 0, pid2, "n", &c2);
	ASSERT_EQ(c2->agent->num, 1);
	struct md__domain *dom = c->agent->dom;
	r.n = MD_CTR_COUNT;
	r.counters[MD_CTR_REGISTERED_BYTES] = 512ull << 20;
	md__agent_report(c->agent, &r);
	r.counters[MD_CTR_REGISTERED_BYTES] = 64ull << 20;
	md__agent_report(c2->agent, &r);
	ASSERT_EQ(dom->registered_pages, (576ull << 20) / 4096);
	waiter_exits(gate, pid);
	wake_up(d);
	ASSERT(!md__agent_find(d, pid));
	ASSERT_EQ(dom->registered_pages, (64ull << 20) / 4096);
	daemon_down(d);
	close(fd);
	close(fd2);
	waiters_gone(gate2, &pid2, 1);
	return 0;
}

/* A socket whose listener's backlog is full (a busy daemon's: a connect
 * says EAGAIN) is held, not stale: md__server_listen leaves it and says
 * -EADDRINUSE, another daemon answers. main.c probes just before, but the
 * backlog can fill in between. */
TEST_IMPL(daemon_listen_busy_socket_held)
{
	struct md__daemon *d = daemon_up();
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(d->socket_path, sizeof(d->socket_path), "%s/busy.sock", test_dir());
	ASSERT(strlen(d->socket_path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, d->socket_path, strlen(d->socket_path));
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), cfd[8], n = 0, err = 0;
	ASSERT(lfd >= 0);
	ASSERT(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(lfd, 0) == 0);
	while (n < 8 && err != EAGAIN) {
		cfd[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		ASSERT(cfd[n] >= 0);
		err = connect(cfd[n++], (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : errno;
	}
	ASSERT_EQ(err, EAGAIN);
	struct stat st, again;
	ASSERT(lstat(d->socket_path, &st) == 0);
	ASSERT_EQ(md__server_listen(d), -EADDRINUSE);
	ASSERT(lstat(d->socket_path, &again) == 0);
	ASSERT(again.st_ino == st.st_ino && S_ISSOCK(again.st_mode));
	ASSERT_EQ(d->lfd, -1);
	while (n)
		close(cfd[--n]);
	close(lfd);
	daemon_down(d);
	return 0;
}

/* A connection stopped at its budget is served first in the next wake-up
 * (the deferred loop), and not again on its own events in the same one:
 * it did twice the documented work a wake-up (64, 128, 128, 80). */
TEST_IMPL(daemon_deferred_served_once_per_wakeup)
{
	static struct md__msg m;
	struct md__daemon *d = daemon_up();
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid = waiter(gate);
	struct md__conn *c;
	int fd = agent_of(d, 1000, pid, &c);
	m = (struct md__msg){ .hdr = { .type = MD_MSG_LOOKUP, .seq = 100 } };
	m.u.lookup.n = 1;
	m.u.lookup.hash[0] = 7;
	queue_in(c, &m, 400);
	nudge(fd);
	unsigned per[6], total = 0;
	for (int w = 0; w < 6; w++) {
		wake_up(d);
		per[w] = replies_of(fd, MD_MSG_LOOKUP_R);
		total += per[w];
	}
	for (int w = 0; w < 6; w++)
		ASSERT(per[w] <= MD_D_BUDGET);
	ASSERT_EQ(total, 6 * MD_D_BUDGET);	/* and a full budget each */
	daemon_down(d);
	close(fd);
	waiters_gone(gate, &pid, 1);
	return 0;
}

/* One user's agent alternating its REPORTed scan_state flips the number of
 * users scanning at every wake-up: a SHARE was queued to every other
 * user's agent each time, outside any budget, and one that did not read
 * for a while (a frozen VMM) was dropped at MD_D_OUT_MAX, grants queued
 * with it lost. A SHARE is a state: one at a time is queued. */
TEST_IMPL(daemon_share_flood_from_other_user)
{
	static struct md__msg m, r;
	struct md__daemon *d = daemon_up();
	int gate[2];
	ASSERT(pipe(gate) == 0);
	pid_t pid[2] = { waiter(gate), waiter(gate) };
	struct md__conn *ca, *cb;
	int fa = agent_of(d, 1000, pid[0], &ca);
	int fb = agent_of(d, 2000, pid[1], &cb);
	wake_up(d);
	while (next_reply(fb, &r))
		;
	unsigned rounds = 0;
	for (; rounds < 250000 && !cb->closing; rounds++) {	/* dropped after ~210,000 before */
		m = (struct md__msg){ .hdr = { .type = MD_MSG_REPORT, .seq = 1 + rounds } };
		m.u.report.n = MD_CTR_SCAN_STATE + 1;
		m.u.report.counters[MD_CTR_SCAN_STATE] = rounds % 2 ? MD_SCAN_STATE_SCANNING : MD_SCAN_STATE_STOPPED;
		send_msg(fa, &m);
		wake_up(d);
		while (next_reply(fa, &r))	/* A reads everything: ACK, its own SHAREs */
			;
	}
	printf("  B %s after %u of A's REPORTs, %zu bytes queued to it\n", cb->closing ? "dropped" : "open",
	       rounds, cb->closing ? (size_t)0 : cb->out_len - cb->out_head);
	ASSERT(!cb->closing);
	ASSERT(cb->out_len - cb->out_head < MD_D_OUT_PAUSE);
	daemon_down(d);
	close(fa);
	close(fb);
	waiters_gone(gate, pid, 2);
	return 0;
}
