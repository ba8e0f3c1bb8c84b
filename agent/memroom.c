/*
 * memroom.c - the memory an unmerge's copies may take (agent_internal.h).
 *
 * What the host has available, or less where the memory limit of this
 * process's cgroup or of an ancestor leaves less: copies beyond it would
 * have the kernel reclaim or kill the VMM. Usage counts page cache, whose
 * inactive part is reclaimed first (a VMM doing buffered I/O sits near its
 * limit): left out, as the host's MemAvailable leaves it out. cgroup v1's
 * memory controller where it is mounted, else v2's.
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

enum { LIMIT, USAGE, STAT };

struct cg_kind {
	const char *root, *file[3], *inactive;
};

static const struct cg_kind v1 = { "/sys/fs/cgroup/memory",
	{ "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat" }, "total_inactive_file" };
static const struct cg_kind v2 = { "/sys/fs/cgroup",
	{ "memory.max", "memory.current", "memory.stat" }, "inactive_file" };

/* The directory of this process's memory cgroup, from /proc/self/cgroup
 * (lines id:controllers:path, the controllers comma-separated): v1's
 * memory controller where it is mounted, else v2's. -ENOENT without
 * /proc; 0 and *kind NULL without a memory cgroup. */
static int cg_dir(char *dir, size_t size, const struct cg_kind **kind)
{
	char buf[4096];
	*kind = NULL;
	if (md__read_text("/proc/self/cgroup", buf, sizeof(buf)) < 0)
		return -ENOENT;
	char *lines, *names;
	for (char *line = strtok_r(buf, "\n", &lines); line; line = strtok_r(NULL, "\n", &lines)) {
		char *ctl = strchr(line, ':'), *path = ctl ? strchr(ctl + 1, ':') : NULL;
		if (!path)
			continue;
		*path++ = '\0';
		ctl++;
		int memory = 0;
		for (char *c = strtok_r(ctl, ",", &names); c; c = strtok_r(NULL, ",", &names))
			memory |= strcmp(c, "memory") == 0;
		if (memory || (!*ctl && !*kind)) {
			*kind = memory ? &v1 : &v2;
			/* The root cgroup is "/": its directory is the root. */
			snprintf(dir, size, "%s%s", (*kind)->root, strcmp(path, "/") == 0 ? "" : path);
			if (memory)
				break;
		}
	}
	return 0;
}

/* The number at the start of an open cgroup file; UINT64_MAX for none
 * ("max") or none readable. */
static uint64_t fd_u64(int fd)
{
	char buf[64];
	ssize_t n = md__sys_pread(fd, buf, sizeof(buf) - 1, 0);
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

void md__memroom_close(struct md__memroom *m)
{
	for (unsigned l = 0; l < m->n; l++)
		for (int f = 0; f < 3; f++)
			if (m->fd[l][f] >= 0)
				close(m->fd[l][f]);
	m->n = 0;
}

int md__memroom_open(struct md__memroom *m)
{
	char dir[PATH_MAX];
	const struct cg_kind *kind;
	m->n = m->seen = 0;
	int err = cg_dir(dir, sizeof(dir), &kind);
	if (err || !kind)
		return err;
	m->inactive = kind->inactive;
	size_t root = strlen(kind->root);
	/* The cgroup and its ancestors up to the root, those with a limit
	 * only: one set later where there was none is not seen after a
	 * chroot. */
	while (strlen(dir) >= root && m->n < MD_MEMROOM_LEVELS) {
		int *fd = m->fd[m->n];
		char path[PATH_MAX + 32];
		for (int f = 0; f < 3; f++) {
			snprintf(path, sizeof(path), "%s/%s", dir, kind->file[f]);
			fd[f] = open(path, O_RDONLY | O_CLOEXEC);
		}
		m->seen += fd[LIMIT] >= 0;
		if (fd[LIMIT] >= 0 && fd[USAGE] >= 0 && fd_limit(fd[LIMIT]) != UINT64_MAX) {
			m->n++;
		} else {
			for (int f = 0; f < 3; f++)
				if (fd[f] >= 0)
					close(fd[f]);
		}
		char *slash = strrchr(dir, '/');
		if (!slash || (size_t)(slash - dir) < root)
			break;
		*slash = '\0';
	}
	return 0;
}

/* What the limits of m leave (limit - usage, the least of them), in
 * bytes: UINT64_MAX if none. */
static uint64_t cg_room(const struct md__memroom *m)
{
	uint64_t room = UINT64_MAX;
	for (unsigned l = 0; l < m->n; l++) {
		uint64_t lim = fd_limit(m->fd[l][LIMIT]), use = fd_u64(m->fd[l][USAGE]);
		if (lim == UINT64_MAX || use == UINT64_MAX)
			continue;
		uint64_t cache = fd_stat(m->fd[l][STAT], m->inactive);
		use = use > cache ? use - cache : 0;
		uint64_t left = lim > use ? lim - use : 0;
		room = left < room ? left : room;
	}
	return room;
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
	struct md__memroom now;
	int opened = md__memroom_open(&now) == 0;
	const struct md__memroom *m = opened && (now.seen || !kept->seen) ? &now : kept;
	uint64_t room = cg_room(m);
	if (opened)
		md__memroom_close(&now);
	/* Without /proc, the free memory and buffers sysinfo(2) tells, page
	 * cache left out (read as none, every unmerge was refused, and a VMM
	 * that gave root up stayed in root's domain). */
	char buf[4096];
	struct sysinfo si;
	uint64_t host = 0;
	char *p = md__read_text("/proc/meminfo", buf, sizeof(buf)) > 0 ? strstr(buf, "MemAvailable:") : NULL;
	if (p)
		host = strtoull(p + 13, NULL, 10) * 1024;
	else if (sysinfo(&si) == 0)
		host = ((uint64_t)si.freeram + si.bufferram) * si.mem_unit;
	errno = saved;
	return room < host ? room : host;
}
