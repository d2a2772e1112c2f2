/*
 * rows: every data block of the store from ONE scan of the extents
 * (bmap_exts_all), block by block, into an array sorted by (chunk, slot):
 * a chunk's rows are then contiguous, duplicates adjacent, and scrub reads
 * each chunk front to back in runs of consecutive slots.  The array costs
 * 32 bytes a block; past ROWS_PER_PASS rows (or $VSNAPCTL_ROWS_PER_PASS)
 * the scan keeps only the lowest chunk ids that fit and a further scan
 * takes the next range, so memory stays bounded on any store at the price
 * of more scans.
 */
#include <errno.h>
#include <stdlib.h>

#include "ctl/ctl_int.h"

#define ROWS_PER_PASS   (16u << 20)     /* 512 MiB of struct rowref */



static int cmp_row(const void *a, const void *b)
{
	const struct rowref *x = a, *y = b;

	if (x->chunk != y->chunk)
		return x->chunk < y->chunk ? -1 : 1;
	if (x->slot != y->slot)
		return x->slot < y->slot ? -1 : 1;
	if (x->node != y->node)
		return x->node < y->node ? -1 : 1;
	return x->lblock < y->lblock ? -1 : x->lblock > y->lblock;
}

/* Full: keep the lower half of the chunk range.  A single chunk holds at
 * most CHUNK_NSLOTS rows unless the index is damaged; if one chunk alone
 * fills the array, the array grows instead. */
static void rowset_shrink(struct rowset *rs)
{
	size_t i, mid = rs->n / 2;
	uint64_t c;

	qsort(rs->v, rs->n, sizeof(*rs->v), cmp_row);
	c = rs->v[mid].chunk;
	for (i = mid; i > 0 && rs->v[i - 1].chunk == c; i--)
		;
	if (i == 0) {
		for (i = mid; i < rs->n && rs->v[i].chunk == c; i++)
			;
		if (i == rs->n) {
			rs->max *= 2;
			return;
		}
		c = rs->v[i].chunk;
	}
	rs->hi = c;
	rs->n = i;
}

static int rowset_add(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc)
{
	struct rowset *rs = ctx;

	rs->seen++;
	if (rs->pg) {
		rs->pg->done++;
		progress_show(rs->pg);
	}
	if (rs->each)
		rs->each(rs->each_ctx, node, lblock, loc);
	if (loc->chunk_id < rs->lo || loc->chunk_id >= rs->hi)
		return 0;
	if (rs->n == rs->max) {
		rowset_shrink(rs);
		if (loc->chunk_id >= rs->hi)
			return 0;
	}
	if (rs->n == rs->cap) {
		size_t cap = rs->cap ? rs->cap * 2 : 4096;
		struct rowref *v;

		if (cap > rs->max)
			cap = rs->max;
		v = realloc(rs->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		rs->v = v;
		rs->cap = cap;
	}
	rs->v[rs->n++] = (struct rowref){ loc->chunk_id, node, lblock, loc->slot };
	return 0;
}

struct blocks_of {
	int (*fn)(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc);
	void *ctx;
};

static int ext_blocks(void *ctx, uint64_t node, const struct bmap_ext *x)
{
	const struct blocks_of *bo = ctx;
	int rc = 0;

	for (uint32_t i = 0; i < x->nblocks && !rc; i++) {
		struct chunk_loc loc = { .chunk_id = x->chunk, .slot = x->slot + i,
					 .lblock = x->lblock + i };

		rc = bo->fn(bo->ctx, node, x->lblock + i, &loc);
	}
	return rc;
}

/* Every data block of every node, one call each, from one scan of the
 * extents (check and scrub work block by block). */
static int blocks_all(struct bmap *bm,
		      int (*fn)(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc),
		      void *ctx)
{
	struct blocks_of bo = { fn, ctx };

	return bmap_exts_all(bm, ext_blocks, &bo);
}

size_t rows_per_pass(void)
{
	const char *e = getenv("VSNAPCTL_ROWS_PER_PASS");
	unsigned long long v = e ? strtoull(e, NULL, 10) : 0;

	return v >= 16 ? (size_t)v : ROWS_PER_PASS;
}

/* One scan: the rows with chunk >= lo, as many chunks as fit, sorted by
 * (chunk, slot).  rs->hi tells where the next pass starts (UINT64_MAX:
 * nothing left). */
int rowset_scan(struct bmap *bm, struct rowset *rs, uint64_t lo)
{
	int rc;

	rs->lo = lo;
	rs->hi = UINT64_MAX;
	rs->n = 0;
	rs->seen = 0;
	rc = blocks_all(bm, rowset_add, rs);
	if (!rc && rs->n)               /* qsort(NULL, 0) is undefined */
		qsort(rs->v, rs->n, sizeof(*rs->v), cmp_row);
	return rc;
}
