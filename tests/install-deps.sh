#!/bin/bash
# Make sure everything `make check` needs is on this machine (Debian 12).
#
# All present: print nothing, exit 0.  Something missing: as root, install it
# with apt-get; otherwise say what to install and exit 1.  Also makes sure
# /dev/fuse exists and loop devices can be set up (the e2e tests need both).
set -euo pipefail

# Packages every build or test needs.  python3 is deliberately absent: no
# test uses it.  kmod is only needed when a kernel module must be loaded, and
# is added below in that case.
pkgs=(build-essential pkg-config libfuse3-dev fuse3 libsqlite3-dev sqlite3
      libxxhash-dev libzstd-dev libsmartcols-dev libcriterion-dev qemu-utils fio e2fsprogs util-linux
      coreutils xz-utils)

is_root() { [ "$(id -u)" -eq 0 ]; }

installed() {
	local st
	st=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
	[ "$st" = "install ok installed" ]
}

loop_ok() {
	[ -e /dev/loop-control ] && losetup -f >/dev/null 2>&1
}

need_fuse=0
need_loop=0
[ -c /dev/fuse ] || need_fuse=1
if is_root && ! loop_ok; then need_loop=1; fi
if [ $need_fuse = 1 ] || [ $need_loop = 1 ]; then
	pkgs+=(kmod)
fi

missing=()
for p in "${pkgs[@]}"; do
	installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
	if ! is_root; then
		echo "install-deps: missing Debian packages: ${missing[*]}" >&2
		echo "install-deps: run as root: apt-get install --no-install-recommends ${missing[*]}" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ $need_fuse = 1 ]; then
	if ! is_root; then
		echo "install-deps: /dev/fuse is missing; as root run: modprobe fuse" >&2
		exit 1
	fi
	modprobe fuse || true
	if [ ! -c /dev/fuse ]; then
		echo "install-deps: /dev/fuse is still missing after modprobe fuse" >&2
		exit 1
	fi
fi

if [ $need_loop = 1 ]; then
	modprobe loop || true
	if ! loop_ok; then
		echo "install-deps: loop devices unavailable (losetup -f fails) after modprobe loop" >&2
		exit 1
	fi
fi
exit 0
