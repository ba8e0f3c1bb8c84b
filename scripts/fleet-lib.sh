# shellcheck shell=bash
# fleet-lib.sh: run a fleet of memdedup test guests and sample their memory.
# Sourced by scripts/demo.sh, tests/guest/test_two_guests.sh, bench/run-bench.sh.
#
#   source scripts/fleet-lib.sh
#   fleet_init                     # cleanup trap (kills every QEMU started here)
#   fleet_run DIR N IMAGE [--wrapper "CMD"] [--mem MB] [--hold S] [--timeout S] [--qemu-opt "WORDS"]
#       (CMD as shell words: a path with spaces quoted, printf %q)
#       starts N guests on IMAGE (each under the wrapper, e.g.
#       "build/memdedup run --"), samples memory every second into
#       DIR/samples.tsv, waits for all guests and writes DIR/guests.tsv
#       (and their pids, one a line, to DIR/pids as they start).
#       Returns non-zero if a guest failed or timed out, or did not read
#       what the image holds: each guest's DONE must be IMAGE.md5 (written
#       by guest/mkimage.sh; a run.sh must print the md5 of the image's
#       files, as bench/tmpfs-run.sh does) and, with a hold, so must its
#       RECHECK after the hold. No IMAGE.md5 is an error.
#   fleet_checksums DIR            # the guests' DONE results, one a line
#   fleet_guest_said WORD LOG      # what a guest's log says after
#                                  # "MEMDEDUP-GUEST: WORD" (DONE, RECHECK)
#   fleet_hold_window DIR          # "T0 T1": samples where every guest had
#                                  # finished reading and none had exited
#                                  # nor ended its hold
#   fleet_window_avg DIR COL [T0 T1]  # mean of a samples.tsv column in a window
#   fleet_last DIR COL             # last value of a column
#
# samples.tsv columns (one line a second, '#' header):
#   1 t            seconds since the fleet started
#   2 pss_kb       sum of Pss over the QEMU processes (/proc/PID/smaps_rollup)
#   3 pss_anon_kb  sum of Pss_Anon
#   4 pss_file_kb  sum of Pss_File + Pss_Shmem
#   5 anon_kb      host AnonPages (/proc/meminfo)
#   6 ksm_sharing  /sys/kernel/mm/ksm/pages_sharing
#   7 md_shared    memdedup pages_shared plus the scanner's pages_sharing of the fleet's agents
#                  (status --json; 0 without jq)
#   8 ksmd_cpu_s   ksmd CPU seconds (utime+stime) since the fleet started
#   9 agent_cpu_s  CPU seconds of memdedup's own threads in the fleet (md-agent,
#                  md-scan, md-uffd) and of memdedupd
#  10 alive        guests still running
#  11 reads_done   guests that have printed READS-DONE
#  12 thp_kb       sum of AnonHugePages (transparent huge pages in guest RAM)
#  13 ksm_meta_kb  kernel KSM's metadata (its rmap items, in kernel slab, so in
#                  no process's PSS): (pages_sharing + ksm_zero_pages) pages
#                  less general_profit; NA where the kernel has no general_profit
#                  (before Linux 6.4): unknown, not zero
#  14 md_read      pages the fleet's scanners read (pages_scanned + pages_hinted)
#  15 md_merged    guest pages they merged (onto pool or image pages)
#  16 md_zero      zero pages they dropped, not written since (14-16: 0
#                  without jq or agents)
# guests.tsv: idx pid reads_done_t exit_t rc guest_read_s result hold_end_t
# (hold_end_t: when the guest's hold ended and its recheck began, NA if none)
# status.json: the last `memdedup status --json` answer with agents in it;
# agents.json: each fleet agent's last row in those answers (a JSON array),
# a guest that exited first included (jq needed; [] without).
#
# Every QEMU runs in its own session (setsid, which execs: the pid stays
# QEMU's, and `memdedup run` execs too), and is killed with its group on exit,
# failure or signal. Callers add their own cleanup to FLEET_EXIT_HOOKS.

# Numbers are written and read with a decimal point (awk's printf and input,
# bash's `times`): a locale with a decimal comma (de_DE.UTF-8) made the
# samples' CPU columns "0,52", truncated "12.30" to 12, and results.json invalid.
export LC_ALL=C

FLEET_ROOT=${FLEET_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
FLEET_KERNEL=${FLEET_KERNEL:-$FLEET_ROOT/build/guest/vmlinuz}
FLEET_INITRD=${FLEET_INITRD:-$FLEET_ROOT/build/guest/initramfs.cpio.gz}
FLEET_MEMDEDUP=${MEMDEDUP_BIN:-$FLEET_ROOT/build/memdedup}
FLEET_PIDS=()
FLEET_SAMPLER_PID=""
FLEET_EXIT_HOOKS=()
FLEET_CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

fleet_log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
fleet_die() { echo "fleet: error: $*" >&2; exit 1; }

fleet_kill_guests() {
  local p any=0
  for p in "${FLEET_PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
      any=1
    fi
  done
  if [ $any = 1 ]; then
    local i
    for i in $(seq 1 25); do
      any=0
      for p in "${FLEET_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && any=1; done
      [ $any = 0 ] && break
      sleep 0.2
    done
    for p in "${FLEET_PIDS[@]}"; do
      kill -0 "$p" 2>/dev/null && { kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; }
    done
  fi
  for p in "${FLEET_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  FLEET_PIDS=()
}

# Stops every process this shell started, however deep (process
# substitutions, run-guest.sh, the QEMUs they put in sessions of their own):
# TERM first, which run-guest.sh turns into killing its QEMU's group, then
# KILL for what is left after 5 s. For scripts that start guests without
# fleet_run.
fleet_kill_descendants() {
  local kids=() c
  for c in $(cat /proc/$$/task/*/children 2>/dev/null); do
    [ "$c" = "$BASHPID" ] || kids+=("$c")
  done
  [ ${#kids[@]} -gt 0 ] || return 0
  fleet_kill_tree "${kids[@]}"
}

# fleet_kill_tree PID...: the same for these processes and all they started
# (the calling subshell, $BASHPID, left out): a process substitution that
# fails stops its own guests with it, which would outlive it otherwise.
fleet_kill_tree() {
  local todo=("$@") all=() p c
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]} todo=("${todo[@]:1}")
    all+=("$p")
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do
      [ "$c" = "$BASHPID" ] || todo+=("$c")
    done
  done
  kill -TERM "${all[@]}" 2>/dev/null || true
  for _ in $(seq 25); do
    kill -0 "${all[@]}" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL "${all[@]}" 2>/dev/null || true
}

# Stops the memdedupd of MEMDEDUP_RUN_DIR, if one runs there: TERM, then
# KILL if it still runs 5 s later (it is not our child: its end is seen by
# kill -0 only).
fleet_stop_daemon() {
  local p
  p=$(cat "$MEMDEDUP_RUN_DIR/memdedupd.pid" 2>/dev/null) || return 0
  fleet_daemon_ours "$p" || return 0
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  fleet_daemon_ours "$p" || return 0   # gone, its pid taken by another process
  fleet_log "memdedupd (pid $p) still runs 5 s after SIGTERM: SIGKILL"
  kill -KILL "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  fleet_log "warning: memdedupd (pid $p) still runs after SIGKILL"
}

fleet_stop_sampler() {
  if [ -n "$FLEET_SAMPLER_PID" ]; then
    local p=$FLEET_SAMPLER_PID st _ i
    kill "$p" 2>/dev/null || true
    # Its TERM trap ends it after the sample being written; but bash 5.2
    # can lose a trap run while it parses a command substitution ("trap:
    # line 2: unexpected EOF", seen once in CI: the sampler sampled on
    # and this wait hung). KILL after 5 s (a zombie has exited).
    for i in $(seq 50); do
      read -r _ _ st _ 2>/dev/null < "/proc/$p/stat" || break
      [ "$st" != Z ] || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    FLEET_SAMPLER_PID=""
  fi
}

fleet_cleanup() {
  local rc=$?
  # Signals ignored, not defaulted: a second Ctrl-C (or a TERM from a
  # timeout) while guests are killed must not cut the hooks that put the
  # host's KSM knobs back.
  trap - EXIT
  trap '' INT TERM HUP
  fleet_stop_sampler
  fleet_kill_guests
  local h
  for h in "${FLEET_EXIT_HOOKS[@]}"; do eval "$h" || true; done
  exit $rc
}

fleet_init() {
  trap fleet_cleanup EXIT
  trap 'echo "fleet: interrupted" >&2; exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  command -v qemu-system-x86_64 >/dev/null || fleet_die "qemu-system-x86_64 missing (scripts/install-deps.sh guest)"
  [ -f "$FLEET_KERNEL" ] && [ -f "$FLEET_INITRD" ] || fleet_die "no guest kernel/initramfs in build/guest (run: make guest)"
  FLEET_KSMD_PID=""
  local d
  for d in /proc/[0-9]*; do
    if [ "$(cat "$d/comm" 2>/dev/null)" = ksmd ]; then FLEET_KSMD_PID=${d#/proc/}; break; fi
  done
  FLEET_HAVE_JQ=0
  if command -v jq >/dev/null; then FLEET_HAVE_JQ=1; fi
}

# Makes build/guest/workload-<MB>m.img (or returns the default image for "").
fleet_image() {
  local mb=${1:-} img
  if [ -z "$mb" ]; then img=$FLEET_ROOT/build/guest/workload.img
  else img=$FLEET_ROOT/build/guest/workload-${mb}m.img; fi
  if [ ! -f "$img" ] || [ ! -f "$img.md5" ]; then
    if [ -z "$mb" ]; then mb=160; fi
    rm -rf "$img.d"
    # Called as img=$(fleet_image ...), where set -e does not stop a failure.
    "$FLEET_ROOT/guest/mkworkload.sh" "$img.d" "$mb" 1 >&2 || fleet_die "mkworkload.sh $mb MB failed"
    "$FLEET_ROOT/guest/mkimage.sh" "$img.d" "$img" >&2 || { rm -f "$img" "$img.md5"; fleet_die "mkimage.sh $img failed"; }
    rm -rf "$img.d"
  fi
  echo "$img"
}

fleet_now() {  # seconds since FLEET_T0, 2 decimals
  local n=${EPOCHREALTIME/[.,]/}
  local d=$(( (n - FLEET_T0_US) / 10000 ))
  printf '%d.%02d' $((d / 100)) $((d % 100))
}

# CPU seconds (utime+stime) from a /proc/.../stat file.
fleet_stat_cpu_ticks() {
  local s
  s=$(cat "$1" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }                       # fields from 3 on
  # shellcheck disable=SC2086
  set -- $s
  echo $(( ${12} + ${13} ))         # fields 14 and 15
}

fleet_daemon_ours() {  # PID: is this memdedupd's MEMDEDUP_RUN_DIR ours?
  local env dir=""
  env=$( { tr '\0' '\n' < "/proc/$1/environ"; } 2>/dev/null) || return 1
  dir=$(sed -n 's/^MEMDEDUP_RUN_DIR=//p' <<< "$env")
  [ "$dir" = "${MEMDEDUP_RUN_DIR:-}" ]
}

fleet_sample_once() {  # [N] prints one samples.tsv line (without t) for FLEET_PIDS
  local p pss=0 anon=0 file=0 thp=0 alive=0 k v rest agent_ticks=0 t comm
  for p in "${FLEET_PIDS[@]}"; do
    [ -r "/proc/$p/smaps_rollup" ] || continue
    alive=$((alive + 1))
    while read -r k v rest; do
      case "$k" in
        Pss:) pss=$((pss + v)) ;;
        Pss_Anon:) anon=$((anon + v)) ;;
        Pss_File:|Pss_Shmem:) file=$((file + v)) ;;
        AnonHugePages:) thp=$((thp + v)) ;;
      esac
    done 2>/dev/null < "/proc/$p/smaps_rollup" || true
    for t in /proc/"$p"/task/*; do
      comm=$(cat "$t/comm" 2>/dev/null) || continue
      case "$comm" in
        md-agent|md-scan|md-uffd) agent_ticks=$((agent_ticks + $(fleet_stat_cpu_ticks "$t/stat"))) ;;
      esac
    done
  done
  # memdedupd is part of what memdedup runs: its memory (its view of the
  # pools) and its CPU count with the fleet. Only the daemon of this run
  # directory: another one (a test suite's, say) is not the fleet's.
  for p in $(pgrep -x memdedupd 2>/dev/null); do
    fleet_daemon_ours "$p" || continue
    while read -r k v rest; do
      case "$k" in
        Pss:) pss=$((pss + v)) ;;
        Pss_Anon:) anon=$((anon + v)) ;;
        Pss_File:|Pss_Shmem:) file=$((file + v)) ;;
      esac
    done 2>/dev/null < "/proc/$p/smaps_rollup" || true
    agent_ticks=$((agent_ticks + $(fleet_stat_cpu_ticks "/proc/$p/stat")))
  done
  local host_anon ksm md=0 ksmd_ticks=0 md_read=0 md_merged=0 md_zero=0
  host_anon=$(awk '/^AnonPages:/{print $2}' /proc/meminfo)
  ksm=$(cat /sys/kernel/mm/ksm/pages_sharing 2>/dev/null || echo 0)
  local ksm_meta=NA kz kp
  if kp=$(cat /sys/kernel/mm/ksm/general_profit 2>/dev/null); then
    kz=$(cat /sys/kernel/mm/ksm/ksm_zero_pages 2>/dev/null || echo 0)
    ksm_meta=$(( ((ksm + kz) * 4096 - kp) / 1024 ))
  fi
  if [ "$FLEET_HAVE_JQ" = 1 ] && [ -x "$FLEET_MEMDEDUP" ] && [ $alive -gt 0 ]; then
    # The last answer with agents in it is kept (DIR/status.json): the
    # counters a run ended with. memdedupd is asked every 30th sample
    # only: each answer cost it 0.15 ms (tcpu121 in docs/benchmarks.md),
    # CPU the run would count as memdedup's; the agents' rows are files.
    local only=--agents
    [ $(( ${1:-0} % 30 )) -eq 0 ] && only=
    # Each agent's last row is kept too (DIR/agents.json): the last answer
    # has none of a guest that exited before the others.
    "$FLEET_MEMDEDUP" status --json $only > "$FLEET_DIR/status.json.tmp" 2>/dev/null \
      && jq -e '(.agents | length) > 0' "$FLEET_DIR/status.json.tmp" >/dev/null 2>&1 \
      && mv -f "$FLEET_DIR/status.json.tmp" "$FLEET_DIR/status.json" \
      && jq --arg pids "${FLEET_PIDS[*]}" --slurpfile kept "$FLEET_DIR/agents.json" '
           ($pids | split(" ") | map(tonumber)) as $p
           | reduce ($kept[0][], (.agents[] | select(.pid as $x | $p | index($x)))) as $r
               ({}; .[$r.pid | tostring] = $r) | [.[]]' "$FLEET_DIR/status.json" > "$FLEET_DIR/agents.json.tmp" 2>/dev/null \
      && mv -f "$FLEET_DIR/agents.json.tmp" "$FLEET_DIR/agents.json"
    read -r md md_read md_merged md_zero < <(jq -r --arg pids "${FLEET_PIDS[*]}" '
          ($pids | split(" ") | map(tonumber)) as $p
          | [(.agents // [])[] | select(.pid as $x | $p | index($x))] as $a
          | [([$a[] | (.pages_shared // 0) + (.scanner.pages_sharing // 0)] | add // 0),
             ([$a[] | (.scanner.pages_scanned // 0) + (.scanner.pages_hinted // 0)] | add // 0),
             ([$a[] | (.scanner.merged // 0) + (.scanner.merged_image // 0)] | add // 0),
             ([$a[] | .scanner.zero_pages // 0] | add // 0)] | map(tostring) | join(" ")' \
          "$FLEET_DIR/status.json" 2>/dev/null) || true
    local v
    for v in md md_read md_merged md_zero; do
      case "${!v}" in ''|*[!0-9]*) printf -v "$v" 0 ;; esac
    done
  fi
  [ -n "$FLEET_KSMD_PID" ] && ksmd_ticks=$(( $(fleet_stat_cpu_ticks "/proc/$FLEET_KSMD_PID/stat") - FLEET_KSMD_T0 ))
  local reads=0 f
  for f in "${FLEET_LOGS[@]}"; do grep -q '^MEMDEDUP-GUEST: READS-DONE' "$f" 2>/dev/null && reads=$((reads + 1)); done
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pss" "$anon" "$file" "$host_anon" "$ksm" "$md" \
    "$(awk -v t="$ksmd_ticks" -v h="$FLEET_CLK_TCK" 'BEGIN{printf "%.2f", t/h}')" \
    "$(awk -v t="$agent_ticks" -v h="$FLEET_CLK_TCK" 'BEGIN{printf "%.2f", t/h}')" "$alive" "$reads" "$thp" "$ksm_meta" \
    "$md_read" "$md_merged" "$md_zero"
}

fleet_sampler() {  # runs in the background until killed
  local out=$1 next now
  set +e
  trap - EXIT INT TERM HUP
  trap 'exit 0' TERM
  printf '#t\tpss_kb\tpss_anon_kb\tpss_file_kb\tanon_kb\tksm_sharing\tmd_shared\tksmd_cpu_s\tagent_cpu_s\talive\treads_done\tthp_kb\tksm_meta_kb\tmd_read\tmd_merged\tmd_zero\n' > "$out"
  next=0
  while :; do
    printf '%s\t%s\n' "$(fleet_now)" "$(fleet_sample_once "$next")" >> "$out"
    next=$((next + 1))
    now=${EPOCHREALTIME/[.,]/}
    local wait_us=$(( FLEET_T0_US + next * 1000000 - now ))
    if [ $wait_us -gt 0 ]; then
      sleep "$(printf '%d.%06d' $((wait_us / 1000000)) $((wait_us % 1000000)))"
    fi
  done
}

# fleet_run DIR N IMAGE [--wrapper "CMD"] [--mem MB] [--hold S] [--timeout S] [--stagger S]
#   [--qemu-opt "WORDS"]   (more QEMU options, shell words)
fleet_run() {
  local dir=$1 n=$2 image=$3
  shift 3
  local wrapper="" mem=512 hold=0 timeout="" stagger=0 qopt=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --wrapper) wrapper=$2; shift 2 ;;
      --qemu-opt) qopt=$2; shift 2 ;;
      --mem) mem=$2; shift 2 ;;
      --hold) hold=$2; shift 2 ;;
      --timeout) timeout=$2; shift 2 ;;
      --stagger) stagger=$2; shift 2 ;;
      *) fleet_die "fleet_run: unknown option $1" ;;
    esac
  done
  [ -f "$image" ] || fleet_die "no image $image"
  case "$hold" in ''|*[!0-9]*) fleet_die "fleet_run: --hold takes a number of seconds" ;; esac
  # What every guest must read: the image's files as they are on the host.
  local want
  want=$(cat "$image.md5" 2>/dev/null || true)
  [ -n "$want" ] || fleet_die "no $image.md5, the checksum the guests must print (make the image with guest/mkimage.sh)"
  timeout=${timeout:-$((240 + hold))}
  case "$timeout" in *[!0-9]*) fleet_die "fleet_run: --timeout takes a number of seconds" ;; esac
  mkdir -p "$dir"
  rm -f "$dir"/guest*.log "$dir"/guest*.log.qemu "$dir/samples.tsv" "$dir/guests.tsv" "$dir/pids"
  FLEET_PIDS=() FLEET_LOGS=() FLEET_DIR=$dir
  rm -f "$dir/status.json" "$dir/status.json.tmp" "$dir/agents.json.tmp"
  echo '[]' > "$dir/agents.json"
  FLEET_T0_US=${EPOCHREALTIME/[.,]/}
  FLEET_KSMD_T0=0
  [ -n "$FLEET_KSMD_PID" ] && FLEET_KSMD_T0=$(fleet_stat_cpu_ticks "/proc/$FLEET_KSMD_PID/stat")
  # The wrapper is shell words (a path in it quoted, printf %q); a comma
  # in -drive's file name is doubled, as QEMU reads it.
  local -a wrap=() extra=()
  eval "wrap=($wrapper)" || fleet_die "fleet_run: --wrapper is not a list of shell words: $wrapper"
  eval "extra=($qopt)" || fleet_die "fleet_run: --qemu-opt is not a list of shell words: $qopt"
  local i log p
  for i in $(seq 1 "$n"); do
    log=$dir/guest$i.log
    : > "$log"
    FLEET_LOGS+=("$log")
    setsid "${wrap[@]}" qemu-system-x86_64 -machine pc,accel=tcg -m "$mem" -nographic -no-reboot \
      -monitor none -serial "file:$log" \
      -kernel "$FLEET_KERNEL" -initrd "$FLEET_INITRD" \
      -append "console=ttyS0 quiet panic=-1 hold=$hold" \
      -drive "file=${image//,/,,},if=virtio,format=raw,readonly=on" "${extra[@]}" \
      < /dev/null > "$log.qemu" 2>&1 &
    FLEET_PIDS+=($!)
    echo "$!" >> "$dir/pids"
    if [ "$stagger" != 0 ] && [ "$i" -lt "$n" ]; then sleep "$stagger"; fi
  done
  fleet_log "started $n guest(s) on $(basename "$image"), pids ${FLEET_PIDS[*]}${wrapper:+, wrapper: $wrapper}, hold ${hold}s"
  fleet_sampler "$dir/samples.tsv" &
  FLEET_SAMPLER_PID=$!
  sleep 1
  for p in "${FLEET_PIDS[@]}"; do   # the sampler measures these pids: they must be QEMU
    local comm
    comm=$(cat "/proc/$p/comm" 2>/dev/null || echo exited)
    case "$comm" in qemu-system*|exited) ;;
      *) fleet_log "warning: pid $p is '$comm', not QEMU: a wrapper that forks instead of exec'ing is measured, not QEMU" ;;
    esac
  done

  local -a rd he ex rc pids
  pids=("${FLEET_PIDS[@]}")
  local left=$n now_s p
  for i in $(seq 0 $((n - 1))); do rd[i]=""; he[i]=""; ex[i]=""; rc[i]=""; done
  while [ "$left" -gt 0 ]; do
    for i in $(seq 0 $((n - 1))); do
      [ -n "${ex[i]}" ] && continue
      p=${pids[i]}
      if [ -z "${rd[i]}" ] && grep -q '^MEMDEDUP-GUEST: READS-DONE' "${FLEET_LOGS[i]}" 2>/dev/null; then
        rd[i]=$(fleet_now)
      fi
      if [ -z "${he[i]}" ] && grep -q '^MEMDEDUP-GUEST: HOLD-END' "${FLEET_LOGS[i]}" 2>/dev/null; then
        he[i]=$(fleet_now)
      fi
      if ! kill -0 "$p" 2>/dev/null; then
        ex[i]=$(fleet_now)
        [ -z "${rd[i]}" ] && grep -q '^MEMDEDUP-GUEST: READS-DONE' "${FLEET_LOGS[i]}" && rd[i]=${ex[i]}
        [ -z "${he[i]}" ] && grep -q '^MEMDEDUP-GUEST: HOLD-END' "${FLEET_LOGS[i]}" && he[i]=${ex[i]}
        local r=0
        wait "$p" || r=$?
        rc[i]=$r
        left=$((left - 1))
      fi
    done
    now_s=$(fleet_now)
    if [ "${now_s%.*}" -ge "$timeout" ]; then
      fleet_log "timeout after ${timeout}s: killing the fleet"
      fleet_stop_sampler
      fleet_kill_guests
      for i in $(seq 0 $((n - 1))); do [ -z "${ex[i]}" ] && { ex[i]=$now_s; rc[i]=124; }; done
      break
    fi
    sleep 0.25
  done
  sleep 0.5
  fleet_stop_sampler
  local ok=0 res rs again
  : > "$dir/guests.tsv"
  for i in $(seq 0 $((n - 1))); do
    log=${FLEET_LOGS[i]}
    res=$(fleet_guest_said DONE "$log")
    again=$(fleet_guest_said RECHECK "$log")
    rs=$(grep -m1 '^MEMDEDUP-GUEST: TIME ' "$log" | tr -d '\r' | sed -n 's/.*read_s=\([0-9.]*\).*/\1/p' || true)
    if grep -q '^MEMDEDUP-GUEST: FAIL' "$log"; then
      fleet_log "guest $((i + 1)): $(grep -m1 '^MEMDEDUP-GUEST: FAIL' "$log" | tr -d '\r')"
      ok=1; res=FAIL   # also after DONE: the data changed during the hold
    elif [ -z "$res" ]; then
      fleet_log "guest $((i + 1)) (pid ${pids[i]}) ended without DONE (exit ${rc[i]}); $log.qemu: $(tail -n 2 "$log.qemu" | tr '\n' ' ')"
      ok=1; res=NONE
    elif [ "$res" != "$want" ]; then
      fleet_log "guest $((i + 1)) read $res; the image holds $want ($image.md5)"
      ok=1
    elif [ "$hold" -gt 0 ] && [ -z "$again" ]; then
      fleet_log "guest $((i + 1)) (pid ${pids[i]}) ended without RECHECK after its ${hold}s hold (exit ${rc[i]})"
      ok=1
    elif [ "$hold" -gt 0 ] && [ "$again" != "$want" ]; then
      fleet_log "guest $((i + 1)) read $again after its hold; the image holds $want ($image.md5)"
      ok=1
    elif [ "${rc[i]}" != 0 ]; then
      fleet_log "guest $((i + 1)): QEMU exit status ${rc[i]}"
      ok=1
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $((i + 1)) "${pids[i]}" "${rd[i]:-NA}" "${ex[i]}" "${rc[i]}" \
      "${rs:-NA}" "$res" "${he[i]:-NA}" >> "$dir/guests.tsv"
  done
  FLEET_PIDS=()
  return $ok
}

fleet_checksums() { cut -f7 "$1/guests.tsv"; }

# The word after "MEMDEDUP-GUEST: WORD" in a guest's log (its first such
# line), or nothing.
fleet_guest_said() { grep -m1 "^MEMDEDUP-GUEST: $1 " "$2" 2>/dev/null | tr -d '\r' | awk '{print $3}' || true; }

# Window in which every guest had finished reading and none had exited yet,
# nor ended its hold (the recheck after it writes: the tmpfs workload a token
# into every copy): [last READS-DONE + settle, first exit or HOLD-END - 1].
# Prints "T0 T1".
fleet_hold_window() {
  local dir=$1 settle=${2:-2}
  awk -F'\t' -v s="$settle" '
    { if ($3 == "NA") bad = 1; if ($3 + 0 > r) r = $3 + 0; if (first == "" || $4 + 0 < first) first = $4 + 0
      if ($8 != "" && $8 != "NA" && (he == "" || $8 + 0 < he)) he = $8 + 0 }
    END { if (bad) { print "NA NA"; exit } if (he != "" && he < first) first = he
          printf "%.2f %.2f\n", r + s, first - 1 }' "$dir/guests.tsv"
}

# Mean of column COL (name from the header, or number) of samples in [T0, T1]
# (whole run when no window is given). Prints NA when no sample falls in it;
# NA values (a counter the kernel lacks) are left out, not taken for 0.
fleet_window_avg() {
  local dir=$1 col=$2 t0=${3:--1} t1=${4:-1e12}
  awk -F'\t' -v c="$col" -v a="$t0" -v b="$t1" '
    NR == 1 { for (i = 1; i <= NF; i++) { h = $i; sub(/^#/, "", h); if (h == c) c = i } next }
    $1 + 0 >= a && $1 + 0 <= b && $c != "NA" && $c != "" { s += $c; n++ }
    END { if (n) printf "%.0f\n", s / n; else print "NA" }' "$dir/samples.tsv"
}

fleet_last() {
  awk -F'\t' -v c="$2" '
    NR == 1 { for (i = 1; i <= NF; i++) { h = $i; sub(/^#/, "", h); if (h == c) c = i } next }
    { v = $c } END { print v }' "$1/samples.tsv"
}

