/*
 * cmd_control.c - `memdedup pause|resume|unmerge|set`: ask memdedupd to
 * forward a command to the running agents. SET's pairs are all checked
 * here first (md__tunable_set, as the daemon checks them): one bad pair is a
 * usage error and nothing is sent. The daemon checks again and answers;
 * this prints its answer, and names the agents of the run directory that
 * scan out of its reach (within their process): it cannot count them.
 */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "stats_file.h"

static int cmd_pause(int argc, char **argv);
static int cmd_resume(int argc, char **argv);
static int cmd_unmerge(int argc, char **argv);
static int cmd_set(int argc, char **argv);

#define PID_OPTION \
	"  --pid P     only the agent of process P (default: every agent)\n" \
	"  -h, --help  this text\n" \
	"\n" \
	"Needs memdedupd running (`memdedup run --scan` starts it: only agents that\n" \
	"scan use it); answers once the agents have done it (pause, resume: at most\n" \
	"a minute; unmerge: a minute for each agent, one at a time; set: a minute\n" \
	"for each KEY=VALUE).\n" \
	"memdedupd cannot reach an agent that scans within its process (run with\n" \
	"--domain=private, or of the default domain and found no memdedupd when it\n" \
	"started): each such agent with a statistics file in the run directory is\n" \
	"named on stderr, and left as it is.\n" \
	"Exit status: 0 done, 1 refused (the text names the agent and why), not\n" \
	"answered, no daemon, or an agent that scans out of memdedupd's reach (or\n" \
	"that may be: memdedupd's status, which tells, not had); 2 wrong usage.\n"
#define PID_HELP \
	"Without --pid, from root (or memdedupd's user) it is also the default for\n" \
	"agents that start later.\n\n" PID_OPTION

const struct md__cmd md__cmd_pause_def = {
	.name = "pause",
	.summary = "stop the agents' content scanning (pages stay shared)",
	.usage =
	"usage: memdedup pause [--pid P] [--]\n"
	"\n"
	"Asks every agent (or one) to stop scanning for equal pages. Pages already\n"
	"shared stay shared; `memdedup resume` starts the scanning again.\n"
	"\n" PID_HELP,
	.run = cmd_pause,
};

const struct md__cmd md__cmd_resume_def = {
	.name = "resume",
	.summary = "resume the agents' content scanning",
	.usage =
	"usage: memdedup resume [--pid P] [--]\n"
	"\n"
	"Undoes `memdedup pause`.\n"
	"\n" PID_HELP,
	.run = cmd_resume,
};

const struct md__cmd md__cmd_unmerge_def = {
	.name = "unmerge",
	.summary = "make every merged page private again",
	.usage =
	"usage: memdedup unmerge [--pid P] [--]\n"
	"\n"
	"Asks every agent (or one) to give each guest page it shares a private copy\n"
	"again (merged into the shared pool, merged onto a disk image, or shared\n"
	"when the guest read the image) and to drop its references to the pool\n"
	"(like kernel KSM's run=2), then to stay paused until `memdedup resume`;\n"
	"reads after it are shared again. Unlike KSM's, a resume merges again only\n"
	"the pool's copies: pages shared from an image become private copies\n"
	"inside the image's mapping, which no userfaultfd can write-protect, and\n"
	"stay so until the guest reads them again. Zero pages stay dropped (they\n"
	"read as zeroes and cost nothing). An agent refuses, changing nothing, when\n"
	"the host or its cgroup has not the memory for the copies (and 64 MiB to\n"
	"spare). Only agents that scan (`memdedup run --scan`) talk to memdedupd:\n"
	"the pages a VMM run without --scan shares at read time stay shared, and\n"
	"so do those of one that scans within its process (below).\n"
	"\n" PID_OPTION,
	.run = cmd_unmerge,
};

const struct md__cmd md__cmd_set_def = {
	.name = "set",
	.summary = "change a scanning tunable of the agents",
	.usage =
	"usage: memdedup set [--pid P] [--] KEY=VALUE...\n"
	"\n"
	"Changes tunables of the agents' scanners, in the order given. Every\n"
	"KEY=VALUE is checked first: if any is wrong, nothing is changed (exit 2).\n"
	"\n"
	"  pages_to_scan=N     pages per batch, 1..100000 (default 100)\n"
	"  sleep_millisecs=N   sleep between batches, 0..10000 (default 20)\n"
	"  cpu_percent=N       most CPU of one core to use, 1..100 (default 100)\n"
	"  order=linear|random scan order, in any case (default linear)\n"
	"  hint_ratio=N        of every 8 pages, how many come from I/O hints, 0..8\n"
	"                      (default 4)\n"
	"\n" PID_HELP,
	.run = cmd_set,
};

/* The agents of the run directory (md__agents_load, nothing said or
 * removed): 0 and a vector to free, or -errno. */
static int run_dir_agents(struct md__agent_row **rows, size_t *n)
{
	char dir[PATH_MAX];
	*rows = NULL;
	*n = 0;
	/* Looked up, not made: a run directory not there holds no agent. */
	if (md__run_dir_lookup(dir, sizeof(dir)) != 0)
		return 0;
	return md__agents_load(NULL, dir, rows, n);
}

/* The scan_state of the agent of pid in the run directory, as `memdedup
 * status` shows it (a VMM in a pid namespace of its own by its pid here):
 * MD_SCAN_STATE_*, or -1 when no live agent of pid has a statistics file
 * there. An agent older than scan_state reads MD_SCAN_STATE_NONE. */
static int agent_scan_state(int32_t pid)
{
	struct md__agent_row *rows;
	size_t n;
	int state = -1;
	if (run_dir_agents(&rows, &n) != 0)
		return -1;
	for (size_t i = 0; i < n && state < 0; i++)
		if (rows[i].pid == pid)
			state = rows[i].s.stats.scan_state > INT32_MAX ? INT32_MAX : (int)rows[i].s.stats.scan_state;
	free(rows);
	return state;
}

/* Why memdedupd cannot reach an agent that scans: it merges within its
 * process (--domain=private, a default domain that found no daemon when
 * it started, an unusable domain name or socket path), or it has not
 * reached this daemon (still connecting, waiting for it, or another's). */
static void say_unreachable(const struct md__cmd *cmd, int pid)
{
	fprintf(stderr, "memdedup %s: pid %d scans within its process (--domain=private, or no memdedupd\n"
		"when it started), or has not reached memdedupd: memdedupd cannot reach it\n", cmd->name, pid);
}

/* After a command for all agents (c: the connection it went on, NULL
 * when no daemon answered): says each agent of the run directory that
 * scans but that memdedupd does not know, as its STATUS document shows
 * (the agents it holds, connected or not). When the document cannot be
 * had, each agent that scans is said to be one it cannot tell of: its "done
 * by N" may have left it out. 1 if one was said, else 0. */
static int say_unreached(const struct md__cmd *cmd, struct md__client *c)
{
	struct md__agent_row *rows;
	size_t n, scanning = 0;
	json_t *doc = NULL;
	char why[MD_TEXT_MAX + 1], shown[MD_TEXT_MAX + 1];
	int said = 0, err = 0;

	if (run_dir_agents(&rows, &n) != 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		scanning += rows[i].s.stats.scan_state != MD_SCAN_STATE_NONE;
	/* Asked only when an agent could be missing: the document costs
	 * memdedupd work (and counts against a user's status budget). */
	why[0] = '\0';
	if (scanning && c) {
		err = md__client_alive(c) ? md__status_daemon_on(c, &doc, why, sizeof(why)) : -ENOTCONN;
		/* Past the user's budget (a `status` just before): memdedupd
		 * says to try again in a second. Once. */
		if (err == -EAGAIN && md__client_alive(c)) {
			usleep(1100 * 1000);
			err = md__status_daemon_on(c, &doc, why, sizeof(why));
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (rows[i].s.stats.scan_state == MD_SCAN_STATE_NONE || (!err && md__daemon_agent(doc, rows[i].pid)))
			continue;
		if (err)
			fprintf(stderr, "memdedup %s: cannot tell whether pid %d was reached: memdedupd's status "
				"cannot be had (%s)\n", cmd->name, rows[i].pid,
				why[0] ? md__printable(why, shown, sizeof(shown)) : strerror(-err));
		else
			say_unreachable(cmd, rows[i].pid);
		said = 1;
	}
	json_decref(doc);
	free(rows);
	return said;
}

/* Sends one CONTROL; prints the daemon's answer. Returns the exit code;
 * *no_agent set if memdedupd knows no agent of ctl->pid (the same for
 * every pair after). */
static int send_control(const struct md__cmd *cmd, struct md__client *c,
			const struct md__msg_control *ctl, int *no_agent)
{
	struct md__msg m = { .hdr.type = MD_MSG_CONTROL };
	unsigned char buf[MD_MSG_HDR_SIZE + 16 + MD_KEY_MAX + MD_VALUE_MAX];
	unsigned char reply[MD_MSG_HDR_SIZE + 6 + MD_TEXT_MAX];
	uint32_t rlen = sizeof(reply);
	unsigned rtype;

	m.u.control = *ctl;
	ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
	if (n < 0) {
		char key[MD_KEY_MAX + 1], value[MD_VALUE_MAX + 1];
		fprintf(stderr, "memdedup %s: cannot encode the request%s%s%s%s: %s\n", cmd->name,
			ctl->key[0] ? " " : "", md__printable(ctl->key, key, sizeof(key)),
			ctl->key[0] ? "=" : "", md__printable(ctl->value, value, sizeof(value)),
			strerror((int)-n));
		return 1;
	}
	int err = md__client_request(c, MD_MSG_CONTROL, buf + MD_MSG_HDR_SIZE,
				     (uint32_t)n - MD_MSG_HDR_SIZE, reply, &rlen, &rtype);
	if (!err && (rtype == MD_MSG_CONTROL_R || rtype == MD_MSG_ERROR))
		err = md__msg_decode_payload(rtype, reply, rlen, &m);
	else if (!err)
		err = -EPROTO;
	/* An ERROR says what failed: one that says nothing did is no
	 * answer (as for status: status_daemon.c). */
	if (!err && rtype == MD_MSG_ERROR && m.u.text.status >= 0)
		err = -EPROTO;
	if (err) {
		char why[MD_TEXT_MAX + 1];
		if (*md__client_refusal(c))
			fprintf(stderr, "memdedup %s: memdedupd refused the connection: %s\n", cmd->name,
				md__printable(md__client_refusal(c), why, sizeof(why)));
		else if (err == -EPROTO || err == -EBADMSG)
			fprintf(stderr, "memdedup %s: the daemon did not answer properly (not memdedupd, or "
				"another version of it)\n", cmd->name);
		else
			fprintf(stderr, "memdedup %s: no answer from the daemon: %s\n", cmd->name, strerror(-err));
		return 1;
	}
	*no_agent = m.u.text.status == -ESRCH && ctl->pid &&
		    strncmp(m.u.text.text, MD_NO_AGENT_TEXT, strlen(MD_NO_AGENT_TEXT)) == 0;
	/* memdedupd knows only the agents that scan through it (they connect
	 * to it); `memdedup status` lists every agent by its stats file, and
	 * says whether it scans. */
	int state = *no_agent ? agent_scan_state(ctl->pid) : -1;
	if (state > MD_SCAN_STATE_NONE) {
		say_unreachable(cmd, ctl->pid);
		return 1;
	}
	if (state == MD_SCAN_STATE_NONE) {
		fprintf(stderr, "memdedup %s: the agent of pid %d is not scanning (it runs without\n"
			"--scan, or has not reached memdedupd): there is nothing to %s\n",
			cmd->name, (int)ctl->pid, cmd->name);
		return 1;
	}
	if (m.u.text.status) {
		/* The daemon names what failed first, as its log does: the
		 * command's name is said once (a SET's pair stays). */
		const char *text = m.u.text.text;
		size_t nl = strlen(cmd->name);
		if (ctl->op != MD_CTL_SET && strncmp(text, cmd->name, nl) == 0 && strncmp(text + nl, ": ", 2) == 0)
			text += nl + 2;
		fprintf(stderr, "memdedup %s: %s\n", cmd->name, text[0] ? text : strerror(-m.u.text.status));
		return 1;
	}
	printf("%s\n", m.u.text.text);
	return 0;
}

static int connect_daemon(const struct md__cmd *cmd, struct md__client **c)
{
	char path[256];
	int err = md__client_connect(c, NULL);
	if (!err) {
		md__client_set_quiet(*c, 1);	/* send_control says what failed */
		return 0;
	}
	if (md__daemon_socket_path(NULL, path, sizeof(path)) != 0)
		snprintf(path, sizeof(path), "(no usable path)");
	char shown[256];
	md__printable(path, shown, sizeof(shown));
	if (err == -ENOENT || err == -ECONNREFUSED)
		fprintf(stderr, "memdedup %s: the daemon is not running (nothing answers on %s);\n"
			"start memdedupd, or run a VM with `memdedup run --scan` (only agents that scan\n"
			"use the daemon)\n", cmd->name, shown);
	else
		fprintf(stderr, "memdedup %s: cannot reach the daemon at %s: %s\n", cmd->name, shown,
			strerror(-err));
	return 1;
}

/* Checks one KEY=VALUE (eq at its '=') as memdedupd will, on a copy of the
 * defaults: 0, or -EINVAL and what is wrong in msg (the key and value made
 * printable). */
static int check_pair(const char *pair, const char *eq, char *msg, size_t size)
{
	struct md__tunables t;
	char key[MD_KEY_MAX + 1], value[MD_VALUE_MAX + 1];
	char pkey[3 * MD_KEY_MAX + 1], pvalue[3 * MD_VALUE_MAX + 1];

	snprintf(key, sizeof(key), "%.*s", (int)(eq - pair), pair);
	snprintf(value, sizeof(value), "%s", eq + 1);
	md__tunables_default(&t);
	if (md__tunable_set(&t, key, value, msg, size) == 0)
		return 0;
	/* Say it again with what a terminal may show: a changed byte ('?')
	 * is wrong in any key and value, so this fails the same way. */
	md__tunables_default(&t);
	md__tunable_set(&t, md__printable(key, pkey, sizeof(pkey)),
			md__printable(value, pvalue, sizeof(pvalue)), msg, size);
	return -EINVAL;
}

/* Parses the common options; KEY=VALUE words go to pairs (set only).
 * Returns -1 when done (help printed), else an exit code, 0 to go on. */
static int parse(const struct md__cmd *cmd, int argc, char **argv, int32_t *pid,
		 char ***pairs, int *npairs, int want_pairs)
{
	*pid = 0;
	*npairs = 0;
	*pairs = argv + 1;
	int opts_done = 0;	/* after "--", every word is a KEY=VALUE */
	for (int i = 1; i < argc; i++) {
		if (!opts_done && strcmp(argv[i], "--") == 0) {
			opts_done = 1;
			continue;
		}
		if (!opts_done && md__wants_help(cmd, argv[i]))
			return -1;
		if (!opts_done && (strcmp(argv[i], "--pid") == 0 || strncmp(argv[i], "--pid=", 6) == 0)) {
			const char *v = argv[i][5] == '=' ? argv[i] + 6 : (i + 1 < argc ? argv[++i] : NULL);
			char *end, shown[64];
			if (!v)
				return md__usage_error(cmd, "--pid needs a process id");
			if (*pid)
				return md__usage_error(cmd, "--pid given twice: one process at a time");
			long p = strtol(v, &end, 10);
			if (*v < '1' || *v > '9' || *end || p <= 0 || p > INT_MAX)
				return md__usage_error(cmd, "invalid pid '%s'",
						       md__printable(v, shown, sizeof(shown)));
			*pid = (int32_t)p;
		} else if (want_pairs && (opts_done || argv[i][0] != '-')) {
			const char *eq = strchr(argv[i], '=');
			size_t kl = eq ? (size_t)(eq - argv[i]) : 0;
			char shown[3 * (MD_KEY_MAX + MD_VALUE_MAX)];
			md__printable(argv[i], shown, sizeof(shown));
			if (!eq || kl == 0 || !eq[1] || strchr(eq + 1, '='))
				return md__usage_error(cmd, "expected KEY=VALUE, not '%s'", shown);
			if (kl > MD_KEY_MAX || strlen(eq + 1) > MD_VALUE_MAX)
				return md__usage_error(cmd, "'%s': a key is at most %u bytes, a value %u", shown,
						       MD_KEY_MAX, MD_VALUE_MAX);
			if (strpbrk(argv[i], " \t\n"))
				return md__usage_error(cmd, "'%s': no white space in a key or a value", shown);
			/* An order in any case, as MEMDEDUP_SCAN_ORDER and
			 * `run --scan-order` take it; sent as memdedupd and the
			 * agents read it, in lower case. */
			if (kl == 5 && strncmp(argv[i], "order", 5) == 0 &&
			    (strcasecmp(eq + 1, "linear") == 0 || strcasecmp(eq + 1, "random") == 0))
				for (char *v = argv[i] + 6; *v; v++)
					*v = (char)tolower((unsigned char)*v);
			int err = check_pair(argv[i], eq, shown, sizeof(shown));
			if (err)
				return md__usage_error(cmd, "%s", shown);
			(*pairs)[(*npairs)++] = argv[i];
		} else {
			char shown[256];
			return md__usage_error(cmd, "unknown argument '%s'",
					       md__printable(argv[i], shown, sizeof(shown)));
		}
	}
	if (want_pairs && *npairs == 0)
		return md__usage_error(cmd, "nothing to set: give KEY=VALUE");
	return 0;
}

static int run_op(const struct md__cmd *cmd, unsigned op, int argc, char **argv)
{
	struct md__msg_control ctl = { .op = op };
	struct md__client *c;
	char **pairs;
	int npairs, ret;

	ret = parse(cmd, argc, argv, &ctl.pid, &pairs, &npairs, op == MD_CTL_SET);
	if (ret)
		return ret < 0 ? 0 : ret;
	if (connect_daemon(cmd, &c)) {
		/* Those that scan within their process are not waiting for it. */
		int state = ctl.pid ? agent_scan_state(ctl.pid) : -1;
		if (state > MD_SCAN_STATE_NONE)
			say_unreachable(cmd, ctl.pid);
		else if (!ctl.pid)
			say_unreached(cmd, NULL);
		return 1;
	}
	/* The daemon answers once the agents have done it (an unmerge copies
	 * every merged page) or MD_CONTROL_WAIT_MS passed; an unmerge's
	 * agents take their turns one at a time, each with that long, and
	 * each turn is told us (MD_CONTROL_NOTICES): we wait as long as the
	 * turns keep coming. */
	md__client_set_timeout(c, MD_CONTROL_WAIT_MS + 5000);
	ctl.token = MD_CONTROL_NOTICES;
	int no_agent = 0;
	if (op != MD_CTL_SET) {
		ret = send_control(cmd, c, &ctl, &no_agent);
	} else {
		/* One request a pair. memdedupd takes a value as its own when
		 * it passes it on, so a pair some agent did not answer in time
		 * is set all the same: the pairs after it are sent too (each
		 * failure said), not left out of a half-applied command. Not
		 * after an answer that memdedupd knows no agent of --pid: it
		 * would be the same for every pair. */
		for (int i = 0; i < npairs && md__client_alive(c) && !no_agent; i++) {
			const char *eq = strchr(pairs[i], '=');
			memset(ctl.key, 0, sizeof(ctl.key));
			memcpy(ctl.key, pairs[i], (size_t)(eq - pairs[i]));
			snprintf(ctl.value, sizeof(ctl.value), "%s", eq + 1);
			if (send_control(cmd, c, &ctl, &no_agent))
				ret = 1;
		}
	}
	/* The agents memdedupd cannot reach were not in its "done by N". */
	if (!ctl.pid && say_unreached(cmd, c))
		ret = 1;
	md__client_free(c);
	return ret;
}

static int cmd_pause(int argc, char **argv)
{
	return run_op(&md__cmd_pause_def, MD_CTL_PAUSE, argc, argv);
}

static int cmd_resume(int argc, char **argv)
{
	return run_op(&md__cmd_resume_def, MD_CTL_RESUME, argc, argv);
}

static int cmd_unmerge(int argc, char **argv)
{
	return run_op(&md__cmd_unmerge_def, MD_CTL_UNMERGE, argc, argv);
}

static int cmd_set(int argc, char **argv)
{
	return run_op(&md__cmd_set_def, MD_CTL_SET, argc, argv);
}
