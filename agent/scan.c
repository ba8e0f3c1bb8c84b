/*
 * scan.c - the agent's side of the content scanner (engine/): creating it,
 * keeping its regions in step with the agent's, its tunables, unmerging, and
 * publishing its counters.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent_internal.h"
#include "log.h"
#include "sys.h"

#define HINTS_CAP 4096

static void apply_welcome(struct md_agent *a, const struct md__msg_welcome *w);

/* md__engine.agent_file: a disk image's (records stay once let go, and so
 * do its copies in RAM given up: a discard there must read zeroes). By
 * inode alone: dev is a mapping's, the superblock's, where the records
 * hold stat's, a btrfs subvolume's (see MD_ANY_DEV). */
static int image_file(void *arg, dev_t dev, ino_t ino)
{
	(void)dev;
	return md__image_find(arg, MD_ANY_DEV, ino) != NULL;
}

void md__scan_init(struct md_agent *a, const md_agent_options *o)
{
	if (!(o->flags & MD_OPT_SCAN))
		return;
	a->scan_explicit = (o->pages_to_scan ? MD_SET_PAGES : 0) | (o->sleep_ms ? MD_SET_SLEEP : 0) |
			   (o->cpu_percent ? MD_SET_CPU : 0) |
			   (o->flags & (MD_OPT_SCAN_RANDOM | MD_OPT_SCAN_LINEAR) ? MD_SET_ORDER : 0) |
			   (o->hint_ratio || (o->flags & (MD_OPT_NO_HINTS | MD_OPT_HINTS)) ? MD_SET_HINTS : 0);
	struct md__engine_options eo = { .max_vmas = o->max_vmas, .vmas = &a->vmas };
	struct md__engine *e = calloc(1, sizeof(*e));
	int err = e ? md__engine_init(e, &eo) : -ENOMEM;
	if (err)
		goto err_free;
	err = md__hints_init(&a->hints, HINTS_CAP);
	if (err)
		goto err_fini;
	/* Set up once, here, before any other thread can see it: its
	 * tunables and pause are written in place from now on (md_agent_set,
	 * md_agent_pause), while guest RAM registers or not. */
	err = md__scanner_init(&a->scanner, e, &a->hints);
	if (err)
		goto err_hints;
	/* Kernel KSM must not merge what we do (see below), not even through
	 * the switch for the whole process of Linux 6.4 (prctl
	 * PR_SET_MEMORY_MERGE; systemd's MemoryKSM=yes sets it before exec,
	 * and it outlives exec), which ignores the advice. Last, after what
	 * may fail: a start that fails leaves it as it was. */
	if (syscall(SYS_prctl, PR_GET_MEMORY_MERGE, 0L, 0L, 0L, 0L) == 1) {
		if (syscall(SYS_prctl, PR_SET_MEMORY_MERGE, 0L, 0L, 0L, 0L) != 0) {
			err = -errno;
			md__log("kernel KSM merges this whole process (prctl PR_SET_MEMORY_MERGE, systemd's "
				"MemoryKSM=) and it cannot be turned off (%s)", strerror(errno));
			goto err_scanner;
		}
		a->merge_any_wanted = 1;
		md__log("content scanning is on: kernel KSM's merging of the whole process "
			"(prctl PR_SET_MEMORY_MERGE, systemd's MemoryKSM=) is turned off");
	}
	e->agent_file = image_file;
	e->agent_file_arg = a;
	a->engine = e;
	a->scanner.batch = o->pages_to_scan ? o->pages_to_scan : 100;
	a->scanner.sleep_ms = o->sleep_ms ? o->sleep_ms : 20;
	a->scanner.cpu_percent = o->cpu_percent ? o->cpu_percent : 100;
	/* In range: md_agent_new checked it. */
	a->scanner.ratio = o->flags & MD_OPT_NO_HINTS ? 0 : o->hint_ratio ? o->hint_ratio : 4;
	a->scanner.random_order = (o->flags & MD_OPT_SCAN_RANDOM) != 0;
	/* The engine is the content scanner: kernel KSM must not merge the
	 * same pages, as its replace of a page we froze would drop the
	 * write-protection between our compare and our mapping. */
	if (a->kernel_ksm) {
		a->kernel_ksm = 0;
		md__log("content scanning is on: MADV_MERGEABLE is not passed on to kernel KSM");
	}
	/* Without read-time sharing no image page is mapped to merge onto. */
	if (!(o->flags & MD_OPT_NO_SHARING) && md__imagepages_new(&a->imgpages) != 0)
		md__log("no index of image pages (out of memory): copies of them merge through the pool");

	/* The pool: memdedupd's for a shared domain, else our own. */
	const char *domain = o->domain ? o->domain : "";
	if (strcmp(domain, "private") != 0) {
		struct md__remote *rm = calloc(1, sizeof(*rm));
		err = rm ? md__remote_init(rm, o->daemon_socket, domain) : -ENOMEM;
		if (err) {
			free(rm);
			md__log("%s sharing domain '%s' (%s): merging within this process only",
				err == -EINVAL ? "invalid" : "no daemon socket for", domain, strerror(-err));
			return;
		}
		e->remote = rm;
		/* Only whether a daemon is there: its HELLO, a round trip
		 * (up to the reply deadline if it is stalled), is the agent
		 * thread's, which connects at once (md__scan_daemon). This
		 * runs on a VMM thread, in md_agent_new (under preload's agent_lock). */
		err = md__daemon_probe(rm->socket);
		int none = err == -ENOENT || err == -ECONNREFUSED || err == -EACCES || err == -EPERM;
		if (none && !*domain) {
			/* No daemon, and no domain asked for: stay private.
			 * One that is there but slow to answer, or full, is
			 * waited for, as for a domain asked for: private for
			 * good, the process would never share. */
			md__remote_fini(rm);
			free(rm);
			e->remote = NULL;
			md__log("memdedupd not reachable (%s): merging within this process only",
				strerror(-err));
		} else if (err) {
			md__log("memdedupd not reachable (%s): %s%s%s waits for it", strerror(-err),
				*domain ? "domain '" : "the default domain", domain, *domain ? "'" : "");
		} else {
			/* Until its welcome: memdedupd may be paused, and its
			 * rates are the ones to scan at. */
			a->scanner.paused = 1;
			a->welcome_due = 1;
		}
	}
	return;

err_scanner:
	md__scanner_free(&a->scanner);
err_hints:
	md__hints_free(&a->hints);
err_fini:
	md__engine_fini(e);
err_free:
	free(e);
	md__log("content scanning is off: %s%s", strerror(-err), md__uffd_hint(err));
}

int md__scan_register(struct md_agent *a, uintptr_t start, size_t len, unsigned advice)
{
	if (!a->engine)
		return 0;
	int err = md__engine_register(a->engine, (void *)start, len, advice);
	if (err) {
		md__log_once(60, "cannot scan guest RAM at %#lx (%s)", (unsigned long)start, strerror(-err));
		return err;
	}
	if (a->scanner_started)
		return 0;
	/* Set up in md__scan_init, not here: setting it up again lost a
	 * pause or tunable memdedupd had sent meanwhile (the agent's thread
	 * sets them without a->lock). */
	md__imagepages_attach(a);
	/* The rates count from here: the first merges come before the
	 * agent's first pass. */
	clock_gettime(CLOCK_MONOTONIC, &a->rate_at);
	a->break_at = a->rate_at;
	if (md__scanner_start(&a->scanner) == 0)
		a->scanner_started = 1;
	return 0;
}

/* Whether the scanner stays paused whatever memdedupd says: the VMM
 * paused it (md_agent_pause), it unmerged until resumed, or an unmerge
 * runs (a welcome between its parts resumed the scanner, which merged all
 * again once the unmerge let it run). (pause_lock held) */
static int kept_paused(const md_agent *a)
{
	return __atomic_load_n(&a->paused_here, __ATOMIC_RELAXED) ||
	       __atomic_load_n(&a->unmerged, __ATOMIC_RELAXED) || a->unmerging;
}

#define PAUSE_KEEP 1		/* paused too while one is kept (kept_paused) */
#define PAUSE_CLEAR_HERE 2	/* a resume that lifts the VMM's own pause too */

/* The scanner's state as it is now, whoever paused it (memdedupd knows
 * only its own requests, not the VMM's pause, an unmerge that failed part
 * of the way, or one from before it restarted), for `memdedup status`. */
static void publish_state(md_agent *a)
{
	uint64_t st = MD_SCAN_STATE_NONE;
	if (a->engine)
		st = __atomic_load_n(&a->io_unseen, __ATOMIC_SEQ_CST) ? MD_SCAN_STATE_STOPPED :
		     !__atomic_load_n(&a->scanner.paused, __ATOMIC_SEQ_CST) ? MD_SCAN_STATE_SCANNING :
		     __atomic_load_n(&a->unmerged, __ATOMIC_RELAXED) ? MD_SCAN_STATE_UNMERGED :
		     MD_SCAN_STATE_PAUSED;
	md__set(a, MD_CTR_SCAN_STATE, st);
}

static int pause_store(md_agent *a, int paused, int flags);

/* pause_store, then what `memdedup status` shows of it. */
static int pause_set_kept(md_agent *a, int paused, int flags)
{
	int err = pause_store(a, paused, flags);
	if (a && a->engine)
		publish_state(a);
	return err;
}

/* The scanner's pause, as the daemon says (its PAUSE and RESUME, and
 * its welcome) or the VMM (md_agent_pause). With PAUSE_KEEP, also while
 * one is kept (kept_paused), as seen under the lock md_agent_pause notes
 * the VMM's in: a welcome read it before the VMM's pause, and resumed the
 * scanner after it. What a resume clears is cleared under that lock too:
 * cleared after it, an unmerge's or the VMM's pause made meanwhile was
 * lost, and the next welcome resumed the scanner. */
static int pause_store(md_agent *a, int paused, int flags)
{
	if (!a || !a->engine)
		return -EINVAL;
	pthread_mutex_lock(&a->pause_lock);
	int asked = paused;
	paused |= (flags & PAUSE_KEEP) && kept_paused(a);
	/* Nothing could be merged: resuming would only spend CPU. */
	if (!paused && __atomic_load_n(&a->io_unseen, __ATOMIC_SEQ_CST)) {
		pthread_mutex_unlock(&a->pause_lock);
		return -EPERM;
	}
	a->pause_gen++;
	__atomic_store_n(&a->scanner.paused, paused ? 1 : 0, __ATOMIC_SEQ_CST);
	if ((flags & PAUSE_KEEP) && a->unmerging) {
		a->unmerge_wanted = asked;	/* for the unmerge's end, if refused */
		a->unmerge_wanted_gen = a->pause_gen;
	}
	if (!paused) {
		__atomic_store_n(&a->unmerged, 0, __ATOMIC_RELAXED);
		if (flags & PAUSE_CLEAR_HERE)
			__atomic_store_n(&a->paused_here, 0, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&a->pause_lock);
	/* md_agent_io_unseen may have paused it between the check and the
	 * store: its pause wins. */
	if (!paused && __atomic_load_n(&a->io_unseen, __ATOMIC_SEQ_CST)) {
		__atomic_store_n(&a->scanner.paused, 1, __ATOMIC_SEQ_CST);
		return -EPERM;
	}
	/* The set rate again, at once: an idle sleep lasts a second at a
	 * time, and only a poke ends it early. */
	md__scanner_poke(&a->scanner);
	return 0;
}

static int pause_set(md_agent *a, int paused)
{
	return pause_set_kept(a, paused, 0);
}

/* A pause is answered once no merge is under way: the scanner's step
 * ends after its visit (it went on through its whole batch, up to 100,000
 * pages). Bounded: a step may wait for memdedupd's reply, or for a lock
 * the caller holds. */
#define PAUSE_WAIT_MS 2000

static void pause_wait(md_agent *a)
{
	if (md__scanner_wait_step(&a->scanner, PAUSE_WAIT_MS) != 0)
		md__log_once(190, "a pause was answered before the scanner's step ended (%u ms waited): "
			     "the merges of that step's last visit may follow it", PAUSE_WAIT_MS);
}

int md_agent_pause(md_agent *a, int paused)
{
	MD_NOCANCEL_SCOPE();
	if (!a || !a->engine)
		return -EINVAL;
	/* Noted first, so that a welcome that comes later does not undo it
	 * (pause_set_kept reads it under the same lock). */
	pthread_mutex_lock(&a->pause_lock);
	int was = __atomic_exchange_n(&a->paused_here, paused != 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&a->pause_lock);
	int err = pause_set(a, paused);
	if (err)
		__atomic_store_n(&a->paused_here, was, __ATOMIC_RELAXED);
	else if (paused)
		pause_wait(a);
	return err;
}

unsigned md__io_unseen_delay_us, md__io_unseen_slept, md__pool_copies_let_in;	/* tests only: see agent_internal.h */

#define COPY_SLOTS_ONLY 1	/* only pages with a slot (copy_pool_runs) */
#define COPY_GO_ON 2		/* past a run whose copy failed */
static int copy_pool_runs(struct md__engine *e, struct md__eregion *r, size_t *from, size_t *budget,
			  unsigned flags);

/* Pages an unmerge goes through with the locks held, each copied counting
 * 9 (a look and a copy): about 1,800 copies, a few milliseconds, after
 * which the VMM's calls waiting get in. */
#define UNMERGE_PART_PAGES 16384
static struct md__eregion *region_from(struct md__engine *e, uintptr_t at);

/* Copies every page of e mapped from a pool (its slot or not), the
 * agent's and engine's locks held, in parts with the locks let go between
 * them: the VMM's reads, its guests' write faults and lease breaks
 * (answered under the agent's lock) wait for a part, not for every copy,
 * seconds of a large guest (a lease break could pass lease-break-time).
 * Nothing merges meanwhile (the caller stopped it), so only the VMM's own
 * changes come between: guest RAM unmapped (its pages gone with it),
 * mapped (nothing of a pool in it) or moved below the cursor, which a last
 * pass over every region, the locks held all along, finds by its slots.
 * Stops at the first copy that fails unless flags has COPY_GO_ON. 0 or
 * a negative errno (the first). */
static int copy_pool_pages(md_agent *a, struct md__engine *e, unsigned flags)
{
	int err = 0, go_on = (flags & COPY_GO_ON) != 0;
	uintptr_t at = 0;
	struct md__eregion *r;
	for (;;) {
		size_t budget = UNMERGE_PART_PAGES;
		while ((go_on || !err) && budget && (r = region_from(e, at))) {
			size_t from = at > r->start ? (at - r->start) / MD_EPAGE : 0;
			int e2 = copy_pool_runs(e, r, &from, &budget, flags);
			err = err ? err : e2;
			at = r->start + from * MD_EPAGE;
		}
		if ((err && !go_on) || budget)
			break;
		md__engine_unlock(e);
		pthread_rwlock_unlock(&e->regions_lock);
		md__agent_let_in(a);
		__atomic_add_fetch(&md__pool_copies_let_in, 1, __ATOMIC_RELAXED);
		pthread_rwlock_wrlock(&e->regions_lock);
		pthread_mutex_lock(&e->lock);
	}
	for (size_t i = 0; i < e->nregions && (go_on || !err); i++) {
		size_t from = 0, budget = SIZE_MAX;
		int e2 = copy_pool_runs(e, &e->regions[i], &from, &budget, flags | COPY_SLOTS_ONLY);
		err = err ? err : e2;
	}
	return err;
}

void md_agent_io_unseen(md_agent *a, const char *what)
{
	MD_NOCANCEL_SCOPE();
	/* Called on every submit of io_uring reads: once is enough, once
	 * done. The flags only go from 0 to 1, under the lock: a second
	 * caller that found io_unseen set while the first was still at work
	 * went on to submit, and its transfer could pin a page a merge then
	 * replaced, or an image's page not made private yet. */
	if (!a || __atomic_load_n(&a->io_unseen_done, __ATOMIC_ACQUIRE))
		return;
	/* On the VMM's thread, in a call that may succeed: its errno stays
	 * as found, whatever our copies and logs meet. */
	int saved = errno;
	/* One caller does the work, the others wait for its end here: the
	 * agent's lock is let go between its parts of copies. */
	pthread_mutex_lock(&a->io_unseen_lock);
	if (__atomic_load_n(&a->io_unseen_done, __ATOMIC_ACQUIRE)) {
		pthread_mutex_unlock(&a->io_unseen_lock);
		errno = saved;
		return;
	}
	/* Under the lock: a read mapping image pages over guest RAM is done
	 * before we return (and so before the device pins what it will use),
	 * and none maps after. */
	md__agent_enter(a);
	int before = __atomic_load_n(&a->io_unseen, __ATOMIC_SEQ_CST);
	struct md__engine *e = before ? NULL : a->engine;
	if (e) {
		/* Merges stop first: none starts once the flag is seen. */
		md__inflight_block(&e->io);
		__atomic_store_n(&a->scanner.paused, 1, __ATOMIC_SEQ_CST);
	}
	__atomic_store_n(&a->io_unseen, 1, __ATOMIC_SEQ_CST);
	/* Every page shared goes private before the call that brought us
	 * here, as an unmerge makes them, on the VMM's thread, once (the
	 * copies take as long as an unmerge's). A pool's page: a read-only
	 * long-term pin (an RDMA registration without write access, a DMA
	 * map a device only reads) may take the page mapped, and the guest's
	 * next write then goes to a copy the device never reads (before
	 * Linux 6.2, which copies a private file mapping's page itself before
	 * such a pin: gup_must_unshare). An image's
	 * page: such a pin, or an O_DIRECT write through io_uring, would hold
	 * it, and a lease break could not wait for it. Zero pages stay
	 * dropped: the kernel makes its own zero page the process's before it
	 * pins it, in the anonymous memory the engine drops them into. The
	 * engine's locks wait for a merge under way (a merge that passed its
	 * look at the reads in flight before the block). Not made when
	 * memory is short (as an unmerge refuses). */
	if (e) {
		pthread_rwlock_wrlock(&e->regions_lock);
		pthread_mutex_lock(&e->lock);
	}
	uint64_t owned = before ? 0 : md__owned_unwritten_pages(a), pooled = e ? md__engine_shared_pages(e) : 0;
	/* The image pages' copies first (a lease break cannot wait for a pin
	 * of one), then the pool's with what is left. */
	uint64_t room = owned || pooled ? md__memroom_available(&a->memroom) : 0;
	int images_short = owned && owned * MD_PAGE + (64u << 20) > room;
	int pool_short = pooled && ((images_short ? 0 : owned) + pooled) * MD_PAGE + (64u << 20) > room;
	int short_of_memory = images_short || pool_short;
	uint64_t left = (images_short ? owned : 0) + (pool_short ? pooled : 0);
	/* Each page left is one a device may read after the guest wrote
	 * it: all that can be copied is. */
	int err = pooled && !pool_short ? copy_pool_pages(a, e, COPY_GO_ON) : 0;
	if (e) {
		md__engine_unlock(e);
		pthread_rwlock_unlock(&e->regions_lock);
	}
	/* The image pages' copies failing (memory gone since the look, an
	 * I/O error reading the image) leave pages shared as memory short
	 * does: counted, and said. */
	int img_err = owned && !images_short ? md__privatize(a, 0, UINTPTR_MAX, 0) : 0;
	if (img_err) {
		uint64_t still = md__owned_unwritten_pages(a);
		left += still ? still : 1;
		err = err ? err : img_err;
	}
	if (short_of_memory || err)
		__atomic_store_n(&a->io_unseen_left, short_of_memory || img_err ? left : 1, __ATOMIC_RELAXED);
	if (!before && __atomic_load_n(&md__io_unseen_delay_us, __ATOMIC_RELAXED)) {
		usleep(md__io_unseen_delay_us);
		__atomic_add_fetch(&md__io_unseen_slept, 1, __ATOMIC_RELAXED);
	}
	__atomic_store_n(&a->io_unseen_done, 1, __ATOMIC_RELEASE);
	md__agent_leave(a);
	pthread_mutex_unlock(&a->io_unseen_lock);
	/* The pool's slots copied go back from the agent's thread
	 * (md__scan_daemon, within a second): on the VMM's thread here (its
	 * io_setup, a VFIO set-up), a stopped memdedupd held it 2 s. */
	if (short_of_memory)
		md__log_once(180, "NOT ENOUGH MEMORY to make the %llu pages shared (merged, or shared with "
			     "images) private as the VMM began I/O the agent does not see: a device or adapter "
			     "that pins guest RAM read-only may send stale content of those pages once the "
			     "guest writes them (counted in merge_fallbacks)", (unsigned long long)left);
	if (err)
		md__log_once(181, "making merged pages, or pages shared with images, private as the VMM began "
			     "I/O the agent does not see failed (%s): a device or adapter that pins guest RAM "
			     "read-only may send stale content of some (counted in merge_fallbacks)",
			     strerror(-err));
	if (!before) {
		md__set(a, MD_CTR_IO_UNSEEN, 1);
		publish_state(a);
		md__log("the VMM %s, I/O the agent does not see: reads into guest RAM are copied%s from now on "
			"(QEMU keeps sharing with aio=threads and no assigned devices)",
			what ? what : "writes guest RAM", a->engine ? " and content scanning stops merging" : "");
	}
	errno = saved;
}

/* The MD_SET_* bit of a tunable's name, 0 if none. */
static unsigned tunable_bit(const char *key)
{
	static const struct { const char *key; unsigned bit; } bits[] = {
		{ "pages_to_scan", MD_SET_PAGES }, { "sleep_millisecs", MD_SET_SLEEP },
		{ "cpu_percent", MD_SET_CPU }, { "hint_ratio", MD_SET_HINTS }, { "order", MD_SET_ORDER },
	};
	for (size_t i = 0; key && i < sizeof(bits) / sizeof(bits[0]); i++)
		if (strcmp(key, bits[i].key) == 0)
			return bits[i].bit;
	return 0;
}

/* Sets a tunable: the MD_SET_* bit it is, or -EINVAL. */
static int tunable_set(md_agent *a, const char *key, const char *value)
{
	unsigned v, bit;
	if (!a || !key || !value || !a->engine)
		return -EINVAL;
	struct md__scanner *s = &a->scanner;
	if (strcmp(key, "pages_to_scan") == 0) {
		if (md__parse_uint(value, 1, MD_PAGES_TO_SCAN_MAX, &v))
			return -EINVAL;
		__atomic_store_n(&s->batch, (size_t)v, __ATOMIC_RELAXED);
		bit = MD_SET_PAGES;
	} else if (strcmp(key, "sleep_millisecs") == 0) {
		if (md__parse_uint(value, 0, MD_SLEEP_MS_MAX, &v))
			return -EINVAL;
		__atomic_store_n(&s->sleep_ms, v, __ATOMIC_RELAXED);
		bit = MD_SET_SLEEP;
	} else if (strcmp(key, "cpu_percent") == 0) {
		if (md__parse_uint(value, 1, MD_CPU_PERCENT_MAX, &v))
			return -EINVAL;
		__atomic_store_n(&s->cpu_percent, v, __ATOMIC_RELAXED);
		bit = MD_SET_CPU;
	} else if (strcmp(key, "hint_ratio") == 0) {
		/* Hinted visits of every 8; 0: no hints at all. */
		if (md__parse_uint(value, 0, MD_HINT_RATIO_MAX, &v))
			return -EINVAL;
		__atomic_store_n(&s->ratio, v, __ATOMIC_RELAXED);
		bit = MD_SET_HINTS;
	} else if (strcmp(key, "order") == 0) {
		/* Any case, as MEMDEDUP_SCAN_ORDER and the CLI take it. */
		if (strcasecmp(value, "linear") != 0 && strcasecmp(value, "random") != 0)
			return -EINVAL;
		__atomic_store_n(&s->random_order, strcasecmp(value, "random") == 0, __ATOMIC_RELAXED);
		bit = MD_SET_ORDER;
	} else {
		return -EINVAL;
	}
	return (int)bit;
}

int md_agent_set(md_agent *a, const char *key, const char *value)
{
	MD_NOCANCEL_SCOPE();
	if (!a)
		return -EINVAL;
	/* The VMM's own value, as from our options: the daemon's welcome
	 * (it may come later, or again after a reconnect) leaves it. With
	 * its bit, under the lock the daemon's values are set under: one of
	 * those checking the bit before, writing after, undid it. */
	pthread_mutex_lock(&a->tunables_lock);
	int bit = tunable_set(a, key, value);
	if (bit >= 0)
		__atomic_or_fetch(&a->scan_explicit, (unsigned)bit, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&a->tunables_lock);
	return bit < 0 ? bit : 0;
}

/* The region of guest RAM holding address at, else the lowest above it
 * (the engine's are not in address order); NULL if none. */
static struct md__eregion *region_from(struct md__engine *e, uintptr_t at)
{
	struct md__eregion *best = NULL;
	for (size_t i = 0; i < e->nregions; i++)
		if (e->regions[i].end > at && (!best || e->regions[i].start < best->start))
			best = &e->regions[i];
	return best;
}

int md__copy_fail;			/* tests only: see agent_internal.h */
unsigned md__copy_fail_after;

static int copy_run(struct md__engine *e, uintptr_t addr, size_t len)
{
	if (md__copy_fail && md__copy_fail_after-- == 0) {
		md__copy_fail_after = 0;
		return -md__copy_fail;
	}
	/* No merge runs (the engine's lock is held), so no page is frozen on
	 * purpose; one a failed thaw left protected would make the copy wait
	 * for the fault thread, which waits for that lock. Lifting it is what
	 * the fault thread would do (and a no-op where none is left). */
	md__uffd_wp(&e->uffd, addr, len, 0);
	/* A write fault on a private pool page copies it; a page the guest
	 * wrote since is private already and left alone. */
	return md__sys_madvise((void *)addr, len, MADV_POPULATE_WRITE) == 0 ? 0 : -errno;
}

/* Copies (copy_run) the runs of pages of r from page *from on that map a
 * pool page: with a slot, or, unless slots_only, without since memdedupd
 * went (MD_REF_FILE alone: maybe still the old pool's page; a private one
 * is left alone), and gives back the slots of the pages copied. Each page
 * looked at spends one of *budget, each copied 9 (a copy costs more than a
 * look); stops once it is spent, after a run (cut to what is left), with
 * *from the page after it (the region's end when done). A copy that fails
 * stops it there, *from at that run (memory short: more copies would only
 * make it shorter), unless COPY_GO_ON; the runs before it are given back. */
static int copy_pool_runs(struct md__engine *e, struct md__eregion *r, size_t *from, size_t *budget,
			  unsigned flags)
{
	size_t np = (r->end - r->start) / MD_EPAGE, p0 = *from, p = p0, failed_at = SIZE_MAX, nv = SIZE_MAX;
	struct md__file_map *v = NULL;
	int err = 0;
	/* The VMM's own file's pages (share=off) are no pool's: left as the
	 * VMM's, as a copy would stop them showing the file's changes. */
#define POOL_PAGE(q) (MD_REF_SLOT(r->ref[q]) || (!(flags & COPY_SLOTS_ONLY) && r->ref[q] == MD_REF_FILE && \
						 !md__engine_vmm_file_at(e, r, q, &v, &nv)))
	while (p < np && *budget) {
		size_t q = p, cap = *budget / 9 ? *budget / 9 : 1;
		while (q < np && q - p < cap && POOL_PAGE(q))
			q++;
		if (q == p) {
			p++;
			*budget -= 1;
			continue;
		}
		int e2 = copy_run(e, r->start + p * MD_EPAGE, (q - p) * MD_EPAGE);
		if (e2 && !err) {
			err = e2;
			failed_at = p;
		}
		if (e2 && !(flags & COPY_GO_ON))
			break;
		*budget -= *budget > 9 * (q - p) ? 9 * (q - p) : *budget;
		p = q;
	}
#undef POOL_PAGE
	free(v);
	*from = p;
	/* From the run that failed on, which pages were copied is not known:
	 * the reap finds them written, and gives their slots back. */
	for (p = p0; p < *from && p < failed_at; p++) {
		if (MD_REF_SLOT(r->ref[p])) {
			md__engine_release_ref(e, r, p);
			r->ref[p] = MD_REF_FILE;	/* private now, in a pool mapping */
			if (r->seen[p])
				r->seen[p] = MD_SEEN;	/* young again, as a reap's written page */
		}
	}
	return err;
}

static int forked_region(void *a, uintptr_t start, uintptr_t end)
{
	return md__regions_forked(a, start, end);
}

int md__scan_fork_prepare(struct md_agent *a, const struct timespec *until, const char **why)
{
	struct md__engine *e = a->engine;
	if (!e)
		return 0;
	if (pthread_mutex_timedlock(&e->lock, until) != 0) {
		*why = "the scanner's merge lock stayed taken for a second";
		return 0;
	}
	/* The merge lock keeps the regions as they are (a change takes it
	 * too), and no page frozen by a merge: copy_run's write faults need
	 * no fault thread. */
	/* Which regions a fork copies, as the agent's records say (they know
	 * of a MADV_DOFORK over part of one). */
	/* Pages written since their merge are private already: no copy. */
	uint64_t pages = md__engine_shared_pages_in(e, forked_region, a, 1);
	if (!pages)
		return 1;
	if (!md__room_for_copies(a, pages)) {
		*why = "memory short for the copies";
		return 1;
	}
	/* The slots are not given back here: that may allocate (the queue of
	 * UNREFs), and an allocator's own prepare handler may hold its locks
	 * already. The pages are private now, as written by the guest: the
	 * reap finds them and gives their slots back, and the scanner may
	 * merge them again. Only what a pool maps is copied: a page in the
	 * VMM's own private file mapping (MD_REF_FILE alone) stays its file's,
	 * as a page written since its merge is already ours. */
	int err = 0;
	for (size_t i = 0; i < e->nregions; i++) {
		const struct md__eregion *r = &e->regions[i];
		size_t np = (r->end - r->start) / MD_EPAGE;
		if (!md__regions_forked(a, r->start, r->end))
			continue;
		for (size_t p = 0; p < np;) {
			if (!MD_REF_SLOT(r->ref[p])) {
				p++;
				continue;
			}
			size_t q = p;
			while (q < np && MD_REF_SLOT(r->ref[q]))
				q++;
			int e2 = copy_run(e, r->start + p * MD_EPAGE, (q - p) * MD_EPAGE);
			err = err ? err : e2;
			p = q;
		}
	}
	if (err)
		*why = "a copy of a pool page failed";
	return 1;
}

void md__scan_fork_done(struct md_agent *a)
{
	/* Nothing was queued to give back (above), nor by anyone (the queue
	 * is empty after every unlock): unlocked plainly, no allocation. */
	pthread_mutex_unlock(&a->engine->lock);
}

void (*md__part_hook)(struct md_agent *a);	/* tests only: see agent_internal.h */


/* md_agent_unmerge, and why it refused, for people (why may be NULL).
 * Every page shared goes: pool pages, and image pages (shared at read time
 * or merged onto the image by the scanner). Zero pages stay dropped: they
 * read as the zeroes the guest wrote, and a copy would only cost memory. */
static int unmerge_locked(md_agent *a, char *why, size_t size, int by, int *part);

/* Who asks an unmerge: the VMM (md_agent_unmerge), memdedupd (a->unmerged's
 * value for it), or the agent's thread when the VMM's user changed: that
 * one gives back the pool's pages alone (domains are per user; an image's
 * pages are the file's, which the new user reads as well) and leaves the
 * scanner paused for the caller to resume. */
enum { UNMERGE_VMM = 1, UNMERGE_DAEMON = 2, UNMERGE_USER = 3 };

/* One unmerge at a time: each stops and starts the scanner's thread, and two
 * (the VMM's and memdedupd's, on the agent's thread) joined one thread twice
 * and freed it twice. Those of the agent's thread wait for none:
 * it also answers lease breaks. */
/* part, if not NULL: set when the copies failed part of the way (the
 * agent stays unmerged, paused), not refused up front. */
static int unmerge(md_agent *a, char *why, size_t size, int by, int *part)
{
	if (!a || !a->engine)
		return -EINVAL;
	if (by == UNMERGE_VMM)
		pthread_mutex_lock(&a->unmerge_lock);
	else if (pthread_mutex_trylock(&a->unmerge_lock) != 0) {
		if (why)
			snprintf(why, size, "an unmerge is already running in this process");
		return -EBUSY;
	}
	int part_done = 0;
	int err = unmerge_locked(a, why, size, by, &part_done);
	pthread_mutex_unlock(&a->unmerge_lock);
	if (part)
		*part = part_done;
	/* What is shared now, counted before the answer: `memdedup status`
	 * right after it showed the pages shared before for up to a minute
	 * (the walks of a quiet process wait for pages to move). */
	if (by != UNMERGE_USER) {
		md__account(a, 0);
		md__scan_account(a, 1);
	}
	return err;
}

static int unmerge_locked(md_agent *a, char *why, size_t size, int by, int *part)
{
	struct md__engine *e = a->engine;
	/* Paused first: a first registration on another thread may start
	 * the scanner's thread after the look below, and it then merged
	 * between the copies and the pause. */
	pthread_mutex_lock(&a->pause_lock);
	unsigned gen = a->pause_gen;
	int was_paused = __atomic_exchange_n(&a->scanner.paused, 1, __ATOMIC_SEQ_CST);
	a->unmerging = 1;	/* one at a time: unmerge_lock */
	a->unmerge_wanted = -1;
	pthread_mutex_unlock(&a->pause_lock);
	md__scanner_stop(&a->scanner);	/* no merge may start meanwhile */
	/* agent->lock first (the lock order): no read maps an image page
	 * until the image pages are private. */
	md__agent_enter(a);
	pthread_rwlock_wrlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	uint64_t pages = (by == UNMERGE_USER ? 0 : md__owned_unwritten_pages(a)) + md__engine_shared_pages(e);
	/* Copies need memory: refuse, changing nothing, when the host lacks
	 * it (with a margin of 64 MiB for everything else). */
	int err = 0, refused = 0;
	uint64_t avail = pages ? md__memroom_available(&a->memroom) : 0;
	if (pages && pages * MD_EPAGE + (64u << 20) > avail) {
		err = -ENOMEM;
		refused = 1;
		if (why)
			snprintf(why, size, "not enough memory for the copies: %llu MiB to copy, %llu MiB "
				 "available (64 MiB kept spare); nothing changed",
				 (unsigned long long)(pages * MD_EPAGE >> 20), (unsigned long long)(avail >> 20));
		md__log("unmerge refused: %llu pages to copy, not enough memory available (%llu MiB)",
			(unsigned long long)pages, (unsigned long long)(avail >> 20));
		goto unlock;
	}
	err = copy_pool_pages(a, e, 0);
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	/* Outside the engine's locks: a write to a page a merge left
	 * protected waits for the fault thread, which takes them. The image
	 * pages become private copies in the image's mapping, as after a
	 * lease break: no userfaultfd can protect a mapping of a disk file,
	 * so they stay out of the scanner's merges from now on. */
	/* In parts too, the agent's lock let go between them; a page a read
	 * maps meanwhile below the cursor stays shared, as one mapped after
	 * the unmerge would. A part that failed does not stop the rest: the
	 * first failure is said. */
	if (!err && by != UNMERGE_USER) {
		for (uintptr_t at = 0; at != UINTPTR_MAX;) {
			int part_err = md__privatize_from(a, &at, UINTPTR_MAX, 0, md__privatize_part_pages);
			err = err ? err : part_err;
			if (at != UINTPTR_MAX)
				md__agent_let_in(a);
		}
	}
	md__agent_leave(a);
	goto paused;
unlock:
	md__engine_unlock(e);
	pthread_rwlock_unlock(&e->regions_lock);
	md__agent_leave(a);
paused:
	md__engine_send_unrefs(e);	/* so the daemon frees what nobody maps, before we answer */
	/* Paused, like KSM after run=2, until resumed (also when the copies
	 * failed part of the way: the pages copied would merge again at
	 * once); refused up front, as it was. */
	if (refused) {
		/* As it was, unless someone paused or resumed it meanwhile
		 * (memdedupd's PAUSE, applied by the agent's thread during a
		 * VMM's unmerge, found it paused already and was undone), or a
		 * reason to stay paused came (the VMM's pause, unseen I/O). */
		int one = 1;
		pthread_mutex_lock(&a->pause_lock);
		a->unmerging = 0;
		if (a->pause_gen == gen)
			__atomic_compare_exchange_n(&a->scanner.paused, &one, was_paused, 0,
						    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		else if (a->unmerge_wanted >= 0 && a->pause_gen == a->unmerge_wanted_gen)
			/* A welcome, the last to say, kept paused only for us. */
			__atomic_store_n(&a->scanner.paused, a->unmerge_wanted, __ATOMIC_SEQ_CST);
		int keep = kept_paused(a);
		pthread_mutex_unlock(&a->pause_lock);
		if (keep || __atomic_load_n(&a->io_unseen, __ATOMIC_SEQ_CST))
			__atomic_store_n(&a->scanner.paused, 1, __ATOMIC_SEQ_CST);
		/* Resumed: a paused scanner waits to be woken, not a clock. */
		md__scanner_poke(&a->scanner);
	} else {
		/* 2 if memdedupd asked (it will say when resumed), and it
		 * went, all of it or the copies failing part of the way (it
		 * then records the agent unmerged too: MD_CTL_PART_DONE).
		 * Paused again with it, under the lock: a
		 * resume between the parts (a welcome's says its daemon's
		 * state) is the unmerge's to end. A change of user's pause is
		 * user_changed's. */
		pthread_mutex_lock(&a->pause_lock);
		a->unmerging = 0;
		if (by != UNMERGE_USER) {
			__atomic_store_n(&a->unmerged, by == UNMERGE_DAEMON ? 2 : 1, __ATOMIC_RELAXED);
			a->pause_gen++;
			__atomic_store_n(&a->scanner.paused, 1, __ATOMIC_SEQ_CST);
		}
		pthread_mutex_unlock(&a->pause_lock);
	}
	/* Under agent->lock, as md__scan_register starts it: a first
	 * registration may have started the thread while we stopped it,
	 * and nothing else would start it again. */
	md__agent_enter(a);
	if (a->scanner_started && !__atomic_load_n(&a->scanner.running, __ATOMIC_SEQ_CST) &&
	    md__scanner_start(&a->scanner) != 0)
		a->scanner_started = 0;
	md__agent_leave(a);
	*part = err && !refused;
	if (err && why && !*why)
		snprintf(why, size, refused ? "%s" : "copies failed part of the way (%s): those made stay "
			 "private, the rest stay merged; paused until resumed", strerror(-err));
	return err;
}

int md_agent_unmerge(md_agent *a)
{
	MD_NOCANCEL_SCOPE();	/* unmerge_lock across a join, account_lock across opens */
	return unmerge(a, NULL, 0, UNMERGE_VMM, NULL);
}

/* Pages moved off an old pool a second: 16 MiB, a GiB's pool in a minute
 * or so, a few milliseconds of copies and mappings. */
#define LEAVE_PER_SECOND 4096u

void md__scan_leave_old_pool(struct md_agent *a)
{
	struct md__engine *e = a->engine;
	/* Not while paused (an unmerge's, the VMM's, unseen I/O's: a page
	 * replaced then could lose a write the agent does not see). */
	if (!e || !__atomic_load_n(&e->leave_old, __ATOMIC_RELAXED) ||
	    __atomic_load_n(&a->scanner.paused, __ATOMIC_RELAXED))
		return;
	/* Pages the guest wrote go at once; a page still reading the old
	 * pool is a copy more until every process left it: those only when
	 * there is room for all that the last pass found (not counted yet:
	 * none), with 64 MiB to spare, as an unmerge asks. */
	uint64_t left = e->leave_last_unwritten;
	int copy = left != UINT64_MAX &&
		   left * MD_PAGE + (64u << 20) <= md__memroom_available(&a->memroom);
	if (left != UINT64_MAX && left && !copy) {
		md__log_once(113, "pages still reading memdedupd's old pool stay there while memory is "
			     "short (%llu pages): that pool's memory stays in use", (unsigned long long)left);
		/* Passes that can only count them: one every 30 s. */
		if (e->leave_at == 0 && a->leave_waited++ % 30)
			return;
	}
	if (md__engine_leave_file(e, LEAVE_PER_SECOND, copy))
		md__log_once(114, "moving pages off a pool memdedupd no longer serves this agent (it "
			     "restarted, or the VMM's user changed): the scanner merges them in the new one");
}

uint64_t md__scan_activity(struct md_agent *a)
{
	const struct md__scanner_stats *ss = &a->scanner.st;	/* racy reads: fine */
	return ss->merged_scan + ss->merged_hint + ss->merged_candidate + ss->zero + ss->published;
}

static double seconds_since(const struct timespec *then, const struct timespec *now)
{
	return (double)(now->tv_sec - then->tv_sec) + (double)(now->tv_nsec - then->tv_nsec) / 1e9;
}

int md__scan_account(struct md_agent *a, int reap)
{
	/* The agent's thread and md_agent_stats() both come here. */
	static pthread_mutex_t account_lock = PTHREAD_MUTEX_INITIALIZER;
	struct md__engine *e = a->engine;
	int reaped = 0;
	publish_state(a);
	if (!e || !a->scanner_started)
		return 0;
	pthread_mutex_lock(&account_lock);
	if (reap)
		reaped = md__engine_reap(e);
	/* Dozens of merged pages written (by the agent's thread's reap or
	 * md_agent_stats()'s): they merge again only when the cursor comes
	 * by, which an idle scanner took minutes to. */
	if (reaped >= 64)
		md__scanner_hold(&a->scanner);
	md__engine_trim(e);
	struct md__engine_stats st;
	md__engine_stats(e, &st);
	struct md__scanner_stats ss = a->scanner.st;	/* racy reads of counters: fine */
	/* The walk over every page's state, a few hundred microseconds per
	 * GiB, is done again only when merges changed it, or every 30 s
	 * (pages age without merges: pages_unshared may lag that much). Once
	 * converged, every second it was a third of the agent's CPU time,
	 * every 10 s still a tenth of all memdedup's. The VMM's unmaps,
	 * unregisters and discards of guest RAM change it too (zap_gen), or
	 * pages unmapped stayed counted as sharing until the next reap or
	 * the 30th pass (memdedup status, 16 s and more after the unmap). */
	uint64_t changed = md__scan_activity(a) + st.cow_broken + st.filled +
			   __atomic_load_n(&e->zap_gen, __ATOMIC_ACQUIRE) +
			   __atomic_load_n(&e->dropped_gen, __ATOMIC_ACQUIRE);
	if (reap || changed != a->walk_activity || ++a->walk_age >= 30) {
		uint64_t sharing = 0, unshared = 0, zero = 0, fill = 0;
		pthread_rwlock_rdlock(&e->regions_lock);
		pthread_mutex_lock(&e->lock);
		for (size_t i = 0; i < e->nregions; i++) {
			struct md__eregion *r = &e->regions[i];
			size_t np = (r->end - r->start) / MD_EPAGE;
			zero += md__engine_dropped_pages(r);
			for (size_t p = 0; p < np; p++) {
				sharing += MD_REF_SLOT(r->ref[p]) != 0;
				fill += MD_REF_SLOT(r->ref[p]) != 0 && (r->ref[p] & MD_REF_FILL);
				/* KSM's pages_unshared: found stable and unique,
				 * and there (not dropped as a zero page since). */
				unshared += !MD_REF_BUSY(r->ref[p]) && MD_SEEN_AGE(r->seen[p]) > 0 &&
					    !md__dropped(r, p);
			}
		}
		a->walk_meta = md__engine_meta_bytes(e);
		pthread_mutex_unlock(&e->lock);
		pthread_rwlock_unlock(&e->regions_lock);
		a->walk_sharing = sharing;
		a->walk_fill = fill;
		a->walk_unshared = unshared;
		a->walk_zero = zero;
		a->walk_activity = changed;
		a->walk_age = 0;
	}
	uint64_t sharing = a->walk_sharing, unshared = a->walk_unshared;
	uint64_t zero = a->walk_zero;
	/* Our own pool's pages: all of them without memdedupd, only the fill
	 * strips with it. What the domain's pool holds is memdedupd's to
	 * count (its status): our profit is then, like KSM's per process,
	 * what we merged, with no share of the pages other agents show too.
	 * (Counting the pages we published, as it was, counted every one
	 * ever published and never freed: the profit drifted down.) */
	uint64_t pool = md__pool_live(&e->pool);

	md__set(a, MD_CTR_PAGES_SCANNED, ss.scanned);
	md__set(a, MD_CTR_PAGES_HINTED, ss.hinted);
	/* Merges over at least the last half second (a pass is a second);
	 * breaks are found only by a reap, so over the time between reaps. */
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double dt = seconds_since(&a->rate_at, &now);
	if (dt >= 0.5) {
		md__set(a, MD_CTR_MERGE_RATE, (uint64_t)((double)(st.merged - a->rate_merged) / dt));
		a->rate_at = now;
		a->rate_merged = st.merged;
	}
	/* Not from reaps less than half a second apart: md_agent_stats()
	 * reaps too, as often as the VMM asks. */
	double rt = seconds_since(&a->break_at, &now);
	if (reap && rt >= 0.5) {
		md__set(a, MD_CTR_BREAK_RATE, (uint64_t)((double)(st.cow_broken - a->rate_broken) / rt + 0.5));
		a->break_at = now;
		a->rate_broken = st.cow_broken;
	}
	md__set(a, MD_CTR_MERGED, st.merged);
	md__set(a, MD_CTR_MERGED_FROM_HINTS, ss.merged_hint);
	md__set(a, MD_CTR_ZERO_PAGES, zero);
	md__set(a, MD_CTR_FILLED_PAGES, st.filled);
	md__set(a, MD_CTR_ZERO_NEAR_HINTS, ss.zero_swept);
	md__set(a, MD_CTR_HINT_RATIO, __atomic_load_n(&a->scanner.ratio, __ATOMIC_RELAXED));
	md__set(a, MD_CTR_PUBLISHED, ss.published);
	md__set(a, MD_CTR_VOLATILE, ss.volatile_skips);
	md__set(a, MD_CTR_ABANDONED, st.abandoned);
	md__set(a, MD_CTR_MERGE_FALLBACKS, st.map_failed + st.budget_refused + st.freeze_failed +
					       st.image_replaced + st.pool_replaced + ss.pool_full +
					       __atomic_load_n(&a->io_unseen_left, __ATOMIC_RELAXED));
	/* Each way a merge falls back, once: the pages stay as they were. */
	if (st.map_failed)
		md__log_once(117, "the kernel refused a mapping the scanner asked for (memory short, "
			     "or the map limit): those pages stay as they were (merge_fallbacks)");
	if (st.budget_refused)
		md__log_once(118, "merges wait: the mapping budget (vm.max_map_count less the VMM's "
			     "room) is spent; those pages stay as they were (merge_fallbacks)");
	if (st.image_replaced)
		md__log_once(131, "the VMM closed or replaced an image's descriptor, or the image's lease "
			     "was being broken, while the scanner merged pages onto it: those pages stay as "
			     "they were (merge_fallbacks)");
	if (ss.pool_full)
		md__log_once(182, "memdedupd's pool has no room (full, or this user's share of pools spent): "
			     "pages whose content is not in it yet are not merged until pages are freed "
			     "(merge_fallbacks)");
	if (st.freeze_failed)
		md__log_once(119, "the scanner could not write-protect or read pages it froze (or the "
			     "pages they must equal): they stay as they were (merge_fallbacks)");
	md__set(a, MD_CTR_FULL_SCANS, ss.passes);
	md__set(a, MD_CTR_SCAN_BREAKS, st.cow_broken);
	md__set(a, MD_CTR_WP_WAITS, st.wp_faults);
	md__set(a, MD_CTR_HINTS_PUSHED, __atomic_load_n(&a->hints.pushed, __ATOMIC_RELAXED));
	md__set(a, MD_CTR_HINTS_DROPPED, __atomic_load_n(&a->hints.dropped, __ATOMIC_RELAXED));
	md__set(a, MD_CTR_PAGES_SHARING, sharing);
	md__set(a, MD_CTR_FILL_MAPPED, a->walk_fill);
	md__set(a, MD_CTR_POOL_PAGES, pool);
	md__set(a, MD_CTR_SCAN_CPU_NS, ss.cpu_ns);
	md__set(a, MD_CTR_PAGES_UNSHARED, unshared);
	md__set(a, MD_CTR_SMART_SKIPS, ss.skipped);
	md__set(a, MD_CTR_CANDIDATES, ss.candidates);
	md__set(a, MD_CTR_MERGED_FROM_CANDIDATES, ss.merged_candidate);
	/* KSM's general_profit: what merging saves, less what it costs in
	 * metadata: the engine's per page, per pool slot and in its index (at
	 * the walk, under its locks), the scanner's tables, the index of
	 * image pages (racy reads of sizes: fine). Pages mapped from images,
	 * by reads or merges, count with read-time sharing (pages_shared). */
	size_t meta = a->walk_meta + md__scanner_meta_bytes(&a->scanner) + md__imagepages_bytes(a->imgpages);
	int64_t profit = ((int64_t)sharing + (int64_t)zero - (int64_t)pool) * MD_EPAGE - (int64_t)meta;
	md__set(a, MD_CTR_GENERAL_PROFIT, (uint64_t)profit);
	pthread_mutex_unlock(&account_lock);
	return reaped;
}

/* Does what memdedupd forwarded, and tells it how that went. */
void md__scan_apply_control(struct md_agent *a, const struct md__msg_control *ctl)
{
	char why[MD_TEXT_MAX + 1] = "";
	int err = 0;
	switch (ctl->op) {
	case MD_CTL_PAUSE:
		/* While the VMM's user changes: kept for after it (the move
		 * ends with the pause it found). */
		if (a->user_moving)
			a->user_was_paused = 1;
		err = pause_set(a, 1);
		if (!err) {
			/* Not the pause of all, which memdedupd keeps in its
			 * state file: a new one started from the defaults (the
			 * file removed) resumes as documented. */
			if (ctl->pid && a->engine->remote->control_pid) {
				a->daemon_paused = 1;
				a->daemon_paused_gen = a->engine->remote->generation;
			}
			pause_wait(a);
		}
		break;
	case MD_CTL_RESUME:
		/* The operator's: the VMM's own pause too. While the VMM's
		 * user changes, for after it: merges now would take references
		 * in the old user's pool, which must have them all back. */
		if (a->user_moving && !__atomic_load_n(&a->io_unseen, __ATOMIC_SEQ_CST)) {
			pthread_mutex_lock(&a->pause_lock);
			a->user_was_paused = 0;
			a->daemon_paused = 0;
			__atomic_store_n(&a->paused_here, 0, __ATOMIC_RELAXED);
			__atomic_store_n(&a->unmerged, 0, __ATOMIC_RELAXED);
			pthread_mutex_unlock(&a->pause_lock);
			break;
		}
		err = a->user_moving ? -EPERM : pause_set_kept(a, 0, PAUSE_CLEAR_HERE);
		if (!err)
			a->daemon_paused = 0;
		if (err == -EPERM)
			snprintf(why, sizeof(why), "merging stopped for good: the VMM does I/O the agent "
				 "cannot follow");
		break;
	case MD_CTL_UNMERGE:
	{
		int part;
		err = unmerge(a, why, sizeof(why), UNMERGE_DAEMON, &part);
		err = err && part ? MD_CTL_PART_DONE : err;
		break;
	}
	case MD_CTL_SET:
		/* Named by pid (memdedup set --pid): this agent's own value,
		 * as md_agent_set's, not a share of the daemon's rate. For
		 * all: a value of this agent's own (memdedup run
		 * --pages-to-scan, or set --pid before) stays. */
		if (ctl->pid && a->engine->remote->control_pid) {
			err = md_agent_set(a, ctl->key, ctl->value);
			break;
		}
		pthread_mutex_lock(&a->tunables_lock);
		if (__atomic_load_n(&a->scan_explicit, __ATOMIC_RELAXED) & tunable_bit(ctl->key)) {
			md__log_once(106, "a value memdedupd sets for all agents leaves this agent's own "
				     "(memdedup run's option, or set --pid): %s stays", ctl->key);
			/* Not a failure: memdedupd counts it apart (MD_CTL_KEPT_OWN). */
			err = MD_CTL_KEPT_OWN;
		} else {
			err = tunable_set(a, ctl->key, ctl->value) < 0 ? -EINVAL : 0;
		}
		pthread_mutex_unlock(&a->tunables_lock);
		break;
	default: err = -EINVAL;
	}
	if (err == MD_CTL_KEPT_OWN)
		snprintf(why, sizeof(why), "keeps its own %s", ctl->key);
	if (err && !why[0])
		snprintf(why, sizeof(why), "%s", strerror(-err));
	if (err && err != MD_CTL_KEPT_OWN)
		md__log("%s from memdedupd failed: %s", md__control_op_name(ctl->op), why);
	if (ctl->token)
		md__remote_control_done(a->engine->remote, ctl->token, err, why);
}

/* The daemon's current tunables, for those our own options left unset
 * (`memdedup run --pages-to-scan=...` wins for this agent). */
static void apply_welcome(struct md_agent *a, const struct md__msg_welcome *w)
{
	char v[16];
	pthread_mutex_lock(&a->tunables_lock);
	unsigned set = __atomic_load_n(&a->scan_explicit, __ATOMIC_RELAXED);
	if (!(set & MD_SET_PAGES)) {
		snprintf(v, sizeof(v), "%u", w->tun.pages_to_scan);
		tunable_set(a, "pages_to_scan", v);
	}
	if (!(set & MD_SET_SLEEP)) {
		snprintf(v, sizeof(v), "%u", w->tun.sleep_millisecs);
		tunable_set(a, "sleep_millisecs", v);
	}
	if (!(set & MD_SET_CPU)) {
		snprintf(v, sizeof(v), "%u", w->tun.cpu_percent);
		tunable_set(a, "cpu_percent", v);
	}
	if (!(set & MD_SET_ORDER))
		tunable_set(a, "order", w->tun.order == MD_ORDER_RANDOM ? "random" : "linear");
	if (!(set & MD_SET_HINTS)) {
		snprintf(v, sizeof(v), "%u", w->tun.hint_ratio);
		tunable_set(a, "hint_ratio", v);
	}
	pthread_mutex_unlock(&a->tunables_lock);
	/* Unmerged: paused until resumed. The daemon it unmerged for knows
	 * (a resume may have come while we were away); a new one does not. */
	int paused = (w->state & MD_WELCOME_PAUSED) != 0;
	if (a->engine->remote->same_daemon && !paused && __atomic_load_n(&a->unmerged, __ATOMIC_RELAXED) == 2)
		__atomic_store_n(&a->unmerged, 0, __ATOMIC_RELAXED);
	/* Paused by memdedupd: the one that paused it knows (a RESUME may
	 * have come while we were away); another knows only root's pause of
	 * all, which it keeps in its state file, and would resume a pause by
	 * pid or a user's own, which nobody lifted. Told by the pool's
	 * generation, not by the last connection's: a reconnect to the new
	 * daemon is to the same one as the last time, and it still never
	 * heard of the pause (review). */
	if (a->engine->remote->generation == a->daemon_paused_gen)
		a->daemon_paused = paused && a->daemon_paused;
	else
		paused |= a->daemon_paused;
	md__scan_welcome_pause(a, paused);
}

int md__scan_welcome_pause(struct md_agent *a, int paused)
{
	return pause_set_kept(a, paused, PAUSE_KEEP);
}

/* The VMM's user changed since it joined memdedupd (QEMU's -runas drops
 * root once the machine, guest RAM included, is made): domains are per
 * user, and the new user must not share with the old one's other VMs.
 * Its pool pages become private copies (few: its guest has not run yet,
 * typically), the scanner paused meanwhile; once memdedupd has every
 * reference back (its record of the old user then goes with the
 * connection), the agent hangs up, lets the old pool go, and its next
 * connect is the new user's. Without the memory for the copies it stays
 * where it is. */
static void user_changed(struct md_agent *a, uid_t now)
{
	char why[MD_TEXT_MAX + 1] = "";
	uid_t was = a->joined_uid;
	if (!a->user_moving) {
		int was_paused = __atomic_load_n(&a->scanner.paused, __ATOMIC_RELAXED);
		int err = unmerge(a, why, sizeof(why), UNMERGE_USER, NULL);
		if (err == -EBUSY)
			return;	/* the VMM's unmerge runs: tried again in a second */
		if (err && !md__remote_connected(a->engine->remote)) {
			/* Away: the new user's HELLO would be refused while the
			 * old pool is mapped. Tried again each second. */
			md__log_once(81, "the VMM's user changed (uid %u to %u) while away from "
				     "memdedupd, and its pool pages cannot become private copies (%s): "
				     "it joins again once they can", (unsigned)was, (unsigned)now, why);
			pause_set_kept(a, was_paused, PAUSE_KEEP);
			return;
		}
		if (err) {
			md__log("the VMM's user changed (uid %u to %u) since it joined memdedupd, but its "
				"pool pages cannot become private copies (%s): it stays in uid %u's domain",
				(unsigned)was, (unsigned)now, why, (unsigned)was);
			a->joined_uid = now;	/* not tried again */
			pause_set_kept(a, was_paused, PAUSE_KEEP);
			return;
		}
		a->user_moving = 1;
		a->user_was_paused = was_paused;
	}
	/* Every reference given back first: one left would keep memdedupd's
	 * record of the old user, which refuses the new user's HELLO. Away
	 * from memdedupd (the connection dropped before or during the move),
	 * none can be: the old pool let go, the next HELLO says no pool page
	 * is mapped, and memdedupd drops that record, references and all. */
	if (md__remote_connected(a->engine->remote)) {
		md__engine_send_unrefs(a->engine);
		if (!md__engine_unrefs_settled(a->engine))
			return;	/* the rest in a second */
	}
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	a->next_connect.tv_sec = t.tv_sec + 1;	/* when memdedupd has seen this connection go */
	md__engine_remote_drop(a->engine);
	a->user_moving = 0;
	if (was == now)
		md__log("the VMM's user came back (uid %u) while it left that user's domain: its pool "
			"pages are private copies now, and it joins that domain again", (unsigned)now);
	else
		md__log("the VMM's user changed (uid %u to %u) since it joined memdedupd: its pool pages "
			"are private copies now, and it joins uid %u's domain", (unsigned)was,
			(unsigned)now, (unsigned)now);
	/* As it was (memdedupd's welcome says anew on the next connection). */
	pause_set_kept(a, a->user_was_paused, PAUSE_KEEP);
}

void md__scan_daemon(struct md_agent *a, int report)
{
	struct md__engine *e = a->engine;
	if (!e || !e->remote)
		return;
	struct md__remote *rm = e->remote;
	uid_t euid = geteuid();
	/* Connected, or away with the old user's pool still ours (a move the
	 * connection's loss cut short, or a change made while away). A move
	 * begun ends even if the user came back meanwhile: its pages are
	 * private and its scanner paused until it does. */
	if ((euid != a->joined_uid || a->user_moving) && (md__remote_connected(rm) || rm->view))
		user_changed(a, euid);
	if (!md__remote_connected(rm) && rm->view && euid != a->joined_uid)
		return;	/* a move away from the old pool not made yet */
	if (!md__remote_connected(rm)) {
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec < a->next_connect.tv_sec)
			return;
		a->next_connect.tv_sec = now.tv_sec + 1;
		/* The user the daemon will see (before: a change during the
		 * connect is seen at the next call). */
		a->joined_uid = euid;
		int err = md__engine_remote_connect(e);
		if (err) {
			if (err != -ENOENT && err != -ECONNREFUSED && err != -ETIMEDOUT)
				md__log_once(93, "memdedupd does not take this agent (%s): merging across "
					     "processes waits until it does", strerror(-err));
			if (a->welcome_due) {	/* scan without it meanwhile, as it was */
				a->welcome_due = 0;
				pause_set_kept(a, 0, PAUSE_KEEP);
			}
			return;
		}
		a->welcome_due = 0;
		a->user_moving = 0;	/* the welcome says whether to scan */
		md__log("connected to memdedupd (pool generation %llu)",
			(unsigned long long)rm->generation);
		apply_welcome(a, &rm->welcome);
		report = 1;	/* a new daemon has none of our counters */
	}
	struct md__msg_control ctl;
	while (md__remote_next_control(rm, &ctl) == 0)
		md__scan_apply_control(a, &ctl);
	/* Read with the controls: copies of pages another agent just
	 * published, merged all but certainly, which an idle scanner took
	 * only after its long sleep (a minute and more at a long
	 * sleep_millisecs), as it takes new hints at once. */
	if (md__remote_candidates_waiting(rm))
		md__scanner_poke(&a->scanner);
	md__engine_send_unrefs(e);	/* the VMM's unmaps' (the scanner sends its own) */
	/* The daemon's rate and CPU cap are for all its agents together; a
	 * value given to this agent itself (memdedup run --pages-to-scan) is
	 * this agent's alone. */
	unsigned share = md__remote_share(rm);
	share = share ? share : MD_SCAN_PART_ALL;
	unsigned set = __atomic_load_n(&a->scan_explicit, __ATOMIC_RELAXED);
	__atomic_store_n(&a->scanner.share_batch, set & MD_SET_PAGES ? MD_SCAN_PART_ALL : share, __ATOMIC_RELAXED);
	__atomic_store_n(&a->scanner.share_cpu, set & MD_SET_CPU ? MD_SCAN_PART_ALL : share, __ATOMIC_RELAXED);
	if (report) {
		uint64_t snap[MD_CTR_COUNT];
		for (int i = 0; i < MD_CTR_COUNT; i++)
			snap[i] = __atomic_load_n(&a->ctr[i], __ATOMIC_RELAXED);
		if (md__remote_report(rm, snap, MD_CTR_COUNT) == 0)
			memcpy(a->reported, snap, sizeof(snap));
	}
}

int md__counters_moved(const struct md_agent *a)
{
	for (int i = 0; i < MD_CTR_COUNT; i++) {
		switch (i) {
		case MD_CTR_AGENT_CPU_NS: case MD_CTR_SCAN_CPU_NS: case MD_CTR_PAGES_SCANNED:
		case MD_CTR_SMART_SKIPS: case MD_CTR_FULL_SCANS: case MD_CTR_VOLATILE:
		case MD_CTR_PAGES_UNSHARED: case MD_CTR_MERGE_RATE: case MD_CTR_BREAK_RATE:
			continue;
		}
		if (__atomic_load_n(&a->ctr[i], __ATOMIC_RELAXED) != a->reported[i])
			return 1;
	}
	return 0;
}

/* The engine goes, guest RAM stays: pages mapped from a pool, in guest
 * RAM and where RAM given up left its copies (a->forgotten), are moved
 * into anonymous memory first (md__engine_leave_pools), or a discard
 * would show the pool's page, let go and maybe reused since for another
 * page's content, not zeroes. The preload's agent is never freed (it ends
 * with the process, whose pages need no copies): this is the API's. */
static void leave_pools(struct md_agent *a)
{
	size_t left = 0;
	md__agent_enter(a);
	int err = md__engine_leave_pools(a->engine, &left);
	int copies = 0;
	const struct md__rangeset *f = &a->forgotten;
	if (f->n) {	/* one read of the mappings for all (smaps: costly) */
		uintptr_t lo = UINTPTR_MAX, hi = 0;
		for (size_t i = 0; i < f->n; i++) {
			lo = f->start[i] < lo ? f->start[i] : lo;
			hi = f->end[i] > hi ? f->end[i] : hi;
		}
		copies = md__move_forgotten(a, lo, hi);
	}
	md__agent_leave(a);
	if (err || copies)
		md__log_once(155, "the agent ends, and pages still map the pool (%zu of guest RAM%s): they could "
			     "not be moved into anonymous memory (%s); a discard of one shows the pool's page, "
			     "maybe another's content since, not zeroes", left,
			     copies ? ", and copies RAM given up left" : "", strerror(-(err ? err : copies)));
}

void md__scan_free(struct md_agent *a)
{
	if (!a->engine)
		return;
	md__scanner_stop(&a->scanner);
	md__scanner_free(&a->scanner);
	leave_pools(a);
	/* The daemon keeps our record, and so the pool pages we pinned,
	 * until the process goes: what was let go since the last send. */
	md__engine_send_unrefs(a->engine);
	md__imagepages_free(a->imgpages);
	a->imgpages = NULL;
	if (a->engine->remote) {
		md__remote_fini(a->engine->remote);
		free(a->engine->remote);
	}
	md__engine_fini(a->engine);
	free(a->engine);
	md__hints_free(&a->hints);
	a->engine = NULL;
	/* As the process was (systemd's MemoryKSM=yes), or as the VMM asked
	 * while we kept it off: the agent failed to start, or is gone. */
	if (a->merge_any_wanted) {
		a->merge_any_wanted = 0;
		if (syscall(SYS_prctl, PR_SET_MEMORY_MERGE, 1L, 0L, 0L, 0L) == 0)
			md__log("content scanning is off: kernel KSM merges the whole process again "
				"(prctl PR_SET_MEMORY_MERGE)");
		else
			md__log("content scanning is off, but kernel KSM's merging of the whole process "
				"cannot be turned back on (%s)", strerror(errno));
	}
}
