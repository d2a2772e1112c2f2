#!/bin/bash
# The send/receive figures of docs/performance.md ("Send and receive"),
# issue 14's closing note: not part of make check or make bench (it writes
# about 5 GiB, under /var/tmp unless TMPDIR says otherwise: a tmpfs /tmp would
# hold it in memory).  Run as root from the tree: B=build tests/bench/send-figures.sh
export TMPDIR=${TMPDIR:-/var/tmp}
. "$(dirname "$0")/../e2e/lib.sh"
M=$((1024*1024)); G=$((1024*M))
S1=$T/s1 S2=$T/s2 S3=$T/s3 M1=$T/m1 M2=$T/m2 M3=$T/m3
vs_mount $S1 $M1; vs_mount $S2 $M2; vs_mount $S3 $M3
t() { local s=$(date +%s.%N); "$@"; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }
# 1. 4 GiB volume: send | receive vs cp between mounts
dd if=/dev/urandom of=$M1/big.img bs=4M count=1024 status=none conv=fsync
mkdir $M1/.snapshots/big.img@a
sync
a=$(t sh -c "$VSNAPCTL send $M1/.snapshots/big.img@a/big.img | $VSNAPCTL receive $M2/big.img >/dev/null")
b=$(t sh -c "cp $M1/.snapshots/big.img@a/big.img $M3/big.img && sync $M3/big.img")
echo "4GiB: send|receive ${a}s cp ${b}s"
cmp $M1/big.img $M2/big.img && echo same
rm -f $M2/big.img $M3/big.img
# 1b. the same stream cut after 2 GiB (receive keeps what it verified), then resumed
rmdir $M2/.snapshots/big.img@a
$VSNAPCTL send $M1/.snapshots/big.img@a/big.img | head -c $((2 * G)) |
	$VSNAPCTL receive $M2/big.img 2>$T/cut.err && echo "the cut stream was received?"
tok=$($VSNAPCTL receive --token $M2/big.img)
r=$(t sh -c "$VSNAPCTL send -v --resume $tok $M1/.snapshots/big.img@a/big.img 2>$T/rest.txt | $VSNAPCTL receive --resume $M2/big.img >/dev/null")
echo "4GiB cut at 2 GiB, resumed: ${r}s, sent again: $(cat $T/rest.txt)"
cmp $M1/big.img $M2/big.img && echo same
rm -f $M2/big.img
# 2. 16 GiB volume, 1% changed
truncate -s $((16*G)) $M1/v16.img
# 1 GiB of data scattered so that the volume is not empty
for i in $(seq 0 63); do dd if=/dev/urandom of=$M1/v16.img bs=1M count=16 seek=$((i*256)) conv=notrunc status=none; done
sync $M1/v16.img
mkdir $M1/.snapshots/v16.img@base
# 1% of 16 GiB = 164 MiB in 4, 16 and 64 KiB writes at random
done=0
while [ $done -lt $((164 * M)) ]; do
	n=$((4096 << (RANDOM % 3 * 2)))         # 4, 16 or 64 KiB
	off=$(( ((RANDOM << 15 | RANDOM) % (16 * G / 4096 - 16)) * 4096 ))
	head -c $n /dev/urandom | dd of=$M1/v16.img bs=$n seek=$off oflag=seek_bytes conv=notrunc status=none
	done=$((done + n))
done
sync $M1/v16.img
mkdir $M1/.snapshots/v16.img@one
d=$(t sh -c "$VSNAPCTL diff $M1/.snapshots/v16.img@base/v16.img $M1/.snapshots/v16.img@one/v16.img > $T/diff.txt")
echo "diff 16GiB 1%: ${d}s $(tail -1 $T/diff.txt)"
f=$(t sh -c "$VSNAPCTL send $M1/.snapshots/v16.img@base/v16.img > $T/full.vs")
i=$(t sh -c "$VSNAPCTL send --from @base $M1/.snapshots/v16.img@one/v16.img > $T/incr.vs")
echo "16GiB: full send ${f}s $(stat -c %s $T/full.vs) bytes; incremental 1% ${i}s $(stat -c %s $T/incr.vs) bytes"
rm -f $T/full.vs $T/incr.vs
# 3. diff with 1000 snapshots in between
for k in $(seq 1 1000); do
	dd if=/dev/urandom of=$M1/v16.img bs=4k count=1 seek=$((RANDOM * 100)) conv=notrunc status=none
	mkdir $M1/.snapshots/v16.img@k$k
done
d2=$(t sh -c "$VSNAPCTL diff $M1/.snapshots/v16.img@one/v16.img $M1/.snapshots/v16.img@k1000/v16.img > $T/diff2.txt")
echo "diff across 1000 snapshots: ${d2}s $(tail -1 $T/diff2.txt)"
i2=$(t sh -c "$VSNAPCTL send --from @one $M1/.snapshots/v16.img@k1000/v16.img > $T/incr2.vs")
echo "incremental across 1000 snapshots: ${i2}s $(stat -c %s $T/incr2.vs) bytes"
pass
