#!/bin/bash
# tests/bench/first-read.sh GIB NEW_VSNAPFS BASE_VSNAPFS: the first 4 KiB read
# after a mount and the daemon's peak RSS, two daemons alternated on one
# store.  Writes a GIB volume sequentially (64 MiB of random bytes repeated,
# with NEW), then three rounds of: mount, one 4 KiB O_DIRECT read in the
# middle, VmHWM, a read of the whole volume (4 MiB, O_DIRECT), VmHWM,
# unmount; each daemon.  Needs fusermount3, about GIB of space in /var/tmp;
# run as root to drop the page cache between mounts.  Removes its directory.
set -u
GIB=${1:-8}
NEW=${2:?the vsnapfs binary to measure}
BASE=${3:?the vsnapfs binary to compare with}
D=$(mktemp -d /var/tmp/first-read.XXXXXX)
mkdir -p $D/mnt
head -c $((64 << 20)) /dev/urandom > $D/pat
mount_vs() { "$1" -f $D/store $D/mnt 2>>$D/log & PID=$!; for i in $(seq 200); do mountpoint -q $D/mnt && return; sleep 0.05; done; echo "no mount"; exit 1; }
umount_vs() { fusermount3 -u $D/mnt; wait $PID; }
mount_vs $NEW
touch $D/mnt/disk.img
t0=$(date +%s.%N)
for ((i = 0; i < GIB * 16; i++)); do
	dd if=$D/pat of=$D/mnt/disk.img bs=1M seek=$((i * 64)) conv=notrunc status=none
done
sync $D/mnt/disk.img
echo "wrote $GIB GiB in $(echo "$(date +%s.%N) - $t0" | bc) s"
umount_vs
for round in 1 2 3; do
	for which in base new; do
		bin=$BASE; [ $which = new ] && bin=$NEW
		sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
		t0=$(date +%s.%N)
		mount_vs $bin
		t1=$(date +%s.%N)
		dd if=$D/mnt/disk.img of=/dev/null bs=4k count=1 skip=$(( (GIB << 18) / 2 )) iflag=direct status=none
		t2=$(date +%s.%N)
		hwm1=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
		dd if=$D/mnt/disk.img of=/dev/null bs=4M iflag=direct status=none
		t3=$(date +%s.%N)
		hwm2=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
		umount_vs
		printf "%s round %d: mount %.3f s, first 4 KiB read %.1f ms, VmHWM after it %d KiB; full read %.1f s, VmHWM after %d KiB\n" \
			$which $round $(echo "$t1 - $t0" | bc) $(echo "($t2 - $t1) * 1000" | bc) $hwm1 $(echo "$t3 - $t2" | bc) $hwm2
	done
done
rm -rf $D
