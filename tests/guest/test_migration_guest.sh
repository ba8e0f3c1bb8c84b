#!/usr/bin/env bash
# Integration test: QEMU's own userfaultfd over guest RAM the scanner
# merges. Its background snapshot write-protects guest RAM with one, its
# postcopy migration registers one on the destination for pages still to
# come; the scanner's registration made both fail, and the zero pages the
# scanner dropped made a postcopy destination wait forever. Guests run
# under `memdedup run --scan` (read-time sharing off: pages shared at read
# time stay in the image's file mapping, which the kernel will not
# register; docs/ARCHITECTURE.md). Checks:
#   1. background snapshot: the scanner merged pages first; QEMU takes the
#      capability, the snapshot completes, the agent says it gave the RAM
#      up, and takes it back once QEMU lets go (merging again); the guest
#      reads the image's data before and after; the snapshot restored in a
#      plain QEMU reads it again after its hold;
#   2. postcopy migration from a plain QEMU to one under the scanner
#      completes, the destination's agent takes the RAM back after it, and
#      the guest on the destination reads the image's data again after its
#      hold.
# Env: TEST_HOLD (s, default 30), MEMDEDUP_BIN. Runtime here: ~2 min.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source scripts/fleet-lib.sh
source tests/guest/guest-test-lib.sh
name=test_migration_guest
hold=${TEST_HOLD:-30}
md=${MEMDEDUP_BIN:-$root/build/memdedup}
out=$root/build/tests/guest-migration
guest_test_init
img=$(fleet_image 96)
want=$(cat "$img.md5" 2>/dev/null || true)
# An empty checksum would equal what a guest that printed nothing read.
if [ -z "$want" ]; then
  echo "FAIL: $name: no $img.md5 (remake the image with guest/mkimage.sh)"
  exit 1
fi
rm -rf "$out"
mkdir -p "$out"
port=$((5000 + $$ % 9000 * 3))   # this, +1 (monitors), +2 (migration); below the ephemeral ports
# A port something already listens on would have the monitor commands go to
# it (hmp connects to whatever answers): the next three, until all are free.
# (Free here, they could still be taken before QEMU binds them.)
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 1 50); do
  port_free "$port" && port_free $((port + 1)) && port_free $((port + 2)) && break
  port=$(( (port - 5000 + 3) % 27000 + 5000 ))
done
if ! { port_free "$port" && port_free $((port + 1)) && port_free $((port + 2)); }; then
  echo "FAIL: $name: no three free TCP ports on 127.0.0.1 found from $((5000 + $$ % 9000 * 3))"
  exit 1
fi

# HMP commands on the monitor at port $P (a TCP port: bash needs no tool
# for it); prints the replies, each read up to the monitor's next prompt
# (its echo of the command left out), not for a fixed time (it slept 0.3 s,
# 0.5 s a command, and read for 1 s: a reply later than that went unread,
# and a refusal with it). A monitor that does not listen, or does not
# answer, within $hmp_wait s is said as an error line in the replies (which
# the callers look for errors in).
P=$port hmp_wait=30
hmp_read() {   # the monitor's output (fd 3) up to its prompt, into hmp_buf
  local ch left
  hmp_buf=""
  while :; do
    left=$((hmp_deadline - SECONDS))
    [ "$left" -gt 0 ] || return 1
    IFS= read -r -N 1 -t "$left" -u 3 ch || return 1
    hmp_buf+=$ch
    [[ $hmp_buf == *"(qemu) " ]] && return 0
  done
}
hmp() {
  local c out="" deadline=$((SECONDS + hmp_wait))
  until exec 3<>"/dev/tcp/127.0.0.1/$P"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: no monitor listens at port $P (${hmp_wait} s)"
      return 0
    fi
    sleep 0.2
  done 2>/dev/null
  hmp_deadline=$deadline
  if hmp_read; then   # the greeting
    for c in "$@"; do
      printf '%s\n' "$c" >&3
      hmp_deadline=$((SECONDS + hmp_wait))
      if ! hmp_read; then
        out+="$hmp_buf"$'\n'"error: the monitor at port $P did not answer '$c' (${hmp_wait} s)"$'\n'
        break
      fi
      hmp_buf=${hmp_buf#*$'\n'}
      out+=${hmp_buf%"(qemu) "}
    done
  else
    out+="error: the monitor at port $P gave no prompt (${hmp_wait} s)"$'\n'
  fi
  exec 3>&-
  printf '%s' "$out" | tr -d '\r' | sed 's/\x1b\[[0-9;]*[A-Za-z]//g'
}
migration_status() {   # of the QEMU whose monitor is at port $P
  hmp "info migrate" | grep -m1 '^Migration status:' | awk '{print $3}' || true
}

agent_counter() {   # NAME [RUN_DIR]: one counter of the agent under the scanner
  MEMDEDUP_RUN_DIR=${2:-$out/run} "$md" status --json --agents 2>/dev/null |
    grep -o "\"$1\": *[0-9]*" | head -1 | grep -o '[0-9]*$' || echo 0
}

guests=()
stop_guests() { local p; for p in "${guests[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
# The snapshot (~180 MB) goes once the guest restored from it is checked,
# or when the test ends before that (after the guests: one may read it).
FLEET_EXIT_HOOKS+=(stop_guests 'rm -f "$out/snap"')

mkdir -p "$out/run"
MEMDEDUP_NO_SHARING=1 MEMDEDUP_LOG=$out/agent.log MEMDEDUP_RUN_DIR=$out/run guest/run-guest.sh --hold "$hold" \
  --log "$out/guest.log" --timeout $((hold + 150)) \
  --wrapper "$(printf %q "$md") run --kernel-ksm=off --scan --domain=private --pages-to-scan=2000 --" \
  --qemu-opt "-monitor tcp:127.0.0.1:$port,server,nowait" "$img" > "$out/guest.out" 2>&1 &
guests+=($!)
for _ in $(seq 1 240); do
  grep -q '^MEMDEDUP-GUEST: DONE' "$out/guest.log" 2>/dev/null && break
  sleep 0.5
done
merged=0
for _ in $(seq 1 40); do   # the scanner merges meanwhile
  merged=$(agent_counter merged)
  [ "${merged:-0}" -ge 1000 ] && break
  sleep 0.5
done
zero0=$(agent_counter zero_pages)
if [ "${merged:-0}" -ge 1000 ]; then
  pass "the scanner merged $merged pages before the snapshot"
else
  fail "the scanner merged ${merged:-no} pages before the snapshot (need >= 1000)"
fi
reply=$(hmp "migrate_set_capability background-snapshot on" "migrate -d \"exec:cat > '$out/snap'\"")
if grep -qi error <<<"$reply"; then
  fail "QEMU refused the background snapshot: $(grep -i error <<<"$reply" | head -1)"
else
  pass "QEMU took the background-snapshot capability"
fi
# The merges counted once the RAM is QEMU's (none while it is): the
# baseline of "merged again". The count before the snapshot still grew
# while the scanner merged on, up to the handover, and proved nothing.
# Taken only while the snapshot still runs: after it, the RAM may be back.
status="" deadline=$((SECONDS + 180)) handed=""
while :; do
  # The counters the agent writes about once a second: read after the
  # next write, so that merges just before the handover are in.
  if [ -z "$handed" ] && grep -q 'registers guest RAM with its own userfaultfd' "$out/agent.log" 2>/dev/null; then
    sleep 1.5
    m=$(agent_counter merged)
    [ "$(migration_status)" = active ] && handed=$m
  fi
  status=$(migration_status)
  case "$status" in completed|failed|cancelled) break ;; esac
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 0.5
done
if [ "$status" = completed ] && [ -s "$out/snap" ]; then
  pass "the snapshot completed ($(($(stat -c %s "$out/snap") / 1048576)) MB)"
else
  fail "the snapshot ended '${status:-never}' (logs in $out)"
fi
if grep -q 'registers guest RAM with its own userfaultfd' "$out/agent.log"; then
  pass "the agent gave the guest's RAM up to QEMU's userfaultfd"
else
  fail "the agent did not say it gave the RAM up (log $out/agent.log)"
fi
# The snapshot over, QEMU unregisters its userfaultfd: the scanner takes the
# RAM back, drops again the zero pages the handover read back in, and
# merges again what it made private (first the zero pages: most of RAM).
# On a kernel with a zero page (no pvm_no_zero_page), what the handover
# read back of the dropped pages maps the zero page and costs nothing, so
# there is nothing to drop again: only the merges must come back.
want_zero=$((zero0 + 1000))
if build/ptcost 1024 2>/dev/null | head -1 | grep -q '"reads_share_a_frame":true'; then
  want_zero=0
fi
base=${handed:-$merged} base_what="at the handover"
[ -n "$handed" ] || base_what="before the snapshot (it ended before the handover was seen)"
merged1=$(agent_counter merged) zero1=$zero0 t0=$SECONDS
for _ in $(seq 1 40); do
  merged1=$(agent_counter merged) zero1=$(agent_counter zero_pages)
  [ "${merged1:-0}" -gt "$base" ] && [ "${zero1:-0}" -ge "$want_zero" ] && break
  sleep 0.5
done
if grep -q 'merged again' "$out/agent.log" && ! grep -q 'not all of it' "$out/agent.log" &&
   [ "${merged1:-0}" -gt "$base" ] &&
   [ "${zero1:-0}" -ge "$want_zero" ]; then
  pass "the scanner took the RAM back after the snapshot (zero pages ${zero1:-?} against $zero0 before, $((merged1 - base)) pages merged in $((SECONDS - t0)) s since $base_what)"
else
  fail "the scanner did not take the RAM back after the snapshot (merged ${merged1:-?} after, $base $base_what; zero pages ${zero1:-?}, $zero0 before)"
fi

# The snapshot, restored in a plain QEMU, goes on with the guest's hold.
guest/run-guest.sh --hold "$hold" --log "$out/restored.log" --timeout $((hold + 120)) \
  --resumed --qemu-opt "-incoming $(printf %q "exec:cat<$(printf %q "$out/snap")")" "$img" > "$out/restored.out" 2>&1 &
guests+=($!)
# The snapshotted guest holds, checks again and powers off: its QEMU, under
# the agent, must exit 0 (run-guest.sh says why not).
snap_rc=0
wait "${guests[0]}" || snap_rc=$?
if [ "$snap_rc" = 0 ]; then
  pass "the snapshotted guest's QEMU powered off cleanly"
else
  fail "the snapshotted guest's run-guest.sh exited $snap_rc: $(tail -1 "$out/guest.out")"
fi
# Restored, it checks again and powers off (run-guest.sh's timeout bounds it).
restored_rc=0
wait "${guests[1]}" || restored_rc=$?
stop_guests
if [ "$restored_rc" = 0 ]; then
  pass "the restored guest's QEMU powered off cleanly"
else
  fail "the restored guest's run-guest.sh exited $restored_rc: $(tail -1 "$out/restored.out")"
fi
if [ "$(fleet_guest_said DONE "$out/guest.log")" = "$want" ] && [ "$(fleet_guest_said RECHECK "$out/guest.log")" = "$want" ]; then
  pass "the guest read the image's data, and the same after the snapshot"
else
  fail "the guest read '$(fleet_guest_said DONE "$out/guest.log")', then '$(fleet_guest_said RECHECK "$out/guest.log")'; the image holds $want"
fi
if [ "$(fleet_guest_said RECHECK "$out/restored.log")" = "$want" ]; then
  pass "the restored guest read the image's data again"
else
  fail "the restored guest read '$(fleet_guest_said RECHECK "$out/restored.log")'; the image holds $want (log $out/restored.log)"
fi
rm -f "$out/snap"

# Postcopy: a plain QEMU migrates to one under the scanner; the switch to
# postcopy comes while pages are still to come (the bandwidth is capped).
guests=()
guest/run-guest.sh --hold "$hold" --log "$out/source.log" --timeout $((hold + 150)) \
  --qemu-opt "-monitor tcp:127.0.0.1:$port,server,nowait" "$img" > "$out/source.out" 2>&1 &
guests+=($!)
mkdir -p "$out/run-dest"
MEMDEDUP_NO_SHARING=1 MEMDEDUP_LOG=$out/dest-agent.log MEMDEDUP_RUN_DIR=$out/run-dest guest/run-guest.sh \
  --hold "$hold" --log "$out/dest.log" --timeout $((hold + 150)) --resumed \
  --wrapper "$(printf %q "$md") run --kernel-ksm=off --scan --domain=private --pages-to-scan=2000 --" \
  --qemu-opt "-monitor tcp:127.0.0.1:$((port + 1)),server,nowait -incoming tcp:127.0.0.1:$((port + 2))" \
  "$img" > "$out/dest.out" 2>&1 &
guests+=($!)
for _ in $(seq 1 240); do
  grep -q '^MEMDEDUP-GUEST: DONE' "$out/source.log" 2>/dev/null && break
  sleep 0.5
done
P=$((port + 1)) hmp "migrate_set_capability postcopy-ram on" > "$out/hmp-dest" || true
reply=$(hmp "migrate_set_capability postcopy-ram on" "migrate_set_parameter max-bandwidth 5M" \
        "migrate -d tcp:127.0.0.1:$((port + 2))")
# The switch comes once the migration runs (precopy, at 5 MB/s: most pages
# are still to come) and the destination's scanner has dropped zero pages
# among those it got, or this proves nothing about them.
dropped=0 status="" deadline=$((SECONDS + 60))
while :; do
  status=$(migration_status)
  dropped=$(agent_counter zero_pages "$out/run-dest")
  [ "$status" = active ] && [ "${dropped:-0}" -gt 0 ] && break
  case "$status" in completed|failed|cancelled) break ;; esac
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 0.5
done
reply+=$(hmp "migrate_start_postcopy")
if [ "${dropped:-0}" -gt 0 ]; then
  pass "the destination's scanner dropped $dropped zero pages before the switch to postcopy"
else
  fail "the destination's scanner dropped no zero page before the switch to postcopy"
fi
if grep -qi error <<<"$reply$(cat "$out/hmp-dest")"; then
  fail "QEMU refused postcopy: $(grep -hi error <<<"$reply$(cat "$out/hmp-dest")" | head -1)"
fi
status="" postcopy=0 deadline=$((SECONDS + 300))
while :; do
  status=$(migration_status)
  [ "$status" = postcopy-active ] && postcopy=1
  case "$status" in completed|failed|cancelled) break ;; esac
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 0.5
done
# That it went postcopy shows in the destination's agent (below): only
# postcopy's listen registers guest RAM there; the status poll may miss it.
if [ "$status" = completed ]; then
  pass "postcopy migration to a QEMU under the scanner completed$([ "$postcopy" = 1 ] && echo ' (seen postcopy-active)')"
else
  fail "postcopy migration ended '${status:-never}' (logs in $out)"
fi
for _ in $(seq 1 $((2 * hold + 120))); do
  grep -q '^MEMDEDUP-GUEST: \(RECHECK\|FAIL\)' "$out/dest.log" 2>/dev/null && break
  sleep 0.5
done
# The source stays paused once migrated: it goes. The destination, under
# the agent, powers off after its check; its QEMU must exit 0.
kill "${guests[0]}" 2>/dev/null || true
wait "${guests[0]}" 2>/dev/null || true
dest_rc=0
wait "${guests[1]}" || dest_rc=$?
stop_guests
if [ "$dest_rc" = 0 ]; then
  pass "the destination's QEMU powered off cleanly"
else
  fail "the destination's run-guest.sh exited $dest_rc: $(tail -1 "$out/dest.out")"
fi
if grep -q 'registers guest RAM with its own userfaultfd' "$out/dest-agent.log"; then
  pass "the destination's agent gave the guest's RAM up to QEMU's userfaultfd (postcopy's listen)"
else
  fail "the destination's agent did not say it gave the RAM up (log $out/dest-agent.log)"
fi
if grep -q 'merged again' "$out/dest-agent.log" && ! grep -q 'not all of it' "$out/dest-agent.log"; then
  pass "the destination's agent took the RAM back once postcopy was over"
else
  fail "the destination's agent did not take the RAM back after postcopy (log $out/dest-agent.log)"
fi
if [ "$(fleet_guest_said RECHECK "$out/dest.log")" = "$want" ]; then
  pass "the migrated guest read the image's data again"
else
  fail "the migrated guest read '$(fleet_guest_said RECHECK "$out/dest.log")'; the image holds $want (log $out/dest.log)"
fi
finish
