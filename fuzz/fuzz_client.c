/* fuzz_client.c - an agent's side of the protocol on whatever a daemon
 * sends: the client library (common/client.c: replies read in order, late
 * ones settled and what they granted given back, CONTROLs, CANDIDATES and
 * SHAREs queued, the receive buffer, descriptors passed) and what the
 * engine makes of it (engine/remote.c: the WELCOME's pool and its size, the
 * generation, slots of LOOKUP, PUBLISH and REF replies mapped over guest
 * RAM, CANDIDATES addresses visited by the scanner). memdedupd runs as root
 * or as the VMM's user, but a buggy one, or another program at its socket,
 * must not crash QEMU nor make the agent touch memory it did not map: a bad
 * reply is refused (an error, the connection dropped).
 *
 * An engine with memdedupd's pool is built in this process for each input,
 * with guest RAM of FC_RAM_PAGES (scans and merges need userfaultfd:
 * without it only the calls run). Its connect()s to the daemon (FC_SOCKET)
 * get one end of a socketpair instead (the link wraps connect), the other
 * end is the daemon, and the input says what it says and what the agent
 * calls (fuzz_client.h): bytes (with a pool's descriptor, or one that is no
 * pool), EOF, a close; every client call the engine and the agent make, a
 * connect, scanner steps, merges with slots of the input's choosing,
 * writes over merged pages, reaps, unregisters.
 *
 * One thread, and an input does the same each time: the daemon answers a
 * request only once the client has sent it (recvmsg is wrapped: first the
 * daemon reads, then it writes what it may), so replies given before a
 * call come in time, those given after it come late; and a wait for the
 * socket that nothing can end is over at once (poll is wrapped), its time
 * passed (CLOCK_MONOTONIC runs ahead by it). Seqs in the input may be
 * relative to the last request (fuzz_client.h), so an input answers the
 * requests it causes whatever came before. What the client sends must
 * decode, seqs rising, and give back no slot more often than the daemon
 * granted it (a ledger, below: one more would free a pool page a guest
 * may map); at the end the engine and the connection are torn down,
 * leak-free (the replay runs under ASan's leak checker), and every
 * descriptor must be closed. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "client.h"
#include "fuzz_client.h"
#include "fuzz_util.h"
#include "log.h"
#include "merge.h"
#include "remote.h"
#include "rxbuf.h"
#include "scanner.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);
int __wrap_connect(int fd, const struct sockaddr *sa, socklen_t len);
int __real_connect(int fd, const struct sockaddr *sa, socklen_t len);
ssize_t __wrap_recvmsg(int fd, struct msghdr *mh, int flags);
ssize_t __real_recvmsg(int fd, struct msghdr *mh, int flags);
int __wrap_poll(struct pollfd *p, nfds_t n, int timeout);
int __real_poll(struct pollfd *p, nfds_t n, int timeout);
int __wrap_clock_gettime(clockid_t id, struct timespec *ts);
int __real_clock_gettime(clockid_t id, struct timespec *ts);

#define PG MD_EPAGE

/* The daemon's end of a connection. What the input has it write is
 * queued, and goes to the socket when the client reads it, up to the first
 * reply to a request the client has not sent yet: a daemon answers only
 * what it was asked (messages of seq 0 it sends when it likes, in order
 * with the rest). So a reply the input gives before a call comes in time,
 * even when the client reads what is waiting first; one given after the
 * call timed out comes late. */
struct gate {
	size_t at;                 /* where a reply's header starts in q */
	uint32_t seq;
	int late;                  /* its request was read (its call returned) before */
};
struct fdmark {
	size_t at;                 /* the byte of q a descriptor goes with */
	unsigned kind;             /* FC_FD_* */
};
struct dside {
	int fd;                    /* -1: none */
	int cfd;                   /* the client's end (its number) */
	uint32_t sent;             /* seq of the last request read from the client */
	uint32_t types;            /* the types of the requests read, since the harness looked */
	struct md__rxbuf in;       /* what the client sent, framed */
	unsigned char *q;          /* what the daemon says, seqs made absolute */
	size_t qlen, qcap, qrel;   /* bytes [qrel, qlen) are not in the socket yet */
	size_t skip, hdr_at;       /* the walk of q: payload bytes left, the next header */
	int lost;                  /* no header where one should be: the client stops there */
	struct gate *gate;
	size_t ngate, gate_cap, gate_next;
	struct fdmark fdm[8];
	unsigned nfdm;
	int hang;                  /* shut down writing once all of q is out */
	uint32_t unref[8];         /* the first slots of the last UNREF of several */
	unsigned nunref;
	/* The ledger of references (see below): the pool's generation once
	 * the engine took the connection, its REF, UNREF and PUBLISH requests,
	 * the replies to them out before the requests were read. */
	uint64_t gen;
	int has_gen;
	struct req *req;
	size_t nreq, req_cap;
	size_t acct_next;          /* the next gate whose reply is not accounted */
	struct reply *early;
	size_t nearly, early_cap;
	uint32_t lookup_seq, lookup_n; /* the last LOOKUP_R out: its seq, its count */
};

/* What the daemon says first on the next connections (FC_SEND with none). */
#define BLOCKS 4
struct block {
	uint8_t *bytes;
	size_t len;
	unsigned fd_kind;
	int hang;                  /* then the daemon hangs up (FC_HANGUP, FC_CLOSE) */
};

static struct {
	struct block block[BLOCKS];
	unsigned nblock;
	struct dside made[2];      /* the connections the last connect made */
	unsigned nmade;
	struct dside *d;           /* the engine's connection's */
} conn;

/* Outcomes the corpus reached (replay only). */
enum {
	SEEN_CONNECT, SEEN_RETRY, SEEN_SAME_DAEMON, SEEN_LOOKUP, SEEN_PUBLISHED, SEEN_REF,
	SEEN_LATE, SEEN_GIVE_BACK, SEEN_SPLIT, SEEN_CONTROL, SEEN_CANDIDATES, SEEN_SHARE,
	SEEN_REQUEST, SEEN_BROKEN, SEEN_LATE_REF_REFUSED, SEEN_LATE_PUBLISH_BROKEN, SEEN_EACH_BROKEN,
	SEEN_DONES_KEPT, SEEN_UNREF_UNANSWERED, SEEN_PUBLISH_BROKEN, SEEN_LOOKUP_BROKEN, SEEN_REFUSED_0,
	SEEN_STRAY_PUBLISH_R, SEEN_MERGE, SEEN_SCAN_MERGE, SEEN_CANDIDATE_MERGE, SEEN_END
};
static const char *const seen_name[SEEN_END] = {
	"a connect", "a connect on the second try (HELLO without its flags)",
	"a reconnect to the same daemon", "a LOOKUP answered", "a page published",
	"a REF granted", "a request timed out", "a late grant given back",
	"a refused UNREF sent again split", "a CONTROL", "CANDIDATES", "a SHARE",
	"a STATUS or CONTROL answered", "a reply out of protocol",
	"a late REF refused", "a late PUBLISH answered with another count of slots",
	"a PUBLISH_EACH answered out of protocol",
	"CONTROL_DONEs kept behind a late reply, sent in order once it came",
	"an UNREF sent whole, the daemon gone before its ACK",
	"a PUBLISH answered in time with another count of slots",
	"a LOOKUP answered with another count of entries",
	"a REF refused by an ERROR of status 0",
	"a PUBLISH_R answering a request owed none (a seq answered before)",
	"a merge with the input's slots", "a scanner's merge", "a merge of a candidate",
};
static uint32_t seen;
/* The tokens of the CONTROL_DONEs the client kept (its call said 0, the
 * daemon read none), in order; how many of them came later, in order. */
static uint32_t kept[8];
static unsigned nkept, kept_sent;
static int engine_ran;	/* an input had userfaultfd: scans and merges ran */
static FILE *trace;	/* MD_FUZZ_LOG=1: ops, what each side says, and the library's log */

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* The references the daemon granted this process, and those it gave back,
 * slot by slot and pool by pool (generation): a slot given back more often
 * than it was granted is one the daemon frees while a guest page may still
 * map it. Granted: each slot of a PUBLISH_R that answers a PUBLISH of as
 * many pages, each slot of a REF whose ACK says 0, as the daemon writes
 * them (whether the client reads them or not: a ledger that errs, errs
 * towards granted). Given back: each slot of an UNREF as the daemon reads
 * it, but for those its ACK refused. The harness's own calls give back
 * only what it was granted (the held list), or taint the slots they name. */
struct req {
	uint32_t seq, type, n;
	uint32_t *slots;           /* a REF's or UNREF's; a PUBLISH: n pages */
};
struct reply {
	uint32_t seq, type, n, first;
	int32_t status;
	int late;
};
struct lent {
	uint64_t gen;
	uint32_t slot, granted, back;
	uint8_t used, taint;
};
#define LEDGER 8192
static struct lent ledger[LEDGER];

static struct lent *lent_of(uint64_t gen, uint32_t slot)
{
	uint64_t h = (gen * 0x9e3779b97f4a7c15ull) ^ (slot * 0xc2b2ae3d27d4eb4full);
	for (size_t i = 0; i < 64; i++) {
		struct lent *l = &ledger[(h + i) % LEDGER];
		if (!l->used)
			*l = (struct lent){ .gen = gen, .slot = slot, .used = 1 };
		if (l->gen == gen && l->slot == slot)
			return l;
	}
	return NULL;	/* full there: that slot goes unchecked */
}

static void taint(uint64_t gen, const uint32_t *slot, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct lent *l = lent_of(gen, slot[i]);
		if (l)
			l->taint = 1;
	}
}

static void granted(uint64_t gen, uint32_t slot, int delta)
{
	struct lent *l = lent_of(gen, slot);
	if (l)
		l->granted += (uint32_t)delta;
}

static void given_back(uint64_t gen, uint32_t slot, int delta)
{
	struct lent *l = lent_of(gen, slot);
	if (!l)
		return;
	l->back += (uint32_t)delta;
	if (delta > 0 && !l->taint && l->back > l->granted) {
		fprintf(stderr, "fuzz_client: slot %u of pool %llu given back %u times, granted %u\n",
			slot, (unsigned long long)gen, l->back, l->granted);
		__builtin_trap();	/* a reference given back that was not held */
	}
}

static const struct req *req_of(const struct dside *d, uint32_t seq)
{
	size_t lo = 0, hi = d->nreq;
	while (lo < hi) {	/* in seq order: the order they came */
		size_t mid = (lo + hi) / 2;
		if (d->req[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < d->nreq && d->req[lo].seq == seq ? &d->req[lo] : NULL;
}

/* A reply of the daemon's to the request q (read): what it grants or
 * refuses. */
static void settle_reply(const struct dside *d, const struct req *q, const struct reply *r)
{
	/* Late, a refused REF grants nothing to give back, and a PUBLISH_R
	 * of another count is out of protocol: neither hands the client
	 * slots it may give back (the ledger traps if it does). */
	if (r->late && q->type == MD_MSG_REF && r->type == MD_MSG_ACK && r->status != 0)
		seen |= 1u << SEEN_LATE_REF_REFUSED;
	if (r->late && q->type == MD_MSG_PUBLISH && r->type == MD_MSG_PUBLISH_R && r->n != q->n)
		seen |= 1u << SEEN_LATE_PUBLISH_BROKEN;
	if (!r->late && q->type == MD_MSG_PUBLISH && r->type == MD_MSG_PUBLISH_R && r->n != q->n)
		seen |= 1u << SEEN_PUBLISH_BROKEN;
	if (q->type == MD_MSG_REF && r->type == MD_MSG_ERROR && r->status == 0)
		seen |= 1u << SEEN_REFUSED_0;
	if (q->type == MD_MSG_PUBLISH && r->type == MD_MSG_PUBLISH_R && r->n == q->n) {
		for (uint32_t i = 0; i < r->n; i++)
			granted(d->gen, r->first + i, 1);
	} else if (q->type == MD_MSG_REF && r->type == MD_MSG_ACK && r->status == 0) {
		for (uint32_t i = 0; i < q->n; i++)
			granted(d->gen, q->slots[i], 1);
	} else if (q->type == MD_MSG_UNREF && r->type == MD_MSG_ACK && r->status != 0) {
		for (uint32_t i = 0; i < q->n; i++)
			given_back(d->gen, q->slots[i], -1);
	}
}

/* Accounts the replies now wholly out in the socket. */
static void dside_account(struct dside *d)
{
	static struct md__msg m;
	for (; d->acct_next < d->ngate; d->acct_next++) {
		const struct gate *g = &d->gate[d->acct_next];
		if (g->at + MD_MSG_HDR_SIZE > d->qrel)
			return;
		size_t len = MD_MSG_HDR_SIZE + (size_t)get32(d->q + g->at + 8);
		if (g->at + len > d->qrel)
			return;
		if (!d->has_gen || md__msg_decode(d->q + g->at, len, &m) != 0)
			continue;	/* the client drops the connection at it */
		struct reply r = { g->seq, m.hdr.type, 0, 0, 0, g->late };
		if (m.hdr.type == MD_MSG_PUBLISH_R)
			r.first = m.u.publish_r.first_slot, r.n = m.u.publish_r.n;
		else if (m.hdr.type == MD_MSG_ACK)
			r.status = m.u.ack.status;
		else if (m.hdr.type == MD_MSG_ERROR)
			r.status = m.u.text.status;	/* grants nothing, whatever it says */
		else if (m.hdr.type == MD_MSG_LOOKUP_R)
			d->lookup_seq = g->seq, d->lookup_n = m.u.lookup_r.n;
		if (m.hdr.type != MD_MSG_PUBLISH_R && m.hdr.type != MD_MSG_ACK && m.hdr.type != MD_MSG_ERROR)
			continue;
		const struct req *q = req_of(d, g->seq);
		if (m.hdr.type == MD_MSG_PUBLISH_R && (!q || q->type != MD_MSG_PUBLISH) &&
		    (int32_t)(g->seq - d->sent) <= 0)
			seen |= 1u << SEEN_STRAY_PUBLISH_R;
		if (q) {
			settle_reply(d, q, &r);
		} else if ((int32_t)(g->seq - d->sent) > 0) {
			/* Out before its request (a daemon that hung up wrote
			 * all it had): accounted when the request comes. */
			if (d->nearly == d->early_cap) {
				size_t cap = d->early_cap ? 2 * d->early_cap : 16;
				struct reply *e = realloc(d->early, cap * sizeof(*e));
				if (!e)
					continue;
				d->early = e;
				d->early_cap = cap;
			}
			d->early[d->nearly++] = r;
		}
	}
}

/* A request read from the client: into the ledger. */
static void dside_request(struct dside *d, const struct md__msg *m)
{
	unsigned type = m->hdr.type;
	if (!d->has_gen || (type != MD_MSG_REF && type != MD_MSG_UNREF && type != MD_MSG_PUBLISH))
		return;
	if (d->nreq == d->req_cap) {
		size_t cap = d->req_cap ? 2 * d->req_cap : 64;
		struct req *r = realloc(d->req, cap * sizeof(*r));
		if (!r)
			return;
		d->req = r;
		d->req_cap = cap;
	}
	struct req q = { m->hdr.seq, type, type == MD_MSG_PUBLISH ? m->u.publish.n : m->u.refs.n, NULL };
	if (type != MD_MSG_PUBLISH) {
		q.slots = malloc(q.n * sizeof(*q.slots));
		if (!q.slots)
			return;
		memcpy(q.slots, m->u.refs.slot, q.n * sizeof(*q.slots));
	}
	d->req[d->nreq++] = q;
	if (type == MD_MSG_UNREF)
		for (uint32_t i = 0; i < q.n; i++)
			given_back(d->gen, q.slots[i], 1);
	for (size_t i = 0; i < d->nearly; i++)
		if (d->early[i].seq == q.seq)
			settle_reply(d, &q, &d->early[i]);
}

/* Queues len bytes the daemon says (with a descriptor of fd_kind): their
 * relative seqs made absolute from d->sent, each reply's place noted. */
static void dside_say(struct dside *d, const uint8_t *b, size_t len, unsigned fd_kind)
{
	if (trace)
		fprintf(trace, "fuzz_client: daemon says %zu bytes%s\n", len, fd_kind ? " with a descriptor" : "");
	if (!len)
		return;	/* a descriptor goes with a byte at least */
	if (d->qlen + len > d->qcap) {
		size_t cap = d->qcap ? d->qcap : 4096;
		while (cap < d->qlen + len)
			cap *= 2;
		unsigned char *q = realloc(d->q, cap);
		if (!q)
			return;
		d->q = q;
		d->qcap = cap;
	}
	if (fd_kind && d->nfdm < sizeof(d->fdm) / sizeof(d->fdm[0]))
		d->fdm[d->nfdm++] = (struct fdmark){ d->qlen, fd_kind };
	memcpy(d->q + d->qlen, b, len);
	d->qlen += len;
	while (!d->lost) {
		if (d->hdr_at < d->qlen && d->skip) {
			size_t k = d->qlen - d->hdr_at < d->skip ? d->qlen - d->hdr_at : d->skip;
			d->hdr_at += k;
			d->skip -= k;
			continue;
		}
		if (d->qlen - d->hdr_at < MD_MSG_HDR_SIZE)
			break;
		unsigned char *h = d->q + d->hdr_at;
		if (get32(h) != MD_MSG_MAGIC) {
			d->lost = 1;
			break;
		}
		uint32_t seq = get32(h + 12);
		if (seq & 0x80000000u)
			seq = d->sent + (uint32_t)((int32_t)(seq << 1) >> 1);
		if (d->hdr_at + 12 >= d->qrel)	/* not out yet (but a header cut by a call) */
			put32(h + 12, seq);
		if (seq) {
			if (d->ngate == d->gate_cap) {
				size_t cap = d->gate_cap ? 2 * d->gate_cap : 64;
				struct gate *g = realloc(d->gate, cap * sizeof(*g));
				if (!g)
					break;
				d->gate = g;
				d->gate_cap = cap;
			}
			d->gate[d->ngate++] = (struct gate){ d->hdr_at, seq, (int32_t)(seq - d->sent) <= 0 };
		}
		d->skip = get32(h + 8);
		d->hdr_at += MD_MSG_HDR_SIZE;
	}
}

static const unsigned char *pattern(unsigned k)
{
	static unsigned char pat[FC_PATTERNS][PG];
	static int made;
	if (!made) {
		for (unsigned p = 0; p < FC_PATTERNS; p++) {
			uint32_t x = p * 2654435761u + 1;
			for (unsigned i = 0; i < PG; i += 4) {
				x = x * 1103515245u + 12345u;
				memcpy(pat[p] + i, &x, 4);
			}
		}
		made = 1;
	}
	return pat[k % FC_PATTERNS];
}

/* A descriptor of kind (FC_FD_*) into fds (up to 2); how many. */
static int make_fds(unsigned kind, int *fds)
{
	if (kind == FC_FD_NONE)
		return 0;
	if (kind == FC_FD_PIPE) {
		int p[2];
		if (pipe2(p, O_CLOEXEC) != 0)
			return 0;
		close(p[1]);
		fds[0] = p[0];
		return 1;
	}
	if (kind == FC_FD_TWO) {
		int n = make_fds(FC_FD_POOL, fds);
		return n + make_fds(FC_FD_POOL, fds + n);
	}
	int fd = memfd_create("memdedup-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return 0;
	unsigned pages = kind == FC_FD_SHORT ? 2 : kind == FC_FD_EMPTY ? 0 : FC_POOL_PAGES;
	for (unsigned k = 0; k < pages; k++)
		if (pwrite(fd, pattern(k), PG, (off_t)k * PG) != PG)
			break;
	if (kind != FC_FD_UNSEALED)
		fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK);
	if (kind == FC_FD_WRITABLE) {
		fds[0] = fd;
		return 1;
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	fds[0] = open(path, O_RDONLY | O_CLOEXEC);
	close(fd);
	return fds[0] >= 0;
}

/* Sends q[qrel, upto) (a descriptor with the first byte if one goes there):
 * what the socket takes. 0, or -1 when it takes no more now. */
static int dside_send(struct dside *d, size_t upto, unsigned fd_kind)
{
	int fds[2], nfd = make_fds(fd_kind, fds);
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(2 * sizeof(int))];
	} ctl;
	struct iovec iov = { d->q + d->qrel, upto - d->qrel };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfd) {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE((size_t)nfd * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN((size_t)nfd * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, (size_t)nfd * sizeof(int));
	}
	ssize_t w = sendmsg(d->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	for (int i = 0; i < nfd; i++)
		close(fds[i]);
	if (w <= 0)
		return -1;
	d->qrel += (size_t)w;
	dside_account(d);
	return d->qrel == upto ? 0 : -1;
}

/* Puts in the socket what the daemon has said, but replies to requests
 * not sent yet (all of it with all). */
static void dside_release(struct dside *d, int all)
{
	if (d->fd < 0)
		return;
	while (d->gate_next < d->ngate && (d->gate[d->gate_next].at < d->qrel ||
	       (int32_t)(d->gate[d->gate_next].seq - d->sent) <= 0))
		d->gate_next++;
	size_t upto = d->gate_next < d->ngate && !all ? d->gate[d->gate_next].at : d->qlen;
	while (d->qrel < upto) {
		size_t end = upto;
		unsigned kind = 0;
		for (unsigned i = 0; i < d->nfdm; i++) {
			if (d->fdm[i].at == d->qrel)
				kind = d->fdm[i].kind;
			else if (d->fdm[i].at > d->qrel && d->fdm[i].at < end)
				end = d->fdm[i].at;
		}
		if (trace)
			fprintf(trace, "fuzz_client: daemon writes %zu bytes%s\n", end - d->qrel,
				kind ? " with a descriptor" : "");
		if (dside_send(d, end, kind) != 0)
			return;
	}
	if (d->hang && d->qrel == d->qlen) {
		shutdown(d->fd, SHUT_WR);
		d->hang = 0;
	}
}

static void dside_close(struct dside *d)
{
	if (d->fd >= 0)
		close(d->fd);
	md__rxbuf_free(&d->in);
	free(d->q);
	free(d->gate);
	for (size_t i = 0; i < d->nreq; i++)
		free(d->req[i].slots);
	free(d->req);
	free(d->early);
	*d = (struct dside){ .fd = -1, .cfd = -1 };
}

/* Reads what the client sent: each message must decode, each request's
 * seq higher than the last. */
static void dside_read(struct dside *d)
{
	static struct md__msg m;
	while (d->fd >= 0) {
		struct md__msg_hdr h;
		size_t need;
		int got = md__rxbuf_next(&d->in, &h, &need);
		if (got < 0)
			__builtin_trap();	/* the client sent a bad header */
		if (got) {
			if (md__msg_decode(d->in.buf + d->in.head, need, &m) != 0)
				__builtin_trap();	/* or a malformed message */
			if (h.seq == 0 || (int32_t)(h.seq - d->sent) <= 0)
				__builtin_trap();	/* or seqs out of order */
			d->sent = h.seq;
			d->types |= 1u << h.type;
			dside_request(d, &m);
			if (h.type == MD_MSG_CONTROL_DONE && nkept && kept[0] == m.u.control_done.token) {
				memmove(kept, kept + 1, --nkept * sizeof(kept[0]));
				if (++kept_sent >= 2)
					seen |= 1u << SEEN_DONES_KEPT;
			}
			if (h.type == MD_MSG_UNREF && m.u.refs.n > 1) {
				d->nunref = m.u.refs.n < 8 ? m.u.refs.n : 8;
				memcpy(d->unref, m.u.refs.slot, d->nunref * sizeof(*d->unref));
			}
			for (unsigned i = 0; h.type == MD_MSG_UNREF && m.u.refs.n == 1 && i < d->nunref; i++)
				if (d->unref[i] == m.u.refs.slot[0])
					seen |= 1u << SEEN_SPLIT;	/* one of them alone */
			if (trace)
				fprintf(trace, "fuzz_client: client sent %s seq %u\n", md__msg_type_name(h.type),
					h.seq);
			d->in.head += need;
			continue;
		}
		if (md__rxbuf_room(&d->in, need) != 0)
			return;
		ssize_t r = recv(d->fd, d->in.buf + d->in.len, d->in.cap - d->in.len, MSG_DONTWAIT);
		if (r <= 0)
			return;
		d->in.len += (size_t)r;
	}
}

static void bufs_big(int fd)
{
	int big = 4 << 20;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) != 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
}

/* md__client_connect's connect(): to FC_SOCKET it gets one end of a
 * socketpair, the daemon the other, with what the next block says queued. */
int __wrap_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
	int sv[2];
	if (sa->sa_family != AF_UNIX || strcmp(un->sun_path, FC_SOCKET) != 0)
		return __real_connect(fd, sa, len);
	if (conn.nmade == 2 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		errno = ECONNREFUSED;
		return -1;
	}
	if (dup3(sv[0], fd, O_CLOEXEC) < 0) {
		close(sv[0]);
		close(sv[1]);
		errno = ECONNREFUSED;
		return -1;
	}
	close(sv[0]);
	bufs_big(fd);
	bufs_big(sv[1]);
	struct dside *d = &conn.made[conn.nmade++];
	*d = (struct dside){ .fd = sv[1], .cfd = fd };
	if (conn.nblock) {
		struct block b = conn.block[0];
		memmove(conn.block, conn.block + 1, --conn.nblock * sizeof(b));
		dside_say(d, b.bytes, b.len, b.fd_kind);
		d->hang = b.hang;
		free(b.bytes);
	}
	return 0;
}

/* The daemon's end of the client's socket fd, or NULL. The newest first:
 * a client's descriptor number is its closed predecessor's. */
static struct dside *dside_of(int fd)
{
	for (unsigned i = conn.nmade; i-- > 0;)
		if (conn.made[i].fd >= 0 && conn.made[i].cfd == fd)
			return &conn.made[i];
	return conn.d && conn.d->fd >= 0 && conn.d->cfd == fd ? conn.d : NULL;
}

/* The client reads: the daemon reads first what it was sent, and answers. */
ssize_t __wrap_recvmsg(int fd, struct msghdr *mh, int flags)
{
	struct dside *d = dside_of(fd);
	if (d) {
		dside_read(d);
		dside_release(d, 0);
	}
	return __real_recvmsg(fd, mh, flags);
}

/* Time the client waited in vain: CLOCK_MONOTONIC is that much ahead. */
static int64_t skew_ms;

/* The client waits for its socket: in this one thread nothing comes that
 * is not there now, so the wait is over at once and its time has passed. */
int __wrap_poll(struct pollfd *p, nfds_t n, int timeout)
{
	struct dside *d = n == 1 && timeout > 0 ? dside_of(p->fd) : NULL;
	if (!d)
		return __real_poll(p, n, timeout);
	dside_read(d);
	dside_release(d, 0);
	int r = __real_poll(p, n, 0);
	if (r == 0)
		__atomic_add_fetch(&skew_ms, timeout, __ATOMIC_RELAXED);
	return r;
}

int __wrap_clock_gettime(clockid_t id, struct timespec *ts)
{
	int r = __real_clock_gettime(id, ts);
	int64_t skew = __atomic_load_n(&skew_ms, __ATOMIC_RELAXED);
	if (r == 0 && id == CLOCK_MONOTONIC && skew) {
		int64_t ns = (int64_t)ts->tv_nsec + skew % 1000 * 1000000;
		ts->tv_sec += (time_t)(skew / 1000 + ns / 1000000000);
		ts->tv_nsec = (long)(ns % 1000000000);
	}
	return r;
}

struct fc {
	struct md__engine *e;
	struct md__remote rm;
	struct md__scanner s;
	int full;                  /* md__engine_init ran (userfaultfd): scans, merges */
	int registered;            /* ram is the engine's (at the first op that needs it:
				    * under ASan, reading smaps is most of an input's time) */
	unsigned char *ram;
	struct dside d;            /* the daemon's end of dc's connection */
	struct md__client *dc;
};

static void pattern_fill(unsigned char *page, unsigned i)
{
	memcpy(page, pattern(i), PG);
}

static int engine_up(struct fc *f)
{
	struct md__engine_options o = { .pool_pages = 64 };
	f->e = calloc(1, sizeof(*f->e));
	if (!f->e)
		return -ENOMEM;
	f->full = md__engine_init(f->e, &o) == 0;
	engine_ran |= f->full;
	if (!f->full) {
		/* What the remote pool's calls use of an engine. */
		memset(f->e, 0, sizeof(*f->e));
		f->e->pool.fd = f->e->pool.ro_fd = f->e->pagemap_fd = -1;
		pthread_rwlock_init(&f->e->regions_lock, NULL);
		pthread_mutex_init(&f->e->lock, NULL);
		pthread_mutex_init(&f->e->unref_lock, NULL);
	}
	if (md__remote_init(&f->rm, FC_SOCKET, "fuzz") != 0)
		goto down;
	f->e->remote = &f->rm;
	f->ram = mmap((void *)(uintptr_t)FC_RAM_ADDR, FC_RAM_PAGES * PG, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (f->ram == MAP_FAILED)
		f->ram = mmap(NULL, FC_RAM_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (f->ram == MAP_FAILED)
		goto fini;
	for (unsigned i = 0; i < FC_RAM_PAGES; i++)
		pattern_fill(f->ram + i * PG, i);
	if (f->full)
		md__scanner_init(&f->s, f->e, NULL);
	f->d = (struct dside){ .fd = -1, .cfd = -1 };
	conn.d = &f->d;
	return 0;
fini:
	md__remote_fini(&f->rm);
down:
	if (f->full)
		md__engine_fini(f->e);
	free(f->e);
	return -ENOMEM;
}

static void engine_down(struct fc *f)
{
	if (f->full) {
		md__scanner_free(&f->s);
		md__engine_fini(f->e);
	} else {
		free(f->e->unref_q);
		pthread_mutex_destroy(&f->e->unref_lock);
		pthread_mutex_destroy(&f->e->lock);
		pthread_rwlock_destroy(&f->e->regions_lock);
	}
	md__remote_fini(&f->rm);
	munmap(f->ram, FC_RAM_PAGES * PG);
	free(f->e);
	dside_close(&f->d);
	conn.d = NULL;
	for (unsigned i = 0; i < conn.nblock; i++)
		free(conn.block[i].bytes);
	conn.nblock = 0;
}

/* md__engine_remote_connect, as the agent's thread calls it: when not
 * connected. The connection it kept is the last it made. */
static int op_connect(struct fc *f)
{
	if (md__remote_connected(&f->rm))
		return 0;
	uint64_t gen = f->rm.generation;
	int had = f->rm.connects != 0;
	conn.nmade = 0;
	int err = md__engine_remote_connect(f->e);
	unsigned made = conn.nmade;
	for (unsigned i = 0; i < made; i++) {
		dside_read(&conn.made[i]);
		if (!err && i + 1 == made) {
			dside_close(&f->d);
			f->d = conn.made[i];
			f->d.gen = f->rm.generation;
			f->d.has_gen = 1;
			f->dc = f->rm.c;
		} else {
			dside_close(&conn.made[i]);
		}
	}
	conn.nmade = 0;
	for (unsigned i = 0; i < conn.nblock; i++)
		free(conn.block[i].bytes);
	conn.nblock = 0;
	if (!err) {
		seen |= 1u << SEEN_CONNECT;
		if (made == 2)
			seen |= 1u << SEEN_RETRY;
		if (had && f->rm.generation == gen)
			seen |= 1u << SEEN_SAME_DAEMON;
	}
	return err;
}

/* References the harness's calls were granted and hold: what they give
 * back (an UNREF, give_back, a merge that takes it over) when they do not
 * name slots at random, which taints those slots in the ledger. */
#define HELD 1024
static struct held_ref {
	uint64_t gen;
	uint32_t slot;
} held[HELD];
static size_t nheld;

static void hold(uint64_t gen, const uint32_t *slot, size_t n)
{
	for (size_t i = 0; i < n && nheld < HELD; i++)
		held[nheld++] = (struct held_ref){ gen, slot[i] };
}

/* Up to n slots of pool gen held, from the (k modulo their count)-th on:
 * let go of. How many. */
static size_t unhold(uint64_t gen, unsigned k, size_t n, uint32_t *slot)
{
	size_t count = 0, got = 0;
	for (size_t i = 0; i < nheld; i++)
		count += held[i].gen == gen;
	if (!count)
		return 0;
	k %= count;
	for (size_t i = 0, j = 0; i < nheld && got < n;) {
		if (held[i].gen == gen && j++ >= k) {
			slot[got++] = held[i].slot;
			memmove(&held[i], &held[i + 1], (--nheld - i) * sizeof(held[0]));
			continue;
		}
		i++;
	}
	return got;
}

/* Slot k of a run an argument byte b names: from b on, or with b past 191
 * from near the top of the slots' range (wrapping past it). */
static uint32_t slot_of(unsigned b, size_t k)
{
	return (b < 192 ? b : UINT32_MAX - (255 - b)) + (uint32_t)k;
}

/* 1 + m slots from b (slot_of) into slot: how many. */
static size_t slot_run(unsigned b, unsigned m, uint32_t *slot)
{
	for (unsigned k = 0; k <= m; k++)
		slot[k] = slot_of(b, k);
	return (size_t)m + 1;
}

/* 1 + m slots into slot: with from_held, held ones from the (b % 64)-th
 * (fewer if fewer are held, one at least); else from b (slot_of), tainted:
 * they may be none of ours. How many. */
static size_t some_slots(uint64_t gen, int from_held, unsigned m, unsigned b, uint32_t *slot)
{
	size_t n = from_held ? unhold(gen, b % 64, 1 + m, slot) : 0;
	if (n)
		return n;
	n = slot_run(b, m, slot);
	taint(gen, slot, n);
	return n;
}

/* n guest pages from page i on (wrapping), their hashes. */
static void guest_pages(const struct fc *f, size_t n, uint64_t *hash, uint64_t *addr, const void **page)
{
	for (size_t k = 0; k < n; k++) {
		const unsigned char *p = f->ram + k % FC_RAM_PAGES * PG;
		if (hash)
			hash[k] = md__page_hash(p);
		if (addr)
			addr[k] = (uintptr_t)p;
		if (page)
			page[k] = p;
	}
}

static uint64_t merged(const struct fc *f)
{
	return f->full ? f->s.st.merged_scan + f->s.st.merged_candidate : 0;
}

/* The call op (FC_*) with arguments a, b and flags fl. Returns its result. */
static long op_call(struct fc *f, unsigned op, unsigned fl, unsigned a, unsigned b)
{
	static uint64_t hash[MD_LOOKUP_MAX], addr[MD_LOOKUP_MAX], tag[MD_LOOKUP_MAX], cand[MD_CLIENT_CANDIDATES];
	static uint32_t slot[MD_LOOKUP_MAX];
	static const void *page[MD_PUBLISH_MAX];
	static int status[MD_PUBLISH_MAX];
	static unsigned char pages[16 * PG];
	struct md__remote *rm = &f->rm;
	struct md__client *c = rm->c;
	uint64_t gen = rm->generation;
	long r = 0;
	size_t n;

	switch (op) {
	case FC_CONNECT:
		return op_connect(f);
	case FC_DROP:
		md__engine_remote_drop(f->e);
		return 0;
	case FC_SLEEP:
		__atomic_add_fetch(&skew_ms, MD_CLIENT_LATE_MAX_MS + 1, __ATOMIC_RELAXED);
		return 0;
	case FC_SMALL_BUF: {
		/* Requests then go a piece at a time, as the daemon reads. */
		int small = 4096;
		return c ? setsockopt(md__client_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) : -ENOTCONN;
	}
	case FC_LOOKUP:
		n = fl & 1 ? MD_LOOKUP_MAX : 1 + a % 16;
		guest_pages(f, n, hash, addr, NULL);
		for (size_t k = 0; k < n; k++)
			tag[k] = k % 3 == 1 ? md__read_tag(md__read_key(1, 2), k * PG) : 0;
		r = md__remote_lookup_n(rm, hash, addr, tag, (uint32_t)n, slot);
		/* Its reply (the last LOOKUP_R out, to the last request read)
		 * named another count: the entries past it would be stale. */
		if (f->d.lookup_seq && f->d.lookup_seq == f->d.sent && f->d.lookup_n != n) {
			if (!r) {
				fprintf(stderr, "fuzz_client: a LOOKUP of %zu taken from a reply of %u\n", n,
					f->d.lookup_n);
				__builtin_trap();
			}
			if (r == -EPROTO)
				seen |= 1u << SEEN_LOOKUP_BROKEN;
		}
		if (!r)
			seen |= 1u << SEEN_LOOKUP;
		return r;
	case FC_PUBLISH_EACH:
		n = 1 + a % 16;
		guest_pages(f, n, hash, NULL, page);
		r = md__remote_publish_each(rm, hash, page, (uint32_t)n, slot, status, fl & 1 ? gen + 1 : gen);
		if (r == -EPROTO)
			seen |= 1u << SEEN_EACH_BROKEN;
		for (size_t k = 0; !r && k < n; k++) {
			if (status[k])
				continue;
			seen |= 1u << SEEN_PUBLISHED;
			hold(gen, &slot[k], 1);
		}
		return r;
	case FC_PUBLISH:
		if (!c)
			return -ENOTCONN;
		n = 1 + a % 16;
		for (size_t k = 0; k < n; k++) {
			pattern_fill(pages + k * PG, (unsigned)k);
			hash[k] = md__page_hash(pages + k * PG);
		}
		r = md__client_publish(c, hash, pages, (uint32_t)n, slot);
		for (size_t k = 0; !r && k < n; k++)
			hold(gen, (uint32_t[]){ slot[0] + (uint32_t)k }, 1);
		return r;
	case FC_REF:
		/* A REF asks for references of its own: the slots it names
		 * need not be held, and are not tainted, so that the ledger
		 * sees whatever the client gives back of them. */
		n = fl & 1 ? some_slots(gen, fl & 4, a % 8, b, slot) : slot_run(b, a % 8, slot);
		r = md__remote_ref_n(rm, slot, (uint32_t)n, fl & 1 ? -1 : 1, fl & 2 ? gen + 1 : gen);
		if (!r && !(fl & 1)) {
			seen |= 1u << SEEN_REF;
			if (!(fl & 2))
				hold(gen, slot, n);
		}
		return r;
	case FC_REPORT:
		for (size_t k = 0; k < 8; k++)
			hash[k] = k * 1000;
		return md__remote_report(rm, hash, a % 9);
	case FC_READS: {
		struct md__read_run run = { md__read_key(1, 2), 0, (uintptr_t)f->ram, 1 + a % 8 };
		return md__remote_reads(rm, &run, 1);
	}
	case FC_CONTROL_DONE:
		return md__remote_control_done(rm, a, -(int)(a % 4), a % 2 ? "fuzz" : NULL);
	case FC_NEXT_CONTROL: {
		struct md__msg_control ctl;
		for (n = 0; n <= MD_CLIENT_QUEUE && (r = md__remote_next_control(rm, &ctl)) == 0; n++)
			seen |= 1u << SEEN_CONTROL;
		return r;
	}
	case FC_CANDIDATES:
		n = md__remote_take_candidates(rm, cand, 1 + (size_t)a * 16);
		if (n)
			seen |= 1u << SEEN_CANDIDATES;
		return (long)n;
	case FC_SHARE:
		r = md__remote_share(rm);
		if (r)
			seen |= 1u << SEEN_SHARE;
		return r;
	case FC_REQUEST: {
		/* The CLI's: a STATUS page, or a CONTROL. */
		static struct md__msg m;
		static unsigned char enc[MD_MSG_HDR_SIZE + 256];
		if (!c)
			return -ENOTCONN;
		memset(&m, 0, sizeof(m));
		unsigned type = a % 2 ? MD_MSG_CONTROL : MD_MSG_STATUS;
		m.hdr.type = (uint16_t)type;
		if (type == MD_MSG_STATUS) {
			m.u.status.domain_from = a / 2 % 3;
		} else {
			m.u.control.op = 1 + a / 2 % (MD_CTL_OP_END - 1);
			if (m.u.control.op == MD_CTL_SET) {
				strcpy(m.u.control.key, "pages_to_scan");
				strcpy(m.u.control.value, "200");
			}
		}
		ssize_t len = md__msg_encode(&m, enc, sizeof(enc));
		if (len < 0)
			return len;
		uint32_t room = b * 16;
		unsigned char *reply = malloc(room ? room : 1);	/* exactly: ASan sees overruns */
		unsigned rtype;
		if (!reply)
			return -ENOMEM;
		r = md__client_request(c, type, enc + MD_MSG_HDR_SIZE, (uint32_t)len - MD_MSG_HDR_SIZE,
				       reply, &room, &rtype);
		if (!r && rtype != MD_MSG_ERROR)
			seen |= 1u << SEEN_REQUEST;
		free(reply);
		return r;
	}
	case FC_GIVE_BACK:
		if (!c)
			return -ENOTCONN;
		n = some_slots(gen, fl & 1, a % 8, b, slot);
		return md__client_give_back(c, slot, n);
	case FC_TAKE_BACK: {
		uint32_t *back;
		if (!c)
			return -ENOTCONN;
		r = md__client_take_back(c, &back, &n);
		free(back);
		return r ? r : (long)n;
	}
	case FC_HELLO: {
		struct md__msg_welcome w;
		int fd;
		if (!c)
			return -ENOTCONN;
		r = md__client_hello(c, "fuzz", a % 4, &w, &fd);
		if (fd >= 0)
			close(fd);
		return r;
	}
	}
	if (!f->full)
		return -ENOSYS;
	if (!f->registered && op != FC_UNREFS) {
		r = md__engine_register(f->e, f->ram, FC_RAM_PAGES * PG, 0);
		if (r)
			return r;
		f->registered = 1;
	}
	switch (op) {
	case FC_SCAN: {
		uint64_t was = merged(f), cands = f->s.st.merged_candidate;
		r = md__scanner_step(&f->s, 1 + a % 16);
		if (merged(f) > was)
			seen |= 1u << SEEN_SCAN_MERGE;
		if (f->s.st.merged_candidate > cands)
			seen |= 1u << SEEN_CANDIDATE_MERGE;
		if (trace)
			fprintf(trace, "fuzz_client: scanner: %llu merged, %llu candidates, %llu of them merged, "
				"%llu published\n", (unsigned long long)f->s.st.merged_scan,
				(unsigned long long)f->s.st.candidates,
				(unsigned long long)f->s.st.merged_candidate, (unsigned long long)f->s.st.published);
		return r;
	}
	case FC_MERGE: {
		size_t i = a / 4 % FC_RAM_PAGES;
		unsigned char done[4];
		n = 1 + a % 4;
		n = some_slots(gen, fl & 1, n < FC_RAM_PAGES - i ? n - 1 : FC_RAM_PAGES - i - 1, b, slot);
		/* As the scanner merges: holding the regions for reading. What
		 * a page did not take over stays held. */
		pthread_rwlock_rdlock(&f->e->regions_lock);
		r = md__engine_merge_slots(f->e, f->ram + i * PG, n, slot, done);
		pthread_rwlock_unlock(&f->e->regions_lock);
		for (size_t k = 0; fl & 1 && k < n; k++)
			if (r < 0 || !done[k])
				hold(gen, &slot[k], 1);
		if (r > 0)
			seen |= 1u << SEEN_MERGE;
		return r;
	}
	case FC_TOUCH:
		f->ram[a % FC_RAM_PAGES * PG + a * 37 % PG]++;
		return 0;
	case FC_REAP:
		return md__engine_reap(f->e);
	case FC_UNREFS:
		md__engine_send_unrefs(f->e);
		return 0;
	case FC_UNREGISTER: {
		unsigned char *p = f->ram + a % FC_RAM_PAGES * PG;
		r = md__engine_unregister(f->e, p, PG, fl & 1 ? MD_UNREG_MAPPED : MD_UNREG_GONE);
		if (!(fl & 1)) {	/* gone: fresh memory there, as a VMM's new mapping */
			if (mmap(p, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == p)
				pattern_fill(p, a % FC_RAM_PAGES);
		}
		int err = md__engine_register(f->e, f->ram, FC_RAM_PAGES * PG, 0);
		return r ? r : err;
	}
	}
	return -ENOSYS;
}

/* The argument bytes of each op. */
static size_t op_args(unsigned op)
{
	switch (op) {
	case FC_REF: case FC_REQUEST: case FC_GIVE_BACK: case FC_MERGE:
		return 2;
	case FC_LOOKUP: case FC_PUBLISH_EACH: case FC_PUBLISH: case FC_REPORT: case FC_READS:
	case FC_CONTROL_DONE: case FC_CANDIDATES: case FC_HELLO: case FC_SCAN: case FC_TOUCH:
	case FC_UNREGISTER:
		return 1;
	}
	return 0;
}

/* Ops whose UNREFs are the caller's own: any other's are the client's,
 * giving back what a late reply granted. */
static int unrefs_asked(unsigned op, unsigned fl)
{
	return (op == FC_REF && (fl & 1)) || op == FC_GIVE_BACK || op == FC_SCAN || op == FC_REAP ||
	       op == FC_UNREFS || op == FC_UNREGISTER || op == FC_CONNECT || op == FC_MERGE;
}

static void init_once(void)
{
	const char *log = getenv("MD_FUZZ_LOG");
	if (log && strcmp(log, "1") == 0)
		trace = stderr;
	else
		md__log_open("/dev/null");
	/* What the library opens once for good (common/sys.c's files of
	 * /proc/self): before any input counts the descriptors. */
	struct fc f = { 0 };
	if (engine_up(&f) == 0) {
		op_connect(&f);
		engine_down(&f);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int inited;
	static struct fc f;

	if (!inited) {
		init_once();
		inited = 1;
	}
	int fds = count_fds();
	memset(&f, 0, sizeof(f));
	memset(ledger, 0, sizeof(ledger));
	nheld = 0;
	nkept = kept_sent = 0;
	if (engine_up(&f) != 0)
		return 0;
	for (size_t off = 0; off < size;) {
		unsigned op = data[off] & FC_OP_CODE, fl = FC_OP_FLAGS(data[off]);
		off++;
		if (op >= FC_OP_END)
			continue;
		if (op == FC_SEND) {
			size_t len = size - off >= 3 ? get24(data + off) : 0;
			off = off + 3 <= size ? off + 3 : size;
			len = len < size - off ? len : size - off;
			uint8_t *b = malloc(len ? len : 1);
			if (b) {
				memcpy(b, data + off, len);
				if (f.d.fd >= 0) {
					dside_say(&f.d, b, len, fl);
					free(b);
				} else if (conn.nblock < BLOCKS) {
					conn.block[conn.nblock++] = (struct block){ b, len, fl, 0 };
				} else {
					free(b);
				}
			}
			off += len;
			continue;
		}
		if (op == FC_HANGUP || op == FC_CLOSE) {
			/* Not connected: the next connection's daemon, once
			 * it said what it says first (a WELCOME cut). */
			if (f.d.fd < 0) {
				if (conn.nblock)
					conn.block[conn.nblock - 1].hang = 1;
				continue;
			}
			/* After what it said, all of it. */
			f.d.hang = 1;
			dside_release(&f.d, 1);
			if (op == FC_CLOSE)
				dside_close(&f.d);
			continue;
		}
		unsigned a = 0, b = 0, nargs = (unsigned)op_args(op);
		if (nargs > 0 && off < size)
			a = data[off++];
		if (nargs > 1 && off < size)
			b = data[off++];
		f.d.types = 0;
		long r = op_call(&f, op, fl, a, b);
		dside_read(&f.d);
		uint32_t types = f.d.types;
		if (trace)
			fprintf(trace, "fuzz_client: op %u (flags %u, %u, %u): %ld%s\n", op, fl, a, b, r,
				f.rm.c && !md__client_alive(f.rm.c) ? ", connection dead" : "");
		if ((types & 1u << MD_MSG_UNREF) && !unrefs_asked(op, fl))
			seen |= 1u << SEEN_GIVE_BACK;
		if (r == -ETIMEDOUT && f.rm.c && md__client_alive(f.rm.c))
			seen |= 1u << SEEN_LATE;
		if (r == -EPROTO)
			seen |= 1u << SEEN_BROKEN;
		if (op == FC_REF && (fl & 1) && (types & 1u << MD_MSG_UNREF) && r == -ENOTCONN)
			seen |= 1u << SEEN_UNREF_UNANSWERED;
		if (op == FC_CONTROL_DONE && !r && !(types & 1u << MD_MSG_CONTROL_DONE) &&
		    nkept < sizeof(kept) / sizeof(kept[0]))
			kept[nkept++] = a;
		/* The engine hung up (or dropped the connection): so does the
		 * daemon, and what the client kept goes with it. */
		if (f.rm.c != f.dc) {
			dside_close(&f.d);
			f.dc = f.rm.c;
			nkept = 0;
		}
	}
	engine_down(&f);
	if (count_fds() != fds)
		__builtin_trap();	/* a descriptor leaked */
	return 0;
}

/* Called by the replay after the corpus: each outcome named here is one
 * past the client's first checks. `make fuzz-seeds` writes sessions that
 * reach them all. */
int md_fuzz_replay_check(void)
{
	int bad = 0;
	for (unsigned i = 0; i < SEEN_END; i++) {
		/* Scans and merges need userfaultfd. */
		if (i >= SEEN_MERGE && !engine_ran)
			continue;
		if (!(seen & 1u << i)) {
			fprintf(stderr, "fuzz_client: no input of the corpus reached %s (run make fuzz-seeds)\n",
				seen_name[i]);
			bad = 1;
		}
	}
	return bad;
}
