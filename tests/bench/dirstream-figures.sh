#!/bin/bash
# The directory stream figures of docs/performance.md ("Directory streams"):
# not part of make check or make bench (it writes about 9 GiB under
# /var/tmp unless TMPDIR says otherwise).  Run as root from the tree:
# B=build tests/bench/dirstream-figures.sh
export TMPDIR=${TMPDIR:-/var/tmp}
. "$(dirname "$0")/../e2e/lib.sh"
M=$((1024*1024)); G=$((1024*M))
S1=$T/s1 S2=$T/s2 S3=$T/s3 M1=$T/m1 M2=$T/m2 M3=$T/m3
vs_mount $S1 $M1; vs_mount $S2 $M2; vs_mount $S3 $M3
t() { local s=$(date +%s.%N); "$@"; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }
# a VM directory: four 1 GiB volumes of random data and its XML
mkdir $M1/vm
for i in 0 1 2 3; do
	dd if=/dev/urandom of=$M1/vm/disk$i.img bs=4M count=256 status=none conv=fsync
done
echo '<domain/>' >$M1/vm/vm.xml
mkdir $M1/vm/.snapshots/mon
sync
n=$($VSNAPCTL send -n $M1/vm/.snapshots/mon)
a=$(t sh -c "$VSNAPCTL send $M1/vm/.snapshots/mon | $VSNAPCTL receive $M2/vm >/dev/null")
b=$(t sh -c "cp -r $M1/vm/.snapshots/mon $M3/vm && sync $M3/vm/disk3.img")
echo "full: send|receive ${a}s ($n); cp -r ${b}s"
for i in 0 1 2 3; do cmp $M1/vm/disk$i.img $M2/vm/disk$i.img || echo "disk$i differs"; done
# 1% of each volume (10.24 MiB) in 4, 16 and 64 KiB writes at random
for i in 0 1 2 3; do
	done=0
	while [ $done -lt $((G / 100)) ]; do
		n=$((4096 << (RANDOM % 3 * 2)))
		off=$(( ((RANDOM << 15 | RANDOM) % (G / 4096 - 16)) * 4096 ))
		head -c $n /dev/urandom | dd of=$M1/vm/disk$i.img bs=$n seek=$off oflag=seek_bytes \
			conv=notrunc status=none
		done=$((done + n))
	done
done
sync
mkdir $M1/vm/.snapshots/tue
d=0; for i in 0 1 2 3; do
	d=$((d + $($VSNAPCTL diff $M1/vm/.snapshots/mon/disk$i.img $M1/vm/.snapshots/tue/disk$i.img |
		sed -n 's/.*: \([0-9]*\) byte(s).*/\1/p' | tail -1)))
done
n=$($VSNAPCTL send -n --from @mon $M1/vm/.snapshots/tue)
i=$(t sh -c "$VSNAPCTL send --from @mon $M1/vm/.snapshots/tue | $VSNAPCTL receive $M2/vm >/dev/null")
echo "1%: send|receive ${i}s ($n; diff total $d)"
for i in 0 1 2 3; do cmp $M1/vm/disk$i.img $M2/vm/disk$i.img || echo "disk$i differs"; done
pass
