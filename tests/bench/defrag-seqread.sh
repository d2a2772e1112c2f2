#!/bin/bash
# tests/bench/defrag-seqread.sh [MIB] [VSNAPFS]: what -o defrag buys a
# sequential read of a volume written at random (docs/design.md, D5 point 4;
# figures in docs/performance.md, "Issue 13 step 8: defrag").
#
# A MIB volume (default 256) is written once by random 4 KiB writes (fio,
# every block once, fixed seed), then read in 1 MiB reads three times, each
# after a new mount (map pages cold; the chunk files stay in the page cache:
# the page cache is not dropped, so what is compared is the daemon's work
# per run, not the disk).  Then a mount with -o defrag runs GC passes until
# one finds nothing to do, and the three reads are repeated.  Prints
# the index rows and MB/s before and after, and checks that the content's
# sha256 did not change.  Everything in one directory
# under /var/tmp, removed at exit; the daemon is stopped by its pid.
set -eu
MIB=${1:-256}
VS=${2:-build/vsnapfs}
D=$(mktemp -d /var/tmp/defrag-seqread.XXXXXX)
PID=
cleanup() {
	if [ -n "$PID" ]; then fusermount3 -u "$D/mnt" 2>/dev/null || true; wait "$PID" || true; fi
	rm -rf "$D"
}
trap cleanup EXIT
mkdir "$D/mnt"
mount_vs() {
	"$VS" -f "$@" "$D/store" "$D/mnt" 2>>"$D/log" &
	PID=$!
	for _ in $(seq 200); do mountpoint -q "$D/mnt" && return; sleep 0.05; done
	echo "no mount"; exit 1
}
umount_vs() { fusermount3 -u "$D/mnt"; wait "$PID"; PID=; }
rows() { sqlite3 "$D/store/index.sqlite" "SELECT count(*) FROM extent WHERE chunk <> 0"; }
# three timed reads, then the content's sha256 into $D/sum.$1
reads() {
	for r in 1 2 3; do
		mount_vs
		dd if="$D/mnt/v.img" of=/dev/null bs=1M 2>&1 | awk -v r=$r -v w="$1" \
			'/copied/ { print "  " w " read " r ": " $(NF-1) " " $NF }'
		umount_vs
	done
	mount_vs
	sha256sum < "$D/mnt/v.img" > "$D/sum.$1"
	umount_vs
}

mount_vs
fio --name=w --filename="$D/mnt/v.img" --size="${MIB}M" --rw=randwrite --bs=4k \
	--ioengine=psync --randrepeat=1 --randseed=1 --end_fsync=1 --output=/dev/null
umount_vs
echo "$MIB MiB written by random 4 KiB writes: $(rows) data rows"
reads before
mount_vs -o defrag,gc_interval=1
# passes every second while there is work; done once none has logged for 5 s
t0=$SECONDS last=$SECONDS n=0
while ((SECONDS - last < 5)); do
	((SECONDS - t0 < 300)) || { echo "defrag did not finish in 300 s"; exit 1; }
	m=$(grep -c 'gc: moved' "$D/log" || true)
	if ((m != n)); then n=$m last=$SECONDS; fi
	sleep 1
done
echo "defrag: $n pass(es) in $((last - t0)) s, $(grep -o 'moved [0-9]*' "$D/log" |
	awk '{ s += $2 } END { print s + 0 }') blocks moved for $((MIB * 256)) live:"
grep 'window(s) defragmented' "$D/log" | sed 's/^/  /'
umount_vs
echo "after defrag: $(rows) data rows"
reads after
cmp -s "$D/sum.before" "$D/sum.after" || { echo "the content changed"; exit 1; }
echo "content unchanged (sha256)"
