#!/bin/bash
# vsnapctl receive refuses, with one line and exit 1, and leaves the
# destination as it was (the volume's bytes, its snapshots, another volume
# being written meanwhile, no temporary volume): a flipped byte, a stream
# for a base the destination lacks, a stream applied twice, a full stream
# onto an existing volume, a destination written after the base, a cut
# stream (the sender killed half way: resuming is disabled until a kept
# part can be verified, so it is refused like a damaged one, and receive
# --resume too; the whole stream then applies).  Mirror re-attach: both sides written after the
# split, receive --force makes the destination equal to the source's new
# snapshot, moving the source's changed blocks only.  The receiving daemon
# killed (SIGKILL) in the middle of a receive: after a new mount the
# destination is the old state, checks clean, and the same stream then
# applies.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

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

# refused WHAT TEXT < STREAM: exit 1, one line holding TEXT, nothing changed
# refused WHAT TEXT [OPTION...] < STREAM
refused() {
	local what=$1 text=$2 rc=0 before
	before=$(state)
	"$VSNAPCTL" receive "${@:3}" "$M2/vm1.img" >"$T/r.out" 2>"$T/r.err" || rc=$?
	[ $rc -eq 1 ] || fail "$what: exit $rc, not 1: $(cat "$T/r.err")"
	assert_eq "$(wc -l <"$T/r.err")" 1 "$what: lines of the refusal"
	grep -qF -- "$text" "$T/r.err" || fail "$what: $(cat "$T/r.err")"
	[ "$(state)" = "$before" ] || fail "$what: the destination changed"
	ls -a "$M2" | grep -q '^\.vsnap-recv' && fail "$what: a temporary volume was left"
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

# cut (the sender killed): refused, nothing kept; then the whole stream
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
grep -q "nothing was applied" "$T/r.err" || fail "cut stream: $(cat "$T/r.err")"
[ "$(state)" = "$before" ] || fail "cut stream: the destination changed"
ls -a "$M2" | grep -q '^\.vsnap-recv\.' && fail "cut stream: a temporary volume is left: $(ls -a "$M2")"
note "cut: $(cat "$T/r.err")"
refused "receive --resume" "resuming a cut receive is disabled" --resume <"$T/tue.vs"
"$VSNAPCTL" receive "$M2/vm1.img" <"$T/tue.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive tue after the cut one: $(cat "$T/r.err")"
cmp "$(sf tue)" "$M2/.snapshots/vm1.img@tue/vm1.img" || fail "tue differs"
cmp "$(sf tue)" "$M2/vm1.img" || fail "the volume differs from tue"

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
head -c $((10 * M)) "$T/thu.vs" >&3
for _ in $(seq 100); do
	ls -a "$M2" | grep -q '^\.vsnap-recv' && break
	sleep 0.05
done
ls -a "$M2" | grep -q '^\.vsnap-recv' || fail "no temporary volume while receiving"
vs_kill9 "$M2"
exec 3>&-
wait $RECV && fail "receive succeeded with its daemon killed"
vs_mount "$S2" "$M2"
[ "$(state | grep -v vsnap-recv)" = "$(echo "$before" | grep -v vsnap-recv)" ] ||
	fail "after the kill: not the old state"
"$VSNAPCTL" check "$S2" >"$T/check" 2>&1 || fail "check after the kill: $(cat "$T/check")"
"$VSNAPCTL" receive "$M2/vm1.img" <"$T/thu.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive after the kill: $(cat "$T/r.err")"
cmp "$(sf thu)" "$M2/vm1.img" || fail "@thu received after the kill differs"
ls -a "$M2" | grep -q '^\.vsnap-recv' && fail "a temporary volume was left: $(ls -a "$M2")"
for s in "$S1" "$S2"; do
	"$VSNAPCTL" check "$s" >"$T/check" 2>&1 || fail "check $s: $(cat "$T/check")"
done
pass
