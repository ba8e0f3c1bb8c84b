#include "stats_file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static const char *const fallback_names[MD_FB_COUNT] = {
	[MD_FB_UNALIGNED] = "unaligned",
	[MD_FB_PARTIAL] = "partial",
	[MD_FB_NOT_FILE] = "not_file",
	[MD_FB_NO_LEASE] = "no_lease",
	[MD_FB_ENOMEM] = "enomem",
	[MD_FB_VMA_LIMIT] = "vma_limit",
	[MD_FB_FLAGS] = "flags",
	[MD_FB_ERROR] = "error",
};

const char *md_fallback_name(enum md_fallback reason)
{
	return (unsigned)reason < MD_FB_COUNT ? fallback_names[reason] : "unknown";
}

const char *md__ctr_name(enum md__ctr c)
{
	static const char *const names[MD_CTR_COUNT] = {
		[MD_CTR_REGIONS] = "regions",
		[MD_CTR_REGISTERED_BYTES] = "registered_bytes",
		[MD_CTR_READS_SEEN] = "reads_seen",
		[MD_CTR_BYTES_READ] = "bytes_read",
		[MD_CTR_SHARED_AT_READ] = "pages_shared_at_read",
		[MD_CTR_SHARED_NOW] = "pages_shared",
		[MD_CTR_BREAKS] = "breaks",
		[MD_CTR_PRIVATIZED] = "pages_privatized",
		[MD_CTR_LEASE_BREAKS] = "lease_breaks",
		[MD_CTR_VMAS] = "vmas",
		[MD_CTR_FALLBACK_TOTAL] = "fallbacks_total",
		[MD_CTR_AGENT_CPU_NS] = "agent_cpu_ns",
		[MD_CTR_PAGES_SCANNED] = "pages_scanned",
		[MD_CTR_PAGES_HINTED] = "pages_hinted",
		[MD_CTR_MERGED] = "merged",
		[MD_CTR_MERGED_FROM_HINTS] = "merged_from_hints",
		[MD_CTR_ZERO_PAGES] = "zero_pages",
		[MD_CTR_PUBLISHED] = "published",
		[MD_CTR_VOLATILE] = "volatile_skips",
		[MD_CTR_ABANDONED] = "abandoned",
		[MD_CTR_FULL_SCANS] = "full_scans",
		[MD_CTR_SCAN_BREAKS] = "scan_breaks",
		[MD_CTR_WP_WAITS] = "wp_waits",
		[MD_CTR_HINTS_PUSHED] = "hints_pushed",
		[MD_CTR_HINTS_DROPPED] = "hints_dropped",
		[MD_CTR_PAGES_SHARING] = "pages_sharing",
		[MD_CTR_POOL_PAGES] = "pool_pages",
		[MD_CTR_SCAN_CPU_NS] = "scan_cpu_ns",
		[MD_CTR_GENERAL_PROFIT] = "general_profit",
		[MD_CTR_MERGE_RATE] = "merge_rate",
		[MD_CTR_BREAK_RATE] = "break_rate",
		[MD_CTR_READ_NS] = "read_ns",
		[MD_CTR_PAGES_UNSHARED] = "pages_unshared",
		[MD_CTR_SMART_SKIPS] = "smart_skips",
		[MD_CTR_CANDIDATES] = "candidates",
		[MD_CTR_MERGED_FROM_CANDIDATES] = "merged_from_candidates",
		[MD_CTR_MERGED_IMAGE] = "merged_image",
		[MD_CTR_IMAGE_INDEXED] = "image_pages_indexed",
		[MD_CTR_ZERO_NEAR_HINTS] = "zero_pages_near_hints",
		[MD_CTR_FILLED_PAGES] = "filled_pages",
		[MD_CTR_IO_UNSEEN] = "io_unseen",
		[MD_CTR_HINT_RATIO] = "hint_ratio",
		[MD_CTR_READ_SHARED_NS] = "read_shared_ns",
		[MD_CTR_READ_SHARED_BYTES] = "read_shared_bytes",
		[MD_CTR_READ_PAGE_NS] = "read_page_ns",
		[MD_CTR_READS_PAGE] = "reads_page",
		[MD_CTR_READ_SMALL] = "read_small_pages",
		[MD_CTR_MERGE_FALLBACKS] = "merge_fallbacks",
		[MD_CTR_SCAN_STATE] = "scan_state",
		[MD_CTR_FORK_SHARED] = "fork_shared",
		[MD_CTR_FILL_MAPPED] = "fill_mapped",
	};
	if ((unsigned)c >= MD_CTR_COUNT)
		return "unknown";
	if (c >= MD_CTR_FALLBACK0 && c < MD_CTR_FALLBACK_TOTAL)
		return md_fallback_name((enum md_fallback)(c - MD_CTR_FALLBACK0));
	return names[c];
}

void md__stats_from_counters(const uint64_t *ctr, md_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->regions = ctr[MD_CTR_REGIONS];
	out->registered_bytes = ctr[MD_CTR_REGISTERED_BYTES];
	out->reads_seen = ctr[MD_CTR_READS_SEEN];
	out->bytes_read = ctr[MD_CTR_BYTES_READ];
	out->pages_shared_at_read = ctr[MD_CTR_SHARED_AT_READ];
	out->pages_shared = ctr[MD_CTR_SHARED_NOW];
	out->breaks = ctr[MD_CTR_BREAKS];
	out->pages_privatized = ctr[MD_CTR_PRIVATIZED];
	out->lease_breaks = ctr[MD_CTR_LEASE_BREAKS];
	out->vmas = ctr[MD_CTR_VMAS];
	for (int i = 0; i < MD_FB_COUNT; i++)
		out->fallbacks[i] = ctr[MD_CTR_FALLBACK0 + i];
	out->fallbacks_total = ctr[MD_CTR_FALLBACK_TOTAL];
	out->agent_cpu_ns = ctr[MD_CTR_AGENT_CPU_NS];
	out->pages_scanned = ctr[MD_CTR_PAGES_SCANNED];
	out->pages_hinted = ctr[MD_CTR_PAGES_HINTED];
	out->merged = ctr[MD_CTR_MERGED];
	out->merged_from_hints = ctr[MD_CTR_MERGED_FROM_HINTS];
	out->zero_pages = ctr[MD_CTR_ZERO_PAGES];
	out->published = ctr[MD_CTR_PUBLISHED];
	out->volatile_skips = ctr[MD_CTR_VOLATILE];
	out->abandoned = ctr[MD_CTR_ABANDONED];
	out->full_scans = ctr[MD_CTR_FULL_SCANS];
	out->scan_breaks = ctr[MD_CTR_SCAN_BREAKS];
	out->wp_waits = ctr[MD_CTR_WP_WAITS];
	out->hints_pushed = ctr[MD_CTR_HINTS_PUSHED];
	out->hints_dropped = ctr[MD_CTR_HINTS_DROPPED];
	out->pages_sharing = ctr[MD_CTR_PAGES_SHARING];
	out->pool_pages = ctr[MD_CTR_POOL_PAGES];
	out->scan_cpu_ns = ctr[MD_CTR_SCAN_CPU_NS];
	out->general_profit = (int64_t)ctr[MD_CTR_GENERAL_PROFIT];
	out->merge_rate = ctr[MD_CTR_MERGE_RATE];
	out->break_rate = ctr[MD_CTR_BREAK_RATE];
	out->read_ns = ctr[MD_CTR_READ_NS];
	out->pages_unshared = ctr[MD_CTR_PAGES_UNSHARED];
	out->smart_skips = ctr[MD_CTR_SMART_SKIPS];
	out->candidates = ctr[MD_CTR_CANDIDATES];
	out->merged_from_candidates = ctr[MD_CTR_MERGED_FROM_CANDIDATES];
	out->read_small_pages = ctr[MD_CTR_READ_SMALL];
	out->merged_image = ctr[MD_CTR_MERGED_IMAGE];
	out->image_pages_indexed = ctr[MD_CTR_IMAGE_INDEXED];
	out->zero_pages_near_hints = ctr[MD_CTR_ZERO_NEAR_HINTS];
	out->filled_pages = ctr[MD_CTR_FILLED_PAGES];
	out->io_unseen = ctr[MD_CTR_IO_UNSEEN];
	out->hint_ratio = ctr[MD_CTR_HINT_RATIO];
	out->read_shared_ns = ctr[MD_CTR_READ_SHARED_NS];
	out->read_shared_bytes = ctr[MD_CTR_READ_SHARED_BYTES];
	out->read_page_ns = ctr[MD_CTR_READ_PAGE_NS];
	out->reads_page = ctr[MD_CTR_READS_PAGE];
	out->merge_fallbacks = ctr[MD_CTR_MERGE_FALLBACKS];
	out->scan_state = ctr[MD_CTR_SCAN_STATE];
	out->fork_shared = ctr[MD_CTR_FORK_SHARED];
	out->fill_mapped = ctr[MD_CTR_FILL_MAPPED];
}

int md__stats_parse(const void *buf, size_t len, struct md__stats_snapshot *out)
{
	const struct md__stats_file *f = buf;
	uint64_t ctr[MD_CTR_COUNT] = {0};

	if (len < offsetof(struct md__stats_file, counters))
		return -EINVAL;
	if (memcmp(f->magic, MD_STATS_MAGIC, sizeof(f->magic)) != 0)
		return -EINVAL;
	if (f->version != MD_STATS_VERSION ||
	    f->header_size != offsetof(struct md__stats_file, counters))
		return -EINVAL;
	/* A newer agent may append counters, an older one may have fewer.
	 * Readers read sizeof(struct md__stats_file) bytes: only the counters
	 * this version knows must be there. */
	if (f->ncounters == 0 || f->ncounters > 4096)
		return -EINVAL;
	uint32_t n = f->ncounters < MD_CTR_COUNT ? f->ncounters : MD_CTR_COUNT;
	if (len < f->header_size + (size_t)n * sizeof(uint64_t))
		return -EINVAL;
	if (memchr(f->command, '\0', sizeof(f->command)) == NULL || f->pid == 0)
		return -EINVAL;

	memcpy(ctr, f->counters, n * sizeof(uint64_t));
	out->pid = f->pid;
	out->start_time = f->start_time;
	memcpy(out->command, f->command, sizeof(out->command));
	md__stats_from_counters(ctr, &out->stats);
	return 0;
}

uint64_t md__proc_start_time(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* The command may hold spaces and parentheses: count from the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return 0;
	/* p+1 is the space before field 3; start time is field 22. */
	p++;
	for (int field = 3; field < 22 && p; field++)
		p = strchr(p + 1, ' ');
	if (!p)
		return 0;
	uint64_t start = strtoull(p + 1, NULL, 10);
	/* Shown shifted by the reader's time namespace's boottime offset
	 * (Linux 5.6): an agent in one (a container, a CRIU restore) and the
	 * CLI outside read different numbers for the same process, and the
	 * agent was never listed. Taken back off, every reader agrees (to a
	 * tick, for an offset that is not a whole number of them). */
	char line[128];
	long long sec;
	unsigned long nsec;
	long tick = sysconf(_SC_CLK_TCK);
	FILE *f = tick > 0 ? fopen("/proc/self/timens_offsets", "re") : NULL;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "boottime %lld %lu", &sec, &nsec) == 2)
			start -= (uint64_t)(sec * tick + (long long)(nsec / (1000000000ul / (unsigned long)tick)));
	if (f)
		fclose(f);
	return start;
}

/* Whether pid maps a file of inode ino: 1, 0, or -errno when its maps
 * cannot be read (another user's process, one not dumpable). By inode
 * alone: a mapping names the superblock's device, which fstat does not
 * give on btrfs (a subvolume's). */
static int proc_maps_inode(int pid, ino_t ino)
{
	char path[64], *line = NULL;
	size_t cap = 0;
	int found = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	errno = 0;
	while (!found && getline(&line, &cap, f) >= 0) {
		unsigned long long inode;
		found = sscanf(line, "%*s %*s %*s %*s %llu", &inode) == 1 && inode == (unsigned long long)ino;
	}
	int err = !found && ferror(f) ? -(errno ? errno : EIO) : 0;
	free(line);
	fclose(f);
	return err ? err : found;
}

/* Whether pid is in another time namespace than ours (0 when that cannot
 * be told: another user's process). */
static int other_time_ns(int pid)
{
	char path[64];
	struct stat theirs, ours;
	snprintf(path, sizeof(path), "/proc/%d/ns/time", pid);
	return stat(path, &theirs) == 0 && stat("/proc/self/ns/time", &ours) == 0 &&
	       (theirs.st_ino != ours.st_ino || theirs.st_dev != ours.st_dev);
}

/* Whether start, pid's start time as we read it, is the one recorded. In
 * another time namespace than ours they may be a tick apart (an offset that
 * is not a whole number of ticks); in ours they are equal, and a tick apart
 * is another process (one that started right after: an agent taking the
 * file over). */
static int same_start(int pid, uint64_t start, uint64_t recorded)
{
	if (start == 0)
		return 0;
	return start == recorded ||
	       ((start > recorded ? start - recorded : recorded - start) == 1 && other_time_ns(pid));
}

int md__stats_file_agent(int fd, const struct md__stats_snapshot *s)
{
	struct flock l = { .l_type = F_RDLCK, .l_whence = SEEK_SET };
	struct stat st;
	uint64_t start;

	if (fcntl(fd, F_SETLK, &l) == 0 || (errno != EAGAIN && errno != EACCES)) {
		start = md__proc_start_time((int)s->pid);
		if (!same_start((int)s->pid, start, s->start_time))
			return 0;
		/* Its pid and start time survive an exec, which takes the
		 * agent's lock (the descriptor is close-on-exec) and its
		 * mapping of the file, held for its life. A process whose maps
		 * we cannot read goes by its pid. */
		if (fstat(fd, &st) == 0 && proc_maps_inode((int)s->pid, st.st_ino) == 0)
			return 0;
		return (int)s->pid;
	}
	/* The holder by its pid here (0: not in our pid namespace), checked
	 * as the file's pid would be: an agent taking the file over (its
	 * header not yet written) did not start when the file's agent did. */
	l = (struct flock){ .l_type = F_RDLCK, .l_whence = SEEK_SET };
	if (fcntl(fd, F_GETLK, &l) != 0 || l.l_type == F_UNLCK || l.l_pid <= 0)
		return -ESRCH;
	start = md__proc_start_time(l.l_pid);
	return same_start(l.l_pid, start, s->start_time) ? l.l_pid : -ESRCH;
}

void (*md__stats_remove_hook)(const char *path);	/* tests only: see stats_file.h */

int md__stats_file_remove(int fd, const char *path)
{
	const char *slash = strrchr(path, '/');
	char moved[PATH_MAX + 300];
	struct stat open_st, moved_st;
	int err;

	/* Whatever is at path is moved to a name of ours first, and only then
	 * told apart: between a look at path and an unlink of it, another
	 * reader could remove our file and a new agent of that pid make its
	 * own there, which the unlink would remove. A name of this process
	 * (not an agent's): left behind only if we die in between. */
	int n = snprintf(moved, sizeof(moved), "%.*s.removing-%d", slash ? (int)(slash - path + 1) : 0, path,
			 (int)getpid());
	if (n < 0 || (size_t)n >= sizeof(moved))
		return -ENAMETOOLONG;
	if (fstat(fd, &open_st) != 0 || rename(path, moved) != 0)
		return -errno;
	if (md__stats_remove_hook)
		md__stats_remove_hook(path);
	if (lstat(moved, &moved_st) == 0 && open_st.st_dev == moved_st.st_dev && open_st.st_ino == moved_st.st_ino)
		return unlink(moved) == 0 ? 0 : -errno;
	err = -ESTALE;
	/* Another file, an agent's perhaps: back under its name, unless a new
	 * one is there already (its agent, finding its name gone, made
	 * another: the one we hold is no one's). */
	if (link(moved, path) == 0 || errno == EEXIST)
		unlink(moved);
	else if (rename(moved, path) != 0)
		err = -errno;
	return err;
}

int md__stats_removal_leftover(const char *dir, const char *name)
{
	char path[PATH_MAX + 300];
	const char *p = name + strlen(".removing-");
	char *end;
	if (strncmp(name, ".removing-", strlen(".removing-")) != 0 || *p < '1' || *p > '9')
		return 0;
	errno = 0;
	long pid = strtol(p, &end, 10);
	if (*end || errno || pid > INT_MAX)
		return 0;
	/* Its remover lives (or another process took its pid: later, then). */
	if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
		return 0;
	int n = snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= sizeof(path))
		return 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
	if (fd < 0)
		return 0;
	/* A live agent's file a remover moved away and died before it put it
	 * back: the agent's lock keeps it (it goes when the agent does). */
	struct flock l = { .l_type = F_RDLCK, .l_whence = SEEK_SET };
	int held = fcntl(fd, F_GETLK, &l) != 0 || l.l_type != F_UNLCK;
	close(fd);
	return !held && unlink(path) == 0;
}

/* The shared /tmp default: anyone can create /tmp/memdedup-UID before us,
 * so use it only if it is a directory of ours that nobody else can enter
 * (made so if absent and create is set, else -ENOENT). */
static int tmp_dir_ours(const char *dir, int create)
{
	struct stat st;
	if (create && mkdir(dir, 0700) != 0 && errno != EEXIST)
		return -errno;
	if (lstat(dir, &st) != 0)
		return -errno;
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 07777) != 0700) {
		md__log("%s is not a directory of uid %u with mode 0700: not using it "
			"(set MEMDEDUP_RUN_DIR or XDG_RUNTIME_DIR, or remove it)",
			dir, (unsigned)geteuid());
		return -EPERM;
	}
	return 0;
}

static int run_dir(const char *opt, char *buf, size_t size, int create)
{
	const char *env = getenv("MEMDEDUP_RUN_DIR");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	int n;
	if (opt)
		n = snprintf(buf, size, "%s", opt);
	else if (env && *env)
		n = snprintf(buf, size, "%s", env);
	else if (geteuid() == 0)
		n = snprintf(buf, size, "%s", MD_HOST_RUN_DIR);
	else if (xdg && *xdg)
		n = snprintf(buf, size, "%s/memdedup", xdg);
	else {
		n = snprintf(buf, size, "/tmp/memdedup-%u", (unsigned)geteuid());
		if (n >= 0 && (size_t)n < size)
			return tmp_dir_ours(buf, create);
	}
	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int md__run_dir(const char *opt, char *buf, size_t size)
{
	return run_dir(opt, buf, size, 1);
}

int md__run_dir_lookup(char *buf, size_t size)
{
	return run_dir(NULL, buf, size, 0);
}
