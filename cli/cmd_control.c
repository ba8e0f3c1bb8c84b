/*
 * cmd_control.c - `memdedup pause|resume|unmerge|set`: ask memdedupd to
 * forward a command to the running agents. The daemon validates (a SET key
 * and its range) and answers; this prints its answer.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "client.h"

static int cmd_pause(int argc, char **argv);
static int cmd_resume(int argc, char **argv);
static int cmd_unmerge(int argc, char **argv);
static int cmd_set(int argc, char **argv);

#define PID_HELP \
	"  --pid P     only the agent of process P (default: every agent; for root,\n" \
	"              also the default for agents that start later)\n" \
	"  -h, --help  this text\n" \
	"\n" \
	"Needs memdedupd running (memdedup run starts it). Exit status: 0 done,\n" \
	"1 refused or no daemon, 2 wrong usage.\n"

const struct md__cmd md__cmd_pause_def = {
	.name = "pause",
	.summary = "stop the agents' content scanning (pages stay shared)",
	.usage =
	"usage: memdedup pause [--pid P]\n"
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
	"usage: memdedup resume [--pid P]\n"
	"\n"
	"Undoes `memdedup pause`.\n"
	"\n" PID_HELP,
	.run = cmd_resume,
};

const struct md__cmd md__cmd_unmerge_def = {
	.name = "unmerge",
	.summary = "make every merged page private again",
	.usage =
	"usage: memdedup unmerge [--pid P]\n"
	"\n"
	"Asks every agent (or one) to give each guest page it merged a private copy\n"
	"again, and to drop its references to the shared pool (like kernel KSM's\n"
	"run=2). Memory use grows back to what it was without sharing.\n"
	"\n" PID_HELP,
	.run = cmd_unmerge,
};

const struct md__cmd md__cmd_set_def = {
	.name = "set",
	.summary = "change a scanning tunable of the agents",
	.usage =
	"usage: memdedup set [--pid P] KEY=VALUE...\n"
	"\n"
	"Changes tunables of the agents' scanners, in the order given; stops at the\n"
	"first one the daemon refuses (those before it stay changed).\n"
	"\n"
	"  pages_to_scan=N     pages per wake-up, 1..100000 (default 100)\n"
	"  sleep_millisecs=N   sleep between wake-ups, 0..10000 (default 20)\n"
	"  cpu_percent=N       most CPU of one core to use, 1..100 (default 100)\n"
	"  order=linear|random scan order (default linear)\n"
	"  hint_ratio=N        of every 8 pages, how many come from I/O hints, 0..8\n"
	"                      (default 4)\n"
	"\n" PID_HELP,
	.run = cmd_set,
};

/* Sends one CONTROL; prints the daemon's answer. Returns the exit code. */
static int send_control(const struct md__cmd *cmd, struct md__client *c,
			const struct md__msg_control *ctl)
{
	struct md__msg m = { .hdr.type = MD_MSG_CONTROL };
	unsigned char buf[MD_MSG_HDR_SIZE + 12 + MD_KEY_MAX + MD_VALUE_MAX];
	unsigned char reply[MD_MSG_HDR_SIZE + 6 + MD_TEXT_MAX];
	uint32_t rlen = sizeof(reply);
	unsigned rtype;

	m.u.control = *ctl;
	ssize_t n = md__msg_encode(&m, buf, sizeof(buf));
	if (n < 0) {
		fprintf(stderr, "memdedup %s: invalid request\n", cmd->name);
		return 1;
	}
	int err = md__client_request(c, MD_MSG_CONTROL, buf + MD_MSG_HDR_SIZE,
				     (uint32_t)n - MD_MSG_HDR_SIZE, reply, &rlen, &rtype);
	if (!err && (rtype == MD_MSG_CONTROL_R || rtype == MD_MSG_ERROR))
		err = md__msg_decode_payload(rtype, reply, rlen, &m);
	else if (!err)
		err = -EPROTO;
	if (err) {
		fprintf(stderr, "memdedup %s: no answer from the daemon: %s\n", cmd->name, strerror(-err));
		return 1;
	}
	if (m.u.text.status) {
		fprintf(stderr, "memdedup %s: %s\n", cmd->name, m.u.text.text[0] ? m.u.text.text :
			strerror(-m.u.text.status));
		return 1;
	}
	printf("%s\n", m.u.text.text);
	return 0;
}

static int connect_daemon(const struct md__cmd *cmd, struct md__client **c)
{
	char path[256];
	int err = md__client_connect(c, NULL);
	if (!err)
		return 0;
	if (md__daemon_socket_path(NULL, path, sizeof(path)) != 0)
		snprintf(path, sizeof(path), "(no usable path)");
	if (err == -ENOENT || err == -ECONNREFUSED)
		fprintf(stderr, "memdedup %s: the daemon is not running (nothing answers on %s);\n"
			"start memdedupd, or run a VM with `memdedup run`\n", cmd->name, path);
	else
		fprintf(stderr, "memdedup %s: cannot reach the daemon at %s: %s\n", cmd->name, path,
			strerror(-err));
	return 1;
}

/* Parses the common options; KEY=VALUE words go to pairs (set only).
 * Returns -1 when done (help printed), else an exit code, 0 to go on. */
static int parse(const struct md__cmd *cmd, int argc, char **argv, int32_t *pid,
		 char ***pairs, int *npairs, int want_pairs)
{
	*pid = 0;
	*npairs = 0;
	*pairs = argv + 1;
	for (int i = 1; i < argc; i++) {
		if (md__wants_help(cmd, argv[i]))
			return -1;
		if (strcmp(argv[i], "--pid") == 0 || strncmp(argv[i], "--pid=", 6) == 0) {
			const char *v = argv[i][5] == '=' ? argv[i] + 6 : (i + 1 < argc ? argv[++i] : NULL);
			char *end;
			if (!v)
				return md__usage_error(cmd, "--pid needs a process id");
			long p = strtol(v, &end, 10);
			if (*v < '1' || *v > '9' || *end || p <= 0 || p > INT_MAX)
				return md__usage_error(cmd, "invalid pid '%s'", v);
			*pid = (int32_t)p;
		} else if (want_pairs && argv[i][0] != '-') {
			const char *eq = strchr(argv[i], '=');
			size_t kl = eq ? (size_t)(eq - argv[i]) : 0;
			if (!eq || kl == 0 || kl > MD_KEY_MAX || !eq[1] || strlen(eq + 1) > MD_VALUE_MAX ||
			    strchr(eq + 1, '=') || strpbrk(argv[i], " \t\n"))
				return md__usage_error(cmd, "expected KEY=VALUE, not '%s'", argv[i]);
			(*pairs)[(*npairs)++] = argv[i];
		} else {
			return md__usage_error(cmd, "unknown argument '%s'", argv[i]);
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
	if (connect_daemon(cmd, &c))
		return 1;
	if (op != MD_CTL_SET) {
		ret = send_control(cmd, c, &ctl);
	} else {
		for (int i = 0; i < npairs && ret == 0; i++) {
			const char *eq = strchr(pairs[i], '=');
			memset(ctl.key, 0, sizeof(ctl.key));
			memcpy(ctl.key, pairs[i], (size_t)(eq - pairs[i]));
			snprintf(ctl.value, sizeof(ctl.value), "%s", eq + 1);
			ret = send_control(cmd, c, &ctl);
		}
	}
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
