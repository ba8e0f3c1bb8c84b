# guest-test-lib.sh - what the guest integration tests share: PASS/FAIL
# counting, the guest kit built on demand, a pair of guests run and checked,
# and a saving checked against its bar. Sourced after scripts/fleet-lib.sh,
# with $name (the test) and $md (the memdedup binary) set.
passes=0 fails=0
pass() { echo "PASS: $name: $*"; passes=$((passes + 1)); }
fail() { echo "FAIL: $name: $*"; fails=$((fails + 1)); }
finish() {
  echo "$passes passed, $fails failed"
  [ "$fails" = 0 ]
}

# The memdedup binary and the guest kernel (built from Debian packages if missing).
guest_test_init() {
  [ -x "$md" ] || { echo "FAIL: $name: no $md (run make first)"; exit 1; }
  if [ ! -f build/guest/vmlinuz ] || [ ! -f build/guest/initramfs.cpio.gz ]; then
    scripts/install-deps.sh guest
    guest/build-kernel.sh build/guest >&2
  fi
  fleet_init
}

# expect_pair LABEL OUTDIR IMAGE [fleet_run options]: two guests must finish.
expect_pair() {
  local label=$1 dir=$2 img=$3
  shift 3
  if fleet_run "$dir" 2 "$img" "$@"; then
    pass "$label: both guests finished"
  else
    fail "$label: a guest failed (logs in $dir)"
  fi
}

# expect_data IMG DIR...: every guest of each DIR printed the checksum the
# image's files have on the host (IMG.md5, made by guest/mkimage.sh), and the
# same again after its hold (RECHECK): what it read, and what it still reads
# once the host has merged and shared it, is what the image holds.
expect_data() {
  local img=$1 want d log done again n=0 bad=0
  shift
  want=$(cat "$img.md5" 2>/dev/null || true)
  if [ -z "$want" ]; then
    fail "no $img.md5 (remake the image with guest/mkimage.sh)"
    return
  fi
  for d in "$@"; do
    for log in "$d"/guest*.log; do
      n=$((n + 1))
      done=$(fleet_guest_said DONE "$log")
      again=$(fleet_guest_said RECHECK "$log")
      if [ "$done" != "$want" ] || [ "$again" != "$want" ]; then
        echo "  $log: read ${done:-nothing}, after the hold ${again:-nothing}; the image holds $want"
        bad=$((bad + 1))
      fi
    done
  done
  if [ "$n" -gt 0 ] && [ "$bad" = 0 ]; then
    pass "all $n guests read the image's data, and the same after the hold"
  else
    fail "$bad of $n guests did not read the image's data before and after the hold"
  fi
}

# expect_saving WHAT BASE_KB WITH_KB NEED_KB: BASE - WITH must be >= NEED.
expect_saving() {
  local what=$1 base=$2 with=$3 need=$4
  if [ "$base" = NA ] || [ "$with" = NA ]; then
    fail "no samples in the hold window (guests did not hold together)"
    return
  fi
  local saved=$((base - with))
  local msg="$what $((saved / 1024)) MB (need >= $((need / 1024)) MB)"
  if [ "$saved" -ge "$need" ]; then pass "$msg"; else fail "$msg"; fi
}
