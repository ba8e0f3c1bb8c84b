#!/bin/sh
# Guest side of the tmpfs workload (bench/run-bench.sh --workload tmpfs): copy
# every file of the image into tmpfs, then checksum the copies in sorted path
# order. The copies are anonymous guest memory, equal across guests, that no
# shared image read can catch: only scanning finds them.
# `--recheck`: the checksum of the copies made before; then this guest
# writes a token of its own into the first page of every copy, waits, and
# reads them back: a write lost, or one that reached the other guest's pages
# (merged with these across guests) while both guests' rechecks overlap (in
# a fleet they start together: one image, one hold), prints WRITE-LOST as
# the last line, which the guest's init takes for data changed.
set -e
if [ "${1:-}" = --recheck ]; then
  cd /tmp/copy
  sum=$(sed 's|^|/tmp/copy/|' /tmp/files | xargs cat | md5sum | cut -d' ' -f1)
  token=$(head -c 16 /dev/urandom | md5sum | cut -c1-16)
  while read -r f; do
    [ "$(wc -c < "$f")" -ge 16 ] && printf %s "$token" | dd of="$f" bs=16 count=1 conv=notrunc 2>/dev/null
  done < /tmp/files
  sleep 3
  while read -r f; do
    if [ "$(wc -c < "$f")" -ge 16 ] && [ "$(head -c 16 "$f")" != "$token" ]; then
      echo "WRITE-LOST $f"
      exit 0
    fi
  done < /tmp/files
  echo "$sum"
  exit 0
fi
mkdir -p /tmp/copy
mount -t tmpfs -o size=300m tmpfs /tmp/copy
cd /mnt
find . -type f ! -name run.sh | sort > /tmp/files
while read -r f; do
  mkdir -p "/tmp/copy/$(dirname "$f")"
  cat "$f" > "/tmp/copy/$f"
done < /tmp/files
cd /tmp/copy
sed 's|^|/tmp/copy/|' /tmp/files | xargs cat | md5sum | cut -d' ' -f1
