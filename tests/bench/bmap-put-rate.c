/*
 * Put rate of the block map, built against either index format: the
 * format-3 bmap_ext_put of this tree, or the format-2 bmap_row_put of an
 * older tree (bmap-put-rate.sh builds both and runs them one after the
 * other).  Two workloads, each one transaction, commit included:
 *
 *   random:     N puts of 1 block (a 4 KiB random write each), scattered
 *               over 2^24 blocks (64 GiB) by an odd multiplier;
 *   sequential: N/16 puts of 256 blocks (1 MiB writes in order), each
 *               continuing the one before in its chunk; format 2 puts the
 *               256 rows one by one, as its flush did.
 *
 * Usage: bmap-put-rate DIR [N]   (N: 1000000 by default)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vsnapfs/bmap.h"

static double seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void check(int rc, const char *what)
{
	if (rc) {
		fprintf(stderr, "bmap-put-rate: %s: %s\n", what, strerror(-rc));
		exit(1);
	}
}

/* Map blocks [lblock, +n) of node to chunk, slots slot.. */
static int put(struct bmap *b, uint64_t node, uint64_t lblock, uint32_t n, uint64_t chunk,
	       uint32_t slot)
{
#if BMAP_FORMAT_VERSION == 2
	for (uint32_t k = 0; k < n; k++) {
		struct chunk_loc l = { .chunk_id = chunk, .slot = slot + k,
				       .cksum = (lblock + k) * 0x9e3779b97f4a7c15ull };
		int rc = bmap_row_put(b, node, lblock + k, &l);

		if (rc)
			return rc;
	}
	return 0;
#else
	struct bmap_ext e = { .lblock = lblock, .nblocks = n, .chunk = chunk, .slot = slot };

	return bmap_ext_put(b, node, &e);
#endif
}

static double run(struct bmap *b, uint64_t node, uint64_t nputs, uint32_t nblocks)
{
	uint32_t per_chunk = CHUNK_NSLOTS(4096) / nblocks;
	double t0 = seconds();

	check(bmap_begin(b), "begin");
	for (uint64_t i = 0; i < nputs; i++) {
		if (nblocks == 1)
			check(put(b, node, (i * 2654435761u) & ((1u << 24) - 1), 1, 1 + i / 16384,
				  (uint32_t)(i % 16384)), "put");
		else
			check(put(b, node, i * nblocks, nblocks, 1 + i / per_chunk,
				  (uint32_t)(i % per_chunk) * nblocks), "put");
	}
	check(bmap_commit(b), "commit");
	return (double)nputs / (seconds() - t0);
}

int main(int argc, char **argv)
{
	uint64_t n = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000000;
	char path[4096];
	struct bmap *b;
	double rnd1, seq;

	if (argc < 2 || n == 0 || n > (1u << 24)) {
		fprintf(stderr, "usage: bmap-put-rate DIR [N <= 2^24]\n");
		return 2;
	}
	snprintf(path, sizeof(path), "%s/index-f%d.sqlite", argv[1], BMAP_FORMAT_VERSION);
	unlink(path);
	check(bmap_create(path, 4096, 0, 0), "create");
	check(bmap_open(path, 0, &b), "open");
	for (int i = 0; i < 2; i++) {
		struct bmap_node nd = { 0 };

		check(bmap_node_create(b, &nd), "node");
	}
	rnd1 = run(b, 1, n, 1);
	seq = run(b, 2, n / 16 ? n / 16 : 1, 256);
	printf("format %d: random 1-block puts: %.0f puts/s; sequential 256-block puts: %.0f puts/s"
	       " (%.0f blocks/s)\n", BMAP_FORMAT_VERSION, rnd1, seq, seq * 256);
	bmap_close(b);
	unlink(path);
	return 0;
}
