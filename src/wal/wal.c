/*
 * wal: encoding, parsing and applying log batches (vsnapfs/wal.h).
 *
 * All integers little-endian.  A batch is built in place: wal_buf_init
 * leaves room for the header, each wal_put_* appends records, wal_seal
 * writes the header and the trailer once the caller knows the lsn and the
 * chunk the batch goes to (chunk_log_append tells it).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "vsnapfs/array.h"
#include "vsnapfs/cksum.h"
#include "vsnapfs/le.h"
#include "vsnapfs/wal.h"

/* ---- building ------------------------------------------------------------ */

int wal_buf_init(struct wal_buf *w)
{
	w->nrecs = 0;
	w->len = 0;
	if (ARRAY_RESERVE(w->p, w->cap, WAL_HDR_BYTES + WAL_TAIL_BYTES,
			  WAL_HDR_BYTES + 64 * WAL_REC_BYTES + WAL_TAIL_BYTES))
		return -ENOMEM;
	memset(w->p, 0, WAL_HDR_BYTES);
	w->len = WAL_HDR_BYTES;
	return 0;
}

void wal_buf_free(struct wal_buf *w)
{
	free(w->p);
	memset(w, 0, sizeof(*w));
}

static int put(struct wal_buf *w, const struct wal_rec *r)
{
	uint8_t *p;

	/* room for the trailer too, so that wal_seal cannot fail */
	if (ARRAY_RESERVE(w->p, w->cap, w->len + WAL_REC_BYTES + WAL_TAIL_BYTES - 1,
			  WAL_REC_BYTES * 64))
		return -ENOMEM;
	p = w->p + w->len;
	le32_put(p, r->type);
	le32_put(p + 4, r->nblocks);
	le64_put(p + 8, r->a);
	le64_put(p + 16, r->b);
	le64_put(p + 24, r->c);
	le64_put(p + 32, r->d);
	w->len += WAL_REC_BYTES;
	w->nrecs++;
	return 0;
}

/* What a vol record asks of the index: a data block, a tombstone (an
 * ancestor may show data there), or nothing (a plain hole). */
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

int wal_put_vol(struct wal_buf *w, const struct vol_batch *b)
{
	int rc = 0;

	if (b->trunc_from != VOL_NO_TRUNC)
		rc = put(w, &(struct wal_rec){ .type = WAL_TRUNC, .a = b->node, .b = b->trunc_from });
	for (size_t i = 0, n; i < b->nrecs && !rc; i += n) {
		const struct vol_rec *r = &b->recs[i];

		for (n = 1; i + n < b->nrecs && rec_continues(r, &b->recs[i + n], (uint32_t)n); n++)
			;
		rc = put(w, &(struct wal_rec){
			.type = rec_op(r) == REC_DEL ? WAL_DEL : WAL_PUT, .nblocks = (uint32_t)n,
			.a = b->node, .b = r->lblock, .c = r->loc.chunk_id, .d = r->loc.slot,
		});
	}
	if (!rc && b->inherit_changed)
		rc = put(w, &(struct wal_rec){ .type = WAL_INHERIT, .a = b->node, .b = b->inherit });
	if (!rc && b->refs_known)
		rc = put(w, &(struct wal_rec){ .type = WAL_REFS, .a = b->node, .b = b->refs });
	return rc;
}

int wal_put_inode(struct wal_buf *w, uint64_t ino, uint64_t size, int64_t mtime_ns,
		  int64_t ctime_ns)
{
	return put(w, &(struct wal_rec){ .type = WAL_INODE, .a = ino, .b = size,
					 .c = (uint64_t)mtime_ns, .d = (uint64_t)ctime_ns });
}

size_t wal_batch_bytes(const struct wal_buf *w)
{
	return w->len + WAL_TAIL_BYTES;
}

void wal_seal(struct wal_buf *w, uint64_t lsn, uint64_t chunk_id, uint64_t synced_lsn)
{
	uint8_t *p = w->p;

	le32_put(p, WAL_MAGIC);
	le32_put(p + 4, (uint32_t)wal_batch_bytes(w));
	le64_put(p + 8, lsn);
	le64_put(p + 16, chunk_id);
	le64_put(p + 24, synced_lsn);
	le32_put(p + 32, w->nrecs);
	le32_put(p + 36, 0);
	le64_put(p + w->len, cksum_seeded(p, w->len, chunk_id));
}

/* ---- reading ------------------------------------------------------------- */

int wal_parse(const uint8_t *p, size_t avail, uint64_t chunk_id, struct wal_view *v)
{
	uint32_t len, nrecs;

	if (avail < 4)
		return -EBADMSG;
	if (le32_get(p) == 0)
		return -ENODATA;
	if (avail < WAL_HDR_BYTES || le32_get(p) != WAL_MAGIC)
		return -EBADMSG;
	len = le32_get(p + 4);
	nrecs = le32_get(p + 32);
	if (len > avail || len < WAL_HDR_BYTES + WAL_TAIL_BYTES ||
	    (uint64_t)nrecs * WAL_REC_BYTES != len - WAL_HDR_BYTES - WAL_TAIL_BYTES ||
	    le64_get(p + 16) != chunk_id || le32_get(p + 36) != 0)
		return -EBADMSG;
	if (cksum_seeded(p, len - WAL_TAIL_BYTES, chunk_id) != le64_get(p + len - WAL_TAIL_BYTES))
		return -EBADMSG;
	*v = (struct wal_view){
		.lsn = le64_get(p + 8), .chunk_id = chunk_id, .synced_lsn = le64_get(p + 24),
		.len = len, .nrecs = nrecs, .recs = p + WAL_HDR_BYTES,
	};
	return 0;
}

void wal_view_of(const struct wal_buf *w, struct wal_view *v)
{
	const uint8_t *p = w->p;

	*v = (struct wal_view){
		.lsn = le64_get(p + 8), .chunk_id = le64_get(p + 16), .synced_lsn = le64_get(p + 24),
		.len = (uint32_t)wal_batch_bytes(w), .nrecs = w->nrecs, .recs = p + WAL_HDR_BYTES,
	};
}

void wal_rec_get(const struct wal_view *v, uint32_t i, struct wal_rec *r)
{
	const uint8_t *p = v->recs + (size_t)i * WAL_REC_BYTES;

	*r = (struct wal_rec){
		.type = le32_get(p), .nblocks = le32_get(p + 4),
		.a = le64_get(p + 8), .b = le64_get(p + 16), .c = le64_get(p + 24),
		.d = le64_get(p + 32),
	};
}

/* ---- applying ------------------------------------------------------------ */

/* A PUT with data, only the blocks keep says are there: one put per run
 * of kept blocks. */
static int apply_kept(struct bmap *bm, const struct wal_rec *r, wal_keep_fn keep, void *ctx)
{
	uint8_t *ok = malloc(r->nblocks);
	int rc;

	if (!ok)
		return -ENOMEM;
	rc = keep(ctx, r, ok);
	for (uint32_t i = 0, n; i < r->nblocks && !rc; i += n) {
		for (n = 1; i + n < r->nblocks && ok[i + n] == ok[i]; n++)
			;
		if (ok[i])
			rc = bmap_ext_put(bm, r->a, &(struct bmap_ext){
				.lblock = r->b + i, .nblocks = n, .chunk = r->c,
				.slot = (uint32_t)r->d + i });
	}
	free(ok);
	return rc;
}

static int apply_inode(struct bmap *bm, const struct wal_rec *r)
{
	struct bmap_inode in;
	int rc = bmap_inode_get(bm, r->a, &in);

	if (rc == -ENOENT)
		return 0;               /* deleted since: nothing to update */
	if (rc)
		return rc;
	in.size = r->b;
	in.mtime_ns = (int64_t)r->c;
	in.ctime_ns = (int64_t)r->d;
	return bmap_inode_update(bm, &in);
}

static int apply_one(struct bmap *bm, const struct wal_rec *r, wal_keep_fn keep, void *ctx)
{
	struct bmap_node n;
	int rc;

	switch (r->type) {
	case WAL_PUT:
		if (!r->nblocks || r->d > UINT32_MAX)
			return -EBADMSG;
		if (keep && r->c)
			return apply_kept(bm, r, keep, ctx);
		return bmap_ext_put(bm, r->a, &(struct bmap_ext){
			.lblock = r->b, .nblocks = r->nblocks, .chunk = r->c,
			.slot = (uint32_t)r->d });
	case WAL_DEL:
		return bmap_ext_del(bm, r->a, r->b, r->nblocks);
	case WAL_TRUNC:
		return bmap_ext_del_from(bm, r->a, r->b);
	case WAL_INHERIT:
		/* a volume only lowers its limit (a truncate); a background merge
		 * may have lowered it further after this batch was collected */
		rc = bmap_node_get(bm, r->a, &n);
		if (!rc && r->b < n.inherit) {
			n.inherit = r->b;
			rc = bmap_node_update(bm, &n);
		}
		return rc;
	case WAL_INODE:
		return apply_inode(bm, r);
	case WAL_REFS:
		rc = bmap_refs_set(bm, r->a, r->b);
		return rc == -ENOENT ? 0 : rc;  /* an index without the table */
	default:
		return -EBADMSG;
	}
}

/* Keep r, an INODE record, as the last one of its inode in d. */
static int defer_inode(struct wal_inodes *d, const struct wal_rec *r)
{
	for (size_t i = 0; i < d->n; i++) {
		if (d->v[i].a == r->a) {
			d->v[i] = *r;
			return 0;
		}
	}
	if (ARRAY_RESERVE(d->v, d->cap, d->n, 16))
		return -ENOMEM;
	d->v[d->n++] = *r;
	return 0;
}

int wal_apply_deferred(struct bmap *bm, const struct wal_view *v, wal_keep_fn keep, void *ctx,
		       struct wal_inodes *d)
{
	int rc = 0;

	for (uint32_t i = 0; i < v->nrecs && !rc; i++) {
		struct wal_rec r;

		wal_rec_get(v, i, &r);
		if (d && r.type == WAL_INODE)
			rc = defer_inode(d, &r);
		else
			rc = apply_one(bm, &r, keep, ctx);
	}
	return rc;
}

int wal_apply(struct bmap *bm, const struct wal_view *v, wal_keep_fn keep, void *ctx)
{
	return wal_apply_deferred(bm, v, keep, ctx, NULL);
}

int wal_inodes_apply(struct bmap *bm, struct wal_inodes *d)
{
	int rc = 0;

	for (size_t i = 0; i < d->n && !rc; i++)
		rc = apply_inode(bm, &d->v[i]);
	d->n = 0;
	return rc;
}

void wal_inodes_free(struct wal_inodes *d)
{
	free(d->v);
	memset(d, 0, sizeof(*d));
}
