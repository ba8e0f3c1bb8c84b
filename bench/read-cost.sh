#!/usr/bin/env bash
# The cost per 4 KiB page of reads into guest RAM in the real guest workload:
# a pair of guests reads the default image once with the agent counting only
# (MEMDEDUP_NO_SHARING=1: every read is an ordinary pread), once sharing with
# the default minimum read size (share), once sharing every whole page
# (share-all: MEMDEDUP_SHARE_MIN_PAGES=1); the agents' read_ns / pages gives
# the time per page each way, for the mix of read sizes the guests really
# issue. Beside it: the time per page of the reads that shared (share modes)
# and of a plain 4 KiB pread as the guests issue them (their single-page
# reads, copied in every mode). TLB shootdowns (/proc/interrupts, the whole host) and PMD splits
# (/proc/vmstat) are counted over the reads: from when both guests have
# booted (BOOTED, so QEMU's start is left out) to when both have read. Prints
# a JSON line per mode, and writes build/bench/read-cost.json. Fails (exit 1)
# when a guest fails or does not read what the image holds (IMAGE.md5, also
# after its hold), or the pair has not read the image 120 s after it started.
# Usage: bench/read-cost.sh [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${1:-3}
case "$rounds" in ''|*[!0-9]*|0*) echo "read-cost.sh: ROUNDS takes a number, at least 1" >&2; exit 2 ;; esac
md=$root/build/memdedup
img=$root/build/guest/workload.img
out=$root/build/bench
[ -x "$md" ] && [ -f "$img" ] || { echo "read-cost.sh: run 'make all guest' first" >&2; exit 1; }
want=$(cat "$img.md5" 2>/dev/null || true)
[ -n "$want" ] || { echo "read-cost.sh: no $img.md5, what the guests must read (run 'make guest')" >&2; exit 1; }
command -v jq >/dev/null || { echo "read-cost.sh: needs jq" >&2; exit 1; }
mkdir -p "$out"
export MEMDEDUP_RUN_DIR=$out/read-cost-run
rm -rf "$MEMDEDUP_RUN_DIR"
pids=()
source "$root/scripts/fleet-lib.sh"
# The guests run in process substitutions, whose pids this shell never
# sees: every process started here goes, and the run directory's daemon.
cleanup() { trap - EXIT; trap '' INT TERM HUP; fleet_kill_descendants; fleet_stop_daemon; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# This round's guests, if any (run-guest.sh kills its QEMU on TERM).
stop_round() {
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}
round_fail() { echo "read-cost.sh: $*" >&2; exit 1; }   # stop_round on the way out

one() {  # MODE ROUND -> JSON line
  local mode=$1 r=$2 env=() i n log
  [ "$mode" = copy ] && env=(env MEMDEDUP_NO_SHARING=1)
  [ "$mode" = share-all ] && env=(env MEMDEDUP_SHARE_MIN_PAGES=1)
  local tlb0="" split0 tlb1 split1 b
  # An earlier run's logs would say READS-DONE before these guests have read.
  rm -f "$out/rc-$mode-$r"-[12].log "$out/rc-$mode-$r"-[12].log.qemu
  pids=()
  for i in 1 2; do
    guest/run-guest.sh --hold 6 --wrapper "$(printf '%q ' "${env[@]}" "$md") run --kernel-ksm=off --" \
      --log "$out/rc-$mode-$r-$i.log" "$img" >/dev/null 2>&1 &
    pids+=($!)
  done
  local t_end=$((SECONDS + 120))
  while :; do
    n=0 b=0
    for i in 1 2; do
      log=$out/rc-$mode-$r-$i.log
      grep -q '^MEMDEDUP-GUEST: BOOTED' "$log" 2>/dev/null && b=$((b + 1))
      if grep -q '^MEMDEDUP-GUEST: READS-DONE' "$log" 2>/dev/null; then n=$((n + 1))
      elif ! kill -0 "${pids[i - 1]}" 2>/dev/null; then
        round_fail "$mode round $r: guest $i ended before READS-DONE (log $log)"
      fi
    done
    # The counts start once both guests run their init: the shootdowns of
    # QEMU's start (its mappings, its threads) are not the reads'.
    if [ -z "$tlb0" ] && [ "$b" = 2 ]; then
      tlb0=$(awk '/^ *TLB:/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s + 0 }' /proc/interrupts)
      split0=$(awk '$1 == "thp_split_pmd" { print $2 }' /proc/vmstat)
    fi
    [ "$n" = 2 ] && break
    [ "$SECONDS" -lt "$t_end" ] || round_fail "$mode round $r: $n of 2 guests had read the image after 120 s (logs $out/rc-$mode-$r-*.log)"
    sleep 0.1
  done
  tlb1=$(awk '/^ *TLB:/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s + 0 }' /proc/interrupts)
  split1=$(awk '$1 == "thp_split_pmd" { print $2 }' /proc/vmstat)
  [ -n "$tlb0" ] || round_fail "$mode round $r: the guests read without saying BOOTED (logs $out/rc-$mode-$r-*.log)"
  sleep 1
  # Printed once the guests have been checked: a line of a round whose
  # guests read something else would be kept in read-cost.jsonl.
  local res
  res=$("$md" status --json | jq -c --arg m "$mode" --argjson tlb $((tlb1 - tlb0)) \
      --argjson split $((${split1:-0} - ${split0:-0})) '.totals | {mode: $m, reads: .reads_seen,
      pages: (.bytes_read / 4096 | floor), shared_at_read: .pages_shared_at_read,
      small_read_pages: .read_small_pages,
      read_s: .read_seconds, us_per_page: (.read_seconds * 1e6 / (.bytes_read / 4096)),
      pages_per_read: ((.bytes_read / 4096) / .reads_seen),
      shared_us_per_page: (if .read_shared_bytes > 0 then .read_shared_seconds * 1e6 / (.read_shared_bytes / 4096) else null end),
      page_reads: .reads_page,
      page_read_us: (if .reads_page > 0 then .read_page_seconds * 1e6 / .reads_page else null end),
      tlb_shootdowns_per_read: ($tlb / .reads_seen), pmd_splits_per_read: ($split / .reads_seen)}')
  local rc got again
  for i in 1 2; do
    rc=0
    wait "${pids[i - 1]}" || rc=$?
    log=$out/rc-$mode-$r-$i.log
    [ "$rc" = 0 ] || round_fail "$mode round $r: guest $i failed (run-guest.sh exit $rc; log $log)"
    got=$(fleet_guest_said DONE "$log") again=$(fleet_guest_said RECHECK "$log")
    if [ "$got" != "$want" ] || [ "$again" != "$want" ]; then
      round_fail "$mode round $r: guest $i read ${got:-nothing}, after its hold ${again:-nothing}; the image holds $want (log $log)"
    fi
  done
  pids=()
  echo "$res"
}

# In the background, waited for: a signal's trap runs during `wait`, where
# a pipeline in the foreground would put it off until the guests end. A
# round that fails stops its guests (the subshell's exit) and so the run
# (pipefail: `wait` returns the subshell's status).
(
  trap stop_round EXIT
  for r in $(seq "$rounds"); do
    cat "$img" > /dev/null
    one copy "$r"
    one share "$r"
    one share-all "$r"
  done
) | tee "$out/read-cost.jsonl" &
wait $!
jq -s 'group_by(.mode) | map({mode: .[0].mode, rounds: length,
        us_per_page: ((map(.us_per_page) | add) / length),
        shared_us_per_page: (map(.shared_us_per_page // empty) | if length > 0 then add / length else null end),
        page_read_us: (map(.page_read_us // empty) | if length > 0 then add / length else null end),
        tlb_shootdowns_per_read: ((map(.tlb_shootdowns_per_read) | add) / length),
        shared_at_read: ((map(.shared_at_read) | add) / length),
        pages_per_read: ((map(.pages_per_read) | add) / length)})' "$out/read-cost.jsonl" \
  | tee "$out/read-cost.json"
