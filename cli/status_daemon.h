/* status_daemon.h - the STATUS document's page merging (status_daemon.c),
 * outside the CLI only for its fuzz target (fuzz/fuzz_status.c). */
#ifndef MD_STATUS_DAEMON_H
#define MD_STATUS_DAEMON_H
#include <stddef.h>
#include <stdint.h>

struct json_t;
/* One STATUS_R page's text (any bytes: the daemon's word) into *doc (NULL
 * before the first page): 1 and the next page's cursor, 0 after the last
 * page, -EBADMSG when it is no proper page (*doc kept, the caller's to
 * free). */
int md__status_page_merge(struct json_t **doc, const char *text, size_t len,
			  uint32_t *domain_from, uint32_t *agent_from);
#endif
