/*
 * status_daemon.c - the daemon's part of `memdedup status`: its STATUS
 * document (domains, pools, agents, totals), parsed.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "client.h"
#include "status_daemon.h"

/* Pages a document may take: one domain or agent a page at least, and
 * root sees at most 4,095 numbered agents' worth of each; more is a daemon
 * that does not move on. */
#define STATUS_PAGES_MAX 65536

/* 1 if page has the shape `status` reads: "domains" and "agents" arrays
 * of objects, each domain with the integers and the name the table shows.
 * A page that does not (a daemon of another version, or not ours) is no
 * proper answer, not a host without domains. */
static int page_valid(json_t *page)
{
	static const char *const dom_ints[] = { "id", "uid", "agents", "pool_live_pages", "pages_sharing",
						"general_profit" };
	json_t *doms = json_object_get(page, "domains"), *agents = json_object_get(page, "agents"), *v;
	size_t i;
	if (!json_is_array(doms) || !json_is_array(agents))
		return 0;
	json_array_foreach(agents, i, v)
		if (!json_is_object(v))
			return 0;
	json_array_foreach(doms, i, v) {
		if (!json_is_object(v) || !json_is_string(json_object_get(v, "name")))
			return 0;
		for (size_t k = 0; k < sizeof(dom_ints) / sizeof(dom_ints[0]); k++)
			if (!json_is_integer(json_object_get(v, dom_ints[k])))
				return 0;
	}
	return 1;
}

/* The page of the document from (domain_from, agent_from), its text in
 * buf (*len bytes, not yet parsed); an ERROR's status, with its text in
 * why. */
static int status_page(struct md__client *c, char *buf, uint32_t domain_from,
		       uint32_t agent_from, uint32_t *len, char *why, size_t size)
{
	static struct md__msg m;
	unsigned char req[MD_MSG_HDR_SIZE + 8];
	unsigned type;
	*len = MD_MSG_MAX;
	m.hdr.type = MD_MSG_STATUS;
	m.u.status = (struct md__msg_status){ domain_from, agent_from };
	ssize_t n = md__msg_encode(&m, req, sizeof(req));
	if (n < 0)
		return (int)n;
	int err = md__client_request(c, MD_MSG_STATUS, req + MD_MSG_HDR_SIZE,
				     (uint32_t)n - MD_MSG_HDR_SIZE, buf, len, &type);
	if (err)
		return err;
	/* A refusal (past the per-user limit, say) is the daemon's to say. */
	if (type == MD_MSG_ERROR) {
		err = md__msg_decode_payload(type, buf, *len, &m);
		if (err)
			return err;
		if (m.u.text.status >= 0)
			return -EPROTO;
		snprintf(why, size, "%s", m.u.text.text);
		return m.u.text.status;
	}
	if (type != MD_MSG_STATUS_R)
		return -EPROTO;
	return 0;
}

/* Where the page after this one starts: 1 and the cursor, 0 at the end,
 * -EBADMSG when "next" is malformed or does not move forward. */
static int status_next(json_t *page, uint32_t *domain_from, uint32_t *agent_from)
{
	json_t *next = json_object_get(page, "next");
	json_int_t dom, agent;
	if (!next || json_is_null(next))
		return 0;
	if (json_unpack(next, "{s:I,s:I}", "domain", &dom, "agent", &agent) != 0 ||
	    dom < 0 || dom > UINT32_MAX || agent < 0 || agent > UINT32_MAX)
		return -EBADMSG;
	if ((uint32_t)dom < *domain_from ||
	    ((uint32_t)dom == *domain_from && (uint32_t)agent <= *agent_from))
		return -EBADMSG;
	*domain_from = (uint32_t)dom;
	*agent_from = (uint32_t)agent;
	return 1;
}

/* A page's text as memdedupd sent it (untrusted: any bytes, len of them)
 * into *doc, the document so far (NULL before the first page, which
 * becomes it: the daemon and the totals are the first page's): parsed,
 * checked by page_valid, its domains and agents appended. 1 and the cursor
 * of the next page in *domain_from, *agent_from; 0 when it was the last;
 * -EBADMSG when it is no proper page or its "next" does not move on (*doc
 * left as it was, the caller's to free). Apart from the request so that
 * the fuzzer (fuzz/fuzz_status.c) feeds it the pages a daemon could. */
int md__status_page_merge(json_t **doc, const char *text, size_t len, uint32_t *domain_from,
			  uint32_t *agent_from)
{
	/* Untrusted text: jansson validates it; we want an object. */
	json_t *page = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
	if (!page || !json_is_object(page) || !page_valid(page)) {
		json_decref(page);
		return -EBADMSG;
	}
	int more = status_next(page, domain_from, agent_from);
	if (more < 0) {
		json_decref(page);
		return more;
	}
	json_object_del(page, "next");
	if (!*doc) {
		*doc = page;
		return more;
	}
	const char *keys[] = { "domains", "agents" };
	for (int k = 0; k < 2; k++) {
		json_t *to = json_object_get(*doc, keys[k]), *from = json_object_get(page, keys[k]);
		if (json_array_extend(to, from)) {	/* both arrays: page_valid */
			json_decref(page);
			return -EBADMSG;
		}
	}
	json_decref(page);
	return more;
}

/* On c (cli.h): the document's pages, merged; a refusal's text in why. */
int md__status_daemon_on(struct md__client *c, json_t **out, char *why, size_t size)
{
	uint32_t domain_from = 0, agent_from = 0;
	int err = 0, more = 1;

	*out = NULL;
	why[0] = '\0';
	char *buf = malloc(MD_MSG_MAX);
	if (!buf)
		return -ENOMEM;
	for (int pages = 0; more; pages++) {
		uint32_t len;
		err = pages < STATUS_PAGES_MAX ? status_page(c, buf, domain_from, agent_from, &len, why, size)
					       : -EBADMSG;
		if (err)
			goto free_doc;
		more = md__status_page_merge(out, buf, len, &domain_from, &agent_from);
		if (more < 0) {
			err = more;
			goto free_doc;
		}
	}
	goto free_buf;
free_doc:
	json_decref(*out);
	*out = NULL;
	if (!why[0] && *md__client_refusal(c))
		snprintf(why, size, "refused the connection: %s", md__client_refusal(c));
free_buf:
	free(buf);
	return err;
}

/* From the daemon at sock (NULL: the default): 0 and *out (the caller's
 * reference); -ENOENT or -ECONNREFUSED when no daemon runs, other -errno
 * when it did not answer properly or refused (its text in why, else why is
 * ""). A document larger than a message comes in pages: the first gives
 * the daemon and the totals, every page its domains and agents, appended
 * here. */
int md__status_daemon(const char *sock, json_t **out, char *why, size_t size)
{
	struct md__client *c;

	*out = NULL;
	why[0] = '\0';
	int err = md__client_connect(&c, sock);
	if (err)
		return err;
	md__client_set_quiet(c, 1);	/* `status` says what failed */
	err = md__status_daemon_on(c, out, why, size);
	md__client_free(c);
	return err;
}
