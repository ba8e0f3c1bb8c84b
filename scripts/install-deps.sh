#!/usr/bin/env bash
# Installs the Debian packages memdedup needs to build, test, demo or benchmark,
# but only those that are missing. Usage: install-deps.sh [build|test|guest|all]
set -euo pipefail
want=${1:-all}
pkgs_build="gcc make pkg-config libjansson-dev libxxhash-dev liburing-dev"
pkgs_guest="qemu-system-x86 busybox-static cpio kmod e2fsprogs zstd xz-utils jq strace procps locales"
pkgs_plot="gnuplot-nox"
case "$want" in
  build) pkgs="$pkgs_build" ;;
  test|guest) pkgs="$pkgs_build $pkgs_guest" ;;
  all) pkgs="$pkgs_build $pkgs_guest $pkgs_plot" ;;
  *) echo "install-deps.sh: unknown set '$want' (build, test, guest or all)" >&2; exit 2 ;;
esac
missing=()
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: missing packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "install-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
