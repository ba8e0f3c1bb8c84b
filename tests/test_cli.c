/* test_cli.c - the command line: help, and wrong usage exits 2 and changes
 * nothing. */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_util.h"
#include "proc.h"
#include "runner.h"
#include "stats_file.h"

static int run(const char *cmd)
{
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST_IMPL(cli_usage)
{
	ASSERT_EQ(run("build/memdedup --help >/dev/null"), 0);
	ASSERT_EQ(run("build/memdedup run --help >/dev/null"), 0);
	ASSERT_EQ(run("build/memdedup status --help >/dev/null"), 0);
	ASSERT_EQ(run("build/memdedup >/dev/null 2>&1"), 2);
	ASSERT_EQ(run("build/memdedup frobnicate 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --kernel-ksm=maybe -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --nope -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=0 -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=4097 -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=16x -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages= -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=0 -- true 2>&1 | "
		      "grep -q 'share-min-pages takes a number from 1 to 4096'"), 0);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=4096 -- "
		      "sh -c 'test \"$MEMDEDUP_SHARE_MIN_PAGES\" = 4096'"), 0);
	ASSERT_EQ(run("build/memdedup status --bogus 2>/dev/null"), 2);
	/* run execs the command: its exit code comes through. */
	ASSERT_EQ(run("build/memdedup run -- sh -c 'exit 7'"), 7);
	ASSERT_EQ(run("build/memdedup run -- /nonexistent/cmd 2>/dev/null"), 127);
	ASSERT_EQ(run("build/memdedup run -- sh -c 'case $LD_PRELOAD in *libmemdedup-preload.so*) exit 0;; esac; exit 1'"), 0);
	return 0;
}

/* The shell's exit code of a command made from fmt; its stdout and stderr
 * go to test_dir()/out and test_dir()/err unless the command redirects. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[2048], full[2600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	snprintf(full, sizeof(full), "(%s) >%s/out 2>%s/err", cmd, test_dir(), test_dir());
	return run(full);
}

/* The whole of test_dir()/name, NUL-terminated (static buffer). */
static const char *slurp(const char *name)
{
	static char buf[65536];
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", test_dir(), name);
	FILE *f = fopen(path, "r");
	ASSERT(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* `memdedup help CMD`: a command's help; an unknown one is wrong usage. */
TEST_IMPL(cli_help_unknown)
{
	const char *b = build_dir();
	ASSERT_EQ(sh("%s/memdedup help set", b), 0);
	ASSERT(strstr(slurp("out"), "usage: memdedup set"));
	ASSERT_EQ(sh("%s/memdedup help", b), 0);
	ASSERT_EQ(sh("%s/memdedup help bogus", b), 2);
	ASSERT(strstr(slurp("err"), "unknown command 'bogus'"));
	ASSERT_EQ(sh("%s/memdedup help set run", b), 2);
	return 0;
}
