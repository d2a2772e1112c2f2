#!/bin/bash
# A resumed directory receive replays the records after its kept place,
# whatever it had applied past it: here a receive of s2 (p/q removed, p
# made a volume) applied every record but end, then was killed with
# SIGKILL before any checkpoint after begin, so the kept part says
# "record 1" while p is a volume in it already.  send --resume | receive
# --resume replays the remove of p/q below what is now a volume (ENOTDIR:
# already gone, not an error) and the entries, and commits: the received
# snapshot reads as the source's.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

S1=$T/s1 S2=$T/s2 M1=$T/m1 M2=$T/m2
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"
W=$M1/vm D=$M2/vm

mkdir -p "$W/p"
echo q >"$W/p/q"
truncate -s 64k "$W/z.img"
mkdir "$W/.snapshots/s1"
rm -r "$W/p"
echo now-a-volume >"$W/p"
mkdir "$W/.snapshots/s2"
"$VSNAPCTL" send "$W/.snapshots/s1" | "$VSNAPCTL" receive "$D" >/dev/null || fail "receive s1"
"$VSNAPCTL" send --from @s1 "$W/.snapshots/s2" >"$T/s2.vs" || fail "send s2"

# every record but end (24 bytes of header and checksum, 24 of fields),
# the input held open: the receive waits for more
mkfifo "$T/in"
"$VSNAPCTL" receive "$D" <"$T/in" >/dev/null 2>"$T/r.err" &
rp=$!
vs_track_pid $rp
exec 4>"$T/in"
head -c $(($(stat -c %s "$T/s2.vs") - 48)) "$T/s2.vs" >&4
# applied to the end once p has the source's time (set when z.img's
# record came after it)
want=$(stat -c %y "$W/.snapshots/s2/p")
for ((i = 0; i < 200 * VS_TIME_SCALE; i++)); do
	tok=$("$VSNAPCTL" receive --token "$D" 2>/dev/null) || tok=
	[ -n "$tok" ] && [ "$(stat -c %y "$M2/.vsnap-recv.$tok/p" 2>/dev/null)" = "$want" ] && break
	sleep 0.05
done
[ "$(stat -c %y "$M2/.vsnap-recv.$tok/p" 2>/dev/null)" = "$want" ] ||
	fail "the receive did not apply the records: $(cat "$T/r.err")"
kill -9 $rp
vs_wait_pid $rp 10 || fail "the receive did not die"
exec 4>&-
assert_eq "$(echo "$tok" | cut -d. -f3)" 1 "the kept part's place (record 1, begin)"

"$VSNAPCTL" send --resume "$tok" "$W/.snapshots/s2" >"$T/rest.vs" || fail "send --resume"
"$VSNAPCTL" receive --resume "$D" <"$T/rest.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive --resume: $(cat "$T/r.err")"
cmp "$W/.snapshots/s2/p" "$D/.snapshots/s2/p" || fail "p differs"
cmp "$W/.snapshots/s2/z.img" "$D/z.img" || fail "z.img differs"
[ -d "$D/p" ] && fail "p is a directory"
"$VSNAPCTL" receive --token "$D" >/dev/null 2>&1 && fail "a part is left"
"$VSNAPCTL" check "$S2" >"$T/check" 2>&1 || fail "check: $(cat "$T/check")"
pass
