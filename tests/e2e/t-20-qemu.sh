#!/bin/bash
# QEMU's tools on volumes: qemu-img info/convert/compare/map and qemu-io
# with cache=none (O_DIRECT).
. "$(dirname "$0")/lib.sh"

command -v qemu-img >/dev/null || skip "qemu-img missing (install qemu-utils)"
command -v qemu-io >/dev/null || skip "qemu-io missing (install qemu-utils)"

STORE=$T/store
MNT=$T/mnt
MiB=$((1 << 20))
vs_mount "$STORE" "$MNT"
VOL=$MNT/vol.img

# ---- info on a thin volume ------------------------------------------------
truncate -s 1G "$VOL"
qemu-img info "$VOL" >"$T/info" || fail "qemu-img info failed: $(cat "$T/info")"
grep -q '^file format: raw$' "$T/info" || fail "qemu-img info: not raw: $(cat "$T/info")"
grep -q '^virtual size: 1 GiB (1073741824 bytes)$' "$T/info" ||
	fail "qemu-img info: wrong virtual size: $(cat "$T/info")"
actual=$(qemu-img info --output=json "$VOL" | sed -n 's/.*"actual-size": \([0-9]*\).*/\1/p')
[ -n "$actual" ] && [ "$actual" -lt $MiB ] || fail "fresh 1G volume: actual-size '$actual'"

# ---- a 64 MiB random pattern, convert to qcow2, compare --------------------
head -c $((64 * MiB)) /dev/urandom >"$T/pattern"
dd if="$T/pattern" of="$VOL" bs=1M seek=256 conv=notrunc,fsync status=none
assert_eq "$(stat -c %s "$VOL")" 1073741824 "volume size after dd"
qemu-img convert -f raw -O qcow2 "$VOL" "$T/out.qcow2" || fail "qemu-img convert to qcow2 failed"
qemu-img compare -f raw -F qcow2 "$VOL" "$T/out.qcow2" >"$T/cmp" 2>&1 ||
	fail "qemu-img compare: $(cat "$T/cmp")"
grep -q 'Images are identical' "$T/cmp" || fail "qemu-img compare: $(cat "$T/cmp")"
size=$(stat -c %s "$T/out.qcow2")
[ "$size" -lt $((80 * MiB)) ] || fail "out.qcow2 is $size bytes for 64 MiB of data"

# import back through cache=none, as a hypervisor tool would
qemu-img convert -f qcow2 -O raw -t none "$T/out.qcow2" "$MNT/back.img" ||
	fail "qemu-img convert into the mount (-t none) failed"
qemu-img compare -f raw -F raw "$VOL" "$MNT/back.img" >"$T/cmp" 2>&1 ||
	fail "imported copy differs: $(cat "$T/cmp")"
alloc=$(($(stat -c %b "$MNT/back.img") * 512))
[ $alloc -ge $((64 * MiB)) ] && [ $alloc -le $((66 * MiB)) ] ||
	fail "imported 1G image with 64 MiB of data allocates $alloc bytes"

# compare must notice a one-byte change (to the complement of the byte)
off=$((300 * MiB + 7))
b=$(od -An -tu1 -j $((off - 256 * MiB)) -N1 "$T/pattern" | tr -d ' ')
printf "\\$(printf '%03o' $((b ^ 255)))" | dd of="$VOL" bs=1 seek=$off conv=notrunc status=none
cmp -s <(dd if="$VOL" bs=1M skip=256 count=64 status=none) "$T/pattern" &&
	fail "the one-byte change is not visible"
rc=0
qemu-img compare -f raw -F qcow2 "$VOL" "$T/out.qcow2" >"$T/cmp" 2>&1 || rc=$?
assert_eq $rc 1 "qemu-img compare exit status after a one-byte change"
dd if="$T/pattern" of="$VOL" bs=1 skip=$((off - 256 * MiB)) seek=$off count=1 conv=notrunc status=none
cmp <(dd if="$VOL" bs=1M skip=256 count=64 status=none) "$T/pattern" ||
	fail "pattern region differs after restoring the byte"

# ---- qemu-io, cache=none ----------------------------------------------------
qemu-io -f raw -t none -c 'write -P 0xab 1M 2M' -c 'read -P 0xab 1M 2M' "$VOL" >"$T/qio" 2>&1 ||
	fail "qemu-io write/read 0xab: $(cat "$T/qio")"
rc=0
qemu-io -f raw -t none -c 'read -P 0xcd 1M 2M' "$VOL" >"$T/qio" 2>&1 || rc=$?
[ $rc -ne 0 ] && grep -q 'Pattern verification failed' "$T/qio" ||
	fail "qemu-io read with the wrong pattern did not fail (rc $rc): $(cat "$T/qio")"
qemu-io -f raw -t none -c 'read -P 0 0 1M' -c 'read -P 0 3M 61M' -c 'read -P 0 320M 100M' "$VOL" >"$T/qio" 2>&1 ||
	fail "never-written ranges are not zeros: $(cat "$T/qio")"
qemu-io -f raw -t none -c 'write -P 0x5a 4097 5000' -c 'read -P 0x5a 4097 5000' \
	-c 'read -P 0xab 1M 2M' "$VOL" >"$T/qio" 2>&1 ||
	fail "qemu-io unaligned write/read: $(cat "$T/qio")"
qemu-io -f raw -t none -c 'write -z 0 1M' -c 'read -P 0 0 1M' "$VOL" >"$T/qio" 2>&1 ||
	fail "qemu-io write -z: $(cat "$T/qio")"

# ---- map: data only where written ---------------------------------------------
# Written: [1M, 3M) by qemu-io and [256M, 320M) by dd; the unaligned write
# at 4097 was zeroed again by "write -z 0 1M".
qemu-img map -f raw --output=json "$VOL" >"$T/map" || fail "qemu-img map failed"
sed -n 's/.*"start": \([0-9]*\), "length": \([0-9]*\),.*"data": \(true\|false\).*/\1 \2 \3/p' \
	"$T/map" >"$T/map.txt"
[ -s "$T/map.txt" ] || fail "cannot parse qemu-img map output: $(cat "$T/map")"
data=$(awk '$3 == "true" {
		if (have && $1 == s + l) { l += $2 } else { if (have) printf "%.0f+%.0f ", s, l; s = $1; l = $2; have = 1 }
	} END { if (have) printf "%.0f+%.0f ", s, l }' "$T/map.txt")
assert_eq "$data" "$((1 * MiB))+$((2 * MiB)) $((256 * MiB))+$((64 * MiB)) " \
	"data extents of qemu-img map (start+length)"
total=$(awk '{ t += $2 } END { printf "%.0f", t }' "$T/map.txt")
assert_eq "$total" 1073741824 "qemu-img map covers the whole volume"

vs_umount "$MNT"
pass
