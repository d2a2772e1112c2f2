#!/bin/bash
# vsnapctl: list (sizes, allocated and exclusive bytes, origin of clones),
# tree (the genealogy of map nodes), check (clean on a mounted and an
# unmounted store; a damaged chunk file or index is found and named) and
# scrub (a flipped byte is named by file and offset).  Exit codes: 0 clean,
# 1 problems, 2 usage or I/O error.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
command -v sqlite3 >/dev/null || skip "sqlite3 missing (tests/install-deps.sh installs it)"
command -v jq >/dev/null || skip "jq missing (tests/install-deps.sh installs it)"

BS=4096
STORE=$T/store
MNT=$T/mnt
GOLDEN=/.snapshots/vm1.img@golden/vm1.img
DATE_RE='[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}'

# ctl EXPECTED_RC OUT ARGS...: run vsnapctl, stdout to OUT, stderr to OUT.err
ctl() {
	local want=$1 out=$2 rc=0
	shift 2
	with_deadline 60 "$VSNAPCTL" "$@" >"$out" 2>"$out.err" || rc=$?
	[ $rc -eq "$want" ] ||
		fail "vsnapctl $* exited $rc, expected $want: $(head -c 1500 "$out") $(head -c 500 "$out.err")"
}

# one_line FILE TEXT: FILE is exactly the line TEXT
one_line() {
	assert_eq "$(wc -l <"$1")" 1 "lines of $(cat "$1")"
	grep -qxF "$2" "$1" || fail "expected '$2', got: $(cat "$1")"
}

# jq_list FILE PATH FILTER: FILTER applied to the entry of list --json whose path is PATH
jq_list() { jq -r --arg p "$2" ".files[] | select(.path == \$p) | $3" "$1"; }

# expect_entry PATH TYPE SIZE REFERENCED ALLOCATED EXCLUSIVE ORIGIN (null: none)
expect_entry() {
	assert_eq "$(jq_list "$T/list.json" "$1" \
		'"\(.type) \(.size_bytes) \(.referenced_bytes) \(.allocated_bytes) \(.exclusive_bytes) \(.origin)"')" \
		"$2 $3 $4 $5 $6 $7" "list --json: type, size, referenced, allocated, exclusive bytes and origin of $1"
}

# blk FILE N: block N of FILE
blk() { dd if="$1" bs=$BS skip="$2" count=1 status=none; }

# flip_block STORE DATAFILE N: flip a byte in the chunk slot that holds block
# N of DATAFILE (found by content, so every block written must be distinct)
flip_block() {
	local store=$1 c d n i chunk= slot= doff= off b
	blk "$2" "$3" >"$T/needle"
	for c in "$store"/chunks/*.chunk; do
		d=$(chunk_data_off "$c")
		n=$((($(stat -c %s "$c") - d) / BS))
		for ((i = 0; i < n; i++)); do
			if dd if="$c" bs=$BS skip=$((d / BS + i)) count=1 status=none | cmp -s - "$T/needle"; then
				chunk=$c slot=$i doff=$d
			fi
		done
	done
	[ -n "$chunk" ] || fail "block $3 of $2 not found in the chunk files of $store"
	off=$((doff + slot * BS + 100))
	b=$(od -An -tu1 -j $off -N1 "$chunk" | tr -d ' ')
	printf "\\$(printf '%03o' $((b ^ 255)))" | dd of="$chunk" bs=1 seek=$off conv=notrunc status=none
}

# damaged_copy NAME: a copy of the (unmounted) store to break
damaged_copy() {
	rm -rf "${T:?}/$1"
	cp -a "$STORE" "$T/$1"
}

# ---- volumes, snapshots (FILE@NAME and directory), clones ---------------------------
vs_mount "$STORE" "$MNT" -o block_size=$BS
head -c $((16 * BS)) /dev/urandom >"$T/vm1.bin"
head -c $((8 * BS)) /dev/urandom >"$T/root.bin"
head -c $((2 * BS)) /dev/urandom >"$T/vm1-new.bin"
head -c $((2 * BS)) /dev/urandom >"$T/clone-new.bin"
head -c $((8 * BS)) /dev/urandom >"$T/root-new.bin"
head -c $((4 * BS)) /dev/urandom >"$T/base.bin"
mkdir "$MNT/web"
dd if="$T/vm1.bin" of="$MNT/vm1.img" bs=$BS conv=fsync status=none
dd if="$T/root.bin" of="$MNT/web/root.img" bs=$BS conv=fsync status=none
truncate -s 1M "$MNT/web/data.img"
mkdir "$MNT/.snapshots/vm1.img@golden"
mkdir "$MNT/web/.snapshots/nightly"
# vm1 overrides blocks 0-1 of the snapshot, the clone blocks 0 and 5: only
# block 0 is hidden from both, so deleting the snapshot frees one block
dd if="$T/vm1-new.bin" of="$MNT/vm1.img" bs=$BS conv=notrunc,fsync status=none
cp "$MNT$GOLDEN" "$MNT/clone.img"
cmp "$MNT$GOLDEN" "$MNT/clone.img" || fail "clone.img differs from the snapshot"
dd if="$T/clone-new.bin" of="$MNT/clone.img" bs=$BS count=1 conv=notrunc,fsync status=none
dd if="$T/clone-new.bin" of="$MNT/clone.img" bs=$BS skip=1 seek=5 count=1 conv=notrunc,fsync status=none
# root.img rewritten whole: the snapshot's blocks are all its own now
dd if="$T/root-new.bin" of="$MNT/web/root.img" bs=$BS conv=notrunc,fsync status=none

# ---- list ------------------------------------------------------------------------------
ctl 0 "$T/list.json" list --json "$MNT"
# referenced: every block each shows, own or shared (all of them hold data)
expect_entry /vm1.img volume $((16 * BS)) $((16 * BS)) $((2 * BS)) $((2 * BS)) null
expect_entry "$GOLDEN" snapshot $((16 * BS)) $((16 * BS)) $((16 * BS)) $BS null
expect_entry /clone.img volume $((16 * BS)) $((16 * BS)) $((2 * BS)) $((2 * BS)) "$GOLDEN"
expect_entry /web/root.img volume $((8 * BS)) $((8 * BS)) $((8 * BS)) $((8 * BS)) null
expect_entry /web/.snapshots/nightly/root.img snapshot $((8 * BS)) $((8 * BS)) $((8 * BS)) $((8 * BS)) null
expect_entry /web/.snapshots/nightly/data.img snapshot 1048576 0 0 0 null
expect_entry /web/data.img volume 1048576 0 0 0 null
# a directory snapshot's row: its files' totals; exclusive is what its rmdir
# frees (root.img's 8 blocks, all rewritten since)
expect_entry /web/.snapshots/nightly dir-snapshot $((8 * BS + 1048576)) $((8 * BS)) $((8 * BS)) $((8 * BS)) null
assert_eq "$(jq_list "$T/list.json" /web/.snapshots/nightly '"\(.snapshot) \(.node_id) \(.created_unix_s > 0)"')" \
	"nightly null true" "snapshot, node and creation time of a directory snapshot's row"
assert_eq "$(jq '.files | length' "$T/list.json")" 8 "entries of list --json"
# every column, each key with its unit; a volume has no creation time
assert_eq "$(jq -c '.files[0] | keys_unsorted' "$T/list.json")" \
	'["path","type","size_bytes","referenced_bytes","allocated_bytes","exclusive_bytes","origin","created_unix_s","snapshot","node_id","ino"]' \
	"keys of list --json"
assert_eq "$(jq_list "$T/list.json" /vm1.img '"\(.created_unix_s) \(.snapshot)"')" "null null" \
	"creation time and snapshot of a volume"
assert_eq "$(jq_list "$T/list.json" /web/.snapshots/nightly/root.img .snapshot)" nightly \
	"snapshot of a directory snapshot's file"
# the same from the store directory, and --json before the command
ctl 0 "$T/list2.json" --json list "$STORE"
cmp -s "$T/list.json" "$T/list2.json" || fail "list of the store and of the mount point differ"

ctl 0 "$T/list.txt" list "$MNT"
head -n 1 "$T/list.txt" | grep -qE '^PATH +TYPE +SIZE +REFERENCED +ALLOCATED +EXCLUSIVE +ORIGIN +CREATED$' ||
	fail "list has no header: $(cat "$T/list.txt")"
grep -qE "^/clone\.img +volume +64\.0K +64\.0K +8\.0K +8\.0K +/\.snapshots/vm1\.img@golden/vm1\.img +-$" \
	"$T/list.txt" || fail "list: wrong line for clone.img: $(cat "$T/list.txt")"
grep -qE "^/\.snapshots/vm1\.img@golden/vm1\.img +snapshot +64\.0K +64\.0K +64\.0K +4\.0K +- +$DATE_RE$" \
	"$T/list.txt" || fail "list: wrong line for the golden snapshot: $(cat "$T/list.txt")"
# a path inside the mount lists what is below it
ctl 0 "$T/list-web.txt" list "$MNT/web"
assert_eq "$(tail -n +2 "$T/list-web.txt" | wc -l)" 5 "entries of list MNT/web"
grep -q '^/vm1\.img ' "$T/list-web.txt" && fail "list MNT/web shows /vm1.img: $(cat "$T/list-web.txt")"
grep -q '^/web/\.snapshots/nightly/root\.img ' "$T/list-web.txt" ||
	fail "list MNT/web misses the snapshot of web: $(cat "$T/list-web.txt")"

# -t, -o, -n, -b, --raw
ctl 0 "$T/l.txt" list -t snapshot -n -b --raw -o path,size,exclusive "$MNT"
printf '%s\n' "$GOLDEN $((16 * BS)) $BS" "/web/.snapshots/nightly $((8 * BS + 1048576)) $((8 * BS))" \
	"/web/.snapshots/nightly/data.img 1048576 0" \
	"/web/.snapshots/nightly/root.img $((8 * BS)) $((8 * BS))" >"$T/l.want"
diff -u "$T/l.want" "$T/l.txt" || fail "list -t snapshot -n -b --raw -o path,size,exclusive"
ctl 0 "$T/l.txt" list --type=volume -o PATH "$MNT"
printf '%s\n' PATH /clone.img /vm1.img /web/data.img /web/root.img >"$T/l.want"
diff -u "$T/l.want" "$T/l.txt" || fail "list --type=volume -o PATH"
ctl 0 "$T/l.txt" list -o +NODE,ino "$MNT/vm1.img"
grep -qE "^PATH +TYPE +SIZE +REFERENCED +ALLOCATED +EXCLUSIVE +ORIGIN +CREATED +NODE +INO$" "$T/l.txt" ||
	fail "list -o +NODE,ino: $(cat "$T/l.txt")"
ctl 0 "$T/l.json" list --json -o path,allocated "$MNT/vm1.img"
assert_eq "$(jq -c . "$T/l.json")" "{\"files\":[{\"path\":\"/vm1.img\",\"allocated_bytes\":$((2 * BS))}]}" \
	"list --json -o path,allocated"
ctl 2 "$T/l.txt" list -o PATH,FROB "$MNT"
one_line "$T/l.txt.err" "vsnapctl list: unknown column 'FROB' (-o takes those --help lists); see vsnapctl list --help"
ctl 2 "$T/l.txt" list -t frob "$MNT"
one_line "$T/l.txt.err" "vsnapctl list: -t takes volume, snapshot or all, not 'frob'; see vsnapctl list --help"

# a snapshot's row: its creation time, and as exclusive exactly the blocks
# written to the volume since (no other view shows them)
t0=$(date +%s)
mkdir "$MNT/web/.snapshots/root.img@before"
t1=$(date +%s)
dd if="$T/root.bin" of="$MNT/web/root.img" bs=$BS count=3 seek=2 conv=notrunc status=none
ctl 0 "$T/l.json" list --json -t snapshot "$MNT/web"
SNAP=/web/.snapshots/root.img@before/root.img
created=$(jq_list "$T/l.json" $SNAP .created_unix_s)
[ "$created" -ge "$t0" ] && [ "$created" -le "$t1" ] ||
	fail "created_unix_s of $SNAP is $created, taken between $t0 and $t1"
assert_eq "$(jq_list "$T/l.json" $SNAP '"\(.exclusive_bytes) \(.snapshot)"')" "$((3 * BS)) root.img@before" \
	"exclusive bytes of $SNAP after 3 blocks written to root.img"
rmdir "$MNT/web/.snapshots/root.img@before"

# long and non-ASCII paths: the columns after them stay in line (names
# escaped as \xNN in the C locale, measured by their width in a UTF-8 one),
# --raw keeps one field per column, --json gives the name back as it is
LONG=$(printf 'a%.0s' {1..150})
mkdir "$MNT/$LONG"
truncate -s 1M "$MNT/$LONG/dïsk ü.img"
# aligned FILE: the TYPE column starts at the same character on every line
aligned() {
	local l p=-1 s
	while IFS= read -r l; do
		if [ $p -lt 0 ]; then s=${l%%TYPE*}; p=${#s}; continue; fi
		case "${l:$p}" in volume* | snapshot* | dir-snapshot*) ;; *) return 1 ;; esac
	done <"$1"
}
ctl 0 "$T/l.txt" list "$MNT"
grep -qF "/$LONG/d\xc3\xafsk \xc3\xbc.img" "$T/l.txt" || fail "list in the C locale: $(cat "$T/l.txt")"
aligned "$T/l.txt" || fail "list in the C locale is out of line: $(cat "$T/l.txt")"
if locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then
	LC_ALL=C.UTF-8 ctl 0 "$T/l.txt" list "$MNT"
	grep -qF "/$LONG/dïsk ü.img" "$T/l.txt" || fail "list in C.UTF-8: $(cat "$T/l.txt")"
	(export LC_ALL=C.UTF-8; aligned "$T/l.txt") || fail "list in C.UTF-8 is out of line: $(cat "$T/l.txt")"
else
	note "no C.UTF-8 locale: list in UTF-8 not checked"
fi
ctl 0 "$T/l.txt" list --raw -n -b -o path,size "$MNT/$LONG"
assert_eq "$(cat "$T/l.txt")" "/$LONG/d\xc3\xafsk\x20\xc3\xbc.img 1048576" "list --raw of a name with a space"
ctl 0 "$T/l.json" list --json "$MNT/$LONG"
assert_eq "$(jq -r '.files[0].path' "$T/l.json")" "/$LONG/dïsk ü.img" "list --json of a non-ASCII name"
rm -r "${MNT:?}/$LONG"

# ---- a clone of a live volume: an unnamed frozen node with two children ----------------
dd if="$T/base.bin" of="$MNT/base.img" bs=$BS conv=fsync status=none
cp "$MNT/base.img" "$MNT/base-copy.img"
cmp "$T/base.bin" "$MNT/base-copy.img" || fail "base-copy.img differs from base.img"
ctl 0 "$T/list.json" list --json "$MNT"
cloned=1
if [ "$(jq_list "$T/list.json" /base-copy.img .allocated_bytes)" != 0 ]; then
	note "cp of a live volume copied its data instead of cloning it: no internal node to show"
	cloned=0
fi

# ---- tree ------------------------------------------------------------------------------
ctl 0 "$T/tree.txt" tree "$MNT"
grep -A2 -xE '/\.snapshots/vm1\.img@golden/vm1\.img  \[snapshot, node [0-9]+, 64\.0K allocated\]' \
	"$T/tree.txt" >"$T/tree.golden" || fail "tree: no root line for the golden snapshot: $(cat "$T/tree.txt")"
grep -qxE '\|-- /vm1\.img  \[volume, node [0-9]+, 8\.0K allocated\]' "$T/tree.golden" ||
	fail "tree: /vm1.img is not the first child of the golden snapshot: $(cat "$T/tree.txt")"
grep -qxE '`-- /clone\.img  \[volume, node [0-9]+, 8\.0K allocated\]' "$T/tree.golden" ||
	fail "tree: /clone.img is not the last child of the golden snapshot: $(cat "$T/tree.txt")"
grep -A1 -xE '/web/\.snapshots/nightly/root\.img  \[snapshot, node [0-9]+, 32\.0K allocated\]' \
	"$T/tree.txt" | grep -qxE '`-- /web/root\.img  \[volume, node [0-9]+, 32\.0K allocated\]' ||
	fail "tree: /web/root.img is not below its snapshot: $(cat "$T/tree.txt")"
if [ $cloned = 1 ]; then
	grep -A2 -xE '\(internal\)  \[node [0-9]+, 16\.0K allocated\]' "$T/tree.txt" >"$T/tree.int" ||
		fail "tree: no internal node for the clone of base.img: $(cat "$T/tree.txt")"
	grep -qE '^(\||`)-- /base\.img  \[volume' "$T/tree.int" &&
		grep -qE '^(\||`)-- /base-copy\.img  \[volume' "$T/tree.int" ||
		fail "tree: base.img and base-copy.img are not below their internal node: $(cat "$T/tree.txt")"
fi
ctl 0 "$T/tree.json" tree --json "$STORE"
grep -qF "\"kind\":\"snapshot\",\"names\":[\"$GOLDEN\"],\"allocated_bytes\":$((16 * BS)),\"inherit_blocks\":0,\"children\":[{" \
	"$T/tree.json" || fail "tree --json: no golden snapshot with children: $(cat "$T/tree.json")"
grep -qF '"names":["/clone.img"]' "$T/tree.json" || fail "tree --json misses clone.img"
[ $cloned = 0 ] || grep -qF '"kind":"internal","names":[]' "$T/tree.json" ||
	fail "tree --json has no internal node: $(cat "$T/tree.json")"

# ---- check, mounted and not ---------------------------------------------------------------
SDIR=$(realpath "$STORE")
summary_re="^$SDIR: [0-9]+ block\(s\) in [0-9]+ chunk file\(s\), [0-9]+ inode\(s\): "
ctl 0 "$T/check.txt" check "$MNT"
grep -qE "${summary_re}clean$" "$T/check.txt" || fail "check of the mount: $(cat "$T/check.txt")"
[ -s "$T/check.txt.err" ] && fail "check wrote to stderr (not a TTY): $(cat "$T/check.txt.err")"
# a mounted store is seen as in use (the daemon flock()s the store
# directory), so check runs twice and reports only what both runs find
ctl 0 "$T/check.json" check --json "$MNT"
grep -qF '"in_use":true,' "$T/check.json" || fail "check --json of the mount: not in use: $(cat "$T/check.json")"
ctl 0 "$T/scrub.txt" scrub "$MNT"
vs_umount "$MNT"
ctl 0 "$T/check.txt" check "$STORE"
grep -qE "${summary_re}clean$" "$T/check.txt" || fail "check of the store: $(cat "$T/check.txt")"
ctl 0 "$T/check.json" check --json "$STORE"
grep -qF '"in_use":false,"clean":true,"problems":[]' "$T/check.json" || fail "check --json: $(cat "$T/check.json")"

# a second mount writes into a new chunk file: rows of several chunks
vs_mount "$STORE" "$MNT"
head -c $((24 * BS)) /dev/urandom >"$T/scrub.bin"
dd if="$T/scrub.bin" of="$MNT/scrub.img" bs=$BS conv=fsync status=none
VM1_BLOCKS=$(stat -c %b "$MNT/vm1.img")
[ "$VM1_BLOCKS" -gt 0 ] || fail "st_blocks of vm1.img is $VM1_BLOCKS"
vs_umount "$MNT"
nchunks=$(ls "$STORE"/chunks/*.chunk | wc -l)
[ "$nchunks" -ge 2 ] || fail "expected 2 chunk files after a second mount, found $nchunks"
ctl 0 "$T/check.txt" check "$STORE"
grep -qE "^$SDIR: [0-9]+ block\(s\) in $nchunks chunk file\(s\), 8 inode\(s\): clean$" "$T/check.txt" ||
	fail "check after the second mount: $(cat "$T/check.txt")"
# bounded memory: a few rows per pass give the same answer in several scans
VSNAPCTL_ROWS_PER_PASS=16 ctl 0 "$T/check16.txt" check "$STORE"
cmp -s "$T/check.txt" "$T/check16.txt" || fail "check with 16 rows per pass: $(cat "$T/check16.txt")"

# progress: bytes, rate and ETA, redrawn on a TTY; nothing in a pipe (above);
# --progress=plain: lines (one every few seconds, the first at once) and a
# last one with the bytes and time taken
RATE_RE='[0-9.]+[KMGTPE]?/[0-9.]+[KMGTPE]? [0-9.]+[KMGTPE]?/s ETA [0-9]+:[0-9]{2}'
if script -qec "true" /dev/null >/dev/null 2>&1; then
	script -qec "$VSNAPCTL check $STORE" /dev/null >"$T/tty.out" 2>&1 ||
		fail "check on a TTY failed: $(cat "$T/tty.out")"
	grep -qE $'\rcheck +[0-9]+% '"$RATE_RE" "$T/tty.out" && grep -qE "check 100% " "$T/tty.out" ||
		fail "no progress line on a TTY: $(cat -A "$T/tty.out" | head -c 600)"
else
	note "script(1) cannot make a TTY here: progress on a TTY not checked"
fi
blocks=$(sed -n 's/.*: \([0-9]*\) block(s) in .*/\1/p' "$T/check.txt")
done_re="^(check|scrub): done, $(awk -v b=$((blocks * BS)) 'BEGIN { u = -1; while (b >= 1024 && u < 5) { b /= 1024; u++ } if (u < 0) print b; else printf "%.1f%s\n", b, substr("KMGTPE", u + 1, 1) }') in [0-9]+:[0-9]{2}, [0-9.]+[KMGTPE]?/s$"
for c in check scrub; do
	ctl 0 "$T/p.txt" $c --progress=plain "$STORE"
	grep -qE "^$c: [0-9]+% $RATE_RE$" "$T/p.txt.err" && grep -qE "$done_re" "$T/p.txt.err" ||
		fail "$c --progress=plain: $(cat -A "$T/p.txt.err" | head -c 600)"
	grep -q $'\r' "$T/p.txt.err" && fail "$c --progress=plain redraws: $(cat -A "$T/p.txt.err")"
	grep -vqE "^$c: " "$T/p.txt.err" && fail "$c --progress=plain: other lines: $(cat "$T/p.txt.err")"
	ctl 0 "$T/p.txt" $c --progress=none "$STORE"
	[ -s "$T/p.txt.err" ] && fail "$c --progress=none wrote to stderr: $(cat "$T/p.txt.err")"
done
ctl 2 "$T/p.txt" scrub --progress=sometimes "$STORE"
one_line "$T/p.txt.err" "vsnapctl scrub: --progress takes auto, plain or none, not 'sometimes'; see vsnapctl scrub --help"

# ---- a truncated chunk file, a missing one ---------------------------------------------------
first=$(ls "$STORE"/chunks/*.chunk | head -n 1)
second=$(ls "$STORE"/chunks/*.chunk | sed -n 2p)
damaged_copy short
truncate -s $(($(chunk_data_off "$first") + 2 * BS)) "$T/short/chunks/$(basename "$first")"
ctl 1 "$T/c.txt" check "$T/short"
grep -qE "^problem: chunks/$(basename "$first"): [0-9]+ block\(s\) point past its end" "$T/c.txt" ||
	fail "check does not name the truncated chunk file: $(cat "$T/c.txt")"
grep -qE "PROBLEMS FOUND$" "$T/c.txt" || fail "check summary: $(cat "$T/c.txt")"
# a slot table entry naming another block (its lblock's low byte, at 8 in
# the entry of slot 5): check names it without reading data, scrub too
damaged_copy entry
printf '\356' | dd of="$T/entry/chunks/$(basename "$second")" bs=1 seek=$((4096 + 16 * 5 + 8)) \
	conv=notrunc status=none
ctl 1 "$T/c.txt" check "$T/entry"
grep -qE "^problem: chunks/$(basename "$second"): 1 block\(s\) whose slot entry does not match the index \(first: slot 5, /scrub\.img offset [0-9]+: slot holds block 238, expected [0-9]+\)$" \
	"$T/c.txt" || fail "check does not name the damaged slot entry: $(cat "$T/c.txt")"
ctl 1 "$T/s.txt" scrub "$T/entry"
grep -qE "^damaged: /scrub\.img offset [0-9]+: chunks/$(basename "$second") slot 5: slot holds block 238, expected [0-9]+$" \
	"$T/s.txt" || fail "scrub does not name the damaged slot entry: $(cat "$T/s.txt")"
damaged_copy gone
rm "$T/gone/chunks/$(basename "$second")"
ctl 1 "$T/c.txt" check "$T/gone"
grep -qE "^problem: chunks/$(basename "$second"): file missing; 24 block\(s\) point into it \(first: /scrub\.img offset 0\)$" \
	"$T/c.txt" || fail "check does not name the missing chunk file: $(cat "$T/c.txt")"
ctl 1 "$T/c.json" check --json "$T/gone"
grep -qF '"clean":false' "$T/c.json" || fail "check --json of a broken store: $(cat "$T/c.json")"
ctl 1 "$T/s.txt" scrub "$T/gone"
grep -qF "damaged: /scrub.img offset $((23 * BS)): chunks/$(basename "$second") slot " "$T/s.txt" ||
	fail "scrub does not name the blocks of the missing chunk file: $(tail "$T/s.txt")"

# ---- flipped bytes: scrub names the file and the offset ------------------------------------
damaged_copy flip
flip_block "$T/flip" "$T/scrub.bin" 3
flip_block "$T/flip" "$T/vm1.bin" 7
ctl 0 "$T/c.txt" check "$T/flip"                # check reads no data
ctl 1 "$T/s.txt" scrub "$T/flip"
grep -qE "^damaged: /scrub\.img offset $((3 * BS)): chunks/[0-9a-f]{16}\.chunk slot [0-9]+: checksum mismatch$" \
	"$T/s.txt" || fail "scrub does not name /scrub.img offset $((3 * BS)): $(cat "$T/s.txt")"
grep -qE "^damaged: $GOLDEN offset $((7 * BS)): .*checksum mismatch \(also seen by /vm1\.img, /clone\.img\)$" \
	"$T/s.txt" || fail "scrub does not name the snapshot block and who sees it: $(cat "$T/s.txt")"
grep -qE "verified, 2 damaged$" "$T/s.txt" || fail "scrub summary: $(cat "$T/s.txt")"
ctl 1 "$T/s.json" scrub --json "$T/flip"
grep -qF "{\"path\":\"/scrub.img\",\"offset_bytes\":$((3 * BS))," "$T/s.json" ||
	fail "scrub --json does not name /scrub.img: $(cat "$T/s.json")"
grep -qF '"damaged":2}' "$T/s.json" || fail "scrub --json count: $(cat "$T/s.json")"
VSNAPCTL_ROWS_PER_PASS=16 ctl 1 "$T/s16.txt" scrub "$T/flip"
cmp -s "$T/s.txt" "$T/s16.txt" || fail "scrub with 16 rows per pass differs: $(cat "$T/s16.txt")"

# ---- a damaged index (written with sqlite3; blobs compare as blobs) ---------------------------
# broken SQL...: apply SQL to a fresh copy, check must exit 1
broken() {
	damaged_copy idx
	sqlite3 "$T/idx/index.sqlite" "$1" || fail "sqlite3: $1"
	ctl "${3:-1}" "$T/c.txt" check "$T/idx"
	grep -qE "$2" "$T/c.txt" || fail "check after '$1' does not say /$2/: $(cat "$T/c.txt")"
}
node_of() { echo "(SELECT node FROM inode WHERE name = CAST('$1' AS BLOB))"; }
broken "UPDATE node SET parent = 9999 WHERE id = $(node_of clone.img)" \
	'^problem: map node [0-9]+ \(/clone\.img\): its parent 9999 does not exist$'
broken "UPDATE node SET parent = $(node_of vm1.img) WHERE id = (SELECT parent FROM node WHERE id = $(node_of vm1.img))" \
	'^problem: map nodes form a parent loop: '
broken "UPDATE inode SET node = 9999 WHERE name = CAST('vm1.img' AS BLOB)" \
	'^problem: /vm1\.img: names map node 9999, which does not exist$'
broken "UPDATE snapshot SET dir = 9999 WHERE name = CAST('nightly' AS BLOB)" \
	'^problem: snapshot nightly \(id [0-9]+\) belongs to directory inode 9999, which does not exist$'
broken "UPDATE snapshot SET dir = (SELECT ino FROM inode WHERE name = CAST('vm1.img' AS BLOB)) WHERE name = CAST('nightly' AS BLOB)" \
	'^problem: snapshot nightly \(id [0-9]+\) belongs to directory inode [0-9]+, which is not a directory$'
broken "INSERT INTO extent VALUES (9999, 0, 1, 999, 0)" \
	'^problem: 1 block\(s\) belong to map node 9999, which does not exist$'
broken "INSERT INTO node(parent, inherit) VALUES (9999, 0), (0, 0)" \
	'^problem: map node [0-9]+: its parent 9999 does not exist$'
broken "UPDATE node SET nblocks = nblocks + 5 WHERE id = $(node_of vm1.img)" \
	'^problem: map node [0-9]+ \(/vm1\.img\): the index counts [0-9]+ block\(s\), its rows are [0-9]+: its st_blocks is off, its data are not$'
broken "UPDATE refblocks SET nblocks = nblocks + 3 WHERE node = $(node_of vm1.img)" \
	'^problem: map node [0-9]+ \(/vm1\.img\): its referenced-block count is [0-9]+, its chain shows [0-9]+ block\(s\) with data: its st_blocks is off, its data are not$'
# a node not counted yet (an older store): the daemon counts it, no problem
broken "DELETE FROM refblocks WHERE node = $(node_of vm1.img)" 'clean$' 0
# a node nothing names is released by the daemon: a warning, not a problem
broken "INSERT INTO node(parent, inherit) VALUES (0, 0)" \
	'^warning: map node [0-9]+ is named by no file and has no child' 0
grep -qE "clean$" "$T/c.txt" || fail "an unnamed node makes check unclean: $(cat "$T/c.txt")"

# (an index of an older format: t-140-fixture, which upgrades a store made by the format-2 code)

# ---- usage and I/O errors: exit 2, one line ---------------------------------------------
ctl 2 "$T/u.txt" frobnicate "$STORE"
one_line "$T/u.txt.err" "vsnapctl: unknown command 'frobnicate'; see vsnapctl --help"
ctl 2 "$T/u.txt" check --frob "$STORE"
one_line "$T/u.txt.err" "vsnapctl check: unknown option '--frob'; see vsnapctl check --help"
ctl 2 "$T/u.txt" check "$STORE" extra
one_line "$T/u.txt.err" "vsnapctl check: unexpected argument 'extra'; see vsnapctl check --help"
ctl 2 "$T/u.txt" send --from
one_line "$T/u.txt.err" "vsnapctl send: option '--from' needs a value; see vsnapctl send --help"
ctl 2 "$T/u.txt"
one_line "$T/u.txt.err" "vsnapctl: no command given; see vsnapctl --help"
# every command has its --help, listed by vsnapctl --help
ctl 0 "$T/help.txt" --help
for c in list tree check scrub gc diff send receive status iostat metrics; do
	grep -qE "^  $c +[a-z]" "$T/help.txt" || fail "vsnapctl --help does not list $c: $(cat "$T/help.txt")"
	ctl 0 "$T/h.txt" "$c" --help
	grep -q "^usage: vsnapctl $c" "$T/h.txt" || fail "vsnapctl $c --help: $(cat "$T/h.txt")"
	grep -qE '^  -h, --help +this help$' "$T/h.txt" || fail "vsnapctl $c --help: $(cat "$T/h.txt")"
done
ctl 0 "$T/v.txt" --version
grep -qxE 'vsnapctl [0-9]+\.[0-9]+\.[0-9]+' "$T/v.txt" || fail "--version: $(cat "$T/v.txt")"
# errors that name the real problem, in one line
ctl 2 "$T/u.txt" check "$T/no-such-store"
one_line "$T/u.txt.err" "vsnapctl: $T/no-such-store: no such file or directory"
mkdir "$T/notastore"
ctl 2 "$T/u.txt" list "$T/notastore"
one_line "$T/u.txt.err" \
	"vsnapctl: $T/notastore: not a vsnapfs store (no index.sqlite) and not in a vsnapfs mount"
# $T is 0700: another user may not look into it
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ]; then
	rc=0
	setpriv --reuid=65534 --regid=65534 --clear-groups -- "$VSNAPCTL" list "$STORE" \
		>"$T/u.txt" 2>"$T/u.txt.err" || rc=$?
	assert_eq $rc 2 "exit status of list as another user"
	one_line "$T/u.txt.err" "vsnapctl: $STORE: permission denied"
else
	note "not root or no setpriv: permission denied not checked"
fi
ctl 2 "$T/u.txt" gc "$STORE"
grep -qF "vsnapctl: gc: $SDIR is not mounted: garbage collection runs in the daemon" "$T/u.txt.err" &&
	[ "$(wc -l <"$T/u.txt.err")" = 1 ] || fail "gc of an unmounted store: $(cat "$T/u.txt.err")"
pass
