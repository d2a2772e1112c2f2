#!/bin/bash
# Snapshots end to end, every row of the SPEC's "mounted tree" table on a
# real mount with real clients (mkdir, rmdir, mv, cp, dd, ls, perl for single
# system calls):
#
#   - the control directory D/.snapshots: listed, not removable, renamable or
#     writable, and no file or directory of that name can be made;
#   - directory (D/.snapshots/NAME) and volume (D/.snapshots/FILE@NAME)
#     snapshots equal the tree at snapshot time while the tree keeps changing
#     (a model of every file on the host, compared with cmp);
#   - O_DIRECT writers running during the mkdir (tests/tools/snapwriter.c):
#     each snapshot is one instant of the write sequence, and a directory
#     snapshot is one instant across two volumes written in lockstep;
#   - every documented error with its errno;
#   - linked clone, revert, cp -r of a VM directory, rename, rmdir, rm of the
#     origin volume, the full-copy forms (data really written), import with
#     holes and zero blocks, sparse export, a 100 GiB thin volume;
#   - constant cost with 1 GiB allocated: snapshot, clone and revert grow the
#     chunk files by less than 1 MiB (printed);
#   - after a remount everything is still there, identical; vsnapctl check is
#     clean after every phase.
. "$(dirname "$0")/lib.sh"

SW=$TOOLS/snapwriter
[ -x "$SW" ] || fail "$SW not built (make $B/tools/snapwriter)"
[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
command -v perl >/dev/null || skip "perl missing (used for single system calls)"

STORE=$T/store
MNT=$T/mnt
M=$T/model                 # the live tree, as it should be
SM=$T/snapmodel            # one copy of $M per round of snapshots
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
note "seed $SEED (rerun with SEED=$SEED)"
RANDOM=$SEED
MiB=$((1 << 20))
GiB=$((1 << 30))
CONST_MAX=$((MiB + 4096))  # "constant cost": < 1 MiB, plus one new chunk header
BS=4096                    # the block size of a new store

# ---- helpers -------------------------------------------------------------

# rnd N: R = a seeded random number in [0, N) (no subshell: keeps the seed)
rnd() { R=$(((RANDOM << 15 | RANDOM) % $1)); }

ctl_check() {
	with_deadline 120 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 ||
		fail "vsnapctl check $STORE ($1) failed: $(tail -n 20 "$T/check.out")"
	note "vsnapctl check ($1): $(tail -n 1 "$T/check.out")"
}

# Chunk files are append-only and GC only removes whole files, so "bytes
# appended since a mark" is the growth of each file that is still there
# (files GC removed in between do not count against it).
#
# GC compaction appends too: it copies the live blocks of mostly dead chunk
# files to the active one and logs "gc: moved N live block(s)".  Those bytes
# are not the operation's, so cgrowth takes them off (and says so); if the
# operation costs more than LIMIT it waits 3 s for a pass that appended during
# the window but had not logged yet.
# Growth is measured by chunk file sizes, so the mounts below keep no spare
# chunk files (-o spare_chunks=0): a chunk made from a spare is as long as
# the spare from the start, and appends to it do not show.
cmark() {
	find "$STORE/chunks" -maxdepth 1 -name '*.chunk' -printf '%f %s\n' | sort >"$1"
	wc -l <"$(vs_log "$MNT")" >"$1.log"
}
gc_moved() {
	tail -n +$(($(cat "$1.log") + 1)) "$(vs_log "$MNT")" |
		awk -v bs="$BS" '/gc: moved/ { s += $4 } END { printf "%d\n", s * bs }'
}
cgrowth() {          # cgrowth MARK [LIMIT]
	local raw moved
	cmark "$T/cmark.now"
	raw=$(awk 'NR == FNR { b[$1] = $2; next } { s += $2 - ($1 in b ? b[$1] : 0) }
		   END { printf "%d\n", s }' "$1" "$T/cmark.now")
	moved=$(gc_moved "$1")
	if [ -n "${2:-}" ] && [ $((raw - moved)) -ge "$2" ]; then
		sleep 3
		moved=$(gc_moved "$1")
	fi
	[ "$moved" -eq 0 ] || echo "# (GC compaction appended $moved of the $raw bytes meanwhile)" >&2
	echo $((raw - moved))
}

# allocated PATH: the volume's own allocated bytes, from vsnapctl list
allocated() {
	"$VSNAPCTL" list -n -b --raw -o allocated "$MNT/$1"
}

# sc OP ARGS...: one system call through perl; exit 0 if it worked, else its
# strerror text on stderr and exit 1 (for expect_errno).
sc() {
	perl -e '
use strict; use Fcntl;
my ($op, @a) = @ARGV; my $ok; my $fh;
if    ($op eq "open_w")     { $ok = sysopen($fh, $a[0], O_WRONLY) }
elsif ($op eq "open_rw")    { $ok = sysopen($fh, $a[0], O_RDWR) }
elsif ($op eq "open_trunc") { $ok = sysopen($fh, $a[0], O_WRONLY | O_TRUNC) }
elsif ($op eq "open_append"){ $ok = sysopen($fh, $a[0], O_WRONLY | O_APPEND) }
elsif ($op eq "creat")      { $ok = sysopen($fh, $a[0], O_WRONLY | O_CREAT | O_EXCL, 0644) }
elsif ($op eq "truncate")   { $ok = truncate($a[0], $a[1]) }
elsif ($op eq "unlink")     { $ok = unlink($a[0]) }
elsif ($op eq "chmod")      { $ok = chmod(oct($a[1]), $a[0]) }
elsif ($op eq "chown")      { $ok = chown($a[1], $a[2], $a[0]) }
elsif ($op eq "utime")      { $ok = utime(1, 1, $a[0]) }
elsif ($op eq "mkdir")      { $ok = mkdir($a[0], 0755) }
elsif ($op eq "rmdir")      { $ok = rmdir($a[0]) }
elsif ($op eq "rename")     { $ok = rename($a[0], $a[1]) }
elsif ($op eq "link")       { $ok = link($a[0], $a[1]) }
elsif ($op eq "symlink")    { $ok = symlink($a[0], $a[1]) }
elsif ($op eq "stat")       { $ok = stat($a[0]) }
else { die "sc: unknown op $op\n" }
exit 0 if $ok; print STDERR "$op: $!\n"; exit 1;' "$@"
}

# expect_errno_any "TEXT1|TEXT2" CMD...: fails with one of these errors
expect_errno_any() {
	local texts=$1 rc=0
	shift
	"$@" >"$T/expect.out" 2>"$T/expect.err" || rc=$?
	[ $rc -ne 0 ] || fail "'$*' succeeded; expected failure with '$texts'"
	grep -qE -- "$texts" "$T/expect.err" ||
		fail "'$*' failed (rc $rc) but not with '$texts': $(head -c 400 "$T/expect.err")"
}

# lists DIR NAME: ls -a DIR shows NAME
lists() {
	ls -a "$1" >"$T/ls.out" || fail "ls -a $1 failed"
	grep -qxF -- "$2" "$T/ls.out"
}

# extents FILE: "start end" of every data range (SEEK_DATA / SEEK_HOLE)
extents() {
	perl -e '
open(my $fh, "<", $ARGV[0]) or die "$ARGV[0]: $!\n";
my $size = -s $fh; my $off = 0;
while ($off < $size) {
	my $d = sysseek($fh, $off, 3); last unless defined $d;   # SEEK_DATA
	my $h = sysseek($fh, $d, 4);                             # SEEK_HOLE
	die "SEEK_HOLE: $!\n" unless defined $h;
	$d = 0 if $d eq "0 but true"; $h = 0 if $h eq "0 but true";
	print "$d $h\n"; $off = $h;
}' "$1"
}

# put REL OFF LEN SRC SOFF: write LEN bytes of SRC (from SOFF) at OFF of
# REL, in the mount (fsynced: a write the snapshot must contain) and in $M.
put() {
	local rel=$1 off=$2 len=$3 src=$4 soff=$5
	dd if="$src" iflag=skip_bytes,count_bytes skip="$soff" count="$len" bs=1M \
		of="$MNT/$rel" oflag=seek_bytes seek="$off" conv=notrunc,fsync status=none
	dd if="$src" iflag=skip_bytes,count_bytes skip="$soff" count="$len" bs=1M \
		of="$M/$rel" oflag=seek_bytes seek="$off" conv=notrunc status=none
}

POOL=$T/pool               # random bytes the writes take their data from
POOL_SIZE=$((64 * MiB))

# mutate REL: a few seeded random writes to a volume and its model: whole
# blocks, unaligned byte ranges, zero blocks over data, growing past the end
mutate() {
	local rel=$1 i size off len
	for ((i = 0; i < 6; i++)); do
		size=$(stat -c %s "$M/$rel")
		[ "$size" -ge 8192 ] || size=8192
		rnd $POOL_SIZE
		local soff=$((R / 4096 * 4096))
		rnd 10
		case $R in
		0 | 1 | 2 | 3)     # whole 4 KiB blocks
			rnd $((size / 4096)); off=$((R * 4096))
			rnd 16; len=$(((R + 1) * 4096)) ;;
		4 | 5 | 6)         # unaligned bytes
			rnd "$size"; off=$R
			rnd 20000; len=$((R + 1)) ;;
		7 | 8)             # zero blocks over data
			rnd $((size / 4096)); off=$((R * 4096))
			rnd 8; len=$(((R + 1) * 4096))
			put "$rel" $off $len /dev/zero 0
			continue ;;
		9)                 # grow past the end, unaligned
			rnd 100000; off=$((size + R))
			rnd 9000; len=$((R + 1)) ;;
		esac
		[ $((soff + len)) -le $POOL_SIZE ] || soff=0
		put "$rel" $off $len "$POOL" $soff
	done
}

# tree listing without .snapshots: type, path, and for files size and mode
tree_list() {
	(cd "$1" && find . -name .snapshots -prune -o \
		\( -type f -printf 'f %p %s %m\n' \) -o \( -type d -printf 'd %p\n' \) -o \
		-printf '? %p\n') | sort
}

# tree_eq DIR MODEL WHAT: same entries, same bytes
tree_eq() {
	local dir=$1 model=$2 what=$3 f
	tree_list "$dir" >"$T/tree.got" || fail "$what: cannot list $dir"
	tree_list "$model" >"$T/tree.want"
	if ! diff "$T/tree.want" "$T/tree.got" >"$T/tree.diff"; then
		head -n 30 "$T/tree.diff"
		fail "$what: $dir differs from its model (entries, sizes or modes, see above)"
	fi
	while read -r f; do
		cmp -s "$dir/$f" "$model/$f" || fail "$what: $dir/$f differs from its model"
	done < <(cd "$model" && find . -type f | sort)
}

# What must be there at the end, re-checked after the remount:
declare -A FILES=()        # mount path -> model file (same bytes)
declare -A TREES=()        # mount dir  -> model dir  (tree_eq)
declare -A SNAPS=()        # D/.snapshots/NAME -> 1, every snapshot that exists
declare -A SWCHK=()        # "LOG SNAP" -> image files, for snapwriter verify
SWCHK_KEYS=()

snap_make() {              # snap_make REL: mkdir $MNT/REL (REL = D/.snapshots/NAME)
	mkdir "$MNT/$1" || fail "mkdir $1 failed"
	SNAPS[$1]=1
}

verify_swchk() {
	local k
	for k in "${SWCHK_KEYS[@]}"; do
		# shellcheck disable=SC2086
		"$SW" verify $k ${SWCHK[$k]} >"$T/sw.out" 2>&1 ||
			{ cat "$T/sw.out" | head -n 30; fail "$1: snapwriter verify $k failed"; }
	done
}

# every .snapshots directory lists exactly the snapshots we made
verify_listings() {
	local dirs d s want got
	dirs=$(for s in "${!SNAPS[@]}"; do s=/$s; echo "${s%/.snapshots/*}/"; done | sort -u)
	for d in $dirs; do
		want=$(for s in "${!SNAPS[@]}"; do
			s=/$s
			if [ "${s%/.snapshots/*}/" = "$d" ]; then echo "${s##*/}"; fi
		done | sort)
		got=$(ls -A "$MNT/$d/.snapshots" | sort) || fail "$1: ls $d/.snapshots failed"
		[ "$got" = "$want" ] ||
			fail "$1: $d/.snapshots lists '$(echo $got)', expected '$(echo $want)'"
	done
}

verify_all() {
	local p n=0
	for p in "${!FILES[@]}"; do
		cmp -s "$MNT/$p" "${FILES[$p]}" || fail "$1: $p differs from its model ${FILES[$p]#$T/}"
		n=$((n + 1))
	done
	for p in "${!TREES[@]}"; do
		tree_eq "$MNT/$p" "${TREES[$p]}" "$1"
		n=$((n + 1))
	done
	verify_listings "$1"
	verify_swchk "$1"
	note "$1 (at ${SECONDS}s): $n files and trees, ${#SNAPS[@]} snapshots and ${#SWCHK_KEYS[@]} O_DIRECT snapshot images verified"
}

DEFERRED=()                # failures that do not stop the rest of the test
defer_fail() {
	echo "# FAILED (reported at the end): $*"
	DEFERRED+=("$*")
}

# ==== 0. a fresh store =======================================================
head -c $POOL_SIZE /dev/urandom >"$POOL"
vs_mount "$STORE" "$MNT" -o allow_other,spare_chunks=0   # allow_other: the EACCES checks run as nobody
mkdir -p "$M"

# ==== 1. the control directory =============================================
note "phase 1 (at ${SECONDS}s): the control directory"
mkdir "$MNT/web" "$MNT/web/sub"
lists "$MNT" .snapshots || fail "ls -a of the root does not list .snapshots"
lists "$MNT/web/sub" .snapshots || fail "ls -a web/sub does not list .snapshots"
[ -d "$MNT/.snapshots" ] && [ -d "$MNT/web/.snapshots" ] || fail ".snapshots is not a directory"
[ -z "$(ls -A "$MNT/web/.snapshots")" ] || fail "a new directory has snapshots"
for d in "" web/ web/sub/; do
	# It cannot be removed; docs/snapshots.md: rmdir of an EMPTY .snapshots
	# succeeds and leaves it in place (so that rm -r works), of one with
	# snapshots fails with ENOTEMPTY (checked below, once there are some).
	rmdir "$MNT/$d.snapshots" 2>"$T/rmdir.err" ||
		fail "rmdir of the empty $d.snapshots: $(cat "$T/rmdir.err") (docs/snapshots.md: succeeds, stays)"
	[ -d "$MNT/$d.snapshots" ] && lists "$MNT/$d" .snapshots || fail "rmdir removed $d.snapshots"
	expect_errno "Operation not permitted" mv "$MNT/$d.snapshots" "$MNT/${d}renamed"
	expect_errno "Operation not permitted" mv -T "$MNT/$d.snapshots" "$MNT/${d}renamed"
	expect_errno "Operation not permitted" touch "$MNT/$d.snapshots/file"
	expect_errno "Operation not permitted" sc creat "$MNT/$d.snapshots/file"
	expect_errno "Operation not permitted" chmod 700 "$MNT/$d.snapshots"
	expect_errno "Operation not permitted" sc utime "$MNT/$d.snapshots"
	expect_errno "File exists" mkdir "$MNT/$d.snapshots"
	expect_errno "File exists" sc creat "$MNT/$d.snapshots"
	expect_errno "File exists" sc symlink target "$MNT/$d.snapshots"
done
echo hello >"$MNT/web/f.txt"
expect_errno "File exists" sc link "$MNT/web/f.txt" "$MNT/web/sub/.snapshots"
expect_errno "Operation not permitted" mv "$MNT/web/f.txt" "$MNT/web/.snapshots/"
# renaming a volume onto ".snapshots" must fail and lose nothing
if sc rename "$MNT/web/f.txt" "$MNT/web/.snapshots" 2>/dev/null; then
	fail "rename of a file onto web/.snapshots succeeded"
fi
[ "$(cat "$MNT/web/f.txt")" = hello ] || fail "web/f.txt changed by a failed rename onto .snapshots"
rm "$MNT/web/f.txt"
rmdir "$MNT/web/sub"
# rm -r of a directory without snapshots just works; with snapshots it
# stops, and rmdir of its .snapshots says ENOTEMPTY
mkdir -p "$MNT/tmpvm/a/b"
echo x >"$MNT/tmpvm/a/b/disk.img"
rm -r "$MNT/tmpvm" || fail "rm -r of a directory tree without snapshots failed"
mkdir -p "$MNT/keep/a"
echo kept >"$MNT/keep/a/disk.img"
mkdir "$MNT/keep/.snapshots/s"
expect_errno "Directory not empty" rmdir "$MNT/keep/.snapshots"
if rm -r "$MNT/keep" 2>/dev/null; then fail "rm -r of a directory with snapshots succeeded"; fi
[ "$(cat "$MNT/keep/.snapshots/s/a/disk.img")" = kept ] || fail "rm -r damaged keep/.snapshots/s"
rmdir "$MNT/keep/.snapshots/s"
rm -r "$MNT/keep" || fail "rm -r keep/ after its snapshot was deleted failed"
ctl_check "phase 1"

# ==== 2. snapshots equal the tree at snapshot time =========================
note "phase 2 (at ${SECONDS}s): rounds of writes and snapshots against a model"
# vm1.img at the root; web/ is a VM directory with disks, its XML, an empty
# volume, an empty directory and NVRAM two levels down
mkdir -p "$M/web/sub/deep" "$M/web/emptydir" "$MNT/web/sub/deep" "$MNT/web/emptydir"
for f in vm1.img:16 web/root.img:16 web/data.img:8; do
	rel=${f%%:*}
	rnd $((POOL_SIZE - 16 * MiB))
	: >"$MNT/$rel"
	: >"$M/$rel"
	put "$rel" 0 $((${f##*:} * MiB)) "$POOL" $((R / 4096 * 4096))
done
truncate -s 40M "$MNT/web/data.img" "$M/web/data.img"      # thin tail
printf '<domain type="kvm"><name>web</name></domain>\n' | tee "$MNT/web/web.xml" >"$M/web/web.xml"
put web/sub/deep/nvram.bin 0 131072 "$POOL" 4096
: >"$MNT/web/empty.img"
: >"$M/web/empty.img"
chmod 600 "$MNT/web/data.img" "$M/web/data.img"
chmod 640 "$MNT/web/web.xml" "$M/web/web.xml"
tree_eq "$MNT" "$M" "initial tree"

ROUNDS=4
for ((r = 1; r <= ROUNDS; r++)); do
	for rel in vm1.img web/root.img web/data.img web/sub/deep/nvram.bin; do
		if [ -e "$M/$rel" ]; then mutate "$rel"; fi
	done
	printf '<!-- round %d -->\n' $r | tee -a "$MNT/web/web.xml" >>"$M/web/web.xml"
	case $r in
	2)  # a new volume, and a volume that shrinks and grows back
		: >"$MNT/web/new-r2.img"
		: >"$M/web/new-r2.img"
		put web/new-r2.img 12345 70000 "$POOL" 0
		truncate -s 5000000 "$MNT/vm1.img" "$M/vm1.img"
		truncate -s 9000000 "$MNT/vm1.img" "$M/vm1.img" ;;
	3)  # a file goes away, a mode changes
		rm "$MNT/web/sub/deep/nvram.bin" "$M/web/sub/deep/nvram.bin"
		chmod 604 "$MNT/web/new-r2.img" "$M/web/new-r2.img" ;;
	4)  # a live volume is renamed
		mv "$MNT/web/new-r2.img" "$MNT/web/renamed.img"
		mv "$M/web/new-r2.img" "$M/web/renamed.img" ;;
	esac
	tree_eq "$MNT" "$M" "live tree before the snapshots of round $r"
	snap_make "web/.snapshots/r$r"
	snap_make ".snapshots/root-r$r"
	snap_make ".snapshots/vm1.img@r$r"
	snap_make "web/.snapshots/root.img@r$r"
	mkdir -p "$SM"
	cp -a "$M" "$SM/r$r"
	TREES[web/.snapshots/r$r]=$SM/r$r/web
	TREES[.snapshots/root-r$r]=$SM/r$r
	FILES[.snapshots/vm1.img@r$r/vm1.img]=$SM/r$r/vm1.img
	FILES[web/.snapshots/root.img@r$r/root.img]=$SM/r$r/web/root.img
	# the volume snapshot shows the one file, nothing else
	[ "$(ls -A "$MNT/.snapshots/vm1.img@r$r")" = vm1.img ] ||
		fail "vm1.img@r$r lists '$(ls -A "$MNT/.snapshots/vm1.img@r$r")', expected vm1.img"
	# right away, before the next writes: the snapshot is the tree
	tree_eq "$MNT/web/.snapshots/r$r" "$SM/r$r/web" "snapshot web/.snapshots/r$r just taken"
done
# and after the tree moved on, every round's snapshots are still their round
for p in "${!TREES[@]}"; do tree_eq "$MNT/$p" "${TREES[$p]}" "after $ROUNDS rounds"; done
for p in "${!FILES[@]}"; do cmp "$MNT/$p" "${FILES[$p]}" || fail "after $ROUNDS rounds: $p differs"; done
tree_eq "$MNT" "$M" "live tree after $ROUNDS rounds"
# views: no .snapshots inside, read-only root, files keep their modes and
# look dense (st_blocks * 512 >= size) so that cp clones them
[ -z "$(find "$MNT/.snapshots/root-r1" -name .snapshots)" ] || fail "a snapshot view has a .snapshots"
lists "$MNT/web/.snapshots/r1" .snapshots && fail "ls -a of a snapshot lists .snapshots"
expect_errno "No such file or directory" sc stat "$MNT/web/.snapshots/r1/.snapshots"
expect_errno_any "Read-only file system|No such file or directory" \
	mkdir "$MNT/web/.snapshots/r1/.snapshots"
for f in web/.snapshots/r4/data.img web/.snapshots/r4/web.xml .snapshots/vm1.img@r2/vm1.img \
	web/.snapshots/r1/empty.img; do
	read -r sz blk md < <(stat -c '%s %b %a' "$MNT/$f")
	[ $((blk * 512)) -ge "$sz" ] && [ $((blk * 512)) -lt $((sz + 512)) ] ||
		fail "$f: st_blocks $blk for size $sz (a snapshot file reports size/512)"
done
assert_eq "$(stat -c %a "$MNT/web/.snapshots/r1/data.img")" 600 "mode of data.img in a snapshot"
assert_eq "$(stat -c %a "$MNT/web/.snapshots/r4/web.xml")" 640 "mode of web.xml in a snapshot"
# O_DIRECT reads of a snapshot
dd if="$MNT/web/.snapshots/r2/root.img" iflag=direct bs=64k status=none | cmp - "$SM/r2/web/root.img" ||
	fail "O_DIRECT read of web/.snapshots/r2/root.img differs"
ctl_check "phase 2"

# ==== 3. names and errors ===================================================
note "phase 3 (at ${SECONDS}s): names and errors"
S=$MNT/web/.snapshots
for n in 'bad name' '.hidden' '..x' 'semi;colon' 'star*' 'tab	x' 'ä-umlaut' 'q?' 'eq=1' \
	'tilde~' '@' '@x' 'root.img@' 'root.img@.x' 'root.img@bad name' 'a#b' '%s' $'nl\nx'; do
	expect_errno "Invalid argument" mkdir "$S/$n"
done
expect_errno "Invalid argument" mkdir "$S/$(printf 'ctl\001x')"
expect_errno "Invalid argument" mkdir "$S/$(printf 'bad\377utf8')"
expect_errno "File exists" mkdir "$S/r1"
expect_errno "File exists" mkdir "$S/root.img@r1"
expect_errno "No such file or directory" mkdir "$S/missing.img@x"
expect_errno "No such file or directory" mkdir "$S/vm1.img@x"            # vm1.img is not in web/
expect_errno "No such file or directory" mkdir "$S/nodir@x"
expect_errno "Invalid argument" mkdir "$S/sub@x"                       # a directory is not a volume
long=$(printf 'n%.0s' $(seq 256))
expect_errno "File name too long" mkdir "$S/$long"
expect_errno "File name too long" mkdir "$S/root.img@${long:0:250}"
# the longest names, every allowed character, '@' in the file's own name
put "web/x@y.img" 0 8192 "$POOL" 8192
cp -a "$M/web" "$T/web.p4"
snap_make "web/.snapshots/${long:0:255}"
snap_make "web/.snapshots/root.img@${long:0:246}"                    # 255 bytes in all
snap_make "web/.snapshots/AZaz09._-+:,x"
snap_make "web/.snapshots/-leading-dash"
snap_make "web/.snapshots/x@y.img@at"
[ "$(ls -A "$S/x@y.img@at")" = "x@y.img" ] || fail "x@y.img@at does not show x@y.img"
FILES[web/.snapshots/x@y.img@at/x@y.img]=$T/web.p4/x@y.img
FILES[web/.snapshots/root.img@${long:0:246}/root.img]=$T/web.p4/root.img
TREES[web/.snapshots/AZaz09._-+:,x]=$T/web.p4
TREES[web/.snapshots/${long:0:255}]=$T/web.p4
TREES[web/.snapshots/-leading-dash]=$T/web.p4

# nothing changes a snapshot: EROFS
V=$S/r3
for f in "$V/root.img" "$V/web.xml" "$V/empty.img" "$S/r1/sub/deep/nvram.bin"; do
	expect_errno "Read-only file system" sc open_w "$f"
	expect_errno "Read-only file system" sc open_rw "$f"
	expect_errno "Read-only file system" sc open_trunc "$f"
	expect_errno "Read-only file system" sc open_append "$f"
	expect_errno "Read-only file system" sc truncate "$f" 0
	expect_errno "Read-only file system" sc truncate "$f" 999999
	expect_errno "Read-only file system" sc unlink "$f"
	expect_errno "Read-only file system" sc chmod "$f" 0777
	expect_errno "Read-only file system" sc chown "$f" 1 1
	expect_errno "Read-only file system" sc utime "$f"
	expect_errno "Read-only file system" sc rename "$f" "$f.moved"
done
expect_errno "Read-only file system" dd if=/dev/zero of="$V/root.img" bs=4k count=1 conv=notrunc status=none
expect_errno "Read-only file system" truncate -s 0 "$V/root.img"
expect_errno "Read-only file system" rm -f "$V/root.img"
expect_errno "Read-only file system" chmod 777 "$V/root.img"
expect_errno "Read-only file system" mkdir "$V/newdir"
expect_errno "Read-only file system" mkdir "$V/sub/newdir"
expect_errno "Read-only file system" sc creat "$V/new.img"
expect_errno "Read-only file system" sc creat "$V/sub/new.img"
expect_errno "Read-only file system" sc rmdir "$V/emptydir"
expect_errno "Read-only file system" sc rename "$V/sub" "$V/sub2"
expect_errno "Read-only file system" sc rename "$V/root.img" "$MNT/web/stolen.img"
expect_errno "Read-only file system" sc rename "$MNT/web/web.xml" "$V/planted.xml"
expect_errno "Read-only file system" sc chmod "$V" 0777
expect_errno "Read-only file system" sc open_w "$MNT/.snapshots/vm1.img@r1/vm1.img"
expect_errno "Read-only file system" sc unlink "$MNT/.snapshots/vm1.img@r1/vm1.img"
expect_errno "Read-only file system" sc creat "$MNT/.snapshots/vm1.img@r1/other.img"
expect_errno "Read-only file system" sc open_w "$MNT/.snapshots/root-r2/web/root.img"
expect_errno "Read-only file system" sc rmdir "$MNT/.snapshots/root-r2/web/emptydir"

# rmdir of a snapshot with an open file: EBUSY, and it stays intact
exec 3<"$S/r2/web.xml"
expect_errno "Device or resource busy" rmdir "$S/r2"
cmp - "$SM/r2/web/web.xml" <&3 || fail "the open file of web/.snapshots/r2 reads wrong"
tree_eq "$S/r2" "$SM/r2/web" "web/.snapshots/r2 after a refused rmdir"
exec 4<"$MNT/.snapshots/vm1.img@r2/vm1.img"
expect_errno "Device or resource busy" rmdir "$MNT/.snapshots/vm1.img@r2"
exec 3<&- 4<&-
# the release of a closed file reaches the daemon asynchronously: allow it a moment
rmdir_retry() {
	local i
	for ((i = 0; i < 50; i++)); do
		rmdir "$1" 2>"$T/rmdir.err" && return 0
		grep -q "Device or resource busy" "$T/rmdir.err" || fail "rmdir $1: $(cat "$T/rmdir.err")"
		sleep 0.1
	done
	fail "rmdir $1: still busy 5 s after its files were closed"
}
rmdir_retry "$S/r2"
rmdir_retry "$MNT/.snapshots/vm1.img@r2"
unset 'SNAPS[web/.snapshots/r2]' 'SNAPS[.snapshots/vm1.img@r2]' 'TREES[web/.snapshots/r2]' \
	'FILES[.snapshots/vm1.img@r2/vm1.img]'
expect_errno "No such file or directory" sc stat "$S/r2"
expect_errno "No such file or directory" rmdir "$S/r2"
lists "$S" r2 && fail "web/.snapshots still lists r2 after rmdir"

# moving snapshots in or out of .snapshots: EPERM; renames inside it
expect_errno "Operation not permitted" mv "$S/r1" "$MNT/web/r1-out"
expect_errno "Operation not permitted" mv "$S/r1" "$MNT/.snapshots/r1"
expect_errno "Operation not permitted" sc rename "$MNT/web/emptydir" "$S/in"
expect_errno "Operation not permitted" sc rename "$MNT/web/root.img" "$S/root.img@in"
expect_errno "Invalid argument" sc rename "$S/r1" "$S/bad name"
expect_errno "Invalid argument" sc rename "$S/r1" "$S/.dot"
# a rename never replaces a snapshot: EEXIST; plain mv onto an existing one
# tries to move A into B: EROFS (docs/snapshots.md)
expect_errno "File exists" sc rename "$S/r1" "$S/r3"
expect_errno "File exists" mv -T "$S/r1" "$S/r3"
expect_errno "Read-only file system" mv "$S/r1" "$S/r3"
tree_eq "$S/r1" "$SM/r1/web" "web/.snapshots/r1 after refused renames"
tree_eq "$S/r3" "$SM/r3/web" "web/.snapshots/r3 after refused renames"
mv "$S/r1" "$S/r1-renamed"
unset 'SNAPS[web/.snapshots/r1]'
SNAPS[web/.snapshots/r1-renamed]=1
TREES[web/.snapshots/r1-renamed]=${TREES[web/.snapshots/r1]}
unset 'TREES[web/.snapshots/r1]'
expect_errno "No such file or directory" sc stat "$S/r1"
tree_eq "$S/r1-renamed" "$SM/r1/web" "web/.snapshots/r1 renamed to r1-renamed"
mv "$S/root.img@r1" "$S/root.img@first"
unset 'SNAPS[web/.snapshots/root.img@r1]' 'FILES[web/.snapshots/root.img@r1/root.img]'
SNAPS[web/.snapshots/root.img@first]=1
FILES[web/.snapshots/root.img@first/root.img]=$SM/r1/web/root.img
cmp "$S/root.img@first/root.img" "$SM/r1/web/root.img" || fail "root.img@first differs after the rename"
# a volume snapshot renames only to FILE@OTHER, a directory snapshot never
# to FILE@X: EINVAL (docs/snapshots.md)
for bad in "other" "data.img@x" "x@y.img@z"; do
	expect_errno "Invalid argument" sc rename "$S/root.img@first" "$S/$bad"
done
expect_errno "Invalid argument" sc rename "$S/r3" "$S/root.img@r3x"
expect_errno "to a subdirectory of itself" mv -T "$S/r3" "$S/root.img@r3x"   # mv words EINVAL so
[ -d "$S/root.img@first" ] && [ -d "$S/r3" ] && ! [ -e "$S/other" ] && ! [ -e "$S/root.img@r3x" ] ||
	fail "a refused rename of a snapshot changed something"
# only the owner of D (and root) manages D's snapshots: EACCES for others
if command -v setpriv >/dev/null; then
	nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
	chmod 755 "$T"                      # let nobody reach the mount point
	expect_errno "Permission denied" nobody mkdir "$S/by-nobody"
	expect_errno "Permission denied" nobody rmdir "$S/r3"
	expect_errno "Permission denied" nobody mv -T "$S/r3" "$S/r3-by-nobody"
	[ -d "$S/r3" ] && ! [ -e "$S/by-nobody" ] && ! [ -e "$S/r3-by-nobody" ] ||
		fail "a refused snapshot operation by another user changed something"
	mkdir "$MNT/nob"
	echo mine >"$MNT/nob/n.img"
	chown 65534:65534 "$MNT/nob"
	nobody mkdir "$MNT/nob/.snapshots/mine" || fail "the owner of nob/ cannot snapshot it"
	nobody mv -T "$MNT/nob/.snapshots/mine" "$MNT/nob/.snapshots/mine2" ||
		fail "the owner of nob/ cannot rename its snapshot"
	[ "$(nobody cat "$MNT/nob/.snapshots/mine2/n.img")" = mine ] || fail "nob/.snapshots/mine2 reads wrong"
	nobody rmdir "$MNT/nob/.snapshots/mine2" || fail "the owner of nob/ cannot delete its snapshot"
	rm -r "$MNT/nob"
	chmod 700 "$T"
else
	note "setpriv missing: the EACCES checks are skipped"
fi
# a directory with snapshots is not empty, even without files
mkdir -p "$MNT/gone/x"
echo data >"$MNT/gone/x/f.img"
snap_make "gone/.snapshots/only"
rm "$MNT/gone/x/f.img"
rmdir "$MNT/gone/x"
expect_errno "Directory not empty" rmdir "$MNT/gone"
[ "$(cat "$MNT/gone/.snapshots/only/x/f.img")" = data ] || fail "gone/.snapshots/only lost its file"
rmdir "$MNT/gone/.snapshots/only"
unset 'SNAPS[gone/.snapshots/only]'
rmdir "$MNT/gone" || fail "rmdir of a directory whose last snapshot was deleted failed"
verify_all "phase 3"
ctl_check "phase 3"

# ==== 4. clones, revert, cp -r, full copies, import, export, thin, rm =====
note "phase 4 (at ${SECONDS}s): clones, revert, cp -r, copies, import/export, rm"
mkdir "$MNT/clones" "$M/clones"
# linked clone: no data written; writable (mode kept), independent
cmark "$T/m0"
cp "$S/r2x" "$MNT/clones/never" 2>/dev/null && fail "cp of a missing snapshot worked"
cp "$S/r3/root.img" "$MNT/clones/root-r3.img"
g=$(cgrowth "$T/m0" $CONST_MAX)
[ "$g" -lt $CONST_MAX ] || fail "linked clone of a 16 MiB snapshot file grew the chunks by $g bytes"
assert_eq "$(allocated clones/root-r3.img)" 0 "vsnapctl list: own allocated bytes of a linked clone"
cmp "$MNT/clones/root-r3.img" "$SM/r3/web/root.img" || fail "clone root-r3.img differs from its snapshot"
assert_eq "$(stat -c %a "$MNT/clones/root-r3.img")" "$(stat -c %a "$SM/r3/web/root.img")" "clone's mode"
cp "$SM/r3/web/root.img" "$M/clones/root-r3.img"
cp "$MNT/.snapshots/vm1.img@r4/vm1.img" "$MNT/clones/vm1-r4.img"
cp "$SM/r4/vm1.img" "$M/clones/vm1-r4.img"
mutate clones/root-r3.img
mutate clones/vm1-r4.img
FILES[clones/root-r3.img]=$M/clones/root-r3.img
FILES[clones/vm1-r4.img]=$M/clones/vm1-r4.img
# a clone of a snapshot of a clone
snap_make "clones/.snapshots/root-r3.img@c1"
cp "$M/clones/root-r3.img" "$T/root-r3.c1"
FILES[clones/.snapshots/root-r3.img@c1/root-r3.img]=$T/root-r3.c1
cp "$MNT/clones/.snapshots/root-r3.img@c1/root-r3.img" "$MNT/clones/cc.img"
cp "$T/root-r3.c1" "$M/clones/cc.img"
mutate clones/cc.img
FILES[clones/cc.img]=$M/clones/cc.img
verify_all "after clones"

# cp -r of a VM directory from a snapshot
cmark "$T/m0"
cp -r "$S/r3" "$MNT/vm2"
g=$(cgrowth "$T/m0" $CONST_MAX)
[ "$g" -lt $CONST_MAX ] || fail "cp -r of web/.snapshots/r3 grew the chunks by $g bytes"
note "cp -r of a VM directory snapshot: chunk growth $g bytes"
assert_eq "$(allocated vm2/root.img)" 0 "vsnapctl list: own allocated bytes of vm2/root.img"
cp -r "$SM/r3/web" "$M/vm2"
chmod 755 "$MNT/vm2" "$M/vm2"         # cp -r gave it the snapshot root's r-x
mutate vm2/root.img
mutate vm2/data.img
echo "<!-- vm2 -->" | tee -a "$MNT/vm2/web.xml" >>"$M/vm2/web.xml"
TREES[vm2]=$M/vm2
tree_eq "$MNT/vm2" "$M/vm2" "the cp -r clone after writes"

# revert: the live volume goes back to the snapshot, at constant data cost;
# read it first so that the kernel holds its old pages
cat "$MNT/web/root.img" >/dev/null
cmark "$T/m0"
cp "$S/r1-renamed/root.img" "$MNT/web/root.img"
g=$(cgrowth "$T/m0" $CONST_MAX)
[ "$g" -lt $CONST_MAX ] || fail "revert of web/root.img grew the chunks by $g bytes"
assert_eq "$(allocated web/root.img)" 0 "vsnapctl list: own allocated bytes of a reverted volume"
cp "$SM/r1/web/root.img" "$M/web/root.img"
cmp "$MNT/web/root.img" "$M/web/root.img" || fail "web/root.img after the revert differs from r1"
mutate web/root.img
tree_eq "$MNT/web" "$M/web" "web/ after the revert and more writes"
verify_all "after revert"

# full copies: --sparse=always and --reflink=never from a snapshot write the data
put fc.img 0 $((32 * MiB)) "$POOL" $((8 * MiB))
snap_make ".snapshots/fc.img@s"
for opt in --sparse=always --reflink=never; do
	cmark "$T/m0"
	cp $opt "$MNT/.snapshots/fc.img@s/fc.img" "$MNT/fc${opt#--}.img"
	g=$(cgrowth "$T/m0" $((33 * MiB)))
	note "cp $opt of a 32 MiB snapshot file: chunk growth $g bytes"
	[ "$g" -ge $((32 * MiB)) ] && [ "$g" -lt $((33 * MiB)) ] ||
		fail "cp $opt from a snapshot: chunk growth $g, expected a full copy of 32 MiB"
	cmp "$MNT/fc${opt#--}.img" "$M/fc.img" || fail "cp $opt copy differs"
	FILES[fc${opt#--}.img]=$M/fc.img
done
FILES[.snapshots/fc.img@s/fc.img]=$M/fc.img
# plain cp of a live sparse volume: a full, independent copy of its data
truncate -s 1G "$MNT/sp.img" "$M/sp.img"
for o in 0 300 700 1000; do put sp.img $((o * MiB)) $((2 * MiB)) "$POOL" $((o * 4096)); done
cmark "$T/m0"
cp "$MNT/sp.img" "$MNT/sp-copy.img"
g=$(cgrowth "$T/m0" $((9 * MiB)))
note "plain cp of a live 1 GiB volume with 8 MiB allocated: chunk growth $g bytes"
[ "$g" -ge $((8 * MiB)) ] && [ "$g" -lt $((9 * MiB)) ] ||
	fail "plain cp of a live sparse volume: chunk growth $g, expected a full copy of its 8 MiB"
cp --sparse=always "$M/sp.img" "$M/sp-copy.img"
put sp.img $((300 * MiB)) 4096 /dev/zero 0
cmp "$MNT/sp-copy.img" "$M/sp-copy.img" || fail "sp-copy.img changed with its source"
FILES[sp.img]=$M/sp.img
FILES[sp-copy.img]=$M/sp-copy.img

# import: holes and all-zero blocks take no space; export keeps it sparse
truncate -s 64M "$T/imp.raw"
dd if=/dev/zero of="$T/imp.raw" bs=1M count=8 seek=4 conv=notrunc status=none   # zeros, allocated (5-12 MiB stay zero)
for o in 1 20 50; do
	dd if="$POOL" of="$T/imp.raw" bs=1M count=4 skip=$o seek=$o conv=notrunc status=none
done
cmark "$T/m0"
cp "$T/imp.raw" "$MNT/imp.img"
g=$(cgrowth "$T/m0" $((13 * MiB)))
note "import of 64 MiB with 12 MiB data, 7 MiB zeros: chunk growth $g bytes"
[ "$g" -ge $((12 * MiB)) ] && [ "$g" -lt $((13 * MiB)) ] ||
	fail "import: chunk growth $g bytes, expected the 12 MiB of data only"
cmp "$MNT/imp.img" "$T/imp.raw" || fail "imported imp.img differs"
FILES[imp.img]=$T/imp.raw
extents "$MNT/imp.img" >"$T/imp.ext"
assert_eq "$(tr '\n' ' ' <"$T/imp.ext")" "$((1 * MiB)) $((5 * MiB)) $((20 * MiB)) $((24 * MiB)) $((50 * MiB)) $((54 * MiB)) " \
	"SEEK_DATA/SEEK_HOLE extents of imp.img"
cp --sparse=always "$MNT/imp.img" "$T/exp.raw"
cmp "$T/exp.raw" "$T/imp.raw" || fail "export of imp.img differs"
used=$(($(stat -c %b "$T/exp.raw") * 512))
[ $used -le $((13 * MiB)) ] || fail "export with --sparse=always uses $used bytes for 12 MiB of data"

# a 100 GiB thin volume: instant, no space; snapshot and clone of it cost
# nothing (the kernel splits that copy_file_range into ~4 GiB requests)
cmark "$T/m0"
truncate -s 100G "$MNT/thin.img"
g=$(cgrowth "$T/m0" $CONST_MAX)
[ "$g" -le 4096 ] || fail "truncate -s 100G grew the chunks by $g bytes"
assert_eq "$(stat -c %s "$MNT/thin.img")" $((100 * GiB)) "size of thin.img"
MARKS="0 $((4 * GiB - 4096)) $((4 * GiB)) $((37 * GiB + 123)) $((64 * GiB - 1000)) $((100 * GiB - 4096))"
i=0
for o in $MARKS; do
	dd if="$POOL" iflag=skip_bytes,count_bytes skip=$((i * 65536)) count=4096 bs=4096 \
		of="$MNT/thin.img" oflag=seek_bytes seek=$o conv=notrunc,fsync status=none
	i=$((i + 1))
done
snap_make ".snapshots/thin.img@m"
cmark "$T/m0"
cp "$MNT/.snapshots/thin.img@m/thin.img" "$MNT/thin-clone.img"
g=$(cgrowth "$T/m0" $CONST_MAX)
note "linked clone of a 100 GiB thin volume: chunk growth $g bytes"
[ "$g" -lt $CONST_MAX ] || fail "clone of thin.img grew the chunks by $g bytes"
assert_eq "$(allocated thin-clone.img)" 0 "vsnapctl list: own allocated bytes of thin-clone.img"
check_thin() {            # check_thin FILE WHAT
	local i=0 o
	assert_eq "$(stat -c %s "$1")" $((100 * GiB)) "$2: size"
	for o in $MARKS; do
		cmp <(dd if="$1" iflag=skip_bytes,count_bytes skip=$o count=4096 bs=4096 status=none) \
			<(dd if="$POOL" iflag=skip_bytes,count_bytes skip=$((i * 65536)) count=4096 bs=4096 status=none) ||
			fail "$2: the marker at $o differs"
		i=$((i + 1))
	done
	for o in $((GiB)) $((50 * GiB)) $((99 * GiB)); do
		cmp -n 65536 <(dd if="$1" iflag=skip_bytes,count_bytes skip=$o count=65536 bs=65536 status=none) \
			/dev/zero || fail "$2: not zeros at $o"
	done
}
check_thin "$MNT/thin-clone.img" "thin-clone.img"
check_thin "$MNT/.snapshots/thin.img@m/thin.img" "thin.img@m"
extents "$MNT/thin.img" >"$T/thin.ext"
extents "$MNT/thin-clone.img" >"$T/thin-clone.ext"
cmp -s "$T/thin.ext" "$T/thin-clone.ext" || fail "thin-clone.img maps other extents than thin.img"
[ "$(wc -l <"$T/thin.ext")" -ge 5 ] && [ "$(wc -l <"$T/thin.ext")" -le 6 ] ||
	fail "thin.img: $(wc -l <"$T/thin.ext") data extents for 6 markers"
dd if=/dev/zero of="$MNT/thin.img" bs=4096 count=1 conv=notrunc,fsync status=none
check_thin "$MNT/thin-clone.img" "thin-clone.img after its origin changed"

# rm of the origin volume: its snapshots and its clones keep working
rm "$MNT/web/root.img" "$M/web/root.img"
expect_errno "No such file or directory" mkdir "$S/root.img@after-rm"
verify_all "after rm web/root.img"
# and deleting snapshots of the removed volume does not hurt the clones
rmdir "$S/root.img@r2" "$S/r3"
unset 'SNAPS[web/.snapshots/root.img@r2]' 'SNAPS[web/.snapshots/r3]' \
	'FILES[web/.snapshots/root.img@r2/root.img]' 'TREES[web/.snapshots/r3]'
verify_all "after rm web/root.img and two of its snapshots"
ctl_check "phase 4"

# ==== 5. O_DIRECT writers during mkdir (late: they leave garbage for GC) ====
note "phase 5 (at ${SECONDS}s): snapshots while O_DIRECT writers run"
truncate -s 16M "$MNT/direct.img"
with_deadline 120 "$SW" run -s "$SEED" -b 4096 -n 30000 -k 8 -S "$MNT/.snapshots/direct.img@w%d" \
	"$T/sw-direct.log" "$MNT/direct.img" >"$T/sw.run" 2>&1 ||
	{ cat "$T/sw.run"; fail "snapwriter run on direct.img failed"; }
grep 'mkdir took' "$T/sw.run" | sed 's/^/# /' | head -n 3
for j in 1 2 3 4 5 6 7 8; do
	SNAPS[.snapshots/direct.img@w$j]=1
	SWCHK["$T/sw-direct.log $j"]="$MNT/.snapshots/direct.img@w$j/direct.img"
	SWCHK_KEYS+=("$T/sw-direct.log $j")
done
SWCHK["$T/sw-direct.log final"]="$MNT/direct.img"
SWCHK_KEYS+=("$T/sw-direct.log final")

mkdir "$MNT/pair"
truncate -s 8M "$MNT/pair/A.img" "$MNT/pair/B.img"
with_deadline 120 "$SW" run -l -s $((SEED + 1)) -b 2048 -n 30000 -k 8 -S "$MNT/pair/.snapshots/p%d" \
	"$T/sw-pair.log" "$MNT/pair/A.img" "$MNT/pair/B.img" >"$T/sw.run" 2>&1 ||
	{ cat "$T/sw.run"; fail "snapwriter run -l on pair/ failed"; }
for j in 1 2 3 4 5 6 7 8; do
	SNAPS[pair/.snapshots/p$j]=1
	SWCHK["$T/sw-pair.log $j"]="$MNT/pair/.snapshots/p$j/A.img $MNT/pair/.snapshots/p$j/B.img"
	SWCHK_KEYS+=("$T/sw-pair.log $j")
done
SWCHK["$T/sw-pair.log final"]="$MNT/pair/A.img $MNT/pair/B.img"
SWCHK_KEYS+=("$T/sw-pair.log final")
verify_swchk "phase 3"
"$SW" verify "$T/sw-pair.log" 5 "$MNT/pair/.snapshots/p5/A.img" "$MNT/pair/.snapshots/p5/B.img" |
	sed 's/^/# /'
ctl_check "phase 5"

# ==== 6. remount: all of it is still there ==================================
note "phase 6 (at ${SECONDS}s): remount"
verify_all "before the remount"
vs_umount "$MNT"
ctl_check "unmounted"
vs_mount "$STORE" "$MNT" -o spare_chunks=0
# the SPEC: on a live volume st_blocks counts every block it references (du
# shows its real allocation); nothing has opened these since the mount
for f in sp.img:$((8 * MiB - 4096)) sp-copy.img:$((8 * MiB)) imp.img:$((12 * MiB)); do
	own=${f#*:}
	f=${f%%:*}
	blk=$(stat -c %b "$MNT/$f")
	[ $((blk * 512)) -ge "$own" ] && [ $((blk * 512)) -le $((own + MiB)) ] ||
		defer_fail "live $f, not open, reports st_blocks $blk ($((blk * 512)) bytes), its own data is $own bytes (du: $(du -k "$MNT/$f" | cut -f1) KiB)"
done
# st_blocks of a volume that is not open: a snapshot shares every block
# (still referenced: unchanged), the snapshot's deletion merges the rows
# back (unchanged), a write adds 1 MiB.  Polled: the kernel keeps
# attributes for a second, the merge runs in the background.
blocks() { stat -c %b "$MNT/imp.img"; }
b0=$(blocks)
mkdir "$MNT/.snapshots/imp.img@cnt"
sleep 1.5       # past the kernel's attribute cache: what the daemon says now
b1=$(blocks)
[ "$b1" = "$b0" ] || defer_fail "imp.img right after a snapshot: st_blocks $b1, want $b0 (every block still referenced)"
rmdir "$MNT/.snapshots/imp.img@cnt"
for ((i = 0; i < 100 && $(blocks) != b0; i++)); do sleep 0.2; done
[ "$(blocks)" = "$b0" ] || defer_fail "imp.img after the snapshot's merge: st_blocks $(blocks), want $b0"
head -c $MiB /dev/urandom >"$T/onemib"
dd if="$T/onemib" of="$MNT/imp.img" bs=1M seek=64 conv=notrunc,fsync status=none
dd if="$T/onemib" of="$T/imp.raw" bs=1M seek=64 conv=notrunc status=none     # the model
for ((i = 0; i < 100 && $(blocks) != b0 + MiB / 512; i++)); do sleep 0.2; done
[ "$(blocks)" = $((b0 + MiB / 512)) ] ||
	defer_fail "imp.img after a 1 MiB write: st_blocks $(blocks), want $((b0 + MiB / 512))"
verify_all "after the remount"
tree_eq "$MNT/web" "$M/web" "live web/ after the remount"
ctl_check "mounted again"
vs_umount "$MNT"

# ==== 7. constant cost with 1 GiB allocated, on a store of its own =========
# (a store without garbage, so that no GC compaction appends data while the
# growth is measured; cgrowth discounts it anyway)
STORE=$T/store2
MNT=$T/mnt2
FILES=() TREES=() SNAPS=() SWCHK=() SWCHK_KEYS=()
vs_mount "$STORE" "$MNT" -o spare_chunks=0
note "phase 7 (at ${SECONDS}s): constant cost with 1 GiB allocated"
head -c $GiB /dev/urandom >"$T/big.ref"
mkdir "$MNT/vmbig"
cp "$T/big.ref" "$MNT/vmbig/disk.img"
printf '<domain><name>big</name></domain>\n' >"$MNT/vmbig/big.xml"
cp "$MNT/vmbig/big.xml" "$T/big.xml"
cmark "$T/m0"
snap_make "vmbig/.snapshots/s1"
g_snap=$(cgrowth "$T/m0" $CONST_MAX)
cmark "$T/m0"
snap_make "vmbig/.snapshots/disk.img@v1"
g_vsnap=$(cgrowth "$T/m0" $CONST_MAX)
cmark "$T/m0"
snap_make ".snapshots/all-1g"
g_rsnap=$(cgrowth "$T/m0" $CONST_MAX)
cmark "$T/m0"
cp "$MNT/vmbig/.snapshots/s1/disk.img" "$MNT/vmbig/clone.img"
g_clone=$(cgrowth "$T/m0" $CONST_MAX)
assert_eq "$(allocated vmbig/clone.img)" 0 "vsnapctl list: own allocated bytes of the 1 GiB clone"
cmp "$MNT/vmbig/clone.img" "$T/big.ref" || fail "the clone of the 1 GiB volume differs"
# the live volume moves on (64 MiB rewritten), then is reverted
dd if="$POOL" of="$MNT/vmbig/disk.img" bs=1M count=64 seek=500 conv=notrunc,fsync status=none
cmp -s "$MNT/vmbig/disk.img" "$T/big.ref" && fail "writes to vmbig/disk.img did not change it"
cmark "$T/m0"
cp "$MNT/vmbig/.snapshots/s1/disk.img" "$MNT/vmbig/disk.img"
g_revert=$(cgrowth "$T/m0" $CONST_MAX)
assert_eq "$(allocated vmbig/disk.img)" 0 "vsnapctl list: own allocated bytes of the reverted 1 GiB volume"
cmp "$MNT/vmbig/disk.img" "$T/big.ref" || fail "the reverted 1 GiB volume differs"
note "chunk growth with 1 GiB allocated: dir snapshot $g_snap, volume snapshot $g_vsnap," \
	"root snapshot $g_rsnap, clone $g_clone, revert $g_revert bytes"
for x in "directory snapshot:$g_snap" "volume snapshot:$g_vsnap" "root snapshot:$g_rsnap" \
	"clone:$g_clone" "revert:$g_revert"; do
	[ "${x##*:}" -lt $CONST_MAX ] || fail "${x%:*} with 1 GiB allocated grew the chunks by ${x##*:} bytes"
done
FILES[vmbig/disk.img]=$T/big.ref
FILES[vmbig/clone.img]=$T/big.ref
FILES[vmbig/.snapshots/s1/disk.img]=$T/big.ref
FILES[vmbig/.snapshots/s1/big.xml]=$T/big.xml
FILES[vmbig/.snapshots/disk.img@v1/disk.img]=$T/big.ref
FILES[.snapshots/all-1g/vmbig/disk.img]=$T/big.ref
FILES[.snapshots/all-1g/vmbig/big.xml]=$T/big.xml
ctl_check "phase 7"
vs_umount "$MNT"
ctl_check "phase 7, unmounted"
vs_mount "$STORE" "$MNT" -o spare_chunks=0
verify_all "1 GiB store after a remount"
vs_umount "$MNT"

if [ ${#DEFERRED[@]} -gt 0 ]; then
	fail "${#DEFERRED[@]} failed check(s): ${DEFERRED[*]}"
fi
pass "seed $SEED; chunk growth with 1 GiB allocated: snapshot $g_snap, clone $g_clone, revert $g_revert bytes"
