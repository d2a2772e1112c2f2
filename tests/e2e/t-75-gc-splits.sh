#!/bin/bash
# Garbage collection of split extents (docs/design.md, D5; D8 step 8).
# Extents written in 1 MiB writes and then three quarters overwritten
# leave, in their chunk file, live pieces of 4 blocks with 12 dead slots
# between: here in a live volume (b.img) and in the node that a snapshot
# (a.img@s1) and a linked clone of it (c.img) hold, while a.img itself
# moves on.  GC must copy those pieces and repoint them in every node that
# holds them.  Then more garbage: the clone and the snapshot are deleted
# (their node folds into a.img's) and a.img's rewrites kill the copies, so
# a second compaction moves b.img's pieces again.  After each round every
# volume and snapshot reads back what a model on the host says, the chunk
# files that held the pieces are gone, vsnapctl check is clean, and at the
# end the chunk files hold little more than the live data.
. "$(dirname "$0")/lib.sh"

STORE=$T/store MNT=$T/mnt
mkdir -p "$MNT"
# GC passes only when this test asks (a deletion asks for one, "kick"), and
# removed chunk files are unlinked, not kept as spares: their bytes count
vs_mount "$STORE" "$MNT" -o gc_interval=3600,spare_chunks=0

chunk_ids() {
	find "$STORE/chunks" -name '*.chunk' -printf '%f\n' | sed 's/\.chunk$//' | sort
}
chunk_bytes() {
	{ find "$STORE/chunks" -name '*.chunk' -printf '%s\n' 2>/dev/null || true; } |
		awk '{ s += $1 } END { print s + 0 }'
}
# A deletion makes the background thread run a GC pass at its next tick.
kick() {
	echo kick > "$MNT/kick.img"
	rm "$MNT/kick.img"
}
# wait_gone WHAT ID...: GC removes these chunk files within 30 s.
wait_gone() {
	local what=$1 i id left
	shift
	for ((i = 0; i < 30 * VS_TIME_SCALE; i++)); do
		left=
		for id in "$@"; do
			[ -e "$STORE/chunks/$id.chunk" ] && left="$left $id"
		done
		[ -z "$left" ] && return 0
		((i % 5 == 4)) && kick
		sleep 1
	done
	fail "$what: chunk file(s)$left still there after 30 s"
}
# check_all WHAT NAME...: each file of the mount against its model.
check_all() {
	local what=$1 f
	shift
	for f in "$@"; do
		cmp "$MNT/$f" "$T/model.${f//\//_}" || fail "$what: $f differs from its model"
	done
}
remount() {
	vs_umount "$MNT"
	vs_mount "$STORE" "$MNT" -o gc_interval=3600,spare_chunks=0
}
S1=.snapshots/a.img@s1/a.img

# 1. Whole extents: a.img 24 MiB, b.img 16 MiB, in 1 MiB writes.  A remount
#    seals their chunk file (every daemon start begins a new one).
for v in a:24 b:16; do
	head -c $((${v#*:} << 20)) /dev/urandom > "$T/model.${v%:*}.img"
	dd if="$T/model.${v%:*}.img" of="$MNT/${v%:*}.img" bs=1M conv=fsync status=none
done
remount
first=$(chunk_ids)

# 2. Split them: in every 16 blocks a.img keeps 0-3, b.img keeps 12-15.
#    Sealed too, so that what GC copies next lands in a chunk of its own.
# (stridecopy writes as far as its source goes: one of each size)
head -c $((24 << 20)) /dev/urandom > "$T/new"
head -c $((16 << 20)) /dev/urandom > "$T/newb"
"$TOOLS/stridecopy" "$T/new" "$MNT/a.img" "$T/model.a.img" 4096 16 4 12 || fail "stridecopy a"
"$TOOLS/stridecopy" "$T/newb" "$MNT/b.img" "$T/model.b.img" 4096 16 0 12 || fail "stridecopy b"
sync "$MNT/a.img" "$MNT/b.img"
remount
second=$(comm -13 <(echo "$first") <(chunk_ids))

# 3. a.img's split extents go to the node a snapshot and a clone hold.  The
#    first chunk file is a quarter live: its pieces, of a live volume and of
#    that node, are copied.
mkdir "$MNT/.snapshots/a.img@s1"
cp "$T/model.a.img" "$T/model.${S1//\//_}"
cp "$MNT/$S1" "$MNT/c.img"
cp "$T/model.a.img" "$T/model.c.img"
kick
# shellcheck disable=SC2086
wait_gone "compaction of split pieces" $first
note "first compaction: $(grep -h 'gc: moved' "$(vs_log "$MNT")" | tail -n 1)"
check_all "after the first compaction" a.img b.img c.img "$S1"
with_deadline 60 "$VSNAPCTL" check "$STORE" >"$T/check1" 2>&1 ||
	fail "vsnapctl check after the first compaction: $(tail -n 5 "$T/check1")"
copies=$(comm -13 <(echo "$first $second" | tr ' ' '\n' | sort) <(chunk_ids))

# 4. a.img rewrites its pieces (blocks 0-3 of every 16: only s1 and c.img
#    need the copies now) and c.img 1 MiB of its own, into a new chunk file.
remount
head -c $((24 << 20)) /dev/urandom > "$T/new"
"$TOOLS/stridecopy" "$T/new" "$MNT/a.img" "$T/model.a.img" 4096 16 0 4 || fail "stridecopy a again"
head -c $((1 << 20)) /dev/urandom > "$T/c1"
dd if="$T/c1" of="$MNT/c.img" bs=1M seek=8 conv=notrunc,fsync status=none
dd if="$T/c1" of="$T/model.c.img" bs=1M seek=8 conv=notrunc status=none
sync "$MNT/a.img"
check_all "after more writes" a.img b.img c.img "$S1"

# 5. More garbage: the clone and the snapshot go (their node folds into
#    a.img's), so the copies of a.img's pieces are dead and b.img's live:
#    the chunk file of the copies is compacted in turn.
rm "$MNT/c.img"
rmdir "$MNT/.snapshots/a.img@s1"
kick
# shellcheck disable=SC2086
wait_gone "compaction after the clone and the snapshot were deleted" $copies
note "second compaction: $(grep -h 'gc: moved' "$(vs_log "$MNT")" | tail -n 1)"
check_all "after the second compaction" a.img b.img
if [ -e "$MNT/c.img" ] || [ -e "$MNT/.snapshots/a.img@s1" ]; then fail "deleted files are back"; fi

# Space: 40 MiB are live; the chunk files hold them, their headers, slot
# tables (256 KiB each) and log slots, and 1 MiB of c.img's that no
# compaction was due for.
vs_umount "$MNT"
bytes=$(chunk_bytes)
((bytes <= (40 + 3) << 20)) || fail "chunk files hold $bytes bytes for 40 MiB of live data"
"$VSNAPCTL" check "$STORE" >"$T/check2" 2>&1 || fail "vsnapctl check: $(tail -n 5 "$T/check2")"
vs_mount "$STORE" "$MNT"
check_all "after a remount" a.img b.img
vs_umount "$MNT"
pass "chunk files hold $bytes bytes for 40 MiB live"
