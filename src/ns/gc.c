/*
 * garbage collection: give back the space of blocks nothing uses.
 *
 * A block is in use while an extent of the index covers it.  A chunk file
 * whose slots no extent covers is removed; a chunk file mostly unused is compacted:
 * its live blocks are copied to the active chunk, their rows repointed,
 * and the file removed.  Nothing else ever deletes block data.
 *
 * THE HARD PART is blocks written but not yet in the index: a dirty map
 * entry points at a block no row names yet.  A pass therefore starts with a
 * barrier:
 *   1. flip the write epoch and note F, the chunk active after the flip;
 *   2. wait for the writes of the old epoch to finish (they are short);
 *   3. flush and checkpoint: every write that started before the flip is
 *      now in the index (not only in the log), and settled: no delta
 *      entry names it any more.
 * A write that starts after the flip appends at or past F, since the
 * active chunk only moves forward.  So for every chunk below F, the index
 * names every block in use, and only chunks below F are touched.
 *
 * The scans (reference counts, the rows of the chunks to compact) run on
 * a read-only connection of their own (ns->bm_scan): SQLite's WAL gives it
 * the last committed state, which after the barrier names every block in
 * use below F, without holding db_mu for the length of a full scan.
 *
 * Compaction repoints a row only if it still points where it did
 * (bmap_ext_relocate), so it needs no lock against flushes: a flush that
 * rewrote the row meanwhile wins, and the chunk is kept until a later
 * pass.  The new locations are committed, then every cached map page
 * naming a moved-from chunk is dropped (mcache_drop_chunks; a page load in
 * progress is refused and reads again), and only then is the old file
 * removed.  No volume's delta (its bindings not yet committed) names a
 * victim: the barrier committed every write that started before the flip,
 * the commit's vol_batch_done dropped those entries from the deltas, and
 * later writes append at or past F, above every victim.  A reader that
 * copied an old location just before finds the file gone and looks again
 * (vol_read).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ns/ns_int.h"
#include "vsnapfs/log.h"
#include "vsnapfs/mcache.h"

#define GC_COMPACT_BELOW_PCT 50         /* compact chunks less than half live */
#define GC_MOVE_MAX_BYTES    (64u << 20) /* live data moved per pass */
#define GC_DRAIN_MS          10000

struct chunk_info {
	uint64_t id;
	uint32_t nslots;
	uint64_t refs;
};

struct gc {
	struct ns *ns;
	struct chunk_info *c;
	size_t n, cap;
	uint64_t floor;                 /* chunks below it are fully indexed */
	struct ns_gc_stats *st;
	int rc;
};

static int gc_add_chunk(void *ctx, uint64_t id, uint32_t nslots)
{
	struct gc *g = ctx;

	if (ARRAY_RESERVE(g->c, g->cap, g->n, 64))
		return g->rc = -ENOMEM;
	g->c[g->n++] = (struct chunk_info){ .id = id, .nslots = nslots };
	return 0;
}

static struct chunk_info *gc_find(struct gc *g, uint64_t id)
{
	size_t lo = 0, hi = g->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (g->c[mid].id == id)
			return &g->c[mid];
		if (g->c[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static int gc_add_refs(void *ctx, uint64_t id, uint64_t nrefs)
{
	struct chunk_info *c = gc_find(ctx, id);

	if (c)
		c->refs = nrefs;
	return 0;
}

/* Steps 1-3 of the barrier; sets g->floor. */
static int barrier(struct ns *ns, struct gc *g)
{
	int old = atomic_load(&ns->write_epoch);
	uint64_t active;
	int rc;

	atomic_store(&ns->write_epoch, !old);
	active = chunk_active_id(ns->cs);
	/* no chunk written by this daemon yet: every existing one is older */
	g->floor = active ? active : chunk_next_id(ns->cs);
	for (int ms = 0; atomic_load(&ns->inflight[old]); ms++) {
		struct timespec ts = { 0, 1000000 };

		if (ms > GC_DRAIN_MS)
			return -EAGAIN;
		nanosleep(&ts, NULL);
	}
	rc = ns_flush(ns);
	/* the index, not only the log, and no delta entry left behind */
	return rc ? rc : ns_checkpoint(ns);
}

/* ---- compaction ------------------------------------------------------------ */

struct move {
	uint64_t node, lblock;
	struct chunk_loc from, to;
};

struct moves {
	struct gc *g;
	struct move *m;
	size_t n, cap;
	int rc;
};

static bool is_victim(struct gc *g, uint64_t id)
{
	struct chunk_info *c = gc_find(g, id);

	return c && c->nslots == UINT32_MAX;   /* marked in pick_victims */
}

/* A data extent of the index: one move per block of it in a victim. */
static int gather_ext(void *ctx, uint64_t node, const struct bmap_ext *x)
{
	struct moves *mv = ctx;

	if (!is_victim(mv->g, x->chunk))
		return 0;
	for (uint32_t i = 0; i < x->nblocks; i++) {
		if (ARRAY_RESERVE(mv->m, mv->cap, mv->n, 1024))
			return mv->rc = -ENOMEM;
		mv->m[mv->n++] = (struct move){
			.node = node, .lblock = x->lblock + i,
			.from = { .chunk_id = x->chunk, .slot = x->slot + i, .lblock = x->lblock + i },
		};
	}
	return 0;
}

static int cmp_move(const void *a, const void *b)
{
	const struct move *x = a, *y = b;

	if (x->from.chunk_id != y->from.chunk_id)
		return x->from.chunk_id < y->from.chunk_id ? -1 : 1;
	return x->from.slot < y->from.slot ? -1 : x->from.slot > y->from.slot;
}

/* Mark the chunks worth compacting (nslots = UINT32_MAX), fewest live first,
 * up to the per-pass budget.  Returns how many. */
static size_t pick_victims(struct ns *ns, struct gc *g)
{
	uint64_t budget = GC_MOVE_MAX_BYTES / ns->bs, picked = 0;

	for (;;) {
		struct chunk_info *best = NULL;

		for (size_t i = 0; i < g->n; i++) {
			struct chunk_info *c = &g->c[i];

			if (c->id >= g->floor || c->refs == 0 || c->nslots == UINT32_MAX ||
			    c->refs * 100 >= (uint64_t)c->nslots * GC_COMPACT_BELOW_PCT)
				continue;
			if (!best || c->refs * best->nslots < best->refs * c->nslots)
				best = c;
		}
		if (!best || best->refs > budget)
			return picked;
		budget -= best->refs;
		best->nslots = UINT32_MAX;
		picked++;
	}
}

/* Copy the live blocks of the victims to the active chunk. */
static int copy_blocks(struct ns *ns, struct moves *mv)
{
	struct ns_gc_stats *st = mv->g->st;
	enum { RUN = 256 };
	uint8_t *buf = malloc((size_t)RUN * ns->bs);
	struct chunk_loc locs[RUN];
	size_t i = 0;
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	if (mv->n)                      /* qsort(NULL, 0) is undefined */
		qsort(mv->m, mv->n, sizeof(mv->m[0]), cmp_move);
	while (i < mv->n && !rc) {
		size_t n = 0, first = i;

		for (; i < mv->n && n < RUN; i++) {
			struct move *m = &mv->m[i];

			struct chunk_bad bad;
			char why[96];

			rc = chunk_read(ns->cs, &m->from, 1, buf + n * ns->bs, &bad);
			st->reads++;
			if (rc) {
				/* damaged or unreadable: leave it where it is */
				vlog(LOG_ERR, "gc: chunk %016" PRIx64 " slot %u: %s; not moved",
				     m->from.chunk_id, m->from.slot,
				     rc == -EBADMSG ? chunk_bad_str(&bad, m->lblock, why, sizeof(why))
						    : strerror(-rc));
				m->to.chunk_id = 0;
				rc = 0;
				continue;
			}
			m->to.chunk_id = 1;     /* placeholder: filled below */
			locs[n++].lblock = m->lblock;   /* a copy keeps its block number */
		}
		if (n) {
			rc = chunk_append(ns->cs, buf, n, CHUNK_KIND_RELOC, locs);
			st->appends++;
		}
		for (size_t j = first, k = 0; !rc && j < i; j++)
			if (mv->m[j].to.chunk_id)
				mv->m[j].to = locs[k++];
	}
	free(buf);
	if (rc)
		for (size_t j = 0; j < mv->n; j++)
			mv->m[j].to.chunk_id = 0;
	return rc;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/*
 * Drop every cached map page naming a chunk blocks moved out of, after the
 * commit (P4 in src/vol/vol.c: no volume's delta names a victim, so the
 * pages are all there is to drop).  Out of memory for the list of ids:
 * drop them one by one.
 */
static void drop_moved(struct ns *ns, const struct moves *mv)
{
	uint64_t *ids = malloc((mv->n ? mv->n : 1) * sizeof(*ids));
	size_t n = 0;

	for (size_t i = 0; i < mv->n; i++) {
		uint64_t id = mv->m[i].from.chunk_id;

		if (!mv->m[i].to.chunk_id)
			continue;
		if (ids)
			ids[n++] = id;
		else
			mcache_drop_chunks(ns->mc, &id, 1);
	}
	if (!ids)
		return;
	qsort(ids, n, sizeof(*ids), cmp_u64);
	if (n) {
		size_t k = 1;

		for (size_t i = 1; i < n; i++)
			if (ids[i] != ids[k - 1])
				ids[k++] = ids[i];
		n = k;
		mcache_drop_chunks(ns->mc, ids, n);
	}
	free(ids);
}

/* Does move n of a run continue its first move m? */
static bool move_continues(const struct move *m, const struct move *x, size_t n)
{
	return x->to.chunk_id && x->node == m->node && x->lblock == m->lblock + n &&
	       x->from.chunk_id == m->from.chunk_id && x->from.slot == m->from.slot + n &&
	       x->to.chunk_id == m->to.chunk_id && x->to.slot == m->to.slot + n;
}

/*
 * Repoint extents, then drop the map pages naming the old chunks.  Assumes db_mu.  Returns the
 * number of rows moved, with moved victims' refs lowered accordingly.
 */
static int repoint(struct ns *ns, struct gc *g, struct moves *mv)
{
	int rc;

	assert(lock_held(&ns->db_mu));
	rc = ns_txn_begin(ns);
	/* the moves are in (from chunk, slot) order, so the blocks of one
	 * extent come together and, copied together, landed together: one
	 * repoint per run that continues in node, lblock, from and to */
	for (size_t i = 0, n; i < mv->n && !rc; i += n) {
		struct move *m = &mv->m[i];
		struct bmap_ext from;

		n = 1;
		if (!m->to.chunk_id)
			continue;
		while (i + n < mv->n && move_continues(m, &mv->m[i + n], n))
			n++;
		from = (struct bmap_ext){ .lblock = m->lblock, .nblocks = n,
					  .chunk = m->from.chunk_id, .slot = m->from.slot };
		rc = bmap_ext_relocate(ns->bm, m->node, &from, m->to.chunk_id, m->to.slot);
		g->st->relocates++;
		if (rc == -ENOENT) {
			g->st->lost++;
			/* rewritten or merged meanwhile: its copy is garbage */
			for (size_t j = i; j < i + n; j++)
				mv->m[j].to.chunk_id = 0;
			rc = 0;
		}
	}
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc) {
		ns_txn_rollback(ns);
		return rc;
	}
	drop_moved(ns, mv);
	for (size_t i = 0; i < mv->n; i++)
		if (mv->m[i].to.chunk_id)
			gc_find(g, mv->m[i].from.chunk_id)->refs--;
	return 0;
}

static int compact(struct ns *ns, struct gc *g)
{
	struct moves mv = { .g = g };
	int64_t t;
	int rc;

	if (!pick_victims(ns, g))
		return 0;
	rc = bmap_exts_all(ns->bm_scan, gather_ext, &mv);
	if (!rc)
		rc = mv.rc;
	/* the rows now are all the refs there are (none can appear below the
	 * floor); a victim with rows gone since the count has fewer */
	for (size_t i = 0; i < g->n && !rc; i++)
		if (g->c[i].nslots == UINT32_MAX)
			g->c[i].refs = 0;
	for (size_t i = 0; i < mv.n && !rc; i++)
		gc_find(g, mv.m[i].from.chunk_id)->refs++;
	t = ns_now_ns();
	if (!rc)
		rc = copy_blocks(ns, &mv);
	if (!rc)
		rc = chunk_sync(ns->cs);
	g->st->copy_ns = ns_now_ns() - t;
	if (!rc && ns->gc_copied)
		ns->gc_copied(ns->gc_copied_ctx);
	t = ns_now_ns();
	if (!rc) {
		lock_mutex_lock(&ns->db_mu);
		rc = repoint(ns, g, &mv);
		lock_mutex_unlock(&ns->db_mu);
	}
	g->st->repoint_ns = ns_now_ns() - t;
	for (size_t i = 0; !rc && i < mv.n; i++)
		g->st->moved += mv.m[i].to.chunk_id != 0;
	free(mv.m);
	return rc;
}

/* ---- a pass ------------------------------------------------------------------ */

int ns_gc(struct ns *ns, struct ns_gc_stats *st)
{
	struct gc g = { .ns = ns, .st = st };
	int64_t start;
	int rc;

	*st = (struct ns_gc_stats){ 0 };
	rc = barrier(ns, &g);
	if (rc)
		return rc;
	start = ns_now_ns();
	rc = chunk_foreach(ns->cs, gc_add_chunk, &g);
	if (!rc)
		rc = g.rc;
	if (!rc)
		rc = bmap_chunk_refs(ns->bm_scan, gc_add_refs, &g);
	st->work_ns = ns_now_ns() - start;
	if (!rc)
		rc = compact(ns, &g);
	for (size_t i = 0; i < g.n && !rc; i++) {
		struct chunk_info *c = &g.c[i];

		if (c->id < g.floor && c->refs == 0 && chunk_remove(ns->cs, c->id) == 0)
			st->removed++;
	}
	if (st->removed || st->moved)
		vlog(LOG_INFO, "gc: moved %" PRIu64 " live block(s) (%" PRIu64 " read(s), %" PRIu64
		     " append(s), %" PRIu64 " relocate(s), %" PRIu64 " lost to newer writes),"
		     " removed %" PRIu64 " chunk file(s) in %.2f s", st->moved, st->reads,
		     st->appends, st->relocates, st->lost, st->removed,
		     (ns_now_ns() - start) / 1e9);
	if (rc && rc != -EAGAIN)
		vlog(LOG_ERR, "gc: %s", strerror(-rc));
	free(g.c);
	return rc ? rc : (st->removed || st->moved);
}
