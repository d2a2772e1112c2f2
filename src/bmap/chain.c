/*
 * chain: read-only queries over a node's chain of ancestors
 * (vsnapfs/bmap.h, "reading a node's chain").  Built on bmap_node_get and
 * bmap_ext_range only, with src/emap for the arithmetic of extents; no SQL.
 *
 * A chain is the node, its parent, and so on to a root, each with the limit
 * below which the first node sees it: no limit for the node itself, then
 * the running minimum of the inherit limits of the nodes below (a node at
 * limit 0 is still in the chain: it is an ancestor, only it shows nothing).
 *
 * Diff of two nodes A and B (docs/design.md, "Diff of two nodes").  C is
 * the nearest node of B's chain that is in A's chain.  Where A and B
 * differ, some node strictly between one of them and C has an extent, or
 * the two sides' limits at C differ.  So:
 *
 *   1. fold A's nodes below C into one map (farthest first, each clipped at
 *      its limit, nearer extents put over farther ones): foldA shows what
 *      A shows wherever A's own history decided the block; the same for B;
 *   2. walk both folds and the two limits at C (LA, LB) in one pass, run by
 *      run.  Where a fold has no extent, that side shows C's content below
 *      its limit and zeros above it.  Two fold values compare by (chunk,
 *      slot); a data block of a fold never equals C's content, since each
 *      (chunk, slot) is covered by one extent only (check verifies it);
 *      only a tombstone against C's content, or C's content against zeros
 *      (between LA and LB), needs to know C's content;
 *   3. resolve C's content over just those runs (resolve()), then emit.
 *
 * The cost is the extents of the nodes between A, B and C, plus C's chain
 * where it is needed, never a walk over the volume's blocks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vsnapfs/array.h"
#include "vsnapfs/bmap.h"
#include "vsnapfs/chunk.h"
#include "vsnapfs/emap.h"

#define CHAIN_MAX_DEPTH (1u << 24)

struct link {
	uint64_t id;
	uint64_t limit;                 /* the first node sees this one below it */
};

struct chain {
	struct link *v;
	size_t n, cap;
};

struct ranges {                         /* sorted, disjoint [lo, hi) */
	struct {
		uint64_t lo, hi;
	} *v;
	size_t n, cap;
};

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static int chain_load(struct bmap *b, uint64_t node, struct chain *ch)
{
	uint64_t limit = BMAP_LBLOCK_LIMIT, id = node;
	struct bmap_node n;
	int rc;

	ch->n = 0;
	for (;;) {
		if (ch->n >= CHAIN_MAX_DEPTH)
			return -EUCLEAN;        /* a parent loop */
		rc = bmap_node_get(b, id, &n);
		if (rc)
			return rc == -ENOENT && id != node ? -EUCLEAN : rc;
		if (ARRAY_RESERVE(ch->v, ch->cap, ch->n, 16))
			return -ENOMEM;
		ch->v[ch->n++] = (struct link){ id, limit };
		if (!n.parent)
			return 0;
		limit = min_u64(limit, n.inherit);
		id = n.parent;
	}
}

static int ranges_add(struct ranges *r, uint64_t lo, uint64_t hi)
{
	if (lo >= hi)
		return 0;
	if (r->n && r->v[r->n - 1].hi == lo) {
		r->v[r->n - 1].hi = hi;
		return 0;
	}
	if (ARRAY_RESERVE(r->v, r->cap, r->n, 64))
		return -ENOMEM;
	r->v[r->n].lo = lo;
	r->v[r->n++].hi = hi;
	return 0;
}

/* An extent into a map, over whatever the map has there. */
static int ext_put(void *ctx, const struct bmap_ext *x)
{
	struct emap_ext e = { .lblock = x->lblock, .nblocks = x->nblocks, .chunk = x->chunk,
			      .slot = x->chunk ? x->slot : 0 };

	return emap_put(ctx, &e, NULL);
}

/*
 * Resolve what the chain's first node shows over the ranges in want: every
 * block of them that some node of the chain decides (an extent below that
 * node's limit, the nearest winning) gets that extent in res; the blocks
 * left as gaps read as zeros.  want is used up.  One query per node and
 * range still undecided; a node stops the walk once nothing is.
 */
static int resolve(struct bmap *b, const struct chain *ch, struct ranges *want,
		   struct emap *res)
{
	struct ranges next = { 0 };
	int rc = 0;

	for (size_t i = 0; i < ch->n && want->n && !rc; i++) {
		uint64_t lim = ch->v[i].limit, next_lim = i + 1 < ch->n ? ch->v[i + 1].limit : 0;

		/* want holds only gaps of res, so the puts overwrite nothing */
		for (size_t k = 0; k < want->n && !rc; k++) {
			uint64_t hi = min_u64(want->v[k].hi, lim);

			if (want->v[k].lo < hi)
				rc = bmap_ext_range(b, ch->v[i].id, want->v[k].lo, hi, ext_put, res);
		}
		next.n = 0;
		for (size_t k = 0; k < want->n && !rc; k++) {
			uint64_t hi = min_u64(want->v[k].hi, next_lim);
			struct emap_run r;

			for (uint64_t pos = want->v[k].lo; pos < hi && !rc; pos += r.nblocks) {
				emap_next(res, pos, hi, &r);
				if (r.kind == EMAP_UNMAPPED)
					rc = ranges_add(&next, pos, pos + r.nblocks);
			}
		}
		struct ranges t = *want;
		*want = next;
		next = t;
	}
	free(next.v);
	return rc;
}

/* ---- what a child shows of its parent ---------------------------------------- */

struct shown {
	uint64_t pos;                   /* the next block not yet accounted for */
	int (*fn)(void *ctx, uint64_t lblock, uint64_t nblocks);
	void *ctx;
};

static int shown_ext(void *ctx, const struct bmap_ext *x)
{
	struct shown *s = ctx;
	int rc = 0;

	if (x->lblock > s->pos)
		rc = s->fn(s->ctx, s->pos, x->lblock - s->pos);
	s->pos = x->lblock + x->nblocks;
	return rc;
}

int bmap_node_shown(struct bmap *b, const struct bmap_node *child, uint64_t from,
		    uint64_t below, int (*fn)(void *ctx, uint64_t lblock, uint64_t nblocks),
		    void *ctx)
{
	struct shown s = { .pos = from, .fn = fn, .ctx = ctx };
	int rc;

	if (!child->parent)
		return 0;
	below = min_u64(below, min_u64(child->inherit, BMAP_LBLOCK_LIMIT));
	if (from >= below)
		return 0;
	rc = bmap_ext_range(b, child->id, from, below, shown_ext, &s);
	if (!rc && s.pos < below)
		rc = fn(ctx, s.pos, below - s.pos);
	return rc;
}

/* ---- runs out, touching runs of one kind merged ------------------------------ */

struct emit {
	struct bmap_run run;            /* held back, nblocks 0: none */
	int (*fn)(void *ctx, const struct bmap_run *r);
	void *ctx;
};

static int emit_run(struct emit *e, uint64_t lblock, uint64_t nblocks, bool data)
{
	int rc = 0;

	if (!nblocks)
		return 0;
	if (e->run.nblocks && e->run.lblock + e->run.nblocks == lblock && e->run.data == data) {
		e->run.nblocks += nblocks;
		return 0;
	}
	if (e->run.nblocks)
		rc = e->fn(e->ctx, &e->run);
	e->run = (struct bmap_run){ lblock, nblocks, data };
	return rc;
}

static int emit_end(struct emit *e)
{
	int rc = e->run.nblocks ? e->fn(e->ctx, &e->run) : 0;

	e->run.nblocks = 0;
	return rc;
}

int bmap_node_content(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
		      int (*fn)(void *ctx, const struct bmap_run *r), void *ctx)
{
	struct emit e = { .fn = fn, .ctx = ctx };
	struct chain ch = { 0 };
	struct ranges want = { 0 };
	struct emap *res = emap_new(CHUNK_NSLOTS(bmap_block_size(b)));
	struct emap_run r;
	int rc;

	below = min_u64(below, BMAP_LBLOCK_LIMIT);
	rc = res ? chain_load(b, node, &ch) : -ENOMEM;
	if (!rc)
		rc = ranges_add(&want, from, below);
	if (!rc)
		rc = resolve(b, &ch, &want, res);
	for (uint64_t pos = from; pos < below && !rc; pos += r.nblocks) {
		emap_next(res, pos, below, &r);
		rc = emit_run(&e, pos, r.nblocks, r.kind == EMAP_DATA);
	}
	if (!rc)
		rc = emit_end(&e);
	emap_free(res);
	free(ch.v);
	free(want.v);
	return rc;
}

static int count_data(void *ctx, const struct bmap_run *r)
{
	if (r->data)
		*(uint64_t *)ctx += r->nblocks;
	return 0;
}

/* Counted a window at a time, so that memory stays bounded by the extents
 * of one window, whatever the size of the volume. */
#define COUNT_WINDOW (1ull << 20)

int bmap_node_data_blocks(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
			  uint64_t *count)
{
	int rc = 0;

	*count = 0;
	below = min_u64(below, BMAP_LBLOCK_LIMIT);
	for (uint64_t lo = from; lo < below && !rc; lo += COUNT_WINDOW)
		rc = bmap_node_content(b, node, lo, min_u64(below, lo + COUNT_WINDOW), count_data,
				       count);
	return rc;
}

/* ---- diff -------------------------------------------------------------------- */

/* What a segment of the walk needs before it is known to differ. */
enum seg_rule {
	SEG_DATA,                       /* differs; B shows data */
	SEG_ZERO,                       /* differs; B shows zeros */
	SEG_IF_C_DATA_B_DATA,           /* differs where C has data, which B shows */
	SEG_IF_C_DATA_B_ZERO,           /* differs where C has data; B shows zeros */
	SEG_B_SHOWS_C,                  /* differs; B shows C's content */
};

struct seg {
	uint64_t lblock, nblocks;
	enum seg_rule rule;
};

struct diff {
	struct seg *v;
	size_t n, cap;
	struct ranges want;             /* where C's content is needed */
};

static int seg_add(struct diff *d, uint64_t lblock, uint64_t nblocks, enum seg_rule rule)
{
	int rc = 0;

	if (ARRAY_RESERVE(d->v, d->cap, d->n, 256))
		return -ENOMEM;
	d->v[d->n++] = (struct seg){ lblock, nblocks, rule };
	if (rule != SEG_DATA && rule != SEG_ZERO)
		rc = ranges_add(&d->want, lblock, lblock + nblocks);
	return rc;
}

/* Nodes ch[0 .. upto) folded into m, nearer over farther, each below its
 * limit and below. */
static int fold(struct bmap *b, const struct chain *ch, size_t upto, uint64_t below,
		struct emap *m)
{
	int rc = 0;

	for (size_t i = upto; i-- > 0 && !rc;)
		rc = bmap_ext_range(b, ch->v[i].id, 0, min_u64(ch->v[i].limit, below), ext_put, m);
	return rc;
}

/* Where the node id is in ch, or ch->n. */
static size_t chain_find(const struct chain *ch, uint64_t id)
{
	size_t i = 0;

	while (i < ch->n && ch->v[i].id != id)
		i++;
	return i;
}

/*
 * One run [pos, pos + n) on which each fold is one run (ra, rb) and each
 * side's view of C does not change: which rule, if any.  A side whose fold
 * has nothing there shows C (below its limit) or zeros.
 */
static int classify(struct diff *d, uint64_t pos, uint64_t n, const struct emap_run *ra,
		    const struct emap_run *rb, bool a_sees_c, bool b_sees_c)
{
	bool a_c = ra->kind == EMAP_UNMAPPED && a_sees_c;
	bool b_c = rb->kind == EMAP_UNMAPPED && b_sees_c;
	bool a_data = ra->kind == EMAP_DATA, b_data = rb->kind == EMAP_DATA;

	if (a_c && b_c)
		return 0;                       /* both show C */
	if (a_c)                                /* B decided the block */
		return seg_add(d, pos, n, b_data ? SEG_DATA : SEG_IF_C_DATA_B_ZERO);
	if (b_c)                                /* A decided it, B shows C */
		return seg_add(d, pos, n, a_data ? SEG_B_SHOWS_C : SEG_IF_C_DATA_B_DATA);
	if (a_data != b_data)
		return seg_add(d, pos, n, b_data ? SEG_DATA : SEG_ZERO);
	if (a_data && (ra->chunk != rb->chunk || ra->slot != rb->slot))
		return seg_add(d, pos, n, SEG_DATA);
	return 0;                               /* both zeros, or one place */
}

static int diff_walk(struct diff *d, const struct emap *fa, const struct emap *fb,
		     uint64_t la, uint64_t lb, uint64_t below)
{
	struct emap_run ra, rb;
	uint64_t end;
	int rc = 0;

	for (uint64_t pos = 0; pos < below && !rc; pos = end) {
		emap_next(fa, pos, below, &ra);
		emap_next(fb, pos, below, &rb);
		end = pos + min_u64(ra.nblocks, rb.nblocks);
		if (pos < la && la < end)
			end = la;
		if (pos < lb && lb < end)
			end = lb;
		rc = classify(d, pos, end - pos, &ra, &rb, pos < la, pos < lb);
	}
	return rc;
}

/* The segments out, those that depend on C looked up in c. */
static int diff_emit(const struct diff *d, const struct emap *c, struct emit *e)
{
	int rc = 0;

	for (size_t i = 0; i < d->n && !rc; i++) {
		const struct seg *s = &d->v[i];
		uint64_t hi = s->lblock + s->nblocks;
		struct emap_run r;

		if (s->rule == SEG_DATA || s->rule == SEG_ZERO) {
			rc = emit_run(e, s->lblock, s->nblocks, s->rule == SEG_DATA);
			continue;
		}
		for (uint64_t pos = s->lblock; pos < hi && !rc; pos += r.nblocks) {
			bool c_data;

			emap_next(c, pos, hi, &r);
			c_data = r.kind == EMAP_DATA;
			if (s->rule == SEG_B_SHOWS_C)
				rc = emit_run(e, pos, r.nblocks, c_data);
			else if (c_data)
				rc = emit_run(e, pos, r.nblocks, s->rule == SEG_IF_C_DATA_B_DATA);
		}
	}
	if (!rc)
		rc = emit_end(e);
	return rc;
}

int bmap_node_diff(struct bmap *b, uint64_t node_a, uint64_t node_b, uint64_t below,
		   int (*fn)(void *ctx, const struct bmap_run *r), void *ctx)
{
	uint32_t nslots = CHUNK_NSLOTS(bmap_block_size(b));
	struct emap *fa = emap_new(nslots), *fb = emap_new(nslots), *c = emap_new(nslots);
	struct chain cha = { 0 }, chb = { 0 }, chc = { 0 };
	struct emit e = { .fn = fn, .ctx = ctx };
	struct diff d = { 0 };
	size_t ia = 0, ib;
	int rc;

	below = min_u64(below, BMAP_LBLOCK_LIMIT);
	rc = fa && fb && c ? 0 : -ENOMEM;
	if (!rc)
		rc = chain_load(b, node_a, &cha);
	if (!rc)
		rc = chain_load(b, node_b, &chb);
	/* the nearest common ancestor: the first of B's chain in A's */
	for (ib = 0; !rc && ib < chb.n; ib++) {
		ia = chain_find(&cha, chb.v[ib].id);
		if (ia < cha.n)
			break;
	}
	if (!rc && ib == chb.n)
		rc = -EXDEV;
	if (!rc)
		rc = fold(b, &cha, ia, below, fa);
	if (!rc)
		rc = fold(b, &chb, ib, below, fb);
	if (!rc)
		rc = diff_walk(&d, fa, fb, cha.v[ia].limit, chb.v[ib].limit, below);
	if (!rc && d.want.n)
		rc = chain_load(b, chb.v[ib].id, &chc);
	if (!rc && d.want.n)
		rc = resolve(b, &chc, &d.want, c);
	if (!rc)
		rc = diff_emit(&d, c, &e);
	emap_free(fa);
	emap_free(fb);
	emap_free(c);
	free(cha.v);
	free(chb.v);
	free(chc.v);
	free(d.v);
	free(d.want.v);
	return rc;
}
