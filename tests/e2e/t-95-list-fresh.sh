#!/bin/bash
# vsnapctl list is never behind the mount: right after a write that was not
# synced (the daemon holds it in its log until the next checkpoint, about a
# second later), list shows the volume's size and allocated bytes, because
# it first asks the daemon for a checkpoint over the control channel
# (docs/design.md, "vsnapctl list: fresh through the daemon").
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
STORE=$T/store
MNT=$T/mnt
vs_mount "$STORE" "$MNT" -o block_size=4096

for i in 1 2 3; do
	dd if=/dev/urandom of="$MNT/fresh$i.img" bs=64K count=$((8 * i)) status=none
	with_deadline 60 "$VSNAPCTL" list --raw -n -b -o path,size,allocated,exclusive "$MNT/fresh$i.img" \
		>"$T/list.txt" || fail "vsnapctl list failed: $(cat "$T/list.txt")"
	bytes=$((i * 512 * 1024))
	assert_eq "$(cat "$T/list.txt")" "/fresh$i.img $bytes $bytes $bytes" \
		"path, size, allocated and exclusive bytes listed right after writing fresh$i.img"
done
vs_umount "$MNT"
pass
