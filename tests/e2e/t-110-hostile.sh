#!/bin/bash
# Hostile names and calls in and around the control directory, each one
# system call with raw bytes in its names (tests/tools/hostile.c), its errno
# checked against SPEC.md and docs/snapshots.md, and after every one of them:
# the daemon still runs, `vsnapctl check` is clean, and the store is
# unchanged (every path, type, size, mode, owner, mtime and ctime, and the
# sha256 of every file, snapshots included).
#
#   - file, directory and snapshot names: control characters, invalid UTF-8
#     (bad bytes, overlong forms, surrogates, past U+10FFFF, C1 controls,
#     truncated sequences), names of 255 bytes (fine) and 256 bytes
#     (ENAMETOOLONG), ".", "..", '/' inside a name (a path walk: the daemon
#     never sees it), ".snapshots" (EEXIST), every row of the errors table of
#     docs/snapshots.md (EINVAL, EEXIST, ENOENT, EROFS, EBUSY, EPERM,
#     ENOTEMPTY, ENAMETOOLONG);
#   - renames of .snapshots, into it and out of it, between two of them,
#     RENAME_EXCHANGE and RENAME_WHITEOUT; hard links, symlinks and special
#     files anywhere; chmod/chown/utimes/truncate/open-for-write/unlink/
#     mkdir -p inside snapshots; chmod/chown/touch of .snapshots;
#   - rmdir of a snapshot with a file open (EBUSY; the file still reads;
#     after the close the rmdir works), I/O through a volume opened before
#     it was unlinked or renamed.
# At the end, after a remount, the store is what it was.
. "$(dirname "$0")/lib.sh"

HT=$TOOLS/hostile
[ -x "$HT" ] || fail "$HT not built (make $B/tools/hostile)"
[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

STORE=$T/store
MNT=$T/mnt
REF=$T/ref.listing
NCALLS=0
NNAMES=0

# listing: every entry under the mount with its attributes, then a checksum
# of every file (snapshots included: find walks .snapshots like any other
# directory)
listing() {
	(cd "$MNT" && find . -printf '%p|%y|%s|%m|%U|%G|%T@|%C@\n' | sort &&
		find . -type f -print0 | sort -z | xargs -0r sha256sum)
}

ctl_check() {
	with_deadline 60 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 ||
		fail "vsnapctl check $STORE ($1) failed: $(tail -n 20 "$T/check.out")"
}

# the daemon runs, the store checks clean and is exactly $REF
unchanged() {
	_vs_alive "$(vs_pid "$MNT")" || fail "the daemon died after: $1"
	listing >"$T/now.listing"
	if ! cmp -s "$REF" "$T/now.listing"; then
		diff "$REF" "$T/now.listing" | head -n 20 || true
		fail "the store changed after a refused call: $1"
	fi
	ctl_check "after: $1"
}

# bad EXPECT OP ARGS...: the call fails with one of EXPECT ("EINVAL",
# "EPERM|EROFS"), and nothing changes
bad() {
	local exp=$1
	shift
	if ! "$HT" -e "$exp" "$@" >>"$T/calls.log" 2>"$T/hostile.err"; then
		cat "$T/hostile.err"
		fail "$(cat "$T/hostile.err")"
	fi
	NCALLS=$((NCALLS + 1))
	unchanged "$(tail -n 1 "$T/calls.log")"
}

# good OP ARGS...: the call must work (the caller takes a new $REF)
good() {
	"$HT" -e OK "$@" >>"$T/calls.log" 2>"$T/hostile.err" || fail "$(cat "$T/hostile.err")"
}

# bad_sh EXPECT_TEXT WHAT CMD...: a shell command (mkdir -p, ln, ...) fails
# with that strerror text, and nothing changes
bad_sh() {
	local text=$1
	shift
	expect_errno "$text" "$@"
	NCALLS=$((NCALLS + 1))
	unchanged "$*"
}

# (after the kernel's attribute cache of 1 s has expired: D/.snapshots shows
# the times of D, and the kernel may hold those of a moment ago)
new_ref() {
	sleep 1.1
	listing >"$REF"
}

# ==== the store ================================================================
vs_mount "$STORE" "$MNT"
pid0=$(vs_pid "$MNT")
W=$MNT/web
mkdir -p "$W/sub"
# small files: every refused call is followed by a checksum of all of them
head -c 200000 /dev/urandom >"$MNT/vol.img"
head -c 65536 /dev/urandom >"$W/root.img"
head -c 10000 /dev/urandom >"$W/sub/nv.bin"
printf '<domain/>\n' >"$W/web.xml"
L255=$(printf 'n%.0s' $(seq 255))
L256=${L255}n
# edges that are fine: 255 bytes, UTF-8 of 2, 3 and 4 bytes, a name made of
# 127 two-byte characters plus one byte (255 bytes in all)
E127=$(printf '\\xc3\\xa9%.0s' $(seq 127))
good creat "$W" "$L255"
good mkdir "$W" "d${L255:0:254}"
good creat "$W" '\xc3\xa9t\xc3\xa9.img'
good creat "$W" '\xe6\x97\xa5\xe6\x9c\xac.img'
good creat "$W" '\xf0\x9f\x98\x80.img'
good creat "$W" "${E127}x"
echo data >"$W/é.txt"
mkdir "$MNT/.snapshots/vol.img@s1" "$MNT/.snapshots/all" "$W/.snapshots/before" \
	"$W/.snapshots/$L255" "$MNT/.snapshots/vol.img@${L255:0:247}"
new_ref
ctl_check "fresh"
S=$MNT/.snapshots
WS=$W/.snapshots
note "fixture: $(grep -c '' "$REF") listing lines"

# ==== names of files and directories ===========================================
# control characters, invalid UTF-8 (a stray byte, overlong '/', a UTF-16
# surrogate, past U+10FFFF, a C1 control, truncated sequences, a 5-byte form)
BADNAMES=('x\x01y' 'x\x0ay' 'x\x7fy' 'x\x1fy' '\x09tab' 'x\xffy' 'x\xfey' 'x\xc0\xafy'
	'x\xe0\x80\xafy' 'x\xed\xa0\x80y' 'x\xed\xbf\xbfy' 'x\xf4\x90\x80\x80y' 'x\xc2\x80y'
	'x\xc2\x9fy' 'x\xe2\x82' '\xe2\x82x' 'x\x80y' 'x\xf8\x88\x80\x80\x80y' "${E127}"'\xc3')
for n in "${BADNAMES[@]}"; do
	NNAMES=$((NNAMES + 1))
	for d in "$MNT" "$W" "$W/sub"; do
		bad EINVAL creat "$d" "$n"
		bad EINVAL mkdir "$d" "$n"
	done
	bad EINVAL mknod "$W" "$n" reg
	bad EINVAL rename "$W" root.img "$W" "$n"
	bad EINVAL rename "$W" root.img "$W" "$n" noreplace
	bad EINVAL rename "$W" sub "$W" "$n"
	bad EINVAL rename "$MNT" vol.img "$W" "$n"
	bad "EPERM|EINVAL" link "$W" root.img "$W" "$n"
	bad "EPERM|EINVAL" symlink root.img "$W" "$n"
	bad ENOENT stat "$W" "$n"
done
# too long: 256 bytes, of one-byte and of two-byte characters
for n in "$L256" "${E127}xy" "d$L255"; do
	NNAMES=$((NNAMES + 1))
	bad ENAMETOOLONG creat "$W" "$n"
	bad ENAMETOOLONG mkdir "$W" "$n"
	bad ENAMETOOLONG rename "$W" root.img "$W" "$n"
	bad ENAMETOOLONG rename "$W" sub "$MNT" "$n"
	bad ENAMETOOLONG stat "$W" "$n"
done
# "." and "..", and '/' inside a name: the kernel resolves them, the daemon
# never sees such a name; whatever the error, nothing may change
for n in . ..; do
	NNAMES=$((NNAMES + 1))
	bad EEXIST creat "$W" "$n"
	bad EEXIST mkdir "$W" "$n"
	bad "EBUSY|EINVAL|EISDIR|ENOTEMPTY" rename "$W" sub "$W" "$n"
	bad "EBUSY|EINVAL" rename "$W" "$n" "$W" renamed
done
NNAMES=$((NNAMES + 3))
bad ENOENT creat "$W" 'nosuch\x2fx'
bad ENOENT mkdir "$W" 'nosuch\x2fx'
bad ENOTDIR creat "$W" 'root.img\x2fx'
bad ENOTDIR mkdir "$W" 'web.xml\x2fx'
bad ENOENT rename "$W" root.img "$W" 'nosuch\x2froot.img'
# ".snapshots" is taken in every directory
NNAMES=$((NNAMES + 1))
for d in "$MNT" "$W" "$W/sub"; do
	bad EEXIST creat "$d" .snapshots
	bad EEXIST mkdir "$d" .snapshots
	bad EEXIST mknod "$d" .snapshots reg
	bad "EEXIST|EPERM" symlink root.img "$d" .snapshots
	bad "EEXIST|EPERM" link "$W" root.img "$d" .snapshots
	bad "EISDIR|EEXIST|EPERM" rename "$W" root.img "$d" .snapshots
	bad "EEXIST|ENOTEMPTY|EPERM|EINVAL" rename "$W" sub "$d" .snapshots   # EINVAL: into itself (sub)
done
note "names of files and directories: $NCALLS refused calls so far, store unchanged after each"

# ==== snapshot names ============================================================
n0=$NCALLS
for n in "${BADNAMES[@]}" 'a b' 'a*b' 'a;b' 'a#b' 'a=b' 'a~b' 'a?b' 'a"b' "a'b" 'a\\b' 'a|b' \
	'a$b' 'a%b' 'a&b' 'a<b' 'a[b]' 'a{b}' 'a!b' '\xc3\xa9' '.hidden' '..x' '.' \
	'vol.img@' 'vol.img@.x' 'vol.img@x y' 'vol.img@\xff' 'vol.img@x\x01' 'vol.img@\xc3\xa9' \
	'@' '@x' '@@'; do
	NNAMES=$((NNAMES + 1))
	case $n in
	.) bad EEXIST mkdir "$S" "$n" ;;          # the kernel: it is .snapshots itself
	*) bad EINVAL mkdir "$S" "$n"
	   bad EINVAL mkdir "$WS" "$n" ;;
	esac
	[ "$n" = . ] || bad EINVAL rename "$S" all "$S" "$n"
done
NNAMES=$((NNAMES + 6))
bad EINVAL mkdir "$S" 'web@x'                   # FILE@NAME of a directory
bad EINVAL mkdir "$WS" 'sub@x'
bad "EINVAL|EEXIST" mkdir "$S" .snapshots
bad "EINVAL|EEXIST" mkdir "$WS" .snapshots
bad EEXIST mkdir "$S" ..                        # the kernel: it is the root
bad EINVAL rename "$S" 'vol.img@s1' "$S" 'web@s1'   # another file's name
bad EINVAL rename "$S" 'vol.img@s1' "$S" 's1'       # a volume snapshot stays one
bad EINVAL rename "$S" all "$S" 'vol.img@all'       # and a directory snapshot too
# missing FILE: ENOENT (bad bytes in FILE name no volume either; EINVAL is as good)
NNAMES=$((NNAMES + 6))
bad ENOENT mkdir "$S" 'nosuch.img@x'
bad ENOENT mkdir "$WS" 'vol.img@x'              # vol.img is not in web/
bad ENOENT mkdir "$S" 'vol.img@@x'              # FILE is "vol.img@"
bad ENOENT mkdir "$S" 'vol.img@x@y'             # FILE is "vol.img@x"
bad "ENOENT|EINVAL" mkdir "$S" 'x\xffy@s'
bad "ENOENT|EINVAL" mkdir "$S" '.snapshots@s'
# taken names: EEXIST, for mkdir and for rename
NNAMES=$((NNAMES + 4))
bad EEXIST mkdir "$S" all
bad EEXIST mkdir "$S" 'vol.img@s1'
bad EEXIST mkdir "$WS" "$L255"
bad EEXIST mkdir "$S" "vol.img@${L255:0:247}"
bad "EEXIST|ENOTEMPTY" rename "$S" 'vol.img@s1' "$S" "vol.img@${L255:0:247}"
bad "EEXIST|ENOTEMPTY" rename "$WS" before "$WS" "$L255"
bad EEXIST rename "$WS" before "$WS" "$L255" noreplace
# 256 bytes: ENAMETOOLONG
NNAMES=$((NNAMES + 2))
bad ENAMETOOLONG mkdir "$S" "$L256"
bad ENAMETOOLONG mkdir "$S" "vol.img@${L255:0:248}"
bad ENAMETOOLONG rename "$S" all "$S" "$L256"
# '/' in a snapshot name is a path into a snapshot, or into nothing
NNAMES=$((NNAMES + 4))
bad EROFS mkdir "$S" 'all\x2fnew'
bad EROFS mkdir "$S" 'vol.img@s1\x2fnew'
bad EROFS mkdir "$WS" 'before\x2fsub\x2fnew'
bad ENOENT mkdir "$S" 'nosuch\x2fnew'
bad_sh "Read-only file system" mkdir -p "$WS/before/sub/a/b/c"
bad_sh "Read-only file system" mkdir -p "$S/all/web/deep/er"
bad_sh "No such file or directory" rmdir "$S/nosuch"
note "snapshot names: $((NCALLS - n0)) refused calls, store unchanged after each"

# ==== the control directory ======================================================
n0=$NCALLS
for d in "$MNT" "$W" "$W/sub"; do
	bad EPERM rename "$d" .snapshots "$d" renamed
	bad EPERM rename "$d" .snapshots "$MNT" elsewhere
	bad EPERM chmod "$d" .snapshots 700
	bad EPERM chown "$d" .snapshots 1 1
	bad EPERM utime "$d" .snapshots
	bad EPERM touch "$d" .snapshots
	bad EPERM creat "$d/.snapshots" file
	bad EPERM mknod "$d/.snapshots" file reg
	bad EPERM mknod "$d/.snapshots" fifo fifo
	bad EPERM symlink root.img "$d/.snapshots" link
	bad EPERM link "$W" root.img "$d/.snapshots" link
	bad EISDIR open "$d" .snapshots w
	bad EISDIR unlink "$d" .snapshots
	bad "EOPNOTSUPP|EPERM" setxattr "$d" .snapshots user.x y
done
bad ENOTEMPTY rmdir "$MNT" .snapshots
bad ENOTEMPTY rmdir "$W" .snapshots
# into, out of, and between control directories: EPERM
bad EPERM rename "$W" root.img "$WS" 'root.img@in'
bad EPERM rename "$W" sub "$WS" in
bad EPERM rename "$MNT" vol.img "$S" 'vol.img@in'
bad EPERM rename "$S" all "$MNT" out
bad EPERM rename "$S" 'vol.img@s1' "$W" out.img
bad EPERM rename "$WS" before "$S" before
bad EPERM rename "$WS" before "$W/sub/.snapshots" before
# exchange and whiteout are not offered
bad EINVAL rename "$S" all "$S" 'vol.img@s1' exchange
bad EINVAL rename "$W" root.img "$W" web.xml exchange
bad "EINVAL|EPERM" rename "$W" root.img "$W" w.img whiteout
note "control directory: $((NCALLS - n0)) refused calls"

# ==== links, special files ==========================================================
n0=$NCALLS
bad EPERM link "$S/vol.img@s1" vol.img "$MNT" hl.img         # to a snapshot's file
bad EPERM link "$WS/before" root.img "$W" hl.img
bad EPERM link "$MNT" vol.img "$MNT" hl.img                  # to a live volume
bad EPERM link "$W" root.img "$W/sub" hl.img
bad "EPERM|EROFS" link "$MNT" vol.img "$S/all" hl.img        # into a snapshot
for d in "$MNT" "$W" "$W/sub"; do
	bad EPERM symlink vol.img "$d" sl
	bad EPERM symlink /etc/passwd "$d" sl
	bad EPERM mknod "$d" fifo fifo
	bad EPERM mknod "$d" chr chr
	bad EPERM mknod "$d" sock sock
done
bad "EPERM|EROFS" symlink vol.img "$S/all" sl
bad "EPERM|EROFS" symlink vol.img "$WS/before/sub" sl
bad "EPERM|EROFS" mknod "$S/all" fifo fifo
bad_sh "Operation not permitted" ln "$MNT/vol.img" "$MNT/ln.img"
bad_sh "Operation not permitted" ln "$S/all/vol.img" "$MNT/ln.img"
bad_sh "Operation not permitted" ln -s vol.img "$MNT/ln.img"
note "links and special files: $((NCALLS - n0)) refused calls"

# ==== nothing changes a snapshot ======================================================
n0=$NCALLS
for f in "$S/vol.img@s1 vol.img" "$S/all vol.img" "$S/all/web root.img" "$S/all/web é.txt" \
	"$WS/before web.xml" "$WS/before/sub nv.bin" "$WS/before \\xc3\\xa9t\\xc3\\xa9.img" \
	"$WS/before $L255" "$WS/$L255 root.img"; do
	set -- $f
	d=$1 n=$2
	bad EROFS chmod "$d" "$n" 777
	bad EROFS chown "$d" "$n" 1 1
	bad EROFS utime "$d" "$n"
	bad EROFS touch "$d" "$n"
	bad EROFS truncate "$d" "$n" 0
	bad EROFS truncate "$d" "$n" 99999999
	bad EROFS open "$d" "$n" w
	bad EROFS open "$d" "$n" rw
	bad EROFS open "$d" "$n" wt
	bad EROFS open "$d" "$n" wa
	bad EROFS unlink "$d" "$n"
	bad EROFS rename "$d" "$n" "$d" moved
	bad EROFS rename "$d" "$n" "$W" stolen.img
	bad "EOPNOTSUPP|EROFS" setxattr "$d" "$n" user.x y
	bad EROFS creat "$d" new.img
	bad EROFS mkdir "$d" newdir
done
for s in "$S vol.img@s1" "$S all" "$WS before" "$S/all web" "$WS/before sub"; do
	set -- $s
	bad EROFS chmod "$1" "$2" 777
	bad EROFS chown "$1" "$2" 1 1
	bad EROFS utime "$1" "$2"
	bad EROFS touch "$1" "$2"
done
bad EROFS rmdir "$WS/before" sub
bad EROFS rename "$WS/before" sub "$WS/before" sub2
bad EROFS rename "$W" web.xml "$WS/before" planted.xml
bad ENOENT stat "$S/all" .snapshots                 # a snapshot has no .snapshots
bad "EROFS|ENOENT" mkdir "$S/all" .snapshots
bad_sh "Read-only file system" chmod 777 "$S/all/vol.img"
bad_sh "Read-only file system" touch "$S/all/vol.img"
bad_sh "Read-only file system" chown 1:1 "$WS/before/web.xml"
bad_sh "Read-only file system" truncate -s 0 "$WS/before/root.img"
bad_sh "Read-only file system" rm -f "$WS/before/web.xml"
note "changes to snapshots: $((NCALLS - n0)) refused calls"

# ==== rmdir of a snapshot with an open file: EBUSY, then fine ==========================
n0=$NCALLS
for s in "$S vol.img@s1 vol.img" "$WS before sub/nv.bin" "$S all web/root.img"; do
	set -- $s
	exec 3<"$1/$2/$3"
	bad EBUSY rmdir "$1" "$2"
	# the open file still reads, all of it, and equals the live original
	cmp - "$1/$2/$3" <&3 || fail "$1/$2/$3: the open file reads wrong after a refused rmdir"
	exec 3<&-
	# the release of a closed file reaches the daemon asynchronously
	for ((i = 0; i < 50; i++)); do
		"$HT" rmdir "$1" "$2" >"$T/rmdir.out" 2>&1
		grep -q ': OK' "$T/rmdir.out" && break
		grep -q EBUSY "$T/rmdir.out" || fail "rmdir $2 after the close: $(cat "$T/rmdir.out")"
		sleep 0.1
	done
	grep -q ': OK' "$T/rmdir.out" || fail "rmdir $2: still EBUSY 5 s after its file was closed"
	new_ref
	bad ENOENT rmdir "$1" "$2"
	bad ENOENT stat "$1" "$2"
done
ctl_check "after the rmdirs"
note "EBUSY: $((NCALLS - n0)) calls"

# ==== I/O through a volume opened before it was unlinked or renamed =====================
cp "$W/root.img" "$W/u.img"
good unlinked-io "$W" u.img
# after the close, the unlinked volume is gone; the new one and the snapshot
# taken meanwhile are there
[ "$(stat -c %s "$W/u.img")" = $((1 << 20)) ] || fail "the new u.img has the wrong size"
[ "$(stat -c %s "$WS/unlinked-open/u.img")" = $((1 << 20)) ] ||
	fail "the snapshot taken while u.img was unlinked-open holds the wrong u.img"
good renamed-io "$W" u.img u2.img
new_ref
ctl_check "after the unlinked and renamed volumes were closed"

# ==== a remount: still exactly the same ================================================
_vs_alive "$pid0" || fail "the first daemon died"
vs_umount "$MNT"
ctl_check "unmounted"
vs_mount "$STORE" "$MNT"
unchanged "remount"
# nothing of the unlinked volume is left: vsnapctl lists every volume
"$VSNAPCTL" list --raw -n -t volume -o path "$MNT" >"$T/list.txt" || fail "vsnapctl list failed"
n=$(wc -l <"$T/list.txt")   # one line a volume: --raw escapes newlines in names
m=$(find "$MNT" -path '*/.snapshots' -prune -o -type f -print | wc -l)
[ "$n" = "$m" ] || fail "vsnapctl list shows $n live volumes, the tree has $m files: $(head -c 600 "$T/list.txt")"
vs_umount "$MNT"
if grep -iE 'assert|abort|sanitizer|segv' "$T"/vsnapfs.*.log; then
	fail "a daemon log mentions a crash"
fi
pass "$NCALLS refused calls ($NNAMES hostile names), store unchanged and clean after each"
