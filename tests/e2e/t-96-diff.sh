#!/bin/bash
# vsnapctl diff: the extents that differ between two files of one lineage,
# against the truth of a block-by-block comparison of their bytes (read
# through the mount): between two snapshots both ways, a snapshot and the
# live volume after a shrink and a regrow, and two branches (a clone of an
# older snapshot).  A punch of blocks that were never written, and a volume
# against itself, are no change.  Two lineages and bad paths are refused
# with one line and exit 2.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

BS=4096
K=1024
M=$((1024 * 1024))
STORE=$T/store
MNT=$T/mnt
MON=$MNT/.snapshots/vm1.img@mon/vm1.img
TUE=$MNT/.snapshots/vm1.img@tue/vm1.img
ZERO_HEX=$(head -c $BS /dev/zero | od -An -v -tx8 -w$BS | tr -d ' ')

# wr FILE OFF LEN: LEN bytes of new random data at OFF, synced
wr() {
	head -c "$3" /dev/urandom >"$T/data"
	dd if="$T/data" of="$1" bs=$BS seek=$(($2 / BS)) conv=notrunc,fsync status=none
}

# truth A B: the extents in which the bytes of A and B differ, block by
# block, as "OFFSET LENGTH KIND" (KIND: what B holds; zero past B's end),
# the tail between the two sizes changed as a whole.  Sizes are whole blocks.
truth() {
	local sa sb
	sa=$(stat -c %s "$1")
	sb=$(stat -c %s "$2")
	od -An -v -tx8 -w$BS "$1" | tr -d ' ' >"$T/ha"
	od -An -v -tx8 -w$BS "$2" | tr -d ' ' >"$T/hb"
	awk -v sa="$sa" -v sb="$sb" -v bs=$BS -v z="$ZERO_HEX" '
		FNR == NR { a[FNR - 1] = $1; next }
		{ b[FNR - 1] = $1 }
		function add(off, len, kind) {
			if (n && o + l == off && k == kind) { l += len; return }
			if (n) print o, l, k
			o = off; l = len; k = kind; n = 1
		}
		END {
			lo = sa < sb ? sa : sb; hi = sa < sb ? sb : sa
			for (i = 0; i * bs < hi; i++) {
				kind = i * bs < sb ? (b[i] == z ? "zero" : "data") : "zero"
				if (i * bs >= lo || a[i] != b[i]) add(i * bs, bs, kind)
			}
			if (n) print o, l, k
		}' "$T/ha" "$T/hb"
}

# got OUT: the extents of vsnapctl diff's table
got() { awk 'NR > 1 && $1 ~ /^[0-9]+$/ { print $1, $2, $3 }' "$1"; }

# check_diff A B: vsnapctl diff A B, text and --json, equals truth A B
check_diff() {
	local a=$1 b=$2 want total n
	truth "$a" "$b" >"$T/want"
	want=$(cat "$T/want")
	"$VSNAPCTL" diff "$a" "$b" >"$T/got.txt" 2>"$T/got.err" ||
		fail "vsnapctl diff $a $b: exit $?: $(cat "$T/got.err")"
	WHY="got
$(cat "$T/got.txt")
want
$want"
	[ "$(got "$T/got.txt")" = "$want" ] || return 1
	total=$(awk '{ s += $2 } END { print s + 0 }' "$T/want")
	n=$(grep -c . "$T/want" || true)
	WHY="summary line: $(tail -n 1 "$T/got.txt"), want $total bytes in $n extent(s)"
	tail -n 1 "$T/got.txt" | grep -qE ": $total byte\(s\) \(.*\) changed in $n extent\(s\)$" || return 1
	"$VSNAPCTL" diff --json "$a" "$b" >"$T/got.json" 2>"$T/got.err" ||
		fail "vsnapctl diff --json $a $b: exit $?: $(cat "$T/got.err")"
	tr -d '\n' <"$T/got.json" | grep -o '{"offset_bytes":[0-9]*,"length_bytes":[0-9]*,"kind":"[a-z]*"}' |
		sed 's/[^0-9a-z ]*offset_bytes[^0-9]*\([0-9]*\).*length_bytes[^0-9]*\([0-9]*\).*kind[^a-z]*\([a-z]*\).*/\1 \2 \3/' \
		>"$T/got.jl"
	WHY="--json: $(cat "$T/got.json"), want $want, $total bytes"
	[ "$(cat "$T/got.jl")" = "$want" ] || return 1
	grep -qF "\"changed_bytes\":$total}" "$T/got.json" || return 1
	return 0
}

# expect_diff A B: check_diff must hold at once, live volumes included
# (vsnapctl has the daemon bring the index up to its log first)
expect_diff() {
	check_diff "$1" "$2" || fail "diff $1 $2: $WHY"
}

vs_mount "$STORE" "$MNT" -o block_size=$BS

# ---- a history: mon, then tue, then the live volume -------------------------------------
truncate -s $((4 * M)) "$MNT/vm1.img"
wr "$MNT/vm1.img" 0 $((64 * K))
wr "$MNT/vm1.img" $((1 * M)) $((256 * K))
wr "$MNT/vm1.img" $((3 * M)) $((8 * K))
mkdir "$MNT/.snapshots/vm1.img@mon"
wr "$MNT/vm1.img" $((16 * K)) $((16 * K))                        # over mon's data
wr "$MNT/vm1.img" $((2 * M)) $((64 * K))                         # fresh ground
fallocate -p -o $((1 * M + 64 * K)) -l $((64 * K)) "$MNT/vm1.img"  # mon's data punched
fallocate -p -o $((2 * M + 512 * K)) -l $((64 * K)) "$MNT/vm1.img" # never written: no change
dd if=/dev/zero of="$MNT/vm1.img" bs=$BS seek=$((3 * M / BS)) count=1 conv=notrunc,fsync status=none
mkdir "$MNT/.snapshots/vm1.img@tue"
[ -f "$MON" ] && [ -f "$TUE" ] || fail "snapshot files missing: $(ls -R "$MNT/.snapshots")"

expect_diff "$MON" "$TUE"
grep -q " zero$" "$T/got.txt" && grep -q " data$" "$T/got.txt" ||
	fail "mon -> tue should show data and zero extents: $(cat "$T/got.txt")"
if grep -qE "^ *$((2 * M + 512 * K)) " "$T/got.txt"; then
	fail "a punch of never-written blocks is reported as a change: $(cat "$T/got.txt")"
fi
expect_diff "$TUE" "$MON"
expect_diff "$MON" "$MON"
[ "$(got "$T/got.txt")" = "" ] || fail "a file differs from itself: $(cat "$T/got.txt")"

# the live volume: shrunk below tue's data, grown past tue's end, written there
truncate -s $((1 * M)) "$MNT/vm1.img"
truncate -s $((5 * M)) "$MNT/vm1.img"
wr "$MNT/vm1.img" $((4 * M + 8 * K)) $((8 * K))
wr "$MNT/vm1.img" $((512 * K)) $((4 * K))
expect_diff "$TUE" "$MNT/vm1.img"
grep -qE "^ *$((1 * M)) +[0-9]+ zero$" "$T/got.txt" ||
	fail "tue -> live: the shrink is not a zero extent at 1 MiB: $(cat "$T/got.txt")"
expect_diff "$MNT/vm1.img" "$TUE"       # B the shorter: its tail is zero
expect_diff "$MON" "$MNT/vm1.img"

# ---- two branches: a clone of mon, written --------------------------------------------------
cp "$MON" "$MNT/clone.img"
wr "$MNT/clone.img" $((40 * K)) $((8 * K))
wr "$MNT/clone.img" $((3 * M + 4 * K)) $((8 * K))
expect_diff "$TUE" "$MNT/clone.img"
expect_diff "$MNT/clone.img" "$MNT/vm1.img"

# ---- refusals: exit 2, one line on stderr, nothing on stdout -----------------------------
# refuse TEXT ARGS...
refuse() {
	local text=$1 rc=0
	shift
	"$VSNAPCTL" "$@" >"$T/r.out" 2>"$T/r.err" || rc=$?
	[ $rc -eq 2 ] || fail "vsnapctl $*: exit $rc, expected 2: $(cat "$T/r.out" "$T/r.err")"
	grep -qF -- "$text" "$T/r.err" || fail "vsnapctl $*: stderr does not say '$text': $(cat "$T/r.err")"
	[ "$(wc -l <"$T/r.err")" -eq 1 ] || fail "vsnapctl $*: more than one line: $(cat "$T/r.err")"
	[ ! -s "$T/r.out" ] || fail "vsnapctl $*: wrote to stdout: $(cat "$T/r.out")"
}
truncate -s $((1 * M)) "$MNT/other.img"
wr "$MNT/other.img" 0 $((8 * K))
refuse "are not of one lineage" diff "$MNT/other.img" "$MNT/vm1.img"
refuse "are not of one lineage" diff --json "$MON" "$MNT/other.img"
refuse "nowhere.img: no such file or directory" diff "$T/nowhere.img" "$MNT/vm1.img"
refuse "no-such.img: no such file or directory" diff "$MNT/vm1.img" "$MNT/no-such.img"
refuse "is not a volume or a snapshot's file" diff "$MNT/.snapshots/vm1.img@mon" "$MNT/vm1.img"
head -c $BS /dev/urandom >"$T/outside.img"
refuse "outside.img: not in a vsnapfs mount" diff "$MNT/vm1.img" "$T/outside.img"
"$VSNAPCTL" diff "$MON" >"$T/r.out" 2>"$T/r.err" && fail "diff with one file succeeded"
grep -qF "diff: needs two files, A and B; see vsnapctl diff --help" "$T/r.err" || fail "diff with one file: $(cat "$T/r.err")"

vs_umount "$MNT"
pass
