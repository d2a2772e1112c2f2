#!/bin/bash
# Bad input: what is not a store, a store already mounted, a damaged index,
# a damaged or missing chunk file.  Each is refused or answered with EIO, with
# a clear message, and nothing else changes.
. "$(dirname "$0")/lib.sh"

BS=4096
NBLK=64

# listing DIR: names, sizes, modes, mtimes and contents of everything in DIR
listing() {
	(cd "$1" && find . -printf '%p %y %s %m %T@\n' | sort &&
		find . -type f -print0 | sort -z | xargs -0r sha256sum)
}

# refused WHAT STORE MNT [ARGS...]: vsnapfs (daemonizing, as a user runs it)
# must exit non-zero with a one-line message and mount nothing.  The message
# is left in $T/refused.err.
refused() {
	local what=$1 store=$2 mnt=$3 rc=0
	shift 3
	_VS_MNTS+=("$mnt")            # should it mount after all, clean it up
	timeout -k 5 20 "$VSNAPFS" "$@" "$store" "$mnt" >"$T/refused.out" 2>"$T/refused.err" || rc=$?
	if mountpoint -q "$mnt"; then
		fail "$what: vsnapfs mounted it (exit status $rc)"
	fi
	[ $rc -ne 0 ] || fail "$what: vsnapfs exited 0"
	[ $rc -ne 124 ] && [ $rc -ne 137 ] || fail "$what: vsnapfs hung"
	[ "$(wc -l <"$T/refused.err")" = 1 ] && [ -s "$T/refused.err" ] ||
		fail "$what: expected a one-line message on stderr, got: '$(cat "$T/refused.err")'"
	note "$what: refused: $(cat "$T/refused.err")"
}

mkdir -p "$T/mnt0" "$T/mnt2" "$T/mnt3"

# ---- a non-empty directory that is not a store -------------------------------
NS=$T/notastore
mkdir -p "$NS/sub"
echo precious >"$NS/file.txt"
head -c 10000 /dev/urandom >"$NS/sub/data.bin"
touch -d '2010-01-01 00:00:00' "$NS/file.txt"
listing "$NS" >"$T/ns.before"
refused "non-store directory" "$NS" "$T/mnt0"
listing "$NS" >"$T/ns.after"
diff -u "$T/ns.before" "$T/ns.after" || fail "the non-store directory was changed"

# other things that are not stores
echo x >"$T/plainfile"
refused "regular file as store" "$T/plainfile" "$T/mnt0"
assert_eq "$(cat "$T/plainfile")" x "the regular file given as store"
refused "missing mount point" "$T/newstore" "$T/no/such/dir"
[ ! -e "$T/newstore" ] || [ -z "$(ls -A "$T/newstore")" ] ||
	fail "a store was created although the mount point does not exist"

# ---- a store already mounted ------------------------------------------------
S1=$T/store1
M1=$T/mnt1
vs_mount "$S1" "$M1" -o block_size=$BS
echo first >"$M1/before.txt"
pid1=$(vs_pid "$M1")
refused "store already mounted" "$S1" "$T/mnt2"
grep -qw "$pid1" "$T/refused.err" ||
	fail "double mount: message does not name the first daemon's pid $pid1: $(cat "$T/refused.err")"
_vs_alive "$pid1" || fail "first daemon died after the second mount attempt"
assert_eq "$(cat "$M1/before.txt")" first "first mount after the second attempt"
echo second >"$M1/after.txt"
assert_eq "$(cat "$M1/after.txt")" second "write through the first mount after the attempt"

# ---- a damaged chunk: EIO on that block only ----------------------------------
# Distinct non-zero blocks, written in order into a fresh store.
head -c $((NBLK * BS)) /dev/urandom >"$T/blocks"
dd if="$T/blocks" of="$M1/vol.img" bs=$BS oflag=direct conv=fsync status=none
cmp "$T/blocks" "$M1/vol.img" || fail "vol.img does not read back"
vs_umount "$M1"

# find the chunk slot that holds block K (slot i starts at data_off + i * BS)
K=37
dd if="$T/blocks" of="$T/blockK" bs=$BS skip=$K count=1 status=none
chunk='' slot='' doff=''
for c in "$S1"/chunks/*.chunk; do
	d=$(chunk_data_off "$c")
	n=$((($(stat -c %s "$c") - d) / BS))
	for ((i = 0; i < n; i++)); do
		if dd if="$c" bs=$BS skip=$((d / BS + i)) count=1 status=none | cmp -s - "$T/blockK"; then
			[ -z "$chunk" ] || fail "block $K found twice in the chunk files"
			chunk=$c slot=$i doff=$d
		fi
	done
done
[ -n "$chunk" ] || fail "block $K of vol.img not found in any chunk file of block size $BS"
note "block $K is slot $slot of $(basename "$chunk")"
off=$((doff + slot * BS + BS / 2))
b=$(od -An -tu1 -j $off -N1 "$chunk" | tr -d ' ')
printf "\\$(printf '%03o' $((b ^ 255)))" | dd of="$chunk" bs=1 seek=$off conv=notrunc status=none

vs_mount "$S1" "$M1"
expect_errno "Input/output error" dd if="$M1/vol.img" of=/dev/null bs=$BS skip=$K count=1 iflag=direct
expect_errno "Input/output error" cat "$M1/vol.img"
for ((j = 0; j < NBLK; j++)); do
	[ $j = $K ] && continue
	dd if="$M1/vol.img" bs=$BS skip=$j count=1 iflag=direct status=none |
		cmp -s - <(dd if="$T/blocks" bs=$BS skip=$j count=1 status=none) ||
		fail "block $j of vol.img is wrong or unreadable next to the damaged block $K"
done
pid=$(vs_pid "$M1")
_vs_alive "$pid" || fail "daemon died after a checksum error"
grep -q 'vol.img' "$(vs_log "$M1")" ||
	fail "daemon log does not name the volume with the bad block: $(tail -n 5 "$(vs_log "$M1")")"
assert_eq "$(cat "$M1/after.txt")" second "other file after the checksum error"
echo third >"$M1/third.txt"
assert_eq "$(cat "$M1/third.txt")" third "a new file after the checksum error"

# ---- a missing chunk file: EIO on its blocks only ------------------------------
# This mount appends into a new chunk file: vol2.img's blocks live there only.
head -c $((8 * BS)) /dev/urandom >"$T/blocks2"
dd if="$T/blocks2" of="$M1/vol2.img" bs=$BS oflag=direct conv=fsync status=none
vs_umount "$M1"
if [ -x "$VSNAPCTL" ]; then
	rc=0
	with_deadline 60 "$VSNAPCTL" scrub "$S1" >"$T/scrub.out" 2>&1 || rc=$?
	[ $rc -ne 0 ] || fail "vsnapctl scrub passes a store with a damaged block: $(cat "$T/scrub.out")"
	grep -q 'vol.img' "$T/scrub.out" ||
		fail "vsnapctl scrub does not name vol.img: $(cat "$T/scrub.out")"
else
	note "$VSNAPCTL not built: scrub not checked"
fi
newest=$(ls "$S1"/chunks/*.chunk | sort | tail -n 1)
[ "$newest" != "$chunk" ] || fail "vol2.img was not written into a new chunk file"
mv "$newest" "$T/moved.chunk"
vs_mount "$S1" "$M1"
expect_errno "Input/output error" dd if="$M1/vol2.img" of=/dev/null bs=$BS count=1 iflag=direct
_vs_alive "$(vs_pid "$M1")" || fail "daemon died reading from a missing chunk file"
dd if="$M1/vol.img" bs=$BS count=1 iflag=direct status=none |
	cmp -s - <(dd if="$T/blocks" bs=$BS count=1 status=none) ||
	fail "vol.img block 0 unreadable while another chunk file is missing"
assert_eq "$(cat "$M1/before.txt")" first "other files while a chunk file is missing"
if [ -x "$VSNAPCTL" ]; then
	rc=0
	with_deadline 60 "$VSNAPCTL" check "$S1" >"$T/check.out" 2>&1 || rc=$?
	[ $rc -ne 0 ] || fail "vsnapctl check passes a store with a missing chunk file"
fi
vs_umount "$M1"

# ---- a damaged index ------------------------------------------------------------
mv "$T/moved.chunk" "$newest"
head -c 65536 /dev/urandom >"$S1/index.sqlite"
listing "$S1" >"$T/s1.before"
refused "garbage index.sqlite" "$S1" "$T/mnt3"
grep -q 'index' "$T/refused.err" || fail "message does not mention the index: $(cat "$T/refused.err")"
listing "$S1" >"$T/s1.after"
diff -u "$T/s1.before" "$T/s1.after" || fail "the store with a damaged index was changed"
pass
