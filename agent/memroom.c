/*
 * memroom.c - the memory an unmerge's copies may take (agent_internal.h).
 *
 * What the host has available, or less where the memory limit of this
 * process's cgroup or of an ancestor leaves less: copies beyond it would
 * have the kernel reclaim or kill the VMM. Usage counts page cache, whose
 * inactive part is reclaimed first (a VMM doing buffered I/O sits near its
 * limit): left out, as the host's MemAvailable leaves it out. cgroup v1's
 * memory controller where it is mounted, else v2's, wherever
 * /proc/self/mountinfo says they are (v1's memory may share its hierarchy
 * with cpu, a hybrid host mounts v2 at /sys/fs/cgroup/unified). A level's
 * limit is v2's memory.max or memory.high, the lower (past memory.high the
 * kernel throttles the VMM and reclaims), v1's memory.limit_in_bytes, or
 * the room its memory.memsw.limit_in_bytes leaves, the lower.
 *
 * A VMM may chroot where there is no /proc nor /sys (QEMU's -chroot): the
 * limits found when the agent started are then read through descriptors
 * opened at that time. Descriptors of the files, not of their directories:
 * no path leads out of the chroot through them.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "agent_internal.h"
#include "sys.h"

/* The files of a level: LIMIT2 is v2's memory.high or v1's memsw limit,
 * USAGE2 v1's memsw usage (v2 has none: memory.current for both). */
enum { LIMIT, USAGE, STAT, LIMIT2, USAGE2 };

struct cg_kind {
	const char *root, *file[MD_MEMROOM_FILES], *inactive;
};

static const struct cg_kind v1 = { "/sys/fs/cgroup/memory",
	{ "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "memory.memsw.limit_in_bytes",
	  "memory.memsw.usage_in_bytes" }, "total_inactive_file" };
static const struct cg_kind v2 = { "/sys/fs/cgroup",
	{ "memory.max", "memory.current", "memory.stat", "memory.high", NULL }, "inactive_file" };

const char *md__memroom_proc = "/proc";	/* tests only: see agent_internal.h */

/* Where the cgroup of this process lies: its directory, and how long the
 * path of the hierarchy's mount point is (the walk up stops there). */
struct cg_where {
	const struct cg_kind *kind;
	char dir[PATH_MAX];
	size_t root;
};

/* The directory of cgroup path of the hierarchy of ctrls, through the
 * mount that shows it, or under the kind's usual mount point when
 * mountinfo names none. 0, or -1 if no mount shows it. */
static int cg_place(struct cg_where *w, const struct cg_kind *kind, const char *ctrls, const char *path)
{
	char mountinfo[PATH_MAX], at[PATH_MAX], shows[PATH_MAX];
	snprintf(mountinfo, sizeof(mountinfo), "%s/self/mountinfo", md__memroom_proc);
	int err = md__cgroup_mount(mountinfo, ctrls, path, at, sizeof(at), shows, sizeof(shows));
	if (err == -ESRCH)
		return -1;
	const char *root = err ? kind->root : at;
	if (!err && strcmp(shows, "/") != 0)
		path += strlen(shows);
	/* The root cgroup is "/": its directory is the root. */
	w->kind = kind;
	w->root = strlen(root);
	snprintf(w->dir, sizeof(w->dir), "%s%s", root, strcmp(path, "/") == 0 ? "" : path);
	return 0;
}

/* The directory of this process's memory cgroup, from /proc/self/cgroup
 * (lines id:controllers:path, the controllers comma-separated): v1's
 * memory controller where it is mounted, else v2's. -ENOENT without
 * /proc; 0 and w->kind NULL without a memory cgroup. */
static int cg_dir(struct cg_where *w)
{
	char buf[4096], path[PATH_MAX];
	w->kind = NULL;
	snprintf(path, sizeof(path), "%s/self/cgroup", md__memroom_proc);
	if (md__read_text(path, buf, sizeof(buf)) < 0)
		return -ENOENT;
	char *lines;
	for (char *line = strtok_r(buf, "\n", &lines); line; line = strtok_r(NULL, "\n", &lines)) {
		char *ctl = strchr(line, ':'), *at = ctl ? strchr(ctl + 1, ':') : NULL;
		if (!at)
			continue;
		*at++ = '\0';
		ctl++;
		int memory = md__options_have("memory", ctl);
		if (memory && cg_place(w, &v1, ctl, at) == 0)
			break;
		if (!memory && !*ctl && !w->kind)
			cg_place(w, &v2, "", at);
	}
	return 0;
}

/* The number at the start of an open cgroup file; UINT64_MAX for none
 * ("max") or none readable. */
static uint64_t fd_u64(int fd)
{
	char buf[64];
	ssize_t n = fd >= 0 ? md__sys_pread(fd, buf, sizeof(buf) - 1, 0) : -1;
	buf[n > 0 ? n : 0] = '\0';
	if (buf[0] < '0' || buf[0] > '9')
		return UINT64_MAX;
	return strtoull(buf, NULL, 10);
}

/* The limit in an open limit file: UINT64_MAX for none. cgroup v1 says
 * none with the largest count of pages it keeps, in bytes (2^63 less a
 * page), not "max": taken for a limit, every unlimited level was kept and
 * the levels past MD_MEMROOM_LEVELS, where a real limit may be, were not. */
static uint64_t fd_limit(int fd)
{
	uint64_t v = fd_u64(fd);
	return v >= (1ull << 62) ? UINT64_MAX : v;
}

/* The value of key in an open memory.stat ("key value" lines), 0 if none. */
static uint64_t fd_stat(int fd, const char *key)
{
	char buf[8192];
	ssize_t n = fd >= 0 ? md__sys_pread(fd, buf, sizeof(buf) - 1, 0) : -1;
	buf[n > 0 ? n : 0] = '\0';
	size_t kl = strlen(key);
	for (char *p = buf; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (strncmp(p, key, kl) == 0 && p[kl] == ' ')
			return strtoull(p + kl + 1, NULL, 10);
	return 0;
}

static void level_close(int *fd)
{
	for (int f = 0; f < MD_MEMROOM_FILES; f++)
		if (fd[f] >= 0)
			close(fd[f]);
}

/* Opens the files of the level at dir (-1 for those not there); 1 if
 * it has a limit, its usage readable. */
static int level_open(const struct cg_kind *kind, const char *dir, int *fd)
{
	char path[PATH_MAX + 32];
	for (int f = 0; f < MD_MEMROOM_FILES; f++) {
		fd[f] = -1;
		if (!kind->file[f])
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, kind->file[f]);
		fd[f] = open(path, O_RDONLY | O_CLOEXEC);
	}
	return fd[USAGE] >= 0 && (fd_limit(fd[LIMIT]) != UINT64_MAX || fd_limit(fd[LIMIT2]) != UINT64_MAX);
}

/* What limit leaves over usage, the inactive page cache counted free:
 * UINT64_MAX for no limit. */
static uint64_t left(uint64_t limit, uint64_t usage, uint64_t cache)
{
	if (limit == UINT64_MAX || usage == UINT64_MAX)
		return UINT64_MAX;
	usage = usage > cache ? usage - cache : 0;
	return limit > usage ? limit - usage : 0;
}

/* What the limits of an open level leave, in bytes: UINT64_MAX if none. */
static uint64_t level_room(const int *fd, const char *inactive)
{
	uint64_t cache = fd_stat(fd[STAT], inactive), use = fd_u64(fd[USAGE]);
	uint64_t room = left(fd_limit(fd[LIMIT]), use, cache);
	/* v2's memory.high against memory.current; v1's memsw limit against
	 * memory and swap used. */
	uint64_t room2 = left(fd_limit(fd[LIMIT2]), fd[USAGE2] >= 0 ? fd_u64(fd[USAGE2]) : use, cache);
	return room2 < room ? room2 : room;
}

enum { KEEP = 1, STOP = 2 };

/* The levels of w from the cgroup up to the root, one at a time: fn
 * called with each one's files open, closed after it unless it says KEEP;
 * the walk ends where it says STOP. */
static void cg_walk(struct cg_where *w, int (*fn)(void *arg, int *fd, int limited), void *arg)
{
	while (strlen(w->dir) >= w->root) {
		int fd[MD_MEMROOM_FILES];
		int limited = level_open(w->kind, w->dir, fd);
		int r = fn(arg, fd, limited);
		if (!(r & KEEP))
			level_close(fd);
		char *slash = strrchr(w->dir, '/');
		if ((r & STOP) || !slash || (size_t)(slash - w->dir) < w->root)
			break;
		*slash = '\0';
	}
}

void md__memroom_close(struct md__memroom *m)
{
	/* Never a number the VMM has put a file of its own at since. */
	for (unsigned l = 0; l < m->n; l++)
		for (int f = 0; f < MD_MEMROOM_FILES; f++)
			md__close_if_same(m->fd[l][f], m->dev[l][f], m->ino[l][f]);
	m->n = 0;
}

/* Keeps the levels with a limit, up to MD_MEMROOM_LEVELS (descriptors
 * for after a chroot): one set later where there was none is not seen
 * after a chroot. */
static int keep_level(void *arg, int *fd, int limited)
{
	struct md__memroom *m = arg;
	m->seen += fd[LIMIT] >= 0;
	if (!limited)
		return 0;
	for (int f = 0; f < MD_MEMROOM_FILES; f++)
		if (fd[f] >= 0 && md__fd_note(fd[f], &m->dev[m->n][f], &m->ino[m->n][f]) != 0)
			fd[f] = -1;
	memcpy(m->fd[m->n++], fd, sizeof(m->fd[0]));
	return m->n < MD_MEMROOM_LEVELS ? KEEP : KEEP | STOP;
}

int md__memroom_open(struct md__memroom *m)
{
	struct cg_where w;
	m->n = m->seen = 0;
	int err = cg_dir(&w);
	if (err || !w.kind)
		return err;
	m->inactive = w.kind->inactive;
	cg_walk(&w, keep_level, m);
	return 0;
}

/* What the limits of m leave (the least of them), in bytes: UINT64_MAX
 * if none. */
static uint64_t cg_room(const struct md__memroom *m)
{
	uint64_t room = UINT64_MAX;
	for (unsigned l = 0; l < m->n; l++) {
		/* A file the VMM put at a kept number is not read for ours
		 * (the host's available memory still bounds the copies). */
		int fd[MD_MEMROOM_FILES];
		for (int f = 0; f < MD_MEMROOM_FILES; f++)
			fd[f] = md__same_file(m->fd[l][f], m->dev[l][f], m->ino[l][f]) ? m->fd[l][f] : -1;
		uint64_t r = level_room(fd, m->inactive);
		room = r < room ? r : room;
	}
	return room;
}

struct room_now {
	const char *inactive;
	uint64_t room;
	unsigned seen;
};

/* Every level, however many: none is kept open. */
static int room_level(void *arg, int *fd, int limited)
{
	struct room_now *now = arg;
	now->seen += fd[LIMIT] >= 0;
	if (limited) {
		uint64_t r = level_room(fd, now->inactive);
		now->room = r < now->room ? r : now->room;
	}
	return 0;
}

uint64_t md__memroom_available(const struct md__memroom *kept)
{
	/* The cgroup as it is now where /proc and /sys tell (the VMM may have
	 * been moved since it started), else the limits kept from the start:
	 * a chroot with /proc but no /sys showed the cgroup, none of its
	 * files, and read as no limit. Asked on the VMM's threads too,
	 * whose errno stays as found: a cgroup file not there (v2's root has
	 * no memory.max) is ENOENT. */
	int saved = errno;
	struct cg_where w;
	struct room_now now = { NULL, UINT64_MAX, 0 };
	int found = cg_dir(&w) == 0;
	if (found && w.kind) {
		now.inactive = w.kind->inactive;
		cg_walk(&w, room_level, &now);
	}
	uint64_t room = found && (now.seen || !kept->seen) ? now.room : cg_room(kept);
	/* Without /proc, the free memory and buffers sysinfo(2) tells, page
	 * cache left out (read as none, every unmerge was refused, and a VMM
	 * that gave root up stayed in root's domain). */
	char buf[4096], path[PATH_MAX];
	struct sysinfo si;
	uint64_t host = 0;
	snprintf(path, sizeof(path), "%s/meminfo", md__memroom_proc);
	char *p = md__read_text(path, buf, sizeof(buf)) > 0 ? strstr(buf, "MemAvailable:") : NULL;
	if (p)
		host = strtoull(p + 13, NULL, 10) * 1024;
	else if (sysinfo(&si) == 0)
		host = ((uint64_t)si.freeram + si.bufferram) * si.mem_unit;
	errno = saved;
	return room < host ? room : host;
}
