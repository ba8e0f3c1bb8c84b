#!/usr/bin/env bash
# Two-guest fleet benchmark: the same workload (2 guests x 512 MB reading the
# default ~160 MB image, then holding) under five modes:
#   none           plain QEMU, kernel KSM off
#   ksm            kernel KSM at its default rate (run=1, pages_to_scan=100, sleep_millisecs=20)
#   ksm10x         kernel KSM at 10x (pages_to_scan=1000, sleep_millisecs=20)
#   memdedup       memdedup run --kernel-ksm=off, kernel KSM off
#   memdedup+ksm   memdedup run --kernel-ksm=on, kernel KSM at its default rate
# and, for content scanning (memdedupd is started per mode and stopped after):
#   scan           memdedup run --scan (read-time sharing and the scanner)
#   scan-noread    the scanner alone (MEMDEDUP_NO_SHARING=1), hints on
#   scan-noread-linear  the scanner alone without hints (--hints=off)
# Scanner modes run at --scan-rate N pages per 20 ms batch for both agents
# together (memdedupd's tunables, split among its agents; default 100, like
# kernel KSM's default; the per-batch rate is the knob both share).
# Each mode is sampled every second (scripts/fleet-lib.sh). Outputs
# build/bench/results.json, build/bench/memory.png, build/bench/<mode>/.
#
# Usage: bench/run-bench.sh [--hold S] [--hold-short S] [--quick] [--modes "m1 m2"]
#                           [--image FILE] [--mem MB] [--out DIR]
#                           [--workload image|tmpfs] [--scan-rate N] [--hold-scan S]
#   --workload      image: the guests read the image (default); tmpfs: each guest
#                   copies the image's files into tmpfs (duplicates that do not
#                   come through shared image reads) and checksums the copies
#   --hold S        hold after reading for the KSM modes (default 240: KSM converges)
#   --hold-scan S   hold for the scan modes (scan, scan-noread*; default: --hold's)
#   --hold-short S  hold for none and memdedup (default 30)
#                   (every hold is at least 10 s: the final PSS is the mean of 5
#                   samples, one a second, after both guests' reads and before
#                   the first guest's hold ends, and the guests check their
#                   data again after the hold)
#   --quick         hold 50 s / 12 s: ~5 minutes in all (KSM will not have converged)
#   --modes         subset of the modes, in order; none is the reference for savings
#   --image, --out  relative to the directory the script is run from
#   --report-only   no guests: rebuild results.json, summary and plot from the
#                   samples of an earlier run in the output directory (modes
#                   it did not finish are left out, with a message)
#   --census S      S seconds after both guests' reads, count what is left to
#                   share in their RAM (build/census) into OUTDIR/MODE/census.json
#   --cpu-window S  the CPU compared between modes is what each spent in its
#                   first S seconds from the fleet's start (default 150, the
#                   scanner modes' usual hold): the modes hold for different
#                   times, and ksmd keeps scanning after it has converged, so
#                   the CPU of whole modes is not comparable
#   --force         run even while kernel KSM merges other processes' pages
#                   (stopping it between modes unmerges them all)
# The KSM knobs run, pages_to_scan and sleep_millisecs are saved first and
# restored on any exit (Ctrl-C and failures included); between modes KSM is
# stopped with run=2 (unmerge) and run=0, and pages_sharing must then be 0;
# a knob that cannot be set ends the run. Needs root for the KSM knobs. One
# run at a time: a second is refused (flock on /run/lock/memdedup-bench.lock).
# Every guest must read what the image holds (IMAGE.md5, from
# guest/mkimage.sh), also after its hold: otherwise the run fails (exit 1),
# as does a report whose guests' checksums differ.
set -euo pipefail
caller=$PWD	# relative --image and --out are the caller's
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

hold_ksm=240 hold_short=30 modes="none ksm ksm10x memdedup memdedup+ksm"
workload=image scan_rate=100 hold_scan=""
image="" mem=512 out=$root/build/bench report_only=0 census="" cpu_window=150 force=0 modes_given=0
while [ $# -gt 0 ]; do
  case "$1" in
    --hold|--hold-short|--modes|--workload|--scan-rate|--hold-scan|--image|--mem|--out|--census|--cpu-window)
      [ $# -ge 2 ] || { echo "run-bench.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;
  esac
  case "$1" in
    --hold) hold_ksm=$2; shift 2 ;;
    --hold-short) hold_short=$2; shift 2 ;;
    --quick) hold_ksm=50 hold_short=12; shift ;;
    --modes) modes=$2 modes_given=1; shift 2 ;;
    --workload) workload=$2; shift 2 ;;
    --scan-rate) scan_rate=$2; shift 2 ;;
    --hold-scan) hold_scan=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --report-only) report_only=1; shift ;;
    --census) census=$2; shift 2 ;;
    --cpu-window) cpu_window=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run-bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
# An empty list would remove the last run's results, then measure nothing.
case "$modes" in *[![:space:]]*) ;; *) echo "run-bench.sh: --modes names no mode" >&2; exit 2 ;; esac
for m in $modes; do
  case "$m" in none|ksm|ksm10x|memdedup|memdedup+ksm|scan|scan-noread|scan-noread-linear) ;;
    *) echo "run-bench.sh: unknown mode '$m'" >&2; exit 2 ;; esac
done
case "$workload" in image|tmpfs) ;; *) echo "run-bench.sh: --workload is image or tmpfs" >&2; exit 2 ;; esac
case "$scan_rate" in ''|*[!0-9]*|0*|???????*) scan_rate=bad ;; esac
# memdedupd's pages_to_scan: 1 to 100000 (checked here, not after the modes before the scan's).
[ "$scan_rate" != bad ] && [ "$scan_rate" -le 100000 ] \
  || { echo "run-bench.sh: --scan-rate takes a number of pages from 1 to 100000" >&2; exit 2; }
case "$census" in *[!0-9]*) echo "run-bench.sh: --census takes a number of seconds" >&2; exit 2 ;; esac
case "$cpu_window" in ''|*[!0-9]*) echo "run-bench.sh: --cpu-window takes a number of seconds" >&2; exit 2 ;; esac
hold_scan=${hold_scan:-$hold_ksm}
for n in "hold:$hold_ksm" "hold-short:$hold_short" "hold-scan:$hold_scan" "mem:$mem"; do
  case "${n#*:}" in ""|*[!0-9]*|0?*) echo "run-bench.sh: --${n%%:*} takes a number" >&2; exit 2 ;; esac
done
for n in "hold:$hold_ksm" "hold-short:$hold_short" "hold-scan:$hold_scan"; do
  # The final values are the mean of 5 samples (one a second) between
  # the last guest's reads and the first one's hold's end, less a second
  # and the gap between the guests' reads (0.7 s in the docs' runs): a
  # shorter hold would fail only after the whole run (6 s did).
  [ "${n#*:}" -ge 10 ] || { echo "run-bench.sh: --${n%%:*} takes a number of seconds, at least 10" >&2; exit 2; }
done
case "$mem" in ''|0) echo "run-bench.sh: --mem takes a number of MB" >&2; exit 2 ;; esac
# A report is of the modes the run had (run.meta): a list given would be ignored.
if [ "$report_only" = 1 ] && [ "$modes_given" = 1 ]; then
  echo "run-bench.sh: --modes does not go with --report-only (the run's own modes are reported)" >&2; exit 2
fi
case "$out" in /*) ;; *) out=$caller/$out ;; esac
case "$image" in ""|/*) ;; *) image=$caller/$image ;; esac

source scripts/fleet-lib.sh
md=${MEMDEDUP_BIN:-$root/build/memdedup}
mdq=$(printf %q "$md")	# the wrappers are shell words
ksm=/sys/kernel/mm/ksm
# Every check of the input comes before install-deps.sh: bad input changes
# nothing on the host.
if [ "$report_only" = 1 ]; then
  [ -f "$out/run.meta" ] || fleet_die "no $out/run.meta: nothing to report (run the benchmark first)"
else
  [ -w $ksm/run ] || fleet_die "cannot write $ksm/run (kernel KSM missing, or not root)"
  # One bench at a time: a second would save the first's temporary KSM
  # knobs as the host's and put them back at its end (and take the first's
  # merged pages for another process's, below). The lock is held until this
  # shell and its guests are gone (memdedupd closes what it inherits).
  lockdir=/run/lock
  [ -d "$lockdir" ] || lockdir=/tmp
  exec {lock_fd}>>"$lockdir/memdedup-bench.lock" || fleet_die "cannot open $lockdir/memdedup-bench.lock"
  flock -n "$lock_fd" \
    || fleet_die "another bench/run-bench.sh runs (it holds $lockdir/memdedup-bench.lock): wait for it to end"
  # Stopping KSM (run=2) unmerges every process's pages on the host, also
  # those merged before run went to 0 (which keeps them merged).
  # Zero pages KSM placed (use_zero_pages=1) are not in pages_sharing.
  ksm_zero=$(cat $ksm/ksm_zero_pages 2>/dev/null || echo 0)
  if [ "$force" = 0 ] && { [ "$(cat $ksm/pages_sharing)" != 0 ] || [ "$ksm_zero" != 0 ]; }; then
    echo "run-bench.sh: kernel KSM has merged other processes' pages ($(cat $ksm/pages_sharing) pages_sharing," \
         "$ksm_zero ksm_zero_pages): the bench would unmerge them all; stop those or pass --force" >&2
    exit 2
  fi
  for m in $modes; do
    case "$m" in memdedup*|scan*) [ -x "$md" ] || fleet_die "no $md: run 'make all' first" ;; esac
    case "$m" in scan*) [ -x "$root/build/memdedupd" ] || fleet_die "no $root/build/memdedupd: run 'make all' first" ;; esac
  done
  [ -f build/guest/vmlinuz ] && [ -f build/guest/initramfs.cpio.gz ] \
    || fleet_die "no guest kit in build/guest: run 'make guest' first"
  # The tmpfs workload's default image is made below, once its tools are in.
  if [ -n "$image" ] || [ "$workload" = image ]; then
    if [ -z "$image" ]; then
      image=$root/build/guest/workload.img
      [ -f "$image" ] || fleet_die "no $image: run 'make guest' first"
    fi
    [ -f "$image" ] || fleet_die "no image $image"
    [ -s "$image.md5" ] || fleet_die "no $image.md5, what the guests must read (make the image with guest/mkimage.sh)"
  fi
fi

if [ "$report_only" = 1 ]; then
  scripts/install-deps.sh all
  t_all=$SECONDS
  # shellcheck disable=SC1091
  source "$out/run.meta"
else
  scripts/install-deps.sh all {lock_fd}>&-   # a service apt starts keeps no lock
  t_all=$SECONDS
  if [ -z "$image" ]; then  # --workload tmpfs without --image
    # The same files, and a run.sh that copies them into tmpfs: the copies
    # are anonymous guest memory, found only by scanning.
    image=$root/build/guest/workload-tmpfs.img
    if [ ! -f "$image" ] || [ ! -f "$image.md5" ] || [ bench/tmpfs-run.sh -nt "$image" ]; then
      wd=$(mktemp -d)
      trap 'rm -rf "$wd"' EXIT   # before fleet_init's: 96 MB, perhaps in a tmpfs
      guest/mkworkload.sh "$wd" 96 >/dev/null
      cp bench/tmpfs-run.sh "$wd/run.sh"
      guest/mkimage.sh "$wd" "$image" >/dev/null
      rm -rf "$wd"
      trap - EXIT
    fi
    [ -s "$image.md5" ] || fleet_die "no $image.md5, what the guests must read"
  fi

  # --- kernel KSM knobs: save now, restore on every exit ------------------------
  KSM_SAVED_RUN=$(cat $ksm/run)
  KSM_SAVED_SCAN=$(cat $ksm/pages_to_scan)
  KSM_SAVED_SLEEP=$(cat $ksm/sleep_millisecs)
  ksm_write() { echo "$2" > "$ksm/$1" || echo "run-bench.sh: could not write $2 to $ksm/$1" >&2; }
  # Before and between modes a knob not set is a mode not measured: fail.
  # (ksm_restore, on the way out, goes on with the other knobs instead.)
  ksm_must() { echo "$2" > "$ksm/$1" || fleet_die "could not write $2 to $ksm/$1"; }
  ksm_stop() {  # unmerge everything, then stop
    # Stopped with pages still merged (--force): run=0 keeps them merged.
    [ "$(cat $ksm/run)" = 0 ] && [ "$(cat $ksm/pages_sharing)" = 0 ] && return 0
    ksm_must run 2
    ksm_must run 0
    # The write of 2 unmerges before it returns: wait a little all the same.
    local i
    for i in $(seq 50); do
      [ "$(cat $ksm/pages_sharing)" = 0 ] && return 0
      sleep 0.2
    done
    fleet_die "kernel KSM still has $(cat $ksm/pages_sharing) pages_sharing 10 s after run=2 and run=0"
  }
  ksm_restore() {
    local cur
    cur=$(cat $ksm/run)
    if [ "$cur" != "$KSM_SAVED_RUN" ]; then
      [ "$cur" = 1 ] && ksm_write run 2   # unmerge before stopping
      ksm_write run "$KSM_SAVED_RUN"
    fi
    ksm_write pages_to_scan "$KSM_SAVED_SCAN"
    ksm_write sleep_millisecs "$KSM_SAVED_SLEEP"
    echo "run-bench.sh: kernel KSM restored: run=$(cat $ksm/run) pages_to_scan=$(cat $ksm/pages_to_scan) sleep_millisecs=$(cat $ksm/sleep_millisecs)" >&2
  }
  fleet_init
  # The scan modes' memdedupd is the bench's own, in a run directory of its
  # own: the host's (memdedupd.service) and the tests' are left alone.
  mkdir -p "$out"
  MEMDEDUP_RUN_DIR=$(cd "$out" && pwd)/run
  export MEMDEDUP_RUN_DIR
  mkdir -p "$MEMDEDUP_RUN_DIR"
  census_pid=""
  stop_census() {  # the census runs in a process group of its own: all of it goes
    [ -n "$census_pid" ] || return 0
    kill -TERM -- "-$census_pid" 2>/dev/null || true
    wait "$census_pid" 2>/dev/null || true
    census_pid=""
  }
  FLEET_EXIT_HOOKS+=(stop_census ksm_restore fleet_stop_daemon)
  echo "run-bench.sh: saved kernel KSM: run=$KSM_SAVED_RUN pages_to_scan=$KSM_SAVED_SCAN sleep_millisecs=$KSM_SAVED_SLEEP" >&2

  ksm_set() {  # run pages_to_scan sleep_millisecs
    ksm_stop
    ksm_must pages_to_scan "$2"
    ksm_must sleep_millisecs "$3"
    [ "$1" = 1 ] && ksm_must run 1
    return 0
  }

  mkdir -p "$out"
  rm -f "$out/results.json" "$out/memory.png"
  image_mb=$(( $(stat -c %s "$image") / 1048576 ))
  printf 'KSM_SAVED_RUN=%s\nKSM_SAVED_SCAN=%s\nKSM_SAVED_SLEEP=%s\nimage=%q\nimage_mb=%s\nmem=%s\nmodes=%q\n' \
    "$KSM_SAVED_RUN" "$KSM_SAVED_SCAN" "$KSM_SAVED_SLEEP" "$image" "$image_mb" "$mem" "$modes" > "$out/run.meta"
  echo "== bench: 2 guests x ${mem} MB on $(basename "$image") (${image_mb} MiB); modes: $modes; hold ${hold_ksm}s (KSM) / ${hold_short}s"
  for m in $modes; do
    wrapper="" hold=$hold_short
    case "$m" in
      none)         ksm_set 0 100 20 ;;
      ksm)          ksm_set 1 100 20; hold=$hold_ksm ;;
      ksm10x)       ksm_set 1 1000 20; hold=$hold_ksm ;;
      memdedup)     ksm_set 0 100 20; wrapper="$mdq run --kernel-ksm=off --" ;;
      memdedup+ksm) ksm_set 1 100 20; wrapper="$mdq run --kernel-ksm=on --"; hold=$hold_ksm ;;
      scan)         ksm_set 0 100 20; hold=$hold_scan
                    wrapper="$mdq run --kernel-ksm=off --scan --" ;;
      scan-noread)  ksm_set 0 100 20; hold=$hold_scan
                    wrapper="env MEMDEDUP_NO_SHARING=1 $mdq run --kernel-ksm=off --scan --" ;;
      scan-noread-linear) ksm_set 0 100 20; hold=$hold_scan
                    wrapper="env MEMDEDUP_NO_SHARING=1 $mdq run --kernel-ksm=off --scan --hints=off --" ;;
    esac
    fleet_stop_daemon   # each scan mode gets a fresh daemon, with the built-in tunables
    rm -f "$MEMDEDUP_RUN_DIR/memdedupd.state"
    case "$m" in
      scan*)  # the rate is the daemon's, for both agents together, as KSM's is for the host
        "$root/build/memdedupd" || fleet_die "mode $m: memdedupd did not start"
        "$md" set "pages_to_scan=$scan_rate" >/dev/null && "$md" set sleep_millisecs=20 >/dev/null \
          || fleet_die "mode $m: cannot set the scan rate" ;;
    esac
    echo "-- mode $m: KSM run=$(cat $ksm/run) pages_to_scan=$(cat $ksm/pages_to_scan) sleep_millisecs=$(cat $ksm/sleep_millisecs)${wrapper:+; wrapper: $wrapper}; hold ${hold}s"
    cat "$image" > /dev/null          # every mode starts with the image in the host page cache
    printf '%s\n%s\n%s\n%s\n%s\n' "$m" "$wrapper" "$hold" \
      "$(cat $ksm/run) $(cat $ksm/pages_to_scan) $(cat $ksm/sleep_millisecs)" "$(date -u +%FT%TZ)" > "$out/$m.meta"
    mkdir -p "$out/$m"
    # An earlier run's files go first: its samples.tsv or guests.tsv would
    # end the census's wait at once, and its meta would vouch for this
    # run's samples if this one is interrupted (--report-only).
    rm -f "$out/$m/samples.tsv" "$out/$m/guests.tsv" "$out/$m/pids" "$out/$m/meta" \
      "$out/$m/census.json" "$out/$m/census.log" "$out/$m"/smaps.*
    if [ -n "$census" ]; then
      # In a process group of its own (set -m), which stop_census kills whole.
      set -m
      ( d=$out/$m
        until [ "$(awk -F'\t' 'END {print $11}' "$d/samples.tsv" 2>/dev/null)" = 2 ]; do
          [ -f "$d/guests.tsv" ] && exit 0
          sleep 1
        done
        sleep "$census"
        [ -f "$d/guests.tsv" ] && exit 0   # this mode's guests are gone
        # This mode's guests, as fleet_run started them: QEMU's pids (setsid
        # and memdedup run exec), not every QEMU on the host.
        guests=$(cat "$d/pids")
        # shellcheck disable=SC2086
        build/census --image "$image" $guests > "$d/census.json" 2> "$d/census.log"
        daemon=$(cat "$MEMDEDUP_RUN_DIR/memdedupd.pid" 2>/dev/null || true)
        for p in $guests $daemon; do  # where the PSS outside guest RAM is
          cat "/proc/$p/smaps" > "$d/smaps.$p" 2>/dev/null
        done
        for p in $daemon; do  # its PSS is in the fleet's too
          echo "census: memdedupd $p PSS $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup") kB" >> "$d/census.log"
        done ) &
      census_pid=$!
      set +m
    fi
    fleet_run "$out/$m" 2 "$image" --mem "$mem" --hold "$hold" ${wrapper:+--wrapper "$wrapper"} \
      || fleet_die "mode $m: a guest failed (logs in $out/$m)"
    mv "$out/$m.meta" "$out/$m/meta"
    stop_census
    fleet_stop_daemon
    ksm_stop
  done
  ksm_restore
  FLEET_EXIT_HOOKS=()

fi

# --- results.json ---------------------------------------------------------------
# Per mode: final fleet PSS = mean of the last 5 samples with every guest alive
# (and none within 1.5 s of exiting, nor past the first guest's HOLD-END, when
# its recheck begins) taken after the last guest's READS-DONE
# (a mode with fewer such samples fails the report);
# saving = final PSS of mode none - final PSS of the mode; t50/t90 = seconds
# after the last guest's READS-DONE until saving(t) = PSS_none_final - PSS(t)
# first reached 50 % / 90 % of the mode's final saving, looking at samples from
# READS-DONE on only (before it the guests have not filled their memory yet, and
# the PSS is low for that): a saving reached by then shows as the time of the
# first sample after it, under a second; null when the saving is under 16 MB,
# the run-to-run noise of the fleet PSS;
# ksm_t50/ksm_t90: seconds after READS-DONE until kernel KSM pages_sharing
# reached 50 % / 90 % of its final value (0 when it did by then: it only grows).
metrics() {  # DIR REF_PSS_KB -> "key value" lines
  awk -F'\t' -v ref="$2" -v n=2 -v noise=16384 -v gfile="$1/guests.tsv" -v win="$cpu_window" '
    BEGIN {
      while ((getline line < gfile) > 0) {
        split(line, g, "\t"); if (g[3] == "NA") rdna = 1; else if (g[3] + 0 > rd) rd = g[3] + 0
        if (fe == "" || g[4] + 0 < fe) fe = g[4] + 0
        # the first end of a hold (older runs have no such column)
        if (g[8] != "" && g[8] != "NA" && (he == "" || g[8] + 0 < he)) he = g[8] + 0
      }
    }
    # a sample counts when every guest was alive and none was within 1.5 s of
    # exiting (a QEMU tearing down its memory, or an agent already gone), nor
    # past the end of a hold: the recheck after it writes (the tmpfs
    # workload a token into every copy), which undoes some of the saving
    function ok(i) { return alive[i] == n && t[i] + 0 <= fe - 1.5 && (he == "" || t[i] + 0 <= he - 1) }
    NR == 1 { next }
    {
      t[NR] = $1; p[NR] = $2; ks[NR] = $6; md[NR] = $7; alive[NR] = $10; last = NR
      km[NR] = ($13 == "" || $13 == "NA") ? "NA" : $13 + 0   # NA: no general_profit
      if ($8 + 0 > kmax) kmax = $8 + 0; if (NR == 2) kmin = $8 + 0
      if ($9 + 0 > amax) amax = $9 + 0
      # the CPU of the first win seconds (the agents column drops as they exit)
      if ($1 + 0 <= win) { kwin = $8 + 0; if ($9 + 0 > awin) awin = $9 + 0; twin = $1 + 0 }
    }
    function after(i) { return t[i] - rd <= 0 ? "0" : sprintf("%.1f", t[i] - rd) }
    END {
      # the final values: samples after every guest had read (none when one
      # never said READS-DONE); kf & co. from the last of them
      c = 0; s = 0; kf = 0; got = 0
      if (!rdna) for (i = last; i >= 2 && c < 5; i--) if (ok(i) && t[i] + 0 >= rd) {
        s += p[i]; c++
        if (!got) { got = 1; kf = ks[i]; mf = md[i]; kmf = km[i] }
      }
      fin = c ? s / c : -1
      printf "reads_done_s %.2f\nfinal_pss_kb %.0f\nfinal_samples %d\n", rd, fin, c
      printf "ksm_sharing_final %d\nmd_shared_final %d\n", kf, mf
      if (got && kmf != "NA") printf "ksm_meta_kb %d\n", kmf; else print "ksm_meta_kb NA"
      printf "ksmd_cpu_s %.2f\nagent_cpu_s %.2f\n", kmax - kmin, amax
      # a mode that ended before the window has no CPU at it
      if (t[last] + 0 >= win - 2) printf "cpu_window_s %.2f\n", kwin - kmin + awin
      else print "cpu_window_s NA"
      # kernel KSM: time until pages_sharing reached 50 % / 90 % of its final value
      k50 = "NA"; k90 = "NA"
      if (kf > 0) for (i = 2; i <= last; i++) {
        if (!ok(i)) continue
        if (k50 == "NA" && ks[i] >= 0.5 * kf) k50 = after(i)
        if (k90 == "NA" && ks[i] >= 0.9 * kf) k90 = after(i)
      }
      print "ksm_t50_s " k50; print "ksm_t90_s " k90
      if (ref == "" || fin < 0) { print "saving_kb NA\nt50_s NA\nt90_s NA"; exit }
      sav = ref - fin
      printf "saving_kb %.0f\n", sav
      t50 = "NA"; t90 = "NA"
      if (sav >= noise) {                  # below ~16 MB the saving is run-to-run noise
        for (i = 2; i <= last; i++) {
          if (!ok(i) || t[i] + 0 < rd) continue
          if (t50 == "NA" && ref - p[i] >= 0.5 * sav) t50 = after(i)
          if (t90 == "NA" && ref - p[i] >= 0.9 * sav) t90 = after(i)
        }
      }
      print "t50_s " t50; print "t90_s " t90
    }' "$1/samples.tsv"
}
get() { awk -v k="$2" '$1 == k {print $2}' <<< "$1"; }
json_num() { case "$1" in ''|NA) echo null ;; *) echo "$1" ;; esac; }

# The modes reported: those fleet_run finished, with their meta (moved in
# after it) and both guests in guests.tsv. A mode interrupted in an earlier
# run (--report-only) is left out; one with fewer than 5 samples for its
# final values fails the report.
present=""
for m in $modes; do
  d=$out/$m
  [ -f "$d/samples.tsv" ] || continue
  if [ ! -f "$d/meta" ] || [ "$(awk -F'\t' 'NF >= 7 && $7 != ""' "$d/guests.tsv" 2>/dev/null | wc -l)" != 2 ]; then
    echo "run-bench.sh: mode $m left out: it did not finish (no meta, or no complete guests.tsv, in $d)" >&2
    continue
  fi
  n=$(get "$(metrics "$d" "")" final_samples)
  [ "$n" -ge 5 ] || fleet_die "mode $m: $n samples after the last READS-DONE with both guests alive" \
    "(none within 1.5 s of exiting), 5 needed for its final values: hold longer"
  present="$present $m"
done
present=${present# }
[ -n "$present" ] || fleet_die "no finished mode in $out to report"
ref=""
case " $present " in *" none "*) ref=$(get "$(metrics "$out/none" "")" final_pss_kb) ;; esac
# $1 as a JSON string: a path may hold quotes or backslashes.
jstr() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g; s/\t/\\t/g')"; }

{
  printf '{\n  "generated": "%s",\n  "host": {"kernel": %s, "cpus": %s, "qemu": %s},\n' \
    "$(date -u +%FT%TZ)" "$(jstr "$(uname -r)")" "$(nproc)" "$(jstr "$(qemu-system-x86_64 --version | head -1)")"
  printf '  "guests": 2, "guest_mem_mb": %s, "image": %s, "image_mb": %s,\n' "$mem" "$(jstr "$(basename "$image")")" "$image_mb"
  printf '  "saved_ksm": {"run": %s, "pages_to_scan": %s, "sleep_millisecs": %s},\n' \
    "$KSM_SAVED_RUN" "$KSM_SAVED_SCAN" "$KSM_SAVED_SLEEP"
  printf '  "definitions": {"final_pss_mb": "mean fleet PSS over the last 5 samples with both guests alive, after the last READS-DONE and none within 1.5 s of exiting", "ksm_pages_sharing_final/md_pages_shared_final": "at the last of those samples (md: sum over both agents)", "saving_mb": "final_pss_mb of none minus that of the mode", "t50_s/t90_s": "seconds after the last READS-DONE until the PSS saving first reached 50 %%/90 %% of the final saving, from the samples after READS-DONE only (a saving reached by then: the first of them, under a second; null below 16 MB: noise)", "ksm_t50_s/ksm_t90_s": "seconds after the last READS-DONE until kernel KSM pages_sharing reached 50 %%/90 %% of its final value (0 when reached by then)", "guest_workload_s": "host seconds from the fleet start to each guest READS-DONE", "dedup_cpu_s": "ksmd CPU during the mode + the CPU of the memdedup threads in QEMU (md-agent, md-scan, md-uffd) and of memdedupd (not the sharing work done inside QEMU I/O threads)", "dedup_cpu_in_window_s": "the same over the first cpu_window_s seconds from the fleet start, the same for every mode: the CPU to compare (ksmd keeps scanning once converged, and modes hold for different times)", "ksm_meta_mb": "kernel KSM metadata at the final sample: (pages_sharing + ksm_zero_pages) x 4 KiB - general_profit, i.e. its rmap items, kept in kernel slab and so in no PSS (memdedup keeps its metadata in its processes: in the PSS); null where the kernel has no general_profit (before Linux 6.4), as is ksm_meta_kb in the samples"},\n'
  printf '  "modes": [\n'
  first=1
  for m in $present; do
    d=$out/$m
    mt=$(metrics "$d" "$( [ "$m" = none ] || echo "$ref")")
    { read -r _; read -r wrapper; read -r hold; read -r kr ks kz; read -r started; } < "$d/meta"
    fin=$(get "$mt" final_pss_kb) sav=$(get "$mt" saving_kb)
    kc=$(get "$mt" ksmd_cpu_s) ac=$(get "$mt" agent_cpu_s)
    [ $first = 1 ] || printf ',\n'
    first=0
    printf '    {"mode": "%s", "started": %s, "wrapper": %s, "hold_s": %s,\n' "$m" "$(jstr "$started")" "$(jstr "$wrapper")" "$hold"
    printf '     "ksm": {"run": %s, "pages_to_scan": %s, "sleep_millisecs": %s},\n' "$kr" "$ks" "$kz"
    printf '     "checksums": [%s], "checksums_match": %s,\n' \
      "$(cut -f7 "$d/guests.tsv" | sed 's/.*/"&"/' | paste -sd, | sed 's/,/, /g')" \
      "$( [ "$(cut -f7 "$d/guests.tsv" | sort -u | wc -l)" = 1 ] && echo true || echo false)"
    printf '     "guest_workload_s": [%s], "guest_read_s_in_guest": [%s], "reads_done_s": %s,\n' \
      "$(cut -f3 "$d/guests.tsv" | sed 's/^NA$/null/' | paste -sd, | sed 's/,/, /g')" \
      "$(cut -f6 "$d/guests.tsv" | sed 's/^NA$/null/' | paste -sd, | sed 's/,/, /g')" \
      "$(json_num "$(get "$mt" reads_done_s)")"
    printf '     "final_pss_mb": %s, "saving_mb": %s, "t50_s": %s, "t90_s": %s,\n' \
      "$(awk -v k="$fin" 'BEGIN{printf "%.1f", k/1024}')" \
      "$( [ "$sav" = NA ] && echo null || awk -v k="$sav" 'BEGIN{printf "%.1f", k/1024}')" \
      "$(json_num "$(get "$mt" t50_s)")" "$(json_num "$(get "$mt" t90_s)")"
    printf '     "ksm_t50_s": %s, "ksm_t90_s": %s,\n' \
      "$(json_num "$(get "$mt" ksm_t50_s)")" "$(json_num "$(get "$mt" ksm_t90_s)")"
    printf '     "ksm_pages_sharing_final": %s, "md_pages_shared_final": %s, "ksm_meta_mb": %s,\n' \
      "$(get "$mt" ksm_sharing_final)" "$(get "$mt" md_shared_final)" \
      "$(awk -v k="$(get "$mt" ksm_meta_kb)" 'BEGIN{ if (k == "NA") print "null"; else printf "%.1f", k/1024}')"
    printf '     "ksmd_cpu_s": %s, "agent_cpu_s": %s, "dedup_cpu_s": %s,\n' "$kc" "$ac" \
      "$(awk -v a="$kc" -v b="$ac" 'BEGIN{printf "%.2f", a + b}')"
    printf '     "cpu_window_s": %s, "dedup_cpu_in_window_s": %s,\n' "$cpu_window" "$(json_num "$(get "$mt" cpu_window_s)")"
    printf '     "samples": {"columns": [%s],\n                 "rows": [' \
      "$(head -1 "$d/samples.tsv" | sed 's/^#//' | tr '\t' '\n' | sed 's/.*/"&"/' | paste -sd, | sed 's/,/, /g')"
    # NA (a counter the kernel lacks) is JSON's null
    awk -F'\t' 'NR > 1 { printf "%s[", (NR > 2 ? ",\n                          " : ""); for (i = 1; i <= NF; i++) printf "%s%s", (i > 1 ? ", " : ""), ($i == "NA" ? "null" : $i); printf "]" }' "$d/samples.tsv"
    printf ']}}'
  done
  printf '\n  ]\n}\n'
} > "$out/results.json.tmp"
if command -v jq >/dev/null; then   # checked before it replaces the last good one
  jq empty "$out/results.json.tmp" || fleet_die "results.json.tmp is not valid JSON"
fi
mv "$out/results.json.tmp" "$out/results.json"

# --- summary table and plot -----------------------------------------------------
# CPU per GB saved over the window, and against kernel KSM's (ksm, else ksm10x);
# a GB of 1024 MB, as the MB are MiB (until 2026-12-05 a GB here was 1000 MB)
per_gb() { awk -v c="$1" -v k="$2" 'BEGIN{ if (c == "NA" || k == "NA" || k <= 0) print "NA"; else printf "%.2f", c / (k / 1024 / 1024)}'; }
ksm_per_gb=NA
for m in ksm10x ksm; do
  case " $present " in *" $m "*) ;; *) continue ;; esac
  mt=$(metrics "$out/$m" "$ref")
  ksm_per_gb=$(per_gb "$(get "$mt" cpu_window_s)" "$(get "$mt" saving_kb)")
done
{
printf '\n%-13s %10s %10s %8s %8s %11s %9s %9s %11s %s\n' mode "PSS MB" "saved MB" "t50 s" "t90 s" "dedup CPU" "CPU@${cpu_window}s" "s/GB@${cpu_window}" "reads s" checksums
for m in $present; do
  mt=$(metrics "$out/$m" "$( [ "$m" = none ] || echo "$ref")")
  printf '%-13s %10s %10s %8s %8s %11s %9s %9s %11s %s\n' "$m" \
    "$(awk -v k="$(get "$mt" final_pss_kb)" 'BEGIN{printf "%.1f", k/1024}')" \
    "$(awk -v k="$(get "$mt" saving_kb)" 'BEGIN{ if (k == "NA") print "NA"; else printf "%.1f", k/1024}')" \
    "$(get "$mt" t50_s)" "$(get "$mt" t90_s)" \
    "$(awk -v a="$(get "$mt" ksmd_cpu_s)" -v b="$(get "$mt" agent_cpu_s)" 'BEGIN{printf "%.2f", a + b}')" \
    "$(get "$mt" cpu_window_s)" "$(per_gb "$(get "$mt" cpu_window_s)" "$(get "$mt" saving_kb)")" \
    "$(cut -f3 "$out/$m/guests.tsv" | paste -sd/)" \
    "$(cut -f7 "$out/$m/guests.tsv" | sort -u | sed 's/^\(........\).*/\1/' | paste -sd,)"
done
if [ "$ksm_per_gb" != NA ]; then
  for m in $present; do
    case "$m" in none|ksm|ksm10x) continue ;; esac
    mt=$(metrics "$out/$m" "$ref")
    g=$(per_gb "$(get "$mt" cpu_window_s)" "$(get "$mt" saving_kb)")
    [ "$g" = NA ] || awk -v m="$m" -v g="$g" -v k="$ksm_per_gb" -v w="$cpu_window" \
      'BEGIN{printf "%s: CPU per GB saved in the first %d s %.2fx kernel KSM'"'"'s\n", m, w, g / k}'
  done
fi
} | tee "$out/summary.txt"

plot=""
if command -v gnuplot >/dev/null; then
  plot=", $out/memory.png"
  gnuplot -e "outdir='$out'; modes='$present'" bench/plot.gp \
    || echo "run-bench.sh: gnuplot failed; samples are in $out/*/samples.tsv" >&2
fi
echo "Results: $out/results.json$plot; took $((SECONDS - t_all)) s"

# Every guest of every mode read the same data. A run has checked each
# against the image's md5 as it went (fleet_run); this catches the guests of
# an earlier run too (--report-only), once the results are written.
sums=$(for m in $present; do cut -f7 "$out/$m/guests.tsv"; done | sort -u)
if [ "$(wc -l <<< "$sums")" != 1 ]; then
  for m in $present; do echo "  $m: $(cut -f7 "$out/$m/guests.tsv" | paste -sd' ')" >&2; done
  fleet_die "the guests' checksums differ (above)"
fi
