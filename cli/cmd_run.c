/*
 * cmd_run.c - `memdedup run`: execs a command with the agent preloaded.
 *
 * It execs rather than forks, so the VMM keeps the pid the caller knows and
 * its exit status is the command's.
 */
#include <dirent.h>
#include <elf.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "memdedup.h"
#include "sys.h"
#include "protocol.h"
#include "uffd.h"

/* The preload library's file name, and its soname (the Makefile links it so). */
#define PRELOAD_SONAME "libmemdedup-preload.so"

const struct md__cmd md__cmd_run_def = {
	.name = "run",
	.summary = "run a command (a VMM) with the memdedup agent inside",
	.usage =
	"usage: memdedup run [OPTIONS] -- CMD [ARGS...]\n"
	"\n"
	"Runs CMD with the agent preloaded (LD_PRELOAD). Guest RAM that CMD marks\n"
	"MADV_MERGEABLE is registered; whole pages it reads from read-only image\n"
	"files into it are shared with every other guest reading the same image.\n"
	"With --scan, a content scanner also merges equal pages (copy-on-write,\n"
	"after write-protecting and comparing them byte for byte) and zero pages.\n"
	"\n"
	"  --kernel-ksm=on|off     pass MADV_MERGEABLE on to kernel KSM (default on;\n"
	"                          never with --scan)\n"
	"  --populate              fault shared pages in at read time\n"
	"  --share-min-pages=N     share only reads of at least N whole pages,\n"
	"                          1..4096 (default 16); smaller reads are copied\n"
	"                          (and hinted to the scanner): one mapping costs\n"
	"                          more than copying a few pages\n"
	"  --scan                  run the content scanner (needed by the options\n"
	"                          below, --domain included); starts memdedupd\n"
	"                          unless it answers: found beside the library,\n"
	"                          beside memdedup, in its ../sbin, in PATH, or in\n"
	"                          /usr/local/sbin\n"
	"  --pages-to-scan=N       pages per batch, 1..100000, for this VMM alone\n"
	"                          (default: memdedupd's, 100, split among its agents)\n"
	"  --sleep-ms=N            sleep between batches, 1..10000 ms, for this VMM\n"
	"                          alone (default: memdedupd's, 20; 0, a 1 ms yield,\n"
	"                          only live: memdedup set sleep_millisecs=0)\n"
	"  --cpu-percent=N         CPU cap of the scanner, 1..100 % of a core, for\n"
	"                          this VMM alone (default: memdedupd's, split)\n"
	"  --scan-order=linear|random\n"
	"                          the scanner's order, in any case, for this VMM\n"
	"                          alone (default: memdedupd's, linear)\n"
	"  --hints=on|off          let I/O hints guide the scanner, for this VMM\n"
	"                          alone (default: memdedupd's, on)\n"
	"  --domain=NAME           sharing domain: pages of different domains never\n"
	"                          share a frame; 'private' merges within the process;\n"
	"                          default: this user's domain in memdedupd, which is\n"
	"                          started if needed\n"
	"  -h, --help              this text\n"
	"\n"
	"Environment: MEMDEDUP_PRELOAD (the library), MEMDEDUP_RUN_DIR (statistics),\n"
	"MEMDEDUP_LOG (log file), MEMDEDUP_MAX_VMAS (mapping budget).\n"
	"\n"
	"memdedupd started here leaves this command's cgroups for the top of each\n"
	"hierarchy (it serves more than this VMM).\n"
	"\n"
	"Exit status: CMD's; 127 CMD, its #! interpreter or its dynamic loader not\n"
	"found, 126 not executable, a binary the kernel cannot run (an ELF file cut\n"
	"short or malformed, another machine's with no binfmt_misc handler), or run\n"
	"by the dynamic loader in secure mode (set-uid, set-gid or file\n"
	"capabilities: it would ignore the agent) or by a dynamic loader of\n"
	"another kind than memdedup's (musl's: it cannot load the agent), 2\n"
	"wrong usage or a library that cannot be preloaded, 1 --scan where no\n"
	"userfaultfd can be opened (nothing started in these cases, but for a\n"
	"32-bit binary the kernel refuses).\n",
	.run = md__cmd_run,
};

/* Whether path is a library ld.so can preload into what we run: a readable
 * regular file with an ELF header of a shared object for this machine,
 * named as our agent (a path LD_PRELOAD cannot carry, or any other file,
 * would be skipped by ld.so with a warning, or loaded in its place, and the
 * command would run without the agent). 0, else -errno and what is wrong
 * in why. */
static int preload_usable(const char *path, char *why, size_t size)
{
	Elf64_Ehdr want, have;
	struct stat st;
	int err = 0;

	if (strpbrk(path, ": \t\n")) {
		snprintf(why, size, "LD_PRELOAD cannot carry a path with ':' or white space");
		return -EINVAL;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) != 0) {
		err = -errno;
		snprintf(why, size, "%s", strerror(-err));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		err = -EINVAL;
		snprintf(why, size, "not a regular file");
		goto out;
	}
	/* The ELF class, byte order and machine of this executable: the
	 * command's are the same in all but exotic cases (and then ld.so
	 * says so itself). */
	int self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	ssize_t n = self >= 0 ? pread(self, &want, sizeof(want), 0) : -1;
	if (self >= 0)
		close(self);
	if (pread(fd, &have, sizeof(have), 0) != (ssize_t)sizeof(have) ||
	    memcmp(have.e_ident, ELFMAG, SELFMAG) != 0) {
		err = -ENOEXEC;
		snprintf(why, size, "not a shared library (no ELF header)");
	} else if (have.e_type != ET_DYN) {
		err = -ENOEXEC;
		snprintf(why, size, "not a shared library (ELF type %u)", (unsigned)have.e_type);
	} else if (n == (ssize_t)sizeof(want) &&
		   (have.e_ident[EI_CLASS] != want.e_ident[EI_CLASS] ||
		    have.e_ident[EI_DATA] != want.e_ident[EI_DATA] || have.e_machine != want.e_machine)) {
		err = -ENOEXEC;
		snprintf(why, size, "a library for another machine");
	} else if (md__elf_soname_is(fd, PRELOAD_SONAME) != 1) {
		err = -ENOEXEC;
		snprintf(why, size, "not the memdedup agent (no soname " PRELOAD_SONAME
			 ": another library, an executable, or a damaged file)");
	}
out:
	if (fd >= 0)
		close(fd);
	return err;
}

/* The directory of this executable: 0, -ENOENT, or -ENAMETOOLONG. */
static int exe_dir(char *buf, size_t size)
{
	ssize_t n = readlink("/proc/self/exe", buf, size - 1);
	if (n <= 0)
		return -ENOENT;
	/* readlink cuts silently: a path that fills the buffer may be cut. */
	if ((size_t)n >= size - 1)
		return -ENAMETOOLONG;
	buf[n] = '\0';
	char *slash = strrchr(buf, '/');
	if (!slash)
		return -ENOENT;
	*slash = '\0';
	return 0;
}

/* The preload library: $MEMDEDUP_PRELOAD, else beside this executable, else
 * in the installed library directory; 0, or -errno with what is wrong said. */
static int find_preload(char *out, size_t size)
{
	const char *env = getenv("MEMDEDUP_PRELOAD");
	char exe[PATH_MAX - 64], why[128], shown[256];
	int err;

	if (env && *env) {
		/* ld.so looks a name without '/' up in the library path, not
		 * here, and a relative path breaks in a command that changes
		 * directory: what it is given is absolute. */
		char abs[PATH_MAX];
		if (!realpath(env, abs)) {
			err = -errno;
			fprintf(stderr, "memdedup run: MEMDEDUP_PRELOAD='%s' cannot be preloaded: %s\n",
				md__printable(env, shown, sizeof(shown)), strerror(-err));
			return err;
		}
		if (strlen(abs) >= size) {
			fprintf(stderr, "memdedup run: MEMDEDUP_PRELOAD='%s' cannot be preloaded: path too long\n",
				md__printable(env, shown, sizeof(shown)));
			return -ENAMETOOLONG;
		}
		snprintf(out, size, "%s", abs);
		err = preload_usable(out, why, sizeof(why));
		if (err)
			fprintf(stderr, "memdedup run: MEMDEDUP_PRELOAD='%s' cannot be preloaded: %s\n",
				md__printable(env, shown, sizeof(shown)), why);
		return err;
	}
	if (exe_dir(exe, sizeof(exe)) == 0) {
		snprintf(out, size, "%s/" PRELOAD_SONAME, exe);
		if (access(out, F_OK) != 0)
			snprintf(out, size, "%s/../lib/memdedup/" PRELOAD_SONAME, exe);
		if (access(out, F_OK) == 0) {
			err = preload_usable(out, why, sizeof(why));
			if (err)
				fprintf(stderr, "memdedup run: %s cannot be preloaded: %s\n",
					md__printable(out, shown, sizeof(shown)), why);
			return err;
		}
	}
	fprintf(stderr, "memdedup run: cannot find libmemdedup-preload.so; set MEMDEDUP_PRELOAD\n");
	return -ENOENT;
}

/* Options that become the agent's environment. A value is a number in
 * [lo, hi], one of the words of `words` (separated by '|'), or on/off in any
 * of the agent's spellings (md__parse_bool), passed on as 1 or 0. */
struct run_option {
	const char *name;	/* "--name"; with '=' a value follows */
	const char *env;
	uint32_t lo, hi;
	const char *words;
	int boolean;		/* on|off, as the agent reads its environment */
	int free_text;		/* any value that valid_text() accepts */
	int scan_only;		/* means something only with --scan */
};

static int valid_text(const char *v)
{
	return *v && md__domain_valid(v, strlen(v));
}

static const struct run_option run_options[] = {
	{ .name = "--kernel-ksm=", .env = "MEMDEDUP_KERNEL_KSM", .boolean = 1 },
	{ .name = "--populate", .env = "MEMDEDUP_POPULATE" },
	{ .name = "--share-min-pages=", .env = "MEMDEDUP_SHARE_MIN_PAGES", .lo = 1, .hi = MD_SHARE_MIN_PAGES_MAX },
	{ .name = "--scan", .env = "MEMDEDUP_SCAN" },
	{ .name = "--pages-to-scan=", .env = "MEMDEDUP_PAGES_TO_SCAN", .lo = 1, .hi = MD_PAGES_TO_SCAN_MAX, .scan_only = 1 },
	{ .name = "--sleep-ms=", .env = "MEMDEDUP_SLEEP_MS", .lo = 1, .hi = MD_SLEEP_MS_MAX, .scan_only = 1 },
	{ .name = "--cpu-percent=", .env = "MEMDEDUP_CPU_PERCENT", .lo = 1, .hi = MD_CPU_PERCENT_MAX, .scan_only = 1 },
	{ .name = "--scan-order=", .env = "MEMDEDUP_SCAN_ORDER", .words = "linear|random", .scan_only = 1 },
	{ .name = "--domain=", .env = "MEMDEDUP_DOMAIN", .free_text = 1, .scan_only = 1 },
	{ .name = "--hints=", .env = "MEMDEDUP_HINTS", .boolean = 1, .scan_only = 1 },
};

/* Returns 0 and sets the environment, or a usage error (2). *matched: the
 * option, or NULL if arg is none. scanning: --scan is given (anywhere among
 * the options) or MEMDEDUP_SCAN is on: without it an option of the scanner
 * is refused as such, before its value is looked at. */
static int apply_option(const struct md__cmd *cmd, const char *arg, const struct run_option **matched,
			int scanning)
{
	*matched = NULL;
	for (size_t k = 0; k < sizeof(run_options) / sizeof(run_options[0]); k++) {
		const struct run_option *o = &run_options[k];
		size_t n = strlen(o->name);
		int takes_value = o->name[n - 1] == '=';
		if (!takes_value ? strcmp(arg, o->name) != 0 : strncmp(arg, o->name, n) != 0) {
			if (takes_value && strncmp(arg, o->name, n - 1) == 0 && arg[n - 1] == '\0')
				return md__usage_error(cmd, "%s needs a value after '=' (%s...)", arg, o->name);
			if (!takes_value && strncmp(arg, o->name, n) == 0 && arg[n] == '=')
				return md__usage_error(cmd, "%s takes no value (give it as %s alone)", o->name,
						       o->name);
			continue;
		}
		*matched = o;
		if (o->scan_only && !scanning)
			return md__usage_error(cmd, "%.*s works only with --scan", (int)(n - takes_value), o->name);
		const char *v = takes_value ? arg + n : "1";
		char shown[256];
		md__printable(v, shown, sizeof(shown));	/* for messages */
		if (takes_value && o->boolean) {
			int on = md__parse_bool(v);
			if (on < 0)
				return md__usage_error(cmd, "%.*s takes on or off (or 1, yes, true / 0, no, false), "
						       "not '%s'", (int)(n - 1), o->name, shown);
			v = on ? "1" : "0";
		} else if (takes_value && o->words) {
			/* One of the words, in any case as the agent reads its
			 * variable, passed on as written here. */
			const char *w = o->words;
			static char word[64];
			int ok = 0;
			while (*w && !ok) {
				size_t len = strcspn(w, "|");
				ok = strlen(v) == len && strncasecmp(v, w, len) == 0 && len < sizeof(word);
				if (ok) {
					snprintf(word, sizeof(word), "%.*s", (int)len, w);
					v = word;
				}
				w += len + (w[len] == '|');
			}
			if (!ok)
				return md__usage_error(cmd, "%.*s takes one of %s (any case), not '%s'",
						       (int)(n - 1), o->name, o->words, shown);
		} else if (takes_value && o->free_text) {
			if (!valid_text(v))
				return md__usage_error(cmd, "%.*s takes a name of 1 to 64 of A-Z a-z 0-9 . _ -, not '%s'",
						       (int)(n - 1), o->name, shown);
		} else if (takes_value) {
			/* The agent's parser: what passes here, the agent takes. */
			uint32_t x;
			if (md__parse_uint(v, o->lo, o->hi, &x))
				return md__usage_error(cmd, "%.*s takes a number from %u to %u, not '%s'",
						       (int)(n - 1), o->name, o->lo, o->hi, shown);
		}
		if (setenv(o->env, v, 1) != 0) {
			perror("memdedup run: setenv");
			return 1;
		}
		return 0;
	}
	return 0;
}

/* 1 if the agent reads the variable as on (agent/preload.c's env_flag:
 * a word it does not know is the default, off). */
static int env_on(const char *name)
{
	const char *v = getenv(name);
	return v && *v && md__parse_bool(v) == 1;
}

/* 1 if the agent will scan: MEMDEDUP_SCAN on and the agent not disabled. */
static int agent_scans(void)
{
	return env_on("MEMDEDUP_SCAN") && !env_on("MEMDEDUP_DISABLE");
}

/* 1 if path is a regular file we may execute. */
static int executable(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* The interpreter a script's #! line names: 1 and its path in out; 0 if
 * path is no script, or cannot be read (execute-only: execve will tell);
 * -ENOENT if the line names none, or a path the kernel cuts short. */
static int script_interpreter(const char *path, char *out, size_t size)
{
	/* The kernel's view: the file's first 256 bytes (BINPRM_BUF_SIZE),
	 * zeroes past its end. */
	char head[256 + 1] = { 0 };
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, head, sizeof(head) - 1);
	close(fd);
	if (n < 3 || head[0] != '#' || head[1] != '!')
		return 0;
	char *p = head + 2;
	p += strspn(p, " \t");
	/* A path that runs to the buffer's end with no newline may be cut
	 * short: the kernel's exec fails with ENOEXEC (fs/binfmt_script.c),
	 * as for a "#!" naming nothing. */
	if (!memchr(head, '\n', sizeof(head) - 1) && !p[strcspn(p, " \t")] && p + strlen(p) == head + 256)
		return -ENOENT;
	p[strcspn(p, " \t\n")] = '\0';
	if (!*p)
		return -ENOENT;
	snprintf(out, size, "%s", p);
	return 1;
}

/* The most scripts the kernel runs in one exec, the command included. */
#define MD_EXEC_SCRIPTS 5

/* A script's interpreter (#!) must be there too, and its own if it is a
 * script in turn, and the dynamic loader the ELF file at the end names, or
 * the exec fails after the daemon was started for it: 0, or -ENOENT /
 * -EACCES as execve's, the interpreter that fails in bad (*elf: the
 * loader, 1 the command's, 2 an interpreter's; not another machine's
 * program's, md__elf_interp). A "#!" naming nothing fails the kernel's exec with ENOEXEC, on
 * which the command runs with /bin/sh (runs_as_script): no failure. */
static int interpreter_runs(const char *path, char *bad, size_t size, int *elf)
{
	char file[PATH_MAX + 64], next[PATH_MAX];
	snprintf(file, sizeof(file), "%s", path);
	*elf = 0;
	/* The kernel runs at most 5 scripts, the command among them, then
	 * the file the last names (fs/exec.c exec_binprm: ELOOP past depth
	 * 5): the fifth's interpreter is checked too. */
	for (int depth = 0; depth <= MD_EXEC_SCRIPTS; depth++) {
		int r = script_interpreter(file, next, sizeof(next));
		if (r < 0)
			return 0;
		if (r == 0) {
			int fd = open(file, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				return 0;	/* execute-only: execve will tell */
			if (md__elf_interp(fd, next, sizeof(next)) == 1)
				*elf = depth ? 2 : 1;
			close(fd);
			if (!*elf)
				return 0;
		} else if (depth == MD_EXEC_SCRIPTS) {
			size_t l = strnlen(file, size - 1);
			memcpy(bad, file, l);
			bad[l] = '\0';
			return -ELOOP;	/* deeper: execve says ELOOP */
		}
		snprintf(bad, size, "%s", next);
		if (access(next, F_OK) != 0)
			return -ENOENT;
		if (!executable(next))
			return -EACCES;
		if (*elf)
			return 0;
		snprintf(file, sizeof(file), "%s", next);
	}
	return 0;
}

/* A capability mask of /proc/self/status ("CapInh", "CapBnd"); 0 if not
 * there. */
static uint64_t own_caps(const char *name)
{
	char line[256];
	unsigned long long v = 0;
	size_t n = strlen(name);
	FILE *f = fopen("/proc/self/status", "re");
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, name, n) == 0 && line[n] == ':' &&
		    sscanf(line + n + 1, "%llx", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

/* 1 if the file capabilities of path (security.capability) give us
 * permitted or effective capabilities: pP' = (fP & bounding) | (fI & pI),
 * or the effective flag (cap_bprm_creds_from_file, for a real uid other
 * than root: root's exec is never secure for them). */
static int file_caps_raise(const char *path, int no_new_privs)
{
	struct vfs_ns_cap_data caps;
	ssize_t n = getxattr(path, "security.capability", &caps, sizeof(caps));
	if (n < (ssize_t)XATTR_CAPS_SZ_1)
		return 0;
	uint32_t magic = le32toh(caps.magic_etc);
	uint64_t fp = le32toh(caps.data[0].permitted), fi = le32toh(caps.data[0].inheritable);
	if ((magic & VFS_CAP_REVISION_MASK) != VFS_CAP_REVISION_1 && n >= (ssize_t)XATTR_CAPS_SZ_2) {
		fp |= (uint64_t)le32toh(caps.data[1].permitted) << 32;
		fi |= (uint64_t)le32toh(caps.data[1].inheritable) << 32;
	}
	/* The new permitted set, non-empty for a real uid other than root's,
	 * makes the exec secure (the ambient set is cleared for a file with
	 * capabilities); under no_new_privs the kernel keeps it within ours. */
	uint64_t raised = (fp & own_caps("CapBnd")) | (fi & own_caps("CapInh"));
	if (no_new_privs)
		raised &= own_caps("CapPrm");
	return (magic & VFS_CAP_FLAGS_EFFECTIVE) || raised != 0;
}

/* The file the kernel runs for exe: exe, or the interpreter its #! line
 * names, and so on. Into file (its size PATH_MAX + 64); the depth (0 for
 * exe itself). */
static int exec_file(const char *exe, char *file)
{
	char next[256];
	int depth;
	snprintf(file, PATH_MAX + 64, "%s", exe);
	/* As far as the kernel follows (interpreter_runs). */
	for (depth = 0; depth < MD_EXEC_SCRIPTS && script_interpreter(file, next, sizeof(next)) == 1; depth++)
		snprintf(file, PATH_MAX + 64, "%s", next);
	return depth;
}

/* 1 if id, a file's owner (uid) or group (!uid) as stat gave it, has no
 * mapping in our user namespace: stat shows such an id as the overflow id,
 * and the overflow id itself is outside every range of our map. 0 if it
 * has one, or if either file cannot be read: the bits count then, and a
 * command is refused rather than run without the agent. */
static int id_is_overflow(unsigned id, int uid)
{
	unsigned overflow;
	FILE *f = fopen(uid ? "/proc/sys/fs/overflowuid" : "/proc/sys/fs/overflowgid", "re");
	int ok = f && fscanf(f, "%u", &overflow) == 1;
	if (f)
		fclose(f);
	return ok && id == overflow;
}

static int id_unmapped(unsigned id, int uid)
{
	unsigned first, lower, count;
	int mapped = 0, ok;
	if (!id_is_overflow(id, uid))
		return 0;
	FILE *f = fopen(uid ? "/proc/self/uid_map" : "/proc/self/gid_map", "re");
	if (!f)
		return 0;
	while (!mapped && fscanf(f, "%u %u %u", &first, &lower, &count) == 3)
		mapped = id >= first && id - first < count;
	ok = !ferror(f);
	fclose(f);
	return ok && !mapped;
}

/* Whether ld.so would run file (what the kernel runs for a command, and
 * depth interpreters deep: exec_file) in secure mode (AT_SECURE), where it ignores
 * LD_PRELOAD entries with a '/' (ours), so the command would run without
 * the agent: the kernel makes an exec secure when the effective uid or gid
 * after it is not the real one (a set-uid or set-gid file, or our own ids
 * differing already), or when file capabilities raise a real uid other
 * than root's (fs/exec.c bprm_fill_uid, security/commoncap.c). For a
 * script, its interpreter's bits count, not its own. 0, or -EPERM and why
 * (with what to do) in why. An LSM's transition is not seen. */
static int secure_exec(const char *file, int depth, char *why, size_t size)
{
	char who[PATH_MAX + 96], shown[256];
	struct stat st;
	struct statvfs sv;

	if (stat(file, &st) != 0)
		return 0;	/* execve will tell */
	snprintf(who, sizeof(who), "%s%s", depth ? "its interpreter " : "it",
		 depth ? md__printable(file, shown, sizeof(shown)) : "");
	/* Neither the bits nor file capabilities count on a nosuid mount,
	 * and the bits not under no_new_privs, nor in a user namespace where
	 * the file's owner or its group has no mapping (bprm_fill_uid
	 * ignores both bits then: stat shows the overflow id, 65534, which
	 * the exec would not take). */
	int nosuid = statvfs(file, &sv) == 0 && (sv.f_flag & ST_NOSUID);
	int nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
	int bits = !nosuid && !nnp && (st.st_mode & (S_ISUID | S_ISGID)) &&
		   !id_unmapped(st.st_uid, 1) && !id_unmapped(st.st_gid, 0);
	int suid = bits && (st.st_mode & S_ISUID);
	int sgid = bits && (st.st_mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP);
	uid_t euid = suid ? st.st_uid : geteuid();
	gid_t egid = sgid ? st.st_gid : getegid();
	int uid_moves = suid && euid != getuid();

	/* The overflow id inside the map (rootless containers map 65536
	 * ids): an owner without a mapping shows as that one too. */
	int overflow = uid_moves ? id_is_overflow(euid, 1) : sgid && id_is_overflow(egid, 0);
	if (uid_moves || (sgid && egid != getgid()))
		snprintf(why, size, "%s is set-%s to %s %u: the dynamic loader would ignore the memdedup "
			 "agent; run it without memdedup or drop the bit%s", who, uid_moves ? "uid" : "gid",
			 uid_moves ? "uid" : "gid", uid_moves ? (unsigned)euid : (unsigned)egid,
			 overflow ? " (if its owner or group has no mapping in this user namespace, which "
				    "shows as that id too, the kernel ignores the bit: LD_PRELOAD set by hand "
				    "then loads the agent)" : "");
	else if (euid != getuid() || egid != getgid())
		snprintf(why, size, "memdedup runs with an effective user or group id other than its "
			 "real one: the dynamic loader would ignore the memdedup agent");
	else if (!nosuid && getuid() != 0 && file_caps_raise(file, nnp))
		snprintf(why, size, "%s has file capabilities: the dynamic loader would ignore the "
			 "memdedup agent; run it without memdedup or remove them (setcap -r)", who);
	else
		return 0;
	return -EPERM;
}

/* The soname of the dynamic loader at path (symbolic links followed), as
 * md__elf_soname's: 1, 0 (none: "" in out) or -1. */
static int loader_soname(const char *path, char *out, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int got = md__elf_soname(fd, out, size);
	close(fd);
	return got;
}

/* Whether file (as secure_exec's) names a dynamic loader of another kind
 * than memdedup's own, which the agent is built for: musl's where the
 * agent is glibc's (ld-linux-x86-64.so.2, whatever path names it). That
 * loader takes the agent's missing symbols for fatal, and the command
 * exits 127 before its main, after a daemon was started for it. The kinds
 * are told by the loaders' sonames: musl's is libc.so, or none (Debian's
 * musl). Where either loader cannot be read (memdedup static, a loader
 * that is no shared object), or ours has no soname, nothing is refused:
 * execve tells. 0, or -ENOEXEC and why in why. */
static int loader_foreign(const char *file, int depth, char *why, size_t size)
{
	char theirs[PATH_MAX], ours[PATH_MAX], their_name[256], our_name[256], shown[256], shown_ld[256];
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	int got = md__elf_interp(fd, theirs, sizeof(theirs));
	close(fd);
	if (!got || (fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)) < 0)
		return 0;
	got = md__elf_interp(fd, ours, sizeof(ours));
	close(fd);
	if (!got || loader_soname(ours, our_name, sizeof(our_name)) != 1 ||
	    loader_soname(theirs, their_name, sizeof(their_name)) < 0 || strcmp(their_name, our_name) == 0)
		return 0;
	snprintf(why, size, "%s%s%s dynamic loader %s (%s%s) is not of the kind the memdedup agent is built for "
		 "(soname %s): it would fail to load the agent, and the command would not run; run it "
		 "without memdedup", depth ? "its interpreter " : "its",
		 depth ? md__printable(file, shown, sizeof(shown)) : "", depth ? "'s" : "",
		 md__printable(theirs, shown_ld, sizeof(shown_ld)), their_name[0] ? "soname " : "no soname",
		 their_name, our_name);
	return -ENOEXEC;
}

/* Whether ld.so loads the agent into file (as secure_exec's) at all: not into a statically
 * linked program (none runs), nor into a 32-bit or another machine's one
 * (it skips a library of the wrong class with a warning). Unlike secure
 * mode, which takes LD_PRELOAD out of the environment, such a program
 * passes it on: a wrapper (a static init, tini, busybox's sh) may exec
 * a VMM that loads the agent. 0, or -ENOEXEC and why in why. */
static int agent_not_loaded(const char *file, int depth, char *why, size_t size)
{
	char shown[256];
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;	/* execve will tell */
	int kind = md__elf_exec_kind(fd);
	close(fd);
	if (kind != MD_ELF_STATIC && kind != MD_ELF_FOREIGN && kind != MD_ELF_32BIT)
		return 0;
	snprintf(why, size, "%s%s is %s: the dynamic loader does not load the memdedup agent into it, "
		 "only into a dynamic program it runs",
		 depth ? "its interpreter " : "it", depth ? md__printable(file, shown, sizeof(shown)) : "",
		 kind == MD_ELF_STATIC ? "statically linked" : "a 32-bit or another machine's program");
	return -ENOEXEC;
}

/* The first word of the file path (its first line up to white space):
 * 0, or -errno. */
static int first_word(const char *path, char *out, size_t size)
{
	char buf[64];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	int err = n < 0 ? -errno : 0;
	close(fd);
	if (err)
		return err;
	buf[n] = '\0';
	snprintf(out, size, "%.*s", (int)strcspn(buf, " \t\n"), buf);
	return 0;
}

/* 1 if binfmt_misc may run a program the kernel's own loaders do not (a
 * 64-bit one of another machine, through an emulator): it is enabled and
 * has an enabled handler, whichever that matches. Not mounted here, it is
 * taken as having none. */
static int binfmt_misc_handles(void)
{
	static const char dir[] = "/proc/sys/fs/binfmt_misc";
	char path[sizeof(dir) + 256], word[16];
	int found = 0;
	DIR *d;
	struct dirent *e;

	snprintf(path, sizeof(path), "%s/status", dir);
	if (first_word(path, word, sizeof(word)) != 0 || strcmp(word, "enabled") != 0 || !(d = opendir(dir)))
		return 0;
	while (!found && (e = readdir(d))) {
		if (e->d_name[0] == '.' || strcmp(e->d_name, "register") == 0 || strcmp(e->d_name, "status") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		found = first_word(path, word, sizeof(word)) == 0 && strcmp(word, "enabled") == 0;
	}
	closedir(d);
	return found;
}

static int runs_as_script(const char *path);

/* Whether the kernel would refuse to run exe before any daemon is started
 * for it: an ELF file cut short or malformed (32-bit too), a 64-bit one of
 * another machine that no binfmt_misc handler may run, or no ELF file nor
 * script at all (a binary file the shell refuses too). A well-formed
 * 32-bit one is left to execve (the kernel may run it). 0, or -ENOEXEC
 * and why in why (empty: the shell's words say it all). */
static int elf_refused(const char *exe, char *why, size_t size)
{
	char interp[PATH_MAX], magic[SELFMAG];
	int fd = open(exe, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;	/* execute-only: execve will tell */
	int kind = md__elf_exec_kind(fd);
	int elf = pread(fd, magic, sizeof(magic), 0) == SELFMAG && memcmp(magic, ELFMAG, SELFMAG) == 0;
	close(fd);
	/* No ELF file, no script the kernel runs (#! naming an interpreter),
	 * and a binary to the shell (runs_as_script): the exec fails with
	 * ENOEXEC and nothing runs it, unless a binfmt_misc handler does. */
	if (!elf && script_interpreter(exe, interp, sizeof(interp)) != 1 && !runs_as_script(exe) &&
	    !binfmt_misc_handles()) {
		why[0] = '\0';	/* the shell's words alone, as execve's ENOEXEC below */
		return -ENOEXEC;
	}
	if (kind == MD_ELF_BROKEN)
		snprintf(why, size, "an ELF file cut short or malformed");
	else if (kind == MD_ELF_FOREIGN && !binfmt_misc_handles())
		snprintf(why, size, "a program of another machine, and binfmt_misc has no enabled handler "
			 "to run it");
	else
		return 0;
	return -ENOEXEC;
}

/* Whether a file execve refused with ENOEXEC runs as a shell script, as a
 * shell running it as a command decides: not one that starts with the ELF
 * magic, nor one with a NUL in its first line (first two, after "#!") of
 * its first 80 bytes, bash's test of a binary file, which bash and dash
 * both refuse (126; glibc's execvp, as env's, gives even that one to
 * /bin/sh). One that cannot be read goes to the shell. */
static int runs_as_script(const char *path)
{
	char head[80];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 1;
	ssize_t n = read(fd, head, sizeof(head));
	close(fd);
	if (n >= SELFMAG && memcmp(head, ELFMAG, SELFMAG) == 0)
		return 0;
	int lines = n >= 2 && head[0] == '#' && head[1] == '!' ? 2 : 1;
	for (ssize_t k = 0; k < n; k++) {
		if (head[k] == '\n' && --lines == 0)
			return 1;
		if (head[k] == '\0')
			return 0;
	}
	return 1;
}

/* Resolves a command as execvp() will: a name with a '/' as it is, else
 * the first executable file of that name in $PATH (unset: the system's
 * default path; an empty entry: the current directory). 0 and the path in
 * out; -ENOENT none; -EACCES one is there but not executable. */
static int resolve_command(const char *name, char *out, size_t size)
{
	struct stat st;
	int err = -ENOENT;

	if (!*name)
		return -ENOENT;
	if (strchr(name, '/')) {
		if (snprintf(out, size, "%s", name) >= (int)size)
			return -ENAMETOOLONG;
		if (executable(out))
			return 0;
		return stat(out, &st) == 0 ? -EACCES : -errno;
	}
	const char *path = getenv("PATH");
	char def[256];
	if (!path) {
		if (!confstr(_CS_PATH, def, sizeof(def)))
			snprintf(def, sizeof(def), "/bin:/usr/bin");
		path = def;
	}
	for (const char *p = path;; p++) {
		size_t len = strcspn(p, ":");
		int n = len ? snprintf(out, size, "%.*s/%s", (int)len, p, name)
			    : snprintf(out, size, "./%s", name);
		if (n > 0 && (size_t)n < size) {
			if (executable(out))
				return 0;
			if (stat(out, &st) == 0 && S_ISREG(st.st_mode))
				err = -EACCES;
		}
		p += len;
		if (!*p)
			break;
	}
	return err;
}

/* memdedupd: beside the preload library (lib), beside this program, in
 * $PATH, or where daemon/memdedupd.service installs it. 0 and its path in
 * out, or -ENOENT. */
static int find_daemon(const char *lib, char *out, size_t size)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(lib, '/');

	snprintf(out, size, "%.*s/memdedupd", slash ? (int)(slash - lib) : 1, slash ? lib : ".");
	if (executable(out))
		return 0;
	if (exe_dir(dir, sizeof(dir)) == 0) {
		snprintf(out, size, "%s/memdedupd", dir);
		if (executable(out))
			return 0;
		snprintf(out, size, "%s/../sbin/memdedupd", dir);	/* make install's */
		if (executable(out))
			return 0;
	}
	if (resolve_command("memdedupd", out, size) == 0) {
		/* md__daemon_ensure execs it by path: make a relative one
		 * absolute. */
		if (out[0] != '/' && realpath(out, dir))
			snprintf(out, size, "%s", dir);
		return 0;
	}
	snprintf(out, size, "/usr/local/sbin/memdedupd");
	return executable(out) ? 0 : -ENOENT;
}

/* The mount point of the top of a cgroup hierarchy (controllers ctrls of a
 * /proc/self/cgroup line, none for v2) that we see above path: 0 and it in
 * out, or out "" if no mount shows more than path and below (a container's
 * own: nothing to leave); -ENOENT the hierarchy is not mounted. */
static int hierarchy_top(const char *ctrls, const char *path, char *out, size_t size)
{
	char shows[PATH_MAX];
	int err = md__cgroup_mount("/proc/self/mountinfo", ctrls, path, out, size, shows, sizeof(shows));
	if (err == -ESRCH || (!err && strcmp(shows, path) == 0))
		err = 0, out[0] = '\0';
	return err;
}

/* Writes text to path: 0, or -errno. */
static int write_text(const char *path, const char *text)
{
	size_t len = strlen(text);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, text, len);
	int err = n == (ssize_t)len ? 0 : n < 0 ? -errno : -EIO;
	close(fd);
	return err;
}

/* md__daemon_ensure's place: moves the daemon (pid, not yet exec'd) to the
 * top cgroup of every hierarchy we are below the top of. Started on demand,
 * it would otherwise stay in the cgroup of the VMM that happened to start
 * it: its pool charged there, and stopped with it (systemd stops all of a
 * unit's cgroup) while other VMMs still use it. A cgroup it cannot leave is
 * said once, and it runs anyway. */
static void leave_cgroups(pid_t pid)
{
	char buf[8192], failed[2 * PATH_MAX], *save = NULL;
	int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = '\0';
	failed[0] = '\0';
	for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		/* id:controllers:path */
		char *ctrls = strchr(line, ':'), *path = ctrls ? strchr(ctrls + 1, ':') : NULL;
		char top[PATH_MAX], procs[PATH_MAX + 16], why[PATH_MAX + 64], text[32];
		if (!path || strcmp(path + 1, "/") == 0)
			continue;
		*path++ = '\0';
		ctrls++;
		int err = hierarchy_top(ctrls, path, top, sizeof(top));
		if (!err && !top[0])
			continue;
		if (err) {
			snprintf(why, sizeof(why), "%s", err == -ENOENT ? "its hierarchy is not mounted" :
				 "/proc/self/mountinfo cannot be read");
		} else {
			snprintf(procs, sizeof(procs), "%s/cgroup.procs", top);
			snprintf(text, sizeof(text), "%d", (int)pid);
			err = write_text(procs, text);
			snprintf(why, sizeof(why), "%s: %s", procs, strerror(-err));
		}
		if (err && !failed[0])
			snprintf(failed, sizeof(failed), "%s:%s (%s)", *ctrls ? ctrls : "cgroup2", path, why);
	}
	if (failed[0])
		fprintf(stderr, "memdedup run: memdedupd stays in this command's cgroup %s: its memory "
			"is charged there, and stopping that cgroup (its unit) stops memdedupd too\n", failed);
}

int md__cmd_run(int argc, char **argv)
{
	const struct md__cmd *cmd = &md__cmd_run_def;
	int i, scan = 0, kernel_ksm_on = 0;

	/* Scanning: --scan, or MEMDEDUP_SCAN already in the environment. An
	 * option of the scanner without it is refused as such, before its
	 * value is checked: the value was blamed, and once right, --scan. */
	int scanning = env_on("MEMDEDUP_SCAN");
	for (i = 1; i < argc && strcmp(argv[i], "--") != 0 && argv[i][0] == '-'; i++)
		scanning |= strcmp(argv[i], "--scan") == 0;
	/* The environment set here only reaches CMD through exec: a usage
	 * error exits first, so it changes nothing. */
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const struct run_option *o;
		int r;
		if (md__wants_help(cmd, a))
			return 0;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (a[0] != '-')
			break;	/* the command, without a "--" */
		r = apply_option(cmd, a, &o, scanning);
		if (r)
			return r;
		if (!o) {
			char shown[256];
			return md__usage_error(cmd, "unknown option '%s'",
					       md__printable(a, shown, sizeof(shown)));
		}
		scan |= strcmp(o->name, "--scan") == 0;
		if (strcmp(o->name, "--kernel-ksm=") == 0)
			kernel_ksm_on = md__parse_bool(a + strlen(o->name)) == 1;
	}
	/* Both would merge the same pages, each behind the other's back. */
	if (kernel_ksm_on && (scan || env_on("MEMDEDUP_SCAN")))
		return md__usage_error(cmd, "--kernel-ksm=on cannot go with %s: kernel KSM and the "
				       "scanner would merge the same pages",
				       scan ? "--scan" : "MEMDEDUP_SCAN on in the environment");
	if (i >= argc)
		return md__usage_error(cmd, "no command to run");

	char lib[PATH_MAX + 64], exe[PATH_MAX + 64];
	/* Without the library the command would run, and succeed, without
	 * the agent: refuse instead. */
	int err = find_preload(lib, sizeof(lib));
	if (err)
		return 2;
	/* The command first: one that cannot run must not leave a daemon
	 * started for it (exit codes as the shell's: 127 not found, 126 not
	 * executable). */
	err = resolve_command(argv[i], exe, sizeof(exe));
	int interp = 0, elf = 0;
	char bad[PATH_MAX] = "", shown_bad[256], because[600];
	if (!err)
		interp = (err = interpreter_runs(exe, bad, sizeof(bad), &elf)) != 0;
	char format[200] = "";
	if (!err)
		err = elf_refused(exe, format, sizeof(format));
	if (interp)
		snprintf(because, sizeof(because), "its %s %s is %s",
			 elf == 1 ? "ELF interpreter (dynamic loader)" :
			 elf ? "interpreter's dynamic loader" : "interpreter (#!)",
			 md__printable(bad, shown_bad, sizeof(shown_bad)),
			 err == -ENOENT ? "missing" : err == -ELOOP ? "a script too, one more than the kernel "
			 "follows (Too many levels of symbolic links)" : "not executable");
	if (err) {
		char shown[256];
		struct stat st;
		fprintf(stderr, "memdedup run: cannot run '%s': %s%s%s%s\n",
			md__printable(argv[i], shown, sizeof(shown)),
			interp ? because :
			err == -ENOEXEC ? "cannot execute binary file: Exec format error" :
			err == -ENOENT && !strchr(argv[i], '/') ? "command not found in PATH" :
			err == -EACCES && stat(exe, &st) == 0 && S_ISDIR(st.st_mode) ? "Is a directory" :
			strerror(-err), format[0] ? " (" : "", format, format[0] ? ")" : "");
		return err == -ENOENT ? 127 : 126;
	}
	/* Run in secure mode, CMD would run, and succeed, without the agent
	 * (ld.so also takes LD_PRELOAD out of what it runs): refused like a
	 * command that cannot run; so is one whose dynamic loader cannot load
	 * the agent at all (musl's). Only the file exec'd and its interpreter
	 * are seen, not what a wrapper (sudo) execs. */
	char why[PATH_MAX + 512], file[PATH_MAX + 64];
	int depth = exec_file(exe, file);
	if (secure_exec(file, depth, why, sizeof(why)) || loader_foreign(file, depth, why, sizeof(why))) {
		char shown[256];
		fprintf(stderr, "memdedup run: cannot run '%s' with the agent: %s\n",
			md__printable(argv[i], shown, sizeof(shown)), why);
		return 126;
	}
	/* Static, or not ours: said, not refused (it may be a wrapper). */
	if (agent_not_loaded(file, depth, why, sizeof(why))) {
		char shown[256];
		fprintf(stderr, "memdedup run: note: '%s': %s\n", md__printable(argv[i], shown, sizeof(shown)),
			why);
	}
	/* The agent reads it and does nothing: said, or the command would
	 * run as if under memdedup, with no daemon started and nothing shared. */
	if (env_on("MEMDEDUP_DISABLE"))
		fprintf(stderr, "memdedup run: note: MEMDEDUP_DISABLE is on in the environment: the agent "
			"does nothing (no sharing%s)\n", env_on("MEMDEDUP_SCAN") ? ", no scanning" : "");
	/* Scanning needs a userfaultfd (a merge freezes the page with it):
	 * without one the agent would only say, once the command runs, that
	 * it scans nothing, after a daemon was started for it. The command
	 * runs with our credentials (one that would gain others is refused
	 * above), so what we may open, it may. */
	if (agent_scans() && (err = md__uffd_usable())) {
		fprintf(stderr, "memdedup run: content scanning needs a userfaultfd, and this user cannot "
			"open one: %s%s\n", strerror(-err), md__uffd_hint(err));
		return 1;
	}
	/* Scanning in a shared domain needs memdedupd: start it unless one
	 * answers. Without it the agent merges within its process only. */
	const char *domain = getenv("MEMDEDUP_DOMAIN");
	int private_domain = domain && strcmp(domain, "private") == 0;
	if (agent_scans() && domain && *domain && !private_domain && !valid_text(domain)) {
		/* From the caller's environment (--domain= is checked): the
		 * agent refuses the name, and merges within its process. */
		char shown[256];
		fprintf(stderr, "memdedup run: note: MEMDEDUP_DOMAIN='%s' is no sharing domain's name "
			"(1 to 64 of A-Z a-z 0-9 . _ -): the agent merges within its process only\n",
			md__printable(domain, shown, sizeof(shown)));
		private_domain = 1;
	}
	if (agent_scans() && !private_domain && !md__daemon_alive(NULL)) {
		/* A named domain is not merged privately: its agent waits. */
		const char *then = domain && *domain ? "the agent merges nothing until one answers"
						     : "merging stays within the process";
		char daemon[PATH_MAX + 64];
		int derr = find_daemon(lib, daemon, sizeof(daemon));
		if (derr)
			fprintf(stderr, "memdedup run: memdedupd not found (beside %s, beside memdedup,\n"
				"in its ../sbin, in PATH, in /usr/local/sbin): %s\n", lib, then);
		else if ((derr = md__daemon_ensure(daemon, leave_cgroups)))
			fprintf(stderr, "memdedup run: memdedupd (%s) not started (%s): %s\n", daemon,
				strerror(-derr), then);
	}
	/* The caller's libraries after ours, whole: one cut short would be a
	 * library ld.so cannot find. */
	const char *old = getenv("LD_PRELOAD");
	size_t len = strlen(lib) + 1 + (old ? strlen(old) : 0) + 1;
	char *preload = malloc(len);
	if (!preload) {
		perror("memdedup run");
		return 1;
	}
	if (old && *old)
		snprintf(preload, len, "%s:%s", lib, old);
	else
		snprintf(preload, len, "%s", lib);
	if (setenv("LD_PRELOAD", preload, 1) != 0) {
		perror("memdedup run: setenv");
		free(preload);
		return 1;
	}
	free(preload);
	/* The path found above; argv[0] stays as given. */
	execv(exe, argv + i);
	err = errno;	/* before fprintf may change it */
	char shown[256];
	if (err == ENOEXEC && runs_as_script(exe)) {
		/* A script without a #! line: "/bin/sh FILE ARGS", as execvp
		 * runs it (POSIX). Not a binary, which the shell would read
		 * as commands: the shell's 126 below. */
		int n = argc - i;
		char **sh_argv = calloc((size_t)n + 2, sizeof(*sh_argv));
		if (!sh_argv) {
			perror("memdedup run");
			return 1;
		}
		sh_argv[0] = (char *)"/bin/sh";
		sh_argv[1] = exe;
		memcpy(sh_argv + 2, argv + i + 1, (size_t)(n - 1) * sizeof(*sh_argv));
		execv(sh_argv[0], sh_argv);
		err = errno;
		free(sh_argv);
		fprintf(stderr, "memdedup run: cannot run '%s' with /bin/sh: %s\n",
			md__printable(exe, shown, sizeof(shown)), strerror(err));
		return err == ENOENT ? 127 : 126;
	}
	if (err == ENOEXEC) {
		fprintf(stderr, "memdedup run: cannot run '%s': cannot execute binary file: Exec format error\n",
			md__printable(argv[i], shown, sizeof(shown)));
		return 126;
	}
	fprintf(stderr, "memdedup run: cannot run '%s': %s\n", md__printable(exe, shown, sizeof(shown)),
		strerror(err));
	return err == ENOENT ? 127 : 126;
}
