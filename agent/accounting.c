/*
 * accounting.c - the counters that describe the present, refreshed by the
 * agent's thread about once a second: how many pages mapped from images are
 * still shared, how many the guest has written since (copy-on-write breaks),
 * and how many mappings the process has.
 *
 * /proc/self/pagemap tells a page still backed by the file (bit 61, "file
 * page or shared anonymous") from one the guest has written (a private
 * anonymous copy); a page never touched since it was mapped is not present
 * and still counts as shared.
 */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "agent_internal.h"
#include "sys.h"

#define PM_PRESENT (1ull << 63)
#define PM_FILE (1ull << 61)
#define PM_CHUNK 4096

static void count_region(int pm, const struct md__region *r, uint64_t *owned, uint64_t *broken)
{
	static uint64_t entries[PM_CHUNK];
	size_t npages = (r->end - r->start) / MD_PAGE;

	for (size_t base = 0; base < npages; base += PM_CHUNK) {
		size_t n = npages - base < PM_CHUNK ? npages - base : PM_CHUNK;
		size_t first = base, last = base + n;
		while (first < last && !r->owner[first])
			first++;
		if (first == last)
			continue;
		off_t off = (off_t)((r->start / MD_PAGE + first) * sizeof(uint64_t));
		ssize_t got = md__sys_pread(pm, entries, (last - first) * sizeof(uint64_t), off);
		if (got <= 0)
			continue;
		size_t m = (size_t)got / sizeof(uint64_t);
		for (size_t i = 0; i < m; i++) {
			if (!r->owner[first + i])
				continue;
			(*owned)++;
			if ((entries[i] & PM_PRESENT) && !(entries[i] & PM_FILE))
				(*broken)++;
		}
	}
}

void md__account(struct md_agent *a)
{
	static int pm = -1;
	uint64_t owned = 0, broken = 0;

	if (pm < 0)
		pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	pthread_mutex_lock(&a->lock);
	if (pm >= 0)
		for (size_t i = 0; i < a->nregions; i++)
			count_region(pm, &a->regions[i], &owned, &broken);
	a->maps_since_count = 0;
	pthread_mutex_unlock(&a->lock);

	md__set(a, MD_CTR_SHARED_NOW, owned - broken);
	md__set(a, MD_CTR_BREAKS, broken);
	md__set(a, MD_CTR_VMAS, md__count_vmas());
}
