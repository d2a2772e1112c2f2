/*
 * Unit tests of the log batch format (src/wal/wal.c): what a flush writes
 * into LOG slots, what recovery accepts, and what a checkpoint applies.
 *
 * The parse tests are what crash recovery rests on: a batch cut short at
 * any byte, or with any byte changed, or read as another chunk's, is
 * refused (-EBADMSG), and zeros read as "nothing here" (-ENODATA).  The
 * apply tests run records against a real index and read the extents back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "vsnapfs/bmap.h"
#include "vsnapfs/wal.h"

static char dir[64];
static struct bmap *bm;

static void setup(void)
{
	char path[128];

	strcpy(dir, "/tmp/vsnapfs-wal-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/index.sqlite", dir);
	cr_assert_eq(bmap_create(path, 4096, 0, 0), 0);
	cr_assert_eq(bmap_open(path, 0, &bm), 0);
}

static void teardown(void)
{
	char cmd[128];

	bmap_close(bm);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(wal, .init = setup, .fini = teardown);

/* A batch of one volume: blocks 10-13 written together (one run), 14 in
 * another chunk, 20 zeroed over an ancestor (tombstone), 21 zeroed as a
 * plain hole, a truncation at 100, a new inherit limit, and its inode. */
static void sample(struct wal_buf *w, uint64_t node, uint64_t chunk_id)
{
	struct vol_rec recs[] = {
		{ .lblock = 10, .loc = { .chunk_id = 5, .slot = 7 } },
		{ .lblock = 11, .loc = { .chunk_id = 5, .slot = 8 } },
		{ .lblock = 12, .loc = { .chunk_id = 5, .slot = 9 } },
		{ .lblock = 13, .loc = { .chunk_id = 5, .slot = 10 } },
		{ .lblock = 14, .loc = { .chunk_id = 6, .slot = 0 } },
		{ .lblock = 20, .anc = true },
		{ .lblock = 21 },
	};
	struct vol_batch b = {
		.node = node, .trunc_from = 100, .inherit = 50, .inherit_changed = true,
		.recs = recs, .nrecs = 7,
	};

	cr_assert_eq(wal_buf_init(w), 0);
	cr_assert_eq(wal_put_vol(w, &b), 0);
	cr_assert_eq(wal_put_inode(w, 1, 4096 * 30, 111, 222), 0);
	wal_seal(w, 42, chunk_id, 41);
}

Test(wal, a_sealed_batch_parses_back_with_its_records_in_order)
{
	struct wal_buf w = { 0 };
	struct wal_view v;
	struct wal_rec r;

	sample(&w, 3, 9);
	cr_assert_eq(wal_parse(w.p, wal_batch_bytes(&w), 9, &v), 0);
	cr_assert_eq(v.lsn, 42);
	cr_assert_eq(v.synced_lsn, 41);
	cr_assert_eq(v.len, wal_batch_bytes(&w));
	/* TRUNC, PUT 10-13 (one run), PUT 14, PUT 20 (tombstone), DEL 21, INHERIT, INODE */
	cr_assert_eq(v.nrecs, 7);
	wal_rec_get(&v, 0, &r);
	cr_assert(r.type == WAL_TRUNC && r.a == 3 && r.b == 100);
	wal_rec_get(&v, 1, &r);
	cr_assert(r.type == WAL_PUT && r.b == 10 && r.nblocks == 4 && r.c == 5 && r.d == 7);
	wal_rec_get(&v, 2, &r);
	cr_assert(r.type == WAL_PUT && r.b == 14 && r.nblocks == 1 && r.c == 6 && r.d == 0);
	wal_rec_get(&v, 3, &r);
	cr_assert(r.type == WAL_PUT && r.b == 20 && r.nblocks == 1 && r.c == 0);
	wal_rec_get(&v, 4, &r);
	cr_assert(r.type == WAL_DEL && r.b == 21 && r.nblocks == 1);
	wal_rec_get(&v, 5, &r);
	cr_assert(r.type == WAL_INHERIT && r.a == 3 && r.b == 50);
	wal_rec_get(&v, 6, &r);
	cr_assert(r.type == WAL_INODE && r.a == 1 && r.b == 4096 * 30 && r.c == 111 && r.d == 222);
	wal_buf_free(&w);
}

Test(wal, a_batch_cut_short_at_any_byte_is_refused)
{
	struct wal_buf w = { 0 };
	size_t len;
	uint8_t *p;

	sample(&w, 3, 9);
	len = wal_batch_bytes(&w);
	p = calloc(1, len);
	/* as a torn write leaves it: the first n bytes, zeros after */
	for (size_t n = 1; n < len; n++) {
		struct wal_view v;

		memset(p, 0, len);
		memcpy(p, w.p, n);
		cr_assert_eq(wal_parse(p, len, 9, &v), -EBADMSG,
			     "cut at %zu of %zu bytes", n, len);
		cr_assert_eq(wal_parse(w.p, n, 9, &v), -EBADMSG, "%zu of %zu bytes readable", n, len);
	}
	free(p);
	wal_buf_free(&w);
}

Test(wal, any_changed_byte_or_another_chunk_is_refused_and_zeros_are_nothing)
{
	struct wal_buf w = { 0 };
	struct wal_view v;
	uint8_t zeros[64] = { 0 };
	size_t len;

	sample(&w, 3, 9);
	len = wal_batch_bytes(&w);
	for (size_t i = 0; i < len; i++) {
		w.p[i] ^= 0x10;
		cr_assert_eq(wal_parse(w.p, len, 9, &v), -EBADMSG, "byte %zu changed", i);
		w.p[i] ^= 0x10;
	}
	cr_assert_eq(wal_parse(w.p, len, 9, &v), 0);
	cr_assert_eq(wal_parse(w.p, len, 10, &v), -EBADMSG, "a batch of chunk 9 read in chunk 10");
	cr_assert_eq(wal_parse(zeros, sizeof(zeros), 9, &v), -ENODATA);
	wal_buf_free(&w);
}

struct exts {
	struct bmap_ext x[16];
	size_t n;
};

static int add_ext(void *ctx, const struct bmap_ext *x)
{
	struct exts *e = ctx;

	cr_assert_lt(e->n, 16);
	e->x[e->n++] = *x;
	return 0;
}

static void read_exts(uint64_t node, struct exts *e)
{
	e->n = 0;
	cr_assert_eq(bmap_ext_range(bm, node, 0, BMAP_LBLOCK_LIMIT, add_ext, e), 0);
}

/* A node with a parent, and block 21 and 200 its own before the batch. */
static uint64_t sample_node(void)
{
	struct bmap_node p = { 0 }, n;
	struct bmap_ext x = { .lblock = 21, .nblocks = 1, .chunk = 2, .slot = 3 };
	struct bmap_ext y = { .lblock = 200, .nblocks = 2, .chunk = 2, .slot = 4 };

	cr_assert_eq(bmap_node_create(bm, &p), 0);
	n = (struct bmap_node){ .parent = p.id, .inherit = 300 };
	cr_assert_eq(bmap_node_create(bm, &n), 0);
	cr_assert_eq(bmap_ext_put(bm, n.id, &x), 0);
	cr_assert_eq(bmap_ext_put(bm, n.id, &y), 0);
	return n.id;
}

Test(wal, applying_a_batch_writes_its_extents_truncation_inherit_limit_and_inode)
{
	struct wal_buf w = { 0 };
	struct wal_view v;
	struct bmap_inode in;
	struct bmap_node n;
	struct exts e;
	uint64_t node;

	cr_assert_eq(bmap_begin(bm), 0);
	node = sample_node();
	sample(&w, node, 9);
	wal_view_of(&w, &v);
	cr_assert_eq(wal_apply(bm, &v, NULL, NULL), 0);
	cr_assert_eq(bmap_commit(bm), 0);
	read_exts(node, &e);
	/* 10-13 -> 5:7, 14 -> 6:0, 20 tombstone; 21 deleted; 200-201 truncated */
	cr_assert_eq(e.n, 3);
	cr_assert(e.x[0].lblock == 10 && e.x[0].nblocks == 4 && e.x[0].chunk == 5 && e.x[0].slot == 7);
	cr_assert(e.x[1].lblock == 14 && e.x[1].nblocks == 1 && e.x[1].chunk == 6);
	cr_assert(e.x[2].lblock == 20 && e.x[2].nblocks == 1 && e.x[2].chunk == 0);
	cr_assert_eq(bmap_node_get(bm, node, &n), 0);
	cr_assert_eq(n.inherit, 50);
	cr_assert_eq(bmap_inode_get(bm, 1, &in), 0);
	cr_assert(in.size == 4096 * 30 && in.mtime_ns == 111 && in.ctime_ns == 222);
	cr_assert_eq(in.mode, 0755, "the inode's other fields stay");
	wal_buf_free(&w);
}

/* Recovery's filter: block 11 and 13 of the run did not reach the disk. */
static int keep_even(void *ctx, const struct wal_rec *r, uint8_t *ok)
{
	for (uint32_t i = 0; i < r->nblocks; i++)
		ok[i] = (r->b + i) % 2 == 0;
	(*(int *)ctx)++;
	return 0;
}

Test(wal, a_keep_filter_drops_the_blocks_it_refuses_and_keeps_the_rest_of_the_run)
{
	struct wal_buf w = { 0 };
	struct wal_view v;
	struct exts e;
	uint64_t node;
	int asked = 0;

	cr_assert_eq(bmap_begin(bm), 0);
	node = sample_node();
	sample(&w, node, 9);
	wal_view_of(&w, &v);
	cr_assert_eq(wal_apply(bm, &v, keep_even, &asked), 0);
	cr_assert_eq(bmap_commit(bm), 0);
	cr_assert_eq(asked, 2, "asked about the two PUTs with data, not the tombstone");
	read_exts(node, &e);
	/* 10 -> 5:7, 12 -> 5:9, 14 -> 6:0, 20 tombstone */
	cr_assert_eq(e.n, 4);
	cr_assert(e.x[0].lblock == 10 && e.x[0].nblocks == 1 && e.x[0].slot == 7);
	cr_assert(e.x[1].lblock == 12 && e.x[1].nblocks == 1 && e.x[1].slot == 9);
	cr_assert(e.x[2].lblock == 14 && e.x[3].lblock == 20);
	wal_buf_free(&w);
}

Test(wal, an_inode_deleted_since_is_skipped_and_an_unknown_record_refused)
{
	struct wal_buf w = { 0 };
	struct wal_view v;

	cr_assert_eq(wal_buf_init(&w), 0);
	cr_assert_eq(wal_put_inode(&w, 999, 1, 2, 3), 0);
	wal_seal(&w, 1, 1, 0);
	wal_view_of(&w, &v);
	cr_assert_eq(wal_apply(bm, &v, NULL, NULL), 0);
	/* a record type from a newer version: refused, not guessed at */
	w.p[WAL_HDR_BYTES] = 77;
	wal_seal(&w, 1, 1, 0);
	wal_view_of(&w, &v);
	cr_assert_eq(wal_apply(bm, &v, NULL, NULL), -EBADMSG);
	wal_buf_free(&w);
}

Test(wal, deferred_inode_records_keep_only_the_last_one_per_inode)
{
	struct wal_inodes d = { 0 };
	struct bmap_inode in;

	cr_assert_eq(bmap_begin(bm), 0);
	for (uint64_t size = 10; size <= 30; size += 10) {
		struct wal_buf w = { 0 };
		struct wal_view v;

		cr_assert_eq(wal_buf_init(&w), 0);
		cr_assert_eq(wal_put_inode(&w, 1, size, (int64_t)size, (int64_t)size), 0);
		wal_seal(&w, size, 1, 0);
		wal_view_of(&w, &v);
		cr_assert_eq(wal_apply_deferred(bm, &v, NULL, NULL, &d), 0);
		wal_buf_free(&w);
	}
	cr_assert_eq(d.n, 1, "one record per inode is kept");
	cr_assert_eq(bmap_inode_get(bm, 1, &in), 0);
	cr_assert_eq(in.size, 0, "not written before wal_inodes_apply");
	cr_assert_eq(wal_inodes_apply(bm, &d), 0);
	cr_assert_eq(bmap_commit(bm), 0);
	cr_assert_eq(bmap_inode_get(bm, 1, &in), 0);
	cr_assert(in.size == 30 && in.mtime_ns == 30, "the last record wins");
	wal_inodes_free(&d);
}
