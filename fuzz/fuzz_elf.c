/* fuzz_elf.c - the ELF checks of `memdedup run` (cli/elfcheck.c) on
 * arbitrary bytes. MEMDEDUP_PRELOAD names any file the operator likes, and
 * the command any program: cut short, not ELF, or with headers pointing
 * anywhere; it must be told apart from the agent (or from a program the
 * agent loads into), never crash the CLI. The input goes through a memfd,
 * as the checks read a file with pread. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
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
		int kind = md__elf_exec_kind(fd);
		if (kind < MD_ELF_UNKNOWN || kind > MD_ELF_FOREIGN)
			__builtin_trap();
		char interp[64];
		memset(interp, 'x', sizeof(interp));
		if (md__elf_interp(fd, interp, sizeof(interp)) == 1 && !memchr(interp, '\0', sizeof(interp)))
			__builtin_trap();	/* a path it said it found must end within out */
	}
	close(fd);
	return 0;
}
