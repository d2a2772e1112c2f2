#!/bin/bash
# Power cut: the machine loses what it had not synced, not only the daemon.
#
# The store lives on ext4 on a loop device over MNT/disk of powercut
# (tests/tools/powercut.c), a disk with a volatile write cache: a write is
# durable in its image only once a flush (fsync of the loop's file) returned.
# Each cycle: two crashwriters (tests/tools/crashwriter.c, seeds SEED and
# SEED+1, so each volume's blocks name their volume) write and fdatasync
# vol0.img and vol1.img, and log what each fdatasync made durable; a
# snapshot vol0.img@cN is taken a random moment in; at another random moment
# the power is cut (SIGUSR1 to powercut: its unsynced writes are lost, or a
# seeded share of them is kept, and every later write and flush fails; each
# cycle's disk also makes its flushes wait 0, 5 or 10 ms, so that some cuts
# fall inside a flush), then
# vsnapfs is SIGKILLed, ext4 unmounted, the loop detached, powercut stopped.
# A new powercut over the same image, ext4 mounted (journal replay), and:
#   - e2fsck -fn is clean (else the harness, not vsnapfs, is broken);
#   - vsnapctl check of the crashed store, unmounted, is clean;
#   - every block fdatasync'ed before the cut reads back exactly, every
#     other one is an older or newer version of its own block of its own
#     volume or zeros where nothing was durable; never garbage;
#   - a snapshot whose mkdir returned before the cut exists, with exactly
#     the content read from it before the cut; any snapshot that exists
#     holds at least what was durable when its mkdir started; every earlier
#     snapshot is unchanged;
#   - vsnapctl check is clean again after a clean vsnapfs unmount.
# Older snapshots are deleted as the cycles go (the GC then runs under the
# next cut).  CYCLES=N, SEED=N to replay; POWERCUT_ARGS adds powercut
# options to every start (e.g. "-l 50", a disk that ignores half of the
# flushes: the test must then fail).
. "$(dirname "$0")/lib.sh"

need_root
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 missing (install e2fsprogs)"
losetup -f >/dev/null 2>&1 || skip "no free loop device (losetup -f fails)"
[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
CW=$TOOLS/crashwriter
PC=$TOOLS/powercut
[ -x "$CW" ] || fail "$CW not built (make $B/tools/crashwriter)"
[ -x "$PC" ] || fail "$PC not built (make $B/tools/powercut)"

IMG=$T/image
PCMNT=$T/pc
EXT=$T/ext4
STORE=$EXT/store
MNT=$T/mnt
NB=4096                            # each volume: 16 MiB of 4 KiB blocks
MAXSNAPS=3                         # snapshots kept; older ones are deleted
CYCLES=${CYCLES:-10}
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
note "seed $SEED (rerun with SEED=$SEED)"
RANDOM=$SEED
S0=$SEED S1=$((SEED + 1))          # crashwriter seeds of vol0 and vol1

# Runs of two blocks or more are written with O_DIRECT, single blocks through
# the page cache (crashwriter writes runs of 1..8): both paths, into the same
# chunk files, under every cut; and the direct ones go behind (write_behind,
# on ext4): their writes return before the device has them.
VS_OPTS=(-o direct_writes=8K,write_behind=4M)
DIRECT=0                           # bytes written directly, summed over the cycles
BEHIND=0                           # of those, written behind
direct_bytes() {                   # "DIRECT BEHIND"
	"$VSNAPCTL" metrics "$MNT" | awk '$1 ~ /^vsnapfs_direct_write_bytes_total/ { d = $2 }
		$1 ~ /^vsnapfs_write_behind_bytes_total/ { b = $2 } END { print d + 0, b + 0 }'
}

sleep_ms() { sleep "$(($1 / 1000)).$(printf %03d $(($1 % 1000)))"; }

# ---- the disk: powercut, loop, ext4 ----------------------------------------

# pc_start LOG [POWERCUT OPTIONS...]: serve $IMG as $PCMNT/disk
pc_start() {
	local log=$1 i
	shift
	mkdir -p "$PCMNT"
	# shellcheck disable=SC2086
	"$PC" ${POWERCUT_ARGS:-} "$@" "$IMG" "$PCMNT" 2>"$log" &
	PCPID=$!
	PCLOG=$log
	vs_track_fuse "$PCMNT" $PCPID
	for ((i = 0; i < 200 * VS_TIME_SCALE; i++)); do
		mountpoint -q "$PCMNT" && return 0
		_vs_alive $PCPID || { cat "$log"; fail "powercut exited before mounting"; }
		sleep 0.05
	done
	fail "powercut: $PCMNT not mounted after $((10 * VS_TIME_SCALE)) s"
}

# pc_stop: unmount powercut (after ext4 and the loop are gone); it must exit 0
pc_stop() {
	fusermount3 -u "$PCMNT" || fail "fusermount3 -u $PCMNT failed"
	vs_wait_pid $PCPID 10 || fail "powercut (pid $PCPID) still running 10 s after unmount"
	[ "$VS_STATUS" = 0 ] || { cat "$PCLOG"; fail "powercut exited with status $VS_STATUS"; }
}

# disk_up LOG [POWERCUT OPTIONS...]: powercut, loop device, ext4 mounted
disk_up() {
	pc_start "$@"
	# direct I/O if the kernel takes it; either way the writes reach
	# powercut as they are made, since it opens the file direct_io
	vs_losetup_dio "$PCMNT/disk"
	if [ ! -e "$T/mkfs.done" ]; then
		mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$LOOPDEV" ||
			fail "mkfs.ext4 on $LOOPDEV failed"
		: >"$T/mkfs.done"
	fi
	vs_blkmount "$LOOPDEV" "$EXT"
}

# disk_down: ext4, loop, powercut, in that order
disk_down() {
	vs_blkumount "$EXT"
	vs_lodetach "$LOOPDEV"
	pc_stop
}

ctl_check() {
	with_deadline 120 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 ||
		fail "vsnapctl check $STORE ($1) failed: $(tail -n 20 "$T/check.out")"
}

jlines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# verify_vol FILE JOURNAL SEED WHAT: crashwriter's check; a live volume's
# journal gets the blocks read as its new baseline
verify_vol() {
	if ! with_deadline 60 "$CW" verify -s "$3" -b $NB "$1" "$2" >"$T/verify.out" 2>&1; then
		head -n 40 "$T/verify.out"
		fail "$4: durable data lost or damaged (see above)"
	fi
	note "$4: $(tail -n 1 "$T/verify.out" | sed 's/^crashwriter: verify [^:]*: //')"
}

# snap_check C: the snapshot of cycle C after the restart (see the top)
snap_check() {
	local c=$1 f=$MNT/.snapshots/vol0.img@c$1/vol0.img sum
	if [ -e "$T/snap.$c.returned" ]; then
		[ -f "$f" ] || fail "cycle $c: snapshot vol0.img@c$c returned before the cut but is gone"
	fi
	if [ ! -e "$f" ]; then
		note "cycle $c: snapshot vol0.img@c$c absent (mkdir $(
			[ -e "$T/snap.$c.started" ] && echo "in flight at" || echo "not started before")"\
			"the cut)"
		return 0
	fi
	[ -e "$T/snap.$c.started" ] || fail "cycle $c: snapshot vol0.img@c$c exists but mkdir never ran"
	cp "$T/jsnap.$c" "$T/jsnap.tmp"      # verify appends to it
	verify_vol "$f" "$T/jsnap.tmp" $S0 "cycle $c: snapshot vol0.img@c$c"
	sum=$(sha256sum <"$f")
	if [ -e "$T/snap.$c.sha" ]; then
		assert_eq "$sum" "$(cat "$T/snap.$c.sha")" "cycle $c: snapshot vol0.img@c$c content (sha256)"
	fi
	echo "c$c $sum" >>"$T/snaps"
}

# the snapshots of earlier cycles: still there, unchanged
snaps_check() {
	local name sum
	[ -f "$T/snaps" ] || return 0
	while read -r name sum; do
		[ -n "$name" ] || continue
		assert_eq "$(sha256sum <"$MNT/.snapshots/vol0.img@$name/vol0.img")" "$sum" \
			"$1: earlier snapshot vol0.img@$name (sha256)"
	done <"$T/snaps"                      # "cN HASH  -", as sha256sum prints it
}

# snap_take C MS: in the background, MS ms from now, snapshot vol0.img
snap_take() {
	local c=$1 ms=$2 f=$MNT/.snapshots/vol0.img@c$1/vol0.img
	set +e
	sleep_ms "$ms"
	# the durable versions as of now; a partly appended last line is dropped
	cp "$T/j0" "$T/jsnap.$c" 2>/dev/null || : >"$T/jsnap.$c"
	[ -s "$T/jsnap.$c" ] && [ -n "$(tail -c 1 "$T/jsnap.$c")" ] && sed -i '$d' "$T/jsnap.$c"
	[ -e "$T/cut.$c" ] && exit 0        # too late: the power is off
	: >"$T/snap.$c.started"
	mkdir "$MNT/.snapshots/vol0.img@c$c" 2>"$T/snap.$c.err" || exit 0
	: >"$T/snap.$c.returned"
	sha256sum <"$f" >"$T/snap.$c.sha.tmp" 2>/dev/null && mv "$T/snap.$c.sha.tmp" "$T/snap.$c.sha"
	exit 0
}

# ---- start -------------------------------------------------------------------

truncate -s 512M "$IMG"
disk_up "$T/pc.0.log" -s "$SEED"
note "loop $LOOPDEV over $PCMNT/disk, direct I/O: $(cat "/sys/block/${LOOPDEV#/dev/}/loop/dio")"
vs_mount "$STORE" "$MNT" "${VS_OPTS[@]}"
truncate -s $((NB * 4096)) "$MNT/vol0.img" "$MNT/vol1.img"
sync "$MNT/vol0.img" "$MNT/vol1.img"

start=$SECONDS
for ((c = 1; c <= CYCLES; c++)); do
	# ---- the workload, and the cut
	l0=$(jlines "$T/j0") l1=$(jlines "$T/j1")
	d0= d1=-d
	[ $((c % 2)) = 0 ] && d0=-d d1=
	"$CW" write $d0 -s $S0 -g $c -b $NB "$MNT/vol0.img" "$T/j0" >"$T/w0.$c.log" 2>&1 &
	w0=$!
	vs_track_pid $w0
	"$CW" write $d1 -s $S1 -g $c -b $NB "$MNT/vol1.img" "$T/j1" >"$T/w1.$c.log" 2>&1 &
	w1=$!
	vs_track_pid $w1
	# slower builds (sanitizers) get proportionally longer before the cut
	snap_ms=$(((100 + RANDOM % 900) * VS_TIME_SCALE))
	cut_ms=$(((300 + RANDOM % 1500) * VS_TIME_SCALE))
	snap_take $c $snap_ms &
	sp=$!
	vs_track_pid $sp
	sleep_ms $cut_ms
	for w in $w0 $w1; do
		_vs_alive $w && continue
		vs_wait_pid $w 1 || true
		cat "$T/w0.$c.log" "$T/w1.$c.log"
		fail "cycle $c: a writer exited (status $VS_STATUS) before the power cut"
	done
	d=$(direct_bytes || true)       # none read: the check after the cycles says so
	d=${d:-0 0}
	DIRECT=$((DIRECT + ${d%% *}))
	BEHIND=$((BEHIND + ${d##* }))
	: >"$T/cut.$c"
	kill -USR1 $PCPID                   # POWER CUT
	vs_kill9 "$MNT"
	for w in $w0 $w1; do
		vs_wait_pid $w 10 || fail "cycle $c: writer still running 10 s after the cut"
		[ "$VS_STATUS" = 3 ] || { cat "$T/w0.$c.log" "$T/w1.$c.log"; fail "cycle $c: writer failed (status $VS_STATUS)"; }
	done
	vs_wait_pid $sp 30 || fail "cycle $c: the snapshot's mkdir still running 30 s after the cut"
	disk_down
	grep -q "POWER CUT" "$PCLOG" || { cat "$PCLOG"; fail "cycle $c: powercut did not cut"; }
	n0=$(($(jlines "$T/j0") - l0)) n1=$(($(jlines "$T/j1") - l1))
	note "cycle $c: cut at ${cut_ms} ms (snapshot at ${snap_ms} ms$(
		[ -e "$T/snap.$c.returned" ] && echo ", returned")): $n0 + $n1 blocks made durable;" \
		"$(grep "POWER CUT" "$PCLOG" | sed 's/^powercut: POWER CUT: //')"
	[ $((n0 + n1)) -gt 0 ] || fail "cycle $c: no fdatasync returned in $cut_ms ms"

	# ---- after the power comes back
	pcseed=$((RANDOM * 32768 + RANDOM))
	keep=$(((RANDOM % 3) * 40))     # 0, 40 or 80% of the disk's cache kept at the next cut
	flush=$(((RANDOM % 3) * 5))     # each flush waits 0, 5 or 10 ms first
	disk_up "$T/pc.$c.log" -s $pcseed -k $keep -f $flush
	vs_blkumount "$EXT"                         # after the journal replay
	e2fsck -fn "$LOOPDEV" >"$T/fsck" 2>&1 ||
		fail "cycle $c: e2fsck -fn after the cut not clean (the harness is wrong): $(tail -n 20 "$T/fsck")"
	vs_blkmount "$LOOPDEV" "$EXT"
	ctl_check "unmounted, after cut $c"
	vs_mount "$STORE" "$MNT" "${VS_OPTS[@]}"
	grep -q "was not cleanly unmounted" "$(vs_log "$MNT")" ||
		fail "cycle $c: the mount after a power cut did not say it recovered"
	verify_vol "$MNT/vol0.img" "$T/j0" $S0 "cycle $c: vol0.img"
	verify_vol "$MNT/vol1.img" "$T/j1" $S1 "cycle $c: vol1.img"
	snaps_check "cycle $c"
	snap_check $c
	if [ -f "$T/snaps" ] && [ "$(wc -l <"$T/snaps")" -gt $MAXSNAPS ]; then
		old=$(head -n 1 "$T/snaps" | cut -d' ' -f1)
		rmdir "$MNT/.snapshots/vol0.img@$old" || fail "rmdir snapshot vol0.img@$old failed"
		sed -i 1d "$T/snaps"
	fi
	vs_umount "$MNT"
	ctl_check "after a clean unmount, cycle $c"
	note "cycle $c: next cut keeps $keep% of the unsynced pages, flushes wait $flush ms (powercut seed $pcseed)"
	vs_mount "$STORE" "$MNT" "${VS_OPTS[@]}"
done
secs=$((SECONDS - start))
# (direct writes are off on hosts with pages over 4 KiB: slots share pages)
[ "$DIRECT" -gt 0 ] || [ "$(getconf PAGESIZE)" -gt 4096 ] ||
	fail "no block was written with O_DIRECT before any cut (vsnapfs_direct_write_bytes_total)"
[ "$BEHIND" -gt 0 ] || [ "$(getconf PAGESIZE)" -gt 4096 ] ||
	fail "no block was written behind before any cut (vsnapfs_write_behind_bytes_total)"
note "written with O_DIRECT before the cuts: $DIRECT bytes, $BEHIND of them behind"

# the end: a clean shutdown must leave nothing unsynced in the disk's cache
vs_umount "$MNT"
disk_down
grep -q "stopped with" "$PCLOG" && fail "ext4 unmounted but powercut had unsynced pages: $(grep "stopped with" "$PCLOG")"
note "last powercut: $(grep "exit:" "$PCLOG" | sed 's/^powercut: exit: //')"
pass "$CYCLES power cuts in $secs s, seed $SEED"
