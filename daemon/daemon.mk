# daemon.mk - memdedupd, the protocol and the client library.
# Included before the top Makefile's own `all:`, so its first rule is `all`
# (the default goal stays `all`).
# COMMON_DAEMON_SRC joins the agent library (libmemdedup.a): libc only.
# DAEMON_SRC is the daemon program; it links that library for the engine's
# pool, index and checksum, and jansson for its status document.
# DAEMON_CLI_SRC joins CLI_SRC (memdedup pause/resume/unmerge/set, status).
DAEMON_SRC := daemon/main.c daemon/dlog.c daemon/server.c daemon/domain.c daemon/agent.c \
              daemon/status.c daemon/control.c
COMMON_DAEMON_SRC := common/protocol.c common/client.c common/rxbuf.c
DAEMON_CLI_SRC := cli/cmd_control.c cli/status_daemon.c
DAEMON_TEST_SRC := tests/daemon/test_protocol.c tests/daemon/test_daemon.c tests/daemon/test_daemon_start.c \
                   tests/daemon/test_client.c \
                   tests/daemon/daemon_util.c
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(B)/%.o)

all: $(B)/memdedupd $(DAEMON_CLI_SRC:%.c=$(B)/%.o)

$(DAEMON_OBJ): CFLAGS += -Iengine -Idaemon

$(B)/memdedupd: $(DAEMON_OBJ) $(B)/libmemdedup.a
	$(CC) -o $@ $^ $(LDFLAGS) $(JSON_LIBS)

# The daemon's tests read STATUS documents with jansson.
$(B)/runner: LDFLAGS += $(JSON_LIBS)

# The protocol decoder on arbitrary bytes, corpus replayed by `make check`.
$(B)/fuzz-replay-protocol: fuzz/replay.c fuzz/fuzz_protocol.c $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)
tests-build: $(B)/fuzz-replay-protocol

# libFuzzer build (clang): `make fuzz-protocol`.
fuzz-protocol:
	@mkdir -p $(B)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Icommon \
	  -o $(B)/fuzz-protocol fuzz/fuzz_protocol.c common/protocol.c common/rxbuf.c
	$(B)/fuzz-protocol -max_total_time=60 -max_len=16384 fuzz/corpus/protocol

# One valid message of every type into the corpus (after a protocol change).
$(B)/fuzz-seeds: fuzz/protocol_seeds.c $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)
fuzz-seeds: $(B)/fuzz-seeds
	$(B)/fuzz-seeds fuzz/corpus/protocol

.PHONY: fuzz-protocol fuzz-seeds
