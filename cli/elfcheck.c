/*
 * elfcheck.c - whether a file is the ELF shared object of a given soname:
 * how `memdedup run` tells the agent (MEMDEDUP_PRELOAD) from any other
 * library, which ld.so would preload without a word (or, a
 * position-independent executable, refuse with a warning), the command
 * then running without the agent. The file is the operator's, perhaps cut
 * short or not ELF at all: every offset and count read from it is bounded
 * before use, and nothing is allocated.
 */
#include <elf.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* The file offset of the virtual address v (the PT_LOAD segment of the n
 * program headers ph holding it), or -1. */
static off_t file_offset(const Elf64_Phdr *ph, size_t n, uint64_t v)
{
	for (size_t i = 0; i < n; i++)
		if (ph[i].p_type == PT_LOAD && v >= ph[i].p_vaddr && v - ph[i].p_vaddr < ph[i].p_filesz &&
		    ph[i].p_offset <= (uint64_t)INT64_MAX - (v - ph[i].p_vaddr))
			return (off_t)(ph[i].p_offset + (v - ph[i].p_vaddr));
	return -1;
}

int md__elf_soname_is(int fd, const char *name)
{
	enum { PH_MAX = 64, DYN_MAX = 512, NAME_MAX_LEN = 255 };
	Elf64_Ehdr h;
	Elf64_Phdr ph[PH_MAX];
	Elf64_Dyn dyn[DYN_MAX];
	char got[NAME_MAX_LEN + 1];
	size_t len = strlen(name) + 1, ndyn = 0;

	if (len > sizeof(got) || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
	    memcmp(h.e_ident, ELFMAG, SELFMAG) != 0 || h.e_ident[EI_CLASS] != ELFCLASS64 || h.e_type != ET_DYN)
		return 0;
	size_t nph = h.e_phnum;
	if (h.e_phentsize != sizeof(Elf64_Phdr) || nph == 0 || nph > PH_MAX || h.e_phoff > (uint64_t)INT64_MAX ||
	    pread(fd, ph, nph * sizeof(ph[0]), (off_t)h.e_phoff) != (ssize_t)(nph * sizeof(ph[0])))
		return 0;
	for (size_t i = 0; i < nph; i++) {
		if (ph[i].p_type != PT_DYNAMIC)
			continue;
		ndyn = ph[i].p_filesz / sizeof(Elf64_Dyn);
		ndyn = ndyn < DYN_MAX ? ndyn : DYN_MAX;
		if (ph[i].p_offset > (uint64_t)INT64_MAX ||
		    pread(fd, dyn, ndyn * sizeof(dyn[0]), (off_t)ph[i].p_offset) != (ssize_t)(ndyn * sizeof(dyn[0])))
			return 0;
		break;
	}
	uint64_t strtab = 0, soname = UINT64_MAX;
	for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
		if (dyn[i].d_tag == DT_STRTAB)
			strtab = dyn[i].d_un.d_ptr;
		else if (dyn[i].d_tag == DT_SONAME)
			soname = dyn[i].d_un.d_val;
	}
	if (!strtab || soname > UINT64_MAX - strtab)
		return 0;
	off_t at = file_offset(ph, nph, strtab + soname);
	if (at < 0 || pread(fd, got, len, at) != (ssize_t)len)
		return 0;
	return memcmp(got, name, len) == 0;
}
