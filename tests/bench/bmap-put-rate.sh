#!/bin/sh
# Put rate of the index, format 2 (bmap_row_put of REV, default main) and
# format 3 (bmap_ext_put of this tree), built and run one after the other
# on the same machine: tests/bench/bmap-put-rate.sh [N] [REV]
# Figures: docs/performance.md, "Issue 13: extent index put rate".
set -eu
N=${1:-1000000}
REV=${2:-main}
top=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d /tmp/bmap-put-rate.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
CFLAGS="-std=gnu11 -O2 -D_FILE_OFFSET_BITS=64 -D_GNU_SOURCE $(pkg-config --cflags sqlite3)"
LIBS="$(pkg-config --libs sqlite3) -lpthread"

mkdir "$tmp/old"
git -C "$top" archive "$REV" include src/bmap src/util | tar -x -C "$tmp/old"
cc $CFLAGS -I"$tmp/old/include" -I"$tmp/old/src" -o "$tmp/rate2" \
	"$top/tests/bench/bmap-put-rate.c" "$tmp/old/src/bmap/bmap.c" "$tmp/old/src/util/array.c" $LIBS
cc $CFLAGS -I"$top/include" -I"$top/src" -o "$tmp/rate3" "$top/tests/bench/bmap-put-rate.c" \
	"$top/src/bmap/bmap.c" "$top/src/emap/emap.c" "$top/src/util/array.c" $LIBS
echo "N=$N, format 2 from $REV ($(git -C "$top" rev-parse --short "$REV")), format 3 from" \
	"$(git -C "$top" rev-parse --short HEAD)$(git -C "$top" diff --quiet || echo '+changes')"
"$tmp/rate2" "$tmp" "$N"
"$tmp/rate3" "$tmp" "$N"
