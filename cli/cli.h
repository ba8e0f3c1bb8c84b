/* cli.h - the memdedup command: a table of subcommands. */
#ifndef MD_CLI_H
#define MD_CLI_H
#include <stddef.h>

#include "printable.h"
#include "stats_file.h"

/* Exit codes: 0 success, 1 failure, 2 wrong usage. */
#define MD_EXIT_USAGE 2

struct md__cmd {
	const char *name;
	const char *summary;
	const char *usage;      /* the full help text */
	int (*run)(int argc, char **argv);   /* argv[0] is the subcommand */
};

int md__cmd_run(int argc, char **argv);
int md__cmd_status(int argc, char **argv);
extern const struct md__cmd md__cmd_run_def, md__cmd_status_def;
/* cmd_control.c: orders for the agents, through memdedupd. */
extern const struct md__cmd md__cmd_pause_def, md__cmd_resume_def, md__cmd_unmerge_def,
	md__cmd_set_def;

/* status_daemon.c: the STATUS document of memdedupd at sock, or -errno (no
 * daemon, or no proper answer; a refusal's text in why). */
struct json_t;
int md__status_daemon(const char *sock, struct json_t **out, char *why, size_t size);
/* The same on a connection of the caller's (made by md__client_connect),
 * kept open. */
struct md__client;
int md__status_daemon_on(struct md__client *c, struct json_t **out, char *why, size_t size);

/* cmd_status.c: a live agent of the run directory, as this process sees
 * it: pid here (its file's pid is the one it has in its own pid
 * namespace), and its statistics. */
struct md__agent_row {
	int pid;
	struct md__stats_snapshot s;
};
/* The agents of the statistics files in dir: 0 and a vector (the caller's
 * to free; none for a dir not there), or -errno when dir cannot be read.
 * With cmd (a command's name), files it cannot use are said on stderr
 * and files of agents gone removed; with NULL, nothing is said or
 * removed. */
int md__agents_load(const char *cmd, const char *dir, struct md__agent_row **out, size_t *count);
/* memdedupd's record of the agent of pid in its STATUS document (it sees
 * the pids this process does), or NULL: no document, or an agent that never
 * reached it. */
struct json_t *md__daemon_agent(struct json_t *daemon, int pid);

/* Prints "memdedup CMD: MSG" and the usage hint to stderr; returns 2. */
int md__usage_error(const struct md__cmd *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* 1 if the file fd is a 64-bit ELF shared object whose DT_SONAME is name
 * (at most 255 bytes), else 0 (not ELF, another name, none, a file cut
 * short or malformed). */
int md__elf_soname_is(int fd, const char *name);
/* The DT_SONAME of the 64-bit ELF shared object fd: 1 and it in out (size
 * bytes at most, NUL included); 0 and "" when it has none; -1 when fd is
 * not such a file, or its soname cannot be read (longer, malformed). */
int md__elf_soname(int fd, char *out, size_t size);
/* How the kernel and ld.so would take the executable fd, as far as the
 * agent goes. */
enum {
	MD_ELF_UNKNOWN,	/* not ELF, a shared object run as a program (ld.so), or more
			   program headers than read */
	MD_ELF_DYNAMIC,	/* it names an interpreter: LD_PRELOAD applies */
	MD_ELF_STATIC,	/* ours, without an interpreter: nothing is preloaded */
	MD_ELF_FOREIGN,	/* 64-bit, another machine's: only an emulator (binfmt_misc)
			   runs it, and the agent cannot load */
	MD_ELF_32BIT,	/* 32-bit: the kernel may run it, the agent cannot load */
	MD_ELF_BROKEN,	/* ELF cut short or malformed (64-bit of this machine, or
			   32-bit): the kernel's loader refuses it (ENOEXEC, EIO) */
};
int md__elf_exec_kind(int fd);
/* The interpreter (the dynamic loader) a 64-bit ELF executable of this
 * machine names: 1 and its path in out (size bytes at most, NUL included);
 * 0 if none, or not such a file (another machine's too), or malformed
 * (execve will tell). */
int md__elf_interp(int fd, char *out, size_t size);
/* Returns 1 and prints help if argv[i] is -h/--help. */
int md__wants_help(const struct md__cmd *cmd, const char *arg);
#endif
