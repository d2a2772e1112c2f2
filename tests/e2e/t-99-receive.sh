#!/bin/bash
# vsnapctl receive refuses, with one line and exit 1, and leaves the
# destination as it was (the volume's bytes, its snapshots, another volume
# being written meanwhile, no temporary volume listed): a flipped byte, a
# stream for a base the destination lacks, a stream applied twice, a full
# stream onto an existing volume, a destination written after the base, a
# record dropped (refused at the next record: nothing kept), a PATH in the
# store's own directory instead of the mount, names in the stream that the
# mount would refuse (said escaped, in one line).  Resume: a
# cut stream (the sender killed half way) keeps its verified part, hidden
# from ls -a and vsnapctl list, and prints the token receive --token
# prints; receive --resume refuses, keeping the part as it was, a whole
# stream, a token of another receive (another chain value, another place)
# and a stream of another base; send --resume refuses a token that is not
# of its stream; the resumed stream is exactly the bytes that were missing
# (plus a begin) and the result reads as the source's snapshot (cmp,
# qemu-img compare).  A directory holding only a kept part can be removed,
# or replaced by mv; --abort removes a kept part, and neither --abort nor
# --token takes another file whose name has the prefix.  Mirror re-attach: both sides written after
# the split, receive --force makes the destination equal to the source's
# new snapshot, moving the source's changed blocks only.  The receiving
# daemon killed (SIGKILL) in the middle of a receive, after a checkpoint:
# after a new mount the destination is the old state and checks clean,
# and send --resume | receive --resume finishes it, sending at most what
# came after the checkpoint.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
[ -x "$TOOLS/forgestream" ] || fail "$TOOLS/forgestream not built"

M=$((1024 * 1024))
S1=$T/s1 S2=$T/s2 M1=$T/m1 M2=$T/m2
mkdir -p "$M1" "$M2"
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"

wr() {  # wr FILE OFFSET_MIB LENGTH_MIB
	dd if=/dev/urandom of="$1" bs=1M seek="$2" count="$3" conv=notrunc,fsync status=none
}
snap() { mkdir "$M1/.snapshots/vm1.img@$1"; }
sf() { echo "$M1/.snapshots/vm1.img@$1/vm1.img"; }

# the state of the destination that a refusal must leave as it was
state() {
	{
		md5sum <"$M2/vm1.img"
		ls -a "$M2" "$M2/.snapshots"
		for s in "$M2"/.snapshots/*; do md5sum <"$s/vm1.img"; done
	} 2>&1
}

# refused WHAT TEXT [OPTION...] < STREAM: exit 1, one line holding TEXT,
# nothing changed, and $KEPT parts being received left in the index (0
# unless given: KEPT=1 where a refused --resume keeps the part it had)
refused() {
	local what=$1 text=$2 rc=0 before
	before=$(state)
	"$VSNAPCTL" receive "${@:3}" "$M2/vm1.img" >"$T/r.out" 2>"$T/r.err" || rc=$?
	[ $rc -eq 1 ] || fail "$what: exit $rc, not 1: $(cat "$T/r.err")"
	assert_eq "$(wc -l <"$T/r.err")" 1 "$what: lines of the refusal ($(tr "\n" "|" <"$T/r.err"))"
	grep -qF -- "$text" "$T/r.err" || fail "$what: $(cat "$T/r.err")"
	[ "$(state)" = "$before" ] || fail "$what: the destination changed"
	assert_eq "$(vs_recv_parts "$S2" "$M2")" "${KEPT:-0}" "$what: volumes being received in the index"
	note "$what: $(cat "$T/r.err")"
}

truncate -s $((16 * M)) "$M1/vm1.img"
wr "$M1/vm1.img" 0 6
snap mon
wr "$M1/vm1.img" 2 2
snap tue
wr "$M1/vm1.img" 8 3
fallocate -p -o $((M)) -l $((M)) "$M1/vm1.img"
snap wed
"$VSNAPCTL" send "$(sf mon)" >"$T/mon.vs"
"$VSNAPCTL" send --from @mon "$(sf tue)" >"$T/tue.vs"
"$VSNAPCTL" send --from @tue "$(sf wed)" >"$T/wed.vs"

# another volume of the destination, written all along
dd if=/dev/urandom of="$M2/other.img" bs=1M count=4 status=none
( while :; do dd if=/dev/urandom of="$M2/other.img" bs=64k count=1 seek=$((RANDOM % 64)) \
	conv=notrunc status=none 2>/dev/null || exit 0; done ) &
WRITER=$!
vs_track_pid $WRITER

# PATH in the store's own directory (it resolves to the same store): refused
# in one line, nothing written there, before a stream that would apply
rc=0; "$VSNAPCTL" receive "$S2/vm1.img" <"$T/mon.vs" >/dev/null 2>"$T/r.err" || rc=$?
[ $rc -eq 1 ] && [ "$(wc -l <"$T/r.err")" -eq 1 ] && grep -q "is not in a vsnapfs mount" "$T/r.err" ||
	fail "receive into the store directory: exit $rc: $(cat "$T/r.err")"
ls -a "$S2" | grep -q 'vsnap-recv\|vm1.img' && fail "receive wrote into the store directory: $(ls -a "$S2")"
"$VSNAPCTL" receive "$M2/vm1.img" <"$T/mon.vs" >/dev/null || fail "receive mon"
refused "applied twice" "was received already" <"$T/mon.vs"
"$VSNAPCTL" send "$(sf tue)" >"$T/tuefull.vs"
refused "full onto an existing volume" "exists: a full stream creates a new volume" <"$T/tuefull.vs"
refused "wrong base" "wrong base" <"$T/wed.vs"
n=$(stat -c %s "$T/tue.vs")
for at in 100 $((n / 2)) $((n - 30)); do
	cp "$T/tue.vs" "$T/bad.vs"
	printf '\x5a' | dd of="$T/bad.vs" bs=1 seek=$at conv=notrunc status=none
	cmp -s "$T/bad.vs" "$T/tue.vs" || refused "byte $at flipped" "damaged" <"$T/bad.vs"
done
# names the mount would refuse, in a stream whose records verify: refused
# before anything is written, in one line that names the problem, escaped
forged() {  # forged WHAT TEXT FILE SNAP [BASE]
	"$TOOLS/forgestream" "${@:3}" >"$T/forged.vs" || fail "forgestream ${*:3}"
	refused "$1" "$2" <"$T/forged.vs"
	grep -q '[[:cntrl:]]' "$T/r.err" && fail "$1: a control character printed: $(od -c "$T/r.err")"
	true
}
forged "a file name with a /" "file name '../x.img' is not a file name" ../x.img s1
forged "the file name .snapshots" "is not a file name" .snapshots s1
forged "a snapshot name starting with ." "snapshot name '.s1' is not a snapshot name" vm1.img .s1
forged "a snapshot name with an @" "is not a snapshot name" vm1.img a@b
forged "a snapshot name with a newline and an escape" "'s\x0a\x1b[31m' is not a" vm1.img $'s\n\e[31m'
forged "a base snapshot name with a /" "base snapshot name 'x/y'" vm1.img s2 x/y
forged "PATH@NAME longer than 255 bytes" "is not a snapshot name the mount takes" vm1.img \
	"$(printf 'n%.0s' $(seq 250))"

same() {
	cmp "$1" "$2" || fail "$3: $1 and $2 differ"
	if command -v qemu-img >/dev/null; then
		qemu-img compare -q -f raw -F raw "$1" "$2" || fail "$3: qemu-img compare: differ"
	fi
}

# resumed NAME WHAT: rest.vs received with --resume; the volume and its new
# snapshot read as @NAME; no part is kept any more
resumed() {
	"$VSNAPCTL" receive --resume "$M2/vm1.img" <"$T/rest.vs" >/dev/null 2>"$T/r.err" ||
		fail "$2: receive --resume: $(cat "$T/r.err")"
	same "$(sf "$1")" "$M2/.snapshots/vm1.img@$1/vm1.img" "$2: the snapshot"
	same "$(sf "$1")" "$M2/vm1.img" "$2: the volume"
	"$VSNAPCTL" receive --token "$M2/vm1.img" >/dev/null 2>&1 && fail "$2: a kept part is left"
	true
}

# bytes of the first K records of stream FILE (a record: 24 bytes and its payload)
prefix_bytes() {
	local at=0 len
	for _ in $(seq "$2"); do
		len=$(od -An -t u8 -j $((at + 8)) -N 8 "$1" | tr -d ' ')
		at=$((at + 24 + len))
	done
	echo $at
}
# the kept part is hidden: not in the listing, not in vsnapctl list
hidden() {
	ls -a "$M2" | grep -q '^\.vsnap-recv' && fail "$1: a temporary volume is listed: $(ls -a "$M2")"
	"$VSNAPCTL" list "$M2" | grep -q 'vsnap-recv' && fail "$1: vsnapctl list shows the temporary volume"
	true
}

# cut (the sender killed): refused with one line that gives the token; the
# verified part is kept (hidden), the destination unchanged
# the sender killed after 1.5 MiB: inside the second of two 1 MiB data records
mkfifo "$T/sp"
"$VSNAPCTL" send --from @mon "$(sf tue)" >"$T/sp" &
SENDER=$!
vs_track_pid $SENDER
before=$(state)
# what went over the wire before the sender died
dd if="$T/sp" of="$T/part.vs" bs=64k count=24 iflag=fullblock status=none
kill -9 $SENDER 2>/dev/null || true   # or SIGPIPE got it first
wait $SENDER 2>/dev/null && fail "the sender was not killed"
rc=0; "$VSNAPCTL" receive "$M2/vm1.img" <"$T/part.vs" 2>"$T/r.err" || rc=$?
[ $rc -eq 1 ] || fail "cut stream: exit $rc: $(cat "$T/r.err")"
[ "$(wc -l <"$T/r.err")" -eq 1 ] || fail "cut stream: not one line: $(cat "$T/r.err")"
grep -q "truncated; kept the first 2 records" "$T/r.err" || fail "cut stream: $(cat "$T/r.err")"
[ "$(state)" = "$before" ] || fail "cut stream: the destination changed"
hidden "cut stream"
note "cut: $(cat "$T/r.err")"
tok=$("$VSNAPCTL" receive --token "$M2/vm1.img") || fail "receive --token after the cut"
grep -qF -- "--resume $tok " "$T/r.err" || fail "the token of --token ($tok) is not the one printed"
# the earlier failures of resume, each refused with the kept part as it was
KEPT=1 refused "receive --resume of a whole stream" "not a resumed stream" --resume <"$T/tue.vs"
still_kept() {
	assert_eq "$("$VSNAPCTL" receive --token "$M2/vm1.img")" "$tok" "$1: the kept part"
}
still_kept "receive --resume of a whole stream"
IFS=. read -r g_tue g_mon k off chain <<<"$tok"
# a token of another receive: the same place, another chain value
badchain=$(printf '%016x' $((0x$chain ^ 1)))
"$VSNAPCTL" send --from @mon --resume "$g_tue.$g_mon.$k.$off.$badchain" "$(sf tue)" >"$T/bad.vs" ||
	fail "send --resume with a forged chain value"
KEPT=1 refused "a token of another receive (its chain)" "not the continuation" --resume <"$T/bad.vs"
still_kept "a token of another receive (its chain)"
# ... and another place
"$VSNAPCTL" send --from @mon --resume "$g_tue.$g_mon.1.0.$chain" "$(sf tue)" >"$T/bad.vs" ||
	fail "send --resume from record 1"
KEPT=1 refused "a token of another receive (its place)" "not its continuation" --resume <"$T/bad.vs"
still_kept "a token of another receive (its place)"
# a stream from another base: tue sent whole (no base) from record 1
"$VSNAPCTL" send --resume "$g_tue.00000000000000000000000000000000.1.0.$chain" "$(sf tue)" \
	>"$T/bad.vs" || fail "send --resume of the full stream"
KEPT=1 refused "a resumed stream of another base" "another base" --resume <"$T/bad.vs"
still_kept "a resumed stream of another base"
# the sender checks the token against the stream it makes
"$VSNAPCTL" send --from @mon --resume "$g_tue.$g_mon.2.4096.$chain" "$(sf tue)" >/dev/null \
	2>"$T/s.err" && fail "send took a token whose place is not a record boundary"
grep -q "not of this stream" "$T/s.err" || fail "send --resume: $(cat "$T/s.err")"
"$VSNAPCTL" send --resume "$tok" "$(sf wed)" >/dev/null 2>"$T/s.err" &&
	fail "send took a token of another snapshot"
# resumed: only what was missing travels, and the result is tue exactly
"$VSNAPCTL" send --resume "$tok" "$(sf tue)" >"$T/rest.vs" || fail "send --resume"
n=$(stat -c %s "$T/tue.vs") kept=$(prefix_bytes "$T/tue.vs" "$k") rest=$(stat -c %s "$T/rest.vs")
begin=$(prefix_bytes "$T/rest.vs" 1)
assert_eq $((rest - begin)) $((n - kept)) "bytes resent after the resumed begin"
[ "$kept" -gt $((M)) ] || fail "kept only $kept bytes of the cut stream"
note "resume: $rest bytes sent again of $n ($kept kept)"
resumed tue "resume after the cut"

# a record dropped before the cut: refused at the next record, nothing kept
# to resume from it (the part before the gap is all that could be kept)
wr "$M1/vm1.img" 0 6
snap tue2
"$VSNAPCTL" send --from @tue "$(sf tue2)" >"$T/tue2.vs"
r3=$(prefix_bytes "$T/tue2.vs" 2) r4=$(prefix_bytes "$T/tue2.vs" 3) r6=$(prefix_bytes "$T/tue2.vs" 5)
{ head -c "$r3" "$T/tue2.vs"
  dd if="$T/tue2.vs" bs=4k skip=$((r4)) count=$((r6 - r4 + 100)) iflag=skip_bytes,count_bytes status=none
} >"$T/drop.vs"
before=$(state)
rc=0; "$VSNAPCTL" receive "$M2/vm1.img" <"$T/drop.vs" 2>"$T/r.err" || rc=$?
[ $rc -eq 1 ] || fail "dropped record: exit $rc: $(cat "$T/r.err")"
grep -q "a record before it missing; nothing was applied" "$T/r.err" || fail "dropped record: $(cat "$T/r.err")"
[ "$(state)" = "$before" ] || fail "dropped record: the destination changed"
"$VSNAPCTL" receive --token "$M2/vm1.img" >/dev/null 2>&1 && fail "dropped record: a part was kept"
hidden "dropped record"
note "dropped: $(cat "$T/r.err")"
"$VSNAPCTL" receive "$M2/vm1.img" <"$T/tue2.vs" >/dev/null 2>"$T/r.err" || fail "tue2: $(cat "$T/r.err")"
same "$(sf tue2)" "$M2/vm1.img" "tue2"

# a kept part does not block its directory: rmdir takes it; --abort removes one
dd if=/dev/urandom of="$M1/x.img" bs=1M count=3 status=none
mkdir "$M1/.snapshots/x.img@a"
"$VSNAPCTL" send "$M1/.snapshots/x.img@a/x.img" >"$T/xa.vs"
mkdir "$M2/d"
head -c $((M + 5000)) "$T/xa.vs" | "$VSNAPCTL" receive "$M2/d/x.img" 2>/dev/null && fail "cut x.img@a received"
[ "$(ls -A "$M2/d")" = .snapshots ] || fail "the kept part is listed in d: $(ls -A "$M2/d")"
"$VSNAPCTL" receive --token "$M2/d/x.img" >/dev/null || fail "no part kept in d"
rmdir "$M2/d" || fail "rmdir of a directory holding only a kept part"
# ... and mv of a directory onto it
mkdir "$M2/d" "$M2/e"
head -c $((M + 5000)) "$T/xa.vs" | "$VSNAPCTL" receive "$M2/d/x.img" 2>/dev/null && fail "cut x.img@a received"
mv -T "$M2/e" "$M2/d" || fail "mv onto a directory holding only a kept part"
"$VSNAPCTL" receive --token "$M2/d/x.img" >/dev/null 2>&1 && fail "a part is kept after the mv"
rmdir "$M2/d"
mkdir "$M2/d"
head -c $((M + 5000)) "$T/xa.vs" | "$VSNAPCTL" receive "$M2/d/x.img" 2>/dev/null && fail "cut x.img@a received"
"$VSNAPCTL" receive --abort "$M2/d/x.img" >/dev/null || fail "receive --abort"
"$VSNAPCTL" receive --token "$M2/d/x.img" >/dev/null 2>&1 && fail "a part is kept after --abort"
rmdir "$M2/d"
# --token and --abort count and remove what a receive makes only: another
# file whose name has the prefix is no part (exit 1, and it stays)
mkdir "$M2/d"
echo mine >"$M2/d/.vsnap-recv.mine"
rc=0; "$VSNAPCTL" receive --token "$M2/d/x.img" >"$T/r.out" 2>&1 || rc=$?
[ $rc -eq 1 ] || fail "--token with no part but .vsnap-recv.mine: exit $rc: $(cat "$T/r.out")"
rc=0; "$VSNAPCTL" receive --abort "$M2/d/x.img" >"$T/r.out" 2>&1 || rc=$?
[ $rc -eq 1 ] || fail "--abort with no part but .vsnap-recv.mine: exit $rc: $(cat "$T/r.out")"
[ "$(cat "$M2/d/.vsnap-recv.mine")" = mine ] || fail "--abort removed a file that is no part"
rm "$M2/d/.vsnap-recv.mine"
rmdir "$M2/d"
# written after @tue: refused, then the mirror re-attach
wr "$M2/vm1.img" 12 2
refused "written after the base" "was written after snapshot vm1.img@tue" <"$T/wed.vs"
"$VSNAPCTL" receive --force "$M2/vm1.img" <"$T/wed.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive --force: $(cat "$T/r.err")"
cmp "$(sf wed)" "$M2/vm1.img" || fail "re-attached volume differs from @wed"
cmp "$(sf wed)" "$M2/.snapshots/vm1.img@wed/vm1.img" || fail "re-attached @wed differs"
w=$(stat -c %s "$T/wed.vs")
[ "$w" -le $((3 * M + 8192)) ] || fail "the re-attach stream is $w bytes for 3 MiB written and 1 punched"

# the receiving daemon killed in the middle of a receive
wr "$M1/vm1.img" 0 16
snap thu
"$VSNAPCTL" send --from @wed "$(sf thu)" >"$T/thu.vs"
kill $WRITER; wait $WRITER 2>/dev/null || true
before=$(state)
mkfifo "$T/fifo"
"$VSNAPCTL" receive "$M2/vm1.img" <"$T/fifo" >"$T/k.out" 2>&1 &
RECV=$!
vs_track_pid $RECV
exec 3>"$T/fifo"
# a checkpoint comes after 8 MiB of stream and 1 s since the last one: 10 MiB,
# then (the second over) one more record
head -c $((10 * M)) "$T/thu.vs" >&3
sleep 1.1
dd if="$T/thu.vs" bs=64k skip=$((10 * M)) count=$((M + 100)) iflag=skip_bytes,count_bytes status=none >&3
# wait for it: the part's name (its token) says it
for _ in $(seq 600); do
	tok=$("$VSNAPCTL" receive --token "$M2/vm1.img" 2>/dev/null) && [ "${tok#*.*.1.}" = "$tok" ] && break
	sleep 0.05
done
[ -n "$tok" ] && [ "${tok#*.*.1.}" = "$tok" ] || fail "no checkpoint while receiving: '$tok'"
hidden "while receiving"
vs_kill9 "$M2"
exec 3>&-
wait $RECV && fail "receive succeeded with its daemon killed"
vs_mount "$S2" "$M2"
[ "$(state)" = "$before" ] || fail "after the kill: not the old state"
hidden "after the kill"
"$VSNAPCTL" check "$S2" >"$T/check" 2>&1 || fail "check after the kill: $(cat "$T/check")"
tok=$("$VSNAPCTL" receive --token "$M2/vm1.img") || fail "no part kept after the kill"
"$VSNAPCTL" send --from @wed --resume "$tok" "$(sf thu)" >"$T/rest.vs" || fail "send --resume after the kill"
n=$(stat -c %s "$T/thu.vs") rest=$(stat -c %s "$T/rest.vs")
[ "$rest" -le $((n - 8 * M + 200)) ] || fail "after the kill $rest of $n bytes were sent again"
note "daemon killed: $rest of $n bytes sent again (token $tok)"
resumed thu "resume after the kill"
for s in "$S1" "$S2"; do
	"$VSNAPCTL" check "$s" >"$T/check" 2>&1 || fail "check $s: $(cat "$T/check")"
done
pass
