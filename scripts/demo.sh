#!/usr/bin/env bash
# memdedup demo: two guests (512 MB each) read the same ~160 MB image, first
# as plain QEMU, then each under `memdedup run --kernel-ksm=off`. Each guest
# holds ~12 s after reading so the fleet's memory can be measured.
# Prints a table and writes build/demo/{memory.png,summary.txt,<mode>/samples.tsv}.
# Exits non-zero if a guest fails or reads other data than the image holds
# (its DONE and RECHECK against build/guest/workload.img.md5).
# Run by `make demo` (after `make all guest`). Env: DEMO_HOLD (s), DEMO_MEM (MB).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh all
source scripts/fleet-lib.sh

out=$root/build/demo
hold=${DEMO_HOLD:-12}
mem=${DEMO_MEM:-512}
md=${MEMDEDUP_BIN:-$root/build/memdedup}
[ -x "$md" ] || fleet_die "no $md: run 'make all guest' first"
[ -f build/guest/vmlinuz ] && [ -f build/guest/initramfs.cpio.gz ] && [ -f build/guest/workload.img ] \
  || fleet_die "no guest kit in build/guest: run 'make guest' first"
fleet_init
img=$root/build/guest/workload.img
mkdir -p "$out"
# The agents' statistics files (what `memdedup status` reads) in the demo's
# own run directory (never one inherited): the host's is left alone, and
# its VMs out of the table.
export MEMDEDUP_RUN_DIR=$out/run
mkdir -p "$MEMDEDUP_RUN_DIR"

echo "== memdedup demo: 2 guests x ${mem} MB, image $(basename "$img") ($(( $(stat -c %s "$img") / 1048576 )) MiB), hold ${hold}s"
t_start=$SECONDS
echo "-- run 1: plain QEMU"
# QEMU asks kernel KSM to merge guest RAM by default (mem-merge=on): off,
# a host's running KSM cannot make the plain run smaller than it is, as
# the memdedup run has it off too (--kernel-ksm=off).
fleet_run "$out/none" 2 "$img" --mem "$mem" --hold "$hold" --qemu-opt "-machine mem-merge=off" \
  || fleet_die "plain run failed (logs in $out/none)"
echo "-- run 2: QEMU under memdedup run --kernel-ksm=off"
fleet_run "$out/memdedup" 2 "$img" --mem "$mem" --hold "$hold" \
  --wrapper "$(printf %q "$md") run --kernel-ksm=off --" || fleet_die "memdedup run failed (logs in $out/memdedup)"

mb() { awk -v k="$1" 'BEGIN{ if (k == "NA") print "NA"; else printf "%.1f", k / 1024 }'; }
declare -A PSS
row() {  # mode dir pages-column
  local mode=$1 dir=$2 col=$3 w p a f s c
  w=$(fleet_hold_window "$dir")
  # Guests whose reads ended further apart than the hold never held
  # together: no window to average, said rather than a row of NA.
  # shellcheck disable=SC2086
  set -- $w
  if [ "$1" = NA ] || awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; then
    fleet_die "the $mode run's guests did not hold together (hold window ${w}): their reads ended too far apart; raise DEMO_HOLD (now $hold s)"
  fi
  # shellcheck disable=SC2086
  p=$(fleet_window_avg "$dir" pss_kb $w)
  # shellcheck disable=SC2086
  a=$(fleet_window_avg "$dir" pss_anon_kb $w)
  # shellcheck disable=SC2086
  f=$(fleet_window_avg "$dir" pss_file_kb $w)
  # shellcheck disable=SC2086
  s=$(fleet_window_avg "$dir" "$col" $w)
  c=$(fleet_checksums "$dir" | tr '\n' ' ')
  PSS[$mode]=$p
  local saved="-"
  if [ "$mode" != none ] && [ "${PSS[none]}" != NA ] && [ "$p" != NA ]; then
    saved=$(awk -v a="${PSS[none]}" -v b="$p" 'BEGIN{printf "%.1f MB (%.0f %%)", (a - b) / 1024, 100 * (a - b) / a}')
  fi
  printf '%-10s %12s %10s %14s %13s  %-67s %s\n' "$mode" "$(mb "$p")" "$(mb "$a")" "$(mb "$f")" "$s" "$c" "$saved"
}
{
  echo
  echo "Memory of the two-guest fleet while both guests hold after reading (mean over the hold window):"
  printf '%-10s %12s %10s %14s %13s  %-67s %s\n' mode "fleet PSS MB" "anon MB" "file/shmem MB" "pages shared" "checksums (guest 1, guest 2)" saved
  row none "$out/none" ksm_sharing
  row memdedup "$out/memdedup" md_shared
  echo
  echo "Guest read time (s, in-guest): plain $(cut -f6 "$out/none/guests.tsv" | tr '\n' ' ')| memdedup $(cut -f6 "$out/memdedup/guests.tsv" | tr '\n' ' ')"
  echo "Pages shared: kernel KSM pages_sharing for 'none'; for 'memdedup' the sum of both agents' pages_shared (status --json), so twice the pages saved."
} | tee "$out/summary.txt"

# fleet_run has checked every guest against the image's md5: this only
# makes sure, as the table shows them.
sums=$(cat "$out/none/guests.tsv" "$out/memdedup/guests.tsv" | cut -f7 | sort -u | wc -l)
[ "$sums" = 1 ] || fleet_die "the guests' checksums differ (logs in $out/none and $out/memdedup)"

if command -v gnuplot >/dev/null; then
  gnuplot <<GP || echo "demo: gnuplot failed; raw samples are in $out/*/samples.tsv" >&2
set terminal pngcairo size 900,500 noenhanced
set output "$out/memory.png"
set title "Two guests reading the same image: fleet PSS (sum over both QEMU processes)"
set xlabel "seconds since start"
set ylabel "MB"
set key below
set grid
# only rows with both guests alive: one gone halves the "fleet" PSS
plot "$out/none/samples.tsv" using 1:(\$10 == 2 ? \$2/1024 : 1/0) with lines lw 2 title "plain QEMU: fleet PSS", \
     "$out/memdedup/samples.tsv" using 1:(\$10 == 2 ? \$2/1024 : 1/0) with lines lw 2 title "memdedup: fleet PSS", \
     "$out/memdedup/samples.tsv" using 1:(\$10 == 2 ? \$4/1024 : 1/0) with lines dt 2 title "memdedup: file-backed PSS (shared image pages)"
GP
  [ -f "$out/memory.png" ] && echo "Plot: $out/memory.png"
fi
echo "Raw samples: $out/none/samples.tsv $out/memdedup/samples.tsv (columns in the header); took $((SECONDS - t_start)) s"
