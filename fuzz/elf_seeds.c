/* elf_seeds.c - writes small ELF files into a corpus directory as seed-*
 * (`make fuzz-seeds`): a shared object named as the agent (its program
 * headers, a dynamic section with DT_STRTAB and DT_SONAME, the string
 * table), one of another name, one without a soname, and one whose soname
 * points past the end; programs with an interpreter (PT_INTERP) whose path
 * ends in its NUL, or does not, or does not fit; one cut short; a 32-bit
 * program, and 32-bit ones cut short or malformed. The real
 * library is hundreds of KiB, too much for a corpus; these hold every
 * structure the checks read. */
#include <elf.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* The layout: header, two program headers, the dynamic section, the
 * string table; one PT_LOAD maps the whole file at virtual address 0. */
struct image {
	Elf64_Ehdr h;
	Elf64_Phdr ph[2];
	Elf64_Dyn dyn[4];
	char strtab[64];
};

static int write_seed(const char *dir, const char *name, const void *buf, size_t len)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		fprintf(stderr, "elf_seeds: cannot write %s\n", path);
		return 1;
	}
	return 0;
}

static void make(struct image *m, const char *soname, int with_soname, uint64_t soname_off)
{
	memset(m, 0, sizeof(*m));
	memcpy(m->h.e_ident, ELFMAG, SELFMAG);
	m->h.e_ident[EI_CLASS] = ELFCLASS64;
	m->h.e_ident[EI_DATA] = ELFDATA2LSB;
	m->h.e_ident[EI_VERSION] = EV_CURRENT;
	m->h.e_type = ET_DYN;
	m->h.e_machine = EM_X86_64;
	m->h.e_version = EV_CURRENT;
	m->h.e_phoff = offsetof(struct image, ph);
	m->h.e_ehsize = sizeof(Elf64_Ehdr);
	m->h.e_phentsize = sizeof(Elf64_Phdr);
	m->h.e_phnum = 2;
	m->ph[0] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_offset = 0, .p_vaddr = 0,
				 .p_filesz = sizeof(*m), .p_memsz = sizeof(*m), .p_flags = PF_R };
	m->ph[1] = (Elf64_Phdr){ .p_type = PT_DYNAMIC, .p_offset = offsetof(struct image, dyn),
				 .p_vaddr = offsetof(struct image, dyn), .p_filesz = sizeof(m->dyn),
				 .p_memsz = sizeof(m->dyn), .p_flags = PF_R };
	m->dyn[0] = (Elf64_Dyn){ .d_tag = DT_STRTAB, .d_un.d_ptr = offsetof(struct image, strtab) };
	if (with_soname)
		m->dyn[1] = (Elf64_Dyn){ .d_tag = DT_SONAME, .d_un.d_val = soname_off };
	snprintf(m->strtab + 1, sizeof(m->strtab) - 1, "%s", soname);
}

/* A program of machine with an interpreter: header, a PT_LOAD of the
 * whole file, a PT_INTERP of filesz bytes of path (the kernel's rule: the
 * last of them a NUL). */
struct program {
	Elf64_Ehdr h;
	Elf64_Phdr ph[2];
	char interp[96];
};

static void make_program(struct program *p, unsigned machine, const char *path, size_t pathlen, uint64_t filesz)
{
	memset(p, 0, sizeof(*p));
	memcpy(p->h.e_ident, ELFMAG, SELFMAG);
	p->h.e_ident[EI_CLASS] = ELFCLASS64;
	p->h.e_ident[EI_DATA] = ELFDATA2LSB;
	p->h.e_ident[EI_VERSION] = EV_CURRENT;
	p->h.e_type = ET_DYN;
	p->h.e_machine = (uint16_t)machine;
	p->h.e_version = EV_CURRENT;
	p->h.e_phoff = offsetof(struct program, ph);
	p->h.e_ehsize = sizeof(Elf64_Ehdr);
	p->h.e_phentsize = sizeof(Elf64_Phdr);
	p->h.e_phnum = 2;
	p->ph[0] = (Elf64_Phdr){ .p_type = PT_INTERP, .p_offset = offsetof(struct program, interp),
				 .p_filesz = filesz, .p_memsz = filesz, .p_flags = PF_R };
	p->ph[1] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_filesz = sizeof(*p), .p_memsz = sizeof(*p),
				 .p_flags = PF_R | PF_X };
	memcpy(p->interp, path, pathlen);
}

/* Programs with an interpreter, of each machine in the corpus (the check
 * reads the path only of this machine's: x86-64's and AArch64's both, so
 * that the committed corpus reaches it on either): a path ending in its
 * NUL, one cut before it, one with a NUL inside but not at the end, one
 * longer than the caller's room, an empty one (its NUL alone), one of no
 * bytes, one past the end of the file; one cut inside its program headers
 * (the kernel refuses it). */
static int write_programs(const char *dir)
{
	static const struct { unsigned machine; const char *name, *ld; } arch[] = {
		{ EM_X86_64, "x86_64", "/lib64/ld-linux-x86-64.so.2" },
		{ EM_AARCH64, "aarch64", "/lib/ld-linux-aarch64.so.1" },
	};
	struct program p;
	char name[64];
	int bad = 0;
	for (size_t i = 0; i < sizeof(arch) / sizeof(arch[0]); i++) {
		size_t len = strlen(arch[i].ld);
		make_program(&p, arch[i].machine, arch[i].ld, len, len + 1);
		snprintf(name, sizeof(name), "interp-%s", arch[i].name);
		bad |= write_seed(dir, name, &p, sizeof(p));
		make_program(&p, arch[i].machine, arch[i].ld, len, len);
		snprintf(name, sizeof(name), "interp-unterminated-%s", arch[i].name);
		bad |= write_seed(dir, name, &p, sizeof(p));
		make_program(&p, arch[i].machine, "/lib\0/ld.so", 11, 11);
		snprintf(name, sizeof(name), "interp-inner-nul-%s", arch[i].name);
		bad |= write_seed(dir, name, &p, sizeof(p));
		memset(p.interp, 'a', sizeof(p.interp) - 1);
		p.ph[0].p_filesz = sizeof(p.interp);
		snprintf(name, sizeof(name), "interp-too-long-%s", arch[i].name);
		bad |= write_seed(dir, name, &p, sizeof(p));
		make_program(&p, arch[i].machine, "", 1, 1);
		snprintf(name, sizeof(name), "interp-empty-%s", arch[i].name);
		bad |= write_seed(dir, name, &p, sizeof(p));
		make_program(&p, arch[i].machine, "", 0, 0);
		snprintf(name, sizeof(name), "interp-none-%s", arch[i].name);
		bad |= write_seed(dir, name, &p, sizeof(p));
		make_program(&p, arch[i].machine, arch[i].ld, len, len + 1);
		p.ph[0].p_offset = 1u << 20;
		snprintf(name, sizeof(name), "interp-past-end-%s", arch[i].name);
		bad |= write_seed(dir, name, &p, sizeof(p));
		make_program(&p, arch[i].machine, arch[i].ld, len, len + 1);
		snprintf(name, sizeof(name), "cut-in-headers-%s", arch[i].name);
		bad |= write_seed(dir, name, &p, offsetof(struct program, ph[1]) + 8);
	}
	return bad;
}

/* A 32-bit program with an interpreter: foreign to the agent, whatever
 * the machine; cut short in its header, in its program headers, and with
 * an interpreter's path not NUL-terminated (the kernel refuses those). */
static int write_elf32(const char *dir)
{
	struct {
		Elf32_Ehdr h;
		Elf32_Phdr ph[1];
		char interp[16];
	} p;
	memset(&p, 0, sizeof(p));
	memcpy(p.h.e_ident, ELFMAG, SELFMAG);
	p.h.e_ident[EI_CLASS] = ELFCLASS32;
	p.h.e_ident[EI_DATA] = ELFDATA2LSB;
	p.h.e_ident[EI_VERSION] = EV_CURRENT;
	p.h.e_type = ET_EXEC;
	p.h.e_machine = EM_386;
	p.h.e_version = EV_CURRENT;
	p.h.e_phoff = offsetof(__typeof__(p), ph);
	p.h.e_ehsize = sizeof(Elf32_Ehdr);
	p.h.e_phentsize = sizeof(Elf32_Phdr);
	p.h.e_phnum = 1;
	p.ph[0] = (Elf32_Phdr){ .p_type = PT_INTERP, .p_offset = offsetof(__typeof__(p), interp),
				.p_filesz = 14, .p_memsz = 14, .p_flags = PF_R };
	memcpy(p.interp, "/lib/ld.so.1", 13);
	int bad = write_seed(dir, "elf32", &p, sizeof(p));
	bad |= write_seed(dir, "elf32-cut-in-header", &p, sizeof(p.h) - 4);
	bad |= write_seed(dir, "elf32-cut-in-headers", &p, offsetof(__typeof__(p), ph) + 8);
	p.interp[13] = 'x';	/* its last byte no NUL */
	return bad | write_seed(dir, "elf32-interp-unterminated", &p, sizeof(p));
}

int main(int argc, char **argv)
{
	struct image m;
	int bad = 0;
	if (argc != 2) {
		fprintf(stderr, "usage: elf_seeds CORPUS_DIR\n");
		return 2;
	}
	make(&m, "libmemdedup-preload.so", 1, 1);
	bad |= write_seed(argv[1], "agent", &m, sizeof(m));
	bad |= write_seed(argv[1], "agent-cut", &m, offsetof(struct image, strtab) + 8);
	make(&m, "libmemdedup.so", 1, 1);
	bad |= write_seed(argv[1], "other-soname", &m, sizeof(m));
	make(&m, "libmemdedup-preload.so", 0, 1);
	bad |= write_seed(argv[1], "no-soname", &m, sizeof(m));
	make(&m, "libmemdedup-preload.so", 1, 1u << 20);
	bad |= write_seed(argv[1], "soname-past-end", &m, sizeof(m));
	return bad | write_programs(argv[1]) | write_elf32(argv[1]);
}
