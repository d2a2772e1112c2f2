#!/bin/bash
# Garbage collection gives back the space of overwritten blocks: a volume
# written once and then rewritten three blocks in four leaves its first
# chunk files three quarters dead; compaction moves their live blocks and
# removes them.  Content stays exact throughout, also through a handle held
# open across the compaction, and after a remount; vsnapctl check is clean.
# Removed chunk files may be kept as spares while writes stream in, a few
# at most; they count as used space, and are given back once writes stop
# (t-76 checks that deleting gives the space back).
. "$(dirname "$0")/lib.sh"

STORE=$T/store MNT=$T/mnt
mkdir -p "$MNT"
vs_mount "$STORE" "$MNT" -o gc_interval=2

# Bytes in sealed chunk files: all but the newest (active) one, which may
# have been made from a spare and so be full-size before it is full.
chunks_bytes() {
	# a file GC removes under find makes it fail; what it printed counts
	{ find "$STORE/chunks" -name '*.chunk' -printf '%f %s\n' 2>/dev/null || true; } |
		sort | head -n -1 | awk '{ s += $2 } END { print s + 0 }'
}

# 256 MiB of random data: four full chunk files of 4 KiB blocks
head -c $((256 << 20)) /dev/urandom > "$T/data"
dd if="$T/data" of="$MNT/v.img" bs=1M conv=fsync status=none
cp "$T/data" "$T/model"
head -c $((256 << 20)) /dev/urandom > "$T/new"

# rewrite 3 of every 4 blocks (1, 2 and 3 of each group), in place; the
# model gets the same bytes
note "rewriting 3 blocks of every 4 (49152 blocks)"
"$TOOLS/stridecopy" "$T/new" "$MNT/v.img" "$T/model" 4096 4 1 3 || fail "stridecopy failed"
sync "$MNT/v.img"
cmp "$MNT/v.img" "$T/model" || fail "content differs before GC"

# 448 MiB were written, 256 MiB are live.  GC may already be at work (it
# runs every 2 s here); wait until the chunk files hold the live data plus
# at most one chunk file of slack.
want=$(((256 + 64) << 20))
exec 3<"$MNT/v.img"
ok=0
for ((i = 0; i < 60; i++)); do
	if (($(chunks_bytes) <= want)); then ok=1; break; fi
	sleep 1
done
after=$(chunks_bytes)
note "sealed chunk files: $after bytes after GC (${i}s), 448 MiB written, 256 MiB live"
((ok)) || fail "chunk files still hold $after bytes after 60 s; GC did not return the space of rewritten blocks"
cmp "$MNT/v.img" "$T/model" || fail "content differs after GC"
cmp /dev/fd/3 "$T/model" || fail "content through a handle open across GC differs"
exec 3<&-

# At most a few spares (-o spare_chunks, 4 by default), given back within
# seconds once nothing is written (NS_SPARE_IDLE_MS, 5 s), and counted as
# used space by df on the mount as on the host.
nspare=$(find "$STORE/spare" -name '*.spare' | wc -l)
((nspare <= 4)) || fail "$nspare spare chunk files, want at most 4"
for ((i = 0; i < 30; i++)); do
	nspare=$(find "$STORE/spare" -name '*.spare' | wc -l)
	((nspare == 0)) && break
	sleep 1
done
((nspare == 0)) || fail "$nspare spare chunk files still kept 30 s after the last write"
assert_df_same "$MNT" "$STORE" "after the spares were given back"
note "spare chunk files given back after about ${i}s without writes"

# Data written after GC (into a spare, or a new file) reads back.
head -c $((64 << 20)) /dev/urandom > "$T/more"
dd if="$T/more" of="$MNT/w.img" bs=1M conv=fsync status=none
cmp "$MNT/w.img" "$T/more" || fail "data written after GC differs"
vs_umount "$MNT"
"$VSNAPCTL" check "$STORE" >/dev/null || fail "vsnapctl check not clean after GC"
vs_mount "$STORE" "$MNT"
cmp "$MNT/v.img" "$T/model" || fail "content differs after remount"
cmp "$MNT/w.img" "$T/more" || fail "data written after GC differs after remount"
vs_umount "$MNT"
pass "returned $(((448 << 20) - after)) bytes"
