#!/bin/bash
# Damage to a store, beyond t-60 (flipped bytes in a slot, a missing chunk
# file, a garbage index): a chunk file cut in the middle of a slot (while
# unmounted and while mounted), a chunk file deleted while mounted (an old
# one, and the one being appended to), a damaged chunk header, two chunk
# files swapped, garbage pages inside index.sqlite, the lock file removed
# while mounted, a garbage index.sqlite-wal.
#
# Each case starts from a copy of one template store: other.img (1 MiB, and
# a snapshot of it) in chunk file 1, vol.img (64 blocks, and a snapshot of
# it) in chunk file 2.  What each case asserts: a clear error (EIO on the
# damaged blocks only, or a one-line refusal that writes nothing), the daemon
# never dies and never returns wrong data, vsnapctl check names the damage,
# and nothing else is lost: every other block and file reads back exactly.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
command -v sqlite3 >/dev/null || skip "sqlite3 missing (to find the pages of the index)"

BS=4096
NBLK=64
NCASES=0
TPL=$T/template
MNT=$T/mnt
MNT2=$T/mnt2
mkdir -p "$MNT2"

# ---- helpers ---------------------------------------------------------------------

# listing DIR: names, sizes, modes, mtimes and contents of everything in DIR
listing() {
	(cd "$1" && find . -printf '%p %y %s %m %T@\n' | sort &&
		find . -type f -print0 | sort -z | xargs -0r sha256sum)
}

# blocks FILE REF: one character per block of FILE, read with O_DIRECT:
# '=' the bytes of REF, 'E' EIO, 'X' anything else (wrong bytes, another error)
blocks() {
	local f=$1 ref=$2 j out='' err
	for ((j = 0; j < NBLK; j++)); do
		if dd if="$f" bs=$BS skip=$j count=1 iflag=direct status=none 2>"$T/dd.err" >"$T/blk"; then
			if cmp -s "$T/blk" <(dd if="$ref" bs=$BS skip=$j count=1 status=none); then
				out+='='
			else
				out+='X'
			fi
		else
			err=$(cat "$T/dd.err")
			case $err in
			*"Input/output error"*) out+='E' ;;
			*) out+='X'; echo "# block $j of $f: $err" >&2 ;;
			esac
		fi
	done
	echo "$out"
}

# pattern K N: K '=' then N-K 'E'
pattern() {
	local s='' j
	for ((j = 0; j < $2; j++)); do
		if [ $j -lt "$1" ]; then s+='='; else s+='E'; fi
	done
	echo "$s"
}

# A daemon misbehaving in one case must not hide what the others find:
# problems with the data are collected and fail the test at the end.
PROBLEMS=()
problem() {
	echo "# PROBLEM: $*"
	PROBLEMS+=("$*")
}

alive() {
	_vs_alive "$(vs_pid "$MNT")" || { _vs_show_log "$(vs_log "$MNT")"; fail "$1: the daemon died"; }
}

# everything that is not damaged reads back exactly
others_fine() {
	cmp -s "$MNT/other.img" "$T/other.ref" || problem "$1: other.img differs or fails to read"
	cmp -s "$MNT/.snapshots/other.img@keep/other.img" "$T/other.ref" ||
		problem "$1: the snapshot of other.img differs or fails to read"
	# and the store takes new data, which reads back
	head -c 300000 /dev/urandom >"$T/new.ref"
	if ! dd if="$T/new.ref" of="$MNT/new.img" bs=64k conv=fsync status=none 2>"$T/dd.err"; then
		problem "$1: cannot write a new volume: $(cat "$T/dd.err")"
	elif ! cmp "$MNT/new.img" "$T/new.ref" >"$T/cmp.out" 2>&1; then
		problem "$1: a new volume, written and fsynced, does not read back: $(cat "$T/cmp.out")"
	fi
	rm -f "$MNT/new.img"
	alive "$1"
}

# check_names WHAT WORD [scrub]: vsnapctl check (or scrub) fails and its
# output names WORD (SPEC: "a chunk file damaged or missing ... vsnapctl
# check names them")
check_names() {
	local rc=0 cmd=${3:-check}
	with_deadline 60 "$VSNAPCTL" "$cmd" "$STORE" >"$T/check.out" 2>&1 || rc=$?
	[ $rc -lt 124 ] || fail "$1: vsnapctl $cmd hung or died (status $rc)"
	if [ $rc -eq 0 ]; then
		problem "$1: vsnapctl $cmd passes the damaged store: $(tail -n 1 "$T/check.out")"
	elif ! grep -qF -- "$2" "$T/check.out"; then
		problem "$1: vsnapctl $cmd (exit $rc) does not name $2: $(head -c 600 "$T/check.out")"
	else
		note "$1: vsnapctl $cmd (exit $rc): $(grep -F -- "$2" "$T/check.out" | head -n 1)"
	fi
}

check_clean() {
	with_deadline 60 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 ||
		fail "$1: vsnapctl check failed: $(tail -n 20 "$T/check.out")"
}

# fresh NAME: STORE = a new copy of the template
fresh() {
	NCASES=$((NCASES + 1))
	STORE=$T/store-$1
	cp -a "$TPL" "$STORE"
	note "---- case $NCASES: $1"
}

# try_mount WHAT: run vsnapfs as a user does (daemonizing) on $STORE.  If
# it mounts: unmount, return 0.  If not, it must have exited with a one-line
# message, without a crash, and changed no file of the store (the store
# directory's own mtime aside: SQLite may create and remove its -shm file);
# return 1 (the message is in $T/refused.err).
try_mount() {
	local what=$1 rc=0
	# SQLite's wal-index (index.sqlite-shm) is rebuilt by any reader of a WAL
	# database, the checks of a refusal included; it is a cache of the log,
	# not data, so it is left out of "changed nothing"
	listing "$STORE" | grep -v -e '^\. d ' -e 'index\.sqlite-shm' >"$T/store.before"
	_VS_MNTS+=("$MNT2")            # should it mount, clean it up
	timeout -k 5 30 "$VSNAPFS" "$STORE" "$MNT2" >"$T/refused.out" 2>"$T/refused.err" || rc=$?
	if mountpoint -q "$MNT2"; then
		# the daemon (not our child) has written its pid into STORE/lock;
		# wait for it to finish closing the store after the unmount
		local dpid
		dpid=$(cat "$STORE/lock")
		fusermount3 -u "$MNT2"
		for ((i = 0; i < 600 * VS_TIME_SCALE; i++)); do
			[ -d "/proc/$dpid" ] || break
			sleep 0.05
		done
		[ ! -d "/proc/$dpid" ] || fail "$what: vsnapfs pid $dpid still running 30 s after its unmount"
		return 0
	fi
	[ $rc -ne 0 ] || fail "$what: vsnapfs exited 0 without mounting"
	[ $rc -ne 124 ] && [ $rc -ne 137 ] || fail "$what: vsnapfs hung"
	[ $rc -lt 128 ] || fail "$what: vsnapfs died of a signal (status $rc): $(cat "$T/refused.err")"
	[ "$(wc -l <"$T/refused.err")" = 1 ] ||
		fail "$what: expected a one-line message on stderr, got: '$(cat "$T/refused.err")'"
	listing "$STORE" | grep -v -e '^\. d ' -e 'index\.sqlite-shm' >"$T/store.after"
	if ! diff -u "$T/store.before" "$T/store.after" >"$T/store.diff"; then
		cat "$T/store.diff"
		problem "$what: the refused mount changed the store (SPEC: refuse and write nothing): $(grep '^[-+]\./' "$T/store.diff" | cut -c1-60 | tr '\n' ';')"
	fi
	note "$what: refused: $(cat "$T/refused.err")"
	return 1
}

# garbage PAGE: write a page of random bytes over page PAGE (from 1) of the
# index (page 1: after its 100-byte file header)
garbage() {
	local off=$((($1 - 1) * 4096)) len=4096
	if [ "$1" = 1 ]; then off=100 len=3996; fi
	head -c $len /dev/urandom | dd of="$STORE/index.sqlite" bs=$len count=1 \
		oflag=seek_bytes seek=$off conv=notrunc status=none
}

# after_index_damage WHAT: mount it or see it refused; if it mounts, check
# must find the damage and nothing read may be wrong
after_index_damage() {
	if try_mount "$1"; then
		note "$1: it mounts"
		check_names "$1" ""
		vs_mount "$STORE" "$MNT"
		for f in vol.img .snapshots/vol.img@s/vol.img; do
			got=$(blocks "$MNT/$f" "$T/vol.ref" 2>/dev/null) || true
			[[ $got != *X* ]] || problem "$1: $f reads wrong bytes: $got"
		done
		alive "$1"
		vs_umount "$MNT"
	else
		grep -q index "$T/refused.err" || problem "$1: the message does not name the index: $(cat "$T/refused.err")"
		rc=0
		"$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 || rc=$?
		[ $rc -ne 0 ] || problem "$1: vsnapctl check passes it"
		[ $rc -lt 124 ] || fail "$1: vsnapctl check died (status $rc)"
	fi
}

# ---- the template ---------------------------------------------------------------------
head -c $((1 << 20)) /dev/urandom >"$T/other.ref"
head -c $((NBLK * BS)) /dev/urandom >"$T/vol.ref"
vs_mount "$TPL" "$MNT" -o block_size=$BS
dd if="$T/other.ref" of="$MNT/other.img" bs=1M conv=fsync status=none
mkdir "$MNT/.snapshots/other.img@keep"
vs_umount "$MNT"
# a new daemon appends into a new chunk file: vol.img's blocks, in order,
# then the log slot of the fsync's flush (no background flush in between)
vs_mount "$TPL" "$MNT" -o flush_ms=600000
dd if="$T/vol.ref" of="$MNT/vol.img" bs=$BS oflag=direct conv=fsync status=none
mkdir "$MNT/.snapshots/vol.img@s"
vs_umount "$MNT"
C1=$TPL/chunks/0000000000000001.chunk
C2=$TPL/chunks/0000000000000002.chunk
[ -f "$C1" ] && [ -f "$C2" ] && [ "$(ls "$TPL/chunks" | wc -l)" = 2 ] ||
	fail "template: expected chunk files 1 and 2, got: $(ls "$TPL/chunks")"
# slot 0 after the header and the slot table (chunk header version 2)
DOFF=$(chunk_data_off "$C2")
[ "$DOFF" = $((4096 + 16 * 16384)) ] || fail "template: chunk 2 has its data at $DOFF"
[ "$(stat -c %s "$C2")" = $((DOFF + (NBLK + 1) * BS)) ] ||
	fail "template: chunk 2 is $(stat -c %s "$C2") bytes, expected the header, the slot table, $NBLK slots and a log slot"
for j in 0 17 $((NBLK - 1)); do
	cmp -s <(dd if="$C2" bs=$BS skip=$((DOFF / BS + j)) count=1 status=none) \
		<(dd if="$T/vol.ref" bs=$BS skip=$j count=1 status=none) ||
		fail "template: block $j of vol.img is not slot $j of chunk 2"
done
# (on a copy: vsnapctl leaves index.sqlite-shm and -wal behind, and the
# template stays as the daemon left it)
cp -a "$TPL" "$T/tplcheck"
STORE=$T/tplcheck
check_clean "template"
C1=chunks/0000000000000001.chunk
C2=chunks/0000000000000002.chunk

# ==== a chunk file cut in the middle of a slot, while unmounted ==========================
K=40
fresh truncate-unmounted
truncate -s $((DOFF + K * BS + 1234)) "$STORE/$C2"
vs_mount "$STORE" "$MNT"
want=$(pattern $K $NBLK)
got=$(blocks "$MNT/vol.img" "$T/vol.ref")
assert_eq "$got" "$want" "vol.img blocks after chunk 2 was cut in slot $K"
got=$(blocks "$MNT/.snapshots/vol.img@s/vol.img" "$T/vol.ref")
assert_eq "$got" "$want" "the snapshot of vol.img after chunk 2 was cut in slot $K"
expect_errno "Input/output error" cat "$MNT/vol.img"
others_fine "cut chunk"
grep -q 'vol.img' "$(vs_log "$MNT")" ||
	fail "cut chunk: the daemon log does not name vol.img: $(tail -n 5 "$(vs_log "$MNT")")"
check_names "cut chunk (mounted)" 0000000000000002.chunk
vs_umount "$MNT"
check_names "cut chunk (unmounted)" 0000000000000002.chunk

# ==== the same while mounted, with the chunk file open in the daemon ======================
fresh truncate-mounted
vs_mount "$STORE" "$MNT"
cmp -s "$MNT/vol.img" "$T/vol.ref" || fail "vol.img does not read back before the cut"
truncate -s $((DOFF + K * BS + 1234)) "$STORE/$C2"
got=$(blocks "$MNT/vol.img" "$T/vol.ref")
assert_eq "$got" "$want" "vol.img blocks after chunk 2 was cut while mounted"
got=$(blocks "$MNT/.snapshots/vol.img@s/vol.img" "$T/vol.ref")
assert_eq "$got" "$want" "the snapshot of vol.img after chunk 2 was cut while mounted"
others_fine "chunk cut while mounted"
check_names "chunk cut while mounted" 0000000000000002.chunk
vs_umount "$MNT"

# ==== an old chunk file deleted while mounted =============================================
# The daemon keeps chunk files open, so a deleted one may go on reading until
# it is closed.  What it must guarantee: each block reads exactly or fails
# with EIO, never other bytes; after a remount every block of it is EIO.
fresh delete-mounted
vs_mount "$STORE" "$MNT"
cmp -s "$MNT/vol.img" "$T/vol.ref" || fail "vol.img does not read back before the delete"
rm "$STORE/$C2"
got=$(blocks "$MNT/vol.img" "$T/vol.ref")
[[ $got != *X* ]] || fail "chunk 2 deleted while mounted: vol.img reads wrong bytes: $got"
ok=${got//E/}
note "chunk 2 deleted while mounted: ${#ok} of $NBLK blocks still read (from the open file), the rest EIO"
got=$(blocks "$MNT/.snapshots/vol.img@s/vol.img" "$T/vol.ref")
[[ $got != *X* ]] || fail "chunk 2 deleted while mounted: the snapshot reads wrong bytes: $got"
others_fine "chunk deleted while mounted"
check_names "chunk deleted while mounted" 0000000000000002.chunk
vs_umount "$MNT"
vs_mount "$STORE" "$MNT"
got=$(blocks "$MNT/vol.img" "$T/vol.ref")
assert_eq "$got" "$(pattern 0 $NBLK)" "vol.img after a remount without chunk 2"
others_fine "remount without chunk 2"
check_names "remount without chunk 2" 0000000000000002.chunk
vs_umount "$MNT"

# ==== the chunk file being appended to, deleted while mounted ==============================
# Blocks in the deleted file are lost, fsynced or not: the operator took the
# file away (EIO on them).  But the damage must stay there: data written and
# fsynced after the delete is data like any other, it must read back, now
# and after a remount (SPEC: durability, and "EIO on the affected blocks
# only").
fresh delete-active
vs_mount "$STORE" "$MNT"
head -c $((NBLK * BS)) /dev/urandom >"$T/act.ref"
dd if="$T/act.ref" of="$MNT/act.img" bs=$BS count=$((NBLK / 2)) oflag=direct conv=fsync status=none
active=$(ls "$STORE/chunks" | sort | tail -n 1)
[ "$active" != 0000000000000002.chunk ] || fail "delete-active: no new chunk file for new writes"
rm "$STORE/chunks/$active"
# The first fsync after the delete may fail (EIO): the writes before it
# landed in the deleted file, and an fsync that fails promises nothing.
# What an application does then, write again and fsync, must work.
if ! dd if="$T/act.ref" of="$MNT/act.img" bs=$BS skip=$((NBLK / 2)) seek=$((NBLK / 2)) \
	count=$((NBLK / 2)) oflag=direct conv=fsync,notrunc status=none 2>"$T/dd.err"; then
	note "delete-active: the first fsync after the delete failed: $(cat "$T/dd.err")"
	dd if="$T/act.ref" of="$MNT/act.img" bs=$BS skip=$((NBLK / 2)) seek=$((NBLK / 2)) \
		count=$((NBLK / 2)) oflag=direct conv=fsync,notrunc status=none 2>"$T/dd.err" ||
		problem "active chunk deleted: writing again after a failed fsync fails too: $(cat "$T/dd.err")"
fi
got=$(blocks "$MNT/act.img" "$T/act.ref")
[[ $got != *X* ]] || fail "active chunk deleted: act.img reads wrong bytes: $got"
note "active chunk $active deleted while mounted: act.img reads $got (first half written before the delete)"
[ "${got:$((NBLK / 2))}" = "$(pattern $((NBLK / 2)) $((NBLK / 2)))" ] ||
	problem "active chunk deleted: blocks of act.img written and fsynced after the delete do not read back: $got"
assert_eq "$(blocks "$MNT/vol.img" "$T/vol.ref")" "$(pattern $NBLK $NBLK)" "vol.img next to a deleted active chunk"
others_fine "active chunk deleted"
head -c 300000 /dev/urandom >"$T/late.ref"
dd if="$T/late.ref" of="$MNT/late.img" bs=64k conv=fsync status=none || problem "active chunk deleted: cannot write late.img"
mkdir "$MNT/.snapshots/late.img@s" || problem "active chunk deleted: cannot snapshot late.img"
vs_umount "$MNT"
vs_mount "$STORE" "$MNT"
got=$(blocks "$MNT/act.img" "$T/act.ref")
[[ $got != *X* ]] || fail "active chunk deleted, remounted: act.img reads wrong bytes: $got"
note "active chunk deleted, after a remount: act.img reads $got"
[[ ${got:0:$((NBLK / 2))} == *E* ]] ||
	fail "active chunk deleted, remounted: no block written before the delete fails, yet its chunk file is gone"
[ "${got:$((NBLK / 2))}" = "$(pattern $((NBLK / 2)) $((NBLK / 2)))" ] ||
	problem "active chunk deleted: after a clean unmount and a remount, blocks of act.img written and fsynced after the delete are lost: $got"
cmp -s "$MNT/late.img" "$T/late.ref" ||
	problem "active chunk deleted: late.img, written, fsynced and snapshotted after the delete, is lost after a clean remount ($(cmp "$MNT/late.img" "$T/late.ref" 2>&1 | head -n 1))"
cmp -s "$MNT/.snapshots/late.img@s/late.img" "$T/late.ref" ||
	problem "active chunk deleted: the snapshot late.img@s is lost after a clean remount"
assert_eq "$(blocks "$MNT/vol.img" "$T/vol.ref")" "$(pattern $NBLK $NBLK)" "vol.img after the remount"
others_fine "active chunk deleted, remounted"
check_names "active chunk deleted" "$active"
vs_umount "$MNT"

# ==== a damaged chunk header: every block of that file EIO, nothing else ===================
fresh bad-header
printf 'X' | dd of="$STORE/$C2" bs=1 seek=3 conv=notrunc status=none     # in the magic
vs_mount "$STORE" "$MNT"
assert_eq "$(blocks "$MNT/vol.img" "$T/vol.ref")" "$(pattern 0 $NBLK)" "vol.img with a damaged chunk header"
others_fine "damaged chunk header"
check_names "damaged chunk header" 0000000000000002.chunk
check_names "damaged chunk header" 0000000000000002.chunk scrub
vs_umount "$MNT"

# ==== two chunk files swapped: EIO on both, never the other one's bytes ====================
fresh swapped
mv "$STORE/$C1" "$STORE/chunks/x"
mv "$STORE/$C2" "$STORE/$C1"
mv "$STORE/chunks/x" "$STORE/$C2"
vs_mount "$STORE" "$MNT"
assert_eq "$(blocks "$MNT/vol.img" "$T/vol.ref")" "$(pattern 0 $NBLK)" "vol.img with chunk files 1 and 2 swapped"
expect_errno "Input/output error" cat "$MNT/other.img"
alive "swapped chunk files"
check_names "swapped chunk files" 0000000000000001.chunk
check_names "swapped chunk files" 0000000000000002.chunk
check_names "swapped chunk files" 0000000000000001.chunk scrub
check_names "swapped chunk files" 0000000000000002.chunk scrub
vs_umount "$MNT"

# ==== garbage pages inside index.sqlite (unmounted) =========================================
# The mount is refused with one line and writes nothing, or it mounts,
# vsnapctl check finds the damage and no read returns wrong bytes.
[ ! -e "$TPL/index.sqlite-wal" ] || fail "template: index.sqlite-wal left after a clean unmount"
cp -a "$TPL" "$T/pages"
sqlite3 -readonly "$T/pages/index.sqlite" \
	"SELECT name, pageno, pagetype FROM dbstat ORDER BY pageno" >"$T/pages.txt" ||
	fail "sqlite3 dbstat failed (needs SQLITE_ENABLE_DBSTAT_VTAB)"
npages=$(($(stat -c %s "$TPL/index.sqlite") / 4096))
page_of() { awk -F'|' -v n="$1" -v t="${2:-}" '$1 == n && (t == "" || $3 == t) { print $2 }' "$T/pages.txt" | head -n 1; }
mid=$((npages / 2 + 1))
note "index.sqlite: $npages pages; the middle one, $mid, is $(awk -F'|' -v p=$mid '$2 == p { print $1 " " $3 }' "$T/pages.txt")"
for pg in "$mid" "$(page_of extent leaf)" "$(page_of inode)" "$(page_of snapshot)" "$(page_of node)" 1 "$npages"; do
	[ -n "$pg" ] || fail "a page of the index not found in: $(cat "$T/pages.txt")"
	fresh "index-page-$pg"
	garbage "$pg"
	after_index_damage "garbage in index page $pg ($(awk -F'|' -v p=$pg '$2 == p { print $1 }' "$T/pages.txt"))"
done

# ==== the same after a crash: the last commits are in index.sqlite-wal =======================
# A refusal must not checkpoint the WAL into the damaged file either (docs/
# on-disk-format.md: "A refused file is left byte-identical").
fresh index-page-after-crash
vs_mount "$STORE" "$MNT" -o flush_ms=60000
head -c 100000 /dev/urandom >"$T/crash.ref"
dd if="$T/crash.ref" of="$MNT/crash.img" bs=64k conv=fsync status=none
vs_kill9 "$MNT"
[ -s "$STORE/index.sqlite-wal" ] || fail "index-page-after-crash: no WAL after the crash"
# a page in use that the WAL does not hold a newer copy of
wal_pages=" "
wsize=$(stat -c %s "$STORE/index.sqlite-wal")
for ((off = 32; off + 4120 <= wsize; off += 4120)); do
	wal_pages+="$(od -An -tu4 --endian=big -j $off -N4 "$STORE/index.sqlite-wal" | tr -d ' ') "
done
cp -a "$STORE" "$T/crashcopy"
sqlite3 -readonly "$T/crashcopy/index.sqlite" "SELECT pageno, name FROM dbstat ORDER BY pageno" >"$T/cpages.txt"
pg=''
while IFS='|' read -r p name; do
	[[ $wal_pages == *" $p "* ]] && continue
	[ "$p" -gt 1 ] && [ "$p" -le "$(($(stat -c %s "$STORE/index.sqlite") / 4096))" ] || continue
	pg=$p
	[ "$name" = extent ] && break
done <"$T/cpages.txt"
[ -n "$pg" ] || fail "index-page-after-crash: every page in use is in the WAL ($wal_pages)"
garbage "$pg"
after_index_damage "garbage in index page $pg, WAL of a crash present"

# ==== the lock file removed while mounted ==================================================
fresh lock-removed
vs_mount "$STORE" "$MNT"
pid1=$(vs_pid "$MNT")
rm "$STORE/lock"
# the daemon goes on serving, writes included
head -c 200000 /dev/urandom >"$T/lk.ref"
dd if="$T/lk.ref" of="$MNT/lk.img" bs=64k conv=fsync status=none || fail "lock removed: a write failed"
mkdir "$MNT/.snapshots/lk.img@s" || fail "lock removed: a snapshot failed"
cmp -s "$MNT/.snapshots/lk.img@s/lk.img" "$T/lk.ref" || fail "lock removed: the snapshot differs"
assert_eq "$(blocks "$MNT/vol.img" "$T/vol.ref")" "$(pattern $NBLK $NBLK)" "vol.img with the lock file removed"
# a second daemon on the same store is still refused, and changes nothing
"$VSNAPFS" -f "$STORE" "$MNT2" >"$T/second.out" 2>"$T/second.err" &
pid2=$!
vs_track_pid $pid2
for ((i = 0; i < 40; i++)); do
	mountpoint -q "$MNT2" && break
	_vs_alive $pid2 || break
	sleep 0.05
done
if mountpoint -q "$MNT2"; then
	fusermount3 -u "$MNT2"
	vs_wait_pid $pid2 10 || true
	fail "lock removed: a second vsnapfs mounted the store that pid $pid1 serves (DAEMON BUG: two daemons on one store)"
fi
vs_wait_pid $pid2 10 || fail "lock removed: the second vsnapfs neither mounted nor exited"
[ "$VS_STATUS" -ne 0 ] || fail "lock removed: the second vsnapfs exited 0"
[ "$(wc -l <"$T/second.err")" = 1 ] ||
	fail "lock removed: the second vsnapfs did not give a one-line reason: '$(cat "$T/second.err")'"
note "lock removed: second daemon refused: $(cat "$T/second.err")"
grep -qw "$pid1" "$T/second.err" ||
	note "lock removed: the refusal does not name the first daemon's pid $pid1 (the pid lived in the removed file)"
alive "lock removed, after the second attempt"
cmp -s "$MNT/lk.img" "$T/lk.ref" || fail "lock removed: lk.img changed after the second attempt"
others_fine "lock removed"
check_clean "lock removed (mounted)"
vs_umount "$MNT"
check_clean "lock removed (unmounted)"
vs_mount "$STORE" "$MNT"
cmp -s "$MNT/lk.img" "$T/lk.ref" || fail "lock removed: lk.img differs after a remount"
vs_umount "$MNT"

# ==== a garbage index.sqlite-wal ============================================================
# Either SQLite ignores a WAL that is not valid (header or frame checksums)
# or the mount is refused with one line; never a crash, and what was
# committed before reads back exactly.
for kind in random magic; do
	fresh "wal-$kind"
	case $kind in
	random) head -c 200000 /dev/urandom >"$STORE/index.sqlite-wal" ;;
	magic)  # a WAL header (magic, format 3007000, page size 4096) + garbage frames
		{ printf '\x37\x7f\x06\x82\x00\x2d\xe2\x18\x00\x00\x10\x00\x00\x00\x00\x01'
		  head -c $((16 + 5 * (24 + 4096))) /dev/urandom; } >"$STORE/index.sqlite-wal" ;;
	esac
	rc=0
	_VS_MNTS+=("$MNT2")
	timeout -k 5 30 "$VSNAPFS" "$STORE" "$MNT2" >"$T/refused.out" 2>"$T/refused.err" || rc=$?
	if mountpoint -q "$MNT2"; then
		fusermount3 -u "$MNT2"
		note "garbage WAL ($kind): mounted (SQLite ignored it)"
		vs_mount "$STORE" "$MNT"
		assert_eq "$(blocks "$MNT/vol.img" "$T/vol.ref")" "$(pattern $NBLK $NBLK)" "vol.img with a garbage WAL"
		assert_eq "$(blocks "$MNT/.snapshots/vol.img@s/vol.img" "$T/vol.ref")" "$(pattern $NBLK $NBLK)" \
			"the snapshot of vol.img with a garbage WAL"
		others_fine "garbage WAL ($kind)"
		check_clean "garbage WAL ($kind), mounted"
		vs_umount "$MNT"
		check_clean "garbage WAL ($kind), unmounted"
	else
		[ $rc -ne 0 ] && [ $rc -lt 124 ] || fail "garbage WAL ($kind): vsnapfs exit status $rc"
		[ "$(wc -l <"$T/refused.err")" = 1 ] ||
			fail "garbage WAL ($kind): expected a one-line message, got: '$(cat "$T/refused.err")'"
		note "garbage WAL ($kind): refused: $(cat "$T/refused.err")"
	fi
done

if grep -iE 'assert|abort|sanitizer|segv' "$T"/vsnapfs.*.log; then
	fail "a daemon log mentions a crash"
fi
if [ ${#PROBLEMS[@]} -gt 0 ]; then
	for ((i = 0; i < ${#PROBLEMS[@]}; i++)); do
		echo "PROBLEM $((i + 1)): ${PROBLEMS[$i]}"
	done
	fail "${#PROBLEMS[@]} problem(s) in $NCASES damage cases (the PROBLEM lines above)"
fi
pass "$NCASES damage cases"
