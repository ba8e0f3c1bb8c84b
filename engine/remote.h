/*
 * remote.h - the engine's pool when it belongs to memdedupd: shared by every
 * agent of a sharing domain, across processes.
 *
 * The daemon owns the pool and its index; the agent holds a read-only
 * descriptor of it (it maps pool pages MAP_PRIVATE, copy-on-write, and never
 * can write them) and a view for byte compares. A pool slot is pinned (REF)
 * before a page is frozen and compared with it, so the daemon can never free
 * a slot under a fresh mapping; a merge that fails unpins it (UNREF).
 *
 * When the daemon goes away, calls fail with -ENOTCONN: the agent keeps every
 * page it merged (their pool lives on in those mappings), stops merging, and
 * reconnects; a new daemon brings a new pool (generation), and the old slot
 * references are forgotten, as the daemon that counted them is gone. A
 * connection that went while the daemon lives (a reply more than 10 s late)
 * leaves the references it still had to give back: the next connection to
 * that daemon gives them back.
 */
#ifndef MD_ENGINE_REMOTE_H
#define MD_ENGINE_REMOTE_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "client.h"

struct md__remote {
	pthread_mutex_t lock;         /* the client is shared by the scanner and the agent thread */
	struct md__client *c;         /* NULL while disconnected */
	char socket[256];
	int socket_default;           /* chosen anew at every connect: the host's
	                               * daemon may come or go (md__daemon_socket_path) */
	char domain[MD_DOMAIN_MAX + 1];
	int ro_fd;                    /* the pool, read-only; -1 before the first hello */
	dev_t dev;                    /* ro_fd's file, as received: the VMM may close */
	ino_t ino;                    /* the number or put a file of its own there */
	int fd_lost;                  /* ro_fd was found another file (md__remote_fd_ok):
	                               * the connection goes, the next brings a new one */
	const unsigned char *view;    /* PROT_READ, MAP_SHARED view of ro_fd */
	size_t view_pages;
	uint64_t pool_size;           /* the pool file's size as last seen: it only grows */
	uint64_t generation;
	struct md__msg_welcome welcome;
	uint64_t connects, lost;
	int same_daemon;              /* the last connection went to the one before it */
	int control_pid;              /* its CONTROLs name us only when asked so
	                               * (MD_HELLO_CONTROL_PID); else always */
	/* References to give back that no connection took (it went, or there
	 * was none): a reconnect to the same daemon (generation) sends them;
	 * its record of this agent still counts them. */
	uint32_t *owed;
	size_t nowed;
};

struct md__engine;

/* Prepares a remote pool (no connection yet). socket NULL: the default. */
int md__remote_init(struct md__remote *rm, const char *socket, const char *domain);
void md__remote_fini(struct md__remote *rm);
/* Connects, says hello and switches the engine to the new pool. 0 or -errno. */
int md__engine_remote_connect(struct md__engine *e);
/* Hangs up and lets the pool go: its view and descriptor, what the
 * connection owed, the engine's slots of it (pages still mapping it are
 * moved off: md__engine_leave_file); the next md__engine_remote_connect
 * starts anew. For an engine that gave every slot back, or whose record
 * memdedupd drops at the next HELLO (no pool page mapped by then). */
void md__engine_remote_drop(struct md__engine *e);
/* 1 when no reference is left to give back: none queued by the engine,
 * owed, or kept by the client. */
int md__engine_unrefs_settled(struct md__engine *e);
int md__remote_connected(struct md__remote *rm);
/* 1 if ro_fd is still the descriptor of the pool received (engine lock
 * held). Else 0 for good: nothing is to be mapped from it, and the next
 * call to memdedupd hangs up (said once in the log), so that the agent's
 * next connect brings a new descriptor (the same daemon keeps our
 * references). */
int md__remote_fd_ok(struct md__remote *rm);
/* 1 if slots [slot, slot+n) lie in the pool file (their view pages readable). */
int md__remote_valid(struct md__remote *rm, uint32_t slot, size_t n);
/* LOOKUP n hashes of the pages at addr[] (tag[]: their file pages, 0 or
 * NULL: none): slot1[i] as in LOOKUP_R (slot + 1, 0, MD_LOOKUP_PUBLISH). */
int md__remote_lookup_n(struct md__remote *rm, const uint64_t *hash, const uint64_t *addr,
			const uint64_t *tag, uint32_t n, uint32_t *slot1);
/* READS: n runs of pages reads just filled. */
int md__remote_reads(struct md__remote *rm, const struct md__read_run *run, uint32_t n);
/* PUBLISH n pages one by one, in one round trip: status[i] 0 and slot[i]
 * (pinned for us; an equal live page's slot if the pool had one), or the
 * daemon's refusal. 0, or -errno when the daemon went away. */
int md__remote_publish_each(struct md__remote *rm, const uint64_t *hash, const void *const *pages,
			    uint32_t n, uint32_t *slot, int *status, uint64_t gen);
/* Round trips made one after another (a pass of UNREFs, REFs one by one)
 * stop once MD_RT_PASS_MS went by since the first began: the client's
 * timeout bounds each of them, not the lot, and a daemon slow to answer (a
 * second each, well within that timeout) held the agent's thread, which
 * alone takes lease breaks, for a minute and more. */
#define MD_RT_PASS_MS 500
/* When a pass begins (ms, monotonic), for md__rt_more. */
int64_t md__rt_begin(void);
/* 1 if another round trip may go in the pass begun at start. */
int md__rt_more(int64_t start);
/* REF (+1) / UNREF (-1) n slots, all or none. gen (here and above): the
 * pool generation the caller's batch began with; if the pool is another
 * daemon's now (a reconnection meanwhile), nothing is sent: -ESTALE, or 0
 * for an UNREF (what it gave back is gone with that daemon). */
int md__remote_ref_n(struct md__remote *rm, const uint32_t *slots, uint32_t n, int delta, uint64_t gen);
/* After a REF of n slots was refused (one no longer live): a REF of each
 * alone, ok[i] 1 for those pinned, until the pass took MD_RT_PASS_MS (the
 * rest are not pinned: ok[i] 0). Returns how many were. */
size_t md__remote_ref_each(struct md__remote *rm, const uint32_t *slots, size_t n, unsigned char *ok,
			   uint64_t gen);
/* Queues n references of pool generation gen to give back with the
 * client's own UNREFs (md__client_give_back: sent with the next requests,
 * without waiting for their answers, and split there if refused); owed to
 * the next connection if there is none, forgotten if the pool is another
 * daemon's now. */
void md__remote_give_back(struct md__remote *rm, const uint32_t *slots, size_t n, uint64_t gen);
int md__remote_report(struct md__remote *rm, const uint64_t *ctr, uint32_t n);
int md__remote_next_control(struct md__remote *rm, struct md__msg_control *ctl);
int md__remote_control_done(struct md__remote *rm, uint32_t token, int status, const char *why);
/* Pages this agent looked up whose content another agent has published
 * since (the daemon's CANDIDATES): up to max addresses, oldest first. */
size_t md__remote_take_candidates(struct md__remote *rm, uint64_t *addr, size_t max);
/* Whether candidates came and wait for the scanner's next batch. */
int md__remote_candidates_waiting(struct md__remote *rm);
/* This agent's part of the daemon's tunables, in 65536ths (0: not said). */
uint32_t md__remote_share(struct md__remote *rm);
#endif
