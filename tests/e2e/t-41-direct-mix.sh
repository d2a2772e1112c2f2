#!/bin/bash
# QEMU-style O_DIRECT writers and a buffered opener of the same volume, in
# other processes, see each other's data.  An O_DIRECT open is direct_io with
# parallel direct writes (src/fs/fs.c, reply_opened); a buffered open keeps
# its pages in the kernel's page cache of the inode.  While both are open the
# kernel puts the inode in its caching io mode (direct writes then take the
# inode lock exclusive) and drops the written range from the page cache
# (docs/performance.md, "FUSE levers (issue 13)").  The buffered opener here
# stays open throughout, so nothing is re-read at an open: what it reads
# after a direct write is what the kernel and the daemon give it then.
. "$(dirname "$0")/lib.sh"

command -v qemu-io >/dev/null || skip "qemu-io missing (install qemu-utils)"
command -v fio >/dev/null || skip "fio missing (install fio)"
FDIO=$TOOLS/fdio
[ -x "$FDIO" ] || fail "$FDIO not built (make $B/tools/fdio)"

STORE=$T/store
MNT=$T/mnt
VOL=$MNT/disk.img
vs_mount "$STORE" "$MNT"
truncate -s 64M "$VOL"
qemu-io -f raw -c 'write -P 0x11 0 16M' "$VOL" >"$T/qio" 2>&1 ||
	fail "buffered qemu-io write: $(cat "$T/qio")"

# The buffered opener: a coprocess holding one open of the volume.
coproc HOLD { exec "$FDIO" "$VOL"; }
# shellcheck disable=SC2153 # HOLD_PID is set by coproc; bash unsets it when the coprocess ends
hold_pid=$HOLD_PID
vs_track_pid "$hold_pid"
# hold CMD...: one command to the buffered opener; prints its answer
hold() {
	local line
	echo "$*" >&"${HOLD[1]}"
	read -r -t $((30 * VS_TIME_SCALE)) line <&"${HOLD[0]}" || fail "fdio: no answer to '$*'"
	echo "$line"
}
# hold_ok WHAT CMD...: the answer must be "ok"
hold_ok() {
	local what=$1 got
	shift
	got=$(hold "$@")
	assert_eq "$got" ok "$what"
}
# direct_hash OFF LEN: hash of the bytes read by a new O_DIRECT open
direct_hash() {
	printf 'h %s %s\nq\n' "$1" "$2" | "$FDIO" -d "$VOL" | sed -n 2p
}
read -r -t $((30 * VS_TIME_SCALE)) line <&"${HOLD[0]}" || fail "fdio did not start"
assert_eq "$line" ready "fdio start"
hold_ok "buffered read of the first data (fills the page cache)" r 0 16M 11

# ---- O_DIRECT writes (qemu-io -n: cache=none), aio=native and aio=threads --
qemu-io -f raw -n -i native -c 'aio_write -P 0xab 1M 1M' -c 'aio_write -P 0xac 2M 1M' \
	-c aio_flush "$VOL" >"$T/qio" 2>&1 || fail "qemu-io cache=none aio=native: $(cat "$T/qio")"
qemu-io -f raw -n -c 'aio_write -P 0xa1 4M 256k' -c 'aio_write -P 0xa2 5M 256k' \
	-c 'aio_write -P 0xa3 6M 256k' -c 'aio_write -P 0xa4 7M 256k' -c aio_flush \
	"$VOL" >"$T/qio" 2>&1 || fail "qemu-io cache=none aio=threads: $(cat "$T/qio")"
hold_ok "buffered read of a range written O_DIRECT (aio=native)" r 1M 1M ab
hold_ok "buffered read of a range written O_DIRECT (aio=native, second)" r 2M 1M ac
for i in 1 2 3 4; do
	hold_ok "buffered read of a range written O_DIRECT (aio=threads, $i)" r $((3 + i))M 256k a$i
	hold_ok "buffered read after that range, not written" r $(((3 + i) * 1024 + 256))k 768k 11
done
hold_ok "buffered read before the written ranges" r 0 1M 11
hold_ok "buffered read after the written ranges" r 8M 8M 11

# ---- a buffered write, read O_DIRECT by another process ----------------------
hold_ok "buffered write" w 9M 64k cd
qemu-io -f raw -n -c 'read -P 0xcd 9M 64k' -c 'read -P 0x11 10M 1M' "$VOL" >"$T/qio" 2>&1 ||
	fail "O_DIRECT read of a buffered write: $(cat "$T/qio")"

# ---- four O_DIRECT writers on one file while the buffered open stays -------
# fio's jobs write disjoint 2 MiB regions of [16M, 24M) at random and verify
# them with O_DIRECT reads; the buffered opener must then read the same bytes.
hold_ok "buffered read of the fio region before (zeros)" r 16M 8M 00
with_deadline 120 fio --name=mix --filename="$VOL" --rw=randwrite --bs=4k --direct=1 \
	--ioengine=psync --numjobs=4 --thread --offset=16M --size=2M --offset_increment=2M \
	--verify=crc32c --do_verify=1 --verify_state_save=0 --randrepeat=1 >"$T/fio" 2>&1 ||
	fail "fio O_DIRECT writers: $(tail -n 20 "$T/fio")"
want=$(direct_hash 16M 8M)
[ -n "$want" ] || fail "O_DIRECT hash of the fio region failed"
assert_eq "$(hold h 16M 8M)" "$want" "buffered view of the fio region against the O_DIRECT view"
hold_ok "the region before fio's, unchanged" r 10M 6M 11

# ---- and with no buffered open: parallel direct writes, then a new open ----
echo q >&"${HOLD[1]}"
vs_wait_pid "$hold_pid" 10 || fail "fdio did not exit"
assert_eq "$VS_STATUS" 0 "fdio exit status"
with_deadline 120 fio --name=par --filename="$VOL" --rw=randwrite --bs=4k --direct=1 \
	--ioengine=psync --numjobs=4 --thread --offset=32M --size=2M --offset_increment=2M \
	--verify=crc32c --do_verify=1 --verify_state_save=0 --randrepeat=1 >"$T/fio" 2>&1 ||
	fail "fio parallel O_DIRECT writers: $(tail -n 20 "$T/fio")"
want=$(direct_hash 32M 8M)
got=$(printf 'h 32M 8M\nq\n' | "$FDIO" "$VOL" | sed -n 2p)
assert_eq "$got" "$want" "a new buffered open against the O_DIRECT view after parallel writes"

vs_umount "$MNT"
pass
