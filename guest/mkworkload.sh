#!/usr/bin/env bash
# Fills DIR with a deterministic workload for the test guest.
# Usage: guest/mkworkload.sh DIR SIZE_MB [SEED]
# Content: one stream of the numbers 1..N in a seeded pseudo-random order
# (`shuf` with a seed-derived random source), one number per line, cut into
# files of mixed sizes (4 KiB .. 4 MiB, some not page multiples) in
# subdirectories. Every number occurs once, so no two 4 KiB pages of the
# workload are equal and none is zero: any page sharing between guests comes
# from the two guests reading the same image, never from repetition inside it.
# The same SIZE_MB and SEED give byte-identical files on every machine
# (GNU coreutils shuf/dd).
set -euo pipefail
die() { echo "mkworkload.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] && [ $# -le 3 ] || die "usage: mkworkload.sh DIR SIZE_MB [SEED]"
dir=$1 size_mb=$2 seed=${3:-1}
case "$size_mb" in ''|*[!0-9]*) die "SIZE_MB must be a positive integer" ;; esac
[ "$size_mb" -gt 0 ] || die "SIZE_MB must be > 0"
for t in shuf dd awk; do command -v $t >/dev/null || die "missing tool $t"; done
if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  die "$dir exists and is not empty"
fi
mkdir -p "$dir"

total=$((size_mb * 1024 * 1024))
# Smallest N whose text "1\n2\n...N\n" is at least total bytes (+ slack).
n=$(awk -v want=$((total + 65536)) 'BEGIN{
  have = 0; n = 0; d = 1; lo = 1
  while (have < want) {
    hi = lo * 10 - 1                      # numbers with d digits: lo..hi
    cnt = hi - lo + 1
    if (have + cnt * (d + 1) >= want) { n += int((want - have) / (d + 1)) + 1; break }
    have += cnt * (d + 1); n = hi; lo *= 10; d++
  }
  print n }')

# File sizes in bytes, cycled: mostly page multiples, some with a tail.
sizes=(4096 16384 65536 1048576 4194304 8192 262144 2097152 12288 524288
       69632 4194304 1572864 40960 131072 3145728 20480 1048576 98304 7000
       300000 2097152 4096 786432 1234567)
per_dir=12

exec 3< <(shuf -i "1-$n" --random-source=<(yes "memdedup-workload-$seed"))
left=$total i=0
while [ "$left" -gt 0 ]; do
  sz=${sizes[$((i % ${#sizes[@]}))]}
  [ "$sz" -gt "$left" ] && sz=$left
  sub=$(printf 'd%03d' $((i / per_dir)))
  f=$(printf '%s/%s/f%05d.dat' "$dir" "$sub" "$i")
  mkdir -p "$dir/$sub"
  dd of="$f" bs=65536 count="$sz" iflag=count_bytes,fullblock status=none <&3
  got=$(stat -c %s "$f")
  [ "$got" -eq "$sz" ] || die "generator stream ended early ($f: $got of $sz bytes)"
  left=$((left - sz))
  i=$((i + 1))
done
exec 3<&-
echo "mkworkload.sh: $dir: $i files in $(( (i + per_dir - 1) / per_dir )) directories, $size_mb MiB, seed $seed"
