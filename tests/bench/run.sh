#!/bin/bash
# vsnapfs benchmark: `make bench`, or tests/bench/run.sh [BUILD_DIR].
# What it measures and how to read it: docs/performance.md.
#
# One run measures every target against the same fio jobs on the same
# 4 GiB disk, one target after the other, so that the ratios come from one
# machine state:
#
#   raw               a plain file, O_DIRECT                  (the disk)
#   fuse-passthrough  build/bench/passthrough over that file  (FUSE ceiling)
#   qsd-qcow2         qemu-storage-daemon FUSE export of a qcow2 overlay
#                     over a fully written qcow2 base
#   qsd-chain32       the same, top of a 32-deep chain, each layer owning a
#                     different random 1/32 of the disk
#   vsnapfs           a volume in a fresh store
#   vsnapfs-snap1     the same, with one snapshot taken after it was written
#                     (depth64's control: what the jobs overwrite stays held)
#   vsnapfs-depth64   a volume with 64 snapshots in its history, each
#                     generation having written a different random 1/64
#   vsnapfs-frag64    depth64's control for depth alone: the same 64
#                     generations (the same 64 KiB pieces, so the same
#                     fragments), one snapshot after the last
#
# then randread, randwrite and fsyncwrite slices of vsnapfs, the
# pass-through, qcow2, FUSE with nothing behind it and the device in turn
# (all at once: ratios free of the machine's drift), snapshot/clone/rmdir
# times, the daemon's memory on a 1 TiB volume, the index size per GiB written, and the scale figures of issue 13 (index
# per GiB, first read after mount, memory against volume size and history).
# Results: stdout, and
# BUILD_DIR/bench/{results.md,results.json,chart.png,logs/}.
#
# Environment:
#   BENCH_RUNTIME=15     seconds per fio job (the full run: about 37 min)
#   BENCH_DISK_GIB=4     disk size; ratios are only comparable at 4
#   BENCH_BIG_GIB=8      the larger volume of the snapshot timings
#   BENCH_SCATTER_GIB=4  data written at random over the 1 TiB volume
#   BENCH_IDLE_S=60      after each job, wait up to this long for the
#                        daemon to finish the background work the job
#                        left (GC, checkpoint); its CPU is the job's
#   BENCH_SETTLE_S=20    before each target, wait up to this long for a
#                        quiet second on the (shared) host
#   BENCH_TMPDIR=/var/tmp  where the disks go (not tmpfs: the page cache of
#                        a tmpfs would be the "disk")
#   BENCH_KEEP=1         keep the temp dir (several GiB) for inspection
#   BENCH_TARGETS=...    run only these targets (space-separated; also
#                        "pairs", "ops", "memory" and "scale", the sections
#                        after them)
#   BENCH_PAIRS=8        pairs: rounds of job slices on vsnapfs, the
#   BENCH_PAIRS_S=5      pass-through, qcow2, fuse-null (mounted at once)
#   BENCH_PAIRS_JOBS="randread randwrite fsyncwrite"  and raw: how many,
#                        how long, which jobs
#   BENCH_OPS_REPS=5     ops: snapshot/clone/rm/rmdir cycles per size (the
#                        table gives each command's median and range)
#   BENCH_JOBS=...       run only these fio jobs (space-separated)
#   BENCH_VSNAPFS_OPTS=  extra arguments of every vsnapfs mount, e.g.
#                        "-o spare_chunks=16" (the results say which)
#   BENCH_SCALE_SEQ_GIB=16     scale: the volume written sequentially
#   BENCH_SCALE_RAND_GIB=4     scale: each of the four random volumes
#   BENCH_SCALE_SIZES="1 8 64" scale: the sparse volumes (GiB) of the
#                        open-time and RSS line
#   BENCH_SCALE_FILL_MIB=256   scale: MiB written at the start of every GiB
#                        of those (1024: all of it)
#   BENCH_SCALE_BIG_CACHE=4G   scale: the "unlimited" map_cache, once the
#                        daemon has that option
#
# Every daemon runs in the foreground as our child; we keep its pid, stop
# it with fusermount3 -u (SIGTERM for qemu-storage-daemon) and, from the
# EXIT trap, kill only pids we started.  A job that fails, a daemon that
# dies or exits non-zero, and every warning or error a daemon logs are
# reported in the results ("Problems") and make the exit status 1.
set -eEuo pipefail
export LC_ALL=C

T_START=$(date +%s)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=${1:-$ROOT/build}
B=$(cd "$B" && pwd)
OUT=$B/bench
RT=${BENCH_RUNTIME:-15}
DISK_GIB=${BENCH_DISK_GIB:-4}
BIG_GIB=${BENCH_BIG_GIB:-8}
SCATTER_GIB=${BENCH_SCATTER_GIB:-4}
SETTLE_S=${BENCH_SETTLE_S:-20}
IDLE_S=${BENCH_IDLE_S:-60}
TMPBASE=${BENCH_TMPDIR:-/var/tmp}
VS_OPTS=${BENCH_VSNAPFS_OPTS:-}
GIB=$((1 << 30))
DISK=$((DISK_GIB * GIB))
UNIT=65536                      # granularity of the layers' random pieces
JOBS=(seqread coldread seqwrite randread randwrite fsyncwrite)
TARGETS=(raw fuse-passthrough qsd-qcow2 qsd-chain32 vsnapfs vsnapfs-snap1 vsnapfs-frag64 vsnapfs-depth64)
SECTIONS=("${TARGETS[@]}" pairs ops memory scale)
# A selection (BENCH_TARGETS, BENCH_JOBS) runs less; the report still has a
# row or column for everything, "–" where nothing ran, so that its tables
# keep their shape.
SEL_TARGETS=" ${BENCH_TARGETS:-${SECTIONS[*]}} "
SEL_JOBS=" ${BENCH_JOBS:-${JOBS[*]}} "
want() { [[ $SEL_TARGETS == *" $1 "* ]]; }
want_job() { [[ $SEL_JOBS == *" $1 "* ]]; }

log() { printf '[bench %4ss] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in RT DISK_GIB BIG_GIB SCATTER_GIB BENCH_SCALE_SEQ_GIB BENCH_SCALE_RAND_GIB BENCH_PAIRS \
	BENCH_PAIRS_S BENCH_OPS_REPS; do
	[[ ${!v:-1} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ ${BENCH_SCALE_SIZES:-1} =~ ^\ *[1-9][0-9]*(\ +[1-9][0-9]*)*\ *$ ]] ||
	die "BENCH_SCALE_SIZES must be sizes in GiB, space-separated, not '$BENCH_SCALE_SIZES'"
case ${BENCH_SCALE_FILL_MIB:-256} in
1 | 2 | 4 | 8 | 16 | 32 | 64 | 128 | 256 | 512 | 1024) ;;
*) die "BENCH_SCALE_FILL_MIB must be a power of two from 1 to 1024, not '$BENCH_SCALE_FILL_MIB'" ;;
esac
[[ $SETTLE_S =~ ^[0-9]+$ ]] || die "BENCH_SETTLE_S must be a number of seconds, not '$SETTLE_S'"
[[ $IDLE_S =~ ^[0-9]+$ ]] || die "BENCH_IDLE_S must be a number of seconds, not '$IDLE_S'"
for t in $SEL_TARGETS; do
	[[ " ${SECTIONS[*]} " == *" $t "* ]] || die "BENCH_TARGETS: unknown '$t' (one of: ${SECTIONS[*]})"
done
for j in $SEL_JOBS; do
	[[ " ${JOBS[*]} " == *" $j "* ]] || die "BENCH_JOBS: unknown '$j' (one of: ${JOBS[*]})"
done
PAIRS_JOBS=${BENCH_PAIRS_JOBS:-randread randwrite fsyncwrite}
for j in $PAIRS_JOBS; do
	[[ " ${JOBS[*]} " == *" $j "* && $j != coldread ]] ||
		die "BENCH_PAIRS_JOBS: unknown '$j' (one of: ${JOBS[*]/coldread})"
done

# ---- packages ----------------------------------------------------------------

# What the bench needs beyond `make all`: fio (every job), qemu-utils
# (qemu-img, qemu-io), qemu-system-common (qemu-storage-daemon),
# gnuplot-nox (the chart), jq (fio's JSON), and a compiler and libfuse3's
# headers for the pass-through.
install_deps() {
	local pkgs=(fio qemu-utils qemu-system-common gnuplot-nox jq fuse3 libfuse3-dev
		    pkg-config build-essential) missing=() p st
	for p in "${pkgs[@]}"; do
		st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) || st=
		[ "$st" = "install ok installed" ] || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		die "missing Debian packages: ${missing[*]}; as root: apt-get install --no-install-recommends ${missing[*]}"
	fi
	log "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
install_deps
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"
[ -x "$B/vsnapfs" ] || die "$B/vsnapfs is not built (make)"
CLK_TCK=$(getconf CLK_TCK)

mkdir -p "$OUT"
PT=$OUT/passthrough
if [ ! -x "$PT" ] || [ "$HERE/passthrough.c" -nt "$PT" ]; then
	log "building $PT"
	# shellcheck disable=SC2046
	cc -O2 -g -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -D_FILE_OFFSET_BITS=64 \
		$(pkg-config --cflags fuse3) -o "$PT" "$HERE/passthrough.c" \
		$(pkg-config --libs fuse3) -lpthread
fi

# ---- state, cleanup ------------------------------------------------------------

W=                      # the temp dir
CHILD=                  # the foreground command running now (fio, cp, ...)
HOLD=                   # fd holding a volume open, if any
HOLDS=()                # more of those (several volumes open at once)
SIDE=                   # a background fio (side_fsyncs), if any
declare -A D_PID=()     # daemon name -> pid
declare -A D_MNT=()     # daemon name -> mount point (a directory, or a file for qsd)
declare -A D_KIND=()    # daemon name -> vsnapfs | passthrough | qsd
declare -A D_LOG=()     # daemon name -> its stderr
PROBLEMS=()
FAILED=0

problem() { log "PROBLEM: $*"; PROBLEMS+=("$*"); FAILED=1; }

# True while pid is a live child of this shell (not a zombie, not a
# stranger that reused the number).
alive() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	set -- $s
	[ "$1" != Z ] && [ "$2" = "$$" ]
}

# wait_exit PID SECS: 0 once PID exited (status in WAIT_STATUS), 1 if not.
wait_exit() {
	local pid=$1 i
	for ((i = 0; i < $2 * 10; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	alive "$pid" && return 1
	WAIT_STATUS=0
	wait "$pid" 2>/dev/null || WAIT_STATUS=$?
	return 0
}

is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

cleanup() {
	local rc=$? n pid
	set +e
	trap - EXIT INT TERM HUP
	if [ -n "$CHILD" ] && alive "$CHILD"; then
		kill -TERM "$CHILD" 2>/dev/null
		wait_exit "$CHILD" 10 || { kill -KILL "$CHILD" 2>/dev/null; wait_exit "$CHILD" 5; }
	fi
	if [ -n "$SIDE" ] && alive "$SIDE"; then
		kill -TERM "$SIDE" 2>/dev/null
		wait_exit "$SIDE" 10 || { kill -KILL "$SIDE" 2>/dev/null; wait_exit "$SIDE" 5; }
	fi
	[ -n "$HOLD" ] && exec {HOLD}<&-
	for n in "${HOLDS[@]}"; do exec {n}<&-; done
	for n in "${!D_PID[@]}"; do
		pid=${D_PID[$n]}
		if [ "${D_KIND[$n]}" = qsd ] && alive "$pid"; then
			kill -TERM "$pid" 2>/dev/null
			wait_exit "$pid" 20
		fi
		if is_mounted "${D_MNT[$n]}"; then
			timeout 30 fusermount3 -u "${D_MNT[$n]}" 2>/dev/null ||
				fusermount3 -u -z "${D_MNT[$n]}" 2>/dev/null
		fi
		if ! wait_exit "$pid" 30; then
			log "cleanup: $n (pid $pid) still running; SIGKILL"
			kill -KILL "$pid" 2>/dev/null
			wait_exit "$pid" 5
		fi
		is_mounted "${D_MNT[$n]}" && fusermount3 -u -z "${D_MNT[$n]}" 2>/dev/null
	done
	if [ -n "$W" ] && [ -d "$W" ]; then
		mkdir -p "$OUT/logs"
		cp "$W"/logs/* "$OUT/logs/" 2>/dev/null
		if [ -n "${BENCH_KEEP:-}" ]; then
			log "BENCH_KEEP set: leaving $W"
		else
			rm -rf --one-file-system "$W"
		fi
	fi
	[ $rc -ne 0 ] && log "exit status $rc"
	exit $rc
}
# Say which command failed when set -e ends the run.
trap 'log "failed: line $LINENO: $BASH_COMMAND"' ERR
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# fg [-q | -o FILE] CMD...: run CMD as a tracked child (so that a signal
# ends it too), in the foreground; -q sends its stdout to /dev/null, -o
# both its stdout and stderr to FILE.  Returns its status.  (Redirecting
# the call instead would redirect this shell too, and so the messages of
# a trap that runs meanwhile.)
fg() {
	local rc=0 out=
	case $1 in
	-q) out=/dev/null; shift ;;
	-o) out=$2; shift 2 ;;
	esac
	if [ -z "$out" ]; then
		"$@" &
	elif [ "$out" = /dev/null ]; then
		"$@" >/dev/null &
	else
		"$@" >"$out" 2>&1 &
	fi
	CHILD=$!
	wait "$CHILD" || rc=$?
	CHILD=
	return $rc
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---- the temp dir ----------------------------------------------------------------

mkdir -p "$TMPBASE"
case $(stat -f -c %T "$TMPBASE") in
tmpfs | ramfs) die "$TMPBASE is $(stat -f -c %T "$TMPBASE"); set BENCH_TMPDIR to a disk file system" ;;
esac
W=$(mktemp -d "$TMPBASE/vsnapfs-bench.XXXXXX")
mkdir -p "$W/logs" "$W/json" "$W/bin"
# Run a private copy of the daemon: a rebuild during the run (make in
# another shell) must not change what is measured half-way.
cp "$B/vsnapfs" "$W/bin/vsnapfs"
VSNAPFS=$W/bin/vsnapfs
BUILD="vsnapfs $("$VSNAPFS" --version 2>&1 | awk 'NR == 1 { print $2 }')"
BUILD="$BUILD, binary sha256 $(sha256sum "$VSNAPFS" | cut -c1-12)"
if rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
	BUILD="$BUILD, built from $rev"
	if [ -n "$(git -C "$ROOT" status --porcelain -- src include Makefile 2>/dev/null)" ]; then
		BUILD="$BUILD + uncommitted changes in src/include/Makefile"
	fi
fi
if [ -n "$VS_OPTS" ]; then BUILD="$BUILD, mounted with $VS_OPTS"; fi
log "$BUILD"
# No stale results if this run fails half-way.
rm -rf "$OUT/logs" "$OUT/results.md" "$OUT/results.json" "$OUT/chart.png" "$OUT/chart.dat"
JOBS_TSV=$W/jobs.tsv    # target job status mb_s iops p99_ms sync_p99_ms cpu_s ios runtime_s
			#   writeback_s other_cpus kthread_cpus dev_reads bg_cpu_s
KV_TSV=$W/kv.tsv        # table row column value
: >"$JOBS_TSV"
: >"$KV_TSV"
: >"$W/joblog.tsv"      # target job line: what a daemon logged during a job
kv() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$KV_TSV"; }

avail_gib() { echo $(($(df -B1 --output=avail "$W" | tail -n 1) / GIB)); }
# the pairs hold the most at once: the plain file, raw's own, the qcow2
# base and its overlay written whole, the vsnapfs store (and its garbage
# until GC), each DISK
NEED=$((DISK_GIB * 7))
[ "$(avail_gib)" -ge "$NEED" ] ||
	die "$W: $(avail_gib) GiB free; the bench needs $NEED GiB (BENCH_DISK_GIB=$DISK_GIB)"
log "work dir $W ($(stat -f -c %T "$W"), $(avail_gib) GiB free); $RT s per job," \
    "targets:$SEL_TARGETS jobs:$SEL_JOBS"

# ---- daemons -------------------------------------------------------------------

# start NAME KIND MNT CMD...: start CMD (which must stay in the foreground)
# and wait, 60 s at most, until MNT is mounted.  Sets MOUNT_MS.
start() {
	local name=$1 kind=$2 mnt=$3 t0 pid i
	shift 3
	D_LOG[$name]=$W/logs/$name.log
	t0=$(now_ms)
	"$@" >>"${D_LOG[$name]}" 2>&1 &
	pid=$!
	D_PID[$name]=$pid
	D_MNT[$name]=$mnt
	D_KIND[$name]=$kind
	for ((i = 0; i < 3000; i++)); do
		is_mounted "$mnt" && break
		if ! alive "$pid"; then
			wait_exit "$pid" 1
			tail -n 20 "${D_LOG[$name]}" >&2
			die "$name: $1 exited (status $WAIT_STATUS) before mounting $mnt"
		fi
		sleep 0.02
	done
	is_mounted "$mnt" || die "$name: $mnt not mounted after 60 s"
	MOUNT_MS=$(($(now_ms) - t0))
}

# stop NAME: unmount, wait for the daemon to exit, check its status.
stop() {
	local name=$1 pid=${D_PID[$1]} mnt=${D_MNT[$1]} i err=
	if ! alive "$pid"; then
		wait_exit "$pid" 1
		problem "$name: daemon pid $pid had died before unmount (status $WAIT_STATUS; log: logs/$name.log)"
		fusermount3 -u -z "$mnt" 2>/dev/null || true
	else
		if [ "${D_KIND[$name]}" = qsd ]; then
			kill -TERM "$pid"
		else
			for ((i = 0; ; i++)); do
				err=$(timeout 30 fusermount3 -u "$mnt" 2>&1) && break
				[ $i -lt 50 ] || { problem "$name: fusermount3 -u $mnt: $err"; break; }
				sleep 0.1        # EBUSY right after the last close is transient
			done
		fi
		stop_wait "$name" "$pid"
	fi
	is_mounted "$mnt" && fusermount3 -u -z "$mnt" 2>/dev/null
	unset "D_PID[$name]" "D_MNT[$name]" "D_KIND[$name]"
	return 0
}

stop_wait() {   # stop_wait NAME PID: the end of stop()
	local name=$1 pid=$2
	if ! wait_exit "$pid" 120; then
		problem "$name: pid $pid still running 120 s after unmount; killed"
		kill -KILL "$pid"
		wait_exit "$pid" 10 || true
	elif [ "$WAIT_STATUS" -ne 0 ]; then
		problem "$name: daemon exited with status $WAIT_STATUS after unmount (log: logs/$name.log)"
	fi
	return 0
}

cpu_ticks() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	set -- $s
	echo $((${12} + ${13}))
}

# dev_reads: read requests completed so far by the block device that holds
# $W (field 1 of /sys/dev/block/MAJ:MIN/stat), or "-" when $W is not on one.
# Around a job of a page-cache target (the FUSE daemons read through the
# host page cache), the difference is how many of its reads missed that
# cache: the memory state of the host, which no target controls.
dev_reads() {
	local d
	d=$(stat -c %d "$W") || { echo -; return; }
	awk '{ print $1 }' "/sys/dev/block/$((d >> 8 & 0xfff)):$(((d & 0xff) | (d >> 12 & 0xfff00)))/stat" \
		2>/dev/null || echo -
}

rss_mib() {   # rss_mib PID FIELD (VmHWM, VmRSS)
	awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# warm FILE...: drop the backing files from the host page cache and read
# them once, buffered, so that every FUSE target starts with its data in
# the host page cache, put there the same way: by reading, in the large
# folios read-ahead makes, whether its set-up wrote through the page cache
# in small pieces (depth64's 64 KiB, qemu-io's clusters) or around it
# (docs/performance.md, "Depth against fragments"); then write back
# whatever the set-up left dirty (qemu-img convert does not sync), so that
# no target's jobs pay for its own or a previous set-up.
warm() {
	drop_files "$@"
	fg -q cat "$@"
	fg sync -f "$W"
}

# drop_files FILE...: write back and drop the page cache of those files.
drop_files() {
	local f
	fg sync -f "$W"
	for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none 2>/dev/null || true; done
}

# fill FILE SIZE: write FILE sequentially, 1 MiB O_DIRECT at QD8.
fill() {
	fg -q fio --name=fill --filename="$1" --size="$2" --bs=1m --rw=write --iodepth=8 \
		--direct=1 --ioengine=libaio --fallocate=none --end_fsync=1 \
		--output-format=terse
}

# read4k FILE: open FILE and read its first 4 KiB with O_DIRECT (5 min at
# most); READ_MS is how long that took.  On a vsnapfs volume not open yet
# the read loads its block map.
read4k() {
	local t0
	t0=$(now_ms)
	fg timeout -k 5 300 dd if="$1" of=/dev/null bs=4k count=1 iflag=direct status=none || return
	READ_MS=$(($(now_ms) - t0))
}

# first_read NAME FILE: time a cold open + one 4 KiB O_DIRECT read.
first_read() {
	if read4k "$2"; then
		kv startup "$1" "first open + 4 KiB read, ms" "$READ_MS"
	else
		problem "$1: the first open + 4 KiB O_DIRECT read of $2 failed"
		kv startup "$1" "first open + 4 KiB read, ms" failed
	fi
}

# ---- fio jobs ------------------------------------------------------------------

job_args() {
	case $1 in
	seqread) echo "--rw=read --bs=1m --iodepth=1" ;;
	# one pass over the disk after the target's files left the page cache
	coldread) echo "--rw=read --bs=1m --iodepth=1 --time_based=0" ;;
	seqwrite) echo "--rw=write --bs=1m --iodepth=1" ;;
	randread) echo "--rw=randread --bs=4k --iodepth=16" ;;
	randwrite) echo "--rw=randwrite --bs=4k --iodepth=16" ;;
	fsyncwrite) echo "--rw=randwrite --bs=4k --iodepth=1 --fdatasync=1" ;;
	esac
}

host_busy_ticks() {   # every CPU's non-idle time (user nice system irq softirq steal)
	awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# kthread_snap FILE: CPU ticks of each of the kernel's threads (kthreadd
# and its children: writeback, the file system's journal, kworkers), as
# "pid starttime ticks".  kthread_ticks BEFORE AFTER: what they used in
# between, thread by thread (kworkers come and go; a sum over whoever is
# alive would go backwards when one exits).  A thread that exits in between
# is lost, and its time lands in "other processes".
kthread_snap() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
		s = $0; sub(/^.*\) /, "", s); split(s, a, " ")
		if (a[2] == 2 || $1 == 2) print $1, a[20], a[12] + a[13]
	}' >"$1"
}
kthread_ticks() {
	awk 'NR == FNR { t[$1 " " $2] = $3; next }
	     { d += $3 - ((($1 " " $2) in t) ? t[$1 " " $2] : 0) }
	     END { print d + 0 }' "$1" "$2"
}

# quiet WHAT: the machine is shared; before WHAT is measured, wait (at most
# BENCH_SETTLE_S seconds) for a second in which the host's CPUs are less
# than half busy.  QUIET_S is how long that took.
quiet() {
	local t0 h0 h1 busy
	t0=$(now_ms)
	while [ "$SETTLE_S" -gt 0 ]; do
		h0=$(host_busy_ticks)
		sleep 1
		h1=$(host_busy_ticks)
		busy=$(awk -v h=$((h1 - h0)) -v t="$CLK_TCK" 'BEGIN { printf "%.2f", h / t }')
		awk -v b="$busy" -v n="$(nproc)" 'BEGIN { exit !(b < n / 2) }' && break
		if [ $(($(now_ms) - t0)) -ge $((SETTLE_S * 1000)) ]; then
			log "$1: host still busy ($busy CPUs) after ${SETTLE_S} s; going on"
			break
		fi
	done
	QUIET_S=$(((($(now_ms) - t0) + 500) / 1000))
}

# settle TARGET: quiet, and record the wait in the start-up table.
settle() {
	quiet "$1"
	kv startup "$1" "wait for a quiet host, s" "$QUIET_S"
}

# idle_after PID: after a job, wait (at most IDLE_S seconds) for 3 seconds
# in which daemon PID used less than 5% of a CPU (3, not 1: paced garbage
# collection passes can be more than a second apart).  BG_CPU is the CPU time
# it used meanwhile, in seconds ("-" without a daemon): the background work
# the job left behind (garbage collection of what it overwrote, the
# checkpoint of its log), shown in that job's row instead of slowing down
# the next job and counting there.
idle_after() {
	local t0 a b c0
	BG_CPU=-
	[ -n "$1" ] || return 0
	c0=$(cpu_ticks "$1") || return 0
	b=$c0
	t0=$(now_ms)
	while [ $(($(now_ms) - t0)) -lt $((IDLE_S * 1000)) ]; do
		a=$b
		sleep 3
		b=$(cpu_ticks "$1") || break
		[ $((b - a)) -lt $(((3 * CLK_TCK + 19) / 20)) ] && break
	done
	BG_CPU=$(awk -v d=$((b - c0)) -v t="$CLK_TCK" 'BEGIN { printf "%.2f", d / t }')
}

# backing_files GLOBS: the files matching GLOBS (space-separated patterns),
# one per line.
backing_files() {
	local pat
	for pat in $1; do
		compgen -G "$pat" || true
	done
}

# warm_backing GLOBS: read those files into the page cache.  GC may remove
# a chunk file meanwhile: what is left is warm.
warm_backing() {
	local -a files
	mapfile -t files < <(backing_files "$1")
	[ ${#files[@]} -eq 0 ] || cat -- "${files[@]}" >/dev/null 2>&1 || true
	fg sync -f "$W"
}

# drop_backing GLOBS: write back and drop the page cache of those files
# (raw has none: it reads with O_DIRECT).
drop_backing() {
	local -a files
	mapfile -t files < <(backing_files "$1")
	drop_files "${files[@]}"
}

# bench TARGET FILE [DAEMON [BACKING]]: the jobs on FILE; the files matching
# the patterns BACKING (space-separated: the target's own data files, not its
# mount) are read into the page cache before each read job but coldread, and
# after coldread.  Around each job:
# DAEMON's CPU time from /proc/PID/stat, the whole host's busy time from
# /proc/stat, the kernel threads' (writeback and journal work, much of it
# caused by the target), and the lines DAEMON logged meanwhile.  What
# neither the daemon, fio nor a kernel thread used is "other processes":
# the noise of a shared machine.
bench() {
	local target=$1 file=$2 name=${3:-} backing=${4:-} pid= log= job out c0 c1 h0 h1 t0 t1 l0 cpu dir rc wb
	local mb iops p99 sp99 ios rts fio_cpu other kth r0 r1 devr
	if [ -n "$name" ]; then
		pid=${D_PID[$name]}
		log=${D_LOG[$name]}
	fi
	settle "$target"
	for job in "${JOBS[@]}"; do
		want_job "$job" || continue
		out=$W/json/$target.$job.json
		if [ -n "$pid" ] && ! alive "$pid"; then
			problem "$target/$job: not run, the daemon (pid $pid) is gone"
			printf '%s\t%s\tfailed\n' "$target" "$job" >>"$JOBS_TSV"
			continue
		fi
		# Read jobs start from data in the host page cache, as the set-up
		# left it (warm): the write jobs before them may have left it
		# elsewhere (vsnapfs writes 1 MiB runs around the cache, -o
		# direct_writes), and a read job compares read paths, not what
		# the last job cached.  docs/performance.md says what a read
		# after direct writes costs.
		# coldread starts from none of it: a guest's first read of its
		# disk after the host's cache lost it (a boot, a backup), with
		# the host's read-ahead (or without: a vsnapfs chunk that direct
		# writes may still reach, docs/design.md "Direct writes").  Only
		# the target's own files are dropped: dropping the whole page
		# cache hands gigabytes back to this VM's host (free page
		# reporting), and every write into a new page after it, in the
		# jobs that follow, would fault there.
		if [ "$job" = coldread ]; then
			drop_backing "$backing"
		elif [ -n "$backing" ] && [[ $job == *read ]]; then
			warm_backing "$backing"
		fi
		log "$target: $job (${RT} s)"
		c0=0
		if [ -n "$pid" ]; then c0=$(cpu_ticks "$pid"); fi
		l0=0
		if [ -n "$log" ]; then l0=$(wc -l <"$log"); fi
		h0=$(host_busy_ticks)
		kthread_snap "$W/kthreads.0"
		r0=$(dev_reads)
		t0=$(now_ms)
		rc=0
		# shellcheck disable=SC2046
		fg -o "$out.stderr" timeout -k 10 $((RT + 300)) fio --name="$job" --filename="$file" \
			--size="$DISK" --ioengine=libaio --direct=1 --time_based \
			--runtime="$RT" --fallocate=none --lat_percentiles=1 \
			$(job_args "$job") --output-format=json --output="$out" || rc=$?
		t1=$(now_ms)
		r1=$(dev_reads)
		h1=$(host_busy_ticks)
		kthread_snap "$W/kthreads.1"
		c1=0
		if [ -n "$pid" ]; then
			c1=$(cpu_ticks "$pid") || {
				problem "$target/$job: the daemon (pid $pid) died during the job"
				c1=$c0
			}
		fi
		if [ -n "$log" ]; then
			tail -n +$((l0 + 1)) "$log" | while IFS= read -r l; do
				printf '%s\t%s\t%s\n' "$target" "$job" "$l"
			done >>"$W/joblog.tsv"
		fi
		# Write back what the job left dirty in the host page cache
		# before the next job starts, and say how long that took: a
		# target that defers its writes to the kernel pays here.
		wb=$(now_ms)
		fg sync -f "$W"
		wb=$(awk -v ms=$(($(now_ms) - wb)) 'BEGIN { printf "%.1f", ms / 1000 }')
		idle_after "$pid"
		# the jobs after coldread start as the set-up left them: the
		# backing files (vsnapfs: its index too) in the page cache
		if [ "$job" = coldread ] && [ -n "$backing" ]; then
			warm_backing "$backing"
		fi
		if [ $rc -ne 0 ]; then
			problem "$target/$job: fio failed (status $rc): $(tail -n 3 "$out.stderr" | tr '\n' ' ')"
			printf '%s\t%s\tfailed\n' "$target" "$job" >>"$JOBS_TSV"
			continue
		fi
		cpu=
		if [ -n "$pid" ]; then
			cpu=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
		fi
		case $job in *read) dir=read ;; *) dir=write ;; esac
		# p99 of the whole I/O (lat_ns); for fsyncwrite also that of
		# the fdatasync that follows each write.
		read -r mb iops p99 sp99 ios rts fio_cpu < <(jq -r --arg d "$dir" --arg job "$job" '
			.jobs[0] as $j | $j[$d] as $s |
			(if $job == "fsyncwrite" then $j.sync.lat_ns.percentile["99.000000"]
			 else null end) as $sp |
			[ $s.bw_bytes / 1e6, $s.iops, $s.lat_ns.percentile["99.000000"] / 1e6,
			  (if $sp == null then "-" else $sp / 1e6 end),
			  $s.total_ios, $j.job_runtime / 1000,
			  ($j.usr_cpu + $j.sys_cpu) / 100 * $j.job_runtime / 1000 ] | @tsv' "$out")
		kth=$(kthread_ticks "$W/kthreads.0" "$W/kthreads.1")
		read -r kth other < <(awk -v h=$((h1 - h0)) -v k="$kth" -v t="$CLK_TCK" \
			-v d="${cpu:-0}" -v f="$fio_cpu" -v ms=$((t1 - t0)) 'BEGIN {
			s = ms / 1000; o = (h - k) / t - d - f
			printf "%.2f %.2f\n", k / t / s, (o < 0 ? 0 : o) / s }')
		devr=-
		if [ "$r0" != - ] && [ "$r1" != - ]; then devr=$((r1 - r0)); fi
		printf '%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$job" \
			"$mb" "$iops" "$p99" "$sp99" "${cpu:--}" "$ios" "$rts" "$wb" "$other" "$kth" \
			"$devr" "$BG_CPU" >>"$JOBS_TSV"
	done
}

# daemon_done NAME TABLE ROW: record the daemon's peak RSS, then stop it.
daemon_done() {
	local pid=${D_PID[$1]}
	if alive "$pid"; then
		kv "$2" "$3" "peak RSS (VmHWM), MiB" "$(rss_mib "$pid" VmHWM)"
	fi
	stop "$1"
}

# layout L SEED FILE [PIECE_BYTES DISK_BYTES [random]]: a random
# permutation of the disk's pieces (UNIT and DISK by default), dealt to L
# layers: lines "layer piece", by layer, and by piece within a layer unless
# "random" (then in the permutation's order: writes at random offsets).
# mawk's printf %d stops at 2^31, hence %.0f.
layout() {
	awk -v n=$((${5:-$DISK} / ${4:-$UNIT})) -v l="$1" -v seed="$2" 'BEGIN {
		srand(seed)
		for (i = 0; i < n; i++) a[i] = i
		for (i = n - 1; i > 0; i--) { j = int(rand() * (i + 1)); t = a[i]; a[i] = a[j]; a[j] = t }
		for (p = 0; p < n; p++) printf "%d %.0f\n", int(p / (n / l)), a[p]
	}' | if [ "${6:-}" = random ]; then cat; else sort -k1,1n -k2,2n; fi >"$3"
}

# iologs LAYOUT DIR FILE PIECE_BYTES: one fio iolog per layer of LAYOUT,
# DIR/gen.N, writing that layer's pieces of FILE in LAYOUT's order.
iologs() {
	mkdir -p "$2"
	awk -v u="$4" -v d="$2" -v f="$3" '{
		o = d "/gen." $1
		if (!(o in seen)) { seen[o] = 1; print "fio version 2 iolog\n" f " add\n" f " open" > o }
		printf "%s write %.0f %d\n", f, $2 * u, u > o
	} END { for (o in seen) print f " close" > o }' "$1"
}

# generations WHAT DIR VOLUME N [last]: replay the iologs DIR/gen.0 .. gen.N-1
# (O_DIRECT, QD16), each followed by `mkdir .snapshots/NAME@gG` in the
# volume's directory (with "last", only the last one); VOLUME is held open
# meanwhile, as by a running VM.  GENS is how many generations were written
# (and, without "last", got their snapshot).
generations() {
	local what=$1 dir=$2 vol=$3 n=$4 only_last=${5:-} g
	exec {HOLD}<"$vol"
	for ((GENS = 0, g = 1; g <= n; g++)); do
		if ! fg -q fio --name="gen$g" --read_iolog="$dir/gen.$((g - 1))" \
			--replay_no_stall=1 --ioengine=libaio --iodepth=16 --direct=1 --output-format=terse; then
			problem "$what: the writes of generation $g failed; measured after $((g - 1)) generations"
			break
		fi
		if { [ -z "$only_last" ] || [ "$g" -eq "$n" ]; } &&
			! mkdir "$(dirname "$vol")/.snapshots/$(basename "$vol")@g$g"; then
			problem "$what: mkdir .snapshots/$(basename "$vol")@g$g failed; measured after $((g - 1)) generations"
			break
		fi
		GENS=$g
		if [ $((g % 16)) -eq 0 ]; then log "$what: $g generations"; fi
	done
	exec {HOLD}<&-
	HOLD=
}

# index_bytes STORE: INDEX_BYTES, the size of index.sqlite plus its WAL if
# the daemon left one (its last close checkpoints the WAL into the file and
# removes it), and WAL_BYTES, the WAL's share.
index_bytes() {
	WAL_BYTES=0
	if [ -f "$1/index.sqlite-wal" ]; then WAL_BYTES=$(stat -c %s "$1/index.sqlite-wal"); fi
	INDEX_BYTES=$(($(stat -c %s "$1/index.sqlite") + WAL_BYTES))
}

# index_kv ROW STORE GIB_WRITTEN: record the size of index.sqlite (+ its
# WAL, if the daemon left one) per GiB written and per 4 KiB block written.
index_kv() {
	local sum
	index_bytes "$2"
	sum=$INDEX_BYTES
	kv index "$1" "index size, MiB" "$(awk -v b=$sum 'BEGIN { printf "%.1f", b / 1048576 }')"
	kv index "$1" "MiB per GiB written" "$(awk -v b=$sum -v g="$3" 'BEGIN { printf "%.2f", b / 1048576 / g }')"
	kv index "$1" "bytes per 4 KiB block written" "$(awk -v b=$sum -v g="$3" 'BEGIN { printf "%.1f", b / (g * 262144) }')"
}

# ============================================================================
# raw and fuse-passthrough: one plain file
# ============================================================================

if want raw || want fuse-passthrough || want qsd-qcow2; then
	mkdir -p "$W/raw"
	RAW=$W/raw/disk.raw
	log "raw: writing the $DISK_GIB GiB disk"
	t0=$(now_ms)
	truncate -s "$DISK" "$RAW"
	fill "$RAW" "$DISK"
	kv startup raw "setup, s" "$(((($(now_ms) - t0) + 500) / 1000))"
fi
if want raw; then
	bench raw "$RAW"
fi

# host_writes: what buffered 1 MiB writes cost on the host file system
# itself, no FUSE: into a new file (new page-cache pages and blocks: what
# any writer that never overwrites in place pays, vsnapfs's chunk files)
# and over the same file once cached (what the pass-through does to its
# backing file).  Then 4 KiB writes each followed by fdatasync, appended
# and over written blocks.  fio, QD1, the file removed after.
host_writes() {
	local f=$W/host-writes.tmp what mbs
	rm -f "$f"
	for what in "new file" "cached file"; do
		settle "host ($what)"
		if fg -q fio --name=host --filename="$f" --size="$DISK" --bs=1m --rw=write \
			--ioengine=psync --fallocate=none --output-format=json --output="$W/host.json"; then
			mbs=$(jq '.jobs[0].write.bw_bytes / 1e6 | floor' "$W/host.json")
		else
			problem "host: buffered writes into a $what failed"
			mbs=failed
		fi
		kv host "buffered 1 MiB writes, QD1, $DISK_GIB GiB into a $what" "MB/s" "$mbs"
		fg sync -f "$W"
	done
	# the same for fsyncwrite: appending (new blocks: fdatasync also writes
	# the file's block map and size) against overwriting written blocks
	for what in "over written blocks" "appending to a new file"; do
		[ "$what" = "appending to a new file" ] && rm -f "$f"
		settle "host ($what)"
		if fg -q fio --name=host --filename="$f" --size="$DISK" --bs=4k \
			--rw="$([ "$what" = "appending to a new file" ] && echo write || echo randwrite)" \
			--ioengine=psync --fdatasync=1 --time_based --runtime="$RT" --fallocate=none \
			--output-format=json --output="$W/host.json"; then
			mbs=$(jq '.jobs[0].write.iops | floor' "$W/host.json")
		else
			problem "host: 4 KiB writes + fdatasync $what failed"
			mbs=failed
		fi
		kv host "4 KiB writes + fdatasync, QD1, $what" "IOPS" "$mbs"
	done
	rm -f "$f"
}
if want fuse-passthrough || want vsnapfs; then
	log "host: buffered writes into a new file and over a cached one"
	host_writes
fi

if want fuse-passthrough; then
	log "fuse-passthrough: mounting $RAW"
	mkdir -p "$W/pt"
	t0=$(now_ms)
	warm "$RAW"
	start pt passthrough "$W/pt" "$PT" "$RAW" "$W/pt"
	kv startup fuse-passthrough "setup, s" "$(((($(now_ms) - t0) + 500) / 1000))"
	kv startup fuse-passthrough "mount, ms" "$MOUNT_MS"
	first_read fuse-passthrough "$W/pt/disk"
	exec {HOLD}<"$W/pt/disk"
	bench fuse-passthrough "$W/pt/disk" pt "$RAW"
	exec {HOLD}<&-
	HOLD=
	daemon_done pt startup fuse-passthrough
fi

# ============================================================================
# qemu-storage-daemon: a qcow2 overlay over a full base, and a 32-deep chain
# ============================================================================

# qsd NAME DIR TOP: export DIR/TOP (qcow2, backing chain from its header)
# on the regular file DIR/disk, the way the man page shows.
qsd() {
	: >"$2/disk"
	start "$1" qsd "$2/disk" qemu-storage-daemon \
		--blockdev "driver=file,node-name=f,filename=$2/$3" \
		--blockdev driver=qcow2,node-name=q,file=f \
		--export "type=fuse,id=e,node-name=q,mountpoint=$2/disk,writable=on"
}

if want qsd-qcow2; then
	log "qsd-qcow2: converting the disk into a qcow2 base, creating the overlay"
	mkdir -p "$W/qcow2"
	t0=$(now_ms)
	fg qemu-img convert -f raw -O qcow2 "$RAW" "$W/qcow2/base.qcow2"
	rm -f "$RAW"
	qemu-img create -q -f qcow2 -b "$W/qcow2/base.qcow2" -F qcow2 "$W/qcow2/top.qcow2"
	warm "$W/qcow2/base.qcow2"
	qsd qsd1 "$W/qcow2" top.qcow2
	kv startup qsd-qcow2 "setup, s" "$(((($(now_ms) - t0) + 500) / 1000))"
	kv startup qsd-qcow2 "mount, ms" "$MOUNT_MS"
	first_read qsd-qcow2 "$W/qcow2/disk"
	exec {HOLD}<"$W/qcow2/disk"
	bench qsd-qcow2 "$W/qcow2/disk" qsd1 "$W/qcow2/*.qcow2"
	exec {HOLD}<&-
	HOLD=
	daemon_done qsd1 startup qsd-qcow2
	rm -rf "$W/qcow2"
fi

if want qsd-chain32; then
	log "qsd-chain32: building 32 layers with qemu-img create -b and qemu-io"
	mkdir -p "$W/chain"
	t0=$(now_ms)
	layout 32 32 "$W/chain/layout"
	# One file of qemu-io commands per layer; each layer writes its own byte.
	awk -v u=$UNIT -v d="$W/chain" '{
		printf "write -q -P %d %.0f %d\n", ($1 % 250) + 1, $2 * u, u > (d "/cmds." $1)
	}' "$W/chain/layout"
	prev=
	for ((g = 0; g < 32; g++)); do
		f=$W/chain/l$g.qcow2
		if [ -z "$prev" ]; then
			qemu-img create -q -f qcow2 "$f" "$DISK"
		else
			qemu-img create -q -f qcow2 -b "$prev" -F qcow2 "$f"
		fi
		args=()
		while IFS= read -r c; do args+=(-c "$c"); done <"$W/chain/cmds.$g"
		fg -q qemu-io -t writeback -f qcow2 "${args[@]}" "$f"
		prev=$f
	done
	depth=$(qemu-img info --backing-chain "$prev" | grep -c '^image:')
	[ "$depth" -eq 32 ] || die "qsd-chain32: the chain has $depth images, not 32"
	warm "$W"/chain/l*.qcow2
	qsd qsd32 "$W/chain" l31.qcow2
	kv startup qsd-chain32 "setup, s" "$(((($(now_ms) - t0) + 500) / 1000))"
	kv startup qsd-chain32 "mount, ms" "$MOUNT_MS"
	first_read qsd-chain32 "$W/chain/disk"
	exec {HOLD}<"$W/chain/disk"
	bench qsd-chain32 "$W/chain/disk" qsd32 "$W/chain/l*.qcow2"
	exec {HOLD}<&-
	HOLD=
	daemon_done qsd32 startup qsd-chain32
	rm -rf "$W/chain"
fi

# ============================================================================
# vsnapfs: a fresh store, and a volume 64 snapshots deep
# ============================================================================

# vs NAME STORE MNT [ARG...]: mount STORE on MNT with vsnapfs, the ARGs and
# BENCH_VSNAPFS_OPTS.
# shellcheck disable=SC2086
vs() { start "$1" vsnapfs "$3" "$VSNAPFS" -f $VS_OPTS "${@:4}" "$2" "$3"; }

# vs_flat TARGET KEY [SNAPSHOT]: TARGET is a fresh store's volume, written
# whole, then (with SNAPSHOT) a snapshot of it named SNAPSHOT, so that what
# the jobs overwrite stays held, as it is at depth 64; remounted, then the
# jobs.
vs_flat() {
	local target=$1 key=$2 d=$W/$2 t0
	log "$target: fresh store, writing the $DISK_GIB GiB volume${3:+, then snapshot $3}"
	mkdir -p "$d/mnt"
	t0=$(now_ms)
	vs "$key" "$d/store" "$d/mnt"
	truncate -s "$DISK" "$d/mnt/vol"
	fill "$d/mnt/vol" "$DISK"
	if [ -n "${3:-}" ] && ! mkdir "$d/mnt/.snapshots/$3"; then
		problem "$target: mkdir .snapshots/$3 failed; measured without it"
	fi
	stop "$key"                     # remount: the jobs start from a clean daemon
	warm "$d"/store/chunks/*
	vs "$key" "$d/store" "$d/mnt"
	kv startup "$target" "setup, s" "$(((($(now_ms) - t0) + 500) / 1000))"
	kv startup "$target" "mount, ms" "$MOUNT_MS"
	first_read "$target" "$d/mnt/vol"
	exec {HOLD}<"$d/mnt/vol"
	bench "$target" "$d/mnt/vol" "$key" "$d/store/chunks/* $d/store/index.sqlite*"
	exec {HOLD}<&-
	HOLD=
	daemon_done "$key" startup "$target"
	rm -rf "$d"
}

if want vsnapfs; then vs_flat vsnapfs vs1; fi
# The control of depth64: the same retention (nothing the jobs overwrite is
# freed, so no chunk file is collected and reused) without the depth.
if want vsnapfs-snap1; then vs_flat vsnapfs-snap1 s1 vol@held; fi

# vs_layers TARGET KEY [last]: TARGET is a fresh store's volume written by
# 64 generations of 1/64 of the disk each, in 64 KiB pieces, with a
# snapshot after each generation (depth64) or, with "last", only after the
# last one (frag64: the same pieces in the same order, so the same
# fragments and the same retention, without the depth); remounted, then
# the jobs.
vs_layers() {
	local target=$1 key=$2 last=${3:-} d=$W/$2 want_snaps=64 t0 nsnap v
	log "$target: 64 generations of 1/64 of the disk, a snapshot after ${last:-each}"
	mkdir -p "$d/mnt" "$d/log"
	t0=$(now_ms)
	layout 64 64 "$d/layout"
	v=$d/mnt/vol
	iologs "$d/layout" "$d/log" "$v" "$UNIT"
	vs "$key" "$d/store" "$d/mnt"
	truncate -s "$DISK" "$v"
	generations "$target" "$d/log" "$v" 64 ${last:+"$last"}
	[ -z "$last" ] || want_snaps=1
	nsnap=$(find "$d/mnt/.snapshots" -mindepth 1 -maxdepth 1 -name 'vol@g*' | wc -l)
	[ "$nsnap" -eq "$want_snaps" ] || problem "$target: $nsnap snapshots listed, not $want_snaps"
	stop "$key"
	[ -n "$last" ] ||
		index_kv "64 generations of 1/64 of $DISK_GIB GiB, 64 snapshots" "$d/store" "$DISK_GIB"
	warm "$d"/store/chunks/*
	vs "$key" "$d/store" "$d/mnt"
	kv startup "$target" "setup, s" "$(((($(now_ms) - t0) + 500) / 1000))"
	kv startup "$target" "mount, ms" "$MOUNT_MS"
	first_read "$target" "$v"
	exec {HOLD}<"$v"
	bench "$target" "$v" "$key" "$d/store/chunks/* $d/store/index.sqlite*"
	exec {HOLD}<&-
	HOLD=
	daemon_done "$key" startup "$target"
	rm -rf "$d"
}

if want vsnapfs-frag64; then vs_layers vsnapfs-frag64 f64 last; fi
if want vsnapfs-depth64; then vs_layers vsnapfs-depth64 d64; fi

# ============================================================================
# pairs: vsnapfs, the pass-through, qcow2, fuse-null and raw side by side
# ============================================================================

# The job rows above measure each target for RT seconds, minutes apart.  On
# this shared machine the CPU time every process spends per I/O drifts by a
# third over minutes (fio's own as much as the daemons'), and whatever else
# runs meanwhile lands on one target only; a ratio of two rows carries
# both.  Here a fresh vsnapfs volume, a fresh plain file under the
# pass-through and a qcow2 overlay over a base converted from that file (as
# the qsd-qcow2 target), written alike, are mounted at once, and short
# slices of a job go round them (odd rounds vsnapfs first, even rounds
# last), so that each round's ratios have every side measured seconds
# apart: randread, randwrite, then fsyncwrite (BENCH_PAIRS_JOBS).  Per
# slice: IOPS, the daemon's CPU per I/O and fio's; the median round is the
# figure.  A fourth side, fuse-null (the pass-through with PT_NULL=1: no
# system call behind a request), is the floor of FUSE on this machine:
# vsnapfs / fuse-null says how much of what any FUSE daemon could serve
# vsnapfs serves, fuse-null / qsd-qcow2 the highest ratio against qcow2
# that any FUSE daemon could reach here.  A fifth, raw, is fio on a plain
# file of its own with O_DIRECT, no FUSE: the device's side of each job.
# For fsyncwrite it is what one durable 4 KiB write costs on this host at
# all, and raw / qsd-qcow2 the highest ratio against qcow2 that a daemon
# whose writes each cost one device write could reach; for the other jobs
# it is no bound (raw uses the device, the FUSE sides the page cache).
# After a write slice, as after a job, the host's dirty pages are written
# back and the daemon's background work (GC) is waited for, so that it does
# not land on the next side's slice.

# pair_slice JOB TARGET FILE NAME: one slice of JOB on FILE, served by
# daemon NAME (empty: none, and PAIR_DCPU is "-"); sets PAIR_IOPS,
# PAIR_DCPU (the daemon's µs of CPU per I/O) and PAIR_FCPU (fio's), after
# a write slice PAIR_BG (the daemon's CPU until idle, s: its GC, as in a
# job row's "daemon CPU after"; "-" for reads), or records the problem and
# returns 1.
pair_slice() {
	local pid= c0=0 c1=0 out=$W/json/pair.json dir=write
	[ -z "$4" ] || pid=${D_PID[$4]}
	case $1 in *read) dir=read ;; esac
	: >"$out.stderr"
	# shellcheck disable=SC2046
	if { [ -n "$pid" ] && ! c0=$(cpu_ticks "$pid"); } ||
		! fg -o "$out.stderr" timeout -k 10 $((PAIRS_S + 120)) \
		fio --name=pair --filename="$3" --size="$DISK" --ioengine=libaio --direct=1 \
		--time_based --runtime="$PAIRS_S" --fallocate=none $(job_args "$1") \
		--output-format=json --output="$out" ||
		{ [ -n "$pid" ] && ! c1=$(cpu_ticks "$pid"); }; then
		problem "pairs: $1 on $2: fio or the daemon (pid ${pid:-none}) failed: $(tail -n 3 "$out.stderr" 2>/dev/null | tr '\n' ' ')"
		return 1
	fi
	if ! read -r PAIR_IOPS PAIR_DCPU PAIR_FCPU < <(jq -r --arg d "$dir" \
		--argjson c $((c1 - c0)) --argjson t "$CLK_TCK" '
		.jobs[0] as $j | ($j[$d].total_ios) as $n | select($n > 0) |
		[ ($j[$d].iops | floor), ($c / $t * 1e6 / $n * 100 | round / 100),
		  (($j.usr_cpu + $j.sys_cpu) / 100 * $j.job_runtime / 1000 * 1e6 / $n * 100 | round / 100) ]
		| @tsv' "$out") || [ "$PAIR_IOPS" -eq 0 ]; then
		problem "pairs: $1 on $2: fio did no I/O"
		return 1
	fi
	[ -n "$pid" ] || PAIR_DCPU=-     # raw: no daemon
	PAIR_BG=-
	if [ "$dir" = write ]; then
		fg sync -f "$W"
		idle_after "$pid"
		PAIR_BG=$BG_CPU
	fi
}

# median_range NUMBER...: "MEDIAN LOWEST HIGHEST" (the median of an even
# count is the mean of the middle two).
median_range() {
	printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
		END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[1], a[NR] }'
}

# ratio A B: A / B, two decimals.
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}

# pairs_median TABLE COL RATIO...: the median of the RATIOs (and the lowest
# and highest) as the last row of TABLE.
pairs_median() {
	local table=$1 col=$2 lo med hi
	shift 2
	read -r med lo hi < <(median_range "$@")
	kv "$table" "median (lowest, highest)" "$col" "$(printf '%.2f' "$med") ($lo, $hi)"
}

# pairs_job JOB: round 0 (not kept: it warms map pages and slot entries),
# then PAIRS_N rounds of JOB, into table pairs-JOB.  Returns 1 on a failure.
pairs_job() {
	local job=$1 tb=pairs-$1 i t r v order
	local -A iops=()
	local -A rs=()          # ratio -> its value in each round
	log "pairs: $job, $PAIRS_N rounds of $PAIRS_S s per side"
	for ((i = 0; i <= PAIRS_N; i++)); do
		order="vsnapfs fuse-passthrough qsd-qcow2 fuse-null raw"
		[ $((i % 2)) -eq 0 ] && order="raw fuse-null qsd-qcow2 fuse-passthrough vsnapfs"
		for t in $order; do
			pair_slice "$job" "$t" "${P_FILE[$t]}" "${P_NAME[$t]}" || return 1
			[ "$i" -gt 0 ] || continue
			kv "$tb" "round $i" "$t IOPS" "$PAIR_IOPS"
			[ "$PAIR_DCPU" = - ] ||
				kv "$tb" "round $i" "$t: daemon CPU per I/O, µs" "$PAIR_DCPU"
			kv "$tb" "round $i" "$t: fio CPU per I/O, µs" "$PAIR_FCPU"
			[ "$PAIR_BG" = - ] ||
				kv "$tb" "round $i" "$t: daemon CPU after the slice, until idle, s" "$PAIR_BG"
			iops[$t]=$PAIR_IOPS
		done
		[ "$i" -gt 0 ] || continue
		for r in $PAIR_RATIOS; do
			v=$(ratio "${iops[${r%/*}]}" "${iops[${r#*/}]}")
			rs[$r]+=" $v"
			kv "$tb" "round $i" "${r%/*} / ${r#*/}" "$v"
		done
	done
	for r in $PAIR_RATIOS; do
		# shellcheck disable=SC2086
		pairs_median "$tb" "${r%/*} / ${r#*/}" ${rs[$r]}
	done
}

PAIRS_N=${BENCH_PAIRS:-8}
PAIR_RATIOS="vsnapfs/fuse-passthrough vsnapfs/qsd-qcow2 vsnapfs/fuse-null fuse-null/qsd-qcow2
	     raw/qsd-qcow2"
PAIRS_S=${BENCH_PAIRS_S:-5}
if want pairs; then
	log "pairs: fresh vsnapfs volume, plain file, qcow2 overlay, FUSE null, raw; jobs: $PAIRS_JOBS"
	mkdir -p "$W/pairs/vs" "$W/pairs/pt" "$W/pairs/qcow2" "$W/pairs/null"
	truncate -s "$DISK" "$W/pairs/disk.raw" "$W/pairs/raw.img"
	fill "$W/pairs/disk.raw" "$DISK"
	# raw's own file: its O_DIRECT writes would drop the pass-through's
	# cached pages of disk.raw
	fill "$W/pairs/raw.img" "$DISK"
	fg qemu-img convert -f raw -O qcow2 "$W/pairs/disk.raw" "$W/pairs/qcow2/base.qcow2"
	qemu-img create -q -f qcow2 -b "$W/pairs/qcow2/base.qcow2" -F qcow2 "$W/pairs/qcow2/top.qcow2"
	vs pvs "$W/pairs/store" "$W/pairs/vs"
	truncate -s "$DISK" "$W/pairs/vs/vol"
	fill "$W/pairs/vs/vol" "$DISK"
	stop pvs
	warm "$W/pairs/disk.raw" "$W/pairs/qcow2/base.qcow2" "$W"/pairs/store/chunks/*
	vs pvs "$W/pairs/store" "$W/pairs/vs"
	start ppt passthrough "$W/pairs/pt" "$PT" "$W/pairs/disk.raw" "$W/pairs/pt"
	# the floor: the same daemon with nothing behind a request (its file's
	# size comes from disk.raw, which it neither reads nor writes)
	start pnull passthrough "$W/pairs/null" env PT_NULL=1 "$PT" "$W/pairs/disk.raw" "$W/pairs/null"
	qsd pqsd "$W/pairs/qcow2" top.qcow2
	# the overlay written whole too, as the qsd-qcow2 target's is by its
	# seqwrite before its fsyncwrite: no side's writes allocate
	fill "$W/pairs/qcow2/disk" "$DISK"
	declare -A P_FILE=([vsnapfs]=$W/pairs/vs/vol [fuse-passthrough]=$W/pairs/pt/disk
			   [qsd-qcow2]=$W/pairs/qcow2/disk [fuse-null]=$W/pairs/null/disk
			   [raw]=$W/pairs/raw.img)
	declare -A P_NAME=([vsnapfs]=pvs [fuse-passthrough]=ppt [qsd-qcow2]=pqsd [fuse-null]=pnull
			   [raw]=)
	for t in "${!P_FILE[@]}"; do     # held open, as by a running VM
		exec {h}<"${P_FILE[$t]}"
		HOLDS+=("$h")
	done
	settle pairs
	for j in $PAIRS_JOBS; do
		pairs_job "$j" || { problem "pairs: jobs not run after that: $j and any after it"; break; }
	done
	for h in "${HOLDS[@]}"; do exec {h}<&-; done
	HOLDS=()
	daemon_done pvs startup "pairs: vsnapfs"
	daemon_done ppt startup "pairs: fuse-passthrough"
	daemon_done pqsd startup "pairs: qsd-qcow2"
	daemon_done pnull startup "pairs: fuse-null"
	rm -rf "$W/pairs"
fi

# ============================================================================
# snapshot, clone and rmdir times; index size
# ============================================================================

# (the daemon removes chunk files in the background: du may see one go)
chunks_mib() { { du -sm "$1/chunks" 2>/dev/null || true; } | cut -f1; }

# op_ms CMD...: run CMD (120 s at most); OP_MS is its time in ms, or the
# problem is recorded and 1 returned.
OPS_REPS=${BENCH_OPS_REPS:-5}
op_ms() {
	local t0 rc=0
	t0=$(now_ms)
	fg timeout -k 5 120 "$@" || rc=$?
	OP_MS=$(($(now_ms) - t0))
	[ $rc -eq 0 ] && return 0
	problem "snapshot ops: '$*' failed (status $rc)"
	return 1
}

# ops_kv ROW COL MS...: the median of the MS (with the lowest and highest)
# into the ops table; "failed" when none ran (a failed cycle is a problem
# already, and the cycles before it count).
ops_kv() {
	local row=$1 col=$2 med lo hi
	shift 2
	if [ $# -eq 0 ]; then
		kv ops "$row" "$col" failed
		return 0
	fi
	read -r med lo hi < <(median_range "$@")
	kv ops "$row" "$col" "$med ($lo–$hi)"
}

# map_load_stall COL VOLUME SIDE: time the first 4 KiB read of VOLUME (it
# loads the volume's block map: O(its blocks)) while a VM on the volume
# SIDE does 4 KiB writes each followed by fdatasync, and record the longest
# of those fdatasyncs: what one VM starting costs the others.
map_load_stall() {
	local col=$1 vol=$2 side=$3 t0 v rc=0 json=$W/ops/side.json
	fio --name=side --filename="$side" --size=64m --bs=4k --rw=randwrite --direct=1 \
		--ioengine=psync --fdatasync=1 --time_based --runtime=4 \
		--output-format=json --output="$json" >/dev/null 2>&1 &
	SIDE=$!
	sleep 1
	t0=$(now_ms)
	fg timeout -k 5 120 dd if="$vol" of=/dev/null bs=4k count=1 iflag=direct status=none || rc=$?
	if [ $rc -eq 0 ]; then
		kv ops "first 4 KiB read (map load), ms" "$col" "$(($(now_ms) - t0))"
	else
		problem "snapshot ops: the first read of $vol failed (status $rc)"
		kv ops "first 4 KiB read (map load), ms" "$col" failed
	fi
	rc=0
	wait "$SIDE" || rc=$?
	SIDE=
	if [ $rc -eq 0 ] && v=$(jq -e '.jobs[0].sync.lat_ns.max / 1e6 | floor' "$json"); then
		kv ops "longest fdatasync on another volume meanwhile, ms" "$col" "$v"
	else
		problem "snapshot ops: the fdatasync job on $side failed (status $rc)"
		kv ops "longest fdatasync on another volume meanwhile, ms" "$col" failed
	fi
}

if want ops; then
	log "snapshot ops: fresh store, 1 GiB and $BIG_GIB GiB volumes"
	mkdir -p "$W/ops/mnt"
	M=$W/ops/mnt
	vs ops "$W/ops/store" "$M"
	sizes=(1)
	if [ "$(avail_gib)" -ge $((BIG_GIB + 3)) ]; then
		sizes+=("$BIG_GIB")
	else
		problem "snapshot ops: $BIG_GIB GiB volume skipped, only $(avail_gib) GiB free"
	fi
	written=0
	for s in "${sizes[@]}"; do
		truncate -s "${s}G" "$M/v$s"
		fill "$M/v$s" "${s}g"
		written=$((written + s))
	done
	truncate -s 64M "$M/side"
	stop ops
	index_kv "sequential 1 MiB writes ($(IFS=+; echo "${sizes[*]}") GiB)" "$W/ops/store" "$written"
	vs ops "$W/ops/store" "$M"
	for s in "${sizes[@]}"; do
		col="$s GiB allocated"
		t0=$(now_ms)
		exec {HOLD}<"$M/v$s"        # the volume is in use, as by a running VM
		kv ops "open the volume, ms" "$col" "$(($(now_ms) - t0))"
		map_load_stall "$col" "$M/v$s" "$M/side"
		# OPS_REPS cycles; each op's median (and range): one run of a
		# command of a few ms is mostly the host's fsync latency
		t_mk=() t_cp=() t_rm=() t_rd=() grown=0
		for ((r = 0; r < OPS_REPS; r++)); do
			op_ms mkdir "$M/.snapshots/v$s@s" || break
			t_mk+=("$OP_MS")
			c0=$(chunks_mib "$W/ops/store")
			op_ms cp "$M/.snapshots/v$s@s/v$s" "$M/c$s" || break
			t_cp+=("$OP_MS")
			c1=$(chunks_mib "$W/ops/store")
			if [ -n "$c0" ] && [ -n "$c1" ] && [ $((c1 - c0)) -gt "$grown" ]; then
				grown=$((c1 - c0))
			fi
			op_ms rm "$M/c$s" || break
			t_rm+=("$OP_MS")
			op_ms rmdir "$M/.snapshots/v$s@s" || break
			t_rd+=("$OP_MS")
		done
		ops_kv "mkdir .snapshots/v@s, ms" "$col" "${t_mk[@]}"
		ops_kv "cp snapshot to clone (linked), ms" "$col" "${t_cp[@]}"
		[ ${#t_cp[@]} -gt 0 ] || grown=failed
		kv ops "store growth from the cp, MiB (largest over the cycles)" "$col" "$grown"
		if [ "$grown" -gt $((s * 1024 / 100 + 8)) ]; then
			problem "snapshot ops: cp of a $s GiB snapshot grew the store by $grown MiB: a full copy, not a linked clone"
		fi
		ops_kv "rm clone, ms" "$col" "${t_rm[@]}"
		ops_kv "rmdir snapshot (merge into the volume), ms" "$col" "${t_rd[@]}"
		exec {HOLD}<&-
		HOLD=
		log "snapshot ops: $s GiB done"
	done
	daemon_done ops memory "snapshot-ops daemon (1 + $BIG_GIB GiB volumes open, snapshot, clone)"
	rm -rf "$W/ops"
fi

# ============================================================================
# memory: a 1 TiB volume with 4 GiB written at scattered offsets
# ============================================================================

if want memory; then
	log "memory: 1 TiB volume, $SCATTER_GIB GiB of 4 KiB writes at random offsets"
	mkdir -p "$W/mem/mnt"
	M=$W/mem/mnt
	vs mem "$W/mem/store" "$M"
	truncate -s 1T "$M/big"
	t0=$(now_ms)
	fg -q fio --name=scatter --filename="$M/big" --size=1t --io_size="${SCATTER_GIB}g" --bs=4k --rw=randwrite \
		--norandommap --randrepeat=1 --iodepth=16 --direct=1 --ioengine=libaio \
		--fallocate=none --end_fsync=1 --output-format=terse
	kv memory "1 TiB volume: writing daemon, after $SCATTER_GIB GiB scattered" "peak RSS (VmHWM), MiB" \
		"$(rss_mib "${D_PID[mem]}" VmHWM)"
	log "memory: scattered writes took $((($(now_ms) - t0) / 1000)) s"
	stop mem
	index_kv "4 KiB writes scattered over 1 TiB ($SCATTER_GIB GiB)" "$W/mem/store" "$SCATTER_GIB"
	vs mem "$W/mem/store" "$M"
	t0=$(now_ms)
	exec {HOLD}<"$M/big"
	row="1 TiB volume: fresh daemon, after open + ${RT} s of random 4 KiB reads"
	kv memory "$row" "open (map load), ms" "$(($(now_ms) - t0))"
	fg -q fio --name=readback --filename="$M/big" --size=1t --bs=4k --rw=randread --iodepth=16 \
		--direct=1 --ioengine=libaio --time_based --runtime="$RT" --output-format=terse
	kv memory "$row" "peak RSS (VmHWM), MiB" "$(rss_mib "${D_PID[mem]}" VmHWM)"
	kv memory "$row" "RSS now, MiB" "$(rss_mib "${D_PID[mem]}" VmRSS)"
	exec {HOLD}<&-
	HOLD=
	stop mem
	rm -rf "$W/mem"
fi

# ============================================================================
# scale (issue 13): index size, first read and memory against size and history
# ============================================================================

# The figures of issue 13's table that the fio jobs do not give, each on
# volumes of its own, one after the other (each part checks the free space
# first, halves its size until it fits, says so, and removes its store):
#
#   1. a SC_SEQ_GIB volume written sequentially: index per GiB, first read
#      after a mount, RSS after it;
#   2. four SC_RAND_GIB volumes, every block written once at random in 4 KiB
#      writes, the fourth in 64 generations with a snapshot after each:
#      index per GiB, first read with and without history, then a fresh
#      daemon reading all four at random: peak RSS and IOPS, and, once the
#      daemon has -o map_cache, the same with map_cache=64M (the ratio);
#   3. sparse volumes of the sizes SC_SIZES with the first SC_FILL_MIB of
#      every GiB written: open time and RSS against the volume's size.

# scale ROW VALUE UNIT TARGET HOW: one figure of the issue's table.
scale() {
	kv scale "$1" "this run" "$2"
	kv scale "$1" unit "$3"
	kv scale "$1" "target (issue 13)" "$4"
	kv scale "$1" "measured on" "$5"
}

# fit WHAT WANT PERMILLE: FIT, WANT GiB halved until FIT * PERMILLE / 1000
# GiB of data leave 3 GiB free in $W.  Says so when FIT is less than WANT;
# FIT=0 (not even 1 GiB fits) is a problem.
fit() {
	local a
	a=$(avail_gib)
	FIT=$2
	while [ "$FIT" -gt 0 ] && [ $(((FIT * $3 + 999) / 1000 + 3)) -gt "$a" ]; do FIT=$((FIT / 2)); done
	if [ "$FIT" -eq 0 ]; then
		problem "scale: no room for $1 ($a GiB free)"
	elif [ "$FIT" -ne "$2" ]; then
		log "scale: $a GiB free: $1 is $FIT GiB, not $2"
	fi
}

# index_what: how INDEX_BYTES was measured, for the "measured on" column.
index_what() {
	if [ "$WAL_BYTES" -eq 0 ]; then
		echo "index.sqlite after unmount (the daemon's last close checkpoints the WAL and removes it; none was left)"
	else
		echo "index.sqlite plus the $WAL_BYTES bytes of its -wal left after unmount"
	fi
}

# scale_read ROW FILE HOW: time the first 4 KiB read of FILE into ROW.
scale_read() {
	if read4k "$2"; then
		scale "$1" "$READ_MS" ms "<= 20" "$3"
	else
		problem "scale: the first 4 KiB read of $2 failed"
		scale "$1" failed ms "<= 20" "$3"
	fi
}

# scale_randread [ARG...]: mount the store of part 2 with the ARGs, open the
# four volumes (kept open, as by four running VMs) and read their first
# 4 KiB (FIRST_MS: those reads' times), then fio random 4 KiB reads over all
# four at once for RT s.  RR_IOPS: the reads' IOPS; RR_HWM: the daemon's
# peak RSS (VmHWM) in MiB.
scale_randread() {
	local v h args=()
	FIRST_MS=()
	vs scale "$S/store" "$M" "$@"
	for v in 1 4 2 3; do
		exec {h}<"$M/v$v"
		HOLDS+=("$h")
		if read4k "$M/v$v"; then
			FIRST_MS[v]=$READ_MS
		else
			FIRST_MS[v]=failed
			problem "scale: the first 4 KiB read of $M/v$v failed"
		fi
		args+=(--name="v$v" --filename="$M/v$v")
	done
	if fg -q fio --group_reporting --size="${g}g" --bs=4k --rw=randread --iodepth=8 --direct=1 \
		--ioengine=libaio --time_based --runtime="$RT" --output-format=json \
		--output="$S/randread.json" "${args[@]}"; then
		RR_IOPS=$(jq '.jobs[0].read.iops | floor' "$S/randread.json")
	else
		problem "scale: random reads over the four volumes failed (mounted with: ${*:-no options})"
		RR_IOPS=failed
	fi
	RR_HWM=$(rss_mib "${D_PID[scale]}" VmHWM)
	for h in "${HOLDS[@]}"; do exec {h}<&-; done
	HOLDS=()
	stop scale
}

SC_SEQ_GIB=${BENCH_SCALE_SEQ_GIB:-16}
SC_RAND_GIB=${BENCH_SCALE_RAND_GIB:-4}
SC_SIZES=${BENCH_SCALE_SIZES:-1 8 64}
SC_FILL_MIB=${BENCH_SCALE_FILL_MIB:-256}
SC_BIG_CACHE=${BENCH_SCALE_BIG_CACHE:-4G}

if want scale; then
	t_scale=$(now_ms)
	S=$W/scale
	M=$S/mnt
	mkdir -p "$M"
	help=$("$VSNAPFS" --help 2>&1 || true)
	has_map_cache=0
	if [[ $help == *map_cache=* ]]; then has_map_cache=1; fi
	log "scale: $(avail_gib) GiB free; -o map_cache: $([ $has_map_cache = 1 ] && echo yes || echo "not an option yet")"

	# ---- 1. a volume written sequentially ----
	fit "the sequential volume" "$SC_SEQ_GIB" 1010
	g=$FIT
	if [ "$g" -gt 0 ]; then
		log "scale: a $g GiB volume, written sequentially"
		t0=$(now_ms)
		vs scale "$S/store" "$M"
		truncate -s "${g}G" "$M/seq"
		fill "$M/seq" "${g}g"
		stop scale
		log "scale: $g GiB written and unmounted in $((($(now_ms) - t0) / 1000)) s"
		index_bytes "$S/store"
		scale "index per GiB written, 1 MiB sequential writes" \
			"$(awk -v b="$INDEX_BYTES" -v g="$g" 'BEGIN { printf "%.1f", b / 1024 / g }')" \
			"KiB per GiB" "<= 64" \
			"a $g GiB volume written with fio, 1 MiB O_DIRECT, QD8; $(index_what)"
		quiet "scale: first read"
		vs scale "$S/store" "$M"
		rss0=$(rss_mib "${D_PID[scale]}" VmRSS)
		scale_read "first 4 KiB read after mount, $g GiB volume written sequentially" "$M/seq" \
			"dd bs=4k count=1 iflag=direct right after the mount (which took $MOUNT_MS ms)"
		rss1=$(rss_mib "${D_PID[scale]}" VmRSS)
		scale "daemon RSS after that read, per GiB of that volume" \
			"$(awk -v a="$rss0" -v b="$rss1" -v g="$g" 'BEGIN { printf "%.1f", (b - a) / g }')" \
			"MiB per GiB" "bounded by map_cache" \
			"VmRSS after the read minus after the mount: $rss0 -> $rss1 MiB"
		stop scale
		rm -rf "$S/store"
	fi

	# ---- 2. four volumes written at random, one with 64 snapshots ----
	fit "each of the four random volumes" "$SC_RAND_GIB" $((4 * 1010))
	g=$FIT
	if [ "$g" -gt 0 ]; then
		log "scale: four $g GiB volumes, written at random in 4 KiB (v4: 64 generations, a snapshot after each)"
		t0=$(now_ms)
		layout 64 13 "$S/layout" 4096 $((g * GIB)) random
		iologs "$S/layout" "$S/log" "$M/v4" 4096
		rm -f "$S/layout"
		vs scale "$S/store" "$M"
		for v in 1 2 3 4; do truncate -s "${g}G" "$M/v$v"; done
		fg -q fio --size="${g}g" --bs=4k --rw=randwrite --iodepth=16 --direct=1 --ioengine=libaio \
			--fallocate=none --end_fsync=1 --output-format=terse \
			--name=v1 --filename="$M/v1" --name=v2 --filename="$M/v2" --name=v3 --filename="$M/v3"
		log "scale: v1-v3 written in $((($(now_ms) - t0) / 1000)) s"
		generations "scale: v4" "$S/log" "$M/v4" 64
		rm -rf "$S/log"
		hwm_w=$(rss_mib "${D_PID[scale]}" VmHWM)
		stop scale
		log "scale: four volumes written and unmounted in $((($(now_ms) - t0) / 1000)) s"
		index_bytes "$S/store"
		scale "index per GiB written, 4 KiB random writes" \
			"$(awk -v b="$INDEX_BYTES" -v g=$((4 * g)) 'BEGIN { printf "%.1f", b / 1024 / g }')" \
			"KiB per GiB" "<= 6758 (6.6 MiB)" \
			"four $g GiB volumes, each block written once at a random place in the order, 4 KiB O_DIRECT QD16 (the fourth in 64 generations with a snapshot after each); $(index_what)"
		quiet "scale: first reads"
		if [ $has_map_cache = 1 ]; then
			scale_randread -o "map_cache=$SC_BIG_CACHE"
			unl="-o map_cache=$SC_BIG_CACHE, more than these maps take"
		else
			scale_randread
			unl="no map_cache option yet: every map is held whole"
		fi
		scale "first 4 KiB read after mount, $g GiB volume written by random 4 KiB writes" \
			"${FIRST_MS[1]}" ms "<= 20" "v1 of these four, the first read right after the mount ($unl)"
		scale "first 4 KiB read after mount, the same with $GENS snapshots in its history" \
			"${FIRST_MS[4]}" ms "<= 20" "v4, read second (v1 open meanwhile)"
		iops_big=$RR_IOPS
		scale "daemon peak RSS, the four volumes read at random, unlimited map cache" "$RR_HWM" MiB "–" \
			"a fresh daemon ($unl): the four opened and held, first 4 KiB of each read, fio randread 4 KiB O_DIRECT, QD8 per volume, $RT s; VmHWM. $(awk -v m="$RR_HWM" -v n=$((4 * g * 262144)) 'BEGIN { printf "%.1f", m * 1048576 / n }') bytes per 4 KiB block of the four. The writing daemon: $hwm_w MiB"
		scale "random 4 KiB read IOPS over the four volumes, unlimited map cache" "$iops_big" IOPS "–" \
			"the same fio run"
		if [ $has_map_cache = 1 ]; then
			scale_randread -o map_cache=64M
			scale "daemon peak RSS, the same with -o map_cache=64M" "$RR_HWM" MiB "<= 160 (64 + 96)" \
				"a fresh daemon, the same reads"
			scale "random 4 KiB read IOPS, map_cache=64M / unlimited" \
				"$(awk -v a="$RR_IOPS" -v b="$iops_big" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "failed" }')" \
				ratio ">= 0.5" "$RR_IOPS against $iops_big IOPS, the same fio run on a fresh daemon"
		else
			scale "daemon peak RSS, the same with -o map_cache=64M" n/a MiB "<= 160 (64 + 96)" \
				"not run: vsnapfs --help lists no map_cache option"
			scale "random 4 KiB read IOPS, map_cache=64M / unlimited" n/a ratio ">= 0.5" \
				"not run: no map_cache option"
		fi
		rm -rf "$S/store"
	fi

	# ---- 3. open time and RSS against the volume's size ----
	read -r -a sizes <<<"$(tr ' ' '\n' <<<"$SC_SIZES" | sed '/^$/d' | sort -n | tr '\n' ' ')"
	big=${sizes[${#sizes[@]} - 1]}
	fit "the largest sparse volume" "$big" $(((SC_FILL_MIB * 1010 + 1023) / 1024))
	g=$FIT
	if [ "$g" -ne "$big" ]; then
		sz=()
		for s in "${sizes[@]}"; do if [ "$s" -lt "$g" ]; then sz+=("$s"); fi; done
		if [ "$g" -gt 0 ]; then sz+=("$g"); fi
		sizes=("${sz[@]}")
	fi
	: >"$S/points"
	for s in "${sizes[@]}"; do
		row="$s GiB volume"
		w_mib=$((s * SC_FILL_MIB))
		log "scale: a sparse $s GiB volume, the first $SC_FILL_MIB MiB of every GiB written"
		t0=$(now_ms)
		vs scale "$S/store" "$M"
		truncate -s "${s}G" "$M/sz"
		# strided zones: fio writes the first zonesize of every zonerange
		fg -q fio --name=sparse --filename="$M/sz" --size="${s}g" --io_size="${w_mib}m" \
			--zonemode=strided --zonerange=1g --zonesize="${SC_FILL_MIB}m" --bs=1m \
			--rw=write --iodepth=8 --direct=1 --ioengine=libaio --fallocate=none \
			--end_fsync=1 --output-format=terse
		stop scale
		log "scale: $s GiB volume written and unmounted in $((($(now_ms) - t0) / 1000)) s"
		index_bytes "$S/store"
		quiet "scale: $s GiB open"
		vs scale "$S/store" "$M"
		mnt=$MOUNT_MS
		rss0=$(rss_mib "${D_PID[scale]}" VmRSS)
		if read4k "$M/sz"; then rd=$READ_MS; else rd=failed; problem "scale: the first read of the $s GiB volume failed"; fi
		rss1=$(rss_mib "${D_PID[scale]}" VmRSS)
		stop scale
		rm -rf "$S/store"
		kv scale-size "$row" "written, GiB" "$(awk -v m="$w_mib" 'BEGIN { printf "%.2f", m / 1024 }')"
		kv scale-size "$row" "index, MiB" "$(awk -v b="$INDEX_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')"
		kv scale-size "$row" "mount, ms" "$mnt"
		kv scale-size "$row" "first 4 KiB read, ms" "$rd"
		if [ "$rd" != failed ]; then
			kv scale-size "$row" "open time (mount + read), ms" "$((mnt + rd))"
			echo "$s $((mnt + rd)) $rss1" >>"$S/points"
		fi
		kv scale-size "$row" "RSS after the mount, MiB" "$rss0"
		kv scale-size "$row" "RSS after the read, MiB" "$rss1"
	done
	# Least-squares slopes: open time (ms) and RSS after the read (bytes)
	# per GiB of volume size.
	read -r n ms_gib b_gib < <(awk '{ n++; x += $1; y += $2; r += $3 * 1048576
		xx += $1 * $1; xy += $1 * $2; xr += $1 * $3 * 1048576 }
		END { d = n * xx - x * x
		      if (n < 2 || d == 0) { print n + 0, "n/a", "n/a"; exit }
		      printf "%d %.1f %.0f\n", n, (n * xy - x * y) / d, (n * xr - x * r) / d }' "$S/points")
	line="sparse volumes of $(IFS=,; echo "${sizes[*]}") GiB, the first $SC_FILL_MIB MiB of every GiB written (fio 1 MiB O_DIRECT QD8, strided), so per GiB written it is $((1024 / SC_FILL_MIB))x this; a fresh mount each; least-squares line over the $n sizes (table below)"
	kv scale-size "growth per GiB of volume size (least squares)" "open time (mount + read), ms" "$ms_gib per GiB"
	kv scale-size "growth per GiB of volume size (least squares)" "RSS after the read, MiB" \
		"$(awk -v b="$b_gib" 'BEGIN { if (b == "n/a") print b; else printf "%.2f per GiB", b / 1048576 }')"
	scale "open time (mount + first 4 KiB read), per GiB of volume size" "$ms_gib" "ms per GiB" \
		"0: the same at 1 GiB and 16 TiB (SPEC)" "$line"
	scale "daemon RSS after that read, per GiB of volume size" "$b_gib" "bytes per GiB" \
		"0 past map_cache (SPEC)" "$line"
	scale "wall time of this section" "$((($(now_ms) - t_scale + 500) / 1000))" s "–" \
		"parts 1-3, set-up and writing included"
	log "scale: done in $((($(now_ms) - t_scale) / 1000)) s"
	rm -rf "$S"
fi

# ============================================================================
# report
# ============================================================================

# Everything a daemon said at warning level or worse is worth a look.
for f in "$W"/logs/*.log; do
	{ grep -iE 'warn|error|crit|fail|abort|assert|sanitizer|corrupt' "$f" || true; } |
		head -n 5 | while IFS= read -r l; do echo "$(basename "$f" .log): $l"; done
done >"$W/daemon-warnings"
while IFS= read -r l; do problem "daemon log: $l"; done <"$W/daemon-warnings"

PR_ORDER=/sys/module/page_reporting/parameters/page_reporting_order
ELAPSED=$(($(date +%s) - T_START))
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
printf '%s\n' "${PROBLEMS[@]}" | sed '/^$/d' >"$W/problems"
HOST="$(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
HOST="$HOST, kernel $(uname -r), $(stat -f -c %T "$W") on $(df --output=source "$W" | tail -n 1)"
# A virtual machine whose balloon reports free pages hands them back to the
# hypervisor: a page taken again (a new page-cache page of a chunk file)
# faults on the host at its first write (docs/performance.md, "Random
# writes: the FUSE floor, ...").  An order above 10 reports nothing.
# VIRTIO_BALLOON_F_REPORTING is feature bit 5 (the features file lists
# bits from 0, one character each).
for b in /sys/bus/virtio/drivers/virtio_balloon/virtio*/features; do
	[ -r "$PR_ORDER" ] && [ -r "$b" ] && [ "$(cut -c6 "$b")" = 1 ] || continue
	HOST="$HOST, free page reporting (virtio-balloon) order $(cat "$PR_ORDER")"
	break
done

awk -v date="$DATE" -v elapsed="$ELAPSED" -v rt="$RT" -v disk="$DISK_GIB" -v host="$HOST" \
    -v build="$BUILD" \
    -v targets="${TARGETS[*]}" -v jobs="${JOBS[*]}" -v ratios_out="$W/ratios.tsv" \
    -v problems="$W/problems" -f "$HERE/report.awk" \
    "$JOBS_TSV" "$KV_TSV" "$W/joblog.tsv" >"$OUT/results.md"

# results.json: the same numbers, unformatted.
jq -n --arg date "$DATE" --argjson elapsed "$ELAPSED" --argjson rt "$RT" \
      --argjson disk "$DISK_GIB" --arg host "$HOST" --arg build "$BUILD" \
      --rawfile jobs "$JOBS_TSV" --rawfile kv "$KV_TSV" --rawfile ratios "$W/ratios.tsv" \
      --rawfile problems "$W/problems" --rawfile joblog "$W/joblog.tsv" '
	def rows($s): $s | split("\n") | map(select(length > 0) | split("\t"));
	def num: if . == null or . == "" or . == "-" then null else (tonumber? // .) end;
	{ date: $date, command: "make bench", runtime_per_job_s: $rt, disk_gib: $disk,
	  host: $host, build: $build, elapsed_s: $elapsed,
	  units: { mb_s: "10^6 bytes/s", p99_ms: "ms, fio completion latency (lat_ns) p99",
		   sync_p99_ms: "ms, p99 of fdatasync (fsyncwrite only)",
		   cpu_s: "daemon utime+stime during the job",
		   writeback_s: "syncfs of the host file system right after the job",
		   other_cpus: "CPUs used by processes other than the daemon, fio and kernel threads during the job (noise)",
		   kthread_cpus: "CPUs used by kernel threads (writeback, journal, kworkers) during the job",
		   bg_cpu_s: "daemon utime+stime after the job until it was idle (at most BENCH_IDLE_S): the background work the job left" },
	  jobs: [ rows($jobs)[] | { target: .[0], job: .[1], status: .[2],
		  mb_s: (.[3] | num), iops: (.[4] | num), p99_ms: (.[5] | num),
		  sync_p99_ms: (.[6] | num), cpu_s: (.[7] | num), ios: (.[8] | num),
		  runtime_s: (.[9] | num), writeback_s: (.[10] | num),
		  other_cpus: (.[11] | num), kthread_cpus: (.[12] | num), bg_cpu_s: (.[14] | num) } ],
	  daemon_log_during_jobs: [ rows($joblog)[] | { target: .[0], job: .[1], line: .[2] } ],
	  ratios: [ rows($ratios)[] | { job: .[0], ratio: .[1], throughput: (.[2] | num),
		    p99: (.[3] | num), cpu_per_io: (.[4] | num) } ],
	  tables: (reduce rows($kv)[] as $r ({}; .[$r[0]][$r[1]][$r[2]] = ($r[3] | num))),
	  problems: (rows($problems) | map(.[0])) }' >"$OUT/results.json"

# chart.png: MB/s of the sequential jobs, IOPS of the random ones, log scale.
awk -F'\t' -v targets="${TARGETS[*]}" -v jobs="${JOBS[*]}" '
	$3 == "ok" { v[$1, $2] = ($2 ~ /^(seq|cold)/) ? $4 : $5 }
	END {
		nt = split(targets, t, " "); nj = split(jobs, j, " ")
		printf "job"; for (i = 1; i <= nt; i++) printf "\t%s", t[i]; print ""
		for (k = 1; k <= nj; k++) {
			printf "%s", j[k]
			for (i = 1; i <= nt; i++) printf "\t%s", ((t[i], j[k]) in v) ? v[t[i], j[k]] : "?"
			print ""
		}
	}' "$JOBS_TSV" >"$OUT/chart.dat"
awk 'NR == 1 || $1 ~ /^(seq|cold)/' "$OUT/chart.dat" >"$W/seq.dat"
awk 'NR == 1 || $1 !~ /^(seq|cold)/' "$OUT/chart.dat" >"$W/rand.dat"
# Bar k of 8 in a cluster sits at x + (k - 3.5) / 9 (cluster gap 1); the
# value is printed above each bar.
# A selection can leave a whole column empty, which gnuplot refuses to plot.
gnuplot <<EOF || log "chart.png: gnuplot failed (with BENCH_TARGETS/BENCH_JOBS: an empty column)"
set terminal pngcairo size 1500,650 font "DejaVu Sans,11"
set output "$OUT/chart.png"
set datafile separator "\t"
set datafile missing "?"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.9 border rgb "#333333"
set boxwidth 0.95
set logscale y
set format y "%.0f"
set grid ytics
set key outside bottom center horizontal
set xtics scale 0
array C[8] = ["#9e9e9e", "#4d4d4d", "#9ecae1", "#2171b5", "#fdae6b", "#d94801", "#a1d99b", "#238b45"]
set multiplot layout 1,2 title "vsnapfs bench, ${DATE}: ${DISK_GIB} GiB disk, ${RT} s per job, log scale, higher is better"
set title "sequential 1 MiB, QD1 (coldread: after the host dropped its caches)"
set ylabel "MB/s"
set xrange [-0.55:2.55]
set yrange [10:20000]
plot for [i=2:9] "$W/seq.dat" using i:xtic(1) title columnheader(i) lc rgb C[i-1], \
     for [i=2:9] "$W/seq.dat" using (\$0 + (i - 5.5) / 9.0):i:(sprintf("%.0f", column(i))) \
	 every ::1 with labels rotate by 90 left offset 0,0.4 font ",8" notitle
set title "random 4 KiB, QD16 (fsyncwrite: QD1, fdatasync after each)"
set ylabel "IOPS"
set xrange [-0.55:2.55]
set yrange [100:1000000]
plot for [i=2:9] "$W/rand.dat" using i:xtic(1) title columnheader(i) lc rgb C[i-1], \
     for [i=2:9] "$W/rand.dat" using (\$0 + (i - 5.5) / 9.0):i:(sprintf("%.0f", column(i))) \
	 every ::1 with labels rotate by 90 left offset 0,0.4 font ",8" notitle
unset multiplot
EOF

cat "$OUT/results.md"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s; results in $OUT/results.md, results.json, chart.png"
[ $FAILED -eq 0 ] || log "there were problems: see \"Problems\" in $OUT/results.md"
exit $FAILED
