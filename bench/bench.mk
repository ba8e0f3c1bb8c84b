# bench.mk - benchmarks. `make microbench`: cost per page of sharing at read
# time vs a plain pread. `make bench`: the two-guest fleet under five modes
# (bench/run-bench.sh); results in build/bench/.
$(B)/microbench: $(B)/bench/microbench.o $(B)/libmemdedup.a
	$(CC) -o $@ $^ $(LDFLAGS)

# What is left to share in running guests' RAM (frames vs distinct contents).
$(B)/census: $(B)/bench/census.o
	$(CC) -o $@ $^ $(LDFLAGS)

# The page checksum's cost, baseline build against the one used (AVX2).
$(B)/hashbench: $(B)/bench/hashbench.o $(B)/libmemdedup.a
	$(CC) -o $@ $^ $(LDFLAGS)

# What a merge's page-table work costs on this machine (zero page, TLB
# shootdowns, huge page splits): `build/ptcost`.
$(B)/ptcost: $(B)/bench/ptcost.o
	$(CC) -o $@ $^ $(LDFLAGS)

# memdedupd's fairness between users: one user's LOOKUP round trip while
# another floods it from many connections (bench/daemon-fairness.sh).
$(B)/daemonflood: $(B)/bench/daemonflood.o $(B)/common/protocol.o
	$(CC) -o $@ $^ $(LDFLAGS)

bench-build: $(B)/microbench $(B)/census $(B)/hashbench $(B)/ptcost $(B)/daemonflood

microbench: $(B)/microbench $(B)/hashbench
	$(B)/microbench 64 5
	$(B)/hashbench 3

# Packages first, as for the demo: a fresh machine has no headers to build with.
bench:
	scripts/install-deps.sh all
	$(MAKE) all guest
	bench/run-bench.sh

.PHONY: bench-build microbench bench
