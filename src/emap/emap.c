/*
 * emap: a sorted extent map in leaves of at most leaf_max extents under one
 * sorted directory (a B+-tree of height two).
 *
 * Why this shape.  A page holds at most 256 blocks, so at most 256 extents:
 * one leaf, a binary search and a memmove.  A volume's delta or a whole map
 * (the interim step 5 of docs/design.md, D8) holds millions: there a single
 * sorted array would move megabytes per put, and a leaf of 256 moves at most
 * 8 KiB; the directory (16 B a leaf, 64 KiB for a million extents) moves
 * only when a leaf splits or goes away.  A deeper tree would make that
 * O(log n) too, for code the sizes of the design do not need.
 *
 * Invariants (emap_check() asserts each one):
 *   E1  the extents, leaf after leaf, are in the canonical form of emap.h:
 *       sorted, disjoint, not empty, inside the limits, mergeable
 *       neighbours merged;
 *   E2  no leaf is empty; 1 <= n <= cap <= leaf_max, cap a power of two;
 *   E3  dir[i].first == dir[i].leaf->e[0].lblock;
 *   E4  next and data_blocks are the number of extents and the sum of the
 *       data extents' nblocks; mem_bytes what the map holds.
 *
 * Every edit is one replacement: the extents [s, t) of the global order (the
 * ones the range covers, and a neighbour the new run merges with) give way to
 * at most three (edit_range() computes them, splice() moves them in).  All
 * memory an edit may need (a leaf grown, a spare leaf for a split, a slot in
 * the directory, the diff's arrays) is reserved before the first byte of the
 * map moves, so a failed edit leaves it as it was.  Leaves shrink again when
 * they fall under a quarter full and a neighbour can take them in; that is
 * best effort (it may not get memory) and no invariant depends on it.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vsnapfs/array.h"
#include "vsnapfs/emap.h"

#define LEAF_MAX 256u

struct leaf {
	uint32_t n;                     /* extents in e[] */
	uint32_t cap;                   /* a power of two <= leaf_max */
	struct emap_ext e[];
};

struct dirent {
	uint64_t first;                 /* leaf->e[0].lblock, for the search */
	struct leaf *leaf;
};

struct emap {
	struct dirent *dir;             /* sorted by first */
	size_t nleaves, dir_cap;
	struct leaf *spare;             /* NULL or an empty leaf of leaf_max: the next split's */
	uint64_t next;                  /* extents */
	uint64_t data_blocks;
	size_t mem_bytes;
	uint32_t max_slots;
	uint32_t leaf_max;
};

/* A place in the global order: extent o of leaf li; li == nleaves is the end. */
struct pos {
	size_t li;
	uint32_t o;
};

/* --- memory, with the test hook ------------------------------------------ */

static long fail_after = -1;

void emap_fail_alloc_after(long after)
{
	fail_after = after;
}

static bool alloc_fails(void)
{
	if (fail_after < 0)
		return false;
	return fail_after-- == 0;
}

static void *xrealloc(void *p, size_t bytes)
{
	return alloc_fails() ? NULL : realloc(p, bytes);
}

static size_t leaf_bytes(uint32_t cap)
{
	return sizeof(struct leaf) + (size_t)cap * sizeof(struct emap_ext);
}

static uint32_t cap_for(const struct emap *m, uint32_t n)
{
	uint32_t cap = 2;

	while (cap < n)
		cap *= 2;
	assert(cap <= m->leaf_max);
	return cap;
}

static struct leaf *leaf_new(struct emap *m, uint32_t cap)
{
	struct leaf *l = xrealloc(NULL, leaf_bytes(cap));

	if (l) {
		l->n = 0;
		l->cap = cap;
		m->mem_bytes += leaf_bytes(cap);
	}
	return l;
}

/* Free a leaf that left the directory, or keep it as the spare. */
static void leaf_drop(struct emap *m, struct leaf *l)
{
	if (!m->spare && l->cap == m->leaf_max) {
		l->n = 0;
		m->spare = l;
		return;
	}
	m->mem_bytes -= leaf_bytes(l->cap);
	free(l);
}

/* Make room for need extents in leaf li.  0 or -ENOMEM (leaf unchanged). */
static int leaf_grow(struct emap *m, size_t li, uint32_t need)
{
	struct leaf *l = m->dir[li].leaf;
	uint32_t cap;

	if (need <= l->cap)
		return 0;
	cap = cap_for(m, need);
	l = xrealloc(l, leaf_bytes(cap));
	if (!l)
		return -ENOMEM;
	m->mem_bytes += leaf_bytes(cap) - leaf_bytes(l->cap);
	l->cap = cap;
	m->dir[li].leaf = l;
	return 0;
}

/* Room for need entries in the directory. */
static int dir_reserve(struct emap *m, size_t need)
{
	size_t old = m->dir_cap;
	int rc = 0;

	while (m->dir_cap < need && rc == 0)
		rc = alloc_fails() ? -ENOMEM : ARRAY_RESERVE(m->dir, m->dir_cap, m->dir_cap, 4);
	m->mem_bytes += (m->dir_cap - old) * sizeof(m->dir[0]);
	return rc;
}

static int ext_reserve(struct emap_ext **v, size_t *cap, size_t need)
{
	int rc = 0;

	while (*cap < need && rc == 0)
		rc = alloc_fails() ? -ENOMEM : array_reserve(v, cap, *cap, sizeof(**v), 4);
	return rc;
}

void emap_diff_free(struct emap_diff *d)
{
	free(d->removed);
	free(d->added);
	*d = (struct emap_diff)EMAP_DIFF_INIT;
}

/* --- the map ---------------------------------------------------------------- */

struct emap *emap_new(uint32_t max_slots)
{
	struct emap *m;

	if (max_slots == 0)
		return NULL;
	m = xrealloc(NULL, sizeof(*m));
	if (!m)
		return NULL;
	*m = (struct emap){ .max_slots = max_slots, .leaf_max = LEAF_MAX, .mem_bytes = sizeof(*m) };
	return m;
}

void emap_free(struct emap *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nleaves; i++)
		free(m->dir[i].leaf);
	free(m->spare);
	free(m->dir);
	free(m);
}

int emap_set_leaf_max(struct emap *m, uint32_t leaf_max)
{
	if (m->nleaves || leaf_max < 8 || leaf_max > LEAF_MAX || (leaf_max & (leaf_max - 1)))
		return -EINVAL;
	if (m->spare) {
		m->mem_bytes -= leaf_bytes(m->spare->cap);
		free(m->spare);
		m->spare = NULL;
	}
	m->leaf_max = leaf_max;
	return 0;
}

uint64_t emap_count(const struct emap *m) { return m->next; }
uint64_t emap_data_blocks(const struct emap *m) { return m->data_blocks; }
size_t emap_mem_bytes(const struct emap *m) { return m->mem_bytes; }

static uint64_t ext_end(const struct emap_ext *e)
{
	return e->lblock + e->nblocks;
}

static bool mergeable(const struct emap_ext *a, const struct emap_ext *b)
{
	if (ext_end(a) != b->lblock || a->tag != b->tag || a->chunk != b->chunk)
		return false;
	if (a->chunk == 0)
		return (uint64_t)a->nblocks + b->nblocks <= EMAP_NBLOCKS_MAX;
	return b->slot == (uint64_t)a->slot + a->nblocks;
}

static struct emap_ext *at(const struct emap *m, struct pos p)
{
	return &m->dir[p.li].leaf->e[p.o];
}

static bool pos_end(const struct emap *m, struct pos p)
{
	return p.li >= m->nleaves;
}

static void pos_next(const struct emap *m, struct pos *p)
{
	if (++p->o == m->dir[p->li].leaf->n) {
		p->li++;
		p->o = 0;
	}
}

/* The last extent with lblock <= b: true and *p, or false and *p the first
 * extent (the end when the map is empty).  O(log n). */
static bool find_le(const struct emap *m, uint64_t b, struct pos *p)
{
	size_t lo = 0, hi = m->nleaves;
	const struct leaf *l;
	uint32_t a, z;

	while (lo < hi) {       /* the first leaf whose first > b */
		size_t mid = lo + (hi - lo) / 2;

		if (m->dir[mid].first <= b)
			lo = mid + 1;
		else
			hi = mid;
	}
	*p = (struct pos){ 0, 0 };
	if (lo == 0)
		return false;
	l = m->dir[lo - 1].leaf;
	a = 1;                  /* e[0].lblock == first <= b */
	z = l->n;
	while (a < z) {         /* the first extent whose lblock > b */
		uint32_t mid = a + (z - a) / 2;

		if (l->e[mid].lblock <= b)
			a = mid + 1;
		else
			z = mid;
	}
	*p = (struct pos){ lo - 1, a - 1 };
	return true;
}

bool emap_lookup(const struct emap *m, uint64_t b, struct emap_ext *out)
{
	struct pos p;

	if (!find_le(m, b, &p) || ext_end(at(m, p)) <= b)
		return false;
	*out = *at(m, p);
	return true;
}

uint64_t emap_next(const struct emap *m, uint64_t pos, uint64_t hi, struct emap_run *out)
{
	const struct emap_ext *e;
	struct pos p;
	uint64_t end;

	if (pos >= hi)
		return 0;
	if (find_le(m, pos, &p)) {
		e = at(m, p);
		if (ext_end(e) > pos) {
			end = ext_end(e) < hi ? ext_end(e) : hi;
			*out = (struct emap_run){
				.lblock = pos, .nblocks = end - pos, .tag = e->tag,
				.kind = e->chunk ? EMAP_DATA : EMAP_ZERO, .chunk = e->chunk,
				.slot = e->chunk ? e->slot + (uint32_t)(pos - e->lblock) : 0,
			};
			return out->nblocks;
		}
		pos_next(m, &p);
	}
	end = hi;
	if (!pos_end(m, p) && at(m, p)->lblock < hi)
		end = at(m, p)->lblock;
	*out = (struct emap_run){ .lblock = pos, .nblocks = end - pos, .kind = EMAP_UNMAPPED };
	return out->nblocks;
}

/* --- edits ------------------------------------------------------------------ */

static uint64_t data_of(const struct emap_ext *e)
{
	return e->chunk ? e->nblocks : 0;
}

/* Remove leaf li from the directory (it is empty or was moved elsewhere). */
static void dir_remove(struct emap *m, size_t li)
{
	memmove(&m->dir[li], &m->dir[li + 1], (m->nleaves - li - 1) * sizeof(m->dir[0]));
	m->nleaves--;
}

/*
 * After an edit: free leaf li if empty; if under a quarter full, let it take
 * in the next leaf or let the previous one take it in, when the two fit in
 * 3/4 of a leaf and the memory is there.
 */
static void leaf_settle(struct emap *m, size_t li)
{
	struct leaf *l, *o;

	if (li >= m->nleaves)
		return;
	l = m->dir[li].leaf;
	if (l->n == 0) {
		dir_remove(m, li);
		leaf_drop(m, l);
		return;
	}
	if (l->n >= m->leaf_max / 4)
		return;
	if (li + 1 < m->nleaves) {
		o = m->dir[li + 1].leaf;
		if (l->n + o->n <= m->leaf_max / 4 * 3 && leaf_grow(m, li, l->n + o->n) == 0) {
			l = m->dir[li].leaf;
			memcpy(&l->e[l->n], o->e, o->n * sizeof(o->e[0]));
			l->n += o->n;
			dir_remove(m, li + 1);
			leaf_drop(m, o);
			return;
		}
	}
	if (li > 0) {
		o = m->dir[li - 1].leaf;
		if (l->n + o->n <= m->leaf_max / 4 * 3 && leaf_grow(m, li - 1, l->n + o->n) == 0) {
			o = m->dir[li - 1].leaf;
			memcpy(&o->e[o->n], l->e, l->n * sizeof(l->e[0]));
			o->n += l->n;
			m->dir[li - 1].first = o->e[0].lblock;  /* o may have been empty */
			dir_remove(m, li);
			leaf_drop(m, l);
		}
	}
}

/*
 * Replace the extents [s, t) (nrem of them) by repl[0..k-1], k <= 3.  The
 * caller made sure the result is in canonical form.  0 or -ENOMEM, and then
 * nothing moved.
 */
static int splice(struct emap *m, struct pos s, struct pos t, uint64_t nrem,
		  const struct emap_ext *repl, uint32_t k)
{
	struct leaf *ls, *lt_leaf;
	size_t lt, s_li;
	uint32_t ot, after;
	int rc;

	assert(k <= 3);
	if (m->nleaves == 0) {
		assert(nrem == 0);
		if (k == 0)
			return 0;
		if ((rc = dir_reserve(m, 1)) != 0)
			return rc;
		if (!(ls = leaf_new(m, cap_for(m, k))))
			return -ENOMEM;
		memcpy(ls->e, repl, k * sizeof(repl[0]));
		ls->n = k;
		m->dir[0] = (struct dirent){ ls->e[0].lblock, ls };
		m->nleaves = 1;
		m->next = k;
		return 0;
	}
	if (pos_end(m, s))      /* insert after the last extent */
		s = (struct pos){ m->nleaves - 1, m->dir[m->nleaves - 1].leaf->n };
	lt = pos_end(m, t) ? m->nleaves : t.li;
	ot = pos_end(m, t) ? 0 : t.o;
	ls = m->dir[s.li].leaf;
	after = (s.li == lt ? ls->n - (ot - s.o) : s.o) + k;

	/* Reserve.  Past here nothing fails. */
	if (after <= m->leaf_max) {
		if ((rc = leaf_grow(m, s.li, after)) != 0)
			return rc;
		ls = m->dir[s.li].leaf;
	} else {
		assert(ls->cap == m->leaf_max);
		if (!m->spare && !(m->spare = leaf_new(m, m->leaf_max)))
			return -ENOMEM;
		if ((rc = dir_reserve(m, m->nleaves + 1)) != 0)
			return rc;
	}

	/* Take out [s, t): the tail of leaf s.li, the leaves between, the head of lt. */
	if (s.li == lt) {
		memmove(&ls->e[s.o], &ls->e[ot], (ls->n - ot) * sizeof(ls->e[0]));
		ls->n -= ot - s.o;
	} else {
		ls->n = s.o;
		for (size_t i = s.li + 1; i < lt; i++)
			leaf_drop(m, m->dir[i].leaf);
		if (lt < m->nleaves) {
			lt_leaf = m->dir[lt].leaf;
			memmove(lt_leaf->e, &lt_leaf->e[ot], (lt_leaf->n - ot) * sizeof(lt_leaf->e[0]));
			lt_leaf->n -= ot;
			m->dir[lt].first = lt_leaf->e[0].lblock;
		}
		memmove(&m->dir[s.li + 1], &m->dir[lt], (m->nleaves - lt) * sizeof(m->dir[0]));
		m->nleaves -= lt - (s.li + 1);
	}

	/* Put repl in at s, splitting the leaf in two halves if it would overflow. */
	s_li = s.li;
	if (ls->n + k > m->leaf_max) {
		struct leaf *r = m->spare;
		uint32_t half = ls->n / 2;

		m->spare = NULL;
		memcpy(r->e, &ls->e[half], (ls->n - half) * sizeof(ls->e[0]));
		r->n = ls->n - half;
		ls->n = half;
		memmove(&m->dir[s.li + 2], &m->dir[s.li + 1],
			(m->nleaves - s.li - 1) * sizeof(m->dir[0]));
		m->dir[s.li + 1] = (struct dirent){ r->e[0].lblock, r };
		m->nleaves++;
		if (s.o > half) {
			s.li++;
			s.o -= half;
			ls = r;
		}
	}
	memmove(&ls->e[s.o + k], &ls->e[s.o], (ls->n - s.o) * sizeof(ls->e[0]));
	memcpy(&ls->e[s.o], repl, k * sizeof(repl[0]));
	ls->n += k;
	if (ls->n)
		m->dir[s.li].first = ls->e[0].lblock;
	m->next = m->next - nrem + k;

	/* The leaves this edit changed are s_li .. s_li + 2 (a split, then lt). */
	leaf_settle(m, s_li + 2);
	leaf_settle(m, s_li + 1);
	leaf_settle(m, s_li);
	return 0;
}

/* The diff: take out the extents both lists hold (an edit that left them
 * as they were).  added has at most 3 entries. */
static void diff_cancel(struct emap_diff *d)
{
	size_t j = 0, keep = 0;

	for (size_t i = 0; i < d->nadded; i++) {
		const struct emap_ext *a = &d->added[i];
		bool same = false;

		for (size_t r = 0; r < d->nremoved && d->removed[r].lblock <= a->lblock; r++)
			if (!memcmp(&d->removed[r], a, sizeof(*a))) {
				d->removed[r].nblocks = 0;      /* mark: drop */
				same = true;
				break;
			}
		if (!same)
			d->added[j++] = *a;
	}
	d->nadded = j;
	for (size_t r = 0; r < d->nremoved; r++)
		if (d->removed[r].nblocks)
			d->removed[keep++] = d->removed[r];
	d->nremoved = keep;
}

/*
 * The one edit: make [lo, hi) map to *nw (a put) or to nothing (nw NULL),
 * lo < hi.  With a put, the new run also takes in a touching neighbour it
 * merges with.
 */
static int edit_range(struct emap *m, uint64_t lo, uint64_t hi, const struct emap_ext *nw,
		      struct emap_diff *diff)
{
	struct emap_ext repl[3], left = { 0 }, right = { 0 }, mid = { 0 }, last = { 0 };
	bool has_left = false, has_right = false;
	uint64_t nrem = 0, data_rem = 0, data_add = 0;
	struct pos s = { 0, 0 }, t;
	uint32_t k = 0;
	int rc;

	if (diff)
		diff->nremoved = diff->nadded = 0;

	/* s: the first extent to replace. */
	if (lo > 0 && find_le(m, lo - 1, &s)) {
		const struct emap_ext *e = at(m, s);

		if (!(ext_end(e) > lo || (nw && mergeable(e, nw))))
			pos_next(m, &s);
	}
	/* t: past the last one; the extents between are what the range covers. */
	for (t = s; !pos_end(m, t) && at(m, t)->lblock < hi; pos_next(m, &t)) {
		last = *at(m, t);
		data_rem += data_of(&last);
		nrem++;
	}
	if (nw && !pos_end(m, t) && mergeable(nw, at(m, t))) {
		last = *at(m, t);
		data_rem += data_of(&last);
		nrem++;
		pos_next(m, &t);
	}

	if (nrem) {
		const struct emap_ext *first = at(m, s);

		if (first->lblock < lo) {
			left = *first;
			left.nblocks = (uint32_t)(lo - first->lblock);
			has_left = true;
		}
		if (ext_end(&last) > hi) {
			right = last;
			right.lblock = hi;
			right.nblocks = (uint32_t)(ext_end(&last) - hi);
			if (right.chunk)
				right.slot += (uint32_t)(hi - last.lblock);
			has_right = true;
		}
	}
	/*
	 * A trimmed tombstone may now merge with the tombstone beyond it: the
	 * two were apart only because together they were longer than
	 * EMAP_NBLOCKS_MAX.  Take that one in too.
	 */
	if (has_left && !left.chunk && left.lblock > 0) {
		struct pos p;

		if (find_le(m, left.lblock - 1, &p) && mergeable(at(m, p), &left)) {
			left.lblock = at(m, p)->lblock;
			left.nblocks += at(m, p)->nblocks;
			s = p;
			nrem++;
		}
	}
	if (has_right && !right.chunk && !pos_end(m, t) && mergeable(&right, at(m, t))) {
		right.nblocks += at(m, t)->nblocks;
		pos_next(m, &t);
		nrem++;
	}
	if (nw) {
		mid = *nw;
		if (has_left && mergeable(&left, &mid)) {
			mid.lblock = left.lblock;
			mid.slot = left.slot;
			mid.nblocks += left.nblocks;
			has_left = false;
		}
		if (has_right && mergeable(&mid, &right)) {
			mid.nblocks += right.nblocks;
			has_right = false;
		}
	}
	if (has_left)
		repl[k++] = left;
	if (nw)
		repl[k++] = mid;
	if (has_right)
		repl[k++] = right;
	for (uint32_t i = 0; i < k; i++)
		data_add += data_of(&repl[i]);

	if (diff) {
		struct pos p = s;

		if ((rc = ext_reserve(&diff->removed, &diff->removed_cap, nrem)) != 0 ||
		    (rc = ext_reserve(&diff->added, &diff->added_cap, 3)) != 0)
			return rc;
		for (uint64_t i = 0; i < nrem; i++, pos_next(m, &p))
			diff->removed[i] = *at(m, p);
		diff->nremoved = nrem;
		memcpy(diff->added, repl, k * sizeof(repl[0]));
		diff->nadded = k;
	}
	if ((rc = splice(m, s, t, nrem, repl, k)) != 0) {
		if (diff)
			diff->nremoved = diff->nadded = 0;
		return rc;
	}
	m->data_blocks = m->data_blocks - data_rem + data_add;
	if (diff)
		diff_cancel(diff);
	return 0;
}

int emap_put(struct emap *m, const struct emap_ext *e, struct emap_diff *diff)
{
	struct emap_ext nw;

	if (diff)
		diff->nremoved = diff->nadded = 0;
	if (e->nblocks == 0 || e->lblock >= EMAP_LBLOCK_LIMIT ||
	    e->nblocks > EMAP_LBLOCK_LIMIT - e->lblock)
		return -EINVAL;
	if (e->chunk && (uint64_t)e->slot + e->nblocks > m->max_slots)
		return -EINVAL;
	nw = *e;
	if (!nw.chunk)
		nw.slot = 0;
	return edit_range(m, nw.lblock, ext_end(&nw), &nw, diff);
}

int emap_delete(struct emap *m, uint64_t lo, uint64_t hi, struct emap_diff *diff)
{
	if (diff)
		diff->nremoved = diff->nadded = 0;
	if (lo > hi || hi > EMAP_LBLOCK_LIMIT)
		return -EINVAL;
	if (lo == hi)
		return 0;
	return edit_range(m, lo, hi, NULL, diff);
}

int emap_truncate(struct emap *m, uint64_t b, struct emap_diff *diff)
{
	return emap_delete(m, b, EMAP_LBLOCK_LIMIT, diff);
}

int emap_clip(struct emap *m, uint64_t lo, uint64_t hi)
{
	int rc;

	if (lo > hi || hi > EMAP_LBLOCK_LIMIT)
		return -EINVAL;
	/* Neither edit adds an extent (nothing straddles 0 or the limit), so
	 * neither needs memory: the map cannot be left half clipped. */
	rc = emap_delete(m, hi, EMAP_LBLOCK_LIMIT, NULL);
	assert(rc == 0);
	rc = emap_delete(m, 0, lo, NULL);
	assert(rc == 0);
	return rc;
}

/* --- overlay ---------------------------------------------------------------- */

/* Append e to v[0..*n), merging it into the last one when mergeable. */
static void push_merged(struct emap_ext *v, size_t *n, const struct emap_ext *e)
{
	if (*n && mergeable(&v[*n - 1], e))
		v[*n - 1].nblocks += e->nblocks;
	else
		v[(*n)++] = *e;
}

/*
 * Make m hold exactly v[0..n) (canonical, n >= 1): new leaves filled to 3/4,
 * swapped in only when all of them were allocated.
 */
static int rebuild(struct emap *m, const struct emap_ext *v, size_t n)
{
	uint32_t per = n <= m->leaf_max ? (uint32_t)n : m->leaf_max / 4 * 3;
	size_t nleaves = (n + per - 1) / per, i = 0, dir_cap = 0;
	struct dirent *dir = NULL;
	size_t mem = 0;
	uint64_t data = 0;
	int rc = 0;

	while (dir_cap < nleaves && rc == 0)
		rc = alloc_fails() ? -ENOMEM : ARRAY_RESERVE(dir, dir_cap, dir_cap, 4);
	if (rc)
		goto fail;
	for (i = 0; i < nleaves; i++) {
		uint32_t cnt = (uint32_t)(n - i * per < per ? n - i * per : per);
		struct leaf *l = xrealloc(NULL, leaf_bytes(cap_for(m, cnt)));

		if (!l) {
			rc = -ENOMEM;
			goto fail;
		}
		l->cap = cap_for(m, cnt);
		l->n = cnt;
		memcpy(l->e, &v[i * per], cnt * sizeof(v[0]));
		dir[i] = (struct dirent){ l->e[0].lblock, l };
		mem += leaf_bytes(l->cap);
	}
	for (i = 0; i < n; i++)
		data += data_of(&v[i]);

	for (size_t j = 0; j < m->nleaves; j++)
		free(m->dir[j].leaf);
	free(m->dir);
	m->mem_bytes = sizeof(*m) + (m->spare ? leaf_bytes(m->spare->cap) : 0) +
		       dir_cap * sizeof(dir[0]) + mem;
	m->dir = dir;
	m->dir_cap = dir_cap;
	m->nleaves = nleaves;
	m->next = n;
	m->data_blocks = data;
	return 0;
fail:
	while (i-- > 0)
		free(dir[i].leaf);
	free(dir);
	return rc;
}

int emap_overlay(struct emap *dst, const struct emap *src, uint64_t lo, uint64_t hi)
{
	struct emap_ext *pieces = NULL, *all = NULL;
	size_t np = 0, pcap = 0, nall = 0, pi = 0;
	struct emap_run r, g;
	struct pos p;
	int rc = 0;

	if (lo > hi || hi > EMAP_LBLOCK_LIMIT || dst == src || dst->max_slots != src->max_slots)
		return -EINVAL;

	/* What src maps where dst has a gap, in order. */
	for (uint64_t b = lo; b < hi; b += r.nblocks) {
		emap_next(src, b, hi, &r);
		if (r.kind == EMAP_UNMAPPED)
			continue;
		for (uint64_t q = r.lblock; q < r.lblock + r.nblocks; q += g.nblocks) {
			emap_next(dst, q, r.lblock + r.nblocks, &g);
			if (g.kind != EMAP_UNMAPPED)
				continue;
			if ((rc = ext_reserve(&pieces, &pcap, np + 1)) != 0)
				goto out;
			pieces[np++] = (struct emap_ext){
				.lblock = g.lblock, .nblocks = (uint32_t)g.nblocks, .chunk = r.chunk,
				.slot = r.chunk ? r.slot + (uint32_t)(g.lblock - r.lblock) : 0,
				.tag = r.tag,
			};
		}
	}
	if (np == 0)
		goto out;

	/* dst's extents and the pieces, merged in order, then new leaves. */
	all = xrealloc(NULL, (dst->next + np) * sizeof(all[0]));
	if (!all) {
		rc = -ENOMEM;
		goto out;
	}
	p = (struct pos){ 0, 0 };
	while (!pos_end(dst, p) || pi < np) {
		if (pi < np && (pos_end(dst, p) || pieces[pi].lblock < at(dst, p)->lblock)) {
			push_merged(all, &nall, &pieces[pi++]);
		} else {
			push_merged(all, &nall, at(dst, p));
			pos_next(dst, &p);
		}
	}
	rc = rebuild(dst, all, nall);
out:
	free(all);
	free(pieces);
	return rc;
}

/* --- self-check -------------------------------------------------------------- */

const char *emap_check(const struct emap *m)
{
	static __thread char why[200];
	const struct emap_ext *prev = NULL;
	uint64_t count = 0, data = 0;
	size_t mem = sizeof(*m) + m->dir_cap * sizeof(m->dir[0]);

#define FAIL(...) do { snprintf(why, sizeof(why), __VA_ARGS__); return why; } while (0)
	if (m->spare)
		mem += leaf_bytes(m->spare->cap);
	for (size_t i = 0; i < m->nleaves; i++) {
		const struct leaf *l = m->dir[i].leaf;

		if (l->n == 0 || l->n > l->cap || l->cap > m->leaf_max || (l->cap & (l->cap - 1)))
			FAIL("E2: leaf %zu holds %u of %u", i, l->n, l->cap);
		if (m->dir[i].first != l->e[0].lblock)
			FAIL("E3: leaf %zu: directory says %llu, first extent %llu", i,
			     (unsigned long long)m->dir[i].first, (unsigned long long)l->e[0].lblock);
		mem += leaf_bytes(l->cap);
		for (uint32_t j = 0; j < l->n; j++) {
			const struct emap_ext *e = &l->e[j];

			if (e->nblocks == 0 || ext_end(e) > EMAP_LBLOCK_LIMIT)
				FAIL("E1: extent at %llu of %u blocks", (unsigned long long)e->lblock,
				     e->nblocks);
			if (e->chunk ? (uint64_t)e->slot + e->nblocks > m->max_slots : e->slot != 0)
				FAIL("E1: extent at %llu: chunk %llu slot %u + %u blocks",
				     (unsigned long long)e->lblock, (unsigned long long)e->chunk,
				     e->slot, e->nblocks);
			if (prev && ext_end(prev) > e->lblock)
				FAIL("E1: extent at %llu overlaps or precedes the one before (%llu+%u)",
				     (unsigned long long)e->lblock, (unsigned long long)prev->lblock,
				     prev->nblocks);
			if (prev && mergeable(prev, e))
				FAIL("E1: extents at %llu and %llu are not merged",
				     (unsigned long long)prev->lblock, (unsigned long long)e->lblock);
			count++;
			data += data_of(e);
			prev = e;
		}
	}
	if (count != m->next || data != m->data_blocks)
		FAIL("E4: %llu extents, %llu data blocks; counted %llu, %llu",
		     (unsigned long long)m->next, (unsigned long long)m->data_blocks,
		     (unsigned long long)count, (unsigned long long)data);
	if (mem != m->mem_bytes)
		FAIL("E4: mem_bytes %zu, counted %zu", m->mem_bytes, mem);
#undef FAIL
	return NULL;
}
