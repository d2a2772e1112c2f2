#!/bin/bash
# The disk under the store fails a write, for real: the store's ext4 lives on
# a loop device whose backing file sits on a small tmpfs, so writeback fails
# once the tmpfs is full and fdatasync of a chunk file returns an error.
# After that no fsync may succeed, even once the device works again: Linux
# may have dropped the pages it could not write, and a retried fdatasync
# proves nothing about them (docs/design.md, "A failed fdatasync").  Changes
# (writes, zeros, hole punches, sizes) are refused, reads go on, and a new
# mount recovers to the last durable state with everything fsynced before the
# failure intact.
. "$(dirname "$0")/lib.sh"

need_root
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 missing (install e2fsprogs)"
command -v e2fsck >/dev/null || skip "e2fsck missing (install e2fsprogs)"

MNT=$T/mnt
FS=$T/fs
STORE=$FS/store

# a 512 MiB ext4 (journaled, data=ordered: data write errors still go to
# writeback and fail the daemon's fdatasync; without a journal a failed write
# of ext4's own metadata can clear an already fsynced file, which is beyond
# what any program above it can keep: docs/design.md, "What the host file
# system must give") in a sparse
# file on a 48 MiB tmpfs
vs_blkmount tmpfs "$T/tm" -t tmpfs -o size=48m
truncate -s 512M "$T/tm/dev.img"
mkfs.ext4 -q -F -E lazy_itable_init=1 "$T/tm/dev.img" ||
	fail "mkfs.ext4 on the tmpfs-backed image failed"
vs_losetup "$T/tm/dev.img"
vs_blkmount "$LOOPDEV" "$FS"

# with write-behind (docs/design.md): the 1 MiB writes below meet the
# failing device after they returned, which must poison the store the same way
vs_mount "$STORE" "$MNT" -o write_behind=4M
pid=$(vs_pid "$MNT")
head -c $((8 << 20)) /dev/urandom >"$T/good"
dd if="$T/good" of="$MNT/good.img" bs=1M conv=fsync status=none || fail "fsynced write before the failure"

# more than the tmpfs holds: writeback to the loop device fails
if dd if=/dev/urandom of="$MNT/big.img" bs=1M count=200 conv=fsync status=none 2>"$T/big.err"; then
	fail "200 MiB fsynced onto a device with 48 MiB of room: the fsync succeeded"
fi
note "the fsync that met the failure: $(cat "$T/big.err")"
# the sync's fdatasync fails, or before it a write that went behind;
# either poisons the store
FAILED='syncing chunk files failed|a write that had returned failed'
grep -qE "$FAILED" "$(vs_log "$MNT")" ||
	fail "the daemon did not log the failed sync: $(tail -n 5 "$(vs_log "$MNT")")"

# the device works again; a retried sync would now succeed, and must not be tried
mount -o remount,size=1g "$T/tm" || fail "growing the tmpfs failed"
expect_errno "Input/output error" dd if=/dev/zero of="$MNT/after.img" bs=4k count=1 conv=fsync status=none
head -c 4096 /dev/urandom >"$T/blk"
expect_errno "Input/output error" dd if="$T/blk" of="$MNT/good.img" bs=4k count=1 conv=notrunc \
	oflag=direct status=none
expect_errno "Input/output error" dd if=/dev/zero of="$MNT/good.img" bs=4k count=1 conv=notrunc \
	oflag=direct status=none
expect_errno "Input/output error" truncate -s 4M "$MNT/good.img"
expect_errno "Input/output error" fallocate -p -o 0 -l 4096 "$MNT/good.img"
expect_errno "Input/output error" sync "$MNT/good.img"
with_deadline 60 cmp "$T/good" "$MNT/good.img" || fail "fsynced data unreadable after the failure"
_vs_alive "$pid" || fail "the daemon died after the failed sync"
[ "$(grep -cE "$FAILED" "$(vs_log "$MNT")")" -eq 1 ] ||
	fail "the failed sync was logged more than once"
if grep -q "ino [0-9]*: Input/output error" "$(vs_log "$MNT")"; then
	fail "every refused call is logged: $(grep -c "Input/output error" "$(vs_log "$MNT")") lines"
fi
# vsnapctl status says so, with what to do; metrics and iostat count it
"$VSNAPCTL" status "$MNT" >"$T/status.out" 2>&1 || fail "status after the failed sync: $(cat "$T/status.out")"
grep -qE '^    failed: +yes$' "$T/status.out" && grep -q '^SYNC FAILED' "$T/status.out" &&
	grep -q '^action: .*unmount' "$T/status.out" ||
	fail "status does not show the failed sync and what to do: $(cat "$T/status.out")"
"$VSNAPCTL" metrics "$MNT" >"$T/m.prom" 2>&1 || fail "metrics after the failed sync: $(cat "$T/m.prom")"
grep -qx "vsnapfs_sync_failed{store=\"$STORE\"} 1" "$T/m.prom" || fail "metrics: vsnapfs_sync_failed is not 1"
grep -qE "^vsnapfs_volume_errors_total\{store=\"$STORE\",volume=\"/good.img\",op=\"write\"\} [2-9]" \
	"$T/m.prom" || fail "metrics: the refused writes of good.img: $(grep good.img "$T/m.prom" | head -n 8)"

# unmount: the final flush fails, and the daemon says so in its exit status
fusermount3 -u "$MNT" || fail "fusermount3 -u $MNT"
_vs_wait_pid "$pid" $((30 * VS_TIME_SCALE)) || fail "daemon still running 30 s after unmount"
_vs_forget_pid "$pid"
[ "$_VS_STATUS" -ne 0 ] || fail "the daemon exited with status 0 after its final flush failed"
grep -q "final flush failed" "$(vs_log "$MNT")" || fail "no word of the failed final flush"
# (its status cannot tell a sanitizer's report at exit from the failed flush)
if grep -q "Sanitizer" "$(vs_log "$MNT")"; then
	fail "a sanitizer reported: $(grep -A5 Sanitizer "$(vs_log "$MNT")" | head -c 1500)"
fi

# the host file system needs its check after a write error; then mount again
vs_blkumount "$FS"
rc=0
e2fsck -fy "$LOOPDEV" >"$T/fsck.out" 2>&1 || rc=$?
[ $rc -le 1 ] || fail "e2fsck exited $rc: $(tail -n 5 "$T/fsck.out")"
vs_blkmount "$LOOPDEV" "$FS"
vs_mount "$STORE" "$MNT"
grep -q "was not cleanly unmounted: recovered" "$(vs_log "$MNT")" ||
	fail "the new mount did not recover: $(cat "$(vs_log "$MNT")")"
with_deadline 60 cmp "$T/good" "$MNT/good.img" || fail "fsynced data lost across the failure"
"$VSNAPCTL" check "$MNT" >"$T/check.out" 2>&1 || fail "check after recovery: $(cat "$T/check.out")"
head -c $((1 << 20)) /dev/urandom >"$T/new"
dd if="$T/new" of="$MNT/new.img" bs=1M conv=fsync status=none || fail "fsync after the new mount"
vs_umount "$MNT"
vs_mount "$STORE" "$MNT"
cmp "$T/new" "$MNT/new.img" || fail "data written after recovery lost across a clean remount"
vs_umount "$MNT"
pass "failed sync: $(head -c 80 "$T/big.err"); later fsyncs EIO, recovered by a new mount"
