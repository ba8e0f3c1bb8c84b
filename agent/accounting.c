/*
 * accounting.c - the counters that describe the present: how many pages
 * mapped from images are still shared, how many the guest has written since
 * (copy-on-write breaks), and how many mappings the process has. Walked by
 * the agent's thread when they may have moved, not every second (a walk of
 * all guest RAM costs milliseconds): as guest reads start or stop, 3 s after
 * a burst of merges onto images, every 30 s while reads go on, else once
 * the resident counts show pages moved (agent.c's loop). So they lag reads
 * in progress by up to 30 s.
 *
 * /proc/self/pagemap tells a page still backed by the file (bit 61, "file
 * page or shared anonymous") from one the guest has written (a private
 * anonymous copy, present or swapped out); a page never touched since it
 * was mapped is not present and still counts as shared.
 */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_internal.h"
#include "log.h"
#include "sys.h"

#define PM_CHUNK 4096

/* Copies which pages of the next chunk at or after *addr are owned into
 * owned[], under agent->lock. Returns the chunk's pages (0: no region left)
 * and its start in *addr. */
static size_t snapshot_chunk(struct md_agent *a, uintptr_t *addr, unsigned char *owned)
{
	size_t n = 0;
	md__agent_enter(a);
	for (size_t i = 0; i < a->nregions; i++) {
		const struct md__region *r = &a->regions[i];
		if (r->end <= *addr)
			continue;
		if (*addr < r->start)
			*addr = r->start;
		size_t first = (*addr - r->start) / MD_PAGE, left = (r->end - *addr) / MD_PAGE;
		n = left < PM_CHUNK ? left : PM_CHUNK;
		for (size_t k = 0; k < n; k++)
			owned[k] = r->owner[first + k] != 0;
		break;
	}
	md__agent_leave(a);
	return n;
}

/* The agent's thread and md_agent_stats() may both count: one at a time,
 * for the buffers. */
static pthread_mutex_t account_lock = PTHREAD_MUTEX_INITIALIZER;
static int pm = -1;        /* /proc/self/pagemap, kept */
static pid_t pm_pid;       /* the process it shows */
static dev_t pm_dev;       /* its file, to tell it from one the VMM put at its number */
static ino_t pm_ino;

/* Whether pm is still our pagemap: the VMM may have closed the number and
 * put a file of its own there (dup2), whose bytes would be taken for
 * page-table entries (the engine's own descriptor is checked likewise). */
static int pm_ours(void)
{
	return md__same_file(pm, pm_dev, pm_ino);
}

/* A forked child (libmemdedup's VMM making an agent anew there) must not
 * read its parent's pages: the descriptor is closed while its number is
 * still the one inherited, and the lock made anew (a thread counting at
 * the fork does not exist in the child). */
static void account_child(void)
{
	if (pm >= 0)
		close(pm);
	pm = -1;
	account_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
}

void md__account(struct md_agent *a, int count_vmas)
{
	static int at_fork;
	static uint64_t entries[PM_CHUNK];
	static unsigned char owned_map[PM_CHUNK];
	uint64_t owned = 0, broken = 0;
	size_t n;
	int complete;

	pthread_mutex_lock(&account_lock);
	if (!at_fork)
		at_fork = pthread_atfork(NULL, NULL, account_child) == 0;
	/* A child made without the atfork handlers (_Fork, clone): the
	 * number may be one of its own files by now, so only forgotten. */
	if (pm >= 0 && pm_pid != getpid())
		pm = -1;
	if (pm >= 0 && !pm_ours()) {
		pm = -1;	/* not closed: the number is the VMM's now */
		md__log_once(153, "the VMM closed the agent's /proc/self/pagemap descriptor (its counters'), "
			     "or put a file of its own at its number: opened again");
	}
	if (pm < 0) {
		pm = md__proc_open("pagemap", 0);
		pm_pid = getpid();
		if (md__fd_note(pm, &pm_dev, &pm_ino) != 0)
			pm = -1;
	}
	/* Pages given an owner from here on are not all seen by the walk:
	 * the read path's bound counts them on top (md__break_room). */
	md__agent_enter(a);
	uint64_t sets = a->owner_sets;
	md__agent_leave(a);
	complete = pm >= 0;
	/* A chunk at a time, and the pagemap read outside agent->lock: a
	 * walk of all guest RAM takes milliseconds, and every read into guest
	 * RAM would wait for it (the regions may change between chunks; the
	 * counts describe the present only approximately anyway). */
	for (uintptr_t addr = 0; pm >= 0 && (n = snapshot_chunk(a, &addr, owned_map)) != 0;
	     addr += n * MD_PAGE) {
		size_t first = 0, last = n;
		while (first < last && !owned_map[first])
			first++;
		while (last > first && !owned_map[last - 1])
			last--;
		if (first == last)
			continue;
		off_t off = (off_t)((addr / MD_PAGE + first) * sizeof(uint64_t));
		if (!pm_ours()) {	/* replaced during the walk: counted anew next time */
			complete = 0;
			break;
		}
		ssize_t got = md__sys_pread(pm, entries, (last - first) * sizeof(uint64_t), off);
		if (got < (ssize_t)((last - first) * sizeof(uint64_t)))
			complete = 0;
		if (got <= 0)
			continue;
		size_t m = (size_t)got / sizeof(uint64_t);
		for (size_t i = 0; i < m; i++) {
			if (!owned_map[first + i])
				continue;
			owned++;
			/* Written: a private copy, there or swapped out. */
			broken += md__pm_private_anon(entries[i]) != 0;
		}
	}
	/* Stored under the lock: a walk that ended first must not store
	 * its older counts over a newer walk's. */
	md__set(a, MD_CTR_SHARED_NOW, owned - broken);
	md__set(a, MD_CTR_BREAKS, broken);
	md__agent_enter(a);
	a->walked = complete;
	a->walk_unwritten = owned - broken;
	a->walk_sets = sets;
	md__agent_leave(a);
	pthread_mutex_unlock(&account_lock);
	if (!count_vmas)
		return;
	uint64_t vmas = md__vmas_count(&a->vmas);
	if (vmas)
		md__set(a, MD_CTR_VMAS, vmas);
}
