/*
 * client.c - a connection to memdedupd (see client.h).
 *
 * The socket stays blocking for connect, but every send and receive uses
 * MSG_DONTWAIT after a poll bounded by the request's deadline: that is how
 * a request gets one overall timeout however the bytes trickle in. Each
 * receive takes whatever is waiting into a buffer (common/rxbuf.c), whole
 * messages are taken from it: a batch of replies costs one call. A
 * send cut short or an error leaves the stream at an unknown place, so any
 * such failure marks the connection dead.
 *
 * A reply that does not come in time leaves the stream whole (the bytes
 * that came wait in the buffer), so the connection lives on: the request
 * is owed a reply. The daemon answers in order, so owed replies are read
 * before any later one, and settled: what a late PUBLISH or REF granted is
 * given back with UNREFs, since its caller, told -ETIMEDOUT, maps nothing
 * of it. Before, the connection was dropped and those references stayed
 * pinned until the process exited. While a late reply is still to come,
 * the daemon is behind: requests fail at once with -ETIMEDOUT, rather than
 * each waiting out its timeout, and UNREFs are queued, not lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "log.h"
#include "rxbuf.h"
#include "stats_file.h"
#include "sys.h"

/* A request sent whose reply is not read yet. */
struct owed {
	uint32_t seq;
	uint8_t type;              /* the request's */
	uint8_t late;              /* its caller stopped waiting: settle what it granted */
	uint32_t pages;            /* a PUBLISH's: its reply must name as many slots */
	uint32_t n;                /* a REF's slots (granted if ACKed), an UNREF's (split if refused) */
	uint32_t *slots;
};

/* References to give back in one UNREF; alone: the rest of a refused one,
 * sent one by one (UNREF is all or none), never joined to others. */
struct batch {
	uint32_t n;
	int alone;
	uint32_t *slots;
};

struct md__client {
	int fd;
	dev_t dev;                 /* fd's socket, to tell it from a file the VMM puts */
	ino_t ino;                 /* at the number (sock_ours) */
	int dead;                  /* the stream is unusable: -ENOTCONN from now on */
	int timeout_ms;
	uint32_t seq;
	unsigned qhead, qlen;      /* ring of unsolicited CONTROLs */
	struct md__msg_control q[MD_CLIENT_QUEUE];
	unsigned chead, clen;      /* ring of CANDIDATES addresses */
	uint64_t cand[MD_CLIENT_CANDIDATES];
	uint32_t share;            /* the last SHARE; 0: none came */
	int notices;               /* awaiting a CONTROL's answer: notices may come */
	int renewed;               /* a notice came (CONTROL_R, seq 0): the wait starts again */
	uint32_t hello_flags;      /* those of the HELLO the daemon welcomed */
	struct md__rxbuf in;       /* read ahead of what was handled */
	int in_fd;                 /* a descriptor that came with it, or -1 */
	const unsigned char *rx;   /* header + payload of the last message, in in */
	struct md__msg msg;        /* decoded reply; here, not on a VMM thread's stack */
	unsigned ohead, olen;      /* ring of owed replies, oldest first */
	unsigned nlate;            /* owed replies whose callers timed out */
	int64_t late_since;        /* when the oldest of them was last waited for */
	struct owed owed[MD_CLIENT_OWED];
	uint32_t written;          /* seq of the last request sent whole */
	struct batch *back;        /* references to give back, nback batches */
	size_t nback, back_cap, back_slots;
	/* CONTROL_DONEs kept while a late reply was owed, oldest first: sent
	 * once the daemon caught up (md__client_next_control), or the CLI
	 * waiting for them was told the agent did not answer. */
	struct md__msg_control_done done[MD_CLIENT_DONE_MAX];
	unsigned ndone;
	int quiet;                 /* the CLI's: no log lines (md__client_set_quiet) */
	int fd_lost;               /* fd is not our socket any more: never closed */
	char refusal[MD_TEXT_MAX + 1]; /* why the daemon refused the connection; "" */
};

/* The host's memdedupd, root's (the systemd unit's): used by other users
 * too when it answers, so that their VMs share one daemon, as the unit
 * means. Only a socket root made, in a directory only root can write. */
static int host_daemon_answers(void)
{
	struct stat st;
	if (lstat(MD_HOST_RUN_DIR, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022))
		return 0;
	if (lstat(MD_HOST_RUN_DIR "/memdedupd.sock", &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_uid != 0)
		return 0;
	return md__daemon_alive(MD_HOST_RUN_DIR "/memdedupd.sock");
}

int md__daemon_socket_path(const char *path, char *buf, size_t size)
{
	const char *env = getenv("MEMDEDUP_SOCKET"), *run = getenv("MEMDEDUP_RUN_DIR");
	char dir[256];
	int n, err;
	if (path)
		n = snprintf(buf, size, "%s", path);
	else if (env && *env)
		n = snprintf(buf, size, "%s", env);
	else if (geteuid() != 0 && !(run && *run) && host_daemon_answers())
		n = snprintf(buf, size, "%s", MD_HOST_RUN_DIR "/memdedupd.sock");
	else {
		/* Looked up, not made: the daemon makes its directory, and in
		 * one not there nothing answers (connect says ENOENT). */
		err = md__run_dir_lookup(dir, sizeof(dir));
		if (err && err != -ENOENT)
			return err;
		n = snprintf(buf, size, "%s/memdedupd.sock", dir);
	}
	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static int64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Fails the connection for good: whatever was half sent or read is lost. */
static int kill_conn(struct md__client *c, int err)
{
	c->dead = 1;
	return err;
}

/* The same for a message from memdedupd that breaks the protocol (a
 * reply of the wrong kind or size): said once, as the agent's thread
 * connects again every second (a daemon of another version left on the
 * socket would fill the log). */
static int broken(struct md__client *c)
{
	if (!c->dead && !c->quiet)
		md__log_once(187, "memdedupd sent a message out of protocol (another version?): the connection "
			"is dropped, and made again");
	return kill_conn(c, -EPROTO);
}

/* Whether c->fd is still our socket. The agent's client lives in the
 * VMM, which may close the number and put a file or socket of its own
 * there (its open taking the lowest number, a dup2): our requests (pages
 * of guest RAM among them) would go into it, and we would take its bytes
 * and descriptors. Looked at before each send and receive; found
 * replaced, the connection is over, and the number is never closed as
 * ours (md__client_free). */
static int sock_ours(const struct md__client *c)
{
	return md__same_file(c->fd, c->dev, c->ino);
}

static int replaced(struct md__client *c)
{
	if (!c->dead && !c->quiet)
		md__log("the VMM closed the agent's connection to memdedupd, or put a file of its own at its "
			"number: made again");
	c->dead = 1;
	c->fd_lost = 1;
	return -ENOTCONN;
}

static int conn_errno(int e)
{
	return e == EPIPE || e == ECONNRESET || e == ENOTCONN || e == ECONNABORTED ? -ENOTCONN : -e;
}

/* Waits until fd is ready for events or the deadline passes. */
static int wait_fd(struct md__client *c, short events, int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = c->fd, .events = events };
		int r = poll(&p, 1, (int)left);
		if (r > 0)
			return 0;	/* ready, or an error/hang-up the next call reports */
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

/* Sends the iovecs whole (advancing them over partial sends). */
static int send_iov(struct md__client *c, struct iovec *iov, size_t cnt, int64_t deadline)
{
	if (cnt && !sock_ours(c))
		return replaced(c);
	while (cnt) {
		if (!iov->iov_len) {
			iov++;
			cnt--;
			continue;
		}
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = cnt };
		ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int err = wait_fd(c, POLLOUT, deadline);
			if (err)
				return kill_conn(c, err);
			continue;
		}
		if (w <= 0)
			return kill_conn(c, w < 0 ? conn_errno(errno) : -ENOTCONN);
		size_t done = (size_t)w;
		while (cnt && done >= iov->iov_len) {
			done -= iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (char *)iov->iov_base + done;
			iov->iov_len -= done;
		}
	}
	return 0;
}

static int send_all(struct md__client *c, const void *buf, size_t len, int64_t deadline)
{
	struct iovec iov = { (void *)buf, len };
	return send_iov(c, &iov, 1, deadline);
}

/* Makes room for a message of need bytes, then receives whatever is
 * waiting, as much as fits. A descriptor passed with the bytes is kept in
 * in_fd (one at a time: any other is closed, never leaked). 1: bytes came;
 * 0: none are waiting and wait is 0; else -errno. */
static int fill(struct md__client *c, size_t need, int64_t deadline, int wait)
{
	/* The last message's decoding was used up before this receive. */
	if (md__rxbuf_room(&c->in, need) != 0)
		return kill_conn(c, -ENOMEM);
	if (!sock_ours(c))
		return replaced(c);
	for (;;) {
		union {
			struct cmsghdr h;
			char buf[CMSG_SPACE(sizeof(int) * 4)];
		} ctl;
		struct iovec iov = { c->in.buf + c->in.len, c->in.cap - c->in.len };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
		ssize_t r = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (!wait)
				return 0;
			/* Out of time, the stream stays whole: what came of
			 * a message waits in the buffer for the rest. */
			int err = wait_fd(c, POLLIN, deadline);
			if (err)
				return err == -ETIMEDOUT ? err : kill_conn(c, err);
			continue;
		}
		if (r <= 0)
			return kill_conn(c, r < 0 ? conn_errno(errno) : -ENOTCONN);
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < nfd; i++) {
				int got;
				memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (c->in_fd < 0)
					c->in_fd = got;
				else
					close(got);
			}
		}
		c->in.len += (size_t)r;
		/* A descriptor the kernel could not give us (no number free
		 * under RLIMIT_NOFILE) is dropped with MSG_CTRUNC, its message
		 * kept: a WELCOME so cut looked out of protocol. */
		if (mh.msg_flags & MSG_CTRUNC) {
			md__log_once(80, "a descriptor memdedupd sent was lost (this process has none free "
				     "under its limit of open files): the connection is dropped, and made again");
			return kill_conn(c, -EMFILE);
		}
		return 1;
	}
}

/* Takes the next whole message from the buffer (receiving more while it
 * is not all there; with wait 0, only what is waiting now: -EAGAIN if that
 * is not a whole message) and decodes it into c->msg, c->rx its bytes. A
 * descriptor that came goes to *fd if fd is not NULL and *fd is still -1;
 * else it is closed. */
static int recv_msg(struct md__client *c, int64_t deadline, int *fd, int wait)
{
	struct md__msg_hdr h;
	size_t need;
	int got;
	while ((got = md__rxbuf_next(&c->in, &h, &need)) != 1) {
		if (got < 0)
			return broken(c);
		got = fill(c, need, deadline, wait);
		if (got < 0)
			return got;
		if (got == 0)
			return -EAGAIN;
	}
	c->rx = c->in.buf + c->in.head;
	c->in.head += need;
	if (c->in_fd >= 0) {
		if (fd && *fd < 0)
			*fd = c->in_fd;
		else
			close(c->in_fd);
		c->in_fd = -1;
	}
	if (md__msg_decode(c->rx, need, &c->msg))
		return broken(c);
	return 0;
}

static void queue_control(struct md__client *c, const struct md__msg_control *ctl)
{
	/* Full: the oldest goes. A newer command supersedes an older one
	 * (resume after pause, a later SET), so dropping the oldest is
	 * the lesser harm. */
	if (c->qlen == MD_CLIENT_QUEUE) {
		c->qhead = (c->qhead + 1) % MD_CLIENT_QUEUE;
		c->qlen--;
	}
	c->q[(c->qhead + c->qlen) % MD_CLIENT_QUEUE] = *ctl;
	c->qlen++;
}

static void queue_candidates(struct md__client *c, const struct md__msg_candidates *m)
{
	/* Full: the oldest go, like the hint stack's: a candidate only
	 * makes a merge come sooner, the scan finds it anyway. */
	for (uint32_t i = 0; i < m->n; i++) {
		if (c->clen == MD_CLIENT_CANDIDATES) {
			c->chead = (c->chead + 1) % MD_CLIENT_CANDIDATES;
			c->clen--;
		}
		c->cand[(c->chead + c->clen) % MD_CLIENT_CANDIDATES] = m->addr[i];
		c->clen++;
	}
}

/* Queues n <= MD_REF_MAX references to give back with an UNREF (slots
 * copied; alone: see struct batch). One that cannot be queued stays pinned
 * in the daemon until this process exits, which never frees a page under a
 * mapping. 0, or -ENOBUFS. */
static int give_back(struct md__client *c, const uint32_t *slots, uint32_t n, int alone)
{
	uint32_t *copy = NULL;
	if (!n)
		return 0;
	if (c->back_slots + n > MD_CLIENT_BACK_MAX)
		goto dropped;
	struct batch *last = c->nback ? &c->back[c->nback - 1] : NULL;
	if (!alone && last && !last->alone && last->n + n <= MD_REF_MAX) {
		copy = realloc(last->slots, (last->n + n) * sizeof(*slots));
		if (!copy)
			goto dropped;
		memcpy(copy + last->n, slots, n * sizeof(*slots));
		last->slots = copy;
		last->n += n;
		c->back_slots += n;
		return 0;
	}
	if (c->nback == c->back_cap) {
		size_t cap = c->back_cap ? 2 * c->back_cap : 16;
		struct batch *b = realloc(c->back, cap * sizeof(*b));
		if (!b)
			goto dropped;
		c->back = b;
		c->back_cap = cap;
	}
	copy = malloc(n * sizeof(*slots));
	if (!copy)
		goto dropped;
	memcpy(copy, slots, n * sizeof(*slots));
	c->back[c->nback++] = (struct batch){ n, alone, copy };
	c->back_slots += n;
	return 0;

dropped:
	md__log_once(72, "could not queue %u pool references to give back to memdedupd: "
		     "they stay pinned until this process exits", n);
	return -ENOBUFS;
}

/* Records a request sent whose reply is read later; late: its caller
 * stopped waiting. slots (n) are copied. 0, or -ENOBUFS / -ENOMEM. */
static int owe(struct md__client *c, uint32_t seq, unsigned type, int late, const uint32_t *slots,
	       uint32_t n)
{
	if (c->olen == MD_CLIENT_OWED)
		return -ENOBUFS;
	struct owed o = { .seq = seq, .type = (uint8_t)type, .late = (uint8_t)late };
	if (type == MD_MSG_PUBLISH) {	/* n pages, no slots known */
		o.pages = n;
		n = 0;
	}
	if (n) {
		o.slots = malloc(n * sizeof(*slots));
		if (!o.slots)
			return -ENOMEM;
		memcpy(o.slots, slots, n * sizeof(*slots));
		o.n = n;
	}
	c->owed[(c->ohead + c->olen++) % MD_CLIENT_OWED] = o;
	if (late && !c->nlate++)
		c->late_since = now_ms();
	return 0;
}

/* The reply type a request expects (an ERROR may answer any). */
static unsigned reply_type(unsigned type)
{
	switch (type) {
	case MD_MSG_HELLO: return MD_MSG_WELCOME;
	case MD_MSG_LOOKUP: return MD_MSG_LOOKUP_R;
	case MD_MSG_PUBLISH: return MD_MSG_PUBLISH_R;
	case MD_MSG_STATUS: return MD_MSG_STATUS_R;
	case MD_MSG_CONTROL: return MD_MSG_CONTROL_R;
	default: return MD_MSG_ACK;	/* REF, UNREF, REPORT, READS */
	}
}

/* c->msg answers the oldest owed request: a late one's grants go back; a
 * refused UNREF of several slots (one was not held) is split, as the
 * engine's own are, so the others still go. */
static int settle(struct md__client *c)
{
	struct owed o = c->owed[c->ohead];
	const struct md__msg *m = &c->msg;
	int err = 0;
	c->ohead = (c->ohead + 1) % MD_CLIENT_OWED;
	c->olen--;
	c->nlate -= o.late;
	if (o.late)
		c->late_since = now_ms();	/* it moves: the next may wait as long */
	int acked = m->hdr.type == MD_MSG_ACK && m->u.ack.status == 0;
	if (m->hdr.type != MD_MSG_ERROR && (m->hdr.type != reply_type(o.type) ||
	    (m->hdr.type == MD_MSG_PUBLISH_R && m->u.publish_r.n != o.pages))) {
		err = broken(c);
	} else if (o.late && m->hdr.type == MD_MSG_PUBLISH_R) {
		uint32_t s[MD_PUBLISH_MAX];	/* decoding bounds n */
		for (uint32_t i = 0; i < m->u.publish_r.n; i++)
			s[i] = m->u.publish_r.first_slot + i;
		give_back(c, s, m->u.publish_r.n, 0);
	} else if (o.late && o.type == MD_MSG_REF && acked) {
		give_back(c, o.slots, o.n, 0);
	} else if (o.type == MD_MSG_UNREF && !acked) {
		if (o.n > 1)
			for (uint32_t i = 0; i < o.n; i++)
				give_back(c, &o.slots[i], 1, 1);
		else
			md__log_once(73, "memdedupd refused to take back a pool reference: it stays "
				     "pinned until this process exits");
	}
	free(o.slots);
	return err;
}

/* What a daemon's ERROR reply says, for the caller. The errors that tell
 * of this connection's own state (a reply late, the daemon gone) are ours
 * to say: from the peer, whose reply did come, they would have a caller
 * take a refused UNREF as sent, or hang up a live connection. */
static int peer_error(int status)
{
	switch (status) {
	case 0: case -ETIMEDOUT: case -ENOTCONN: case -EPIPE: case -ECONNRESET:
		return -EPROTO;
	default:
		return status;
	}
}

/* What an ACK that came says: 0, or the daemon's refusal (peer_error). */
static int ack_status(const struct md__client *c)
{
	return c->msg.u.ack.status ? peer_error(c->msg.u.ack.status) : 0;
}

/* A refusal is said when it says something new: the agent's thread
 * connects again every second, and a daemon at its connection limit
 * refused each try with the same words; another reason later (a user
 * change, a limit reached weeks on) is still said. */
static void refusal_said(const char *why)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static char last[MD_TEXT_MAX + 1];
	pthread_mutex_lock(&lock);
	int said = strcmp(last, why) == 0;
	if (!said)
		snprintf(last, sizeof(last), "%s", why);
	pthread_mutex_unlock(&lock);
	if (!said)
		md__log("memdedupd refused the connection: %s (tried again every second; said again "
			"only for another reason)", why);
}

/* A message that is not the reply awaited: an owed one, settled; else
 * only CONTROL, CANDIDATES and SHARE with seq 0 may come so, and an ERROR
 * when the daemon refused the connection (too many) before any request. */
static int other(struct md__client *c)
{
	if (c->msg.hdr.seq != 0) {
		if (!c->olen || c->msg.hdr.seq != c->owed[c->ohead].seq)
			return broken(c);
		return settle(c);
	}
	switch (c->msg.hdr.type) {
	case MD_MSG_ERROR:
		snprintf(c->refusal, sizeof(c->refusal), "%s", c->msg.u.text.text);
		if (!c->quiet)
			refusal_said(c->msg.u.text.text);
		return kill_conn(c, peer_error(c->msg.u.text.status));	/* said above */
	case MD_MSG_CONTROL:
		queue_control(c, &c->msg.u.control);
		return 0;
	case MD_MSG_CANDIDATES:
		queue_candidates(c, &c->msg.u.candidates);
		return 0;
	case MD_MSG_SHARE:
		c->share = c->msg.u.share.part;
		return 0;
	case MD_MSG_CONTROL_R:	/* MD_CONTROL_NOTICES: an UNMERGE's next agent has its turn */
		/* Only to a CLI waiting for its CONTROL's answer: anyone
		 * else kept waiting by them would wait for good. */
		if (!c->notices || c->msg.u.text.status != -EINPROGRESS)
			break;
		c->renewed = 1;
		return 0;
	}
	return broken(c);
}

/* Reads messages until the reply with seq, left decoded in c->msg (raw in
 * c->rx); owed replies met on the way are settled, unsolicited ones queued.
 * -ETIMEDOUT leaves the connection usable (see the top). */
static int await_reply(struct md__client *c, uint32_t seq, int64_t deadline, int *fd)
{
	for (;;) {
		int err = recv_msg(c, deadline, fd, 1);
		if (err)
			return err;
		if (c->msg.hdr.seq == seq && !c->olen)
			return 0;
		err = other(c);
		if (err)
			return err;
		if (c->renewed) {
			c->renewed = 0;
			deadline = now_ms() + c->timeout_ms;
		}
		/* A peer that keeps sending other messages never lets a
		 * receive wait: the deadline is kept here too. */
		if (now_ms() >= deadline)
			return -ETIMEDOUT;
	}
}

/* The request with seq timed out: its reply is owed. slots (n): a REF's or
 * UNREF's; n: a PUBLISH's pages. If it cannot be followed, the connection
 * goes. */
static int timed_out(struct md__client *c, uint32_t seq, unsigned type, const uint32_t *slots,
		     uint32_t n)
{
	int refs = type == MD_MSG_REF || type == MD_MSG_UNREF;
	if ((refs && !slots) || (type == MD_MSG_PUBLISH && !n) || owe(c, seq, type, 1, slots, n) != 0)
		return kill_conn(c, -ETIMEDOUT);
	if (!c->quiet)
		md__log_once(74, "memdedupd is slow to answer: requests fail until it catches up; "
			     "what it grants late is given back");
	return -ETIMEDOUT;
}

/* Handles whole messages waiting now (the daemon writes them whole), no
 * blocking, up to a bound: a peer that never stops sending must not keep
 * the caller. 0, or -errno if the connection failed. */
static int pump(struct md__client *c)
{
	for (unsigned i = 0; i < 1024; i++) {
		if (c->dead)
			return -ENOTCONN;
		int err = recv_msg(c, 0, NULL, 0);
		if (err == -EAGAIN)
			return 0;
		if (err)
			return err;
		err = other(c);
		if (err)
			return err;
	}
	return 0;
}

static uint32_t next_seq(struct md__client *c)
{
	if (++c->seq == 0)	/* 0 marks unsolicited messages */
		c->seq = 1;
	return c->seq;
}

/* Sends one UNREF per queued batch, at most max, while a quarter of the
 * owed ring is free of them: the rest is for requests that time out. */
static int send_back(struct md__client *c, unsigned max)
{
	int64_t deadline = now_ms() + c->timeout_ms;
	unsigned char buf[MD_MSG_HDR_SIZE + 4 + 4 * MD_REF_MAX];
	struct md__msg *m = malloc(sizeof(*m));
	int err = 0;
	if (!m)
		return -ENOMEM;
	for (; max && c->nback && c->olen < MD_CLIENT_OWED / 4; max--) {
		struct batch *b = &c->back[c->nback - 1];
		m->hdr.type = MD_MSG_UNREF;
		m->hdr.seq = next_seq(c);
		m->u.refs.n = b->n;
		memcpy(m->u.refs.slot, b->slots, b->n * sizeof(*b->slots));
		ssize_t len = md__msg_encode(m, buf, sizeof(buf));
		err = len < 0 ? (int)len : owe(c, m->hdr.seq, MD_MSG_UNREF, 0, b->slots, b->n);
		if (err)
			break;
		err = send_all(c, buf, (size_t)len, deadline);
		if (err) {
			/* Not sent whole, so never applied (the daemon drops
			 * a message cut short): no reply is owed, and the
			 * batch stays queued for md__client_take_back. */
			c->olen--;
			free(c->owed[(c->ohead + c->olen) % MD_CLIENT_OWED].slots);
			break;
		}
		free(b->slots);
		c->back_slots -= b->n;
		c->nback--;
	}
	free(m);
	return err;
}

/* Before a request: the late replies that came are settled and what they
 * granted goes back first. While one is still to come the daemon is
 * behind: -ETIMEDOUT at once, not another wait. One that never comes (a
 * daemon hung, or one that lost a reply) would stop merging for good: past
 * MD_CLIENT_LATE_MAX_MS without one, the connection goes. Hung up, the
 * daemon handles none of the requests it had not read (the grants would
 * be pinned in the record our reconnect gets back): only a reply it sent
 * after the pump below and before the hang-up grants what stays pinned
 * until the process exits. */
static int ready(struct md__client *c)
{
	if (c->dead)
		return -ENOTCONN;
	if (c->nlate) {
		int err = pump(c);
		if (err)
			return err;
		if (c->nlate && now_ms() - c->late_since > MD_CLIENT_LATE_MAX_MS) {
			md__log_once(75, "memdedupd owes replies for %d s: connecting again",
				     MD_CLIENT_LATE_MAX_MS / 1000);
			return kill_conn(c, -ENOTCONN);
		}
		if (c->nlate)
			return -ETIMEDOUT;
	}
	return c->nback ? send_back(c, UINT_MAX) : 0;
}

/* Sends len bytes of an encoded request with seq, and reads its reply. A
 * timeout owes the reply (grant: as timed_out's). */
static int transact(struct md__client *c, const void *req, size_t len, unsigned type, uint32_t seq,
		    int *fd, const uint32_t *grant, uint32_t n)
{
	int64_t deadline = now_ms() + c->timeout_ms;
	int err;
	if (c->dead)
		return -ENOTCONN;
	err = send_all(c, req, len, deadline);
	/* A daemon that refused us said why before it hung up (seq 0). The
	 * owed replies that came are settled all the same: what they give
	 * back is queued, for the next connection to this daemon. */
	while (err == -ENOTCONN && recv_msg(c, 0, NULL, 0) == 0) {
		if (!c->msg.hdr.seq && c->msg.hdr.type == MD_MSG_ERROR)
			return other(c);
		if (c->olen && c->msg.hdr.seq == c->owed[c->ohead].seq)
			settle(c);
	}
	if (err)
		return err;
	c->written = seq;
	/* After an ERROR the daemon may close: the next call will tell. */
	err = await_reply(c, seq, deadline, fd);
	if (err == -ETIMEDOUT && !c->dead)
		return timed_out(c, seq, type, grant, n);
	return err;
}

/* Encodes m with a fresh seq and runs it; expects the reply its type
 * asks for (an ERROR gives its status). */
static int call(struct md__client *c, struct md__msg *m, int *fd)
{
	unsigned char small[8192], *buf = small;
	size_t len = md__msg_encoded_len(m);
	int err;

	if (len == 0)
		return -EINVAL;
	err = ready(c);
	if (err)
		return err;
	if (len > sizeof(small)) {
		buf = malloc(len);
		if (!buf)
			return -ENOMEM;
	}
	m->hdr.seq = next_seq(c);
	ssize_t n = md__msg_encode(m, buf, len);
	if (n < 0) {
		err = (int)n;
		goto free_buf;
	}
	int refs = m->hdr.type == MD_MSG_REF || m->hdr.type == MD_MSG_UNREF;
	int pub = m->hdr.type == MD_MSG_PUBLISH;
	err = transact(c, buf, (size_t)n, m->hdr.type, m->hdr.seq, fd, refs ? m->u.refs.slot : NULL,
		       refs ? m->u.refs.n : pub ? m->u.publish.n : 0);
	if (err)
		goto free_buf;
	if (c->msg.hdr.type == MD_MSG_ERROR)
		err = peer_error(c->msg.u.text.status);
	else if (c->msg.hdr.type != reply_type(m->hdr.type))
		err = broken(c);
free_buf:
	if (buf != small)
		free(buf);
	return err;
}

/* A daemon is trusted with our guests' pages and told where they are: only
 * root's or our own, never another user's socket in our path. */
static int check_daemon(int fd, const char *path)
{
	struct ucred cr;
	socklen_t cl = sizeof(cr);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0)
		return -errno;
	if (cr.uid != 0 && cr.uid != geteuid()) {
		md__log_once(183, "the daemon at %s runs as uid %u, neither root nor us (uid %u): not using it",
			path, (unsigned)cr.uid, (unsigned)geteuid());
		return -EPERM;
	}
	return 0;
}

/* The daemon's address for socket_path (NULL: the default): 0 and *sa,
 * its path in path too (for messages), or -errno. */
static int daemon_address(const char *socket_path, struct sockaddr_un *sa, char *path, size_t size)
{
	int err = md__daemon_socket_path(socket_path, path, size);
	if (err)
		return err;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	memcpy(sa->sun_path, path, strlen(path));
	return 0;
}

int md__client_connect(struct md__client **cp, const char *socket_path)
{
	struct sockaddr_un sa;
	char path[sizeof(sa.sun_path) + 1];

	*cp = NULL;
	int err = daemon_address(socket_path, &sa, path, sizeof(path));
	if (err)
		return err;
	struct md__client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->timeout_ms = MD_CLIENT_TIMEOUT_MS;
	c->in_fd = -1;
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		err = -errno;
		goto free_client;
	}
	/* connect() to a daemon whose backlog is full waits; SO_SNDTIMEO
	 * bounds that wait too. */
	struct timeval tv = { .tv_sec = c->timeout_ms / 1000, .tv_usec = (c->timeout_ms % 1000) * 1000 };
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	while (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		err = errno == EAGAIN || errno == EINPROGRESS ? -ETIMEDOUT : -errno;
		goto close_fd;
	}
	err = check_daemon(c->fd, path);
	struct stat st;
	if (!err && fstat(c->fd, &st) != 0)
		err = -errno;
	if (err)
		goto close_fd;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	*cp = c;
	return 0;

close_fd:
	close(c->fd);
free_client:
	free(c);
	return err;
}

void md__client_free(struct md__client *c)
{
	if (!c)
		return;
	/* Shut down, not only closed: a copy that a child forked without
	 * exec holds keeps the socket open, and memdedupd would go on
	 * serving what was left in it, granting references nobody learns
	 * of. Shut down, it sees the hang-up (daemon/server.c). */
	if (!c->fd_lost && sock_ours(c)) {
		shutdown(c->fd, SHUT_RDWR);
		close(c->fd);
	}
	if (c->in_fd >= 0)
		close(c->in_fd);
	md__rxbuf_free(&c->in);
	for (unsigned i = 0; i < c->olen; i++)
		free(c->owed[(c->ohead + i) % MD_CLIENT_OWED].slots);
	for (size_t i = 0; i < c->nback; i++)
		free(c->back[i].slots);
	free(c->back);
	free(c);
}

int md__client_fd(const struct md__client *c)
{
	return c->fd;
}

int md__client_alive(const struct md__client *c)
{
	return !c->dead;
}

void md__client_set_timeout(struct md__client *c, int ms)
{
	if (ms > 0)
		c->timeout_ms = ms;
}

void md__client_set_quiet(struct md__client *c, int quiet)
{
	c->quiet = quiet;
}

const char *md__client_refusal(const struct md__client *c)
{
	return c->refusal;
}

/* The pool is what the protocol promises: a read-only descriptor of a
 * regular file sealed against shrinking, since a guest page mapped from a
 * slot cut off would raise SIGBUS in the VMM, and one we could write would
 * be other guests' pages. */
static int pool_fd_valid(int fd)
{
	struct stat st;
	int flags = fcntl(fd, F_GETFL), seals = fcntl(fd, F_GET_SEALS);
	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flags >= 0 &&
	       (flags & O_ACCMODE) == O_RDONLY && seals >= 0 && (seals & F_SEAL_SHRINK);
}

int md__client_hello(struct md__client *c, const char *domain, uint32_t flags,
		     struct md__msg_welcome *welcome, int *pool_fd)
{
	struct md__msg m = { .hdr.type = MD_MSG_HELLO };
	size_t dl = domain ? strlen(domain) : 0;
	int fd = -1, err;

	*pool_fd = -1;
	if (!md__domain_valid(domain ? domain : "", dl))
		return -EINVAL;
	m.u.hello.pid = (uint32_t)getpid();
	m.u.hello.flags = flags;
	if (dl)
		memcpy(m.u.hello.domain, domain, dl);
	err = call(c, &m, &fd);
	if (!err && fd < 0)
		err = broken(c);	/* a WELCOME without its pool */
	if (!err && !pool_fd_valid(fd)) {
		md__log_once(71, "memdedupd sent a pool that is not a read-only file sealed "
			     "against shrinking: not using it");
		err = kill_conn(c, -EPROTO);	/* said above */
	}
	if (err) {
		if (fd >= 0)
			close(fd);
		return err;
	}
	*welcome = c->msg.u.welcome;
	*pool_fd = fd;
	c->hello_flags = flags;
	return 0;
}

uint32_t md__client_hello_flags(const struct md__client *c)
{
	return c->hello_flags;
}

int md__client_lookup(struct md__client *c, const uint64_t *hash, const uint64_t *addr,
		      uint32_t n, uint32_t *slot1)
{
	return md__client_lookup_tagged(c, hash, addr, NULL, n, slot1);
}

int md__client_lookup_tagged(struct md__client *c, const uint64_t *hash, const uint64_t *addr,
			     const uint64_t *tag, uint32_t n, uint32_t *slot1)
{
	struct md__msg *m;
	int err;
	if (n == 0 || n > MD_LOOKUP_MAX)
		return -EINVAL;
	m = malloc(sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->hdr.type = MD_MSG_LOOKUP;
	m->u.lookup.n = n;
	memcpy(m->u.lookup.hash, hash, n * sizeof(*hash));
	if (addr)
		memcpy(m->u.lookup.addr, addr, n * sizeof(*addr));
	else
		memset(m->u.lookup.addr, 0, n * sizeof(*addr));
	if (tag)
		memcpy(m->u.lookup.tag, tag, n * sizeof(*tag));
	else
		memset(m->u.lookup.tag, 0, n * sizeof(*tag));
	err = call(c, m, NULL);
	free(m);
	if (err)
		return err;
	if (c->msg.u.lookup_r.n != n)
		return broken(c);
	memcpy(slot1, c->msg.u.lookup_r.slot1, n * sizeof(*slot1));
	return 0;
}

int md__client_publish(struct md__client *c, const uint64_t *hash, const void *pages,
		       uint32_t n, uint32_t *first_slot)
{
	struct md__msg *m;
	int err;
	if (n == 0 || n > MD_PUBLISH_MAX)
		return -EINVAL;
	m = malloc(sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->hdr.type = MD_MSG_PUBLISH;
	m->u.publish.n = n;
	memcpy(m->u.publish.hash, hash, n * sizeof(*hash));
	m->u.publish.pages = pages;
	err = call(c, m, NULL);
	free(m);
	if (err)
		return err;
	if (c->msg.u.publish_r.n != n)
		return broken(c);
	*first_slot = c->msg.u.publish_r.first_slot;
	return 0;
}

_Static_assert(2 * MD_PUBLISH_EACH_MAX <= 1024, "a batch's iovecs fit in one sendmsg (IOV_MAX)");

int md__client_publish_each(struct md__client *c, const uint64_t *hash, const void *const *pages,
			    uint32_t n, uint32_t *slot, int *status)
{
	uint32_t seq[MD_PUBLISH_EACH_MAX];
	unsigned char head[MD_PUBLISH_EACH_MAX][MD_PUBLISH1_HEAD];
	struct iovec iov[2 * MD_PUBLISH_EACH_MAX];
	int err = 0;

	if (n == 0 || n > MD_PUBLISH_EACH_MAX)
		return -EINVAL;
	err = ready(c);
	if (err)
		return err;
	/* Each page goes from where it is, after its head: a copy of every
	 * page into one buffer cost a megabyte held by the allocator, and a
	 * pass over each page. */
	for (uint32_t i = 0; i < n; i++) {
		md__msg_publish1_head(head[i], seq[i] = next_seq(c), hash[i]);
		iov[2 * i] = (struct iovec){ head[i], MD_PUBLISH1_HEAD };
		iov[2 * i + 1] = (struct iovec){ (void *)pages[i], MD_MSG_PAGE };
	}
	/* All the requests in one send, then the replies, which the daemon
	 * sends in order: one round trip (a wake-up of each side) for the
	 * lot. */
	int64_t deadline = now_ms() + c->timeout_ms;
	int unsent = send_iov(c, iov, 2 * (size_t)n, deadline);
	/* A send that failed may have sent the first requests whole, and
	 * their replies may have come before the connection went: they are
	 * read all the same, within the same deadline. */
	uint32_t got = 0;
	for (; got < n; got++) {
		err = await_reply(c, seq[got], deadline, NULL);
		if (err)
			break;
		if (c->msg.hdr.type == MD_MSG_ERROR) {
			status[got] = peer_error(c->msg.u.text.status);
		} else if (c->msg.hdr.type != MD_MSG_PUBLISH_R || c->msg.u.publish_r.n != 1) {
			err = broken(c);
			break;
		} else {
			status[got] = 0;
			slot[got] = c->msg.u.publish_r.first_slot;
		}
	}
	if (!err)
		err = unsent;
	if (err) {
		/* The caller takes none of them, whatever failed: what came
		 * goes back (queued if the connection went, for the next one
		 * to this daemon), what is to come is settled when it comes. */
		for (uint32_t j = 0; j < got; j++)
			if (!status[j])
				give_back(c, &slot[j], 1, 0);
		for (uint32_t j = got; err == -ETIMEDOUT && j < n && !c->dead; j++)
			timed_out(c, seq[j], MD_MSG_PUBLISH, NULL, 1);
	}
	return err;
}

int md__client_ref(struct md__client *c, const uint32_t *slots, uint32_t n, int delta)
{
	struct md__msg *m;
	int err;
	if (n == 0 || n > MD_REF_MAX || delta == 0)
		return -EINVAL;
	m = malloc(sizeof(*m));
	if (!m)	/* an UNREF waits its turn, as one not sent (below) */
		return delta < 0 ? give_back(c, slots, n, 0) : -ENOMEM;
	m->hdr.type = delta > 0 ? MD_MSG_REF : MD_MSG_UNREF;
	m->hdr.seq = 0;	/* stays 0 if call() fails before it sends */
	m->u.refs.n = n;
	memcpy(m->u.refs.slot, slots, n * sizeof(*slots));
	err = call(c, m, NULL);
	uint32_t seq = m->hdr.seq;
	free(m);
	/* An UNREF not sent whole never reached the daemon (it drops a
	 * message cut short), and the page it held is gone from the caller
	 * already: it waits its turn, queued, rather than be lost. Behind,
	 * it goes when the daemon catches up; on a connection that went,
	 * with the next one to the same daemon (md__client_take_back). */
	if (err && delta < 0 && (!seq || seq != c->written)) {
		int queued = give_back(c, slots, n, 0);
		return c->dead ? err : queued;
	}
	/* An UNREF sent whole is done: the daemon applies it when it gets to
	 * it (a refusal is split when its late ACK comes). Had it failed, a
	 * caller's retry would drop the references twice. */
	if (err == -ETIMEDOUT && delta < 0 && !c->dead)
		return 0;
	return err ? err : ack_status(c);
}

int md__client_report(struct md__client *c, const uint64_t *counters, uint32_t n)
{
	struct md__msg *m;
	int err;
	if (n > MD_REPORT_MAX)
		return -EINVAL;
	m = malloc(sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->hdr.type = MD_MSG_REPORT;
	m->u.report.n = n;
	if (n)
		memcpy(m->u.report.counters, counters, n * sizeof(*counters));
	err = call(c, m, NULL);
	free(m);
	return err ? err : ack_status(c);
}

size_t md__client_back_slots(const struct md__client *c)
{
	return c->back_slots;
}

unsigned md__client_late(const struct md__client *c)
{
	return c->nlate;
}

int md__client_take_back(struct md__client *c, uint32_t **slots, size_t *n)
{
	*slots = NULL;
	*n = 0;
	if (!c->back_slots)
		return 0;
	uint32_t *all = malloc(c->back_slots * sizeof(*all));
	if (!all)
		return -ENOMEM;
	for (size_t i = 0; i < c->nback; i++) {
		memcpy(all + *n, c->back[i].slots, c->back[i].n * sizeof(*all));
		*n += c->back[i].n;
		free(c->back[i].slots);
	}
	c->nback = 0;
	c->back_slots = 0;
	*slots = all;
	return 0;
}

int md__client_give_back(struct md__client *c, const uint32_t *slots, size_t n)
{
	/* An UNREF carries at most MD_REF_MAX slots. */
	for (size_t k = 0; k < n; k += MD_REF_MAX) {
		int err = give_back(c, slots + k, (uint32_t)(n - k < MD_REF_MAX ? n - k : MD_REF_MAX), 0);
		if (err)
			return err;
	}
	return 0;
}

/* Sends d; -ETIMEDOUT before sending (the daemon is behind), as call. */
static int send_done(struct md__client *c, const struct md__msg_control_done *d, int *sent)
{
	struct md__msg *m = malloc(sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->hdr.type = MD_MSG_CONTROL_DONE;
	m->hdr.seq = 0;	/* stays 0 if call() fails before it sends */
	m->u.control_done = *d;
	int err = call(c, m, NULL);
	*sent = m->hdr.seq != 0;
	free(m);
	/* Sent whole, a late ACK is only late: the daemon has it. */
	if (err == -ETIMEDOUT && *sent && !c->dead)
		return 0;
	return err ? err : ack_status(c);
}

/* The CONTROL_DONEs kept, in order, while the daemon keeps up. */
static int send_dones(struct md__client *c)
{
	while (c->ndone) {
		int sent, err = send_done(c, &c->done[0], &sent);
		if (err == -ETIMEDOUT && !sent)
			return err;
		memmove(&c->done[0], &c->done[1], --c->ndone * sizeof(c->done[0]));
		if (err == -ENOTCONN)
			return err;
	}
	return 0;
}

int md__client_control_done(struct md__client *c, uint32_t token, int status, const char *why)
{
	struct md__msg_control_done d;
	if (status > 0 || status < -4095)
		return -EINVAL;
	d.token = token;
	d.result.status = status;
	char *t = d.result.text;
	snprintf(t, sizeof(d.result.text), "%s", why ? why : "");
	/* strerror() in the VMM's locale may not be ASCII: it would not
	 * encode, and the CLI would wait in vain. */
	for (; *t; t++)
		if ((*t < ' ' && *t != '\t') || (unsigned char)*t > '~')
			*t = '?';
	/* Behind a late reply: kept, and sent once the daemon caught up.
	 * Dropped, the CLI waited its minute for an outcome the agent had. */
	int err = send_dones(c), sent = 0;
	if (!err)
		err = send_done(c, &d, &sent);
	if (err == -ETIMEDOUT && !sent && !c->dead) {
		if (c->ndone == MD_CLIENT_DONE_MAX)
			return -ENOBUFS;
		c->done[c->ndone++] = d;
		return 0;
	}
	return err;
}

int md__client_open(struct md__client **cp, const char *socket_path, const char *domain, uint32_t flags,
		    struct md__msg_welcome *welcome, int *pool_fd)
{
	struct md__client *c;
	int err = md__client_connect(&c, socket_path);
	if (err)
		return err;
	err = md__client_hello(c, domain, flags, welcome, pool_fd);
	if (err == -EBADMSG && flags) {
		md__client_free(c);
		err = md__client_connect(&c, socket_path);
		if (err)
			return err;
		err = md__client_hello(c, domain, 0, welcome, pool_fd);
	}
	if (err) {
		md__client_free(c);
		return err;
	}
	*cp = c;
	return 0;
}

int md__client_reads(struct md__client *c, const struct md__read_run *run, uint32_t n)
{
	struct md__msg *m;
	int err;
	if (n == 0 || n > MD_READS_MAX)
		return -EINVAL;
	m = malloc(sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->hdr.type = MD_MSG_READS;
	m->u.reads.n = n;
	memcpy(m->u.reads.run, run, n * sizeof(*run));
	err = call(c, m, NULL);
	free(m);
	return err ? err : ack_status(c);
}

int md__client_request(struct md__client *c, unsigned type, const void *payload, uint32_t len,
		       void *reply, uint32_t *reply_len, unsigned *reply_type)
{
	if (type == 0 || type >= MD_MSG_TYPE_END || len > md__msg_max_len(type))
		return -EINVAL;
	unsigned char *buf = malloc(MD_MSG_HDR_SIZE + (size_t)len);
	if (!buf)
		return -ENOMEM;
	int err = ready(c);
	if (err)
		goto free_buf;
	uint32_t seq = next_seq(c);
	md__msg_hdr_encode(buf, type, len, seq);
	if (len)
		memcpy(buf + MD_MSG_HDR_SIZE, payload, len);
	/* A REF's grants are not followed from here: it goes if late. */
	c->notices = type == MD_MSG_CONTROL;
	err = transact(c, buf, MD_MSG_HDR_SIZE + (size_t)len, type, seq, NULL, NULL, 0);
	c->notices = 0;
free_buf:
	free(buf);
	if (err)
		return err;
	uint32_t got = c->msg.hdr.length;
	if (reply_type)
		*reply_type = c->msg.hdr.type;
	if (got > *reply_len)
		return -EMSGSIZE;
	memcpy(reply, c->rx + MD_MSG_HDR_SIZE, got);
	*reply_len = got;
	return 0;
}

int md__client_next_control(struct md__client *c, struct md__msg_control *ctl)
{
	if (!c->qlen) {
		int err = pump(c);
		if (!err && !c->nlate && c->ndone)
			err = send_dones(c);
		if (!err && !c->nlate && c->nback)
			err = send_back(c, 8);	/* an idle agent gives back too, a little at a time */
		if (err)
			return err;
		if (!c->qlen)
			return -EAGAIN;
	}
	*ctl = c->q[c->qhead];
	c->qhead = (c->qhead + 1) % MD_CLIENT_QUEUE;
	c->qlen--;
	return 0;
}

int md__daemon_probe(const char *socket_path)
{
	struct sockaddr_un sa;
	char path[sizeof(sa.sun_path) + 1];
	int err = daemon_address(socket_path, &sa, path, sizeof(path));
	if (err)
		return err;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* A full backlog (EAGAIN) is a daemon too, a busy one. */
	while ((err = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0) == -EINTR)
		;
	if (!err)
		err = check_daemon(fd, path);
	close(fd);
	return err == -EAGAIN ? 0 : err;
}

int md__daemon_alive(const char *socket_path)
{
	/* Not a client's connect, which waits when the backlog is full and
	 * then fails: a busy daemon was taken for none, and memdedup run
	 * started another (which found the socket held) and said merging
	 * stayed within the process. */
	return md__daemon_probe(socket_path) == 0;
}

/* What of the caller's environment memdedupd started on demand is given:
 * where it lives and its own settings. Not the rest: the caller's
 * LD_PRELOAD, or the agent's settings meant for the VMM, would configure
 * the daemon every later VM of the user (of every user, root's) shares. */
static const char *const daemon_env[] = {
	"MEMDEDUP_SOCKET=", "MEMDEDUP_RUN_DIR=", "XDG_RUNTIME_DIR=",
	"MEMDEDUP_STATUS_KB_PER_S=", "MEMDEDUP_CONTROL_WAIT_MS=",
	"PATH=", "TZ=", "LD_LIBRARY_PATH=",	/* its libraries (jansson) where they are */
	"ASAN_OPTIONS=", "UBSAN_OPTIONS=", "LSAN_OPTIONS=", "TSAN_OPTIONS=", "MSAN_OPTIONS=",
};

int md__daemon_ensure(const char *daemon_exe, void (*place)(pid_t pid))
{
	int go[2] = { -1, -1 };
	if (md__daemon_alive(NULL))
		return 0;
	/* Made before the fork: between it and the exec, nothing allocates. */
	char *envp[32];
	size_t nenv = 0;
	for (char **e = environ; e && *e && nenv < sizeof(envp) / sizeof(envp[0]) - 2; e++)
		for (size_t k = 0; k < sizeof(daemon_env) / sizeof(daemon_env[0]); k++)
			if (strncmp(*e, daemon_env[k], strlen(daemon_env[k])) == 0) {
				envp[nenv++] = *e;
				break;
			}
	/* VMMs started together each start one: the losers stay quiet (a
	 * daemon started by hand still says another holds its place). */
	envp[nenv++] = (char *)MD_D_ON_DEMAND_ENV "=1";
	envp[nenv] = NULL;
	if (place && pipe2(go, O_CLOEXEC) != 0)
		return -errno;
	/* The exec's errno comes back through this (closed on exec): an exit
	 * of 127 without one is the dynamic loader's (a library missing). */
	int said[2];
	if (pipe2(said, O_CLOEXEC) != 0) {
		int err = -errno;
		if (place) {
			close(go[0]);
			close(go[1]);
		}
		return err;
	}
	pid_t pid = fork();
	if (pid < 0) {
		int err = -errno;
		if (place) {
			close(go[0]);
			close(go[1]);
		}
		close(said[0]);
		close(said[1]);
		return err;
	}
	if (pid == 0) {
		/* Only async-signal-safe calls between fork and exec. memdedupd
		 * daemonizes itself and closes the descriptors it inherited. */
		char *const argv[] = { (char *)daemon_exe, NULL };
		if (place) {
			/* Placed before it runs: what it forks and allocates
			 * then is where place put it. EOF: placed, or the
			 * caller is gone. */
			char c;
			close(go[1]);
			while (read(go[0], &c, 1) < 0 && errno == EINTR)
				;
		}
		close(said[0]);
		execve(daemon_exe, argv, envp);
		int e = errno;
		ssize_t w = write(said[1], &e, sizeof(e));
		(void)w;
		_exit(127);
	}
	close(said[1]);
	if (place) {
		close(go[0]);
		place(pid);
		close(go[1]);
	}
	/* memdedupd's first process returns once it listens (or failed). */
	/* With SIGCHLD ignored (inherited through exec) the child is reaped
	 * for us and waitpid says ECHILD: its status is unknown, taken as a
	 * success, and the loop below asks the daemon itself. */
	int st = 0, exec_err = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	ssize_t got;
	while ((got = read(said[0], &exec_err, sizeof(exec_err))) < 0 && errno == EINTR)
		;
	close(said[0]);
	if (got == (ssize_t)sizeof(exec_err) && exec_err > 0)
		return -exec_err;	/* not there, not executable... */
	if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
		return -ELIBACC;	/* run, but its libraries not found */
	int64_t deadline = now_ms() + 2000;
	for (;;) {
		if (md__daemon_alive(NULL))
			return 0;
		/* It failed; one that found another starting (which writes
		 * its pid once it listens) waits for it, up to the deadline. */
		if (!WIFEXITED(st) || (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != MD_D_EXIT_HELD))
			return -EIO;
		if (now_ms() >= deadline)
			return -ETIMEDOUT;
		struct timespec ts = { 0, 20 * 1000000 };
		nanosleep(&ts, NULL);
	}
}

size_t md__client_take_candidates(struct md__client *c, uint64_t *addr, size_t max)
{
	size_t n = 0;
	pump(c);	/* a failure shows in the next request */
	for (; n < max && c->clen; n++) {
		addr[n] = c->cand[c->chead];
		c->chead = (c->chead + 1) % MD_CLIENT_CANDIDATES;
		c->clen--;
	}
	return n;
}

size_t md__client_candidates(const struct md__client *c)
{
	return c->clen;
}

uint32_t md__client_share(const struct md__client *c)
{
	return c->share;
}
