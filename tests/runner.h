/*
 * runner.h - a small test runner in the manner of libuv's: every test runs
 * in a child process of its own with a timeout, so a crash or a hang fails
 * that test alone. A test returns 0 (pass), or calls SKIP() with a reason.
 */
#ifndef MD_TEST_RUNNER_H
#define MD_TEST_RUNNER_H
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#define TEST_SKIP_CODE 77

#define ASSERT(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
		abort(); \
	} } while (0)
#define ASSERT_EQ(a, b) do { \
	long long _a = (long long)(a), _b = (long long)(b); \
	if (_a != _b) { \
		fprintf(stderr, "assertion failed: %s == %s (%lld != %lld) (%s:%d)\n", \
			#a, #b, _a, _b, __FILE__, __LINE__); \
		abort(); \
	} } while (0)
#define SKIP(...) do { fprintf(stderr, "SKIP: " __VA_ARGS__); fputc('\n', stderr); \
	exit(TEST_SKIP_CODE); } while (0)

/* Blocks a file holds (st_blocks: 512-byte units), -1 on error: what a
 * pool's memfd really keeps, holes punched out. */
static inline long long test_file_blocks(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? (long long)st.st_blocks : -1;
}

#define TEST_IMPL(name) int run_test_##name(void); int run_test_##name(void)
#define TEST_DECLARE(name) int run_test_##name(void);
#endif
