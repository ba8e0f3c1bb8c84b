/* policies.h - the NUMA memory policies the VMM gave ranges of its memory.
 *
 * The kernel keeps an mbind(2) policy with the mapping (VMA), not with the
 * addresses: a mapping the engine or the agent makes over guest RAM (a
 * discard's anonymous memory, a read shared at read time, a merge onto an
 * image page, a private copy) would drop it, and the guest's pages written
 * there later would be allocated on any node. So the VMM's mbind calls go
 * through here, and those mappings are given the policy again
 * (md__policy_apply). QEMU binds a memory backend (host-nodes=, policy=)
 * after it advised MADV_MERGEABLE, so the policy must be followed, not read
 * once at registration.
 *
 * Never a mapping of the pool: a mapping of shared memory (a memfd) takes
 * its policy from the file, by offset, for every process that maps it, and
 * an mbind there would set it for all of them. A guest page merged onto a
 * pool page is copied, when written, by the file's policy (no policy: the
 * writer's node); kernel KSM keeps the VMA's.
 *
 * Lock order: the policies' lock is taken last, after agent->lock and the
 * engine's locks; held across the VMM's mbind, so that a mapping made
 * meanwhile is given either the old policy before the call, or the new one.
 */
#ifndef MD_POLICIES_H
#define MD_POLICIES_H
#include <stddef.h>
#include <stdint.h>

/* The VMM's mbind: the system call (through call, the C library's
 * syscall(2)), except over the spans of skip (sorted, disjoint: mappings of
 * shared memory that are ours, whose policy is their file's), and on
 * success the policy recorded for all of [addr, addr+len). A policy that
 * cannot be recorded (memory short) is said once in the log: the call's
 * result stands. Returns the call's result, errno as it left it. */
struct md__span {
	uintptr_t lo, hi;
};
long md__policy_mbind(long (*call)(long, ...), void *addr, unsigned long len, int mode,
		      const unsigned long *nodes, unsigned long maxnode, unsigned flags,
		      const struct md__span *skip, size_t nskip);
/* Gives [addr, addr+len), just mapped anew (anonymous memory), the
 * policies recorded there. */
void md__policy_apply(uintptr_t addr, size_t len);
/* The same for anonymous memory at dst made aside, to be moved over
 * [addr, addr+len) (mremap takes a mapping's policy with it): before its
 * pages are written, so that they are allocated where the policy says. */
void md__policy_apply_to(uintptr_t dst, uintptr_t addr, size_t len);
/* The same for a private mapping of the file fd (an image), unless it is
 * shared memory (tmpfs), whose mappings take the file's policy. */
void md__policy_apply_file(uintptr_t addr, size_t len, int fd);
/* [addr, addr+len) is unmapped (or mapped anew by the VMM): forgotten. */
void md__policy_forget(uintptr_t addr, size_t len);
/* [old, old+len) moved to new (mremap): its policies go with it. */
void md__policy_move(uintptr_t old, size_t len, uintptr_t new_addr);
/* Registers the fork handlers that keep the lock usable in a child. */
void md__policy_atfork(void);
/* In a child made without the atfork handlers (syscall(SYS_fork), _Fork,
 * clone without CLONE_VM): the lock, which a thread the child does not
 * have may have held, and the mbind calls under way, start over. */
void md__policy_child(void);
#endif
