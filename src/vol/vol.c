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
 * THE IN-MEMORY MAP
 * Each entry is the block the volume sees at that logical block, with the
 * generation of the node that holds it: an entry is the vol's own when its
 * generation is v->gen, inherited otherwise.  Taking a snapshot therefore
 * turns every entry into an inherited one by bumping v->gen, in constant
 * time.  Zeroing a block whose row an ancestor might show through must
 * leave a tombstone row; otherwise the row can simply be deleted.  "Might"
 * is decided from the node alone: it has a parent and the block is below
 * its inherit limit (may_inherit).  Asking whether the nearest ancestor
 * holds data at that block is not safe: a background merge can move an
 * ancestor's tombstone into this node, this volume then overwrites that
 * row, and deleting it later would uncover an older ancestor's data.
 *
 * CONCURRENCY
 * v->lock (a rwlock) protects every field marked (L).  Readers copy the
 * entries they need under the read lock and do their I/O without it.
 * Writers append data without the lock and take the write lock only to
 * repoint entries.  A read-modify-write remembers which block it merged
 * into and, under the write lock, repoints only if the entry still shows
 * that block; otherwise another write won the race and it starts over, so
 * two partial writes into one block never lose each other's bytes.
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
#include "vsnapfs/vol.h"

#define NO_TRUNC   UINT64_MAX
#define WIN_BYTES  (1u << 20)           /* blocks handled per step of a long request */
#define LABEL_MAX  128

struct vol {
	struct chunk_store *cs;         /* borrowed; constant */
	uint32_t bs;                    /* block size; constant */
	unsigned bshift;                /* log2(bs); constant */
	bool readonly;                  /* constant */

	/* Held shared by every change (write, truncate, punch) for its whole
	 * length, exclusive by a snapshot: so a snapshot sees no change half
	 * done.  Writer-preferring, so a stream of writes cannot starve it. */
	struct lock_rw gate;

	/* The map does not match the index: not loaded yet (vol_open), or
	 * vol_attach changed the node's parent.  The next read, change or
	 * seek (re)builds it (ensure_fresh). */
	atomic_bool stale;
	struct bmap *bm;                /* for loading; used under ix->db_mu */
	const struct vol_index *ix;     /* the caller's, or NULL: see vol_set_index */

	struct lock_rw lock;
	char label[LABEL_MAX];          /* (L) */
	struct vmap *map;               /* (L) */
	uint64_t size;                  /* (L) bytes */
	uint64_t node;                  /* (L) node that own entries belong to */
	uint32_t gen;                   /* (L) generation of own entries, >= 1 */
	uint64_t inherit;               /* (L) node's inherit limit, blocks */
	bool has_parent;                /* (L) node has a parent (or may have) */
	bool inherit_changed;           /* (L) not yet collected */
	bool size_changed;              /* (L) not yet collected */
	uint64_t own_blocks;            /* (L) own entries holding data */
	uint64_t *dirty;                /* (L) lblocks with VE_DIRTY, each once */
	size_t ndirty, dirty_cap;       /* (L) */
	uint64_t trunc_from;            /* (L) delete own rows >= this at flush */
	uint64_t epoch;                 /* (L) moves when node, gen or stale are set */
};

/* ---- small helpers ------------------------------------------------------ */

static bool is_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	return p[0] == 0 && memcmp(p, p + 1, len - 1) == 0;
}

static uint64_t nblocks_of(const struct vol *v, uint64_t bytes)
{
	return (bytes + v->bs - 1) >> v->bshift;
}

static bool ent_has_data(const struct vmap_ent *e)
{
	return e && e->chunk != 0;
}

static bool ent_own(const struct vol *v, const struct vmap_ent *e)
{
	return ve_gen(e) == v->gen;
}

/* The map is keyed by lblock, and a block keeps its lblock for life (clones
 * share at the same offset, GC copies keep it): the key is the loc's
 * lblock. */
static struct chunk_loc ent_loc(const struct vmap_ent *e, uint64_t lblock)
{
	return (struct chunk_loc){ .chunk_id = e->chunk, .slot = e->slot, .lblock = lblock };
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

/*
 * Point lblock at loc (chunk_id 0: make it read as zeros).  Assumes v->lock
 * is held for writing.
 */
static int set_block(struct vol *v, uint64_t lblock, const struct chunk_loc *loc)
{
	struct vmap_ent *cur = vmap_get(v->map, lblock);
	struct vmap_ent ne = { .chunk = loc->chunk_id, .slot = loc->slot };
	bool anc = may_inherit(v, lblock), was_dirty = cur && (ve_flags(cur) & VE_DIRTY);
	int rc;

	assert(lock_rw_wrheld(&v->lock));
	assert(!loc->chunk_id || loc->lblock == lblock);   /* the block's identity */
	if (!loc->chunk_id && !ent_has_data(cur))
		return 0;               /* already reads as zeros */
	if (cur && ent_own(v, cur) && cur->chunk)
		v->own_blocks--;
	ne.gf = v->gen << VE_FLAG_BITS | (anc ? VE_ANC : 0) | (was_dirty ? VE_DIRTY : 0);
	rc = vmap_put(v->map, lblock, &ne);
	if (rc)
		return rc;
	if (loc->chunk_id)
		v->own_blocks++;
	return mark_dirty(v, lblock, vmap_get(v->map, lblock));
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
	vlog(LOG_ERR, "%s: offset %" PRIu64 ": block in chunk %016" PRIx64 " slot %u %s%s",
	     label, lblock << v->bshift, loc->chunk_id, loc->slot,
	     rc == -EBADMSG ? "fails verification: " : rc == -ENOENT ? "is in a missing chunk file" :
	     "cannot be read", rc == -EBADMSG ? why : "");
}

/* ---- open / close ------------------------------------------------------- */

#define LOAD_TRIES 2                    /* loads from a snapshot before one under db_mu */

struct load {
	uint32_t gen;                   /* of own entries */
	struct vmap *map;               /* being built */
	uint64_t own_blocks;
	uint64_t inherit;               /* the node's */
	bool has_parent;
	bool own;
	int rc;
};

/* One extent of the node being loaded (own) or of an ancestor, clipped to
 * what the node can see of it: one map entry per block, for now (issue 13
 * step 7 replaces the whole-map load by map pages). */
static int load_ext(void *ctx, const struct bmap_ext *x)
{
	struct load *ld = ctx;

	for (uint32_t i = 0; i < x->nblocks; i++) {
		struct vmap_ent ne = { .chunk = x->chunk, .slot = x->chunk ? x->slot + i : 0 };

		if (ld->own) {
			ne.gf = ld->gen << VE_FLAG_BITS;
			if (x->chunk)
				ld->own_blocks++;
		} else {
			if (vmap_get(ld->map, x->lblock + i))
				continue;       /* a nearer node already decided this block */
			/* inherited; a tombstone is kept too, it masks older ancestors */
			ne.gf = 0;
		}
		ld->rc = vmap_put(ld->map, x->lblock + i, &ne);
		if (ld->rc)
			return ld->rc;
	}
	return 0;
}

/*
 * Build from bm the flattened map of node, whose own entries get generation
 * gen: its own rows, then each ancestor's below the running inherit limit;
 * the nearest row wins.
 */
static int load_map(struct bmap *bm, uint64_t node, uint32_t gen, struct load *out)
{
	struct load ld = { .gen = gen, .own = true };
	struct bmap_node n;
	uint64_t limit, depth = 0;
	int rc;

	ld.map = vmap_new();
	if (!ld.map)
		return -ENOMEM;
	rc = bmap_node_get(bm, node, &n);
	if (rc)
		goto fail;
	ld.inherit = n.inherit;
	ld.has_parent = n.parent != 0;
	rc = bmap_ext_range(bm, node, 0, BMAP_LBLOCK_LIMIT, load_ext, &ld);
	if (rc)
		goto fail;
	ld.own = false;
	limit = n.inherit;
	while (n.parent && limit) {
		uint64_t id = n.parent;

		if (++depth > (1u << 24)) {
			vlog(LOG_ERR, "node %" PRIu64 ": ancestor chain loops", node);
			rc = -EUCLEAN;
			goto fail;
		}
		rc = bmap_node_get(bm, id, &n);
		if (!rc)
			rc = bmap_ext_range(bm, id, 0, limit, load_ext, &ld);
		if (rc)
			goto fail;
		if (n.inherit < limit)
			limit = n.inherit;
	}
	*out = ld;
	return 0;
fail:
	vmap_free(ld.map);
	return ld.rc ? ld.rc : rc;
}

/* Make ld v's map.  Assumes v->lock held for writing. */
static void install(struct vol *v, struct load *ld)
{
	assert(lock_rw_wrheld(&v->lock));
	vmap_free(v->map);
	v->map = ld->map;
	v->own_blocks = ld->own_blocks;
	v->inherit = ld->inherit;
	v->has_parent = ld->has_parent;
	v->epoch++;
	atomic_store(&v->stale, false);
}

/* Load from v->bm, holding db_mu (if any) throughout. */
static int load_locked(struct vol *v, struct lock_mutex *db_mu)
{
	struct load ld;
	int rc = 0;

	if (db_mu)
		lock_mutex_lock(db_mu);
	lock_rw_wrlock(&v->lock);
	if (atomic_load(&v->stale)) {
		rc = load_map(v->bm, v->node, v->gen, &ld);
		if (!rc)
			install(v, &ld);
	}
	lock_rw_unlock(&v->lock);
	if (db_mu)
		lock_mutex_unlock(db_mu);
	return rc;
}

/*
 * Load from a snapshot of ix->load taken under db_mu, without holding it
 * (see vol_set_index); install it if neither the index (ix->changes) nor v
 * (epoch: vol_attach, vol_reset, vol_switch_node) changed meanwhile, else
 * -EAGAIN.  Assumes ix->load_mu.
 */
static int load_snapshot(struct vol *v, const struct vol_index *ix)
{
	struct load ld;
	uint64_t node, changes, epoch;
	uint32_t gen;
	int rc;

	assert(lock_held(ix->load_mu));
	lock_mutex_lock(ix->db_mu);
	lock_rw_rdlock(&v->lock);
	node = v->node;
	gen = v->gen;
	epoch = v->epoch;
	lock_rw_unlock(&v->lock);
	changes = ix->changes(ix->ctx);
	rc = bmap_snapshot_begin(ix->load);
	lock_mutex_unlock(ix->db_mu);
	if (rc)
		return rc;
	rc = load_map(ix->load, node, gen, &ld);
	bmap_snapshot_end(ix->load);
	if (rc)
		return rc;
	if (ix->loaded)
		ix->loaded(ix->ctx);

	lock_mutex_lock(ix->db_mu);
	lock_rw_wrlock(&v->lock);
	if (!atomic_load(&v->stale)) {
		rc = 0;                 /* another way made it fresh */
	} else if (v->epoch != epoch || ix->changes(ix->ctx) != changes) {
		rc = -EAGAIN;
	} else {
		struct bmap_node n;

		/* a merge into the node (not counted by changes) lowers its
		 * inherit limit or drops its parent; the rows it moved show what
		 * they showed, from where they were */
		rc = bmap_node_get(v->bm, node, &n);
		if (!rc) {
			ld.inherit = n.inherit;
			ld.has_parent = n.parent != 0;
			install(v, &ld);
			ld.map = NULL;
		}
	}
	lock_rw_unlock(&v->lock);
	lock_mutex_unlock(ix->db_mu);
	vmap_free(ld.map);
	return rc;
}

static void log_load_error(struct vol *v, int level, const char *how, int rc)
{
	char label[LABEL_MAX];

	copy_label(v, label);
	vlog(level, "%s: loading the block map%s: %s", label, how, strerror(-rc));
}

/* Make the map match the index, if it does not.  Takes the index lock, so
 * the caller holds no vol lock and not the gate. */
static int ensure_fresh(struct vol *v)
{
	const struct vol_index *ix = v->ix;
	int rc = -EAGAIN;

	if (!atomic_load(&v->stale))
		return 0;
	if (ix && ix->load_mu)
		lock_mutex_lock(ix->load_mu);
	for (int i = 0; ix && ix->load && i < LOAD_TRIES && rc == -EAGAIN; i++)
		rc = atomic_load(&v->stale) ? load_snapshot(v, ix) : 0;
	if (rc && rc != -EAGAIN)
		log_load_error(v, LOG_WARNING, " from a snapshot (now under the index lock)", rc);
	if (rc)
		rc = load_locked(v, ix ? ix->db_mu : NULL);
	if (ix && ix->load_mu)
		lock_mutex_unlock(ix->load_mu);
	if (rc)
		log_load_error(v, LOG_ERR, "", rc);
	return rc;
}

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
	v->node = node;
	v->size = size;
	v->gen = 1;
	v->trunc_from = NO_TRUNC;
	snprintf(v->label, sizeof(v->label), "%s", label);
	lock_rw_init(&v->lock, LOCK_VOL, "vol.lock", false);
	lock_rw_init(&v->gate, LOCK_VOL_GATE, "vol.gate", true);
	v->bm = bm;
	/* the map is loaded at first use: opening a volume only to clone it
	 * or to truncate it (cp) must not cost its allocated size */
	v->map = vmap_new();
	if (!v->map) {
		rc = -ENOMEM;
		goto fail;
	}
	atomic_store(&v->stale, true);
	rc = bmap_node_get(bm, node, &n);
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
	vmap_free(v->map);
	free(v->dirty);
	lock_rw_destroy(&v->lock);
	lock_rw_destroy(&v->gate);
	free(v);
}

void vol_set_label(struct vol *v, const char *label)
{
	lock_rw_wrlock(&v->lock);
	snprintf(v->label, sizeof(v->label), "%s", label);
	lock_rw_unlock(&v->lock);
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
 * A window whose blocks lie in several runs (a volume with history, a
 * clone, a disk overwritten at random) would read them one after the other,
 * each a wait on the disk when it is not cached.  Ask for all of them first,
 * so the disk reads them at once.  Costs a few page-cache lookups when they
 * are cached.
 */
static void prefetch_runs(struct vol *v, const struct chunk_loc *locs, const bool *has, uint32_t n)
{
	uint32_t first = n, first_run = 0, run;

	for (uint32_t i = 0; i < n; i += run ? run : 1) {
		run = run_at(locs, has, i, n);
		if (!run)
			continue;
		if (first == n) {       /* one run alone is one pread: no hint */
			first = i;
			first_run = run;
			continue;
		}
		if (first_run) {
			chunk_prefetch(v->cs, &locs[first], first_run);
			first_run = 0;
		}
		chunk_prefetch(v->cs, &locs[i], run);
	}
}

/*
 * Read blocks [first, first + n) of which the request wants bytes
 * [lo, lo + len) counted from the start of block first, into dst.  Runs of
 * whole blocks stored in consecutive slots are read with one call straight
 * into dst; partial blocks go through a bounce buffer.
 */
static int read_window(struct vol *v, uint64_t first, uint32_t n, uint32_t lo, size_t len,
		       uint8_t *dst, bool last_try)
{
	struct chunk_loc locs[WIN_BYTES / CHUNK_BLOCK_MIN];
	bool has[WIN_BYTES / CHUNK_BLOCK_MIN];
	uint8_t *bounce = NULL;
	struct chunk_bad bad = { 0 };
	int rc = 0;

	assert(n <= WIN_BYTES / CHUNK_BLOCK_MIN);
	lock_rw_rdlock(&v->lock);
	if (atomic_load(&v->stale)) {
		lock_rw_unlock(&v->lock);
		return -EAGAIN;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct vmap_ent *e = vmap_get(v->map, first + i);

		has[i] = ent_has_data(e);
		if (has[i])
			locs[i] = ent_loc(e, first + i);
	}
	lock_rw_unlock(&v->lock);

	prefetch_runs(v, locs, has, n);
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
		if (from == bstart && to == bstart + v->bs) {
			/* whole blocks: consecutive slots of one chunk, up to the
			 * last whole block the request wants */
			run = run_at(locs, has, i, n);
			while (((uint64_t)(i + run) << v->bshift) > lo + len)
				run--;
			rc = chunk_read(v->cs, &locs[i], run, d, &bad);
		} else {
			if (!bounce && !(bounce = malloc(v->bs))) {
				rc = -ENOMEM;
				break;
			}
			bad.index = 0;
			rc = chunk_read(v->cs, &locs[i], 1, bounce, &bad);
			if (!rc)
				memcpy(d, bounce + (from - bstart), to - from);
		}
		if (rc == -ENOENT && !last_try)
			break;          /* the block moved and GC removed its chunk: look again */
		if (rc) {
			uint32_t at = rc == -EBADMSG ? i + bad.index : i;

			log_bad_block(v, first + at, &locs[at], rc, &bad);
			rc = rc == -ENOMEM ? rc : -EIO;
			break;
		}
		i += run;
	}
	free(bounce);
	return rc;
}

ssize_t vol_read(struct vol *v, void *buf, size_t len, uint64_t off)
{
	uint64_t size, done = 0;
	int rc;

	rc = ensure_fresh(v);
	if (rc)
		return rc;
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
		if (rc == -EAGAIN) {
			rc = ensure_fresh(v);
			if (rc)
				return rc;
			continue;
		}
		if (rc == -ENOENT)
			rc = read_window(v, first, n, lo, step, (uint8_t *)buf + done, true);
		if (rc)
			return rc;
		done += step;
	}
	return done;
}

/* ---- write -------------------------------------------------------------- */

/* Take the gate (shared) with a fresh map: reload first, outside the gate,
 * since reloading takes the index lock, which ranks before the gate. */
static int gate_enter(struct vol *v)
{
	for (;;) {
		int rc = ensure_fresh(v);

		if (rc)
			return rc;
		lock_rw_rdlock(&v->gate);
		if (!atomic_load(&v->stale))
			return 0;
		lock_rw_unlock(&v->gate);
	}
}

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
		struct vmap_ent *e;
		bool same;

		lock_rw_rdlock(&v->lock);
		e = vmap_get(v->map, lblock);
		if (ent_has_data(e))
			old = ent_loc(e, lblock);
		lock_rw_unlock(&v->lock);

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
			rc = chunk_append(v->cs, blk, 1, CHUNK_KIND_DATA, &nl);
			if (rc)
				break;
		}

		lock_rw_wrlock(&v->lock);
		e = vmap_get(v->map, lblock);
		same = ent_has_data(e) ? e->chunk == old.chunk_id && e->slot == old.slot
				       : old.chunk_id == 0;
		rc = same ? set_block(v, lblock, &nl) : 0;
		lock_rw_unlock(&v->lock);
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
	lock_rw_wrlock(&v->lock);
	for (uint32_t i = 0; i < n && !rc; i++)
		rc = set_block(v, first + i, &locs[i]);
	lock_rw_unlock(&v->lock);
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
	rc = gate_enter(v);
	if (rc)
		return rc;
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

/* Make [first, end) read as zeros.  Assumes v->lock is held for writing. */
static int zero_blocks_locked(struct vol *v, uint64_t first, uint64_t end)
{
	static const struct chunk_loc zero;
	uint64_t key = first;
	struct vmap_ent *e;
	int rc = 0;

	assert(lock_rw_wrheld(&v->lock));
	while (!rc && (e = vmap_next(v->map, key, &key)) && key < end) {
		rc = set_block(v, key, &zero);
		key++;
	}
	return rc;
}

static int punch(struct vol *v, uint64_t off, uint64_t len);

int vol_punch(struct vol *v, uint64_t off, uint64_t len)
{
	int rc;

	if (v->readonly)
		return -EROFS;
	rc = gate_enter(v);
	if (rc)
		return rc;
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
	if (rc)
		return rc;
	lock_rw_wrlock(&v->lock);
	rc = zero_blocks_locked(v, first, last);
	lock_rw_unlock(&v->lock);
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
	rc = gate_enter(v);
	if (rc)
		return rc;
	rc = truncate_to(v, size);
	lock_rw_unlock(&v->gate);
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

	lock_rw_wrlock(&v->lock);
	if (size < v->size) {
		nb = nblocks_of(v, size);
		key = nb;
		while ((e = vmap_next(v->map, key, &key))) {
			if (ent_own(v, e) && e->chunk)
				v->own_blocks--;
			vmap_del(v->map, key);
			key++;
		}
		if (nb < v->trunc_from)
			v->trunc_from = nb;
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
	return rc;
}

int vol_seek(struct vol *v, uint64_t off, int whence, uint64_t *out)
{
	uint64_t key = off >> v->bshift, nb, pos = 0;
	struct vmap_ent *e;
	int rc = ensure_fresh(v);

	if (rc)
		return rc;
	lock_rw_rdlock(&v->lock);
	nb = nblocks_of(v, v->size);
	if (off >= v->size) {
		rc = -ENXIO;
	} else if (whence == SEEK_DATA) {
		while ((e = vmap_next(v->map, key, &key)) && key < nb && !e->chunk)
			key++;
		if (!e || key >= nb)
			rc = -ENXIO;
		else
			pos = key << v->bshift;
	} else {
		while (key < nb && ent_has_data(vmap_get(v->map, key)))
			key++;
		pos = key << v->bshift;
		if (pos > v->size)
			pos = v->size;
	}
	if (!rc)
		*out = pos > off ? pos : off;
	lock_rw_unlock(&v->lock);
	return rc;
}

/* ---- state -------------------------------------------------------------- */

#define LOCKED_GET(v, expr) ({ __typeof__(expr) _x; \
	lock_rw_rdlock(&(v)->lock); _x = (expr); lock_rw_unlock(&(v)->lock); _x; })

uint64_t vol_size(struct vol *v) { return LOCKED_GET(v, v->size); }
uint64_t vol_node(struct vol *v) { return LOCKED_GET(v, v->node); }
uint64_t vol_own_blocks(struct vol *v) { return LOCKED_GET(v, v->own_blocks); }
bool vol_loaded(struct vol *v) { return !atomic_load(&v->stale); }

/* Has v changes vol_collect has not taken?  Assumes v->lock. */
static bool uncollected(const struct vol *v)
{
	assert(lock_held(&v->lock));
	return v->ndirty || v->size_changed || v->inherit_changed || v->trunc_from != NO_TRUNC;
}

bool vol_is_dirty(struct vol *v)
{
	return LOCKED_GET(v, uncollected(v));
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

int vol_switch_node(struct vol *v, uint64_t node, uint64_t inherit)
{
	int rc = 0;

	assert(lock_rw_wrheld(&v->gate));
	lock_rw_wrlock(&v->lock);
	if (uncollected(v)) {
		rc = -EBUSY;
	} else {
		/* every entry of generation gen becomes inherited */
		v->node = node;
		v->gen++;
		v->epoch++;
		v->inherit = inherit;
		v->has_parent = true;
		v->own_blocks = 0;
	}
	lock_rw_unlock(&v->lock);
	return rc;
}

void vol_set_index(struct vol *v, const struct vol_index *ix)
{
	v->ix = ix;
}

void vol_reset(struct vol *v, uint64_t node)
{
	struct vmap *empty = vmap_new();

	assert(lock_rw_wrheld(&v->gate));
	lock_rw_wrlock(&v->lock);
	if (empty) {
		vmap_free(v->map);
		v->map = empty;
	} else {
		/* no memory for a new root: empty the old map in place */
		uint64_t key = 0;

		while (vmap_next(v->map, key, &key))
			vmap_del(v->map, key);
	}
	v->node = node;
	v->gen++;
	v->epoch++;
	v->inherit = 0;
	v->has_parent = false;
	v->own_blocks = 0;
	v->size = 0;
	v->ndirty = 0;
	v->trunc_from = NO_TRUNC;
	v->inherit_changed = false;
	v->size_changed = false;
	atomic_store(&v->stale, false);
	lock_rw_unlock(&v->lock);
}

int vol_attach(struct vol *v, uint64_t inherit, uint64_t size)
{
	int rc = 0;

	assert(lock_rw_wrheld(&v->gate));
	lock_rw_wrlock(&v->lock);
	if (uncollected(v)) {
		rc = -EBUSY;
	} else {
		v->inherit = inherit;
		v->has_parent = true;
		v->size = size;
		v->epoch++;
		atomic_store(&v->stale, true);
	}
	lock_rw_unlock(&v->lock);
	return rc;
}

void vol_relocate(struct vol *v, uint64_t lblock, const struct chunk_loc *from,
		  const struct chunk_loc *to)
{
	struct vmap_ent *e;

	lock_rw_wrlock(&v->lock);
	e = vmap_get(v->map, lblock);
	if (e && e->chunk == from->chunk_id && e->slot == from->slot) {
		e->chunk = to->chunk_id;
		e->slot = to->slot;
	}
	lock_rw_unlock(&v->lock);
}

void vol_inherit_lower(struct vol *v, uint64_t limit)
{
	lock_rw_wrlock(&v->lock);
	if (limit < v->inherit)
		v->inherit = limit;
	lock_rw_unlock(&v->lock);
}

bool vol_maps_from(struct vol *v, uint64_t from)
{
	uint64_t key;

	/* a stale map is about to be rebuilt from the index: the caller asks
	 * the index instead (see ns_copy_range) */
	return LOCKED_GET(v, !atomic_load(&v->stale) && vmap_next(v->map, from, &key) != NULL);
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
	b->v = v;
	b->node = v->node;
	b->size = v->size;
	b->trunc_from = v->trunc_from;
	b->inherit = v->inherit;
	b->inherit_changed = v->inherit_changed;
	for (size_t i = 0; i < v->ndirty && !rc; i++) {
		struct vmap_ent *e = vmap_get(v->map, v->dirty[i]);
		struct vol_rec r;

		if (!e || !(ve_flags(e) & VE_DIRTY))
			continue;       /* dropped by a truncate: trunc_from covers it */
		r.lblock = v->dirty[i];
		r.loc = ent_loc(e, v->dirty[i]);
		r.anc = ve_flags(e) & VE_ANC;
		rc = batch_push(b, &r);
		if (!rc)
			e->gf &= ~VE_DIRTY;
	}
	if (rc) {
		/* give back what was taken; nothing is lost, the flush fails */
		for (size_t i = 0; i < b->nrecs; i++)
			vmap_get(v->map, b->recs[i].lblock)->gf |= VE_DIRTY;
		b->nrecs = 0;
	} else {
		v->ndirty = 0;
		v->trunc_from = NO_TRUNC;
		v->inherit_changed = false;
		v->size_changed = false;
	}
	lock_rw_unlock(&v->lock);
	/* in index order: the flush's upserts then walk the B-tree forwards,
	 * which puts rows faster than scattered (docs/performance.md, "Rows in
	 * index order") */
	if (b->nrecs > 1)
		qsort(b->recs, b->nrecs, sizeof(b->recs[0]), cmp_rec);
	return rc;
}

/* What a record asks of the index: a data block, a tombstone (an ancestor
 * may show data there), or nothing (a plain hole). */
enum rec_op { REC_DATA, REC_TOMB, REC_DEL };

static enum rec_op rec_op(const struct vol_rec *r)
{
	return r->loc.chunk_id ? REC_DATA : r->anc ? REC_TOMB : REC_DEL;
}

/* Does record r continue the run [first, r) as one extent? */
static bool rec_continues(const struct vol_rec *first, const struct vol_rec *r, uint32_t n)
{
	enum rec_op op = rec_op(first);

	if (r->lblock != first->lblock + n || rec_op(r) != op || n == UINT32_MAX)
		return false;
	return op != REC_DATA ||
	       (r->loc.chunk_id == first->loc.chunk_id && r->loc.slot == first->loc.slot + n);
}

int vol_batch_apply(struct vol_batch *b, struct bmap *bm)
{
	int rc = 0;

	if (b->trunc_from != NO_TRUNC)
		rc = bmap_ext_del_from(bm, b->node, b->trunc_from);
	/* the records are sorted (vol_collect): each run of consecutive blocks
	 * written together is one extent */
	for (size_t i = 0, n; i < b->nrecs && !rc; i += n) {
		const struct vol_rec *r = &b->recs[i];
		struct bmap_ext x;

		for (n = 1; i + n < b->nrecs && rec_continues(r, &b->recs[i + n], n); n++)
			;
		x = (struct bmap_ext){ .lblock = r->lblock, .nblocks = n,
				       .chunk = r->loc.chunk_id, .slot = r->loc.slot };
		if (rec_op(r) == REC_DEL)
			rc = bmap_ext_del(bm, b->node, r->lblock, n);
		else
			rc = bmap_ext_put(bm, b->node, &x);
	}
	if (!rc && b->inherit_changed) {
		struct bmap_node n;

		rc = bmap_node_get(bm, b->node, &n);
		if (!rc) {
			n.inherit = b->inherit;
			rc = bmap_node_update(bm, &n);
		}
	}
	return rc;
}

void vol_batch_done(struct vol_batch *b, int rc)
{
	struct vol *v = b->v;

	if (!v)
		return;
	lock_rw_wrlock(&v->lock);
	for (size_t i = 0; i < b->nrecs; i++) {
		const struct vol_rec *r = &b->recs[i];
		struct vmap_ent *e = vmap_get(v->map, r->lblock);

		if (!e || (ve_flags(e) & VE_DIRTY))
			continue;       /* rewritten (or truncated) since: newer state wins */
		if (rc) {
			if (mark_dirty(v, r->lblock, e))
				vlog(LOG_CRIT, "%s: out of memory re-queueing a block", v->label);
		} else if (!e->chunk && ent_own(v, e) && !(ve_flags(e) & VE_ANC)) {
			vmap_del(v->map, r->lblock);    /* its row is gone: plain hole */
		}
	}
	if (rc) {
		if (b->trunc_from < v->trunc_from)
			v->trunc_from = b->trunc_from;
		v->inherit_changed |= b->inherit_changed;
		v->size_changed = true;
	}
	lock_rw_unlock(&v->lock);
}

void vol_batch_free(struct vol_batch *b)
{
	free(b->recs);
	memset(b, 0, sizeof(*b));
}
