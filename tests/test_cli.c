/* test_cli.c - the command line: help, and wrong usage exits 2 and changes
 * nothing. */
#include <stdio.h>
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

TEST_IMPL(cli_run_numbers_strict)
{
	/* The agent's parser (digits only): what `run` passes on, the agent
	 * takes; strtol once let ' 32' and '+32' through, which the agent
	 * then refused. */
	const char *bad[] = { "' 32'", "+32", "32x", "0x20", "-0", "' '", "99999999999999999999" };
	char cmd[256];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(cmd, sizeof(cmd), "build/memdedup run --pages-to-scan=%s -- true 2>/dev/null", bad[i]);
		ASSERT_EQ(run(cmd), 2);
	}
	ASSERT_EQ(run("build/memdedup run --sleep-ms=+5 -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --cpu-percent=' 50' -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --share-min-pages=+4 -- true 2>/dev/null"), 2);
	ASSERT_EQ(run("build/memdedup run --pages-to-scan=+32 -- true 2>&1 | "
		      "grep -q \"pages-to-scan takes a number from 1 to 100000, not '+32'\""), 0);
	ASSERT_EQ(run("build/memdedup run --pages-to-scan=32 --sleep-ms=0 --cpu-percent=100 -- "
		      "sh -c 'test \"$MEMDEDUP_PAGES_TO_SCAN $MEMDEDUP_SLEEP_MS $MEMDEDUP_CPU_PERCENT\" = \"32 0 100\"'"), 0);
	return 0;
}

TEST_IMPL(cli_run_checks_preload)
{
	/* ld.so skips a library it cannot load with a warning, and the command
	 * runs without the agent: `run` refuses first, running nothing. */
	char dir[] = "/tmp/memdedup-cli-XXXXXX", cmd[512];
	ASSERT(mkdtemp(dir));
	const char *bad[] = { "/etc/passwd", "/", "/nonexistent/libmemdedup-preload.so", "build/a:b.so" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(cmd, sizeof(cmd), "MEMDEDUP_PRELOAD='%s' build/memdedup run -- touch %s/ran 2>/dev/null",
			 bad[i], dir);
		ASSERT_EQ(run(cmd), 2);
		snprintf(cmd, sizeof(cmd), "test -e %s/ran", dir);
		ASSERT(run(cmd) != 0);
	}
	ASSERT_EQ(run("MEMDEDUP_PRELOAD=/etc/passwd build/memdedup run -- true 2>&1 | grep -q "
		      "\"MEMDEDUP_PRELOAD='/etc/passwd' cannot be preloaded: not a shared library\""), 0);
	ASSERT_EQ(run("MEMDEDUP_PRELOAD=/ build/memdedup run -- true 2>&1 | grep -q 'not a regular file'"), 0);
	/* The real one runs the command. */
	snprintf(cmd, sizeof(cmd), "MEMDEDUP_PRELOAD=build/libmemdedup-preload.so build/memdedup run -- touch %s/ran", dir);
	ASSERT_EQ(run(cmd), 0);
	snprintf(cmd, sizeof(cmd), "rm -r %s", dir);
	ASSERT_EQ(run(cmd), 0);
	return 0;
}
