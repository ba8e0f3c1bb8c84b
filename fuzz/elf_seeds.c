/* elf_seeds.c - writes small ELF files into a corpus directory as seed-*
 * (`make fuzz-seeds`): a shared object named as the agent (its program
 * headers, a dynamic section with DT_STRTAB and DT_SONAME, the string
 * table), one of another name, one without a soname, and one whose soname
 * points past the end. The real library is hundreds of KiB, too much for a
 * corpus; these hold every structure the check reads. */
#include <elf.h>
#include <stddef.h>
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
	return bad;
}
