/*
 * domain.c - domains: one content pool and one index per (uid, name).
 *
 * Why the uid is part of the identity: a page published by one user must
 * never be mapped by another (it would leak content, and a lookup hit is
 * itself a side channel), so two users never share a pool whatever name
 * they ask for. A domain lives while agent records point at it; with the
 * last one it goes, pool and all (mappings still hold the memfd).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "daemon.h"

static uint64_t new_generation(struct md__daemon *d)
{
	/* 64 random bits, never 0 nor the last one given: an agent that meets
	 * a generation again takes the pool for the one it knew (its slot
	 * numbers, the references it owes), so no other daemon may give it,
	 * the host's and a user's alive together or one restarted. Wall-clock
	 * nanoseconds could repeat on a coarse clock or one set back. */
	uint64_t g = 0;
	while (g == 0 || g == d->last_generation) {
		if (getrandom(&g, sizeof(g), GRND_NONBLOCK) != (ssize_t)sizeof(g)) {
			/* No entropy yet (early boot): the clock, mixed. */
			struct timespec t;
			clock_gettime(CLOCK_REALTIME, &t);
			g = ((uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec) ^
			    ((uint64_t)getpid() << 40) ^ (d->last_generation * 0x9e3779b97f4a7c15ull);
		}
	}
	d->last_generation = g;
	return g;
}

/* An id no live domain has, never 0 or UINT32_MAX (STATUS pages use it to
 * mean past every domain), even once the count wraps. */
static uint32_t new_domain_id(struct md__daemon *d)
{
	for (;;) {
		uint32_t id = ++d->next_domain_id;
		if (id == 0 || id == UINT32_MAX)
			continue;
		const struct md__domain *o = d->domains;
		while (o && o->id != id)
			o = o->next;
		if (!o)
			return id;
	}
}

static int domain_new(struct md__daemon *d, uid_t uid, const char *name, struct md__domain **out)
{
	struct md__domain *dom = calloc(1, sizeof(*dom));
	int err;
	if (!dom)
		return -ENOMEM;
	dom->uid = uid;
	snprintf(dom->name, sizeof(dom->name), "%s", name);
	err = md__pool_open(&dom->pool, d->pool_pages);
	if (err)
		goto free_dom;
	/* The pool's inode is created 0777 by memfd_create. A holder of the
	 * read-only fd could reopen /proc/self/fd/N for writing and change
	 * pages others map; owner-read-only stops any non-root agent of
	 * another uid than ours. (Our own writable fd is already open.) */
	if (fchmod(dom->pool.fd, 0400) < 0) {
		err = -errno;
		goto close_pool;
	}
	err = md__index_init(&dom->index, 1024);
	if (err)
		goto close_pool;
	/* calloc of this size is lazily zero-mapped: costs only what slots use. */
	dom->slot_hash = calloc(d->pool_pages, sizeof(*dom->slot_hash));
	if (!dom->slot_hash) {
		err = -ENOMEM;
		goto free_index;
	}
	dom->id = new_domain_id(d);
	dom->generation = new_generation(d);
	dom->next = d->domains;
	d->domains = dom;
	*out = dom;
	md__dlog_peer("domain %u '%s' of uid %u: new pool, generation %llu", dom->id, dom->name,
		      (unsigned)uid, (unsigned long long)dom->generation);
	return 0;

free_index:
	md__index_free(&dom->index);
close_pool:
	md__pool_close(&dom->pool);
free_dom:
	free(dom);
	return err;
}

int md__domain_get(struct md__daemon *d, uid_t uid, const char *name, const struct md__domain *going,
		   struct md__domain **out)
{
	/* A domain whose every record exited is going as soon as their
	 * references went (md__agents_drain): a VM restarting under a new
	 * name while its old domain drains is not refused for it. Its pool
	 * still counts toward the user's live pages (server.c), and such
	 * domains, a memfd each, are bounded too. */
	size_t mine = 0, kept = 0;
	for (struct md__domain *dom = d->domains; dom; dom = dom->next) {
		if (dom->uid != uid)
			continue;
		if (strcmp(dom->name, name) == 0) {
			dom->nagents++;
			*out = dom;
			return 0;
		}
		mine += dom != going && dom->nagents > dom->nexited;
		kept++;
	}
	if (mine >= MD_D_DOMAINS_PER_UID || kept >= MD_D_DOMAINS_KEPT_PER_UID)
		return -EUSERS;
	int err = domain_new(d, uid, name, out);
	if (!err)
		(*out)->nagents++;
	return err;
}

static void domain_free(struct md__domain *dom)
{
	md__domain_seen_free(dom);
	free(dom->pending);
	free(dom->reads);
	free(dom->slot_hash);
	md__index_free(&dom->index);
	md__pool_close(&dom->pool);
	free(dom);
}

void md__domain_release(struct md__daemon *d, struct md__domain *dom)
{
	if (--dom->nagents)
		return;
	for (struct md__domain **pp = &d->domains; *pp; pp = &(*pp)->next) {
		if (*pp == dom) {
			*pp = dom->next;
			break;
		}
	}
	md__dlog_peer("domain %u '%s' of uid %u: last agent gone, pool closed", dom->id, dom->name,
		      (unsigned)dom->uid);
	domain_free(dom);
}

void md__domain_free_all(struct md__daemon *d)
{
	while (d->domains) {
		struct md__domain *dom = d->domains;
		d->domains = dom->next;
		domain_free(dom);
	}
}

int md__domains_trim_due(const struct md__daemon *d)
{
	for (const struct md__domain *dom = d->domains; dom; dom = dom->next)
		if (dom->pool.ndirty)
			return 1;
	return 0;
}

void md__domains_trim(struct md__daemon *d)
{
	for (struct md__domain *dom = d->domains; dom; dom = dom->next)
		md__pool_trim(&dom->pool);
}

/* One sighting per page of the domain's guest RAM (rounded down to a power
 * of two, 64 Ki to 1 Mi: 1 to 16 MiB, touched all over). KSM's unstable
 * tree lives in the kernel, but ours counts against what we save, so it is
 * sized by what the agents registered, not for the largest fleet. A
 * sighting lost to a collision costs a merge found a pass later.
 * Two ways per bucket, the newest first: direct-mapped, two copies of one
 * page could stay apart for good when a third, unique page of the same
 * bucket was looked up between theirs pass after pass (the smart scan
 * gives all three the same period). */
#define SEEN_MIN (1u << 16)
#define SEEN_MAX (1u << 20)

static size_t seen_want(const struct md__domain *dom)
{
	size_t c = SEEN_MIN;
	while (c < SEEN_MAX && c * 2 <= dom->registered_pages)
		c *= 2;
	return c;
}

static uint64_t where_get(const struct md__sighting *e)
{
	return (uint64_t)e->where[1] << 32 | e->where[0];
}

static void where_set(struct md__sighting *e, uint64_t w)
{
	e->where[0] = (uint32_t)w;
	e->where[1] = (uint32_t)(w >> 32);
}

/* The bucket's first way (the second is the next entry). */
static size_t seen_bucket(const struct md__domain *dom, uint64_t hash)
{
	return (size_t)(hash ^ (hash >> 29)) & (dom->seen_cap - 2);
}

/* Where a page is, packed (MD_WHERE_BITS); 0 for one that cannot be
 * recorded (above 2^47, unaligned, or of an agent without a number). */
static uint64_t where_of(unsigned num, uint64_t addr)
{
	int fits = addr % 4096 == 0 && !(addr >> 47) && num > 0 && num <= MD_AGENT_NUM_MAX;
	return fits ? (uint64_t)num << MD_WHERE_PAGE_BITS | addr >> 12 : 0;
}

/* The reads table holds the high half of each tag, and its bucket comes
 * from that half too, so the table can grow without losing entries. */
static uint32_t read_tag32(uint64_t tag)
{
	return (uint32_t)(tag >> 32);
}

/* Entries a bucket of the reads table. The two copies of a file page two
 * guests read fill two: with two ways, any later read of another file page
 * into that bucket dropped the older copy, and the copies whose pairing
 * waited longest (the hints taken last, newest first) had lost their
 * entries: a third of the hinted lookups of a bench of two guests found
 * their own gone (bench-dbg-h3). */
#define READ_WAYS 4

static size_t read_bucket(size_t cap, uint32_t t)
{
	return (size_t)(t * 2654435761u) & (cap - READ_WAYS);
}

/* A reads entry whose page was looked up with its tag before its twin was
 * read (its content in the pool, on its way there, or a first sighting):
 * the twin's lookup finds that content (read_met). */
#define READ_LOOKED (1ull << 63)

static uint64_t read_where(const struct md__sighting *e)
{
	return MD_SIGHT_WHERE(where_get(e));
}

/* Newest first in its bucket; full, the oldest goes. w may carry
 * READ_LOOKED (the table growing). Returns 1 if the table holds one entry
 * more (an empty way taken), else 0 (the same page, or the oldest out). */
static int read_put(struct md__sighting *tab, size_t cap, uint32_t t, uint64_t w)
{
	struct md__sighting *b = &tab[read_bucket(cap, t)];
	int last = READ_WAYS - 1;
	for (int way = 0; way < READ_WAYS; way++) {
		if (b[way].tag == t && read_where(&b[way]) == MD_SIGHT_WHERE(w))
			return 0;	/* the same page read again */
		if (!where_get(&b[way]) && way < last)
			last = way;	/* the entries above it move down */
	}
	int more = !where_get(&b[last]);
	memmove(&b[1], &b[0], (size_t)last * sizeof(*b));
	b[0].tag = t;
	where_set(&b[0], w);
	return more;
}

/* Takes entry way of bucket b out; the ones after it move up (the empty
 * ways are a bucket's last). */
static void read_take(struct md__sighting *b, int way)
{
	memmove(&b[way], &b[way + 1], (size_t)(READ_WAYS - 1 - way) * sizeof(*b));
	b[READ_WAYS - 1] = (struct md__sighting){ 0 };
}

/* Made on the first READS, small: with read-time sharing on, few reads are
 * told, and a few hundred entries spread over a large table would touch
 * every page of it (memory that counts against what is saved). It doubles
 * whenever an eighth of it is in use, as guests reading an image unshared
 * fill it, up to the sightings' size (one entry per page the domain
 * registered, rounded down): capped at 65,536 entries, the hints of two
 * guests reading 160 MiB lost their pairs before their visits came, and
 * t50 went from 4.9 to 8.5 s (docs/benchmarks.md, image28). Doubling when
 * half as many entries were added as it had, entries of a guest reading
 * ahead of the other (met only by its reads, later) filled it nearly up
 * before each doubling: 7,267 of 41,013 pages lost their entries to
 * newer ones in full buckets, and 5,800 pages went unnamed (bench-dbg-p5).
 * At an eighth, 0.13 % of a lagging guest's entries went, at a quarter 2 %
 * (domain_reads_lagging_guest_pairs). */
#define READS_MIN 4096u

/* The reads table made anew with cap entries, holding what it held, or
 * (whole) -ENOSPC with the old one kept if a full bucket would lose one. */
static int reads_remake(struct md__domain *dom, size_t cap, int whole)
{
	struct md__sighting *t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	/* Oldest first, so each bucket keeps its newest. */
	size_t live = 0;
	for (size_t i = 0; i < dom->reads_cap; i += READ_WAYS)
		for (int way = READ_WAYS - 1; way >= 0; way--) {
			const struct md__sighting *e = &dom->reads[i + (size_t)way];
			if (where_get(e))
				live += (size_t)read_put(t, cap, e->tag, where_get(e));
		}
	if (whole && live < dom->reads_live) {
		free(t);
		return -ENOSPC;
	}
	free(dom->reads);
	dom->reads = t;
	dom->reads_cap = cap;
	dom->reads_live = live;
	return 0;
}

static int reads_room(struct md__domain *dom)
{
	size_t max = seen_want(dom) > READS_MIN ? seen_want(dom) : READS_MIN;
	if (dom->reads_cap && (dom->reads_live * 8 < dom->reads_cap || dom->reads_cap >= max))
		return 0;
	int err = reads_remake(dom, dom->reads_cap ? dom->reads_cap * 2 : READS_MIN, 0);
	return (err && dom->reads_cap) ? 0 : err;	/* the old one goes on */
}

/* Grown while a guest read ahead of another, the table holds few entries
 * once their reads paired, and its pages count against what is saved
 * (262,144 entries, 3 MiB, for two guests of 512 MiB): remade as small as
 * the growth rule allows once no READS came for MD_READS_QUIET_MS and
 * under a 64th of it is in use (memdedupd's quiet seconds, when freed pool
 * pages are punched, never came while agents scanned and reported: it
 * stayed at 131,072 entries for 80 s after the reads, bench-dbg-p6), but
 * not so small that a bucket loses an entry still waiting
 * (the entries left are those of crowded buckets, and keep their
 * bucket's low bits: 1 of 49 went in domain_reads_table_shrinks_after_reads). */
static int reads_shrink_due(const struct md__domain *dom)
{
	return dom->reads_cap > READS_MIN && dom->reads_live * 64 < dom->reads_cap &&
	       dom->reads_cap != dom->reads_shrunk;
}

static void reads_shrink(struct md__domain *dom)
{
	size_t cap = READS_MIN;
	while (dom->reads_live * 8 >= cap)
		cap *= 2;
	/* Without memory, the large one goes on. */
	while (cap < dom->reads_cap && reads_remake(dom, cap, 1) == -ENOSPC)
		cap *= 2;
	dom->reads_shrunk = dom->reads_cap;	/* tried: not again until it grows */
}

void md__domains_shrink(struct md__daemon *d, int64_t now)
{
	for (struct md__domain *dom = d->domains; dom; dom = dom->next)
		if (reads_shrink_due(dom) && now - dom->reads_ms >= MD_READS_QUIET_MS)
			reads_shrink(dom);
}

/* Whether agent num publishes the read pairs it shares with agent other:
 * the first of the two whose read met the other's does, from then on. Of two guests
 * reading an image in step, whichever looked first published each pair,
 * the two agents took turns within a run, and each guest's runs mapped
 * slots from both agents' publications: 12,000-15,000 mappings a guest,
 * against 3,200 with one publisher (docs/benchmarks.md, ninth session). A
 * fast agent still publishes the pairs of a slow one that read first. */
static int pair_publishes(struct md__domain *dom, unsigned num, unsigned other)
{
	if (num == other)
		return 1;
	uint64_t lo = num < other ? num : other, hi = num < other ? other : num;
	uint64_t *e = &dom->pair_publisher[(lo * 31 + hi) % MD_PAIR_PUBLISHERS];
	if ((*e >> 12) != (lo << 12 | hi))
		*e = (lo << 12 | hi) << 12 | num;	/* the first (or a lost entry) */
	return (*e & 0xfff) == num;
}

/* Pairs of pages read from one file page, neither looked up yet: the
 * page named to its agent -> its partner, until the named page's lookup
 * (lossy: a pair whose entry went waits for the partner's own visit, as
 * before there was the table). MD_PENDING_WAYS a bucket, newest first,
 * the oldest out when full: direct-mapped, a pair put took the slot of
 * another still waiting, and 1,015-2,023 pairs of 33,000-36,000 were lost
 * so (bench-dbg-p4, p5), whose partners waited for their agent's cursor.
 * Made on first use. */
static struct md__pending *pending_bucket(struct md__domain *dom, uint64_t w)
{
	size_t i = (size_t)((w * 0x9e3779b97f4a7c15ull) >> 40) & (MD_PENDING_PAIRS - MD_PENDING_WAYS);
	return &dom->pending[i];
}

static void pending_put(struct md__domain *dom, uint64_t named, uint64_t partner)
{
	if (!dom->pending && !(dom->pending = calloc(MD_PENDING_PAIRS, sizeof(*dom->pending))))
		return;	/* without: the partner waits for its own visit */
	struct md__pending *b = pending_bucket(dom, named);
	unsigned last = MD_PENDING_WAYS - 1;
	for (unsigned way = 0; way < last; way++)
		if (b[way].named == named || !b[way].named) {
			last = way;	/* its own entry (named again), or the first empty */
			break;
		}
	memmove(&b[1], &b[0], last * sizeof(*b));
	b[0] = (struct md__pending){ named, partner };
}

static uint64_t pending_take(struct md__domain *dom, uint64_t w)
{
	if (!dom->pending || !w)
		return 0;
	struct md__pending *b = pending_bucket(dom, w);
	for (unsigned way = 0; way < MD_PENDING_WAYS; way++)
		if (b[way].named == w) {
			uint64_t p = b[way].partner;
			memmove(&b[way], &b[way + 1], (MD_PENDING_WAYS - 1 - way) * sizeof(*b));
			b[MD_PENDING_WAYS - 1] = (struct md__pending){ 0 };
			return p;
		}
	return 0;
}

/* Whether another page than w was read from the same file page (t): its
 * entry goes, and one of the two is to be visited now (*visit, where). If
 * the other was looked up (READ_LOOKED), w's lookup finds its content.
 * If not, the copy of the pair's publisher is named, and its lookup
 * publishes it and names the other back (pending_put). Left to the
 * lookups' tags, a pair whose first copy the cursor had looked up
 * (untagged) waited for the second copy's hint: its agent's part of
 * the rate was an eighth, and the hints' t90 was 8-15 s after the reads
 * (bench-dbg-h6, bench-dbg-h7); with the pairs made at the second read,
 * 3.3 s (bench-dbg-h8). */
static int read_met(struct md__domain *dom, uint32_t t, uint64_t w, uint64_t *visit)
{
	struct md__sighting *b = &dom->reads[read_bucket(dom->reads_cap, t)];
	for (int way = 0; way < READ_WAYS; way++) {
		uint64_t o = where_get(&b[way]), ow = MD_SIGHT_WHERE(o);
		if (b[way].tag != t || !o || ow == w)
			continue;
		read_take(b, way);
		dom->reads_live--;
		if (o & READ_LOOKED) {
			*visit = w;
			return 1;
		}
		int mine = pair_publishes(dom, (unsigned)(w >> MD_WHERE_PAGE_BITS), (unsigned)(ow >> MD_WHERE_PAGE_BITS));
		*visit = mine ? w : ow;
		pending_put(dom, *visit, mine ? ow : w);
		return 1;
	}
	return 0;
}

size_t md__domain_reads(struct md__domain *dom, unsigned num, const struct md__read_run *run, uint64_t *named)
{
	size_t n = 0;
	dom->reads_ms = md__now_ms();
	for (uint32_t i = 0; i < run->npages; i++) {
		uint64_t a = run->addr + (uint64_t)i * 4096, w = where_of(num, a);
		if (!w || reads_room(dom))
			continue;	/* no pairing by reads: sightings still pair */
		uint32_t t = read_tag32(md__read_tag(run->key, run->off + (uint64_t)i * 4096));
		/* Named, this page needs no entry: its lookup will find the
		 * other copy's content, by hash, or pair with it. */
		if (read_met(dom, t, w, &named[n])) {
			n++;
			dom->read_named++;
			continue;
		}
		dom->reads_live += (size_t)read_put(dom->reads, dom->reads_cap, t, w);
	}
	return n;
}

/* The asker's page w, read from the file page tag, was looked up, its
 * twin not read yet: its entry says so (read_met). */
static void read_looked(struct md__domain *dom, uint64_t tag, uint64_t w)
{
	if (!dom->reads_cap)
		return;
	uint32_t t = read_tag32(tag);
	struct md__sighting *b = &dom->reads[read_bucket(dom->reads_cap, t)];
	for (int way = 0; way < READ_WAYS; way++)
		if (b[way].tag == t && read_where(&b[way]) == w) {
			where_set(&b[way], w | READ_LOOKED);
			return;
		}
}

void md__domain_seen_free(struct md__domain *dom)
{
	free(dom->seen);
	dom->seen = NULL;
	dom->seen_cap = 0;
}

/* *name: see md__domain_lookup. */
static uint32_t lookup(struct md__domain *dom, uint64_t hash, unsigned asker, uint64_t addr, uint64_t *name)
{
	/* A page past what an entry holds (above 2^47, or of an agent
	 * without a number) can meet a sighting, but never be one. */
	uint64_t w = where_of(asker, addr);
	int fits = w != 0;
	/* Named by its pair's reads (read_met): its partner waits for this
	 * lookup, untagged or not. */
	uint64_t partner = pending_take(dom, w);
	/* The first candidate with the whole hash (the index keeps its high
	 * half): the daemon answers hash lookups only, and the agent compares
	 * bytes itself under write-protect. */
	int64_t s = md__index_find_hash(&dom->index, hash, dom->slot_hash);
	if (s >= 0) {
		/* In the pool already (a third copy, or content the image
		 * holds at other offsets too): the partner finds it too. */
		*name = partner;
		dom->read_pairs += partner != 0;
		return (uint32_t)s + 1;
	}
	/* Remade (empty: it is lossy anyway) when the agents registered
	 * twice the RAM it was made for, or a quarter of it. */
	size_t want = seen_want(dom);
	if (dom->seen_cap && (want > dom->seen_cap || want * 4 <= dom->seen_cap))
		md__domain_seen_free(dom);
	if (!dom->seen_cap) {
		/* calloc of this size is lazily zero-mapped, like the slots. */
		dom->seen = calloc(want, sizeof(*dom->seen));
		if (!dom->seen)
			return 0;	/* without the table: never told to publish */
		dom->seen_cap = want;
	}
	/* Lossy, like a cache: a third sighting in a bucket forgets the
	 * older one, which costs a merge found one pass later. */
	struct md__seen *b = &dom->seen[seen_bucket(dom, hash)];
	for (int way = 0; way < 2; way++) {
		struct md__seen *e = &b[way];
		if (!MD_SIGHT_WHERE(e->where) || e->hash != hash)
			continue;
		/* The same page again (address 0: the asker did not say) is
		 * no second copy; any other page is, in this process or not. */
		int same = MD_SIGHT_WHERE(e->where) == w;
		if ((e->where & MD_SIGHT_ASKED) || !same) {
			e->where |= MD_SIGHT_ASKED;
			/* The sighting is named back once this is published;
			 * the partner is named now, and finds either. */
			*name = partner != MD_SIGHT_WHERE(e->where) ? partner : 0;
			dom->read_pairs += partner != 0;
			return MD_LOOKUP_PUBLISH;
		}
		if (!partner)
			return 0;
		/* Its own sighting (the cursor's, before its twin was
		 * read): the partner is named back once this is published. */
		e->where = partner | MD_SIGHT_ASKED;
		dom->read_pairs++;
		return MD_LOOKUP_PUBLISH;
	}
	/* Seen first here, but its twin was read (another guest reading the
	 * same image): that page is this one's first sighting, as if looked
	 * up already. This one is published now and that one named back:
	 * one visit merges both. */
	if (partner) {
		b[1] = b[0];
		b[0] = (struct md__seen){ hash, partner | MD_SIGHT_ASKED };
		dom->read_pairs++;
		return MD_LOOKUP_PUBLISH;
	}
	if (fits) {
		b[1] = b[0];
		b[0] = (struct md__seen){ hash, w };
	}
	return 0;
}

uint32_t md__domain_lookup(struct md__domain *dom, uint64_t hash, unsigned asker, uint64_t addr,
			   uint64_t tag, uint64_t *name)
{
	*name = 0;
	uint32_t r = lookup(dom, hash, asker, addr, name);
	/* Its content is in the pool now, on its way there, or a first
	 * sighting: a page read from the same file page after this is named
	 * to its agent as its READS comes in (md__domain_reads), to find it. */
	uint64_t w = where_of(asker, addr);
	if (tag && w)
		read_looked(dom, tag, w);
	return r;
}

int md__domain_published(struct md__domain *dom, uint64_t hash, unsigned *num, uint64_t *addr)
{
	if (!dom->seen_cap)
		return 0;
	struct md__seen *b = &dom->seen[seen_bucket(dom, hash)];
	for (int way = 0; way < 2; way++) {
		struct md__seen *e = &b[way];
		uint64_t w = MD_SIGHT_WHERE(e->where);
		if (!w || !(e->where & MD_SIGHT_ASKED) || e->hash != hash)
			continue;
		*num = (unsigned)(w >> MD_WHERE_PAGE_BITS);
		*addr = (w & ((1ull << MD_WHERE_PAGE_BITS) - 1)) << 12;
		if (way == 0)	/* as in read_take: the second moves up */
			b[0] = b[1];
		b[1] = (struct md__seen){ 0 };
		return *addr != 0;
	}
	return 0;
}

int md__domain_slot_ok(const struct md__domain *dom, uint32_t slot, uint32_t more)
{
	const struct md__pool *p = &dom->pool;
	return slot < p->end && p->state[slot] == MD_SLOT_LIVE && p->refs[slot] <= UINT32_MAX - more;
}

void md__domain_get_ref(struct md__domain *dom, uint32_t slot)
{
	md__pool_get(&dom->pool, slot);
	dom->refs_total++;
}

void md__domain_put_refs(struct md__domain *dom, uint32_t slot, uint32_t n)
{
	dom->refs_total -= n;
	/* The last reference: the pool punches the page; forget its hash so
	 * no lookup offers a hole. */
	if (md__pool_put_n(&dom->pool, slot, n))
		md__index_remove(&dom->index, dom->slot_hash[slot], slot);
}

void md__domain_put_ref(struct md__domain *dom, uint32_t slot)
{
	md__domain_put_refs(dom, slot, 1);
}

static const void *pool_slot_page(void *arg, uint32_t slot)
{
	return md__pool_page(arg, slot);
}

int md__domain_publish(struct md__domain *dom, const uint64_t *hash, const unsigned char *pages,
		       uint32_t n, uint32_t *first, int match_only)
{
	uint32_t i;
	int err;

	/* The index is only worth its hits if its hashes are true. */
	for (i = 0; i < n; i++)
		if (md__page_hash(pages + (size_t)i * MD_MSG_PAGE) != hash[i])
			return -EINVAL;
	/* Two agents publishing the same content at once (each found nothing
	 * when it looked) must end up on one pool page: a single page equal,
	 * byte for byte, to a live one is given that one. */
	if (n == 1) {
		int64_t s = md__index_find(&dom->index, hash[0], pages, pool_slot_page, &dom->pool);
		if (s >= 0 && md__domain_slot_ok(dom, (uint32_t)s, 1)) {
			*first = (uint32_t)s;
			md__domain_get_ref(dom, *first);
			dom->publish_hits++;
			return 0;
		}
	}
	if (match_only)
		return -ENOSPC;
	err = md__pool_reserve(&dom->pool, n, first);
	if (err)
		return err;
	err = md__pool_publish(&dom->pool, *first, pages, n);
	if (err) {
		md__pool_unreserve(&dom->pool, *first, n);
		return err;
	}
	for (i = 0; i < n; i++) {
		/* No room near its bucket (hundreds of copies of this page
		 * indexed already): published all the same, only never offered
		 * to a lookup. */
		err = md__index_insert(&dom->index, hash[i], *first + i);
		if (err && err != -ENOSPC)
			goto unindex;
		dom->slot_hash[*first + i] = hash[i];
	}
	/* The publisher's reference (it is about to map them). */
	for (i = 0; i < n; i++)
		md__domain_get_ref(dom, *first + i);
	return 0;

unindex:
	while (i--)
		md__index_remove(&dom->index, hash[i], *first + i);
	for (i = 0; i < n; i++)
		md__pool_drop_unused(&dom->pool, *first + i);
	return err;
}
