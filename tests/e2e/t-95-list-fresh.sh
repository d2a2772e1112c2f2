#!/bin/bash
# vsnapctl list is never behind the mount: right after a write that was not
# synced (the daemon holds it in its log until the next checkpoint, about a
# second later), list shows the volume's size and allocated bytes, because
# it first asks the daemon for a checkpoint over the control channel
# (docs/vsnapctl.md, "list: fresh through the daemon").  A mount whose
# daemon died is named as such, and the store read as it was left.
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
# a mount whose daemon died: said in one line, and the store is read as
# the daemon left it (its last writes may be in its log: said too)
vs_kill9 "$MNT" --keep-mount
with_deadline 60 "$VSNAPCTL" list --raw -n -b -o path,size "$MNT/fresh1.img" >"$T/list.txt" \
	2>"$T/list.err" || fail "list in a dead mount: $(cat "$T/list.err")"
assert_eq "$(cat "$T/list.txt")" "/fresh1.img 524288" "list in a dead mount"
assert_eq "$(head -n 1 "$T/list.err")" "vsnapctl: $MNT: in a vsnapfs mount whose daemon is gone (fusermount3 -u it, then mount the store again)" \
	"list in a dead mount"
grep -qF "was not cleanly unmounted: its last writes may be in its log" "$T/list.err" ||
	fail "list in a dead mount: $(cat "$T/list.err")"
# a name the kernel has not cached cannot even be resolved: the same words, exit 2
rc=0
with_deadline 60 "$VSNAPCTL" list "$MNT/never-seen.img" >"$T/list.txt" 2>"$T/list.err" || rc=$?
assert_eq $rc 2 "exit status of list of an uncached name in a dead mount"
assert_eq "$(cat "$T/list.err")" "vsnapctl: $MNT/never-seen.img: in a vsnapfs mount whose daemon is gone (fusermount3 -u it, then mount the store again)" \
	"list of an uncached name in a dead mount"
fusermount3 -u -z "$MNT"
pass
