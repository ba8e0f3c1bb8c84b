/*
 * control.c - CONTROL from the CLI: pause, resume, unmerge, set. The daemon
 * checks the request (a SET key and its range) before anything is sent, so
 * a bad value never reaches an agent; then it forwards one CONTROL (seq 0,
 * a token of its own) to each matching agent (an UNMERGE to one agent at a
 * time, daemon-wide, the requesters' uids in turn, each agent seeing the
 * memory the copies before it took; one a later PAUSE or RESUME reached
 * before its turn is not sent it), and answers CONTROL_R once each has
 * said how it went (CONTROL_DONE with that token), has gone away, or
 * MD_CONTROL_WAIT_MS have passed (less if MEMDEDUP_CONTROL_WAIT_MS says;
 * for an UNMERGE, since the agent's turn came; past it, the queue waits
 * for that agent, which may still be copying, up to as long again). An
 * agent may refuse: unmerge when the host (or its cgroup) lacks the
 * memory for the copies, resume once it stopped merging for good; the
 * CLI then says which agent and why, and exits 1.
 *
 * Who may do what: a user controls the agents of its own uid; root and the
 * daemon's own uid control all, and only they change the defaults that
 * WELCOME hands to new agents (pid 0: every agent, and the defaults).
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"

struct md__pending_control {
	struct md__pending_control *next;
	struct md__conn *cli;
	uid_t uid;                 /* the requester's */
	uint32_t seq, token;
	unsigned op;
	int notices;               /* the CLI asked for MD_CONTROL_NOTICES */
	int64_t deadline_ms;       /* an UNMERGE's: its agent's, set at its turn */
	size_t nowed;              /* agents that have not answered: owed[0..nowed) */
	pid_t *owed;
	unsigned done, failed, detached;
	unsigned kept;             /* a SET's agents that keep their own value */
	unsigned superseded;       /* an UNMERGE's queued agents a later PAUSE or RESUME took */
	unsigned gone;             /* an UNMERGE's queued agents that exited before their turn */
	int status;                /* the first failure's */
	char why[MD_TEXT_MAX + 1];
	char what[MD_KEY_MAX + MD_VALUE_MAX + 16];
	struct md__msg_control ctl; /* as forwarded, but pid and token */
	int admin, defaults;
	/* An UNMERGE's agents not sent it yet: queue[qnext..nqueue), sent
	 * after those of the UNMERGEs before it (d->controls, oldest first). */
	size_t nqueue, qnext;
	struct md__queued_agent { pid_t pid; unsigned num; } *queue;
};

static void plural(char *buf, size_t size, unsigned n, const char *one)
{
	snprintf(buf, size, "%u %s%s", n, one, n == 1 ? "" : "s");
}

/* Forgets p, unanswered. */
static void drop(struct md__daemon *d, struct md__pending_control *p)
{
	struct md__pending_control **pp = &d->controls;
	while (*pp && *pp != p)
		pp = &(*pp)->next;
	if (*pp)
		*pp = p->next;
	free(p->queue);
	free(p->owed);
	free(p);
}

/* Appends "; n one" (or many) to buf when n is not 0. */
static void count_part(char *buf, size_t size, unsigned n, const char *one, const char *many)
{
	size_t len = strlen(buf);
	if (n && len < size)
		snprintf(buf + len, size - len, "; %u %s", n, n == 1 ? one : many);
}

/* Answers the CLI and forgets p. Every agent p matched is in one count:
 * done, failed, kept, detached (these four are "of M"), superseded, gone. */
static void finish(struct md__daemon *d, struct md__pending_control *p)
{
	struct md__msg cr = { .hdr = { .type = MD_MSG_CONTROL_R, .seq = p->seq } };
	char n_done[32], n_all[32], rest[160] = "";
	plural(n_done, sizeof(n_done), p->done, "agent");
	plural(n_all, sizeof(n_all), p->done + p->failed + p->kept + p->detached, "agent");
	count_part(rest, sizeof(rest), p->kept, "keeps its own value", "keep their own value");
	count_part(rest, sizeof(rest), p->superseded, "not sent it, paused or resumed since",
		   "not sent it, paused or resumed since");
	count_part(rest, sizeof(rest), p->gone, "exited before its turn", "exited before their turn");
	count_part(rest, sizeof(rest), p->detached, "not connected now gets it when back",
		   "not connected now get it when back");
	cr.u.text.status = p->failed ? p->status : 0;
	if (p->failed) {
		/* The reason gets the room the rest leaves, cut at a word if
		 * it must be: cut at 100 bytes, it ended mid-word. */
		char tail[160];
		snprintf(tail, sizeof(tail), " (done by %u of %.20s%.100s)", p->done, n_all, rest);
		int room = (int)sizeof(cr.u.text.text) - 1 - (int)strnlen(p->what, 64) - 2 - (int)strlen(tail);
		int len = (int)strlen(p->why), cut = len > room;
		if (cut) {
			len = room > 3 ? room - 3 : 0;
			while (len > room / 2 && p->why[len] != ' ')
				len--;
		}
		snprintf(cr.u.text.text, sizeof(cr.u.text.text), "%.64s: %.*s%s%s", p->what, len, p->why,
			 cut ? "..." : "", tail);
	} else {
		snprintf(cr.u.text.text, sizeof(cr.u.text.text), "%.64s done by %.31s%.150s", p->what, n_done, rest);
	}
	if (p->cli) {
		p->cli->awaiting = 0;	/* its next requests may go on: md__conn_send wakes it */
		md__conn_send(d, p->cli, &cr, -1);
	}
	/* Lines about peers, all three of a CONTROL's: any user may send
	 * CONTROLs that reach no agent, answered at once, in a loop. */
	md__dlog_peer("%s", cr.u.text.text);
	drop(d, p);
}

static void failed(struct md__pending_control *p, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void failed(struct md__pending_control *p, int status, const char *fmt, ...)
{
	if (!p->failed++) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(p->why, sizeof(p->why), fmt, ap);
		va_end(ap);
		p->status = status < 0 ? status : -EIO;
	}
}

/* p no longer waits for pid: 1 if it did. */
static int settle(struct md__pending_control *p, pid_t pid)
{
	for (size_t i = 0; i < p->nowed; i++)
		if (p->owed[i] == pid) {
			p->owed[i] = p->owed[--p->nowed];
			return 1;
		}
	return 0;
}

/* Sends p's CONTROL to agent a and marks what it begins: a then owes p
 * its answer. Detached, a gets only what changes the defaults (it finds
 * them in its WELCOME when back) and a RESUME. */
static void forward(struct md__daemon *d, struct md__pending_control *p, struct md__agent *a)
{
	if (!a->conn && (p->defaults || p->op == MD_CTL_RESUME)) {
		if (p->op == MD_CTL_RESUME)
			a->resumed_alone = 1;	/* its WELCOME says so when back */
		else if (p->op == MD_CTL_PAUSE && p->admin)
			a->resumed_alone = 0;
		p->detached++;
		return;
	}
	if (!a->conn) {
		failed(p, -ENOTCONN, "pid %d is not connected to memdedupd now", (int)a->pid);
		return;
	}
	struct md__msg fwd = { .hdr = { .type = MD_MSG_CONTROL, .seq = 0 } };
	fwd.u.control = p->ctl;
	fwd.u.control.token = p->token;
	/* The agent's own pid when the requester named it: a SET then is
	 * that agent's own value, not a share of the rate of all
	 * (agent/scan.c). So too a user's SET of all their agents, which
	 * sets no default: as a share, the agent's next WELCOME put the
	 * default back. And a PAUSE that sets no default (by pid, or a
	 * user's of all theirs): the agent keeps it over a new memdedupd,
	 * which knows only the default. An agent that did not ask for that
	 * gets its pid always. */
	fwd.u.control.pid = p->ctl.pid || !a->control_pid ||
			    ((p->op == MD_CTL_SET || p->op == MD_CTL_PAUSE) && !p->defaults) ? a->pid : 0;
	if (md__conn_send(d, a->conn, &fwd, -1) != 0) {
		failed(p, -EIO, "pid %d could not be sent it", (int)a->pid);
		return;
	}
	/* Paused until resumed from the moment it may begin: its answer may
	 * come too late, or never (a dropped connection), and its next
	 * WELCOME must say so. A refusal puts back what it found (an earlier
	 * UNMERGE's pause, and whose it was); one never sent cannot begin. */
	if (p->op == MD_CTL_UNMERGE) {
		/* Its own wait from its turn: the agents before it each had
		 * theirs, and a request's one deadline left those after many
		 * large agents unsent. */
		p->deadline_ms = md__now_ms() + d->control_wait_ms;
		/* Not while another is owed: its mark is no unmerge yet. */
		if (!a->unmerge_token) {
			a->unmerged_was = a->unmerged;
			a->held_was = a->held_by_admin & MD_HELD_UNMERGE;
			a->unmerge_first = p->token;
		}
		a->unmerged = 1;
		a->unmerge_token = p->token;
	}
	/* Its own pause outlives a reconnect, as the default's does
	 * (d->paused). */
	if (p->op == MD_CTL_PAUSE && !p->defaults)
		a->paused = 1;
	if (p->admin && p->op == MD_CTL_UNMERGE)
		a->held_by_admin |= MD_HELD_UNMERGE;
	if (p->admin && p->op == MD_CTL_PAUSE && !p->defaults)
		a->held_by_admin |= MD_HELD_PAUSE;
	/* Which reached it last says whether it scans under the default
	 * pause (its share). A user's PAUSE of their own agent leaves an
	 * administrator's RESUME of it standing: that is what lets the user
	 * resume it again under the administrator's default pause. */
	if (p->op == MD_CTL_RESUME)
		a->resumed_alone = 1;
	else if (p->op == MD_CTL_PAUSE && p->admin)
		a->resumed_alone = 0;
	p->owed[p->nowed++] = a->pid;
}

/* p still waits for an agent, sent it or queued. */
static int waiting(const struct md__pending_control *p)
{
	return p->nowed || p->qnext < p->nqueue;
}

/* Tells the CLIs that asked (MD_CONTROL_NOTICES) and whose UNMERGE still
 * waits that the queue moved on: each CLI restarts its wait, as each
 * agent's turn has a deadline of its own (the requests before theirs took
 * theirs too). The text names no pid: the agent may be another user's. */
static void notify(struct md__daemon *d, const char *what)
{
	struct md__msg n = { .hdr = { .type = MD_MSG_CONTROL_R, .seq = 0 } };
	n.u.text.status = -EINPROGRESS;
	snprintf(n.u.text.text, sizeof(n.u.text.text), "unmerge: %s", what);
	for (struct md__pending_control *p = d->controls; p; p = p->next)
		if (p->op == MD_CTL_UNMERGE && p->notices && p->cli && waiting(p))
			md__conn_send(d, p->cli, &n, -1);
}

/* The UNMERGE queue goes on: the agent whose turn passed unanswered
 * answered late, went, or had a second wait. */
static void unhold(struct md__daemon *d)
{
	d->unmerge_late = 0;
	d->unmerge_late_token = 0;
	d->unmerge_held_until = 0;
}

/* An agent's turn passed with no answer: it may still be copying, and the
 * next one sent it would check its memory beside those copies (the OOM the
 * queue is there to prevent). No agent is sent an UNMERGE until this one
 * answers, goes, or a second wait passes. */
static void hold(struct md__daemon *d, pid_t pid, uint32_t token, int64_t now)
{
	d->unmerge_late = pid;
	d->unmerge_late_token = token;
	d->unmerge_held_until = now + d->control_wait_ms;
	md__dlog_peer("unmerge: pid %d did not answer in %.1f s: no agent is sent one for up to %.1f s more, "
		      "while it may still be copying", (int)pid, d->control_wait_ms / 1000.0,
		      d->control_wait_ms / 1000.0);
}

/* The UNMERGE whose next agent has the next turn: the oldest of the uid
 * after the last turn's, in uid order, round. Taken oldest first
 * daemon-wide, one user's requests over agents that never answer (a VMM
 * stopped), a wait each, held every other user's for all those waits. */
static struct md__pending_control *next_turn(const struct md__daemon *d)
{
	struct md__pending_control *oldest = NULL, *lowest = NULL, *after = NULL;
	for (struct md__pending_control *p = d->controls; p; p = p->next) {
		if (p->op != MD_CTL_UNMERGE || p->qnext >= p->nqueue)
			continue;
		if (!oldest)
			oldest = p;
		if (!lowest || p->uid < lowest->uid)
			lowest = p;
		if (p->uid > d->unmerge_uid && (!after || p->uid < after->uid))
			after = p;
	}
	if (!d->unmerge_turned)
		return oldest;
	return after ? after : lowest;
}

/* An UNMERGE goes to one agent at a time, daemon-wide, the next once the
 * last answered (or went, or its deadline passed and the hold after),
 * each uid's oldest request's agents first, the uids in turn: each agent
 * checks the memory its copies need against what is left, and agents
 * checking at once (of one request, or of two users' requests) all found
 * the same memory, all went on to copy, and the cgroup's OOM killer killed
 * a VMM. 1 if one was sent. */
static int unmerge_next(struct md__daemon *d)
{
	for (struct md__pending_control *p = d->controls; p; p = p->next)
		if (p->op == MD_CTL_UNMERGE && p->nowed)
			return 0;
	if (d->unmerge_held_until && md__now_ms() < d->unmerge_held_until)
		return 0;
	unhold(d);
	for (struct md__pending_control *p; (p = next_turn(d));) {
		struct md__queued_agent q = p->queue[p->qnext++];
		struct md__agent *a = d->agents;
		while (a && (a->pid != q.pid || a->num != q.num))
			a = a->next;
		if (!a) {
			p->gone++;	/* exited unseen: nothing of its left to copy */
			continue;
		}
		forward(d, p, a);
		if (p->nowed) {
			d->unmerge_uid = p->uid;
			d->unmerge_turned = 1;
			notify(d, "the next agent's turn");
			return 1;
		}
	}
	d->unmerge_turned = 0;	/* none waits: the next request's turn is the first */
	return 0;
}

/* Sends the UNMERGE queue on, and answers what waits for nothing more. */
static void advance(struct md__daemon *d)
{
	if (unmerge_next(d))
		md__reshare(d);	/* the one sent pauses: its part to the others */
	for (struct md__pending_control *p = d->controls, *next; p; p = next) {
		next = p->next;
		if (!waiting(p))
			finish(d, p);
	}
}

/* The agent of pid exited: out of the UNMERGE queues, counted apart. */
static void unqueue_exited(struct md__daemon *d, pid_t pid)
{
	for (struct md__pending_control *p = d->controls; p; p = p->next)
		for (size_t i = p->qnext; i < p->nqueue;)
			if (p->queue[i].pid == pid) {
				memmove(&p->queue[i], &p->queue[i + 1], (p->nqueue - i - 1) * sizeof(*p->queue));
				p->nqueue--;
				p->gone++;
			} else {
				i++;
			}
}

/* 1 if a waits its turn in an UNMERGE the administrator asked. */
static int queued_by_admin(const struct md__daemon *d, const struct md__agent *a)
{
	for (const struct md__pending_control *p = d->controls; p; p = p->next)
		for (size_t i = p->qnext; p->admin && i < p->nqueue; i++)
			if (p->queue[i].pid == a->pid && p->queue[i].num == a->num)
				return 1;
	return 0;
}

/* A PAUSE or RESUME of a reaches it after the UNMERGEs it waits for in
 * queues: sent after, they undid the later command (resumed, then
 * unmerged and paused). The later command wins: a leaves those queues,
 * but for the administrator's when a user sent it (a user's RESUME of
 * it is refused then, as once the UNMERGE is sent: MD_HELD_UNMERGE). */
static void unqueue(struct md__daemon *d, const struct md__agent *a, int admin)
{
	for (struct md__pending_control *p = d->controls; p; p = p->next)
		for (size_t i = p->qnext; (admin || !p->admin) && i < p->nqueue; i++)
			if (p->queue[i].pid == a->pid && p->queue[i].num == a->num) {
				memmove(&p->queue[i], &p->queue[i + 1], (p->nqueue - i - 1) * sizeof(*p->queue));
				p->nqueue--;
				p->superseded++;
				break;
			}
}

void md__control(struct md__daemon *d, struct md__conn *c, uint32_t seq, const struct md__msg_control *ctl)
{
	struct md__tunables tun = d->tun;
	int admin = md__privileged(c->uid);
	struct md__msg cr = { .hdr = { .type = MD_MSG_CONTROL_R, .seq = seq } };
	struct md__pending_control *p = NULL;
	size_t cap = 0;

	if (ctl->op == MD_CTL_SET) {
		int err = md__tunable_set(&tun, ctl->key, ctl->value, cr.u.text.text, sizeof(cr.u.text.text));
		if (err) {
			cr.u.text.status = err;
			goto reply;
		}
	}
	/* Each waits with an array sized by every agent, and a CLI that
	 * goes leaves an UNMERGE waiting (its refusals still clear
	 * `unmerged`): without a bound, a user connecting and closing in a
	 * loop beside a silent agent of its own would pile them up. */
	unsigned mine = 0;
	for (struct md__pending_control *o = d->controls; o; o = o->next)
		mine += o->uid == c->uid;
	if (c->uid != 0 && mine >= MD_D_CONTROLS_PER_UID) {
		cr.u.text.status = -EUSERS;
		snprintf(cr.u.text.text, sizeof(cr.u.text.text),
			 "uid %u has %u CONTROLs waiting for their agents (at most %u): try again once one "
			 "is answered (unmerges go one agent at a time, all users' in turn, up to %d s each)",
			 (unsigned)c->uid, mine, MD_D_CONTROLS_PER_UID, (d->control_wait_ms + 999) / 1000);
		goto reply;
	}
	for (struct md__agent *a = d->agents; a; a = a->next)
		cap++;
	p = calloc(1, sizeof(*p));
	if (!p || !(p->owed = calloc(cap ? cap : 1, sizeof(*p->owed))) ||
	    (ctl->op == MD_CTL_UNMERGE && !(p->queue = calloc(cap ? cap : 1, sizeof(*p->queue))))) {
		cr.u.text.status = -ENOMEM;
		snprintf(cr.u.text.text, sizeof(cr.u.text.text), "out of memory");
		goto free_pending;
	}
	p->cli = c;
	p->uid = c->uid;
	p->seq = seq;
	p->op = ctl->op;
	p->ctl = *ctl;
	p->admin = admin;
	/* Detached agents get the defaults when back: only what changes the
	 * defaults reaches them so. */
	p->defaults = ctl->pid == 0 && admin && ctl->op != MD_CTL_UNMERGE;
	p->token = ++d->last_token ? d->last_token : ++d->last_token;	/* never 0 */
	p->notices = ctl->token == MD_CONTROL_NOTICES;
	if (ctl->op != MD_CTL_UNMERGE)
		p->deadline_ms = md__now_ms() + d->control_wait_ms;
	if (ctl->op == MD_CTL_SET)
		snprintf(p->what, sizeof(p->what), "%s=%s", ctl->key, ctl->value);
	else
		snprintf(p->what, sizeof(p->what), "%s", md__control_op_name(ctl->op));

	/* A pause the administrator set on all is theirs to lift: another
	 * user's RESUME of all would run that user's agents again under it.
	 * One of an agent by pid is that agent's to judge (below): the
	 * administrator may have resumed it alone. */
	if (ctl->op == MD_CTL_RESUME && !admin && d->paused && !ctl->pid) {
		cr.u.text.status = -EPERM;
		snprintf(cr.u.text.text, sizeof(cr.u.text.text),
			 "memdedupd was paused by its administrator: only they resume it");
		goto free_pending;
	}
	/* Refused before anything is sent: a pid that is no agent of ours. */
	int matched = 0;
	for (struct md__agent *a = d->agents; a && ctl->pid; a = a->next)
		matched |= a->pid == ctl->pid && (admin || a->uid == c->uid);
	if (ctl->pid && !matched) {
		cr.u.text.status = -ESRCH;
		snprintf(cr.u.text.text, sizeof(cr.u.text.text), MD_NO_AGENT_TEXT " %d", (int)ctl->pid);
		goto free_pending;
	}
	for (struct md__agent *a = d->agents; a; a = a->next) {
		if (ctl->pid && a->pid != ctl->pid)
			continue;
		if (!admin && a->uid != c->uid)
			continue;	/* another user's agent: as if absent */
		if (ctl->op == MD_CTL_RESUME && !admin &&
		    (((a->held_by_admin & MD_HELD_PAUSE) && a->paused) ||
		     ((a->held_by_admin & MD_HELD_UNMERGE) && a->unmerged) || queued_by_admin(d, a))) {
			failed(p, -EPERM, "pid %d was paused by memdedupd's administrator: only they resume it",
			       (int)a->pid);
			continue;
		}
		/* Under the administrator's pause of all, only an agent they
		 * resumed alone is the user's to resume (after the user's own
		 * pause of it). */
		if (ctl->op == MD_CTL_RESUME && !admin && d->paused && !a->resumed_alone) {
			failed(p, -EPERM, "memdedupd was paused by its administrator: only they resume pid %d",
			       (int)a->pid);
			continue;
		}
		if (ctl->op == MD_CTL_RESUME) {
			/* Detached, its WELCOME says so when back. An UNMERGE
			 * refused after it puts nothing back. */
			a->unmerged = a->paused = a->held_by_admin = 0;
			a->unmerge_first = a->unmerge_token = 0;
		}
		if (ctl->op == MD_CTL_UNMERGE) {
			p->queue[p->nqueue++] = (struct md__queued_agent){ a->pid, a->num };
			continue;
		}
		unsigned failures = p->failed;
		forward(d, p, a);
		/* Only once it reached the agent (or waits for its WELCOME): a
		 * PAUSE refused changes no queue. */
		if ((ctl->op == MD_CTL_PAUSE || ctl->op == MD_CTL_RESUME) && p->failed == failures)
			unqueue(d, a, admin);
	}
	if (ctl->pid == 0 && admin && ctl->op != MD_CTL_UNMERGE) {
		if (ctl->op == MD_CTL_SET)
			d->tun = tun;
		else if (ctl->op == MD_CTL_PAUSE)
			d->paused = 1;
		else if (ctl->op == MD_CTL_RESUME)
			d->paused = 0;
		/* Kept for a memdedupd started again (state.c). */
		int e2 = md__state_save(d);
		if (e2)
			md__dlog_peer("cannot keep the pause and tunables in %s (%s): a memdedupd started again "
				      "takes the built-in ones", d->state_path, strerror(-e2));
	}
	if (ctl->op == MD_CTL_UNMERGE) {
		size_t before = 0;
		for (struct md__pending_control *o = d->controls; o; o = o->next)
			before += o->op == MD_CTL_UNMERGE ? o->nowed + o->nqueue - o->qnext : 0;
		char n_q[32];
		plural(n_q, sizeof(n_q), (unsigned)p->nqueue, "agent");
		md__dlog_peer("pid %d (uid %u): %s for %s, sent to one at a time, the uids in turn; %zu agents "
			      "queued already", (int)c->pid, (unsigned)c->uid, p->what, n_q, before);
	} else {
		md__dlog_peer("pid %d (uid %u): %s sent to %zu agents", (int)c->pid, (unsigned)c->uid, p->what,
			      p->nowed);
	}
	/* Last in the list: UNMERGE queues go oldest first. */
	struct md__pending_control **tail = &d->controls;
	while (*tail)
		tail = &(*tail)->next;
	*tail = p;
	c->awaiting = 1;	/* one at a time: read_conn leaves its next requests (finish lets them go) */
	advance(d);
	/* The rate is shared by the agents that scan. */
	if (ctl->op != MD_CTL_SET)
		md__reshare(d);
	return;

free_pending:
	if (p) {
		free(p->queue);
		free(p->owed);
	}
	free(p);
reply:
	md__conn_send(d, c, &cr, -1);
}

void md__control_done(struct md__daemon *d, struct md__agent *a, const struct md__msg_control_done *done)
{
	/* A refused UNMERGE left the agent as it was, also when its answer
	 * came after the deadline: paused on its next WELCOME only if an
	 * earlier one that went through still holds it, and held by whoever
	 * sent that one. */
	int unmerged = a->unmerged;
	/* Copies that failed part of the way left the agent unmerged too. */
	int went = !done->result.status || done->result.status == MD_CTL_PART_DONE;
	uint32_t since_first = done->token - a->unmerge_first;	/* tokens rise, and wrap */
	if (a->unmerge_token && done->token && since_first <= a->unmerge_token - a->unmerge_first) {
		/* One sent meanwhile went through (an UNMERGE, or another
		 * CONTROL: kept paused, the safe side): a refusal later puts
		 * that back. */
		if (went) {
			a->unmerged_was = 1;
			a->held_was = a->held_by_admin & MD_HELD_UNMERGE;
		}
		if (done->token == a->unmerge_token) {
			if (!went) {
				a->unmerged = a->unmerged_was;
				a->held_by_admin = (a->held_by_admin & ~MD_HELD_UNMERGE) | a->held_was;
			}
			a->unmerge_first = a->unmerge_token = 0;	/* none owed */
		}
	}
	if (a->unmerged != unmerged)
		md__reshare(d);	/* it scans again: its part back */
	if (d->unmerge_held_until && a->pid == d->unmerge_late && done->token == d->unmerge_late_token)
		unhold(d);	/* done copying, or refused: the next may check its memory */
	/* Late (answered already, or its CLI went): nothing waits for it. */
	for (struct md__pending_control *p = d->controls; p; p = p->next) {
		if (p->token != done->token || !settle(p, a->pid))
			continue;
		if (p->op == MD_CTL_SET && done->result.status == MD_CTL_KEPT_OWN) {
			p->kept++;
		} else if (done->result.status) {
			failed(p, done->result.status, "pid %d: %s", (int)a->pid,
			       done->result.text[0] ? done->result.text : strerror(-done->result.status));
		} else {
			p->done++;
		}
		break;
	}
	advance(d);
}

void md__control_gone(struct md__daemon *d, struct md__conn *c, pid_t pid)
{
	/* Exited (no connection closing: md__agent_exited): its turn in the
	 * queues will not come. */
	if (!c && pid > 0)
		unqueue_exited(d, pid);
	/* No late answer comes over a connection gone. */
	if ((pid > 0 && pid == d->unmerge_late) || pid < 0)
		unhold(d);
	for (struct md__pending_control *p = d->controls, *next; p; p = next) {
		next = p->next;
		if (c && p->cli == c) {
			p->cli = NULL;
			/* Nobody to answer: only an UNMERGE still needs its
			 * agents' answers (a refusal clears `unmerged`); the
			 * rest would only wait, and late answers are
			 * acknowledged and ignored anyway. */
			if (p->op != MD_CTL_UNMERGE) {
				md__dlog_peer("%s: its requester went; %zu agents not waited for", p->what,
					      p->nowed);
				drop(d, p);
				continue;
			}
			/* Its agents not sent it yet have nothing to put back:
			 * left waiting, they held every later UNMERGE's turn. */
			size_t unsent = p->nqueue - p->qnext;
			if (unsent) {
				failed(p, -ECANCELED, "its requester went: %zu not sent it", unsent);
				p->failed += (unsigned)unsent - 1;
				p->qnext = p->nqueue;
			}
		}
		if (pid > 0 && settle(p, pid))
			failed(p, -ESRCH, "pid %d went away before it answered", (int)pid);
		if (pid < 0)
			p->nowed = 0, p->qnext = p->nqueue;	/* the daemon stops */
	}
	advance(d);
}

int md__control_tick(struct md__daemon *d)
{
	int64_t now = md__now_ms();
	int held = 0;
	for (struct md__pending_control *p = d->controls; p; p = p->next) {
		/* An UNMERGE waiting for its turn has no deadline yet. */
		if (!p->nowed || now < p->deadline_ms)
			continue;
		/* An UNMERGE's agents not sent it yet are not sent it now:
		 * the one not answering may still be copying. */
		size_t unsent = p->nqueue - p->qnext;
		if (unsent)
			failed(p, -ETIMEDOUT, "pid %d did not answer in %.1f s (it may still do it); %zu "
			       "more not sent it", (int)p->owed[0], d->control_wait_ms / 1000.0, unsent);
		else
			failed(p, -ETIMEDOUT, "pid %d did not answer in %.1f s (it may still do it)",
			       (int)p->owed[0], d->control_wait_ms / 1000.0);
		if (p->op == MD_CTL_UNMERGE) {
			hold(d, p->owed[0], p->token, now);
			held = 1;
		}
		p->failed += (unsigned)(p->nowed - 1 + unsent);
		p->nowed = 0;
		p->qnext = p->nqueue;
	}
	/* Their CLIs wait their own time again from here: the hold is
	 * shorter. */
	if (held)
		notify(d, "an agent that did not answer in time may still be copying: the next waits for it");
	/* The next UNMERGE's turn comes once the hold is over. */
	advance(d);
	return md__control_due_in(d);
}

int md__control_due_in(const struct md__daemon *d)
{
	int64_t now = md__now_ms(), first = -1;
	int queued = 0;
	for (const struct md__pending_control *p = d->controls; p; p = p->next) {
		if (p->nowed && (first < 0 || p->deadline_ms < first))
			first = p->deadline_ms;
		queued |= p->op == MD_CTL_UNMERGE && p->qnext < p->nqueue;
	}
	/* A hold's end matters to an UNMERGE waiting its turn: with none,
	 * the next request's finds it over. */
	if (queued && d->unmerge_held_until && (first < 0 || d->unmerge_held_until < first))
		first = d->unmerge_held_until;
	if (first < 0)
		return -1;
	return first <= now ? 0 : first - now > INT_MAX ? INT_MAX : (int)(first - now);
}
