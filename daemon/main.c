/*
 * main.c - memdedupd: options, one instance per run directory, daemonizing,
 * signals. See daemon.h for the other files and docs/protocol.md for what
 * it speaks.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "daemon.h"
#include "printable.h"
#include "stats_file.h"

static const char usage_text[] =
	"usage: memdedupd [--foreground] [--socket PATH] [--run-dir DIR] [--pool-pages N]\n"
	"\n"
	"The memdedup daemon: keeps one content pool and index per user and domain,\n"
	"shared by the agents of that user's VMs, and answers `memdedup status`,\n"
	"`pause`, `resume`, `unmerge` and `set`.\n"
	"\n"
	"  --foreground     stay in the foreground, log to stderr\n"
	"  --socket PATH    listen there (default: $MEMDEDUP_SOCKET, else\n"
	"                   RUN_DIR/memdedupd.sock)\n"
	"  --run-dir DIR    pid file, log and default socket (default: $MEMDEDUP_RUN_DIR,\n"
	"                   /run/memdedup for root, else $XDG_RUNTIME_DIR/memdedup,\n"
	"                   else /tmp/memdedup-UID)\n"
	"  --pool-pages N   slots of each pool (default 1048576: 4 GiB; at most 67108864)\n"
	"  -h, --help       this text\n"
	"  --version        the version, as `memdedup --version` says it\n"
	"\n"
	"MEMDEDUP_CONTROL_WAIT_MS=N (100..60000, default 60000): how long a control\n"
	"waits for the agents before memdedupd answers that one did not (an unmerge:\n"
	"each agent, from its turn; shorter only: `memdedup` waits that long and 5 s\n"
	"more, from each turn).\n"
	"MEMDEDUP_STATUS_KB_PER_S=N (0..1048576, default 2048; 0: no limit): the status\n"
	"pages built for one user other than root, in KiB a second (more are refused,\n"
	"\"try again in a second\").\n"
	"\n"
	"Exit status: 0; 1 on a failure; 2 on bad usage; 3 when another daemon holds\n"
	"the run directory or answers on the socket (it runs: nothing to restart).\n";

/* Started on demand (md__daemon_ensure, by `memdedup run`): another daemon
 * there (exit 3) is the daemon the caller wanted, and VMMs started together
 * each start one: the losers say nothing on their user's terminal. */
static int held_quiet;

/* Creates dir and its missing parents. *made: the length of the shortest
 * prefix of dir this call created (0: none), for rmdir_made(). */
static int mkdir_p(const char *dir, size_t *made)
{
	char buf[MD_D_RUN_DIR_MAX];
	*made = 0;
	if ((size_t)snprintf(buf, sizeof(buf), "%s", dir) >= sizeof(buf))
		return -ENAMETOOLONG;
	for (char *p = buf + 1;; p++) {
		char c = *p;
		if (c != '/' && c)
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) == 0) {
			if (!*made)
				*made = (size_t)(p - buf);
		} else if (errno != EEXIST) {
			return -errno;
		}
		*p = c;
		if (!c)
			return 0;
	}
}

/* Removes what mkdir_p(dir) made, deepest first, as long as it is empty. */
static void rmdir_made(const char *dir, size_t made)
{
	char buf[MD_D_RUN_DIR_MAX];
	if (!made || (size_t)snprintf(buf, sizeof(buf), "%s", dir) >= sizeof(buf))
		return;
	for (;;) {
		if (rmdir(buf) != 0)
			return;
		char *slash = strrchr(buf, '/');
		while (slash && slash > buf && slash[-1] == '/')
			slash--;
		if (!slash || (size_t)(slash - buf) < made)
			return;
		*slash = '\0';
	}
}

/* We chdir("/") when we daemonize: a relative path would then name
 * something else. */
static int absolute(const char *path, char *buf, size_t size)
{
	char cwd[PATH_MAX];
	int n;
	if (path[0] == '/') {
		n = snprintf(buf, size, "%s", path);
	} else {
		if (!getcwd(cwd, sizeof(cwd)))
			return -errno;
		n = snprintf(buf, size, "%s/%s", strcmp(cwd, "/") ? cwd : "", path);
	}
	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* Every connection costs a descriptor, and a pidfd of its peer: the kernel's
 * default of 1024 would run out before MD_D_MAX_CONNS. What the hard limit
 * allows is ours; what it does not, the connection limit follows. */
static size_t raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 256;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t want = rl.rlim_max;
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	/* At most: a connection and its peer's pidfd, an agent record's pidfd
	 * and /proc/PID/pagemap (one record a connection, records of agents gone
	 * included), a domain's two pool descriptors (one domain a record at
	 * most), and the pool's copy queued with a WELCOME not sent yet. */
	size_t n = rl.rlim_cur > 128 ? (size_t)(rl.rlim_cur - 64) / 7 : 16;
	return n < MD_D_MAX_CONNS ? n : MD_D_MAX_CONNS;
}

/* Opens path (created if need be) and tries its flock: 1 locked, 0 held by
 * another, each with *fdp open on it; else -errno. A daemon going away
 * unlinks its lock file before it lets go of the lock: one locked since may
 * be that unlinked file, which no later daemon would find. Again, then, on
 * the file the path names now. */
static int lock_open(const char *path, int *fdp)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	int locked = flock(fd, LOCK_EX | LOCK_NB) == 0;
	struct stat held, named;
	for (int tries = 0; locked && tries < 20; tries++) {
		if (fstat(fd, &held) == 0 && stat(path, &named) == 0 && held.st_dev == named.st_dev &&
		    held.st_ino == named.st_ino)
			break;
		close(fd);
		fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
		if (fd < 0)
			return -errno;
		locked = flock(fd, LOCK_EX | LOCK_NB) == 0;
	}
	*fdp = fd;
	return locked;
}

/* The pid file is locked for the daemon's life: a second daemon of the same
 * run directory fails on the lock whatever the socket does. */
static int lock_pid_file(const char *path)
{
	int fd;
	int locked = lock_open(path, &fd);
	if (locked < 0)
		return locked;
	if (locked) {
		/* A daemon killed left its pid: one starting beside us reads
		 * none until ours, written once we listen. */
		if (ftruncate(fd, 0) < 0) {
			int err = -errno;
			close(fd);
			return err;
		}
		return fd;
	}
	/* One starting at the same time has the lock before it writes
	 * its pid (VMMs started together each start one). */
	long pid = 0;
	for (int i = 0; i < 40 && pid <= 0; i++) {
		char buf[32] = "";
		ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
		buf[n > 0 ? n : 0] = '\0';
		pid = strtol(buf, NULL, 10);
		if (pid <= 0)
			usleep(50000);
	}
	if (!held_quiet && pid > 0)
		fprintf(stderr, "memdedupd: another daemon (pid %ld) holds %s\n", pid, path);
	else if (!held_quiet)
		fprintf(stderr, "memdedupd: another daemon holds %s\n", path);
	close(fd);
	return -EEXIST;
}

/* The socket path is locked too (PATH.lock), from before its stale check to
 * the daemon's end: daemons of two run directories given one socket would
 * otherwise both find it stale, and the later one unlink the other's socket
 * between that one's bind and listen, both staying up, one unreachable. */
static int lock_socket_path(const char *path)
{
	int fd;
	int locked = lock_open(path, &fd);
	if (locked < 0) {
		fprintf(stderr, "memdedupd: %s: %s\n", path, strerror(-locked));
		return locked;
	}
	if (locked)
		return fd;
	if (!held_quiet)
		fprintf(stderr, "memdedupd: another daemon holds %s\n", path);
	close(fd);
	return -EEXIST;
}

/* Written, then cut to its length: daemonize()'s parent and the daemon both
 * write the same pid, the daemon possibly after the parent returned, and a
 * truncation first would show a caller of ours an empty file meanwhile. */
static void write_pid(int fd, pid_t pid)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
	if (pwrite(fd, buf, (size_t)n, 0) != n || ftruncate(fd, n) < 0)
		md__dlog("cannot write the pid file: %s", strerror(errno));
}

static int daemonize(const char *log_path, int pid_fd)
{
	int ready[2];
	if (pipe2(ready, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		/* Return only once the daemon is fully detached: the socket
		 * listens already, and the pid file then names it, so a
		 * caller waiting for us finds everything in place. */
		char ok;
		close(ready[1]);
		if (read(ready[0], &ok, 1) != 1)
			_exit(1);
		write_pid(pid_fd, pid);
		_exit(0);
	}
	close(ready[0]);
	setsid();
	if (chdir("/") < 0)
		return -errno;
	int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int out = md__dlog_open(log_path);
	if (out < 0)
		out = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (in < 0 || out < 0)
		return -errno;
	dup2(in, 0);
	dup2(out, 1);
	dup2(out, 2);
	close(in);
	close(out);
	if (write(ready[1], "", 1) != 1)
		return -errno;
	close(ready[1]);
	return 0;
}

/* Started on demand by a VMM's `memdedup run` or agent, memdedupd
 * inherited what confines that VMM besides its cgroups (which the caller
 * placed it out of): its CPUs (taskset, libvirt's vCPU placement), a
 * real-time policy (chrt), a NUMA policy (numactl --membind: every
 * domain's pool would be allocated there), a lower priority. It serves
 * every VM of the host: those go, as far as the kernel lets it (the CPUs
 * within its cpuset; a nice value lowered only with the privilege). */
static void unconfine(void)
{
	cpu_set_t all;
	CPU_ZERO(&all);
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		CPU_SET(cpu, &all);
	(void)sched_setaffinity(0, sizeof(all), &all);
	int policy = sched_getscheduler(0) & ~SCHED_RESET_ON_FORK;
	if (policy != SCHED_OTHER && policy != SCHED_BATCH && policy != SCHED_IDLE) {
		struct sched_param none = { 0 };
		(void)sched_setscheduler(0, SCHED_OTHER, &none);
	}
	(void)syscall(SYS_set_mempolicy, 0 /* MPOL_DEFAULT */, NULL, 0UL);
	errno = 0;
	if (getpriority(PRIO_PROCESS, 0) > 0 && errno == 0)
		(void)setpriority(PRIO_PROCESS, 0, 0);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "foreground", no_argument, NULL, 'f' },
		{ "socket", required_argument, NULL, 's' },
		{ "run-dir", required_argument, NULL, 'r' },
		{ "pool-pages", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	struct md__daemon d = { .epfd = -1, .lfd = -1, .sigfd = -1 };
	const char *socket_opt = NULL, *run_opt = NULL;
	int foreground = 0, c, err, ret = 1, pid_fd = -1, sock_lock_fd = -1;
	char sock_lock[MD_D_SOCKET_MAX + 8];
	char run_dir[MD_D_RUN_DIR_MAX], log_path[MD_D_RUN_DIR_MAX + 32];
	size_t made = 0;
	unsigned long long pages = MD_D_POOL_PAGES_DEFAULT;

	held_quiet = getenv(MD_D_ON_DEMAND_ENV) != NULL;
	opterr = 0;	/* said below, with what a terminal may show */
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end;
		switch (c) {
		case 'f': foreground = 1; break;
		case 's': socket_opt = optarg; break;
		case 'r': run_opt = optarg; break;
		case 'p':
			errno = 0;
			pages = strtoull(optarg, &end, 10);
			if (errno || *end || optarg[0] < '0' || optarg[0] > '9' || pages < 1 ||
			    pages > MD_D_POOL_PAGES_MAX) {
				char shown[64];
				fprintf(stderr, "memdedupd: --pool-pages must be 1..%u, not '%s'\n", MD_D_POOL_PAGES_MAX,
					md__printable(optarg, shown, sizeof(shown)));
				return 2;
			}
			break;
		case 'h': fputs(usage_text, stdout); return 0;
		case 'V':
			/* Alone, as `memdedup --version`, whose version it says. */
			if (argc != 2) {
				fprintf(stderr, "memdedupd: --version takes no other arguments\n");
				return 2;
			}
			printf("memdedupd %d.%d\n", MD_VERSION_MAJOR, MD_VERSION_MINOR);
			return 0;
		default: {
			char shown[256];
			/* A long option as written, else a short one's letter (in a
			 * group, optind has not moved past it yet). */
			const char *w = optind > 1 ? argv[optind - 1] : "";
			if (strncmp(w, "--", 2) == 0 || !optopt)
				md__printable(w, shown, sizeof(shown));
			else
				snprintf(shown, sizeof(shown), "-%c", optopt > ' ' && optopt < 127 ? optopt : '?');
			fprintf(stderr, "memdedupd: unknown option, or one without its value: '%s'\n%s", shown,
				usage_text);
			return 2;
		}
		}
	}
	if (optind < argc) {
		char shown[256];
		fprintf(stderr, "memdedupd: unexpected argument '%s'\n%s",
			md__printable(argv[optind], shown, sizeof(shown)), usage_text);
		return 2;
	}
	/* Started by a VMM's `memdedup run`, we inherit whatever it had open
	 * (disk images, pipes, lock files): holding them would keep them busy
	 * for as long as we live. */
	close_range(3, ~0u, 0);
	/* And started with stdin, stdout or stderr closed, the pid file or
	 * the listening socket would take its number, and daemonize()'s dup2
	 * onto 0-2 would close them. */
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) < 0 && errno == EBADF &&
		    open("/dev/null", fd ? O_WRONLY : O_RDONLY) != fd)
			return 1;
	}
	if (held_quiet)
		unconfine();
	d.pool_pages = (size_t)pages;
	const char *wait = getenv("MEMDEDUP_CONTROL_WAIT_MS");
	uint32_t wait_ms = MD_CONTROL_WAIT_MS;
	if (wait && *wait && md__parse_uint(wait, 100, MD_CONTROL_WAIT_MS, &wait_ms) != 0) {
		fprintf(stderr, "memdedupd: MEMDEDUP_CONTROL_WAIT_MS must be a whole number from 100 to %u\n",
			MD_CONTROL_WAIT_MS);
		return 2;
	}
	d.control_wait_ms = (int)wait_ms;
	const char *kbps = getenv("MEMDEDUP_STATUS_KB_PER_S");
	uint32_t status_kb = MD_D_STATUS_BYTES_PER_S >> 10;
	if (kbps && *kbps && md__parse_uint(kbps, 0, 1u << 20, &status_kb) != 0) {
		fprintf(stderr, "memdedupd: MEMDEDUP_STATUS_KB_PER_S must be a whole number from 0 to %u\n",
			1u << 20);
		return 2;
	}
	d.status_bytes_per_s = (int64_t)status_kb << 10;
	d.max_conns = raise_nofile();
	md__tunables_default(&d.tun);

	/* Every path is whole and absolute before anything is created. */
	char given[MD_D_RUN_DIR_MAX];
	const char *env = getenv("MEMDEDUP_SOCKET");
	if ((run_opt && !*run_opt) || (socket_opt && !*socket_opt)) {
		fprintf(stderr, "memdedupd: --run-dir and --socket need a path\n");
		return 2;
	}
	/* The /tmp default is looked up only: made (mode 0700, and checked
	 * again) once the paths are, so that a start that fails removes it. */
	int tmp_default = 0;
	if (run_opt)
		err = md__run_dir(run_opt, given, sizeof(given));
	else if ((err = md__run_dir_lookup(given, sizeof(given))) == -ENOENT)
		tmp_default = 1, err = 0;
	if (!err)
		err = absolute(given, run_dir, sizeof(run_dir));
	if (err) {
		if (err == -ENAMETOOLONG)
			fprintf(stderr, "memdedupd: the run directory is too long (at most %zu bytes, absolute)\n",
				sizeof(run_dir) - 1);
		else
			fprintf(stderr, "memdedupd: no usable run directory: %s\n", strerror(-err));
		return 1;
	}
	if (socket_opt || (env && *env))
		err = absolute(socket_opt ? socket_opt : env, d.socket_path, sizeof(d.socket_path));
	else if ((size_t)snprintf(d.socket_path, sizeof(d.socket_path), "%s/memdedupd.sock", run_dir) >=
		 sizeof(d.socket_path))
		err = -ENAMETOOLONG;
	if (!err && strlen(d.socket_path) > MD_D_SOCKET_MAX)
		err = -ENAMETOOLONG;
	if (err) {
		fprintf(stderr, "memdedupd: no socket path: %s (a Unix socket's absolute path has at most %d bytes)\n",
			strerror(-err), MD_D_SOCKET_MAX);
		return 1;
	}
	if ((size_t)snprintf(d.pid_path, sizeof(d.pid_path), "%s/memdedupd.pid", run_dir) >= sizeof(d.pid_path) ||
	    (size_t)snprintf(log_path, sizeof(log_path), "%s/memdedupd.log", run_dir) >= sizeof(log_path) ||
	    (size_t)snprintf(d.state_path, sizeof(d.state_path), "%s/memdedupd.state", run_dir) >=
		    sizeof(d.state_path)) {
		fprintf(stderr, "memdedupd: the run directory is too long\n");
		return 1;
	}

	if (tmp_default) {
		err = md__run_dir(NULL, given, sizeof(given));
		made = err ? 0 : strlen(run_dir);
	} else {
		err = mkdir_p(run_dir, &made);
	}
	if (err) {
		fprintf(stderr, "memdedupd: cannot create %s: %s\n", run_dir, strerror(-err));
		goto remove_dirs;
	}
	pid_fd = lock_pid_file(d.pid_path);
	if (pid_fd < 0) {
		if (pid_fd != -EEXIST)
			fprintf(stderr, "memdedupd: %s: %s\n", d.pid_path, strerror(-pid_fd));
		else
			ret = MD_D_EXIT_HELD;
		goto remove_dirs;
	}
	snprintf(sock_lock, sizeof(sock_lock), "%s.lock", d.socket_path);
	sock_lock_fd = lock_socket_path(sock_lock);
	if (sock_lock_fd < 0) {
		if (sock_lock_fd == -EEXIST)
			ret = MD_D_EXIT_HELD;
		goto close_pid;
	}
	if (md__daemon_alive(d.socket_path)) {
		if (!held_quiet)
			fprintf(stderr, "memdedupd: another daemon answers on %s\n", d.socket_path);
		ret = MD_D_EXIT_HELD;
		goto unlock_socket;
	}
	/* Signals as events of the loop; SIGPIPE never (we send with
	 * MSG_NOSIGNAL, this is for anything else). */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	err = md__server_listen(&d);
	if (err == -EISDIR)
		fprintf(stderr, "memdedupd: %s is a directory: --socket wants the socket's own path "
			"(such as %s/memdedupd.sock)\n", d.socket_path, d.socket_path);
	else if (err == -ENOTSOCK)
		fprintf(stderr, "memdedupd: %s exists and is not a socket: left alone\n", d.socket_path);
	else if (err == -EADDRINUSE)
		fprintf(stderr, "memdedupd: another daemon answers on %s\n", d.socket_path);
	else if (err)
		fprintf(stderr, "memdedupd: cannot listen on %s: %s\n", d.socket_path, strerror(-err));
	if (err)
		goto unlock_socket;
	struct stat sock_st;
	stat(d.socket_path, &sock_st);
	if (!foreground) {
		err = daemonize(log_path, pid_fd);
		if (err)
			goto close_listen;
		snprintf(d.log_path, sizeof(d.log_path), "%s", log_path);
	}
	write_pid(pid_fd, getpid());
	d.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	d.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (d.sigfd < 0 || d.epfd < 0) {
		md__dlog("cannot set up the loop: %s", strerror(errno));
		goto close_loop;
	}
	d.start_ms = md__now_ms();
	md__dlog("listening on %s, %zu slots per pool", d.socket_path, d.pool_pages);
	md__state_load(&d);	/* ours alone: the pid file is locked */
	err = md__server_run(&d);
	if (err)
		md__dlog("loop failed: %s", strerror(-err));
	else
		ret = 0;

close_loop:
	md__server_close(&d);
	md__agent_free_all(&d);
	md__domain_free_all(&d);
	if (d.sigfd >= 0)
		close(d.sigfd);
	if (d.epfd >= 0)
		close(d.epfd);
close_listen:
	if (d.lfd >= 0)
		close(d.lfd);
	/* Only our own socket: someone may have replaced it since. */
	struct stat now_st;
	if (stat(d.socket_path, &now_st) == 0 && now_st.st_ino == sock_st.st_ino &&
	    now_st.st_dev == sock_st.st_dev)
		unlink(d.socket_path);
unlock_socket:
	unlink(sock_lock);	/* ours while we hold its lock */
	close(sock_lock_fd);
close_pid:
	unlink(d.pid_path);	/* ours while we hold its lock */
	close(pid_fd);
remove_dirs:
	if (ret)
		rmdir_made(run_dir, made);	/* a failed start leaves nothing behind */
	return ret;
}
