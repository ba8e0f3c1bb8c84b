#!/bin/sh
# Guest side of the tmpfs workload (bench/run-bench.sh --workload tmpfs): copy
# every file of the image into tmpfs, then checksum the copies in sorted path
# order. The copies are anonymous guest memory, equal across guests, that no
# shared image read can catch: only scanning finds them.
# `--recheck`: only the checksum of the copies made before.
set -e
if [ "${1:-}" = --recheck ]; then
  cd /tmp/copy
  sed 's|^|/tmp/copy/|' /tmp/files | xargs cat | md5sum | cut -d' ' -f1
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
