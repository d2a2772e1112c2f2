#!/bin/bash
# Crashes during snapshot operations: the daemon is killed with SIGKILL a
# random 0-50 ms after an operation starts, in CYCLES cycles of each kind:
#
#   snap    mkdir vm/.snapshots/sN (or disk.img@vN) just after 4 MiB of
#           unsynced writes to vm/disk.img: the snapshot is absent, or
#           present with exactly the tree as it was (then the live volume
#           holds all of the writes too: the snapshot synced them); absent,
#           each block of the live volume is old or new, never garbage.
#   clone   cp SNAPSHOT/disk.img clones/cN.img (16 MiB), or of a 10 GiB thin
#           snapshot that the kernel clones in three copy_file_range calls:
#           absent, empty (cp created it, the clone did not happen), or
#           identical; for the 10 GiB one also a clean prefix (the first
#           calls done: size at a call boundary, content and holes exact).
#   rmdir   rmdir of a snapshot holding data nothing else holds (GC starts
#           at once): it is there and intact, or gone.
#   revert  cp SNAPSHOT/disk.img vm/disk.img: the volume is as before, empty
#           (O_TRUNC done, the clone not), or exactly the snapshot.
#
# Every operation that returned success before the kill must be there.
# Before each operation 16 MiB of unsynced writes go to another volume, so
# that the operation's data sync takes a while.  After each crash:
# vsnapctl check (unmounted and after the remount) exits 0, and every
# snapshot, clone and the live tree read back exactly.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
command -v perl >/dev/null || skip "perl missing"

STORE=$T/store
MNT=$T/mnt
M=$T/model                 # model of the live vm/ directory
SM=$T/snapmodel            # model of each snapshot of vm/
CYCLES=${CYCLES:-10}
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
note "seed $SEED (rerun with SEED=$SEED)"
RANDOM=$SEED
MiB=$((1 << 20))
GiB=$((1 << 30))
NB=4096                    # vm/disk.img: 16 MiB of 4 KiB blocks
POOL=$T/pool
POOL_SIZE=$((32 * MiB))

rnd() { R=$(((RANDOM << 15 | RANDOM) % $1)); }

ctl_check() {
	with_deadline 120 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 || {
		[ -n "${_VS_PID[$MNT]:-}" ] && _vs_show_log "$(vs_log "$MNT")"
		fail "vsnapctl check $STORE ($1) failed: $(tail -n 20 "$T/check.out")"
	}
}

tree_list() {
	(cd "$1" && find . -name .snapshots -prune -o \
		\( -type f -printf 'f %p %s %m\n' \) -o \( -type d -printf 'd %p\n' \) -o \
		-printf '? %p\n') | sort
}

# tree_eq DIR MODEL WHAT
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

# blocks_old_or_new LIVE OLD NEW: every 4 KiB block of LIVE is OLD's or
# NEW's; prints "OLDCOUNT NEWCOUNT" (a block equal in both counts as new)
blocks_old_or_new() {
	perl -e '
my ($l, $o, $n) = @ARGV; my ($a, $b, $c, $i, $old, $new) = ("", "", "", 0, 0, 0);
open(L, "<", $l) or die "$l: $!\n"; open(O, "<", $o) or die; open(N, "<", $n) or die;
die "sizes differ\n" unless -s L == -s N && -s O == -s N;
while (sysread(N, $c, 4096) > 0) {
	sysread(L, $a, 4096) == length($c) or die "$l: short read at block $i\n";
	sysread(O, $b, 4096);
	if ($a eq $c) { $new++ } elsif ($a eq $b) { $old++ }
	else { print STDERR "block $i is neither old nor new\n"; exit 1 }
	$i++;
}
print "$old $new\n";' "$1" "$2" "$3"
}

# extents FILE: "start end" of each data range (SEEK_DATA / SEEK_HOLE)
extents() {
	perl -e '
open(my $fh, "<", $ARGV[0]) or die "$ARGV[0]: $!\n";
my $size = -s $fh; my $off = 0;
while ($off < $size) {
	my $d = sysseek($fh, $off, 3); last unless defined $d;
	my $h = sysseek($fh, $d, 4); die "SEEK_HOLE: $!\n" unless defined $h;
	$d = 0 if $d eq "0 but true"; $h = 0 if $h eq "0 but true";
	print "$d $h\n"; $off = $h;
}' "$1"
}

# random whole-block writes to vm/disk.img and its model: N distinct blocks
# (a block written twice could legitimately keep the first write after a
# crash), fsynced or not
disk_writes() {
	local n=$1 sync=$2 i b s
	local -A seen=()
	: >"$T/writes"
	for ((i = 0; i < n; i++)); do
		rnd $NB; b=$R
		while [ -n "${seen[$b]:-}" ]; do b=$(((b + 1) % NB)); done
		seen[$b]=1
		rnd $((POOL_SIZE / 4096)); s=$R
		echo "$b $s" >>"$T/writes"
	done
	# one perl run applies the list to both files (thousands of dd would be slow)
	perl -e '
my ($list, $pool, $sync, @out) = @ARGV; open(P, "<", $pool) or die;
my @fh; for (@out) { open(my $f, "+<", $_) or die "$_: $!\n"; push @fh, $f }
open(W, "<", $list) or die;
while (<W>) {
	my ($b, $s) = split; my $buf;
	sysseek(P, $s * 4096, 0); sysread(P, $buf, 4096) == 4096 or die "pool\n";
	for my $f (@fh) { sysseek($f, $b * 4096, 0); syswrite($f, $buf) == 4096 or die "write: $!\n" }
}
if ($sync) { require IO::Handle; for my $f (@fh) { $f->sync or die "fsync: $!\n" } }
for my $f (@fh) { close($f) or die "close: $!\n" }' "$T/writes" "$POOL" "$sync" \
		"$MNT/vm/disk.img" "$M/vm/disk.img" || fail "writes to vm/disk.img failed"
}

noise() {                  # 16 MiB of unsynced writes elsewhere: a slower sync
	rnd $((POOL_SIZE - 16 * MiB))
	dd if="$POOL" iflag=skip_bytes skip=$((R / 4096 * 4096)) of="$MNT/scratch.img" bs=1M count=16 \
		conv=notrunc status=none
}

# What exists: snapshots of vm/ -> model dir; clones -> model file or "big"
declare -A SNAPS=()        # name in vm/.snapshots -> model dir (for FILE@: holds disk.img)
declare -A CLONES=()       # clones/NAME -> model file, or BIG
BIG_MARKS="0 $((4 * GiB - 4096)) $((4 * GiB)) $((8 * GiB + MiB)) $((10 * GiB - 4096))"
BIG_SIZE=$((10 * GiB))

# check_big FILE SIZE WHAT: the first SIZE bytes of the 10 GiB clone source
check_big() {
	local f=$1 size=$2 what=$3 i=0 o
	assert_eq "$(stat -c %s "$f")" "$size" "$what: size"
	for o in $BIG_MARKS; do
		if [ $((o + 4096)) -le "$size" ]; then
			cmp <(dd if="$f" iflag=skip_bytes,count_bytes skip=$o count=4096 bs=4096 status=none) \
				<(dd if="$POOL" iflag=skip_bytes,count_bytes skip=$((i * 65536)) count=4096 bs=4096 status=none) ||
				fail "$what: the marker at $o differs"
		fi
		i=$((i + 1))
	done
	extents "$f" >"$T/ext.got"
	awk -v s="$size" '{ if ($1 < s) print $1, ($2 < s ? $2 : s) }' "$T/big.ext" >"$T/ext.want"
	cmp -s "$T/ext.got" "$T/ext.want" ||
		fail "$what: data extents '$(tr '\n' ' ' <"$T/ext.got")', expected '$(tr '\n' ' ' <"$T/ext.want")'"
}

verify_all() {
	local s c
	tree_eq "$MNT/vm" "$M/vm" "$1: live vm/"
	for s in "${!SNAPS[@]}"; do
		tree_eq "$MNT/vm/.snapshots/$s" "${SNAPS[$s]}" "$1: snapshot $s"
	done
	ls -A "$MNT/vm/.snapshots" | sort >"$T/ls.got"
	printf '%s\n' "${!SNAPS[@]}" | sort >"$T/ls.want"
	diff -q "$T/ls.want" "$T/ls.got" >/dev/null ||
		fail "$1: vm/.snapshots lists '$(tr '\n' ' ' <"$T/ls.got")', expected '$(tr '\n' ' ' <"$T/ls.want")'"
	for c in "${!CLONES[@]}"; do
		if [ "${CLONES[$c]}" = BIG ]; then
			check_big "$MNT/clones/$c" $BIG_SIZE "$1: clone $c"
		else
			cmp -s "$MNT/clones/$c" "${CLONES[$c]}" || fail "$1: clone $c differs from its source"
		fi
	done
	check_big "$MNT/.snapshots/big.img@m/big.img" $BIG_SIZE "$1: big.img@m"
}

# crash_op WHAT CMD...: run CMD in the background, SIGKILL the daemon 0-50 ms
# later, check the unmounted store, remount.  Sets OP_RC and DELAY_MS.
crash_op() {
	local what=$1 opid
	shift
	noise
	rnd 51
	DELAY_MS=$R
	"$@" >"$T/op.out" 2>&1 &
	opid=$!
	vs_track_pid $opid
	if [ "$DELAY_MS" -gt 0 ]; then sleep "0.$(printf %03d "$DELAY_MS")"; fi
	vs_kill9 "$MNT"
	vs_wait_pid $opid 20 || fail "$what: '$*' still running 20 s after the daemon was killed"
	OP_RC=$VS_STATUS
	ctl_check "$what, right after the crash"
	vs_mount "$STORE" "$MNT"
}

save_snap_model() {        # save_snap_model NAME: the model of vm/ now
	local name=$1
	rm -rf "${SM:?}/$name"
	if [[ $name == *@* ]]; then
		mkdir -p "$SM/$name"
		cp "$M/vm/disk.img" "$SM/$name/disk.img"
	else
		cp -a "$M/vm" "$SM/$name"
	fi
}

# ==== setup ==================================================================
head -c $POOL_SIZE /dev/urandom >"$POOL"
mkdir -p "$M/vm" "$SM"
vs_mount "$STORE" "$MNT"
mkdir "$MNT/vm" "$MNT/clones"
dd if="$POOL" of="$M/vm/disk.img" bs=1M count=16 status=none
cp "$M/vm/disk.img" "$MNT/vm/disk.img"
for i in $(seq 1 40); do           # small files: more inodes for a snapshot
	printf '<file n="%d"/>\n' "$i" | tee "$MNT/vm/f$i.xml" >"$M/vm/f$i.xml"
done
dd if="$POOL" of="$M/vm/nvram.bin" bs=64k count=1 skip=7 status=none
cp "$M/vm/nvram.bin" "$MNT/vm/nvram.bin"
sync "$MNT/vm/disk.img" "$MNT/vm/nvram.bin"
mkdir "$MNT/vm/.snapshots/base"
save_snap_model base
SNAPS[base]=$SM/base
truncate -s 64M "$MNT/scratch.img"
truncate -s $BIG_SIZE "$MNT/big.img"
i=0
for o in $BIG_MARKS; do
	dd if="$POOL" iflag=skip_bytes,count_bytes skip=$((i * 65536)) count=4096 bs=4096 \
		of="$MNT/big.img" oflag=seek_bytes seek=$o conv=notrunc,fsync status=none
	i=$((i + 1))
done
mkdir "$MNT/.snapshots/big.img@m"
extents "$MNT/big.img" >"$T/big.ext"
[ "$(wc -l <"$T/big.ext")" = 4 ] || fail "big.img: extents $(tr '\n' ' ' <"$T/big.ext"), expected 4"
verify_all "setup"

declare -A OUT=()          # outcome counts: "kind outcome" -> n
count() { OUT[$1]=$((${OUT[$1]:-0} + 1)); }

# ==== snapshots ==============================================================
note "snapshot creation (at ${SECONDS}s)"
for ((c = 1; c <= CYCLES; c++)); do
	cp "$M/vm/disk.img" "$T/old.img"
	disk_writes 1024 0                 # 4 MiB, not synced
	if [ $((c % 2)) = 1 ]; then name=s$c; else name=disk.img@v$c; fi
	crash_op "snapshot $name" mkdir "$MNT/vm/.snapshots/$name"
	if [ -d "$MNT/vm/.snapshots/$name" ]; then
		save_snap_model "$name"
		SNAPS[$name]=$SM/$name
		# the snapshot synced what it froze: the live volume has it all
		cmp -s "$MNT/vm/disk.img" "$M/vm/disk.img" ||
			fail "snapshot $name survived the crash, but the live disk.img lost writes it froze"
		count "snap present"
		how=present
	else
		[ "$OP_RC" != 0 ] || fail "mkdir $name returned 0 before the crash, but the snapshot is gone"
		oldnew=$(blocks_old_or_new "$MNT/vm/disk.img" "$T/old.img" "$M/vm/disk.img" 2>"$T/bon.err") ||
			fail "snapshot $name absent after the crash, and disk.img has garbage: $(cat "$T/bon.err")"
		cp "$MNT/vm/disk.img" "$M/vm/disk.img"     # the unsynced writes went either way
		count "snap absent"
		how="absent (live blocks old/new: $oldnew)"
	fi
	verify_all "snapshot cycle $c"
	ctl_check "snapshot cycle $c, remounted"
	note "cycle $c: mkdir $name killed after ${DELAY_MS} ms (rc $OP_RC): $how"
done

# ==== clones ==================================================================
note "clones (at ${SECONDS}s)"
for ((c = 1; c <= CYCLES; c++)); do
	dst=c$c.img
	if [ $((c % 2)) = 1 ]; then
		names=("${!SNAPS[@]}")
		rnd ${#names[@]}
		s=${names[$R]}
		src=$MNT/vm/.snapshots/$s/disk.img
		model=${SNAPS[$s]}/disk.img
		size=$((NB * 4096))
	else
		src=$MNT/.snapshots/big.img@m/big.img
		model=BIG
		size=$BIG_SIZE
	fi
	crash_op "clone $dst" cp "$src" "$MNT/clones/$dst"
	if ! [ -e "$MNT/clones/$dst" ]; then
		[ "$OP_RC" != 0 ] || fail "cp to $dst returned 0 before the crash, but $dst is gone"
		how=absent
	else
		got=$(stat -c %s "$MNT/clones/$dst")
		if [ "$got" = 0 ] && [ "$OP_RC" != 0 ]; then
			how="empty (created, not cloned)"
			rm "$MNT/clones/$dst"
		elif [ "$got" = "$size" ]; then
			if [ "$model" = BIG ]; then
				check_big "$MNT/clones/$dst" "$size" "clone $dst after the crash"
			else
				cmp -s "$MNT/clones/$dst" "$model" || fail "clone $dst is full size after the crash, but differs from $src"
			fi
			CLONES[$dst]=$model
			how=complete
		elif [ "$model" = BIG ] && [ "$OP_RC" != 0 ] && [ $((got % 4096)) = 0 ]; then
			# a prefix: the kernel's first copy_file_range calls were done
			check_big "$MNT/clones/$dst" "$got" "partial clone $dst after the crash"
			how="a clean prefix of $got bytes"
			rm "$MNT/clones/$dst"
		else
			fail "clone $dst after the crash: size $got of $size (cp rc $OP_RC): neither absent, empty, a clean prefix nor complete"
		fi
	fi
	[ "$OP_RC" != 0 ] || [ "$how" = complete ] || fail "cp to $dst returned 0, but the clone is $how"
	count "clone $how"
	verify_all "clone cycle $c"
	ctl_check "clone cycle $c, remounted"
	note "cycle $c: cp to clones/$dst killed after ${DELAY_MS} ms (rc $OP_RC): $how"
done

# ==== rmdir ===================================================================
note "snapshot deletion (at ${SECONDS}s)"
# enough snapshots, each holding data that nothing else holds
while [ ${#SNAPS[@]} -lt $((CYCLES + 2)) ]; do
	disk_writes 1024 1
	name=extra${#SNAPS[@]}
	mkdir "$MNT/vm/.snapshots/$name"
	save_snap_model "$name"
	SNAPS[$name]=$SM/$name
done
disk_writes 4096 1                 # the live volume moves away from all of them
for ((c = 1; c <= CYCLES; c++)); do
	names=("${!SNAPS[@]}")
	rnd ${#names[@]}
	s=${names[$R]}
	crash_op "rmdir $s" rmdir "$MNT/vm/.snapshots/$s"
	if [ -d "$MNT/vm/.snapshots/$s" ]; then
		[ "$OP_RC" != 0 ] || fail "rmdir $s returned 0 before the crash, but the snapshot is back"
		how="still there"             # verify_all checks that it is intact
	else
		unset "SNAPS[$s]"
		how=gone
	fi
	count "rmdir $how"
	verify_all "rmdir cycle $c"
	ctl_check "rmdir cycle $c, remounted"
	note "cycle $c: rmdir $s killed after ${DELAY_MS} ms (rc $OP_RC): $how"
done

# ==== revert ==================================================================
note "revert (at ${SECONDS}s)"
for ((c = 1; c <= CYCLES; c++)); do
	disk_writes 256 1                  # synced: "as before" is exact
	names=("${!SNAPS[@]}")
	rnd ${#names[@]}
	s=${names[$R]}
	crash_op "revert to $s" cp "$MNT/vm/.snapshots/$s/disk.img" "$MNT/vm/disk.img"
	got=$(stat -c %s "$MNT/vm/disk.img")
	if cmp -s "$MNT/vm/disk.img" "${SNAPS[$s]}/disk.img"; then
		cp "${SNAPS[$s]}/disk.img" "$M/vm/disk.img"
		how=reverted
	elif [ "$OP_RC" != 0 ] && cmp -s "$MNT/vm/disk.img" "$M/vm/disk.img"; then
		how="as before"
	elif [ "$OP_RC" != 0 ] && [ "$got" = 0 ]; then
		how="empty (truncated, not cloned)"
		cp "$MNT/vm/.snapshots/$s/disk.img" "$MNT/vm/disk.img"    # finish it
		cp "${SNAPS[$s]}/disk.img" "$M/vm/disk.img"
	else
		fail "revert of disk.img to $s, killed (cp rc $OP_RC): size $got, neither as before, empty nor the snapshot"
	fi
	count "revert $how"
	verify_all "revert cycle $c"
	ctl_check "revert cycle $c, remounted"
	note "cycle $c: revert to $s killed after ${DELAY_MS} ms (rc $OP_RC): $how"
done

# ==== a clean unmount after all that ==========================================
vs_umount "$MNT"
ctl_check "the end, unmounted"
vs_mount "$STORE" "$MNT"
verify_all "after a clean remount"
vs_umount "$MNT"
summary=$(for k in "${!OUT[@]}"; do echo "$k: ${OUT[$k]}"; done | sort | paste -sd, -)
note "outcomes: $summary"
pass "seed $SEED, $((4 * CYCLES)) crashes ($summary)"
