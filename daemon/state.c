/*
 * state.c - what memdedupd's administrator set for all agents (the pause of
 * all, the tunables) kept in RUN_DIR/memdedupd.state, so that a memdedupd
 * started again in that directory (after a crash, an OOM kill, a restart by
 * systemd, `memdedup run` starting it on demand) holds it: its agents
 * reconnect and take it from their WELCOME. Without it every agent an
 * operator paused scanned again with the built-in tunables, and nothing
 * said so. The run directory outlives the daemon (/run/memdedup, kept by the
 * unit), not a reboot.
 *
 * The file is lines of KEY=VALUE: paused=0|1 and the tunables as `memdedup
 * set` names them. It is read whole or not at all: one that is not ours
 * (owner, mode), too long or malformed is said in the log and the built-in
 * defaults are taken. It is written whole (a new file renamed over the old).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"

#define STATE_MAX 1024	/* the file is well under this */

void md__state_load(struct md__daemon *d)
{
	char text[STATE_MAX + 1], why[MD_TEXT_MAX + 64];
	struct stat st;
	if (!d->state_path[0])
		return;
	int fd = open(d->state_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		if (errno != ENOENT)
			md__dlog("%s: %s: the built-in defaults taken", d->state_path, strerror(errno));
		return;
	}
	ssize_t n = -1;
	if (fstat(fd, &st) != 0)
		snprintf(why, sizeof(why), "%s", strerror(errno));
	else if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022))
		snprintf(why, sizeof(why), "not a regular file of ours that only we may write");
	else if (st.st_size > STATE_MAX)
		snprintf(why, sizeof(why), "longer than %d bytes", STATE_MAX);
	else if ((n = pread(fd, text, STATE_MAX + 1, 0)) < 0 || n > STATE_MAX)
		snprintf(why, sizeof(why), "%s", n < 0 ? strerror(errno) : "it grew");
	close(fd);
	if (n < 0 || n > STATE_MAX) {
		md__dlog("%s: %s: the built-in defaults taken", d->state_path, why);
		return;
	}
	text[n] = 0;
	if (memchr(text, 0, (size_t)n))
		snprintf(why, sizeof(why), "a NUL byte");
	if (memchr(text, 0, (size_t)n) || md__state_parse(text, &d->paused, &d->tun, why, sizeof(why)) != 0) {
		md__dlog("%s: %s: the built-in defaults taken", d->state_path, why);
		return;
	}
	md__dlog("%s: %s, pages_to_scan=%u sleep_millisecs=%u cpu_percent=%u order=%s hint_ratio=%u, as set "
		 "before", d->state_path, d->paused ? "paused" : "not paused", d->tun.pages_to_scan,
		 d->tun.sleep_millisecs, d->tun.cpu_percent, d->tun.order == MD_ORDER_RANDOM ? "random" : "linear",
		 d->tun.hint_ratio);
}

int md__state_save(struct md__daemon *d)
{
	char text[STATE_MAX], tmp[sizeof(d->state_path) + 8];
	if (!d->state_path[0])
		return 0;
	int len = snprintf(text, sizeof(text),
			   "paused=%d\npages_to_scan=%u\nsleep_millisecs=%u\ncpu_percent=%u\norder=%s\nhint_ratio=%u\n",
			   d->paused, d->tun.pages_to_scan, d->tun.sleep_millisecs, d->tun.cpu_percent,
			   d->tun.order == MD_ORDER_RANDOM ? "random" : "linear", d->tun.hint_ratio);
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.new", d->state_path) >= sizeof(tmp))
		return -ENAMETOOLONG;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600), err = 0;
	if (fd < 0)
		return -errno;
	if (write(fd, text, (size_t)len) != len)
		err = errno ? -errno : -EIO;
	if (close(fd) != 0 && !err)
		err = -errno;
	if (!err && rename(tmp, d->state_path) != 0)
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}
