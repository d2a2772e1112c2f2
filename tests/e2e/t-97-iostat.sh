#!/bin/bash
# vsnapctl iostat and metrics count what was done: 8 MiB written with
# O_DIRECT in 64 KiB writes is 128 writes and 8 MiB in iostat --json, in
# the table (-p: exact bytes) and in metrics; one fsync, and 1 MiB read in
# 16 direct reads, the same.  The metrics parse line by line as the
# Prometheus text format (HELP and TYPE before each family's samples, names,
# escaped labels, values), and a volume whose name holds a quote and a
# backslash is labelled with both escaped; a latency histogram is cumulative,
# +Inf its last bucket and _count equal to it.
# A renamed volume shows under its
# new name, a deleted one goes, a snapshot file read through the mount
# shows under its path.  The table takes list's -o (any case), -n, --raw
# and -b, and a column it does not have is one line.  Unmounted, iostat
# and metrics say so in one line and exit 2.
. "$(dirname "$0")/lib.sh"

STORE=$T/store
MNT=$T/mnt
M=$((1024 * 1024))
mkdir -p "$MNT"
vs_mount "$STORE" "$MNT" -o gc_interval=3600

dd if=/dev/urandom of="$MNT/v.img" bs=64K count=128 oflag=direct status=none
sync "$MNT/v.img"                       # fsync(2) of the volume: one fsync
dd if="$MNT/v.img" of=/dev/null bs=64K count=16 iflag=direct status=none
odd='we"ird\name.img'
printf 'x' >"$MNT/$odd"

"$VSNAPCTL" iostat --json "$MNT" >"$T/io.json" 2>"$T/io.err" || fail "iostat --json: $(cat "$T/io.err")"
note "$(cat "$T/io.json")"
# the object of /v.img
vol=$(grep -o '{"volume":"/v.img"[^}]*}' "$T/io.json") || fail "no /v.img in iostat --json"
field() { echo "$1" | grep -o "\"$2\":[0-9.e+-]*" | cut -d: -f2; }
assert_eq "$(field "$vol" writes_total)" 128 "writes of /v.img (iostat --json)"
assert_eq "$(field "$vol" write_bytes_total)" $((8 * M)) "bytes written to /v.img (iostat --json)"
assert_eq "$(field "$vol" fsyncs_total)" 1 "fsyncs of /v.img (iostat --json)"
assert_eq "$(field "$vol" reads_total)" 16 "reads of /v.img (iostat --json)"
assert_eq "$(field "$vol" read_bytes_total)" $M "bytes read from /v.img (iostat --json)"
assert_eq "$(field "$vol" write_errors_total)" 0 "write errors of /v.img"

# the table: one row per volume and a total; -p gives exact numbers
"$VSNAPCTL" iostat -p "$MNT" >"$T/io.txt" 2>&1 || fail "iostat: $(cat "$T/io.txt")"
note "$(cat "$T/io.txt")"
head -n 1 "$T/io.txt" | grep -q '^VOLUME  *READS/s  *WRITES/s  *RBYTES/s  *WBYTES/s' ||
	fail "iostat's header: $(head -n 1 "$T/io.txt")"
grep -q '^/v.img ' "$T/io.txt" || fail "no /v.img row in iostat"
grep -q '^total ' "$T/io.txt" || fail "no total row in iostat"
# the table's shared options, as list has them: -o columns, -n, --raw, -b
"$VSNAPCTL" iostat -n --raw -o VOLUME,ERRORS,wp99 "$MNT" >"$T/io.raw" 2>&1 || fail "iostat -o: $(cat "$T/io.raw")"
note "$(cat "$T/io.raw")"
grep -qxE '/v.img 0 [0-9.]+(us|ms|s)' "$T/io.raw" || fail "iostat -n --raw -o VOLUME,ERRORS,WP99: $(cat "$T/io.raw")"
grep -qxE 'total 0 [0-9.]+(us|ms|s)' "$T/io.raw" || fail "iostat -o: the total row: $(cat "$T/io.raw")"
! grep -q VOLUME "$T/io.raw" || fail "iostat -n printed a header"
"$VSNAPCTL" iostat -b -n --raw -o VOLUME,WBYTES/s "$MNT" >"$T/io.b" 2>&1 || fail "iostat -b: $(cat "$T/io.b")"
grep -qxE '/v.img [0-9]+' "$T/io.b" || fail "iostat -b: not exact bytes: $(cat "$T/io.b")"
expect_errno "vsnapctl iostat: unknown column 'FROB' (-o takes those --help lists); see vsnapctl iostat --help" \
	"$VSNAPCTL" iostat -o VOLUME,FROB "$MNT"
assert_eq "$(wc -l <"$T/expect.err")" 1 "iostat -o FROB: one line"
# two reports 1 s apart: the second covers only that second, with no I/O
"$VSNAPCTL" iostat -H -p "$MNT" 1 2 >"$T/io2.txt" 2>&1 || fail "iostat 1 2: $(cat "$T/io2.txt")"
assert_eq "$(grep -c '^/v.img ' "$T/io2.txt")" 2 "rows of /v.img in two reports"
assert_eq "$(grep '^/v.img ' "$T/io2.txt" | tail -n 1 | awk '{print $3 + $5}')" 0 \
	"writes and bytes per second of /v.img in a second without I/O"

"$VSNAPCTL" metrics "$MNT" >"$T/m.prom" 2>"$T/m.err" || fail "metrics: $(cat "$T/m.err")"
lbl="store=\"$STORE\",volume=\"/v.img\""
grep -qxF "vsnapfs_volume_writes_total{$lbl} 128" "$T/m.prom" || fail "metrics: writes of /v.img"
grep -qxF "vsnapfs_volume_written_bytes_total{$lbl} $((8 * M))" "$T/m.prom" ||
	fail "metrics: bytes written to /v.img"
grep -qxF "vsnapfs_volume_fsyncs_total{$lbl} 1" "$T/m.prom" || fail "metrics: fsyncs of /v.img"
grep -qxF "vsnapfs_volume_read_bytes_total{$lbl} $M" "$T/m.prom" || fail "metrics: bytes read"
grep -qxF "vsnapfs_volume_latency_seconds_count{$lbl,op=\"write\"} 128" "$T/m.prom" ||
	fail "metrics: the write latency histogram's count"
grep -qxF "vsnapfs_volume_latency_seconds_bucket{$lbl,op=\"write\",le=\"+Inf\"} 128" "$T/m.prom" ||
	fail "metrics: the write latency histogram's +Inf bucket"
grep -qF 'vsnapfs_volume_writes_total{store="'"$STORE"'",volume="/we\"ird\\name.img"} 1' "$T/m.prom" ||
	fail "metrics: the quote and backslash of a volume's name escaped: $(grep 'ird' "$T/m.prom")"
grep -qx "vsnapfs_sync_failed{store=\"$STORE\"} 0" "$T/m.prom" || fail "metrics: vsnapfs_sync_failed"

# every line valid: HELP, then TYPE, then the family's samples; a name
# once; label values with only \\, \" and \n escapes; numbers as values
awk '
function bad(why) { printf "line %d: %s: %s\n", NR, why, $0; err = 1; exit 1 }
/^# HELP / { if ($3 !~ /^vsnapfs_[a-z0-9_]+$/) bad("HELP name"); help = $3; next }
/^# TYPE / {
	if ($3 != help) bad("TYPE without its HELP")
	if ($4 !~ /^(counter|gauge|histogram)$/) bad("type")
	if ($3 in seen) bad("family twice"); seen[$3] = 1; fam = $3; type = $4; next }
/^#/ { bad("comment") }
{
	line = $0
	if (!match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*/)) bad("name")
	name = substr(line, 1, RLENGTH); line = substr(line, RLENGTH + 1)
	if (!(name == fam || (type == "histogram" && (name == fam "_bucket" || name == fam "_sum" || name == fam "_count"))))
		bad("sample outside its family " fam)
	if (substr(line, 1, 1) == "{") {
		if (!match(line, /^\{[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\\\|\\"|\\n)*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\\\|\\"|\\n)*")*\}/))
			bad("labels")
		line = substr(line, RLENGTH + 1)
	}
	if (line !~ /^ ([-+]?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN)$/) bad("value")
	samples++
}
END { if (!err && samples < 50) { print "only " samples " samples"; exit 1 } }
' "$T/m.prom" >"$T/awk.out" 2>&1 || fail "metrics not in the Prometheus text format: $(cat "$T/awk.out")"

# a histogram is cumulative: every bucket at least the one before, +Inf
# the last, _count equal to +Inf (the daemon's counters are read one by
# one: only a race could break it before, so this checks what is printed)
hist_ok() {
	awk '
	function bad(why) { printf "line %d: %s: %s\n", NR, why, $0; exit 1 }
	/^vsnapfs_volume_latency_seconds_bucket\{/ {
		k = $0; sub(/,le="[^"]*"\} [0-9]+$/, "", k)
		if (k == prev && $NF + 0 < last) bad("a bucket below the one before")
		prev = k; last = $NF + 0
		if ($0 ~ /le="\+Inf"/) inf[substr(k, index(k, "{") + 1)] = last
	}
	/^vsnapfs_volume_latency_seconds_count\{/ {
		k = $0; sub(/\} [0-9]+$/, "", k); k = substr(k, index(k, "{") + 1)
		if (!(k in inf) || inf[k] != $NF + 0) bad("_count is not the +Inf bucket")
	}' "$1"
}
hist_ok "$T/m.prom" >"$T/awk.out" || fail "metrics' histograms: $(cat "$T/awk.out")"

# renamed, deleted, a snapshot's file
mkdir "$MNT/.snapshots/s1"
dd if="$MNT/.snapshots/s1/v.img" of=/dev/null bs=64K count=4 iflag=direct status=none
mv "$MNT/v.img" "$MNT/w.img"
rm "$MNT/$odd"
# (the kernel sends the last close of a file after close(2) returned: until
# the daemon has it, the deleted volume is an open one, listed as deleted)
for ((i = 0; i < 50; i++)); do
	"$VSNAPCTL" iostat --json "$MNT" >"$T/io3.json" 2>&1 || fail "iostat after rename: $(cat "$T/io3.json")"
	grep -q '(deleted' "$T/io3.json" || break
	sleep 0.1
done
vol=$(grep -o '{"volume":"/w.img"[^}]*}' "$T/io3.json") || fail "no /w.img after the rename: $(cat "$T/io3.json")"
assert_eq "$(field "$vol" writes_total)" 128 "writes of the renamed volume"
! grep -q '"volume":"/v.img"' "$T/io3.json" || fail "the old name is still listed"
! grep -qE 'ird|\(deleted' "$T/io3.json" || fail "the deleted volume is still listed: $(cat "$T/io3.json")"
vol=$(grep -o '{"volume":"/.snapshots/s1/v.img"[^}]*}' "$T/io3.json") ||
	fail "no row for the snapshot's file: $(cat "$T/io3.json")"
assert_eq "$(field "$vol" reads_total)" 4 "reads of the snapshot's file"

vs_umount "$MNT"
for cmd in iostat metrics; do
	expect_errno "is not mounted" "$VSNAPCTL" $cmd "$STORE"
	assert_eq "$(wc -l <"$T/expect.err")" 1 "$cmd of an unmounted store: one line"
done
pass
