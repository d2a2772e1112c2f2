#!/bin/bash
# Directory streams: vsnapctl send of a directory snapshot (a VM's
# directory: two volumes, a small file, a subdirectory) and receive into a
# second store.  Full, then incrementals after writes, punches, a new
# file, a removed file, a removed subdirectory, a file replaced by a
# directory of the same name, a volume replaced by a new one of the same
# name (rm + create), a truncate: after each receive every file of the
# received snapshot and of the directory compares equal to the source's
# snapshot (cmp), the trees are the same (names, kinds, modes, sizes), and
# vsnapctl check is clean on both stores; send -n prints the exact size.
# Refused with one line, the destination unchanged: a flipped byte, a
# truncated stream, a stream for the wrong base, a stream applied twice, a
# forged path with '..', a destination written after the base (--force
# then replaces it).  A stream cut in the middle keeps its verified part
# (a hidden temporary directory that vsnapctl list does not show), and
# send --resume TOKEN | receive --resume finishes it, sending at most one
# record again.  A commit refused because a volume of the destination is
# open keeps the whole stream: after closing it, send --resume sends no
# data and receive --resume commits.  The commit is the daemon's
# (ns_recv_commit with tree=1).
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
[ -x "$TOOLS/forgestream" ] || fail "$TOOLS/forgestream not built"

M=$((1024 * 1024))
S1=$T/s1 S2=$T/s2 M1=$T/m1 M2=$T/m2
mkdir -p "$M1" "$M2"
vs_mount "$S1" "$M1"
vs_mount "$S2" "$M2"
W=$M1/web D=$M2/web

wr() {  # wr FILE OFFSET_MIB LENGTH_MIB
	dd if=/dev/urandom of="$1" bs=1M seek="$2" count="$3" conv=notrunc,fsync status=none
}
sdir() { echo "$W/.snapshots/$1"; }

# names, kinds, modes and sizes below a directory (its .snapshots aside)
tree() {
	(cd "$1" && find . -mindepth 1 -name .snapshots -prune -o -printf '%P %y %m %s\n' | sort)
}

# the destination as a refusal must leave it: its tree and every byte,
# its snapshots, and what is in its parent
state() {
	{
		ls "$M2"
		tree "$D"
		(cd "$D" && find . -name .snapshots -prune -o -type f -print0 | sort -z |
			xargs -0 -r md5sum)
		ls "$D/.snapshots"
		for s in "$D"/.snapshots/*; do tree "$s"; done
	} 2>&1
}

parts() { ls -a "$M2" | grep -c '^\.vsnap-recv\.' || true; }

# received NAME: the snapshot NAME and D read as the source's snapshot NAME
received() {
	local s f
	s=$(sdir "$1")
	assert_eq "$(tree "$D/.snapshots/$1")" "$(tree "$s")" "$1: the received snapshot's tree"
	assert_eq "$(tree "$D")" "$(tree "$s")" "$1: the directory's tree"
	while IFS= read -r -d '' f; do
		cmp "$s/$f" "$D/.snapshots/$1/$f" || fail "$1: $f differs in the snapshot"
		cmp "$s/$f" "$D/$f" || fail "$1: $f differs in the directory"
	done < <(cd "$s" && find . -type f -printf '%P\0')
	assert_eq "$(parts)" 0 "$1: temporary directories left"
	"$VSNAPCTL" list "$M2" | grep -q 'vsnap-recv' && fail "$1: list shows a part"
	for st in "$S1" "$S2"; do
		"$VSNAPCTL" check "$st" >"$T/check" 2>&1 || fail "$1: check $st: $(cat "$T/check")"
	done
	note "$1 received: $(tree "$D" | wc -l) entries equal"
}

# refused WHAT TEXT [OPTION...] < STREAM: exit 1, one line holding TEXT,
# the destination ($DEST, else $D) and its parent unchanged, $KEPT
# temporary directories (0 unless given)
refused() {
	local what=$1 text=$2 rc=0 before
	before=$(state)
	"$VSNAPCTL" receive "${@:3}" "${DEST:-$D}" >"$T/r.out" 2>"$T/r.err" || rc=$?
	[ $rc -eq 1 ] || fail "$what: exit $rc, not 1: $(cat "$T/r.err")"
	assert_eq "$(wc -l <"$T/r.err")" 1 "$what: lines of the refusal ($(tr "\n" "|" <"$T/r.err"))"
	grep -qF -- "$text" "$T/r.err" || fail "$what: $(cat "$T/r.err")"
	[ "$(state)" = "$before" ] || fail "$what: the destination changed"
	assert_eq "$(parts)" "${KEPT:-0}" "$what: temporary directories"
	note "$what: $(cat "$T/r.err")"
}

# send ARGS... > FILE, and -n of the same said the exact size
sendto() {
	local out=$1 n
	shift
	n=$("$VSNAPCTL" send -n "$@" | sed -n 's/.*: \([0-9]*\) bytes.*/\1/p')
	"$VSNAPCTL" send "$@" >"$out" || fail "send $*"
	assert_eq "$(stat -c %s "$out")" "$n" "send -n $* (the exact size)"
}

# ---- the source: a VM's directory --------------------------------------------------
mkdir "$W" "$W/sub" "$W/gone" "$W/gone/deeper"
truncate -s $((8 * M)) "$W/disk0.img"
wr "$W/disk0.img" 0 3
truncate -s $((4 * M)) "$W/disk1.img"
wr "$W/disk1.img" 1 2
echo '<domain type="kvm"><name>web</name></domain>' >"$W/vm.xml"
chmod 0600 "$W/vm.xml"
chmod 0750 "$W/sub"
echo notes >"$W/sub/notes.txt"
echo a >"$W/gone/a"
echo b >"$W/gone/deeper/b"
echo was-a-file >"$W/becomes-dir"
truncate -s $((2 * M)) "$W/replaced.img"
wr "$W/replaced.img" 0 1
mkdir "$(sdir mon)"

# tue: writes, punches, a new file, a removed file, a removed subdirectory,
# a file replaced by a directory, a volume replaced by a new one, a truncate
wr "$W/disk0.img" 5 1
fallocate -p -o $((M + 4096)) -l $((M / 2)) "$W/disk1.img"
truncate -s $((1 * M)) "$W/sub/new.img"
wr "$W/sub/new.img" 0 1
rm "$W/vm.xml" && echo '<domain/>' >"$W/vm2.xml"
rm -r "$W/gone"
rm "$W/becomes-dir" && mkdir "$W/becomes-dir" && echo in >"$W/becomes-dir/in"
rm "$W/replaced.img" && truncate -s $((3 * M)) "$W/replaced.img" && wr "$W/replaced.img" 1 1
truncate -s $((6 * M)) "$W/disk0.img"
mkdir "$(sdir tue)"

# wed: a little, for --force and the open volume
wr "$W/disk1.img" 0 1
chmod 0640 "$W/vm2.xml"
mkdir "$(sdir wed)"
wr "$W/disk0.img" 2 1
mkdir "$(sdir thu)"

sendto "$T/mon.vs" "$(sdir mon)"
sendto "$T/tue.vs" --from @mon "$(sdir tue)"
sendto "$T/wed.vs" --from "$(sdir tue)" "$(sdir wed)"
sendto "$T/thu.vs" --from @wed "$(sdir thu)"
"$VSNAPCTL" send -c --from @mon "$(sdir tue)" >"$T/tue.zst.vs" || fail "send -c"

# ---- full, cut in the middle, resumed ----------------------------------------------
n=$(stat -c %s "$T/mon.vs")
cut=$((n / 2))
rc=0
head -c $cut "$T/mon.vs" | "$VSNAPCTL" receive "$D" >/dev/null 2>"$T/r.err" || rc=$?
[ $rc -eq 1 ] || fail "cut stream: exit $rc: $(cat "$T/r.err")"
assert_eq "$(wc -l <"$T/r.err")" 1 "cut stream: lines ($(cat "$T/r.err"))"
grep -q "truncated; kept the first" "$T/r.err" || fail "cut stream: $(cat "$T/r.err")"
[ -e "$D" ] && fail "cut stream: $D exists"
assert_eq "$(parts)" 1 "cut stream: the part kept"
"$VSNAPCTL" list "$M2" | grep -q 'vsnap-recv' && fail "list shows the part kept"
tok=$("$VSNAPCTL" receive --token "$D") || fail "receive --token"
grep -qF -- "--resume $tok " "$T/r.err" || fail "the token of --token ($tok) is not the one printed"
note "cut: $(cat "$T/r.err")"
"$VSNAPCTL" send --resume "$tok" "$(sdir mon)" >"$T/rest.vs" || fail "send --resume"
rest=$(stat -c %s "$T/rest.vs")
# what was not verified (at most one record of 1 MiB and its header) plus a
# begin and the restated file record
[ "$rest" -le $((n - cut + M + 24 + 4096 + 200)) ] ||
	fail "the resumed stream is $rest bytes; $((n - cut)) were missing"
note "resumed: $rest bytes sent again of $n ($((n - cut)) missing)"
"$VSNAPCTL" receive --resume "$D" <"$T/rest.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive --resume: $(cat "$T/r.err")"
received mon

# ---- refusals --------------------------------------------------------------------------
refused "applied twice" "was received already" <"$T/mon.vs"
refused "wrong base" "wrong base" <"$T/wed.vs"
KEPT=1 refused "truncated" "truncated" < <(head -c $(($(stat -c %s "$T/tue.vs") - 10)) "$T/tue.vs")
# a cut stream keeps its part: remove it (and check --abort does)
"$VSNAPCTL" receive --abort "$D" | grep -q "removed" || fail "receive --abort"
assert_eq "$(parts)" 0 "after --abort"
n=$(stat -c %s "$T/tue.vs")
for at in 100 $((n / 2)) $((n - 30)); do
	cp "$T/tue.vs" "$T/bad.vs"
	printf '\x5a' | dd of="$T/bad.vs" bs=1 seek=$at conv=notrunc status=none
	cmp -s "$T/bad.vs" "$T/tue.vs" || refused "byte $at flipped" "damaged" <"$T/bad.vs"
done
"$TOOLS/forgestream" --dir web s1 "a/../../etc" >"$T/forged.vs" || fail "forgestream --dir"
DEST=$M2/web2 refused "a path with .." "not below the directory" <"$T/forged.vs"
"$TOOLS/forgestream" --dir web s1 $'x\n' >"$T/forged.vs" || fail "forgestream --dir"
DEST=$M2/web2 refused "a path with a newline" "has a name the mount does not take" \
	<"$T/forged.vs"
grep -q '[[:cntrl:]]' "$T/r.err" && fail "a control character printed: $(od -c "$T/r.err")"

# ---- incrementals ------------------------------------------------------------------------
"$VSNAPCTL" receive "$D" <"$T/tue.zst.vs" >/dev/null || fail "receive tue (compressed)"
received tue

# the destination written after tue: refused, then --force
wr "$D/disk0.img" 0 1
refused "written after the base" "was written after snapshot tue" <"$T/wed.vs"
"$VSNAPCTL" receive --force "$D" <"$T/wed.vs" >/dev/null || fail "receive --force wed"
received wed

# a volume of the destination open: the daemon refuses the commit, the
# stream is kept whole; closed, send --resume sends begin and end only
exec 3<"$D/disk1.img"
rc=0
"$VSNAPCTL" receive "$D" <"$T/thu.vs" >/dev/null 2>"$T/r.err" || rc=$?
[ $rc -eq 1 ] || fail "commit with a volume open: exit $rc: $(cat "$T/r.err")"
grep -q "kept whole" "$T/r.err" || fail "commit with a volume open: $(cat "$T/r.err")"
note "open: $(tr '\n' '|' <"$T/r.err")"
exec 3<&-
tok=$("$VSNAPCTL" receive --token "$D") || fail "receive --token after the refused commit"
"$VSNAPCTL" send --resume "$tok" "$(sdir thu)" >"$T/rest.vs" || fail "send --resume thu"
rest=$(stat -c %s "$T/rest.vs")
[ "$rest" -lt 1024 ] || fail "the resumed stream after a refused commit is $rest bytes: data sent again"
"$VSNAPCTL" receive --resume "$D" <"$T/rest.vs" >/dev/null 2>"$T/r.err" ||
	fail "receive --resume thu: $(cat "$T/r.err")"
received thu

pass
