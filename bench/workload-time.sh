#!/usr/bin/env bash
# Guest workload time with and without memdedup, measured the only way this
# noisy 2-core machine allows: many rounds, comparing the means (and medians)
# of the read times each guest measures itself (MEMDEDUP-GUEST: TIME).
#
# Two layouts:
#   paired (default)  each round boots one plain guest and one guest under
#                     `memdedup run` at the same time, each QEMU (with every
#                     thread it and the agent start) pinned to a core of its
#                     own, the cores swapping every round. Both guests meet
#                     the same host at the same moment, so the host's noise
#                     falls on both, and every cycle the agent spends is
#                     taken from its own guest's core.
#   sequential        each round runs a plain pair of guests and a pair under
#                     `memdedup run`, which first alternating.
# Usage: bench/workload-time.sh [--sequential] [ROUNDS] [-- extra memdedup run options]
# (ROUNDS: at least 1, default 5; --sequential before or after it). Writes
# build/bench/workload-time.json and prints the ratio. A guest that fails, or
# does not read what the image holds (IMAGE.md5), ends the run (exit 1), its
# round's other guests stopped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
layout=paired rounds=""
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    --sequential) layout=sequential; shift ;;
    *) [ -z "$rounds" ] || { echo "workload-time.sh: one ROUNDS only (memdedup run's options go after --)" >&2; exit 2; }
       rounds=$1; shift ;;
  esac
done
rounds=${rounds:-5}
case "$rounds" in ''|*[!0-9]*|0*) echo "workload-time.sh: ROUNDS takes a number, at least 1" >&2; exit 2 ;; esac
extra=("$@")
md=$root/build/memdedup
img=$root/build/guest/workload.img
out=$root/build/bench
[ -x "$md" ] && [ -f "$img" ] || { echo "workload-time.sh: run 'make all guest' first" >&2; exit 1; }
want=$(cat "$img.md5" 2>/dev/null || true)
[ -n "$want" ] || { echo "workload-time.sh: no $img.md5, what the guests must read (run 'make guest')" >&2; exit 1; }
mkdir -p "$out"
# Its own run directory, never one inherited nor another bench's (run-bench.sh
# uses build/bench/run): at exit it stops the daemon of the directory, which
# must be one it started.
export MEMDEDUP_RUN_DIR=$out/workload-time-run
pids=()
source "$root/scripts/fleet-lib.sh"
# The guests run in process substitutions, whose pids this shell never
# sees: every process started here goes, and the run directory's daemon.
cleanup() { trap - EXIT; trap '' INT TERM HUP; fleet_kill_descendants; fleet_stop_daemon; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# The round's guests run in a process substitution: on a failure it stops
# the others before it exits (they would outlive it, no longer descendants
# of this shell for cleanup to find). Waits for pids[I], drops it from pids.
wait_guest() {  # I WHAT
  local st=0
  wait "${pids[$1]}" || st=$?
  unset "pids[$1]"
  [ "$st" = 0 ] && return 0
  echo "workload-time.sh: $2 failed (exit $st)" >&2
  [ ${#pids[@]} -eq 0 ] || fleet_kill_tree "${pids[@]}"
  exit 1
}

pair() {  # MODE ROUND -> two read times on stdout
  local mode=$1 r=$2 w=() i
  [ "$mode" = memdedup ] && w=(--wrapper "$(printf '%q ' "$md" run --kernel-ksm=off "${extra[@]}")--")
  pids=()
  for i in 1 2; do
    guest/run-guest.sh "${w[@]}" --log "$out/wt-$mode-$r-$i.log" "$img" >/dev/null 2>&1 &
    pids+=($!)
  done
  for i in 0 1; do wait_guest "$i" "round $r: $mode guest $((i + 1)) (log $out/wt-$mode-$r-$((i + 1)).log)"; done
  pids=()
  for i in 1 2; do grep -o 'read_s=[0-9.]*' "$out/wt-$mode-$r-$i.log" | cut -d= -f2; done
}

# One plain guest on core C, one memdedup guest on the other core, at once.
paired() {  # ROUND -> "plain_s memdedup_s" on stdout
  local r=$1 c=$(( $1 % 2 )) p m
  # `times` in the subshell: the CPU time of QEMU and everything it ran
  # (the agent's threads included), boot to power-off, as a second measure.
  ( guest/run-guest.sh --wrapper "taskset -c $c" --log "$out/wt-plain-$r-1.log" "$img" >/dev/null 2>&1
    rc=$?; times > "$out/wt-plain-$r-1.cpu"; exit $rc ) &
  p=$!
  ( guest/run-guest.sh --wrapper "taskset -c $((1 - c)) $(printf '%q ' "$md" run --kernel-ksm=off "${extra[@]}")--" \
      --log "$out/wt-memdedup-$r-1.log" "$img" >/dev/null 2>&1
    rc=$?; times > "$out/wt-memdedup-$r-1.cpu"; exit $rc ) &
  m=$!
  pids=("$p" "$m")
  wait_guest 0 "round $r: the plain guest (log $out/wt-plain-$r-1.log)"
  wait_guest 1 "round $r: the memdedup guest (log $out/wt-memdedup-$r-1.log)"
  pids=()
  for f in plain memdedup; do grep -o 'read_s=[0-9.]*' "$out/wt-$f-$r-1.log" | cut -d= -f2; done
}

# `times` prints the shell's and its children's user and system time
# ("0m1.234s 0m0.123s"): the second line, summed, in seconds.
cpu_s() { sed -n 2p "$1" | awk '{t = 0; for (i = 1; i <= 2; i++) {split($i, a, /[ms]/); t += a[1] * 60 + a[2]} printf "%.2f", t}'; }

# TIMES...: exactly two read times, numbers (a process substitution's exit
# status is not seen: what it printed is checked).
two_times() {
  [ $# = 2 ] || return 1
  local x
  for x; do [[ $x =~ ^[0-9]+(\.[0-9]+)?$ ]] || return 1; done
}

# LOG...: each guest read what the image holds (a time of a guest that read
# something else is not the workload's).
check_read() {
  local log got
  for log; do
    got=$(fleet_guest_said DONE "$log")
    [ "$got" = "$want" ] || { echo "workload-time.sh: round $r: the guest of $log read ${got:-nothing}; the image holds $want" >&2; exit 1; }
  done
}

command -v taskset >/dev/null || { echo "workload-time.sh: taskset not found (util-linux)" >&2; exit 1; }
plain=() shared=() plain_cpu=() shared_cpu=()
for r in $(seq "$rounds"); do
  if [ "$layout" = paired ]; then
    cat "$img" > /dev/null
    mapfile -t t < <(paired "$r")
    two_times "${t[@]}" || { echo "workload-time.sh: round $r gave no times: ${t[*]}" >&2; exit 1; }
    check_read "$out/wt-plain-$r-1.log" "$out/wt-memdedup-$r-1.log"
    plain+=("${t[0]}") shared+=("${t[1]}")
    cp=$(cpu_s "$out/wt-plain-$r-1.cpu") cm=$(cpu_s "$out/wt-memdedup-$r-1.cpu")
    plain_cpu+=("$cp") shared_cpu+=("$cm")
    echo "round $r: plain ${t[0]} (core $((r % 2)), cpu $cp)  memdedup ${t[1]} (core $((1 - r % 2)), cpu $cm)"
    continue
  fi
  # Which pair goes first alternates: the second of a round runs on a host
  # the first has just left (its freed memory, its page cache), and a fixed
  # order would charge that to one mode.
  cat "$img" > /dev/null
  no_times() { echo "workload-time.sh: round $r: the $1 pair gave no two read times: $2" >&2; exit 1; }
  if [ $((r % 2)) = 1 ]; then
    mapfile -t a < <(pair plain "$r"); two_times "${a[@]}" || no_times plain "${a[*]}"
    mapfile -t b < <(pair memdedup "$r"); two_times "${b[@]}" || no_times memdedup "${b[*]}"
  else
    mapfile -t b < <(pair memdedup "$r"); two_times "${b[@]}" || no_times memdedup "${b[*]}"
    mapfile -t a < <(pair plain "$r"); two_times "${a[@]}" || no_times plain "${a[*]}"
  fi
  check_read "$out/wt-plain-$r"-[12].log "$out/wt-memdedup-$r"-[12].log
  plain+=("${a[@]}") shared+=("${b[@]}")
  echo "round $r: plain ${a[*]}  memdedup ${b[*]}"
done
mean() { printf '%s\n' "$@" | awk '{s += $1} END {printf "%.3f", s / NR}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
mp=$(mean "${plain[@]}") mm=$(mean "${shared[@]}")
dp=$(median "${plain[@]}") dm=$(median "${shared[@]}")
ratio=$(awk -v a="$mm" -v b="$mp" 'BEGIN{printf "%.3f", a / b}')
# The geometric mean of each round's own ratio: in the paired layout both
# guests of a round met the same host, so this is the least noisy figure.
gratio=$(paste <(printf '%s\n' "${plain[@]}") <(printf '%s\n' "${shared[@]}") |
  awk '{s += log($2 / $1); n++} END {printf "%.3f", exp(s / n)}')
mratio=$(awk -v a="$dm" -v b="$dp" 'BEGIN{printf "%.3f", a / b}')
cpu_json=""
if [ "$layout" = paired ]; then
  cpp=$(mean "${plain_cpu[@]}") cpm=$(mean "${shared_cpu[@]}")
  cpu_json=$(printf ', "plain_cpu_s": [%s], "memdedup_cpu_s": [%s], "cpu_ratio": %s' \
    "$(IFS=,; echo "${plain_cpu[*]}")" "$(IFS=,; echo "${shared_cpu[*]}")" \
    "$(awk -v a="$cpm" -v b="$cpp" 'BEGIN{printf "%.3f", a / b}')")
  echo "CPU time of each QEMU, boot to power-off: plain mean ${cpp} s, memdedup mean ${cpm} s"
fi
printf '{"layout": "%s", "rounds": %s, "plain_read_s": [%s], "memdedup_read_s": [%s], "plain_mean_s": %s, "memdedup_mean_s": %s, "ratio": %s, "plain_median_s": %s, "memdedup_median_s": %s, "median_ratio": %s, "round_ratio_geomean": %s%s}\n' \
  "$layout" "$rounds" "$(IFS=,; echo "${plain[*]}")" "$(IFS=,; echo "${shared[*]}")" "$mp" "$mm" "$ratio" "$dp" "$dm" "$mratio" "$gratio" "$cpu_json" > "$out/workload-time.json"
echo "read time: plain mean ${mp} s / median ${dp} s; memdedup mean ${mm} s / median ${dm} s; ratio of means ${ratio}, of medians ${mratio}, geometric mean of the rounds' ratios ${gratio}"
