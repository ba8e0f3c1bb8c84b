/* fuzz_state.c - memdedupd's kept state (RUN_DIR/memdedupd.state, read at
 * start: daemon/state.c) on arbitrary bytes. The file is the daemon's own,
 * but a crash, a full disk or an editor may leave anything there: it must
 * be read whole or refused, never crash the daemon's start, and what it
 * takes must be values SET would take.
 *
 * As the loader reads it: at most 1 KiB, no NUL, then NUL-terminated in a
 * buffer of exactly that size (AddressSanitizer sees an overread). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);

static unsigned taken, refused;	/* replay only: the corpus takes both ways */

int md_fuzz_replay_check(void)
{
	if (taken && refused)
		return 0;
	fprintf(stderr, "fuzz_state: no input of the corpus is %s\n", taken ? "refused" : "taken");
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 1024 || memchr(data, 0, size))
		return 0;
	char *text = malloc(size + 1), why[MD_TEXT_MAX + 64];
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = 0;
	struct md__tunables t, def;
	md__tunables_default(&t);
	def = t;
	int paused = 0;
	why[0] = 0;
	if (md__state_parse(text, &paused, &t, why, sizeof(why)) == 0) {
		taken++;
		/* Each value one SET would take: written back as text and
		 * parsed again, the same. */
		char back[256], msg[MD_TEXT_MAX + 1];
		struct md__tunables u = def;
		snprintf(back, sizeof(back), "%u", t.pages_to_scan);
		if (paused != 0 && paused != 1)
			abort();
		if (md__tunable_set(&u, "pages_to_scan", back, msg, sizeof(msg)) != 0)
			abort();
		snprintf(back, sizeof(back), "%u", t.sleep_millisecs);
		if (md__tunable_set(&u, "sleep_millisecs", back, msg, sizeof(msg)) != 0)
			abort();
		snprintf(back, sizeof(back), "%u", t.cpu_percent);
		if (md__tunable_set(&u, "cpu_percent", back, msg, sizeof(msg)) != 0)
			abort();
		snprintf(back, sizeof(back), "%u", t.hint_ratio);
		if (md__tunable_set(&u, "hint_ratio", back, msg, sizeof(msg)) != 0)
			abort();
		if (md__tunable_set(&u, "order", t.order == MD_ORDER_RANDOM ? "random" : "linear", msg,
				    sizeof(msg)) != 0 || memcmp(&u, &t, sizeof(u)) != 0)
			abort();
	} else {
		refused++;
		/* Refused: nothing taken, and why said. */
		if (memcmp(&t, &def, sizeof(t)) != 0 || paused != 0 || !why[0] || !memchr(why, 0, sizeof(why)))
			abort();
	}
	free(text);
	return 0;
}
