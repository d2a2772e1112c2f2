/*
 * Unit tests of the block map (src/bmap/bmap.c).
 *
 * Each test gets a fresh directory under /tmp (mkdtemp) holding one index,
 * removed afterwards.  Foreign or damaged files are made by editing bytes of
 * a real index (the SQLite header keeps user_version at offset 60 and
 * application_id at offset 68, big-endian), so the tests need no sqlite3_*
 * call of their own.
 *
 * The insert-rate test prints puts per second and asserts nothing; set
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

static char dir[64];
static char path[128];

static void setup(void)
{
	strcpy(dir, "/tmp/vsnapfs-bmap-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/index.sqlite", dir);
}

static void teardown(void)
{
	char name[512];
	struct dirent *de;
	DIR *d;

	d = opendir(dir);
	if (!d)
		return;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(name, sizeof(name), "%s/%s", dir, de->d_name);
		unlink(name);
	}
	closedir(d);
	rmdir(dir);
}

TestSuite(bmap, .init = setup, .fini = teardown);

/* ---- helpers ------------------------------------------------------------ */

static struct bmap *make_index(uint32_t block_size)
{
	struct bmap *b = NULL;

	cr_assert_eq(bmap_create(path, block_size, 1000, 1000), 0);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_not_null(b);
	return b;
}

/* An index whose nodes 1..n exist, for tests of rows: a row's node is
 * where its count (node.nrows) is kept. */
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

static struct chunk_loc loc(uint64_t chunk, uint32_t slot, uint64_t cksum)
{
	struct chunk_loc l = { .chunk_id = chunk, .slot = slot, .cksum = cksum };

	return l;
}

/* Collectors for the walks. */
struct seen {
	uint64_t a[64], b[64];
	struct chunk_loc l[64];
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

static int collect_row(void *ctx, uint64_t lblock, const struct chunk_loc *l)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 64);
	s->a[s->n] = lblock;
	s->l[s->n] = *l;
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

static int collect_chunk_row(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *l)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 64);
	s->a[s->n] = node;
	s->b[s->n] = lblock;
	s->l[s->n] = *l;
	s->n++;
	return 0;
}

/* A node's data rows, as kept in node.nrows, which must be what a scan
 * of its rows counts. */
static uint64_t row_count(struct bmap *b, uint64_t node)
{
	uint64_t n = 99, scanned = 98;

	cr_assert_eq(bmap_row_count(b, node, &n), 0);
	cr_assert_eq(bmap_row_count_scan(b, node, &scanned), 0);
	cr_assert_eq(n, scanned, "node %" PRIu64 ": node.nrows says %" PRIu64 ", its rows are %"
		     PRIu64, node, n, scanned);
	return n;
}

/* ---- create and open ---------------------------------------------------- */

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

/* Turn the index at path back into format 1: its node table as an older
 * vsnapfs created it, comments included (ALTER TABLE edits that text). */
static void downgrade_to_format_1(void)
{
	sqlite3 *db;

	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(db, "BEGIN;"
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
		"COMMIT;", NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
	cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

Test(bmap, open_upgrades_a_format_1_index_and_counts_its_rows_once)
{
	struct bmap *b = make_index_with_nodes(3), *ro = NULL;
	struct chunk_loc l = loc(4, 0, 0), tomb = loc(0, 0, 0);
	uint64_t v;

	for (uint64_t i = 0; i < 50; i++)
		cr_assert_eq(bmap_row_put(b, 1 + i % 2, i, &l), 0);
	cr_assert_eq(bmap_row_put(b, 1, 100, &tomb), 0);
	bmap_close(b);
	downgrade_to_format_1();

	/* read-only: the file stays format 1, counts come from a scan */
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(row_count(ro, 1), 25);
	cr_assert_eq(bmap_meta_get(ro, "format_version", &v), 0);
	cr_assert_eq(v, 1);
	bmap_close(ro);

	/* writable: upgraded in place, counted once, kept from then on */
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_meta_get(b, "format_version", &v), 0);
	cr_assert_eq(v, BMAP_FORMAT_VERSION);
	cr_assert_eq(row_count(b, 1), 25, "the tombstone is not counted");
	cr_assert_eq(row_count(b, 2), 25);
	cr_assert_eq(row_count(b, 3), 0);
	cr_assert_eq(bmap_row_put(b, 3, 0, &l), 0);
	cr_assert_eq(bmap_row_put(b, 1, 100, &l), 0);
	cr_assert_eq(row_count(b, 3), 1);
	cr_assert_eq(row_count(b, 1), 26);
	bmap_close(b);
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_meta_get(ro, "format_version", &v), 0);
	cr_assert_eq(v, BMAP_FORMAT_VERSION, "a reader sees the upgrade");
	bmap_close(ro);
}

/* Every way of changing rows keeps node.nrows equal to a count of the
 * rows (row_count asserts it), in and out of transactions, and a rollback
 * takes the counts back with the rows. */
Test(bmap, node_row_counts_follow_every_change_and_every_rollback)
{
	struct bmap *b = make_index_with_nodes(2);
	struct chunk_loc l = loc(4, 0, 0), l2 = loc(5, 1, 1), tomb = loc(0, 0, 0);

	/* fresh rows, then overwrites, then fresh again: both first tries */
	cr_assert_eq(bmap_begin(b), 0);
	for (uint64_t i = 0; i < 20; i++)
		cr_assert_eq(bmap_row_put(b, 1, i, &l), 0);
	for (uint64_t i = 0; i < 30; i++)
		cr_assert_eq(bmap_row_put(b, 1, i, &l2), 0);
	cr_assert_eq(bmap_row_put(b, 2, 7, &l), 0);     /* another node midway */
	cr_assert_eq(bmap_row_put(b, 1, 40, &tomb), 0);
	cr_assert_eq(bmap_row_put(b, 1, 3, &tomb), 0);  /* data -> tombstone */
	cr_assert_eq(bmap_row_put(b, 1, 40, &l), 0);    /* tombstone -> data */
	cr_assert_eq(bmap_row_del(b, 1, 4), 0);
	cr_assert_eq(bmap_row_del(b, 1, 3), 0);         /* a tombstone: no count */
	cr_assert_eq(bmap_commit(b), 0);
	cr_assert_eq(row_count(b, 1), 30 - 2 + 1);
	cr_assert_eq(row_count(b, 2), 1);

	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_row_del_from(b, 1, 10), 0);
	cr_assert_eq(bmap_row_put(b, 2, 8, &l), 0);
	cr_assert_eq(row_count(b, 1), 8, "0..9 without 3 and 4");
	bmap_rollback(b);
	cr_assert_eq(row_count(b, 1), 29, "a rollback takes the counts back");
	cr_assert_eq(row_count(b, 2), 1);

	/* without a transaction each call commits its count with its rows */
	cr_assert_eq(bmap_row_put(b, 2, 9, &l), 0);
	cr_assert_eq(bmap_row_del_from(b, 1, 10), 0);
	bmap_close(b);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(row_count(b, 1), 8);
	cr_assert_eq(row_count(b, 2), 2);
	cr_assert_eq(bmap_node_delete(b, 2), 0);
	cr_assert_eq(row_count(b, 2), 0, "a deleted node has no rows");
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
	struct chunk_loc l = loc(3, 4, 5);

	cr_assert_eq(bmap_row_put(b, 1, 1, &l), 0);
	cr_assert_eq(bmap_open(path, 1, &ro), 0);
	cr_assert_eq(bmap_inode_get(ro, BMAP_ROOT_INO, &in), 0);
	cr_assert_eq(row_count(ro, 1), 1, "a reader sees what the writer committed");
	cr_assert_eq(bmap_row_put(ro, 1, 2, &l), -EROFS);
	cr_assert_eq(bmap_begin(ro), -EROFS);
	cr_assert_neq(strlen(bmap_errmsg(ro)), 0);
	bmap_close(ro);
	bmap_close(b);
}

Test(bmap, a_reader_of_a_checked_handle_reads_what_it_commits_and_refuses_writes)
{
	struct bmap *b = make_index_with_nodes(2), *r = NULL;
	struct chunk_loc l = loc(3, 4, 5);

	cr_assert_eq(bmap_open_reader(b, &r), 0);
	cr_assert_eq(bmap_block_size(r), bmap_block_size(b));
	cr_assert_eq(bmap_row_put(b, 1, 1, &l), 0);
	cr_assert_eq(row_count(r, 1), 1, "a reader sees what the writer committed");
	cr_assert_eq(bmap_row_put(r, 1, 2, &l), -EROFS);
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

Test(bmap, node_delete_removes_the_node_and_all_its_rows_only)
{
	struct bmap *b = make_index(4096);
	struct bmap_node n1 = { 0 }, n2 = { 0 }, n3 = { 0 }, out;
	struct chunk_loc l;
	struct seen s = { .n = 0 };
	uint64_t i;

	cr_assert_eq(bmap_node_create(b, &n1), 0);
	cr_assert_eq(bmap_node_create(b, &n2), 0);
	for (i = 0; i < 10; i++) {
		l = loc(1, (uint32_t)i, i);
		cr_assert_eq(bmap_row_put(b, n1.id, i, &l), 0);
		l = loc(2, (uint32_t)i, i);
		cr_assert_eq(bmap_row_put(b, n2.id, i, &l), 0);
	}
	cr_assert_eq(bmap_node_delete(b, n1.id), 0);
	cr_assert_eq(bmap_node_get(b, n1.id, &out), -ENOENT);
	cr_assert_eq(bmap_row_foreach(b, n1.id, UINT64_MAX, collect_row, &s), 0);
	cr_assert_eq(s.n, 0);
	cr_assert_eq(row_count(b, n1.id), 0);
	cr_assert_eq(row_count(b, n2.id), 10, "other nodes keep their rows");
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
	struct chunk_loc l = loc(1, 0, 0);

	cr_assert_eq(bmap_node_create(b, &n), 0);
	cr_assert_eq(bmap_row_put(b, n.id, 0, &l), 0);
	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_node_delete(b, n.id), 0);
	cr_assert_eq(bmap_node_delete(b, 4242), -ENOENT, "a failed call keeps the transaction");
	bmap_rollback(b);
	cr_assert_eq(bmap_node_get(b, n.id, &out), 0);
	cr_assert_eq(row_count(b, n.id), 1);
	bmap_close(b);
}

/* ---- rows --------------------------------------------------------------- */

Test(bmap, row_put_replace_del_foreach_count_with_tombstones)
{
	struct bmap *b = make_index_with_nodes(2);
	struct chunk_loc l;
	struct seen s = { .n = 0 };

	l = loc(5, 1, 11);
	cr_assert_eq(bmap_row_put(b, 1, 10, &l), 0);
	l = loc(5, 2, 22);
	cr_assert_eq(bmap_row_put(b, 1, 3, &l), 0);
	l = loc(6, 0, 33);
	cr_assert_eq(bmap_row_put(b, 1, 7, &l), 0);
	l = loc(0, 99, 99);             /* tombstone: slot and cksum are dropped */
	cr_assert_eq(bmap_row_put(b, 1, 5, &l), 0);
	l = loc(9, 9, 9);
	cr_assert_eq(bmap_row_put(b, 2, 4, &l), 0);
	cr_assert_eq(row_count(b, 1), 3, "tombstones are not counted");

	cr_assert_eq(bmap_row_foreach(b, 1, UINT64_MAX, collect_row, &s), 0);
	cr_assert_eq(s.n, 4);
	cr_assert_eq(s.a[0], 3);
	cr_assert_eq(s.a[1], 5);
	cr_assert_eq(s.a[2], 7);
	cr_assert_eq(s.a[3], 10);
	cr_assert_eq(s.l[0].chunk_id, 5);
	cr_assert_eq(s.l[0].slot, 2);
	cr_assert_eq(s.l[0].cksum, 22);
	cr_assert_eq(s.l[1].chunk_id, 0);
	cr_assert_eq(s.l[1].slot, 0);
	cr_assert_eq(s.l[1].cksum, 0);

	/* below is exclusive. */
	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_row_foreach(b, 1, 7, collect_row, &s), 0);
	cr_assert_eq(s.n, 2);
	cr_assert_eq(s.a[1], 5);

	/* Replace: a tombstone turns back into data and back. */
	l = loc(8, 4, 44);
	cr_assert_eq(bmap_row_put(b, 1, 5, &l), 0);
	cr_assert_eq(row_count(b, 1), 4);
	l = loc(0, 0, 0);
	cr_assert_eq(bmap_row_put(b, 1, 10, &l), 0);
	cr_assert_eq(row_count(b, 1), 3);

	cr_assert_eq(bmap_row_del(b, 1, 3), 0);
	cr_assert_eq(bmap_row_del(b, 1, 3), 0, "deleting a missing row is fine");
	cr_assert_eq(row_count(b, 1), 2);

	cr_assert_eq(bmap_row_del_from(b, 1, 7), 0);
	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_row_foreach(b, 1, UINT64_MAX, collect_row, &s), 0);
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.a[0], 5);
	cr_assert_eq(s.l[0].chunk_id, 8);
	cr_assert_eq(row_count(b, 2), 1, "other nodes untouched");
	cr_assert_eq(bmap_row_del_from(b, 1, UINT64_MAX), 0);
	cr_assert_eq(row_count(b, 1), 1);
	cr_assert_eq(bmap_row_del_from(b, 1, 0), 0);
	cr_assert_eq(row_count(b, 1), 0);
	bmap_close(b);
}

Test(bmap, row_foreach_stops_when_fn_returns_nonzero)
{
	struct bmap *b = make_index_with_nodes(2);
	struct chunk_loc l = loc(1, 0, 0);
	struct seen s = { .stop_at = 3 };
	uint64_t i;

	for (i = 0; i < 10; i++)
		cr_assert_eq(bmap_row_put(b, 1, i, &l), 0);
	cr_assert_eq(bmap_row_foreach(b, 1, UINT64_MAX, collect_row, &s), 7);
	cr_assert_eq(s.n, 3);
	/* The handle is usable after an early stop. */
	cr_assert_eq(row_count(b, 1), 10);
	bmap_close(b);
}

Test(bmap, row_put_refuses_values_sql_cannot_order)
{
	struct bmap *b = make_index_with_nodes(2);
	struct chunk_loc l = loc(1, 0, 0), big = loc(1ull << 63, 0, 0);

	cr_assert_eq(bmap_row_put(b, 1, (uint64_t)INT64_MAX, &l), -EINVAL);
	cr_assert_eq(bmap_row_put(b, 1, UINT64_MAX, &l), -EINVAL);
	cr_assert_eq(bmap_row_put(b, 1ull << 63, 0, &l), -EINVAL);
	cr_assert_eq(bmap_row_put(b, 1, 0, &big), -EINVAL);
	cr_assert_eq(bmap_row_put(b, 1, (uint64_t)INT64_MAX - 1, &l), 0);
	cr_assert_eq(row_count(b, 1), 1);
	bmap_close(b);
}

Test(bmap, cksum_with_top_bit_set_roundtrips_exactly)
{
	struct bmap *b = make_index(4096);
	static const uint64_t ck[] = { 0, 1, INT64_MAX, 1ull << 63, (1ull << 63) + 1,
				       0xdeadbeefcafebabeull, UINT64_MAX };
	struct chunk_loc l;
	struct seen s = { .n = 0 };
	size_t i, n = sizeof(ck) / sizeof(ck[0]);

	for (i = 0; i < n; i++) {
		l = loc(1, UINT32_MAX - (uint32_t)i, ck[i]);
		cr_assert_eq(bmap_row_put(b, 1, i, &l), 0);
	}
	bmap_close(b);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(bmap_row_foreach(b, 1, UINT64_MAX, collect_row, &s), 0);
	cr_assert_eq((size_t)s.n, n);
	for (i = 0; i < n; i++) {
		cr_assert_eq(s.l[i].cksum, ck[i], "row %zu: %#" PRIx64 " != %#" PRIx64,
			     i, s.l[i].cksum, ck[i]);
		cr_assert_eq(s.l[i].slot, UINT32_MAX - (uint32_t)i);
	}
	bmap_close(b);
}

/* ---- transactions ------------------------------------------------------- */

Test(bmap, transaction_rollback_discards_rows)
{
	struct bmap *b = make_index_with_nodes(2);
	struct chunk_loc l = loc(1, 0, 0);
	struct bmap_inode v = make_inode(BMAP_ROOT_INO, "v", BMAP_VOL), out;
	uint64_t i, val;

	cr_assert_eq(bmap_row_put(b, 1, 0, &l), 0);
	cr_assert_eq(bmap_begin(b), 0);
	for (i = 1; i < 1000; i++)
		cr_assert_eq(bmap_row_put(b, 1, i, &l), 0);
	cr_assert_eq(bmap_row_del(b, 1, 0), 0);
	cr_assert_eq(bmap_inode_insert(b, &v), 0);
	cr_assert_eq(bmap_meta_set(b, "next_chunk_id", 77), 0);
	cr_assert_eq(row_count(b, 1), 999, "a transaction sees its own rows");
	bmap_rollback(b);

	cr_assert_eq(row_count(b, 1), 1);
	cr_assert_eq(bmap_inode_lookup(b, BMAP_ROOT_INO, "v", &out), -ENOENT);
	cr_assert_eq(bmap_meta_get(b, "next_chunk_id", &val), 0);
	cr_assert_eq(val, 1);
	bmap_rollback(b);               /* without a transaction: a no-op */
	bmap_close(b);
}

Test(bmap, transaction_commit_keeps_rows_across_reopen)
{
	struct bmap *b = make_index_with_nodes(2);
	struct chunk_loc l = loc(1, 0, 0);
	uint64_t i;

	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_begin(b), -EINVAL, "not nestable");
	for (i = 0; i < 1000; i++)
		cr_assert_eq(bmap_row_put(b, 1, i, &l), 0);
	cr_assert_eq(bmap_commit(b), 0);
	bmap_close(b);

	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(row_count(b, 1), 1000);
	cr_assert_eq(bmap_commit(b), -EIO, "commit without a transaction fails");
	cr_assert_eq(bmap_begin(b), 0, "and leaves the handle usable");
	bmap_rollback(b);
	bmap_close(b);
}

Test(bmap, close_with_an_open_transaction_discards_it)
{
	struct bmap *b = make_index(4096);
	struct chunk_loc l = loc(1, 0, 0);

	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_row_put(b, 1, 0, &l), 0);
	bmap_close(b);
	cr_assert_eq(bmap_open(path, 0, &b), 0);
	cr_assert_eq(row_count(b, 1), 0);
	bmap_close(b);
}

/* ---- chunks ------------------------------------------------------------- */

Test(bmap, chunk_refs_counts_rows_per_chunk_in_increasing_order)
{
	struct bmap *b = make_index(4096);
	struct chunk_loc l;
	struct seen s = { .n = 0 };
	uint64_t i;

	/* chunk 9: 3 rows in node 1; chunk 3: 2 rows across nodes 1 and 2;
	 * chunk 5: 1 row; plus tombstones, which reference nothing. */
	for (i = 0; i < 3; i++) {
		l = loc(9, (uint32_t)i, i);
		cr_assert_eq(bmap_row_put(b, 1, i, &l), 0);
	}
	l = loc(3, 0, 0);
	cr_assert_eq(bmap_row_put(b, 1, 3, &l), 0);
	l = loc(3, 1, 0);
	cr_assert_eq(bmap_row_put(b, 2, 0, &l), 0);
	l = loc(5, 0, 0);
	cr_assert_eq(bmap_row_put(b, 2, 1, &l), 0);
	l = loc(0, 0, 0);
	cr_assert_eq(bmap_row_put(b, 2, 2, &l), 0);
	cr_assert_eq(bmap_row_put(b, 3, 0, &l), 0);

	cr_assert_eq(bmap_chunk_refs(b, collect_ref, &s), 0);
	cr_assert_eq(s.n, 3);
	cr_assert_eq(s.a[0], 3);
	cr_assert_eq(s.b[0], 2);
	cr_assert_eq(s.a[1], 5);
	cr_assert_eq(s.b[1], 1);
	cr_assert_eq(s.a[2], 9);
	cr_assert_eq(s.b[2], 3);

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
	struct chunk_loc l;
	uint64_t i;

	/* More distinct chunks than the table's first size (1024), in an
	 * order that is not sorted, to exercise growth and the final sort. */
	cr_assert_eq(bmap_begin(b), 0);
	for (i = 0; i < 5000; i++) {
		l = loc(1 + (i * 7919) % 3001, (uint32_t)i, 0);
		cr_assert_eq(bmap_row_put(b, 1, i, &l), 0);
	}
	cr_assert_eq(bmap_commit(b), 0);
	cr_assert_eq(bmap_chunk_refs(b, check_ref_order, &acc), 0);
	cr_assert_eq(acc.n, 3001);
	cr_assert_eq(acc.total, 5000);
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

static void put_row(struct bmap *b, uint64_t node, uint64_t lblock, uint64_t chunk, uint32_t slot)
{
	struct chunk_loc l = loc(chunk, slot, chunk * 1000 + slot);

	cr_assert_eq(bmap_row_put(b, node, lblock, &l), 0);
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

/* Every row of node, data and tombstones. */
static void node_rows(struct bmap *b, uint64_t node, struct seen *s)
{
	memset(s, 0, sizeof(*s));
	cr_assert_eq(bmap_row_range(b, node, 0, UINT64_MAX, collect_row, s), 0);
}

static void assert_row(const struct seen *s, int i, uint64_t lblock, uint64_t chunk, uint32_t slot)
{
	cr_assert_eq(s->a[i], lblock, "row %d: lblock %" PRIu64 ", want %" PRIu64, i, s->a[i], lblock);
	cr_assert_eq(s->l[i].chunk_id, chunk, "lblock %" PRIu64 ": chunk %" PRIu64 ", want %" PRIu64,
		     lblock, s->l[i].chunk_id, chunk);
	cr_assert_eq(s->l[i].slot, slot, "lblock %" PRIu64 ": slot", lblock);
	cr_assert_eq(s->l[i].cksum, chunk ? chunk * 1000 + slot : 0, "lblock %" PRIu64 ": cksum", lblock);
}

/* The example of bmap.h: P holds {0, 1, 2, 5, 9} (chunk 1, slot = lblock);
 * its only child C (inherit 6) holds data at 1 (chunk 2) and a tombstone
 * at 2.  P's parent G holds block 0 (chunk 3).  Other nodes: untouched. */
struct merge_case {
	struct bmap_node g, p, c, other;
};

static struct merge_case merge_setup(struct bmap *b, uint64_t p_inherit)
{
	struct merge_case m;
	static const uint64_t prows[] = { 0, 1, 2, 5, 9 };
	size_t i;

	m.g = new_node(b, 0, 0);
	m.p = new_node(b, m.g.id, p_inherit);
	m.c = new_node(b, m.p.id, 6);
	m.other = new_node(b, m.g.id, 100);
	for (i = 0; i < sizeof(prows) / sizeof(prows[0]); i++)
		put_row(b, m.p.id, prows[i], 1, (uint32_t)prows[i]);
	put_row(b, m.c.id, 1, 2, 1);
	put_row(b, m.c.id, 2, 0, 0);
	put_row(b, m.g.id, 0, 3, 0);
	put_row(b, m.other.id, 1, 4, 1);
	return m;
}

/* The state node_merge leaves merge_setup(b, 100) in. */
static void assert_merged(struct bmap *b, const struct merge_case *m)
{
	struct bmap_node out;
	struct seen s;
	uint64_t child;

	cr_assert_eq(bmap_node_get(b, m->p.id, &out), -ENOENT, "the parent is gone");
	node_rows(b, m->p.id, &s);
	cr_assert_eq(s.n, 0, "with all its rows");

	node_rows(b, m->c.id, &s);
	cr_assert_eq(s.n, 4);
	assert_row(&s, 0, 0, 1, 0);     /* P's: the child had none */
	assert_row(&s, 1, 1, 2, 1);     /* the child's own data wins */
	assert_row(&s, 2, 2, 0, 0);     /* the child's tombstone wins */
	assert_row(&s, 3, 5, 1, 5);     /* P's, below the inherit limit */
	/* 9 >= C.inherit: the child never saw it; dropped */
	cr_assert_eq(row_count(b, m->c.id), 3, "node.nrows follows: 0, 1 and 5 hold data");
	cr_assert_eq(row_count(b, m->p.id), 0);

	cr_assert_eq(bmap_node_get(b, m->c.id, &out), 0);
	cr_assert_eq(out.parent, m->g.id, "the child takes the parent's parent");
	cr_assert_eq(out.inherit, 6, "min(6, 100)");
	cr_assert_eq(bmap_node_only_child(b, m->g.id, &child), 0);
	cr_assert_eq(child, m->c.id);

	/* P's dropped rows (1, 2, 9) no longer reference chunk 1. */
	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_chunk_refs(b, collect_ref, &s), 0);
	cr_assert_eq(s.n, 4);
	cr_assert_eq(s.a[0], 1);
	cr_assert_eq(s.b[0], 2);
	cr_assert_eq(row_count(b, m->g.id), 1, "the grandparent is untouched");
	cr_assert_eq(row_count(b, m->other.id), 1, "a sibling is untouched");
	cr_assert_eq(bmap_node_get(b, m->other.id, &out), 0);
	cr_assert_eq(out.parent, m->g.id);
}

Test(bmap, node_merge_moves_the_parent_rows_the_child_sees_and_drops_the_rest)
{
	struct bmap *b = make_index(4096);
	struct merge_case m = merge_setup(b, 100);

	cr_assert_eq(bmap_begin(b), 0);
	cr_assert_eq(bmap_node_merge(b, m.p.id, m.c.id), 0);
	cr_assert_eq(bmap_commit(b), 0);
	assert_merged(b, &m);
	bmap_close(b);
}

/* In steps of 2 rows: P's rows {0, 1} (0 moves, 1 is the child's), then
 * {2, 5} (2 is the child's tombstone, 5 moves), then {9}, past the inherit
 * limit, which is the last step as it finds fewer than 2.  Between
 * steps P and C are both still there, P still C's parent, and what C sees
 * through itself and P is what it saw before. */
Test(bmap, node_merge_in_steps_ends_as_one_merge_and_keeps_the_view_between_steps)
{
	struct bmap *b = make_index(4096);
	struct merge_case m = merge_setup(b, 100);
	struct bmap_node out;
	struct seen s;
	bool done;
	int steps = 0;

	do {
		cr_assert_eq(bmap_begin(b), 0);
		cr_assert_eq(bmap_node_merge_some(b, m.p.id, m.c.id, 2, &done), 0);
		cr_assert_eq(bmap_commit(b), 0);
		steps++;
		if (done)
			break;
		cr_assert_eq(bmap_node_get(b, m.c.id, &out), 0);
		cr_assert_eq(out.parent, m.p.id, "step %d: the child keeps its parent until the end", steps);
		cr_assert_eq(out.inherit, 6);
		if (steps == 1) {
			node_rows(b, m.p.id, &s);
			cr_assert_eq(s.n, 3, "after one step P keeps its rows 2, 5 and 9");
			assert_row(&s, 0, 2, 1, 2);
			assert_row(&s, 1, 5, 1, 5);
			assert_row(&s, 2, 9, 1, 9);
			node_rows(b, m.c.id, &s);
			cr_assert_eq(s.n, 3);
			assert_row(&s, 0, 0, 1, 0);     /* moved */
			assert_row(&s, 1, 1, 2, 1);
			assert_row(&s, 2, 2, 0, 0);
			cr_assert_eq(row_count(b, m.p.id), 3, "node.nrows between steps");
			cr_assert_eq(row_count(b, m.c.id), 2, "0 and 1; 2 is a tombstone");
		}
	} while (steps < 10);
	cr_assert(done);
	cr_assert_eq(steps, 3, "5 rows in steps of 2 (%d)", steps);
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
	node_rows(b, m.c.id, &s);
	cr_assert_eq(s.n, 4);
	assert_row(&s, 3, 5, 1, 5);

	/* A node without a parent: the child ends up without one. */
	cr_assert_eq(bmap_node_merge(b, root.id, kid.id), 0);
	cr_assert_eq(bmap_node_get(b, kid.id, &out), 0);
	cr_assert_eq(out.parent, 0);
	cr_assert_eq(out.inherit, 50);
	bmap_close(b);
}

/* Every node and every row of the index, to compare before and after. */
struct index_state {
	struct bmap_node n[8];
	int nn;
	struct seen rows[8];
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
		node_rows(b, st->n[i].id, &st->rows[i]);
}

static void assert_same_state(const struct index_state *x, const struct index_state *y)
{
	const struct seen *rx, *ry;
	int i, j;

	cr_assert_eq(x->nn, y->nn);
	for (i = 0; i < x->nn; i++) {
		cr_assert_eq(memcmp(&x->n[i], &y->n[i], sizeof(x->n[i])), 0, "node %" PRIu64, x->n[i].id);
		rx = &x->rows[i];
		ry = &y->rows[i];
		cr_assert_eq(rx->n, ry->n, "rows of node %" PRIu64, x->n[i].id);
		/* field by field: struct chunk_loc has padding */
		for (j = 0; j < rx->n; j++) {
			cr_assert_eq(rx->a[j], ry->a[j]);
			cr_assert_eq(rx->l[j].chunk_id, ry->l[j].chunk_id);
			cr_assert_eq(rx->l[j].slot, ry->l[j].slot);
			cr_assert_eq(rx->l[j].cksum, ry->l[j].cksum);
		}
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

/* ---- row ranges and scans ----------------------------------------------- */

Test(bmap, row_range_returns_rows_from_inclusive_to_below_exclusive_with_tombstones)
{
	struct bmap *b = make_index(4096);
	struct seen s;

	put_row(b, 1, 0, 1, 0);
	put_row(b, 1, 3, 0, 0);         /* tombstone */
	put_row(b, 1, 5, 1, 5);
	put_row(b, 1, 7, 1, 7);
	put_row(b, 1, (uint64_t)INT64_MAX - 1, 1, 9);
	put_row(b, 2, 4, 2, 4);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_row_range(b, 1, 3, 7, collect_row, &s), 0);
	cr_assert_eq(s.n, 2);
	assert_row(&s, 0, 3, 0, 0);
	assert_row(&s, 1, 5, 1, 5);

	node_rows(b, 1, &s);
	cr_assert_eq(s.n, 5, "[0, UINT64_MAX) is every row");
	assert_row(&s, 4, (uint64_t)INT64_MAX - 1, 1, 9);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_row_range(b, 1, 7, 8, collect_row, &s), 0);
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.a[0], 7);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_row_range(b, 1, 8, UINT64_MAX, collect_row, &s), 0);
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.a[0], (uint64_t)INT64_MAX - 1);

	memset(&s, 0, sizeof(s));
	cr_assert_eq(bmap_row_range(b, 1, 5, 5, collect_row, &s), 0);
	cr_assert_eq(s.n, 0, "an empty range");
	cr_assert_eq(bmap_row_range(b, 1, 7, 3, collect_row, &s), 0);
	cr_assert_eq(s.n, 0, "from past below");
	cr_assert_eq(bmap_row_range(b, 1, UINT64_MAX, UINT64_MAX, collect_row, &s), 0);
	cr_assert_eq(s.n, 0);
	cr_assert_eq(bmap_row_range(b, 3, 0, UINT64_MAX, collect_row, &s), 0);
	cr_assert_eq(s.n, 0, "a node without rows");

	node_rows(b, 2, &s);
	cr_assert_eq(s.n, 1, "one node's rows only");
	assert_row(&s, 0, 4, 2, 4);

	memset(&s, 0, sizeof(s));
	s.stop_at = 2;
	cr_assert_eq(bmap_row_range(b, 1, 0, UINT64_MAX, collect_row, &s), 7);
	cr_assert_eq(s.n, 2);
	bmap_close(b);
}

static int stop_at_first(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *l)
{
	(*(int *)ctx)++;
	return 7;
}

Test(bmap, rows_all_returns_every_data_row_of_every_node_and_no_tombstone)
{
	struct bmap *b = make_index(4096);
	struct seen s = { .n = 0 };
	int i, found[3] = { 0 }, calls = 0;

	put_row(b, 1, 0, 1, 0);
	put_row(b, 1, 1, 0, 0);         /* tombstone */
	put_row(b, 2, 5, 2, 3);
	put_row(b, 3, 9, 0, 0);         /* a node with only a tombstone */
	put_row(b, 4, 2, 1, 1);

	cr_assert_eq(bmap_rows_all(b, collect_chunk_row, &s), 0);
	cr_assert_eq(s.n, 3);
	for (i = 0; i < s.n; i++) {     /* in no promised order */
		cr_assert_neq(s.l[i].chunk_id, 0, "a tombstone was listed");
		cr_assert_eq(s.l[i].cksum, s.l[i].chunk_id * 1000 + s.l[i].slot);
		if (s.a[i] == 1 && s.b[i] == 0 && s.l[i].chunk_id == 1 && s.l[i].slot == 0)
			found[0]++;
		else if (s.a[i] == 2 && s.b[i] == 5 && s.l[i].chunk_id == 2 && s.l[i].slot == 3)
			found[1]++;
		else if (s.a[i] == 4 && s.b[i] == 2 && s.l[i].chunk_id == 1 && s.l[i].slot == 1)
			found[2]++;
		else
			cr_assert_fail("unexpected row node %" PRIu64 " lblock %" PRIu64, s.a[i], s.b[i]);
	}
	cr_assert_eq(found[0] + found[1] + found[2], 3);
	cr_assert(found[0] == 1 && found[1] == 1 && found[2] == 1);

	cr_assert_eq(bmap_rows_all(b, stop_at_first, &calls), 7);
	cr_assert_eq(calls, 1);
	bmap_close(b);
}

/* ---- rate (prints, asserts nothing) ------------------------------------- */

static double seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* nrows puts in one transaction, commit included; lblocks in order or
 * scattered (an odd multiplier modulo 2^20 is a permutation). */
static double put_rate(struct bmap *b, uint64_t node, uint64_t nrows, int scattered)
{
	struct chunk_loc l;
	uint64_t i, lb;
	double t0;

	t0 = seconds();
	cr_assert_eq(bmap_begin(b), 0);
	for (i = 0; i < nrows; i++) {
		lb = scattered ? (i * 2654435761u) & ((1u << 20) - 1) : i;
		l = loc(1 + i / 16384, (uint32_t)(i % 16384), i * 0x9e3779b97f4a7c15ull);
		cr_assert_eq(bmap_row_put(b, node, lb, &l), 0);
	}
	cr_assert_eq(bmap_commit(b), 0);
	return (double)nrows / (seconds() - t0);
}

Test(bmap, row_put_rate_of_one_million_rows_in_one_transaction, .timeout = 600)
{
	struct bmap *b = make_index_with_nodes(2);
	const char *env = getenv("VSNAPFS_BENCH_ROWS");
	uint64_t nrows = env ? strtoull(env, NULL, 10) : 1000000;
	double seq, scat, over, over_seq;

	if (nrows > (1u << 20))
		nrows = 1u << 20;       /* the scattered order is a permutation of 2^20 */
	seq = put_rate(b, 1, nrows, 0);
	scat = put_rate(b, 2, nrows, 1);
	over = put_rate(b, 2, nrows, 1);
	over_seq = put_rate(b, 1, nrows, 0);    /* what a flush of sorted rows does */
	cr_assert_eq(row_count(b, 1), nrows);
	fprintf(stderr, "bmap_row_put, %" PRIu64 " rows in one transaction (commit included):"
		" sequential %.0f rows/s, scattered %.0f rows/s, overwrite scattered %.0f rows/s,"
		" overwrite in order %.0f rows/s\n", nrows, seq, scat, over, over_seq);
	bmap_close(b);
}
