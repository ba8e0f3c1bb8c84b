/* replay.c - runs a fuzz target over every file of the corpus directories
 * given, so `make check` exercises what the fuzzer found without clang. */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocol.h"

/* The largest input replayed: the largest message behind the byte that
 * fuzz_protocol.c reads its type from (and the -max_len of the libFuzzer
 * runs, daemon.mk). A larger file is an error, not a file cut short: the
 * input that found a bug would not be the one replayed. */
#define REPLAY_MAX (1 + MD_MSG_HDR_SIZE + MD_MSG_MAX)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* A target may check, after the corpus, that it covered what it must. */
__attribute__((weak)) int md_fuzz_replay_check(void);

/* The file's bytes, in a buffer of exactly their size (ASan sees
 * overreads): 0, or 1 having said why. */
static int read_input(const char *path, uint8_t **data, size_t *size)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	if (!f || fstat(fileno(f), &st) != 0) {
		fprintf(stderr, "replay: cannot open %s\n", path);
		goto fail;
	}
	if (st.st_size > REPLAY_MAX) {
		fprintf(stderr, "replay: %s has %lld bytes, more than the %u an input may have\n", path,
			(long long)st.st_size, (unsigned)REPLAY_MAX);
		goto fail;
	}
	*size = (size_t)st.st_size;
	*data = malloc(*size ? *size : 1);
	if (!*data || fread(*data, 1, *size, f) != *size) {
		fprintf(stderr, "replay: cannot read %s\n", path);
		free(*data);
		goto fail;
	}
	fclose(f);
	return 0;
fail:
	if (f)
		fclose(f);
	return 1;
}

/* An input that hangs fails the replay, named, rather than hanging make
 * check: far longer than any input takes, under ASan too. */
#define REPLAY_INPUT_S 60
#define TEXT(x) #x
#define NUMBER_TEXT(x) TEXT(x)
static const char *replaying;

static void input_hung(int sig)
{
	(void)sig;
	static const char say[] = "replay: an input runs past " NUMBER_TEXT(REPLAY_INPUT_S) " s: ";
	if (write(2, say, sizeof(say) - 1) < 0 || write(2, replaying, strlen(replaying)) < 0 ||
	    write(2, "\n", 1) < 0)
		_exit(1);
	_exit(1);
}

int main(int argc, char **argv)
{
	signal(SIGALRM, input_hung);
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
			uint8_t *data;
			size_t size;
			snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
			if (read_input(path, &data, &size) != 0) {
				closedir(d);
				return 1;
			}
			replaying = path;
			alarm(REPLAY_INPUT_S);
			LLVMFuzzerTestOneInput(data, size);
			alarm(0);
			free(data);
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
