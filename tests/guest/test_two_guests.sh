#!/usr/bin/env bash
# Integration test: two real guests (QEMU/TCG, Debian kernel, busybox) read the
# same ext4 image, first as plain QEMU, then each under
# `memdedup run --kernel-ksm=off`. Checks:
#   1. every guest finished and printed the checksum of the image's files
#      (computed on the host), and the same again after its hold;
#   2. with the agent, the fleet PSS (mean over the seconds in which both
#      guests hold after reading) is lower than without it by at least half
#      of the workload size.
# Why that bar: each guest's page cache holds the whole workload (W MB of file
# data). Without the agent both copies are anonymous guest RAM in two QEMU
# processes (2 W in the fleet PSS); with it, both guests map the same host
# page-cache pages, which PSS counts once for the pair (W). The ideal saving is
# W; half of it leaves room for pages the agent must copy (metadata reads,
# partial pages, unaligned buffers) and for run-to-run noise (~30 MB here).
# The measured saving is printed as well.
# Env: TEST_IMAGE_MB (default 96), TEST_HOLD (s, default 8), MEMDEDUP_BIN.
# Runtime here: ~50-60 s (both guests of a mode run in parallel).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source scripts/fleet-lib.sh
source tests/guest/guest-test-lib.sh
name=test_two_guests
size=${TEST_IMAGE_MB:-96}
hold=${TEST_HOLD:-8}
md=${MEMDEDUP_BIN:-$root/build/memdedup}
out=$root/build/tests/guest
guest_test_init
img=$(fleet_image "$size")
mkdir -p "$out"
# The agents' statistics files in a directory of the test's own: the host's
# (/run/memdedup for root) is left alone.
export MEMDEDUP_RUN_DIR=$out/run
mkdir -p "$MEMDEDUP_RUN_DIR"

expect_pair "plain QEMU" "$out/none" "$img" --hold "$hold" --timeout 150
expect_pair memdedup "$out/memdedup" "$img" --hold "$hold" --timeout 150 \
  --wrapper "$(printf %q "$md") run --kernel-ksm=off --"

expect_data "$img" "$out/none" "$out/memdedup"

# shellcheck disable=SC2046
p_none=$(fleet_window_avg "$out/none" pss_kb $(fleet_hold_window "$out/none"))
# shellcheck disable=SC2046
p_md=$(fleet_window_avg "$out/memdedup" pss_kb $(fleet_hold_window "$out/memdedup"))
# shellcheck disable=SC2046
shared=$(fleet_window_avg "$out/memdedup" md_shared $(fleet_hold_window "$out/memdedup"))
echo "fleet PSS while holding: plain ${p_none} kB, memdedup ${p_md} kB; memdedup pages_shared ${shared}"
# The bar: half of the workload (see the top).
expect_saving "fleet PSS saving" "$p_none" "$p_md" $((size * 1024 / 2))
finish
