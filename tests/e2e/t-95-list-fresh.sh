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
	with_deadline 60 "$VSNAPCTL" list --json "$MNT/fresh$i.img" >"$T/list.json" ||
		fail "vsnapctl list failed: $(cat "$T/list.json")"
	tr -d '\n' <"$T/list.json" | grep -qF "{\"path\":\"/fresh$i.img\",\"kind\":\"volume\",\"size\":$((i * 512 * 1024)),\"allocated\":$((i * 512 * 1024)),\"exclusive\":$((i * 512 * 1024))," ||
		fail "list right after writing fresh$i.img: $(cat "$T/list.json")"
done
vs_umount "$MNT"
pass
