/* stats_file_seeds.c - writes statistics files of this version's layout into
 * a corpus directory as seed-* (`make fuzz-seeds`): one as an agent of this
 * version writes it, an older agent's (fewer counters), a newer one's (more,
 * whole and as a reader reads it: cut at this version's size), and files
 * to be refused: cut short, of another magic, version or header size, of
 * no counters or more than any agent writes, without a pid. Made from struct
 * md__stats_file and MD_CTR_COUNT, they follow the format as it grows; the
 * replay (fuzz_stats_file.c) fails on a corpus without a file of this
 * version's counter count, and of an older and a newer one. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats_file.h"

/* Counters a newer agent appends, in the seed of one. */
#define NEWER_EXTRA 9u

static int write_seed(const char *dir, const char *name, const void *buf, size_t len)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		fprintf(stderr, "stats_file_seeds: cannot write %s\n", path);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static unsigned char buf[sizeof(struct md__stats_file) + NEWER_EXTRA * sizeof(uint64_t)];
	struct md__stats_file *f = (struct md__stats_file *)buf;
	const size_t hdr = offsetof(struct md__stats_file, counters);
	int bad = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: stats_file_seeds DIR\n");
		return 2;
	}
	memcpy(f->magic, MD_STATS_MAGIC, sizeof(f->magic));
	f->version = MD_STATS_VERSION;
	f->header_size = (uint32_t)hdr;
	f->pid = 4321;
	f->start_time = 987654;
	snprintf(f->command, sizeof(f->command), "qemu-system-x86_64 -m 512 -drive file=base.img");
	/* Every counter a value of its own, the extra ones too. */
	for (unsigned i = 0; i < MD_CTR_COUNT + NEWER_EXTRA; i++) {
		uint64_t v = 1000u + i;
		memcpy(buf + hdr + i * sizeof(uint64_t), &v, sizeof(v));
	}
	const size_t full = hdr + MD_CTR_COUNT * sizeof(uint64_t);

	f->ncounters = MD_CTR_COUNT;
	bad |= write_seed(argv[1], "current", buf, full);
	/* Cut in the middle of the last counters, and after the header:
	 * refused, and read no further than the bytes there. */
	bad |= write_seed(argv[1], "truncated", buf, full - sizeof(uint64_t) * 3 / 2);
	bad |= write_seed(argv[1], "header-only", buf, hdr);
	f->ncounters = MD_CTR_COUNT + NEWER_EXTRA;
	bad |= write_seed(argv[1], "newer", buf, sizeof(buf));
	bad |= write_seed(argv[1], "newer-as-read", buf, full);
	f->ncounters = MD_CTR_COUNT / 2;
	bad |= write_seed(argv[1], "older", buf, hdr + f->ncounters * sizeof(uint64_t));
	f->ncounters = 1;
	bad |= write_seed(argv[1], "oldest", buf, hdr + sizeof(uint64_t));
	/* Refused: no counters, more than any agent writes, no pid, another
	 * magic, version, header's size. */
	f->ncounters = 0;
	bad |= write_seed(argv[1], "no-counters", buf, full);
	f->ncounters = 4097;
	bad |= write_seed(argv[1], "too-many-counters", buf, full);
	f->ncounters = MD_CTR_COUNT;
	f->pid = 0;
	bad |= write_seed(argv[1], "no-pid", buf, full);
	f->pid = 4321;
	f->magic[0] ^= 0x20;	/* "mDSTATS" */
	bad |= write_seed(argv[1], "other-magic", buf, full);
	f->magic[0] ^= 0x20;
	f->version = MD_STATS_VERSION + 1;
	bad |= write_seed(argv[1], "other-version", buf, full);
	f->version = MD_STATS_VERSION;
	f->header_size = (uint32_t)hdr + 8;	/* the file long enough for it */
	bad |= write_seed(argv[1], "other-header-size", buf, sizeof(buf));
	return bad;
}
