/* test_cli.c - the command line: help, and wrong usage exits 2 and changes
 * nothing. */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <grp.h>
#include <limits.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <endian.h>
#include <linux/capability.h>
#include <unistd.h>

#include <jansson.h>

#include "cgroup.h"
#include "daemon_util.h"
#include "proc.h"
#include "runner.h"
#include "stats_file.h"

static int run(const char *cmd)
{
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST_IMPL(cli_usage)
{
	ASSERT_EQ(run("build/memdedup --help >/dev/null"), 0);
	ASSERT_EQ(run("build/memdedup run --help >/dev/null"), 0);
	ASSERT_EQ(run("build/memdedup status --help >/dev/null"), 0);
	ASSERT_EQ(run("build/memdedup >/dev/null 2>&1"), 2);
	ASSERT_EQ(run("build/memdedup frobnicate 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --kernel-ksm=maybe -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --nope -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=0 -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=4097 -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=16x -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages= -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages -- true 2>&1 | "
		      "grep -q -- \"--share-min-pages needs a value after '=' (--share-min-pages=...)\""), 0);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=0 -- true 2>&1 | "
		      "grep -q 'share-min-pages takes a number from 1 to 4096'"), 0);
	/* A flag that takes no value, given one, is named as such. */
	ASSERT_EQ(run("build/memdedup run --scan=1 -- true 2>&1 | "
		      "grep -q -- '--scan takes no value (give it as --scan alone)'"), 0);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=4096 -- "
		      "sh -c 'test \"$MEMDEDUP_SHARE_MIN_PAGES\" = 4096'"), 0);
	ASSERT_EQ(run("build/memdedup status --bogus 2>/dev/null"), 2);
	/* run execs the command: its exit code comes through. */
	ASSERT_EQ(run("build/memdedup run -- sh -c 'exit 7'"), 7);
	/* Without "--", the command is the first word that is no option. */
	ASSERT_EQ(run("build/memdedup run --populate sh -c 'exit 7'"), 7);
	ASSERT_EQ(run("build/memdedup run -- /nonexistent/cmd 2>/dev/null"), 127);
	ASSERT_EQ(run("build/memdedup run -- sh -c 'case $LD_PRELOAD in *libmemdedup-preload.so*) exit 0;; esac; exit 1'"), 0);
	/* Alone, the usage goes to stderr (wrong usage), none to stdout; the
	 * list names every command with what it does; -h is --help; a
	 * command's usage error names the command and its help. */
	ASSERT_EQ(run("test -z \"$(build/memdedup 2>/dev/null)\" && "
		      "build/memdedup 2>&1 >/dev/null | grep -q '^usage: memdedup '"), 0);
	static const char *const names[] = { "run", "status", "pause", "resume", "unmerge", "set" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char cmd[200];
		snprintf(cmd, sizeof(cmd), "build/memdedup --help | grep -q '^  %s  *[a-z]'", names[i]);
		ASSERT_EQ(run(cmd), 0);
	}
	ASSERT_EQ(run("build/memdedup run -h | grep -q '^usage: memdedup run '"), 0);
	ASSERT_EQ(run("build/memdedup status --bogus 2>&1 >/dev/null | tr '\\n' '|' | grep -qx "
		      "\"memdedup status: unknown argument '--bogus'|Try 'memdedup status --help'.|\""), 0);
	return 0;
}

/* The build whose `memdedup run` runs commands: under the sanitizers, the
 * plain one (an instrumented preload library needs libasan before it, and
 * `run` puts the library first), as cli_usage does. */
static const char *run_build_dir(void)
{
	return getenv("MD_TEST_PRELOAD_FIRST") ? "build" : build_dir();
}

/* The shell's exit code of a command made from fmt; its stdout and stderr
 * go to test_dir()/out and test_dir()/err unless the command redirects. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[2048], full[2600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	snprintf(full, sizeof(full), "(%s) >%s/out 2>%s/err", cmd, test_dir(), test_dir());
	return run(full);
}

/* The whole of test_dir()/name, NUL-terminated (static buffer). */
static const char *slurp(const char *name)
{
	static char buf[65536];
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", test_dir(), name);
	FILE *f = fopen(path, "r");
	ASSERT(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* The value write_stats gives counter i for ctr: 0 for a ctr of 0, else
 * ctr + i, so that every counter differs and a column or key showing
 * another's is seen. general_profit, signed, is kept positive. */
static uint64_t stats_value(uint64_t ctr, int i)
{
	uint64_t v = ctr ? ctr + (uint64_t)i : 0;
	return i == MD_CTR_GENERAL_PROFIT ? v & INT64_MAX : v;
}

/* Writes a statistics file as an agent would: path, pid, start time,
 * command, and every counter i set to stats_value(ctr, i). One that names
 * this process as it is (pid and start time) is held as its agent holds
 * it, till the process exits: mapped, and write-locked through a
 * descriptor kept open (status takes a file mapped by no process for
 * stale). Any other is a file left behind, or a stand-in's
 * (agent_stand_in). */
static void write_stats(const char *path, uint32_t pid, uint64_t start, const char *command,
			uint64_t ctr)
{
	struct md__stats_file f;
	memset(&f, 0, sizeof(f));
	memcpy(f.magic, MD_STATS_MAGIC, sizeof(f.magic));
	f.version = MD_STATS_VERSION;
	f.header_size = offsetof(struct md__stats_file, counters);
	f.ncounters = MD_CTR_COUNT;
	f.pid = pid;
	f.start_time = start;
	snprintf(f.command, sizeof(f.command), "%s", command);
	for (int i = 0; i < MD_CTR_COUNT; i++)
		f.counters[i] = stats_value(ctr, i);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	ASSERT(fd >= 0);
	ASSERT(write(fd, &f, sizeof(f)) == (ssize_t)sizeof(f));
	if (pid != (uint32_t)getpid() || start != md__proc_start_time(getpid())) {
		close(fd);
		return;
	}
	struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	ASSERT(fcntl(fd, F_SETLK, &l) == 0);
	ASSERT(mmap(NULL, sizeof(f), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) != MAP_FAILED);
}

/* Sets counter i of the statistics file at path to v. */
static void set_counter(const char *path, int i, uint64_t v)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT(pwrite(fd, &v, sizeof(v), (off_t)(offsetof(struct md__stats_file, counters) +
						 (size_t)i * sizeof(uint64_t))) == (ssize_t)sizeof(v));
	close(fd);
}

/* A pid that was ours and is gone. */
static pid_t dead_pid(void)
{
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0)
		_exit(0);
	ASSERT(waitpid(kid, NULL, 0) == kid);
	return kid;
}

/* `memdedup help CMD` (or `--help CMD`): a command's help; an unknown one
 * is wrong usage. */
/* The benchmark's bad arguments are refused, said, before anything runs:
 * a scan rate memdedupd refuses was found only after the KSM modes had run
 * (minutes, the host's KSM unmerged), a missing value said by bash. */
TEST_IMPL(cli_bench_bad_arguments)
{
	/* The last: a report is of the run's own modes, which run.meta
	 * set over the list given. */
	const char *bad[] = { "--scan-rate 0", "--scan-rate 100001", "--scan-rate 12abc", "--hold", "--hold 9", "--hold-scan 6", "--modes",
			      "--modes ''", "--modes ' '", "--modes none" };
	char out[600], err[600], cmd[1600];
	snprintf(out, sizeof(out), "%s/bench-args", test_dir());
	snprintf(err, sizeof(err), "%s/bench-args.err", test_dir());
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* --report-only: should the check be gone, no guest starts. */
		snprintf(cmd, sizeof(cmd), "timeout 60 bench/run-bench.sh --report-only --out %s %s >/dev/null 2>%s",
			 out, bad[i], err);
		ASSERT_EQ(run(cmd), 2);
		ASSERT(strncmp(file_text(err), "run-bench.sh: ", 14) == 0);
		ASSERT(access(out, F_OK) != 0);	/* nothing made */
	}
	return 0;
}

/* The bench's and guest tests' numbers (hold windows, means of samples,
 * results.json) are read and written with a decimal point whatever the
 * caller's locale: under de_DE.UTF-8 (a German install's root) awk read
 * "12.30" as 12 and printed "14,00", and results.json was invalid. */
TEST_IMPL(bench_numbers_any_locale)
{
	char loc[512];
	snprintf(loc, sizeof(loc), "%s/loc", test_dir());
	ASSERT_EQ(sh("mkdir -p %s && localedef -i de_DE -f UTF-8 %s/de_DE.UTF-8", loc, loc), 0);
	/* The locale takes: awk says a decimal comma. */
	ASSERT_EQ(sh("LOCPATH=%s LC_ALL=de_DE.UTF-8 awk 'BEGIN { printf \"%%.2f\", 1.5 }'", loc), 0);
	ASSERT_EQ(strcmp(slurp("out"), "1,50"), 0);
	/* A guest read until 12.30 s, exited at 60.30 s, no hold. */
	ASSERT_EQ(sh("printf 'g1\\tx\\t12.30\\t60.30\\tx\\tx\\tx\\tNA\\n' > %s/guests.tsv", test_dir()), 0);
	ASSERT_EQ(sh("LOCPATH=%s LC_ALL=de_DE.UTF-8 bash -c '. scripts/fleet-lib.sh; fleet_hold_window %s'", loc,
		     test_dir()), 0);
	ASSERT_EQ(strcmp(slurp("out"), "14.30 59.30\n"), 0);
	return 0;
}

/* The guest kit refuses bad options before its log is made or a guest
 * started: a --timeout that is not a number of seconds (the watchdog never
 * fired, the guest ran on), a --wrapper or --qemu-opt that is no list of
 * shell words. */
TEST_IMPL(cli_guest_bad_options)
{
	char f[600], cmd[2600];
	snprintf(f, sizeof(f), "%s/empty", test_dir());
	int fd = open(f, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT(fd >= 0);
	close(fd);
	const char *bad[] = { "--timeout 10s", "--timeout -5", "--timeout 1e3",
			      /* Shell words (a path with spaces quoted): unbalanced
			       * quotes are refused before the log is made. */
			      "--wrapper \"'unclosed run --\"", "--qemu-opt '-incoming \"exec:cat'" };
	const char *why[] = { "--timeout must be a whole number of seconds", NULL, NULL,
			      "--wrapper is not a list of shell words", "--qemu-opt is not a list of shell words" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char log[700];
		snprintf(log, sizeof(log), "%s/g.log", test_dir());
		unlink(log);
		snprintf(cmd, sizeof(cmd), "timeout 60 guest/run-guest.sh --kernel %s --initrd %s --log %s "
			 "%s %s >/dev/null 2>%s/err", f, f, log, bad[i], f, test_dir());
		ASSERT_EQ(run(cmd), 1);
		ASSERT(strstr(slurp("err"), why[i] ? why[i] : why[0]));
		ASSERT(access(log, F_OK) != 0);
	}
	return 0;
}

TEST_IMPL(cli_help_unknown)
{
	const char *b = build_dir();
	ASSERT_EQ(sh("%s/memdedup help set", b), 0);
	ASSERT(strstr(slurp("out"), "usage: memdedup set"));
	ASSERT_EQ(sh("%s/memdedup help", b), 0);
	ASSERT_EQ(sh("%s/memdedup help bogus", b), 2);
	ASSERT(strstr(slurp("err"), "unknown command 'bogus'"));
	ASSERT_EQ(sh("%s/memdedup help set run", b), 2);
	/* `-h`, `--help` and `help` take the same command name, and `help
	 * help` is the list of commands. */
	ASSERT_EQ(sh("%s/memdedup --help unmerge", b), 0);
	ASSERT(strstr(slurp("out"), "usage: memdedup unmerge"));
	ASSERT_EQ(sh("%s/memdedup -h status", b), 0);
	ASSERT(strstr(slurp("out"), "usage: memdedup status"));
	ASSERT_EQ(sh("%s/memdedup help help", b), 0);
	ASSERT(strstr(slurp("out"), "Commands:"));
	ASSERT_EQ(sh("%s/memdedup --help extra", b), 2);
	ASSERT(strstr(slurp("err"), "unknown command 'extra'"));
	ASSERT_EQ(sh("%s/memdedup --help set run", b), 2);
	return 0;
}

/* `set`: one bad pair and nothing is set, not even the good ones before
 * it; a bad value says which key and why, as wrong usage (2). */
TEST_IMPL(cli_set_checks_all_first)
{
	struct tdaemon t;
	const char *b = build_dir();
	td_start(&t, 16);
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=500 bogus=1", t.sock, b), 2);
	ASSERT(strstr(slurp("err"), "unknown key 'bogus'"));
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=500 order=up", t.sock, b), 2);
	ASSERT(strstr(slurp("err"), "order must be 'linear' or 'random', not 'up'"));
	json_t *js = td_status(&t);
	json_t *tun = json_object_get(json_object_get(js, "daemon"), "tunables");
	ASSERT_EQ(td_int(tun, "pages_to_scan"), 100);
	json_decref(js);
	/* All good: all set. */
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=500 order=random", t.sock, b), 0);
	js = td_status(&t);
	tun = json_object_get(json_object_get(js, "daemon"), "tunables");
	ASSERT_EQ(td_int(tun, "pages_to_scan"), 500);
	json_decref(js);
	/* "--" ends the options, as scripts write it: after it even a word
	 * like an option is a pair (and a wrong one). */
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set -- --pid=1", t.sock, b), 2);
	ASSERT(strstr(slurp("err"), "unknown key '--pid'"));
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set --", t.sock, b), 2);
	ASSERT(strstr(slurp("err"), "nothing to set"));
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set -- pages_to_scan=600", t.sock, b), 0);
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup pause --", t.sock, b), 0);
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup resume --", t.sock, b), 0);
	js = td_status(&t);
	tun = json_object_get(json_object_get(js, "daemon"), "tunables");
	ASSERT_EQ(td_int(tun, "pages_to_scan"), 600);
	json_decref(js);
	td_stop(&t);
	return 0;
}

/* An agent that does not answer in time: memdedupd has taken the value
 * all the same, and the pairs after it are still sent (they were dropped,
 * a command half applied); the exit code and the message say it failed. */
TEST_IMPL(cli_set_sends_every_pair)
{
	struct tdaemon t;
	struct md__msg_welcome w;
	int fd;
	td_start_waiting(&t, 16, 200);
	struct md__client *agent = td_agent(&t, NULL, &w, &fd);	/* never answers */
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=500 order=random", t.sock,
		     build_dir()), 1);
	ASSERT(strstr(slurp("err"), "did not answer"));
	json_t *js = td_status(&t);
	json_t *tun = json_object_get(json_object_get(js, "daemon"), "tunables");
	ASSERT_EQ(td_int(tun, "pages_to_scan"), 500);
	ASSERT(json_string_value(json_object_get(tun, "order")));
	ASSERT_EQ(strcmp(json_string_value(json_object_get(tun, "order")), "random"), 0);
	json_decref(js);
	md__client_free(agent);
	close(fd);
	td_stop(&t);
	return 0;
}

TEST_IMPL(cli_set_bad_value_says_why)
{
	const char *b = build_dir();
	/* Checked before the daemon is looked for: none is needed. */
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup set pages_to_scan=\xc3\xa9", test_dir(), b), 2);
	ASSERT(strstr(slurp("err"), "pages_to_scan must be a whole number from 1 to 100000, not '\xc3\xa9'"));
	/* What it echoes cannot drive the terminal. */
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup set \"$(printf 'cpu_percent=1\\033[2J')\"",
		     test_dir(), b), 2);
	ASSERT(strstr(slurp("err"), "cpu_percent must be a whole number from 1 to 100, not '1?[2J'"));
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup set cpu_percent=0", test_dir(), b), 2);
	/* Nor do other commands' messages. */
	ASSERT_EQ(sh("%s/memdedup run --share-min-pages=\"$(printf '1\033[2J')\" -- true", b), 2);
	ASSERT(strstr(slurp("err"), "not '1?[2J'"));
	ASSERT_EQ(sh("%s/memdedup pause --pid \"$(printf '1\033[2J')\"", b), 2);
	ASSERT(strstr(slurp("err"), "invalid pid '1?[2J'"));
	/* A value too long, or with a space, is said to be so; two pids are
	 * one too many (the last one was taken). */
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup set pages_to_scan=%070d", test_dir(), b, 1), 2);
	ASSERT(strstr(slurp("err"), "a value 64"));
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup set 'order=lin ear'", test_dir(), b), 2);
	ASSERT(strstr(slurp("err"), "no white space"));
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup pause --pid 1 --pid 2", test_dir(), b), 2);
	ASSERT(strstr(slurp("err"), "--pid given twice"));
	return 0;
}

/* The daemon of the run directory dir, killed and gone: its pid, 0 if none
 * answers there nor left its pid file. One that answers may not have
 * written its pid yet (its first process writes it once the daemon
 * listens, and `run` may not wait for that): read again for up to 2 s. */
static int kill_daemon_of(const char *dir)
{
	char path[512], sock[512];
	int pid = 0;
	snprintf(path, sizeof(path), "%s/memdedupd.pid", dir);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	int alive = md__daemon_alive(sock);
	for (int i = 0; i < 200 && pid <= 0 && (alive || access(path, F_OK) == 0); i++) {
		FILE *f = fopen(path, "r");
		if (f) {
			if (fscanf(f, "%d", &pid) != 1)
				pid = 0;
			fclose(f);
		}
		if (pid <= 0)
			usleep(10000);
	}
	if (pid <= 0)
		return 0;
	kill(pid, SIGTERM);
	for (int i = 0; i < 200 && access(path, F_OK) == 0; i++)
		usleep(10000);
	if (access(path, F_OK) == 0)
		kill(pid, SIGKILL);
	return pid;
}

/* memdedupd started on demand by a VMM's `memdedup run` serves every VM
 * of the host: it kept the first VMM's CPUs (taskset, libvirt's vCPU
 * placement), its real-time policy (chrt) and its nice value. */
TEST_IMPL(cli_run_daemon_not_confined)
{
	cpu_set_t mine, got;
	ASSERT_EQ(sched_getaffinity(0, sizeof(mine), &mine), 0);
	if (CPU_COUNT(&mine) < 2)
		SKIP("needs two CPUs to pin the VMM to one");
	if (geteuid() != 0)
		SKIP("needs root: a real-time policy");
	char dir[400], path[450];
	snprintf(dir, sizeof(dir), "%s/run", test_dir());
	ASSERT(mkdir(dir, 0700) == 0);
	int first = 0;
	while (!CPU_ISSET(first, &mine))
		first++;
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(first, &one);
		struct sched_param fifo = { .sched_priority = 1 };
		if (sched_setaffinity(0, sizeof(one), &one) || sched_setscheduler(0, SCHED_FIFO, &fifo) ||
		    setpriority(PRIO_PROCESS, 0, 5))
			_exit(100);
		char cmd[1200];
		snprintf(cmd, sizeof(cmd), "MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- true >/dev/null 2>&1",
			 dir, run_build_dir());
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	snprintf(path, sizeof(path), "%s/memdedupd.pid", dir);
	int pid = 0;
	for (int i = 0; i < 200 && pid <= 0; i++) {
		FILE *f = fopen(path, "r");
		if (!f || fscanf(f, "%d", &pid) != 1)
			pid = 0;
		if (f)
			fclose(f);
		if (pid <= 0)
			usleep(10000);
	}
	ASSERT(pid > 0);
	ASSERT_EQ(sched_getaffinity(pid, sizeof(got), &got), 0);
	int cpus = CPU_COUNT(&got), policy = sched_getscheduler(pid);
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, (id_t)pid);
	ASSERT_EQ(kill_daemon_of(dir), pid);
	ASSERT_EQ(cpus, CPU_COUNT(&mine));
	ASSERT_EQ(policy, SCHED_OTHER);
	ASSERT_EQ(nice, 0);
	return 0;
}

/* `run --scan` with a command that cannot run: 127 (126), and no daemon. */
TEST_IMPL(cli_run_missing_command_no_daemon)
{
	const char *b = build_dir();
	char dir[400], sock[450];
	snprintf(dir, sizeof(dir), "%s/run", test_dir());
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	int c1 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- /nonexistent/cmd", dir, b);
	int alive1 = md__daemon_alive(sock), pid1 = kill_daemon_of(dir);
	char err1[1024];
	snprintf(err1, sizeof(err1), "%s", slurp("err"));
	int c2 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- memdedup-no-such-cmd", dir, b);
	int alive2 = md__daemon_alive(sock), pid2 = kill_daemon_of(dir);
	char err2[1024];
	snprintf(err2, sizeof(err2), "%s", slurp("err"));
	char noexec[450];
	snprintf(noexec, sizeof(noexec), "%s/noexec", test_dir());
	write_stats(noexec, 1, 1, "x", 0);	/* any file, mode 0644 */
	int c3 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s", dir, b, noexec);
	int alive3 = md__daemon_alive(sock), pid3 = kill_daemon_of(dir);
	int c4 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s", dir, b, test_dir());
	int alive4 = md__daemon_alive(sock), pid4 = kill_daemon_of(dir);
	char err4[1024];
	snprintf(err4, sizeof(err4), "%s", slurp("err"));
	/* An agent that will not scan (MEMDEDUP_SCAN off, in any of the
	 * agent's words for it, or the agent disabled) needs no daemon. */
	const char *rb = run_build_dir();	/* these run their command */
	int c5 = sh("MEMDEDUP_SCAN=false MEMDEDUP_RUN_DIR=%s %s/memdedup run -- true", dir, rb);
	int alive5 = md__daemon_alive(sock), pid5 = kill_daemon_of(dir);
	int c6 = sh("MEMDEDUP_DISABLE=1 MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- true", dir, rb);
	int alive6 = md__daemon_alive(sock), pid6 = kill_daemon_of(dir);
	/* Said: it was a silent no-op. */
	ASSERT_EQ(strcmp(slurp("err"), "memdedup run: note: MEMDEDUP_DISABLE is on in the environment: the agent "
			 "does nothing (no sharing, no scanning)\n"), 0);
	ASSERT_EQ(sh("MEMDEDUP_DISABLE=yes %s/memdedup run -- true", rb), 0);
	ASSERT(strstr(slurp("err"), "MEMDEDUP_DISABLE is on in the environment: the agent does nothing (no "
			  "sharing)\n"));
	/* A script whose interpreter is missing: execve's ENOENT, found
	 * before the daemon is started for it. */
	char script[450];
	snprintf(script, sizeof(script), "%s/script", test_dir());
	FILE *f = fopen(script, "w");
	ASSERT(f && fputs("#! /nonexistent/interpreter\n", f) >= 0 && fclose(f) == 0);	/* blank after #! */
	ASSERT(chmod(script, 0755) == 0);
	int c7 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s", dir, b, script);
	int alive7 = md__daemon_alive(sock), pid7 = kill_daemon_of(dir);
	char err7[1024];
	snprintf(err7, sizeof(err7), "%s", slurp("err"));
	/* A script whose interpreter is a script whose own is missing: the
	 * kernel follows the chain, and so must the check. */
	char outer[460];
	snprintf(outer, sizeof(outer), "%s/outer", test_dir());
	f = fopen(outer, "w");
	ASSERT(f && fprintf(f, "#!%s\n", script) > 0 && fclose(f) == 0);
	ASSERT(chmod(outer, 0755) == 0);
	int c8 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s", dir, b, outer);
	int alive8 = md__daemon_alive(sock), pid8 = kill_daemon_of(dir);
	char err8[1024];
	snprintf(err8, sizeof(err8), "%s", slurp("err"));
	ASSERT_EQ(c1, 127);
	ASSERT_EQ(c2, 127);
	ASSERT_EQ(c3, 126);
	ASSERT_EQ(c4, 126);
	ASSERT_EQ(c5, 0);
	ASSERT_EQ(c6, 0);
	/* Not a directory on the way: the shell's 126 (only "not there" is 127). */
	int c9 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/x", dir, b, noexec);
	int alive9 = md__daemon_alive(sock), pid9 = kill_daemon_of(dir);
	ASSERT_EQ(c7, 127);
	ASSERT_EQ(c8, 127);
	ASSERT_EQ(c9, 126);
	ASSERT(!alive9 && !pid9);
	ASSERT(strstr(slurp("err"), "Not a directory"));
	/* An interpreter that is there but not executable: execve's EACCES. */
	char noexec_script[460], want[1024];
	snprintf(noexec_script, sizeof(noexec_script), "%s/noexec-script", test_dir());
	f = fopen(noexec_script, "w");
	ASSERT(f && fprintf(f, "#!%s\n", noexec) > 0 && fclose(f) == 0);
	ASSERT(chmod(noexec_script, 0755) == 0);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s", dir, b, noexec_script), 126);
	ASSERT(!md__daemon_alive(sock) && !kill_daemon_of(dir));
	snprintf(want, sizeof(want), "its interpreter (#!) %s is not executable", noexec);
	ASSERT(strstr(slurp("err"), want));
	/* A #! path the kernel's 256 bytes cut short: its exec fails with
	 * ENOEXEC, and the command runs with /bin/sh, as the shell runs it. */
	char longer[460];
	snprintf(longer, sizeof(longer), "%s/longer", test_dir());
	f = fopen(longer, "w");
	ASSERT(f && fprintf(f, "#!/%0300d\nexit 7\n", 0) > 0 && fclose(f) == 0);
	ASSERT(chmod(longer, 0755) == 0);
	ASSERT_EQ(sh("%s", longer), 7);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan --domain=private -- %s", dir, rb, longer), 7);
	/* A domain's name from the environment the agent refuses: it merges
	 * within its process, and no daemon is started for it. */
	ASSERT_EQ(sh("MEMDEDUP_DOMAIN=a/b MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- true", dir, rb), 0);
	ASSERT(strstr(slurp("err"), "MEMDEDUP_DOMAIN='a/b' is no sharing domain's name"));
	ASSERT(!md__daemon_alive(sock) && !kill_daemon_of(dir));
	ASSERT(!alive1 && !alive2 && !alive3 && !alive4 && !alive5 && !alive6 && !alive7 && !alive8);
	ASSERT(!pid1 && !pid2 && !pid3 && !pid4 && !pid5 && !pid6 && !pid7 && !pid8);
	/* A path is not looked up in PATH: execve's own error. */
	ASSERT_EQ(strcmp(err1, "memdedup run: cannot run '/nonexistent/cmd': No such file or directory\n"), 0);
	ASSERT(strstr(err2, "cannot run 'memdedup-no-such-cmd': command not found"));
	ASSERT(strstr(err4, "Is a directory"));
	ASSERT(strstr(err7, "its interpreter (#!) /nonexistent/interpreter is missing"));
	ASSERT(strstr(err8, "its interpreter (#!) /nonexistent/interpreter is missing"));
	return 0;
}

/* sh() as the user and group uid, with no other groups. */
static int sh_as(uid_t uid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sh_as(uid_t uid, const char *fmt, ...)
{
	char cmd[2048], out[450], err[450];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	snprintf(out, sizeof(out), "%s/out", test_dir());
	snprintf(err, sizeof(err), "%s/err", test_dir());
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0 || setgroups(0, NULL) != 0 ||
		    setgid(uid) != 0 || setuid(uid) != 0)
			_exit(99);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	int st;
	ASSERT(waitpid(kid, &st, 0) == kid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* `run --scan` for a user who cannot open a userfaultfd (the sysctl
 * vm.unprivileged_userfaultfd=0, /dev/userfaultfd root's): a clear error
 * saying what to do, before a daemon is started for a scanner that could
 * not run; without --scan the command runs. */
TEST_IMPL(cli_run_scan_needs_userfaultfd)
{
	const char *why = uffd_open_to_nobody();
	if (why)
		SKIP("%s", why);
	const char *b = run_build_dir();
	/* nobody's run directory, in the test's (which the runner cleans
	 * up, killing a daemon left there should an assertion fail). */
	char dir[400], sock[450];
	ASSERT(chmod(test_dir(), 0755) == 0);
	snprintf(dir, sizeof(dir), "%s/run", test_dir());
	ASSERT(mkdir(dir, 0700) == 0 && chown(dir, 65534, 65534) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	int c1 = sh_as(65534, "MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- true", dir, b);
	int alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
	char err1[1024];
	snprintf(err1, sizeof(err1), "%s", slurp("err"));
	int c2 = sh_as(65534, "MEMDEDUP_SCAN=1 MEMDEDUP_RUN_DIR=%s %s/memdedup run -- true", dir, b);
	int alive2 = md__daemon_alive(sock), pid2 = kill_daemon_of(dir);
	char err2[1024];
	snprintf(err2, sizeof(err2), "%s", slurp("err"));
	int c3 = sh_as(65534, "MEMDEDUP_RUN_DIR=%s %s/memdedup run -- true", dir, b);
	ASSERT_EQ(c1, 1);
	ASSERT(!alive && !pid);
	ASSERT(!alive2 && !pid2);
	/* The device's EACCES, or the syscall's EPERM where there is none. */
	ASSERT(strstr(err1, "memdedup run: content scanning needs a userfaultfd, and this user cannot open "
			    "one: "));
	ASSERT(strstr(err1, "(userfaultfd unavailable: set the sysctl vm.unprivileged_userfaultfd=1"));
	ASSERT_EQ(c2, 1);
	ASSERT(strstr(err2, "content scanning needs a userfaultfd"));
	ASSERT_EQ(c3, 0);
	return 0;
}

/* Writes an executable file (mode, owner uid) of text. */
static void write_exec(const char *path, const char *text, mode_t mode, uid_t uid)
{
	FILE *f = fopen(path, "w");
	ASSERT(f && fputs(text, f) >= 0 && fclose(f) == 0);
	ASSERT(chown(path, uid, (gid_t)-1) == 0 && chmod(path, mode) == 0);
}

/* A shell's arguments to exit 0 when the agent is mapped into it, 1 if
 * not. The shell reads its maps itself: a set-uid or capable process is
 * not dumpable, and another process (grep) could not. */
#define AGENT_IN_SH "-c 'while read -r l; do case $l in *libmemdedup-preload.so) exit 0;; esac; " \
	"done </proc/$$/maps; exit 1'"

/* A set-uid or set-gid command (or interpreter) that changes our ids runs
 * in ld.so's secure mode, which ignores LD_PRELOAD paths: it would run
 * without the agent. `run` refuses it (126), and starts nothing. A set-uid
 * file of our own uid (root's, for root) changes nothing, and a set-uid
 * script's bits count for nothing (its interpreter's do): both run with
 * the agent. */
TEST_IMPL(cli_run_setuid_refused)
{
	if (geteuid() != 0)
		SKIP("needs root, to give files to another user");
	const char *b = build_dir(), *rb = run_build_dir(), *d = test_dir();
	char dir[400], sock[450], path[450], text[500];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	/* Copies of sh, which can tell whether the agent is in it. */
	ASSERT_EQ(sh("cp /bin/sh %s/uid && cp /bin/sh %s/gid && cp /bin/sh %s/root && cp /bin/sh %s/nogx",
		     d, d, d, d), 0);
	snprintf(path, sizeof(path), "%s/uid", d);
	ASSERT(chown(path, 65534, (gid_t)-1) == 0 && chmod(path, 04755) == 0);
	snprintf(path, sizeof(path), "%s/gid", d);
	ASSERT(chown(path, (uid_t)-1, 65534) == 0 && chmod(path, 02755) == 0);
	snprintf(path, sizeof(path), "%s/root", d);
	ASSERT(chmod(path, 04755) == 0);
	/* Set-gid without group execute is no set-gid exec. */
	snprintf(path, sizeof(path), "%s/nogx", d);
	ASSERT(chown(path, (uid_t)-1, 65534) == 0 && chmod(path, 02745) == 0);
	snprintf(path, sizeof(path), "%s/script", d);
	snprintf(text, sizeof(text), "#!%s/uid\n", d);
	write_exec(path, text, 0755, 0);
	snprintf(path, sizeof(path), "%s/suid-script", d);
	write_exec(path, "#!/bin/sh\nwhile read -r l; do case $l in *libmemdedup-preload.so) exit 0;; esac; "
		   "done </proc/$$/maps\nexit 1\n", 04755, 65534);

	/* The premise: ld.so leaves the agent out of the set-uid copy. */
	ASSERT_EQ(sh("LD_PRELOAD=%s/libmemdedup-preload.so %s/uid " AGENT_IN_SH, rb, d), 1);
	int c1 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/uid " AGENT_IN_SH, dir, b, d);
	int alive1 = md__daemon_alive(sock), pid1 = kill_daemon_of(dir);
	char err1[1024];
	snprintf(err1, sizeof(err1), "%s", slurp("err"));
	int c2 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/gid " AGENT_IN_SH, dir, b, d);
	int alive2 = md__daemon_alive(sock), pid2 = kill_daemon_of(dir);
	char err2[1024];
	snprintf(err2, sizeof(err2), "%s", slurp("err"));
	int c3 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/script", dir, b, d);
	int alive3 = md__daemon_alive(sock), pid3 = kill_daemon_of(dir);
	char err3[1024];
	snprintf(err3, sizeof(err3), "%s", slurp("err"));
	/* Not secure: these run, with the agent (no --scan: no daemon). */
	int c4 = sh("%s/memdedup run -- %s/root " AGENT_IN_SH, rb, d);
	int c5 = sh("%s/memdedup run -- %s/nogx " AGENT_IN_SH, rb, d);
	int c6 = sh("%s/memdedup run -- %s/suid-script", rb, d);
	ASSERT_EQ(c1, 126);
	ASSERT_EQ(c2, 126);
	ASSERT_EQ(c3, 126);
	ASSERT(!alive1 && !alive2 && !alive3 && !pid1 && !pid2 && !pid3);
	ASSERT(strstr(err1, "with the agent: it is set-uid to uid 65534: the dynamic loader would ignore "
		       "the memdedup agent; run it without memdedup or drop the bit"));
	/* 65534 is the overflow id too, what an owner without a mapping in
	 * a user namespace shows as (a rootless container maps 65536 ids,
	 * 65534 among them): the refusal says that case. */
	ASSERT(strstr(err1, "(if its owner or group has no mapping in this user namespace, which shows "
		       "as that id too, the kernel ignores the bit"));
	ASSERT(strstr(err2, "it is set-gid to gid 65534"));
	snprintf(text, sizeof(text), "its interpreter %s/uid is set-uid", d);
	ASSERT(strstr(err3, text));
	ASSERT_EQ(c4, 0);
	ASSERT_EQ(c5, 0);
	ASSERT_EQ(c6, 0);
	/* On a nosuid mount (bound here in a mount namespace of its own) the
	 * bits count for nothing: run, with the agent. */
	snprintf(path, sizeof(path), "%s/nosuid", d);
	snprintf(text, sizeof(text), "mount --bind %s %s && mount -o remount,bind,nosuid %s && exec %s/memdedup run -- "
		 "%s/uid " AGENT_IN_SH "\n", d, d, d, rb, d);
	write_exec(path, text, 0755, 0);
	ASSERT_EQ(sh("unshare -m --propagation private %s", path), 0);
	/* memdedup itself with an effective uid other than its real one: every
	 * exec it makes is secure. */
	ASSERT_EQ(sh("setpriv --ruid=65534 %s/memdedup run -- /bin/sh " AGENT_IN_SH, b), 126);
	ASSERT(strstr(slurp("err"), "memdedup runs with an effective user or group id other than its real one"));
	return 0;
}

/* The command is found as execvp finds it: an empty PATH entry is the
 * current directory; a file there that is not executable is the shell's
 * 126 (Permission denied), not 127, if no executable one comes after it;
 * no daemon is started for either that cannot run. */
TEST_IMPL(cli_run_command_found_as_execvp)
{
	const char *b = build_dir(), *rb = run_build_dir(), *d = test_dir();
	char dir[400], sock[450], bin[400], path[450];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	snprintf(bin, sizeof(bin), "%s/bin", d);
	ASSERT(mkdir(bin, 0755) == 0);
	snprintf(path, sizeof(path), "%s/memdedup-test-cmd", bin);
	write_exec(path, "#!/bin/sh\nexit 9\n", 0644, 0);
	int c1 = sh("PATH=%s:$PATH MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- memdedup-test-cmd", bin, dir, b);
	int alive1 = md__daemon_alive(sock), pid1 = kill_daemon_of(dir);
	ASSERT_EQ(c1, 126);
	ASSERT(!alive1 && !pid1);
	ASSERT(strstr(slurp("err"), "cannot run 'memdedup-test-cmd': Permission denied"));
	/* Executable, and found only through the empty entry. */
	ASSERT(chmod(path, 0755) == 0);
	char here[PATH_MAX];
	ASSERT(realpath(rb, here));
	ASSERT_EQ(sh("cd %s && PATH=/nonexistent::/nonexistent %s/memdedup run -- memdedup-test-cmd", bin, here), 9);
	/* One without a #! line, found in PATH: /bin/sh runs the file found,
	 * by its path. */
	snprintf(path, sizeof(path), "%s/memdedup-test-sh", bin);
	write_exec(path, "test \"$0\" = \"$MD_WANT\" && exit 4\nexit 5\n", 0755, 0);
	ASSERT_EQ(sh("MD_WANT=%s PATH=%s:/usr/bin:/bin %s/memdedup run -- memdedup-test-sh", path, bin, here), 4);
	return 0;
}

static int patch_interp(const char *path, const char *interp, char *old, size_t size);

/* The kernel runs five scripts in one exec, each the interpreter of the
 * one before, then the file the fifth names: that file is checked as the
 * others (missing: 127 with no daemon started; set-uid: refused). Four
 * were, and the fifth's interpreter went unseen. */
TEST_IMPL(cli_run_fifth_script_interpreter_checked)
{
	const char *b = build_dir(), *rb = run_build_dir(), *d = test_dir();
	char dir[400], sock[450], path[450], text[500];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	/* Chains of five: x4 -> ... -> x0 -> what x0 names (k0: uid, n0:
	 * noloader). */
	static const char *const first[4] = { "#!/bin/sh\nexit 3\n", "#!/nonexistent/interpreter\n", NULL, NULL };
	const char *name = "omkn";
	for (int k = 0; k < 4; k++, name++) {
		for (int i = 0; i < 5; i++) {
			snprintf(path, sizeof(path), "%s/%c%d", d, *name, i);
			if (i)
				snprintf(text, sizeof(text), "#!%s/%c%d\n", d, *name, i - 1);
			else if (first[k])
				snprintf(text, sizeof(text), "%s", first[k]);
			else
				snprintf(text, sizeof(text), "#!%s/%s\n", d, k == 2 ? "uid" : "noloader");
			write_exec(path, text, 0755, 0);
		}
	}
	/* The premise: this kernel runs a chain of five. */
	if (sh("%s/o4", d) != 3)
		SKIP("this kernel runs fewer than five scripts in one exec");
	ASSERT_EQ(sh("%s/memdedup run -- %s/o4", rb, d), 3);
	int c = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/m4", dir, b, d);
	int alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
	ASSERT_EQ(c, 127);
	ASSERT(!alive && !pid);
	ASSERT(strstr(slurp("err"), "its interpreter (#!) /nonexistent/interpreter is missing"));
	/* The dynamic loader of the ELF file the fifth names. */
	char old[256];
	snprintf(path, sizeof(path), "%s/noloader", d);
	ASSERT_EQ(sh("cp /bin/true %s", path), 0);
	if (patch_interp(path, "/nonexistent/ld.so", old, sizeof(old))) {
		c = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/n4", dir, b, d);
		alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
		ASSERT_EQ(c, 127);
		ASSERT(!alive && !pid);
		ASSERT(strstr(slurp("err"), "its interpreter's dynamic loader /nonexistent/ld.so is missing"));
	}
	if (geteuid() != 0)
		return 0;	/* a set-uid file of another user needs root */
	ASSERT_EQ(sh("cp /bin/sh %s/uid", d), 0);
	snprintf(path, sizeof(path), "%s/uid", d);
	ASSERT(chown(path, 65534, (gid_t)-1) == 0 && chmod(path, 04755) == 0);
	ASSERT_EQ(sh("%s/memdedup run -- %s/k4", rb, d), 126);
	snprintf(text, sizeof(text), "its interpreter %s/uid is set-uid", d);
	ASSERT(strstr(slurp("err"), text));
	return 0;
}

/* sh() in a user namespace of its own whose uid and gid maps are map (its
 * lines written from here, by root outside it, who may map any ranges of
 * ours); SKIP if none can be made here. */
static int sh_in_userns(const char *map, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sh_in_userns(const char *map, const char *fmt, ...)
{
	char cmd[2048], full[2600], path[64], why[200] = "", c;
	int made[2], go[2], err = 0, st;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	snprintf(full, sizeof(full), "(%s) >%s/out 2>%s/err", cmd, test_dir(), test_dir());
	ASSERT(pipe2(made, O_CLOEXEC) == 0 && pipe2(go, O_CLOEXEC) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		/* Runs once its maps are written (nothing read: not made). */
		err = unshare(CLONE_NEWUSER) == 0 ? 0 : errno;
		if (write(made[1], &err, sizeof(err)) != (ssize_t)sizeof(err) || err || read(go[0], &c, 1) != 1)
			_exit(99);
		execl("/bin/sh", "sh", "-c", full, (char *)NULL);
		_exit(127);
	}
	close(made[1]);
	close(go[0]);
	ASSERT(read(made[0], &err, sizeof(err)) == (ssize_t)sizeof(err));
	close(made[0]);
	for (int i = 0; i < 2 && !err && !why[0]; i++) {
		snprintf(path, sizeof(path), "/proc/%d/%s", (int)kid, i ? "gid_map" : "uid_map");
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, map, strlen(map)) != (ssize_t)strlen(map))
			snprintf(why, sizeof(why), "%s cannot be written: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	if (!err && !why[0])
		ASSERT(write(go[1], "g", 1) == 1);
	close(go[1]);
	ASSERT(waitpid(kid, &st, 0) == kid);
	if (err)
		SKIP("no user namespace can be made here: %s", strerror(err));
	if (why[0])
		SKIP("%s", why);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* In a user namespace, the kernel ignores the set-uid and set-gid bits of
 * a file whose owner or group has no mapping there (both bits, if either
 * has none: fs/exec.c bprm_fill_uid), and runs it plainly, with the agent:
 * `run` runs it too, though stat shows the owner as 65534, the overflow
 * id. A file whose owner and group are both mapped is refused there as
 * anywhere. */
TEST_IMPL(cli_run_setuid_unmapped_owner_runs)
{
	if (geteuid() != 0)
		SKIP("needs root, to give files to other users and map them");
	const char *rb = run_build_dir(), *d = test_dir();
	/* Root and uid (gid) 5 mapped to themselves, 1000 not. The third
	 * file's owner is mapped, and its set-uid bit ignored all the same. */
	const char *map = "0 0 1\n5 5 1\n";
	const struct {
		const char *name;
		uid_t uid;
		gid_t gid;
		mode_t mode;
		int secure;
	} f[] = {
		{ "uid", 1000, 0, 04755, 0 },
		{ "gid", 0, 1000, 02755, 0 },
		{ "owner-5-group-unmapped", 5, 1000, 06755, 0 },
		{ "mapped", 5, 0, 04755, 1 },
	};
	char path[450];
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", d, f[i].name);
		ASSERT_EQ(sh("cp /bin/sh %s", path), 0);
		ASSERT(chown(path, f[i].uid, f[i].gid) == 0 && chmod(path, f[i].mode) == 0);
	}
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		/* The premise: whether ld.so leaves the agent out there. */
		ASSERT_EQ(sh_in_userns(map, "LD_PRELOAD=%s/libmemdedup-preload.so %s/%s " AGENT_IN_SH,
				       rb, d, f[i].name), f[i].secure);
		int code = sh_in_userns(map, "%s/memdedup run -- %s/%s " AGENT_IN_SH, rb, d, f[i].name);
		if (code != (f[i].secure ? 126 : 0))
			fprintf(stderr, "%s: %s", f[i].name, slurp("err"));
		ASSERT_EQ(code, f[i].secure ? 126 : 0);
	}
	ASSERT(strstr(slurp("err"), "it is set-uid to uid 5: the dynamic loader would ignore"));
	ASSERT(!strstr(slurp("err"), "no mapping in this user namespace"));	/* 5 is no overflow id */
	/* A range that ends just below the overflow id (5 to 65533): an owner
	 * without a mapping (70000) shows as 65534, which is unmapped too. */
	const char *below = "0 0 1\n5 5 65529\n";
	snprintf(path, sizeof(path), "%s/past-range", d);
	ASSERT_EQ(sh("cp /bin/sh %s", path), 0);
	ASSERT(chown(path, 70000, 0) == 0 && chmod(path, 04755) == 0);
	ASSERT_EQ(sh_in_userns(below, "LD_PRELOAD=%s/libmemdedup-preload.so %s " AGENT_IN_SH, rb, path), 0);
	ASSERT_EQ(sh_in_userns(below, "%s/memdedup run -- %s " AGENT_IN_SH, rb, path), 0);
	return 0;
}

/* What write_exit0 adds to its x86-64 program that exits 0. */
struct exit0_extra {
	uint16_t type;		/* ET_DYN (at address 0), else ET_EXEC or this one at 0x400000 */
	int soname;		/* a PT_DYNAMIC naming a soname, within the loaded segment */
	int soname_unloaded;	/* the loaded segment ending where the soname begins */
	int no_strtab;		/* DT_SONAME the soname's address, with no DT_STRTAB */
	int soname_after_null;	/* DT_SONAME after the DT_NULL that ends the section */
	int strtab_wraps;	/* DT_STRTAB + DT_SONAME wrapping around to the soname */
	int soname_empty;	/* the soname "" */
	size_t dyn_bytes;	/* the PT_DYNAMIC this long, zeroes after the entries */
	unsigned phnum;		/* program headers, PT_NULL after the others */
	size_t interp;		/* a PT_INTERP of this many bytes (a missing path, its NUL last) */
	const char *interp_path;	/* or one naming this path */
	int interp_second_bad;	/* and a second PT_INTERP after it, malformed */
};

/* Writes an x86-64 program that exits 0: one loaded segment (the headers,
 * the code, the dynamic section and string table), and what x adds. */
static void write_exit0(const char *path, const struct exit0_extra *x)
{
	static const unsigned char code[] = { 0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05 };	/* exit(0) */
	struct {
		Elf64_Ehdr h;
		Elf64_Phdr ph[64];
		unsigned char code[sizeof(code)];
		Elf64_Dyn dyn[3];
		char str[16];
	} __attribute__((packed)) f;
	const uint64_t base = x->type == ET_DYN ? 0 : 0x400000, str = offsetof(__typeof__(f), str);
	const uint64_t dyn = offsetof(__typeof__(f), dyn);
	static char interp[8192];
	size_t ilen = x->interp_path ? strlen(x->interp_path) + 1 : x->interp;
	unsigned n = 0;

	ASSERT(ilen <= sizeof(interp) && x->phnum <= 64);
	memset(&f, 0, sizeof(f));
	f.h = (Elf64_Ehdr){ .e_ident = { ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, ELFCLASS64, ELFDATA2LSB, EV_CURRENT },
			    .e_type = x->type ? x->type : ET_EXEC, .e_machine = EM_X86_64,
			    .e_version = EV_CURRENT, .e_entry = base + offsetof(__typeof__(f), code),
			    .e_phoff = sizeof(Elf64_Ehdr), .e_ehsize = sizeof(Elf64_Ehdr),
			    .e_phentsize = sizeof(Elf64_Phdr) };
	/* The soname at 1 in the string table. */
	const uint64_t filesz = x->soname_unloaded ? str + 1 : sizeof(f);
	f.ph[n++] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_flags = PF_R | PF_X, .p_vaddr = base, .p_paddr = base,
				  .p_filesz = filesz, .p_memsz = filesz, .p_align = 0x1000 };
	memcpy(f.code, code, sizeof(code));
	if (x->soname || x->soname_unloaded || x->no_strtab || x->soname_after_null || x->strtab_wraps ||
	    x->soname_empty) {
		const uint64_t strtab = x->strtab_wraps ? UINT64_MAX - 0xfff : base + str;
		f.ph[n++] = (Elf64_Phdr){ .p_type = PT_DYNAMIC, .p_flags = PF_R, .p_offset = dyn,
					  .p_vaddr = base + dyn,
					  .p_filesz = x->dyn_bytes ? x->dyn_bytes : sizeof(f.dyn),
					  .p_memsz = x->dyn_bytes ? x->dyn_bytes : sizeof(f.dyn), .p_align = 8 };
		if (x->no_strtab) {
			f.dyn[0] = (Elf64_Dyn){ .d_tag = DT_SONAME, .d_un.d_val = base + str + 1 };
		} else {
			f.dyn[0] = (Elf64_Dyn){ .d_tag = DT_STRTAB, .d_un.d_ptr = strtab };
			f.dyn[x->soname_after_null ? 2 : 1] = (Elf64_Dyn){
				.d_tag = DT_SONAME, .d_un.d_val = x->soname_empty ? 0 : base + str + 1 - strtab };
		}
		memcpy(f.str, "\0libexit0.so", sizeof("\0libexit0.so"));
	}
	/* The path after the rest: "/nonexistent-memdedup/aaa.../aaa". */
	if (ilen) {
		f.ph[n++] = (Elf64_Phdr){ .p_type = PT_INTERP, .p_flags = PF_R, .p_offset = sizeof(f),
					  .p_filesz = ilen, .p_memsz = ilen, .p_align = 1 };
		if (x->interp_second_bad)
			f.ph[n++] = (Elf64_Phdr){ .p_type = PT_INTERP, .p_flags = PF_R,
						  .p_offset = offsetof(__typeof__(f), code), .p_filesz = 1,
						  .p_memsz = 1, .p_align = 1 };
		if (x->interp_path) {
			memcpy(interp, x->interp_path, ilen);
		} else {
			int k = snprintf(interp, sizeof(interp), "/nonexistent-memdedup/");
			for (size_t i = (size_t)k; i + 1 < ilen; i++)
				interp[i] = i % 200 == 0 ? '/' : 'a';
			interp[ilen - 1] = '\0';
		}
	}
	f.h.e_phnum = (uint16_t)(x->phnum > n ? x->phnum : n);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ASSERT(fd >= 0 && write(fd, &f, sizeof(f)) == (ssize_t)sizeof(f));
	ASSERT(write(fd, interp, ilen) == (ssize_t)ilen);
	ASSERT(!x->dyn_bytes || ftruncate(fd, (off_t)(dyn + x->dyn_bytes)) == 0);
	ASSERT(close(fd) == 0);
}

/* Writes a statically linked x86-64 program that exits 0: one loaded
 * segment, no interpreter. */
static void write_static_exit0(const char *path)
{
	write_exit0(path, &(struct exit0_extra){ .type = ET_EXEC });
}

/* Writes a statically linked i386 program that exits 0. */
static void write_i386_exit0(const char *path)
{
	static const unsigned char code[] = { 0xb8, 1, 0, 0, 0, 0x31, 0xdb, 0xcd, 0x80 };	/* exit(0) */
	struct {
		Elf32_Ehdr h;
		Elf32_Phdr ph;
		unsigned char code[sizeof(code)];
	} __attribute__((packed)) f = {
		.h = { .e_ident = { ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, ELFCLASS32, ELFDATA2LSB, EV_CURRENT },
		       .e_type = ET_EXEC, .e_machine = EM_386, .e_version = EV_CURRENT,
		       .e_entry = 0x8048000 + offsetof(__typeof__(f), code), .e_phoff = sizeof(Elf32_Ehdr),
		       .e_ehsize = sizeof(Elf32_Ehdr), .e_phentsize = sizeof(Elf32_Phdr), .e_phnum = 1 },
		.ph = { .p_type = PT_LOAD, .p_flags = PF_R | PF_X, .p_vaddr = 0x8048000, .p_paddr = 0x8048000,
			.p_filesz = sizeof(f), .p_memsz = sizeof(f), .p_align = 0x1000 },
	};
	memcpy(f.code, code, sizeof(code));
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ASSERT(fd >= 0 && write(fd, &f, sizeof(f)) == (ssize_t)sizeof(f) && close(fd) == 0);
}

/* ld.so preloads nothing into a statically linked program, and cannot load
 * the agent into a 32-bit one: `run` says so (the command would run
 * without it, unseen), for a script whose interpreter is one too, but runs
 * it: unlike secure mode, such a program passes LD_PRELOAD on, and a
 * dynamic VMM it execs (a static init, a wrapper) loads the agent. ld.so
 * run as the program (it has no interpreter either) is not such a one. */
TEST_IMPL(cli_run_static_said)
{
#ifndef __x86_64__
	SKIP("the static program written here is x86-64's");
#endif
	const char *b = build_dir(), *rb = run_build_dir(), *d = test_dir();
	char path[450], text[600], err[4][1024];
	snprintf(path, sizeof(path), "%s/static", d);
	write_static_exit0(path);
	snprintf(path, sizeof(path), "%s/script", d);
	snprintf(text, sizeof(text), "#!%s/static\n", d);
	write_exec(path, text, 0755, 0);
	/* A 32-bit program (it runs where the kernel runs i386 programs). */
	snprintf(path, sizeof(path), "%s/i386", d);
	write_i386_exit0(path);

	/* A big-endian 32-bit one (PowerPC's): its fields read swapped here,
	 * it is left to execve (an emulator may run it). */
	struct {
		Elf32_Ehdr h;
		Elf32_Phdr ph;
	} __attribute__((packed)) be = {
		.h = { .e_ident = { ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, ELFCLASS32, ELFDATA2MSB, EV_CURRENT },
		       .e_type = htobe16(ET_EXEC), .e_machine = htobe16(EM_PPC), .e_version = htobe32(EV_CURRENT),
		       .e_entry = htobe32(0x10000000), .e_phoff = htobe32(sizeof(Elf32_Ehdr)),
		       .e_ehsize = htobe16(sizeof(Elf32_Ehdr)), .e_phentsize = htobe16(sizeof(Elf32_Phdr)),
		       .e_phnum = htobe16(1) },
		.ph = { .p_type = htobe32(PT_LOAD), .p_flags = htobe32(PF_R | PF_X), .p_vaddr = htobe32(0x10000000),
			.p_filesz = htobe32(sizeof(be)), .p_memsz = htobe32(sizeof(be)), .p_align = htobe32(0x1000) },
	};
	snprintf(path, sizeof(path), "%s/ppc", d);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ASSERT(fd >= 0 && write(fd, &be, sizeof(be)) == (ssize_t)sizeof(be) && close(fd) == 0);

	const char *cmd[4] = { "static", "script", "i386", "ppc" };
	int code[4];
	for (int i = 0; i < 4; i++) {
		code[i] = sh("%s/memdedup run -- %s/%s", b, d, cmd[i]);
		snprintf(err[i], sizeof(err[i]), "%s", slurp("err"));
	}
	ASSERT_EQ(code[0], 0);	/* run */
	ASSERT_EQ(code[1], 0);
	ASSERT(strstr(err[0], "note: '") && strstr(err[0], "it is statically linked: the dynamic loader does "
						       "not load the memdedup agent into it, only into a "
						       "dynamic program it runs"));
	snprintf(text, sizeof(text), "its interpreter %s/static is statically linked", d);
	ASSERT(strstr(err[1], text));
	ASSERT(strstr(err[2], "it is a 32-bit or another machine's program"));
	ASSERT(strstr(err[3], "it is a 32-bit or another machine's program") && !strstr(err[3], "malformed"));
	/* A dynamic program a static one runs has the agent (busybox-static,
	 * which the guest kit installs, as the wrapper). */
	if (access("/bin/busybox", X_OK) == 0)
		ASSERT_EQ(sh("%s/memdedup run -- /bin/busybox env /bin/sh " AGENT_IN_SH, rb), 0);
	ASSERT_EQ(sh("%s/memdedup run -- /bin/sh " AGENT_IN_SH, rb), 0);
	ASSERT(!strstr(slurp("err"), "note:"));	/* dynamic: nothing said */
	if (access("/lib64/ld-linux-x86-64.so.2", X_OK) == 0) {
		ASSERT_EQ(sh("%s/memdedup run -- /lib64/ld-linux-x86-64.so.2 /bin/sh " AGENT_IN_SH, rb), 0);
		ASSERT(!strstr(slurp("err"), "note:"));
	}
	return 0;
}

/* A program with no interpreter that has a soname is taken for a shared
 * object run as a program (ld.so: it loads the rest, the agent too), and
 * nothing is said; but only a shared object's soname, one its string
 * table holds, in its loaded segment, before the end of its dynamic
 * section, counts: otherwise, or in an executable (ET_EXEC), it is
 * statically linked, said. */
TEST_IMPL(cli_run_static_soname_must_be_loaded)
{
#ifndef __x86_64__
	SKIP("the programs written here are x86-64's");
#endif
	const char *b = build_dir(), *d = test_dir();
	char path[450];
	static const struct {
		const char *name;
		struct exit0_extra x;
		int said;
	} cases[] = {
		{ "loader", { .type = ET_DYN, .soname = 1 }, 0 },
		{ "exec-soname", { .type = ET_EXEC, .soname = 1 }, 1 },
		{ "soname-unloaded", { .type = ET_DYN, .soname_unloaded = 1 }, 1 },
		{ "no-strtab", { .type = ET_DYN, .no_strtab = 1 }, 1 },
		{ "soname-after-null", { .type = ET_DYN, .soname_after_null = 1 }, 1 },
		{ "strtab-wraps", { .type = ET_DYN, .strtab_wraps = 1 }, 1 },
		/* A dynamic section longer than what is read of it. */
		{ "loader-big-dynamic", { .type = ET_DYN, .soname = 1, .dyn_bytes = 600 * sizeof(Elf64_Dyn) }, 0 },
		/* As many program headers as are read. */
		{ "exec-64-headers", { .type = ET_EXEC, .phnum = 64 }, 1 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", d, cases[i].name);
		write_exit0(path, &cases[i].x);
		ASSERT_EQ(sh("%s", path), 0);	/* the premise: the kernel runs it */
		int code = sh("%s/memdedup run -- %s", b, path);
		const char *said = strstr(slurp("err"), "it is statically linked: the dynamic loader does not load");
		if (code != 0 || !said != !cases[i].said)
			fprintf(stderr, "%s: exit %d: %s\n", cases[i].name, code, slurp("err"));
		ASSERT_EQ(code, 0);
		ASSERT(!said == !cases[i].said);
	}
	return 0;
}

/* 1 if binfmt_misc here has a handler that may run another machine's
 * program (then whether it runs is the handler's business). */
static int binfmt_misc_enabled(void)
{
	char v[16] = "";
	FILE *f = fopen("/proc/sys/fs/binfmt_misc/status", "r");
	int on = f && fgets(v, sizeof(v), f) && strncmp(v, "enabled", 7) == 0;
	if (f)
		fclose(f);
	return on;
}

/* /bin/true's copy at path with the last byte of its PT_INTERP's path set
 * to c: 1, or 0 if it has none. */
static int patch_interp_last(const char *path, char c)
{
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	int fd = open(path, O_RDWR | O_CLOEXEC), found = 0;
	ASSERT(fd >= 0 && pread(fd, &eh, sizeof(eh), 0) == (ssize_t)sizeof(eh));
	for (int i = 0; eh.e_ident[EI_CLASS] == ELFCLASS64 && i < eh.e_phnum && !found; i++) {
		ASSERT(pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize)) ==
		       (ssize_t)sizeof(ph));
		if (ph.p_type == PT_INTERP && ph.p_filesz >= 2) {
			ASSERT(pwrite(fd, &c, 1, (off_t)(ph.p_offset + ph.p_filesz - 1)) == 1);
			found = 1;
		}
	}
	close(fd);
	return found;
}

/* The ELF file at path made another machine's: AArch64's, or x86-64's
 * there. */
static void make_foreign(const char *path)
{
	uint16_t machine;
	int fd = open(path, O_RDWR | O_CLOEXEC);
	ASSERT(fd >= 0 && pread(fd, &machine, 2, offsetof(Elf64_Ehdr, e_machine)) == 2);
	machine = machine == EM_X86_64 ? EM_AARCH64 : EM_X86_64;
	ASSERT(pwrite(fd, &machine, 2, offsetof(Elf64_Ehdr, e_machine)) == 2 && close(fd) == 0);
}

/* A binary the kernel will not run is refused as the shell refuses it,
 * 126 "cannot execute binary file: Exec format error", before anything is
 * started: an ELF file cut short (64-bit or 32-bit: the kernel's compat
 * loader makes the same checks, and this one has none), a 32-bit header
 * alone (no program headers), a program whose PT_INTERP's path does not
 * end in a NUL, a 64-bit program of another machine where binfmt_misc has
 * no handler. execvp gave them to /bin/sh, which read them as commands
 * ("Syntax error", exit 2; "ELF: not found", 127), after memdedupd was
 * started for them; the 32-bit ones, and the NUL, were refused only by
 * the exec, after it too. What the kernel refuses only at the exec (a
 * file with a NUL in its first line) is 126 too; a script without #!
 * still runs with /bin/sh ($0 its path), and a shared object run as a
 * program (ld.so) runs. */
TEST_IMPL(cli_run_exec_format_refused)
{
	const char *b = build_dir(), *rb = run_build_dir(), *d = test_dir();
	char dir[400], sock[450], path[450], want[600];
	static char err[6][1024];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	ASSERT_EQ(sh("cp /bin/true %s/foreign && head -c 200 /bin/true >%s/cut && chmod 755 %s/cut && "
		     "cp /bin/true %s/unterminated && printf '\\177ELF\\001' >%s/elf32-cut && chmod 755 %s/elf32-cut",
		     d, d, d, d, d, d), 0);
	/* /bin/true as another machine's. */
	snprintf(path, sizeof(path), "%s/foreign", d);
	make_foreign(path);
	/* Its dynamic loader's path without its NUL: the kernel refuses it
	 * (ENOEXEC), whatever the path. */
	snprintf(path, sizeof(path), "%s/unterminated", d);
	int unterminated = patch_interp_last(path, 'X');
	/* A 32-bit ELF header alone (no program headers). */
	snprintf(path, sizeof(path), "%s/i386", d);
	Elf32_Ehdr h32 = { .e_ident = { ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, ELFCLASS32, ELFDATA2LSB, EV_CURRENT },
			   .e_type = ET_EXEC, .e_machine = EM_386, .e_version = EV_CURRENT };
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ASSERT(fd >= 0 && write(fd, &h32, sizeof(h32)) == (ssize_t)sizeof(h32) && close(fd) == 0);
	/* With binfmt_misc handlers, an emulator may run another machine's
	 * program: that one is left out. */
	int no_emulator = !binfmt_misc_enabled();
	const char *refused[] = { "cut", "elf32-cut", "i386", "unterminated", "foreign" };
	int code[5] = { 126, 126, 126, 126, 126 }, alive[5] = { 0 }, pid[5] = { 0 };
	for (int i = 0; i < 5; i++) {
		if ((i == 3 && !unterminated) || (i == 4 && !no_emulator))
			continue;
		code[i] = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/%s", dir, b, d, refused[i]);
		alive[i] = md__daemon_alive(sock);
		pid[i] = kill_daemon_of(dir);
		snprintf(err[i], sizeof(err[i]), "%s", slurp("err"));
	}
	/* Refused by the kernel at the exec: a file with a NUL in its first
	 * line. */
	snprintf(path, sizeof(path), "%s/nul", d);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ASSERT(fd >= 0 && write(fd, "echo hi\0there\n", 15) == 15 && close(fd) == 0);
	int cnul = sh("%s/memdedup run -- %s/nul", rb, d);
	snprintf(err[5], sizeof(err[5]), "%s", slurp("err"));
	/* Run: a script without #!, by the shell, with its arguments. */
	snprintf(path, sizeof(path), "%s/script", d);
	write_exec(path, "test \"$0 $1 $2\" = \"$MD_WANT\" && exit 3\nexit 9\n", 0755, 0);
	int cscript = sh("MD_WANT='%s x y' %s/memdedup run -- %s x y", path, rb, path);
	int cld = access("/lib64/ld-linux-x86-64.so.2", X_OK) == 0 ?
		  sh("%s/memdedup run -- /lib64/ld-linux-x86-64.so.2 /bin/true", rb) : 0;

	for (int i = 0; i < 5; i++) {
		if (code[i] != 126 || alive[i] || pid[i])
			fprintf(stderr, "%s: exit %d, daemon %s: %s\n", refused[i], code[i],
				alive[i] || pid[i] ? "started" : "not started", err[i]);
		ASSERT_EQ(code[i], 126);
		ASSERT(!alive[i] && !pid[i]);
	}
	for (int i = 0; i < 4; i++) {
		if (!err[i][0])
			continue;	/* not run */
		snprintf(want, sizeof(want), "memdedup run: cannot run '%s/%s': cannot execute binary file: Exec "
			 "format error (an ELF file cut short or malformed)\n", d, refused[i]);
		ASSERT_EQ(strcmp(err[i], want), 0);
	}
	if (no_emulator) {
		snprintf(want, sizeof(want), "memdedup run: cannot run '%s/foreign': cannot execute binary file: "
			 "Exec format error (a program of another machine, and binfmt_misc has no enabled "
			 "handler to run it)\n", d);
		ASSERT_EQ(strcmp(err[4], want), 0);
	}
	ASSERT_EQ(cnul, 126);
	snprintf(want, sizeof(want), "memdedup run: cannot run '%s/nul': cannot execute binary file: Exec format "
		 "error\n", d);
	ASSERT_EQ(strcmp(err[5], want), 0);
	/* Its second line too, after a "#!" naming nothing (ENOEXEC as well). */
	snprintf(path, sizeof(path), "%s/nul2", d);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ASSERT(fd >= 0 && write(fd, "#!\necho hi\0there\n", 17) == 17 && close(fd) == 0);
	ASSERT_EQ(sh("%s/memdedup run -- %s", rb, path), 126);
	ASSERT(strstr(slurp("err"), "nul2': cannot execute binary file: Exec format error\n"));
	ASSERT_EQ(cscript, 3);
	ASSERT_EQ(cld, 0);
	return 0;
}

/* More ELF files the kernel refuses, refused before anything starts: a
 * 64-bit header cut short before its machine, no program headers, a
 * PT_INTERP of one byte (its NUL alone), an object file, more than 64 KiB
 * of program headers, an interpreter's path cut short. */
TEST_IMPL(cli_run_malformed_elf_headers_refused)
{
	const char *b = build_dir(), *d = test_dir();
	char dir[400], sock[450], path[450], want[600];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	ASSERT_EQ(sh("head -c 17 /bin/true >%s/cut17 && chmod 755 %s/cut17 && cp /bin/true %s/nophdr && "
		     "cp /bin/true %s/interp1", d, d, d, d), 0);
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	snprintf(path, sizeof(path), "%s/nophdr", d);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	ASSERT(fd >= 0 && pread(fd, &eh, sizeof(eh), 0) == (ssize_t)sizeof(eh));
	if (eh.e_ident[EI_CLASS] != ELFCLASS64)
		SKIP("/bin/true is no 64-bit ELF file");
	uint16_t none = 0;
	ASSERT(pwrite(fd, &none, 2, offsetof(Elf64_Ehdr, e_phnum)) == 2 && close(fd) == 0);
	snprintf(path, sizeof(path), "%s/interp1", d);
	fd = open(path, O_RDWR | O_CLOEXEC);
	ASSERT(fd >= 0);
	int found = 0;
	for (int i = 0; i < eh.e_phnum && !found; i++) {
		off_t at = (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize);
		ASSERT(pread(fd, &ph, sizeof(ph), at) == (ssize_t)sizeof(ph));
		if (ph.p_type != PT_INTERP)
			continue;
		found = 1;
		ph.p_filesz = 1;
		ASSERT(pwrite(fd, &ph, sizeof(ph), at) == (ssize_t)sizeof(ph));
		ASSERT(pwrite(fd, "", 1, (off_t)ph.p_offset) == 1);
	}
	close(fd);
	if (!found)
		SKIP("/bin/true has no dynamic loader");
	/* An object file (ET_REL), and program headers past the kernel's
	 * 64 KiB, all there in the file. */
	snprintf(path, sizeof(path), "%s/object", d);
	write_exit0(path, &(struct exit0_extra){ .type = ET_REL });
	snprintf(path, sizeof(path), "%s/phdrs-over-64k", d);
	write_static_exit0(path);
	uint16_t many = 65536 / sizeof(Elf64_Phdr) + 1;
	fd = open(path, O_RDWR | O_CLOEXEC);
	ASSERT(fd >= 0 && pwrite(fd, &many, 2, offsetof(Elf64_Ehdr, e_phnum)) == 2);
	ASSERT(ftruncate(fd, (off_t)(sizeof(Elf64_Ehdr) + many * sizeof(Elf64_Phdr))) == 0 && close(fd) == 0);
	/* Its interpreter's path past the end of the file (it is last). */
	snprintf(path, sizeof(path), "%s/interp-cut", d);
	write_exit0(path, &(struct exit0_extra){ .interp_path = "/lib64/ld-linux-x86-64.so.2" });
	struct stat st;
	ASSERT(stat(path, &st) == 0 && truncate(path, st.st_size - 10) == 0);
	static const char *const files[] = { "cut17", "nophdr", "interp1", "object", "phdrs-over-64k", "interp-cut" };
	for (int i = 0; i < 6; i++) {
		ASSERT_EQ(sh("%s/%s", d, files[i]), 126);	/* the premise: the kernel refuses it */
		int code = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/%s", dir, b, d, files[i]);
		int alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
		snprintf(want, sizeof(want), "memdedup run: cannot run '%s/%s': cannot execute binary file: Exec "
			 "format error (an ELF file cut short or malformed)\n", d, files[i]);
		if (code != 126 || alive || pid || strcmp(slurp("err"), want) != 0)
			fprintf(stderr, "%s: exit %d, daemon %s: %s\n", files[i], code,
				alive || pid ? "started" : "not started", slurp("err"));
		ASSERT_EQ(code, 126);
		ASSERT(!alive && !pid);
		ASSERT_EQ(strcmp(slurp("err"), want), 0);
	}
	return 0;
}

/* File capabilities make an exec secure for a user other than root (root's
 * exec gets all capabilities anyway, and is not secure for them): refused
 * for nobody, run for root. */
TEST_IMPL(cli_run_file_caps_refused)
{
	if (geteuid() != 0)
		SKIP("needs root, to set file capabilities and run as another user");
	const char *b = build_dir(), *rb = run_build_dir(), *d = test_dir();
	char dir[400], sock[450], path[450];
	/* nobody runs the copy in here, and its daemon would live in run/. */
	ASSERT(chmod(d, 0755) == 0);
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0 && chown(dir, 65534, 65534) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	/* The build may be out of reach for nobody: copies (run finds the
	 * library beside itself). */
	ASSERT_EQ(sh("cp /bin/sh %s/caps && cp %s/memdedup %s/libmemdedup-preload.so %s/", d, b, rb, d), 0);
	snprintf(path, sizeof(path), "%s/caps", d);
	/* What `setcap cap_net_raw+ep` writes. */
	struct vfs_cap_data caps = { .magic_etc = htole32(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE) };
	caps.data[0].permitted = htole32(1u << CAP_NET_RAW);
	if (setxattr(path, "security.capability", &caps, XATTR_CAPS_SZ_2, 0) != 0)
		SKIP("no file capabilities in %s: %s", d, strerror(errno));

	ASSERT_EQ(sh_as(65534, "LD_PRELOAD=%s/libmemdedup-preload.so %s/caps " AGENT_IN_SH, d, d), 1);
	int c1 = sh_as(65534, "MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/caps " AGENT_IN_SH, dir, d, d);
	int alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
	char err1[1024];
	snprintf(err1, sizeof(err1), "%s", slurp("err"));
	int c2 = sh("%s/memdedup run -- %s/caps " AGENT_IN_SH, rb, d);
	ASSERT_EQ(c1, 126);
	ASSERT(!alive && !pid);
	ASSERT(strstr(err1, "it has file capabilities: the dynamic loader would ignore the memdedup agent"));
	ASSERT_EQ(c2, 0);
	/* Permitted only (setcap cap_net_raw+p) under no_new_privs (systemd's
	 * NoNewPrivileges=yes): the kernel keeps the permitted set within the
	 * caller's, the exec is not secure, and the agent is loaded. */
	caps.magic_etc = htole32(VFS_CAP_REVISION_2);
	ASSERT_EQ(setxattr(path, "security.capability", &caps, XATTR_CAPS_SZ_2, 0), 0);
	ASSERT_EQ(sh_as(65534, "setpriv --no-new-privs env LD_PRELOAD=%s/libmemdedup-preload.so %s/caps " AGENT_IN_SH,
			d, d), 0);
	ASSERT_EQ(sh_as(65534, "MEMDEDUP_RUN_DIR=%s setpriv --no-new-privs %s/memdedup run -- %s/caps " AGENT_IN_SH,
			dir, d, d), 0);
	/* Without no_new_privs the same file raises nobody's capabilities. */
	ASSERT_EQ(sh_as(65534, "MEMDEDUP_RUN_DIR=%s %s/memdedup run -- %s/caps " AGENT_IN_SH, dir, d, d), 126);
	/* setcap cap_net_raw+ei: nothing raised for nobody (its inheritable
	 * set is empty), but the effective flag makes the exec secure alone;
	 * setcap cap_syslog+p: a capability of the second word. */
	struct vfs_cap_data ei = { .magic_etc = htole32(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE) };
	ei.data[0].inheritable = htole32(1u << CAP_NET_RAW);
	struct vfs_cap_data high = { .magic_etc = htole32(VFS_CAP_REVISION_2) };
	high.data[1].permitted = htole32(1u << (CAP_SYSLOG - 32));
	const struct vfs_cap_data *more[2] = { &ei, &high };
	for (int i = 0; i < 2; i++) {
		ASSERT_EQ(setxattr(path, "security.capability", more[i], XATTR_CAPS_SZ_2, 0), 0);
		ASSERT_EQ(sh_as(65534, "LD_PRELOAD=%s/libmemdedup-preload.so %s/caps " AGENT_IN_SH, d, d), 1);
		ASSERT_EQ(sh_as(65534, "MEMDEDUP_RUN_DIR=%s %s/memdedup run -- %s/caps " AGENT_IN_SH, dir, d, d), 126);
	}
	return 0;
}

/* memdedupd started on demand takes its own settings and where it lives
 * from the caller's environment, not the rest: not the caller's LD_PRELOAD,
 * not the agent's settings for the VMM (the daemon outlives the command and
 * serves every later VM). */
TEST_IMPL(cli_run_daemon_environment)
{
	const char *rb = run_build_dir(), *d = test_dir();
	char dir[400], pidfile[450], path[100], env[8192];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(pidfile, sizeof(pidfile), "%s/memdedupd.pid", dir);
	int code = sh("FOO_MARK=1 LD_PRELOAD=libm.so.6 MEMDEDUP_CONTROL_WAIT_MS=100 MEMDEDUP_RUN_DIR=%s "
		      "%s/memdedup run --scan --pages-to-scan=7 -- true", dir, rb);
	int pid = 0;
	FILE *f = fopen(pidfile, "r");
	if (f) {
		if (fscanf(f, "%d", &pid) != 1)
			pid = 0;
		fclose(f);
	}
	size_t n = 0;
	snprintf(path, sizeof(path), "/proc/%d/environ", pid);
	int fd = pid > 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	if (fd >= 0) {
		ssize_t r = read(fd, env, sizeof(env) - 1);
		n = r > 0 ? (size_t)r : 0;
		close(fd);
	}
	kill_daemon_of(dir);
	ASSERT_EQ(code, 0);
	ASSERT(pid > 0 && n > 0);
	for (size_t i = 0; i < n; i++)
		if (env[i] == '\0')
			env[i] = '\n';
	env[n] = '\0';
	ASSERT(strstr(env, "MEMDEDUP_CONTROL_WAIT_MS=100\n"));
	ASSERT(strstr(env, "MEMDEDUP_RUN_DIR="));
	ASSERT(!strstr(env, "FOO_MARK"));
	ASSERT(!strstr(env, "LD_PRELOAD"));
	ASSERT(!strstr(env, "MEMDEDUP_SCAN"));
	ASSERT(!strstr(env, "MEMDEDUP_PAGES_TO_SCAN"));
	return 0;
}

/* sh() in a child moved into cg first: its exit code (99: not moved). */
static int sh_in_cgroup(struct test_cgroup *cg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sh_in_cgroup(struct test_cgroup *cg, const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0)
		_exit(cgroup_enter(cg, getpid()) != 0 ? 99 : sh("%s", cmd));
	int st;
	ASSERT(waitpid(kid, &st, 0) == kid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* memdedupd started on demand leaves the cgroup of the command that started
 * it (a VM's unit, which would be charged for its pool and stop it with
 * the VM) for the top of each hierarchy; the command stays. */
TEST_IMPL(cli_run_daemon_leaves_cgroup)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg))
		SKIP("no memory cgroup of our own to be had here");
	const char *rb = run_build_dir(), *d = test_dir();
	char dir[400], sock[450], pidfile[450], mine[700], in[4096] = "";
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	snprintf(pidfile, sizeof(pidfile), "%s/memdedupd.pid", dir);
	snprintf(mine, sizeof(mine), "%s\n", strrchr(cg.dir, '/'));	/* "/memdedup-test-N\n" */
	int code = sh_in_cgroup(&cg, "MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- grep -q '%.*s$' /proc/self/cgroup",
				dir, rb, (int)strlen(mine) - 1, mine);
	int alive = md__daemon_alive(sock), daemon = 0;
	FILE *f = fopen(pidfile, "r");
	if (f && fscanf(f, "%d", &daemon) == 1 && daemon > 0) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/cgroup", daemon);
		FILE *c = fopen(path, "r");
		size_t n = c ? fread(in, 1, sizeof(in) - 1, c) : 0;
		in[n] = '\0';
		if (c)
			fclose(c);
	}
	if (f)
		fclose(f);
	int pid = kill_daemon_of(dir);
	ASSERT_EQ(code, 0);	/* the command ran, in the test's cgroup */
	ASSERT(alive && pid > 0 && pid == daemon);
	ASSERT(in[0]);
	ASSERT(!strstr(in, mine));
	ASSERT(!strstr(slurp("err"), "memdedupd"));
	return 0;
}

/* Where memdedupd cannot leave the command's cgroup (here a read-only
 * cgroup file system), `run` says so once, naming the cgroup and why, and
 * the daemon starts anyway. */
TEST_IMPL(cli_run_daemon_kept_in_cgroup_said)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg))
		SKIP("no memory cgroup of our own to be had here");
	const char *rb = run_build_dir(), *d = test_dir();
	char dir[400], sock[450];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	/* Every cgroup mount read-only, in a mount namespace of its own. */
	int code = sh_in_cgroup(&cg, "unshare -m --propagation private sh -c 'for m in $(findmnt -rn -t "
				"cgroup,cgroup2 -o TARGET); do mount -o remount,bind,ro \"$m\" || exit 98; done; "
				"MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- true' || exit $?", dir, rb);
	int alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
	if (code == 98 || (code == 1 && !alive && strstr(slurp("err"), "unshare")))
		SKIP("no mount namespace with read-only cgroup mounts to be had here");
	ASSERT_EQ(code, 0);
	ASSERT(alive && pid > 0);
	const char *err = slurp("err"), *said = "memdedup run: memdedupd stays in this command's cgroup ";
	ASSERT(strstr(err, said));
	ASSERT(strstr(err, "Read-only file system"));
	ASSERT(!strstr(strstr(err, said) + 1, said));	/* once */
	/* Where the only mount of its hierarchy shows no more than this
	 * cgroup (a container's own), there is nothing to leave: nothing
	 * said. Where it has no mount at all, that is said. */
	char own[450], bind[1200] = "";
	snprintf(own, sizeof(own), "%s/own", d);
	ASSERT(mkdir(own, 0700) == 0);
	for (int bound = 1; bound >= 0; bound--) {
		if (bound)
			snprintf(bind, sizeof(bind), "mount --bind %s %s && ", cg.dir, own);
		else
			bind[0] = '\0';
		code = sh_in_cgroup(&cg, "unshare -m --propagation private sh -c '%sfor m in $(findmnt -rn -t "
				    "cgroup,cgroup2 -o TARGET); do case %s in \"$m\"/*) umount -l \"$m\" || exit 98;; "
				    "esac; done; MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- true' || exit $?",
				    bind, cg.dir, dir, rb);
		alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
		ASSERT_EQ(code, 0);
		ASSERT(alive && pid > 0);
		if (bound)
			ASSERT(!strstr(slurp("err"), "memdedupd"));
		else
			ASSERT(strstr(slurp("err"), "(its hierarchy is not mounted)"));
	}
	return 0;
}

/* Output that cannot be written is a failure: `status --json` to a full
 * disk said 0 with half a document written. And --version takes nothing. */
TEST_IMPL(cli_write_error_fails)
{
	const char *b = build_dir();
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s %s/memdedup status --json >/dev/full", test_dir(), b), 1);
	ASSERT(strstr(slurp("err"), "cannot write the output"));
	ASSERT_EQ(sh("%s/memdedup --help >/dev/full", b), 1);
	ASSERT_EQ(sh("%s/memdedup --version >/dev/null", b), 0);
	ASSERT_EQ(sh("%s/memdedup --version x >/dev/null", b), 2);
	return 0;
}

/* memdedupd says its version as memdedup does: it was a usage error. */
TEST_IMPL(cli_daemon_version)
{
	const char *b = build_dir();
	char mine[64];
	ASSERT_EQ(sh("%s/memdedup --version", b), 0);
	ASSERT(strncmp(slurp("out"), "memdedup ", 9) == 0);
	snprintf(mine, sizeof(mine), "memdedupd %s", slurp("out") + 9);
	ASSERT_EQ(sh("%s/memdedupd --version", b), 0);
	ASSERT_EQ(strcmp(slurp("out"), mine), 0);
	/* Alone, as memdedup's: nothing started with it. */
	ASSERT_EQ(sh("%s/memdedupd --version --foreground", b), 2);
	ASSERT_EQ(sh("%s/memdedupd --help", b), 0);
	ASSERT(strstr(slurp("out"), "--version"));
	return 0;
}

/* `run --scan` finds memdedupd in PATH when it is not beside the library
 * or the program, nor in the program's ../sbin (as daemon/memdedupd.service
 * installs it); beside the library first. A copy, not a link: the daemon's /proc/PID/exe says that
 * this one ran, not one found elsewhere (/usr/local/sbin). */
TEST_IMPL(cli_run_finds_daemon_in_path)
{
	const char *b = run_build_dir(), *d = test_dir();
	char dir[400], sock[450], pidfile[450], copy[450], want[PATH_MAX], exe[PATH_MAX] = "", link[64];
	snprintf(dir, sizeof(dir), "%s/run", d);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	snprintf(pidfile, sizeof(pidfile), "%s/memdedupd.pid", dir);
	ASSERT_EQ(sh("mkdir %s/run %s/bin %s/lib %s/pathdir && cp %s/memdedup %s/bin/ && "
		     "cp %s/libmemdedup-preload.so %s/lib/ && cp %s/memdedupd %s/pathdir/",
		     d, d, d, d, b, d, b, d, b, d), 0);
	/* Then one beside the library as well: that one comes first. */
	for (int beside = 0; beside < 2; beside++) {
		snprintf(copy, sizeof(copy), "%s/%s/memdedupd", d, beside ? "lib" : "pathdir");
		if (beside)
			ASSERT_EQ(sh("cp %s/memdedupd %s", b, copy), 0);
		int code = sh("PATH=%s/pathdir:/usr/bin:/bin MEMDEDUP_RUN_DIR=%s "
			      "MEMDEDUP_PRELOAD=%s/lib/libmemdedup-preload.so %s/bin/memdedup run --scan -- true",
			      d, dir, d, d);
		int alive = md__daemon_alive(sock), daemon = 0;
		FILE *f = fopen(pidfile, "r");
		if (f) {
			if (fscanf(f, "%d", &daemon) != 1)
				daemon = 0;
			fclose(f);
		}
		snprintf(link, sizeof(link), "/proc/%d/exe", daemon);
		ssize_t n = daemon > 0 ? readlink(link, exe, sizeof(exe) - 1) : -1;
		exe[n > 0 ? n : 0] = '\0';
		int pid = kill_daemon_of(dir);
		ASSERT_EQ(code, 0);
		ASSERT(alive && pid > 0 && pid == daemon);
		ASSERT(realpath(copy, want) && strcmp(exe, want) == 0);
		ASSERT(!strstr(slurp("err"), "memdedupd"));
	}
	return 0;
}

/* No memdedupd to be found: `run` says what the agent will do, merging in
 * its process for the default domain, and nothing for a named one (its
 * agent waits for the daemon: a named domain is never merged privately). */
TEST_IMPL(cli_run_without_daemon_says_what_happens)
{
	const char *b = run_build_dir(), *d = test_dir();
	if (access("/usr/local/sbin/memdedupd", X_OK) == 0 || access("/usr/bin/memdedupd", X_OK) == 0 ||
	    access("/bin/memdedupd", X_OK) == 0)
		SKIP("a memdedupd is installed where run looks");
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT_EQ(sh("mkdir %s/run %s/bin && cp %s/memdedup %s/libmemdedup-preload.so %s/bin/", d, d, b, b, d), 0);
	ASSERT_EQ(sh("PATH=/usr/bin:/bin MEMDEDUP_RUN_DIR=%s %s/bin/memdedup run --scan -- true", dir, d), 0);
	ASSERT(strstr(slurp("err"), "memdedupd not found"));
	ASSERT(strstr(slurp("err"), "merging stays within the process"));
	ASSERT_EQ(sh("PATH=/usr/bin:/bin MEMDEDUP_RUN_DIR=%s %s/bin/memdedup run --scan --domain=tenant -- true",
		     dir, d), 0);
	ASSERT(strstr(slurp("err"), "the agent merges nothing until one answers"));
	ASSERT(!strstr(slurp("err"), "within the process"));
	/* One that answers is not looked for: nothing to say. */
	struct tdaemon t;
	td_start(&t, 16);
	int code = sh("PATH=/usr/bin:/bin MEMDEDUP_SOCKET=%s %s/bin/memdedup run --scan -- true", t.sock, d);
	td_stop(&t);
	ASSERT_EQ(code, 0);
	ASSERT(!strstr(slurp("err"), "memdedupd"));
	return 0;
}

/* `make install` puts things where `memdedup run` looks: the installed
 * memdedup finds its preload library (lib/memdedup) and memdedupd (sbin). */
TEST_IMPL(cli_install_layout_runs)
{
	const char *b = run_build_dir(), *d = test_dir();
	char dir[400], sock[450];
	snprintf(dir, sizeof(dir), "%s/run", d);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	ASSERT_EQ(sh("make -s install B=%s DESTDIR=%s/inst PREFIX=/opt/md", b, d), 0);
	int code = sh("PATH=/usr/bin:/bin MEMDEDUP_RUN_DIR=%s %s/inst/opt/md/bin/memdedup run --scan -- true", dir, d);
	int alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
	ASSERT_EQ(code, 0);
	ASSERT(alive && pid > 0);
	ASSERT(!strstr(slurp("err"), "memdedupd"));
	ASSERT_EQ(sh("test -f %s/inst/opt/md/include/memdedup.h && test -f %s/inst/opt/md/lib/libmemdedup.so && "
		     "grep -q '^ExecStart=/opt/md/sbin/memdedupd ' %s/inst/opt/md/lib/systemd/system/memdedupd.service",
		     d, d, d), 0);
	/* Every file the installed README links (docs/benchmarks.md,
	 * docs/guest.md, include/memdedup.h) is there beside it, as in the
	 * source tree: only the README and two docs were. And the unit's
	 * Documentation= names a file installed. */
	ASSERT_EQ(sh("cd %s/inst/opt/md/share/doc/memdedup && grep -o '](\\([^)]*\\))' README.md | "
		     "sed 's/^](//; s/)$//; s/#.*//' | grep -v -e '^[a-z]*:' -e '^$' | "
		     "{ n=0; while read -r f; do test -f \"$f\" || { echo \"missing $f\"; exit 1; }; n=$((n+1)); done; "
		     "test $n -ge 3; }", d), 0);
	ASSERT_EQ(sh("f=$(sed -n 's|^Documentation=file:||p' %s/inst/opt/md/lib/systemd/system/memdedupd.service) && "
		     "test -f %s/inst\"$f\"", d, d), 0);
	return 0;
}

/* Options of the scanner without --scan would do nothing: wrong usage. */
TEST_IMPL(cli_run_scan_options_need_scan)
{
	const char *b = run_build_dir();
	/* A run dir of the test's own: should a refusal below fail, the
	 * daemon it starts is found there (and by the runner). */
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/run", test_dir());
	ASSERT(mkdir(dir, 0700) == 0 && setenv("MEMDEDUP_RUN_DIR", dir, 1) == 0);
	static const char *const opts[] = {
		"--pages-to-scan=5", "--sleep-ms=5", "--cpu-percent=5", "--scan-order=random",
		"--hints=off", "--domain=private",
	};
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		ASSERT_EQ(sh("%s/memdedup run %s -- true", b, opts[i]), 2);
		ASSERT(strstr(slurp("err"), "works only with --scan"));
	}
	/* A --scan of the command's own arguments is not memdedup's. */
	ASSERT_EQ(sh("%s/memdedup run --pages-to-scan=5 -- sh -c : --scan", b), 2);
	ASSERT(strstr(slurp("err"), "works only with --scan"));
	ASSERT_EQ(sh("%s/memdedup run --pages-to-scan=5 sh -c : --scan", b), 2);
	ASSERT(strstr(slurp("err"), "works only with --scan"));
	/* A domain's name the agent would refuse. */
	ASSERT_EQ(sh("%s/memdedup run --scan --domain=a/b -- true", b), 2);
	ASSERT(strstr(slurp("err"), "--domain takes a name of 1 to 64 of A-Z a-z 0-9 . _ -, not 'a/b'"));
	/* MEMDEDUP_SCAN read as the agent reads it: "false" is off. */
	ASSERT_EQ(sh("MEMDEDUP_SCAN=false %s/memdedup run --pages-to-scan=5 -- true", b), 2);
	ASSERT(strstr(slurp("err"), "works only with --scan"));
	/* Kernel KSM and the scanner both: refused, whichever comes first. */
	ASSERT_EQ(sh("%s/memdedup run --scan --kernel-ksm=on -- true", b), 2);
	ASSERT(strstr(slurp("err"), "cannot go with --scan"));
	ASSERT_EQ(sh("MEMDEDUP_SCAN=1 %s/memdedup run --kernel-ksm=on -- true", b), 2);
	ASSERT(strstr(slurp("err"), "cannot go with MEMDEDUP_SCAN on in the environment"));
	ASSERT_EQ(sh("%s/memdedup run --scan --domain=private --kernel-ksm=off -- true", b), 0);
	/* The agent's spellings of on and off, passed on as 1 and 0. */
	ASSERT_EQ(sh("%s/memdedup run --scan --kernel-ksm=yes -- true", b), 2);
	ASSERT(strstr(slurp("err"), "cannot go with --scan"));
	ASSERT_EQ(sh("%s/memdedup run --scan --domain=private --kernel-ksm=false --hints=no -- "
		     "sh -c 'test \"$MEMDEDUP_KERNEL_KSM$MEMDEDUP_HINTS\" = 00'", b), 0);
	ASSERT_EQ(sh("%s/memdedup run --scan --domain=private --hints=TRUE -- "
		     "sh -c 'test \"$MEMDEDUP_HINTS\" = 1'", b), 0);
	ASSERT_EQ(sh("%s/memdedup run --scan --hints=maybe -- true", b), 2);
	ASSERT(strstr(slurp("err"), "--hints takes on or off (or 1, yes, true / 0, no, false), not 'maybe'"));
	ASSERT_EQ(sh("%s/memdedup run --scan --domain=private --sleep-ms=5 -- "
		     "sh -c 'test \"$MEMDEDUP_SLEEP_MS\" = 5'", b), 0);
	ASSERT_EQ(sh("MEMDEDUP_SCAN=1 %s/memdedup run --domain=private --sleep-ms=5 -- true", b), 0);
	ASSERT(!kill_daemon_of(dir));	/* refused, or private: none started */
	/* 'private' is one word, in lower case as the agent reads it:
	 * 'Private' is a shared domain, served by memdedupd. */
	ASSERT_EQ(sh("%s/memdedup run --scan --domain=Private -- true", b), 0);
	ASSERT(kill_daemon_of(dir) > 0);
	return 0;
}

/* The scan order is taken in any case by `run --scan-order` and `set
 * order=`, as MEMDEDUP_SCAN_ORDER is (both refused 'Random'), and passed on
 * in lower case, as memdedupd and the agents read it. An option of the
 * scanner without --scan is refused for that first: its value was blamed
 * ('Random'), and once right, the missing --scan. A sleep of 0 can only be
 * set live, and an unset one is memdedupd's: run's help says so. */
TEST_IMPL(cli_scan_order_any_case)
{
	const char *b = run_build_dir();
	struct tdaemon t;
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/run", test_dir());
	ASSERT(mkdir(dir, 0700) == 0 && setenv("MEMDEDUP_RUN_DIR", dir, 1) == 0);
	ASSERT_EQ(sh("%s/memdedup run --scan-order=Random -- true", b), 2);
	ASSERT(strstr(slurp("err"), "--scan-order works only with --scan"));
	ASSERT_EQ(sh("%s/memdedup run --scan-order=up -- true", b), 2);
	ASSERT(strstr(slurp("err"), "works only with --scan"));
	ASSERT_EQ(sh("%s/memdedup run --sleep-ms=0 -- true", b), 2);
	ASSERT(strstr(slurp("err"), "--sleep-ms works only with --scan"));
	ASSERT_EQ(sh("%s/memdedup run --domain=private --scan -- true", b), 0);
	ASSERT_EQ(sh("%s/memdedup run --scan --domain=private --scan-order=RANDOM -- "
		     "sh -c 'test \"$MEMDEDUP_SCAN_ORDER\" = random'", b), 0);
	ASSERT_EQ(sh("%s/memdedup run --scan --domain=private --scan-order=Linear -- "
		     "sh -c 'test \"$MEMDEDUP_SCAN_ORDER\" = linear'", b), 0);
	ASSERT_EQ(sh("%s/memdedup run --scan --scan-order=up -- true", b), 2);
	ASSERT(strstr(slurp("err"), "--scan-order takes one of linear|random (any case), not 'up'"));
	ASSERT_EQ(sh("%s/memdedup run --scan --scan-order=linearly -- true", b), 2);
	ASSERT(strstr(slurp("err"), "--scan-order takes one of linear|random (any case), not 'linearly'"));
	ASSERT(!kill_daemon_of(dir));	/* refused, or private: none started */
	ASSERT_EQ(sh("%s/memdedup run --help", b), 0);
	ASSERT(strstr(slurp("out"), "0, a 1 ms yield,\n                          only live: memdedup set sleep_millisecs=0"));
	/* Unset, the sleep is memdedupd's (its welcome), as the batch and the
	 * CPU cap are: the help said "default 20". */
	ASSERT(strstr(slurp("out"), "--sleep-ms=N            sleep between batches, 1..10000 ms, for this VMM\n"
				    "                          alone (default: memdedupd's, 20;"));
	td_start(&t, 16);
	const char *const orders[][2] = { { "Random", "random" }, { "LINEAR", "linear" }, { "rAnDoM", "random" } };
	for (int i = 0; i < 3; i++) {
		ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set order=%s", t.sock, build_dir(), orders[i][0]), 0);
		json_t *js = td_status(&t);
		json_t *tun = json_object_get(json_object_get(js, "daemon"), "tunables");
		ASSERT(json_string_value(json_object_get(tun, "order")));
		ASSERT_EQ(strcmp(json_string_value(json_object_get(tun, "order")), orders[i][1]), 0);
		json_decref(js);
	}
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set order=Up", t.sock, build_dir()), 2);
	ASSERT(strstr(slurp("err"), "order must be 'linear' or 'random', not 'Up'"));
	td_stop(&t);
	return 0;
}

/* `status --agents --json` on test_dir()/rd; returns its exit code. */
static int status_json(void)
{
	return sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s/none timeout 10 %s/memdedup status --agents --json",
		  test_dir(), test_dir(), build_dir());
}

static void make_rd(char *path, size_t size, const char *name)
{
	snprintf(path, size, "%s/rd", test_dir());
	mkdir(path, 0700);
	snprintf(path, size, "%s/rd/%s", test_dir(), name);
}

/* A child standing in for an agent: its statistics file in test_dir()/rd,
 * as write_stats(command, ctr) makes it for it, held as an agent's until
 * stop's write end closes. Its pid. */
static pid_t agent_stand_in(int stop[2], const char *command, uint64_t ctr)
{
	int ready[2];
	char x = 0;
	ASSERT(pipe(ready) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		char path[512], name[64];
		close(stop[1]);
		close(ready[0]);
		snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
		make_rd(path, sizeof(path), name);
		write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), command, ctr);
		if (write(ready[1], &x, 1) != 1)
			_exit(100);
		while (read(stop[0], &x, 1) > 0)
			;
		_exit(0);
	}
	close(ready[1]);
	ASSERT(read(ready[0], &x, 1) == 1);
	close(ready[0]);
	return kid;
}

/* A kernel KSM counter this kernel does not have (general_profit came in
 * Linux 6.4) is shown as n/a (null in JSON), not as a number. Seen in a
 * mount namespace of its own, where a tmpfs over /sys/kernel/mm/ksm holds
 * only `run`: the host's mounts are not touched. */
TEST_IMPL(cli_status_ksm_counter_missing)
{
	const char *b = build_dir();
	if (sh("unshare -m true") != 0)
		SKIP("cannot make a mount namespace here (unshare -m)");
	const char *fake = "mount -t tmpfs none /sys/kernel/mm/ksm && echo 1 >/sys/kernel/mm/ksm/run";
	ASSERT_EQ(sh("unshare -m sh -c '%s && MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s/none "
		     "%s/memdedup status --agents --json'", fake, test_dir(), test_dir(), b), 0);
	const char *out = slurp("out");
	ASSERT(strstr(out, "\"general_profit\": null"));
	ASSERT(strstr(out, "\"pages_sharing\": null"));
	ASSERT(strstr(out, "\"run\": 1"));
	ASSERT_EQ(sh("unshare -m sh -c '%s && MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s/none "
		     "%s/memdedup status --agents'", fake, test_dir(), test_dir(), b), 0);
	out = slurp("out");
	ASSERT(strstr(out, " run=1 "));
	ASSERT(strstr(out, " general_profit=n/a"));
	ASSERT(!strstr(out, "=-1"));
	return 0;
}

/* A file whose pid is gone is dropped, also when its start time is 0 (no
 * process has that start time: it is what "no such process" reads as);
 * so is one a `status` that died moved away to remove. */
TEST_IMPL(cli_status_dead_agent_gone)
{
	char path[512], name[64], want[64], left[512];
	pid_t dead = dead_pid();
	snprintf(name, sizeof(name), "agent-%d.stats", (int)dead);
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)dead, 0, "ghost", 1);
	snprintf(name, sizeof(name), ".removing-%d", (int)dead);
	make_rd(left, sizeof(left), name);
	write_stats(left, (uint32_t)dead, 0, "ghost", 1);
	ASSERT_EQ(status_json(), 0);
	snprintf(want, sizeof(want), "\"pid\": %d", (int)dead);
	ASSERT(!strstr(slurp("out"), want));
	ASSERT(access(path, F_OK) != 0);	/* stale: removed */
	ASSERT(access(left, F_OK) != 0);
	return 0;
}

/* The control commands read the run directory to name the agents they
 * cannot reach, and leave its files as they are: a stale one is status's
 * to remove (md__agents_load without a command's name). */
TEST_IMPL(cli_control_leaves_stale_files)
{
	char path[512], name[64], left[512];
	pid_t dead = dead_pid();
	snprintf(name, sizeof(name), "agent-%d.stats", (int)dead);
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)dead, 0, "ghost", 1);
	/* Nor what a `status` that died left moving one away. */
	snprintf(name, sizeof(name), ".removing-%d", (int)dead);
	make_rd(left, sizeof(left), name);
	write_stats(left, (uint32_t)dead, 0, "ghost", 1);
	static const char *const cmds[] = { "pause", "resume", "unmerge", "set pages_to_scan=5" };
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s/none %s/memdedup %s", test_dir(), test_dir(),
			     build_dir(), cmds[i]), 1);
		ASSERT(access(path, F_OK) == 0);
		ASSERT(access(left, F_OK) == 0);
	}
	ASSERT_EQ(status_json(), 0);
	ASSERT(access(path, F_OK) != 0);	/* status removes them */
	ASSERT(access(left, F_OK) != 0);
	return 0;
}

/* A file that names a live process which started after its agent (its pid
 * reused), with no agent holding its lock, is stale: removed. */
TEST_IMPL(cli_status_reused_pid_gone)
{
	char path[512], name[64];
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()) - 1, "reused", 1);
	ASSERT_EQ(status_json(), 0);
	ASSERT(!strstr(slurp("out"), "reused"));
	ASSERT(access(path, F_OK) != 0);
	return 0;
}

/* A file naming a live process that started when its agent did, with no
 * lock held and not mapped by that process: its agent exec'd a program
 * without one (pid and start time outlive an exec). Stale: removed. */
TEST_IMPL(cli_status_exec_agent_gone)
{
	char path[512], name[64];
	uint64_t start = md__proc_start_time(getpid());
	ASSERT(start != 0);
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)getpid(), start - 1, "execd", 1);	/* neither locked nor mapped */
	int fd = open(path, O_WRONLY);
	ASSERT(fd >= 0);
	ASSERT(pwrite(fd, &start, sizeof(start), offsetof(struct md__stats_file, start_time)) ==
	       (ssize_t)sizeof(start));
	close(fd);
	ASSERT_EQ(status_json(), 0);
	ASSERT(!strstr(slurp("out"), "execd"));
	ASSERT(access(path, F_OK) != 0);
	return 0;
}

/* A file whose lock is held lives, whatever its pid says (gone, here): not
 * removed, nor listed by the holder's pid, as the holder did not start when
 * the file's agent did (an agent taking the file over, its header not yet
 * written). Let go, it is stale. */
TEST_IMPL(cli_status_locked_file_kept)
{
	char path[512], name[64];
	pid_t dead = dead_pid();
	snprintf(name, sizeof(name), "agent-%d.stats", (int)dead);
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)dead, md__proc_start_time(getpid()) - 1, "held", 1);
	int fd = open(path, O_RDWR);
	struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	ASSERT(fd >= 0 && fcntl(fd, F_SETLK, &l) == 0);
	ASSERT_EQ(status_json(), 0);
	ASSERT(!strstr(slurp("out"), "held"));
	ASSERT_EQ(access(path, F_OK), 0);
	close(fd);
	ASSERT_EQ(status_json(), 0);
	ASSERT(access(path, F_OK) != 0);
	return 0;
}

/* The snapshot of the statistics file at path. */
static void stats_at(const char *path, struct md__stats_snapshot *s)
{
	struct md__stats_file f;
	int fd = open(path, O_RDONLY);
	ASSERT(fd >= 0);
	ssize_t n = read(fd, &f, sizeof(f));
	close(fd);
	ASSERT(n > 0 && md__stats_parse(&f, (size_t)n, s) == 0);
}

/* The agent of `status --json`'s output whose pid is pid, NULL if none. */
static json_t *listed(json_t *st, pid_t pid)
{
	return td_find(json_object_get(st, "agents"), "pid", pid);
}

static json_t *status_of(const char *dir)
{
	json_error_t je;
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s/none %s/memdedup status --agents --json", dir,
		     test_dir(), build_dir()), 0);
	json_t *st = json_loads(slurp("out"), 0, &je);
	ASSERT(st);
	return st;
}

/* A containerised VMM's agent is pid 1 of its pid namespace, and its file
 * says so: here pid 1 is init, which did not start with it. Its lock tells
 * status it lives: it is listed by its pid here (and its own), its file
 * stays and its counters keep coming to it. Once it exits, the file goes. */
TEST_IMPL(cli_status_other_pid_ns)
{
	if (sh("unshare --pid --fork --mount-proc true") != 0)
		SKIP("cannot make a pid namespace here (unshare --pid)");
	struct proc a;
	struct md__stats_snapshot s;
	struct stat before, after;
	char path[512], want[128];
	proc_start_pid_ns(&a, NULL);
	proc_cmd(&a, "map 16");
	snprintf(path, sizeof(path), "%s/agent-1.stats", test_dir());
	ASSERT_EQ(stat(path, &before), 0);
	json_t *st = status_of(test_dir());
	ASSERT_EQ(stat(path, &after), 0);
	ASSERT(after.st_ino == before.st_ino);
	json_t *o = listed(st, a.pid);
	ASSERT(o);
	ASSERT_EQ(json_integer_value(json_object_get(o, "ns_pid")), 1);
	ASSERT_EQ(json_integer_value(json_object_get(o, "registered_bytes")), 16 * 4096);
	json_decref(st);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s/none %s/memdedup status --agents", test_dir(),
		     test_dir(), build_dir()), 0);
	snprintf(want, sizeof(want), "pid %d: in a pid namespace of its own, where it is pid 1", (int)a.pid);
	ASSERT(strstr(slurp("out"), want));
	proc_cmd(&a, "map 8");
	stats_at(path, &s);
	ASSERT_EQ(s.stats.registered_bytes, 24 * 4096);
	proc_stop(&a);
	json_decref(status_of(test_dir()));
	ASSERT(access(path, F_OK) != 0);
	return 0;
}

/* An agent in a time namespace of its own (a container's, a CRIU
 * restore's) is listed, and its file kept: /proc shows a process's start
 * time shifted by the reader's boottime offset, so the agent's own record
 * and the CLI's reading differed, and the agent was never listed (or its
 * file, unlocked, taken for a dead process's). */
TEST_IMPL(cli_status_agent_in_time_ns)
{
	if (access("/proc/self/timens_offsets", F_OK) != 0)
		SKIP("no time namespaces in this kernel (CONFIG_TIME_NS)");
	/* Whole seconds, and just under a tick at 100 Hz more (CRIU restores
	 * offsets to the nanosecond): the agent's corrected start time may
	 * then be a tick off the CLI's reading, taken as the same. */
	static const char *const offsets[] = { "boottime 100000 0\n", "boottime 100000 9999999\n" };
	for (size_t k = 0; k < sizeof(offsets) / sizeof(offsets[0]); k++) {
		struct proc a;
		char path[512];
		proc_timens_offsets = offsets[k];
		proc_start_time_ns(&a, NULL);
		proc_cmd(&a, "map 16");
		snprintf(path, sizeof(path), "%s/agent-%d.stats", test_dir(), (int)a.pid);
		ASSERT_EQ(access(path, F_OK), 0);
		json_t *st = status_of(test_dir());
		json_t *o = listed(st, a.pid);
		ASSERT(o);
		ASSERT_EQ(json_integer_value(json_object_get(o, "registered_bytes")), 16 * 4096);
		json_decref(st);
		ASSERT_EQ(access(path, F_OK), 0);
		proc_stop(&a);
		json_decref(status_of(test_dir()));
		ASSERT(access(path, F_OK) != 0);	/* gone with it */
	}
	return 0;
}

/* Two containerised agents of one pid (1) in one run directory: the second
 * does not take the first's file (cutting short the file the first has
 * mapped), but the next name; status lists both, each with its counters. */
TEST_IMPL(cli_status_same_pid_two_ns)
{
	if (sh("unshare --pid --fork --mount-proc true") != 0)
		SKIP("cannot make a pid namespace here (unshare --pid)");
	struct proc a, b;
	struct md__stats_snapshot s;
	char path[512], path2[512];
	proc_start_pid_ns(&a, NULL);
	proc_cmd(&a, "map 16");
	proc_start_pid_ns(&b, NULL);
	proc_cmd(&b, "map 8");
	snprintf(path, sizeof(path), "%s/agent-1.stats", test_dir());
	snprintf(path2, sizeof(path2), "%s/agent-1.2.stats", test_dir());
	stats_at(path, &s);
	ASSERT_EQ(s.stats.registered_bytes, 16 * 4096);
	stats_at(path2, &s);
	ASSERT_EQ(s.stats.registered_bytes, 8 * 4096);
	json_t *st = status_of(test_dir());
	ASSERT_EQ(json_array_size(json_object_get(st, "agents")), 2);
	ASSERT(listed(st, a.pid) && listed(st, b.pid));
	ASSERT_EQ(json_integer_value(json_object_get(listed(st, b.pid), "registered_bytes")), 8 * 4096);
	json_decref(st);
	proc_stop(&a);
	proc_stop(&b);
	json_decref(status_of(test_dir()));
	ASSERT(access(path, F_OK) != 0 && access(path2, F_OK) != 0);
	return 0;
}

/* The lock is the agent process's, not its file description's: a child
 * forked after the agent began (which runs without it) and outliving the
 * VMM does not keep the VMM's file alive. */
TEST_IMPL(cli_status_forked_child_not_agent)
{
	char rd[512], path[600];
	int p[2];
	make_rd(rd, sizeof(rd), "");
	ASSERT(pipe(p) == 0);
	pid_t vmm = fork();
	ASSERT(vmm >= 0);
	if (vmm == 0) {
		md_agent *ag;
		md_agent_options o = { .run_dir = rd };
		if (md_agent_new(&ag, &o) != 0)
			_exit(1);
		pid_t kid = fork();
		if (kid == 0) {
			char c;
			close(p[1]);
			while (read(p[0], &c, 1) > 0)
				;	/* until the test ends */
			_exit(0);
		}
		_exit(kid > 0 ? 0 : 1);	/* as the preload library's agent: never freed */
	}
	close(p[0]);
	int status;
	ASSERT_EQ(waitpid(vmm, &status, 0), vmm);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	snprintf(path, sizeof(path), "%sagent-%d.stats", rd, (int)vmm);
	ASSERT_EQ(access(path, F_OK), 0);
	ASSERT_EQ(status_json(), 0);
	ASSERT(access(path, F_OK) != 0);
	close(p[1]);
	return 0;
}

/* An agent's statistics file (its command line, its counters) is for its
 * own user and root, as memdedupd's status is: another user can neither
 * read it nor is told about it by `memdedup status`. */
TEST_IMPL(cli_status_files_private)
{
	struct proc a;
	proc_start(&a, NULL);
	proc_cmd(&a, "map 16");
	char path[512];
	snprintf(path, sizeof(path), "%s/agent-%d.stats", test_dir(), (int)a.pid);
	struct stat st;
	ASSERT_EQ(stat(path, &st), 0);
	ASSERT_EQ(st.st_mode & 077, 0);
	ASSERT_EQ(chmod(test_dir(), 0755), 0);	/* the way in, for nobody */
	ASSERT_EQ(sh("cp %s/memdedup %s/", run_build_dir(), test_dir()), 0);
	/* The build may be out of reach: the copy. */
	int code = sh_as(65534, "if cat %s >/dev/null 2>&1; then exit 101; fi; MEMDEDUP_RUN_DIR=%s %s/memdedup status",
			 path, test_dir(), test_dir());
	chmod(test_dir(), 0700);
	ASSERT_EQ(code, 0);
	ASSERT(!strstr(slurp("err"), "ignoring"));
	char mine[32];
	snprintf(mine, sizeof(mine), "%d", (int)a.pid);
	ASSERT(!strstr(slurp("out"), mine));
	proc_stop(&a);
	return 0;
}

/* Only agent-PID.stats and agent-PID.K.stats (K from 2) with PID
 * 1..INT_MAX are agents' files: others (also a name that only begins
 * like one, or a PID past INT_MAX) are neither listed nor removed. */
TEST_IMPL(cli_status_pid_names)
{
	char path[512], name[64], odd[4][512], big[512], top[512];
	pid_t dead = dead_pid();
	make_rd(path, sizeof(path), "agent--5.stats");
	write_stats(path, (uint32_t)-5, 0, "minus", 1);
	const char *const ends[4] = { ".1.stats", ".02.stats", "..stats", ".stats.old" };
	for (int i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "agent-%d%s", (int)dead, ends[i]);
		make_rd(odd[i], sizeof(odd[i]), name);
		write_stats(odd[i], (uint32_t)dead, 0, "odd", 1);
	}
	make_rd(big, sizeof(big), "agent-2147483648.stats");
	write_stats(big, (uint32_t)INT_MAX + 1, 0, "big", 1);
	snprintf(name, sizeof(name), "agent-%d.3.stats", (int)dead);
	char third[512];
	make_rd(third, sizeof(third), name);
	write_stats(third, (uint32_t)dead, 0, "third", 1);
	/* The largest pid named (no process has it): an agent's, stale. */
	make_rd(top, sizeof(top), "agent-2147483647.stats");
	write_stats(top, INT_MAX, 0, "top", 1);
	ASSERT_EQ(status_json(), 0);
	ASSERT(!strstr(slurp("out"), "4294967291"));
	ASSERT(access(path, F_OK) == 0);
	for (int i = 0; i < 4; i++)
		ASSERT(access(odd[i], F_OK) == 0);
	ASSERT(access(big, F_OK) == 0);
	ASSERT(access(third, F_OK) != 0);	/* an agent's, stale */
	ASSERT(access(top, F_OK) != 0);
	return 0;
}

/* A FIFO (or a symbolic link) by an agent's name is not read: no hang. */
TEST_IMPL(cli_status_fifo_no_hang)
{
	char path[512], name[64], target[512], want[64];
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	ASSERT(mkfifo(path, 0600) == 0);
	ASSERT_EQ(status_json(), 0);	/* 124: timeout killed it */
	ASSERT(strstr(slurp("err"), "not a regular file"));
	/* A link to a valid file of ours. */
	ASSERT(unlink(path) == 0);
	snprintf(target, sizeof(target), "%s/elsewhere", test_dir());
	write_stats(target, (uint32_t)getpid(), md__proc_start_time(getpid()), "linked", 1);
	ASSERT(symlink(target, path) == 0);
	ASSERT_EQ(status_json(), 0);
	snprintf(want, sizeof(want), "\"pid\": %d", (int)getpid());
	ASSERT(!strstr(slurp("out"), want));
	ASSERT(strstr(slurp("err"), ": a symbolic link\n"));	/* not ELOOP's strerror */
	return 0;
}

/* A file an agent is still making (empty, then zeroes, then its header)
 * is not called malformed: 2 of 300 `status` runs warned while 40 agents
 * started. Empty (held or not) and zeroes held: quiet; zeroes not held
 * (a dead agent's) and garbage, held (another version's agent, a corrupt
 * file) or not, warn. */
TEST_IMPL(cli_status_starting_file_quiet)
{
	static const struct { const char *end; int fill, held, warns; } files[] = {
		{ ".stats", -1, 1, 0 }, { ".2.stats", 0, 0, 1 }, { ".3.stats", 'x', 1, 1 }, { ".4.stats", 'x', 0, 1 },
		{ ".5.stats", 0, 1, 0 }, { ".6.stats", -1, 0, 0 },
	};
	char path[512], name[64];
	struct md__stats_file f;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(name, sizeof(name), "agent-%d%s", (int)getpid(), files[i].end);
		make_rd(path, sizeof(path), name);
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		ASSERT(fd >= 0);
		memset(&f, files[i].fill, sizeof(f));
		if (files[i].fill >= 0)
			ASSERT(write(fd, &f, sizeof(f)) == (ssize_t)sizeof(f));
		struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
		if (files[i].held)
			ASSERT(fcntl(fd, F_SETLK, &l) == 0);	/* kept till the test ends */
		else
			close(fd);
	}
	ASSERT_EQ(status_json(), 0);
	const char *err = slurp("err");
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(name, sizeof(name), "agent-%d%s\n", (int)getpid(), files[i].end);
		if (!!strstr(err, name) != files[i].warns)
			fprintf(stderr, "status said: %s\n", err);
		ASSERT_EQ(!!strstr(err, name), files[i].warns);
	}
	ASSERT(strstr(err, "ignoring malformed"));
	return 0;
}

/* The command as printable text (terminal and JSON), counters never
 * negative. */
TEST_IMPL(cli_status_sanitized)
{
	char path[512], name[64], want[64];
	const char *b = build_dir();
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	uint64_t start = md__proc_start_time(getpid());
	write_stats(path, (uint32_t)getpid(), start, "vm\033]0;pwned\007\302\233x", (1ull << 63) + 5);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd %s/memdedup status --agents", test_dir(), b), 0);
	const char *out = slurp("out");
	ASSERT(!strchr(out, '\033') && !strchr(out, '\007') && !strstr(out, "\302\233"));
	ASSERT(strstr(out, "vm?]0;pwned??x"));
	snprintf(want, sizeof(want), " %llu ", (unsigned long long)stats_value((1ull << 63) + 5, MD_CTR_SHARED_NOW));
	ASSERT(strstr(out, want));	/* the table: unsigned */
	write_stats(path, (uint32_t)getpid(), start, "q\377emu", (1ull << 63) + 5);
	ASSERT_EQ(status_json(), 0);
	out = slurp("out");
	snprintf(want, sizeof(want), "\"pid\": %d", (int)getpid());
	ASSERT(strstr(out, want));
	ASSERT(strstr(out, "\"command\": \"q?emu\""));
	ASSERT(strstr(out, "\"pages_shared\": 9223372036854775807"));
	ASSERT(!strstr(out, ": -"));
	return 0;
}

/* An agent writes its file into a run directory of up to PATH_MAX bytes:
 * `status` reads from one as long (it refused past 255 bytes). */
TEST_IMPL(cli_status_long_run_dir)
{
	char dir[1024], path[1100], want[64];
	int n = snprintf(dir, sizeof(dir), "%s/rd", test_dir());
	mkdir(dir, 0700);
	while (n < 300) {	/* one more component of 40 bytes */
		n += snprintf(dir + n, sizeof(dir) - (size_t)n, "/%s", "d123456789012345678901234567890123456789");
		ASSERT(mkdir(dir, 0700) == 0);
	}
	snprintf(path, sizeof(path), "%s/agent-%d.stats", dir, (int)getpid());
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "vmm", 3);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s/none %s/memdedup status --agents --json", dir,
		     test_dir(), build_dir()), 0);
	snprintf(want, sizeof(want), "\"pid\": %d", (int)getpid());
	ASSERT(strstr(slurp("out"), want));
	return 0;
}

/* The totals add counts, but a setting is not a count: two agents at hint
 * ratio 4 make a total ratio of 4, not 8 (out of its range). */
TEST_IMPL(cli_status_totals_keep_settings)
{
	char path[512], name[64];
	int stop[2];
	ASSERT(pipe(stop) == 0);
	pid_t pids[2] = { getpid(), 0 };
	pids[1] = agent_stand_in(stop, "vmm", 4);
	for (int i = 0; i < 2; i++) {
		snprintf(name, sizeof(name), "agent-%d.stats", (int)pids[i]);
		make_rd(path, sizeof(path), name);
		if (i == 0)
			write_stats(path, (uint32_t)pids[i], md__proc_start_time(pids[i]), "vmm", 4);
		set_counter(path, MD_CTR_HINT_RATIO, 4);
	}
	ASSERT_EQ(status_json(), 0);
	close(stop[1]);
	ASSERT_EQ(waitpid(pids[1], NULL, 0), pids[1]);
	close(stop[0]);
	json_error_t je;
	json_t *st = json_loads(slurp("out"), 0, &je);
	ASSERT(st);
	json_t *sc = json_object_get(json_object_get(st, "totals"), "scanner");
	ASSERT(sc);
	ASSERT_EQ(json_integer_value(json_object_get(sc, "hint_ratio")), 4);
	ASSERT_EQ(json_integer_value(json_object_get(sc, "merged")), 2 * stats_value(4, MD_CTR_MERGED));	/* added */
	json_decref(st);
	return 0;
}

/* More agents than status first makes room for (8) are all listed, each
 * with its own command, and counted in the totals. */
TEST_IMPL(cli_status_lists_every_agent)
{
	enum { N = 20 };
	char command[N][16];
	pid_t kids[N];
	int stop[2];
	ASSERT(pipe(stop) == 0);
	for (int i = 0; i < N; i++) {
		snprintf(command[i], sizeof(command[i]), "vmm-%d", i);
		kids[i] = agent_stand_in(stop, command[i], 1);
	}
	int code = status_json();
	close(stop[1]);
	for (int i = 0; i < N; i++)
		ASSERT_EQ(waitpid(kids[i], NULL, 0), kids[i]);
	close(stop[0]);
	ASSERT_EQ(code, 0);
	json_error_t je;
	json_t *st = json_loads(slurp("out"), 0, &je);
	ASSERT(st);
	ASSERT_EQ(json_array_size(json_object_get(st, "agents")), N);
	for (int i = 0; i < N; i++) {
		json_t *a = listed(st, kids[i]);
		ASSERT(a);
		ASSERT_EQ(strcmp(json_string_value(json_object_get(a, "command")), command[i]), 0);
	}
	ASSERT_EQ(json_integer_value(json_object_get(json_object_get(st, "totals"), "regions")),
		  N * stats_value(1, MD_CTR_REGIONS));
	json_decref(st);
	return 0;
}

/* An agent whose sharing stopped for good (I/O it cannot follow) is
 * pointed out under the table, and in the JSON; one merging is not. */
TEST_IMPL(cli_status_io_unseen)
{
	char path[512], name[64], want[64];
	const char *b = build_dir();
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "vmm", 0);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd %s/memdedup status --agents", test_dir(), b), 0);
	ASSERT(!strstr(slurp("out"), "sharing stopped"));
	uint64_t one = 1;
	int fd = open(path, O_WRONLY);
	ASSERT(fd >= 0);
	ASSERT(pwrite(fd, &one, sizeof(one), (off_t)(offsetof(struct md__stats_file, counters) +
						     MD_CTR_IO_UNSEEN * sizeof(uint64_t))) == 8);
	close(fd);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd %s/memdedup status --agents", test_dir(), b), 0);
	snprintf(want, sizeof(want), "pid %d: sharing stopped", (int)getpid());
	ASSERT(strstr(slurp("out"), want));
	ASSERT_EQ(status_json(), 0);
	ASSERT(strstr(slurp("out"), "\"io_unseen\": 1"));
	return 0;
}

/* A server at path answering every connection with doc (len bytes): as
 * it is, unasked (framed 0); in a proper frame of type (a reply's seq)
 * once asked (1); as it is once asked, the request read whole (2). Its
 * pid. */
static pid_t doc_server_len(const char *path, const char *doc, size_t len, int framed, unsigned type)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	ASSERT(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	unlink(path);
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(ls >= 0);
	ASSERT(bind(ls, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(ls, 8) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static unsigned char out[MD_MSG_HDR_SIZE + 4096], in[MD_MSG_HDR_SIZE + 4096];
		ASSERT(len <= 4096);
		memcpy(out + MD_MSG_HDR_SIZE, doc, len);
		for (;;) {
			int c = accept(ls, NULL, NULL);
			struct md__msg_hdr h;
			if (c < 0)
				_exit(1);
			if (!framed) {
				usleep(20000);
				if (write(c, doc, len) < 0)
					_exit(1);
			} else if (framed == 2) {
				/* Read whole, so that closing resets nothing. */
				size_t got = 0, want = MD_MSG_HDR_SIZE;
				while (got < want) {
					ssize_t n = read(c, in + got, want - got);
					if (n <= 0)
						_exit(1);
					got += (size_t)n;
					if (got == MD_MSG_HDR_SIZE) {
						if (md__msg_hdr_decode(in, got, &h) != 0 || h.length > 4096)
							_exit(1);
						want += h.length;
					}
				}
				if (write(c, doc, len) < 0)
					_exit(1);
			} else {
				ssize_t n = read(c, in, sizeof(in));
				if (n >= (ssize_t)MD_MSG_HDR_SIZE && md__msg_hdr_decode(in, (size_t)n, &h) == 0) {
					md__msg_hdr_encode(out, type, (uint32_t)len, h.seq);
					if (write(c, out, MD_MSG_HDR_SIZE + len) < 0)
						_exit(1);
				}
			}
			close(c);
		}
	}
	close(ls);
	return kid;
}

static pid_t doc_server(const char *path, const char *doc, int framed)
{
	return doc_server_len(path, doc, strlen(doc), framed, MD_MSG_STATUS_R);
}

/* memdedupd there but answering garbage: said, and exit 1 (none running
 * is still fine). */
TEST_IMPL(cli_status_daemon_error)
{
	const char *b = build_dir();
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char junk[65];
	memset(junk, 'x', 64);
	junk[64] = '\0';
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/bad.sock", test_dir());
	pid_t kid = doc_server(sa.sun_path, junk, 0);
	int c1 = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sa.sun_path, b);
	char err1[1024];
	snprintf(err1, sizeof(err1), "%s", slurp("err"));
	int c2 = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status --json", test_dir(), sa.sun_path, b);
	int c3 = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status --agents", test_dir(), sa.sun_path, b);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	ASSERT_EQ(c1, 1);
	ASSERT(strstr(err1, "did not answer properly"));
	ASSERT_EQ(c2, 1);
	ASSERT_EQ(c3, 0);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s/none %s/memdedup status", test_dir(), test_dir(), b), 0);
	ASSERT(strstr(slurp("out"), "memdedupd: not running"));
	return 0;
}

/* memdedupd there, answering a document that is not what status reads:
 * said, exit 1, as for garbage (its domains were shown as none, or as
 * rows of zeroes). A proper one is shown. */
TEST_IMPL(cli_status_daemon_malformed_doc)
{
	const char *b = build_dir();
	char sock[400];
	snprintf(sock, sizeof(sock), "%s/doc.sock", test_dir());
	static const char *const docs[] = {
		"{\"daemon\":{},\"domains\":{\"id\":1},\"agents\":\"x\"}",
		"{\"daemon\":{},\"domains\":[{\"id\":\"7\",\"name\":5,\"uid\":\"x\",\"agents\":3.5,"
		"\"pool_live_pages\":1,\"pages_sharing\":1,\"general_profit\":1}],\"agents\":[]}",
		/* Named properly, one of its numbers not a number. */
		"{\"daemon\":{},\"domains\":[{\"id\":7,\"name\":\"blue\",\"uid\":0,\"agents\":2,"
		"\"pool_live_pages\":\"1234\",\"pages_sharing\":5678,\"general_profit\":1048576}],\"agents\":[]}",
		/* A key twice: which one is meant cannot be told. */
		"{\"daemon\":{},\"domains\":[],\"domains\":[{\"id\":7,\"name\":\"blue\",\"uid\":0,\"agents\":2,"
		"\"pool_live_pages\":1234,\"pages_sharing\":5678,\"general_profit\":1048576}],\"agents\":[]}",
		"{\"daemon\":{},\"domains\":[{\"id\":7,\"name\":\"blue\",\"uid\":0,\"agents\":2,"
		"\"pool_live_pages\":1234,\"pages_sharing\":5678,\"general_profit\":1048576}],\"agents\":[]}",
	};
	enum { N = sizeof(docs) / sizeof(docs[0]) };
	int code[N][2];
	char err[N][1024], out[1024];
	for (int i = 0; i < N; i++) {
		pid_t kid = doc_server(sock, docs[i], 1);
		for (int json = 0; json < 2; json++) {
			code[i][json] = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status%s", test_dir(),
					   sock, b, json ? " --json" : "");
			if (!json)
				snprintf(err[i], sizeof(err[i]), "%s", slurp("err"));
			if (!json && i == N - 1)
				snprintf(out, sizeof(out), "%s", slurp("out"));
		}
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
	}
	for (int i = 0; i < N - 1; i++) {
		ASSERT_EQ(code[i][0], 1);
		ASSERT_EQ(code[i][1], 1);
		ASSERT(strstr(err[i], "did not answer properly"));
	}
	ASSERT_EQ(code[N - 1][0], 0);
	ASSERT_EQ(code[N - 1][1], 0);
	ASSERT(strstr(out, "blue") && strstr(out, "5678"));
	return 0;
}

/* A server at path answering each STATUS on a connection with the next of
 * docs[0..n) (the last again past the end), in a STATUS_R frame: a daemon
 * whose document comes in pages. docs NULL: n empty pages, each moving
 * on, then one that ends. Its pid. */
static pid_t pages_server(const char *path, const char *const *docs, int n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	ASSERT(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	unlink(path);
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(ls >= 0);
	ASSERT(bind(ls, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(ls, 8) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		static unsigned char out[MD_MSG_HDR_SIZE + 4096], in[MD_MSG_HDR_SIZE + 4096];
		for (;;) {
			int c = accept(ls, NULL, NULL);
			if (c < 0)
				_exit(1);
			for (int k = 0;; k++) {
				struct md__msg_hdr h;
				char gen[128];
				if (!docs)
					snprintf(gen, sizeof(gen), k < n ? "{\"domains\":[],\"agents\":[],\"next\":"
						 "{\"domain\":0,\"agent\":%d}}" : "{\"domains\":[],\"agents\":[]}", k + 1);
				const char *doc = docs ? docs[k < n ? k : n - 1] : gen;
				size_t len = strlen(doc);
				ssize_t got = read(c, in, sizeof(in));
				if (got < (ssize_t)MD_MSG_HDR_SIZE || md__msg_hdr_decode(in, (size_t)got, &h) != 0 ||
				    len > 4096)
					break;
				md__msg_hdr_encode(out, MD_MSG_STATUS_R, (uint32_t)len, h.seq);
				memcpy(out + MD_MSG_HDR_SIZE, doc, len);
				if (write(c, out, MD_MSG_HDR_SIZE + len) < 0)
					break;
			}
			close(c);
		}
	}
	close(ls);
	return kid;
}

/* A page whose "next" does not move on (here: where it started) is no
 * proper answer: `status` would ask for it again and again, and show its
 * domains and agents each time. Taken, it showed the page's domain, and
 * the page after it, the last, ended it well. */
TEST_IMPL(cli_status_daemon_next_moves_on)
{
	char sock[400];
	snprintf(sock, sizeof(sock), "%s/pages.sock", test_dir());
	static const char *const docs[] = {
		"{\"daemon\":{},\"domains\":[{\"id\":7,\"name\":\"blue\",\"uid\":0,\"agents\":2,"
		"\"pool_live_pages\":1234,\"pages_sharing\":5678,\"general_profit\":1048576}],\"agents\":[],"
		"\"next\":{\"domain\":0,\"agent\":0}}",
		"{\"daemon\":{},\"domains\":[],\"agents\":[],\"next\":null}",
	};
	pid_t kid = pages_server(sock, docs, 2);
	int code = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock, build_dir());
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	ASSERT_EQ(code, 1);
	ASSERT(strstr(slurp("err"), "did not answer properly"));
	return 0;
}

/* Nor does a document without end: past 65,536 pages (each a domain or
 * an agent at least, more than a daemon can hold), the daemon is one that
 * does not move on. Without the bound, `status` asked on for ever. */
TEST_IMPL(cli_status_daemon_pages_bounded)
{
	char sock[400];
	snprintf(sock, sizeof(sock), "%s/pages.sock", test_dir());
	pid_t kid = pages_server(sock, NULL, 65536);	/* the 65,537th would end it */
	int code = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock, build_dir());
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	ASSERT_EQ(code, 1);
	ASSERT(strstr(slurp("err"), "did not answer properly"));
	/* The pages taken before are dropped, not shown as a daemon. */
	ASSERT(strstr(slurp("out"), "memdedupd: no proper answer (see the error)"));
	return 0;
}

/* What answers on the socket is not memdedupd (garbage), or refuses the
 * connection: `status` and the control commands say so in their own words
 * only. The client's log line for agents ("memdedup[PID]: ... the
 * connection is dropped, and made again") came first, and the CLI makes
 * nothing again. */
TEST_IMPL(cli_daemon_garbage_said_once)
{
	const char *b = build_dir();
	char sock[400], junk[65];
	unsigned char refusal[MD_MSG_HDR_SIZE + 8 + MD_TEXT_MAX];
	struct md__msg m = { .hdr = { .type = MD_MSG_ERROR } };
	static const char *const cmds[] = { "status", "pause", "set pages_to_scan=5", "unmerge" };
	snprintf(sock, sizeof(sock), "%s/bad.sock", test_dir());
	memset(junk, 'x', 64);
	junk[64] = '\0';
	m.u.text.status = -EUSERS;
	snprintf(m.u.text.text, sizeof(m.u.text.text), "too many connections (7)");
	ssize_t rlen = md__msg_encode(&m, refusal, sizeof(refusal));
	ASSERT(rlen > 0);
	for (int refused = 0; refused < 2; refused++) {
		pid_t kid = refused ? doc_server_len(sock, (const char *)refusal, (size_t)rlen, 2, 0)
				    : doc_server_len(sock, junk, 64, 2, 0);
		int code[4];
		char err[4][1024];
		for (int i = 0; i < 4; i++) {
			code[i] = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup %s", test_dir(), sock, b,
				     cmds[i]);
			snprintf(err[i], sizeof(err[i]), "%s", slurp("err"));
		}
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
		for (int i = 0; i < 4; i++) {
			ASSERT_EQ(code[i], 1);
			ASSERT(!strstr(err[i], "memdedup["));
			ASSERT(!strstr(err[i], "made again"));
			/* One line, the command's. */
			char want[64];
			snprintf(want, sizeof(want), "memdedup %.*s: ", (int)strcspn(cmds[i], " "), cmds[i]);
			ASSERT(strncmp(err[i], want, strlen(want)) == 0);
			ASSERT(strchr(err[i], '\n') == err[i] + strlen(err[i]) - 1);
			if (refused)
				ASSERT(strstr(err[i], "refused the connection: too many connections (7)"));
			else
				ASSERT(strstr(err[i], "did not answer properly"));
		}
	}
	return 0;
}

/* A daemon that answers a CONTROL with a frame of another type (a STATUS
 * document here) did not answer it: said so, and exit 1, not its frame
 * read as a CONTROL's answer. */
TEST_IMPL(cli_control_wrong_reply_type)
{
	const char *b = build_dir();
	char sock[400];
	static const char *const cmds[] = { "pause", "resume", "unmerge", "set pages_to_scan=5" };
	snprintf(sock, sizeof(sock), "%s/wrong.sock", test_dir());
	pid_t kid = doc_server(sock, "{\"version\": 1}", 1);
	int code[4];
	char err[4][1024];
	for (int i = 0; i < 4; i++) {
		code[i] = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup %s", test_dir(), sock, b, cmds[i]);
		snprintf(err[i], sizeof(err[i]), "%s", slurp("err"));
	}
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(code[i], 1);
		ASSERT(strstr(err[i], "did not answer properly"));
	}
	return 0;
}

/* An ERROR message saying "all is well" with status 0 (nothing failed)
 * into error (its length), and the socket path its server takes. */
static ssize_t error_saying_nothing(unsigned char *error, size_t size, char *sock, size_t sock_size)
{
	struct md__msg m = { .hdr = { .type = MD_MSG_ERROR } };
	snprintf(m.u.text.text, sizeof(m.u.text.text), "all is well");
	ssize_t elen = md__msg_encode(&m, error, size);
	ASSERT(elen > (ssize_t)MD_MSG_HDR_SIZE);
	snprintf(sock, sock_size, "%s/wrong.sock", test_dir());
	return elen;
}

/* Nor is a STATUS answered with a frame of another type (a proper
 * document in it), or with an ERROR that says no error (status 0): no
 * proper answer, said so, exit 1; not the document shown, nor the ERROR's
 * text as a refusal. */
TEST_IMPL(cli_status_wrong_reply_type)
{
	char sock[400], err[2][1024];
	unsigned char error[MD_MSG_HDR_SIZE + 8 + MD_TEXT_MAX];
	ssize_t elen = error_saying_nothing(error, sizeof(error), sock, sizeof(sock));
	static const char doc[] = "{\"daemon\":{},\"domains\":[{\"id\":7,\"name\":\"blue\",\"uid\":0,"
				  "\"agents\":2,\"pool_live_pages\":1234,\"pages_sharing\":5678,"
				  "\"general_profit\":1048576}],\"agents\":[]}";
	for (int i = 0; i < 2; i++) {
		pid_t kid = i ? doc_server_len(sock, (const char *)error + MD_MSG_HDR_SIZE,
					      (size_t)elen - MD_MSG_HDR_SIZE, 1, MD_MSG_ERROR)
			      : doc_server_len(sock, doc, strlen(doc), 1, MD_MSG_CONTROL_R);
		int code = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock,
			      build_dir());
		snprintf(err[i], sizeof(err[i]), "%s", slurp("err"));
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
		ASSERT_EQ(code, 1);
		ASSERT(!strstr(slurp("out"), "5678"));
		ASSERT(strstr(err[i], "did not answer properly"));
		ASSERT(!strstr(err[i], "all is well"));
	}
	return 0;
}

/* The same ERROR saying nothing failed, as the answer to a control
 * command: it exited 0, "all is well" on its output. */
TEST_IMPL(cli_control_error_status_zero)
{
	char sock[400];
	unsigned char error[MD_MSG_HDR_SIZE + 8 + MD_TEXT_MAX];
	ssize_t elen = error_saying_nothing(error, sizeof(error), sock, sizeof(sock));
	static const char *const cmd[] = { "pause", "resume", "unmerge", "set pages_to_scan=5" };
	for (size_t i = 0; i < sizeof(cmd) / sizeof(*cmd); i++) {
		pid_t kid = doc_server_len(sock, (const char *)error + MD_MSG_HDR_SIZE,
					   (size_t)elen - MD_MSG_HDR_SIZE, 1, MD_MSG_ERROR);
		int code = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup %s", test_dir(), sock,
			      build_dir(), cmd[i]);
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
		ASSERT_EQ(code, 1);
		ASSERT(!strstr(slurp("out"), "all is well"));
		ASSERT(strstr(slurp("err"), "did not answer properly"));
	}
	return 0;
}

/* An empty pool's profit is a little below zero (the daemon's
 * bookkeeping): PROFIT_MB shows 0.0, not -0.0; a real loss stays. */
TEST_IMPL(cli_status_profit_not_negative_zero)
{
	const char *b = build_dir();
	char sock[400];
	snprintf(sock, sizeof(sock), "%s/doc.sock", test_dir());
	const char *doc = "{\"daemon\":{},\"domains\":[{\"id\":1,\"name\":\"\",\"uid\":0,\"agents\":2,"
			  "\"pool_live_pages\":0,\"pages_sharing\":0,\"general_profit\":-1000},"
			  "{\"id\":2,\"name\":\"lossy\",\"uid\":0,\"agents\":1,\"pool_live_pages\":1,"
			  "\"pages_sharing\":0,\"general_profit\":-1048576}],\"agents\":[]}";
	pid_t kid = doc_server(sock, doc, 1);
	int code = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock, b);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	ASSERT_EQ(code, 0);
	const char *out = slurp("out");
	ASSERT(!strstr(out, "-0.0"));
	const char *row = strstr(out, "(default)");
	ASSERT(row && strncmp(strchr(row, '\n') - 4, " 0.0", 4) == 0);
	row = strstr(out, "lossy");
	ASSERT(row && strncmp(strchr(row, '\n') - 5, " -1.0", 5) == 0);
	return 0;
}

/* What a JSON key of `status` shows: the counter ctr, as a number, or as
 * seconds (of nanoseconds). */
enum { SHOW_COUNT, SHOW_SECONDS };
struct shown_key {
	const char *key;
	int ctr, how;
};

static const struct shown_key agent_keys[] = {
	{ "regions", MD_CTR_REGIONS, SHOW_COUNT },
	{ "registered_bytes", MD_CTR_REGISTERED_BYTES, SHOW_COUNT },
	{ "reads_seen", MD_CTR_READS_SEEN, SHOW_COUNT },
	{ "bytes_read", MD_CTR_BYTES_READ, SHOW_COUNT },
	{ "read_seconds", MD_CTR_READ_NS, SHOW_SECONDS },
	{ "read_shared_seconds", MD_CTR_READ_SHARED_NS, SHOW_SECONDS },
	{ "read_shared_bytes", MD_CTR_READ_SHARED_BYTES, SHOW_COUNT },
	{ "read_page_seconds", MD_CTR_READ_PAGE_NS, SHOW_SECONDS },
	{ "reads_page", MD_CTR_READS_PAGE, SHOW_COUNT },
	{ "pages_shared_at_read", MD_CTR_SHARED_AT_READ, SHOW_COUNT },
	{ "pages_shared", MD_CTR_SHARED_NOW, SHOW_COUNT },
	{ "breaks", MD_CTR_BREAKS, SHOW_COUNT },
	{ "pages_privatized", MD_CTR_PRIVATIZED, SHOW_COUNT },
	{ "lease_breaks", MD_CTR_LEASE_BREAKS, SHOW_COUNT },
	{ "vmas", MD_CTR_VMAS, SHOW_COUNT },
	{ "fallbacks_total", MD_CTR_FALLBACK_TOTAL, SHOW_COUNT },
	{ "read_small_pages", MD_CTR_READ_SMALL, SHOW_COUNT },
	{ "agent_cpu_seconds", MD_CTR_AGENT_CPU_NS, SHOW_SECONDS },
	{ "io_unseen", MD_CTR_IO_UNSEEN, SHOW_COUNT },
	{ "fork_shared", MD_CTR_FORK_SHARED, SHOW_COUNT },
};

static const struct shown_key scanner_keys[] = {
	{ "pages_scanned", MD_CTR_PAGES_SCANNED, SHOW_COUNT },
	{ "pages_hinted", MD_CTR_PAGES_HINTED, SHOW_COUNT },
	{ "merged", MD_CTR_MERGED, SHOW_COUNT },
	{ "merged_from_hints", MD_CTR_MERGED_FROM_HINTS, SHOW_COUNT },
	{ "zero_pages", MD_CTR_ZERO_PAGES, SHOW_COUNT },
	{ "published", MD_CTR_PUBLISHED, SHOW_COUNT },
	{ "volatile_skips", MD_CTR_VOLATILE, SHOW_COUNT },
	{ "abandoned", MD_CTR_ABANDONED, SHOW_COUNT },
	{ "full_scans", MD_CTR_FULL_SCANS, SHOW_COUNT },
	{ "breaks", MD_CTR_SCAN_BREAKS, SHOW_COUNT },
	{ "wp_waits", MD_CTR_WP_WAITS, SHOW_COUNT },
	{ "hints_pushed", MD_CTR_HINTS_PUSHED, SHOW_COUNT },
	{ "hints_dropped", MD_CTR_HINTS_DROPPED, SHOW_COUNT },
	{ "pages_sharing", MD_CTR_PAGES_SHARING, SHOW_COUNT },
	{ "pages_mapped_from_pool", MD_CTR_PAGES_SHARING, SHOW_COUNT },	/* the same, named for what it is */
	{ "pages_shared", MD_CTR_POOL_PAGES, SHOW_COUNT },
	{ "merge_rate", MD_CTR_MERGE_RATE, SHOW_COUNT },
	{ "break_rate", MD_CTR_BREAK_RATE, SHOW_COUNT },
	{ "pages_unshared", MD_CTR_PAGES_UNSHARED, SHOW_COUNT },
	{ "smart_skips", MD_CTR_SMART_SKIPS, SHOW_COUNT },
	{ "candidates", MD_CTR_CANDIDATES, SHOW_COUNT },
	{ "merged_from_candidates", MD_CTR_MERGED_FROM_CANDIDATES, SHOW_COUNT },
	{ "merged_image", MD_CTR_MERGED_IMAGE, SHOW_COUNT },
	{ "image_pages_indexed", MD_CTR_IMAGE_INDEXED, SHOW_COUNT },
	{ "zero_pages_near_hints", MD_CTR_ZERO_NEAR_HINTS, SHOW_COUNT },
	{ "hint_ratio", MD_CTR_HINT_RATIO, SHOW_COUNT },
	{ "filled_pages", MD_CTR_FILLED_PAGES, SHOW_COUNT },
	{ "fill_mapped", MD_CTR_FILL_MAPPED, SHOW_COUNT },
	{ "merge_fallbacks", MD_CTR_MERGE_FALLBACKS, SHOW_COUNT },
	{ "general_profit", MD_CTR_GENERAL_PROFIT, SHOW_COUNT },
	{ "cpu_seconds", MD_CTR_SCAN_CPU_NS, SHOW_SECONDS },
};

/* Checks the JSON object o holds exactly the keys of keys[n] (and those of
 * also, NULL-terminated, checked elsewhere), each showing ctr[its counter]. */
static void check_keys(json_t *o, const struct shown_key *keys, size_t n, const uint64_t *ctr,
		       const char *const *also)
{
	const char *k;
	json_t *v;
	ASSERT(json_is_object(o));
	json_object_foreach(o, k, v) {
		size_t i = 0;
		while (i < n && strcmp(keys[i].key, k) != 0)
			i++;
		int other = 0;
		for (const char *const *a = also; a && *a; a++)
			other |= strcmp(*a, k) == 0;
		if (other)
			continue;
		if (i == n)
			fprintf(stderr, "status JSON key '%s' is not checked\n", k);
		ASSERT(i < n);
		uint64_t want = ctr[keys[i].ctr];
		if (keys[i].how == SHOW_SECONDS) {
			ASSERT(json_is_real(v));
			double d = json_real_value(v) - (double)want / 1e9;
			if (d < -1e-9 || d > 1e-9)
				fprintf(stderr, "status JSON %s: %.9f, not %.9f\n", k, json_real_value(v), (double)want / 1e9);
			ASSERT(d >= -1e-9 && d <= 1e-9);
		} else {
			ASSERT(json_is_integer(v));
			if ((uint64_t)json_integer_value(v) != want)
				fprintf(stderr, "status JSON %s: %lld, not %llu\n", k, (long long)json_integer_value(v),
					(unsigned long long)want);
			ASSERT_EQ((uint64_t)json_integer_value(v), want);
		}
	}
	for (size_t i = 0; i < n; i++)
		ASSERT(json_object_get(o, keys[i].key));
}

/* An agent's JSON (row) or the totals' against the counters ctr: every
 * key, and no other. */
static void check_agent_json(json_t *a, const uint64_t *ctr, int row)
{
	static const char *const row_keys[] = { "fallbacks", "scanner", "pid", "ns_pid", "command", "state",
						"paused", "unmerged", "rate_part", NULL };
	static const char *const nested[] = { "fallbacks", "scanner", NULL };
	check_keys(a, agent_keys, sizeof(agent_keys) / sizeof(agent_keys[0]), ctr, row ? row_keys : nested);
	check_keys(json_object_get(a, "scanner"), scanner_keys, sizeof(scanner_keys) / sizeof(scanner_keys[0]),
		   ctr, NULL);
	json_t *fb = json_object_get(a, "fallbacks");
	ASSERT(json_is_object(fb) && json_object_size(fb) == MD_FB_COUNT);
	for (int i = 0; i < MD_FB_COUNT; i++)
		ASSERT_EQ((uint64_t)json_integer_value(json_object_get(fb, md_fallback_name(i))),
			  ctr[MD_CTR_FALLBACK0 + i]);
}

/* The whitespace-separated words of the line of out that starts with
 * head and a space (into words[max], cut in buf): how many. */
static int row_words(const char *out, const char *head, char *buf, size_t size, char **words, int max)
{
	size_t n = strlen(head);
	for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (strncmp(l, head, n) != 0 || l[n] != ' ')
			continue;
		snprintf(buf, size, "%.*s", (int)strcspn(l, "\n"), l);
		int k = 0;
		for (char *save = NULL, *w = strtok_r(buf, " ", &save); w && k < max; w = strtok_r(NULL, " ", &save))
			words[k++] = w;
		return k;
	}
	return 0;
}

/* A row of the table against counters ctr: its columns after PID and
 * COMMAND, and its STATE (NULL: none, the totals'). */
static void check_row(const char *out, const char *head, const char *command, const uint64_t *ctr,
		      const char *state)
{
	char buf[512], want[9][32], *w[12];
	int n = row_words(out, head, buf, sizeof(buf), w, 12);
	snprintf(want[0], sizeof(want[0]), "%.1f", (double)ctr[MD_CTR_REGISTERED_BYTES] / (1 << 20));	/* MiB */
	const int col[] = { MD_CTR_SHARED_NOW, MD_CTR_BREAKS, MD_CTR_FALLBACK_TOTAL, MD_CTR_VMAS,
			    MD_CTR_PAGES_SHARING, MD_CTR_ZERO_PAGES };
	for (int i = 0; i < 6; i++)
		snprintf(want[1 + i], sizeof(want[1 + i]), "%llu", (unsigned long long)ctr[col[i]]);
	if (n != (state ? 10 : 9))
		fprintf(stderr, "status row '%s': %d words\n", head, n);
	ASSERT_EQ(n, state ? 10 : 9);
	ASSERT_EQ(strcmp(w[1], command), 0);
	for (int i = 0; i < 7; i++) {
		if (strcmp(w[2 + i], want[i]) != 0)
			fprintf(stderr, "status row '%s', column %d: %s, not %s\n", head, 3 + i, w[2 + i], want[i]);
		ASSERT_EQ(strcmp(w[2 + i], want[i]), 0);
	}
	if (state)
		ASSERT_EQ(strcmp(w[9], state), 0);
}

/* Every number `status` shows is the counter its column or key names:
 * every counter of two agents differs (write_stats), and each column of
 * the table and key of the JSON is checked against its own, for both
 * agents and their totals (added, but the hint ratio, a setting: the
 * largest), and the domain table against memdedupd's document. With every
 * counter alike, SHARED and BREAKS swapped, RAM_MB in 10^6 bytes, MERGED
 * showing all pages ever merged, the JSON's breaks the privatized pages,
 * and POOL_PAGES the domain's pages_sharing all passed. */
TEST_IMPL(cli_status_counters_shown)
{
	const char *b = build_dir();
	char path[512], name[64], sock[400], head[32];
	int stop[2];
	ASSERT(pipe(stop) == 0);
	pid_t pids[2] = { getpid(), 0 };
	/* Sizes where MiB and 10^6 bytes differ; bases far apart, so that no
	 * counter of one is a counter of the other. */
	const uint64_t base[2] = { 5000000000ull, 7000000000ull };
	const char *cmd[2] = { "vmm-a", "vmm-b" }, *state[2] = { "paused", "unmerged" };
	const uint64_t scan_state[2] = { MD_SCAN_STATE_PAUSED, MD_SCAN_STATE_UNMERGED };
	uint64_t ctr[2][MD_CTR_COUNT], total[MD_CTR_COUNT];
	pids[1] = agent_stand_in(stop, cmd[1], base[1]);
	for (int i = 0; i < 2; i++) {
		snprintf(name, sizeof(name), "agent-%d.stats", (int)pids[i]);
		make_rd(path, sizeof(path), name);
		if (i == 0)
			write_stats(path, (uint32_t)pids[i], md__proc_start_time(pids[i]), cmd[i], base[i]);
		for (int k = 0; k < MD_CTR_COUNT; k++)
			ctr[i][k] = stats_value(base[i], k);
		/* STATE: the agent's own word, not stopped (io_unseen). */
		ctr[i][MD_CTR_IO_UNSEEN] = 0;
		ctr[i][MD_CTR_SCAN_STATE] = scan_state[i];
		set_counter(path, MD_CTR_IO_UNSEEN, 0);
		set_counter(path, MD_CTR_SCAN_STATE, scan_state[i]);
	}
	for (int k = 0; k < MD_CTR_COUNT; k++)
		total[k] = ctr[0][k] + ctr[1][k];
	total[MD_CTR_HINT_RATIO] = ctr[1][MD_CTR_HINT_RATIO];
	/* memdedupd's document: one domain, every number its own. */
	snprintf(sock, sizeof(sock), "%s/doc.sock", test_dir());
	const char *doc = "{\"daemon\":{},\"domains\":[{\"id\":3,\"name\":\"blue\",\"uid\":1234,\"agents\":5,"
			  "\"pool_live_pages\":1111,\"pages_sharing\":2222,\"zero_pages\":4444,"
			  "\"general_profit\":3670016}],\"agents\":[]}";
	pid_t kid = doc_server(sock, doc, 1);
	int c1 = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock, b);
	char out[8192];
	snprintf(out, sizeof(out), "%s", slurp("out"));
	int c2 = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup status --json", test_dir(), sock, b);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	close(stop[1]);
	ASSERT_EQ(waitpid(pids[1], NULL, 0), pids[1]);
	close(stop[0]);
	ASSERT_EQ(c1, 0);
	ASSERT_EQ(c2, 0);

	/* The table: its header, each agent's row, the totals. */
	char buf[512], *w[12];
	static const char *const cols[] = { "PID", "COMMAND", "RAM_MB", "SHARED", "BREAKS", "FALLBACKS", "VMAS",
					    "MERGED", "ZERO", "STATE" };
	ASSERT_EQ(row_words(out, "PID", buf, sizeof(buf), w, 12), 10);
	for (int i = 0; i < 10; i++)
		ASSERT_EQ(strcmp(w[i], cols[i]), 0);
	for (int i = 0; i < 2; i++) {
		snprintf(head, sizeof(head), "%d", (int)pids[i]);
		check_row(out, head, cmd[i], ctr[i], state[i]);
	}
	check_row(out, "total", "agents", total, NULL);
	/* The domains: header and row. */
	static const char *const dcols[] = { "DOM", "NAME", "UID", "AGENTS", "POOL_PAGES", "PAGES_SHARING",
					     "ZERO_PAGES", "PROFIT_MB" };
	static const char *const drow[] = { "3", "blue", "1234", "5", "1111", "2222", "4444", "3.5" };
	ASSERT_EQ(row_words(out, "DOM", buf, sizeof(buf), w, 12), 8);
	for (int i = 0; i < 8; i++)
		ASSERT_EQ(strcmp(w[i], dcols[i]), 0);
	ASSERT_EQ(row_words(out, "3", buf, sizeof(buf), w, 12), 8);
	for (int i = 0; i < 8; i++) {
		if (strcmp(w[i], drow[i]) != 0)
			fprintf(stderr, "domain row, column %s: %s, not %s\n", dcols[i], w[i], drow[i]);
		ASSERT_EQ(strcmp(w[i], drow[i]), 0);
	}

	/* The JSON: every key of each agent and of the totals. */
	json_error_t je;
	json_t *st = json_loads(slurp("out"), 0, &je);
	ASSERT(st);
	for (int i = 0; i < 2; i++) {
		json_t *a = listed(st, pids[i]);
		ASSERT(a);
		check_agent_json(a, ctr[i], 1);
		ASSERT_EQ(json_integer_value(json_object_get(a, "ns_pid")), pids[i]);
		ASSERT_EQ(strcmp(json_string_value(json_object_get(a, "command")), cmd[i]), 0);
		ASSERT_EQ(strcmp(json_string_value(json_object_get(a, "state")), state[i]), 0);
	}
	check_agent_json(json_object_get(st, "totals"), total, 0);
	json_decref(st);
	return 0;
}

/* Totals past 2^64 (damaged files) stay at the largest value, in the table
 * and (as 2^63-1) in JSON: wrapped, they showed a small number. */
TEST_IMPL(cli_status_totals_saturate)
{
	char path[512], name[64];
	int stop[2];
	const uint64_t big = 1ull << 63;
	ASSERT(pipe(stop) == 0);
	pid_t kid = agent_stand_in(stop, "vmm", big);
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "vmm", big);
	/* general_profit, signed, stays at INT64_MAX too (not wrapped negative). */
	set_counter(path, MD_CTR_GENERAL_PROFIT, INT64_MAX);
	snprintf(name, sizeof(name), "agent-%d.stats", (int)kid);
	make_rd(path, sizeof(path), name);
	set_counter(path, MD_CTR_GENERAL_PROFIT, INT64_MAX);
	int c1 = status_json();
	char out[65536];
	snprintf(out, sizeof(out), "%s", slurp("out"));
	int c2 = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s/none %s/memdedup status --agents", test_dir(),
		    test_dir(), build_dir());
	close(stop[1]);
	ASSERT_EQ(waitpid(kid, NULL, 0), kid);
	close(stop[0]);
	ASSERT_EQ(c1, 0);
	ASSERT_EQ(c2, 0);
	char buf[512], *w[12];
	ASSERT_EQ(row_words(slurp("out"), "total", buf, sizeof(buf), w, 12), 9);
	ASSERT_EQ(strcmp(w[3], "18446744073709551615"), 0);	/* SHARED */
	json_error_t je;
	json_t *st = json_loads(out, 0, &je);
	ASSERT(st);
	json_t *t = json_object_get(st, "totals");
	ASSERT_EQ(json_integer_value(json_object_get(t, "bytes_read")), INT64_MAX);
	ASSERT_EQ(json_integer_value(json_object_get(json_object_get(t, "scanner"), "merged")), INT64_MAX);
	ASSERT_EQ(json_integer_value(json_object_get(json_object_get(t, "scanner"), "general_profit")), INT64_MAX);
	json_decref(st);
	return 0;
}

/* The domain table shows names whole (up to 64 bytes): cut to 16,
 * "tenant-a-production-1" and "-2" printed alike. The columns after stay
 * aligned with the header; a short name keeps the table as it was. And the
 * help says which pages_sharing is KSM's. */
TEST_IMPL(cli_status_domain_names_whole)
{
	const char *b = build_dir();
	char sock[400], buf[512], *w[12];
	static const char long64[] = "d123456789012345678901234567890123456789012345678901234567890123";
	snprintf(sock, sizeof(sock), "%s/doc.sock", test_dir());
	char doc[1024];
	snprintf(doc, sizeof(doc), "{\"daemon\":{},\"domains\":["
		 "{\"id\":1,\"name\":\"tenant-a-production-1\",\"uid\":5,\"agents\":1,\"pool_live_pages\":7,"
		 "\"pages_sharing\":8,\"general_profit\":0},"
		 "{\"id\":2,\"name\":\"tenant-a-production-2\",\"uid\":5,\"agents\":1,\"pool_live_pages\":7,"
		 "\"pages_sharing\":8,\"general_profit\":0},"
		 "{\"id\":3,\"name\":\"%s\",\"uid\":5,\"agents\":1,\"pool_live_pages\":7,"
		 "\"pages_sharing\":8,\"general_profit\":0}],\"agents\":[]}", long64);
	pid_t kid = doc_server(sock, doc, 1);
	int code = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock, b);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	ASSERT_EQ(code, 0);
	const char *out = slurp("out");
	const char *head = strstr(out, "\nDOM ");
	ASSERT(head);
	static const char *const names[3] = { "tenant-a-production-1", "tenant-a-production-2", long64 };
	for (int i = 0; i < 3; i++) {
		char id[16];
		snprintf(id, sizeof(id), "%d", i + 1);
		ASSERT_EQ(row_words(out, id, buf, sizeof(buf), w, 12), 8);	/* ZERO_PAGES "-": a document without it */
		ASSERT_EQ(strcmp(w[1], names[i]), 0);
		/* As long as the header: the columns after, right-aligned,
		 * end under theirs. */
		const char *row = strstr(out, names[i]) - 5;
		ASSERT_EQ(strchr(row, '\n') - row, strchr(head + 1, '\n') - (head + 1));
	}
	ASSERT_EQ(sh("%s/memdedup help status", b), 0);
	ASSERT(strstr(slurp("out"), "pages_mapped_from_pool"));
	return 0;
}

/* pause --pid of an agent that runs without --scan: memdedupd does not
 * know it, status lists it: say it is not scanning. */
TEST_IMPL(cli_pause_not_scanning)
{
	struct tdaemon t;
	char path[512], name[64];
	const char *b = build_dir();
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "plain", 1);
	set_counter(path, MD_CTR_SCAN_STATE, MD_SCAN_STATE_NONE);	/* no scanner */
	td_start(&t, 16);
	int c1 = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup pause --pid %d", test_dir(), t.sock, b,
		    (int)getpid());
	char err1[1024];
	snprintf(err1, sizeof(err1), "%s", slurp("err"));
	pid_t dead = dead_pid();
	int c2 = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup pause --pid %d", test_dir(), t.sock, b,
		    (int)dead);
	char err2[1024];
	snprintf(err2, sizeof(err2), "%s", slurp("err"));
	/* Said once for a set of several pairs, not once a pair. */
	int c3 = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup set --pid %d pages_to_scan=7 "
		    "order=random", test_dir(), t.sock, b, (int)getpid());
	const char *err3 = slurp("err"), *first = strstr(err3, "is not scanning");
	int once = first && !strstr(first + 1, "is not scanning");
	/* An agent whose first name was taken: agent-PID.K.stats. */
	char path2[560];
	snprintf(path2, sizeof(path2), "%s/rd/agent-%d.2.stats", test_dir(), (int)getpid());
	ASSERT_EQ(rename(path, path2), 0);
	int c4 = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup pause --pid %d", test_dir(), t.sock, b,
		    (int)getpid());
	char err4[1024];
	snprintf(err4, sizeof(err4), "%s", slurp("err"));
	td_stop(&t);
	ASSERT_EQ(c1, 1);
	ASSERT(strstr(err1, "is not scanning"));
	ASSERT_EQ(c2, 1);
	ASSERT(strstr(err2, "no agent with pid"));
	ASSERT_EQ(c3, 1);
	ASSERT(once);
	ASSERT_EQ(c4, 1);
	ASSERT(strstr(err4, "is not scanning"));
	return 0;
}

/* A child that is an agent of t's memdedupd, with a statistics file in
 * test_dir()/rd as the agent's: it answers every CONTROL done, but those
 * of the ops in the bits of refuse (1 << op), refused for want of memory,
 * until *stop's write end closes. Its pid. */
static pid_t refusing_agent(const struct tdaemon *t, int stop[2], unsigned refuse)
{
	int ready[2];
	char x = 0;
	ASSERT(pipe(ready) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__client *c;
		struct md__msg_welcome w;
		struct md__msg_control ctl;
		int fd;
		char path[512], name[64];
		close(stop[1]);
		if (md__client_open(&c, t->sock, NULL, 0, &w, &fd) != 0)
			_exit(100);
		snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
		make_rd(path, sizeof(path), name);
		write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "vmm", 0);
		if (write(ready[1], &x, 1) != 1)
			_exit(100);
		for (;;) {
			struct pollfd p[2] = { { stop[0], POLLIN, 0 }, { md__client_fd(c), POLLIN, 0 } };
			if (poll(p, 2, 10000) < 0 || p[0].revents)
				_exit(0);
			while (md__client_next_control(c, &ctl) == 0) {
				int no = refuse & (1u << ctl.op);
				if (md__client_control_done(c, ctl.token, no ? -ENOMEM : 0,
							    no ? "not enough memory for the copies" : NULL) != 0)
					_exit(101);
			}
			if (!md__client_alive(c))
				_exit(102);
		}
	}
	close(ready[1]);
	ASSERT(read(ready[0], &x, 1) == 1);
	close(ready[0]);
	return kid;
}

static pid_t answering_agent(const struct tdaemon *t, int stop[2])
{
	return refusing_agent(t, stop, 0);
}

/* How many times needle is in hay. */
static int count_of(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* An agent that scans within its process (--domain=private, or no
 * memdedupd when it started) never reaches memdedupd: the control
 * commands said "pause done by 0 agents" and exit 0, and for --pid that
 * it was "not scanning" while status showed it scanning. Now each is
 * named, once, and the command exits 1; an agent memdedupd holds, and one
 * without a scanner, are not named. */
TEST_IMPL(cli_control_names_unreachable_agents)
{
	struct tdaemon t;
	int stop[2];
	char path[512], name[64], env[1024], want[64];
	const char *b = build_dir();
	td_start(&t, 16);
	ASSERT(pipe(stop) == 0);
	/* One memdedupd holds, scanning as its file says; and this process,
	 * scanning with no connection to memdedupd. */
	pid_t held = answering_agent(&t, stop);
	snprintf(name, sizeof(name), "agent-%d.stats", (int)held);
	make_rd(path, sizeof(path), name);
	set_counter(path, MD_CTR_SCAN_STATE, MD_SCAN_STATE_SCANNING);
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "private", 0);
	set_counter(path, MD_CTR_SCAN_STATE, MD_SCAN_STATE_SCANNING);
	snprintf(env, sizeof(env), "MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s", test_dir(), t.sock);
	snprintf(want, sizeof(want), "pid %d scans within its process", (int)getpid());

	static const char *const cmds[] = { "pause", "resume", "unmerge", "set pages_to_scan=7 order=random" };
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		ASSERT_EQ(sh("%s %s/memdedup %s", env, b, cmds[i]), 1);
		const char *err = slurp("err");
		if (count_of(err, want) != 1 || !strstr(err, "memdedupd cannot reach it"))
			fprintf(stderr, "memdedup %s said: %s\n", cmds[i], err);
		ASSERT_EQ(count_of(err, want), 1);	/* once, for a SET of two pairs too */
		ASSERT(strstr(err, "memdedupd cannot reach it"));
		ASSERT_EQ(count_of(err, "scans within its process"), 1);	/* not the agent it holds */
		ASSERT(strstr(slurp("out"), "done by 1 agent"));
	}
	/* By pid: said so, not "not scanning". */
	ASSERT_EQ(sh("%s %s/memdedup pause --pid %d", env, b, (int)getpid()), 1);
	ASSERT(strstr(slurp("err"), want));
	ASSERT(!strstr(slurp("err"), "not scanning"));
	ASSERT_EQ(sh("%s %s/memdedup set --pid %d pages_to_scan=7 order=random", env, b, (int)getpid()), 1);
	ASSERT_EQ(count_of(slurp("err"), want), 1);
	/* The agent memdedupd holds is reached as before. */
	ASSERT_EQ(sh("%s %s/memdedup pause --pid %d", env, b, (int)held), 0);
	ASSERT(!strstr(slurp("err"), "scans within"));
	/* With no daemon at all, it is named after the reason. */
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s/none %s/memdedup pause", test_dir(), test_dir(), b), 1);
	ASSERT(strstr(slurp("err"), "not running"));
	ASSERT(strstr(slurp("err"), want));
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s/none %s/memdedup unmerge --pid %d", test_dir(),
		     test_dir(), b, (int)getpid()), 1);
	ASSERT(strstr(slurp("err"), want));
	/* Without a scanner it has nothing for memdedupd: not named. */
	set_counter(path, MD_CTR_SCAN_STATE, MD_SCAN_STATE_NONE);
	ASSERT_EQ(sh("%s %s/memdedup pause", env, b), 0);
	ASSERT(!strstr(slurp("err"), "scans within"));
	close(stop[1]);
	int ws;
	ASSERT(waitpid(held, &ws, 0) == held && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	close(stop[0]);
	td_stop(&t);
	return 0;
}

/* After a command for all agents, memdedupd's status tells which agents
 * that scan it did not reach. Past a user's status limit (a `status` just
 * before) the document was not had, and taken for "none to say": "pause
 * done by 0 agents", exit 0, with an agent scanning out of its reach. Now
 * it is asked again a second later (memdedupd says to try then), and when
 * still not had, each agent that scans is said to be one it cannot tell
 * of, and the command exits 1. As nobody: root's status is not limited. */
TEST_IMPL(cli_control_status_limited_cannot_tell)
{
	if (geteuid() != 0)
		SKIP("needs root: the commands run as another user");
	struct tdaemon t;
	char rd[450], path[512], want[256], err[2][1024];
	int code[2];
	ASSERT_EQ(sh("cp %s/memdedup %s/", run_build_dir(), test_dir()), 0);
	/* A run directory nobody reads, with an agent (this process) that
	 * scans within its process. */
	snprintf(rd, sizeof(rd), "%s/rd", test_dir());
	ASSERT(mkdir(rd, 0755) == 0);
	snprintf(path, sizeof(path), "%s/agent-%d.stats", rd, (int)getpid());
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "private", 0);
	set_counter(path, MD_CTR_SCAN_STATE, MD_SCAN_STATE_SCANNING);
	/* 1 KiB a second: a status costs 4 KiB at least, and the next is
	 * refused for 3 s, the retry a second later too; at 2 KiB a second,
	 * refused for 1 s, and the retry gets it. */
	static const char *const rate[] = { "1", "2" };
	for (int k = 0; k < 2; k++) {
		setenv("MEMDEDUP_STATUS_KB_PER_S", rate[k], 1);
		td_start(&t, 16);
		unsetenv("MEMDEDUP_STATUS_KB_PER_S");
		code[k] = sh_as(65534, "export MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s && %s/memdedup status >/dev/null "
				"2>&1; %s/memdedup pause", rd, t.sock, test_dir(), test_dir());
		snprintf(err[k], sizeof(err[k]), "%s", slurp("err"));
		td_stop(&t);
		if (k == 0)
			ASSERT(strstr(slurp("out"), "pause done by 0 agents"));
	}
	snprintf(want, sizeof(want), "memdedup pause: cannot tell whether pid %d was reached: memdedupd's status "
		 "cannot be had (too many status requests of this user: try again in a second)\n", (int)getpid());
	if (code[0] != 1 || strcmp(err[0], want) != 0)
		fprintf(stderr, "exit %d, said: %s", code[0], err[0]);
	ASSERT_EQ(code[0], 1);
	ASSERT_EQ(strcmp(err[0], want), 0);
	snprintf(want, sizeof(want), "pid %d scans within its process", (int)getpid());
	if (code[1] != 1 || !strstr(err[1], want))
		fprintf(stderr, "exit %d, said: %s", code[1], err[1]);
	ASSERT_EQ(code[1], 1);
	ASSERT(strstr(err[1], want));
	ASSERT(!strstr(err[1], "cannot tell"));
	return 0;
}

/* memdedupd's word on pid's agent in `status --json`'s output st: key of
 * the daemon's record and of the agent's row (which must agree): 1, 0, or
 * -1 for null (the row's, when the daemon does not know it). */
static int agent_flag(json_t *st, pid_t pid, const char *key)
{
	json_t *row = listed(st, pid);
	json_t *rec = td_find(json_object_get(json_object_get(st, "daemon"), "agents"), "pid", pid);
	ASSERT(row);
	json_t *v = json_object_get(row, key);
	ASSERT(v);
	if (json_is_null(v)) {
		ASSERT(!rec);
		return -1;
	}
	ASSERT(rec && json_is_boolean(json_object_get(rec, key)));
	ASSERT_EQ(json_is_true(json_object_get(rec, key)), json_is_true(v));
	return json_is_true(v);
}
/* One agent that does not scan, as the table and JSON say it: its STATE
 * "-" and its JSON state null; the totals' row "1 agent". A file named
 * for another pid than the one it holds is malformed, not listed (it
 * showed the agent twice). A socket nothing listens on is memdedupd not
 * running: fine, exit 0. */
TEST_IMPL(cli_status_one_agent_as_said)
{
	const char *b = build_dir();
	char path[512], other[512], name[64];
	json_error_t je;
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "vmm-one", 1000);
	set_counter(path, MD_CTR_IO_UNSEEN, 0);
	set_counter(path, MD_CTR_SCAN_STATE, 0);
	snprintf(name, sizeof(name), "agent-%d.stats", (int)dead_pid());
	make_rd(other, sizeof(other), name);
	write_stats(other, (uint32_t)getpid(), md__proc_start_time(getpid()), "vmm-other", 1000);
	/* Bound, never listening: a connect is refused. */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const char *sock = sa.sun_path;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/stale.sock", test_dir());
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(fd >= 0);
	ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);

	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock, b), 0);
	const char *out = slurp("out");
	char buf[512], *w[12], head[32];
	snprintf(head, sizeof(head), "%d", (int)getpid());
	ASSERT_EQ(row_words(out, head, buf, sizeof(buf), w, 12), 10);
	ASSERT_EQ(strcmp(w[1], "vmm-one"), 0);
	ASSERT_EQ(strcmp(w[9], "-"), 0);
	ASSERT_EQ(row_words(out, "total", buf, sizeof(buf), w, 12), 10);	/* "1 agent": two words */
	ASSERT(strstr(out, "\ntotal    1 agent "));
	ASSERT(!strstr(out, "vmm-other"));
	ASSERT(strstr(out, "memdedupd: not running"));
	char want[600];
	snprintf(want, sizeof(want), "ignoring malformed %s\n", other);
	ASSERT(strstr(slurp("err"), want));

	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup status --json", test_dir(), sock, b), 0);
	json_t *st = json_loads(slurp("out"), 0, &je);
	ASSERT(st);
	json_t *agents = json_object_get(st, "agents"), *a = json_array_get(agents, 0);
	ASSERT_EQ(json_array_size(agents), 1);
	ASSERT_EQ(json_integer_value(json_object_get(a, "pid")), getpid());
	ASSERT(json_is_null(json_object_get(a, "state")));
	ASSERT(json_is_null(json_object_get(a, "paused")));
	ASSERT(json_is_null(json_object_get(st, "daemon")));
	json_decref(st);
	/* A state past the last this status knows (a newer agent's, or a
	 * damaged file): none shown, as for an agent that does not say. */
	set_counter(path, MD_CTR_SCAN_STATE, MD_SCAN_STATE_STOPPED + 1);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock, b), 0);
	ASSERT_EQ(row_words(slurp("out"), head, buf, sizeof(buf), w, 12), 10);
	ASSERT_EQ(strcmp(w[9], "-"), 0);
	return 0;
}


/* `status` shows which agents memdedupd holds paused or unmerged: it
 * showed neither (only the daemon's default, daemon.paused), so an agent
 * paused by pid looked like any other. */
TEST_IMPL(cli_status_shows_paused)
{
	struct tdaemon t;
	int stop[2];
	json_error_t je;
	const char *b = build_dir();
	td_start(&t, 16);
	ASSERT(pipe(stop) == 0);
	pid_t p1 = answering_agent(&t, stop), p2 = answering_agent(&t, stop);
	char env[1024];
	snprintf(env, sizeof(env), "MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s", test_dir(), t.sock);
	/* Each step: the table's STATE of p1 and p2, then the JSON's
	 * paused and unmerged of each. */
	const struct {
		const char *cmd;
		const char *s1, *s2;
		int paused1, unmerged1, paused2, unmerged2;
	} steps[] = {
		{ NULL, "scanning", "scanning", 0, 0, 0, 0 },
		{ "pause --pid P1", "paused", "scanning", 1, 0, 0, 0 },
		{ "unmerge --pid P2", "paused", "unmerged", 1, 0, 1, 1 },
		{ "resume", "scanning", "scanning", 0, 0, 0, 0 },
		/* The daemon's default no longer holds an agent a RESUME by
		 * pid reached: its WELCOME would say it scans (review: the
		 * JSON said paused). */
		{ "pause", "paused", "paused", 1, 0, 1, 0 },
		{ "resume --pid P1", "scanning", "paused", 0, 0, 1, 0 },
		{ "resume", "scanning", "scanning", 0, 0, 0, 0 },
	};
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		if (steps[i].cmd) {
			char cmd[64];
			snprintf(cmd, sizeof(cmd), "%s", steps[i].cmd);
			char *p = strstr(cmd, " P");
			if (p)
				snprintf(p, sizeof(cmd) - (size_t)(p - cmd), " %d", (int)(p[2] == '1' ? p1 : p2));
			ASSERT_EQ(sh("%s %s/memdedup %s", env, b, cmd), 0);
		}
		ASSERT_EQ(sh("%s %s/memdedup status", env, b), 0);
		const char *out = slurp("out");
		ASSERT(strstr(out, " STATE\n"));
		ASSERT_EQ(strcmp(status_row_state(out, p1), steps[i].s1), 0);
		ASSERT_EQ(strcmp(status_row_state(out, p2), steps[i].s2), 0);
		ASSERT_EQ(sh("%s %s/memdedup status --json", env, b), 0);
		json_t *st = json_loads(slurp("out"), 0, &je);
		ASSERT(st);
		ASSERT_EQ(agent_flag(st, p1, "paused"), steps[i].paused1);
		ASSERT_EQ(agent_flag(st, p1, "unmerged"), steps[i].unmerged1);
		ASSERT_EQ(agent_flag(st, p2, "paused"), steps[i].paused2);
		ASSERT_EQ(agent_flag(st, p2, "unmerged"), steps[i].unmerged2);
		/* Its part of the rate, as memdedupd's record says it. */
		json_t *part = json_object_get(listed(st, p1), "rate_part");
		json_t *rec = td_find(json_object_get(json_object_get(st, "daemon"), "agents"), "pid", p1);
		ASSERT(json_is_real(part) && json_real_value(part) > 0 && json_real_value(part) <= 1);
		ASSERT(rec && json_real_value(json_object_get(rec, "rate_part")) == json_real_value(part));
		json_decref(st);
	}
	/* An agent that stopped changing guest RAM for good (io_unseen, in
	 * every counter at 1) is not scanning, whatever memdedupd holds. */
	char path[512], name[64];
	snprintf(name, sizeof(name), "agent-%d.stats", (int)p1);
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)p1, md__proc_start_time(p1), "vmm", 1);
	ASSERT_EQ(sh("%s %s/memdedup status", env, b), 0);
	ASSERT_EQ(strcmp(status_row_state(slurp("out"), p1), "stopped"), 0);
	/* Not asked (--agents): memdedupd's word is not there. The agent's
	 * own is (p1's), else none (p2's file, of an agent older than its
	 * scan_state). */
	ASSERT_EQ(sh("%s %s/memdedup status --agents", env, b), 0);
	ASSERT_EQ(strcmp(status_row_state(slurp("out"), p1), "stopped"), 0);
	ASSERT_EQ(strcmp(status_row_state(slurp("out"), p2), "-"), 0);
	ASSERT(!strstr(slurp("out"), "memdedupd:"));	/* not asked: not "not running" */
	ASSERT_EQ(sh("%s %s/memdedup status --agents --json", env, b), 0);
	json_t *st = json_loads(slurp("out"), 0, &je);
	ASSERT(st);
	ASSERT(!json_object_get(st, "daemon"));	/* not asked: no key, not null */
	ASSERT_EQ(agent_flag(st, p1, "paused"), -1);
	ASSERT_EQ(agent_flag(st, p2, "unmerged"), -1);
	ASSERT(json_is_null(json_object_get(listed(st, p1), "rate_part")));
	json_decref(st);
	close(stop[1]);
	int ws;
	ASSERT(waitpid(p1, &ws, 0) == p1 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	ASSERT(waitpid(p2, &ws, 0) == p2 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	close(stop[0]);
	td_stop(&t);
	return 0;
}

/* An agent that does not say its state, and memdedupd's record of it
 * without "paused" (a memdedupd older than that field): STATE is -, not
 * "scanning"; a record with it is shown. */
TEST_IMPL(cli_status_old_daemon_state_unknown)
{
	char path[512], name[64], sock[400], doc[256];
	snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
	make_rd(path, sizeof(path), name);
	write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "vmm", 1);
	set_counter(path, MD_CTR_IO_UNSEEN, 0);
	set_counter(path, MD_CTR_SCAN_STATE, MD_SCAN_STATE_NONE);
	snprintf(sock, sizeof(sock), "%s/doc.sock", test_dir());
	static const char *const records[2] = { "", ",\"paused\":true,\"unmerged\":false" };
	static const char *const want[2] = { "-", "paused" };
	for (int i = 0; i < 2; i++) {
		snprintf(doc, sizeof(doc), "{\"daemon\":{},\"domains\":[],\"agents\":[{\"pid\":%d%s}]}",
			 (int)getpid(), records[i]);
		pid_t kid = doc_server(sock, doc, 1);
		int code = sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup status", test_dir(), sock,
			      build_dir());
		kill(kid, SIGKILL);
		waitpid(kid, NULL, 0);
		ASSERT_EQ(code, 0);
		ASSERT_EQ(strcmp(status_row_state(slurp("out"), getpid()), want[i]), 0);
	}
	return 0;
}

/* A child that is an agent of t's memdedupd and, when the first CONTROL
 * comes, exits without answering it (stop NULL), or hangs up without
 * answering and lives on until stop's write end closes, its statistics
 * file saying it scans, held as an agent's. Its pid. */
static pid_t unanswering_agent(const struct tdaemon *t, int *stop)
{
	int ready[2];
	char x = 0;
	ASSERT(pipe(ready) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__client *c;
		struct md__msg_welcome w;
		struct md__msg_control ctl;
		int fd;
		if (stop) {
			char path[512], name[64];
			close(stop[1]);
			snprintf(name, sizeof(name), "agent-%d.stats", (int)getpid());
			make_rd(path, sizeof(path), name);
			write_stats(path, (uint32_t)getpid(), md__proc_start_time(getpid()), "qemu", 0);
			set_counter(path, MD_CTR_SCAN_STATE, MD_SCAN_STATE_SCANNING);
		}
		if (md__client_open(&c, t->sock, NULL, 0, &w, &fd) != 0)
			_exit(100);
		if (write(ready[1], &x, 1) != 1)
			_exit(100);
		for (;;) {
			struct pollfd p = { md__client_fd(c), POLLIN, 0 };
			if (poll(&p, 1, 30000) <= 0)
				_exit(101);
			if (md__client_next_control(c, &ctl) == 0)
				break;
			if (!md__client_alive(c))
				_exit(102);
		}
		if (!stop)
			_exit(0);
		md__client_free(c);
		_exit(read(stop[0], &x, 1) == 0 ? 0 : 103);
	}
	close(ready[1]);
	ASSERT(read(ready[0], &x, 1) == 1);
	close(ready[0]);
	return kid;
}

/* A SET for all agents whose first pair an agent did not answer, gone
 * before it could (memdedupd says ESRCH, "went away"), still sends the
 * pairs after it: only an ESRCH for --pid (no such agent) is the same for
 * every pair. The command exits 1 for the pair that failed. */
TEST_IMPL(cli_set_goes_on_after_agent_went_away)
{
	struct tdaemon t;
	td_start(&t, 16);
	pid_t p = unanswering_agent(&t, NULL);
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=7 order=random", t.sock, build_dir()), 1);
	char want[128];
	snprintf(want, sizeof(want), "pid %d went away", (int)p);
	ASSERT(strstr(slurp("err"), want));
	int ws;
	ASSERT(waitpid(p, &ws, 0) == p && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	json_t *js = td_status(&t);
	json_t *tun = json_object_get(json_object_get(js, "daemon"), "tunables");
	ASSERT_EQ(td_int(tun, "pages_to_scan"), 7);
	ASSERT(json_string_value(json_object_get(tun, "order")));
	ASSERT_EQ(strcmp(json_string_value(json_object_get(tun, "order")), "random"), 0);
	json_decref(js);
	td_stop(&t);
	return 0;
}

/* An agent that lost its connection before it answered (memdedupd says
 * ESRCH, "went away") is not one memdedupd never knew: the CLI said it
 * "scans within its process" from its stats file and hid the daemon's
 * answer (review). */
TEST_IMPL(cli_control_agent_hung_up_said_as_daemon_says)
{
	struct tdaemon t;
	int stop[2];
	char want[64];
	td_start(&t, 16);
	ASSERT(pipe(stop) == 0);
	pid_t p = unanswering_agent(&t, stop);
	ASSERT_EQ(sh("MEMDEDUP_RUN_DIR=%s/rd MEMDEDUP_SOCKET=%s %s/memdedup pause --pid %d", test_dir(), t.sock,
		     build_dir(), (int)p), 1);
	const char *err = slurp("err");
	snprintf(want, sizeof(want), "pid %d went away", (int)p);
	if (!strstr(err, want))
		fprintf(stderr, "memdedup pause said: %s\n", err);
	ASSERT(strstr(err, want));
	ASSERT(!strstr(err, "scans within its process"));
	close(stop[1]);
	int ws;
	ASSERT(waitpid(p, &ws, 0) == p && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	close(stop[0]);
	td_stop(&t);
	return 0;
}

/* An agent's refusal is said with the command's name once: the daemon's
 * text starts with what failed ("unmerge: pid P: ..."), which the CLI
 * printed after its own "memdedup unmerge: ". A SET's pair is kept: it
 * says which of the pairs failed. */
TEST_IMPL(cli_refusal_names_command_once)
{
	struct tdaemon t;
	int stop[2];
	const char *b = build_dir();
	td_start(&t, 16);
	ASSERT(pipe(stop) == 0);
	pid_t p = refusing_agent(&t, stop, 1u << MD_CTL_UNMERGE | 1u << MD_CTL_SET);
	char want[256];
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup unmerge --pid %d", t.sock, b, (int)p), 1);
	snprintf(want, sizeof(want), "memdedup unmerge: pid %d: not enough memory for the copies "
		 "(done by 0 of 1 agent)\n", (int)p);
	ASSERT_EQ(strcmp(slurp("err"), want), 0);
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup unmerge", t.sock, b), 1);
	ASSERT_EQ(strcmp(slurp("err"), want), 0);
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set --pid %d pages_to_scan=7", t.sock, b, (int)p), 1);
	snprintf(want, sizeof(want), "memdedup set: pages_to_scan=7: pid %d: not enough memory", (int)p);
	ASSERT(strncmp(slurp("err"), want, strlen(want)) == 0);
	close(stop[1]);
	int ws;
	ASSERT(waitpid(p, &ws, 0) == p && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	close(stop[0]);
	td_stop(&t);
	return 0;
}

/* With no daemon, the control commands say what starts one: `memdedup run
 * --scan` (a VM run without --scan never uses memdedupd). */
TEST_IMPL(cli_control_no_daemon_names_scan)
{
	const char *b = build_dir();
	static const char *const cmds[] = { "pause", "resume", "unmerge", "set pages_to_scan=5" };
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup %s", test_dir(), b, cmds[i]), 1);
		ASSERT(strstr(slurp("err"), "not running"));
		ASSERT(strstr(slurp("err"), "`memdedup run --scan`"));
		ASSERT_EQ(sh("%s/memdedup %.*s --help", b, (int)strcspn(cmds[i], " "), cmds[i]), 0);
		ASSERT(strstr(slurp("out"), "`memdedup run --scan` starts it"));
	}
	return 0;
}

/* A --pid the process ids cannot hold is wrong usage (2), not cut to
 * another pid (4294967297 was pid 1, 2147483648 a negative one) nor read
 * past a sign or a space strtol takes. Checked before the daemon is
 * looked for. And what follows "--" is no option, help included. */
TEST_IMPL(cli_control_pid_out_of_range)
{
	const char *b = build_dir();
	static const char *const bad[] = { "2147483648", "4294967297", "+5", "' 5'", "5x", "0" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup pause --pid %s", test_dir(), b, bad[i]), 2);
		ASSERT(strstr(slurp("err"), "invalid pid"));
		ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup set --pid=%s pages_to_scan=5", test_dir(), b,
			     bad[i]), 2);
		ASSERT(strstr(slurp("err"), "invalid pid"));
	}
	/* The largest is taken (no daemon here: 1, said so). */
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup resume --pid 2147483647", test_dir(), b), 1);
	ASSERT(strstr(slurp("err"), "not running"));
	/* After "--" every word is a pair, -h and --help too: not help. */
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup set -- --help", test_dir(), b), 2);
	ASSERT(strstr(slurp("err"), "expected KEY=VALUE"));
	ASSERT(!strstr(slurp("out"), "usage:"));
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s/none %s/memdedup pause -- -h", test_dir(), b), 2);
	ASSERT(strstr(slurp("err"), "unknown argument '-h'"));
	return 0;
}

/* A socket memdedupd left behind (it was killed: nothing listens) is a
 * daemon not running, said with what starts one, as no socket at all is:
 * not "cannot reach the daemon: Connection refused". */
TEST_IMPL(cli_control_stale_socket_not_running)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/stale.sock", test_dir());
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(fd >= 0);
	ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);	/* never listened: a connect is refused */
	static const char *const cmds[] = { "pause", "resume", "unmerge", "set pages_to_scan=5" };
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup %s", sa.sun_path, build_dir(), cmds[i]), 1);
		ASSERT(strstr(slurp("err"), "the daemon is not running"));
		ASSERT(strstr(slurp("err"), "`memdedup run --scan`"));
	}
	return 0;
}

/* A value of MD_VALUE_MAX bytes, the most a CONTROL holds, is taken and
 * sent whole (leading zeroes: still a number in range); one byte more is
 * wrong usage. */
TEST_IMPL(cli_set_longest_value_taken)
{
	struct tdaemon t;
	const char *b = build_dir();
	char value[MD_VALUE_MAX + 2];
	memset(value, '0', MD_VALUE_MAX);
	memcpy(value + MD_VALUE_MAX - 3, "321", 3);
	value[MD_VALUE_MAX] = '\0';
	td_start(&t, 16);
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=%s", t.sock, b, value), 0);
	json_t *js = td_status(&t);
	json_t *tun = json_object_get(json_object_get(js, "daemon"), "tunables");
	ASSERT_EQ(td_int(tun, "pages_to_scan"), 321);
	json_decref(js);
	ASSERT_EQ(sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=0%s", t.sock, b, value), 2);
	ASSERT(strstr(slurp("err"), "a value 64"));
	td_stop(&t);
	return 0;
}

/* A caller's LD_PRELOAD of any length follows the agent's whole: cut
 * short, its last library was one ld.so could not find. */
TEST_IMPL(cli_run_long_ld_preload)
{
	static char old[4096];
	size_t n = 0;
	for (int i = 0; i < 300; i++)
		n += (size_t)snprintf(old + n, sizeof(old) - n, "libm.so.6:");
	snprintf(old + n, sizeof(old) - n, "libz.so.1");
	ASSERT(strlen(old) == 3009);
	char *big = malloc(3 * sizeof(old));
	ASSERT(big);
	/* 9,029 bytes, past the 8,320 the buffer once held. */
	snprintf(big, 3 * sizeof(old), "%s:%s:%s", old, old, old);
	ASSERT_EQ(setenv("MD_OLD", big, 1), 0);
	ASSERT_EQ(setenv("LD_PRELOAD", big, 1), 0);
	int code = sh("%s/memdedup run -- sh -c 'test \"${LD_PRELOAD#*:}\" = \"$MD_OLD\"'", run_build_dir());
	unsetenv("LD_PRELOAD");
	unsetenv("MD_OLD");
	free(big);
	ASSERT_EQ(code, 0);
	ASSERT(!strstr(slurp("err"), "cannot be preloaded"));
	/* An empty LD_PRELOAD adds no empty entry after ours. */
	ASSERT_EQ(sh("LD_PRELOAD= %s/memdedup run -- sh -c 'test \"${LD_PRELOAD##*/}\" = libmemdedup-preload.so'",
		     run_build_dir()), 0);
	return 0;
}

/* A `memdedup` whose path readlink(/proc/self/exe) cannot hold whole
 * looks for nothing beside a path cut short: here, one cut in the name of
 * its directory, whose parent holds a library it must not take. */
TEST_IMPL(cli_run_exe_path_cut_not_used)
{
	char top[512], name[256], b[PATH_MAX];
	ASSERT(realpath(run_build_dir(), b));
	memset(name, 'd', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	snprintf(top, sizeof(top), "%s/x", test_dir());
	/* Directories of 199 bytes, then one of 20 to 219, down to a path of
	 * 4,040 bytes: the 4,031 bytes read end inside the last one's name. */
	int len = (int)strlen(top), depth = 0;
	while (4040 - len - 200 - 1 >= 20)
		len += 200, depth++;
	int last = 4040 - len - 1;
	static char cmd[3 * PATH_MAX];
	snprintf(cmd, sizeof(cmd),
		 "mkdir %s && cd %s && i=0 && while [ $i -lt %d ]; do mkdir %.199s && cd %.199s && i=$((i+1)); done && "
		 "cp %s/libmemdedup-preload.so . && mkdir %.*s && cp %s/memdedup %.*s/",
		 top, top, depth, name, name, b, last, name, b, last, name);
	ASSERT_EQ(sh("%s", cmd), 0);
	snprintf(cmd, sizeof(cmd), "cd %s && i=0 && while [ $i -lt %d ]; do cd %.199s && i=$((i+1)); done && "
		 "cd %.*s && test \"$(pwd | wc -c)\" = 4041 && env -u MEMDEDUP_PRELOAD ./memdedup run -- true",
		 top, depth, name, last, name);
	ASSERT_EQ(sh("%s", cmd), 2);
	ASSERT(strstr(slurp("err"), "cannot find libmemdedup-preload.so"));
	return 0;
}

/* An ELF command whose dynamic loader is not there (a foreign or musl
 * build): the kernel's exec would fail ENOENT, which execvp and the shell
 * say as "No such file or directory" of the command, after a daemon was
 * started for it. Found first: 127, the loader named, no daemon; also when
 * saying so fails (stderr a full device). */
TEST_IMPL(cli_run_missing_loader_no_daemon)
{
	char path[512];
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	snprintf(path, sizeof(path), "%s/noloader", test_dir());
	ASSERT_EQ(sh("cp /bin/true %s", path), 0);
	int fd = open(path, O_RDWR | O_CLOEXEC), found = 0;
	ASSERT(fd >= 0);
	ASSERT(pread(fd, &eh, sizeof(eh), 0) == (ssize_t)sizeof(eh));
	if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64)
		SKIP("/bin/true is not a 64-bit ELF file");
	for (int i = 0; i < eh.e_phnum && !found; i++) {
		ASSERT(pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize)) ==
		       (ssize_t)sizeof(ph));
		if (ph.p_type == PT_INTERP && ph.p_filesz >= 2) {
			char x = 'X';	/* "/lib64/ld-linux-x86-64.so.X" */
			ASSERT(pwrite(fd, &x, 1, (off_t)(ph.p_offset + ph.p_filesz - 2)) == 1);
			found = 1;
		}
	}
	close(fd);
	if (!found)
		SKIP("/bin/true has no dynamic loader");
	char dir[450], sock[500], want[600];
	snprintf(dir, sizeof(dir), "%s/run", test_dir());
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	int c1 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s", dir, run_build_dir(), path);
	int alive = md__daemon_alive(sock), pid = kill_daemon_of(dir);
	ASSERT_EQ(c1, 127);
	ASSERT(!alive && !pid);
	snprintf(want, sizeof(want), "cannot run '%s': its ELF interpreter (dynamic loader) /", path);
	ASSERT(strstr(slurp("err"), want));
	ASSERT(strstr(slurp("err"), ".X is missing"));
	ASSERT_EQ(sh("%s/memdedup run -- %s 2>/dev/full", run_build_dir(), path), 127);
	/* The same loader missing behind a script's #! line. */
	char script[600];
	snprintf(script, sizeof(script), "%s/script", test_dir());
	FILE *f = fopen(script, "w");
	ASSERT(f && fprintf(f, "#!%s\n", path) > 0 && fclose(f) == 0);
	ASSERT(chmod(script, 0755) == 0);
	ASSERT_EQ(sh("%s/memdedup run -- %s", run_build_dir(), script), 127);
	ASSERT(strstr(slurp("err"), "its interpreter's dynamic loader /"));
	ASSERT(strstr(slurp("err"), ".X is missing"));
	/* Another machine's program names a loader binfmt_misc's emulator
	 * finds in a root of its own: not ours to look for. */
	fd = open(path, O_RDWR | O_CLOEXEC);
	ASSERT(fd >= 0);
	uint16_t machine = EM_AARCH64 == eh.e_machine ? EM_X86_64 : EM_AARCH64;
	ASSERT(pwrite(fd, &machine, sizeof(machine), offsetof(Elf64_Ehdr, e_machine)) == sizeof(machine));
	close(fd);
	ASSERT(sh("%s/memdedup run -- %s", run_build_dir(), path) != 127 ||
	       !strstr(slurp("err"), "is missing"));
	/* A "#!" naming nothing is no failure: execvp runs it with sh. */
	f = fopen(script, "w");
	ASSERT(f && fputs("#!\necho ran-by-sh\n", f) >= 0 && fclose(f) == 0);
	ASSERT_EQ(sh("%s/memdedup run -- %s", run_build_dir(), script), 0);
	ASSERT(strstr(slurp("out"), "ran-by-sh"));
	return 0;
}

/* The kernel takes an interpreter's path of up to PATH_MAX bytes, its NUL
 * included: one that long, missing, is said missing before anything
 * starts; there, it runs; a byte longer the kernel refuses (ENOEXEC). It
 * takes the first PT_INTERP (a second one malformed is not looked at), and
 * a loader whose soname is empty (none to tell its kind by) is left to
 * run. The loader here is a shared object that exits 0. */
TEST_IMPL(cli_run_interp_checked_as_kernel_does)
{
#ifndef __x86_64__
	SKIP("the programs written here are x86-64's");
#endif
	const char *d = test_dir(), *rb = run_build_dir();
	char path[4][450], loader[450], longest[PATH_MAX + 1], want[600];
	snprintf(loader, sizeof(loader), "%s/ld", d);
	write_exit0(loader, &(struct exit0_extra){ .type = ET_DYN, .soname_empty = 1 });
	/* A path of PATH_MAX - 1 bytes to it, components of 200 at most. */
	snprintf(longest, sizeof(longest), "%s/long", d);
	while (strlen(longest) < PATH_MAX - 256)
		snprintf(longest + strlen(longest), sizeof(longest) - strlen(longest), "/%0200d", 0);
	size_t k = strlen(longest);
	memset(longest + k, 'x', PATH_MAX - 1 - k);
	longest[PATH_MAX - 1] = '\0';
	longest[k] = '/';
	for (char *slash = longest + strlen(d) + 1; (slash = strchr(slash, '/')); *slash++ = '/') {
		*slash = '\0';
		ASSERT(mkdir(longest, 0700) == 0);
	}
	ASSERT(strlen(longest) == PATH_MAX - 1 && symlink(loader, longest) == 0);

	for (int i = 0; i < 2; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/interp%d", d, PATH_MAX + i);
		write_exit0(path[i], &(struct exit0_extra){ .interp = PATH_MAX + (size_t)i });
	}
	snprintf(path[2], sizeof(path[2]), "%s/interp-there", d);
	write_exit0(path[2], &(struct exit0_extra){ .interp_path = longest });
	snprintf(path[3], sizeof(path[3]), "%s/interp-second-bad", d);
	write_exit0(path[3], &(struct exit0_extra){ .interp_path = loader, .interp_second_bad = 1 });
	/* The premises: ENOENT, ENOEXEC, run. */
	ASSERT_EQ(sh("%s", path[0]), 127);
	ASSERT_EQ(sh("%s", path[1]), 126);
	ASSERT_EQ(sh("%s", path[2]), 0);
	ASSERT_EQ(sh("%s", path[3]), 0);

	ASSERT_EQ(sh("%s/memdedup run -- %s", rb, path[0]), 127);
	snprintf(want, sizeof(want), "cannot run '%s': its ELF interpreter (dynamic loader) /nonexistent-memdedup/",
		 path[0]);
	ASSERT(strstr(slurp("err"), want) && strstr(slurp("err"), " is missing\n"));
	ASSERT_EQ(sh("%s/memdedup run -- %s", rb, path[1]), 126);
	snprintf(want, sizeof(want), "memdedup run: cannot run '%s': cannot execute binary file: Exec format error "
		 "(an ELF file cut short or malformed)\n", path[1]);
	ASSERT_EQ(strcmp(slurp("err"), want), 0);
	for (int i = 2; i < 4; i++) {
		int code = sh("%s/memdedup run -- %s", rb, path[i]);
		if (code != 0)
			fprintf(stderr, "%s: exit %d: %s\n", path[i], code, slurp("err"));
		ASSERT_EQ(code, 0);
	}
	return 0;
}

/* The copy at path of a dynamic program with its PT_INTERP's path made
 * interp (NUL-padded within it; no longer than the one there); before, it
 * was old (size bytes): 1, or 0 if it has none. */
static int patch_interp(const char *path, const char *interp, char *old, size_t size)
{
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	char buf[256];
	int fd = open(path, O_RDWR | O_CLOEXEC), found = 0;
	ASSERT(fd >= 0 && pread(fd, &eh, sizeof(eh), 0) == (ssize_t)sizeof(eh));
	for (int i = 0; eh.e_ident[EI_CLASS] == ELFCLASS64 && i < eh.e_phnum && !found; i++) {
		ASSERT(pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize)) ==
		       (ssize_t)sizeof(ph));
		if (ph.p_type != PT_INTERP || ph.p_filesz > sizeof(buf) || strlen(interp) >= ph.p_filesz)
			continue;
		ASSERT(pread(fd, buf, ph.p_filesz, (off_t)ph.p_offset) == (ssize_t)ph.p_filesz);
		snprintf(old, size, "%.*s", (int)ph.p_filesz, buf);
		memset(buf, 0, sizeof(buf));
		memcpy(buf, interp, strlen(interp));
		ASSERT(pwrite(fd, buf, ph.p_filesz, (off_t)ph.p_offset) == (ssize_t)ph.p_filesz);
		found = 1;
	}
	close(fd);
	return found;
}

/* A program whose dynamic loader is of another kind than the one the
 * agent is built for (musl's, soname libc.so or none, for an agent of glibc's)
 * fails to load the agent (musl takes its missing symbols for fatal) and
 * exits 127 before its main, after memdedupd was started for it. Refused
 * (126, the loader named) before anything is started, as behind a
 * script's #! line; the kinds are told by the loaders' sonames, so a
 * program whose loader's path is a symbolic link to memdedup's own loader
 * runs, with the agent. Here the other kind is glibc's libc.so.6 given
 * as a loader (musl is not installed), and a library with no soname (as
 * Debian's musl has none). */
TEST_IMPL(cli_run_other_loader_refused)
{
	char tmp[] = "/tmp/mdld.XXXXXX", link_other[64], link_none[64], link_ours[64], libc[PATH_MAX] = "";
	char prog[512], prog_none[512], sh_copy[512], script[512], ours[256], dir[450], sock[500], want[1024];
	char line[PATH_MAX + 128], stub[PATH_MAX];
	const char *d = test_dir();
	/* glibc's libc.so.6, as this process maps it. */
	FILE *f = fopen("/proc/self/maps", "r");
	ASSERT(f);
	while (!libc[0] && fgets(line, sizeof(line), f)) {
		char *p = strchr(line, '/');
		line[strcspn(line, "\n")] = '\0';
		if (p && strlen(p) > 10 && strcmp(p + strlen(p) - 10, "/libc.so.6") == 0)
			snprintf(libc, sizeof(libc), "%s", p);
	}
	fclose(f);
	if (!libc[0])
		SKIP("no libc.so.6 mapped here (not glibc)");
	snprintf(prog, sizeof(prog), "%s/other", d);
	snprintf(prog_none, sizeof(prog_none), "%s/none", d);
	snprintf(sh_copy, sizeof(sh_copy), "%s/sh", d);
	ASSERT_EQ(sh("cp /bin/true %s && cp /bin/true %s && cp /bin/sh %s", prog, prog_none, sh_copy), 0);
	snprintf(line, sizeof(line), "%s/libdeepbind-stub.so", build_dir());
	ASSERT(realpath(line, stub));	/* no soname, as Debian's musl */
	/* Short paths, to fit in place of /lib64/ld-linux-x86-64.so.2. */
	ASSERT(mkdtemp(tmp));
	snprintf(link_other, sizeof(link_other), "%s/lc", tmp);
	snprintf(link_none, sizeof(link_none), "%s/ln", tmp);
	snprintf(link_ours, sizeof(link_ours), "%s/ld", tmp);
	int patched = patch_interp(prog, link_other, ours, sizeof(ours)) &&
		      patch_interp(prog_none, link_none, ours, sizeof(ours)) &&
		      patch_interp(sh_copy, link_ours, ours, sizeof(ours));
	int linked = patched && symlink(libc, link_other) == 0 && symlink(stub, link_none) == 0 &&
		     symlink(ours, link_ours) == 0;
	snprintf(script, sizeof(script), "%s/script", d);
	snprintf(line, sizeof(line), "#!%s\n", prog);
	write_exec(script, line, 0755, 0);
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	int c1 = -1, c2 = -1, c3 = -1, c4 = -1, alive = 0, pid = 0;
	char err1[1024] = "", err2[1024] = "", err4[1024] = "";
	if (linked) {
		c1 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s", dir, build_dir(), prog);
		alive = md__daemon_alive(sock);
		pid = kill_daemon_of(dir);
		snprintf(err1, sizeof(err1), "%s", slurp("err"));
		c2 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run -- %s", dir, build_dir(), script);
		snprintf(err2, sizeof(err2), "%s", slurp("err"));
		c3 = sh("%s/memdedup run -- %s " AGENT_IN_SH, run_build_dir(), sh_copy);
		c4 = sh("%s/memdedup run -- %s", build_dir(), prog_none);
		snprintf(err4, sizeof(err4), "%s", slurp("err"));
	}
	unlink(link_other);
	unlink(link_none);
	unlink(link_ours);
	rmdir(tmp);
	if (!patched)
		SKIP("/bin/true or /bin/sh has no PT_INTERP of room for %s", link_other);
	ASSERT(linked);
	ASSERT_EQ(c1, 126);
	ASSERT(!alive && !pid);
	snprintf(want, sizeof(want), "memdedup run: cannot run '%s' with the agent: its dynamic loader %s (soname "
		 "libc.so.6) is not of the kind the memdedup agent is built for (soname ", prog, link_other);
	if (!strstr(err1, want))
		fprintf(stderr, "said: %s", err1);
	ASSERT(strstr(err1, want));
	ASSERT_EQ(c2, 126);
	snprintf(want, sizeof(want), "its interpreter %s's dynamic loader %s (soname libc.so.6)", prog, link_other);
	ASSERT(strstr(err2, want));
	ASSERT_EQ(c3, 0);	/* the agent in it */
	ASSERT_EQ(c4, 126);
	snprintf(want, sizeof(want), "its dynamic loader %s (no soname) is not of the kind", link_none);
	ASSERT(strstr(err4, want));
	return 0;
}

/* Past memdedupd's limit of STATUS bytes for a user other than root, the
 * daemon's refusal is said as it is (try again in a second), not as a
 * protocol error. */
TEST_IMPL(cli_status_rate_limited)
{
	if (geteuid() != 0)
		SKIP("needs root: status runs as another user");
	struct tdaemon t;
	setenv("MEMDEDUP_STATUS_KB_PER_S", "1", 1);	/* one status of 4 KiB, then none for seconds */
	td_start(&t, 16);
	unsetenv("MEMDEDUP_STATUS_KB_PER_S");
	ASSERT_EQ(sh("cp %s/memdedup %s/", run_build_dir(), test_dir()), 0);
	int code = sh_as(65534, "for i in 1 2 3; do MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status "
			 ">/dev/null 2>&1; done; MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status",
			 test_dir(), t.sock, test_dir(), test_dir(), t.sock, test_dir());
	td_stop(&t);
	ASSERT_EQ(code, 1);
	ASSERT(strstr(slurp("err"), "too many status requests of this user: try again in a second"));
	ASSERT(!strstr(slurp("err"), "Protocol error"));
	ASSERT(strstr(slurp("out"), "memdedupd: refused (see the error)"));
	return 0;
}

/* A run directory whose socket path cannot be a Unix address (107 bytes)
 * is said so, not a failure; past 255 bytes too. */
TEST_IMPL(cli_status_socket_path_too_long)
{
	char dir[1024];
	const int lens[] = { 150, 300 };
	int n = snprintf(dir, sizeof(dir), "%s/sd", test_dir());
	ASSERT(mkdir(dir, 0700) == 0);
	for (int k = 0; k < 2; k++) {
		while (n < lens[k]) {
			n += snprintf(dir + n, sizeof(dir) - (size_t)n, "/%s", "d123456789012345678901234567890123456789");
			ASSERT(mkdir(dir, 0700) == 0);
		}
		ASSERT_EQ(sh("env -u MEMDEDUP_SOCKET MEMDEDUP_RUN_DIR=%s %s/memdedup status", dir, build_dir()), 0);
		ASSERT(strstr(slurp("out"), "memdedupd: not asked: no usable socket path in the run directory"));
		ASSERT(!strstr(slurp("err"), "did not answer"));
		/* MEMDEDUP_SOCKET empty is unset: not the one blamed. */
		ASSERT_EQ(sh("MEMDEDUP_SOCKET= MEMDEDUP_RUN_DIR=%s %s/memdedup status", dir, build_dir()), 0);
		ASSERT(strstr(slurp("out"), "memdedupd: not asked: no usable socket path in the run directory"));
		ASSERT_EQ(sh("env -u MEMDEDUP_SOCKET MEMDEDUP_RUN_DIR=%s %s/memdedup status --json", dir, build_dir()), 0);
		ASSERT(strstr(slurp("out"), "\"daemon\": null"));
	}
	return 0;
}

/* A MEMDEDUP_SOCKET too long for a Unix address is said to be unusable,
 * while a daemon runs: status said "not running", which it cannot know. */
TEST_IMPL(cli_status_socket_env_too_long)
{
	struct tdaemon t;
	char sock[600];
	td_start(&t, 16);
	snprintf(sock, sizeof(sock), "%s/%0200d.sock", t.dir, 0);
	int code = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status", t.dir, sock, build_dir());
	td_stop(&t);
	ASSERT_EQ(code, 0);
	ASSERT(strstr(slurp("out"), "memdedupd: not asked: MEMDEDUP_SOCKET cannot be used as a socket path "
			       "(File name too long)"));
	ASSERT(!strstr(slurp("out"), "not running"));
	return 0;
}

/* memdedupd running with no domain is said so, not left out; in words
 * that hold after the last domain closed too (it said "yet"). */
TEST_IMPL(cli_status_daemon_no_domains)
{
	struct tdaemon t;
	td_start(&t, 16);
	int code = sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status", t.dir, t.sock, build_dir());
	td_stop(&t);
	ASSERT_EQ(code, 0);
	ASSERT(strstr(slurp("out"), "memdedupd: running, with no domains now"));
	ASSERT(strstr(slurp("out"), "\ntotal    agents "));	/* none: not "1 agent" */
	return 0;
}

/* `status` and `pause --pid` only read: as a user without a run directory
 * (no XDG_RUNTIME_DIR), they do not make /tmp/memdedup-<uid>. In a mount
 * namespace of the test's own, with tmpfs on /run and /tmp: the host's
 * are left alone. */
TEST_IMPL(cli_read_only_commands_make_no_run_dir)
{
	if (geteuid() != 0)
		SKIP("needs root: the commands run as another user");
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		SKIP("cannot make a mount namespace here");
	char bin[512];
	snprintf(bin, sizeof(bin), "%s/memdedup", run_build_dir());
	int exe = open(bin, O_RDONLY | O_CLOEXEC);
	ASSERT(exe >= 0);
	ASSERT_EQ(mount("none", "/run", "tmpfs", 0, "mode=0755"), 0);
	ASSERT_EQ(mount("none", "/tmp", "tmpfs", 0, "mode=1777"), 0);
	/* The test's directory again, in the new /tmp, with a copy nobody may run. */
	ASSERT_EQ(mkdir(test_dir(), 0755), 0);
	snprintf(bin, sizeof(bin), "%s/memdedup", test_dir());
	int copy = open(bin, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
	ASSERT(copy >= 0);
	char buf[65536];
	ssize_t r;
	while ((r = read(exe, buf, sizeof(buf))) > 0)
		ASSERT(write(copy, buf, (size_t)r) == r);
	ASSERT(r == 0);
	close(exe);
	close(copy);
	const char *own = "/tmp/memdedup-65534", *clean = "env -u MEMDEDUP_RUN_DIR -u XDG_RUNTIME_DIR -u MEMDEDUP_SOCKET";
	struct stat st;
	ASSERT_EQ(sh_as(65534, "%s %s status", clean, bin), 0);
	ASSERT(strstr(slurp("out"), "memdedupd: not running"));
	ASSERT(lstat(own, &st) != 0 && errno == ENOENT);
	ASSERT_EQ(sh_as(65534, "%s %s status --json", clean, bin), 0);
	ASSERT(lstat(own, &st) != 0 && errno == ENOENT);
	/* pause --pid of no agent memdedupd knows looks for its file. */
	struct tdaemon t;
	td_start(&t, 16);
	pid_t dead = dead_pid();
	int code = sh_as(65534, "env -u MEMDEDUP_RUN_DIR -u XDG_RUNTIME_DIR MEMDEDUP_SOCKET=%s %s pause --pid %d",
			 t.sock, bin, (int)dead);
	td_stop(&t);
	ASSERT_EQ(code, 1);
	ASSERT(strstr(slurp("err"), "no agent with pid"));
	ASSERT(lstat(own, &st) != 0 && errno == ENOENT);
	return 0;
}

TEST_IMPL(cli_run_numbers_strict)
{
	/* The agent's parser (digits only): what `run` passes on, the agent
	 * takes; strtol once let ' 32' and '+32' through, which the agent
	 * then refused. */
	const char *bad[] = { "' 32'", "+32", "32x", "0x20", "-0", "' '", "99999999999999999999" };
	char cmd[256];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(cmd, sizeof(cmd), "build/memdedup run --scan --domain=private --pages-to-scan=%s -- true 2>/dev/null", bad[i]);
		ASSERT_EQ(run(cmd), 2);
	}
	ASSERT_EQ(run("build/memdedup run --scan --domain=private --sleep-ms=+5 -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --scan --domain=private --cpu-percent=' 50' -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=+4 -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --scan --domain=private --pages-to-scan=+32 -- true 2>&1 | "
		      "grep -q \"pages-to-scan takes a number from 1 to 100000, not '+32'\""), 0);
	/* The options win over what the caller's environment has. */
	ASSERT_EQ(run("MEMDEDUP_PAGES_TO_SCAN=7 MEMDEDUP_SLEEP_MS=7 MEMDEDUP_CPU_PERCENT=7 "
		      "build/memdedup run --scan --domain=private --pages-to-scan=32 --sleep-ms=1 --cpu-percent=100 -- "
		      "sh -c 'test \"$MEMDEDUP_PAGES_TO_SCAN $MEMDEDUP_SLEEP_MS $MEMDEDUP_CPU_PERCENT\" = \"32 1 100\"'"), 0);
	/* 0 would be the API's "default" (20 ms), not no sleep: refused. */
	ASSERT_EQ(run("build/memdedup run --scan --domain=private --sleep-ms=0 -- true 2>/dev/null"), 2);
	return 0;
}

TEST_IMPL(cli_run_checks_preload)
{
	/* ld.so skips a library it cannot load with a warning, and the command
	 * runs without the agent: `run` refuses first, running nothing. */
	char dir[] = "/tmp/memdedup-cli-XXXXXX", cmd[512];
	ASSERT(mkdtemp(dir));
	/* Other shared objects too: ld.so would load the API library (or libc)
	 * without the agent's interposers, and refuse a position-independent
	 * executable with a warning; and the agent cut short at a few lengths,
	 * its headers pointing past the end. */
	char cut[4][64];
	const size_t len[4] = { 64, 300, 4096, 65536 };
	for (size_t i = 0; i < 4; i++) {
		snprintf(cut[i], sizeof(cut[i]), "%s/cut%zu.so", dir, len[i]);
		snprintf(cmd, sizeof(cmd), "head -c %zu build/libmemdedup-preload.so > %s", len[i], cut[i]);
		ASSERT_EQ(run(cmd), 0);
	}
	/* The agent itself, in directories whose names LD_PRELOAD cannot
	 * carry: ld.so would split the path there and load neither part. */
	char odd[2][256];
	const char *odd_name[2] = { "a:b", "a b" };
	for (size_t i = 0; i < 2; i++) {
		snprintf(odd[i], sizeof(odd[i]), "%s/%s/libmemdedup-preload.so", test_dir(), odd_name[i]);
		ASSERT_EQ(sh("mkdir '%s/%s' && cp build/libmemdedup-preload.so '%s'", test_dir(), odd_name[i],
			     odd[i]), 0);
	}
	/* The agent's copies built for another machine, and as an executable
	 * (ld.so skips or refuses either): only its soname is right. */
	char foreign[64], exec[64];
	snprintf(foreign, sizeof(foreign), "%s/foreign.so", dir);
	snprintf(exec, sizeof(exec), "%s/exec.so", dir);
	ASSERT_EQ(sh("cp build/libmemdedup-preload.so %s && cp build/libmemdedup-preload.so %s", foreign, exec), 0);
	make_foreign(foreign);
	uint16_t type = ET_EXEC;
	int fd = open(exec, O_WRONLY | O_CLOEXEC);
	ASSERT(fd >= 0 && pwrite(fd, &type, 2, offsetof(Elf64_Ehdr, e_type)) == 2 && close(fd) == 0);
	/* Cut inside its dynamic section, after its soname's entries. */
	char cutdyn[64];
	snprintf(cutdyn, sizeof(cutdyn), "%s/cutdyn.so", dir);
	ASSERT_EQ(sh("cp build/libmemdedup-preload.so %s", cutdyn), 0);
	fd = open(cutdyn, O_RDWR | O_CLOEXEC);
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	Elf64_Dyn dyn;
	ASSERT(fd >= 0 && pread(fd, &eh, sizeof(eh), 0) == (ssize_t)sizeof(eh));
	off_t dyn_at = -1, cut_at = -1;
	for (int i = 0; i < eh.e_phnum && dyn_at < 0; i++) {
		ASSERT(pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + (uint64_t)i * sizeof(ph))) == (ssize_t)sizeof(ph));
		dyn_at = ph.p_type == PT_DYNAMIC ? (off_t)ph.p_offset : -1;
	}
	for (int i = 0, seen = 0; dyn_at >= 0 && seen < 2; i++) {
		ASSERT(pread(fd, &dyn, sizeof(dyn), dyn_at + i * (off_t)sizeof(dyn)) == (ssize_t)sizeof(dyn));
		ASSERT(dyn.d_tag != DT_NULL);
		seen += dyn.d_tag == DT_STRTAB || dyn.d_tag == DT_SONAME;
		cut_at = dyn_at + (i + 1) * (off_t)sizeof(dyn);
	}
	ASSERT(cut_at > 0 && cut_at < (off_t)(ph.p_offset + ph.p_filesz));
	ASSERT(ftruncate(fd, cut_at) == 0 && close(fd) == 0);
	const char *bad[] = { "/etc/passwd", "/", "/nonexistent/libmemdedup-preload.so", odd[0], odd[1],
			      "build/libmemdedup.so", "/bin/true", cut[0], cut[1], cut[2], cut[3], foreign, exec,
			      cutdyn };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(cmd, sizeof(cmd), "MEMDEDUP_PRELOAD='%s' build/memdedup run -- touch %s/ran 2>/dev/null",
			 bad[i], dir);
		ASSERT_EQ(run(cmd), 2);
		snprintf(cmd, sizeof(cmd), "test -e %s/ran", dir);
		ASSERT(run(cmd) != 0);
	}
	ASSERT_EQ(run("MEMDEDUP_PRELOAD=/etc/passwd build/memdedup run -- true 2>&1 | grep -q "
		      "\"MEMDEDUP_PRELOAD='/etc/passwd' cannot be preloaded: not a shared library (no ELF header)\""), 0);
	ASSERT_EQ(sh("MEMDEDUP_PRELOAD=%s build/memdedup run -- true", exec), 2);
	ASSERT(strstr(slurp("err"), "cannot be preloaded: not a shared library (ELF type 2)"));
	ASSERT_EQ(sh("MEMDEDUP_PRELOAD=%s build/memdedup run -- true", foreign), 2);
	ASSERT(strstr(slurp("err"), "cannot be preloaded: a library for another machine"));
	ASSERT_EQ(run("MEMDEDUP_PRELOAD=build/libmemdedup.so build/memdedup run -- true 2>&1 | grep -q "
		      "'not the memdedup agent'"), 0);
	ASSERT_EQ(run("MEMDEDUP_PRELOAD=/ build/memdedup run -- true 2>&1 | grep -q 'not a regular file'"), 0);
	/* A soname the agent's only begins (its NUL made a '1': another
	 * library's, libmemdedup-preload.so1...) is not the agent's. */
	char longer[256];
	snprintf(longer, sizeof(longer), "%s/longer.so", test_dir());
	ASSERT_EQ(sh("cp build/libmemdedup-preload.so %s", longer), 0);
	int lfd = open(longer, O_RDWR | O_CLOEXEC);
	struct stat lst;
	ASSERT(lfd >= 0 && fstat(lfd, &lst) == 0);
	char *img = mmap(NULL, (size_t)lst.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, lfd, 0);
	ASSERT(img != MAP_FAILED);
	static const char soname[] = "libmemdedup-preload.so";
	char *at = memmem(img, (size_t)lst.st_size, soname, sizeof(soname));	/* with its NUL */
	ASSERT(at);
	at[sizeof(soname) - 1] = '1';
	munmap(img, (size_t)lst.st_size);
	close(lfd);
	ASSERT_EQ(sh("MEMDEDUP_PRELOAD=%s build/memdedup run -- true", longer), 2);
	ASSERT(strstr(slurp("err"), "not the memdedup agent"));
	for (size_t i = 0; i < 2; i++) {
		char want[700];
		ASSERT_EQ(sh("MEMDEDUP_PRELOAD='%s' build/memdedup run -- true", odd[i]), 2);
		snprintf(want, sizeof(want), "MEMDEDUP_PRELOAD='%s' cannot be preloaded: LD_PRELOAD cannot "
			 "carry a path with ':' or white space\n", odd[i]);
		ASSERT(strstr(slurp("err"), want));
	}
	/* A library beside memdedup is checked as well. */
	ASSERT_EQ(sh("mkdir %s/bin && cp %s/memdedup %s/bin/ && cp /etc/passwd %s/bin/libmemdedup-preload.so && "
		     "env -u MEMDEDUP_PRELOAD %s/bin/memdedup run -- touch %s/ran", dir, run_build_dir(), dir, dir,
		     dir, dir), 2);
	ASSERT(strstr(slurp("err"), "/bin/libmemdedup-preload.so cannot be preloaded: not a shared library"));
	snprintf(cmd, sizeof(cmd), "test -e %s/ran", dir);
	ASSERT(run(cmd) != 0);
	/* The real one runs the command; an empty MEMDEDUP_PRELOAD is none. */
	snprintf(cmd, sizeof(cmd), "MEMDEDUP_PRELOAD=build/libmemdedup-preload.so build/memdedup run -- touch %s/ran", dir);
	ASSERT_EQ(run(cmd), 0);
	ASSERT_EQ(run("MEMDEDUP_PRELOAD= build/memdedup run -- sh -c 'grep -q libmemdedup-preload.so /proc/$$/maps'"), 0);
	/* A bare name (ld.so would search the library path for it) and a
	 * relative path are made absolute: the agent is in the command, and
	 * in what it runs from another directory. */
	ASSERT_EQ(run("cd build && MEMDEDUP_PRELOAD=libmemdedup-preload.so ./memdedup run -- "
		      "sh -c 'grep -q libmemdedup-preload.so /proc/$$/maps' 2>/dev/null"), 0);
	ASSERT_EQ(run("MEMDEDUP_PRELOAD=build/libmemdedup-preload.so build/memdedup run -- "
		      "sh -c 'cd / && exec sh -c \"grep -q libmemdedup-preload.so /proc/\\$\\$/maps\"' 2>/dev/null"), 0);
	snprintf(cmd, sizeof(cmd), "rm -r %s", dir);
	ASSERT_EQ(run(cmd), 0);
	return 0;
}

/* A binary the kernel refuses at the exec (no ELF magic, a NUL in its
 * first line: what bash calls a binary file, exit 126) and a chain of six
 * scripts (ELOOP) are refused before memdedupd is started for them, as
 * run --help says: "nothing started in these cases, but for a 32-bit
 * binary the kernel refuses". The second names the script one too deep. */
TEST_IMPL(cli_run_binary_file_no_daemon)
{
	const char *b = build_dir(), *d = test_dir();
	char dir[400], sock[450], path[450], text[500];
	snprintf(dir, sizeof(dir), "%s/run", d);
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(sock, sizeof(sock), "%s/memdedupd.sock", dir);
	snprintf(path, sizeof(path), "%s/nul", d);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ASSERT(fd >= 0 && write(fd, "ab\0cd\n", 6) == 6 && close(fd) == 0);
	int c1 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s", dir, b, path);
	int alive1 = md__daemon_alive(sock), pid1 = kill_daemon_of(dir);
	/* s5 -> s4 -> ... -> s0 -> /bin/true: six scripts, one too many. */
	for (int i = 0; i < 6; i++) {
		snprintf(path, sizeof(path), "%s/s%d", d, i);
		if (i)
			snprintf(text, sizeof(text), "#!%s/s%d\n", d, i - 1);
		else
			snprintf(text, sizeof(text), "#!/bin/true\n");
		write_exec(path, text, 0755, 0);
	}
	int c2 = sh("MEMDEDUP_RUN_DIR=%s %s/memdedup run --scan -- %s/s5", dir, b, d);
	int alive2 = md__daemon_alive(sock), pid2 = kill_daemon_of(dir);
	fprintf(stderr, "nul: exit %d, daemon %s; 6 scripts: exit %d, daemon %s\n", c1,
		alive1 || pid1 ? "started" : "not started", c2, alive2 || pid2 ? "started" : "not started");
	ASSERT_EQ(c1, 126);
	ASSERT(!alive1 && !pid1);
	ASSERT_EQ(c2, 126);
	ASSERT(!alive2 && !pid2);
	ASSERT_EQ(sh("%s/memdedup run --scan -- %s/s5 2>&1 | grep -q 's0 is a script too, one more than the kernel'",
		     b, d), 0);
	return 0;
}

