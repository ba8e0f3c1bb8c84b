/* fuzz_elf.c - the ELF checks of `memdedup run` (cli/elfcheck.c) on
 * arbitrary bytes. MEMDEDUP_PRELOAD names any file the operator likes, and
 * the command any program: cut short, not ELF, or with headers pointing
 * anywhere; it must be told apart from the agent (or from a program the
 * agent loads into), never crash the CLI. The input goes through a memfd,
 * as the checks read a file with pread. */
#include <elf.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);

/* Inputs the check took for the agent, and others; programs whose
 * interpreter's path was read, and refused; 32-bit programs; programs the
 * kernel would refuse, cut short or malformed, and of those the 32-bit
 * ones (replay only). */
static unsigned named, not_named, interp_read, interp_refused, elf32, broken, broken32;

/* Called by the replay after the corpus: it must hold the agent's header
 * (`make fuzz-seeds`) as well as files refused, or the parse past the
 * headers goes unreplayed; programs of this machine whose interpreter is
 * read, and refused (x86-64's and AArch64's are in the seeds), and one
 * the kernel would refuse; a 32-bit one, and one refused. */
int md_fuzz_replay_check(void)
{
	int bad = 0;
	if (!named || !not_named) {
		fprintf(stderr, "fuzz_elf: no input of the corpus %s (run make fuzz-seeds)\n",
			named ? "is refused" : "has the agent's soname");
		bad = 1;
	}
#if defined(__x86_64__) || defined(__aarch64__)
	if (!interp_read || !interp_refused) {
		fprintf(stderr, "fuzz_elf: no program of the corpus has its interpreter %s (run make fuzz-seeds)\n",
			interp_read ? "refused" : "read");
		bad = 1;
	}
	if (!broken) {
		fprintf(stderr, "fuzz_elf: no program of the corpus is cut short or malformed (run make fuzz-seeds)\n");
		bad = 1;
	}
#endif
	if (!elf32) {
		fprintf(stderr, "fuzz_elf: no input of the corpus is a 32-bit program (run make fuzz-seeds)\n");
		bad = 1;
	}
	if (!broken32) {
		fprintf(stderr, "fuzz_elf: no 32-bit program of the corpus is cut short or malformed "
			"(run make fuzz-seeds)\n");
		bad = 1;
	}
	return bad;
}

/* md__elf_interp into a buffer filled with fill: its result. */
static int interp_with(int fd, char *out, size_t size, char fill)
{
	memset(out, fill, size);
	return md__elf_interp(fd, out, size);
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
		/* A loader's soname (memdedup run tells musl's from glibc's
		 * by it): a name found ends in its NUL within out; none is "". */
		char so[32];
		memset(so, 'x', sizeof(so));
		int sr = md__elf_soname(fd, so, sizeof(so));
		if (sr < -1 || sr > 1 || (sr == 1 && (!memchr(so, '\0', sizeof(so)) || !so[0])) ||
		    (sr == 0 && so[0]))
			__builtin_trap();
		int kind = md__elf_exec_kind(fd);
		if (kind < MD_ELF_UNKNOWN || kind > MD_ELF_BROKEN)
			__builtin_trap();
		int magic = size >= SELFMAG && memcmp(data, ELFMAG, SELFMAG) == 0;
		int class32 = magic && size > EI_CLASS && data[EI_CLASS] == ELFCLASS32;
		/* ld.so loads no 64-bit agent into a 32-bit program, which is
		 * left to the kernel (it may run it), not refused, unless it
		 * is cut short or malformed: no loader runs that one, and its
		 * whole header at least is needed. */
		if (class32) {
			if (kind != MD_ELF_32BIT && kind != MD_ELF_BROKEN)
				__builtin_trap();
			if (size < sizeof(Elf32_Ehdr) && kind != MD_ELF_BROKEN)
				__builtin_trap();
			if (kind == MD_ELF_32BIT)
				elf32++;
			else
				broken32++;
		}
		/* Only a file with the ELF magic is ELF at all; one whose
		 * header the file does not hold whole is refused (no program
		 * headers the kernel would take). */
		if (!magic && kind != MD_ELF_UNKNOWN)
			__builtin_trap();
		if (magic && !class32 && size < sizeof(Elf64_Ehdr) && kind != MD_ELF_BROKEN)
			__builtin_trap();
		if (kind == MD_ELF_BROKEN)
			broken++;
		/* Read twice, into buffers of different fills: the bytes the
		 * path took are where the two agree (p_filesz of them), and
		 * the last of those must be its NUL, as the kernel requires. */
		char a[64], b[64];
		int r = interp_with(fd, a, sizeof(a), 'x');
		if (interp_with(fd, b, sizeof(b), 'y') != r)
			__builtin_trap();
		if (r == 1) {
			size_t len = 0;
			while (len < sizeof(a) && a[len] == b[len])
				len++;
			if (len < 2 || a[len - 1] != '\0')
				__builtin_trap();	/* a path it said it found must end, in its NUL, within out */
			if (kind != MD_ELF_DYNAMIC)
				__builtin_trap();	/* nor is a program with one static, foreign or refused */
			interp_read++;
		} else if (kind == MD_ELF_DYNAMIC) {
			interp_refused++;
		}
	}
	close(fd);
	return 0;
}
