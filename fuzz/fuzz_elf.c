/* fuzz_elf.c - the ELF soname check of `memdedup run` (cli/elfcheck.c) on
 * arbitrary bytes. MEMDEDUP_PRELOAD names any file the operator likes: cut
 * short, not ELF, or with headers pointing anywhere; it must be told apart
 * from the agent, never crash the CLI. The input goes through a memfd, as
 * the check reads a file with pread. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);

/* Inputs the check took for the agent, and others (replay only). */
static unsigned named, not_named;

/* Called by the replay after the corpus: it must hold the agent's header
 * (`make fuzz-seeds`) as well as files refused, or the parse past the
 * headers goes unreplayed. */
int md_fuzz_replay_check(void)
{
	if (named && not_named)
		return 0;
	fprintf(stderr, "fuzz_elf: no input of the corpus %s (run make fuzz-seeds)\n",
		named ? "is refused" : "has the agent's soname");
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fd = memfd_create("fuzz-elf", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) == (ssize_t)size) {
		if (md__elf_soname_is(fd, "libmemdedup-preload.so") == 1)
			named++;
		else
			not_named++;
	}
	close(fd);
	return 0;
}
