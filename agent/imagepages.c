/*
 * imagepages.c - guest pages equal to image pages: merged onto the image.
 *
 * Read-time sharing maps image pages into guest RAM; the guest often copies
 * them on (a file copied into tmpfs, a buffer filled from the page cache).
 * Such a copy merged into the pool would cost a pool page beside the image
 * page that stays mapped; mapped from the image instead, it costs nothing.
 *
 * So the read path queues every run of image pages it maps (imgq, under
 * agent->lock: cheap, no I/O), and the whole pages of reads of a leased
 * image it copied as too small to map (else a guest that copied a page the
 * other guest mapped would keep its copy: the pool never sees a page mapped
 * from an image); before and after each batch the scanner's thread hashes
 * what was queued into an index of hash -> (image, page). It hashes them
 * where the read mapped them, in guest RAM, under agent->lock while the
 * page's owner record still names the image: the mapping and the lease
 * then stand, so the read cannot fault (a copy with pread was a tenth of
 * the scanner's time). A page the guest wrote since gives an entry that
 * is wrong, never unsafe: merge_run() compares with the file, as ever.
 * The scanner asks the index about every page it hashes (find, the hash
 * alone); the matches of a batch
 * come back here, outside the engine's locks, and are merged under
 * agent->lock while the image's lease is held: the lease keeps the file
 * constant (images.c), the engine freezes and compares the guest pages, and
 * the pages join the image's owner records so a lease break makes them
 * private like any page shared at read time.
 *
 * Only the scanner's thread touches the index, so it needs no lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_internal.h"
#include "checksum.h"
#include "log.h"
#include "sys.h"

#define QUEUE_CAP 4096
#define FEED_PAGES 2048    /* image pages indexed after one batch at most */
#define RUN_MAX 64

struct queued {
	uint32_t img;      /* image id */
	uint32_t n;        /* pages */
	uint64_t pgoff;    /* first page in the file */
	uintptr_t addr;    /* where the read mapped it in guest RAM */
	int copied;        /* copied there, not mapped (a small read) */
};

struct file_page {
	uint64_t hash;     /* its content's when indexed (the index keeps the
	                    * high half): a wrong one is pruned (merge_run) */
	uint32_t img;
	uint32_t pgoff;    /* pages past 16 TiB into an image are not indexed */
};

/* The whole hash, not the index's half: a page whose half alone is an
 * image page's (one in 2^32 per entry: a thousand pages of a guest of 16
 * GiB against a million entries) matched, failed the compare on every
 * pass, and never reached the pool; and an image page whose half another
 * had was never indexed. */
static int same_hash(const void *pages, uint32_t e, uint64_t hash)
{
	return ((const struct file_page *)pages)[e].hash == hash;
}

struct md__imagepages {
	struct queued q[QUEUE_CAP];   /* ring, under agent->lock */
	size_t head, len;
	struct md__index ix;          /* hash -> pages[] entry */
	struct file_page *pages;
	size_t npages, cap;
	unsigned char *buf;           /* RUN_MAX pages */
	uint64_t zero_hash;           /* an all-zero page's */
};

static int64_t entry_of(struct md__imagepages *ip, uint64_t hash)
{
	return md__index_find_with(&ip->ix, hash, same_hash, ip->pages);
}

int md__imagepages_new(struct md__imagepages **out)
{
	struct md__imagepages *ip = calloc(1, sizeof(*ip));
	if (!ip)
		return -ENOMEM;
	ip->buf = malloc((size_t)RUN_MAX * MD_PAGE);
	if (!ip->buf || md__index_init(&ip->ix, 1024) != 0) {
		free(ip->buf);
		free(ip);
		return -ENOMEM;
	}
	memset(ip->buf, 0, MD_PAGE);
	ip->zero_hash = md__page_hash(ip->buf);
	*out = ip;
	return 0;
}

void md__imagepages_free(struct md__imagepages *ip)
{
	if (!ip)
		return;
	md__index_free(&ip->ix);
	free(ip->pages);
	free(ip->buf);
	free(ip);
}

uint64_t md__imagepages_bytes(const struct md__imagepages *ip)
{
	/* The ring and the read buffer too: fixed, but ours all the same. */
	return ip ? sizeof(*ip) + (size_t)RUN_MAX * MD_PAGE + md__index_bytes(&ip->ix) +
			    ip->cap * sizeof(*ip->pages) : 0;
}

void md__imagepages_queue(struct md_agent *a, uint32_t img, uint64_t pgoff, size_t n, uintptr_t addr,
			  int copied)
{
	struct md__imagepages *ip = a->imgpages;
	if (!ip)
		return;
	/* Full: these pages go unindexed; the guest's copies of them then
	 * merge through the pool, as any duplicate does. */
	if (ip->len == QUEUE_CAP) {
		md__log_once(61, "image pages come faster than the scanner indexes them: some are left out");
		return;
	}
	ip->q[(ip->head + ip->len++) % QUEUE_CAP] = (struct queued){ img, (uint32_t)n, pgoff, addr, copied };
}

/* Guest RAM that run q names and a newer read mapped at [addr, end) shows
 * other pages now: q must not be hashed there. Trimmed, or left out when
 * the newer read falls inside it. */
static void trim(struct queued *q, uintptr_t addr, uintptr_t end)
{
	uintptr_t qa = q->addr, qe = q->addr + (uintptr_t)q->n * MD_PAGE;
	if (!q->img || qe <= addr || qa >= end)
		return;
	if (qa >= addr && qe <= end) {
		q->img = 0;		/* all of it remapped */
	} else if (qa >= addr) {	/* its head */
		uint32_t cut = (uint32_t)((end - qa) / MD_PAGE);
		q->addr += (uintptr_t)cut * MD_PAGE;
		q->pgoff += cut;
		q->n -= cut;
	} else if (qe <= end) {		/* its tail */
		q->n = (uint32_t)((addr - qa) / MD_PAGE);
	} else {
		q->img = 0;		/* its middle: not worth a split */
	}
}

/* The scanner's question, on its thread: is this page an image page? The
 * hash says so; merge_run compares under the lease and write-protect, the
 * proof. (A pread to compare here too was most of the time of reading the
 * image, for a hash collision seen never.) */
static int find(void *arg, uint64_t hash, const void *page, uint64_t *cookie)
{
	struct md_agent *a = arg;
	(void)page;
	int64_t e = entry_of(a->imgpages, hash);
	if (e < 0)
		return 0;
	*cookie = (uint64_t)e;
	return 1;
}

static int still_fixed(void *img)
{
	return md__image_fixed(img);
}

/* 1 if the n pages of the image from off are all data, none a hole. */
static int all_data(const struct md__image *img, off_t off, size_t n)
{
	if (md__image_seek(img, off, SEEK_DATA) != off)
		return 0;
	off_t hole = md__image_seek(img, off, SEEK_HOLE);
	return hole >= off + (off_t)(n * MD_PAGE);
}

/* Merges n guest pages from addr onto the image pages of entries
 * cookie[0..n) (consecutive pages of one image). Returns the pages merged. */
static int merge_run(struct md_agent *a, uintptr_t addr, const uint64_t *cookie, size_t n)
{
	struct md__imagepages *ip = a->imgpages;
	const struct file_page *fp = &ip->pages[cookie[0]];
	int merged = 0;
	off_t off = (off_t)((uint64_t)fp->pgoff * MD_PAGE);

	md__agent_enter(a);
	struct md__image *img = fp->img && fp->img <= a->nimages ? &a->images[fp->img - 1] : NULL;
	struct md__region *r = md__region_find(a, addr, n * MD_PAGE);
	if (!img || !md__image_held(a, img) || (uint64_t)off + n * MD_PAGE > (uint64_t)img->size) {
		/* The lease broke: the file may have changed, and the entries
		 * would keep these pages from the pool (a match is not looked
		 * up there) until a read leases the image again, if ever. */
		for (size_t i = 0; i < n; i++)
			md__index_remove(&ip->ix, ip->pages[cookie[i]].hash, (uint32_t)cookie[i]);
		goto unlock;
	}
	if (img->shmem && !all_data(img, off, n)) {
		/* A tmpfs image's hole is read by no mapping (data_only in
		 * readshare.c): a fault on it allocates a page in the file,
		 * and on a full tmpfs is a SIGBUS in the VMM. An entry lies
		 * on one when the guest wrote a copied page of a hole before
		 * feed() hashed it: it can never match (a hole reads as
		 * zeroes, which are not indexed), and goes unread. The run
		 * waits for the next pass, its other entries left as they
		 * are. */
		for (size_t i = 0; i < n; i++) {
			off_t p = off + (off_t)(i * MD_PAGE);
			if (md__image_seek(img, p, SEEK_DATA) != p)
				md__index_remove(&ip->ix, ip->pages[cookie[i]].hash, (uint32_t)cookie[i]);
		}
		goto unlock;
	}
	if (!r)
		goto unlock;	/* the RAM went */
	size_t first = (addr - r->start) / MD_PAGE;
	for (size_t i = 0; i < n; i++)
		if (r->owner[first + i])
			goto unlock;	/* shared at read time meanwhile */
	if (!md__vma_room(a) || !md__break_room(a, n))
		goto unlock;
	/* Under the lease the file cannot change: this is what the mapping
	 * will show, and what the guest pages must equal. Named by the
	 * image's view (the engine reads it through the kernel, one call for
	 * the run): a pread of every run was a tenth of the scanner's time on
	 * guests that copy image files (docs/benchmarks.md). */
	const unsigned char *view = md__image_view(a, img);
	const unsigned char *file = view ? view + off : ip->buf;
	if (!view && md__sys_pread(img->fd, ip->buf, n * MD_PAGE, off) != (ssize_t)(n * MD_PAGE))
		goto unlock;
	int got = md__engine_merge_file(a->engine, (void *)addr, n, img->fd, off, file, still_fixed, img);
	if (got > 0) {
		md__owners_set(a, r, addr, n, img->id);
		merged = got;	/* its mappings counted by the engine (a->vmas) */
	} else if (got == -EBADF) {
		/* The VMM closed or replaced our descriptor since the check
		 * above (the map was made aside and dropped, the guest's
		 * pages left as they were): the lease goes, as on a break. */
		md__image_held(a, img);
	} else if (got == 0) {
		/* A guest page differed: it was written just now, or an
		 * entry's hash is not its file page's (the guest wrote the
		 * page before feed() hashed it). Such an entry would draw
		 * the same failed freeze on every pass: drop it. (0 says
		 * the engine read the file's pages through the kernel first:
		 * the view there can be read straight.) */
		for (size_t i = 0; i < n; i++) {
			const struct file_page *e = &ip->pages[cookie[i]];
			if (md__page_hash(file + i * MD_PAGE) != e->hash)
				md__index_remove(&ip->ix, e->hash, (uint32_t)cookie[i]);
		}
	}
unlock:
	md__agent_leave(a);
	return merged;
}

/* Hashes queued image pages into the index. */
static void feed(struct md_agent *a)
{
	struct md__imagepages *ip = a->imgpages;
	struct queued todo[64];
	size_t nt = 0, pages = 0;

	md__agent_enter(a);
	/* No more entries than pages of guest RAM: a guest's page cache
	 * cannot hold more, and reading many images must not grow the index
	 * without bound. Full, it starts over with what is read now. */
	size_t limit = 0;
	for (size_t i = 0; i < a->nregions; i++)
		limit += (a->regions[i].end - a->regions[i].start) / MD_PAGE;
	while (ip->len && nt < 64 && pages < FEED_PAGES) {
		struct queued *q = &ip->q[ip->head];
		uint32_t n = q->n < RUN_MAX ? q->n : RUN_MAX;
		if (q->img && q->img <= a->nimages) {
			todo[nt] = *q;
			todo[nt++].n = n;
			pages += n;
		}
		q->pgoff += n;
		q->addr += (uintptr_t)n * MD_PAGE;
		q->n -= n;
		if (!q->n) {
			ip->head = (ip->head + 1) % QUEUE_CAP;
			ip->len--;
		}
	}
	md__agent_leave(a);

	uint64_t indexed = 0, hash[RUN_MAX];
	for (size_t t = 0; t < nt; t++) {
		if (ip->npages && ip->npages + todo[t].n > limit) {
			struct md__index fresh;
			if (md__index_init(&fresh, 1024) != 0)
				goto count;	/* the rest left: a pass reads them again */
			md__index_free(&ip->ix);
			ip->ix = fresh;
			ip->npages = 0;
		}
		/* Under agent->lock the owner records, the mappings they stand
		 * for, and the lease (its break privatizes the pages under this
		 * lock first) hold still. A page mapped no more is left out, and
		 * so is what a newer read mapped over: the owner records name
		 * the image, not the page. Checked here, on the scanner's
		 * thread, not on each read: a paused scanner leaves the queue
		 * full. */
		md__agent_enter(a);
		for (size_t u = t + 1; u < nt; u++)
			trim(&todo[t], todo[u].addr, todo[u].addr + (uintptr_t)todo[u].n * MD_PAGE);
		for (size_t k = 0; k < ip->len; k++) {
			const struct queued *q = &ip->q[(ip->head + k) % QUEUE_CAP];
			trim(&todo[t], q->addr, q->addr + (uintptr_t)q->n * MD_PAGE);
		}
		if (!todo[t].img) {
			md__agent_leave(a);
			continue;
		}
		size_t n = todo[t].n;
		struct md__region *r = md__region_find(a, todo[t].addr, n * MD_PAGE);
		/* A copied page is hashed as it is now: if the guest wrote
		 * it since the read, the entry is wrong, found out and
		 * dropped by the merge's compare (merge_run). */
		uint32_t owner = todo[t].copied ? 0 : todo[t].img;
		/* A page still mapped from an image whose lease went with
		 * pages not made private (memory short until the kernel's
		 * deadline) is the file's, which a writer may truncate: its
		 * read would be SIGBUS in the VMM. */
		if (owner && (owner > a->nimages || !md__image_held(a, &a->images[owner - 1])))
			r = NULL;
		/* Nor is a copy the VMM discarded since the read: the hash's
		 * read would fill its hole in. Under agent->lock no discard
		 * comes between (md_agent_discard makes the engine's holes
		 * under it). A page mapped from the image reads the file. */
		uint64_t pm[RUN_MAX];
		for (size_t i = 0; i < n; i++)
			pm[i] = MD_PM_PRESENT;
		if (todo[t].copied && (!a->engine ||
				       md__engine_pagemap(a->engine, todo[t].addr, n, pm) !=
					       (ssize_t)(n * sizeof(pm[0]))))
			r = NULL;
		for (size_t i = 0; i < n; i++) {
			hash[i] = ip->zero_hash;	/* left out, as zero pages are */
			if (r && r->owner[(todo[t].addr - r->start) / MD_PAGE + i] == owner &&
			    md__pm_has_page(pm[i]))
				hash[i] = md__page_hash((const void *)(todo[t].addr + i * MD_PAGE));
		}
		md__agent_leave(a);
		for (size_t i = 0; i < n; i++) {
			uint64_t h = hash[i];
			/* Zero pages are dropped, not merged: equal hashes tell
			 * them well enough here, where nothing is merged. */
			if (h == ip->zero_hash || entry_of(ip, h) >= 0 ||
			    todo[t].pgoff + i > UINT32_MAX)
				continue;	/* the same content, or read again */
			if (ip->npages == ip->cap) {
				size_t cap = ip->cap ? ip->cap * 2 : 1024;
				struct file_page *np = realloc(ip->pages, cap * sizeof(*np));
				if (!np)
					goto count;
				ip->pages = np;
				ip->cap = cap;
			}
			if (md__index_insert(&ip->ix, h, (uint32_t)ip->npages) != 0)
				goto count;
			ip->pages[ip->npages++] = (struct file_page){ h, todo[t].img,
								  (uint32_t)(todo[t].pgoff + i) };
			indexed++;
		}
	}
count:
	md__count(a, MD_CTR_IMAGE_INDEXED, indexed);	/* those in, also when memory ran out */
}

/* After every batch, on the scanner's thread with no engine lock held. */
static void merge(void *arg, const uintptr_t *addr, const uint64_t *cookie, size_t n)
{
	struct md_agent *a = arg;
	struct md__imagepages *ip = a->imgpages;
	uint64_t merged = 0;

	for (size_t j = 0; j < n;) {
		/* Adjacent guest pages equal to adjacent pages of one image
		 * map in one go, as many as ip->buf holds. */
		const struct file_page *fp = &ip->pages[cookie[j]];
		size_t run = 1;
		while (j + run < n && run < RUN_MAX && addr[j + run] == addr[j] + run * MD_PAGE) {
			const struct file_page *nx = &ip->pages[cookie[j + run]];
			if (nx->img != fp->img || nx->pgoff != fp->pgoff + run)
				break;
			run++;
		}
		merged += (uint64_t)merge_run(a, addr[j], &cookie[j], run);
		j += run;
	}
	md__count(a, MD_CTR_MERGED_IMAGE, merged);
	if (ip->len)
		feed(a);
}

void md__imagepages_attach(struct md_agent *a)
{
	if (a->imgpages)
		a->scanner.files = (struct md__file_source){ a, find, merge };
}
