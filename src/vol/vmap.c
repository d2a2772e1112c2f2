/*
 * vmap: a fixed-height radix tree of block-map entries.
 *
 * Key layout (42 bits):  [ 9 | 9 | 9 | 9 ][ 6 ]
 *                          inner levels    leaf index
 *
 * Invariants: an inner node's count is the number of its non-NULL children,
 * and a node with count 0 is freed (the root excepted); a leaf's mask has a
 * bit per present entry and ents[] holds them in key order, so entry i of
 * the mask lives at ents[popcount(mask & ((1 << i) - 1))].
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vol/vmap.h"

#define LEAF_BITS  6
#define INNER_BITS 9
#define LEVELS     4
#define FANOUT     (1u << INNER_BITS)
#define LEAF_SLOTS (1u << LEAF_BITS)

struct leaf {
	uint64_t mask;
	uint32_t cap;                   /* entries allocated in ents[] */
	struct vmap_ent ents[];
};

struct inner {
	void *child[FANOUT];            /* struct inner * or, at the last level, struct leaf * */
	uint32_t count;
};

struct vmap {
	struct inner root;
	uint64_t nents;
	uint64_t mem_bytes;
};

static unsigned idx_at(uint64_t key, int level)
{
	int shift = LEAF_BITS + INNER_BITS * (LEVELS - 1 - level);
	return (key >> shift) & (FANOUT - 1);
}

static unsigned leaf_pos(const struct leaf *l, unsigned bit)
{
	return __builtin_popcountll(l->mask & ((1ULL << bit) - 1));
}

struct vmap *vmap_new(void)
{
	struct vmap *m = calloc(1, sizeof(*m));

	if (m)
		m->mem_bytes = sizeof(*m);
	return m;
}

static void free_inner(struct inner *n, int level)
{
	for (unsigned i = 0; i < FANOUT; i++) {
		if (!n->child[i])
			continue;
		if (level == LEVELS - 1)
			free(n->child[i]);
		else {
			free_inner(n->child[i], level + 1);
			free(n->child[i]);
		}
	}
}

void vmap_free(struct vmap *m)
{
	if (!m)
		return;
	free_inner(&m->root, 0);
	free(m);
}

uint64_t vmap_count(const struct vmap *m) { return m->nents; }
uint64_t vmap_mem_bytes(const struct vmap *m) { return m->mem_bytes; }

static struct leaf *find_leaf(struct vmap *m, uint64_t key)
{
	struct inner *n = &m->root;

	for (int level = 0; level < LEVELS - 1; level++) {
		n = n->child[idx_at(key, level)];
		if (!n)
			return NULL;
	}
	return n->child[idx_at(key, LEVELS - 1)];
}

struct vmap_ent *vmap_get(struct vmap *m, uint64_t key)
{
	struct leaf *l;
	unsigned bit = key & (LEAF_SLOTS - 1);

	assert(key >> VMAP_KEY_BITS == 0);
	l = find_leaf(m, key);
	if (!l || !(l->mask & (1ULL << bit)))
		return NULL;
	return &l->ents[leaf_pos(l, bit)];
}

int vmap_put(struct vmap *m, uint64_t key, const struct vmap_ent *e)
{
	struct inner *n = &m->root;
	struct leaf *l, **lp;
	unsigned bit = key & (LEAF_SLOTS - 1), pos, cnt;

	assert(key >> VMAP_KEY_BITS == 0);
	for (int level = 0; level < LEVELS - 1; level++) {
		void **slot = &n->child[idx_at(key, level)];

		if (!*slot) {
			*slot = calloc(1, sizeof(struct inner));
			if (!*slot)
				return -ENOMEM;
			m->mem_bytes += sizeof(struct inner);
			n->count++;
		}
		n = *slot;
	}
	lp = (struct leaf **)&n->child[idx_at(key, LEVELS - 1)];
	l = *lp;
	if (l && (l->mask & (1ULL << bit))) {
		l->ents[leaf_pos(l, bit)] = *e;
		return 0;
	}
	cnt = l ? __builtin_popcountll(l->mask) : 0;
	if (!l || cnt == l->cap) {
		/* grow by doubling: 1, 2, 4, ... 64 entries */
		uint32_t cap = l ? l->cap * 2 : 1;
		struct leaf *nl = realloc(l, sizeof(*nl) + cap * sizeof(nl->ents[0]));

		if (!nl)
			return -ENOMEM;
		if (!l) {
			nl->mask = 0;
			nl->cap = 0;
			n->count++;
		}
		m->mem_bytes += (cap - nl->cap) * sizeof(nl->ents[0]) + (l ? 0 : sizeof(*nl));
		nl->cap = cap;
		*lp = l = nl;
	}
	pos = leaf_pos(l, bit);
	memmove(&l->ents[pos + 1], &l->ents[pos], (cnt - pos) * sizeof(l->ents[0]));
	l->ents[pos] = *e;
	l->mask |= 1ULL << bit;
	m->nents++;
	return 0;
}

void vmap_del(struct vmap *m, uint64_t key)
{
	struct inner *path[LEVELS];
	struct inner *n = &m->root;
	struct leaf *l;
	unsigned bit = key & (LEAF_SLOTS - 1), pos, cnt;

	for (int level = 0; level < LEVELS - 1; level++) {
		path[level] = n;
		n = n->child[idx_at(key, level)];
		if (!n)
			return;
	}
	path[LEVELS - 1] = n;
	l = n->child[idx_at(key, LEVELS - 1)];
	if (!l || !(l->mask & (1ULL << bit)))
		return;
	cnt = __builtin_popcountll(l->mask);
	pos = leaf_pos(l, bit);
	memmove(&l->ents[pos], &l->ents[pos + 1], (cnt - pos - 1) * sizeof(l->ents[0]));
	l->mask &= ~(1ULL << bit);
	m->nents--;
	if (l->mask)
		return;

	/* free the empty leaf, then every inner node it leaves empty */
	m->mem_bytes -= sizeof(*l) + l->cap * sizeof(l->ents[0]);
	free(l);
	n->child[idx_at(key, LEVELS - 1)] = NULL;
	n->count--;
	for (int level = LEVELS - 1; level > 0 && path[level]->count == 0; level--) {
		free(path[level]);
		m->mem_bytes -= sizeof(struct inner);
		path[level - 1]->child[idx_at(key, level - 1)] = NULL;
		path[level - 1]->count--;
	}
}

/* Smallest entry with key >= key in subtree n at level; base is the key
 * prefix of n. */
/* The first entry at or after key and below hi in n's subtree.  Children
 * are in key order, so the walk stops at the first one starting at hi:
 * a bounded lookup in an empty or sparse map costs its range, not a scan
 * of the rest of every level. */
static struct vmap_ent *next_in(struct inner *n, int level, uint64_t key, uint64_t hi,
				uint64_t *found)
{
	int shift = LEAF_BITS + INNER_BITS * (LEVELS - 1 - level);

	for (unsigned i = idx_at(key, level); i < FANOUT; i++) {
		uint64_t sub_lo = ((key >> (shift + INNER_BITS)) << (shift + INNER_BITS)) |
				  ((uint64_t)i << shift);
		uint64_t from = i == idx_at(key, level) ? key : sub_lo;
		struct vmap_ent *e;

		if (sub_lo >= hi)
			return NULL;
		if (!n->child[i])
			continue;
		if (level < LEVELS - 1) {
			e = next_in(n->child[i], level + 1, from, hi, found);
			if (e)
				return e;
		} else {
			struct leaf *l = n->child[i];
			unsigned bit = from & (LEAF_SLOTS - 1);
			uint64_t rest = l->mask & (~0ULL << bit);

			if (rest) {
				unsigned b = __builtin_ctzll(rest);

				if ((sub_lo | b) >= hi)
					return NULL;
				*found = sub_lo | b;
				return &l->ents[leaf_pos(l, b)];
			}
		}
	}
	return NULL;
}

struct vmap_ent *vmap_next(struct vmap *m, uint64_t key, uint64_t *found)
{
	return vmap_next_below(m, key, UINT64_MAX, found);
}

struct vmap_ent *vmap_next_below(struct vmap *m, uint64_t key, uint64_t hi, uint64_t *found)
{
	if (key >> VMAP_KEY_BITS || key >= hi)
		return NULL;
	return next_in(&m->root, 0, key, hi, found);
}
