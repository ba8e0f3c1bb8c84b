/* fuzz_stats_file.c - the statistics file parser on arbitrary bytes. A file
 * in the run directory may be stale, truncated, of another version or hostile:
 * it must be rejected or read, never crash the reader. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "stats_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct md__stats_file f;
	struct md__stats_snapshot s;
	/* The reader reads at most one struct's worth into an aligned buffer. */
	if (size > sizeof(f))
		size = sizeof(f);
	memcpy(&f, data, size);
	if (md__stats_parse(&f, size, &s) == 0 && memchr(s.command, '\0', sizeof(s.command)) == NULL)
		__builtin_trap();
	return 0;
}
