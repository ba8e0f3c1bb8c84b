/* test_client.c - the client library against a fake daemon that answers,
 * or hangs up, exactly when the test says: what the client still owes the
 * daemon when its connection goes. A message not sent whole never reached
 * the daemon, and what it granted in replies that came was taken by no
 * caller: both stay queued for md__client_take_back, which carries them to
 * the next connection to the same daemon. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "daemon_util.h"
#include "log.h"
#include "proc.h"
#include "protocol.h"
#include "runner.h"

/* A fake daemon: a child process serving one client. */
struct fake {
	char dir[32], path[64];
	pid_t kid;
	int go;		/* the test writes here when the script may go on */
};


/* The next message on c, decoded into m. */
static void fake_recv(int c, struct md__msg *m)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	struct md__msg_hdr h;
	td_read_all(c, buf, MD_MSG_HDR_SIZE);
	ASSERT_EQ(md__msg_hdr_decode(buf, MD_MSG_HDR_SIZE, &h), 0);
	td_read_all(c, buf + MD_MSG_HDR_SIZE, h.length);
	ASSERT_EQ(md__msg_decode(buf, MD_MSG_HDR_SIZE + h.length, m), 0);
}

/* Sends m as type answering seq; with the descriptor pass if >= 0. */
static void fake_send(int c, struct md__msg *m, unsigned type, uint32_t seq, int pass)
{
	static unsigned char buf[MD_MSG_HDR_SIZE + MD_MSG_MAX];
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} ctl;
	m->hdr.type = type;
	m->hdr.seq = seq;
	ssize_t len = md__msg_encode(m, buf, sizeof(buf));
	ASSERT(len > 0);
	struct iovec iov = { buf, (size_t)len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (pass >= 0) {
		mh.msg_control = ctl.b;
		mh.msg_controllen = sizeof(ctl.b);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &pass, sizeof(int));
	}
	ASSERT(sendmsg(c, &mh, MSG_NOSIGNAL) == len);
}

/* A pool as memdedupd sends it: read-only, sealed against shrinking. */
static int fake_pool(void)
{
	char path[64];
	int fd = memfd_create("memdedup-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	ASSERT(fd >= 0);
	ASSERT(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	ASSERT(ro >= 0);
	close(fd);
	return ro;
}

/* Starts a fake daemon that answers the HELLO, runs script on the
 * connection (go: where the test says when it may go on), then exits,
 * which hangs up. Returns the client, connected, hello not said yet. */
static struct md__client *fake_connect(struct fake *f, void (*script)(int c, int go))
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int go[2];
	snprintf(f->dir, sizeof(f->dir), "/tmp/md-client-XXXXXX");
	ASSERT(mkdtemp(f->dir) != NULL);
	snprintf(f->path, sizeof(f->path), "%s/sock", f->dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(l >= 0);
	ASSERT(bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	ASSERT(listen(l, 1) == 0);
	ASSERT(pipe(go) == 0);
	f->kid = fork();
	ASSERT(f->kid >= 0);
	if (f->kid == 0) {
		static struct md__msg m;
		close(go[1]);
		int c = accept(l, NULL, NULL);
		ASSERT(c >= 0);
		fake_recv(c, &m);
		ASSERT_EQ(m.hdr.type, MD_MSG_HELLO);
		uint32_t seq = m.hdr.seq;
		memset(&m, 0, sizeof(m));
		m.u.welcome.domain_id = 5;
		m.u.welcome.pool_pages = 16;
		m.u.welcome.generation = 1;
		md__tunables_default(&m.u.welcome.tun);
		fake_send(c, &m, MD_MSG_WELCOME, seq, fake_pool());
		script(c, go[0]);
		_exit(0);
	}
	close(l);
	close(go[0]);
	f->go = go[1];
	struct md__client *c;
	ASSERT_EQ(md__client_connect(&c, f->path), 0);
	return c;
}

/* The same, with the hello said. */
static struct md__client *fake_start(struct fake *f, void (*script)(int c, int go))
{
	struct md__client *c = fake_connect(f, script);
	struct md__msg_welcome w;
	int pool;
	ASSERT_EQ(md__client_hello(c, NULL, 0, &w, &pool), 0);
	close(pool);
	return c;
}

/* Waits for the fake daemon to be done: it has hung up. */
static void fake_wait(struct fake *f)
{
	int st;
	ASSERT_EQ(waitpid(f->kid, &st, 0), f->kid);
	ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void fake_end(struct fake *f, struct md__client *c)
{
	md__client_free(c);
	close(f->go);
	unlink(f->path);
	rmdir(f->dir);
}

/* The references c has queued to give back are exactly want (n). */
static void assert_back(struct md__client *c, const uint32_t *want, size_t n)
{
	uint32_t *s;
	size_t got;
	ASSERT_EQ(md__client_take_back(c, &s, &got), 0);
	ASSERT_EQ(got, n);
	for (size_t i = 0; i < n; i++)
		ASSERT_EQ(s[i], want[i]);
	free(s);
}

static void hang_up(int c, int go)
{
	(void)c;
	(void)go;
}

/* A request is read and never answered: it is late, then the daemon goes. */
static void late_then_hang_up(int c, int go)
{
	static struct md__msg m;
	char x;
	fake_recv(c, &m);
	ASSERT(read(go, &x, 1) == 1);
}

/* The first request (an UNREF) is refused, then the daemon goes without
 * reading the next one. */
static void refuse_unref_then_hang_up(int c, int go)
{
	static struct md__msg m, r;
	(void)go;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_UNREF);
	r.u.ack.status = -EINVAL;
	fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
}

/* UNREFs the connection did not send whole are kept, whether it was gone
 * before the send (EPIPE), went while a reply was late (EOF read before
 * the request), or went with a batch queued to give back; and a refused
 * UNREF whose reply came just before the connection went is split, as on
 * a live one. Before, all of them were dropped, and the daemon, which the
 * next connection reaches again, pinned those pages until the VMM exited. */
TEST_IMPL(daemon_client_unsent_unrefs_kept)
{
	struct fake f;
	struct md__client *c;
	uint64_t h = 1;
	uint32_t s1;

	c = fake_start(&f, hang_up);
	fake_wait(&f);
	ASSERT_EQ(md__client_ref(c, (uint32_t[]){ 3, 4 }, 2, -1), -ENOTCONN);
	assert_back(c, (uint32_t[]){ 3, 4 }, 2);
	fake_end(&f, c);

	c = fake_start(&f, late_then_hang_up);
	md__client_set_timeout(c, 100);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), -ETIMEDOUT);
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	ASSERT_EQ(md__client_ref(c, (uint32_t[]){ 3, 4 }, 2, -1), -ENOTCONN);
	assert_back(c, (uint32_t[]){ 3, 4 }, 2);
	fake_end(&f, c);

	c = fake_start(&f, hang_up);
	fake_wait(&f);
	ASSERT_EQ(md__client_give_back(c, (uint32_t[]){ 5 }, 1), 0);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), -ENOTCONN);
	assert_back(c, (uint32_t[]){ 5 }, 1);
	fake_end(&f, c);

	/* The PUBLISH after the queued UNREF is too big for the socket's
	 * buffer: its send is under way when the daemon goes. */
	static unsigned char pages[MD_PUBLISH_MAX * MD_MSG_PAGE];
	uint64_t hash[MD_PUBLISH_MAX] = { 0 };
	int small = 4096;
	c = fake_start(&f, refuse_unref_then_hang_up);
	ASSERT(setsockopt(md__client_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
	ASSERT_EQ(md__client_give_back(c, (uint32_t[]){ 5, 6 }, 2), 0);
	ASSERT_EQ(md__client_publish(c, hash, pages, MD_PUBLISH_MAX, &s1), -ENOTCONN);
	fake_wait(&f);
	assert_back(c, (uint32_t[]){ 5, 6 }, 2);
	fake_end(&f, c);
	return 0;
}

/* More UNREFs than the ring of owed replies holds, each ACKed; then the
 * daemon goes. */
#define LAP_UNREFS (MD_CLIENT_OWED + 64)
static void ack_a_lap_of_unrefs_then_hang_up(int c, int go)
{
	static struct md__msg m, r;
	(void)go;
	for (unsigned i = 0; i < LAP_UNREFS; i++) {
		fake_recv(c, &m);
		ASSERT_EQ(m.hdr.type, MD_MSG_UNREF);
		memset(&r, 0, sizeof(r));
		fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	}
}

/* An UNREF whose send fails is owed no reply: its entry in the ring of
 * owed replies is taken back, and that entry's copy of the slots freed,
 * not the next one's. Once the ring has gone round, the next entry holds
 * the pointer of a copy settled a lap before: freeing it frees memory
 * twice (a crash, or a heap corrupted; AddressSanitizer says so at once).
 * The batch stays queued for the next connection. */
TEST_IMPL(daemon_client_cut_unref_owes_nothing)
{
	struct fake f;
	struct md__msg_control ctl;
	uint64_t h = 1;
	uint32_t s1;
	struct md__client *c = fake_start(&f, ack_a_lap_of_unrefs_then_hang_up);
	for (uint32_t i = 0; i < LAP_UNREFS; i++) {
		ASSERT_EQ(md__client_give_back(c, &i, 1), 0);
		/* The fake ACKs slower than we send: a quarter of the ring
		 * owed, the client waits for the ACKs (send_back). */
		for (int k = 0; k < 10000 && md__client_back_slots(c); k++) {
			ASSERT_EQ(md__client_next_control(c, &ctl), -EAGAIN);
			if (md__client_back_slots(c))
				usleep(1000);
		}
		ASSERT_EQ(md__client_back_slots(c), 0);
	}
	fake_wait(&f);
	ASSERT_EQ(md__client_give_back(c, (uint32_t[]){ 7 }, 1), 0);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), -ENOTCONN);
	assert_back(c, (uint32_t[]){ 7 }, 1);
	fake_end(&f, c);
	return 0;
}

/* Reads whatever comes, answers nothing, until the client hangs up. */
static void read_never_answer(int c, int go)
{
	static char buf[1 << 16];
	(void)go;
	while (read(c, buf, sizeof(buf)) > 0)
		;
}

/* A long queue of references to give back goes a part at a time before a
 * request, never filling the ring of owed replies: a daemon that is slow
 * to ACK them leaves room to follow the request if it times out, and the
 * connection lives on (late) rather than going for a reply it could not
 * wait for. */
TEST_IMPL(daemon_client_give_back_leaves_room_for_late)
{
	static uint32_t slots[MD_REF_MAX];
	struct fake f;
	struct md__client *c = fake_start(&f, read_never_answer);
	md__client_set_timeout(c, 300);
	for (size_t i = 0; i < MD_CLIENT_OWED; i++)
		ASSERT_EQ(md__client_give_back(c, slots, MD_REF_MAX), 0);	/* a batch each */
	ASSERT_EQ(md__client_report(c, (uint64_t[]){ 1 }, 1), -ETIMEDOUT);
	ASSERT(md__client_alive(c));
	ASSERT_EQ(md__client_late(c), 1);
	ASSERT(md__client_back_slots(c) > 0);	/* the rest waits */
	md__client_free(c);
	fake_wait(&f);
	fake_end(&f, NULL);
	return 0;
}

/* The queue of references to give back is bounded (MD_CLIENT_BACK_MAX):
 * past it one is refused (-ENOBUFS, said once), and stays pinned in the
 * daemon until the process exits, rather than the queue growing without
 * end while the daemon is away. */
static void hang_up_when_told(int c, int go);

TEST_IMPL(daemon_client_give_back_bounded)
{
	static uint32_t slots[MD_REF_MAX];
	struct fake f;
	struct md__client *c = fake_start(&f, hang_up_when_told);
	for (size_t i = 0; i < MD_CLIENT_BACK_MAX / MD_REF_MAX; i++)
		ASSERT_EQ(md__client_give_back(c, slots, MD_REF_MAX), 0);
	ASSERT_EQ(md__client_back_slots(c), MD_CLIENT_BACK_MAX);
	ASSERT_EQ(md__client_give_back(c, slots, 1), -ENOBUFS);
	ASSERT_EQ(md__client_back_slots(c), MD_CLIENT_BACK_MAX);
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* An UNREF of slot 9 read and ACKed; then the fake waits. */
static void ack_unref_9(int c, int go)
{
	static struct md__msg m, r;
	char x;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_UNREF);
	ASSERT_EQ(m.u.refs.n, 1);
	ASSERT_EQ(m.u.refs.slot[0], 9);
	memset(&r, 0, sizeof(r));
	fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	ASSERT(read(go, &x, 1) == 1);
}

/* An agent that sends no request (its scanner paused) still gives back
 * what it queued, from md__client_next_control, which its thread calls
 * every second: the daemon would pin those pages meanwhile. */
TEST_IMPL(daemon_client_idle_gives_back)
{
	struct fake f;
	struct md__msg_control ctl;
	struct md__client *c = fake_start(&f, ack_unref_9);
	ASSERT_EQ(md__client_give_back(c, (uint32_t[]){ 9 }, 1), 0);
	for (int i = 0; i < 100 && md__client_back_slots(c); i++)
		ASSERT_EQ(md__client_next_control(c, &ctl), -EAGAIN);
	ASSERT_EQ(md__client_back_slots(c), 0);
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* Reads the batch's first PUBLISH and grants it slot 5; what then of the
 * second: nothing (the daemon goes), a reply of the wrong type, or the
 * daemon goes before it is read. */
enum { SECOND_GONE, SECOND_GARBLED, SECOND_UNREAD };

static void grant_first(int c, int second)
{
	static struct md__msg m, r;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
	r.u.publish_r.first_slot = 5;
	r.u.publish_r.n = 1;
	fake_send(c, &r, MD_MSG_PUBLISH_R, m.hdr.seq, -1);
	if (second == SECOND_UNREAD)
		return;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
	if (second == SECOND_GARBLED) {
		memset(&r, 0, sizeof(r));
		r.u.lookup_r.n = 1;
		fake_send(c, &r, MD_MSG_LOOKUP_R, m.hdr.seq, -1);
	}
}

static void grant_first_then_hang_up(int c, int go)
{
	(void)go;
	grant_first(c, SECOND_GONE);
}

static void grant_first_then_garble(int c, int go)
{
	(void)go;
	grant_first(c, SECOND_GARBLED);
}

static void grant_first_then_hang_up_unread(int c, int go)
{
	(void)go;
	grant_first(c, SECOND_UNREAD);
}

/* md__client_publish_each's caller holds none of the slots when it fails,
 * however it fails: a slot granted before the connection went (EOF, a
 * reply of the wrong type, the batch's send cut short) is given back, to
 * the next connection to the same daemon. Before, only a timeout gave
 * them back, and the others stayed pinned until the VMM exited. */
TEST_IMPL(daemon_client_publish_each_gives_back)
{
	static struct {
		void (*script)(int c, int go);
		uint32_t n;
		int want;
	} cases[] = {
		{ grant_first_then_hang_up, 2, -ENOTCONN },
		{ grant_first_then_garble, 2, -EPROTO },
		/* The batch is too big for the socket's buffer: its send is
		 * under way when the daemon goes. */
		{ grant_first_then_hang_up_unread, 64, -ENOTCONN },
	};
	static unsigned char pages[64 * MD_MSG_PAGE];
	const void *each[64];
	uint64_t hash[64] = { 0 };
	uint32_t slot[64];
	int status[64], small = 4096;
	for (size_t i = 0; i < 64; i++)
		each[i] = pages + i * MD_MSG_PAGE;
	char log[512];
	snprintf(log, sizeof(log), "%s/client-publish.log", test_dir());
	unlink(log);
	ASSERT_EQ(md__log_open(log), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct fake f;
		struct md__client *c = fake_start(&f, cases[i].script);
		ASSERT(setsockopt(md__client_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
		ASSERT_EQ(md__client_publish_each(c, hash, each, cases[i].n, slot, status), cases[i].want);
		fake_wait(&f);
		assert_back(c, (uint32_t[]){ 5 }, 1);
		fake_end(&f, c);
	}
	/* The garbled reply is said, the daemon hanging up is not. */
	const char *said = file_text(log), *at = strstr(said, "sent a message out of protocol");
	ASSERT(at);
	ASSERT(!strstr(at + strlen("sent a message out of protocol"), "out of protocol"));
	return 0;
}

/* The batch's first PUBLISH refused (an ERROR), its second granted slot 5,
 * then the daemon goes without answering the third. */
static void refuse_grant_then_hang_up(int c, int go)
{
	static struct md__msg m, r;
	(void)go;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
	memset(&r, 0, sizeof(r));
	r.u.text.status = -EINVAL;
	snprintf(r.u.text.text, sizeof(r.u.text.text), "hash mismatch");
	fake_send(c, &r, MD_MSG_ERROR, m.hdr.seq, -1);
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
	memset(&r, 0, sizeof(r));
	r.u.publish_r.first_slot = 5;
	r.u.publish_r.n = 1;
	fake_send(c, &r, MD_MSG_PUBLISH_R, m.hdr.seq, -1);
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
}

/* A failed batch gives back only the slots granted: a page the daemon
 * refused has no slot (whatever its entry of slot[] holds), and an UNREF
 * of it would drop a reference the agent holds elsewhere. */
TEST_IMPL(daemon_client_publish_each_gives_back_only_granted)
{
	static unsigned char pages[3 * MD_MSG_PAGE];
	const void *each[3] = { pages, pages + MD_MSG_PAGE, pages + 2 * MD_MSG_PAGE };
	uint64_t hash[3] = { 1, 2, 3 };
	uint32_t slot[3] = { 7, 7, 7 };
	int status[3];
	struct fake f;
	struct md__client *c = fake_start(&f, refuse_grant_then_hang_up);
	ASSERT_EQ(md__client_publish_each(c, hash, each, 3, slot, status), -ENOTCONN);
	fake_wait(&f);
	assert_back(c, (uint32_t[]){ 5 }, 1);
	fake_end(&f, c);
	return 0;
}

/* A LOOKUP and an UNREF answered with ERRORs whose status is one the client
 * uses for its own connection (late, gone), then the daemon waits. */
static void error_as_transport(int c, int go)
{
	static struct md__msg m, r;
	char x;
	const int said[] = { -ETIMEDOUT, -EPIPE };
	for (size_t i = 0; i < 2; i++) {
		fake_recv(c, &m);
		ASSERT_EQ(m.hdr.type, i ? MD_MSG_UNREF : MD_MSG_LOOKUP);
		memset(&r, 0, sizeof(r));
		r.u.text.status = said[i];
		snprintf(r.u.text.text, sizeof(r.u.text.text), "no");
		fake_send(c, &r, MD_MSG_ERROR, m.hdr.seq, -1);
	}
	/* The same said in an ACK. */
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_REPORT);
	memset(&r, 0, sizeof(r));
	r.u.ack.status = -ENOTCONN;
	fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	ASSERT(read(go, &x, 1) == 1);
}

/* A daemon's ERROR (or ACK) that says -ETIMEDOUT, -EPIPE or -ENOTCONN is
 * the daemon's refusal, which came: not a reply late (an UNREF so refused
 * was taken as sent) nor the connection gone (which would hang up a live
 * one). */
TEST_IMPL(daemon_client_peer_error_not_transport)
{
	struct fake f;
	uint64_t h = 1;
	uint32_t s1;
	struct md__client *c = fake_start(&f, error_as_transport);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), -EPROTO);
	ASSERT(md__client_alive(c));
	ASSERT_EQ(md__client_ref(c, (uint32_t[]){ 3 }, 1, -1), -EPROTO);
	ASSERT(md__client_alive(c));
	ASSERT_EQ(md__client_report(c, (uint64_t[]){ 1 }, 1), -EPROTO);
	ASSERT(md__client_alive(c));
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* A LOOKUP read and not answered; a CONTROL sent meanwhile; once the test
 * says so, the LOOKUP's late reply; then the CONTROL_DONE must come. */
static void control_while_late(int c, int go)
{
	static struct md__msg m, r;
	char x;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_LOOKUP);
	uint32_t lookup = m.hdr.seq;
	memset(&r, 0, sizeof(r));
	r.u.control.op = MD_CTL_PAUSE;
	r.u.control.token = 77;
	fake_send(c, &r, MD_MSG_CONTROL, 0, -1);
	ASSERT(read(go, &x, 1) == 1);
	memset(&r, 0, sizeof(r));
	r.u.lookup_r.n = 1;
	fake_send(c, &r, MD_MSG_LOOKUP_R, lookup, -1);
	struct pollfd p = { .fd = c, .events = POLLIN };
	if (poll(&p, 1, 5000) != 1)
		_exit(5);	/* no CONTROL_DONE */
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_CONTROL_DONE);
	ASSERT_EQ(m.u.control_done.token, 77);
	memset(&r, 0, sizeof(r));
	fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	ASSERT(read(go, &x, 1) == 1);
}

/* A CONTROL applied while a reply is late (the daemon behind): its
 * CONTROL_DONE is kept and sent once the daemon caught up. It was dropped
 * (-ETIMEDOUT, unsent), and the CLI waited its minute to be told the agent
 * did not answer, for work the agent had done. */
TEST_IMPL(daemon_client_control_done_kept_while_late)
{
	struct fake f;
	uint64_t h = 1;
	uint32_t s1;
	struct md__msg_control ctl;
	struct md__client *c = fake_start(&f, control_while_late);
	md__client_set_timeout(c, 100);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), -ETIMEDOUT);
	int err = -EAGAIN;
	for (int i = 0; i < 200 && err == -EAGAIN; i++)
		if ((err = md__client_next_control(c, &ctl)) == -EAGAIN)
			usleep(10000);
	ASSERT_EQ(err, 0);
	ASSERT_EQ(ctl.token, 77);
	ASSERT_EQ(md__client_control_done(c, ctl.token, 0, NULL), 0);	/* kept */
	ASSERT(write(f.go, "g", 1) == 1);	/* the late reply */
	/* Caught up once the late reply is read (the fake may be slow to
	 * send it: up to 10 s); then a while more to send what was kept. The
	 * fake waits 5 s for the CONTROL_DONE after its reply. */
	for (int i = 0; i < 1000 && md__client_late(c); i++, usleep(10000))
		md__client_next_control(c, &ctl);	/* catches up, sends what was kept */
	ASSERT_EQ(md__client_late(c), 0);
	for (int i = 0; i < 50; i++) {
		md__client_next_control(c, &ctl);
		usleep(10000);
	}
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* A LOOKUP read and answered late (once the test says so); then two
 * CONTROL_DONEs must come, the first ACKed late (500 ms, past the client's
 * timeout). Exits 5 if the second does not come within 5 s. */
static void two_dones_first_acked_late(int c, int go)
{
	static struct md__msg m, r;
	char x;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_LOOKUP);
	uint32_t lookup = m.hdr.seq;
	ASSERT(read(go, &x, 1) == 1);
	memset(&r, 0, sizeof(r));
	r.u.lookup_r.n = 1;
	fake_send(c, &r, MD_MSG_LOOKUP_R, lookup, -1);
	for (uint32_t token = 1; token <= 2; token++) {
		struct pollfd p = { .fd = c, .events = POLLIN };
		if (poll(&p, 1, 5000) != 1)
			_exit(5);
		fake_recv(c, &m);
		ASSERT_EQ(m.hdr.type, MD_MSG_CONTROL_DONE);
		ASSERT_EQ(m.u.control_done.token, token);
		if (token == 1)
			usleep(500 * 1000);	/* a slow daemon: the ACK late */
		memset(&r, 0, sizeof(r));
		fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	}
}

/* CONTROL_DONEs kept while a reply was late go one by one once the daemon
 * caught up; one the daemon is behind again for (the ACK of the one before
 * it late) stays kept, and goes when the daemon catches up again, not
 * dropped: its CLI would wait its minute for an outcome the agent had. */
TEST_IMPL(daemon_client_kept_dones_wait_again)
{
	struct fake f;
	uint64_t h = 1;
	uint32_t s1;
	struct md__msg_control ctl;
	struct md__client *c = fake_start(&f, two_dones_first_acked_late);
	md__client_set_timeout(c, 100);
	ASSERT_EQ(md__client_lookup(c, &h, NULL, 1, &s1), -ETIMEDOUT);
	ASSERT_EQ(md__client_control_done(c, 1, 0, NULL), 0);	/* kept */
	ASSERT_EQ(md__client_control_done(c, 2, 0, NULL), 0);	/* kept */
	ASSERT(write(f.go, "g", 1) == 1);	/* the late reply */
	int st = 0;
	pid_t done = 0;
	for (int i = 0; i < 1000 && !done; i++) {
		md__client_next_control(c, &ctl);
		if (!(done = waitpid(f.kid, &st, WNOHANG)))
			usleep(10000);
	}
	ASSERT_EQ(done, f.kid);
	ASSERT(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	fake_end(&f, c);
	return 0;
}

static void hang_up_when_told(int c, int go)
{
	char x;
	(void)c;
	ASSERT(read(go, &x, 1) == 1);
}

/* A WELCOME whose pool the kernel could not give the agent (no descriptor
 * free under RLIMIT_NOFILE: QEMU with many disks) is said as such, not as
 * a message out of protocol, and the connection is dropped. */
TEST_IMPL(daemon_client_descriptor_lost_said)
{
	struct fake f;
	struct md__client *c = fake_connect(&f, hang_up_when_told);
	struct rlimit old, none;
	ASSERT(getrlimit(RLIMIT_NOFILE, &old) == 0);
	int lowest = dup(0);
	ASSERT(lowest >= 0);
	close(lowest);
	none = (struct rlimit){ (rlim_t)lowest, old.rlim_max };
	ASSERT(setrlimit(RLIMIT_NOFILE, &none) == 0);
	struct md__msg_welcome w;
	int pool = -1;
	int err = md__client_hello(c, NULL, 0, &w, &pool);
	ASSERT(setrlimit(RLIMIT_NOFILE, &old) == 0);
	ASSERT_EQ(err, -EMFILE);
	ASSERT_EQ(pool, -1);
	ASSERT(!md__client_alive(c));
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* A LOOKUP read: exit 0 if it carries the hashes, addresses and tags the
 * test sent (7 if not); answered, then the fake waits. */
static void check_lookup_tags(int c, int go)
{
	static struct md__msg m, r;
	char x;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_LOOKUP);
	int ok = m.u.lookup.n == 2;
	for (uint32_t i = 0; ok && i < 2; i++)
		ok = m.u.lookup.hash[i] == 11 + i && m.u.lookup.addr[i] == 0x1000 * (i + 1) &&
		     m.u.lookup.tag[i] == 0xabc0 + i;
	memset(&r, 0, sizeof(r));
	r.u.lookup_r.n = 2;
	fake_send(c, &r, MD_MSG_LOOKUP_R, m.hdr.seq, -1);
	ASSERT(read(go, &x, 1) == 1);
	_exit(ok ? 0 : 7);
}

/* A LOOKUP carries each page's tag (the file page a hinted page was read
 * from): memdedupd pairs two copies of one image page by it on one visit. */
TEST_IMPL(daemon_client_lookup_sends_tags)
{
	struct fake f;
	uint64_t hash[2] = { 11, 12 }, addr[2] = { 0x1000, 0x2000 }, tag[2] = { 0xabc0, 0xabc1 };
	uint32_t slot1[2];
	struct md__client *c = fake_start(&f, check_lookup_tags);
	ASSERT_EQ(md__client_lookup_tagged(c, hash, addr, tag, 2, slot1), 0);
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* The flags of the HELLO the daemon welcomed are kept: the engine learns
 * from them whether memdedupd names it in a CONTROL only when the CLI
 * asked for it by pid (MD_HELLO_CONTROL_PID), which makes a SET so named
 * the agent's own value rather than a share of the daemon's rate. */
TEST_IMPL(daemon_client_hello_flags_kept)
{
	struct fake f;
	struct md__client *c = fake_connect(&f, hang_up_when_told);
	struct md__msg_welcome w;
	int pool = -1;
	ASSERT_EQ(md__client_hello_flags(c), 0);
	ASSERT_EQ(md__client_hello(c, NULL, MD_HELLO_CONTROL_PID, &w, &pool), 0);
	ASSERT_EQ(md__client_hello_flags(c), MD_HELLO_CONTROL_PID);
	close(pool);
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* After a reply out of protocol the client sends nothing more (above all
 * no UNREF of slots the bad reply named): the fake reads EOF or a reset
 * once the test frees the client. Anything else exits 3. */
static void expect_eof(int c)
{
	struct pollfd p = { .fd = c, .events = POLLIN };
	char x;
	if (poll(&p, 1, 20000) != 1)
		_exit(4);
	_exit(read(c, &x, 1) <= 0 ? 0 : 3);
}

/* The client freed: the fake must have read nothing from it (expect_eof). */
static void fake_end_quiet(struct fake *f, struct md__client *c)
{
	md__client_free(c);
	fake_wait(f);
	fake_end(f, NULL);
}

/* The client's next call once a late reply came: -ETIMEDOUT while it has
 * not (up to 10 s: a loaded machine). */
static int after_late(struct md__client *c)
{
	int err = -ETIMEDOUT;
	for (int i = 0; i < 1000 && err == -ETIMEDOUT; i++)
		if ((err = md__client_report(c, (uint64_t[]){ 1 }, 1)) == -ETIMEDOUT)
			usleep(10000);
	return err;
}

/* What the next fake says (set before fake_start, which forks it). */
static struct {
	uint32_t n;	/* the count of slots a reply gives */
	int mode;
} say;

/* The request (a PUBLISH or a LOOKUP) answered in time with say.n slots. */
static void answer_count(int c, int go)
{
	static struct md__msg m, r;
	(void)go;
	fake_recv(c, &m);
	memset(&r, 0, sizeof(r));
	if (m.hdr.type == MD_MSG_LOOKUP) {
		r.u.lookup_r.n = say.n;
		for (uint32_t i = 0; i < say.n; i++)
			r.u.lookup_r.slot1[i] = 7 + i;
		fake_send(c, &r, MD_MSG_LOOKUP_R, m.hdr.seq, -1);
	} else {
		ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
		r.u.publish_r.first_slot = 5;
		r.u.publish_r.n = say.n;
		fake_send(c, &r, MD_MSG_PUBLISH_R, m.hdr.seq, -1);
	}
	expect_eof(c);
}

/* A PUBLISH read and answered with say.n slots once the test says so:
 * late. */
static void late_answer_count(int c, int go)
{
	static struct md__msg m, r;
	char x;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
	ASSERT(read(go, &x, 1) == 1);
	memset(&r, 0, sizeof(r));
	r.u.publish_r.first_slot = 5;
	r.u.publish_r.n = say.n;
	fake_send(c, &r, MD_MSG_PUBLISH_R, m.hdr.seq, -1);
	expect_eof(c);
}

/* A reply whose count is not its request's is out of protocol: the call
 * fails, the connection goes, and no slot it names is handed to the caller
 * or given back. A PUBLISH of two pages answered with fewer slots or more,
 * in time or late (a late one's grants are given back: they would be
 * slots the agent may hold for other mappings); a LOOKUP of two answered
 * with another count (the entries past its own would be stale data). */
TEST_IMPL(daemon_client_reply_count_checked)
{
	static unsigned char pages[2 * MD_MSG_PAGE];
	static const uint32_t counts[] = { 1, 3 };
	uint64_t hash[2] = { 1, 2 };
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		struct fake f;
		struct md__client *c;
		uint32_t slot = 0xdead, slot1[2] = { 0xdead, 0xdead };
		say.n = counts[i];

		c = fake_start(&f, answer_count);
		ASSERT_EQ(md__client_publish(c, hash, pages, 2, &slot), -EPROTO);
		ASSERT(!md__client_alive(c));
		ASSERT_EQ(slot, 0xdead);
		assert_back(c, NULL, 0);
		fake_end_quiet(&f, c);

		c = fake_start(&f, late_answer_count);
		md__client_set_timeout(c, 100);
		ASSERT_EQ(md__client_publish(c, hash, pages, 2, &slot), -ETIMEDOUT);
		ASSERT(write(f.go, "g", 1) == 1);
		ASSERT_EQ(after_late(c), -EPROTO);
		ASSERT(!md__client_alive(c));
		assert_back(c, NULL, 0);
		fake_end_quiet(&f, c);

		c = fake_start(&f, answer_count);
		ASSERT_EQ(md__client_lookup(c, hash, NULL, 2, slot1), -EPROTO);
		ASSERT(!md__client_alive(c));
		ASSERT_EQ(slot1[0], 0xdead);
		ASSERT_EQ(slot1[1], 0xdead);
		fake_end_quiet(&f, c);
	}
	return 0;
}

enum { REPLY_SWAPPED, REPLY_STALE };

/* A PUBLISH_EACH of two pages read, and answered once the test says so
 * (late): the second's reply first (REPLY_SWAPPED), or first a reply to
 * the HELLO's seq, answered long ago (REPLY_STALE), then both in order. */
static void late_out_of_order(int c, int go)
{
	static struct md__msg m, r;
	uint32_t seq[2];
	char x;
	for (int i = 0; i < 2; i++) {
		fake_recv(c, &m);
		ASSERT_EQ(m.hdr.type, MD_MSG_PUBLISH);
		seq[i] = m.hdr.seq;
	}
	ASSERT(read(go, &x, 1) == 1);
	const uint32_t swapped[][2] = { { seq[1], 9 }, { seq[0], 8 } };
	const uint32_t stale[][2] = { { seq[0] - 1, 9 }, { seq[0], 8 }, { seq[1], 10 } };
	const uint32_t (*reply)[2] = say.mode == REPLY_SWAPPED ? swapped : stale;
	size_t n = say.mode == REPLY_SWAPPED ? 2 : 3;
	for (size_t i = 0; i < n; i++) {
		memset(&r, 0, sizeof(r));
		r.u.publish_r.first_slot = reply[i][1];
		r.u.publish_r.n = 1;
		fake_send(c, &r, MD_MSG_PUBLISH_R, reply[i][0], -1);
	}
	expect_eof(c);
}

/* Late replies settle the requests owed in order: a reply whose seq is not
 * the oldest owed is out of protocol (the daemon answers in order), not
 * taken as that one's, nor what it grants given back for it. */
TEST_IMPL(daemon_client_reply_out_of_order)
{
	static unsigned char pages[2 * MD_MSG_PAGE];
	const void *each[2] = { pages, pages + MD_MSG_PAGE };
	uint64_t hash[2] = { 1, 2 };
	for (int mode = REPLY_SWAPPED; mode <= REPLY_STALE; mode++) {
		struct fake f;
		uint32_t slot[2];
		int status[2];
		say.mode = mode;
		struct md__client *c = fake_start(&f, late_out_of_order);
		md__client_set_timeout(c, 100);
		ASSERT_EQ(md__client_publish_each(c, hash, each, 2, slot, status), -ETIMEDOUT);
		ASSERT_EQ(md__client_late(c), 2);
		ASSERT(write(f.go, "g", 1) == 1);
		ASSERT_EQ(after_late(c), -EPROTO);
		ASSERT(!md__client_alive(c));
		assert_back(c, NULL, 0);
		fake_end_quiet(&f, c);
	}
	return 0;
}

/* A REF read and refused late (its ACK says -EINVAL once the test says
 * so); then the next request must be a REPORT, ACKed: no UNREF of the slot
 * the refused REF named. */
static void late_ref_refused(int c, int go)
{
	static struct md__msg m, r;
	char x;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_REF);
	ASSERT(read(go, &x, 1) == 1);
	memset(&r, 0, sizeof(r));
	r.u.ack.status = -EINVAL;
	fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_REPORT);
	memset(&r, 0, sizeof(r));
	fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	ASSERT(read(go, &x, 1) == 1);
}

/* A late REF's grant is given back only if its ACK grants it: one refused
 * took no reference, and an UNREF for it would drop one the agent holds
 * for another page mapped from that slot (freeing the slot under it). */
TEST_IMPL(daemon_client_late_ref_refused_not_given_back)
{
	struct fake f;
	struct md__client *c = fake_start(&f, late_ref_refused);
	md__client_set_timeout(c, 100);
	ASSERT_EQ(md__client_ref(c, (uint32_t[]){ 3 }, 1, 1), -ETIMEDOUT);
	ASSERT(write(f.go, "g", 1) == 1);
	ASSERT_EQ(after_late(c), 0);
	assert_back(c, NULL, 0);
	ASSERT(md__client_alive(c));
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* A REF, an UNREF, a LOOKUP, a PUBLISH and a PUBLISH_EACH of two pages,
 * each answered by an ERROR of status 0; then a REPORT ACKed. */
static void error_status_0(int c, int go)
{
	static struct md__msg m, r;
	static const unsigned types[] = { MD_MSG_REF, MD_MSG_UNREF, MD_MSG_LOOKUP, MD_MSG_PUBLISH,
					  MD_MSG_PUBLISH, MD_MSG_PUBLISH };
	char x;
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		fake_recv(c, &m);
		ASSERT_EQ(m.hdr.type, types[i]);
		memset(&r, 0, sizeof(r));
		snprintf(r.u.text.text, sizeof(r.u.text.text), "refused");
		fake_send(c, &r, MD_MSG_ERROR, m.hdr.seq, -1);
	}
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_REPORT);
	memset(&r, 0, sizeof(r));
	fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	ASSERT(read(go, &x, 1) == 1);
}

/* The daemon refuses the connection (seq 0) with status 0, and goes. */
static void refuse_status_0(int c, int go)
{
	static struct md__msg r;
	(void)go;
	memset(&r, 0, sizeof(r));
	snprintf(r.u.text.text, sizeof(r.u.text.text), "go away");
	fake_send(c, &r, MD_MSG_ERROR, 0, -1);
}

/* An ERROR is a refusal whatever its status: one of 0 grants nothing. Taken
 * as success, a REF so refused was held (the agent would map a slot it has
 * no reference on, which the daemon may punch or reuse), a PUBLISH_EACH's
 * page granted a slot it was never told; so for a refusal of the
 * connection read when a REF could not be sent. The connection stays: the
 * daemon did answer. */
TEST_IMPL(daemon_client_error_status_0_refuses)
{
	static unsigned char pages[2 * MD_MSG_PAGE];
	const void *each[2] = { pages, pages + MD_MSG_PAGE };
	uint64_t hash[2] = { 1, 2 };
	uint32_t slot = 0xdead, slot1 = 0xdead, slots[2];
	int status[2];
	struct fake f;

	struct md__client *c = fake_start(&f, error_status_0);
	ASSERT_EQ(md__client_ref(c, (uint32_t[]){ 3, 4 }, 2, 1), -EPROTO);
	ASSERT(md__client_alive(c));
	ASSERT_EQ(md__client_ref(c, (uint32_t[]){ 3 }, 1, -1), -EPROTO);
	ASSERT(md__client_alive(c));
	ASSERT_EQ(md__client_lookup(c, hash, NULL, 1, &slot1), -EPROTO);
	ASSERT(md__client_alive(c));
	ASSERT_EQ(slot1, 0xdead);
	ASSERT_EQ(md__client_publish(c, hash, pages, 1, &slot), -EPROTO);
	ASSERT(md__client_alive(c));
	ASSERT_EQ(slot, 0xdead);
	ASSERT_EQ(md__client_publish_each(c, hash, each, 2, slots, status), 0);
	ASSERT_EQ(status[0], -EPROTO);
	ASSERT_EQ(status[1], -EPROTO);
	ASSERT_EQ(md__client_report(c, (uint64_t[]){ 1 }, 1), 0);
	assert_back(c, NULL, 0);
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);

	c = fake_start(&f, refuse_status_0);
	fake_wait(&f);
	ASSERT_EQ(md__client_ref(c, (uint32_t[]){ 3 }, 1, 1), -EPROTO);
	ASSERT(!md__client_alive(c));
	ASSERT(strcmp(md__client_refusal(c), "go away") == 0);
	fake_end(&f, c);
	return 0;
}

/* A CONTROL answered by a STATUS_R of 64 KiB; then a REPORT ACKed. */
static void control_answered_big(int c, int go)
{
	static struct md__msg m, r;
	static char json[64 << 10];
	char x;
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_CONTROL);
	memset(json, 'x', sizeof(json));
	memset(&r, 0, sizeof(r));
	r.u.status_r.json = json;
	r.u.status_r.len = sizeof(json);
	fake_send(c, &r, MD_MSG_STATUS_R, m.hdr.seq, -1);
	fake_recv(c, &m);
	ASSERT_EQ(m.hdr.type, MD_MSG_REPORT);
	memset(&r, 0, sizeof(r));
	fake_send(c, &r, MD_MSG_ACK, m.hdr.seq, -1);
	ASSERT(read(go, &x, 1) == 1);
}

/* md__client_request copies no more of a reply than the caller has room
 * for: the CLI's CONTROL reply buffer is on its stack, and a daemon (or
 * another program at its socket) answering with a large message would
 * overflow it. The reply is read whole all the same: the stream goes on. */
TEST_IMPL(daemon_client_request_reply_too_big)
{
	/* The caller's room (1 KiB), then as much as the reply would write
	 * past it: all of it a canary. */
	static unsigned char reply[1024 + (64 << 10) + 64];
	unsigned char req[MD_MSG_HDR_SIZE + 256];
	struct md__msg m = { .hdr.type = MD_MSG_CONTROL };
	m.u.control.op = MD_CTL_PAUSE;
	ssize_t n = md__msg_encode(&m, req, sizeof(req));
	ASSERT(n > MD_MSG_HDR_SIZE);
	memset(reply, 0xa5, sizeof(reply));
	struct fake f;
	struct md__client *c = fake_start(&f, control_answered_big);
	uint32_t len = 1024;
	unsigned type;
	ASSERT_EQ(md__client_request(c, MD_MSG_CONTROL, req + MD_MSG_HDR_SIZE, (uint32_t)n - MD_MSG_HDR_SIZE,
				     reply, &len, &type), -EMSGSIZE);
	for (size_t i = 0; i < sizeof(reply); i++)
		ASSERT_EQ(reply[i], 0xa5);
	ASSERT_EQ(len, 1024);
	ASSERT(md__client_alive(c));
	ASSERT_EQ(md__client_report(c, (uint64_t[]){ 1 }, 1), 0);
	ASSERT(write(f.go, "g", 1) == 1);
	fake_wait(&f);
	fake_end(&f, c);
	return 0;
}

/* A stand-in daemon that answers five connections, each as a daemon at
 * its connection limit (an ERROR before any request) or, old_version, as
 * one of another protocol version (a reply header of version 3); the
 * agent's thread tries again each second (md__scan_daemon ->
 * md__engine_remote_connect -> md__client_open). The log lines of the
 * five tries that contain text: each was said again (review). */
static int lines_for_five_tries(int old_version, const char *text)
{
	char dir[32] = "/tmp/md-said-XXXXXX", path[64], logp[64], line[512];
	ASSERT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/sock", dir);
	snprintf(logp, sizeof(logp), "%s/log", dir);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT(l >= 0);
	ASSERT(bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	ASSERT(listen(l, 8) == 0);
	pid_t kid = fork();
	ASSERT(kid >= 0);
	if (kid == 0) {
		for (int i = 0; i < 5; i++) {
			static struct md__msg m;
			unsigned char hdr[MD_MSG_HDR_SIZE];
			int c = accept(l, NULL, NULL);
			ASSERT(c >= 0);
			memset(&m, 0, sizeof(m));
			if (old_version) {
				fake_recv(c, &m);
				md__msg_hdr_encode(hdr, MD_MSG_ERROR, 0, m.hdr.seq);
				hdr[4] = 3;
				ASSERT(write(c, hdr, sizeof(hdr)) == (ssize_t)sizeof(hdr));
			} else {
				m.u.text.status = -EUSERS;	/* the last for another reason */
				snprintf(m.u.text.text, sizeof(m.u.text.text), i < 4 ? "too many connections (7)" :
					 "too many connections of uid 0 (at most 256)");
				fake_send(c, &m, MD_MSG_ERROR, 0, -1);
			}
			close(c);
		}
		_exit(0);
	}
	close(l);
	ASSERT_EQ(md__log_open(logp), 0);
	for (int i = 0; i < 5; i++) {
		struct md__client *c;
		struct md__msg_welcome w;
		int pool, err = md__client_open(&c, path, NULL, MD_HELLO_CONTROL_PID, &w, &pool);
		ASSERT(old_version ? err < 0 : err == -EUSERS);
	}
	int st;
	ASSERT_EQ(waitpid(kid, &st, 0), kid);
	FILE *f = fopen(logp, "r");
	ASSERT(f);
	int said = 0;
	while (fgets(line, sizeof(line), f))
		said += strstr(line, text) != NULL;
	fclose(f);
	unlink(logp);
	unlink(path);
	rmdir(dir);
	return said;
}

/* A daemon at its connection limit refuses every try: said once, and
 * again only for another reason. */
TEST_IMPL(daemon_client_refusal_said_once)
{
	ASSERT_EQ(lines_for_five_tries(0, "refused the connection"), 2);
	return 0;
}

/* A daemon of another protocol version at the socket (an older memdedupd
 * not restarted after an upgrade): said once. */
TEST_IMPL(daemon_client_out_of_protocol_said_once)
{
	ASSERT_EQ(lines_for_five_tries(1, "out of protocol"), 1);
	return 0;
}
