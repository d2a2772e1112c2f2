#!/bin/bash
# receive --force whose commit the daemon refuses because the destination
# is open: one line says why and how to go on, and the command it
# suggests keeps --force (the destination was written after the base: a
# resume without --force would be refused for that); run as suggested
# once the volume is closed, it commits.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

S1=$T/s1 S2=$T/s2 M1=$T/m1 M2=$T/m2
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"
sf() { echo "$M1/.snapshots/vm1.img@$1/vm1.img"; }

truncate -s 4M "$M1/vm1.img"
dd if=/dev/urandom of="$M1/vm1.img" bs=1M count=2 conv=notrunc,fsync status=none
mkdir "$M1/.snapshots/vm1.img@mon"
dd if=/dev/urandom of="$M1/vm1.img" bs=1M seek=2 count=1 conv=notrunc,fsync status=none
mkdir "$M1/.snapshots/vm1.img@tue"
"$VSNAPCTL" send "$(sf mon)" | "$VSNAPCTL" receive "$M2/vm1.img" >/dev/null || fail "receive mon"
"$VSNAPCTL" send --from @mon "$(sf tue)" >"$T/tue.vs" || fail "send tue"
echo written-after | dd of="$M2/vm1.img" conv=notrunc,fsync status=none

exec 3<"$M2/vm1.img"
rc=0
"$VSNAPCTL" receive --force "$M2/vm1.img" <"$T/tue.vs" >/dev/null 2>"$T/r.err" || rc=$?
exec 3<&-
[ $rc -eq 1 ] || fail "--force with the volume open: exit $rc: $(cat "$T/r.err")"
assert_eq "$(wc -l <"$T/r.err")" 1 "lines of the refusal ($(tr '\n' '|' <"$T/r.err"))"
grep -q "is open.*kept whole" "$T/r.err" || fail "not the daemon's reason and the kept part: $(cat "$T/r.err")"
note "$(cat "$T/r.err")"
cmd=$(sed -n 's/.*vsnapctl receive \(--resume[^|]*\) commits it.*/\1/p' "$T/r.err")
[ -n "$cmd" ] || fail "no receive command suggested: $(cat "$T/r.err")"
case " $cmd " in *" --force "*) ;; *) fail "the suggested '$cmd' leaves out --force" ;; esac
tok=$("$VSNAPCTL" receive --token "$M2/vm1.img") || fail "no part kept"
"$VSNAPCTL" send --resume "$tok" "$(sf tue)" >"$T/rest.vs" || fail "send --resume"
# shellcheck disable=SC2086
"$VSNAPCTL" receive $cmd <"$T/rest.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive $cmd (as suggested): $(cat "$T/r.err")"
cmp "$(sf tue)" "$M2/vm1.img" || fail "the volume differs"
cmp "$(sf tue)" "$M2/.snapshots/vm1.img@tue/vm1.img" || fail "the received snapshot differs"
pass
