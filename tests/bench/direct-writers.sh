#!/bin/bash
# tests/bench/direct-writers.sh VSNAPFS [BASE_VSNAPFS]: 4 KiB O_DIRECT random
# writes to ONE file from several writers, against the same on four files
# (docs/performance.md, "FUSE levers (issue 13)").  Mounts at once: vsnapfs
# (and BASE_VSNAPFS, e.g. a build without the parallel-direct-writes reply),
# and the bench's pass-through twice, with and without that reply
# (PT_PARALLEL_DIRECT_WRITES=0).  Each volume or backing file is 1 GiB,
# written whole first; the four files are 256 MiB each.  Then ROUNDS rounds
# of every job on every target back to back, RT seconds each:
#   psync-1job-1file, psync-4jobs-1file, psync-4jobs-4files (vsnapfs only:
#   the pass-through serves one file), libaio-qd16-1file, iouring-qd16-1file.
# Prints CSV (round,job,target,iops,load1) and, per job, each target's IOPS
# over its baseline in the same round (vsnapfs over BASE, pt over pt-stock).
# Needs fio, jq, fusermount3, cc and the libfuse3 headers, about 6 GiB in
# BENCH_TMPDIR (/var/tmp).  Removes its directory and unmounts on exit.
set -u
NEW=${1:?the vsnapfs binary to measure}
BASE=${2:-}
RT=${RT:-10}
ROUNDS=${ROUNDS:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
D=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/direct-writers.XXXXXX")
declare -A PID=() MNT=()
cleanup() {
	local t
	for t in "${!MNT[@]}"; do
		mountpoint -q "${MNT[$t]}" && fusermount3 -u "${MNT[$t]}"
	done
	for t in "${!PID[@]}"; do wait "${PID[$t]}" 2>/dev/null; done
	rm -rf "$D"
}
trap cleanup EXIT
# shellcheck disable=SC2046
cc -O2 -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -D_FILE_OFFSET_BITS=64 \
	$(pkg-config --cflags fuse3) -o "$D/passthrough" "$HERE/passthrough.c" \
	$(pkg-config --libs fuse3) -lpthread || exit 1
waitmnt() {
	local i
	for i in $(seq 200); do mountpoint -q "$1" && return 0; sleep 0.05; done
	echo "not mounted: $1" >&2
	exit 1
}
fill() { fio --name=fill --filename="$1" --rw=write --bs=1m --direct=1 --ioengine=psync --size="$2" >/dev/null; }
VS=(vs)
[ -n "$BASE" ] && VS+=(vs-base)
for t in "${VS[@]}"; do
	bin=$NEW
	[ "$t" = vs-base ] && bin=$BASE
	mkdir -p "$D/$t.mnt"
	"$bin" -f "$D/$t.store" "$D/$t.mnt" 2>"$D/$t.log" &
	PID[$t]=$!
	MNT[$t]=$D/$t.mnt
	waitmnt "$D/$t.mnt"
	truncate -s 1G "$D/$t.mnt/vol"
	fill "$D/$t.mnt/vol" 1G
	for i in 1 2 3 4; do truncate -s 256M "$D/$t.mnt/v$i"; fill "$D/$t.mnt/v$i" 256M; done
done
PT=(pt pt-stock)
for t in "${PT[@]}"; do
	mkdir -p "$D/$t.mnt"
	truncate -s 1G "$D/$t.backing"
	fill "$D/$t.backing" 1G
	pdw=1
	[ "$t" = pt-stock ] && pdw=0
	PT_PARALLEL_DIRECT_WRITES=$pdw "$D/passthrough" "$D/$t.backing" "$D/$t.mnt" 2>"$D/$t.log" &
	PID[$t]=$!
	MNT[$t]=$D/$t.mnt
	waitmnt "$D/$t.mnt"
done
sync
file1() { case $1 in vs*) echo "${MNT[$1]}/vol" ;; *) echo "${MNT[$1]}/disk" ;; esac; }
common=(--bs=4k --direct=1 --rw=randwrite --time_based "--runtime=$RT" --output-format=json --group_reporting)
CSV=$D/out.csv
run() { # run ROUND JOB TARGET FIO-ARGS...
	local r=$1 j=$2 t=$3 load iops
	shift 3
	load=$(cut -d' ' -f1 /proc/loadavg)
	fio "${common[@]}" "$@" >"$D/out.json" 2>"$D/fio.err" || { cat "$D/fio.err" >&2; exit 1; }
	iops=$(jq '.jobs[0].write.iops | floor' "$D/out.json")
	echo "$r,$j,$t,$iops,$load" | tee -a "$CSV"
}
echo "round,job,target,iops,load1" | tee "$CSV"
for r in $(seq "$ROUNDS"); do
	for t in "${VS[@]}" "${PT[@]}"; do
		run "$r" psync-1job-1file "$t" --ioengine=psync --size=1G --name=j --filename="$(file1 "$t")"
	done
	for t in "${VS[@]}" "${PT[@]}"; do
		run "$r" psync-4jobs-1file "$t" --ioengine=psync --numjobs=4 --thread --size=1G \
			--name=j --filename="$(file1 "$t")"
	done
	for t in "${VS[@]}"; do
		m=${MNT[$t]}
		run "$r" psync-4jobs-4files "$t" --ioengine=psync --thread --size=256M --name=a \
			--filename="$m/v1" --name=b --filename="$m/v2" --name=c --filename="$m/v3" \
			--name=d --filename="$m/v4"
	done
	for e in libaio io_uring; do
		for t in "${VS[@]}" "${PT[@]}"; do
			run "$r" "${e/_/}-qd16-1file" "$t" --ioengine=$e --iodepth=16 --size=1G \
				--name=j --filename="$(file1 "$t")"
		done
	done
done
echo
echo "ratios in each round: vs / vs-base, pt / pt-stock, and vs 4jobs-1file / vs 4jobs-4files"
awk -F, 'NR > 1 { v[$1 "," $2 "," $3] = $4; jobs[$2] = 1; if ($1 > n) n = $1 }
	function ratio(a, b) { return (b > 0 && a != "") ? sprintf(" %.2f", a / b) : " -" }
	END {
		for (j in jobs) {
			l1 = j ": vs/vs-base"; l2 = j ": pt/pt-stock"
			for (r = 1; r <= n; r++) {
				l1 = l1 ratio(v[r "," j ",vs"], v[r "," j ",vs-base"])
				l2 = l2 ratio(v[r "," j ",pt"], v[r "," j ",pt-stock"])
			}
			print l1; print l2
		}
		l = "vs 1 file/4 files:"; lb = "vs-base 1 file/4 files:"
		for (r = 1; r <= n; r++) {
			l = l ratio(v[r ",psync-4jobs-1file,vs"], v[r ",psync-4jobs-4files,vs"])
			lb = lb ratio(v[r ",psync-4jobs-1file,vs-base"], v[r ",psync-4jobs-4files,vs-base"])
		}
		print l; print lb
	}' "$CSV" | sort
