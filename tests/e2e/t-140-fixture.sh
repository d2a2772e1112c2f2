#!/bin/bash
# The format-2 fixture (tests/fixtures/store-f2.tar.xz, made by
# tests/fixtures/make-store-f2.sh with the daemon of index format 2, chunk
# format 1) is read right by this build: every volume and snapshot file has
# the size and SHA-256 of tests/fixtures/store-f2.manifest through the mount,
# vsnapctl check is clean and vsnapctl list shows the manifest's files before
# and after a mount, the mount is not refused, and a write after it survives
# a remount.
#
# This is the test that becomes t-140-upgrade when index format 3 arrives
# (docs/design.md, "Metadata at scale", D8 step 5): the mount then upgrades
# the store, and the assertions marked "format 2" below change to say 3
# (user_version and format_version after the mount, chunk version 2 for new
# chunk files, a sidecar per old one); every content check stays as it is.
# f2-4k was left by a SIGKILL (meta.clean = 0) with a volume unlinked while
# open and a spare chunk file, so the upgrade will also meet a recovery;
# f2-64k was unmounted cleanly.
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
	local out=$1 rc=0
	shift
	with_deadline 60 "$VSNAPCTL" "$@" >"$out" 2>"$out.err" || rc=$?
	[ $rc -eq 0 ] || fail "vsnapctl $* exited $rc: $(head -c 1500 "$out") $(head -c 500 "$out.err")"
}

# check_clean STORE WHERE: vsnapctl check of WHERE (the store or its mount)
check_clean() {
	ctl "$T/check.txt" check "$2"
	grep -qE ": [0-9]+ block\(s\) in [0-9]+ chunk file\(s\), [0-9]+ inode\(s\): clean$" "$T/check.txt" ||
		fail "check of $1 ($2): $(cat "$T/check.txt")"
}

# check_list STORE WHERE UNLINKED: vsnapctl list --json shows the manifest's
# files, their kinds and sizes, the clones' origins, and UNLINKED volumes
# unlinked while open
check_list() {
	local s=$1 path size sum kind e
	ctl "$T/list.json" list --json "$2"
	tr -d '\n' <"$T/list.json" | sed 's/},{/}\n{/g' >"$T/list.lines"
	sed -n 's/.*"path":"\([^"]*\)".*/\1/p' "$T/list.lines" | grep -v '^(unlinked' | sort >"$T/list.paths"
	mf file "$s" | cut -d' ' -f1 | sort >"$T/mf.paths"
	diff -u "$T/mf.paths" "$T/list.paths" || fail "$s: vsnapctl list of $2 shows other files than the manifest"
	assert_eq "$(grep -c '"path":"(unlinked' "$T/list.lines" || true)" "$3" "$s: unlinked volumes listed by $2"
	while read -r path size sum; do
		e=$(grep -F "{\"path\":\"$path\"," "$T/list.lines")
		kind=volume
		[[ $path != */.snapshots/* ]] || kind=snapshot
		echo "$e" | grep -qF "\"kind\":\"$kind\",\"size\":$size," ||
			fail "$s: list of $2 says for $path: $e; expected $kind of $size bytes"
	done < <(mf file "$s")
	while read -r path src; do
		grep -F "{\"path\":\"$path\"," "$T/list.lines" | grep -qF "\"origin\":\"$src\"" ||
			fail "$s: list of $2: origin of $path is not $src: $(grep -F "\"$path\"" "$T/list.lines")"
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

[ "$(awk '$1 == "store"' "$MANIFEST" | wc -l)" -ge 2 ] || fail "the manifest names fewer than two stores"
[ "$(awk '$1 == "file"' "$MANIFEST" | wc -l)" -ge 15 ] || fail "the manifest names fewer than 15 files"

for s in $(awk '$1 == "store" { print $2 }' "$MANIFEST"); do
	STORE=$T/$s
	note "$s: $(mf store "$s")"

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
	unlinked=$(storekey "$s" unlinked)
	check_clean "$s" "$STORE"
	check_list "$s" "$STORE" "$unlinked"

	# ---- mounted: not refused, everything reads as the manifest says -----------------
	vs_mount "$STORE" "$MNT"
	if [ "$unlinked" -gt 0 ]; then
		grep -qE "deleting $unlinked unlinked volume" "$(vs_log "$MNT")" ||
			fail "$s: the mount did not delete the volume unlinked while open: $(cat "$(vs_log "$MNT")")"
	fi
	check_files "$s"
	check_clean "$s" "$MNT"
	# the unlinked volume is deleted by the background thread, soon after
	for ((i = 0; i < 100 * VS_TIME_SCALE; i++)); do
		ctl "$T/list.json" list --json "$MNT"
		grep -qF '"path":"(unlinked' "$T/list.json" || break
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
	# format 2: the mount keeps the index format (format 3 will upgrade it here)
	assert_eq "$(sql "$s" 'PRAGMA user_version')" 2 "$s: user_version after the mount"
	assert_eq "$(sql "$s" "SELECT value FROM meta WHERE key = 'format_version'")" 2 \
		"$s: meta.format_version after the mount"
	assert_eq "$(sql "$s" "SELECT value FROM meta WHERE key = 'clean'")" 1 "$s: meta.clean after unmount"
	check_clean "$s" "$STORE"
	check_list "$s" "$STORE" 0

	vs_mount "$STORE" "$MNT"
	check_files "$s" "$vol" "$newsum"
	vs_umount "$MNT"
	check_clean "$s" "$STORE"
done
pass
