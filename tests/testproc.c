/*
 * testproc.c - a stand-in for a VMM, driven line by line on stdin, run with
 * the agent preloaded. It maps "guest RAM", marks it mergeable, reads images
 * into it through the ordinary libc calls, writes, hashes, and answers one
 * line per command on stdout:
 *   map NPAGES [huge]     -> base address (mmap + MADV_MERGEABLE; huge: on a 2 MiB boundary)
 *   mapuffd NPAGES        -> as map, but registered with a userfaultfd of its own
 *                           (write-protect mode) before MADV_MERGEABLE
 *   open PATH [rw]        -> fd
 *   pipe                  -> read end of a pipe holding 64 KiB
 *   read FD OFF LEN DOFF CHUNK  -> pread in CHUNK pieces; total or -errno
 *   reread FD OFF1 OFF2 LEN DOFF -> two preads into the same RAM; the second's result
 *   rawread FD OFF LEN DOFF -> the pread system call, unseen by the agent
 *   chkread FD OFF LEN DOFF BUFLEN -> __pread_chk, as a fortified build's pread
 *   errnoimage FD WFD     -> errno kept by calls that succeed over image pages
 *   remapsame DOFF LEN    -> 0 if an mremap to the same size answered the same place
 *   sysread FD OFF LEN DOFF -> pread through the C library's syscall(2)
 *   preadv FD OFF DOFF LEN [heap] -> preadv of two halves (one on the heap)
 *   write DOFF BYTE       -> ok   (base[DOFF] = BYTE)
 *   hash DOFF LEN         -> FNV-1a of base[DOFF..+LEN)
 *   writers N MS DOFF LEN [twin|meet] -> threads write and check tagged pages: "ok" or
 *                           "lost K"; twin: each write goes to a page of the first
 *                           half and its twin in the second, with short pauses, so
 *                           pages keep becoming equal (and merged) while written
 *                           (MD_TESTPROC_DROP_WRITE=K in the environment: the
 *                           first writer's K-th write is lost on purpose); meet:
 *                           as twin, and a thread more writes the last word of
 *                           every page (and its twin) it finds frozen by a merge,
 *                           as pagemap's write-protect bit shows it
 *   writewipe N MS DOFF LEN WMS -> as writers (not twin), with MADV_WIPEONFORK over
 *                           their range after WMS ms: its result, then "ok" or "lost K"
 *   exhaust / release     -> fill the process's mappings up to the limit, undo
 *   forkmapped DOFF -> mapped|unmapped: whether a child made by fork() maps it
 *   advise DOFF LEN ADVICE [raw] -> madvise result (raw: through syscall(2)) (dontneed, dontneedlocked, dontfork, dofork,
 *                           dontdump, dodump,
 *                           guardinstall, guardremove, mergeable, unmergeable); a call that succeeds
 *                           and changed errno says "0 errno E"
 *   guarded DOFF N        -> how many of the N pages at DOFF a read through the kernel
 *                           (process_vm_readv) finds guarded (MADV_GUARD_INSTALL), or -errno
 *   noguard               -> a seccomp filter that refuses MADV_GUARD_INSTALL and
 *                           MADV_GUARD_REMOVE (madvise, process_madvise) with EINVAL,
 *                           as a kernel before Linux 6.13 does: 0 or -errno
 *   unmap DOFF HEXLEN     -> munmap result (0 or -errno)
 *   uffdop wp|zero|copy|move OFF LEN [SRCOFF] -> 0 or -errno of UFFDIO_WRITEPROTECT (taking the
 *                           protection off), UFFDIO_ZEROPAGE or UFFDIO_COPY (of zeroes)
 *                           on the RAM's range by a userfaultfd that registered nothing
 *                           (move: UFFDIO_MOVE of the RAM's pages at SRCOFF there)
 *   dlopen deep|ns|plain|look PATH -> 0 once PATH is loaded with RTLD_DEEPBIND, into a
 *                           namespace of its own (dlmopen) or plainly (look: RTLD_DEEPBIND
 *                           with RTLD_NOLOAD, found loaded already); else "-1 WHY"
 *   deepdiscard DOFF LEN  -> that library's madvise(MADV_DONTNEED) of LEN bytes at DOFF
 *   collapse DOFF LEN     -> madvise(MADV_COLLAPSE) result (0 or -errno)
 *   wipe DOFF LEN         -> madvise(MADV_WIPEONFORK) result (0 or -errno)
 *   seal DOFF LEN [FLAGS] -> mseal's result through syscall(2) (0 or -errno)
 *   mlock2 DOFF LEN FLAGS -> mlock2's result (0 or -errno)
 *   uringwait             -> liburing's io_uring_enter submitting nothing (no ring: -EBADF)
 *   collapsewatch DOFF    -> 0 or -errno: a seccomp filter from now on fails with EXDEV
 *                           an madvise(MADV_COLLAPSE) system call starting at DOFF
 *   posixadvise DOFF LEN ADVICE -> posix_madvise's result (an error number, not -1) of
 *                           the advice numbered ADVICE, and "errno E" if it changed errno
 *   pmadvise DOFF LEN N STEP ADVICE sym|raw [own|self|thread|parent]
 *                        -> process_madvise of N ranges of LEN bytes at DOFF, DOFF+STEP,
 *                           ... (ADVICE as advise's, or free): the bytes advised, and
 *                           "errno E" if the call changed errno, or -errno; sym: the C
 *                           library's function, raw: syscall(2); the pidfd: own
 *                           (pidfd_open of this process, the default), self
 *                           (PIDFD_SELF_THREAD_GROUP), thread (this thread's,
 *                           PIDFD_THREAD), parent (another process's)
 *   pmadvbad DOFF         -> "E1 E2 E3 E4 E5 E6": -errno of process_madvise(MADV_DONTNEED) on
 *                           this process of the page at DOFF and one the kernel refuses:
 *                           past the address space, of a negative length; with flags;
 *                           with 1025 iovecs; of iovecs that cannot be read; of the page
 *                           after an empty range off a page's start
 *   protect DOFF LEN ro|rw|PROT -> mprotect result (0 or -errno)
 *   nosig PATH            -> how many read leases on PATH (the agent's) were
 *                           made to send no signal when broken (F_SETOWN 0)
 *   vmchild clone|sys|clone3 -> 0 once a child sharing our memory (CLONE_VM|CLONE_VFORK),
 *                           made by glibc's clone(), syscall(SYS_clone) or
 *                           syscall(SYS_clone3), exited 0 (else -errno, or 1)
 *   forkstorm N KIND      -> how many of N children made by KIND (raw: syscall(SYS_fork),
 *                           _Fork, clone) did not exit within 2 s, each unmapping a page
 *                           while a thread of the parent binds the RAM's first page to
 *                           node 0 over and over (mbind)
 *   fork DOFF FD [raw|_Fork|clone|clone3] -> the child's read of 16 pages of FD into RAM at DOFF:
 *                           "RESULT HASH FILE" of the first, FILE 1 if it is mapped from
 *                           a file (shared at read time); raw: a child made by
 *                           syscall(SYS_fork) (clone3: SYS_clone3, flags 0), _Fork: by
 *                           glibc's _Fork() (clone: glibc's clone()), none
 *                           running the atfork handlers; the child then advises
 *                           the page MADV_MERGEABLE
 *   closefd FD            -> close result (0 or -errno)
 *   nofile N              -> setrlimit's result (0 or -errno): RLIMIT_NOFILE's soft
 *                           limit set to N, the hard one kept
 *   scatter FD OFF DOFF N -> one preadv of N pages into every other page of
 *                           RAM: its result, the read system calls it took,
 *                           1 if the content is the file's
 *   hugemap               -> MADV_MERGEABLE's result on 2 MiB of fresh
 *                           hugetlb memory (1: none could be mapped)
 *   mergehole FD          -> MADV_MERGEABLE's result over a range with a hole,
 *                           and 1 if a read into shared memory mapped there
 *                           later reached the shared memory
 *   mapfile DOFF LEN FD [noreplace|moved] -> 0 or -errno of a private MAP_FIXED
 *                            (or MAP_FIXED_NOREPLACE) mapping of FD over guest RAM
 *                            (moved: made elsewhere, moved there by mremap's MREMAP_FIXED)
 *   grow|shrink DOFF LEN NEWLEN -> where guest RAM resized by mremap is now (an offset
 *                           from the RAM: grow may move it), or -errno
 *   moveram DOFF LEN      -> 0 or -errno of an mremap moving guest RAM away
 *   daemonize             -> the pid of a child that takes the commands from
 *                           now on (the parent waits for it), as QEMU's -daemonize
 *   fill DOFF NPAGES SEED -> ok: page i gets content made of (SEED, i)
 *   zero DOFF NPAGES      -> ok: pages made present, then zero
 *   copy SOFF DOFF LEN    -> ok: memcpy inside guest RAM (a guest copying a
 *                           file it read, say into tmpfs)
 *   iosetup               -> io_setup's result (libaio's, found by name as QEMU's
 *                           linux-aio finds it: the agent's when preloaded)
 *   uring poll            -> submitted: a ring like QEMU's event loop's (a poll
 *                           on a pipe, a timeout, a no-op) through liburing
 *   uring read|write FD OFF LEN DOFF -> the read's (write's) result, through liburing
 *   uring register        -> io_uring_register_buffers of the RAM's first page
 *   uring dontneed|dontneedlocked|dontneed64 0 0 LEN DOFF -> the result of a MADVISE entry
 *                           discarding LEN bytes at DOFF, through liburing (dontneed64:
 *                           its length in the 64-bit off, Linux 6.5's, len 0)
 *   rawuring setup|sqpoll|read FD OFF LEN DOFF -> as uring, but through the C
 *                           library's syscall(2) and the kernel's ring layout, as
 *                           Rust's io-uring crate does (setup: a ring set up and
 *                           mapped, nothing submitted; sqpoll: one the kernel's
 *                           thread polls, set up only)
 *   rdma LIB [iova2|rereg] -> 0 if ibv_reg_mr (or ibv_reg_mr_iova2, ibv_rereg_mr) of the RAM's
 *                           first page, looked up by name after LIB is loaded
 *                           (a stand-in for libibverbs), returned a region, or -errno
 *   mergeany get|set N|rawset N -> kernel KSM over the whole process (prctl
 *                           PR_GET/SET_MEMORY_MERGE): the state, or the result of
 *                           setting it through the C library or the system call
 *   vfio                  -> -errno of VFIO_IOMMU_MAP_DMA on no descriptor
 *   sgio OFF LEN|heap|many|unreadable [sys] -> -errno of SG_IO on no descriptor, reading
 *                            LEN bytes into guest RAM at OFF (through an iovec), or into
 *                            a buffer of the heap; many: 65 iovecs of a page from OFF;
 *                            unreadable: an iovec array in PROT_NONE memory
 *   vdpa                  -> -errno of VHOST_VDPA_GET_DEVICE_ID on no descriptor
 *   uffd OFF LEN missing|wp|bad -> 0 or -errno of registering the RAM's range with a
 *                           userfaultfd of its own (kept open), as QEMU's postcopy
 *                           migration (missing) or background snapshot (wp) does
 *                           (bad: a mode the kernel refuses)
 *   dwrite PATH DOFF      -> 0 once a thread's pwritev with O_DIRECT to PATH of
 *                           the RAM's page at DOFF and a page of its own waits for
 *                           the second (a userfaultfd holds it back): the kernel
 *                           holds the first meanwhile, as a device's DMA would
 *   dwritego              -> that write's result, once its second page is given
 *   badptr FD             -> "E1 E2 E3": the errnos of preadv from FD, UFFDIO_REGISTER
 *                           and UFFDIO_UNREGISTER given a pointer that cannot be read
 *   uffdoff OFF LEN       -> 0 or -errno of unregistering the range from the last
 *                           of those userfaultfds that registered (the migration or
 *                           snapshot is over)
 *   holes DOFF NPAGES MS  -> "ITERATIONS PRESENT": for MS ms, fill the pages (two equal
 *                           quarters, a half new each time), wait 0-20 ms, discard them (MADV_DONTNEED), wait
 *                           30 ms and count the pages pagemap shows there: holes the
 *                           VMM made that something filled in behind its back
 *   freemadvise [locked]  -> 0: from now on every free() discards a page of its own
 *                           with madvise(MADV_DONTNEED) first, as jemalloc or
 *                           tcmalloc give memory back (the agent's free()s too);
 *                           locked: malloc, calloc, realloc and free hold one
 *                           lock, across that madvise too, as tcmalloc's
 *   allocstorm MS         -> 0: a thread allocates and frees (so discards, above)
 *                           for MS ms, in the background
 *   exec                  -> ok, then the commands go to this program run again
 *                           (execve, as QEMU's cpr-exec): no RAM, no agent yet
 *   daemon                -> glibc's daemon(1, 1): the parent exits at once; the
 *                           child says its pid and takes the commands from now on
 *   forkkeep              -> the pid of a child made by fork() that waits for kid's
 *                           commands (one at a time), its RAM a copy of this one's
 *   kid unfilled OFF PAGES SEED FIRST | kid hash DOFF LEN | kid quit
 *                        -> the child's answer, as this process's own command's
 *                           (quit: it exits, waited for: its exit status)
 *   cancelinside FD DOFF LEN -> "HOW GOT MAIN": a thread's pread of LEN bytes of FD
 *                           (from 0) into RAM at DOFF, cancelled (pthread_cancel) while
 *                           inside the agent (held there by the allocator's lock, as
 *                           "freemadvise locked" makes it, taken here), then this
 *                           thread's pread of the next LEN bytes to DOFF+LEN: HOW
 *                           cancelled|returned|stuck (not joined within 3 s), GOT the
 *                           thread's pread's result (-1000 if none), MAIN this one's;
 *                           a pread that waits for good is killed by SIGALRM in 5 s
 *   cancelblock read|write ram|heap [after] -> cancelled|stuck|changed: a thread's
 *                           preadv2 (pwritev2) at the file position on an empty (full)
 *                           pipe, into (from) a page of RAM or of the heap, cancelled
 *                           once blocked in it; stuck: not ended within 2 s (the pipe
 *                           then fed or drained so that it ends); after: the thread
 *                           first makes the same call of /dev/zero (/dev/null), which
 *                           returns; changed: its cancel state or type then was not
 *                           the one it had before (enabled, deferred)
 *   dontdump DOFF LEN     -> madvise(MADV_DONTDUMP) result (0 or -errno)
 *   cancelfork FD DOFF LEN -> "HOW MAIN": a thread with a cancel pending forks (the
 *                           child exits at once), then this thread's pread of LEN bytes
 *                           of FD into RAM at DOFF: HOW forked (the thread cancelled
 *                           after its fork returned) or cancelled (inside the fork) or
 *                           stuck, MAIN the pread's result; SIGALRM in 5 s as cancelinside
 *   quit
 */
#include <dlfcn.h>
#include <errno.h>
#include <scsi/sg.h>
#include <grp.h>
#include <fcntl.h>
#include <limits.h>
#include <liburing.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#ifndef UFFDIO_MOVE
#define UFFDIO_MOVE _IOC(_IOC_READ | _IOC_WRITE, UFFDIO, 0x05, 40)	/* Linux 6.8's struct uffdio_move */
#endif
#include <linux/vfio.h>
#include <linux/vhost.h>
#include <linux/mempolicy.h>
#include <poll.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102	/* Linux 6.13's, which older headers lack */
#define MADV_GUARD_REMOVE 103
#endif

static char *base;
static size_t base_len;
static int last_uffd = -1;
static int (*deep_discard)(void *p, size_t len);	/* libdeepbind-stub.so's (dlopen, below) */
static void **extra;
static size_t nextra;

static uint64_t fnv(const unsigned char *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

struct writer {
	size_t first, npages;
	size_t twin;	/* pages from a page to its twin, 0: none */
	int ms;
	unsigned seed;
	uint64_t id;	/* in every value written, so that each is unique */
	uint64_t drop;	/* this write (1: the first) is not stored in its page */
	long lost;
	int meet;	/* the last word of each page is meeter_main's */
};

static volatile uint64_t *word_at(const struct writer *w, size_t p, size_t twin)
{
	return (volatile uint64_t *)(base + (w->first + p + twin) * 4096);
}

/* Words of pages [from, from + n) (and their twins) that do not hold the
 * last value written there. */
static long writer_check(const struct writer *w, const uint64_t *last, size_t from, size_t n)
{
	long lost = 0;
	for (size_t p = from; p < from + n; p++)
		for (size_t i = 0; i < 512; i++) {
			uint64_t want = last[p * 512 + i];
			if (want && word_at(w, p, 0)[i] != want)
				lost++;
			if (want && w->twin && word_at(w, p, w->twin)[i] != want)
				lost++;
		}
	return lost;
}

/* Meeting writes (meet): the last word of page p and of its twin, which
 * no sweep writes, that do not hold met[p], the value last put there. */
static long meet_check(const struct writer *w, const uint64_t *met)
{
	long lost = 0;
	for (size_t p = 0; p < w->npages; p++)
		if (met[p])
			lost += (word_at(w, p, 0)[511] != met[p]) + (word_at(w, p, w->twin)[511] != met[p]);
	return lost;
}

/* The meeting thread (meet): a merge freezes the pages it replaces
 * (userfaultfd's write-protection) for the tens of microseconds it
 * compares and maps them, and paced writes over whole pages meet few (a
 * page written is skipped by the scanner until it stays, and merged once
 * its writer has left it). This one reads pagemap over all of w's pages
 * (first half and twins) every few tens of microseconds, and gives each
 * page it finds frozen, as it is, a unique value in its last word, and
 * its twin the same, what they held checked first, as every word is. The
 * write waits for the merge, then lands in the page that replaced it: a
 * merge that let a writer in between its compare and its mapping loses
 * it. */
static void *meeter_main(void *arg)
{
	struct writer *w = arg;
	size_t len = w->npages * sizeof(uint64_t);
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t *met = calloc(w->npages, sizeof(uint64_t)), *ent = malloc(len), n = 0;
	struct timespec t0, t, pause = { 0, 20000 };
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >= w->ms)
			break;
		for (int half = 0; half < 2; half++) {
			uintptr_t at = (uintptr_t)word_at(w, 0, half ? w->twin : 0);
			if (pread(pm, ent, len, (off_t)(at / 4096 * sizeof(uint64_t))) != (ssize_t)len)
				continue;
			for (size_t p = 0; p < w->npages; p++) {
				if (!((ent[p] >> 57) & 1))	/* PM_UFFD_WP */
					continue;
				if (met[p])
					w->lost += (word_at(w, p, 0)[511] != met[p]) +
						   (word_at(w, p, w->twin)[511] != met[p]);
				uint64_t v = ++n | w->id << 48;
				word_at(w, p, half ? w->twin : 0)[511] = v;	/* the frozen one first */
				word_at(w, p, half ? 0 : w->twin)[511] = v;
				met[p] = v;
			}
		}
		nanosleep(&pause, NULL);
	}
	w->lost += meet_check(w, met);
	close(pm);
	free(ent);
	free(met);
	return NULL;
}

static void shuffle(uint32_t *a, size_t n, unsigned *seed)
{
	for (uint32_t i = 0; i < n; i++)
		a[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = ((size_t)rand_r(seed) << 16 ^ (size_t)rand_r(seed)) % (i + 1);
		uint32_t x = a[i];
		a[i] = a[j];
		a[j] = x;
	}
}

/* Each writer owns every n-th page and writes unique values into its words
 * in a random order. A write lost to a merge would be hidden if the word
 * were written again before being checked, so each word is written at most
 * once per sweep, and the sweep's words are all checked before the next
 * sweep begins; everything is checked again at the end. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	size_t words = 4096 / 8;
	uint64_t *last = calloc(w->npages * words, sizeof(uint64_t));
	size_t swept = w->meet ? words - 1 : words;
	/* Twin mode: one eighth of the pages at a time, one sweep spread over
	 * the 200 ms the window stays, so the rest settle, get merged, and
	 * are written again later (copy-on-write of merged pages, writers
	 * meeting merges). */
	size_t win = w->twin && w->npages >= 8 ? w->npages / 8 : w->npages;
	size_t nw = win * swept, done = nw, from = 0;	/* nw: no sweep yet */
	uint32_t *order = malloc(nw * sizeof(*order));
	struct timespec pause = { 0, 200000 };
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	uint64_t n = 0;
	long window = -1;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		long ms_now = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
		if (ms_now >= w->ms)
			break;
		long now = w->twin ? ms_now / 200 : window + (done == nw);
		if (now != window) {
			/* Each writer owns its pages: nothing writes them now. */
			if (window >= 0)
				w->lost += writer_check(w, last, from, win);
			window = now;
			from = w->twin ? (size_t)(window % 8) * win % w->npages : 0;
			shuffle(order, nw, &w->seed);
			done = 0;
		}
		size_t upto = done + 1000;
		if (w->twin)	/* paced to end a little before the window moves */
			upto = (size_t)(ms_now % 200 + 1) * nw / 180;
		for (; done < upto && done < nw; done++) {
			size_t p = from + order[done] / swept, i = order[done] % swept;
			uint64_t v = ++n | w->id << 48;
			if (n != w->drop)
				word_at(w, p, 0)[i] = v;
			if (w->twin)
				word_at(w, p, w->twin)[i] = v;
			last[p * words + i] = v;
		}
		if (w->twin)
			nanosleep(&pause, NULL);
	}
	w->lost += writer_check(w, last, 0, w->npages);
	free(order);
	free(last);
	return NULL;
}

static void cmd_writers(int n, int ms, size_t doff, size_t len, int twin, int meet, int wipe_ms)
{
	pthread_t th[17];
	struct writer w[17];
	if (n > 16)
		n = 16;
	size_t half = twin ? len / 4096 / 2 : 0;
	size_t per = (twin ? half : len / 4096) / (size_t)n;
	/* A test of the check itself: the first writer's write number
	 * MD_TESTPROC_DROP_WRITE is not stored (in twin mode, the twin's is),
	 * a lost write the answer must report. */
	const char *drop = getenv("MD_TESTPROC_DROP_WRITE");
	/* Values and orders of this process's own: two processes' writers
	 * alike would write the same values, and a page shown another
	 * process's content would pass the check (review). */
	uint64_t salt = ((uint64_t)getpid() & 0x7ff) << 5;
	for (int i = 0; i < n; i++) {
		w[i] = (struct writer){ doff / 4096 + (size_t)i * per, per, half, ms,
					((unsigned)i + 1) ^ (unsigned)getpid() * 2654435761u,
					(uint64_t)i + 1 + salt, i == 0 && drop ? strtoull(drop, NULL, 10) : 0, 0, meet };
		pthread_create(&th[i], NULL, writer_main, &w[i]);
	}
	if (meet) {	/* the last word of every page of the first half, and its twin */
		w[n] = (struct writer){ doff / 4096, half, half, ms, 0, (uint64_t)n + 1 + salt, 0, 0, 1 };
		pthread_create(&th[n], NULL, meeter_main, &w[n]);
	}
	if (wipe_ms >= 0) {	/* "writewipe": the advice while they write */
		struct timespec d = { wipe_ms / 1000, (long)(wipe_ms % 1000) * 1000000 };
		nanosleep(&d, NULL);
		printf("%d ", madvise(base + doff, len, MADV_WIPEONFORK) == 0 ? 0 : -errno);
	}
	long lost = 0;
	for (int i = 0; i < n + (meet != 0); i++) {
		pthread_join(th[i], NULL);
		lost += w[i].lost;
	}
	if (lost)
		printf("lost %ld\n", lost);
	else
		printf("ok\n");
}

static void fill_pages(size_t doff, size_t npages, uint64_t seed)
{
	for (size_t p = 0; p < npages; p++)
		for (int w = 0; w < 512; w++)
			((uint64_t *)(base + doff + p * 4096))[w] =
				(seed << 48) ^ ((uint64_t)p << 16) ^ (uint64_t)w ^ 0x5bd1e995u;
}

/* Pages of the npages at doff that do not hold what fill_pages(seed) wrote
 * there, doff being page `first` of that fill. */
static size_t unfilled_pages(size_t doff, size_t npages, uint64_t seed, uint64_t first)
{
	size_t bad = 0;
	for (size_t p = 0; p < npages; p++)
		for (int w = 0; w < 512; w++)
			if (((uint64_t *)(base + doff + p * 4096))[w] !=
			    ((seed << 48) ^ ((first + p) << 16) ^ (uint64_t)w ^ 0x5bd1e995u)) {
				bad++;
				break;
			}
	return bad;
}

static uint64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* A balloon, or a postcopy destination, discards RAM and expects it to stay
 * a hole until it writes there itself; the scanner must not read it in. */
static void cmd_holes(size_t doff, size_t npages, int ms, long min_rounds)
{
	int pm = open("/proc/self/pagemap", O_RDONLY);
	uint64_t *e = calloc(npages, sizeof(*e)), end = now_ms() + (uint64_t)ms;
	long iters = 0, present = 0;
	unsigned seed = 1;
	/* MS ms, and at least min_rounds rounds however slow the host. */
	while (pm >= 0 && e && (now_ms() < end || iters < min_rounds)) {
		/* Two equal quarters (merged soon after), and a half new in
		 * every round (visited every pass, never merged). */
		fill_pages(doff, npages / 4, 3);
		fill_pages(doff + npages / 4 * 4096, npages / 4, 3);
		fill_pages(doff + npages / 2 * 4096, npages - npages / 2, 100 + (uint64_t)iters);
		usleep(rand_r(&seed) % 20000);
		if (madvise(base + doff, npages * 4096, MADV_DONTNEED) != 0)
			break;
		usleep(30000);
		if (pread(pm, e, npages * sizeof(*e), (off_t)((uintptr_t)(base + doff) / 4096 * 8)) !=
		    (ssize_t)(npages * sizeof(*e)))
			break;
		for (size_t i = 0; i < npages; i++)
			present += (e[i] >> 63) & 1;
		iters++;
	}
	free(e);
	if (pm >= 0)
		close(pm);
	printf("%ld %ld\n", iters, present);
}

/* QEMU's rings: fdmon-io_uring's polls and timeouts, block/io_uring.c's
 * reads. The ring stays set up, as QEMU's do. */
static long long cmd_uring(const char *kind, int fd, long long off, long long len, long long doff)
{
	static struct io_uring ring;
	static int ready, p[2];
	static struct __kernel_timespec ts = { .tv_sec = 3600 };
	if (!ready) {
		int r = io_uring_queue_init(8, &ring, 0);
		if (r < 0)
			return r;
		if (pipe(p))
			return -errno;
		ready = 1;
	}
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	if (!sqe)
		return -EBUSY;
	if (strcmp(kind, "register") == 0) {	/* fixed buffers: pinned */
		struct iovec iov = { base, 4096 };
		io_uring_prep_nop(sqe);
		return io_uring_register_buffers(&ring, &iov, 1);
	}
	if (strcmp(kind, "poll") == 0) {
		io_uring_prep_poll_add(sqe, p[0], POLLIN);
		io_uring_prep_timeout(io_uring_get_sqe(&ring), &ts, 0, 0);
		io_uring_prep_nop(io_uring_get_sqe(&ring));
		return io_uring_submit(&ring);
	}
	if (strcmp(kind, "write") == 0)
		io_uring_prep_write(sqe, fd, base + doff, (unsigned)len, (uint64_t)off);
	else if (strcmp(kind, "dontneed") == 0)
		io_uring_prep_madvise(sqe, base + doff, (off_t)len, MADV_DONTNEED);
	else if (strcmp(kind, "dontneedlocked") == 0)
		io_uring_prep_madvise(sqe, base + doff, (off_t)len, MADV_DONTNEED_LOCKED);
	else if (strcmp(kind, "dontneed64") == 0) {	/* liburing's io_uring_prep_madvise64 */
		io_uring_prep_madvise(sqe, base + doff, 0, MADV_DONTNEED);
		sqe->off = (uint64_t)len;
	}
	else
		io_uring_prep_read(sqe, fd, base + doff, (unsigned)len, (uint64_t)off);
	io_uring_sqe_set_data64(sqe, 42);
	int r = io_uring_submit(&ring);	/* as QEMU's block/io_uring.c */
	/* The poll and the timeout stay pending: find the read's completion. */
	for (struct io_uring_cqe *cqe; r >= 0 && (r = io_uring_wait_cqe(&ring, &cqe)) == 0;) {
		long long res = cqe->user_data == 42 ? cqe->res : LLONG_MIN;
		io_uring_cqe_seen(&ring, cqe);
		if (res != LLONG_MIN)
			return res;
	}
	return r;
}

/* A ring driven as Rust's io-uring crate drives it: syscall(2), the
 * kernel's layout, no liburing. Set up once (kept, as a VMM keeps it). */
static long long cmd_rawuring(const char *kind, int fd, long long off, long long len, long long doff)
{
	static struct io_uring_params p;
	static int rfd = -1;
	static unsigned char *sq, *cq;
	static struct io_uring_sqe *sqes;
	if (rfd < 0) {
		memset(&p, 0, sizeof(p));
		p.flags = strcmp(kind, "sqpoll") == 0 ? IORING_SETUP_SQPOLL : 0;
		rfd = (int)syscall(SYS_io_uring_setup, 8, &p);
		if (rfd < 0)
			return -errno;
		if (p.flags & IORING_SETUP_SQPOLL)
			return 0;
		size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
		size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
		sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, rfd, IORING_OFF_SQ_RING);
		cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, rfd, IORING_OFF_CQ_RING);
		sqes = mmap(NULL, p.sq_entries * sizeof(*sqes), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
			    rfd, IORING_OFF_SQES);
		if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
			return -errno;
	}
	if (strcmp(kind, "setup") == 0)	/* a wait that submits nothing */
		return syscall(SYS_io_uring_enter, rfd, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0) < 0 ? -errno : 0;
	if (strcmp(kind, "read") != 0)
		return -EINVAL;
	unsigned *tail = (unsigned *)(sq + p.sq_off.tail), *array = (unsigned *)(sq + p.sq_off.array);
	unsigned mask = *(unsigned *)(sq + p.sq_off.ring_mask), t = *tail;
	struct io_uring_sqe *e = &sqes[t & mask];
	memset(e, 0, sizeof(*e));
	e->opcode = IORING_OP_READ;
	e->fd = fd;
	e->off = (uint64_t)off;
	e->addr = (uintptr_t)(base + doff);
	e->len = (unsigned)len;
	e->user_data = 42;
	array[t & mask] = t & mask;
	__atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
	if (syscall(SYS_io_uring_enter, rfd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -errno;
	/* The read's completion. */
	unsigned *chead = (unsigned *)(cq + p.cq_off.head), *ctail = (unsigned *)(cq + p.cq_off.tail);
	struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	unsigned cmask = *(unsigned *)(cq + p.cq_off.ring_mask);
	for (;;) {
		for (unsigned h = *chead; h != __atomic_load_n(ctail, __ATOMIC_ACQUIRE); h++) {
			struct io_uring_cqe *c = &cqes[h & cmask];
			__atomic_store_n(chead, h + 1, __ATOMIC_RELEASE);
			if (c->user_data == 42)
				return c->res;
		}
		if (syscall(SYS_io_uring_enter, rfd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
			return -errno;
	}
}

/* libibverbs as QEMU's RDMA migration calls it (the stand-in answers). */
static long long cmd_rdma(const char *lib, const char *how)
{
	if (!dlopen(lib, RTLD_NOW | RTLD_GLOBAL))
		return -ENOENT;
	void *mr;
	if (strcmp(how, "rereg") == 0) {	/* a region moved onto the RAM's first page */
		int (*rereg)(void *, int, void *, void *, size_t, int);
		*(void **)&rereg = dlsym(RTLD_DEFAULT, "ibv_rereg_mr");
		static char old_region[4096];
		return !rereg ? -ENOSYS : rereg(old_region, 1 /* IBV_REREG_MR_CHANGE_TRANSLATION */, NULL, base, 4096, 7);
	}
	if (strcmp(how, "iova2") == 0) {
		void *(*reg)(void *, void *, size_t, uint64_t, unsigned);
		*(void **)&reg = dlsym(RTLD_DEFAULT, "ibv_reg_mr_iova2");
		mr = reg ? reg(NULL, base, 4096, (uintptr_t)base, 7) : NULL;
	} else {
		void *(*reg)(void *, void *, size_t, int);
		*(void **)&reg = dlsym(RTLD_DEFAULT, "ibv_reg_mr");
		/* "ro": no write access, as QEMU's RDMA migration registers. */
		mr = reg ? reg(NULL, base, 4096, strcmp(how, "ro") == 0 ? 0 : 7) : NULL;
	}
	return mr ? 0 : -(errno ? errno : ENOSYS);
}

/* Read system calls this thread has made (/proc/thread-self/io). */
static long long thread_syscr(void)
{
	char buf[512];
	int fd = open("/proc/thread-self/io", O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strstr(buf, "syscr:");
	return p ? atoll(p + 6) : -1;
}

/* free() for every library of the process, the agent's too (the
 * executable's symbol comes first): see "freemadvise". Locked, as
 * tcmalloc's: the allocator's functions hold one lock, madvise's time too
 * (recursive: a free() inside the agent, under that madvise, is this
 * thread's own). */
static void *free_scratch;
static int alloc_locked;
/* The C library's pread of _FORTIFY_SOURCE builds (chkread). */
extern ssize_t __pread_chk(int fd, void *buf, size_t len, off_t off, size_t buflen);

#ifndef __SANITIZE_ADDRESS__	/* AddressSanitizer's allocator is its own */
static pthread_mutex_t alloc_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
extern void __libc_free(void *p);
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
static int alloc_enter(void)
{
	int locked = __atomic_load_n(&alloc_locked, __ATOMIC_ACQUIRE);
	if (locked)
		pthread_mutex_lock(&alloc_lock);
	return locked;
}

static void alloc_leave(int locked)
{
	if (locked)
		pthread_mutex_unlock(&alloc_lock);
}

__attribute__((visibility("default"))) void free(void *p)
{
	int locked = alloc_enter();
	void *s = __atomic_load_n(&free_scratch, __ATOMIC_ACQUIRE);
	if (s)
		madvise(s, 4096, MADV_DONTNEED);
	__libc_free(p);
	alloc_leave(locked);
}

__attribute__((visibility("default"))) void *malloc(size_t n)
{
	int locked = alloc_enter();
	void *p = __libc_malloc(n);
	alloc_leave(locked);
	return p;
}

__attribute__((visibility("default"))) void *calloc(size_t n, size_t size)
{
	int locked = alloc_enter();
	void *p = __libc_calloc(n, size);
	alloc_leave(locked);
	return p;
}

__attribute__((visibility("default"))) void *realloc(void *p, size_t n)
{
	int locked = alloc_enter();
	void *q = __libc_realloc(p, n);
	alloc_leave(locked);
	return q;
}
#define FREE_MADVISES 1
#else
#define FREE_MADVISES 0
#endif

/* "allocstorm": a thread of the VMM allocating and freeing for ms. */
static void *alloc_storm(void *arg)
{
	struct timespec t0, t;
	long ms = (long)(intptr_t)arg;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		void *volatile p = malloc(64);	/* volatile: a pair the compiler would drop */
		free(p);
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
	return NULL;
}

/* A userfaultfd (flags besides O_CLOEXEC), through the device where the
 * system call is refused; -1 with errno. */
static int new_uffd(int flags)
{
	int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | flags);
	if (u < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		u = dev < 0 ? -1 : ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | flags);
		if (dev >= 0)
			close(dev);
	}
	return u;
}

/* dwrite / dwritego: a write with O_DIRECT that holds a page of guest RAM
 * while it waits for a second page, one of its own that a userfaultfd
 * holds back (the kernel pins the pages of a direct write in order). */
static struct {
	int fd, uffd;
	void *held;
	struct iovec iov[2];
	pthread_t thread;
	ssize_t result;
} dw = { .fd = -1, .uffd = -1 };

static void *dwrite_thread(void *arg)
{
	(void)arg;
	dw.result = pwritev(dw.fd, dw.iov, 2, 0);
	if (dw.result < 0)
		dw.result = -errno;
	return NULL;
}

static long long cmd_dwrite(const char *path, size_t doff)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffd_msg msg;
	dw.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
	if (dw.fd < 0)
		return -errno;
	dw.held = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dw.uffd = new_uffd(0);
	struct uffdio_register reg = { .range = { (uintptr_t)dw.held, 4096 },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };
	if (dw.held == MAP_FAILED || dw.uffd < 0 || ioctl(dw.uffd, UFFDIO_API, &api) < 0 ||
	    ioctl(dw.uffd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	dw.iov[0] = (struct iovec){ base + doff, 4096 };
	dw.iov[1] = (struct iovec){ dw.held, 4096 };
	if (pthread_create(&dw.thread, NULL, dwrite_thread, NULL) != 0)
		return -EAGAIN;
	/* The fault on the second page: the first is pinned by now. */
	if (read(dw.uffd, &msg, sizeof(msg)) != (ssize_t)sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
		return -EIO;
	return 0;
}

/* "zcsend [off|raw|rawto]": guest RAM's first page sent to ourselves in a UDP
 * datagram with MSG_ZEROCOPY, the socket set SO_ZEROCOPY unless off (the
 * kernel then ignores the flag), through the C library's sendmsg or
 * syscall(2) (raw: sendmsg, rawto: sendto): the bytes sent or -errno. */
static long long cmd_zcsend(const char *how)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sin);
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), one = 1;
	long long r = 0;
	if (s < 0)
		return -errno;
	if (bind(s, (struct sockaddr *)&sin, sizeof(sin)) != 0 || getsockname(s, (struct sockaddr *)&sin, &sl) != 0 ||
	    (strcmp(how, "off") != 0 && setsockopt(s, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) != 0))
		r = -errno;
	struct iovec iov = { base, 4096 };
	struct msghdr m = { .msg_name = &sin, .msg_namelen = sizeof(sin), .msg_iov = &iov, .msg_iovlen = 1 };
	if (!r) {
		ssize_t n = strcmp(how, "raw") == 0 ? syscall(SYS_sendmsg, s, &m, MSG_ZEROCOPY) :
			    strcmp(how, "rawto") == 0 ? syscall(SYS_sendto, s, base, 4096, MSG_ZEROCOPY, &sin, sl) :
			    sendmsg(s, &m, MSG_ZEROCOPY);
		r = n < 0 ? -errno : n;
	}
	close(s);
	return r;
}

static long long cmd_dwritego(void)
{
	struct uffdio_zeropage zero = { .range = { (uintptr_t)dw.held, 4096 } };
	if (ioctl(dw.uffd, UFFDIO_ZEROPAGE, &zero) < 0)
		return -errno;
	pthread_join(dw.thread, NULL);
	close(dw.uffd);
	close(dw.fd);
	munmap(dw.held, 4096);
	return dw.result;
}

/* The child of "fork": reads the image itself into its copy of RAM at
 * ramoff (16 pages, a read the agent would share), asks for merging (the
 * agent it would make or use says which: a child's is none), and writes
 * "bytes hash file-backed" to out. */
static int fork_child(long long ramoff, int fd, int out)
{
	ssize_t r = pread(fd, base + ramoff, 16 * 4096, 0);
	uint64_t pm = 0;
	int pmfd = open("/proc/self/pagemap", O_RDONLY);
	if (pmfd < 0 || pread(pmfd, &pm, sizeof(pm), (off_t)((uintptr_t)(base + ramoff) / 4096 * 8)) != 8)
		return 1;
	madvise(base + ramoff, 4096, MADV_MERGEABLE);
	char line[48];
	int n = snprintf(line, sizeof(line), "%zd %016llx %d", r,
			 (unsigned long long)fnv((unsigned char *)base + ramoff, 4096), (int)((pm >> 61) & 1));
	return write(out, line, (size_t)n) < 0;
}

/* glibc's clone() runs the child in a function: "fork ... clone". */
static long long clone_a1, clone_a2;
static int clone_out;

static int clone_fn(void *unused)
{
	(void)unused;
	return fork_child(clone_a1, (int)clone_a2, clone_out);
}

/* "vmchild": children that share our memory (CLONE_VM|CLONE_VFORK, as
 * posix_spawn's), made by glibc's clone() (on a stack of their own), or by
 * syscall(2)'s clone and clone3 on our stack, as vfork's child: that one
 * returns through the agent's syscall() and must then write nothing to the
 * stack the parent comes back to, so it exits by the bare system call. */
static int vm_child_fn(void *unused)
{
	(void)unused;
	return 0;
}

static __attribute__((noinline)) long vm_child_raw(int three)
{
	uint64_t ca[8] = { CLONE_VM | CLONE_VFORK, 0, 0, 0, SIGCHLD };	/* clone3's v0: flags .. exit_signal .. */
	long r = three ? syscall(SYS_clone3, ca, sizeof(ca))
		       : syscall(SYS_clone, (long)(CLONE_VM | CLONE_VFORK | SIGCHLD), 0L, 0L, 0L, 0L);
	if (r == 0) {
		__asm__ volatile("syscall" : : "a"((long)SYS_exit), "D"(0L) : "rcx", "r11", "memory");
		__builtin_unreachable();
	}
	return r;
}

/* A fork made by syscall(2)'s clone3 (flags 0), as a VMM's own may. */
static pid_t fork_clone3(void)
{
	uint64_t ca[8] = { 0, 0, 0, 0, SIGCHLD };	/* clone3's v0: flags .. exit_signal .. */
	return (pid_t)syscall(SYS_clone3, ca, sizeof(ca));
}

/* KIND clone|sys|clone3: 0 once the child exited 0, else -errno or 1. */
static int vm_child(const char *kind)
{
	static char stack[64 << 10] __attribute__((aligned(16)));
	long pid = strcmp(kind, "clone") == 0 ? clone(vm_child_fn, stack + sizeof(stack),
						      CLONE_VM | CLONE_VFORK | SIGCHLD, NULL) :
		   vm_child_raw(strcmp(kind, "clone3") == 0);
	int st = 0;
	if (pid < 0)
		return -errno;
	if (waitpid((pid_t)pid, &st, 0) != pid)
		return -errno;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}

/* "forkstorm": a thread binds the RAM's first page to node 0 over and over
 * (libnuma's mbind: the agent follows it under the policies' lock, the
 * system call's time included), while children are made; each child
 * unmaps a page nobody maps (which looks at the policies), and exits. */
static int storm_stop;

static void *bind_storm(void *unused)
{
	(void)unused;
	long (*fn)(void *, unsigned long, int, const unsigned long *, unsigned long, unsigned);
	*(void **)&fn = dlsym(RTLD_DEFAULT, "mbind");
	unsigned long node0 = 1;
	while (fn && !__atomic_load_n(&storm_stop, __ATOMIC_RELAXED))
		fn(base, 4096, MPOL_BIND, &node0, 2, 0);
	return NULL;
}

static int storm_child(void *hole)
{
	munmap(hole, 4096);
	return 0;
}

/* Children made by kind (raw, _Fork, clone) under the storm: how many did
 * not exit within 2 s (killed then). */
static int fork_storm(int n, const char *kind)
{
	static char stack[64 << 10] __attribute__((aligned(16)));
	void *hole = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pthread_t th;
	if (hole == MAP_FAILED || munmap(hole, 4096) != 0)
		return -errno;
	__atomic_store_n(&storm_stop, 0, __ATOMIC_RELAXED);
	if (pthread_create(&th, NULL, bind_storm, NULL) != 0)
		return -EAGAIN;
	int stuck = 0;
	for (int i = 0; i < n; i++) {
		pid_t pid = strcmp(kind, "raw") == 0 ? (pid_t)syscall(SYS_fork) :
			    strcmp(kind, "_Fork") == 0 ? _Fork() :
			    clone(storm_child, stack + sizeof(stack), SIGCHLD, hole);
		if (pid == 0)
			_exit(storm_child(hole));
		if (pid < 0)
			break;
		int done = 0;
		for (int w = 0; w < 400 && !done; w++)
			if (!(done = waitpid(pid, NULL, WNOHANG) == pid))
				usleep(5000);
		if (!done) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			stuck++;
		}
	}
	__atomic_store_n(&storm_stop, 1, __ATOMIC_RELAXED);
	pthread_join(th, NULL);
	return stuck;
}

/* "forkkeep" and "kid": a child made by fork() that answers a command at
 * a time through two pipes, its RAM a copy of ours as the fork left it. */
static int kid_to = -1, kid_from = -1;
static pid_t kid_pid;

static void kid_serve(int in, int out)
{
	char line[256], answer[64];
	FILE *f = fdopen(in, "r");
	while (f && fgets(line, sizeof(line), f)) {
		long long a1 = 0, a2 = 0, a3 = 0, a4 = 0;
		if (strncmp(line, "quit", 4) == 0)
			_exit(0);
		if (sscanf(line, "unfilled %lld %lld %lld %lld", &a1, &a2, &a3, &a4) == 4)
			snprintf(answer, sizeof(answer), "%zu\n",
				 unfilled_pages((size_t)a1, (size_t)a2, (uint64_t)a3, (uint64_t)a4));
		else if (sscanf(line, "hash %lld %lld", &a1, &a2) == 2)
			snprintf(answer, sizeof(answer), "%016llx\n",
				 (unsigned long long)fnv((unsigned char *)base + a1, (size_t)a2));
		else
			snprintf(answer, sizeof(answer), "unknown\n");
		if (write(out, answer, strlen(answer)) < 0)
			_exit(2);
	}
	_exit(1);
}

static int kid_start(void)
{
	int to[2], from[2];
	if (kid_to >= 0)
		return -EBUSY;	/* one at a time */
	if (pipe(to) != 0)
		return -errno;
	if (pipe(from) != 0) {
		int err = -errno;
		close(to[0]);
		close(to[1]);
		return err;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		close(to[1]);
		close(from[0]);
		kid_serve(to[0], from[1]);
	}
	close(to[0]);
	close(from[1]);
	kid_to = to[1];
	kid_from = from[0];
	kid_pid = pid;
	return (int)pid;
}

static const char *kid_ask(const char *cmd)
{
	static char answer[64];
	if (kid_to < 0)
		return "nokid";
	if (write(kid_to, cmd, strlen(cmd)) < 0)
		return "error";
	if (strncmp(cmd, "quit", 4) == 0) {
		int st = 0;
		waitpid(kid_pid, &st, 0);
		close(kid_to);
		close(kid_from);
		kid_to = kid_from = -1;
		snprintf(answer, sizeof(answer), "%d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		return answer;
	}
	ssize_t n = read(kid_from, answer, sizeof(answer) - 1);
	if (n <= 0)
		return "none";
	answer[n] = 0;
	answer[strcspn(answer, "\n")] = 0;
	return answer;
}

/* "cancelinside": see the list above. */
static struct cancelinside {
	int fd;
	char *buf;
	size_t len;
	pid_t tid;
	ssize_t got;
} ci;

static void *cancelinside_thread(void *arg)
{
	(void)arg;
	__atomic_store_n(&ci.tid, gettid(), __ATOMIC_RELEASE);
	ci.got = pread(ci.fd, ci.buf, ci.len, 0);
	pthread_testcancel();
	return NULL;
}

/* The system call thread tid sleeps in, read twice 20 ms apart (the
 * same both times), up to 2 s: its number, or -1. */
static long task_syscall(pid_t tid, long *arg0)
{
	char path[64], line[256];
	long last = -2;
	for (int i = 0; i < 100; i++) {
		snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
		FILE *f = fopen(path, "r");
		long nr = -1;
		if (f) {
			if (!fgets(line, sizeof(line), f) || sscanf(line, "%ld %lx", &nr, (unsigned long *)arg0) < 1)
				nr = -1;
			fclose(f);
		}
		if (nr >= 0 && nr == last)
			return nr;
		last = nr;
		usleep(20000);
	}
	return -1;
}

static void cmd_cancelinside(int fd, size_t doff, size_t len)
{
#if !FREE_MADVISES	/* no allocator of ours to hold the thread in */
	(void)fd, (void)doff, (void)len, (void)cancelinside_thread;
	printf("unsupported\n");
#else
	pthread_t t;
	void *ret = NULL;
	long arg0;
	alarm(5);	/* the agent's lock left held: the reads below wait for good */
	ci = (struct cancelinside){ fd, base + doff, len, 0, -1000 };
	__atomic_store_n(&alloc_locked, 1, __ATOMIC_RELEASE);
	pthread_mutex_lock(&alloc_lock);
	if (pthread_create(&t, NULL, cancelinside_thread, NULL) != 0) {
		pthread_mutex_unlock(&alloc_lock);
		printf("-1 -1 -1\n");
		return;
	}
	while (!__atomic_load_n(&ci.tid, __ATOMIC_ACQUIRE))
		usleep(1000);
	/* Waiting for the allocator's lock (a futex), inside its pread. */
	long nr = task_syscall(ci.tid, &arg0);
	pthread_cancel(t);
	pthread_mutex_unlock(&alloc_lock);
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 3;
	int err = pthread_timedjoin_np(t, &ret, &dl);
	__atomic_store_n(&alloc_locked, 0, __ATOMIC_RELEASE);
	ssize_t m = pread(fd, base + doff + len, len, (off_t)len);
	alarm(0);
	printf("%s %lld %lld%s\n", err ? "stuck" : ret == PTHREAD_CANCELED ? "cancelled" : "returned",
	       (long long)ci.got, (long long)(m < 0 ? -errno : m), nr == SYS_futex ? "" : " (not in a futex)");
#endif
}

struct blocked_io {
	int fd, write, before;	/* before: a /dev/zero or /dev/null of the call made first */
	void *buf;
	pid_t tid;
};

static void *blocked_io_thread(void *arg)
{
	struct blocked_io *b = arg;
	struct iovec io = { b->buf, 4096 };
	if (b->before >= 0) {
		int state, type;
		if (b->write)
			pwritev2(b->before, &io, 1, -1, 0);
		else
			preadv2(b->before, &io, 1, -1, 0);
		pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &state);
		pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, &type);
		if (state != PTHREAD_CANCEL_ENABLE || type != PTHREAD_CANCEL_DEFERRED)
			return (void *)"changed";
	}
	__atomic_store_n(&b->tid, gettid(), __ATOMIC_RELEASE);
	if (b->write)
		pwritev2(b->fd, &io, 1, -1, 0);
	else
		preadv2(b->fd, &io, 1, -1, 0);
	return NULL;
}

static const char *cmd_cancelblock(const char *how, const char *where, int after)
{
	static char heap_page[4096];
	int p[2];
	long arg0 = -1;
	pthread_t t;
	void *ret = NULL;
	struct blocked_io b = { -1, strcmp(how, "write") == 0, -1, strcmp(where, "heap") == 0 ? heap_page : base, 0 };
	if (pipe(p) != 0)
		return "nopipe";
	if (b.write) {	/* full: the write waits */
		fcntl(p[1], F_SETFL, O_NONBLOCK);
		while (write(p[1], heap_page, sizeof(heap_page)) > 0)
			;
		fcntl(p[1], F_SETFL, 0);
	}
	b.fd = p[b.write];
	if (after)
		b.before = open(b.write ? "/dev/null" : "/dev/zero", b.write ? O_WRONLY : O_RDONLY);
	if (pthread_create(&t, NULL, blocked_io_thread, &b) != 0)
		return "nothread";
	while (!__atomic_load_n(&b.tid, __ATOMIC_ACQUIRE)) {
		if (pthread_tryjoin_np(t, &ret) == 0) {	/* its cancel state changed */
			close(b.before);
			close(p[0]);
			close(p[1]);
			return ret;
		}
		usleep(1000);
	}
	long nr = task_syscall(b.tid, &arg0);
	const char *r = nr < 0 || arg0 != b.fd ? "notblocked" : "cancelled";
	pthread_cancel(t);
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 2;
	if (pthread_timedjoin_np(t, &ret, &dl) != 0) {
		r = "stuck";
		if (b.write)
			while (read(p[0], heap_page, sizeof(heap_page)) == (ssize_t)sizeof(heap_page) &&
			       pthread_tryjoin_np(t, &ret) != 0)
				;
		else
			write(p[1], heap_page, sizeof(heap_page));
		pthread_join(t, &ret);
	} else if (ret != PTHREAD_CANCELED) {
		r = "returned";
	}
	if (b.before >= 0)
		close(b.before);
	close(p[0]);
	close(p[1]);
	return r;
}

/* "cancelfork": see the list above. */
static int forked_back;

static void *cancelfork_thread(void *arg)
{
	(void)arg;
	pthread_cancel(pthread_self());
	pid_t pid = fork();
	if (pid == 0)
		_exit(0);
	__atomic_store_n(&forked_back, pid > 0 ? 1 : -1, __ATOMIC_RELEASE);
	if (pid > 0)
		waitpid(pid, NULL, 0);	/* the cancellation point: the child is reaped below */
	return NULL;
}

static void cmd_cancelfork(int fd, size_t doff, size_t len)
{
	pthread_t t;
	void *ret = NULL;
	alarm(5);
	__atomic_store_n(&forked_back, 0, __ATOMIC_RELEASE);
	if (pthread_create(&t, NULL, cancelfork_thread, NULL) != 0) {
		printf("-1 -1\n");
		return;
	}
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 3;
	int err = pthread_timedjoin_np(t, &ret, &dl);
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	ssize_t m = pread(fd, base + doff, len, 0);
	alarm(0);
	int back = __atomic_load_n(&forked_back, __ATOMIC_ACQUIRE);
	printf("%s %lld\n", err ? "stuck" : back == 1 ? "forked" : back ? "failed" : "cancelled",
	       (long long)(m < 0 ? -errno : m));
}

int main(void)
{
	char line[4096];
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof(line), stdin)) {
		char cmd[32] = "", s1[2048] = "", s2[32] = "";
		long long a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0;
		sscanf(line, "%31s", cmd);
		if (strcmp(cmd, "freemadvise") == 0 && !FREE_MADVISES) {
			printf("%d\n", -ENOSYS);
		} else if (strcmp(cmd, "freemadvise") == 0) {	/* [locked] */
			void *s = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (s != MAP_FAILED)
				__atomic_store_n(&free_scratch, s, __ATOMIC_RELEASE);
			sscanf(line, "%*s %31s", s2);
			if (strcmp(s2, "locked") == 0)
				__atomic_store_n(&alloc_locked, 1, __ATOMIC_RELEASE);
			printf("%d\n", s == MAP_FAILED ? -errno : 0);
		} else if (strcmp(cmd, "allocstorm") == 0) {	/* MS */
			sscanf(line, "%*s %lld", &a1);
			pthread_t th;
			int r = pthread_create(&th, NULL, alloc_storm, (void *)(intptr_t)a1);
			if (r == 0)
				pthread_detach(th);
			printf("%d\n", -r);
		} else if (strcmp(cmd, "map") == 0) {
			char how[8] = "";
			sscanf(line, "%*s %lld %7s", &a1, how);
			base_len = (size_t)a1 * 4096;
			size_t hp = strcmp(how, "huge") == 0 ? 2u << 20 : 0;
			base = mmap(NULL, base_len + hp, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (hp && base != MAP_FAILED) {	/* on a huge page's boundary */
				char *at = (char *)(((uintptr_t)base + hp - 1) & ~(uintptr_t)(hp - 1));
				if (at > base)
					munmap(base, (size_t)(at - base));
				munmap(at + base_len, (size_t)(base + hp - at));
				base = at;
			}
			madvise(base, base_len, MADV_MERGEABLE);
			printf("%p\n", (void *)base);
		} else if (strcmp(cmd, "mapuffd") == 0) {	/* NPAGES: map, registered with a userfaultfd first */
			sscanf(line, "%*s %lld", &a1);
			base_len = (size_t)a1 * 4096;
			base = mmap(NULL, base_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			struct uffdio_api api = { .api = UFFD_API };
			struct uffdio_register reg = { .range = { (uintptr_t)base, base_len },
						       .mode = UFFDIO_REGISTER_MODE_WP };
			int u = new_uffd(O_NONBLOCK);
			if (u < 0 || ioctl(u, UFFDIO_API, &api) < 0 || ioctl(u, UFFDIO_REGISTER, &reg) < 0) {
				printf("%d\n", -errno);
				continue;
			}
			last_uffd = u;
			madvise(base, base_len, MADV_MERGEABLE);
			printf("%p\n", (void *)base);
		} else if (strcmp(cmd, "setuid") == 0) {	/* UID: all of its ids, as QEMU's -runas */
			sscanf(line, "%*s %lld", &a1);
			int r = setgroups(0, NULL) || setresgid((gid_t)a1, (gid_t)a1, (gid_t)a1) ||
				setresuid((uid_t)a1, (uid_t)a1, (uid_t)a1) ? -errno : 0;
			printf("%d\n", r);
		} else if (strcmp(cmd, "setreuid") == 0) {	/* RUID EUID, -1 for "unchanged" */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			printf("%d\n", setreuid((uid_t)a1, (uid_t)a2) ? -errno : 0);
		} else if (strcmp(cmd, "seteuid") == 0) {	/* UID: the effective one alone, undone by seteuid 0 */
			sscanf(line, "%*s %lld", &a1);
			printf("%d\n", seteuid((uid_t)a1) ? -errno : 0);
		} else if (strcmp(cmd, "open") == 0) {
			sscanf(line, "%*s %2047s %31s", s1, s2);
			int fd = open(s1, strcmp(s2, "rw") == 0 ? O_RDWR :
					  strcmp(s2, "path") == 0 ? O_PATH :
					  strcmp(s2, "direct") == 0 ? O_RDONLY | O_DIRECT : O_RDONLY);
			printf("%d\n", fd < 0 ? -errno : fd);
		} else if (strcmp(cmd, "errnokept") == 0) {
			/* errnokept: errno set to 777 before calls that succeed (or,
			 * io_setup, return -errno) and after them: the first
			 * MADV_MERGEABLE (the agent starts), a munmap of part of
			 * it, libaio's io_setup refused, a MSG_ZEROCOPY send on
			 * a descriptor that is no socket. */
			size_t len = 64 * 4096;
			char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			memset(m, 7, len);
			errno = 777;
			int r1 = madvise(m, len, MADV_MERGEABLE), e1 = errno;
			errno = 777;
			int r2 = munmap(m, 4096), e2 = errno;
			int (*setup)(int, unsigned long *);
			unsigned long ctx = 0;
			*(void **)&setup = dlsym(RTLD_DEFAULT, "io_setup");
			errno = 777;
			int r3 = setup ? setup(-1, &ctx) : -ENOSYS, e3 = errno;
			int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
			errno = 777;
			ssize_t r4 = send(devnull, m + 4096, 1, MSG_ZEROCOPY);
			int e4 = errno;
			close(devnull);
			munmap(m + 4096, len - 4096);
			printf("%d %d %d %d %d %d %zd %d\n", r1, e1, r2, e2, r3, e3, r4, e4);
		} else if (strcmp(cmd, "errnoimage") == 0) {
			/* errnoimage FD WFD: errno set to 777 before calls that
			 * succeed over RAM holding pages a read shared from FD's
			 * image, and after them: a read of WFD's image, which
			 * another descriptor holds open for writing (no lease),
			 * mlock, mprotect, MADV_UNMERGEABLE, an mremap that
			 * moves. Prints each result and errno. */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			size_t pg = 4096, len = 64 * pg;
			char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			madvise(m, len, MADV_MERGEABLE);
			long r[6];
			int e[6];
			errno = 777;
			r[0] = pread((int)a2, m + 32 * pg, 16 * pg, 0), e[0] = errno;
			if (pread((int)a1, m, 32 * pg, 0) != (ssize_t)(32 * pg))
				return 1;
			errno = 777;
			r[1] = mlock(m, pg), e[1] = errno;
			errno = 777;
			r[2] = mprotect(m + 8 * pg, pg, PROT_READ), e[2] = errno;
			errno = 777;
			r[3] = madvise(m + 16 * pg, pg, MADV_UNMERGEABLE), e[3] = errno;
			errno = 777;
			char *moved = mremap(m + 24 * pg, 4 * pg, 8 * pg, MREMAP_MAYMOVE);
			r[4] = moved == MAP_FAILED ? -1 : 0, e[4] = errno;
			errno = 777;
			r[5] = mremap(m + 28 * pg, 4 * pg, 4 * pg, MREMAP_MAYMOVE) == m + 28 * pg ? 0 : -1, e[5] = errno;
			printf("%ld %d %ld %d %ld %d %ld %d %ld %d %ld %d\n", r[0], e[0], r[1], e[1], r[2], e[2], r[3],
			       e[3], r[4], e[4], r[5], e[5]);
		} else if (strcmp(cmd, "remapsame") == 0) {
			/* remapsame DOFF LEN: an mremap to the same size, which
			 * moves nothing: 0 if it answered the same place */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			void *p = mremap(base + a1, (size_t)a2, (size_t)a2, MREMAP_MAYMOVE);
			printf("%d\n", p == base + a1 ? 0 : p == MAP_FAILED ? -errno : -1);
		} else if (strcmp(cmd, "iosetup") == 0) {
			int (*setup)(int, unsigned long *);
			unsigned long ctx = 0;
			*(void **)&setup = dlsym(RTLD_DEFAULT, "io_setup");
			printf("%d\n", setup ? setup(8, &ctx) : -ENOSYS);
		} else if (strcmp(cmd, "uring") == 0) {
			sscanf(line, "%*s %31s %lld %lld %lld %lld", s2, &a1, &a2, &a3, &a4);
			printf("%lld\n", cmd_uring(s2, (int)a1, a2, a3, a4));
		} else if (strcmp(cmd, "rawuring") == 0) {
			sscanf(line, "%*s %31s %lld %lld %lld %lld", s2, &a1, &a2, &a3, &a4);
			printf("%lld\n", cmd_rawuring(s2, (int)a1, a2, a3, a4));
		} else if (strcmp(cmd, "rdma") == 0) {
			sscanf(line, "%*s %2047s %31s", s1, s2);
			printf("%lld\n", cmd_rdma(s1, s2));
		} else if (strcmp(cmd, "mergeany") == 0) {
			sscanf(line, "%*s %31s %lld", s2, &a1);
			long r = strcmp(s2, "get") == 0 ? syscall(SYS_prctl, 68, 0L, 0L, 0L, 0L) :
				 strcmp(s2, "set") == 0 ? prctl(67, (unsigned long)a1, 0L, 0L, 0L) :
				 syscall(SYS_prctl, 67, (long)a1, 0L, 0L, 0L);
			printf("%ld\n", r < 0 ? -(long)errno : r);
		} else if (strcmp(cmd, "sgio") == 0) {
			static unsigned char heap_buf[4096], cdb[6] = { 0x08 };	/* READ(6) */
			char what[32] = "", how[8] = "";
			sscanf(line, "%*s %lld %31s %7s", &a1, what, how);
			struct sg_iovec v = { base + a1, (size_t)atoll(what) };
			struct sg_io_hdr h = { .interface_id = 'S', .dxfer_direction = SG_DXFER_FROM_DEV,
					       .cmd_len = sizeof(cdb), .cmdp = cdb, .timeout = 1000 };
			static struct sg_iovec many[65];
			void *none = MAP_FAILED;
			if (strcmp(what, "heap") == 0) {
				h.dxferp = heap_buf;
				h.dxfer_len = sizeof(heap_buf);
			} else if (strcmp(what, "many") == 0) {	/* more than the agent lists */
				for (int i = 0; i < 65; i++)
					many[i] = (struct sg_iovec){ base + a1 + i * 4096, 4096 };
				h.iovec_count = 65;
				h.dxferp = many;
				h.dxfer_len = 65 * 4096;
			} else if (strcmp(what, "unreadable") == 0) {
				none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				h.iovec_count = 1;
				h.dxferp = none;
				h.dxfer_len = 4096;
			} else {
				h.iovec_count = 1;
				h.dxferp = &v;
				h.dxfer_len = (unsigned)v.iov_len;
			}
			/* "sys": through syscall(2), as a VMM without the C
			 * library's ioctl would. */
			long r = strcmp(how, "sys") == 0 ? syscall(SYS_ioctl, -1, SG_IO, &h) : ioctl(-1, SG_IO, &h);
			printf("%d\n", r < 0 ? -errno : 0);
			if (none != MAP_FAILED)
				munmap(none, 4096);
		} else if (strcmp(cmd, "vfio") == 0) {
			struct vfio_iommu_type1_dma_map m = { .argsz = sizeof(m) };
			printf("%d\n", ioctl(-1, VFIO_IOMMU_MAP_DMA, &m) < 0 ? -errno : 0);
		} else if (strcmp(cmd, "uffd") == 0) {
			sscanf(line, "%*s %lld %lld %31s", &a1, &a2, s2);
			struct uffdio_api api = { .api = UFFD_API };
			struct uffdio_register reg = {
				.range = { (uintptr_t)(base + a1), (uint64_t)a2 },
				.mode = strcmp(s2, "wp") == 0 ? UFFDIO_REGISTER_MODE_WP :
					strcmp(s2, "bad") == 0 ? 1u << 7 : UFFDIO_REGISTER_MODE_MISSING,
			};
			int u = new_uffd(O_NONBLOCK);
			int r = u < 0 || ioctl(u, UFFDIO_API, &api) < 0 || ioctl(u, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
			if (r == 0)
				last_uffd = u;	/* kept open, as the VMM's */
			printf("%d\n", r);
		} else if (strcmp(cmd, "badptr") == 0) {
			/* badptr FD: preadv, then UFFDIO_REGISTER and UNREGISTER,
			 * then clone3, each given a pointer that cannot be read:
			 * their errnos, as the kernel returns them (the agent
			 * reads all of them). */
			sscanf(line, "%*s %lld", &a1);
			void *bad = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			int u = new_uffd(O_NONBLOCK);
			struct uffdio_api api = { .api = UFFD_API };
			ssize_t r = preadv((int)a1, bad, 2, 0);
			int e1 = r < 0 ? errno : 0;
			int e2 = u >= 0 && ioctl(u, UFFDIO_API, &api) == 0 && ioctl(u, UFFDIO_REGISTER, bad) < 0 ? errno : 0;
			int e3 = u >= 0 && ioctl(u, UFFDIO_UNREGISTER, bad) < 0 ? errno : 0;
			/* And clone3 by syscall(2), whose flags the agent reads. */
			int e4 = syscall(SYS_clone3, bad, (size_t)88) < 0 ? errno : 0;
			printf("%d %d %d %d\n", e1, e2, e3, e4);
			if (u >= 0)
				close(u);
			munmap(bad, 4096);
		} else if (strcmp(cmd, "uffdoff") == 0) {
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			struct uffdio_range range = { (uintptr_t)(base + a1), (uint64_t)a2 };
			printf("%d\n", ioctl(last_uffd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0);
		} else if (strcmp(cmd, "dwrite") == 0) {
			sscanf(line, "%*s %2047s %lld", s1, &a1);
			printf("%lld\n", cmd_dwrite(s1, (size_t)a1));
		} else if (strcmp(cmd, "zcsend") == 0) {
			char how[8] = "";
			sscanf(line, "%*s %7s", how);
			printf("%lld\n", cmd_zcsend(how));
		} else if (strcmp(cmd, "dwritego") == 0) {
			printf("%lld\n", cmd_dwritego());
		} else if (strcmp(cmd, "vdpa") == 0) {
			uint32_t id;
			printf("%d\n", ioctl(-1, VHOST_VDPA_GET_DEVICE_ID, &id) < 0 ? -errno : 0);
		} else if (strcmp(cmd, "pipe") == 0) {
			int p[2];
			static char buf[65536];
			memset(buf, 'p', sizeof(buf));
			if (pipe(p) == 0 && fcntl(p[1], F_SETPIPE_SZ, 1 << 20) >= 0 &&
			    write(p[1], buf, sizeof(buf)) == (ssize_t)sizeof(buf))
				printf("%d\n", p[0]);
			else
				printf("%d\n", -errno);
		} else if (strcmp(cmd, "read") == 0) {
			long long chunk = 0;
			sscanf(line, "%*s %lld %lld %lld %lld %lld", &a1, &a2, &a3, &a4, &chunk);
			long long total = 0;
			if (chunk <= 0)
				chunk = a3;
			while (total < a3) {
				size_t n = (size_t)(a3 - total < chunk ? a3 - total : chunk);
				ssize_t r = pread((int)a1, base + a4 + total, n, (off_t)(a2 + total));
				if (r < 0) {
					total = -errno;
					break;
				}
				total += r;
				if ((size_t)r < n)
					break;
			}
			printf("%lld\n", total);
		} else if (strcmp(cmd, "sysread") == 0) {
			/* sysread FD OFF LEN DOFF: pread through syscall(2) */
			sscanf(line, "%*s %lld %lld %lld %lld", &a1, &a2, &a3, &a4);
			long r = syscall(SYS_pread64, (int)a1, base + a4, (size_t)a3, (off_t)a2);
			printf("%lld\n", r < 0 ? (long long)-errno : (long long)r);
		} else if (strcmp(cmd, "sysreadv2") == 0) {
			/* sysreadv2 FD OFF LEN DOFF FLAGS: preadv2 of one segment through syscall(2) */
			sscanf(line, "%*s %lld %lld %lld %lld %lld", &a1, &a2, &a3, &a4, &a5);
			struct iovec iov = { base + a4, (size_t)a3 };
			long r = syscall(SYS_preadv2, (int)a1, &iov, 1, (off_t)a2, 0L, (int)a5);
			printf("%lld\n", r < 0 ? (long long)-errno : (long long)r);
		} else if (strcmp(cmd, "chkread") == 0) {
			/* chkread FD OFF LEN RAMOFF BUFLEN: a fortified pread,
			 * as _FORTIFY_SOURCE builds call it */
			long long buflen = 0;
			sscanf(line, "%*s %lld %lld %lld %lld %lld", &a1, &a2, &a3, &a4, &buflen);
			ssize_t r = __pread_chk((int)a1, base + a4, (size_t)a3, (off_t)a2, (size_t)buflen);
			printf("%lld\n", r < 0 ? (long long)-errno : (long long)r);
		} else if (strcmp(cmd, "nopreadv") == 0) {
			/* A seccomp filter that refuses preadv and preadv2 with
			 * EPERM, as a VMM's allow-list without them would;
			 * "nopreadv v2": preadv2 and pwritev2 only. */
			int v2 = strstr(line, " v2") != NULL;
			struct sock_filter f[] = {
				BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, v2 ? __NR_pwritev2 : __NR_preadv, 2, 0),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_preadv2, 1, 0),
				BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
				BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
			};
			struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
			int r = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
				syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) == 0;
			printf("%d\n", r ? 0 : -errno);
		} else if (strcmp(cmd, "heapread") == 0) {
			/* heapread FD OFF LEN: a pread into the heap, not guest RAM */
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			char *heap = malloc((size_t)a3);
			ssize_t r = heap ? pread((int)a1, heap, (size_t)a3, (off_t)a2) : -1;
			printf("%lld\n", r < 0 ? (long long)-errno : (long long)r);
			free(heap);
		} else if (strcmp(cmd, "rawread") == 0) {
			/* rawread FD OFF LEN RAMOFF: a read the agent does not
			 * see (the system call itself), as content that reaches
			 * guest RAM by other means than the VMM's reads. */
			sscanf(line, "%*s %lld %lld %lld %lld", &a1, &a2, &a3, &a4);
			/* The C library's own syscall(2): the preload library's
			 * routes reads to the agent. */
			void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
			long (*sys)(long, ...) = libc ? (long (*)(long, ...))dlsym(libc, "syscall") : NULL;
			long r = sys ? sys(SYS_pread64, (long)a1, (long)(base + a4), (long)a3, (long)a2) : -1;
			printf("%lld\n", r < 0 ? (long long)-errno : (long long)r);
		} else if (strcmp(cmd, "reread") == 0) {
			/* reread FD OFF1 OFF2 LEN RAMOFF: two reads into the same
			 * RAM, back to back; prints what the second returned. */
			long long off2 = 0;
			sscanf(line, "%*s %lld %lld %lld %lld %lld", &a1, &a2, &off2, &a3, &a4);
			ssize_t r = pread((int)a1, base + a4, (size_t)a3, (off_t)a2);
			if (r == (ssize_t)a3)
				r = pread((int)a1, base + a4, (size_t)a3, (off_t)off2);
			printf("%lld\n", r < 0 ? (long long)-errno : (long long)r);
		} else if (strcmp(cmd, "pwritev") == 0) {	/* FD OFF DOFF LEN [FLAGS]: one segment of RAM */
			/* With FLAGS, pwritev2. */
			int n = sscanf(line, "%*s %lld %lld %lld %lld %lld", &a1, &a2, &a3, &a4, &a5);
			struct iovec iov = { base + a3, (size_t)a4 };
			ssize_t r = n == 5 ? pwritev2((int)a1, &iov, 1, (off_t)a2, (int)a5) :
					     pwritev((int)a1, &iov, 1, (off_t)a2);
			printf("%zd\n", r < 0 ? (ssize_t)-errno : r);
		} else if (strcmp(cmd, "preadv") == 0) {
			sscanf(line, "%*s %lld %lld %lld %lld %31s", &a1, &a2, &a3, &a4, s2);
			size_t half = (size_t)a4 / 2;
			/* heap: the second half read into the heap (heaps: both
			 * halves, copied to RAM after); skew: into
			 * guest RAM a byte past its place (O_DIRECT refuses it);
			 * ragged: see below;
			 * pos: preadv2 at the file position, moved to OFF first */
			int heaps = strcmp(s2, "heaps") == 0;
			char *heap = strcmp(s2, "heap") == 0 || heaps ? malloc(half) : NULL;
			char *heap1 = heaps ? malloc(half) : NULL;
			int skew = strcmp(s2, "skew") == 0;
			/* ragged: the halves' lengths off the blocks by 100
			 * bytes, their sum whole */
			size_t rag = strcmp(s2, "ragged") == 0 ? 100 : 0;
			struct iovec iov[2] = {
				{ heap1 ? heap1 : base + a3, half + rag },
				{ heap ? heap : base + a3 + half + rag + skew, (size_t)a4 - half - rag },
			};
			ssize_t r = strcmp(s2, "pos") != 0 ? preadv((int)a1, iov, 2, (off_t)a2) :
				    lseek((int)a1, (off_t)a2, SEEK_SET) != (off_t)a2 ? -1 :
				    preadv2((int)a1, iov, 2, -1, 0);
			if (heap) {
				memcpy(base + a3 + half, heap, (size_t)a4 - half);
				free(heap);
			}
			if (heap1) {
				memcpy(base + a3, heap1, half);
				free(heap1);
			}
			printf("%lld\n", r < 0 ? (long long)-errno : (long long)r);
		} else if (strcmp(cmd, "perms") == 0) {	/* OFF: its mapping's, as /proc/self/maps says */
			sscanf(line, "%*s %lld", &a1);
			uintptr_t at = (uintptr_t)(base + a1), lo, hi;
			char perms[8] = "none", l[512];
			FILE *m = fopen("/proc/self/maps", "r");
			while (m && fgets(l, sizeof(l), m))
				if (sscanf(l, "%lx-%lx %7s", &lo, &hi, perms) == 3 && lo <= at && at < hi)
					break;
				else
					snprintf(perms, sizeof(perms), "none");
			if (m)
				fclose(m);
			printf("%s\n", perms);
		} else if (strcmp(cmd, "vmflag") == 0) {	/* OFF FLAG: 1 if its mapping's VmFlags has FLAG */
			sscanf(line, "%*s %lld %31s", &a1, s2);
			uintptr_t at = (uintptr_t)(base + a1), lo, hi;
			int in = 0, has = -1;
			char l[1024];
			FILE *m = fopen("/proc/self/smaps", "r");
			while (m && has < 0 && fgets(l, sizeof(l), m)) {
				if (sscanf(l, "%lx-%lx ", &lo, &hi) == 2 && strchr(l, ' ') > strchr(l, '-'))
					in = lo <= at && at < hi;
				else if (in && strncmp(l, "VmFlags:", 8) == 0) {
					char *save, want[40];
					has = 0;
					snprintf(want, sizeof(want), "%s", s2);
					for (char *f = strtok_r(l + 8, " \n", &save); f; f = strtok_r(NULL, " \n", &save))
						has |= strcmp(f, want) == 0;
				}
			}
			if (m)
				fclose(m);
			printf("%d\n", has);
		} else if (strcmp(cmd, "write") == 0) {
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			base[a1] = (char)a2;
			printf("ok\n");
		} else if (strcmp(cmd, "hash") == 0) {
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			printf("%016llx\n", (unsigned long long)fnv((unsigned char *)base + a1, (size_t)a2));
		} else if (strcmp(cmd, "writers") == 0) {
			sscanf(line, "%*s %lld %lld %lld %lld %31s", &a1, &a2, &a3, &a4, s2);
			int meet = strcmp(s2, "meet") == 0;
			cmd_writers((int)a1, (int)a2, (size_t)a3, (size_t)a4, meet || strcmp(s2, "twin") == 0, meet, -1);
		} else if (strcmp(cmd, "writewipe") == 0) {
			sscanf(line, "%*s %lld %lld %lld %lld %lld", &a1, &a2, &a3, &a4, &a5);
			cmd_writers((int)a1, (int)a2, (size_t)a3, (size_t)a4, 0, 0, (int)a5);
		} else if (strcmp(cmd, "exhaust") == 0) {
			/* One-page mappings of alternating protection never merge. */
			for (int prot = PROT_READ;; prot ^= PROT_READ | PROT_WRITE) {
				void *m = mmap(NULL, 4096, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				if (m == MAP_FAILED)
					break;
				if (nextra % 4096 == 0)
					extra = realloc(extra, (nextra + 4096) * sizeof(*extra));
				extra[nextra++] = m;
			}
			/* Leave room for the libc's own needs, none for a split. */
			for (int i = 0; i < 2 && nextra; i++)
				munmap(extra[--nextra], 4096);
			printf("%zu\n", nextra);
		} else if (strcmp(cmd, "release") == 0) {
			while (nextra)
				munmap(extra[--nextra], 4096);
			printf("ok\n");
		} else if (strcmp(cmd, "advise") == 0) {
			char how[8] = "";
			sscanf(line, "%*s %lld %lld %31s %7s", &a1, &a2, s2, how);
			int adv = strcmp(s2, "dontneed") == 0 ? MADV_DONTNEED :
				  strcmp(s2, "dontneedlocked") == 0 ? MADV_DONTNEED_LOCKED :
				  strcmp(s2, "dontfork") == 0 ? MADV_DONTFORK :
				  strcmp(s2, "dofork") == 0 ? MADV_DOFORK :
				  strcmp(s2, "dontdump") == 0 ? MADV_DONTDUMP :
				  strcmp(s2, "dodump") == 0 ? MADV_DODUMP :
				  strcmp(s2, "remove") == 0 ? MADV_REMOVE :
				  strcmp(s2, "guardinstall") == 0 ? MADV_GUARD_INSTALL :
				  strcmp(s2, "guardremove") == 0 ? MADV_GUARD_REMOVE :
				  strcmp(s2, "mergeable") == 0 ? MADV_MERGEABLE : MADV_UNMERGEABLE;
			errno = 777;	/* a call that succeeds leaves it: else said after the result */
			int r = strcmp(how, "raw") == 0 ? (int)syscall(SYS_madvise, base + a1, (size_t)a2, adv)
							  : madvise(base + a1, (size_t)a2, adv);
			if (r == 0 && errno != 777)
				printf("0 errno %d\n", errno);
			else
				printf("%d\n", r == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "guarded") == 0) {
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			long long n = 0;
			char page[4096];
			for (long long i = 0; i < a2 && n >= 0; i++) {
				struct iovec l = { page, sizeof(page) }, r = { base + a1 + i * 4096, sizeof(page) };
				if (process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)sizeof(page))
					continue;
				n = errno == EFAULT ? n + 1 : -errno;
			}
			printf("%lld\n", n);
		} else if (strcmp(cmd, "noguard") == 0) {
			struct sock_filter f[] = {
				BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 2, 0),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_madvise, 3, 0),
				BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
				/* madvise's advice, its third argument's low word (x86-64) */
				BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
				BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0),
				/* process_madvise's, its fourth */
				BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[3])),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_GUARD_INSTALL, 2, 0),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_GUARD_REMOVE, 1, 0),
				BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
				BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
			};
			struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
			int r = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
				syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) == 0;
			printf("%d\n", r ? 0 : -errno);
		} else if (strcmp(cmd, "pmadvise") == 0) {
			char how[8] = "", who[8] = "own";
			sscanf(line, "%*s %lld %lld %lld %lld %31s %7s %7s", &a1, &a2, &a3, &a4, s2, how, who);
			int adv = strcmp(s2, "dontneed") == 0 ? MADV_DONTNEED :
				  strcmp(s2, "dontneedlocked") == 0 ? MADV_DONTNEED_LOCKED :
				  strcmp(s2, "free") == 0 ? MADV_FREE :
				  strcmp(s2, "guardinstall") == 0 ? MADV_GUARD_INSTALL :
				  strcmp(s2, "guardremove") == 0 ? MADV_GUARD_REMOVE :
				  strcmp(s2, "wipeonfork") == 0 ? MADV_WIPEONFORK :
				  strcmp(s2, "mergeable") == 0 ? MADV_MERGEABLE : MADV_UNMERGEABLE;
			struct iovec v[1024];
			int n = a3 > 0 && a3 <= 1024 ? (int)a3 : 1;
			for (int i = 0; i < n; i++)
				v[i] = (struct iovec){ base + a1 + i * a4, (size_t)a2 };
			/* linux/pidfd.h's (Linux 6.15), and PIDFD_THREAD (6.9). */
			int fd = strcmp(who, "self") == 0 ? -10001 :
				 strcmp(who, "thread") == 0 ? (int)syscall(SYS_pidfd_open, gettid(), O_EXCL) :
				 (int)syscall(SYS_pidfd_open, strcmp(who, "parent") == 0 ? getppid() : getpid(), 0);
			errno = 777;	/* a call that succeeds leaves it: else said after the result */
			long r = fd == -1 ? -1 : strcmp(how, "raw") == 0 ?
				syscall(SYS_process_madvise, fd, v, (size_t)n, adv, 0) :
				process_madvise(fd, v, (size_t)n, adv, 0);
			if (r >= 0 && errno != 777)
				printf("%ld errno %d\n", r, errno);
			else
				printf("%ld\n", r >= 0 ? r : -errno);
			if (fd >= 0)
				close(fd);
		} else if (strcmp(cmd, "pmadvbad") == 0) {
			sscanf(line, "%*s %lld", &a1);
			static struct iovec v[1025];
			for (int i = 0; i < 1025; i++)
				v[i] = (struct iovec){ base + a1, 4096 };
			int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
			long r[6];
			v[1] = (struct iovec){ (void *)-4096L, 4096 };
			r[0] = process_madvise(fd, v, 2, MADV_DONTNEED, 0) >= 0 ? 0 : -errno;
			v[1] = (struct iovec){ base + a1, (size_t)-1 };
			r[1] = process_madvise(fd, v, 2, MADV_DONTNEED, 0) >= 0 ? 0 : -errno;
			v[1] = v[0];
			r[2] = process_madvise(fd, v, 2, MADV_DONTNEED, 1) >= 0 ? 0 : -errno;
			r[3] = process_madvise(fd, v, 1025, MADV_DONTNEED, 0) >= 0 ? 0 : -errno;
			r[4] = process_madvise(fd, NULL, 1, MADV_DONTNEED, 0) >= 0 ? 0 : -errno;
			/* An empty first range is advised all the same (an
			 * address off a page: refused), later empty ones not. */
			v[0] = (struct iovec){ base + a1 + 1, 0 };
			v[1] = (struct iovec){ base + a1, 4096 };
			r[5] = process_madvise(fd, v, 2, MADV_DONTNEED, 0) >= 0 ? 0 : -errno;
			close(fd);
			printf("%ld %ld %ld %ld %ld %ld\n", r[0], r[1], r[2], r[3], r[4], r[5]);
		} else if (strcmp(cmd, "mlock") == 0) {	/* OFF LEN */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			printf("%d\n", mlock(base + a1, (size_t)a2) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "mlockall") == 0) {	/* current|future|onfault */
			sscanf(line, "%*s %31s", s2);
			int fl = strcmp(s2, "current") == 0 ? MCL_CURRENT :
				 strcmp(s2, "future") == 0 ? MCL_FUTURE :
				 strcmp(s2, "both") == 0 ? MCL_CURRENT | MCL_FUTURE : MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT;
			printf("%d\n", mlockall(fl) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "munlockall") == 0) {
			printf("%d\n", munlockall() == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "mbind") == 0) {	/* OFF LEN sys|sym [bad]: bound to node 0 (63: refused) */
			char bad[8] = "";
			sscanf(line, "%*s %lld %lld %31s %7s", &a1, &a2, s2, bad);
			unsigned long node0 = strcmp(bad, "bad") == 0 ? 1ul << 63 : 1;
			long r;
			if (strcmp(s2, "sym") == 0) {	/* as libnuma's, which QEMU calls */
				long (*fn)(void *, unsigned long, int, const unsigned long *, unsigned long, unsigned);
				*(void **)&fn = dlsym(RTLD_DEFAULT, "mbind");
				r = fn ? fn(base + a1, (unsigned long)a2, MPOL_BIND, &node0, 65, 0) : (errno = ENOSYS, -1);
			} else {
				r = syscall(SYS_mbind, base + a1, (unsigned long)a2, MPOL_BIND, &node0, 65ul, 0u);
			}
			printf("%d\n", r == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "policy") == 0) {	/* OFF: its mapping's policy mode */
			sscanf(line, "%*s %lld", &a1);
			int mode = -1;
			if (syscall(SYS_get_mempolicy, &mode, NULL, 0ul, base + a1, (unsigned long)MPOL_F_ADDR) != 0)
				mode = -errno;
			printf("%d\n", mode);
		} else if (strcmp(cmd, "protect") == 0) {
			sscanf(line, "%*s %lld %lld %31s", &a1, &a2, s2);
			int prot = strcmp(s2, "rw") == 0 ? PROT_READ | PROT_WRITE :
				   strcmp(s2, "ro") == 0 ? PROT_READ : atoi(s2);	/* or a number */
			printf("%d\n", mprotect(base + a1, (size_t)a2, prot) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "move") == 0) {	/* OFF PAGES: moved elsewhere, a hole left */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			size_t len = (size_t)a2 * 4096;
			void *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			void *got = to == MAP_FAILED ? MAP_FAILED :
				    mremap(base + a1, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
			printf("%d\n", got == MAP_FAILED ? -errno : 0);
		} else if (strcmp(cmd, "keepmove") == 0) {	/* OFF PAGES: moved, its old place left mapped (DONTUNMAP) */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			size_t len = (size_t)a2 * 4096;
			char *got = mremap(base + a1, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL);	/* the hint: glibc passes it */
			printf("%lld\n", got == MAP_FAILED ? (long long)-errno : (long long)(got - base));
		} else if (strcmp(cmd, "badmove") == 0) {	/* OFF PAGES: a move the kernel refuses (EINVAL) */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			size_t len = (size_t)a2 * 4096;
			void *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			void *got = to == MAP_FAILED ? MAP_FAILED : mremap(base + a1, len, len, MREMAP_FIXED, to);
			printf("%d\n", got == MAP_FAILED ? -errno : 0);
			if (to != MAP_FAILED)
				munmap(to, len);
		} else if (strcmp(cmd, "overmove") == 0) {	/* OFF PAGES: a move onto itself a page on (EINVAL),
							 * refused by the kernel, not by the agent's checks */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			size_t len = (size_t)a2 * 4096;
			void *got = mremap(base + a1, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, base + a1 + 4096);
			printf("%d\n", got == MAP_FAILED ? -errno : 0);
		} else if (strcmp(cmd, "remap") == 0) {	/* OFF PAGES: fresh memory in a hole there, mergeable */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			size_t len = (size_t)a2 * 4096;
			/* A hint, not MAP_FIXED: the VMM's mapping had unmapped
			 * anything there, and its hold with it. */
			void *got = mmap(base + a1, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (got != MAP_FAILED && got != base + a1) {
				munmap(got, len);
				got = MAP_FAILED;
				errno = EEXIST;
			}
			printf("%d\n", got == MAP_FAILED || madvise(got, len, MADV_MERGEABLE) ? -errno : 0);
		} else if (strcmp(cmd, "unmap") == 0) {
			sscanf(line, "%*s %lld %llx", &a1, (unsigned long long *)&a2);
			printf("%d\n", munmap(base + a1, (size_t)a2) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "nosig") == 0) {
			sscanf(line, "%*s %2047s", s1);
			int n = 0;
			for (int fd = 0; fd < 1024; fd++) {
				char link[64], target[2048];
				snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
				ssize_t len = readlink(link, target, sizeof(target) - 1);
				if (len <= 0)
					continue;
				target[len] = 0;
				if (strcmp(target, s1) == 0 && fcntl(fd, F_GETLEASE) == F_RDLCK &&
				    fcntl(fd, F_SETOWN, 0) == 0)
					n++;
			}
			printf("%d\n", n);
		} else if (strcmp(cmd, "fork") == 0) {
			sscanf(line, "%*s %lld %lld %31s", &a1, &a2, s2);
			int p[2];
			if (pipe(p) != 0)
				return 1;
			static char clone_stack[256 << 10] __attribute__((aligned(16)));
			clone_a1 = a1, clone_a2 = a2, clone_out = p[1];
			pid_t pid = strcmp(s2, "raw") == 0 ? (pid_t)syscall(SYS_fork) :
				    strcmp(s2, "_Fork") == 0 ? _Fork() :
				    strcmp(s2, "clone3") == 0 ? fork_clone3() :
				    strcmp(s2, "clone") == 0 ? clone(clone_fn, clone_stack + sizeof(clone_stack),
								     SIGCHLD, NULL) : fork();
			if (pid == 0)
				_exit(fork_child(a1, (int)a2, p[1]));
			close(p[1]);
			char out[64] = "";
			ssize_t n = read(p[0], out, sizeof(out) - 1);
			close(p[0]);
			waitpid(pid, NULL, 0);
			printf("%s\n", n > 0 ? out : "none");
		} else if (strcmp(cmd, "forkmapped") == 0) {	/* DOFF: is it mapped in a child? */
			sscanf(line, "%*s %lld", &a1);
			pid_t pid = fork();
			if (pid == 0) {
				unsigned char v;
				_exit(mincore(base + a1, 4096, &v) == 0 ? 0 : 1);
			}
			int st = 0;
			waitpid(pid, &st, 0);
			printf("%s\n", !WIFEXITED(st) ? "error" : WEXITSTATUS(st) ? "unmapped" : "mapped");
		} else if (strcmp(cmd, "vmchild") == 0) {	/* clone|sys|clone3 */
			sscanf(line, "%*s %31s", s2);
			printf("%d\n", vm_child(s2));
		} else if (strcmp(cmd, "forkstorm") == 0) {	/* N raw|_Fork|clone */
			sscanf(line, "%*s %lld %31s", &a1, s2);
			printf("%d\n", fork_storm((int)a1, s2));
		} else if (strcmp(cmd, "fill") == 0) {
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			fill_pages((size_t)a1, (size_t)a2, (uint64_t)a3);
			printf("ok\n");
		} else if (strcmp(cmd, "uffdop") == 0) {
			/* uffdop wp|zero|copy OFF LEN: a userfaultfd that registered
			 * nothing acts on the RAM's range; move OFF LEN SRCOFF: moves
			 * the RAM's pages at SRCOFF there */
			a3 = 0;
			sscanf(line, "%*s %31s %lld %lld %lld", s2, &a1, &a2, &a3);
			uint64_t mv[5] = { (uintptr_t)(base + a1), (uintptr_t)(base + a3), (uint64_t)a2, 0, 0 };
			struct uffdio_api api = { .api = UFFD_API };
			struct uffdio_writeprotect wp = { { (uintptr_t)(base + a1), (uint64_t)a2 }, 0 };
			struct uffdio_zeropage zp = { { (uintptr_t)(base + a1), (uint64_t)a2 }, 0, 0 };
			void *src = mmap(NULL, (size_t)a2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			struct uffdio_copy cp = { (uintptr_t)(base + a1), (uintptr_t)src, (uint64_t)a2, 0, 0 };
			int u = new_uffd(O_NONBLOCK);
			int r = src == MAP_FAILED || u < 0 || ioctl(u, UFFDIO_API, &api) < 0 ? -errno :
				strcmp(s2, "wp") == 0 ? (ioctl(u, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0) :
				strcmp(s2, "zero") == 0 ? (ioctl(u, UFFDIO_ZEROPAGE, &zp) < 0 ? -errno : 0) :
				strcmp(s2, "move") == 0 ? (ioctl(u, UFFDIO_MOVE, mv) < 0 ? -errno : 0) :
				(ioctl(u, UFFDIO_COPY, &cp) < 0 ? -errno : 0);
			printf("%d\n", r);
			if (u >= 0)
				close(u);
			if (src != MAP_FAILED)
				munmap(src, (size_t)a2);
		} else if (strcmp(cmd, "dlopen") == 0) {
			/* dlopen deep|ns|plain|look PATH: 0 if loaded, else -1 (and why) */
			sscanf(line, "%*s %31s %2047s", s2, s1);
			/* look: RTLD_DEEPBIND | RTLD_NOLOAD, only a look for one loaded */
			void *h = strcmp(s2, "ns") == 0 ? dlmopen(LM_ID_NEWLM, s1, RTLD_NOW) :
				  strcmp(s2, "look") == 0 ? dlopen(s1, RTLD_NOW | RTLD_DEEPBIND | RTLD_NOLOAD) :
				  dlopen(s1, RTLD_NOW | (strcmp(s2, "deep") == 0 ? RTLD_DEEPBIND : 0));
			if (h)
				deep_discard = (int (*)(void *, size_t))dlsym(h, "deep_discard");
			if (h)
				printf("0\n");
			else
				printf("-1 %s\n", dlerror());
		} else if (strcmp(cmd, "deepdiscard") == 0) {
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			printf("%d\n", deep_discard ? deep_discard(base + a1, (size_t)a2) : -ENOSYS);
		} else if (strcmp(cmd, "wipe") == 0) {	/* DOFF may reach past the top (in integers: no pointer overflow) */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			printf("%d\n", madvise((void *)((uintptr_t)base + (uintptr_t)a1), (size_t)a2, MADV_WIPEONFORK) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "seal") == 0) {
			a3 = 0;	/* FLAGS, if given */
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			printf("%d\n", syscall(462 /* SYS_mseal */, base + a1, (size_t)a2, (unsigned long)a3) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "uringwait") == 0) {	/* liburing's io_uring_enter submitting nothing, on no ring */
			printf("%d\n", io_uring_enter((unsigned)-1, 0, 0, 0, NULL));
		} else if (strcmp(cmd, "mlock2") == 0) {	/* DOFF LEN FLAGS: 0 or -errno */
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			printf("%d\n", mlock2(base + a1, (size_t)a2, (unsigned)a3) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "collapsewatch") == 0) {
			/* collapsewatch DOFF: a seccomp filter under which an
			 * madvise(MADV_COLLAPSE) starting at DOFF fails with EXDEV:
			 * the kernel asked to collapse what lies there */
			sscanf(line, "%*s %lld", &a1);
			uint64_t at = (uintptr_t)(base + a1);
			struct sock_filter f[] = {
				BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 7),
				BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 25 /* MADV_COLLAPSE */, 0, 5),
				BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)at, 0, 3),
				BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]) + 4),
				BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(at >> 32), 0, 1),
				BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EXDEV),
				BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
			};
			struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
			int r = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
				syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) == 0;
			printf("%d\n", r ? 0 : -errno);
		} else if (strcmp(cmd, "collapse") == 0) {
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			printf("%d\n", madvise((void *)((uintptr_t)base + (uintptr_t)a1), (size_t)a2, 25 /* MADV_COLLAPSE */) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "posixadvise") == 0) {
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			errno = 777;
			int r = posix_madvise(base + a1, (size_t)a2, (int)a3);
			if (errno != 777)
				printf("%d errno %d\n", r, errno);
			else
				printf("%d\n", r);
		} else if (strcmp(cmd, "unfilled") == 0) {	/* OFF PAGES SEED FIRST: pages not as fill left them */
			sscanf(line, "%*s %lld %lld %lld %lld", &a1, &a2, &a3, &a4);
			printf("%zu\n", unfilled_pages((size_t)a1, (size_t)a2, (uint64_t)a3, (uint64_t)a4));
		} else if (strcmp(cmd, "holes") == 0) {
			a4 = 0;
			sscanf(line, "%*s %lld %lld %lld %lld", &a1, &a2, &a3, &a4);
			cmd_holes((size_t)a1, (size_t)a2, (int)a3, (long)a4);
		} else if (strcmp(cmd, "zero") == 0) {
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			memset(base + a1, 1, (size_t)a2 * 4096);
			memset(base + a1, 0, (size_t)a2 * 4096);
			printf("ok\n");
		} else if (strcmp(cmd, "poison") == 0) {	/* OFF PAGES BYTE */
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			memset(base + a1, (int)a3, (size_t)a2 * 4096);
			printf("ok\n");
		} else if (strcmp(cmd, "copy") == 0) {
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			memcpy(base + a2, base + a1, (size_t)a3);
			printf("ok\n");
		} else if (strcmp(cmd, "mapfile") == 0) {
			/* DOFF LEN FD [noreplace|moved]: a private mapping of FD from
			 * 0 put over guest RAM (MAP_FIXED), or in a hole there
			 * (MAP_FIXED_NOREPLACE), or moved over it (mremap's
			 * MREMAP_FIXED); 0 or -errno. */
			char how[16] = "";
			sscanf(line, "%*s %lld %lld %lld %15s", &a1, &a2, &a3, how);
			int fl = strcmp(how, "noreplace") == 0 ? MAP_FIXED_NOREPLACE : MAP_FIXED;
			void *p;
			if (strcmp(how, "moved") == 0) {	/* mapped elsewhere, moved there (MREMAP_FIXED) */
				p = mmap(NULL, (size_t)a2, PROT_READ | PROT_WRITE, MAP_PRIVATE, (int)a3, 0);
				if (p != MAP_FAILED)
					p = mremap(p, (size_t)a2, (size_t)a2, MREMAP_MAYMOVE | MREMAP_FIXED, base + a1);
			} else {
				p = mmap(base + a1, (size_t)a2, PROT_READ | PROT_WRITE, MAP_PRIVATE | fl, (int)a3, 0);
			}
			printf("%d\n", p == MAP_FAILED ? -errno : 0);
		} else if (strcmp(cmd, "grow") == 0 || strcmp(cmd, "shrink") == 0) {
			/* DOFF LEN NEWLEN: guest RAM resized by mremap, moved
			 * if it must be (grow), or in place (shrink); where it
			 * is now, as an offset from the RAM, or -errno. */
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			char *p = mremap(base + a1, (size_t)a2, (size_t)a3, cmd[0] == 'g' ? MREMAP_MAYMOVE : 0);
			printf("%lld\n", p == MAP_FAILED ? (long long)-errno : (long long)(p - base));
		} else if (strcmp(cmd, "moveram") == 0) {
			/* DOFF LEN: guest RAM moved away by mremap, leaving a
			 * hole; 0 or -errno. */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			void *to = mmap(NULL, (size_t)a2, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			void *p = to == MAP_FAILED ? MAP_FAILED
				  : mremap(base + a1, (size_t)a2, (size_t)a2, MREMAP_MAYMOVE | MREMAP_FIXED, to);
			printf("%d\n", p == MAP_FAILED ? -errno : 0);
		} else if (strcmp(cmd, "mergehole") == 0) {
			/* FD: 64 fresh pages, the middle 32 unmapped, advised
			 * mergeable (the result); then a shared memfd mapped in
			 * the hole behind the agent's back, 128 KiB of FD read
			 * into it, and 1 if the memfd's other mapping sees what
			 * was read. */
			sscanf(line, "%*s %lld", &a1);
			size_t hl = 32 * 4096;
			char *m = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			int mfd = memfd_create("hole", MFD_CLOEXEC);
			if (m == MAP_FAILED || mfd < 0 || ftruncate(mfd, (off_t)hl) != 0)
				return 1;
			syscall(SYS_munmap, m + 16 * 4096, hl);
			int adv = madvise(m, 64 * 4096, MADV_MERGEABLE) == 0 ? 0 : -errno;
			char *hole = (char *)syscall(SYS_mmap, m + 16 * 4096, hl, PROT_READ | PROT_WRITE,
						     MAP_SHARED | MAP_FIXED_NOREPLACE, mfd, 0);
			char *other = mmap(NULL, hl, PROT_READ, MAP_SHARED, mfd, 0);
			if (hole != m + 16 * 4096 || other == MAP_FAILED)
				return 1;
			ssize_t r = pread((int)a1, hole, hl, 0);
			printf("%d %d\n", adv, r == (ssize_t)hl && memcmp(hole, other, hl) == 0);
		} else if (strcmp(cmd, "hugemap") == 0) {
			/* 2 MiB of hugetlb memory advised mergeable: the
			 * advice's result, or 1 if there is none to map. */
			char *m = mmap(NULL, 2u << 20, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
			if (m == MAP_FAILED) {
				printf("1\n");
				continue;
			}
			m[0] = 1;
			printf("%d\n", madvise(m, 2u << 20, MADV_MERGEABLE) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "scatter") == 0) {
			/* FD OFF DOFF N: one preadv of N 4 KiB pages of FD at
			 * OFF into every other page of RAM from DOFF, as a
			 * guest's page cache asks: its result, the read system
			 * calls this thread made for it, and 1 if every page
			 * holds the file's bytes. */
			sscanf(line, "%*s %lld %lld %lld %lld", &a1, &a2, &a3, &a4);
			struct iovec iov[64];
			int n = a4 < 64 ? (int)a4 : 64;
			for (int k = 0; k < n; k++)
				iov[k] = (struct iovec){ base + a3 + (size_t)k * 8192, 4096 };
			long long r0 = thread_syscr();
			ssize_t r = preadv((int)a1, iov, n, (off_t)a2);
			long long calls = thread_syscr() - r0;
			int same = r == (ssize_t)n * 4096;
			char page[4096];
			for (int k = 0; k < n && same; k++)
				same = pread((int)a1, page, 4096, (off_t)a2 + k * 4096) == 4096 &&
				       memcmp(page, iov[k].iov_base, 4096) == 0;
			printf("%lld %lld %d\n", r < 0 ? (long long)-errno : (long long)r, calls, same);
		} else if (strcmp(cmd, "closefd") == 0) {
			sscanf(line, "%*s %lld", &a1);
			printf("%d\n", close((int)a1) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "nofile") == 0) {
			struct rlimit rl;
			sscanf(line, "%*s %lld", &a1);
			int r = getrlimit(RLIMIT_NOFILE, &rl);
			rl.rlim_cur = (rlim_t)a1;
			printf("%d\n", r == 0 && setrlimit(RLIMIT_NOFILE, &rl) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "daemonize") == 0) {
			/* As QEMU's -daemonize, before any RAM: the child goes
			 * on with the commands, the parent waits for it. */
			fflush(stdout);
			pid_t pid = fork();
			if (pid < 0)
				return 1;
			if (pid > 0) {
				int st = 0;
				waitpid(pid, &st, 0);
				_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 1);
			}
			printf("%d\n", (int)getpid());
		} else if (strcmp(cmd, "chroot") == 0) {	/* DIR: as QEMU's -chroot, no /proc there */
			sscanf(line, "%*s %2047s", s1);
			printf("%d\n", chroot(s1) == 0 && chdir("/") == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "exec") == 0) {	/* -> ok, then this program again, afresh */
			printf("ok\n");
			fflush(stdout);
			execl("/proc/self/exe", "testproc", (char *)NULL);
			printf("%d\n", -errno);
		} else if (strcmp(cmd, "execsleep") == 0) {	/* SECONDS -> ok, then sleep without the agent */
			sscanf(line, "%*s %2047s", s1);
			printf("ok\n");
			fflush(stdout);
			unsetenv("LD_PRELOAD");
			execl("/bin/sleep", "sleep", s1, (char *)NULL);
			printf("%d\n", -errno);
		} else if (strcmp(cmd, "daemon") == 0) {
			fflush(stdout);
			if (daemon(1, 1) != 0)
				printf("%d\n", -errno);
			else
				printf("%d\n", (int)getpid());
		} else if (strcmp(cmd, "forkkeep") == 0) {
			printf("%d\n", kid_start());
		} else if (strcmp(cmd, "kid") == 0) {
			char *rest = line + strspn(line, " \t") + 3;
			printf("%s\n", kid_ask(rest + strspn(rest, " \t")));
		} else if (strcmp(cmd, "cancelinside") == 0) {	/* FD DOFF LEN */
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			cmd_cancelinside((int)a1, (size_t)a2, (size_t)a3);
		} else if (strcmp(cmd, "cancelblock") == 0) {	/* read|write ram|heap [after] */
			char s3[16] = "";
			sscanf(line, "%*s %31s %31s %15s", s1, s2, s3);
			printf("%s\n", cmd_cancelblock(s1, s2, strcmp(s3, "after") == 0));
		} else if (strcmp(cmd, "dontdump") == 0) {	/* DOFF LEN */
			sscanf(line, "%*s %lld %lld", &a1, &a2);
			printf("%d\n", madvise(base + a1, (size_t)a2, MADV_DONTDUMP) == 0 ? 0 : -errno);
		} else if (strcmp(cmd, "cancelfork") == 0) {	/* FD DOFF LEN */
			sscanf(line, "%*s %lld %lld %lld", &a1, &a2, &a3);
			cmd_cancelfork((int)a1, (size_t)a2, (size_t)a3);
		} else if (strcmp(cmd, "quit") == 0) {
			return 0;
		} else {
			printf("unknown\n");
		}
	}
	return 0;
}
