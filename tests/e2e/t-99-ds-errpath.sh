#!/bin/bash
# An error while a directory stream's record is applied names the entry,
# not only PATH: a tree whose paths fit below the source's directory but
# not below the receiver's temporary directory (.vsnap-recv.TOKEN is
# longer than the source's D) fails with "PATH/ENTRY...: File name too
# long", in one line, exit 2, and the destination is not made.  A path
# longer than a stream carries is refused by send, naming the entry.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

S1=$T/s1 S2=$T/s2 M1=$T/m1 M2=$T/m2
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"
W=$M1/vm D=$M2/vm

mkdir "$W"
n=$(printf 'n%.0s' $(seq 250))
# 16 levels of 251 bytes: 4016 bytes below vm, a path the source's mount
# takes whole and the receiver's temporary directory does not
(cd "$W" && for i in $(seq 16); do mkdir "$i$n" && cd "$i$n" || exit 1; done) ||
	fail "the source tree"
mkdir "$W/.snapshots/s1"
rc=0
"$VSNAPCTL" send "$W/.snapshots/s1" | "$VSNAPCTL" receive "$D" >/dev/null 2>"$T/r.err" || rc=$?
[ $rc -eq 2 ] || fail "exit $rc, not 2: $(cat "$T/r.err")"
assert_eq "$(wc -l <"$T/r.err")" 1 "lines ($(cat "$T/r.err"))"
grep -q "^vsnapctl: receive: $D/1n.*: File name too long" "$T/r.err" ||
	fail "the entry is not named: $(cat "$T/r.err")"
[ -e "$D" ] && fail "$D was made"
note "$(cut -c 1-160 "$T/r.err")..."

# A path longer than a file record carries (4095 bytes) is refused by
# send, naming the entry, never cut short into another entry's path
(cd "$W" && for i in $(seq 16); do cd "$i$n" || exit 1; done && touch "$(printf 'v%.0s' $(seq 250))") ||
	fail "the long entry"
mkdir "$W/.snapshots/s2"
rc=0
"$VSNAPCTL" send "$W/.snapshots/s2" >"$T/s2.vs" 2>"$T/s.err" || rc=$?
[ $rc -ne 0 ] || fail "send of a path of $((16 * 251 + 250)) bytes succeeded"
grep -q "^vsnapctl: send: snapshot s2: the path of its entry vvv.* is [0-9]* bytes, more than a stream carries (4095)" \
	"$T/s.err" || fail "not the reason: $(cat "$T/s.err")"
assert_eq "$(wc -l <"$T/s.err")" 1 "send's lines ($(cat "$T/s.err"))"
pass
