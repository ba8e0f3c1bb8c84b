/*
 * status_daemon.c - the daemon's part of `memdedup status`: its STATUS
 * document (domains, pools, agents, totals), parsed.
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>

#include "cli.h"
#include "client.h"

/* Until cli.h declares it. */
int md__status_daemon(json_t **out);

/* 0 and *out (the caller's reference); -ENOENT or -ECONNREFUSED when no
 * daemon runs, other -errno when it did not answer properly. */
int md__status_daemon(json_t **out)
{
	struct md__client *c;
	uint32_t len = MD_MSG_MAX;
	unsigned type;
	int err;

	*out = NULL;
	err = md__client_connect(&c, NULL);
	if (err)
		return err;
	char *buf = malloc(MD_MSG_MAX);
	if (!buf) {
		err = -ENOMEM;
		goto free_client;
	}
	err = md__client_request(c, MD_MSG_STATUS, NULL, 0, buf, &len, &type);
	if (err)
		goto free_buf;
	if (type != MD_MSG_STATUS_R) {
		err = -EPROTO;
		goto free_buf;
	}
	/* Untrusted text: jansson validates it; we want an object. */
	*out = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
	if (!*out || !json_is_object(*out)) {
		json_decref(*out);
		*out = NULL;
		err = -EBADMSG;
	}
free_buf:
	free(buf);
free_client:
	md__client_free(c);
	return err;
}
