#!/bin/sh
# Guest side of the tmpfs workload (bench/run-bench.sh --workload tmpfs): copy
# every file of the image into tmpfs, then checksum the copies in sorted path
# order. The copies are anonymous guest memory, equal across guests, that no
# shared image read can catch: only scanning finds them (their pages are
# image pages, which the scanner maps from the image).
# With shifted=1 (tests/guest/test_scan_guests.sh makes its image's run.sh
# so), every file is also copied one byte in (/tmp/copy/.shifted: "x", then
# the file): pages equal across guests that match no image page, which only
# a merge across the guests (memdedupd's pool) can share.
# `--recheck`: the checksum of the copies made before (SHIFTED-CHANGED FILE
# instead if a shifted copy, less its first byte, is not the copy); then
# this guest writes a token of its own into the first page of every copy
# (the shifted ones too), waits, and reads them back: a write lost, or one
# that reached the other guest's pages (merged with these across guests)
# while both guests' rechecks overlap (each starts at its own guest's end
# of the hold, as far apart as their DONEs), prints WRITE-LOST as the last
# line, and a page whose bytes past the token are not the image's any more
# WRITE-CHANGED, which the guest's init takes for data changed.
set -e
shifted=0
checksum() { sed 's|^|/tmp/copy/|' /tmp/files | xargs cat | md5sum | cut -d' ' -f1; }
# put LIST WORD: WORD written over the start of every file of LIST (not
# those shorter); check LIST WORD: the first of them that does not start so.
put() {
  while read -r f; do
    [ "$(wc -c < "$f")" -ge ${#2} ] && printf %s "$2" | dd of="$f" bs=64 count=1 conv=notrunc 2>/dev/null
  done < "$1"
}
check() {
  while read -r f; do
    if [ "$(wc -c < "$f")" -ge ${#2} ] && [ "$(head -c ${#2} "$f")" != "$2" ]; then
      echo "$f"
      return
    fi
  done < "$1"
}
if [ "${1:-}" = --recheck ]; then
  cd /tmp/copy
  sum=$(checksum)
  sed 's|^|/tmp/copy/|' /tmp/files > /tmp/copies
  : > /tmp/shifted
  if [ "$shifted" = 1 ]; then
    # Against the copies, which the checksum checks: cmp costs the guest
    # less than a second md5 of the whole workload.
    while read -r f; do
      cmp -s "/tmp/copy/.shifted/$f" "/tmp/copy/$f" 1 0 || { sum="SHIFTED-CHANGED $f"; break; }
    done < /tmp/files
    sed 's|^|/tmp/copy/.shifted/|' /tmp/files > /tmp/shifted
  fi
  # The image's own bytes where the tokens go, before and after: a write
  # to a copy's page merged onto an image page must not reach the image's
  # (the page cache's) page, which the checksum of the copies never reads.
  heads() { while read -r f; do head -c 17 "/mnt/$f"; done < /tmp/files | md5sum; }
  image_heads=$(heads)
  # After its "x", in a shifted copy: it stays the copy one byte in.
  token=$(head -c 16 /dev/urandom | md5sum | cut -c1-16)
  put /tmp/copies "$token"
  put /tmp/shifted "x$token"
  sleep 3
  lost=$(check /tmp/copies "$token")
  [ -n "$lost" ] || lost=$(check /tmp/shifted "x$token")
  if [ -n "$lost" ]; then
    echo "WRITE-LOST $lost"
    exit 0
  fi
  if [ "$(heads)" != "$image_heads" ]; then
    echo "WRITE-LEAKED into the image's pages"
    exit 0
  fi
  # The rest of each written page is the image's still: the write broke
  # the merge, and its private copy must hold the page, not zeroes or
  # another page (the token alone would read back from either).
  while read -r f; do
    cmp -s "/tmp/copy/$f" "/mnt/$f" 16 16 || { echo "WRITE-CHANGED $f"; exit 0; }
    [ "$shifted" = 1 ] || continue
    cmp -s "/tmp/copy/.shifted/$f" "/mnt/$f" 17 16 || { echo "WRITE-CHANGED .shifted/$f"; exit 0; }
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
  if [ "$shifted" = 1 ]; then
    mkdir -p "/tmp/copy/.shifted/$(dirname "$f")"
    { printf x; cat "/tmp/copy/$f"; } > "/tmp/copy/.shifted/$f"
  fi
done < /tmp/files
cd /tmp/copy
checksum
