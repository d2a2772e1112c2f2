/*
 * volume I/O: a byte range of a volume onto whole blocks.
 *
 * A request is split into a head (partial first block), a body of whole
 * blocks and a tail (partial last block).  The body goes to the chunk store
 * straight from the caller's buffer, in runs of consecutive non-zero blocks;
 * an all-zero block is not stored at all.  Head and tail are read, merged
 * and written again (read-modify-write).
 *
 * THE RULES THAT MAKE IT DURABLE (also in docs/design.md)
 *  1. Block data is appended to a chunk and never modified in place; a
 *     write only ever adds a new block and repoints the map.
 *  2. The index row pointing at a block is committed only after a
 *     chunk_sync() that started after the block's append returned
 *     (vol_collect() then chunk_sync() then vol_batch_apply() and commit; the
 *     caller, src/ns/flush.c, keeps that order).  So a committed row never
 *     points at data that a crash could lose, and a block not yet committed
 *     reads, after a crash, as whatever the index held before: old or new,
 *     never garbage.
 *  3. A snapshot copies no data: it freezes the map node the volume was
 *     writing into and gives the volume a new, empty child node.
 *
 * THE MAP: A DELTA OVER CACHED PAGES (docs/design.md, D4, "Built (step 7b)")
 * What a block shows is, in this order:
 *   - its entry in v->delta, the vol's own bindings not yet committed to
 *     the index: dirty ones, and those of the batch being committed (a
 *     delta entry is always the vol's own; chunk 0 reads as zeros);
 *   - else its extent in the block's map page (vsnapfs/mcache.h), which
 *     holds the index's rows of the node and its ancestors folded together,
 *     own or inherited as the cache's generation says;
 *   - else a hole.
 * So memory is the delta (bounded by the flush interval) plus the pages,
 * which the store-wide cache keeps under -o map_cache.  Nothing is loaded
 * at open: a page is read from the index when a request first touches it
 * (page_load), whatever the size of the volume.  A miss within LOAD_AHEAD
 * pages past the last batch read (a sequential reader) reads twice what
 * that batch wanted, up to LOAD_AHEAD and short of the next page resident,
 * in one walk of the chain (map read-ahead, load_ahead): a node's rows for
 * all of them in one query.
 *
 * INVARIANTS
 *  P1. A resident page equals "index + delta" for its blocks: every change
 *      of the delta edits the resident page too (write-through, wt_*),
 *      under v->lock held for writing, which also serialises page inserts
 *      of this vol (page_load calls mcache_load_end under it).
 *  P2. A page load reads the index without any vol lock, then, under
 *      v->lock for writing, overlays the delta and inserts, unless the
 *      delta lost entries meanwhile (v->pruned moved: a commit's
 *      vol_batch_done dropped bindings the read may not have seen), or v's
 *      node changed (v->epoch), or the cache invalidated the ticket
 *      (snapshot, drop_view, GC's drop_chunks).  Then it reads again, at
 *      most LOAD_TRIES times; then the window's pages are read holding the
 *      load lock and v->lock (nothing of v can move), and a page the cache
 *      still refuses serves that one locked section without being
 *      inserted (lock_pages_held): every request ends.
 *  P3. Own rows at or past v->trunc_pend and inherited ones at or past
 *      v->inherit are not shown: a truncate drops them from the delta and
 *      the pages at once, and from the index only at its commit.
 *  P4. The delta never names a chunk GC moves blocks out of: GC's barrier
 *      commits every write started before its floor F, vol_batch_done then
 *      drops those entries, and later writes append at or past F, above
 *      every victim (src/ns/gc.c).  So GC drops pages, not delta entries.
 *
 * Whether an own zero must stay as a tombstone row is decided from the node
 * alone: it has a parent and the block is below its inherit limit
 * (may_inherit).  Asking whether the nearest ancestor holds data at that
 * block is not safe: a background merge can move an ancestor's tombstone
 * into this node, this volume then overwrites that row, and deleting it
 * later would uncover an older ancestor's data.
 *
 * CONCURRENCY
 * v->lock (a rwlock) protects every field marked (L).  Readers copy the
 * locations they need under the read lock, with the pages of the window
 * pinned, and do their I/O without it.  Writers append data without the
 * lock and take the write lock only to repoint.  A read-modify-write
 * remembers which block it merged into and, under the write lock, repoints
 * only if the block still shows it; otherwise another write won the race
 * and it starts over, so two partial writes into one block never lose each
 * other's bytes.  A page load takes the load lock (ix->load_mu) and then
 * v->lock: the load lock ranks after vol.gate and before vol.lock
 * (vsnapfs/lock.h), so a change loads pages holding its gate.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vol/vmap.h"
#include "vsnapfs/array.h"
#include "vsnapfs/log.h"
#include "vsnapfs/mcache.h"
#include "vsnapfs/vol.h"

#define NO_TRUNC   VOL_NO_TRUNC
#define WIN_BYTES  (1u << 20)           /* blocks handled per step of a long request */
#define LABEL_MAX  128
#define PB         MCACHE_PAGE_BLOCKS
#define PSHIFT     MCACHE_PAGE_SHIFT
/* pages one window of a request touches, at most */
#define PINS_MAX   ((WIN_BYTES / CHUNK_BLOCK_MIN + PB - 1) / PB + 1)
/* page loads that lose a race (P2) before the pages are built holding
 * v->lock (lock_pages_held), which needs no more */
#define LOAD_TRIES 4
#define LOAD_AHEAD 16                   /* most pages one page_load reads (map read-ahead) */

static atomic_uint_fast64_t next_view = 1;      /* view ids: one per vol, never reused */

struct vol {
	struct chunk_store *cs;         /* borrowed; constant */
	uint32_t bs;                    /* block size; constant */
	unsigned bshift;                /* log2(bs); constant */
	bool readonly;                  /* constant */
	uint64_t view;                  /* its pages' view id in mc; constant */

	/* Held shared by every change (write, truncate, punch) for its whole
	 * length, exclusive by a snapshot: so a snapshot sees no change half
	 * done.  Writer-preferring, so a stream of writes cannot starve it. */
	struct lock_rw gate;

	struct bmap *bm;                /* given to vol_open; loads without ix */
	const struct vol_index *ix;     /* the caller's, or NULL: see vol_set_index */
	struct mcache *mc;              /* ix->mc, or own_mc; set before use */
	struct mcache *own_mc;          /* without vol_set_index: a cache of its own */
	struct lock_mutex own_load_mu;  /* without a load_mu: serializes loads from bm */
	/* map read-ahead (load_ahead): the last batch of pages a load read,
	 * [ra_first, ra_end), and how many it wanted (0: none to go on from) */
	uint64_t ra_first, ra_end;      /* (load lock) */
	unsigned ra_pages;              /* (load lock) */
	uint64_t ra_batch;              /* (load lock) batches recorded, the last one's number */
	uint64_t ra_inserted;           /* (L) the last batch whose insert section has run */

	struct lock_rw lock;
	char label[LABEL_MAX];          /* (L) */
	struct vmap *delta;             /* (L) bindings not yet committed */
	uint64_t size;                  /* (L) bytes */
	uint64_t node;                  /* (L) node that own entries belong to */
	uint64_t inherit;               /* (L) node's inherit limit, blocks */
	bool has_parent;                /* (L) node has a parent (or may have) */
	bool inherit_changed;           /* (L) not yet collected */
	bool size_changed;              /* (L) not yet collected */
	uint64_t own_blocks;            /* (L) blocks of its node holding data */
	uint64_t refs;                  /* (L) blocks it shows with data, own or inherited;
					 * !refs_known: those below refs_upto */
	bool refs_known;                /* (L) refs is the count (else the index had none) */
	uint64_t refs_upto;             /* (L) !refs_known: counted so far (vol_refs_count_step) */
	bool refs_unsaved;              /* (L) a count made here and not collected yet */
	uint64_t *dirty;                /* (L) lblocks with VE_DIRTY, each once */
	size_t ndirty, dirty_cap;       /* (L) */
	uint64_t trunc_from;            /* (L) delete own rows >= this at flush */
	uint64_t trunc_pend;            /* (L) own rows >= this are gone, committed or not */
	uint64_t coll_seq;              /* (L) vol_collect() calls so far: vol_batch.seq */
	struct tq { uint64_t seq, from; } *tq;  /* (L) truncations collected, not yet done,
						 * in collection order */
	size_t ntq, tq_cap;             /* (L) */
	uint64_t epoch;                 /* (L) moves when node, parent or pages change */
	uint64_t pruned;                /* (L) moves when the delta drops committed entries */
};

/* ---- small helpers ------------------------------------------------------ */

/* Block lblock showed data (was) and now shows data or not (now).  Never
 * below 0: a count that missed blocks must not wrap.  Without a count, only
 * the part counted so far moves.  Assumes v->lock for writing. */
static void refs_move(struct vol *v, uint64_t lblock, bool was, bool now)
{
	if (!v->refs_known && lblock >= v->refs_upto)
		return;
	if (now && !was)
		v->refs++;
	else if (was && !now && v->refs)
		v->refs--;
}

static bool is_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	return p[0] == 0 && memcmp(p, p + 1, len - 1) == 0;
}

static uint64_t nblocks_of(const struct vol *v, uint64_t bytes)
{
	return (bytes + v->bs - 1) >> v->bshift;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/*
 * Could an ancestor show data at lblock, if v's node had no row for it?
 * Merges only ever lower the inherit limit or drop the parent, so this
 * can be stale only on the safe side.  Assumes v->lock.
 */
static bool may_inherit(const struct vol *v, uint64_t lblock)
{
	assert(lock_held(&v->lock));
	return v->has_parent && lblock < v->inherit;
}

/* Assumes v->lock is held for writing. */
static int mark_dirty(struct vol *v, uint64_t lblock, struct vmap_ent *e)
{
	assert(lock_rw_wrheld(&v->lock));
	if (ve_flags(e) & VE_DIRTY)
		return 0;
	if (ARRAY_RESERVE(v->dirty, v->dirty_cap, v->ndirty, 256))
		return -ENOMEM;
	v->dirty[v->ndirty++] = lblock;
	e->gf |= VE_DIRTY;
	return 0;
}

/* v's label, for a log line (vol_set_label may change it meanwhile). */
static void copy_label(struct vol *v, char label[LABEL_MAX])
{
	lock_rw_rdlock(&v->lock);
	memcpy(label, v->label, LABEL_MAX);
	lock_rw_unlock(&v->lock);
}

/* bad: what chunk_read() said of an -EBADMSG. */
static void log_bad_block(struct vol *v, uint64_t lblock, const struct chunk_loc *loc, int rc,
			  const struct chunk_bad *bad)
{
	char label[LABEL_MAX], why[96];

	copy_label(v, label);
	if (rc == -EBADMSG)
		chunk_bad_str(bad, lblock, why, sizeof(why));
	else    /* which error: a short read, a bad header, the device's */
		snprintf(why, sizeof(why), " (%s)", strerror(-rc));
	vlog_at(LOG_ERR, &(struct log_where){ .volume = label, .offset = lblock << v->bshift,
		.has_offset = true, .chunk = loc->chunk_id, .slot = loc->slot, .has_chunk = true },
	     "%s: offset %" PRIu64 ": block in chunk %016" PRIx64 " slot %u %s%s",
	     label, lblock << v->bshift, loc->chunk_id, loc->slot,
	     rc == -EBADMSG ? "fails verification: " : rc == -ENOENT ? "is in a missing chunk file" :
	     "cannot be read", rc != -ENOENT ? why : "");
}

/* ---- reading the index -------------------------------------------------- */

/* The handle pages are read from, under the load lock (if any). */
static struct bmap *load_bm(const struct vol *v)
{
	return v->ix && v->ix->load ? v->ix->load : v->bm;
}

static struct lock_mutex *load_mu(struct vol *v)
{
	return v->ix && v->ix->load_mu ? v->ix->load_mu : &v->own_load_mu;
}

static void load_lock(struct vol *v)
{
	lock_mutex_lock(load_mu(v));
}

static void load_unlock(struct vol *v)
{
	lock_mutex_unlock(load_mu(v));
}

/* One read transaction on the load handle, so that several reads see one
 * state of the index (a merge or a checkpoint committing meanwhile is seen
 * by all of them or by none).  Without ix->load, the handle is bm and the
 * caller's, read as it is.  Assumes the load lock. */
static int index_begin(struct vol *v)
{
	return v->ix && v->ix->load ? bmap_snapshot_begin(v->ix->load) : 0;
}

static void index_end(struct vol *v)
{
	if (v->ix && v->ix->load)
		bmap_snapshot_end(v->ix->load);
}

/* One page being built from the index: a block each, then packed. */
struct pbuild {
	uint64_t lo;                    /* first block of the page */
	uint32_t nset;                  /* blocks decided: at PB, the ancestors further up are not read */
	struct pblk {
		uint64_t chunk;
		uint32_t slot;
		uint8_t set, own;       /* set: some node decided this block */
	} b[PB];
};

/* Pages pb[0..n) of consecutive page numbers, read together: each node of
 * the chain in one query over those of them that may still change. */
struct page_read {
	struct bmap *bm;
	struct pbuild *pb;
	unsigned first, last;           /* pages [first, last) may still change */
	uint64_t below;                 /* clip: blocks at or past it are not wanted */
	bool own;                       /* extents of the node itself, else an ancestor's */
};

static int pbuild_ext(void *ctx, const struct bmap_ext *x)
{
	struct page_read *pr = ctx;
	uint64_t lo = pr->pb[0].lo;

	for (uint32_t i = 0; i < x->nblocks && x->lblock + i < pr->below; i++) {
		uint64_t at = x->lblock + i - lo;
		struct pbuild *pb = &pr->pb[at >> PSHIFT];
		struct pblk *k = &pb->b[at & (PB - 1)];

		if (k->set)
			continue;       /* a nearer node decided this block */
		k->set = 1;
		k->own = pr->own;
		k->chunk = x->chunk;
		k->slot = x->chunk ? x->slot + i : 0;
		pb->nset++;
	}
	return 0;
}

/* Whether nodes whose inherit limit is at most limit may still decide a
 * block of pb: one below limit that no nearer node decided. */
static bool page_open(const struct pbuild *pb, uint64_t limit)
{
	if (pb->nset == PB || pb->lo >= limit)
		return false;
	if (pb->lo + PB <= limit)
		return true;
	for (uint64_t b = pb->lo; b < limit; b++)
		if (!pb->b[b - pb->lo].set)
			return true;
	return false;
}

/* Drop from [first, last) the pages at its ends that nodes limited to
 * limit cannot change; true when none is left. */
static bool pages_done(struct page_read *pr, uint64_t limit)
{
	while (pr->first < pr->last && !page_open(&pr->pb[pr->first], limit))
		pr->first++;
	while (pr->last > pr->first && !page_open(&pr->pb[pr->last - 1], limit))
		pr->last--;
	return pr->first == pr->last;
}

/* The chain of node as the index says now, nearest first: fn(ctx, id,
 * limit, own) for the node (limit: none) and each ancestor (limit: the
 * running inherit limit, also clipped to inherit); a positive fn result
 * stops the walk and is returned.  Assumes the load lock. */
static int chain_walk(struct bmap *bm, uint64_t node, uint64_t inherit, struct bmap_node *top,
		      int (*fn)(void *ctx, uint64_t id, uint64_t limit, bool own), void *ctx)
{
	struct bmap_node n;
	uint64_t limit, depth = 0;
	int rc;

	rc = bmap_node_get(bm, node, &n);
	if (rc)
		return rc;
	if (top)
		*top = n;
	rc = fn(ctx, node, BMAP_LBLOCK_LIMIT, true);
	limit = min_u64(n.inherit, inherit);
	while (!rc && n.parent && limit) {
		uint64_t id = n.parent;

		if (++depth > (1u << 24)) {
			vlog(LOG_ERR, "node %" PRIu64 ": ancestor chain loops", node);
			return -EUCLEAN;
		}
		rc = bmap_node_get(bm, id, &n);
		if (!rc)
			rc = fn(ctx, id, limit, false);
		limit = min_u64(limit, n.inherit);
	}
	return rc;
}

/* One node of the chain (limits only fall going up it): its rows over the
 * pages that may still change.  Stops the walk once none may: every block
 * decided by a nearer node (pages the volume rewrote whole: what the
 * ancestors hold there is hidden) or past the limit. */
static int page_read_node(void *ctx, uint64_t id, uint64_t limit, bool own)
{
	struct page_read *pr = ctx;
	uint64_t lo;
	int rc;

	if (pages_done(pr, limit))
		return 1;
	lo = pr->pb[pr->first].lo;
	pr->own = own;
	pr->below = min_u64(pr->pb[pr->last - 1].lo + PB, limit);
	rc = bmap_ext_range(pr->bm, id, lo, pr->below, pbuild_ext, pr);
	return rc ? rc : pages_done(pr, limit);
}

/*
 * Step 2 of mcache.h's loading protocol: pages pageno .. pageno + n - 1 of
 * node, into pb[0..n), from the index as one read transaction sees it (a
 * merge moving rows between two nodes of the chain meanwhile is seen
 * before or after, not half).  Inherited blocks are clipped by the limits
 * this read saw, so what it shows is right whatever a merge did after it;
 * the tags (own or inherited) may not be, which vol_merged handles by
 * moving v->epoch.  Assumes the load lock.
 */
static int page_read(struct vol *v, uint64_t node, uint64_t inherit, uint64_t pageno,
		     struct pbuild *pb, unsigned n)
{
	struct page_read pr = { .bm = load_bm(v), .pb = pb, .last = n };
	int rc;

	memset(pb, 0, n * sizeof(*pb));
	for (unsigned i = 0; i < n; i++)
		pb[i].lo = (pageno + i) << PSHIFT;
	rc = index_begin(v);
	if (!rc) {
		rc = chain_walk(pr.bm, node, inherit, NULL, page_read_node, &pr);
		index_end(v);
	}
	return rc > 0 ? 0 : rc;
}

/* ---- pages ------------------------------------------------------------- */

/*
 * Step 3: under v->lock held for writing, what v shows in pb's page: own
 * rows clipped at trunc_pend, inherited ones at the inherit limit (P3), the
 * delta on top; packed into ext (sorted, disjoint).  Returns the count.
 */
static size_t page_build(struct vol *v, struct pbuild *pb, struct emap_ext *ext)
{
	uint64_t key = pb->lo;
	struct vmap_ent *e;
	size_t n = 0;

	assert(lock_rw_wrheld(&v->lock));
	for (uint32_t i = 0; i < PB; i++) {
		struct pblk *k = &pb->b[i];
		uint64_t lb = pb->lo + i;

		if (k->set && (k->own ? lb >= v->trunc_pend : !may_inherit(v, lb)))
			k->set = 0;
	}
	while ((e = vmap_next_below(v->delta, key, pb->lo + PB, &key))) {
		struct pblk *k = &pb->b[key - pb->lo];

		/* a pending delete reads as a gap, like the row it removes */
		k->set = e->chunk || (ve_flags(e) & VE_ANC);
		k->own = 1;
		k->chunk = e->chunk;
		k->slot = e->slot;
		key++;
	}
	for (uint32_t i = 0; i < PB; i++) {
		struct pblk *k = &pb->b[i];
		struct emap_ext *l = n ? &ext[n - 1] : NULL;
		uint64_t tag = k->own ? MCACHE_OWN : 0;

		if (!k->set)
			continue;
		if (l && l->lblock + l->nblocks == pb->lo + i && l->tag == tag &&
		    l->chunk == k->chunk && (!k->chunk || l->slot + l->nblocks == k->slot)) {
			l->nblocks++;
			continue;
		}
		ext[n++] = (struct emap_ext){ .lblock = pb->lo + i, .nblocks = 1, .chunk = k->chunk,
					      .slot = k->slot, .tag = tag };
	}
	return n;
}

/* Did v's node change since epoch was read?  A read of the index that
 * failed meanwhile (the old node deleted) is then done again. */
static bool epoch_moved(struct vol *v, uint64_t epoch)
{
	bool moved;

	lock_rw_rdlock(&v->lock);
	moved = v->epoch != epoch;
	lock_rw_unlock(&v->lock);
	return moved;
}

static void log_load_error(struct vol *v, uint64_t pageno, int rc)
{
	char label[LABEL_MAX];

	copy_label(v, label);
	vlog_at(LOG_ERR, &(struct log_where){ .volume = label,
		.offset = (pageno << PSHIFT) << v->bshift, .has_offset = true },
	     "%s: loading the block map at offset %" PRIu64 ": %s", label,
	     (pageno << PSHIFT) << v->bshift, log_strerror(rc));
}

/* What a miss is to read-ahead, against the last batch [ra_first, ra_end). */
enum ra_kind {
	RA_NEW,                         /* far from it: one page, and a new start */
	RA_FORWARD,                     /* within LOAD_AHEAD pages past its end: twice as many */
	RA_FILL,                        /* within LOAD_AHEAD pages before it, or inside it before
					 * its insert: a request in flight (several requests miss
					 * out of order); one page, the state unchanged */
	RA_AGAIN,                       /* inside it once inserted: evicted already; one page,
					 * and read-ahead starts again from one */
};

/*
 * How many pages a miss at pageno reads (map read-ahead), and what kind of
 * miss it is: 2, 4, 8, then LOAD_AHEAD pages for the misses of a sequential
 * reader, one for any other.  Never past the page holding the last block
 * of size bytes.  Assumes the load lock.
 */
static unsigned load_ahead(struct vol *v, uint64_t pageno, uint64_t size, uint64_t inserted,
			   enum ra_kind *kind)
{
	uint64_t pages = (nblocks_of(v, size) + PB - 1) >> PSHIFT, n = 1;

	*kind = RA_NEW;
	if (v->ra_pages && pageno >= v->ra_end && pageno < v->ra_end + LOAD_AHEAD) {
		*kind = RA_FORWARD;
		n = 2 * (uint64_t)v->ra_pages;
	} else if (v->ra_pages && pageno >= v->ra_first && pageno < v->ra_end) {
		/* before the batch's insert section ran: a request in
		 * flight waited for the load lock, nothing was evicted */
		*kind = inserted >= v->ra_batch ? RA_AGAIN : RA_FILL;
	} else if (v->ra_pages && pageno < v->ra_first && pageno + LOAD_AHEAD >= v->ra_first) {
		*kind = RA_FILL;
	}
	if (n > LOAD_AHEAD)
		n = LOAD_AHEAD;
	if (pageno + n > pages)
		n = pages > pageno ? pages - pageno : 1;
	return (unsigned)n;
}

/* A load of kind reads pages [pageno, pageno + got) of the want that
 * load_ahead() gave (fewer when a page after them was resident).  Returns
 * the number of the batch it records, which its insert section marks in
 * ra_inserted, or 0 when it records none. */
static uint64_t load_ahead_done(struct vol *v, uint64_t pageno, unsigned want, unsigned got,
				enum ra_kind kind)
{
	if (kind == RA_FILL)
		return 0;               /* the reader goes on past the last batch */
	if (kind == RA_AGAIN) {
		v->ra_pages = 0;        /* the cache keeps less than read-ahead reads */
		return 0;
	}
	v->ra_first = pageno;
	v->ra_end = pageno + got;
	v->ra_pages = want;
	return ++v->ra_batch;
}

/*
 * The page pageno of v, pinned (mcache.h's loading protocol, P2), read
 * from the index with no vol lock held, with the pages load_ahead() adds
 * after it up to the next one resident.  Call with no vol lock held.  -EAGAIN
 * after LOAD_TRIES lost races: the caller then builds its pages holding
 * the locks (lock_pages_held), which needs no more tries.  A page read
 * ahead that the cache refuses is let go: only pageno must get in.
 */
static int page_load(struct vol *v, uint64_t pageno, const struct mcache_page **out)
{
	struct pbuild *pb = malloc(LOAD_AHEAD * sizeof(*pb));
	struct emap_ext *ext = malloc(PB * sizeof(*ext));
	struct mcache_ticket t[LOAD_AHEAD];
	int rc = pb && ext ? -EAGAIN : -ENOMEM;

	*out = NULL;
	for (int tries = 0; rc == -EAGAIN && tries < LOAD_TRIES; tries++) {
		uint64_t node, inherit, epoch, pruned, size, inserted, batch = 0;
		enum ra_kind kind = RA_NEW;
		unsigned n, want;

		*out = mcache_get(v->mc, v->view, pageno, NULL);
		if (*out) {
			rc = 0;
			break;
		}
		load_lock(v);
		/* the ticket once the load lock is ours: what was invalidated
		 * while other loads held it does not make this one stale (and
		 * one of them may have loaded this page) */
		*out = mcache_get(v->mc, v->view, pageno, &t[0]);
		if (*out) {
			load_unlock(v);
			rc = 0;
			break;
		}
		lock_rw_rdlock(&v->lock);
		node = v->node;
		inherit = v->has_parent ? v->inherit : 0;
		epoch = v->epoch;
		pruned = v->pruned;
		size = v->size;
		inserted = v->ra_inserted;
		lock_rw_unlock(&v->lock);
		want = n = tries ? 1 : load_ahead(v, pageno, size, inserted, &kind);
		for (unsigned i = 1; i < n; i++) {
			const struct mcache_page *pg = mcache_get(v->mc, v->view, pageno + i, &t[i]);

			if (pg) {       /* read up to the next page resident */
				mcache_put(v->mc, pg);
				n = i;
			}
		}
		if (!tries)
			batch = load_ahead_done(v, pageno, want, n, kind);
		rc = page_read(v, node, inherit, pageno, pb, n);
		load_unlock(v);
		if (rc) {
			if (epoch_moved(v, epoch)) {
				rc = -EAGAIN;   /* its node went (revert, truncate to zero) */
				continue;
			}
			log_load_error(v, pageno, rc);
			break;
		}
		if (v->ix && v->ix->loaded)
			v->ix->loaded(v->ix->ctx);
		lock_rw_wrlock(&v->lock);
		if (v->ra_inserted < batch)
			v->ra_inserted = batch;
		if (v->epoch != epoch || v->pruned != pruned) {
			/* P2: the read may miss what the delta lost, or (a
			 * merge) tag as inherited rows that are now own */
			rc = -EAGAIN;
		} else {
			/* v->inherit is not taken from the index here: a merge
			 * that moved the rows this read saw as inherited into
			 * the node lowers it, and clipping at the lowered limit
			 * would drop them (vol_merged moves the epoch
			 * instead).  Only a truncate lowers it meanwhile, and
			 * its blocks must go (P3). */
			rc = mcache_load_end(v->mc, &t[0], ext, page_build(v, &pb[0], ext), out);
			for (unsigned i = 1; !rc && i < n; i++) {
				const struct mcache_page *pg = NULL;

				if (!mcache_load_end(v->mc, &t[i], ext, page_build(v, &pb[i], ext), &pg))
					mcache_put(v->mc, pg);
			}
		}
		lock_rw_unlock(&v->lock);
		if (rc && rc != -EAGAIN)
			log_load_error(v, pageno, rc);
	}
	free(pb);
	free(ext);
	return rc;
}

/* A page built from the index and the delta that the cache refused
 * (lock_pages_held): what v shows there while v->lock stays held. */
struct ppage {
	size_t n;
	struct emap_ext ext[];          /* sorted, disjoint, inside the page */
};

/* The pages of a window, pinned as they are in the cache under v->lock. */
struct pins {
	uint64_t first;                 /* page number of pg[0] */
	unsigned n;
	const struct mcache_page *pg[PINS_MAX];
	struct ppage *priv[PINS_MAX];   /* not NULL: page i, private (pg[i] is NULL) */
};

static void pins_put(struct vol *v, struct pins *p)
{
	for (unsigned i = 0; i < p->n; i++) {
		mcache_put(v->mc, p->pg[i]);
		free(p->priv[i]);
	}
	p->n = 0;
}

/* mcache_page_find() on page k of p, the cache's or a private one. */
static size_t pins_find(const struct pins *p, unsigned k, uint64_t lo, uint64_t hi,
			struct emap_ext *out, size_t max)
{
	const struct ppage *pp = p->priv[k];
	size_t a = 0, b, m = 0;

	assert(k < p->n);
	if (!pp)
		return mcache_page_find(p->pg[k], lo, hi, out, max);
	for (b = pp->n; a < b;) {       /* the first extent ending past lo */
		size_t mid = a + (b - a) / 2;

		if (pp->ext[mid].lblock + pp->ext[mid].nblocks <= lo)
			a = mid + 1;
		else
			b = mid;
	}
	for (; a < pp->n && pp->ext[a].lblock < hi; a++, m++) {
		struct emap_ext x = pp->ext[a];

		if (x.lblock < lo) {
			x.slot += x.chunk ? (uint32_t)(lo - x.lblock) : 0;
			x.nblocks -= (uint32_t)(lo - x.lblock);
			x.lblock = lo;
		}
		if (x.lblock + x.nblocks > hi)
			x.nblocks = (uint32_t)(hi - x.lblock);
		if (m < max)
			out[m] = x;
	}
	return m;
}

/*
 * lock_pages once loads keep losing races (P2): the missing pages of
 * [pfirst, plast] are read and inserted holding the load lock and v->lock
 * for writing, so that no commit, snapshot or merge of v comes in
 * between.  Only the cache can still refuse one (GC's drop_chunks, or
 * another view sharing the ticket's slot): that page is then kept in p,
 * private, and serves this locked section only (under v->lock it is index
 * + delta, as a resident page is; it goes at unlock_pages).  So a request
 * makes progress whatever GC does.  Returns with v->lock held for writing,
 * or on error with no lock.
 */
static int lock_pages_held(struct vol *v, uint64_t pfirst, uint64_t plast, struct pins *p)
{
	struct pbuild *pb = malloc(sizeof(*pb));
	struct emap_ext *ext = malloc(PB * sizeof(*ext));
	int rc = pb && ext ? 0 : -ENOMEM;

	p->first = pfirst;
	p->n = 0;
	load_lock(v);
	lock_rw_wrlock(&v->lock);
	for (uint64_t pn = pfirst; !rc && pn <= plast; pn++) {
		struct mcache_ticket t;
		const struct mcache_page *pg = mcache_get(v->mc, v->view, pn, &t);
		struct ppage *pp = NULL;
		size_t n = 0;

		if (!pg) {
			rc = page_read(v, v->node, v->has_parent ? v->inherit : 0, pn, pb, 1);
			if (!rc && v->ix && v->ix->loaded_held)
				v->ix->loaded_held(v->ix->ctx);
			if (!rc) {
				n = page_build(v, pb, ext);
				rc = mcache_load_end(v->mc, &t, ext, n, &pg);
			}
			if (rc == -EAGAIN) {
				pp = malloc(sizeof(*pp) + n * sizeof(*ext));
				rc = pp ? 0 : -ENOMEM;
			}
			if (pp) {
				pp->n = n;
				memcpy(pp->ext, ext, n * sizeof(*ext));
			}
			if (rc)
				log_load_error(v, pn, rc);
		}
		if (!rc) {
			p->priv[p->n] = pp;
			p->pg[p->n++] = pg;
		}
	}
	load_unlock(v);
	if (rc) {
		pins_put(v, p);
		lock_rw_unlock(&v->lock);
	}
	free(pb);
	free(ext);
	return rc;
}

/*
 * Take v->lock (for writing if wr) with the pages of [first, end) pinned
 * in p, as the cache holds them now: under the lock they cannot change
 * (P1), so they and the delta are what v shows.  Missing pages are loaded
 * first, with no vol lock held, and kept pinned until the lock is taken
 * with all of them.  Loads that keep losing races, or pages that keep
 * going (GC) before the lock is taken with them, end in lock_pages_held,
 * which takes v->lock for writing whatever wr.  On error no lock is held.
 */
static int lock_pages(struct vol *v, uint64_t first, uint64_t end, bool wr, struct pins *p)
{
	const struct mcache_page *hold[PINS_MAX] = { 0 };
	uint64_t pfirst = first >> PSHIFT, plast = (end - 1) >> PSHIFT;
	int rc = 0;

	assert(end > first && plast - pfirst < PINS_MAX);
	for (unsigned loads = 0;; loads++) {
		uint64_t miss = 0;
		const struct mcache_page *pg;

		if (wr)
			lock_rw_wrlock(&v->lock);
		else
			lock_rw_rdlock(&v->lock);
		p->first = pfirst;
		p->n = 0;
		for (uint64_t pn = pfirst; pn <= plast; pn++) {
			pg = mcache_get(v->mc, v->view, pn, NULL);
			if (!pg) {
				miss = pn;
				rc = -EAGAIN;
				break;
			}
			p->priv[p->n] = NULL;
			p->pg[p->n++] = pg;
		}
		if (!rc)
			break;
		pins_put(v, p);
		lock_rw_unlock(&v->lock);
		/* a load pins one more page: more loads than pages means that
		 * pinned pages were dropped meanwhile (GC) */
		rc = loads < PINS_MAX + LOAD_TRIES ? page_load(v, miss, &pg) : -EAGAIN;
		if (rc == -EAGAIN) {
			rc = lock_pages_held(v, pfirst, plast, p);
			break;
		}
		if (rc)
			break;
		mcache_put(v->mc, hold[miss - pfirst]);
		hold[miss - pfirst] = pg;
	}
	for (unsigned i = 0; i < PINS_MAX; i++)
		mcache_put(v->mc, hold[i]);
	return rc;
}

static void unlock_pages(struct vol *v, struct pins *p)
{
	pins_put(v, p);
	lock_rw_unlock(&v->lock);
}

/* What a block shows: the delta's entry, else the page's extent, else a
 * hole (chunk 0). */
struct bstate {
	uint64_t chunk;
	uint32_t slot;
	bool own;
};

/* Assumes v->lock, with p pinning lblock's page under it. */
static void state_of(struct vol *v, const struct pins *p, uint64_t lblock, struct bstate *s)
{
	struct vmap_ent *e = vmap_get(v->delta, lblock);
	struct emap_ext x;

	assert(lock_held(&v->lock));
	if (e) {
		*s = (struct bstate){ .chunk = e->chunk, .slot = e->slot, .own = true };
	} else if (pins_find(p, (unsigned)((lblock >> PSHIFT) - p->first), lblock, lblock + 1,
			     &x, 1)) {
		*s = (struct bstate){ .chunk = x.chunk, .slot = x.slot,
				      .own = (x.tag & MCACHE_OWN) != 0 };
	} else {
		*s = (struct bstate){ 0 };
	}
}

/* The map is keyed by lblock, and a block keeps its lblock for life (clones
 * share at the same offset, GC copies keep it): the key is the loc's
 * lblock. */
static struct chunk_loc state_loc(const struct bstate *s, uint64_t lblock)
{
	return (struct chunk_loc){ .chunk_id = s->chunk, .slot = s->slot, .lblock = lblock };
}

/* ---- write-through (P1) ------------------------------------------------ */

/* Consecutive block changes, edited into the resident pages as one run. */
enum { WT_NONE, WT_PUT, WT_DEL };

struct wt {
	unsigned op;                    /* WT_NONE, WT_PUT or WT_DEL */
	struct emap_ext x;
};

/* Assumes v->lock held for writing; call before letting it go. */
static void wt_flush(struct vol *v, struct wt *w)
{
	assert(lock_rw_wrheld(&v->lock));
	if (w->op == WT_PUT)
		mcache_update_put(v->mc, v->view, &w->x);
	else if (w->op == WT_DEL)
		mcache_update_delete(v->mc, v->view, w->x.lblock, w->x.lblock + w->x.nblocks);
	w->op = WT_NONE;
}

static void wt_add(struct vol *v, struct wt *w, uint64_t lblock, const struct chunk_loc *loc,
		   bool anc)
{
	unsigned op = loc->chunk_id || anc ? WT_PUT : WT_DEL;
	struct emap_ext *x = &w->x;

	if (w->op == op && lblock == x->lblock + x->nblocks && x->nblocks < UINT32_MAX &&
	    (op == WT_DEL || (x->chunk == loc->chunk_id &&
			      (!loc->chunk_id || x->slot + x->nblocks == loc->slot)))) {
		x->nblocks++;
		return;
	}
	wt_flush(v, w);
	w->op = op;
	*x = (struct emap_ext){ .lblock = lblock, .nblocks = 1, .chunk = loc->chunk_id,
				.slot = loc->chunk_id ? loc->slot : 0, .tag = MCACHE_OWN };
}

/*
 * Point lblock at loc (chunk_id 0: make it read as zeros).  Assumes v->lock
 * held for writing, with p pinning lblock's page; w collects the page edit
 * (the caller flushes it before letting the lock go).
 */
static int set_block(struct vol *v, const struct pins *p, uint64_t lblock,
		     const struct chunk_loc *loc, struct wt *w)
{
	struct vmap_ent *cur = vmap_get(v->delta, lblock);
	struct vmap_ent ne = { .chunk = loc->chunk_id, .slot = loc->slot };
	bool anc = may_inherit(v, lblock), was_dirty = cur && (ve_flags(cur) & VE_DIRTY), dec;
	struct bstate s;
	int rc;

	assert(lock_rw_wrheld(&v->lock));
	assert(!loc->chunk_id || loc->lblock == lblock);   /* the block's identity */
	state_of(v, p, lblock, &s);
	if (!loc->chunk_id && !s.chunk)
		return 0;               /* already reads as zeros */
	/* never below 0: a count that missed blocks (a merge's recount
	 * failed) must not wrap */
	dec = s.own && s.chunk && v->own_blocks;
	v->own_blocks -= dec;
	ne.gf = (anc ? VE_ANC : 0) | (was_dirty ? VE_DIRTY : 0);
	rc = vmap_put(v->delta, lblock, &ne);
	if (rc) {
		v->own_blocks += dec;
		return rc;
	}
	if (loc->chunk_id)
		v->own_blocks++;
	refs_move(v, lblock, s.chunk != 0, loc->chunk_id != 0);
	wt_add(v, w, lblock, loc, anc);
	return mark_dirty(v, lblock, vmap_get(v->delta, lblock));
}

/* ---- open / close ------------------------------------------------------- */

int vol_open(struct chunk_store *cs, struct bmap *bm, uint64_t node, uint64_t size,
	     bool readonly, const char *label, struct vol **out)
{
	struct vol *v;
	struct bmap_node n;
	uint32_t bs = bmap_block_size(bm);
	int rc;

	v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->cs = cs;
	v->bs = bs;
	v->bshift = __builtin_ctz(bs);
	v->readonly = readonly;
	v->view = atomic_fetch_add(&next_view, 1);
	v->node = node;
	v->size = size;
	v->trunc_from = NO_TRUNC;
	v->trunc_pend = NO_TRUNC;
	snprintf(v->label, sizeof(v->label), "%s", label);
	lock_rw_init(&v->lock, LOCK_VOL, "vol.lock", false);
	lock_rw_init(&v->gate, LOCK_VOL_GATE, "vol.gate", true);
	lock_mutex_init(&v->own_load_mu, LOCK_NS_LOAD, "vol.load_mu");
	v->bm = bm;
	v->delta = vmap_new();
	v->own_mc = mcache_new(MCACHE_DEFAULT_BYTES);
	v->mc = v->own_mc;
	if (!v->delta || !v->own_mc) {
		rc = -ENOMEM;
		goto fail;
	}
	/* nothing of the map is read here: pages load at first touch */
	rc = bmap_node_get(bm, node, &n);
	if (!rc)
		rc = bmap_node_blocks(bm, node, &v->own_blocks);
	if (!rc) {
		rc = bmap_refs_get(bm, node, &v->refs);
		v->refs_known = rc == 0;
		if (!v->refs_known)
			v->refs = 0;
		if (rc == -ENOENT)
			rc = 0;         /* not counted yet: st_blocks shows own blocks */
	}
	if (rc)
		goto fail;
	v->inherit = n.inherit;
	v->has_parent = n.parent != 0;
	*out = v;
	return 0;
fail:
	vol_close(v);
	return rc;
}

void vol_close(struct vol *v)
{
	if (!v)
		return;
	if (v->mc)
		mcache_drop_view(v->mc, v->view);
	mcache_free(v->own_mc);
	vmap_free(v->delta);
	free(v->dirty);
	free(v->tq);
	lock_rw_destroy(&v->lock);
	lock_rw_destroy(&v->gate);
	lock_mutex_destroy(&v->own_load_mu);
	free(v);
}

void vol_set_label(struct vol *v, const char *label)
{
	lock_rw_wrlock(&v->lock);
	snprintf(v->label, sizeof(v->label), "%s", label);
	lock_rw_unlock(&v->lock);
}

void vol_set_index(struct vol *v, const struct vol_index *ix)
{
	v->ix = ix;
	if (ix->mc) {
		mcache_drop_view(v->mc, v->view);
		mcache_free(v->own_mc);
		v->own_mc = NULL;
		v->mc = ix->mc;
	}
}

/* ---- read --------------------------------------------------------------- */

/* Length of the run of blocks in consecutive slots of one chunk that starts
 * at i (0 if block i has no data). */
static uint32_t run_at(const struct chunk_loc *locs, const bool *has, uint32_t i, uint32_t n)
{
	uint32_t run = 0;

	while (i + run < n && has[i + run] && locs[i + run].chunk_id == locs[i].chunk_id &&
	       locs[i + run].slot == locs[i].slot + run)
		run++;
	return run;
}

/*
 * What blocks [first, first + n) show: has[i], and locs[i] where it is set.
 * The pages' extents over the range (one search per page), then the
 * delta's entries on top: O(extents + entries), not a search per block.
 * Assumes v->lock, with p pinning the range's pages under it.
 */
static void window_locs(struct vol *v, const struct pins *p, uint64_t first, uint32_t n,
			struct chunk_loc *locs, bool *has)
{
	struct emap_ext ext[PB];
	uint64_t end = first + n, key = first;
	struct vmap_ent *e;

	assert(lock_held(&v->lock));
	memset(has, 0, n * sizeof(*has));
	for (unsigned k = 0; k < p->n; k++) {
		uint64_t lo = (p->first + k) << PSHIFT, hi = lo + PB;
		size_t m = pins_find(p, k, lo > first ? lo : first, hi < end ? hi : end, ext, PB);

		for (size_t j = 0; j < m; j++)
			for (uint32_t b = 0; ext[j].chunk && b < ext[j].nblocks; b++) {
				uint64_t i = ext[j].lblock + b - first;

				has[i] = true;
				locs[i] = (struct chunk_loc){ .chunk_id = ext[j].chunk,
							      .slot = ext[j].slot + b,
							      .lblock = ext[j].lblock + b };
			}
	}
	while ((e = vmap_next_below(v->delta, key, end, &key))) {
		uint64_t i = key - first;

		has[i] = e->chunk != 0;
		if (has[i])
			locs[i] = (struct chunk_loc){ .chunk_id = e->chunk, .slot = e->slot,
						      .lblock = key };
		key++;
	}
}

/* A failed read of block first + at of a window: logged, and what the
 * caller returns (-EIO for a bad or unreadable block). */
static int read_failed(struct vol *v, uint64_t first, uint32_t at, const struct chunk_loc *locs,
		       int rc, const struct chunk_bad *bad)
{
	if (rc == -EBADMSG)
		at += bad->index;
	log_bad_block(v, first + at, &locs[at], rc, bad);
	return rc == -ENOMEM ? rc : -EIO;
}

/*
 * Read blocks [first, first + n) of which the request wants bytes
 * [lo, lo + len) counted from the start of block first, into dst.  Runs of
 * whole blocks stored in consecutive slots are read with one call straight
 * into dst; partial blocks go through a bounce buffer.
 *
 * A window whose blocks lie in several runs (a volume with history, a
 * clone, a disk overwritten at random) would wait on the disk for each run
 * in turn when they are not cached.  So each run is first read only if it
 * is all in the page cache (chunk_read_cached: what a cached run costs is
 * its read alone); the runs that would wait are then asked for together
 * (chunk_prefetch), and read.  A window that is one run of whole blocks
 * (a random read of a block) is read at once: it has nothing to wait
 * beside, and the probe's preadv2 costs more than a pread.
 */
static int read_window(struct vol *v, uint64_t first, uint32_t n, uint32_t lo, size_t len,
		       uint8_t *dst, bool last_try)
{
	struct chunk_loc locs[WIN_BYTES / CHUNK_BLOCK_MIN];
	bool has[WIN_BYTES / CHUNK_BLOCK_MIN];
	struct { uint32_t i, run; } wait[WIN_BYTES / CHUNK_BLOCK_MIN];
	uint32_t nwait = 0;
	uint8_t *bounce = NULL;
	struct chunk_bad bad = { 0 };
	struct pins p;
	int rc = 0;

	assert(n <= WIN_BYTES / CHUNK_BLOCK_MIN);
	rc = lock_pages(v, first, first + n, false, &p);
	if (rc)
		return rc;
	window_locs(v, &p, first, n, locs, has);
	unlock_pages(v, &p);

	for (uint32_t i = 0; i < n;) {
		uint64_t bstart = (uint64_t)i << v->bshift;          /* window-relative */
		uint64_t from = bstart > lo ? bstart : lo;
		uint64_t to = bstart + v->bs < lo + len ? bstart + v->bs : lo + len;
		uint8_t *d = dst + (from - lo);
		uint32_t run = 1;

		if (!has[i]) {
			memset(d, 0, to - from);
			i++;
			continue;
		}
		bad.index = 0;
		if (from == bstart && to == bstart + v->bs) {
			/* whole blocks: consecutive slots of one chunk, up to the
			 * last whole block the request wants */
			run = run_at(locs, has, i, n);
			while (((uint64_t)(i + run) << v->bshift) > lo + len)
				run--;
			if (i == 0 && run == n)         /* the whole window */
				rc = chunk_read(v->cs, &locs[i], run, d, &bad);
			else
				rc = chunk_read_cached(v->cs, &locs[i], run, d, &bad);
			if (rc == -EAGAIN) {
				wait[nwait].i = i;
				wait[nwait++].run = run;
				rc = 0;
			}
		} else {
			if (!bounce && !(bounce = malloc(v->bs))) {
				rc = -ENOMEM;
				break;
			}
			rc = chunk_read(v->cs, &locs[i], 1, bounce, &bad);
			if (!rc)
				memcpy(d, bounce + (from - bstart), to - from);
		}
		if (rc == -ENOENT && !last_try)
			break;          /* the block moved and GC removed its chunk: look again */
		if (rc) {
			rc = read_failed(v, first, i, locs, rc, &bad);
			break;
		}
		i += run;
	}
	for (uint32_t k = 0; !rc && nwait > 1 && k < nwait; k++)
		chunk_prefetch(v->cs, &locs[wait[k].i], wait[k].run);
	for (uint32_t k = 0; !rc && k < nwait; k++) {
		uint32_t i = wait[k].i;

		bad.index = 0;
		rc = chunk_read(v->cs, &locs[i], wait[k].run, dst + (((uint64_t)i << v->bshift) - lo),
				&bad);
		if (rc == -ENOENT && !last_try)
			break;
		if (rc)
			rc = read_failed(v, first, i, locs, rc, &bad);
	}
	free(bounce);
	return rc;
}

ssize_t vol_read(struct vol *v, void *buf, size_t len, uint64_t off)
{
	uint64_t size, done = 0;
	int rc;

	lock_rw_rdlock(&v->lock);
	size = v->size;
	lock_rw_unlock(&v->lock);
	if (off >= size)
		return 0;
	if (len > size - off)
		len = size - off;
	while (done < len) {
		uint64_t pos = off + done;
		uint64_t first = pos >> v->bshift;
		uint32_t lo = pos & (v->bs - 1);
		size_t step = len - done;
		uint32_t n;

		if (step > WIN_BYTES - lo)
			step = WIN_BYTES - lo;
		n = (lo + step + v->bs - 1) >> v->bshift;
		rc = read_window(v, first, n, lo, step, (uint8_t *)buf + done, false);
		if (rc == -ENOENT)      /* GC dropped the pages naming it: look again */
			rc = read_window(v, first, n, lo, step, (uint8_t *)buf + done, true);
		if (rc)
			return rc;
		done += step;
	}
	return done;
}

/* ---- finding data without loading every page --------------------------- */

struct first_ext {
	uint64_t below;                 /* search [from, below) */
	uint64_t from;
	bool data_only;
	uint64_t found;                 /* the least start seen, or below */
	struct bmap *bm;
	uint64_t trunc_pend;
};

static int first_ext_cb(void *ctx, const struct bmap_ext *x)
{
	struct first_ext *fe = ctx;

	if (fe->data_only && !x->chunk)
		return 0;
	if (x->lblock < fe->found)
		fe->found = x->lblock;
	return 1;                       /* the first one in range is the least */
}

static int first_ext_node(void *ctx, uint64_t id, uint64_t limit, bool own)
{
	struct first_ext *fe = ctx;
	uint64_t hi = min_u64(fe->found, limit);
	int rc;

	if (own)
		hi = min_u64(hi, fe->trunc_pend);
	if (hi <= fe->from)
		return 0;
	rc = bmap_ext_range(fe->bm, id, fe->from, hi, first_ext_cb, fe);
	return rc > 0 ? 0 : rc;
}

/*
 * A lower bound for the first block >= from, below `below`, where v's
 * node or an ancestor has a row (data_only: a data row) as v sees them:
 * the least, over the chain, of each node's first extent past from,
 * clipped to the inherit limits.  below if none.  Takes the load lock and
 * v->lock, so the caller holds neither.  Cheap: one descent per node.
 */
static int index_next(struct vol *v, uint64_t from, uint64_t below, bool data_only,
		      uint64_t *out)
{
	struct first_ext fe = { .below = below, .from = from, .data_only = data_only,
				.bm = load_bm(v) };
	uint64_t node, inherit, epoch;
	int rc;

	*out = below;
	if (from >= below)
		return 0;
	do {
		fe.found = below;
		load_lock(v);
		lock_rw_rdlock(&v->lock);
		node = v->node;
		inherit = v->has_parent ? v->inherit : 0;
		fe.trunc_pend = v->trunc_pend;
		epoch = v->epoch;
		lock_rw_unlock(&v->lock);
		/* one read transaction: a merge deleting a node of the chain
		 * is seen before or after */
		rc = index_begin(v);
		if (!rc) {
			rc = chain_walk(fe.bm, node, inherit, NULL, first_ext_node, &fe);
			index_end(v);
		}
		load_unlock(v);
	} while (rc && epoch_moved(v, epoch));
	if (!rc)
		*out = fe.found;
	return rc;
}

/*
 * The first block in [from, end) holding data as v shows it, or end.  The
 * delta is looked at before the index: an entry committed and pruned in
 * between is in the index by then.  A candidate page is loaded and
 * scanned; a tombstone there may hide a parent's data, so the search goes
 * on from the page's end.  Call with no vol lock held.
 */
static int next_data(struct vol *v, uint64_t from, uint64_t end, uint64_t *out)
{
	int rc = 0;

	while (from < end) {
		uint64_t key = from, dc = end, ic, c, pend;
		struct vmap_ent *e;
		struct pins p;

		lock_rw_rdlock(&v->lock);
		while ((e = vmap_next_below(v->delta, key, end, &key)) && !e->chunk)
			key++;
		if (e && key < end)
			dc = key;
		lock_rw_unlock(&v->lock);
		rc = index_next(v, from, dc, true, &ic);
		if (rc)
			return rc;
		c = min_u64(dc, ic);
		if (c >= end)
			break;
		pend = min_u64(end, ((c >> PSHIFT) + 1) << PSHIFT);
		rc = lock_pages(v, c, pend, false, &p);
		if (rc)
			return rc;
		for (key = c; key < pend; key++) {
			struct bstate s;

			state_of(v, &p, key, &s);
			if (s.chunk)
				break;
		}
		unlock_pages(v, &p);
		if (key < pend) {
			*out = key;
			return 0;
		}
		from = pend;
	}
	*out = end;
	return rc;
}

/* ---- finding holes through the index ------------------------------------ */

/*
 * SEEK_HOLE folds what v shows from the layers that decide it, nearest
 * first: the delta, v's node (rows below trunc_pend), each ancestor (rows
 * below its running inherit limit), as a page load does, but over runs
 * rather than blocks and without building pages.  A block is data when the
 * first layer that has it holds data there; a tombstone, a pending delete
 * or no layer at all is a hole.  Each layer is read as runs: touching
 * extents that are all data, or all not, are one run, read with one range
 * scan of the index (a descent, then a step per row).  A sweep keeps one
 * run per layer (the one at or after the position), asks the index for a
 * layer's next run only when the position passed its current one and
 * only for layers down to the one that decides, and jumps to the end of
 * the deciding run or to where a nearer layer starts: its cost follows
 * the extents crossed up to the hole, and no page is loaded.
 *
 * A round reads the delta under v->lock, then the index in one read
 * transaction: a batch committed in between is in both, the same entries,
 * and what the round saw of the delta wins, as in next_data.  A round
 * holds the load lock, so it stops after HOLE_ROWS rows, and the delta is
 * copied up to HOLE_DELTA_RUNS runs or HOLE_DELTA_ENTRIES entries: its
 * horizon; the next round goes on from where it stopped.
 */
#define HOLE_ROWS          4096
#define HOLE_DELTA_RUNS    256
#define HOLE_DELTA_ENTRIES 65536

struct hrun {                           /* one layer's run: [lo, hi), data or not */
	uint64_t lo, hi;                /* UINT64_MAX, UINT64_MAX: none before the horizon */
	bool data;
};

struct hlayer {                         /* a node of the chain */
	uint64_t id;
	uint64_t below;                 /* rows at or past it are not shown */
	struct hrun cur;                /* at or after the position, while cur.hi > it */
	bool read;
};

struct hscan {
	struct bmap *bm;
	uint64_t trunc_pend;
	struct hlayer *l;               /* the chain, nearest first */
	size_t nl, lcap;
	struct hrun d[HOLE_DELTA_RUNS]; /* the delta's runs, up to the horizon */
	size_t nd, dk;                  /* how many; the first not behind the position */
	uint64_t rows;                  /* rows read this round */
	struct hrun run;                /* being read by hole_row */
};

static const struct hrun hrun_none = { UINT64_MAX, UINT64_MAX, false };

static int hole_layer(void *ctx, uint64_t id, uint64_t limit, bool own)
{
	struct hscan *hs = ctx;

	if (ARRAY_RESERVE(hs->l, hs->lcap, hs->nl, 16))
		return -ENOMEM;
	hs->l[hs->nl++] = (struct hlayer){ .id = id, .below = own ? hs->trunc_pend : limit };
	return 0;
}

static int hole_row(void *ctx, const struct bmap_ext *x)
{
	struct hscan *hs = ctx;
	struct hrun *r = &hs->run;
	bool data = x->chunk != 0;

	hs->rows++;
	if (r->lo == UINT64_MAX)
		*r = (struct hrun){ x->lblock, x->lblock + x->nblocks, data };
	else if (x->lblock == r->hi && data == r->data)
		r->hi = x->lblock + x->nblocks;
	else
		return 1;               /* the run ended */
	return hs->rows >= HOLE_ROWS;   /* the rest of it, next round */
}

/* Layer i's run at or after pos (0: the delta). */
static int hole_run(struct hscan *hs, size_t i, uint64_t pos, uint64_t horizon,
		    const struct hrun **out)
{
	struct hlayer *l;
	int rc;

	if (i == 0) {
		while (hs->dk < hs->nd && hs->d[hs->dk].hi <= pos)
			hs->dk++;
		*out = hs->dk < hs->nd ? &hs->d[hs->dk] : &hrun_none;
		return 0;
	}
	l = &hs->l[i - 1];
	*out = &l->cur;
	if (l->read && l->cur.hi > pos)
		return 0;
	hs->run = hrun_none;
	rc = bmap_ext_range(hs->bm, l->id, pos, min_u64(l->below, horizon), hole_row, hs);
	l->cur = hs->run;
	l->read = true;
	return rc > 0 ? 0 : rc;
}

/* From *pos to the horizon: *pos the first hole (*found), or where the
 * round stopped.  Assumes the load lock, inside index_begin(). */
static int hole_sweep(struct hscan *hs, uint64_t *pos, uint64_t horizon, bool *found)
{
	while (*pos < horizon && hs->rows < HOLE_ROWS) {
		const struct hrun *r = NULL, *near;
		uint64_t next;
		size_t i;
		int rc;

		for (i = 0; i <= hs->nl; i++) {
			rc = hole_run(hs, i, *pos, horizon, &r);
			if (rc)
				return rc;
			if (r->lo <= *pos)
				break;
		}
		if (i > hs->nl || !r->data) {
			*found = true;
			return 0;
		}
		/* data up to the run's end, or to where a nearer layer,
		 * whose runs are at hand already, says otherwise */
		next = r->hi;
		for (size_t j = 0; j < i; j++) {
			rc = hole_run(hs, j, *pos, horizon, &near);
			if (rc)
				return rc;
			next = min_u64(next, near->lo);
		}
		*pos = min_u64(next, horizon);
	}
	return 0;
}

/* One round of index_hole from *pos, moved only if it succeeds; *epoch:
 * v's when it began. */
static int hole_round(struct vol *v, struct hscan *hs, uint64_t *pos, uint64_t end, bool *found,
		      uint64_t *epoch)
{
	uint64_t node, inherit, key = *pos, horizon = end, seen = 0, at = *pos;
	struct vmap_ent *e;
	int rc;

	hs->bm = load_bm(v);
	hs->nl = hs->nd = hs->dk = 0;
	hs->rows = 0;
	load_lock(v);
	lock_rw_rdlock(&v->lock);
	node = v->node;
	inherit = v->has_parent ? v->inherit : 0;
	hs->trunc_pend = v->trunc_pend;
	*epoch = v->epoch;
	while ((e = vmap_next_below(v->delta, key, end, &key))) {
		bool data = e->chunk != 0;      /* a tombstone or a pending delete: a hole */
		struct hrun *last = hs->nd ? &hs->d[hs->nd - 1] : NULL;

		if (last && last->hi == key && last->data == data) {
			last->hi++;
		} else if (hs->nd == HOLE_DELTA_RUNS || seen == HOLE_DELTA_ENTRIES) {
			horizon = key;
			break;
		} else {
			hs->d[hs->nd++] = (struct hrun){ key, key + 1, data };
		}
		seen++;
		key++;
	}
	lock_rw_unlock(&v->lock);
	rc = index_begin(v);
	if (!rc) {
		rc = chain_walk(hs->bm, node, inherit, NULL, hole_layer, hs);
		if (!rc)
			rc = hole_sweep(hs, &at, horizon, found);
		index_end(v);
	}
	load_unlock(v);
	if (!rc)
		*pos = at;
	return rc;
}

/*
 * The first block in [from, end) that v shows as a hole (no data: a
 * tombstone, a pending delete or nothing), or end.  Call with no vol lock
 * held.  Loads no page.
 */
static int index_hole(struct vol *v, uint64_t from, uint64_t end, uint64_t *out)
{
	struct hscan *hs = calloc(1, sizeof(*hs));
	uint64_t pos = from, epoch;
	bool found = false;
	int rc = hs ? 0 : -ENOMEM;

	while (!rc && !found && pos < end) {
		rc = hole_round(v, hs, &pos, end, &found, &epoch);
		if (rc && epoch_moved(v, epoch))
			rc = 0;         /* its node went (revert, truncate to zero): again */
	}
	if (hs)
		free(hs->l);
	free(hs);
	*out = min_u64(pos, end);
	return rc;
}

/* ---- write -------------------------------------------------------------- */

/*
 * Write n bytes from src (NULL: zeros) at byte boff of block lblock, keeping
 * the rest of the block: read-modify-write, retried if another write
 * repointed the block in the meantime.
 */
static int rmw_block(struct vol *v, uint64_t lblock, uint32_t boff, const void *src, uint32_t n)
{
	uint8_t *blk = malloc(v->bs);
	int rc;

	if (!blk)
		return -ENOMEM;
	for (int gone = 0;;) {
		struct chunk_loc old = { 0 }, nl = { .lblock = lblock };
		struct chunk_bad bad = { 0 };
		struct wt w = { 0 };
		struct bstate s;
		struct pins p;
		bool same;

		rc = lock_pages(v, lblock, lblock + 1, false, &p);
		if (rc)
			break;
		state_of(v, &p, lblock, &s);
		if (s.chunk)
			old = state_loc(&s, lblock);
		unlock_pages(v, &p);

		if (old.chunk_id) {
			rc = chunk_read(v->cs, &old, 1, blk, &bad);
			if (rc == -ENOENT && !gone++)
				continue;       /* GC moved it and removed the chunk: look again */
			if (rc) {
				log_bad_block(v, lblock, &old, rc, &bad);
				rc = -EIO;
				break;
			}
		} else {
			memset(blk, 0, v->bs);
		}
		if (src)
			memcpy(blk + boff, src, n);
		else
			memset(blk + boff, 0, n);
		if (!is_zero(blk, v->bs)) {
			/* never written behind: a punch or truncate makes
			 * it with no space check, so it must be able to fail
			 * now (a partial write's goes the same way) */
			rc = chunk_append_now(v->cs, blk, 1, CHUNK_KIND_DATA, &nl);
			if (rc)
				break;
		}

		rc = lock_pages(v, lblock, lblock + 1, true, &p);
		if (rc)
			break;
		state_of(v, &p, lblock, &s);
		same = s.chunk ? s.chunk == old.chunk_id && s.slot == old.slot : old.chunk_id == 0;
		rc = same ? set_block(v, &p, lblock, &nl, &w) : 0;
		wt_flush(v, &w);
		unlock_pages(v, &p);
		if (same)
			break;
	}
	free(blk);
	return rc;
}

/* Write whole blocks [first, first + n) from src (NULL: zeros). */
static int write_blocks(struct vol *v, uint64_t first, uint32_t n, const uint8_t *src)
{
	struct chunk_loc locs[WIN_BYTES / CHUNK_BLOCK_MIN];
	struct wt w = { 0 };
	struct pins p;
	int rc = 0;

	assert(n <= WIN_BYTES / CHUNK_BLOCK_MIN);
	memset(locs, 0, n * sizeof(locs[0]));
	for (uint32_t i = 0; i < n; i++)
		locs[i].lblock = first + i;
	for (uint32_t i = 0; src && i < n;) {
		uint32_t run = 0;

		if (is_zero(src + ((uint64_t)i << v->bshift), v->bs)) {
			i++;
			continue;
		}
		while (i + run < n && !is_zero(src + ((uint64_t)(i + run) << v->bshift), v->bs))
			run++;
		rc = chunk_append(v->cs, src + ((uint64_t)i << v->bshift), run, CHUNK_KIND_DATA,
				  &locs[i]);
		if (rc)
			return rc;
		i += run;
	}
	/* the pages tell whether each block held own data (st_blocks) */
	rc = lock_pages(v, first, first + n, true, &p);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < n && !rc; i++)
		rc = set_block(v, &p, first + i, &locs[i], &w);
	wt_flush(v, &w);
	unlock_pages(v, &p);
	return rc;
}

/* Write len bytes of src (NULL: zeros) at off, without touching the size. */
static int write_range(struct vol *v, const uint8_t *src, uint64_t len, uint64_t off)
{
	uint64_t done = 0;
	int rc = 0;

	while (done < len && !rc) {
		uint64_t pos = off + done;
		uint64_t lblock = pos >> v->bshift;
		uint32_t boff = pos & (v->bs - 1);
		uint64_t step;

		if (boff || len - done < v->bs) {
			step = v->bs - boff < len - done ? v->bs - boff : len - done;
			rc = rmw_block(v, lblock, boff, src ? src + done : NULL, step);
		} else {
			uint64_t n = (len - done) >> v->bshift;
			uint64_t max = WIN_BYTES > v->bs ? WIN_BYTES >> v->bshift : 1;

			if (n > max)
				n = max;
			step = n << v->bshift;
			rc = write_blocks(v, lblock, n, src ? src + done : NULL);
		}
		done += step;
	}
	return rc;
}

ssize_t vol_write(struct vol *v, const void *buf, size_t len, uint64_t off)
{
	int rc;

	if (v->readonly)
		return -EROFS;
	if (off > VOL_MAX_BYTES || len > VOL_MAX_BYTES - off)
		return -EFBIG;
	if (len == 0)
		return 0;
	lock_rw_rdlock(&v->gate);
	rc = write_range(v, buf, len, off);
	lock_rw_wrlock(&v->lock);
	if (!rc && off + len > v->size) {
		v->size = off + len;
		v->size_changed = true;
	}
	lock_rw_unlock(&v->lock);
	lock_rw_unlock(&v->gate);
	return rc ? rc : (ssize_t)len;
}

/*
 * Make [first, end) read as zeros: only the pages where the delta or the
 * index has data are loaded (next_data), one at a time.
 */
static int zero_blocks(struct vol *v, uint64_t first, uint64_t end)
{
	static const struct chunk_loc zero;
	uint64_t key = first;
	int rc = 0;

	while (!rc && key < end) {
		uint64_t pend;
		struct wt w = { 0 };
		struct pins p;

		rc = next_data(v, key, end, &key);
		if (rc || key >= end)
			break;
		pend = min_u64(end, ((key >> PSHIFT) + 1) << PSHIFT);
		rc = lock_pages(v, key, pend, true, &p);
		if (rc)
			break;
		for (; key < pend && !rc; key++)
			rc = set_block(v, &p, key, &zero, &w);
		wt_flush(v, &w);
		unlock_pages(v, &p);
	}
	return rc;
}

static int punch(struct vol *v, uint64_t off, uint64_t len);

int vol_punch(struct vol *v, uint64_t off, uint64_t len)
{
	int rc;

	if (v->readonly)
		return -EROFS;
	lock_rw_rdlock(&v->gate);
	rc = punch(v, off, len);
	lock_rw_unlock(&v->gate);
	return rc;
}

static int punch(struct vol *v, uint64_t off, uint64_t len)
{
	uint64_t size, end, first, last;
	int rc = 0;

	lock_rw_rdlock(&v->lock);
	size = v->size;
	lock_rw_unlock(&v->lock);
	if (off >= size || len == 0)
		return 0;
	end = len > size - off ? size : off + len;
	/* whole blocks inside [off, end) */
	first = nblocks_of(v, off);
	last = end >> v->bshift;
	if (end == size)
		last = nblocks_of(v, end);      /* the tail past the size is zero anyway */
	if (first >= last)
		return write_range(v, NULL, end - off, off);
	if (off < first << v->bshift)
		rc = write_range(v, NULL, (first << v->bshift) - off, off);
	if (!rc && end > last << v->bshift)
		rc = write_range(v, NULL, end - (last << v->bshift), last << v->bshift);
	if (!rc)
		rc = zero_blocks(v, first, last);
	return rc;
}

static int truncate_to(struct vol *v, uint64_t size);

int vol_truncate(struct vol *v, uint64_t size)
{
	int rc;

	if (v->readonly)
		return -EROFS;
	if (size > VOL_MAX_BYTES)
		return -EFBIG;
	lock_rw_rdlock(&v->gate);
	rc = truncate_to(v, size);
	lock_rw_unlock(&v->gate);
	return rc;
}

/*
 * Data blocks of v's node in the index in [from, below): all of them (all,
 * may be NULL), and those of them under a delta entry (held, may be NULL),
 * which count from the delta instead.  One aggregate for all and one per
 * run of delta entries for held: O(delta entries in the range), not a call
 * per row.  Assumes the load lock and v->lock (so that no commit prunes
 * the delta meanwhile), inside index_begin().
 */
static int index_blocks(struct vol *v, uint64_t from, uint64_t below, uint64_t *all,
			uint64_t *held)
{
	struct bmap *bm = load_bm(v);
	uint64_t key = from, first, n;
	int rc = all ? bmap_ext_blocks(bm, v->node, from, below, all) : 0;

	assert(lock_held(&v->lock));
	if (held)
		*held = 0;
	while (!rc && held && key < below && vmap_next_below(v->delta, key, below, &key)) {
		for (first = key; key < below && vmap_get(v->delta, key); key++)
			;
		rc = bmap_ext_blocks(bm, v->node, first, key, &n);
		*held += n;
	}
	return rc;
}

struct gaps {                           /* ranges [lo, hi), in order */
	struct { uint64_t lo, hi; } *v;
	size_t n, cap;
};

static int gap_add(void *ctx, uint64_t lblock, uint64_t nblocks)
{
	struct gaps *g = ctx;

	if (ARRAY_RESERVE(g->v, g->cap, g->n, 16))
		return -ENOMEM;
	g->v[g->n].lo = lblock;
	g->v[g->n++].hi = lblock + nblocks;
	return 0;
}

static int data_run_add(void *ctx, const struct bmap_run *r)
{
	return r->data ? gap_add(ctx, r->lblock, r->nblocks) : 0;
}

/* Delta entries in [lo, hi).  Assumes v->lock. */
static uint64_t delta_in(struct vol *v, uint64_t lo, uint64_t hi)
{
	uint64_t n = 0, key = lo;

	while (vmap_next_below(v->delta, key, hi, &key)) {
		n++;
		key++;
	}
	return n;
}

#define SHOWN_WINDOW (1ull << 20)       /* blocks resolved at a time: memory bound */

/*
 * The blocks of [from, below) that v shows with data from its ancestors:
 * below its inherit limit and any truncation not yet applied, without a
 * row of its own node and without a delta entry (referenced blocks a
 * truncate takes away, or a count step counts).  A window at a time: the
 * gaps of its own rows (bmap_node_shown), what the parent's chain shows
 * there resolved once (bmap_node_content), the two walked together, the
 * delta's entries in each overlap taken off.  O(extents of the chain in
 * the range).  Assumes the load lock, v->lock for writing and
 * index_begin().
 */
static int inherited_data(struct vol *v, uint64_t from, uint64_t below, uint64_t *out)
{
	struct bmap *bm = load_bm(v);
	struct gaps g = { 0 }, d = { 0 };
	struct bmap_node n;
	int rc;

	assert(lock_rw_wrheld(&v->lock));
	*out = 0;
	below = min_u64(below, min_u64(v->inherit, v->trunc_pend));
	if (!v->has_parent || from >= below)
		return 0;
	rc = bmap_node_get(bm, v->node, &n);
	for (uint64_t w = from, wend; w < below && !rc; w = wend) {
		wend = min_u64(below, w + SHOWN_WINDOW);
		g.n = d.n = 0;
		rc = bmap_node_shown(bm, &n, w, wend, gap_add, &g);
		if (!rc && g.n)
			rc = bmap_node_content(bm, n.parent, g.v[0].lo, g.v[g.n - 1].hi,
					       data_run_add, &d);
		for (size_t i = 0, j = 0; !rc && i < g.n && j < d.n;) {
			uint64_t a = g.v[i].lo > d.v[j].lo ? g.v[i].lo : d.v[j].lo;
			uint64_t b = min_u64(g.v[i].hi, d.v[j].hi);

			if (a < b)
				*out += b - a - delta_in(v, a, b);
			if (g.v[i].hi < d.v[j].hi)
				i++;
			else
				j++;
		}
	}
	free(g.v);
	free(d.v);
	return rc;
}

static int truncate_to(struct vol *v, uint64_t size)
{
	uint64_t old, nb, key;
	struct vmap_ent *e;
	int rc = 0;

	lock_rw_rdlock(&v->lock);
	old = v->size;
	lock_rw_unlock(&v->lock);

	/* bytes past the new size in its last block must read as zeros if the
	 * volume grows again */
	if (size < old && (size & (v->bs - 1))) {
		uint64_t end = nblocks_of(v, size) << v->bshift;

		rc = write_range(v, NULL, (end < old ? end : old) - size, size);
		if (rc)
			return rc;
	}

	/* The index is read holding v->lock, so that no commit prunes the
	 * delta meanwhile: each block counts once, from the delta if it is
	 * there, else from its row: the rows' sum in one aggregate, less the
	 * rows under the delta's entries.  No page is loaded. */
	load_lock(v);
	lock_rw_wrlock(&v->lock);
	if (size < v->size) {
		uint64_t all = 0, held = 0, anc = 0;

		nb = nblocks_of(v, size);
		if (!v->refs_known && nb < v->refs_upto) {
			v->refs_upto = 0;       /* counted blocks cut: count again */
			v->refs = 0;
		}
		if (nb < v->trunc_pend && !(rc = index_begin(v))) {
			rc = index_blocks(v, nb, v->trunc_pend, &all, &held);
			if (!rc && v->refs_known)
				rc = inherited_data(v, nb, nblocks_of(v, v->size), &anc);
			index_end(v);
		}
		if (rc) {
			lock_rw_unlock(&v->lock);
			load_unlock(v);
			return rc;
		}
		key = nb;
		while ((e = vmap_next(v->delta, key, &key))) {
			if (e->chunk && v->own_blocks)
				v->own_blocks--;
			refs_move(v, key, e->chunk != 0, false);
			vmap_del(v->delta, key);
			key++;
		}
		all -= held < all ? held : all;
		v->own_blocks -= all < v->own_blocks ? all : v->own_blocks;
		all += anc;
		if (v->refs_known)
			v->refs -= all < v->refs ? all : v->refs;
		mcache_update_delete(v->mc, v->view, nb, BMAP_LBLOCK_LIMIT);
		if (nb < v->trunc_from)
			v->trunc_from = nb;
		if (nb < v->trunc_pend)
			v->trunc_pend = nb;
		if (nb < v->inherit) {
			v->inherit = nb;
			v->inherit_changed = true;
		}
	}
	if (size != v->size) {
		v->size = size;
		v->size_changed = true;
	}
	lock_rw_unlock(&v->lock);
	load_unlock(v);
	return rc;
}

/*
 * The blocks of [lo, hi) v shows with data now: the delta's data entries,
 * its own data rows below any pending truncation that the delta does not
 * cover, and what it inherits there (inherited_data).  Assumes the load
 * lock, v->lock for writing and index_begin().
 */
static int shown_data(struct vol *v, uint64_t lo, uint64_t hi, uint64_t *out)
{
	uint64_t all = 0, held = 0, anc = 0, mine = 0, key = lo, below = min_u64(hi, v->trunc_pend);
	struct vmap_ent *e;
	int rc = 0;

	if (lo < below)
		rc = index_blocks(v, lo, below, &all, &held);
	if (!rc)
		rc = inherited_data(v, lo, hi, &anc);
	while (!rc && (e = vmap_next_below(v->delta, key, hi, &key))) {
		mine += e->chunk != 0;
		key++;
	}
	if (!rc)
		*out = all - min_u64(held, all) + anc + mine;
	return rc;
}

int vol_refs_count_step(struct vol *v, uint64_t max_blocks, bool *done)
{
	uint64_t end, hi, n = 0;
	int rc = 0;

	load_lock(v);
	lock_rw_wrlock(&v->lock);
	end = nblocks_of(v, v->size);
	if (!v->refs_known && v->refs_upto < end) {
		hi = v->refs_upto + min_u64(max_blocks, end - v->refs_upto);
		rc = index_begin(v);
		if (!rc) {
			rc = shown_data(v, v->refs_upto, hi, &n);
			index_end(v);
		}
		if (!rc) {
			v->refs += n;
			v->refs_upto = hi;
		}
	}
	if (!rc && !v->refs_known && v->refs_upto >= end) {
		v->refs_known = true;
		v->refs_unsaved = true;         /* the next flush writes it, changes or not */
	}
	*done = v->refs_known;
	lock_rw_unlock(&v->lock);
	load_unlock(v);
	return rc;
}

int vol_seek(struct vol *v, uint64_t off, int whence, uint64_t *out)
{
	uint64_t key = off >> v->bshift, nb, size, pos = 0;
	int rc = 0;

	lock_rw_rdlock(&v->lock);
	size = v->size;
	lock_rw_unlock(&v->lock);
	nb = nblocks_of(v, size);
	if (off >= size)
		return -ENXIO;
	if (whence == SEEK_DATA) {
		rc = next_data(v, key, nb, &key);
		if (!rc && key >= nb)
			rc = -ENXIO;
		pos = key << v->bshift;
	} else {
		rc = index_hole(v, key, nb, &key);
		pos = key << v->bshift;
		if (pos > size)
			pos = size;
	}
	if (!rc)
		*out = pos > off ? pos : off;
	return rc;
}

/* ---- state -------------------------------------------------------------- */

#define LOCKED_GET(v, expr) ({ __typeof__(expr) _x; \
	lock_rw_rdlock(&(v)->lock); _x = (expr); lock_rw_unlock(&(v)->lock); _x; })

uint64_t vol_size(struct vol *v) { return LOCKED_GET(v, v->size); }
uint64_t vol_node(struct vol *v) { return LOCKED_GET(v, v->node); }
uint64_t vol_own_blocks(struct vol *v) { return LOCKED_GET(v, v->own_blocks); }

uint64_t vol_ref_blocks(struct vol *v)
{
	return LOCKED_GET(v, v->refs_known ? v->refs : v->own_blocks);
}

bool vol_refs_known(struct vol *v) { return LOCKED_GET(v, v->refs_known); }

/* Has v changes vol_collect has not taken?  Assumes v->lock. */
static bool uncollected(const struct vol *v)
{
	assert(lock_held(&v->lock));
	return v->ndirty || v->size_changed || v->inherit_changed || v->trunc_from != NO_TRUNC;
}

bool vol_is_dirty(struct vol *v)
{
	/* a count made here is written like a change (but does not make a
	 * snapshot or a clone wait: vol_switch_node, vol_attach) */
	return LOCKED_GET(v, uncollected(v) || v->refs_unsaved);
}

/* ---- snapshots ---------------------------------------------------------- */

void vol_gate_close(struct vol *v)
{
	lock_rw_wrlock(&v->gate);
}

void vol_gate_open(struct vol *v)
{
	lock_rw_unlock(&v->gate);
}

/* Empty the delta.  Assumes v->lock held for writing. */
static void delta_clear(struct vol *v)
{
	struct vmap *empty = vmap_new();

	assert(lock_rw_wrheld(&v->lock));
	if (empty) {
		vmap_free(v->delta);
		v->delta = empty;
	} else {
		/* no memory for a new root: empty the old map in place */
		uint64_t key = 0;

		while (vmap_next(v->delta, key, &key))
			vmap_del(v->delta, key);
	}
	v->pruned++;
	v->trunc_pend = NO_TRUNC;
	v->ntq = 0;
}

/*
 * The caller committed everything collected (vol_switch_node, vol_attach),
 * and calls vol_batch_done() only later: drop the collected entries now,
 * their rows are in the index.  Assumes v->lock held for writing and
 * nothing uncollected.
 */
static void drop_committed(struct vol *v)
{
	assert(lock_rw_wrheld(&v->lock) && !uncollected(v));
	if (vmap_count(v->delta))
		delta_clear(v);
	v->ntq = 0;
	v->trunc_pend = NO_TRUNC;
}

int vol_switch_node(struct vol *v, uint64_t node, uint64_t inherit)
{
	int rc = 0;

	assert(lock_rw_wrheld(&v->gate));
	lock_rw_wrlock(&v->lock);
	if (uncollected(v)) {
		rc = -EBUSY;
	} else {
		drop_committed(v);
		/* every extent of its pages becomes inherited */
		mcache_bump_gen(v->mc, v->view);
		v->node = node;
		v->epoch++;
		v->inherit = inherit;
		v->has_parent = true;
		v->own_blocks = 0;
		v->trunc_pend = NO_TRUNC;
		v->ntq = 0;
	}
	lock_rw_unlock(&v->lock);
	return rc;
}

void vol_reset(struct vol *v, uint64_t node)
{
	assert(lock_rw_wrheld(&v->gate));
	lock_rw_wrlock(&v->lock);
	delta_clear(v);
	mcache_drop_view(v->mc, v->view);
	v->node = node;
	v->epoch++;
	v->inherit = 0;
	v->has_parent = false;
	v->own_blocks = 0;
	v->refs = 0;
	v->refs_known = true;
	v->refs_upto = 0;
	v->size = 0;
	v->ndirty = 0;
	v->trunc_from = NO_TRUNC;
	v->trunc_pend = NO_TRUNC;
	v->inherit_changed = false;
	v->size_changed = false;
	lock_rw_unlock(&v->lock);
}

int vol_attach(struct vol *v, uint64_t inherit, uint64_t size, const uint64_t *refs)
{
	int rc = 0;

	assert(lock_rw_wrheld(&v->gate));
	lock_rw_wrlock(&v->lock);
	if (uncollected(v)) {
		rc = -EBUSY;
	} else {
		drop_committed(v);
		/* the node's own rows stay (own_blocks too); what it
		 * inherits changed: its pages go */
		mcache_drop_view(v->mc, v->view);
		v->inherit = inherit;
		v->has_parent = true;
		v->size = size;
		v->refs_known = refs != NULL;
		v->refs = refs ? *refs : 0;
		v->refs_upto = 0;
		v->epoch++;
	}
	lock_rw_unlock(&v->lock);
	return rc;
}

/*
 * own_blocks counted again: the node's data rows in the index below
 * trunc_pend that the delta does not hold, plus the delta's data entries.
 * Assumes the load lock and v->lock held for writing (so that no commit
 * prunes the delta meanwhile; a batch committed and not yet pruned counts
 * once either way).  O(delta), plus the sum of the rows past trunc_pend.
 */
static int own_recount(struct vol *v, uint64_t *out)
{
	uint64_t all = 0, gone = 0, shadowed = 0, mine = 0, key = 0;
	struct vmap_ent *e;
	int rc;

	assert(lock_rw_wrheld(&v->lock));
	rc = index_begin(v);
	if (rc)
		return rc;
	rc = bmap_node_blocks(load_bm(v), v->node, &all);
	if (!rc && v->trunc_pend != NO_TRUNC)
		rc = index_blocks(v, v->trunc_pend, BMAP_LBLOCK_LIMIT, &gone, NULL);
	if (!rc)
		rc = index_blocks(v, 0, v->trunc_pend, NULL, &shadowed);
	index_end(v);
	while (!rc && (e = vmap_next(v->delta, key, &key))) {
		mine += e->chunk != 0;
		key++;
	}
	if (!rc && all < gone + shadowed)
		rc = -EUCLEAN;
	if (!rc)
		*out = all - gone - shadowed + mine;
	return rc;
}

void vol_merged(struct vol *v, uint64_t limit)
{
	uint64_t n;
	int rc;

	load_lock(v);
	lock_rw_wrlock(&v->lock);
	if (limit < v->inherit)
		v->inherit = limit;
	rc = own_recount(v, &n);
	if (!rc)
		v->own_blocks = n;
	else
		vlog(LOG_WARNING, "%s: counting its blocks after a merge: %s; its st_blocks may be "
		     "off until it is opened again", v->label, log_strerror(rc));
	/* pages tag the moved rows as inherited, and set_block would count
	 * a write over one as a new block: they load again.  A load in
	 * flight may have read them as inherited past the new limit, where
	 * page_build clips: it reads again */
	mcache_drop_view(v->mc, v->view);
	v->epoch++;
	lock_rw_unlock(&v->lock);
	load_unlock(v);
}

bool vol_maps_from(struct vol *v, uint64_t from)
{
	uint64_t key, ic;
	bool in_delta = LOCKED_GET(v, vmap_next(v->delta, from, &key) != NULL);

	/* any row, data or tombstone, of the node or an ancestor it sees */
	if (in_delta)
		return true;
	if (index_next(v, from, BMAP_LBLOCK_LIMIT, false, &ic))
		return true;            /* cannot tell: say yes, the caller copies */
	return ic < BMAP_LBLOCK_LIMIT;
}

/* ---- flushing ----------------------------------------------------------- */

static int batch_push(struct vol_batch *b, const struct vol_rec *r)
{
	if (ARRAY_RESERVE(b->recs, b->cap, b->nrecs, 256))
		return -ENOMEM;
	b->recs[b->nrecs++] = *r;
	return 0;
}

static int cmp_rec(const void *a, const void *b)
{
	const struct vol_rec *x = a, *y = b;

	return (x->lblock > y->lblock) - (x->lblock < y->lblock);
}

int vol_collect(struct vol *v, struct vol_batch *b)
{
	int rc = 0;

	b->nrecs = 0;
	lock_rw_wrlock(&v->lock);
	if (v->trunc_from != NO_TRUNC && ARRAY_RESERVE(v->tq, v->tq_cap, v->ntq, 4)) {
		lock_rw_unlock(&v->lock);
		return -ENOMEM;
	}
	b->v = v;
	b->seq = ++v->coll_seq;
	b->node = v->node;
	b->size = v->size;
	b->trunc_from = v->trunc_from;
	b->inherit = v->inherit;
	b->inherit_changed = v->inherit_changed;
	b->refs_known = v->refs_known;
	b->refs = v->refs;
	for (size_t i = 0; i < v->ndirty && !rc; i++) {
		struct vmap_ent *e = vmap_get(v->delta, v->dirty[i]);
		struct vol_rec r;

		if (!e || !(ve_flags(e) & VE_DIRTY))
			continue;       /* dropped by a truncate: trunc_from covers it */
		r.lblock = v->dirty[i];
		r.loc = (struct chunk_loc){ .chunk_id = e->chunk, .slot = e->slot,
					    .lblock = v->dirty[i] };
		r.anc = ve_flags(e) & VE_ANC;
		rc = batch_push(b, &r);
		if (!rc) {
			e->gf &= ~VE_DIRTY;
			ve_set_gen(e, b->seq);  /* which batch holds it (vol_batch_done) */
		}
	}
	if (rc) {
		/* give back what was taken; nothing is lost, the flush fails */
		for (size_t i = 0; i < b->nrecs; i++)
			vmap_get(v->delta, b->recs[i].lblock)->gf |= VE_DIRTY;
		b->nrecs = 0;
	} else {
		if (v->trunc_from != NO_TRUNC)
			v->tq[v->ntq++] = (struct tq){ .seq = b->seq, .from = v->trunc_from };
		v->ndirty = 0;
		v->trunc_from = NO_TRUNC;
		v->inherit_changed = false;
		v->size_changed = false;
		v->refs_unsaved = false;
	}
	lock_rw_unlock(&v->lock);
	/* in index order: the flush's upserts then walk the B-tree forwards,
	 * which puts rows faster than scattered (docs/performance.md, "Rows in
	 * index order") */
	if (b->nrecs > 1)
		qsort(b->recs, b->nrecs, sizeof(b->recs[0]), cmp_rec);
	return rc;
}

/* The lowest truncation not yet in the index: uncollected, or collected
 * in a batch not yet done.  Assumes v->lock. */
static uint64_t trunc_lowest(const struct vol *v)
{
	uint64_t t = v->trunc_from;

	for (size_t i = 0; i < v->ntq; i++)
		t = min_u64(t, v->tq[i].from);
	return t;
}

/* Forget the queued truncations of batches up to seq (done ones), or only
 * that of seq (one that failed and is given back).  Assumes v->lock. */
static void tq_drop(struct vol *v, uint64_t seq, bool only)
{
	size_t k = 0;

	for (size_t i = 0; i < v->ntq; i++)
		if (only ? v->tq[i].seq != seq : v->tq[i].seq > seq)
			v->tq[k++] = v->tq[i];
	v->ntq = k;
}

/*
 * Does delta entry e still hold what batch b took?  Not if it was written
 * again since (dirty, or taken by a later batch: its generation says
 * which).  Comparing contents would not do: zeros, data, zeros again give
 * equal records in two batches, and the older one's settling would drop
 * what the newer one, not yet in the index, holds.
 */
static bool holds_batch(const struct vmap_ent *e, const struct vol_batch *b)
{
	return !(ve_flags(e) & VE_DIRTY) && ve_gen(e) == (b->seq & VE_GEN_MASK);
}

void vol_batch_done(struct vol_batch *b, int rc)
{
	struct vol *v = b->v;
	bool same_node;

	if (!v)
		return;
	lock_rw_wrlock(&v->lock);
	/* a snapshot, a revert or a reset since: it dropped the delta */
	same_node = v->node == b->node;
	for (size_t i = 0; i < b->nrecs && same_node; i++) {
		const struct vol_rec *r = &b->recs[i];
		struct vmap_ent *e = vmap_get(v->delta, r->lblock);

		/* rewritten (or truncated) since: newer state wins, and the
		 * batch that took it drops it when it is done */
		if (!e || !holds_batch(e, b))
			continue;
		if (rc) {
			if (mark_dirty(v, r->lblock, e))
				vlog(LOG_CRIT, "%s: out of memory re-queueing a block", v->label);
		} else {
			vmap_del(v->delta, r->lblock);  /* the index has it now */
		}
	}
	if (rc) {
		tq_drop(v, b->seq, true);
		if (same_node) {
			if (b->trunc_from < v->trunc_from)
				v->trunc_from = b->trunc_from;
			v->inherit_changed |= b->inherit_changed;
			v->size_changed = true;
		}
	} else {
		/* loads that read the index before this commit miss what the
		 * delta just dropped (P2); the truncations of this batch and
		 * of earlier ones are in the index, later ones not yet */
		tq_drop(v, b->seq, false);
		v->pruned++;
		v->trunc_pend = trunc_lowest(v);
	}
	lock_rw_unlock(&v->lock);
}

void vol_batch_free(struct vol_batch *b)
{
	free(b->recs);
	memset(b, 0, sizeof(*b));
}
