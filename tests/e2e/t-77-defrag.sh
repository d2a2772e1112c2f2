#!/bin/bash
# -o defrag (docs/design.md, D5 point 4): a volume written at random has a
# row per block; GC rewrites each window of 256 blocks as one run, also in
# the node a snapshot and a linked clone hold.  Every file reads back what
# its model says after the passes and after a remount, vsnapctl check is
# clean, and the index ends with a few rows where it had thousands.
. "$(dirname "$0")/lib.sh"
command -v perl >/dev/null || skip "perl missing (writes the blocks in random order)"
command -v sqlite3 >/dev/null || skip "sqlite3 missing (counts the index rows)"

STORE=$T/store MNT=$T/mnt
mkdir -p "$MNT"
NB=2048                                 # 8 MiB: 8 windows of 256 blocks

# scatter SRC DST MODEL SEED: write the 4 KiB blocks of SRC into DST and MODEL
# at their offsets, one write each, in an order shuffled with SEED.
scatter() {
	perl -e '
		my ($src, $dst, $model, $seed) = @ARGV;
		open(my $s, "<:raw", $src) or die "$src: $!";
		open(my $d, "+<:raw", $dst) or die "$dst: $!";
		open(my $m, "+<:raw", $model) or die "$model: $!";
		my $n = (-s $src) / 4096;
		my @o = (0 .. $n - 1);
		srand($seed);
		for (my $i = $#o; $i > 0; $i--) { my $j = int(rand($i + 1)); @o[$i, $j] = @o[$j, $i]; }
		for my $b (@o) {
			my $buf;
			sysseek($s, $b * 4096, 0); sysread($s, $buf, 4096) == 4096 or die "read: $!";
			for my $f ($d, $m) {
				sysseek($f, $b * 4096, 0); syswrite($f, $buf) == 4096 or die "write: $!";
			}
		}' "$@"
}
rows() { sqlite3 "$STORE/index.sqlite" "SELECT count(*) FROM extent WHERE chunk <> 0"; }
check_all() {
	local f
	for f in v.img c.img .snapshots/v.img@s/v.img; do
		cmp "$MNT/$f" "$T/model.${f//\//_}" || fail "$1: $f differs from its model"
	done
}

# v.img written at random, then frozen by a snapshot and shared by a clone;
# v.img and c.img each rewrite a few blocks of their own afterwards
vs_mount "$STORE" "$MNT" -o gc_interval=3600
head -c $((NB * 4096)) /dev/urandom > "$T/data"
truncate -s $((NB * 4096)) "$MNT/v.img" "$T/model.v.img"
scatter "$T/data" "$MNT/v.img" "$T/model.v.img" 77 || fail "random writes failed"
sync "$MNT/v.img"
mkdir "$MNT/.snapshots/v.img@s"
cp "$T/model.v.img" "$T/model..snapshots_v.img@s_v.img"
cp "$MNT/.snapshots/v.img@s/v.img" "$MNT/c.img"
cp "$T/model.v.img" "$T/model.c.img"
head -c $((64 * 4096)) /dev/urandom > "$T/more"
dd if="$T/more" of="$MNT/v.img" bs=4096 seek=100 conv=notrunc,fsync status=none
dd if="$T/more" of="$T/model.v.img" bs=4096 seek=100 conv=notrunc status=none
dd if="$T/more" of="$MNT/c.img" bs=4096 seek=1500 conv=notrunc,fsync status=none
dd if="$T/more" of="$T/model.c.img" bs=4096 seek=1500 conv=notrunc status=none
check_all "before defrag"
vs_umount "$MNT"
before=$(rows)
((before >= NB * 9 / 10)) || fail "$before rows after random writes; the test needs about one per block"

# a mount with defrag (the remount sealed the chunk files): passes every
# second until one finds nothing left to do
vs_mount "$STORE" "$MNT" -o defrag,gc_interval=1
log=$(vs_log "$MNT")
for ((i = 0, quiet = 0; quiet < 3; i++)); do
	((i < 60 * VS_TIME_SCALE)) || fail "GC still finds work after 60 s"
	n=$(grep -c 'gc: moved' "$log" || true)
	if [ "$n" = "${last:-}" ]; then quiet=$((quiet + 1)); else quiet=0; fi
	last=$n
	sleep 1
done
windows=$(grep -o '[0-9]* window(s) defragmented' "$log" | awk '{ s += $1 } END { print s + 0 }')
((windows >= 8)) || fail "$windows windows defragmented, want the 8 of the snapshot's node"
check_all "after defrag"
vs_umount "$MNT"
after=$(rows)
((after * 10 <= before)) || fail "$after rows after defrag, $before before"
"$VSNAPCTL" check "$STORE" >"$T/check" 2>&1 || fail "vsnapctl check: $(tail -n 5 "$T/check")"
vs_mount "$STORE" "$MNT"
check_all "after a remount"
vs_umount "$MNT"
pass "$before index rows -> $after, $windows windows defragmented"
