/*
 * agent.c - agents: one record per VMM process that said HELLO, with the
 * references it holds on its domain's pool slots.
 *
 * Why references belong to the process, not to the connection: an agent
 * whose connection drops (a daemon-side close after a malformed message,
 * a reconnect) still maps the pages. Punching them would make its guest read
 * zeroes. So a record outlives its connection and goes only when the process
 * exits, which its pidfd tells (SO_PEERPIDFD, else pidfd_open, both taken
 * when the connection is accepted, never later), or when the address space
 * it had at its HELLO is gone while the process lives on (it exec'd a
 * program without the agent: its close-on-exec connection closed), which
 * /proc/PID/pagemap opened at that HELLO tells. A process
 * that reconnects to the same domain gets its record back, references and
 * all. Without a pidfd (a kernel before Linux 5.3, descriptors run out) an
 * agent is refused: its references could only go with the connection, and
 * an agent that timed out and reconnected would still map slots freed and
 * rewritten meanwhile.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "stats_file.h"
#include "sys.h"

static int pidfd_exited(int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	return poll(&p, 1, 0) > 0;
}

/* The pid of pidfd's process in its own pid namespace, when that is
 * below ours and the process is pid in ours (the fdinfo's NSpid line, our
 * namespace's first, Linux 5.10); else 0, as when it shares ours. */
static pid_t pidfd_inner_pid(int pidfd, pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
	if (md__read_text(path, buf, sizeof(buf)) <= 0)
		return 0;
	char *p = strstr(buf, "\nNSpid:"), *end;
	if (!p)
		return 0;
	p += strlen("\nNSpid:");
	long first = 0, last = 0;
	int levels = 0;
	for (;; p = end) {
		long v = strtol(p, &end, 10);
		if (end == p)
			break;
		first = levels++ ? first : v;
		last = v;
		if (*end != '\t' && *end != ' ')
			break;	/* the line's end (strtol would skip it) */
	}
	return levels >= 2 && first == pid && last > 0 ? (pid_t)last : 0;
}

/* The pid of pidfd's process as our /proc names it (the fdinfo's Pid
 * line); -1 if it exited, 0 if that /proc cannot see it. */
static pid_t pidfd_proc_pid(int pidfd)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
	if (md__read_text(path, buf, sizeof(buf)) <= 0)
		return 0;
	char *p = strstr(buf, "\nPid:");
	return p ? (pid_t)strtol(p + strlen("\nPid:"), NULL, 10) : 0;
}

/* /proc/pid/pagemap of pidfd's process (mm_fd), or -errno. */
static int open_mm(int pidfd, pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	/* It is that process's if our /proc names it pid (a /proc of
	 * another pid namespace may not) and it had not exited after the
	 * open: its pid was not free for another to take. */
	if (pidfd_proc_pid(pidfd) != pid || pidfd_exited(pidfd)) {
		close(fd);
		return -ESRCH;
	}
	return fd;
}

/* Opens a->mm_fd, if it has none: the address space its process has now,
 * on a connection whose HELLO was just handled. */
static void agent_open_mm(struct md__agent *a)
{
	if (a->mm_fd >= 0)
		return;
	int fd = open_mm(a->pidfd, a->pid);
	if (fd < 0 && fd != -ESRCH)
		md__log_once(141, "cannot open /proc/%d/pagemap (%s): an agent's process that execs a "
			     "program without the agent keeps its pool references until it exits",
			     (int)a->pid, strerror(-fd));
	a->mm_fd = fd < 0 ? -1 : fd;
}

/* 1 if the address space a's process had at its HELLO is gone (it exec'd,
 * or it is exiting): no page of the pool is mapped there any more. 0 if it
 * is there (a connection lost otherwise: the VMM still maps what it
 * merged), or that cannot be told. A read of less than an entry is
 * refused (EINVAL) once the kernel has a hold on that address space, and
 * reads nothing when it could not get one: neither takes the process's
 * mmap lock, which a VMM stuck in a fault could hold the loop on. */
static int mm_gone(const struct md__agent *a)
{
	char c;
	return a->mm_fd >= 0 && pread(a->mm_fd, &c, 1, 0) == 0;
}

struct md__agent *md__agent_find(struct md__daemon *d, pid_t pid)
{
	for (struct md__agent *a = d->agents; a; a = a->next)
		if (a->pid == pid)
			return a;
	return NULL;
}

struct md__agent *md__agent_find_num(struct md__daemon *d, unsigned num)
{
	for (struct md__agent *a = d->agents; a && num; a = a->next)
		if (a->num == num)
			return a;
	return NULL;
}

/* The next number after the last given that no agent has, or 0 when all
 * are taken. */
static unsigned free_num(struct md__daemon *d)
{
	uint64_t used[(MD_AGENT_NUM_MAX + 1) / 64] = { 0 };
	for (const struct md__agent *a = d->agents; a; a = a->next)
		used[a->num / 64] |= 1ull << (a->num % 64);
	for (unsigned k = 1; k <= MD_AGENT_NUM_MAX; k++) {
		unsigned n = (d->last_agent_num + k - 1) % MD_AGENT_NUM_MAX + 1;
		if (!(used[n / 64] & 1ull << (n % 64)))
			return d->last_agent_num = n;
	}
	return 0;
}

int md__agent_hello(struct md__daemon *d, struct md__conn *c, const struct md__msg_hello *h,
		    char *why, size_t size)
{
	struct md__agent *a;
	int err;

	/* The process that connected must be watched, and still there: its
	 * pid, gone, may be another agent's now, whose record a HELLO on this
	 * inherited connection would take over (references and all), and
	 * only the pidfd taken at accept can tell (server.c). Without one, a
	 * new record's references would also go with the connection while
	 * the process may still map the pages: a slot freed so is rewritten
	 * under its guest. */
	if (c->peer_pidfd < 0) {
		int e = -c->peer_pidfd_err;
		/* Linux 6.5-6.15 refuse SO_PEERPIDFD of a peer already reaped
		 * with EINVAL: gone, as ESRCH says; only a shortage is ours. */
		err = e == ENOSYS ? -ENOSYS : e == EMFILE || e == ENFILE || e == ENOMEM ? -EMFILE : -ESRCH;
		snprintf(why, size, "cannot watch pid %d (%s)%s", (int)c->pid, strerror(e),
			 err == -ENOSYS ? ": this kernel has no pidfd_open (Linux 5.3)" : "");
		return err;
	}
	if (pidfd_exited(c->peer_pidfd)) {
		snprintf(why, size, "pid %d, which connected, has exited", (int)c->pid);
		return -ESRCH;
	}
	/* The pid is what status shows and what CONTROL targets: it must be
	 * the peer's own, as the kernel saw it at connect, or, for a peer in
	 * a pid namespace below ours (a container's VMM), its pid there,
	 * which is all it knows of itself; status and CONTROL use ours. */
	if (c->pid <= 0 ||	/* a peer whose pid we cannot see */
	    ((pid_t)h->pid != c->pid && (pid_t)h->pid != pidfd_inner_pid(c->peer_pidfd, c->pid))) {
		snprintf(why, size, "HELLO names pid %u but the peer is pid %d", h->pid, (int)c->pid);
		return -EPERM;
	}
	a = md__agent_find(d, c->pid);
	if (a && pidfd_exited(a->pidfd)) {
		md__agent_exited(d, a);	/* a pid reused before we saw the exit */
		a = NULL;
	}
	/* The same live process (both pidfds say so) on a new connection
	 * while its old one is still open: an agent has one at a time, so the
	 * old one is stale, kept open by a child the VMM forked (which runs
	 * without an agent) or not yet seen closed. Refused, the agent could
	 * never reconnect while that child lived. The old connection closes,
	 * what it still owed answered as gone; the record is the new one's
	 * (or goes, below, if the process exec'd). The address space the
	 * record's HELLO came from gone says the exec too, whatever the new
	 * agent could tell: the references it gets here must not go with the
	 * old ones' when that is seen at a hang-up. */
	int execd = a && ((h->flags & MD_HELLO_NO_POOL_MAPS) || mm_gone(a));
	int taken_over = 0;
	if (a && a->conn && (execd || (a->uid == c->uid && strcmp(a->dom->name, h->domain) == 0))) {
		taken_over = 1;
		struct md__conn *old = a->conn;
		md__conn_apply_left(d, old);	/* its CONTROL_DONEs first: the CLI hears them */
		md__control_gone(d, old, a->pid);
		old->agent = NULL;
		a->conn = NULL;
		md__conn_fail(d, old, 0, -EBUSY, "pid %d said HELLO on another connection", (int)c->pid);
	}
	/* The same process (its pidfd and ours both live), mapping no pool
	 * page any more (it exec'd): what the record holds is nobody's. An
	 * unmerge's pause is the process's, and stays (QEMU's cpr-exec goes
	 * on with the same guest), until a RESUME. The old record goes only
	 * once the new one is made: a HELLO refused (too many domains, no
	 * memory) leaves it, and its pause, for the next try. */
	struct md__agent *gone = NULL;
	if (a && !a->conn && execd) {
		md__dlog_peer("agent %d came back mapping no pool page (exec): its references go",
			      (int)c->pid);
		gone = a;
		a = NULL;
	}
	/* A record kept with no reference only to say "paused" (it unmerged:
	 * md__agent_detach) of a process whose user or domain changed since
	 * (QEMU's -runas drops root after the agent joined): nothing in it is
	 * the old user's; the new record stays paused. Refused, the process
	 * could never join again. */
	if (a && !a->conn && !a->nrefs && (a->uid != c->uid || strcmp(a->dom->name, h->domain) != 0)) {
		gone = a;
		a = NULL;
	}
	if (a) {
		if (a->conn) {
			snprintf(why, size, "pid %d is already connected", (int)c->pid);
			return -EBUSY;
		}
		if (a->uid != c->uid || strcmp(a->dom->name, h->domain) != 0) {
			snprintf(why, size, "pid %d still holds references in domain '%s'",
				 (int)c->pid, a->dom->name);
			return -EBUSY;
		}
		a->conn = c;	/* a reconnect: same pool, same references */
		a->look_ms = 0;
		agent_open_mm(a);
		a->control_pid = (h->flags & MD_HELLO_CONTROL_PID) != 0;
		a->share_sent = 0;	/* a new connection was told nothing */
		a->hellos++;
		c->agent = a;
		return 0;
	}

	/* Each record holds a pidfd, its pagemap's descriptor and a number
	 * while its process lives: at most one a connection the descriptor
	 * budget allows, less a part kept for root, and 256 of one user
	 * other than root, so no user can take them from the rest. */
	size_t all = 0, mine = 0;
	for (const struct md__agent *o = d->agents; o; o = o->next) {
		if (o == gone)
			continue;
		all++;
		mine += o->uid == c->uid;
	}
	int room = md__privileged(c->uid) ? all < d->max_conns : all < d->max_conns - MD_D_RESERVED(d->max_conns);
	if (!room || (c->uid != 0 && mine >= MD_D_AGENTS_PER_UID)) {
		if (!room)
			snprintf(why, size, "too many agents (%zu)", all);
		else
			snprintf(why, size, "too many agents of uid %u (at most %u)", (unsigned)c->uid,
				 MD_D_AGENTS_PER_UID);
		err = -EUSERS;
		goto refused;
	}
	a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(why, size, "out of memory");
		err = -ENOMEM;
		goto refused;
	}
	a->ep.kind = MD_EP_PIDFD;
	a->mm_fd = -1;
	a->pid = c->pid;
	a->num = free_num(d);
	a->uid = c->uid;
	a->pidfd = c->peer_pidfd;	/* the connection's until all went well */
	/* The record that goes once this one is made does not count its
	 * domain against the user's, if it is that domain's last live one. */
	err = md__domain_get(d, c->uid, h->domain,
			     gone && gone->dom->nagents - gone->dom->nexited == 1 ? gone->dom : NULL, &a->dom);
	if (err) {
		snprintf(why, size, err == -EUSERS ? "too many domains for uid %u" :
			 "cannot create the pool of uid %u", (unsigned)c->uid);
		goto free_agent;
	}
	err = md__ep_add(d, a->pidfd, &a->ep, EPOLLIN);
	if (err) {
		snprintf(why, size, "cannot watch pid %d", (int)c->pid);
		goto release_domain;
	}
	c->peer_pidfd = -1;
	a->conn = c;
	a->hellos = 1;
	agent_open_mm(a);
	if (gone) {
		a->unmerged = gone->unmerged;
		a->paused = gone->paused;
		a->held_by_admin = gone->held_by_admin;
		a->resumed_alone = gone->resumed_alone;
		md__agent_exited(d, gone);
	}
	a->control_pid = (h->flags & MD_HELLO_CONTROL_PID) != 0;
	c->agent = a;
	a->next = d->agents;
	d->agents = a;
	md__dlog_peer("agent %d (uid %u) joined domain %u '%s'", (int)a->pid, (unsigned)a->uid,
		 a->dom->id, a->dom->name);
	return 0;

release_domain:
	md__domain_release(d, a->dom);
free_agent:
	free(a);
refused:
	/* A record whose connection this HELLO took over is left as its
	 * close would have left it (its close no longer does: it is no
	 * agent's now): looked at for the exec, its references shed then,
	 * its pause kept for the next try. */
	if (gone && taken_over)
		md__agent_detach(d, gone);
	return err;
}

/* The pages of the process's address space and those resident
 * (/proc/PID/statm): 0 or -errno. */
static int statm(pid_t pid, uint64_t *size, uint64_t *resident)
{
	char path[64], buf[256];
	unsigned long long s, r;
	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	ssize_t n = md__read_text(path, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	if (sscanf(buf, "%llu %llu", &s, &r) != 2)
		return -EINVAL;
	*size = s;
	*resident = r;
	return 0;
}

/* A reference stands for a page of the agent's that maps the slot, or is
 * about to (pinned before its merge), plus some it owes back after its
 * requests timed out (the client queues up to MD_CLIENT_BACK_MAX UNREFs):
 * never more than its address space has pages, and MD_D_REFS_OWED. More
 * served nothing, and each cost a put as it exited (2^32 of one slot held
 * the loop for seconds). The bound is read again only when reached: the
 * process may have grown. Unknown, it is all of user space (2^35 pages). */
static int refs_fit(struct md__agent *a, uint64_t more)
{
	uint64_t size, resident;
	if (a->nrefs + more <= a->refs_max)
		return 1;
	if (statm(a->pid, &size, &resident) != 0)
		size = 1ull << MD_WHERE_PAGE_BITS;
	a->refs_max = size + MD_D_REFS_OWED;
	return a->nrefs + more <= a->refs_max;
}

static int refs_grow(struct md__agent *a, size_t need)
{
	if (need <= a->refs_cap)
		return 0;
	size_t cap = a->refs_cap ? a->refs_cap : 1024;
	while (cap < need)
		cap *= 2;
	if (cap > a->dom->pool.max_pages)
		cap = a->dom->pool.max_pages;
	uint32_t *n = realloc(a->refs, cap * sizeof(*n));
	if (!n)
		return -ENOMEM;
	memset(n + a->refs_cap, 0, (cap - a->refs_cap) * sizeof(*n));
	a->dom->refs_table_bytes += (cap - a->refs_cap) * sizeof(*n);
	a->refs = n;
	a->refs_cap = cap;
	return 0;
}

/* UNREF of the agent's own counts, all or none (-EINVAL if one is not
 * held: duplicates in one message count). */
static int unref_own(struct md__agent *a, const uint32_t *slots, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		if (slots[i] >= a->refs_cap || a->refs[slots[i]] == 0) {
			while (i--)
				a->refs[slots[i]]++;
			return -EINVAL;
		}
		a->refs[slots[i]]--;
	}
	a->nrefs -= n;
	return 0;
}

int md__agent_refs(struct md__agent *a, const uint32_t *slots, uint32_t n, int delta)
{
	struct md__domain *dom = a->dom;
	uint32_t i, max = 0;

	if (delta > 0) {
		/* Check all first: a REF is all or nothing. n bounds how many
		 * references one message can add to a slot. */
		for (i = 0; i < n; i++) {
			if (!md__domain_slot_ok(dom, slots[i], n))
				return -EINVAL;
			if (slots[i] > max)
				max = slots[i];
		}
		if (!refs_fit(a, n))
			return -EDQUOT;
		if (refs_grow(a, (size_t)max + 1))
			return -ENOMEM;
		for (i = 0; i < n; i++) {
			a->refs[slots[i]]++;
			md__domain_get_ref(dom, slots[i]);
		}
		a->nrefs += n;
		return 0;
	}
	int err = unref_own(a, slots, n);
	if (err)
		return err;
	for (i = 0; i < n; i++)
		md__domain_put_ref(dom, slots[i]);
	return 0;
}

static void drain_queue(struct md__daemon *d, struct md__agent *a)
{
	if (a->draining)
		return;
	if (!d->draining)
		d->draining_tail = &d->draining;
	a->draining = 1;
	a->drain_next = NULL;
	*d->draining_tail = a;
	d->draining_tail = &a->drain_next;
}

int md__agent_unref_later(struct md__daemon *d, struct md__agent *a, const uint32_t *slots, uint32_t n)
{
	/* What was told already goes first: the rest moves to the front. */
	if (a->put_at) {
		memmove(a->put, a->put + a->put_at, (a->nput - a->put_at) * sizeof(*a->put));
		a->nput -= a->put_at;
		a->put_at = 0;
	}
	if (a->nput + n > a->put_cap) {
		size_t cap = a->put_cap ? a->put_cap : 1024;
		while (cap < a->nput + n)
			cap *= 2;
		uint32_t *p = realloc(a->put, cap * sizeof(*p));
		if (!p) {
			md__log_once(134, "memdedupd is short of memory: the UNREFs a connection left "
				     "as it closed are applied at once");
			return md__agent_refs(a, slots, n, -1);
		}
		a->put = p;
		a->put_cap = cap;
	}
	int err = unref_own(a, slots, n);
	if (err)
		return err;
	memcpy(a->put + a->nput, slots, n * sizeof(*slots));
	a->nput += n;
	a->dom->refs_draining += n;
	drain_queue(d, a);
	return 0;
}

int md__agent_publish(struct md__agent *a, const struct md__msg_publish *p, uint32_t *first, int match_only)
{
	/* Room for the publisher's references before the slots exist: after
	 * publishing, nothing may fail. */
	uint32_t end = (uint32_t)a->dom->pool.end;
	if (!refs_fit(a, p->n))
		return -EDQUOT;
	int err = refs_grow(a, (size_t)end + p->n);
	if (err)
		return err;
	err = md__domain_publish(a->dom, p->hash, p->pages, p->n, first, match_only);
	if (err)
		return err;
	/* A one-page run may reuse a freed slot below end: covered above. */
	for (uint32_t i = 0; i < p->n; i++)
		a->refs[*first + i]++;
	a->nrefs += p->n;
	return 0;
}


/* What the agent says it registered sizes its domain's tables (first
 * sightings, reads), which count against no budget: from a user other than
 * root (as the pool's per-user bound) taken as at most what the process has
 * resident, so a peer that claims 2^45 bytes cannot make memdedupd allocate
 * tables for them in each of its domains. */
void md__agent_report(struct md__agent *a, const struct md__msg_report *r)
{
	memcpy(a->counters, r->counters, r->n * sizeof(r->counters[0]));
	a->ncounters = r->n;
	uint64_t claimed = r->n > MD_CTR_REGISTERED_BYTES ? r->counters[MD_CTR_REGISTERED_BYTES] / 4096 : 0;
	uint64_t size, resident = UINT64_MAX;
	if (a->uid && statm(a->pid, &size, &resident) != 0)
		resident = 0;
	a->dom->registered_pages -= a->registered_counted;
	a->registered_counted = claimed < resident ? claimed : resident;
	a->dom->registered_pages += a->registered_counted;
	a->reported_ms = md__now_ms();
}

int md__agent_stopped(const struct md__agent *a)
{
	return a->ncounters > MD_CTR_SCAN_STATE && a->counters[MD_CTR_SCAN_STATE] == MD_SCAN_STATE_STOPPED;
}

/* Tells the pool what a owes it, up to *left (spent): 1 once all is. */
static int agent_drain(struct md__agent *a, size_t *left)
{
	struct md__domain *dom = a->dom;
	for (; a->put_at < a->nput && *left; (*left)--) {
		md__domain_put_ref(dom, a->put[a->put_at++]);
		dom->refs_draining--;
	}
	if (a->put_at < a->nput)
		return 0;
	if (!a->exited)
		return 1;
	/* Its mappings are gone with the process: every reference goes, and
	 * slots nobody else holds are punched. A slot's at once: one at a
	 * time, 2^32 of them held the loop for seconds. */
	for (size_t looked = 0; a->drain_at < a->refs_cap && *left; a->drain_at++) {
		uint32_t n = a->refs[a->drain_at];
		if (n) {
			md__domain_put_refs(dom, (uint32_t)a->drain_at, n);
			dom->refs_draining -= n;
			(*left)--;
		} else if (++looked % 64 == 0) {
			(*left)--;
		}
	}
	return a->drain_at == a->refs_cap;
}

void md__agents_drain(struct md__daemon *d)
{
	size_t left = MD_D_DRAIN_REFS;
	while (d->draining && agent_drain(d->draining, &left)) {
		struct md__agent *a = d->draining;
		d->draining = a->drain_next;
		a->draining = 0;
		free(a->put);
		a->put = NULL;
		a->put_at = a->nput = a->put_cap = 0;
		if (!a->exited)
			continue;
		md__dlog_peer("agent %d gone: %llu references dropped, domain %u has %llu live pages",
			      (int)a->pid, (unsigned long long)a->nrefs, a->dom->id,
			      (unsigned long long)md__pool_live(&a->dom->pool));
		a->dom->nexited--;
		a->dom->refs_table_bytes -= a->refs_cap * sizeof(*a->refs);
		md__domain_release(d, a->dom);
		free(a->refs);
		free(a);
	}
}

void md__agent_exited(struct md__daemon *d, struct md__agent *a)
{
	md__control_gone(d, NULL, a->pid);
	a->dom->registered_pages -= a->registered_counted;
	a->registered_counted = 0;
	/* Out of the agents at once: its pid may be another process's from
	 * now on, and its number another agent's; its references go over the
	 * next wake-ups (md__agents_drain), with the domain last. */
	for (struct md__agent **pp = &d->agents; *pp; pp = &(*pp)->next) {
		if (*pp == a) {
			*pp = a->next;
			break;
		}
	}
	if (a->conn)
		a->conn->agent = NULL;
	a->conn = NULL;
	md__ep_forget(d, &a->ep, a->pidfd);
	close(a->pidfd);
	a->pidfd = -1;
	if (a->mm_fd >= 0)
		close(a->mm_fd);
	a->mm_fd = -1;
	a->exited = 1;
	a->dom->nexited++;
	a->dom->refs_draining += a->nrefs;
	a->drain_at = a->nrefs ? 0 : a->refs_cap;
	drain_queue(d, a);
}

/* a's references go as an exited agent's do (md__agents_drain), held
 * meanwhile by a record made for that alone, which no pid finds; a stays,
 * emptied, for its pause. 0, or -ENOMEM (a keeps them). */
static int shed_refs(struct md__daemon *d, struct md__agent *a)
{
	if (a->nrefs) {
		struct md__agent *z = calloc(1, sizeof(*z));
		if (!z)
			return -ENOMEM;
		z->pid = a->pid;
		z->uid = a->uid;
		z->pidfd = z->mm_fd = -1;
		z->dom = a->dom;
		z->refs = a->refs;
		z->refs_cap = a->refs_cap;
		z->nrefs = a->nrefs;
		z->exited = 1;
		a->dom->nagents++;	/* released as z is done */
		a->dom->nexited++;
		a->dom->refs_draining += z->nrefs;
		drain_queue(d, z);
		a->refs = NULL;
		a->refs_cap = 0;
		a->nrefs = a->refs_max = 0;
	}
	/* What it reported was of the program before the exec. */
	a->dom->registered_pages -= a->registered_counted;
	a->registered_counted = 0;
	a->ncounters = 0;
	a->reported_ms = 0;
	return 0;
}

/* a, unconnected, holds references or a pause: if its process lives on
 * without the address space those references are mapped in (it exec'd a
 * program without the agent, whose HELLO would have said so), they are
 * nobody's: they go, with the record unless it keeps a pause (QEMU's
 * cpr-exec goes on with the same guest; a new agent's HELLO takes it). A
 * VMM whose connection was lost otherwise still maps them: kept, looked
 * at again a few times (its program may have closed the connection just
 * before an exec), then until it exits or reconnects. */
static void look(struct md__daemon *d, struct md__agent *a)
{
	a->look_ms = 0;
	if (!mm_gone(a)) {
		if (a->mm_fd < 0)
			return;	/* nothing to look at */
		a->look_ms = md__now_ms() + (a->looks ? MD_D_LOOK_MS : MD_D_LOOK_LATER_MS);
		a->looks -= a->looks > 0;
		if (!d->look_at || a->look_ms < d->look_at)
			d->look_at = a->look_ms;
		return;
	}
	md__dlog_peer("agent %d lives on without the address space it joined with (exec): "
		      "its %llu references go", (int)a->pid, (unsigned long long)a->nrefs);
	if (!a->paused && !a->unmerged && !(a->resumed_alone && d->paused)) {
		md__agent_exited(d, a);
		return;
	}
	if (shed_refs(d, a) != 0) {
		md__log_once(142, "memdedupd is short of memory: the references of an agent that "
			     "exec'd stay until its process exits");
		return;
	}
	close(a->mm_fd);	/* nothing more to see; a reconnect opens its own */
	a->mm_fd = -1;
}

void md__agents_look(struct md__daemon *d)
{
	int64_t now = md__now_ms();
	d->look_at = 0;
	for (struct md__agent *a = d->agents, *next; a; a = next) {
		next = a->next;	/* a may go */
		if (a->conn)
			a->look_ms = 0;
		else if (a->look_ms && now >= a->look_ms)
			look(d, a);
		else if (a->look_ms && (!d->look_at || a->look_ms < d->look_at))
			d->look_at = a->look_ms;
	}
}

void md__agent_detach(struct md__daemon *d, struct md__agent *a)
{
	a->conn = NULL;
	/* With references the record stays until the process exits (it
	 * still maps those pages), or until it lives on without them;
	 * without, nothing is left to keep, and a process that connects and
	 * goes away cannot pile up records, each holding a number and a
	 * pidfd. A resume of it alone under the default pause is kept too:
	 * its WELCOME says so when back. */
	if (!a->nrefs && !a->unmerged && !a->paused && !(a->resumed_alone && d->paused)) {
		md__dlog_peer("agent %d left holding no references", (int)a->pid);
		md__agent_exited(d, a);
		return;
	}
	a->looks = MD_D_LOOKS;
	look(d, a);
}

void md__agent_free_all(struct md__daemon *d)
{
	/* Shutdown: the pools close too; live mappings keep their memfds.
	 * The records of agents gone are in d->draining alone. */
	while (d->draining) {
		struct md__agent *a = d->draining;
		d->draining = a->drain_next;
		a->draining = 0;
		if (a->exited) {
			free(a->put);
			free(a->refs);
			free(a);
		}
	}
	while (d->agents) {
		struct md__agent *a = d->agents;
		d->agents = a->next;
		if (a->pidfd >= 0)
			close(a->pidfd);
		if (a->mm_fd >= 0)
			close(a->mm_fd);
		free(a->put);
		free(a->refs);
		free(a);
	}
}
