/*
 * census.c - what is left to share in the guest RAM of running VMMs.
 *
 * For each process named, finds its guest RAM (the largest run of adjacent
 * read-write MADV_DONTFORK mappings: QEMU's RAM block, however memdedup or
 * KSM split it into VMAs), reads the frame of every page from /proc/PID/pagemap and its
 * content from /proc/PID/mem, and counts, over all processes together:
 *   - present pages and the frames they use (a frame mapped twice, by two
 *     processes or two addresses, counts once: KSM's pages, memdedup's pool
 *     and image pages),
 *   - the frames an ideal deduplicator would keep: one per distinct
 *     non-zero content, none for zero pages (the kernel's zero page),
 *   - the difference, "left": frames holding a content that another frame
 *     holds too (split into contents seen in one process only and in
 *     several), and zero-filled pages in frames of their own.
 * and, per process, the PSS (/proc/PID/smaps) inside its guest RAM and
 * outside it (the VMM's own memory, and what an agent adds to it).
 * It answers "does memdedup (or KSM) miss duplicates, or is the gap in the
 * fleet's PSS metadata?". Contents are told apart by XXH3-128; this is a
 * measurement, not a merge, so a hash is enough here.
 * With --image FILE, the duplicates left (not zero) are also counted by
 * whether their content is a 4 KiB-aligned page of FILE: a copy of what the
 * guests read from their disk (I/O names it: hints can find it), or not
 * (what the guests computed, or what QEMU copied in without a read: the
 * kernel and initrd of -kernel/-initrd).
 *
 * Usage: census [--image FILE] PID...   (root: pagemap frame numbers need
 * CAP_SYS_ADMIN)
 * Prints one JSON object.
 */
#define XXH_INLINE_ALL
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#define PAGE 4096ul
#define PM_PRESENT (1ull << 63)
#define PM_PFN ((1ull << 55) - 1)

struct entry {
	XXH128_hash_t h;
	uint64_t pfn;
	uint32_t proc;
	uint32_t zero;
};

struct census {
	struct entry *e;
	size_t n, cap;
	uint64_t pages, present, on_zero_pfn;
	uint64_t pss_in_kb, pss_out_kb;
};

/* PSS of pid's mappings inside [start, end) and outside it, in kB. */
static int pss_split(int pid, uintptr_t start, uintptr_t end, uint64_t *in, uint64_t *out)
{
	char path[64], line[512];
	snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	int inside = 0;
	*in = *out = 0;
	while (fgets(line, sizeof(line), f)) {
		uintptr_t s, e;
		unsigned long kb;
		/* A mapping's line starts "start-end "; its fields "Name: ". */
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &s, &e) == 2)
			inside = s >= start && e <= end;
		else if (sscanf(line, "Pss: %lu kB", &kb) == 1)
			*(inside ? in : out) += kb;
	}
	fclose(f);
	return 0;
}

/* The kernel's zero page: what a read fault of untouched anonymous memory maps. */
static uint64_t zero_pfn(void)
{
	volatile char *p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t pm = 0;
	if (p == MAP_FAILED)
		return 0;
	(void)p[0];
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd >= 0 && pread(fd, &pm, sizeof(pm), (off_t)((uintptr_t)p / PAGE * 8)) != sizeof(pm))
		pm = 0;
	if (fd >= 0)
		close(fd);
	munmap((void *)p, PAGE);
	return pm & PM_PRESENT ? pm & PM_PFN : 0;
}

/* pid's guest RAM: the largest run of adjacent read-write mappings that
 * are not copied on fork ("dc" in VmFlags: QEMU advises its RAM blocks
 * MADV_DONTFORK, and memdedup's own mappings over them inherit it), so that
 * a thread stack or heap right beside the RAM is not counted as RAM. */
static int guest_ram(int pid, uintptr_t *start, uintptr_t *end)
{
	char path[64], line[512];
	snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	uintptr_t rs = 0, re = 0, bs = 0, be = 0, s = 0, e = 0;
	int rw = 0;
	while (fgets(line, sizeof(line), f)) {
		char perm[5];
		uintptr_t s1, e1;
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %4s", &s1, &e1, perm) == 3) {
			s = s1;
			e = e1;
			rw = strncmp(perm, "rw-", 3) == 0;
			continue;
		}
		if (strncmp(line, "VmFlags:", 8) != 0)
			continue;
		if (!rw || !strstr(line, " dc")) {
			re = 0;
			continue;
		}
		if (s != re)
			rs = s;
		re = e;
		if (re - rs > be - bs) {
			bs = rs;
			be = re;
		}
	}
	fclose(f);
	*start = bs;
	*end = be;
	return be > bs ? 0 : -ENOENT;
}

static int add_process(struct census *c, int pid, uint32_t proc, uint64_t zpfn)
{
	uintptr_t start = 0, end = 0;
	int err = guest_ram(pid, &start, &end);
	if (err)
		return err;
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	int pm_fd = open(path, O_RDONLY);
	snprintf(path, sizeof(path), "/proc/%d/mem", pid);
	int mem_fd = open(path, O_RDONLY);
	static uint64_t pm[512];
	static unsigned char buf[512 * PAGE];
	err = pm_fd < 0 || mem_fd < 0 ? -errno : 0;
	for (uintptr_t a = start; !err && a < end; a += sizeof(pm) / 8 * PAGE) {
		size_t n = (end - a) / PAGE < 512 ? (end - a) / PAGE : 512;
		if (pread(pm_fd, pm, n * 8, (off_t)(a / PAGE * 8)) != (ssize_t)(n * 8) ||
		    pread(mem_fd, buf, n * PAGE, (off_t)a) != (ssize_t)(n * PAGE)) {
			err = -EIO;
			break;
		}
		c->pages += n;
		for (size_t i = 0; i < n; i++) {
			if (!(pm[i] & PM_PRESENT))
				continue;
			c->present++;
			uint64_t pfn = pm[i] & PM_PFN;
			if (zpfn && pfn == zpfn) {
				c->on_zero_pfn++;
				continue;
			}
			if (c->n == c->cap) {
				size_t cap = c->cap ? c->cap * 2 : 65536;
				struct entry *e = realloc(c->e, cap * sizeof(*e));
				if (!e) {
					err = -ENOMEM;
					break;
				}
				c->e = e;
				c->cap = cap;
			}
			const unsigned char *p = buf + i * PAGE;
			struct entry *e = &c->e[c->n++];
			e->h = XXH3_128bits(p, PAGE);
			e->pfn = pfn;
			e->proc = proc;
			e->zero = p[0] == 0 && memcmp(p, p + 1, PAGE - 1) == 0;
		}
	}
	if (pm_fd >= 0)
		close(pm_fd);
	if (mem_fd >= 0)
		close(mem_fd);
	uint64_t in = 0, out = 0;
	if (!err)
		err = pss_split(pid, start, end, &in, &out);
	c->pss_in_kb += in;
	c->pss_out_kb += out;
	fprintf(stderr, "census: pid %d guest RAM %#" PRIxPTR "-%#" PRIxPTR " (%zu MiB), PSS %" PRIu64
		" kB in it, %" PRIu64 " kB outside\n", pid, start, end, (size_t)((end - start) >> 20), in, out);
	return err;
}

static int by_hash(const void *x, const void *y)
{
	const XXH128_hash_t *a = x, *b = y;
	if (a->high64 != b->high64)
		return a->high64 < b->high64 ? -1 : 1;
	return a->low64 < b->low64 ? -1 : a->low64 > b->low64;
}

/* The sorted hashes of path's 4 KiB-aligned pages into *out. */
static int image_pages(const char *path, XXH128_hash_t **out, size_t *n)
{
	static unsigned char buf[512 * PAGE];
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	size_t cap = 0;
	*out = NULL;
	*n = 0;
	ssize_t got;
	while ((got = read(fd, buf, sizeof(buf))) > 0) {
		for (size_t i = 0; i + PAGE <= (size_t)got; i += PAGE) {
			if (*n == cap) {
				cap = cap ? cap * 2 : 65536;
				XXH128_hash_t *h = realloc(*out, cap * sizeof(*h));
				if (!h) {
					close(fd);
					return -ENOMEM;
				}
				*out = h;
			}
			(*out)[(*n)++] = XXH3_128bits(buf + i, PAGE);
		}
	}
	int err = got < 0 ? -errno : 0;
	close(fd);
	qsort(*out, *n, sizeof(**out), by_hash);
	return err;
}

static int by_content(const void *x, const void *y)
{
	const struct entry *a = x, *b = y;
	if (a->h.high64 != b->h.high64)
		return a->h.high64 < b->h.high64 ? -1 : 1;
	if (a->h.low64 != b->h.low64)
		return a->h.low64 < b->h.low64 ? -1 : 1;
	return a->pfn < b->pfn ? -1 : a->pfn > b->pfn;
}

int main(int argc, char **argv)
{
	XXH128_hash_t *img = NULL;
	size_t nimg = 0;
	int first = 1;
	if (argc > 2 && strcmp(argv[1], "--image") == 0) {
		int err = image_pages(argv[2], &img, &nimg);
		if (err) {
			fprintf(stderr, "census: %s: %s\n", argv[2], strerror(-err));
			return 1;
		}
		first = 3;
	}
	if (argc <= first) {
		fprintf(stderr, "usage: census [--image FILE] PID...\n");
		return 2;
	}
	struct census c = { 0 };
	uint64_t zpfn = zero_pfn();
	for (int i = first; i < argc; i++) {
		char *endp;
		long pid = strtol(argv[i], &endp, 10);
		if (*endp || pid <= 0) {
			fprintf(stderr, "census: not a pid: %s\n", argv[i]);
			return 2;
		}
		int err = add_process(&c, (int)pid, (uint32_t)i, zpfn);
		if (err == -ENOENT)
			fprintf(stderr, "census: pid %ld: no guest RAM (no read-write MADV_DONTFORK "
				"mapping), or no such process\n", pid);
		else if (err)
			fprintf(stderr, "census: pid %ld: %s\n", pid, strerror(-err));
		if (err)
			return 1;
	}
	qsort(c.e, c.n, sizeof(*c.e), by_content);
	/* Per content: its distinct frames; the ideal keeps one (none if zero). */
	uint64_t frames = 0, ideal = 0, zero_frames = 0, left_one = 0, left_cross = 0, left_image = 0;
	for (size_t i = 0; i < c.n;) {
		size_t j = i, nf = 0;
		int cross = 0;
		for (; j < c.n && c.e[j].h.high64 == c.e[i].h.high64 && c.e[j].h.low64 == c.e[i].h.low64; j++) {
			nf += j == i || c.e[j].pfn != c.e[j - 1].pfn;
			cross |= c.e[j].proc != c.e[i].proc;
		}
		frames += nf;
		if (c.e[i].zero) {
			zero_frames += nf;
		} else {
			ideal++;
			if (cross)
				left_cross += nf - 1;
			else
				left_one += nf - 1;
			if (nf > 1 && nimg && bsearch(&c.e[i].h, img, nimg, sizeof(*img), by_hash))
				left_image += nf - 1;
		}
		i = j;
	}
	printf("{\"pages\": %" PRIu64 ", \"present\": %" PRIu64 ", \"on_zero_pfn\": %" PRIu64
	       ", \"frames\": %" PRIu64 ", \"ideal_frames\": %" PRIu64 ", \"left_frames\": %" PRIu64
	       ", \"left_mb\": %.1f, \"left_zero\": %" PRIu64 ", \"left_dup_one_process\": %" PRIu64
	       ", \"left_dup_cross\": %" PRIu64 ", \"left_dup_image\": %" PRIu64
	       ", \"pss_guest_ram_kb\": %" PRIu64
	       ", \"pss_outside_kb\": %" PRIu64 "}\n",
	       c.pages, c.present, c.on_zero_pfn, frames, ideal, frames - ideal,
	       (double)(frames - ideal) * PAGE / (1 << 20), zero_frames, left_one, left_cross,
	       left_image, c.pss_in_kb, c.pss_out_kb);
	free(c.e);
	free(img);
	return 0;
}
