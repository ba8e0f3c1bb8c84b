/*
 * test_daemon_start.c - memdedupd's start and its trust boundaries: what it
 * may remove at its socket path, what a failed start leaves, long and
 * relative paths, descriptors it passes, its limits; and the client's
 * checks of whom it talks to.
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checksum.h"
#include "daemon.h"
#include "client.h"
#include "daemon_util.h"
#include "proc.h"
#include "runner.h"
#include "stats_file.h"


static const char *daemon_exe(void)
{
	static char exe[300];
	snprintf(exe, sizeof(exe), "%s/memdedupd", build_dir());
	ASSERT(access(exe, X_OK) == 0);	/* built by make check: its absence is a failure */
	return exe;
}

/* memdedupd --foreground with args; its exit status, stderr in err. */
static int run_daemon(const char *args, const char *err)
{
	return td_sh("timeout 10 %s --foreground %s 2>%s </dev/null", daemon_exe(), args, err);
}

TEST_IMPL(daemon_socket_path_kept)
{
	char dir[200], path[300], err[400], link[300], args[900];
	snprintf(dir, sizeof(dir), "%s/sk", test_dir());
	ASSERT(mkdir(dir, 0755) == 0);
	snprintf(err, sizeof(err), "%s/err", test_dir());

	/* A regular file where the socket would go: refused, untouched. */
	snprintf(path, sizeof(path), "%s/file", dir);
	ASSERT_EQ(td_sh("echo precious > %s", path), 0);
	snprintf(args, sizeof(args), "--run-dir %s --socket %s", dir, path);
	ASSERT_EQ(run_daemon(args, err), 1);
	ASSERT_EQ(td_sh("grep -q precious %s", path), 0);
	ASSERT_EQ(td_sh("grep -q 'is not a socket' %s", err), 0);

	/* A link to it: the same (the link stays, so does its target). */
	snprintf(link, sizeof(link), "%s/link", dir);
	ASSERT(symlink(path, link) == 0);
	snprintf(args, sizeof(args), "--run-dir %s --socket %s", dir, link);
	ASSERT_EQ(run_daemon(args, err), 1);
	struct stat st;
	ASSERT(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
	ASSERT_EQ(td_sh("grep -q precious %s", path), 0);

	/* A directory: says so. */
	snprintf(args, sizeof(args), "--run-dir %s --socket %s", dir, dir);
	ASSERT_EQ(run_daemon(args, err), 1);
	ASSERT_EQ(td_sh("grep -q 'is a directory' %s", err), 0);
	ASSERT(lstat(dir, &st) == 0 && S_ISDIR(st.st_mode));

	/* A socket nobody answers on is stale: replaced. */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(path, sizeof(path), "%s/stale", dir);
	ASSERT(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path));
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	ASSERT(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	close(fd);
	ASSERT(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode));
	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0) {
		execl(daemon_exe(), "memdedupd", "--foreground", "--run-dir", dir, "--socket", path,
		      (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 300 && !md__daemon_alive(path); i++)
		usleep(10000);
	ASSERT(md__daemon_alive(path));
	/* And one that answers is not: the second daemon leaves it. */
	char dir2[400];
	snprintf(dir2, sizeof(dir2), "%s/second", dir);
	snprintf(args, sizeof(args), "--run-dir %s --socket %s", dir2, path);
	ASSERT_EQ(run_daemon(args, err), MD_D_EXIT_HELD);
	ASSERT(md__daemon_alive(path));
	/* Stopping, it takes away only its own socket: a file put in its
	 * place since stays. */
	ASSERT(unlink(path) == 0);
	ASSERT_EQ(td_sh("echo replaced > %s", path), 0);
	ASSERT(kill(pid, SIGTERM) == 0);
	int ws;
	ASSERT(waitpid(pid, &ws, 0) == pid && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	ASSERT_EQ(td_sh("grep -q replaced %s", path), 0);
	return 0;
}

/* Daemons of two run directories given one socket path: the socket's lock
 * (PATH.lock) decides, before the stale check, so the later one cannot take
 * the path between the other's bind and listen. The test holds the lock as
 * a daemon starting would: the daemon refuses, binds nothing, and leaves
 * the lock file, which is not its own; unlocked, it starts and, stopped,
 * takes its lock file away. */
TEST_IMPL(daemon_socket_path_locked)
{
	char dir[300], sock[400], lock[420], err[400], args[1000];
	struct stat st;
	snprintf(dir, sizeof(dir), "%s/sl", test_dir());
	ASSERT(mkdir(dir, 0755) == 0);
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	snprintf(lock, sizeof(lock), "%s.lock", sock);
	snprintf(err, sizeof(err), "%s/err", test_dir());
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	ASSERT(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0);
	snprintf(args, sizeof(args), "--run-dir %s/a --socket %s", dir, sock);
	ASSERT_EQ(run_daemon(args, err), MD_D_EXIT_HELD);
	ASSERT_EQ(td_sh("grep -q 'another daemon holds %s' %s", lock, err), 0);
	ASSERT(lstat(sock, &st) != 0 && errno == ENOENT);
	ASSERT(lstat(lock, &st) == 0 && S_ISREG(st.st_mode));
	char run_a[400];
	snprintf(run_a, sizeof(run_a), "%s/a", dir);
	ASSERT(lstat(run_a, &st) != 0 && errno == ENOENT);	/* a failed start leaves nothing */
	close(fd);

	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0) {
		execl(daemon_exe(), "memdedupd", "--foreground", "--run-dir", run_a, "--socket", sock,
		      (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 300 && !md__daemon_alive(sock); i++)
		usleep(10000);
	ASSERT(md__daemon_alive(sock));
	fd = open(lock, O_RDWR | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT(flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK);	/* held for its life */
	close(fd);
	ASSERT(kill(pid, SIGTERM) == 0);
	int ws;
	ASSERT(waitpid(pid, &ws, 0) == pid && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	ASSERT(lstat(lock, &st) != 0 && errno == ENOENT);
	ASSERT(lstat(sock, &st) != 0 && errno == ENOENT);
	return 0;
}

TEST_IMPL(daemon_failed_start_cleans)
{
	char base[300], run[400], args[1200], err[400], file[400];
	struct stat st;
	snprintf(base, sizeof(base), "%s/fs", test_dir());
	ASSERT(mkdir(base, 0755) == 0);
	snprintf(err, sizeof(err), "%s/err", test_dir());
	snprintf(file, sizeof(file), "%s/file", base);
	ASSERT_EQ(td_sh("echo x > %s", file), 0);

	/* It fails after creating a/b/c and locking the pid file in it. */
	snprintf(run, sizeof(run), "%s/a/b/c", base);
	snprintf(args, sizeof(args), "--run-dir %s --socket %s", run, file);
	ASSERT_EQ(run_daemon(args, err), 1);
	snprintf(run, sizeof(run), "%s/a", base);
	ASSERT(access(run, F_OK) != 0);

	/* In a directory that was there: only the pid file goes. */
	snprintf(args, sizeof(args), "--run-dir %s --socket %s", base, file);
	ASSERT_EQ(run_daemon(args, err), 1);
	snprintf(run, sizeof(run), "%s/memdedupd.pid", base);
	ASSERT(access(run, F_OK) != 0);
	ASSERT(stat(base, &st) == 0 && S_ISDIR(st.st_mode));

	/* A pid file that is a link: not followed (its target untouched). */
	ASSERT(symlink(file, run) == 0);
	snprintf(args, sizeof(args), "--run-dir %s --socket %s/s", base, base);
	ASSERT_EQ(run_daemon(args, err), 1);
	ASSERT_EQ(td_sh("grep -qx x %s", file), 0);
	ASSERT(lstat(run, &st) == 0 && S_ISLNK(st.st_mode));
	return 0;
}

/* The same for the /tmp default of a user without XDG_RUNTIME_DIR: a start
 * that fails (here its socket path too long) leaves no /tmp/memdedup-UID
 * it made. It was made before the paths were checked, and stayed. */
TEST_IMPL(daemon_failed_start_leaves_no_tmp_dir)
{
	struct passwd *pw = getpwnam("nobody");
	if (getuid() != 0 || !pw)
		SKIP("needs root and a 'nobody' user");
	char dir[64], sock[200];
	snprintf(dir, sizeof(dir), "/tmp/memdedup-%u", (unsigned)pw->pw_uid);
	if (access(dir, F_OK) == 0)
		SKIP("%s is there already: whether a start makes it cannot be told", dir);
	int n = snprintf(sock, sizeof(sock), "/tmp/");
	memset(sock + n, 'x', 130);
	sock[n + 130] = '\0';
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		if (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) != 0 ||
		    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) != 0)
			_exit(100);
		unsetenv("XDG_RUNTIME_DIR");
		unsetenv("MEMDEDUP_RUN_DIR");
		setenv("MEMDEDUP_SOCKET", sock, 1);
		int null = open("/dev/null", O_WRONLY);
		if (null >= 0)
			dup2(null, 2);
		execl(daemon_exe(), "memdedupd", "--foreground", (char *)NULL);
		_exit(127);
	}
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	int made = access(dir, F_OK) == 0;
	if (made)
		rmdir(dir);	/* the user's, empty: as it was */
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 1);
	ASSERT(!made);
	return 0;
}

TEST_IMPL(daemon_run_dir_too_long)
{
	char run[600], args[1400], err[400], top[400];
	snprintf(err, sizeof(err), "%s/err", test_dir());
	snprintf(top, sizeof(top), "%s/long", test_dir());
	/* 300 bytes and more, below a directory that does not exist yet. */
	int n = snprintf(run, sizeof(run), "%s", top);
	while (n < 320)
		n += snprintf(run + n, sizeof(run) - (size_t)n, "/%s", "0123456789abcdef");
	snprintf(args, sizeof(args), "--run-dir %s", run);
	ASSERT_EQ(run_daemon(args, err), 1);
	ASSERT_EQ(td_sh("grep -q 'too long' %s", err), 0);
	ASSERT(access(top, F_OK) != 0);	/* nothing created, truncated or not */

	/* The socket path too: it must fit a Unix address. */
	snprintf(args, sizeof(args), "--run-dir %s/short --socket %s/sock", test_dir(), run);
	ASSERT_EQ(run_daemon(args, err), 1);
	ASSERT_EQ(td_sh("grep -q 'at most 107 bytes' %s", err), 0);
	snprintf(top, sizeof(top), "%s/short", test_dir());
	ASSERT(access(top, F_OK) != 0);

	/* Relative, one byte too long once the directory is put before it:
	 * refused too, not cut to the byte that fits. */
	char cwd[PATH_MAX], rel[300], exe[PATH_MAX];
	ASSERT(realpath(test_dir(), cwd) && realpath(daemon_exe(), exe));
	size_t want = MD_D_RUN_DIR_MAX - strlen(cwd) - 1;	/* cwd/rel: MD_D_RUN_DIR_MAX bytes */
	ASSERT(want > 4 && want < sizeof(rel));
	memset(rel, 'r', want);
	rel[want] = '\0';
	ASSERT_EQ(td_sh("cd %s && timeout 10 %s --foreground --run-dir %s 2>%s </dev/null", cwd, exe, rel, err), 1);
	ASSERT_EQ(td_sh("grep -q 'the run directory is too long' %s", err), 0);
	ASSERT_EQ(td_sh("ls -d %s/rrrr* 2>/dev/null", cwd), 2);	/* nor the one cut */
	want = MD_D_SOCKET_MAX + 1 - strlen(cwd) - 1;	/* cwd/rel: a byte past a Unix address */
	ASSERT(want > 4 && want < sizeof(rel));
	memset(rel, 's', want);
	memcpy(rel, "no/", 3);
	rel[want] = '\0';
	ASSERT_EQ(td_sh("cd %s && timeout 10 %s --foreground --run-dir short --socket %s 2>%s </dev/null", cwd, exe,
			rel, err), 1);
	ASSERT_EQ(td_sh("grep -q 'at most 107 bytes' %s", err), 0);
	ASSERT(access(top, F_OK) != 0);

	/* The library's own: an error, never a cut path. */
	char small[16];
	ASSERT_EQ(md__run_dir(run, small, sizeof(small)), -ENAMETOOLONG);
	char big[700];
	ASSERT_EQ(md__run_dir(run, big, sizeof(big)), 0);
	ASSERT_EQ(strcmp(big, run), 0);
	setenv("MEMDEDUP_RUN_DIR", run, 1);
	unsetenv("MEMDEDUP_SOCKET");
	ASSERT_EQ(md__daemon_socket_path(NULL, big, 108), -ENAMETOOLONG);
	struct md__client *c;
	ASSERT_EQ(md__client_connect(&c, NULL), -ENAMETOOLONG);
	return 0;
}

/* Bad values are wrong usage (2), said, before anything is made: the
 * pool's size past its bounds or not plainly a number, an empty path, the
 * status rate out of its range. The bounds themselves are taken: those
 * starts go on to fail on a socket path too long (1), making nothing. */
TEST_IMPL(daemon_bad_values_refused)
{
	char run[400], err[400], args[1200], sock[200];
	snprintf(run, sizeof(run), "%s/never", test_dir());
	snprintf(err, sizeof(err), "%s/err", test_dir());
	memset(sock, 'x', 120);
	sock[120] = '\0';
	static const struct {
		const char *env, *args, *said;
		int code;
	} cases[] = {
		{ "", "--pool-pages 67108865", "--pool-pages must be 1..67108864, not '67108865'", 2 },
		{ "", "--pool-pages +5", "not '+5'", 2 },
		{ "", "--pool-pages ' 5'", "not ' 5'", 2 },
		{ "", "--pool-pages 67108864", "at most 107 bytes", 1 },
		{ "", "--run-dir ''", "--run-dir and --socket need a path", 2 },
		{ "", "--socket ''", "--run-dir and --socket need a path", 2 },
		{ "MEMDEDUP_STATUS_KB_PER_S=abc", "", "MEMDEDUP_STATUS_KB_PER_S must be", 2 },
		{ "MEMDEDUP_STATUS_KB_PER_S=1048577", "", "MEMDEDUP_STATUS_KB_PER_S must be", 2 },
		{ "MEMDEDUP_STATUS_KB_PER_S=1048576", "", "at most 107 bytes", 1 },
		{ "MEMDEDUP_CONTROL_WAIT_MS=60001", "", "MEMDEDUP_CONTROL_WAIT_MS must be", 2 },
		{ "", "--bogus", "unknown option, or one without its value: '--bogus'", 2 },
		/* In a group, the letter: the argument before it is another's. */
		{ "", "-qz", "unknown option, or one without its value: '-q'", 2 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* The run directory and socket first: a value given twice, the
		 * case's last, takes their place. */
		snprintf(args, sizeof(args), "--run-dir %s --socket /tmp/%s %s", run, sock, cases[i].args);
		int code = td_sh("%s timeout 10 %s --foreground %s 2>%s </dev/null", cases[i].env, daemon_exe(), args,
				 err);
		if (code != cases[i].code || td_sh("grep -qF -- \"%s\" %s", cases[i].said, err) != 0)
			fprintf(stderr, "case %zu: exit %d\n", i, code);
		ASSERT_EQ(code, cases[i].code);
		ASSERT_EQ(td_sh("grep -qF -- \"%s\" %s", cases[i].said, err), 0);
		ASSERT(access(run, F_OK) != 0);
	}
	return 0;
}

/* A daemon started on demand (by `memdedup run`) that finds another
 * holding its run directory or socket exits 3 without a word: VMMs started
 * together each start one, and the losers' words reached their user's
 * terminal. Started by hand, it says which daemon holds what. */
TEST_IMPL(daemon_on_demand_loser_quiet)
{
	struct tdaemon t;
	char err[400];
	snprintf(err, sizeof(err), "%s/err", test_dir());
	td_start(&t, 16);
	for (int quiet = 0; quiet < 2; quiet++) {
		const char *env = quiet ? MD_D_ON_DEMAND_ENV "=1 " : "";
		/* The run directory's pid file, then the socket's lock. */
		ASSERT_EQ(td_sh("%stimeout 10 %s --foreground --run-dir %s --socket %s/other 2>%s", env, daemon_exe(),
				t.dir, t.dir, err), MD_D_EXIT_HELD);
		ASSERT_EQ(td_sh("test -s %s", err), quiet ? 1 : 0);
		if (!quiet)
			ASSERT_EQ(td_sh("grep -q 'another daemon (pid %d) holds %s/memdedupd.pid' %s", (int)t.pid, t.dir,
					err), 0);
		ASSERT_EQ(td_sh("mkdir -p %s/x && %stimeout 10 %s --foreground --run-dir %s/x --socket %s 2>%s", t.dir,
				env, daemon_exe(), t.dir, t.sock, err), MD_D_EXIT_HELD);
		ASSERT_EQ(td_sh("test -s %s", err), quiet ? 1 : 0);
	}
	/* A holder that never writes its pid: no pid is named (it read 0). */
	ASSERT_EQ(td_sh("mkdir -p %s/y && (flock -n 9 && timeout 10 %s --foreground --run-dir %s/y 2>%s) "
			"9>%s/y/memdedupd.pid", t.dir, daemon_exe(), t.dir, err, t.dir), MD_D_EXIT_HELD);
	ASSERT_EQ(td_sh("grep -qx 'memdedupd: another daemon holds %s/y/memdedupd.pid' %s", t.dir, err), 0);
	ASSERT(md__daemon_alive(t.sock));
	td_stop(&t);
	return 0;
}

static pid_t read_pid(const char *path)
{
	int pid = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	if (fscanf(f, "%d", &pid) != 1)
		pid = 0;
	fclose(f);
	return pid;
}

/* VMMs started together each start a daemon: one runs, the others say so
 * truly (they named pid 0, the winner's pid file not written yet). */
TEST_IMPL(daemon_concurrent_starts)
{
	char dir[300], sock[400], pidf[400];
	snprintf(dir, sizeof(dir), "%s/conc", test_dir());
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	snprintf(pidf, sizeof(pidf), "%s/memdedupd.pid", dir);
	ASSERT_EQ(td_sh("for i in 1 2 3 4; do %s --run-dir %s --socket %s 2>>%s/err & done; wait",
			daemon_exe(), dir, sock, test_dir()), 0);
	ASSERT(md__daemon_alive(sock));
	pid_t pid = read_pid(pidf);
	ASSERT(pid > 0);
	int zero = td_sh("grep -q '(pid 0)' %s/err", test_dir()) == 0;
	kill(pid, SIGTERM);
	ASSERT(!zero);
	for (int i = 0; i < 2000 && kill(pid, 0) == 0; i++)
		usleep(10000);
	return 0;
}

/* The pid file, once memdedupd returns (daemonized), names the daemon and
 * is locked by it, whatever races there were: here (preloaded,
 * libpidfile-stub.so) the file is replaced between its open and its lock,
 * as a daemon going away unlinks its own, so the lock taken is on a file
 * no later daemon finds; and the daemon writes its pid late, after the
 * parent wrote it and returned. A second daemon of the run directory then
 * started beside it. */
TEST_IMPL(daemon_pid_file_named_and_locked_on_return)
{
	char dir[300], pidf[400], preload[600], args[900], err[400];
	snprintf(dir, sizeof(dir), "%s/racy", test_dir());
	snprintf(pidf, sizeof(pidf), "%s/memdedupd.pid", dir);
	snprintf(err, sizeof(err), "%s/err", test_dir());
	ASSERT(mkdir(dir, 0755) == 0);
	const char *first = getenv("MD_TEST_PRELOAD_FIRST");	/* libasan */
	snprintf(preload, sizeof(preload), "%s%s%s/libpidfile-stub.so", first ? first : "", first ? ":" : "",
		 build_dir());
	ASSERT_EQ(td_sh("LD_PRELOAD=%s MD_STUB_REPLACE_LOCK=%s MD_STUB_SLOW_PID=1 %s --run-dir %s --socket %s/s.sock "
			"2>%s", preload, pidf, daemon_exe(), dir, dir, err), 0);
	pid_t pid = read_pid(pidf);
	ASSERT(pid > 0);	/* written by the parent, before it returned */
	/* And never empty since, while the daemon's own late write of it is
	 * under way (a truncation before that write left it empty for the
	 * stub's half second). */
	for (int i = 0; i < 100; i++) {
		ASSERT_EQ(read_pid(pidf), pid);
		usleep(10000);
	}
	int fd = open(pidf, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), -1);	/* the daemon's, on the file there now */
	ASSERT_EQ(errno, EWOULDBLOCK);
	close(fd);
	ASSERT_EQ(td_sh("ls -l /proc/%d/fd | grep -q 'memdedupd.pid (deleted)'", (int)pid), 1);	/* let go */
	snprintf(args, sizeof(args), "--run-dir %s --socket %s/other.sock", dir, dir);
	ASSERT_EQ(run_daemon(args, err), MD_D_EXIT_HELD);
	ASSERT(kill(pid, SIGTERM) == 0);
	for (int i = 0; i < 300 && access(pidf, F_OK) == 0; i++)
		usleep(10000);
	ASSERT(access(pidf, F_OK) != 0);
	return 0;
}

/* What /proc/PID/fd/FD (or /proc/PID/NAME) of pid links to, in buf. */
static const char *proc_link(pid_t pid, const char *name, char *buf, size_t size)
{
	char link[64];
	snprintf(link, sizeof(link), "/proc/%d/%s", (int)pid, name);
	ssize_t n = readlink(link, buf, size - 1);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

/* A daemonized memdedupd is detached from whoever started it: a session of
 * its own (the terminal's ^C and hang-up are not for it), its directory /
 * (it keeps no mount busy), stdin /dev/null and stdout and stderr its log
 * (a caller reading its output, as `$(...)` does, would wait for it), and
 * no descriptor of the way there left open. */
static void detached(pid_t pid, const char *log)
{
	char want[PATH_MAX], got[PATH_MAX], fds[64];
	ASSERT(realpath(log, want));
	ASSERT_EQ(getsid(pid), pid);
	ASSERT_EQ(strcmp(proc_link(pid, "cwd", got, sizeof(got)), "/"), 0);
	ASSERT_EQ(strcmp(proc_link(pid, "fd/0", got, sizeof(got)), "/dev/null"), 0);
	ASSERT_EQ(strcmp(proc_link(pid, "fd/1", got, sizeof(got)), want), 0);
	ASSERT_EQ(strcmp(proc_link(pid, "fd/2", got, sizeof(got)), want), 0);
	snprintf(fds, sizeof(fds), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(fds);
	ASSERT(dir);
	for (struct dirent *e; (e = readdir(dir));) {
		if (e->d_name[0] == '.' || strtol(e->d_name, NULL, 10) < 3)
			continue;
		char name[32];
		snprintf(name, sizeof(name), "fd/%.20s", e->d_name);
		proc_link(pid, name, got, sizeof(got));
		if (strcmp(got, "/dev/null") == 0 || strncmp(got, "pipe:", 5) == 0 || strcmp(got, want) == 0)
			printf("  stray descriptor %s: %s\n", e->d_name, got);
		ASSERT(strcmp(got, "/dev/null") != 0 && strncmp(got, "pipe:", 5) != 0 && strcmp(got, want) != 0);
	}
	closedir(dir);
}

TEST_IMPL(daemon_relative_paths)
{
	char dir[300], sock[400], pidf[400], log[400];
	snprintf(dir, sizeof(dir), "%s/rel", test_dir());
	ASSERT(mkdir(dir, 0755) == 0);
	const char *exe = daemon_exe();
	char abs_exe[300];
	ASSERT(realpath(exe, abs_exe));
	/* Daemonized: its directory is / from then on. Its stdin not /dev/null,
	 * to see it replaced. */
	ASSERT_EQ(td_sh("cd %s && %s --run-dir run --socket run/s.sock 2>%s/err </dev/zero", dir, abs_exe, dir), 0);
	snprintf(sock, sizeof(sock), "%s/run/s.sock", dir);
	snprintf(pidf, sizeof(pidf), "%s/run/memdedupd.pid", dir);
	snprintf(log, sizeof(log), "%s/run/memdedupd.log", dir);
	ASSERT(md__daemon_alive(sock));
	pid_t pid = read_pid(pidf);
	ASSERT(pid > 0);
	ASSERT(access(log, F_OK) == 0);
	detached(pid, log);
	/* The pid file is the pid and a newline, as pid files are. */
	char said[32] = "", want[32];
	FILE *pf = fopen(pidf, "r");
	ASSERT(pf);
	size_t got = fread(said, 1, sizeof(said) - 1, pf);
	fclose(pf);
	snprintf(want, sizeof(want), "%d\n", (int)pid);
	ASSERT_EQ(got, strlen(want));
	ASSERT_EQ(strcmp(said, want), 0);
	/* The log names every user's agents: its owner's only. */
	struct stat lst;
	ASSERT(stat(log, &lst) == 0);
	ASSERT_EQ(lst.st_mode & 0777, 0600);
	/* SIGHUP, as logrotate sends after moving the log: a new log, the
	 * daemon still there. */
	char moved[420];
	snprintf(moved, sizeof(moved), "%s.1", log);
	ASSERT(rename(log, moved) == 0);
	ASSERT(kill(pid, SIGHUP) == 0);
	/* The file comes before the line. */
	for (int i = 0; i < 2000 && td_sh("grep -q 'log reopened' %s 2>/dev/null", log) != 0; i++)
		usleep(10000);
	ASSERT_EQ(td_sh("grep -q 'log reopened' %s", log), 0);
	ASSERT(stat(log, &lst) == 0);
	ASSERT_EQ(lst.st_mode & 0777, 0600);
	ASSERT(md__daemon_alive(sock));
	ASSERT_EQ(kill(pid, 0), 0);
	ASSERT(kill(pid, SIGTERM) == 0);
	/* It found its own socket and pid file again, by absolute paths. */
	for (int i = 0; i < 300 && (access(sock, F_OK) == 0 || access(pidf, F_OK) == 0); i++)
		usleep(10000);
	ASSERT(access(sock, F_OK) != 0);
	ASSERT(access(pidf, F_OK) != 0);
	/* From a directory removed since, a relative path names nothing: said
	 * so, and nothing made. */
	ASSERT_EQ(td_sh("mkdir %s/gone && cd %s/gone && rmdir ../gone && timeout 10 %s --foreground --run-dir run "
			"--socket %s/g.sock 2>%s/err", dir, dir, abs_exe, dir, dir), 1);
	ASSERT_EQ(td_sh("grep -q 'no usable run directory: No such file' %s/err", dir), 0);
	ASSERT_EQ(td_sh("test -e %s/g.sock.lock", dir), 1);
	return 0;
}

/* A log there before the daemon (an older memdedupd's, or one logrotate
 * made with its "create" mode, 0644) is made its owner's alone too, at the
 * start and at a SIGHUP: it names every user's agents and domains. */
TEST_IMPL(daemon_old_log_made_private)
{
	char dir[300], sock[400], pidf[400], log[400], moved[420];
	struct stat lst;
	snprintf(dir, sizeof(dir), "%s/oldlog", test_dir());
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	snprintf(pidf, sizeof(pidf), "%s/memdedupd.pid", dir);
	snprintf(log, sizeof(log), "%s/memdedupd.log", dir);
	snprintf(moved, sizeof(moved), "%s.1", log);
	ASSERT(mkdir(dir, 0700) == 0);
	int fd = open(log, O_WRONLY | O_CREAT | O_EXCL, 0644);
	ASSERT(fd >= 0);
	ASSERT(fchmod(fd, 0644) == 0);	/* whatever the umask */
	close(fd);
	ASSERT_EQ(td_sh("%s --run-dir %s --socket %s 2>%s/err", daemon_exe(), dir, sock, test_dir()), 0);
	ASSERT(md__daemon_alive(sock));
	pid_t pid = read_pid(pidf);
	ASSERT(pid > 0);
	ASSERT(stat(log, &lst) == 0);
	ASSERT_EQ(lst.st_mode & 0777, 0600);
	/* Rotated, and a new one made 0644 before the SIGHUP. */
	ASSERT(rename(log, moved) == 0);
	fd = open(log, O_WRONLY | O_CREAT | O_EXCL, 0644);
	ASSERT(fd >= 0);
	ASSERT(fchmod(fd, 0644) == 0);
	close(fd);
	ASSERT(kill(pid, SIGHUP) == 0);
	for (int i = 0; i < 2000 && td_sh("grep -q 'log reopened' %s 2>/dev/null", log) != 0; i++)
		usleep(10000);
	ASSERT_EQ(td_sh("grep -q 'log reopened' %s", log), 0);
	ASSERT(stat(log, &lst) == 0);
	ASSERT_EQ(lst.st_mode & 0777, 0600);
	ASSERT(kill(pid, SIGTERM) == 0);
	for (int i = 0; i < 300 && (access(sock, F_OK) == 0 || access(pidf, F_OK) == 0); i++)
		usleep(10000);
	ASSERT(access(pidf, F_OK) != 0);
	return 0;
}

/* Started with stdin, stdout and stderr closed (a VMM's `memdedup run`
 * with them closed starts it so): the pid file and the socket must not take
 * their numbers, for daemonizing puts /dev/null and the log there. */
TEST_IMPL(daemon_closed_stdio)
{
	char dir[300], sock[400], pidf[400];
	snprintf(dir, sizeof(dir), "%s/closed", test_dir());
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	snprintf(pidf, sizeof(pidf), "%s/memdedupd.pid", dir);
	ASSERT_EQ(td_sh("%s --run-dir %s --socket %s <&- >&- 2>&-", daemon_exe(), dir, sock), 0);
	ASSERT(md__daemon_alive(sock));
	pid_t pid = read_pid(pidf);
	ASSERT(pid > 0);	/* the parent returns once the daemon's 0-2 are set */
	ASSERT(kill(pid, SIGTERM) == 0);
	for (int i = 0; i < 300 && access(sock, F_OK) == 0; i++)
		usleep(10000);
	ASSERT(access(sock, F_OK) != 0);
	return 0;
}

/* As user nobody (no MEMDEDUP_* and no XDG_RUNTIME_DIR), the daemon socket
 * md__daemon_socket_path picks, and what `memdedup status` says of it:
 * 0 if the socket is want and the status exits 0 (or, want NULL, the
 * socket is another), else why not. */
static int nobody_sees(const char *want)
{
	pid_t c = fork();
	if (c == 0) {
		char path[300], md[400];
		if (setgroups(0, NULL) || setgid(65534) || setuid(65534))
			_exit(10);
		unsetenv("MEMDEDUP_SOCKET");
		unsetenv("MEMDEDUP_RUN_DIR");
		unsetenv("XDG_RUNTIME_DIR");
		if (md__daemon_socket_path(NULL, path, sizeof(path)) != 0)
			_exit(11);
		if (want ? strcmp(path, want) != 0 : strcmp(path, MD_HOST_RUN_DIR "/memdedupd.sock") == 0)
			_exit(12);
		if (!want)
			_exit(0);
		snprintf(md, sizeof(md), "/tmp/x/memdedup status --json | grep -q '\"domains\"'");	/* a copy nobody may run */
		_exit(system(md) == 0 ? 0 : 13);
	}
	int ws;
	if (c < 0 || waitpid(c, &ws, 0) != c || !WIFEXITED(ws))
		return -1;
	return WEXITSTATUS(ws);
}

/* Users other than root find the host's memdedupd (root's, as the systemd
 * unit starts it) when it answers, so one daemon serves every user's VMs;
 * when none answers there, their own. In a mount namespace of the test's
 * own, with tmpfs on /run and /tmp: the host's are left alone. */
TEST_IMPL(daemon_host_socket_found)
{
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		SKIP("cannot make a mount namespace here");
	ASSERT_EQ(mount("none", "/run", "tmpfs", 0, "mode=0755"), 0);
	ASSERT_EQ(mount("none", "/tmp", "tmpfs", 0, "mode=1777"), 0);
	ASSERT_EQ(td_sh("mkdir -m 755 /tmp/x && cp %s/memdedup %s/testproc %s/libmemdedup-preload.so /tmp/x/",
			build_dir(), build_dir(), build_dir()), 0);
	ASSERT_EQ(mkdir(MD_HOST_RUN_DIR, 0755), 0);
	pid_t d = fork();
	ASSERT(d >= 0);
	if (d == 0) {
		execl(daemon_exe(), "memdedupd", "--foreground", "--run-dir", MD_HOST_RUN_DIR, (char *)NULL);
		_exit(127);
	}
	const char *sock = MD_HOST_RUN_DIR "/memdedupd.sock";
	for (int i = 0; i < 300 && !md__daemon_alive(sock); i++)
		usleep(10000);
	ASSERT(md__daemon_alive(sock));
	ASSERT_EQ(nobody_sees(sock), 0);
	/* A directory others may write is not the host's. */
	ASSERT_EQ(chmod(MD_HOST_RUN_DIR, 0777), 0);
	ASSERT_EQ(nobody_sees(NULL), 0);
	ASSERT_EQ(chmod(MD_HOST_RUN_DIR, 0755), 0);
	ASSERT_EQ(nobody_sees(sock), 0);
	ASSERT(kill(d, SIGTERM) == 0);
	int ws;
	ASSERT(waitpid(d, &ws, 0) == d);
	/* Nobody answers there: the user's own. */
	ASSERT_EQ(nobody_sees(NULL), 0);

	/* A user's agent started while the host's daemon is away (a named
	 * domain: it waits for a daemon) joins it once it is there: the
	 * socket is chosen again at every connect. The user may use
	 * /dev/userfaultfd in this namespace only (a node of its own, bound
	 * over the host's). */
	struct stat uffd;
	if (stat("/dev/userfaultfd", &uffd) != 0)
		SKIP("no /dev/userfaultfd for a user's agent");
	ASSERT_EQ(mknod("/tmp/x/uffd", S_IFCHR | 0600, uffd.st_rdev), 0);
	ASSERT_EQ(chmod("/tmp/x/uffd", 0666), 0);
	ASSERT_EQ(mount("/tmp/x/uffd", "/dev/userfaultfd", NULL, MS_BIND, NULL), 0);
	int in[2];
	ASSERT_EQ(pipe(in), 0);
	pid_t agent = fork();
	ASSERT(agent >= 0);
	if (agent == 0) {
		dup2(in[0], 0);
		close(in[1]);
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		if (setgroups(0, NULL) || setgid(65534) || setuid(65534))
			_exit(10);
		unsetenv("MEMDEDUP_SOCKET");
		unsetenv("MEMDEDUP_RUN_DIR");
		unsetenv("XDG_RUNTIME_DIR");
		const char *first = getenv("MD_TEST_PRELOAD_FIRST");	/* libasan */
		char preload[512];
		snprintf(preload, sizeof(preload), "%s%s/tmp/x/libmemdedup-preload.so", first ? first : "",
			 first ? ":" : "");
		setenv("LD_PRELOAD", preload, 1);
		setenv("MEMDEDUP_SCAN", "1", 1);
		setenv("MEMDEDUP_DOMAIN", "late", 1);
		setenv("MEMDEDUP_KERNEL_KSM", "0", 1);
		execl("/tmp/x/testproc", "testproc", (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	ASSERT(write(in[1], "map 64\n", 7) == 7);
	sleep(2);	/* its first tries find no daemon */
	d = fork();
	ASSERT(d >= 0);
	if (d == 0) {
		execl(daemon_exe(), "memdedupd", "--foreground", "--run-dir", MD_HOST_RUN_DIR, (char *)NULL);
		_exit(127);
	}
	struct tdaemon host = { .pid = d };
	snprintf(host.sock, sizeof(host.sock), "%s", sock);
	for (int i = 0; i < 300 && !md__daemon_alive(sock); i++)
		usleep(10000);
	size_t agents = 0;
	for (int i = 0; i < 100 && !agents; i++) {
		usleep(100000);
		json_t *st = td_status(&host);
		agents = json_array_size(json_object_get(st, "agents"));
		json_decref(st);
	}
	close(in[1]);	/* the testproc ends with its input */
	ASSERT(waitpid(agent, &ws, 0) == agent);
	ASSERT(kill(d, SIGTERM) == 0);
	ASSERT(waitpid(d, &ws, 0) == d);
	ASSERT_EQ(agents, 1);
	umount("/dev/userfaultfd");
	umount("/tmp");
	umount("/run");
	return 0;
}

/* Receives from fd until a descriptor comes with the bytes (returned) or
 * the stream ends (-1). */
static int recv_fd(int fd)
{
	static char buf[65536];
	for (;;) {
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int) * 4)];
		} ctl;
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
				     .msg_controllen = sizeof(ctl.b) };
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, 5000) != 1)
			return -1;
		ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
		if (r <= 0)
			return -1;
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			int got;
			memcpy(&got, CMSG_DATA(cm), sizeof(int));
			return got;
		}
	}
}

static int agent_listed(const struct tdaemon *t, pid_t pid)
{
	json_t *st = td_status(t), *a;
	size_t i;
	int found = 0;
	json_array_foreach(json_object_get(st, "agents"), i, a)
		found |= json_integer_value(json_object_get(a, "pid")) == pid;
	json_decref(st);
	return found;
}

/* A WELCOME that waits in the send queue while its domain goes (its agent's
 * process exited, a child kept the socket) must still carry that pool,
 * not whatever took its descriptor's number since. */
TEST_IMPL(daemon_welcome_fd_kept)
{
	struct tdaemon t;
	td_start(&t, 16);
	unsigned char req[MD_MSG_HDR_SIZE];
	md__msg_hdr_encode(req, MD_MSG_STATUS, 0, 1);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	td_sockaddr(&t, &sa);

	/* The socket is ours too; the child connects it, so it is the peer. */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(fd >= 0);
	int sync[2];
	ASSERT(pipe(sync) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
			_exit(1);
		/* Replies we do not read, ~600 KB: more than the socket
		 * buffers hold, less than the 1 MiB that stops the reading. */
		size_t nreq = 1500, len = nreq * MD_MSG_HDR_SIZE;
		unsigned char *buf = malloc(len + 128);
		for (size_t i = 0; i < nreq; i++) {
			md__msg_hdr_encode(buf + i * MD_MSG_HDR_SIZE, MD_MSG_STATUS, 0, (uint32_t)i + 1);
		}
		struct md__msg m = { .hdr = { .type = MD_MSG_HELLO, .seq = 99999 } };
		m.u.hello.pid = (uint32_t)getpid();
		memcpy(m.u.hello.domain, "gone", 4);
		ssize_t n = md__msg_encode(&m, buf + len, 128);
		if (n <= 0 || send(fd, buf, len + (size_t)n, MSG_NOSIGNAL) != (ssize_t)(len + (size_t)n))
			_exit(2);
		char b;
		_exit(read(sync[0], &b, 1) == 1 ? 0 : 3);
	}
	close(sync[0]);
	for (int i = 0; i < 300 && !agent_listed(&t, kid); i++)
		usleep(10000);
	ASSERT(agent_listed(&t, kid));
	/* Its process goes: the daemon drops its record and the domain's pool. */
	ASSERT(kill(kid, SIGKILL) == 0);
	ASSERT(waitpid(kid, NULL, 0) == kid);
	for (int i = 0; i < 300 && agent_listed(&t, kid); i++)
		usleep(10000);
	ASSERT(!agent_listed(&t, kid));
	/* Another domain's pool takes the lowest descriptors free. */
	struct md__msg_welcome w;
	int other;
	struct md__client *c = td_agent(&t, "other", &w, &other);
	struct stat ost, got_st;
	ASSERT(fstat(other, &ost) == 0);

	int got = recv_fd(fd);
	ASSERT(got >= 0);
	ASSERT(fstat(got, &got_st) == 0);
	char link[64], target[256] = "";
	snprintf(link, sizeof(link), "/proc/self/fd/%d", got);
	ASSERT(readlink(link, target, sizeof(target) - 1) > 0);
	ASSERT(strstr(target, "memdedup-pool") != NULL);
	ASSERT(got_st.st_ino != ost.st_ino);	/* the gone domain's pool, not the other's */
	ASSERT_EQ(fcntl(got, F_GETFL) & O_ACCMODE, O_RDONLY);
	close(got);
	close(fd);
	close(sync[1]);
	md__client_free(c);
	close(other);
	td_stop(&t);
	return 0;
}

static struct passwd *nobody(void)
{
	struct passwd *pw = getpwnam("nobody");
	if (getuid() != 0 || !pw)
		SKIP("needs root and a 'nobody' user");
	return pw;
}

static int become(const struct passwd *pw)
{
	return setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) || setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid);
}

/* The client talks only to a daemon of root or of its own uid. */
TEST_IMPL(daemon_client_checks_daemon)
{
	struct passwd *pw = nobody();
	char dir[300], sock[400];
	snprintf(dir, sizeof(dir), "%s/nb", test_dir());
	ASSERT(mkdir(dir, 0755) == 0 && chown(dir, pw->pw_uid, pw->pw_gid) == 0);
	ASSERT(chmod(test_dir(), 0755) == 0);
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	const char *exe = daemon_exe();
	pid_t d = fork();
	ASSERT(d >= 0);
	if (d == 0) {
		if (become(pw))
			_exit(126);
		int fd = open("/dev/null", O_WRONLY);
		dup2(fd, 2);
		execl(exe, "memdedupd", "--foreground", "--run-dir", dir, "--socket", sock, (char *)NULL);
		_exit(127);
	}
	/* Root's client: the daemon is another user's (once it listens). */
	struct md__client *c;
	int err = -ENOENT;
	for (int i = 0; i < 300 && (err == -ENOENT || err == -ECONNREFUSED); i++) {
		usleep(10000);
		err = md__client_connect(&c, sock);
	}
	ASSERT_EQ(err, -EPERM);
	ASSERT(!md__daemon_alive(sock));
	/* Its own user's client: fine. */
	pid_t k = fork();
	ASSERT(k >= 0);
	if (k == 0) {
		if (become(pw))
			_exit(10);
		if (md__client_connect(&c, sock))
			_exit(11);
		md__client_free(c);
		_exit(0);
	}
	int ws;
	ASSERT(waitpid(k, &ws, 0) == k && WIFEXITED(ws));
	ASSERT_EQ(WEXITSTATUS(ws), 0);
	ASSERT(kill(d, SIGTERM) == 0);
	ASSERT(waitpid(d, &ws, 0) == d);
	return 0;
}

/* The /tmp default run directory: ours and 0700, or not used. */
TEST_IMPL(daemon_tmp_run_dir_checked)
{
	struct passwd *pw = nobody();
	char dir[64], buf[256];
	snprintf(dir, sizeof(dir), "/tmp/memdedup-%u", (unsigned)pw->pw_uid);
	struct stat st;
	if (lstat(dir, &st) == 0)
		SKIP("%s exists already", dir);
	pid_t k = fork();
	ASSERT(k >= 0);
	if (k == 0) {
		unsetenv("MEMDEDUP_RUN_DIR");
		unsetenv("XDG_RUNTIME_DIR");
		unsetenv("MEMDEDUP_SOCKET");
		if (become(pw))
			_exit(10);
		/* Absent: made ours, 0700. */
		if (md__run_dir(NULL, buf, sizeof(buf)) != 0 || strcmp(buf, dir) != 0)
			_exit(11);
		if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || (st.st_mode & 07777) != 0700)
			_exit(12);
		/* Others may enter: refused, and so is the socket in it. */
		if (chmod(dir, 0755) != 0 || md__run_dir(NULL, buf, sizeof(buf)) != -EPERM)
			_exit(13);
		struct md__client *c;
		if (md__client_connect(&c, NULL) != -EPERM)
			_exit(14);
		if (rmdir(dir) != 0)
			_exit(15);
		/* A link to a directory of ours: refused too. */
		if (symlink("/tmp", dir) != 0 || md__run_dir(NULL, buf, sizeof(buf)) != -EPERM)
			_exit(16);
		unlink(dir);
		_exit(0);
	}
	int ws;
	pid_t got = waitpid(k, &ws, 0);
	rmdir(dir);	/* before any assertion: nobody's run directory must not stay */
	unlink(dir);
	ASSERT(got == k && WIFEXITED(ws));
	ASSERT_EQ(WEXITSTATUS(ws), 0);
	/* Someone else's: refused (root's run dir is /run/memdedup, so the
	 * check is seen as nobody, in a directory root made). */
	ASSERT(mkdir(dir, 0700) == 0);
	k = fork();
	ASSERT(k >= 0);
	if (k == 0) {
		unsetenv("MEMDEDUP_RUN_DIR");
		unsetenv("XDG_RUNTIME_DIR");
		if (become(pw))
			_exit(10);
		_exit(md__run_dir(NULL, buf, sizeof(buf)) == -EPERM ? 0 : 11);
	}
	got = waitpid(k, &ws, 0);
	rmdir(dir);
	ASSERT(got == k && WIFEXITED(ws));
	ASSERT_EQ(WEXITSTATUS(ws), 0);
	return 0;
}

static long long limit_of(pid_t pid, int hard)
{
	char path[64], line[256];
	long long soft_v = -1, hard_v = -1;
	snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
	FILE *f = fopen(path, "r");
	ASSERT(f);
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "Max open files", 14) == 0)
			sscanf(line + 14, "%lld %lld", &soft_v, &hard_v);
	fclose(f);
	return hard ? hard_v : soft_v;
}

/* RLIMIT_NOFILE raised to the hard limit; 256 connections per uid but
 * root's, the next refused with an ERROR that says why. */
/* Users other than root cannot take the last eighth of the connections:
 * root's new VMMs still reach the daemon. */
TEST_IMPL(daemon_connections_kept_for_root)
{
	struct passwd *pw = nobody();
	struct tdaemon t;
	/* 128 connections, 16 kept for root; hard too, or the daemon raises
	 * it (this test's process alone: each test is a process of its own). */
	struct rlimit low = { 64 + 7 * 128, 64 + 7 * 128 };
	ASSERT(setrlimit(RLIMIT_NOFILE, &low) == 0);
	td_start(&t, 16);
	int sync[2], res[2];
	ASSERT(pipe(sync) == 0 && pipe(res) == 0);
	pid_t k = fork();
	ASSERT(k >= 0);
	if (k == 0) {
		static struct md__client *cs[200];
		static char buf[MD_MSG_MAX];
		unsigned char taken = 0;
		if (become(pw))
			_exit(10);
		for (int i = 0; i < 200; i++) {
			uint32_t len = sizeof(buf);
			unsigned type;
			if (md__client_connect(&cs[i], t.sock))
				_exit(11);
			int err = md__client_request(cs[i], MD_MSG_STATUS, NULL, 0, buf, &len, &type);
			if (err == -EUSERS)
				break;
			if (err || type != MD_MSG_STATUS_R)
				_exit(12);
			taken++;
		}
		char b;
		if (write(res[1], &taken, 1) != 1 || read(sync[0], &b, 1) != 1)
			_exit(13);
		_exit(0);
	}
	unsigned char taken = 0;
	ASSERT_EQ(read(res[0], &taken, 1), 1);
	printf("  nobody took %u connections of 128\n", taken);
	ASSERT(taken >= 108 && taken <= 112);
	json_t *js = td_status(&t);	/* root still gets in */
	json_decref(js);
	struct md__msg_welcome w;
	int fd;
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	md__client_free(c);
	close(fd);
	/* Root gets the rest, and no more: 128 in all. */
	static struct md__client *rs[40];
	static char buf[MD_MSG_MAX];
	int root = 0, err = 0;
	while (root < 40) {
		uint32_t len = sizeof(buf);
		unsigned type;
		ASSERT_EQ(md__client_connect(&rs[root], t.sock), 0);
		err = md__client_request(rs[root], MD_MSG_STATUS, NULL, 0, buf, &len, &type);
		if (err) {
			md__client_free(rs[root]);
			break;
		}
		root++;
	}
	ASSERT_EQ(err, -EUSERS);
	ASSERT_EQ(taken + root, 128);
	for (int i = 0; i < root; i++)
		md__client_free(rs[i]);
	ASSERT(write(sync[1], "x", 1) == 1);
	int st;
	ASSERT_EQ(waitpid(k, &st, 0), k);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	td_stop(&t);
	return 0;
}

/* Who counts as privileged (the part kept for root, admin controls): root,
 * and the user memdedupd runs as, whose own daemon it is (a user's
 * memdedupd, not root's): with root alone, a user's own daemon would keep
 * an eighth of its connections from that user, its only one. */
TEST_IMPL(daemon_own_user_privileged)
{
	if (geteuid() != 0)
		SKIP("needs root: the test becomes another user");
	ASSERT(md__privileged(0));
	ASSERT(!md__privileged(65534));
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
			_exit(2);
		_exit(md__privileged(65534) && md__privileged(0) && !md__privileged(1000) ? 0 : 1);
	}
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	return 0;
}

TEST_IMPL(daemon_connection_limits)
{
	struct passwd *pw = nobody();
	struct tdaemon t;
	struct rlimit rl;
	ASSERT(getrlimit(RLIMIT_NOFILE, &rl) == 0);
	if (rl.rlim_max < 2048)
		SKIP("hard RLIMIT_NOFILE %llu too low", (unsigned long long)rl.rlim_max);
	/* Room for 330 connections, 289 of users other than root. */
	struct rlimit low = { 2048, rl.rlim_max };
	ASSERT(setrlimit(RLIMIT_NOFILE, &low) == 0);
	setenv("MEMDEDUP_STATUS_KB_PER_S", "0", 1);	/* STATUS as a ping, 256 at once */
	td_start(&t, 16);
	unsetenv("MEMDEDUP_STATUS_KB_PER_S");
	ASSERT(setrlimit(RLIMIT_NOFILE, &rl) == 0);
	ASSERT_EQ(limit_of(t.pid, 0), limit_of(t.pid, 1));

	int sync[2], res[2];
	ASSERT(pipe(sync) == 0 && pipe(res) == 0);
	pid_t k = fork();
	ASSERT(k >= 0);
	if (k == 0) {
		static struct md__client *cs[MD_D_CONNS_PER_UID + 1];
		char out = 0;
		if (become(pw))
			_exit(10);
		for (int i = 0; i < MD_D_CONNS_PER_UID; i++)
			if (md__client_connect(&cs[i], t.sock))
				_exit(11);
		/* Each answers: all were taken. */
		static char buf[MD_MSG_MAX];
		for (int i = 0; i < MD_D_CONNS_PER_UID; i++) {
			uint32_t len = sizeof(buf);
			unsigned type;
			if (md__client_request(cs[i], MD_MSG_STATUS, NULL, 0, buf, &len, &type) ||
			    type != MD_MSG_STATUS_R)
				_exit(12);
		}
		struct md__client *extra;
		if (md__client_connect(&extra, t.sock))
			_exit(13);
		uint32_t len = sizeof(buf);
		unsigned type;
		int err = md__client_request(extra, MD_MSG_STATUS, NULL, 0, buf, &len, &type);
		out = err == -EUSERS ? 'r' : 'x';
		if (write(res[1], &out, 1) != 1)
			_exit(14);
		md__client_free(extra);
		/* One fewer: room again, once the daemon has seen it go. */
		md__client_free(cs[0]);
		for (int tries = 0;; tries++) {
			if (md__client_connect(&extra, t.sock))
				_exit(15);
			len = sizeof(buf);
			err = md__client_request(extra, MD_MSG_STATUS, NULL, 0, buf, &len, &type);
			if (!err && type == MD_MSG_STATUS_R)
				break;
			md__client_free(extra);
			if (err != -EUSERS || tries == 100)
				_exit(16);
			usleep(50000);
		}
		_exit(read(sync[0], &out, 1) == 1 ? 0 : 17);
	}
	char r = 0;
	ASSERT_EQ(read(res[0], &r, 1), 1);
	ASSERT_EQ(r, 'r');
	/* Root is not counted with nobody, and not capped. */
	json_t *js = td_status(&t);
	json_decref(js);
	ASSERT(write(sync[1], "x", 1) == 1);
	int ws;
	ASSERT(waitpid(k, &ws, 0) == k && WIFEXITED(ws));
	ASSERT_EQ(WEXITSTATUS(ws), 0);
	ASSERT_EQ(td_sh("grep -q 'refused: 256 connections of that uid' %s/log", t.dir), 0);
	/* Root past MD_D_CONNS_PER_UID: each taken (refused only while nobody's
	 * connections, closed, still count). */
	static struct md__client *rs[MD_D_CONNS_PER_UID + 1];
	static char buf[MD_MSG_MAX];
	for (int i = 0; i <= MD_D_CONNS_PER_UID; i++) {
		int err = -EUSERS;
		for (int tries = 0; err == -EUSERS && tries < 100; tries++) {
			uint32_t len = sizeof(buf);
			unsigned type;
			if (tries)
				usleep(50000);
			ASSERT_EQ(md__client_connect(&rs[i], t.sock), 0);
			err = md__client_request(rs[i], MD_MSG_STATUS, NULL, 0, buf, &len, &type);
			if (err)
				md__client_free(rs[i]);
			else
				ASSERT_EQ(type, MD_MSG_STATUS_R);
		}
		ASSERT_EQ(err, 0);
	}
	for (int i = 0; i <= MD_D_CONNS_PER_UID; i++)
		md__client_free(rs[i]);
	td_stop(&t);
	return 0;
}

/* Agents held for a test, each its own process (run in a forked child):
 * hold_agents forks n that each run join(t, i), which returns 0 once it
 * did what it must, and stay until release_agents. Exits the caller with
 * 12 if one failed. */
struct held { int release[2]; int n; };

static void hold_agents(struct held *h, const struct tdaemon *t, int n,
			int (*join)(const struct tdaemon *t, int i))
{
	int ready[2];
	char b;
	if (pipe(h->release) || pipe(ready))
		_exit(11);
	h->n = n;
	for (int i = 0; i < n; i++) {
		pid_t g = fork();
		if (g < 0)
			_exit(11);
		if (g == 0) {
			close(h->release[1]);
			b = join(t, i) == 0 ? 'k' : 'x';
			if (write(ready[1], &b, 1) != 1)
				_exit(1);
			_exit(read(h->release[0], &b, 1) == 0 ? 0 : 1);	/* EOF: released */
		}
	}
	for (int i = 0; i < n; i++)
		if (read(ready[0], &b, 1) != 1 || b != 'k')
			_exit(12);
	close(ready[0]), close(ready[1]), close(h->release[0]);
}

/* Lets them go; 0 if every one exited 0. */
static int release_agents(struct held *h)
{
	int bad = 0, st;
	close(h->release[1]);
	for (int i = 0; i < h->n; i++)
		bad |= wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0;
	return bad;
}

/* An agent of domain "n" that publishes a page and disconnects, still
 * holding its reference. */
static int join_holding(const struct tdaemon *t, int i)
{
	static unsigned char page[MD_MSG_PAGE];
	struct md__msg_welcome w;
	uint64_t h;
	uint32_t slot;
	int fd;
	(void)i;
	td_fill_page(page, 5);
	h = md__page_hash(page);
	struct md__client *c = td_agent(t, "n", &w, &fd);
	int err = md__client_publish(c, &h, page, 1, &slot);
	md__client_free(c);
	return err;
}

/* Agents of uid still listed in status: all, and connected ones. */
static void agents_of(const struct tdaemon *t, uid_t uid, int *all, int *connected)
{
	json_t *st = td_status(t), *a;
	size_t i;
	*all = *connected = 0;
	json_array_foreach(json_object_get(st, "agents"), i, a)
		if (td_int(a, "uid") == (long long)uid) {
			(*all)++;
			*connected += json_is_true(json_object_get(a, "connected"));
		}
	json_decref(st);
}

/* Each agent record holds a pidfd and a number while its process lives:
 * one that leaves holding no references goes at once; one user other than
 * root keeps at most 256 (holding references, disconnected), the next
 * HELLO is refused saying why, and another user is still served. */
/* Waits up to 2 s for c's share to be an equal cut among n agents (the
 * daemon's SHARE comes unasked): 1 if it came. */
static int share_becomes(struct md__client *c, uint32_t n)
{
	struct md__msg_control ctl;
	for (int i = 0; i < 200 && md__client_share(c) != MD_SHARE_ALL / n; i++) {
		md__client_next_control(c, &ctl);
		usleep(10000);
	}
	return md__client_share(c) == MD_SHARE_ALL / n;
}

/* The rate is split among users first, then among each user's agents: two
 * of root's and one of nobody's make four parts for each of root's and two
 * for nobody's, where one user's many agents would slow everyone's. */
TEST_IMPL(daemon_share_split_per_user)
{
	struct passwd *pw = nobody();
	struct tdaemon t;
	struct md__msg_welcome w;
	int fd, hold[2], up[2];
	char b;

	td_start(&t, 16);
	ASSERT(pipe(hold) == 0 && pipe(up) == 0);
	pid_t root2 = fork();
	ASSERT(root2 >= 0);
	if (root2 == 0) {
		close(hold[1]);	/* its end of file comes when the parent closes */
		struct md__client *c = td_agent(&t, NULL, &w, &fd);
		(void)c;
		if (write(up[1], "r", 1) != 1 || read(hold[0], &b, 1) < 0)
			_exit(1);
		_exit(0);
	}
	ASSERT_EQ(read(up[0], &b, 1), 1);
	int go[2];
	ASSERT(pipe(go) == 0);
	pid_t other = fork();
	ASSERT(other >= 0);
	if (other == 0) {
		close(hold[1]);
		if (become(pw))
			_exit(10);
		struct md__client *c = td_agent(&t, NULL, &w, &fd);
		/* Two users (two agents of root's): two parts. Connected
		 * until the parent saw its own four parts. */
		if (!share_becomes(c, 2))
			_exit(11);
		_exit(read(go[0], &b, 1) == 1 ? 0 : 12);
	}
	struct md__client *c = td_agent(&t, NULL, &w, &fd);
	ASSERT(share_becomes(c, 4));
	ASSERT_EQ(write(go[1], "x", 1), 1);
	int st;
	ASSERT_EQ(waitpid(other, &st, 0), other);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	close(go[0]);
	close(go[1]);
	/* Nobody's agent gone: root's two split it all. */
	ASSERT(share_becomes(c, 2));
	close(hold[1]);
	ASSERT_EQ(waitpid(root2, &st, 0), root2);
	ASSERT(share_becomes(c, 1));
	md__client_free(c);
	close(fd);
	close(hold[0]);
	close(up[0]);
	close(up[1]);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_agents_per_uid)
{
	struct passwd *pw = nobody();
	struct tdaemon t;
	struct md__msg_welcome w;
	int go[2], res[2], fd, all, conn;
	char r = 0;

	td_start(&t, 16);
	ASSERT(pipe(go) == 0 && pipe(res) == 0);
	pid_t k = fork();
	ASSERT(k >= 0);
	if (k == 0) {
		struct held held;
		char b;
		if (become(pw))
			_exit(10);
		/* A HELLO and gone, the process alive: no record stays. */
		struct md__client *c = td_agent(&t, "n", &w, &fd);
		md__client_free(c);
		close(fd);
		hold_agents(&held, &t, MD_D_AGENTS_PER_UID, join_holding);
		if (write(res[1], "a", 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(13);
		struct md__client *extra;
		int pool_fd, err = md__client_connect(&extra, t.sock);
		if (!err)
			err = md__client_hello(extra, "n", 0, &w, &pool_fd);
		b = err == -EUSERS ? 'r' : 'x';
		if (write(res[1], &b, 1) != 1)
			_exit(14);
		_exit(release_agents(&held) ? 15 : 0);
	}
	ASSERT_EQ(read(res[0], &r, 1), 1);
	ASSERT_EQ(r, 'a');
	/* All 256 are listed once their connections closed, and the first
	 * HELLO, which held nothing, left none. */
	for (int i = 0; i < 300; i++) {
		agents_of(&t, pw->pw_uid, &all, &conn);
		if (all == MD_D_AGENTS_PER_UID && conn == 0)
			break;
		usleep(10000);
	}
	ASSERT_EQ(all, MD_D_AGENTS_PER_UID);
	ASSERT_EQ(conn, 0);
	ASSERT_EQ(td_sh("grep -q 'left holding no references' %s/log", t.dir), 0);
	ASSERT(write(go[1], "x", 1) == 1);
	ASSERT_EQ(read(res[0], &r, 1), 1);
	ASSERT_EQ(r, 'r');
	ASSERT_EQ(td_sh("grep -q 'too many agents of uid %u (at most %u)' %s/log",
			(unsigned)pw->pw_uid, MD_D_AGENTS_PER_UID, t.dir), 0);
	struct md__client *c = td_agent(&t, "root", &w, &fd);	/* another user is still served */
	md__client_free(c);
	close(fd);
	int ws;
	ASSERT(waitpid(k, &ws, 0) == k && WIFEXITED(ws));
	ASSERT_EQ(WEXITSTATUS(ws), 0);
	for (int i = 0; i < 300 && (agents_of(&t, pw->pw_uid, &all, &conn), all); i++)
		usleep(10000);
	ASSERT_EQ(all, 0);	/* gone with their processes */
	td_stop(&t);
	return 0;
}

/* A connection to the daemon that has sent STATUS n times, seq 1..n, in
 * one write. */
static int status_pipelined(const struct tdaemon *t, int n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	unsigned char req[64 * MD_MSG_HDR_SIZE];
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	td_sockaddr(t, &sa);
	if (fd < 0 || n > 64 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		return -1;
	for (int i = 0; i < n; i++)
		md__msg_hdr_encode(req + i * MD_MSG_HDR_SIZE, MD_MSG_STATUS, 0, (uint32_t)i + 1);
	if (send(fd, req, (size_t)n * MD_MSG_HDR_SIZE, MSG_NOSIGNAL) != n * MD_MSG_HDR_SIZE) {
		close(fd);
		return -1;
	}
	return fd;
}

/* The next message's type if it is whole and has seq, 0 on EOF or reset,
 * -1 if anything else (or nothing for 20 s: a daemon under a sanitizer
 * builds about a page a tenth of a second, and others' pages come first). */
static int status_reply(int fd, uint32_t seq)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	size_t want = MD_MSG_HDR_SIZE;
	struct md__msg_hdr h;
	for (size_t done = 0; done < want;) {
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, 20000) != 1)
			return -1;
		ssize_t r = read(fd, buf + done, want - done);
		if (r <= 0)
			return done == 0 && (r == 0 || errno == ECONNRESET) ? 0 : -1;
		done += (size_t)r;
		if (done == MD_MSG_HDR_SIZE) {
			if (md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h) != 0 || h.seq != seq)
				return -1;
			want += h.length;
		}
	}
	return h.type;
}

/* 1 once the daemon's end of fd is closed (what it sent read through),
 * 0 if nothing comes for 20 s. */
static int closed_by_daemon(int fd)
{
	static char buf[1 << 16];
	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, 20000) != 1)
			return 0;
		ssize_t r = read(fd, buf, sizeof(buf));
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			return 1;
		if (r < 0)
			return 0;
	}
}

/* Replies wait while a peer does not read them: requests it pipelined are
 * handled as it reads, none dropped, however large the replies, however
 * long it waits; and what is queued for one user's peers is bounded
 * together: of forty peers that each asked for four megabytes and read
 * nothing, some are dropped (the daemon would otherwise hold about two
 * megabytes for each), while another user is served in full. */
#define BIG_AGENTS 150

/* An agent of domain "big" that reports all 256 counters, 19 digits each:
 * BIG_AGENTS of them make a status page of about a megabyte. */
static int join_reporting(const struct tdaemon *t, int i)
{
	static uint64_t ctr[MD_REPORT_MAX];
	struct md__msg_welcome w;
	int fd;
	(void)i;
	struct md__client *c = td_agent(t, "big", &w, &fd);
	for (unsigned j = 0; j < MD_REPORT_MAX; j++)
		ctr[j] = 1000000000000000000ull + j;
	return md__client_report(c, ctr, MD_REPORT_MAX);
}

TEST_IMPL(daemon_unsent_bounded)
{
	struct passwd *pw = nobody();
	struct tdaemon t;
	int res[2], go[2];

	/* A user's STATUS pages, about a megabyte each, fill its queues
	 * faster than their limit in bytes a second would let them. */
	setenv("MEMDEDUP_STATUS_KB_PER_S", "0", 1);
	td_start(&t, 16);
	unsetenv("MEMDEDUP_STATUS_KB_PER_S");
	ASSERT(pipe(res) == 0 && pipe(go) == 0);
	pid_t k = fork();
	ASSERT(k >= 0);
	if (k == 0) {
		int full = 0, cut = 0, fds[40];
		struct held held;
		char b;
		if (become(pw))
			_exit(10);
		hold_agents(&held, &t, BIG_AGENTS, join_reporting);
		/* Forty pages of about a megabyte each, asked at once. */
		int fd = status_pipelined(&t, 40);
		usleep(300000);
		for (int i = 0; i < 40; i++)
			if (fd < 0 || status_reply(fd, (uint32_t)i + 1) != MD_MSG_STATUS_R)
				_exit(13);
		close(fd);
		/* Forty that read nothing: some are dropped as their replies
		 * would pass the user's bound; meanwhile another user reads
		 * (the parent). */
		for (int i = 0; i < 40; i++)
			if ((fds[i] = status_pipelined(&t, 4)) < 0)
				_exit(14);
		usleep(1000000);
		if (write(res[1], "b", 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(19);
		for (int i = 0; i < 40; i++) {
			int got = 0;
			while (got < 4 && status_reply(fds[i], (uint32_t)got + 1) == MD_MSG_STATUS_R)
				got++;
			if (got < 4 && !closed_by_daemon(fds[i]))
				_exit(15);	/* dropped, so closed */
			full += got == 4;
			cut += got < 4;
			close(fds[i]);
		}
		/* A peer the daemon owes replies is not taken for one that
		 * owes it bytes (stalled), however long it does not read. */
		fd = status_pipelined(&t, 4);
		/* And one hung up on after an ERROR, its replies queued
		 * before, that reads nothing: closed all the same. */
		int hung = status_pipelined(&t, 1);
		if (hung < 0 || send(hung, "XXXXXXXXXXXXXXXX", MD_MSG_HDR_SIZE, MSG_NOSIGNAL) != MD_MSG_HDR_SIZE)
			_exit(20);
		sleep(MD_D_STALL_MS / 1000 + 2);
		close(hung);
		for (int i = 0; i < 4; i++)
			if (fd < 0 || status_reply(fd, (uint32_t)i + 1) != MD_MSG_STATUS_R)
				_exit(16);
		close(fd);
		unsigned char counts[2] = { (unsigned char)full, (unsigned char)cut };
		if (write(res[1], counts, 2) != 2)
			_exit(18);
		_exit(release_agents(&held) ? 17 : 0);
	}
	/* Root reads forty pages while that user's peers are over its
	 * bound: it is not counted with them, and none of its is dropped. */
	char b = 0;
	close(res[1]);
	ASSERT_EQ(read(res[0], &b, 1), 1);
	ASSERT_EQ(b, 'b');
	int fd = status_pipelined(&t, 40);
	ASSERT(fd >= 0);
	for (int i = 0; i < 40; i++)
		ASSERT_EQ(status_reply(fd, (uint32_t)i + 1), MD_MSG_STATUS_R);
	close(fd);
	ASSERT(write(go[1], "g", 1) == 1);
	unsigned char counts[2] = { 0, 0 };
	ssize_t got = read(res[0], counts, 2);
	int ws;
	ASSERT(waitpid(k, &ws, 0) == k && WIFEXITED(ws));
	ASSERT_EQ(WEXITSTATUS(ws), 0);
	ASSERT_EQ(got, 2);
	ASSERT(counts[1] >= 1);	/* the user's bound dropped some that did not read */
	ASSERT_EQ(td_sh("grep -q 'does not read its socket' %s/log", t.dir), 0);
	ASSERT_EQ(td_sh("grep -q 'dropped: read nothing for' %s/log", t.dir), 0);
	td_stop(&t);
	return 0;
}

/* How many agents memdedupd sees connected. */
static int connected_agents(const struct tdaemon *t)
{
	json_t *st = td_status(t), *a;
	size_t i;
	int n = 0;
	ASSERT(st);
	json_array_foreach(json_object_get(st, "agents"), i, a)
		n += json_is_true(json_object_get(a, "connected"));
	json_decref(st);
	return n;
}

/* Agents that got no pidfd (the daemon is out of descriptors) are refused,
 * not served with references that would go with their connection while
 * they still map the pages. n: the daemon's RLIMIT_NOFILE. */
static void pidfd_or_refused(unsigned n)
{
	struct tdaemon t;
	struct rlimit low = { n, n };
	td_start(&t, 64);
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &low, NULL) == 0);
	pid_t kids[64];
	int go[64], nk = 0, joined = 0;
	/* Agents of one domain, each holding a page, until one is refused. */
	for (; nk < 64; nk++) {
		int p[2], res[2];
		ASSERT(pipe(p) == 0 && pipe(res) == 0);
		pid_t k = fork();
		ASSERT(k >= 0);
		if (k == 0) {
			struct md__client *c;
			struct md__msg_welcome w;
			int fd, err;
			static unsigned char page[MD_MSG_PAGE];
			char out = 'x', b;
			err = md__client_connect(&c, t.sock);
			if (!err)
				err = md__client_hello(c, "one", 0, &w, &fd);
			if (!err) {
				uint32_t slot;
				uint64_t h;
				td_fill_page(page, (unsigned)getpid());
				h = md__page_hash(page);
				err = md__client_publish(c, &h, page, 1, &slot);
			}
			out = err ? 'n' : 'y';
			if (write(res[1], &out, 1) != 1)
				_exit(1);
			if (err)
				_exit(0);
			/* Told to: drop the connection and stay. */
			if (read(p[0], &b, 1) != 1)
				_exit(1);
			md__client_free(c);
			if (read(p[0], &b, 1) != 1)
				_exit(1);
			_exit(0);
		}
		close(p[0]);
		close(res[1]);
		char r = 0;
		ASSERT_EQ(read(res[0], &r, 1), 1);
		close(res[0]);
		if (r != 'y') {
			close(p[1]);
			waitpid(k, NULL, 0);
			break;
		}
		kids[nk] = k;
		go[nk] = p[1];
		joined++;
	}
	ASSERT(joined > 0 && nk < 64);
	/* Every one that joined keeps its page after dropping its connection. */
	for (int i = 0; i < joined; i++)
		ASSERT(write(go[i], "d", 1) == 1);
	for (int i = 0; i < 100 && connected_agents(&t) > 0; i++)
		usleep(50000);
	ASSERT_EQ(connected_agents(&t), 0);
	json_t *st = td_status(&t);
	long long live = td_int(json_array_get(json_object_get(st, "domains"), 0), "pool_live_pages");
	json_decref(st);
	ASSERT_EQ(live, joined);
	for (int i = 0; i < joined; i++) {
		ASSERT(write(go[i], "e", 1) == 1);
		ASSERT(waitpid(kids[i], NULL, 0) == kids[i]);
		close(go[i]);
	}
	td_stop(&t);
}

/* Out of descriptors, the daemon stops listening for a second at a time
 * instead of spinning on a listener that stays readable (the log had a line
 * per failed accept, thousands a second); once descriptors are back, the
 * connection that waited is served. */
TEST_IMPL(daemon_accept_backs_off)
{
	struct tdaemon t;
	char path[64];
	td_start(&t, 16);
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)t.pid);
	long long open_fds = 0;
	DIR *dir = opendir(path);
	ASSERT(dir);
	for (struct dirent *e; (e = readdir(dir));)
		open_fds += e->d_name[0] != '.';
	closedir(dir);
	struct rlimit back;
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, NULL, &back) == 0);
	struct rlimit none = { (rlim_t)open_fds, back.rlim_max };
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &none, NULL) == 0);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	td_sockaddr(&t, &sa);
	ASSERT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);	/* in the backlog */
	usleep(2500000);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "grep -c '^.*accept: ' %s/log", t.dir);
	FILE *f = popen(cmd, "r");
	int lines = -1;
	ASSERT(f && fscanf(f, "%d", &lines) == 1);
	pclose(f);
	ASSERT(lines >= 1 && lines <= 4);
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &back, NULL) == 0);
	close(fd);
	json_t *st = td_status(&t);	/* accepted again within a second */
	ASSERT(st);
	json_decref(st);
	td_stop(&t);
	return 0;
}

/* The daemon has one descriptor left when an agent connects: the accept
 * takes it, and no pidfd of the agent can be had (SO_PEERPIDFD, else
 * pidfd_open, both at accept). The agent is refused at HELLO, not served with references
 * only its connection would hold. Its domain's pool exists already (a
 * first agent made it), so nothing else needs a descriptor before. */
TEST_IMPL(daemon_agent_without_pidfd_refused_at_hello)
{
	struct tdaemon t;
	td_start(&t, 16);
	struct md__msg_welcome w;
	int pool;
	struct md__client *first = td_agent(&t, "one", &w, &pool);
	close(pool);
	/* The daemon closes its copy of the pool's descriptor after sending
	 * the WELCOME: a request answered means it is done with it. */
	uint64_t h = 1;
	uint32_t slot1;
	ASSERT_EQ(md__client_lookup(first, &h, NULL, 1, &slot1), 0);
	char fds[64];
	snprintf(fds, sizeof(fds), "/proc/%d/fd", (int)t.pid);
	unsigned open_fds = 0, last = 0;
	for (int same = 0, tries = 0; same < 3; usleep(20000)) {	/* and it holds still */
		ASSERT(tries++ < 250);
		DIR *dir = opendir(fds);
		ASSERT(dir);
		open_fds = 0;
		for (struct dirent *e; (e = readdir(dir));)
			open_fds += e->d_name[0] != '.';
		closedir(dir);
		same = open_fds == last ? same + 1 : 0;
		last = open_fds;
	}
	struct rlimit room, one_left;
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, NULL, &room) == 0);
	one_left = (struct rlimit){ open_fds + 1, room.rlim_max };
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &one_left, NULL) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		struct md__client *c;
		int fd;
		int err = md__client_connect(&c, t.sock);
		if (!err)
			err = md__client_hello(c, "one", 0, &w, &fd);
		_exit(err == -EMFILE ? 0 : 1);
	}
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	ASSERT_EQ(st, 0);
	char log[400], want[64];
	snprintf(log, sizeof(log), "%s/log", t.dir);
	snprintf(want, sizeof(want), "cannot watch pid %d", (int)kid);
	ASSERT(strstr(file_text(log), want));
	ASSERT(prlimit(t.pid, RLIMIT_NOFILE, &room, NULL) == 0);	/* td_stop's STATUS */
	md__client_free(first);
	td_stop(&t);
	return 0;
}

TEST_IMPL(daemon_agent_without_pidfd_refused)
{
	/* Descriptors run out with agents connected: every agent served
	 * keeps its page when its connection goes. (Here the accept is what
	 * fails first; daemon_agent_without_pidfd_refused_at_hello reaches
	 * the HELLO that finds no pidfd.) */
	pidfd_or_refused(30);
	pidfd_or_refused(31);
	return 0;
}

/* A daemon whose listen backlog is full is busy, not gone. */
TEST_IMPL(daemon_alive_when_backlog_full)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/busy.sock", test_dir());
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(l >= 0);
	ASSERT_EQ(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ASSERT_EQ(listen(l, 0), 0);
	int fd[8], n = 0, full = 0;
	while (n < 8 && !full) {
		fd[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		ASSERT(fd[n] >= 0);
		if (connect(fd[n], (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			ASSERT_EQ(errno, EAGAIN);
			full = 1;
		}
		n++;
	}
	ASSERT(full);
	ASSERT(md__daemon_alive(sa.sun_path));
	for (int i = 0; i < n; i++)
		close(fd[i]);
	close(l);
	/* Nobody listens now: gone. */
	ASSERT(!md__daemon_alive(sa.sun_path));
	return 0;
}
