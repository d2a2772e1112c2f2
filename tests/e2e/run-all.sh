#!/bin/bash
# Run every tests/e2e/t-*.sh against the build in BUILD_DIR, in order.
#
#   tests/e2e/run-all.sh BUILD_DIR [PATTERN]
#
# The daemons run with the lock-order checker on (VSNAPFS_LOCK_CHECK=1).
# Each test runs under `timeout 600` (times VS_TIME_SCALE, for sanitizer
# builds), its output goes to a log that is
# printed when it fails.  Exit status 77 means skipped.  The last line is
# "N passed, M failed, K skipped"; the exit status is non-zero if any failed.
set -uo pipefail

if [ $# -lt 1 ]; then
	echo "usage: $0 BUILD_DIR [PATTERN]" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
B=$(cd "$1" && pwd) || { echo "run-all: no build dir $1" >&2; exit 2; }
pattern=${2:-}
export B VSNAPFS=${VSNAPFS:-$B/vsnapfs} VSNAPCTL=$B/vsnapctl TOOLS=$B/tools
# every daemon and vsnapctl of the tests checks its lock order (vsnapfs/lock.h)
export VSNAPFS_LOCK_CHECK=${VSNAPFS_LOCK_CHECK:-1}

logdir=$(mktemp -d "${TMPDIR:-/tmp}/vsnapfs-e2e-logs.XXXXXX")
npass=0 nfail=0 nskip=0
failed=()

for t in "$here"/t-*.sh; do
	name=$(basename "$t" .sh)
	if [ -n "$pattern" ] && [[ $name != *$pattern* ]]; then
		continue
	fi
	log=$logdir/$name.log
	start=$SECONDS
	timeout -k 15 $((600 * ${VS_TIME_SCALE:-1})) bash "$t" >"$log" 2>&1 </dev/null
	rc=$?
	secs=$((SECONDS - start))
	result=$(grep -E "^(PASS|FAIL|SKIP) $name" "$log" | tail -n 1)
	case $rc in
	0)
		npass=$((npass + 1))
		echo "${result:-PASS $name} (${secs}s)"
		;;
	77)
		nskip=$((nskip + 1))
		echo "${result:-SKIP $name} (${secs}s)"
		;;
	*)
		nfail=$((nfail + 1))
		failed+=("$name")
		[ $rc -eq 124 ] && result="FAIL $name: timed out after $((600 * ${VS_TIME_SCALE:-1})) s"
		echo "${result:-FAIL $name: exit status $rc} (${secs}s)"
		echo "------ log of $name (exit status $rc) ------"
		cat "$log"
		echo "------ end of $name ------"
		;;
	esac
done

rm -rf "$logdir"
[ $nfail -gt 0 ] && echo "failed: ${failed[*]}"
echo "$npass passed, $nfail failed, $nskip skipped"
[ $nfail -eq 0 ]
