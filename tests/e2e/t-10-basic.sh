#!/bin/bash
# Basic file system behaviour: store creation, files, thin volumes, sparse
# import, directories, rename, metadata, statfs, unlinked-but-open files, and
# that all of it survives an unmount and a remount.
. "$(dirname "$0")/lib.sh"

STORE=$T/store
MNT=$T/mnt
MiB=$((1 << 20))

# ---- a new store -----------------------------------------------------------
vs_mount "$STORE" "$MNT"
grep -Eiq 'creat|new' "$(vs_log "$MNT")" ||
	fail "no message about creating a new store: $(cat "$(vs_log "$MNT")")"
[ -f "$STORE/index.sqlite" ] || fail "store has no index.sqlite"
[ -d "$STORE/chunks" ] || fail "store has no chunks/ directory"
[ -e "$STORE/lock" ] || fail "store has no lock file"

# ---- write and read back ---------------------------------------------------
head -c $((5 * MiB + 123)) /dev/urandom >"$T/ref.bin"
cp "$T/ref.bin" "$MNT/a.bin"
cmp "$T/ref.bin" "$MNT/a.bin" || fail "a.bin differs from what was written"
assert_eq "$(stat -c %s "$MNT/a.bin")" $((5 * MiB + 123)) "size of a.bin"
printf 'hello\n' >"$MNT/small.txt"
printf 'world\n' >>"$MNT/small.txt"
assert_eq "$(cat "$MNT/small.txt")" $'hello\nworld' "small.txt after append"
# overwrite in the middle, unaligned
printf 'XYZ' | dd of="$MNT/a.bin" bs=1 seek=4097 conv=notrunc status=none
printf 'XYZ' | dd of="$T/ref.bin" bs=1 seek=4097 conv=notrunc status=none
cmp "$T/ref.bin" "$MNT/a.bin" || fail "a.bin wrong after an unaligned overwrite"

# ---- a thin volume ---------------------------------------------------------
truncate -s 20G "$MNT/vm1.img"
assert_eq "$(stat -c %s "$MNT/vm1.img")" 21474836480 "st_size of a 20G volume"
b=$(stat -c %b "$MNT/vm1.img")
[ "$b" -le 8 ] || fail "fresh 20G volume has st_blocks $b (expected ~0)"
[ "$(du -k "$MNT/vm1.img" | cut -f1)" -le 4 ] || fail "du of a fresh 20G volume: $(du -k "$MNT/vm1.img")"
head -c $((1 * MiB)) /dev/urandom >"$T/far.bin"
dd if="$T/far.bin" of="$MNT/vm1.img" bs=1M seek=$((19 * 1024)) conv=notrunc,fsync status=none
cmp <(dd if="$MNT/vm1.img" bs=1M skip=$((19 * 1024)) count=1 status=none) "$T/far.bin" ||
	fail "data written at 19 GiB does not read back"
cmp -n $MiB "$MNT/vm1.img" /dev/zero || fail "never-written start of vm1.img is not zeros"
assert_eq "$(stat -c %s "$MNT/vm1.img")" 21474836480 "st_size after a write inside"
alloc=$(($(stat -c %b "$MNT/vm1.img") * 512))
[ $alloc -eq $MiB ] || fail "vm1.img allocates $alloc bytes after a 1 MiB write, expected 1 MiB"

# ---- sparse import: holes and zero blocks take no space ---------------------
# 64 MiB: 4 MiB data, a hole, 2 MiB data, 8 MiB of written zeros, a hole,
# 1 MiB data at the end: 7 MiB of non-zero data in all.
truncate -s 64M "$T/sparse.raw"
dd if=/dev/urandom of="$T/sparse.raw" bs=1M count=4 conv=notrunc status=none
dd if=/dev/urandom of="$T/sparse.raw" bs=1M seek=30 count=2 conv=notrunc status=none
dd if=/dev/zero of="$T/sparse.raw" bs=1M seek=40 count=8 conv=notrunc status=none
dd if=/dev/urandom of="$T/sparse.raw" bs=1M seek=63 count=1 conv=notrunc status=none
cp "$T/sparse.raw" "$MNT/imported.img"
cp --sparse=never "$T/sparse.raw" "$MNT/imported-full.img"
for f in imported.img imported-full.img; do
	cmp "$T/sparse.raw" "$MNT/$f" || fail "$f differs from its source"
	assert_eq "$(stat -c %s "$MNT/$f")" $((64 * MiB)) "size of $f"
	alloc=$(($(stat -c %b "$MNT/$f") * 512))
	if [ $alloc -lt $((7 * MiB)) ] || [ $alloc -gt $((8 * MiB)) ]; then
		fail "$f: allocated $alloc bytes, expected about 7 MiB (the non-zero data)"
	fi
done

# ---- directories, rename, unlink ------------------------------------------
mkdir "$MNT/d1"
mkdir "$MNT/d1/d2"
echo inner >"$MNT/d1/d2/inner.txt"
expect_errno "Directory not empty" rmdir "$MNT/d1/d2"
expect_errno "File exists" mkdir "$MNT/d1"
rm "$MNT/d1/d2/inner.txt"
rmdir "$MNT/d1/d2"
[ ! -e "$MNT/d1/d2" ] || fail "d1/d2 still there after rmdir"
mv "$MNT/a.bin" "$MNT/d1/renamed.bin"
[ ! -e "$MNT/a.bin" ] || fail "a.bin still there after mv"
cmp "$T/ref.bin" "$MNT/d1/renamed.bin" || fail "renamed file's content changed"
echo victim >"$MNT/victim.txt"
echo replacement >"$MNT/repl.txt"
mv -f "$MNT/repl.txt" "$MNT/victim.txt"
assert_eq "$(cat "$MNT/victim.txt")" replacement "rename over an existing file"
echo doomed >"$MNT/doomed.txt"
rm "$MNT/doomed.txt"
[ ! -e "$MNT/doomed.txt" ] || fail "doomed.txt still there after rm"
expect_errno "No such file or directory" cat "$MNT/doomed.txt"
assert_eq "$(ls "$MNT" | tr '\n' ' ')" "d1 imported-full.img imported.img small.txt victim.txt vm1.img " "ls of the root"
assert_eq "$(ls "$MNT/d1" | tr '\n' ' ')" "renamed.bin " "ls of d1"

# ---- metadata ---------------------------------------------------------------
chmod 640 "$MNT/small.txt"
assert_eq "$(stat -c %a "$MNT/small.txt")" 640 "mode after chmod"
chown 1234:5678 "$MNT/small.txt"
assert_eq "$(stat -c %u:%g "$MNT/small.txt")" 1234:5678 "owner after chown"
chmod 750 "$MNT/d1"
assert_eq "$(stat -c %a "$MNT/d1")" 750 "directory mode after chmod"
touch -m -d '2001-02-03 04:05:06.5 UTC' "$MNT/small.txt"
assert_eq "$(stat -c %Y "$MNT/small.txt")" 981173106 "mtime after touch -d"
touch -a -d '2002-03-04 05:06:07 UTC' "$MNT/victim.txt"
assert_eq "$(stat -c %X "$MNT/victim.txt")" 1015218367 "atime after touch -a -d"
before=$(stat -c %Y "$MNT/victim.txt")
sleep 1.1
echo more >>"$MNT/victim.txt"
[ "$(stat -c %Y "$MNT/victim.txt")" -gt "$before" ] || fail "mtime did not move on write"

# ---- statfs: the store's file system ----------------------------------------
df -P "$MNT" >/dev/null || fail "df on the mount failed"
mnt_total=$(stat -f -c '%b*%S' "$MNT")
host_total=$(stat -f -c '%b*%S' "$STORE")
mnt_total=$((mnt_total)) host_total=$((host_total))
[ $mnt_total -gt 0 ] || fail "statfs of the mount says 0 blocks"
diff=$((mnt_total - host_total))
[ ${diff#-} -le $((host_total / 100)) ] ||
	fail "statfs total $mnt_total bytes, store file system has $host_total"

# ---- an unlinked open file keeps working -------------------------------------
head -c $((256 * 1024)) /dev/urandom >"$T/u1"
head -c 4096 /dev/urandom >"$T/u2"
exec 3<>"$MNT/open.bin"
cat "$T/u1" >&3
rm "$MNT/open.bin"
[ ! -e "$MNT/open.bin" ] || fail "open.bin still visible after rm"
cat "$T/u2" >&3                      # through the same open file, at its offset
dd if="$T/u2" of=/dev/fd/3 bs=4096 seek=3 conv=notrunc status=none ||
	fail "cannot write to an unlinked open file through /dev/fd/3"
cat "$T/u1" "$T/u2" >"$T/uref"
dd if="$T/u2" of="$T/uref" bs=4096 seek=3 conv=notrunc status=none
cmp /dev/fd/3 "$T/uref" || fail "unlinked open file reads back wrong"
assert_eq "$(stat -L -c %s /dev/fd/3)" $((256 * 1024 + 4096)) "size of the unlinked open file"
exec 3>&-

# ---- unmount, remount: all still there ---------------------------------------
listing() {
	(cd "$MNT" && find . -name .snapshots -prune -o -printf '%p %y %s %m %U %G %T@\n' | sort)
}
# vm1.img (20 GiB) is left out: reading it all through FUSE takes too long
sums() {
	(cd "$MNT" && find . -name .snapshots -prune -o -type f ! -name vm1.img -print0 | sort -z |
		xargs -0 sha256sum)
}
listing >"$T/list.before"
sums >"$T/sums.before"
vs_umount "$MNT"

vs_mount "$STORE" "$MNT"
if grep -Eiq 'creat|new store' "$(vs_log "$MNT")"; then
	fail "remount of an existing store says it created one: $(cat "$(vs_log "$MNT")")"
fi
listing >"$T/list.after"
sums >"$T/sums.after"
diff -u "$T/list.before" "$T/list.after" || fail "names or metadata changed across a remount"
diff -u "$T/sums.before" "$T/sums.after" || fail "contents changed across a remount"
cmp "$T/sparse.raw" "$MNT/imported.img" || fail "imported.img differs after remount"
[ ! -e "$MNT/open.bin" ] || fail "the unlinked file came back after remount"
cmp <(dd if="$MNT/vm1.img" bs=1M skip=$((19 * 1024)) count=1 status=none) "$T/far.bin" ||
	fail "vm1.img: data at 19 GiB differs after remount"
alloc=$(($(stat -c %b "$MNT/vm1.img") * 512))
[ $alloc -eq $MiB ] || fail "vm1.img allocates $alloc bytes after remount, expected 1 MiB"
alloc=$(($(stat -c %b "$MNT/imported-full.img") * 512))
[ $alloc -ge $((7 * MiB)) ] && [ $alloc -le $((8 * MiB)) ] ||
	fail "imported-full.img allocates $alloc bytes after remount, expected about 7 MiB"
vs_umount "$MNT"
pass
