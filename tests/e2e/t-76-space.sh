#!/bin/bash
# Deleting gives the space back to the host (issue #11): after rm of a volume
# and its clone and rmdir of their snapshot, after rm of a volume, and after
# a PUNCH_HOLE of a large range, `du -sb STORE` drops by at least 90% of the
# deleted data within 30 s, and so does the host's df of the store's file
# system.  Spare chunk files (kept for reuse while writes stream in) stay
# within their bound, are given back once writes stop, and count as used in
# the mount's df.  A spare written ahead for small synced writes keeps to
# the same bound and is given back the same way.
#
# The store gets an ext4 of its own on a loop device, so that df moves only
# with what this test does.  It is sparse and 16 GiB large: below 4 GiB the
# daemon keeps no spares at all (1/64 of the file system), and the bound on
# them would go untested.
. "$(dirname "$0")/lib.sh"

need_root
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 missing (install e2fsprogs)"

MiB=$((1 << 20)) GiB=$((1 << 30))
SPARE_MAX=4                     # -o spare_chunks default (NS_DEFAULT_SPARE_CHUNKS)
FS=$T/fs MNT=$T/mnt
STORE=$FS/store

truncate -s 16G "$T/fs.img"
mkfs.ext4 -q -F -m 0 -E lazy_itable_init=1,lazy_journal_init=1 "$T/fs.img" ||
	fail "mkfs.ext4 on an image file failed"
vs_losetup "$T/fs.img"
vs_blkmount "$LOOPDEV" "$FS"

# du and find exit non-zero when a file goes away under them (a spare being
# given back): the total they print is still the one wanted
store_du() { { du -sb "$STORE" 2>/dev/null || true; } | cut -f1; }
fs_avail() { df -B1 --output=avail "$FS" | tail -n 1 | tr -d ' '; }
nspares() { { find "$STORE/spare" -name '*.spare' 2>/dev/null || true; } | wc -l; }

# freed WHAT DELETED DU0 DF0: wait (30 s at most) until du of the store has
# dropped and the file system's free space has grown, each by at least 90%
# of DELETED bytes, from DU0 and DF0.  Spares stay within their bound all
# along.  Then the mount's df must show what the host's does: spares are
# used space.
freed() {
	local what=$1 deleted=$2 du0=$3 df0=$4 want t0 du_drop df_gain n maxn=0
	want=$((deleted * 9 / 10))
	t0=$SECONDS
	while :; do
		du_drop=$((du0 - $(store_du)))
		df_gain=$(($(fs_avail) - df0))
		n=$(nspares)
		((n > maxn)) && maxn=$n
		((du_drop >= want && df_gain >= want)) && break
		((SECONDS - t0 < 30 * VS_TIME_SCALE)) || break
		sleep 0.5
	done
	note "$what: deleted $((deleted / MiB)) MiB; after $((SECONDS - t0)) s the store is" \
	     "$((du_drop / MiB)) MiB smaller, the file system has $((df_gain / MiB)) MiB more free;" \
	     "at most $maxn spare chunk file(s) seen"
	((maxn <= SPARE_MAX)) || fail "$what: $maxn spare chunk files, more than $SPARE_MAX"
	((du_drop >= want)) ||
		fail "$what: du -sb STORE dropped by $du_drop bytes in 30 s, want >= $want" \
		     "(90% of $deleted deleted); $(nspares) spare chunk files hold" \
		     "$(du -sb "$STORE/spare" | cut -f1) bytes"
	((df_gain >= want)) ||
		fail "$what: df of the store's file system gained $df_gain bytes in 30 s, want >= $want"
	assert_df_same "$MNT" "$FS" "$what"
}

# 1 GiB of random data, written three times below
head -c $GiB /dev/urandom >"$T/data"

vs_mount "$STORE" "$MNT" -o gc_interval=2

# 1. A volume, its snapshot and a linked clone of that, all deleted: the
#    data written is freed whole (the issue's sequence).
truncate -s 2G "$MNT/vm1.img"
dd if="$T/data" of="$MNT/vm1.img" bs=1M conv=notrunc,fsync status=none
mkdir "$MNT/.snapshots/vm1.img@base"
cp "$MNT/.snapshots/vm1.img@base/vm1.img" "$MNT/vm2.img"
du0=$(store_du) df0=$(fs_avail)
rm "$MNT/vm1.img" "$MNT/vm2.img"
rmdir "$MNT/.snapshots/vm1.img@base"
freed "rm of a volume and its clone, rmdir of their snapshot" $GiB "$du0" "$df0"

# 2. rm of a volume
dd if="$T/data" of="$MNT/vm3.img" bs=1M conv=fsync status=none
du0=$(store_du) df0=$(fs_avail)
rm "$MNT/vm3.img"
freed "rm of a volume" $GiB "$du0" "$df0"

# 3. PUNCH_HOLE of 896 MiB of a 1 GiB volume.  The last chunk file of a
#    write stays the active one, and its space comes back only once it is
#    full (or at the next mount): punch the head, keep the tail.
dd if="$T/data" of="$MNT/vm4.img" bs=1M conv=fsync status=none
du0=$(store_du) df0=$(fs_avail)
fallocate -p -o 0 -l $((896 * MiB)) "$MNT/vm4.img"
freed "PUNCH_HOLE of 896 MiB" $((896 * MiB)) "$du0" "$df0"
cmp -s -i $((896 * MiB)) "$T/data" "$MNT/vm4.img" || fail "data after the punched range differs"
cmp -s -n $((896 * MiB)) /dev/zero "$MNT/vm4.img" || fail "the punched range does not read as zeros"

# 4. Small writes, each synced, over data a snapshot holds (so nothing is
#    collected and no removed chunk file becomes a spare): the next chunk
#    file is written ahead as a spare, within the bound, and given back once
#    the writes stop.
prepared() { "$VSNAPCTL" metrics "$MNT" | awk '$1 ~ /^vsnapfs_spares_prepared_total/ { print $2 }'; }
mkdir "$MNT/.snapshots/vm4.img@held"
p0=$(prepared)
[ -n "$p0" ] || fail "vsnapctl metrics has no vsnapfs_spares_prepared_total"
# parts 1-3 wrote big runs with one fsync each: nothing was written ahead
((p0 == 0)) || fail "$p0 spare(s) written ahead for writes of 1 MiB with one fsync"
t0=$SECONDS                     # what parts 1-3 kept is given back first
while (($(nspares) > 0)) && ((SECONDS - t0 < 30 * VS_TIME_SCALE)); do sleep 0.5; done
maxn=0 t0=$SECONDS
dd if="$T/data" of="$MNT/vm4.img" bs=16k count=8000 oflag=dsync conv=notrunc status=none &
ddpid=$!
while kill -0 $ddpid 2>/dev/null; do
	n=$(nspares)
	((n > maxn)) && maxn=$n
	sleep 0.2
done
wait $ddpid || fail "dd oflag=dsync into vm4.img failed"
p1=$(prepared)
note "8000 writes of 16 KiB, each synced, in $((SECONDS - t0)) s: $((p1 - p0)) spare(s)" \
     "written ahead, at most $maxn spare chunk file(s) seen"
((p1 > p0)) || fail "no spare chunk file was written ahead for 8000 synced 16 KiB writes"
((maxn <= SPARE_MAX)) || fail "$maxn spare chunk files, more than $SPARE_MAX"
t0=$SECONDS
while (($(nspares) > 0)) && ((SECONDS - t0 < 30 * VS_TIME_SCALE)); do sleep 0.5; done
(($(nspares) == 0)) || fail "$(nspares) spare chunk files still kept 30 s after the writes stopped"
cmp -s -n $((8000 * 16384)) "$T/data" "$MNT/vm4.img" || fail "vm4.img differs from what dd wrote"

vs_umount "$MNT"
"$VSNAPCTL" check "$STORE" >/dev/null || fail "vsnapctl check not clean"
(($(nspares) == 0)) || fail "$(nspares) spare chunk files left after unmount"
pass
