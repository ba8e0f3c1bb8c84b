/*
 * server.c - the loop: one epoll set holding the listening socket, a
 * signalfd, every connection and every agent's pidfd.
 *
 * Connections are non-blocking. Each receives one message at a time into
 * its own buffer: the 16-byte header first, validated (magic, version,
 * type, length within the type's maximum) before the buffer grows to hold
 * the payload, so a peer decides nothing about our allocations beyond
 * MD_MSG_MAX. Replies are queued and flushed as the socket takes them; a
 * peer with a lot unsent is not read until it catches up (backpressure).
 *
 * A malformed message gets an ERROR and the connection closes once the
 * ERROR is out; the agent record behind it stays while its process lives
 * (see agent.c). Nothing a peer sends can stop the loop.
 */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "sys.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define MD_D_BATCH 16   /* messages per connection per wake-up: fairness */

/* Into a queue of deferred connections, at its end (once): starved, stopped
 * before it was served at all in this wake-up (its user's budget spent),
 * else having had its share. The starved are served first in the next. */
static void defer_conn(struct md__daemon *d, struct md__conn *c, int starved)
{
	if (c->deferred)
		return;
	struct md__defer_queue *q = &d->defer[starved];
	if (!q->head)
		q->tail = &q->head;
	c->deferred = 1 + starved;
	c->deferred_round = d->round;
	c->defer_next = NULL;
	c->defer_pprev = q->tail;
	*q->tail = c;
	q->tail = &c->defer_next;
}

static void undefer_conn(struct md__daemon *d, struct md__conn *c)
{
	if (!c->deferred)
		return;
	struct md__defer_queue *q = &d->defer[c->deferred - 1];
	c->deferred = 0;
	*c->defer_pprev = c->defer_next;
	if (c->defer_next)
		c->defer_next->defer_pprev = c->defer_pprev;
	else
		q->tail = c->defer_pprev;
}

/* The work u's connections did in this wake-up. */
static unsigned *user_spent(struct md__daemon *d, struct md__user *u)
{
	if (u->round != d->round) {
		u->round = d->round;
		u->spent = 0;
	}
	return &u->spent;
}

int md__ep_add(struct md__daemon *d, int fd, struct md__ep *ep, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = ep };
	return epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* What is at the socket path: 0 nothing, 1 a socket nobody answers on
 * (stale: ours to remove), else -EISDIR, -ENOTSOCK (a file, a link: not
 * ours to touch), -EADDRINUSE (a listener answers) or another -errno. */
static int socket_stale(const struct sockaddr_un *sa, struct stat *st)
{
	if (lstat(sa->sun_path, st) != 0)
		return errno == ENOENT ? 0 : -errno;
	if (S_ISDIR(st->st_mode))
		return -EISDIR;
	if (!S_ISSOCK(st->st_mode))
		return -ENOTSOCK;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	int e = errno;
	close(fd);
	if (r == 0 || e == EAGAIN || e == EINPROGRESS)
		return -EADDRINUSE;	/* a listener, its backlog full or not */
	return e == ECONNREFUSED ? 1 : -e;
}

int md__server_listen(struct md__daemon *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st, again;
	int err;

	if (strlen(d->socket_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, d->socket_path, strlen(d->socket_path));
	err = socket_stale(&sa, &st);
	if (err < 0)
		return err;
	/* Removed only if it is still the socket that was found stale. */
	if (err == 1 && lstat(d->socket_path, &again) == 0 && again.st_ino == st.st_ino &&
	    again.st_dev == st.st_dev && S_ISSOCK(again.st_mode))
		unlink(d->socket_path);
	d->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (d->lfd < 0)
		return -errno;
	if (bind(d->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = -errno;
		goto close_lfd;
	}
	/* Anyone may connect: peers are identified by SO_PEERCRED and get
	 * only their own uid's pools. */
	if (chmod(d->socket_path, 0666) < 0 || listen(d->lfd, 128) < 0) {
		err = -errno;
		goto unlink_socket;
	}
	return 0;

unlink_socket:
	unlink(d->socket_path);
close_lfd:
	close(d->lfd);
	d->lfd = -1;
	return err;
}

static void set_events(struct md__daemon *d, struct md__conn *c, uint32_t events)
{
	if (events == c->events)
		return;
	struct epoll_event ev = { .events = events, .data.ptr = &c->ep };
	epoll_ctl(d->epfd, EPOLL_CTL_MOD, c->fd, &ev);
	c->events = events;
}

/* Whether requests wait in the connection's buffer that read_conn left
 * there while too much was unsent, and there is room now to answer them
 * (a header read_conn would refuse counts too). */
static int requests_resumable(const struct md__conn *c)
{
	struct md__msg_hdr h;
	size_t need;
	return !c->closing && !c->eof && !c->awaiting && c->out_len - c->out_head < MD_D_OUT_PAUSE &&
	       md__rxbuf_next(&c->in, &h, &need) != 0;
}

/* What the connection waits for now: input unless closing or backed up,
 * output while something is queued. */
static void update_events(struct md__daemon *d, struct md__conn *c)
{
	uint32_t ev = 0;
	size_t pending = c->out_len - c->out_head;
	if (!c->closing && !c->eof && !c->awaiting && pending < MD_D_OUT_PAUSE)
		ev |= EPOLLIN;
	/* Closing with nothing left: the writable event closes it. Requests
	 * left buffered: the socket being writable wakes us to answer them,
	 * as no more input may come to. */
	if (pending || c->closing || (c->eof && !c->awaiting) || requests_resumable(c))
		ev |= EPOLLOUT;
	set_events(d, c, ev);
}

void md__ep_forget(struct md__daemon *d, struct md__ep *ep, int fd)
{
	/* Out of the set before the close: a close takes an entry out only
	 * with the last descriptor of its file, and one held anywhere else
	 * (a child between its fork and its exec) would report events for
	 * freed memory. */
	epoll_ctl(d->epfd, EPOLL_CTL_DEL, fd, NULL);
	/* Events of this wake-up not handled yet must not reach freed memory. */
	for (int i = 0; i < d->nev; i++)
		if (d->evs[i].data.ptr == ep)
			d->evs[i].data.ptr = NULL;
}

/* The tunables are for all scanning agents together, as KSM's are for the
 * whole host: split first among the users with agents scanning, then among
 * each user's agents (one user's hundreds of idle agents would otherwise
 * slow every other user's to nothing). Whenever an agent's share changes,
 * it is told. Told once a pass of the loop, however many agents came and
 * went in it: a SHARE to every agent for every one would let one user's
 * connections churn load the loop and fill every other user's queues. */
void md__reshare(struct md__daemon *d)
{
	d->share_due = 1;
}

/* Whether a takes a part of the rate: connected, and scanning as far as
 * memdedupd knows: not held paused by its record (a PAUSE or an UNMERGE of
 * it, or the default pause unless a RESUME by pid lifted it for a), nor
 * stopped for good as its last REPORT said. A paused agent's part went
 * unused: of two agents with one paused, the other scanned half the rate
 * set for all (a review: 23,950 pages/s of 50,000). A pause that only the
 * agent knows of (the VMM's) still counts. */
static int agent_scans(const struct md__daemon *d, const struct md__agent *a)
{
	return a->conn && !a->paused && !a->unmerged && (!d->paused || a->resumed_alone) &&
	       !md__agent_stopped(a);
}

/* A scanning agent's user and found_recent, sorted by user; sum: the
 * found_recent of the entries before it (a prefix sum). */
struct scanning {
	uid_t uid;
	uint64_t found, sum;
};

static int scanning_cmp(const void *a, const void *b)
{
	uid_t x = ((const struct scanning *)a)->uid, y = ((const struct scanning *)b)->uid;
	return x < y ? -1 : x > y;
}

/* The entries of the sorted s[0..n) of user uid: [*lo, return). */
static size_t uid_run(const struct scanning *s, size_t n, uid_t uid, size_t *lo)
{
	size_t l = 0, hi = n;
	while (l < hi) {	/* the first entry not below uid */
		size_t mid = l + (hi - l) / 2;
		if (s[mid].uid < uid)
			l = mid + 1;
		else
			hi = mid;
	}
	size_t k = l;
	while (k < n && s[k].uid == uid)
		k++;
	*lo = l;
	return k;
}

/* Units of an agent's equal part: a quarter of them it keeps whatever it
 * finds, the other three quarters go by what the agents of its user found
 * lately, once they found FOUND_MIN. */
#define PART_UNITS 64u
#define FOUND_MIN 256u

/* The part of the rate (in MD_SHARE_ALL) of an agent whose user is one of
 * users, with m scanning agents that found total lately, it found of them.
 * KSM's pages_to_scan is for the host, spent wherever ksmd's walk is; an
 * equal cut left the rate with an agent whose lookups find nothing (a
 * guest reading an image ahead of another: its pages' twins are not there
 * yet) while its peer, whose reads pair with those, fell behind its own
 * reads (docs/benchmarks.md, fifty-seventh session). The parts of a user's
 * agents never add up to more than the user's. */
static uint32_t share_part(uint64_t users, uint64_t m, uint64_t found, uint64_t total)
{
	uint64_t units = PART_UNITS;
	if (m > 1 && total >= FOUND_MIN)
		units = PART_UNITS / 4 +
			(uint64_t)((unsigned __int128)(PART_UNITS - PART_UNITS / 4) * m * found / total);
	uint64_t p = (uint64_t)((unsigned __int128)MD_SHARE_ALL * units / ((unsigned __int128)users * m * PART_UNITS));
	return p ? (uint32_t)p : 1;
}

void md__reweigh(struct md__daemon *d, int64_t now)
{
	int64_t steps = (now - d->weighed_ms) / MD_WEIGH_MS;
	if (steps < 1)
		return;
	d->weighed_ms = now;
	int any = 0;
	for (struct md__agent *a = d->agents; a; a = a->next) {
		uint64_t was = a->found_recent;
		a->found_recent = (steps < 64 ? a->found_recent >> steps : 0) + a->found;
		a->found = 0;
		any |= a->found_recent != 0;
		if (a->found_recent != was)
			md__reshare(d);
	}
	d->weighing = any;
}

static void flush_share(struct md__daemon *d)
{
	if (!d->share_due)
		return;
	size_t n = 0;
	for (struct md__agent *a = d->agents; a; a = a->next)
		n += agent_scans(d, a);
	d->share_due = 0;
	/* Out of memory: every agent an equal part of all (no user's then
	 * more than its agents' share), told now rather than at some later
	 * wake. */
	struct scanning *u = n ? malloc(n * sizeof(*u)) : NULL;
	size_t k = 0, users = 0;
	for (struct md__agent *a = d->agents; a && u; a = a->next)
		if (agent_scans(d, a))
			u[k++] = (struct scanning){ a->uid, a->found_recent, 0 };
	if (u)
		qsort(u, n, sizeof(*u), scanning_cmp);
	for (size_t i = 0; i < n && u; i++) {
		users += i == 0 || u[i].uid != u[i - 1].uid;
		u[i].sum = i ? u[i - 1].sum + u[i - 1].found : 0;
	}
	/* Each agent whose connection was told another number (or none):
	 * by a count alone, one agent leaving and another coming in the
	 * same pass told the newcomer nothing, and it scanned at the rate
	 * set for all agents together. */
	struct md__msg m = { .hdr = { .type = MD_MSG_SHARE } };
	for (struct md__agent *a = d->agents; a; a = a->next) {
		if (!a->conn)
			continue;
		size_t lo = 0, hi = u ? uid_run(u, n, a->uid, &lo) : 0;
		uint64_t mine = hi - lo, part;
		/* One not scanning is told the equal part it would have if it
		 * resumed alone: the RESUME reaches it before the others'
		 * SHAREs, and it does not scan the whole rate meanwhile. */
		if (!agent_scans(d, a))
			part = u ? share_part(users + !mine, mine + 1, 0, 0) : share_part(n + 1, 1, 0, 0);
		else if (u)
			part = share_part(users, mine, a->found_recent, u[hi - 1].sum + u[hi - 1].found - u[lo].sum);
		else
			part = share_part(n, 1, 0, 0);
		m.u.share.part = (uint32_t)part;
		/* Not queued (short of memory): told again in the next
		 * wake-up. A connection dropped meanwhile (-ENOBUFS) goes. */
		if (a->share_sent != m.u.share.part) {
			/* A SHARE is a state: while one is unsent (or anything
			 * else), the next waits, told once the peer caught up,
			 * not one more a pass for another user's churn. */
			if (a->conn->out_len > a->conn->out_head) {
				d->share_due = 1;
				continue;
			}
			int err = md__conn_send(d, a->conn, &m, -1);
			if (!err)
				a->share_sent = m.u.share.part;
			else if (err != -ENOBUFS)
				d->share_due = 1;
		}
	}
	free(u);
}

static uint64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000 + 1;	/* never 0 */
}

static struct md__user *user_find(const struct md__daemon *d, uid_t uid)
{
	struct md__user *u = d->users;
	while (u && u->uid != uid)
		u = u->next;
	return u;
}

/* The record of uid's connections, one more counted; NULL if out of
 * memory. */
static struct md__user *user_get(struct md__daemon *d, uid_t uid)
{
	struct md__user *u = user_find(d, uid);
	if (!u) {
		u = calloc(1, sizeof(*u));
		if (!u)
			return NULL;
		u->uid = uid;
		u->status = (struct md__bucket){ d->status_bytes_per_s, md__now_ms() };
		u->next = d->users;
		d->users = u;
	}
	u->conns++;
	return u;
}

/* The STATUS bytes u may build now (see md__daemon.status_bytes_per_s). */
static int64_t status_refill(const struct md__daemon *d, struct md__user *u)
{
	return md__bucket_refill(&u->status, d->status_bytes_per_s, d->status_bytes_per_s);
}

/* Forgets u once it has no connection and owes no STATUS bytes: 1 if it
 * did. */
static int user_forget(struct md__daemon *d, struct md__user *u)
{
	if (u->conns || status_refill(d, u) < d->status_bytes_per_s)
		return 0;
	struct md__user **pp = &d->users;
	while (*pp != u)
		pp = &(*pp)->next;
	*pp = u->next;
	free(u);
	return 1;
}

static void user_put(struct md__daemon *d, struct md__user *u)
{
	u->conns--;
	if (!user_forget(d, u) && !u->conns)
		d->owing = 1;	/* drop_stalled forgets it once out of debt */
}

/* At most what a peer may have sent ahead: more is not read for this. */
#define UNREFS_LEFT_MAX (16u << 20)

static int is_request(unsigned type);
static int refused_now(const struct md__conn *c, unsigned type, char *why, size_t size);

void md__conn_apply_left(struct md__daemon *d, struct md__conn *c)
{
	/* Not d->msg: the HELLO that takes c over is being handled in it. */
	static struct md__msg m;
	size_t got_bytes = 0;
	if (!c->agent)
		return;
	for (;;) {
		struct md__msg_hdr h;
		size_t need;
		int got = md__rxbuf_next(&c->in, &h, &need);
		if (got < 0)
			return;	/* a bad header: nothing after it is a message */
		/* Nor after one read_conn refuses at its header: no room is
		 * made for its length (a STATUS_R's is a megabyte), and what
		 * follows is no request of the agent's. */
		char why[MD_TEXT_MAX + 1];
		if (c->in.len - c->in.head >= MD_MSG_HDR_SIZE &&
		    (!is_request(h.type) || refused_now(c, h.type, why, sizeof(why))))
			return;
		if (got) {
			int ok = (h.type == MD_MSG_UNREF || h.type == MD_MSG_CONTROL_DONE) &&
				 md__msg_decode(c->in.buf + c->in.head, need, &m) == 0;
			/* Refused whole when one slot is not held (a client may
			 * send one it lost track of): a live connection's ACK
			 * has the client send each alone; here no one hears, so
			 * each goes alone now. */
			if (ok && h.type == MD_MSG_UNREF &&
			    md__agent_unref_later(d, c->agent, m.u.refs.slot, m.u.refs.n) != 0 && m.u.refs.n > 1)
				for (uint32_t i = 0; i < m.u.refs.n; i++)
					md__agent_unref_later(d, c->agent, &m.u.refs.slot[i], 1);
			else if (ok && h.type == MD_MSG_CONTROL_DONE)
				md__control_done(d, c->agent, &m.u.control_done);
			c->in.head += need;
			continue;
		}
		if (got_bytes >= UNREFS_LEFT_MAX || md__rxbuf_room(&c->in, need) != 0)
			return;
		ssize_t r = recv(c->fd, c->in.buf + c->in.len, c->in.cap - c->in.len, MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		c->in.len += (size_t)r;
		got_bytes += (size_t)r;
	}
}

static void conn_close(struct md__daemon *d, struct md__conn *c)
{
	struct md__agent *a = c->agent;
	md__conn_apply_left(d, c);
	md__control_gone(d, c, a ? a->pid : 0);
	c->agent = NULL;
	if (a) {
		md__agent_detach(d, a);
		md__reshare(d);
	}
	md__ep_forget(d, &c->ep, c->fd);
	undefer_conn(d, c);
	*c->pprev = c->next;
	if (c->next)
		c->next->pprev = c->pprev;
	d->nconns--;
	close(c->fd);
	if (c->peer_pidfd >= 0)
		close(c->peer_pidfd);
	if (c->out_fd >= 0)
		close(c->out_fd);
	md__rxbuf_free(&c->in);
	free(c->out);
	c->user->unsent -= c->out_len - c->out_head;
	user_put(d, c->user);
	free(c);
}

/* Tells a peer we will not serve why, and hangs up: an ERROR with seq 0 on
 * a fresh socket (it fits in its buffer whole). */
static void refuse(int fd, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void refuse(int fd, int err, const char *fmt, ...)
{
	struct md__msg m = { .hdr = { .type = MD_MSG_ERROR } };
	unsigned char buf[MD_MSG_HDR_SIZE + 8 + MD_TEXT_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m.u.text.text, sizeof(m.u.text.text), fmt, ap);
	va_end(ap);
	m.u.text.status = err;
	ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
	/* A peer gone first (EPIPE) is common, and any user can make it so in
	 * a loop: a line about peers. */
	if (n > 0 && send(fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		md__dlog_peer("cannot tell a refused peer why: %s", strerror(errno));
	close(fd);
}

static void conn_drop_queue(struct md__daemon *d, struct md__conn *c);

/* Peers that owe bytes too long (a connection that never sends a request,
 * half a message never finished) hold a connection slot of their user and
 * a buffer each: they go. 1 if some peer still owes, so the loop wakes to
 * look again. */
static int drop_stalled(struct md__daemon *d)
{
	uint64_t now = now_ms();
	int owing = 0;
	for (struct md__user *u = d->users, *next; u; u = next) {
		next = u->next;
		if (!user_forget(d, u) && !u->conns)
			owing = 1;	/* in debt with no connection: look again in a second */
	}
	for (struct md__conn *c = d->conns, *next; c; c = next) {
		next = c->next;
		/* A peer we hang up on after an ERROR gets what was queued
		 * first, if it reads it. */
		if ((c->closing || c->eof) && c->out_len > c->out_head) {
			if (now - c->out_moved_ms < MD_D_STALL_MS) {
				owing = 1;
			} else {
				md__dlog_peer("pid %d (uid %u) dropped: read nothing for %u s", (int)c->pid,
					 (unsigned)c->uid, MD_D_STALL_MS / 1000);
				conn_drop_queue(d, c);
			}
			continue;
		}
		if (!c->owing_since || c->closing || c->eof)
			continue;
		if (now - c->owing_since < MD_D_STALL_MS) {
			owing = 1;
			continue;
		}
		md__dlog_peer("pid %d (uid %u) dropped: %s for %u s", (int)c->pid, (unsigned)c->uid,
			 c->in.len > c->in.head ? "half a message" : "no request", MD_D_STALL_MS / 1000);
		conn_close(d, c);
	}
	return owing;
}

/* A pidfd of pid now, on a kernel without SO_PEERPIDFD (before Linux 6.5).
 * The peer that connected may have exited since and its pid gone to any
 * user's process, whose record a HELLO on the inherited connection would
 * take over: a process none of whose uids is the peer's (its uid at
 * connect) is not the peer. The status is read while the pidfd's process
 * lives, so it is that process's. -1 with errno (ESRCH: not the peer;
 * another: the status could not be read). */
static int pidfd_of_peer(pid_t pid, uid_t uid)
{
	int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pfd < 0)
		return -1;
	char path[64], buf[2048];
	unsigned long id[4];
	int same = 0;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	ssize_t got = md__read_text(path, buf, sizeof(buf));
	/* Short of descriptors or memory ourselves, the peer is not said to
	 * have exited: the HELLO is refused for our shortage (agent.c). */
	if (got < 0 && got != -ENOENT && got != -ESRCH) {
		close(pfd);
		errno = (int)-got;
		return -1;
	}
	const char *u = got > 0 ? strstr(buf, "\nUid:") : NULL;
	if (u && sscanf(u + 5, "%lu %lu %lu %lu", &id[0], &id[1], &id[2], &id[3]) == 4)
		for (int i = 0; i < 4; i++)
			same |= id[i] == (unsigned long)uid;
	struct pollfd exited = { .fd = pfd, .events = POLLIN };
	if (!same || poll(&exited, 1, 0) != 0) {
		close(pfd);
		errno = ESRCH;
		return -1;
	}
	return pfd;
}

/* Connections taken per wake-up: the listener is level-triggered, so what
 * is left wakes the next loop, after the other events. Taken until none
 * was left, a peer connecting and closing in a loop on a few cores could keep
 * every agent's request, exit and the stall sweep waiting. */
#define ACCEPT_BATCH 64

static void accept_waiting(struct md__daemon *d)
{
	for (int taken = 0; taken < ACCEPT_BATCH; taken++) {
		int fd = accept4(d->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN)
				return;
			/* Out of descriptors or memory: the pending connection
			 * stays pending, and a level-triggered listener would
			 * wake us at once, forever. Stop listening for a second
			 * (md__server_run listens again). */
			md__dlog("accept: %s: not accepting for a second", strerror(errno));
			if (epoll_ctl(d->epfd, EPOLL_CTL_MOD, d->lfd,
				      &(struct epoll_event){ .events = 0, .data.ptr = &d->listen_ep }) == 0)
				d->accept_paused = now_ms();
			return;
		}
		struct ucred cr;
		socklen_t cl = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0) {
			close(fd);
			continue;
		}
		if (d->nconns >= d->max_conns ||
		    (!md__privileged(cr.uid) && d->nconns >= d->max_conns - MD_D_RESERVED(d->max_conns))) {
			md__dlog_peer("pid %d (uid %u) refused: %zu connections", (int)cr.pid,
				 (unsigned)cr.uid, d->nconns);
			refuse(fd, -EUSERS, "too many connections (%zu)", d->nconns);
			continue;
		}
		/* Root may stop the daemon anyway; any other user could
		 * otherwise take every connection from the rest. */
		struct md__user *u = user_find(d, cr.uid);
		if (cr.uid != 0 && u && u->conns >= MD_D_CONNS_PER_UID) {
			md__dlog_peer("pid %d (uid %u) refused: %u connections of that uid", (int)cr.pid,
				 (unsigned)cr.uid, MD_D_CONNS_PER_UID);
			refuse(fd, -EUSERS, "too many connections of uid %u (at most %u)",
			       (unsigned)cr.uid, MD_D_CONNS_PER_UID);
			continue;
		}
		/* A pidfd of the peer taken at connect time cannot name a
		 * later process that reused the pid. A kernel without
		 * SO_PEERPIDFD (before Linux 6.5): pidfd_open now, the
		 * closest to connect we can; at HELLO, which may come any
		 * time later, the pid could be another user's process. */
		int pfd;
		socklen_t pl = sizeof(pfd);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pfd, &pl) != 0)
			pfd = errno == ENOPROTOOPT ? pidfd_of_peer(cr.pid, cr.uid) : -1;
		md__conn_new(d, fd, &cr, pfd, pfd < 0 ? -errno : 0);
	}
}

struct md__conn *md__conn_new(struct md__daemon *d, int fd, const struct ucred *cr, int pidfd,
			      int pidfd_err)
{
	struct md__conn *c = calloc(1, sizeof(*c));
	if (c && !(c->user = user_get(d, cr->uid))) {
		free(c);
		c = NULL;
	}
	if (!c)
		goto close_fds;
	c->ep.kind = MD_EP_CONN;
	c->fd = fd;
	c->pid = cr->pid;
	c->uid = cr->uid;
	c->out_fd = -1;
	c->peer_pidfd = pidfd;
	c->peer_pidfd_err = pidfd < 0 ? pidfd_err : 0;
	if (md__ep_add(d, fd, &c->ep, EPOLLIN)) {
		user_put(d, c->user);
		free(c);
		goto close_fds;
	}
	c->events = EPOLLIN;
	c->owing_since = now_ms();
	d->owing = 1;
	c->next = d->conns;
	if (c->next)
		c->next->pprev = &c->next;
	c->pprev = &d->conns;
	d->conns = c;
	d->nconns++;
	return c;

close_fds:
	if (pidfd >= 0)
		close(pidfd);
	close(fd);
	return NULL;
}

/* Sends what the socket takes. Returns -1 if the connection had to close. */
static int flush_out(struct md__daemon *d, struct md__conn *c)
{
	while (c->out_head < c->out_len) {
		size_t end = c->out_len;
		ssize_t w;
		if (c->out_fd >= 0 && c->out_fd_off > c->out_head)
			end = c->out_fd_off;	/* the fd goes with the next message */
		if (c->out_fd >= 0 && c->out_fd_off == c->out_head) {
			union {
				struct cmsghdr h;
				char buf[CMSG_SPACE(sizeof(int))];
			} ctl;
			memset(&ctl, 0, sizeof(ctl));
			struct iovec iov = { c->out + c->out_head, end - c->out_head };
			struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
					     .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
			struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(cm), &c->out_fd, sizeof(int));
			w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w > 0) {
				close(c->out_fd);	/* the kernel took its own with byte one */
				c->out_fd = -1;
			}
		} else {
			w = send(c->fd, c->out + c->out_head, end - c->out_head,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (w <= 0) {
			conn_close(d, c);
			return -1;
		}
		c->out_head += (size_t)w;
		c->user->unsent -= (size_t)w;
		c->out_moved_ms = now_ms();
	}
	if (c->out_head == c->out_len) {
		c->out_head = c->out_len = 0;
		/* A large queue once is not kept for good. */
		if (c->out_cap > MD_D_OUT_KEEP) {
			free(c->out);
			c->out = NULL;
			c->out_cap = 0;
		}
		if (c->closing || (c->eof && !c->awaiting)) {
			conn_close(d, c);
			return -1;
		}
	}
	update_events(d, c);
	return 0;
}

/* Drops what is queued for c, and closes it: it does not read. */
static void conn_drop_queue(struct md__daemon *d, struct md__conn *c)
{
	md__dlog_peer("pid %d does not read its socket (%zu bytes unsent): closing it", (int)c->pid,
		 c->out_len - c->out_head);
	c->user->unsent -= c->out_len - c->out_head;
	c->closing = 1;
	c->out_head = c->out_len = 0;
	if (c->out_fd >= 0)
		close(c->out_fd);
	c->out_fd = -1;
	/* Its socket buffer may be full for good: shut down, it reports a
	 * hang-up at once, and the event loop closes it. */
	shutdown(c->fd, SHUT_RDWR);
	update_events(d, c);
}

unsigned md__server_fail_type;	/* tests only: see daemon.h */

static int queue_msg(struct md__daemon *d, struct md__conn *c, const struct md__msg *m, int fd)
{
	size_t len = md__msg_encoded_len(m);
	if (len == 0)
		return -EINVAL;
	if (md__server_fail_type && m->hdr.type == md__server_fail_type) {
		md__server_fail_type = 0;
		return -ENOMEM;
	}
	if (c->closing && c->out_len == 0)
		return -ENOBUFS;	/* dropped: nothing more goes to it */
	/* A peer stops being read at MD_D_OUT_PAUSE, and its requests wait
	 * then too: past it only what is sent unasked piles up, bounded per
	 * peer. The peers of a user (root's not) are bounded together: one
	 * closing anyway goes first, then the one whose queue has not moved
	 * for longest (a guess: one that reads keeps its queue moving, but
	 * the daemon may not have come to it lately). */
	if (c->out_len - c->out_head + len > MD_D_OUT_MAX) {
		conn_drop_queue(d, c);
		return -ENOBUFS;
	}
	while (c->uid != 0 && c->user->unsent + len > MD_D_OUT_UID_MAX) {
		struct md__conn *stuck = NULL;
		for (struct md__conn *o = d->conns; o; o = o->next)
			if (o->user == c->user && o->out_len > o->out_head &&
			    (!stuck || (o->closing && !stuck->closing) ||
			     (o->closing == stuck->closing && o->out_moved_ms < stuck->out_moved_ms)))
				stuck = o;
		if (!stuck)
			break;
		conn_drop_queue(d, stuck);
		if (stuck == c)
			return -ENOBUFS;
	}
	if (c->out_len == c->out_head)
		c->out_moved_ms = now_ms();	/* a queue starts */
	if (c->out_len + len > c->out_cap) {
		/* Compact first: what was sent is dead space. */
		if (c->out_head)
			memmove(c->out, c->out + c->out_head, c->out_len - c->out_head);
		c->out_len -= c->out_head;
		if (c->out_fd >= 0)
			c->out_fd_off -= c->out_head;
		c->out_head = 0;
		size_t cap = c->out_cap ? c->out_cap : 4096;
		while (cap < c->out_len + len)
			cap *= 2;
		unsigned char *n = realloc(c->out, cap);
		if (!n)
			return -ENOMEM;
		c->out = n;
		c->out_cap = cap;
	}
	if (fd >= 0) {
		if (c->out_fd >= 0)
			return -EBUSY;	/* one descriptor in flight at a time */
		/* A copy: the queue may wait while the original is closed (its
		 * domain freed) and its number given to another user's pool. */
		c->out_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (c->out_fd < 0)
			return -errno;
		c->out_fd_off = c->out_len;
	}
	md__msg_encode(m, c->out + c->out_len, len);
	c->out_len += len;
	c->user->unsent += len;
	/* A reply to the connection being read goes out when its messages
	 * are handled (flush_out), most often without waiting for EPOLLOUT:
	 * arming it here would cost two epoll_ctl per request. */
	if (c != d->reading)
		update_events(d, c);
	return 0;
}

int md__conn_send(struct md__daemon *d, struct md__conn *c, const struct md__msg *m, int fd)
{
	int err = queue_msg(d, c, m, fd);
	/* A reply that cannot be queued (memory short, no descriptor for the
	 * pool's copy) would leave its peer waiting for it, every later reply
	 * behind it: the connection goes instead (-ENOBUFS: it went). */
	if (err && err != -ENOBUFS && m->hdr.seq) {
		md__dlog_peer("pid %d: a reply could not be queued (%s)", (int)c->pid, strerror(-err));
		conn_drop_queue(d, c);
	}
	return err;
}

void md__conn_fail(struct md__daemon *d, struct md__conn *c, uint32_t seq, int err,
		   const char *fmt, ...)
{
	struct md__msg m = { .hdr = { .type = MD_MSG_ERROR, .seq = seq } };
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m.u.text.text, sizeof(m.u.text.text), fmt, ap);
	va_end(ap);
	m.u.text.status = err;
	md__dlog_peer("pid %d: %s (%s); closing", (int)c->pid, m.u.text.text, strerror(-err));
	/* Nothing more is read from it; what was queued goes out first, if
	 * it reads it within MD_D_STALL_MS (drop_stalled). */
	md__conn_send(d, c, &m, -1);
	c->closing = 1;
	d->owing = 1;
	update_events(d, c);
}

/* ERROR without closing: the request was well formed but failed. */
static void reply_error(struct md__daemon *d, struct md__conn *c, uint32_t seq, int err,
			const char *text)
{
	struct md__msg m = { .hdr = { .type = MD_MSG_ERROR, .seq = seq } };
	snprintf(m.u.text.text, sizeof(m.u.text.text), "%s", text);
	m.u.text.status = err;
	md__conn_send(d, c, &m, -1);
}

static void reply_ack(struct md__daemon *d, struct md__conn *c, uint32_t seq, int status)
{
	struct md__msg m = { .hdr = { .type = MD_MSG_ACK, .seq = seq } };
	m.u.ack.status = status;
	md__conn_send(d, c, &m, -1);
}

static void handle_status(struct md__daemon *d, struct md__conn *c, uint32_t seq,
			  const struct md__msg_status *from)
{
	char *json;
	size_t len;
	int limited = d->status_bytes_per_s && !md__privileged(c->uid);
	if (limited && status_refill(d, c->user) <= 0) {
		reply_error(d, c, seq, -EAGAIN, "too many status requests of this user: try again in a second");
		return;
	}
	int err = md__status_json(d, c->uid, from->domain_from, from->agent_from, &json, &len);
	if (limited)
		c->user->status.tokens -= (int64_t)(err || len < MD_D_STATUS_MIN ? MD_D_STATUS_MIN : len);
	if (err) {
		reply_error(d, c, seq, err, "cannot build the status document");
		return;
	}
	if (len > MD_MSG_MAX) {
		reply_error(d, c, seq, -E2BIG, "status document larger than a message");
	} else {
		struct md__msg m = { .hdr = { .type = MD_MSG_STATUS_R, .seq = seq } };
		m.u.status_r.json = json;
		m.u.status_r.len = (uint32_t)len;
		md__conn_send(d, c, &m, -1);
	}
	free(json);
}

static void flush_candidates(struct md__daemon *d, struct md__agent *a)
{
	if (!a->ncand)
		return;
	/* Candidates only save the agent a wait for its next pass: to one
	 * that does not read what it was sent, they are dropped, not queued. */
	if (a->conn && a->conn->out_len - a->conn->out_head < MD_D_OUT_PAUSE) {
		struct md__msg m = { .hdr = { .type = MD_MSG_CANDIDATES } };
		m.u.candidates.n = a->ncand;
		memcpy(m.u.candidates.addr, a->cand, a->ncand * sizeof(a->cand[0]));
		md__conn_send(d, a->conn, &m, -1);
	}
	a->ncand = 0;
}

/* Tells the agent whose page was the first sighting of content just
 * published where that page is: it can merge it at once, not a pass later.
 * Queued: they go out together once this wake-up's messages are handled. */
static void name_page(struct md__daemon *d, struct md__agent *a, const struct md__domain *dom, uint64_t addr)
{
	if (!a || a->dom != dom || !a->conn)
		return;	/* gone meanwhile: its next pass finds the page */
	a->cand[a->ncand++] = addr;
	if (a->ncand == MD_CANDIDATES_MAX)
		flush_candidates(d, a);
}

static void send_candidate(struct md__daemon *d, struct md__domain *dom, uint64_t hash)
{
	unsigned num;
	uint64_t addr;
	if (md__domain_published(dom, hash, &num, &addr))
		name_page(d, md__agent_find_num(d, num), dom, addr);
}

/* A page (where, MD_WHERE_BITS) whose lookup will find its content (a
 * first sighting of it, or the pool's page), named to its agent to visit
 * now. */
static void send_lookup_due(struct md__daemon *d, struct md__domain *dom, uint64_t where)
{
	name_page(d, md__agent_find_num(d, (unsigned)(where >> MD_WHERE_PAGE_BITS)), dom,
		  (where & ((1ull << MD_WHERE_PAGE_BITS) - 1)) << 12);
}

/* The live pool pages of all the domains of uid. */
static uint64_t uid_live_pages(const struct md__daemon *d, uid_t uid)
{
	uint64_t n = 0;
	for (const struct md__domain *dom = d->domains; dom; dom = dom->next)
		if (dom->uid == uid)
			n += md__pool_live(&dom->pool);
	return n;
}

/* What a peer may send (an agent's after its HELLO). */
static int is_request(unsigned type)
{
	switch (type) {
	case MD_MSG_LOOKUP: case MD_MSG_PUBLISH: case MD_MSG_REF: case MD_MSG_UNREF:
	case MD_MSG_REPORT: case MD_MSG_READS: case MD_MSG_CONTROL_DONE:
	case MD_MSG_HELLO: case MD_MSG_STATUS: case MD_MSG_CONTROL:
		return 1;
	default:
		return 0;
	}
}

/* -EPROTO, saying why in why, if c may not send a request of this type
 * now: an agent's before HELLO or after its process exited, a second
 * HELLO (once per connection, its agent there or not: once the agent's
 * process exited, whoever holds the connection still has its pid, which
 * may now be another user's process). 0 if it may. */
static int refused_now(const struct md__conn *c, unsigned type, char *why, size_t size)
{
	switch (type) {
	case MD_MSG_LOOKUP: case MD_MSG_PUBLISH: case MD_MSG_REF: case MD_MSG_UNREF:
	case MD_MSG_REPORT: case MD_MSG_READS: case MD_MSG_CONTROL_DONE:
		if (c->agent)
			return 0;
		snprintf(why, size, c->hello ? "%s after its agent's process exited" : "%s before HELLO",
			 md__msg_type_name(type));
		return -EPROTO;
	case MD_MSG_HELLO:
		if (!c->hello)
			return 0;
		snprintf(why, size, "HELLO twice");
		return -EPROTO;
	case MD_MSG_STATUS: case MD_MSG_CONTROL:
		/* An agent connects from inside its VMM, maybe before the
		 * VMM dropped root (qemu -runas): its connection's rights
		 * would outlive them. Asked on a connection of their own,
		 * with the rights the asker has then. */
		if (!c->hello)
			return 0;
		snprintf(why, size, "%s on an agent's connection", md__msg_type_name(type));
		return -EPROTO;
	default:
		return 0;
	}
}

/* Handles the message just decoded into d->msg. */
static void dispatch(struct md__daemon *d, struct md__conn *c)
{
	struct md__msg *m = &d->msg, *r;
	uint32_t seq = m->hdr.seq;
	char why[MD_TEXT_MAX + 1];
	int err;

	/* Only the requests a peer may send, and when it may. */
	err = refused_now(c, m->hdr.type, why, sizeof(why));
	if (err) {
		md__conn_fail(d, c, seq, err, "%s", why);
		return;
	}
	switch (m->hdr.type) {
	case MD_MSG_LOOKUP: case MD_MSG_PUBLISH: case MD_MSG_REF: case MD_MSG_UNREF:
	case MD_MSG_REPORT: case MD_MSG_READS: case MD_MSG_CONTROL_DONE:
		c->agent->requests++;
		break;
	default:
		if (!is_request(m->hdr.type)) {	/* read_conn refused these, at their header */
			md__conn_fail(d, c, seq, -EBADMSG, "%s is not a request",
				      md__msg_type_name(m->hdr.type));
			return;
		}
		break;
	}

	switch (m->hdr.type) {
	case MD_MSG_HELLO: {
		c->hello = 1;
		err = md__agent_hello(d, c, &m->u.hello, why, sizeof(why));
		if (err) {
			md__conn_fail(d, c, seq, err, "%s", why);
			return;
		}
		struct md__domain *dom = c->agent->dom;
		struct md__msg w = { .hdr = { .type = MD_MSG_WELCOME, .seq = seq } };
		w.u.welcome.domain_id = dom->id;
		w.u.welcome.pool_pages = (uint32_t)dom->pool.max_pages;
		w.u.welcome.generation = dom->generation;
		w.u.welcome.tun = d->tun;
		w.u.welcome.state = (d->paused && !c->agent->resumed_alone) || c->agent->unmerged || c->agent->paused ? MD_WELCOME_PAUSED : 0;
		md__conn_send(d, c, &w, dom->pool.ro_fd);
		md__reshare(d);
		return;
	}
	case MD_MSG_LOOKUP:
		r = malloc(sizeof(*r));
		if (!r) {
			reply_error(d, c, seq, -ENOMEM, "out of memory");
			return;
		}
		r->hdr = (struct md__msg_hdr){ .type = MD_MSG_LOOKUP_R, .seq = seq };
		r->u.lookup_r.n = m->u.lookup.n;
		uint32_t found = 0;
		for (uint32_t i = 0; i < m->u.lookup.n; i++) {
			uint64_t name;
			r->u.lookup_r.slot1[i] = md__domain_lookup(c->agent->dom, m->u.lookup.hash[i],
								   c->agent->num, m->u.lookup.addr[i],
								   m->u.lookup.tag[i], &name);
			if (name)
				send_lookup_due(d, c->agent->dom, name);
			/* A twin not in the pool yet, found by this agent's
			 * visit. A page in the pool may be one another
			 * agent's visit named (CANDIDATES), which its agent
			 * looks up outside its rate. */
			found += r->u.lookup_r.slot1[i] == MD_LOOKUP_PUBLISH;
		}
		c->agent->found += found;
		if (found && !d->weighing) {	/* weighed from MD_WEIGH_MS on */
			d->weighing = 1;
			d->weighed_ms = md__now_ms();
		}
		md__conn_send(d, c, r, -1);
		free(r);
		return;
	case MD_MSG_PUBLISH: {
		uint32_t first;
		/* One user's domains together hold no more than one pool's
		 * worth (64 domains of a pool each would be 64 pools of
		 * memory, which memdedupd's users share); a page equal to a
		 * live one takes no new slot, and is still given it. */
		int full = c->uid != 0 && uid_live_pages(d, c->uid) + m->u.publish.n > d->pool_pages;
		err = md__agent_publish(c->agent, &m->u.publish, &first, full);
		if (err == -ENOSPC) {
			struct md__domain *dom = c->agent->dom;
			if (!dom->publish_full)
				md__dlog("domain %u (uid %u): %s; publications are refused until pages are "
					 "freed (\"publish_full\" in status)", (unsigned)dom->id, (unsigned)dom->uid,
					 full ? "its user has a pool's worth of pages in its domains" :
					 "the pool is full");
			dom->publish_full += m->u.publish.n;
		}
		if (err == -ENOSPC && full) {
			snprintf(why, sizeof(why), "uid %u has a pool's worth of pages in its domains",
				 (unsigned)c->uid);
			reply_error(d, c, seq, -ENOSPC, why);
			return;
		}
		if (err) {
			reply_error(d, c, seq, err, err == -EINVAL ? "a hash does not match its page" :
				    err == -ENOSPC ? "the pool is full" :
				    err == -EDQUOT ? "more references than the process has pages" :
				    "cannot publish");
			return;
		}
		struct md__msg p = { .hdr = { .type = MD_MSG_PUBLISH_R, .seq = seq } };
		p.u.publish_r.first_slot = first;
		p.u.publish_r.n = m->u.publish.n;
		md__conn_send(d, c, &p, -1);
		for (uint32_t i = 0; i < m->u.publish.n; i++)
			send_candidate(d, c->agent->dom, m->u.publish.hash[i]);
		return;
	}
	case MD_MSG_REF:
	case MD_MSG_UNREF:
		reply_ack(d, c, seq, md__agent_refs(c->agent, m->u.refs.slot, m->u.refs.n,
						     m->hdr.type == MD_MSG_REF ? 1 : -1));
		return;
	case MD_MSG_REPORT: {
		int stopped = md__agent_stopped(c->agent);
		md__agent_report(c->agent, &m->u.report);
		if (md__agent_stopped(c->agent) != stopped)
			md__reshare(d);
		reply_ack(d, c, seq, 0);
		return;
	}
	case MD_MSG_READS:
		for (uint32_t i = 0; i < m->u.reads.n; i++) {
			uint64_t named[MD_READ_RUN_PAGES];
			size_t n = md__domain_reads(c->agent->dom, c->agent->num, &m->u.reads.run[i], named);
			for (size_t k = 0; k < n; k++)
				send_lookup_due(d, c->agent->dom, named[k]);
		}
		reply_ack(d, c, seq, 0);
		return;
	case MD_MSG_STATUS:
		handle_status(d, c, seq, &m->u.status);
		return;
	case MD_MSG_CONTROL:
		md__control(d, c, seq, &m->u.control);
		return;
	case MD_MSG_CONTROL_DONE:
		md__control_done(d, c->agent, &m->u.control_done);
		reply_ack(d, c, seq, 0);
		return;
	}
}

/* The work of the message in d->msg, known before it is handled (an
 * UNREF's slots freed are added once it was: see MD_D_BUDGET). */
static unsigned msg_cost(const struct md__msg *m)
{
	unsigned pages = 0;
	switch (m->hdr.type) {
	case MD_MSG_READS:
		for (uint32_t i = 0; i < m->u.reads.n; i++)
			pages += m->u.reads.run[i].npages;
		return 1 + pages / 1024;
	case MD_MSG_PUBLISH:
		return 1 + m->u.publish.n / MD_D_PUBLISH_PAGES_PER_UNIT;
	case MD_MSG_STATUS:
		return 16;	/* a page of the document, up to 1 MiB of JSON */
	default:
		return 1;
	}
}

/* Reads and handles up to MD_D_BATCH messages, then those already read.
 * -1: the connection closed. */
static int read_conn(struct md__daemon *d, struct md__conn *c)
{
	int handled = 0, backed_up = 0;
	/* Its work in this wake-up, whichever loop serves it: a connection
	 * deferred is served first, then maybe again on its own events. */
	if (c->spent_round != d->round) {
		c->spent_round = d->round;
		c->spent = 0;
	}
	unsigned spent = c->spent;
	while (!c->closing && !c->eof) {
		struct md__msg_hdr h;
		size_t need;
		int got = md__rxbuf_next(&c->in, &h, &need);
		if (got < 0) {
			/* The seq field is where it always is: echo it, so the
			 * sender can tell which message we refused. */
			const unsigned char *p = c->in.buf + c->in.head;
			uint32_t seq = (uint32_t)p[12] | (uint32_t)p[13] << 8 |
				       (uint32_t)p[14] << 16 | (uint32_t)p[15] << 24;
			md__conn_fail(d, c, seq, got, "bad header (%s)",
				      got == -EPROTO ? "magic" : got == -EPROTONOSUPPORT ? "version" :
				      got == -EMSGSIZE ? "length too large for its type" : "type");
			break;
		}
		if (got) {
			/* Replies wait for the peer to read what it was sent: the
			 * rest stays buffered until flush_out makes room; and
			 * while a CONTROL waits for its agents, as its reply
			 * comes before theirs. */
			if (c->out_len - c->out_head >= MD_D_OUT_PAUSE || c->awaiting) {
				backed_up = 1;
				break;
			}
			/* One peer's big messages do not hold the others', nor
			 * one user's many peers the other users'. */
			unsigned *user = user_spent(d, c->user);
			if (spent >= MD_D_BUDGET || *user >= MD_D_USER_BUDGET) {
				defer_conn(d, c, spent == 0);
				break;
			}
			int err = md__msg_decode(c->in.buf + c->in.head, need, &d->msg);
			c->in.head += need;
			handled++;
			if (err) {
				md__conn_fail(d, c, d->msg.hdr.seq, err, "malformed %s payload",
					      md__msg_type_name(d->msg.hdr.type));
				break;
			}
			c->requested = 1;
			unsigned cost = msg_cost(&d->msg);
			spent += cost;
			*user += cost;
			/* What an UNREF frees is known once it is handled: one
			 * that frees nothing costs what a REF does. */
			struct md__pool *pool = d->msg.hdr.type == MD_MSG_UNREF && c->agent ?
						&c->agent->dom->pool : NULL;
			uint64_t freed = pool ? pool->freed : 0;
			dispatch(d, c);
			if (pool) {
				cost = (unsigned)((pool->freed - freed) / MD_D_FREED_PER_UNIT);
				spent += cost;
				*user += cost;
			}
			continue;
		}
		/* A header that is all there says what comes: a peer may send
		 * requests only, so no room is made for a reply's length (a
		 * STATUS_R's would be a megabyte). */
		if (c->in.len - c->in.head >= MD_MSG_HDR_SIZE && !is_request(h.type)) {
			md__conn_fail(d, c, h.seq, -EBADMSG, "%s is not a request", md__msg_type_name(h.type));
			break;
		}
		/* Nor for a request refused whatever its payload (a PUBLISH
		 * before HELLO would have made room for 256 KiB). */
		if (c->in.len - c->in.head >= MD_MSG_HDR_SIZE) {
			char why[MD_TEXT_MAX + 1];
			int err = refused_now(c, h.type, why, sizeof(why));
			if (err) {
				md__conn_fail(d, c, h.seq, err, "%s", why);
				break;
			}
		}
		/* Past the batch, only what was read already is handled: the
		 * rest waits in the socket for the next wake-up (epoll is
		 * level-triggered), so one busy peer cannot hold the others. */
		if (handled >= MD_D_BATCH)
			break;
		if (md__rxbuf_room(&c->in, need) != 0) {
			conn_close(d, c);
			return -1;
		}
		ssize_t r = recv(c->fd, c->in.buf + c->in.len, c->in.cap - c->in.len, MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		/* It shut down only its writing: it still reads. What it
		 * asked is answered first (its grants are references it
		 * learns of), then flush_out closes it. */
		if (r == 0 && (c->out_len > c->out_head || c->awaiting)) {
			c->eof = 1;
			d->owing = 1;	/* drop_stalled: one that reads nothing goes */
			break;
		}
		if (r <= 0) {
			conn_close(d, c);	/* EOF or reset */
			return -1;
		}
		c->in.len += (size_t)r;
	}
	/* What is owed is timed from the last message handled: a peer
	 * that streams is never late. */
	if (backed_up || c->deferred || (c->requested && c->in.len == c->in.head)) {
		c->owing_since = 0;	/* we owe it replies or service, or nothing is owed */
	} else if (!c->owing_since || (handled && c->requested)) {
		c->owing_since = now_ms();
		d->owing = 1;
	}
	md__rxbuf_trim(&c->in);	/* a big buffer is not kept for one message */
	c->spent = spent;
	return 0;
}

/* SIGHUP reopens the log (after logrotate moved it); SIGTERM and SIGINT
 * stop the daemon. */
static void handle_signal(struct md__daemon *d)
{
	struct signalfd_siginfo si;
	while (read(d->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo != SIGHUP) {
			md__dlog("signal %u: shutting down", si.ssi_signo);
			d->stop = 1;
			continue;
		}
		int fd = d->log_path[0] ? md__dlog_open(d->log_path) : -1;
		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		md__dlog("SIGHUP: %s", !d->log_path[0] ? "nothing to do (logging to stderr)" :
			 fd >= 0 ? "log reopened" : "cannot reopen the log; it goes where it went");
	}
}

/* Whether c's peer hung up (closed its end, or shut it down both ways):
 * it reads no reply, so what it sent is not handled, but for what
 * md__conn_apply_left applies. A grant read after it gave up (its request
 * late past its bound, a send cut short by its timeout) was a reference
 * it never learned of, in the record its reconnect gets back: pinned until
 * the process exited. One that shut down only its writing still reads:
 * served up to the end, as before. events: epoll's for c in this wake-up,
 * or 0: asked now (a deferred connection may have none). */
static int peer_hung_up(const struct md__conn *c, uint32_t events)
{
	if (events)
		return (events & (EPOLLHUP | EPOLLERR)) != 0;
	struct pollfd p = { .fd = c->fd };
	return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR));
}

void md__server_events(struct md__daemon *d)
{
	/* The connections deferred before, the starved first, each queue in
	 * its order, once each: one deferred again goes to the end of a
	 * queue, and is left for the next wake-up. Handling one closes no
	 * other, but a close unlinks it anyway (conn_close). */
	d->round++;
	for (int starved = 1; starved >= 0; starved--) {
		struct md__defer_queue *q = &d->defer[starved];
		while (q->head && q->head->deferred_round != d->round && !d->stop) {
			struct md__conn *c = q->head;
			undefer_conn(d, c);
			if (peer_hung_up(c, 0)) {
				conn_close(d, c);
				continue;
			}
			d->reading = c;
			int gone = !c->closing && read_conn(d, c) < 0;
			d->reading = NULL;
			if (!gone)
				flush_out(d, c);
		}
	}
	for (int i = 0; i < d->nev && !d->stop; i++) {
		struct md__ep *ep = d->evs[i].data.ptr;
		if (!ep)
			continue;	/* its owner was freed meanwhile */
		switch (ep->kind) {
		case MD_EP_LISTEN:
			accept_waiting(d);
			break;
		case MD_EP_SIGNAL:
			handle_signal(d);
			break;
		case MD_EP_PIDFD:
			md__agent_exited(d, (struct md__agent *)ep);
			/* Its connection, if another process keeps it
			 * open, no longer counts: conn_close will not
			 * know it was an agent's. */
			md__reshare(d);
			break;
		case MD_EP_CONN: {
			struct md__conn *c = (struct md__conn *)ep;
			/* Nobody to answer (also when a CONTROL of its
			 * waits for its agents, its input unread). */
			if (peer_hung_up(c, d->evs[i].events)) {
				conn_close(d, c);
				break;
			}
			if ((d->evs[i].events & EPOLLOUT) && flush_out(d, c) < 0)
				break;
			d->reading = c;
			/* Or requests left buffered while it had too much
			 * unsent, if flush_out made room. */
			int gone = ((d->evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ||
				    requests_resumable(c)) &&
				   !c->closing && read_conn(d, c) < 0;
			d->reading = NULL;
			if (gone)
				break;
			flush_out(d, c);
			break;
		}
		}
	}
	d->nev = 0;
	md__agents_drain(d);
	if (d->weighing)
		md__reweigh(d, md__now_ms());
	flush_share(d);
	for (struct md__agent *a = d->agents; a; a = a->next)
		flush_candidates(d, a);
}

int md__server_run(struct md__daemon *d)
{
	struct epoll_event evs[64];
	int err;

	d->listen_ep.kind = MD_EP_LISTEN;
	d->signal_ep.kind = MD_EP_SIGNAL;
	err = md__ep_add(d, d->lfd, &d->listen_ep, EPOLLIN);
	if (!err)
		err = md__ep_add(d, d->sigfd, &d->signal_ep, EPOLLIN);
	if (err)
		return err;
	uint64_t swept = now_ms(), quiet = swept;	/* since the last messages or work handled */
	while (!d->stop) {
		/* Freed pool pages not reused are punched once a second
		 * passes without a message (while busy, 256 at a time).
		 * Work left (connections deferred, references to give
		 * back) goes on at once; a SHARE that could not be queued
		 * is tried again within a second. The second is counted
		 * from the last event, not from this wait: the deadlines
		 * below shorten it, and an UNMERGE queue of agents that do
		 * not answer, under a MEMDEDUP_CONTROL_WAIT_MS below a
		 * second, kept it short until the queue's end. */
		int deferred = d->defer[0].head || d->defer[1].head || d->draining;
		int trim = !deferred && md__domains_trim_due(d);
		int wait = deferred ? 0 :
			   trim || d->accept_paused || d->owing ||
			   d->share_due || md__dlog_peer_flush(0) ? 1000 : -1;
		if (trim) {
			int64_t in = (int64_t)(quiet + 1000) - (int64_t)now_ms();
			wait = in < 0 ? 0 : in < wait ? (int)in : wait;
		}
		int due = md__control_due_in(d);
		if (due >= 0 && (wait < 0 || due < wait))
			wait = due;
		/* The agents' recent finds decay (md__reweigh). */
		if (d->weighing) {
			int64_t in = d->weighed_ms + MD_WEIGH_MS - md__now_ms();
			in = in < 0 ? 0 : in;
			if (wait < 0 || in < wait)
				wait = (int)in;
		}
		/* A record's address space to look at again (agent.c). */
		if (d->look_at) {
			int64_t in = d->look_at - md__now_ms();
			in = in < 0 ? 0 : in;
			if (wait < 0 || in < wait)
				wait = (int)in;
		}
		int n = epoll_wait(d->epfd, evs, 64, wait);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		/* Not our own sends waiting for a writable socket: the reply
		 * to a CONTROL at its deadline came each time. */
		int heard = deferred;
		for (int i = 0; i < n; i++)
			heard |= (evs[i].events & ~(uint32_t)EPOLLOUT) != 0;
		if (!heard && trim && now_ms() - quiet >= 1000)	/* a second without a message */
			md__domains_trim(d);
		if (d->controls)
			md__control_tick(d);
		if (d->accept_paused && now_ms() - d->accept_paused >= 1000 &&
		    epoll_ctl(d->epfd, EPOLL_CTL_MOD, d->lfd,
			      &(struct epoll_event){ .events = EPOLLIN, .data.ptr = &d->listen_ep }) == 0)
			d->accept_paused = 0;
		d->evs = evs;
		d->nev = n;
		/* After evs is known: a connection closed here leaves it. */
		if (now_ms() - swept >= 1000) {
			/* A close in it may ask for a look again (user_put). */
			d->owing = 0;
			int owing = drop_stalled(d);
			d->owing |= owing;
			md__domains_shrink(d, md__now_ms());
			swept = now_ms();
		}
		if (d->look_at && md__now_ms() >= d->look_at)
			md__agents_look(d);
		md__server_events(d);
		if (heard)
			quiet = now_ms();
	}
	md__dlog_peer_flush(1);
	return 0;
}

void md__server_close(struct md__daemon *d)
{
	while (d->conns) {
		struct md__conn *c = d->conns;
		if (c->agent)
			c->agent->conn = NULL;
		c->agent = NULL;
		conn_close(d, c);
	}
	while (d->users) {	/* those kept for a STATUS debt */
		struct md__user *u = d->users;
		d->users = u->next;
		free(u);
	}
	md__control_gone(d, NULL, -1);
	if (d->lfd >= 0) {
		close(d->lfd);
		d->lfd = -1;
	}
}
