/*
 * Unit tests of the chain queries (src/bmap/chain.c): bmap_node_diff,
 * bmap_node_content, bmap_node_shown.
 *
 * The model test drives an index through the bmap API the way the daemon
 * does (writes into a volume's own node, punches as tombstones or deletes,
 * shrinking truncates that lower the inherit limit, snapshots that freeze a
 * node and give the volume a new child, clones, deletions that merge a
 * released node into its only child) and keeps, beside it, every file's
 * content as a per-block array.  After every few operations it diffs random
 * pairs of files and checks the runs against the arrays, block by block:
 * exactly the blocks whose values differ, with what B shows there; pairs of
 * two lineages must be refused with -EXDEV.  Seed: env TEST_CHAIN_SEED
 * (printed; each run also tries the next seeds), length: TEST_CHAIN_OPS.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "vsnapfs/bmap.h"
#include "../tools/rng.h"

#define MAXF    64                      /* files in the model at once */
#define MAXB    192                     /* blocks per volume at most */

static char dir[64];
static char path[128];

static void setup(void)
{
	strcpy(dir, "/tmp/vsnapfs-chain-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/index.sqlite", dir);
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(chain, .init = setup, .fini = teardown);

static uint64_t rng_state;

static uint64_t rnd(void)
{
	return rng_next(&rng_state);
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *env = getenv(name);

	return env && *env ? strtoull(env, NULL, 0) : dflt;
}

static struct bmap *make_index(void)
{
	struct bmap *b = NULL;

	cr_assert_eq(bmap_create(path, 4096, 1000, 1000), 0);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	return b;
}

/* ---- the model --------------------------------------------------------------- */

struct mfile {
	bool used, live;                /* live: a volume (writable), else a snapshot */
	uint64_t node;
	uint64_t nblocks;               /* its size */
	uint64_t lineage;               /* the root it descends from */
	uint64_t val[MAXB];             /* 0: zeros; else chunk << 20 | slot */
};

struct model {
	struct bmap *b;
	struct mfile f[MAXF];
	uint64_t next_chunk;
};

static size_t pick(struct model *m, int want_live)
{
	size_t idx[MAXF], n = 0;

	for (size_t i = 0; i < MAXF; i++)
		if (m->f[i].used && (want_live < 0 || m->f[i].live == (want_live == 1)))
			idx[n++] = i;
	return n ? idx[rnd() % n] : MAXF;
}

static size_t free_slot(struct model *m)
{
	for (size_t i = 0; i < MAXF; i++)
		if (!m->f[i].used)
			return i;
	return MAXF;
}

static uint64_t new_node(struct model *m, uint64_t parent, uint64_t inherit)
{
	struct bmap_node n = { .parent = parent, .inherit = inherit };

	cr_assert_eq(bmap_node_create(m->b, &n), 0);
	return n.id;
}

static size_t new_volume(struct model *m, uint64_t nblocks)
{
	size_t i = free_slot(m);

	cr_assert_lt(i, MAXF);
	m->f[i] = (struct mfile){ .used = true, .live = true, .nblocks = nblocks };
	m->f[i].node = new_node(m, 0, 0);
	m->f[i].lineage = m->f[i].node;
	return i;
}

static void op_write(struct model *m, struct mfile *v)
{
	uint64_t lo, k;
	struct bmap_ext e;

	if (!v->nblocks)
		return;
	lo = rnd() % v->nblocks;
	k = 1 + rnd() % (v->nblocks - lo < 24 ? v->nblocks - lo : 24);
	e = (struct bmap_ext){ .lblock = lo, .nblocks = (uint32_t)k, .chunk = ++m->next_chunk,
			       .slot = (uint32_t)(rnd() % 64) };
	cr_assert_eq(bmap_ext_put(m->b, v->node, &e), 0);
	for (uint64_t i = 0; i < k; i++)
		v->val[lo + i] = e.chunk << 20 | (e.slot + i);
}

/* A punch or a zero write: a tombstone where the node may inherit, else
 * sometimes a delete (what the daemon does), sometimes a tombstone anyway. */
static void op_punch(struct model *m, struct mfile *v)
{
	struct bmap_node n;
	uint64_t lo, k;

	if (!v->nblocks)
		return;
	lo = rnd() % v->nblocks;
	k = 1 + rnd() % (v->nblocks - lo < 32 ? v->nblocks - lo : 32);
	cr_assert_eq(bmap_node_get(m->b, v->node, &n), 0);
	if ((n.parent && lo < n.inherit) || rnd() % 2) {
		struct bmap_ext e = { .lblock = lo, .nblocks = (uint32_t)k };

		cr_assert_eq(bmap_ext_put(m->b, v->node, &e), 0);
	} else {
		cr_assert_eq(bmap_ext_del(m->b, v->node, lo, k), 0);
	}
	memset(&v->val[lo], 0, k * sizeof(v->val[0]));
}

static void op_truncate(struct model *m, struct mfile *v)
{
	uint64_t nb = rnd() % (MAXB + 1);
	struct bmap_node n;

	if (nb < v->nblocks) {
		cr_assert_eq(bmap_ext_del_from(m->b, v->node, nb), 0);
		cr_assert_eq(bmap_node_get(m->b, v->node, &n), 0);
		if (n.inherit > nb) {
			n.inherit = nb;
			cr_assert_eq(bmap_node_update(m->b, &n), 0);
		}
		memset(&v->val[nb], 0, (v->nblocks - nb) * sizeof(v->val[0]));
	}
	v->nblocks = nb;
}

/* Freeze v's node: the snapshot (or, named NULL, an internal node of a
 * clone of a live volume) keeps it, v gets a new child. */
static void freeze(struct model *m, struct mfile *v, struct mfile *snap)
{
	uint64_t frozen = v->node;

	if (snap) {
		*snap = *v;
		snap->live = false;
	}
	v->node = new_node(m, frozen, v->nblocks);
}

static void op_snapshot(struct model *m, struct mfile *v)
{
	size_t s = free_slot(m);

	if (s < MAXF)
		freeze(m, v, &m->f[s]);
}

/* A clone of a snapshot, or of a live volume (through an internal node
 * that both then share). */
static void op_clone(struct model *m, struct mfile *src)
{
	size_t c = free_slot(m);
	uint64_t parent = src->node;

	if (c == MAXF)
		return;
	if (src->live)
		freeze(m, src, NULL);   /* parent stays the frozen node */
	m->f[c] = *src;
	m->f[c].live = true;
	m->f[c].node = new_node(m, parent, src->nblocks);
}

/* Release a node nothing names: delete it without children, merge it into
 * its only child, keep it with more (what the daemon does). */
static void release(struct model *m, uint64_t node)
{
	uint64_t kids, child;

	for (size_t i = 0; i < MAXF; i++)
		if (m->f[i].used && m->f[i].node == node)
			return;
	cr_assert_eq(bmap_node_children(m->b, node, &kids), 0);
	if (kids == 0) {
		struct bmap_node n;

		cr_assert_eq(bmap_node_get(m->b, node, &n), 0);
		cr_assert_eq(bmap_node_delete(m->b, node), 0);
		if (n.parent)
			release(m, n.parent);
	} else if (kids == 1) {
		cr_assert_eq(bmap_node_only_child(m->b, node, &child), 0);
		cr_assert_eq(bmap_begin(m->b), 0);
		cr_assert_eq(bmap_node_merge(m->b, node, child), 0);
		cr_assert_eq(bmap_commit(m->b), 0);
	}
}

static void op_delete(struct model *m, size_t i)
{
	uint64_t node = m->f[i].node;

	m->f[i].used = false;
	release(m, node);
}

/* ---- checks ---------------------------------------------------------------- */

struct got {
	int8_t kind[MAXB];              /* -1: not reported, 0 zero, 1 data */
	uint64_t next;                  /* runs come in order, not touching alike */
	int last_kind;
	uint64_t below;
};

static int got_run(void *ctx, const struct bmap_run *r)
{
	struct got *g = ctx;

	cr_assert_geq(r->lblock, g->next, "runs out of order or overlapping");
	cr_assert_gt(r->nblocks, 0);
	cr_assert_leq(r->lblock + r->nblocks, g->below, "a run past below");
	cr_assert(!(r->lblock == g->next && g->last_kind == r->data && g->next),
		  "two touching runs of one kind at block %" PRIu64, r->lblock);
	for (uint64_t i = 0; i < r->nblocks; i++)
		g->kind[r->lblock + i] = r->data;
	g->next = r->lblock + r->nblocks;
	g->last_kind = r->data;
	return 0;
}

static void check_diff(struct model *m, const struct mfile *a, const struct mfile *b)
{
	uint64_t below = a->nblocks > b->nblocks ? a->nblocks : b->nblocks;
	struct got g = { .below = below, .last_kind = -1 };
	int rc;

	memset(g.kind, -1, sizeof(g.kind));
	rc = bmap_node_diff(m->b, a->node, b->node, below, got_run, &g);
	if (a->lineage != b->lineage) {
		cr_assert_eq(rc, -EXDEV, "nodes %" PRIu64 " and %" PRIu64 " of two lineages: %d",
			     a->node, b->node, rc);
		return;
	}
	cr_assert_eq(rc, 0, "diff of nodes %" PRIu64 " and %" PRIu64 ": %d", a->node, b->node, rc);
	for (uint64_t i = 0; i < below; i++) {
		uint64_t va = i < a->nblocks ? a->val[i] : 0, vb = i < b->nblocks ? b->val[i] : 0;
		int want = va == vb ? -1 : vb != 0;

		cr_assert_eq(g.kind[i], want, "diff of nodes %" PRIu64 " and %" PRIu64 ", block %"
			     PRIu64 ": got %d, want %d (a %#" PRIx64 ", b %#" PRIx64 ")", a->node,
			     b->node, i, g.kind[i], want, va, vb);
	}
}

static void check_content(struct model *m, const struct mfile *f)
{
	struct got g = { .below = MAXB, .last_kind = -1 };

	memset(g.kind, -1, sizeof(g.kind));
	cr_assert_eq(bmap_node_content(m->b, f->node, 0, MAXB, got_run, &g), 0);
	for (uint64_t i = 0; i < MAXB; i++) {
		uint64_t v = i < f->nblocks ? f->val[i] : 0;

		cr_assert_eq(g.kind[i], v != 0, "content of node %" PRIu64 ", block %" PRIu64
			     ": got %d, want %d", f->node, i, g.kind[i], v != 0);
	}
}

static void run_model(uint64_t seed, uint64_t nops)
{
	struct model m = { 0 };

	snprintf(path, sizeof(path), "%s/index-%" PRIu64 ".sqlite", dir, seed);
	m.b = make_index();
	fprintf(stderr, "chain model: TEST_CHAIN_SEED=%" PRIu64 "\n", seed);
	rng_state = seed;
	new_volume(&m, MAXB / 2);
	new_volume(&m, MAXB);
	for (uint64_t op = 0; op < nops; op++) {
		size_t v = pick(&m, 1), any = pick(&m, -1);
		unsigned r = rnd() % 100;

		cr_assert_lt(v, MAXF);
		if (r < 35)
			op_write(&m, &m.f[v]);
		else if (r < 50)
			op_punch(&m, &m.f[v]);
		else if (r < 57)
			op_truncate(&m, &m.f[v]);
		else if (r < 72)
			op_snapshot(&m, &m.f[v]);
		else if (r < 80)
			op_clone(&m, &m.f[any]);
		else if (r < 92 && !m.f[any].live)
			op_delete(&m, any);
		else if (r < 95 && m.f[any].live && pick(&m, 1) != any)
			op_delete(&m, any);             /* leaves another live volume */
		else if (r < 97 && free_slot(&m) < MAXF)
			new_volume(&m, rnd() % MAXB);
		if (op % 8 == 0) {
			for (int k = 0; k < 6; k++) {
				size_t a = pick(&m, -1), b = pick(&m, -1);

				check_diff(&m, &m.f[a], &m.f[b]);
			}
			check_content(&m, &m.f[pick(&m, -1)]);
		}
	}
	bmap_close(m.b);
}

Test(chain, diff_and_content_match_a_per_block_model_of_random_histories, .timeout = 0)
{
	uint64_t seed = env_u64("TEST_CHAIN_SEED", 20260312), nops = env_u64("TEST_CHAIN_OPS", 600);

	for (uint64_t k = 0; k < 4; k++)
		run_model(seed + k, nops);
}

/* ---- small cases, one property each ---------------------------------------- */

struct runs {
	struct bmap_run v[16];
	size_t n;
};

static int add_run(void *ctx, const struct bmap_run *r)
{
	struct runs *l = ctx;

	cr_assert_lt(l->n, 16);
	l->v[l->n++] = *r;
	return 0;
}

Test(chain, nodes_of_two_lineages_are_refused)
{
	struct bmap *b = make_index();
	struct bmap_node x = { 0 }, y = { 0 };
	struct runs r = { 0 };

	cr_assert_eq(bmap_node_create(b, &x), 0);
	cr_assert_eq(bmap_node_create(b, &y), 0);
	cr_assert_eq(bmap_node_diff(b, x.id, y.id, 100, add_run, &r), -EXDEV);
	cr_assert_eq(r.n, 0);
	cr_assert_eq(bmap_node_diff(b, x.id, 999, 100, add_run, &r), -ENOENT);
	bmap_close(b);
}

Test(chain, a_punch_of_blocks_the_ancestor_never_held_is_no_change)
{
	struct bmap *b = make_index();
	struct bmap_node s = { 0 }, v;
	struct bmap_ext data = { .lblock = 0, .nblocks = 4, .chunk = 1, .slot = 0 };
	struct bmap_ext hole = { .lblock = 2, .nblocks = 6 };
	struct runs r = { 0 };

	cr_assert_eq(bmap_node_create(b, &s), 0);
	cr_assert_eq(bmap_ext_put(b, s.id, &data), 0);
	v = (struct bmap_node){ .parent = s.id, .inherit = 16 };
	cr_assert_eq(bmap_node_create(b, &v), 0);
	cr_assert_eq(bmap_ext_put(b, v.id, &hole), 0);
	/* blocks 2-3 held data and are zeros now; 4-7 were zeros already */
	cr_assert_eq(bmap_node_diff(b, s.id, v.id, 16, add_run, &r), 0);
	cr_assert_eq(r.n, 1);
	cr_assert_eq(r.v[0].lblock, 2);
	cr_assert_eq(r.v[0].nblocks, 2);
	cr_assert_not(r.v[0].data);
	/* the other way round, B shows the ancestor's data */
	r.n = 0;
	cr_assert_eq(bmap_node_diff(b, v.id, s.id, 16, add_run, &r), 0);
	cr_assert_eq(r.n, 1);
	cr_assert(r.v[0].data);
	bmap_close(b);
}

struct shown {
	uint64_t v[8][2];
	size_t n;
};

static int add_shown(void *ctx, uint64_t lblock, uint64_t nblocks)
{
	struct shown *sh = ctx;

	cr_assert_lt(sh->n, 8);
	sh->v[sh->n][0] = lblock;
	sh->v[sh->n++][1] = nblocks;
	return 0;
}

Test(chain, shown_is_what_a_child_inherits)
{
	struct bmap *b = make_index();
	struct bmap_node s = { 0 }, v;
	struct bmap_ext own = { .lblock = 3, .nblocks = 2, .chunk = 1, .slot = 0 };
	struct bmap_ext stone = { .lblock = 7, .nblocks = 1 };
	struct shown sh = { 0 };

	cr_assert_eq(bmap_node_create(b, &s), 0);
	v = (struct bmap_node){ .parent = s.id, .inherit = 10 };
	cr_assert_eq(bmap_node_create(b, &v), 0);
	cr_assert_eq(bmap_ext_put(b, v.id, &own), 0);
	cr_assert_eq(bmap_ext_put(b, v.id, &stone), 0);
	cr_assert_eq(bmap_node_shown(b, &v, 1, 100, add_shown, &sh), 0);
	cr_assert_eq(sh.n, 3);
	cr_assert(sh.v[0][0] == 1 && sh.v[0][1] == 2);
	cr_assert(sh.v[1][0] == 5 && sh.v[1][1] == 2);
	cr_assert(sh.v[2][0] == 8 && sh.v[2][1] == 2);  /* up to the inherit limit */
	bmap_close(b);
}
