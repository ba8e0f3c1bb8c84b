#!/usr/bin/env bash
# Where memdedup's CPU goes: runs a pair of guests on the default image under
# `memdedup run --kernel-ksm=off ARGS` and prints, every 10 s, the CPU time in
# ms and the number of times it was scheduled in (/proc/.../schedstat) of each
# memdedup thread in each QEMU (md-agent, md-scan, md-uffd) and of memdedupd,
# as NAME=MS/SWITCHES, and the fleet PSS in kB.
# Usage: bench/thread-cpu.sh OUTDIR [HOLD_S] -- [memdedup run options, e.g. --scan]
# IMAGE=FILE runs the guests on another image (e.g. build/guest/workload-tmpfs.img,
# made by bench/run-bench.sh --workload tmpfs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ $# -ge 1 ] || { echo "usage: bench/thread-cpu.sh OUTDIR [HOLD_S] -- [run options]" >&2; exit 2; }
out=$1; shift
hold=100
if [ $# -gt 0 ] && [ "$1" != "--" ]; then hold=$1; shift; fi
[ "${1:-}" = "--" ] && shift
case "$hold" in ''|*[!0-9]*) echo "thread-cpu.sh: HOLD_S must be a number" >&2; exit 2 ;; esac
image=${IMAGE:-build/guest/workload.img}
[ -x build/memdedup ] && [ -f "$image" ] || { echo "thread-cpu.sh: run 'make all guest' first (no $image)" >&2; exit 1; }
mkdir -p "$out"
export MEMDEDUP_RUN_DIR=$root/$out/run
pids=()
source "$root/scripts/fleet-lib.sh"
# The guests, and the memdedupd of this run directory only.
cleanup() { trap - EXIT; trap '' INT TERM HUP; fleet_kill_descendants; fleet_stop_daemon; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
for i in 1 2; do
  guest/run-guest.sh --hold "$hold" --wrapper "build/memdedup run --kernel-ksm=off $* --" \
    --log "$out/g$i.log" "$image" >/dev/null 2>&1 &
  pids+=($!)
done
t0=$(date +%s)
while [ "$(jobs -r | wc -l)" -gt 0 ]; do
  sleep 10
  line="$(( $(date +%s) - t0 ))s"
  pss=0
  for p in $(pgrep -f qemu-system-x86_64 || true); do
    for t in /proc/$p/task/*; do
      n=$(cat "$t/comm" 2>/dev/null || true)
      case "$n" in md-*) line="$line $p/$n=$(awk '{printf "%d/%d", $1 / 1e6, $3}' "$t/schedstat")" ;; esac
    done
    pss=$(( pss + $(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null || echo 0) ))
  done
  d=$(cat "$MEMDEDUP_RUN_DIR/memdedupd.pid" 2>/dev/null || true)
  [ -n "$d" ] && [ -d "/proc/$d/task" ] &&
    line="$line memdedupd=$(cat /proc/"$d"/task/*/schedstat 2>/dev/null | awk '{ns += $1; sw += $3} END {printf "%d/%d", ns / 1e6, sw}')"
  echo "$line pss_kb=$pss"
done
