#include "proc.h"

#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include "runner.h"
#include "stats_file.h"

static char dir[256];
static pid_t dir_owner;

static void remove_dir(void)
{
	char cmd[300];
	if (getpid() != dir_owner)
		return;	/* a forked child exiting: the test still needs it */
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
}

const char *build_dir(void)
{
	const char *b = getenv("MD_BUILD_DIR");
	return b && *b ? b : "build";
}

const char *test_dir(void)
{
	if (!dir[0]) {
		/* The runner's, made for this test and removed after it. */
		const char *given = getenv("MD_TEST_DIR");
		if (given && *given && strlen(given) < sizeof(dir)) {
			snprintf(dir, sizeof(dir), "%s", given);
			return dir;
		}
		snprintf(dir, sizeof(dir), "/tmp/memdedup-test-XXXXXX");
		ASSERT(mkdtemp(dir));
		dir_owner = getpid();
		atexit(remove_dir);
	}
	return dir;
}

void make_image(const char *path, size_t n, unsigned seed)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ASSERT(fd >= 0);
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	char buf[65536];
	for (size_t done = 0; done < n;) {
		for (size_t i = 0; i < sizeof(buf); i += 8) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			memcpy(buf + i, &x, 8);
		}
		size_t k = n - done < sizeof(buf) ? n - done : sizeof(buf);
		ASSERT(write(fd, buf, k) == (ssize_t)k);
		done += k;
	}
	ASSERT(close(fd) == 0);
}

uint64_t fnv_file(const char *path, off_t off, size_t n)
{
	int fd = open(path, O_RDONLY);
	ASSERT(fd >= 0);
	unsigned char *buf = malloc(n);
	ASSERT(pread(fd, buf, n, off) == (ssize_t)n);
	close(fd);
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ buf[i]) * 1099511628211ull;
	free(buf);
	return h;
}

const char *hex(uint64_t h)
{
	static char b[4][20];
	static int i;
	i = (i + 1) % 4;
	snprintf(b[i], sizeof(b[i]), "%016llx", (unsigned long long)h);
	return b[i];
}

uint64_t fnv_zero(size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h *= 1099511628211ull;	/* (h ^ 0) * prime */
	return h;
}

const char *proc_timens_offsets = "boottime 100000 0\n";
#define OWN_PID_NS 1
#define OWN_TIME_NS 2

static void start(struct proc *p, const char *const *env, int own)
{
	int own_pid_ns = own == OWN_PID_NS;
	int in[2], out[2];
	test_dir();	/* made before the fork, so both sides agree */
	ASSERT(pipe(in) == 0 && pipe(out) == 0);
	/* A containerised VMM: pid 1 of its pid namespace, which its /proc
	 * shows (a mount namespace of its own, gone with it). */
	p->pid = own_pid_ns ? (pid_t)syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0) : fork();
	ASSERT(p->pid >= 0);
	if (p->pid == 0) {
		if (own_pid_ns && (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
				   mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0))
			_exit(126);
		/* A time namespace whose boot was 100,000 s earlier (a
		 * container's, a CRIU restore's), entered at the exec. */
		if (own == OWN_TIME_NS) {
			const char *offsets = proc_timens_offsets;
			int fd = unshare(CLONE_NEWTIME) == 0 ? open("/proc/self/timens_offsets", O_WRONLY) : -1;
			if (fd < 0 || write(fd, offsets, strlen(offsets)) != (ssize_t)strlen(offsets))
				_exit(126);
			close(fd);
		}
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		char preload[512], exe[300];
		const char *extra = getenv("MD_TEST_PRELOAD_FIRST");	/* e.g. libasan */
		snprintf(preload, sizeof(preload), "%s%s%s/libmemdedup-preload.so",
			 extra ? extra : "", extra ? ":" : "", build_dir());
		snprintf(exe, sizeof(exe), "%s/testproc", build_dir());
		setenv("LD_PRELOAD", preload, 1);
		setenv("MEMDEDUP_RUN_DIR", test_dir(), 1);
		setenv("MEMDEDUP_KERNEL_KSM", "0", 1);
		for (; env && *env; env++)
			putenv((char *)*env);
		execl(exe, "testproc", (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	p->in = fdopen(in[1], "w");
	p->out = fdopen(out[0], "r");
	setvbuf(p->in, NULL, _IOLBF, 0);
	p->base = 0;
}

void proc_start(struct proc *p, const char *const *env)
{
	start(p, env, 0);
}

void proc_start_pid_ns(struct proc *p, const char *const *env)
{
	start(p, env, OWN_PID_NS);
}

void proc_start_time_ns(struct proc *p, const char *const *env)
{
	start(p, env, OWN_TIME_NS);
}

static const char *vcmd(struct proc *p, const char *fmt, va_list ap)
{
	static char line[256];
	vfprintf(p->in, fmt, ap);
	fputc('\n', p->in);
	fflush(p->in);
	if (!fgets(line, sizeof(line), p->out)) {
		fprintf(stderr, "testproc %d died during '%s'\n", (int)p->pid, fmt);
		abort();
	}
	line[strcspn(line, "\n")] = '\0';
	return line;
}

const char *proc_cmd(struct proc *p, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	const char *r = vcmd(p, fmt, ap);
	va_end(ap);
	if (strncmp(fmt, "map", 3) == 0)
		p->base = (uintptr_t)strtoull(r, NULL, 16);
	return r;
}

long long proc_num(struct proc *p, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	const char *r = vcmd(p, fmt, ap);
	va_end(ap);
	return strtoll(r, NULL, 10);
}

void proc_stop(struct proc *p)
{
	fprintf(p->in, "quit\n");
	fclose(p->in);
	fclose(p->out);
	int status;
	ASSERT(waitpid(p->pid, &status, 0) == p->pid);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

struct pm proc_page(struct proc *p, size_t doff)
{
	char path[64];
	uint64_t e = 0;
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)p->pid);
	int fd = open(path, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT(pread(fd, &e, 8, (off_t)((p->base + doff) / 4096 * 8)) == 8);
	close(fd);
	struct pm r = { e & ((1ull << 55) - 1), !!(e & (1ull << 63)), !!(e & (1ull << 61)) };
	if (!r.present)
		r.pfn = 0;
	return r;
}

int proc_page_is_image(struct proc *p, size_t doff, const char *img, off_t off)
{
	struct pm pm = proc_page(p, doff);
	if (!pm.present || !pm.file)
		return 0;
	/* The page cache's frame of the image at off, through a mapping of
	 * our own: a read shared at read time maps that very frame. */
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	const volatile unsigned char *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, off);
	ASSERT(m != MAP_FAILED);
	(void)m[0];
	uint64_t e = self_pagemap((const void *)m);
	munmap((void *)m, 4096);
	close(fd);
	ASSERT(e & (1ull << 63));
	return (e & ((1ull << 55) - 1)) == pm.pfn;
}

long task_syscall_on(pid_t tid, int fd)
{
	char path[64], line[256] = "";
	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	FILE *f = tid ? fopen(path, "r") : NULL;
	if (f) {
		if (!fgets(line, sizeof(line), f))
			line[0] = '\0';
		fclose(f);
	}
	long nr = -1;
	unsigned long arg = ~0ul;
	return sscanf(line, "%ld %lx", &nr, &arg) == 2 && arg == (unsigned long)fd && nr >= 0 ? nr : -1;
}

int proc_fds_naming(pid_t pid, const char *want, size_t prefix, int not_fd, int *fd)
{
	char fds[64], link[320], target[PATH_MAX];
	int n = 0;
	snprintf(fds, sizeof(fds), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(fds);
	ASSERT(d);
	for (struct dirent *e; (e = readdir(d));) {
		snprintf(link, sizeof(link), "%s/%s", fds, e->d_name);
		ssize_t l = readlink(link, target, sizeof(target) - 1);
		if (l <= 0 || atoi(e->d_name) == not_fd)
			continue;
		target[l] = '\0';
		if (prefix ? strncmp(target, want, prefix) == 0 : strcmp(target, want) == 0) {
			n++;
			if (fd)
				*fd = atoi(e->d_name);
		}
	}
	closedir(d);
	return n;
}

int proc_page_from_file(struct proc *p, size_t doff)
{
	struct pm pm = proc_page(p, doff);
	return pm.file || !pm.present;
}

/* 1 if a thread of pid named comm is inside system call nr now, by the
 * first number of /proc/PID/task/TID/syscall ("running" while it runs). */
static int in_syscall_now(pid_t pid, const char *comm, long nr)
{
	char path[320], buf[256];
	int found = 0;
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return 0;
	for (struct dirent *e; !found && (e = readdir(d));) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", (int)pid, e->d_name);
		snprintf(buf, sizeof(buf), "%s", file_text(path));
		buf[strcspn(buf, "\n")] = 0;
		if (strcmp(buf, comm) != 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/syscall", (int)pid, e->d_name);
		snprintf(buf, sizeof(buf), "%s", file_text(path));
		char *end;
		long got = strtol(buf, &end, 10);
		found = end != buf && got == nr;
	}
	closedir(d);
	return found;
}

int thread_blocked_in(pid_t pid, const char *comm, long nr, int ms)
{
	for (int waited = 0; waited <= ms; waited += 10) {
		/* Seen twice 20 ms apart: not a call that was about to return. */
		if (in_syscall_now(pid, comm, nr)) {
			usleep(20000);
			if (in_syscall_now(pid, comm, nr))
				return 1;
		}
		usleep(10000);
	}
	return 0;
}

int proc_stats(struct proc *p, md_stats *s)
{
	char path[512];
	struct md__stats_file f;
	struct md__stats_snapshot snap;
	snprintf(path, sizeof(path), "%s/agent-%d.stats", test_dir(), (int)p->pid);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, &f, sizeof(f));
	close(fd);
	if (n < 0 || md__stats_parse(&f, (size_t)n, &snap) != 0)
		return -EINVAL;
	*s = snap.stats;
	return 0;
}

int proc_stats_wait(struct proc *p, md_stats *s, int ms, int (*cond)(const md_stats *))
{
	for (int waited = 0;; waited += 50) {
		if (proc_stats(p, s) == 0 && (!cond || cond(s)))
			return 0;
		if (waited >= ms)
			return -ETIMEDOUT;
		usleep(50000);
	}
}

int set_until_exit(const char *path, const char *text)
{
	char old[256];
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, old, sizeof(old) - 1);
	close(fd);
	if (n <= 0)
		return -EIO;
	old[n] = '\0';
	/* A sysfs choice ("always [never] force") is put back by its word. */
	char *open_b = strchr(old, '['), *close_b = open_b ? strchr(open_b, ']') : NULL;
	if (close_b) {
		*close_b = '\0';
		memmove(old, open_b + 1, strlen(open_b + 1) + 1);
	}
	int p[2], ready[2];
	if (pipe2(p, O_CLOEXEC) != 0)
		return -errno;
	if (pipe2(ready, O_CLOEXEC) != 0) {
		int err = -errno;
		close(p[0]);
		close(p[1]);
		return err;
	}
	pid_t guard = fork();
	if (guard < 0)
		return -errno;
	if (guard == 0) {
		char c;
		setsid();	/* out of the test's process group, which the runner kills */
		close(p[1]);
		close(ready[0]);
		close(ready[1]);	/* the test goes on once this is seen */
		while (read(p[0], &c, 1) > 0)
			;
		fd = open(path, O_WRONLY);
		if (fd >= 0 && write(fd, old, strlen(old)) < 0)
			_exit(1);
		_exit(0);
	}
	close(p[0]);
	/* Not before the guard left our process group: a test that ended at
	 * once had it killed with the group, the value never put back. */
	close(ready[1]);
	char c;
	while (read(ready[0], &c, 1) < 0 && errno == EINTR)
		;
	close(ready[0]);
	fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, text, strlen(text)) < 0) {
		int err = -errno;
		if (fd >= 0)
			close(fd);
		close(p[1]);	/* the guard puts back what may have changed */
		return err;
	}
	close(fd);
	return p[1];
}

const char *status_row_state(const char *out, pid_t pid)
{
	static char state[32];
	char head[16];
	int n = snprintf(head, sizeof(head), "%d ", (int)pid);
	state[0] = '\0';
	for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (strncmp(l, head, (size_t)n) != 0)
			continue;
		const char *end = strchr(l, '\n'), *w = end;
		while (w > l && w[-1] != ' ')
			w--;
		snprintf(state, sizeof(state), "%.*s", (int)(end - w), w);
		break;
	}
	return state;
}

const char *file_text(const char *path)
{
	static char buf[65536];
	buf[0] = '\0';
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return buf;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

uint64_t self_pagemap(const void *addr)
{
	/* Opened per call: a forked child must read its own. */
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT(pread(fd, &e, 8, (off_t)((uintptr_t)addr / 4096 * 8)) == 8);
	close(fd);
	return e;
}

const char *uffd_open_to_nobody(void)
{
	char v[8] = "";
	struct stat st;
	int fd = open("/proc/sys/vm/unprivileged_userfaultfd", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, v, sizeof(v) - 1);
		(void)n;
		close(fd);
	}
	if (geteuid() != 0)
		return "needs root, to run as nobody";
	if (v[0] != '0')
		return "vm.unprivileged_userfaultfd is not 0: userfaultfd works for everyone";
	if (stat("/dev/userfaultfd", &st) == 0 && (st.st_mode & 0006) == 0006)
		return "/dev/userfaultfd is open to everyone";
	return NULL;
}

/* The times a thread named name of this process was switched in, or -1. */
long thread_switches(const char *name)
{
	DIR *d = opendir("/proc/self/task");
	long n = -1;
	struct dirent *de;
	while (d && n < 0 && (de = readdir(d)) != NULL) {
		char path[300], comm[32] = "";
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", de->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (!fgets(comm, sizeof(comm), f))
			comm[0] = 0;
		fclose(f);
		comm[strcspn(comm, "\n")] = 0;
		if (strcmp(comm, name) != 0)
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/schedstat", de->d_name);
		unsigned long long run, wait, count;
		f = fopen(path, "r");
		if (f && fscanf(f, "%llu %llu %llu", &run, &wait, &count) == 3)
			n = (long)count;
		if (f)
			fclose(f);
	}
	if (d)
		closedir(d);
	return n;
}

int wakes_on(const char *name, void (*event)(void *), void *arg)
{
	long at = thread_switches(name);
	for (int i = 0; i < 400 && thread_switches(name) == at; i++)
		usleep(5000);
	at = thread_switches(name);
	event(arg);
	long after = at;
	for (int i = 0; i < 60 && after == at; i++, usleep(5000))
		after = thread_switches(name);
	return after > at;
}

const char *own_tmpfs(char *at, size_t size, const char *bytes)
{
	char opts[64];
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		return "cannot make a mount namespace here";
	snprintf(at, size, "%s/sparse", test_dir());
	ASSERT(mkdir(at, 0700) == 0);
	snprintf(opts, sizeof(opts), "size=%s,mode=0700", bytes);
	if (mount("none", at, "tmpfs", 0, opts) != 0)
		return "cannot mount a tmpfs here";
	return NULL;
}
