#!/bin/bash
# The upgrade from index format 2 (docs/design.md, "Metadata at scale", D6).
# The fixture (tests/fixtures/store-f2.tar.xz, made by
# tests/fixtures/make-store-f2.sh with the daemon of index format 2, chunk
# format 1) holds two stores; tests/fixtures/store-f2.manifest has the size and
# SHA-256 of every volume and snapshot file.  For each store:
#  - as shipped: format 2, chunk files of version 1; vsnapctl refuses it in
#    one line that says to mount it once;
#  - a mount upgrades it (a progress line on stderr), and then every file has
#    its manifest size and SHA-256, check is clean, list shows the manifest's
#    files; the index is format 3 with a sidecar per old chunk file, new
#    chunk files are version 2; a write after the mount survives a remount;
#  - a fresh copy, upgraded in steps of a few rows by daemons SIGKILLed at
#    random moments, then mounted once more: the same results.  After each
#    kill the index has a user_version that format-2 vsnapfs refuses (it opens
#    1 and 2 only), as it would write behind the upgrade's cursor, and
#    vsnapctl still says to mount it once.
# f2-4k was left by a SIGKILL (meta.clean = 0) with a volume unlinked while
# open and a spare chunk file, so the upgrade also meets a recovery; f2-64k
# was unmounted cleanly.
. "$(dirname "$0")/lib.sh"

command -v sqlite3 >/dev/null || skip "sqlite3 missing (tests/install-deps.sh installs it)"
command -v xz >/dev/null || skip "xz missing (tests/install-deps.sh installs xz-utils)"
[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

FIX=$_VS_LIBDIR/../fixtures
MANIFEST=$FIX/store-f2.manifest
tar -C "$T" -xJf "$FIX/store-f2.tar.xz" || fail "cannot unpack $FIX/store-f2.tar.xz"
MNT=$T/mnt
MiB=$((1 << 20))

# mf KIND STORE: the manifest's lines of that kind for that store, without both
mf() { awk -v k="$1" -v s="$2" '$1 == k && $2 == s { $1 = ""; $2 = ""; sub(/^  /, ""); print }' "$MANIFEST"; }
# storekey STORE KEY: a key=value of the store's line
storekey() { mf store "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
sql() { sqlite3 "$T/$1/index.sqlite" "$2"; }

ctl() {
	local out=$1 want=0 rc=0
	shift
	if [ "$1" = "-x" ]; then want=$2; shift 2; fi
	with_deadline 60 "$VSNAPCTL" "$@" >"$out" 2>"$out.err" || rc=$?
	[ $rc -eq "$want" ] || fail "vsnapctl $* exited $rc: $(head -c 1500 "$out") $(head -c 500 "$out.err")"
}

# check_clean STORE WHERE: vsnapctl check of WHERE (the store or its mount)
check_clean() {
	ctl "$T/check.txt" check "$2"
	grep -qE ": [0-9]+ block\(s\) in [0-9]+ chunk file\(s\), [0-9]+ inode\(s\): clean$" "$T/check.txt" ||
		fail "check of $1 ($2): $(cat "$T/check.txt")"
}

# check_list STORE WHERE UNLINKED: vsnapctl list shows the manifest's
# files, their kinds and sizes, the clones' origins, and UNLINKED volumes
# unlinked while open
check_list() {
	local s=$1 path size sum kind e
	# one line a file: PATH TYPE SIZE ORIGIN ("-": none), separated by one space
	ctl "$T/list.all" list --raw -n -b -o path,type,size,origin "$2"
	awk '$2 != "dir-snapshot"' "$T/list.all" >"$T/list.lines"   # the files only
	cut -d' ' -f1 "$T/list.lines" | grep -v '^(unlinked' | sort >"$T/list.paths"
	mf file "$s" | cut -d' ' -f1 | sort >"$T/mf.paths"
	diff -u "$T/mf.paths" "$T/list.paths" || fail "$s: vsnapctl list of $2 shows other files than the manifest"
	assert_eq "$(grep -c '^(unlinked' "$T/list.lines" || true)" "$3" "$s: unlinked volumes listed by $2"
	while read -r path size sum; do
		e=$(awk -v p="$path" '$1 == p' "$T/list.lines")
		kind=volume
		[[ $path != */.snapshots/* ]] || kind=snapshot
		[ "$(echo "$e" | cut -d' ' -f2,3)" = "$kind $size" ] ||
			fail "$s: list of $2 says for $path: $e; expected $kind of $size bytes"
	done < <(mf file "$s")
	while read -r path src; do
		[ "$(awk -v p="$path" '$1 == p {print $4}' "$T/list.lines")" = "$src" ] ||
			fail "$s: list of $2: origin of $path is not $src: $(grep -F "$path" "$T/list.lines")"
	done < <(mf origin "$s")
}

# check_files STORE [PATH SHA256]: every file of the manifest has its size and
# SHA-256 through the mount (PATH, if given, has SHA256 instead), the mount
# has no other files, and the ranges of "same" lines are equal
check_files() {
	local s=$1 path size sum
	while read -r path size sum; do
		[ "$path" != "${2:-}" ] || sum=$3
		assert_eq "$(stat -c %s "$MNT$path")" "$size" "$s: size of $path"
		assert_eq "$(sha256sum <"$MNT$path" | cut -d' ' -f1)" "$sum" "$s: SHA-256 of $path"
	done < <(mf file "$s")
	(cd "$MNT" && find . -type f | sed 's/^\.//' | sort) >"$T/mnt.paths"
	mf file "$s" | cut -d' ' -f1 | sort >"$T/mf.paths"
	diff -u "$T/mf.paths" "$T/mnt.paths" || fail "$s: the mount shows other files than the manifest"
	while read -r a aoff b boff len; do
		cmp -i "$aoff:$boff" -n "$len" "$MNT$a" "$MNT$b" ||
			fail "$s: $a at $aoff and $b at $boff differ (a clone and its origin)"
	done < <(mf same "$s")
}

# check_referenced STORE: a format-2 index has no referenced-block counts:
# the daemon counts them in the background after the upgrade, and then
# st_blocks of every live volume is its blocks holding data (own or shared)
check_referenced() {
	local s=$1 bs path size sum want got i
	bs=$(storekey "$s" block_size)
	while read -r path size sum; do
		[[ $path != */.snapshots/* ]] || continue
		want=$(perl -e 'my ($bs, $n) = (shift, 0); local $/ = \$bs; binmode STDIN;
			while (<STDIN>) { $n++ if /[^\0]/ } print $n * $bs' "$bs" <"$MNT$path")
		for ((i = 0; i < 100 * VS_TIME_SCALE; i++)); do
			got=$(du --block-size=1 "$MNT$path" | cut -f1)
			[ "$got" = "$want" ] && break
			sleep 0.1
		done
		assert_eq "$got" "$want" "$s: st_blocks of $path (bytes) after the upgrade, counted"
	done < <(mf file "$s")
}

[ "$(awk '$1 == "store"' "$MANIFEST" | wc -l)" -ge 2 ] || fail "the manifest names fewer than two stores"
[ "$(awk '$1 == "file"' "$MANIFEST" | wc -l)" -ge 15 ] || fail "the manifest names fewer than 15 files"

# check_upgraded S STORE: the index is format 3, the old chunk files have
# sidecars, and the store is clean
check_upgraded() {
	local s=$1 c
	assert_eq "$(sqlite3 "$2/index.sqlite" 'PRAGMA user_version')" 3 "$s: user_version after the upgrade"
	assert_eq "$(sqlite3 "$2/index.sqlite" "SELECT value FROM meta WHERE key = 'format_version'")" 3 \
		"$s: meta.format_version after the upgrade"
	assert_eq "$(sqlite3 "$2/index.sqlite" "SELECT count(*) FROM sqlite_schema WHERE name IN ('bmap', 'extent')")" 1 \
		"$s: one block table after the upgrade"
	for c in "$2"/chunks/*.chunk; do
		[ "$(od -An -tu4 -j8 -N4 "$c" | tr -d ' ')" = 1 ] || continue
		[ -f "${c%.chunk}.slots" ] || fail "$s: no sidecar for the version-1 chunk $(basename "$c")"
	done
	[ ! -e "$2/index.sqlite.new" ] || fail "$s: the upgrade left index.sqlite.new"
}

for s in $(awk '$1 == "store" { print $2 }' "$MANIFEST"); do
	STORE=$T/$s
	note "$s: $(mf store "$s")"
	cp -a "$STORE" "$T/$s-killed"

	# ---- as shipped: format 2 --------------------------------------------------
	assert_eq "$(sql "$s" 'PRAGMA user_version')" "$(storekey "$s" user_version)" "$s: user_version as shipped"
	assert_eq "$(storekey "$s" user_version)" 2 "$s: the fixture's index format"
	assert_eq "$(sql "$s" "SELECT value FROM meta WHERE key = 'block_size'")" "$(storekey "$s" block_size)" \
		"$s: block size"
	assert_eq "$(sql "$s" "SELECT value FROM meta WHERE key = 'clean'")" "$(storekey "$s" clean)" \
		"$s: meta.clean as shipped"
	for c in "$STORE"/chunks/*.chunk; do
		assert_eq "$(od -An -tu4 -j8 -N4 "$c" | tr -d ' ')" 1 "$s: header version of $(basename "$c")"
	done
	# every file but SQLite's shared-memory and log files, which a reader creates
	storesum() { (cd "$1" && find . -type f ! -name '*-shm' ! -name '*-wal' | sort | xargs sha256sum | sha256sum); }
	sum0=$(storesum "$STORE")
	ctl "$T/c2.txt" -x 2 check "$STORE"
	grep -qx "vsnapctl: .*/index.sqlite: index format 2: mount the store once (read-write) to upgrade it to format 3" \
		"$T/c2.txt.err" || fail "$s: vsnapctl on a format-2 store: $(cat "$T/c2.txt.err")"
	assert_eq "$(storesum "$STORE")" "$sum0" \
		"$s: vsnapctl left the format-2 store as it was"
	unlinked=$(storekey "$s" unlinked)

	# ---- mounted: upgraded, everything reads as the manifest says -----------------
	vs_mount "$STORE" "$MNT"
	grep -qE "^vsnapfs: upgrading index format 2 to 3: [0-9]+ of [0-9]+ blocks \(100%\)" "$(vs_log "$MNT")" ||
		fail "$s: no progress line of the upgrade: $(cat "$(vs_log "$MNT")")"
	grep -qE "upgraded from format version 2 to 3" "$(vs_log "$MNT")" ||
		fail "$s: the mount did not say it upgraded the index: $(cat "$(vs_log "$MNT")")"
	if [ "$unlinked" -gt 0 ]; then
		grep -qE "deleting $unlinked unlinked volume" "$(vs_log "$MNT")" ||
			fail "$s: the mount did not delete the volume unlinked while open: $(cat "$(vs_log "$MNT")")"
	fi
	check_files "$s"
	check_clean "$s" "$MNT"
	check_referenced "$s"
	# the unlinked volume is deleted by the background thread, soon after
	for ((i = 0; i < 100 * VS_TIME_SCALE; i++)); do
		ctl "$T/list.txt" list --raw -n -o path "$MNT"
		grep -qF '(unlinked' "$T/list.txt" || break
		sleep 0.1
	done
	check_list "$s" "$MNT" 0

	# ---- a write after the mount survives a remount ------------------------------------
	vol=$(mf file "$s" | awk '$1 !~ /\/\.snapshots\// && $2 >= 1048576 { print $1; exit }')
	[ -n "$vol" ] || fail "$s: the manifest has no volume of 1 MiB or more"
	cp "$MNT$vol" "$T/vol.model"
	head -c $((64 * 1024 + 100)) /dev/urandom >"$T/new.bin"
	for f in "$MNT$vol" "$T/vol.model"; do
		dd if="$T/new.bin" of="$f" bs=1000 seek=$((MiB / 2 + 7)) oflag=seek_bytes conv=notrunc,fsync status=none
	done
	cmp "$T/vol.model" "$MNT$vol" || fail "$s: $vol does not read back what was written after the mount"
	newsum=$(sha256sum <"$T/vol.model" | cut -d' ' -f1)
	vs_umount "$MNT"
	check_upgraded "$s" "$STORE"
	assert_eq "$(sql "$s" "SELECT value FROM meta WHERE key = 'clean'")" 1 "$s: meta.clean after unmount"
	nv2=0
	for c in "$STORE"/chunks/*.chunk; do
		[ "$(od -An -tu4 -j8 -N4 "$c" | tr -d ' ')" = 2 ] && nv2=$((nv2 + 1))
	done
	[ "$nv2" -ge 1 ] || fail "$s: the write after the upgrade made no chunk file of version 2"
	check_clean "$s" "$STORE"
	check_list "$s" "$STORE" 0

	vs_mount "$STORE" "$MNT"
	check_files "$s" "$vol" "$newsum"
	vs_umount "$MNT"
	check_clean "$s" "$STORE"

	# ---- SIGKILL in the middle of the upgrade, five times, then a mount that finishes ----
	# steps of 16 rows; each daemon kills itself at a random row of its run
	# (VSNAPFS_TEST_UPGRADE_KILL_ROW), with that step's sidecar entries
	# written but neither synced nor committed
	K=$T/$s-killed
	seed=${T140_SEED:-$RANDOM}
	note "$s: kill rows from seed $seed"
	RANDOM=$seed
	for ((k = 0; k < 5; k++)); do
		# row() sees the data rows from the cursor on: a kill row past those
		# left would let the daemon finish (f2-64k has 20 in all)
		left=$(sqlite3 "$K/index.sqlite" "SELECT count(*) FROM bmap WHERE chunk <> 0 AND (node, lblock) >=
			(coalesce((SELECT value FROM meta WHERE key = 'upgrade_cursor_node'), 0),
			 coalesce((SELECT value FROM meta WHERE key = 'upgrade_cursor_lblock'), 0))")
		[ "$left" -gt 0 ] || fail "$s: no data row left to upgrade before kill $k"
		at=$((RANDOM % (left < 40 ? left : 40) + 1))
		VSNAPFS_UPGRADE_STEP_ROWS=16 VSNAPFS_TEST_UPGRADE_KILL_ROW=$at \
			"$VSNAPFS" -f "$K" "$MNT" >"$T/k.out" 2>"$T/k.err" &
		pid=$!
		vs_track_pid "$pid"
		vs_wait_pid "$pid" $((60 * VS_TIME_SCALE)) || fail "$s: the daemon meant to die at row $at still runs"
		[ "$VS_STATUS" -eq 137 ] ||
			fail "$s: the daemon meant to die at row $at exited $VS_STATUS: $(cat "$T/k.err")"
		! grep -qF " $MNT fuse" /proc/mounts || fail "$s: a daemon killed during the upgrade left a mount"
		assert_eq "$(sqlite3 "$K/index.sqlite" "SELECT count(*) FROM meta WHERE key = 'upgrade'")" 1 \
			"$s: an upgrade is under way after the kill at row $at"
		# the first commit (meta.upgrade, before any row) fences older daemons out
		uv=$(sqlite3 "$K/index.sqlite" 'PRAGMA user_version')
		[ "$uv" -gt 2 ] && [ "$uv" -ne 3 ] ||
			fail "$s: user_version $uv after the kill at row $at: format-2 vsnapfs would open it, or it claims format 3"
		ctl "$T/c2.txt" -x 2 list "$K"
		grep -qx "vsnapctl: .*/index.sqlite: index format 2: mount the store once (read-write) to upgrade it to format 3" \
			"$T/c2.txt.err" || fail "$s: vsnapctl after the kill at row $at: $(cat "$T/c2.txt.err")"
	done
	vs_mount "$K" "$MNT"
	check_files "$s"
	vs_umount "$MNT"
	check_upgraded "$s" "$K"
	check_clean "$s" "$K"
done
pass
