/* daemon_util.c - see daemon_util.h. */
#include "daemon_util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "runner.h"

void td_start(struct tdaemon *t, unsigned pool_pages)
{
	static int n;
	snprintf(t->dir, sizeof(t->dir), "%s/d%d", test_dir(), n++);
	ASSERT(mkdir(t->dir, 0755) == 0);
	ASSERT(chmod(test_dir(), 0755) == 0);
	snprintf(t->sock, sizeof(t->sock), "%s/sock", t->dir);
	t->pool_pages = pool_pages;
	td_restart(t);
}

void td_start_waiting(struct tdaemon *t, unsigned pool_pages, unsigned wait_ms)
{
	char ms[16];
	snprintf(ms, sizeof(ms), "%u", wait_ms);
	setenv("MEMDEDUP_CONTROL_WAIT_MS", ms, 1);
	td_start(t, pool_pages);
	unsetenv("MEMDEDUP_CONTROL_WAIT_MS");
}

void td_restart(struct tdaemon *t)
{
	char exe[300], pages[32], log[400];
	snprintf(exe, sizeof(exe), "%s/memdedupd", build_dir());
	snprintf(pages, sizeof(pages), "%u", t->pool_pages);
	snprintf(log, sizeof(log), "%s/log", t->dir);
	ASSERT(access(exe, X_OK) == 0);	/* built by make all, which the tests need */
	unlink(t->sock);	/* a killed daemon's */
	t->pid = fork();
	ASSERT(t->pid >= 0);
	if (t->pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0)
			dup2(fd, 2);
		execl(exe, exe, "--foreground", "--socket", t->sock, "--run-dir", t->dir,
		      "--pool-pages", pages, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 2000; i++) {	/* 20 s: a loaded machine */
		if (md__daemon_alive(t->sock))
			return;
		int st;
		ASSERT(waitpid(t->pid, &st, WNOHANG) == 0);	/* it must not have died */
		usleep(10000);
	}
	ASSERT(!"memdedupd did not come up");
}

void td_stop(struct tdaemon *t)
{
	int st;
	ASSERT(kill(t->pid, SIGTERM) == 0);
	ASSERT(waitpid(t->pid, &st, 0) == t->pid);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ASSERT(access(t->sock, F_OK) != 0);	/* the socket went with it */
}

struct md__client *td_connect(const struct tdaemon *t)
{
	struct md__client *c;
	ASSERT_EQ(md__client_connect(&c, t->sock), 0);
	return c;
}

struct md__client *td_agent(const struct tdaemon *t, const char *domain,
			    struct md__msg_welcome *w, int *pool_fd)
{
	struct md__client *c = td_connect(t);
	ASSERT_EQ(md__client_hello(c, domain, 0, w, pool_fd), 0);
	ASSERT(*pool_fd >= 0);
	return c;
}

json_t *td_status(const struct tdaemon *t)
{
	struct md__client *c = td_connect(t);
	static char buf[MD_MSG_MAX];
	uint32_t len = sizeof(buf);
	unsigned type;
	ASSERT_EQ(md__client_request(c, MD_MSG_STATUS, NULL, 0, buf, &len, &type), 0);
	ASSERT_EQ(type, MD_MSG_STATUS_R);
	md__client_free(c);
	json_t *j = json_loadb(buf, len, 0, NULL);
	ASSERT(j && json_is_object(j));
	return j;
}

long long td_domains_int(const struct tdaemon *t, const char *key)
{
	json_t *st = td_status(t);
	json_t *doms = json_object_get(st, "domains");
	long long v = 0;
	size_t i;
	json_t *d;
	json_array_foreach(doms, i, d)
		v += td_int(d, key);
	json_decref(st);
	return v;
}

json_t *td_find(json_t *array, const char *key, long long value)
{
	size_t i;
	json_t *o;
	json_array_foreach(array, i, o)
		if (json_integer_value(json_object_get(o, key)) == value)
			return o;
	return NULL;
}

json_t *td_domain(json_t *status, uint32_t id)
{
	return td_find(json_object_get(status, "domains"), "id", id);
}

long long td_int(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	ASSERT(json_is_integer(v));
	return json_integer_value(v);
}

static int read_n(int fd, void *buf, size_t n)
{
	size_t done = 0;
	while (done < n) {
		struct pollfd p = { fd, POLLIN, 0 };
		ASSERT(poll(&p, 1, 20000) == 1);
		ssize_t r = read(fd, (char *)buf + done, n - done);
		if (r <= 0)
			return r < 0 ? -errno : 0;
		done += (size_t)r;
	}
	return 1;
}

void td_sockaddr(const struct tdaemon *t, struct sockaddr_un *sa)
{
	ASSERT(strlen(t->sock) < sizeof(sa->sun_path));
	memcpy(sa->sun_path, t->sock, strlen(t->sock) + 1);
}

int td_raw(const struct tdaemon *t, const void *msg, size_t len, struct md__msg *reply)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(fd >= 0);
	td_sockaddr(t, &sa);
	ASSERT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	ASSERT(send(fd, msg, len, MSG_NOSIGNAL) == (ssize_t)len);
	int type = 0;
	if (read_n(fd, buf, MD_MSG_HDR_SIZE) == 1) {
		struct md__msg_hdr h;
		ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), 0);
		ASSERT_EQ(read_n(fd, buf + MD_MSG_HDR_SIZE, h.length), 1);
		ASSERT_EQ(md__msg_decode(buf, MD_MSG_HDR_SIZE + h.length, reply), 0);
		type = h.type;
		/* After an ERROR the daemon closes: EOF must follow. */
		if (type == MD_MSG_ERROR) {
			char c;
			ASSERT(read_n(fd, &c, 1) <= 0);	/* EOF, or reset if it left bytes unread */
		}
	}
	close(fd);
	return type;
}

void td_fill_page(unsigned char *p, unsigned seed)
{
	uint32_t x = seed * 2654435761u + 7;
	for (unsigned i = 0; i < MD_MSG_PAGE; i += 4) {
		x = x * 1103515245u + 12345u;
		memcpy(p + i, &x, 4);
	}
}

int td_sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* SIGSTOP, and waits until pid is stopped: a request sent before would be
 * answered in time. */
void td_pause(const struct tdaemon *t)
{
	char path[64], st[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)t->pid);
	ASSERT(kill(t->pid, SIGSTOP) == 0);
	for (int i = 0; i < 20000; i++) {
		FILE *f = fopen(path, "r");
		ASSERT(f);
		size_t n = fread(st, 1, sizeof(st) - 1, f);
		fclose(f);
		st[n] = '\0';
		const char *p = strrchr(st, ')');
		if (p && p[1] == ' ' && p[2] == 'T')
			return;
		usleep(1000);
	}
	ASSERT(!"the daemon did not stop");
}

void td_read_all(int fd, void *buf, size_t n)
{
	for (size_t done = 0; done < n;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ASSERT(poll(&p, 1, 3000) == 1);
		ssize_t r = read(fd, (char *)buf + done, n - done);
		ASSERT(r > 0);
		done += (size_t)r;
	}
}
