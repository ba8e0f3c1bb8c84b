#!/usr/bin/env bash
# Where memdedup's CPU goes: runs a pair of guests on the default image under
# `memdedup run --kernel-ksm=off ARGS` and prints, every 10 s, the CPU time in
# ms and the number of times it was scheduled in (/proc/.../schedstat) of each
# memdedup thread in each QEMU (md-agent, md-scan, md-uffd) and of memdedupd,
# as NAME=MS/SWITCHES, and the fleet PSS in kB (this run's two QEMUs only).
# Exits 1 if a guest fails or does not print DONE (nor, when IMAGE.md5
# exists, the checksum in it, also after the hold).
# Usage: bench/thread-cpu.sh OUTDIR [HOLD_S] -- [memdedup run options, e.g. --scan]
# (OUTDIR relative to the repository, or absolute)
# IMAGE=FILE runs the guests on another image (e.g. build/guest/workload-tmpfs.img,
# made by bench/run-bench.sh --workload tmpfs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ $# -ge 1 ] || { echo "usage: bench/thread-cpu.sh OUTDIR [HOLD_S] -- [run options]" >&2; exit 2; }
out=$1; shift
# A forgotten OUTDIR (`thread-cpu.sh 30 -- --scan`) would make a directory 30.
case "$out" in ''|*[!0-9]*) ;; *) echo "usage: bench/thread-cpu.sh OUTDIR [HOLD_S] -- [run options] (OUTDIR $out is a number: forgotten?)" >&2; exit 2 ;; esac
hold=100
if [ $# -gt 0 ] && [ "$1" != "--" ]; then hold=$1; shift; fi
[ "${1:-}" = "--" ] && shift
case "$hold" in ''|*[!0-9]*) echo "thread-cpu.sh: HOLD_S must be a number" >&2; exit 2 ;; esac
image=${IMAGE:-build/guest/workload.img}
[ -x build/memdedup ] && [ -f "$image" ] || { echo "thread-cpu.sh: run 'make all guest' first (no $image)" >&2; exit 1; }
case "$out" in /*) ;; *) out=$root/$out ;; esac
mkdir -p "$out"
# Not OUTDIR/run: OUTDIR may be build/bench, whose run/ is run-bench.sh's,
# and the daemon of the directory is stopped at exit.
export MEMDEDUP_RUN_DIR=$out/thread-cpu-run
pids=()
source "$root/scripts/fleet-lib.sh"
# The guests, and the memdedupd of this run directory only.
# shellcheck disable=SC2317  # run by the trap
cleanup() { trap - EXIT; trap '' INT TERM HUP; fleet_kill_descendants; fleet_stop_daemon; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
for i in 1 2; do
  guest/run-guest.sh --hold "$hold" --wrapper "$(printf '%q ' build/memdedup run --kernel-ksm=off "$@" --)" \
    --log "$out/g$i.log" "$image" >/dev/null 2>&1 &
  pids+=($!)
done
# This run's QEMUs: run-guest.sh's children (setsid and memdedup run exec).
qemus() {
  local g c
  for g in "${pids[@]}"; do
    for c in $(cat /proc/"$g"/task/*/children 2>/dev/null); do
      case "$(cat /proc/"$c"/comm 2>/dev/null)" in qemu-system*) echo "$c" ;; esac
    done
  done
}
t0=$(date +%s)
while [ "$(jobs -r | wc -l)" -gt 0 ]; do
  sleep 10
  line="$(( $(date +%s) - t0 ))s"
  pss=0
  # A thread, a QEMU or memdedupd may end between two reads: what is gone
  # is left out (under set -e a failed read would end the run).
  for p in $(qemus); do
    for t in /proc/"$p"/task/*; do
      n=$(cat "$t/comm" 2>/dev/null || true)
      case "$n" in md-*)
        st=$(cat "$t/schedstat" 2>/dev/null) || continue
        line="$line $p/$n=$(awk '{printf "%d/%d", $1 / 1e6, $3}' <<< "$st")" ;;
      esac
    done
    v=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true)
    pss=$(( pss + ${v:-0} ))
  done
  d=$(cat "$MEMDEDUP_RUN_DIR/memdedupd.pid" 2>/dev/null || true)
  st=""
  [ -z "$d" ] || st=$(cat /proc/"$d"/task/*/schedstat 2>/dev/null || true)   # the threads still there
  if [ -n "$st" ]; then
    line="$line memdedupd=$(awk '{ns += $1; sw += $3} END {printf "%d/%d", ns / 1e6, sw}' <<< "$st")"
  fi
  echo "$line pss_kb=$pss"
done

# What the guests did: run-guest.sh fails on FAIL, no DONE or QEMU's error.
want=$(cat "$image.md5" 2>/dev/null || true)
bad=0
for i in 1 2; do
  st=0
  wait "${pids[i - 1]}" || st=$?
  log=$out/g$i.log
  got=$(fleet_guest_said DONE "$log")
  again=$(fleet_guest_said RECHECK "$log")
  if grep -q '^MEMDEDUP-GUEST: FAIL' "$log"; then
    echo "thread-cpu.sh: guest $i: $(grep -m1 '^MEMDEDUP-GUEST: FAIL' "$log" | tr -d '\r')" >&2; bad=1
  elif [ -z "$got" ] || [ "$st" != 0 ]; then
    echo "thread-cpu.sh: guest $i failed (run-guest.sh exit $st${got:+, after DONE}; log $log)" >&2; bad=1
  elif [ -n "$want" ] && { [ "$got" != "$want" ] || { [ "$hold" -gt 0 ] && [ "$again" != "$want" ]; }; }; then
    echo "thread-cpu.sh: guest $i read $got, after the hold ${again:-nothing}; the image holds $want" >&2; bad=1
  fi
done
exit $bad
