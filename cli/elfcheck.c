/*
 * elfcheck.c - what `memdedup run` must know of ELF files before it runs
 * a command: whether a file is the ELF shared object of a given soname
 * (how it tells the agent, MEMDEDUP_PRELOAD, from any other library, which
 * ld.so would preload without a word, or, a position-independent
 * executable, refuse with a warning), whether ld.so would load the
 * agent into the command at all (not into a static executable, nor into
 * another machine's or a 32-bit one: either way the command would run
 * without the agent), and whether the kernel would run it at all (not an
 * ELF file cut short or malformed). The files are the operator's, perhaps cut short or
 * not ELF at all: every offset and count read from them is bounded before
 * use, and nothing is allocated.
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

enum { PH_MAX = 64, DYN_MAX = 512, NAME_MAX_LEN = 255 };

/* The headers of a 64-bit ELF file of type ET_EXEC or ET_DYN: the file's,
 * its program headers (PH_MAX at most: more is taken as malformed), and
 * its dynamic section's first DYN_MAX entries (none without one). */
struct elf_heads {
	Elf64_Ehdr h;
	Elf64_Phdr ph[PH_MAX];
	Elf64_Dyn dyn[DYN_MAX];
	size_t nph, ndyn;
};

/* 0, or -1: not such a file, cut short or malformed. */
static int read_heads(int fd, struct elf_heads *e)
{
	Elf64_Ehdr *h = &e->h;
	e->ndyn = 0;
	if (pread(fd, h, sizeof(*h), 0) != (ssize_t)sizeof(*h) || memcmp(h->e_ident, ELFMAG, SELFMAG) != 0 ||
	    h->e_ident[EI_CLASS] != ELFCLASS64 || (h->e_type != ET_DYN && h->e_type != ET_EXEC))
		return -1;
	e->nph = h->e_phnum;
	if (h->e_phentsize != sizeof(Elf64_Phdr) || e->nph == 0 || e->nph > PH_MAX ||
	    h->e_phoff > (uint64_t)INT64_MAX ||
	    pread(fd, e->ph, e->nph * sizeof(e->ph[0]), (off_t)h->e_phoff) != (ssize_t)(e->nph * sizeof(e->ph[0])))
		return -1;
	for (size_t i = 0; i < e->nph; i++) {
		if (e->ph[i].p_type != PT_DYNAMIC)
			continue;
		size_t n = e->ph[i].p_filesz / sizeof(Elf64_Dyn);
		n = n < DYN_MAX ? n : DYN_MAX;
		if (e->ph[i].p_offset > (uint64_t)INT64_MAX ||
		    pread(fd, e->dyn, n * sizeof(e->dyn[0]), (off_t)e->ph[i].p_offset) != (ssize_t)(n * sizeof(e->dyn[0])))
			return -1;
		e->ndyn = n;
		break;
	}
	return 0;
}

/* The file offset of the DT_SONAME string of e, or -1 if it has none. */
static off_t soname_offset(const struct elf_heads *e)
{
	uint64_t strtab = 0, soname = UINT64_MAX;
	for (size_t i = 0; i < e->ndyn && e->dyn[i].d_tag != DT_NULL; i++) {
		if (e->dyn[i].d_tag == DT_STRTAB)
			strtab = e->dyn[i].d_un.d_ptr;
		else if (e->dyn[i].d_tag == DT_SONAME)
			soname = e->dyn[i].d_un.d_val;
	}
	if (!strtab || soname > UINT64_MAX - strtab)
		return -1;
	return file_offset(e->ph, e->nph, strtab + soname);
}

int md__elf_soname_is(int fd, const char *name)
{
	struct elf_heads e;
	char got[NAME_MAX_LEN + 1];
	size_t len = strlen(name) + 1;

	if (len > sizeof(got) || read_heads(fd, &e) != 0 || e.h.e_type != ET_DYN)
		return 0;
	off_t at = soname_offset(&e);
	if (at < 0 || pread(fd, got, len, at) != (ssize_t)len)
		return 0;
	return memcmp(got, name, len) == 0;
}

#if defined(__x86_64__)
#define OUR_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define OUR_MACHINE EM_AARCH64
#elif defined(__riscv)
#define OUR_MACHINE EM_RISCV
#elif defined(__powerpc64__)
#define OUR_MACHINE EM_PPC64
#elif defined(__s390x__)
#define OUR_MACHINE EM_S390
#endif

/* 1 if the kernel's ELF loader (fs/binfmt_elf.c) refuses the file fd of
 * this machine whose header is h before it maps anything: a type it does
 * not run, program headers it does not take or that the file does not hold
 * whole, or a first PT_INTERP whose path is not NUL-terminated within it
 * (ENOEXEC, EIO). Only its checks: it takes more program headers than
 * read_heads does, and reads no dynamic section. */
static int kernel_refuses(int fd, const Elf64_Ehdr *h)
{
	enum { CHUNK = 16, KERNEL_PH_BYTES = 65536, KERNEL_PATH_MAX = 4096 };
	Elf64_Phdr ph[CHUNK];
	int interp_seen = 0;

	if (h->e_type != ET_EXEC && h->e_type != ET_DYN)
		return 1;
	if (h->e_phentsize != sizeof(Elf64_Phdr) || h->e_phnum == 0 ||
	    (size_t)h->e_phnum * sizeof(Elf64_Phdr) > KERNEL_PH_BYTES ||
	    h->e_phoff > (uint64_t)INT64_MAX - KERNEL_PH_BYTES)
		return 1;
	for (size_t i = 0; i < h->e_phnum; i += CHUNK) {
		size_t n = h->e_phnum - i < CHUNK ? h->e_phnum - i : CHUNK;
		if (pread(fd, ph, n * sizeof(ph[0]), (off_t)(h->e_phoff + i * sizeof(ph[0]))) !=
		    (ssize_t)(n * sizeof(ph[0])))
			return 1;
		for (size_t k = 0; k < n && !interp_seen; k++) {
			const Elf64_Phdr *p = &ph[k];
			char last;
			if (p->p_type != PT_INTERP)
				continue;
			interp_seen = 1;	/* the kernel takes the first */
			if (p->p_filesz < 2 || p->p_filesz > KERNEL_PATH_MAX ||
			    p->p_offset > (uint64_t)INT64_MAX - KERNEL_PATH_MAX ||
			    pread(fd, &last, 1, (off_t)(p->p_offset + p->p_filesz - 1)) != 1 || last != '\0')
				return 1;
		}
	}
	return 0;
}

int md__elf_exec_kind(int fd)
{
	struct elf_heads e;
	Elf64_Ehdr h;
	memset(&h, 0, sizeof(h));
	ssize_t got = pread(fd, &h, sizeof(h), 0);
	if (got < SELFMAG || memcmp(h.e_ident, ELFMAG, SELFMAG) != 0)
		return MD_ELF_UNKNOWN;
	if (got > EI_CLASS && h.e_ident[EI_CLASS] == ELFCLASS32)
		return MD_ELF_32BIT;	/* the kernel may run it (compat), ld.so skips the agent */
	/* The kernel reads any other class as 64-bit. A header cut short has
	 * no program headers it would take. */
	if (got != (ssize_t)sizeof(h))
		return MD_ELF_BROKEN;
#ifdef OUR_MACHINE
	if (h.e_machine != OUR_MACHINE)
		return MD_ELF_FOREIGN;	/* run by an emulator (binfmt_misc), if at all */
#endif
	if (kernel_refuses(fd, &h))
		return MD_ELF_BROKEN;
	if (read_heads(fd, &e) != 0)
		return MD_ELF_UNKNOWN;
	for (size_t i = 0; i < e.nph; i++)
		if (e.ph[i].p_type == PT_INTERP)
			return MD_ELF_DYNAMIC;
	/* No interpreter: nothing preloads. But a shared object run as a
	 * program (ld.so itself: `ld.so /usr/bin/qemu-...`) has none either,
	 * and loads the rest: one with a soname is taken for that. */
	if (e.h.e_type == ET_DYN && soname_offset(&e) >= 0)
		return MD_ELF_UNKNOWN;
	return MD_ELF_STATIC;
}

int md__elf_interp(int fd, char *out, size_t size)
{
	struct elf_heads e;
	if (size < 2 || read_heads(fd, &e) != 0)
		return 0;
#ifdef OUR_MACHINE
	if (e.h.e_machine != OUR_MACHINE)
		return 0;	/* binfmt_misc's emulator finds it in a root of its own */
#endif
	for (size_t i = 0; i < e.nph; i++) {
		const Elf64_Phdr *p = &e.ph[i];
		if (p->p_type != PT_INTERP)
			continue;
		/* The kernel takes p_filesz bytes, the last a NUL, else ENOEXEC. */
		if (p->p_filesz < 2 || p->p_filesz > size || p->p_offset > (uint64_t)INT64_MAX ||
		    pread(fd, out, p->p_filesz, (off_t)p->p_offset) != (ssize_t)p->p_filesz ||
		    out[p->p_filesz - 1] != '\0')
			return 0;
		return 1;
	}
	return 0;
}
