/*
 * block map: the index of vsnapfs in one SQLite database (index.sqlite).
 *
 * This file is the only place in vsnapfs that calls sqlite3_*.  It owns the
 * schema (bmap_schema_sql below, drawn in docs/on-disk-format.md), its
 * version, and every SQL statement the daemon runs.
 *
 * Statements.  Every statement is prepared once, in bmap_open(), and kept
 * in b->st[].  A call binds, steps and resets; no call returns with a
 * statement still active, so a handle is always at rest between calls.  The
 * hot path is bmap_row_put() at fsync time, thousands of rows in one
 * transaction: one bind/step/reset of a cached UPDATE (data over data) or
 * INSERT (a new row), whichever worked for the put before (bmap_row_put);
 * the other one only when that guess is wrong.
 *
 * Row counts.  node.nrows is the number of a node's data rows (chunk <> 0):
 * st_blocks of a volume whose map is not loaded, and the sizes vsnapctl
 * lists, in O(1) instead of a scan of millions of rows under the daemon's
 * index lock.  Every call that adds, removes or moves data rows keeps it,
 * in the same transaction: put and del through a pending delta (struct
 * bmap) written at commit, the bulk calls (del_from, merge) by counting
 * the rows they are about to change.  Not SQL triggers: they cost too much
 * of the put rate (docs/design.md, "Schema").  bmap_row_count_scan()
 * counts for real; check compares.
 *
 * Walks.  bmap_dir_list(), bmap_orphan_list(), bmap_row_foreach() and
 * bmap_rows_all() call fn while their statement is active.  fn must not
 * call into the same handle; b->walking turns that mistake into an assert
 * failure instead of a silently reset cursor.  bmap_chunk_refs() calls fn
 * after its scan, but keeps the same rule so that callers need only one.
 *
 * Unsigned values.  SQLite integers are signed 64-bit.  Values that SQL
 * never compares (cksum, node inherit, inode size, meta values) are stored as
 * the same 64 bits (u64_bits/bits_u64), so every uint64_t round-trips
 * exactly, and so does every key of an equality match (an id above 2^63
 * simply matches nothing).  Values SQL orders (ino, node ids, lblock, chunk
 * ids) stay below INT64_MAX: ids come from AUTOINCREMENT, bmap_row_put()
 * refuses larger lblocks and chunk ids, and the bound of a range query
 * (after, below, from) is clamped to INT64_MAX, which is then exact.
 *
 * No index on bmap(chunk, slot).  It would serve only garbage collection and
 * check, and cost the flush path a good part of its put rate
 * (docs/performance.md, "No index on chunk").  bmap_chunk_refs()
 * therefore scans the table once and counts in a small hash table keyed by
 * chunk id (memory grows with the number of chunks, not of rows; a GROUP BY
 * would sort every row), and the rows of given chunks come from one scan
 * of every row (bmap_rows_all()), never from a scan per chunk.
 *
 * Opening without writing.  bmap_open() reads application_id, user_version
 * and quick_check before it runs any pragma that could write (journal_mode),
 * so a file it refuses is left byte-identical.
 *
 * Errors.  bmap_errno() is the one mapping from SQLite result codes to
 * errno; it also copies sqlite3_errmsg() into b->errmsg, so the message of
 * the failing statement survives the cleanup statements (ROLLBACK) that run
 * after it.
 *
 * THREAD SAFETY: none inside.  The caller serializes every call on one
 * handle (bmap.h); the connection is opened SQLITE_OPEN_NOMUTEX for that
 * reason.  Other processes (vsnapctl) may read the same file: WAL mode lets
 * them read while we write, and busy_timeout covers the short locks of
 * checkpoints and WAL recovery.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "vsnapfs/array.h"
#include "vsnapfs/bmap.h"

#define BMAP_APPLICATION_ID  0x76736e70     /* "vsnp" */
#define BMAP_BUSY_TIMEOUT_MS 5000

#define BMAP_STR_(x) #x
#define BMAP_STR(x)  BMAP_STR_(x)

/*
 * Schema, version 2.  Created in one transaction by bmap_create(); the
 * comments are kept by SQLite in sqlite_schema, so `sqlite3 index.sqlite
 * .schema` shows them too.  Any change here needs a new BMAP_FORMAT_VERSION
 * and a step in bmap_upgrade().  Version 1 had no node.nrows.
 */
static const char bmap_schema_sql[] =
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

#define INODE_COLS "ino, parent, name, kind, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, size, node"

enum bmap_st {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_SNAP_BEGIN,
	ST_SNAP_PIN,
	ST_SP_BEGIN,
	ST_SP_RELEASE,
	ST_SP_ROLLBACK,
	ST_META_GET,
	ST_META_SET,
	ST_INODE_GET,
	ST_INODE_LOOKUP,
	ST_INODE_INSERT,
	ST_INODE_UPDATE,
	ST_INODE_MOVE,
	ST_INODE_DELETE,
	ST_DIR_LIST,
	ST_DIR_COUNT,
	ST_ORPHAN_LIST,
	ST_INODE_COUNT,
	ST_NODE_CREATE,
	ST_NODE_GET,
	ST_NODE_UPDATE,
	ST_NODE_DELETE,
	ST_NODE_DELETE_ROWS,
	ST_NODE_CHILDREN,
	ST_ROW_PUT,
	ST_ROW_INSERT,
	ST_ROW_UPDATE,
	ST_ROW_DEL,
	ST_ROW_DEL_DATA,
	ST_ROW_DEL_FROM,
	ST_ROW_FOREACH,
	ST_ROW_COUNT,
	ST_ROW_COUNT_RANGE,
	ST_NODE_NROWS,          /* format 2: prepared only then */
	ST_NODE_NROWS_ADD,      /* format 2 */
	ST_CHUNK_SCAN,
	ST_ROWS_ALL,
	ST_ROW_RELOCATE,
	ST_ROW_RANGE,
	ST_SNAP_INSERT,
	ST_SNAP_GET,
	ST_SNAP_LOOKUP,
	ST_SNAP_LIST,
	ST_SNAP_LIST_ALL,
	ST_SNAP_RENAME,
	ST_SNAP_DELETE,
	ST_SNAP_DELETE_INODES,
	ST_SNAP_COUNT,
	ST_SINODE_INSERT,
	ST_SINODE_GET,
	ST_SINODE_LOOKUP,
	ST_SINODE_LIST,
	ST_SINODE_ALL,
	ST_SUBTREE,
	ST_NODE_REFS,
	ST_NODE_ONLY_CHILD,
	ST_NODE_MERGE_DROP,
	ST_NODE_MERGE_MOVE,
	ST_NODE_ROW_NTH,
	ST_NODE_LIST,
	ST_COUNT
};

static const char *const bmap_st_sql[ST_COUNT] = {
	/* IMMEDIATE takes the write lock now: a deferred transaction that
	 * first reads could fail to upgrade once another writer committed. */
	[ST_BEGIN]            = "BEGIN IMMEDIATE",
	[ST_COMMIT]           = "COMMIT",
	[ST_ROLLBACK]         = "ROLLBACK",
	/* A read transaction starts at its first read, not at BEGIN: the
	 * pin is that read (bmap_snapshot_begin). */
	[ST_SNAP_BEGIN]       = "BEGIN DEFERRED",
	[ST_SNAP_PIN]         = "SELECT count(*) FROM meta",
	/* A savepoint makes a multi-statement call atomic both inside and
	 * outside the caller's transaction. */
	[ST_SP_BEGIN]         = "SAVEPOINT bmap_op",
	[ST_SP_RELEASE]       = "RELEASE bmap_op",
	[ST_SP_ROLLBACK]      = "ROLLBACK TO bmap_op",

	[ST_META_GET]         = "SELECT value FROM meta WHERE key = ?1",
	[ST_META_SET]         = "INSERT INTO meta(key, value) VALUES(?1, ?2)"
				" ON CONFLICT(key) DO UPDATE SET value = excluded.value",

	[ST_INODE_GET]        = "SELECT " INODE_COLS " FROM inode WHERE ino = ?1",
	/* "parent <> 0" repeats the partial index's WHERE: without it the
	 * planner cannot prove the index applies to a bound ?1 and walks
	 * the whole directory instead. */
	[ST_INODE_LOOKUP]     = "SELECT " INODE_COLS " FROM inode"
				" WHERE parent = ?1 AND name = ?2 AND parent <> 0",
	[ST_INODE_INSERT]     = "INSERT INTO inode(parent, name, kind, mode, uid, gid,"
				" atime_ns, mtime_ns, ctime_ns, size, node)"
				" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
	[ST_INODE_UPDATE]     = "UPDATE inode SET kind = ?2, mode = ?3, uid = ?4, gid = ?5,"
				" atime_ns = ?6, mtime_ns = ?7, ctime_ns = ?8, size = ?9, node = ?10"
				" WHERE ino = ?1",
	[ST_INODE_MOVE]       = "UPDATE inode SET parent = ?2, name = ?3 WHERE ino = ?1",
	[ST_INODE_DELETE]     = "DELETE FROM inode WHERE ino = ?1",
	[ST_DIR_LIST]         = "SELECT " INODE_COLS " FROM inode"
				" WHERE parent = ?1 AND ino > ?2 ORDER BY ino",
	[ST_DIR_COUNT]        = "SELECT count(*) FROM inode WHERE parent = ?1",
	[ST_ORPHAN_LIST]      = "SELECT " INODE_COLS " FROM inode"
				" WHERE parent = 0 AND ino <> " BMAP_STR(BMAP_ROOT_INO) " ORDER BY ino",
	[ST_INODE_COUNT]      = "SELECT count(*) FROM inode",

	[ST_NODE_CREATE]      = "INSERT INTO node(parent, inherit) VALUES(?1, ?2)",
	[ST_NODE_GET]         = "SELECT id, parent, inherit FROM node WHERE id = ?1",
	[ST_NODE_UPDATE]      = "UPDATE node SET parent = ?2, inherit = ?3 WHERE id = ?1",
	[ST_NODE_DELETE]      = "DELETE FROM node WHERE id = ?1",
	[ST_NODE_DELETE_ROWS] = "DELETE FROM bmap WHERE node = ?1",
	[ST_NODE_CHILDREN]    = "SELECT count(*) FROM node WHERE parent = ?1",

	/* UPSERT rather than INSERT OR REPLACE: it updates in place instead
	 * of delete + insert, which is faster on random overwrites. */
	[ST_ROW_PUT]          = "INSERT INTO bmap(node, lblock, chunk, slot, cksum)"
				" VALUES(?1, ?2, ?3, ?4, ?5)"
				" ON CONFLICT(node, lblock) DO UPDATE SET chunk = excluded.chunk,"
				" slot = excluded.slot, cksum = excluded.cksum",
	/* node.nrows: data over data is an UPDATE, data over nothing an
	 * INSERT, both counted by bmap_row_put; anything else the UPSERT */
	[ST_ROW_INSERT]       = "INSERT INTO bmap(node, lblock, chunk, slot, cksum)"
				" VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(node, lblock) DO NOTHING",
	[ST_ROW_UPDATE]       = "UPDATE bmap SET chunk = ?3, slot = ?4, cksum = ?5"
				" WHERE node = ?1 AND lblock = ?2 AND chunk <> 0",
	[ST_ROW_DEL]          = "DELETE FROM bmap WHERE node = ?1 AND lblock = ?2",
	[ST_ROW_DEL_DATA]     = "DELETE FROM bmap WHERE node = ?1 AND lblock = ?2 AND chunk <> 0",
	[ST_ROW_DEL_FROM]     = "DELETE FROM bmap WHERE node = ?1 AND lblock >= ?2",
	[ST_ROW_FOREACH]      = "SELECT lblock, chunk, slot, cksum FROM bmap"
				" WHERE node = ?1 AND lblock < ?2 ORDER BY lblock",
	[ST_ROW_COUNT]        = "SELECT count(*) FROM bmap WHERE node = ?1 AND chunk <> 0",
	[ST_ROW_COUNT_RANGE]  = "SELECT count(*) FROM bmap WHERE node = ?1 AND lblock >= ?2"
				" AND lblock < ?3 AND chunk <> 0",
	[ST_NODE_NROWS]       = "SELECT nrows FROM node WHERE id = ?1",
	[ST_NODE_NROWS_ADD]   = "UPDATE node SET nrows = nrows + ?2 WHERE id = ?1",
	[ST_CHUNK_SCAN]       = "SELECT chunk FROM bmap WHERE chunk <> 0",
	[ST_ROWS_ALL]         = "SELECT node, lblock, chunk, slot, cksum FROM bmap WHERE chunk <> 0",
	[ST_ROW_RELOCATE]     = "UPDATE bmap SET chunk = ?5, slot = ?6, cksum = ?7"
				" WHERE node = ?1 AND lblock = ?2 AND chunk = ?3 AND slot = ?4",
	[ST_ROW_RANGE]        = "SELECT lblock, chunk, slot, cksum FROM bmap"
				" WHERE node = ?1 AND lblock >= ?2 AND lblock < ?3 ORDER BY lblock",

	[ST_SNAP_INSERT]      = "INSERT INTO snapshot(dir, name, created_ns) VALUES(?1, ?2, ?3)",
	[ST_SNAP_GET]         = "SELECT id, dir, name, created_ns FROM snapshot WHERE id = ?1",
	[ST_SNAP_LOOKUP]      = "SELECT id, dir, name, created_ns FROM snapshot"
				" WHERE dir = ?1 AND name = ?2",
	[ST_SNAP_LIST]        = "SELECT id, dir, name, created_ns FROM snapshot"
				" WHERE dir = ?1 AND id > ?2 ORDER BY id",
	[ST_SNAP_LIST_ALL]    = "SELECT id, dir, name, created_ns FROM snapshot"
				" WHERE id > ?1 ORDER BY id",
	[ST_SNAP_RENAME]      = "UPDATE snapshot SET name = ?2 WHERE id = ?1",
	[ST_SNAP_DELETE]      = "DELETE FROM snapshot WHERE id = ?1",
	[ST_SNAP_DELETE_INODES] = "DELETE FROM sinode WHERE snap = ?1",
	[ST_SNAP_COUNT]       = "SELECT count(*) FROM snapshot WHERE dir = ?1",
	[ST_SINODE_INSERT]    = "INSERT INTO sinode(snap, " INODE_COLS ")"
				" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
	[ST_SINODE_GET]       = "SELECT " INODE_COLS " FROM sinode WHERE snap = ?1 AND ino = ?2",
	[ST_SINODE_LOOKUP]    = "SELECT " INODE_COLS " FROM sinode"
				" WHERE snap = ?1 AND parent = ?2 AND name = ?3",
	[ST_SINODE_LIST]      = "SELECT " INODE_COLS " FROM sinode"
				" WHERE snap = ?1 AND parent = ?2 AND ino > ?3 ORDER BY ino",
	[ST_SINODE_ALL]       = "SELECT " INODE_COLS " FROM sinode WHERE snap = ?1 ORDER BY ino",
	/* breadth first: parents come before their children */
	[ST_SUBTREE]          = "WITH RECURSIVE sub(ino, depth) AS ("
				" SELECT ino, 0 FROM inode WHERE parent = ?1 AND parent <> 0"
				" UNION ALL SELECT i.ino, sub.depth + 1 FROM inode i"
				" JOIN sub ON i.parent = sub.ino)"
				" SELECT i.ino, i.parent, i.name, i.kind, i.mode, i.uid, i.gid,"
				" i.atime_ns, i.mtime_ns, i.ctime_ns, i.size, i.node"
				" FROM sub JOIN inode i ON i.ino = sub.ino ORDER BY sub.depth, i.ino",
	[ST_NODE_REFS]        = "SELECT (SELECT count(*) FROM inode WHERE node = ?1)"
				" + (SELECT count(*) FROM sinode WHERE node = ?1)",
	[ST_NODE_ONLY_CHILD]  = "SELECT id FROM node WHERE parent = ?1 ORDER BY id LIMIT 1",
	/* merge, rows of the node below lblock ?4 only; step 1: rows the
	 * child cannot see (at or past its inherit limit ?3) or overrides (it
	 * has its own row) go */
	[ST_NODE_MERGE_DROP]  = "DELETE FROM bmap WHERE node = ?1 AND lblock < ?4 AND (lblock >= ?3"
				" OR EXISTS (SELECT 1 FROM bmap c WHERE c.node = ?2"
				" AND c.lblock = bmap.lblock))",
	/* step 2: the rest become the child's */
	[ST_NODE_MERGE_MOVE]  = "UPDATE bmap SET node = ?2 WHERE node = ?1 AND lblock < ?3",
	/* where a batch of ?2 rows of a node ends */
	[ST_NODE_ROW_NTH]     = "SELECT lblock FROM bmap WHERE node = ?1 ORDER BY lblock"
				" LIMIT 1 OFFSET ?2",
	[ST_NODE_LIST]        = "SELECT id, parent, inherit FROM node ORDER BY id",
};

struct bmap {
	sqlite3 *db;
	sqlite3_stmt *st[ST_COUNT];     /* prepared in bmap_open, finalized in bmap_close */
	uint32_t block_size;            /* from meta, checked at open */
	int readonly;
	int format;                     /* user_version: BMAP_FORMAT_VERSION, or 1 read-only */
	int upgraded_from;              /* the format bmap_open upgraded, or 0 */
	int walking;                    /* a walk's fn is running: no call may enter */
	/* node.nrows changes of bmap_row_put/del not yet written: a flush
	 * puts thousands of rows of one node, and one UPDATE of its count at
	 * commit costs less than one per row.  Dropped at rollback. */
	uint64_t pend_node;
	int64_t pend_delta;
	bool put_new;                   /* the last data put made a new row */
	uint32_t fault_after;           /* bmap_fault_commit: commits still allowed */
	int fault_err;                  /* then fail with -fault_err; 0: off */
	char errmsg[256];               /* sqlite3_errmsg() of the last mapped error */
};

/* ---- small helpers ------------------------------------------------------ */

/*
 * The one mapping from an SQLite result code to a negative errno (the list
 * is in bmap.h).  Call it right after the failing call, before any other
 * statement runs, so the message copied into b->errmsg is the right one.
 */
static int bmap_errno(struct bmap *b, int rc)
{
	int sys;

	assert(rc != SQLITE_OK && rc != SQLITE_ROW && rc != SQLITE_DONE);
	if (b->db)
		snprintf(b->errmsg, sizeof(b->errmsg), "%s", sqlite3_errmsg(b->db));
	else
		snprintf(b->errmsg, sizeof(b->errmsg), "%s", sqlite3_errstr(rc));

	switch (rc & 0xff) {
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EUCLEAN;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_READONLY:
		return -EROFS;
	case SQLITE_CANTOPEN:
		/* Why the open failed (ENOENT, EACCES, EISDIR) matters to
		 * the caller; SQLite keeps the OS errno for exactly this. */
		sys = b->db ? sqlite3_system_errno(b->db) : 0;
		return sys > 0 ? -sys : -EIO;
	default:
		return -EIO;
	}
}

static sqlite3_int64 u64_bits(uint64_t v)
{
	sqlite3_int64 s;

	memcpy(&s, &v, sizeof(s));
	return s;
}

static uint64_t bits_u64(sqlite3_int64 s)
{
	uint64_t v;

	memcpy(&v, &s, sizeof(v));
	return v;
}

/* The bound of a range query: nothing stored reaches INT64_MAX. */
static sqlite3_int64 clamp_i64(uint64_t v)
{
	return v > (uint64_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)v;
}

static sqlite3_stmt *bmap_stmt(struct bmap *b, enum bmap_st id)
{
	/* A walk's fn called back into this handle: that would reset or
	 * interleave with the statement the walk is stepping. */
	assert(!b->walking);
	return b->st[id];
}

/* Binding can only fail on a wrong index or type, i.e. a bug here. */
static void bind_i64(sqlite3_stmt *s, int i, sqlite3_int64 v)
{
	int rc = sqlite3_bind_int64(s, i, v);

	assert(rc == SQLITE_OK);
	(void)rc;
}

static void bind_text(sqlite3_stmt *s, int i, const char *text)
{
	int rc = sqlite3_bind_text(s, i, text, -1, SQLITE_STATIC);

	assert(rc == SQLITE_OK);
	(void)rc;
}

static void bind_name(sqlite3_stmt *s, int i, const char *name, size_t len)
{
	/* STATIC: name outlives the step; a non-NULL pointer with length 0
	 * binds an empty blob, not NULL. */
	int rc = sqlite3_bind_blob(s, i, name, (int)len, SQLITE_STATIC);

	assert(rc == SQLITE_OK);
	(void)rc;
}

/* Step a statement that returns no row, then reset it. */
static int stmt_run(struct bmap *b, sqlite3_stmt *s)
{
	int src, rc = 0;

	src = sqlite3_step(s);
	if (src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

/* Step a statement that returns one integer column; -ENOENT if no row. */
static int stmt_u64(struct bmap *b, sqlite3_stmt *s, uint64_t *out)
{
	int src, rc = 0;

	src = sqlite3_step(s);
	if (src == SQLITE_ROW)
		*out = bits_u64(sqlite3_column_int64(s, 0));
	else if (src == SQLITE_DONE)
		rc = -ENOENT;
	else
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

/* A name as stored: -ENAMETOOLONG past BMAP_NAME_MAX bytes. */
static int name_len(const char *name, size_t *len)
{
	*len = strnlen(name, BMAP_NAME_MAX + 1);
	return *len > BMAP_NAME_MAX ? -ENAMETOOLONG : 0;
}

/* parent 0 goes with the empty name (root, unlinked) and only with it. */
static int name_check(uint64_t parent, const char *name, size_t *len)
{
	int rc = name_len(name, len);

	if (rc)
		return rc;
	if ((parent == 0) != (*len == 0))
		return -EINVAL;
	return 0;
}

static int inode_from_row(sqlite3_stmt *s, struct bmap_inode *in)
{
	const void *name = sqlite3_column_blob(s, 2);
	int len = sqlite3_column_bytes(s, 2);

	if (len < 0 || len > BMAP_NAME_MAX)
		return -EUCLEAN;
	memset(in, 0, sizeof(*in));
	in->ino = (uint64_t)sqlite3_column_int64(s, 0);
	in->parent = (uint64_t)sqlite3_column_int64(s, 1);
	if (len)
		memcpy(in->name, name, (size_t)len);
	in->name[len] = '\0';
	in->kind = (uint32_t)sqlite3_column_int64(s, 3);
	in->mode = (uint32_t)sqlite3_column_int64(s, 4);
	in->uid = (uint32_t)sqlite3_column_int64(s, 5);
	in->gid = (uint32_t)sqlite3_column_int64(s, 6);
	in->atime_ns = sqlite3_column_int64(s, 7);
	in->mtime_ns = sqlite3_column_int64(s, 8);
	in->ctime_ns = sqlite3_column_int64(s, 9);
	in->size = bits_u64(sqlite3_column_int64(s, 10));
	in->node = (uint64_t)sqlite3_column_int64(s, 11);
	return 0;
}

static void loc_from_cols(sqlite3_stmt *s, int col, struct chunk_loc *loc)
{
	loc->chunk_id = (uint64_t)sqlite3_column_int64(s, col);
	loc->slot = (uint32_t)sqlite3_column_int64(s, col + 1);
	loc->cksum = bits_u64(sqlite3_column_int64(s, col + 2));
}

/* Run a one-off statement at open or create and read its first column. */
static int oneoff_i64(struct bmap *b, const char *sql, sqlite3_int64 *out)
{
	sqlite3_stmt *s = NULL;
	int src, rc = 0;

	src = sqlite3_prepare_v2(b->db, sql, -1, &s, NULL);
	if (src != SQLITE_OK) {
		rc = bmap_errno(b, src);
		goto out;
	}
	src = sqlite3_step(s);
	if (src == SQLITE_ROW)
		*out = sqlite3_column_int64(s, 0);
	else if (src == SQLITE_DONE)
		rc = -ENOENT;
	else
		rc = bmap_errno(b, src);
out:
	sqlite3_finalize(s);
	return rc;
}

/* The first column of the first row of sql is the text want (not NULL). */
static int oneoff_text_is(struct bmap *b, const char *sql, const char *want, int *match)
{
	sqlite3_stmt *s = NULL;
	const unsigned char *text;
	int src, rc = 0;

	*match = 0;
	src = sqlite3_prepare_v2(b->db, sql, -1, &s, NULL);
	if (src != SQLITE_OK) {
		rc = bmap_errno(b, src);
		goto out;
	}
	src = sqlite3_step(s);
	if (src == SQLITE_ROW) {
		text = sqlite3_column_text(s, 0);
		*match = text && strcmp((const char *)text, want) == 0;
	} else if (src != SQLITE_DONE) {
		rc = bmap_errno(b, src);
	}
out:
	sqlite3_finalize(s);
	return rc;
}

static int exec_sql(struct bmap *b, const char *sql)
{
	int src = sqlite3_exec(b->db, sql, NULL, NULL, NULL);

	return src == SQLITE_OK ? 0 : bmap_errno(b, src);
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void bmap_free(struct bmap *b)
{
	int i;

	for (i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(b->st[i]);     /* NULL is a no-op */
	/* _v2: never fails with "unfinalized statements"; a transaction
	 * still open is rolled back by SQLite. */
	sqlite3_close_v2(b->db);
	free(b);
}

/* fsync the directory holding path, so a new file's name is durable. */
static int sync_parent_dir(const char *path)
{
	char *copy;
	int fd, rc = 0;

	copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		goto out_free;
	}
	if (fsync(fd) < 0)
		rc = -errno;
	close(fd);
out_free:
	free(copy);
	return rc;
}

/* Does path + suffix exist?  Any stat error but ENOENT counts as yes. */
static int sidecar_exists(const char *path, const char *suffix)
{
	char name[PATH_MAX];
	struct stat st;

	if ((size_t)snprintf(name, sizeof(name), "%s%s", path, suffix) >= sizeof(name))
		return 1;
	return stat(name, &st) == 0 || errno != ENOENT;
}

static void sidecar_unlink(const char *path, const char *suffix)
{
	char name[PATH_MAX];

	if ((size_t)snprintf(name, sizeof(name), "%s%s", path, suffix) < sizeof(name))
		unlink(name);
}

/* ---- create, open, close ------------------------------------------------ */

int bmap_create(const char *path, uint32_t block_size, uint32_t uid, uint32_t gid)
{
	struct bmap *b;
	char *sql = NULL;
	sqlite3_int64 t;
	int fd, src, match, rc;

	if (!chunk_block_size_valid(block_size))
		return -EINVAL;
	/* A -wal or -journal left by a deleted index would be replayed into
	 * the new, empty file by SQLite: refuse rather than mix them. */
	if (sidecar_exists(path, "-wal") || sidecar_exists(path, "-journal"))
		return -EEXIST;

	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;

	/* O_EXCL is the existence check, atomic against a concurrent create;
	 * SQLite then opens the empty file (a valid empty database). */
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		goto out_free;
	}
	close(fd);

	src = sqlite3_open_v2(path, &b->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (src != SQLITE_OK) {
		rc = bmap_errno(b, src);
		goto out_unlink;
	}
	sqlite3_busy_timeout(b->db, BMAP_BUSY_TIMEOUT_MS);

	/* journal_mode cannot change inside a transaction, so it goes first;
	 * a crash before COMMIT leaves application_id 0, which bmap_open
	 * refuses, and the file is then simply deleted by hand. */
	rc = oneoff_text_is(b, "PRAGMA journal_mode = WAL", "wal", &match);
	if (rc)
		goto out_unlink;
	if (!match) {
		rc = -EIO;
		goto out_unlink;
	}
	rc = exec_sql(b, "PRAGMA synchronous = FULL");
	if (rc)
		goto out_unlink;

	t = now_ns();
	sql = sqlite3_mprintf(
		"BEGIN IMMEDIATE;\n"
		"%s\n"
		"PRAGMA application_id = %d;\n"
		"PRAGMA user_version = %d;\n"
		"INSERT INTO meta(key, value) VALUES('block_size', %u), ('format_version', %d),"
		" ('created_ns', %lld), ('next_chunk_id', 1);\n"
		"INSERT INTO inode(ino, parent, name, kind, mode, uid, gid,"
		" atime_ns, mtime_ns, ctime_ns, size, node)"
		" VALUES(%d, 0, X'', %d, %d, %u, %u, %lld, %lld, %lld, 0, 0);\n"
		"COMMIT;",
		bmap_schema_sql, BMAP_APPLICATION_ID, BMAP_FORMAT_VERSION,
		block_size, BMAP_FORMAT_VERSION, (long long)t,
		BMAP_ROOT_INO, BMAP_DIR, 0755, uid, gid, (long long)t, (long long)t, (long long)t);
	if (!sql) {
		rc = -ENOMEM;
		goto out_unlink;
	}
	rc = exec_sql(b, sql);
	if (rc)
		goto out_unlink;

	/* The last close checkpoints the WAL into the file (synced, as
	 * synchronous=FULL) and removes it; if that checkpoint cannot run,
	 * the committed WAL stays and is just as valid.  Then make the new
	 * name durable. */
	sqlite3_close_v2(b->db);
	b->db = NULL;
	rc = sync_parent_dir(path);
	if (rc)
		goto out_unlink;
	goto out_free;

out_unlink:
	sqlite3_close_v2(b->db);
	b->db = NULL;
	unlink(path);
	sidecar_unlink(path, "-wal");
	sidecar_unlink(path, "-shm");
out_free:
	sqlite3_free(sql);
	free(b);
	return rc;
}

/*
 * Refuse a file that is not ours, writing nothing: every check here only
 * reads.  NOTADB (not a database at all) maps to -EUCLEAN.
 */
static int bmap_check_format(struct bmap *b, bool quick_check)
{
	sqlite3_int64 v;
	int ok, rc;

	rc = oneoff_i64(b, "PRAGMA application_id", &v);
	if (rc)
		return rc;
	if (v != BMAP_APPLICATION_ID)
		return -EUCLEAN;        /* not a vsnapfs index */
	rc = oneoff_i64(b, "PRAGMA user_version", &v);
	if (rc)
		return rc;
	if (v < 1 || v > BMAP_FORMAT_VERSION)
		return -EPROTONOSUPPORT;
	b->format = (int)v;
	if (!quick_check)
		return 0;
	/* O(size of the file); catches a damaged b-tree before we write. */
	rc = oneoff_text_is(b, "PRAGMA quick_check", "ok", &ok);
	if (rc)
		return rc;
	return ok ? 0 : -EUCLEAN;
}

/*
 * Bring a writable index of an older format up to BMAP_FORMAT_VERSION, in
 * one transaction: a crash leaves the old format, and the next open runs
 * this again.  A read-only open leaves the file as it is, and the calls
 * that need the new format fall back (bmap_row_count scans).
 *
 * 1 -> 2: node.nrows, counted once here (one scan of the index).
 */
static int bmap_upgrade(struct bmap *b)
{
	int rc;

	if (b->format == BMAP_FORMAT_VERSION)
		return 0;
	rc = exec_sql(b, "BEGIN IMMEDIATE;"
			 "ALTER TABLE node ADD COLUMN nrows INTEGER NOT NULL DEFAULT 0;"
			 "UPDATE node SET nrows = (SELECT count(*) FROM bmap"
			 " WHERE bmap.node = node.id AND chunk <> 0);"
			 "UPDATE meta SET value = " BMAP_STR(BMAP_FORMAT_VERSION)
			 " WHERE key = 'format_version';"
			 "PRAGMA user_version = " BMAP_STR(BMAP_FORMAT_VERSION) ";"
			 "COMMIT;");
	if (rc) {
		exec_sql(b, "ROLLBACK");
		return rc;
	}
	b->upgraded_from = b->format;
	b->format = BMAP_FORMAT_VERSION;
	return 0;
}

int bmap_upgraded_from(struct bmap *b)
{
	return b->upgraded_from;
}

static int open_index(const char *path, int readonly, bool quick_check, struct bmap **out)
{
	struct bmap *b;
	sqlite3_int64 bs;
	int flags, src, match, rc, i;
	bool had_wal, had_shm;

	*out = NULL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->readonly = !!readonly;
	/* What a refusal must leave as it found: a log left by a crash is
	 * recovery data, and the checks below must not fold it in. */
	had_wal = sidecar_exists(path, "-wal");
	had_shm = sidecar_exists(path, "-shm");

	/* Never SQLITE_OPEN_CREATE: a missing index is -ENOENT. */
	flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
	src = sqlite3_open_v2(path, &b->db, flags, NULL);
	if (src != SQLITE_OK) {
		rc = bmap_errno(b, src);
		goto fail;
	}
	/* Until the checks pass, closing must not checkpoint the log into
	 * the database (SQLite does that on the last close in WAL mode). */
	sqlite3_db_config(b->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	/* SQLite quietly falls back to read-only when the file is not
	 * writable; we would only learn it at the first write. */
	if (!readonly && sqlite3_db_readonly(b->db, "main") == 1) {
		rc = -EACCES;
		goto fail;
	}
	sqlite3_busy_timeout(b->db, BMAP_BUSY_TIMEOUT_MS);

	rc = bmap_check_format(b, quick_check);
	if (rc)
		goto fail;

	/* From here on we may write: the file is ours. */
	sqlite3_db_config(b->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);
	if (!readonly) {
		rc = oneoff_text_is(b, "PRAGMA journal_mode = WAL", "wal", &match);
		if (rc)
			goto fail;
		if (!match) {
			rc = -EIO;
			goto fail;
		}
	}
	rc = exec_sql(b, "PRAGMA synchronous = FULL;"
			 "PRAGMA foreign_keys = OFF;"
			 "PRAGMA cache_size = -65536;"      /* KiB: 64 MiB */
			 "PRAGMA temp_store = MEMORY;");
	if (rc)
		goto fail;

	rc = oneoff_i64(b, "SELECT value FROM meta WHERE key = 'block_size'", &bs);
	if (rc == -ENOENT || (rc == 0 && !chunk_block_size_valid((uint64_t)bs)))
		rc = -EUCLEAN;
	if (rc)
		goto fail;
	b->block_size = (uint32_t)bs;

	if (!readonly) {
		rc = bmap_upgrade(b);
		if (rc)
			goto fail;
	}
	for (i = 0; i < ST_COUNT; i++) {
		if (b->format < 2 && (i == ST_NODE_NROWS || i == ST_NODE_NROWS_ADD))
			continue;
		src = sqlite3_prepare_v3(b->db, bmap_st_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
					 &b->st[i], NULL);
		if (src != SQLITE_OK) {
			rc = bmap_errno(b, src);
			goto fail;
		}
	}
	*out = b;
	return 0;

fail:
	bmap_free(b);
	/* reading a WAL database creates these; a refusal leaves no trace */
	if (!had_wal)
		sidecar_unlink(path, "-wal");
	if (!had_shm)
		sidecar_unlink(path, "-shm");
	return rc;
}

int bmap_open(const char *path, int readonly, struct bmap **out)
{
	return open_index(path, readonly, true, out);
}

int bmap_open_reader(struct bmap *checked, struct bmap **out)
{
	const char *path = sqlite3_db_filename(checked->db, "main");

	*out = NULL;
	if (!path || !*path)
		return -EINVAL;
	return open_index(path, 1, false, out);
}

void bmap_close(struct bmap *b)
{
	if (b)
		bmap_free(b);
}

uint32_t bmap_block_size(struct bmap *b)
{
	return b->block_size;
}

const char *bmap_errmsg(struct bmap *b)
{
	if (!b)
		return "no index";
	return b->errmsg[0] ? b->errmsg : sqlite3_errmsg(b->db);
}

/* ---- meta --------------------------------------------------------------- */

int bmap_meta_get(struct bmap *b, const char *key, uint64_t *value)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_META_GET);

	bind_text(s, 1, key);
	return stmt_u64(b, s, value);
}

int bmap_meta_set(struct bmap *b, const char *key, uint64_t value)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_META_SET);

	/* Fixed at create: changing them would misread every block. */
	if (strcmp(key, "block_size") == 0 || strcmp(key, "format_version") == 0)
		return -EPERM;
	bind_text(s, 1, key);
	bind_i64(s, 2, u64_bits(value));
	return stmt_run(b, s);
}

/* ---- transactions ------------------------------------------------------- */

/* ---- node.nrows ---------------------------------------------------------- */

/* Add delta to node's count now. */
static int nrows_add_now(struct bmap *b, uint64_t node, int64_t delta)
{
	sqlite3_stmt *s;

	if (delta == 0)
		return 0;
	s = bmap_stmt(b, ST_NODE_NROWS_ADD);
	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, delta);
	return stmt_run(b, s);
}

/* Write the pending change (see struct bmap). */
static int nrows_apply(struct bmap *b)
{
	int64_t d = b->pend_delta;

	b->pend_delta = 0;
	return nrows_add_now(b, b->pend_node, d);
}

/* Count a row of node in or out when the transaction commits (or the
 * savepoint of a call made outside one, see in_own_savepoint). */
static int nrows_add(struct bmap *b, uint64_t node, int64_t delta)
{
	int rc = 0;

	if (b->pend_node != node) {
		rc = nrows_apply(b);
		b->pend_node = node;
	}
	b->pend_delta += delta;
	return rc;
}

int bmap_begin(struct bmap *b)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_BEGIN);

	/* SQLite lets BEGIN IMMEDIATE succeed on a read-only WAL connection
	 * and fails only at the first write; say it up front. */
	if (b->readonly)
		return -EROFS;
	if (!sqlite3_get_autocommit(b->db))
		return -EINVAL;         /* not nestable */
	return stmt_run(b, s);
}

/*
 * A failed COMMIT rolls back, so that after bmap_commit() returns no
 * transaction is open whatever happened (SQLite leaves it open on BUSY).
 */
void bmap_fault_commit(struct bmap *b, uint32_t after, int err)
{
	b->fault_after = after;
	b->fault_err = err;
}

int bmap_commit(struct bmap *b)
{
	int rc = 0;

	if (b->fault_err && b->fault_after-- == 0) {
		b->fault_after = 0;
		snprintf(b->errmsg, sizeof(b->errmsg), "injected commit failure");
		rc = -b->fault_err;
	}
	if (!rc)
		rc = nrows_apply(b);
	if (!rc)
		rc = stmt_run(b, bmap_stmt(b, ST_COMMIT));
	if (rc)
		bmap_rollback(b);
	return rc;
}

uint64_t bmap_changes(struct bmap *b)
{
	return (uint64_t)sqlite3_total_changes64(b->db);
}

/* Harmless without a transaction: some errors (FULL, IOERR) already
 * rolled it back inside SQLite. */
void bmap_rollback(struct bmap *b)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROLLBACK);

	b->pend_delta = 0;
	if (sqlite3_get_autocommit(b->db))
		return;
	sqlite3_step(s);
	sqlite3_reset(s);
}

int bmap_snapshot_begin(struct bmap *b)
{
	uint64_t n;
	int rc;

	if (!sqlite3_get_autocommit(b->db))
		return -EINVAL;         /* inside a transaction already */
	rc = stmt_run(b, bmap_stmt(b, ST_SNAP_BEGIN));
	if (!rc)
		rc = stmt_u64(b, bmap_stmt(b, ST_SNAP_PIN), &n);
	if (rc)
		bmap_rollback(b);
	return rc;
}

void bmap_snapshot_end(struct bmap *b)
{
	bmap_rollback(b);               /* nothing was written: nothing lost */
}

/* Savepoint around one call of several statements; see ST_SP_BEGIN. */
static int op_begin(struct bmap *b)
{
	return stmt_run(b, bmap_stmt(b, ST_SP_BEGIN));
}

static int op_end(struct bmap *b, int rc)
{
	if (rc == 0) {
		rc = stmt_run(b, bmap_stmt(b, ST_SP_RELEASE));
		if (rc == 0)
			return 0;
	}
	/* Errors here are ignored: rc already says what went wrong, and
	 * b->errmsg keeps its message. */
	sqlite3_step(b->st[ST_SP_ROLLBACK]);
	sqlite3_reset(b->st[ST_SP_ROLLBACK]);
	sqlite3_step(b->st[ST_SP_RELEASE]);
	sqlite3_reset(b->st[ST_SP_RELEASE]);
	return rc;
}

/* ---- inodes ------------------------------------------------------------- */

/* Step a statement that returns at most one inode row, then reset it. */
static int stmt_inode(struct bmap *b, sqlite3_stmt *s, struct bmap_inode *out)
{
	int src, rc;

	src = sqlite3_step(s);
	if (src == SQLITE_ROW)
		rc = inode_from_row(s, out);
	else if (src == SQLITE_DONE)
		rc = -ENOENT;
	else
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

int bmap_inode_get(struct bmap *b, uint64_t ino, struct bmap_inode *out)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_INODE_GET);

	bind_i64(s, 1, u64_bits(ino));
	return stmt_inode(b, s, out);
}

int bmap_inode_lookup(struct bmap *b, uint64_t parent, const char *name, struct bmap_inode *out)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_INODE_LOOKUP);
	size_t len;
	int rc;

	rc = name_len(name, &len);
	if (rc)
		return rc;
	bind_i64(s, 1, u64_bits(parent));
	bind_name(s, 2, name, len);
	return stmt_inode(b, s, out);
}

int bmap_inode_insert(struct bmap *b, struct bmap_inode *in)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_INODE_INSERT);
	size_t len;
	int rc;

	rc = name_check(in->parent, in->name, &len);
	if (rc)
		return rc;
	if (in->parent > (uint64_t)INT64_MAX || in->node > (uint64_t)INT64_MAX)
		return -EINVAL;
	bind_i64(s, 1, (sqlite3_int64)in->parent);
	bind_name(s, 2, in->name, len);
	bind_i64(s, 3, in->kind);
	bind_i64(s, 4, in->mode);
	bind_i64(s, 5, in->uid);
	bind_i64(s, 6, in->gid);
	bind_i64(s, 7, in->atime_ns);
	bind_i64(s, 8, in->mtime_ns);
	bind_i64(s, 9, in->ctime_ns);
	bind_i64(s, 10, u64_bits(in->size));
	bind_i64(s, 11, (sqlite3_int64)in->node);
	rc = stmt_run(b, s);
	if (rc == 0)
		in->ino = (uint64_t)sqlite3_last_insert_rowid(b->db);
	return rc;
}

int bmap_inode_update(struct bmap *b, const struct bmap_inode *in)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_INODE_UPDATE);
	int rc;

	if (in->node > (uint64_t)INT64_MAX)
		return -EINVAL;
	bind_i64(s, 1, u64_bits(in->ino));
	bind_i64(s, 2, in->kind);
	bind_i64(s, 3, in->mode);
	bind_i64(s, 4, in->uid);
	bind_i64(s, 5, in->gid);
	bind_i64(s, 6, in->atime_ns);
	bind_i64(s, 7, in->mtime_ns);
	bind_i64(s, 8, in->ctime_ns);
	bind_i64(s, 9, u64_bits(in->size));
	bind_i64(s, 10, (sqlite3_int64)in->node);
	rc = stmt_run(b, s);
	if (rc == 0 && sqlite3_changes(b->db) == 0)
		rc = -ENOENT;
	return rc;
}

int bmap_inode_move(struct bmap *b, uint64_t ino, uint64_t parent, const char *name)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_INODE_MOVE);
	size_t len;
	int rc;

	rc = name_check(parent, name, &len);
	if (rc)
		return rc;
	if (parent > (uint64_t)INT64_MAX)
		return -EINVAL;
	bind_i64(s, 1, u64_bits(ino));
	bind_i64(s, 2, (sqlite3_int64)parent);
	bind_name(s, 3, name, len);
	rc = stmt_run(b, s);
	if (rc == 0 && sqlite3_changes(b->db) == 0)
		rc = -ENOENT;
	return rc;
}

int bmap_inode_delete(struct bmap *b, uint64_t ino)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_INODE_DELETE);
	int rc;

	if (ino == BMAP_ROOT_INO)
		return -EBUSY;          /* the root always exists */
	bind_i64(s, 1, u64_bits(ino));
	rc = stmt_run(b, s);
	if (rc == 0 && sqlite3_changes(b->db) == 0)
		rc = -ENOENT;
	return rc;
}

/* Call fn for every inode row s returns; see "Walks" at the top. */
static int walk_inodes(struct bmap *b, sqlite3_stmt *s,
		       int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx)
{
	struct bmap_inode in;
	int src, rc = 0;

	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		rc = inode_from_row(s, &in);
		if (rc)
			break;
		b->walking = 1;
		rc = fn(ctx, &in);
		b->walking = 0;
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

int bmap_dir_list(struct bmap *b, uint64_t dir, uint64_t after,
		  int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_DIR_LIST);

	bind_i64(s, 1, u64_bits(dir));
	bind_i64(s, 2, clamp_i64(after));
	return walk_inodes(b, s, fn, ctx);
}

int bmap_dir_count(struct bmap *b, uint64_t dir, uint64_t *count)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_DIR_COUNT);

	bind_i64(s, 1, u64_bits(dir));
	return stmt_u64(b, s, count);
}

int bmap_orphan_list(struct bmap *b, int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx)
{
	return walk_inodes(b, bmap_stmt(b, ST_ORPHAN_LIST), fn, ctx);
}

int bmap_inode_count(struct bmap *b, uint64_t *count)
{
	return stmt_u64(b, bmap_stmt(b, ST_INODE_COUNT), count);
}

/* ---- map nodes ---------------------------------------------------------- */

int bmap_node_create(struct bmap *b, struct bmap_node *n)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_NODE_CREATE);
	int rc;

	if (n->parent > (uint64_t)INT64_MAX)
		return -EINVAL;
	bind_i64(s, 1, (sqlite3_int64)n->parent);
	bind_i64(s, 2, u64_bits(n->inherit));
	rc = stmt_run(b, s);
	if (rc == 0)
		n->id = (uint64_t)sqlite3_last_insert_rowid(b->db);
	return rc;
}

int bmap_node_get(struct bmap *b, uint64_t id, struct bmap_node *out)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_NODE_GET);
	int src, rc = 0;

	bind_i64(s, 1, u64_bits(id));
	src = sqlite3_step(s);
	if (src == SQLITE_ROW) {
		out->id = (uint64_t)sqlite3_column_int64(s, 0);
		out->parent = (uint64_t)sqlite3_column_int64(s, 1);
		out->inherit = bits_u64(sqlite3_column_int64(s, 2));
	} else if (src == SQLITE_DONE) {
		rc = -ENOENT;
	} else {
		rc = bmap_errno(b, src);
	}
	sqlite3_reset(s);
	return rc;
}

int bmap_node_update(struct bmap *b, const struct bmap_node *n)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_NODE_UPDATE);
	int rc;

	if (n->parent > (uint64_t)INT64_MAX)
		return -EINVAL;
	bind_i64(s, 1, u64_bits(n->id));
	bind_i64(s, 2, (sqlite3_int64)n->parent);
	bind_i64(s, 3, u64_bits(n->inherit));
	rc = stmt_run(b, s);
	if (rc == 0 && sqlite3_changes(b->db) == 0)
		rc = -ENOENT;
	return rc;
}

/* The node row and its block rows go together or not at all. */
int bmap_node_delete(struct bmap *b, uint64_t id)
{
	sqlite3_stmt *s;
	int rc;

	rc = op_begin(b);
	if (rc)
		return rc;

	s = bmap_stmt(b, ST_NODE_DELETE);
	bind_i64(s, 1, u64_bits(id));
	rc = stmt_run(b, s);
	if (rc == 0 && sqlite3_changes(b->db) == 0)
		rc = -ENOENT;
	if (rc)
		goto out;

	s = bmap_stmt(b, ST_NODE_DELETE_ROWS);
	bind_i64(s, 1, u64_bits(id));
	rc = stmt_run(b, s);
out:
	return op_end(b, rc);
}

int bmap_node_children(struct bmap *b, uint64_t id, uint64_t *count)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_NODE_CHILDREN);

	bind_i64(s, 1, u64_bits(id));
	return stmt_u64(b, s, count);
}

/* ---- rows --------------------------------------------------------------- */

/* Delete node's data row at lblock, if it has one, and count it out. */
static int row_del_data(struct bmap *b, uint64_t node, uint64_t lblock)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_DEL_DATA);
	int rc;

	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, u64_bits(lblock));
	rc = stmt_run(b, s);
	if (!rc && sqlite3_changes(b->db))
		rc = nrows_add(b, node, -1);
	return rc;
}

/* Bind (node, lblock, chunk, slot, cksum) as ?1..?5.  A tombstone stores
 * zeros, so equal content means equal rows. */
static void bind_row(sqlite3_stmt *s, uint64_t node, uint64_t lblock, const struct chunk_loc *loc)
{
	int tomb = loc->chunk_id == 0;

	bind_i64(s, 1, (sqlite3_int64)node);
	bind_i64(s, 2, (sqlite3_int64)lblock);
	bind_i64(s, 3, (sqlite3_int64)loc->chunk_id);
	bind_i64(s, 4, tomb ? 0 : loc->slot);
	bind_i64(s, 5, tomb ? 0 : u64_bits(loc->cksum));
}

static int row_put(struct bmap *b, uint64_t node, uint64_t lblock, const struct chunk_loc *loc)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_PUT);
	int tomb = loc->chunk_id == 0, rc;
	/* node.nrows: data over data changes no count, data over nothing
	 * counts one in.  Which one to try first: what the last put found,
	 * as a flush puts runs of rows in order, fresh (after a snapshot)
	 * or overwritten.  A tombstone first takes out the data row it
	 * replaces (counted); it and data over a tombstone take the UPSERT. */
	if (!tomb) {
		for (int i = 0; i < 2; i++) {
			bool ins = b->put_new ^ i;
			sqlite3_stmt *u = bmap_stmt(b, ins ? ST_ROW_INSERT : ST_ROW_UPDATE);

			bind_row(u, node, lblock, loc);
			rc = stmt_run(b, u);
			if (rc)
				return rc;
			if (sqlite3_changes(b->db)) {
				b->put_new = ins;
				return ins ? nrows_add(b, node, 1) : 0;
			}
		}
	} else {
		rc = row_del_data(b, node, lblock);
		if (rc)
			return rc;
	}
	bind_row(s, node, lblock, loc);
	rc = stmt_run(b, s);
	if (!rc && !tomb)
		rc = nrows_add(b, node, 1);
	return rc;
}

static int row_del(struct bmap *b, uint64_t node, uint64_t lblock)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_DEL);
	int rc = row_del_data(b, node, lblock);

	if (rc)
		return rc;
	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, u64_bits(lblock));
	return stmt_run(b, s);          /* a tombstone, if any */
}

/*
 * put and del run two statements or more and count at commit.  Called
 * outside a transaction (the tests do), they take a savepoint of their
 * own, so that the rows and the count commit together, at its release.
 */
static bool in_own_savepoint(struct bmap *b, int *rc)
{
	*rc = 0;
	if (!sqlite3_get_autocommit(b->db))
		return false;
	*rc = op_begin(b);
	return true;
}

static int own_savepoint_end(struct bmap *b, int rc)
{
	if (!rc)
		rc = nrows_apply(b);
	b->pend_delta = 0;              /* rolled back if rc, written if not */
	return op_end(b, rc);
}

int bmap_row_put(struct bmap *b, uint64_t node, uint64_t lblock, const struct chunk_loc *loc)
{
	bool own;
	int rc;

	/* Ordered by SQL as signed integers; lblock INT64_MAX is kept free
	 * so that the clamped bounds of foreach and del_from are exact. */
	if (node > (uint64_t)INT64_MAX || lblock >= (uint64_t)INT64_MAX ||
	    loc->chunk_id > (uint64_t)INT64_MAX)
		return -EINVAL;
	own = in_own_savepoint(b, &rc);
	if (rc)
		return rc;
	rc = row_put(b, node, lblock, loc);
	return own ? own_savepoint_end(b, rc) : rc;
}

int bmap_row_del(struct bmap *b, uint64_t node, uint64_t lblock)
{
	bool own;
	int rc;

	own = in_own_savepoint(b, &rc);
	if (rc)
		return rc;
	rc = row_del(b, node, lblock);
	return own ? own_savepoint_end(b, rc) : rc;
}

/* The data rows of node in [from, below): node.nrows moves by these. */
static int rows_between(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
			uint64_t *n)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_COUNT_RANGE);

	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, clamp_i64(from));
	bind_i64(s, 3, clamp_i64(below));
	return stmt_u64(b, s, n);
}

int bmap_row_del_from(struct bmap *b, uint64_t node, uint64_t from)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_DEL_FROM);
	uint64_t n = 0;
	int rc;

	rc = op_begin(b);
	if (rc)
		return rc;
	rc = rows_between(b, node, from, UINT64_MAX, &n);
	if (!rc) {
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, clamp_i64(from));
		rc = stmt_run(b, s);
	}
	if (!rc)
		rc = nrows_add_now(b, node, -(int64_t)n);
	return op_end(b, rc);
}

/* Call fn(lblock, loc) for every row s returns as (lblock, chunk, slot,
 * cksum); see "Walks" at the top. */
static int walk_rows(struct bmap *b, sqlite3_stmt *s,
		     int (*fn)(void *ctx, uint64_t lblock, const struct chunk_loc *loc), void *ctx)
{
	struct chunk_loc loc;
	int src, rc = 0;

	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		loc_from_cols(s, 1, &loc);
		loc.lblock = (uint64_t)sqlite3_column_int64(s, 0);
		b->walking = 1;
		rc = fn(ctx, loc.lblock, &loc);
		b->walking = 0;
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

/* The same for rows returned as (node, lblock, chunk, slot, cksum). */
static int walk_node_rows(struct bmap *b, sqlite3_stmt *s,
			  int (*fn)(void *ctx, uint64_t node, uint64_t lblock,
				    const struct chunk_loc *loc),
			  void *ctx)
{
	struct chunk_loc loc;
	int src, rc = 0;

	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		loc_from_cols(s, 2, &loc);
		loc.lblock = (uint64_t)sqlite3_column_int64(s, 1);
		b->walking = 1;
		rc = fn(ctx, (uint64_t)sqlite3_column_int64(s, 0), loc.lblock, &loc);
		b->walking = 0;
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

int bmap_row_foreach(struct bmap *b, uint64_t node, uint64_t below,
		     int (*fn)(void *ctx, uint64_t lblock, const struct chunk_loc *loc), void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_FOREACH);

	/* below = UINT64_MAX, "every row", must not turn into -1. */
	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, clamp_i64(below));
	return walk_rows(b, s, fn, ctx);
}

int bmap_row_count(struct bmap *b, uint64_t node, uint64_t *count)
{
	sqlite3_stmt *s;
	int rc;

	if (b->format < 2)
		return bmap_row_count_scan(b, node, count);
	rc = nrows_apply(b);
	if (rc)
		return rc;
	s = bmap_stmt(b, ST_NODE_NROWS);
	bind_i64(s, 1, u64_bits(node));
	rc = stmt_u64(b, s, count);
	if (rc == -ENOENT) {            /* no such node: no rows */
		*count = 0;
		rc = 0;
	}
	return rc;
}

int bmap_row_count_scan(struct bmap *b, uint64_t node, uint64_t *count)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_COUNT);

	bind_i64(s, 1, u64_bits(node));
	return stmt_u64(b, s, count);
}

/* ---- garbage collection and check --------------------------------------- */

/*
 * Reference counts per chunk id, in an open-addressing hash table (linear
 * probing, key 0 = empty slot, as chunk 0 is never counted).  Sized for
 * the number of chunks, typically thousands, not the number of rows.
 */
struct refcount {
	uint64_t chunk;
	uint64_t nrefs;
};

struct reftab {
	struct refcount *e;
	size_t cap;                     /* a power of two */
	size_t used;
};

static size_t reftab_hash(uint64_t k, size_t cap)
{
	return (size_t)((k * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
}

static int reftab_grow(struct reftab *t)
{
	size_t ncap = t->cap ? t->cap * 2 : 1024, i, j;
	struct refcount *ne;

	ne = calloc(ncap, sizeof(*ne));
	if (!ne)
		return -ENOMEM;
	for (i = 0; i < t->cap; i++) {
		if (!t->e[i].chunk)
			continue;
		for (j = reftab_hash(t->e[i].chunk, ncap); ne[j].chunk; j = (j + 1) & (ncap - 1))
			;
		ne[j] = t->e[i];
	}
	free(t->e);
	t->e = ne;
	t->cap = ncap;
	return 0;
}

/* Count one more reference; *hint caches the last slot, as rows of one
 * node come in runs of the same chunk. */
static int reftab_add(struct reftab *t, uint64_t chunk, size_t *hint)
{
	size_t i;
	int rc;

	if (t->cap && t->e[*hint].chunk == chunk) {
		t->e[*hint].nrefs++;
		return 0;
	}
	if ((t->used + 1) * 2 > t->cap) {
		rc = reftab_grow(t);
		if (rc)
			return rc;
	}
	for (i = reftab_hash(chunk, t->cap); t->e[i].chunk; i = (i + 1) & (t->cap - 1)) {
		if (t->e[i].chunk == chunk)
			break;
	}
	if (!t->e[i].chunk) {
		t->e[i].chunk = chunk;
		t->used++;
	}
	t->e[i].nrefs++;
	*hint = i;
	return 0;
}

static int refcount_cmp(const void *a, const void *b)
{
	const struct refcount *x = a, *y = b;

	return x->chunk < y->chunk ? -1 : x->chunk > y->chunk;
}

/* One scan of the table; fn runs after it, with no statement active. */
int bmap_chunk_refs(struct bmap *b, int (*fn)(void *ctx, uint64_t chunk_id, uint64_t nrefs),
		    void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_CHUNK_SCAN);
	struct reftab t = { 0 };
	size_t hint = 0, i, n;
	int src, rc = 0;

	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		rc = reftab_add(&t, (uint64_t)sqlite3_column_int64(s, 0), &hint);
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	if (rc)
		goto out;

	/* Pack the used entries to the front, then sort them by chunk. */
	for (i = 0, n = 0; i < t.cap; i++) {
		if (t.e[i].chunk)
			t.e[n++] = t.e[i];
	}
	if (n)
		qsort(t.e, n, sizeof(*t.e), refcount_cmp);
	b->walking = 1;         /* same rule for every walk, though none is active */
	for (i = 0; i < n && rc == 0; i++)
		rc = fn(ctx, t.e[i].chunk, t.e[i].nrefs);
	b->walking = 0;
out:
	free(t.e);
	return rc;
}

int bmap_rows_all(struct bmap *b,
		  int (*fn)(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc),
		  void *ctx)
{
	return walk_node_rows(b, bmap_stmt(b, ST_ROWS_ALL), fn, ctx);
}

int bmap_row_range(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
		   int (*fn)(void *ctx, uint64_t lblock, const struct chunk_loc *loc), void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_RANGE);

	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, clamp_i64(from));
	bind_i64(s, 3, clamp_i64(below));
	return walk_rows(b, s, fn, ctx);
}

/* ---- snapshots ------------------------------------------------------------- */

static int snap_from_row(sqlite3_stmt *s, struct bmap_snap *out)
{
	const void *name = sqlite3_column_blob(s, 2);
	int len = sqlite3_column_bytes(s, 2);

	if (len <= 0 || len > BMAP_NAME_MAX)
		return -EUCLEAN;
	memset(out, 0, sizeof(*out));
	out->id = (uint64_t)sqlite3_column_int64(s, 0);
	out->dir = (uint64_t)sqlite3_column_int64(s, 1);
	memcpy(out->name, name, (size_t)len);
	out->created_ns = sqlite3_column_int64(s, 3);
	return 0;
}

/* Step a statement that returns at most one snapshot row, then reset it. */
static int stmt_snap(struct bmap *b, sqlite3_stmt *s, struct bmap_snap *out)
{
	int src, rc;

	src = sqlite3_step(s);
	if (src == SQLITE_ROW)
		rc = snap_from_row(s, out);
	else if (src == SQLITE_DONE)
		rc = -ENOENT;
	else
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

int bmap_snap_insert(struct bmap *b, struct bmap_snap *sn)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SNAP_INSERT);
	size_t len;
	int rc = name_len(sn->name, &len);

	if (!rc && (len == 0 || sn->dir == 0 || sn->dir > (uint64_t)INT64_MAX))
		rc = -EINVAL;
	if (rc)
		return rc;
	bind_i64(s, 1, (sqlite3_int64)sn->dir);
	bind_name(s, 2, sn->name, len);
	bind_i64(s, 3, sn->created_ns);
	rc = stmt_run(b, s);
	if (rc == 0)
		sn->id = (uint64_t)sqlite3_last_insert_rowid(b->db);
	return rc;
}

int bmap_snap_get(struct bmap *b, uint64_t id, struct bmap_snap *out)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SNAP_GET);

	bind_i64(s, 1, u64_bits(id));
	return stmt_snap(b, s, out);
}

int bmap_snap_lookup(struct bmap *b, uint64_t dir, const char *name, struct bmap_snap *out)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SNAP_LOOKUP);
	size_t len;
	int rc = name_len(name, &len);

	if (rc)
		return rc;
	bind_i64(s, 1, u64_bits(dir));
	bind_name(s, 2, name, len);
	return stmt_snap(b, s, out);
}

int bmap_snap_list(struct bmap *b, uint64_t dir, uint64_t after,
		   int (*fn)(void *ctx, const struct bmap_snap *sn), void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, dir ? ST_SNAP_LIST : ST_SNAP_LIST_ALL);
	struct bmap_snap sn;
	int src, rc = 0;

	if (dir) {
		bind_i64(s, 1, u64_bits(dir));
		bind_i64(s, 2, clamp_i64(after));
	} else {
		bind_i64(s, 1, clamp_i64(after));
	}
	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		rc = snap_from_row(s, &sn);
		if (rc)
			break;
		b->walking = 1;
		rc = fn(ctx, &sn);
		b->walking = 0;
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

int bmap_snap_rename(struct bmap *b, uint64_t id, const char *name)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SNAP_RENAME);
	size_t len;
	int rc = name_len(name, &len);

	if (!rc && len == 0)
		rc = -EINVAL;
	if (rc)
		return rc;
	bind_i64(s, 1, u64_bits(id));
	bind_name(s, 2, name, len);
	rc = stmt_run(b, s);
	if (rc == 0 && sqlite3_changes(b->db) == 0)
		rc = -ENOENT;
	return rc;
}

/* The snapshot row and its inode rows go together or not at all. */
int bmap_snap_delete(struct bmap *b, uint64_t id)
{
	sqlite3_stmt *s;
	int rc = op_begin(b);

	if (rc)
		return rc;
	s = bmap_stmt(b, ST_SNAP_DELETE);
	bind_i64(s, 1, u64_bits(id));
	rc = stmt_run(b, s);
	if (rc == 0 && sqlite3_changes(b->db) == 0)
		rc = -ENOENT;
	if (rc == 0) {
		s = bmap_stmt(b, ST_SNAP_DELETE_INODES);
		bind_i64(s, 1, u64_bits(id));
		rc = stmt_run(b, s);
	}
	return op_end(b, rc);
}

int bmap_snap_count(struct bmap *b, uint64_t dir, uint64_t *count)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SNAP_COUNT);

	bind_i64(s, 1, u64_bits(dir));
	return stmt_u64(b, s, count);
}

int bmap_sinode_insert(struct bmap *b, uint64_t snap, const struct bmap_inode *in)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SINODE_INSERT);
	size_t len;
	int rc = name_check(in->parent, in->name, &len);

	if (rc)
		return rc;
	if (snap > (uint64_t)INT64_MAX || in->ino > (uint64_t)INT64_MAX ||
	    in->parent > (uint64_t)INT64_MAX || in->node > (uint64_t)INT64_MAX)
		return -EINVAL;
	bind_i64(s, 1, (sqlite3_int64)snap);
	bind_i64(s, 2, (sqlite3_int64)in->ino);
	bind_i64(s, 3, (sqlite3_int64)in->parent);
	bind_name(s, 4, in->name, len);
	bind_i64(s, 5, in->kind);
	bind_i64(s, 6, in->mode);
	bind_i64(s, 7, in->uid);
	bind_i64(s, 8, in->gid);
	bind_i64(s, 9, in->atime_ns);
	bind_i64(s, 10, in->mtime_ns);
	bind_i64(s, 11, in->ctime_ns);
	bind_i64(s, 12, u64_bits(in->size));
	bind_i64(s, 13, (sqlite3_int64)in->node);
	return stmt_run(b, s);
}

int bmap_sinode_get(struct bmap *b, uint64_t snap, uint64_t ino, struct bmap_inode *out)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SINODE_GET);

	bind_i64(s, 1, u64_bits(snap));
	bind_i64(s, 2, u64_bits(ino));
	return stmt_inode(b, s, out);
}

int bmap_sinode_lookup(struct bmap *b, uint64_t snap, uint64_t parent, const char *name,
		       struct bmap_inode *out)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SINODE_LOOKUP);
	size_t len;
	int rc = name_len(name, &len);

	if (rc)
		return rc;
	bind_i64(s, 1, u64_bits(snap));
	bind_i64(s, 2, u64_bits(parent));
	bind_name(s, 3, name, len);
	return stmt_inode(b, s, out);
}

int bmap_sinode_list(struct bmap *b, uint64_t snap, uint64_t parent, uint64_t after,
		     int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SINODE_LIST);

	bind_i64(s, 1, u64_bits(snap));
	bind_i64(s, 2, u64_bits(parent));
	bind_i64(s, 3, clamp_i64(after));
	return walk_inodes(b, s, fn, ctx);
}

int bmap_sinode_all(struct bmap *b, uint64_t snap,
		    int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SINODE_ALL);

	bind_i64(s, 1, u64_bits(snap));
	return walk_inodes(b, s, fn, ctx);
}

int bmap_inodes_add(void *ctx, const struct bmap_inode *in)
{
	struct bmap_inodes *l = ctx;

	if (ARRAY_RESERVE(l->v, l->cap, l->n, 16))
		return l->rc = -ENOMEM;
	l->v[l->n++] = *in;
	return 0;
}

int bmap_subtree(struct bmap *b, uint64_t dir,
		 int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_SUBTREE);

	bind_i64(s, 1, u64_bits(dir));
	return walk_inodes(b, s, fn, ctx);
}

/* ---- node lifetime ------------------------------------------------------------ */

int bmap_node_refs(struct bmap *b, uint64_t node, uint64_t *count)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_NODE_REFS);

	bind_i64(s, 1, u64_bits(node));
	return stmt_u64(b, s, count);
}

int bmap_node_only_child(struct bmap *b, uint64_t node, uint64_t *child)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_NODE_ONLY_CHILD);

	bind_i64(s, 1, u64_bits(node));
	return stmt_u64(b, s, child);
}

int bmap_node_merge_some(struct bmap *b, uint64_t node, uint64_t child, uint64_t max_rows,
			 bool *done)
{
	struct bmap_node n, c;
	uint64_t end = INT64_MAX;       /* this batch: the node's rows below end */
	uint64_t before = 0, moved = 0;
	sqlite3_stmt *s;
	int rc;

	*done = false;
	rc = bmap_node_get(b, node, &n);
	if (!rc)
		rc = bmap_node_get(b, child, &c);
	if (!rc && c.parent != node)
		rc = -EINVAL;
	if (!rc && max_rows < INT64_MAX) {
		s = bmap_stmt(b, ST_NODE_ROW_NTH);
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, (int64_t)max_rows);
		rc = stmt_u64(b, s, &end);
		if (rc == -ENOENT) {    /* fewer rows than that: the last batch */
			end = INT64_MAX;
			rc = 0;
		}
	}
	if (rc)
		return rc;
	rc = op_begin(b);
	if (rc)
		return rc;
	/* node.nrows: the node loses every data row below end (before),
	 * the child gains those left after the drop (moved) */
	rc = rows_between(b, node, 0, end, &before);
	if (!rc) {
		s = bmap_stmt(b, ST_NODE_MERGE_DROP);
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, u64_bits(child));
		bind_i64(s, 3, clamp_i64(c.inherit));
		bind_i64(s, 4, clamp_i64(end));
		rc = stmt_run(b, s);
	}
	if (!rc)
		rc = rows_between(b, node, 0, end, &moved);
	if (!rc) {
		s = bmap_stmt(b, ST_NODE_MERGE_MOVE);
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, u64_bits(child));
		bind_i64(s, 3, clamp_i64(end));
		rc = stmt_run(b, s);
	}
	if (!rc)
		rc = nrows_add_now(b, node, -(int64_t)before);
	if (!rc)
		rc = nrows_add_now(b, child, (int64_t)moved);
	if (!rc && end == INT64_MAX) {
		/* blocks the node itself could not see stay invisible */
		c.parent = n.parent;
		if (n.inherit < c.inherit)
			c.inherit = n.inherit;
		rc = bmap_node_update(b, &c);
		if (!rc) {
			s = bmap_stmt(b, ST_NODE_DELETE);
			bind_i64(s, 1, u64_bits(node));
			rc = stmt_run(b, s);
		}
		*done = !rc;
	}
	return op_end(b, rc);
}

int bmap_node_merge(struct bmap *b, uint64_t node, uint64_t child)
{
	bool done;

	return bmap_node_merge_some(b, node, child, INT64_MAX, &done);
}

int bmap_node_list(struct bmap *b, int (*fn)(void *ctx, const struct bmap_node *n), void *ctx)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_NODE_LIST);
	struct bmap_node n;
	int src, rc = 0;

	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		n.id = (uint64_t)sqlite3_column_int64(s, 0);
		n.parent = (uint64_t)sqlite3_column_int64(s, 1);
		n.inherit = bits_u64(sqlite3_column_int64(s, 2));
		b->walking = 1;
		rc = fn(ctx, &n);
		b->walking = 0;
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

int bmap_row_relocate(struct bmap *b, uint64_t node, uint64_t lblock,
		      const struct chunk_loc *from, const struct chunk_loc *to)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_ROW_RELOCATE);
	int rc;

	/* The checksums differ: a version-2 slot's is seeded with its chunk and
	 * slot.  The caller read the block (verified) before copying it. */
	if (to->chunk_id == 0 || to->chunk_id > (uint64_t)INT64_MAX)
		return -EINVAL;
	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, u64_bits(lblock));
	bind_i64(s, 3, u64_bits(from->chunk_id));
	bind_i64(s, 4, from->slot);
	bind_i64(s, 5, (sqlite3_int64)to->chunk_id);
	bind_i64(s, 6, to->slot);
	bind_i64(s, 7, u64_bits(to->cksum));
	rc = stmt_run(b, s);
	if (rc == 0 && sqlite3_changes(b->db) == 0)
		rc = -ENOENT;
	return rc;
}
