/*
 * test_agent.c - the agent in real processes: testproc stands in for a VMM
 * with the preload library; we check content, frames and counters.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "agent_internal.h"	/* the records of reads and writes in flight */
#include "cgroup.h"
#include "log.h"
#include "proc.h"
#include "runner.h"

#define IMG_SIZE (4u << 20)
#define RAM_PAGES 2048u
#define MB (1u << 20)
/* How long to wait for a statistic to show what a test did: the agent's
 * counters and its once-a-second accounting, on a machine maybe loaded.
 * Returned as soon as the condition holds. */
#define STATS_WAIT_MS 10000

/* The path of a test image made from seed (one of four buffers, reused:
 * two images at once have two names). */
static const char *image(unsigned seed)
{
	static char paths[4][512];
	static unsigned next;
	char *path = paths[next++ % 4];
	snprintf(path, sizeof(paths[0]), "%s/image-%u", test_dir(), seed);
	if (access(path, F_OK) != 0)
		make_image(path, IMG_SIZE, seed);
	return path;
}

/* Starts a process with RAM and the image open; returns the image fd. */
/* A testproc with RAM, and img open (mode as its "open" command takes). */
static int start_reader_mode(struct proc *p, const char *img, const char *mode, const char *const *env)
{
	proc_start(p, env);
	proc_cmd(p, "map %u", RAM_PAGES);
	ASSERT(p->base != 0);
	int fd = (int)proc_num(p, "open %s %s", img, mode);
	ASSERT(fd >= 0);
	return fd;
}

static int start_reader(struct proc *p, const char *img, const char *const *env)
{
	return start_reader_mode(p, img, "", env);
}

/* The same, with the image's first MiB read into the first MiB of RAM
 * (64 KiB reads: shared at read time); returns the image fd. */
static int reader_with_mb(struct proc *p, const char *img)
{
	int fd = start_reader(p, img, NULL);
	ASSERT_EQ(proc_num(p, "read %d 0 %u 0 65536", fd, MB), MB);
	return fd;
}

static int has_shared(const md_stats *s) { return s->pages_shared > 0; }

TEST_IMPL(share_two_processes)
{
	const char *img = image(1);
	struct proc a, b;
	int fa = start_reader(&a, img, NULL), fb = start_reader(&b, img, NULL);

	/* Read the image into the first half of each process's RAM in 128 KiB
	 * reads while four threads write the second half. */
	fprintf(a.in, "writers 4 1500 %u %u\n", IMG_SIZE, IMG_SIZE);
	fflush(a.in);
	ASSERT_EQ(proc_num(&b, "read %d 0 %u 0 131072", fb, IMG_SIZE), IMG_SIZE);
	char line[64];
	ASSERT(fgets(line, sizeof(line), a.out) && strncmp(line, "ok", 2) == 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 131072", fa, IMG_SIZE), IMG_SIZE);

	/* Byte-exact. */
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(fnv_file(img, 0, IMG_SIZE))) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", IMG_SIZE), hex(fnv_file(img, 0, IMG_SIZE))) == 0);
	/* The same frames: one copy in the host. */
	for (size_t off = 0; off < IMG_SIZE; off += 4096) {
		struct pm pa = proc_page(&a, off), pb = proc_page(&b, off);
		ASSERT(pa.present && pb.present && pa.file && pb.file);
		ASSERT(pa.pfn != 0 && pa.pfn == pb.pfn);
	}
	/* And writers in a during a's sharing: concurrent read and writes. */
	fprintf(a.in, "writers 4 1000 %u %u\n", IMG_SIZE, IMG_SIZE);
	fflush(a.in);
	ASSERT_EQ(proc_num(&b, "read %d 0 %u 0 65536", fb, IMG_SIZE), IMG_SIZE);
	ASSERT(fgets(line, sizeof(line), a.out) && strncmp(line, "ok", 2) == 0);

	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_shared), 0);
	ASSERT_EQ(s.pages_shared, IMG_SIZE / 4096);
	ASSERT_EQ(s.pages_shared_at_read, IMG_SIZE / 4096);
	ASSERT_EQ(s.reads_seen, IMG_SIZE / 131072);
	ASSERT_EQ(s.fallbacks_total, 0);
	ASSERT(s.vmas > 0);
	proc_stop(&a);
	proc_stop(&b);
	return 0;
}

/* p's first MiB holds img's, every page its page-cache frame, counted as
 * shared at read time by reads reads: 0 (else an assertion fails). */
static int first_mb_shared(struct proc *p, const char *img, uint64_t reads)
{
	ASSERT(strcmp(proc_cmd(p, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);
	for (size_t off = 0; off < MB; off += 4096)
		ASSERT(proc_page_is_image(p, off, img, (off_t)off));
	md_stats s;
	ASSERT_EQ(proc_stats_wait(p, &s, STATS_WAIT_MS, has_shared), 0);
	ASSERT_EQ(s.pages_shared_at_read, MB / 4096);
	ASSERT_EQ(s.reads_seen, reads);
	return 0;
}

/* A VMM built with _FORTIFY_SOURCE reads through __pread_chk where it
 * knows the buffer's size: shared at read time as a plain pread is. */
TEST_IMPL(fortified_and_raw_reads_shared)
{
	const char *img = image(1);
	struct proc p;
	int fd = start_reader(&p, img, NULL);
	ASSERT_EQ(proc_num(&p, "chkread %d 0 %u 0 %u", fd, MB / 2, MB / 2), MB / 2);
	/* And through syscall(2), as a VMM without the C library's pread
	 * wrapper (Rust's libc crate) may read. */
	ASSERT_EQ(proc_num(&p, "sysread %d %u %u %u", fd, MB / 2, MB / 2, MB / 2), MB / 2);
	ASSERT_EQ(first_mb_shared(&p, img, 2), 0);
	/* preadv2's flags (its sixth argument) reach the kernel: one it does
	 * not know fails the read, as without us. */
	ASSERT_EQ(proc_num(&p, "sysreadv2 %d 0 %u %u %d", fd, MB / 2, MB, 0x40000000), -EOPNOTSUPP);
	ASSERT_EQ(proc_num(&p, "sysreadv2 %d 0 %u %u 0", fd, MB / 2, MB), MB / 2);
	proc_stop(&p);
	return 0;
}

/* A fortified read longer than the buffer the VMM's compiler knew is the
 * C library's to abort (its __chk_fail), as without the agent: not a read
 * that writes past the buffer. */
TEST_IMPL(fortified_read_overflow_aborts)
{
	const char *img = image(1);
	struct proc p;
	int fd = start_reader(&p, img, NULL);
	struct rlimit none = { 0, 0 };
	ASSERT_EQ(prlimit(p.pid, RLIMIT_CORE, &none, NULL), 0);	/* no core dump */
	fprintf(p.in, "chkread %d 0 65536 0 4096\n", fd);
	fclose(p.in);
	int status;
	ASSERT(waitpid(p.pid, &status, 0) == p.pid);
	fclose(p.out);
	ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
	return 0;
}

/* Two copies of the agent preloaded (an installed one in the caller's
 * LD_PRELOAD, `memdedup run` of another build putting its own first): the
 * first one works, the other does nothing and says so. The first found
 * "the next syscall()" in the second, which handed its mmap back to the
 * first: the VMM died of the recursion before main. */
TEST_IMPL(second_copy_of_agent_does_nothing)
{
	const char *img = image(1);
	char bdir[512], copy[700], cmd[1600], log[600], logenv[700], preload[1800];
	ASSERT(realpath(build_dir(), bdir));
	snprintf(copy, sizeof(copy), "%s/other", test_dir());
	ASSERT(mkdir(copy, 0755) == 0);
	snprintf(cmd, sizeof(cmd), "cp %s/libmemdedup-preload.so %s/", bdir, copy);
	ASSERT(system(cmd) == 0);
	const char *extra = getenv("MD_TEST_PRELOAD_FIRST");
	for (int order = 0; order < 2; order++) {
		snprintf(log, sizeof(log), "%s/copies-%d.log", test_dir(), order);
		snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
		snprintf(preload, sizeof(preload), "LD_PRELOAD=%s%s%s/libmemdedup-preload.so:%s/libmemdedup-preload.so",
			 extra ? extra : "", extra ? ":" : "", order ? copy : bdir, order ? bdir : copy);
		const char *env[] = { preload, logenv, NULL };
		struct proc p;
		int fd = start_reader(&p, img, env);
		ASSERT_EQ(proc_num(&p, "read %d 0 %u 0 %u", fd, MB, MB), MB);
		ASSERT_EQ(first_mb_shared(&p, img, 1), 0);	/* one agent saw it */
		proc_stop(&p);
		ASSERT(strstr(file_text(log), "another copy of memdedup's agent"));
	}
	/* An older copy first, which calls the kernel through "the next
	 * syscall()": ours, which handed its mmap back to the older one's. */
	snprintf(preload, sizeof(preload), "LD_PRELOAD=%s%s%s/liboldagent-stub.so:%s/libmemdedup-preload.so",
		 extra ? extra : "", extra ? ":" : "", bdir, bdir);
	const char *env[] = { preload, NULL };
	struct proc p;
	int fd = start_reader(&p, img, env);
	ASSERT_EQ(proc_num(&p, "read %d 0 %u 0 %u", fd, MB, MB), MB);
	ASSERT(strcmp(proc_cmd(&p, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&p, &s), -ENOENT);	/* ours does nothing */
	proc_stop(&p);
	return 0;
}

/* dlopen and dlmopen are interposed (a library loaded with RTLD_DEEPBIND,
 * or into a namespace of its own, calls the C library past the agent):
 * glibc finds the calling object by the call's return address, and the
 * call is the VMM's still: $ORIGIN in a name is the VMM's directory, not
 * the agent's (a copy of it elsewhere, here), and so is a RUNPATH. */
TEST_IMPL(dlopen_keeps_caller)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose dlopen interceptor calls ours: glibc sees it as the caller");
	char bdir[512], copy[700], cmd[1600], preload[1800];
	ASSERT(realpath(build_dir(), bdir));
	snprintf(copy, sizeof(copy), "%s/elsewhere", test_dir());
	ASSERT(mkdir(copy, 0755) == 0);
	snprintf(cmd, sizeof(cmd), "cp %s/libmemdedup-preload.so %s/", bdir, copy);
	ASSERT(system(cmd) == 0);
	const char *extra = getenv("MD_TEST_PRELOAD_FIRST");
	snprintf(preload, sizeof(preload), "LD_PRELOAD=%s%s%s/libmemdedup-preload.so", extra ? extra : "",
		 extra ? ":" : "", copy);
	const char *env[] = { preload, NULL };
	struct proc p;
	proc_start(&p, env);
	ASSERT(strcmp(proc_cmd(&p, "dlopen plain $ORIGIN/libdeepbind-stub.so"), "0") == 0);
	ASSERT(strcmp(proc_cmd(&p, "dlopen deep $ORIGIN/libdeepbind-stub.so"), "0") == 0);
	ASSERT(strcmp(proc_cmd(&p, "dlopen ns $ORIGIN/libdeepbind-stub.so"), "0") == 0);
	proc_stop(&p);
	return 0;
}

/* Calls on guest RAM that the kernel refuses, or that move nothing, change
 * nothing: a protection the kernel does not know (mprotect fails EINVAL)
 * gave the RAM up for good, and an mremap to the same size made all of it
 * private, both before the kernel looked. */
TEST_IMPL(refused_or_empty_calls_keep_sharing)
{
	const char *img = image(2);
	struct proc p;
	int fd = start_reader(&p, img, NULL);
	const char *whole = hex(fnv_file(img, 0, 64 * 4096));
	ASSERT_EQ(proc_num(&p, "read %d 0 %u 0 %u", fd, 64 * 4096, 64 * 4096), 64 * 4096);
	ASSERT(strcmp(proc_cmd(&p, "hash 0 %u", 64 * 4096), whole) == 0);	/* present: frames to see */
	ASSERT(proc_page_is_image(&p, 0, img, 0));
	ASSERT_EQ(proc_num(&p, "protect 0 %u %d", 16 * 4096, PROT_READ | 0x1000), -EINVAL);
	ASSERT(proc_page_is_image(&p, 0, img, 0));	/* as it was */
	ASSERT_EQ(proc_num(&p, "read %d 0 %u 0 %u", fd, 64 * 4096, 64 * 4096), 64 * 4096);
	ASSERT(strcmp(proc_cmd(&p, "hash 0 %u", 64 * 4096), whole) == 0);
	ASSERT(proc_page_is_image(&p, 0, img, 0));	/* and shared again: not given up */
	ASSERT_EQ(proc_num(&p, "remapsame %u %u", 32 * 4096, 16 * 4096), 0);
	ASSERT(proc_page_is_image(&p, 32 * 4096, img, 32 * 4096));
	ASSERT(strcmp(proc_cmd(&p, "hash 0 %u", 64 * 4096), whole) == 0);
	/* Flags the kernel refuses (mseal's, mlock2's) gave the RAM up too,
	 * and a look with RTLD_DEEPBIND | RTLD_NOLOAD, which loads nothing,
	 * or an io_uring_enter that submits nothing stopped sharing for good. */
	long long sealed = proc_num(&p, "seal 0 %u 1", 16 * 4096);
	ASSERT(sealed == -EINVAL || sealed == -ENOSYS);
	ASSERT_EQ(proc_num(&p, "mlock2 0 %u 2", 16 * 4096), -EINVAL);
	if (!getenv("MD_TEST_PRELOAD_FIRST"))	/* AddressSanitizer aborts at RTLD_DEEPBIND (google/sanitizers#611) */
		ASSERT(strncmp(proc_cmd(&p, "dlopen look %s/libdeepbind-stub.so", build_dir()), "-1 ", 3) == 0);
	ASSERT_EQ(proc_num(&p, "uringwait"), -EBADF);
	ASSERT(proc_page_is_image(&p, 0, img, 0));
	ASSERT_EQ(proc_num(&p, "read %d 0 %u %u %u", fd, 64 * 4096, 64 * 4096, 64 * 4096), 64 * 4096);
	ASSERT(strcmp(proc_cmd(&p, "hash %u %u", 64 * 4096, 64 * 4096), whole) == 0);
	ASSERT(proc_page_is_image(&p, 64 * 4096, img, 0));
	proc_stop(&p);
	return 0;
}

static int has_break(const md_stats *s) { return s->breaks > 0; }

TEST_IMPL(write_is_private)
{
	const char *img = image(2);
	struct proc a, b;
	int fa = start_reader(&a, img, NULL), fb = start_reader(&b, img, NULL);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fa, MB), MB);
	ASSERT_EQ(proc_num(&b, "read %d 0 %u 0 65536", fb, MB), MB);
	uint64_t page5 = fnv_file(img, 5 * 4096, 4096), whole = fnv_file(img, 0, IMG_SIZE);
	proc_cmd(&a, "hash 0 %u", MB);	/* fault the pages in */
	proc_cmd(&b, "hash 0 %u", MB);
	struct pm before = proc_page(&b, 5 * 4096);
	ASSERT(before.file && before.pfn == proc_page(&a, 5 * 4096).pfn);

	ASSERT(strcmp(proc_cmd(&a, "write %u 255", 5 * 4096 + 17), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 4096", 5 * 4096), hex(page5)) != 0);
	/* b and the file are untouched; a's page is its own now. */
	ASSERT(strcmp(proc_cmd(&b, "hash %u 4096", 5 * 4096), hex(page5)) == 0);
	ASSERT_EQ(fnv_file(img, 0, IMG_SIZE), whole);
	struct pm pa = proc_page(&a, 5 * 4096), pb = proc_page(&b, 5 * 4096);
	ASSERT(pa.present && !pa.file && pa.pfn != pb.pfn);
	ASSERT(pb.pfn == before.pfn);
	ASSERT(proc_page(&a, 6 * 4096).pfn == proc_page(&b, 6 * 4096).pfn);

	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_break), 0);
	ASSERT_EQ(s.breaks, 1);
	ASSERT_EQ(s.pages_shared, MB / 4096 - 1);
	proc_stop(&a);
	proc_stop(&b);
	return 0;
}

/* Reads with the given command, then checks content and that the first
 * page of the destination is private memory, not the file's. */
static void check_fallback(size_t doff, size_t len, off_t off,
			   enum md_fallback why, const char *const *env, const char *open_mode)
{
	const char *img = image(3);
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map %u", RAM_PAGES);
	int fd = (int)proc_num(&a, "open %s %s", img, open_mode);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d %lld %zu %zu %zu", fd, (long long)off, len, doff, len), len);
	ASSERT(strcmp(proc_cmd(&a, "hash %zu %zu", doff, len), hex(fnv_file(img, off, len))) == 0);
	size_t first_whole = (doff + 4095) / 4096 * 4096;
	struct pm pm = proc_page(&a, first_whole);
	ASSERT(pm.present && !pm.file);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT(s.fallbacks[why] > 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	proc_stop(&a);
}

/* Descriptors of pid that name path, other than not_fd (-1: none): how
 * many, and the last one in *fd. */
static int naming(pid_t pid, const char *path, int not_fd, int *fd)
{
	char want[PATH_MAX];
	ASSERT(realpath(path, want));
	return proc_fds_naming(pid, want, 0, not_fd, fd);
}

static int fds_naming(pid_t pid, const char *path)
{
	return naming(pid, path, -1, NULL);
}

/* An image no page maps any more, unused a while: its lease and the
 * agent's descriptor go (a file the VMM closed and deleted kept its disk
 * space, and each image the VMM ever read held a descriptor of its budget,
 * for as long as the VMM lived). One still mapped stays; a later read
 * leases it again. */
static int image_let_go(pid_t pid, const char *img, int secs)
{
	int n = fds_naming(pid, img);
	for (int i = 0; i < secs * 10 && n; i++) {
		usleep(100000);
		n = fds_naming(pid, img);
	}
	return n == 0;
}

TEST_IMPL(image_let_go_when_unmapped)
{
	const char *img = image(41);
	const char *env[] = { "MEMDEDUP_IMAGE_IDLE_S=1", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, MB), MB);
	ASSERT_EQ(proc_num(&a, "closefd %d", fd), 0);
	ASSERT_EQ(fds_naming(a.pid, img), 1);	/* the agent's own, leased */
	ASSERT(!image_let_go(a.pid, img, 3));	/* its pages still map it */
	ASSERT(proc_page(&a, 0).file || !proc_page(&a, 0).present);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontneed", MB), 0);
	ASSERT(image_let_go(a.pid, img, 10));
	/* Read again: leased and shared again. */
	md_stats s0, s;
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, MB), MB);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read - s0.pages_shared_at_read, MB / 4096);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);
	proc_stop(&a);
	return 0;
}

/* Small files read in turn, each through a descriptor of the VMM's opened
 * and closed around its read (a guest's virtio-9p reads of hundreds of
 * libraries): the agent leases each through a descriptor of its own. Kept
 * as long as the guest mapped a page of the file, they took the whole of
 * the VMM's RLIMIT_NOFILE, and the VMM's own opens failed with EMFILE.
 * They are kept to an eighth of its soft limit. */
#define SMALL_FILES 100u
#define SMALL_SIZE (64u << 10)
#define NOFILE 64
#define AGENT_IMAGE_FDS (NOFILE / 8)

/* Reads the small files with RLIMIT_NOFILE lowered to NOFILE, each to
 * RAM's start (same_place: each read maps over the last one's pages) or
 * to a place of its own; the content must be right, and the VMM must
 * keep room to open files of its own. */
static void read_small_files(struct proc *p, int same_place)
{
	char dir[PATH_MAX], prefix[PATH_MAX + 16], path[PATH_MAX + 32];
	ASSERT(realpath(test_dir(), dir));
	snprintf(prefix, sizeof(prefix), "%s/small-", dir);
	for (unsigned i = 0; i < SMALL_FILES; i++) {
		snprintf(path, sizeof(path), "%s%u", prefix, i);
		make_image(path, SMALL_SIZE, 1000 + i);
	}
	proc_start(p, NULL);
	proc_cmd(p, "map %u", RAM_PAGES);
	ASSERT(SMALL_FILES * SMALL_SIZE <= RAM_PAGES * 4096u);
	ASSERT_EQ(proc_num(p, "nofile %d", NOFILE), 0);
	for (unsigned i = 0; i < SMALL_FILES; i++) {
		snprintf(path, sizeof(path), "%s%u", prefix, i);
		size_t doff = same_place ? 0 : (size_t)i * SMALL_SIZE;
		int fd = (int)proc_num(p, "open %s", path);
		ASSERT(fd >= 0);
		ASSERT_EQ(proc_num(p, "read %d 0 %u %zu %u", fd, SMALL_SIZE, doff, SMALL_SIZE), SMALL_SIZE);
		ASSERT(strcmp(proc_cmd(p, "hash %zu %u", doff, SMALL_SIZE), hex(fnv_file(path, 0, SMALL_SIZE))) == 0);
		ASSERT_EQ(proc_num(p, "closefd %d", fd), 0);
	}
	/* The VMM's own opens, a half of its limit at once, succeed (not
	 * just one at a time: the agent's opens failed with EMFILE too, once
	 * they took all but the VMM's one). */
	int fds[NOFILE / 2];
	for (int i = 0; i < NOFILE / 2; i++) {
		snprintf(path, sizeof(path), "%s%d", prefix, i);
		fds[i] = (int)proc_num(p, "open %s", path);
		ASSERT(fds[i] >= 0);
	}
	for (int i = 0; i < NOFILE / 2; i++)
		ASSERT_EQ(proc_num(p, "closefd %d", fds[i]), 0);
	ASSERT(proc_fds_naming(p->pid, prefix, strlen(prefix), -1, NULL) <= AGENT_IMAGE_FDS);
	if (!same_place)	/* every file still there */
		for (unsigned i = 0; i < SMALL_FILES; i++) {
			snprintf(path, sizeof(path), "%s%u", prefix, i);
			ASSERT(strcmp(proc_cmd(p, "hash %zu %u", (size_t)i * SMALL_SIZE, SMALL_SIZE),
				      hex(fnv_file(path, 0, SMALL_SIZE))) == 0);
		}
}

/* Each read maps over the last one's pages: past the cap, the images no
 * page maps any more are let go at once (not a minute later), and every
 * read is shared. */
TEST_IMPL(image_fds_capped_unmapped_let_go)
{
	struct proc p;
	read_small_files(&p, 1);
	md_stats s;
	ASSERT_EQ(proc_stats(&p, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, SMALL_FILES * SMALL_SIZE / 4096);
	ASSERT_EQ(s.fallbacks_total, 0);
	proc_stop(&p);
	return 0;
}

/* Every image's pages stay mapped: past the cap, the reads of further
 * files are copied (counted as without a lease), the first ones stay
 * shared. */
TEST_IMPL(image_fds_capped_reads_copied)
{
	struct proc p;
	read_small_files(&p, 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&p, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, AGENT_IMAGE_FDS * SMALL_SIZE / 4096);
	ASSERT_EQ(s.fallbacks[MD_FB_NO_LEASE], (SMALL_FILES - AGENT_IMAGE_FDS) * SMALL_SIZE / 4096);
	for (unsigned i = 0; i < SMALL_FILES; i += SMALL_FILES - 1)
		ASSERT(proc_page_from_file(&p, (size_t)i * SMALL_SIZE) == (i < AGENT_IMAGE_FDS));
	proc_stop(&p);
	return 0;
}

/* Past the cap, one walk of guest RAM lets the images no page maps go
 * down to three quarters of it, not one image a walk (a walk per read
 * from there on): the (cap+1)-th file read, each over the last one's
 * pages, leaves three quarters of the cap and its own. */
TEST_IMPL(image_fds_capped_let_go_to_three_quarters)
{
	char dir[PATH_MAX], prefix[PATH_MAX + 16], path[PATH_MAX + 32];
	ASSERT(realpath(test_dir(), dir));
	snprintf(prefix, sizeof(prefix), "%s/quarter-", dir);
	struct proc p;
	proc_start(&p, NULL);
	proc_cmd(&p, "map %u", RAM_PAGES);
	ASSERT_EQ(proc_num(&p, "nofile %d", NOFILE), 0);
	for (unsigned i = 0; i <= AGENT_IMAGE_FDS; i++) {
		snprintf(path, sizeof(path), "%s%u", prefix, i);
		make_image(path, SMALL_SIZE, 2000 + i);
		int fd = (int)proc_num(&p, "open %s", path);
		ASSERT(fd >= 0);
		ASSERT_EQ(proc_num(&p, "read %d 0 %u 0 %u", fd, SMALL_SIZE, SMALL_SIZE), SMALL_SIZE);
		ASSERT_EQ(proc_num(&p, "closefd %d", fd), 0);
		int want = i < AGENT_IMAGE_FDS ? (int)i + 1 : AGENT_IMAGE_FDS - AGENT_IMAGE_FDS / 4 + 1;
		ASSERT_EQ(proc_fds_naming(p.pid, prefix, strlen(prefix), -1, NULL), want);
	}
	md_stats s;
	ASSERT_EQ(proc_stats(&p, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, (AGENT_IMAGE_FDS + 1) * SMALL_SIZE / 4096);
	proc_stop(&p);
	return 0;
}

TEST_IMPL(fallback_unaligned)
{
	check_fallback(512, 65536, 0, MD_FB_UNALIGNED, NULL, "");
	/* Such a read is never shared: the agent neither opens nor leases the
	 * image for it (QEMU's 9p server reads every file so). */
	const char *img = image(3);
	struct proc a;
	proc_start(&a, NULL);
	proc_cmd(&a, "map %u", RAM_PAGES);
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 11 65536", fd), 65536);
	ASSERT_EQ(fds_naming(a.pid, img), 1);	/* the reader's own */
	proc_stop(&a);
	return 0;
}

/* RAM registered in parts (advised unmergeable, then mergeable again: two
 * records that meet): a read across the seam is shared on both sides, as
 * two reads (it was copied whole, and not even counted). */
TEST_IMPL(read_across_region_records)
{
	const char *img = image(4);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "advise %u %u unmergeable", 64 * 4096, 64 * 4096), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 64 * 4096, 64 * 4096), 0);
	md_stats s0, s;
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u %u", fd, 64 * 4096, 32 * 4096, 64 * 4096), 64 * 4096);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 32 * 4096, 64 * 4096), hex(fnv_file(img, 0, 64 * 4096))) == 0);
	for (unsigned i = 32; i < 96; i += 8)
		ASSERT(proc_page_is_image(&a, i * 4096, img, (i - 32) * 4096));
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.reads_seen - s0.reads_seen, 2);
	ASSERT_EQ(s.pages_shared_at_read - s0.pages_shared_at_read, 64);
	/* A first part cut short by the end of the file ends the read, as
	 * pread's caller expects: the part after it is no read of its own. */
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	ASSERT_EQ(proc_num(&a, "read %d %u %u %u %u", fd, IMG_SIZE - 8 * 4096, 64 * 4096, 48 * 4096, 64 * 4096),
		  8 * 4096);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 48 * 4096, 8 * 4096),
		      hex(fnv_file(img, IMG_SIZE - 8 * 4096, 8 * 4096))) == 0);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.reads_seen - s0.reads_seen, 1);
	ASSERT_EQ(s.fallbacks_total, s0.fallbacks_total);
	proc_stop(&a);
	return 0;
}

/* An O_DIRECT read (QEMU's cache=none) that ends at the end of a file whose
 * size is no multiple of the disk's blocks: the bytes past the whole pages
 * cannot be read so, and the read is done whole, as asked, nothing mapped
 * (read_direct_hole_at_end_as_kernel: nor could they be read apart over a
 * hole). */
static int has_breaks(const md_stats *s) { return s->breaks > 0; }

TEST_IMPL(read_direct_to_end_of_file)
{
	char img[600];
	static unsigned char data[32 * 4096 + 100];
	snprintf(img, sizeof(img), "%s/odd.img", test_dir());
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 7 + i / 4096);
	int w = open(img, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	ASSERT(w >= 0 && write(w, data, sizeof(data)) == (ssize_t)sizeof(data));
	close(w);
	struct proc a;
	proc_start(&a, NULL);
	proc_cmd(&a, "map %u", RAM_PAGES);
	int fd = (int)proc_num(&a, "open %s direct", img);
	if (fd == -EINVAL) {
		proc_stop(&a);
		SKIP("no O_DIRECT on the test directory's filesystem");
	}
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d %u 69632 0 69632", fd, 16 * 4096), 16 * 4096 + 100);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 16 * 4096 + 100), hex(fnv_file(img, 16 * 4096, 16 * 4096 + 100))) == 0);
	/* Private copies, not pages shared and then written (the walk
	 * counted 16 breaks when the read went whole over mapped pages). */
	for (unsigned i = 0; i < 16; i++)
		ASSERT(!proc_page(&a, i * 4096).file);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 2500, has_breaks), -ETIMEDOUT);
	ASSERT_EQ(s.breaks, 0);
	ASSERT_EQ(s.pages_shared, 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.fallbacks[MD_FB_PARTIAL], 17);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(fallback_partial)
{
	check_fallback(0, 3000, 0, MD_FB_PARTIAL, NULL, "");
	/* Congruent but unaligned: inner pages shared, edges copied (however
	 * few: sharing them is what is tested). */
	const char *img = image(3);
	const char *env[] = { "MEMDEDUP_SHARE_MIN_PAGES=1", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "read %d 100 20000 100 20000", fd), 20000);
	ASSERT(strcmp(proc_cmd(&a, "hash 100 20000"), hex(fnv_file(img, 100, 20000))) == 0);
	/* Bytes 100..20100: page 0 and page 4 are partial, 1-3 whole. */
	ASSERT(!proc_page(&a, 0).file && proc_page_is_image(&a, 4096, img, 4096) &&
	       proc_page_is_image(&a, 12288, img, 12288));
	ASSERT(!proc_page(&a, 16384).file);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 3);
	ASSERT_EQ(s.fallbacks[MD_FB_PARTIAL], 2);
	proc_stop(&a);
	return 0;
}

/* Reads [0, len) of img into RAM at doff in chunks; checks the content and
 * whether the first page shows the file's frame. */
static void read_and_check(struct proc *a, int fd, const char *img, size_t doff, size_t len,
			   size_t chunk, int shared)
{
	ASSERT_EQ(proc_num(a, "read %d 0 %zu %zu %zu", fd, len, doff, chunk), len);
	ASSERT(strcmp(proc_cmd(a, "hash %zu %zu", doff, len), hex(fnv_file(img, 0, len))) == 0);
	struct pm pm = proc_page(a, doff);
	ASSERT(pm.present || shared);
	ASSERT_EQ(proc_page_is_image(a, doff, img, 0), shared);
}

static int hints_counted(const md_stats *s) { return s->hints_pushed >= 2; }
static int six_hints(const md_stats *s) { return s->hints_pushed >= 6; }

TEST_IMPL(small_reads_copied)
{
	const char *img = image(3);
	const char *env_scan[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_DOMAIN=private",
				   "MEMDEDUP_SLEEP_MS=10000", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env_scan);
	/* The default minimum: reads of 8 pages are copied, counted apart
	 * (not as fallbacks) and hinted to the scanner; 16 pages are shared. */
	read_and_check(&a, fd, img, 0, 65536, 32768, 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, hints_counted), 0);
	ASSERT_EQ(s.read_small_pages, 16);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.fallbacks_total, 0);
	ASSERT_EQ(s.hints_pushed, 2);
	proc_cmd(&a, "hash %u 65536", MB);	/* fault them in: shared pages map the file */
	read_and_check(&a, fd, img, MB, 65536, 65536, 1);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	ASSERT_EQ(s.read_small_pages, 16);
	/* The read time splits: the sharing read apart, single pages apart. */
	ASSERT_EQ(s.read_shared_bytes, 65536);
	ASSERT(s.read_shared_ns > 0 && s.read_shared_ns < s.read_ns);
	ASSERT_EQ(s.reads_page, 0);
	read_and_check(&a, fd, img, 2 * MB, 16384, 4096, 0);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.reads_page, 4);
	ASSERT(s.read_page_ns > 0 && s.read_page_ns + s.read_shared_ns < s.read_ns);
	ASSERT_EQ(s.read_shared_bytes, 65536);
	/* One cut short by the end of the file is no 4 KiB read. */
	ASSERT_EQ(proc_num(&a, "read %d %u 4096 %u 4096", fd, IMG_SIZE - 100, 3 * MB), 100);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.reads_page, 4);
	/* Each 4 KiB read copied is hinted to the scanner (that one is not). */
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, six_hints), 0);
	ASSERT_EQ(s.hints_pushed, 6);
	proc_stop(&a);

	/* A smaller minimum shares smaller reads; unaligned reads are still
	 * counted as unaligned. */
	const char *env4[] = { "MEMDEDUP_SHARE_MIN_PAGES=4", NULL };
	fd = start_reader(&a, img, env4);
	read_and_check(&a, fd, img, 0, 65536, 16384, 1);
	read_and_check(&a, fd, img, MB, 65536, 12288, 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 8192 %u 8192", fd, 2 * MB + 512), 8192);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	ASSERT_EQ(s.read_small_pages, 16);
	ASSERT_EQ(s.fallbacks[MD_FB_UNALIGNED], 2);
	proc_stop(&a);

	/* A bad value is said in the log; the agent runs with the default. */
	const char *env_bad[] = { "MEMDEDUP_SHARE_MIN_PAGES=0", NULL };
	fd = start_reader(&a, img, env_bad);
	read_and_check(&a, fd, img, 0, 65536, 32768, 0);
	read_and_check(&a, fd, img, MB, 65536, 65536, 1);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.read_small_pages, 16);
	proc_stop(&a);
	return 0;
}

/* MEMDEDUP_NO_SHARING (the baseline of comparisons): a read that would be
 * shared is copied, counted as seen and as read, neither shared nor a
 * fallback. */
TEST_IMPL(no_sharing_copies_reads)
{
	const char *img = image(3);
	const char *env[] = { "MEMDEDUP_NO_SHARING=1", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	read_and_check(&a, fd, img, 0, 65536, 65536, 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.reads_seen, 1);
	ASSERT_EQ(s.bytes_read, 65536);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.fallbacks_total, 0);
	proc_stop(&a);
	return 0;
}

/* A read cut short by the end of the file to fewer whole pages than the
 * minimum is copied, counted as small, as a read that asked for that few:
 * mapping the 4 pages left would cost more than copying them. */
TEST_IMPL(read_cut_by_end_of_file_copied)
{
	const char *img = image(3);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "read %d %u 131072 0 131072", fd, IMG_SIZE - 16384), 16384);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 16384"), hex(fnv_file(img, IMG_SIZE - 16384, 16384))) == 0);
	for (unsigned i = 0; i < 4; i++)
		ASSERT(!proc_page(&a, i * 4096).file);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.read_small_pages, 32);	/* the pages asked for, as a small read's */
	ASSERT_EQ(s.fallbacks_total, 0);
	proc_stop(&a);
	return 0;
}

/* MEMDEDUP_POPULATE: the pages a read maps are faulted in at the read, the
 * image's frames present before the guest touches them (without it they
 * come at the guest's first touch, each a fault). */
TEST_IMPL(populate_maps_image_frames_at_read)
{
	const char *img = image(3);
	const char *env[] = { "MEMDEDUP_POPULATE=1", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	for (unsigned i = 0; i < 16; i++)	/* before any hash touches them */
		ASSERT(proc_page_is_image(&a, i * 4096, img, i * 4096));
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	ASSERT_EQ(s.fallbacks_total, 0);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(fallback_pipe)
{
	struct proc a;
	proc_start(&a, NULL);
	proc_cmd(&a, "map %u", RAM_PAGES);
	int fd = (int)proc_num(&a, "pipe");
	ASSERT(fd >= 0);
	/* pread on a pipe fails as it would without the agent. */
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), -ESPIPE);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT(s.fallbacks[MD_FB_NOT_FILE] > 0);
	proc_stop(&a);
	return 0;
}

/* A descriptor that cannot read (O_PATH) fails the read with EBADF, as
 * without the agent; the agent's own descriptor of the file, which it
 * would open anew through /proc/self/fd, read it. */
TEST_IMPL(fallback_path_descriptor)
{
	const char *img = image(3);
	struct proc a;
	proc_start(&a, NULL);
	proc_cmd(&a, "map %u", RAM_PAGES);
	ASSERT(a.base != 0);
	int fd = (int)proc_num(&a, "open %s path", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), -EBADF);
	proc_cmd(&a, "hash 0 4096");	/* a mapping not touched shows no frame */
	ASSERT(!proc_page(&a, 0).file);
	ASSERT_EQ(fds_naming(a.pid, img), 1);	/* the reader's own */
	proc_stop(&a);
	return 0;
}

/* MADV_MERGEABLE over a range with a hole fails with ENOMEM (as kernel
 * KSM's) and registers only what is mapped: shared memory mapped in the
 * hole later is read into as the VMM asked, not replaced by private pages
 * of the image. */
/* Memory a userfaultfd of the VMM's covered before it asked for merging
 * (postcopy migration, a background snapshot) is not registered: a mapping
 * of ours there (a read shared at read time) ended that registration, and
 * the VMM's userfaultfd heard of those pages no more. */
TEST_IMPL(userfault_first_not_registered)
{
	struct proc p;
	proc_start(&p, NULL);
	proc_cmd(&p, "mapuffd %u", RAM_PAGES);
	ASSERT(p.base != 0);
	int fd = (int)proc_num(&p, "open %s", image(3));
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&p, "read %d 0 %u 0 65536", fd, MB), MB);
	ASSERT(strcmp(proc_cmd(&p, "hash 0 %u", MB), hex(fnv_file(image(3), 0, MB))) == 0);
	for (size_t off = 0; off < MB; off += 64 * 4096)
		ASSERT(!proc_page(&p, off).file);
	ASSERT_EQ(proc_num(&p, "vmflag 0 uw"), 1);	/* still the VMM's */
	md_stats s;
	ASSERT_EQ(proc_stats(&p, &s), 0);
	ASSERT_EQ(s.pages_shared, 0);
	proc_stop(&p);
	return 0;
}

TEST_IMPL(mergeable_hole_not_registered)
{
	const char *img = image(3);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT(strcmp(proc_cmd(&a, "mergehole %d", fd), "-12 1") == 0);
	proc_stop(&a);
	return 0;
}

/* hugetlbfs memory (QEMU's -mem-path) is not registered: its huge pages
 * cannot be protected, mapped or discarded by 4 KiB, and a discard's
 * anonymous memory would take the guest's RAM off them. */
TEST_IMPL(hugetlb_not_registered)
{
	/* A free huge page: the host's if it has one, else one more reserved
	 * for the test (never fewer than it had: given back, a fragmented
	 * host might not get them again). */
	int guard = -1;
	const char *free_line = strstr(file_text("/proc/meminfo"), "HugePages_Free:");
	if (!free_line || atol(free_line + 15) < 1) {
		char more[32];
		snprintf(more, sizeof(more), "%ld", atol(file_text("/proc/sys/vm/nr_hugepages")) + 1);
		guard = set_until_exit("/proc/sys/vm/nr_hugepages", more);
		if (guard < 0)
			SKIP("cannot set vm.nr_hugepages here");
		free_line = strstr(file_text("/proc/meminfo"), "HugePages_Free:");
		if (!free_line || atol(free_line + 15) < 1) {
			close(guard);
			SKIP("no huge page could be reserved");
		}
	}
	struct proc a;
	proc_start(&a, NULL);
	proc_cmd(&a, "map %u", RAM_PAGES);
	ASSERT(a.base != 0);
	long long r = proc_num(&a, "hugemap");
	if (r == 1) {
		proc_stop(&a);
		if (guard >= 0)
			close(guard);
		SKIP("no hugetlb memory could be mapped");
	}
	ASSERT_EQ(r, 0);	/* the kernel's answer: KSM passes over it */
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)RAM_PAGES * 4096);
	proc_stop(&a);
	if (guard >= 0)
		close(guard);
	return 0;
}

TEST_IMPL(fallback_writable_file)
{
	/* The reader itself has the image open for writing: no lease. */
	check_fallback(0, 65536, 0, MD_FB_NO_LEASE, NULL, "rw");
	/* Known from its descriptor alone: the agent neither opens the file
	 * nor asks about it (fstat of a writable disk on NFS first writes its
	 * dirty pages back to the server; review). */
	{
		const char *im = image(3);
		struct proc a;
		int other;
		int fd = start_reader_mode(&a, im, "rw", NULL);
		ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
		ASSERT_EQ(naming(a.pid, im, fd, &other), 0);
		proc_stop(&a);
	}
	/* Another process has it open for writing. */
	const char *img = image(3);
	int wfd = open(img, O_RDWR);
	ASSERT(wfd >= 0);
	check_fallback(0, 65536, 0, MD_FB_NO_LEASE, NULL, "");
	close(wfd);
	return 0;
}

/* A VMM run by a user other than the image's owner (and without
 * CAP_LEASE) cannot lease it: its reads are copied, and the log names the
 * image and what would let it be shared (the README says it too). It
 * said only "Permission denied". */
TEST_IMPL(fallback_lease_refused_names_image)
{
	char dir[] = "/tmp/memdedup-lease-XXXXXX", img[64], log[64], rundir[96], logenv[96], cmd[128];
	ASSERT(mkdtemp(dir));
	ASSERT(chmod(dir, 0777) == 0);
	snprintf(img, sizeof(img), "%s/image", dir);
	snprintf(log, sizeof(log), "%s/log", dir);
	snprintf(rundir, sizeof(rundir), "MEMDEDUP_RUN_DIR=%s", dir);
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	make_image(img, IMG_SIZE, 6);	/* root's, 0644 */
	const char *env[] = { rundir, logenv, NULL };
	struct proc a;
	proc_start(&a, env);
	long long changed = proc_num(&a, "setuid 65534");	/* before the agent starts */
	if (changed != 0) {
		proc_stop(&a);
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		ASSERT(system(cmd) == 0);
		SKIP("cannot change a process's user here (not root)");
	}
	proc_cmd(&a, "map %u", RAM_PAGES);
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT(!proc_page(&a, 0).file);
	proc_stop(&a);
	char said[2048];
	snprintf(said, sizeof(said), "%s", file_text(log));
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ASSERT(system(cmd) == 0);
	char want[160];
	snprintf(want, sizeof(want), "no read lease on image %s (Permission denied)", img);
	ASSERT(strstr(said, want));
	ASSERT(strstr(said, "a lease needs the file's owner (or CAP_LEASE)"));
	return 0;
}

/* An image on a filesystem whose leases may not see every writer (here
 * ramfs, mounted in a mount namespace of the test's own; FUSE, NFS and
 * overlayfs are the ones that matter) is copied, and not even opened. */
TEST_IMPL(fallback_filesystem_without_leases)
{
	char dir[600], img[700];
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		SKIP("cannot make a mount namespace here");
	snprintf(dir, sizeof(dir), "%s/ramfs", test_dir());
	ASSERT(mkdir(dir, 0700) == 0);
	if (mount("none", dir, "ramfs", 0, NULL) != 0)
		SKIP("cannot mount a ramfs here");
	snprintf(img, sizeof(img), "%s/image", dir);
	make_image(img, IMG_SIZE, 5);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT(!proc_page(&a, 0).file);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT(s.fallbacks[MD_FB_NO_LEASE] > 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(fds_naming(a.pid, img), 1);	/* the reader's own */
	/* The verdict is remembered: eight more reads ask the filesystem
	 * nothing (each asked fstatfs, a round trip on NFS or FUSE, under
	 * the agent's lock). strace sees the reader's system calls. */
	char cmd[1600], out[700];
	if (system("command -v strace >/dev/null") != 0)
		SKIP("no strace here (scripts/install-deps.sh test installs it)");
	snprintf(out, sizeof(out), "%s/strace.out", test_dir());
	snprintf(cmd, sizeof(cmd), "strace -f -qq -e trace=fstatfs,statfs,pread64 -o %s -p %d 2>%s.err & echo $!", out,
		 (int)a.pid, out);
	FILE *f = popen(cmd, "r");
	int spid = 0;
	ASSERT(f && fscanf(f, "%d", &spid) == 1 && spid > 0);
	pclose(f);
	/* Attached once the reader's status names a tracer. */
	char status[64], *tp;
	snprintf(status, sizeof(status), "/proc/%d/status", (int)a.pid);
	for (int i = 0; i < 500; i++) {
		tp = strstr(file_text(status), "TracerPid:\t");
		if (tp && atoi(tp + 11) != 0)
			break;
		usleep(10000);
	}
	ASSERT(tp && atoi(tp + 11) == spid);
	for (int i = 1; i <= 8; i++)
		ASSERT_EQ(proc_num(&a, "read %d %d 65536 %d 65536", fd, i * 65536, i * 65536), 65536);
	ASSERT(kill(spid, SIGINT) == 0);
	ASSERT(waitpid(spid, NULL, 0) == spid || errno == ECHILD);
	/* Gone (or a zombie: an orphan's init may not reap it): its output
	 * is complete. */
	char sstat[64];
	snprintf(sstat, sizeof(sstat), "/proc/%d/stat", spid);
	int gone = 0;
	for (int i = 0; i < 500 && !gone; i++) {
		const char *st = kill(spid, 0) == 0 ? strrchr(file_text(sstat), ')') : NULL;
		gone = !st || (st[1] == ' ' && st[2] == 'Z');
		if (!gone)
			usleep(10000);
	}
	ASSERT(gone);
	const char *calls = file_text(out);
	/* The trace saw the reads (preads of the image's descriptor), and no
	 * statfs of either kind among them. */
	char want[32];
	snprintf(want, sizeof(want), "pread64(%d,", fd);
	int preads = 0;
	for (const char *p = calls; (p = strstr(p, want)) != NULL; p++)
		preads++;
	printf("  %d preads of the image traced\n", preads);
	ASSERT(preads >= 8);
	ASSERT(strstr(calls, "statfs(") == NULL);
	proc_stop(&a);
	umount(dir);	/* the namespace goes with this test's process anyway */
	return 0;
}

/* A run directory on a full filesystem: no statistics file (said in the
 * log), and the VMM goes on. A file sized but not written faulted SIGBUS
 * at the agent's first store into it. */
TEST_IMPL(stats_dir_full)
{
	char dir[600], fill[700];
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		SKIP("cannot make a mount namespace here");
	snprintf(dir, sizeof(dir), "%s/full", test_dir());
	ASSERT(mkdir(dir, 0700) == 0);
	if (mount("none", dir, "tmpfs", 0, "size=64k,mode=0700") != 0)
		SKIP("cannot mount a tmpfs here");
	snprintf(fill, sizeof(fill), "%s/fill", dir);
	int ffd = open(fill, O_WRONLY | O_CREAT, 0600);
	ASSERT(ffd >= 0);
	char junk[4096];
	memset(junk, 1, sizeof(junk));
	while (write(ffd, junk, sizeof(junk)) == (ssize_t)sizeof(junk))
		;
	close(ffd);
	char env[700];
	snprintf(env, sizeof(env), "MEMDEDUP_RUN_DIR=%s", dir);
	const char *const envs[] = { env, NULL };
	const char *img = image(5);
	struct proc a;
	int fd = start_reader(&a, img, envs);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT(proc_page_from_file(&a, 0));	/* the agent works without its file */
	char stats[700];
	snprintf(stats, sizeof(stats), "%s/agent-%d.stats", dir, (int)a.pid);
	ASSERT(access(stats, F_OK) != 0);
	proc_stop(&a);
	umount(dir);
	return 0;
}

static int eight_hints(const md_stats *s) { return s->hints_pushed >= 8; }
static int nine_hints(const md_stats *s) { return s->hints_pushed >= 9; }

/* A sparse image on tmpfs: the holes are copied, not mapped. A fault on a
 * hole of a tmpfs file allocates a page in the file (a pread of it does
 * not): the image grew by every hole the guest read, and on a full tmpfs
 * the guest's first touch was a SIGBUS where the plain read succeeds. */
TEST_IMPL(tmpfs_image_holes_copied)
{
	char dir[600], img[700];
	const char *none = own_tmpfs(dir, sizeof(dir), "256k");
	if (none)
		SKIP("%s", none);
	snprintf(img, sizeof(img), "%s/img", dir);
	/* 8 MiB: data in pages 0-15 and 40, holes elsewhere. */
	int ifd = open(img, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT(ifd >= 0);
	static char data[65536];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (char)(i * 7 + 3);
	ASSERT(pwrite(ifd, data, sizeof(data), 0) == (ssize_t)sizeof(data));
	ASSERT(pwrite(ifd, data, 4096, 40 * 4096) == 4096);
	ASSERT(ftruncate(ifd, 8 * MB) == 0);
	close(ifd);
	/* Scanning: the copied pages are hinted to the scanner. */
	const char *env[] = { "MEMDEDUP_SHARE_MIN_PAGES=1", "MEMDEDUP_SCAN=1", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 %u", fd, 8 * MB, MB), 8 * MB);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 8 * MB), hex(fnv_file(img, 0, 8 * MB))) == 0);
	for (unsigned i = 0; i < 16; i++)	/* the data before the first hole: mapped */
		ASSERT(proc_page_is_image(&a, i * 4096, img, i * 4096));
	/* Only those: page 40, after a hole in the same read, was copied
	 * (the scanner may merge it onto the image since: not a read's). */
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	ASSERT(!proc_page(&a, 16 * 4096).file);
	struct stat st;
	ASSERT(stat(img, &st) == 0);
	printf("  image allocated %lld KiB after the reads\n", (long long)st.st_blocks / 2);
	ASSERT(st.st_blocks * 512 <= 17 * 4096);	/* its 17 pages of data, no hole filled */
	/* Eight 1 MiB reads, each hinted: seven copied whole (a hole at
	 * their start), the first's pages after its hole (they were not). */
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, eight_hints), 0);
	ASSERT_EQ(s.hints_pushed, 8);
	/* A hole of exactly one page after the mapped data is hinted too. */
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 %u", fd, 17 * 4096, 17 * 4096), 17 * 4096);
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, nine_hints), 0);
	ASSERT_EQ(s.hints_pushed, 9);
	ASSERT_EQ(s.pages_shared_at_read, 32);
	proc_stop(&a);
	umount(dir);
	return 0;
}

/* A tmpfs image with data in its first 4 pages only: a read of 64 pages
 * would map 4 before the hole, fewer than the minimum (16): copied whole,
 * counted as partial, as any read that too little of is mapped. Exactly
 * the minimum before a hole (pages 128-143) is mapped. */
TEST_IMPL(tmpfs_image_short_data_copied)
{
	char dir[600], img[700];
	const char *none = own_tmpfs(dir, sizeof(dir), "256k");
	if (none)
		SKIP("%s", none);
	snprintf(img, sizeof(img), "%s/img", dir);
	int ifd = open(img, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT(ifd >= 0);
	static char data[16384];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (char)(i * 5 + 1);
	ASSERT(pwrite(ifd, data, sizeof(data), 0) == (ssize_t)sizeof(data));
	for (unsigned i = 0; i < 4; i++)
		ASSERT(pwrite(ifd, data, sizeof(data), (128 + 4 * i) * 4096) == (ssize_t)sizeof(data));
	ASSERT(ftruncate(ifd, MB) == 0);
	close(ifd);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "read %d 0 262144 0 262144", fd), 262144);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 262144"), hex(fnv_file(img, 0, 262144))) == 0);
	for (unsigned i = 0; i < 4; i++)
		ASSERT(!proc_page(&a, i * 4096).file);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.fallbacks[MD_FB_PARTIAL], 64);
	ASSERT_EQ(proc_num(&a, "read %d 524288 262144 524288 262144", fd), 262144);
	ASSERT(strcmp(proc_cmd(&a, "hash 524288 262144"), hex(fnv_file(img, 524288, 262144))) == 0);
	ASSERT(proc_page_is_image(&a, 143 * 4096, img, 143 * 4096) && !proc_page(&a, 144 * 4096).file);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	/* The 48 whole pages copied after the hole count one each, not as
	 * one partial page at the read's edge. */
	ASSERT_EQ(s.fallbacks[MD_FB_PARTIAL], 64 + 48);
	proc_stop(&a);
	umount(dir);
	return 0;
}

/* A read at the file position (preadv2's offset -1; flags too) is copied
 * whole, never shared: its segments in guest RAM are hinted to the scanner
 * all the same, the likeliest duplicates. */
TEST_IMPL(position_reads_hinted)
{
	const char *img = image(3);
	const char *env[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_DOMAIN=private", "MEMDEDUP_SLEEP_MS=10000", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "preadv %d %u 0 %u pos", fd, MB, MB), MB);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_file(img, MB, MB))) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, hints_counted), 0);
	ASSERT_EQ(s.hints_pushed, 2);	/* its two halves */
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(s.fallbacks[MD_FB_FLAGS], MB / 4096);	/* pages, as every other reason counts */
	proc_stop(&a);
	return 0;
}

static int has_lease_break(const md_stats *s) { return s->lease_breaks > 0; }

/* Opens img for writing (which waits for the agent to give its lease back;
 * *waited: how long, in seconds) and overwrites all of it. Returns the fd. */
static int overwrite_image(const char *img, time_t *waited)
{
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int wfd = open(img, O_WRONLY);
	ASSERT(wfd >= 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (waited)
		*waited = t1.tv_sec - t0.tv_sec;
	char junk[65536];
	memset(junk, 0xee, sizeof(junk));
	for (size_t off = 0; off < IMG_SIZE; off += sizeof(junk))
		ASSERT(pwrite(wfd, junk, sizeof(junk), (off_t)off) == (ssize_t)sizeof(junk));
	fsync(wfd);
	return wfd;
}

/* A fresh image (in img: test_dir()/name, content from seed; its hash in
 * *orig if asked) read whole, at offset 0 of the RAM of a started process
 * (shared at read time). Returns the image's descriptor in the process. */
static int read_fresh_image(struct proc *a, char *img, size_t size, const char *name, unsigned seed,
			    const char *const *env, uint64_t *orig)
{
	snprintf(img, size, "%s/%s", test_dir(), name);
	make_image(img, IMG_SIZE, seed);
	if (orig)
		*orig = fnv_file(img, 0, IMG_SIZE);
	int fd = start_reader(a, img, env);
	ASSERT_EQ(proc_num(a, "read %d 0 %u 0 65536", fd, IMG_SIZE), IMG_SIZE);
	return fd;
}

/* Reads img's first MiB through fd to IMG_SIZE in a's RAM, the file's
 * content every time, until the read maps the image's pages (the lease
 * taken again: the agent tries once a second): 1, or 0 if not within
 * 10 s. */
static int read_until_leased(struct proc *a, int fd, const char *img)
{
	uint64_t want = fnv_file(img, 0, MB);
	for (int i = 0; i < 50; i++) {
		if (i)
			usleep(200000);
		ASSERT_EQ(proc_num(a, "read %d 0 %u %u 65536", fd, MB, IMG_SIZE), MB);
		ASSERT(strcmp(proc_cmd(a, "hash %u %u", IMG_SIZE, MB), hex(want)) == 0);
		if (proc_page_is_image(a, IMG_SIZE, img, 0))
			return 1;
	}
	return 0;
}

TEST_IMPL(lease_break_keeps_content)
{
	char img[512];
	uint64_t orig;
	struct proc a;
	int fd = read_fresh_image(&a, img, sizeof(img), "image-mutable", 9, NULL, &orig);
	ASSERT(proc_page_from_file(&a, 0));

	/* Opening for writing waits until the agent has made the pages
	 * private; then overwrite the whole file. */
	int wfd = overwrite_image(img, NULL);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	for (size_t off = 0; off < IMG_SIZE; off += 64 * 4096)
		ASSERT(!proc_page(&a, off).file);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_lease_break), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	ASSERT_EQ(s.pages_privatized, IMG_SIZE / 4096);

	/* While the writer has it open, reads are copies of the new content. */
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u 65536", fd, MB, IMG_SIZE), MB);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", IMG_SIZE, MB), hex(fnv_file(img, 0, MB))) == 0);
	ASSERT(!proc_page(&a, IMG_SIZE).file);
	close(wfd);
	/* Once the writer is gone, the lease comes back (retried each second),
	 * through the agent's same descriptor (the kernel clears its lease
	 * signal and owner with the lease: it was taken for another's, and
	 * a new one opened each break). */
	ASSERT(read_until_leased(&a, fd, img));
	ASSERT_EQ(fds_naming(a.pid, img), 2);	/* the reader's and the agent's */
	proc_stop(&a);
	return 0;
}

/* Starts a's O_DIRECT write of its first page of RAM (shared with an
 * image) to out (test_dir()/direct-out), held in flight until "dwritego":
 * 0, or -EINVAL (a stopped) where the file system takes no O_DIRECT. */
static int direct_write_held(struct proc *a, char *out, size_t size)
{
	snprintf(out, size, "%s/direct-out", test_dir());
	long long r = proc_num(a, "dwrite %s 0", out);
	if (r == -EINVAL) {
		proc_stop(a);
		return -EINVAL;
	}
	ASSERT_EQ(r, 0);	/* the write holds the image's page, and waits */
	return 0;
}

/* A write with O_DIRECT (QEMU's cache=none) from a page shared with an
 * image holds the image's page cache page while it runs. If the lease went
 * back while such a write was in flight, the writer's bytes in that page
 * would reach the disk in the guest's place (agent/writes.c). */
TEST_IMPL(lease_break_waits_for_direct_write)
{
	char img[512], out[512];
	struct proc a;
	read_fresh_image(&a, img, sizeof(img), "image-written-from", 11, NULL, NULL);
	uint64_t page0 = fnv_file(img, 0, 4096);
	if (direct_write_held(&a, out, sizeof(out)) != 0)
		SKIP("no O_DIRECT on the test directory's filesystem");

	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0)
		_exit(close(overwrite_image(img, NULL)) == 0 ? 0 : 1);
	/* The writer gets in only once the write has ended: a second, or as
	 * soon as it is in (without the wait, in milliseconds). */
	int status = 0, in_early = 0;
	for (int ms = 0; ms < 1000 && !in_early; ms += 10) {
		usleep(10000);
		in_early = waitpid(writer, &status, WNOHANG) == writer;
	}
	ASSERT_EQ(proc_num(&a, "dwritego"), 2 * 4096);
	ASSERT(!in_early);
	ASSERT_EQ(waitpid(writer, &status, 0), writer);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT(fnv_file(out, 0, 4096) == page0);	/* the guest's bytes */
	ASSERT(fnv_file(img, 0, 4096) != page0);	/* the writer's, in the image */
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_lease_break), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	proc_stop(&a);
	return 0;
}

/* The descriptor of pid other than not_fd that names path, or -1. */
static int fd_naming(pid_t pid, const char *path, int not_fd)
{
	int fd = -1;
	naming(pid, path, not_fd, &fd);
	return fd;
}

/* The same write, the image idle meanwhile: the VMM took its RAM out of
 * merging (MADV_UNMERGEABLE: the pages made private, none mapped from the
 * image), and the image was let go at the next look for idle ones, its
 * lease with it, while the write still held its page: a writer let in then
 * put its bytes on the output disk (a review's find). Now it is kept until
 * the write ends, and let go after. */
TEST_IMPL(image_idle_kept_while_written_from)
{
	char img[512], out[512];
	struct proc a;
	const char *env[] = { "MEMDEDUP_IMAGE_IDLE_S=1", NULL };
	int rfd = read_fresh_image(&a, img, sizeof(img), "image-idle-written-from", 12, env, NULL);
	uint64_t page0 = fnv_file(img, 0, 4096);
	if (direct_write_held(&a, out, sizeof(out)) != 0)
		SKIP("no O_DIRECT on the test directory's filesystem");
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", RAM_PAGES * 4096), 0);
	ASSERT(!proc_page(&a, 0).file);	/* made private */
	sleep(3);	/* idle past its second, looked at every second */
	ASSERT(fd_naming(a.pid, img, rfd) >= 0);	/* kept, with its lease */
	ASSERT_EQ(proc_num(&a, "dwritego"), 2 * 4096);
	ASSERT(fnv_file(out, 0, 4096) == page0);
	int gone = 0;
	for (int i = 0; i < 100 && !gone; i++) {
		usleep(100000);
		gone = fd_naming(a.pid, img, rfd) < 0;
	}
	ASSERT(gone);	/* let go once the write ended */
	proc_stop(&a);
	return 0;
}

/* The image read into a's RAM is shared: closes the agent's own descriptor
 * of it (fd is the reader's) and returns its number. */
static int close_agent_fd(struct proc *a, const char *img, int fd)
{
	ASSERT(proc_page(a, 0).file || !proc_page(a, 0).present);
	int afd = fd_naming(a->pid, img, fd);
	ASSERT(afd >= 0);
	ASSERT_EQ(proc_num(a, "closefd %d", afd), 0);
	return afd;
}

/* Waits for the lease break the agent finds, and checks that every page
 * read of the image was made private. */
static void image_pages_made_private(struct proc *a)
{
	md_stats s;
	ASSERT_EQ(proc_stats_wait(a, &s, 20000, has_lease_break), 0);
	ASSERT_EQ(s.pages_privatized, IMG_SIZE / 4096);
	/* Read first: a page of the image's mapping not touched yet shows
	 * no frame, shared or not. */
	proc_cmd(a, "hash 0 %u", IMG_SIZE);
	for (size_t off = 0; off < IMG_SIZE; off += 64 * 4096)
		ASSERT(proc_page(a, off).present && !proc_page(a, off).file);
}

/* A root VMM that gives root up (QEMU's -runas) after a read was shared:
 * only a file's owner may give a lease on it back, so the agent gives back
 * those on images the new user does not own before the uid changes. Left
 * held, the image's next writer waited the kernel's lease-break-time (45 s
 * by default) for a lease nobody could give back. */
static int given_back_before(const char *change, unsigned seed)
{
	if (geteuid() != 0)
		SKIP("needs root: the VMM gives root up");
	char img[512];
	uint64_t orig;
	struct proc a;
	read_fresh_image(&a, img, sizeof(img), "image-runas", seed, NULL, &orig);
	proc_cmd(&a, "hash 0 %u", IMG_SIZE);	/* present: a frame to look at */
	ASSERT(proc_page_from_file(&a, 0));
	ASSERT_EQ(proc_num(&a, "%s", change), 0);
	for (size_t off = 0; off < IMG_SIZE; off += 64 * 4096)
		ASSERT(!proc_page(&a, off).file);
	time_t waited;
	int wfd = overwrite_image(img, &waited);
	printf("  the writer waited %lld s\n", (long long)waited);
	ASSERT(waited < 5);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	close(wfd);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(lease_given_back_before_uid_change)
{
	return given_back_before("setuid 65534", 19);
}

/* The same through setreuid, the effective uid alone (the real one left,
 * -1): the new user is the effective one, not the real. */
TEST_IMPL(lease_given_back_before_reuid_change)
{
	return given_back_before("setreuid -1 65534", 20);
}

/* The VMM closes the agent's own descriptor of an image (close_range, say):
 * the agent can no longer see or give back its lease (which lives on, held
 * by the mappings, until the kernel's lease-break-time after a writer
 * comes). It finds that within a second and makes the pages private,
 * and a later read leases the image again through a descriptor opened
 * anew. */
TEST_IMPL(lease_gone_with_agent_fd)
{
	char img[512];
	uint64_t orig;
	struct proc a;
	int fd = read_fresh_image(&a, img, sizeof(img), "image-fdgone", 13, NULL, &orig);
	int afd = close_agent_fd(&a, img, fd);
	/* The VMM opens the image again, at the same number: its own
	 * descriptor, which the agent must neither lease (a writer would
	 * then send the VMM a SIGIO) nor close. */
	ASSERT_EQ(proc_num(&a, "open %s", img), afd);
	image_pages_made_private(&a);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	ASSERT(read_until_leased(&a, fd, img));	/* the lease is retried each second */
	char info[64];
	snprintf(info, sizeof(info), "/proc/%d/fdinfo/%d", (int)a.pid, afd);
	ASSERT(!strstr(file_text(info), "LEASE"));
	proc_stop(&a);
	return 0;
}

/* The VMM puts another file at the agent's descriptor number (close, then
 * open: dup2 does as much), and reads more of the image before the
 * once-a-second look: the read must not map the other file. It is copied,
 * and the image's pages are made private as on a lease break. */
TEST_IMPL(lease_fd_replaced_read_copied)
{
	char img[512];
	uint64_t orig;
	struct proc a;
	int fd = read_fresh_image(&a, img, sizeof(img), "image-fdswap", 14, NULL, &orig);
	const char *other = image(15);
	int afd = close_agent_fd(&a, img, fd);
	ASSERT_EQ(proc_num(&a, "open %s", other), afd);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u 65536", fd, MB, IMG_SIZE), MB);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", IMG_SIZE, MB), hex(fnv_file(img, 0, MB))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	image_pages_made_private(&a);
	proc_stop(&a);
	return 0;
}

/* The VMM closes the agent's descriptor of an image, and the agent opens
 * another image to lease it before its once-a-second look: the lowest free
 * number, the closed one. A read of the first image found a lease at its
 * number and mapped the other image's pages into the guest. It is copied,
 * and the first image's pages are made private as on a lease break. */
TEST_IMPL(lease_fd_reused_for_other_image)
{
	char img[512], other[512];
	uint64_t orig;
	struct proc a;
	snprintf(other, sizeof(other), "%s", image(17));
	for (int attempt = 0;; attempt++) {
		ASSERT(attempt < 5);
		int fd = read_fresh_image(&a, img, sizeof(img), "image-fdreuse", 16, NULL, &orig);
		int ofd = (int)proc_num(&a, "open %s", other);	/* before: it must not take the number */
		ASSERT(ofd >= 0);
		int afd = close_agent_fd(&a, img, fd);
		ASSERT_EQ(proc_num(&a, "read %d 0 %u %u 65536", ofd, MB, IMG_SIZE), MB);
		/* Else the once-a-second look came between (and found the
		 * lease gone), or the agent's thread opened a file first and
		 * took the number: the case is not made, try again. */
		md_stats s;
		ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, NULL), 0);
		if (fd_naming(a.pid, other, ofd) != afd || s.lease_breaks) {
			proc_stop(&a);
			continue;
		}
		ASSERT_EQ(proc_num(&a, "read %d 0 %u %u 65536", fd, MB, IMG_SIZE + MB), MB);
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", IMG_SIZE + MB, MB), hex(fnv_file(img, 0, MB))) == 0);
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", IMG_SIZE, MB), hex(fnv_file(other, 0, MB))) == 0);
		ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
		image_pages_made_private(&a);
		proc_stop(&a);
		return 0;
	}
}

/* A lease break while the agent's cgroup is out of memory: making the pages
 * private fails, and is tried again, with the agent's lock let go between
 * tries, until memory comes back; only then may the writer go on, and the
 * guest keeps what it read. With five tries over 100 ms, as it was, the
 * lease went with the pages still the file's and the writer's bytes showed.
 * v1's oom_control makes the kernel refuse the memory (ENOMEM) where it
 * would otherwise kill the process. */
/* A memory cgroup whose limit the kernel refuses at instead of killing:
 * NULL, or why there is none. */
static const char *refusing_cgroup(struct test_cgroup *cg)
{
	if (cgroup_make(cg))
		return "no memory cgroup of our own to be had here";
	if (strcmp(cg->limit, "memory.limit_in_bytes") != 0 || write_text(cg->dir, "memory.oom_control", "1")) {
		close(cg->guard);
		return "no cgroup v1 memory.oom_control: cgroup v2 kills instead of refusing";
	}
	return NULL;
}

/* The same, where a lease break waits long enough for a test to watch
 * the writer wait (10 s). */
static const char *refusing_cgroup_slow_breaks(struct test_cgroup *cg)
{
	const char *none = refusing_cgroup(cg);
	if (!none && atol(file_text("/proc/sys/fs/lease-break-time")) < 10) {
		close(cg->guard);
		none = "fs.lease-break-time is under 10 s";
	}
	return none;
}

/* An agent's process a that read a fresh image (name, seed: its path in
 * img, its hash in *orig) in a refusing cgroup cg, with room for a
 * quarter of the image's copies: NULL, or why it cannot be had here. */
static const char *image_short_of_memory(struct test_cgroup *cg, struct proc *a, char *img, size_t size,
					 const char *name, unsigned seed, uint64_t *orig)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		return "under AddressSanitizer, whose own allocations wait at the cgroup's limit";
	const char *none = refusing_cgroup(cg);
	if (none)
		return none;
	read_fresh_image(a, img, size, name, seed, NULL, orig);
	ASSERT_EQ(cgroup_enter(cg, a->pid), 0);
	ASSERT_EQ(cgroup_limit(cg, cgroup_usage(cg) + IMG_SIZE / 4), 0);
	return NULL;
}

/* After image_short_of_memory's call that was refused for want of memory:
 * memory given back, the content is the image's still, and the pages left
 * the image's are still tracked and registered: a lease break makes them
 * private. Stops a and lets cg go. */
static void refused_left_tracked(struct test_cgroup *cg, struct proc *a, const char *img, uint64_t orig)
{
	ASSERT_EQ(cgroup_limit(cg, 1ull << 30), 0);
	ASSERT(strcmp(proc_cmd(a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);	/* and present */
	unsigned left = 0;
	for (size_t off = 0; off < IMG_SIZE; off += 16 * 4096)
		left += proc_page_is_image(a, off, img, (off_t)off);
	ASSERT(left > 0);
	md_stats s;
	ASSERT_EQ(proc_stats(a, &s), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)RAM_PAGES * 4096);
	close(overwrite_image(img, NULL));
	for (size_t off = 0; off < IMG_SIZE; off += 16 * 4096)
		ASSERT(!proc_page(a, off).file);
	ASSERT(strcmp(proc_cmd(a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	proc_stop(a);
	close(cg->guard);
}

/* After image_short_of_memory's call that was refused for want of memory:
 * with memory, the same call (verb 0 IMG_SIZE then) works, the content is the
 * image's and no page is the image's any more. Stops a and lets cg go. */
static void works_with_room(struct test_cgroup *cg, struct proc *a, const char *verb, const char *then,
			    uint64_t orig)
{
	ASSERT_EQ(cgroup_limit(cg, 1ull << 30), 0);
	ASSERT_EQ(proc_num(a, "%s 0 %u%s", verb, IMG_SIZE, then), 0);
	ASSERT(strcmp(proc_cmd(a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	for (size_t off = 0; off < IMG_SIZE; off += 16 * 4096)
		ASSERT(!proc_page(a, off).file);
	proc_stop(a);
	close(cg->guard);
}

TEST_IMPL(lease_break_short_of_memory)
{
	struct test_cgroup cg;
	const char *none = refusing_cgroup_slow_breaks(&cg);
	if (none)
		SKIP("%s", none);
	char img[512];
	uint64_t orig;
	struct proc a;
	read_fresh_image(&a, img, sizeof(img), "image-short", 15, NULL, &orig);
	ASSERT(proc_page_from_file(&a, 0));
	ASSERT_EQ(cgroup_enter(&cg, a.pid), 0);
	/* Room for a quarter of the copies. */
	ASSERT_EQ(cgroup_limit(&cg, cgroup_usage(&cg) + IMG_SIZE / 4), 0);
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0) {
		overwrite_image(img, NULL);
		_exit(0);
	}
	sleep(2);
	int status;
	ASSERT_EQ(waitpid(writer, &status, WNOHANG), 0);	/* still waiting for the lease */
	ASSERT_EQ(cgroup_limit(&cg, 1ull << 30), 0);
	ASSERT_EQ(waitpid(writer, &status, 0), writer);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	for (size_t off = 0; off < IMG_SIZE; off += 16 * 4096)
		ASSERT(!proc_page(&a, off).file);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_lease_break), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	proc_stop(&a);
	close(cg.guard);
	return 0;
}

/* MADV_UNMERGEABLE over pages shared at read time, with no memory for
 * their copies, fails with ENOMEM, as kernel KSM's does (it said 0, and
 * the memory went on being shared and scanned); with memory, it works. */
TEST_IMPL(unmergeable_short_of_memory_fails)
{
	struct test_cgroup cg;
	char img[512];
	uint64_t orig;
	struct proc a;
	const char *none = image_short_of_memory(&cg, &a, img, sizeof(img), "image-unmergeable", 16, &orig);
	if (none)
		SKIP("%s", none);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", IMG_SIZE), -ENOMEM);
	works_with_room(&cg, &a, "advise", " unmergeable", orig);
	return 0;
}

/* mlock over pages shared at read time, with no memory for their copies:
 * refused with mlock's EAGAIN ("could not be locked"; mlockall, which has
 * none, ENOMEM); with memory, it works. */
TEST_IMPL(mlock_short_of_memory_fails)
{
	struct test_cgroup cg;
	char img[512];
	uint64_t orig;
	struct proc a;
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose mlock and mlockall lock nothing and never reach the agent");
	const char *none = image_short_of_memory(&cg, &a, img, sizeof(img), "image-mlock", 17, &orig);
	if (none)
		SKIP("%s", none);
	ASSERT_EQ(proc_num(&a, "mlock 0 %u", IMG_SIZE), -EAGAIN);
	ASSERT_EQ(proc_num(&a, "mlockall current"), -ENOMEM);
	works_with_room(&cg, &a, "mlock", "", orig);
	return 0;
}

/* The VMM's userfaultfd registered over RAM shared at read time, with no
 * memory for the copies the handover makes first: the registration fails
 * with ENOMEM, the pages still tracked (a lease break makes those left the
 * image's private); had it gone through, the VMM's userfaultfd would hold
 * memory the agent still maps and tracks. */
TEST_IMPL(vmm_userfault_short_of_memory_fails)
{
	struct test_cgroup cg;
	char img[512];
	uint64_t orig;
	struct proc a;
	const char *none = image_short_of_memory(&cg, &a, img, sizeof(img), "image-userfault", 19, &orig);
	if (none)
		SKIP("%s", none);
	ASSERT_EQ(proc_num(&a, "uffd 0 %u missing", IMG_SIZE), -ENOMEM);
	refused_left_tracked(&cg, &a, img, orig);
	return 0;
}

/* A MAP_FIXED over guest RAM shared at read time that fails (a bad
 * descriptor: nothing is unmapped), over a hole too, with no memory to
 * make the pages private: they stay tracked, so a lease break still makes
 * them private before a writer changes the file. The records went, and
 * the writer's bytes showed in guest RAM. */
TEST_IMPL(failed_map_short_of_memory_keeps_tracking)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose own allocations wait at the cgroup's limit");
	struct test_cgroup cg;
	const char *none = refusing_cgroup_slow_breaks(&cg);
	if (none)
		SKIP("%s", none);
	char img[512];
	struct proc a;
	read_fresh_image(&a, img, sizeof(img), "image-failedmap", 17, NULL, NULL);
	const size_t half = IMG_SIZE / 2, rest = IMG_SIZE / 2 - 4096;
	uint64_t h1 = fnv_file(img, 0, half), h2 = fnv_file(img, half + 4096, rest);
	ASSERT_EQ(proc_num(&a, "unmap %zu %x", half, 4096), 0);
	ASSERT_EQ(cgroup_enter(&cg, a.pid), 0);
	ASSERT_EQ(cgroup_limit(&cg, cgroup_usage(&cg) + IMG_SIZE / 4), 0);
	ASSERT_EQ(proc_num(&a, "mapfile 0 %u 999", IMG_SIZE), -EBADF);
	ASSERT_EQ(cgroup_limit(&cg, 1ull << 30), 0);
	close(overwrite_image(img, NULL));
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %zu", half), hex(h1)) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %zu %zu", half + 4096, rest), hex(h2)) == 0);
	proc_stop(&a);
	close(cg.guard);
	return 0;
}

/* A MAP_FIXED over guest RAM shared at read time that fails (a bad
 * descriptor) and finds no hole there unmapped nothing: the pages stay the
 * image's frames, shared. Over a hole (perhaps the failed call's own) the
 * pages are made private and forgotten, in the image's mapping still: a
 * discard there reads zeroes, as of the anonymous memory they stand for,
 * not the image again. */
TEST_IMPL(failed_map_keeps_sharing_unless_holed)
{
	const char *img = image(6);
	struct proc a;
	reader_with_mb(&a, img);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 131072"), hex(fnv_file(img, 0, 131072))) == 0);	/* present */
	ASSERT(proc_page_is_image(&a, 4096, img, 4096));
	ASSERT_EQ(proc_num(&a, "mapfile 0 65536 999"), -EBADF);
	ASSERT(proc_page_is_image(&a, 4096, img, 4096));
	ASSERT_EQ(proc_num(&a, "unmap 65536 1000"), 0);
	ASSERT_EQ(proc_num(&a, "mapfile 0 131072 999"), -EBADF);
	ASSERT(!proc_page_is_image(&a, 4096, img, 4096));
	ASSERT_EQ(proc_num(&a, "advise 0 65536 dontneed"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_zero(65536))) == 0);
	proc_stop(&a);
	return 0;
}

/* After a lease break the pages are private copies inside the image's
 * mapping, which no record tracks any more: a discard there (a balloon,
 * free page reporting) must read back zeroes, not the writer's new data
 * that a plain MADV_DONTNEED would show. Read-time sharing alone, and with
 * the scanner (whose engine knows the pages as image pages). */
TEST_IMPL(lease_break_then_discard_yields_zeroes)
{
	static const char *const scan[] = { "MEMDEDUP_SCAN=1", NULL };
	const char *const *envs[] = { NULL, scan };
	for (int k = 0; k < 2; k++) {
		char img[512], name[32];
		uint64_t orig;
		struct proc a;
		snprintf(name, sizeof(name), "image-discard%d", k);
		read_fresh_image(&a, img, sizeof(img), name, 12 + (unsigned)k, envs[k], &orig);
		char rest[32];
		snprintf(rest, sizeof(rest), "%s", proc_cmd(&a, "hash %u %u", 16 * 4096, IMG_SIZE - 16 * 4096));
		int wfd = overwrite_image(img, NULL);
		ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
		ASSERT_EQ(proc_num(&a, "advise 0 %u dontneed", 16 * 4096), 0);
		ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 16 * 4096), hex(fnv_zero(16 * 4096))) == 0);
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 16 * 4096, IMG_SIZE - 16 * 4096), rest) == 0);
		close(wfd);
		proc_stop(&a);
	}
	return 0;
}

/* Guest RAM the VMM made read-only cannot be written to make its image
 * pages private: they are copied into anonymous memory with the same
 * protection instead, before the writer may go on; the guest keeps seeing
 * what it read and the VMM lives on (the fallback for kernels without
 * MADV_POPULATE_WRITE wrote to them, and killed it with SIGSEGV; then the
 * lease was let go with the pages still the file's). */
TEST_IMPL(lease_break_read_only_pages)
{
	char img[512];
	uint64_t orig;
	struct proc a;
	read_fresh_image(&a, img, sizeof(img), "image-ro", 14, NULL, &orig);
	ASSERT(proc_page_from_file(&a, 0));
	/* A read-only stretch between writable ones: the advice that makes
	 * the writable ones private stops at it, and the rest still must.
	 * (Through the preload library the mprotect gives the stretch up
	 * first, made private; a VMM linking the library would not.) */
	ASSERT_EQ(proc_num(&a, "protect %u %u ro", IMG_SIZE / 4, IMG_SIZE / 4), 0);
	int wfd = overwrite_image(img, NULL);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_lease_break), 0);
	ASSERT(fnv_file(img, 0, IMG_SIZE) != orig);	/* the writer wrote */
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	for (size_t off = 0; off < IMG_SIZE; off += 64 * 4096)
		ASSERT(!proc_page(&a, off).file);
	ASSERT(strcmp(proc_cmd(&a, "perms %u", IMG_SIZE / 4 + 4096), "r--p") == 0);	/* still read-only */
	ASSERT(strcmp(proc_cmd(&a, "perms %u", IMG_SIZE - 4096), "rw-p") == 0);
	ASSERT_EQ(proc_num(&a, "protect 0 %u rw", IMG_SIZE), 0);
	close(wfd);
	proc_stop(&a);
	return 0;
}

/* A lease break whose signal never comes (here the lease's owner was
 * cleared; the kernel also falls back to a plain SIGIO when it cannot queue
 * the agent's signal): the agent's look once a second finds it, and the
 * writer waits for the pages to be made private, not for the kernel to
 * revoke the lease after lease-break-time (45 s here) with them mapped. */
TEST_IMPL(lease_break_without_signal)
{
	char img[512];
	uint64_t orig;
	struct proc a;
	read_fresh_image(&a, img, sizeof(img), "image-nosig", 11, NULL, &orig);
	ASSERT_EQ(proc_num(&a, "nosig %s", img), 1);
	time_t waited;
	int wfd = overwrite_image(img, &waited);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_lease_break), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	/* Well before the kernel would have revoked it. */
	ASSERT(waited < 20);
	close(wfd);
	proc_stop(&a);
	return 0;
}

/* The agent's threads (its own, the scanner's, the fault thread) block
 * every signal: the VMM's signals (a timer's SIGALRM, SIGUSR1, SIGINT) go
 * to the VMM's threads, whose handlers expect to run there. The VMM's
 * thread that started them blocks what it did before: none here. */
TEST_IMPL(agent_threads_block_signals)
{
	const char *env[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_DOMAIN=private", NULL };
	struct proc a;
	char dir[64], path[400], line[256];
	int fd = start_reader(&a, image(4), env);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0", fd), 65536);
	snprintf(dir, sizeof(dir), "/proc/%d/task", (int)a.pid);
	DIR *d = opendir(dir);
	ASSERT(d);
	int threads = 0;
	for (struct dirent *de; (de = readdir(d));) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s/status", dir, de->d_name);
		FILE *f = fopen(path, "r");
		unsigned long long blocked = 0;
		while (f && fgets(line, sizeof(line), f))
			sscanf(line, "SigBlk: %llx", &blocked);
		if (f)
			fclose(f);
		const int sig[] = { SIGINT, SIGUSR1, SIGALRM, SIGTERM, SIGCHLD, SIGIO };
		int vmm = atoi(de->d_name) == (int)a.pid;
		for (size_t i = 0; i < sizeof(sig) / sizeof(sig[0]); i++)
			ASSERT(((blocked >> (sig[i] - 1)) & 1) == (unsigned long long)!vmm);
		threads += !vmm;
	}
	closedir(d);
	ASSERT(threads >= 2);
	proc_stop(&a);
	return 0;
}

/* Runs start, a call that must change nothing (NULL: none), then stop, a
 * call that must stop read sharing for good (-EBADF from the kernel, as
 * neither has a descriptor): a read before is shared, the next copied. */
static void stops_read_sharing(const char *start, const char *stop)
{
	const char *img = image(1);
	const char *env[] = { "MEMDEDUP_SHARE_MIN_PAGES=1", NULL };
	struct proc a;
	md_stats s;
	int fd = start_reader(&a, img, env);
	if (start)
		ASSERT_EQ(proc_num(&a, "%s", start), -EBADF);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT(proc_page_from_file(&a, 0));	/* shared before (read, so present) */
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.io_unseen, 0);
	ASSERT_EQ(proc_num(&a, "%s", stop), -EBADF);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(img, 0, 65536))) == 0);
	for (unsigned i = 0; i < 16; i++)
		ASSERT(!proc_page(&a, MB + i * 4096).file);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	ASSERT_EQ(s.io_unseen, 1);
	proc_stop(&a);
}

/* A device given guest RAM for DMA (VFIO) keeps the pages it pinned: a read
 * mapping image pages over them would part the guest's view from the
 * device's. From then on reads are copied, and the state shows. */
TEST_IMPL(device_dma_stops_read_sharing)
{
	stops_read_sharing(NULL, "vfio");
	return 0;
}

/* SCSI commands passed through (SG_IO: QEMU's scsi-block) with buffers in
 * guest RAM: the kernel pins them and the device writes them unseen, like
 * a VFIO device's DMA. One whose buffer is the VMM's own (a probe)
 * changes nothing. */
TEST_IMPL(scsi_passthrough_stops_read_sharing)
{
	char stop[64];
	snprintf(stop, sizeof(stop), "sgio %u 4096", 2 * MB);
	stops_read_sharing("sgio 0 heap", stop);
	return 0;
}

/* SG_IO whose buffers the agent cannot list (more iovecs than it looks
 * at, an iovec array it cannot read) may be in guest RAM: counted as such
 * (review). */
TEST_IMPL(scsi_passthrough_unlisted_buffers_stop_read_sharing)
{
	char stop[64];
	snprintf(stop, sizeof(stop), "sgio %u many", 2 * MB);
	stops_read_sharing("sgio 0 heap", stop);
	stops_read_sharing("sgio 0 heap", "sgio 0 unreadable");
	return 0;
}

/* The same through syscall(2): the C library's syscall() is interposed,
 * and hands SYS_ioctl to the same checks. */
TEST_IMPL(scsi_passthrough_by_syscall_stops_read_sharing)
{
	char stop[64];
	snprintf(stop, sizeof(stop), "sgio %u 4096 sys", 2 * MB);
	stops_read_sharing("sgio 0 heap sys", stop);
	return 0;
}

/* A write through io_uring may pin the guest pages it sends (O_DIRECT),
 * and a lease break cannot wait for it: a page read-time sharing mapped
 * from the image would be the image's page, pinned. From the first such
 * submit, reads are copied, and the pages shared before are made private
 * first (content unchanged). */
TEST_IMPL(uring_write_stops_read_sharing)
{
	const char *img = image(1);
	const char *env[] = { "MEMDEDUP_SHARE_MIN_PAGES=1", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	if (proc_num(&a, "uring poll") < 0) {
		proc_stop(&a);
		SKIP("io_uring is not available here (kernel.io_uring_disabled, seccomp)");
	}
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	for (unsigned i = 0; i < 16; i++)
		ASSERT(proc_page(&a, i * 4096).file);	/* shared (read, so present) */
	char out[600];
	snprintf(out, sizeof(out), "%s/out", test_dir());
	int ofd = open(out, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	ASSERT(ofd >= 0);
	close(ofd);
	long long wfd = proc_num(&a, "open %s rw", out);
	ASSERT(wfd >= 0);
	ASSERT_EQ(proc_num(&a, "uring write %lld 0 65536 0", wfd), 65536);
	ASSERT_EQ(fnv_file(out, 0, 65536), fnv_file(img, 0, 65536));
	for (unsigned i = 0; i < 16; i++)
		ASSERT(!proc_page(&a, i * 4096).file);	/* private before the write */
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	for (unsigned i = 0; i < 16; i++)
		ASSERT(!proc_page(&a, MB + i * 4096).file);	/* copied */
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(img, 0, 65536))) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.io_unseen, 1);
	ASSERT_EQ(s.pages_privatized, 16);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(map_limit_falls_back)
{
	const char *img = image(4);
	const char *env[] = { "MEMDEDUP_MAX_VMAS=100000000", "MEMDEDUP_SHARE_MIN_PAGES=1", NULL };
	struct proc a;
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose own mmaps fail at the mapping limit");
	int fd = start_reader(&a, img, env);
	ASSERT(proc_num(&a, "exhaust") > 1000);
	/* Reads into scattered pages would each need a new mapping. */
	for (int i = 0; i < 8; i++)
		ASSERT_EQ(proc_num(&a, "read %d %d 4096 %d 4096", fd, i * 8192, i * 8192), 4096);
	for (int i = 0; i < 8; i++)
		ASSERT(strcmp(proc_cmd(&a, "hash %d 4096", i * 8192), hex(fnv_file(img, i * 8192, 4096))) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	/* Each read copied for want of a mapping, but perhaps the first (the
	 * room left for the C library takes one split). */
	printf("  %llu of 8 reads copied, %llu shared\n", (unsigned long long)s.fallbacks[MD_FB_ENOMEM],
	       (unsigned long long)s.pages_shared_at_read);
	ASSERT(s.fallbacks[MD_FB_ENOMEM] >= 7);
	ASSERT_EQ(s.fallbacks[MD_FB_ENOMEM] + s.pages_shared_at_read, 8);
	uint64_t shared = s.pages_shared_at_read;
	ASSERT(strcmp(proc_cmd(&a, "release"), "ok") == 0);
	/* With room again, sharing resumes. */
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT(proc_page(&a, MB).file);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, shared + 16);
	proc_stop(&a);
	return 0;
}

/* A 64 KiB read with the mapping budget spent: copied, counted, and p
 * stopped. */
static void read_over_budget(struct proc *p, int fd, const char *img)
{
	md_stats s;
	ASSERT_EQ(proc_num(p, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(p, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT_EQ(proc_stats(p, &s), 0);
	ASSERT_EQ(s.fallbacks[MD_FB_VMA_LIMIT], 16);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	proc_stop(p);
}

/* A pread outside guest RAM is the system call the VMM made, pread64, not
 * preadv: under a seccomp filter that allows the one and not the other,
 * the VMM's read failed with EPERM (or it was killed). */
TEST_IMPL(pread_outside_ram_is_pread)
{
	const char *img = image(4);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "nopreadv"), 0);
	ASSERT_EQ(proc_num(&a, "heapread %d 0 4096", fd), 4096);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0", fd), 65536);	/* into RAM, shared or copied */
	proc_stop(&a);
	return 0;
}

/* Likewise a preadv or pwritev at an offset, without flags, is preadv or
 * pwritev, not their "2" forms, which a filter may refuse. */
TEST_IMPL(preadv_outside_ram_is_not_preadv2)
{
	const char *img = image(4);
	char scratch[512];
	struct proc a;
	snprintf(scratch, sizeof(scratch), "%s/scratch", test_dir());
	make_image(scratch, 65536, 3);
	int fd = start_reader(&a, img, NULL);
	int wfd = (int)proc_num(&a, "open %s rw", scratch);
	ASSERT(wfd >= 0);
	ASSERT_EQ(proc_num(&a, "nopreadv v2"), 0);
	ASSERT_EQ(proc_num(&a, "preadv %d 0 0 131072 pos", fd), -EPERM);	/* the filter is on */
	ASSERT_EQ(proc_num(&a, "preadv %d 0 0 131072 heaps", fd), 131072);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 131072"), hex(fnv_file(img, 0, 131072))) == 0);
	ASSERT_EQ(proc_num(&a, "pwritev %d 0 0 4096", wfd), 4096);
	ASSERT(fnv_file(scratch, 0, 4096) == fnv_file(img, 0, 4096));
	proc_stop(&a);
	return 0;
}

/* A VMM's preadv, userfaultfd ioctl or raw clone3 given a pointer that
 * cannot be read fails with EFAULT, as without us: the agent reads these
 * arguments, and crashed the VMM with SIGSEGV. */
TEST_IMPL(bad_pointer_is_efault)
{
	const char *img = image(4);
	struct proc a;
	char want[32];
	int fd = start_reader(&a, img, NULL);
	snprintf(want, sizeof(want), "%d %d %d %d", EFAULT, EFAULT, EFAULT, EFAULT);
	ASSERT(strcmp(proc_cmd(&a, "badptr %d", fd), want) == 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0", fd), 65536);	/* and it goes on */
	proc_stop(&a);
	return 0;
}

/* A VMM thread cancelled (pthread_cancel) while inside the agent: the
 * agent's work is no cancellation point. Its open of an image at the
 * image's first read, under the agent's lock, was one: the thread unwound
 * with the lock held, and every read after it waited for good. The thread
 * here waits for the testproc's allocator inside its pread when the
 * cancel comes; it is cancelled after its read, which maps the image. */
TEST_IMPL(cancel_inside_agent_leaves_lock)
{
	const char *img = image(7);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	char want[64], got[256];
	snprintf(got, sizeof(got), "%s", proc_cmd(&a, "cancelinside %d 0 %u", fd, 64 * 4096));
	if (strcmp(got, "unsupported") == 0) {
		proc_stop(&a);
		SKIP("the testproc has no allocator of its own (AddressSanitizer's)");
	}
	snprintf(want, sizeof(want), "cancelled %u %u", 64 * 4096, 64 * 4096);
	fprintf(stderr, "  cancelinside: %s\n", got);
	ASSERT(strcmp(got, want) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 128 * 4096), hex(fnv_file(img, 0, 128 * 4096))) == 0);
	for (size_t off = 0; off < 128 * 4096; off += 4096)
		ASSERT(proc_page_is_image(&a, off, img, (off_t)off));
	proc_stop(&a);
	return 0;
}

static int logged_back;

static void *log_with_cancel_pending(void *arg)
{
	(void)arg;
	pthread_cancel(pthread_self());
	md__log("a line from a thread with a cancel pending");
	__atomic_store_n(&logged_back, 1, __ATOMIC_RELEASE);
	pthread_testcancel();
	return NULL;
}

/* The log is no cancellation point: it is called inside the VMM's calls,
 * which are none, some of its callers holding locks. A cancel pending
 * acted in its open of the log file again (its number taken by another
 * file), under the log's lock: the thread left it held, and the lines
 * after it were lost. */
TEST_IMPL(log_not_a_cancellation_point)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/cancel.log", test_dir());
	ASSERT_EQ(md__log_open(path), 0);
	int fd = -1;
	ASSERT_EQ(proc_fds_naming(getpid(), path, 0, -1, &fd), 1);
	int other = open("/dev/null", O_WRONLY | O_CLOEXEC);
	ASSERT(other >= 0 && dup2(other, fd) == fd);
	close(other);
	pthread_t t;
	void *ret = NULL;
	ASSERT_EQ(pthread_create(&t, NULL, log_with_cancel_pending, NULL), 0);
	ASSERT_EQ(pthread_join(t, &ret), 0);
	ASSERT(ret == PTHREAD_CANCELED);
	ASSERT(__atomic_load_n(&logged_back, __ATOMIC_ACQUIRE));
	md__log("a line after it");
	const char *text = file_text(path);
	ASSERT(strstr(text, "a line from a thread with a cancel pending"));
	ASSERT(strstr(text, "a line after it"));
	return 0;
}

/* A fork() by a thread with a cancel pending: fork is no cancellation
 * point, but its prepare handler's work for guest RAM not MADV_DONTFORK
 * (its shared pages made the child's own first, /proc/self/pagemap read
 * under the agent's lock) had one; the thread unwound out of fork() with
 * the lock held. */
TEST_IMPL(cancel_in_fork_leaves_lock)
{
	const char *img = image(9);
	struct proc a;
	int fd = reader_with_mb(&a, img);
	const char *r = proc_cmd(&a, "cancelfork %d %u %u", fd, MB, MB);
	fprintf(stderr, "  cancelfork: %s\n", r);
	char want[64];
	snprintf(want, sizeof(want), "forked %u", MB);
	ASSERT(strcmp(r, want) == 0);
	proc_stop(&a);
	return 0;
}

/* A VMM thread blocked in a read or a write the agent makes for it (here
 * on a pipe, at the file position) is cancelled as in the C library's: the
 * agent's own system calls were none, and a pthread_cancel never ended it.
 * Also after such a call that returned: it leaves the thread's cancel state
 * and type as they were (once left disabled, or asynchronous, for the rest
 * of the VMM's run). */
TEST_IMPL(cancel_acts_in_blocked_io)
{
	const char *const envs[2][5] = { { NULL },
					 { "MEMDEDUP_SCAN=1", "MEMDEDUP_DOMAIN=private", NULL } };
	for (int k = 0; k < 2; k++) {
		struct proc a;
		proc_start(&a, envs[k]);
		proc_cmd(&a, "map %u", RAM_PAGES);
		ASSERT(a.base != 0);
		static const char *const how[] = { "read", "write" }, *const where[] = { "ram", "heap" };
		for (int i = 0; i < 8; i++) {
			const char *after = i < 4 ? "" : "after";
			const char *r = proc_cmd(&a, "cancelblock %s %s %s", how[i / 2 % 2], where[i % 2], after);
			fprintf(stderr, "  %s %s %s %s: %s\n", k ? "scanning" : "sharing", how[i / 2 % 2], where[i % 2],
				after, r);
			ASSERT(strcmp(r, "cancelled") == 0);
		}
		proc_stop(&a);
	}
	return 0;
}

struct cancelled_io {
	md_agent *a;
	int fd, write;
	void *buf;
	pid_t tid;
};

static void *cancelled_io_thread(void *arg)
{
	struct cancelled_io *c = arg;
	struct iovec io = { c->buf, 4096 };
	__atomic_store_n(&c->tid, gettid(), __ATOMIC_RELEASE);
	if (c->write)
		md_agent_pwritev(c->a, c->fd, &io, 1, -1, 0);
	else
		md_agent_preadv(c->a, c->fd, &io, 1, -1, 0);
	return NULL;
}

/* Waits until c's thread sleeps in a system call on its descriptor. */
static int io_blocked(struct cancelled_io *c)
{
	for (int i = 0; i < 200; i++) {
		if (task_syscall_on(__atomic_load_n(&c->tid, __ATOMIC_ACQUIRE), c->fd) >= 0)
			return 0;
		usleep(10000);
	}
	return -ETIMEDOUT;
}

/* Thread t, blocked, cancelled: 0 once it ended so within 2 s. */
static int cancel_blocked(pthread_t t)
{
	void *ret = NULL;
	struct timespec dl;
	ASSERT_EQ(pthread_cancel(t), 0);
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 2;
	if (pthread_timedjoin_np(t, &ret, &dl) != 0)
		return -ETIMEDOUT;	/* left blocked: the test ends */
	return ret == PTHREAD_CANCELED ? 0 : -EINVAL;
}

/* Fills pipe end fd: a write to it then waits. */
static void fill_pipe(int fd)
{
	char page[4096] = { 0 };
	fcntl(fd, F_SETFL, O_NONBLOCK);
	while (write(fd, page, sizeof(page)) > 0)
		;
	fcntl(fd, F_SETFL, 0);
}

/* A pwrite whose thread has a cancel pending as it begins: a pipe refuses
 * a pwrite at once, so none waits, and the cancel acts in the call. */
static void *cancelled_pwrite_thread(void *arg)
{
	struct cancelled_io *c = arg;
	pthread_cancel(pthread_self());
	md_agent_pwrite(c->a, c->fd, c->buf, 4096, 0);
	return NULL;
}

/* What the agent records for a VMM's read or write while it runs goes
 * with a cancel that ends it there: a read in flight kept the scanner off
 * its pages for good, a write's record (on the stack the thread left) had
 * every lease break wait the kernel's lease-break-time. Through the
 * library's calls, in this process. */
TEST_IMPL(cancel_in_blocked_io_ends_records)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "", .flags = MD_OPT_SCAN, .sleep_ms = 1 };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	if (!a->engine) {
		md_agent_free(a);
		SKIP("no content scanner here (userfaultfd)");
	}
	size_t len = 64 * 4096;
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	memset(m, 1, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	int p[2];
	pthread_t t;

	ASSERT_EQ(pipe(p), 0);
	struct cancelled_io rd = { a, p[0], 0, m + 5 * 4096, 0 };
	ASSERT_EQ(pthread_create(&t, NULL, cancelled_io_thread, &rd), 0);
	ASSERT_EQ(io_blocked(&rd), 0);
	ASSERT(md__inflight_busy(&a->engine->io, (uintptr_t)m + 5 * 4096, 4096));
	ASSERT_EQ(cancel_blocked(t), 0);
	ASSERT(!md__inflight_busy(&a->engine->io, (uintptr_t)m + 5 * 4096, 4096));

	fill_pipe(p[1]);	/* full: the write waits */
	struct cancelled_io wr = { a, p[1], 1, m, 0 };
	ASSERT_EQ(pthread_create(&t, NULL, cancelled_io_thread, &wr), 0);
	ASSERT_EQ(io_blocked(&wr), 0);
	ASSERT(!md__writes_ended(a, md__writes_mark(a)));
	ASSERT_EQ(cancel_blocked(t), 0);
	ASSERT(md__writes_ended(a, md__writes_mark(a)));
	close(p[0]);
	close(p[1]);

	/* A plain pwrite's record goes as well (md_agent_pwrite). */
	char out[512];
	snprintf(out, sizeof(out), "%s/cancelled-out", test_dir());
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ASSERT(fd >= 0);
	uint64_t before = md__writes_mark(a);
	void *ret = NULL;
	struct cancelled_io pw = { a, fd, 1, m, 0 };
	ASSERT_EQ(pthread_create(&t, NULL, cancelled_pwrite_thread, &pw), 0);
	ASSERT_EQ(pthread_join(t, &ret), 0);
	ASSERT(ret == PTHREAD_CANCELED);
	ASSERT(md__writes_mark(a) > before);	/* it was recorded */
	ASSERT(md__writes_ended(a, md__writes_mark(a)));
	close(fd);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* Writes in flight end in any order: a break waits for every one begun
 * before its mark while any runs, and for none once all ended (the list
 * of them keeps its links whichever ends). Four writes wait on full pipes
 * and are cancelled out of order: the oldest, one between, the newest,
 * the last. */
TEST_IMPL(writes_end_in_any_order)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	static char page[4096];
	static const int order[4] = { 0, 2, 3, 1 };
	int p[4][2];
	pthread_t t[4];
	struct cancelled_io w[4];
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(pipe(p[i]), 0);
		fill_pipe(p[i][1]);
		w[i] = (struct cancelled_io){ a, p[i][1], 1, page, 0 };
		ASSERT_EQ(pthread_create(&t[i], NULL, cancelled_io_thread, &w[i]), 0);
		ASSERT_EQ(io_blocked(&w[i]), 0);
	}
	uint64_t mark = md__writes_mark(a);
	for (int k = 0; k < 4; k++) {
		ASSERT(!md__writes_ended(a, mark));
		ASSERT_EQ(cancel_blocked(t[order[k]]), 0);
	}
	ASSERT(md__writes_ended(a, mark));
	for (int i = 0; i < 4; i++) {
		close(p[i][0]);
		close(p[i][1]);
	}
	md_agent_free(a);
	return 0;
}

/* A write begun after a break's mark does not end the wait for an older
 * one still in flight: the break waits for the oldest write up to the
 * mark, whatever began since (agent/writes.c). Given back while the
 * older O_DIRECT write still held the image's page, its bytes would reach
 * the disk. */
TEST_IMPL(writes_begun_after_mark_keep_older_waited_for)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	static char page[4096];
	int p[2][2];
	pthread_t t[2];
	struct cancelled_io w[2];
	uint64_t mark = 0;
	for (int i = 0; i < 2; i++) {
		ASSERT_EQ(pipe(p[i]), 0);
		fill_pipe(p[i][1]);
		w[i] = (struct cancelled_io){ a, p[i][1], 1, page, 0 };
		ASSERT_EQ(pthread_create(&t[i], NULL, cancelled_io_thread, &w[i]), 0);
		ASSERT_EQ(io_blocked(&w[i]), 0);
		if (i == 0)
			mark = md__writes_mark(a);	/* the break: the first write in flight */
	}
	ASSERT(md__writes_mark(a) > mark);	/* the second began after it */
	ASSERT(!md__writes_ended(a, mark));	/* the first still runs */
	ASSERT_EQ(cancel_blocked(t[0]), 0);
	ASSERT(md__writes_ended(a, mark));	/* the second is not waited for */
	ASSERT(!md__writes_ended(a, md__writes_mark(a)));
	ASSERT_EQ(cancel_blocked(t[1]), 0);
	ASSERT(md__writes_ended(a, md__writes_mark(a)));
	for (int i = 0; i < 2; i++) {
		close(p[i][0]);
		close(p[i][1]);
	}
	md_agent_free(a);
	return 0;
}

/* A plain pwrite (the preload sends pwrite and pwrite64 to md_agent_pwrite,
 * not pwritev) is recorded while in flight as pwritev is: a lease break
 * waits for it (agent/writes.c). The write here waits on its page, one a
 * userfaultfd holds back, as an O_DIRECT write from a page of an image
 * holds that page. Through the library's call, in this process. */
struct held_pwrite {
	md_agent *a;
	int fd;
	void *buf;
	ssize_t result;
};

static void *held_pwrite_thread(void *arg)
{
	struct held_pwrite *h = arg;
	h->result = md_agent_pwrite(h->a, h->fd, h->buf, 4096, 0);
	return NULL;
}

TEST_IMPL(lease_break_waits_for_plain_pwrite)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (u < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		u = dev < 0 ? -1 : ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		if (dev >= 0)
			close(dev);
	}
	if (u < 0) {
		md_agent_free(a);
		SKIP("no userfaultfd here");
	}
	struct uffdio_api api = { .api = UFFD_API };
	char *held = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(held != MAP_FAILED);
	struct uffdio_register reg = { .range = { (uintptr_t)held, 4096 }, .mode = UFFDIO_REGISTER_MODE_MISSING };
	ASSERT_EQ(ioctl(u, UFFDIO_API, &api), 0);
	ASSERT_EQ(ioctl(u, UFFDIO_REGISTER, &reg), 0);
	char out[512];
	snprintf(out, sizeof(out), "%s/pwrite-out", test_dir());
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ASSERT(fd >= 0);

	/* One that ended first leaves the list empty: the next is in it all
	 * the same (its end had left the list's newest a record gone). */
	static char plain[4096];
	ASSERT_EQ(md_agent_pwrite(a, fd, plain, sizeof(plain), 0), 4096);
	ASSERT(md__writes_ended(a, md__writes_mark(a)));
	struct iovec io = { plain, sizeof(plain) };
	ASSERT_EQ(md_agent_pwritev(a, fd, &io, 1, 0, 0), 4096);
	ASSERT(md__writes_ended(a, md__writes_mark(a)));
	uint64_t before = md__writes_mark(a);
	struct held_pwrite h = { a, fd, held, 0 };
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, held_pwrite_thread, &h), 0);
	struct uffd_msg msg;
	/* The fault on its page: the write is in the system call. */
	ASSERT_EQ(read(u, &msg, sizeof(msg)), (ssize_t)sizeof(msg));
	ASSERT_EQ(msg.event, UFFD_EVENT_PAGEFAULT);
	ASSERT(md__writes_mark(a) > before);	/* numbered */
	ASSERT(!md__writes_ended(a, md__writes_mark(a)));	/* a break would wait */
	usleep(20000);
	ASSERT(!md__writes_ended(a, md__writes_mark(a)));	/* still */

	struct uffdio_zeropage zero = { .range = { (uintptr_t)held, 4096 } };
	ASSERT_EQ(ioctl(u, UFFDIO_ZEROPAGE, &zero), 0);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(h.result, 4096);
	ASSERT(md__writes_ended(a, md__writes_mark(a)));	/* and no longer */
	close(fd);
	close(u);
	munmap(held, 4096);
	md_agent_free(a);
	return 0;
}

/* coredump_filter of pid, or -1. */
static long coredump_filter(pid_t pid)
{
	char path[64], buf[32];
	snprintf(path, sizeof(path), "/proc/%d/coredump_filter", (int)pid);
	snprintf(buf, sizeof(buf), "%s", file_text(path));
	return *buf ? (long)strtoul(buf, NULL, 16) : -1;
}

static int merged_some(const md_stats *s) { return s->merged >= 64; }

/* Guest RAM mapped from an image or the pool is a private mapping of a
 * file never written, which the kernel's default coredump_filter leaves
 * out of a core dump (QEMU's dump-guest-core=on wants guest RAM in it):
 * the agent adds those mappings (bit 2) at its first mapping over guest
 * RAM, unless that RAM is advised MADV_DONTDUMP. Nothing changes for a
 * process that registers nothing. */
TEST_IMPL(core_dump_keeps_shared_ram)
{
	/* The testprocs inherit this process's filter: without the bit. */
	long mine = coredump_filter(getpid());
	ASSERT(mine >= 0);
	char text[32];
	snprintf(text, sizeof(text), "%#lx", mine & ~4l);
	FILE *f = fopen("/proc/self/coredump_filter", "w");
	ASSERT(f && fputs(text, f) >= 0 && fclose(f) == 0);
	long base = mine & ~4l;
	ASSERT_EQ(coredump_filter(getpid()), base);

	const char *img = image(8);
	struct proc a, b, c, d;
	proc_start(&a, NULL);	/* registers nothing */
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "heapread %d 0 65536", fd), 65536);
	ASSERT_EQ(coredump_filter(a.pid), base);

	fd = start_reader(&b, img, NULL);
	ASSERT_EQ(coredump_filter(b.pid), base);	/* registered, nothing mapped yet */
	ASSERT_EQ(proc_num(&b, "read %d 0 %u 0 65536", fd, MB), MB);
	proc_cmd(&b, "hash 0 4096");	/* faulted in */
	ASSERT(proc_page_is_image(&b, 0, img, 0));
	ASSERT_EQ(coredump_filter(b.pid), base | 4);

	fd = start_reader(&c, img, NULL);	/* not to be dumped: left alone */
	ASSERT_EQ(proc_num(&c, "dontdump 0 %u", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&c, "read %d 0 %u 0 65536", fd, MB), MB);
	proc_cmd(&c, "hash 0 4096");
	ASSERT(proc_page_is_image(&c, 0, img, 0));
	ASSERT_EQ(coredump_filter(c.pid), base);

	const char *scan[] = { "MEMDEDUP_SCAN=1", "MEMDEDUP_PAGES_TO_SCAN=2000", "MEMDEDUP_SLEEP_MS=1",
			       "MEMDEDUP_DOMAIN=private", NULL };
	proc_start(&d, scan);	/* merged pages: the pool's */
	proc_cmd(&d, "map %u", RAM_PAGES);
	ASSERT(strcmp(proc_cmd(&d, "fill 0 64 1"), "ok") == 0);
	/* Before the twins: once they are there, a fast scanner may merge
	 * them before the look (a loaded run saw it). */
	ASSERT_EQ(coredump_filter(d.pid), base);
	ASSERT(strcmp(proc_cmd(&d, "fill %u 64 1", 512 * 4096), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&d, &s, 20000, merged_some), 0);
	ASSERT_EQ(coredump_filter(d.pid), base | 4);
	/* Merged pages in RAM not to be dumped: left alone too. */
	struct proc e;
	proc_start(&e, scan);
	proc_cmd(&e, "map %u", RAM_PAGES);
	ASSERT_EQ(proc_num(&e, "dontdump 0 %u", RAM_PAGES * 4096), 0);
	ASSERT(strcmp(proc_cmd(&e, "fill 0 64 1"), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&e, "fill %u 64 1", 512 * 4096), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&e, &s, 20000, merged_some), 0);
	ASSERT_EQ(coredump_filter(e.pid), base);
	proc_stop(&a);
	proc_stop(&b);
	proc_stop(&c);
	proc_stop(&d);
	proc_stop(&e);
	return 0;
}

/* Guest RAM shared at read time, grown by mremap: the kernel grows the
 * image's mapping, which showed the image's next bytes where the VMM's new
 * memory must read zeroes. */
TEST_IMPL(mremap_grow_reads_zeroes_past_old_end)
{
	const char *img = image(6);
	struct proc a;
	reader_with_mb(&a, img);
	long long to = proc_num(&a, "grow 0 %u %u", MB, 2 * MB);
	ASSERT(to >= 0 || to <= -4096);	/* moved, not -errno */
	ASSERT(strcmp(proc_cmd(&a, "hash %lld %u", to, MB), hex(fnv_file(img, 0, MB))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %lld %u", to + MB, MB), hex(fnv_zero(MB))) == 0);
	proc_stop(&a);
	return 0;
}

/* A shrink in place moves nothing: what stays stays shared. All of guest
 * RAM was made private first, as for a move (and the shrink refused when
 * memory was short, which the kernel never does). */
TEST_IMPL(mremap_shrink_keeps_sharing)
{
	const char *img = image(6);
	struct proc a;
	reader_with_mb(&a, img);
	md_stats s0, s;
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	ASSERT_EQ(proc_num(&a, "shrink 0 %u %u", RAM_PAGES * 4096, RAM_PAGES * 4096 - 65536), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);
	ASSERT(proc_page(&a, 0).file);	/* the image's page, not a copy */
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, s0.registered_bytes - 65536);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(vma_budget_falls_back)
{
	const char *img = image(4);
	const char *env[] = { "MEMDEDUP_MAX_VMAS=1", NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	read_over_budget(&a, fd, img);
	return 0;
}

static int maps_lines(pid_t pid)
{
	char path[64], line[512];
	int n = 0;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "r");
	ASSERT(f != NULL);
	while (fgets(line, sizeof(line), f))
		n += strchr(line, '\n') != NULL;
	fclose(f);
	return n;
}

/* The budget counts the VMM's own mappings from the agent's start, not from
 * its thread's first count a second later (review): a read at once, with a
 * budget of half what such a process maps already, is copied. */
TEST_IMPL(vma_budget_counts_vmm_at_start)
{
	const char *img = image(4);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	int vmm = maps_lines(a.pid);
	proc_stop(&a);
	ASSERT(vmm >= 16);
	char budget[64];
	snprintf(budget, sizeof(budget), "MEMDEDUP_MAX_VMAS=%d", vmm / 2);
	const char *env[] = { budget, NULL };
	fd = start_reader(&a, img, env);
	read_over_budget(&a, fd, img);
	return 0;
}

/* The FNV-1a hash `hash` prints for len bytes of zeroes. */
static uint64_t fnv_zeroes(size_t len)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < len; i++)
		h *= 1099511628211ull;	/* h ^ 0 */
	return h;
}

/* A process reading the image with a VMA budget of what such a process
 * maps already and room more; returns the image fd. */
static int reader_with_room(struct proc *p, const char *img, int room, char *budget, size_t size)
{
	start_reader(p, img, NULL);
	int vmm = maps_lines(p->pid);
	proc_stop(p);
	snprintf(budget, size, "MEMDEDUP_MAX_VMAS=%d", vmm + room);
	const char *env[] = { budget, NULL };
	return start_reader(p, img, env);
}

/* Discards over pages shared at read time split the image's mapping (the
 * page becomes anonymous memory): those mappings count against the budget
 * as reads' do, so a balloon discarding page by page leaves reads copied
 * once it is spent, not mapping on until the VMM's own mmaps fail. */
TEST_IMPL(discard_counts_in_vma_budget)
{
	const char *img = image(5);
	struct proc a;
	char budget[64];
	int fd = reader_with_room(&a, img, 48, budget, sizeof(budget));	/* 16 reads, a few more */
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, MB), MB);
	md_stats s0, s1;
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	ASSERT(s0.pages_shared_at_read >= 128);
	for (unsigned i = 0; i < 64; i += 2)	/* 32 mappings of anonymous memory */
		ASSERT_EQ(proc_num(&a, "advise %u 4096 dontneed", i * 4096), 0);
	ASSERT_EQ(proc_num(&a, "read %d %u 65536 %u", fd, MB, MB), 65536);
	ASSERT_EQ(proc_stats(&a, &s1), 0);
	ASSERT(s1.fallbacks[MD_FB_VMA_LIMIT] > s0.fallbacks[MD_FB_VMA_LIMIT]);	/* copied */
	uint64_t h = fnv_zeroes(4096);
	for (unsigned i = 0; i < 64; i++) {
		char want[32];
		snprintf(want, sizeof(want), "%s", i % 2 ? hex(fnv_file(img, i * 4096, 4096)) : hex(h));
		ASSERT(strcmp(proc_cmd(&a, "hash %u 4096", i * 4096), want) == 0);
	}
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(img, MB, 65536))) == 0);
	proc_stop(&a);
	return 0;
}

/* Each read that maps counts its mappings in the budget at once (the new
 * VMA and the split of guest RAM it makes), not at the next count of
 * /proc/self/maps, a minute away: 16 reads in a row into scattered RAM,
 * 32 mappings, with room for 16, leave the last ones copied. */
TEST_IMPL(vma_budget_counts_reads_mapped)
{
	/* Its allocator maps about 20 times after the agent counted (110 then
	 * 130): the 16 left are spent before the agent's count says so. */
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose own mappings spend the budget's room unseen");
	const char *img = image(5);
	struct proc a;
	char budget[64];
	int fd = reader_with_room(&a, img, 16, budget, sizeof(budget));
	for (unsigned i = 0; i < 16; i++)	/* a gap of anonymous memory after each */
		ASSERT_EQ(proc_num(&a, "read %d %u 65536 %u", fd, i * 65536, i * 131072), 65536);
	for (unsigned i = 0; i < 16; i++)
		ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", i * 131072), hex(fnv_file(img, i * 65536, 65536))) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	printf("  shared %llu pages, %llu copied past the budget\n", (unsigned long long)s.pages_shared_at_read,
	       (unsigned long long)s.fallbacks[MD_FB_VMA_LIMIT]);
	ASSERT(s.pages_shared_at_read > 0);
	ASSERT(s.fallbacks[MD_FB_VMA_LIMIT] >= 4 * 16);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(discard_yields_zeroes)
{
	const char *img = image(5);
	struct proc a;
	reader_with_mb(&a, img);
	ASSERT_EQ(proc_num(&a, "advise 0 65536 dontneed"), 0);
	uint64_t h = fnv_zeroes(65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(h)) == 0);
	/* The discard that drops locked pages too (Linux 5.18). */
	ASSERT_EQ(proc_num(&a, "advise 65536 65536 dontneedlocked"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 65536 65536"), hex(h)) == 0);
	/* The rest is still the image's. */
	ASSERT(strcmp(proc_cmd(&a, "hash 131072 %u", MB - 131072), hex(fnv_file(img, 131072, MB - 131072))) == 0);
	/* The same through syscall(2), as a VMM without the C library's
	 * madvise makes it: zeroes, not the image's pages again. */
	ASSERT_EQ(proc_num(&a, "advise %u 65536 dontneed raw", MB - 65536), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB - 65536), hex(h)) == 0);
	/* MADV_REMOVE, which the kernel refuses on private memory (guest RAM
	 * the agent shares is private), changes nothing with us either: it
	 * zeroed the pages before the kernel refused. */
	long long rm = proc_num(&a, "advise 131072 65536 remove");
	ASSERT(rm == -EACCES || rm == -EINVAL);
	ASSERT(strcmp(proc_cmd(&a, "hash 131072 %u", MB - 196608), hex(fnv_file(img, 131072, MB - 196608))) == 0);
	proc_stop(&a);
	return 0;
}

/* The testproc's pmadvise ARGS: the bytes advised or -errno; a call that
 * succeeds left errno as it was. */
static long long pmadvise(struct proc *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static long long pmadvise(struct proc *p, const char *fmt, ...)
{
	char args[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	const char *r = proc_cmd(p, "pmadvise %s", args);
	ASSERT(!strchr(r, ' '));
	return atoll(r);
}

/* process_madvise(2) on the process's own memory, which Linux 6.13 takes
 * any advice for: its discards read zeroes too, not the image's pages
 * again, through the C library's function and syscall(2), with the
 * process's pidfd, PIDFD_SELF or a thread's; as the kernel's, the bytes
 * advised up to the first range it refuses. Another process's memory is
 * the kernel's to refuse. Other advice goes the way of madvise's too. */
TEST_IMPL(process_madvise_discard_yields_zeroes)
{
	const char *img = image(5);
	struct proc a;
	reader_with_mb(&a, img);
	char zeroed[32] = { 0 };
	/* Pages 0 and 2. */
	long long r = pmadvise(&a, "0 4096 2 8192 dontneed sym");
	if (r == -EINVAL || r == -ENOSYS) {
		proc_stop(&a);
		SKIP("process_madvise(MADV_DONTNEED) on its own memory needs Linux 6.13 (%lld)", r);
	}
	ASSERT_EQ(r, 8192);
	zeroed[0] = zeroed[2] = 1;
	ASSERT_EQ(pmadvise(&a, "%u 16384 1 0 dontneed raw", 4 * 4096u), 16384);
	memset(zeroed + 4, 1, 4);
	r = pmadvise(&a, "%u 16384 1 0 dontneedlocked sym self", 8 * 4096u);
	ASSERT(r == 16384 || r == -EBADF);	/* PIDFD_SELF: Linux 6.15 */
	if (r > 0) {
		memset(zeroed + 8, 1, 4);
		ASSERT_EQ(pmadvise(&a, "%u 8192 1 0 dontneed raw self", 12 * 4096u), 8192);
		memset(zeroed + 12, 1, 2);
	} else {
		printf("  no PIDFD_SELF\n");
	}
	r = pmadvise(&a, "%u 8192 1 0 dontneed raw thread", 14 * 4096u);
	ASSERT(r == 8192 || r == -EINVAL);	/* PIDFD_THREAD: Linux 6.9 */
	if (r > 0)
		memset(zeroed + 14, 1, 2);
	/* Page 16, then page 17 plus a byte, which the kernel refuses: the
	 * first one's bytes. */
	ASSERT_EQ(pmadvise(&a, "%u 4096 2 4097 dontneed sym", 16 * 4096u), 4096);
	zeroed[16] = 1;
	/* Calls the kernel refuses before any range is advised: refused so,
	 * page 18 left. */
	ASSERT(strcmp(proc_cmd(&a, "pmadvbad %u", 18 * 4096u), "-14 -22 -22 -22 -14 -22") == 0);
	/* Another process's memory: refused as it was, this one's left. */
	r = pmadvise(&a, "%u 4096 1 0 dontneed sym parent", 20 * 4096u);
	ASSERT(r == -EINVAL || r == -EPERM);
	for (unsigned i = 0; i < 32; i++) {
		const char *want = zeroed[i] ? hex(fnv_zero(4096u)) : hex(fnv_file(img, i * 4096u, 4096u));
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", i * 4096u, 4096u), want) == 0);
	}
	/* Other advice as madvise's: MADV_UNMERGEABLE gives guest RAM up,
	 * shared pages made private, their content kept. */
	ASSERT_EQ(pmadvise(&a, "0 %u 1 0 unmergeable raw", RAM_PAGES * 4096), RAM_PAGES * 4096);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.regions, 0);
	for (unsigned off = 0; off < MB; off += 4096)
		ASSERT(!proc_page(&a, off).file);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 32 * 4096u, MB - 32 * 4096u),
		      hex(fnv_file(img, 32 * 4096u, MB - 32 * 4096u))) == 0);
	proc_stop(&a);
	return 0;
}

/* MADV_GUARD_INSTALL (Linux 6.13; on private file mappings, which pages
 * shared at read time are, since 6.15) zaps its range as a discard does:
 * once MADV_GUARD_REMOVE took the guard away, the pages read zeroes, not
 * the image's again, through madvise, syscall(2) and process_madvise. A
 * call that succeeds leaves errno as it was. */
TEST_IMPL(guard_discard_yields_zeroes)
{
	const char *img = image(5);
	struct proc a;
	reader_with_mb(&a, img);
	long long r = proc_num(&a, "advise 0 0 guardinstall");
	if (r != 0) {
		proc_stop(&a);
		SKIP("no guard regions (MADV_GUARD_INSTALL: Linux 6.13): %lld", r);
	}
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	for (unsigned i = 0; i < 16; i++)
		ASSERT(proc_page_is_image(&a, i * 4096u, img, i * 4096));
	/* Pages 0, 1, 2-5 and 8-9 (one call each), 12 and 13. */
	ASSERT(strcmp(proc_cmd(&a, "advise 0 4096 guardinstall"), "0") == 0);
	ASSERT(strcmp(proc_cmd(&a, "advise 4096 4096 guardinstall raw"), "0") == 0);
	ASSERT(strcmp(proc_cmd(&a, "advise 8192 16384 guardinstall"), "0") == 0);
	char zeroed[16] = { 1, 1, 1, 1, 1, 1 };
	r = pmadvise(&a, "%u 4096 2 4096 guardinstall sym", 8 * 4096u);
	if (r == -EINVAL || r == -ENOSYS) {
		printf("  no process_madvise on its own memory (%lld)\n", r);
	} else {
		ASSERT_EQ(r, 8192);
		ASSERT_EQ(pmadvise(&a, "%u 4096 2 4096 guardinstall raw", 12 * 4096u), 8192);
		zeroed[8] = zeroed[9] = zeroed[12] = zeroed[13] = 1;
	}
	for (unsigned i = 0; i < 16; i++)
		ASSERT_EQ(proc_num(&a, "guarded %u 1", i * 4096u), zeroed[i]);
	ASSERT(strcmp(proc_cmd(&a, "advise 0 65536 guardremove"), "0") == 0);
	ASSERT_EQ(proc_num(&a, "guarded 0 16"), 0);
	for (unsigned i = 0; i < 32; i++) {
		const char *want = i < 16 && zeroed[i] ? hex(fnv_zero(4096u)) : hex(fnv_file(img, i * 4096u, 4096u));
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", i * 4096u, 4096u), want) == 0);
	}
	proc_stop(&a);
	return 0;
}

/* A read into guest RAM with a guard page in it fails EFAULT (as the
 * kernel's O_DIRECT read; an error after a part is the call's, see
 * md_agent_preadv) and leaves the guard: shared at read time, it mapped
 * the image over the guard. A read beside it still shares. */
TEST_IMPL(read_into_guard_keeps_guard)
{
	const char *img = image(5);
	struct proc a;
	int fd = reader_with_mb(&a, img);
	long long r = proc_num(&a, "advise 0 0 guardinstall");
	if (r != 0) {
		proc_stop(&a);
		SKIP("no guard regions (MADV_GUARD_INSTALL: Linux 6.13): %lld", r);
	}
	ASSERT(strcmp(proc_cmd(&a, "advise 8192 4096 guardinstall"), "0") == 0);
	ASSERT_EQ(proc_num(&a, "guarded 0 16"), 1);
	ASSERT_EQ(proc_num(&a, "read %d 131072 65536 0 65536", fd), -EFAULT);
	ASSERT_EQ(proc_num(&a, "read %d 131072 65536 8192 65536", fd), -EFAULT);
	ASSERT_EQ(proc_num(&a, "guarded 0 16"), 1);
	ASSERT_EQ(proc_num(&a, "guarded 8192 1"), 1);
	/* Guest RAM beside the guard is still shared at read time. */
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT(proc_page_is_image(&a, MB, img, 0));
	ASSERT(strcmp(proc_cmd(&a, "advise 8192 4096 guardremove"), "0") == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 8192 4096"), hex(fnv_zero(4096u))) == 0);
	proc_stop(&a);
	return 0;
}

/* Guest RAM the VMM locks is given up, its copies kept in the image's
 * mappings, locked: a discard there is refused by the kernel (but
 * MADV_DONTNEED_LOCKED), as on the VMM's own locked memory, and must not
 * have replaced them by zeroes first (lost for a call that failed), nor
 * unlocked them; whether a range's (mlock) or all (mlockall, QEMU's
 * -overcommit mem-lock=on). */
TEST_IMPL(discard_of_locked_copies_refused)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose mlock and mlockall lock nothing and never reach the agent");
	const char *img = image(5);
	struct proc a;
	reader_with_mb(&a, img);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT_EQ(proc_num(&a, "mlock 0 65536"), 0);	/* pages 0-15 */
	char zeroed[32] = { 0 };
	for (int all = 0; all < 2; all++) {
		unsigned p = all ? 16 : 0;	/* then pages 16-31 */
		if (all)
			ASSERT_EQ(proc_num(&a, "mlockall both"), 0);
		/* Refused by a kernel without guard regions or without
		 * process_madvise on its own memory all the same. */
		ASSERT_EQ(proc_num(&a, "advise %u 4096 guardinstall", p * 4096), -EINVAL);
		ASSERT_EQ(proc_num(&a, "advise %u 4096 dontneed raw", (p + 1) * 4096), -EINVAL);
		ASSERT_EQ(pmadvise(&a, "%u 4096 1 0 free sym", (p + 2) * 4096), -EINVAL);
		ASSERT_EQ(pmadvise(&a, "%u 4096 1 0 dontneed raw", (p + 3) * 4096), -EINVAL);
		ASSERT_EQ(proc_num(&a, "advise %u 4096 dontneedlocked", (p + 4) * 4096), 0);
		zeroed[p + 4] = 1;
		/* An io_uring MADVISE entry too (the agent empties what it
		 * discards before the submit). */
		ASSERT_EQ(proc_num(&a, "uring dontneed 0 0 4096 %u", (p + 5) * 4096), -EINVAL);
		/* MADV_DONTNEED_LOCKED's entry is not refused: emptied too. */
		ASSERT_EQ(proc_num(&a, "uring dontneedlocked 0 0 4096 %u", (p + 6) * 4096), 0);
		zeroed[p + 6] = 1;
		for (unsigned i = p; i < p + 7; i++)	/* the ones emptied too */
			ASSERT_EQ(proc_num(&a, "vmflag %u lo", i * 4096), 1);
	}
	for (unsigned i = 0; i < 32; i++) {
		const char *want = zeroed[i] ? hex(fnv_zero(4096u)) : hex(fnv_file(img, i * 4096u, 4096u));
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", i * 4096u, 4096u), want) == 0);
	}
	proc_stop(&a);
	return 0;
}

/* Locked on fault (mlockall MCL_ONFAULT): the zeroes a discard of the
 * copies leaves are locked on fault again, not populated and locked whole. */
TEST_IMPL(discard_of_onfault_locked_copies_stays_onfault)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose mlockall locks nothing and never reaches the agent");
	const char *img = image(5);
	struct proc a;
	reader_with_mb(&a, img);
	ASSERT_EQ(proc_num(&a, "mlockall onfault"), 0);
	ASSERT_EQ(proc_num(&a, "vmflag 16384 lf"), 1);
	ASSERT_EQ(proc_num(&a, "advise 16384 4096 dontneedlocked"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 16384 4096"), hex(fnv_zero(4096u))) == 0);
	ASSERT_EQ(proc_num(&a, "vmflag 16384 lo"), 1);
	ASSERT_EQ(proc_num(&a, "vmflag 16384 lf"), 1);
	proc_stop(&a);
	return 0;
}

/* The zeroes a discard leaves in place of forgotten copies keep the
 * VMM's advice there (MADV_DONTDUMP: guest RAM left out of core dumps). */
TEST_IMPL(discard_of_forgotten_copies_keeps_dontdump)
{
	const char *img = image(5);
	struct proc a;
	reader_with_mb(&a, img);
	ASSERT_EQ(proc_num(&a, "dontdump 16384 8192"), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 65536 unmergeable"), 0);	/* copies forgotten */
	ASSERT_EQ(proc_num(&a, "vmflag 16384 dd"), 1);
	ASSERT_EQ(proc_num(&a, "advise 16384 4096 dontneed"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 16384 4096"), hex(fnv_zero(4096u))) == 0);
	ASSERT_EQ(proc_num(&a, "vmflag 16384 dd"), 1);
	ASSERT_EQ(proc_num(&a, "vmflag 20480 dd"), 1);
	proc_stop(&a);
	return 0;
}

/* Guest RAM given up keeps its private copies in the image's mappings,
 * which a discard replaces by zeroes. Once the VMM unmaps or maps over that
 * memory the copies are gone: a private mapping of its own put there must
 * read its file's content after a discard, not zeroes. */
TEST_IMPL(discard_after_remap_keeps_vmm_file)
{
	const char *img = image(6), *other = image(8);
	struct proc a;
	int fd = reader_with_mb(&a, img);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", RAM_PAGES * 4096), 0);	/* copies forgotten */
	int fo = (int)proc_num(&a, "open %s", other);
	ASSERT(fo >= 0);
	ASSERT_EQ(proc_num(&a, "mapfile 0 65536 %d", fo), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(other, 0, 65536))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "write 100 7"), "ok") == 0);	/* a private copy of its own */
	ASSERT_EQ(proc_num(&a, "advise 0 65536 dontneed"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(other, 0, 65536))) == 0);
	/* The same where guest RAM moved away (mremap) and the VMM mapped a
	 * file into the hole it left. */
	ASSERT_EQ(proc_num(&a, "moveram 131072 65536"), 0);
	ASSERT_EQ(proc_num(&a, "mapfile 131072 65536 %d noreplace", fo), 0);
	ASSERT(strcmp(proc_cmd(&a, "write 131172 7"), "ok") == 0);
	ASSERT_EQ(proc_num(&a, "advise 131072 65536 dontneed"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 131072 65536"), hex(fnv_file(other, 0, 65536))) == 0);
	/* Beside it, the forgotten copies still read back as zeroes. */
	ASSERT_EQ(proc_num(&a, "advise 65536 65536 dontneed"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 65536 65536"), hex(fnv_zero(65536))) == 0);
	proc_stop(&a);

	/* A file the VMM maps beside the forgotten copies, still guest RAM
	 * until then, and one discard over both: the copies read zeroes, the
	 * VMM's file its content (the whole range discarded was replaced). */
	fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, MB), MB);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", MB), 0);
	fo = (int)proc_num(&a, "open %s", other);
	ASSERT(fo >= 0);
	ASSERT_EQ(proc_num(&a, "mapfile %u 65536 %d", MB, fo), 0);
	ASSERT(strcmp(proc_cmd(&a, "write %u 7", MB + 100), "ok") == 0);
	ASSERT_EQ(proc_num(&a, "advise %u 131072 dontneed", MB - 65536), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB - 65536), hex(fnv_zero(65536))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(other, 0, 65536))) == 0);
	proc_stop(&a);
	return 0;
}

/* As above, where the file the VMM maps there is the image itself (one the
 * agent has met, whose private mappings a discard of forgotten copies
 * replaces by anonymous memory): over guest RAM given up (MAP_FIXED),
 * over RAM registered again, into the holes a move and a shrink left. Its
 * private copy discarded, each reads the image again, not zeroes. */
TEST_IMPL(discard_after_remap_keeps_vmm_image_map)
{
	const char *img = image(6);
	struct proc a;
	reader_with_mb(&a, img);
	const unsigned ram = RAM_PAGES * 4096, part = 65536;
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", ram), 0);	/* copies forgotten */
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 2 * part, part), 0);	/* registered again */
	int fi = (int)proc_num(&a, "open %s", img);
	ASSERT(fi >= 0);
	ASSERT_EQ(proc_num(&a, "mapfile 0 %u %d", part, fi), 0);
	ASSERT_EQ(proc_num(&a, "mapfile %u %u %d", 2 * part, part, fi), 0);
	ASSERT_EQ(proc_num(&a, "moveram %u %u", 4 * part, part), 0);
	ASSERT_EQ(proc_num(&a, "mapfile %u %u %d noreplace", 4 * part, part, fi), 0);
	ASSERT_EQ(proc_num(&a, "shrink %u %u %u", 5 * part, ram - 5 * part, ram - 6 * part), 5 * part);
	ASSERT_EQ(proc_num(&a, "mapfile %u %u %d noreplace", ram - part, part, fi), 0);
	const unsigned at[] = { 0, 2 * part, 4 * part, ram - part };
	for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
		ASSERT(strcmp(proc_cmd(&a, "write %u 7", at[i] + 100), "ok") == 0);	/* a private copy */
		ASSERT_EQ(proc_num(&a, "advise %u %u dontneed", at[i], part), 0);
		ASSERT(strcmp(proc_cmd(&a, "hash %u %u", at[i], part), hex(fnv_file(img, 0, part))) == 0);
	}
	proc_stop(&a);
	return 0;
}

/* A mapping of the VMM's own put over guest RAM (MAP_FIXED) is no longer
 * guest RAM: a read into it is copied there, as without the agent, not
 * mapped from the image over the VMM's mapping. RAM beside it still
 * shares. */
TEST_IMPL(read_into_vmm_fixed_map_copied)
{
	const char *img = image(6), *other = image(8);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	int fo = (int)proc_num(&a, "open %s", other);
	ASSERT(fo >= 0);
	ASSERT_EQ(proc_num(&a, "mapfile 0 65536 %d", fo), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	for (unsigned i = 0; i < 16; i++)
		ASSERT(!proc_page(&a, i * 4096).file);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 65536 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 65536 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT(proc_page_is_image(&a, 65536, img, 0));
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	/* So is one moved there (mremap's MREMAP_FIXED). */
	ASSERT_EQ(proc_num(&a, "mapfile %u 65536 %d moved", MB, fo), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(img, 0, 65536))) == 0);
	for (unsigned i = 0; i < 16; i++)
		ASSERT(!proc_page(&a, MB + i * 4096).file);
	proc_stop(&a);
	return 0;
}

/* A VMM that chroots where there is no /proc (QEMU's -chroot) after its
 * RAM was set up: a discard over forgotten copies still reads zeroes (the
 * mappings are read through /proc/self as found before), not the image. */
TEST_IMPL(discard_after_chroot_yields_zeroes)
{
	const char *img = image(6);
	char root[512];
	snprintf(root, sizeof(root), "%s/empty-root", test_dir());
	ASSERT(mkdir(root, 0755) == 0 || errno == EEXIST);
	struct proc a;
	reader_with_mb(&a, img);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", MB), 0);	/* copies forgotten */
	long long chrooted = proc_num(&a, "chroot %s", root);
	if (chrooted == -EPERM) {
		proc_stop(&a);
		SKIP("chroot needs CAP_SYS_CHROOT");
	}
	ASSERT_EQ(chrooted, 0);
	/* What the agent keeps of /proc is files: a directory outside the
	 * new root would be a way out of it. */
	char fds[64];
	snprintf(fds, sizeof(fds), "/proc/%d/fd", (int)a.pid);
	DIR *d = opendir(fds);
	ASSERT(d);
	for (struct dirent *de; (de = readdir(d));) {
		char path[320];
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", fds, de->d_name);
		if (de->d_name[0] != '.' && stat(path, &st) == 0)
			ASSERT(!S_ISDIR(st.st_mode));
	}
	closedir(d);
	ASSERT_EQ(proc_num(&a, "advise 0 65536 dontneed"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_zero(65536))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 65536 65536"), hex(fnv_file(img, 65536, 65536))) == 0);
	proc_stop(&a);
	return 0;
}

/* Whether /proc/locks shows a lease on the file st. */
static int lease_shown(const struct stat *st)
{
	char line[256], want[64];
	int found = 0;
	snprintf(want, sizeof(want), ":%llu ", (unsigned long long)st->st_ino);
	FILE *f = fopen("/proc/locks", "r");
	ASSERT(f);
	while (fgets(line, sizeof(line), f))
		found |= strstr(line, "LEASE") && strstr(line, want);
	fclose(f);
	return found;
}

/* A reader that opened img, then chrooted where there is no /proc (QEMU's
 * -chroot, before the guest's first read); fd: the reader's. */
static int reader_chrooted(struct proc *a, const char *img, const char *const *env, int *fd)
{
	char root[512];
	snprintf(root, sizeof(root), "%s/empty-root", test_dir());
	ASSERT(mkdir(root, 0755) == 0 || errno == EEXIST);
	*fd = start_reader(a, img, env);
	long long chrooted = proc_num(a, "chroot %s", root);
	if (chrooted == -EPERM)
		proc_stop(a);
	else
		ASSERT_EQ(chrooted, 0);
	return chrooted == -EPERM ? -1 : 0;
}

/* A VMM that opened its image, then chrooted where there is no /proc: its
 * reads are shared all the same, through the description the agent opened
 * as it chrooted, and again once the image was let go (its lease, not that
 * description, which could not be had again). */
TEST_IMPL(image_leased_after_chroot)
{
	const char *img = image(43);
	const char *env[] = { "MEMDEDUP_IMAGE_IDLE_S=1", NULL };
	struct proc a;
	struct stat st;
	int fd;
	ASSERT(stat(img, &st) == 0);
	if (reader_chrooted(&a, img, env, &fd))
		SKIP("chroot needs CAP_SYS_CHROOT");
	ASSERT_EQ(fds_naming(a.pid, img), 2);	/* the VMM's, the agent's */
	md_stats s0, s;
	for (int round = 0; round < 2; round++) {
		ASSERT_EQ(proc_stats(&a, &s0), 0);
		ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, MB), MB);
		ASSERT_EQ(proc_stats(&a, &s), 0);
		ASSERT_EQ(s.pages_shared_at_read - s0.pages_shared_at_read, MB / 4096);
		ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);
		ASSERT(proc_page(&a, 0).file && proc_page(&a, MB - 4096).file);
		ASSERT(lease_shown(&st));
		/* Unmapped, unused: the lease goes, the descriptor stays. */
		ASSERT_EQ(proc_num(&a, "advise 0 %u dontneed", MB), 0);
		for (int i = 0; i < 100 && lease_shown(&st); i++)
			usleep(100000);
		ASSERT(!lease_shown(&st));
		ASSERT_EQ(fds_naming(a.pid, img), 2);
	}
	ASSERT_EQ(s.fallbacks_total, 0);
	proc_stop(&a);
	return 0;
}

/* As core_dump_keeps_shared_ram, for a VMM that chrooted where there is
 * no /proc: the filter is set as it chroots, for its RAM not advised
 * MADV_DONTDUMP then. */
TEST_IMPL(core_dump_keeps_shared_ram_after_chroot)
{
	long mine = coredump_filter(getpid());
	ASSERT(mine >= 0);
	char text[32];
	snprintf(text, sizeof(text), "%#lx", mine & ~4l);
	FILE *f = fopen("/proc/self/coredump_filter", "w");
	ASSERT(f && fputs(text, f) >= 0 && fclose(f) == 0);
	const char *img = image(45);
	struct proc a;
	int fd;
	if (reader_chrooted(&a, img, NULL, &fd))
		SKIP("chroot needs CAP_SYS_CHROOT");
	ASSERT_EQ(coredump_filter(a.pid), mine | 4);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, MB), MB);
	proc_cmd(&a, "hash 0 4096");	/* faulted in: the image's page */
	ASSERT(proc_page(&a, 0).file);
	ASSERT_EQ(coredump_filter(a.pid), mine | 4);
	proc_stop(&a);
	return 0;
}

/* The same, then a writer: the pages read are made private with what the
 * guest read, and the lease, on the description the agent opened as the
 * VMM chrooted, is given back at once for the writer. */
TEST_IMPL(image_lease_break_after_chroot)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/image-chroot-mutable", test_dir());
	make_image(img, IMG_SIZE, 44);
	uint64_t orig = fnv_file(img, 0, IMG_SIZE);
	struct proc a;
	struct stat st;
	int fd;
	time_t waited;
	ASSERT(stat(img, &st) == 0);
	if (reader_chrooted(&a, img, NULL, &fd))
		SKIP("chroot needs CAP_SYS_CHROOT");
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 65536", fd, IMG_SIZE), IMG_SIZE);
	ASSERT(proc_page_from_file(&a, 0));
	ASSERT(lease_shown(&st));
	int wfd = overwrite_image(img, &waited);
	ASSERT(waited < 5);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", IMG_SIZE), hex(orig)) == 0);
	image_pages_made_private(&a);
	close(wfd);
	proc_stop(&a);
	return 0;
}

/* What the agent opens as the VMM chroots is not kept for nothing: a
 * chroot that failed keeps none, and a file the VMM then closes (an ISO
 * ejected) is not held open by the agent either (a deleted file's space). */
TEST_IMPL(chroot_spares_not_kept_for_nothing)
{
	const char *img = image(47);
	struct proc a;
	int fd;
	start_reader(&a, img, NULL);
	char missing[512];
	snprintf(missing, sizeof(missing), "%s/no-such-root", test_dir());
	ASSERT_EQ(proc_num(&a, "chroot %s", missing), -ENOENT);
	ASSERT_EQ(fds_naming(a.pid, img), 1);
	/* Nor after a chroot that leaves /proc in reach ("/" itself). */
	long long rooted = proc_num(&a, "chroot /");
	ASSERT(rooted == 0 || rooted == -EPERM);
	ASSERT_EQ(fds_naming(a.pid, img), 1);
	proc_stop(&a);
	if (reader_chrooted(&a, img, NULL, &fd))
		SKIP("chroot needs CAP_SYS_CHROOT");
	ASSERT_EQ(fds_naming(a.pid, img), 2);
	ASSERT_EQ(proc_num(&a, "closefd %d", fd), 0);
	int n = 1;
	for (int i = 0; i < 30 && n; i++) {
		usleep(100000);
		n = fds_naming(a.pid, img);
	}
	ASSERT_EQ(n, 0);
	proc_stop(&a);
	return 0;
}

/* The set of ranges where forgotten copies may lie holds 32; the 33rd
 * grows the nearest, over guest RAM between them. A file the VMM maps
 * there later is its own: a discard over it must show the file, not
 * zeroes. */
TEST_IMPL(discard_beside_many_forgotten_keeps_vmm_file)
{
	const char *img = image(6), *other = image(8);
	struct proc a;
	reader_with_mb(&a, img);
	for (unsigned i = 0; i <= 32; i++)	/* page 128 grows [124, 125) */
		ASSERT_EQ(proc_num(&a, "advise %u 4096 unmergeable", i * 4 * 4096), 0);
	int fo = (int)proc_num(&a, "open %s", other);
	ASSERT(fo >= 0);
	ASSERT_EQ(proc_num(&a, "mapfile %u 8192 %d", 125 * 4096, fo), 0);
	ASSERT(strcmp(proc_cmd(&a, "write %u 7", 125 * 4096 + 100), "ok") == 0);
	ASSERT_EQ(proc_num(&a, "advise %u 12288 dontneed", 124 * 4096), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 8192", 125 * 4096), hex(fnv_file(other, 0, 8192))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 4096", 124 * 4096), hex(fnv_zero(4096))) == 0);
	/* The shared pages beside them still read the image. */
	ASSERT(strcmp(proc_cmd(&a, "hash %u 4096", 127 * 4096), hex(fnv_file(img, 127 * 4096, 4096))) == 0);
	proc_stop(&a);
	return 0;
}

/* 1 if a mapping of pid in [lo, hi) is still registered with a
 * userfaultfd for write-protection (smaps' VmFlags "uw"). */
static int uffd_wp_left(pid_t pid, uintptr_t lo, uintptr_t hi)
{
	char path[64], line[512];
	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	FILE *f = fopen(path, "r");
	ASSERT(f);
	int in = 0, left = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = a < hi && b > lo;
		else if (in && strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " uw"))
			left = 1;
	}
	fclose(f);
	return left;
}

/* With the scanner, guest RAM is registered with a userfaultfd; an image
 * mapped into it by a read cannot be (the kernel write-protects anonymous
 * memory and shmem only), and made the unregistration of the whole range
 * fail: what stayed registered after MADV_UNMERGEABLE could keep a
 * protection nobody would lift. */
TEST_IMPL(unmerge_unregisters_beside_images)
{
	const char *img = image(6);
	static const char *const scan[] = { "MEMDEDUP_SCAN=1", NULL };
	struct proc a;
	int fd = start_reader(&a, img, scan);
	uintptr_t base = (uintptr_t)a.base;
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u 65536", fd, MB, MB), MB);
	/* Shared at read time, by the agent's count and by pagemap, read
	 * once: read twice, the scanner hashing the page in place between
	 * the reads made it look present and anonymous (1 run in 12 in the
	 * twenty-fifth session, found in the thirtieth). */
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, NULL), 0);
	ASSERT_EQ(s.pages_shared_at_read, MB / 4096);
	ASSERT(proc_page_from_file(&a, MB));
	ASSERT(uffd_wp_left(a.pid, base, base + RAM_PAGES * 4096));
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", RAM_PAGES * 4096), 0);
	ASSERT(!uffd_wp_left(a.pid, base, base + RAM_PAGES * 4096));
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", MB, MB), hex(fnv_file(img, 0, MB))) == 0);
	proc_stop(&a);
	return 0;
}

/* A move of guest RAM the kernel refuses leaves it as it was: registered,
 * and later reads there shared. The agent gives RAM up before an mremap
 * (the pages must not move under its records), and did not take it back
 * when the call failed. */
TEST_IMPL(failed_move_keeps_registration)
{
	const char *img = image(6);
	struct proc a;
	int fd = reader_with_mb(&a, img);
	ASSERT_EQ(proc_num(&a, "overmove 0 %u", RAM_PAGES), -EINVAL);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)RAM_PAGES * 4096);
	uint64_t shared = s.pages_shared_at_read;
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, shared + 16);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);
	proc_stop(&a);
	return 0;
}

/* A move of RAM shared at read time, with no memory to make its pages
 * private first, fails with ENOMEM and moves nothing: moved, the image's
 * pages would lie where no record names them, and a lease break would
 * miss them (the writer's bytes shown in guest RAM). Those made private
 * before memory ran out stay so; the rest stay the image's, tracked. */
TEST_IMPL(move_short_of_memory_fails)
{
	struct test_cgroup cg;
	char img[512];
	uint64_t orig;
	struct proc a;
	const char *none = image_short_of_memory(&cg, &a, img, sizeof(img), "image-move", 18, &orig);
	if (none)
		SKIP("%s", none);
	ASSERT_EQ(proc_num(&a, "move 0 %u", IMG_SIZE / 4096), -ENOMEM);
	refused_left_tracked(&cg, &a, img, orig);
	return 0;
}

/* A move that leaves the old place mapped (MREMAP_DONTUNMAP) empties it:
 * it reads zeroes, as anonymous memory would, not the image its mappings
 * were made from (nor a pool slot reused since; review). */
TEST_IMPL(move_dontunmap_leaves_zeroes)
{
	const char *img = image(6);
	struct proc a;
	reader_with_mb(&a, img);
	long long to = proc_num(&a, "keepmove 0 %u", MB / 4096);
	if (to == -EINVAL)
		SKIP("no MREMAP_DONTUNMAP of file mappings here (Linux 5.13)");
	ASSERT(to > 0 || to < -4096);
	ASSERT(strcmp(proc_cmd(&a, "hash %lld %u", to, MB), hex(fnv_file(img, 0, MB))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_zero(MB))) == 0);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(unmerge_makes_private)
{
	const char *img = image(6);
	struct proc a;
	int fd = reader_with_mb(&a, img);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", RAM_PAGES * 4096), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);
	for (size_t off = 0; off < MB; off += 4096)
		ASSERT(!proc_page(&a, off).file);
	/* No longer guest RAM: later reads are plain (the page read, then
	 * looked at: a mapping not touched yet shows no frame at all). */
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	uint64_t shared = s.pages_shared_at_read;
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(img, 0, 65536))) == 0);
	ASSERT(proc_page(&a, MB).present && !proc_page(&a, MB).file);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, shared);
	ASSERT_EQ(s.regions, 0);
	ASSERT_EQ(s.pages_privatized, MB / 4096);
	/* Forgotten, the copies still lie in the image's mapping: a discard
	 * reads back zeroes, not the image (the rest stays as it was). */
	ASSERT_EQ(proc_num(&a, "advise 0 65536 dontneed"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_zero(65536))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 65536 %u", MB - 65536), hex(fnv_file(img, 65536, MB - 65536))) == 0);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(preadv_mixed)
{
	const char *img = image(7);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	/* Both halves in guest RAM: both shared. */
	ASSERT_EQ(proc_num(&a, "preadv %d 8192 0 131072 ram", fd), 131072);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 131072"), hex(fnv_file(img, 8192, 131072))) == 0);
	ASSERT(proc_page_from_file(&a, 0));
	/* Second half to the heap: the first still shared, content exact. */
	ASSERT_EQ(proc_num(&a, "preadv %d 0 %u 131072 heap", fd, MB), 131072);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 131072", MB), hex(fnv_file(img, 0, 131072))) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 32 + 16);
	/* A negative offset is the kernel's EINVAL, as without us (preadv2's
	 * -1, "at the file position", is not preadv's). */
	ASSERT_EQ(proc_num(&a, "preadv %d -1 0 8192 ram", fd), -EINVAL);
	ASSERT_EQ(proc_num(&a, "read %d -1 4096 0", fd), -EINVAL);
	proc_stop(&a);
	return 0;
}

/* A reader a whose wfd (returned) is scratch (made, 64 KiB) open for
 * writing; *h: scratch's hash as made. */
static int scratch_writer(struct proc *a, char *scratch, size_t size, uint64_t *h)
{
	snprintf(scratch, size, "%s/scratch", test_dir());
	make_image(scratch, 65536, 3);
	*h = fnv_file(scratch, 0, 65536);
	start_reader(a, image(7), NULL);
	int wfd = (int)proc_num(a, "open %s rw", scratch);
	ASSERT(wfd >= 0);
	return wfd;
}

/* So is pwritev's: pwritev2's -1 ("at the file position") wrote there. */
TEST_IMPL(pwritev_negative_offset_refused)
{
	char scratch[512];
	struct proc a;
	uint64_t h;
	int wfd = scratch_writer(&a, scratch, sizeof(scratch), &h);
	ASSERT_EQ(proc_num(&a, "pwritev %d -1 0 4096", wfd), -EINVAL);
	ASSERT(fnv_file(scratch, 0, 65536) == h);
	ASSERT_EQ(proc_num(&a, "pwritev %d 0 0 4096", wfd), 4096);	/* the same call at 0 writes */
	ASSERT(fnv_file(scratch, 0, 65536) != h);
	proc_stop(&a);
	return 0;
}

/* pwritev2's flags reach the kernel, as without us: one it does not know
 * fails the write, and RWF_APPEND writes at the end of the file. */
TEST_IMPL(pwritev2_flags_reach_kernel)
{
	char scratch[512];
	struct proc a;
	struct stat st;
	uint64_t h;
	int wfd = scratch_writer(&a, scratch, sizeof(scratch), &h);
	ASSERT_EQ(proc_num(&a, "pwritev %d 0 0 4096 %d", wfd, 0x40000000), -EOPNOTSUPP);
	ASSERT(fnv_file(scratch, 0, 65536) == h);
	ASSERT_EQ(proc_num(&a, "pwritev %d 0 0 4096 %d", wfd, RWF_APPEND), 4096);
	ASSERT(fnv_file(scratch, 0, 65536) == h);
	ASSERT(stat(scratch, &st) == 0 && st.st_size == 65536 + 4096);
	proc_stop(&a);
	return 0;
}

/* The kernel's own O_DIRECT preadv of img at off into two segments of a
 * page-aligned buffer, l1 and l2 bytes, gap bytes apart: what a test's
 * vector should do under the agent. -1 when O_DIRECT cannot be had. */
static int direct_preadv_plain(const char *img, size_t l1, size_t gap, size_t l2, off_t off,
			       ssize_t *ret, int *err)
{
	int k = open(img, O_RDONLY | O_DIRECT);
	if (k < 0)
		return -1;
	char *buf = aligned_alloc(4096, (l1 + gap + l2 + 4095) / 4096 * 4096);
	if (!buf) {
		close(k);
		return -1;
	}
	struct iovec iov[2] = { { buf, l1 }, { buf + l1 + gap, l2 } };
	errno = 0;
	*ret = preadv(k, iov, 2, off);
	*err = errno;
	free(buf);
	close(k);
	return 0;
}

/* A test process with guest RAM mapped and img open with O_DIRECT: the
 * descriptor, negative on failure. */
static int start_direct_reader(struct proc *a, const char *img)
{
	proc_start(a, NULL);
	proc_cmd(a, "map %u", RAM_PAGES);
	return (int)proc_num(a, "open %s direct", img);
}

/* A preadv whose later segment fails fails whole, as the kernel's O_DIRECT
 * preadv does (it checks every segment's alignment first), also when an
 * earlier segment was mapped: a short count says end of file, and QEMU
 * takes a short preadv for one the system lacks, and stops using preadv
 * for every drive (review). */
TEST_IMPL(preadv_error_after_shared_part)
{
	const char *img = image(7);
	ssize_t plain;
	int plain_err;
	if (direct_preadv_plain(img, 65536, 4096 + 1, 65536, 8192, &plain, &plain_err) < 0)
		SKIP("no O_DIRECT on the test directory's filesystem");
	if (plain >= 0 || plain_err != EINVAL)
		SKIP("this filesystem's O_DIRECT takes a buffer off its alignment");
	struct proc a;
	int fd = start_direct_reader(&a, img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "preadv %d 8192 0 131072 skew", fd), -EINVAL);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	/* Nothing mapped: the kernel took the vector whole, and moved no
	 * byte (the first half was mapped before the second failed). */
	ASSERT_EQ(s.pages_shared_at_read, 0);
	proc_stop(&a);
	return 0;
}

/* An O_DIRECT preadv whose segments are off the device's blocks, their sum
 * whole, is the kernel's to take or refuse whole (Linux 6.18 takes it):
 * read segment by segment, each part alone was refused (EINVAL; a review). */
TEST_IMPL(preadv_direct_ragged_segments_as_kernel)
{
	const char *img = image(7);
	ssize_t plain;
	int plain_err;
	if (direct_preadv_plain(img, 65536 + 100, 0, 65536 - 100, 0, &plain, &plain_err) < 0)
		SKIP("no O_DIRECT on the test directory's filesystem");
	if (plain != 131072)
		SKIP("this kernel's O_DIRECT refuses segments off the blocks (%zd)", plain);
	struct proc a;
	int fd = start_direct_reader(&a, img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "preadv %d 0 0 131072 ragged", fd), 131072);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 131072), hex(fnv_file(img, 0, 131072))) == 0);
	proc_stop(&a);
	return 0;
}

/* A guest's page cache asks for scattered pages: a preadv of 4 KiB
 * segments, none of which can be mapped, is one read, as the VMM made it
 * (it was a pread a segment: under O_DIRECT a device request each). */
TEST_IMPL(preadv_scattered_one_call)
{
	const char *img = image(7);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	long long r, calls;
	int same;
	ASSERT_EQ(sscanf(proc_cmd(&a, "scatter %d 8192 0 32", fd), "%lld %lld %d", &r, &calls, &same), 3);
	ASSERT_EQ(r, 32 * 4096);
	ASSERT(same);
	/* Two calls of 16 segments (what a read in flight records one by
	 * one), and the first look at the count. */
	ASSERT(calls >= 2 && calls <= 3);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.reads_seen, 32);	/* each segment counted as a read */
	ASSERT_EQ(s.read_small_pages, 32);
	ASSERT_EQ(s.reads_page, 32);	/* and as a 4 KiB read */
	/* Short at the end of the file: the segments past it were not read,
	 * and are not counted (the one that read nothing is, as before). */
	ASSERT_EQ(sscanf(proc_cmd(&a, "scatter %d %u 0 4", fd, IMG_SIZE - 4096), "%lld %lld %d", &r, &calls, &same), 3);
	ASSERT_EQ(r, 4096);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.reads_seen, 32 + 2);
	ASSERT_EQ(s.reads_page, 32 + 1);	/* only the one that read its 4 KiB */
	proc_stop(&a);
	return 0;
}

/* The log file's descriptor closed by the VMM (close_range, say) and its
 * number taken by a file of the VMM's: the agent's next line goes to its
 * log, opened again, not into that file. */
TEST_IMPL(log_fd_taken_by_vmm_file)
{
	if (getenv("MD_TEST_PRELOAD_FIRST"))
		SKIP("under AddressSanitizer, whose mlock never reaches the agent");
	const char *img = image(8);
	char log[600], logenv[700], victim[600];
	snprintf(log, sizeof(log), "%s/agent.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	snprintf(victim, sizeof(victim), "%s/vmm-file", test_dir());
	FILE *v = fopen(victim, "w");
	ASSERT(v && fputs("the VMM's own file\n", v) >= 0 && fclose(v) == 0);
	const char *env[] = { logenv, NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	int logfd = -1;
	ASSERT_EQ(naming(a.pid, log, -1, &logfd), 1);
	ASSERT_EQ(proc_num(&a, "closefd %d", logfd), 0);
	ASSERT_EQ(proc_num(&a, "open %s rw", victim), logfd);
	ASSERT_EQ(proc_num(&a, "mlock 0 65536"), 0);	/* said once in the log */
	proc_stop(&a);
	ASSERT(strcmp(file_text(victim), "the VMM's own file\n") == 0);
	ASSERT(strstr(file_text(log), "the VMM locks guest RAM in memory"));
	return 0;
}

/* A child forked from a process with an agent has none of its threads,
 * and its locks may be held: it reads plainly, into a copy of its own. */
TEST_IMPL(fork_child_runs_plain)
{
	const char *img = image(8);
	char log[600], logenv[700];
	snprintf(log, sizeof(log), "%s/fork.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	const char *env[] = { logenv, NULL };
	struct proc a;
	int fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	char expect[64];
	snprintf(expect, sizeof(expect), "65536 %s 0", hex(fnv_file(img, 0, 4096)));
	ASSERT(strcmp(proc_cmd(&a, "fork %u %d", MB, fd), expect) == 0);
	/* Nor a child made without the atfork handlers: through syscall(2),
	 * or glibc's _Fork(). It went on with the parent's agent, whose
	 * locks another thread may have held. */
	ASSERT(strcmp(proc_cmd(&a, "fork %u %d raw", MB, fd), expect) == 0);
	ASSERT(strcmp(proc_cmd(&a, "fork %u %d _Fork", MB, fd), expect) == 0);
	/* Or glibc's clone() without CLONE_VM, which runs no atfork handler
	 * either (review). */
	ASSERT(strcmp(proc_cmd(&a, "fork %u %d clone", MB, fd), expect) == 0);
	/* Or syscall(2)'s clone3 without CLONE_VM (its flags read from its
	 * arguments' first word). */
	ASSERT(strcmp(proc_cmd(&a, "fork %u %d clone3", MB, fd), expect) == 0);
	proc_stop(&a);
	/* Each child said so as it asked for merging. */
	int plain = 0;
	for (const char *p = file_text(log); (p = strstr(p, "runs without it")); p++)
		plain++;
	ASSERT_EQ(plain, 5);
	/* The RAM was not MADV_DONTFORK: the fork() with handlers made the
	 * pages shared there private first (fork_child_keeps_image_pages),
	 * and had nothing to say. */
	ASSERT(!strstr(file_text(log), "forked with guest RAM not MADV_DONTFORK"));
	/* RAM that is (QEMU's) stays shared, and says nothing either. */
	snprintf(log, sizeof(log), "%s/fork-dontfork.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontfork", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "forkmapped 0"), "unmapped") == 0);	/* a fork(): handlers ran */
	ASSERT(proc_page_from_file(&a, 0));
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_privatized, 0);
	ASSERT_EQ(s.fork_shared, 0);
	proc_stop(&a);
	ASSERT(!strstr(file_text(log), "forked with guest RAM not MADV_DONTFORK"));
	return 0;
}

/* A child that shares our memory (CLONE_VM|CLONE_VFORK, as posix_spawn
 * makes to exec a helper) is no fork: had it taken itself for one and run
 * plain, the agent's state it let go would be the parent's, which would
 * copy every read from then on and discard merged pages plainly. By glibc's
 * clone() and by syscall(2)'s clone and clone3 (review). */
TEST_IMPL(vm_child_keeps_agent)
{
	const char *img = image(8);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT_EQ(proc_num(&a, "vmchild clone"), 0);
	ASSERT_EQ(proc_num(&a, "vmchild sys"), 0);
	ASSERT_EQ(proc_num(&a, "vmchild clone3"), 0);
	ASSERT_EQ(proc_num(&a, "read %d 65536 65536 65536 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 131072"), hex(fnv_file(img, 0, 131072))) == 0);
	ASSERT(proc_page_is_image(&a, 65536, img, 65536));
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_shared), 0);
	ASSERT_EQ(s.pages_shared_at_read, 32);
	ASSERT_EQ(s.fallbacks_total, 0);
	proc_stop(&a);
	return 0;
}

/* a forks a child (with the atfork handlers) whose first 64 KiB of RAM
 * hash to h, img's first 64 KiB; then a writer changes img: the child
 * and a still read h (their pages private, not the writer's). The child
 * is gone after. */
static void forked_then_image_written(struct proc *a, const char *img, const char *h)
{
	ASSERT(proc_num(a, "forkkeep") > 0);
	ASSERT(strcmp(proc_cmd(a, "kid hash 0 65536"), h) == 0);
	/* A writer: the parent's lease goes (it has nothing left to make
	 * private), and the file changes. */
	int w = open(img, O_WRONLY);
	ASSERT(w >= 0);
	char junk[65536];
	memset(junk, 0xa5, sizeof(junk));
	ASSERT(pwrite(w, junk, sizeof(junk), 0) == (ssize_t)sizeof(junk));
	close(w);
	ASSERT(strcmp(hex(fnv_file(img, 0, 65536)), h) != 0);
	ASSERT(strcmp(proc_cmd(a, "kid hash 0 65536"), h) == 0);
	ASSERT(strcmp(proc_cmd(a, "kid quit"), "0") == 0);
	ASSERT(strcmp(proc_cmd(a, "hash 0 65536"), h) == 0);
}

/* A fork() of guest RAM that is not MADV_DONTFORK, with pages shared from
 * an image at read time: the child, plain, mapped the image's page-cache
 * pages and, once the parent let its lease go for a writer (its own pages
 * made private), read what the writer wrote. The parent's pages are made
 * private before the fork (as a lease break makes them): the child's are
 * a copy of those. A fork made without the handlers (syscall(SYS_fork),
 * _Fork, clone) still copies them shared (docs/ARCHITECTURE.md). */
TEST_IMPL(fork_child_keeps_image_pages)
{
	const char *img = image(11);
	char h[20];
	snprintf(h, sizeof(h), "%s", hex(fnv_file(img, 0, 65536)));
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(proc_page_from_file(&a, 0));
	forked_then_image_written(&a, img, h);
	ASSERT(!proc_page_from_file(&a, 0));
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_privatized, 16);
	ASSERT_EQ(s.fork_shared, 0);
	proc_stop(&a);
	return 0;
}

/* The same children where the VMM gave a NUMA policy (QEMU's host-nodes=):
 * every unmap takes the policies' lock, and a child made without the
 * atfork handlers inherited it held by a thread it does not have, and hung
 * at its first unmap (review). */
TEST_IMPL(fork_child_policy_lock)
{
	struct proc a;
	proc_start(&a, NULL);
	proc_cmd(&a, "map 16");
	ASSERT_EQ(proc_num(&a, "mbind 0 4096 sym"), 0);
	ASSERT_EQ(proc_num(&a, "forkstorm 50 raw"), 0);
	ASSERT_EQ(proc_num(&a, "forkstorm 50 _Fork"), 0);
	ASSERT_EQ(proc_num(&a, "forkstorm 50 clone"), 0);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(fork_before_agent_shares)
{
	/* QEMU's -daemonize forks before it maps RAM: the child, with no
	 * agent to inherit, makes its own. */
	const char *img = image(8);
	struct proc a;
	proc_start(&a, NULL);
	long long child = proc_num(&a, "daemonize");
	ASSERT(child > 0 && child != a.pid);
	proc_cmd(&a, "map %u", RAM_PAGES);
	ASSERT(a.base != 0);
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 65536"), hex(fnv_file(img, 0, 65536))) == 0);
	struct proc c = a;
	c.pid = (pid_t)child;
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&c, &s, STATS_WAIT_MS, has_shared), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(status_lists_agent)
{
	const char *img = image(1);
	struct proc a;
	reader_with_mb(&a, img);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "MEMDEDUP_RUN_DIR=%s %s/memdedup status --json", test_dir(), build_dir());
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_shared), 0);
	FILE *f = popen(cmd, "r");
	ASSERT(f);
	char out[8192];
	size_t n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = '\0';
	ASSERT_EQ(pclose(f), 0);
	char want[64];
	snprintf(want, sizeof(want), "\"pid\": %d", (int)a.pid);
	ASSERT(strstr(out, want));
	ASSERT(strstr(out, "\"pages_shared\": 256"));
	ASSERT(strstr(out, "\"kernel_ksm\""));
	ASSERT(strstr(out, "\"daemon\": "));
	/* --agents: the same rows, memdedupd not asked. */
	snprintf(cmd + strlen(cmd), sizeof(cmd) - strlen(cmd), " --agents");
	f = popen(cmd, "r");
	ASSERT(f);
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = '\0';
	ASSERT_EQ(pclose(f), 0);
	ASSERT(strstr(out, want) && strstr(out, "\"pages_shared\": 256") && !strstr(out, "\"daemon\""));
	proc_stop(&a);
	/* The agent's file goes with it. */
	FILE *g = popen(cmd, "r");
	ASSERT(g);
	n = fread(out, 1, sizeof(out) - 1, g);
	out[n] = '\0';
	ASSERT_EQ(pclose(g), 0);
	ASSERT(strstr(out, "\"agents\""));	/* a document, without it */
	ASSERT(!strstr(out, want));
	return 0;
}

/* The VmFlags of the mapping holding base+doff in p, from /proc/PID/smaps. */
static void vm_flags(struct proc *p, size_t doff, char *out, size_t size)
{
	char path[64], line[500];
	uintptr_t want = p->base + doff;
	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)p->pid);
	FILE *f = fopen(path, "r");
	ASSERT(f);
	int in = 0;
	out[0] = '\0';
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = want >= lo && want < hi;
		else if (in && strncmp(line, "VmFlags:", 8) == 0)
			snprintf(out, size, "%s", line + 8);
	}
	fclose(f);
}

static int advice_flushed(const md_stats *s) { return s->pages_shared > 0; }

/* The mapping at doff in p's RAM marked MADV_DONTFORK ("dc") within 10 s:
 * the agent flushes the advice in its once-a-second pass. */
static int advised_dontfork(struct proc *p, size_t doff)
{
	char flags[512];
	for (int i = 0; i < 100; i++) {
		if (i)
			usleep(100000);
		vm_flags(p, doff, flags, sizeof(flags));
		if (strstr(flags, " dc"))
			return 1;
	}
	return 0;
}

TEST_IMPL(advice_reaches_new_mappings)
{
	/* QEMU marks guest RAM MADV_DONTFORK; pages mapped at read time get
	 * it too (within a second, off the I/O path). */
	const char *img = image(10);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontfork", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, advice_flushed), 0);
	ASSERT(advised_dontfork(&a, MB));	/* by a later accounting pass */
	ASSERT(proc_page_from_file(&a, MB));
	proc_stop(&a);
	/* Advised before MADV_MERGEABLE (a memory backend's order): known
	 * all the same. */
	fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontfork", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u mergeable", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	ASSERT(proc_page_from_file(&a, MB));
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, advice_flushed), 0);
	ASSERT(advised_dontfork(&a, MB));
	/* A fork right after a read (before the once-a-second flush) gets
	 * the advice first: the child has no copy of the new mapping (a
	 * copy-on-write view of it, with O_DIRECT reads in flight, could
	 * take a read's data from the parent). */
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, 2 * MB), 65536);
	ASSERT(strcmp(proc_cmd(&a, "forkmapped %u", 2 * MB), "unmapped") == 0);
	proc_stop(&a);
	return 0;
}

/* RAM the VMM takes out of merging (MADV_UNMERGEABLE, as before a moving
 * mremap or its own userfaultfd) right after a read mapped pages there,
 * before the once-a-second flush: the mappings stay, and get the advice
 * owed to them (a fork child had a copy of them, O_DIRECT reads in flight
 * included). */
TEST_IMPL(advice_given_before_unregister)
{
	const char *img = image(10);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontfork", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	ASSERT_EQ(proc_num(&a, "advise %u 65536 unmergeable", MB), 0);
	char flags[512];
	vm_flags(&a, MB, flags, sizeof(flags));
	ASSERT(strstr(flags, " dc") != NULL);
	proc_stop(&a);
	return 0;
}

/* Advice the VMM takes back (MADV_DOFORK after MADV_DONTFORK) is taken
 * back from the mappings the agent makes after: a read's mapping was not
 * inherited by a fork child (SIGSEGV where the parent's content should
 * be). */
TEST_IMPL(advice_taken_back)
{
	const char *img = image(6);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontfork", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, 2 * MB), 65536);
	ASSERT(proc_page_from_file(&a, 2 * MB));
	ASSERT(strcmp(proc_cmd(&a, "forkmapped %u", 2 * MB), "unmapped") == 0);
	/* Taken back over part (the first 4 MiB): the image's pages mapped
	 * there after are copied by a fork (they kept DONTFORK, and the
	 * child found holes in RAM its VMM lets it have, review). */
	ASSERT_EQ(proc_num(&a, "advise 0 %u dofork", RAM_PAGES * 4096 / 2), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, 2 * MB + 65536), 65536);
	ASSERT(proc_page_from_file(&a, 2 * MB + 65536));
	ASSERT(strcmp(proc_cmd(&a, "forkmapped %u", 2 * MB + 65536), "mapped") == 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dofork", RAM_PAGES * 4096), 0);	/* whole */
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, 3 * MB), 65536);
	ASSERT(proc_page_from_file(&a, 3 * MB));
	ASSERT(strcmp(proc_cmd(&a, "forkmapped %u", 3 * MB), "mapped") == 0);
	/* MADV_DODUMP after MADV_DONTDUMP likewise (a fork gives the
	 * advice owed first): a core dump has the pages read after it. */
	char flags[512];
	ASSERT_EQ(proc_num(&a, "advise 0 %u dontdump", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, 4 * MB), 65536);
	ASSERT(proc_page_from_file(&a, 4 * MB));
	ASSERT(strcmp(proc_cmd(&a, "forkmapped %u", 4 * MB), "mapped") == 0);
	vm_flags(&a, 4 * MB, flags, sizeof(flags));
	ASSERT(strstr(flags, " dd") != NULL);
	ASSERT_EQ(proc_num(&a, "advise 0 %u dodump", RAM_PAGES * 4096), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, 5 * MB), 65536);
	ASSERT(proc_page_from_file(&a, 5 * MB));
	ASSERT(strcmp(proc_cmd(&a, "forkmapped %u", 5 * MB), "mapped") == 0);
	vm_flags(&a, 5 * MB, flags, sizeof(flags));
	ASSERT(strstr(flags, " dd") == NULL);
	proc_stop(&a);
	return 0;
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* Runs a testproc with env (words for env(1)) that maps RAM, so the agent
 * starts, and quits; its stderr goes to errfile. Returns its exit status. */
static int run_testproc(const char *runas, const char *env, const char *errfile)
{
	char cmd[2048], bdir[512];
	if (!realpath(build_dir(), bdir))
		snprintf(bdir, sizeof(bdir), "%s", build_dir());
	const char *first = getenv("MD_TEST_PRELOAD_FIRST");
	snprintf(cmd, sizeof(cmd),
		 "printf 'map 16\\nquit\\n' | %s env LD_PRELOAD=%s%s%s/libmemdedup-preload.so "
		 "MEMDEDUP_KERNEL_KSM=0 %s %s/testproc >/dev/null 2>'%s'",
		 runas, first ? first : "", first ? ":" : "", bdir, env, bdir, errfile);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int cpu_seen(const md_stats *s) { return s->agent_cpu_ns > 0; }
static int zeroes_dropped(const md_stats *s) { return s->zero_pages > 0; }

TEST_IMPL(env_flags_strict)
{
	char log[600], logenv[700];
	snprintf(log, sizeof(log), "%s/flags.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	struct proc a;
	md_stats s;

	/* Disabled, in capitals: no agent, not even a log file. */
	const char *env_true[] = { logenv, "MEMDEDUP_DISABLE=TRUE", NULL };
	proc_start(&a, env_true);
	proc_cmd(&a, "map 16");
	ASSERT_EQ(proc_stats(&a, &s), -ENOENT);
	proc_stop(&a);
	ASSERT(access(log, F_OK) != 0);
	/* MEMDEDUP_DISABLE=false once disabled the agent too. */
	const char *env_false[] = { logenv, "MEMDEDUP_DISABLE=false", NULL };
	proc_start(&a, env_false);
	proc_cmd(&a, "map 16");
	ASSERT_EQ(proc_stats(&a, &s), 0);
	proc_stop(&a);
	ASSERT_EQ(strlen(file_text(log)), 0);
	/* A word it does not know is said, once, and the default applies. */
	const char *env_bad[] = { logenv, "MEMDEDUP_DISABLE=maybe", NULL };
	proc_start(&a, env_bad);
	proc_cmd(&a, "map 16");
	proc_cmd(&a, "map 16");
	ASSERT_EQ(proc_stats(&a, &s), 0);
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "MEMDEDUP_DISABLE='maybe' is not one of 1, on, yes, true, 0, off, no, false"));
	ASSERT_EQ(count_lines(file_text(log)), 1);

	/* MEMDEDUP_SCAN=false once turned scanning on. */
	const char *env_noscan[] = { "MEMDEDUP_SCAN=false", "MEMDEDUP_DOMAIN=private", NULL };
	proc_start(&a, env_noscan);
	proc_cmd(&a, "map 16");
	ASSERT(strcmp(proc_cmd(&a, "zero 0 16"), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, cpu_seen), 0);
	usleep(1500000);	/* more of the agent's seconds */
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_scanned, 0);
	ASSERT_EQ(s.zero_pages, 0);
	proc_stop(&a);
	const char *env_scan[] = { "MEMDEDUP_SCAN=Yes", "MEMDEDUP_DOMAIN=private", NULL };
	proc_start(&a, env_scan);
	proc_cmd(&a, "map 16");
	ASSERT(strcmp(proc_cmd(&a, "zero 0 16"), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, zeroes_dropped), 0);
	proc_stop(&a);
	return 0;
}

TEST_IMPL(env_numbers_strict)
{
	/* MEMDEDUP_MAX_VMAS=1x once meant a budget of 1 (nothing shared),
	 * -1 no budget at all: each is said and the default budget applies. */
	const char *img = image(11);
	const char *bad[] = { "1x", "-1", " 5", "+5", "0", "4294967297" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char log[600], logenv[700], vmas[64], want[128];
		snprintf(log, sizeof(log), "%s/numbers-%zu.log", test_dir(), i);
		snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
		snprintf(vmas, sizeof(vmas), "MEMDEDUP_MAX_VMAS=%s", bad[i]);
		const char *env[] = { logenv, vmas, NULL };
		struct proc a;
		int fd = start_reader(&a, img, env);
		ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
		md_stats s;
		ASSERT_EQ(proc_stats(&a, &s), 0);
		ASSERT_EQ(s.pages_shared_at_read, 16);
		ASSERT_EQ(s.fallbacks[MD_FB_VMA_LIMIT], 0);
		proc_stop(&a);
		snprintf(want, sizeof(want), "MEMDEDUP_MAX_VMAS='%s' is not a number from 1 to", bad[i]);
		ASSERT(strstr(file_text(log), want));
		ASSERT_EQ(count_lines(file_text(log)), 1);
	}
	/* The scanner's numbers take the same digits-only parser as the CLI. */
	char log[600], logenv[700];
	snprintf(log, sizeof(log), "%s/numbers-scan.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	const char *env[] = { logenv, "MEMDEDUP_SCAN=1", "MEMDEDUP_DOMAIN=private",
			      "MEMDEDUP_PAGES_TO_SCAN=+32", "MEMDEDUP_CPU_PERCENT= 50", NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 16");
	proc_stop(&a);
	ASSERT(strstr(file_text(log), "MEMDEDUP_PAGES_TO_SCAN='+32' is not a number from 1 to 100000"));
	ASSERT(strstr(file_text(log), "MEMDEDUP_CPU_PERCENT=' 50' is not a number from 1 to 100"));
	return 0;
}

TEST_IMPL(env_bad_order_and_log_said)
{
	char log[600], env[1400], err[600];
	snprintf(log, sizeof(log), "%s/order.log", test_dir());
	snprintf(err, sizeof(err), "%s/order.err", test_dir());
	snprintf(env, sizeof(env), "MEMDEDUP_RUN_DIR='%s' MEMDEDUP_LOG='%s' MEMDEDUP_SCAN_ORDER=rand",
		 test_dir(), log);
	ASSERT_EQ(run_testproc("", env, err), 0);
	ASSERT(strstr(file_text(log), "MEMDEDUP_SCAN_ORDER='rand' is neither linear nor random: using the default"));
	/* A log that cannot be opened is said on stderr, once. */
	snprintf(env, sizeof(env), "MEMDEDUP_RUN_DIR='%s' MEMDEDUP_LOG='%s/no-such-dir/x.log'",
		 test_dir(), test_dir());
	ASSERT_EQ(run_testproc("", env, err), 0);
	const char *said = file_text(err);
	ASSERT(strstr(said, "cannot open MEMDEDUP_LOG='"));
	ASSERT(strstr(said, "/no-such-dir/x.log' (No such file or directory): logging to stderr"));
	ASSERT_EQ(count_lines(said), 1);
	/* A FIFO nobody reads: said the same way, not waited on for ever. */
	char fifo[700];
	snprintf(fifo, sizeof(fifo), "%s/log.fifo", test_dir());
	ASSERT(mkfifo(fifo, 0600) == 0);
	snprintf(env, sizeof(env), "MEMDEDUP_RUN_DIR='%s' MEMDEDUP_LOG='%s'", test_dir(), fifo);
	ASSERT_EQ(run_testproc("timeout 20", env, err), 0);
	ASSERT(strstr(file_text(err), "log.fifo' (No such device or address): logging to stderr"));
	return 0;
}

TEST_IMPL(scan_off_says_why)
{
	/* An unprivileged user under vm.unprivileged_userfaultfd=0, without
	 * access to /dev/userfaultfd: the syscall fails with EPERM, the
	 * device with EACCES, and the log says what to do. */
	const char *why = uffd_open_to_nobody();
	if (why)
		SKIP("%s", why);
	if (system("command -v setpriv >/dev/null") != 0)
		SKIP("no setpriv");
	char dir[] = "/tmp/memdedup-uffd-XXXXXX", env[1400], log[600], err[600], cmd[700];
	ASSERT(mkdtemp(dir));
	ASSERT(chmod(dir, 0777) == 0);
	snprintf(log, sizeof(log), "%s/log", dir);
	snprintf(err, sizeof(err), "%s/err", dir);
	snprintf(env, sizeof(env), "MEMDEDUP_RUN_DIR=%s MEMDEDUP_LOG=%s MEMDEDUP_SCAN=1 MEMDEDUP_DOMAIN=private",
		 dir, log);
	int r = run_testproc("setpriv --reuid=65534 --regid=65534 --clear-groups", env, err);
	char said[4096];
	snprintf(said, sizeof(said), "%s", file_text(log));
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ASSERT(system(cmd) == 0);
	ASSERT_EQ(r, 0);
	ASSERT(strstr(said, "content scanning is off: Permission denied (userfaultfd unavailable: "
			    "set the sysctl vm.unprivileged_userfaultfd=1, or give this user read-write "
			    "access to /dev/userfaultfd)"));
	return 0;
}

TEST_IMPL(stats_dir_too_long)
{
	/* A run dir of nearly PATH_MAX bytes: directories of 200 bytes each,
	 * made one by one (the agent once cut the path at 200 bytes and made
	 * the cut directory, stats file and all). */
	static char base[4200];
	char comp[201];
	memset(comp, 'd', 200);
	comp[200] = '\0';
	snprintf(base, sizeof(base), "%s", test_dir());
	while (strlen(base) + 201 + 32 < PATH_MAX) {
		snprintf(base + strlen(base), sizeof(base) - strlen(base), "/%s", comp);
		ASSERT(mkdir(base, 0755) == 0);
	}
	/* Long, but the stats file's path fits: it is made. */
	const char *img = image(12);
	char run[4600], runenv[4700], log[600], logenv[700];
	snprintf(log, sizeof(log), "%s/longdir.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	snprintf(run, sizeof(run), "%s/run", base);
	snprintf(runenv, sizeof(runenv), "MEMDEDUP_RUN_DIR=%s", run);
	const char *env[] = { logenv, runenv, NULL };
	struct proc a;
	proc_start(&a, env);
	proc_cmd(&a, "map 16");
	char path[4800];
	snprintf(path, sizeof(path), "%s/agent-%d.stats", run, (int)a.pid);
	ASSERT(access(path, F_OK) == 0);
	proc_stop(&a);
	ASSERT_EQ(strlen(file_text(log)), 0);

	/* Too long: no statistics file, said once; the agent runs. */
	snprintf(run, sizeof(run), "%s/%.300s", base,
		 "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr"
		 "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr"
		 "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr");
	ASSERT(strlen(run) > 4096);
	snprintf(runenv, sizeof(runenv), "MEMDEDUP_RUN_DIR=%s", run);
	int fd = start_reader(&a, img, env);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(proc_page_from_file(&a, 0));
	proc_stop(&a);
	/* Nothing was made beside the directory that fitted: no cut path. */
	char ls[4400];
	snprintf(ls, sizeof(ls), "ls -A '%s' | grep -qvx run", base);
	ASSERT(system(ls) != 0);
	ASSERT(strstr(file_text(log), "no statistics file: the run directory "));
	ASSERT(strstr(file_text(log), "is too long"));
	ASSERT_EQ(count_lines(file_text(log)), 1);
	return 0;
}

/* The bounds of md_agent_new's options and the other calls' arguments,
 * beyond agent_api_rejects: each tunable at its maximum is taken (they are
 * memdedup set's ranges), image_idle_s past its own refused, and NULLs, a
 * range that wraps past the end of the address space and unknown advice
 * bits are -EINVAL, not a crash or a call that goes on. */
TEST_IMPL(agent_api_bounds)
{
	md_agent *a;
	const md_agent_options good[] = {
		{ .run_dir = "", .domain = "private", .flags = MD_OPT_SCAN, .pages_to_scan = MD_PAGES_TO_SCAN_MAX },
		{ .run_dir = "", .domain = "private", .flags = MD_OPT_SCAN, .sleep_ms = MD_SLEEP_MS_MAX },
		{ .run_dir = "", .domain = "private", .flags = MD_OPT_SCAN, .cpu_percent = MD_CPU_PERCENT_MAX },
		{ .run_dir = "", .domain = "private", .flags = MD_OPT_SCAN, .hint_ratio = MD_HINT_RATIO_MAX },
		{ .run_dir = "", .image_idle_s = MD_IMAGE_IDLE_S_MAX },
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ASSERT_EQ(md_agent_new(&a, &good[i]), 0);
		md_agent_free(a);
	}
	md_agent_options o = { .run_dir = "", .image_idle_s = MD_IMAGE_IDLE_S_MAX + 1 };
	ASSERT_EQ(md_agent_new(&a, &o), -EINVAL);
	o.image_idle_s = 0;
	ASSERT_EQ(md_agent_new(NULL, &o), -EINVAL);
	ASSERT_EQ(md_agent_new(&a, &o), 0);	/* none of those was left claimed */
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, NULL), -EINVAL);
	ASSERT_EQ(md_agent_stats(NULL, &s), -EINVAL);
	char *mem = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(mem != MAP_FAILED);
	ASSERT_EQ(md_agent_register(NULL, mem, 4096, 0), -EINVAL);
	size_t wraps = (size_t)0 - 4096;	/* page-aligned, mem + wraps < mem */
	ASSERT_EQ(md_agent_register(a, mem, wraps, 0), -EINVAL);
	ASSERT_EQ(md_agent_unregister(a, mem, wraps), -EINVAL);
	ASSERT_EQ(md_agent_forget(a, mem, wraps), -EINVAL);
	ASSERT_EQ(md_agent_advise(a, mem, wraps, MD_ADV_DONTDUMP), -EINVAL);
	ASSERT_EQ(md_agent_discard(a, mem, wraps), -EINVAL);
	ASSERT_EQ(md_agent_register(a, mem, 16 * 4096, 0), 0);
	ASSERT_EQ(md_agent_advise(a, mem, 4096, 1u << 20), -EINVAL);
	ASSERT_EQ(md_agent_advise(NULL, mem, 4096, MD_ADV_DONTDUMP), -EINVAL);
	ASSERT_EQ(md_agent_advise(a, mem, 4096, MD_ADV_DONTDUMP), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 1);
	ASSERT_EQ(s.registered_bytes, 16 * 4096);
	md_agent_free(a);
	munmap(mem, 16 * 4096);
	return 0;
}

/* An agent of this process with RAM of 96 pages, two regions registered
 * ([0, 32) and [64, 96): the VMM's own memory between), and a 16-page
 * image open in *fd, read (shared at read time) into pages 0..15 and
 * 80..95, with pages 64..79 the guest's own, written. */
static char *two_regions_read(md_agent **a, int *fd, char *img, size_t size)
{
	snprintf(img, size, "%s/two-regions.img", test_dir());
	make_image(img, 16 * 4096, 41);
	*fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(*fd >= 0);
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	char *m = mmap(NULL, 96 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(*a, m, 32 * 4096, 0), 0);
	ASSERT_EQ(md_agent_register(*a, m + 64 * 4096, 32 * 4096, 0), 0);
	memset(m + 64 * 4096, 7, 16 * 4096);
	ASSERT_EQ(md_agent_pread(*a, *fd, m, 16 * 4096, 0), 16 * 4096);
	ASSERT_EQ(md_agent_pread(*a, *fd, m + 80 * 4096, 16 * 4096, 0), 16 * 4096);
	md_stats s;
	ASSERT_EQ(md_agent_stats(*a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 32);
	return m;
}

/* md_agent_stats refreshes the "now" counters itself (its manual says so),
 * over every region, each page by its own pagemap entry: a write a moment
 * before is counted, in the second region too, and the guest's own pages
 * before the shared ones in a walk's chunk are not taken for breaks. */
TEST_IMPL(stats_now_counts_every_region)
{
	md_agent *a;
	int fd;
	char img[512];
	char *m = two_regions_read(&a, &fd, img, sizeof(img));
	md_stats s;
	/* Three times, each write counted at once: not the agent thread's
	 * walk, a second apart, that happened to fall in between. */
	for (int k = 1; k <= 3; k++) {
		m[(80 + 4 * k) * 4096 + 5] = 1;
		ASSERT_EQ(md_agent_stats(a, &s), 0);
		ASSERT_EQ(s.breaks, k);
		ASSERT_EQ(s.pages_shared, 32 - k);
	}
	md_agent_free(a);
	munmap(m, 96 * 4096);
	close(fd);
	return 0;
}

/* md_agent_free makes the pages shared at read time private before it
 * gives the leases up: a writer of the image after it must not change what
 * the guest's RAM shows (it did for the pages not touched since the read,
 * which a private file mapping reads from the page cache). */
TEST_IMPL(agent_free_keeps_read_content)
{
	md_agent *a;
	int fd;
	char img[512];
	char *m = two_regions_read(&a, &fd, img, sizeof(img));
	static char was[2][4096];
	ASSERT_EQ(pread(fd, was[0], 4096, 3 * 4096), 4096);
	ASSERT_EQ(pread(fd, was[1], 4096, 9 * 4096), 4096);
	md_agent_free(a);
	ASSERT_EQ(fds_naming(getpid(), img), 1);	/* ours: the agent's went with it, its lease too */
	int w = open(img, O_WRONLY | O_CLOEXEC);
	ASSERT(w >= 0);
	char junk[4096];
	memset(junk, 0x5a, sizeof(junk));
	ASSERT_EQ(pwrite(w, junk, sizeof(junk), 3 * 4096), 4096);
	ASSERT_EQ(pwrite(w, junk, sizeof(junk), 9 * 4096), 4096);
	close(w);
	ASSERT_EQ(memcmp(m + 3 * 4096, was[0], 4096), 0);
	ASSERT_EQ(memcmp(m + 83 * 4096, was[0], 4096), 0);
	ASSERT_EQ(memcmp(m + 9 * 4096, was[1], 4096), 0);
	ASSERT_EQ(memcmp(m + 89 * 4096, was[1], 4096), 0);
	munmap(m, 96 * 4096);
	close(fd);
	return 0;
}

/* md_agent_free wakes the agent's thread, which waits a second between
 * its passes: the VMM's exit or its unplug of the agent does not wait. */
TEST_IMPL(agent_free_wakes_thread)
{
	md_agent_options o = { .run_dir = "" };
	md_agent *a;
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	usleep(200000);	/* its first pass over, the thread waits */
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	md_agent_free(a);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("  freed in %.3f s\n", s);
	ASSERT(s < 0.4);	/* not the rest of the thread's second */
	return 0;
}

static int ours_has(md_agent *a, uintptr_t p)
{
	return !md__ours_none(a, p, p + 4096);
}

/* The set of ranges calls must take the agent's lock for covers what was
 * given up to the VMM's userfaultfd (its munmap must reach handed_take) and
 * the engine's regions (one it could not let go), not only the regions. */
TEST_IMPL(ours_set_covers_handed_and_engine)
{
	md_agent *a = calloc(1, sizeof(*a));
	ASSERT(a);
	struct md__handed h = { .start = 0x5000000, .end = 0x5004000 };
	a->handed = &h;
	a->nhanded = 1;
	md__ours_refresh(a);
	ASSERT(ours_has(a, 0x5000000) && ours_has(a, 0x5003000));
	ASSERT(!ours_has(a, 0x5004000));
	struct md__engine *en = calloc(1, sizeof(*en));
	ASSERT(en);
	ASSERT_EQ(pthread_rwlock_init(&en->regions_lock, NULL), 0);
	struct md__eregion r = { .start = 0x6000000, .end = 0x6010000 };
	en->regions = &r;
	en->nregions = 1;
	a->engine = en;
	md__ours_refresh(a);
	ASSERT(ours_has(a, 0x6000000) && ours_has(a, 0x600f000) && ours_has(a, 0x5000000));
	ASSERT(!ours_has(a, 0x6010000));
	pthread_rwlock_destroy(&en->regions_lock);
	free(en);
	free(a);
	return 0;
}

struct grow_arg {
	md_agent *a;
	uintptr_t s, e;
	int done;
};

static void *grow_thread(void *p)
{
	struct grow_arg *g = p;
	md__ours_grow(g->a, g->s, g->e);
	__atomic_store_n(&g->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* 1 if g's grow has not returned, looked at for 200 ms (a grow that does
 * not wait is done in microseconds). */
static int grow_waiting(const struct grow_arg *g)
{
	for (int i = 0; i < 100; i++, usleep(2000))
		if (__atomic_load_n(&g->done, __ATOMIC_ACQUIRE))
			return 0;
	return 1;
}

/* A call that went to the kernel plainly (the range none of ours when it
 * looked) is over before md__ours_grow returns: the agent acts on the new
 * range only then, or an munmap or a discard lands behind its back. */
TEST_IMPL(ours_grow_waits_for_plain_calls)
{
	md_agent *a = calloc(1, sizeof(*a));
	ASSERT(a);
	unsigned token;
	/* A range already in the set, which the grow takes further down. */
	md__ours_grow(a, 0x7001000, 0x7002000);
	ASSERT(md__ours_begin(&a->ours, 0x7000000, 0x7001000, &token));	/* plain */
	struct grow_arg g = { a, 0x7000000, 0x7002000, 0 };
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, grow_thread, &g), 0);
	ASSERT(grow_waiting(&g));	/* as long as the call is under way */
	md__ours_end(&a->ours, token);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT(g.done);
	ASSERT(ours_has(a, 0x7000000));	/* a call now takes the lock */

	/* A call that read the epoch before the last grow flipped it, and
	 * counted itself only after that grow's wait: the next grow waits
	 * for it all the same. */
	unsigned late = (__atomic_load_n(&a->ours.epoch, __ATOMIC_RELAXED) & 1) ^ 1;
	__atomic_add_fetch(&a->ours.plain[late], 1, __ATOMIC_SEQ_CST);
	g = (struct grow_arg){ a, 0x7100000, 0x7101000, 0 };
	ASSERT_EQ(pthread_create(&t, NULL, grow_thread, &g), 0);
	ASSERT(grow_waiting(&g));
	md__ours_end(&a->ours, late);
	ASSERT_EQ(pthread_join(t, NULL), 0);

	/* A call begun once the grow published its set is not waited for
	 * (a stream of them would hold the agent's lock for good): the grow
	 * ends with the call begun before it. */
	ASSERT(md__ours_begin(&a->ours, 0x7200000, 0x7201000, &token));
	g = (struct grow_arg){ a, 0x7300000, 0x7301000, 0 };
	ASSERT_EQ(pthread_create(&t, NULL, grow_thread, &g), 0);
	for (int i = 0; i < 1000 && (__atomic_load_n(&a->ours.epoch, __ATOMIC_ACQUIRE) & 1) == token; i++)
		usleep(1000);	/* until it flipped the epoch, which a new call counts in */
	unsigned later;
	ASSERT(md__ours_begin(&a->ours, 0x7400000, 0x7401000, &later));
	md__ours_end(&a->ours, token);
	for (int i = 0; i < 2000 && !__atomic_load_n(&g.done, __ATOMIC_ACQUIRE); i++)
		usleep(1000);
	ASSERT(__atomic_load_n(&g.done, __ATOMIC_ACQUIRE));
	md__ours_end(&a->ours, later);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	free(a);
	return 0;
}

/* max_vmas 0 takes three quarters of vm.max_map_count: the rest is the
 * VMM's own, whose mmaps must not fail for our mappings. */
TEST_IMPL(agent_default_vma_budget_leaves_vmm_a_quarter)
{
	char buf[32] = "";
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT(read(fd, buf, sizeof(buf) - 1) > 0);
	close(fd);
	uint64_t max = strtoull(buf, NULL, 10);
	ASSERT(max > 0);
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(a->max_vmas, max / 4 * 3);
	md_agent_free(a);
	o.max_vmas = 1234;
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(a->max_vmas, 1234);
	md_agent_free(a);
	return 0;
}

/* Where vm.max_map_count cannot be read (here /dev/null over it, in a
 * mount namespace of the test's own) the budget is still three quarters
 * of a map count, the kernel's default (65530, about 64 Ki): not 0, which
 * would leave the agent no mapping of its own, nor all of it. */
TEST_IMPL(agent_default_vma_budget_without_max_map_count)
{
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		SKIP("cannot make a mount namespace here");
	if (mount("/dev/null", "/proc/sys/vm/max_map_count", NULL, MS_BIND, NULL) != 0)
		SKIP("cannot mount over /proc/sys/vm/max_map_count here");
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(a->max_vmas, 65536 / 4 * 3);
	md_agent_free(a);
	return 0;
}

/* A statistics file whose path is PATH_MAX bytes long, its NUL with it,
 * does not fit: no file (snprintf cut it one byte short, and the agent made
 * "agent-PID.stat"); one byte shorter fits, and is made. */
TEST_IMPL(stats_file_path_at_limit)
{
	static char dir[PATH_MAX + 64], name[64];
	char comp[201];
	int n = snprintf(name, sizeof(name), "/agent-%d.stats", (int)getpid());
	memset(comp, 'd', 200);
	comp[200] = '\0';
	snprintf(dir, sizeof(dir), "%s", test_dir());
	while (strlen(dir) + 201 + (size_t)n + 20 < PATH_MAX) {
		snprintf(dir + strlen(dir), sizeof(dir) - strlen(dir), "/%s", comp);
		ASSERT(mkdir(dir, 0755) == 0);
	}
	size_t base = strlen(dir);
	for (int fits = 0; fits < 2; fits++) {
		/* The last directory's name: the stats file's path PATH_MAX
		 * bytes long, then PATH_MAX - 1. */
		size_t last = PATH_MAX - fits - (size_t)n - base - 1;
		dir[base] = '/';
		memset(dir + base + 1, fits ? 'f' : 'e', last);
		dir[base + 1 + last] = '\0';
		ASSERT_EQ(strlen(dir) + (size_t)n, (size_t)PATH_MAX - fits);
		md_agent *a;
		md_agent_options o = { .run_dir = dir };
		ASSERT_EQ(md_agent_new(&a, &o), 0);
		char path[sizeof(dir) + sizeof(name)];
		snprintf(path, sizeof(path), "%s%s", dir, name);
		path[PATH_MAX - 1] = '\0';	/* the longest a path can be */
		int made = access(path, F_OK) == 0;
		md_agent_free(a);
		/* Nothing made where it does not fit, not even cut short. */
		ASSERT_EQ(made, fits);
		if (!fits) {
			DIR *d = opendir(dir);
			if (d) {
				struct dirent *e;
				while ((e = readdir(d)))
					ASSERT(strncmp(e->d_name, "agent-", 6) != 0);
				closedir(d);
			}
		}
	}
	return 0;
}

/* Memory a userfaultfd of the VMM's registered before it asked for
 * merging is refused with -EBUSY, as the manual says (the check's own
 * "foreign" answer is 1: a VMM testing for < 0 would take that for done),
 * and no region is made there. */
TEST_IMPL(agent_register_over_vmm_userfault_busy)
{
	int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (u < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		u = dev < 0 ? -1 : ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		if (dev >= 0)
			close(dev);
	}
	if (u < 0)
		SKIP("no userfaultfd here");
	struct uffdio_api api = { .api = UFFD_API };
	ASSERT_EQ(ioctl(u, UFFDIO_API, &api), 0);
	char *mem = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(mem != MAP_FAILED);
	struct uffdio_register reg = { .range = { (uintptr_t)mem, 8 * 4096 }, .mode = UFFDIO_REGISTER_MODE_MISSING };
	ASSERT_EQ(ioctl(u, UFFDIO_REGISTER, &reg), 0);
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(md_agent_register(a, mem, 16 * 4096, 0), -EBUSY);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 0);
	ASSERT_EQ(md_agent_register(a, mem + 8 * 4096, 8 * 4096, 0), 0);	/* beside it: ours */
	md_agent_free(a);
	close(u);
	munmap(mem, 16 * 4096);
	return 0;
}

/* A new agent (no statistics file) and len bytes of anonymous memory, not
 * registered. */
static char *agent_and_ram(md_agent **a, size_t len)
{
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(a, &o), 0);
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	return m;
}

/* The bytes a has registered now (md_agent_stats). */
static uint64_t registered_bytes(md_agent *a)
{
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	return s.registered_bytes;
}

/* After mlockall(MCL_FUTURE) (md__agent_lock_future) memory that is not
 * locked itself is refused too: every mapping the agent would make there
 * is locked, a private copy at once. Registered again once the VMM gives
 * the future lock up. */
TEST_IMPL(agent_register_refused_while_future_locked)
{
	const size_t len = 16 * 4096;
	md_agent *a;
	char *m = agent_and_ram(&a, len);
	md__agent_lock_future(a, 1);
	ASSERT_EQ(md_agent_register(a, m, len, 0), -EPERM);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 0);
	md__agent_lock_future(a, 0);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.registered_bytes, len);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* RAM given up to the VMM's userfaultfd that the VMM then locks (mlock) or
 * protects (mprotect) asks for merging no more: the end of the VMM's
 * registration does not take it back (a mapping of ours there would be a
 * locked private copy, or writable behind the VMM's back). */
TEST_IMPL(handed_ram_locked_or_protected_not_taken_back)
{
	const size_t len = 16 * 4096;
	md_agent *a;
	char *m = agent_and_ram(&a, 2 * len);
	ASSERT_EQ(md_agent_register(a, m, 2 * len, 0), 0);
	ASSERT_EQ(md_agent_userfault(a, m, 2 * len), 1);	/* the VMM's now */
	ASSERT_EQ(md__agent_lock(a, (uintptr_t)m, (uintptr_t)m + len, 0), 0);
	ASSERT_EQ(md__agent_protect(a, (uintptr_t)m + len, (uintptr_t)m + 2 * len), 0);
	ASSERT_EQ(md_agent_userfault_end(a, m, 2 * len), 0);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 0);
	ASSERT_EQ(s.registered_bytes, 0);
	md_agent_free(a);
	munmap(m, 2 * len);
	return 0;
}

/* Advice the VMM gives RAM its userfaultfd holds (MADV_DONTDUMP) is kept
 * for when that RAM is taken back: the region made again has it. */
TEST_IMPL(handed_ram_taken_back_with_advice_given_meanwhile)
{
	const size_t len = 16 * 4096;
	md_agent *a;
	char *m = agent_and_ram(&a, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(md_agent_userfault(a, m, len), 1);
	ASSERT_EQ(md_agent_advise(a, m, len, MD_ADV_DONTDUMP), 0);
	ASSERT_EQ(md_agent_userfault_end(a, m, len), 0);
	struct md__registered *v;
	size_t n;
	ASSERT_EQ(md__agent_registered(a, (uintptr_t)m, (uintptr_t)m + len, &v, &n), 0);
	ASSERT_EQ(n, 1);
	ASSERT_EQ(v[0].hi - v[0].lo, len);
	ASSERT(v[0].advice & MD_ADV_DONTDUMP);
	free(v);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* The VMM's registration refused (md__agent_userfault_undo) after another
 * of its threads made the RAM unmergeable meanwhile: that RAM is not
 * registered again, as a merged page would be where the VMM asked for
 * none. */
TEST_IMPL(handed_ram_refused_after_unmergeable_stays_unregistered)
{
	const size_t len = 16 * 4096;
	md_agent *a;
	char *m = agent_and_ram(&a, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(md_agent_userfault(a, m, len), 1);
	ASSERT_EQ(md_agent_unregister(a, m, len), 0);	/* MADV_UNMERGEABLE */
	md__agent_userfault_undo(a, EBUSY);
	ASSERT_EQ(registered_bytes(a), 0);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* The VMM's userfaultfd registered over the second half of a region: only
 * that half is its. The first, made unmergeable and then mergeable again
 * meanwhile, is registered at once, not kept for the VMM's hold to end. */
TEST_IMPL(handed_ram_only_what_vmm_registered)
{
	const size_t len = 16 * 4096;
	md_agent *a;
	char *m = agent_and_ram(&a, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(md_agent_userfault(a, m + len / 2, len / 2), 1);
	ASSERT_EQ(md_agent_unregister(a, m, len / 2), 0);
	ASSERT_EQ(md_agent_register(a, m, len / 2, 0), 0);
	ASSERT_EQ(registered_bytes(a), len / 2);
	ASSERT_EQ(md_agent_userfault_end(a, m + len / 2, len / 2), 0);
	ASSERT_EQ(registered_bytes(a), len);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* RAM given up to the VMM's userfaultfd and then forgotten (the VMM
 * unmapped it behind the preload library's back, md_agent_forget),
 * unmapped or cut off by a shrink loses the VMM's hold too: the end of the
 * VMM's registration must not take back what is mapped there since,
 * memory that never asked for merging. And a handover of memory none of
 * ours gives nothing up: 0. */
TEST_IMPL(agent_forget_drops_vmm_hold)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	const size_t len = 16 * 4096;
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	char *other = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(other != MAP_FAILED);
	ASSERT_EQ(md_agent_userfault(a, other, len), 0);	/* none of ours */
	ASSERT_EQ(md_agent_userfault_end(a, other, len), 0);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	ASSERT_EQ(md_agent_userfault(a, m, len), 1);	/* given up: the VMM's now */
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 0);
	ASSERT_EQ(md_agent_forget(a, m + 4 * 4096, 4 * 4096), 0);
	ASSERT(mmap(m + 4 * 4096, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		    -1, 0) == m + 4 * 4096);	/* the allocator's now */
	/* The same for RAM unmapped through the agent (md_agent_unmap). */
	ASSERT_EQ(md_agent_unmap(a, m + 10 * 4096, 2 * 4096), 0);
	ASSERT(mmap(m + 10 * 4096, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		    -1, 0) == m + 10 * 4096);
	/* And for RAM cut off by a shrink in place (mremap, md__agent_moved). */
	ASSERT(mremap(m, len, len - 2 * 4096, 0) == m);
	md__agent_moved(a, m, len, m, len - 2 * 4096, 0);
	ASSERT(mmap(m + 14 * 4096, 2 * 4096, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == m + 14 * 4096);
	ASSERT_EQ(md_agent_userfault_end(a, m, len), 0);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.registered_bytes, len - 8 * 4096);	/* the rest taken back */
	md__agent_enter(a);
	int taken = md__region_find(a, (uintptr_t)m + 4 * 4096, 4096) != NULL ||
		    md__region_find(a, (uintptr_t)m + 10 * 4096, 4096) != NULL ||
		    md__region_find(a, (uintptr_t)m + 14 * 4096, 4096) != NULL;
	md__agent_leave(a);
	ASSERT(!taken);
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.regions, 3);
	md_agent_free(a);
	munmap(m, len);
	munmap(other, len);
	return 0;
}

/* A handover the agent cannot make (its copies refused, here with EINVAL)
 * fails the VMM's registration with EIO, not EINVAL: the preload library
 * takes -EINVAL for arguments only the kernel judges and lets the VMM's
 * call go on, over RAM still the agent's. That RAM stays registered, and
 * nothing is the VMM's to let go. */
TEST_IMPL(agent_userfault_failed_not_einval)
{
	const size_t len = 16 * 4096;
	md_agent *a;
	char *m = agent_and_ram(&a, len);
	ASSERT_EQ(md_agent_register(a, m, len, 0), 0);
	md__privatize_fail = -EINVAL;
	int r = md_agent_userfault(a, m, len);
	md__privatize_fail = 0;
	ASSERT_EQ(r, -EIO);
	ASSERT_EQ(registered_bytes(a), len);
	ASSERT_EQ(a->nhanded, 0);
	md_agent_free(a);
	munmap(m, len);
	return 0;
}

/* md_agent_stats counts the process's mappings now (vmas is a "now"
 * counter, and the read path's budget starts from it), not the agent
 * thread's last count, up to minutes old. */
TEST_IMPL(stats_now_counts_vmas)
{
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	uint64_t before = s.vmas;
	ASSERT(before > 0);
	/* 64 mappings, apart (each one's second page unmapped). */
	static char *maps[64];
	for (int i = 0; i < 64; i++) {
		maps[i] = mmap(NULL, 2 * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ASSERT(maps[i] != MAP_FAILED);
		ASSERT_EQ(munmap(maps[i] + 4096, 4096), 0);
	}
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT(s.vmas >= before + 64);
	for (int i = 0; i < 64; i++)
		munmap(maps[i], 4096);
	md_agent_free(a);
	return 0;
}

/* The statistics file shows the VMM's mappings from the agent's start (the
 * count md_agent_new made before the file was there), not 0 until the
 * thread's first count, up to a minute later for a process not reading. */
TEST_IMPL(stats_file_counts_vmas_from_start)
{
	md_agent *a;
	md_agent_options o = { .run_dir = test_dir() };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	struct proc self = { .pid = getpid() };	/* proc_stats reads its file only */
	md_stats s;
	ASSERT_EQ(proc_stats(&self, &s), 0);
	ASSERT(s.vmas > 0);
	md_agent_free(a);
	return 0;
}

/* The statistics file is claimed safely: a link put at its name is not
 * followed (the agent would truncate and write its target), and a larger
 * file left at the name is cut to the agent's size (its tail would stay,
 * past the counters). */
TEST_IMPL(stats_file_claim_no_link_no_tail)
{
	char dir[512], path[600], target[600];
	snprintf(dir, sizeof(dir), "%s/claim", test_dir());
	ASSERT(mkdir(dir, 0700) == 0);
	snprintf(path, sizeof(path), "%s/agent-%d.stats", dir, (int)getpid());
	snprintf(target, sizeof(target), "%s/precious", test_dir());
	int fd = open(target, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT(fd >= 0 && write(fd, "precious", 8) == 8);
	close(fd);
	ASSERT(symlink(target, path) == 0);
	md_agent *a;
	md_agent_options o = { .run_dir = dir };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	md_agent_free(a);
	struct stat st;
	ASSERT_EQ(stat(target, &st), 0);
	ASSERT_EQ(st.st_size, 8);
	ASSERT_EQ(strcmp(file_text(target), "precious"), 0);
	ASSERT(unlink(path) == 0);
	/* A stale file twice the size. */
	static char junk[2 * sizeof(struct md__stats_file)];
	memset(junk, 0x77, sizeof(junk));
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT(fd >= 0 && write(fd, junk, sizeof(junk)) == (ssize_t)sizeof(junk));
	close(fd);
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	ASSERT_EQ(stat(path, &st), 0);
	ASSERT_EQ(st.st_size, (off_t)sizeof(struct md__stats_file));
	md_agent_free(a);
	return 0;
}

/* A region longer than one chunk of the accounting's walk (4,096 pages):
 * the pages shared past it are counted by their own owners, not the first
 * chunk's. */
TEST_IMPL(stats_now_counts_past_first_chunk)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/chunk.img", test_dir());
	make_image(img, 16 * 4096, 43);
	int fd = open(img, O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	md_agent *a;
	md_agent_options o = { .run_dir = "" };
	ASSERT_EQ(md_agent_new(&a, &o), 0);
	const size_t pages = 4096 + 64;
	char *m = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(m != MAP_FAILED);
	ASSERT_EQ(md_agent_register(a, m, pages * 4096, 0), 0);
	ASSERT_EQ(md_agent_pread(a, fd, m + (4096 + 16) * 4096, 16 * 4096, 0), 16 * 4096);
	m[(4096 + 20) * 4096] = 1;
	md_stats s;
	ASSERT_EQ(md_agent_stats(a, &s), 0);
	ASSERT_EQ(s.pages_shared_at_read, 16);
	ASSERT_EQ(s.breaks, 1);
	ASSERT_EQ(s.pages_shared, 15);
	md_agent_free(a);
	munmap(m, pages * 4096);
	close(fd);
	return 0;
}

/* Guest RAM registered in two overlapping parts, the second all DONTFORK
 * (advice the agent did not see: given before the agent was there): the
 * first part's region took DONTFORK whole, and a fork (with the atfork
 * handlers) left its image pages shared, which the kernel still copied to
 * the child: after a lease break, the child read the writer's bytes (a
 * review's find). The region is marked copied in part now, as a DONTFORK
 * over part of it marks it, and the child reads what it had. */
TEST_IMPL(fork_after_overlapping_registration_keeps_image_pages)
{
	const char *img = image(13);
	char h[20];
	snprintf(h, sizeof(h), "%s", hex(fnv_file(img, 0, 65536)));
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", 8 * MB), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u dontfork", 4 * MB, 4 * MB), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u mergeable", 6 * MB), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(proc_page_from_file(&a, 0));
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, advice_flushed), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 4 * MB, 4 * MB), 0);	/* all DONTFORK */
	forked_then_image_written(&a, img, h);
	proc_stop(&a);
	return 0;
}

/* Guest RAM advised MADV_WIPEONFORK before it asked for merging (advice
 * registration did not read): a read shared at read time put an image's
 * mapping there, which a fork copies as it is, and the child read the
 * image where it reads zeroes. Executable RAM: the mapping put there was
 * not executable. Both are refused now, as the advice or protection given
 * after is (the memory given up), and read as without us (a review's find). */
TEST_IMPL(register_refuses_wipeonfork_and_exec)
{
	const char *img = image(14);
	struct proc a;
	int fd = start_reader(&a, img, NULL);
	ASSERT_EQ(proc_num(&a, "advise 0 %u unmergeable", 2 * MB), 0);
	ASSERT_EQ(proc_num(&a, "wipe 0 %u", MB), 0);
	ASSERT_EQ(proc_num(&a, "advise 0 %u mergeable", MB), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 0 65536", fd), 65536);
	ASSERT(!proc_page_from_file(&a, 0));	/* copied */
	ASSERT(proc_num(&a, "forkkeep") > 0);
	ASSERT(strcmp(proc_cmd(&a, "kid hash 0 65536"), hex(fnv_zero(65536))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "kid quit"), "0") == 0);
	ASSERT_EQ(proc_num(&a, "protect %u %u %d", MB, MB, PROT_READ | PROT_WRITE | PROT_EXEC), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", MB, MB), 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 65536 %u 65536", fd, MB), 65536);
	ASSERT(!proc_page_from_file(&a, MB));
	ASSERT(strcmp(proc_cmd(&a, "perms %u", MB), "rwxp") == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u 65536", MB), hex(fnv_file(img, 0, 65536))) == 0);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.registered_bytes, (uint64_t)RAM_PAGES * 4096 - 2 * MB);	/* neither part */
	proc_stop(&a);
	return 0;
}

/* A break whose deadline comes while a write from guest RAM begun before
 * still holds the image's page (O_DIRECT): the writer is let in, and the
 * write may carry its bytes. That was said, but counted nowhere (a
 * lease break as any other), and the log went on to say the break made
 * every page private (a review's find). Counted as an error fallback now. */
TEST_IMPL(lease_break_deadline_with_write_counted)
{
	if (geteuid() != 0)
		SKIP("needs root: fs.lease-break-time is set");
	char img[512], out[512];
	struct proc a;
	read_fresh_image(&a, img, sizeof(img), "image-deadline-written-from", 13, NULL, NULL);
	if (direct_write_held(&a, out, sizeof(out)) != 0)
		SKIP("no O_DIRECT on the test directory's filesystem");
	md_stats s0, s;
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	int guard = set_until_exit("/proc/sys/fs/lease-break-time", "3");
	ASSERT(guard >= 0);
	pid_t writer = fork();
	ASSERT(writer >= 0);
	if (writer == 0)
		_exit(close(overwrite_image(img, NULL)) == 0 ? 0 : 1);
	int st = 0;
	ASSERT_EQ(waitpid(writer, &st, 0), writer);	/* in at the deadline, the write running */
	close(guard);
	ASSERT_EQ(proc_num(&a, "dwritego"), 2 * 4096);
	ASSERT_EQ(proc_stats_wait(&a, &s, STATS_WAIT_MS, has_lease_break), 0);
	ASSERT_EQ(s.lease_breaks, 1);
	ASSERT(s.fallbacks[MD_FB_ERROR] > s0.fallbacks[MD_FB_ERROR]);
	proc_stop(&a);
	return 0;
}

/* An O_DIRECT pread across two region records (RAM registered in parts)
 * that the kernel refuses whole (a length off the device's blocks: EINVAL
 * before a byte moves) leaves no image page of the first part in guest
 * RAM, as share_locked and the O_DIRECT preadv promise for one record. */
TEST_IMPL(read_direct_across_records_refused_moves_nothing)
{
	const char *img = image(7);
	int k = open(img, O_RDONLY | O_DIRECT);
	if (k < 0)
		SKIP("no O_DIRECT on the test directory's filesystem");
	char *buf = aligned_alloc(4096, 65 * 4096);
	errno = 0;
	ssize_t plain = pread(k, buf, 64 * 4096 + 100, 0);
	int plain_err = errno;
	free(buf);
	close(k);
	if (plain >= 0 || plain_err != EINVAL)
		SKIP("this filesystem's O_DIRECT takes a length off its blocks (%zd)", plain);
	struct proc a;
	int fd = start_direct_reader(&a, img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u unmergeable", 64 * 4096, 64 * 4096), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 64 * 4096, 64 * 4096), 0);
	char before[64];
	snprintf(before, sizeof(before), "%s", proc_cmd(&a, "hash %u %u", 32 * 4096, 32 * 4096));
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u", fd, 64 * 4096 + 100, 32 * 4096), -EINVAL);
	md_stats s;
	ASSERT_EQ(proc_stats(&a, &s), 0);
	printf("  pages_shared_at_read %llu\n", (unsigned long long)s.pages_shared_at_read);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 32 * 4096, 32 * 4096), before) == 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	proc_stop(&a);
	return 0;
}

/* An O_DIRECT read across two region records that the kernel takes (a
 * length of whole 512-byte blocks, not of pages), which goes whole to the
 * kernel, is counted in reads_seen and bytes_read as any read is. */
TEST_IMPL(read_direct_across_records_counted)
{
	const char *img = image(7);
	int k = open(img, O_RDONLY | O_DIRECT);
	if (k < 0)
		SKIP("no O_DIRECT on the test directory's filesystem");
	char *buf = aligned_alloc(4096, 65 * 4096);
	ssize_t plain = pread(k, buf, 64 * 4096 + 512, 0);
	free(buf);
	close(k);
	if (plain != 64 * 4096 + 512)
		SKIP("this filesystem's O_DIRECT refuses 512-byte blocks (%zd)", plain);
	struct proc a;
	int fd = start_direct_reader(&a, img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u unmergeable", 64 * 4096, 64 * 4096), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 64 * 4096, 64 * 4096), 0);
	md_stats s0, s1, s2;
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	/* Within one record: counted. */
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u", fd, 16 * 4096 + 512, 0), 16 * 4096 + 512);
	ASSERT_EQ(proc_stats(&a, &s1), 0);
	/* Across the records at 64 pages: */
	ASSERT_EQ(proc_num(&a, "read %d 0 %u %u", fd, 64 * 4096 + 512, 32 * 4096), 64 * 4096 + 512);
	ASSERT_EQ(proc_stats(&a, &s2), 0);
	printf("  one record: reads_seen +%llu bytes_read +%llu; across: reads_seen +%llu bytes_read +%llu\n",
	       (unsigned long long)(s1.reads_seen - s0.reads_seen), (unsigned long long)(s1.bytes_read - s0.bytes_read),
	       (unsigned long long)(s2.reads_seen - s1.reads_seen), (unsigned long long)(s2.bytes_read - s1.bytes_read));
	ASSERT_EQ(s1.bytes_read - s0.bytes_read, 16 * 4096 + 512);
	ASSERT_EQ(s2.bytes_read - s1.bytes_read, 64 * 4096 + 512);
	ASSERT(s2.reads_seen > s1.reads_seen);
	proc_stop(&a);
	return 0;
}

/* An mremap the kernel refuses before it looks at any mapping
 * (MREMAP_FIXED without MREMAP_MAYMOVE: EINVAL) changes nothing: its
 * pages were all made private for it first (review). */
TEST_IMPL(refused_move_keeps_image_pages)
{
	const char *img = image(6);
	struct proc a;
	reader_with_mb(&a, img);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);	/* faulted in */
	ASSERT(proc_page_is_image(&a, 0, img, 0));
	md_stats s0, s;
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	ASSERT_EQ(proc_num(&a, "badmove 0 %u", RAM_PAGES), -EINVAL);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_privatized, s0.pages_privatized);
	ASSERT(proc_page_is_image(&a, 0, img, 0));	/* still shared, not a copy */
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", MB), hex(fnv_file(img, 0, MB))) == 0);
	proc_stop(&a);
	return 0;
}
