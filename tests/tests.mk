# tests.mk - the test tiers. `make check`: unit and process tests, the fuzz
# corpus replay, and two real guests. `make check-all` adds the slow tier.
TEST_SRC := tests/runner.c tests/proc.c tests/test_units.c tests/test_agent.c tests/test_cli.c \
            $(ENGINE_TEST_SRC)
TEST_OBJ := $(TEST_SRC:%.c=$(B)/%.o)
$(TEST_OBJ): CFLAGS += -Iagent -Iengine -Itests

$(B)/runner: $(TEST_OBJ) $(B)/libmemdedup.a
	$(CC) -o $@ $^ $(LDFLAGS)

$(B)/testproc: $(B)/tests/testproc.o
	$(CC) -o $@ $^ $(LDFLAGS)

tests-build: $(B)/runner $(B)/testproc $(B)/fuzz-replay

$(B)/fuzz-replay: fuzz/replay.c fuzz/fuzz_stats_file.c $(B)/libmemdedup.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS)

check-deps:
	scripts/install-deps.sh test

check-unit: all
	$(B)/runner

check-fuzz: $(B)/fuzz-replay
	$(B)/fuzz-replay fuzz/corpus/stats_file

check-guest: all guest
	tests/guest/test_two_guests.sh

check: check-deps
	$(MAKE) check-unit check-fuzz check-guest

# libFuzzer build of the same targets (clang): `make fuzz`.
fuzz: $(AGENT_SRC) fuzz/fuzz_stats_file.c
	clang -g -O1 -fsanitize=fuzzer,address -std=c11 -D_GNU_SOURCE -Iinclude -Icommon \
	  -o $(B)/fuzz-stats-file fuzz/fuzz_stats_file.c common/stats_file.c
	$(B)/fuzz-stats-file -max_total_time=60 fuzz/corpus/stats_file

check-all: check
	$(MAKE) check-sanitize

check-sanitize:
	$(MAKE) B=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer" \
	  LDFLAGS="-fsanitize=address,undefined" build-asan/runner
	cd . && ASAN_OPTIONS=detect_leaks=1 build-asan/runner plan_aligned plan_unaligned plan_eof \
	  plan_partial regions_add_overlap regions_remove_split stats_parse_valid stats_parse_rejects \
	  agent_api_rejects

.PHONY: tests-build check check-deps check-unit check-fuzz check-guest check-all check-sanitize fuzz
