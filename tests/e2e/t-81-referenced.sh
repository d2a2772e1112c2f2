#!/bin/bash
# st_blocks of a live volume counts every block it references, its own and
# those it shares with its snapshots and origin (SPEC, "File semantics"; the
# Linux convention for reflinked files), so that du, qemu-img info and
# libvirt show a disk's real allocation after a snapshot, a clone and a
# revert.  Checked with du and qemu-img info through each of those, a write
# over shared blocks, a punch, a truncate, the deletion of the snapshot
# (a merge), a remount and a crash of the daemon (SIGKILL) after an fsync.
. "$(dirname "$0")/lib.sh"

command -v qemu-img >/dev/null || skip "qemu-img missing (install qemu-utils)"

STORE=$T/store MNT=$T/mnt
MiB=$((1 << 20))
mkdir -p "$MNT"
vs_mount "$STORE" "$MNT"

# alloc FILE: bytes st_blocks says (du --block-size=1 FILE)
alloc() { du --block-size=1 "$1" | cut -f1; }

# expect_alloc FILE MIB WHAT: du and qemu-img info both say MIB MiB.  The
# kernel may keep a file's attributes for up to a second (attr_timeout):
# wait that long at most for a change to show.
expect_alloc() {
	local f=$1 want=$(($2 * MiB)) what=$3 got qi i
	for i in $(seq 1 $((30 * VS_TIME_SCALE))); do
		got=$(alloc "$f")
		[ "$got" = "$want" ] && break
		sleep 0.1
	done
	[ "$got" = "$want" ] || fail "$what: du says $got bytes, want $want"
	qi=$(qemu-img info -U --output=json "$f" | sed -n 's/.*"actual-size": \([0-9]*\).*/\1/p')
	[ "$qi" = "$want" ] || fail "$what: qemu-img info says actual-size $qi, want $want"
	note "$what: $(($2)) MiB"
}

head -c $((8 * MiB)) /dev/urandom >"$T/data"
dd if="$T/data" of="$MNT/vm.img" bs=1M oflag=direct status=none
expect_alloc "$MNT/vm.img" 8 "8 MiB written"

mkdir "$MNT/.snapshots/vm.img@s"
expect_alloc "$MNT/vm.img" 8 "after a snapshot (all of it shared)"

dd if=/dev/urandom of="$MNT/vm.img" bs=1M count=1 seek=2 conv=notrunc,fsync status=none
expect_alloc "$MNT/vm.img" 8 "1 MiB of shared blocks rewritten"
dd if=/dev/urandom of="$MNT/vm.img" bs=1M count=1 seek=15 conv=notrunc,fsync status=none
expect_alloc "$MNT/vm.img" 9 "1 MiB written past the end (a hole between)"
fallocate -p -o $((4 * MiB)) -l $((2 * MiB)) "$MNT/vm.img"
expect_alloc "$MNT/vm.img" 7 "2 MiB of shared blocks punched"

cp "$MNT/.snapshots/vm.img@s/vm.img" "$MNT/clone.img"
cmp "$MNT/clone.img" "$T/data" || fail "the clone differs from the snapshot"
expect_alloc "$MNT/clone.img" 8 "a linked clone of the snapshot"

truncate -s $((3 * MiB)) "$MNT/vm.img"
expect_alloc "$MNT/vm.img" 3 "truncated to 3 MiB (shared and own blocks cut)"

cp "$MNT/.snapshots/vm.img@s/vm.img" "$MNT/vm.img"
cmp "$MNT/vm.img" "$T/data" || fail "the reverted volume differs from the snapshot"
expect_alloc "$MNT/vm.img" 8 "reverted to the snapshot"

dd if=/dev/zero of="$MNT/clone.img" bs=1M count=1 seek=0 conv=notrunc,fsync status=none
expect_alloc "$MNT/clone.img" 7 "1 MiB of the clone zeroed"

# the snapshot deleted: its node stays, internal, while two volumes (the
# reverted one and the clone) inherit from it; nothing they show changes
rmdir "$MNT/.snapshots/vm.img@s"
expect_alloc "$MNT/vm.img" 8 "the snapshot deleted"
expect_alloc "$MNT/clone.img" 7 "the clone, the snapshot deleted"

vs_umount "$MNT"
vs_mount "$STORE" "$MNT"
expect_alloc "$MNT/vm.img" 8 "after a remount"
expect_alloc "$MNT/clone.img" 7 "the clone after a remount"

# the clone deleted: the old snapshot's node has one child left and is
# merged into it in the background (its rows become vm.img's own); wait
# for the nodes to go, then vm.img still references the same blocks
nodes() { sqlite3 "$STORE/index.sqlite" "SELECT count(*) FROM node"; }
n0=$(nodes)
rm "$MNT/clone.img"
for i in $(seq 1 $((100 * VS_TIME_SCALE))); do
	[ "$(nodes)" -le $((n0 - 2)) ] && break
	sleep 0.1
done
[ "$(nodes)" -le $((n0 - 2)) ] || fail "the clone's node and the snapshot's were not released within 10 s ($n0 -> $(nodes))"
expect_alloc "$MNT/vm.img" 8 "after the snapshot's node was merged into it"

# a crash after an fsync: the count the acknowledged writes left
mkdir "$MNT/.snapshots/vm.img@t"
dd if=/dev/urandom of="$MNT/vm.img" bs=1M count=3 seek=6 conv=notrunc,fsync status=none
expect_alloc "$MNT/vm.img" 9 "3 MiB rewritten and past the end"
vs_kill9 "$MNT"
vs_mount "$STORE" "$MNT"
expect_alloc "$MNT/vm.img" 9 "after a SIGKILL of the daemon"
vs_umount "$MNT"
"$VSNAPCTL" check "$STORE" >"$T/check" 2>&1 || { cat "$T/check"; fail "vsnapctl check"; }
pass
