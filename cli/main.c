/*
 * main.c - `memdedup`: dispatches to a subcommand from the table below.
 */
#include <stdarg.h>
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

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return MD_EXIT_USAGE;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		if (argc > 2 && strcmp(argv[1], "help") == 0)
			for (size_t i = 0; i < NCOMMANDS; i++)
				if (strcmp(argv[2], commands[i]->name) == 0) {
					fputs(commands[i]->usage, stdout);
					return 0;
				}
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("memdedup %d.%d\n", MD_VERSION_MAJOR, MD_VERSION_MINOR);
		return 0;
	}
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strcmp(argv[1], commands[i]->name) == 0)
			return commands[i]->run(argc - 1, argv + 1);
	fprintf(stderr, "memdedup: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return MD_EXIT_USAGE;
}
