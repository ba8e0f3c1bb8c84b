# tests.mk - the test tiers. `make check`: unit and process tests, the fuzz
# corpus replay, two real guests, QEMU's snapshot and postcopy migration, and
# two guests whose duplicates only scanning finds (a longer hold than its
# default: guests under load finish reading further apart).
# `make check-all` adds the slow tier.
TEST_SRC := tests/runner.c tests/proc.c tests/cgroup.c tests/test_units.c tests/test_agent.c tests/test_cli.c tests/test_scan.c tests/test_cross.c tests/test_hints.c \
            $(ENGINE_TEST_SRC) $(DAEMON_TEST_SRC)
TEST_OBJ := $(TEST_SRC:%.c=$(B)/%.o)
$(TEST_OBJ): CFLAGS += -Iagent -Iengine -Idaemon -Itests -Itests/daemon

$(B)/runner: $(TEST_OBJ) $(B)/libmemdedup.a
	$(CC) -o $@ $^ $(LDFLAGS)

# free() exported: the libraries' calls come to the testproc's ("freemadvise").
$(B)/testproc: $(B)/tests/testproc.o
	$(CC) -o $@ $^ $(LDFLAGS) -Wl,--export-dynamic-symbol=free -luring

# A stand-in for libibverbs (no RDMA adapter here), loaded by the testproc.
$(B)/libibverbs-stub.so: $(B)/tests/stub_ibverbs.o
	$(CC) -shared -o $@ $^ $(LDFLAGS)

# Preloaded into a test's memdedupd: no SO_PEERPIDFD, as before Linux 6.5.
$(B)/libnopeerpidfd-stub.so: $(B)/tests/stub_nopeerpidfd.o
	$(CC) -shared -o $@ $^ $(LDFLAGS) -ldl

# Preloaded into a test's memdedupd: its pid file's races, every time.
$(B)/libpidfile-stub.so: $(B)/tests/stub_pidfile.o
	$(CC) -shared -o $@ $^ $(LDFLAGS) -ldl

# Preloaded before the agent: a copy of it from before it knew of others.
$(B)/liboldagent-stub.so: $(B)/tests/stub_oldagent.o
	$(CC) -shared -o $@ $^ $(LDFLAGS) -ldl

# Loaded by the testproc with RTLD_DEEPBIND or dlmopen: calls past the agent.
$(B)/libdeepbind-stub.so: $(B)/tests/stub_deepbind.o
	$(CC) -shared -o $@ $^ $(LDFLAGS)

tests-build: $(B)/runner $(B)/testproc $(B)/libibverbs-stub.so $(B)/libnopeerpidfd-stub.so $(B)/libpidfile-stub.so \
             $(B)/liboldagent-stub.so $(B)/libdeepbind-stub.so $(B)/fuzz-replay \
             $(B)/fuzz-replay-elf $(B)/fuzz-replay-status $(B)/fuzz-replay-state $(B)/fuzz-replay-mountinfo

$(B)/fuzz-replay: fuzz/replay.c fuzz/fuzz_stats_file.c $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)

# memdedupd's kept state (daemon/state.c), read at its start.
$(B)/fuzz-replay-state: fuzz/replay.c fuzz/fuzz_state.c $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)

# The search of mountinfo for a cgroup's mount (the agent's memory limits,
# memdedup run's move of memdedupd out of the VMM's cgroup).
$(B)/fuzz-replay-mountinfo: fuzz/replay.c fuzz/fuzz_mountinfo.c $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)

# memdedup run's check of MEMDEDUP_PRELOAD, a file of the operator's.
$(B)/fuzz-replay-elf: fuzz/replay.c fuzz/fuzz_elf.c cli/elfcheck.c cli/cli.h $(wildcard common/*.h)
	$(CC) $(MD_CFLAGS) $(CFLAGS) -Icli -o $@ $(filter %.c,$^) $(LDFLAGS)
$(B)/fuzz-elf-seeds: fuzz/elf_seeds.c
	$(CC) $(MD_CFLAGS) $(CFLAGS) -o $@ $^ $(LDFLAGS)

# memdedup status's merging of memdedupd's STATUS_R pages (whoever holds
# the socket wrote them). Its corpus is hand-written, not `make fuzz-seeds`'.
$(B)/fuzz-replay-status: fuzz/replay.c fuzz/fuzz_status.c cli/status_daemon.c cli/status_daemon.h $(B)/libmemdedup.a
	$(CC) $(MD_CFLAGS) $(CFLAGS) $(JSON_CFLAGS) -Icli -o $@ $(filter-out %.h,$^) $(LDFLAGS) $(JSON_LIBS)

check-deps:
	scripts/install-deps.sh test

check-unit: all
	$(B)/runner

# The corpus again under AddressSanitizer and UBSan, parsers included: the
# replay copies each input to a buffer of its size, so only an instrumented
# parser's overread is caught (a plain build sees crashes alone).
ASAN_BUILD = $(MAKE) B=build-asan OPT="-O1 -g -fno-omit-frame-pointer" SAN="-fsanitize=address,undefined"

check-fuzz: $(B)/fuzz-replay $(B)/fuzz-replay-protocol $(B)/fuzz-replay-daemon $(B)/fuzz-replay-client \
            $(B)/fuzz-replay-elf $(B)/fuzz-replay-status $(B)/fuzz-replay-state $(B)/fuzz-replay-mountinfo
	$(B)/fuzz-replay fuzz/corpus/stats_file
	$(B)/fuzz-replay-mountinfo fuzz/corpus/mountinfo
	$(B)/fuzz-replay-state fuzz/corpus/state
	$(B)/fuzz-replay-elf fuzz/corpus/elf
	$(B)/fuzz-replay-protocol fuzz/corpus/protocol
	$(B)/fuzz-replay-daemon fuzz/corpus/daemon
	$(B)/fuzz-replay-client fuzz/corpus/client
	$(B)/fuzz-replay-status fuzz/corpus/status
	$(ASAN_BUILD) build-asan/fuzz-replay build-asan/fuzz-replay-protocol build-asan/fuzz-replay-daemon \
	  build-asan/fuzz-replay-client build-asan/fuzz-replay-elf build-asan/fuzz-replay-status \
	  build-asan/fuzz-replay-state build-asan/fuzz-replay-mountinfo
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay fuzz/corpus/stats_file
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-state fuzz/corpus/state
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-mountinfo fuzz/corpus/mountinfo
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-elf fuzz/corpus/elf
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-protocol fuzz/corpus/protocol
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-daemon fuzz/corpus/daemon
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-client fuzz/corpus/client
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-status fuzz/corpus/status

# The first from a path with a space and a comma (through a symbolic link
# to this tree): the guest kit and the agent must take such paths.
# The kernel and initramfs only: the tests make the images they read.
# Both run whatever the first gives; the worse status is make's. The link's
# directory goes on Ctrl-C too (the shell's EXIT trap runs on a signal only
# once a trap for it has the shell exit).
check-guest: all $(B)/guest/vmlinuz $(B)/guest/initramfs.cpio.gz
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && trap 'exit 130' INT && trap 'exit 143' TERM && \
	  trap 'exit 129' HUP && ln -s "$(CURDIR)" "$$d/memdedup dir,1" && \
	  { rc=0; "$$d/memdedup dir,1/tests/guest/test_two_guests.sh" || rc=$$?; \
	    tests/guest/test_migration_guest.sh || { r=$$?; [ $$r -le $$rc ] || rc=$$r; }; \
	    TEST_HOLD=35 tests/guest/test_scan_guests.sh || { r=$$?; [ $$r -le $$rc ] || rc=$$r; }; exit $$rc; }

# One tier after the other, whatever -j says: the process tests, the ASan
# build and the guests sharing the cores made each other time out.
check: check-deps
	$(MAKE) check-unit
	$(MAKE) check-fuzz
	$(MAKE) check-guest

# libFuzzer build of the same targets (clang): `make fuzz`.
fuzz: $(AGENT_SRC) fuzz/fuzz_stats_file.c
	clang -g -O1 -fsanitize=fuzzer,address -std=c11 -D_GNU_SOURCE -Iinclude -Icommon \
	  -o $(B)/fuzz-stats-file fuzz/fuzz_stats_file.c common/stats_file.c common/log.c
	$(B)/fuzz-stats-file -max_total_time=60 fuzz/corpus/stats_file
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Icommon -Icli \
	  -o $(B)/fuzz-elf fuzz/fuzz_elf.c cli/elfcheck.c
	$(B)/fuzz-elf -max_total_time=60 -max_len=4096 fuzz/corpus/elf
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Icommon \
	  -o $(B)/fuzz-state fuzz/fuzz_state.c common/protocol.c
	$(B)/fuzz-state -max_total_time=60 -max_len=1024 fuzz/corpus/state
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Icommon \
	  -o $(B)/fuzz-mountinfo fuzz/fuzz_mountinfo.c common/sys.c common/log.c -pthread
	$(B)/fuzz-mountinfo -max_total_time=60 -max_len=4096 fuzz/corpus/mountinfo
	$(MAKE) fuzz-protocol
	$(MAKE) fuzz-daemon
	$(MAKE) fuzz-client
	$(MAKE) fuzz-status

# libFuzzer build of fuzz_status (clang): `make fuzz-status` (FUZZ_TIME
# seconds). jansson is not instrumented: coverage is of our checks. New
# inputs go to $(B)/fuzz-status-corpus, the first directory; pick the few
# worth keeping into fuzz/corpus/status by hand.
fuzz-status: $(B)/libmemdedup.a
	@mkdir -p $(B)/fuzz-status-corpus
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Iinclude -Icommon -Icli \
	  $(JSON_CFLAGS) -o $(B)/fuzz-status fuzz/fuzz_status.c cli/status_daemon.c common/printable.c \
	  $(B)/libmemdedup.a -pthread $(JSON_LIBS)
	$(B)/fuzz-status -max_total_time=$(FUZZ_TIME) -max_len=65536 $(B)/fuzz-status-corpus fuzz/corpus/status

# The slow tier: sanitizers, and the writer stress tests for 10 minutes each.
check-all: check
	$(MAKE) check-sanitize
	MD_STRESS_MS=600000 MD_TEST_TIMEOUT=900 $(B)/runner scan_stress_no_lost_write \
	  cross_stress_no_lost_write engine_stress_no_lost_write engine_stress_kernel_writes_no_lost_write

# The whole suite under AddressSanitizer and UBSan: the runner, the testproc
# and the preloaded agent (libasan must come first in LD_PRELOAD).
check-sanitize:
	$(MAKE) all	# tests that run the CLI by its path in build/
	$(ASAN_BUILD) all
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay fuzz/corpus/stats_file
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-protocol fuzz/corpus/protocol
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-daemon fuzz/corpus/daemon
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-client fuzz/corpus/client
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-elf fuzz/corpus/elf
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-status fuzz/corpus/status
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-state fuzz/corpus/state
	UBSAN_OPTIONS=halt_on_error=1 build-asan/fuzz-replay-mountinfo fuzz/corpus/mountinfo
	MD_BUILD_DIR=build-asan MD_TEST_PRELOAD_FIRST=$$($(CC) -print-file-name=libasan.so) \
	  ASAN_OPTIONS=detect_leaks=0 build-asan/runner

.PHONY: tests-build check check-deps check-unit check-fuzz check-guest check-all check-sanitize fuzz \
        fuzz-status
