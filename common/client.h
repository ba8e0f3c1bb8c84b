/*
 * client.h - a connection to memdedupd, for the agent and the CLI.
 *
 * Blocking requests, each bounded by a timeout (MD_CLIENT_TIMEOUT_MS), so a
 * caller never hangs on a daemon that died or stopped answering. A CONTROL
 * the daemon sends on its own (seq 0) while a request waits for its reply is
 * queued, never lost: md__client_next_control() hands them out. So are the
 * CANDIDATES (md__client_take_candidates(), the oldest dropped when full)
 * and the last SHARE (md__client_share()).
 *
 * It runs inside QEMU through LD_PRELOAD: it calls no interposed function
 * (mmap, munmap, madvise, pread, preadv), only socket calls, poll, malloc and
 * close, and sends with MSG_NOSIGNAL so a dead daemon never raises SIGPIPE
 * in the VMM. Needs only libc.
 *
 * Every function returns 0 (or a count) or a negative errno. A connection
 * the daemon closed or reset gives -ENOTCONN and stays unusable: connect
 * again (md__client_alive says 0). A reply that did not come in time gives
 * -ETIMEDOUT and the connection lives on: the reply is read when it comes,
 * and what it granted (a PUBLISH's or REF's references) is given back, as
 * the caller took none of it. Until then requests fail at once with
 * -ETIMEDOUT and UNREFs are queued.
 */
#ifndef MD_CLIENT_H
#define MD_CLIENT_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol.h"

#define MD_CLIENT_TIMEOUT_MS 2000
#define MD_CLIENT_QUEUE 64          /* unsolicited CONTROLs kept; older ones dropped */
#define MD_CLIENT_CANDIDATES 4096   /* CANDIDATES addresses kept; older ones dropped */
#define MD_PUBLISH_EACH_MAX 256     /* one-page PUBLISHes sent at once */
#define MD_CLIENT_OWED 1024         /* requests sent, replies not read yet */
#define MD_CLIENT_LATE_MAX_MS 10000 /* a late reply not come by then: the connection goes */
#define MD_CLIENT_BACK_MAX (1u << 20) /* references queued to give back */
#define MD_CLIENT_DONE_MAX 16       /* CONTROL_DONEs kept while the daemon is behind */

struct md__client;

/* The daemon's socket into buf: path if not NULL, else $MEMDEDUP_SOCKET,
 * else for a user other than root without MEMDEDUP_RUN_DIR the host's
 * daemon (root's, in MD_HOST_RUN_DIR) if it answers, else
 * <run_dir>/memdedupd.sock (run_dir as md__run_dir_lookup: nothing is
 * created). 0, or -ENAMETOOLONG, or md__run_dir_lookup's error but
 * -ENOENT. */
int md__daemon_socket_path(const char *path, char *buf, size_t size);

/* Connects. -ENOENT / -ECONNREFUSED: no daemon there. -EPERM (logged): the
 * daemon there runs as neither root nor our euid. */
int md__client_connect(struct md__client **c, const char *socket_path);
void md__client_free(struct md__client *c);
/* The socket, for poll(POLLIN): readable means a CONTROL may be waiting. */
int md__client_fd(const struct md__client *c);
/* 1 while the connection can carry requests (it may be behind). */
int md__client_alive(const struct md__client *c);
/* Sets the timeout of each request (ms, > 0). */
void md__client_set_timeout(struct md__client *c, int ms);
/* quiet 1: the connection writes no log line (the CLI's, whose own error
 * says what failed: the agent's lines say what it does next, reconnect).
 * What a daemon that refused the connection said is kept either way:
 * md__client_refusal, "" if it did not. */
void md__client_set_quiet(struct md__client *c, int quiet);
const char *md__client_refusal(const struct md__client *c);

/* HELLO: joins the domain (NULL or "" for the caller's default one). On 0,
 * *welcome is filled and *pool_fd is the pool's read-only descriptor (the
 * caller owns it; map it MAP_PRIVATE, PROT_READ or copy-on-write). */
int md__client_hello(struct md__client *c, const char *domain, uint32_t flags,
		     struct md__msg_welcome *welcome, int *pool_fd);
/* The flags of the HELLO the daemon welcomed (md__client_open may have
 * said it again without them). */
uint32_t md__client_hello_flags(const struct md__client *c);
/* md__client_connect, then md__client_hello; a HELLO with flags that the
 * daemon refuses as malformed (one older than the flags) is said again
 * without them, on a new connection. *c only on 0. */
int md__client_open(struct md__client **c, const char *socket_path, const char *domain, uint32_t flags,
		    struct md__msg_welcome *welcome, int *pool_fd);
/* LOOKUP: slot1[i] = slot + 1 of a page with hash[i], 0 if none,
 * MD_LOOKUP_PUBLISH to publish it. n <= 512. A candidate only: compare the
 * bytes before relying on it. addr[i] (or NULL: none) is where the caller
 * holds the page: when another agent publishes that content, the daemon
 * sends it back in a CANDIDATES. */
int md__client_lookup(struct md__client *c, const uint64_t *hash, const uint64_t *addr,
		      uint32_t n, uint32_t *slot1);
/* The same, with md__read_tag of the file page each one holds (0: not from
 * a read; tag NULL: none at all). */
int md__client_lookup_tagged(struct md__client *c, const uint64_t *hash, const uint64_t *addr,
			     const uint64_t *tag, uint32_t n, uint32_t *slot1);
/* READS: n runs of guest pages reads just filled (protocol.h). */
int md__client_reads(struct md__client *c, const struct md__read_run *run, uint32_t n);
/* PUBLISH: n <= 64 pages (hash[i] = md__page_hash(pages + i * 4096)) go
 * into consecutive slots from *first_slot; the caller holds one reference
 * on each. */
int md__client_publish(struct md__client *c, const uint64_t *hash, const void *pages,
		       uint32_t n, uint32_t *first_slot);
/* n <= MD_PUBLISH_EACH_MAX PUBLISHes of one page each (pages[i], sent from
 * where it is, the scanner's copies: a page that changed since it was
 * hashed is refused), sent
 * at once, their replies read after: status[i] is 0 (slot[i] filled, one reference held) or the
 * daemon's refusal of page i (an ERROR's status). Returns 0 when every
 * reply came, else a negative errno, and the caller holds none of them:
 * those that came are given back (queued for md__client_take_back if the
 * connection went), and with -ETIMEDOUT the late ones when they come. Each
 * page gets the live slot of an equal page if the pool has one, as with a
 * one-page md__client_publish(). */
int md__client_publish_each(struct md__client *c, const uint64_t *hash, const void *const *pages,
			    uint32_t n, uint32_t *slot, int *status);
/* REF (delta > 0) or UNREF (delta < 0) of n <= 1024 slots. All or none:
 * -EINVAL if any slot is not live (REF) or not held (UNREF). An UNREF that
 * was sent, or queued while the daemon is behind, returns 0 even if its
 * answer is late: it is applied, or split and sent again if refused. One
 * the connection went before it was sent whole is queued too (the error
 * is returned): md__client_take_back has it. */
int md__client_ref(struct md__client *c, const uint32_t *slots, uint32_t n, int delta);
/* REPORT: the agent's counters (n <= 256), shown by `memdedup status`. */
int md__client_report(struct md__client *c, const uint64_t *counters, uint32_t n);
/* The references queued to give back, taken out of c (its connection is
 * going: another one to the same daemon may send them): *slots malloc'd
 * (NULL if none; the caller frees it), *n. -ENOMEM leaves them in c. */
int md__client_take_back(struct md__client *c, uint32_t **slots, size_t *n);
/* How many references the client keeps to give back (what take_back would
 * return). */
size_t md__client_back_slots(const struct md__client *c);
/* How many replies are owed to callers that timed out: what a late REF
 * or PUBLISH grants is given back only when its reply comes. */
unsigned md__client_late(const struct md__client *c);
/* Queues n references to give back (UNREF), sent with the next requests
 * or when idle, as an UNREF answered late is. 0, or -ENOBUFS past
 * MD_CLIENT_BACK_MAX (they stay pinned; said once in the log). */
int md__client_give_back(struct md__client *c, const uint32_t *slots, size_t n);
/* CONTROL_DONE: how the CONTROL of token went (status 0 or -errno, why: a
 * line for people, may be NULL). While a late reply is owed (the daemon is
 * behind) it is kept, up to MD_CLIENT_DONE_MAX (-ENOBUFS past), and sent
 * once the daemon caught up (md__client_next_control): 0 then. */
int md__client_control_done(struct md__client *c, uint32_t token, int status, const char *why);
/* Any request (the CLI's STATUS and CONTROL): sends type with payload,
 * waits for the reply of the same seq. Its payload goes to reply (at most
 * *reply_len bytes, -EMSGSIZE if more), its type to *reply_type if not
 * NULL, its length to *reply_len. An ERROR reply is returned like any other
 * (check *reply_type). */
int md__client_request(struct md__client *c, unsigned type, const void *payload, uint32_t len,
		       void *reply, uint32_t *reply_len, unsigned *reply_type);
/* The oldest CONTROL the daemon sent on its own: 0 and *ctl filled,
 * -EAGAIN if none is waiting. Reads what is waiting without blocking; the
 * CONTROL_DONEs kept while a reply was late go first, which may wait for
 * their ACK up to the client's timeout. */
int md__client_next_control(struct md__client *c, struct md__msg_control *ctl);
/* Moves up to max CANDIDATES addresses, oldest first, to addr; returns
 * how many. Reads what is waiting on the socket first, without blocking. */
size_t md__client_take_candidates(struct md__client *c, uint64_t *addr, size_t max);
/* How many CANDIDATES addresses are queued (what was read so far). */
size_t md__client_candidates(const struct md__client *c);
/* The part of the daemon's tunables it last gave this agent, in 65536ths; 0: none. */
uint32_t md__client_share(const struct md__client *c);

/* Starts memdedupd (daemon_exe) unless a daemon answers on the default
 * socket; waits up to 2 s for it to answer. 0 when one answers. place, if
 * not NULL, is called with the new process's pid before it execs (it waits
 * for place to return). */
int md__daemon_ensure(const char *daemon_exe, void (*place)(pid_t pid));
/* memdedupd's exit status when another daemon holds its run directory or
 * answers on its socket: that one runs, or is starting. */
#define MD_D_EXIT_HELD 3
/* Set in the environment of a memdedupd md__daemon_ensure starts: exit 3
 * then says nothing (another daemon is what the caller wanted). */
#define MD_D_ON_DEMAND_ENV "MEMDEDUP_DAEMON_ON_DEMAND"
/* 1 if a daemon answers at the socket (NULL: default). */
int md__daemon_alive(const char *socket_path);
/* 0 if a daemon of root or ours listens at the socket (NULL: default),
 * busy or not: a connect that never waits. -errno else (-ENOENT,
 * -ECONNREFUSED: none). */
int md__daemon_probe(const char *socket_path);
#endif
