#!/usr/bin/env bash
# Makes an ext4 image (4 KiB blocks) holding SRCDIR, without mounting anything.
# Usage: guest/mkimage.sh SRCDIR IMAGE
# Size: the data's 4 KiB blocks + 15 % + 24 MiB for metadata and journal,
# rounded up to a MiB. Writes IMAGE.md5 beside it (see below). Fixed UUID and hash seed so that the same SRCDIR gives
# the same filesystem layout.
set -euo pipefail
die() { echo "mkimage.sh: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: mkimage.sh SRCDIR IMAGE"
src=$1 img=$2
[ -d "$src" ] || die "$src is not a directory"
mke2fs=$(command -v mke2fs || command -v /sbin/mke2fs || true)
[ -n "$mke2fs" ] || die "mke2fs not found (apt-get install e2fsprogs)"

blocks=$(find "$src" -type f -printf '%s\n' | awk '{b += int(($1 + 4095) / 4096)} END {print b + 0}')
nfiles=$(find "$src" | wc -l)
# data + 15 % + 24 MiB + one 4 KiB block per file/dir for inodes and directories
kib=$(( blocks * 4 * 115 / 100 + 24 * 1024 + nfiles * 4 ))
mib=$(( (kib + 1023) / 1024 ))
mkdir -p "$(dirname "$img")"
tmp=$img.tmp.$$
trap 'rm -f "$tmp" "$tmp.md5"' EXIT
rm -f "$tmp"
truncate -s "${mib}M" "$tmp"
E2FSPROGS_FAKE_TIME=${SOURCE_DATE_EPOCH:-1700000000} \
"$mke2fs" -q -F -t ext4 -b 4096 -m 0 -L memdedup-wl \
  -U 6d656d64-6564-7570-2d77-6c0000000001 \
  -E root_owner=0:0,hash_seed=6d656d64-6564-7570-2d68-617368000001 \
  -d "$src" "$tmp" || die "mke2fs -d $src failed (image ${mib} MiB)"
# What a guest reading the image must print (guest/init: every file but
# run.sh, in sorted path order, through one md5), for tests to check against
# the source rather than against another guest.
(cd "$src" && find . -type f ! -name run.sh | LC_ALL=C sort | tr '\n' '\0' | xargs -0 -r cat) \
  | md5sum | cut -d' ' -f1 > "$tmp.md5"
mv "$tmp.md5" "$img.md5"
mv "$tmp" "$img"
trap - EXIT
echo "mkimage.sh: $img: ${mib} MiB ext4, $(( blocks * 4 / 1024 )) MiB of file data"
