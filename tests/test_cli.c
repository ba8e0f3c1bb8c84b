/* test_cli.c - the command line: help, and wrong usage exits 2 and changes
 * nothing. */
#include <stdlib.h>
#include <sys/wait.h>

#include "runner.h"

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
