#!/bin/bash
# Crash torture: a writer (tests/tools/torture.c) does random writes of
# random sizes (1 B..256 KiB, buffered and O_DIRECT, zeros, punched holes),
# fdatasync/fsync at random points, and in between takes and deletes
# snapshots (vol@sN and whole-root dN), makes linked clones (copy_file_range
# from a snapshot's file or from the live volume), deletes clones and reverts
# the volume to a snapshot; the daemon is SIGKILLed at a random moment.
# After each remount:
#   - vsnapctl check STORE is clean (exit 0);
#   - every byte an fdatasync acknowledged is there, and every block of the
#     volume holds its durable content or that after one of its later writes;
#   - every snapshot whose mkdir returned reads back exactly as taken, until
#     its rmdir; one in flight at the kill is there exactly or not at all;
#   - every clone whose copy_file_range returned reads back exactly;
#   - nothing else appears in the root or in .snapshots.
# The torture tool keeps its model in a state directory on the host and
# goes on from it at the next cycle; see the comment at its top.
#
# Environment: TORTURE_CYCLES (default 50), TORTURE_SEED (printed),
# TORTURE_NBLOCKS (volume size in 4 KiB blocks, default 1024 = 4 MiB),
# TORTURE_WRITE_KINDS (of "bdzp", default all: to narrow a failure down).
. "$(dirname "$0")/lib.sh"

TT=$TOOLS/torture
[ -x "$TT" ] || fail "$TT not built (make $B/tools/torture)"
[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

CYCLES=${TORTURE_CYCLES:-50}
SEED=${TORTURE_SEED:-$((RANDOM * 32768 + RANDOM))}
NBLOCKS=${TORTURE_NBLOCKS:-1024}
KINDS=${TORTURE_WRITE_KINDS:-bdzp}
note "seed $SEED, $CYCLES cycles (rerun with TORTURE_SEED=$SEED TORTURE_CYCLES=$CYCLES)"
RANDOM=$SEED

STORE=$T/store
MNT=$T/mnt
STATE=$T/state

# rnd N: R = a seeded random number in [0, N) (no subshell: keeps the seed)
rnd() { R=$(((RANDOM << 15 | RANDOM) % $1)); }

ctl_check() {
	with_deadline 60 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 ||
		{
			head -n 30 "$T/check.out"
			_vs_show_log "$(vs_log "$MNT")"
			fail "vsnapctl check $STORE ($1) failed (see above)"
		}
}

# mount with options that vary per cycle: a background flusher too slow to
# hide an fsync that returns early, one that races everything, GC every
# second (it then runs during the next writer, and is killed with it).
# Write-behind (docs/design.md): in two cycles runs of 64 KiB or more go
# behind, so that a kill finds them queued; in one the default (256 KiB
# runs); in one none goes behind
mount_cycle() {
	local c=$1
	case $((c % 4)) in
	0) vs_mount "$STORE" "$MNT" -o flush_ms=60000 ;;
	1) vs_mount "$STORE" "$MNT" -o direct_writes=64K,write_behind=4M ;;
	2) vs_mount "$STORE" "$MNT" -o flush_ms=60000,gc_interval=1,write_behind=0 ;;
	3) vs_mount "$STORE" "$MNT" -o flush_ms=7,gc_interval=1,direct_writes=64K,write_behind=4M ;;
	esac
}

BYTES=0
declare -A INFLIGHT=()
declare -A RUNSUM=()
verify() {
	local rc=0 line
	with_deadline 120 "$TT" verify "$STATE" "$MNT" >"$T/verify.out" 2>&1 || rc=$?
	if [ $rc -ne 0 ]; then
		head -n 60 "$T/verify.out"
		echo "---- last steps of the writer (state log) ----"
		tail -n 15 "$STATE/log"
		_vs_show_log "$(vs_log "$MNT")"
		for r in "${REGRESSIONS[@]}"; do echo "# REGRESSION: $r"; done
		fail "$1: the store lost or damaged what it had promised (seed $SEED; see above)"
	fi
	line=$(grep '^torture-stats:' "$T/verify.out") || fail "$1: no stats from verify"
	BYTES=$((BYTES + $(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$line")))
	local inf
	inf=$(sed -n 's/.* inflight=\([a-z]*\).*/\1/p' <<<"$line")
	INFLIGHT[$inf]=$((${INFLIGHT[$inf]:-0} + 1))
	note "$1: $(grep '^torture: verify' "$T/verify.out" | sed 's/^torture: verify: //')"
}

# sum the counters of a "torture: run stopped ..." line into RUNSUM
run_sum() {
	local line k v
	line=$(grep '^torture: run stopped' "$1") || return 0
	for k in writes syncs mkdir rmdir clones unlinks reverts; do
		v=$(grep -oE "[0-9]+ $k" <<<"$line" | head -n 1 | cut -d' ' -f1)
		RUNSUM[$k]=$((${RUNSUM[$k]:-0} + ${v:-0}))
	done
}

# ---- first, the sequences the torture found, replayed deterministically ----
REGRESSIONS=()
# A volume open across a snapshot deletion that merges a node into it: a
# block zeroed (tombstone over older data), then rewritten, then zeroed or
# punched again must read zeros -- in a later snapshot and after a remount
# -- not the data of the oldest snapshot.
RM=$T/mnt-regress
vs_mount "$T/store-regress" "$RM"
for how in punch zero-write; do
	dd if=/dev/urandom of="$RM/v-$how" bs=4k count=16 conv=fsync status=none
	exec 3<"$RM/v-$how"                  # the volume stays open in the daemon
	mkdir "$RM/.snapshots/v-$how@s1"
	dd if=/dev/zero of="$RM/v-$how" bs=4k seek=5 count=1 conv=notrunc,fsync status=none
	mkdir "$RM/.snapshots/v-$how@s2"
	rmdir "$RM/.snapshots/v-$how@s2"     # merges s2's node into the volume's
	dd if=/dev/urandom of="$RM/v-$how" bs=4k seek=5 count=1 conv=notrunc,fsync status=none
	if [ $how = punch ]; then
		fallocate -p -o 20480 -l 4096 "$RM/v-$how"
	else
		dd if=/dev/zero of="$RM/v-$how" bs=4k seek=5 count=1 conv=notrunc status=none
	fi
	sync "$RM/v-$how"
	mkdir "$RM/.snapshots/v-$how@s3"
	cmp -s -n 4096 -i 20480:0 "$RM/.snapshots/v-$how@s3/v-$how" /dev/zero ||
		REGRESSIONS+=("block 5 zeroed by $how after a snapshot deletion merged a node into the open volume: the next snapshot shows older data instead of zeros$(cmp -s -n 4096 -i 20480:20480 "$RM/.snapshots/v-$how@s3/v-$how" "$RM/.snapshots/v-$how@s1/v-$how" && echo ' (the oldest snapshot'"'"'s block)')")
	exec 3<&-
done
vs_umount "$RM"
vs_mount "$T/store-regress" "$RM"
for how in punch zero-write; do
	cmp -s -n 4096 -i 20480:0 "$RM/v-$how" /dev/zero ||
		REGRESSIONS+=("block 5 zeroed by $how (as above) reads older data instead of zeros after a remount")
done
vs_umount "$RM"
for r in "${REGRESSIONS[@]}"; do
	echo "# REGRESSION: $r"
done

vs_mount "$STORE" "$MNT"
"$TT" init -b "$NBLOCKS" -s "$SEED" "$STATE" "$MNT" >"$T/init.out" 2>&1 ||
	{ cat "$T/init.out"; fail "torture init failed"; }

for ((c = 1; c <= CYCLES; c++)); do
	"$TT" run -s "$SEED" -g $c -w "$KINDS" "$STATE" "$MNT" >"$T/run.$c.log" 2>&1 &
	wpid=$!
	vs_track_pid $wpid
	# mostly 30..1200 ms; sometimes at once, sometimes late
	rnd 20
	if [ $R -lt 3 ]; then
		rnd 30
	elif [ $R -lt 17 ]; then
		rnd 1170
		R=$((R + 30))
	else
		rnd 1300
		R=$((R + 1200))
	fi
	ms=$R
	sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
	if ! _vs_alive $wpid; then
		vs_wait_pid $wpid 1 || true
		cat "$T/run.$c.log"
		_vs_show_log "$(vs_log "$MNT")"
		fail "cycle $c: the writer exited (status $VS_STATUS) before the daemon was killed"
	fi
	vs_kill9 "$MNT"
	vs_wait_pid $wpid 10 || fail "cycle $c: writer still blocked 10 s after the daemon was killed"
	if [ "$VS_STATUS" != 3 ]; then
		cat "$T/run.$c.log"
		fail "cycle $c: writer failed (status $VS_STATUS)"
	fi
	run_sum "$T/run.$c.log"
	note "cycle $c: killed after $ms ms: $(sed -n 's/^torture: run stopped //p' "$T/run.$c.log")"
	# now and then the store is checked while nobody holds it, too
	if [ $((c % 10)) = 5 ]; then
		ctl_check "after crash $c, unmounted"
	fi
	mount_cycle $c
	ctl_check "mounted, after crash $c"
	verify "cycle $c"
done

# a clean unmount after all that: the same data, and a consistent store
"$TT" run -s "$SEED" -g $((CYCLES + 1)) -w "$KINDS" "$STATE" "$MNT" >"$T/run.last.log" 2>&1 &
wpid=$!
vs_track_pid $wpid
sleep 0.5
vs_kill9 "$MNT"
vs_wait_pid $wpid 10 || fail "last writer still blocked 10 s after the daemon was killed"
[ "$VS_STATUS" = 3 ] || { cat "$T/run.last.log"; fail "last writer failed (status $VS_STATUS)"; }
run_sum "$T/run.last.log"
vs_mount "$STORE" "$MNT"
verify "after the last crash"
vs_umount "$MNT"
ctl_check "unmounted at the end"
vs_mount "$STORE" "$MNT"
verify "after a clean remount"
vs_umount "$MNT"

inflight=$(for k in "${!INFLIGHT[@]}"; do echo "$k ${INFLIGHT[$k]}"; done | sort | tr '\n' ',' | sed 's/,$//')
note "writer totals: ${RUNSUM[writes]} writes, ${RUNSUM[syncs]} syncs, ${RUNSUM[mkdir]} mkdir," \
	"${RUNSUM[rmdir]} rmdir, ${RUNSUM[clones]} clones, ${RUNSUM[unlinks]} unlinks, ${RUNSUM[reverts]} reverts"
note "in flight at the kills: $inflight"
[ "${RUNSUM[syncs]}" -ge "$CYCLES" ] || fail "only ${RUNSUM[syncs]} syncs returned in $CYCLES cycles: the test checked little"
[ "${RUNSUM[mkdir]}" -gt 0 ] && [ "${RUNSUM[clones]}" -gt 0 ] && [ "${RUNSUM[reverts]}" -gt 0 ] ||
	fail "the writers took no snapshot, clone or revert: the test checked little"
summary="$CYCLES crashes, seed $SEED, $((BYTES >> 20)) MiB verified; in flight at the kills: $inflight"
[ ${#REGRESSIONS[@]} -eq 0 ] ||
	fail "${#REGRESSIONS[@]} deterministic regression(s) failed (REGRESSION lines at the top); the torture itself passed: $summary"
pass "$summary"
