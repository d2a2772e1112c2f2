#!/bin/bash
# vsnapctl send / receive round trip: a volume with a random history of
# writes (any offset and length), punches, truncates and six snapshots; the
# first snapshot sent full, the next five as incrementals into a second
# store.  After each receive the received snapshot and the live volume
# read exactly as the source's snapshot (cmp, and qemu-img compare), each
# incremental stream is at most the data that changed (from vsnapctl diff)
# plus 32 bytes per record and 200 per stream; a compressible change sent
# with -c arrives the same in a tenth of the bytes; in the end vsnapctl
# check is clean on both stores and each received snapshot kept its id.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

SEED=${SEND_SEED:-$RANDOM}
RANDOM=$SEED
note "seed $SEED (SEND_SEED=$SEED to repeat)"
M=$((1024 * 1024))
S1=$T/s1 S2=$T/s2 M1=$T/m1 M2=$T/m2
mkdir -p "$M1" "$M2"
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"

rnd() { echo $(((RANDOM << 15 | RANDOM) % $1)); }

# one random change to FILE: a write, a punch or a truncate
change() {
	local f=$1 size off len
	size=$(stat -c %s "$f")
	case $(rnd 10) in
	0)	truncate -s $((size / 2 + $(rnd $((size / 2 + M))))) "$f" ;;
	1|2)	off=$(rnd "$size"); len=$((1 + $(rnd $((size - off)))))
		[ $len -gt $((2 * M)) ] && len=$((2 * M))
		fallocate -p -o "$off" -l "$len" "$f" ;;
	*)	off=$(rnd $((size + 65536))); len=$((1 + $(rnd $((512 * 1024)))))
		head -c "$len" /dev/urandom |
			dd of="$f" bs=64k seek="$off" oflag=seek_bytes conv=notrunc status=none ;;
	esac
}

same() {
	cmp "$1" "$2" || fail "$3: $1 and $2 differ"
	if command -v qemu-img >/dev/null; then
		qemu-img compare -q -f raw -F raw "$1" "$2" || fail "$3: qemu-img compare: differ"
	fi
}

# vsnapctl diff --json A B -> "data_bytes extents"
diffsize() {
	"$VSNAPCTL" diff --json "$1" "$2" | awk '
		/"kind":"data"/ { match($0, /"length_bytes":[0-9]+/); d += substr($0, RSTART + 15, RLENGTH - 15) }
		/"offset_bytes"/ { n++ }
		END { print d + 0, n + 0 }'
}

truncate -s $((12 * M)) "$M1/vm1.img"
prev=
for k in 0 1 2 3 4 5; do
	for _ in $(seq $((3 + $(rnd 8)))); do change "$M1/vm1.img"; done
	sync "$M1/vm1.img"
	mkdir "$M1/.snapshots/vm1.img@s$k"
	src=$M1/.snapshots/vm1.img@s$k/vm1.img
	if [ -z "$prev" ]; then
		"$VSNAPCTL" send "$src" >"$T/s$k.vs" 2>"$T/send.err" || fail "send s$k: $(cat "$T/send.err")"
	else
		"$VSNAPCTL" send --from "@$prev" "$src" >"$T/s$k.vs" 2>"$T/send.err" ||
			fail "send s$k: $(cat "$T/send.err")"
		read -r data n < <(diffsize "$M1/.snapshots/vm1.img@$prev/vm1.img" "$src")
		bytes=$(stat -c %s "$T/s$k.vs")
		bound=$((data + 32 * (n + data / M + 2) + 200))
		note "s$k: $bytes stream bytes for $data changed data bytes in $n extent(s)"
		[ "$bytes" -le "$bound" ] || fail "s$k: a $bytes-byte stream for $data bytes in $n extents"
		[ "$bytes" -ge "$data" ] || fail "s$k: a $bytes-byte stream holds less than $data bytes"
	fi
	exp=$(stat -c %s "$T/s$k.vs")
	"$VSNAPCTL" send -n ${prev:+--from "@$prev"} "$src" >"$T/dry" ||
		fail "send -n s$k"
	grep -q ": $exp bytes " "$T/dry" || fail "send -n s$k said $(cat "$T/dry"), sent $exp bytes"
	"$VSNAPCTL" receive "$M2/vm1.img" <"$T/s$k.vs" >"$T/recv.out" 2>&1 ||
		fail "receive s$k: $(cat "$T/recv.out")"
	same "$src" "$M2/.snapshots/vm1.img@s$k/vm1.img" "s$k snapshot"
	same "$src" "$M2/vm1.img" "s$k volume"
	prev=s$k
done
# -c: compressible data (text) travels compressed, and arrives the same
{ yes "vsnapfs send stream compression test line" || true; } | head -c $((4 * M)) >"$T/text"
dd if="$T/text" of="$M1/vm1.img" bs=1M seek=1 conv=notrunc,fsync status=none
mkdir "$M1/.snapshots/vm1.img@s6"
"$VSNAPCTL" send -n --from @s5 "$(echo "$M1"/.snapshots/vm1.img@s6/vm1.img)" >"$T/dry" || fail "send -n s6"
plain=$(sed -n 's/.*: \([0-9]*\) bytes .*/\1/p' "$T/dry")
"$VSNAPCTL" send -c --progress=plain --from @s5 "$M1/.snapshots/vm1.img@s6/vm1.img" >"$T/s6.vs" \
	2>"$T/send.err" || fail "send -c s6: $(cat "$T/send.err")"
# --progress=plain: lines of its own, no redraw, the last one "done"
plain_progress() {
	grep -q $'\r' "$2" && fail "$1 --progress=plain redraws: $(cat -A "$2")"
	grep -vqE "^$1: " "$2" && fail "$1 --progress=plain: other lines: $(cat "$2")"
	tail -n 1 "$2" | grep -qE "^$1: done, [0-9.]+[KMGTPE]? in [0-9]+:[0-9]{2}, [0-9.]+[KMGTPE]?/s$" ||
		fail "$1 --progress=plain: no done line: $(cat "$2")"
}
plain_progress send "$T/send.err"
z=$(stat -c %s "$T/s6.vs")
note "s6: $z bytes compressed, $plain plain"
[ "$z" -lt $((plain / 10)) ] || fail "send -c: $z bytes for $plain plain"
"$VSNAPCTL" receive --progress=plain "$M2/vm1.img" <"$T/s6.vs" >/dev/null 2>"$T/recv.err" ||
	fail "receive s6: $(cat "$T/recv.err")"
plain_progress receive "$T/recv.err"
same "$M1/.snapshots/vm1.img@s6/vm1.img" "$M2/.snapshots/vm1.img@s6/vm1.img" "s6 snapshot"
same "$M1/vm1.img" "$M2/vm1.img" "s6 volume"
assert_eq "$(vs_recv_parts "$S2" "$M2")" 0 "volumes being received left in the index"
for k in 0 3 5; do     # the received snapshot keeps the sender's id
	a=$(sqlite3 "$S1/index.sqlite" "SELECT hex(guid) FROM snapguid g JOIN snapshot s ON s.id = g.snap WHERE s.name = CAST('vm1.img@s$k' AS BLOB)")
	b=$(sqlite3 "$S2/index.sqlite" "SELECT hex(guid) FROM snapguid g JOIN snapshot s ON s.id = g.snap WHERE s.name = CAST('vm1.img@s$k' AS BLOB)")
	[ -n "$a" ] && [ "$a" = "$b" ] || fail "s$k: guid $a on the source, $b received"
done
for s in "$S1" "$S2"; do
	"$VSNAPCTL" check "$s" >"$T/check" 2>&1 || fail "check $s: $(cat "$T/check")"
done
vs_umount "$M2"
"$VSNAPCTL" check "$S2" >"$T/check" 2>&1 || fail "check $S2 unmounted: $(cat "$T/check")"
pass
