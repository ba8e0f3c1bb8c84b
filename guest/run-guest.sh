#!/usr/bin/env bash
# Boots one memdedup test guest on IMAGE and waits for it to finish.
# Usage: guest/run-guest.sh [--wrapper "CMD..."] [--mem MB] [--hold S]
#                           [--log FILE] [--timeout S] [--kernel F] [--initrd F]
#                           [--qemu-opt "ARGS..."] [--resumed] IMAGE
#   --wrapper   command put before qemu-system-x86_64, e.g. "build/memdedup run --",
#               as shell words: quote a path with spaces in it (printf %q)
#   --mem       guest RAM in MB (default 512)
#   --hold      seconds the guest stays up after reading (kernel cmdline hold=S)
#   --log       serial console log (default build/guest/run-<pid>.log); QEMU's
#               own stderr goes to LOG.qemu
#   --timeout   seconds before the guest is killed and the run fails
#               (default 300 + hold)
#   --qemu-opt  more QEMU arguments, as shell words (quoted as for --wrapper)
#   --resumed   the guest comes from a snapshot or a migration (-incoming in
#               --qemu-opt): it said DONE before, here only RECHECK
# Paths (IMAGE, --log, --kernel, --initrd) may hold spaces and commas.
# Exits 0 when the log has "MEMDEDUP-GUEST: DONE" (RECHECK if --resumed) and
# QEMU has exited cleanly, prints that line. QEMU is always killed when this script exits.
set -euo pipefail
die() { echo "run-guest.sh: $*" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
wrapper="" mem=512 hold=0 log="" timeout="" qopt="" want=DONE
kernel=$root/build/guest/vmlinuz initrd=$root/build/guest/initramfs.cpio.gz
while [ $# -gt 0 ]; do
  case "$1" in
    --wrapper) wrapper=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --initrd) initrd=$2; shift 2 ;;
    --qemu-opt) qopt=$2; shift 2 ;;
    --resumed) want=RECHECK; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || die "usage: run-guest.sh [options] IMAGE (see --help)"
image=$1
[ -f "$image" ] || die "no image $image (make guest builds build/guest/workload.img)"
[ -f "$kernel" ] || die "no kernel $kernel (run: make guest)"
[ -f "$initrd" ] || die "no initramfs $initrd (run: make guest)"
for v in mem hold; do
  case "${!v}" in ''|*[!0-9]*) die "--$v must be a non-negative integer" ;; esac
done
timeout=${timeout:-$((300 + hold))}
# Not a number: the watchdog's test would fail every time, never killing.
case "$timeout" in ''|*[!0-9]*) die "--timeout must be a whole number of seconds" ;; esac
# The wrapper and the extra options are shell words (a path in them quoted).
wrap=() extra=()
eval "wrap=($wrapper)" || die "--wrapper is not a list of shell words: $wrapper"
eval "extra=($qopt)" || die "--qemu-opt is not a list of shell words: $qopt"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (scripts/install-deps.sh guest)"
log=${log:-$root/build/guest/run-$$.log}
mkdir -p "$(dirname "$log")"
: > "$log"

# A comma in -drive's file name is doubled, as QEMU reads it.
# shellcheck disable=SC2054
cmd=("${wrap[@]}" qemu-system-x86_64 -machine pc,accel=tcg -m "$mem" -nographic -no-reboot
     -monitor none -serial "file:$log"
     -kernel "$kernel" -initrd "$initrd"
     -append "console=ttyS0 quiet panic=-1 hold=$hold"
     -drive "file=${image//,/,,},if=virtio,format=raw,readonly=on"
     "${extra[@]}")
qpid=""
cleanup() {  # QEMU runs in its own session: kill its whole process group
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    kill -TERM -- "-$qpid" 2>/dev/null || kill -TERM "$qpid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$qpid" 2>/dev/null || kill -KILL "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# setsid execs (this background child is no group leader), so $! is the
# wrapper's pid, and QEMU's once the wrapper execs.
setsid "${cmd[@]}" < /dev/null > "$log.qemu" 2>&1 &
qpid=$!
start=$SECONDS
rc=0
while kill -0 "$qpid" 2>/dev/null; do
  if [ $((SECONDS - start)) -ge "$timeout" ]; then
    echo "run-guest.sh: timeout after ${timeout}s, killing QEMU (pid $qpid); log $log" >&2
    cleanup
    exit 124
  fi
  sleep 0.5
done
wait "$qpid" || rc=$?
qpid=""
if grep -q '^MEMDEDUP-GUEST: FAIL' "$log"; then
  echo "run-guest.sh: guest failed: $(grep -m1 '^MEMDEDUP-GUEST: FAIL' "$log")" >&2
  exit 1
fi
done_line=$(grep -m1 "^MEMDEDUP-GUEST: $want" "$log" | tr -d '\r' || true)
# With a hold the guest checks its data again after it, and only then
# powers off: a guest gone without its RECHECK (a kernel panic reboots, and
# -no-reboot makes that a clean exit of QEMU) did not finish.
if [ -n "$done_line" ] && [ "$want" = DONE ] && [ "$hold" -gt 0 ] &&
   ! grep -q '^MEMDEDUP-GUEST: RECHECK' "$log"; then
  echo "run-guest.sh: guest ended without RECHECK after its ${hold}s hold (QEMU exit $rc); last log lines:" >&2
  tail -n 5 "$log" "$log.qemu" >&2 || true
  exit 1
fi
if [ -z "$done_line" ]; then
  echo "run-guest.sh: guest ended without $want (QEMU exit $rc); last log lines:" >&2
  tail -n 5 "$log" "$log.qemu" >&2 || true
  exit 1
fi
[ "$rc" -eq 0 ] || die "QEMU exited with status $rc after $want (see $log.qemu)"
echo "$done_line"
