/* fuzz_mountinfo.c - the search of a mountinfo file for a cgroup
 * hierarchy's mount (md__cgroup_mount, common/sys.c), on arbitrary bytes.
 * The kernel writes /proc/self/mountinfo, but the function takes any path,
 * and a container's /proc may show anything: no crash, and what it finds
 * must be whole strings that fit, a root shown above the path asked.
 *
 * Input: controllers NUL path NUL the mountinfo file's bytes. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int md_fuzz_replay_check(void);

static unsigned found, not_found;	/* replay only: the corpus takes both ways */

int md_fuzz_replay_check(void)
{
	if (found && not_found)
		return 0;
	fprintf(stderr, "fuzz_mountinfo: no input of the corpus %s a mount\n", found ? "misses" : "finds");
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *z1 = memchr(data, 0, size);
	if (!z1)
		return 0;
	const uint8_t *z2 = memchr(z1 + 1, 0, size - (size_t)(z1 + 1 - data));
	if (!z2)
		return 0;
	const char *ctrls = (const char *)data, *path = (const char *)z1 + 1;
	int fd = memfd_create("mountinfo", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	size_t rest = size - (size_t)(z2 + 1 - data);
	if (write(fd, z2 + 1, rest) != (ssize_t)rest) {
		close(fd);
		return 0;
	}
	char file[64], at[64], shows[64];
	snprintf(file, sizeof(file), "/proc/self/fd/%d", fd);
	memset(at, 'x', sizeof(at));
	memset(shows, 'y', sizeof(shows));
	int err = md__cgroup_mount(file, ctrls, path, at, sizeof(at), shows, sizeof(shows));
	close(fd);
	if (err == 0) {
		found++;
		if (!memchr(at, 0, sizeof(at)) || !memchr(shows, 0, sizeof(shows)))
			__builtin_trap();	/* not a whole string */
		size_t n = strlen(shows);
		if (strcmp(shows, "/") != 0 && (strncmp(path, shows, n) != 0 || (path[n] && path[n] != '/')))
			__builtin_trap();	/* a root that does not show path */
	} else if (err == -ENOENT || err == -ESRCH) {
		not_found++;
	} else {
		__builtin_trap();
	}
	return 0;
}
