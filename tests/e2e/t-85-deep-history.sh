#!/bin/bash
# Deep history: 200 nested generations of snapshots and linked clones.
#
# A 4 MiB volume gets, in each generation, a few seeded writes (whole
# blocks, unaligned bytes, zero blocks over inherited data, punched holes,
# now and then a shrink and regrow), then a snapshot HEAD@gNNN.  Every 10th
# generation a linked clone cK is made from a snapshot (usually the one just
# taken, sometimes an older one) and the next generations write to the clone:
# clones of clones of clones.  A host model of the head volume is copied at
# every snapshot.  Then:
#   - every snapshot and every volume reads back exactly;
#   - a seeded random half of the snapshots (middle ones and clone sources
#     included) and half of the old clones are deleted, in random order; the
#     rest still reads back exactly, also after a remount;
#   - GC: 512 MiB that only two deleted snapshots hold, and a deleted 128 MiB
#     volume; the chunk files (du -sb STORE/chunks) must shrink by at least
#     75% of those bytes within 60 s, and everything left still reads back
#     exactly afterwards (GC may have moved live blocks).
# vsnapctl check after every phase.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
command -v fallocate >/dev/null || skip "fallocate (util-linux) missing"

STORE=$T/store
MNT=$T/mnt
MD=$T/model                # model of each volume
SD=$T/snapmodel            # model of each snapshot (a copy at snapshot time)
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
note "seed $SEED (rerun with SEED=$SEED)"
RANDOM=$SEED
MiB=$((1 << 20))
GENS=${GENS:-200}
NB=1024                    # blocks of 4 KiB in a volume: 4 MiB
SIZE=$((NB * 4096))
POOL=$T/pool
POOL_SIZE=$((16 * MiB))

rnd() { R=$(((RANDOM << 15 | RANDOM) % $1)); }

ctl_check() {
	with_deadline 120 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 ||
		fail "vsnapctl check $STORE ($1) failed: $(tail -n 20 "$T/check.out")"
	note "vsnapctl check ($1): $(tail -n 1 "$T/check.out")"
}

# put VOL OFF LEN SRC SOFF: the same write to the volume and to its model
put() {
	local vol=$1 off=$2 len=$3 src=$4 soff=$5 out
	for out in "$MNT/$vol" "$MD/$vol"; do
		dd if="$src" iflag=skip_bytes,count_bytes skip="$soff" count="$len" bs=1M \
			of="$out" oflag=seek_bytes seek="$off" conv=notrunc status=none ||
			fail "dd to $out failed"
	done
}

both() {                   # both VOL CMD ARGS...: CMD ARGS... FILE, on each
	local vol=$1 out
	shift
	for out in "$MNT/$vol" "$MD/$vol"; do
		"$@" "$out" || fail "$* $out failed"
	done
}

# one generation's writes to the head volume
gen_writes() {
	local vol=$1 i n off len soff
	rnd 5; n=$((R + 3))
	for ((i = 0; i < n; i++)); do
		rnd $((POOL_SIZE - 65536)); soff=$R
		rnd 20
		case $R in
		[0-7])                      # 1-4 whole blocks
			rnd $NB; off=$((R * 4096))
			rnd 4; len=$(((R + 1) * 4096))
			put "$vol" $off $len "$POOL" $((soff / 4096 * 4096)) ;;
		8 | 9 | 10 | 11 | 12)       # unaligned bytes, maybe across blocks
			rnd $SIZE; off=$R
			rnd 9000; len=$((R + 1))
			put "$vol" $off $len "$POOL" $soff ;;
		13 | 14 | 15)               # a zero block over (maybe inherited) data
			rnd $NB; off=$((R * 4096))
			put "$vol" $off 4096 /dev/zero 0 ;;
		16 | 17)                    # punch a hole, unaligned
			rnd $SIZE; off=$R
			rnd 20000; len=$((R + 1))
			both "$vol" fallocate -p -o $off -l $len ;;
		18)                         # zero range
			rnd $SIZE; off=$R
			rnd 20000; len=$((R + 1))
			both "$vol" fallocate -z -o $off -l $len ;;
		19)                         # shrink and grow back: the tail reads zeros
			rnd $SIZE; off=$R
			both "$vol" truncate -s $off
			both "$vol" truncate -s $SIZE ;;
		esac
	done
	# writes past the end would grow it: keep every volume at SIZE
	both "$vol" truncate -s $SIZE
}

own_alloc() {              # own_alloc VOL: own allocated bytes (vsnapctl list)
	"$VSNAPCTL" list -n -b --raw -o allocated "$MNT/$1"
}

declare -A SNAP=()         # snapshot name (HEAD@gNNN) -> model file
declare -A VOLS=()         # volume name -> 1
SNAPORDER=()               # snapshot names in creation order
declare -A SOURCE=()       # snapshot names that clones were made from

verify_all() {
	local s v n=0
	for s in "${!SNAP[@]}"; do
		cmp -s "$MNT/.snapshots/$s/${s%@*}" "${SNAP[$s]}" ||
			fail "$1: snapshot $s differs from its model"
		n=$((n + 1))
	done
	for v in "${!VOLS[@]}"; do
		cmp -s "$MNT/$v" "$MD/$v" || fail "$1: volume $v differs from its model"
	done
	# the listing is exactly the snapshots that should exist
	ls -A "$MNT/.snapshots" | sort >"$T/ls.got"
	printf '%s\n' "${!SNAP[@]}" | sort >"$T/ls.want"
	diff "$T/ls.want" "$T/ls.got" >"$T/ls.diff" ||
		{ head -n 20 "$T/ls.diff"; fail "$1: .snapshots lists other snapshots than expected"; }
	note "$1 (at ${SECONDS}s): $n snapshots and ${#VOLS[@]} volumes read back exactly"
}

head -c $POOL_SIZE /dev/urandom >"$POOL"
mkdir -p "$MD" "$SD"
vs_mount "$STORE" "$MNT"

# ==== 1. 200 generations ====================================================
note "phase 1: $GENS generations"
HEAD=v.img
truncate -s $SIZE "$MNT/$HEAD" "$MD/$HEAD"
put "$HEAD" 0 $SIZE "$POOL" 0          # start fully allocated
VOLS[$HEAD]=1
nclone=0
for ((g = 1; g <= GENS; g++)); do
	gen_writes "$HEAD"
	s=$HEAD@g$(printf %03d $g)
	mkdir "$MNT/.snapshots/$s" || fail "mkdir .snapshots/$s failed"
	cp "$MD/$HEAD" "$SD/$s"
	SNAP[$s]=$SD/$s
	SNAPORDER+=("$s")
	if [ $((g % 10)) = 0 ] && [ $g -lt $GENS ]; then
		# the next generations go on in a clone: of this snapshot (a chain),
		# or one time in three of an older one (a branch)
		src=$s
		rnd 3
		if [ $R = 0 ]; then
			rnd ${#SNAPORDER[@]}
			src=${SNAPORDER[$R]}
		fi
		nclone=$((nclone + 1))
		HEAD=c$nclone.img
		cp "$MNT/.snapshots/$src/${src%@*}" "$MNT/$HEAD"
		cp "${SNAP[$src]}" "$MD/$HEAD"
		assert_eq "$(own_alloc "$HEAD")" 0 "own allocated bytes of the new clone $HEAD (of $src)"
		cmp -s "$MNT/$HEAD" "$MD/$HEAD" || fail "clone $HEAD of $src differs right after cp"
		VOLS[$HEAD]=1
		SOURCE[$src]=1
	fi
done
note "$GENS generations, $nclone clones, last head $HEAD (at ${SECONDS}s)"
verify_all "all generations"
ctl_check "after $GENS generations"

# ==== 2. delete a random half =================================================
note "phase 2: delete half of the snapshots and of the old clones"
# seeded shuffle (Fisher-Yates), then force some middle ones and clone
# sources into the half that goes
order=("${SNAPORDER[@]}")
for ((i = ${#order[@]} - 1; i > 0; i--)); do
	rnd $((i + 1))
	t=${order[$i]}; order[$i]=${order[$R]}; order[$R]=$t
done
declare -A DEL=()
for s in "${!SOURCE[@]}"; do
	rnd 2
	[ $R = 0 ] || DEL[$s]=1         # about half of the clone sources
done
for s in "${order[@]}"; do
	case $s in *@g100 | *@g101 | *@g150) DEL[$s]=1 ;; esac
done
for s in "${order[@]}"; do
	[ ${#DEL[@]} -ge $((GENS / 2)) ] && break
	DEL[$s]=1
done
ndel=0
for s in "${order[@]}"; do          # in shuffled order
	[ -n "${DEL[$s]:-}" ] || continue
	rmdir "$MNT/.snapshots/$s" || fail "rmdir .snapshots/$s failed"
	unset "SNAP[$s]"
	ndel=$((ndel + 1))
done
# rm half of the old clones (never the head)
nrm=0
for ((k = 1; k < nclone; k++)); do
	rnd 2
	[ $R = 0 ] || continue
	rm "$MNT/c$k.img" || fail "rm c$k.img failed"
	rm "$MD/c$k.img"
	unset "VOLS[c$k.img]"
	nrm=$((nrm + 1))
done
nsrc=0
for s in "${!DEL[@]}"; do
	if [ -n "${SOURCE[$s]:-}" ]; then nsrc=$((nsrc + 1)); fi
done
note "deleted $ndel snapshots ($nsrc of them clone sources) and $nrm old clones"
verify_all "after the deletions"
# and the history goes on after the deletions
for ((g = GENS + 1; g <= GENS + 5; g++)); do
	gen_writes "$HEAD"
	s=$HEAD@g$(printf %03d $g)
	mkdir "$MNT/.snapshots/$s"
	cp "$MD/$HEAD" "$SD/$s"
	SNAP[$s]=$SD/$s
done
verify_all "5 more generations"
ctl_check "after the deletions"
vs_umount "$MNT"
ctl_check "unmounted"
vs_mount "$STORE" "$MNT"
verify_all "after a remount"

# ==== 3. GC gives the space back =============================================
# Right after the mount a new chunk file is active, so the data written now
# fills chunk files of its own.
note "phase 3 (at ${SECONDS}s): garbage collection"
GCSZ=$((256 * MiB))
dd if=/dev/urandom of="$MNT/gcv.img" bs=1M count=256 conv=fsync status=none
mkdir "$MNT/.snapshots/gcv.img@a"
dd if=/dev/urandom of="$MNT/gcv.img" bs=1M count=256 conv=notrunc,fsync status=none
mkdir "$MNT/.snapshots/gcv.img@b"
head -c $GCSZ /dev/urandom >"$MD/gcv.img"
dd if="$MD/gcv.img" of="$MNT/gcv.img" bs=1M conv=notrunc,fsync status=none
VOLS[gcv.img]=1
dd if=/dev/urandom of="$MNT/gcw.img" bs=1M count=128 conv=fsync status=none
EXCL=$((2 * GCSZ + 128 * MiB))      # held only by gcv.img@a, gcv.img@b, gcw.img
before=$(du -sb "$STORE/chunks" | cut -f1)
rmdir "$MNT/.snapshots/gcv.img@a" "$MNT/.snapshots/gcv.img@b"
rm "$MNT/gcw.img"
start=$SECONDS
now=$before
while [ $((SECONDS - start)) -lt 60 ]; do
	now=$(du -sb "$STORE/chunks" | cut -f1)
	[ $((before - now)) -ge $((EXCL * 3 / 4)) ] && break
	sleep 0.5
done
freed=$((before - now))
note "GC: chunks $before -> $now bytes: returned $freed of $EXCL exclusive bytes" \
	"($((freed * 100 / EXCL))%) in $((SECONDS - start)) s"
[ $freed -ge $((EXCL * 3 / 4)) ] ||
	{ tail -n 20 "$(vs_log "$MNT")"; fail "GC returned $freed bytes in 60 s, expected >= 75% of $EXCL"; }
verify_all "after GC"
ctl_check "after GC"
vs_umount "$MNT"
ctl_check "after GC, unmounted"
vs_mount "$STORE" "$MNT"
verify_all "after GC and a remount"
vs_umount "$MNT"
pass "seed $SEED, $GENS generations, $nclone clones; GC returned $freed of $EXCL bytes ($before -> $now)"
