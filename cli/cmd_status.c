/*
 * cmd_status.c - `memdedup status`: one row per running agent, totals, and
 * kernel KSM's own counters beside them.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "stats_file.h"

const struct md__cmd md__cmd_status_def = {
	.name = "status",
	.summary = "show what every running agent shares, and kernel KSM's counters",
	.usage =
	"usage: memdedup status [--json] [--agents]\n"
	"\n"
	"Lists the processes running the memdedup agent: pid, command, registered\n"
	"guest RAM, SHARED: pages mapped from an image now (shared at read time, or\n"
	"merged onto it by the scanner), their copy-on-write BREAKS, FALLBACKS:\n"
	"pages of reads that were copied, not shared (a partial page counts one),\n"
	"mappings (VMAS), pages MERGED by the scanner now (mapped from the pool,\n"
	"fill strips included), ZERO pages dropped and not written since, and the\n"
	"STATE of its scanner, as the agent says: scanning, or paused (by `memdedup\n"
	"pause`, the VMM, or a paused memdedupd) or unmerged (paused too) until\n"
	"resumed, or stopped (for good: the line after the table says why); - for\n"
	"an agent that does not scan (run without --scan). Then the totals;\n"
	"memdedupd's sharing domains and their pools, if it runs; and kernel KSM's\n"
	"counters from /sys/kernel/mm/ksm. An agent in a pid namespace of its own\n"
	"(a VMM in a container sharing the run directory) is listed by its pid here\n"
	"(in JSON, ns_pid is its own). Files of agents gone are removed. In JSON an\n"
	"agent's state is STATE (null for -), its paused and unmerged are\n"
	"memdedupd's record of it (null where memdedupd does not know it). An\n"
	"agent's general_profit, and the totals', is KSM's per-process figure:\n"
	"each agent counts every page it maps from its domain's pool, so they add\n"
	"up to more than is saved; the saving is the domain's PROFIT_MB (its\n"
	"PAGES_SHARING, its agents' ZERO_PAGES and the pages they map from their\n"
	"fill strips beyond the strips', less memdedupd's bookkeeping).\n"
	"So with pages_sharing: an agent's scanner.pages_sharing (also given as\n"
	"pages_mapped_from_pool), and the totals', are guest pages mapped from the\n"
	"pool (MERGED), not KSM's pages saved: those are a domain's pages_sharing\n"
	"(daemon.domains[], PAGES_SHARING).\n"
	"\n"
	"  --json      machine-readable output\n"
	"  --agents    the agents' rows and kernel KSM's only: memdedupd is not\n"
	"              asked (its answer costs it CPU time: a monitor that polls\n"
	"              every second should use this)\n"
	"  -h, --help  this text\n"
	"\n"
	"Commands are shown with '?' for control characters and bytes that are not\n"
	"UTF-8; in JSON, a counter past 2^63-1 (a damaged file) shows as 2^63-1.\n"
	"Exit status: 0 done (memdedupd not running is fine), 1 the run directory\n"
	"cannot be read or memdedupd runs but does not answer properly (or refuses:\n"
	"past its limit for a user other than root, try again in a second), 2 wrong\n"
	"usage.\n",
	.run = md__cmd_status,
};

static const char *const ksm_keys[] = {
	"run", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
	"full_scans", "general_profit", "ksm_zero_pages",
};
#define NKSM (sizeof(ksm_keys) / sizeof(ksm_keys[0]))

/* A kernel KSM counter: 0 and *v, or -1 where this kernel has none
 * (general_profit and ksm_zero_pages came in Linux 6.4 and 6.10; no KSM at
 * all without CONFIG_KSM): shown as n/a, and null in JSON. */
static int read_ksm(const char *key, long long *v)
{
	char path[128], buf[64] = "", *end;
	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", key);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	errno = 0;
	*v = strtoll(buf, &end, 10);
	return n > 0 && end != buf && !errno ? 0 : -1;
}

/* A decimal of 1..INT_MAX at *p, no sign or leading zero: the number, *p
 * past it; else -1. */
static long name_number(const char **p)
{
	long v = 0;
	if (**p < '1' || **p > '9')
		return -1;
	for (; **p >= '0' && **p <= '9'; (*p)++) {
		v = v * 10 + (**p - '0');
		if (v > INT_MAX)
			return -1;
	}
	return v;
}

/* The pid of a name "agent-PID.stats", or "agent-PID.K.stats" (an agent
 * whose first name was taken: agent.c), else -1. */
static int stats_file_pid(const char *name)
{
	const char *p = name + 6;
	if (strncmp(name, "agent-", 6) != 0)
		return -1;
	long pid = name_number(&p);
	if (pid > 0 && *p == '.' && p[1] >= '0' && p[1] <= '9') {
		p++;
		if (name_number(&p) < 2)
			return -1;
	}
	return pid > 0 && strcmp(p, ".stats") == 0 ? (int)pid : -1;
}

/* Whether a file that does not parse (f, len bytes read from fd) may be
 * an agent's still being made (agent.c stats_file_open: created empty,
 * locked, written with zeroes, then its header): empty (also before its
 * lock), or its magic zeroes while a process write-locks it. Not
 * malformed, then: a reader in that window warned of agents just
 * starting. Anything else is said, held or not (another version's agent,
 * a corrupt file): quiet, it would go unseen for good. */
static int stats_file_starting(int fd, const struct md__stats_file *f, ssize_t len)
{
	static const char zero[sizeof(f->magic)];
	if (len == 0)
		return 1;
	if (len < (ssize_t)sizeof(f->magic) || memcmp(f->magic, zero, sizeof(zero)) != 0)
		return 0;
	struct flock l = { .l_type = F_RDLCK, .l_whence = SEEK_SET };
	return fcntl(fd, F_GETLK, &l) == 0 && l.l_type == F_WRLCK;
}

/* Reads the snapshots of live agents in dir (see cli.h). */
int md__agents_load(const char *cmd, const char *dir, struct md__agent_row **out, size_t *count)
{
	DIR *d = opendir(dir);
	size_t n = 0, cap = 0;
	struct md__agent_row *v = NULL;

	*out = NULL;
	*count = 0;
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	struct dirent *e;
	while ((e = readdir(d))) {
		int pid = stats_file_pid(e->d_name);
		char path[PATH_MAX + 256], shown[512];
		struct stat st;
		if (pid <= 0) {
			if (cmd)
				md__stats_removal_leftover(dir, e->d_name);
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		md__printable(path, shown, sizeof(shown));
		struct md__stats_file buf;
		/* Not a FIFO that blocks us, nor a link to anything. */
		int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
		if (fd < 0) {
			/* ENOENT: gone since readdir; EACCES: another user's. */
			if (cmd && errno != ENOENT && errno != EACCES)
				fprintf(stderr, "memdedup %s: ignoring %s: %s\n", cmd, shown,
					errno == ELOOP ? "a symbolic link" : strerror(errno));
			continue;
		}
		if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
			close(fd);
			if (cmd)
				fprintf(stderr, "memdedup %s: ignoring %s: not a regular file\n", cmd, shown);
			continue;
		}
		ssize_t len = read(fd, &buf, sizeof(buf));
		struct md__stats_snapshot s;
		int bad = len < 0 || md__stats_parse(&buf, (size_t)len, &s) != 0;
		if (bad || s.pid != (uint32_t)pid) {
			int quiet = bad && len >= 0 && stats_file_starting(fd, &buf, len);
			close(fd);
			if (cmd && !quiet)
				fprintf(stderr, "memdedup %s: ignoring malformed %s\n", cmd, shown);
			continue;
		}
		/* -ESRCH: held by a process that is not its agent to us: alive,
		 * but not ours to show (by a pid that would mislead) or remove. */
		int here = md__stats_file_agent(fd, &s);
		if (here == 0 && cmd)
			md__stats_file_remove(fd, path);	/* the agent is gone: its file is stale */
		close(fd);
		if (here <= 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			struct md__agent_row *nv = realloc(v, cap * sizeof(*nv));
			if (!nv) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nv;
		}
		v[n++] = (struct md__agent_row){ .pid = here, .s = s };
	}
	closedir(d);
	*out = v;
	*count = n;
	return 0;
}

/* A counter for JSON, whose integers end at 2^63 - 1: a larger one (no
 * agent counts that far: a damaged file) is shown as 2^63 - 1. */
static json_t *ju64(uint64_t v)
{
	return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static json_t *stats_json(const md_stats *s)
{
	json_t *o = json_object(), *fb = json_object();
	json_object_set_new(o, "regions", ju64(s->regions));
	json_object_set_new(o, "registered_bytes", ju64(s->registered_bytes));
	json_object_set_new(o, "reads_seen", ju64(s->reads_seen));
	json_object_set_new(o, "bytes_read", ju64(s->bytes_read));
	json_object_set_new(o, "read_seconds", json_real((double)s->read_ns / 1e9));
	json_object_set_new(o, "read_shared_seconds", json_real((double)s->read_shared_ns / 1e9));
	json_object_set_new(o, "read_shared_bytes", ju64(s->read_shared_bytes));
	json_object_set_new(o, "read_page_seconds", json_real((double)s->read_page_ns / 1e9));
	json_object_set_new(o, "reads_page", ju64(s->reads_page));
	json_object_set_new(o, "pages_shared_at_read", ju64(s->pages_shared_at_read));
	json_object_set_new(o, "pages_shared", ju64(s->pages_shared));
	json_object_set_new(o, "breaks", ju64(s->breaks));
	json_object_set_new(o, "pages_privatized", ju64(s->pages_privatized));
	json_object_set_new(o, "lease_breaks", ju64(s->lease_breaks));
	json_object_set_new(o, "vmas", ju64(s->vmas));
	json_object_set_new(o, "fallbacks_total", ju64(s->fallbacks_total));
	for (int i = 0; i < MD_FB_COUNT; i++)
		json_object_set_new(fb, md_fallback_name(i), ju64(s->fallbacks[i]));
	json_object_set_new(o, "fallbacks", fb);
	json_object_set_new(o, "read_small_pages", ju64(s->read_small_pages));
	json_object_set_new(o, "agent_cpu_seconds", json_real((double)s->agent_cpu_ns / 1e9));
	json_object_set_new(o, "io_unseen", ju64(s->io_unseen));
	json_object_set_new(o, "fork_shared", ju64(s->fork_shared));
	json_t *sc = json_object();
	const struct { const char *k; uint64_t v; } scan[] = {
		{ "pages_scanned", s->pages_scanned }, { "pages_hinted", s->pages_hinted },
		{ "merged", s->merged }, { "merged_from_hints", s->merged_from_hints },
		{ "zero_pages", s->zero_pages }, { "published", s->published },
		{ "volatile_skips", s->volatile_skips }, { "abandoned", s->abandoned },
		{ "full_scans", s->full_scans }, { "breaks", s->scan_breaks },
		{ "wp_waits", s->wp_waits }, { "hints_pushed", s->hints_pushed },
		{ "hints_dropped", s->hints_dropped }, { "pages_sharing", s->pages_sharing },
		{ "pages_mapped_from_pool", s->pages_sharing },	/* the same, by what it is */
		{ "pages_shared", s->pool_pages }, { "merge_rate", s->merge_rate },
		{ "break_rate", s->break_rate }, { "pages_unshared", s->pages_unshared },
		{ "smart_skips", s->smart_skips }, { "candidates", s->candidates },
		{ "merged_from_candidates", s->merged_from_candidates },
		{ "merged_image", s->merged_image }, { "image_pages_indexed", s->image_pages_indexed },
		{ "zero_pages_near_hints", s->zero_pages_near_hints },
		{ "hint_ratio", s->hint_ratio }, { "filled_pages", s->filled_pages },
		{ "fill_mapped", s->fill_mapped },
		{ "merge_fallbacks", s->merge_fallbacks },
	};
	for (size_t i = 0; i < sizeof(scan) / sizeof(scan[0]); i++)
		json_object_set_new(sc, scan[i].k, ju64(scan[i].v));
	json_object_set_new(sc, "general_profit", json_integer((json_int_t)s->general_profit));
	json_object_set_new(sc, "cpu_seconds", json_real((double)s->scan_cpu_ns / 1e9));
	json_object_set_new(o, "scanner", sc);
	return o;
}

/* Adds s to t, staying at the largest value rather than wrapping. The
 * hint ratio is a setting (0..8), not a count: the totals keep the
 * largest; io_unseen sums to the agents it stopped. */
static void add_stats(md_stats *t, const md_stats *s)
{
	const uint64_t *src = (const uint64_t *)s;
	uint64_t *dst = (uint64_t *)t;
	int64_t profit;
	uint64_t ratio = t->hint_ratio > s->hint_ratio ? t->hint_ratio : s->hint_ratio;
	if (__builtin_add_overflow(t->general_profit, s->general_profit, &profit))
		profit = s->general_profit < 0 ? INT64_MIN : INT64_MAX;
	/* md_stats is all uint64_t counters, but for general_profit. */
	for (size_t i = 0; i < sizeof(*s) / sizeof(uint64_t); i++)
		if (__builtin_add_overflow(dst[i], src[i], &dst[i]))
			dst[i] = UINT64_MAX;
	t->general_profit = profit;
	t->hint_ratio = ratio;
}

static void print_row(const char *pid, const char *cmd, const md_stats *s, const char *state)
{
	printf("%-8s %-28.28s %9.1f %10llu %8llu %9llu %7llu %8llu %7llu%s%s\n", pid, cmd,
	       (double)s->registered_bytes / (1 << 20), (unsigned long long)s->pages_shared,
	       (unsigned long long)s->breaks, (unsigned long long)s->fallbacks_total,
	       (unsigned long long)s->vmas, (unsigned long long)s->pages_sharing,
	       (unsigned long long)s->zero_pages, *state ? " " : "", state);
}

/* The daemon's record of the agent of pid (cli.h): NULL also when not
 * asked or not running, or for an agent that does not scan (only those
 * connect to it) or scans within its process. */
json_t *md__daemon_agent(json_t *daemon, int pid)
{
	json_t *list = daemon ? json_object_get(daemon, "agents") : NULL, *a;
	size_t i;
	json_array_foreach(list, i, a) {
		json_t *p = json_object_get(a, "pid");
		if (json_is_integer(p) && json_integer_value(p) == pid)
			return a;
	}
	return NULL;
}

/* The STATE column: the agent's own word (its scanner's state, whoever paused it); from an
 * agent older than that, memdedupd's record of it (a, NULL if none, or
 * from a memdedupd older than its paused field: "-"). */
static const char *agent_state(json_t *a, const md_stats *s)
{
	static const char *const states[] = {
		[MD_SCAN_STATE_SCANNING] = "scanning", [MD_SCAN_STATE_PAUSED] = "paused",
		[MD_SCAN_STATE_UNMERGED] = "unmerged", [MD_SCAN_STATE_STOPPED] = "stopped",
	};
	if (s->io_unseen)
		return "stopped";	/* whatever else holds it: for good */
	if (s->scan_state && s->scan_state < sizeof(states) / sizeof(states[0]))
		return states[s->scan_state];
	if (!a || !json_is_boolean(json_object_get(a, "paused")))
		return "-";
	if (json_is_true(json_object_get(a, "unmerged")))
		return "unmerged";
	return json_is_true(json_object_get(a, "paused")) ? "paused" : "scanning";
}

int md__cmd_status(int argc, char **argv)
{
	const struct md__cmd *cmd = &md__cmd_status_def;
	int as_json = 0, agents_only = 0;
	char dir[PATH_MAX];	/* as long as an agent's (agent_internal.h) */

	for (int i = 1; i < argc; i++) {
		if (md__wants_help(cmd, argv[i]))
			return 0;
		if (strcmp(argv[i], "--json") == 0)
			as_json = 1;
		else if (strcmp(argv[i], "--agents") == 0)
			agents_only = 1;
		else
			return md__usage_error(cmd, "unknown argument '%s'",
					       md__printable(argv[i], dir, sizeof(dir)));
	}
	struct md__agent_row *agents = NULL;
	size_t n = 0;
	/* Looked up, not made: a run directory not there holds no agent. */
	int err = md__run_dir_lookup(dir, sizeof(dir));
	if (err && err != -ENOENT) {
		fprintf(stderr, "memdedup status: no usable run directory (%s)\n", strerror(-err));
		return 1;
	}
	err = err ? 0 : md__agents_load(cmd->name, dir, &agents, &n);
	if (err) {
		fprintf(stderr, "memdedup status: cannot read %s: %s\n", dir, strerror(-err));
		return 1;
	}
	md_stats total = {0};
	for (size_t i = 0; i < n; i++)
		add_stats(&total, &agents[i].s.stats);
	json_t *daemon = NULL;
	char sock[sizeof(((struct sockaddr_un *)0)->sun_path)], why[MD_TEXT_MAX + 1] = "";
	/* A socket path that cannot be (too long for a Unix address) is
	 * said so, not an error: no daemon can be asked there. */
	int nosock = agents_only ? 0 : md__daemon_socket_path(NULL, sock, sizeof(sock));
	int derr = 0;
	if (!agents_only && !nosock) {
		derr = md__status_daemon(sock, &daemon, why, sizeof(why));
		if (derr == -ENOENT || derr == -ECONNREFUSED)
			derr = 0;	/* none running is fine */
	}

	if (as_json) {
		json_t *root = json_object(), *list = json_array(), *ksm = json_object();
		for (size_t i = 0; i < n; i++) {
			json_t *o = stats_json(&agents[i].s.stats);
			json_object_set_new(o, "pid", json_integer(agents[i].pid));
			json_object_set_new(o, "ns_pid", json_integer(agents[i].s.pid));
			/* Made valid UTF-8: json_string() refuses anything else. */
			char command[MD_STATS_COMMAND_LEN];
			json_object_set_new(o, "command", json_string(md__printable(agents[i].s.command,
						    command, sizeof(command))));
			json_t *da = md__daemon_agent(daemon, agents[i].pid);
			const char *state = agent_state(da, &agents[i].s.stats);
			json_object_set_new(o, "state", strcmp(state, "-") ? json_string(state) : json_null());
			/* memdedupd's word, null where it has none. */
			json_object_set_new(o, "paused", da ? json_boolean(json_is_true(json_object_get(da, "paused")))
							    : json_null());
			json_object_set_new(o, "unmerged", da ? json_boolean(json_is_true(json_object_get(da,
							    "unmerged"))) : json_null());
			/* Its part of the daemon's rate (0 to 1), null where none. */
			json_t *part = da ? json_object_get(da, "rate_part") : NULL;
			json_object_set_new(o, "rate_part", json_is_real(part) ? json_real(json_real_value(part))
									 : json_null());
			json_array_append_new(list, o);
		}
		for (size_t k = 0; k < NKSM; k++) {
			long long v;
			json_object_set_new(ksm, ksm_keys[k], read_ksm(ksm_keys[k], &v) == 0 ?
					    json_integer(v) : json_null());
		}
		json_object_set_new(root, "agents", list);
		json_object_set_new(root, "totals", stats_json(&total));
		if (!agents_only)
			json_object_set_new(root, "daemon", daemon ? json_incref(daemon) : json_null());
		json_object_set_new(root, "kernel_ksm", ksm);
		json_dumpf(root, stdout, JSON_INDENT(1));
		putchar('\n');
		json_decref(root);
	} else {
		printf("%-8s %-28s %9s %10s %8s %9s %7s %8s %7s %s\n", "PID", "COMMAND", "RAM_MB",
		       "SHARED", "BREAKS", "FALLBACKS", "VMAS", "MERGED", "ZERO", "STATE");
		for (size_t i = 0; i < n; i++) {
			char pid[16], command[29];	/* its column's 28 bytes */
			const md_stats *s = &agents[i].s.stats;
			snprintf(pid, sizeof(pid), "%d", agents[i].pid);
			print_row(pid, md__printable(agents[i].s.command, command, sizeof(command)), s,
				  agent_state(md__daemon_agent(daemon, agents[i].pid), s));
		}
		print_row("total", n == 1 ? "1 agent" : "agents", &total, "");
		for (size_t i = 0; i < n; i++) {
			if ((uint32_t)agents[i].pid != agents[i].s.pid)
				printf("pid %d: in a pid namespace of its own, where it is pid %u\n",
				       agents[i].pid, agents[i].s.pid);
			if (agents[i].s.stats.io_unseen)
				printf("pid %d: sharing stopped: the VMM does I/O the agent cannot "
				       "follow (its log says which)\n", agents[i].pid);
		}
		json_t *doms = daemon ? json_object_get(daemon, "domains") : NULL;
		if (doms && json_array_size(doms)) {
			size_t i;
			json_t *d;
			char shown[MD_DOMAIN_MAX + 1];
			int width = 16;	/* names whole: two cut alike looked one */
			json_array_foreach(doms, i, d) {
				const char *name = json_string_value(json_object_get(d, "name"));
				int len = name ? (int)strlen(md__printable(name, shown, sizeof(shown))) : 0;
				width = len > width ? len : width;
			}
			printf("\n%-4s %-*s %6s %7s %11s %13s %11s %15s\n", "DOM", width, "NAME", "UID", "AGENTS",
			       "POOL_PAGES", "PAGES_SHARING", "ZERO_PAGES", "PROFIT_MB");
			json_array_foreach(doms, i, d) {
				const char *name = json_string_value(json_object_get(d, "name"));
				if (name)
					name = md__printable(name, shown, sizeof(shown));
				/* Bookkeeping makes an empty pool's profit a
				 * little below zero: not "-0.0". */
				char profit[32], zero[24] = "-";	/* "-": a daemon before zero_pages */
				json_t *z = json_object_get(d, "zero_pages");
				if (json_is_integer(z))
					snprintf(zero, sizeof(zero), "%lld", (long long)json_integer_value(z));
				snprintf(profit, sizeof(profit), "%.1f",
					 (double)json_integer_value(json_object_get(d, "general_profit")) / (1 << 20));
				printf("%-4lld %-*s %6lld %7lld %11lld %13lld %11s %15s\n",
				       (long long)json_integer_value(json_object_get(d, "id")), width,
				       name && *name ? name : "(default)",
				       (long long)json_integer_value(json_object_get(d, "uid")),
				       (long long)json_integer_value(json_object_get(d, "agents")),
				       (long long)json_integer_value(json_object_get(d, "pool_live_pages")),
				       (long long)json_integer_value(json_object_get(d, "pages_sharing")), zero,
				       strcmp(profit, "-0.0") == 0 ? "0.0" : profit);
			}
		} else if (daemon) {
			/* Before the first agent, or after the last domain closed. */
			printf("\nmemdedupd: running, with no domains now\n");
		} else if (derr) {
			printf("\nmemdedupd: %s (see the error)\n", why[0] ? "refused" : "no proper answer");
		} else if (nosock) {
			/* Where a daemon would be is unknown: it may run. */
			const char *env = getenv("MEMDEDUP_SOCKET");
			printf("\nmemdedupd: not asked: %s (%s)\n", env && *env ?
			       "MEMDEDUP_SOCKET cannot be used as a socket path" :
			       "no usable socket path in the run directory", strerror(-nosock));
		} else if (!agents_only) {
			printf("\nmemdedupd: not running\n");
		}
		printf("\nkernel KSM:");
		for (size_t k = 0; k < NKSM; k++) {
			long long v;
			if (read_ksm(ksm_keys[k], &v) == 0)
				printf(" %s=%lld", ksm_keys[k], v);
			else
				printf(" %s=n/a", ksm_keys[k]);
		}
		printf("\n");
	}
	free(agents);
	json_decref(daemon);
	if (derr) {
		/* After the rest, so it is the last line a user sees. */
		char shown[sizeof(why)];
		if (why[0])
			fprintf(stderr, "memdedup status: memdedupd at %s: %s\n",
				md__printable(sock, dir, sizeof(dir)), md__printable(why, shown, sizeof(shown)));
		else
			fprintf(stderr, "memdedup status: memdedupd at %s did not answer properly: %s\n",
				md__printable(sock, dir, sizeof(dir)), strerror(-derr));
		return 1;
	}
	return 0;
}
