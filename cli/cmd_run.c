/*
 * cmd_run.c - `memdedup run`: execs a command with the agent preloaded.
 *
 * It execs rather than forks, so the VMM keeps the pid the caller knows and
 * its exit status is the command's.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

const struct md__cmd md__cmd_run_def = {
	.name = "run",
	.summary = "run a command (a VMM) with the memdedup agent inside",
	.usage =
	"usage: memdedup run [--kernel-ksm=on|off] [--populate] -- CMD [ARGS...]\n"
	"\n"
	"Runs CMD with the agent preloaded (LD_PRELOAD). Guest RAM that CMD marks\n"
	"MADV_MERGEABLE is registered; whole pages it reads from read-only image\n"
	"files into it are shared with every other guest reading the same image.\n"
	"\n"
	"  --kernel-ksm=on|off  pass MADV_MERGEABLE on to kernel KSM (default on)\n"
	"  --populate           fault shared pages in at read time\n"
	"  -h, --help           this text\n"
	"\n"
	"Environment: MEMDEDUP_PRELOAD (the library), MEMDEDUP_RUN_DIR (statistics),\n"
	"MEMDEDUP_LOG (log file), MEMDEDUP_MAX_VMAS (mapping budget).\n",
	.run = md__cmd_run,
};

/* The preload library: $MEMDEDUP_PRELOAD, else beside this executable, else
 * in the installed library directory. */
static int find_preload(char *out, size_t size)
{
	const char *env = getenv("MEMDEDUP_PRELOAD");
	char exe[PATH_MAX - 64];

	if (env && *env) {
		snprintf(out, size, "%s", env);
		return access(out, R_OK) == 0 ? 0 : -errno;
	}
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		char *slash = strrchr(exe, '/');
		if (slash) {
			*slash = '\0';
			snprintf(out, size, "%s/libmemdedup-preload.so", exe);
			if (access(out, R_OK) == 0)
				return 0;
			snprintf(out, size, "%s/../lib/memdedup/libmemdedup-preload.so", exe);
			if (access(out, R_OK) == 0)
				return 0;
		}
	}
	return -ENOENT;
}

int md__cmd_run(int argc, char **argv)
{
	const struct md__cmd *cmd = &md__cmd_run_def;
	const char *ksm = "1";
	int populate = 0, i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (md__wants_help(cmd, a))
			return 0;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (strcmp(a, "--kernel-ksm=on") == 0)
			ksm = "1";
		else if (strcmp(a, "--kernel-ksm=off") == 0)
			ksm = "0";
		else if (strncmp(a, "--kernel-ksm", 12) == 0)
			return md__usage_error(cmd, "--kernel-ksm takes =on or =off, not '%s'", a);
		else if (strcmp(a, "--populate") == 0)
			populate = 1;
		else if (a[0] == '-')
			return md__usage_error(cmd, "unknown option '%s'", a);
		else
			break;	/* the command, without a "--" */
	}
	if (i >= argc)
		return md__usage_error(cmd, "no command to run");

	char lib[PATH_MAX + 64], preload[2 * PATH_MAX + 128];
	int err = find_preload(lib, sizeof(lib));
	if (err) {
		fprintf(stderr, "memdedup run: cannot find libmemdedup-preload.so (%s); set MEMDEDUP_PRELOAD\n",
			strerror(-err));
		return 1;
	}
	const char *old = getenv("LD_PRELOAD");
	if (old && *old)
		snprintf(preload, sizeof(preload), "%s:%s", lib, old);
	else
		snprintf(preload, sizeof(preload), "%s", lib);
	if (setenv("LD_PRELOAD", preload, 1) != 0 || setenv("MEMDEDUP_KERNEL_KSM", ksm, 1) != 0 ||
	    (populate && setenv("MEMDEDUP_POPULATE", "1", 1) != 0)) {
		perror("memdedup run: setenv");
		return 1;
	}
	execvp(argv[i], argv + i);
	fprintf(stderr, "memdedup run: cannot run '%s': %s\n", argv[i], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
