/* fuzz_client.h - the input format of fuzz_client.c, which client_seeds.c
 * writes: chunks of an op byte and what it needs. op & FC_OP_CODE says what
 * happens; the bits above it are the op's flags. */
#ifndef MD_FUZZ_CLIENT_H
#define MD_FUZZ_CLIENT_H

#define FC_RAM_PAGES 8       /* the guest RAM registered with the engine */
#define FC_POOL_PAGES 16     /* the pages of a pool the daemon hands over (FC_FD_POOL) */
#define FC_PATTERNS 4        /* guest page i holds pattern i % 4, pool slot k pattern k % 4 */
/* Where the guest RAM is (if free), so that CANDIDATES can name it. In the
 * application memory of ASan's layout, away from its allocator's. */
#define FC_RAM_ADDR 0x5e0000000000ull
#define FC_SOCKET "/nonexistent/memdedup-fuzz-client.sock"

#define FC_OP_CODE 31u
#define FC_OP_FLAGS(op) ((op) >> 5)

/* The daemon's side. */
/* A u24 (little-endian) count, then the bytes the daemon writes: to the
 * connection, or, with none, for the next connect(). Flags: FC_FD_* of a
 * descriptor passed with them. In each message header met in the bytes,
 * a seq with bit 31 set is relative: the low 31 bits (signed) added to
 * the seq of the last request the client sent (0 on a new connection), so
 * 0x80000001 answers the next request, 0x80000000 the last one sent. */
#define FC_SEND 0u
/* The daemon writes what it said (replies to requests not sent yet too)
 * and shuts down writing: the client reads EOF after it. With no
 * connection: the daemon of the one that takes the last bytes said for
 * the next connect() does so after them (FC_CLOSE too). */
#define FC_HANGUP 1u
#define FC_CLOSE 2u         /* the same, and it closes: requests fail too */

/* Descriptors passed with a FC_SEND (its flags). */
#define FC_FD_NONE 0u
#define FC_FD_POOL 1u       /* a pool as memdedupd's: read-only memfd sealed against shrinking */
#define FC_FD_SHORT 2u      /* the same, of 2 pages */
#define FC_FD_EMPTY 3u      /* the same, empty */
#define FC_FD_WRITABLE 4u   /* a pool opened read-write */
#define FC_FD_UNSEALED 5u   /* a read-only memfd that may shrink */
#define FC_FD_PIPE 6u       /* not a file */
#define FC_FD_TWO 7u        /* two pools in one message */

/* The agent's side: calls, with the argument bytes they take (a, b). Slots
 * "from b": b, b + 1, ...; from b = 192 on, UINT32_MAX - 63, ... instead.
 * Those "held" are slots the harness's calls were granted (PUBLISH, REF),
 * from the (b % 64)-th: what they give back was theirs (the ledger of
 * fuzz_client.c checks the client's). */
#define FC_CONNECT 3u       /* md__engine_remote_connect, when not connected */
#define FC_DROP 4u          /* md__engine_remote_drop */
#define FC_LOOKUP 5u        /* a: n = 1 + a % 16; flag 1: MD_LOOKUP_MAX */
#define FC_PUBLISH_EACH 6u  /* a: n = 1 + a % 16; flag 1: of an older generation */
#define FC_PUBLISH 7u       /* a: n = 1 + a % 16 (md__client_publish) */
/* a, b: n = 1 + a % 8 slots from b; flag 1: UNREF (flag 4: held ones);
 * flag 2: of an older generation */
#define FC_REF 8u
#define FC_REPORT 9u        /* a: a % 9 counters */
#define FC_READS 10u        /* a: a run of 1 + a % 8 pages */
#define FC_CONTROL_DONE 11u /* a: the token, status -(a % 4) */
#define FC_NEXT_CONTROL 12u /* md__remote_next_control until it has none */
#define FC_CANDIDATES 13u   /* a: up to 1 + a * 16 (md__remote_take_candidates) */
#define FC_SHARE 14u        /* md__remote_share */
#define FC_REQUEST 15u      /* a, b: type 1 + a % 19 (STATUS, CONTROL: a valid payload), reply room b * 16 */
#define FC_GIVE_BACK 16u    /* a, b: n = 1 + a % 8 slots from b, flag 1: held (md__client_give_back) */
#define FC_TAKE_BACK 17u    /* md__client_take_back */
#define FC_HELLO 18u        /* a: its flags a % 4 (md__client_hello again) */
#define FC_SCAN 19u         /* a: md__scanner_step of 1 + a % 16 pages */
/* a, b: n = 1 + a % 4 guest pages from page a / 4 % 8, slots from b
 * (flag 1: held; those the pages do not take stay held) */
#define FC_MERGE 20u
#define FC_TOUCH 21u        /* a: a byte of guest page a % 8 written */
#define FC_REAP 22u         /* md__engine_reap */
#define FC_UNREFS 23u       /* md__engine_send_unrefs */
#define FC_UNREGISTER 24u   /* a: guest page a % 8 unregistered (flag 1: it stays mapped), then all again */
#define FC_SLEEP 25u        /* MD_CLIENT_LATE_MAX_MS pass (and a ms) */
#define FC_SMALL_BUF 26u    /* the client's socket sends 4 KiB at a time */
#define FC_OP_END 27u
#endif
