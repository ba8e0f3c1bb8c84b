/*
 * elfcheck.c - what `memdedup run` must know of ELF files before it runs
 * a command: whether a file is the ELF shared object of a given soname
 * (how it tells the agent, MEMDEDUP_PRELOAD, from any other library, which
 * ld.so would preload without a word, or, a position-independent
 * executable, refuse with a warning), a shared object's soname (a dynamic
 * loader's tells its kind: glibc's, musl's), whether ld.so would load the
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

int md__elf_soname(int fd, char *out, size_t size)
{
	struct elf_heads e;
	int tagged = 0;
	if (size < 2 || read_heads(fd, &e) != 0 || e.h.e_type != ET_DYN)
		return -1;
	for (size_t i = 0; i < e.ndyn && e.dyn[i].d_tag != DT_NULL && !tagged; i++)
		tagged = e.dyn[i].d_tag == DT_SONAME;
	if (!tagged) {
		out[0] = '\0';
		return 0;
	}
	off_t at = soname_offset(&e);
	ssize_t n = at < 0 ? -1 : pread(fd, out, size, at);
	/* Its NUL within what was read: a name cut short is no name. */
	if (n < 2 || !memchr(out, '\0', (size_t)n) || !out[0])
		return -1;
	return 1;
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

/* 1 if the kernel's ELF loader (fs/binfmt_elf.c, or compat_binfmt_elf.c
 * for a 32-bit file: the same checks) refuses the file fd, whose header
 * (of class 64 if is64, else 32) has these fields, before it maps
 * anything: a type it does not run, program headers it does not take or
 * that the file does not hold whole, or a first PT_INTERP whose path is
 * not NUL-terminated within it (ENOEXEC, EIO). Only its checks: it takes
 * more program headers than read_heads does, and reads no dynamic
 * section. */
static int kernel_refuses(int fd, int is64, unsigned type, uint64_t phoff, unsigned phentsize, unsigned phnum)
{
	enum { CHUNK = 16, KERNEL_PH_BYTES = 65536, KERNEL_PATH_MAX = 4096 };
	unsigned char raw[CHUNK * sizeof(Elf64_Phdr)];	/* CHUNK of either class */
	size_t entsize = is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr);
	int interp_seen = 0;

	if (type != ET_EXEC && type != ET_DYN)
		return 1;
	if (phentsize != entsize || phnum == 0 || (size_t)phnum * entsize > KERNEL_PH_BYTES ||
	    phoff > (uint64_t)INT64_MAX - KERNEL_PH_BYTES)
		return 1;
	for (size_t i = 0; i < phnum; i += CHUNK) {
		size_t n = phnum - i < CHUNK ? phnum - i : CHUNK;
		if (pread(fd, raw, n * entsize, (off_t)(phoff + i * entsize)) != (ssize_t)(n * entsize))
			return 1;
		for (size_t k = 0; k < n && !interp_seen; k++) {
			Elf64_Phdr p64;
			Elf32_Phdr p32;
			memcpy(is64 ? (void *)&p64 : (void *)&p32, raw + k * entsize, entsize);
			uint32_t p_type = is64 ? p64.p_type : p32.p_type;
			uint64_t offset = is64 ? p64.p_offset : p32.p_offset;
			uint64_t filesz = is64 ? p64.p_filesz : p32.p_filesz;
			char last;
			if (p_type != PT_INTERP)
				continue;
			interp_seen = 1;	/* the kernel takes the first */
			if (filesz < 2 || filesz > KERNEL_PATH_MAX || offset > (uint64_t)INT64_MAX - KERNEL_PATH_MAX ||
			    pread(fd, &last, 1, (off_t)(offset + filesz - 1)) != 1 || last != '\0')
				return 1;
		}
	}
	return 0;
}

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define OUR_DATA ELFDATA2LSB
#else
#define OUR_DATA ELFDATA2MSB
#endif

/* A 32-bit file: MD_ELF_32BIT (the kernel may run it, compat; ld.so skips
 * the 64-bit agent), or MD_ELF_BROKEN when it is cut short or malformed,
 * which no loader runs, whatever its machine. One of the other byte order
 * is left to execve: its fields would read swapped here, and an emulator
 * (binfmt_misc) may run it. */
static int kind32(int fd)
{
	Elf32_Ehdr h;
	if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		return MD_ELF_BROKEN;	/* the kernel reads zeroes past the end: type 0 */
	if (h.e_ident[EI_DATA] == OUR_DATA && kernel_refuses(fd, 0, h.e_type, h.e_phoff, h.e_phentsize, h.e_phnum))
		return MD_ELF_BROKEN;
	return MD_ELF_32BIT;
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
		return kind32(fd);
	/* The kernel reads any other class as 64-bit. A header cut short has
	 * no program headers it would take. */
	if (got != (ssize_t)sizeof(h))
		return MD_ELF_BROKEN;
#ifdef OUR_MACHINE
	if (h.e_machine != OUR_MACHINE)
		return MD_ELF_FOREIGN;	/* run by an emulator (binfmt_misc), if at all */
#endif
	if (kernel_refuses(fd, 1, h.e_type, h.e_phoff, h.e_phentsize, h.e_phnum))
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
