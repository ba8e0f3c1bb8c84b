/*
 * dlog.c - memdedupd's log (lines about peers limited in rate), its token
 * buckets and clock, and who is privileged: what the daemon's files share,
 * apart from main.c, so that a fuzz target can build them without main().
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"

int md__dlog_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	/* One made before (by an older memdedupd, or logrotate's "create")
	 * keeps its mode otherwise. */
	if (fd >= 0)
		(void)fchmod(fd, 0600);
	return fd;
}

static void vlog(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void vlog(const char *fmt, va_list ap)
{
	char buf[512];
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	struct tm tm;
	localtime_r(&t.tv_sec, &tm);
	size_t n = strftime(buf, sizeof(buf), "%F %T ", &tm);
	vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	fprintf(stderr, "memdedupd[%d]: %s\n", (int)getpid(), buf);
}

void md__dlog(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(fmt, ap);
	va_end(ap);
}

/* Lines about peers: a burst of PEER_LINES_BURST, then PEER_LINES_PER_S a
 * second, the rest counted and said in one line. Any local user can
 * connect and misbehave in a loop: unlimited, its lines filled the log on
 * /run (tmpfs) in minutes. */
#define PEER_LINES_BURST 1000
#define PEER_LINES_PER_S 20

static struct md__bucket peer = { PEER_LINES_BURST, 0 };
static uint64_t peer_suppressed;

int64_t md__bucket_refill(struct md__bucket *b, int64_t rate, int64_t burst)
{
	int64_t now = md__now_ms(), since = now - b->at_ms;
	/* An hour fills any bucket here, and bounds the product. */
	int64_t add = rate > 0 ? (since < 3600000 ? since : 3600000) * rate / 1000 : 0;
	if (add) {
		b->tokens = b->tokens + add < burst ? b->tokens + add : burst;
		/* Whole tokens only: the rest of the time counts towards the next. */
		b->at_ms = b->tokens == burst ? now : b->at_ms + add * 1000 / rate;
	}
	return b->tokens;
}

static int64_t peer_refill(void)
{
	return md__bucket_refill(&peer, PEER_LINES_PER_S, PEER_LINES_BURST);
}

int md__dlog_peer_flush(int force)
{
	if (!peer_suppressed)
		return 0;
	if (!peer_refill() && !force)
		return 1;
	peer.tokens -= peer.tokens > 0;
	md__dlog("%llu lines about peers left out (more than %u a second)",
		 (unsigned long long)peer_suppressed, PEER_LINES_PER_S);
	peer_suppressed = 0;
	return 0;
}

void md__dlog_peer(const char *fmt, ...)
{
	md__dlog_peer_flush(0);
	if (!peer_refill()) {
		peer_suppressed++;
		return;
	}
	peer.tokens--;
	va_list ap;
	va_start(ap, fmt);
	vlog(fmt, ap);
	va_end(ap);
}

int64_t md__now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int md__privileged(uid_t uid)
{
	return uid == 0 || uid == geteuid();
}
