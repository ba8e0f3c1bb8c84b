/*
 * main.c - `memdedup`: dispatches to a subcommand from the table below.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "memdedup.h"

static const struct md__cmd *const commands[] = {
	&md__cmd_run_def,
	&md__cmd_status_def,
	&md__cmd_pause_def,
	&md__cmd_resume_def,
	&md__cmd_unmerge_def,
	&md__cmd_set_def,
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out)
{
	fprintf(out,
		"usage: memdedup [--help] [--version] COMMAND [ARGS...]\n"
		"\n"
		"Memory deduplication for virtual machines, from user space.\n"
		"\n"
		"Commands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(out, "  %-8s %s\n", commands[i]->name, commands[i]->summary);
	fprintf(out, "\n`memdedup COMMAND --help` describes a command.\n");
}

int md__usage_error(const struct md__cmd *cmd, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "memdedup %s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'memdedup %s --help'.\n", cmd->name);
	return MD_EXIT_USAGE;
}

int md__wants_help(const struct md__cmd *cmd, const char *arg)
{
	if (strcmp(arg, "-h") != 0 && strcmp(arg, "--help") != 0)
		return 0;
	fputs(cmd->usage, stdout);
	return 1;
}

static int is_help(const char *arg)
{
	return strcmp(arg, "help") == 0 || strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0;
}

static int dispatch(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return MD_EXIT_USAGE;
	}
	/* `help`, `-h` and `--help` alike: alone the list of commands, with a
	 * command's name that command's usage (`help help` is this list). */
	if (is_help(argv[1])) {
		char name[64];
		const char *what = argc > 2 ? argv[2] : NULL;
		if (argc > 3) {
			fprintf(stderr, "memdedup %s: one command at most\n", argv[1]);
			usage(stderr);
			return MD_EXIT_USAGE;
		}
		if (!what || is_help(what)) {
			usage(stdout);
			return 0;
		}
		for (size_t i = 0; i < NCOMMANDS; i++)
			if (strcmp(what, commands[i]->name) == 0) {
				fputs(commands[i]->usage, stdout);
				return 0;
			}
		fprintf(stderr, "memdedup %s: unknown command '%s'\n", argv[1],
			md__printable(what, name, sizeof(name)));
		usage(stderr);
		return MD_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--version") == 0) {
		if (argc > 2) {
			fprintf(stderr, "memdedup --version takes no arguments\n");
			return MD_EXIT_USAGE;
		}
		printf("memdedup %d.%d\n", MD_VERSION_MAJOR, MD_VERSION_MINOR);
		return 0;
	}
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strcmp(argv[1], commands[i]->name) == 0)
			return commands[i]->run(argc - 1, argv + 1);
	char name[64];
	fprintf(stderr, "memdedup: unknown command '%s'\n", md__printable(argv[1], name, sizeof(name)));
	usage(stderr);
	return MD_EXIT_USAGE;
}

int main(int argc, char **argv)
{
	int rc = dispatch(argc, argv);
	/* Output that did not reach its file (a full disk, /dev/full) is a
	 * failure: a monitor reading `status --json` must not get half a
	 * document and success. */
	int bad = fflush(stdout) != 0;
	int err = errno;
	if (bad || ferror(stdout)) {
		fprintf(stderr, "memdedup: cannot write the output: %s\n", bad ? strerror(err) : "write error");
		return rc ? rc : 1;
	}
	return rc;
}
