#!/bin/bash
# daemon-fairness.sh - memdedupd's fairness between users: root's one-hash
# LOOKUP round trip while nobody floods the daemon with full READS from
# CONNECTIONS connections (bench/daemonflood.c), for each count given.
# A daemon of its own, in a run directory of its own, stopped after.
#   bench/daemon-fairness.sh [CONNECTIONS...]     (default: 0 200)
# Environment: MEMDEDUPD (default build/memdedupd), DAEMONFLOOD (default
# build/daemonflood). One JSON line per count.
set -euo pipefail
daemon=${MEMDEDUPD:-build/memdedupd}
flood=${DAEMONFLOOD:-build/daemonflood}
[ "$(id -u)" = 0 ] || { echo "daemon-fairness.sh: needs root (the flooders run as nobody)" >&2; exit 2; }
for f in "$daemon" "$flood"; do
	[ -x "$f" ] || { echo "daemon-fairness.sh: $f not built (make all)" >&2; exit 2; }
done
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(0 200)
for k in "${counts[@]}"; do
	[[ "$k" =~ ^[0-9]+$ ]] || { echo "daemon-fairness.sh: '$k' is not a count of connections" >&2; exit 2; }
done
run=$(mktemp -d /tmp/memdedup-fairness-XXXXXX)
chmod 755 "$run"	# nobody reaches the socket (0666) in it
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT
"$daemon" --foreground --run-dir "$run" --socket "$run/s.sock" 2>"$run/log" &
pid=$!
for _ in $(seq 100); do [ -S "$run/s.sock" ] && break; sleep 0.05; done
[ -S "$run/s.sock" ] || { echo "daemon-fairness.sh: memdedupd did not start:" >&2; cat "$run/log" >&2; exit 1; }
for k in "${counts[@]}"; do
	"$flood" "$run/s.sock" "$k" 50
done
