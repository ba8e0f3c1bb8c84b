/*
 * remote.c - the engine's pool in memdedupd (see remote.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "merge.h"
#include "remote.h"
#include "scanner.h"
#include "sys.h"

/* A SHARE's part is the scanner's, unconverted. */
_Static_assert(MD_SHARE_ALL == MD_SCAN_PART_ALL, "a SHARE's whole is the scanner's");

int md__remote_init(struct md__remote *rm, const char *socket, const char *domain)
{
	memset(rm, 0, sizeof(*rm));
	rm->ro_fd = -1;
	if (domain && !md__domain_valid(domain, strlen(domain)))
		return -EINVAL;
	snprintf(rm->domain, sizeof(rm->domain), "%s", domain ? domain : "");
	int err = md__daemon_socket_path(socket, rm->socket, sizeof(rm->socket));
	if (err)
		return err;
	const char *env = getenv("MEMDEDUP_SOCKET");
	rm->socket_default = !socket && !(env && *env);
	pthread_mutex_init(&rm->lock, NULL);
	return 0;
}

/* Keeps n references to give back for the next connection (rm->lock held). */
static void owe(struct md__remote *rm, const uint32_t *slots, size_t n)
{
	if (!n)
		return;
	uint32_t *o = rm->nowed + n <= MD_CLIENT_BACK_MAX ?
		      realloc(rm->owed, (rm->nowed + n) * sizeof(*o)) : NULL;
	if (!o) {
		md__log_once(79, "could not keep %zu pool references to give back to memdedupd: "
			     "they stay pinned until this process exits", n);
		return;
	}
	memcpy(o + rm->nowed, slots, n * sizeof(*o));
	rm->owed = o;
	rm->nowed += n;
}

/* Whether fd is a descriptor of the file (dev, ino). */

/* Closes the pool's descriptor fd of (dev, ino) unless the VMM put a file
 * of its own at its number since: that one is not ours to close. */
static void close_pool_fd(int fd, dev_t dev, ino_t ino)
{
	if (md__same_file(fd, dev, ino))
		close(fd);
}

void md__remote_fini(struct md__remote *rm)
{
	free(rm->owed);
	if (rm->c)
		md__client_free(rm->c);
	if (rm->view)
		md__sys_munmap((void *)rm->view, rm->view_pages * MD_EPAGE);
	close_pool_fd(rm->ro_fd, rm->dev, rm->ino);
	pthread_mutex_destroy(&rm->lock);
}

/* Closes the connection, keeping what it owed for the next one (rm->lock
 * held). */
static void hang_up(struct md__remote *rm)
{
	uint32_t *back;
	size_t n;
	if (md__client_take_back(rm->c, &back, &n) == 0) {
		owe(rm, back, n);
		free(back);
	} else {
		md__log_once(129, "could not keep the pool references a lost connection owed to "
			     "memdedupd: they stay pinned until this process exits");
	}
	md__client_free(rm->c);
	__atomic_store_n(&rm->c, NULL, __ATOMIC_RELAXED);	/* read racily: md__remote_connected */
}

/* Before a call (rm->lock held): a pool descriptor found replaced
 * (md__remote_fd_ok) ends the connection, which only a new one mends. Not
 * while a reply is late: what it grants goes back only on this connection
 * (the record a reconnect takes over would keep it), and the client ends
 * the connection itself once that reply is past its bound. Meanwhile the
 * calls go on; no merge maps from the replaced number (map_pool checks md__remote_fd_ok). */
static void fd_lost_hang_up(struct md__remote *rm)
{
	if (!rm->c || !__atomic_load_n(&rm->fd_lost, __ATOMIC_RELAXED) || md__client_late(rm->c))
		return;
	hang_up(rm);
	rm->lost++;
	md__log_once(144, "the VMM closed memdedupd's pool descriptor, or put a file of its own at its "
		     "number: connecting again for a new one (pages merged stay)");
}

/* Called with rm->lock held when a call failed. A daemon that is only slow
 * keeps its connection: the client reads the late replies there and gives
 * back what they granted, which a new connection could not. */
static int lost(struct md__remote *rm, int err)
{
	if (err == -ETIMEDOUT && md__client_alive(rm->c))
		return err;
	if (err == -ENOTCONN || err == -ETIMEDOUT || err == -EPIPE || err == -ECONNRESET) {
		hang_up(rm);
		rm->lost++;
		md__log_once(70, "memdedupd went away: merged pages stay; merging resumes when it is back");
		return -ENOTCONN;
	}
	return err;
}

int md__engine_unrefs_settled(struct md__engine *e)
{
	struct md__remote *rm = e->remote;
	pthread_mutex_lock(&e->unref_lock);
	size_t queued = e->nunref_q;
	pthread_mutex_unlock(&e->unref_lock);
	pthread_mutex_lock(&rm->lock);
	/* A reply owed late may grant references (a REF's, a PUBLISH's),
	 * given back only once it comes: until then the old record holds
	 * them, and refuses a HELLO of another user. */
	int settled = !queued && !rm->nowed &&
		      (!rm->c || (!md__client_back_slots(rm->c) && !md__client_late(rm->c)));
	pthread_mutex_unlock(&rm->lock);
	return settled;
}

/* Lets go of the three locks a switch of pools takes (a connect, a drop),
 * then unmaps and closes the pool switched from: no slot of it is named
 * any more, so nothing maps from it after this. */
static void switched_pools(struct md__engine *e, const void *old_view, size_t old_pages, int old_fd,
			   dev_t old_dev, ino_t old_ino)
{
	/* The VMM may have closed the old number, and the new descriptor
	 * come there: the same daemon's pool is the same file. */
	int new_fd = e->remote->ro_fd;
	pthread_mutex_unlock(&e->remote->lock);
	pthread_mutex_unlock(&e->lock);
	pthread_rwlock_unlock(&e->regions_lock);
	if (old_view)
		md__sys_munmap((void *)old_view, old_pages * MD_EPAGE);
	if (old_fd != new_fd)
		close_pool_fd(old_fd, old_dev, old_ino);
}

/* The slots of the pool held until now are forgotten (its daemon, or the
 * record that counted them, gone or going), and the pages still mapping
 * it are moved off (md__engine_leave_file). The three locks held. */
static void forget_pool(struct md__engine *e, struct md__remote *rm)
{
	e->nunref = 0;	/* empty after every unlock; slots of the old pool anyway */
	pthread_mutex_lock(&e->unref_lock);
	e->nunref_q = 0;	/* and those not sent yet (md__engine_send_unrefs checks too) */
	pthread_mutex_unlock(&e->unref_lock);
	for (size_t i = 0; i < e->nregions; i++) {
		struct md__eregion *r = &e->regions[i];
		for (size_t p = 0; p < (r->end - r->start) / MD_EPAGE; p++)
			if (MD_REF_SLOT(r->ref[p]) && !(r->ref[p] & MD_REF_FILL))
				r->ref[p] = MD_REF_FILE;
	}
	/* Pages no longer sharing: the agent's count of them is done again
	 * now (md__scan_account), not up to 30 s later. Windows the scanner
	 * read before are stale by it too, which costs a read again. */
	__atomic_add_fetch(&e->zap_gen, 1, __ATOMIC_RELEASE);
	/* Those pages, and those written or unmerged since in the old
	 * pool's mappings, keep its whole file in memory (and open to this
	 * process, an old user's after a change of user): the agent moves
	 * them off it (md__engine_leave_file). */
	if (rm->generation) {
		e->leave_failed = 0;
		e->leave_at = 0;
		e->leave_unwritten = e->leave_outside = 0;
		e->leave_last_unwritten = UINT64_MAX;	/* not counted yet */
		__atomic_store_n(&e->leave_old, 1, __ATOMIC_RELAXED);
	}
}

void md__engine_remote_drop(struct md__engine *e)
{
	struct md__remote *rm = e->remote;
	/* The pool's view goes too, under the locks a switch of pools takes:
	 * no slot of it is ours any more, and a process that dropped its
	 * privileges must not keep the old user's pool open. */
	pthread_rwlock_wrlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	pthread_mutex_lock(&rm->lock);
	if (rm->c)
		hang_up(rm);
	/* Its record at memdedupd goes: every reference given back, or
	 * dropped by memdedupd once the next HELLO says that no pool page is
	 * mapped any more, which leaving the pool's mappings makes true. */
	forget_pool(e, rm);
	rm->generation = 0;
	free(rm->owed);
	rm->owed = NULL;
	rm->nowed = 0;
	const void *view = rm->view;
	size_t pages = rm->view_pages;
	int fd = rm->ro_fd;
	rm->view = NULL;
	rm->view_pages = 0;
	rm->ro_fd = -1;
	rm->pool_size = 0;
	switched_pools(e, view, pages, fd, rm->dev, rm->ino);
}

int md__remote_connected(struct md__remote *rm)
{
	return __atomic_load_n(&rm->c, __ATOMIC_RELAXED) != NULL;
}

/* MD_HELLO_NO_POOL_MAPS if the process maps no pool's memfd but the
 * engine's own (not when it cannot tell): a VMM that exec'd keeps no
 * mapping of its former agent, whose references memdedupd kept for the
 * pid, pinned until exit. */
static uint32_t hello_flags(const struct md__engine *e)
{
	struct md__file_map *v;
	size_t n;
	int pool = 1;
	/* The engine's own as opened: the VMM may have put a file of its
	 * own at its number since. */
	if (md__range_file_maps(0, UINTPTR_MAX, &v, &n) == 0) {
		pool = 0;
		for (size_t i = 0; i < n; i++)
			pool |= v[i].pool && (v[i].ino != e->pool.ino || v[i].dev != e->pool.dev);
		free(v);
	}
	return MD_HELLO_CONTROL_PID | (pool ? 0 : MD_HELLO_NO_POOL_MAPS);
}

int md__engine_remote_connect(struct md__engine *e)
{
	struct md__remote *rm = e->remote;
	struct md__client *c;
	struct md__msg_welcome w;
	int fd = -1;

	/* A user's agent started while the host's daemon was away would
	 * otherwise wait for its own for good (and the other way round). */
	if (rm->socket_default)
		md__daemon_socket_path(NULL, rm->socket, sizeof(rm->socket));
	int err = md__client_open(&c, rm->socket, rm->domain, hello_flags(e), &w, &fd);
	if (err)
		return err;
	struct stat st;
	err = -EINVAL;
	/* Slots at or past MD_REF_SLOTS_MAX would not fit in ref[]. */
	if (fstat(fd, &st) != 0 || w.pool_pages == 0 || w.pool_pages > MD_REF_SLOTS_MAX)
		goto close_fd;
	void *view = md__sys_mmap(NULL, (size_t)w.pool_pages * MD_EPAGE, PROT_READ, MAP_SHARED, fd, 0);
	if (view == MAP_FAILED) {
		err = -errno;
		goto close_fd;
	}

	/* Switch pools with no batch and no merge in flight. Slots of the old
	 * pool are forgotten: the daemon that counted them is gone (a
	 * reconnect to the same daemon keeps its generation and them). */
	pthread_rwlock_wrlock(&e->regions_lock);
	pthread_mutex_lock(&e->lock);
	pthread_mutex_lock(&rm->lock);
	const void *old_view = rm->view;
	size_t old_pages = rm->view_pages;
	int old_fd = rm->ro_fd;
	dev_t old_dev = rm->dev;
	ino_t old_ino = rm->ino;
	if (rm->generation != w.generation)
		forget_pool(e, rm);
	rm->view = view;
	rm->view_pages = w.pool_pages;
	rm->ro_fd = fd;
	rm->dev = st.st_dev;
	rm->ino = st.st_ino;
	__atomic_store_n(&rm->fd_lost, 0, __ATOMIC_RELAXED);
	rm->pool_size = 0;	/* a new pool: its size is to be seen */
	rm->same_daemon = rm->generation == w.generation;
	/* The same daemon still counts what we owe it; another never had it. */
	if (rm->nowed && rm->same_daemon)
		md__client_give_back(c, rm->owed, rm->nowed);
	free(rm->owed);
	rm->owed = NULL;
	rm->nowed = 0;
	rm->generation = w.generation;
	rm->welcome = w;
	if (rm->c)
		md__client_free(rm->c);
	__atomic_store_n(&rm->c, c, __ATOMIC_RELAXED);
	rm->control_pid = (md__client_hello_flags(c) & MD_HELLO_CONTROL_PID) != 0;
	rm->connects++;
	switched_pools(e, old_view, old_pages, old_fd, old_dev, old_ino);
	return 0;

close_fd:
	close(fd);
	md__client_free(c);
	return err;
}

int md__remote_fd_ok(struct md__remote *rm)
{
	if (__atomic_load_n(&rm->fd_lost, __ATOMIC_RELAXED))
		return 0;
	if (md__same_file(rm->ro_fd, rm->dev, rm->ino))
		return 1;
	__atomic_store_n(&rm->fd_lost, 1, __ATOMIC_RELAXED);
	return 0;
}

int md__remote_valid(struct md__remote *rm, uint32_t slot, size_t n)
{
	struct stat st;
	uint64_t need = ((uint64_t)slot + n) * MD_EPAGE;
	/* The pool file never shrinks (sealed): a slot inside it stays
	 * readable through the view; one beyond it would raise SIGBUS. So a
	 * size seen once holds, and only a slot past it costs an fstat (of
	 * the pool, not of a file the VMM put at its number). */
	if ((size_t)slot + n > rm->view_pages)
		return 0;
	if (need <= __atomic_load_n(&rm->pool_size, __ATOMIC_RELAXED))
		return 1;
	if (fstat(rm->ro_fd, &st) != 0 || st.st_dev != rm->dev || st.st_ino != rm->ino) {
		__atomic_store_n(&rm->fd_lost, 1, __ATOMIC_RELAXED);
		return 0;
	}
	if ((uint64_t)st.st_size < need)
		return 0;
	__atomic_store_n(&rm->pool_size, (uint64_t)st.st_size, __ATOMIC_RELAXED);
	return 1;
}

#define CALL(rm, expr) ({ \
	int _r; \
	pthread_mutex_lock(&(rm)->lock); \
	fd_lost_hang_up(rm); \
	_r = (rm)->c ? (expr) : -ENOTCONN; \
	if (_r < 0 && (rm)->c) \
		_r = lost(rm, _r); \
	pthread_mutex_unlock(&(rm)->lock); \
	_r; })

int md__remote_lookup_n(struct md__remote *rm, const uint64_t *hash, const uint64_t *addr,
			const uint64_t *tag, uint32_t n, uint32_t *slot1)
{
	int err = CALL(rm, md__client_lookup_tagged(rm->c, hash, addr, tag, n, slot1));
	return err < 0 ? err : 0;
}

int md__remote_reads(struct md__remote *rm, const struct md__read_run *run, uint32_t n)
{
	int err = CALL(rm, md__client_reads(rm->c, run, n));
	return err < 0 ? err : 0;
}

int md__remote_publish_each(struct md__remote *rm, const uint64_t *hash, const void *const *pages,
			    uint32_t n, uint32_t *slot, int *status, uint64_t gen)
{
	int err = CALL(rm, rm->generation != gen ? -ESTALE :
		       md__client_publish_each(rm->c, hash, pages, n, slot, status));
	return err < 0 ? err : 0;
}

int md__remote_ref_n(struct md__remote *rm, const uint32_t *slots, uint32_t n, int delta, uint64_t gen)
{
	pthread_mutex_lock(&rm->lock);
	if (rm->generation != gen) {
		/* Another daemon's pool now: the one that counted these
		 * slots is gone, and this one's slots of the same numbers are
		 * other pages. */
		pthread_mutex_unlock(&rm->lock);
		return delta < 0 ? 0 : -ESTALE;
	}
	fd_lost_hang_up(rm);
	int unsent = !rm->c || !md__client_alive(rm->c);
	int err = unsent ? -ENOTCONN : md__client_ref(rm->c, slots, n, delta);
	if (err < 0 && rm->c)
		err = lost(rm, err);
	/* An UNREF with no connection to take it is owed to the next one.
	 * Only then here: one the connection could not send whole, the
	 * client queued, and lost() carried it over; one sent whole may have
	 * been applied (its ACK lost as the connection closed), and sent
	 * again it would drop a reference of a page still mapped, freeing
	 * the slot under it. */
	if (err == -ENOTCONN && unsent && delta < 0)
		owe(rm, slots, n);
	pthread_mutex_unlock(&rm->lock);
	return err < 0 ? err : 0;
}

int64_t md__rt_begin(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int md__rt_more(int64_t start)
{
	return md__rt_begin() - start < MD_RT_PASS_MS;
}

size_t md__remote_ref_each(struct md__remote *rm, const uint32_t *slots, size_t n, unsigned char *ok,
			   uint64_t gen)
{
	int64_t start = md__rt_begin();
	size_t pinned = 0, i = 0;
	for (; i < n && md__rt_more(start); i++) {
		ok[i] = md__remote_ref_n(rm, &slots[i], 1, +1, gen) == 0;
		pinned += ok[i];
	}
	for (; i < n; i++)
		ok[i] = 0;
	return pinned;
}

void md__remote_give_back(struct md__remote *rm, const uint32_t *slots, size_t n, uint64_t gen)
{
	pthread_mutex_lock(&rm->lock);
	fd_lost_hang_up(rm);
	if (rm->generation != gen)
		;	/* another daemon's pool: the one that counted them is gone */
	else if (rm->c)
		md__client_give_back(rm->c, slots, n);	/* past its bound: said once, pinned */
	else
		owe(rm, slots, n);
	pthread_mutex_unlock(&rm->lock);
}

int md__remote_report(struct md__remote *rm, const uint64_t *ctr, uint32_t n)
{
	int err = CALL(rm, md__client_report(rm->c, ctr, n));
	return err < 0 ? err : 0;
}

int md__remote_control_done(struct md__remote *rm, uint32_t token, int status, const char *why)
{
	int err = CALL(rm, md__client_control_done(rm->c, token, status, why));
	return err < 0 ? err : 0;
}

int md__remote_next_control(struct md__remote *rm, struct md__msg_control *ctl)
{
	int err = CALL(rm, md__client_next_control(rm->c, ctl));
	return err;
}

size_t md__remote_take_candidates(struct md__remote *rm, uint64_t *addr, size_t max)
{
	size_t n = 0;
	pthread_mutex_lock(&rm->lock);
	if (rm->c)
		n = md__client_take_candidates(rm->c, addr, max);
	pthread_mutex_unlock(&rm->lock);
	return n;
}

int md__remote_candidates_waiting(struct md__remote *rm)
{
	pthread_mutex_lock(&rm->lock);
	int n = rm->c && md__client_candidates(rm->c);
	pthread_mutex_unlock(&rm->lock);
	return n;
}

uint32_t md__remote_share(struct md__remote *rm)
{
	uint32_t n = 0;
	pthread_mutex_lock(&rm->lock);
	if (rm->c)
		n = md__client_share(rm->c);
	pthread_mutex_unlock(&rm->lock);
	return n;
}
