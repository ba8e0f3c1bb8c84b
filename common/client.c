/*
 * client.c - a connection to memdedupd (see client.h).
 *
 * The socket stays blocking for connect, but every send and receive uses
 * MSG_DONTWAIT after a poll bounded by the request's deadline: that is how
 * a request gets one overall timeout however the bytes trickle in. Each
 * receive takes whatever is waiting into a buffer (common/rxbuf.c), whole
 * messages are taken from it: a batch of replies costs one call. A
 * message cut short by a timeout or an error leaves the stream at an
 * unknown place, so any such failure marks the connection dead.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

struct md__client {
	int fd;
	int dead;                  /* the stream is unusable: -ENOTCONN from now on */
	int timeout_ms;
	uint32_t seq;
	unsigned qhead, qlen;      /* ring of unsolicited CONTROLs */
	struct md__msg_control q[MD_CLIENT_QUEUE];
	unsigned chead, clen;      /* ring of CANDIDATES addresses */
	uint64_t cand[MD_CLIENT_CANDIDATES];
	uint32_t share;            /* the last SHARE; 0: none came */
	struct md__rxbuf in;       /* read ahead of what was handled */
	int in_fd;                 /* a descriptor that came with it, or -1 */
	const unsigned char *rx;   /* header + payload of the last message, in in */
	struct md__msg msg;        /* decoded reply; here, not on a VMM thread's stack */
};

int md__daemon_socket_path(const char *path, char *buf, size_t size)
{
	const char *env = getenv("MEMDEDUP_SOCKET");
	char dir[256];
	int n, err;
	if (path)
		n = snprintf(buf, size, "%s", path);
	else if (env && *env)
		n = snprintf(buf, size, "%s", env);
	else {
		err = md__run_dir(NULL, dir, sizeof(dir));
		if (err)
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
			int err = wait_fd(c, POLLIN, deadline);
			if (err)
				return kill_conn(c, err);
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
			return kill_conn(c, -EPROTO);
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
		return kill_conn(c, -EPROTO);
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

/* A message that is not a reply: only CONTROL, CANDIDATES and SHARE with
 * seq 0 may come so, and an ERROR when the daemon refused the connection
 * (too many) before any request. */
static int unsolicited(struct md__client *c)
{
	if (c->msg.hdr.seq != 0)
		return kill_conn(c, -EPROTO);
	switch (c->msg.hdr.type) {
	case MD_MSG_ERROR:
		md__log("memdedupd refused the connection: %s", c->msg.u.text.text);
		return kill_conn(c, c->msg.u.text.status ? c->msg.u.text.status : -EPROTO);
	case MD_MSG_CONTROL:
		queue_control(c, &c->msg.u.control);
		return 0;
	case MD_MSG_CANDIDATES:
		queue_candidates(c, &c->msg.u.candidates);
		return 0;
	case MD_MSG_SHARE:
		c->share = c->msg.u.share.agents;
		return 0;
	}
	return kill_conn(c, -EPROTO);
}

/* Reads messages until the reply with seq, left decoded in c->msg (raw in
 * c->rx); the unsolicited ones met on the way are queued. */
static int await_reply(struct md__client *c, uint32_t seq, int64_t deadline, int *fd)
{
	for (;;) {
		int err = recv_msg(c, deadline, fd, 1);
		if (err)
			return err;
		if (c->msg.hdr.seq == seq)
			return 0;
		err = unsolicited(c);
		if (err)
			return err;
	}
}

/* Sends len bytes of an encoded request with seq, and reads its reply. */
static int transact(struct md__client *c, const void *req, size_t len, uint32_t seq, int *fd)
{
	int64_t deadline = now_ms() + c->timeout_ms;
	int err;
	if (c->dead)
		return -ENOTCONN;
	err = send_all(c, req, len, deadline);
	/* A daemon that refused us said why before it hung up. */
	if (err == -ENOTCONN && recv_msg(c, 0, NULL, 0) == 0 && c->msg.hdr.type == MD_MSG_ERROR)
		return unsolicited(c);
	if (err)
		return err;
	/* After an ERROR the daemon may close: the next call will tell. */
	return await_reply(c, seq, deadline, fd);
}

static uint32_t next_seq(struct md__client *c)
{
	if (++c->seq == 0)	/* 0 marks unsolicited messages */
		c->seq = 1;
	return c->seq;
}

/* Encodes m with a fresh seq and runs it; expects a reply of type want
 * (an ERROR gives its status). */
static int call(struct md__client *c, struct md__msg *m, unsigned want, int *fd)
{
	unsigned char small[8192], *buf = small;
	size_t len = md__msg_encoded_len(m);
	int err;

	if (len == 0)
		return -EINVAL;
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
	err = transact(c, buf, (size_t)n, m->hdr.seq, fd);
	if (err)
		goto free_buf;
	if (c->msg.hdr.type == MD_MSG_ERROR)
		err = c->msg.u.text.status ? c->msg.u.text.status : -EPROTO;
	else if (c->msg.hdr.type != want)
		err = kill_conn(c, -EPROTO);
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
		md__log("the daemon at %s runs as uid %u, neither root nor us (uid %u): not using it",
			path, (unsigned)cr.uid, (unsigned)geteuid());
		return -EPERM;
	}
	return 0;
}

int md__client_connect(struct md__client **cp, const char *socket_path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char path[sizeof(sa.sun_path) + 1];
	int err;

	*cp = NULL;
	err = md__daemon_socket_path(socket_path, path, sizeof(path));
	if (err)
		return err;
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path));
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
	if (err)
		goto close_fd;
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
	close(c->fd);
	if (c->in_fd >= 0)
		close(c->in_fd);
	md__rxbuf_free(&c->in);
	free(c);
}

int md__client_fd(const struct md__client *c)
{
	return c->fd;
}

void md__client_set_timeout(struct md__client *c, int ms)
{
	if (ms > 0)
		c->timeout_ms = ms;
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
	err = call(c, &m, MD_MSG_WELCOME, &fd);
	if (!err && fd < 0)
		err = kill_conn(c, -EPROTO);	/* a WELCOME without its pool */
	if (!err && !pool_fd_valid(fd)) {
		md__log_once(71, "memdedupd sent a pool that is not a read-only file sealed "
			     "against shrinking: not using it");
		err = kill_conn(c, -EPROTO);
	}
	if (err) {
		if (fd >= 0)
			close(fd);
		return err;
	}
	*welcome = c->msg.u.welcome;
	*pool_fd = fd;
	return 0;
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
	err = call(c, m, MD_MSG_LOOKUP_R, NULL);
	free(m);
	if (err)
		return err;
	if (c->msg.u.lookup_r.n != n)
		return kill_conn(c, -EPROTO);
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
	err = call(c, m, MD_MSG_PUBLISH_R, NULL);
	free(m);
	if (err)
		return err;
	if (c->msg.u.publish_r.n != n)
		return kill_conn(c, -EPROTO);
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
	if (c->dead)
		return -ENOTCONN;
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
	err = send_iov(c, iov, 2 * (size_t)n, deadline);
	for (uint32_t i = 0; i < n && !err; i++) {
		err = await_reply(c, seq[i], deadline, NULL);
		if (err)
			break;
		if (c->msg.hdr.type == MD_MSG_ERROR) {
			status[i] = c->msg.u.text.status ? c->msg.u.text.status : -EPROTO;
		} else if (c->msg.hdr.type != MD_MSG_PUBLISH_R || c->msg.u.publish_r.n != 1) {
			err = kill_conn(c, -EPROTO);
		} else {
			status[i] = 0;
			slot[i] = c->msg.u.publish_r.first_slot;
		}
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
	if (!m)
		return -ENOMEM;
	m->hdr.type = delta > 0 ? MD_MSG_REF : MD_MSG_UNREF;
	m->u.refs.n = n;
	memcpy(m->u.refs.slot, slots, n * sizeof(*slots));
	err = call(c, m, MD_MSG_ACK, NULL);
	free(m);
	return err ? err : c->msg.u.ack.status;
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
	err = call(c, m, MD_MSG_ACK, NULL);
	free(m);
	return err ? err : c->msg.u.ack.status;
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
	err = call(c, m, MD_MSG_ACK, NULL);
	free(m);
	return err ? err : c->msg.u.ack.status;
}

int md__client_request(struct md__client *c, unsigned type, const void *payload, uint32_t len,
		       void *reply, uint32_t *reply_len, unsigned *reply_type)
{
	if (type == 0 || type >= MD_MSG_TYPE_END || len > md__msg_max_len(type))
		return -EINVAL;
	unsigned char *buf = malloc(MD_MSG_HDR_SIZE + (size_t)len);
	if (!buf)
		return -ENOMEM;
	uint32_t seq = next_seq(c);
	md__msg_hdr_encode(buf, type, len, seq);
	if (len)
		memcpy(buf + MD_MSG_HDR_SIZE, payload, len);
	int err = transact(c, buf, MD_MSG_HDR_SIZE + (size_t)len, seq, NULL);
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

/* Handles every whole message waiting now (the daemon writes them whole)
 * into the queues. 0, or -errno if the connection failed. */
static int pump(struct md__client *c)
{
	for (;;) {
		if (c->dead)
			return -ENOTCONN;
		int err = recv_msg(c, 0, NULL, 0);
		if (err == -EAGAIN)
			return 0;
		if (err)
			return err;
		err = unsolicited(c);
		if (err)
			return err;
	}
}

int md__client_next_control(struct md__client *c, struct md__msg_control *ctl)
{
	if (!c->qlen) {
		int err = pump(c);
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

int md__daemon_alive(const char *socket_path)
{
	struct md__client *c;
	if (md__client_connect(&c, socket_path))
		return 0;
	md__client_free(c);
	return 1;
}

int md__daemon_ensure(const char *daemon_exe)
{
	if (md__daemon_alive(NULL))
		return 0;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/* Only async-signal-safe calls between fork and exec. memdedupd
		 * daemonizes itself and closes the descriptors it inherited. */
		char *const argv[] = { (char *)daemon_exe, NULL };
		execv(daemon_exe, argv);
		_exit(127);
	}
	/* memdedupd's first process returns once it listens (or failed). */
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
		return -ENOENT;		/* no such program */
	int64_t deadline = now_ms() + 2000;
	for (;;) {
		if (md__daemon_alive(NULL))
			return 0;
		/* It failed (another one starting at the same time may still
		 * come up: the loop gave it its chance once). */
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
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

uint32_t md__client_share(const struct md__client *c)
{
	return c->share;
}
