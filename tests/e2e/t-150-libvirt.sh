#!/bin/bash
# libvirt on a mount: a real libvirtd (Debian's libvirt-daemon-system) with a
# `dir` storage pool on a vsnapfs mount, driven by virsh as an administrator
# would.  No VM is started.
#
#   - pool-define-as, pool-start, pool-list, pool-info (the capacity of the
#     store's file system, as statfs reports it); the pool lists .snapshots
#     as a volume of type dir;
#   - vol-create-as (raw: thin, and with --allocation, which reserves
#     nothing since zeros take no space), vol-info (Capacity and Allocation
#     in exact bytes) after writes, vol-resize (grow, and --shrink), data
#     kept;
#   - a snapshot taken with mkdir: Allocation of the live volume after it
#     (the SPEC: st_blocks counts every block the volume references);
#   - the snapshot cloned with cp shows up as a volume after pool-refresh,
#     with the snapshot's size and content, and nothing copied (the chunk
#     files do not grow); virsh vol-clone is a full copy (they grow by the
#     data), vol-clone --reflink is refused (EOPNOTSUPP); vol-delete of
#     .snapshots is refused while it has snapshots (ENOTEMPTY);
#   - a second pool on the snapshot's directory lists the frozen disk as a
#     volume that vol-delete, vol-wipe and vol-upload cannot change (EROFS);
#   - vol-wipe of a thin and of a fully written volume (zeros, nothing
#     allocated, the snapshot untouched), vol-delete (the snapshot still
#     readable), pool-destroy, pool-undefine;
#   - vsnapctl check is clean after the unmount.
#
# The libvirtd is private to the test and never meets a system one: it runs
# in a mount namespace of its own (unshare -m) in which /run is an empty
# tmpfs and /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and
# /var/log/libvirt are bind mounts of empty directories under $T, so its
# pool definitions and state stay under $T; its sockets are in
# $T/libvirt/sock, its config and pid file in $T/libvirt; virsh connects
# with -c to that socket.  (libvirtd running as root is always the "system"
# daemon, with no option to move its state directories; XDG_* move only a
# session daemon's, and that runs as another user.)  The vsnapfs mount is
# made before libvirtd starts, so that the namespace has it.  libvirtd is
# ended by its pid before the unmount, also when the test fails: the
# namespace's copy of the mount would keep the vsnapfs daemon running.
. "$(dirname "$0")/lib.sh"

need_root
for c in libvirtd virsh unshare; do
	command -v $c >/dev/null ||
		skip "$c missing (install libvirt-daemon-system libvirt-clients: tests/install-deps.sh)"
done
[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"
# (fails in a chroot whose / is not a mount point)
unshare --mount --propagation private true 2>"$T/unshare.err" ||
	skip "no private mount namespace for libvirtd: $(cat "$T/unshare.err")"

STORE=$T/store
MNT=$T/mnt
SNAP=$MNT/.snapshots/disk.img@s1          # the snapshot's directory
LV=$T/libvirt
SOCK=$LV/sock/libvirt-sock
URI="qemu:///system?socket=$SOCK"
MiB=$((1 << 20))
LV_PID=
LV_POOLS=()                # pools defined in the private libvirtd

# virsh_ ARGS...: virsh on the private libvirtd (a wedged daemon fails the
# call after 60 s instead of holding the test and its cleanup)
virsh_() { timeout -k 5 $((60 * VS_TIME_SCALE)) virsh -q -c "$URI" "$@"; }

# v ARGS...: virsh ARGS, its output in $T/v.out; fail with its message if it
# fails
v() {
	virsh_ "$@" >"$T/v.out" 2>"$T/v.err" || fail "virsh $*: $(head -c 400 "$T/v.err")"
}

# ---- the private libvirtd ---------------------------------------------------

lv_start() {
	local d i
	for d in /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
		# libvirtd would make a missing one on the host
		[ -d $d ] || skip "$d missing (install libvirt-daemon-system: tests/install-deps.sh)"
	done
	mkdir -p "$LV/sock" "$LV/etc" "$LV/lib" "$LV/cache" "$LV/log"
	cat >"$LV/libvirtd.conf" <<-EOF
		unix_sock_dir = "$LV/sock"
		unix_sock_ro_perms = "0700"
		unix_sock_rw_perms = "0700"
		unix_sock_admin_perms = "0700"
		auth_unix_ro = "none"
		auth_unix_rw = "none"
		log_outputs = "3:stderr"
	EOF
	# shellcheck disable=SC2016 # expanded by the inner shell
	unshare --mount --propagation private bash -euc '
		mount -t tmpfs -o mode=0755 tmpfs /run
		mount --bind "$1/etc" /etc/libvirt
		mount --bind "$1/lib" /var/lib/libvirt
		mount --bind "$1/cache" /var/cache/libvirt
		mount --bind "$1/log" /var/log/libvirt
		exec libvirtd --config "$1/libvirtd.conf" --pid-file "$1/libvirtd.pid"
	' lv "$LV" >"$LV/libvirtd.log" 2>&1 &
	LV_PID=$!             # unshare and bash exec: this is libvirtd's pid
	for ((i = 0; i < 200 * VS_TIME_SCALE; i++)); do
		if [ -S "$SOCK" ] && virsh_ uri >/dev/null 2>&1; then
			note "private libvirtd $(libvirtd --version | awk '{ print $NF }'), pid $LV_PID"
			return 0
		fi
		if ! _vs_alive "$LV_PID"; then
			LV_PID=
			fail "libvirtd exited before answering: $(tail -n 20 "$LV/libvirtd.log")"
		fi
		sleep 0.05
	done
	fail "libvirtd not answering on $SOCK after $((10 * VS_TIME_SCALE)) s"
}

# lv_stop: destroy and undefine the pools still defined, end libvirtd by its
# pid (SIGTERM, SIGKILL after 10 s).  Safe to call twice, and from the trap.
lv_stop() {
	local p
	[ -n "$LV_PID" ] || return 0
	for p in "${LV_POOLS[@]}"; do
		virsh_ pool-destroy "$p" >/dev/null 2>&1 || true
		virsh_ pool-undefine "$p" >/dev/null 2>&1 || true
	done
	LV_POOLS=()
	kill -TERM "$LV_PID" 2>/dev/null || true
	if ! _vs_wait_pid "$LV_PID" $((10 * VS_TIME_SCALE)); then
		note "libvirtd (pid $LV_PID) still running 10 s after SIGTERM: SIGKILL"
		kill -KILL "$LV_PID" 2>/dev/null || true
		_vs_wait_pid "$LV_PID" 5 || true
	fi
	LV_PID=
}

# libvirtd goes before lib.sh's cleanup unmounts anything; that cleanup gets
# the exit status and the failed line as they were
# shellcheck disable=SC2317 # called from the EXIT trap
_lv_exit() {
	local rc=$1
	trap - ERR
	set +e
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -s "$LV/libvirtd.log" ]; then
		echo "---- libvirtd log ----"
		tail -n 20 "$LV/libvirtd.log"
	fi
	lv_stop
	return "$rc"
}
trap '_lv_exit $?; _vs_cleanup' EXIT

# ---- helpers ----------------------------------------------------------------

# vinfo VOL FIELD [POOL]: FIELD (Capacity, Allocation) of vol-info, in bytes
vinfo() {
	v vol-info --bytes --pool "${3:-vsnap}" "$1"
	awk -v f="$2:" '$1 == f && $3 == "bytes" { print $2 }' "$T/v.out"
}

# assert_vol VOL CAPACITY ALLOCATION WHAT
assert_vol() {
	assert_eq "$(vinfo "$1" Capacity)" "$2" "$4: vol-info Capacity of $1"
	assert_eq "$(vinfo "$1" Allocation)" "$3" "$4: vol-info Allocation of $1"
}

# vols [POOL]: the pool's volume names, sorted, on one line
vols() {
	v vol-list --pool "${1:-vsnap}"
	awk 'NF { print $1 }' "$T/v.out" | sort | tr '\n' ' '
}

# chunk_bytes: the bytes of every chunk file of the store.  They are
# append-only: data a copy writes makes them grow.  Nothing is deleted
# while this is used, so no GC pass moves or removes anything meanwhile.
chunk_bytes() {
	find "$STORE/chunks" -maxdepth 1 -name '*.chunk' -printf '%s\n' |
		awk '{ s += $1 } END { printf "%d\n", s }'
}

# has_pattern FILE: FILE holds $T/pattern at 1 MiB, where it was written
has_pattern() {
	cmp -s <(dd if="$1" bs=1M skip=1 count=8 status=none) "$T/pattern"
}

# is_zero FILE: FILE holds only zero bytes
is_zero() {
	cmp -s -n "$(stat -c %s "$1")" "$1" /dev/zero
}

# ---- the pool ---------------------------------------------------------------

vs_mount "$STORE" "$MNT"
lv_start

v pool-define-as vsnap dir --target "$MNT"
LV_POOLS+=(vsnap)
v pool-start vsnap
v pool-list --all --name
assert_eq "$(tr -d ' ' <"$T/v.out")" vsnap "pool-list --all --name"
v pool-info --bytes vsnap
grep -q '^State: *running$' "$T/v.out" || fail "pool-info: not running: $(cat "$T/v.out")"
assert_eq "$(awk '$1 == "Capacity:" { print $2 }' "$T/v.out")" \
	$(($(stat -f -c '%b * %S' "$STORE"))) "pool-info Capacity (the store's file system)"
# a dir pool lists directories too: .snapshots, and every subdirectory
assert_eq "$(vols)" ".snapshots " "volumes of a new pool"
v vol-info --pool vsnap .snapshots
grep -q '^Type: *dir$' "$T/v.out" || fail "vol-info .snapshots: $(cat "$T/v.out")"

# ---- create, info, resize ---------------------------------------------------

v vol-create-as vsnap disk.img 256M --format raw --allocation 0
assert_vol disk.img $((256 * MiB)) 0 "a new thin volume"
assert_eq "$(stat -c %s "$MNT/disk.img")" $((256 * MiB)) "size of the new volume's file"
# preallocation writes zeros (or fallocates): zeros take no space
v vol-create-as vsnap pre.img 64M --format raw --allocation 64M
assert_vol pre.img $((64 * MiB)) 0 "a volume created with --allocation 64M"
is_zero "$MNT/pre.img" || fail "pre.img is not all zeros"

head -c $((8 * MiB)) /dev/urandom >"$T/pattern"
dd if="$T/pattern" of="$MNT/disk.img" bs=1M seek=1 conv=notrunc,fsync status=none
assert_vol disk.img $((256 * MiB)) $((8 * MiB)) "8 MiB written at 1 MiB"
v vol-resize --pool vsnap disk.img 512M
assert_vol disk.img $((512 * MiB)) $((8 * MiB)) "after vol-resize 512M"
v vol-resize --pool vsnap disk.img 384M --shrink
assert_vol disk.img $((384 * MiB)) $((8 * MiB)) "after vol-resize 384M --shrink"
has_pattern "$MNT/disk.img" || fail "disk.img's data changed by the resizes"

# ---- a snapshot, and its linked clone as a volume ---------------------------

mkdir "$SNAP"
has_pattern "$SNAP/disk.img" || fail "the snapshot does not hold the data written before it"
# SPEC st_blocks (the lead's change, issue 15): a live volume counts every
# block it references, so Allocation after a snapshot is the written size
# (before that change it was 0: only blocks written since the snapshot).
assert_vol disk.img $((384 * MiB)) $((8 * MiB)) "after mkdir $SNAP"
v vol-info --pool vsnap disk.img
note "vol-info disk.img after the snapshot: $(grep -E '^(Capacity|Allocation):' "$T/v.out" | tr -s ' ' | tr '\n' ';')"
v pool-refresh vsnap
assert_eq "$(vols)" ".snapshots disk.img pre.img " "volumes after the snapshot"

c0=$(chunk_bytes)
cp "$SNAP/disk.img" "$MNT/clone.img"
grown=$(($(chunk_bytes) - c0))
[ $grown -lt $MiB ] || fail "cp of the snapshot wrote $grown bytes of data: not a linked clone"
v pool-refresh vsnap
assert_eq "$(vols)" ".snapshots clone.img disk.img pre.img " "volumes after cp of the snapshot and pool-refresh"
# SPEC st_blocks, as above: the clone references the snapshot's 8 MiB
assert_vol clone.img $((384 * MiB)) $((8 * MiB)) "the linked clone"
cmp "$MNT/clone.img" "$SNAP/disk.img" || fail "the clone differs from the snapshot"

# virsh vol-clone reads and writes the data: a full copy
c0=$(chunk_bytes)
v vol-clone --pool vsnap disk.img full.img
grown=$(($(chunk_bytes) - c0))
[ $grown -ge $((8 * MiB)) ] || fail "vol-clone wrote only $grown bytes of data: not a full copy"
assert_vol full.img $((384 * MiB)) $((8 * MiB)) "the full copy made by vol-clone"
cmp "$MNT/full.img" "$MNT/disk.img" || fail "vol-clone's copy differs from disk.img"
note "chunk files grew by $grown bytes for vol-clone of 8 MiB of data, by less than 1 MiB for cp"
# vol-clone --reflink asks for FICLONE, which no FUSE file system has
expect_errno "Operation not supported" virsh_ vol-clone --pool vsnap --reflink disk.img reflink.img
[ ! -e "$MNT/reflink.img" ] || fail "a failed vol-clone --reflink left reflink.img behind"
# the control directory listed as a volume cannot be deleted through libvirt
expect_errno "Directory not empty" virsh_ vol-delete --pool vsnap .snapshots
[ -d "$SNAP" ] || fail "vol-delete .snapshots removed the snapshot"

# a pool on the snapshot's directory: the frozen disk is a volume there,
# which nothing through libvirt can change
v pool-define-as snap dir --target "$SNAP"
LV_POOLS+=(snap)
v pool-start snap
assert_eq "$(vols snap)" "disk.img " "volumes of the pool on $SNAP"
assert_eq "$(vinfo disk.img Capacity snap)" $((384 * MiB)) "vol-info Capacity of the snapshot"
expect_errno "Read-only file system" virsh_ vol-delete --pool snap disk.img
expect_errno "Read-only file system" virsh_ vol-wipe --pool snap disk.img
expect_errno "Read-only file system" virsh_ vol-upload --pool snap disk.img "$T/pattern"
has_pattern "$SNAP/disk.img" || fail "the snapshot changed through its pool"
v pool-destroy snap
v pool-undefine snap
LV_POOLS=(vsnap)

# ---- wipe, delete -----------------------------------------------------------

v vol-wipe --pool vsnap disk.img
assert_vol disk.img $((384 * MiB)) 0 "after vol-wipe"
is_zero "$MNT/disk.img" || fail "disk.img is not all zeros after vol-wipe"
has_pattern "$SNAP/disk.img" || fail "the snapshot changed with vol-wipe of its volume"
# a volume with every block written looks dense: libvirt writes zeros over
# it (a thin one it truncates), and zeros take no space
v vol-create-as vsnap dense.img 4M --format raw
dd if=/dev/urandom of="$MNT/dense.img" bs=1M count=4 conv=notrunc,fsync status=none
assert_vol dense.img $((4 * MiB)) $((4 * MiB)) "a fully written 4 MiB volume"
v vol-wipe --pool vsnap dense.img
assert_vol dense.img $((4 * MiB)) 0 "a fully written 4 MiB volume after vol-wipe"
is_zero "$MNT/dense.img" || fail "dense.img is not all zeros after vol-wipe"

for f in clone.img full.img disk.img pre.img dense.img; do
	v vol-delete --pool vsnap $f
	[ ! -e "$MNT/$f" ] || fail "$f still there after vol-delete"
done
v pool-refresh vsnap
assert_eq "$(vols)" ".snapshots " "volumes after vol-delete of all"
has_pattern "$SNAP/disk.img" || fail "the snapshot changed with vol-delete of its volume"

v pool-destroy vsnap
v pool-undefine vsnap
LV_POOLS=()
v pool-list --all --name
assert_eq "$(tr -d ' \n' <"$T/v.out")" "" "pool-list --all after pool-undefine"
lv_stop

rmdir "$SNAP"
vs_umount "$MNT"
with_deadline 60 "$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 ||
	fail "vsnapctl check $STORE: $(tail -n 20 "$T/check.out")"
pass
