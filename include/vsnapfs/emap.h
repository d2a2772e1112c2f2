/*
 * emap: an in-memory map of extents, sorted by logical block.  No I/O, no
 * locks, no SQLite.
 *
 * An extent maps the logical blocks [lblock, lblock + nblocks) either to data,
 * in chunk `chunk` at slots slot .. slot + nblocks - 1, or to a tombstone
 * (chunk 0): the blocks read as zeros and hide what a parent shows.  A block
 * no extent covers is unmapped, a gap: what shows there is the caller's
 * business (the parent below the inherit limit, else zeros).  Each extent
 * carries a 64-bit tag that emap never interprets: a split or a trim copies
 * it, and two extents merge only when their tags are equal.  The three users
 * of docs/design.md (D1, D4) put in it what they need: bmap.c's row edits 0;
 * a map page own / inherited; a volume's delta DIRTY or LOGGED and the lsn.
 *
 * Canonical form, checked by emap_check(): extents are sorted, disjoint and
 * never empty; lblock + nblocks <= EMAP_LBLOCK_LIMIT; a data extent stays in
 * its chunk (slot + nblocks <= the map's max_slots); a tombstone has slot 0;
 * and two extents that could be one are one.  "Could be one" (mergeable):
 * a ends where b starts, equal tags, and either both are tombstones of at
 * most EMAP_NBLOCKS_MAX blocks together, or both are data of one chunk with
 * b.slot == a.slot + a.nblocks.  So the extents of a map depend only on what
 * each block maps to, never on the order of the edits that made it (with
 * one exception: a run of tombstones longer than EMAP_NBLOCKS_MAX is cut
 * into extents at places that depend on the edits).
 *
 * Errors:    calls returning int return 0, -EINVAL (a bad range or extent,
 *            said at each call) or -ENOMEM.  After an error the map is
 *            unchanged and a diff passed to the call is empty.
 * Ownership: the map owns its memory; extents are copied in and out, no
 *            pointer into the map is ever handed out.  A diff's arrays are
 *            the caller's, kept for reuse, freed by emap_diff_free().
 * Threads:   none of its own.  Calls that take a const map may run
 *            concurrently with each other; anything else needs the owner's
 *            lock (a vol's lock, mcache.mu, or none for bmap.c's temporary).
 * Costs:     n extents in the map, k extents an edit removes, r runs a walk
 *            yields.  lookup, next: O(log n).  put, delete, truncate, clip:
 *            O(log n + k + L) with L = 256 (a leaf), plus O(n / L) for the
 *            memmove of the leaf directory when a leaf splits or goes away,
 *            once per ~L/2 edits.  overlay: O((r + n) log n) to find the gaps
 *            and O(n + r) to rebuild (meant for pages and for loading a whole
 *            map once; the delta never overlays).  Measured figures are in
 *            docs/performance.md, "Issue 13: the extent map".
 * Memory:    32 B per extent in leaves kept at least 1/4 full, plus 16 B per
 *            leaf of directory; a map of one extent costs 200 B.
 */
#ifndef VSNAPFS_EMAP_H
#define VSNAPFS_EMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EMAP_LBLOCK_LIMIT (1ULL << 48)  /* every lblock + nblocks <= this */
#define EMAP_NBLOCKS_MAX  UINT32_MAX    /* the longest tombstone */

struct emap;                            /* opaque */

struct emap_ext {                       /* one extent; a plain value */
	uint64_t lblock;                /* first logical block */
	uint32_t nblocks;               /* >= 1 */
	uint32_t slot;                  /* first slot in chunk; 0 for a tombstone */
	uint64_t chunk;                 /* chunk id; 0 = tombstone */
	uint64_t tag;                   /* the caller's; equal tags may merge */
};

enum emap_kind {
	EMAP_UNMAPPED,                  /* a gap: no extent covers it */
	EMAP_ZERO,                      /* a tombstone */
	EMAP_DATA,
};

struct emap_run {                       /* one piece of a walk (emap_next) */
	uint64_t lblock;
	uint64_t nblocks;               /* a gap may be longer than 2^32 */
	enum emap_kind kind;
	uint64_t chunk;                 /* EMAP_DATA: chunk and slot of lblock */
	uint32_t slot;
	uint64_t tag;                   /* mapped runs only */
};

/*
 * What an edit changed, for bmap.c to write the fewest row edits: the
 * extents (rows) that were in the map and are not any more, and the ones that
 * are now and were not before, each list sorted by lblock.  An extent the
 * edit left as it was is in neither list, even when it was in the range (a
 * put of what is already there has an empty diff).  Applying it: the old
 * extents minus removed[] plus added[] are the new extents.  As rows keyed
 * by (node, lblock): a removed and an added extent with the same lblock are
 * one UPDATE (a right trim or a merge into the left neighbour keeps the key);
 * else DELETE each removed, INSERT each added.  A put adds at most 3 (left
 * remainder, the run merged with its neighbours, right remainder), a delete
 * at most 2; removed[] is as long as what the range covered.
 * Initialize with EMAP_DIFF_INIT; each call that takes one refills it.
 */
struct emap_diff {
	struct emap_ext *removed;
	size_t nremoved;
	struct emap_ext *added;
	size_t nadded;
	size_t removed_cap, added_cap;  /* private */
};
#define EMAP_DIFF_INIT { 0 }

void emap_diff_free(struct emap_diff *d);       /* the arrays; d may be reused */

/*
 * A new empty map whose data extents have slot + nblocks <= max_slots
 * (CHUNK_NSLOTS(block_size) of vsnapfs/chunk.h).  NULL if out of memory or
 * max_slots is 0.
 */
struct emap *emap_new(uint32_t max_slots);
void emap_free(struct emap *m);                 /* NULL is fine */

/* The number of extents (rows), and the blocks of the data extents
 * (st_blocks; tombstones not counted).  O(1). */
uint64_t emap_count(const struct emap *m);
uint64_t emap_data_blocks(const struct emap *m);
/* Bytes of memory the map holds (what a cache charges for it).  O(1). */
size_t emap_mem_bytes(const struct emap *m);

/* The extent covering block b: true and *out filled (the whole extent,
 * not clipped), or false when b is unmapped. */
bool emap_lookup(const struct emap *m, uint64_t b, struct emap_ext *out);

/*
 * One step of a walk over [pos, hi): the run that starts at pos, clipped to
 * hi: the extent covering pos from pos on (slot advanced to pos), or the gap
 * up to the next extent.  Returns its length, 0 when pos >= hi.  A whole walk:
 *
 *     for (uint64_t b = lo; b < hi; b += r.nblocks)
 *             emap_next(m, b, hi, &r);
 *
 * Two extents that touch are two runs.  Stateless: the map may change
 * between steps.
 */
uint64_t emap_next(const struct emap *m, uint64_t pos, uint64_t hi, struct emap_run *out);

/*
 * Map [e->lblock, e->lblock + e->nblocks) as *e says (data, or a tombstone
 * when e->chunk is 0; a tombstone's slot is ignored and stored as 0).  What
 * the range covered is split, trimmed or removed; the run merges with its
 * left and right neighbours when mergeable (see above).  -EINVAL when
 * nblocks is 0, the run ends past EMAP_LBLOCK_LIMIT, or a data run does not
 * fit its chunk (slot + nblocks > max_slots).  diff: NULL, or filled.
 */
int emap_put(struct emap *m, const struct emap_ext *e, struct emap_diff *diff);

/* Unmap [lo, hi) (gaps, not tombstones), splitting what straddles either end.
 * -EINVAL unless lo <= hi <= EMAP_LBLOCK_LIMIT; lo == hi does nothing. */
int emap_delete(struct emap *m, uint64_t lo, uint64_t hi, struct emap_diff *diff);

/* Unmap every block >= b: the extent across b is trimmed.  -EINVAL when
 * b > EMAP_LBLOCK_LIMIT. */
int emap_truncate(struct emap *m, uint64_t b, struct emap_diff *diff);

/*
 * Keep only [lo, hi): unmap everything outside it (what a page load does to
 * an ancestor's extents: its own window, and the inherit limit along the
 * chain as hi).  -EINVAL unless lo <= hi <= EMAP_LBLOCK_LIMIT; never
 * -ENOMEM (clipping never adds an extent).
 */
int emap_clip(struct emap *m, uint64_t lo, uint64_t hi);

/*
 * Fill the gaps of dst inside [lo, hi) with what src maps there (data and
 * tombstones, tags as they are in src); blocks dst maps stay as they are.
 * A page folds its chain in this way: the node's own extents first, then
 * each ancestor's, nearest first, each clipped to its inherit limit.  src is
 * not changed and must not be dst.  -EINVAL unless lo <= hi <=
 * EMAP_LBLOCK_LIMIT, or when the maps' max_slots differ.
 */
int emap_overlay(struct emap *dst, const struct emap *src, uint64_t lo, uint64_t hi);

/*
 * Check every invariant of the canonical form and of the structure inside.
 * NULL when all hold, else a sentence naming the first that does not (in a
 * buffer of the calling thread, valid until its next call).  O(n).
 */
const char *emap_check(const struct emap *m);

/*
 * Test hook: leaves of leaf_max extents (a power of two, 8 to 256; 256 by
 * default), so that splits and merges of leaves happen with few extents.
 * Only on an empty map; -EINVAL otherwise.
 */
int emap_set_leaf_max(struct emap *m, uint32_t leaf_max);

/*
 * Test hook: the allocation after the next `after` ones fails with -ENOMEM,
 * once; -1 (the default) turns it off.  Process-wide, not thread safe.
 */
void emap_fail_alloc_after(long after);

#endif
