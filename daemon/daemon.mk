# daemon.mk - memdedupd, the protocol and the client library.
# Included before the top Makefile's own `all:`, so its first rule is `all`
# (the default goal stays `all`).
# COMMON_DAEMON_SRC joins the agent library (libmemdedup.a): libc only.
# DAEMON_SRC is the daemon program; it links that library for the engine's
# pool, index and checksum, and jansson for its status document.
# DAEMON_CLI_SRC joins CLI_SRC (memdedup pause/resume/unmerge/set, status).
DAEMON_SRC := daemon/main.c daemon/dlog.c daemon/server.c daemon/domain.c daemon/agent.c \
              daemon/status.c daemon/control.c daemon/state.c
COMMON_DAEMON_SRC := common/protocol.c common/client.c common/rxbuf.c common/printable.c
DAEMON_CLI_SRC := cli/cmd_control.c cli/status_daemon.c
DAEMON_TEST_SRC := tests/daemon/test_protocol.c tests/daemon/test_daemon.c tests/daemon/test_daemon_start.c \
                   tests/daemon/test_client.c tests/daemon/test_server.c \
                   tests/daemon/daemon_util.c
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(B)/%.o)

all: $(B)/memdedupd $(DAEMON_CLI_SRC:%.c=$(B)/%.o)

$(DAEMON_OBJ): CFLAGS += -Iengine -Idaemon

$(B)/memdedupd: $(DAEMON_OBJ) $(B)/libmemdedup.a
	$(CC) -o $@ $^ $(LDFLAGS) $(JSON_LIBS)

# The daemon's tests read STATUS documents with jansson, and drive its loop
# in their own process (tests/daemon/test_server.c).
$(B)/runner: LDFLAGS += $(JSON_LIBS)
$(B)/runner: $(filter-out $(B)/daemon/main.o,$(DAEMON_OBJ))

# The protocol decoder on arbitrary bytes, corpus replayed by `make check`.
$(B)/fuzz-replay-protocol: fuzz/replay.c fuzz/fuzz_protocol.c $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)
tests-build: $(B)/fuzz-replay-protocol

# memdedupd's handlers, a daemon built in the fuzz target's process with
# peers on socketpairs (fuzz/fuzz_daemon.c): all of the daemon but main().
DAEMON_LIB_OBJ := $(filter-out $(B)/daemon/main.o,$(DAEMON_OBJ))
$(B)/fuzz-replay-daemon: fuzz/replay.c fuzz/fuzz_daemon.c fuzz/fuzz_daemon.h fuzz/fuzz_util.h $(DAEMON_LIB_OBJ) $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -Iengine -Idaemon -o $@ $(filter-out %.h,$^) $(LDFLAGS) $(JSON_LIBS)
tests-build: $(B)/fuzz-replay-daemon

# The agent's side on whatever a daemon sends (fuzz/fuzz_client.c): the
# client library and the engine's remote pool. Its connect() to the daemon,
# recvmsg(), poll() and clock_gettime() are wrapped: it gets a socketpair's
# end, the daemon answers what it was sent before the client reads, and a
# wait for what will not come is over at once, its time passed.
FUZZ_CLIENT_LDFLAGS := -Wl,--wrap=connect -Wl,--wrap=recvmsg -Wl,--wrap=poll -Wl,--wrap=clock_gettime
$(B)/fuzz-replay-client: fuzz/replay.c fuzz/fuzz_client.c fuzz/fuzz_client.h fuzz/fuzz_util.h $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $(filter-out %.h,$^) $(LDFLAGS) $(FUZZ_CLIENT_LDFLAGS)
tests-build: $(B)/fuzz-replay-client

# The largest input of the replay (fuzz/replay.c): the largest message
# (a STATUS_R of MD_MSG_MAX bytes) behind its header and a type byte.
FUZZ_MAX_LEN := 1048593

# libFuzzer build (clang): `make fuzz-protocol`.
fuzz-protocol:
	@mkdir -p $(B)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Icommon \
	  -o $(B)/fuzz-protocol fuzz/fuzz_protocol.c common/protocol.c common/rxbuf.c
	$(B)/fuzz-protocol -max_total_time=60 -max_len=$(FUZZ_MAX_LEN) fuzz/corpus/protocol

# libFuzzer build of fuzz_daemon (clang): the library and the daemon's
# objects built again into build-fuzz, instrumented. `make fuzz-daemon`
# (FUZZ_TIME seconds, 60 by default).
FUZZ_B := build-fuzz
FUZZ_TIME ?= 60
fuzz-daemon-build:
	$(MAKE) B=$(FUZZ_B) CC=clang OPT="-g -O1" \
	  SAN="-fsanitize=fuzzer-no-link,address,undefined" \
	  $(FUZZ_B)/libmemdedup.a $(DAEMON_LIB_OBJ:$(B)/%=$(FUZZ_B)/%)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Icommon \
	  -Iengine -Idaemon -o $(FUZZ_B)/fuzz-daemon fuzz/fuzz_daemon.c \
	  $(DAEMON_LIB_OBJ:$(B)/%=$(FUZZ_B)/%) $(FUZZ_B)/libmemdedup.a -pthread $(JSON_LIBS)
fuzz-daemon: fuzz-daemon-build
	$(FUZZ_B)/fuzz-daemon -max_total_time=$(FUZZ_TIME) -max_len=$(FUZZ_MAX_LEN) -jobs=1 fuzz/corpus/daemon

# libFuzzer build of fuzz_client (clang), the library instrumented in
# build-fuzz: `make fuzz-client` (FUZZ_TIME seconds). Its sessions need
# no megabyte: a shorter -max_len keeps the mutations where they matter.
FUZZ_CLIENT_MAX_LEN := 65536
fuzz-client-build:
	$(MAKE) B=$(FUZZ_B) CC=clang OPT="-g -O1" \
	  SAN="-fsanitize=fuzzer-no-link,address,undefined" $(FUZZ_B)/libmemdedup.a
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Icommon \
	  -Iengine -o $(FUZZ_B)/fuzz-client fuzz/fuzz_client.c $(FUZZ_B)/libmemdedup.a -pthread \
	  $(FUZZ_CLIENT_LDFLAGS)
fuzz-client: fuzz-client-build
	$(FUZZ_B)/fuzz-client -max_total_time=$(FUZZ_TIME) -max_len=$(FUZZ_CLIENT_MAX_LEN) -jobs=1 \
	  fuzz/corpus/client

# Seeds into the corpora, made by this version's code (after a change of
# the protocol, the statistics file or the daemon's sessions): one valid
# message of every type, statistics files of this layout, sessions with
# memdedupd, an agent's sessions with a daemon.
$(B)/fuzz-seeds: fuzz/protocol_seeds.c $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)
$(B)/fuzz-stats-seeds: fuzz/stats_file_seeds.c $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)
$(B)/fuzz-daemon-seeds: fuzz/daemon_seeds.c fuzz/fuzz_daemon.h $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -Iengine -o $@ $(filter-out %.h,$^) $(LDFLAGS)
$(B)/fuzz-client-seeds: fuzz/client_seeds.c fuzz/fuzz_client.h $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $(filter-out %.h,$^) $(LDFLAGS)
fuzz-seeds: $(B)/fuzz-seeds $(B)/fuzz-stats-seeds $(B)/fuzz-daemon-seeds $(B)/fuzz-client-seeds \
            $(B)/fuzz-elf-seeds
	$(B)/fuzz-seeds fuzz/corpus/protocol
	$(B)/fuzz-stats-seeds fuzz/corpus/stats_file
	@mkdir -p fuzz/corpus/daemon fuzz/corpus/client
	$(B)/fuzz-daemon-seeds fuzz/corpus/daemon
	$(B)/fuzz-client-seeds fuzz/corpus/client
	@mkdir -p fuzz/corpus/elf
	$(B)/fuzz-elf-seeds fuzz/corpus/elf

.PHONY: fuzz-protocol fuzz-daemon fuzz-daemon-build fuzz-client fuzz-client-build fuzz-seeds
