/* daemon_util.h - a private memdedupd for one test, and small helpers. */
#ifndef MD_TEST_DAEMON_UTIL_H
#define MD_TEST_DAEMON_UTIL_H
#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>

#include "client.h"

struct tdaemon {
	pid_t pid;
	char dir[256];     /* run dir: pid file, log */
	char sock[300];
	unsigned pool_pages;
};

/* Starts build/memdedupd --foreground on a socket in a fresh directory
 * (mode 0755, so other uids reach it) and waits until it answers. */
void td_start(struct tdaemon *t, unsigned pool_pages);
/* td_start, memdedupd waiting at most wait_ms for an agent's answer to a
 * control (MEMDEDUP_CONTROL_WAIT_MS) instead of its default. */
void td_start_waiting(struct tdaemon *t, unsigned pool_pages, unsigned wait_ms);
/* A new memdedupd on t's socket and run dir (the last one was killed),
 * and waits until it answers. */
void td_restart(struct tdaemon *t);
/* SIGTERM, and checks it exits 0 and removes its socket. */
void td_stop(struct tdaemon *t);
/* SIGSTOP, and waits until it is stopped (SIGCONT resumes it). */
void td_pause(const struct tdaemon *t);
struct md__client *td_connect(const struct tdaemon *t);
/* Connects and says HELLO as this process. */
struct md__client *td_agent(const struct tdaemon *t, const char *domain,
			    struct md__msg_welcome *w, int *pool_fd);
/* The daemon's STATUS document (caller decrefs). */
json_t *td_status(const struct tdaemon *t);
/* The first object of array whose key is value, or NULL. */
json_t *td_find(json_t *array, const char *key, long long value);
/* The domain object of id in a STATUS document, or NULL. */
json_t *td_domain(json_t *status, uint32_t id);
long long td_int(json_t *obj, const char *key);
/* The sum of a counter over the daemon's domains. */
long long td_domains_int(const struct tdaemon *t, const char *key);
/* Sends raw bytes on a fresh connection; reads the answer's header and
 * payload (up to *plen bytes). Returns the reply type, 0 on EOF. */
int td_raw(const struct tdaemon *t, const void *msg, size_t len, struct md__msg *reply);
struct sockaddr_un;
void td_sockaddr(const struct tdaemon *t, struct sockaddr_un *sa);
void td_fill_page(unsigned char *p, unsigned seed);
/* Reads exactly n bytes (3 s at most), or fails the test. */
void td_read_all(int fd, void *buf, size_t n);
/* system(3) of a printf-formatted command: its exit status, -1 if killed. */
int td_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#endif
