/* fuzz_daemon.h - the input format of fuzz_daemon.c, which daemon_seeds.c
 * writes: chunks of an op byte and what it needs. */
#ifndef MD_FUZZ_DAEMON_H
#define MD_FUZZ_DAEMON_H

/* The peers' processes: peers 0 and 1 are one process of root's, FUZZ_PID,
 * peer 2 another, FUZZ_PID + 1, and peer 3 that one too after it became
 * user FUZZ_UID_OTHER (QEMU's -runas). No process has these pids (above
 * the kernel's PID_MAX_LIMIT, 2^22); the HELLOs of the corpus name them. */
#define FUZZ_PID 0x40000000
#define FUZZ_PID_OF(peer) (FUZZ_PID + ((peer) >= 2))
#define FUZZ_UID_OTHER 4242u
#define FUZZ_UID_OF(peer) ((peer) == 3 ? FUZZ_UID_OTHER : 0u)
#define FUZZ_POOL_PAGES 64u        /* a PUBLISH of MD_PUBLISH_MAX pages fills it */
#define FUZZ_PEERS 4

/* op & FUZZ_OP_PEER: the peer. */
#define FUZZ_OP_PEER 3u
#define FUZZ_OP_SEND (0u << 2)     /* a u24 (little-endian) count, then the bytes */
#define FUZZ_OP_REST (1u << 2)     /* the rest of the input */
#define FUZZ_OP_HANGUP (2u << 2)   /* shut down writing, run the daemon, close */
#define FUZZ_OP_CLOSE (3u << 2)    /* close at once, replies unread */
#define FUZZ_OP_ACT (3u << 2)
/* With a send: the daemon does not run before the next chunk's bytes are
 * in too (both reach it in one wake-up, the lower peer's first). A hang-up
 * or close of the same peer next puts them in its socket before it, the
 * daemon not woken. With a hang-up or close: the daemon wakes up once
 * before it (handles a batch of what is in, not all). */
#define FUZZ_OP_HOLD (1u << 4)
/* First, time passes: every CONTROL waiting for agents times out
 * (md__control_tick; the harness's daemon waits 0 ms), and the pools'
 * freed slots are punched (md__domains_trim), as a quiet second does. */
#define FUZZ_OP_TICK (1u << 5)
/* With a send: the peer reads no reply from now until a chunk of it
 * without this bit (or the end): the daemon's queue for it grows, and past
 * MD_D_OUT_PAUSE it stops handling the peer's requests. */
#define FUZZ_OP_DEAF (1u << 6)
/* First, the peer's process exits: the pidfd the daemon holds of it turns
 * readable, and its next connection is a new process with the same pid
 * (as after a pid is reused). Its connections stay open, as a child the
 * VMM forked keeps them. */
#define FUZZ_OP_EXIT (1u << 7)
#endif
