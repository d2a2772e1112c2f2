/*
 * Unit tests of the block map (src/bmap/bmap.c), index format 3.
 *
 * Each test gets a fresh directory under /tmp (mkdtemp) holding one index,
 * removed afterwards.  Foreign or damaged files are made by editing bytes of
 * a real index (the SQLite header keeps user_version at offset 60 and
 * application_id at offset 68, big-endian).  Format-2 indexes, which this
 * code no longer creates, are made with sqlite3_* calls and the format-2
 * schema text (v2_schema_sql, copied from the format-2 bmap.c).
 *
 * The model tests run random edits against a per-block array and an
 * in-memory emap of the same edits, and compare after every one: the rows
 * must be exactly the emap's extents (canonical form).  Seed: env
 * TEST_BMAP_SEED (printed); length: TEST_BMAP_OPS.
 *
 * The put-rate test prints puts per second and asserts nothing; set
 * VSNAPFS_BENCH_ROWS to shorten it (under valgrind, for instance).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <sqlite3.h>

#include "vsnapfs/bmap.h"
#include "vsnapfs/emap.h"

static char dir[64];
static char path[128];

static void rm_tree(const char *p)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p);
	cr_assert_eq(system(cmd), 0);
}

static void setup(void)
{
	strcpy(dir, "/tmp/vsnapfs-bmap-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/index.sqlite", dir);
}

static void teardown(void)
{
	rm_tree(dir);
}

TestSuite(bmap, .init = setup, .fini = teardown);

/* ---- helpers ------------------------------------------------------------ */

static struct bmap *make_index(uint32_t block_size)
{
	struct bmap *b = NULL;

	cr_assert_eq(bmap_create(path, block_size, 1000, 1000), 0);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_not_null(b);
	cr_assert_eq(bmap_format(b), BMAP_FORMAT_VERSION);
	return b;
}

/* An index whose nodes 1..n exist, for tests of extents: a node is where
 * its count (node.nblocks) is kept. */
static struct bmap *make_index_with_nodes(uint64_t n)
{
	struct bmap *b = make_index(4096);

	for (uint64_t i = 1; i <= n; i++) {
		struct bmap_node nd = { .inherit = 0 };

		cr_assert_eq(bmap_node_create(b, &nd), 0);
		cr_assert_eq(nd.id, i);
	}
	return b;
}

static void *read_file(const char *p, size_t *len)
{
	struct stat st;
	void *buf;
	int fd;

	fd = open(p, O_RDONLY);
	cr_assert_geq(fd, 0, "open %s: %s", p, strerror(errno));
	cr_assert_eq(fstat(fd, &st), 0);
	buf = malloc((size_t)st.st_size + 1);
	cr_assert_not_null(buf);
	cr_assert_eq(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return buf;
}

static void write_file(const char *p, const void *buf, size_t len)
{
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static void patch_be32(const char *p, off_t off, uint32_t v)
{
	unsigned char be[4] = { v >> 24, v >> 16, v >> 8, v };
	int fd = open(p, O_WRONLY);

	cr_assert_geq(fd, 0);
	cr_assert_eq(pwrite(fd, be, 4, off), 4);
	close(fd);
}

static int exists(const char *p)
{
	struct stat st;

	return stat(p, &st) == 0;
}

/* Open must refuse with want and leave the file as it was. */
static void assert_open_refused_unchanged(int want)
{
	struct bmap *b = (struct bmap *)1;
	size_t len0, len1;
	void *before, *after;
	char wal[160];

	before = read_file(path, &len0);
	cr_assert_eq(bmap_open(path, 0, &b), want);
	cr_assert_null(b, "out must be NULL on failure");
	after = read_file(path, &len1);
	cr_assert_eq(len0, len1);
	cr_assert_eq(memcmp(before, after, len0), 0, "refused file was modified");
	snprintf(wal, sizeof(wal), "%s-wal", path);
	cr_assert_not(exists(wal), "refusal left a WAL behind");
	free(before);
	free(after);
}

static struct bmap_inode make_inode(uint64_t parent, const char *name, uint32_t kind)
{
	struct bmap_inode in;

	memset(&in, 0, sizeof(in));
	in.parent = parent;
	snprintf(in.name, sizeof(in.name), "%s", name);
	in.kind = kind;
	in.mode = kind == BMAP_DIR ? 0755 : 0644;
	in.uid = 1000;
	in.gid = 1000;
	in.atime_ns = 1700000000123456789LL;
	in.mtime_ns = 1700000000223456789LL;
	in.ctime_ns = 1700000000323456789LL;
	return in;
}

static struct bmap_ext ext(uint64_t lblock, uint32_t nblocks, uint64_t chunk, uint32_t slot)
{
	struct bmap_ext e = { .lblock = lblock, .nblocks = nblocks, .chunk = chunk, .slot = slot };

	return e;
}

static void put(struct bmap *b, uint64_t node, uint64_t lblock, uint32_t nblocks,
		uint64_t chunk, uint32_t slot)
{
	struct bmap_ext e = ext(lblock, nblocks, chunk, slot);

	cr_assert_eq(bmap_ext_put(b, node, &e), 0, "put node %" PRIu64 " [%" PRIu64 ", +%u)",
		     node, lblock, nblocks);
}

/* Collectors for the walks. */
struct seen {
	uint64_t a[64], b[64];
	struct bmap_ext l[64];
	char name[64][BMAP_NAME_MAX + 1];
	int n;
	int stop_at;                    /* stop with 7 when n reaches it (0: never) */
};

static int collect_inode(void *ctx, const struct bmap_inode *in)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 64);
	s->a[s->n] = in->ino;
	strcpy(s->name[s->n], in->name);
	s->n++;
	return s->stop_at && s->n == s->stop_at ? 7 : 0;
}

static int collect_ext(void *ctx, const struct bmap_ext *e)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 64);
	s->a[s->n] = e->lblock;
	s->l[s->n] = *e;
	s->n++;
	return s->stop_at && s->n == s->stop_at ? 7 : 0;
}

static int collect_ref(void *ctx, uint64_t chunk, uint64_t nrefs)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 64);
	s->a[s->n] = chunk;
	s->b[s->n] = nrefs;
	s->n++;
	return s->stop_at && s->n == s->stop_at ? 7 : 0;
}

static int collect_node_ext(void *ctx, uint64_t node, const struct bmap_ext *e)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 64);
	s->a[s->n] = node;
	s->b[s->n] = e->lblock;
	s->l[s->n] = *e;
	s->n++;
	return 0;
}

/* A node's data blocks, as kept in node.nblocks, which must be what a
 * scan of its extents adds up to. */
static uint64_t blocks(struct bmap *b, uint64_t node)
{
	uint64_t n = 99, scanned = 98;

	cr_assert_eq(bmap_node_blocks(b, node, &n), 0);
	cr_assert_eq(bmap_node_blocks_scan(b, node, &scanned), 0);
	cr_assert_eq(n, scanned, "node %" PRIu64 ": node.nblocks says %" PRIu64 ", its extents %"
		     PRIu64, node, n, scanned);
	return n;
}

/* Every extent of node, data and tombstones. */
static void node_exts(struct bmap *b, uint64_t node, struct seen *s)
{
	memset(s, 0, sizeof(*s));
	cr_assert_eq(bmap_ext_range(b, node, 0, UINT64_MAX, collect_ext, s), 0);
}

static void assert_ext(const struct seen *s, int i, uint64_t lblock, uint32_t nblocks,
		       uint64_t chunk, uint32_t slot)
{
	cr_assert_lt(i, s->n, "extent %d missing (%d extents)", i, s->n);
	cr_assert(s->l[i].lblock == lblock && s->l[i].nblocks == nblocks &&
		  s->l[i].chunk == chunk && s->l[i].slot == slot,
		  "extent %d: [%" PRIu64 ", +%u) chunk %" PRIu64 " slot %u, want [%" PRIu64
		  ", +%u) chunk %" PRIu64 " slot %u", i, s->l[i].lblock, s->l[i].nblocks,
		  s->l[i].chunk, s->l[i].slot, lblock, nblocks, chunk, slot);
}

/* ---- format 2, made by hand ------------------------------------------------ */

static const char v2_schema_sql[] =
	"CREATE TABLE meta (\n"
	"  key   TEXT PRIMARY KEY,   -- block_size, format_version, created_ns, next_chunk_id\n"
	"  value INTEGER NOT NULL    -- an unsigned 64-bit value, same bits in a signed int64\n"
	") WITHOUT ROWID;\n"
	"\n"
	"CREATE TABLE inode (\n"
	"  ino      INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused; 1 is the root\n"
	"  parent   INTEGER NOT NULL, -- directory ino; 0 for the root and unlinked volumes\n"
	"  name     BLOB NOT NULL,    -- 1..255 bytes, compared bytewise; empty when parent = 0\n"
	"  kind     INTEGER NOT NULL, -- enum bmap_kind: 1 directory, 2 volume\n"
	"  mode     INTEGER NOT NULL, -- permission bits only (07777)\n"
	"  uid      INTEGER NOT NULL, -- owner\n"
	"  gid      INTEGER NOT NULL, -- group\n"
	"  atime_ns INTEGER NOT NULL, -- ns since the epoch\n"
	"  mtime_ns INTEGER NOT NULL, -- ns since the epoch\n"
	"  ctime_ns INTEGER NOT NULL, -- ns since the epoch\n"
	"  size     INTEGER NOT NULL, -- volumes: bytes (uint64 bits); directories: 0\n"
	"  node     INTEGER NOT NULL  -- volumes: current map node id; directories: 0\n"
	");\n"
	"-- Names are unique in a directory; unlinked inodes (parent 0, name '') are not.\n"
	"CREATE UNIQUE INDEX inode_name ON inode(parent, name) WHERE parent <> 0;\n"
	"-- (parent, ino) order: directory listings and orphans without a sort.\n"
	"CREATE INDEX inode_parent ON inode(parent);\n"
	"\n"
	"CREATE TABLE node (\n"
	"  id      INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused\n"
	"  parent  INTEGER NOT NULL DEFAULT 0, -- node blocks are inherited from; 0: none\n"
	"  inherit INTEGER NOT NULL,           -- blocks [0, inherit) come from parent (uint64 bits)\n"
	"  nrows   INTEGER NOT NULL DEFAULT 0  -- its bmap rows with chunk <> 0, kept by bmap.c\n"
	");\n"
	"CREATE INDEX node_parent ON node(parent);\n"
	"\n"
	"CREATE TABLE bmap (\n"
	"  node   INTEGER NOT NULL, -- node.id\n"
	"  lblock INTEGER NOT NULL, -- block number inside the volume, < 2^63\n"
	"  chunk  INTEGER NOT NULL, -- chunk file id; 0: tombstone, the block reads as zeros\n"
	"  slot   INTEGER NOT NULL, -- block index inside the chunk file; 0 for a tombstone\n"
	"  cksum  INTEGER NOT NULL, -- XXH3-64 of the payload, chunk_loc.cksum (uint64 bits); 0 for a tombstone\n"
	"  PRIMARY KEY (node, lblock)\n"
	") WITHOUT ROWID;\n"
	"\n"
	"CREATE TABLE snapshot (\n"
	"  id         INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused\n"
	"  dir        INTEGER NOT NULL, -- inode.ino of the directory whose .snapshots holds it\n"
	"  name       BLOB NOT NULL,    -- NAME, or FILE@NAME for a snapshot of one volume\n"
	"  created_ns INTEGER NOT NULL  -- ns since the epoch\n"
	");\n"
	"CREATE UNIQUE INDEX snapshot_name ON snapshot(dir, name);\n"
	"\n"
	"-- The frozen tree of a snapshot: inode rows as they were, original numbers;\n"
	"-- its top-level entries have parent = snapshot.dir.\n"
	"CREATE TABLE sinode (\n"
	"  snap     INTEGER NOT NULL, -- snapshot.id\n"
	"  ino      INTEGER NOT NULL, -- the inode's number when the snapshot was taken\n"
	"  parent   INTEGER NOT NULL,\n"
	"  name     BLOB NOT NULL,\n"
	"  kind     INTEGER NOT NULL,\n"
	"  mode     INTEGER NOT NULL,\n"
	"  uid      INTEGER NOT NULL,\n"
	"  gid      INTEGER NOT NULL,\n"
	"  atime_ns INTEGER NOT NULL,\n"
	"  mtime_ns INTEGER NOT NULL,\n"
	"  ctime_ns INTEGER NOT NULL,\n"
	"  size     INTEGER NOT NULL,\n"
	"  node     INTEGER NOT NULL, -- volumes: the frozen map node; directories: 0\n"
	"  PRIMARY KEY (snap, ino)\n"
	") WITHOUT ROWID;\n"
	"CREATE INDEX sinode_name ON sinode(snap, parent, name);\n"
	"-- Who names a node: a node nobody names is released (deleted or merged).\n"
	"CREATE INDEX sinode_node ON sinode(node);\n"
	"CREATE INDEX inode_node ON inode(node);\n";

static sqlite3 *v2_db(const char *p)
{
	sqlite3 *db;

	cr_assert_eq(sqlite3_open(p, &db), SQLITE_OK);
	return db;
}

static void v2_exec(sqlite3 *db, const char *sql)
{
	cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s: %s", sql,
		     sqlite3_errmsg(db));
}

/* A format-2 index at p, as the format-2 bmap_create made it, with nodes
 * 1..nnodes (no rows yet). */
static void v2_create(const char *p, uint32_t block_size, int nnodes)
{
	sqlite3 *db = v2_db(p);
	char *sql;

	v2_exec(db, "PRAGMA journal_mode = WAL");
	sql = sqlite3_mprintf("BEGIN; %s PRAGMA application_id = %d; PRAGMA user_version = 2;"
			      "INSERT INTO meta(key, value) VALUES('block_size', %u),"
			      " ('format_version', 2), ('created_ns', 1), ('next_chunk_id', 7);"
			      "INSERT INTO inode(ino, parent, name, kind, mode, uid, gid, atime_ns,"
			      " mtime_ns, ctime_ns, size, node) VALUES(1, 0, X'', 1, 493, 0, 0, 0, 0,"
			      " 0, 0, 0); COMMIT;", v2_schema_sql, 0x76736e70, block_size);
	v2_exec(db, sql);
	sqlite3_free(sql);
	for (int i = 0; i < nnodes; i++)
		v2_exec(db, "INSERT INTO node(parent, inherit) VALUES(0, 0)");
	cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

struct v2_row {
	uint64_t node, lblock, chunk;
	uint32_t slot;
	uint64_t cksum;
};

/* Insert rows and keep node.nrows as format 2 did. */
static void v2_insert(const char *p, const struct v2_row *r, size_t n)
{
	sqlite3 *db = v2_db(p);
	sqlite3_stmt *s;

	v2_exec(db, "BEGIN");
	cr_assert_eq(sqlite3_prepare_v2(db, "INSERT INTO bmap(node, lblock, chunk, slot, cksum)"
					" VALUES(?, ?, ?, ?, ?)", -1, &s, NULL), SQLITE_OK);
	for (size_t i = 0; i < n; i++) {
		sqlite3_bind_int64(s, 1, (sqlite3_int64)r[i].node);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)r[i].lblock);
		sqlite3_bind_int64(s, 3, (sqlite3_int64)r[i].chunk);
		sqlite3_bind_int64(s, 4, r[i].slot);
		sqlite3_bind_int64(s, 5, (sqlite3_int64)r[i].cksum);
		cr_assert_eq(sqlite3_step(s), SQLITE_DONE, "%s", sqlite3_errmsg(db));
		sqlite3_reset(s);
	}
	sqlite3_finalize(s);
	v2_exec(db, "UPDATE node SET nrows = (SELECT count(*) FROM bmap"
		    " WHERE bmap.node = node.id AND chunk <> 0)");
	v2_exec(db, "COMMIT");
	cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

Test(bmap, create_then_open_keeps_block_size)
{
	struct bmap *b = NULL;
	uint64_t v;

	cr_assert_eq(bmap_create(path, 65536, 0, 0), 0);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_block_size(b), 65536);
	cr_assert_eq(bmap_meta_get(b, "block_size", &v), 0);
	cr_assert_eq(v, 65536);
	cr_assert_eq(bmap_meta_get(b, "format_version", &v), 0);
	cr_assert_eq(v, BMAP_FORMAT_VERSION);
	cr_assert_eq(bmap_meta_get(b, "next_chunk_id", &v), 0);
	cr_assert_eq(v, 1);
	cr_assert_eq(bmap_meta_get(b, "created_ns", &v), 0);
	cr_assert_gt(v, 1600000000ull * 1000000000ull);
	cr_assert_eq(bmap_meta_get(b, "ckpt_lsn", &v), 0);
	cr_assert_eq(v, 0);
	cr_assert_eq(bmap_meta_get(b, "ckpt_chunk", &v), 0);
	cr_assert_eq(v, 1, "the first chunk id");
	cr_assert_eq(bmap_meta_get(b, "upgrade", &v), -ENOENT);
	cr_assert_eq(bmap_upgraded_from(b), 0);
	bmap_close(b);
}

Test(bmap, create_leaves_no_wal_behind)
{
	char wal[160];

	cr_assert_eq(bmap_create(path, 4096, 0, 0), 0);
	snprintf(wal, sizeof(wal), "%s-wal", path);
	cr_assert_not(exists(wal), "the WAL must be checkpointed into the file at create");
}

Test(bmap, create_accepts_power_of_two_block_sizes_from_4k_to_1m_only)
{
	static const uint32_t bad[] = { 0, 512, 2048, 4095, 6144, 12288, 2u << 20, 0xffffffffu };
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(bmap_create(path, bad[i], 0, 0), -EINVAL, "block size %u", bad[i]);
		cr_assert_not(exists(path));
	}
	cr_assert_eq(bmap_create(path, 1u << 20, 0, 0), 0);
	unlink(path);
	cr_assert_eq(bmap_create(path, 4096, 0, 0), 0);
}

Test(bmap, create_refuses_an_existing_file)
{
	size_t len;
	void *buf;

	write_file(path, "hello", 5);
	cr_assert_eq(bmap_create(path, 4096, 0, 0), -EEXIST);
	buf = read_file(path, &len);
	cr_assert_eq(len, 5);
	cr_assert_eq(memcmp(buf, "hello", 5), 0);
	free(buf);
}

Test(bmap, create_refuses_an_existing_index)
{
	cr_assert_eq(bmap_create(path, 4096, 0, 0), 0);
	cr_assert_eq(bmap_create(path, 4096, 0, 0), -EEXIST);
}

Test(bmap, create_refuses_a_leftover_wal)
{
	char wal[160];

	snprintf(wal, sizeof(wal), "%s-wal", path);
	write_file(wal, "old", 3);
	cr_assert_eq(bmap_create(path, 4096, 0, 0), -EEXIST);
	cr_assert_not(exists(path));
}

Test(bmap, open_of_missing_path_is_enoent_and_creates_nothing)
{
	struct bmap *b = NULL;

	cr_assert_eq(bmap_open(path, 0, &b), -ENOENT);
	cr_assert_null(b);
	cr_assert_eq(bmap_open(path, 1, &b), -ENOENT);
	cr_assert_not(exists(path));
}

Test(bmap, open_of_garbage_file_is_euclean_and_leaves_it_byte_identical)
{
	char junk[16384];
	size_t i;

	for (i = 0; i < sizeof(junk); i++)
		junk[i] = (char)(i * 131 + 7);
	write_file(path, junk, sizeof(junk));
	assert_open_refused_unchanged(-EUCLEAN);
}

Test(bmap, open_of_empty_file_is_euclean_and_leaves_it_empty)
{
	write_file(path, "", 0);
	assert_open_refused_unchanged(-EUCLEAN);
}

Test(bmap, open_of_sqlite_db_with_other_application_id_is_euclean)
{
	cr_assert_eq(bmap_create(path, 4096, 0, 0), 0);
	patch_be32(path, 68, 0x12345678);
	assert_open_refused_unchanged(-EUCLEAN);
}

Test(bmap, open_of_plain_sqlite_db_is_euclean)
{
	cr_assert_eq(bmap_create(path, 4096, 0, 0), 0);
	patch_be32(path, 68, 0);        /* what every other SQLite file has */
	assert_open_refused_unchanged(-EUCLEAN);
}

Test(bmap, open_of_other_format_version_is_eprotonosupport)
{
	cr_assert_eq(bmap_create(path, 4096, 0, 0), 0);
	patch_be32(path, 60, BMAP_FORMAT_VERSION + 1);
	assert_open_refused_unchanged(-EPROTONOSUPPORT);
}


/* ---- formats 1 and 2 --------------------------------------------------------- */

/* Turn the format-2 index at path into format 1: its node table as an
 * older vsnapfs created it, comments included (ALTER TABLE edits that text). */
static void downgrade_to_format_1(void)
{
	sqlite3 *db = v2_db(path);

	v2_exec(db, "BEGIN;"
		"CREATE TABLE node_v1 (\n"
		"  id      INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused\n"
		"  parent  INTEGER NOT NULL DEFAULT 0, -- node blocks are inherited from; 0: none\n"
		"  inherit INTEGER NOT NULL            -- blocks [0, inherit) come from parent (uint64 bits)\n"
		");\n"
		"INSERT INTO node_v1 SELECT id, parent, inherit FROM node;"
		"DROP TABLE node;"
		"ALTER TABLE node_v1 RENAME TO node;"
		"CREATE INDEX node_parent ON node(parent);"
		"UPDATE meta SET value = 1 WHERE key = 'format_version';"
		"PRAGMA user_version = 1;"
		"COMMIT;");
	cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

static int ops_row_ok(void *ctx, uint64_t node, uint64_t lblock, uint64_t chunk, uint32_t slot,
		      uint64_t cksum)
{
	return 0;
}

static int ops_sync_ok(void *ctx)
{
	return 0;
}

static const struct bmap_upgrade_ops quiet_ops = { .row = ops_row_ok, .sync = ops_sync_ok };

/* Blocks 0..49 of nodes 1 and 2 alternately (chunk 4, slot = lblock), and
 * a tombstone at 100 of node 1. */
static void v2_fill_simple(void)
{
	struct v2_row r[51];

	for (uint64_t i = 0; i < 50; i++)
		r[i] = (struct v2_row){ 1 + i % 2, i, 4, (uint32_t)i, 1000 + i };
	r[50] = (struct v2_row){ 1, 100, 0, 0, 0 };
	v2_insert(path, r, 51);
}

Test(bmap, a_format_1_index_opens_as_2_when_writable_and_the_run_takes_it_to_3)
{
	struct bmap *b = NULL, *ro = NULL;
	struct bmap_inode in;
	struct seen s;
	uint64_t v;

	v2_create(path, 4096, 3);
	v2_fill_simple();
	downgrade_to_format_1();

	/* read-only: the file stays format 1; no blocks, the namespace reads */
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_format(ro), 1);
	cr_assert_eq(bmap_inode_get(ro, BMAP_ROOT_INO, &in), 0);
	cr_assert_eq(bmap_node_blocks(ro, 1, &v), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_upgrade_run(ro, 0, &quiet_ops), -EROFS);
	bmap_close(ro);

	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_format(b), 2, "a writable open takes format 1 to 2");
	cr_assert_eq(bmap_upgraded_from(b), 1);
	cr_assert_eq(bmap_upgrade_run(b, 7, &quiet_ops), 0);
	cr_assert_eq(bmap_format(b), 3);
	cr_assert_eq(bmap_upgraded_from(b), 1);
	cr_assert_eq(blocks(b, 1), 25);
	cr_assert_eq(blocks(b, 2), 25);
	cr_assert_eq(blocks(b, 3), 0);
	/* node 1 has every even block: 25 extents of 1 (slots 0, 2, ...: no
	 * two touch), and the tombstone */
	cr_assert_eq(bmap_node_extents(b, 1, &v), 0);
	cr_assert_eq(v, 26);
	node_exts(b, 2, &s);
	cr_assert_eq(s.n, 25);
	assert_ext(&s, 0, 1, 1, 4, 1);
	bmap_close(b);
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_meta_get(ro, "format_version", &v), 0);
	cr_assert_eq(v, 3, "a reader sees the upgrade");
	cr_assert_eq(bmap_format(ro), 3);
	bmap_close(ro);
}

Test(bmap, a_format_2_index_serves_the_namespace_but_no_block_call_until_upgraded)
{
	struct bmap *b = NULL, *ro = NULL;
	struct bmap_ext e = ext(0, 1, 1, 0);
	struct bmap_node n = { 0 };
	struct bmap_inode in;
	struct seen s = { 0 };
	bool done;
	uint64_t v;

	v2_create(path, 4096, 2);
	v2_fill_simple();
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_format(b), 2);
	cr_assert_eq(bmap_upgraded_from(b), 0);
	cr_assert_eq(bmap_inode_get(b, BMAP_ROOT_INO, &in), 0);
	cr_assert_eq(bmap_node_create(b, &n), 0);
	cr_assert_eq(bmap_meta_get(b, "next_chunk_id", &v), 0);
	cr_assert_eq(bmap_ext_put(b, 1, &e), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_ext_del(b, 1, 0, 1), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_ext_del_from(b, 1, 0), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_ext_range(b, 1, 0, 10, collect_ext, &s), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_node_blocks(b, 1, &v), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_node_blocks_scan(b, 1, &v), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_node_extents(b, 1, &v), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_chunk_refs(b, collect_ref, &s), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_node_merge(b, 1, 2), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_node_merge_some(b, 1, 2, 5, &done), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_ext_relocate(b, 1, &e, 2, 0), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_exts_all(b, collect_node_ext, &s), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_node_delete(b, 1), -EPROTONOSUPPORT);

	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_format(ro), 2);
	cr_assert_eq(bmap_upgrade_run(ro, 0, &quiet_ops), -EROFS);
	cr_assert_eq(bmap_node_blocks(ro, 1, &v), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_upgrade_run(b, 0, &quiet_ops), -EINVAL, "not inside a transaction");
	bmap_rollback(b);
	cr_assert_eq(bmap_upgrade_run(b, 0, &quiet_ops), 0);
	cr_assert_eq(bmap_upgrade_run(b, 0, &quiet_ops), 0, "a second run has nothing to do");
	cr_assert_eq(blocks(b, 1), 25);
	cr_assert_eq(blocks(b, n.id), 0);
	bmap_close(ro);
	bmap_close(b);
}

/* Every way of changing extents keeps node.nblocks equal to a sum over the
 * extents (blocks() asserts it), in and out of transactions, and a
 * rollback takes the counts back with the extents. */
Test(bmap, node_block_counts_follow_every_change_and_every_rollback)
{
	struct bmap *b = make_index_with_nodes(2);
	struct bmap_ext from = ext(10, 5, 5, 0);

	cr_assert_eq(bmap_begin(b), 0);
	put(b, 1, 0, 20, 4, 0);                 /* 20 */
	put(b, 1, 10, 20, 5, 0);                /* 0..9 of 4, 10..29 of 5: 30 */
	put(b, 2, 7, 1, 4, 100);                /* another node midway */
	put(b, 1, 40, 3, 0, 0);                 /* a tombstone run: no count */
	put(b, 1, 3, 2, 0, 0);                  /* data -> tombstones: 28 */
	put(b, 1, 41, 1, 6, 0);                 /* tombstone -> data: 29 */
	cr_assert_eq(bmap_ext_del(b, 1, 4, 2), 0);      /* a tombstone and data block 5: 28 */
	cr_assert_eq(bmap_ext_relocate(b, 1, &from, 7, 0), 0);  /* 10..14 move: no count */
	cr_assert_eq(bmap_commit(b), 0);
	cr_assert_eq(blocks(b, 1), 28);
	cr_assert_eq(blocks(b, 2), 1);

	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_ext_del_from(b, 1, 12), 0);
	put(b, 2, 8, 1, 4, 101);
	cr_assert_eq(blocks(b, 1), 9, "0..2 and 6..11");
	bmap_rollback(b);
	cr_assert_eq(blocks(b, 1), 28, "a rollback takes the counts back");
	cr_assert_eq(blocks(b, 2), 1);

	/* without a transaction each call commits its count with its extents */
	put(b, 2, 9, 1, 4, 102);
	cr_assert_eq(bmap_ext_del_from(b, 1, 12), 0);
	bmap_close(b);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(blocks(b, 1), 9);
	cr_assert_eq(blocks(b, 2), 2, "7 and 9; 8 was rolled back");
	cr_assert_eq(bmap_node_delete(b, 2), 0);
	cr_assert_eq(blocks(b, 2), 0, "a deleted node has no blocks");
	bmap_close(b);
}

Test(bmap, open_of_index_with_damaged_page_is_euclean)
{
	unsigned char junk[4096];
	struct stat st;
	int fd;

	cr_assert_eq(bmap_create(path, 4096, 0, 0), 0);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_geq(st.st_size, 3 * 4096);
	/* Page 2 is a table b-tree; 0xff is no valid page type. */
	memset(junk, 0xff, sizeof(junk));
	fd = open(path, O_WRONLY);
	cr_assert_eq(pwrite(fd, junk, sizeof(junk), 4096), (ssize_t)sizeof(junk));
	close(fd);
	assert_open_refused_unchanged(-EUCLEAN);
}
Test(bmap, readonly_open_reads_and_refuses_writes)
{
	struct bmap *b = make_index_with_nodes(2), *ro = NULL;
	struct bmap_inode in;
	struct bmap_ext e = ext(2, 1, 3, 4);

	put(b, 1, 1, 1, 3, 4);
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_inode_get(ro, BMAP_ROOT_INO, &in), 0);
	cr_assert_eq(blocks(ro, 1), 1, "a reader sees what the writer committed");
	cr_assert_eq(bmap_ext_put(ro, 1, &e), -EROFS);
	cr_assert_eq(bmap_begin(ro), -EROFS);
	cr_assert_neq(strlen(bmap_errmsg(ro)), 0);
	cr_assert_eq(bmap_upgrade_run(ro, 0, &quiet_ops), 0, "format 3: nothing to do");
	bmap_close(ro);
	bmap_close(b);
}

Test(bmap, a_reader_of_a_checked_handle_reads_what_it_commits_and_refuses_writes)
{
	struct bmap *b = make_index_with_nodes(2), *r = NULL;
	struct bmap_ext e = ext(2, 1, 3, 4);

	cr_assert_eq(bmap_open_reader(b, &r), 0);
	cr_assert_eq(bmap_block_size(r), bmap_block_size(b));
	put(b, 1, 1, 1, 3, 4);
	cr_assert_eq(blocks(r, 1), 1, "a reader sees what the writer committed");
	cr_assert_eq(bmap_ext_put(r, 1, &e), -EROFS);
	bmap_close(r);
	bmap_close(b);
}

Test(bmap, close_of_null_is_fine)
{
	bmap_close(NULL);
}

/* ---- meta --------------------------------------------------------------- */

Test(bmap, meta_set_then_get_and_missing_key_is_enoent)
{
	struct bmap *b = make_index(4096);
	uint64_t v = 5;

	cr_assert_eq(bmap_meta_get(b, "no_such_key", &v), -ENOENT);
	cr_assert_eq(v, 5, "a failed get leaves the value alone");
	cr_assert_eq(bmap_meta_set(b, "next_chunk_id", 42), 0);
	cr_assert_eq(bmap_meta_get(b, "next_chunk_id", &v), 0);
	cr_assert_eq(v, 42);
	cr_assert_eq(bmap_meta_set(b, "next_chunk_id", UINT64_MAX), 0);
	cr_assert_eq(bmap_meta_get(b, "next_chunk_id", &v), 0);
	cr_assert_eq(v, UINT64_MAX);
	cr_assert_eq(bmap_meta_set(b, "gc_epoch", 7), 0);
	bmap_close(b);

	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_meta_get(b, "gc_epoch", &v), 0);
	cr_assert_eq(v, 7);
	bmap_close(b);
}

Test(bmap, a_snapshot_keeps_seeing_what_was_committed_when_it_began)
{
	struct bmap *b = make_index(4096), *ro;
	struct bmap_node n = { 0 };
	uint64_t v, changes;

	cr_assert_eq(bmap_meta_set(b, "k", 1), 0);
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_snapshot_begin(ro), 0);
	cr_assert_eq(bmap_snapshot_begin(ro), -EINVAL, "snapshots do not nest");

	changes = bmap_changes(b);
	cr_assert_eq(bmap_meta_get(b, "k", &v), 0);
	cr_assert_eq(bmap_changes(b), changes, "a read is not a change");
	cr_assert_eq(bmap_meta_set(b, "k", 2), 0);
	cr_assert_gt(bmap_changes(b), changes);
	changes = bmap_changes(b);
	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_node_create(b, &n), 0);
	bmap_rollback(b);
	cr_assert_gt(bmap_changes(b), changes, "a change rolled back still counts");

	cr_assert_eq(bmap_meta_get(ro, "k", &v), 0);
	cr_assert_eq(v, 1, "the snapshot saw a later commit");
	bmap_snapshot_end(ro);
	cr_assert_eq(bmap_meta_get(ro, "k", &v), 0);
	cr_assert_eq(v, 2);
	bmap_close(ro);
	bmap_close(b);
}

Test(bmap, meta_block_size_and_format_version_cannot_be_changed)
{
	struct bmap *b = make_index(8192);
	uint64_t v;

	cr_assert_eq(bmap_meta_set(b, "block_size", 4096), -EPERM);
	cr_assert_eq(bmap_meta_set(b, "format_version", 2), -EPERM);
	cr_assert_eq(bmap_meta_get(b, "block_size", &v), 0);
	cr_assert_eq(v, 8192);
	bmap_close(b);
}

/* ---- inodes ------------------------------------------------------------- */

Test(bmap, root_inode_exists_after_create)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode in;
	uint64_t n;

	cr_assert_eq(bmap_inode_get(b, BMAP_ROOT_INO, &in), 0);
	cr_assert_eq(in.ino, BMAP_ROOT_INO);
	cr_assert_eq(in.parent, 0);
	cr_assert_str_eq(in.name, "");
	cr_assert_eq(in.kind, BMAP_DIR);
	cr_assert_eq(in.mode, 0755);
	cr_assert_eq(in.uid, 1000);
	cr_assert_eq(in.gid, 1000);
	cr_assert_eq(in.size, 0);
	cr_assert_eq(in.node, 0);
	cr_assert_gt(in.mtime_ns, 0);
	cr_assert_eq(bmap_inode_count(b, &n), 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(bmap_inode_delete(b, BMAP_ROOT_INO), -EBUSY);
	bmap_close(b);
}

Test(bmap, inode_insert_then_lookup_and_get_return_every_field)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode in = make_inode(BMAP_ROOT_INO, "vol0", BMAP_VOL), out;

	in.size = 0xfedcba9876543210ull;       /* top bit set */
	in.node = 17;
	cr_assert_eq(bmap_inode_insert(b, &in), 0);
	cr_assert_gt(in.ino, BMAP_ROOT_INO);

	memset(&out, 0xaa, sizeof(out));
	cr_assert_eq(bmap_inode_lookup(b, BMAP_ROOT_INO, "vol0", &out), 0);
	cr_assert_eq(memcmp(&in, &out, sizeof(in)), 0);
	memset(&out, 0xaa, sizeof(out));
	cr_assert_eq(bmap_inode_get(b, in.ino, &out), 0);
	cr_assert_eq(memcmp(&in, &out, sizeof(in)), 0);
	bmap_close(b);
}

Test(bmap, inode_get_and_lookup_of_missing_are_enoent)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode out;

	cr_assert_eq(bmap_inode_get(b, 12345, &out), -ENOENT);
	cr_assert_eq(bmap_inode_get(b, UINT64_MAX, &out), -ENOENT);
	cr_assert_eq(bmap_inode_lookup(b, BMAP_ROOT_INO, "nope", &out), -ENOENT);
	cr_assert_eq(bmap_inode_lookup(b, 0, "", &out), -ENOENT, "unlinked inodes have no name");
	bmap_close(b);
}

Test(bmap, inode_insert_of_duplicate_name_is_eexist)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode d = make_inode(BMAP_ROOT_INO, "dir", BMAP_DIR);
	struct bmap_inode v1 = make_inode(BMAP_ROOT_INO, "dir", BMAP_VOL);
	struct bmap_inode v2;
	uint64_t n;

	cr_assert_eq(bmap_inode_insert(b, &d), 0);
	cr_assert_eq(bmap_inode_insert(b, &v1), -EEXIST);
	cr_assert_neq(strlen(bmap_errmsg(b)), 0);
	/* The same name in another directory is fine. */
	v2 = make_inode(d.ino, "dir", BMAP_VOL);
	cr_assert_eq(bmap_inode_insert(b, &v2), 0);
	cr_assert_eq(bmap_inode_count(b, &n), 0);
	cr_assert_eq(n, 3);
	bmap_close(b);
}

Test(bmap, inode_names_are_bytes_compared_bytewise_up_to_255)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode a = make_inode(BMAP_ROOT_INO, "\xff\xfe latin1 \xe9", BMAP_VOL);
	struct bmap_inode upper = make_inode(BMAP_ROOT_INO, "ABC", BMAP_VOL);
	struct bmap_inode lower = make_inode(BMAP_ROOT_INO, "abc", BMAP_VOL);
	struct bmap_inode longest = make_inode(BMAP_ROOT_INO, "", BMAP_VOL), out;
	char name[BMAP_NAME_MAX + 2];

	cr_assert_eq(bmap_inode_insert(b, &a), 0);
	cr_assert_eq(bmap_inode_lookup(b, BMAP_ROOT_INO, "\xff\xfe latin1 \xe9", &out), 0);
	cr_assert_eq(out.ino, a.ino);
	cr_assert_eq(bmap_inode_insert(b, &upper), 0);
	cr_assert_eq(bmap_inode_insert(b, &lower), 0, "no case folding");

	memset(longest.name, 'x', BMAP_NAME_MAX);
	longest.name[BMAP_NAME_MAX] = '\0';
	cr_assert_eq(bmap_inode_insert(b, &longest), 0);
	cr_assert_eq(bmap_inode_get(b, longest.ino, &out), 0);
	cr_assert_eq(strlen(out.name), BMAP_NAME_MAX);

	/* The struct cannot hold 256 bytes, but lookup and move take char *. */
	memset(name, 'y', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	cr_assert_eq(bmap_inode_lookup(b, BMAP_ROOT_INO, name, &out), -ENAMETOOLONG);
	cr_assert_eq(bmap_inode_move(b, a.ino, BMAP_ROOT_INO, name), -ENAMETOOLONG);
	bmap_close(b);
}

Test(bmap, inode_insert_refuses_empty_name_in_a_directory_and_name_without_parent)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode noname = make_inode(BMAP_ROOT_INO, "", BMAP_VOL);
	struct bmap_inode noparent = make_inode(0, "x", BMAP_VOL);

	cr_assert_eq(bmap_inode_insert(b, &noname), -EINVAL);
	cr_assert_eq(bmap_inode_insert(b, &noparent), -EINVAL);
	bmap_close(b);
}

Test(bmap, inode_update_rewrites_fields_but_not_parent_or_name)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode in = make_inode(BMAP_ROOT_INO, "v", BMAP_VOL), upd, out;

	cr_assert_eq(bmap_inode_insert(b, &in), 0);
	upd = in;
	upd.parent = 999;
	strcpy(upd.name, "ignored");
	upd.mode = 0600;
	upd.uid = 1;
	upd.gid = 2;
	upd.atime_ns = -5;              /* before the epoch */
	upd.mtime_ns = 6;
	upd.ctime_ns = 7;
	upd.size = UINT64_MAX;
	upd.node = 8;
	cr_assert_eq(bmap_inode_update(b, &upd), 0);
	cr_assert_eq(bmap_inode_get(b, in.ino, &out), 0);
	cr_assert_eq(out.parent, BMAP_ROOT_INO);
	cr_assert_str_eq(out.name, "v");
	cr_assert_eq(out.mode, 0600);
	cr_assert_eq(out.uid, 1);
	cr_assert_eq(out.gid, 2);
	cr_assert_eq(out.atime_ns, -5);
	cr_assert_eq(out.mtime_ns, 6);
	cr_assert_eq(out.ctime_ns, 7);
	cr_assert_eq(out.size, UINT64_MAX);
	cr_assert_eq(out.node, 8);

	upd.ino = 4242;
	cr_assert_eq(bmap_inode_update(b, &upd), -ENOENT);
	bmap_close(b);
}

Test(bmap, inode_move_renames_and_refuses_a_taken_name)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode d = make_inode(BMAP_ROOT_INO, "d", BMAP_DIR);
	struct bmap_inode x = make_inode(BMAP_ROOT_INO, "x", BMAP_VOL);
	struct bmap_inode y = make_inode(BMAP_ROOT_INO, "y", BMAP_VOL), out;

	cr_assert_eq(bmap_inode_insert(b, &d), 0);
	cr_assert_eq(bmap_inode_insert(b, &x), 0);
	cr_assert_eq(bmap_inode_insert(b, &y), 0);

	cr_assert_eq(bmap_inode_move(b, x.ino, BMAP_ROOT_INO, "y"), -EEXIST);
	cr_assert_eq(bmap_inode_get(b, x.ino, &out), 0);
	cr_assert_str_eq(out.name, "x", "a refused move changes nothing");

	cr_assert_eq(bmap_inode_move(b, x.ino, d.ino, "y"), 0);
	cr_assert_eq(bmap_inode_lookup(b, d.ino, "y", &out), 0);
	cr_assert_eq(out.ino, x.ino);
	cr_assert_eq(bmap_inode_lookup(b, BMAP_ROOT_INO, "x", &out), -ENOENT);
	cr_assert_eq(bmap_inode_move(b, x.ino, d.ino, "y"), 0, "moving onto itself is fine");
	cr_assert_eq(bmap_inode_move(b, 777, d.ino, "z"), -ENOENT);
	cr_assert_eq(bmap_inode_move(b, x.ino, d.ino, ""), -EINVAL);
	bmap_close(b);
}

Test(bmap, inode_delete_removes_the_row)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode v = make_inode(BMAP_ROOT_INO, "v", BMAP_VOL), out;
	struct bmap_inode w = make_inode(BMAP_ROOT_INO, "v", BMAP_VOL);

	cr_assert_eq(bmap_inode_insert(b, &v), 0);
	cr_assert_eq(bmap_inode_delete(b, v.ino), 0);
	cr_assert_eq(bmap_inode_get(b, v.ino, &out), -ENOENT);
	cr_assert_eq(bmap_inode_delete(b, v.ino), -ENOENT);
	cr_assert_eq(bmap_inode_insert(b, &w), 0, "the name is free again");
	cr_assert_gt(w.ino, v.ino, "inode numbers are never reused");
	bmap_close(b);
}

Test(bmap, unlinked_inodes_coexist_and_show_in_orphan_list)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode v1 = make_inode(BMAP_ROOT_INO, "a", BMAP_VOL);
	struct bmap_inode v2 = make_inode(BMAP_ROOT_INO, "b", BMAP_VOL);
	struct bmap_inode v3 = make_inode(BMAP_ROOT_INO, "c", BMAP_VOL), out;
	struct seen s = { .n = 0 };
	uint64_t n;

	cr_assert_eq(bmap_inode_insert(b, &v1), 0);
	cr_assert_eq(bmap_inode_insert(b, &v2), 0);
	cr_assert_eq(bmap_inode_insert(b, &v3), 0);
	cr_assert_eq(bmap_inode_move(b, v3.ino, 0, ""), 0);
	cr_assert_eq(bmap_inode_move(b, v1.ino, 0, ""), 0);

	cr_assert_eq(bmap_orphan_list(b, collect_inode, &s), 0);
	cr_assert_eq(s.n, 2, "the root is not an orphan");
	cr_assert_eq(s.a[0], v1.ino);
	cr_assert_eq(s.a[1], v3.ino);
	cr_assert_str_eq(s.name[0], "");

	cr_assert_eq(bmap_inode_get(b, v1.ino, &out), 0);
	cr_assert_eq(out.parent, 0);
	cr_assert_eq(bmap_dir_count(b, BMAP_ROOT_INO, &n), 0);
	cr_assert_eq(n, 1);
	/* An orphan can be relinked under a name. */
	cr_assert_eq(bmap_inode_move(b, v1.ino, BMAP_ROOT_INO, "back"), 0);
	cr_assert_eq(bmap_inode_lookup(b, BMAP_ROOT_INO, "back", &out), 0);
	bmap_close(b);
}

Test(bmap, dir_list_is_in_ino_order_and_resumes_after_a_cursor)
{
	struct bmap *b = make_index(4096);
	static const char *names[] = { "zeta", "alpha", "mu", "beta", "omega" };
	struct bmap_inode in[5], sub, other;
	struct seen s = { .n = 0 };
	uint64_t n;
	int i;

	for (i = 0; i < 5; i++) {
		in[i] = make_inode(BMAP_ROOT_INO, names[i], BMAP_VOL);
		cr_assert_eq(bmap_inode_insert(b, &in[i]), 0);
		if (i == 1) {           /* interleave an entry of another directory */
			sub = make_inode(BMAP_ROOT_INO, "sub", BMAP_DIR);
			cr_assert_eq(bmap_inode_insert(b, &sub), 0);
			other = make_inode(sub.ino, "inner", BMAP_VOL);
			cr_assert_eq(bmap_inode_insert(b, &other), 0);
		}
	}

	cr_assert_eq(bmap_dir_list(b, BMAP_ROOT_INO, 0, collect_inode, &s), 0);
	cr_assert_eq(s.n, 6);
	for (i = 1; i < s.n; i++)
		cr_assert_lt(s.a[i - 1], s.a[i]);
	cr_assert_str_eq(s.name[0], "zeta");
	cr_assert_str_eq(s.name[2], "sub");

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_dir_list(b, BMAP_ROOT_INO, sub.ino, collect_inode, &s), 0);
	cr_assert_eq(s.n, 3);
	cr_assert_eq(s.a[0], in[2].ino);
	cr_assert_eq(s.a[2], in[4].ino);

	memset(&s, 0, sizeof(s));
	s.stop_at = 2;
	cr_assert_eq(bmap_dir_list(b, BMAP_ROOT_INO, 0, collect_inode, &s), 7,
		     "fn's non-zero value stops the walk and is returned");
	cr_assert_eq(s.n, 2);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_dir_list(b, BMAP_ROOT_INO, UINT64_MAX, collect_inode, &s), 0);
	cr_assert_eq(s.n, 0);
	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_dir_list(b, sub.ino, 0, collect_inode, &s), 0);
	cr_assert_eq(s.n, 1);
	cr_assert_str_eq(s.name[0], "inner");

	cr_assert_eq(bmap_dir_count(b, BMAP_ROOT_INO, &n), 0);
	cr_assert_eq(n, 6);
	cr_assert_eq(bmap_dir_count(b, other.ino, &n), 0);
	cr_assert_eq(n, 0);
	bmap_close(b);
}

static struct bmap *reentrant_b;

static int call_back_into_bmap(void *ctx, const struct bmap_inode *in)
{
	struct bmap_inode out;

	(void)ctx;
	return bmap_inode_get(reentrant_b, in->ino, &out);
}

Test(bmap, calling_bmap_from_a_walk_callback_aborts, .signal = SIGABRT)
{
	struct bmap_inode v = make_inode(BMAP_ROOT_INO, "v", BMAP_VOL);

	reentrant_b = make_index(4096);
	cr_assert_eq(bmap_inode_insert(reentrant_b, &v), 0);
	/* .fini does not run after an abort: clean up now, the open handle
	 * keeps the unlinked files. */
	teardown();
	bmap_dir_list(reentrant_b, BMAP_ROOT_INO, 0, call_back_into_bmap, NULL);
}

/* ---- nodes -------------------------------------------------------------- */

Test(bmap, node_create_get_update_children)
{
	struct bmap *b = make_index(4096);
	struct bmap_node base = { .parent = 0, .inherit = 0 };
	struct bmap_node snap, clone, out;
	uint64_t n;

	cr_assert_eq(bmap_node_create(b, &base), 0);
	cr_assert_gt(base.id, 0);
	snap = (struct bmap_node){ .parent = base.id, .inherit = UINT64_MAX };
	cr_assert_eq(bmap_node_create(b, &snap), 0);
	clone = (struct bmap_node){ .parent = base.id, .inherit = 100 };
	cr_assert_eq(bmap_node_create(b, &clone), 0);
	cr_assert_neq(snap.id, clone.id);

	cr_assert_eq(bmap_node_get(b, snap.id, &out), 0);
	cr_assert_eq(out.id, snap.id);
	cr_assert_eq(out.parent, base.id);
	cr_assert_eq(out.inherit, UINT64_MAX, "inherit round-trips all 64 bits");

	cr_assert_eq(bmap_node_children(b, base.id, &n), 0);
	cr_assert_eq(n, 2);
	clone.parent = 0;
	clone.inherit = 0;
	cr_assert_eq(bmap_node_update(b, &clone), 0);
	cr_assert_eq(bmap_node_get(b, clone.id, &out), 0);
	cr_assert_eq(out.parent, 0);
	cr_assert_eq(out.inherit, 0);
	cr_assert_eq(bmap_node_children(b, base.id, &n), 0);
	cr_assert_eq(n, 1);

	cr_assert_eq(bmap_node_get(b, 9999, &out), -ENOENT);
	out.id = 9999;
	cr_assert_eq(bmap_node_update(b, &out), -ENOENT);
	bmap_close(b);
}


Test(bmap, node_delete_removes_the_node_and_all_its_extents_only)
{
	struct bmap *b = make_index(4096);
	struct bmap_node n1 = { 0 }, n2 = { 0 }, n3 = { 0 }, out;
	struct seen s;
	uint64_t i;

	cr_assert_eq(bmap_node_create(b, &n1), 0);
	cr_assert_eq(bmap_node_create(b, &n2), 0);
	for (i = 0; i < 10; i++) {
		put(b, n1.id, 2 * i, 1, 1, (uint32_t)i);
		put(b, n2.id, 2 * i, 1, 2, (uint32_t)i);
	}
	cr_assert_eq(bmap_node_delete(b, n1.id), 0);
	cr_assert_eq(bmap_node_get(b, n1.id, &out), -ENOENT);
	node_exts(b, n1.id, &s);
	cr_assert_eq(s.n, 0);
	cr_assert_eq(blocks(b, n1.id), 0);
	cr_assert_eq(blocks(b, n2.id), 10, "other nodes keep their extents");
	cr_assert_eq(bmap_node_delete(b, n1.id), -ENOENT);

	/* Node ids are never reused either. */
	cr_assert_eq(bmap_node_create(b, &n3), 0);
	cr_assert_gt(n3.id, n2.id);
	bmap_close(b);
}

Test(bmap, node_delete_inside_a_transaction_is_undone_by_rollback)
{
	struct bmap *b = make_index(4096);
	struct bmap_node n = { 0 }, out;

	cr_assert_eq(bmap_node_create(b, &n), 0);
	put(b, n.id, 0, 1, 1, 0);
	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_node_delete(b, n.id), 0);
	cr_assert_eq(bmap_node_delete(b, 4242), -ENOENT, "a failed call keeps the transaction");
	bmap_rollback(b);
	cr_assert_eq(bmap_node_get(b, n.id, &out), 0);
	cr_assert_eq(blocks(b, n.id), 1);
	bmap_close(b);
}

/* ---- extents ------------------------------------------------------------ */

Test(bmap, ext_put_merges_a_run_that_continues_its_neighbours_and_splits_what_it_overwrites)
{
	struct bmap *b = make_index_with_nodes(2);
	struct seen s;

	put(b, 1, 10, 4, 5, 100);               /* [10, 14) -> chunk 5, 100.. */
	put(b, 1, 14, 2, 5, 104);               /* continues it: one extent */
	put(b, 1, 8, 2, 5, 98);                 /* and from the left */
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 1);
	assert_ext(&s, 0, 8, 8, 5, 98);
	cr_assert_eq(blocks(b, 1), 8);

	put(b, 1, 16, 1, 5, 200);               /* touches, but other slots: two */
	put(b, 1, 17, 1, 6, 201);               /* another chunk: three */
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 3);
	assert_ext(&s, 1, 16, 1, 5, 200);
	assert_ext(&s, 2, 17, 1, 6, 201);

	put(b, 1, 10, 2, 7, 0);                 /* inside: split in three */
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 5);
	assert_ext(&s, 0, 8, 2, 5, 98);
	assert_ext(&s, 1, 10, 2, 7, 0);
	assert_ext(&s, 2, 12, 4, 5, 102);
	cr_assert_eq(blocks(b, 1), 10);

	put(b, 1, 10, 2, 5, 100);               /* the old mapping back: one again */
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 3);
	assert_ext(&s, 0, 8, 8, 5, 98);

	put(b, 1, 9, 10, 0, 77);                /* a tombstone over everything but 8 */
	put(b, 1, 19, 3, 0, 0);                 /* tombstones merge too */
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 2);
	assert_ext(&s, 0, 8, 1, 5, 98);
	assert_ext(&s, 1, 9, 13, 0, 0);         /* slot 0 whatever was passed */
	cr_assert_eq(blocks(b, 1), 1);
	cr_assert_eq(blocks(b, 2), 0, "other nodes untouched");
	bmap_close(b);
}

Test(bmap, ext_del_and_del_from_trim_what_straddles_and_show_gaps)
{
	struct bmap *b = make_index_with_nodes(2);
	struct seen s;

	put(b, 1, 0, 100, 3, 0);
	put(b, 1, 100, 50, 0, 0);
	put(b, 2, 0, 10, 4, 0);
	cr_assert_eq(bmap_ext_del(b, 1, 10, 5), 0);
	cr_assert_eq(bmap_ext_del(b, 1, 10, 5), 0, "nothing there is fine");
	cr_assert_eq(bmap_ext_del(b, 1, 95, 10), 0);    /* data and tombstones */
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 3);
	assert_ext(&s, 0, 0, 10, 3, 0);
	assert_ext(&s, 1, 15, 80, 3, 15);
	assert_ext(&s, 2, 105, 45, 0, 0);
	cr_assert_eq(blocks(b, 1), 90);

	cr_assert_eq(bmap_ext_del_from(b, 1, 50), 0);
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 2);
	assert_ext(&s, 1, 15, 35, 3, 15);
	cr_assert_eq(blocks(b, 1), 45);
	cr_assert_eq(bmap_ext_del(b, 1, 0, UINT64_MAX), 0, "a range past the limit is clamped");
	cr_assert_eq(blocks(b, 1), 0);
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 0);
	cr_assert_eq(bmap_ext_del_from(b, 2, UINT64_MAX), 0);
	cr_assert_eq(blocks(b, 2), 10);
	cr_assert_eq(bmap_ext_del_from(b, 2, 0), 0);
	cr_assert_eq(blocks(b, 2), 0);
	bmap_close(b);
}

Test(bmap, ext_range_clips_to_the_range_and_moves_the_slot_along)
{
	struct bmap *b = make_index_with_nodes(2);
	struct seen s;

	put(b, 1, 0, 10, 1, 0);
	put(b, 1, 10, 5, 0, 0);                 /* tombstones */
	put(b, 1, 20, 10, 1, 20);
	put(b, 1, BMAP_LBLOCK_LIMIT - 2, 2, 2, 9);
	put(b, 2, 4, 1, 2, 4);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_ext_range(b, 1, 5, 25, collect_ext, &s), 0);
	cr_assert_eq(s.n, 3);
	assert_ext(&s, 0, 5, 5, 1, 5);
	assert_ext(&s, 1, 10, 5, 0, 0);
	assert_ext(&s, 2, 20, 5, 1, 20);

	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 4, "[0, UINT64_MAX) is every extent");
	assert_ext(&s, 3, BMAP_LBLOCK_LIMIT - 2, 2, 2, 9);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_ext_range(b, 1, 12, 13, collect_ext, &s), 0);
	cr_assert_eq(s.n, 1);
	assert_ext(&s, 0, 12, 1, 0, 0);
	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_ext_range(b, 1, 15, 20, collect_ext, &s), 0);
	cr_assert_eq(s.n, 0, "a gap");
	cr_assert_eq(bmap_ext_range(b, 1, 5, 5, collect_ext, &s), 0);
	cr_assert_eq(s.n, 0, "an empty range");
	cr_assert_eq(bmap_ext_range(b, 1, 7, 3, collect_ext, &s), 0);
	cr_assert_eq(s.n, 0, "from past below");
	cr_assert_eq(bmap_ext_range(b, 1, UINT64_MAX, UINT64_MAX, collect_ext, &s), 0);
	cr_assert_eq(s.n, 0);
	cr_assert_eq(bmap_ext_range(b, 3, 0, UINT64_MAX, collect_ext, &s), 0);
	cr_assert_eq(s.n, 0, "a node without extents");

	memset(&s, 0, sizeof(s));
	s.stop_at = 2;
	cr_assert_eq(bmap_ext_range(b, 1, 0, UINT64_MAX, collect_ext, &s), 7);
	cr_assert_eq(s.n, 2);
	cr_assert_eq(blocks(b, 1), 22, "the handle is usable after an early stop");
	bmap_close(b);
}

Test(bmap, ext_put_refuses_runs_past_the_limit_or_out_of_their_chunk)
{
	struct bmap *b = make_index_with_nodes(2);
	uint32_t nslots = CHUNK_NSLOTS(4096);
	struct bmap_ext bad[] = {
		ext(0, 0, 1, 0),                                /* empty */
		ext(BMAP_LBLOCK_LIMIT - 1, 2, 1, 0),            /* past the limit */
		ext(BMAP_LBLOCK_LIMIT, 1, 0, 0),
		ext(UINT64_MAX, 1, 1, 0),
		ext(0, 2, 1, nslots - 1),                       /* out of its chunk */
		ext(0, 1, 1ull << 63, 0),                       /* a chunk SQL cannot order */
	};
	struct bmap_ext e = ext(0, 1, 1, 0), big = ext(0, 1, 1, nslots - 1);

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(bmap_ext_put(b, 1, &bad[i]), -EINVAL, "case %zu", i);
	cr_assert_eq(bmap_ext_put(b, 1ull << 63, &e), -EINVAL);
	cr_assert_eq(bmap_ext_put(b, 1, &big), 0, "the last slot of a chunk");
	put(b, 1, BMAP_LBLOCK_LIMIT - 1, 1, 0, 0);
	put(b, 1, 1, UINT32_MAX, 0, 0);                 /* the longest tombstone run */
	cr_assert_eq(blocks(b, 1), 1);
	bmap_close(b);
}

Test(bmap, ext_relocate_splits_a_long_extent_and_merges_the_piece_in_its_new_chunk)
{
	struct bmap *b = make_index_with_nodes(1);
	struct bmap_ext from = ext(40, 10, 1, 40), next = ext(50, 10, 1, 50);
	struct seen s;

	put(b, 1, 0, 100, 1, 0);
	cr_assert_eq(bmap_ext_relocate(b, 1, &from, 2, 0), 0);
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 3);
	assert_ext(&s, 0, 0, 40, 1, 0);
	assert_ext(&s, 1, 40, 10, 2, 0);
	assert_ext(&s, 2, 50, 50, 1, 50);
	cr_assert_eq(bmap_ext_relocate(b, 1, &next, 2, 10), 0);
	node_exts(b, 1, &s);
	cr_assert_eq(s.n, 3, "the next piece continues the first in chunk 2");
	assert_ext(&s, 1, 40, 20, 2, 0);
	assert_ext(&s, 2, 60, 40, 1, 60);
	cr_assert_eq(blocks(b, 1), 100);
	bmap_close(b);
}

Test(bmap, ext_relocate_that_lost_to_a_newer_write_is_enoent_and_changes_nothing)
{
	struct bmap *b = make_index_with_nodes(1);
	struct bmap_ext moved = ext(10, 5, 1, 10), wrong_slot = ext(20, 5, 1, 21),
			wrong_chunk = ext(20, 5, 3, 20), too_long = ext(90, 20, 1, 90),
			gap = ext(200, 1, 1, 200), over = ext(30, 5, 1, 30), ok = ext(0, 5, 1, 0);
	struct seen before, after;

	put(b, 1, 0, 100, 1, 0);
	put(b, 1, 30, 2, 4, 0);                 /* a newer write inside the piece */
	put(b, 1, 10, 5, 5, 0);                 /* a newer write of the whole piece */
	node_exts(b, 1, &before);
	cr_assert_eq(bmap_ext_relocate(b, 1, &moved, 2, 0), -ENOENT);
	cr_assert_eq(bmap_ext_relocate(b, 1, &wrong_slot, 2, 0), -ENOENT);
	cr_assert_eq(bmap_ext_relocate(b, 1, &wrong_chunk, 2, 0), -ENOENT);
	cr_assert_eq(bmap_ext_relocate(b, 1, &too_long, 2, 0), -ENOENT);
	cr_assert_eq(bmap_ext_relocate(b, 1, &gap, 2, 0), -ENOENT);
	cr_assert_eq(bmap_ext_relocate(b, 1, &over, 2, 0), -ENOENT);
	cr_assert_eq(bmap_ext_relocate(b, 2, &ok, 2, 0), -ENOENT, "another node");
	cr_assert_eq(bmap_ext_relocate(b, 1, &ok, 0, 0), -EINVAL, "onto a tombstone");
	cr_assert_eq(bmap_ext_relocate(b, 1, &ok, 2, CHUNK_NSLOTS(4096) - 1), -EINVAL);
	node_exts(b, 1, &after);
	cr_assert_eq(after.n, before.n);
	cr_assert_eq(memcmp(after.l, before.l, sizeof(before.l[0]) * (size_t)before.n), 0);
	cr_assert_eq(blocks(b, 1), 100);
	bmap_close(b);
}

/* ---- transactions ------------------------------------------------------- */

Test(bmap, transaction_rollback_discards_extents)
{
	struct bmap *b = make_index_with_nodes(2);
	struct bmap_inode v = make_inode(BMAP_ROOT_INO, "v", BMAP_VOL), out;
	uint64_t i, val;

	put(b, 1, 0, 1, 1, 0);
	cr_assert_eq(bmap_begin(b), 0);
	for (i = 1; i < 1000; i++)
		put(b, 1, 2 * i, 1, 1, (uint32_t)i);
	cr_assert_eq(bmap_ext_del(b, 1, 0, 1), 0);
	cr_assert_eq(bmap_inode_insert(b, &v), 0);
	cr_assert_eq(bmap_meta_set(b, "next_chunk_id", 77), 0);
	cr_assert_eq(blocks(b, 1), 999, "a transaction sees its own extents");
	bmap_rollback(b);

	cr_assert_eq(blocks(b, 1), 1);
	cr_assert_eq(bmap_inode_lookup(b, BMAP_ROOT_INO, "v", &out), -ENOENT);
	cr_assert_eq(bmap_meta_get(b, "next_chunk_id", &val), 0);
	cr_assert_eq(val, 1);
	bmap_rollback(b);               /* without a transaction: a no-op */
	bmap_close(b);
}

Test(bmap, transaction_commit_keeps_extents_across_reopen)
{
	struct bmap *b = make_index_with_nodes(2);
	uint64_t i;

	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_begin(b), -EINVAL, "not nestable");
	for (i = 0; i < 1000; i++)
		put(b, 1, 2 * i, 1, 1, (uint32_t)i);
	cr_assert_eq(bmap_commit(b), 0);
	bmap_close(b);

	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(blocks(b, 1), 1000);
	cr_assert_eq(bmap_commit(b), -EIO, "commit without a transaction fails");
	cr_assert_eq(bmap_begin(b), 0, "and leaves the handle usable");
	bmap_rollback(b);
	bmap_close(b);
}

Test(bmap, close_with_an_open_transaction_discards_it)
{
	struct bmap *b = make_index_with_nodes(1);

	cr_assert_eq(bmap_begin(b), 0);
	put(b, 1, 0, 1, 1, 0);
	bmap_close(b);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(blocks(b, 1), 0);
	bmap_close(b);
}

/* ---- chunks ------------------------------------------------------------- */

Test(bmap, chunk_refs_counts_covered_slots_per_chunk_in_increasing_order)
{
	struct bmap *b = make_index(4096);
	struct seen s = { .n = 0 };

	/* chunk 9: 30 slots in node 1 (one extent, then split by an
	 * overwrite of 5); chunk 3: 2 slots across nodes 1 and 2; chunk 5:
	 * 1; plus tombstones, which cover nothing. */
	put(b, 1, 0, 30, 9, 0);
	put(b, 1, 10, 5, 7, 0);                 /* 25 of chunk 9 left, 5 of chunk 7 */
	put(b, 1, 30, 1, 3, 0);
	put(b, 2, 0, 1, 3, 1);
	put(b, 2, 1, 1, 5, 0);
	put(b, 2, 2, 10, 0, 0);
	put(b, 3, 0, 1000, 0, 0);

	cr_assert_eq(bmap_chunk_refs(b, collect_ref, &s), 0);
	cr_assert_eq(s.n, 4);
	cr_assert_eq(s.a[0], 3);
	cr_assert_eq(s.b[0], 2);
	cr_assert_eq(s.a[1], 5);
	cr_assert_eq(s.b[1], 1);
	cr_assert_eq(s.a[2], 7);
	cr_assert_eq(s.b[2], 5);
	cr_assert_eq(s.a[3], 9);
	cr_assert_eq(s.b[3], 25);

	memset(&s, 0, sizeof(s));
	s.stop_at = 1;
	cr_assert_eq(bmap_chunk_refs(b, collect_ref, &s), 7);
	cr_assert_eq(s.n, 1);
	bmap_close(b);
}

struct ref_order {
	uint64_t prev, total, n;
};

static int check_ref_order(void *ctx, uint64_t chunk, uint64_t nrefs)
{
	struct ref_order *a = ctx;

	cr_assert_gt(chunk, a->prev);
	a->prev = chunk;
	a->total += nrefs;
	a->n++;
	return 0;
}

Test(bmap, chunk_refs_handles_many_chunks)
{
	struct bmap *b = make_index(4096);
	struct ref_order acc = { 0, 0, 0 };
	uint64_t i;

	/* More distinct chunks than the table's first size (1024), in an
	 * order that is not sorted, to exercise growth and the final sort. */
	cr_assert_eq(bmap_begin(b), 0);
	for (i = 0; i < 5000; i++)
		put(b, 1, 2 * i, 2, 1 + (i * 7919) % 3001, (uint32_t)(2 * i));
	cr_assert_eq(bmap_commit(b), 0);
	cr_assert_eq(bmap_chunk_refs(b, check_ref_order, &acc), 0);
	cr_assert_eq(acc.n, 3001);
	cr_assert_eq(acc.total, 10000);
	bmap_close(b);
}

static int stop_at_first(void *ctx, uint64_t node, const struct bmap_ext *e)
{
	(*(int *)ctx)++;
	return 7;
}

Test(bmap, exts_all_returns_every_data_extent_of_every_node_and_no_tombstone)
{
	struct bmap *b = make_index(4096);
	struct seen s = { .n = 0 };
	int i, found[3] = { 0 }, calls = 0;

	put(b, 1, 0, 3, 1, 0);
	put(b, 1, 3, 1, 0, 0);                  /* tombstone */
	put(b, 2, 5, 2, 2, 3);
	put(b, 3, 9, 1, 0, 0);                  /* a node with only a tombstone */
	put(b, 4, 2, 1, 1, 7);

	cr_assert_eq(bmap_exts_all(b, collect_node_ext, &s), 0);
	cr_assert_eq(s.n, 3);
	for (i = 0; i < s.n; i++) {     /* in no promised order */
		const struct bmap_ext *e = &s.l[i];

		cr_assert_neq(e->chunk, 0, "a tombstone was listed");
		if (s.a[i] == 1 && e->lblock == 0 && e->nblocks == 3 && e->chunk == 1 && e->slot == 0)
			found[0]++;
		else if (s.a[i] == 2 && e->lblock == 5 && e->nblocks == 2 && e->chunk == 2 && e->slot == 3)
			found[1]++;
		else if (s.a[i] == 4 && e->lblock == 2 && e->nblocks == 1 && e->chunk == 1 && e->slot == 7)
			found[2]++;
		else
			cr_assert_fail("unexpected extent node %" PRIu64 " lblock %" PRIu64, s.a[i], e->lblock);
	}
	cr_assert(found[0] == 1 && found[1] == 1 && found[2] == 1);
	cr_assert_eq(bmap_exts_all(b, stop_at_first, &calls), 7);
	cr_assert_eq(calls, 1);
	bmap_close(b);
}

/* ---- snapshots ---------------------------------------------------------- */

static struct bmap_snap make_snap(uint64_t sdir, const char *name, int64_t created_ns)
{
	struct bmap_snap s;

	memset(&s, 0, sizeof(s));
	s.dir = sdir;
	snprintf(s.name, sizeof(s.name), "%s", name);
	s.created_ns = created_ns;
	return s;
}

static uint64_t insert_dir(struct bmap *b, uint64_t parent, const char *name)
{
	struct bmap_inode d = make_inode(parent, name, BMAP_DIR);

	cr_assert_eq(bmap_inode_insert(b, &d), 0);
	return d.ino;
}

static uint64_t insert_vol(struct bmap *b, uint64_t parent, const char *name, uint64_t node)
{
	struct bmap_inode v = make_inode(parent, name, BMAP_VOL);

	v.node = node;
	cr_assert_eq(bmap_inode_insert(b, &v), 0);
	return v.ino;
}

/* id in a[], dir in b[], name in name[]. */
static int collect_snap(void *ctx, const struct bmap_snap *sn)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 64);
	s->a[s->n] = sn->id;
	s->b[s->n] = sn->dir;
	strcpy(s->name[s->n], sn->name);
	s->n++;
	return s->stop_at && s->n == s->stop_at ? 7 : 0;
}

/* ino in a[], parent in b[], name in name[]. */
static int collect_inode_parent(void *ctx, const struct bmap_inode *in)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 64);
	s->a[s->n] = in->ino;
	s->b[s->n] = in->parent;
	strcpy(s->name[s->n], in->name);
	s->n++;
	return s->stop_at && s->n == s->stop_at ? 7 : 0;
}

Test(bmap, snap_insert_then_get_and_lookup_return_every_field_across_reopen)
{
	struct bmap *b = make_index(4096);
	uint64_t web = insert_dir(b, BMAP_ROOT_INO, "web");
	struct bmap_snap s = make_snap(web, "before-upgrade", 1700000000987654321LL);
	struct bmap_snap one = make_snap(BMAP_ROOT_INO, "vm1.img@golden", 5), out;

	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_gt(s.id, 0);
	cr_assert_eq(bmap_snap_insert(b, &one), 0);
	cr_assert_gt(one.id, s.id);

	memset(&out, 0xaa, sizeof(out));
	cr_assert_eq(bmap_snap_get(b, s.id, &out), 0);
	cr_assert_eq(memcmp(&s, &out, sizeof(s)), 0);
	memset(&out, 0xaa, sizeof(out));
	cr_assert_eq(bmap_snap_lookup(b, web, "before-upgrade", &out), 0);
	cr_assert_eq(memcmp(&s, &out, sizeof(s)), 0);
	cr_assert_eq(bmap_snap_lookup(b, BMAP_ROOT_INO, "vm1.img@golden", &out), 0);
	cr_assert_eq(out.id, one.id);
	bmap_close(b);

	cr_assert_eq(bmap_open(path, 0, &b), 0);
	memset(&out, 0xaa, sizeof(out));
	cr_assert_eq(bmap_snap_get(b, s.id, &out), 0);
	cr_assert_eq(memcmp(&s, &out, sizeof(s)), 0, "a snapshot row is durable");
	bmap_close(b);
}

Test(bmap, snap_get_and_lookup_of_missing_are_enoent)
{
	struct bmap *b = make_index(4096);
	uint64_t web = insert_dir(b, BMAP_ROOT_INO, "web");
	struct bmap_snap s = make_snap(web, "nightly", 1), out;
	char name[BMAP_NAME_MAX + 2];

	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_eq(bmap_snap_get(b, 4242, &out), -ENOENT);
	cr_assert_eq(bmap_snap_get(b, UINT64_MAX, &out), -ENOENT);
	cr_assert_eq(bmap_snap_lookup(b, web, "nope", &out), -ENOENT);
	cr_assert_eq(bmap_snap_lookup(b, BMAP_ROOT_INO, "nightly", &out), -ENOENT,
		     "a name belongs to one directory's .snapshots");
	memset(name, 'y', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	cr_assert_eq(bmap_snap_lookup(b, web, name, &out), -ENAMETOOLONG);
	bmap_close(b);
}

Test(bmap, snap_insert_of_a_taken_name_is_eexist_in_the_same_dir_only)
{
	struct bmap *b = make_index(4096);
	uint64_t web = insert_dir(b, BMAP_ROOT_INO, "web");
	struct bmap_snap s1 = make_snap(web, "nightly", 1);
	struct bmap_snap s2 = make_snap(web, "nightly", 2);
	struct bmap_snap s3 = make_snap(BMAP_ROOT_INO, "nightly", 3);
	struct bmap_snap upper = make_snap(web, "Nightly", 4);
	uint64_t n;

	cr_assert_eq(bmap_snap_insert(b, &s1), 0);
	cr_assert_eq(bmap_snap_insert(b, &s2), -EEXIST);
	cr_assert_eq(bmap_snap_insert(b, &s3), 0, "the same name in another dir is fine");
	cr_assert_eq(bmap_snap_insert(b, &upper), 0, "no case folding");
	cr_assert_eq(bmap_snap_count(b, web, &n), 0);
	cr_assert_eq(n, 2);
	bmap_close(b);
}

Test(bmap, snap_insert_refuses_an_empty_name_and_dir_0)
{
	struct bmap *b = make_index(4096);
	struct bmap_snap noname = make_snap(BMAP_ROOT_INO, "", 1);
	struct bmap_snap nodir = make_snap(0, "x", 1);
	struct bmap_snap bigdir = make_snap(1ull << 63, "x", 1);
	uint64_t n;

	cr_assert_eq(bmap_snap_insert(b, &noname), -EINVAL);
	cr_assert_eq(bmap_snap_insert(b, &nodir), -EINVAL);
	cr_assert_eq(bmap_snap_insert(b, &bigdir), -EINVAL);
	cr_assert_eq(bmap_snap_count(b, BMAP_ROOT_INO, &n), 0);
	cr_assert_eq(n, 0);
	bmap_close(b);
}

Test(bmap, snap_list_is_in_id_order_per_dir_resumes_after_a_cursor_and_dir_0_lists_all)
{
	struct bmap *b = make_index(4096);
	uint64_t da = insert_dir(b, BMAP_ROOT_INO, "a");
	uint64_t db = insert_dir(b, BMAP_ROOT_INO, "b");
	uint64_t dc = insert_dir(b, BMAP_ROOT_INO, "c");
	static const char *names[] = { "zulu", "b-one", "alpha", "mike", "b-two" };
	struct bmap_snap s[5];
	struct seen seen = { .n = 0 };
	int i;

	/* a: zulu, alpha, mike; b: b-one, b-two; interleaved ids, and id
	 * order is not name order. */
	for (i = 0; i < 5; i++) {
		s[i] = make_snap(i == 1 || i == 4 ? db : da, names[i], i);
		cr_assert_eq(bmap_snap_insert(b, &s[i]), 0);
	}

	cr_assert_eq(bmap_snap_list(b, da, 0, collect_snap, &seen), 0);
	cr_assert_eq(seen.n, 3);
	cr_assert_eq(seen.a[0], s[0].id);
	cr_assert_eq(seen.a[1], s[2].id);
	cr_assert_eq(seen.a[2], s[3].id);
	cr_assert_str_eq(seen.name[0], "zulu");
	cr_assert_str_eq(seen.name[1], "alpha");
	for (i = 0; i < seen.n; i++)
		cr_assert_eq(seen.b[i], da);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_snap_list(b, da, s[0].id, collect_snap, &seen), 0);
	cr_assert_eq(seen.n, 2, "the cursor is exclusive");
	cr_assert_eq(seen.a[0], s[2].id);
	cr_assert_eq(seen.a[1], s[3].id);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_snap_list(b, da, UINT64_MAX, collect_snap, &seen), 0);
	cr_assert_eq(seen.n, 0);
	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_snap_list(b, dc, 0, collect_snap, &seen), 0);
	cr_assert_eq(seen.n, 0, "a dir without snapshots lists none");

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_snap_list(b, 0, 0, collect_snap, &seen), 0);
	cr_assert_eq(seen.n, 5, "dir 0 lists the snapshots of every dir");
	for (i = 0; i < 5; i++)
		cr_assert_eq(seen.a[i], s[i].id);
	cr_assert_eq(seen.b[1], db);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_snap_list(b, 0, s[2].id, collect_snap, &seen), 0);
	cr_assert_eq(seen.n, 2);
	cr_assert_eq(seen.a[0], s[3].id);
	cr_assert_eq(seen.a[1], s[4].id);

	memset(&seen, 0, sizeof(seen));
	seen.stop_at = 2;
	cr_assert_eq(bmap_snap_list(b, 0, 0, collect_snap, &seen), 7,
		     "fn's non-zero value stops the walk and is returned");
	cr_assert_eq(seen.n, 2);
	bmap_close(b);
}

Test(bmap, snap_rename_changes_the_name_and_refuses_a_taken_one)
{
	struct bmap *b = make_index(4096);
	uint64_t da = insert_dir(b, BMAP_ROOT_INO, "a");
	uint64_t db = insert_dir(b, BMAP_ROOT_INO, "b");
	struct bmap_snap s1 = make_snap(da, "one", 1);
	struct bmap_snap s2 = make_snap(da, "two", 2);
	struct bmap_snap s3 = make_snap(db, "three", 3), out;
	char name[BMAP_NAME_MAX + 2];

	cr_assert_eq(bmap_snap_insert(b, &s1), 0);
	cr_assert_eq(bmap_snap_insert(b, &s2), 0);
	cr_assert_eq(bmap_snap_insert(b, &s3), 0);

	cr_assert_eq(bmap_snap_rename(b, s1.id, "two"), -EEXIST);
	cr_assert_eq(bmap_snap_get(b, s1.id, &out), 0);
	cr_assert_str_eq(out.name, "one", "a refused rename changes nothing");

	cr_assert_eq(bmap_snap_rename(b, s1.id, "three"), 0, "taken only in another dir");
	cr_assert_eq(bmap_snap_lookup(b, da, "three", &out), 0);
	cr_assert_eq(out.id, s1.id, "the id stays");
	cr_assert_eq(out.dir, da, "the dir stays");
	cr_assert_eq(out.created_ns, 1);
	cr_assert_eq(bmap_snap_lookup(b, da, "one", &out), -ENOENT, "the old name is free");
	cr_assert_eq(bmap_snap_lookup(b, db, "three", &out), 0);
	cr_assert_eq(out.id, s3.id);
	cr_assert_eq(bmap_snap_rename(b, s1.id, "three"), 0, "renaming onto itself is fine");

	cr_assert_eq(bmap_snap_rename(b, 4242, "x"), -ENOENT);
	cr_assert_eq(bmap_snap_rename(b, s1.id, ""), -EINVAL);
	memset(name, 'y', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	cr_assert_eq(bmap_snap_rename(b, s1.id, name), -ENAMETOOLONG);
	bmap_close(b);
}

/* A frozen tree in snap: below sdir, volumes 50 "b", 30 "a" and dir 10
 * "sub" holding volume 20 "x"; inserted out of order. */
static void put_frozen_tree(struct bmap *b, uint64_t snap, uint64_t sdir)
{
	struct bmap_inode in;

	in = make_inode(sdir, "b", BMAP_VOL);
	in.ino = 50;
	in.node = 5;
	cr_assert_eq(bmap_sinode_insert(b, snap, &in), 0);
	in = make_inode(10, "x", BMAP_VOL);
	in.ino = 20;
	in.node = 2;
	cr_assert_eq(bmap_sinode_insert(b, snap, &in), 0);
	in = make_inode(sdir, "sub", BMAP_DIR);
	in.ino = 10;
	cr_assert_eq(bmap_sinode_insert(b, snap, &in), 0);
	in = make_inode(sdir, "a", BMAP_VOL);
	in.ino = 30;
	in.node = 3;
	cr_assert_eq(bmap_sinode_insert(b, snap, &in), 0);
}

Test(bmap, snap_delete_deletes_its_snapshot_inodes_too_and_twice_is_enoent)
{
	struct bmap *b = make_index(4096);
	uint64_t web = insert_dir(b, BMAP_ROOT_INO, "web");
	struct bmap_snap s1 = make_snap(web, "one", 1);
	struct bmap_snap s2 = make_snap(web, "two", 2), again = make_snap(web, "one", 3), out;
	struct bmap_node n = { 0 }, nout;
	struct bmap_inode iout;
	struct seen seen = { .n = 0 };
	uint64_t count;

	cr_assert_eq(bmap_node_create(b, &n), 0);
	cr_assert_eq(bmap_snap_insert(b, &s1), 0);
	cr_assert_eq(bmap_snap_insert(b, &s2), 0);
	put_frozen_tree(b, s1.id, web);
	put_frozen_tree(b, s2.id, web);

	cr_assert_eq(bmap_snap_delete(b, s1.id), 0);
	cr_assert_eq(bmap_snap_get(b, s1.id, &out), -ENOENT);
	cr_assert_eq(bmap_snap_lookup(b, web, "one", &out), -ENOENT);
	cr_assert_eq(bmap_sinode_get(b, s1.id, 30, &iout), -ENOENT);
	cr_assert_eq(bmap_sinode_all(b, s1.id, collect_inode, &seen), 0);
	cr_assert_eq(seen.n, 0, "no snapshot inode of a deleted snapshot is left");

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_sinode_all(b, s2.id, collect_inode, &seen), 0);
	cr_assert_eq(seen.n, 4, "other snapshots keep theirs");
	cr_assert_eq(bmap_node_get(b, n.id, &nout), 0, "nodes are not deleted with it");
	cr_assert_eq(bmap_snap_count(b, web, &count), 0);
	cr_assert_eq(count, 1);

	cr_assert_eq(bmap_snap_delete(b, s1.id), -ENOENT);
	cr_assert_eq(bmap_snap_delete(b, 4242), -ENOENT);

	cr_assert_eq(bmap_snap_insert(b, &again), 0, "the name is free again");
	cr_assert_gt(again.id, s2.id, "snapshot ids are never reused");
	bmap_close(b);
}

Test(bmap, snap_delete_inside_a_transaction_is_undone_by_rollback)
{
	struct bmap *b = make_index(4096);
	struct bmap_snap s = make_snap(BMAP_ROOT_INO, "one", 1), out;
	struct bmap_inode iout;

	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	put_frozen_tree(b, s.id, BMAP_ROOT_INO);
	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_snap_delete(b, s.id), 0);
	cr_assert_eq(bmap_snap_delete(b, s.id), -ENOENT, "a failed call keeps the transaction");
	bmap_rollback(b);
	cr_assert_eq(bmap_snap_get(b, s.id, &out), 0);
	cr_assert_eq(bmap_sinode_get(b, s.id, 20, &iout), 0);
	bmap_close(b);
}

Test(bmap, snap_count_counts_the_snapshots_of_one_dir)
{
	struct bmap *b = make_index(4096);
	uint64_t da = insert_dir(b, BMAP_ROOT_INO, "a");
	uint64_t db = insert_dir(b, BMAP_ROOT_INO, "b");
	uint64_t dc = insert_dir(b, BMAP_ROOT_INO, "c");
	struct bmap_snap s[4] = {
		make_snap(da, "1", 0), make_snap(da, "2", 0), make_snap(db, "1", 0),
		make_snap(da, "v@3", 0),
	};
	uint64_t n;
	int i;

	for (i = 0; i < 4; i++)
		cr_assert_eq(bmap_snap_insert(b, &s[i]), 0);
	cr_assert_eq(bmap_snap_count(b, da, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(bmap_snap_count(b, db, &n), 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(bmap_snap_count(b, dc, &n), 0);
	cr_assert_eq(n, 0);
	cr_assert_eq(bmap_snap_count(b, BMAP_ROOT_INO, &n), 0);
	cr_assert_eq(n, 0, "snapshots of subdirectories are not the root's");
	cr_assert_eq(bmap_snap_delete(b, s[1].id), 0);
	cr_assert_eq(bmap_snap_count(b, da, &n), 0);
	cr_assert_eq(n, 2);
	bmap_close(b);
}

static struct bmap *reentrant_snap_b;

static int snap_call_back_into_bmap(void *ctx, const struct bmap_snap *sn)
{
	struct bmap_snap out;

	(void)ctx;
	return bmap_snap_get(reentrant_snap_b, sn->id, &out);
}

Test(bmap, calling_bmap_from_a_snap_list_callback_aborts, .signal = SIGABRT)
{
	struct bmap_snap s = make_snap(BMAP_ROOT_INO, "one", 1);

	reentrant_snap_b = make_index(4096);
	cr_assert_eq(bmap_snap_insert(reentrant_snap_b, &s), 0);
	teardown();             /* .fini does not run after an abort */
	bmap_snap_list(reentrant_snap_b, 0, 0, snap_call_back_into_bmap, NULL);
}

/* ---- snapshot inodes ---------------------------------------------------- */

Test(bmap, sinode_insert_then_get_and_lookup_return_every_field)
{
	struct bmap *b = make_index(4096);
	uint64_t web = insert_dir(b, BMAP_ROOT_INO, "web");
	struct bmap_snap s = make_snap(web, "one", 1), t = make_snap(web, "two", 2);
	struct bmap_inode in = make_inode(web, "root.img", BMAP_VOL), out;
	uint64_t n;

	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_eq(bmap_snap_insert(b, &t), 0);
	in.ino = 42;
	in.size = 0xfedcba9876543210ull;       /* top bit set */
	in.node = 17;
	cr_assert_eq(bmap_sinode_insert(b, s.id, &in), 0);

	memset(&out, 0xaa, sizeof(out));
	cr_assert_eq(bmap_sinode_get(b, s.id, 42, &out), 0);
	cr_assert_eq(memcmp(&in, &out, sizeof(in)), 0);
	memset(&out, 0xaa, sizeof(out));
	cr_assert_eq(bmap_sinode_lookup(b, s.id, web, "root.img", &out), 0);
	cr_assert_eq(memcmp(&in, &out, sizeof(in)), 0);

	cr_assert_eq(bmap_sinode_get(b, t.id, 42, &out), -ENOENT, "one snapshot's inodes only");
	cr_assert_eq(bmap_sinode_get(b, s.id, 43, &out), -ENOENT);
	cr_assert_eq(bmap_sinode_lookup(b, t.id, web, "root.img", &out), -ENOENT);
	cr_assert_eq(bmap_sinode_lookup(b, s.id, BMAP_ROOT_INO, "root.img", &out), -ENOENT);
	cr_assert_eq(bmap_sinode_lookup(b, s.id, web, "nope", &out), -ENOENT);

	/* The live namespace is another table. */
	cr_assert_eq(bmap_inode_get(b, 42, &out), -ENOENT);
	cr_assert_eq(bmap_inode_lookup(b, web, "root.img", &out), -ENOENT);
	cr_assert_eq(bmap_inode_count(b, &n), 0);
	cr_assert_eq(n, 2);
	bmap_close(b);
}

Test(bmap, sinode_insert_of_an_ino_twice_is_eexist_in_one_snapshot_only)
{
	struct bmap *b = make_index(4096);
	struct bmap_snap s = make_snap(BMAP_ROOT_INO, "one", 1), t = make_snap(BMAP_ROOT_INO, "two", 2);
	struct bmap_inode in = make_inode(BMAP_ROOT_INO, "v", BMAP_VOL);
	struct bmap_inode bad = make_inode(BMAP_ROOT_INO, "", BMAP_VOL);

	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_eq(bmap_snap_insert(b, &t), 0);
	in.ino = 7;
	cr_assert_eq(bmap_sinode_insert(b, s.id, &in), 0);
	cr_assert_eq(bmap_sinode_insert(b, s.id, &in), -EEXIST);
	cr_assert_eq(bmap_sinode_insert(b, t.id, &in), 0, "the same ino in another snapshot");
	bad.ino = 8;
	cr_assert_eq(bmap_sinode_insert(b, s.id, &bad), -EINVAL, "a named parent needs a name");
	bmap_close(b);
}

Test(bmap, sinode_list_returns_one_parents_children_in_ino_order_after_a_cursor)
{
	struct bmap *b = make_index(4096);
	uint64_t web = insert_dir(b, BMAP_ROOT_INO, "web");
	struct bmap_snap s = make_snap(web, "one", 1), t = make_snap(web, "two", 2);
	struct bmap_inode extra = make_inode(web, "only-in-two", BMAP_VOL);
	struct seen seen = { .n = 0 };

	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_eq(bmap_snap_insert(b, &t), 0);
	put_frozen_tree(b, s.id, web);
	extra.ino = 40;
	cr_assert_eq(bmap_sinode_insert(b, t.id, &extra), 0);

	cr_assert_eq(bmap_sinode_list(b, s.id, web, 0, collect_inode_parent, &seen), 0);
	cr_assert_eq(seen.n, 3);
	cr_assert_eq(seen.a[0], 10);
	cr_assert_eq(seen.a[1], 30);
	cr_assert_eq(seen.a[2], 50);
	cr_assert_str_eq(seen.name[0], "sub");
	cr_assert_str_eq(seen.name[2], "b");

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_sinode_list(b, s.id, web, 10, collect_inode_parent, &seen), 0);
	cr_assert_eq(seen.n, 2, "the cursor is exclusive");
	cr_assert_eq(seen.a[0], 30);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_sinode_list(b, s.id, 10, 0, collect_inode_parent, &seen), 0);
	cr_assert_eq(seen.n, 1);
	cr_assert_eq(seen.a[0], 20);
	cr_assert_eq(seen.b[0], 10);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_sinode_list(b, s.id, web, UINT64_MAX, collect_inode_parent, &seen), 0);
	cr_assert_eq(seen.n, 0);

	memset(&seen, 0, sizeof(seen));
	seen.stop_at = 1;
	cr_assert_eq(bmap_sinode_list(b, s.id, web, 0, collect_inode_parent, &seen), 7);
	cr_assert_eq(seen.n, 1);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_sinode_list(b, t.id, web, 0, collect_inode_parent, &seen), 0);
	cr_assert_eq(seen.n, 1);
	cr_assert_eq(seen.a[0], 40);
	bmap_close(b);
}

Test(bmap, sinode_all_returns_every_inode_of_one_snapshot_in_ino_order)
{
	struct bmap *b = make_index(4096);
	uint64_t web = insert_dir(b, BMAP_ROOT_INO, "web");
	struct bmap_snap s = make_snap(web, "one", 1), t = make_snap(web, "two", 2);
	struct bmap_inode extra = make_inode(web, "only-in-two", BMAP_VOL);
	struct seen seen = { .n = 0 };

	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_eq(bmap_snap_insert(b, &t), 0);
	put_frozen_tree(b, s.id, web);
	extra.ino = 40;
	cr_assert_eq(bmap_sinode_insert(b, t.id, &extra), 0);

	cr_assert_eq(bmap_sinode_all(b, s.id, collect_inode_parent, &seen), 0);
	cr_assert_eq(seen.n, 4, "every parent, not another snapshot's");
	cr_assert_eq(seen.a[0], 10);
	cr_assert_eq(seen.a[1], 20);
	cr_assert_eq(seen.b[1], 10);
	cr_assert_eq(seen.a[2], 30);
	cr_assert_eq(seen.a[3], 50);

	memset(&seen, 0, sizeof(seen));
	seen.stop_at = 2;
	cr_assert_eq(bmap_sinode_all(b, s.id, collect_inode_parent, &seen), 7);
	cr_assert_eq(seen.n, 2);

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(bmap_sinode_all(b, 4242, collect_inode_parent, &seen), 0);
	cr_assert_eq(seen.n, 0);
	bmap_close(b);
}

/* ---- subtree ------------------------------------------------------------ */

static int seen_index(const struct seen *s, uint64_t ino)
{
	int i;

	for (i = 0; i < s->n; i++)
		if (s->a[i] == ino)
			return i;
	return -1;
}

/* Every entry's parent is dir or an entry listed before it. */
static void assert_parents_first(const struct seen *s, uint64_t sdir)
{
	int i, p;

	for (i = 0; i < s->n; i++) {
		if (s->b[i] == sdir)
			continue;
		p = seen_index(s, s->b[i]);
		cr_assert_geq(p, 0, "%s (ino %" PRIu64 ") has a parent outside the subtree",
			      s->name[i], s->a[i]);
		cr_assert_lt(p, i, "%s (ino %" PRIu64 ") comes before its parent", s->name[i], s->a[i]);
	}
}

Test(bmap, subtree_returns_every_inode_below_a_dir_parents_first_but_not_the_dir_nor_other_dirs)
{
	struct bmap *b = make_index(4096);
	uint64_t deep, top, web, l1, l2, l3, other, gone, rootimg, a, xml, oimg;
	struct seen s = { .n = 0 };

	/* root/top.img, root/other/o.img, and
	 * root/web/{root.img, web.xml, l1/{a.img, l2/l3/deep.img}}.
	 * deep.img is created first and moved in last, so that its ino is
	 * smaller than every directory above it: ino order is not enough. */
	deep = insert_vol(b, BMAP_ROOT_INO, "deep.img", 0);
	top = insert_vol(b, BMAP_ROOT_INO, "top.img", 0);
	web = insert_dir(b, BMAP_ROOT_INO, "web");
	other = insert_dir(b, BMAP_ROOT_INO, "other");
	oimg = insert_vol(b, other, "o.img", 0);
	rootimg = insert_vol(b, web, "root.img", 0);
	l1 = insert_dir(b, web, "l1");
	a = insert_vol(b, l1, "a.img", 0);
	l2 = insert_dir(b, l1, "l2");
	l3 = insert_dir(b, l2, "l3");
	xml = insert_vol(b, web, "web.xml", 0);
	cr_assert_eq(bmap_inode_move(b, deep, l3, "deep.img"), 0);
	/* unlinked while open: below nothing */
	gone = insert_vol(b, web, "gone.img", 0);
	cr_assert_eq(bmap_inode_move(b, gone, 0, ""), 0);

	cr_assert_eq(bmap_subtree(b, web, collect_inode_parent, &s), 0);
	cr_assert_eq(s.n, 7);
	cr_assert_geq(seen_index(&s, rootimg), 0);
	cr_assert_geq(seen_index(&s, xml), 0);
	cr_assert_geq(seen_index(&s, l1), 0);
	cr_assert_geq(seen_index(&s, a), 0);
	cr_assert_geq(seen_index(&s, l2), 0);
	cr_assert_geq(seen_index(&s, l3), 0);
	cr_assert_geq(seen_index(&s, deep), 0, "three levels down");
	cr_assert_eq(seen_index(&s, web), -1, "not the dir itself");
	cr_assert_eq(seen_index(&s, top), -1);
	cr_assert_eq(seen_index(&s, other), -1);
	cr_assert_eq(seen_index(&s, oimg), -1, "not another dir's inodes");
	cr_assert_eq(seen_index(&s, gone), -1, "not an unlinked inode");
	assert_parents_first(&s, web);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_subtree(b, l2, collect_inode_parent, &s), 0);
	cr_assert_eq(s.n, 2);
	cr_assert_eq(s.a[0], l3);
	cr_assert_eq(s.a[1], deep);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_subtree(b, BMAP_ROOT_INO, collect_inode_parent, &s), 0);
	cr_assert_eq(s.n, 11, "every linked inode but the root");
	cr_assert_eq(seen_index(&s, BMAP_ROOT_INO), -1);
	cr_assert_eq(seen_index(&s, gone), -1);
	assert_parents_first(&s, BMAP_ROOT_INO);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_subtree(b, top, collect_inode_parent, &s), 0);
	cr_assert_eq(s.n, 0, "a volume has nothing below it");
	cr_assert_eq(bmap_subtree(b, 0, collect_inode_parent, &s), 0);
	cr_assert_eq(s.n, 0, "dir 0 is not a directory: not the root, not the orphans");

	memset(&s, 0, sizeof(s));
	s.stop_at = 3;
	cr_assert_eq(bmap_subtree(b, web, collect_inode_parent, &s), 7);
	cr_assert_eq(s.n, 3);
	bmap_close(b);
}

/* ---- node lifetime ------------------------------------------------------ */

static struct bmap_node new_node(struct bmap *b, uint64_t parent, uint64_t inherit)
{
	struct bmap_node n = { .parent = parent, .inherit = inherit };

	cr_assert_eq(bmap_node_create(b, &n), 0);
	return n;
}

static uint64_t node_refs(struct bmap *b, uint64_t node)
{
	uint64_t n = 99;

	cr_assert_eq(bmap_node_refs(b, node, &n), 0);
	return n;
}

Test(bmap, node_refs_counts_the_inodes_and_snapshot_inodes_naming_a_node)
{
	struct bmap *b = make_index(4096);
	struct bmap_node n = new_node(b, 0, 0), m = new_node(b, n.id, 0);
	struct bmap_snap s1 = make_snap(BMAP_ROOT_INO, "one", 1), s2 = make_snap(BMAP_ROOT_INO, "two", 2);
	struct bmap_inode in = make_inode(BMAP_ROOT_INO, "v", BMAP_VOL);
	struct bmap_inode d = make_inode(BMAP_ROOT_INO, "d", BMAP_DIR);
	uint64_t v1, v2;

	cr_assert_eq(node_refs(b, n.id), 0);
	v1 = insert_vol(b, BMAP_ROOT_INO, "v1", n.id);
	v2 = insert_vol(b, BMAP_ROOT_INO, "v2", n.id);
	insert_vol(b, BMAP_ROOT_INO, "w", m.id);
	cr_assert_eq(bmap_inode_move(b, v2, 0, ""), 0);     /* unlinked, still open */
	cr_assert_eq(bmap_snap_insert(b, &s1), 0);
	cr_assert_eq(bmap_snap_insert(b, &s2), 0);
	in.ino = v1;
	in.node = n.id;
	cr_assert_eq(bmap_sinode_insert(b, s1.id, &in), 0);
	cr_assert_eq(bmap_sinode_insert(b, s2.id, &in), 0);
	d.ino = 99;
	cr_assert_eq(bmap_sinode_insert(b, s1.id, &d), 0);  /* a dir names no node */

	cr_assert_eq(node_refs(b, n.id), 4, "two inodes (one unlinked) and two snapshot inodes");
	cr_assert_eq(node_refs(b, m.id), 1, "a child node is not a reference");
	cr_assert_eq(node_refs(b, 4242), 0);

	cr_assert_eq(bmap_inode_delete(b, v1), 0);
	cr_assert_eq(node_refs(b, n.id), 3);
	cr_assert_eq(bmap_snap_delete(b, s1.id), 0);
	cr_assert_eq(node_refs(b, n.id), 2);
	cr_assert_eq(bmap_inode_delete(b, v2), 0);
	cr_assert_eq(bmap_snap_delete(b, s2.id), 0);
	cr_assert_eq(node_refs(b, n.id), 0);
	bmap_close(b);
}

Test(bmap, node_only_child_returns_the_one_child_or_enoent_without_one)
{
	struct bmap *b = make_index(4096);
	struct bmap_node p = new_node(b, 0, 0), q = new_node(b, 0, 0);
	struct bmap_node c;
	uint64_t child = 99;

	cr_assert_eq(bmap_node_only_child(b, p.id, &child), -ENOENT);
	cr_assert_eq(child, 99, "a failed call leaves the value alone");
	c = new_node(b, p.id, 10);
	new_node(b, 0, 0);
	cr_assert_eq(bmap_node_only_child(b, p.id, &child), 0);
	cr_assert_eq(child, c.id);
	cr_assert_eq(bmap_node_only_child(b, c.id, &child), -ENOENT, "a leaf has none");
	cr_assert_eq(bmap_node_only_child(b, q.id, &child), -ENOENT);
	cr_assert_eq(bmap_node_only_child(b, 4242, &child), -ENOENT);
	bmap_close(b);
}


/* The example of bmap.h: P holds [0, 3) and [5, 10) (chunk 1, slot =
 * lblock, two extents); its only child C (inherit 6) holds data at 1
 * (chunk 2) and a tombstone at 2.  P's parent G holds block 0 (chunk 3).
 * Another child of G: untouched. */
struct merge_case {
	struct bmap_node g, p, c, other;
};

static struct merge_case merge_setup(struct bmap *b, uint64_t p_inherit)
{
	struct merge_case m;

	m.g = new_node(b, 0, 0);
	m.p = new_node(b, m.g.id, p_inherit);
	m.c = new_node(b, m.p.id, 6);
	m.other = new_node(b, m.g.id, 100);
	put(b, m.p.id, 0, 3, 1, 0);
	put(b, m.p.id, 5, 5, 1, 5);
	put(b, m.c.id, 1, 1, 2, 1);
	put(b, m.c.id, 2, 1, 0, 0);
	put(b, m.g.id, 0, 1, 3, 0);
	put(b, m.other.id, 1, 1, 4, 1);
	return m;
}

/* The state node_merge leaves merge_setup(b, 100) in. */
static void assert_merged(struct bmap *b, const struct merge_case *m)
{
	struct bmap_node out;
	struct seen s;
	uint64_t child;

	cr_assert_eq(bmap_node_get(b, m->p.id, &out), -ENOENT, "the parent is gone");
	node_exts(b, m->p.id, &s);
	cr_assert_eq(s.n, 0, "with all its extents");

	node_exts(b, m->c.id, &s);
	cr_assert_eq(s.n, 4);
	assert_ext(&s, 0, 0, 1, 1, 0);          /* P's: the child had none */
	assert_ext(&s, 1, 1, 1, 2, 1);          /* the child's own data wins */
	assert_ext(&s, 2, 2, 1, 0, 0);          /* the child's tombstone wins */
	assert_ext(&s, 3, 5, 1, 1, 5);          /* P's, cut at the inherit limit */
	/* 6..9 >= C.inherit: the child never saw them; dropped */
	cr_assert_eq(blocks(b, m->c.id), 3, "node.nblocks follows: 0, 1 and 5 hold data");
	cr_assert_eq(blocks(b, m->p.id), 0);

	cr_assert_eq(bmap_node_get(b, m->c.id, &out), 0);
	cr_assert_eq(out.parent, m->g.id, "the child takes the parent's parent");
	cr_assert_eq(out.inherit, 6, "min(6, 100)");
	cr_assert_eq(bmap_node_only_child(b, m->g.id, &child), 0);
	cr_assert_eq(child, m->c.id);

	/* P's dropped blocks (1, 2, 6..9) no longer cover chunk 1. */
	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_chunk_refs(b, collect_ref, &s), 0);
	cr_assert_eq(s.n, 4);
	cr_assert_eq(s.a[0], 1);
	cr_assert_eq(s.b[0], 2);
	cr_assert_eq(blocks(b, m->g.id), 1, "the grandparent is untouched");
	cr_assert_eq(blocks(b, m->other.id), 1, "a sibling is untouched");
	cr_assert_eq(bmap_node_get(b, m->other.id, &out), 0);
	cr_assert_eq(out.parent, m->g.id);
}

Test(bmap, node_merge_moves_the_parent_extents_the_child_sees_and_drops_the_rest)
{
	struct bmap *b = make_index(4096);
	struct merge_case m = merge_setup(b, 100);

	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_node_merge(b, m.p.id, m.c.id), 0);
	cr_assert_eq(bmap_commit(b), 0);
	assert_merged(b, &m);
	bmap_close(b);
}

/* In steps of 1 extent: P's [0, 3) (0 moves, 1 and 2 are the child's),
 * then [5, 10), the last step.  Between steps P and C are both still
 * there, P still C's parent. */
Test(bmap, node_merge_in_steps_ends_as_one_merge)
{
	struct bmap *b = make_index(4096);
	struct merge_case m = merge_setup(b, 100);
	struct bmap_node out;
	struct seen s;
	bool done;
	int steps = 0;

	do {
		cr_assert_eq(bmap_begin(b), 0);
		cr_assert_eq(bmap_node_merge_some(b, m.p.id, m.c.id, 1, &done), 0);
		cr_assert_eq(bmap_commit(b), 0);
		steps++;
		if (done)
			break;
		cr_assert_eq(bmap_node_get(b, m.c.id, &out), 0);
		cr_assert_eq(out.parent, m.p.id, "step %d: the child keeps its parent until the end", steps);
		node_exts(b, m.p.id, &s);
		cr_assert_eq(s.n, 1, "after one step P keeps [5, 10)");
		assert_ext(&s, 0, 5, 5, 1, 5);
		node_exts(b, m.c.id, &s);
		cr_assert_eq(s.n, 3);
		assert_ext(&s, 0, 0, 1, 1, 0);  /* moved */
		cr_assert_eq(blocks(b, m.p.id), 5, "node.nblocks between steps");
		cr_assert_eq(blocks(b, m.c.id), 2, "0 and 1; 2 is a tombstone");
	} while (steps < 10);
	cr_assert(done);
	cr_assert_eq(steps, 2, "2 extents in steps of 1 (%d)", steps);
	assert_merged(b, &m);

	/* and a step on nodes that are not parent and child changes nothing */
	cr_assert_eq(bmap_node_merge_some(b, m.other.id, m.c.id, 2, &done), -EINVAL);
	cr_assert_not(done);
	bmap_close(b);
}

Test(bmap, node_merge_gives_the_child_the_smaller_inherit_limit)
{
	struct bmap *b = make_index(4096);
	struct merge_case m = merge_setup(b, 4);
	struct bmap_node root = new_node(b, 0, 50), kid = new_node(b, root.id, 80), out;
	struct seen s;

	cr_assert_eq(bmap_node_merge(b, m.p.id, m.c.id), 0);
	cr_assert_eq(bmap_node_get(b, m.c.id, &out), 0);
	cr_assert_eq(out.inherit, 4, "min(6, 4): what P could not inherit stays zeros");
	/* P's own block 5 lies past P's limit but below C's: C saw it. */
	node_exts(b, m.c.id, &s);
	cr_assert_eq(s.n, 4);
	assert_ext(&s, 3, 5, 1, 1, 5);

	/* A node without a parent: the child ends up without one. */
	cr_assert_eq(bmap_node_merge(b, root.id, kid.id), 0);
	cr_assert_eq(bmap_node_get(b, kid.id, &out), 0);
	cr_assert_eq(out.parent, 0);
	cr_assert_eq(out.inherit, 50);
	bmap_close(b);
}

/* A moved piece that touches the child's own extent merges with it: the
 * child stays in canonical form. */
Test(bmap, node_merge_joins_a_moved_piece_with_the_child_extent_it_continues)
{
	struct bmap *b = make_index(4096);
	struct bmap_node p = new_node(b, 0, 0), c = new_node(b, p.id, 100);
	struct seen s;

	put(b, p.id, 0, 20, 1, 0);
	put(b, c.id, 5, 5, 1, 5);               /* the same mapping as P's */
	put(b, c.id, 12, 2, 0, 0);
	cr_assert_eq(bmap_node_merge(b, p.id, c.id), 0);
	node_exts(b, c.id, &s);
	cr_assert_eq(s.n, 3);
	assert_ext(&s, 0, 0, 12, 1, 0);
	assert_ext(&s, 1, 12, 2, 0, 0);
	assert_ext(&s, 2, 14, 6, 1, 14);
	cr_assert_eq(blocks(b, c.id), 18);
	bmap_close(b);
}

/* Every node and every extent of the index, to compare before and after. */
struct index_state {
	struct bmap_node n[8];
	int nn;
	struct seen exts[8];
};

static int collect_node(void *ctx, const struct bmap_node *n)
{
	struct index_state *st = ctx;

	cr_assert_lt(st->nn, 8);
	st->n[st->nn++] = *n;
	return 0;
}

static void index_state(struct bmap *b, struct index_state *st)
{
	int i;

	memset(st, 0, sizeof(*st));
	cr_assert_eq(bmap_node_list(b, collect_node, st), 0);
	for (i = 0; i < st->nn; i++)
		node_exts(b, st->n[i].id, &st->exts[i]);
}

static void assert_same_state(const struct index_state *x, const struct index_state *y)
{
	cr_assert_eq(x->nn, y->nn);
	for (int i = 0; i < x->nn; i++) {
		cr_assert_eq(memcmp(&x->n[i], &y->n[i], sizeof(x->n[i])), 0, "node %" PRIu64, x->n[i].id);
		cr_assert_eq(x->exts[i].n, y->exts[i].n, "extents of node %" PRIu64, x->n[i].id);
		cr_assert_eq(memcmp(x->exts[i].l, y->exts[i].l,
				    sizeof(x->exts[i].l[0]) * (size_t)x->exts[i].n), 0);
	}
}

Test(bmap, node_merge_into_a_node_that_is_not_its_child_is_einval_and_changes_nothing)
{
	struct bmap *b = make_index(4096);
	struct merge_case m = merge_setup(b, 100);
	struct index_state before, after;

	index_state(b, &before);
	cr_assert_eq(bmap_node_merge(b, m.p.id, m.other.id), -EINVAL, "a sibling");
	cr_assert_eq(bmap_node_merge(b, m.g.id, m.c.id), -EINVAL, "a grandchild");
	cr_assert_eq(bmap_node_merge(b, m.c.id, m.p.id), -EINVAL, "the parent");
	cr_assert_eq(bmap_node_merge(b, 4242, m.c.id), -ENOENT);
	cr_assert_eq(bmap_node_merge(b, m.p.id, 4242), -ENOENT);
	index_state(b, &after);
	assert_same_state(&before, &after);
	bmap_close(b);
}

Test(bmap, node_merge_inside_a_transaction_rolled_back_leaves_everything_as_before)
{
	struct bmap *b = make_index(4096);
	struct merge_case m = merge_setup(b, 100);
	struct index_state before, after;
	struct bmap_node out;

	index_state(b, &before);
	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_node_merge(b, m.p.id, m.c.id), 0);
	cr_assert_eq(bmap_node_get(b, m.p.id, &out), -ENOENT, "the transaction sees the merge");
	bmap_rollback(b);
	index_state(b, &after);
	assert_same_state(&before, &after);
	cr_assert_eq(bmap_node_get(b, m.c.id, &out), 0);
	cr_assert_eq(out.parent, m.p.id);
	bmap_close(b);
}

Test(bmap, node_list_returns_every_node_in_increasing_id_order)
{
	struct bmap *b = make_index(4096);
	struct bmap_node n[5];
	struct index_state st;
	int i;

	n[0] = new_node(b, 0, 0);
	n[1] = new_node(b, n[0].id, UINT64_MAX);
	n[2] = new_node(b, n[0].id, 7);
	n[3] = new_node(b, n[2].id, 3);
	n[4] = new_node(b, 0, 1);
	cr_assert_eq(bmap_node_delete(b, n[2].id), 0);

	memset(&st, 0, sizeof(st));
	cr_assert_eq(bmap_node_list(b, collect_node, &st), 0);
	cr_assert_eq(st.nn, 4);
	for (i = 1; i < st.nn; i++)
		cr_assert_lt(st.n[i - 1].id, st.n[i].id);
	cr_assert_eq(memcmp(&st.n[0], &n[0], sizeof(n[0])), 0);
	cr_assert_eq(memcmp(&st.n[1], &n[1], sizeof(n[1])), 0, "inherit round-trips all 64 bits");
	cr_assert_eq(memcmp(&st.n[2], &n[3], sizeof(n[3])), 0, "a deleted node is not listed");
	cr_assert_eq(memcmp(&st.n[3], &n[4], sizeof(n[4])), 0);
	bmap_close(b);
}

/* ---- model tests ---------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

static void seed_rng(const char *test)
{
	const char *env = getenv("TEST_BMAP_SEED");
	uint64_t seed = env ? strtoull(env, NULL, 0) : 20261203;

	fprintf(stderr, "%s: TEST_BMAP_SEED=%" PRIu64 "\n", test, seed);
	rng_state = seed ? seed : 1;
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *env = getenv(name);

	return env && *env ? strtoull(env, NULL, 0) : dflt;
}

struct ext_list {
	struct bmap_ext *v;
	size_t n, cap;
};

static int list_ext(void *ctx, const struct bmap_ext *e)
{
	struct ext_list *l = ctx;

	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 256;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		cr_assert_not_null(l->v);
	}
	l->v[l->n++] = *e;
	return 0;
}

static void node_list_exts(struct bmap *b, uint64_t node, struct ext_list *l)
{
	l->n = 0;
	cr_assert_eq(bmap_ext_range(b, node, 0, UINT64_MAX, list_ext, l), 0);
}

/* The extents of an emap, as bmap_ext. */
static void emap_list(const struct emap *m, struct ext_list *l)
{
	struct emap_run r;
	struct bmap_ext e;

	l->n = 0;
	for (uint64_t pos = 0; emap_next(m, pos, EMAP_LBLOCK_LIMIT, &r); pos += r.nblocks) {
		if (r.kind == EMAP_UNMAPPED)
			continue;
		e = ext(r.lblock, (uint32_t)r.nblocks, r.chunk, r.slot);
		list_ext(l, &e);
	}
}

/* The rows of node are exactly the extents of m: the canonical form. */
static void assert_rows_are(struct bmap *b, uint64_t node, const struct emap *m, const char *what)
{
	struct ext_list got = { 0 }, want = { 0 };

	cr_assert_null(emap_check(m));
	node_list_exts(b, node, &got);
	emap_list(m, &want);
	for (size_t i = 0; i < got.n || i < want.n; i++) {
		const struct bmap_ext *g = i < got.n ? &got.v[i] : NULL, *w = i < want.n ? &want.v[i] : NULL;

		cr_assert(g && w && memcmp(g, w, sizeof(*g)) == 0,
			  "%s: node %" PRIu64 " row %zu: [%" PRIu64 ", +%u) chunk %" PRIu64 " slot %u,"
			  " the model [%" PRIu64 ", +%u) chunk %" PRIu64 " slot %u (%zu rows, %zu extents)",
			  what, node, i, g ? g->lblock : 0, g ? g->nblocks : 0, g ? g->chunk : 0,
			  g ? g->slot : 0, w ? w->lblock : 0, w ? w->nblocks : 0, w ? w->chunk : 0,
			  w ? w->slot : 0, got.n, want.n);
	}
	free(got.v);
	free(want.v);
}

/* What one block maps to: 0 nothing, 1 tombstone, 2 data. */
struct blk {
	uint8_t kind;
	uint32_t slot;
	uint64_t chunk;
};

#define MODEL_N 2048

/* Expand node's rows in [0, MODEL_N) into per-block values. */
static void node_blocks_of(struct bmap *b, uint64_t node, struct blk *v)
{
	struct ext_list l = { 0 };

	memset(v, 0, sizeof(*v) * MODEL_N);
	node_list_exts(b, node, &l);
	for (size_t i = 0; i < l.n; i++)
		for (uint64_t k = 0; k < l.v[i].nblocks && l.v[i].lblock + k < MODEL_N; k++)
			v[l.v[i].lblock + k] = (struct blk){ l.v[i].chunk ? 2 : 1,
				l.v[i].chunk ? l.v[i].slot + (uint32_t)k : 0, l.v[i].chunk };
	free(l.v);
}

static void ref_set(struct blk *ref, uint64_t lo, uint64_t n, uint64_t chunk, uint32_t slot)
{
	for (uint64_t k = 0; k < n; k++)
		ref[lo + k] = (struct blk){ chunk ? 2 : 1, chunk ? slot + (uint32_t)k : 0, chunk };
}

static void model_check(struct bmap *b, uint64_t node, const struct emap *m, const struct blk *ref,
			uint64_t op)
{
	struct blk got[MODEL_N];
	uint64_t data = 0;
	char what[64];

	snprintf(what, sizeof(what), "after op %" PRIu64, op);
	assert_rows_are(b, node, m, what);
	node_blocks_of(b, node, got);
	for (uint64_t i = 0; i < MODEL_N; i++) {
		cr_assert(got[i].kind == ref[i].kind && got[i].chunk == ref[i].chunk &&
			  got[i].slot == ref[i].slot,
			  "%s: block %" PRIu64 ": kind %d chunk %" PRIu64 " slot %u, want kind %d chunk %"
			  PRIu64 " slot %u", what, i, got[i].kind, got[i].chunk, got[i].slot, ref[i].kind,
			  ref[i].chunk, ref[i].slot);
		data += ref[i].kind == 2;
	}
	cr_assert_eq(blocks(b, 1), data, "%s: node.nblocks", what);
	cr_assert_eq(emap_data_blocks(m), data);
	/* bmap_ext_blocks over ranges that cut rows at either end, or none */
	for (uint64_t k = 0; k < 4; k++) {
		uint64_t lo = (op * 37 + k * 511) % MODEL_N, hi = lo + (op * 101 + k * 7) % (MODEL_N - lo);
		uint64_t in = 0, got_in = 99;

		for (uint64_t i = lo; i < hi; i++)
			in += ref[i].kind == 2;
		cr_assert_eq(bmap_ext_blocks(b, 1, lo, hi, &got_in), 0);
		cr_assert_eq(got_in, in, "%s: data blocks in [%" PRIu64 ", %" PRIu64 "): %" PRIu64
			     ", want %" PRIu64, what, lo, hi, got_in, in);
	}
	cr_assert_eq(bmap_ext_blocks(b, 1, 0, UINT64_MAX, &data), 0);
	cr_assert_eq(data, emap_data_blocks(m));
}

/* The length of the run of data blocks from p on that one row holds. */
static uint64_t ref_run(const struct blk *ref, uint64_t p)
{
	uint64_t k = 1;

	while (p + k < MODEL_N && ref[p + k].kind == 2 && ref[p + k].chunk == ref[p].chunk &&
	       ref[p + k].slot == ref[p].slot + k)
		k++;
	return k;
}

Test(bmap, model_random_puts_dels_and_relocates_keep_rows_canonical_and_equal_to_an_emap)
{
	struct bmap *b = make_index_with_nodes(1);
	uint32_t nslots = CHUNK_NSLOTS(4096);
	struct emap *m = emap_new(nslots);
	static struct blk ref[MODEL_N];
	uint64_t nops = env_u64("TEST_BMAP_OPS", 3000), counts[6] = { 0 };
	struct emap_ext me;
	struct bmap_ext e;

	seed_rng("model");
	cr_assert_not_null(m);
	memset(ref, 0, sizeof(ref));
	for (uint64_t op = 0; op < nops; op++) {
		uint64_t r = rnd() % 100, lo, len;
		bool txn = rnd() % 3 == 0;

		if (txn)
			cr_assert_eq(bmap_begin(b), 0);
		if (r < 40) {                   /* a data run */
			len = 1 + rnd() % (rnd() % 4 ? 8 : 64);
			lo = rnd() % (MODEL_N - len);
			e = ext(lo, (uint32_t)len, 1 + rnd() % 3, (uint32_t)(rnd() % 4096));
			if (rnd() % 3 == 0 && lo > 0 && ref[lo - 1].kind == 2) {
				e.chunk = ref[lo - 1].chunk;    /* continues the left neighbour */
				e.slot = ref[lo - 1].slot + 1;
			} else if (rnd() % 4 == 0 && ref[lo + len].kind == 2 && ref[lo + len].slot >= len) {
				e.chunk = ref[lo + len].chunk;  /* and the right one */
				e.slot = ref[lo + len].slot - (uint32_t)len;
			}
			if (e.slot + len > nslots)
				e.slot = 0;
			cr_assert_eq(bmap_ext_put(b, 1, &e), 0);
			ref_set(ref, lo, len, e.chunk, e.slot);
			me = (struct emap_ext){ .lblock = lo, .nblocks = (uint32_t)len, .chunk = e.chunk,
						.slot = e.slot };
			cr_assert_eq(emap_put(m, &me, NULL), 0);
			counts[0]++;
		} else if (r < 55) {            /* a tombstone run */
			len = 1 + rnd() % 32;
			lo = rnd() % (MODEL_N - len);
			e = ext(lo, (uint32_t)len, 0, 0);
			cr_assert_eq(bmap_ext_put(b, 1, &e), 0);
			ref_set(ref, lo, len, 0, 0);
			me = (struct emap_ext){ .lblock = lo, .nblocks = (uint32_t)len };
			cr_assert_eq(emap_put(m, &me, NULL), 0);
			counts[1]++;
		} else if (r < 75) {            /* a delete */
			len = 1 + rnd() % 64;
			lo = rnd() % (MODEL_N - len);
			cr_assert_eq(bmap_ext_del(b, 1, lo, len), 0);
			memset(&ref[lo], 0, sizeof(ref[0]) * len);
			cr_assert_eq(emap_delete(m, lo, lo + len, NULL), 0);
			counts[2]++;
		} else if (r < 78) {            /* a truncate, near the end */
			lo = MODEL_N - 1 - rnd() % 300;
			cr_assert_eq(bmap_ext_del_from(b, 1, lo), 0);
			memset(&ref[lo], 0, sizeof(ref[0]) * (MODEL_N - lo));
			cr_assert_eq(emap_truncate(m, lo, NULL), 0);
			counts[3]++;
		} else {                        /* a relocate of a piece of a row */
			uint64_t p = rnd() % MODEL_N, k;
			bool stale = rnd() % 4 == 0;

			while (p < MODEL_N && ref[p].kind != 2)
				p++;
			if (p == MODEL_N)
				goto done;
			k = 1 + rnd() % ref_run(ref, p);
			e = ext(p, (uint32_t)k, ref[p].chunk, ref[p].slot + (stale ? 1 : 0));
			if (stale) {            /* a newer write won: nothing changes */
				cr_assert_eq(bmap_ext_relocate(b, 1, &e, 9, 0), -ENOENT);
				counts[5]++;
				goto done;
			}
			lo = 10 + rnd() % 3;
			len = rnd() % 8 ? rnd() % 4096 : 0;
			if (rnd() % 3 == 0 && p > 0 && ref[p - 1].kind == 2 && ref[p - 1].chunk >= 10) {
				lo = ref[p - 1].chunk;  /* next to its left neighbour */
				len = ref[p - 1].slot + 1;
			}
			if (len + k > nslots)
				len = 0;
			cr_assert_eq(bmap_ext_relocate(b, 1, &e, lo, (uint32_t)len), 0);
			ref_set(ref, p, k, lo, (uint32_t)len);
			me = (struct emap_ext){ .lblock = p, .nblocks = (uint32_t)k, .chunk = lo,
						.slot = (uint32_t)len };
			cr_assert_eq(emap_put(m, &me, NULL), 0);
			counts[4]++;
		}
done:
		if (txn)
			cr_assert_eq(bmap_commit(b), 0);
		model_check(b, 1, m, ref, op);
	}
	fprintf(stderr, "model: %" PRIu64 " ops: %" PRIu64 " data puts, %" PRIu64 " tombstone puts, %"
		PRIu64 " dels, %" PRIu64 " del_froms, %" PRIu64 " relocates, %" PRIu64 " lost; %" PRIu64
		" extents at the end\n", nops, counts[0], counts[1], counts[2], counts[3], counts[4],
		counts[5], emap_count(m));
	emap_free(m);
	bmap_close(b);
}

/* Fill node with random extents in [0, MODEL_N): data, tombstones, holes. */
static void random_content(struct bmap *b, uint64_t node, int nputs)
{
	for (int i = 0; i < nputs; i++) {
		uint64_t len = 1 + rnd() % 40, lo = rnd() % (MODEL_N - len), r = rnd() % 10;

		if (r < 6)
			put(b, node, lo, (uint32_t)len, 1 + node % 5, (uint32_t)(lo + (r == 0)));
		else if (r < 8)
			put(b, node, lo, (uint32_t)len, 0, 0);
		else
			cr_assert_eq(bmap_ext_del(b, node, lo, len), 0);
	}
}

/* What node shows at each block through its chain: 0 zeros, else data. */
static void node_view(struct bmap *b, uint64_t node, struct blk *view)
{
	struct blk own[MODEL_N];
	struct bmap_node n;
	bool done[MODEL_N] = { false };
	uint64_t limit = UINT64_MAX;

	memset(view, 0, sizeof(*view) * MODEL_N);
	while (node) {
		cr_assert_eq(bmap_node_get(b, node, &n), 0);
		node_blocks_of(b, node, own);
		for (uint64_t i = 0; i < MODEL_N && i < limit; i++) {
			if (done[i] || !own[i].kind)
				continue;
			done[i] = true;
			if (own[i].kind == 2)
				view[i] = own[i];
		}
		if (n.inherit < limit)
			limit = n.inherit;
		node = n.parent;
	}
}

static struct emap *node_emap(struct bmap *b, uint64_t node)
{
	struct emap *m = emap_new(CHUNK_NSLOTS(4096));
	struct ext_list l = { 0 };
	struct emap_ext me;

	cr_assert_not_null(m);
	node_list_exts(b, node, &l);
	for (size_t i = 0; i < l.n; i++) {
		me = (struct emap_ext){ .lblock = l.v[i].lblock, .nblocks = l.v[i].nblocks,
					.chunk = l.v[i].chunk, .slot = l.v[i].slot };
		cr_assert_eq(emap_put(m, &me, NULL), 0);
	}
	free(l.v);
	return m;
}

/* G <- P <- C with random content and limits; merge P into C in steps of a
 * few extents.  Between steps C shows what it showed before; at the end
 * C's rows are exactly its own extents with P's (clipped to C's limit)
 * filling its gaps: the overlay of emap, in canonical form. */
Test(bmap, model_merge_in_small_steps_keeps_the_child_view_and_ends_with_the_overlay)
{
	struct bmap *b = make_index(4096);
	static struct blk before[MODEL_N], now[MODEL_N];
	uint64_t rounds = env_u64("TEST_BMAP_MERGE_ROUNDS", 12), steps = 0;

	seed_rng("merge model");
	for (uint64_t round = 0; round < rounds; round++) {
		uint64_t ip = rnd() % 3 ? rnd() % (MODEL_N + 100) : UINT64_MAX;
		uint64_t ic = rnd() % 3 ? rnd() % (MODEL_N + 100) : UINT64_MAX;
		struct bmap_node g = new_node(b, 0, 0), p = new_node(b, g.id, ip);
		struct bmap_node c = new_node(b, p.id, ic), out;
		struct emap *want, *pm;
		uint64_t max_exts = 1 + rnd() % 4, pn, cn;
		bool done = false;

		random_content(b, g.id, 40);
		random_content(b, p.id, 60);
		random_content(b, c.id, 30);
		want = node_emap(b, c.id);
		pm = node_emap(b, p.id);
		cr_assert_eq(emap_clip(pm, 0, ic < MODEL_N ? ic : EMAP_LBLOCK_LIMIT), 0);
		cr_assert_eq(emap_overlay(want, pm, 0, EMAP_LBLOCK_LIMIT), 0);
		node_view(b, c.id, before);
		pn = blocks(b, p.id);
		cn = blocks(b, c.id);
		while (!done) {
			cr_assert_eq(bmap_node_merge_some(b, p.id, c.id, max_exts, &done), 0);
			steps++;
			node_view(b, c.id, now);
			cr_assert_eq(memcmp(before, now, sizeof(before)), 0,
				     "round %" PRIu64 ": the child's view changed", round);
			blocks(b, p.id);
			cr_assert_leq(blocks(b, c.id), pn + cn);
		}
		assert_rows_are(b, c.id, want, "after the merge");
		cr_assert_eq(blocks(b, c.id), emap_data_blocks(want));
		cr_assert_eq(bmap_node_get(b, p.id, &out), -ENOENT);
		cr_assert_eq(bmap_node_get(b, c.id, &out), 0);
		cr_assert_eq(out.parent, g.id);
		cr_assert_eq(out.inherit, ip < ic ? ip : ic);
		emap_free(want);
		emap_free(pm);
	}
	fprintf(stderr, "merge model: %" PRIu64 " rounds, %" PRIu64 " steps\n", rounds, steps);
	bmap_close(b);
}

/* ---- upgrade from format 2 ------------------------------------------------ */

/* What bmap_upgrade_run told its ops, and when to fail. */
struct up_rec {
	struct v2_row *seen;            /* row() calls, in order */
	size_t n, cap;
	uint64_t row_calls, syncs, progress_calls;
	size_t rows_at_sync;            /* n at the last sync */
	uint64_t fail_row_call, fail_sync_call;         /* 1-based; 0: never */
	uint64_t last_done, total;
	const char *index;              /* to read what is committed at sync() */
};

/* meta.upgrade_rows_done as committed, through a connection of our own. */
static bool committed_rows_done(const char *index, uint64_t *v)
{
	sqlite3 *db;
	sqlite3_stmt *s;
	bool found;

	cr_assert_eq(sqlite3_open_v2(index, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	cr_assert_eq(sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'upgrade_rows_done'",
					-1, &s, NULL), SQLITE_OK);
	found = sqlite3_step(s) == SQLITE_ROW;
	if (found)
		*v = (uint64_t)sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	sqlite3_close(db);
	return found;
}

/* PRAGMA user_version of the file, through a connection of our own. */
static int64_t file_user_version(const char *index)
{
	sqlite3 *db;
	sqlite3_stmt *s;
	int64_t v;

	cr_assert_eq(sqlite3_open_v2(index, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
	cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
	v = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	sqlite3_close(db);
	return v;
}

/* Does vsnapfs of index format 2 refuse an index of this user_version?
 * Its bmap_check_format (git show bfea280:src/bmap/bmap.c) opens 1..2. */
static bool format_2_code_refuses(int64_t user_version)
{
	return user_version < 1 || user_version > 2;
}

static int rec_row(void *ctx, uint64_t node, uint64_t lblock, uint64_t chunk, uint32_t slot,
		   uint64_t cksum)
{
	struct up_rec *r = ctx;

	if (++r->row_calls == r->fail_row_call)
		return -EIO;
	cr_assert_neq(chunk, 0, "row() of a tombstone");
	if (r->n == r->cap) {
		r->cap = r->cap ? 2 * r->cap : 1024;
		r->seen = realloc(r->seen, r->cap * sizeof(*r->seen));
		cr_assert_not_null(r->seen);
	}
	r->seen[r->n++] = (struct v2_row){ node, lblock, chunk, slot, cksum };
	return 0;
}

static int rec_sync(void *ctx)
{
	struct up_rec *r = ctx;

	uint64_t done;

	if (++r->syncs == r->fail_sync_call)
		return -EIO;
	/* the step being synced is not committed yet */
	cr_assert(committed_rows_done(r->index, &done), "sync() after the last commit");
	cr_assert_eq(done, r->last_done, "sync() after its step was committed");
	/* rows have been handed out: an older daemon must be kept out by now,
	 * or it could write rows behind the cursor that the walk never reads */
	cr_assert(format_2_code_refuses(file_user_version(r->index)),
		  "user_version %" PRId64 " at sync(): format-2 code would open the index",
		  file_user_version(r->index));
	r->rows_at_sync = r->n;
	return 0;
}

/* After each commit: every row() before it was followed by a sync. */
static void rec_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct up_rec *r = ctx;

	cr_assert_eq(r->rows_at_sync, r->n, "a step committed rows that were not synced");
	cr_assert_geq(done, r->last_done);
	cr_assert_leq(done, total);
	r->last_done = done;
	r->total = total;
	r->progress_calls++;
}

static struct bmap_upgrade_ops rec_ops(struct up_rec *r)
{
	return (struct bmap_upgrade_ops){ .row = rec_row, .sync = rec_sync, .progress = rec_progress,
					  .ctx = r };
}

/* Rows of nodes 1..3 made to coalesce and not: runs of consecutive slots
 * (some longer than a step), runs that change chunk or skip a slot,
 * tombstone runs, holes.  Sorted by (node, lblock) as the walk sees them. */
static size_t v2_random_rows(struct v2_row *v, size_t max)
{
	size_t n = 0;

	for (uint64_t node = 1; node <= 3; node++) {
		uint64_t lb = rnd() % 3;

		while (n < max && lb < 3000) {
			uint64_t len = 1 + (rnd() % 5 == 0 ? rnd() % 200 : rnd() % 12);
			uint64_t chunk = rnd() % 4 == 0 ? 0 : 1 + rnd() % 4;
			uint32_t slot = (uint32_t)(rnd() % 8000);

			for (uint64_t k = 0; k < len && n < max; k++) {
				v[n] = (struct v2_row){ node, lb + k, chunk, chunk ? slot + (uint32_t)k : 0,
							chunk ? rnd() | 1ull << 63 : 0 };
				n++;
			}
			lb += len + (rnd() % 3 == 0 ? 1 + rnd() % 5 : 0);
		}
	}
	return n;
}

/* After an upgrade: each node's rows are the canonical form of the old
 * rows (one emap fed a block at a time), and node.nblocks their data rows. */
static void assert_upgraded(struct bmap *b, const struct v2_row *v, size_t n)
{
	uint64_t node = 0, data = 0;
	struct emap *m = NULL;
	struct emap_ext me;
	uint64_t val;

	cr_assert_eq(bmap_format(b), 3);
	for (size_t i = 0; i <= n; i++) {
		if (i == n || v[i].node != node) {
			if (m) {
				assert_rows_are(b, node, m, "after the upgrade");
				cr_assert_eq(blocks(b, node), data, "node %" PRIu64, node);
				emap_free(m);
			}
			if (i == n)
				break;
			node = v[i].node;
			data = 0;
			m = emap_new(CHUNK_NSLOTS(bmap_block_size(b)));
		}
		me = (struct emap_ext){ .lblock = v[i].lblock, .nblocks = 1, .chunk = v[i].chunk,
					.slot = v[i].slot };
		cr_assert_eq(emap_put(m, &me, NULL), 0);
		data += v[i].chunk != 0;
	}
	cr_assert_eq(bmap_meta_get(b, "format_version", &val), 0);
	cr_assert_eq(val, 3);
	cr_assert_eq(bmap_meta_get(b, "ckpt_lsn", &val), 0);
	cr_assert_eq(val, 0);
	cr_assert_eq(bmap_meta_get(b, "ckpt_chunk", &val), 0);
	cr_assert_eq(bmap_meta_get(b, "next_chunk_id", &node), 0);
	cr_assert_eq(val, node, "ckpt_chunk is the next chunk id");
	cr_assert_eq(bmap_meta_get(b, "upgrade", &val), -ENOENT);
	cr_assert_eq(bmap_meta_get(b, "upgrade_cursor_node", &val), -ENOENT);
}

/* row() saw each data row (at least once, with its checksum), and nothing else. */
static void assert_rows_seen(const struct up_rec *r, const struct v2_row *v, size_t n, bool exactly_once)
{
	size_t j = 0, data = 0;

	for (size_t i = 0; i < n; i++) {
		if (!v[i].chunk)
			continue;
		data++;
		/* rows come in walk order; a resumed walk repeats some */
		while (j < r->n && !(r->seen[j].node == v[i].node && r->seen[j].lblock == v[i].lblock))
			j++;
		cr_assert_lt(j, r->n, "row() never saw node %" PRIu64 " block %" PRIu64, v[i].node,
			     v[i].lblock);
		cr_assert(r->seen[j].chunk == v[i].chunk && r->seen[j].slot == v[i].slot &&
			  r->seen[j].cksum == v[i].cksum, "row() got other values");
	}
	if (exactly_once)
		cr_assert_eq(r->n, data);
}

static void upgrade_case(uint64_t step_rows, size_t max_rows)
{
	struct v2_row *v = calloc(max_rows, sizeof(*v));
	struct up_rec r = { .index = path };
	struct bmap_upgrade_ops ops = rec_ops(&r);
	struct bmap *b = NULL;
	size_t n;

	cr_assert_not_null(v);
	n = v2_random_rows(v, max_rows);
	v2_create(path, 4096, 3);
	v2_insert(path, v, n);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_upgrade_run(b, step_rows, &ops), 0);
	assert_upgraded(b, v, n);
	assert_rows_seen(&r, v, n, true);
	cr_assert_eq(r.total, n);
	cr_assert_eq(r.last_done, n);
	cr_assert_eq(r.progress_calls, n / step_rows + 1, "one commit per step, %zu rows", n);
	cr_assert_eq(r.syncs, r.progress_calls, "a sync before each commit");
	cr_assert_eq(bmap_upgraded_from(b), 2);
	bmap_close(b);
	/* compacted: the old table's pages are not kept as free pages */
	{
		sqlite3 *db = v2_db(path);
		sqlite3_stmt *s;

		cr_assert_eq(sqlite3_prepare_v2(db, "SELECT (SELECT freelist_count FROM"
						" pragma_freelist_count), (SELECT count(*) FROM sqlite_schema"
						" WHERE name IN ('bmap', 'upgrade_nblocks'))", -1, &s, NULL),
			     SQLITE_OK, "%s", sqlite3_errmsg(db));
		cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
		cr_assert_eq(sqlite3_column_int64(s, 0), 0, "free pages after the upgrade");
		cr_assert_eq(sqlite3_column_int64(s, 1), 0, "the old tables are gone");
		sqlite3_finalize(s);
		cr_assert_eq(sqlite3_close(db), SQLITE_OK);
	}
	/* and the file is format 3 for the next open */
	cr_assert_eq(file_user_version(path), 3);
	cr_assert_eq(bmap_open(path, 1, &b), 0);
	assert_upgraded(b, v, n);
	bmap_close(b);
	free(r.seen);
	free(v);
}

Test(bmap, upgrade_in_steps_of_7_rows_maps_every_block_as_before)
{
	seed_rng("upgrade 7");
	upgrade_case(7, 1500);
}

Test(bmap, upgrade_in_steps_of_1_row_and_of_many_maps_every_block_as_before)
{
	seed_rng("upgrade 1");
	upgrade_case(1, 120);
	teardown();
	setup();
	upgrade_case(1 << 20, 3000);
}

/* An upgrade that fails at some point (kind: 0 a sync, 1 a row(), 2 a
 * commit) leaves format 2 for this code, a file older code refuses (its
 * first commit is done), and a read-only open that reports format 2 (what
 * vsnapctl needs to say "mount once"); a second run, on a new handle if
 * reopen, resumes at the cursor and ends as an upgrade without failure. */
static void interrupted_case(int kind, uint64_t at, bool reopen)
{
	struct v2_row *v = calloc(2000, sizeof(*v));
	struct up_rec r = { .index = path };
	struct bmap_upgrade_ops ops = rec_ops(&r);
	struct bmap *b = NULL, *ro = NULL;
	uint64_t cursor_node, cursor_lblock, val;
	size_t n, seen0, data_after = 0;
	int64_t uv;

	n = v2_random_rows(v, 2000);
	v2_create(path, 4096, 3);
	v2_insert(path, v, n);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	if (kind == 0)
		r.fail_sync_call = at;
	else if (kind == 1)
		r.fail_row_call = at;
	else
		bmap_fault_commit(b, (uint32_t)at, EIO);
	cr_assert_eq(bmap_upgrade_run(b, 50, &ops), -EIO);
	cr_assert_eq(bmap_format(b), 2);
	cr_assert_eq(bmap_meta_get(b, "upgrade", &val), 0, "a walk is under way");
	cr_assert_eq(bmap_meta_get(b, "upgrade_cursor_node", &cursor_node), 0);
	cr_assert_eq(bmap_meta_get(b, "upgrade_cursor_lblock", &cursor_lblock), 0);
	cr_assert_eq(bmap_meta_get(b, "upgrade_rows_done", &val), 0);
	cr_assert_lt(val, n);
	uv = file_user_version(path);
	cr_assert(format_2_code_refuses(uv), "user_version %" PRId64 " mid-upgrade: format-2 code "
		  "would open the index and write behind the cursor", uv);
	cr_assert_neq(uv, 3, "mid-upgrade is not format 3");
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_format(ro), 2, "a reader of a half-upgraded index sees format 2");
	cr_assert_eq(bmap_node_blocks(ro, 1, &val), -EPROTONOSUPPORT);
	cr_assert_eq(bmap_upgrade_run(ro, 50, &ops), -EROFS);
	bmap_close(ro);
	bmap_fault_commit(b, 0, 0);
	if (reopen) {
		bmap_close(b);
		cr_assert_eq(bmap_open(path, 0, &b), 0);
		cr_assert_eq(bmap_format(b), 2);
	}
	r.fail_sync_call = r.fail_row_call = 0;
	r.rows_at_sync = r.n;
	seen0 = r.n;
	cr_assert_eq(bmap_upgrade_run(b, 50, &ops), 0);
	assert_upgraded(b, v, n);
	assert_rows_seen(&r, v, n, false);
	/* resumed, not restarted: the second run saw the data rows from the
	 * cursor on, each once */
	for (size_t i = 0; i < n; i++)
		data_after += v[i].chunk && (v[i].node > cursor_node ||
			(v[i].node == cursor_node && v[i].lblock >= cursor_lblock));
	cr_assert_eq(r.n - seen0, data_after, "rows seen by the resumed run (cursor %" PRIu64
		     "/%" PRIu64 ")", cursor_node, cursor_lblock);
	cr_assert_eq(file_user_version(path), 3);
	bmap_close(b);
	free(r.seen);
	free(v);
}

Test(bmap, upgrade_interrupted_by_a_failed_sync_resumes_and_ends_equal)
{
	seed_rng("upgrade sync");
	interrupted_case(0, 4, false);
	teardown();
	setup();
	interrupted_case(0, 1, true);
}

Test(bmap, upgrade_interrupted_by_a_failed_row_resumes_and_ends_equal)
{
	seed_rng("upgrade row");
	interrupted_case(1, 333, true);
	teardown();
	setup();
	interrupted_case(1, 1, false);
}

Test(bmap, upgrade_interrupted_by_a_failed_commit_resumes_and_ends_equal)
{
	seed_rng("upgrade commit");
	interrupted_case(2, 5, true);
}

/* v2_fill_simple's index after an upgrade's first commit only (its first
 * sync failed); then the SQL edit, through a connection of our own. */
static void upgrade_begun_then(const char *edit_sql)
{
	struct up_rec r = { .index = path, .fail_sync_call = 1 };
	struct bmap_upgrade_ops ops = rec_ops(&r);
	struct bmap *b = NULL;
	sqlite3 *db;

	v2_create(path, 4096, 2);
	v2_fill_simple();
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_upgrade_run(b, 7, &ops), -EIO);
	bmap_close(b);
	free(r.seen);
	db = v2_db(path);
	v2_exec(db, edit_sql);
	cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

Test(bmap, an_upgrade_version_without_its_cursor_is_euclean_and_left_alone)
{
	struct bmap *b = NULL;

	upgrade_begun_then("DELETE FROM meta WHERE key = 'upgrade'");
	cr_assert(format_2_code_refuses(file_user_version(path)));
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_format(b), 2);
	cr_assert_eq(bmap_upgrade_run(b, 7, &quiet_ops), -EUCLEAN, "not restarted over old extents");
	cr_assert_neq(strstr(bmap_errmsg(b), "upgrade"), NULL, "%s", bmap_errmsg(b));
	bmap_close(b);
	cr_assert(format_2_code_refuses(file_user_version(path)));
}

/* A walk an earlier build of format 3 began with user_version 2 gets the
 * version that keeps older code out before its next step, and ends. */
Test(bmap, a_walk_begun_at_user_version_2_is_fenced_before_it_resumes)
{
	struct up_rec r = { .index = path };
	struct bmap_upgrade_ops ops = rec_ops(&r);
	struct bmap *b = NULL;

	upgrade_begun_then("PRAGMA user_version = 2");
	cr_assert_eq(file_user_version(path), 2);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_format(b), 2);
	cr_assert_eq(bmap_upgrade_run(b, 7, &ops), 0);     /* rec_sync checks the version */
	cr_assert_gt(r.syncs, 0);
	cr_assert_eq(blocks(b, 1), 25);
	cr_assert_eq(blocks(b, 2), 25);
	bmap_close(b);
	cr_assert_eq(file_user_version(path), 3);
	free(r.seen);
}

/* The format-2 stores a format-2 daemon made (tests/fixtures, step 2 of
 * issue 13): each index upgraded, every node with as many blocks as it
 * had data rows, each data row seen once with its checksum. */
static void fixture_case(const char *store, uint64_t step_rows)
{
	char idx[256];
	sqlite3 *db;
	sqlite3_stmt *s;
	struct v2_row *v = NULL;
	size_t n = 0, cap = 0;
	struct up_rec r = { .index = idx };
	struct bmap_upgrade_ops ops = rec_ops(&r);
	struct bmap *b = NULL;
	uint64_t nodes = 0, ids[256], nrows[256];

	snprintf(idx, sizeof(idx), "%s/fx/%s/index.sqlite", dir, store);
	db = v2_db(idx);
	cr_assert_eq(sqlite3_prepare_v2(db, "SELECT node, lblock, chunk, slot, cksum FROM bmap"
					" ORDER BY node, lblock", -1, &s, NULL), SQLITE_OK);
	while (sqlite3_step(s) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? 2 * cap : 1024;
			v = realloc(v, cap * sizeof(*v));
			cr_assert_not_null(v);
		}
		v[n++] = (struct v2_row){ (uint64_t)sqlite3_column_int64(s, 0),
			(uint64_t)sqlite3_column_int64(s, 1), (uint64_t)sqlite3_column_int64(s, 2),
			(uint32_t)sqlite3_column_int64(s, 3), (uint64_t)sqlite3_column_int64(s, 4) };
	}
	sqlite3_finalize(s);
	/* node.nrows of format 2 is what node.nblocks must become */
	cr_assert_eq(sqlite3_prepare_v2(db, "SELECT id, nrows FROM node", -1, &s, NULL), SQLITE_OK);
	while (sqlite3_step(s) == SQLITE_ROW) {
		cr_assert_lt(nodes, 256);
		ids[nodes] = (uint64_t)sqlite3_column_int64(s, 0);
		nrows[nodes++] = (uint64_t)sqlite3_column_int64(s, 1);
	}
	sqlite3_finalize(s);
	cr_assert_eq(sqlite3_close(db), SQLITE_OK);
	cr_assert_gt(n, 10);

	cr_assert_eq(bmap_open(idx, 0, &b), 0);
	cr_assert_eq(bmap_format(b), 2);
	cr_assert_eq(bmap_upgrade_run(b, step_rows, &ops), 0);
	assert_upgraded(b, v, n);
	assert_rows_seen(&r, v, n, true);
	for (uint64_t i = 0; i < nodes; i++)
		cr_assert_eq(blocks(b, ids[i]), nrows[i], "node %" PRIu64, ids[i]);
	cr_assert_gt(nodes, 1);
	fprintf(stderr, "fixture %s: %zu rows, %" PRIu64 " nodes, %" PRIu64 " steps\n", store, n,
		nodes, r.progress_calls);
	bmap_close(b);
	free(r.seen);
	free(v);
}

Test(bmap, the_format_2_fixture_stores_upgrade_with_every_node_keeping_its_blocks)
{
	const char *tarball = getenv("VSNAPFS_FIXTURE_F2");
	char cmd[512];

	if (!tarball)
		tarball = "tests/fixtures/store-f2.tar.xz";
	cr_assert(exists(tarball), "%s: run from the top of the tree or set VSNAPFS_FIXTURE_F2",
		  tarball);
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/fx && tar -xJf %s -C %s/fx", dir, tarball, dir);
	cr_assert_eq(system(cmd), 0);
	fixture_case("f2-4k", 100);
	/* step_rows 0: the environment says */
	setenv("VSNAPFS_UPGRADE_STEP_ROWS", "5", 1);
	fixture_case("f2-64k", 0);
	unsetenv("VSNAPFS_UPGRADE_STEP_ROWS");
}

/* ---- rate (prints, asserts nothing) ------------------------------------- */

static double seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* nputs puts of nblocks each in one transaction, commit included.  random:
 * 1-block puts scattered over 2^24 blocks (64 GiB of 4 KiB blocks; an odd
 * multiplier modulo 2^24 is a permutation); else runs in order, each
 * continuing the one before in its chunk (a sequential stream). */
static double put_rate(struct bmap *b, uint64_t node, uint64_t nputs, uint32_t nblocks, int random)
{
	uint32_t per_chunk = CHUNK_NSLOTS(4096) / nblocks;
	struct bmap_ext e;
	double t0;

	t0 = seconds();
	cr_assert_eq(bmap_begin(b), 0);
	for (uint64_t i = 0; i < nputs; i++) {
		if (random)
			e = ext((i * 2654435761u) & ((1u << 24) - 1), 1, 1 + i / 16384,
				(uint32_t)(i % 16384));
		else
			e = ext(i * nblocks, nblocks, 1 + i / per_chunk, (uint32_t)(i % per_chunk) * nblocks);
		cr_assert_eq(bmap_ext_put(b, node, &e), 0);
	}
	cr_assert_eq(bmap_commit(b), 0);
	return (double)nputs / (seconds() - t0);
}

Test(bmap, ext_put_rate_of_random_1_block_and_sequential_256_block_puts)
{
	struct bmap *b = make_index_with_nodes(3);
	uint64_t nputs = env_u64("VSNAPFS_BENCH_ROWS", 1000000), nseq;
	double rnd1, over, seq;

	if (nputs > (1u << 24))
		nputs = 1u << 24;
	nseq = nputs / 16 ? nputs / 16 : 1;
	rnd1 = put_rate(b, 1, nputs, 1, 1);
	over = put_rate(b, 1, nputs, 1, 1);
	seq = put_rate(b, 2, nseq, 256, 0);
	cr_assert_eq(blocks(b, 1), nputs);
	cr_assert_eq(blocks(b, 2), nseq * 256);
	fprintf(stderr, "bmap_ext_put, one transaction (commit included): %" PRIu64 " random 1-block"
		" puts %.0f puts/s, the same again (overwrites) %.0f puts/s; %" PRIu64
		" sequential 256-block puts %.0f puts/s (%.0f blocks/s)\n", nputs, rnd1, over, nseq,
		seq, seq * 256);
	bmap_close(b);
}

/* ---- snapshot guids --------------------------------------------------------- */

Test(bmap, snap_guid_is_set_found_by_guid_unique_and_deleted_with_its_snapshot)
{
	struct bmap *b = make_index(4096);
	struct bmap_snap s = make_snap(BMAP_ROOT_INO, "a@x", 1), t = make_snap(BMAP_ROOT_INO, "a@y", 2);
	struct bmap_snap out;
	uint8_t g[BMAP_GUID_BYTES], h[BMAP_GUID_BYTES], r[BMAP_GUID_BYTES];

	memset(g, 0x5a, sizeof(g));
	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_eq(bmap_snap_insert(b, &t), 0);
	cr_assert_eq(bmap_snap_guid_get(b, s.id, r), -ENOENT);
	cr_assert_eq(bmap_snap_guid_set(b, s.id, g), 0);
	cr_assert_eq(bmap_snap_guid_get(b, s.id, r), 0);
	cr_assert_eq(memcmp(g, r, sizeof(g)), 0);
	cr_assert_eq(bmap_snap_by_guid(b, g, &out), 0);
	cr_assert_eq(out.id, s.id);
	cr_assert_str_eq(out.name, "a@x");
	cr_assert_eq(bmap_snap_guid_set(b, t.id, g), -EEXIST, "a guid names one snapshot");
	cr_assert_eq(bmap_snap_guid_set(b, t.id, NULL), 0);
	cr_assert_eq(bmap_snap_guid_get(b, t.id, h), 0);
	cr_assert_neq(memcmp(g, h, sizeof(g)), 0, "a new guid is random");
	cr_assert_eq(bmap_snap_delete(b, s.id), 0);
	cr_assert_eq(bmap_snap_by_guid(b, g, &out), -ENOENT);
	cr_assert_eq(bmap_snap_guid_get(b, s.id, r), -ENOENT);
	bmap_close(b);
}

/* An index written by code that does not know guids: a writable open gives
 * every snapshot one and drops the rows of deleted snapshots; a read-only
 * open of an index without the table opens, and says -ENOSYS. */
Test(bmap, writable_open_gives_every_snapshot_a_guid_and_drops_stale_ones)
{
	struct bmap *b = make_index(4096);
	struct bmap_snap s = make_snap(BMAP_ROOT_INO, "a@x", 1), t = make_snap(BMAP_ROOT_INO, "a@y", 2);
	uint8_t g[BMAP_GUID_BYTES];
	sqlite3 *db;

	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_eq(bmap_snap_insert(b, &t), 0);
	cr_assert_eq(bmap_snap_guid_set(b, t.id, NULL), 0);
	bmap_close(b);
	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(db, "DELETE FROM snapshot WHERE name = CAST('a@y' AS BLOB)", NULL,
				  NULL, NULL), SQLITE_OK);
	cr_assert_eq(sqlite3_changes(db), 1);
	sqlite3_close(db);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_snap_guid_get(b, s.id, g), 0, "the old snapshot got a guid");
	cr_assert_eq(bmap_snap_guid_get(b, t.id, g), -ENOENT, "the deleted one's row is gone");
	bmap_close(b);

	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(db, "DROP TABLE snapguid", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	cr_assert_eq(bmap_open(path, 1, &b), 0);
	cr_assert_eq(bmap_snap_guid_get(b, s.id, g), -ENOSYS);
	bmap_close(b);
}

/* ---- scrub results and counts (vsnapctl status) ------------------------- */

Test(bmap, scrub_results_keep_the_newest_and_survive_a_reopen)
{
	struct bmap *b = make_index(4096), *ro = NULL;
	struct bmap_scrub r;

	cr_assert_eq(bmap_scrub_last(b, &r), -ENOENT, "no result before the first scrub");
	for (int i = 1; i <= 105; i++) {
		struct bmap_scrub w = { .at_ns = i * 1000, .duration_ns = i, .blocks = 10 * i,
					.damaged = i == 105 };

		cr_assert_eq(bmap_scrub_put(b, &w), 0);
	}
	bmap_close(b);
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_scrub_last(ro, &r), 0);
	cr_assert_eq(r.at_ns, 105000);
	cr_assert_eq(r.duration_ns, 105);
	cr_assert_eq(r.blocks, 1050);
	cr_assert_eq(r.damaged, 1);
	cr_assert_eq(bmap_scrub_put(ro, &r), -EROFS, "a read-only handle writes nothing");
	bmap_close(ro);
}

Test(bmap, scrub_put_inside_a_rolled_back_transaction_leaves_nothing)
{
	struct bmap *b = make_index(4096);
	struct bmap_scrub r = { .at_ns = 1, .blocks = 2 };

	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_scrub_put(b, &r), 0);
	bmap_rollback(b);
	cr_assert_eq(bmap_scrub_last(b, &r), -ENOENT);
	bmap_close(b);
}

Test(bmap, counts_leave_out_the_root_and_unlinked_inodes)
{
	struct bmap *b = make_index(4096);
	struct bmap_inode d = { .parent = BMAP_ROOT_INO, .kind = BMAP_DIR }, v = { .kind = BMAP_VOL };
	struct bmap_snap s = { .dir = BMAP_ROOT_INO };
	struct bmap_counts c;

	strcpy(d.name, "d");
	cr_assert_eq(bmap_inode_insert(b, &d), 0);
	v.parent = d.ino;
	strcpy(v.name, "a.img");
	cr_assert_eq(bmap_inode_insert(b, &v), 0);
	strcpy(v.name, "b.img");
	cr_assert_eq(bmap_inode_insert(b, &v), 0);
	cr_assert_eq(bmap_inode_move(b, v.ino, 0, ""), 0);      /* unlinked, still open */
	strcpy(s.name, "s1");
	cr_assert_eq(bmap_snap_insert(b, &s), 0);
	cr_assert_eq(bmap_counts(b, &c), 0);
	cr_assert_eq(c.volumes, 1);
	cr_assert_eq(c.dirs, 1);
	cr_assert_eq(c.snapshots, 1);
	bmap_close(b);
}
