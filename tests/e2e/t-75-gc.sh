#!/bin/bash
# Garbage collection gives back the space of overwritten blocks: a volume
# written once and then rewritten three blocks in four leaves its first
# chunk files three quarters dead; compaction moves their live blocks and
# removes them.  Content stays exact throughout, also through a handle held
# open across the compaction, and after a remount; vsnapctl check is clean.
. "$(dirname "$0")/lib.sh"

STORE=$T/store MNT=$T/mnt
mkdir -p "$MNT"
vs_mount "$STORE" "$MNT" -o gc_interval=2

chunks_bytes() { du -sb "$STORE/chunks" | cut -f1; }

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
note "chunk files: $after bytes after GC (${i}s), 448 MiB written, 256 MiB live"
((ok)) || fail "chunk files still hold $after bytes after 60 s; GC did not return the space of rewritten blocks"
cmp "$MNT/v.img" "$T/model" || fail "content differs after GC"
cmp /dev/fd/3 "$T/model" || fail "content through a handle open across GC differs"
exec 3<&-
vs_umount "$MNT"
"$VSNAPCTL" check "$STORE" >/dev/null || fail "vsnapctl check not clean after GC"
vs_mount "$STORE" "$MNT"
cmp "$MNT/v.img" "$T/model" || fail "content differs after remount"
vs_umount "$MNT"
pass "returned $(((448 << 20) - after)) bytes"
