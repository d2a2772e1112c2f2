#!/bin/bash
# `make demo`: a store in ./demo-store mounted on ./demo-mnt, with a thin
# 20 GiB volume in it, and a few commands to try.
#
#   tests/demo.sh BUILD_DIR
#
# Safe to run again: an existing store, mount and volume are reused.
set -euo pipefail

B=${1:-build}
VSNAPFS=$B/vsnapfs
VSNAPCTL=$B/vsnapctl
[ -x "$VSNAPFS" ] || { echo "demo: $VSNAPFS not built (run make)" >&2; exit 1; }

STORE=demo-store
MNT=demo-mnt
mkdir -p "$MNT"

if mountpoint -q "$MNT"; then
	echo "demo: $MNT is already mounted"
else
	# daemonizes once the file system is mounted
	"$VSNAPFS" "$STORE" "$MNT"
	for ((i = 0; i < 100; i++)); do
		mountpoint -q "$MNT" && break
		sleep 0.1
	done
	mountpoint -q "$MNT" || { echo "demo: $MNT did not come up" >&2; exit 1; }
fi

if [ ! -e "$MNT/vm1.img" ]; then
	truncate -s 20G "$MNT/vm1.img"
	# a little data: a label at the start and 4 MiB at 1 GiB
	printf 'vsnapfs demo volume\n' | dd of="$MNT/vm1.img" conv=notrunc status=none
	head -c $((4 << 20)) /dev/urandom |
		dd of="$MNT/vm1.img" bs=1M seek=1024 conv=notrunc,fsync iflag=fullblock status=none
fi

echo
echo "\$ ls -ls $MNT        (first column: KiB allocated; vm1.img is a 20 GiB thin disk)"
ls -ls "$MNT"
echo
echo "\$ df -h $MNT"
df -h "$MNT"
cat <<EOF

Things to try:
  qemu-img info $MNT/vm1.img                  a raw disk image
  qemu-img map -f raw $MNT/vm1.img            only the written ranges hold data
  truncate -s 100G $MNT/vm2.img               a new thin volume, instantly
  cp big.raw $MNT/imported.img                import: holes and zero blocks take no space
  mkdir $MNT/.snapshots/vm1.img@first         snapshot one volume
  cp $MNT/.snapshots/vm1.img@first/vm1.img $MNT/clone.img   linked clone
  $VSNAPCTL list $MNT                    volumes, sizes, allocated bytes
  qemu-system-x86_64 -drive file=$MNT/vm1.img,format=raw,cache=none ...

Unmount (flushes everything):
  fusermount3 -u $MNT
EOF
