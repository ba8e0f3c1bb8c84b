/*
 * status.c - the STATUS document (JSON): the daemon, its domains, its
 * agents and the totals. A requester sees its own uid's domains and agents;
 * root and the daemon's own uid see everything.
 *
 * Sharing, in kernel KSM's terms: pages_shared is the pool pages in use
 * (every live slot is referenced: the last reference frees it),
 * pages_sharing the references to them beyond the first of each (the
 * pages saved: N guest pages showing one pool page save N - 1), and
 * general_profit those pages' bytes, with the zero pages dropped and the
 * pages mapped from agents' fill strips, minus what the daemon spends to
 * keep track of them.
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "stats_file.h"

/* Bookkeeping bytes per slot handed out: refs, state, free list, hash. */
#define SLOT_META (sizeof(uint32_t) + sizeof(uint8_t) + sizeof(uint32_t) + sizeof(uint64_t))

static int visible(struct md__daemon *d, uid_t requester, uid_t owner)
{
	(void)d;
	return requester == 0 || requester == geteuid() || requester == owner;
}

static json_int_t domain_meta(const struct md__domain *dom)
{
	return (json_int_t)(dom->pool.end * SLOT_META +
			    md__index_bytes(&dom->index) + dom->refs_table_bytes +
			    dom->seen_cap * sizeof(*dom->seen) + dom->reads_cap * sizeof(struct md__sighting) +
			    (dom->pending ? MD_PENDING_PAIRS * sizeof(*dom->pending) : 0));
}

/* Room a page's domains and agents may take: the rest of the document
 * (daemon, totals, next) is well under 4 KiB. */
#define PAGE_ITEMS_MAX (MD_MSG_MAX - 4096u)

static int by_domain_id(const void *x, const void *y)
{
	uint32_t a = (*(struct md__domain *const *)x)->id, b = (*(struct md__domain *const *)y)->id;
	return (a > b) - (a < b);
}

static int by_agent_pid(const void *x, const void *y)
{
	pid_t a = (*(struct md__agent *const *)x)->pid, b = (*(struct md__agent *const *)y)->pid;
	return (a > b) - (a < b);
}

/* KSM's pages_sharing: the sites beyond the first of each page, what is
 * saved. The references of agents gone (still going back to the pool, a
 * wake-up's worth at a time) map nothing: left out, so the domain's
 * references are its agents'. A page only they hold still counts in
 * pages_shared until it is freed: until then this is a lower bound (the
 * exact figure would take a walk over the slots). */
static json_int_t domain_sharing(const struct md__domain *dom)
{
	json_int_t held = (json_int_t)(dom->refs_total - dom->refs_draining);
	json_int_t live = (json_int_t)md__pool_live(&dom->pool);
	return held > live ? held - live : 0;
}

/* The agents' counters a domain shows added up, as their last reports
 * say them: KSM's figures of the scanner (the pages of a domain are its
 * agents', which report these each second). */
static const enum md__ctr domain_ctrs[] = {
	MD_CTR_ZERO_PAGES, MD_CTR_PAGES_UNSHARED, MD_CTR_VOLATILE, MD_CTR_FULL_SCANS,
	MD_CTR_MERGE_RATE, MD_CTR_BREAK_RATE, MD_CTR_SCAN_CPU_NS,
};
#define NDOMAIN_CTRS (sizeof(domain_ctrs) / sizeof(domain_ctrs[0]))

/* Counter c of the live agents of dom added up,
 * saturating at JSON's largest integer (a damaged agent's counters are
 * as it sent them). Exited agents are out of d->agents. */
static json_int_t agents_sum(const struct md__daemon *d, const struct md__domain *dom, enum md__ctr c)
{
	uint64_t sum = 0;
	for (const struct md__agent *a = d->agents; a; a = a->next) {
		if (a->dom != dom || a->ncounters <= (uint32_t)c)
			continue;
		uint64_t v = a->counters[c];
		sum = v > (uint64_t)INT64_MAX - sum ? (uint64_t)INT64_MAX : sum + v;	/* sum <= INT64_MAX */
	}
	return (json_int_t)sum;
}

/* The pages the domain's agents map from their own fill strips, less the
 * strips' pages (with memdedupd, an agent's own pool holds only those). */
static json_int_t agents_fill_saved(const struct md__daemon *d, const struct md__domain *dom)
{
	uint64_t sum = 0;
	for (const struct md__agent *a = d->agents; a; a = a->next) {
		if (a->dom != dom || a->ncounters <= (uint32_t)MD_CTR_FILL_MAPPED)
			continue;
		uint64_t mapped = a->counters[MD_CTR_FILL_MAPPED], strips = a->counters[MD_CTR_POOL_PAGES];
		uint64_t v = mapped > strips ? mapped - strips : 0;
		sum = v > (uint64_t)INT64_MAX - sum ? (uint64_t)INT64_MAX : sum + v;
	}
	return (json_int_t)sum;
}

/* KSM's general_profit: the memory saved (the pages sharing a pool page,
 * the zero pages dropped, as KSM counts the zero pages it places, and the
 * pages mapped from the agents' fill strips beyond the strips) less the
 * daemon's bookkeeping. Each term is bounded so that their sum cannot
 * overflow: the agents' counters are their word. */
static json_int_t domain_profit(const struct md__daemon *d, const struct md__domain *dom)
{
	json_int_t zero = agents_sum(d, dom, MD_CTR_ZERO_PAGES), fill = agents_fill_saved(d, dom);
	zero = zero > INT64_MAX / MD_MSG_PAGE / 4 ? INT64_MAX / MD_MSG_PAGE / 4 : zero;
	fill = fill > INT64_MAX / MD_MSG_PAGE / 4 ? INT64_MAX / MD_MSG_PAGE / 4 : fill;
	return (domain_sharing(dom) + zero + fill) * MD_MSG_PAGE - domain_meta(dom);
}

static json_int_t add_sat(json_int_t x, json_int_t y)
{
	return x > INT64_MAX - y ? INT64_MAX : x + y;
}

/* The agents' counters of domain_ctrs in the n domains of dv added up, into
 * o under their names. */
static void sums_json(json_t *o, const struct md__daemon *d, const struct md__domain *const *dv, size_t n)
{
	for (size_t i = 0; i < NDOMAIN_CTRS; i++) {
		json_int_t sum = 0;
		for (size_t j = 0; j < n; j++)
			sum = add_sat(sum, agents_sum(d, dv[j], domain_ctrs[i]));
		json_object_set_new(o, md__ctr_name(domain_ctrs[i]), json_integer(sum));
	}
}

static json_t *domain_json(const struct md__daemon *d, const struct md__domain *dom)
{
	json_t *o = json_object();
	json_int_t live = (json_int_t)md__pool_live(&dom->pool);
	if (!o)
		return NULL;
	json_object_set_new(o, "id", json_integer(dom->id));
	json_object_set_new(o, "name", json_string(dom->name));
	json_object_set_new(o, "uid", json_integer(dom->uid));
	/* 64 random bits: a string, as the agent's log says it (a JSON
	 * integer here is signed, and was negative for half the pools). */
	char gen[24];
	snprintf(gen, sizeof(gen), "%llu", (unsigned long long)dom->generation);
	json_object_set_new(o, "generation", json_string(gen));
	json_object_set_new(o, "pool_slots", json_integer((json_int_t)dom->pool.max_pages));
	json_object_set_new(o, "pool_live_pages", json_integer(live));
	json_object_set_new(o, "pool_bytes", json_integer(live * MD_MSG_PAGE));
	json_object_set_new(o, "index_entries", json_integer((json_int_t)dom->index.live));
	json_object_set_new(o, "sighting_slots", json_integer((json_int_t)dom->seen_cap));
	json_object_set_new(o, "read_slots", json_integer((json_int_t)dom->reads_cap));
	json_object_set_new(o, "read_pairs", json_integer((json_int_t)dom->read_pairs));
	json_object_set_new(o, "read_named", json_integer((json_int_t)dom->read_named));
	json_object_set_new(o, "pages_shared", json_integer(live));
	json_object_set_new(o, "pages_sharing", json_integer(domain_sharing(dom)));
	json_object_set_new(o, "general_profit", json_integer(domain_profit(d, dom)));
	sums_json(o, d, &dom, 1);
	json_object_set_new(o, "references", json_integer((json_int_t)(dom->refs_total - dom->refs_draining)));
	json_object_set_new(o, "references_draining", json_integer((json_int_t)dom->refs_draining));
	/* Records of processes that live: those gone only wait for their
	 * references to go. */
	json_object_set_new(o, "agents", json_integer((json_int_t)(dom->nagents - dom->nexited)));
	json_object_set_new(o, "published", json_integer((json_int_t)dom->pool.published));
	json_object_set_new(o, "freed", json_integer((json_int_t)dom->pool.freed));
	json_object_set_new(o, "unpunched", json_integer((json_int_t)dom->pool.unpunched));
	json_object_set_new(o, "publish_full", json_integer((json_int_t)dom->publish_full));
	return o;
}

/* An agent's counter i as the CLI shows its own: JSON's integers end at
 * 2^63 - 1, where a larger one (a damaged agent's) stops; the general
 * profit is signed. */
static json_t *counter_json(uint32_t i, uint64_t v)
{
	if (i == MD_CTR_GENERAL_PROFIT)
		return json_integer((json_int_t)(int64_t)v);
	return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static json_t *agent_json(const struct md__daemon *d, const struct md__agent *a)
{
	json_t *o = json_object(), *ctr = json_array(), *named = json_object();
	if (!o || !ctr || !named) {
		json_decref(o), json_decref(ctr), json_decref(named);
		return NULL;
	}
	json_object_set_new(o, "pid", json_integer(a->pid));
	json_object_set_new(o, "number", json_integer(a->num));
	json_object_set_new(o, "uid", json_integer(a->uid));
	json_object_set_new(o, "domain", json_string(a->dom->name));
	json_object_set_new(o, "domain_id", json_integer(a->dom->id));
	json_object_set_new(o, "connected", json_boolean(a->conn != NULL));
	/* As its WELCOME says it (server.c): the daemon's pause, its own, or
	 * an unmerge, each held until a RESUME reaches it. */
	json_object_set_new(o, "paused", json_boolean((d->paused && !a->resumed_alone) || a->paused || a->unmerged));
	json_object_set_new(o, "unmerged", json_boolean(a->unmerged));
	json_object_set_new(o, "references", json_integer((json_int_t)a->nrefs));
	json_object_set_new(o, "requests", json_integer((json_int_t)a->requests));
	json_object_set_new(o, "hellos", json_integer((json_int_t)a->hellos));
	/* Its part of the tunables as last told (SHARE; null: none yet), and
	 * what its lookups found lately, which the part follows. */
	json_object_set_new(o, "rate_part", a->share_sent ? json_real((double)a->share_sent / MD_SHARE_ALL) :
			    json_null());
	json_object_set_new(o, "found_recent", json_integer(a->found_recent > INT64_MAX ? INT64_MAX :
							  (json_int_t)a->found_recent));
	for (uint32_t i = 0; i < a->ncounters; i++) {
		json_array_append_new(ctr, counter_json(i, a->counters[i]));
		/* The stats-file layout, where the agent sent it: names too. */
		if (i < MD_CTR_COUNT)
			json_object_set_new(named, md__ctr_name((enum md__ctr)i), counter_json(i, a->counters[i]));
	}
	json_object_set_new(o, "counters", ctr);
	json_object_set_new(o, "counters_named", named);
	json_object_set_new(o, "report_age_seconds", a->reported_ms ?
			    json_real((double)(md__now_ms() - a->reported_ms) / 1000.0) :
			    json_null());
	return o;
}

/* Appends o to list if the page has room for it (always the page's first
 * item, so every page makes progress); 0 when it did not fit, -1 when
 * memory is short. */
static int page_append(json_t *list, json_t *o, size_t *used, int *items)
{
	size_t len = json_dumpb(o, NULL, 0, JSON_COMPACT) + 1;
	if (*items && *used + len > PAGE_ITEMS_MAX) {
		json_decref(o);
		return 0;
	}
	if (json_array_append_new(list, o) != 0)
		return -1;
	*used += len;
	(*items)++;
	return 1;
}

int md__status_json(struct md__daemon *d, uid_t uid, uint32_t domain_from, uint32_t agent_from,
		    char **json, size_t *len)
{
	json_t *next = NULL, *root = json_object(), *daemon = json_object(), *tun = json_object();
	json_t *domains = json_array(), *agents = json_array(), *totals = json_object();
	json_int_t t_live = 0, t_sharing = 0, t_profit = 0;
	size_t ndom = 0, nag = 0, used = 0;
	struct md__domain **dv = NULL;
	struct md__agent **av = NULL;
	int items = 0, err = -ENOMEM;

	*json = NULL;
	if (!root || !daemon || !tun || !domains || !agents || !totals) {
		json_decref(daemon), json_decref(tun);
		json_decref(domains), json_decref(agents), json_decref(totals);
		goto free_root;
	}
	json_object_set_new(root, "daemon", daemon);
	json_object_set_new(root, "domains", domains);
	json_object_set_new(root, "agents", agents);
	json_object_set_new(root, "totals", totals);
	json_object_set_new(daemon, "pid", json_integer(getpid()));
	json_object_set_new(daemon, "uptime_seconds",
			    json_real((double)(md__now_ms() - d->start_ms) / 1000.0));
	json_object_set_new(daemon, "protocol_version", json_integer(MD_MSG_VERSION));
	json_object_set_new(daemon, "paused", json_boolean(d->paused));
	json_object_set_new(tun, "pages_to_scan", json_integer(d->tun.pages_to_scan));
	json_object_set_new(tun, "sleep_millisecs", json_integer(d->tun.sleep_millisecs));
	json_object_set_new(tun, "cpu_percent", json_integer(d->tun.cpu_percent));
	json_object_set_new(tun, "order", json_string(d->tun.order == MD_ORDER_RANDOM ? "random" : "linear"));
	json_object_set_new(tun, "hint_ratio", json_integer(d->tun.hint_ratio));
	json_object_set_new(daemon, "tunables", tun);

	/* What the requester sees, in the order pages go through it; the
	 * totals are over all of it, on every page. */
	for (struct md__domain *dom = d->domains; dom; dom = dom->next)
		ndom += visible(d, uid, dom->uid);
	for (struct md__agent *a = d->agents; a; a = a->next)
		nag += visible(d, uid, a->uid);
	dv = calloc(ndom + 1, sizeof(*dv));
	av = calloc(nag + 1, sizeof(*av));
	if (!dv || !av)
		goto free_vectors;
	ndom = nag = 0;
	for (struct md__domain *dom = d->domains; dom; dom = dom->next)
		if (visible(d, uid, dom->uid))
			dv[ndom++] = dom;
	for (struct md__agent *a = d->agents; a; a = a->next)
		if (visible(d, uid, a->uid))
			av[nag++] = a;
	qsort(dv, ndom, sizeof(*dv), by_domain_id);
	qsort(av, nag, sizeof(*av), by_agent_pid);

	/* A page lists domains from domain_from on (by id), then agents
	 * from agent_from on (by pid: one agent a process), while they fit;
	 * "next" says where the next page starts (domain UINT32_MAX: past
	 * every domain, ids being smaller). */
	for (size_t i = 0; i < ndom; i++) {
		t_live += (json_int_t)md__pool_live(&dv[i]->pool);
		t_sharing += domain_sharing(dv[i]);
		/* Saturated either way: agents' counters are their word. */
		json_int_t dp = domain_profit(d, dv[i]);
		if (__builtin_add_overflow(t_profit, dp, &t_profit))
			t_profit = dp < 0 ? INT64_MIN : INT64_MAX;
	}
	for (size_t i = 0; i < ndom && !next; i++) {
		if (dv[i]->id < domain_from)
			continue;
		json_t *o = domain_json(d, dv[i]);
		if (!o)
			goto free_vectors;
		int fit = page_append(domains, o, &used, &items);
		if (fit < 0 || (!fit && !(next = json_pack("{s:I,s:I}", "domain", (json_int_t)dv[i]->id,
							   "agent", (json_int_t)0))))
			goto free_vectors;
	}
	for (size_t i = 0; i < nag && !next; i++) {
		if ((uint32_t)av[i]->pid < agent_from)
			continue;
		json_t *o = agent_json(d, av[i]);
		if (!o)
			goto free_vectors;
		int fit = page_append(agents, o, &used, &items);
		if (fit < 0 || (!fit && !(next = json_pack("{s:I,s:I}", "domain", (json_int_t)UINT32_MAX,
							   "agent", (json_int_t)av[i]->pid))))
			goto free_vectors;
	}
	json_object_set_new(root, "next", next ? next : json_null());
	json_object_set_new(totals, "domains", json_integer((json_int_t)ndom));
	json_object_set_new(totals, "agents", json_integer((json_int_t)nag));
	json_object_set_new(totals, "pool_live_pages", json_integer(t_live));
	json_object_set_new(totals, "pool_bytes", json_integer(t_live * MD_MSG_PAGE));
	json_object_set_new(totals, "pages_shared", json_integer(t_live));
	json_object_set_new(totals, "pages_sharing", json_integer(t_sharing));
	json_object_set_new(totals, "general_profit", json_integer(t_profit));
	sums_json(totals, d, (const struct md__domain *const *)dv, ndom);
	*json = json_dumps(root, JSON_COMPACT);
	if (*json) {
		*len = strlen(*json);
		err = 0;
	}
free_vectors:
	if (err)
		json_decref(next);	/* not in the document yet */
	free(dv);
	free(av);
free_root:
	json_decref(root);
	return err;
}
