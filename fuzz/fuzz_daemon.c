/* fuzz_daemon.c - memdedupd's handlers on arbitrary peers. A daemon is built
 * in this process for each input (as daemon/main.c builds one, without a
 * listening socket or signals), and up to four peers talk to it over
 * socketpairs, through the daemon's own loop body (md__server_events): its
 * framing and early refusals (read_conn), dispatch, HELLO and the takeover
 * of an agent's record, REF/UNREF, PUBLISH, LOOKUP, READS, REPORT, STATUS
 * pages, CONTROL forwarded to the agents and their CONTROL_DONE, and what a
 * closing connection still applies (md__conn_apply_left).
 *
 * The input is a list of chunks, each an op byte and what it needs
 * (fuzz_daemon.h): the peer it is for (a new connection at its first use,
 * and after it was closed), and what to do: send bytes (a u24 count and
 * those, or the rest of the input), hang up (shut down writing: the daemon
 * reads EOF), or close at once, replies unread; and whether time passes
 * first (CONTROLs time out, freed pool slots are punched), whether the
 * peer stops reading replies, whether the next chunk goes in with this one
 * (two peers' bytes in one wake-up, as a takeover of a busy connection).
 * A hang-up or close right after a chunk of the same peer held so puts
 * that chunk's bytes in its socket first, the daemon not woken: behind a
 * close (an agent whose send was cut short by its timeout, which then
 * hung up) it applies only their UNREFs and CONTROL_DONEs, behind a
 * hang-up (writing shut down) it serves them all. Held itself, the close
 * or hang-up lets the daemon wake up once first (a batch handled, the
 * rest deferred or left in the socket).
 *
 * After each chunk the daemon runs until nothing moves: the bytes go in as
 * the socket takes them, every reply is read, framed and must decode (the
 * daemon sends only well-formed messages), descriptors passed with them
 * are closed. Bytes the daemon does not take before the peer's next chunk
 * (it stopped reading: a CONTROL waits, or it hung up) are dropped. After
 * each chunk, each slot's references in the pool must be those the
 * agents' records hold. At the end every peer hangs up, the daemon is torn
 * down as main.c does, leak-free (the replay runs under ASan's leak
 * checker), and every descriptor it opened must be closed.
 *
 * Peers 0 and 1 are one process of root's, 2 another, and 3 that one as
 * another user (fuzz_daemon.h), so that agents meet (candidates, reads
 * paired, SHAREs, CONTROLs to several) and the bounds of users other than
 * root are reached. No process can have their pids: what the daemon reads
 * of /proc/PID fails alike on every machine. The pidfd of each connection
 * is this process's own, so agents never exit, unless the input has a
 * FUZZ_OP_EXIT: then it is one of a child standing for its process (a
 * `cat` reading a pipe, spawned: a fork would hold our descriptors, and
 * an epoll entry goes only with the last descriptor of its file), which
 * the op ends, and the exit comes through the daemon's loop as a real
 * one. The STATUS rate limit is
 * off (MEMDEDUP_STATUS_KB_PER_S=0), CONTROLs wait 0 ms, and no timer runs
 * but when an input says: an input does the same each time. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "fuzz_daemon.h"
#include "fuzz_util.h"


/* Rounds of a pump that moved something: past this many the daemon spins. */
#define FUZZ_ROUNDS_MAX 1000000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);

struct peer {
	int fd;                    /* ours; -1: no connection */
	int deaf;                  /* its replies are not read (FUZZ_OP_DEAF) */
	const uint8_t *out;        /* what is still to send */
	size_t out_len;
	struct md__rxbuf in;       /* replies, framed */
};

/* Reply types the corpus drew out of the daemon (replay only). */
static uint32_t replies_seen;
static FILE *quiet;
static int trace;	/* MD_FUZZ_LOG=1: the daemon's log, and each reply */

/* The daemon's log goes nowhere while it runs here (MD_FUZZ_LOG=1 keeps
 * it): thousands of inputs would fill the replay's output. Its lines go
 * through stdio, sanitizers' reports do not. */
static FILE *daemon_stderr_begin(void)
{
	FILE *saved = stderr;
	if (quiet)
		stderr = quiet;
	return saved;
}

static void daemon_stderr_end(FILE *saved)
{
	stderr = saved;
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

extern char **environ;

/* The children standing for the two processes when the input has exits
 * (pid 0: none yet, or it exited); each reads its pipe until its write
 * end, hold, closes. */
static int with_exits;
static struct { pid_t pid; int hold; } procs[2];

static int proc_pidfd(unsigned pr)
{
	if (!with_exits)
		return (int)syscall(SYS_pidfd_open, getpid(), 0);
	if (procs[pr].pid <= 0) {
		int pfd[2];
		posix_spawn_file_actions_t fa;
		if (pipe2(pfd, O_CLOEXEC) != 0)
			return -1;
		posix_spawn_file_actions_init(&fa);
		posix_spawn_file_actions_adddup2(&fa, pfd[0], 0);
		posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
		char *argv[] = { "cat", NULL };
		pid_t pid;
		int err = posix_spawn(&pid, "/bin/cat", &fa, NULL, argv, environ);
		posix_spawn_file_actions_destroy(&fa);
		close(pfd[0]);
		if (err) {
			close(pfd[1]);
			errno = err;
			return -1;
		}
		procs[pr].pid = pid;
		procs[pr].hold = pfd[1];
	}
	return (int)syscall(SYS_pidfd_open, procs[pr].pid, 0);
}

/* Whether an op of the input has FUZZ_OP_EXIT (chunks as the loop below
 * takes them). */
static int input_exits(const uint8_t *data, size_t size)
{
	for (size_t off = 0; off < size;) {
		unsigned op = data[off++], act = op & FUZZ_OP_ACT;
		if (op & FUZZ_OP_EXIT)
			return 1;
		if (act == FUZZ_OP_REST)
			break;
		if (act == FUZZ_OP_SEND) {
			size_t len = size - off >= 3 ? get24(data + off) : 0;
			off = off + 3 <= size ? off + 3 : size;
			off += len < size - off ? len : size - off;
		}
	}
	return 0;
}

static void proc_exit(unsigned pr)
{
	if (procs[pr].pid <= 0)
		return;
	close(procs[pr].hold);
	/* libFuzzer's timer signal does not restart calls. */
	while (waitpid(procs[pr].pid, NULL, 0) < 0 && errno == EINTR)
		;
	procs[pr].pid = 0;
}

static void peer_open(struct md__daemon *d, struct peer *p, unsigned k)
{
	int sv[2];
	unsigned pr = FUZZ_PID_OF(k) - FUZZ_PID;
	p->fd = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
		return;
	struct ucred cr = { .pid = FUZZ_PID_OF(k), .uid = FUZZ_UID_OF(k), .gid = FUZZ_UID_OF(k) };
	int pidfd = proc_pidfd(pr);
	if (!md__conn_new(d, sv[1], &cr, pidfd, pidfd < 0 ? -errno : 0)) {
		close(sv[0]);
		return;
	}
	p->fd = sv[0];
}

static void peer_close(struct peer *p)
{
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
	p->out_len = 0;
	p->deaf = 0;
	md__rxbuf_free(&p->in);
}

static void trace_reply(const struct peer *p, const struct md__msg *m)
{
	int32_t status = m->hdr.type == MD_MSG_ACK ? m->u.ack.status :
			 m->hdr.type == MD_MSG_ERROR || m->hdr.type == MD_MSG_CONTROL_R ? m->u.text.status : 0;
	fprintf(stderr, "fuzz_daemon: peer fd %d got %s seq %u (%u bytes) status %d%s%s\n", p->fd,
		md__msg_type_name(m->hdr.type), m->hdr.seq, m->hdr.length, status,
		m->hdr.type == MD_MSG_ERROR || m->hdr.type == MD_MSG_CONTROL_R ? ": " : "",
		m->hdr.type == MD_MSG_ERROR || m->hdr.type == MD_MSG_CONTROL_R ? m->u.text.text : "");
}

/* Takes the whole replies off the front of p's buffer: each must decode. */
static void peer_replies(struct peer *p)
{
	static struct md__msg m;
	for (;;) {
		struct md__msg_hdr h;
		size_t need;
		int got = md__rxbuf_next(&p->in, &h, &need);
		if (got < 0)
			__builtin_trap();	/* the daemon sent a bad header */
		if (!got)
			return;
		if (md__msg_decode(p->in.buf + p->in.head, need, &m) != 0)
			__builtin_trap();	/* or a malformed payload */
		replies_seen |= 1u << h.type;
		if (trace)
			trace_reply(p, &m);
		p->in.head += need;
	}
}

/* Reads what the daemon sent p: 1 if something came (or the end). */
static int peer_read(struct peer *p)
{
	int moved = 0;
	while (p->fd >= 0) {
		/* Room for the rest of the message begun (peer_replies took
		 * the whole ones). */
		struct md__msg_hdr h;
		size_t need;
		if (md__rxbuf_next(&p->in, &h, &need) < 0)
			__builtin_trap();
		if (md__rxbuf_room(&p->in, need) != 0)
			return moved;
		union {
			struct cmsghdr h;
			char buf[CMSG_SPACE(4 * sizeof(int))];
		} ctl;
		struct iovec iov = { p->in.buf + p->in.len, p->in.cap - p->in.len };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
				     .msg_controllen = sizeof(ctl.buf) };
		ssize_t r = recvmsg(p->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return moved;
		/* A failed call (ECONNRESET: the daemon closed with our bytes
		 * unread) fills no control buffer: read, its stack garbage
		 * named descriptors to close, the daemon's among them. */
		if (r < 0)
			mh.msg_controllen = 0;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < n; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				close(fd);
			}
		}
		if (r <= 0) {
			peer_close(p);	/* the daemon hung up (or reset) */
			return 1;
		}
		p->in.len += (size_t)r;
		moved = 1;
		peer_replies(p);
	}
	return moved;
}

/* Puts what p has to send in its socket, as far as it takes it: 1 if
 * some went. */
static int peer_push(struct peer *p)
{
	if (p->fd < 0 || !p->out_len)
		return 0;
	ssize_t w = send(p->fd, p->out, p->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (w > 0) {
		p->out += w;
		p->out_len -= (size_t)w;
		return 1;
	}
	if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
		p->out_len = 0;	/* the daemon hung up: the rest is lost */
	return 0;
}

/* One wake-up of the daemon, if it has something to do, and the peers'
 * replies read: 1 if something moved. */
static int wake(struct md__daemon *d, struct peer *peers)
{
	int moved = 0;
	struct epoll_event evs[64];
	int n = epoll_wait(d->epfd, evs, 64, 0);
	/* References of agents gone are given back a wake-up's
	 * share at a time (d->draining): until none is left. */
	if (n > 0 || d->defer[0].head || d->defer[1].head || d->draining) {
		FILE *saved = daemon_stderr_begin();
		d->evs = evs;
		d->nev = n > 0 ? n : 0;
		md__server_events(d);
		daemon_stderr_end(saved);
		moved = 1;
	}
	for (int k = 0; k < FUZZ_PEERS; k++)
		if (!peers[k].deaf)
			moved |= peer_read(&peers[k]);
	return moved;
}

/* Runs the daemon and the peers until nothing moves. */
static void pump(struct md__daemon *d, struct peer *peers)
{
	for (long round = 0;; round++) {
		int moved = 0;
		for (int k = 0; k < FUZZ_PEERS; k++)
			moved |= peer_push(&peers[k]);
		moved |= wake(d, peers);
		if (!moved)
			return;
		if (round > FUZZ_ROUNDS_MAX)
			__builtin_trap();	/* the daemon wakes up for ever */
	}
}

/* Each slot's references in the pool are those of the agents of its
 * domain, and a slot is live exactly while it has some. */
static void check_refs(const struct md__daemon *d)
{
	for (const struct md__agent *a = d->agents; a; a = a->next) {
		uint64_t n = 0;
		for (size_t s = 0; s < a->refs_cap; s++)
			n += a->refs[s];
		if (n != a->nrefs || a->refs_cap > a->dom->pool.max_pages)
			__builtin_trap();
	}
	for (const struct md__domain *dom = d->domains; dom; dom = dom->next) {
		uint64_t total = 0;
		for (size_t s = 0; s < dom->pool.end; s++) {
			uint64_t held = 0;
			for (const struct md__agent *a = d->agents; a; a = a->next)
				if (a->dom == dom && s < a->refs_cap)
					held += a->refs[s];
			if (held != dom->pool.refs[s] ||
			    (dom->pool.state[s] == MD_SLOT_LIVE) != (held != 0))
				__builtin_trap();
			total += held;
		}
		if (total != dom->refs_total || md__pool_live(&dom->pool) > dom->pool.end)
			__builtin_trap();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int inited;
	struct peer peers[FUZZ_PEERS];

	if (!inited) {
		const char *log = getenv("MD_FUZZ_LOG");
		trace = log && strcmp(log, "1") == 0;
		if (!trace)
			quiet = fopen("/dev/null", "w");
		/* The first pool opens the files of /proc/self that the
		 * library keeps for good (common/sys.c): before any input
		 * counts the descriptors. */
		struct md__pool pool;
		if (md__pool_open(&pool, 1) == 0)
			md__pool_close(&pool);
		inited = 1;
	}
	int fds = count_fds();
	struct md__daemon *d = calloc(1, sizeof(*d));
	if (!d)
		return 0;
	d->lfd = d->sigfd = -1;
	d->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (d->epfd < 0) {
		free(d);
		return 0;
	}
	d->listen_ep.kind = MD_EP_LISTEN;
	d->signal_ep.kind = MD_EP_SIGNAL;
	d->pool_pages = FUZZ_POOL_PAGES;
	d->control_wait_ms = 0;	/* only FUZZ_OP_TICK times them out */
	d->status_bytes_per_s = 0;
	d->max_conns = 64;
	md__tunables_default(&d->tun);
	d->start_ms = md__now_ms();
	for (int k = 0; k < FUZZ_PEERS; k++)
		peers[k] = (struct peer){ .fd = -1 };
	with_exits = input_exits(data, size);

	size_t off = 0;
	while (off < size) {
		unsigned op = data[off++], act = op & FUZZ_OP_ACT;
		struct peer *p = &peers[op & FUZZ_OP_PEER];
		if (op & FUZZ_OP_EXIT)
			proc_exit(FUZZ_PID_OF(op & FUZZ_OP_PEER) - FUZZ_PID);
		if (op & FUZZ_OP_TICK) {
			FILE *saved = daemon_stderr_begin();
			md__control_tick(d);
			md__domains_trim(d);
			daemon_stderr_end(saved);
			pump(d, peers);
		}
		if (act == FUZZ_OP_SEND || act == FUZZ_OP_REST) {
			size_t len = size - off;
			if (act == FUZZ_OP_SEND) {
				len = size - off >= 3 ? get24(data + off) : 0;
				off = off + 3 <= size ? off + 3 : size;
				if (len > size - off)
					len = size - off;
			}
			if (p->out_len)
				pump(d, peers);	/* a held chunk of the same peer */
			if (p->fd < 0)
				peer_open(d, p, op & FUZZ_OP_PEER);
			if (p->fd >= 0) {
				p->out = data + off;
				p->out_len = len;
				p->deaf = (op & FUZZ_OP_DEAF) != 0;
			}
			off += len;
			if (op & FUZZ_OP_HOLD)
				continue;
		} else if (p->fd >= 0) {
			/* Its bytes held go in first, the daemon not woken: a
			 * client's send cut short by its timeout, then its
			 * hang-up. With FUZZ_OP_HOLD, the daemon wakes up
			 * once before it (a batch read, the rest deferred or
			 * left in the socket). */
			while (peer_push(p))
				;
			if (op & FUZZ_OP_HOLD)
				wake(d, peers);
			if (act == FUZZ_OP_HANGUP) {
				shutdown(p->fd, SHUT_WR);
				pump(d, peers);
			}
			peer_close(p);
		}
		pump(d, peers);
		check_refs(d);
	}
	for (int k = 0; k < FUZZ_PEERS; k++) {
		peers[k].deaf = 0;
		if (peers[k].fd >= 0)
			shutdown(peers[k].fd, SHUT_WR);
	}
	pump(d, peers);
	for (int k = 0; k < FUZZ_PEERS; k++)
		peer_close(&peers[k]);
	pump(d, peers);
	check_refs(d);

	/* As main.c stops it. */
	FILE *saved = daemon_stderr_begin();
	md__server_close(d);
	md__agent_free_all(d);
	md__domain_free_all(d);
	daemon_stderr_end(saved);
	close(d->epfd);
	free(d);
	proc_exit(0);
	proc_exit(1);
	if (count_fds() != fds)
		__builtin_trap();	/* a descriptor leaked */
	return 0;
}

/* Called by the replay after the corpus: a corpus whose HELLOs all fail
 * (another protocol version, another FUZZ_PID) reaches the refusals only.
 * Each reply type named here comes from a handler past them. `make
 * fuzz-seeds` writes sessions that reach them all. */
int md_fuzz_replay_check(void)
{
	static const unsigned want[] = {
		MD_MSG_WELCOME, MD_MSG_LOOKUP_R, MD_MSG_PUBLISH_R, MD_MSG_ACK, MD_MSG_STATUS_R,
		MD_MSG_CONTROL, MD_MSG_CONTROL_R, MD_MSG_ERROR, MD_MSG_CANDIDATES, MD_MSG_SHARE,
	};
	int bad = 0;
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!(replies_seen & (1u << want[i]))) {
			fprintf(stderr, "fuzz_daemon: no input of the corpus drew a %s from the daemon "
				"(run make fuzz-seeds)\n", md__msg_type_name(want[i]));
			bad = 1;
		}
	return bad;
}
