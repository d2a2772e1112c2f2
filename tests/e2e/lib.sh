# Shared harness of the end-to-end tests; every tests/e2e/t-*.sh sources it.
#
# What it gives a test:
#   $T                  a private temp dir, removed at exit
#   $B $VSNAPFS $VSNAPCTL $TOOLS   the build under test (run-all.sh exports B)
#   vs_mount STORE MNT [ARGS...]   start "$VSNAPFS -f ARGS STORE MNT" in the
#                       background, wait (10 s deadline) for the mount
#   vs_umount MNT       fusermount3 -u, wait for that daemon to exit cleanly
#   vs_kill9 MNT [--keep-mount]   SIGKILL that daemon, lazily unmount the dead
#                       mount (unless --keep-mount: the EXIT trap does)
#   vs_pid MNT, vs_log MNT         the daemon's pid and log file
#   vs_losetup FILE [ARGS...]      attach a loop device; sets LOOPDEV
#   vs_losetup_dio FILE [ARGS...]  the same with direct I/O if the kernel takes it
#   vs_lodetach DEV     detach it
#   vs_blkmount DEV DIR [ARGS...]  mount a block device; vs_blkumount DIR
#   vs_track_pid PID, vs_wait_pid PID SECS   other background processes
#   vs_track_fuse MNT PID          a FUSE mount served by a test tool
#   fail MSG, pass, skip MSG, note MSG, assert_eq, assert_df_same, expect_errno,
#   with_deadline, vs_recv_parts STORE MNT (volumes being received, from the index)
#   chunk_data_off FILE where slot 0 of a chunk file starts (its header's
#                       version: 1, at 4096; 2, at data_off)
#
# Environment: VS_KEEP=1 keeps $T after the test; VS_TIME_SCALE=N multiplies
# every deadline (for sanitizer builds).
#
# Every mount, process, loop device and block mount made through these is
# undone by the EXIT trap, whatever way the test ends.  Processes are only
# ever killed by the pid we started them with, never by name.
#
# Call vs_mount, vs_losetup and vs_blkmount directly, never inside $(...):
# they record state in this shell.

set -euo pipefail
export LC_ALL=C

TEST_NAME=$(basename "$0" .sh)
_VS_LIBDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

: "${B:=$_VS_LIBDIR/../../build}"
B=$(cd "$B" 2>/dev/null && pwd) || { echo "FAIL $TEST_NAME: build dir $B missing"; exit 1; }
: "${VSNAPFS:=$B/vsnapfs}"
: "${VSNAPCTL:=$B/vsnapctl}"
: "${TOOLS:=$B/tools}"
: "${VS_TIME_SCALE:=1}"          # multiply every deadline (slow sanitizer builds)
export B VSNAPFS VSNAPCTL TOOLS VS_TIME_SCALE

declare -A _VS_PID=()          # mountpoint -> daemon pid
declare -A _VS_LOG=()          # mountpoint -> daemon log
_VS_PIDS=()                    # every daemon pid we started
_VS_MNTS=()                    # every FUSE mountpoint we mounted
_VS_LOOPS=()                   # every loop device we attached
_VS_BLKMNTS=()                 # every block-device mount we made
_VS_NLOG=0
_VS_DONE=0

note() { echo "# $*"; }

# docs/on-disk-format.md: version 1 (u32 at 8) keeps slot 0 at 4096, version
# 2 at data_off (u64 at 40)
chunk_data_off() {
	local v
	v=$(od -An -tu4 -j 8 -N4 "$1" | tr -d ' ')
	if [ "$v" = 1 ]; then echo 4096; else od -An -tu8 -j 40 -N8 "$1" | tr -d ' '; fi
}

fail() {
	echo "FAIL $TEST_NAME: $*"
	_VS_DONE=1
	exit 1
}

pass() {
	echo "PASS $TEST_NAME${1:+: $*}"
	_VS_DONE=1
	exit 0
}

# Only for capabilities this machine really lacks, never for a broken build.
skip() {
	echo "SKIP $TEST_NAME: $*"
	_VS_DONE=1
	exit 77
}

# assert_df_same MNT DIR WHAT: df of the mount MNT shows the free space of
# DIR's file system, give or take 16 MiB.  Whatever else runs on the host
# moves that file system: only a reading of MNT taken between two equal
# readings of DIR counts (tried for up to 4 s).
assert_df_same() {
	local mnt=$1 dir=$2 what=$3 host mnt_free k
	for ((k = 0; k < 20; k++)); do
		host=$(stat -f -c '%a * %S' "$dir")
		mnt_free=$(stat -f -c '%a * %S' "$mnt")
		[ "$(stat -f -c '%a * %S' "$dir")" = "$host" ] && break
		sleep 0.2
	done
	(((mnt_free) - (host) < (16 << 20) && (host) - (mnt_free) < (16 << 20))) ||
		fail "$what: df of the mount shows $((mnt_free)) bytes free, the host $((host))"
}

# vs_recv_parts STORE MNT: how many volumes being received (.vsnap-recv.*)
# the index of STORE, mounted at MNT, holds.  readdir hides them, so ls
# cannot tell; vsnapctl list first has the daemon write its log to the index.
vs_recv_parts() {
	"$VSNAPCTL" list "$2" >/dev/null || fail "vsnapctl list $2"
	sqlite3 "$1/index.sqlite" "SELECT count(*) FROM inode WHERE parent <> 0 AND
		substr(CAST(name AS TEXT), 1, 12) = '.vsnap-recv.'"
}

# assert_eq ACTUAL EXPECTED WHAT
assert_eq() {
	[ "$1" == "$2" ] || fail "$3: expected '$2', got '$1'"
}

# expect_errno TEXT CMD...: CMD must fail, and its stderr must contain TEXT
# (the strerror text, e.g. "Input/output error").  Its stderr is left in
# $T/expect.err.
expect_errno() {
	local text=$1 rc=0
	shift
	"$@" >"$T/expect.out" 2>"$T/expect.err" || rc=$?
	if [ $rc -eq 0 ]; then
		fail "'$*' succeeded; expected failure with '$text'"
	fi
	if ! grep -qF -- "$text" "$T/expect.err"; then
		fail "'$*' failed (rc $rc) but not with '$text': $(head -c 400 "$T/expect.err")"
	fi
}

# with_deadline SECS CMD...: run CMD, fail the test if it takes longer.
# (SECS times VS_TIME_SCALE, for sanitizer builds.)
with_deadline() {
	local secs=$(($1 * VS_TIME_SCALE)) rc=0
	shift
	timeout -k 5 "$secs" "$@" || rc=$?
	if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
		fail "'$*' did not finish within $secs s"
	fi
	return $rc
}

# ---- processes -------------------------------------------------------------

# True while pid is a live child of this shell (not a zombie, not a stranger
# that reused the number).
_vs_alive() {
	local pid=$1 s ppid state
	s=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	s=${s##*) }
	state=${s%% *}
	s=${s#* }
	ppid=${s%% *}
	[ "$state" != Z ] && [ "$ppid" = "$$" ]
}

# _vs_wait_pid PID SECS: wait until PID has exited; sets _VS_STATUS to its
# exit status.  Returns 1 if it is still running after SECS.
_vs_wait_pid() {
	local pid=$1 secs=$2 i
	for ((i = 0; i < secs * 20; i++)); do
		_vs_alive "$pid" || break
		sleep 0.05
	done
	if _vs_alive "$pid"; then
		return 1
	fi
	_VS_STATUS=0
	wait "$pid" 2>/dev/null || _VS_STATUS=$?
	return 0
}

# vs_track_pid PID: a background process of the test that the cleanup must
# not leave behind (it is killed, by this pid, if still running).
vs_track_pid() {
	_VS_PIDS+=("$1")
}

# vs_wait_pid PID SECS: wait for a child of this shell to exit; sets
# VS_STATUS to its exit status.  Returns 1 if still running after SECS.
vs_wait_pid() {
	_vs_wait_pid "$1" "$2" || return 1
	VS_STATUS=$_VS_STATUS
	_vs_forget_pid "$1"
}

# vs_track_fuse MNT PID: a FUSE mount served by a test tool's process PID
# (tests/tools/powercut).  The EXIT trap unmounts it where it unmounts the
# vsnapfs mounts -- after the block mounts and loop devices that may sit on
# it -- and then waits for PID to exit, or kills it.
vs_track_fuse() {
	_VS_MNTS+=("$1")
	_VS_PIDS+=("$2")
}

_vs_forget_pid() {
	local pid=$1 i
	for i in "${!_VS_PIDS[@]}"; do
		[ "${_VS_PIDS[$i]}" = "$pid" ] && unset '_VS_PIDS[i]'
	done
	return 0
}

# ---- vsnapfs mounts --------------------------------------------------------

vs_pid() { echo "${_VS_PID[$1]:?no daemon recorded for $1}"; }
vs_log() { echo "${_VS_LOG[$1]:?no daemon recorded for $1}"; }

_vs_show_log() {
	echo "---- daemon stderr $1 ----"
	tail -n 50 "$1" 2>/dev/null || true
	if [ -s "$1.stdout" ]; then
		echo "---- daemon stdout ----"
		tail -n 20 "$1.stdout"
	fi
	echo "----"
}

# vs_mount STORE MNT [ARGS...]: start the daemon in the foreground mode in
# the background; return once MNT is a mount point.  The daemon's stderr
# goes to a log file (vs_log MNT), its stdout to that name + ".stdout".
vs_mount() {
	local store=$1 mnt=$2 pid log i
	shift 2
	mkdir -p "$mnt"
	if mountpoint -q "$mnt"; then
		fail "vs_mount: $mnt is already a mount point"
	fi
	_VS_NLOG=$((_VS_NLOG + 1))
	log=$T/vsnapfs.$_VS_NLOG.log
	"$VSNAPFS" -f "$@" "$store" "$mnt" >"$log.stdout" 2>"$log" &
	pid=$!
	_VS_PIDS+=("$pid")
	_VS_MNTS+=("$mnt")
	_VS_PID[$mnt]=$pid
	_VS_LOG[$mnt]=$log
	for ((i = 0; i < 200 * VS_TIME_SCALE; i++)); do
		if mountpoint -q "$mnt"; then
			return 0
		fi
		if ! _vs_alive "$pid"; then
			_vs_wait_pid "$pid" 1 || true
			_vs_show_log "$log"
			fail "vsnapfs $* $store $mnt exited (status $_VS_STATUS) before mounting"
		fi
		sleep 0.05
	done
	_vs_show_log "$log"
	fail "vsnapfs $store $mnt: not mounted after $((10 * VS_TIME_SCALE)) s"
}

# vs_umount MNT: clean unmount; the daemon must exit with status 0.
vs_umount() {
	local mnt=$1 pid i err
	pid=$(vs_pid "$mnt")
	for ((i = 0; ; i++)); do
		if err=$(fusermount3 -u "$mnt" 2>&1); then
			break
		fi
		# "Device or resource busy" right after a process closed its
		# last file can be transient; anything else is a failure.
		if [ $i -ge 50 ]; then
			fail "fusermount3 -u $mnt: $err"
		fi
		sleep 0.1
	done
	if ! _vs_wait_pid "$pid" $((30 * VS_TIME_SCALE)); then
		kill -9 "$pid" 2>/dev/null || true
		_vs_wait_pid "$pid" 5 || true
		_vs_forget_pid "$pid"
		_vs_show_log "$(vs_log "$mnt")"
		fail "vsnapfs (pid $pid) still running $((30 * VS_TIME_SCALE)) s after fusermount3 -u $mnt; killed"
	fi
	_vs_forget_pid "$pid"
	if [ "$_VS_STATUS" -ne 0 ]; then
		_vs_show_log "$(vs_log "$mnt")"
		fail "vsnapfs (pid $pid) exited with status $_VS_STATUS after unmount of $mnt"
	fi
}

# vs_kill9 MNT: crash the daemon (SIGKILL), then clear the dead mount.
vs_kill9() {
	local mnt=$1 keep=${2:-} pid
	pid=$(vs_pid "$mnt")
	_vs_alive "$pid" || fail "vs_kill9: daemon of $mnt (pid $pid) is not running"
	# (bash's "Killed" job notice goes to /dev/null with the group's stderr)
	{
		kill -9 "$pid"
		_vs_wait_pid "$pid" 10
	} 2>/dev/null || fail "vsnapfs pid $pid survived SIGKILL for 10 s"
	_vs_forget_pid "$pid"
	[ "$keep" = --keep-mount ] && return 0        # a dead mount, for what sees it
	fusermount3 -u -z "$mnt" 2>/dev/null || true
	mountpoint -q "$mnt" && fail "vs_kill9: $mnt still mounted after fusermount3 -u -z"
	return 0
}

# ---- loop devices and block mounts ----------------------------------------

# vs_losetup FILE [ARGS...]: attach FILE to a free loop device; LOOPDEV=it.
vs_losetup() {
	local file=$1
	shift
	LOOPDEV=$(losetup --find --show "$@" "$file") || fail "losetup $* $file failed"
	_VS_LOOPS+=("$LOOPDEV")
}

# vs_losetup_dio FILE [ARGS...]: the same with direct I/O (no page cache of
# FILE in between, what a VM with cache=none does), or plain if the kernel
# refuses it (said in a note); /sys/block/LOOP/loop/dio tells which.
vs_losetup_dio() {
	local file=$1
	shift
	if LOOPDEV=$(losetup --find --show --direct-io=on "$@" "$file" 2>"$T/losetup.err"); then
		_VS_LOOPS+=("$LOOPDEV")
	else
		note "losetup --direct-io=on refused ($(cat "$T/losetup.err")); plain loop"
		vs_losetup "$file" "$@"
	fi
}

vs_lodetach() {
	local dev=$1 i
	losetup -d "$dev" || fail "losetup -d $dev failed"
	for i in "${!_VS_LOOPS[@]}"; do
		[ "${_VS_LOOPS[$i]}" = "$dev" ] && unset '_VS_LOOPS[i]'
	done
	return 0
}

# vs_blkmount DEV DIR [ARGS...]
vs_blkmount() {
	local dev=$1 dir=$2
	shift 2
	mkdir -p "$dir"
	mount "$@" "$dev" "$dir" || fail "mount $* $dev $dir failed"
	_VS_BLKMNTS+=("$dir")
}

vs_blkumount() {
	local dir=$1 i
	umount "$dir" || fail "umount $dir failed"
	for i in "${!_VS_BLKMNTS[@]}"; do
		[ "${_VS_BLKMNTS[$i]}" = "$dir" ] && unset '_VS_BLKMNTS[i]'
	done
	return 0
}

need_root() {
	[ "$(id -u)" -eq 0 ] || skip "needs root (loop devices and mount)"
}

# ---- cleanup ---------------------------------------------------------------

_vs_cleanup() {
	local rc=$? x pid
	set +e
	trap - EXIT INT TERM HUP
	trap '' PIPE
	# Innermost first: block mounts, then loop devices (maybe backed by a
	# volume), then the FUSE mounts, then whatever daemon is left.
	for x in "${_VS_BLKMNTS[@]}"; do
		umount -l "$x" 2>/dev/null
	done
	for x in "${_VS_LOOPS[@]}"; do
		losetup -d "$x" 2>/dev/null
	done
	# unconditionally: the mount of a daemon that died fails mountpoint -q
	# (ENOTCONN) but must still go
	for x in "${_VS_MNTS[@]}"; do
		fusermount3 -u -z "$x" 2>/dev/null
	done
	for pid in "${_VS_PIDS[@]}"; do
		if ! _vs_wait_pid "$pid" 5; then
			kill -9 "$pid" 2>/dev/null
			_vs_wait_pid "$pid" 5
		fi
	done
	if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ $_VS_NLOG -gt 0 ]; then
		# the last daemons' logs, for the report of a failure
		for ((x = _VS_NLOG > 2 ? _VS_NLOG - 1 : 1; x <= _VS_NLOG; x++)); do
			echo "---- stderr of daemon $x (of $_VS_NLOG) ----"
			tail -n 20 "$T/vsnapfs.$x.log" 2>/dev/null
		done
		echo "----"
	fi
	if [ -n "${T:-}" ] && [ -d "$T" ]; then
		if [ -n "${VS_KEEP:-}" ]; then
			echo "# VS_KEEP set: leaving $T"
		else
			rm -rf --one-file-system "$T"
		fi
	fi
	if [ $rc -ne 0 ] && [ $_VS_DONE = 0 ]; then
		echo "FAIL $TEST_NAME: exit status $rc (line ${_VS_ERRLINE:-?}: ${_VS_ERRCMD:-?})"
	fi
	exit $rc
}

# Say which command failed when set -e ends a test without a fail message.
trap '_VS_ERRLINE=$LINENO; _VS_ERRCMD=$BASH_COMMAND' ERR
set -o errtrace
trap _vs_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

T=$(mktemp -d "${TMPDIR:-/tmp}/vsnapfs-$TEST_NAME.XXXXXX")

[ -c /dev/fuse ] || skip "/dev/fuse missing (modprobe fuse)"
command -v fusermount3 >/dev/null || skip "fusermount3 missing (install fuse3)"
[ -x "$VSNAPFS" ] || fail "$VSNAPFS not built"
