#!/bin/bash
# For the people who run it: -o nocreate refuses a missing or empty store
# with one line and writes nothing; sd_notify READY=1 reaches NOTIFY_SOCKET
# only once the mount is there (-f, and daemonized with MAINPID= the
# daemon), STOPPING=1 at unmount; with stderr the journal's stream
# (JOURNAL_STREAM) a damaged block is logged to the journal with VOLUME,
# OFFSET, CHUNK and SLOT fields and the words "checksum mismatch";
# make install puts the mount helper where mount(8) finds it, and an
# /etc/fstab line (mount --fstab) and "mount -t fuse.vsnapfs" mount through
# it; the installed units pass systemd-analyze verify (with their man
# pages); the man pages render without warnings; make uninstall leaves no
# file behind.
#
# systemd does not run here: its two sockets are played by
# tests/tools/dgramrecv, journald's at its fixed path in a tmpfs over /run,
# and the installed /sbin is an overlay over the real one, both in a
# private mount namespace of this test (it re-runs itself in one), whose
# mounts end with it.
if [ -z "${VS_IN_MOUNT_NS:-}" ]; then
	if [ "$(id -u)" = 0 ] && unshare --mount --propagation private true 2>/dev/null; then
		VS_IN_MOUNT_NS=1 exec unshare --mount --propagation private bash "$0" "$@"
	fi
	echo "SKIP $(basename "$0" .sh): needs root and unshare --mount"
	exit 77
fi
. "$(dirname "$0")/lib.sh"

SRC=$(cd "$(dirname "$0")/../.." && pwd)
# /run of this namespace only: journald's socket is ours, and mount(8)'s
# utab entries stay off the host's
mount -t tmpfs -o mode=755 vs-run /run
STORE=$T/store
MNT=$T/mnt
BS=4096
mkdir -p "$MNT"
[ -x "$TOOLS/dgramrecv" ] || fail "$TOOLS/dgramrecv not built"

# wait_for FILE TEXT WHAT: FILE gets a line with TEXT (10 s deadline)
wait_for() {
	local i
	for ((i = 0; i < 200 * VS_TIME_SCALE; i++)); do
		grep -qF -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.05
	done
	fail "$3: no '$2' in $1 after $((10 * VS_TIME_SCALE)) s: $(head -c 600 "$1" 2>/dev/null)"
}

# listen SOCKET OUT [MOUNTPOINT]: dgramrecv in the background
listen() {
	rm -f "$1"
	"$TOOLS/dgramrecv" "$1" ${3:+"$3"} >"$2" 2>&1 &
	vs_track_pid $!
	LISTENER=$!
	wait_for "$2" listening "dgramrecv $1"
}

# wait_gone PID WHAT: a daemon that is not our child exits (10 s deadline)
wait_gone() {
	local i
	for ((i = 0; i < 200 * VS_TIME_SCALE; i++)); do
		[ -e "/proc/$1" ] || return 0
		sleep 0.05
	done
	fail "the daemon (pid $1) still runs 10 s after $2"
}

stop_listener() {
	kill "$LISTENER"
	vs_wait_pid "$LISTENER" 5 || fail "dgramrecv (pid $LISTENER) did not exit"
}

# ==== -o nocreate ===============================================================
"$VSNAPFS" --help >"$T/help.out" 2>&1
grep -q -- "-o nocreate " "$T/help.out" || fail "--help does not list -o nocreate"
# (daemonized, so that a wrong success returns instead of serving; the trap
# unmounts $MNT then)
_VS_MNTS+=("$MNT")
expect_errno "no such directory, and -o nocreate forbids creating a store" \
	with_deadline 20 "$VSNAPFS" -o nocreate "$T/typo" "$MNT"
[ ! -e "$T/typo" ] || fail "-o nocreate created $T/typo"
[ "$(wc -l <"$T/expect.err")" = 1 ] || fail "more than one line: $(cat "$T/expect.err")"
mountpoint -q "$MNT" && fail "mounted on $MNT after a refusal"
mkdir "$T/empty"
expect_errno "is empty, and -o nocreate forbids creating a store there" \
	with_deadline 20 "$VSNAPFS" -o nocreate "$T/empty" "$MNT"
[ -z "$(ls -A "$T/empty")" ] || fail "-o nocreate wrote into $T/empty: $(ls -A "$T/empty")"
[ "$(wc -l <"$T/expect.err")" = 1 ] || fail "more than one line: $(cat "$T/expect.err")"
# (in the foreground too)
expect_errno "nocreate forbids" with_deadline 20 "$VSNAPFS" -f -o nocreate "$T/typo" "$MNT"
[ ! -e "$T/typo" ] || fail "-o nocreate (-f) created $T/typo"

# a store to work with: made without nocreate, mounted with it
vs_mount "$STORE" "$MNT" -o block_size=$BS
head -c $((4 * BS)) /dev/urandom >"$T/data"
dd if="$T/data" of="$MNT/vm.img" bs=$BS oflag=direct conv=fsync status=none
vs_umount "$MNT"

# ==== sd_notify =================================================================
# -f: the daemon itself says READY=1 once mounted, STOPPING=1 at unmount
listen "$T/notify.sock" "$T/notify.out" "$MNT"
NOTIFY_SOCKET=$T/notify.sock vs_mount "$STORE" "$MNT" -o nocreate
wait_for "$T/notify.out" "mounted:" "READY=1 of vsnapfs -f"
grep -qx "READY=1" "$T/notify.out" || fail "no READY=1 line: $(cat "$T/notify.out")"
assert_eq "$(grep "^mounted:" "$T/notify.out")" "mounted: yes" "the mount when READY=1 arrived"
cmp -s "$MNT/vm.img" "$T/data" || fail "vm.img differs from what was written"
vs_umount "$MNT"
wait_for "$T/notify.out" "STOPPING=1" "vsnapfs -f at unmount"
stop_listener

# daemonized: the parent says MAINPID=daemon and READY=1 as it exits
listen "$T/notify.sock" "$T/notify2.out" "$MNT"
NOTIFY_SOCKET=$T/notify.sock "$VSNAPFS" -o nocreate "$STORE" "$MNT" ||
	fail "vsnapfs (daemonized) failed"
mountpoint -q "$MNT" || fail "vsnapfs returned before mounting"
dpid=$(cat "$STORE/lock")
vs_track_fuse "$MNT" "$dpid"
wait_for "$T/notify2.out" "mounted:" "READY=1 of the daemonized vsnapfs"
grep -qx "MAINPID=$dpid" "$T/notify2.out" ||
	fail "no MAINPID=$dpid (the daemon) before READY=1: $(cat "$T/notify2.out")"
assert_eq "$(grep "^mounted:" "$T/notify2.out")" "mounted: yes" "the mount when READY=1 arrived (daemonized)"
fusermount3 -u "$MNT"
wait_gone "$dpid" "fusermount3 -u"
wait_for "$T/notify2.out" "STOPPING=1" "the daemonized vsnapfs at unmount"
stop_listener

# without NOTIFY_SOCKET nothing is sent (and nothing breaks): the mount above
# without it worked; nothing to see

# ==== the journal ===============================================================
# damage block 2 of vm.img (slot 2 of chunk 1), then read it with stderr
# the journal's stream
C1=$STORE/chunks/0000000000000001.chunk
[ -f "$C1" ] || fail "no chunk file 1: $(ls "$STORE/chunks")"
doff=$(chunk_data_off "$C1")
printf 'X' | dd of="$C1" bs=1 seek=$((doff + 2 * BS + 100)) conv=notrunc status=none
mkdir -p /run/systemd/journal
listen /run/systemd/journal/socket "$T/journal.out"
jlog=$T/vsnapfs.$((_VS_NLOG + 1)).log     # what vs_mount names the daemon's stderr
: >"$jlog"
JOURNAL_STREAM=$(stat -c %d:%i "$jlog") vs_mount "$STORE" "$MNT" -o nocreate
expect_errno "Input/output error" dd if="$MNT/vm.img" of=/dev/null bs=$BS skip=2 count=1 \
	iflag=direct status=none
wait_for "$T/journal.out" "checksum mismatch" "the log line of the damaged block"
rec=$(awk -v RS='--\n' '/checksum mismatch/' "$T/journal.out")
for f in "PRIORITY=3" "SYSLOG_IDENTIFIER=vsnapfs" "OFFSET=$((2 * BS))" \
	"CHUNK=0000000000000001" "SLOT=2"; do
	grep -qx -- "$f" <<<"$rec" || fail "journal record without $f: $rec"
done
grep -q "^VOLUME=.*vm.img$" <<<"$rec" || fail "journal record without VOLUME=...vm.img: $rec"
grep -q "^MESSAGE=.*offset $((2 * BS)).*checksum mismatch" <<<"$rec" ||
	fail "journal MESSAGE does not say offset and checksum mismatch: $rec"
grep -q "checksum mismatch" "$jlog" && fail "the line went to stderr as well as to the journal"
vs_umount "$MNT"
# JOURNAL_STREAM naming another file (inherited from a unit by a program
# whose stderr goes elsewhere): stderr, the same words, not the journal
JOURNAL_STREAM=$(stat -c %d:%i "$T/data") vs_mount "$STORE" "$MNT" -o nocreate
expect_errno "Input/output error" dd if="$MNT/vm.img" of=/dev/null bs=$BS skip=2 count=1 \
	iflag=direct status=none
grep -q "vm.img: offset $((2 * BS)): .*checksum mismatch" "$(vs_log "$MNT")" ||
	fail "stderr without the damaged block's line: $(tail -n 5 "$(vs_log "$MNT")")"
vs_umount "$MNT"
[ "$(grep -c "checksum mismatch" "$T/journal.out")" = 1 ] ||
	fail "a daemon whose stderr is not the journal's stream wrote to the journal"
stop_listener

# ==== make install, the helper, fstab, units, uninstall ========================
ROOT=$T/root
make -s -C "$SRC" B="$B" PREFIX=/usr/local DESTDIR="$ROOT" install >"$T/install.out" 2>&1 ||
	fail "make install: $(tail -n 20 "$T/install.out")"
for f in sbin/mount.vsnapfs sbin/mount.fuse.vsnapfs usr/local/bin/vsnapfs usr/local/bin/vsnapctl \
	usr/local/share/man/man8/vsnapfs.8 usr/local/share/man/man8/vsnapctl.8 \
	usr/local/lib/systemd/system/vsnapfs@.service; do
	[ -e "$ROOT/$f" ] || fail "make install did not install /$f: $(cd "$ROOT" && find . | head -40)"
done
[ -n "$(find "$ROOT" -path '*/bash-completion/completions/vsnapctl')" ] ||
	fail "make install did not install the bash completion"

# the man pages render without a warning of groff (man --warnings: -ww)
for m in vsnapfs.8:SNAPSHOTS vsnapctl.8:"EXIT STATUS"; do
	page=$ROOT/usr/local/share/man/man8/${m%%:*}
	MANWIDTH=80 man --warnings -l "$page" >"$T/man.out" 2>"$T/man.err" ||
		fail "man -l ${m%%:*} failed: $(head -c 400 "$T/man.err")"
	[ ! -s "$T/man.err" ] || fail "man --warnings -l ${m%%:*}: $(head -c 600 "$T/man.err")"
	grep -q "^${m#*:}" "$T/man.out" || fail "${m%%:*} has no section ${m#*:}"
done

# the installed units, as an instance, with their man pages (MANPATH) and
# the daemon where the unit says, under DESTDIR (verify checks that it is
# there)
unit=$ROOT/usr/local/lib/systemd/system/vsnapfs@.service
grep -q "^ExecStart=/usr/local/bin/vsnapfs -f -o nocreate " "$unit" ||
	fail "the unit does not run the installed vsnapfs with -o nocreate: $(grep ExecStart "$unit")"
sed "s|^ExecStart=/usr/local/bin/|ExecStart=$ROOT/usr/local/bin/|" "$unit" >"$T/vsnapfs@srv-vms.service"
cp "$SRC/contrib/systemd/srv-vms.mount" "$T/srv-vms.mount"
MANPATH=$ROOT/usr/local/share/man systemd-analyze verify \
	"$T/vsnapfs@srv-vms.service" "$T/srv-vms.mount" >"$T/verify.out" 2>&1 ||
	fail "systemd-analyze verify: $(cat "$T/verify.out")"
[ ! -s "$T/verify.out" ] || fail "systemd-analyze verify warns: $(cat "$T/verify.out")"

# mount(8) finds the installed helper: /sbin seen through an overlay with it
sbin=$(readlink -f /sbin)
mount -t overlay vs-sbin -o lowerdir="$ROOT/sbin:$sbin" "$sbin" ||
	skip "overlayfs unavailable: cannot put the helper in /sbin for this test"
_VS_BLKMNTS+=("$sbin")
export VSNAPFS          # (PATH is not passed on by mount(8); the rest is)
printf '%s %s fuse.vsnapfs nocreate,nofail,relatime,x-systemd.requires=foo 0 0\n' \
	"$STORE" "$MNT" >"$T/fstab"
with_deadline 20 mount --fstab "$T/fstab" "$MNT" || fail "mount --fstab (fuse.vsnapfs) failed"
mountpoint -q "$MNT" || fail "mount --fstab returned without a mount"
grep -q " $MNT fuse.vsnapfs " /proc/mounts || fail "not a fuse.vsnapfs mount: $(grep " $MNT " /proc/mounts)"
cmp -s <(dd if="$MNT/vm.img" bs=$BS count=2 status=none) <(head -c $((2 * BS)) "$T/data") ||
	fail "vm.img mounted through fstab differs from what was written"
dpid=$(cat "$STORE/lock")
vs_track_fuse "$MNT" "$dpid"
umount "$MNT" || fail "umount $MNT failed"
wait_gone "$dpid" umount
# mount -t (both types: mount.fuse.vsnapfs and mount.vsnapfs), and a typo
# in the store's path with nocreate fails and creates nothing
for type in fuse.vsnapfs vsnapfs; do
	with_deadline 20 mount -t $type -o nocreate "$STORE" "$MNT" || fail "mount -t $type failed"
	grep -q " $MNT fuse.vsnapfs " /proc/mounts || fail "mount -t $type: no fuse.vsnapfs mount"
	dpid=$(cat "$STORE/lock")
	vs_track_fuse "$MNT" "$dpid"
	umount "$MNT" || fail "umount $MNT failed"
	wait_gone "$dpid" umount
done
rc=0
mount -t fuse.vsnapfs -o nocreate "$T/stroe" "$MNT" 2>"$T/typo.err" || rc=$?
[ $rc -ne 0 ] || fail "mount -t fuse.vsnapfs -o nocreate of a missing store succeeded"
grep -q "nocreate forbids" "$T/typo.err" || fail "the refusal does not say why: $(cat "$T/typo.err")"
[ ! -e "$T/stroe" ] || fail "mount -o nocreate created $T/stroe"
umount "$sbin"
_VS_BLKMNTS=()

make -s -C "$SRC" B="$B" PREFIX=/usr/local DESTDIR="$ROOT" uninstall >"$T/uninstall.out" 2>&1 ||
	fail "make uninstall: $(tail -n 20 "$T/uninstall.out")"
left=$(find "$ROOT" ! -type d)
[ -z "$left" ] || fail "make uninstall left: $left"
pass
