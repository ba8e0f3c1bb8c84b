/*
 * protocol.h - the messages between memdedupd, its agents and the CLI.
 *
 * Every message is a fixed 16-byte header followed by `length` payload bytes:
 *
 *     u32 magic ("MDD1" on the wire)  u16 version (5)  u16 type
 *     u32 length (payload bytes)      u32 seq
 *
 * All fields are little-endian and fixed-size; a payload is a fixed part
 * followed by arrays whose counts are checked against `length` exactly. A
 * reader validates the header (magic, version, known type, length within
 * that type's maximum) before it allocates or reads a payload, so a peer can
 * never make it allocate more than MD_MSG_MAX. docs/protocol.md is the
 * reference; this file is the implementation.
 */
#ifndef MD_PROTOCOL_H
#define MD_PROTOCOL_H
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MD_MSG_MAGIC 0x3144444du   /* "MDD1" read as a little-endian u32 */
#define MD_MSG_VERSION 5u
#define MD_MSG_HDR_SIZE 16u
/* The largest payload of any message: a STATUS_R document. */
#define MD_MSG_MAX (1u << 20)
#define MD_MSG_PAGE 4096u

#define MD_DOMAIN_MAX 64u          /* bytes of a domain name */
#define MD_LOOKUP_MAX 512u         /* hashes in a LOOKUP */
#define MD_CANDIDATES_MAX 64u      /* addresses in a CANDIDATES */
#define MD_SHARE_ALL 65536u        /* a SHARE's part of the rate: all of it */
#define MD_PUBLISH_MAX 64u         /* pages in a PUBLISH */
#define MD_REF_MAX 1024u           /* slots in a REF / UNREF */
#define MD_REPORT_MAX 256u         /* counters in a REPORT */
#define MD_READS_MAX 128u          /* runs in a READS */
#define MD_READ_RUN_PAGES 1024u    /* pages in one run of a READS */
#define MD_KEY_MAX 32u             /* CONTROL SET key */
#define MD_VALUE_MAX 64u           /* CONTROL SET value */
#define MD_TEXT_MAX 256u           /* message of CONTROL_R / ERROR */
/* A CONTROL_R's text, with -ESRCH, when no agent of the pid asked for is
 * known (the CLI tells it from "went away before it answered", also
 * -ESRCH: that agent was known, and may only have lost its connection). */
#define MD_NO_AGENT_TEXT "no agent with pid"
#define MD_CONTROL_WAIT_MS 60000   /* a CONTROL_R comes at the latest after this */
/* The scanner's tunables: the most each may be (SET, the agent's options,
 * the CLI's and the preload library's). */
#define MD_PAGES_TO_SCAN_MAX 100000u
#define MD_SLEEP_MS_MAX 10000u
#define MD_CPU_PERCENT_MAX 100u
#define MD_HINT_RATIO_MAX 8u

enum md__msg_type {
	MD_MSG_HELLO = 1,      /* agent -> d */
	MD_MSG_WELCOME,        /* d -> agent, carries the pool's read-only fd */
	MD_MSG_LOOKUP,         /* agent -> d */
	MD_MSG_LOOKUP_R,
	MD_MSG_PUBLISH,        /* agent -> d */
	MD_MSG_PUBLISH_R,
	MD_MSG_REF,            /* agent -> d, answered by ACK */
	MD_MSG_UNREF,          /* agent -> d, answered by ACK */
	MD_MSG_ACK,
	MD_MSG_REPORT,         /* agent -> d, answered by ACK */
	MD_MSG_STATUS,         /* CLI -> d */
	MD_MSG_STATUS_R,
	MD_MSG_CONTROL,        /* CLI -> d; and d -> agent with seq 0 */
	MD_MSG_CONTROL_R,
	MD_MSG_ERROR,          /* d -> anyone: the request failed */
	MD_MSG_CANDIDATES,     /* d -> agent, seq 0: pages now in the pool */
	MD_MSG_SHARE,          /* d -> agent, seq 0: agents sharing the rate */
	MD_MSG_READS,          /* agent -> d, answered by ACK */
	MD_MSG_CONTROL_DONE,   /* agent -> d, answered by ACK: how a CONTROL went */
	MD_MSG_TYPE_END
};

enum md__control_op {
	MD_CTL_PAUSE = 1,
	MD_CTL_RESUME,
	MD_CTL_UNMERGE,
	MD_CTL_SET,
	MD_CTL_OP_END
};

/* HELLO flags; unknown bits are refused. */
/* The process maps no page of any memdedup pool (a VMM that exec'd): the
 * references a record of its pid still holds are nobody's any more. */
#define MD_HELLO_NO_POOL_MAPS (1u << 0)
/* The agent tells a CONTROL for all (pid 0) from one naming it (its pid);
 * without it, every forwarded CONTROL carries the agent's pid. */
#define MD_HELLO_CONTROL_PID (1u << 1)
#define MD_HELLO_FLAGS_ALL (MD_HELLO_NO_POOL_MAPS | MD_HELLO_CONTROL_PID)
/* WELCOME state bits. */
#define MD_WELCOME_PAUSED (1u << 0)
/* Scan order of the tunable "order". */
#define MD_ORDER_LINEAR 0u
#define MD_ORDER_RANDOM 1u

struct md__msg_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t length;
	uint32_t seq;
};

struct md__msg_hello {
	uint32_t pid;
	uint32_t flags;
	uint16_t domain_len;
	char domain[MD_DOMAIN_MAX + 1];    /* NUL-terminated after decoding */
};

/* The scanner's tunables, as the daemon keeps and hands them out. */
struct md__tunables {
	uint32_t pages_to_scan;
	uint32_t sleep_millisecs;
	uint32_t cpu_percent;
	uint32_t order;                    /* MD_ORDER_* */
	uint32_t hint_ratio;
};

struct md__msg_welcome {
	uint32_t domain_id;
	uint32_t pool_pages;               /* slots: map pool_pages * 4096 bytes */
	uint64_t generation;               /* differs for every pool ever made */
	struct md__tunables tun;
	uint32_t state;                    /* MD_WELCOME_* */
};
#define MD_WELCOME_LEN 40u

struct md__msg_lookup {
	uint32_t n;
	uint64_t hash[MD_LOOKUP_MAX];
	uint64_t addr[MD_LOOKUP_MAX];      /* where the asker holds each page */
	uint64_t tag[MD_LOOKUP_MAX];       /* md__read_tag of the file page a read
					    * put there; 0: none (see READS) */
};

struct md__msg_lookup_r {
	uint32_t n;
	uint32_t slot1[MD_LOOKUP_MAX];     /* slot + 1; 0: not in the index;
					    * MD_LOOKUP_PUBLISH: not in the index,
					    * but another agent of the domain looked
					    * this hash up lately: publish the page */
};
#define MD_LOOKUP_PUBLISH UINT32_MAX

struct md__msg_publish {
	uint32_t n;
	uint64_t hash[MD_PUBLISH_MAX];
	const unsigned char *pages;        /* n * 4096 bytes, inside the buffer decoded */
};

struct md__msg_publish_r {
	uint32_t first_slot;
	uint32_t n;
};

struct md__msg_refs {                  /* REF and UNREF */
	uint32_t n;
	uint32_t slot[MD_REF_MAX];
};

struct md__msg_ack {
	int32_t status;                    /* 0 or -errno */
};

struct md__msg_report {
	uint32_t n;
	uint64_t counters[MD_REPORT_MAX];
};

/* STATUS: where a page of the document starts. Both 0, the first page, is
 * sent as an empty payload (the only STATUS before pages existed), and only
 * so: eight bytes of zeroes are refused. */
struct md__msg_status {
	uint32_t domain_from;              /* the first domain id to list */
	uint32_t agent_from;               /* the first agent pid to list */
};

struct md__msg_status_r {
	const char *json;                  /* len bytes, not NUL-terminated */
	uint32_t len;
};

/* CANDIDATES: addresses this agent looked up (LOOKUP addr) whose content
 * another agent has just published: a merge is likely there now. */
struct md__msg_candidates {
	uint32_t n;
	uint64_t addr[MD_CANDIDATES_MAX];
};

/* READS: runs of guest pages that reads just filled from files, each page
 * whole, and not shared at read time: page i of a run holds the file (key)
 * at off + 4096 i. Another agent whose scanner meets the same file page in
 * its own RAM (LOOKUP tag) is told to publish it, and this page is named
 * back as a candidate: one visit merges both copies (KSM++'s hints, across
 * guests reading one image). Only a guess: the merge compares bytes. */
struct md__read_run {
	uint64_t key;                      /* md__read_key of the file */
	uint64_t off;                      /* file offset of the first page */
	uint64_t addr;                     /* page-aligned, below 2^47 */
	uint32_t npages;                   /* 1..MD_READ_RUN_PAGES */
};

struct md__msg_reads {
	uint32_t n;
	struct md__read_run run[MD_READS_MAX];
};

/* SHARE: the scanning agents the daemon's tunables are split among (the
 * rate and the CPU cap are for all of them together). */
struct md__msg_share {
	uint32_t part;                     /* of the rate, in 65536ths: 1..MD_SHARE_ALL */
};

/* A CLI's CONTROL token: while its UNMERGE waits, each agent's turn is
 * told it (CONTROL_R -EINPROGRESS, seq 0): each restarts its wait, as each
 * agent has MD_CONTROL_WAIT_MS from its turn. */
#define MD_CONTROL_NOTICES 1u
struct md__msg_control {
	uint32_t op;                       /* MD_CTL_* */
	int32_t pid;                       /* 0: every agent */
	uint32_t token;                    /* d -> agent: answer with CONTROL_DONE
					    * of this token; from the CLI: 0 or
					    * MD_CONTROL_NOTICES */
	char key[MD_KEY_MAX + 1];          /* SET only; NUL-terminated */
	char value[MD_VALUE_MAX + 1];
};

struct md__msg_text {                  /* CONTROL_R and ERROR */
	int32_t status;                    /* 0 or -errno */
	char text[MD_TEXT_MAX + 1];
};

/* CONTROL_DONE: an agent's outcome of the CONTROL with this token. */
/* Its status for a SET of all agents that left the agent's own value of
 * the key (memdedup run's option, or set --pid): done, counted apart. */
#define MD_CTL_KEPT_OWN (-EEXIST)
/* Its status for an UNMERGE whose copies failed part of the way: failed,
 * but not a refusal that changed nothing; the agent stays unmerged, paused
 * until resumed, as after one that went through. */
#define MD_CTL_PART_DONE (-ECANCELED)
struct md__msg_control_done {
	uint32_t token;
	struct md__msg_text result;        /* why, if it failed */
};

struct md__msg {
	struct md__msg_hdr hdr;
	union {
		struct md__msg_hello hello;
		struct md__msg_welcome welcome;
		struct md__msg_lookup lookup;
		struct md__msg_lookup_r lookup_r;
		struct md__msg_publish publish;
		struct md__msg_publish_r publish_r;
		struct md__msg_refs refs;
		struct md__msg_ack ack;
		struct md__msg_report report;
		struct md__msg_status status;
		struct md__msg_status_r status_r;
		struct md__msg_control control;
		struct md__msg_text text;
		struct md__msg_control_done control_done;
		struct md__msg_candidates candidates;
		struct md__msg_share share;
		struct md__msg_reads reads;
	} u;
};

/* A file's identity for READS (its device and inode), and a file page's:
 * both agents compute them alike, and 0 is never a tag. */
uint64_t md__read_key(uint64_t dev, uint64_t ino);
uint64_t md__read_tag(uint64_t key, uint64_t off);

/* A short name of a message type ("HELLO"), "?" if unknown. */
const char *md__msg_type_name(unsigned type);
/* The largest payload a message of this type may have; 0 for unknown types
 * (and for types whose payload is always empty: check the type first). */
uint32_t md__msg_max_len(unsigned type);
/* 1 if name is a valid domain name: [A-Za-z0-9._-]{0,64} (empty: default). */
int md__domain_valid(const char *name, size_t len);

/* Writes a header (magic, version, type, length, seq) into buf[16]. */
void md__msg_hdr_encode(void *buf, unsigned type, uint32_t length, uint32_t seq);
/* The bytes of a PUBLISH of one page that come before the page: the page's
 * 4096 bytes follow on the wire, sent from where they are (no copy). */
#define MD_PUBLISH1_HEAD (MD_MSG_HDR_SIZE + 4 + 8)
void md__msg_publish1_head(void *buf, uint32_t seq, uint64_t hash);
/* Decodes and validates a header from len >= 16 bytes: magic (-EPROTO),
 * version (-EPROTONOSUPPORT), type (-EBADMSG), length (-EMSGSIZE). */
int md__msg_hdr_decode(const void *buf, size_t len, struct md__msg_hdr *h);
/* Decodes a whole message: buf holds the header and exactly its payload
 * (len == 16 + length, else -EBADMSG). Arrays are copied into *m, except the
 * pages of PUBLISH and the document of STATUS_R, which point into buf.
 * Returns 0 or -errno; *m is meaningful only on 0. */
int md__msg_decode(const void *buf, size_t len, struct md__msg *m);
/* Decodes a payload alone (type and len from a header already checked,
 * e.g. what md__client_request returned). */
int md__msg_decode_payload(unsigned type, const void *payload, uint32_t len, struct md__msg *m);
/* Encodes m (its hdr.type and hdr.seq; magic, version and length are filled
 * in) into buf. Returns the bytes written, -EINVAL if m is not a valid
 * message (the same rules as decoding), -EMSGSIZE if size is too small. */
ssize_t md__msg_encode(const struct md__msg *m, void *buf, size_t size);
/* The bytes md__msg_encode needs for m (header included); 0 if invalid. */
size_t md__msg_encoded_len(const struct md__msg *m);

/* A whole decimal number in [min, max] (digits only: no sign, no space,
 * nothing after): 0 and *out, else -EINVAL. */
int md__parse_uint(const char *s, uint32_t min, uint32_t max, uint32_t *out);
/* A yes/no word: 1 for 1, on, yes, true; 0 for 0, off, no, false (any
 * case, nothing around them); else -EINVAL. */
int md__parse_bool(const char *s);
/* Parses a SET "key"/"value" pair into *t (a copy of the current tunables).
 * Returns 0, or -EINVAL with a message for the user in msg. */
int md__tunable_set(struct md__tunables *t, const char *key, const char *value,
		    char *msg, size_t size);
/* The built-in tunables. */
void md__tunables_default(struct md__tunables *t);
/* memdedupd's kept state (daemon/state.c): text (NUL-terminated, changed)
 * of lines "paused=0|1" and "KEY=VALUE" as md__tunable_set takes them,
 * into *paused and *t, all or nothing: 0, or -EINVAL with why. */
int md__state_parse(char *text, int *paused, struct md__tunables *t, char *why, size_t size);
const char *md__control_op_name(unsigned op);
#endif
