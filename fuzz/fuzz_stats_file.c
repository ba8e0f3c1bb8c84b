/* fuzz_stats_file.c - the statistics file parser on arbitrary bytes. A file
 * in the run directory may be stale, truncated, of another version or hostile:
 * it must be rejected or read, never crash the reader.
 *
 * The input goes to the parser in a buffer of exactly its size (aligned, as
 * the reader's is): a read past the bytes given is a heap overflow that
 * AddressSanitizer reports. (Copied into a whole struct md__stats_file on the
 * stack, as before, a parser that trusted a truncated file's counter count
 * read the struct's own bytes, and nothing noticed.) */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);

/* Which counter counts the inputs that parsed had (replay only): below
 * this version's, its own, above it. */
static unsigned parsed_older, parsed_current, parsed_newer;

/* Called by the replay after the corpus: a corpus whose files all have
 * fewer counters than this version (seeds made before counters were
 * added) never reads the newest ones, nor takes the branch of a newer
 * agent's file. `make fuzz-seeds` writes seeds of this version. */
int md_fuzz_replay_check(void)
{
	if (parsed_current && parsed_newer && parsed_older)
		return 0;
	fprintf(stderr, "fuzz_stats_file: no input of the corpus parses with %s %u counters "
		"(MD_CTR_COUNT; run make fuzz-seeds)\n",
		!parsed_current ? "exactly" : !parsed_newer ? "more than" : "fewer than",
		(unsigned)MD_CTR_COUNT);
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct md__stats_snapshot s;
	void *f = malloc(size ? size : 1);
	if (!f)
		return 0;
	memcpy(f, data, size);
	if (md__stats_parse(f, size, &s) == 0) {
		uint32_t n, version, header_size;
		if (memchr(s.command, '\0', sizeof(s.command)) == NULL)
			__builtin_trap();
		memcpy(&n, (const char *)f + offsetof(struct md__stats_file, ncounters), sizeof(n));
		memcpy(&version, (const char *)f + offsetof(struct md__stats_file, version), sizeof(version));
		memcpy(&header_size, (const char *)f + offsetof(struct md__stats_file, header_size),
		       sizeof(header_size));
		/* Only a file of this layout is read, of a live agent's pid,
		 * with a sane count of counters. */
		if (memcmp((const char *)f + offsetof(struct md__stats_file, magic), MD_STATS_MAGIC,
			   sizeof(((struct md__stats_file *)0)->magic)) != 0 || version != MD_STATS_VERSION || header_size != offsetof(struct md__stats_file, counters) ||
		    n == 0 || n > 4096 || s.pid == 0)
			__builtin_trap();
		parsed_older += n < MD_CTR_COUNT;
		parsed_current += n == MD_CTR_COUNT;
		parsed_newer += n > MD_CTR_COUNT;
	}
	free(f);
	return 0;
}
