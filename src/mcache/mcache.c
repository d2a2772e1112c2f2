/*
 * mcache: map pages of every view in one hash table and one LRU list under
 * one byte limit (docs/design.md, D4; the contract is include/vsnapfs/mcache.h).
 *
 * Shapes.  A page is one allocation: an 80-byte header and its extents
 * packed in 16 bytes each (offset in the page, length - 1, own bit, slot,
 * chunk), sorted.  A view record (one per view with at least one page)
 * holds the view's generation, the sequence number of its last
 * invalidation and the list of its pages.  Pages are never edited in
 * place: an update builds a copy (the extents in front of the edit, the
 * edit, the extents behind it, each merged into the one before when it
 * continues it: O(extents), and the same extents as a load's packing of
 * the page block by block) and swaps it in.  That is what lets
 * mcache_page_find() run without a lock on a pinned page.
 *
 * Invariants (mcache_check() asserts each one):
 *   M1  every page in the table is in its bucket once, in its view's list,
 *       and its view is in the view table; pins == 0 exactly for the pages
 *       of the LRU list; a page out of the table (dropped or replaced while
 *       pinned: an orphan) has pins > 0 and is counted in norphans;
 *   M2  a page's extents are sorted, disjoint, inside the page, not
 *       mergeable with their neighbour; min_chunk / max_chunk bound its
 *       data extents' chunks (UINT64_MAX / 0 when it has none);
 *   M3  a view's refs is the number of pages (in the table or orphans)
 *       pointing at it; a view in the table has refs > 0;
 *   M4  bytes is the sum of the charges of every page, orphan, view record
 *       and both bucket arrays; bytes <= limit, or the LRU list is empty;
 *   M5  inval_seq, chunk_seq and every gone_seq are <= seq.
 *
 * Tickets.  seq counts invalidations (drop_view, bump_gen, drop_chunks).
 * A miss records seq in the ticket.  At load_end the page is stale if its
 * view record says it was invalidated later (inval_seq > t.seq), or any
 * drop_chunks came later (chunk_seq > t.seq).  A view with no record (it
 * went away with its last page, or it was dropped, or it never had one)
 * is answered for by gone_seq[gone_slot(view)]: the greatest inval_seq of
 * a record that went away, and the seq of each invalidation of a view
 * without a record, of the views that share the slot.  So an
 * invalidation of one view makes stale the tickets of the few views that
 * share its slot, not those of every view without a record (which would
 * keep a volume that loads its first page loading again while others
 * close or snapshot).  A record made afresh starts from its slot's
 * gone_seq, for the same reason.
 *
 * Locks.  mu protects everything but what a page holds once published
 * (immutable) and a view's gen, which is written under mu and read without
 * it (atomic) by mcache_page_find().
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vsnapfs/lock.h"
#include "vsnapfs/mcache.h"

#define PB               MCACHE_PAGE_BLOCKS
#define BUCKETS_MIN      64
#define ENT_OWN          1u
#define GONE_SLOTS       256            /* gone_seq: views without a record, hashed */

struct ent {                            /* one extent of a page, packed */
	uint8_t off;                    /* first block, in the page */
	uint8_t len_m1;                 /* nblocks - 1 */
	uint8_t flags;                  /* ENT_OWN */
	uint8_t pad;
	uint32_t slot;                  /* 0 for a tombstone */
	uint64_t chunk;                 /* 0: tombstone */
};

struct view {
	struct view *hnext;             /* (mu) bucket chain */
	uint64_t id;                    /* constant */
	uint64_t inval_seq;             /* (mu) seq of its last invalidation */
	struct mcache_page *pages;      /* (mu) its pages in the table */
	uint64_t refs;                  /* (mu) pages, in the table or not, pointing here */
	atomic_uint gen;                /* written under mu; read by page_find */
	bool linked;                    /* (mu) in the view table */
};

struct mcache_page {
	struct mcache_page *hnext;      /* (mu) bucket chain */
	struct mcache_page *lprev, *lnext; /* (mu) LRU list, while unpinned */
	struct mcache_page *vprev, *vnext; /* (mu) the view's list */
	struct view *view;              /* constant */
	uint64_t pageno;                /* constant */
	uint64_t min_chunk, max_chunk;  /* constant: bounds of the data extents' chunks */
	uint32_t gen;                   /* constant: the generation it was built in */
	/* pins and linked share a word: both change under mu.  n is read
	 * without mu by readers holding a pin, so it must not share a word
	 * with a field written under mu (a bitfield write rewrites its word:
	 * a data race TSan reports) */
	uint16_t pins : 15;             /* (mu) */
	uint16_t linked : 1;            /* (mu) in the table */
	uint16_t n;                     /* constant: extents */
	struct ent e[];                 /* constant */
};

_Static_assert(sizeof(struct ent) == 16, "an extent of a page is 16 bytes");
_Static_assert(sizeof(struct mcache_page) == 80, "MCACHE_PAGE_BYTES says 80");

struct mcache {
	struct lock_mutex mu;
	struct mcache_page **pb;        /* (mu) page buckets */
	size_t npb;                     /* (mu) a power of two */
	struct view **vb;               /* (mu) view buckets */
	size_t nvb;                     /* (mu) a power of two */
	struct mcache_page *mru, *lru;  /* (mu) unpinned pages of the table */
	size_t limit;                   /* (mu) */
	size_t bytes;                   /* (mu) */
	uint64_t npages, nviews, npinned, norphans; /* (mu) */
	uint64_t seq, chunk_seq;        /* (mu) see Tickets */
	uint64_t gone_seq[GONE_SLOTS];  /* (mu) see Tickets */
	struct mcache_stats st;         /* (mu) the counters */
};

/* One block of a page, expanded: what packing and editing work on. */
struct blk {
	uint64_t chunk;
	uint32_t slot;
	uint8_t mapped;
	uint8_t own;
};

/* --- memory, with the test hook ------------------------------------------ */

static long fail_after = -1;

void mcache_fail_alloc_after(long after)
{
	fail_after = after;
}

static void *xmalloc(size_t bytes)
{
	if (fail_after >= 0 && fail_after-- == 0)
		return NULL;
	return malloc(bytes);
}

static void *xcalloc(size_t n, size_t size)
{
	if (fail_after >= 0 && fail_after-- == 0)
		return NULL;
	return calloc(n, size);
}

static size_t page_bytes(const struct mcache_page *pg)
{
	return MCACHE_PAGE_BYTES(pg->n);
}

/* --- hashing ---------------------------------------------------------------- */

static uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static size_t page_bucket(size_t nb, uint64_t view, uint64_t pageno)
{
	return mix(view * 0x9e3779b97f4a7c15ull ^ pageno) & (nb - 1);
}

static size_t view_bucket(size_t nb, uint64_t view)
{
	return mix(view) & (nb - 1);
}

/* Double the page buckets when the table holds more pages than buckets.
 * Best effort: without memory the chains just grow longer. */
static void page_table_grow(struct mcache *mc)
{
	size_t nb = mc->npb * 2;
	struct mcache_page **b;

	if (mc->npages <= mc->npb || !(b = xcalloc(nb, sizeof(*b))))
		return;
	for (size_t i = 0; i < mc->npb; i++) {
		struct mcache_page *pg = mc->pb[i], *next;

		for (; pg; pg = next) {
			size_t j = page_bucket(nb, pg->view->id, pg->pageno);

			next = pg->hnext;
			pg->hnext = b[j];
			b[j] = pg;
		}
	}
	mc->bytes -= MCACHE_ALLOC_BYTES(mc->npb * sizeof(*b));
	mc->bytes += MCACHE_ALLOC_BYTES(nb * sizeof(*b));
	free(mc->pb);
	mc->pb = b;
	mc->npb = nb;
}

static void view_table_grow(struct mcache *mc)
{
	size_t nb = mc->nvb * 2;
	struct view **b;

	if (mc->nviews <= mc->nvb || !(b = xcalloc(nb, sizeof(*b))))
		return;
	for (size_t i = 0; i < mc->nvb; i++) {
		struct view *v = mc->vb[i], *next;

		for (; v; v = next) {
			size_t j = view_bucket(nb, v->id);

			next = v->hnext;
			v->hnext = b[j];
			b[j] = v;
		}
	}
	mc->bytes -= MCACHE_ALLOC_BYTES(mc->nvb * sizeof(*b));
	mc->bytes += MCACHE_ALLOC_BYTES(nb * sizeof(*b));
	free(mc->vb);
	mc->vb = b;
	mc->nvb = nb;
}

/* --- views ------------------------------------------------------------------ */

static uint64_t *gone_slot(struct mcache *mc, uint64_t id)
{
	return &mc->gone_seq[mix(id) & (GONE_SLOTS - 1)];
}

static void gone_note(struct mcache *mc, uint64_t id, uint64_t seq)
{
	uint64_t *g = gone_slot(mc, id);

	if (seq > *g)
		*g = seq;
}

static struct view *view_find(struct mcache *mc, uint64_t id)
{
	struct view *v = mc->vb[view_bucket(mc->nvb, id)];

	while (v && v->id != id)
		v = v->hnext;
	return v;
}

/* The view record of id, made if there is none (its page list empty, its
 * inval_seq its slot's gone_seq: what it cannot know of its predecessors
 * is assumed to have happened at the latest time it could have).  NULL when
 * out of memory. */
static struct view *view_get(struct mcache *mc, uint64_t id)
{
	struct view *v = view_find(mc, id);
	size_t i;

	if (v)
		return v;
	if (!(v = xmalloc(sizeof(*v))))
		return NULL;
	i = view_bucket(mc->nvb, id);
	*v = (struct view){ .hnext = mc->vb[i], .id = id, .inval_seq = *gone_slot(mc, id),
			    .linked = true };
	atomic_init(&v->gen, 1);
	mc->vb[i] = v;
	mc->nviews++;
	mc->bytes += MCACHE_ALLOC_BYTES(sizeof(*v));
	view_table_grow(mc);
	return v;
}

static void view_unlink(struct mcache *mc, struct view *v)
{
	struct view **pp = &mc->vb[view_bucket(mc->nvb, v->id)];

	assert(v->linked && !v->pages);
	gone_note(mc, v->id, v->inval_seq);
	while (*pp != v)
		pp = &(*pp)->hnext;
	*pp = v->hnext;
	v->hnext = NULL;
	v->linked = false;
	mc->nviews--;
}

/* One page less points at v: the last one takes the record away. */
static void view_unref(struct mcache *mc, struct view *v)
{
	assert(v->refs > 0);
	if (--v->refs)
		return;
	if (v->linked)
		view_unlink(mc, v);
	mc->bytes -= MCACHE_ALLOC_BYTES(sizeof(*v));
	free(v);
}

/* --- lists ------------------------------------------------------------------ */

static void lru_remove(struct mcache *mc, struct mcache_page *pg)
{
	if (pg->lprev)
		pg->lprev->lnext = pg->lnext;
	else
		mc->mru = pg->lnext;
	if (pg->lnext)
		pg->lnext->lprev = pg->lprev;
	else
		mc->lru = pg->lprev;
	pg->lprev = pg->lnext = NULL;
}

static void lru_push(struct mcache *mc, struct mcache_page *pg)
{
	pg->lprev = NULL;
	pg->lnext = mc->mru;
	if (mc->mru)
		mc->mru->lprev = pg;
	else
		mc->lru = pg;
	mc->mru = pg;
}

static struct mcache_page *page_find(struct mcache *mc, uint64_t view, uint64_t pageno)
{
	struct mcache_page *pg = mc->pb[page_bucket(mc->npb, view, pageno)];

	while (pg && (pg->pageno != pageno || pg->view->id != view))
		pg = pg->hnext;
	return pg;
}

/* Put pg (unpinned, view set and referenced) into the table and its view's
 * list; the caller pins it or pushes it on the LRU list. */
static void page_link(struct mcache *mc, struct mcache_page *pg)
{
	size_t i = page_bucket(mc->npb, pg->view->id, pg->pageno);
	struct view *v = pg->view;

	pg->hnext = mc->pb[i];
	mc->pb[i] = pg;
	pg->vprev = NULL;
	pg->vnext = v->pages;
	if (v->pages)
		v->pages->vprev = pg;
	v->pages = pg;
	pg->linked = 1;
	mc->npages++;
	mc->bytes += page_bytes(pg);
}

/* Take pg out of the table, its view's list and the LRU list. */
static void page_unlink(struct mcache *mc, struct mcache_page *pg)
{
	struct mcache_page **pp = &mc->pb[page_bucket(mc->npb, pg->view->id, pg->pageno)];

	assert(pg->linked);
	while (*pp != pg)
		pp = &(*pp)->hnext;
	*pp = pg->hnext;
	pg->hnext = NULL;
	if (pg->vprev)
		pg->vprev->vnext = pg->vnext;
	else
		pg->view->pages = pg->vnext;
	if (pg->vnext)
		pg->vnext->vprev = pg->vprev;
	pg->vprev = pg->vnext = NULL;
	if (!pg->pins)
		lru_remove(mc, pg);
	pg->linked = 0;
	mc->npages--;
}

/* Free a page out of the table and unpinned. */
static void page_destroy(struct mcache *mc, struct mcache_page *pg)
{
	assert(!pg->linked && !pg->pins);
	mc->bytes -= page_bytes(pg);
	view_unref(mc, pg->view);
	free(pg);
}

/* Remove pg from the table: freed now, or at its last put if pinned. */
static void page_drop(struct mcache *mc, struct mcache_page *pg)
{
	page_unlink(mc, pg);
	if (pg->pins) {
		mc->norphans++;
		return;
	}
	page_destroy(mc, pg);
}

/* Free unpinned pages, least recently used first, until under the limit. */
static void evict(struct mcache *mc)
{
	while (mc->bytes > mc->limit && mc->lru) {
		page_drop(mc, mc->lru);
		mc->st.evictions++;
	}
}

/* --- packing ----------------------------------------------------------------- */

/* The first extent of pg that ends after block off (an offset in the
 * page), or pg->n: extents are sorted and disjoint, so their ends are
 * sorted too. */
static unsigned ext_ending_after(const struct mcache_page *pg, unsigned off)
{
	unsigned a = 0, z = pg->n;

	while (a < z) {
		unsigned m = (a + z) / 2;

		if (pg->e[m].off + pg->e[m].len_m1 < off)
			a = m + 1;
		else
			z = m;
	}
	return a;
}

/* Append x to out[0, *n), merged into the last extent when it continues
 * it: adjacent, same chunk and flags, consecutive slots (tombstones: slot
 * 0 throughout).  The one rule for packing a load and splicing an edit. */
static void ent_push(struct ent *out, unsigned *n, struct ent x)
{
	struct ent *l = *n ? &out[*n - 1] : NULL;

	if (l && l->off + l->len_m1 + 1u == x.off && l->flags == x.flags && l->chunk == x.chunk &&
	    (l->chunk == 0 || x.slot == l->slot + l->len_m1 + 1u)) {
		l->len_m1 = (uint8_t)(l->len_m1 + x.len_m1 + 1u);
		return;
	}
	out[(*n)++] = x;
}

/* The runs of b[0..PB) as packed extents into e (room for PB); their count. */
static unsigned pack(const struct blk *b, struct ent *e)
{
	unsigned n = 0;

	for (unsigned i = 0; i < PB; i++)
		if (b[i].mapped)
			ent_push(e, &n, (struct ent){ .off = (uint8_t)i, .flags = b[i].own ? ENT_OWN : 0,
						      .slot = b[i].chunk ? b[i].slot : 0,
						      .chunk = b[i].chunk });
	return n;
}

/* Map blocks [lo, hi) of the page (offsets) as e says, or unmap them. */
static void blk_apply(struct blk *b, unsigned lo, unsigned hi, const struct emap_ext *e,
		      uint64_t first)
{
	for (unsigned i = lo; i < hi; i++) {
		if (!e) {
			b[i] = (struct blk){ 0 };
			continue;
		}
		b[i] = (struct blk){ .chunk = e->chunk, .mapped = 1, .own = e->tag == MCACHE_OWN,
				     .slot = e->chunk ? e->slot + (uint32_t)(first + i - e->lblock) : 0 };
	}
}

/* A new unlinked, unpinned page of the n packed extents e.  NULL when out
 * of memory. */
static struct mcache_page *page_of(const struct ent *e, unsigned n, uint64_t pageno)
{
	struct mcache_page *pg = xmalloc(sizeof(*pg) + n * sizeof(struct ent));

	if (!pg)
		return NULL;
	memset(pg, 0, sizeof(*pg));
	pg->pageno = pageno;
	pg->n = n & 0x7fff;
	pg->min_chunk = UINT64_MAX;
	pg->max_chunk = 0;
	memcpy(pg->e, e, n * sizeof(struct ent));
	for (unsigned k = 0; k < n; k++) {
		if (!e[k].chunk)
			continue;
		if (e[k].chunk < pg->min_chunk)
			pg->min_chunk = e[k].chunk;
		if (e[k].chunk > pg->max_chunk)
			pg->max_chunk = e[k].chunk;
	}
	return pg;
}

/* A new unlinked, unpinned page of the runs of b.  NULL when out of memory. */
static struct mcache_page *page_new(const struct blk *b, uint64_t pageno)
{
	struct ent e[PB];

	return page_of(e, pack(b, e), pageno);
}

static bool ext_valid(const struct emap_ext *e)
{
	if (e->nblocks == 0 || e->lblock >= EMAP_LBLOCK_LIMIT ||
	    e->nblocks > EMAP_LBLOCK_LIMIT - e->lblock)
		return false;
	if (e->tag != 0 && e->tag != MCACHE_OWN)
		return false;
	return e->chunk == 0 || (uint64_t)e->slot + e->nblocks - 1 <= UINT32_MAX;
}

/* --- the cache ----------------------------------------------------------- */

struct mcache *mcache_new(size_t limit_bytes)
{
	struct mcache *mc = xcalloc(1, sizeof(*mc));

	if (!mc)
		return NULL;
	mc->pb = xcalloc(BUCKETS_MIN, sizeof(*mc->pb));
	mc->vb = xcalloc(BUCKETS_MIN, sizeof(*mc->vb));
	if (!mc->pb || !mc->vb) {
		free(mc->pb);
		free(mc->vb);
		free(mc);
		return NULL;
	}
	lock_mutex_init(&mc->mu, LOCK_MCACHE, "mcache.mu");
	mc->npb = mc->nvb = BUCKETS_MIN;
	mc->limit = limit_bytes;
	mc->bytes = 2 * MCACHE_ALLOC_BYTES(BUCKETS_MIN * sizeof(void *));
	return mc;
}

void mcache_free(struct mcache *mc)
{
	if (!mc)
		return;
	assert(mc->npinned == 0);
	for (size_t i = 0; i < mc->npb; i++)
		while (mc->pb[i])
			page_drop(mc, mc->pb[i]);
	assert(mc->nviews == 0);
	lock_mutex_destroy(&mc->mu);
	free(mc->pb);
	free(mc->vb);
	free(mc);
}

void mcache_set_limit(struct mcache *mc, size_t limit_bytes)
{
	lock_mutex_lock(&mc->mu);
	mc->limit = limit_bytes;
	evict(mc);
	lock_mutex_unlock(&mc->mu);
}

void mcache_stats(struct mcache *mc, struct mcache_stats *out)
{
	lock_mutex_lock(&mc->mu);
	*out = mc->st;
	out->limit_bytes = mc->limit;
	out->bytes = mc->bytes;
	out->pages = mc->npages;
	out->pinned = mc->npinned;
	out->views = mc->nviews;
	lock_mutex_unlock(&mc->mu);
}

/* Pin a page of the table (on the LRU list while unpinned). */
static void pin(struct mcache *mc, struct mcache_page *pg)
{
	if (pg->pins++ == 0) {
		lru_remove(mc, pg);
		mc->npinned++;
	}
	assert(pg->pins != 0);          /* 32767 pins of one page: a leak */
}

const struct mcache_page *mcache_get(struct mcache *mc, uint64_t view, uint64_t pageno,
				     struct mcache_ticket *t)
{
	struct mcache_page *pg;

	lock_mutex_lock(&mc->mu);
	pg = page_find(mc, view, pageno);
	if (pg) {
		pin(mc, pg);
		mc->st.hits++;
	} else {
		mc->st.misses++;
		if (t)
			*t = (struct mcache_ticket){ .view = view, .pageno = pageno, .seq = mc->seq };
	}
	lock_mutex_unlock(&mc->mu);
	return pg;
}

void mcache_put(struct mcache *mc, const struct mcache_page *cpg)
{
	struct mcache_page *pg = (struct mcache_page *)cpg;

	if (!pg)
		return;
	lock_mutex_lock(&mc->mu);
	assert(pg->pins > 0);
	if (--pg->pins == 0) {
		mc->npinned--;
		if (pg->linked) {
			lru_push(mc, pg);
			evict(mc);
		} else {
			mc->norphans--;
			page_destroy(mc, pg);
		}
	}
	lock_mutex_unlock(&mc->mu);
}

static bool ticket_stale(struct mcache *mc, const struct mcache_ticket *t)
{
	struct view *v = view_find(mc, t->view);

	return (v ? v->inval_seq : *gone_slot(mc, t->view)) > t->seq || mc->chunk_seq > t->seq;
}

int mcache_load_end(struct mcache *mc, const struct mcache_ticket *t, const struct emap_ext *ext,
		    size_t n, const struct mcache_page **out)
{
	uint64_t base = t->pageno << MCACHE_PAGE_SHIFT, end = base + PB;
	struct mcache_page *pg, *had;
	struct blk b[PB];
	struct view *v;
	int rc = 0;

	*out = NULL;
	if (t->pageno >= EMAP_LBLOCK_LIMIT >> MCACHE_PAGE_SHIFT)
		return -EINVAL;
	memset(b, 0, sizeof(b));
	for (size_t i = 0; i < n; i++) {
		const struct emap_ext *e = &ext[i];

		if (!ext_valid(e) || e->lblock < base || e->lblock + e->nblocks > end ||
		    (i > 0 && e->lblock < ext[i - 1].lblock + ext[i - 1].nblocks))
			return -EINVAL;
		blk_apply(b, (unsigned)(e->lblock - base), (unsigned)(e->lblock - base + e->nblocks),
			  e, base);
	}
	/* built and allocated without the lock; most loads insert it */
	if (!(pg = page_new(b, t->pageno)))
		return -ENOMEM;

	lock_mutex_lock(&mc->mu);
	if (ticket_stale(mc, t)) {
		mc->st.loads_stale++;
		rc = -EAGAIN;
	} else if ((had = page_find(mc, t->view, t->pageno))) {
		/* another loader won: its page is as good, and updates since
		 * went into it */
		pin(mc, had);
		mc->st.loads_raced++;
		*out = had;
	} else if (!(v = view_get(mc, t->view))) {
		rc = -ENOMEM;
	} else {
		pg->view = v;
		pg->gen = atomic_load_explicit(&v->gen, memory_order_relaxed);
		v->refs++;
		page_link(mc, pg);
		pg->pins = 1;           /* pinned from the start: never on the LRU list */
		mc->npinned++;
		mc->st.loads++;
		page_table_grow(mc);
		evict(mc);
		*out = pg;
		pg = NULL;
	}
	lock_mutex_unlock(&mc->mu);
	free(pg);
	return rc;
}

/* --- reading ---------------------------------------------------------------- */

size_t mcache_page_find(const struct mcache_page *pg, uint64_t lo, uint64_t hi,
			struct emap_ext *out, size_t max)
{
	uint64_t base = pg->pageno << MCACHE_PAGE_SHIFT;
	bool current = pg->gen == atomic_load_explicit(&pg->view->gen, memory_order_relaxed);
	unsigned olo, ohi;
	size_t count = 0;

	if (lo < base)
		lo = base;
	if (hi > base + PB)
		hi = base + PB;
	if (lo >= hi)
		return 0;
	olo = (unsigned)(lo - base);
	ohi = (unsigned)(hi - base);
	for (unsigned k = ext_ending_after(pg, olo); k < pg->n && pg->e[k].off < ohi; k++, count++) {
		const struct ent *e = &pg->e[k];
		unsigned s = e->off > olo ? e->off : olo;
		unsigned t = e->off + e->len_m1 + 1u < ohi ? e->off + e->len_m1 + 1u : ohi;

		if (count >= max)
			continue;
		out[count] = (struct emap_ext){
			.lblock = base + s, .nblocks = t - s, .chunk = e->chunk,
			.slot = e->chunk ? e->slot + (s - e->off) : 0,
			.tag = current && (e->flags & ENT_OWN) ? MCACHE_OWN : 0,
		};
	}
	return count;
}

uint64_t mcache_page_view(const struct mcache_page *pg)
{
	return pg->view->id;
}

uint64_t mcache_page_no(const struct mcache_page *pg)
{
	return pg->pageno;
}

/* --- write-through ------------------------------------------------------- */

/* Push the parts of extents [k0, k1) of old inside blocks [from, to)
 * (offsets in the page) onto out[0, *n); keep_own false clears their own
 * bits. */
static void push_clipped(const struct mcache_page *old, unsigned k0, unsigned k1, bool keep_own,
			 unsigned from, unsigned to, struct ent *out, unsigned *n)
{
	for (unsigned k = k0; k < k1; k++) {
		struct ent x = old->e[k];
		unsigned s = x.off > from ? x.off : from;
		unsigned t = x.off + x.len_m1 + 1u < to ? x.off + x.len_m1 + 1u : to;

		if (s >= t)
			continue;
		if (x.chunk)
			x.slot += s - x.off;
		x.off = (uint8_t)s;
		x.len_m1 = (uint8_t)(t - s - 1);
		if (!keep_own)
			x.flags &= (uint8_t)~ENT_OWN;
		ent_push(out, n, x);
	}
}

/* The extents of old with blocks [lo, hi) (offsets in the page) mapped as
 * e says, or unmapped when e is NULL, into out (room for PB); their count.
 * The same extents as pack() of the page expanded block by block with the
 * edit applied, without going through the PB blocks: every write edits a
 * page this way.  keep_own false (a page of an older generation) clears
 * every own bit, which may make any two neighbours mergeable: each extent
 * is pushed.  Otherwise the old extents are maximal (M2), so only the
 * edit's neighbours can merge, and those in front of and behind the ones
 * the edit touches are copied as they are. */
static unsigned splice(const struct mcache_page *old, bool keep_own, unsigned lo, unsigned hi,
		       const struct emap_ext *e, uint64_t base, struct ent *out)
{
	const unsigned on = old->n;
	unsigned n = 0, i = 0, j = on;

	if (keep_own) {
		/* [0, i) end at or before lo; j is the first ending behind hi */
		i = ext_ending_after(old, lo);
		j = ext_ending_after(old, hi);
		memcpy(out, old->e, i * sizeof(*out));
		n = i;
		if (j < on)
			j++;
	}
	push_clipped(old, i, j, keep_own, 0, lo, out, &n);
	if (e)
		ent_push(out, &n, (struct ent){
			.off = (uint8_t)lo, .len_m1 = (uint8_t)(hi - lo - 1),
			.flags = e->tag == MCACHE_OWN ? ENT_OWN : 0,
			.slot = e->chunk ? e->slot + (uint32_t)(base + lo - e->lblock) : 0,
			.chunk = e->chunk });
	push_clipped(old, i, j, keep_own, hi, PB, out, &n);
	memcpy(out + n, old->e + j, (on - j) * sizeof(*out));
	return n + (on - j);
}

/* Replace resident page old with a copy where [lo, hi) (absolute, inside
 * the page) is mapped as e says, or unmapped when e is NULL. */
static void page_edit(struct mcache *mc, struct mcache_page *old, uint64_t lo, uint64_t hi,
		      const struct emap_ext *e)
{
	uint64_t base = old->pageno << MCACHE_PAGE_SHIFT;
	struct view *v = old->view;
	unsigned gen = atomic_load_explicit(&v->gen, memory_order_relaxed);
	struct mcache_page *pg;
	struct ent x[PB];
	/* a page of an older generation: its own extents are inherited now */
	unsigned n = splice(old, old->gen == gen, (unsigned)(lo - base), (unsigned)(hi - base),
			    e, base, x);

	if (!(pg = page_of(x, n, old->pageno))) {
		/* no copy, so no page: the next load rebuilds it */
		page_drop(mc, old);
		mc->st.dropped++;
		return;
	}
	pg->view = v;
	pg->gen = gen;
	v->refs++;
	page_drop(mc, old);             /* v keeps a reference: pg's */
	page_link(mc, pg);
	lru_push(mc, pg);
	mc->st.updates++;
}

static void update(struct mcache *mc, uint64_t view, uint64_t lo, uint64_t hi,
		   const struct emap_ext *e)
{
	uint64_t first = lo >> MCACHE_PAGE_SHIFT, last = (hi - 1) >> MCACHE_PAGE_SHIFT;
	struct view *v;

	lock_mutex_lock(&mc->mu);
	v = view_find(mc, view);
	if (!v)
		goto out;
	if (last - first + 1 <= mc->npages) {
		for (uint64_t p = first; p <= last; p++) {
			struct mcache_page *pg = page_find(mc, view, p);
			uint64_t base = p << MCACHE_PAGE_SHIFT;

			if (pg)
				page_edit(mc, pg, lo > base ? lo : base, hi < base + PB ? hi : base + PB, e);
		}
	} else {
		/* a range longer than the cache: walk the view's pages instead.
		 * An edited page's copy goes to the head of the list, behind
		 * the walk, so each page is edited once. */
		struct mcache_page *pg = v->pages, *next;

		for (; pg; pg = next) {
			uint64_t base = pg->pageno << MCACHE_PAGE_SHIFT;

			next = pg->vnext;
			if (pg->pageno < first || pg->pageno > last)
				continue;
			page_edit(mc, pg, lo > base ? lo : base, hi < base + PB ? hi : base + PB, e);
		}
	}
	evict(mc);
out:
	lock_mutex_unlock(&mc->mu);
}

int mcache_update_put(struct mcache *mc, uint64_t view, const struct emap_ext *e)
{
	if (!ext_valid(e))
		return -EINVAL;
	update(mc, view, e->lblock, e->lblock + e->nblocks, e);
	return 0;
}

int mcache_update_delete(struct mcache *mc, uint64_t view, uint64_t lo, uint64_t hi)
{
	if (lo > hi || hi > EMAP_LBLOCK_LIMIT)
		return -EINVAL;
	if (lo < hi)
		update(mc, view, lo, hi, NULL);
	return 0;
}

/* --- invalidation -------------------------------------------------------- */

void mcache_bump_gen(struct mcache *mc, uint64_t view)
{
	struct view *v;

	lock_mutex_lock(&mc->mu);
	mc->seq++;
	if ((v = view_find(mc, view))) {
		atomic_store_explicit(&v->gen, atomic_load_explicit(&v->gen, memory_order_relaxed) + 1,
				      memory_order_relaxed);
		v->inval_seq = mc->seq;
	} else {
		gone_note(mc, view, mc->seq);
	}
	lock_mutex_unlock(&mc->mu);
}

void mcache_drop_view(struct mcache *mc, uint64_t view)
{
	struct view *v;

	lock_mutex_lock(&mc->mu);
	mc->seq++;
	if ((v = view_find(mc, view))) {
		v->inval_seq = mc->seq;
		/* the record goes out of the table now; orphans keep it alive */
		v->refs++;
		while (v->pages) {
			page_drop(mc, v->pages);
			mc->st.dropped++;
		}
		view_unlink(mc, v);
		view_unref(mc, v);
	} else {
		gone_note(mc, view, mc->seq);
	}
	lock_mutex_unlock(&mc->mu);
}

static bool ids_hit(const uint64_t *ids, size_t n, uint64_t lo, uint64_t hi)
{
	size_t a = 0, z = n;

	while (a < z) {                 /* the first id >= lo */
		size_t m = (a + z) / 2;

		if (ids[m] < lo)
			a = m + 1;
		else
			z = m;
	}
	return a < n && ids[a] <= hi;
}

int mcache_drop_chunks(struct mcache *mc, const uint64_t *ids, size_t n)
{
	for (size_t i = 1; i < n; i++)
		if (ids[i] <= ids[i - 1])
			return -EINVAL;
	lock_mutex_lock(&mc->mu);
	mc->chunk_seq = ++mc->seq;
	for (size_t i = 0; i < mc->npb; i++) {
		struct mcache_page *pg = mc->pb[i], *next;

		for (; pg; pg = next) {
			bool hit = false;

			next = pg->hnext;
			if (pg->min_chunk > pg->max_chunk || !ids_hit(ids, n, pg->min_chunk, pg->max_chunk))
				continue;
			for (unsigned k = 0; k < pg->n && !hit; k++)
				hit = pg->e[k].chunk && ids_hit(ids, n, pg->e[k].chunk, pg->e[k].chunk);
			if (hit) {
				page_drop(mc, pg);
				mc->st.dropped++;
			}
		}
	}
	lock_mutex_unlock(&mc->mu);
	return 0;
}

/* --- checking ------------------------------------------------------------ */

static __thread char check_msg[200];

#define FAIL(...) do { \
	snprintf(check_msg, sizeof(check_msg), __VA_ARGS__); \
	goto out; \
} while (0)

static const char *page_check(const struct mcache_page *pg)
{
	uint64_t lo = UINT64_MAX, hi = 0;
	unsigned end = 0;

	for (unsigned k = 0; k < pg->n; k++) {
		const struct ent *e = &pg->e[k];

		if (k > 0 && e->off < end)
			return "M2: page extents overlap or are out of order";
		if (e->off + e->len_m1 + 1u > PB)
			return "M2: an extent ends past its page";
		if (e->flags & ~ENT_OWN || e->pad || (!e->chunk && e->slot))
			return "M2: bad flags, or a tombstone with a slot";
		if (k > 0 && e->off == end) {
			const struct ent *p = &pg->e[k - 1];

			if (p->flags == e->flags && p->chunk == e->chunk &&
			    (!e->chunk || p->slot + p->len_m1 + 1u == e->slot))
				return "M2: two mergeable extents not merged";
		}
		end = e->off + e->len_m1 + 1u;
		if (e->chunk && e->chunk < lo)
			lo = e->chunk;
		if (e->chunk && e->chunk > hi)
			hi = e->chunk;
	}
	if (lo != pg->min_chunk || hi != pg->max_chunk)
		return "M2: min_chunk / max_chunk wrong";
	return NULL;
}

const char *mcache_check(struct mcache *mc)
{
	uint64_t npages = 0, nlru = 0, nviews = 0, npinned = 0, nvpages = 0;
	size_t bytes;
	const char *msg = NULL, *why;

	lock_mutex_lock(&mc->mu);
	bytes = MCACHE_ALLOC_BYTES(mc->npb * sizeof(void *)) + MCACHE_ALLOC_BYTES(mc->nvb * sizeof(void *));
	for (const struct mcache_page *pg = mc->mru; pg; pg = pg->lnext) {
		if (pg->pins || !pg->linked)
			FAIL("M1: a pinned or unlinked page on the LRU list");
		if (pg->lnext ? pg->lnext->lprev != pg : mc->lru != pg)
			FAIL("M1: LRU list links broken");
		nlru++;
	}
	for (size_t i = 0; i < mc->npb; i++)
		for (const struct mcache_page *pg = mc->pb[i]; pg; pg = pg->hnext) {
			if (page_bucket(mc->npb, pg->view->id, pg->pageno) != i || !pg->linked)
				FAIL("M1: page %" PRIu64 " in the wrong bucket or not linked", pg->pageno);
			if (!pg->view->linked || view_find(mc, pg->view->id) != pg->view)
				FAIL("M1: page %" PRIu64 "'s view is not in the view table", pg->pageno);
			if (page_find(mc, pg->view->id, pg->pageno) != pg)
				FAIL("M1: page %" PRIu64 " is in the table twice", pg->pageno);
			if ((why = page_check(pg)))
				FAIL("%s (page %" PRIu64 ")", why, pg->pageno);
			npages++;
			npinned += pg->pins > 0;
			bytes += page_bytes(pg);
		}
	for (size_t i = 0; i < mc->nvb; i++)
		for (const struct view *v = mc->vb[i]; v; v = v->hnext) {
			uint64_t mine = 0;

			if (!v->linked || view_bucket(mc->nvb, v->id) != i)
				FAIL("M1: view %" PRIu64 " in the wrong bucket", v->id);
			for (const struct mcache_page *pg = v->pages; pg; pg = pg->vnext) {
				if (pg->view != v || (pg->vnext && pg->vnext->vprev != pg) ||
				    (pg->vprev ? pg->vprev->vnext != pg : v->pages != pg))
					FAIL("M1: view %" PRIu64 "'s page list broken", v->id);
				mine++;
			}
			if (v->refs < mine || v->refs == 0)
				FAIL("M3: view %" PRIu64 " has %" PRIu64 " refs for %" PRIu64 " pages",
				     v->id, v->refs, mine);
			if (v->inval_seq > mc->seq)
				FAIL("M5: view %" PRIu64 " inval_seq ahead of seq", v->id);
			nvpages += mine;
			nviews++;
			bytes += MCACHE_ALLOC_BYTES(sizeof(*v));
		}
	if (npages != mc->npages || nvpages != npages || nviews != mc->nviews)
		FAIL("M1: %" PRIu64 " pages, %" PRIu64 " in view lists, %" PRIu64 " counted;"
		     " %" PRIu64 " views, %" PRIu64 " counted", npages, nvpages, mc->npages,
		     nviews, mc->nviews);
	if (npages - npinned != nlru)
		FAIL("M1: %" PRIu64 " unpinned pages, %" PRIu64 " on the LRU list", npages - npinned, nlru);
	if (npinned + mc->norphans != mc->npinned)
		FAIL("M1: %" PRIu64 " + %" PRIu64 " orphans pinned, %" PRIu64 " counted",
		     npinned, mc->norphans, mc->npinned);
	/* orphans and dead view records are out of reach of the walk: the
	 * charge must be at least what was found */
	if (bytes > mc->bytes || (mc->norphans == 0 && bytes != mc->bytes))
		FAIL("M4: charged %zu, found %zu", mc->bytes, bytes);
	if (mc->bytes > mc->limit && mc->lru)
		FAIL("M4: %zu bytes over the limit %zu with unpinned pages left", mc->bytes, mc->limit);
	if (mc->chunk_seq > mc->seq)
		FAIL("M5: chunk_seq ahead of seq");
	for (size_t i = 0; i < GONE_SLOTS; i++)
		if (mc->gone_seq[i] > mc->seq)
			FAIL("M5: gone_seq[%zu] ahead of seq", i);
	msg = NULL;
	goto done;
out:
	msg = check_msg;
done:
	lock_mutex_unlock(&mc->mu);
	return msg;
}
