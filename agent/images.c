/*
 * images.c - image files, and the read leases that prove they cannot change.
 *
 * A page of an image is mapped into guest RAM only while the agent holds a
 * read lease (F_SETLEASE, F_RDLCK) on its own read-only open of the file. The
 * kernel grants the lease only while nobody has the file open for writing, and
 * makes anyone who then opens it for writing or truncates it wait until the
 * lease is given back (at most /proc/sys/fs/lease-break-time seconds). It tells
 * the agent's thread with a signal (F_SETSIG, F_SETOWN_EX to that thread); the
 * thread then makes every page still mapped from the file private and only
 * then releases the lease. A writer can therefore never change what a guest
 * has read by writing the file; a change that moves or removes file offsets
 * (truncate, O_TRUNC, fallocate's collapse and insert ranges) still reaches
 * the private copies left in the image's mapping (docs/ARCHITECTURE.md,
 * "shrinking an image").
 *
 * We chose leases over copying reads into a sealed content pool because they
 * cost nothing per read (the page cache is the pool) and keep sharing with the
 * host's page cache; a pool would copy every page once and double the memory
 * of a cold image (see docs/ARCHITECTURE.md).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "agent_internal.h"
#include "log.h"
#include "printable.h"
#include "sys.h"

#define LEASE_RETRY_NS 1000000000ll

void (*md__image_lease_hook)(int fd);	/* tests only: see agent_internal.h */

static time_t monotonic_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec;
}

static int time_reached(const struct timespec *t)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

static void retry_later(struct md__image *img)
{
	clock_gettime(CLOCK_MONOTONIC, &img->retry_at);
	long long ns = img->retry_at.tv_nsec + LEASE_RETRY_NS;
	img->retry_at.tv_sec += ns / 1000000000ll;
	img->retry_at.tv_nsec = ns % 1000000000ll;
}

struct md__image *md__image_find(const struct md_agent *a, dev_t dev, ino_t ino)
{
	for (size_t i = 0; i < a->nimages; i++)
		if ((a->images[i].dev == dev || dev == MD_ANY_DEV) && a->images[i].ino == ino)
			return &a->images[i];
	return NULL;
}

/* A lease's break is our signal, to our thread. Set again before each
 * lease: the kernel clears both when one goes. */
static int lease_signal_to_us(const struct md_agent *a, int fd)
{
	/* No thread to answer a break any more (md_agent_free stops it
	 * first): no lease. An owner of 0 would clear the owner, and the
	 * break would be answered by no one. */
	if (!a->thread_tid) {
		errno = ESRCH;
		return -1;
	}
	struct f_owner_ex owner = { .type = F_OWNER_TID, .pid = a->thread_tid };
	return fcntl(fd, F_SETSIG, a->lease_signal) != 0 || fcntl(fd, F_SETOWN_EX, &owner) != 0 ? -1 : 0;
}

/* Whether fd is one of our descriptions of an image: read-only with
 * O_APPEND (image_open_own), which no VMM's image descriptor has. */
static int fd_is_ours(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_ACCMODE) == O_RDONLY && (fl & O_APPEND);
}

/* Closes a spare, if its number is still ours (the VMM may have closed it
 * and put a file of its own there). */
static void spare_close(struct md__spare *sp)
{
	if (sp->fd >= 0 && fd_is_ours(sp->fd) && md__same_file(sp->fd, sp->dev, sp->ino))
		close(sp->fd);
	sp->fd = -1;
}

/* The spare of file st, taken (-1 if none): once /proc is gone, the only
 * description of our own left to have of it. One the VMM closed or put
 * another file at the number of is forgotten, not ours to close. */
static int spare_take(struct md_agent *a, const struct stat *st)
{
	for (size_t i = 0; i < a->nspares; i++) {
		struct md__spare *sp = &a->spares[i];
		if (sp->fd < 0 || sp->dev != st->st_dev || sp->ino != st->st_ino)
			continue;
		int fd = sp->fd;
		sp->fd = -1;
		if (fd_is_ours(fd) && md__same_file(fd, st->st_dev, st->st_ino))
			return fd;
	}
	return -1;
}

/* A description of our own of the file the VMM's fd names (st), through
 * /proc/self/fd, or -1 (errno set). */
static int proc_open_own(int fd, const struct stat *st)
{
	char path[64];
	snprintf(path, sizeof(path), "fd/%d", fd);
	/* O_APPEND, meaningless for reading, marks the description as ours
	 * (image_fd_ours): a lease's removal clears its signal and owner. */
	/* O_NONBLOCK: another holder's write lease (an NFS server's
	 * delegation, a Samba oplock) makes the open fail at once, not wait
	 * for its break with agent->lock held; reads of a file ignore it. */
	int own_fd = md__proc_open(path, O_APPEND | O_NONBLOCK);
	if (own_fd >= 0 && !md__same_file(own_fd, st->st_dev, st->st_ino)) {
		/* Not the file: the VMM may have closed this number and opened
		 * another file at it since, its own, not ours to close. */
		if (fd_is_ours(own_fd))
			close(own_fd);
		errno = ESTALE;
		return -1;
	}
	return own_fd;
}

/* The same, without the lease's signal, or after a chroot that hid /proc
 * the spare opened before it. */
static int open_own(struct md_agent *a, int fd, const struct stat *st)
{
	int own_fd = proc_open_own(fd, st);
	if (own_fd >= 0 || errno == ESTALE)
		return own_fd;
	int err = errno;
	/* The spare itself, not a duplicate: a lease lives as long as its
	 * description, and one left on a duplicate's would outlive our
	 * descriptor the VMM closed. */
	own_fd = spare_take(a, st);
	if (own_fd < 0)
		errno = err;
	return own_fd;
}

/* Our own open file description of the file the VMM's fd names: the
 * lease belongs to it, so it lives on when the VMM closes its descriptor,
 * and mappings come from it. Returns it, or -1 (errno set). */
static int image_open_own(struct md_agent *a, int fd, const struct stat *st)
{
	int own_fd = open_own(a, fd, st);
	if (own_fd >= 0 && lease_signal_to_us(a, own_fd) != 0) {
		int err = errno;
		if (fd_is_ours(own_fd))
			close(own_fd);
		errno = err;
		return -1;
	}
	return own_fd;
}

/* Whether img->fd is still our description of img: the VMM may close it
 * (close_range) or put another file at its number (dup2), or open the
 * same image again there, which must not be leased or closed as ours.
 * Ours is read-only with O_APPEND (image_open_own), which no VMM's image
 * descriptor has; not its lease signal or owner, which the kernel clears
 * when a lease goes. */
static int image_fd_ours(const struct md__image *img)
{
	return img->fd >= 0 && md__same_file(img->fd, img->dev, img->ino) && fd_is_ours(img->fd);
}

/* Whether the kernel still holds our lease on img: 1, 0 once it took it
 * back (lease-break-time ran out, and the writer is in), -1 where that
 * cannot be told (no /proc after a chroot, a descriptor no longer ours).
 * F_GETLEASE cannot tell: F_UNLCK while breaking and after. The locks of
 * our description in /proc/self/fdinfo can ("lock: ... LEASE ..."), once
 * seen to show a lease at all (md__image_lease looks when it takes one). */
static int fdinfo_shows_leases;

static int lease_kept(const struct md__image *img)
{
	char name[32], buf[4096];
	if (!image_fd_ours(img))
		return -1;
	snprintf(name, sizeof(name), "fdinfo/%d", img->fd);
	int fd = md__proc_open(name, 0);
	if (fd < 0)
		return -1;
	ssize_t n = md__sys_pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	const char *locks = strstr(buf, "lock:");
	if (locks && strstr(locks, " LEASE ")) {
		__atomic_store_n(&fdinfo_shows_leases, 1, __ATOMIC_RELAXED);
		return 1;
	}
	return __atomic_load_n(&fdinfo_shows_leases, __ATOMIC_RELAXED) ? 0 : -1;
}

/* How many images hold a descriptor of ours (image_fds_room). */
static size_t image_fds(const struct md_agent *a)
{
	size_t n = 0;
	for (size_t i = 0; i < a->nimages; i++)
		n += a->images[i].fd >= 0;
	return n;
}

static int image_fds_room(struct md_agent *a);

/* What probing an image's file found (its filesystem's leases see every
 * writer; shmem) is kept while our descriptor holds the file open: the
 * filesystem cannot go then. Once we let it go, its device number can
 * come back as another filesystem's (one whose leases do not see every
 * writer: overlay, FUSE), with a file of the same inode number. (A
 * descriptor the VMM closed under us is found at the next lease.) There
 * is room for an entry for every image (image_add). */
static void probe_remember(struct md_agent *a, const struct md__image *img)
{
	pthread_mutex_lock(&a->probe_lock);
	size_t i = 0;
	while (i < a->nprobed && (a->probed[i].dev != img->dev || a->probed[i].ino != img->ino))
		i++;
	if (i == a->nprobed && a->nprobed < a->probed_cap)
		a->probed[a->nprobed++] = (struct md__probed){ img->dev, img->ino, img->shmem };
	pthread_mutex_unlock(&a->probe_lock);
}

static void probe_forget(struct md_agent *a, const struct md__image *img)
{
	pthread_mutex_lock(&a->probe_lock);
	for (size_t i = 0; i < a->nprobed; i++)
		if (a->probed[i].dev == img->dev && a->probed[i].ino == img->ino) {
			a->probed[i] = a->probed[--a->nprobed];
			break;
		}
	pthread_mutex_unlock(&a->probe_lock);
}

static struct md__image *image_add(struct md_agent *a, int fd, const struct stat *st, int shmem)
{
	if (a->nimages == a->images_cap) {
		size_t cap = a->images_cap ? a->images_cap * 2 : 8;
		struct md__image *n = realloc(a->images, cap * sizeof(*n));
		if (!n)
			return NULL;
		a->images = n;
		a->images_cap = cap;
	}
	/* Room for an entry of every image, this one too: entries are
	 * forgotten and remembered again (probe_forget), never grown then. */
	pthread_mutex_lock(&a->probe_lock);
	if (a->probed_cap < a->nimages + 1) {
		size_t cap = a->probed_cap ? a->probed_cap * 2 : 8;
		struct md__probed *n = realloc(a->probed, cap * sizeof(*n));
		if (!n) {
			pthread_mutex_unlock(&a->probe_lock);
			return NULL;
		}
		a->probed = n;
		a->probed_cap = cap;
	}
	pthread_mutex_unlock(&a->probe_lock);
	int own_fd = image_open_own(a, fd, st);
	if (own_fd < 0)
		return NULL;
	struct md__image *img = &a->images[a->nimages];
	*img = (struct md__image){
		.id = (uint32_t)a->nimages + 1,
		.dev = st->st_dev,
		.ino = st->st_ino,
		.fd = own_fd,
		.shmem = shmem,
		.lease = MD_LEASE_NONE,
	};
	a->nimages++;
	probe_remember(a, img);
	return img;
}

struct md__image *md__image_leased(struct md_agent *a, const struct stat *st)
{
	struct md__image *img = md__image_find(a, st->st_dev, st->st_ino);
	return img && img->lease == MD_LEASE_HELD ? img : NULL;
}

/* 1 if a filesystem of type f_type is one whose read leases see every
 * writer: a local one, where every write goes through this kernel. FUSE
 * and network filesystems grant leases that a writer on the server (or
 * below the FUSE daemon) never breaks, and overlayfs lets its lower layer
 * change underneath: a mapping of theirs could show a guest what it never
 * read. Nor ZFS: `zfs rollback` and `zfs receive -F` replace a mounted
 * dataset's files in place, breaking no lease. */
static int leases_see_writers(unsigned long f_type)
{
	switch (f_type) {
	case EXT4_SUPER_MAGIC:	/* ext2, ext3 too */
	case XFS_SUPER_MAGIC:
	case BTRFS_SUPER_MAGIC:
	case F2FS_SUPER_MAGIC:
	case TMPFS_MAGIC:
		return 1;
	default:
		return 0;
	}
}

/* Whether fd's filesystem was found lately not to see every writer (a "no"
 * is remembered for 10 s per filesystem; only the "no": a device number
 * can come back as another filesystem, and a stale "no" costs a copied
 * read, no more); else asks fstatfs, telling *shmem. */
static int leases_see_writers_cached(struct md_agent *a, int fd, dev_t dev, int *shmem)
{
	const size_t n = sizeof(a->no_lease_fs) / sizeof(a->no_lease_fs[0]);
	struct timespec now;
	struct statfs sf;
	int known_no = 0;
	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&a->probe_lock);
	for (size_t i = 0; i < n && !known_no; i++)
		known_no = a->no_lease_fs[i].until > now.tv_sec && a->no_lease_fs[i].dev == dev;
	pthread_mutex_unlock(&a->probe_lock);
	if (known_no)
		return 0;
	if (fstatfs(fd, &sf) == 0 && leases_see_writers((unsigned long)sf.f_type)) {
		*shmem = sf.f_type == TMPFS_MAGIC;
		return 1;
	}
	pthread_mutex_lock(&a->probe_lock);
	size_t oldest = 0;
	for (size_t i = 1; i < n; i++)
		if (a->no_lease_fs[i].until < a->no_lease_fs[oldest].until)
			oldest = i;
	a->no_lease_fs[oldest].dev = dev;
	a->no_lease_fs[oldest].until = now.tv_sec + 10;
	pthread_mutex_unlock(&a->probe_lock);
	return 0;
}

void md__image_probe(struct md_agent *a, int fd, struct md__fd_probe *p)
{
	/* A descriptor that cannot read (O_PATH, O_WRONLY) fails the plain
	 * read with EBADF: so must ours, which would open the file anew. */
	int fl = fcntl(fd, F_GETFL);
	p->shmem = 0;
	p->direct = fl >= 0 && (fl & O_DIRECT);
	if (fl < 0 || (fl & O_PATH) || (fl & O_ACCMODE) == O_WRONLY) {
		p->why = MD_FB_NOT_FILE;
		return;
	}
	/* Open for writing by the VMM itself: no read lease is granted then,
	 * and fstat of a writable disk on NFS would first write its dirty
	 * pages back to the server. */
	if ((fl & O_ACCMODE) != O_RDONLY) {
		p->why = MD_FB_NO_LEASE;
		md__log_once(105, "an image is open for writing: it may change, so its reads are copied");
		return;
	}
	if (fstat(fd, &p->st) != 0 || !S_ISREG(p->st.st_mode)) {
		p->why = MD_FB_NOT_FILE;
		return;
	}
	int known = 0;
	pthread_mutex_lock(&a->probe_lock);
	for (size_t i = 0; i < a->nprobed && !known; i++)
		if (a->probed[i].dev == p->st.st_dev && a->probed[i].ino == p->st.st_ino) {
			known = 1;
			p->shmem = a->probed[i].shmem;
		}
	pthread_mutex_unlock(&a->probe_lock);
	if (!known && !leases_see_writers_cached(a, fd, p->st.st_dev, &p->shmem)) {
		p->why = MD_FB_NO_LEASE;
		md__log_once(23, "an image lies on a filesystem whose leases do not see every writer "
			     "(FUSE, network, overlay, ...): its reads are copied");
		return;
	}
	p->why = -1;
}

struct md__image *md__image_lease(struct md_agent *a, int fd, const struct md__fd_probe *p,
				  enum md_fallback *why)
{
	struct stat st = p->st;

	if (p->why >= 0) {
		*why = (enum md_fallback)p->why;
		return NULL;
	}
	struct md__image *img = md__image_find(a, st.st_dev, st.st_ino);
	if (img && img->fd < 0)
		img->shmem = p->shmem;	/* let go: probed anew (probe_forget) */
	if (!img) {
		if (!image_fds_room(a)) {
			*why = MD_FB_NO_LEASE;
			return NULL;
		}
		img = image_add(a, fd, &st, p->shmem);
		if (!img) {
			*why = MD_FB_ERROR;
			md__log_once(20, "cannot open an image a second time to lease it (%s): its reads are copied",
				     strerror(errno));
			return NULL;
		}
	}
	if (img->lease == MD_LEASE_HELD) {
		if (md__image_held(a, img)) {
			img->used = monotonic_s();
			return img;
		}
		*why = MD_FB_NO_LEASE;
		return NULL;
	}
	if (img->lease == MD_LEASE_BREAKING) {
		*why = MD_FB_NO_LEASE;
		return NULL;
	}
	if (img->retry_at.tv_sec && !time_reached(&img->retry_at)) {
		*why = MD_FB_NO_LEASE;
		return NULL;
	}
	if (!image_fd_ours(img)) {
		/* Its number is the VMM's now, not ours to close; -1: let go
		 * (md__images_release_idle). Either way not ours to count. */
		int lost = img->fd >= 0;
		if (lost) {
			img->fd = -1;
			probe_forget(a, img);
		}
		if (!image_fds_room(a)) {
			*why = MD_FB_NO_LEASE;
			return NULL;
		}
		int own_fd = image_open_own(a, fd, &st);
		if (own_fd < 0) {
			md__log_once(100, "cannot open an image again after the VMM closed or replaced the "
				     "agent's descriptor of it (%s): its reads are copied", strerror(errno));
			*why = MD_FB_ERROR;
			retry_later(img);
			return NULL;
		}
		if (lost)
			md__log_once(25, "the agent's own descriptor of an image was closed or replaced "
				     "by the VMM: it opened the image again");
		img->fd = own_fd;
		probe_remember(a, img);
	}
	if (a->lease_uid != (uid_t)-1 && st.st_uid != a->lease_uid) {
		*why = MD_FB_NO_LEASE;	/* the VMM is giving root up: its new uid could not give it back */
		return NULL;
	}
	if (md__image_lease_hook)
		md__image_lease_hook(img->fd);
	if (lease_signal_to_us(a, img->fd) != 0 || fcntl(img->fd, F_SETLEASE, F_RDLCK) != 0) {
		int err = errno;
		*why = MD_FB_NO_LEASE;
		/* Named, with what would let it be leased: a user other than
		 * root leases only files it owns. */
		char link[32], name[256];
		snprintf(link, sizeof(link), "/proc/self/fd/%d", img->fd);
		ssize_t l = readlink(link, name, sizeof(name) - 1);
		name[l > 0 ? l : 0] = 0;
		char shown[256];
		/* Apart: an image open for writing said first would hide
		 * what lets another be leased. */
		int denied = err == EACCES || err == EPERM;
		md__log_once(denied ? 132 : 21, "no read lease on image %s (%s): it may change, so its reads "
			     "are copied%s", l > 0 ? md__printable(name, shown, sizeof(shown)) : "?",
			     err == EAGAIN ? "it is open for writing" : strerror(err),
			     denied ? "; a lease needs the file's owner (or CAP_LEASE): run the VMM as "
				      "the image's owner to share its reads" : "");
		retry_later(img);
		return NULL;
	}
	/* The number may have become the VMM's since the check above (it
	 * closed ours, opened another file there): the lease just taken is
	 * then on the VMM's file, which would be mapped as this image. Ours
	 * cannot come back to the number once gone, so ours now was ours
	 * when leased. */
	if (!image_fd_ours(img)) {
		if (fcntl(img->fd, F_GETLEASE) == F_RDLCK)
			fcntl(img->fd, F_SETLEASE, F_UNLCK);
		img->fd = -1;
		probe_forget(a, img);
		*why = MD_FB_NO_LEASE;
		retry_later(img);
		return NULL;
	}
	/* While the lease is held the size cannot change either. */
	if (fstat(img->fd, &st) != 0) {
		md__log_once(101, "cannot read the size of a leased image (%s): its reads are copied",
			     strerror(errno));
		fcntl(img->fd, F_SETLEASE, F_UNLCK);
		*why = MD_FB_ERROR;
		retry_later(img);
		return NULL;
	}
	/* Whether /proc shows leases, for a break that may outlast one
	 * (break_watch): learnt once, from a lease held. */
	if (!__atomic_load_n(&fdinfo_shows_leases, __ATOMIC_RELAXED))
		lease_kept(img);
	img->size = st.st_size;
	img->lease = MD_LEASE_HELD;
	img->used = monotonic_s();
	return img;
}

/* The page-aligned length of a view of img. */
static size_t view_len(const struct md__image *img)
{
	return ((size_t)img->size + MD_PAGE - 1) / MD_PAGE * MD_PAGE;
}

void (*md__image_seek_hook)(int fd);	/* tests only: see agent_internal.h */

off_t md__image_seek(const struct md__image *img, off_t off, int whence)
{
	/* Unlike a pread or an mmap, lseek changes the open file at that
	 * number: ours, whose position no read uses (they are preads), or a
	 * file the VMM put at the number since the lease was looked at (its
	 * close and open, or a dup2), whose position its next read or write
	 * would use. Put back at once: the VMM's file is where it was but
	 * for these few microseconds. */
	if (md__image_seek_hook)
		md__image_seek_hook(img->fd);
	int saved = errno;
	off_t pos = lseek(img->fd, 0, SEEK_CUR);
	off_t at = lseek(img->fd, off, whence);
	int err = errno;
	if (pos >= 0)
		lseek(img->fd, pos, SEEK_SET);
	errno = at < 0 ? err : saved;
	return at;
}

const unsigned char *md__image_view(struct md_agent *a, struct md__image *img)
{
	if (img->view || img->lease != MD_LEASE_HELD || img->size <= 0 || !md__vma_room(a))
		return img->view;
	/* Shared and read-only: the page cache's pages themselves, no copy.
	 * Under the lease the file can neither change nor shrink, so no
	 * access can fault past its end; the view goes before the lease. */
	void *v = md__sys_mmap(NULL, view_len(img), PROT_READ, MAP_SHARED, img->fd, 0);
	if (v == MAP_FAILED)
		return NULL;
	md__vmas_add(&a->vmas, 1);
	img->view = v;
	return img->view;
}

static void view_drop(struct md__image *img)
{
	if (img->view)
		md__sys_munmap((void *)img->view, view_len(img));
	img->view = NULL;
}

long md__lease_break_s_now(void)
{
	char text[32];
	if (md__read_text("/proc/sys/fs/lease-break-time", text, sizeof(text)) > 0) {
		long s = strtol(text, NULL, 10);
		return s < 0 ? 0 : s;	/* the kernel's "never" is any s <= 0 */
	}
	return -1;
}

long md__lease_break_s(const struct md_agent *a)
{
	long s = md__lease_break_s_now();
	if (s >= 0)
		return s;
	return a->lease_break_s >= 0 ? a->lease_break_s : 45;
}

/* How many pages a lease break is taken to make private a second, at the
 * least: its copies (MADV_POPULATE_WRITE) with the VMM's reads let in
 * between parts. Measured (review, a loaded 2-core machine): 512 MiB made
 * private in 2.4 s with a writer waiting (55,000 pages/s), and 0.68 to
 * 1.47 s for MADV_POPULATE_WRITE of 512 MiB alone. Tests lower it. */
#define MD_BREAK_PAGES_PER_S 50000
unsigned long md__break_pages_per_s = MD_BREAK_PAGES_PER_S;

int md__break_room(struct md_agent *a, uint64_t pages)
{
	long s = __atomic_load_n(&a->lease_break_now, __ATOMIC_RELAXED);
	if (s <= 0)
		return 1;	/* leases never time out: a break takes the time it needs */
	/* Half of lease-break-time, for a slower machine than measured, the
	 * second a break found by the once-a-second look may start late, and
	 * other images' breaks at once. */
	uint64_t most = (uint64_t)s * __atomic_load_n(&md__break_pages_per_s, __ATOMIC_RELAXED) / 2;
	uint64_t have = a->owned;
	if (a->walked && a->walk_unwritten + (a->owner_sets - a->walk_sets) < have)
		have = a->walk_unwritten + (a->owner_sets - a->walk_sets);
	if (have + pages <= most)
		return 1;
	md__log_once(150, "the pages mapped from images (%llu) are as many as a lease break can make "
		     "private in half of fs.lease-break-time (%ld s, at %lu pages a second): further "
		     "reads of images are copied (counted as no_lease) and no guest page is merged "
		     "onto an image, until some are written or let go",
		     (unsigned long long)have, s, __atomic_load_n(&md__break_pages_per_s, __ATOMIC_RELAXED));
	return 0;
}

/* A break's deadline where there is none: 0 (or less) seconds of
 * lease-break-time is no time-out in the kernel (fs/locks.c), whose
 * writer waits for the lease as long as it takes. */
#define NO_DEADLINE ((time_t)LONG_MAX)

/* When the kernel lets a writer in whatever we do: lease-break-time seconds
 * after the break began, less a margin for the last try. */
static void break_deadline(const struct md_agent *a, struct timespec *t)
{
	long s = md__lease_break_s(a);
	clock_gettime(CLOCK_MONOTONIC, t);
	if (s <= 0)
		t->tv_sec = NO_DEADLINE;
	else
		t->tv_sec += s > 1 ? s - 1 : 0;
}

/* Makes img's pages private and gives its lease back (agent->lock held).
 * The copies go in parts: 1 when a part was made and more are left, to be
 * made at once by md__image_breaks_retry, which lets the lock go between
 * them (a large guest's copies took the VMM's reads' lock for seconds).
 * A failure for want of memory leaves it breaking, with the lease held,
 * to be tried again (md__image_breaks_retry) until its deadline; any
 * other failure, or the deadline, gives the lease back with pages still
 * the file's, said in the log, once the writes from guest RAM begun before
 * have ended (or at the deadline). */
/* Looks whether the kernel took img's lease back while it breaks: the
 * pages made private since the last look that found it held may then
 * hold the writer's bytes, as may all made after (img->late). */
static void break_watch(struct md__image *img)
{
	if (img->lost)
		return;
	int kept = lease_kept(img);
	if (kept == 0) {
		img->lost = 1;
		img->late += img->unchecked;
	} else if (kept == 1) {
		img->unchecked = 0;
	}
}

static int finish_break(struct md_agent *a, struct md__image *img)
{
	/* Once private, nothing maps the image again while it breaks: only
	 * the writes are waited for then. Nor does anything between two
	 * parts: no read maps a breaking image, and no merge onto it holds
	 * (md__image_fixed). */
	int err = 0;
	if (!img->writes_before) {
		break_watch(img);
		uint64_t before = __atomic_load_n(&a->ctr[MD_CTR_PRIVATIZED], __ATOMIC_RELAXED);
		err = md__privatize_from(a, &img->private_at, UINTPTR_MAX, img->id, md__privatize_part_pages);
		uint64_t made = __atomic_load_n(&a->ctr[MD_CTR_PRIVATIZED], __ATOMIC_RELAXED) - before;
		*(img->lost ? &img->late : &img->unchecked) += made;
		img->private_err = img->private_err ? img->private_err : err;
		if (img->private_at != UINTPTR_MAX)
			return 1;
		err = img->private_err;
		img->private_at = 0;	/* a pass after this one starts over */
		img->private_err = 0;
	}
	if (err == -ENOMEM || err == -EAGAIN) {
		if (img->retry_at.tv_sec == NO_DEADLINE && monotonic_s() - img->break_began >= 45)
			md__log_once(148, "a lease break has waited %ld s for the memory to make an image's "
				     "pages private: fs.lease-break-time is 0, so its writer waits until "
				     "there is", (long)(monotonic_s() - img->break_began));
		break_watch(img);	/* a writer already in waits for nothing */
		if (!time_reached(&img->retry_at) && !img->lost)
			return 0;	/* breaking still */
	}
	if (err) {
		uint64_t left = 0;
		for (size_t i = 0; i < a->nregions; i++)
			for (size_t p = 0; p < (a->regions[i].end - a->regions[i].start) / MD_PAGE; p++)
				left += a->regions[i].owner[p] == img->id;
		md__fallback(a, MD_FB_ERROR, left);
		md__log_once(151, "an image's writer gets in with %llu of its pages not made private (%s): "
			     "the guest may see them change (counted as error fallbacks)",
			     (unsigned long long)left, strerror(-err));
	}
	/* The pages are private now (or as many as could be), but a write
	 * from guest RAM begun before may still hold the file's (writes.c):
	 * tried again every 50 ms. A copy that failed is not a reason to let
	 * the writer's bytes into such a write. */
	if (!img->writes_before)
		img->writes_before = md__writes_mark(a) + 1;
	int write_running = !md__writes_ended(a, img->writes_before - 1);
	if (write_running) {
		break_watch(img);
		if (!time_reached(&img->retry_at) && !img->lost)
			return 0;
		/* A page or more of the write's: counted, as pages let go
		 * unprivatized are. */
		md__fallback(a, MD_FB_ERROR, 1);
		md__log_once(97, "an image's writer gets in while a write from guest RAM begun before "
			     "is still running: that write may carry the writer's bytes (counted as an "
			     "error fallback)");
	}
	/* The last look, before the lease is given back: the last part may
	 * have ended after the kernel let the writer in. */
	break_watch(img);
	img->writes_before = 0;
	view_drop(img);
	if (image_fd_ours(img) && fcntl(img->fd, F_SETLEASE, F_UNLCK) != 0)
		md__log_once(152, "could not give an image's lease back (%s): its writer waits out "
			     "fs.lease-break-time", strerror(errno));
	img->lease = MD_LEASE_NONE;
	__atomic_store_n(&a->breaking, a->breaking - 1, __ATOMIC_RELAXED);
	retry_later(img);
	md__count(a, MD_CTR_LEASE_BREAKS, 1);
	if (img->lost) {
		/* Counted apart, with the copies that failed: no counter of
		 * the statistics file's says "too late" alone. */
		md__fallback(a, MD_FB_ERROR, img->late);
		md__log_once(149, "AN IMAGE'S WRITER GOT IN BEFORE ITS LEASE BREAK WAS DONE: the kernel "
			     "took the lease back after fs.lease-break-time (%ld s) while the agent was "
			     "still making the image's pages private; %llu pages made private after "
			     "that may show the guest the writer's bytes (counted as error fallbacks)",
			     md__lease_break_s(a), (unsigned long long)img->late);
	} else if (!err && !write_running) {
		md__log_once(22, "an image's lease was broken (the image opened for writing, or the "
			     "agent's descriptor lost): its shared pages were made private");
	}
	return 0;
}

/* Breaks img's lease on our side: from here no read maps it, and every
 * page it mapped is made private (agent->lock held). */
static void start_break(struct md_agent *a, struct md__image *img)
{
	img->lease = MD_LEASE_BREAKING;
	__atomic_store_n(&a->breaking, a->breaking + 1, __ATOMIC_RELAXED);
	break_deadline(a, &img->retry_at);
	img->break_began = monotonic_s();
	img->lost = 0;
	img->unchecked = img->late = 0;
	img->private_at = 0;
	img->private_err = 0;
	/* The first part here; the agent's thread makes the rest at once
	 * (woken: this may be a VMM's thread, and the agent's may sleep a
	 * second), its lock let go between them. */
	if (finish_break(a, img) && a->thread_tid)
		syscall(SYS_tgkill, getpid(), a->thread_tid, a->lease_signal);
}

int md__image_fixed(const struct md__image *img)
{
	/* Only our own description holds the lease: a descriptor the VMM
	 * closed or put another file at (dup2) since the once-a-second look,
	 * or a lease being broken, says otherwise, and mapping from that
	 * number would show the guest another file. A lease alone is not
	 * enough: the number of one the VMM closed may be our own of another
	 * image now (the lowest free number, taken to lease that one). */
	return img->lease == MD_LEASE_HELD && fcntl(img->fd, F_GETLEASE) == F_RDLCK && image_fd_ours(img);
}

int md__image_held(struct md_agent *a, struct md__image *img)
{
	if (img->lease != MD_LEASE_HELD)
		return 0;
	if (md__image_fixed(img))
		return 1;
	/* With our descriptor still ours, the lease is being broken (a
	 * writer's open waits): its signal is on its way, and this only
	 * starts the break first, as md__image_lease_broken would. */
	if (!image_fd_ours(img))
		md__log_once(68, "an image's lease went with the agent's descriptor (closed or replaced "
			     "by the VMM): its pages were made private");
	start_break(a, img);
	return 0;
}

/* fd's lease is being broken (its signal), or any lease is (fd < 0: the
 * once-a-second look, in case a signal was lost: the kernel falls back to a
 * plain SIGIO when it cannot queue ours, and an owner changed by someone
 * else would send none; F_GETLEASE then shows the type the lease is being
 * broken to). */
void md__image_lease_broken(struct md_agent *a, int fd)
{
	md__agent_enter(a);
	for (size_t i = 0; i < a->nimages; i++) {
		struct md__image *img = &a->images[i];
		if (img->lease != MD_LEASE_HELD)
			continue;
		/* The once-a-second look also finds a lease gone with our
		 * descriptor (closed or replaced by the VMM). A signal is looked
		 * at the same way: it may be an old one, of a break finished
		 * meanwhile (a read saw it first) and the lease taken again. */
		if ((fd >= 0 && img->fd != fd) || (fcntl(img->fd, F_GETLEASE) == F_RDLCK && image_fd_ours(img)))
			continue;
		/* From here no read maps this image; every page it already
		 * mapped is made private before the writer may proceed. When
		 * memory is short, the agent's thread tries again every 50 ms
		 * (the lock let go meanwhile, so the VMM's reads, copied, and
		 * the scanner go on, and other images' breaks are answered)
		 * until the kernel would let the writer in anyway. */
		start_break(a, img);
	}
	md__agent_leave(a);
}

/* Walks of guest RAM's owners at most this often (seconds): under the
 * agent's lock, a millisecond for 4 GiB. */
#define IMAGES_WALK_S 10

/* Whether img holds a descriptor (leased or not, not breaking; where no
 * other could be opened, reopen 0, a lease) no read shared from for
 * image_idle_s. */
static int release_due(const struct md_agent *a, const struct md__image *img, time_t now, int reopen)
{
	return img->fd >= 0 && img->lease != MD_LEASE_BREAKING && (reopen || img->lease == MD_LEASE_HELD) &&
	       now - img->used >= (time_t)a->image_idle_s;
}

/* Spares of files the VMM no longer holds at the number it had (closed:
 * an ISO ejected, firmware read): nothing will read them again through
 * it, and each would keep a deleted file's space. (agent->lock held) */
static void spares_unheld_close(struct md_agent *a)
{
	for (size_t i = 0; i < a->nspares; i++) {
		struct md__spare *sp = &a->spares[i];
		if (sp->fd >= 0 && !md__same_file(sp->vmm_fd, sp->dev, sp->ino))
			spare_close(sp);
	}
}

/* Walks guest RAM's owners: marks 2 in state[] each image (1: one looked
 * for) a page is mapped from, until the left looked for are all found
 * (usually at once: an image the guest still holds pages of), or all of
 * guest RAM walked. (agent->lock held) */
static void images_mapped(const struct md_agent *a, unsigned char *state, size_t left)
{
	for (size_t i = 0; i < a->nregions && left; i++) {
		const struct md__region *r = &a->regions[i];
		for (size_t p = 0; p < (r->end - r->start) / MD_PAGE && left; p++) {
			uint32_t id = r->owner[p];
			if (id && id <= a->nimages && state[id - 1] == 1) {
				state[id - 1] = 2;
				left--;
			}
		}
	}
}

/* Lets img go, no page of guest RAM mapped from it: its view, its lease
 * and its descriptor (where /proc is gone, reopen 0, the descriptor stays:
 * no other could be had). None can map it while we hold the agent's lock
 * (reads map under it; a scanner merge onto it checks the lease after
 * mapping aside, md__image_fixed). The record stays: ids are indices.
 * Returns 1 if the descriptor went. */
static int image_let_go(struct md_agent *a, struct md__image *img, int reopen)
{
	/* Not while a write from guest RAM begun before is running: its
	 * pages may still be this image's page cache (made private since: an
	 * unmerge, a discard, MADV_UNMERGEABLE, which leave no page mapped
	 * from it), and a writer let in would put its bytes into that write,
	 * as a break waits for (writes.c). Let go at a later look, once the
	 * writes begun by the first look have ended (not all writes: under a
	 * steady stream of them, some are always running); a read from the
	 * image since then takes the mark anew. */
	if (img->lease == MD_LEASE_HELD) {
		if (!img->idle_writes || img->idle_used != img->used) {
			img->idle_writes = md__writes_mark(a) + 1;
			img->idle_used = img->used;
		}
		if (!md__writes_ended(a, img->idle_writes - 1))
			return 0;
	}
	img->idle_writes = 0;
	view_drop(img);
	int ours = image_fd_ours(img);
	/* Refused (the file handed to another owner since: EACCES), the
	 * lease outlives the close while a mapping of the file does. */
	if (ours && img->lease == MD_LEASE_HELD && fcntl(img->fd, F_SETLEASE, F_UNLCK) != 0)
		md__log_once(159, "could not give back the lease of an image let go (%s): a writer of it may "
			     "wait out fs.lease-break-time", strerror(errno));
	img->lease = MD_LEASE_NONE;
	img->retry_at = (struct timespec){ 0, 0 };
	if (ours && !reopen)
		return 0;
	if (ours)
		close(img->fd);
	img->fd = -1;
	probe_forget(a, img);
	return 1;
}

void md__images_release_idle(struct md_agent *a)
{
	time_t now = monotonic_s();
	/* Where /proc is gone (a chroot), no descriptor of an image could be
	 * had again: its own stays, only its lease goes. */
	int reopen = access("/proc/self/fd", F_OK) == 0;
	md__agent_enter(a);
	spares_unheld_close(a);
	size_t idle = 0;
	for (size_t i = 0; i < a->nimages; i++)
		idle += release_due(a, &a->images[i], now, reopen);
	time_t every = a->image_idle_s < IMAGES_WALK_S ? (time_t)a->image_idle_s : IMAGES_WALK_S;
	unsigned char *state = idle && now - a->images_walked >= every ? calloc(a->nimages, 1) : NULL;
	if (!state)
		goto leave;
	a->images_walked = now;
	for (size_t i = 0; i < a->nimages; i++)
		state[i] = (unsigned char)release_due(a, &a->images[i], now, reopen);
	images_mapped(a, state, idle);
	for (size_t i = 0; i < a->nimages; i++) {
		if (state[i] == 1 && image_let_go(a, &a->images[i], reopen))
			md__log_once(115, "an image no page of guest RAM maps any more was let go (its lease "
				     "and descriptor); a later read leases it again");
	}
	free(state);
leave:
	md__agent_leave(a);
}

/* Our descriptors of images count against the VMM's RLIMIT_NOFILE: one
 * kept for every image the guest holds a page of (a guest reading hundreds
 * of files through virtio-9p) left the VMM's own opens failing with
 * EMFILE. They are kept to an eighth of its soft limit, at least this
 * many; the limit is read each time, as the VMM may raise it later (QEMU
 * does at its start). */
#define IMAGE_FDS_MIN 4

static int by_use(const void *x, const void *y, void *images)
{
	const struct md__image *img = images;
	time_t ux = img[*(const size_t *)x].used, uy = img[*(const size_t *)y].used;
	return ux < uy ? -1 : ux > uy;
}

/* Whether another image may have a descriptor of ours. Past the cap, the
 * images no page of guest RAM maps are let go, least lately read first,
 * down to three quarters of it (a walk of guest RAM's owners each time
 * would cost a millisecond per 4 GiB); if that leaves no room, the
 * caller's read is copied, and no walk is tried again for a second.
 * (agent->lock held) */
static int image_fds_room(struct md_agent *a)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
		return 1;
	size_t cap = rl.rlim_cur / 8 > IMAGE_FDS_MIN ? (size_t)(rl.rlim_cur / 8) : IMAGE_FDS_MIN;
	size_t held = image_fds(a);
	if (held < cap)
		return 1;
	/* Where /proc is gone (a chroot), an image's descriptor can only be
	 * the spare kept of its file, open already: taking it opens none. */
	if (access("/proc/self/fd", F_OK) != 0)
		return 1;
	time_t now = monotonic_s();
	if (a->image_fds_full_at && now - a->image_fds_full_at < 1)
		return 0;
	unsigned char *state = calloc(a->nimages, 1);
	size_t *order = calloc(a->nimages, sizeof(*order)), n = 0;
	if (state && order) {
		for (size_t i = 0; i < a->nimages; i++)
			state[i] = a->images[i].fd >= 0 && a->images[i].lease != MD_LEASE_BREAKING;
		for (size_t i = 0; i < a->nimages; i++)
			n += state[i];
		images_mapped(a, state, n);
		n = 0;
		for (size_t i = 0; i < a->nimages; i++)
			if (state[i] == 1)
				order[n++] = i;
		qsort_r(order, n, sizeof(*order), by_use, a->images);
		size_t keep = cap - cap / 4;
		for (size_t k = 0; k < n && (k == 0 || held > keep); k++)
			held -= (size_t)image_let_go(a, &a->images[order[k]], 1);
	}
	free(state);
	free(order);
	if (held < cap) {
		md__log_once(128, "the agent holds as many descriptors of images as it may (%zu, an "
			     "eighth of the VMM's RLIMIT_NOFILE): images no page of guest RAM maps are "
			     "let go early", cap);
		return 1;
	}
	a->image_fds_full_at = now;
	md__log_once(127, "the agent holds as many descriptors of images as it may (%zu, an eighth of "
		     "the VMM's RLIMIT_NOFILE), every one of them mapped into guest RAM: reads of other "
		     "images are copied", cap);
	return 0;
}

void md__images_uid_change(struct md_agent *a, uid_t fsuid)
{
	MD_NOCANCEL_SCOPE();	/* a VMM's call (agent.c) */
	/* Root keeps CAP_LEASE: nothing to do for uid 0, or no change. */
	if (fsuid == (uid_t)-1 || fsuid == 0 || geteuid() != 0)
		return;
	md__agent_enter(a);
	a->lease_uid = fsuid;
	for (size_t i = 0; i < a->nimages; i++) {
		struct md__image *img = &a->images[i];
		struct stat st;
		/* Only the file's owner (or CAP_LEASE, which root loses with
		 * its uid) may give a lease back, F_UNLCK included: given
		 * back now, or every writer of the file would wait the
		 * kernel's lease-break-time. */
		if (img->lease != MD_LEASE_HELD || !image_fd_ours(img) || fstat(img->fd, &st) != 0 ||
		    st.st_uid == fsuid)
			continue;
		md__log_once(108, "the VMM gives root up: the leases on images it does not own as its "
			     "new user are given back, their pages made private");
		start_break(a, img);
		/* Where leases never time out, a break left waiting would
		 * outlast our right to give the lease back: it ends with the
		 * wait below. */
		if (img->lease == MD_LEASE_BREAKING && img->retry_at.tv_sec == NO_DEADLINE) {
			clock_gettime(CLOCK_MONOTONIC, &img->retry_at);
			img->retry_at.tv_sec += 2;
		}
	}
	md__agent_leave(a);
	/* A break that waits (a write from guest RAM in flight, memory short)
	 * must end while the lease can still be given back: up to 2 s here,
	 * on the VMM's thread, before its call. */
	for (int i = 0; i < 200 && md__image_breaks_retry(a); i++)
		usleep(10000);
}

void md__images_uid_changed(struct md_agent *a)
{
	MD_NOCANCEL_SCOPE();	/* a VMM's call (agent.c) */
	md__agent_enter(a);
	a->lease_uid = (uid_t)-1;	/* the kernel's owner check holds from here */
	md__agent_leave(a);
}

int md__image_breaks_retry(struct md_agent *a)
{
	md__agent_enter(a);
	for (size_t i = 0; i < a->nimages && a->breaking; i++)
		while (a->images[i].lease == MD_LEASE_BREAKING && finish_break(a, &a->images[i])) {
			/* A part made, more to come: the VMM's calls get in. The
			 * images may move meanwhile (a new one), hence the index;
			 * another thread's retry may make parts of this break
			 * too, from the same place (private_at). */
			md__agent_let_in(a);
		}
	int left = a->breaking;
	md__agent_leave(a);
	return left;
}

/* Spares are few: a VMM holds its images and little else open read-only. */
#define SPARES_MAX 64

void md__images_before_chroot(struct md_agent *a)
{
	MD_NOCANCEL_SCOPE();	/* a VMM's call (agent.c) */
	struct md__spare found[SPARES_MAX];
	size_t n = 0;
	int more = 0;
	/* Core dumps keep guest RAM shared after it (md__coredump_file_pages,
	 * which needs /proc): set now, for RAM not advised MADV_DONTDUMP by
	 * then (QEMU chroots once its RAM is set up). */
	int dumped = 0;
	md__agent_enter(a);
	for (size_t i = 0; i < a->nregions && !dumped; i++)
		dumped = !(a->regions[i].advice & MD_ADV_DONTDUMP);
	md__agent_leave(a);
	if (dumped)
		md__coredump_file_pages();
	/* Opened without the agent's lock (an open may wait on a server), of
	 * files whose leases could be trusted. The directory is closed
	 * before the chroot: a descriptor of one outside the new root would
	 * be a way out of it. */
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		char *end;
		long v = strtol(e->d_name, &end, 10);
		struct stat st;
		struct statfs sf;
		int fl, fd = (int)v;
		char link[32], name[8];
		ssize_t l;
		/* Not a memfd: memdedupd's pools (ours, and another user's
		 * once the VMM gives root up) are none of the VMM's images. */
		if (*end || end == e->d_name || v < 0 || v > INT_MAX || fd == dirfd(d) || fstat(fd, &st) != 0 ||
		    !S_ISREG(st.st_mode) || (fl = fcntl(fd, F_GETFL)) < 0 || (fl & O_ACCMODE) != O_RDONLY ||
		    (fl & O_PATH) || fd_is_ours(fd) || fstatfs(fd, &sf) != 0 ||
		    !leases_see_writers((unsigned long)sf.f_type) ||
		    (snprintf(link, sizeof(link), "/proc/self/fd/%d", fd),
		     (l = readlink(link, name, sizeof(name))) < 0) ||
		    (l >= 7 && memcmp(name, "/memfd:", 7) == 0))
			continue;
		size_t i = 0;
		while (i < n && (found[i].dev != st.st_dev || found[i].ino != st.st_ino))
			i++;
		if (i < n)
			continue;
		if (n == SPARES_MAX) {
			more = 1;
			break;
		}
		int own_fd = proc_open_own(fd, &st);
		if (own_fd >= 0)
			found[n++] = (struct md__spare){ st.st_dev, st.st_ino, own_fd, fd };
	}
	closedir(d);
	if (more)
		md__log_once(121, "the VMM holds more than %d files open read-only as it chroots: "
			     "reads of the rest cannot be shared after it", SPARES_MAX);
	md__agent_enter(a);
	for (size_t i = 0; i < n; i++) {
		/* An image with a description of ours already keeps it; a file
		 * a spare is kept of already (a second chroot) needs none. */
		struct md__image *img = md__image_find(a, found[i].dev, found[i].ino);
		int have = img && image_fd_ours(img);
		for (size_t k = 0; k < a->nspares && !have; k++)
			have = a->spares[k].fd >= 0 && a->spares[k].dev == found[i].dev &&
			       a->spares[k].ino == found[i].ino;
		if (!have && !a->spares)
			a->spares = calloc(SPARES_MAX, sizeof(*a->spares));
		/* The slot of a spare taken or closed since serves again. */
		size_t slot = 0;
		while (a->spares && slot < a->nspares && a->spares[slot].fd >= 0)
			slot++;
		if (!have && a->spares && slot < SPARES_MAX) {
			a->spares[slot] = found[i];
			a->nspares += slot == a->nspares;
			continue;
		}
		close(found[i].fd);
	}
	md__agent_leave(a);
}

void md__images_spares_drop(struct md_agent *a)
{
	MD_NOCANCEL_SCOPE();	/* a VMM's call (agent.c) */
	md__agent_enter(a);
	for (size_t i = 0; i < a->nspares; i++)
		spare_close(&a->spares[i]);
	a->nspares = 0;
	md__agent_leave(a);
}

void md__images_free(struct md_agent *a)
{
	for (size_t i = 0; i < a->nimages; i++) {
		view_drop(&a->images[i]);
		if (!image_fd_ours(&a->images[i]))
			continue;
		if (a->images[i].lease != MD_LEASE_NONE)
			fcntl(a->images[i].fd, F_SETLEASE, F_UNLCK);
		close(a->images[i].fd);
	}
	free(a->images);
	a->images = NULL;
	a->nimages = a->images_cap = 0;
	for (size_t i = 0; i < a->nspares; i++)
		spare_close(&a->spares[i]);
	free(a->spares);
	a->spares = NULL;
	a->nspares = 0;
	pthread_mutex_lock(&a->probe_lock);
	free(a->probed);
	a->probed = NULL;
	a->nprobed = a->probed_cap = 0;
	pthread_mutex_unlock(&a->probe_lock);
}
