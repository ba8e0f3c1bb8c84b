/*
 * runner.c - runs the tests of list.h, each in a forked child with a timeout.
 * Usage: runner [NAME...]   (no name: all tests)
 * Prints one line per test and "N passed, N failed, N skipped" at the end.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "list.h"
#include "runner.h"

TEST_LIST(TEST_DECLARE)

struct test {
	const char *name;
	int (*fn)(void);
};
#define TEST_ENTRY(name) { #name, run_test_##name },
static const struct test tests[] = { TEST_LIST(TEST_ENTRY) };
#define NTESTS (sizeof(tests) / sizeof(tests[0]))

static int timeout_s = 120;
/* The test running now, and the signal that stopped the runner: a Ctrl-C
 * reaches only the runner (each test has a process group of its own), so
 * it kills the test's group itself, then cleans up and dies of it. */
static volatile sig_atomic_t current_pid, stopped_by;

static void on_stop(int sig)
{
	stopped_by = sig;
	if (current_pid > 0)
		kill(-(pid_t)current_pid, SIGKILL);
}

/* Removes a test's directory, whatever it left there. */
static void remove_tree(const char *dir)
{
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "runner: cannot remove %s\n", dir);
}

/* 1 if the environment entry e is name=dir, or name=a path below dir. */
static int env_in_dir(const char *e, const char *name, const char *dir)
{
	size_t n = strlen(name), d = strlen(dir);
	return strncmp(e, name, n) == 0 && e[n] == '=' && strncmp(e + n + 1, dir, d) == 0 &&
	       (e[n + 1 + d] == '\0' || e[n + 1 + d] == '/');
}

/* Kills what a test started that left its process group (memdedupd
 * daemonizes into a session of its own): any program run with the test's
 * MD_TEST_DIR in its environment, or living in a run directory (or on a
 * socket) in the test's directory: a memdedupd that `memdedup run --scan`
 * started takes only those from the caller's environment. Else a test
 * that failed before stopping its daemon left it running, its directory
 * gone. */
static void kill_leaked(const char *dir)
{
	char want[64], path[64];
	snprintf(want, sizeof(want), "MD_TEST_DIR=%s", dir);
	DIR *proc = opendir("/proc");
	if (!proc)
		return;
	for (struct dirent *e; (e = readdir(proc));) {
		int pid = atoi(e->d_name);
		if (pid <= 1 || pid == getpid())
			continue;
		snprintf(path, sizeof(path), "/proc/%d/environ", pid);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		static char env[65536];
		ssize_t n = read(fd, env, sizeof(env) - 1);
		close(fd);
		for (ssize_t at = 0; at < n; at += (ssize_t)strlen(env + at) + 1) {
			env[n] = '\0';
			if (strcmp(env + at, want) == 0 || env_in_dir(env + at, "MEMDEDUP_RUN_DIR", dir) ||
			    env_in_dir(env + at, "MEMDEDUP_SOCKET", dir)) {
				kill(pid, SIGKILL);
				break;
			}
		}
	}
	closedir(proc);
}

/* Copies the file at path to stdout, and keeps its last lines (at most
 * sizeof(tail) bytes, from a line's start) in tail. */
static void show_output(const char *path, char *tail, size_t tail_size)
{
	tail[0] = '\0';
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	char buf[65536];
	size_t kept = 0;
	fflush(stdout);
	for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) {
		if (write(STDOUT_FILENO, buf, (size_t)n) != n)
			break;
		/* The tail is the last tail_size - 1 bytes read. */
		size_t take = (size_t)n < tail_size - 1 ? (size_t)n : tail_size - 1;
		if (kept + take > tail_size - 1) {
			size_t drop = kept + take - (tail_size - 1);
			memmove(tail, tail + drop, kept - drop);
			kept -= drop;
		}
		memcpy(tail + kept, buf + (size_t)n - take, take);
		kept += take;
	}
	close(fd);
	tail[kept] = '\0';
	char *line = strchr(tail, '\n');
	if (kept == tail_size - 1 && line)
		memmove(tail, line + 1, strlen(line + 1) + 1);
}

/* Returns 0 pass, 1 fail, 2 skip. The test's output goes to out (a file
 * in the runner's directory), shown once the test ended: its tail is
 * shown again at the end if it failed, where a CI log cut to its last
 * lines still shows why. */
static int run_one(const struct test *t, const char *out)
{
	/* Made here and removed here: a test that fails (abort) or times
	 * out never runs its own clean-up. */
	char dir[] = "/tmp/memdedup-test-XXXXXX";
	if (!mkdtemp(dir)) {
		perror("runner: mkdtemp");
		return 1;
	}
	setenv("MD_TEST_DIR", dir, 1);
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		remove_tree(dir);
		return 1;
	}
	if (pid == 0) {
		setpgid(0, 0);	/* so a timeout kills the test's helpers too */
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
		if (fd >= 0) {
			fflush(stdout);
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		signal(SIGINT, SIG_DFL);	/* the runner's handler is not the test's */
		signal(SIGTERM, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		alarm((unsigned)timeout_s);
		exit(t->fn() == 0 ? 0 : 1);
	}
	current_pid = pid;
	int status;
	while (waitpid(pid, &status, 0) < 0)
		;
	current_pid = 0;
	kill(-pid, SIGKILL);	/* helpers the test leaked */
	kill_leaked(dir);
	remove_tree(dir);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	if (WIFEXITED(status) && WEXITSTATUS(status) == TEST_SKIP_CODE)
		return 2;
	if (WIFSIGNALED(status)) {
		FILE *f = fopen(out, "a");
		if (f) {
			fprintf(f, "  %s: killed by signal %d%s\n", t->name, WTERMSIG(status),
			WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
			fclose(f);
		}
	}
	return 1;
}

int main(int argc, char **argv)
{
	int passed = 0, failed = 0, skipped = 0;
	const char *env = getenv("MD_TEST_TIMEOUT");
	if (env) {
		/* Not a number of seconds (say "15m") would be alarm(0): none. */
		char *end;
		long v = strtol(env, &end, 10);
		if (end == env || *end || v <= 0 || v > 86400) {
			fprintf(stderr, "MD_TEST_TIMEOUT=%s: want whole seconds, 1 to 86400\n", env);
			return 2;
		}
		timeout_s = (int)v;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* No test may meet the host's own memdedupd (a benchmark's, say) or
	 * its statistics files: agents made in-process find their daemon and
	 * their run directory from here, tests that start a daemon give it
	 * their own socket. */
	/* A name that matches no test is an error, not nothing to run: a
	 * tier that names its tests (check-all's stress runs) would pass
	 * with a test renamed. */
	for (int j = 1; j < argc; j++) {
		size_t i = 0;
		while (i < NTESTS && strcmp(argv[j], tests[i].name) != 0)
			i++;
		if (i == NTESTS) {
			fprintf(stderr, "runner: no test named '%s'\n", argv[j]);
			return 2;
		}
	}
	static const char *skipped_names[NTESTS], *failed_names[NTESTS];
	static char failed_tails[8][2048];
	size_t nskipped = 0, nfailed = 0;
	char run_dir[] = "/tmp/memdedup-runner-XXXXXX";
	if (!mkdtemp(run_dir)) {
		perror("runner: mkdtemp");
		return 1;
	}
	setenv("MEMDEDUP_RUN_DIR", run_dir, 1);
	unsetenv("MEMDEDUP_SOCKET");
	struct sigaction sa = { .sa_handler = on_stop };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	for (size_t i = 0; i < NTESTS && !stopped_by; i++) {
		int wanted = argc < 2;
		for (int j = 1; j < argc; j++)
			wanted |= strcmp(argv[j], tests[i].name) == 0;
		if (!wanted)
			continue;
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		char out[sizeof(run_dir) + 16], tail[sizeof(failed_tails[0])];
		snprintf(out, sizeof(out), "%s/output", run_dir);
		int r = run_one(&tests[i], out);
		show_output(out, tail, sizeof(tail));
		unlink(out);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
		const char *word = r == 0 ? "ok" : r == 2 ? "skip" : "FAIL";
		printf("%-5s %-32s %6.2fs\n", word, tests[i].name, s);
		passed += r == 0;
		failed += r == 1;
		skipped += r == 2;
		if (r == 2)
			skipped_names[nskipped++] = tests[i].name;
		if (r == 1) {
			if (nfailed < sizeof(failed_tails) / sizeof(failed_tails[0]))
				memcpy(failed_tails[nfailed], tail, sizeof(tail));
			failed_names[nfailed++] = tests[i].name;
		}
	}
	char rm[sizeof(run_dir) + 16];
	snprintf(rm, sizeof(rm), "rm -rf %s", run_dir);
	if (system(rm) != 0)
		fprintf(stderr, "runner: could not remove %s\n", run_dir);
	if (stopped_by) {
		fprintf(stderr, "runner: stopped by signal %d\n", (int)stopped_by);
		signal((int)stopped_by, SIG_DFL);
		raise((int)stopped_by);
	}
	/* Named again at the end: a skip hides whatever the test checks. */
	for (size_t i = 0; i < nskipped; i++)
		printf("%s %s", i ? "," : "skipped:", skipped_names[i]);
	if (nskipped)
		printf("\n");
	for (size_t i = 0; i < nfailed && i < sizeof(failed_tails) / sizeof(failed_tails[0]); i++)
		printf("--- %s failed; its last lines:\n%s%s", failed_names[i], failed_tails[i],
		       !*failed_tails[i] || strchr(failed_tails[i], '\0')[-1] == '\n' ? "" : "\n");
	for (size_t i = 0; i < nfailed; i++)
		printf("%s %s", i ? "," : "failed:", failed_names[i]);
	if (nfailed)
		printf("\n");
	printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}
