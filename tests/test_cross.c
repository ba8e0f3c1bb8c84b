/*
 * test_cross.c - content sharing across processes through memdedupd: two
 * stand-in VMMs with the agent preloaded and a private daemon. Sharing is
 * proven by equal frame numbers in /proc/PID/pagemap; isolation by unequal
 * ones; robustness by killing agents and the daemon, then checking content
 * and that the pool holds no page nobody maps.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cgroup.h"
#include "client.h"
#include "daemon_util.h"
#include "proc.h"
#include "runner.h"

#define PG 4096u
#define N 256u

static char sock_env[400];

/* sleep_env NULL: the scanner sleeps 1 ms between batches. pid_ns: as pid
 * 1 of a pid namespace of its own (proc_start_pid_ns). */
static void start_agent_ns(struct proc *p, const struct tdaemon *t, const char *domain_env,
			   const char *rate_env, const char *sleep_env, int pid_ns)
{
	snprintf(sock_env, sizeof(sock_env), "MEMDEDUP_SOCKET=%s", t->sock);
	const char *env[] = { sock_env, "MEMDEDUP_SCAN=1", rate_env,
			      sleep_env ? sleep_env : "MEMDEDUP_SLEEP_MS=1",
			      domain_env ? domain_env : "MEMDEDUP_X=1", NULL };
	if (pid_ns)
		proc_start_pid_ns(p, env);
	else
		proc_start(p, env);
	proc_cmd(p, "map 1024");
}

static void start_agent_at(struct proc *p, const struct tdaemon *t, const char *domain_env,
			   const char *rate_env, const char *sleep_env)
{
	start_agent_ns(p, t, domain_env, rate_env, sleep_env, 0);
}

static void start_agent(struct proc *p, const struct tdaemon *t, const char *domain_env)
{
	start_agent_at(p, t, domain_env, "MEMDEDUP_PAGES_TO_SCAN=4000", NULL);
}

static int sharing_n(const md_stats *s) { return s->pages_sharing >= N; }
static int sharing_2n(const md_stats *s) { return s->pages_sharing >= 2 * N; }
static int sharing_1024(const md_stats *s) { return s->pages_sharing >= 1024; }
static int hinted_or_merged_n(const md_stats *s) { return s->pages_hinted + s->merged >= N; }
static int sharing_128(const md_stats *s) { return s->pages_sharing >= 128; }
static int sharing_none(const md_stats *s) { return s->pages_sharing == 0; }

static long long domain_live(const struct tdaemon *t)
{
	return td_domains_int(t, "pool_live_pages");
}

/* Pool files the daemon still has open. */
static int memfds(pid_t pid)
{
	char cmd[128], out[32] = "";
	snprintf(cmd, sizeof(cmd), "ls -l /proc/%d/fd 2>/dev/null | grep -c memfd:", (int)pid);
	FILE *f = popen(cmd, "r");
	ASSERT(f);
	if (!fgets(out, sizeof(out), f))
		out[0] = '\0';
	pclose(f);
	return atoi(out);
}

static int pool_is_agents(const struct tdaemon *t, pid_t pid);
static long long agent_field_becomes(const struct tdaemon *t, pid_t pid, const char *key, long long want);

/* The other agent of b's domain gone, b lets go of every page it merged
 * while it lives, so the domain does too: then nothing may be left in the
 * pool. Checked once both had gone, the pool was empty whatever the counts
 * were, the domain closing with its last record (md__domain_release): a
 * reference the gone agent left behind went unseen (review). Then b goes
 * too, and the daemon holds no pool file. */
static void last_lets_go_pool_empty(const struct tdaemon *t, struct proc *b)
{
	ASSERT(strcmp(proc_cmd(b, "advise 0 %u unmergeable", 1024 * PG), "0") == 0);
	ASSERT_EQ(agent_field_becomes(t, b->pid, "references", 0), 0);
	ASSERT_EQ(pool_is_agents(t, b->pid), 0);
	proc_stop(b);
	ASSERT_EQ(pool_is_agents(t, 0), 0);
}

/* Two agents of one domain with the same N pages (from seed), merged. h
 * (32 bytes) gets the hash of what was written, taken before b's copy was
 * there to merge with: a hash taken after the merge would be compared with
 * what a pool page mapped wrongly under both copies shows. */
static void start_sharing_pair(const struct tdaemon *t, struct proc *a, struct proc *b, unsigned seed, char *h)
{
	md_stats s;
	start_agent(a, t, NULL);
	start_agent(b, t, NULL);
	proc_cmd(a, "fill 0 %u %u", N, seed);
	snprintf(h, 32, "%s", proc_cmd(a, "hash 0 %u", N * PG));
	proc_cmd(b, "fill 0 %u %u", N, seed);
	ASSERT_EQ(proc_stats_wait(a, &s, 20000, sharing_n), 0);
	ASSERT_EQ(proc_stats_wait(b, &s, 20000, sharing_n), 0);
}

/* Ends a test of a pair before its checks (a SKIP). */
static void stop_pair(struct tdaemon *t, struct proc *a, struct proc *b)
{
	proc_stop(a);
	proc_stop(b);
	td_stop(t);
}

static int same_frames(struct proc *a, struct proc *b, size_t off, size_t n)
{
	int same = 0;
	/* A fresh mapping is not present until touched: read the pages. */
	proc_cmd(a, "hash %zu %zu", off, n * PG);
	proc_cmd(b, "hash %zu %zu", off, n * PG);
	for (size_t i = 0; i < n; i++) {
		struct pm x = proc_page(a, off + i * PG), y = proc_page(b, off + i * PG);
		same += x.present && y.present && x.pfn == y.pfn;
	}
	return same;
}

/* same_frames once all n pages share, or after 20 s: what it found last. */
static int wait_same_frames(struct proc *a, struct proc *b, size_t off, size_t n)
{
	int shared = 0;
	for (int i = 0; i < 200 && shared < (int)n; i++) {
		usleep(100000);
		shared = same_frames(a, b, off, n);
	}
	return shared;
}

TEST_IMPL(cross_process_sharing)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 5, h);
	/* One frame per page for both processes, showing what was written. */
	ASSERT_EQ(same_frames(&a, &b, 0, N), N);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) == 0);
	/* A write in one is private to it. */
	char p3[32];
	snprintf(p3, sizeof(p3), "%s", proc_cmd(&b, "hash %u %u", 3 * PG, PG));
	proc_cmd(&a, "write %u 1", 3 * PG + 9);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 3 * PG, PG), p3) != 0);
	ASSERT(strcmp(proc_cmd(&b, "hash %u %u", 3 * PG, PG), p3) == 0);
	ASSERT_EQ(same_frames(&a, &b, 0, N), N - 1);

	/* An agent killed: the other keeps its pages; the daemon drops the
	 * dead one's references. */
	kill(a.pid, SIGKILL);
	waitpid(a.pid, NULL, 0);
	fclose(a.in);
	fclose(a.out);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) == 0);
	/* b holds every page; what only a held (page 3's old slot is b's). */
	for (int i = 0; i < 50 && domain_live(&t) != N; i++)
		usleep(100000);
	ASSERT_EQ(domain_live(&t), N);
	last_lets_go_pool_empty(&t, &b);
	td_stop(&t);
	return 0;
}

static int sharing_all(const md_stats *s) { return s->pages_sharing >= N && s->merged_from_candidates > 0; }
static int unique_aged(const md_stats *s) { return s->pages_unshared >= 64 && s->smart_skips > 0; }
static int unshared_dropped(const md_stats *s) { return s->pages_unshared == 0 && s->zero_pages >= 64; }

/* Duplicates inside one process share through the daemon's pool too: the
 * second copy is published, and the daemon names the first copy back to its
 * agent (a candidate), which then merges it without waiting for a pass. */
TEST_IMPL(cross_in_process_duplicates)
{
	struct tdaemon t;
	struct proc a;
	md_stats s;
	td_start(&t, 65536);
	/* Batches far smaller than the region: a pass takes several, so the
	 * cursor does not come back to a first copy before its candidate. */
	start_agent_at(&a, &t, NULL, "MEMDEDUP_PAGES_TO_SCAN=64", NULL);
	proc_cmd(&a, "fill 0 %u 9", N / 2);
	proc_cmd(&a, "fill %u %u 9", N / 2 * PG, N / 2);
	proc_cmd(&a, "fill %u 64 10", N * PG);	/* unique: never published */
	int waited = proc_stats_wait(&a, &s, 20000, sharing_all);
	if (waited)
		fprintf(stderr, "  sharing %llu, candidates %llu (merged %llu), published %llu, merged %llu\n",
			(unsigned long long)s.pages_sharing, (unsigned long long)s.candidates,
			(unsigned long long)s.merged_from_candidates, (unsigned long long)s.published,
			(unsigned long long)s.merged);
	ASSERT_EQ(waited, 0);
	ASSERT(s.candidates > 0);
	proc_cmd(&a, "hash 0 %u", N * PG);
	int same = 0;
	for (unsigned i = 0; i < N / 2; i++) {
		struct pm x = proc_page(&a, i * PG), y = proc_page(&a, (N / 2 + i) * PG);
		same += x.present && y.present && x.pfn == y.pfn;
	}
	ASSERT_EQ(same, N / 2);
	/* One pool page per content. */
	ASSERT_EQ(domain_live(&t), N / 2);
	/* The unique pages age: counted as unshared, and skipped by the
	 * cursor on some passes (the smart scan). */
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, unique_aged), 0);
	ASSERT_EQ(domain_live(&t), N / 2);
	/* Zeroed and dropped, they are no longer unique pages still checked
	 * (they kept their age, and were counted so). */
	proc_cmd(&a, "zero %u 64", N * PG);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, unshared_dropped), 0);
	proc_stop(&a);
	td_stop(&t);
	return 0;
}

TEST_IMPL(cross_domains_never_share)
{
	struct tdaemon t;
	struct proc a, b, c, d;
	md_stats s;
	td_start(&t, 65536);
	start_agent(&a, &t, "MEMDEDUP_DOMAIN=red");
	start_agent(&b, &t, "MEMDEDUP_DOMAIN=blue");
	start_agent(&c, &t, "MEMDEDUP_DOMAIN=red");
	start_agent(&d, &t, "MEMDEDUP_DOMAIN=blue");
	proc_cmd(&a, "fill 0 %u 6", N);
	proc_cmd(&b, "fill 0 %u 6", N);
	proc_cmd(&c, "fill 0 %u 6", N);
	proc_cmd(&d, "fill 0 %u 6", N);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_n), 0);
	ASSERT_EQ(proc_stats_wait(&b, &s, 20000, sharing_n), 0);
	ASSERT_EQ(proc_stats_wait(&c, &s, 20000, sharing_n), 0);
	ASSERT_EQ(proc_stats_wait(&d, &s, 20000, sharing_n), 0);
	/* Both domains share within themselves, and not one frame across. */
	ASSERT_EQ(same_frames(&a, &c, 0, N), N);
	ASSERT_EQ(same_frames(&b, &d, 0, N), N);
	ASSERT_EQ(same_frames(&a, &b, 0, N), 0);
	ASSERT_EQ(same_frames(&a, &d, 0, N), 0);
	ASSERT_EQ(same_frames(&c, &b, 0, N), 0);
	ASSERT_EQ(same_frames(&c, &d, 0, N), 0);
	proc_stop(&a);
	proc_stop(&b);
	proc_stop(&c);
	proc_stop(&d);
	td_stop(&t);
	return 0;
}

/* A field of the daemon's record of the agent pid (-1: none). */
static uint64_t zero_want;
static int zero_reached(const md_stats *s) { return s->zero_pages >= zero_want; }

static long long agent_field(const struct tdaemon *t, pid_t pid, const char *key)
{
	json_t *st = td_status(t);
	json_t *agents = json_object_get(st, "agents");
	long long v = -1;
	size_t i;
	json_t *o;
	json_array_foreach(agents, i, o)
		if (td_int(o, "pid") == pid)
			v = td_int(o, key);
	json_decref(st);
	return v;
}

/* The references a VMM's call gave back reach memdedupd from the agent's
 * own threads (a VMM thread does not wait for the daemon): within a
 * second or so. key's value once it is want, or the last seen after 3 s. */
static long long agent_field_becomes(const struct tdaemon *t, pid_t pid, const char *key, long long want)
{
	long long v;
	for (int i = 0; i < 60 && (v = agent_field(t, pid, key)) != want; i++)
		usleep(50000);
	return v;
}

static long long domain_live_becomes_0(const struct tdaemon *t)
{
	long long v;
	for (int i = 0; i < 60 && (v = domain_live(t)) != 0; i++)
		usleep(50000);
	return v;
}

static uint64_t scans_want;
static int scans_done(const md_stats *s) { return s->full_scans >= scans_want; }

/* A VMM that drops root once its guest RAM is made (QEMU's -runas) leaves
 * root's domain for its new user's: its pages stop sharing with root's VMs,
 * keep their content, and share with the new user's. */
TEST_IMPL(cross_user_change_moves_domain)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 21, h);
	ASSERT_EQ(same_frames(&a, &b, 0, N), N);
	long long changed = proc_num(&a, "setuid 65534");
	if (changed == -EPERM) {
		stop_pair(&t, &a, &b);
		SKIP("cannot change a process's user here (not root)");
	}
	ASSERT_EQ(changed, 0);
	int shared = (int)N;
	for (int i = 0; i < 100 && shared > 0; i++) {
		usleep(100000);
		shared = same_frames(&a, &b, 0, N);
	}
	ASSERT_EQ(shared, 0);
	ASSERT_EQ(agent_field_becomes(&t, a.pid, "uid", 65534), 65534);
	/* Settled in the new user's domain: passes of both scanners since
	 * (each looks every page up again) find nothing to share across. */
	md_stats sa, sb;
	ASSERT_EQ(proc_stats(&a, &sa), 0);
	ASSERT_EQ(proc_stats(&b, &sb), 0);
	scans_want = (sa.full_scans > sb.full_scans ? sa.full_scans : sb.full_scans) + 3;
	ASSERT_EQ(proc_stats_wait(&a, &sa, 20000, scans_done), 0);
	ASSERT_EQ(proc_stats_wait(&b, &sb, 20000, scans_done), 0);
	ASSERT_EQ(same_frames(&a, &b, 0, N), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) == 0);
	/* b follows: together again, in the new user's domain. */
	ASSERT_EQ(proc_num(&b, "setuid 65534"), 0);
	ASSERT_EQ(wait_same_frames(&a, &b, 0, N), N);
	ASSERT_EQ(agent_field(&t, b.pid, "uid"), 65534);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) == 0);
	proc_stop(&a);
	proc_stop(&b);
	ASSERT_EQ(domain_live_becomes_0(&t), 0);
	td_stop(&t);
	return 0;
}

/* A VMM whose user changes while its agent is away from memdedupd (the
 * connection dropped: the daemon stopped past the late replies' bound),
 * the old user's record still holding its references: the agent makes its
 * pool pages private and lets the old pool go, and memdedupd takes the new
 * user's HELLO, which says no pool page is mapped. It refused it for as
 * long as the VMM lived. */
TEST_IMPL(cross_user_change_while_away)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 23, h);
	ASSERT(kill(t.pid, SIGSTOP) == 0);
	proc_cmd(&a, "fill %u 64 77", N * PG);	/* lookups nobody answers */
	sleep((MD_CLIENT_TIMEOUT_MS + MD_CLIENT_LATE_MAX_MS) / 1000 + 2);
	long long changed = proc_num(&a, "setuid 65534");
	/* Its tries to connect as root meanwhile have given up. */
	sleep(MD_CLIENT_TIMEOUT_MS / 1000 + 1);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	if (changed == -EPERM) {
		stop_pair(&t, &a, &b);
		SKIP("cannot change a process's user here (not root)");
	}
	ASSERT_EQ(changed, 0);
	long long uid = -1;
	for (int i = 0; i < 100 && uid != 65534; i++) {
		usleep(100000);
		uid = agent_field(&t, a.pid, "uid");
	}
	ASSERT_EQ(uid, 65534);
	ASSERT_EQ(same_frames(&a, &b, 0, N), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) == 0);
	proc_stop(&a);
	proc_stop(&b);
	ASSERT_EQ(domain_live_becomes_0(&t), 0);
	td_stop(&t);
	return 0;
}

/* A VMM whose effective user changes and comes back while its agent moves
 * domains (its pool pages private, references not all given back yet:
 * memdedupd stopped meanwhile): the move ends all the same, and the agent
 * merges again in the domain it is back in. It stayed paused for as long
 * as the connection lasted. */
TEST_IMPL(cross_user_back_mid_move_merges_again)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 24, h);
	ASSERT_EQ(same_frames(&a, &b, 0, N), N);
	ASSERT(kill(t.pid, SIGSTOP) == 0);
	long long changed = proc_num(&a, "seteuid 65534");
	if (changed == -EPERM) {
		ASSERT(kill(t.pid, SIGCONT) == 0);
		stop_pair(&t, &a, &b);
		SKIP("cannot change a process's user here (not root)");
	}
	ASSERT_EQ(changed, 0);
	int shared = (int)N;
	for (int i = 0; i < 50 && shared > 0; i++) {
		usleep(100000);
		shared = same_frames(&a, &b, 0, N);
	}
	ASSERT_EQ(shared, 0);	/* the move began: its pages are private */
	ASSERT_EQ(proc_num(&a, "seteuid 0"), 0);
	sleep(2);	/* the agent's thread sees its user back */
	ASSERT(kill(t.pid, SIGCONT) == 0);
	ASSERT_EQ(wait_same_frames(&a, &b, 0, N), N);
	ASSERT_EQ(agent_field(&t, a.pid, "uid"), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) == 0);
	proc_stop(&a);
	proc_stop(&b);
	ASSERT_EQ(domain_live_becomes_0(&t), 0);
	td_stop(&t);
	return 0;
}

/* A VMM that chroots (QEMU's -chroot, then -runas): the descriptions the
 * agent opens for images to be leased after it are of the VMM's files,
 * never of memdedupd's pool, which the process would keep open, read-only,
 * once it gave root up. */
TEST_IMPL(cross_chroot_keeps_no_pool_open)
{
	struct tdaemon t;
	struct proc a, b;
	char root[512], h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 25, h);
	snprintf(root, sizeof(root), "%s/empty-root", test_dir());
	ASSERT(mkdir(root, 0755) == 0 || errno == EEXIST);
	int before = proc_fds_naming(a.pid, "/memfd:", 7, -1, NULL);	/* the pool's */
	ASSERT(before > 0);
	long long chrooted = proc_num(&a, "chroot %s", root);
	if (chrooted == -EPERM) {
		stop_pair(&t, &a, &b);
		SKIP("chroot needs CAP_SYS_CHROOT");
	}
	ASSERT_EQ(chrooted, 0);
	ASSERT_EQ(proc_fds_naming(a.pid, "/memfd:", 7, -1, NULL), before);
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	return 0;
}

/* A VMM in a container (pid 1 of a pid namespace of its own) shares with
 * one on the host: memdedupd takes the pid the agent knows itself by, and
 * lists it by its pid here. */
TEST_IMPL(cross_pid_namespace_shares)
{
	struct tdaemon t;
	struct proc a, b;
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	start_agent_ns(&b, &t, NULL, "MEMDEDUP_PAGES_TO_SCAN=4000", NULL, 1);
	proc_cmd(&a, "fill 0 %u %u", N, 11);
	proc_cmd(&b, "fill 0 %u %u", N, 11);
	ASSERT_EQ(wait_same_frames(&a, &b, 0, N), N);
	ASSERT(agent_field(&t, b.pid, "number") > 0);
	proc_stop(&a);
	proc_stop(&b);
	ASSERT_EQ(domain_live_becomes_0(&t), 0);
	td_stop(&t);
	return 0;
}

/* A VMM that execs (QEMU's cpr-exec) maps no pool page afterwards, but its
 * pid lives on: memdedupd kept the old agent's references, and their pool
 * pages, until the process exited. The new agent says it maps none. */
TEST_IMPL(cross_exec_gives_back)
{
	struct tdaemon t;
	struct proc a;
	md_stats s;
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	proc_cmd(&a, "fill 0 %u 9", N);
	proc_cmd(&a, "fill %u %u 9", N * PG, N);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_n), 0);
	ASSERT(domain_live(&t) >= N);
	ASSERT(strcmp(proc_cmd(&a, "exec"), "ok") == 0);
	proc_cmd(&a, "map 16");	/* the new agent connects */
	ASSERT_EQ(domain_live_becomes_0(&t), 0);
	/* And it merges as any agent does. */
	proc_cmd(&a, "map 1024");
	proc_cmd(&a, "fill 0 %u 9", N);
	proc_cmd(&a, "fill %u %u 9", N * PG, N);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_n), 0);
	ASSERT(domain_live(&t) >= N);
	proc_stop(&a);
	ASSERT_EQ(domain_live_becomes_0(&t), 0);
	td_stop(&t);
	return 0;
}

/* A VMM that execs a program without the agent (a wrapper's exec, a VMM
 * binary not preloaded): no new agent says that no pool page is mapped any
 * more, but its connection closes with the exec (close-on-exec), and the
 * address space the agent joined with is gone. memdedupd drops the record
 * and gives its references back at once, while the program runs on. They
 * stayed, the row still the old program's (2 MiB registered, not
 * connected), until the process exited. */
TEST_IMPL(cross_exec_without_agent_gives_back)
{
	struct tdaemon t;
	struct proc a;
	md_stats s;
	char path[64], comm[32] = "";
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	proc_cmd(&a, "fill 0 %u 9", N);
	proc_cmd(&a, "fill %u %u 9", N * PG, N);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_n), 0);
	ASSERT(domain_live(&t) >= N);
	ASSERT(agent_field(&t, a.pid, "references") >= N);
	ASSERT(strcmp(proc_cmd(&a, "execsleep 30"), "ok") == 0);
	ASSERT_EQ(domain_live_becomes_0(&t), 0);
	ASSERT_EQ(agent_field(&t, a.pid, "pid"), -1);	/* no row */
	/* The program runs on: it is sleep now. */
	ASSERT_EQ(waitpid(a.pid, NULL, WNOHANG), 0);
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)a.pid);
	FILE *f = fopen(path, "r");
	ASSERT(f);
	ASSERT(fgets(comm, sizeof(comm), f));
	fclose(f);
	ASSERT(strcmp(comm, "sleep\n") == 0);
	ASSERT_EQ(kill(a.pid, SIGKILL), 0);
	ASSERT_EQ(waitpid(a.pid, NULL, 0), a.pid);
	fclose(a.in);
	fclose(a.out);
	td_stop(&t);
	return 0;
}

static const char *status_state(const struct tdaemon *t, pid_t pid);

/* The same exec seen by `memdedup status`: the statistics file's pid and
 * start time are the process's still, but its agent is gone (the exec
 * closed the file, and its lock, and unmapped it). status listed the row,
 * with the old counters, until the process exited, and `pause` exited 1
 * for it ("memdedupd cannot reach it"). Now the row is gone, the file
 * removed, and `pause` has no agent to name. */
TEST_IMPL(cross_exec_without_agent_not_listed)
{
	struct tdaemon t;
	struct proc a;
	md_stats s;
	char path[600];
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	proc_cmd(&a, "fill 0 %u 9", N);
	proc_cmd(&a, "fill %u %u 9", N * PG, N);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_n), 0);
	ASSERT_EQ(strcmp(status_state(&t, a.pid), "scanning"), 0);
	ASSERT(strcmp(proc_cmd(&a, "execsleep 60"), "ok") == 0);
	ASSERT_EQ(domain_live_becomes_0(&t), 0);	/* memdedupd dropped it */
	ASSERT_EQ(strcmp(status_state(&t, a.pid), ""), 0);
	snprintf(path, sizeof(path), "%s/agent-%d.stats", test_dir(), (int)a.pid);
	ASSERT(access(path, F_OK) != 0);	/* stale: removed */
	ASSERT_EQ(td_sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup pause >%s/out 2>&1", test_dir(),
			t.sock, build_dir(), test_dir()), 0);
	ASSERT_EQ(kill(a.pid, SIGKILL), 0);
	ASSERT_EQ(waitpid(a.pid, NULL, 0), a.pid);
	fclose(a.in);
	fclose(a.out);
	td_stop(&t);
	return 0;
}

/* A VMM whose guest RAM is not MADV_DONTFORK calls daemon() once pages
 * merged: the parent exits, and its child, plain (no agent) and with no
 * pool reference of its own, goes on as the VMM. memdedupd dropped the
 * parent's record, freed and punched every slot, and the child read
 * zeroes: 256 of 256 pages not what was written (review). The pages are
 * private copies of the parent's own before the fork: the child keeps
 * them, and the pool keeps nothing. */
TEST_IMPL(cross_daemon_call_child_keeps_pages)
{
	struct tdaemon t;
	struct proc a;
	md_stats s;
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	proc_cmd(&a, "fill 0 %u 9", N);
	proc_cmd(&a, "fill %u %u 9", N * PG, N);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_2n), 0);
	ASSERT(domain_live(&t) >= N);
	long long child = proc_num(&a, "daemon");
	ASSERT(child > 0 && child != a.pid);
	/* The parent's record goes, and with it every slot (punched once
	 * memdedupd had a second without messages). */
	for (int i = 0; i < 200 && domain_live(&t) != 0; i++)
		usleep(50000);
	ASSERT_EQ(domain_live(&t), 0);
	sleep(3);
	ASSERT_EQ(proc_num(&a, "unfilled 0 %u 9 0", N), 0);
	ASSERT_EQ(proc_num(&a, "unfilled %u %u 9 0", N * PG, N), 0);
	ASSERT_EQ(domain_live(&t), 0);
	proc_stop(&a);
	td_stop(&t);
	return 0;
}

/* Pages that stop showing the pool drop their references in one UNREF a
 * batch, not a round trip each (the reap of boot-time copy-on-write
 * breaks made thousands of them): forgetting N merged pages costs a few
 * requests, the content stays, and the pool pages the other agent still
 * maps stay in the pool. */
TEST_IMPL(cross_unrefs_batched)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 8, h);
	for (int i = 0; i < 50 && agent_field(&t, a.pid, "references") != N; i++)
		usleep(100000);
	ASSERT_EQ(agent_field(&t, a.pid, "references"), N);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	long long before = agent_field(&t, a.pid, "requests");
	ASSERT(strcmp(proc_cmd(&a, "advise 0 %u unmergeable", N * PG), "0") == 0);
	ASSERT_EQ(agent_field_becomes(&t, a.pid, "references", 0), 0);
	/* Counter reports and lookups of the scanner may come meanwhile. */
	ASSERT(agent_field(&t, a.pid, "requests") - before < 16);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT_EQ(domain_live(&t), N);
	ASSERT_EQ(agent_field(&t, b.pid, "references"), N);
	/* The copies lie in the pool's mapping still, forgotten: a discard
	 * reads back zeroes, not the pool page (whose slot may be reused). */
	ASSERT(strcmp(proc_cmd(&a, "advise 0 %u dontneed", 8 * PG), "0") == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 8 * PG), hex(fnv_zero(8 * PG))) == 0);
	/* Advised again, zero pages there are dropped by the scanner as
	 * anonymous memory, not by a discard that would show the pool page. */
	ASSERT(strcmp(proc_cmd(&a, "zero %u 8", 8 * PG), "ok") == 0);
	md_stats s0, s;
	ASSERT_EQ(proc_stats(&a, &s0), 0);
	ASSERT(strcmp(proc_cmd(&a, "advise 0 %u mergeable", N * PG), "0") == 0);
	zero_want = s0.zero_pages + 8;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, zero_reached), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 16 * PG), hex(fnv_zero(16 * PG))) == 0);
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	return 0;
}

TEST_IMPL(cross_daemon_killed)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 7, h);

	/* The daemon dies mid-scan: the agents keep what they share. */
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	unlink(t.sock);
	usleep(500000);
	ASSERT_EQ(same_frames(&a, &b, 0, N), N);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) == 0);
	/* Writes keep working and stay private. */
	proc_cmd(&b, "write %u 2", 10 * PG);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) != 0);
	ASSERT_EQ(same_frames(&a, &b, 10 * PG, 1), 0);
	ASSERT_EQ(same_frames(&a, &b, 11 * PG, N - 11), N - 11);

	/* A new daemon on the same socket: the agents reconnect and merge
	 * new content into its pool. */
	struct tdaemon t2 = t;
	char cmd[1400];
	snprintf(cmd, sizeof(cmd), "%s/memdedupd --foreground --socket %s --run-dir %s >>%s/log2 2>&1 & echo $!",
		 build_dir(), t.sock, t.dir, t.dir);
	FILE *f = popen(cmd, "r");
	ASSERT(f && fscanf(f, "%d", &t2.pid) == 1);
	pclose(f);
	proc_cmd(&a, "fill %u %u 8", 512 * PG, N);
	proc_cmd(&b, "fill %u %u 8", 512 * PG, N);
	ASSERT_EQ(wait_same_frames(&a, &b, 512 * PG, N), N);
	proc_stop(&a);
	last_lets_go_pool_empty(&t2, &b);
	kill(t2.pid, SIGTERM);
	return 0;
}

/* Both agents go, the one holding more references first (theirs are the
 * ones whose return is checked: last_lets_go_pool_empty); then the daemon
 * stops. */
static void stop_pair_pool_empty(struct tdaemon *t, struct proc *a, struct proc *b)
{
	if (agent_field(t, a->pid, "references") < agent_field(t, b->pid, "references")) {
		struct proc *more = b;
		b = a;
		a = more;
	}
	proc_stop(a);
	last_lets_go_pool_empty(t, b);
	td_stop(t);
}

/* A private daemon and two agents (a's environment a_env) whose first N
 * pages are the same (seed 9), merged. */
static void start_shared_pair(struct tdaemon *t, struct proc *a, struct proc *b, const char *a_env)
{
	md_stats s;
	td_start(t, 65536);
	start_agent(a, t, a_env);
	start_agent(b, t, NULL);
	proc_cmd(a, "fill 0 %u 9", N);
	proc_cmd(b, "fill 0 %u 9", N);
	ASSERT_EQ(proc_stats_wait(a, &s, 20000, sharing_n), 0);
	ASSERT_EQ(proc_stats_wait(b, &s, 20000, sharing_n), 0);
}

/* Rounds of the kill tests: each gets KP fresh pages at its own offset. */
#define KILLS 40
#define KP 24u

/* Waits up to 5 s for the daemon's pool to hold exactly what agent pid
 * maps (-1: no agent; then nothing at all). */
static int pool_is_agents(const struct tdaemon *t, pid_t pid)
{
	for (int i = 0; i < 100; i++) {
		long long refs = pid ? agent_field(t, pid, "references") : 0;
		if (domain_live(t) == refs && (pid || memfds(t->pid) == 0))
			return 0;
		usleep(50000);
	}
	fprintf(stderr, "  pool: %lld live, the agent's references %lld, %d pool files\n", domain_live(t),
		pid ? agent_field(t, pid, "references") : 0, memfds(t->pid));
	return -1;
}

/* An agent killed while its merges and publications are in flight (the
 * other agent's copies of fresh duplicates seen, published, pinned or
 * mapped; in every other round with the daemon stopped across the kill,
 * so that it reads the dead one's last requests after its death): the
 * other keeps its content, and the pool keeps only what the other maps:
 * no slot granted to the dead one, or published by it and not yet
 * mapped, is left behind. */
TEST_IMPL(cross_agent_killed_mid_merge)
{
	struct tdaemon t;
	struct proc a, b;
	unsigned seed = (unsigned)getpid();
	int before = 0, mid = 0, after = 0;
	char h[KILLS][32];
	td_start(&t, 65536);
	start_agent(&b, &t, NULL);
	for (unsigned k = 0; k < KILLS; k++) {
		size_t off = (size_t)k * KP * PG;
		start_agent(&a, &t, NULL);
		long long refs0 = agent_field(&t, b.pid, "references");
		proc_cmd(&b, "fill %zu %u %u", off, KP, 100 + k);
		snprintf(h[k], sizeof(h[k]), "%s", proc_cmd(&b, "hash %zu %u", off, KP * PG));
		proc_cmd(&a, "fill %zu %u %u", off, KP, 100 + k);
		/* Anywhere from before a's first visit to after the last merge
		 * (a few ms after the fill here, so most rounds aim at those):
		 * where it lands only shows in the counts. */
		usleep((useconds_t)(rand_r(&seed) % (k % 4 ? 8000 : 50000)));
		if (k % 2) {
			/* The daemon stopped first: what a sent last (a lookup,
			 * a publication, a reference) waits in its socket and
			 * is read after a died; a grant to the dead, say. */
			td_pause(&t);
			usleep((useconds_t)(rand_r(&seed) % 20000));
		}
		kill(a.pid, SIGKILL);
		waitpid(a.pid, NULL, 0);
		if (k % 2)
			kill(t.pid, SIGCONT);
		fclose(a.in);
		fclose(a.out);
		for (int i = 0; i < 100 && agent_field(&t, a.pid, "references") != -1; i++)
			usleep(50000);
		ASSERT_EQ(agent_field(&t, a.pid, "references"), -1);	/* the daemon let it go */
		for (unsigned j = 0; j <= k; j++)
			ASSERT(strcmp(proc_cmd(&b, "hash %zu %u", (size_t)j * KP * PG, KP * PG), h[j]) == 0);
		ASSERT_EQ(pool_is_agents(&t, b.pid), 0);
		long long got = agent_field(&t, b.pid, "references") - refs0;
		before += got <= 0;
		mid += got > 0 && got < KP;
		after += got >= KP;
	}
	/* Roughly: b also merges earlier rounds' pages late, or lets go of
	 * pages nobody else maps. */
	fprintf(stderr, "  b's references after a's death: none new %d, some %d, all %d\n", before, mid, after);
	/* b lets go of every page while its domain lives on: a reference
	 * the dead left behind would keep its slot live now. */
	ASSERT(strcmp(proc_cmd(&b, "advise 0 %u unmergeable", KILLS * KP * PG), "0") == 0);
	ASSERT_EQ(agent_field_becomes(&t, b.pid, "references", 0), 0);
	ASSERT_EQ(pool_is_agents(&t, b.pid), 0);
	for (unsigned k = 0; k < KILLS; k++)
		ASSERT(strcmp(proc_cmd(&b, "hash %zu %u", (size_t)k * KP * PG, KP * PG), h[k]) == 0);
	proc_stop(&b);
	ASSERT_EQ(pool_is_agents(&t, 0), 0);
	td_stop(&t);
	return 0;
}

static int agents_back(const struct tdaemon *t, pid_t a, pid_t b)
{
	for (int i = 0; i < 400; i++) {
		if (agent_field(t, a, "hellos") >= 1 && agent_field(t, b, "hellos") >= 1)
			return 0;
		usleep(50000);
	}
	return -ETIMEDOUT;
}

#define DKILLS 8

/* memdedupd killed while both agents look up, publish and merge fresh
 * duplicates: pages frozen for a merge whose answer never comes are let
 * go (a write to each page right away must not hang), content is intact,
 * and a new daemon finds the agents back, merges, and ends with an empty
 * pool. */
TEST_IMPL(cross_daemon_killed_mid_scan)
{
	struct tdaemon t;
	struct proc a, b;
	unsigned seed = (unsigned)getpid();
	char h[DKILLS][32];
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	start_agent(&b, &t, NULL);
	for (unsigned k = 0; k < DKILLS; k++) {
		size_t off = (size_t)k * KP * PG;
		ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
		proc_cmd(&a, "fill %zu %u %u", off, KP, 300 + k);
		proc_cmd(&b, "fill %zu %u %u", off, KP, 300 + k);
		usleep((useconds_t)(rand_r(&seed) % (k % 2 ? 8000 : 50000)));
		kill(t.pid, SIGKILL);
		waitpid(t.pid, NULL, 0);
		/* Ten seconds for what takes milliseconds: a write that waits
		 * for the dead daemon for good is killed by the alarm. */
		unsigned left = alarm(10);
		proc_cmd(&a, "fill %zu %u %u", off, KP, 400 + k);
		/* What was written, before b's copy is there to merge with. */
		snprintf(h[k], sizeof(h[k]), "%s", proc_cmd(&a, "hash %zu %u", off, KP * PG));
		proc_cmd(&b, "fill %zu %u %u", off, KP, 400 + k);
		unsigned rest = alarm(0);
		alarm(!left ? 0 : left > 10 - rest ? left - (10 - rest) : 1);	/* the runner's, less the time spent */
		for (unsigned j = 0; j <= k; j++) {
			ASSERT(strcmp(proc_cmd(&a, "hash %zu %u", (size_t)j * KP * PG, KP * PG), h[j]) == 0);
			ASSERT(strcmp(proc_cmd(&b, "hash %zu %u", (size_t)j * KP * PG, KP * PG), h[j]) == 0);
		}
		td_restart(&t);
	}
	ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
	proc_cmd(&a, "fill %u %u 8", 512 * PG, N);
	proc_cmd(&b, "fill %u %u 8", 512 * PG, N);
	ASSERT_EQ(wait_same_frames(&a, &b, 512 * PG, N), N);
	/* Both let go of every page while the domain lives on: nothing may
	 * be left in the pool. */
	ASSERT(strcmp(proc_cmd(&a, "advise 0 %u unmergeable", 1024 * PG), "0") == 0);
	ASSERT(strcmp(proc_cmd(&b, "advise 0 %u unmergeable", 1024 * PG), "0") == 0);
	ASSERT_EQ(domain_live_becomes_0(&t), 0);
	ASSERT_EQ(pool_is_agents(&t, b.pid), 0);
	for (unsigned j = 0; j < DKILLS; j++)
		ASSERT(strcmp(proc_cmd(&b, "hash %zu %u", (size_t)j * KP * PG, KP * PG), h[j]) == 0);
	proc_stop(&a);
	proc_stop(&b);
	ASSERT_EQ(pool_is_agents(&t, 0), 0);
	td_stop(&t);
	return 0;
}

/* memdedupd stopped mid-scan for longer than the agents' timeout (a
 * stalled host): the agents' requests time out, and they keep their
 * connections (one HELLO each; a new connection could not follow the late
 * replies and give back what they granted), merge on once it is back,
 * and hold no reference they do not map. */
TEST_IMPL(cross_daemon_stopped)
{
	struct tdaemon t;
	struct proc a, b;
	char log[600], logenv[700];
	snprintf(log, sizeof(log), "%s/a.log", test_dir());
	snprintf(logenv, sizeof(logenv), "MEMDEDUP_LOG=%s", log);
	start_shared_pair(&t, &a, &b, logenv);
	/* New duplicates while it is stopped: both scanners ask it. Their
	 * records hold references, so a reconnect would find them again. */
	td_pause(&t);
	proc_cmd(&a, "fill %u %u 10", 512 * PG, N);
	proc_cmd(&b, "fill %u %u 10", 512 * PG, N);
	usleep(4000000);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	ASSERT_EQ(wait_same_frames(&a, &b, 512 * PG, N), N);
	ASSERT(strstr(file_text(log), "slow to answer"));
	ASSERT_EQ(agent_field(&t, a.pid, "hellos"), 1);
	ASSERT_EQ(agent_field(&t, b.pid, "hellos"), 1);
	for (int i = 0; i < 50 && agent_field(&t, a.pid, "references") != 2 * N; i++)
		usleep(100000);
	ASSERT_EQ(agent_field(&t, a.pid, "references"), 2 * N);
	ASSERT(strcmp(proc_cmd(&a, "advise 0 %u unmergeable", 1024 * PG), "0") == 0);
	ASSERT_EQ(agent_field_becomes(&t, a.pid, "references", 0), 0);
	stop_pair_pool_empty(&t, &a, &b);
	return 0;
}

/* memdedupd stalled for longer than an agent waits for a late reply (10 s):
 * the agent's connection goes while the daemon lives, and its record of
 * the agent, references and all, stays. The references the agent gave up
 * meanwhile (pages written since they were merged) are given back once it
 * is connected again, or they would stay pinned until the VMM exits. */
TEST_IMPL(cross_daemon_stalled_unrefs_kept)
{
	struct tdaemon t;
	struct proc a, b;
	start_shared_pair(&t, &a, &b, NULL);
	for (int i = 0; i < 50 && agent_field(&t, a.pid, "references") != N; i++)
		usleep(100000);
	ASSERT_EQ(agent_field(&t, a.pid, "references"), N);
	td_pause(&t);
	/* Writes break 64 merged pages; new content makes the scanner ask
	 * (and its request go late). */
	proc_cmd(&a, "fill 0 64 11");
	proc_cmd(&a, "fill %u %u 12", 512 * PG, N);
	/* More after the connection went, while none takes them: pages
	 * that ask for merging no more are made private at once. */
	usleep(15000000);
	ASSERT(strcmp(proc_cmd(&a, "advise %u %u unmergeable", 64 * PG, 64 * PG), "0") == 0);
	usleep(1000000);
	ASSERT(kill(t.pid, SIGCONT) == 0);
	long long hellos = 0, refs = -1;
	for (int i = 0; i < 100 && refs != N - 128; i++) {
		usleep(100000);
		hellos = agent_field(&t, a.pid, "hellos");
		refs = agent_field(&t, a.pid, "references");
	}
	/* Its connection went, and it came back (a HELLO sent while the
	 * daemon was stopped, given up, may count too). */
	ASSERT(hellos >= 2);
	ASSERT_EQ(refs, N - 128);
	/* Read first: a merged page is not there until touched (frame 0). */
	proc_cmd(&a, "hash %u %u", 128 * PG, (N - 128) * PG);
	proc_cmd(&b, "hash %u %u", 128 * PG, (N - 128) * PG);
	for (unsigned i = 128; i < N; i += 7) {
		ASSERT(proc_page(&a, i * PG).present);
		ASSERT_EQ(proc_page(&a, i * PG).pfn, proc_page(&b, i * PG).pfn);
	}
	stop_pair_pool_empty(&t, &a, &b);
	return 0;
}

/* A hole the VMM made (a balloon's page, one a postcopy destination waits
 * for) stays a hole: neither the scanner's reads nor a merge of a page it
 * visited just before may fill it behind the VMM's back. Agent a fills,
 * discards and checks its pages over and over while b holds the same
 * content in the pool, so a's visits find candidates at once. */
TEST_IMPL(cross_leaves_vmm_holes)
{
	struct tdaemon t;
	struct proc a, b;
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	start_agent(&b, &t, NULL);
	proc_cmd(&b, "fill 0 128 3");
	proc_cmd(&b, "fill %u 128 3", 128 * PG);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&b, &s, 20000, sharing_128), 0);
	long iters = -1, present = -1;
	ASSERT_EQ(sscanf(proc_cmd(&a, "holes 0 512 %d 50", 5000), "%ld %ld", &iters, &present), 2);
	ASSERT_EQ(proc_stats(&a, &s), 0);
	fprintf(stderr, "  %ld rounds, %llu merged, %ld pages filled in\n", iters,
		(unsigned long long)s.merged, present);
	ASSERT(iters >= 50);
	ASSERT(s.merged >= 256);	/* the scanner was at work between the discards */
	ASSERT_EQ(present, 0);
	stop_pair_pool_empty(&t, &a, &b);
	return 0;
}

/* `memdedup unmerge` when the agent's cgroup lacks the memory for the
 * copies: the CLI says which agent refused and why, and exits 1; nothing
 * changed (the pages stay merged, the scanner goes on merging). With the
 * memory there, it unmerges (exit 0) and the agent stays paused until
 * resumed. An agent that stopped merging for good refuses a resume. */
static int merged_more(const md_stats *s);
static uint64_t merged_floor;
static int merged_more(const md_stats *s) { return s->merged >= merged_floor; }

TEST_IMPL(cross_unmerge_short_of_memory)
{
	struct test_cgroup cg;
	int err = cgroup_make(&cg);
	if (err)
		SKIP("no memory cgroup of our own to be had here");
	struct tdaemon t;
	struct proc a;
	const char *b = build_dir();
	char cmd[2200];
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	proc_cmd(&a, "fill 0 128 3");
	/* What was written, before its twin is there to merge with. */
	char h[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", 128 * PG));
	proc_cmd(&a, "fill %u 128 3", 128 * PG);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_128), 0);
	/* The domain's pool is memdedupd's to count: none of it is billed to
	 * this process (every page it ever published was, and never less). */
	ASSERT_EQ(s.pool_pages, 0);
	ASSERT(s.general_profit > 0);
	ASSERT_EQ(cgroup_limit(&cg, 40ull << 20), 0);	/* below the 64 MiB kept spare */
	ASSERT_EQ(cgroup_enter(&cg, a.pid), 0);
	snprintf(cmd, sizeof(cmd), "MEMDEDUP_SOCKET=%s %s/memdedup unmerge --pid %d", t.sock, b, (int)a.pid);
	ASSERT_EQ(td_sh("%s >%s/out 2>%s/err", cmd, test_dir(), test_dir()), 1);
	ASSERT_EQ(td_sh("grep -q 'pid %d: not enough memory for the copies' %s/err", (int)a.pid, test_dir()), 0);
	/* Refused: still merged, content intact (the hash faults the pages
	 * in, so the frames compared are there). */
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 128 * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 128 * PG, 128 * PG), h) == 0);
	for (unsigned i = 0; i < 128; i++) {
		struct pm x = proc_page(&a, i * PG), y = proc_page(&a, (128 + i) * PG);
		ASSERT(x.present && y.present);
		ASSERT_EQ(x.pfn, y.pfn);
	}
	/* Not paused: new twins merge. */
	merged_floor = s.merged + 64;
	proc_cmd(&a, "fill %u 64 4", 256 * PG);
	proc_cmd(&a, "fill %u 64 4", 320 * PG);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_more), 0);
	/* With the memory: done, every page private, content intact. Page
	 * cache the cgroup holds (a VMM's buffered reads), reclaimed first,
	 * is memory to be had: 192 MiB read in it, and its limit then 32 MiB
	 * above what it uses. */
	ASSERT_EQ(cgroup_limit(&cg, 1ull << 30), 0);
	char big[600];
	snprintf(big, sizeof(big), "%s/cache.img", test_dir());
	ASSERT_EQ(td_sh("dd if=/dev/zero of=%s bs=1M count=192 conv=fsync status=none && "
			"dd if=%s iflag=nocache count=0 status=none", big, big), 0);
	ASSERT_EQ(td_sh("sh -c 'echo $$ >%s/cgroup.procs && cat %s >/dev/null'", cg.dir, big), 0);
	unsigned long long used = cgroup_usage(&cg);
	ASSERT(used >= 150ull << 20);
	ASSERT_EQ(cgroup_limit(&cg, used + (32ull << 20)), 0);
	ASSERT_EQ(td_sh("%s >%s/out 2>%s/err", cmd, test_dir(), test_dir()), 0);
	ASSERT_EQ(td_sh("grep -q 'unmerge done by 1 agent' %s/out", test_dir()), 0);
	for (unsigned i = 0; i < 128; i += 3)
		ASSERT(proc_page(&a, i * PG).pfn != proc_page(&a, (128 + i) * PG).pfn);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 128 * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 128 * PG, 128 * PG), h) == 0);
	/* The counter follows at the agent's next walk. */
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_none), 0);
	/* Stopped for good (Linux AIO): a resume is refused, and says why. */
	ASSERT_EQ(proc_num(&a, "iosetup"), 0);
	snprintf(cmd, sizeof(cmd), "MEMDEDUP_SOCKET=%s %s/memdedup resume --pid %d", t.sock, b, (int)a.pid);
	ASSERT_EQ(td_sh("%s >%s/out 2>%s/err", cmd, test_dir(), test_dir()), 1);
	ASSERT_EQ(td_sh("grep -q 'merging stopped for good' %s/err", test_dir()), 0);
	proc_stop(&a);
	td_stop(&t);
	close(cg.guard);
	return 0;
}

static int merged_image_32(const md_stats *s) { return s->merged_image >= 32; }
static int sharing_32(const md_stats *s) { return s->pages_sharing >= 32; }

/* `memdedup WHAT` (with --pid pid unless 0) against t's memdedupd, its
 * output in test_dir()/out: the exit code. */
static int control_cli(const struct tdaemon *t, const char *what, pid_t pid)
{
	char p[32] = "";
	if (pid)
		snprintf(p, sizeof(p), " --pid %d", (int)pid);
	return td_sh("MEMDEDUP_SOCKET=%s %s/memdedup %s%s >%s/out 2>&1", t->sock, build_dir(), what, p,
		     test_dir());
}

#define UNMERGE_ALL_PAGES 25600u	/* 100 MiB a VMM */
/* All but a few (a page or two of a pass may wait for the next). */
static int sharing_unmerge_all(const md_stats *s) { return s->pages_sharing >= UNMERGE_ALL_PAGES - 256; }

/* `memdedup unmerge` of two agents in one cgroup, whose copies fit there
 * one at a time but not together: one is done, the other refuses, the
 * answer says which, and neither VMM is killed. Sent to both at once,
 * each checked the memory before either copied, both went on, and the
 * cgroup's OOM killer killed one. (The checks come a few milliseconds
 * apart here, and the first's copies may already count: the test that
 * fails without memdedupd's turns, holding the copies, is
 * scan_unmerge_turns_see_copies_made.) */
TEST_IMPL(cross_unmerge_all_one_agent_at_a_time)
{
	struct test_cgroup cg;
	if (cgroup_make(&cg) != 0)
		SKIP("no memory cgroup of our own to be had here");
	struct tdaemon t;
	struct proc p[2];
	md_stats s;
	char path[600];
	td_start(&t, 65536);
	snprintf(sock_env, sizeof(sock_env), "MEMDEDUP_SOCKET=%s", t.sock);
	const char *env[] = { sock_env, "MEMDEDUP_SCAN=1", "MEMDEDUP_PAGES_TO_SCAN=20000", "MEMDEDUP_SLEEP_MS=1",
			      NULL };
	for (int i = 0; i < 2; i++) {
		proc_start(&p[i], env);
		proc_cmd(&p[i], "map %u", UNMERGE_ALL_PAGES);
		proc_cmd(&p[i], "fill 0 %u 7", UNMERGE_ALL_PAGES);	/* the same in both */
	}
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(proc_stats_wait(&p[i], &s, 60000, sharing_unmerge_all), 0);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(cgroup_enter(&cg, p[i].pid), 0);
	/* Room for one's copies and the 64 MiB kept spare (164 MiB), not
	 * for both's (200 MiB). */
	ASSERT_EQ(cgroup_limit(&cg, cgroup_usage(&cg) + (170ull << 20)), 0);
	ASSERT_EQ(control_cli(&t, "unmerge", 0), 1);
	snprintf(path, sizeof(path), "%s/out", test_dir());
	const char *out = file_text(path);
	fprintf(stderr, "  %s", out);
	int refused = -1;
	for (int i = 0; i < 2; i++) {
		ASSERT_EQ(waitpid(p[i].pid, NULL, WNOHANG), 0);	/* alive */
		char want[64];
		snprintf(want, sizeof(want), "pid %d: not enough memory", (int)p[i].pid);
		if (strstr(out, want))
			refused = i;
	}
	ASSERT(refused >= 0);
	ASSERT(strstr(out, "(done by 1 of 2 agents)"));
	/* The one refused still merged, the other private. */
	ASSERT_EQ(proc_stats_wait(&p[!refused], &s, 20000, sharing_none), 0);
	ASSERT_EQ(proc_stats(&p[refused], &s), 0);
	ASSERT(sharing_unmerge_all(&s));
	ASSERT_EQ(cgroup_limit(&cg, 1ull << 30), 0);
	for (int i = 0; i < 2; i++)
		proc_stop(&p[i]);
	td_stop(&t);
	close(cg.guard);
	return 0;
}

/* Bytes of p's guest RAM (len bytes) mapped from memdedupd's pools:
 * merges only add to them. */
static unsigned long long pool_mapped_bytes(const struct proc *p, size_t len)
{
	char path[64], line[512];
	unsigned long long sum = 0;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)p->pid);
	FILE *f = fopen(path, "r");
	ASSERT(f);
	while (fgets(line, sizeof(line), f)) {
		unsigned long long lo, hi;
		if (strstr(line, "memfd:memdedup-pool") && sscanf(line, "%llx-%llx", &lo, &hi) == 2 &&
		    lo >= p->base && hi <= p->base + len)
			sum += hi - lo;
	}
	fclose(f);
	return sum;
}

/* `memdedup pause` answers once the agent merges no more: the scanner's
 * step went on through its whole batch (here 100,000 pages) after the
 * answer, and tens of MiB more were merged, as kernel KSM's run=0 does not
 * (it waits for ksmd's batch). */
TEST_IMPL(cross_pause_answered_once_merging_stopped)
{
	struct tdaemon t;
	struct proc a;
	const unsigned half = 32768;	/* 128 MiB, twice */
	td_start(&t, 65536);
	snprintf(sock_env, sizeof(sock_env), "MEMDEDUP_SOCKET=%s", t.sock);
	const char *env[] = { sock_env, "MEMDEDUP_SCAN=1", "MEMDEDUP_PAGES_TO_SCAN=100000", "MEMDEDUP_SLEEP_MS=1",
			      NULL };
	proc_start(&a, env);
	proc_cmd(&a, "map %u", 2 * half);
	proc_cmd(&a, "fill 0 %u 9", half);
	proc_cmd(&a, "fill %u %u 9", half * PG, half);
	/* Merging has begun, far from done. */
	for (int i = 0; i < 3000 && pool_mapped_bytes(&a, 2ull * half * PG) < (1ull << 20); i++)
		usleep(2000);
	unsigned long long begun = pool_mapped_bytes(&a, 2ull * half * PG);
	ASSERT(begun >= 1ull << 20);
	ASSERT_EQ(control_cli(&t, "pause", a.pid), 0);
	unsigned long long at_answer = pool_mapped_bytes(&a, 2ull * half * PG);
	ASSERT(at_answer < 2ull * half * PG);	/* else this proves nothing */
	usleep(1500000);
	unsigned long long later = pool_mapped_bytes(&a, 2ull * half * PG);
	fprintf(stderr, "  pool mapped: %llu KiB when paused, %llu KiB 1.5 s later (%llu KiB before)\n",
		at_answer >> 10, later >> 10, begun >> 10);
	ASSERT_EQ(later, at_answer);
	ASSERT_EQ(control_cli(&t, "resume", a.pid), 0);
	proc_stop(&a);
	td_stop(&t);
	return 0;
}

/* The last word of pid's row in `memdedup status` (its STATE), "" if none. */
static const char *status_state(const struct tdaemon *t, pid_t pid)
{
	char path[600];
	ASSERT_EQ(td_sh("MEMDEDUP_RUN_DIR=%s MEMDEDUP_SOCKET=%s %s/memdedup status >%s/out 2>&1", test_dir(),
			t->sock, build_dir(), test_dir()), 0);
	snprintf(path, sizeof(path), "%s/out", test_dir());
	return status_row_state(file_text(path), pid);
}

/* `memdedup status`'s STATE is the agent's own: one resumed by pid while
 * memdedupd's default is paused scans, and said so (memdedupd's record
 * still says paused: STATE showed "paused" for both). */
TEST_IMPL(cross_status_state_is_agents)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 25, h);
	ASSERT_EQ(strcmp(status_state(&t, a.pid), "scanning"), 0);
	ASSERT_EQ(control_cli(&t, "pause", 0), 0);
	ASSERT_EQ(strcmp(status_state(&t, a.pid), "paused"), 0);
	ASSERT_EQ(strcmp(status_state(&t, b.pid), "paused"), 0);
	ASSERT_EQ(control_cli(&t, "resume", a.pid), 0);
	ASSERT_EQ(strcmp(status_state(&t, a.pid), "scanning"), 0);
	ASSERT_EQ(strcmp(status_state(&t, b.pid), "paused"), 0);
	ASSERT_EQ(control_cli(&t, "unmerge", b.pid), 0);
	ASSERT_EQ(strcmp(status_state(&t, b.pid), "unmerged"), 0);
	ASSERT_EQ(control_cli(&t, "resume", 0), 0);
	ASSERT_EQ(strcmp(status_state(&t, b.pid), "scanning"), 0);
	stop_pair(&t, &a, &b);
	return 0;
}

/* memdedupd killed (SIGKILL) and started again on the same socket. */
static void daemon_killed_restarted(struct tdaemon *t)
{
	kill(t->pid, SIGKILL);
	waitpid(t->pid, NULL, 0);
	td_restart(t);
}

/* Two agents' pages shared, then memdedupd killed and started again: the
 * agents forget the old pool's slots, and their pages still map the old
 * pool's frames. An unmerge copied only the pages with a slot, reported
 * success, and left those shared (the scanner does not visit them again
 * either). */
TEST_IMPL(cross_unmerge_after_daemon_restart)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 23, h);
	ASSERT_EQ(wait_same_frames(&a, &b, 0, N), N);
	daemon_killed_restarted(&t);
	ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
	ASSERT_EQ(control_cli(&t, "unmerge", a.pid), 0);
	ASSERT_EQ(same_frames(&a, &b, 0, N), 0);
	for (unsigned i = 0; i < N; i++)
		ASSERT(!proc_page(&a, i * PG).file);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	return 0;
}

/* Mappings in pid's address space of the pool file with inode ino (0:
 * every pool file's, distinct inodes into inos[8], their count in *n). */
static int pool_maps(pid_t pid, unsigned long ino, unsigned long *inos, int *n)
{
	char path[64], line[512];
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "r");
	ASSERT(f);
	int count = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long i;
		if (!strstr(line, "memfd:memdedup-pool") || sscanf(line, "%*s %*s %*s %*s %lu", &i) != 1)
			continue;
		if (ino && i != ino)
			continue;
		count++;
		if (inos) {
			int k;
			for (k = 0; k < *n && inos[k] != i; k++)
				;
			if (k == *n && *n < 8)
				inos[(*n)++] = i;
		}
	}
	fclose(f);
	return count;
}

/* Mappings of the pool file ino left in pid and pid2 (0: none) once none
 * is, or after 20 s. */
static int pool_left(pid_t pid, pid_t pid2, unsigned long ino)
{
	int left = 1;
	for (int i = 0; i < 200 && left; i++) {
		usleep(100000);
		left = pool_maps(pid, ino, NULL, NULL) + (pid2 ? pool_maps(pid2, ino, NULL, NULL) : 0);
	}
	return left;
}

/* memdedupd killed and started again: the agents' pages still map the old
 * pool's file, written since or not, and while one does, all of that file
 * stays in memory (nobody punches it any more). The agents move them off
 * it; the scanner merges them in the new pool. Before, the old pool stayed
 * for as long as the processes lived. */
TEST_IMPL(cross_old_pool_left_after_daemon_restart)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32], hb[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 29, h);
	ASSERT_EQ(wait_same_frames(&a, &b, 0, N), N);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), h) == 0);
	/* The daemon's pool (the agents also map one of their own). */
	unsigned long old[8];
	int nold = 0;
	ASSERT(pool_maps(t.pid, 0, old, &nold) > 0);
	ASSERT_EQ(nold, 1);
	ASSERT(pool_maps(a.pid, old[0], NULL, NULL) > 0);
	daemon_killed_restarted(&t);
	ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
	/* A quarter written since: private copies inside the old mapping. */
	ASSERT(strcmp(proc_cmd(&a, "write %u 7", 3 * PG), "ok") == 0);
	for (unsigned i = 0; i < N / 4; i++)
		ASSERT(strcmp(proc_cmd(&b, "write %u 9", i * PG + 8), "ok") == 0);
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", N * PG));
	snprintf(hb, sizeof(hb), "%s", proc_cmd(&b, "hash 0 %u", N * PG));
	ASSERT_EQ(pool_left(a.pid, b.pid, old[0]), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT(strcmp(proc_cmd(&b, "hash 0 %u", N * PG), hb) == 0);
	/* What both still hold alike shares again, in the new pool. */
	ASSERT(wait_same_frames(&a, &b, N / 2 * PG, N / 2) == (int)(N / 2));
	nold = 0;
	ASSERT(pool_maps(t.pid, 0, old + 1, &nold) > 0);
	ASSERT(old[1] != old[0]);
	ASSERT(pool_maps(a.pid, old[1], NULL, NULL) > 0);	/* merged there */
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	return 0;
}

/* Unmerged (every page a private copy, still in the pool's mappings),
 * resumed, then memdedupd restarted: with no page naming a slot, nothing
 * told the agent it held an old pool, and it kept it mapped for good. */
TEST_IMPL(cross_old_pool_left_after_unmerge)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 37, h);
	ASSERT_EQ(wait_same_frames(&a, &b, 0, N), N);
	unsigned long old[8];
	int nold = 0;
	ASSERT(pool_maps(t.pid, 0, old, &nold) > 0 && nold == 1);
	/* Both unmerged, a resumed: its pages, all different, merge with
	 * nothing again. */
	ASSERT_EQ(control_cli(&t, "unmerge", 0), 0);
	ASSERT_EQ(control_cli(&t, "resume", a.pid), 0);
	ASSERT(pool_maps(a.pid, old[0], NULL, NULL) > 0);	/* the copies, in its mappings */
	daemon_killed_restarted(&t);
	ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
	ASSERT_EQ(pool_left(a.pid, 0, old[0]), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	return 0;
}

/* Mappings in pid's address space of path (by name). */
static int maps_naming(pid_t pid, const char *path)
{
	char maps[64], line[1024];
	snprintf(maps, sizeof(maps), "/proc/%d/maps", (int)pid);
	FILE *f = fopen(maps, "r");
	ASSERT(f);
	int count = 0;
	while (fgets(line, sizeof(line), f))
		count += strstr(line, path) != NULL;
	fclose(f);
	return count;
}

/* Guest RAM that is a private mapping of the VMM's own file (a memory
 * backend with share=off, on shmem) is left alone when the agents move
 * their pages off an old pool: "a file page" is all the engine's records
 * say of both. Moved, its holes were filled in the file and its pages
 * copied into anonymous memory. */
TEST_IMPL(cross_old_pool_leaves_vmm_file_alone)
{
	struct tdaemon t;
	struct proc a, b;
	char path[128], h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 31, h);
	snprintf(path, sizeof(path), "/dev/shm/memdedup-test-%d", (int)getpid());
	int w = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ASSERT(w >= 0);
	char page[PG];
	memset(page, 0x5a, sizeof(page));
	ASSERT(pwrite(w, page, PG, 0) == (ssize_t)PG);
	ASSERT(ftruncate(w, 64 * PG) == 0);	/* one page of data, 63 holes */
	struct stat st0, st1;
	ASSERT(fstat(w, &st0) == 0);
	int fd = (int)proc_num(&a, "open %s", path);
	unlink(path);	/* a failed assertion leaves nothing in /dev/shm */
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "mapfile %u %u %d", 512 * PG, 64 * PG, fd), 0);
	ASSERT_EQ(proc_num(&a, "advise %u %u mergeable", 512 * PG, 64 * PG), 0);
	ASSERT_EQ(maps_naming(a.pid, path), 1);
	unsigned long old[8];
	int nold = 0;
	ASSERT(pool_maps(t.pid, 0, old, &nold) > 0 && nold == 1);
	daemon_killed_restarted(&t);
	ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
	ASSERT_EQ(pool_left(a.pid, 0, old[0]), 0);	/* the pool's pages moved, past the file's */
	usleep(1500000);	/* and a pass more */
	ASSERT_EQ(maps_naming(a.pid, path), 1);
	ASSERT(fstat(w, &st1) == 0);
	ASSERT_EQ(st1.st_blocks, st0.st_blocks);
	close(w);
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	return 0;
}

/* `memdedup unmerge` gives a private copy to every page shared, not only
 * pool pages: those shared at read time and those the scanner merged onto
 * the image too (they stayed the image's, KSM's run=2 leaves none). */
TEST_IMPL(cross_unmerge_image_pages)
{
	struct tdaemon t;
	struct proc a;
	char img[512];
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	snprintf(img, sizeof(img), "%s/unmerge.img", test_dir());
	make_image(img, 2 << 20, 21);
	int fd = (int)proc_num(&a, "open %s", img);
	ASSERT(fd >= 0);
	ASSERT_EQ(proc_num(&a, "read %d 0 %u 0 0", fd, 1u << 20), 1 << 20);
	ASSERT(strcmp(proc_cmd(&a, "copy 0 %u %u", 512 * PG, 32 * PG), "ok") == 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, merged_image_32), 0);
	char h[32];
	snprintf(h, sizeof(h), "%s", proc_cmd(&a, "hash 0 %u", 544 * PG));	/* faults all in */
	for (unsigned i = 0; i < 32; i++)
		ASSERT_EQ(proc_page(&a, (512 + i) * PG).pfn, proc_page(&a, i * PG).pfn);
	/* Both copies are the image's, not only equal to each other. */
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 1u << 20), hex(fnv_file(img, 0, 1 << 20))) == 0);
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 512 * PG, 32 * PG), hex(fnv_file(img, 0, 32 * PG))) == 0);
	ASSERT(proc_page(&a, 100 * PG).file);
	ASSERT_EQ(control_cli(&t, "unmerge", a.pid), 0);
	/* Counted before the answer: nothing shared, nothing merged. */
	ASSERT_EQ(proc_stats(&a, &s), 0);
	ASSERT_EQ(s.pages_shared, 0);
	ASSERT_EQ(s.pages_sharing, 0);
	for (unsigned i = 0; i < 256; i++) {
		struct pm pm = proc_page(&a, i * PG);
		ASSERT(pm.present && !pm.file);
	}
	for (unsigned i = 0; i < 32; i++) {
		struct pm pm = proc_page(&a, (512 + i) * PG);
		ASSERT(pm.present && !pm.file);
		ASSERT(pm.pfn != proc_page(&a, i * PG).pfn);
	}
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 544 * PG), h) == 0);
	/* Nothing of the image is shared: a writer changes nothing here. */
	ASSERT_EQ(td_sh("dd if=/dev/urandom of=%s bs=1M count=2 conv=notrunc,fsync status=none", img), 0);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", 544 * PG), h) == 0);
	/* Resumed: copies of the image's old content in anonymous memory
	 * merge in the pool. The scanner's index of image pages still knew
	 * that content, and a page it names is not looked up in the pool:
	 * entries of an image whose lease broke are dropped when met. */
	ASSERT_EQ(control_cli(&t, "resume", a.pid), 0);
	ASSERT(strcmp(proc_cmd(&a, "copy 0 %u %u", 700 * PG, 32 * PG), "ok") == 0);
	ASSERT(strcmp(proc_cmd(&a, "copy 0 %u %u", 800 * PG, 32 * PG), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_32), 0);
	proc_cmd(&a, "hash %u %u", 700 * PG, 132 * PG);	/* faults both in */
	for (unsigned i = 0; i < 32; i++) {
		ASSERT(proc_page(&a, (700 + i) * PG).present);
		ASSERT_EQ(proc_page(&a, (700 + i) * PG).pfn, proc_page(&a, (800 + i) * PG).pfn);
	}
	char first[32];
	snprintf(first, sizeof(first), "%s", proc_cmd(&a, "hash 0 %u", 32 * PG));
	ASSERT(strcmp(proc_cmd(&a, "hash %u %u", 700 * PG, 32 * PG), first) == 0);
	proc_stop(&a);
	td_stop(&t);
	return 0;
}

static int accounted_twice(struct proc *p, md_stats *s);

/* Rounds of writers in a and b (writers threads each, ms long) on twin pages
 * (the two halves of 1024 pages, the same in both processes, merged), while
 * both scanners merge through one pool; restart: memdedupd killed and
 * started again 1 s into each round, and nothing maps its old pool after
 * it. Every write is read back. Merges go on while the writers run (pages
 * merged again after the writers broke them), and must meet them: a writer
 * that waited on a frozen page is the proof that merges write-protect what
 * they replace. Through memdedupd such a wait is rare (two round trips come
 * between a visit and the freeze, so few merges land on a page being
 * written), and so is a write lost without the protection: while no writer
 * waited, the round is run again, three in all (a long one, check-all's, is
 * one), and a compare must at least have found a page written since its
 * visit. One round whose merges all came once the writers had left their
 * pages passed with write-protection taken out of merges. */
static void stress_rounds(struct tdaemon *t, struct proc *a, struct proc *b, unsigned writers, int ms,
			  int restart)
{
	md_stats a0, b0, sa, sb;
	uint64_t met = 0;
	ASSERT_EQ(accounted_twice(a, &a0), 0);
	ASSERT_EQ(accounted_twice(b, &b0), 0);
	uint64_t merged0 = a0.merged + b0.merged;
	for (int round = 0;; round++) {
		unsigned long old[8];
		int nold = 0;
		if (restart)
			ASSERT(pool_maps(t->pid, 0, old, &nold) > 0 && nold == 1);
		fprintf(a->in, "writers %u %d 0 %u twin\n", writers, ms, 1024 * PG);
		fflush(a->in);
		fprintf(b->in, "writers %u %d 0 %u twin\n", writers, ms, 1024 * PG);
		fflush(b->in);
		if (restart) {
			usleep(1000000);
			daemon_killed_restarted(t);
			ASSERT_EQ(agents_back(t, a->pid, b->pid), 0);
		}
		char la[64] = "", lb[64] = "";
		ASSERT(fgets(la, sizeof(la), a->out) && fgets(lb, sizeof(lb), b->out));
		la[strcspn(la, "\n")] = lb[strcspn(lb, "\n")] = '\0';
		if (strcmp(la, "ok") != 0 || strcmp(lb, "ok") != 0)
			fprintf(stderr, "  writers: a %s, b %s\n", la, lb);
		ASSERT(strcmp(la, "ok") == 0 && strcmp(lb, "ok") == 0);
		if (restart)
			ASSERT_EQ(pool_left(a->pid, b->pid, old[0]), 0);
		/* The counters as of after the writers (set once a second). */
		ASSERT_EQ(accounted_twice(a, &sa), 0);
		ASSERT_EQ(accounted_twice(b, &sb), 0);
		uint64_t waited = sa.wp_waits + sb.wp_waits - a0.wp_waits - b0.wp_waits;
		uint64_t abandoned = sa.abandoned + sb.abandoned - a0.abandoned - b0.abandoned;
		fprintf(stderr, "  merged %llu+%llu, abandoned %llu, writers waited %llu\n",
			(unsigned long long)(sa.merged - a0.merged), (unsigned long long)(sb.merged - b0.merged),
			(unsigned long long)abandoned, (unsigned long long)waited);
		met += waited + abandoned;
		if (waited || round == 2 || ms >= 60000)
			break;
		a0 = sa;
		b0 = sb;
	}
	/* Merged again after the writers broke the converged pages (a round
	 * may merge nothing: the agent finds pages written since they merged
	 * every few seconds only). */
	ASSERT(sa.merged + sb.merged > merged0);
	ASSERT(met > 0);
}

/* Twin pages in both processes: the two halves of 1024 pages (from seed),
 * the same in both, merged. */
static void start_stress_pair(struct tdaemon *t, struct proc *a, struct proc *b, unsigned seed)
{
	md_stats s;
	td_start(t, 65536);
	start_agent(a, t, NULL);
	start_agent(b, t, NULL);
	proc_cmd(a, "fill 0 512 %u", seed);
	proc_cmd(a, "fill %u 512 %u", 512 * PG, seed);
	proc_cmd(b, "fill 0 512 %u", seed);
	proc_cmd(b, "fill %u 512 %u", 512 * PG, seed);
	ASSERT_EQ(proc_stats_wait(a, &s, 20000, sharing_1024), 0);
	ASSERT_EQ(proc_stats_wait(b, &s, 20000, sharing_1024), 0);
}

/* Four writers in each process for 10 s a round. */
TEST_IMPL(cross_stress_no_lost_write)
{
	struct tdaemon t;
	struct proc a, b;
	int ms = getenv("MD_STRESS_MS") ? atoi(getenv("MD_STRESS_MS")) : 10000;
	start_stress_pair(&t, &a, &b, 4);
	stress_rounds(&t, &a, &b, 4, ms, 0);
	stop_pair_pool_empty(&t, &a, &b);
	return 0;
}

/* The same while memdedupd is killed and started again under the writers:
 * the agents move their pages off the old pool (written or being written)
 * and merge them in the new one. */
TEST_IMPL(cross_stress_daemon_restart_no_lost_write)
{
	struct tdaemon t;
	struct proc a, b;
	start_stress_pair(&t, &a, &b, 6);
	stress_rounds(&t, &a, &b, 2, 10000, 1);
	stop_pair_pool_empty(&t, &a, &b);
	return 0;
}

/* The agent's statistics once it has accounted them twice from now (its
 * thread's CPU time is set at each round, after the counters). */
static int accounted_twice(struct proc *p, md_stats *s)
{
	md_stats s0;
	int err = proc_stats(p, &s0);
	for (int round = 0; round < 2 && !err; round++) {
		for (int waited = 0; (err = proc_stats(p, s)) == 0 && s->agent_cpu_ns == s0.agent_cpu_ns;
		     waited += 20) {
			if (waited >= 10000)
				return -ETIMEDOUT;
			usleep(20000);
		}
		s0 = *s;
	}
	return err;
}

TEST_IMPL(cross_reads_pair)
{
	/* Two guests read one image, each page copied (no sharing at read
	 * time). The slow one tells memdedupd which file page went where
	 * (READS) before its scanner has visited them; the fast one's READS
	 * then meet them: its copies are named to it (it publishes the pairs
	 * of the two), and their lookups, hinted or the cursor's (untagged),
	 * publish and name the slow one's copies, which merge out of its
	 * rate: one visit per pair. Both end on the same frames with the
	 * image's content. */
	struct tdaemon t;
	struct proc x, y;
	char img[512], want[32];
	snprintf(img, sizeof(img), "%s/pair.img", test_dir());
	make_image(img, N * PG, 31);
	snprintf(want, sizeof(want), "%016llx", (unsigned long long)fnv_file(img, 0, N * PG));
	td_start(&t, 65536);
	/* y visits its pages at about 33 a second (a page a batch, gathered
	 * 8 batches a wake-up, 30 ms apart), and merges as many candidates.
	 * Whether x's lookups come before y's own visits was a race (no pair
	 * by reads at all on a loaded machine): y is paused once its reads
	 * are known, until x has visited its hinted pages; the visits y made
	 * before are subtracted from the pairs expected. */
	start_agent_at(&y, &t, "MEMDEDUP_NO_SHARING=1", "MEMDEDUP_PAGES_TO_SCAN=1", "MEMDEDUP_SLEEP_MS=30");
	start_agent_at(&x, &t, "MEMDEDUP_NO_SHARING=1", "MEMDEDUP_PAGES_TO_SCAN=4000", NULL);
	int fx = (int)proc_num(&x, "open %s", img);
	ASSERT(fx >= 0);
	int fy = (int)proc_num(&y, "open %s", img);
	ASSERT(fy >= 0);
	ASSERT_EQ(proc_num(&y, "read %d 0 %u 0 0", fy, N * PG), (long long)N * PG);
	for (int i = 0; i < 2000 && !td_domains_int(&t, "read_slots"); i++)
		usleep(10000);
	ASSERT(td_domains_int(&t, "read_slots") > 0);	/* y's reads are known */
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup pause --pid %d >/dev/null", t.sock, build_dir(),
			(int)y.pid), 0);
	ASSERT_EQ(proc_num(&x, "read %d 0 %u 0 0", fx, N * PG), (long long)N * PG);
	md_stats xs;
	ASSERT_EQ(proc_stats_wait(&x, &xs, 40000, hinted_or_merged_n), 0);
	/* What y looked up itself before its pause took effect: x's copies
	 * of those pages were named to find y's sightings, not paired.
	 * The counters are accounted once a second: read after two rounds. */
	md_stats ys;
	ASSERT_EQ(accounted_twice(&y, &ys), 0);
	long long y_early = (long long)(ys.pages_hinted + ys.pages_scanned);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup resume --pid %d >/dev/null", t.sock, build_dir(),
			(int)y.pid), 0);
	md_stats s;
	ASSERT_EQ(proc_stats_wait(&x, &s, 40000, sharing_n), 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	ASSERT_EQ(proc_stats_wait(&y, &s, 40000, sharing_n), 0);
	ASSERT_EQ(s.pages_shared_at_read, 0);
	/* Every page pairs by read but those y looked up first (a quarter
	 * more, for entries a lossy table may drop). */
	long long pairs = td_domains_int(&t, "read_pairs");
	fprintf(stderr, "  read_pairs %lld, read_named %lld, y looked up %lld first\n", pairs,
		td_domains_int(&t, "read_named"), y_early);
	ASSERT(pairs >= (long long)N - y_early - (long long)N / 4);
	ASSERT_EQ(same_frames(&x, &y, 0, N), N);
	ASSERT(strcmp(proc_cmd(&x, "hash 0 %u", N * PG), want) == 0);
	ASSERT(strcmp(proc_cmd(&y, "hash 0 %u", N * PG), want) == 0);
	proc_stop(&x);
	proc_stop(&y);
	td_stop(&t);
	return 0;
}

/* A `set` for all agents says which kept their own value of the key
 * (memdedup run --pages-to-scan): it counted them as done, which they are
 * not. A key neither set on its own is done by both. */
TEST_IMPL(cross_set_all_says_kept_own)
{
	struct tdaemon t;
	struct proc a, b;
	td_start(&t, 4096);
	start_agent_at(&a, &t, NULL, "MEMDEDUP_PAGES_TO_SCAN=4000", "MEMDEDUP_SLEEP_MS=20");
	start_agent_at(&b, &t, NULL, "MEMDEDUP_X=2", "MEMDEDUP_SLEEP_MS=20");
	ASSERT(agent_field_becomes(&t, a.pid, "pid", a.pid) == a.pid);
	ASSERT(agent_field_becomes(&t, b.pid, "pid", b.pid) == b.pid);
	const char *b_dir = build_dir();
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set pages_to_scan=300 >%s/out 2>&1", t.sock, b_dir,
			test_dir()), 0);
	ASSERT_EQ(td_sh("grep -qx 'pages_to_scan=300 done by 1 agent; 1 keeps its own value' %s/out", test_dir()),
		  0);
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set cpu_percent=50 >%s/out 2>&1", t.sock, b_dir,
			test_dir()), 0);
	ASSERT_EQ(td_sh("grep -qx 'cpu_percent=50 done by 2 agents' %s/out", test_dir()), 0);
	/* Both keep their own sleep. */
	ASSERT_EQ(td_sh("MEMDEDUP_SOCKET=%s %s/memdedup set sleep_millisecs=30 >%s/out 2>&1", t.sock, b_dir,
			test_dir()), 0);
	ASSERT_EQ(td_sh("grep -qx 'sleep_millisecs=30 done by 0 agents; 2 keep their own value' %s/out",
			test_dir()), 0);
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	return 0;
}

/* Zero pages an agent dropped are memory saved, as KSM counts the zero
 * pages it places: the domain's general_profit (PROFIT_MB, the real
 * saving) counts them, and the domain and the totals show the agents'
 * KSM-like counters (zero pages, full scans, the scanner's CPU) added up. */
static int zero_512(const md_stats *s)
{
	return s->zero_pages >= 512 && s->full_scans >= 1;
}

TEST_IMPL(cross_domain_counts_zero_pages)
{
	struct tdaemon t;
	struct proc a;
	md_stats s;
	json_t *st = NULL, *dom = NULL, *tot;
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	proc_cmd(&a, "zero 0 512");
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, zero_512), 0);
	/* The daemon knows what the agent reported last (each second). */
	for (int i = 0; i < 100; i++) {
		json_decref(st);
		st = td_status(&t);
		dom = json_array_get(json_object_get(st, "domains"), 0);
		if (dom && td_int(dom, "zero_pages") >= 512 && td_int(dom, "full_scans") >= 1)
			break;
		usleep(100000);
	}
	ASSERT(dom);
	tot = json_object_get(st, "totals");
	ASSERT(td_int(dom, "zero_pages") >= 512);
	ASSERT(td_int(dom, "full_scans") >= 1);
	ASSERT(td_int(dom, "scan_cpu_ns") > 0);
	ASSERT_EQ(td_int(dom, "pages_sharing"), 0);
	/* 2 MiB saved, less the daemon's bookkeeping: its sightings table
	 * (1 MiB at least once a page was looked up: the scanner may see
	 * the pages the testproc writes before the zeroes) and well under
	 * 1 MiB more. */
	ASSERT(td_int(dom, "general_profit") + td_int(dom, "sighting_slots") * 16 >= 512LL * 4096 - (1 << 20));
	ASSERT_EQ(td_int(tot, "general_profit"), td_int(dom, "general_profit"));
	ASSERT_EQ(td_int(tot, "zero_pages"), td_int(dom, "zero_pages"));
	ASSERT_EQ(td_int(tot, "full_scans"), td_int(dom, "full_scans"));
	json_decref(st);
	proc_stop(&a);
	td_stop(&t);
	return 0;
}

/* --domain=private with a memdedupd up: each process merges its own
 * duplicates through a pool of its own, and shares not one frame with
 * another private process; the daemon never hears of either (README:
 * "--domain=private merges only within the process"). */
static int sharing_private(const md_stats *s) { return s->pages_sharing >= N / 2; }
TEST_IMPL(cross_private_domain_never_shares)
{
	struct tdaemon t;
	struct proc a, b;
	md_stats s;
	td_start(&t, 65536);
	start_agent(&a, &t, "MEMDEDUP_DOMAIN=private");
	start_agent(&b, &t, "MEMDEDUP_DOMAIN=private");
	struct proc *p[2] = { &a, &b };
	for (int k = 0; k < 2; k++) {
		proc_cmd(p[k], "fill 0 %u 6", N / 2);
		proc_cmd(p[k], "fill %u %u 6", N / 2 * PG, N / 2);
	}
	ASSERT_EQ(proc_stats_wait(&a, &s, 20000, sharing_private), 0);
	ASSERT_EQ(proc_stats_wait(&b, &s, 20000, sharing_private), 0);
	/* Merged within each process: both copies on one frame. */
	for (int k = 0; k < 2; k++) {
		proc_cmd(p[k], "hash 0 %u", N * PG);
		int same = 0;
		for (unsigned i = 0; i < N / 2; i++)
			same += proc_page(p[k], i * PG).pfn == proc_page(p[k], (N / 2 + i) * PG).pfn;
		ASSERT_EQ(same, N / 2);
	}
	/* Not one frame across, and nothing in the daemon. */
	ASSERT_EQ(same_frames(&a, &b, 0, N), 0);
	ASSERT_EQ(agent_field(&t, a.pid, "pid"), -1);
	ASSERT_EQ(agent_field(&t, b.pid, "pid"), -1);
	ASSERT_EQ(domain_live(&t), 0);
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	return 0;
}

/* root's pause of all outlives memdedupd (memdedupd.state): its agents,
 * back on a memdedupd started again, stay paused, and merge nothing new
 * until resumed. They scanned again at once (review). */
TEST_IMPL(cross_pause_survives_daemon_restart)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 31, h);
	ASSERT_EQ(control_cli(&t, "pause", 0), 0);
	daemon_killed_restarted(&t);
	ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
	proc_cmd(&a, "fill %u %u 8", 512 * PG, N);
	proc_cmd(&b, "fill %u %u 8", 512 * PG, N);
	usleep(2000000);	/* what a scanning pair merges in well under this */
	ASSERT_EQ(same_frames(&a, &b, 512 * PG, N), 0);
	ASSERT_EQ(strcmp(status_state(&t, a.pid), "paused"), 0);
	ASSERT_EQ(strcmp(status_state(&t, b.pid), "paused"), 0);
	ASSERT_EQ(control_cli(&t, "resume", 0), 0);
	ASSERT_EQ(wait_same_frames(&a, &b, 512 * PG, N), N);
	stop_pair(&t, &a, &b);
	return 0;
}

/* root's pause of all is memdedupd's default, not the agents': a new
 * memdedupd started from the defaults (its state file removed, as the
 * README says to) resumes them. They stayed paused for good, counted as
 * scanning in its SHARE (review). */
TEST_IMPL(cross_pause_of_all_ends_with_state_removed)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32], state[320];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 35, h);
	ASSERT_EQ(control_cli(&t, "pause", 0), 0);
	kill(t.pid, SIGKILL);
	waitpid(t.pid, NULL, 0);
	snprintf(state, sizeof(state), "%s/memdedupd.state", t.dir);
	ASSERT_EQ(unlink(state), 0);
	td_restart(&t);
	ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
	proc_cmd(&a, "fill %u %u 8", 512 * PG, N);
	proc_cmd(&b, "fill %u %u 8", 512 * PG, N);
	ASSERT_EQ(wait_same_frames(&a, &b, 512 * PG, N), N);
	stop_pair(&t, &a, &b);
	return 0;
}

/* A full pool (N/4 slots, two agents of N equal pages): what it cannot
 * take is said once in memdedupd's log, counted in its domain's
 * publish_full and the agents' merge_fallbacks, and those pages age as
 * unique ones. They were sent again at every pass (a 4 KiB PUBLISH each,
 * hashed and refused), never skipped, and nothing said why merging
 * stopped at a quarter. */
static int sharing_quarter(const md_stats *s)
{
	return s->pages_sharing >= N / 4;
}

TEST_IMPL(cross_full_pool_said_and_aged)
{
	struct tdaemon t;
	struct proc a, b;
	md_stats s1, s2;
	td_start(&t, N / 4);
	start_agent_at(&a, &t, NULL, "MEMDEDUP_PAGES_TO_SCAN=256", "MEMDEDUP_SLEEP_MS=20");
	start_agent_at(&b, &t, NULL, "MEMDEDUP_PAGES_TO_SCAN=256", "MEMDEDUP_SLEEP_MS=20");
	proc_cmd(&a, "fill 0 %u 5", N);
	proc_cmd(&b, "fill 0 %u 5", N);
	ASSERT_EQ(proc_stats_wait(&a, &s1, 20000, sharing_quarter), 0);
	sleep(3);
	ASSERT_EQ(proc_stats(&a, &s1), 0);
	sleep(3);
	ASSERT_EQ(proc_stats(&a, &s2), 0);
	long long full = td_domains_int(&t, "publish_full");
	printf("  live %lld of %u slots; publish_full %lld; a: merge_fallbacks %llu, smart_skips +%llu\n",
	       domain_live(&t), N / 4, full, (unsigned long long)s2.merge_fallbacks,
	       (unsigned long long)(s2.smart_skips - s1.smart_skips));
	ASSERT_EQ(domain_live(&t), N / 4);
	ASSERT(full > 0);
	ASSERT(s2.merge_fallbacks > 0);
	ASSERT(s2.smart_skips > s1.smart_skips);
	ASSERT_EQ(td_sh("test $(grep -c 'the pool is full; publications are refused' %s/log) = 1", t.dir), 0);
	stop_pair(&t, &a, &b);
	return 0;
}

/* With memdedupd, pages mapped from the agent's fill strips are saved
 * memory: the domain's general_profit (status's PROFIT_MB, "the saving")
 * counts them, less the strips' own pages. It left them out. */
static int filled_2000(const md_stats *s)
{
	return s->filled_pages >= 2000;
}

TEST_IMPL(cross_domain_profit_counts_fill_pages)
{
	struct tdaemon t;
	struct proc a;
	md_stats s;
	td_start(&t, 65536);
	start_agent(&a, &t, NULL);
	proc_cmd(&a, "map 4096");
	ASSERT(strcmp(proc_cmd(&a, "poison %u 4000 204", 0u), "ok") == 0);
	ASSERT_EQ(proc_stats_wait(&a, &s, 30000, filled_2000), 0);
	usleep(2500000);	/* the agent reports each second */
	ASSERT_EQ(proc_stats_wait(&a, &s, 30000, filled_2000), 0);
	json_t *st = td_status(&t);
	json_t *dom = json_array_get(json_object_get(st, "domains"), 0);
	ASSERT(dom);
	fprintf(stderr, "  agent: filled %llu sharing %llu pool %llu profit %lld; domain: sharing %lld profit %lld "
		"zero %lld\n", (unsigned long long)s.filled_pages, (unsigned long long)s.pages_sharing,
		(unsigned long long)s.pool_pages, (long long)s.general_profit, td_int(dom, "pages_sharing"),
		td_int(dom, "general_profit"), td_int(dom, "zero_pages"));
	/* What the fill strips saved: their mapped pages less the strips'. */
	long long fill_saved = ((long long)s.fill_mapped - (long long)s.pool_pages) * 4096;
	ASSERT(s.fill_mapped >= 2000 && s.fill_mapped == s.pages_sharing);	/* nothing else merged */
	ASSERT(td_int(dom, "general_profit") >= fill_saved - (2 << 20));
	json_decref(st);
	proc_stop(&a);
	td_stop(&t);
	return 0;
}

static long long ms_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The VMM's io_setup (I/O the agent does not see) with memdedupd stopped:
 * the copies are the VMM thread's by design, but it does not wait for the
 * daemon's answer to the UNREFs they free (it did, 2 s, on the thread that
 * set up a drive or a device); the agent's thread gives them back. */
TEST_IMPL(cross_io_unseen_daemon_stopped_no_wait)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 31, h);
	ASSERT_EQ(wait_same_frames(&a, &b, 0, N), N);
	usleep(300000);
	td_pause(&t);
	long long t0 = ms_now();
	ASSERT_EQ(proc_num(&a, "iosetup"), 0);
	long long took = ms_now() - t0;
	printf("  io_setup took %lld ms with memdedupd stopped\n", took);
	kill(t.pid, SIGCONT);
	ASSERT(strcmp(proc_cmd(&a, "hash 0 %u", N * PG), h) == 0);
	ASSERT_EQ(agent_field_becomes(&t, a.pid, "references", 0), 0);	/* given back all the same */
	proc_stop(&a);
	proc_stop(&b);
	td_stop(&t);
	ASSERT(took < 1000);	/* not the client's 2 s wait for an answer */
	return 0;
}

/* An operator's pause of one VMM (`memdedup pause --pid P`, and a non-root
 * user's `memdedup pause` of all theirs) outlives memdedupd: a new one
 * knows only root's pause of all, and its WELCOME resumed the agent,
 * which merged again though nobody resumed it (review). A RESUME then
 * lifts it. */
TEST_IMPL(cross_pause_by_pid_survives_daemon_restart)
{
	struct tdaemon t;
	struct proc a, b;
	char h[32];
	td_start(&t, 65536);
	start_sharing_pair(&t, &a, &b, 33, h);
	ASSERT_EQ(control_cli(&t, "pause", a.pid), 0);
	ASSERT_EQ(control_cli(&t, "pause", b.pid), 0);
	daemon_killed_restarted(&t);
	ASSERT_EQ(agents_back(&t, a.pid, b.pid), 0);
	proc_cmd(&a, "fill %u %u 8", 512 * PG, N);
	proc_cmd(&b, "fill %u %u 8", 512 * PG, N);
	usleep(2000000);
	ASSERT_EQ(same_frames(&a, &b, 512 * PG, N), 0);
	ASSERT_EQ(strcmp(status_state(&t, a.pid), "paused"), 0);
	ASSERT_EQ(control_cli(&t, "resume", a.pid), 0);
	ASSERT_EQ(control_cli(&t, "resume", b.pid), 0);
	int same = 0;
	for (int i = 0; i < 200 && same < (int)N; i++, usleep(100000))
		same = same_frames(&a, &b, 512 * PG, N);
	ASSERT_EQ(same, (int)N);
	stop_pair(&t, &a, &b);
	return 0;
}
