#!/bin/bash
# The control channel (STORE/ctl.sock) and vsnapctl gc: the socket is there
# while the store is mounted, mode 0600, and gone after unmount; a user
# other than root and the daemon's is refused; vsnapctl gc runs a pass in
# the daemon and reports what came back: a volume overwritten once leaves
# its first copy as garbage, which no background pass collects here
# (gc_interval=3600, fewer new chunk files than trigger one), so the space
# comes back only through vsnapctl gc.  A client that never reads its
# replies is dropped: other calls and the unmount go on.  Unmounted, gc is
# refused.
. "$(dirname "$0")/lib.sh"

[ -x "$VSNAPCTL" ] || fail "$VSNAPCTL not built"

STORE=$T/store
MNT=$T/mnt
M=$((1024 * 1024))
mkdir -p "$MNT"
vs_mount "$STORE" "$MNT" -o gc_interval=3600,spare_chunks=0

[ -S "$STORE/ctl.sock" ] || fail "no control socket in the mounted store"
assert_eq "$(stat -c %a "$STORE/ctl.sock")" 600 "the control socket's mode"

# the passes that follow the mount's first one are over: from here on only
# vsnapctl gc starts one
sleep 3
# 80 MiB written twice: the first copy (about 1.5 chunk files) is garbage
for i in 1 2; do
	dd if=/dev/urandom of="$MNT/v.img" bs=1M count=80 conv=notrunc,fsync status=none
done
"$VSNAPCTL" gc --json "$MNT" >"$T/gc.json" 2>"$T/gc.err" || fail "vsnapctl gc: $(cat "$T/gc.err")"
note "$(cat "$T/gc.json")"
removed=$(sed -n 's/.*"removed_chunks":\([0-9]*\).*/\1/p' "$T/gc.json")
freed=$(sed -n 's/.*"freed_bytes":\([0-9]*\).*/\1/p' "$T/gc.json")
[ "${removed:-0}" -ge 1 ] || fail "gc removed no chunk file: $(cat "$T/gc.json")"
[ "${freed:-0}" -ge $((32 * M)) ] || fail "gc freed less than 32 MiB: $(cat "$T/gc.json")"
"$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 || fail "check after gc: $(cat "$T/check.out")"

# the human line
"$VSNAPCTL" gc "$MNT" >"$T/gc.txt" 2>&1 || fail "vsnapctl gc (text): $(cat "$T/gc.txt")"
grep -qE '^gc: moved [0-9]+ live block\(s\), removed [0-9]+ chunk file\(s\); chunk files .* freed\)$' \
	"$T/gc.txt" || fail "gc's line: $(cat "$T/gc.txt")"

# a client that sends requests and never reads the replies holds neither
# the other clients nor, below, the unmount: the daemon drops it
"$TOOLS/ctlflood" "$STORE/ctl.sock" 2000 >"$T/flood.out" 2>&1 &
FLOOD=$!
vs_track_pid $FLOOD
for ((i = 0; i < 50; i++)); do [ -s "$T/flood.out" ] && break; sleep 0.1; done
[ -s "$T/flood.out" ] || fail "ctlflood did not finish sending: $(cat "$T/flood.out")"
note "a client that does not read: $(cat "$T/flood.out")"
timeout 20 "$VSNAPCTL" gc "$MNT" >"$T/gc2.txt" 2>&1 ||
	fail "vsnapctl gc with a client that does not read connected: $(cat "$T/gc2.txt")"

# a user that is neither root nor the daemon's is refused
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ]; then
	chmod 755 "$T" "$STORE"
	chmod 666 "$STORE/ctl.sock"     # past the file mode: SO_PEERCRED must refuse
	if setpriv --reuid=65534 --regid=65534 --clear-groups "$VSNAPCTL" gc "$STORE" \
		>"$T/nobody.out" 2>&1; then
		fail "gc as nobody was served: $(cat "$T/nobody.out")"
	fi
	grep -q "only root and the daemon.s user may use the control channel" "$T/nobody.out" || fail "gc as nobody: $(cat "$T/nobody.out")"
	chmod 600 "$STORE/ctl.sock"
fi

vs_umount "$MNT"          # with ctlflood still connected: it must not wait for it
kill -9 $FLOOD 2>/dev/null || true
wait $FLOOD 2>/dev/null || true
[ ! -e "$STORE/ctl.sock" ] || fail "the control socket outlived the mount"
expect_errno "is not mounted" "$VSNAPCTL" gc "$STORE"
assert_eq "$(wc -l <"$T/expect.err")" 1 "gc of an unmounted store: one line"
pass
