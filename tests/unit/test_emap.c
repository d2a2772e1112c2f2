/*
 * emap: the extent map, one behaviour per test, then a model test against a
 * plain array of blocks and a micro-benchmark.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vsnapfs/emap.h"
#include "../tools/rng.h"

#define NSLOTS 16384u                   /* CHUNK_NSLOTS(4096) */

static struct emap_ext X(uint64_t lblock, uint32_t nblocks, uint64_t chunk, uint32_t slot, uint64_t tag)
{
	return (struct emap_ext){ .lblock = lblock, .nblocks = nblocks, .chunk = chunk,
				  .slot = slot, .tag = tag };
}

static bool same(struct emap_ext a, struct emap_ext b)
{
	return !memcmp(&a, &b, sizeof(a));
}

static void put(struct emap *m, struct emap_ext e)
{
	cr_assert_eq(emap_put(m, &e, NULL), 0, "put %" PRIu64 "+%u", e.lblock, e.nblocks);
	cr_assert_null(emap_check(m), "%s", emap_check(m));
}

/* Every extent of m, in order (a walk over the whole block space). */
static size_t dump(const struct emap *m, struct emap_ext **out)
{
	size_t n = 0, cap = 16;
	struct emap_ext *v = malloc(cap * sizeof(*v));
	struct emap_run r;

	for (uint64_t b = 0; b < EMAP_LBLOCK_LIMIT; b += r.nblocks) {
		emap_next(m, b, EMAP_LBLOCK_LIMIT, &r);
		if (r.kind == EMAP_UNMAPPED)
			continue;
		if (n == cap)
			v = realloc(v, (cap *= 2) * sizeof(*v));
		cr_assert_leq(r.nblocks, EMAP_NBLOCKS_MAX);
		v[n++] = X(r.lblock, (uint32_t)r.nblocks, r.chunk, r.slot, r.tag);
	}
	*out = v;
	return n;
}

static void expect_exts(const struct emap *m, const struct emap_ext *want, size_t nwant)
{
	struct emap_ext *got;
	size_t n = dump(m, &got);

	cr_assert_eq(n, nwant, "%zu extents, want %zu", n, nwant);
	cr_assert_eq(emap_count(m), nwant);
	for (size_t i = 0; i < n; i++)
		cr_assert(!memcmp(&got[i], &want[i], sizeof(got[i])),
			  "extent %zu: %" PRIu64 "+%u -> %" PRIu64 ":%u tag %" PRIu64
			  ", want %" PRIu64 "+%u -> %" PRIu64 ":%u tag %" PRIu64, i,
			  got[i].lblock, got[i].nblocks, got[i].chunk, got[i].slot, got[i].tag,
			  want[i].lblock, want[i].nblocks, want[i].chunk, want[i].slot, want[i].tag);
	free(got);
}

#define EXPECT(m, ...) do { \
	struct emap_ext want_[] = { __VA_ARGS__ }; \
	expect_exts((m), want_, sizeof(want_) / sizeof(want_[0])); \
} while (0)

Test(emap, empty_map_has_no_extents_and_one_gap)
{
	struct emap *m = emap_new(NSLOTS);
	struct emap_ext e;
	struct emap_run r;

	cr_assert_not_null(m);
	cr_assert_eq(emap_count(m), 0);
	cr_assert_eq(emap_data_blocks(m), 0);
	cr_assert_not(emap_lookup(m, 0, &e));
	cr_assert_eq(emap_next(m, 5, 100, &r), 95);
	cr_assert_eq(r.kind, EMAP_UNMAPPED);
	cr_assert_eq(emap_next(m, 100, 100, &r), 0);
	cr_assert_null(emap_new(0));
	emap_free(m);
	emap_free(NULL);
}

Test(emap, put_then_lookup_finds_the_whole_extent)
{
	struct emap *m = emap_new(NSLOTS);
	struct emap_ext e;

	put(m, X(100, 10, 7, 50, 3));
	cr_assert(emap_lookup(m, 100, &e));
	cr_assert(emap_lookup(m, 109, &e));
	cr_assert(!memcmp(&e, &(struct emap_ext){ .lblock = 100, .nblocks = 10, .chunk = 7, .slot = 50, .tag = 3 },
			  sizeof(e)));
	cr_assert_not(emap_lookup(m, 99, &e));
	cr_assert_not(emap_lookup(m, 110, &e));
	cr_assert_eq(emap_data_blocks(m), 10);
	emap_free(m);
}

Test(emap, put_in_the_middle_splits_an_extent_in_three)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(0, 100, 1, 0, 0));
	put(m, X(40, 10, 2, 5, 0));
	EXPECT(m, X(0, 40, 1, 0, 0), X(40, 10, 2, 5, 0), X(50, 50, 1, 50, 0));
	cr_assert_eq(emap_data_blocks(m), 100);
	emap_free(m);
}

Test(emap, put_over_the_left_end_trims_it)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(10, 20, 1, 100, 0));
	put(m, X(5, 10, 2, 0, 0));
	EXPECT(m, X(5, 10, 2, 0, 0), X(15, 15, 1, 105, 0));
	emap_free(m);
}

Test(emap, put_over_the_right_end_trims_it)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(10, 20, 1, 100, 0));
	put(m, X(25, 10, 2, 0, 0));
	EXPECT(m, X(10, 15, 1, 100, 0), X(25, 10, 2, 0, 0));
	emap_free(m);
}

Test(emap, put_covering_several_extents_replaces_them_and_trims_both_ends)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(0, 10, 1, 0, 0));
	put(m, X(10, 10, 2, 0, 0));
	put(m, X(25, 5, 3, 0, 0));
	put(m, X(30, 10, 0, 0, 0));
	put(m, X(40, 10, 4, 0, 0));
	put(m, X(5, 40, 5, 0, 0));
	EXPECT(m, X(0, 5, 1, 0, 0), X(5, 40, 5, 0, 0), X(45, 5, 4, 5, 0));
	cr_assert_eq(emap_data_blocks(m), 50);
	emap_free(m);
}

Test(emap, put_continuing_the_left_neighbour_merges_with_it)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(0, 256, 1, 0, 0));
	put(m, X(256, 256, 1, 256, 0));
	EXPECT(m, X(0, 512, 1, 0, 0));
	emap_free(m);
}

Test(emap, put_continued_by_the_right_neighbour_merges_with_it)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(100, 50, 1, 100, 9));
	put(m, X(90, 10, 1, 90, 9));
	EXPECT(m, X(90, 60, 1, 90, 9));
	emap_free(m);
}

Test(emap, put_filling_a_hole_merges_both_sides_into_one)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(0, 10, 1, 0, 0));
	put(m, X(20, 10, 1, 20, 0));
	put(m, X(10, 10, 1, 10, 0));
	EXPECT(m, X(0, 30, 1, 0, 0));
	/* overwriting the middle with what is there changes nothing */
	put(m, X(5, 3, 1, 5, 0));
	EXPECT(m, X(0, 30, 1, 0, 0));
	emap_free(m);
}

Test(emap, no_merge_across_chunks_slots_or_tags)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(0, 10, 1, 0, 0));
	put(m, X(10, 10, 2, 10, 0));    /* another chunk */
	put(m, X(20, 10, 2, 21, 0));    /* a slot gap */
	put(m, X(30, 10, 2, 31, 1));    /* another tag */
	put(m, X(40, 10, 0, 0, 1));     /* a tombstone after data */
	EXPECT(m, X(0, 10, 1, 0, 0), X(10, 10, 2, 10, 0), X(20, 10, 2, 21, 0),
	       X(30, 10, 2, 31, 1), X(40, 10, 0, 0, 1));
	emap_free(m);
}

Test(emap, data_extent_must_fit_in_its_chunk)
{
	struct emap *m = emap_new(64);
	struct emap_ext e = X(0, 10, 1, 60, 0);

	cr_assert_eq(emap_put(m, &e, NULL), -EINVAL);
	e = X(0, 4, 1, 60, 0);
	cr_assert_eq(emap_put(m, &e, NULL), 0);
	/* a chunk's last slots and the next chunk's first do not merge */
	e = X(4, 4, 2, 0, 0);
	cr_assert_eq(emap_put(m, &e, NULL), 0);
	EXPECT(m, X(0, 4, 1, 60, 0), X(4, 4, 2, 0, 0));
	emap_free(m);
}

Test(emap, bad_ranges_are_einval_and_leave_the_map_unchanged)
{
	struct emap *m = emap_new(NSLOTS);
	struct emap_ext e = X(0, 0, 1, 0, 0);

	put(m, X(10, 10, 1, 0, 0));
	cr_assert_eq(emap_put(m, &e, NULL), -EINVAL);
	e = X(EMAP_LBLOCK_LIMIT - 1, 2, 0, 0, 0);
	cr_assert_eq(emap_put(m, &e, NULL), -EINVAL);
	e = X(EMAP_LBLOCK_LIMIT, 1, 0, 0, 0);
	cr_assert_eq(emap_put(m, &e, NULL), -EINVAL);
	cr_assert_eq(emap_delete(m, 20, 10, NULL), -EINVAL);
	cr_assert_eq(emap_delete(m, 0, EMAP_LBLOCK_LIMIT + 1, NULL), -EINVAL);
	cr_assert_eq(emap_truncate(m, EMAP_LBLOCK_LIMIT + 1, NULL), -EINVAL);
	cr_assert_eq(emap_clip(m, 5, 4), -EINVAL);
	cr_assert_eq(emap_overlay(m, m, 0, 10), -EINVAL);
	EXPECT(m, X(10, 10, 1, 0, 0));
	emap_free(m);
}

Test(emap, tombstone_runs_merge_and_may_span_four_billion_blocks)
{
	struct emap *m = emap_new(NSLOTS);
	uint64_t top = EMAP_LBLOCK_LIMIT - EMAP_NBLOCKS_MAX;
	struct emap_run r;

	put(m, X(0, 10, 0, 99, 0));     /* a tombstone's slot is stored as 0 */
	put(m, X(10, 10, 0, 0, 0));
	put(m, X(30, 10, 0, 0, 0));
	put(m, X(20, 10, 0, 0, 0));
	EXPECT(m, X(0, 40, 0, 0, 0));
	cr_assert_eq(emap_data_blocks(m), 0);
	/* the longest, at the very top of the block space */
	put(m, X(top, EMAP_NBLOCKS_MAX, 0, 0, 0));
	cr_assert_eq(emap_next(m, top - 5, EMAP_LBLOCK_LIMIT, &r), 5);
	cr_assert_eq(emap_next(m, top, EMAP_LBLOCK_LIMIT, &r), EMAP_NBLOCKS_MAX);
	cr_assert_eq(r.kind, EMAP_ZERO);
	/* two that would be longer than EMAP_NBLOCKS_MAX together stay two */
	put(m, X(top - 1, 1, 0, 0, 0));
	EXPECT(m, X(0, 40, 0, 0, 0), X(top - 1, 1, 0, 0, 0), X(top, EMAP_NBLOCKS_MAX, 0, 0, 0));
	/* a data block in the middle splits it, and its left part now merges */
	put(m, X(top + 1000, 1, 5, 5, 0));
	EXPECT(m, X(0, 40, 0, 0, 0), X(top - 1, 1001, 0, 0, 0),
	       X(top + 1000, 1, 5, 5, 0), X(top + 1001, EMAP_NBLOCKS_MAX - 1001, 0, 0, 0));
	emap_free(m);
}

Test(emap, delete_punches_a_hole_without_a_tombstone)
{
	struct emap *m = emap_new(NSLOTS);
	struct emap_run r;

	put(m, X(0, 100, 1, 0, 0));
	cr_assert_eq(emap_delete(m, 30, 40, NULL), 0);
	EXPECT(m, X(0, 30, 1, 0, 0), X(40, 60, 1, 40, 0));
	cr_assert_eq(emap_next(m, 30, 100, &r), 10);
	cr_assert_eq(r.kind, EMAP_UNMAPPED);
	cr_assert_eq(emap_data_blocks(m), 90);
	cr_assert_eq(emap_delete(m, 0, 1000, NULL), 0);
	cr_assert_eq(emap_count(m), 0);
	cr_assert_null(emap_check(m));
	emap_free(m);
}

Test(emap, truncate_drops_what_is_past_the_end_and_trims_the_straddler)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(0, 10, 1, 0, 0));
	put(m, X(20, 10, 2, 0, 0));
	put(m, X(40, 10, 0, 0, 0));
	cr_assert_eq(emap_truncate(m, 25, NULL), 0);
	EXPECT(m, X(0, 10, 1, 0, 0), X(20, 5, 2, 0, 0));
	cr_assert_eq(emap_data_blocks(m), 15);
	cr_assert_eq(emap_truncate(m, 0, NULL), 0);
	cr_assert_eq(emap_count(m), 0);
	emap_free(m);
}

Test(emap, clip_keeps_only_the_inherit_window)
{
	struct emap *m = emap_new(NSLOTS);

	put(m, X(0, 10, 1, 0, 0));
	put(m, X(20, 20, 2, 0, 0));
	put(m, X(50, 10, 0, 0, 0));
	cr_assert_eq(emap_clip(m, 5, 25), 0);
	EXPECT(m, X(5, 5, 1, 5, 0), X(20, 5, 2, 0, 0));
	cr_assert_eq(emap_clip(m, 0, 0), 0);
	cr_assert_eq(emap_count(m), 0);
	emap_free(m);
}

Test(emap, overlay_fills_only_gaps_nearest_first)
{
	struct emap *page = emap_new(NSLOTS), *parent = emap_new(NSLOTS), *grand = emap_new(NSLOTS);

	/* own: a write at 10..19 and a tombstone at 30..34 */
	put(page, X(10, 10, 9, 0, 0));
	put(page, X(30, 5, 0, 0, 0));
	/* the parent wrote 0..39 in one run; the grandparent 0..63 */
	put(parent, X(0, 40, 5, 0, 1));
	put(grand, X(0, 64, 3, 0, 2));
	cr_assert_eq(emap_overlay(page, parent, 0, 64), 0);
	cr_assert_eq(emap_overlay(page, grand, 0, 50), 0);   /* inherit limit 50 */
	cr_assert_null(emap_check(page), "%s", emap_check(page));
	EXPECT(page, X(0, 10, 5, 0, 1), X(10, 10, 9, 0, 0), X(20, 10, 5, 20, 1),
	       X(30, 5, 0, 0, 0), X(35, 5, 5, 35, 1), X(40, 10, 3, 40, 2));
	cr_assert_eq(emap_data_blocks(page), 45);
	/* a piece that continues an own extent with the same tag merges with it */
	struct emap *src = emap_new(NSLOTS);
	put(src, X(50, 4, 3, 50, 2));
	cr_assert_eq(emap_overlay(page, src, 0, 64), 0);
	cr_assert_null(emap_check(page), "%s", emap_check(page));
	cr_assert_eq(emap_count(page), 6);
	emap_free(src);
	emap_free(page);
	emap_free(parent);
	emap_free(grand);
}

Test(emap, walk_yields_extents_and_gaps_clipped_to_the_range)
{
	struct emap *m = emap_new(NSLOTS);
	struct emap_run r;

	put(m, X(10, 10, 1, 100, 4));
	put(m, X(20, 5, 0, 0, 4));
	cr_assert_eq(emap_next(m, 0, 15, &r), 10);
	cr_assert_eq(r.kind, EMAP_UNMAPPED);
	cr_assert_eq(emap_next(m, 12, 15, &r), 3);
	cr_assert_eq(r.kind, EMAP_DATA);
	cr_assert_eq(r.slot, 102);
	cr_assert_eq(r.tag, 4);
	cr_assert_eq(emap_next(m, 15, 100, &r), 5, "touching extents are two runs");
	cr_assert_eq(emap_next(m, 20, 100, &r), 5);
	cr_assert_eq(r.kind, EMAP_ZERO);
	cr_assert_eq(emap_next(m, 25, 100, &r), 75);
	cr_assert_eq(r.kind, EMAP_UNMAPPED);
	emap_free(m);
}

Test(emap, diff_of_a_put_lists_exactly_the_rows_to_remove_and_add)
{
	struct emap *m = emap_new(NSLOTS);
	struct emap_diff d = EMAP_DIFF_INIT;
	struct emap_ext e;

	put(m, X(0, 100, 1, 0, 0));
	put(m, X(200, 10, 2, 0, 0));
	put(m, X(210, 10, 3, 0, 0));
	/* inside one extent: one row becomes three (its key stays: an UPDATE) */
	e = X(40, 10, 4, 0, 0);
	cr_assert_eq(emap_put(m, &e, &d), 0);
	cr_assert_eq(d.nremoved, 1);
	cr_assert(same(d.removed[0], X(0, 100, 1, 0, 0)));
	cr_assert_eq(d.nadded, 3);
	cr_assert(same(d.added[0], X(0, 40, 1, 0, 0)));
	cr_assert(same(d.added[1], X(40, 10, 4, 0, 0)));
	cr_assert(same(d.added[2], X(50, 50, 1, 50, 0)));
	/* continuing the left neighbour: its row grows, nothing else */
	e = X(50, 10, 4, 10, 0);
	cr_assert_eq(emap_put(m, &e, &d), 0);
	cr_assert_eq(d.nremoved, 2);
	cr_assert(same(d.removed[0], X(40, 10, 4, 0, 0)));
	cr_assert(same(d.removed[1], X(50, 50, 1, 50, 0)));
	cr_assert_eq(d.nadded, 2);
	cr_assert(same(d.added[0], X(40, 20, 4, 0, 0)));
	cr_assert(same(d.added[1], X(60, 40, 1, 60, 0)));
	/* over two whole rows and into a gap */
	e = X(150, 70, 0, 0, 0);
	cr_assert_eq(emap_put(m, &e, &d), 0);
	cr_assert_eq(d.nremoved, 2);
	cr_assert_eq(d.removed[0].lblock, 200);
	cr_assert_eq(d.removed[1].lblock, 210);
	cr_assert_eq(d.nadded, 1);
	cr_assert(same(d.added[0], X(150, 70, 0, 0, 0)));
	/* what is already there: nothing to write; a neighbour that only touches: not listed */
	e = X(70, 5, 1, 70, 0);
	cr_assert_eq(emap_put(m, &e, &d), 0);
	cr_assert_eq(d.nremoved, 0);
	cr_assert_eq(d.nadded, 0);
	e = X(100, 10, 7, 0, 0);
	cr_assert_eq(emap_put(m, &e, &d), 0);
	cr_assert_eq(d.nremoved, 0);
	cr_assert_eq(d.nadded, 1);
	/* a delete and a truncate fill it too */
	cr_assert_eq(emap_delete(m, 10, 20, &d), 0);
	cr_assert_eq(d.nremoved, 1);
	cr_assert_eq(d.nadded, 2);
	cr_assert_eq(emap_truncate(m, 105, &d), 0);
	cr_assert_eq(d.nremoved, 2);
	cr_assert(same(d.added[0], X(100, 5, 7, 0, 0)));
	cr_assert_eq(d.nadded, 1);
	/* an error leaves it empty */
	e = X(0, 0, 1, 0, 0);
	cr_assert_eq(emap_put(m, &e, &d), -EINVAL);
	cr_assert_eq(d.nremoved + d.nadded, 0);
	emap_diff_free(&d);
	emap_free(m);
}

Test(emap, failed_allocation_leaves_the_map_unchanged)
{
	struct emap *m = emap_new(NSLOTS);
	struct emap_ext e, *before, *after;
	struct emap_diff d = EMAP_DIFF_INIT;
	size_t nb, na, failures = 0;

	cr_assert_eq(emap_set_leaf_max(m, 8), 0);
	for (uint32_t i = 0; i < 64; i++)
		put(m, X(i * 4, 2, 1 + i, 0, 0));
	for (uint32_t i = 0; i < 400; i++) {
		nb = dump(m, &before);
		e = X((i * 37) % 260, 1 + i % 9, 100 + i, 0, i % 2);
		emap_fail_alloc_after(i % 3);
		int rc = emap_put(m, &e, &d);
		emap_fail_alloc_after(-1);
		cr_assert_null(emap_check(m), "%s", emap_check(m));
		if (rc == -ENOMEM) {
			failures++;
			na = dump(m, &after);
			cr_assert_eq(na, nb);
			cr_assert(!memcmp(before, after, na * sizeof(*after)));
			cr_assert_eq(d.nremoved + d.nadded, 0);
			free(after);
		} else {
			cr_assert_eq(rc, 0);
		}
		free(before);
	}
	cr_log_info("%zu puts failed", failures);
	cr_assert_gt(failures, 0);
	emap_diff_free(&d);
	emap_free(m);
}

/* --- the model test ---------------------------------------------------------- */

struct mblock {                         /* what one block maps to */
	uint8_t kind;                   /* enum emap_kind */
	uint64_t chunk;
	uint32_t slot;
	uint64_t tag;
};

struct model {
	struct mblock *b;
	uint64_t space;
	uint32_t max_slots;
};

static void model_put(struct model *md, const struct emap_ext *e)
{
	for (uint32_t i = 0; i < e->nblocks; i++)
		md->b[e->lblock + i] = (struct mblock){
			.kind = e->chunk ? EMAP_DATA : EMAP_ZERO, .chunk = e->chunk,
			.slot = e->chunk ? e->slot + i : 0, .tag = e->tag };
}

static void model_delete(struct model *md, uint64_t lo, uint64_t hi)
{
	for (uint64_t i = lo; i < hi && i < md->space; i++)
		md->b[i] = (struct mblock){ 0 };
}

/* Does block i continue block i - 1 in one extent? */
static bool model_continues(const struct model *md, uint64_t i)
{
	const struct mblock *a = &md->b[i - 1], *b = &md->b[i];

	if (i == 0 || !a->kind || a->kind != b->kind || a->tag != b->tag)
		return false;
	return b->kind == EMAP_ZERO || (a->chunk == b->chunk && b->slot == a->slot + 1);
}

/* The whole map against the model: every extent, the counts, the canon. */
static void model_compare(const struct model *md, const struct emap *m, uint64_t op)
{
	struct emap_ext *v;
	size_t n = dump(m, &v), k = 0;
	uint64_t starts = 0, data = 0, b = 0;

	for (size_t i = 0; i < n; i++) {
		cr_assert_leq(v[i].lblock + v[i].nblocks, md->space, "op %" PRIu64, op);
		for (; b < v[i].lblock; b++)
			cr_assert_eq(md->b[b].kind, EMAP_UNMAPPED, "op %" PRIu64 ": block %" PRIu64
				     " should be mapped", op, b);
		for (uint32_t j = 0; j < v[i].nblocks; j++, b++) {
			const struct mblock *x = &md->b[b];

			cr_assert_eq(x->kind, v[i].chunk ? EMAP_DATA : EMAP_ZERO,
				     "op %" PRIu64 ": block %" PRIu64 " kind", op, b);
			cr_assert_eq(x->tag, v[i].tag, "op %" PRIu64 ": block %" PRIu64 " tag", op, b);
			if (v[i].chunk)
				cr_assert(x->chunk == v[i].chunk && x->slot == v[i].slot + j,
					  "op %" PRIu64 ": block %" PRIu64 " is %" PRIu64 ":%u, map says %"
					  PRIu64 ":%u", op, b, x->chunk, x->slot, v[i].chunk, v[i].slot + j);
		}
	}
	for (; b < md->space; b++)
		cr_assert_eq(md->b[b].kind, EMAP_UNMAPPED, "op %" PRIu64 ": block %" PRIu64, op, b);
	for (b = 0; b < md->space; b++) {
		starts += md->b[b].kind && !model_continues(md, b);
		data += md->b[b].kind == EMAP_DATA;
	}
	cr_assert_eq(emap_count(m), starts, "op %" PRIu64 ": %" PRIu64 " extents, the model has %"
		     PRIu64 " (a merge missed or wrong)", op, emap_count(m), starts);
	cr_assert_eq(emap_data_blocks(m), data, "op %" PRIu64, op);
	(void)k;
	free(v);
}

/* Lookups and a walk of a random range, against the model. */
static void model_probe(const struct model *md, const struct emap *m, uint64_t *rng, uint64_t op)
{
	struct emap_ext e;
	struct emap_run r;
	uint64_t lo, hi;

	for (int i = 0; i < 8; i++) {
		uint64_t b = rng_next(rng) % (md->space + 8);
		bool hit = emap_lookup(m, b, &e);
		const struct mblock *x = b < md->space ? &md->b[b] : NULL;

		cr_assert_eq(hit, x && x->kind, "op %" PRIu64 ": lookup %" PRIu64, op, b);
		if (hit)
			cr_assert(e.lblock <= b && b < e.lblock + e.nblocks && e.tag == x->tag &&
				  (!x->chunk || (e.chunk == x->chunk && e.slot + (b - e.lblock) == x->slot)),
				  "op %" PRIu64 ": lookup %" PRIu64, op, b);
	}
	lo = rng_next(rng) % md->space;
	hi = lo + rng_next(rng) % 300;
	for (uint64_t b = lo; b < hi; b += r.nblocks) {
		cr_assert_gt(emap_next(m, b, hi, &r), 0);
		cr_assert_eq(r.lblock, b);
		cr_assert_leq(b + r.nblocks, hi);
		for (uint64_t j = 0; j < r.nblocks; j++) {
			uint64_t q = b + j;
			const struct mblock *x = q < md->space ? &md->b[q] : &(struct mblock){ 0 };

			cr_assert_eq(x->kind, r.kind, "op %" PRIu64 ": walk at %" PRIu64, op, q);
			if (r.kind == EMAP_DATA)
				cr_assert(x->chunk == r.chunk && x->slot == r.slot + j && x->tag == r.tag,
					  "op %" PRIu64 ": walk at %" PRIu64, op, q);
		}
		/* a run ends at the range's end or where the map changes */
		if (b + r.nblocks < hi && r.kind == EMAP_UNMAPPED)
			cr_assert_neq(b + r.nblocks < md->space ? md->b[b + r.nblocks].kind : 0,
				      EMAP_UNMAPPED, "op %" PRIu64 ": a gap stops early", op);
	}
}

/* prev minus d->removed plus d->added must be cur. */
static void check_diff(const struct emap_ext *prev, size_t nprev, const struct emap_diff *d,
		       const struct emap_ext *cur, size_t ncur, uint64_t op)
{
	struct emap_ext *v = malloc((nprev + d->nadded + 1) * sizeof(*v));
	size_t n = 0, r = 0, a = 0;

	for (size_t i = 0; i < nprev; i++) {
		if (r < d->nremoved && !memcmp(&prev[i], &d->removed[r], sizeof(prev[i]))) {
			r++;
			continue;
		}
		while (a < d->nadded && d->added[a].lblock < prev[i].lblock)
			v[n++] = d->added[a++];
		v[n++] = prev[i];
	}
	while (a < d->nadded)
		v[n++] = d->added[a++];
	cr_assert_eq(r, d->nremoved, "op %" PRIu64 ": a removed extent was not in the map", op);
	cr_assert_eq(n, ncur, "op %" PRIu64 ": the diff gives %zu extents, the map has %zu", op, n, ncur);
	cr_assert(!memcmp(v, cur, n * sizeof(*v)), "op %" PRIu64 ": the diff applied differs", op);
	for (size_t i = 0; i < d->nadded; i++)
		for (size_t j = 0; j < d->nremoved; j++)
			cr_assert(memcmp(&d->added[i], &d->removed[j], sizeof(*v)),
				  "op %" PRIu64 ": an extent both removed and added", op);
	free(v);
}

static uint64_t env_seed(void)
{
	const char *s = getenv("VSNAPFS_EMAP_SEED");

	return s ? strtoull(s, NULL, 0) : 20261213;
}

/* A random run of the model's space: mostly short, sometimes long. */
static struct emap_ext random_run(const struct model *md, uint64_t *rng, bool data)
{
	uint64_t b = rng_next(rng) % md->space;
	uint32_t longest = rng_next(rng) % 4 ? 8 : md->max_slots;
	uint32_t n = 1 + (uint32_t)(rng_next(rng) % longest);
	struct emap_ext e;

	if (b + n > md->space)
		n = (uint32_t)(md->space - b);
	e = X(b, n, 0, 0, rng_next(rng) % 2);
	if (!data)
		return e;
	e.chunk = 1 + rng_next(rng) % 3;
	e.slot = (uint32_t)(rng_next(rng) % (md->max_slots - n + 1));
	if (rng_next(rng) % 3 == 0 && b > 0 && md->b[b - 1].kind == EMAP_DATA &&
	    md->b[b - 1].slot + 1 + n <= md->max_slots) {
		/* continue the run on the left: a merge */
		e.chunk = md->b[b - 1].chunk;
		e.slot = md->b[b - 1].slot + 1;
		e.tag = md->b[b - 1].tag;
	}
	return e;
}

static void model_run(uint32_t leaf_max, uint64_t space, uint64_t nops, uint64_t seed)
{
	struct model md = { .b = calloc(space, sizeof(struct mblock)), .space = space, .max_slots = 64 };
	struct emap *m = emap_new(md.max_slots);
	struct emap_diff d = EMAP_DIFF_INIT;
	struct emap_ext *prev, *cur;
	uint64_t rng = seed, nfail = 0, max_ext = 0;
	size_t nprev, ncur;

	cr_assert_eq(emap_set_leaf_max(m, leaf_max), 0);
	for (uint64_t op = 0; op < nops; op++) {
		unsigned what = rng_next(&rng) % 100;
		bool with_diff = true, inject = rng_next(&rng) % 20 == 0;
		struct emap_ext e;
		uint64_t lo, hi;
		int rc;

		nprev = dump(m, &prev);
		if (inject)
			emap_fail_alloc_after((long)(rng_next(&rng) % 3));
		if (what < 45) {
			e = random_run(&md, &rng, true);
			rc = emap_put(m, &e, &d);
			if (!rc)
				model_put(&md, &e);
		} else if (what < 65) {
			e = random_run(&md, &rng, false);
			rc = emap_put(m, &e, &d);
			if (!rc)
				model_put(&md, &e);
		} else if (what < 85) {
			lo = rng_next(&rng) % space;
			hi = lo + rng_next(&rng) % 40;
			rc = emap_delete(m, lo, hi, &d);
			if (!rc)
				model_delete(&md, lo, hi);
		} else if (what < 86) {
			lo = space / 2 + rng_next(&rng) % (space / 2);
			rc = emap_truncate(m, lo, &d);
			if (!rc)
				model_delete(&md, lo, space);
		} else if (what < 87) {
			lo = rng_next(&rng) % (space / 8);
			hi = space - rng_next(&rng) % (space / 8);
			with_diff = false;
			rc = emap_clip(m, lo, hi);
			cr_assert_eq(rc, 0);
			model_delete(&md, 0, lo);
			model_delete(&md, hi, space);
		} else {
			/* overlay a small random map over a random window */
			struct emap *src;
			struct model smd = { .b = calloc(space, sizeof(struct mblock)), .space = space,
					     .max_slots = md.max_slots };

			emap_fail_alloc_after(-1);
			src = emap_new(md.max_slots);
			for (int i = 0; i < 6; i++) {
				e = random_run(&smd, &rng, i % 3 != 0);
				cr_assert_eq(emap_put(src, &e, NULL), 0);
				model_put(&smd, &e);
			}
			lo = rng_next(&rng) % space;
			hi = lo + rng_next(&rng) % (space - lo + 1);
			if (inject)
				emap_fail_alloc_after((long)(rng_next(&rng) % 3));
			with_diff = false;
			rc = emap_overlay(m, src, lo, hi);
			if (!rc)
				for (uint64_t q = lo; q < hi; q++)
					if (!md.b[q].kind)
						md.b[q] = smd.b[q];
			free(smd.b);
			emap_free(src);
		}
		emap_fail_alloc_after(-1);
		cr_assert_null(emap_check(m), "op %" PRIu64 " (seed %" PRIu64 "): %s", op, seed,
			       emap_check(m));
		ncur = dump(m, &cur);
		if (rc) {
			cr_assert_eq(rc, -ENOMEM, "op %" PRIu64 ": rc %d", op, rc);
			cr_assert(inject);
			cr_assert(ncur == nprev && !memcmp(prev, cur, ncur * sizeof(*cur)),
				  "op %" PRIu64 ": a failed call changed the map", op);
			nfail++;
		} else if (with_diff) {
			check_diff(prev, nprev, &d, cur, ncur, op);
		}
		if (ncur > max_ext)
			max_ext = ncur;
		free(prev);
		free(cur);
		model_compare(&md, m, op);
		model_probe(&md, m, &rng, op);
	}
	fprintf(stderr, "test_emap model: %" PRIu64 " ops, leaves of %u, %" PRIu64 " blocks, seed %"
		PRIu64 " (VSNAPFS_EMAP_SEED=N to change): up to %" PRIu64 " extents, %" PRIu64
		" calls failed on purpose\n", nops, leaf_max, space, seed, max_ext, nfail);
	emap_diff_free(&d);
	emap_free(m);
	free(md.b);
}

Test(emap, model_small_leaves_100000_random_operations, .timeout = 300)
{
	model_run(8, 1024, 100000, env_seed());
}

Test(emap, model_default_leaves_10000_random_operations, .timeout = 300)
{
	model_run(256, 8192, 10000, env_seed() + 1);
}

/* --- micro-benchmark --------------------------------------------------------- */

/* CPU time of this thread: the machine is shared, and wall time would
 * measure the other engineers' builds as much as emap. */
static double seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

Test(emap, put_rate_into_a_map_of_one_million_extents, .timeout = 300)
{
	const char *env = getenv("VSNAPFS_EMAP_BENCH_N");
	uint64_t n = env ? strtoull(env, NULL, 10) : 1000000, rng = 42, hits = 0;
	struct emap *m = emap_new(NSLOTS);
	struct emap_ext e;
	double t0, seq, rnd, look;

	/* sequential: n extents of 16 blocks, each in a chunk of its own */
	t0 = seconds();
	for (uint64_t i = 0; i < n; i++) {
		e = X(i * 16, 16, 1 + i, 0, 0);
		cr_assert_eq(emap_put(m, &e, NULL), 0);
	}
	seq = (double)n / (seconds() - t0);
	cr_assert_eq(emap_count(m), n);
	/* random: n one-block overwrites, most of them splitting an extent in three */
	t0 = seconds();
	for (uint64_t i = 0; i < n; i++) {
		e = X(rng_next(&rng) % (n * 16), 1, n + 1 + i, 0, 0);
		cr_assert_eq(emap_put(m, &e, NULL), 0);
	}
	rnd = (double)n / (seconds() - t0);
	t0 = seconds();
	for (uint64_t i = 0; i < n; i++)
		hits += emap_lookup(m, rng_next(&rng) % (n * 16), &e);
	look = (double)n / (seconds() - t0);
	cr_assert_eq(hits, n);
	cr_assert_null(emap_check(m));
	fprintf(stderr, "emap: %" PRIu64 " sequential puts %.2f M/s; then %" PRIu64 " random one-block"
		" puts %.2f M/s (map grew to %" PRIu64 " extents, %.1f bytes each); lookups %.2f M/s"
		" (per second of CPU)\n",
		n, seq / 1e6, n, rnd / 1e6, emap_count(m),
		(double)emap_mem_bytes(m) / (double)emap_count(m), look / 1e6);
	emap_free(m);
}
