/*
 * daemonflood.c - memdedupd's fairness between users: how long one user's
 * one-hash LOOKUP takes while another user floods the daemon from many
 * connections (each an agent's, after its HELLO), each sending full READS
 * (128 runs of 1,024 pages) eight at a time and reading the replies.
 *
 * Usage (root: the flooders become nobody, the asker stays root):
 *   daemonflood SOCKET CONNECTIONS [ROUND_TRIPS]
 * Prints one JSON object: the connections, the asker's round trips' mean,
 * median and worst in ms, and the flooders' READS answered a second
 * meanwhile, over 3 s at least (the daemon's throughput for them).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

static const char *sock_path;
static uint64_t *flood_replies;	/* shared by the flooders: their READS answered */

static int connect_daemon(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(sock_path) >= sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path, sock_path, strlen(sock_path));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		perror("daemonflood: connect");
		exit(1);
	}
	return fd;
}

static void read_all(int fd, void *buf, size_t n)
{
	for (size_t got = 0; got < n;) {
		ssize_t r = read(fd, (char *)buf + got, n - got);
		if (r <= 0) {
			fprintf(stderr, "daemonflood: read: %s\n", r ? strerror(errno) : "EOF");
			exit(1);
		}
		got += (size_t)r;
	}
}

static void write_all(int fd, const void *buf, size_t n)
{
	for (size_t put = 0; put < n;) {
		ssize_t w = write(fd, (const char *)buf + put, n - put);
		if (w <= 0) {
			perror("daemonflood: write");
			exit(1);
		}
		put += (size_t)w;
	}
}

/* The next reply to a request (seq != 0), its payload skipped. */
static struct md__msg_hdr next_reply(int fd)
{
	static unsigned char in[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	struct md__msg_hdr h;
	for (;;) {
		read_all(fd, in, MD_MSG_HDR_SIZE);
		if (md__msg_hdr_decode(in, MD_MSG_HDR_SIZE, &h) < 0 || h.length > MD_MSG_MAX) {
			fprintf(stderr, "daemonflood: a bad reply header\n");
			exit(1);
		}
		read_all(fd, in + MD_MSG_HDR_SIZE, h.length);
		if (h.seq)
			return h;
	}
}

static void send_msg(int fd, const struct md__msg *m)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	ssize_t n = md__msg_encode(m, buf, sizeof(buf));
	if (n < 0) {
		fprintf(stderr, "daemonflood: cannot encode a %u\n", m->hdr.type);
		exit(1);
	}
	write_all(fd, buf, (size_t)n);
}

static int hello(void)
{
	static struct md__msg m;
	int fd = connect_daemon();
	memset(&m, 0, sizeof(m));
	m.hdr = (struct md__msg_hdr){ .type = MD_MSG_HELLO, .seq = 1 };
	m.u.hello.pid = (uint32_t)getpid();
	send_msg(fd, &m);
	struct md__msg_hdr h = next_reply(fd);
	if (h.type != MD_MSG_WELCOME) {
		fprintf(stderr, "daemonflood: HELLO answered by a %u, not a WELCOME\n", h.type);
		exit(1);
	}
	return fd;
}

/* A flooder: full READS, eight at a time, for ever. */
static void flood(void)
{
	static struct md__msg m;
	int fd = hello();
	uint64_t x = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
	for (uint32_t seq = 2;;) {
		for (int j = 0; j < 8; j++) {
			memset(&m, 0, sizeof(m));
			m.hdr = (struct md__msg_hdr){ .type = MD_MSG_READS, .seq = seq++ };
			m.u.reads.n = MD_READS_MAX;
			for (unsigned q = 0; q < MD_READS_MAX; q++) {
				x = x * 6364136223846793005ull + 1442695040888963407ull;
				m.u.reads.run[q].key = x | 1;
				m.u.reads.run[q].addr = (x >> 20 & 0xffff) << 24;
				m.u.reads.run[q].npages = 1024;
			}
			send_msg(fd, &m);
		}
		for (int j = 0; j < 8; j++) {
			next_reply(fd);
			__atomic_add_fetch(flood_replies, 1, __ATOMIC_RELAXED);
		}
	}
}

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: daemonflood SOCKET CONNECTIONS [ROUND_TRIPS]\n");
		return 2;
	}
	sock_path = argv[1];
	char *end;
	long k = strtol(argv[2], &end, 10), trips = argc > 3 ? strtol(argv[3], NULL, 10) : 50;
	if (*end || k < 0 || k > 4000 || trips < 1 || trips > 100000) {
		fprintf(stderr, "daemonflood: CONNECTIONS 0 to 4000, ROUND_TRIPS 1 to 100000\n");
		return 2;
	}
	if (k && geteuid() != 0) {
		fprintf(stderr, "daemonflood: needs root (the flooders become nobody, another user)\n");
		return 2;
	}
	flood_replies = mmap(NULL, sizeof(*flood_replies), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (flood_replies == MAP_FAILED) {
		perror("daemonflood: mmap");
		return 1;
	}
	pid_t *kids = calloc((size_t)k + 1, sizeof(*kids));
	long nkids = 0;
	pid_t parent = getpid();
	for (long i = 0; i < k; i++) {
		pid_t p = fork();
		if (p < 0) {
			perror("daemonflood: fork");
			break;
		}
		kids[nkids++] = p;
		if (p == 0) {
			/* Asked after the credentials change, which clears it;
			 * a parent gone before then is seen by getppid. */
			if (setgid(65534) != 0 || setuid(65534) != 0)
				_exit(1);
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			if (getppid() != parent)
				_exit(0);
			flood();
		}
	}
	sleep(k ? 2 : 0);	/* the flood under way */
	static struct md__msg m;
	double *rtt = calloc((size_t)trips, sizeof(*rtt)), sum = 0;
	int fd = hello();
	uint64_t floods0 = __atomic_load_n(flood_replies, __ATOMIC_RELAXED);
	double start = now_ms();
	for (long i = 0; i < trips; i++) {
		memset(&m, 0, sizeof(m));
		m.hdr = (struct md__msg_hdr){ .type = MD_MSG_LOOKUP, .seq = (uint32_t)(100 + i) };
		m.u.lookup.n = 1;
		m.u.lookup.hash[0] = 12345 + (uint64_t)i;
		double t0 = now_ms();
		send_msg(fd, &m);
		next_reply(fd);
		rtt[i] = now_ms() - t0;
		sum += rtt[i];
	}
	/* The flood's rate over 3 s at least: a few READS take milliseconds. */
	while (k && now_ms() - start < 3000)
		usleep(10000);
	double took = now_ms() - start;
	uint64_t floods = __atomic_load_n(flood_replies, __ATOMIC_RELAXED) - floods0;
	qsort(rtt, (size_t)trips, sizeof(*rtt), cmp_double);
	printf("{\"connections\":%ld,\"round_trips\":%ld,\"mean_ms\":%.2f,\"median_ms\":%.2f,\"worst_ms\":%.2f,"
	       "\"flood_reads_per_s\":%.0f}\n",
	       k, trips, sum / (double)trips, rtt[trips / 2], rtt[trips - 1], (double)floods * 1e3 / took);
	fflush(stdout);
	for (long i = 0; i < nkids; i++)
		kill(kids[i], SIGTERM);
	while (wait(NULL) > 0)
		;
	free(rtt);
	free(kids);
	return nkids == k ? 0 : 1;
}
