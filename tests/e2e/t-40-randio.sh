#!/bin/bash
# Random I/O against a model (tests/tools/iomodel.c): buffered and O_DIRECT,
# one and four threads, unaligned and aligned, punch/zero range, SEEK_DATA/
# SEEK_HOLE, truncate; then a remount and a byte-for-byte comparison.
. "$(dirname "$0")/lib.sh"

IOMODEL=$TOOLS/iomodel
[ -x "$IOMODEL" ] || fail "$IOMODEL not built (make $B/tools/iomodel)"

STORE=$T/store
MNT=$T/mnt
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
note "seed $SEED (rerun with SEED=$SEED)"
vs_mount "$STORE" "$MNT"

nrun=0
# run NAME ARGS...: iomodel on $MNT/NAME against the model $T/NAME.model
run() {
	local name=$1
	shift
	nrun=$((nrun + 1))
	if ! with_deadline 120 "$IOMODEL" -s $((SEED + nrun)) "$@" \
		"$MNT/$name" "$T/$name.model" >"$T/iomodel.out" 2>&1; then
		cat "$T/iomodel.out"
		_vs_show_log "$(vs_log "$MNT")"
		fail "iomodel $* on $name: mismatch or error (see above)"
	fi
	head -n 1 "$T/iomodel.out"
}

# one volume, then a second one, each through several modes in sequence
run a.img -n 3000 -k 200 -S 16M                              # buffered, any alignment
run a.img -c -d -n 2000 -k 250 -S 16M                        # O_DIRECT, 4 KiB aligned
run a.img -c -d -a 512 -n 1500 -k 250 -S 16M                 # O_DIRECT, 512-byte aligned
run a.img -c -d -a 1 -n 1500 -k 250 -S 16M                   # O_DIRECT, any alignment
run b.img -t 4 -n 1000 -k 100 -S 32M                         # 4 threads buffered
run b.img -c -t 4 -d -n 1000 -k 100 -S 32M                   # 4 threads O_DIRECT
run b.img -c -t 4 -r -d -a 512 -n 800 -k 100 -S 32M          # 4 threads sharing blocks
run c.img -t 4 -r -n 800 -k 100 -S 8M                        # buffered, shared blocks
run c.img -c -t 4 -r -d -a 1 -n 800 -k 100 -S 8M             # O_DIRECT, any alignment, shared

# An O_DIRECT open is direct_io with parallel writes (the 4-thread O_DIRECT
# runs above write one file concurrently through it): such an fd cannot be
# mapped shared, a buffered one can.
got=$("$TOOLS/mapcheck" "$MNT/a.img") || fail "mapcheck failed"
assert_eq "$got" "buffered=mapped direct=ENODEV" "mmap(MAP_SHARED) of a.img"

# ---- remount: the files must equal their models ---------------------------
vs_umount "$MNT"
vs_mount "$STORE" "$MNT"
for f in a.img b.img c.img; do
	cmp "$MNT/$f" "$T/$f.model" || fail "$f differs from its model after a remount"
done
# and keep going on the remounted volumes
run a.img -c -d -n 500 -k 250 -S 16M
run b.img -c -t 4 -n 300 -k 150 -S 32M
vs_umount "$MNT"
pass "seed $SEED"
