/* fuzz_status.c - `memdedup status` on whatever memdedupd's STATUS_R pages
 * say (cli/status_daemon.c). The daemon's socket may be anyone's who got
 * there first, or a daemon of another version: its pages must be merged
 * into the document or refused, never crash the CLI, and what is merged
 * must have the shape the table printed from it trusts.
 *
 * The input is the pages' texts one after another, each ended by a NUL
 * byte (a STATUS_R is a JSON document without NUL, docs/protocol.md), the
 * last by the input's end. They are merged in order as the CLI merges the
 * replies it gets, from the cursor (0, 0), until one is refused or says it
 * is the last; pages past that are what the CLI never asks for. Input that
 * runs out while "next" points on is a daemon that stopped answering: the
 * document so far is dropped, as the CLI drops it. Each page goes to the
 * parser in a buffer of exactly its size, so an overread is AddressSanitizer's
 * to see, not the next page's bytes. */
#include <errno.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "printable.h"
#include "status_daemon.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);

/* What the inputs came to (replay only): a document of one page, of
 * several, a page refused. */
static unsigned whole_one, whole_many, refused;

/* Called by the replay after the corpus: without a document of several
 * pages the appending goes unreplayed, without a refusal the checks. */
int md_fuzz_replay_check(void)
{
	if (whole_one && whole_many && refused)
		return 0;
	fprintf(stderr, "fuzz_status: no input of the corpus %s\n",
		!whole_one ? "is a whole document of one page" :
		!whole_many ? "is a whole document of several pages" : "has a page refused");
	return 1;
}

/* What page_valid promised of every page must hold of the merged
 * document: cmd_status.c prints its domains without checking again. */
static void check_doc(json_t *doc)
{
	static const char *const dom_ints[] = { "id", "uid", "agents", "pool_live_pages", "pages_sharing",
						"general_profit" };
	json_t *doms = json_object_get(doc, "domains"), *agents = json_object_get(doc, "agents"), *v;
	size_t i;
	if (!json_is_object(doc) || !json_is_array(doms) || !json_is_array(agents) ||
	    json_object_get(doc, "next"))
		__builtin_trap();
	json_array_foreach(agents, i, v)
		if (!json_is_object(v))
			__builtin_trap();
	json_array_foreach(doms, i, v) {
		if (!json_is_object(v) || !json_is_string(json_object_get(v, "name")))
			__builtin_trap();
		for (size_t k = 0; k < sizeof(dom_ints) / sizeof(dom_ints[0]); k++)
			if (!json_is_integer(json_object_get(v, dom_ints[k])))
				__builtin_trap();
	}
}

/* What `memdedup status` does with a whole document: the table's names
 * made printable, and --json's dump. */
static void use_doc(json_t *doc)
{
	json_t *d;
	size_t i;
	json_array_foreach(json_object_get(doc, "domains"), i, d) {
		char shown[17];
		const char *name = md__printable(json_string_value(json_object_get(d, "name")), shown,
						 sizeof(shown));
		if (!name || strlen(name) >= sizeof(shown))
			__builtin_trap();
	}
	char *text = json_dumps(doc, JSON_INDENT(1));
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *doc = NULL;
	uint32_t domain_from = 0, agent_from = 0;
	size_t off = 0;
	unsigned pages = 0;
	int more = 1;

	for (;;) {
		const uint8_t *end = memchr(data + off, '\0', size - off);
		size_t len = end ? (size_t)(end - (data + off)) : size - off;
		char *text = malloc(len ? len : 1);
		if (!text)
			break;
		memcpy(text, data + off, len);
		uint32_t dom0 = domain_from, agent0 = agent_from;
		int first = !doc;
		more = md__status_page_merge(&doc, text, len, &domain_from, &agent_from);
		free(text);
		pages++;
		if (more != 1 && more != 0 && more != -EBADMSG)
			__builtin_trap();
		/* The cursor moves forward only (a daemon going round in
		 * circles would keep the CLI asking), and only on a page taken. */
		if (more == 1 && (domain_from < dom0 || (domain_from == dom0 && agent_from <= agent0)))
			__builtin_trap();
		if (more == 0 && (domain_from != dom0 || agent_from != agent0))
			__builtin_trap();
		/* A refused first page leaves no document behind. */
		if (more < 0 && first && doc)
			__builtin_trap();
		if (more <= 0 || !end)
			break;
		check_doc(doc);
		off += len + 1;
	}
	if (more == 0) {
		check_doc(doc);
		use_doc(doc);
		if (pages > 1)
			whole_many++;
		else
			whole_one++;
	} else if (more < 0) {
		refused++;
	}
	json_decref(doc);
	return 0;
}
