#!/bin/bash
# The store's file system fills up: the writer gets ENOSPC (no hang, no
# crash), earlier data stays readable, and after deleting a volume the space
# comes back (the daemon's garbage collector) and writes work again.
. "$(dirname "$0")/lib.sh"

need_root
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 missing (install e2fsprogs)"

MiB=$((1 << 20))
SMALL=$T/small
MNT=$T/mnt

truncate -s 256M "$T/fs.img"
mkfs.ext4 -q -F "$T/fs.img" || fail "mkfs.ext4 on an image file failed"
vs_losetup "$T/fs.img"
vs_blkmount "$LOOPDEV" "$SMALL"
STORE=$SMALL/store
avail() { df -B1 --output=avail "$SMALL" | tail -n 1 | tr -d ' '; }

vs_mount "$STORE" "$MNT" -o write_behind=4M    # its 1 MiB writes go behind: the reserve must hold
pid=$(vs_pid "$MNT")

# data written (and fsynced) before the file system fills
head -c $((16 * MiB)) /dev/urandom >"$T/early"
dd if="$T/early" of="$MNT/early.img" bs=1M conv=fsync status=none

# Twice: fill the file system, check, delete, wait for the space, write.
for round in 1 2; do
	# fill it: the writer must get ENOSPC, within the deadline
	note "free on the store's file system: $(avail) bytes"
	expect_errno "No space left on device" \
		timeout 120 dd if=/dev/urandom of="$MNT/fill$round.img" bs=1M conv=fsync status=none
	note "fill$round.img stopped at $(stat -c %s "$MNT/fill$round.img") bytes; free: $(avail) bytes"
	_vs_alive "$pid" || { _vs_show_log "$(vs_log "$MNT")"; fail "daemon died on ENOSPC"; }
	with_deadline 10 ls "$MNT" >/dev/null || fail "ls on the mount fails after ENOSPC"
	with_deadline 60 cmp "$T/early" "$MNT/early.img" || fail "fsynced data unreadable after ENOSPC"
	with_deadline 60 cat "$MNT/fill$round.img" >/dev/null || fail "fill$round.img unreadable after ENOSPC"
	# a second writer also gets a clean ENOSPC, not a hang
	expect_errno "No space left on device" \
		timeout 60 dd if=/dev/urandom of="$MNT/more.img" bs=1M count=64 conv=fsync status=none
	_vs_alive "$pid" || { _vs_show_log "$(vs_log "$MNT")"; fail "daemon died on a second ENOSPC"; }

	# delete the volumes that filled it: space must come back within 30 s,
	# at least enough for the writes below (chunk files that still hold live
	# blocks may stay; the note says how much came back of what was deleted)
	before=$(avail)
	deleted=$((($(stat -c %b "$MNT/fill$round.img") + $(stat -c %b "$MNT/more.img")) * 512))
	rm "$MNT/fill$round.img" "$MNT/more.img"
	freed=0
	for ((i = 0; i < 60; i++)); do
		freed=$(($(avail) - before))
		[ $freed -ge $((32 * MiB)) ] && break
		sleep 0.5
	done
	sleep 2
	freed=$(($(avail) - before))
	note "round $round: deleted $deleted allocated bytes; $freed bytes free again after $((i / 2 + 2)) s"
	[ $freed -ge $((32 * MiB)) ] ||
		fail "deleting the volumes that filled it ($deleted bytes) freed only $freed bytes of the store's file system in 30 s (garbage collection)"

	# and writes work again
	head -c $((16 * MiB)) /dev/urandom >"$T/late$round"
	with_deadline 60 dd if="$T/late$round" of="$MNT/late$round.img" bs=1M conv=fsync status=none ||
		fail "a 16 MiB write after freeing space failed"
	cmp "$T/late$round" "$MNT/late$round.img" || fail "late$round.img reads back wrong"
done
cmp "$T/early" "$MNT/early.img" || fail "early.img reads back wrong at the end"
cmp "$T/late1" "$MNT/late1.img" || fail "late1.img reads back wrong at the end"
vs_umount "$MNT"
vs_blkumount "$SMALL"
vs_lodetach "$LOOPDEV"
pass
