#!/bin/bash
# Directory streams carry every entry's owner, mode and time, and D's own
# owner and mode: a 0700 VM directory, files owned 1234:2345, directories
# that tighten 0755 -> 0750 -> 0700 between snapshots read the same on the
# replica (owners: when vsnapctl is root, as here), and D's mode changed
# later (0700 -> 0750) is set on D by the incremental receive.  A stream cut inside a
# volume below those directories and resumed gives what an uninterrupted
# receive gives: the resumed stream restates the directories above the
# place it goes on at, so their modes and times are the stream's, not the
# base's.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
[ "$(id -u)" = 0 ] || skip "owners are set by root only"

S1=$T/s1 S2=$T/s2 M1=$T/m1 M2=$T/m2
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"
W=$M1/vm D=$M2/vm

# names, kinds, owners, modes, sizes and times below a directory
attrs() {
	(cd "$1" && find . -mindepth 1 -name .snapshots -prune -o \
		-printf '%P %y %u:%g %m %s %TY-%Tm-%Td %TT\n' | sort)
}
same() {  # same SNAP: the snapshot and D read as the source's snapshot
	assert_eq "$(attrs "$D/.snapshots/$1")" "$(attrs "$W/.snapshots/$1")" "$1: the snapshot"
	assert_eq "$(attrs "$D")" "$(attrs "$W/.snapshots/$1")" "$1: the directory"
	assert_eq "$(stat -c '%u:%g %a' "$D")" "$(stat -c '%u:%g %a' "$W")" "$1: D itself"
	cmp "$W/.snapshots/$1/a/b/disk.img" "$D/a/b/disk.img" || fail "$1: disk.img differs"
}

mkdir -p "$W/a/b"
chmod 0700 "$W"
chown 4321:5432 "$W"
truncate -s 8M "$W/a/b/disk.img"
chown 1234:2345 "$W/a/b/disk.img" "$W/a"
chmod 0600 "$W/a/b/disk.img"
echo '<domain/>' >"$W/z.xml"
mkdir "$W/.snapshots/s1"
chmod 0750 "$W/a"
chmod 0700 "$W/a/b"
dd if=/dev/urandom of="$W/a/b/disk.img" bs=1M count=6 conv=notrunc,fsync status=none
touch -d @1000000000 "$W/a/b"
mkdir "$W/.snapshots/s2"

"$VSNAPCTL" send "$W/.snapshots/s1" | "$VSNAPCTL" receive "$D" >/dev/null || fail "receive s1"
same s1
chmod 0750 "$W"                         # D's own mode, set after the commit
"$VSNAPCTL" send --from @s1 "$W/.snapshots/s2" >"$T/s2.vs" || fail "send s2"
n=$(stat -c %s "$T/s2.vs")
rc=0
head -c $((n / 2)) "$T/s2.vs" | "$VSNAPCTL" receive "$D" >/dev/null 2>"$T/r.err" || rc=$?
[ $rc -eq 1 ] || fail "cut: exit $rc: $(cat "$T/r.err")"
tok=$("$VSNAPCTL" receive --token "$D") || fail "no part kept"
[ "$(echo "$tok" | cut -d. -f4)" -gt 0 ] || fail "the cut is not inside a volume: $tok"
"$VSNAPCTL" send --resume "$tok" "$W/.snapshots/s2" >"$T/rest.vs" || fail "send --resume"
"$VSNAPCTL" receive --resume "$D" <"$T/rest.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive --resume: $(cat "$T/r.err")"
same s2
note "$(attrs "$D" | tr '\n' '|')"
"$VSNAPCTL" check "$S2" >"$T/check" 2>&1 || fail "check: $(cat "$T/check")"
pass
