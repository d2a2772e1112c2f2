/*
 * mcache: the store-wide cache of map pages (docs/design.md, D4).  No I/O,
 * no SQLite: the caller builds a page on a miss and hands it in.
 *
 * A page is MCACHE_PAGE_BLOCKS consecutive blocks of one view (an open
 * volume or snapshot image; the view id is the caller's, any u64), page
 * number pageno = lblock / MCACHE_PAGE_BLOCKS.  It holds the extents the
 * view shows there with the ancestors already folded in: data (chunk,
 * slot) or tombstone (chunk 0, reads as zeros), each own (the view's node
 * holds it) or inherited; a block no extent covers is a gap and reads as
 * zeros too.  Extents go in and out as struct emap_ext (vsnapfs/emap.h):
 * absolute lblock, and tag MCACHE_OWN or 0 (inherited).  A read is one hash
 * lookup (mcache_get) and one binary search (mcache_page_find), whatever
 * the depth of the snapshot chain.
 *
 * Generations.  Each view has a generation kept here.  A page remembers the
 * generation it was built or last edited in; mcache_bump_gen() (a snapshot
 * of the view) moves the view's, and from then on every extent of its older
 * pages reads as inherited: constant time, the pages stay.  An edit of an
 * older page first turns its own extents into inherited ones.
 *
 * Loading (the race-free protocol):
 *   1. pg = mcache_get(mc, view, pageno, &t): a hit, or NULL and a ticket t.
 *   2. Without mcache.mu, read the page's extents from the index (each
 *      node of the chain, nearest first, clipped to the inherit limits).
 *   3. Under the lock that serialises mcache_update_*() for this view (the
 *      volume's lock), overlay the caller's pending changes (the delta)
 *      onto what step 2 read, then mcache_load_end(mc, &t, ext, n, &pg)
 *      before that lock is let go.  Writes between 1 and 3 are therefore in
 *      the delta (a write-through of a page not resident does nothing), and
 *      none can slip in between the overlay and the insert.
 *   mcache_load_end() returns -EAGAIN (and inserts nothing) when anything
 *   that could change what step 2 read happened after step 1: a
 *   drop_view or bump_gen of this view, or any drop_chunks.  The caller
 *   starts again at 1.  (It is conservative: when the view had no page at
 *   step 3, any invalidation of any view after step 1 counts.)  When
 *   another loader inserted the page first, load_end returns that page and
 *   discards this one.  Checks that are the caller's business (D4's
 *   pruned_lsn) come before load_end.
 *
 * Pins.  mcache_get() and mcache_load_end() return the page pinned; it
 * stays readable (and its memory valid) until mcache_put().  A page is
 * never edited in place: an update makes a new copy and replaces it in the
 * table, a drop unlinks it, and a pinned page so replaced or unlinked is
 * freed at its last mcache_put().  So a pinned page is a consistent
 * snapshot, which may be one edit behind if the caller lets an update run
 * while it holds the pin (the volume layer does not: it reads under its
 * lock shared and updates under it exclusive).
 *
 * Memory.  Every page, the view records and both hash tables are charged at
 * what malloc hands out (MCACHE_ALLOC_BYTES: the request plus glibc's 8 B
 * header, rounded up to 16 B).  A page of n extents costs
 * MCACHE_PAGE_BYTES(n).  After every call, the charge is at most the limit
 * or nothing is left to evict: the pages over the limit are pinned ones
 * (and the tables).  mcache_check() asserts it.
 *
 * Errors:    calls returning int return 0 or a negative errno, said at each
 *            call.  -ENOMEM leaves the cache as it was before the call (an
 *            update that finds no memory for its copy drops the page
 *            instead: still consistent, the next load rebuilds it).
 * Ownership: the cache owns its pages; extents are copied in and out.  A
 *            page pointer is valid from the call that pinned it to the
 *            mcache_put() that unpins it; the caller must put every pin
 *            before mcache_free().
 * Threads:   every call may run concurrently on one cache, except
 *            mcache_free().  mcache_page_find() needs no lock at all (the
 *            page is pinned and never changes).
 * Locks:     mcache.mu (rank LOCK_MCACHE, vsnapfs/lock.h): the tables, the
 *            LRU list, the charge.  Every call but mcache_page_find() takes
 *            it, briefly, and calls nothing outside this file and malloc
 *            while holding it; so callers may hold vol.lock and anything
 *            ranked before it, and nothing ranked after.  The integration
 *            adds mcache.inval and mcache.conn (D4) above vol.lock; they
 *            are not here because the library does no loading itself.
 */
#ifndef VSNAPFS_MCACHE_H
#define VSNAPFS_MCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vsnapfs/emap.h"

#define MCACHE_PAGE_SHIFT    8
#define MCACHE_PAGE_BLOCKS   (1u << MCACHE_PAGE_SHIFT)     /* blocks per page */
#define MCACHE_DEFAULT_BYTES ((size_t)256 << 20)           /* -o map_cache default */
#define MCACHE_OWN           1u                            /* emap_ext.tag: own */

/* What malloc really uses for a request of `bytes` (glibc: an 8 B header,
 * 16 B granules, at least 32 B), which is what the cache charges. */
#define MCACHE_ALLOC_BYTES(bytes) \
	((size_t)(bytes) + 8 <= 32 ? (size_t)32 : ((size_t)(bytes) + 8 + 15) & ~(size_t)15)
/* The charge of a page holding n extents (header 80 B + 16 B per extent). */
#define MCACHE_PAGE_BYTES(n) MCACHE_ALLOC_BYTES(80 + 16 * (size_t)(n))

struct mcache;                          /* opaque */
struct mcache_page;                     /* opaque; pinned while the caller holds it */

struct mcache_ticket {                  /* a load in progress; a plain value */
	uint64_t view;
	uint64_t pageno;
	uint64_t seq;                   /* private: invalidations seen at the miss */
};

struct mcache_stats {
	size_t limit_bytes;
	size_t bytes;                   /* charged now: pages, views, tables */
	uint64_t pages;                 /* in the table */
	uint64_t pinned;                /* pinned now, in the table or dropped */
	uint64_t views;                 /* view records (a view with pages) */
	uint64_t hits, misses;          /* mcache_get */
	uint64_t loads;                 /* pages inserted by mcache_load_end */
	uint64_t loads_stale;           /* load_end said -EAGAIN */
	uint64_t loads_raced;           /* load_end found the page already there */
	uint64_t evictions;             /* pages freed for the limit */
	uint64_t dropped;               /* pages removed by drop_view/drop_chunks/ENOMEM */
	uint64_t updates;               /* page copies made by mcache_update_* */
};

/* A cache charging at most limit_bytes (0 is allowed: nothing stays
 * unpinned).  NULL when out of memory. */
struct mcache *mcache_new(size_t limit_bytes);
/* Frees every page.  NULL is fine; no page may be pinned (asserted). */
void mcache_free(struct mcache *mc);
/* A new limit, enforced before return (unpinned pages evicted, LRU first). */
void mcache_set_limit(struct mcache *mc, size_t limit_bytes);
void mcache_stats(struct mcache *mc, struct mcache_stats *out);

/*
 * The page pageno of view, pinned, and now the most recently used; or NULL
 * (a miss) and, when t is not NULL, *t the ticket for loading it.
 */
const struct mcache_page *mcache_get(struct mcache *mc, uint64_t view, uint64_t pageno,
				     struct mcache_ticket *t);
/* Unpin a page from mcache_get() or mcache_load_end().  NULL is fine. */
void mcache_put(struct mcache *mc, const struct mcache_page *pg);

/*
 * Step 3 of the loading protocol: insert the page of t from ext[0..n): sorted,
 * disjoint extents inside the page (lblock in [pageno * MCACHE_PAGE_BLOCKS,
 * +MCACHE_PAGE_BLOCKS)), tag MCACHE_OWN or 0; n may be 0 (all gaps).
 * Mergeable neighbours are merged (emap.h's rule).  0 and *out the page,
 * pinned (this one, or the one another loader inserted first); -EAGAIN: an
 * invalidation came after the ticket, load again; -EINVAL: bad extents;
 * -ENOMEM.  *out is NULL on error.
 */
int mcache_load_end(struct mcache *mc, const struct mcache_ticket *t, const struct emap_ext *ext,
		    size_t n, const struct mcache_page **out);

/*
 * The extents of a pinned page overlapping [lo, hi), clipped to it and to
 * the page (slot advanced with lblock), in order, tag MCACHE_OWN or 0 as of
 * the view's generation now.  Returns how many there are and fills the
 * first min(that, max) of out (MCACHE_PAGE_BLOCKS always suffices); blocks
 * between them are gaps.  No lock; O(log n + returned).
 */
size_t mcache_page_find(const struct mcache_page *pg, uint64_t lo, uint64_t hi,
			struct emap_ext *out, size_t max);
/* The page's view id and page number. */
uint64_t mcache_page_view(const struct mcache_page *pg);
uint64_t mcache_page_no(const struct mcache_page *pg);

/*
 * Write-through: map [e->lblock, +e->nblocks) as *e says (data, or a
 * tombstone when chunk is 0; tag MCACHE_OWN or 0) in the resident pages of
 * view that the range touches; mcache_update_delete() makes [lo, hi) gaps.
 * Pages not resident are not loaded (the caller's delta covers them at the
 * next load, see Loading).  0, or -EINVAL for a bad range or tag; never
 * -ENOMEM (see Errors).  Cost: per page touched, a copy of the page.
 */
int mcache_update_put(struct mcache *mc, uint64_t view, const struct emap_ext *e);
int mcache_update_delete(struct mcache *mc, uint64_t view, uint64_t lo, uint64_t hi);

/* The view was snapshotted: its own extents are inherited from now on.
 * O(1); loads of the view in progress will get -EAGAIN. */
void mcache_bump_gen(struct mcache *mc, uint64_t view);
/* What the view shows changed in the index (revert, truncate to zero,
 * re-attach) or it is closed: drop all its pages (pinned ones are freed at
 * their last put), forget its generation; its loads in progress get
 * -EAGAIN.  O(pages of the view). */
void mcache_drop_view(struct mcache *mc, uint64_t view);
/*
 * Blocks moved out of chunks ids[0..n) (GC, defrag): drop every page naming
 * any of them, of every view; every load in progress gets -EAGAIN.  ids
 * sorted ascending, no duplicates (-EINVAL otherwise).  O(pages), a page
 * whose [min, max] chunk id misses ids costs two compares.
 */
int mcache_drop_chunks(struct mcache *mc, const uint64_t *ids, size_t n);

/*
 * Check every invariant (tables, lists, pins, charge, the limit, each page's
 * extents).  NULL when all hold, else a sentence naming the first that does
 * not (a buffer of the calling thread).  O(pages + extents); for tests.
 */
const char *mcache_check(struct mcache *mc);

/* Test hook: the allocation after the next `after` ones fails, once; -1
 * (the default) turns it off.  Process-wide, not thread safe. */
void mcache_fail_alloc_after(long after);

#endif
