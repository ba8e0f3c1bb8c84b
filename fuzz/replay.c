/* replay.c - runs a fuzz target over every file of the corpus directories
 * given, so `make check` exercises what the fuzzer found without clang. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* A target may check, after the corpus, that it covered what it must. */
__attribute__((weak)) int md_fuzz_replay_check(void);

int main(int argc, char **argv)
{
	int files = 0;
	for (int i = 1; i < argc; i++) {
		DIR *d = opendir(argv[i]);
		if (!d) {
			fprintf(stderr, "replay: cannot open %s\n", argv[i]);
			return 1;
		}
		struct dirent *e;
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			char path[4096];
			snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
			FILE *f = fopen(path, "rb");
			if (!f)
				continue;
			static uint8_t buf[1 << 20];
			size_t n = fread(buf, 1, sizeof(buf), f);
			fclose(f);
			uint8_t *copy = malloc(n ? n : 1);	/* exact size: ASan sees overreads */
			memcpy(copy, buf, n);
			LLVMFuzzerTestOneInput(copy, n);
			free(copy);
			files++;
		}
		closedir(d);
	}
	if (!files) {
		fprintf(stderr, "replay: no inputs\n");
		return 1;
	}
	if (md_fuzz_replay_check && md_fuzz_replay_check() != 0)
		return 1;
	printf("replay: %d inputs, no crash\n", files);
	return 0;
}
