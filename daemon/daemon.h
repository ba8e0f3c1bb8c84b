/*
 * daemon.h - memdedupd's state, shared by its files:
 *   main.c     options, single instance, daemonizing, signals
 *   dlog.c     the log, token buckets, the clock
 *   server.c   the epoll loop, connections, framing, dispatch
 *   domain.c   domains: one content pool and index per (uid, name)
 *   agent.c    agents and their per-slot references, process exit
 *   status.c   the STATUS document
 *   control.c  CONTROL: tunables, forwarding to agents
 *
 * One thread: everything below is touched by the loop alone, so nothing
 * here is locked.
 */
#ifndef MD_DAEMON_H
#define MD_DAEMON_H
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/types.h>

#include "index.h"
#include "pool.h"
#include "protocol.h"
#include "rxbuf.h"

/* Limits that keep one user from exhausting the daemon. */
#define MD_D_MAX_CONNS 4096         /* or fewer, as RLIMIT_NOFILE allows */
#define MD_D_CONNS_PER_UID 256      /* of one uid other than root */
/* The part of the connections and agents only root and the daemon's own uid
 * may take: other users together cannot leave root's new VMMs without. */
#define MD_D_RESERVED(max) ((max) / 8 > 4 ? (max) / 8 : 4)
/* 1 if uid is root or the daemon's own. */
int md__privileged(uid_t uid);
#define MD_D_AGENTS_PER_UID 256     /* agent records of one uid other than root */
#define MD_D_DOMAINS_PER_UID 64
/* Those with the ones going (every record exited, references draining). */
#define MD_D_DOMAINS_KEPT_PER_UID (2 * MD_D_DOMAINS_PER_UID)
#define MD_D_CONTROLS_PER_UID 16    /* CONTROLs waiting for agents, of one uid other than root */
#define MD_HELD_PAUSE 1             /* held_by_admin: its paused */
#define MD_HELD_UNMERGE 2           /* held_by_admin: its unmerged */
#define MD_D_REFS_OWED (1u << 20)   /* references an agent holds beyond its pages (refs_fit) */
#define MD_D_OUT_PAUSE (1u << 20)   /* stop reading a peer with this much unsent */
#define MD_D_OUT_MAX (4u << 20)     /* drop a peer that lets this much pile up */
#define MD_D_OUT_KEEP (64u << 10)   /* a send buffer larger is freed once empty */
/* STATUS documents built for one uid other than root (bytes a second, as
 * many at once; each counts MD_D_STATUS_MIN at least; the default of
 * MEMDEDUP_STATUS_KB_PER_S): a page of a document of 256 agents takes
 * 15-30 ms to build, and one user asking for them on many connections held
 * every other peer for seconds. More is answered EAGAIN. */
#define MD_D_STATUS_BYTES_PER_S (2u << 20)
#define MD_D_STATUS_MIN (4u << 10)
#define MD_D_OUT_UID_MAX (32u << 20) /* unsent to one uid's peers (root's not): the stalest queue goes */
#define MD_D_STALL_MS 10000         /* drop a peer that sends no request, or half a message, this long */
/* Work per connection per wake-up: a message is 1; a READS 1 more per
 * 1,024 pages (one of 128 full runs takes milliseconds); a PUBLISH 1 more
 * per MD_D_PUBLISH_PAGES_PER_UNIT pages (each hashed, written into the
 * pool, indexed); an UNREF 1 more per MD_D_FREED_PER_UNIT slots it frees
 * (each punched, in batches); a STATUS 16. With a PUBLISH or an UNREF 1
 * whatever its size, one user's 16 connections made another user's LOOKUP
 * wait 70 ms in one wake-up with PUBLISHes of 64 pages, and about 0.5 ms
 * for each of their UNREFs freeing 1,024 slots, where READS made it wait
 * 13-19 ms (measured in a review of daemon/): a 64-page PUBLISH was worth
 * 4-5 of a READS's units, 1,024 slots freed about 8. The PUBLISH rate is
 * twice that, for margin (an agent's PUBLISHes are of one page: 1 still).
 * What is left waits in the buffer: the connection is deferred, handled
 * first in the next wake-up (not on its socket's events: a peer that does
 * not read its replies makes none). */
#define MD_D_BUDGET 64
#define MD_D_PUBLISH_PAGES_PER_UNIT 8
#define MD_D_FREED_PER_UNIT 128
/* Work per user per wake-up, all its connections together: a user with 200
 * connections made another's one LOOKUP wait 765 ms when each connection
 * had a budget of its own, as a round then held 64 of them at 64 each.
 * Its connections stopped here wait in the queues of deferred ones, served
 * first in the next wake-up (at once: the loop does not wait then), in the
 * order they were stopped, so each of its connections has its turn. */
#define MD_D_USER_BUDGET (4 * MD_D_BUDGET)
/* References given back per wake-up by the records of agents gone and by
 * the UNREFs a connection left as it closed (agent.c, md__agents_drain), all
 * together: a connection's budget's worth of UNREFs. In one go, at the
 * 0.5 ms per 1,024 slots freed a review measured, an agent that exited
 * holding a user's pool's worth (1 Mi slots) would hold the loop about half
 * a second, one holding 4 Mi about 2 s, as long as other agents wait for an
 * answer. A slot's references go in one step,
 * counted 1; 64 slots of a record's table looked at and found without any
 * count 1 too. The loop does not wait while some are left. */
#define MD_D_DRAIN_REFS (MD_D_BUDGET * MD_D_FREED_PER_UNIT)
/* A record whose connection closed while its process's address space was
 * still there is looked at again this often, this many times: the exec
 * that closes the connection (close-on-exec) comes after the new address
 * space, but a program may close it itself just before. Then at the
 * longer period while it stays unconnected (an exec long after the
 * connection was lost). A look reads one byte, without the process's
 * mmap lock (agent.c, mm_gone). */
#define MD_D_LOOK_MS 1000
#define MD_D_LOOKS 2
#define MD_D_LOOK_LATER_MS 10000
#define MD_D_POOL_PAGES_DEFAULT (1u << 20)   /* 4 GiB of address space per pool */
#define MD_D_POOL_PAGES_MAX (1u << 26)

/* Paths: the run directory (absolute), a socket's (sun_path less its NUL). */
#define MD_D_RUN_DIR_MAX 256
#define MD_D_SOCKET_MAX 107

/* What an epoll event points at. */
enum md__ep_kind { MD_EP_LISTEN, MD_EP_SIGNAL, MD_EP_CONN, MD_EP_PIDFD };
struct md__ep { enum md__ep_kind kind; };

/* Where a page is, in 47 bits: its agent's number (md__agent.num, 12 bits)
 * above its page number (35 bits: user addresses are below 2^47). 0:
 * nowhere. */
#define MD_WHERE_PAGE_BITS 35
#define MD_WHERE_BITS 47

#define MD_PAIR_PUBLISHERS 64

/* A read's entry, 12 bytes: its slot gives the low bits of the read tag's
 * high half, tag keeps that half (so the table can grow). */
struct md__sighting {
	uint32_t tag;              /* the read tag's high half */
	uint32_t where[2];         /* where the page is (MD_WHERE_BITS) */
};

/* Two pages read from one file page, neither looked up yet: the one
 * named to its agent, and its partner, named back once it is published
 * (both MD_WHERE_BITS). */
struct md__pending {
	uint64_t named, partner;
};
#define MD_PENDING_PAIRS 16384u    /* a domain's table of them: 256 KiB */
#define MD_PENDING_WAYS 4u         /* entries a bucket of it */

/* A first sighting, 16 bytes: the page's whole hash, and where the page is
 * (MD_WHERE_BITS) with MD_SIGHT_ASKED; where 0: empty. With 16 bits of the
 * hash beside the bucket's (8 bytes an entry), a lookup of other content
 * matched an entry one time in 65,536 per entry of its bucket: the asker
 * published a page nobody else had and merged it onto that copy of itself,
 * and the first page's agent was named a page of other content (27 such
 * pages in 10 s from two VMMs of unique, changing memory, in a review).
 * At most one entry per page registered (seen_want): 16 bytes per 4 KiB. */
struct md__seen {
	uint64_t hash;
	uint64_t where;            /* MD_WHERE_BITS, | MD_SIGHT_ASKED */
};
#define MD_SIGHT_WHERE(w) ((w) & ((1ull << MD_WHERE_BITS) - 1))
#define MD_SIGHT_ASKED (1ull << 63)
/* Agents numbered at once: a sighting names its agent by number. */
#define MD_AGENT_NUM_MAX 4095u

struct md__domain {
	struct md__domain *next;
	uint32_t id;
	uid_t uid;
	char name[MD_DOMAIN_MAX + 1];
	uint64_t generation;
	struct md__pool pool;
	struct md__index index;
	uint64_t *slot_hash;       /* hash of each live slot, to unindex it */
	uint64_t refs_total;       /* references over all agents */
	/* Of refs_total, those no record counts any more (an agent's
	 * references going since it exited, UNREFs its connection left):
	 * the pool still holds them until md__agents_drain tells it. */
	uint64_t refs_draining;
	/* The agents' reference tables (refs_cap slots each), kept until the
	 * record is freed: the daemon's memory, in general_profit. */
	size_t refs_table_bytes;
	uint64_t publish_hits;     /* publications answered with an equal live page */
	uint64_t publish_full;     /* pages of publications refused for room (the
				    * pool full, or its user's share of pools) */
	/* First sightings (KSM's unstable tree, lossy): hash -> the agent
	 * (its number) and address of the page that was looked up and found
	 * nothing. Another page asking for the same hash is told to publish:
	 * only content seen twice is copied into the pool. The entry then
	 * waits (MD_SIGHT_ASKED) for that publication, and the first page's
	 * agent is sent its address as a CANDIDATE to merge. */
	struct md__seen *seen;
	size_t seen_cap;           /* power of two; 0: no table */
	/* Pages reads just filled, by file page (READS; lossy, 12-byte
	 * entries, tag the read tag's high half; sized by use): a READS of
	 * the same file page elsewhere pairs with it and takes it. */
	struct md__sighting *reads;
	size_t reads_cap;          /* power of two; 0: no table (no READS yet) */
	size_t reads_live;         /* entries in it */
	size_t reads_shrunk;       /* its size after the last shrink (not again at it) */
	int64_t reads_ms;          /* md__now_ms of the last READS */
	/* The pairs READS made of two pages neither of which was looked up
	 * (MD_PENDING_PAIRS entries, see domain.c; NULL until the first). */
	struct md__pending *pending;
	uint64_t read_pairs;       /* lookups of a named page paired with its
				    * twin (published, the twin named back) */
	/* Which agent publishes the read pairs of two agents: (lower, higher,
	 * publisher) numbers, 12 bits each; lossy, by the pair. */
	uint64_t pair_publisher[MD_PAIR_PUBLISHERS];
	uint64_t read_named;       /* READS that met the other copy of their
				    * file page: a page named to its agent */
	uint64_t registered_pages; /* of its agents, as they last reported */
	size_t nagents;            /* agent records (connected or not) in it */
	size_t nexited;            /* of those, exited ones whose references still go:
				    * all of them, and the domain is going (status
				    * and the per-uid bound leave it out) */
};

struct md__conn;

struct md__agent {
	struct md__ep ep;          /* MD_EP_PIDFD: the process exited */
	struct md__agent *next;
	pid_t pid;
	uid_t uid;
	/* 1..MD_AGENT_NUM_MAX, unique among the daemon's agents, given in
	 * turn (so a number comes back only after the others: sightings of
	 * an agent gone are long overwritten by then, and one that is not
	 * names a page that a compare refuses); 0 when none was free: its
	 * pages are never first sightings, they only meet them. */
	unsigned num;
	int pidfd;                 /* -1: no pidfd; refs go with the connection */
	/* /proc/PID/pagemap opened at its HELLO: the kernel keeps the
	 * address space (mm) the process had then, not its next, so this
	 * reads nothing once that is gone (an exec, an exit) while the
	 * process lives on. -1: none (a process of another user to a daemon
	 * not root, hidepid, an LSM): its references wait for its exit. */
	int mm_fd;
	/* Unconnected, holding references or a pause: when mm_fd is read
	 * again (md__agents_look; 0: not), and how many times more. A close
	 * of its connection before its exec (closefrom) is seen so. */
	int64_t look_ms;
	unsigned looks;
	int control_pid;           /* its HELLO said MD_HELLO_CONTROL_PID */
	struct md__domain *dom;
	struct md__conn *conn;     /* NULL: detached, refs kept until exit */
	uint32_t share_sent;       /* the SHARE its connection was told; 0: none */
	/* Its LOOKUPs' hashes answered PUBLISH since the last weighing, and
	 * the decayed sum of those counts (halved every MD_WEIGH_MS): its
	 * user's part of the rate follows them (flush_share). */
	uint64_t found, found_recent;
	uint32_t *refs;            /* references per slot, refs_cap slots */
	size_t refs_cap;
	uint64_t nrefs;
	uint64_t refs_max;         /* nrefs may reach this (refs_fit), as last read */
	uint64_t counters[MD_REPORT_MAX];
	uint32_t ncounters;
	uint64_t registered_counted; /* added to dom->registered_pages for it */
	uint32_t unmerge_first, unmerge_token; /* the first and the last UNMERGE sent to it
				    * while one is owed an answer (0: none): the last
				    * one's refusal, even a late one, puts back the two
				    * below */
	int unmerged_was, held_was; /* unmerged and held_by_admin's MD_HELD_UNMERGE
				    * before the first, or after one that went through */
	int unmerged;              /* it unmerged (CONTROL_DONE), not resumed since: its
				    * WELCOME says paused, and the record outlives its
				    * connection while the process lives */
	int paused;                /* a PAUSE that set no default reached it (--pid, a
				    * user's own agents), not resumed since: the same */
	int held_by_admin;         /* MD_HELD_*: that PAUSE or UNMERGE was root's (or
				    * the daemon's user's): only they resume it */
	int resumed_alone;         /* a RESUME reached its connection after the last
				    * administrator's PAUSE: it scans under the daemon's
				    * default pause (resume --pid P after pause), across
				    * its reconnects (its WELCOME says so), and its user
				    * may resume it after pausing it; a RESUME while it
				    * is away sets it too */
	int64_t reported_ms;       /* when the last REPORT came; 0 never */
	uint64_t requests;         /* messages handled after its HELLO */
	uint64_t hellos;           /* connections it came on (reconnects + 1) */
	/* Candidates named to it, sent as one CANDIDATES when full or when
	 * the messages of this wake-up are handled (one message a page was
	 * most of both sides' messages while guests converged). */
	uint64_t cand[MD_CANDIDATES_MAX];
	uint32_t ncand;
	/* References it gave back that the pool has not been told of yet
	 * (agent.c, md__agents_drain): UNREFs its connection left as it
	 * closed, put[put_at..nput), then, once its process exited (exited),
	 * all of refs[] from drain_at on. In d->draining (draining) while
	 * some are left. Exited, it is in d->agents no more: no pid, number
	 * or CONTROL finds it, and its pidfd is closed; its domain is
	 * released once it is done. */
	struct md__agent *drain_next;
	int draining, exited;
	uint32_t *put;
	size_t put_at, nput, put_cap;
	size_t drain_at;
};

/* A token bucket: what a rate allows, up to a burst (dlog.c). */
struct md__bucket {
	int64_t tokens;            /* below 0: in debt */
	int64_t at_ms;             /* md__now_ms of the last refill, less a part token's time */
};
/* Adds what rate a second earned since the last refill, up to burst (the
 * time of a part token counts towards the next); returns the tokens. */
int64_t md__bucket_refill(struct md__bucket *b, int64_t rate, int64_t burst);

/* A uid with connections, and what they hold together. */
struct md__user {
	struct md__user *next;
	uid_t uid;
	size_t conns;
	size_t unsent;             /* bytes queued for its connections, not sent yet */
	/* STATUS bytes it may still have built (below 0 in debt): see
	 * md__daemon.status_bytes_per_s. Kept while in debt with no
	 * connection, or a reconnect would start afresh. */
	struct md__bucket status;
	/* Work its connections did in this wake-up of the loop (server.c,
	 * MD_D_USER_BUDGET): fairness between users, whatever number of
	 * connections each has. */
	uint64_t round;
	unsigned spent;
};

struct md__conn {
	struct md__ep ep;          /* MD_EP_CONN */
	struct md__user *user;     /* its uid's */
	struct md__conn *next, **pprev;
	int fd;
	pid_t pid;                 /* SO_PEERCRED at accept */
	uid_t uid;
	int peer_pidfd;            /* at accept: SO_PEERPIDFD, else pidfd_open; -1: none */
	int peer_pidfd_err;        /* why none: -errno */
	struct md__rxbuf in;       /* read ahead of what was handled */
	unsigned char *out;        /* bytes to send: out[out_head, out_len) */
	size_t out_head, out_len, out_cap;
	uint64_t out_moved_ms;     /* when out last moved (sent, or started) */
	int out_fd;                /* descriptor to pass with the byte at out_fd_off */
	size_t out_fd_off;
	int closing;               /* close once out is flushed (after an ERROR) */
	/* Its peer shut down its writing (EOF read) with replies owed: not
	 * read any more, closed once they are out (a CONTROL's once its
	 * agents answered). */
	int eof;
	uint32_t events;           /* epoll mask now registered */
	struct md__agent *agent;   /* after HELLO, until its process exits */
	int hello;                 /* a HELLO came: no other may */
	/* Since when (ms) it owes us bytes: connected and no request yet, or
	 * half a message read; 0: it owes nothing (a quiet agent is fine). */
	uint64_t owing_since;
	int requested;             /* a whole request came */
	int awaiting;              /* a CONTROL waits for its agents: its later requests wait */
	/* Stopped at its budget (or its user's) with requests to handle: in
	 * a queue of connections served first in the loop's next wake-up, in
	 * the order they were stopped (server.c); 1 having had its share,
	 * 2 starved. */
	int deferred;
	uint64_t deferred_round;
	uint64_t spent_round;       /* the wake-up whose work spent counts */
	unsigned spent;
	struct md__conn *defer_next, **defer_pprev;
};

struct md__daemon {
	int epfd, lfd, sigfd;
	struct md__ep listen_ep, signal_ep;
	uint64_t accept_paused;	/* out of descriptors: not listening since (ms), 0: listening */
	int owing;		/* some connection owes bytes (md__conn.owing_since): wake each second */
	/* Connections deferred (md__conn.deferred), oldest first, [1] the
	 * starved: the loop does not wait while there are; round counts the
	 * wake-ups. */
	struct md__defer_queue {
		struct md__conn *head, **tail;
	} defer[2];
	uint64_t round;
	char socket_path[MD_D_SOCKET_MAX + 1];
	char pid_path[MD_D_RUN_DIR_MAX + 32];
	char log_path[MD_D_RUN_DIR_MAX + 32];	/* daemonized: reopened on SIGHUP */
	char state_path[MD_D_RUN_DIR_MAX + 32];	/* the pause of all and tunables kept (state.c); "": none */
	size_t pool_pages;
	int control_wait_ms;	/* a CONTROL's deadline: MD_CONTROL_WAIT_MS or less */
	int64_t status_bytes_per_s;	/* MD_D_STATUS_BYTES_PER_S or as set; 0: no limit */
	struct md__conn *conns;
	size_t nconns;
	struct md__user *users;    /* of the connections */
	size_t max_conns;          /* MD_D_MAX_CONNS, or what RLIMIT_NOFILE allows */
	struct md__agent *agents;
	/* Agents giving references back (md__agent.drain_next), in the order
	 * they started: the loop does not wait while there are. */
	struct md__agent *draining, **draining_tail;
	unsigned last_agent_num;   /* the number given last (md__agent.num) */
	int64_t look_at;           /* the earliest md__agent.look_ms; 0: none */
	struct md__domain *domains;
	uint32_t next_domain_id;
	uint64_t last_generation;
	struct md__tunables tun;   /* what a new agent starts with */
	struct md__pending_control *controls;	/* CONTROLs whose agents have not all answered */
	/* The UNMERGE queue (control.c), held after an agent's turn passed
	 * unanswered (it may still be copying): that agent's pid, its
	 * UNMERGE's token, and until when (0: not held). */
	pid_t unmerge_late;
	/* The uid whose request had the last turn (unmerge_turned 0: none
	 * since the queue was last empty): turns go round the uids waiting. */
	uid_t unmerge_uid;
	int unmerge_turned;
	uint32_t unmerge_late_token;
	int64_t unmerge_held_until;
	uint32_t last_token;
	int share_due;             /* their parts may have changed this pass: SHARE at its end */
	int64_t weighed_ms;        /* the agents' found counts last decayed (md__now_ms) */
	int weighing;              /* some found_recent is not 0: weighed again every MD_WEIGH_MS */
	int paused;
	int64_t start_ms;          /* monotonic */
	int stop;
	struct md__msg msg;        /* the message being handled */
	struct md__conn *reading;  /* the connection read_conn() handles: flushed after */
	struct epoll_event *evs;   /* this wake-up's events, while handled */
	int nev;
};

/* dlog.c */
/* state.c: the pause of all and the tunables, from and to d->state_path.
 * Load takes them if the file is whole and ours (else says why in the log
 * and changes nothing); save returns 0 or -errno. */
void md__state_load(struct md__daemon *d);
int md__state_save(struct md__daemon *d);
void md__dlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same, for what peers cause (connections, agents, their errors):
 * limited in rate. */
void md__dlog_peer(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Says how many such lines were left out, once there is room for a line
 * (or at once with force): 1 while some wait to be said. */
int md__dlog_peer_flush(int force);
/* The log file at path opened for appending, readable by its owner only:
 * it names every user's agents, pids and domains, which STATUS shows each
 * user only of their own. fd, or -1 (errno set). */
int md__dlog_open(const char *path);
int64_t md__now_ms(void);

/* server.c */
int md__server_listen(struct md__daemon *d);
int md__server_run(struct md__daemon *d);
/* The agents' parts of the rate may have changed (an agent came or went,
 * was paused, resumed, unmerged, or said it stopped): each is told its own
 * (SHARE) once the wake-up's messages are handled. */
void md__reshare(struct md__daemon *d);
/* Every MD_WEIGH_MS while agents' lookups find pairs: their recent counts
 * halve and the next SHARE follows them (now: md__now_ms). A second's
 * halving moved the rate to the other of two guests 5 s after the first
 * had visited all its hints. */
#define MD_WEIGH_MS 500
void md__reweigh(struct md__daemon *d, int64_t now);
/* Handles one wake-up's events, d->evs[0..d->nev) (whatever epoll_wait on
 * d->epfd returned): the connections deferred before first, then those
 * read and answered, agents gone, and the SHAREs and candidates due. The loop's
 * body, apart from its timers; fuzz/fuzz_daemon.c drives it too. */
void md__server_events(struct md__daemon *d);
void md__server_close(struct md__daemon *d);
struct ucred;
/* Serves fd, a connected socket (non-blocking) whose peer accept found to
 * be cr, with pidfd a pidfd of that peer (-1: none, pidfd_err saying why):
 * a connection record, in the epoll set. NULL, fd and pidfd closed, if out
 * of memory. The limits on connections are the caller's. */
struct md__conn *md__conn_new(struct md__daemon *d, int fd, const struct ucred *cr, int pidfd,
			      int pidfd_err);
/* Queues a message to a connection; fd (or -1) travels with its first
 * byte. A peer that lets too much pile up is closed. */
int md__conn_send(struct md__daemon *d, struct md__conn *c, const struct md__msg *m, int fd);
/* Tests only: the next message of this type (0: none) queued to a
 * connection fails as short of memory. */
extern unsigned md__server_fail_type;
/* Applies what the agent of c sent that was not handled yet (read, or
 * still in the socket) and counts without a reply, as c is given up (taken
 * over, closing, or its peer hung up): its UNREFs (a client counts one
 * sent whole as done, and never sends it again; the agent's counts drop at
 * once, the pool's as md__agents_drain gets to them) and CONTROL_DONEs (how
 * a CONTROL went: the CLI is told, a refused UNMERGE puts back the pause it
 * found). Nothing is answered, and nothing else applied: a grant (PUBLISH,
 * REF) would be a reference its peer never learns of, pinned until the
 * process exits. Nothing is read past a header read_conn would refuse (no
 * room is made for its length). */
void md__conn_apply_left(struct md__daemon *d, struct md__conn *c);
/* Queues ERROR {err, text} with seq; the connection closes after it. */
void md__conn_fail(struct md__daemon *d, struct md__conn *c, uint32_t seq, int err,
		   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
int md__ep_add(struct md__daemon *d, int fd, struct md__ep *ep, uint32_t events);
/* ep, watched on fd, is about to be freed (and fd closed): out of the
 * epoll set, and its pending events of this wake-up dropped. */
void md__ep_forget(struct md__daemon *d, struct md__ep *ep, int fd);

/* domain.c */
/* The domain (uid, name), made if there is none (at most
 * MD_D_DOMAINS_PER_UID per uid, not counting going, a domain about to go
 * with its last live record, nor those whose records all exited; and at
 * most MD_D_DOMAINS_KEPT_PER_UID with those): 0 and *out with one agent
 * more, or -errno. */
int md__domain_get(struct md__daemon *d, uid_t uid, const char *name, const struct md__domain *going,
		   struct md__domain **out);
void md__domain_release(struct md__daemon *d, struct md__domain *dom);
/* asker: the agent's number; tag: md__read_tag of the file page the
 * asker's read put at addr, or 0. *name: where (MD_WHERE_BITS) a page is
 * that its agent should visit now (its lookup will find this content), or 0. */
uint32_t md__domain_lookup(struct md__domain *dom, uint64_t hash, unsigned asker, uint64_t addr,
			   uint64_t tag, uint64_t *name);
/* Records a READS run of the agent numbered num; returns how many pages
 * (where, MD_WHERE_BITS, in named: room for run->npages) their agents
 * should visit now: pages of the run, or the pages an earlier read put
 * the same file pages in, whose lookups will pair the two. */
size_t md__domain_reads(struct md__domain *dom, unsigned num, const struct md__read_run *run, uint64_t *named);
/* Frees the first-sighting table (it comes back on the next lookup). */
void md__domain_seen_free(struct md__domain *dom);
/* Content with this hash was just published: if a first sighting waits for
 * it, returns 1 with the agent's number and address of that page (and
 * forgets it). */
int md__domain_published(struct md__domain *dom, uint64_t hash, unsigned *num, uint64_t *addr);
/* Publishes n pages (a single page equal to a live one gets that one);
 * with match_only, only that: -ENOSPC if it would take a new slot. */
int md__domain_publish(struct md__domain *dom, const uint64_t *hash, const unsigned char *pages,
		       uint32_t n, uint32_t *first, int match_only);
/* 1 if slot is live in dom and one more reference fits. */
int md__domain_slot_ok(const struct md__domain *dom, uint32_t slot, uint32_t more);
void md__domain_get_ref(struct md__domain *dom, uint32_t slot);
void md__domain_put_ref(struct md__domain *dom, uint32_t slot);
/* Drops n references of one slot in one step (an agent's, as it exits). */
void md__domain_put_refs(struct md__domain *dom, uint32_t slot, uint32_t n);
void md__domain_free_all(struct md__daemon *d);
/* 1 if a pool holds freed pages not punched yet; md__domains_trim punches them. */
int md__domains_trim_due(const struct md__daemon *d);
void md__domains_trim(struct md__daemon *d);
/* Makes the reads tables that no READS came into for MD_READS_QUIET_MS
 * before now (md__now_ms), and that are mostly empty, smaller (domain.c). */
#define MD_READS_QUIET_MS 5000
void md__domains_shrink(struct md__daemon *d, int64_t now);

/* agent.c */
int md__agent_hello(struct md__daemon *d, struct md__conn *c, const struct md__msg_hello *h,
		    char *why, size_t size);
/* The agent record of a pid (connected or not), or NULL. */
struct md__agent *md__agent_find(struct md__daemon *d, pid_t pid);
/* The agent record numbered num (md__agent.num), or NULL. */
struct md__agent *md__agent_find_num(struct md__daemon *d, unsigned num);
/* REF (delta 1) / UNREF (-1) of slots, all or none: 0 or -EINVAL/-ENOMEM,
 * or -EDQUOT: more references than the agent can use (refs_fit). */
int md__agent_refs(struct md__agent *a, const uint32_t *slots, uint32_t n, int delta);
int md__agent_publish(struct md__agent *a, const struct md__msg_publish *p, uint32_t *first, int match_only);
void md__agent_report(struct md__agent *a, const struct md__msg_report *r);
/* 1 if a's last REPORT said its scanner stopped for good (scan_state). */
int md__agent_stopped(const struct md__agent *a);
/* The connection of a goes away; its references stay while its process
 * maps them (a record without any goes; one whose process exec'd gives
 * them back, and goes unless paused). */
void md__agent_detach(struct md__daemon *d, struct md__agent *a);
/* UNREF of slots, all or none (0 or -EINVAL), the pool told as
 * md__agents_drain gets to them. */
int md__agent_unref_later(struct md__daemon *d, struct md__agent *a, const uint32_t *slots, uint32_t n);
/* The process exited: its references go, and the record with them, from
 * the end of this wake-up on (md__agents_drain). */
void md__agent_exited(struct md__daemon *d, struct md__agent *a);
/* Reads again the address space of the unconnected records whose look is
 * due (md__agent.look_ms): those whose process exec'd give their
 * references back. Sets d->look_at. */
void md__agents_look(struct md__daemon *d);
/* Gives back what the agents in d->draining owe the pool, in order, up to
 * MD_D_DRAIN_REFS: once a wake-up (md__server_events). */
void md__agents_drain(struct md__daemon *d);
void md__agent_free_all(struct md__daemon *d);

/* status.c: a page of the document for a requester of uid (root:
 * everything): domains from id domain_from, then agents from pid
 * agent_from, as many as fit in a message. */
int md__status_json(struct md__daemon *d, uid_t uid, uint32_t domain_from, uint32_t agent_from,
		    char **json, size_t *len);

/* control.c. A CONTROL from c (seq): checked, forwarded to the agents it
 * names, and answered (CONTROL_R) once they all said how it went
 * (CONTROL_DONE), went away, or MD_CONTROL_WAIT_MS passed (an UNMERGE's:
 * each agent's, from its turn). */
struct md__pending_control;
void md__control(struct md__daemon *d, struct md__conn *c, uint32_t seq, const struct md__msg_control *ctl);
/* What agent a's CONTROL_DONE says (the caller acknowledges it, if its
 * connection is still read). */
void md__control_done(struct md__daemon *d, struct md__agent *a, const struct md__msg_control_done *done);
/* A connection closes (what its CONTROL waited for is forgotten, but for
 * an UNMERGE, which still takes its agents' answers), or the agent of pid
 * went (pid > 0: what it owed counts as failed; -1: all, the daemon
 * stops). */
void md__control_gone(struct md__daemon *d, struct md__conn *c, pid_t pid);
/* Answers what waited too long (sending the UNMERGE queue on); returns
 * md__control_due_in. */
int md__control_tick(struct md__daemon *d);
/* Milliseconds until the next CONTROL deadline (0: passed), -1 if none:
 * the loop waits no longer, or a deadline is seen up to a second late. */
int md__control_due_in(const struct md__daemon *d);
#endif
