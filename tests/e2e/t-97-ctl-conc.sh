#!/bin/bash
# The control channel serves several clients at once: three clients that
# connect, send a request and then sit idle (a server of one connection at
# a time waited 10 s for each one's next request) hold up neither status,
# iostat nor gc; an iostat that repeats runs beside status and gc calls;
# at most 8 connections are served at once, a ninth is told so in one line,
# and once the clients go the slots serve again; and the unmount ends the
# idle connections instead of waiting for them.
. "$(dirname "$0")/lib.sh"

STORE=$T/store
MNT=$T/mnt
mkdir -p "$MNT"
vs_mount "$STORE" "$MNT" -o gc_interval=3600
dd if=/dev/urandom of="$MNT/v.img" bs=1M count=2 conv=fsync status=none

holders=()
for i in 1 2 3; do
	"$TOOLS/ctlflood" "$STORE/ctl.sock" 1 >"$T/hold$i.out" 2>&1 &
	holders+=($!)
	vs_track_pid $!
done
for i in 1 2 3; do
	for ((n = 0; n < 100; n++)); do [ -s "$T/hold$i.out" ] && break; sleep 0.1; done
	grep -qx "sent 1" "$T/hold$i.out" || fail "idle client $i: $(cat "$T/hold$i.out")"
done
# three idle connections are open: each call below needs a fourth
with_deadline 15 "$VSNAPCTL" status "$MNT" >"$T/status.out" 2>&1 ||
	fail "status beside idle clients: $(cat "$T/status.out")"
with_deadline 15 "$VSNAPCTL" iostat "$MNT" >"$T/iostat.out" 2>&1 ||
	fail "iostat beside idle clients: $(cat "$T/iostat.out")"
with_deadline 15 "$VSNAPCTL" gc "$MNT" >"$T/gc.out" 2>&1 ||
	fail "gc beside idle clients: $(cat "$T/gc.out")"

# an iostat every second, and meanwhile status and gc
"$VSNAPCTL" iostat -H "$MNT" 1 3 >"$T/loop.out" 2>&1 &
IOSTAT=$!
vs_track_pid $IOSTAT
for i in 1 2 3; do
	"$VSNAPCTL" status --json "$MNT" >"$T/s$i.json" 2>&1 || fail "status $i: $(cat "$T/s$i.json")"
	"$VSNAPCTL" gc "$MNT" >"$T/gc$i.out" 2>&1 || fail "gc $i: $(cat "$T/gc$i.out")"
done
vs_wait_pid $IOSTAT 30 || fail "iostat 1 3 still running after 30 s"
[ "$VS_STATUS" = 0 ] || fail "iostat 1 3 failed: $(cat "$T/loop.out")"
assert_eq "$(grep -c '^/v.img ' "$T/loop.out")" 3 "rows of /v.img in iostat 1 3"

for p in "${holders[@]}"; do
	kill -9 "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
done
holders=()

# eight idle clients fill every slot: a ninth connection is refused, with
# the reason; if the check came so late that the daemon had already
# dropped them (10 s idle), the refusal cannot be seen, and that is said
start=$SECONDS
cap=()
for i in $(seq 11 18); do
	"$TOOLS/ctlflood" "$STORE/ctl.sock" 1 >"$T/hold$i.out" 2>&1 &
	cap+=($!)
	vs_track_pid $!
done
for i in $(seq 11 18); do
	for ((n = 0; n < 100; n++)); do [ -s "$T/hold$i.out" ] && break; sleep 0.1; done
done
if "$VSNAPCTL" status "$MNT" >"$T/ninth.out" 2>&1; then
	[ $((SECONDS - start)) -ge 9 ] || fail "a ninth connection was served beside 8 idle ones"
	note "the 8 idle clients were dropped before the ninth came: the cap was not seen"
else
	grep -q "too many control connections at once" "$T/ninth.out" ||
		fail "the ninth connection: $(cat "$T/ninth.out")"
	assert_eq "$(wc -l <"$T/ninth.out")" 1 "the refusal of a ninth connection: one line"
fi
for p in "${cap[@]}"; do
	kill -9 "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
done
with_deadline 15 "$VSNAPCTL" status "$MNT" >"$T/after.out" 2>&1 ||
	fail "status once the idle clients are gone: $(cat "$T/after.out")"

# idle clients again, left connected: the unmount does not wait for them
for i in 4 5; do
	"$TOOLS/ctlflood" "$STORE/ctl.sock" 1 >"$T/hold$i.out" 2>&1 &
	holders+=($!)
	vs_track_pid $!
	for ((n = 0; n < 100; n++)); do [ -s "$T/hold$i.out" ] && break; sleep 0.1; done
done
vs_umount "$MNT"         # fails if the daemon is still there 30 s later
for p in "${holders[@]}"; do
	kill -9 "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
done
pass
