#!/bin/bash
# Cascaded replication of a directory: source -> replica -> third store.
# A replica's inodes are not the source's (an incremental commit moves
# new inodes into D), so what is BASE is decided by path, kind and
# lineage: an incremental sent from the replica is as small as one sent
# from the source (send -n: within a few KiB of the changed data), and the
# third store reads as the source.  A volume replaced by an unrelated new
# one of the same name travels whole, from either store.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

M=$((1024 * 1024))
S1=$T/s1 S2=$T/s2 S3=$T/s3 M1=$T/m1 M2=$T/m2 M3=$T/m3
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"
vs_mount "$S3" "$M3"
W=$M1/vm D=$M2/vm E=$M3/vm

wr() { dd if=/dev/urandom of="$1" bs=1M seek="$2" count="$3" conv=notrunc,fsync status=none; }
size() { "$VSNAPCTL" send -n "$@" | sed -n 's/.*: \([0-9]*\) bytes.*/\1/p'; }
tree() { (cd "$1" && find . -mindepth 1 -name .snapshots -prune -o -printf '%P %y %m %s\n' | sort); }
same() {  # same DIR SNAP
	local f
	assert_eq "$(tree "$1")" "$(tree "$W/.snapshots/$2")" "$1 at $2: the tree"
	while IFS= read -r -d '' f; do
		cmp "$W/.snapshots/$2/$f" "$1/$f" || fail "$1 at $2: $f differs"
	done < <(cd "$W/.snapshots/$2" && find . -type f -printf '%P\0')
}

mkdir -p "$W/sub"
truncate -s $((16 * M)) "$W/disk.img" "$W/sub/data.img" "$W/swap.img"
wr "$W/disk.img" 0 8
wr "$W/sub/data.img" 0 8
wr "$W/swap.img" 0 4
mkdir "$W/.snapshots/s1"
wr "$W/disk.img" 2 1
wr "$W/sub/data.img" 5 1
mkdir "$W/.snapshots/s2"
wr "$W/disk.img" 9 1
rm "$W/swap.img"                        # replaced by an unrelated new one
truncate -s $((16 * M)) "$W/swap.img"
wr "$W/swap.img" 0 2
mkdir "$W/.snapshots/s3"

for s in s1 s2 s3; do
	from=
	[ $s = s1 ] || from="--from @s$((${s#s} - 1))"
	# shellcheck disable=SC2086
	"$VSNAPCTL" send $from "$W/.snapshots/$s" | "$VSNAPCTL" receive "$D" >/dev/null ||
		fail "receive $s on the replica"
	same "$D" $s
	# shellcheck disable=SC2086
	"$VSNAPCTL" send $from "$D/.snapshots/$s" | "$VSNAPCTL" receive "$E" >/dev/null ||
		fail "receive $s from the replica"
	same "$E" $s
	[ $s = s1 ] && continue
	src=$(size $from "$W/.snapshots/$s")
	rep=$(size $from "$D/.snapshots/$s")
	note "$s: from the source $src bytes, from the replica $rep bytes"
	[ "$rep" -le $((src + 4096)) ] ||
		fail "$s from the replica is $rep bytes, from the source $src: sent whole"
done
# s2 changed 2 MiB; s3 1 MiB and a new 16 MiB volume with 2 MiB of data
[ "$(size --from @s1 "$D/.snapshots/s2")" -lt $((2 * M + 64 * 1024)) ] ||
	fail "s2 from the replica is not the changed data"
[ "$(size --from @s2 "$D/.snapshots/s3")" -ge $((3 * M)) ] ||
	fail "the replaced swap.img was not sent whole"
for st in "$S1" "$S2" "$S3"; do
	"$VSNAPCTL" check "$st" >"$T/check" 2>&1 || fail "check $st: $(cat "$T/check")"
done
pass
