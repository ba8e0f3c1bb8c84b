/*
 * cgroup.h - a memory cgroup of the test's own, for a test to put an agent
 * in (v1's memory controller where it is mounted, else v2).
 */
#ifndef MD_TEST_CGROUP_H
#define MD_TEST_CGROUP_H

#include <stddef.h>

struct test_cgroup {
	char dir[600], parent[512];
	const char *limit, *usage;	/* the files of the limit and of the use */
	int guard;	/* the pipe whose close tells the guard */
};

/* Makes one below this process's cgroup. A guard process moves what is
 * left in it back and removes it when the test ends, failed or not. 0, or
 * -errno (none to be had). */
int cgroup_make(struct test_cgroup *cg);
int cgroup_limit(struct test_cgroup *cg, unsigned long long bytes);
unsigned long long cgroup_usage(const struct test_cgroup *cg);
int cgroup_enter(struct test_cgroup *cg, pid_t pid);
/* Makes depth cgroups below cg, each in the last, without limits; the
 * deepest's directory into deepest. The guard removes them too. */
int cgroup_nest(const struct test_cgroup *cg, int depth, char *deepest, size_t size);
int write_text(const char *dir, const char *file, const char *text);

#endif
