#!/usr/bin/env bash
# Guest workload time with and without memdedup, measured the only way this
# noisy 2-core machine allows: ROUNDS rounds, each running a pair of guests
# plain and a pair under `memdedup run`, which first alternating, comparing the
# means of the read times each guest measures itself (MEMDEDUP-GUEST: TIME).
# Usage: bench/workload-time.sh [ROUNDS] [-- extra memdedup run options]
# Writes build/bench/workload-time.json and prints the ratio.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${1:-5}
shift || true
[ "${1:-}" = -- ] && shift
extra=("$@")
md=$root/build/memdedup
img=$root/build/guest/workload.img
out=$root/build/bench
[ -x "$md" ] && [ -f "$img" ] || { echo "workload-time.sh: run 'make all guest' first" >&2; exit 1; }
mkdir -p "$out"
export MEMDEDUP_RUN_DIR=${MEMDEDUP_RUN_DIR:-$out/run}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

pair() {  # MODE ROUND -> two read times on stdout
  local mode=$1 r=$2 w=() i
  [ "$mode" = memdedup ] && w=(--wrapper "$md run --kernel-ksm=off ${extra[*]} --")
  pids=()
  for i in 1 2; do
    guest/run-guest.sh "${w[@]}" --log "$out/wt-$mode-$r-$i.log" "$img" >/dev/null 2>&1 &
    pids+=($!)
  done
  for i in 0 1; do wait "${pids[$i]}" || { echo "workload-time.sh: a $mode guest failed" >&2; exit 1; }; done
  pids=()
  for i in 1 2; do grep -o 'read_s=[0-9.]*' "$out/wt-$mode-$r-$i.log" | cut -d= -f2; done
}

plain=() shared=()
for r in $(seq "$rounds"); do
  # Which pair goes first alternates: the second of a round runs on a host
  # the first has just left (its freed memory, its page cache), and a fixed
  # order would charge that to one mode.
  cat "$img" > /dev/null
  if [ $((r % 2)) = 1 ]; then
    mapfile -t a < <(pair plain "$r")
    mapfile -t b < <(pair memdedup "$r")
  else
    mapfile -t b < <(pair memdedup "$r")
    mapfile -t a < <(pair plain "$r")
  fi
  plain+=("${a[@]}") shared+=("${b[@]}")
  echo "round $r: plain ${a[*]}  memdedup ${b[*]}"
done
mean() { printf '%s\n' "$@" | awk '{s += $1} END {printf "%.3f", s / NR}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
mp=$(mean "${plain[@]}") mm=$(mean "${shared[@]}")
dp=$(median "${plain[@]}") dm=$(median "${shared[@]}")
ratio=$(awk -v a="$mm" -v b="$mp" 'BEGIN{printf "%.3f", a / b}')
mratio=$(awk -v a="$dm" -v b="$dp" 'BEGIN{printf "%.3f", a / b}')
printf '{"rounds": %s, "plain_read_s": [%s], "memdedup_read_s": [%s], "plain_mean_s": %s, "memdedup_mean_s": %s, "ratio": %s, "plain_median_s": %s, "memdedup_median_s": %s, "median_ratio": %s}\n' \
  "$rounds" "$(IFS=,; echo "${plain[*]}")" "$(IFS=,; echo "${shared[*]}")" "$mp" "$mm" "$ratio" "$dp" "$dm" "$mratio" > "$out/workload-time.json"
echo "read time: plain mean ${mp} s / median ${dp} s; memdedup mean ${mm} s / median ${dm} s; ratio of means ${ratio}, of medians ${mratio}"
