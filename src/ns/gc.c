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
 * Compaction copies runs, not blocks: each extent row in a victim (a whole
 * extent, or a live piece of one that overwrites split, the dead slots
 * around it in no row) is read with one chunk_read, appended with others
 * in one chunk_append, and repointed with one bmap_ext_relocate (struct
 * run below says when a run becomes several).
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
#define GC_COPY_MAX_BYTES    (1u << 20)  /* one read buffer, one append */
#define GC_DRAIN_MS          10000

struct chunk_info {
	uint64_t id;
	uint32_t nslots;                /* UINT32_MAX once picked for compaction */
	uint32_t slots;                 /* the file's slots, for vsnapctl status */
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
	g->c[g->n++] = (struct chunk_info){ .id = id, .nslots = nslots, .slots = nslots };
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

	/* The floor before the flip: a write that starts after the flip is not
	 * waited for, and it appends to the chunk active now or a later one,
	 * never below the floor.  (Read after the flip, such a write could fill
	 * the active chunk first and leave a block no row names below it.)
	 * No chunk written by this daemon yet: every existing one is older. */
	active = chunk_active_id(ns->cs);
	g->floor = active ? active : chunk_next_id(ns->cs);
	atomic_store(&ns->write_epoch, !old);
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

/*
 * A run: blocks [from.lblock, +from.nblocks) of node, in slots [from.slot,
 * ...) of the victim from.chunk, copied to slots [to_slot, ...) of to_chunk
 * (0: not copied, or its repoint lost to a newer write).  The scan makes one
 * per extent row in a victim, so a live piece of a split extent is one run
 * and the dead slots around it are in none; a run is copied with one read,
 * lands in consecutive slots, and is repointed with one relocate.  A run
 * becomes several only where it must: longer than the copy buffer, across
 * the end of the active chunk, or around a block that does not verify
 * (which stays where it is, and keeps its chunk).
 */
struct run {
	uint64_t node;
	struct bmap_ext from;
	uint64_t to_chunk;
	uint32_t to_slot;
	bool copied;                    /* read into the buffer being appended */
};

struct runs {
	struct gc *g;
	struct run *r;
	size_t n, cap;
	uint32_t max_blocks;            /* the copy buffer */
	int rc;
};

static bool is_victim(struct gc *g, uint64_t id)
{
	struct chunk_info *c = gc_find(g, id);

	return c && c->nslots == UINT32_MAX;   /* marked in pick_victims */
}

/* Split run i after its first k blocks: run i + 1 is the rest.  The array
 * may move. */
static int run_split(struct runs *rs, size_t i, uint32_t k)
{
	struct run *r;

	assert(k > 0 && k < rs->r[i].from.nblocks);
	if (ARRAY_RESERVE(rs->r, rs->cap, rs->n, 256))
		return -ENOMEM;
	memmove(&rs->r[i + 2], &rs->r[i + 1], (rs->n - i - 1) * sizeof(rs->r[0]));
	rs->n++;
	r = &rs->r[i];
	r[1] = r[0];
	r[1].from.lblock += k;
	r[1].from.slot += k;
	r[1].from.nblocks -= k;
	r[0].from.nblocks = k;
	return 0;
}

/* A data extent of the index in a victim: a run, or several of at most
 * max_blocks. */
static int gather_ext(void *ctx, uint64_t node, const struct bmap_ext *x)
{
	struct runs *rs = ctx;
	struct bmap_ext e = *x;

	if (!is_victim(rs->g, x->chunk))
		return 0;
	while (e.nblocks) {
		uint32_t n = e.nblocks < rs->max_blocks ? e.nblocks : rs->max_blocks;

		if (ARRAY_RESERVE(rs->r, rs->cap, rs->n, 256))
			return rs->rc = -ENOMEM;
		rs->r[rs->n] = (struct run){ .node = node, .from = e };
		rs->r[rs->n++].from.nblocks = n;
		e.lblock += n;
		e.slot += n;
		e.nblocks -= n;
	}
	return 0;
}

static int cmp_run(const void *a, const void *b)
{
	const struct bmap_ext *x = &((const struct run *)a)->from;
	const struct bmap_ext *y = &((const struct run *)b)->from;

	if (x->chunk != y->chunk)
		return x->chunk < y->chunk ? -1 : 1;
	return x->slot < y->slot ? -1 : x->slot > y->slot;
}

/* Runs in (node, lblock) order: copied in that order, the runs of a window
 * land in consecutive slots, and their relocates merge them (defrag). */
static int cmp_run_lblock(const void *a, const void *b)
{
	const struct run *x = a, *y = b;

	if (x->node != y->node)
		return x->node < y->node ? -1 : 1;
	return x->from.lblock < y->from.lblock ? -1 : x->from.lblock > y->from.lblock;
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

/* The locations of r's blocks, from loc on. */
static void run_locs(const struct run *r, struct chunk_loc *loc)
{
	for (uint32_t k = 0; k < r->from.nblocks; k++)
		loc[k] = (struct chunk_loc){ .chunk_id = r->from.chunk, .slot = r->from.slot + k,
					     .lblock = r->from.lblock + k };
}

/*
 * Read run i into buf (its locations into loc) with one chunk_read, and
 * set copied.  A block that does not verify stays where it is: the run is
 * split around it and the block left out; 1 says "read run i again", its
 * good first part.  Any other error leaves the whole run out.
 */
static int read_run(struct ns *ns, struct runs *rs, size_t i, uint8_t *buf,
		    struct chunk_loc *loc)
{
	struct run *r = &rs->r[i];
	struct chunk_bad bad;
	char why[96];
	int rc;

	run_locs(r, loc);
	rc = chunk_read(ns->cs, loc, r->from.nblocks, buf, &bad);
	rs->g->st->reads++;
	if (rc == 0) {
		r->copied = true;
		return 0;
	}
	vlog_at(LOG_ERR, &(struct log_where){ .chunk = r->from.chunk, .has_chunk = true,
		.slot = r->from.slot + (rc == -EBADMSG ? bad.index : 0) },
	     "gc: chunk %016" PRIx64 " slot %u: %s; not moved", r->from.chunk,
	     r->from.slot + (rc == -EBADMSG ? bad.index : 0),
	     rc == -EBADMSG ? chunk_bad_str(&bad, r->from.lblock + bad.index, why, sizeof(why))
			    : log_strerror(rc));
	if (rc != -EBADMSG || bad.index >= r->from.nblocks)
		return 0;                       /* left out */
	if (bad.index > 0) {                    /* the good part, again */
		rc = run_split(rs, i, bad.index);
		return rc ? rc : 1;
	}
	/* the bad block alone is left out; the rest is a run of its own */
	return r->from.nblocks > 1 ? run_split(rs, i, 1) : 0;
}

/*
 * Where the runs [first, *end) copied into one append landed (locs): in
 * consecutive slots of one chunk, or, across the end of the active chunk,
 * split in two (*end moves).
 */
static int runs_landed(struct runs *rs, size_t first, size_t *end, const struct chunk_loc *locs)
{
	size_t k = 0;
	int rc = 0;

	for (size_t j = first; j < *end && !rc; j++) {
		uint32_t m = 1;

		if (!rs->r[j].copied)
			continue;
		rs->r[j].copied = false;
		while (m < rs->r[j].from.nblocks && locs[k + m].chunk_id == locs[k].chunk_id &&
		       locs[k + m].slot == locs[k].slot + m)
			m++;
		if (m < rs->r[j].from.nblocks) {
			rc = run_split(rs, j, m);
			if (rc)
				break;
			rs->r[j + 1].copied = true;
			(*end)++;
		}
		rs->r[j].to_chunk = locs[k].chunk_id;
		rs->r[j].to_slot = locs[k].slot;
		k += m;
	}
	return rc;
}

/*
 * Copy the runs to the active chunk, in their order: as many whole runs as
 * fill the buffer are read (one chunk_read each) and appended with one
 * chunk_append.  Sets to_chunk and to_slot of every run copied.
 */
static int copy_runs(struct ns *ns, struct runs *rs)
{
	size_t bs = ns->bs, i = 0;
	uint8_t *buf = malloc(rs->max_blocks * bs);
	struct chunk_loc *locs = malloc(rs->max_blocks * sizeof(*locs));
	int rc = buf && locs ? 0 : -ENOMEM;

	while (i < rs->n && !rc) {
		size_t first = i, end = i, before;
		uint32_t n = 0, fill = 0;

		/* gather_ext made no run longer than the buffer */
		for (; end < rs->n && n + rs->r[end].from.nblocks <= rs->max_blocks; end++) {
			struct chunk_loc at = { .chunk_id = rs->r[end].from.chunk,
						.slot = rs->r[end].from.slot };

			chunk_prefetch(ns->cs, &at, rs->r[end].from.nblocks);
			n += rs->r[end].from.nblocks;
		}
		while (i < end && !rc) {
			before = rs->n;
			rc = read_run(ns, rs, i, buf + fill * bs, locs + fill);
			end += rs->n - before;  /* a split: its blocks were counted */
			if (rc > 0) {
				rc = 0;
				continue;       /* read run i again */
			}
			if (rs->r[i].copied)
				fill += rs->r[i].from.nblocks;
			i++;
		}
		if (!rc && fill) {
			rc = chunk_append(ns->cs, buf, fill, CHUNK_KIND_RELOC, locs);
			rs->g->st->appends++;
		}
		if (!rc)
			rc = runs_landed(rs, first, &end, locs);
		i = end;
	}
	free(buf);
	free(locs);
	if (rc)
		for (size_t j = 0; j < rs->n; j++)
			rs->r[j].to_chunk = 0;
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
static void drop_moved(struct ns *ns, const struct runs *rs)
{
	uint64_t *ids = malloc((rs->n ? rs->n : 1) * sizeof(*ids));
	size_t n = 0;

	for (size_t i = 0; i < rs->n; i++) {
		uint64_t id = rs->r[i].from.chunk;

		if (!rs->r[i].to_chunk)
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

/*
 * Repoint every run copied, one guarded bmap_ext_relocate each, in one
 * transaction, then drop the map pages naming the old chunks.  Assumes
 * db_mu.  A run whose row changed since the scan (a newer write, a merge
 * into another node) keeps its row and its old chunk; its copy is garbage.
 * The victims' refs are lowered by what moved.
 */
static int repoint(struct ns *ns, struct gc *g, struct runs *rs)
{
	int rc;

	assert(lock_held(&ns->db_mu));
	rc = ns_txn_begin(ns);
	for (size_t i = 0; i < rs->n && !rc; i++) {
		struct run *r = &rs->r[i];

		if (!r->to_chunk)
			continue;
		rc = bmap_ext_relocate(ns->bm, r->node, &r->from, r->to_chunk, r->to_slot);
		g->st->relocates++;
		if (rc == -ENOENT) {
			/* rewritten or merged meanwhile: its copy is garbage */
			g->st->lost++;
			r->to_chunk = 0;
			rc = 0;
		}
	}
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc) {
		ns_txn_rollback(ns);
		return rc;
	}
	drop_moved(ns, rs);
	for (size_t i = 0; i < rs->n; i++) {
		struct chunk_info *c = gc_find(g, rs->r[i].from.chunk);

		if (rs->r[i].to_chunk && c)     /* no c: a row names a missing file */
			c->refs -= rs->r[i].from.nblocks;
		if (rs->r[i].to_chunk)
			g->st->moved += rs->r[i].from.nblocks;
	}
	return 0;
}

/* Copy the runs, sync, and repoint them (the steps timed in *g->st). */
static int move_runs(struct ns *ns, struct gc *g, struct runs *rs)
{
	int64_t t = ns_now_ns();
	int rc;

	rc = copy_runs(ns, rs);
	g->st->copy_ns += ns_now_ns() - t;
	t = ns_now_ns();
	if (!rc)
		rc = chunk_sync(ns->cs);
	g->st->sync_ns += ns_now_ns() - t;
	if (!rc && ns->gc_copied)
		ns->gc_copied(ns->gc_copied_ctx);
	t = ns_now_ns();
	if (!rc) {
		lock_mutex_lock(&ns->db_mu);
		rc = repoint(ns, g, rs);
		lock_mutex_unlock(&ns->db_mu);
	}
	g->st->repoint_ns += ns_now_ns() - t;
	return rc;
}

static int compact(struct ns *ns, struct gc *g)
{
	struct runs rs = { .g = g, .max_blocks = GC_COPY_MAX_BYTES / ns->bs };
	int rc;

	if (!pick_victims(ns, g))
		return 0;
	rc = bmap_exts_all(ns->bm_scan, gather_ext, &rs);
	if (!rc)
		rc = rs.rc;
	/* the rows now are all the refs there are (none can appear below the
	 * floor); a victim with rows gone since the count has fewer */
	for (size_t i = 0; i < g->n && !rc; i++)
		if (g->c[i].nslots == UINT32_MAX)
			g->c[i].refs = 0;
	for (size_t i = 0; i < rs.n && !rc; i++)
		gc_find(g, rs.r[i].from.chunk)->refs += rs.r[i].from.nblocks;
	if (!rc && rs.n) {              /* qsort(NULL, 0) is undefined */
		/* in slot order, each victim is read front to back; with
		 * defrag, in block order, so that the copies come out whole */
		qsort(rs.r, rs.n, sizeof(rs.r[0]), ns->defrag_min_exts ? cmp_run_lblock : cmp_run);
		rc = move_runs(ns, g, &rs);
	}
	free(rs.r);
	return rc;
}

/* ---- defrag (D5 point 4; -o defrag, off by default) ------------------------- */

/*
 * A window of GC_DEFRAG_WINDOW blocks of a node in which at least
 * ns.defrag_min_exts data rows start (random writes leave one row per
 * block) is rewritten as one run: its rows in lblock order are the runs,
 * copied in that order into consecutive slots, and each repointed with
 * the same guarded relocate, whose put merges a row with the one before it
 * when both continue: the window ends as one row (or a few, around holes
 * and rows it left alone).  Only rows in chunks below the floor (none a
 * volume's delta names), no longer than the copy buffer, within the pass's
 * budget of moved data.
 */
#define GC_DEFRAG_WINDOW   256u

struct frag {
	struct runs *rs;
	uint64_t floor;
	uint64_t node, win;             /* the window being gathered */
	size_t first;                   /* its first run */
	uint64_t budget;                /* blocks left to move */
	uint32_t min_exts;              /* rows that make a window fragmented */
	size_t windows;                 /* kept */
	int rc;
};

/* The window gathered since f->first: kept if fragmented, if rewriting it
 * leaves at most a quarter of its rows, and if it is in the budget; else
 * forgotten.  Copies in consecutive slots merge only rows of adjacent
 * blocks: a window with holes between its rows (every other block
 * written, a child's own rows between blocks it inherits) would come out
 * as many rows as it went in, and be taken again by every pass. */
static void frag_close(struct frag *f)
{
	size_t n = f->rs->n - f->first, after = 0;
	uint64_t blocks = 0;

	for (size_t i = f->first; i < f->rs->n; i++) {
		const struct bmap_ext *x = &f->rs->r[i].from;

		blocks += x->nblocks;
		after += i == f->first || f->rs->r[i - 1].from.lblock +
					  f->rs->r[i - 1].from.nblocks != x->lblock;
	}
	if (n >= f->min_exts && after * 4 <= n && blocks <= f->budget) {
		f->budget -= blocks;
		f->windows++;
	} else {
		f->rs->n = f->first;
	}
	f->first = f->rs->n;
}

static int frag_ext(void *ctx, const struct bmap_ext *e)
{
	struct frag *f = ctx;
	struct runs *rs = f->rs;

	if (e->lblock / GC_DEFRAG_WINDOW != f->win) {
		frag_close(f);
		f->win = e->lblock / GC_DEFRAG_WINDOW;
	}
	if (e->chunk == 0 || e->chunk >= f->floor || e->nblocks > rs->max_blocks)
		return 0;
	if (ARRAY_RESERVE(rs->r, rs->cap, rs->n, 256))
		return f->rc = -ENOMEM;
	rs->r[rs->n++] = (struct run){ .node = f->node, .from = *e };
	return 0;
}

static int add_node(void *ctx, const struct bmap_node *n)
{
	struct ns_queue *q = ctx;

	return ns_queue_push(q, n->id);
}

static int defrag(struct ns *ns, struct gc *g)
{
	struct runs rs = { .g = g, .max_blocks = GC_COPY_MAX_BYTES / ns->bs };
	uint64_t max = GC_MOVE_MAX_BYTES / ns->bs;
	struct frag f = { .rs = &rs, .floor = g->floor, .min_exts = ns->defrag_min_exts,
			  .budget = g->st->moved < max ? max - g->st->moved : 0 };
	struct ns_queue nodes = { 0 };
	int64_t t = ns_now_ns();
	int rc;

	rc = bmap_node_list(ns->bm_scan, add_node, &nodes);
	for (size_t i = 0; i < nodes.n && !rc && f.budget; i++) {
		f.node = nodes.v[i];
		f.win = UINT64_MAX;
		rc = bmap_ext_range(ns->bm_scan, f.node, 0, UINT64_MAX, frag_ext, &f);
		if (!rc)
			rc = f.rc;
		if (!rc)
			frag_close(&f);
	}
	free(nodes.v);
	g->st->work_ns += ns_now_ns() - t;     /* a scan too: the pace counts it */
	g->st->defrag_windows = f.windows;
	if (!rc && rs.n)
		rc = move_runs(ns, g, &rs);
	free(rs.r);
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
	if (!rc && ns->defrag_min_exts)
		rc = defrag(ns, &g);
	for (size_t i = 0; i < g.n && !rc; i++) {
		struct chunk_info *c = &g.c[i];

		if (c->id < g.floor && c->refs == 0 && chunk_remove(ns->cs, c->id) == 0) {
			st->removed++;
			st->freed_slots += c->slots;
		} else {
			st->slots += c->slots;
			st->live += c->refs;
		}
	}
	if (st->removed || st->moved)
		vlog(LOG_INFO, "gc: moved %" PRIu64 " live block(s) (%" PRIu64 " read(s), %" PRIu64
		     " append(s), %" PRIu64 " relocate(s), %" PRIu64 " lost to newer writes;"
		     " %" PRIu64 " window(s) defragmented), removed %" PRIu64 " chunk file(s)"
		     " in %.2f s", st->moved, st->reads, st->appends, st->relocates, st->lost,
		     st->defrag_windows, st->removed,
		     (ns_now_ns() - start) / 1e9);
	if (rc && rc != -EAGAIN)
		vlog(LOG_ERR, "gc: %s", log_strerror(rc));
	free(g.c);
	return rc ? rc : (st->removed || st->moved);
}
