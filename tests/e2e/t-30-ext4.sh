#!/bin/bash
# A volume as a block device: loop device (direct I/O when the kernel takes
# it), ext4 on it, files written, fsck clean, discard (fstrim) frees space in
# the volume, and after a vsnapfs remount the files are all still right.
. "$(dirname "$0")/lib.sh"

need_root
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 missing (install e2fsprogs)"

STORE=$T/store
MNT=$T/mnt
EXT=$T/ext4
MiB=$((1 << 20))
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
note "seed $SEED"
RANDOM=$SEED

vs_mount "$STORE" "$MNT"
VOL=$MNT/disk.img
truncate -s 512M "$VOL"

attach() {
	vs_losetup_dio "$VOL" "$@"
	note "loop $LOOPDEV, direct I/O: $(cat "/sys/block/${LOOPDEV#/dev/}/loop/dio" 2>/dev/null || echo '?')"
}

attach
mkfs.ext4 -q -F "$LOOPDEV" || fail "mkfs.ext4 on $LOOPDEV (over a volume) failed"
vs_blkmount "$LOOPDEV" "$EXT"

# a few hundred files of random sizes in a few directories
nfiles=300
for ((i = 0; i < nfiles; i++)); do
	d=$EXT/dir$((i % 7))
	[ -d "$d" ] || mkdir "$d"
	case $((RANDOM % 10)) in
	0) size=0 ;;
	1 | 2 | 3) size=$((RANDOM % 4096 + 1)) ;;
	4 | 5 | 6 | 7) size=$((RANDOM * 8 % 262144 + 1)) ;;
	*) size=$(((RANDOM * 32768 + RANDOM) % (2 * MiB) + 1)) ;;
	esac
	head -c $size /dev/urandom >"$d/f$i"
done
(cd "$EXT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/sums"
assert_eq "$(wc -l <"$T/sums")" $nfiles "number of files written"

# discard: a deleted 64 MiB file must give its space back to the volume
head -c $((64 * MiB)) /dev/urandom >"$EXT/big"
sync -f "$EXT"
alloc_before=$(($(stat -c %b "$VOL") * 512))
rm "$EXT/big"
sync -f "$EXT"                       # ext4 trims only blocks freed by a committed transaction
fstrim "$EXT" || fail "fstrim on ext4 over the volume failed"
alloc_after=$(($(stat -c %b "$VOL") * 512))
note "volume allocation: $alloc_before bytes with big, $alloc_after after rm + fstrim"
[ $((alloc_before - alloc_after)) -ge $((48 * MiB)) ] ||
	fail "fstrim freed $((alloc_before - alloc_after)) bytes of the volume, expected >= 48 MiB"

vs_blkumount "$EXT"
e2fsck -fn "$LOOPDEV" >"$T/fsck" 2>&1 || fail "e2fsck -fn not clean: $(cat "$T/fsck")"
vs_lodetach "$LOOPDEV"

# ---- remount vsnapfs, check everything again --------------------------------
vs_umount "$MNT"
vs_mount "$STORE" "$MNT"
attach -r
e2fsck -fn "$LOOPDEV" >"$T/fsck" 2>&1 || fail "e2fsck -fn after remount not clean: $(cat "$T/fsck")"
vs_blkmount "$LOOPDEV" "$EXT" -o ro
(cd "$EXT" && sha256sum --quiet -c "$T/sums") || fail "files differ after a vsnapfs remount"
[ ! -e "$EXT/big" ] || fail "deleted file is back"
vs_blkumount "$EXT"
vs_lodetach "$LOOPDEV"
vs_umount "$MNT"
pass
