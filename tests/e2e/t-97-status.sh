#!/bin/bash
# vsnapctl status: mounted, the daemon's pid, version, store, block size,
# format, counts of volumes and snapshots, sync not failed; after vsnapctl
# gc the last pass shows (a new one, with what it did); after vsnapctl
# scrub its result shows (the same block count, none damaged), also once
# unmounted, and a scrub of the unmounted store is recorded too (in the
# index, under the store's lock).  Unmounted, status says so.  Bad input
# gets one line naming the problem, in the shared command line's words;
# metrics, send and receive refuse --json, before the command too; a scrub
# whose result cannot be recorded (read-only) says so in one line.
. "$(dirname "$0")/lib.sh"

STORE=$T/store
MNT=$T/mnt
M=$((1024 * 1024))
mkdir -p "$MNT"
vs_mount "$STORE" "$MNT" -o gc_interval=3600,spare_chunks=0

# jget FILE SECTION KEY: a number or string of the JSON status
jget() { grep -o "\"$2\":{[^}]*}" "$1" | grep -o "\"$3\":[^,}]*" | cut -d: -f2- | tr -d '"'; }

mkdir "$MNT/d"
dd if=/dev/urandom of="$MNT/d/a.img" bs=1M count=4 conv=fsync status=none
truncate -s 1G "$MNT/b.img"
mkdir "$MNT/.snapshots/one" "$MNT/d/.snapshots/a.img@two"

"$VSNAPCTL" status --json "$MNT" >"$T/s.json" 2>"$T/s.err" || fail "status --json: $(cat "$T/s.err")"
note "$(cat "$T/s.json")"
grep -q '^{"mounted":true,' "$T/s.json" || fail "status --json: not mounted?"
assert_eq "$(jget "$T/s.json" daemon pid)" "$(vs_pid "$MNT")" "the daemon's pid"
assert_eq "$(jget "$T/s.json" daemon version)" "$("$VSNAPFS" --version | grep -o '[0-9][0-9.]*' | head -n 1)" \
	"the daemon's version"
assert_eq "$(jget "$T/s.json" store path)" "$STORE" "the store"
assert_eq "$(jget "$T/s.json" store block_size_bytes)" 4096 "the block size"
assert_eq "$(jget "$T/s.json" store format_version)" 3 "the format"
assert_eq "$(jget "$T/s.json" counts volumes)" 2 "volumes"
assert_eq "$(jget "$T/s.json" counts directories)" 1 "directories"
assert_eq "$(jget "$T/s.json" counts snapshots)" 2 "snapshots"
assert_eq "$(jget "$T/s.json" sync failed)" false "the failed-sync state"
# times are *_unix_s, as list's created_unix_s
started=$(jget "$T/s.json" daemon started_unix_s || true)
[ "${started%.*}" -gt 1700000000 ] 2>/dev/null || fail "daemon.started_unix_s: '$started'"
data=$(jget "$T/s.json" space data_bytes)
[ "$data" -ge $((4 * M)) ] || fail "data in chunk files: $data, under the 4 MiB written"

# the human form: key: value lines in sections
"$VSNAPCTL" status "$MNT" >"$T/s.txt" 2>&1 || fail "status: $(cat "$T/s.txt")"
note "$(cat "$T/s.txt")"
grep -qx "store: $STORE" "$T/s.txt" || fail "status: the store line"
grep -qx "state: mounted" "$T/s.txt" || fail "status: the state line"
grep -qE "^    pid: +$(vs_pid "$MNT")$" "$T/s.txt" || fail "status: the pid"
grep -qE "^    failed: +no$" "$T/s.txt" || fail "status: the sync state"

# a GC pass through vsnapctl gc shows as the last one, after the passes before it
passes=$(jget "$T/s.json" gc passes)
t0=$(date +%s)
"$VSNAPCTL" gc "$MNT" >/dev/null 2>"$T/gc.err" || fail "gc: $(cat "$T/gc.err")"
"$VSNAPCTL" status --json "$MNT" >"$T/s2.json" 2>&1 || fail "status after gc: $(cat "$T/s2.json")"
[ "$(jget "$T/s2.json" gc passes)" -gt "$passes" ] || fail "gc passes did not grow: $(cat "$T/s2.json")"
last=$(jget "$T/s2.json" gc last_unix_s)
[ "${last%.*}" -ge "$t0" ] || fail "the last GC pass ($last) is older than vsnapctl gc ($t0)"
[ -n "$(jget "$T/s2.json" gc last_garbage_bytes)" ] || fail "no garbage figure after a pass"

# scrub's result, through the daemon
"$VSNAPCTL" status --json "$MNT" >"$T/s3.json"
[ -z "$(jget "$T/s3.json" scrub last_blocks)" ] || fail "a scrub result before any scrub"
"$VSNAPCTL" scrub --json "$MNT" >"$T/scrub.json" 2>"$T/scrub.err" || fail "scrub: $(cat "$T/scrub.err")"
blocks=$(grep -o '"blocks":[0-9]*' "$T/scrub.json" | cut -d: -f2)
[ "$blocks" -ge 1024 ] || fail "scrub verified $blocks blocks, under the 4 MiB written"
"$VSNAPCTL" status --json "$MNT" >"$T/s4.json"
assert_eq "$(jget "$T/s4.json" scrub last_blocks)" "$blocks" "the last scrub's blocks (mounted)"
assert_eq "$(jget "$T/s4.json" scrub last_damaged_blocks)" 0 "the last scrub's damage"
"$VSNAPCTL" status "$MNT" | grep -qE "^    blocks verified: +$blocks$" || fail "status: the scrub's blocks"

vs_umount "$MNT"
"$VSNAPCTL" status "$STORE" >"$T/u.txt" 2>&1 || fail "status unmounted: $(cat "$T/u.txt")"
note "$(cat "$T/u.txt")"
grep -q "^state: not mounted, cleanly unmounted" "$T/u.txt" || fail "status unmounted: the state line"
grep -qE "^    blocks verified: +$blocks$" "$T/u.txt" || fail "status unmounted: the scrub's blocks"
"$VSNAPCTL" status --json "$STORE" >"$T/u.json"
grep -q '^{"mounted":false,"clean":true,' "$T/u.json" || fail "status --json unmounted: $(cat "$T/u.json")"
assert_eq "$(jget "$T/u.json" counts snapshots)" 2 "snapshots (unmounted)"

# a scrub of the unmounted store is recorded as well, and its time is newer
before=$(jget "$T/u.json" scrub last_unix_s)
"$VSNAPCTL" scrub "$STORE" >/dev/null 2>"$T/scrub2.err" || fail "scrub unmounted: $(cat "$T/scrub2.err")"
"$VSNAPCTL" status --json "$STORE" >"$T/u2.json"
after=$(jget "$T/u2.json" scrub last_unix_s)
[ "$after" != "$before" ] || fail "the unmounted scrub was not recorded: $(cat "$T/u2.json")"
assert_eq "$(jget "$T/u2.json" scrub last_blocks)" "$blocks" "the unmounted scrub's blocks"
"$VSNAPCTL" check "$STORE" >"$T/check.out" 2>&1 || fail "check after the recorded scrub: $(cat "$T/check.out")"

# bad input: one line each, naming the real problem
expect_errno "$T/nope: no such file or directory" "$VSNAPCTL" status "$T/nope"
assert_eq "$(wc -l <"$T/expect.err")" 1 "status of a missing path: one line"
expect_errno "$T: not a vsnapfs store (no index.sqlite) and not in a vsnapfs mount" "$VSNAPCTL" status "$T"
# the shared command line's words (cli_bad), for each of status, iostat, metrics
for cmd in status iostat metrics; do
	expect_errno "vsnapctl $cmd: unknown option '--bogus'; see vsnapctl $cmd --help" \
		"$VSNAPCTL" $cmd --bogus "$STORE"
	assert_eq "$(wc -l <"$T/expect.err")" 1 "$cmd: an unknown option: one line"
done
# a bad short option inside a group is named, not the word before it
expect_errno "vsnapctl iostat: unknown option '-x'; see vsnapctl iostat --help" \
	"$VSNAPCTL" iostat --raw -xb "$STORE"
expect_errno "vsnapctl iostat: unknown option '-x'; see vsnapctl iostat --help" \
	"$VSNAPCTL" iostat "$STORE" -bx
expect_errno "vsnapctl: unknown option '-x'; see vsnapctl --help" "$VSNAPCTL" --json -xh status
# metrics prints the Prometheus format only: --json is refused, before the command too
expect_errno "vsnapctl metrics: unknown option '--json'; see vsnapctl metrics --help" \
	"$VSNAPCTL" --json metrics "$STORE"
expect_errno "vsnapctl metrics: unknown option '--json'; see vsnapctl metrics --help" \
	"$VSNAPCTL" metrics --json "$STORE"
# send and receive print no JSON: --json is refused as metrics refuses it
expect_errno "vsnapctl send: unknown option '--json'; see vsnapctl send --help" \
	"$VSNAPCTL" --json send "$MNT/x"
expect_errno "vsnapctl receive: unknown option '--json'; see vsnapctl receive --help" \
	"$VSNAPCTL" receive --json "$MNT/x"
expect_errno "vsnapctl status: unexpected argument 'extra'; see vsnapctl status --help" \
	"$VSNAPCTL" status "$STORE" extra
expect_errno "vsnapctl iostat: INTERVAL is a whole number of seconds, at least 1, not '0'; see vsnapctl iostat --help" \
	"$VSNAPCTL" iostat "$STORE" 0
assert_eq "$(wc -l <"$T/expect.err")" 1 "iostat: a bad interval: one line"
# a result that cannot be recorded (a read-only mount) is one warning line
vs_mount "$STORE" "$MNT" -o ro
"$VSNAPCTL" scrub "$MNT" >/dev/null 2>"$T/scrub3.err" || fail "scrub read-only: $(cat "$T/scrub3.err")"
assert_eq "$(wc -l <"$T/scrub3.err")" 1 "scrub of a read-only mount: lines on stderr ($(tr '\n' '|' <"$T/scrub3.err"))"
grep -q "scrub: the result is not recorded for status" "$T/scrub3.err" || fail "scrub read-only: $(cat "$T/scrub3.err")"
vs_umount "$MNT"
pass
