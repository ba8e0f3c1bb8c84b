#!/usr/bin/env bash
# Two guests whose duplicates do not come through shared image reads: each
# copies the image's files into tmpfs (bench/tmpfs-run.sh), anonymous guest
# memory that only content scanning can merge. Runs the pair with read-time
# sharing only, then with the scanner (through a private memdedupd), and
# checks: every guest's checksum that of the image's files on the host, and
# the same again after its hold, when each guest also writes a token of its
# own into every copy and reads it back (none lost, none seen by the other
# guest through a merged frame: bench/tmpfs-run.sh); the scanner saves at least half of
# one guest's tmpfs copy on top of read-time sharing. Part of make check-all.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source scripts/fleet-lib.sh
source tests/guest/guest-test-lib.sh
name=test_scan_guests
size=${TEST_IMAGE_MB:-96}
hold=${TEST_HOLD:-25}
md=${MEMDEDUP_BIN:-$root/build/memdedup}
out=$root/build/tests/guest-scan
guest_test_init
mkdir -p "$out"
# The agents' statistics files in a directory of the test's own: the host's
# (/run/memdedup for root) is left alone.
export MEMDEDUP_RUN_DIR=$out/run
mkdir -p "$MEMDEDUP_RUN_DIR"
img=$out/tmpfs-$size.img
if [ ! -f "$img" ] || [ ! -f "$img.md5" ] || [ bench/tmpfs-run.sh -nt "$img" ]; then
  wd=$(mktemp -d)
  FLEET_EXIT_HOOKS+=('rm -rf "$wd"')   # 96 MB or more, perhaps in a tmpfs
  guest/mkworkload.sh "$wd" "$size" >/dev/null
  cp bench/tmpfs-run.sh "$wd/run.sh"
  guest/mkimage.sh "$wd" "$img" >/dev/null
  rm -rf "$wd"
fi

# A daemon of our own, on our own socket, stopped whatever happens.
export MEMDEDUP_SOCKET=$out/memdedupd.sock
rm -f "$MEMDEDUP_SOCKET"
"$(dirname "$md")/memdedupd" --foreground --socket "$MEMDEDUP_SOCKET" --run-dir "$out" 2>"$out/memdedupd.log" &
daemon=$!
stop_daemon() {
  kill "$daemon" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
}
# fleet_stop_daemon: one `memdedup run --scan` started itself (in
# MEMDEDUP_RUN_DIR) had ours gone; it must not outlive the test.
FLEET_EXIT_HOOKS+=(stop_daemon fleet_stop_daemon)
for _ in $(seq 100); do [ -S "$MEMDEDUP_SOCKET" ] && break; sleep 0.1; done
kill -0 "$daemon" 2>/dev/null && [ -S "$MEMDEDUP_SOCKET" ] \
  || fleet_die "memdedupd did not come up on $MEMDEDUP_SOCKET ($(tail -1 "$out/memdedupd.log" 2>/dev/null))"

expect_pair "read-time sharing only" "$out/read" "$img" --hold "$hold" --timeout 200 \
  --wrapper "$(printf %q "$md") run --kernel-ksm=off --"
expect_pair scanning "$out/scan" "$img" --hold "$hold" --timeout 200 \
  --wrapper "$(printf %q "$md") run --kernel-ksm=off --scan --pages-to-scan=2000 --sleep-ms=20 --"

expect_data "$img" "$out/read" "$out/scan"

# The last 5 s of the hold: the scanner has had the whole hold to merge.
end_window() { local w; w=$(fleet_hold_window "$1"); set -- $w; [ "$2" = NA ] && echo "NA NA" || awk -v b="$2" 'BEGIN{printf "%.2f %.2f\n", b - 5, b}'; }
p_read=$(fleet_window_avg "$out/read" pss_kb $(end_window "$out/read"))
p_scan=$(fleet_window_avg "$out/scan" pss_kb $(end_window "$out/scan"))
echo "fleet PSS while holding: read-time only ${p_read} kB, with scanning ${p_scan} kB"
# The bar: half of one guest's tmpfs copy, on top of read-time sharing.
expect_saving "scanning saves more:" "$p_read" "$p_scan" $((size * 1024 / 2))
finish
