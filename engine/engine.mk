# engine.mk - the content-based merging engine (issue: content sharing).
# ENGINE_SRC joins the agent library; ENGINE_TEST_SRC joins the test runner.
# checksum.c inlines XXH3 from <xxhash.h> (Debian: libxxhash-dev), so the
# engine needs the header at build time and no library at link time.
ENGINE_SRC := engine/uffd.c engine/pool.c engine/merge.c engine/checksum.c \
              engine/checksum_avx2.c \
              engine/hints.c engine/index.c engine/scanner.c engine/remote.c \
              engine/inflight.c
ENGINE_LIBS :=
# One file built for AVX2, called only when the CPU has it (checksum.c).
$(B)/engine/checksum_avx2.o: MD_CFLAGS += -mavx2
ENGINE_TEST_SRC := tests/engine/test_engine.c
