#!/usr/bin/env bash
# Builds the test guest's kernel and initramfs from Debian packages.
# Usage: guest/build-kernel.sh OUTDIR
#   OUTDIR/vmlinuz            Debian 12 kernel (linux-image-6.1.0-*-amd64)
#   OUTDIR/initramfs.cpio.gz  busybox-static + guest/init + the needed modules
# The kernel package is fetched with `apt-get download` into OUTDIR/cache and
# unpacked with `dpkg -x`; it is never installed on the host.
# Env: MEMDEDUP_KERNEL_PKG=linux-image-...-amd64 forces a package.
set -euo pipefail
# depmod is in /sbin only, outside a user's PATH on Debian.
PATH=$PATH:/usr/sbin:/sbin

die() { echo "build-kernel.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: build-kernel.sh OUTDIR"
out=$1
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/cache"
out=$(cd "$out" && pwd)
cache=$out/cache

for t in apt-get apt-cache dpkg dpkg-deb depmod cpio gzip; do
  command -v "$t" >/dev/null || die "missing tool '$t' (run scripts/install-deps.sh guest)"
done
# A download cut short (Ctrl-C during the first `make check`) left a
# truncated .deb under its final name, which every later run picked first
# and failed to unpack: cached packages that dpkg-deb cannot read whole go, and
# downloads land in the cache only once read whole.
for f in "$cache"/*.deb; do
  [ -e "$f" ] || continue
  dpkg-deb --fsys-tarfile "$f" >/dev/null 2>&1 || { echo "build-kernel.sh: removing unreadable $f" >&2; rm -f "$f"; }
done
dl=$(mktemp -d "$cache/.download.XXXXXX")
tmp=
trap 'rm -rf "$dl" ${tmp:+"$tmp"}' EXIT
download() {  # package: into the cache, whole or not at all
  rm -f "$dl"/*.deb
  (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$1") || return 1
  local f
  for f in "$dl"/*.deb; do
    dpkg-deb --fsys-tarfile "$f" >/dev/null || return 1
    mv "$f" "$cache/"
  done
}
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found (apt-get install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; install busybox-static"
fi

# --- pick a kernel package --------------------------------------------------
has_candidate() {  # (grep without -q: an early exit would SIGPIPE apt-cache under pipefail)
  apt-cache policy "$1" 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null
}
pick_pkg() {
  local p
  if [ -n "${MEMDEDUP_KERNEL_PKG:-}" ]; then echo "$MEMDEDUP_KERNEL_PKG"; return; fi
  # A previously downloaded one wins: no registry access needed.
  p=$(ls "$cache"/linux-image-6.1.0-*-amd64_*.deb 2>/dev/null | sed 's#.*/##; s#_.*##' \
      | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -1 || true)
  [ -n "$p" ] && { echo "$p"; return; }
  # What the linux-image-amd64 metapackage points to (the newest in bookworm).
  p=$(apt-cache depends linux-image-amd64 2>/dev/null \
      | awk '/Depends: linux-image-[0-9]/ && !p {print $2; p=1}' || true)
  if [ -n "$p" ] && has_candidate "$p"; then
    echo "$p"; return
  fi
  # Otherwise the newest 6.1.0-N-amd64 that has a candidate version.
  local c
  for c in $(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null \
             | awk '{print $1}' | sort -V -r); do
    if has_candidate "$c"; then echo "$c"; return; fi
  done
  # Any Debian amd64 kernel at all.
  for c in $(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-amd64$' 2>/dev/null \
             | awk '{print $1}' | sort -V -r); do
    if has_candidate "$c"; then echo "$c"; return; fi
  done
}

pkg=$(pick_pkg)
if [ -z "$pkg" ]; then
  echo "build-kernel.sh: apt-cache knows no linux-image-*-amd64; running apt-get update" >&2
  apt-get update -qq || true
  pkg=$(pick_pkg)
fi
[ -n "$pkg" ] || die "no Debian kernel package found (is the apt registry reachable?)"

deb=$(ls "$cache"/"${pkg}"_*.deb 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$deb" ]; then
  echo "build-kernel.sh: downloading $pkg"
  download "$pkg" || {
    # Stale package lists name an ABI the mirror no longer serves: pick
    # again from fresh ones (a forced package stays what it is).
    apt-get update -qq || true
    pkg=$(pick_pkg)
    [ -n "$pkg" ] || die "no Debian kernel package found after apt-get update"
    download "$pkg" || die "apt-get download $pkg failed"
  }
  deb=$(ls "$cache"/"${pkg}"_*.deb | sort -V | tail -1)
fi
echo "build-kernel.sh: using $deb"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/memdedup-kernel.XXXXXX")
dpkg -x "$deb" "$tmp/pkg"
vmlinuz=$(ls "$tmp"/pkg/boot/vmlinuz-* 2>/dev/null | head -1 || true)
[ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $deb"
kver=${vmlinuz##*/vmlinuz-}
moddir=$tmp/pkg/lib/modules/$kver
[ -d "$moddir" ] || die "no lib/modules/$kver in $deb"

# --- initramfs tree -----------------------------------------------------------
root=$tmp/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,mnt,tmp,etc,run,lib/modules/"$kver"}
cp "$busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
  case "$applet" in busybox) continue ;; esac
  ln -sf busybox "$root/bin/$applet"
done
for a in modprobe insmod rmmod lsmod depmod poweroff reboot halt mdev; do
  ln -sf ../bin/busybox "$root/sbin/$a"
done
install -m 755 "$here/init" "$root/init"

# Modules the guest needs (with dependencies, resolved through modules.dep).
wanted="virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev
        virtio_blk ext4 crc16 mbcache jbd2 crc32c_generic crc32c_intel libcrc32c
        virtio_pmem nd_pmem libnvdimm nd_btt dax virtio_console"
depmod -b "$tmp/pkg" "$kver" 2>/dev/null || true
depfile=$moddir/modules.dep
[ -f "$depfile" ] || die "depmod produced no modules.dep"
declare -A need=()
resolve() {  # module name -> adds its path and its dependencies' paths to need
  local name=$1 line path deps d
  line=$(grep -E "(^|/)${name//_/[_-]}\.ko(\.[a-z]+)?:" "$depfile" | head -1 || true)
  [ -n "$line" ] || return 0            # built in (or absent): nothing to copy
  path=${line%%:*}
  [ -n "${need[$path]:-}" ] && return 0
  need[$path]=1
  deps=${line#*:}
  for d in $deps; do
    d=${d##*/}; d=${d%%.ko*}
    resolve "$d"
  done
}
for m in $wanted; do resolve "$m"; done
[ ${#need[@]} -gt 0 ] || echo "build-kernel.sh: note: all wanted modules are built in"
for path in "${!need[@]}"; do
  mkdir -p "$root/lib/modules/$kver/$(dirname "$path")"
  src=$moddir/$path
  case "$path" in
    *.ko.xz)  xz -dc  "$src" > "$root/lib/modules/$kver/${path%.xz}" ;;
    *.ko.zst) zstd -qdc "$src" > "$root/lib/modules/$kver/${path%.zst}" ;;
    *.ko.gz)  gzip -dc "$src" > "$root/lib/modules/$kver/${path%.gz}" ;;
    *.ko)     cp "$src" "$root/lib/modules/$kver/$path" ;;
    *) die "unexpected module file $path" ;;
  esac
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
  [ -f "$moddir/$f" ] && sed -E 's/\.ko\.(xz|zst|gz)/.ko/' "$moddir/$f" > "$root/lib/modules/$kver/$f"
done
depmod -b "$root" "$kver" || die "depmod -b on the initramfs tree failed"
# The module list /init loads, in dependency order (busybox modprobe resolves deps).
echo "$wanted" | tr -s ' \n' '\n' | sed '/^$/d' > "$root/etc/modules"
echo "$kver" > "$root/etc/kernel-release"

# --- outputs ------------------------------------------------------------------
cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) \
  | gzip -9 > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$pkg $kver" > "$out/kernel.txt"
echo "build-kernel.sh: $out/vmlinuz ($kver), $out/initramfs.cpio.gz ($(du -k "$out/initramfs.cpio.gz" | cut -f1) KiB, ${#need[@]} modules)"
