/*
 * mcache: the map page cache, one behaviour per test, then a model test (a
 * per-block reference map: an "index" and a "delta" per view), a threaded
 * stress test of the same model, and a micro-benchmark.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vsnapfs/lock.h"
#include "vsnapfs/mcache.h"
#include "../tools/rng.h"

#define PB MCACHE_PAGE_BLOCKS
#define OWN MCACHE_OWN

static struct emap_ext X(uint64_t lblock, uint32_t nblocks, uint64_t chunk, uint32_t slot, uint64_t tag)
{
	return (struct emap_ext){ .lblock = lblock, .nblocks = nblocks, .chunk = chunk,
				  .slot = slot, .tag = tag };
}

static void check(struct mcache *mc)
{
	const char *why = mcache_check(mc);

	cr_assert_null(why, "%s", why);
}

/* Load page pageno of view from ext (a miss is expected): the page, pinned. */
static const struct mcache_page *load(struct mcache *mc, uint64_t view, uint64_t pageno,
				      const struct emap_ext *ext, size_t n)
{
	struct mcache_ticket t;
	const struct mcache_page *pg = mcache_get(mc, view, pageno, &t);

	cr_assert_null(pg, "page %" PRIu64 " of view %" PRIu64 " should miss", pageno, view);
	cr_assert_eq(mcache_load_end(mc, &t, ext, n, &pg), 0);
	cr_assert_not_null(pg);
	check(mc);
	return pg;
}

#define LOAD(mc, view, pageno, ...) ({ \
	struct emap_ext ext_[] = { __VA_ARGS__ }; \
	load((mc), (view), (pageno), ext_, sizeof(ext_) / sizeof(ext_[0])); \
})

static void expect_find(const struct mcache_page *pg, uint64_t lo, uint64_t hi,
			const struct emap_ext *want, size_t nwant)
{
	struct emap_ext got[PB];
	size_t n = mcache_page_find(pg, lo, hi, got, PB);

	cr_assert_eq(n, nwant, "[%" PRIu64 ", %" PRIu64 "): %zu extents, want %zu", lo, hi, n, nwant);
	for (size_t i = 0; i < n; i++)
		cr_assert(!memcmp(&got[i], &want[i], sizeof(got[i])),
			  "extent %zu: %" PRIu64 "+%u -> %" PRIu64 ":%u tag %" PRIu64
			  ", want %" PRIu64 "+%u -> %" PRIu64 ":%u tag %" PRIu64, i,
			  got[i].lblock, got[i].nblocks, got[i].chunk, got[i].slot, got[i].tag,
			  want[i].lblock, want[i].nblocks, want[i].chunk, want[i].slot, want[i].tag);
}

#define FIND(pg, lo, hi, ...) do { \
	struct emap_ext want_[] = { __VA_ARGS__ }; \
	expect_find((pg), (lo), (hi), want_, sizeof(want_) / sizeof(want_[0])); \
} while (0)
#define FIND_NONE(pg, lo, hi) expect_find((pg), (lo), (hi), NULL, 0)

static struct mcache_stats stats(struct mcache *mc)
{
	struct mcache_stats st;

	mcache_stats(mc, &st);
	return st;
}

/* --- behaviour, one per test ---------------------------------------------- */

Test(mcache, a_miss_then_a_load_then_a_hit_reads_the_extents_clipped)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	const struct mcache_page *pg;
	struct mcache_ticket t;

	cr_assert_null(mcache_get(mc, 7, 3, &t));
	cr_assert_eq(t.view, 7);
	cr_assert_eq(t.pageno, 3);
	/* page 3 = blocks 768..1023: own data, a gap, an inherited tombstone */
	pg = LOAD(mc, 7, 3, X(768, 10, 5, 100, OWN), X(800, 20, 0, 0, 0), X(1000, 24, 6, 0, 0));
	cr_assert_eq(mcache_page_view(pg), 7);
	cr_assert_eq(mcache_page_no(pg), 3);
	mcache_put(mc, pg);

	pg = mcache_get(mc, 7, 3, NULL);
	cr_assert_not_null(pg);
	FIND(pg, 0, 2000, X(768, 10, 5, 100, OWN), X(800, 20, 0, 0, 0), X(1000, 24, 6, 0, 0));
	FIND(pg, 770, 805, X(770, 8, 5, 102, OWN), X(800, 5, 0, 0, 0));
	FIND(pg, 1010, 1011, X(1010, 1, 6, 10, 0));
	FIND_NONE(pg, 778, 800);
	FIND_NONE(pg, 0, 768);
	FIND_NONE(pg, 900, 900);
	/* max smaller than the count: the count, and only max filled */
	{
		struct emap_ext one[1];

		cr_assert_eq(mcache_page_find(pg, 768, 1024, one, 1), 3);
		cr_assert_eq(one[0].lblock, 768);
	}
	mcache_put(mc, pg);
	cr_assert_eq(stats(mc).hits, 1);
	cr_assert_eq(stats(mc).misses, 2);
	cr_assert_eq(stats(mc).loads, 1);
	cr_assert_eq(stats(mc).pages, 1);
	cr_assert_eq(stats(mc).views, 1);
	check(mc);
	mcache_free(mc);
}

Test(mcache, a_load_merges_neighbours_and_refuses_bad_extents)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	const struct mcache_page *pg;
	struct mcache_ticket t;
	struct emap_ext overlap[] = { X(0, 4, 1, 0, 0), X(3, 1, 1, 9, 0) };
	struct emap_ext outside[] = { X(250, 10, 1, 0, 0) };
	struct emap_ext badtag[] = { X(0, 1, 1, 0, 2) };
	struct emap_ext empty[] = { X(0, 0, 1, 0, 0) };

	/* consecutive slots of one chunk with one tag: one extent; tombstones too */
	pg = LOAD(mc, 1, 0, X(0, 4, 9, 10, OWN), X(4, 4, 9, 14, OWN), X(8, 2, 9, 18, 0),
		  X(20, 1, 0, 0, 0), X(21, 3, 0, 0, 0));
	FIND(pg, 0, PB, X(0, 8, 9, 10, OWN), X(8, 2, 9, 18, 0), X(20, 4, 0, 0, 0));
	mcache_put(mc, pg);

	cr_assert_null(mcache_get(mc, 1, 0 + 5, &t));
	cr_assert_eq(mcache_load_end(mc, &t, overlap, 2, &pg), -EINVAL);
	cr_assert_null(pg);
	cr_assert_eq(mcache_load_end(mc, &t, outside, 1, &pg), -EINVAL);
	cr_assert_eq(mcache_load_end(mc, &t, badtag, 1, &pg), -EINVAL);
	cr_assert_eq(mcache_load_end(mc, &t, empty, 1, &pg), -EINVAL);
	/* an empty page is a page (all gaps) */
	cr_assert_null(mcache_get(mc, 1, 1, &t));
	cr_assert_eq(mcache_load_end(mc, &t, NULL, 0, &pg), 0);
	FIND_NONE(pg, 0, 1 << 20);
	mcache_put(mc, pg);
	check(mc);
	mcache_free(mc);
}

/* The charge of one view record, both tables, and one page of one extent:
 * from an empty cache to one page. */
static size_t one_page_bytes(void)
{
	return MCACHE_PAGE_BYTES(1);
}

Test(mcache, the_least_recently_used_page_goes_first)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	size_t fixed = stats(mc).bytes, view_bytes;
	const struct mcache_page *pg;

	mcache_put(mc, LOAD(mc, 1, 0, X(0, 1, 1, 0, 0)));
	view_bytes = stats(mc).bytes - fixed - one_page_bytes();
	cr_assert(view_bytes > 0 && view_bytes <= 96, "a view record is charged %zu", view_bytes);
	mcache_put(mc, LOAD(mc, 1, 1, X(256, 1, 1, 1, 0)));
	mcache_put(mc, LOAD(mc, 1, 2, X(512, 1, 1, 2, 0)));
	/* room for exactly three pages: touch 0, then load 3: page 1 goes */
	mcache_set_limit(mc, fixed + view_bytes + 3 * one_page_bytes());
	cr_assert_eq(stats(mc).pages, 3);
	mcache_put(mc, mcache_get(mc, 1, 0, NULL));
	mcache_put(mc, LOAD(mc, 1, 3, X(768, 1, 1, 3, 0)));
	cr_assert_eq(stats(mc).evictions, 1);
	cr_assert_null(mcache_get(mc, 1, 1, NULL));
	pg = mcache_get(mc, 1, 2, NULL);        /* 2 is now the newest */
	cr_assert_not_null(pg);
	mcache_put(mc, pg);
	mcache_put(mc, LOAD(mc, 1, 4, X(1024, 1, 1, 4, 0)));
	cr_assert_null(mcache_get(mc, 1, 0, NULL), "0 was the least recently used");
	cr_assert_not_null((pg = mcache_get(mc, 1, 3, NULL)));
	mcache_put(mc, pg);
	/* a limit of 0 empties the cache and the view record goes with its pages */
	mcache_set_limit(mc, 0);
	cr_assert_eq(stats(mc).pages, 0);
	cr_assert_eq(stats(mc).views, 0);
	cr_assert_eq(stats(mc).bytes, fixed);
	check(mc);
	mcache_free(mc);
}

/* The charge is what malloc hands out (glibc's mallinfo2, measured apart
 * from the cache's own count): the RSS bound rests on it. */
Test(mcache, the_charge_is_what_malloc_hands_out)
{
	struct mcache *mc;
	struct emap_ext e[PB];
	size_t b0, m0, m1, c1, n = 0;
	void *drain[64 * 8];
	const struct mcache_page *pg;
	struct mcache_ticket t;

#ifdef __SANITIZE_ADDRESS__
	cr_skip_test("ASan's allocator is not glibc's");
#endif
	mc = mcache_new(MCACHE_DEFAULT_BYTES);
	b0 = stats(mc).bytes;
	for (uint64_t i = 0; i < 100; i++)
		e[i] = X(2 * i, 1, 1 + i, 0, OWN);
	/* empty glibc's per-thread cache (7 chunks per size up to 1 KiB): its
	 * chunks count as in use, so reusing them would hide allocations */
	for (size_t i = 0; i < 64 * 8; i++)
		drain[i] = malloc(16 * (i / 8) + 8);
	m0 = mallinfo2().uordblks;
	for (uint64_t p = 0; p < 300; p++, n = (n + 37) % 101) {
		for (size_t i = 0; i < n; i++)
			e[i].lblock = p * PB + 2 * i;
		cr_assert_null(mcache_get(mc, 1 + p % 7, p, &t));
		cr_assert_eq(mcache_load_end(mc, &t, e, n, &pg), 0);
		mcache_put(mc, pg);
	}
	cr_assert_eq(stats(mc).pages, 300);
	/* within 4 KiB: the table's old bucket arrays (3.6 KiB in all) went
	 * back to malloc, and a freed chunk may be handed out again unseen */
	m1 = mallinfo2().uordblks - m0;
	c1 = stats(mc).bytes - b0;
	cr_assert(m1 + 4096 > c1 && c1 + 4096 > m1, "malloc: %zu bytes more, charged: %zu more", m1, c1);
	fprintf(stderr, "test_mcache: 300 pages: malloc %zu bytes more, charged %zu more\n", m1, c1);
	for (size_t i = 0; i < 64 * 8; i++)
		free(drain[i]);
	/* one page of n extents costs MCACHE_PAGE_BYTES(n) */
	b0 = stats(mc).bytes;
	cr_assert_null(mcache_get(mc, 1, 1000, &t));
	cr_assert_eq(mcache_load_end(mc, &t, e, 0, &pg), 0);
	cr_assert_eq(stats(mc).bytes - b0, MCACHE_PAGE_BYTES(0));
	mcache_put(mc, pg);
	mcache_free(mc);
}

Test(mcache, pinned_pages_survive_eviction_and_only_they_exceed_the_limit)
{
	struct mcache *mc = mcache_new(0);
	const struct mcache_page *a, *b;
	struct mcache_stats st;

	a = LOAD(mc, 1, 0, X(0, 1, 1, 0, 0));
	b = LOAD(mc, 2, 0, X(0, 1, 2, 0, 0));
	st = stats(mc);
	cr_assert_eq(st.pages, 2);
	cr_assert_eq(st.pinned, 2);
	cr_assert_gt(st.bytes, st.limit_bytes, "over the limit by the pinned pages");
	FIND(a, 0, PB, X(0, 1, 1, 0, 0));
	mcache_put(mc, a);                      /* unpinned, over the limit: gone */
	check(mc);
	cr_assert_eq(stats(mc).pages, 1);
	cr_assert_null(mcache_get(mc, 1, 0, NULL));
	FIND(b, 0, PB, X(0, 1, 2, 0, 0));
	mcache_put(mc, b);
	cr_assert_eq(stats(mc).pages, 0);
	cr_assert_eq(stats(mc).evictions, 2);
	check(mc);
	mcache_free(mc);
}

Test(mcache, a_page_dropped_while_pinned_stays_readable_until_its_last_put)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	size_t fixed = stats(mc).bytes;
	const struct mcache_page *a, *a2;

	a = LOAD(mc, 1, 0, X(0, 8, 3, 0, OWN));
	a2 = mcache_get(mc, 1, 0, NULL);        /* a second pin of the same page */
	cr_assert_eq(a, a2);
	mcache_drop_view(mc, 1);
	check(mc);
	cr_assert_eq(stats(mc).pages, 0);
	cr_assert_eq(stats(mc).views, 0);
	cr_assert_eq(stats(mc).pinned, 1, "dropped, still pinned");
	cr_assert_null(mcache_get(mc, 1, 0, NULL));
	FIND(a, 0, PB, X(0, 8, 3, 0, OWN));
	mcache_put(mc, a);
	FIND(a2, 0, PB, X(0, 8, 3, 0, OWN));
	mcache_put(mc, a2);
	cr_assert_eq(stats(mc).pinned, 0);
	cr_assert_eq(stats(mc).bytes, fixed, "everything given back");
	check(mc);
	mcache_free(mc);
}

Test(mcache, updates_edit_resident_pages_only)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	const struct mcache_page *pg;
	struct emap_ext e;

	mcache_put(mc, LOAD(mc, 1, 0, X(0, 256, 4, 0, 0)));
	mcache_put(mc, LOAD(mc, 1, 2, X(512, 256, 5, 0, 0)));
	/* a put over pages 0, 1 (not resident) and 2 */
	e = X(250, 270, 9, 1000, OWN);
	cr_assert_eq(mcache_update_put(mc, 1, &e), 0);
	check(mc);
	cr_assert_null(mcache_get(mc, 1, 1, NULL), "not loaded by an update");
	pg = mcache_get(mc, 1, 0, NULL);
	FIND(pg, 0, PB, X(0, 250, 4, 0, 0), X(250, 6, 9, 1000, OWN));
	mcache_put(mc, pg);
	pg = mcache_get(mc, 1, 2, NULL);
	FIND(pg, 0, 1024, X(512, 8, 9, 1262, OWN), X(520, 248, 5, 8, 0));
	mcache_put(mc, pg);
	/* a tombstone, then a delete across the boundary; another view untouched */
	e = X(10, 5, 0, 77, OWN);
	cr_assert_eq(mcache_update_put(mc, 1, &e), 0);
	cr_assert_eq(mcache_update_delete(mc, 1, 255, 514), 0);
	cr_assert_eq(mcache_update_delete(mc, 2, 0, 1000), 0);
	pg = mcache_get(mc, 1, 0, NULL);
	FIND(pg, 0, PB, X(0, 10, 4, 0, 0), X(10, 5, 0, 0, OWN), X(15, 235, 4, 15, 0),
	     X(250, 5, 9, 1000, OWN));
	mcache_put(mc, pg);
	pg = mcache_get(mc, 1, 2, NULL);
	FIND(pg, 0, 1024, X(514, 6, 9, 1264, OWN), X(520, 248, 5, 8, 0));
	mcache_put(mc, pg);
	/* an update that rewrites what is there merges back into one extent */
	e = X(10, 5, 4, 10, 0);
	cr_assert_eq(mcache_update_put(mc, 1, &e), 0);
	pg = mcache_get(mc, 1, 0, NULL);
	FIND(pg, 0, 250, X(0, 250, 4, 0, 0));
	mcache_put(mc, pg);
	e = X(0, 0, 1, 0, 0);
	cr_assert_eq(mcache_update_put(mc, 1, &e), -EINVAL);
	e = X(0, 1, 1, 0, 5);
	cr_assert_eq(mcache_update_put(mc, 1, &e), -EINVAL);
	cr_assert_eq(mcache_update_delete(mc, 1, 5, 4), -EINVAL);
	cr_assert_eq(stats(mc).updates, 6);
	check(mc);
	mcache_free(mc);
}

Test(mcache, a_long_update_walks_the_views_pages)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	const struct mcache_page *pg;
	struct emap_ext e = X(0, UINT32_MAX, 0, 0, OWN);

	for (uint64_t p = 0; p < 4; p++)
		mcache_put(mc, LOAD(mc, 1, p * 1000, X(p * 1000 * PB, 3, 8, 0, 0)));
	mcache_put(mc, LOAD(mc, 2, 0, X(0, 3, 8, 0, 0)));
	/* 2^32 blocks, 16 M pages: the view's 4 pages are walked instead */
	cr_assert_eq(mcache_update_put(mc, 1, &e), 0);
	check(mc);
	for (uint64_t p = 0; p < 4; p++) {
		pg = mcache_get(mc, 1, p * 1000, NULL);
		cr_assert_not_null(pg);
		FIND(pg, 0, UINT64_MAX >> 8, X(p * 1000 * PB, PB, 0, 0, OWN));
		mcache_put(mc, pg);
	}
	cr_assert_eq(stats(mc).updates, 4);
	pg = mcache_get(mc, 2, 0, NULL);
	FIND(pg, 0, PB, X(0, 3, 8, 0, 0));
	mcache_put(mc, pg);
	mcache_free(mc);
}

Test(mcache, after_a_generation_bump_every_older_extent_reads_inherited)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	const struct mcache_page *old, *pg;
	struct emap_ext e;

	mcache_put(mc, LOAD(mc, 1, 0, X(0, 4, 3, 0, OWN), X(4, 4, 3, 4, 0), X(8, 2, 0, 0, OWN)));
	old = LOAD(mc, 2, 0, X(0, 4, 3, 0, OWN));
	mcache_bump_gen(mc, 1);
	pg = mcache_get(mc, 1, 0, NULL);
	cr_assert_not_null(pg, "a bump keeps the pages");
	FIND(pg, 0, PB, X(0, 4, 3, 0, 0), X(4, 4, 3, 4, 0), X(8, 2, 0, 0, 0));
	/* an edit after the bump: the old extents merge as inherited, the new one is own */
	e = X(9, 1, 7, 0, OWN);
	cr_assert_eq(mcache_update_put(mc, 1, &e), 0);
	FIND(pg, 0, PB, X(0, 4, 3, 0, 0), X(4, 4, 3, 4, 0), X(8, 2, 0, 0, 0));  /* pinned copy */
	mcache_put(mc, pg);
	pg = mcache_get(mc, 1, 0, NULL);
	FIND(pg, 0, PB, X(0, 8, 3, 0, 0), X(8, 1, 0, 0, 0), X(9, 1, 7, 0, OWN));
	mcache_put(mc, pg);
	/* another view's page is untouched */
	FIND(old, 0, PB, X(0, 4, 3, 0, OWN));
	mcache_put(mc, old);
	check(mc);
	mcache_free(mc);
}

Test(mcache, drop_chunks_drops_only_the_pages_naming_them)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	uint64_t ids[] = { 5, 9 }, bad[] = { 9, 5 };

	mcache_put(mc, LOAD(mc, 1, 0, X(0, 1, 4, 0, 0), X(1, 1, 10, 0, 0)));   /* 4..10: scanned */
	mcache_put(mc, LOAD(mc, 1, 1, X(256, 1, 4, 0, 0), X(257, 1, 9, 0, 0)));
	mcache_put(mc, LOAD(mc, 2, 0, X(0, 1, 5, 0, 0)));
	mcache_put(mc, LOAD(mc, 2, 1, X(256, 1, 0, 0, 0)));                    /* no data */
	mcache_put(mc, LOAD(mc, 3, 0, X(0, 1, 1, 0, 0), X(1, 1, 2, 0, 0)));
	cr_assert_eq(mcache_drop_chunks(mc, bad, 2), -EINVAL);
	cr_assert_eq(mcache_drop_chunks(mc, ids, 2), 0);
	check(mc);
	cr_assert_eq(stats(mc).dropped, 2);
	cr_assert_null(mcache_get(mc, 1, 1, NULL));
	cr_assert_null(mcache_get(mc, 2, 0, NULL));
	for (uint64_t v = 1; v <= 3; v++) {
		const struct mcache_page *pg = mcache_get(mc, v, v == 2 ? 1 : 0, NULL);

		cr_assert_not_null(pg, "view %" PRIu64 " kept its page", v);
		mcache_put(mc, pg);
	}
	mcache_free(mc);
}

/* --- the loading protocol ------------------------------------------------------ */

enum inval { BY_DROP_VIEW, BY_BUMP_GEN, BY_DROP_CHUNKS };

static void stale_after(enum inval how, bool resident_view)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	struct emap_ext e = X(0, 1, 3, 0, OWN);
	const struct mcache_page *pg;
	struct mcache_ticket t;
	uint64_t ids[] = { 42 };

	if (resident_view)
		mcache_put(mc, LOAD(mc, 1, 9, X(9 * PB, 1, 1, 0, 0)));
	cr_assert_null(mcache_get(mc, 1, 0, &t));
	switch (how) {
	case BY_DROP_VIEW:
		mcache_drop_view(mc, 1);
		break;
	case BY_BUMP_GEN:
		mcache_bump_gen(mc, 1);
		break;
	case BY_DROP_CHUNKS:
		cr_assert_eq(mcache_drop_chunks(mc, ids, 1), 0);
		break;
	}
	cr_assert_eq(mcache_load_end(mc, &t, &e, 1, &pg), -EAGAIN);
	cr_assert_null(pg);
	cr_assert_eq(stats(mc).loads_stale, 1);
	cr_assert_null(mcache_get(mc, 1, 0, &t), "nothing inserted");
	/* the next try goes through */
	cr_assert_eq(mcache_load_end(mc, &t, &e, 1, &pg), 0);
	FIND(pg, 0, PB, e);
	mcache_put(mc, pg);
	check(mc);
	mcache_free(mc);
}

Test(mcache, a_load_across_a_drop_view_is_stale)
{
	stale_after(BY_DROP_VIEW, true);
	stale_after(BY_DROP_VIEW, false);
}

Test(mcache, a_load_across_a_generation_bump_is_stale)
{
	stale_after(BY_BUMP_GEN, true);
	stale_after(BY_BUMP_GEN, false);
}

Test(mcache, a_load_across_a_drop_chunks_is_stale)
{
	stale_after(BY_DROP_CHUNKS, true);
	stale_after(BY_DROP_CHUNKS, false);
}

/* resident_view: view 1 has a page already, else this is its first load
 * (no record): other views' drops and bumps, with or without pages, leave
 * its ticket good either way. */
static void not_stale_after_others(bool resident_view)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	struct emap_ext e = X(0, 1, 3, 0, OWN);
	const struct mcache_page *pg;
	struct mcache_ticket t;

	if (resident_view)
		mcache_put(mc, LOAD(mc, 1, 9, X(9 * PB, 1, 1, 0, 0)));
	mcache_put(mc, LOAD(mc, 2, 9, X(9 * PB, 1, 1, 0, 0)));
	cr_assert_null(mcache_get(mc, 1, 0, &t));
	mcache_drop_view(mc, 2);
	mcache_bump_gen(mc, 2);
	mcache_bump_gen(mc, 3);
	mcache_drop_view(mc, 4);
	cr_assert_eq(mcache_load_end(mc, &t, &e, 1, &pg), 0);
	mcache_put(mc, pg);
	check(mc);
	mcache_free(mc);
}

Test(mcache, a_load_is_not_stale_for_another_views_invalidation)
{
	not_stale_after_others(true);
	not_stale_after_others(false);
}

/* A view without a record invalidated after a miss, then given a record by
 * another page's load: the record made afresh still makes the ticket stale. */
Test(mcache, a_load_across_a_drop_view_then_another_load_is_stale)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	struct emap_ext e = X(0, 1, 3, 0, OWN);
	const struct mcache_page *pg;
	struct mcache_ticket t;

	cr_assert_null(mcache_get(mc, 1, 0, &t));
	mcache_drop_view(mc, 1);
	mcache_put(mc, LOAD(mc, 1, 9, X(9 * PB, 1, 1, 0, 0)));
	cr_assert_eq(mcache_load_end(mc, &t, &e, 1, &pg), -EAGAIN);
	cr_assert_null(pg);
	check(mc);
	mcache_free(mc);
}

/*
 * A write between the miss and load_end: the page is not resident, so the
 * write-through does nothing; the caller's delta has it, and the caller
 * overlays it before load_end (mcache.h, Loading).  The inserted page shows
 * the write, and no later write can be lost: it goes into the page.
 */
Test(mcache, a_write_during_a_load_is_in_the_page_through_the_delta)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	struct emap_ext index[] = { X(0, 16, 3, 0, 0) }, w = X(4, 2, 8, 50, OWN), w2 = X(0, 1, 0, 0, OWN);
	struct emap_ext built[3];
	const struct mcache_page *pg;
	struct mcache_ticket t;

	cr_assert_null(mcache_get(mc, 1, 0, &t));
	/* the write: delta and write-through (a no-op, no page) */
	cr_assert_eq(mcache_update_put(mc, 1, &w), 0);
	cr_assert_eq(stats(mc).updates, 0);
	/* the loader read index[] before the write; it overlays the delta */
	built[0] = X(0, 4, 3, 0, 0);
	built[1] = w;
	built[2] = X(6, 10, 3, 6, 0);
	(void)index;
	cr_assert_eq(mcache_load_end(mc, &t, built, 3, &pg), 0);
	FIND(pg, 0, PB, X(0, 4, 3, 0, 0), w, X(6, 10, 3, 6, 0));
	mcache_put(mc, pg);
	/* the page is resident now: a write goes into it */
	cr_assert_eq(mcache_update_put(mc, 1, &w2), 0);
	pg = mcache_get(mc, 1, 0, NULL);
	FIND(pg, 0, PB, w2, X(1, 3, 3, 1, 0), w, X(6, 10, 3, 6, 0));
	mcache_put(mc, pg);
	check(mc);
	mcache_free(mc);
}

struct racer {
	struct mcache *mc;
	pthread_barrier_t *bar;
	uint64_t chunk;
	const struct mcache_page *pg;
	int rc;
};

static void *race_load(void *arg)
{
	struct racer *r = arg;
	struct emap_ext e = X(0, 1, r->chunk, 0, 0);
	struct mcache_ticket t;

	r->rc = -1;
	if (mcache_get(r->mc, 1, 0, &t))
		return NULL;
	pthread_barrier_wait(r->bar);           /* both missed */
	r->rc = mcache_load_end(r->mc, &t, &e, 1, &r->pg);
	return NULL;
}

Test(mcache, two_loaders_of_one_page_insert_it_once)
{
	for (int round = 0; round < 50; round++) {
		struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
		pthread_barrier_t bar;
		struct racer r[2] = { { mc, &bar, 1, NULL, 0 }, { mc, &bar, 2, NULL, 0 } };
		pthread_t th[2];
		struct emap_ext got;

		pthread_barrier_init(&bar, NULL, 2);
		for (int i = 0; i < 2; i++)
			cr_assert_eq(pthread_create(&th[i], NULL, race_load, &r[i]), 0);
		for (int i = 0; i < 2; i++)
			pthread_join(th[i], NULL);
		cr_assert_eq(r[0].rc, 0);
		cr_assert_eq(r[1].rc, 0);
		cr_assert_eq(r[0].pg, r[1].pg, "both get the one page");
		cr_assert_eq(mcache_page_find(r[0].pg, 0, PB, &got, 1), 1);
		cr_assert(got.chunk == 1 || got.chunk == 2);
		cr_assert_eq(stats(mc).loads, 1);
		cr_assert_eq(stats(mc).loads_raced, 1);
		cr_assert_eq(stats(mc).pages, 1);
		mcache_put(mc, r[0].pg);
		mcache_put(mc, r[1].pg);
		check(mc);
		mcache_free(mc);
		pthread_barrier_destroy(&bar);
	}
}

Test(mcache, out_of_memory_leaves_the_cache_consistent)
{
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	struct emap_ext e = X(0, 1, 3, 0, OWN);
	const struct mcache_page *pg;
	struct mcache_ticket t;
	struct mcache_stats before;

	mcache_put(mc, LOAD(mc, 1, 0, X(0, 8, 2, 0, 0)));
	before = stats(mc);
	/* the page's own allocation, then the new view record's */
	for (long after = 0; after < 2; after++) {
		cr_assert_null(mcache_get(mc, 2, 0, &t));
		mcache_fail_alloc_after(after);
		cr_assert_eq(mcache_load_end(mc, &t, &e, 1, &pg), -ENOMEM);
		mcache_fail_alloc_after(-1);
		cr_assert_null(pg);
		check(mc);
		cr_assert_eq(stats(mc).bytes, before.bytes);
		cr_assert_eq(stats(mc).pages, 1);
	}
	/* an update with no memory for its copy drops the page */
	mcache_fail_alloc_after(0);
	cr_assert_eq(mcache_update_put(mc, 1, &e), 0);
	mcache_fail_alloc_after(-1);
	check(mc);
	cr_assert_null(mcache_get(mc, 1, 0, NULL));
	cr_assert_eq(stats(mc).dropped, 1);
	/* a table that cannot grow still works */
	/* allocations: page 0, view 3's record, pages 1..64, then the table's
	 * doubling at 65 pages: that one fails */
	mcache_fail_alloc_after(66);
	for (uint64_t p = 0; p < 200; p++) {
		cr_assert_null(mcache_get(mc, 3, p, &t));
		if (mcache_load_end(mc, &t, &e, 0, &pg) == 0)
			mcache_put(mc, pg);
	}
	mcache_fail_alloc_after(-1);
	check(mc);
	cr_assert_eq(stats(mc).pages, 200);
	mcache_free(mc);
}

/* --- the model ---------------------------------------------------------------- */

/*
 * Per view, per block: the "index" (what SQLite holds, ancestors folded in,
 * own or inherited) and the "delta" (writes not checkpointed: own data,
 * tombstones, or deletes).  What the view shows is the delta over the index.
 * A load reads the index of its page at one time, and overlays the delta at
 * another, as the volume layer will.
 */
#define MV 3                            /* views */
#define MP 6                            /* pages per view */
#define MB (MP * PB)

struct mb {
	uint64_t chunk;
	uint32_t slot;
	uint8_t kind;                   /* 0 gap, 1 tombstone, 2 data */
	uint8_t own;
	uint8_t in_delta;               /* delta only: this block has a delta entry */
};

struct mview {
	struct mb index[MB];
	struct mb delta[MB];
	uint64_t ckpts;                 /* checkpoints so far (D4's pruned_lsn) */
	struct lock_rw lock;            /* the threaded test's vol.lock */
};

struct model {
	struct mview v[MV];
	struct mcache *mc;
	atomic_uint_fast64_t next_chunk; /* for relocations */
	atomic_uint_fast64_t reads, loads, stale, retries;
};

static struct mb truth(const struct mview *v, uint64_t b)
{
	return v->delta[b].in_delta ? v->delta[b] : v->index[b];
}

static bool mb_continues(const struct mb *a, const struct mb *b)
{
	return b->kind && b->kind == a->kind && b->own == a->own && b->chunk == a->chunk &&
	       (a->kind == 1 || b->slot == a->slot + 1);
}

/* Extents of the blocks blk[0..PB) of page p, runs cut at random places
 * (the cache must merge them back). */
static size_t build(const struct mb *blk, uint64_t p, uint64_t *rng, struct emap_ext *out)
{
	size_t n = 0;

	for (unsigned i = 0; i < PB;) {
		unsigned j = i + 1;

		if (!blk[i].kind) {
			i++;
			continue;
		}
		while (j < PB && mb_continues(&blk[j - 1], &blk[j]) && rng_next(rng) % 8)
			j++;
		out[n++] = X(p * PB + i, j - i, blk[i].kind == 2 ? blk[i].chunk : 0,
			     blk[i].kind == 2 ? blk[i].slot : 0, blk[i].own ? OWN : 0);
		i = j;
	}
	return n;
}

/* Does the pinned page pg of view vi show what the model says?  0 or the
 * first block that differs + 1 (to report from any thread). */
static uint64_t differs(const struct mview *v, const struct mcache_page *pg, uint64_t *rng)
{
	uint64_t p = mcache_page_no(pg), base = p * PB, lo, hi;
	struct emap_ext got[PB];
	struct mb seen[PB];
	size_t n;

	/* a random window, then the whole page */
	lo = base + rng_next(rng) % PB;
	hi = lo + 1 + rng_next(rng) % (base + PB - lo);
	for (int pass = 0; pass < 2; pass++, lo = 0, hi = UINT64_MAX) {
		uint64_t clo = lo > base ? lo : base, chi = hi < base + PB ? hi : base + PB;

		memset(seen, 0, sizeof(seen));
		n = mcache_page_find(pg, lo, hi, got, PB);
		for (size_t k = 0; k < n; k++) {
			if (got[k].lblock < clo || got[k].lblock + got[k].nblocks > chi || got[k].nblocks == 0)
				return got[k].lblock + 1;
			for (uint32_t i = 0; i < got[k].nblocks; i++)
				seen[got[k].lblock - base + i] = (struct mb){
					.kind = got[k].chunk ? 2 : 1, .chunk = got[k].chunk,
					.slot = got[k].chunk ? got[k].slot + i : 0, .own = got[k].tag == OWN };
		}
		for (uint64_t b = clo; b < chi; b++) {
			struct mb want = truth(v, b), g = seen[b - base];

			if (want.kind != g.kind || (want.kind && want.own != g.own) ||
			    (want.kind == 2 && (want.chunk != g.chunk || want.slot != g.slot)))
				return b + 1;
		}
	}
	return 0;
}

static void random_block(struct mb *m, uint64_t *rng, bool own_only)
{
	unsigned k = rng_next(rng) % 8;

	*m = (struct mb){ 0 };
	if (k == 0)
		return;
	m->kind = k == 1 ? 1 : 2;
	m->own = own_only ? 1 : rng_next(rng) % 2;
	if (m->kind == 2) {
		m->chunk = 1 + rng_next(rng) % 6;
		m->slot = (uint32_t)(rng_next(rng) % 64);
	}
}

/* A random index for a view: runs, so that pages have a few extents. */
static void random_index(struct mview *v, uint64_t *rng)
{
	for (uint64_t b = 0; b < MB;) {
		uint64_t n = 1 + rng_next(rng) % 40;
		struct mb m;

		random_block(&m, rng, false);
		for (uint64_t i = 0; i < n && b < MB; i++, b++) {
			v->index[b] = m;
			if (m.kind == 2)
				m.slot++;
		}
	}
	memset(v->delta, 0, sizeof(v->delta));
}

/* A write to the delta and through to the cache: [lo, lo + n). */
static void model_write(struct model *md, unsigned vi, uint64_t *rng)
{
	struct mview *v = &md->v[vi];
	uint64_t lo = rng_next(rng) % MB, n = 1 + rng_next(rng) % (rng_next(rng) % 4 ? 8 : 600);
	unsigned what = rng_next(rng) % 10;
	/* a fifth of the writes map blocks as inherited (the cache takes
	 * either; the splice of a page edit must keep both apart) */
	bool own = rng_next(rng) % 5 != 0;
	struct emap_ext e;

	if (lo + n > MB)
		n = MB - lo;
	e = X(lo, (uint32_t)n, what < 6 ? 1 + rng_next(rng) % 6 : 0, 0, own ? OWN : 0);
	if (e.chunk)
		e.slot = (uint32_t)(rng_next(rng) % 1000);
	for (uint64_t i = 0; i < n; i++) {
		struct mb *d = &v->delta[lo + i];

		if (what < 9)
			*d = (struct mb){ .kind = e.chunk ? 2 : 1, .chunk = e.chunk, .own = own,
					  .slot = e.chunk ? e.slot + (uint32_t)i : 0, .in_delta = 1 };
		else
			*d = (struct mb){ .in_delta = 1 };      /* a delete: a gap */
	}
	if (what < 9)
		cr_assert_eq(mcache_update_put(md->mc, vi, &e), 0);
	else
		cr_assert_eq(mcache_update_delete(md->mc, vi, lo, lo + n), 0);
}

/* The checkpoint: the delta goes into the index; when it moved anything,
 * loads in progress must start again (D4's pruned_lsn, the caller's rule). */
static void model_ckpt(struct mview *v)
{
	bool moved = false;

	for (uint64_t b = 0; b < MB; b++)
		if (v->delta[b].in_delta) {
			v->index[b] = v->delta[b];
			v->index[b].in_delta = 0;
			v->delta[b].in_delta = 0;
			moved = true;
		}
	if (moved)
		v->ckpts++;
}

/* A snapshot: checkpoint, then everything the view shows is inherited. */
static void model_snapshot(struct model *md, unsigned vi)
{
	struct mview *v = &md->v[vi];

	model_ckpt(v);
	for (uint64_t b = 0; b < MB; b++)
		v->index[b].own = 0;
	mcache_bump_gen(md->mc, vi);
}

/* GC moves chunk c of view vi's index to a new chunk (same slots), then
 * drops the pages naming c (every view's). */
static void model_gc(struct model *md, unsigned vi, uint64_t c)
{
	struct mview *v = &md->v[vi];
	uint64_t to = md->next_chunk++;

	model_ckpt(v);
	for (uint64_t b = 0; b < MB; b++)
		if (v->index[b].kind == 2 && v->index[b].chunk == c)
			v->index[b].chunk = to;
	cr_assert_eq(mcache_drop_chunks(md->mc, &c, 1), 0);
}

static void model_revert(struct model *md, unsigned vi, uint64_t *rng)
{
	random_index(&md->v[vi], rng);  /* the delta goes too: only drop_view tells */
	mcache_drop_view(md->mc, vi);
}

struct pending {                        /* a load between miss and load_end */
	struct mcache_ticket t;
	unsigned vi;
	struct mb snap[PB];             /* the index as read at the miss */
	uint64_t ckpts;
	bool must_stale;                /* an invalidation of it came since */
};

/* Finish a load: overlay the delta now, then load_end.  0 and *pg, or the
 * caller retries (-EAGAIN, or a checkpoint since: the pruned_lsn rule). */
static int finish_load(struct model *md, struct pending *pl, uint64_t *rng,
		       const struct mcache_page **pg)
{
	struct mview *v = &md->v[pl->vi];
	struct emap_ext ext[PB];
	size_t n;
	int rc;

	*pg = NULL;
	if (v->ckpts != pl->ckpts)
		return -ESTALE;
	for (unsigned i = 0; i < PB; i++)
		if (v->delta[pl->t.pageno * PB + i].in_delta)
			pl->snap[i] = v->delta[pl->t.pageno * PB + i];
	n = build(pl->snap, pl->t.pageno, rng, ext);
	rc = mcache_load_end(md->mc, &pl->t, ext, n, pg);
	if (rc == -EAGAIN)
		md->stale++;
	return rc;
}

static void start_load(struct model *md, struct pending *pl, unsigned vi, uint64_t p)
{
	pl->vi = vi;
	pl->ckpts = md->v[vi].ckpts;
	pl->must_stale = false;
	memcpy(pl->snap, &md->v[vi].index[p * PB], sizeof(pl->snap));
}

static uint64_t env_seed(void)
{
	const char *s = getenv("TEST_MCACHE_SEED");

	return s ? strtoull(s, NULL, 0) : 20261214;
}

#define NPEND 4
#define NHELD 3

static void model_run(uint64_t seed, uint64_t nops)
{
	static struct model md;
	struct pending pend[NPEND];
	const struct mcache_page *held[NHELD] = { 0 };
	unsigned npend = 0;
	uint64_t rng = seed, nfail = 0, nstale_must = 0;
	size_t page_charge = MCACHE_PAGE_BYTES(16), fixed;

	memset(&md, 0, sizeof(md));
	md.mc = mcache_new(0);
	/* the tables and the view records, then room for a few pages */
	fixed = stats(md.mc).bytes + MV * 96;
	mcache_set_limit(md.mc, fixed + 4 * page_charge);
	md.next_chunk = 1000;
	for (unsigned vi = 0; vi < MV; vi++)
		random_index(&md.v[vi], &rng);
	fprintf(stderr, "test_mcache model: seed %" PRIu64 " (TEST_MCACHE_SEED=N to change), %" PRIu64
		" operations\n", seed, nops);
	for (uint64_t op = 0; op < nops; op++) {
		unsigned what = rng_next(&rng) % 100, vi = rng_next(&rng) % MV;
		uint64_t p = rng_next(&rng) % MP;
		const struct mcache_page *pg;
		struct mcache_ticket t;
		uint64_t bad;
		int rc;

		if (what < 40) {                        /* a read */
			pg = mcache_get(md.mc, vi, p, &t);
			if (!pg && npend < NPEND && rng_next(&rng) % 3 == 0) {
				pend[npend].t = t;
				start_load(&md, &pend[npend++], vi, p);
				goto next;
			}
			if (!pg) {
				struct pending pl = { .t = t };
				bool inject = rng_next(&rng) % 20 == 0;

				start_load(&md, &pl, vi, p);
				if (inject)
					mcache_fail_alloc_after((long)(rng_next(&rng) % 2));
				rc = finish_load(&md, &pl, &rng, &pg);
				mcache_fail_alloc_after(-1);
				if (rc == -ENOMEM) {
					cr_assert(inject);
					nfail++;
					goto next;
				}
				cr_assert_eq(rc, 0, "op %" PRIu64 ": a load with nothing in between: %d", op, rc);
			}
			bad = differs(&md.v[vi], pg, &rng);
			cr_assert_eq(bad, 0, "op %" PRIu64 " (seed %" PRIu64 "): view %u block %" PRIu64
				     " differs", op, seed, vi, bad - 1);
			if (rng_next(&rng) % 4 == 0 && !held[op % NHELD])
				held[op % NHELD] = pg;
			else
				mcache_put(md.mc, pg);
		} else if (what < 55 && npend) {        /* finish a pending load */
			unsigned i = rng_next(&rng) % npend;
			struct pending *pl = &pend[i];

			rc = finish_load(&md, pl, &rng, &pg);
			if (pl->must_stale) {
				cr_assert(rc == -EAGAIN || rc == -ESTALE,
					  "op %" PRIu64 " (seed %" PRIu64 "): a stale load was inserted", op, seed);
				nstale_must += rc == -EAGAIN;
			}
			if (rc == 0) {
				bad = differs(&md.v[pl->vi], pg, &rng);
				cr_assert_eq(bad, 0, "op %" PRIu64 " (seed %" PRIu64 "): loaded page of view %u"
					     " block %" PRIu64 " differs", op, seed, pl->vi, bad - 1);
				mcache_put(md.mc, pg);
			}
			pend[i] = pend[--npend];
		} else if (what < 75) {
			bool inject = rng_next(&rng) % 20 == 0;

			if (inject)
				mcache_fail_alloc_after(0);
			model_write(&md, vi, &rng);
			mcache_fail_alloc_after(-1);
		} else if (what < 82) {
			unsigned i = rng_next(&rng) % NHELD;

			mcache_put(md.mc, held[i]);
			held[i] = NULL;
		} else if (what < 86) {
			model_ckpt(&md.v[vi]);
		} else if (what < 90) {
			model_snapshot(&md, vi);
			for (unsigned i = 0; i < npend; i++)
				pend[i].must_stale |= pend[i].vi == vi;
		} else if (what < 93) {
			model_gc(&md, vi, 1 + rng_next(&rng) % 6);
			for (unsigned i = 0; i < npend; i++)
				pend[i].must_stale = true;
		} else if (what < 95) {
			model_revert(&md, vi, &rng);
			for (unsigned i = 0; i < npend; i++)
				pend[i].must_stale |= pend[i].vi == vi;
		} else if (what < 97) {
			mcache_set_limit(md.mc, fixed + (1 + rng_next(&rng) % 8) * page_charge);
		} else {
			/* a read of a page just loaded, through a fresh get */
			pg = mcache_get(md.mc, vi, p, NULL);
			if (pg) {
				cr_assert_eq(differs(&md.v[vi], pg, &rng), 0, "op %" PRIu64, op);
				mcache_put(md.mc, pg);
			}
		}
next:
		check(md.mc);
	}
	for (unsigned i = 0; i < NHELD; i++)
		mcache_put(md.mc, held[i]);
	{
		struct mcache_stats st = stats(md.mc);

		fprintf(stderr, "test_mcache model: %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64
			" loads, %" PRIu64 " stale (%" PRIu64 " required), %" PRIu64 " raced, %" PRIu64
			" evictions, %" PRIu64 " dropped, %" PRIu64 " updates, %" PRIu64 " failed on purpose\n",
			st.hits, st.misses, st.loads, st.loads_stale, nstale_must, st.loads_raced,
			st.evictions, st.dropped, st.updates, nfail);
		cr_assert_gt(nstale_must, 0, "the model exercised no stale load");
		cr_assert_gt(st.evictions, 0);
		cr_assert_gt(st.updates, 0);
	}
	check(md.mc);
	mcache_free(md.mc);
}

Test(mcache, model_20000_random_operations_against_a_per_block_map)
{
	model_run(env_seed(), 20000);
}

/* --- threads ----------------------------------------------------------------- */

/*
 * The model with threads, locked as the volume layer will be: each view's
 * lock_rw (rank vol.lock) shared for a read and a load, exclusive for a
 * write, checkpoint, snapshot, revert or GC step; mcache.mu inside it.  A
 * load lets go of the view's lock between the miss and load_end (where the
 * index is read), so invalidations and writes land in between.
 */
static struct model tm;
static atomic_bool tm_stop;
static atomic_uint_fast64_t tm_bad;

static void *stress(void *arg)
{
	uint64_t rng = (uint64_t)(uintptr_t)arg;

	while (!atomic_load(&tm_stop)) {
		unsigned what = rng_next(&rng) % 100, vi = rng_next(&rng) % MV;
		uint64_t p = rng_next(&rng) % MP;
		struct mview *v = &tm.v[vi];

		if (what < 70) {
			const struct mcache_page *pg;
			struct pending pl;
			int rc;

			lock_rw_rdlock(&v->lock);
			while (!(pg = mcache_get(tm.mc, vi, p, &pl.t))) {
				start_load(&tm, &pl, vi, p);
				lock_rw_unlock(&v->lock);
				sched_yield();          /* reading the index */
				lock_rw_rdlock(&v->lock);
				rc = finish_load(&tm, &pl, &rng, &pg);
				if (rc == 0)
					break;
				if (rc != -EAGAIN && rc != -ESTALE)
					atomic_fetch_add(&tm_bad, 1);
				tm.retries++;
			}
			if (differs(v, pg, &rng)) {
				fprintf(stderr, "test_mcache stress: view %u page %" PRIu64 " differs\n", vi, p);
				atomic_fetch_add(&tm_bad, 1);
			}
			tm.reads++;
			mcache_put(tm.mc, pg);
			lock_rw_unlock(&v->lock);
			continue;
		}
		lock_rw_wrlock(&v->lock);
		if (what < 90)
			model_write(&tm, vi, &rng);
		else if (what < 94)
			model_ckpt(v);
		else if (what < 96)
			model_snapshot(&tm, vi);
		else if (what < 98)
			model_gc(&tm, vi, 1 + rng_next(&rng) % 6);
		else
			model_revert(&tm, vi, &rng);
		lock_rw_unlock(&v->lock);
	}
	return NULL;
}

Test(mcache, four_threads_for_two_seconds_with_the_lock_checker)
{
	uint64_t seed = env_seed(), rng = seed;
	pthread_t th[4];
	struct mcache_stats st;

	lock_check_set(true);
	memset(&tm, 0, sizeof(tm));
	tm.mc = mcache_new(0);
	mcache_set_limit(tm.mc, stats(tm.mc).bytes + MV * 96 + 6 * MCACHE_PAGE_BYTES(16));
	tm.next_chunk = 1000;
	for (unsigned vi = 0; vi < MV; vi++) {
		random_index(&tm.v[vi], &rng);
		lock_rw_init(&tm.v[vi].lock, LOCK_VOL, "vol.lock", true);
	}
	for (int i = 0; i < 4; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, stress, (void *)(uintptr_t)mix(seed + i)), 0);
	{
		struct timespec ts = { .tv_sec = 2 };

		nanosleep(&ts, NULL);
	}
	atomic_store(&tm_stop, true);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	st = stats(tm.mc);
	fprintf(stderr, "test_mcache stress: seed %" PRIu64 ", %" PRIu64 " reads, %" PRIu64
		" retries; %" PRIu64 " loads, %" PRIu64 " stale, %" PRIu64 " raced, %" PRIu64
		" evictions, %" PRIu64 " dropped, %" PRIu64 " updates\n", seed, (uint64_t)tm.reads,
		(uint64_t)tm.retries, st.loads, st.loads_stale, st.loads_raced, st.evictions,
		st.dropped, st.updates);
	cr_assert_eq(tm_bad, 0, "a read differed from the model (see above)");
	cr_assert_gt(tm.reads, 100);
	check(tm.mc);
	cr_assert_eq(st.pinned, 0);
	mcache_free(tm.mc);
}

/* --- micro-benchmark ------------------------------------------------------------ */

static double seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A dense page: 162 extents of one or two blocks, as D4's 4 GiB random volume. */
static size_t dense(uint64_t p, struct emap_ext *e)
{
	size_t n = 0;

	for (uint64_t b = 0; n < 162; n++, b += (n % 2) ? 1 : 2)
		e[n] = X(p * PB + b, 1, 1 + n, (uint32_t)n, n % 3 ? OWN : 0);
	return n;
}

Test(mcache, bench_hit_insert_evict_and_bytes_per_page)
{
	const char *env = getenv("TEST_MCACHE_BENCH_N");
	uint64_t n = env ? strtoull(env, NULL, 10) : 200000, npages = 4096, rng = 7, sum = 0;
	struct mcache *mc = mcache_new(MCACHE_DEFAULT_BYTES);
	struct emap_ext e[PB], seq = X(0, PB, 5, 0, OWN);
	const struct mcache_page *pg;
	struct mcache_ticket t;
	double t0, hit[3], upd[2], load_dense, load_evict;
	size_t ne = dense(0, e), b0;

	lock_check_set(false);                  /* measure the production path */
	b0 = stats(mc).bytes;
	/* npages dense pages of view 1, npages sequential pages of view 2 */
	t0 = seconds();
	for (uint64_t p = 0; p < npages; p++) {
		dense(p, e);
		cr_assert_null(mcache_get(mc, 1, p, &t));
		cr_assert_eq(mcache_load_end(mc, &t, e, ne, &pg), 0);
		mcache_put(mc, pg);
	}
	load_dense = (seconds() - t0) / (double)npages;
	for (uint64_t p = 0; p < npages; p++) {
		seq.lblock = p * PB;
		cr_assert_null(mcache_get(mc, 2, p, &t));
		cr_assert_eq(mcache_load_end(mc, &t, &seq, 1, &pg), 0);
		mcache_put(mc, pg);
	}
	fprintf(stderr, "mcache: page bytes: dense (162 extents) %zu, sequential (1 extent) %zu;"
		" %zu bytes for %" PRIu64 " + %" PRIu64 " pages and their tables (%.0f per page)\n",
		MCACHE_PAGE_BYTES(162), MCACHE_PAGE_BYTES(1), stats(mc).bytes - b0, npages, npages,
		(double)(stats(mc).bytes - b0) / (double)(2 * npages));
	/* a hit: get, one find of a 4-block window, put; over 64 pages (hot in
	 * the CPU caches) and over all of them (11 MiB of dense pages: cold) */
	for (int k = 0; k < 3; k++) {
		uint64_t view = k < 2 ? 1 : 2, span = k == 0 ? 64 : npages;

		t0 = seconds();
		for (uint64_t i = 0; i < n; i++) {
			uint64_t p = rng_next(&rng) % span, b = p * PB + rng_next(&rng) % (PB - 4);

			pg = mcache_get(mc, view, p, NULL);
			sum += mcache_page_find(pg, b, b + 4, e, PB);
			mcache_put(mc, pg);
		}
		hit[k] = (seconds() - t0) / (double)n;
	}
	cr_assert_gt(sum, 0);
	/* a one-block write-through into a resident dense page, hot and cold */
	for (int k = 0; k < 2; k++) {
		uint64_t span = k == 0 ? 64 : npages;

		t0 = seconds();
		for (uint64_t i = 0; i < n / 10; i++) {
			struct emap_ext w = X(rng_next(&rng) % (span * PB), 1, 9999, (uint32_t)i, OWN);

			cr_assert_eq(mcache_update_put(mc, 1, &w), 0);
		}
		upd[k] = (seconds() - t0) / (double)(n / 10);
	}
	/* insert + evict: a limit of 64 dense pages, dense pages loaded in a loop */
	mcache_set_limit(mc, 0);
	mcache_set_limit(mc, stats(mc).bytes + 64 * MCACHE_PAGE_BYTES(162) + 128);
	t0 = seconds();
	for (uint64_t i = 0; i < n / 10; i++) {
		dense(npages + i, e);
		cr_assert_null(mcache_get(mc, 3, npages + i, &t));
		cr_assert_eq(mcache_load_end(mc, &t, e, ne, &pg), 0);
		mcache_put(mc, pg);
	}
	load_evict = (seconds() - t0) / (double)(n / 10);
	check(mc);
	fprintf(stderr, "mcache: hit (get + find of 4 blocks + put): dense page %.0f ns hot, %.0f ns"
		" cold, sequential page %.0f ns; load_end of a dense page %.0f ns (fresh memory), %.0f ns"
		" with an eviction; one-block update of a dense page %.0f ns hot, %.0f ns cold"
		" (per CPU second)\n", hit[0] * 1e9, hit[1] * 1e9, hit[2] * 1e9, load_dense * 1e9,
		load_evict * 1e9, upd[0] * 1e9, upd[1] * 1e9);
	mcache_free(mc);
}
