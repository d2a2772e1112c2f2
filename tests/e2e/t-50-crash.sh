#!/bin/bash
# Crash consistency: a writer (tests/tools/crashwriter.c) writes versioned
# blocks and logs what each fdatasync made durable; the daemon is killed with
# SIGKILL at a random moment; after a remount every durable block must hold
# its durable version or a later one -- never an older one, never garbage.
. "$(dirname "$0")/lib.sh"

CW=$TOOLS/crashwriter
[ -x "$CW" ] || fail "$CW not built (make $B/tools/crashwriter)"

STORE=$T/store
MNT=$T/mnt
VOL=$MNT/vol.img
JOURNAL=$T/journal
NBLOCKS=4096                       # 16 MiB of 4 KiB blocks
CYCLES=${CYCLES:-12}
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
note "seed $SEED (rerun with SEED=$SEED)"
RANDOM=$SEED

have_ctl=1
if [ ! -x "$VSNAPCTL" ]; then
	have_ctl=0
	note "$VSNAPCTL not built: the 'vsnapctl check' steps are skipped"
fi
ctl_check() {
	[ $have_ctl = 1 ] || return 0
	with_deadline 60 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 ||
		fail "vsnapctl check $STORE ($1) failed: $(tail -n 20 "$T/check.out")"
}

jlines() {
	if [ -f "$JOURNAL" ]; then wc -l <"$JOURNAL"; else echo 0; fi
}

verify() {
	if ! with_deadline 60 "$CW" verify -s "$SEED" -b $NBLOCKS "$VOL" "$JOURNAL" >"$T/verify.out" 2>&1; then
		head -n 40 "$T/verify.out"
		_vs_show_log "$(vs_log "$MNT")"
		fail "$1: durable data lost or damaged (see above)"
	fi
	note "$1: $(tail -n 1 "$T/verify.out")"
	# another volume, fsynced once at the start, never changes
	sha256sum <"$MNT/other.img" | cmp -s - "$T/other.sha" ||
		fail "$1: other.img changed"
}

vs_mount "$STORE" "$MNT" -o flush_ms=60000    # see the loop
truncate -s $((NBLOCKS * 4096)) "$VOL"
head -c $((4 << 20)) /dev/urandom >"$T/other"
sha256sum <"$T/other" >"$T/other.sha"
dd if="$T/other" of="$MNT/other.img" bs=1M conv=fsync status=none

for ((c = 1; c <= CYCLES; c++)); do
	direct=
	[ $((c % 2)) = 0 ] && direct=-d
	lines0=$(jlines)
	"$CW" write $direct -s "$SEED" -g $c -b $NBLOCKS "$VOL" "$JOURNAL" >"$T/writer.$c.log" 2>&1 &
	wpid=$!
	vs_track_pid $wpid
	ms=$((200 + RANDOM % 1300))
	sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
	if ! _vs_alive $wpid; then
		vs_wait_pid $wpid 1 || true
		cat "$T/writer.$c.log"
		_vs_show_log "$(vs_log "$MNT")"
		fail "cycle $c: writer exited (status $VS_STATUS) before the daemon was killed"
	fi
	vs_kill9 "$MNT"
	if ! vs_wait_pid $wpid 10; then
		fail "cycle $c: writer still blocked 10 s after the daemon was killed"
	fi
	[ "$VS_STATUS" = 3 ] || { cat "$T/writer.$c.log"; fail "cycle $c: writer failed (status $VS_STATUS)"; }
	lines=$(jlines)
	note "cycle $c: killed after ${ms} ms ${direct:+(O_DIRECT) }with $((lines - lines0)) blocks made durable"
	# a sync that never returns would make the check below vacuous
	[ "$lines" -gt "$lines0" ] || fail "cycle $c: no fdatasync returned in $ms ms"

	# half of the writers run with a background flusher too slow to hide
	# an fsync that returns before the data is durable
	if [ $((c % 4)) -lt 2 ]; then
		vs_mount "$STORE" "$MNT" -o flush_ms=60000
	else
		vs_mount "$STORE" "$MNT"
	fi
	verify "cycle $c"
	ctl_check "mounted, after crash $c"
	grep -q "was not cleanly unmounted" "$(vs_log "$MNT")" ||
		fail "cycle $c: the mount after a crash did not say it recovered"
done

# a clean unmount after all that: the same data, and a consistent store
vs_umount "$MNT"
ctl_check "unmounted"
vs_mount "$STORE" "$MNT"
verify "after a clean remount"
! grep -q "not cleanly unmounted" "$(vs_log "$MNT")" ||
	fail "a mount after a clean unmount claims a recovery"
vs_umount "$MNT"
pass "$CYCLES crashes, seed $SEED"
