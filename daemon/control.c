/*
 * control.c - CONTROL from the CLI: pause, resume, unmerge, set. The daemon
 * checks the request (a SET key and its range) before anything is sent, so
 * a bad value never reaches an agent; then it forwards one CONTROL (seq 0)
 * to each matching agent and answers CONTROL_R.
 *
 * Who may do what: a user controls the agents of its own uid; root and the
 * daemon's own uid control all, and only they change the defaults that
 * WELCOME hands to new agents (pid 0: every agent, and the defaults).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"

int md__control(struct md__daemon *d, struct md__conn *c, const struct md__msg_control *ctl,
		char *text, size_t size)
{
	struct md__tunables tun = d->tun;
	int admin = c->uid == 0 || c->uid == geteuid();
	unsigned sent = 0;

	if (ctl->op == MD_CTL_SET) {
		int err = md__tunable_set(&tun, ctl->key, ctl->value, text, size);
		if (err)
			return err;
	}
	struct md__msg fwd = { .hdr = { .type = MD_MSG_CONTROL, .seq = 0 } };
	fwd.u.control = *ctl;
	int matched = 0;
	for (struct md__agent *a = d->agents; a; a = a->next) {
		if (ctl->pid && a->pid != ctl->pid)
			continue;
		if (!admin && a->uid != c->uid)
			continue;	/* another user's agent: as if absent */
		matched = 1;
		if (!a->conn)
			continue;	/* detached: it gets the defaults when back */
		fwd.u.control.pid = a->pid;
		if (md__conn_send(d, a->conn, &fwd, -1) == 0)
			sent++;
	}
	if (ctl->pid && !matched) {
		snprintf(text, size, "no agent with pid %d", (int)ctl->pid);
		return -ESRCH;
	}
	if (ctl->pid == 0 && admin) {
		if (ctl->op == MD_CTL_SET)
			d->tun = tun;
		else if (ctl->op == MD_CTL_PAUSE)
			d->paused = 1;
		else if (ctl->op == MD_CTL_RESUME)
			d->paused = 0;
	}
	if (ctl->op == MD_CTL_SET)
		snprintf(text, size, "%s=%s sent to %u agent%s", ctl->key, ctl->value, sent,
			 sent == 1 ? "" : "s");
	else
		snprintf(text, size, "%s sent to %u agent%s", md__control_op_name(ctl->op), sent,
			 sent == 1 ? "" : "s");
	md__dlog("pid %d (uid %u): %s", (int)c->pid, (unsigned)c->uid, text);
	return 0;
}
