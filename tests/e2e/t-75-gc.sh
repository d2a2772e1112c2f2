#!/bin/bash
# Garbage collection gives back the space of overwritten blocks: a volume
# written once and then rewritten three blocks in four leaves its first
# chunk files three quarters dead; compaction moves their live blocks and
# removes them.  Content stays exact throughout, also through a handle held
# open across the compaction, and after a remount; vsnapctl check is clean.
# Removed chunk files are kept as spares, counted as free space, and new
# data is written into them.
. "$(dirname "$0")/lib.sh"

STORE=$T/store MNT=$T/mnt
mkdir -p "$MNT"
vs_mount "$STORE" "$MNT" -o gc_interval=2

# Bytes in sealed chunk files: all but the newest (active) one, which may
# have been made from a spare and so be full-size before it is full.
chunks_bytes() {
	find "$STORE/chunks" -name '*.chunk' -printf '%f %s\n' | sort | head -n -1 |
		awk '{ s += $2 } END { print s + 0 }'
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

# The removed chunk files were kept as spares (this file system is large
# enough for some), at most 64, and df on the mount counts them as free.
nspare=$(find "$STORE/spare" -name '*.spare' | wc -l)
((nspare >= 1 && nspare <= 64)) || fail "$nspare spare chunk files, want 1 to 64"
spare_bytes=$(find "$STORE/spare" -name '*.spare' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
free_mnt=$(stat -f -c '%a * %S' "$MNT") free_host=$(stat -f -c '%a * %S' "$STORE")
diff=$(( (free_mnt) - (free_host) - spare_bytes ))
((diff > -(16 << 20) && diff < (16 << 20))) ||
	fail "df on the mount shows $((free_mnt)) bytes free, the host $((free_host)), spares $spare_bytes"
note "$nspare spare chunk files ($spare_bytes bytes), counted as free by df"

# New data goes into the spares first: a new chunk file (a name not seen
# before) is an old file (an inode seen before, as a chunk file or a spare:
# GC may still be turning chunk files into spares meanwhile).
old_inos=$(find "$STORE/chunks" "$STORE/spare" -type f -printf '%i\n' | sort -u)
old_names=$(find "$STORE/chunks" -name '*.chunk' -printf '%f\n' | sort)
head -c $((64 << 20)) /dev/urandom > "$T/more"
dd if="$T/more" of="$MNT/w.img" bs=1M conv=fsync status=none
reused=$(find "$STORE/chunks" -name '*.chunk' -printf '%f %i\n' | sort |
	join -v1 - <(echo "$old_names") | cut -d' ' -f2 | sort | comm -12 - <(echo "$old_inos") | wc -l)
((reused >= 1)) || fail "no new chunk file was made from a spare"
cmp "$MNT/w.img" "$T/more" || fail "data written into a reused chunk file differs"
vs_umount "$MNT"
"$VSNAPCTL" check "$STORE" >/dev/null || fail "vsnapctl check not clean after GC"
vs_mount "$STORE" "$MNT"
cmp "$MNT/v.img" "$T/model" || fail "content differs after remount"
cmp "$MNT/w.img" "$T/more" || fail "data in a reused chunk file differs after remount"
vs_umount "$MNT"
pass "returned $(((448 << 20) - after)) bytes"
