/*
 * stub_oldagent.c - preloaded before the agent as a copy of it from before
 * find_first_copy: it defines md_agent_new (so the agent after it knows it
 * comes second), and its mmap goes to the kernel through "the next
 * syscall()", as the agent's raw calls did. The agent after it must hand
 * that call to the kernel, not back to mmap().
 */
#include <dlfcn.h>
#include <errno.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>

#define EXPORT __attribute__((visibility("default")))

struct md_agent;
struct md_agent_options;
int md_agent_new(struct md_agent **a, const struct md_agent_options *o);

EXPORT int md_agent_new(struct md_agent **a, const struct md_agent_options *o)
{
	(void)a;
	(void)o;
	return -ENOSYS;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	long (*next)(long, ...) = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
	if (!next) {
		errno = ENOSYS;
		return MAP_FAILED;
	}
	return (void *)next(SYS_mmap, addr, len, prot, flags, fd, off);
}
