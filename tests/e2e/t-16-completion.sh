#!/bin/bash
# bash completion of vsnapctl (contrib/bash-completion/vsnapctl), driven as
# bash drives it (COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT, then the
# function that "complete -p vsnapctl" names) against a real mount:
# subcommands, options (global and per subcommand), the mount point of a
# running vsnapfs taken from /proc/mounts (completed from another
# directory, so that file completion cannot be what finds it), .snapshots
# and the snapshot names inside it, and @NAME after send --from, with the
# file B before or after; status, iostat and metrics with their options
# (metrics: no --json) and iostat -o with its columns; no mount point once
# unmounted.
. "$(dirname "$0")/lib.sh"

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BC=/usr/share/bash-completion/bash_completion
[ -r "$BC" ] || skip "bash-completion missing (tests/install-deps.sh installs it)"
STORE=$T/store
MNT=$T/mnt
vs_mount "$STORE" "$MNT"
truncate -s 1M "$MNT/vm1.img"
mkdir "$MNT/.snapshots/vm1.img@mon" "$MNT/.snapshots/vm1.img@tue" "$MNT/.snapshots/nightly"
mkdir "$T/elsewhere"

# complete CWORD WORD...: the sorted candidates bash would offer for word
# CWORD (0 is "vsnapctl") of the command line WORD...
complete_at() {
	(cd "$T/elsewhere" && PATH=$B:$PATH bash --norc --noprofile -c '
		set -u
		. "$1"
		. "$2"
		spec=$(complete -p vsnapctl) || exit 3
		fn=${spec#*-F }
		fn=${fn%% *}
		cword=$3
		shift 3
		COMP_WORDS=("$@")
		COMP_CWORD=$cword
		COMP_LINE="$*"
		line=${COMP_WORDS[*]:0:cword+1}
		COMP_POINT=${#line}
		COMPREPLY=()
		"$fn" vsnapctl "${COMP_WORDS[cword]}" "${COMP_WORDS[cword - 1]}"
		printf "%s\n" "${COMPREPLY[@]}" | sort -u
	' complete "$BC" "$SRC/contrib/bash-completion/vsnapctl" "$@") ||
		fail "completion of '$*' at word $1 failed"
}

# expect CWORD "WANT..." WORD...: every candidate in WANT is offered
expect() {
	local cword=$1 want=$2 got w
	shift 2
	got=$(complete_at "$cword" "$@")
	for w in $want; do
		grep -qxF -- "$w" <<<"$got" ||
			fail "completing '${*:cword+1:1}' in '$*': no '$w' in: $(echo $got)"
	done
}

# refuse CWORD "NOT..." WORD...: none of NOT is offered
refuse() {
	local cword=$1 not=$2 got w
	shift 2
	got=$(complete_at "$cword" "$@")
	for w in $not; do
		grep -qxF -- "$w" <<<"$got" && fail "completing word $cword of '$*' offers '$w'"
	done
	return 0
}

expect 1 "list tree check scrub diff gc send receive status iostat metrics" vsnapctl ""
assert_eq "$(complete_at 1 vsnapctl sc)" "scrub" "vsnapctl sc<TAB>"
expect 1 "--json --help --version" vsnapctl --
expect 2 "-n -v -c --from --resume --help" vsnapctl send -
refuse 2 "--force --json" vsnapctl send -
assert_eq "$(complete_at 2 vsnapctl receive --f)" "--force" "vsnapctl receive --f<TAB>"
refuse 2 "-n --from --json" vsnapctl receive -
# status, iostat, metrics: their options, those of the shared command line
# (vsnapctl is the build's, so what their --help lists counts too)
expect 2 "--json --help" vsnapctl status -
expect 2 "-o -n -b -r --output --noheadings --bytes --raw --json --help" vsnapctl iostat -
refuse 2 "--force -t" vsnapctl iostat -
assert_eq "$(complete_at 2 vsnapctl metrics - | tr '\n' ' ')" "--help " "vsnapctl metrics -<TAB>"
# iostat -o: its columns, as its --help lists them
expect 3 "VOLUME READS/s WRITES/s ERRORS WP99" vsnapctl iostat -o ""
assert_eq "$(complete_at 3 vsnapctl iostat --output WP | tr '\n' ' ')" "WP99 " "iostat --output WP<TAB>"
expect 3 "volume snapshot all" vsnapctl list -t ""

# the mount point, from /proc/mounts: the completion runs in $T/elsewhere
expect 2 "$MNT" vsnapctl status ""
expect 2 "$MNT" vsnapctl check "${MNT%/*}/m"
expect 2 "$MNT" vsnapctl list ""
# .snapshots and the snapshots in it
expect 2 "$MNT/.snapshots $MNT/vm1.img" vsnapctl list "$MNT/"
expect 2 "$MNT/.snapshots/vm1.img@mon $MNT/.snapshots/vm1.img@tue $MNT/.snapshots/nightly" \
	vsnapctl diff "$MNT/.snapshots/"
expect 3 "$MNT/.snapshots/vm1.img@tue" vsnapctl diff "$MNT/vm1.img" "$MNT/.snapshots/vm1.img@t"
# @NAME after send --from: the snapshots of B's file, B after or before
B_FILE=$MNT/.snapshots/vm1.img@tue/vm1.img
assert_eq "$(complete_at 3 vsnapctl send --from @ "$B_FILE" | tr '\n' ' ')" "@mon @tue " \
	"send --from @<TAB> B"
assert_eq "$(complete_at 4 vsnapctl send "$B_FILE" --from @m | tr '\n' ' ')" "@mon " \
	"send B --from @m<TAB>"
vs_umount "$MNT"
# unmounted, the mount point is no longer offered from /proc/mounts
refuse 2 "$MNT" vsnapctl status ""
pass
