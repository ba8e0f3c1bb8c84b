/*
 * agent.c - an agent's life: options, its thread, its statistics file, and
 * the registration of guest RAM.
 *
 * The agent's one thread ("md-agent") waits for lease-break signals, which
 * the kernel directs at it alone (F_SETOWN_EX with F_OWNER_TID) and which it
 * keeps blocked and takes with sigtimedwait(), so the VMM's own signal
 * handling is never disturbed. Between signals it refreshes the accounting.
 *
 * Each call of the VMM's into the agent begins with MD_NOCANCEL_SCOPE: a
 * pthread_cancel of the calling thread cannot act in the agent's work
 * (sys.h, md__cancel_off), as none can in the C library's madvise, munmap
 * or mmap the call stands in for.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent_internal.h"
#include "log.h"
#include "policies.h"
#include "sys.h"

static int agent_exists;

struct thread_start {
	struct md_agent *agent;
	sem_t ready;
};

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int md__walk_worth(int known, const struct md__resident *now, const struct md__resident *then,
		   unsigned since)
{
	if (!known)
		return 1;
	uint64_t moved = md__resident_moved(now, then);
	return moved >= 64 || (moved && since >= 300);
}

static void *agent_thread(void *arg)
{
	struct thread_start *start = arg;
	struct md_agent *a = start->agent;
	sigset_t all, lease;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	sigemptyset(&lease);
	sigaddset(&lease, a->lease_signal);
	pthread_setname_np(pthread_self(), "md-agent");
	md__in_agent = 1;	/* for good (sys.h) */
	a->thread_tid = md__sys_gettid();
	sem_post(&start->ready);	/* start is gone after this */

	/* Once a second: daemon messages (CONTROLs wait at most that long),
	 * the counters, the report to memdedupd (when they moved). Ten
	 * wake-ups a second, as there were, were half of this thread's time
	 * once guests had converged. Lease breaks wake it at once (the
	 * signal).
	 * What walks /proc/self/pagemap over every page shared at read time
	 * (copy-on-write breaks) runs when reads begin and when they stop (at
	 * most every 2 s), 3 s after the scanner's merges onto images stop,
	 * every 30 s while reads or merges by the dozen go
	 * on, and else every 60 s at most, when the pages the process maps
	 * moved (below): on scanner bursts too, as it was, it was
	 * two thirds of this thread's time while guests converged (27 walks
	 * of 1.1 ms in a minute). The VMA
	 * count (a read of /proc/self/maps, 7 ms with the 3,400 mappings of a
	 * guest's page cache) in at most one of those walks a minute after we
	 * mapped something, or every 10 minutes. Every 3 s, as it was,
	 * pagemap walks were the largest part of this thread's time while
	 * guests converged (about 40 % of its perf samples). */
	uint64_t last_reads = 0, last_merges = 0, reap_merges = 0, last_img = 0, walked_img = 0;
	unsigned img_quiet = 0;
	unsigned last_full = 0, last_vmas = 0, last_reap = 0, reap_every = 3, last_report = 0, looked = 0;
	struct md__resident full_at = { 0 }, reap_at = { 0 };
	int was_reading = 0, edge_due = 0;
	struct timespec next;
	int statm_fd = md__proc_open("statm", 0);
	dev_t statm_dev = 0;
	ino_t statm_ino = 0;
	if (md__fd_note(statm_fd, &statm_dev, &statm_ino) != 0)
		statm_fd = -1;
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (unsigned n = 1; !__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE);) {
		struct timespec now, wait;
		if (statm_fd >= 0 && !md__same_file(statm_fd, statm_dev, statm_ino))
			statm_fd = -1;	/* the VMM's file now: never read, nor closed */
		/* Lease breaks short of memory: tried again every 50 ms. */
		int breaking = __atomic_load_n(&a->breaking, __ATOMIC_RELAXED) ? md__image_breaks_retry(a) : 0;
		clock_gettime(CLOCK_MONOTONIC, &now);
		int64_t left = (int64_t)(next.tv_sec - now.tv_sec) * 1000000000 + (next.tv_nsec - now.tv_nsec);
		if (left > 0) {
			int64_t w = breaking && left > 50000000 ? 50000000 : left;
			wait.tv_sec = (time_t)(w / 1000000000);
			wait.tv_nsec = (long)(w % 1000000000);
			siginfo_t info;
			int sig = sigtimedwait(&lease, &info, &wait);
			/* The kernel's lease signals carry si_code > 0
			 * (POLL_MSG) and the descriptor; a wake-up from
			 * md_agent_free() is SI_TKILL. */
			if (sig == a->lease_signal && info.si_code > 0)
				md__image_lease_broken(a, info.si_fd);
			if (sig >= 0 || w < left)
				continue;	/* the second is not over */
			/* The second is over now, not when the wait began:
			 * from that, the next pass came at once, two a second. */
			clock_gettime(CLOCK_MONOTONIC, &now);
		}
		next.tv_sec = now.tv_sec + 1;
		next.tv_nsec = now.tv_nsec;
		n++;
		md__image_lease_broken(a, -1);	/* a lease break whose signal was lost */
		if (__atomic_load_n(&a->nimages, __ATOMIC_RELAXED))	/* for md__break_room */
			__atomic_store_n(&a->lease_break_now, md__lease_break_s(a), __ATOMIC_RELAXED);
		md__images_release_idle(a);
		md__regions_flush_advice(a);
		uint64_t reads = __atomic_load_n(&a->ctr[MD_CTR_READS_SEEN], __ATOMIC_RELAXED);
		uint64_t merges = md__scan_activity(a);
		int reading = reads != last_reads;
		int busy = reading || merges - last_merges >= 64;
		/* A burst of reads' start and end are walked, at most every
		 * 2 s (reads may come and go by the second): an edge too
		 * close to the last walk waits for the next one. */
		edge_due |= reading != was_reading;
		/* Pages the scanner mapped from images count as shared only
		 * once a walk sees them: a burst of such merges over for 3 s
		 * is walked too (status showed a quarter of a converged
		 * guest's sharing missing for up to a minute). Not each
		 * second's end: bursts pause and resume while guests converge,
		 * and walks were most of this thread's time then (above). */
		uint64_t img = __atomic_load_n(&a->ctr[MD_CTR_MERGED_IMAGE], __ATOMIC_RELAXED);
		img_quiet = img == last_img ? img_quiet + 1 : 0;
		last_img = img;
		edge_due |= img_quiet == 3 && img != walked_img;
		int edge = edge_due && (!last_full || n - last_full >= 2);
		/* A copy-on-write break of a page shared at read time or
		 * merged moves the pages the process maps by one (a file page
		 * replaced by an anonymous one, or a new anonymous one where
		 * the file page was not mapped yet). A quiet guest maps a page
		 * more or less now and then (0 to 5 in 5 s once converged,
		 * tcpu120 in docs/benchmarks.md), and a walk would find as
		 * little: the walks of a quiet process wait for 64 pages to
		 * move, or 5 minutes for fewer. Looked at every 10 s once a
		 * walk is due by time, not every second (the read was a sixth
		 * of this thread's time once idle, tcpu119). */
		unsigned since_full = n - last_full, since_reap = n - last_reap;
		int full_due = since_full >= 60, reap_due = since_reap >= reap_every;
		int look = (full_due || (reap_due && !busy)) && n - looked >= 10;
		struct md__resident now_res = { 0 };
		int res_known = 0;
		if (look) {
			looked = n;
			res_known = statm_fd >= 0 && md__resident_pages(statm_fd, &now_res) == 0;
		}
		int full = edge || (busy && since_full >= 30) ||
			   (full_due && look &&
			    (md__walk_worth(res_known, &now_res, &full_at, since_full) || n - last_vmas >= 600));
		/* Pages the guests wrote since they merged are found by the
		 * reap, a pagemap read over the merged pages (as costly as a
		 * walk of all guest RAM when they are spread): every 3 s
		 * while it finds dozens, so the scanner may merge them again,
		 * its interval doubling while it finds next to none, up to
		 * 12 s while merges go on and 60 s else. Every 3 s for good,
		 * it cost 85 ms more per agent over a two-minute run. The
		 * resident counts cannot tell of pages merged since the last
		 * reap: a merge moves a page from anonymous to file and its
		 * break back, so guests that wrote what merged since showed
		 * no move, and the scanner, which skips merged pages, sat
		 * idle for minutes with every page written (a stress test
		 * saw it: 20 s without a merge). */
		int reap = reap_due && (busy || merges != reap_merges ||
					(look && md__walk_worth(res_known, &now_res, &reap_at, since_reap)));
		if ((full || reap) && !res_known && statm_fd >= 0)
			md__resident_pages(statm_fd, &now_res);	/* the walk's baseline */
		was_reading = reading;
		last_reads = reads;
		last_merges = merges;
		if (full) {
			/* The budget check adds what was mapped since (here
			 * and by the engine) to the last count, so a stale
			 * count is safe: counted again when it matters (past
			 * half the budget, 128 mappings made since), else at
			 * most once a minute while mappings change. */
			uint64_t est = md__vmas_estimate(&a->vmas);
			uint64_t last = __atomic_load_n(&a->ctr[MD_CTR_VMAS], __ATOMIC_RELAXED);
			uint64_t since = est > last ? est - last : est != last;
			int vmas = !last_vmas || n - last_vmas >= 600 ||
				   (since && (n - last_vmas >= 60 || (est * 2 > a->max_vmas && since >= 128)));
			md__account(a, vmas);
			walked_img = img;
			full_at = now_res;
			if (vmas)
				last_vmas = n;
			last_full = n;
			edge_due = 0;
		}
		int found = md__scan_account(a, reap);
		md__scan_leave_old_pool(a);
		if (reap) {
			unsigned cap = busy ? 12 : 60;
			reap_merges = merges;
			reap_at = now_res;
			last_reap = n;
			reap_every = found >= 64 ? 3 : reap_every * 2 < cap ? reap_every * 2 : cap;
		}
		md__set(a, MD_CTR_AGENT_CPU_NS, thread_cpu_ns());
		/* The counters go to memdedupd when they moved (reads and
		 * merges move them), and every 10 s else: a round trip a
		 * second for each agent was a third of both sides' time once
		 * converged. */
		int report = n - last_report >= 10 || md__counters_moved(a);
		if (report)
			last_report = n;
		md__scan_daemon(a, report);
	}
	md__close_if_same(statm_fd, statm_dev, statm_ino);
	/* Under the lock: who wakes this thread (start_break) holds it, and
	 * a thread id let go may be another thread's soon. */
	md__agent_enter(a);
	a->thread_tid = 0;
	md__agent_leave(a);
	return NULL;
}

void md__agent_thread_leases(struct md_agent *a)
{
	static __thread int within;	/* a break's own parts come here too */
	if (within || __atomic_load_n(&a->thread_tid, __ATOMIC_RELAXED) != md__sys_gettid())
		return;
	within = 1;
	sigset_t lease;
	sigemptyset(&lease);
	sigaddset(&lease, a->lease_signal);
	siginfo_t info;
	while (sigtimedwait(&lease, &info, &(struct timespec){ 0, 0 }) == a->lease_signal)
		if (info.si_code > 0)	/* the kernel's, as agent_thread takes them */
			md__image_lease_broken(a, info.si_fd);
	if (__atomic_load_n(&a->breaking, __ATOMIC_RELAXED))
		md__image_breaks_retry(a);
	within = 0;
}

/* Opens the statistics file at path and takes its lock (stats_file.h): 0
 * and *fdp, also unlocked where the file system has no locks (`memdedup
 * status` then goes by the pid); -EEXIST if a live agent holds it (of our
 * pid in another pid namespace: its mapping must not be cut short), -EPERM
 * if it is another user's (a shared run directory: not ours to change), or
 * -errno. Not through a link someone put there: we would truncate its
 * target. */
static int stats_file_claim(const char *path, int *fdp)
{
	for (int tries = 0; tries < 100; tries++) {
		struct stat st, now;
		int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd < 0)
			return -errno;
		if (fstat(fd, &st) != 0 || st.st_uid != geteuid()) {
			close(fd);
			return -EPERM;
		}
		struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
		if (fcntl(fd, F_SETLK, &l) != 0) {
			if (errno != EAGAIN && errno != EACCES) {
				md__log("cannot lock the statistics file (%s): `memdedup status` may remove "
					"it if this process runs in a pid namespace of its own", strerror(errno));
				*fdp = fd;
				return 0;
			}
			/* An agent's write lock stays; a reader's read lock
			 * (`memdedup status`) lasts an instant. */
			l = (struct flock){ .l_type = F_WRLCK, .l_whence = SEEK_SET };
			int held = fcntl(fd, F_GETLK, &l) == 0 && l.l_type == F_WRLCK;
			close(fd);
			if (held)
				return -EEXIST;
			nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
			continue;
		}
		/* A reader may have removed it as stale between our open and
		 * our lock: then make it anew. */
		if (lstat(path, &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino) {
			*fdp = fd;
			return 0;
		}
		close(fd);
	}
	return -EAGAIN;
}

/* dir's k-th name for our pid into a->stats_path: 0, or -ENAMETOOLONG (a
 * path cut short would put the file, and a directory, elsewhere). */
static int stats_file_name(struct md_agent *a, const char *dir, int k)
{
	int n = k == 1 ? snprintf(a->stats_path, sizeof(a->stats_path), "%s/agent-%d.stats", dir, (int)getpid())
		: snprintf(a->stats_path, sizeof(a->stats_path), "%s/agent-%d.%d.stats", dir, (int)getpid(), k);
	return n < 0 || (size_t)n >= sizeof(a->stats_path) ? -ENAMETOOLONG : 0;
}

static void stats_file_close(struct md_agent *a)
{
	if (!a->stats_map)
		return;
	a->ctr = a->local_ctr;
	unlink(a->stats_path);
	md__sys_munmap(a->stats_map, sizeof(*a->stats_map));
	a->stats_map = NULL;
	/* After the unlink: nobody takes the name meanwhile. Not a number
	 * the VMM has put a file of its own at. */
	md__close_if_same(a->stats_fd, a->stats_dev, a->stats_ino);
	a->stats_fd = -1;
}

static void stats_file_open(struct md_agent *a, const char *opt_dir)
{
	char dir[sizeof(a->stats_path)];
	struct md__stats_file *f;
	int fd = -1;

	int err = md__run_dir(opt_dir, dir, sizeof(dir));
	if (err && err != -ENAMETOOLONG) {
		errno = -err;
		snprintf(dir, sizeof(dir), "the run directory");
		goto err_say;
	}
	if (!err && !*dir)
		return;
	if (err || stats_file_name(a, dir, 1) != 0) {
		a->stats_path[0] = '\0';
		md__log("no statistics file: the run directory is too long (the file's path must fit in "
			"%zu bytes): `memdedup status` will not list this process", sizeof(a->stats_path) - 1);
		return;
	}
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		goto err_say;
	/* For our user and root only, as memdedupd's status is: it holds the
	 * VMM's command line. A file left by a process of the same pid may be
	 * there: ours, it is made so (an older agent made them 0644). */
	err = stats_file_claim(a->stats_path, &fd);
	for (int k = 2; k <= MD_STATS_NAMES && (err == -EEXIST || err == -EPERM) &&
	     stats_file_name(a, dir, k) == 0; k++)
		err = stats_file_claim(a->stats_path, &fd);
	if (err == -EEXIST || err == -EPERM) {
		a->stats_path[0] = '\0';
		md__log("no statistics file in %s: every name for this pid is another live agent's (of "
			"another pid namespace) or another user's: `memdedup status` will not list this "
			"process", dir);
		return;
	}
	if (err) {
		errno = -err;
		goto err_say;
	}
	/* Written, not just sized: a store through the mapping into a block
	 * a full filesystem cannot give is SIGBUS, in the VMM. */
	static const struct md__stats_file zero;
	if (fchmod(fd, 0600) != 0 || ftruncate(fd, 0) != 0)
		goto err_remove;
	ssize_t wrote = md__sys_pwrite(fd, &zero, sizeof(zero), 0);
	if (wrote != (ssize_t)sizeof(zero)) {
		if (wrote >= 0)
			errno = ENOSPC;	/* a regular file writes short only when full */
		goto err_remove;
	}
	f = md__sys_mmap(NULL, sizeof(*f), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (f == MAP_FAILED)
		goto err_remove;

	memcpy(f->magic, MD_STATS_MAGIC, sizeof(f->magic));
	f->version = MD_STATS_VERSION;
	f->header_size = offsetof(struct md__stats_file, counters);
	f->ncounters = MD_CTR_COUNT;
	f->pid = (uint32_t)getpid();
	f->start_time = md__proc_start_time(getpid());
	int cfd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
	if (cfd >= 0) {
		ssize_t n = read(cfd, f->command, sizeof(f->command) - 1);
		for (ssize_t i = 0; i < n - 1; i++)
			if (f->command[i] == '\0')
				f->command[i] = ' ';
		close(cfd);
	}
	memcpy(f->counters, a->local_ctr, sizeof(a->local_ctr));
	a->stats_map = f;
	a->stats_fd = fd;	/* open for the lock */
	if (md__fd_note(fd, &a->stats_dev, &a->stats_ino) != 0)
		a->stats_fd = -1;	/* closed: the lock goes, the mapping stays */
	a->ctr = f->counters;
	return;

err_remove:
	err = errno;
	unlink(a->stats_path);	/* ours: we hold its lock */
	close(fd);
	errno = err;
err_say:
	a->stats_path[0] = '\0';
	md__log("no statistics file in %s (%s): `memdedup status` will not list this process",
		dir, strerror(errno));
}

static uint64_t default_max_vmas(void)
{
	char buf[32] = "";
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	uint64_t max = strtoull(buf, NULL, 10);
	/* Leave a quarter to the VMM itself: its own mmaps must not fail. */
	return max ? max / 4 * 3 : 49152;
}

/* What md_agent_new made before its thread, undone (the thread joined,
 * the scanner freed). */
static void agent_release(md_agent *a)
{
	stats_file_close(a);
	md__memroom_close(&a->memroom);
	pthread_mutex_destroy(&a->unmerge_lock);
	pthread_mutex_destroy(&a->io_unseen_lock);
	pthread_mutex_destroy(&a->pause_lock);
	pthread_mutex_destroy(&a->tunables_lock);
	pthread_mutex_destroy(&a->probe_lock);
	pthread_mutex_destroy(&a->writes_lock);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

int md_agent_new(md_agent **agentp, const md_agent_options *opts)
{
	MD_NOCANCEL_SCOPE();
	md_agent_options none = {0};
	struct thread_start start;
	int err;

	if (!agentp)
		return -EINVAL;
	if (!opts)
		opts = &none;
	if ((opts->flags & ~MD_OPT_ALL) ||
	    (opts->flags & (MD_OPT_SCAN_RANDOM | MD_OPT_SCAN_LINEAR)) == (MD_OPT_SCAN_RANDOM | MD_OPT_SCAN_LINEAR) ||
	    (opts->flags & (MD_OPT_NO_HINTS | MD_OPT_HINTS)) == (MD_OPT_NO_HINTS | MD_OPT_HINTS) ||
	    opts->share_min_pages > MD_SHARE_MIN_PAGES_MAX ||
	    opts->image_idle_s > MD_IMAGE_IDLE_S_MAX)
		return -EINVAL;
	/* The ranges of `memdedup set` (md__tunable_set); 0 is the default. */
	if (opts->pages_to_scan > MD_PAGES_TO_SCAN_MAX || opts->sleep_ms > MD_SLEEP_MS_MAX ||
	    opts->cpu_percent > MD_CPU_PERCENT_MAX || opts->hint_ratio > MD_HINT_RATIO_MAX)
		return -EINVAL;
	if (__atomic_exchange_n(&agent_exists, 1, __ATOMIC_ACQ_REL))
		return -EBUSY;

	struct md_agent *a = calloc(1, sizeof(*a));
	if (!a) {
		err = -ENOMEM;
		goto err_unclaim;
	}
	pthread_mutex_init(&a->lock, NULL);
	a->lease_uid = (uid_t)-1;
	pthread_mutex_init(&a->writes_lock, NULL);
	pthread_mutex_init(&a->unmerge_lock, NULL);
	pthread_mutex_init(&a->io_unseen_lock, NULL);
	pthread_mutex_init(&a->pause_lock, NULL);
	pthread_mutex_init(&a->tunables_lock, NULL);
	pthread_mutex_init(&a->probe_lock, NULL);
	a->ctr = a->local_ctr;
	a->kernel_ksm = opts->kernel_ksm;
	a->flags = opts->flags;
	a->max_vmas = opts->max_vmas ? opts->max_vmas : default_max_vmas();
	a->share_min_pages = opts->share_min_pages ? opts->share_min_pages : MD_SHARE_MIN_PAGES_DEFAULT;
	a->image_idle_s = opts->image_idle_s ? opts->image_idle_s : MD_IMAGE_IDLE_S_DEFAULT;
	a->lease_signal = SIGRTMAX - 2;
	a->lease_break_s = md__lease_break_s_now();	/* before the VMM may chroot */
	a->lease_break_now = md__lease_break_s(a);
	/* The VMM's own mappings, before any of ours: the budget counts them
	 * from the start, not from the thread's first count a second later. */
	md__set(a, MD_CTR_VMAS, md__vmas_count(&a->vmas));
	md__memroom_open(&a->memroom);	/* before the VMM may chroot */
	/* Before any thread of ours counts: the counters move to the file
	 * (a->ctr) while no one writes them. */
	a->stats_fd = -1;
	if (!opts->run_dir || *opts->run_dir)
		stats_file_open(a, opts->run_dir);
	md__scan_init(a, opts);

	start.agent = a;
	sem_init(&start.ready, 0, 0);
	err = md__thread_create(&a->thread, agent_thread, &start);
	if (err)
		goto err_free;
	while (sem_wait(&start.ready) != 0 && errno == EINTR)
		;
	sem_destroy(&start.ready);
	*agentp = a;
	return 0;

err_free:
	sem_destroy(&start.ready);
	md__scan_free(a);
	agent_release(a);
err_unclaim:
	__atomic_store_n(&agent_exists, 0, __ATOMIC_RELEASE);
	return err;
}

void md_agent_free(md_agent *a)
{
	MD_NOCANCEL_SCOPE();
	if (!a)
		return;
	__atomic_store_n(&a->stop, 1, __ATOMIC_RELEASE);
	/* Under the lock, as the thread lets its id go: an id let go may be
	 * another thread's soon, and the signal's default action ends the
	 * process. */
	md__agent_enter(a);
	if (a->thread_tid)
		syscall(SYS_tgkill, getpid(), a->thread_tid, a->lease_signal);
	md__agent_leave(a);
	pthread_join(a->thread, NULL);
	/* Pages mapped from the pool become anonymous memory first: nothing
	 * steers a discard there from now on (md__scan_free). */
	md__scan_free(a);

	/* Without the thread nobody would answer a lease break: make every
	 * shared page private before the leases go. */
	md__agent_enter(a);
	if (md__privatize(a, 0, UINTPTR_MAX, 0) != 0)
		md__log("not every page shared with an image could be made private as the agent ends "
			"(memory short): a writer of the image may change what those pages show");
	md__images_free(a);
	md__regions_free(a);
	free(a->handed);
	a->handed = NULL;	/* the leave publishes what is left: nothing */
	a->nhanded = 0;
	md__agent_leave(a);

	agent_release(a);
	__atomic_store_n(&agent_exists, 0, __ATOMIC_RELEASE);
}

static int check_range(const void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr;
	if (len == 0 || (s & (MD_PAGE - 1)) || (len & (MD_PAGE - 1)) || s + len < s)
		return -EINVAL;
	return 0;
}

static int regions_overlap(const md_agent *a, uintptr_t s, uintptr_t e)
{
	for (size_t i = 0; i < a->nregions; i++)
		if (a->regions[i].start < e && a->regions[i].end > s)
			return 1;
	return 0;
}

static int handed_overlaps(const md_agent *a, uintptr_t s, uintptr_t e)
{
	for (size_t i = 0; i < a->nhanded; i++)
		if (a->handed[i].start < e && a->handed[i].end > s)
			return 1;
	return 0;
}

/* Marks what is given up in [s, e) as asking for merging no more (1) or
 * again (0), splitting records at s and e (lock held). A record that
 * cannot be split (memory short) is marked whole when it opts out, left
 * as it is when it opts in: less merging, never more. */
static void handed_opt_out(md_agent *a, uintptr_t s, uintptr_t e, int out)
{
	for (size_t i = 0; i < a->nhanded; i++) {
		struct md__handed *h = &a->handed[i];
		if (h->start >= e || h->end <= s)
			continue;
		uintptr_t cut = h->start < s ? s : h->end > e ? e : 0;
		if (cut) {
			struct md__handed *m = realloc(a->handed, (a->nhanded + 1) * sizeof(*m));
			if (m) {
				a->handed = m;
				h = &a->handed[i];
				m[a->nhanded] = *h;
				m[a->nhanded++].start = cut;	/* met again later in this loop */
				h->end = cut;
				if (cut == s)
					continue;	/* h lies before s now */
			} else if (!out) {
				continue;
			}
		}
		h->opted_out = out;
	}
}

/* md_agent_register's work, agent->lock held. */
static int register_locked(md_agent *a, uintptr_t s, size_t len, unsigned advice)
{
	if (a->future_locked) {
		md__log_once(86, "memory at %p (%zu bytes) is locked in memory (mlockall MCL_FUTURE, QEMU's "
			     "-overcommit mem-lock=on): copy-on-write sharing would copy every page at once, "
			     "so it is not shared or merged", (void *)s, len);
		return -EPERM;
	}
	if (handed_overlaps(a, s, s + len)) {
		/* Asked for merging again: taken back once the VMM lets go. */
		handed_opt_out(a, s, s + len, 0);
		md__log_once(77, "memory at %p (%zu bytes) was given to the VMM's own userfaultfd: "
			     "not merged", (void *)s, len);
		return -EBUSY;
	}
	/* Published before a record or mapping of ours is made there: a
	 * call gone plainly to the kernel there (md__ours_begin) is over. */
	md__ours_grow(a, s, s + len);
	int fresh = !regions_overlap(a, s, s + len);
	int err = md__regions_add(a, s, s + len, advice);
	/* Under agent->lock: the read path looks at the engine's regions
	 * while holding it, so they only change under it. A userfaultfd of
	 * the VMM's holding the range (it registered again between its
	 * unregister and our taking the RAM back) keeps it the VMM's: our
	 * record there would have a read map over it, ending the VMM's
	 * registration. */
	if (!err && md__scan_register(a, s, len, advice) == -EBUSY && fresh) {
		/* Nothing was ours there before: the engine's part too goes
		 * (it registered up to the VMM's part, nothing merged yet). */
		md__engine_unregister(a->engine, (void *)s, len, MD_UNREG_MAPPED);
		md__regions_remove(a, s, s + len);
		err = -EBUSY;
	}
	return err;
}

/* Where in [lo, hi) a userfaultfd we know of covers lo, up to *end: the
 * engine's (its regions) or the VMM's given RAM (a->handed); 0 if none. */
static int userfault_known(md_agent *a, uintptr_t lo, uintptr_t hi, uintptr_t *end)
{
	if (a->engine && md__engine_covers(a->engine, lo, hi, end))
		return 1;
	for (size_t i = 0; i < a->nhanded; i++)
		if (a->handed[i].start <= lo && lo < a->handed[i].end) {
			*end = a->handed[i].end < hi ? a->handed[i].end : hi;
			return 1;
		}
	return 0;
}

/* 1 if a userfaultfd we do not know of covers part of [s, e), 0 if none
 * does, or -errno. smaps is read outside agent->lock (it takes time in
 * proportion to the memory resident), what we know looked up under it. */
static int userfault_foreign(md_agent *a, uintptr_t s, uintptr_t e)
{
	struct md__run *run;
	size_t n;
	int err = md__range_userfault_runs(s, e, &run, &n);
	if (err)
		return err;
	int foreign = 0;
	md__agent_enter(a);
	for (size_t i = 0; i < n && !foreign; i++)
		for (uintptr_t lo = run[i].lo, hi = run[i].hi; lo < run[i].hi && !foreign; lo = hi)
			foreign = !userfault_known(a, lo, run[i].hi, &hi);
	md__agent_leave(a);
	free(run);
	return foreign;
}

int md_agent_register(md_agent *a, void *addr, size_t len, unsigned advice)
{
	MD_NOCANCEL_SCOPE();
	int err = check_range(addr, len);
	if (!a || err || (advice & ~(MD_ADV_DONTFORK | MD_ADV_DONTDUMP | MD_ADV_HUGEPAGE)))
		return -EINVAL;
	/* Shared memory (a memfd backend with share=on, say) is also written
	 * by others, a vhost-user process or a device: a private mapping put
	 * over it would hide their writes from the guest and the guest's
	 * from them. Like kernel KSM, merge private memory only. */
	int shared = md__range_shared((uintptr_t)addr, len);
	if (shared) {
		md__log_once(63, "memory at %p (%zu bytes) %s: not merged", addr, len,
			     shared > 0 ? "is shared with other processes (MAP_SHARED)"
					: "has mappings we cannot read");
		return shared > 0 ? -EPERM : shared;
	}
	/* Huge pages of hugetlbfs (QEMU's -mem-path): the engine protects,
	 * maps and discards 4 KiB pages, which such memory refuses; a
	 * discard's anonymous memory would take the guest's RAM off its huge
	 * pages. Kernel KSM leaves them alone too. Locked memory (QEMU's
	 * -overcommit mem-lock=on): the kernel fills a private mapping made
	 * there at once, by write faults, so every page mapped from the pool
	 * or an image would be a private copy the moment it is mapped. */
	int kind = md__range_vmflags((uintptr_t)addr, len);
	if (kind < 0) {
		md__log_once(66, "memory at %p (%zu bytes) has mappings we cannot read: not merged", addr, len);
		return kind;
	}
	if (kind & MD_VMF_HUGETLB) {
		md__log_once(122, "memory at %p (%zu bytes) is hugetlbfs memory: not merged", addr, len);
		return -EPERM;
	}
	/* Read-only memory (or none at all), or executable: the pages a
	 * shared read or a merge maps there are read-write only, and would
	 * make it writable behind the VMM's back, or not executable (a later
	 * mprotect gives such memory up, too). */
	if (kind & MD_VMF_NOT_RW) {
		md__log_once(94, "memory at %p (%zu bytes) is not readable and writable only: not merged",
			     addr, len);
		return -EPERM;
	}
	/* Advised MADV_WIPEONFORK before it asked for merging: a child reads
	 * zeroes there, where it would read the pages of an image or the
	 * pool a fork copies as they are (the advice given later gives such
	 * memory up, too). */
	if (kind & MD_VMF_WIPEONFORK) {
		md__log_once(156, "memory at %p (%zu bytes) is advised MADV_WIPEONFORK: not merged", addr, len);
		return -EPERM;
	}
	/* A userfaultfd of the VMM's (postcopy migration, a background
	 * snapshot) registered before the VMM asked for merging: a mapping of
	 * ours there would end its registration. Known ones are the
	 * engine's (advised again) and those the preload library saw the
	 * VMM make (md_agent_userfault), which the code below handles. */
	if (kind & MD_VMF_USERFAULT)
		err = userfault_foreign(a, (uintptr_t)addr, (uintptr_t)addr + len);
	if (err) {
		if (err > 0)
			md__log_once(99, "memory at %p (%zu bytes) is registered with a userfaultfd of the "
				     "VMM's (postcopy migration, a background snapshot): not merged", addr, len);
		return err > 0 ? -EBUSY : err;
	}
	if (kind & MD_VMF_LOCKED) {
		md__log_once(125, "memory at %p (%zu bytes) is locked in memory (mlock, QEMU's -overcommit "
			     "mem-lock=on): copy-on-write sharing would copy every page at once, so it is "
			     "not shared or merged", addr, len);
		return -EPERM;
	}
	/* Advice given before this one (a VMM that marks its RAM
	 * MADV_DONTFORK first) goes to the mappings we make there too. */
	advice |= (kind & MD_VMF_DONTFORK ? MD_ADV_DONTFORK : 0u) |
		  (kind & MD_VMF_DONTDUMP ? MD_ADV_DONTDUMP : 0u) |
		  (kind & MD_VMF_HUGEPAGE ? MD_ADV_HUGEPAGE : 0u);
	/* Only what is mapped, as the kernel's madvise: a hole registered
	 * would have read-time sharing map private pages over whatever the
	 * VMM maps there later, shared memory included. */
	struct md__run *run;
	size_t n;
	err = md__range_runs((uintptr_t)addr, (uintptr_t)addr + len, &run, &n);
	if (err)
		return err;
	int hole = 0;
	md__agent_enter(a);
	for (size_t i = 0; i < n && !err; i++) {
		if (run[i].mapped)
			err = register_locked(a, run[i].lo, run[i].hi - run[i].lo, advice);
		else
			hole = 1;
	}
	md__agent_leave(a);
	free(run);
	return err ? err : hole ? -ENOMEM : 0;
}

/* Takes [s, e) out of what was given up to the VMM's userfaultfd (lock
 * held): the records shrink, split or go. With take_back, each piece is
 * registered again with its advice. 0, or the first -errno (a split that
 * found no memory keeps its record whole: that RAM stays the VMM's). */
static int handed_take(md_agent *a, uintptr_t s, uintptr_t e, int take_back)
{
	int err = 0;
	struct md__handed *again = NULL;	/* held by the VMM's again: kept */
	size_t nagain = 0;
	for (size_t i = 0; i < a->nhanded;) {
		struct md__handed *h = &a->handed[i];
		if (h->start >= e || h->end <= s) {
			i++;
			continue;
		}
		struct md__handed piece = *h;
		piece.start = h->start > s ? h->start : s;
		piece.end = h->end < e ? h->end : e;
		if (h->start < piece.start && h->end > piece.end) {
			/* The middle goes: the record splits in two (the new
			 * one, after e, is not met again by this loop). */
			struct md__handed *m = realloc(a->handed, (a->nhanded + 1) * sizeof(*m));
			if (!m) {
				err = err ? err : -ENOMEM;
				i++;
				continue;
			}
			a->handed = m;
			h = &a->handed[i];
			a->handed[a->nhanded] = *h;
			a->handed[a->nhanded++].start = piece.end;
			h->end = piece.start;
			i++;
		} else if (h->start < piece.start) {
			h->end = piece.start;
			i++;
		} else if (h->end > piece.end) {
			h->start = piece.end;
			i++;
		} else {
			*h = a->handed[--a->nhanded];	/* gone: look at what moved here */
		}
		/* Not if it asked for merging no more, or is shared memory now
		 * (replaced behind our back: md_agent_register's check). */
		int r = 0;
		if (take_back && !piece.opted_out && md__range_shared(piece.start, piece.end - piece.start) == 0)
			r = register_locked(a, piece.start, piece.end - piece.start, piece.advice);
		/* A userfaultfd of the VMM's registered it again since the
		 * unregister this follows (another thread's): the VMM's still,
		 * taken back when that one lets go. */
		struct md__handed *m = r == -EBUSY ? realloc(again, (nagain + 1) * sizeof(*m)) : NULL;
		if (m) {
			again = m;
			again[nagain++] = piece;
			r = 0;
		}
		err = err ? err : r;
	}
	struct md__handed *h = nagain ? realloc(a->handed, (a->nhanded + nagain) * sizeof(*h)) : NULL;
	if (h) {
		memcpy(h + a->nhanded, again, nagain * sizeof(*h));
		a->handed = h;
		a->nhanded += nagain;
	} else if (nagain) {
		err = err ? err : -ENOMEM;	/* merged no more there, until advised again */
	}
	free(again);
	return err;
}

/* md_agent_unregister's work, agent->lock held. With anon, the engine's
 * merged pages in the range are moved into anonymous memory first, in the
 * same hold of its locks (md__engine_unregister_anon); *anon: how that
 * went. */
static int unregister_locked(md_agent *a, uintptr_t s, uintptr_t e, int *anon)
{
	/* The memory stays mapped: unshare it before we stop watching it. Its
	 * copies stay in the pool's and images' mappings, forgotten. The
	 * engine's part comes before our records': if it cannot let the range
	 * go (no memory to split its region), it still merges there, and the
	 * call must fail with our records as they were (the VMM's mprotect,
	 * mlock or mremap would otherwise go on over pool mappings). */
	int err = md__privatize(a, s, e, 0);
	if (err)
		return err;
	/* Before the engine's part: one that fails half-way has let some of
	 * its regions go, their copies untracked but for this set (covering
	 * what stays registered too costs a discard a look, no more). */
	for (size_t i = 0; i < a->nregions; i++) {
		uintptr_t lo = a->regions[i].start > s ? a->regions[i].start : s;
		uintptr_t hi = a->regions[i].end < e ? a->regions[i].end : e;
		if (lo < hi)
			md__rangeset_add(&a->forgotten, lo, hi);
	}
	if (a->engine && anon) {
		int anon_err = 0;
		err = md__engine_unregister_anon(a->engine, (void *)s, e - s, &anon_err);
		*anon = *anon ? *anon : anon_err;
	} else if (a->engine) {
		err = md__engine_unregister(a->engine, (void *)s, e - s, MD_UNREG_MAPPED);
	}
	if (err)
		return err;
	/* Its read-time mappings stay: the VMM's advice (DONTFORK, DONTDUMP)
	 * still owed to them is given before their records go. */
	md__regions_flush_advice_in(a, s, e);
	return md__regions_remove(a, s, e);
}

/* md__regions_remove for memory that is gone (unmapped, replaced): its
 * records must go, or a read into what the VMM maps there next would be
 * taken for one into guest RAM. When a split finds no spare record (memory
 * short), a region it would cut is given up whole, its rest as for
 * MADV_UNMERGEABLE (private, the engine's part too), which splits nothing;
 * only if that fails too does the record stay (-ENOMEM). */
static int forget_records(md_agent *a, uintptr_t s, uintptr_t e)
{
	int err = md__regions_remove(a, s, e);
	for (size_t i = 0; err == -ENOMEM && i < a->nregions; i++) {
		const struct md__region *r = &a->regions[i];
		if (r->start >= s || r->end <= e)
			continue;	/* no split: it goes with the rest */
		uintptr_t rs = r->start, re = r->end;
		if (unregister_locked(a, rs, s, NULL) != 0 || unregister_locked(a, e, re, NULL) != 0)
			return -ENOMEM;
		md__log_once(107, "no memory to split a region record where the VMM unmapped guest RAM: "
			     "the rest of that region is no longer shared or merged");
		err = md__regions_remove(a, s, e);	/* whole now */
		i = (size_t)-1;
	}
	return err;
}

int md_agent_unregister(md_agent *a, void *addr, size_t len)
{
	MD_NOCANCEL_SCOPE();
	int err = check_range(addr, len);
	if (!a || err)
		return -EINVAL;
	uintptr_t s = (uintptr_t)addr, e = s + len;
	md__agent_enter(a);
	/* Memory that is none of ours (glibc's realloc moves large blocks
	 * with mremap) is let go at once, as in md__agent_unmap: the engine's
	 * write lock would wait for a scanner's whole batch. */
	if (regions_overlap(a, s, e) || handed_overlaps(a, s, e) ||
	    (a->engine && md__engine_touches(a->engine, s, len)))
		err = unregister_locked(a, s, e, NULL);
	/* RAM the VMM's userfaultfd holds and that asks for merging no more
	 * is not taken back when the VMM lets go; the record stays, so that
	 * it is refused while the VMM holds it, if it asks again. Not when
	 * the call failed: the VMM's advice did not change. */
	if (!err)
		handed_opt_out(a, s, e, 1);
	md__agent_leave(a);
	return err;
}

/* Gives up guest RAM in [s, e) (all: everywhere) as md_agent_unregister
 * does, region by region, and keeps what the VMM's userfaultfd holds there
 * from being taken back (lock held). 0 or the first -errno; *gone: how many
 * regions went. With anon, as unregister_locked's. */
static int give_up_locked(md_agent *a, uintptr_t s, uintptr_t e, int all, size_t *gone, int *anon)
{
	int err = 0;
	*gone = 0;
	/* From a copy of the bounds: each unregister changes the table. */
	size_t n = a->nregions;
	struct md__region *v = n ? malloc(n * sizeof(*v)) : NULL;
	if (n && !v)
		return -ENOMEM;
	if (n)
		memcpy(v, a->regions, n * sizeof(*v));
	for (size_t i = 0; i < n; i++) {
		uintptr_t lo = all || v[i].start > s ? v[i].start : s;
		uintptr_t hi = all || v[i].end < e ? v[i].end : e;
		if (lo >= hi)
			continue;
		handed_opt_out(a, lo, hi, 1);
		int r = unregister_locked(a, lo, hi, anon);
		err = err ? err : r;
		*gone += !r;
	}
	handed_opt_out(a, all ? 0 : s, all ? UINTPTR_MAX : e, 1);
	free(v);
	return err;
}

int md__agent_lock(md_agent *a, uintptr_t s, uintptr_t e, int all)
{
	MD_NOCANCEL_SCOPE();
	size_t gone;
	md__agent_enter(a);
	int err = give_up_locked(a, s, e, all, &gone, NULL);
	if (gone)
		md__log_once(87, "the VMM locks guest RAM in memory (%s): copy-on-write sharing would "
			     "copy every page at once, so it is no longer shared or merged%s",
			     all ? "mlockall, QEMU's -overcommit mem-lock=on" : "mlock",
			     err ? "; not all of it could be made private: the lock fails" : "");
	md__agent_leave(a);
	return err;
}

void md__agent_lock_future(md_agent *a, int future)
{
	MD_NOCANCEL_SCOPE();
	md__agent_enter(a);
	a->future_locked = future;
	md__agent_leave(a);
}

struct mbind_call {
	md_agent *a;
	long (*call)(long, ...);
	void *addr;
	unsigned long len;
	int mode;
	const unsigned long *nodes;
	unsigned long maxnode;
	unsigned flags;
	long ret;
	int err;
};

/* Whether the file (dev, ino) is an image the agent maps from, kept in
 * shared memory (tmpfs); agent->lock held. */
static int image_in_shmem(const md_agent *a, dev_t dev, ino_t ino)
{
	const struct md__image *img = md__image_find(a, dev, ino);
	return img && img->shmem;
}

/* agent->lock and the engine's held: no mapping of ours is made or goes
 * while the spans are found and the call made. */
static int mbind_run(void *p)
{
	struct mbind_call *m = p;
	uintptr_t s = (uintptr_t)m->addr & ~(uintptr_t)(MD_PAGE - 1), e = (uintptr_t)m->addr + m->len;
	struct md__file_map *v = NULL;
	struct md__span *skip = NULL;
	size_t n = 0, nskip = 0;
	/* Pool pages and images in shared memory the agent mapped there: an
	 * mbind would set their file's policy, for every process mapping it
	 * (other VMs of the domain). The rest is bound as the VMM asked. A
	 * call the kernel refuses anyway (a wrapping range) goes to it whole. */
	if (e > s && e < UINTPTR_MAX - MD_PAGE) {
		int err = md__range_file_maps(s, e, &v, &n);
		skip = n ? malloc(n * sizeof(*skip)) : NULL;
		if (err || (n && !skip)) {
			/* The VMM's call must not fail for our bookkeeping (QEMU
			 * takes a failed host-nodes= bind as fatal): made whole,
			 * at worst placing a shared page of ours as it asked. */
			md__log_once(123, "cannot tell our mappings in an mbind's range (%s): bound as asked, "
				     "pool pages in it included", strerror(err ? -err : ENOMEM));
			free(v);
			free(skip);
			v = NULL;
			skip = NULL;
			n = 0;
		}
		for (size_t i = 0; i < n; i++)
			if (v[i].pool || image_in_shmem(m->a, v[i].dev, v[i].ino))
				skip[nskip++] = (struct md__span){ v[i].lo, v[i].hi };
	}
	m->ret = md__policy_mbind(m->call, m->addr, m->len, m->mode, m->nodes, m->maxnode, m->flags, skip, nskip);
	m->err = errno;
	free(v);
	free(skip);
	return 0;
}

long md__agent_mbind(md_agent *a, long (*call)(long, ...), void *addr, unsigned long len, int mode,
		     const unsigned long *nodes, unsigned long maxnode, unsigned flags)
{
	MD_NOCANCEL_SCOPE();
	struct mbind_call m = { a, call, addr, len, mode, nodes, maxnode, flags, -1, 0 };
	md__agent_enter(a);
	if (a->engine)
		md__engine_locked(a->engine, mbind_run, &m);	/* no merge, no pool mapping made meanwhile */
	else
		mbind_run(&m);
	md__agent_leave(a);
	errno = m.err;
	return m.ret;
}

int md__agent_give_up_anon(md_agent *a, uintptr_t s, uintptr_t e, const char *why)
{
	MD_NOCANCEL_SCOPE();
	size_t gone = 0;
	int err = 0;
	md__agent_enter(a);
	if (regions_overlap(a, s, e) || handed_overlaps(a, s, e)) {
		/* While the engine still holds the range (it alone can freeze
		 * the pages it moves), and with no merge between the move and
		 * the unregister: one could map the pool there again. */
		int anon_err = 0;
		err = give_up_locked(a, s, e, 0, &gone, &anon_err);
		err = err ? err : anon_err;
	}
	/* And the copies RAM given up before left in the pool's mappings,
	 * which the advice would meet as the merged pages'. */
	int moved_err = md__move_forgotten(a, s, e);
	err = err ? err : moved_err;
	md__agent_leave(a);
	if (gone || err)
		md__log_once(139, "the VMM %s guest RAM: that memory is no longer shared or merged, its merged "
			     "pages made anonymous%s%s", why,
			     err ? "; not all of them could be: " : "", err ? strerror(-err) : "");
	return err;
}

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25	/* Linux 6.1's, which older headers lack */
#endif

struct collapse_call {
	md_agent *a;
	uintptr_t s, e;
	int err;
};

/* agent->lock and the engine's held: no mapping of ours is made or goes
 * while the parts are found and advised. */
static int collapse_run(void *p)
{
	struct collapse_call *c = p;
	struct md__file_map *v = NULL;
	size_t n = 0;
	int err = md__range_file_maps(c->s, c->e, &v, &n);
	if (err) {
		/* Not knowing where the pool's pages are, none is collapsed:
		 * the kernel's "try again" (a collapse is advice). */
		md__log_once(138, "cannot tell our mappings in an MADV_COLLAPSE's range (%s): not passed on",
			     strerror(-err));
		c->err = -EAGAIN;
		return 0;
	}
	uintptr_t at = c->s;
	for (size_t i = 0; i <= n && !c->err; i++) {
		int ours = i < n && (v[i].pool || md__image_find(c->a, MD_ANY_DEV, v[i].ino));
		if (i < n && !ours)
			continue;	/* the VMM's own file: its to collapse */
		uintptr_t hi = i < n ? v[i].lo : c->e;
		if (hi > at && md__sys_madvise((void *)at, hi - at, MADV_COLLAPSE) != 0)
			c->err = -errno;
		if (i < n)
			at = v[i].hi;
	}
	free(v);
	return 0;
}

int md__agent_collapse(md_agent *a, uintptr_t s, uintptr_t e)
{
	MD_NOCANCEL_SCOPE();
	struct collapse_call c = { a, s, e, 0 };
	md__agent_enter(a);
	if (a->engine)
		md__engine_locked(a->engine, collapse_run, &c);
	else
		collapse_run(&c);
	md__agent_leave(a);
	return c.err;
}

int md__agent_protect(md_agent *a, uintptr_t s, uintptr_t e)
{
	MD_NOCANCEL_SCOPE();
	size_t gone = 0;
	md__agent_enter(a);
	int err = regions_overlap(a, s, e) || handed_overlaps(a, s, e) ? give_up_locked(a, s, e, 0, &gone, NULL) : 0;
	if (gone || err)
		md__log_once(90, "the VMM changes the protection of guest RAM (mprotect): the mappings "
			     "memdedup makes there could not keep it, so that memory is no longer shared "
			     "or merged%s", err ? "; not all of it could be made private: the call fails" : "");
	md__agent_leave(a);
	return err;
}

/* The page-aligned range [*s, *e) that [addr, addr+len) covers: 0, or
 * -EINVAL if it is empty or wraps. */
static int page_range(const void *addr, size_t len, uintptr_t *s, uintptr_t *e)
{
	*s = (uintptr_t)addr & ~(uintptr_t)(MD_PAGE - 1);
	*e = (uintptr_t)addr + len;
	if (len == 0 || *e < *s || *e > UINTPTR_MAX - MD_PAGE)
		return -EINVAL;
	*e = (*e + MD_PAGE - 1) & ~(uintptr_t)(MD_PAGE - 1);
	return 0;
}

/* The last handover md_agent_userfault made on this thread (its tag): the
 * VMM's registration follows on the same thread. */
static __thread unsigned last_handover;

int md_agent_userfault(md_agent *a, void *addr, size_t len)
{
	MD_NOCANCEL_SCOPE();
	uintptr_t s, e;
	if (!a || page_range(addr, len, &s, &e))
		return -EINVAL;
	size_t ours = 0;
	int err = 0;
	md__agent_enter(a);
	for (size_t i = 0; i < a->nregions; i++)
		ours += a->regions[i].start < e && a->regions[i].end > s;
	if (!ours) {
		md__agent_leave(a);
		return 0;
	}
	/* What is given up, and with which advice, noted first (recorded only
	 * if it all goes): without the record the RAM could be taken back
	 * while the VMM's userfaultfd holds it. */
	struct md__handed *h = realloc(a->handed, (a->nhanded + ours) * sizeof(*h));
	if (!h) {
		md__agent_leave(a);
		return -ENOMEM;
	}
	a->handed = h;
	size_t k = 0;
	unsigned tag = ++a->handovers;
	for (size_t i = 0; i < a->nregions; i++) {
		const struct md__region *r = &a->regions[i];
		if (r->start < e && r->end > s)
			h[a->nhanded + k++] = (struct md__handed){ r->start > s ? r->start : s,
								   r->end < e ? r->end : e, r->advice, tag, 0 };
	}
	/* The scanner's part first: the zero pages it dropped put back (the
	 * VMM's userfaultfd would take them for pages still to come). Then
	 * the rest, made private where it stands: pages mapped from the pool
	 * or an image stay in those private file mappings, as copies. */
	if (a->engine)
		err = md__engine_unregister(a->engine, (void *)s, e - s, MD_UNREG_HANDOVER);
	if (!err)
		err = unregister_locked(a, s, e, NULL);
	if (!err) {
		a->nhanded += k;
		last_handover = tag;
	} else {
		/* The VMM's registration fails: what went is registered again
		 * (the engine's part went first, perhaps alone). */
		for (size_t j = 0; j < k; j++)
			register_locked(a, h[a->nhanded + j].start, h[a->nhanded + j].end - h[a->nhanded + j].start,
					h[a->nhanded + j].advice);
	}
	md__agent_leave(a);
	if (err == -EINVAL)
		err = -EIO;	/* -EINVAL is for bad arguments: the VMM would go on */
	/* A failure said apart from the success: QEMU hands over each RAM
	 * block alone, and a failure at the second went unsaid. */
	if (err)
		md__log_once(184, "the VMM registers guest RAM with its own userfaultfd (postcopy migration, "
			     "a background snapshot), which could not all be given back as it was: the "
			     "registration fails");
	else
		md__log_once(76, "the VMM registers guest RAM with its own userfaultfd (postcopy migration, "
			     "a background snapshot): that memory is no longer shared or merged");
	return err ? err : 1;
}

/* 1 if [s, e) holds a mapping of an image the agent has met. */
static int image_mapped(md_agent *a, uintptr_t s, uintptr_t e)
{
	struct md__file_map *v;
	size_t n;
	int found = 0;
	if (md__range_file_maps(s, e, &v, &n) != 0)
		return 0;
	for (size_t i = 0; i < n && !found; i++)
		found = !v[i].pool && md__image_find(a, MD_ANY_DEV, v[i].ino) != NULL;
	free(v);
	return found;
}

void md__agent_userfault_undo(md_agent *a, int err)
{
	MD_NOCANCEL_SCOPE();
	md__agent_enter(a);
	for (size_t i = 0; i < a->nhanded;) {
		struct md__handed h = a->handed[i];
		if (h.tag != last_handover) {
			i++;
			continue;
		}
		a->handed[i] = a->handed[--a->nhanded];
		/* Made anonymous under running vCPUs, a copy could lose a
		 * write: the kernel's refusal stands, said why. */
		if (err == EINVAL && image_mapped(a, h.start, h.end))
			md__log_once(98, "the VMM's userfaultfd cannot take guest RAM holding pages shared "
				     "from a disk image (their mappings are the file's): its registration "
				     "fails, and that RAM stays with the agent");
		if (!h.opted_out)
			register_locked(a, h.start, h.end - h.start, h.advice);
	}
	last_handover = 0;
	md__agent_leave(a);
}

int md_agent_userfault_end(md_agent *a, void *addr, size_t len)
{
	MD_NOCANCEL_SCOPE();
	uintptr_t s, e;
	if (!a || page_range(addr, len, &s, &e))
		return -EINVAL;
	md__agent_enter(a);
	int had = handed_overlaps(a, s, e);
	/* Registered again under the lock: a registration of the VMM's
	 * coming meanwhile finds the RAM ours and is given it properly. */
	int err = had ? handed_take(a, s, e, 1) : 0;
	md__agent_leave(a);
	if (had && err)
		md__log_once(185, "the VMM's userfaultfd let go of guest RAM: it is merged again; not all of "
			     "it: %s", strerror(-err));
	else if (had)
		md__log_once(78, "the VMM's userfaultfd let go of guest RAM: it is merged again");
	return err;
}

/* After [s, e) went from the engine: the copies it made beside it, giving
 * up a region it had no memory to split, a discard must zero. agent->lock
 * held. */
static void copies_beside_gone(md_agent *a, uintptr_t s, uintptr_t e)
{
	struct md__engine *en = a->engine;
	if (!en || en->gave_up_end <= en->gave_up_start)
		return;
	if (en->gave_up_start < s)
		md__rangeset_add(&a->forgotten, en->gave_up_start, s);
	if (en->gave_up_end > e)
		md__rangeset_add(&a->forgotten, e, en->gave_up_end);
}

int md_agent_forget(md_agent *a, void *addr, size_t len)
{
	MD_NOCANCEL_SCOPE();
	int err = check_range(addr, len);
	if (!a || err)
		return -EINVAL;
	md__agent_enter(a);
	err = forget_records(a, (uintptr_t)addr, (uintptr_t)addr + len);
	handed_take(a, (uintptr_t)addr, (uintptr_t)addr + len, 0);
	if (a->engine) {
		md__engine_unregister(a->engine, addr, len, MD_UNREG_GONE);
		copies_beside_gone(a, (uintptr_t)addr, (uintptr_t)addr + len);
	}
	md__agent_leave(a);
	return err;
}

int md__agent_unmap(md_agent *a, void *addr, size_t len, int (*op)(void *arg), void *arg, int keep_mapped)
{
	MD_NOCANCEL_SCOPE();
	if (!a || check_range(addr, len))
		return op(arg);
	uintptr_t s = (uintptr_t)addr, e = s + len;
	/* Memory none of ours (an allocator's, giving memory back while it
	 * holds its own lock) goes without agent->lock: see ours.c. */
	unsigned token;
	if (md__ours_begin(&a->ours, s, e, &token)) {
		int r = op(arg);
		md__ours_end(&a->ours, token);
		return r;
	}
	/* agent->lock across op: a lease break cannot look at the regions
	 * while the memory goes (lock order: agent_internal.h). */
	md__agent_enter(a);
	/* Memory that is none of ours (QEMU unmaps coroutine stacks, buffers)
	 * goes at once: the engine's write lock would wait for a scanner's
	 * whole batch, memdedupd's answers included, and every guest read
	 * for agent->lock behind it. */
	if (!regions_overlap(a, s, e) && !handed_overlaps(a, s, e) &&
	    !(a->engine && md__engine_touches(a->engine, s, len))) {
		int had_copies = md__rangeset_overlaps(&a->forgotten, s, e);
		md__agent_leave(a);
		int r = op(arg);
		if (r == 0 && had_copies) {
			/* Our copies there went with the memory: what the VMM
			 * maps there next is its own, not to be replaced on a
			 * discard (md__discard_forgotten). */
			md__agent_enter(a);
			md__rangeset_remove(&a->forgotten, s, e);
			md__agent_leave(a);
		}
		return r;
	}
	int r = a->engine ? md__engine_unmap(a->engine, addr, len, op, arg, keep_mapped) : op(arg);
	struct md__run *run;
	size_t n;
	if (r == 0) {
		forget_records(a, s, e);
		handed_take(a, s, e, 0);	/* the memory is gone, the VMM's hold with it */
		md__rangeset_remove(&a->forgotten, s, e);	/* and our copies there */
		copies_beside_gone(a, s, e);
	} else if (md__range_runs(s, e, &run, &n) == 0) {
		/* As the engine does (md__engine_unmap): image pages of what
		 * is mapped and not kept are made private before they are
		 * forgotten. */
		keep_mapped |= n == 1 && run[0].mapped;
		for (size_t i = 0; i < n; i++) {
			if (run[i].mapped && keep_mapped)
				continue;
			/* A hole the failed call left: the VMM's hold went
			 * with the memory, or its end would take back what
			 * is mapped there later (an allocator's). */
			if (!run[i].mapped)
				handed_take(a, run[i].lo, run[i].hi, 0);
			/* Pages that could not be made private (memory short)
			 * are the image's still: their records stay, for a
			 * lease break to find them. */
			if (run[i].mapped && md__privatize(a, run[i].lo, run[i].hi, 0) != 0)
				continue;
			/* As on success: a record goes with its memory, its
			 * region's rest given up if it cannot be split. */
			forget_records(a, run[i].lo, run[i].hi);
		}
		free(run);
	} else if (md__privatize(a, s, e, 0) == 0) {
		md__regions_remove(a, s, e);	/* else as above: the records stay */
	}
	/* What failed to go may be left as private copies in pool mappings. */
	if (r)
		md__rangeset_add(&a->forgotten, s, e);
	md__agent_leave(a);
	return r;
}

/* Appends [lo, hi) of [start, end) to *v, if any of it. */
static int registered_add(struct md__registered **v, size_t *n, uintptr_t start, uintptr_t end,
			  uintptr_t lo, uintptr_t hi, unsigned advice)
{
	lo = lo > start ? lo : start;
	hi = hi < end ? hi : end;
	if (lo >= hi)
		return 0;
	struct md__registered *m = realloc(*v, (*n + 1) * sizeof(*m));
	if (!m)
		return -ENOMEM;
	*v = m;
	m[(*n)++] = (struct md__registered){ lo, hi, advice & (MD_ADV_DONTFORK | MD_ADV_DONTDUMP | MD_ADV_HUGEPAGE) };
	return 0;
}

int md__agent_registered(md_agent *a, uintptr_t start, uintptr_t end, struct md__registered **v, size_t *n)
{
	MD_NOCANCEL_SCOPE();
	int err = 0;
	*v = NULL;
	*n = 0;
	md__agent_enter(a);
	for (size_t i = 0; i < a->nregions && !err; i++)
		err = registered_add(v, n, start, end, a->regions[i].start, a->regions[i].end, a->regions[i].advice);
	/* And what the VMM's userfaultfd holds that still asks for merging:
	 * md_agent_unregister marks it opted out, which a refused move must
	 * undo (registered again there: refused -EBUSY, the hold kept and
	 * opted in again), and a move carries to where it went. */
	for (size_t i = 0; i < a->nhanded && !err; i++)
		if (!a->handed[i].opted_out)
			err = registered_add(v, n, start, end, a->handed[i].start, a->handed[i].end,
					     a->handed[i].advice);
	md__agent_leave(a);
	if (err) {
		free(*v);
		*v = NULL;
		*n = 0;
	}
	return err;
}

void md__agent_moved(md_agent *a, void *old, size_t old_len, void *now, size_t now_len, int old_stays)
{
	MD_NOCANCEL_SCOPE();
	uintptr_t o = (uintptr_t)old, n = (uintptr_t)now;
	if (!a || !old_len || !now_len || o + old_len < o || n + now_len < n)
		return;
	md__agent_enter(a);
	if (md__rangeset_overlaps(&a->forgotten, o, o + old_len))
		md__rangeset_add(&a->forgotten, n, n + now_len);
	/* Grown, a mapping of ours (an image's, the pool's) maps its file on
	 * past the old end, where the VMM's new memory must read zeroes:
	 * made anonymous memory, as for a discard. */
	if (now_len > old_len && md__discard_forgotten(a, n + old_len, n + now_len) != 0)
		md__log_once(111, "guest RAM grown by mremap could not all be emptied past its old end "
			     "(memory short): some pages there read a file's content, not zeroes");
	/* Our copies went with the mapping: what the VMM maps where it was
	 * is its own. MREMAP_DONTUNMAP leaves the old mapping, emptied: of
	 * anonymous memory that reads zeroes, but ours there are an image's
	 * or a pool's, whose file pages a read would fault in again (a slot
	 * reused since, an image no lease covers): made anonymous memory,
	 * with its protection and advice, as for a discard. */
	if (n != o && old_stays && md__discard_forgotten(a, o, o + old_len) != 0)
		md__log_once(104, "the place guest RAM left with MREMAP_DONTUNMAP could not all be "
			     "emptied (memory short): some pages there read their file again");
	if (n != o && !old_stays)
		md__rangeset_remove(&a->forgotten, o, o + old_len);
	else if (n == o && now_len < old_len)
		md__rangeset_remove(&a->forgotten, o + now_len, o + old_len);
	/* What moved or was cut off is no longer there: nor is the VMM's
	 * hold on it (the kernel drops a registration from a moved mapping). */
	if (n != o)
		handed_take(a, o, o + old_len, 0);
	else if (now_len < old_len)
		handed_take(a, o + now_len, o + old_len, 0);
	md__agent_leave(a);
}

struct unmap_arg {
	void *addr;
	size_t len;
};

static int unmap_op(void *p)
{
	struct unmap_arg *u = p;
	return md__sys_munmap(u->addr, u->len) == 0 ? 0 : -errno;
}

int md_agent_unmap(md_agent *a, void *addr, size_t len)
{
	MD_NOCANCEL_SCOPE();
	struct unmap_arg u = { addr, len };
	if (!a || check_range(addr, len))
		return -EINVAL;
	return md__agent_unmap(a, addr, len, unmap_op, &u, 1);
}

_Static_assert(MD_ADV_DONTFORK == MD_EADV_DONTFORK && MD_ADV_DONTDUMP == MD_EADV_DONTDUMP &&
	       MD_ADV_HUGEPAGE == MD_EADV_HUGEPAGE && MD_ADV_UNDO == MD_EADV_UNDO,
	       "the engine keeps the agent's advice bits as they are");

int md_agent_advise(md_agent *a, void *addr, size_t len, unsigned advice)
{
	MD_NOCANCEL_SCOPE();
	int err = check_range(addr, len);
	if (!a || err || (advice & ~(MD_ADV_DONTFORK | MD_ADV_DONTDUMP | MD_ADV_HUGEPAGE | MD_ADV_UNDO)))
		return -EINVAL;
	uintptr_t s = (uintptr_t)addr, e = s + len;
	md__agent_enter(a);
	int partial = md__regions_advise(a, s, e, advice);
	/* And what the VMM's userfaultfd holds, for when it is taken back. */
	for (size_t i = 0; i < a->nhanded; i++) {
		struct md__handed *h = &a->handed[i];
		h->advice = md__advice_after(h->advice, h->start, h->end, s, e, advice, &partial);
	}
	if (a->engine)
		partial |= md__engine_advise(a->engine, addr, len, advice);
	md__agent_leave(a);
	if (partial)
		md__log_once(112, "advice taken back (MADV_DODUMP or MADV_NOHUGEPAGE) from part "
			     "of a region of guest RAM: the pages the agent maps there keep it");
	return 0;
}

/* Locked memory the kernel's discard refuses (all but MADV_DONTNEED_LOCKED's):
 * copies kept in an image's or the pool's mapping that the VMM locked
 * (guest RAM it locks is given up, and copies no record tracks any more
 * lie only there), replaced by zeroes first, would be lost for a call that
 * fails. 0, -EINVAL (some is locked), or -errno (smaps); agent->lock held. */
static int locked_copies(md_agent *a, uintptr_t s, uintptr_t e)
{
	if (!md__rangeset_overlaps(&a->forgotten, s, e) || md__range_no_file_vmas(s, e) == 1)
		return 0;
	int kind = md__range_vmflags(s, e - s);
	return kind < 0 ? kind : kind & MD_VMF_LOCKED ? -EINVAL : 0;
}

static int discard(md_agent *a, void *addr, size_t len, int locked_refused)
{
	int err = check_range(addr, len);
	if (!a || err)
		return -EINVAL;
	md__agent_enter(a);
	if (locked_refused && (err = locked_copies(a, (uintptr_t)addr, (uintptr_t)addr + len)))
		goto leave;
	err = md__discard(a, (uintptr_t)addr, (uintptr_t)addr + len);
	/* Pool pages too would read back as pool content after the discard
	 * (in every region the range overlaps). */
	if (a->engine) {
		int e2 = md__engine_discard(a->engine, addr, len);
		err = err ? err : e2;
	}
	/* And copies no record tracks any more. */
	int e3 = md__discard_forgotten(a, (uintptr_t)addr, (uintptr_t)addr + len);
	err = err ? err : e3;
leave:
	md__agent_leave(a);
	return err;
}

int md_agent_discard(md_agent *a, void *addr, size_t len)
{
	MD_NOCANCEL_SCOPE();
	return discard(a, addr, len, 0);
}

/* Advice the kernel does not know (MADV_GUARD_INSTALL before Linux 6.13,
 * MADV_DONTNEED_LOCKED before 5.18) it refuses before it looks at a range:
 * asked with none first, so that no page is replaced (its content gone) for
 * a call that then fails and changes nothing. */
static int advice_known(void *addr, int advice)
{
	return advice == MADV_DONTNEED || md__sys_madvise(addr, 0, advice) == 0 ? 0 : -errno;
}

int md__agent_discard_for(md_agent *a, void *addr, size_t len, int advice)
{
	MD_NOCANCEL_SCOPE();
	int err = advice_known(addr, advice);
	return err ? err : discard(a, addr, len, advice != MADV_DONTNEED_LOCKED);
}

int md_agent_madvise_discard(md_agent *a, void *addr, size_t len, int advice)
{
	MD_NOCANCEL_SCOPE();
	size_t plen = (len + MD_PAGE - 1) & ~(size_t)(MD_PAGE - 1);
	unsigned plain;
	int err;
	if ((uintptr_t)addr % MD_PAGE || plen < len)
		return -EINVAL;
	if ((err = advice_known(addr, advice)))
		return err;
	if (!a || !plen || md__ours_begin(&a->ours, (uintptr_t)addr, (uintptr_t)addr + plen, &plain)) {
		/* None of ours (an allocator's memory, see ours.c): plainly. */
		err = md__sys_madvise(addr, len, advice) != 0 ? -errno : 0;
		if (a && plen)
			md__ours_end(&a->ours, plain);
		return err;
	}
	/* Recorded before the engine's discard takes its lock, as a read in
	 * flight is: a merge that freezes these pages after it gives up. */
	struct iovec io = { addr, plen };
	int recorded = a->engine != NULL;
	int token = recorded ? md__inflight_begin(&a->engine->io, &io, 1) : 0;
	err = discard(a, addr, plen, advice != MADV_DONTNEED_LOCKED);
	if (!err && md__sys_madvise(addr, len, advice) != 0)
		err = -errno;
	if (recorded)
		md__inflight_end(&a->engine->io, token);
	return err;
}

int md_agent_stats(md_agent *a, md_stats *stats)
{
	MD_NOCANCEL_SCOPE();
	if (!a || !stats)
		return -EINVAL;
	md__account(a, 1);
	md__scan_account(a, 1);
	uint64_t snap[MD_CTR_COUNT];
	for (int i = 0; i < MD_CTR_COUNT; i++)
		snap[i] = __atomic_load_n(&a->ctr[i], __ATOMIC_RELAXED);
	md__stats_from_counters(snap, stats);
	return 0;
}
