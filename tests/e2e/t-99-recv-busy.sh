#!/bin/bash
# A volume stream received whole whose commit the daemon refuses because
# the destination volume is open: the refusal says how to go on, the
# stream is kept (fsynced, named at the place before its end), and once
# the volume is closed, send --resume TOKEN writes begin and end only (no
# data sent again) and receive --resume commits it: the volume and its new
# snapshot read as the source's.  Then the same with --force onto a
# volume written after the base: the refusal is one line, and the command
# it suggests keeps --force (a resume without it would be refused for the
# write); run as suggested once the volume is closed, it commits.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

S1=$T/s1 S2=$T/s2 M1=$T/m1 M2=$T/m2
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"
sf() { echo "$M1/.snapshots/vm1.img@$1/vm1.img"; }

truncate -s 8M "$M1/vm1.img"
dd if=/dev/urandom of="$M1/vm1.img" bs=1M count=3 conv=notrunc,fsync status=none
mkdir "$M1/.snapshots/vm1.img@mon"
dd if=/dev/urandom of="$M1/vm1.img" bs=1M seek=4 count=2 conv=notrunc,fsync status=none
mkdir "$M1/.snapshots/vm1.img@tue"
"$VSNAPCTL" send "$(sf mon)" | "$VSNAPCTL" receive "$M2/vm1.img" >/dev/null || fail "receive mon"
"$VSNAPCTL" send --from @mon "$(sf tue)" >"$T/tue.vs" || fail "send tue"

exec 3<"$M2/vm1.img"
rc=0
"$VSNAPCTL" receive "$M2/vm1.img" <"$T/tue.vs" >/dev/null 2>"$T/r.err" || rc=$?
exec 3<&-
[ $rc -eq 1 ] || fail "commit with the volume open: exit $rc: $(cat "$T/r.err")"
grep -q "is open" "$T/r.err" || fail "the daemon's reason is not said: $(cat "$T/r.err")"
grep -q "kept whole" "$T/r.err" || fail "the stream was not kept: $(cat "$T/r.err")"
note "$(tr '\n' '|' <"$T/r.err")"
[ -e "$M2/.snapshots/vm1.img@tue" ] && fail "tue appeared"
cmp -s "$(sf mon)" "$M2/vm1.img" || fail "the volume changed"
tok=$("$VSNAPCTL" receive --token "$M2/vm1.img") || fail "no part kept"
grep -qF -- "--resume $tok " "$T/r.err" || fail "the token printed is not $tok"

"$VSNAPCTL" send --resume "$tok" "$(sf tue)" >"$T/rest.vs" || fail "send --resume"
rest=$(stat -c %s "$T/rest.vs")
[ "$rest" -lt 512 ] || fail "the resumed stream is $rest bytes: data sent again"
"$VSNAPCTL" receive --resume "$M2/vm1.img" <"$T/rest.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive --resume: $(cat "$T/r.err")"
cmp "$(sf tue)" "$M2/.snapshots/vm1.img@tue/vm1.img" || fail "the received snapshot differs"
cmp "$(sf tue)" "$M2/vm1.img" || fail "the volume differs"
"$VSNAPCTL" receive --token "$M2/vm1.img" >/dev/null 2>&1 && fail "a part is left"

# --force, refused because the volume is open: the suggestion keeps --force
dd if=/dev/urandom of="$M1/vm1.img" bs=1M seek=6 count=1 conv=notrunc,fsync status=none
mkdir "$M1/.snapshots/vm1.img@wed"
"$VSNAPCTL" send --from @tue "$(sf wed)" >"$T/wed.vs" || fail "send wed"
echo written-after | dd of="$M2/vm1.img" conv=notrunc,fsync status=none
exec 3<"$M2/vm1.img"
rc=0
"$VSNAPCTL" receive --force "$M2/vm1.img" <"$T/wed.vs" >/dev/null 2>"$T/r.err" || rc=$?
exec 3<&-
[ $rc -eq 1 ] || fail "--force with the volume open: exit $rc: $(cat "$T/r.err")"
assert_eq "$(wc -l <"$T/r.err")" 1 "lines of the refusal ($(tr '\n' '|' <"$T/r.err"))"
grep -q "is open.*kept whole" "$T/r.err" || fail "not the daemon's reason and the kept part: $(cat "$T/r.err")"
cmd=$(sed -n 's/.*vsnapctl receive \(--resume[^|]*\) commits it.*/\1/p' "$T/r.err")
[ -n "$cmd" ] || fail "no receive command suggested: $(cat "$T/r.err")"
case " $cmd " in *" --force "*) ;; *) fail "the suggested '$cmd' leaves out --force" ;; esac
tok=$("$VSNAPCTL" receive --token "$M2/vm1.img") || fail "no part kept (--force)"
"$VSNAPCTL" send --resume "$tok" "$(sf wed)" >"$T/rest.vs" || fail "send --resume (--force)"
# shellcheck disable=SC2086
"$VSNAPCTL" receive $cmd <"$T/rest.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive $cmd (as suggested): $(cat "$T/r.err")"
cmp "$(sf wed)" "$M2/vm1.img" || fail "the volume differs (--force)"
cmp "$(sf wed)" "$M2/.snapshots/vm1.img@wed/vm1.img" || fail "the received snapshot differs (--force)"
"$VSNAPCTL" check "$S2" >"$T/check" 2>&1 || fail "check: $(cat "$T/check")"
pass
