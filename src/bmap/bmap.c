/*
 * block map: the index of vsnapfs in one SQLite database (index.sqlite).
 *
 * This file is the only place in vsnapfs that calls sqlite3_*.  It owns the
 * schema (bmap_schema_sql below, drawn in docs/on-disk-format.md), its
 * version, and every SQL statement the daemon runs.
 *
 * Extents (format 3).  A node's blocks are rows of table extent, (node,
 * lblock) -> (nblocks, chunk, slot), kept in the canonical form of src/emap:
 * disjoint, and no two touching rows that could be one.  Every call that
 * edits a range works the same way (ext_edit): read the rows that overlap
 * or touch the range (one B-tree descent for the row at or before it, one
 * range scan for the rest) into a small emap, apply the edit there with a
 * diff, and write the diff back as row edits (a removed and an added extent
 * with the same lblock are one UPDATE; the rest DELETEs, then INSERTs).  So
 * the rows are the canonical form of the node's extents after every call,
 * which check verifies and the model test asserts.  The emap and the diff
 * live in struct bmap and are reused: a put allocates nothing once warm.
 *
 * Statements.  Every statement is prepared once and kept in b->st[]: the
 * ones valid for any format at open, the extent ones (ST_F3_FIRST on) only
 * once the index is format 3 (at open, or when bmap_upgrade_run() ends).  A
 * call binds, steps and resets; no call returns with a statement still
 * active, so a handle is always at rest between calls.  The upgrade uses
 * one-off statements of its own, as only it reads table bmap.
 *
 * Block counts.  node.nblocks is the number of a node's data blocks (sum of
 * nblocks of its data rows): st_blocks of a volume whose map is not loaded,
 * and the sizes vsnapctl lists, in O(1) instead of a scan under the
 * daemon's index lock.  Every call that adds, removes or moves data blocks
 * keeps it in the same transaction: put, del and relocate through a pending
 * delta (struct bmap) written at commit, the bulk calls (del_from, merge)
 * at once.  Not SQL triggers: they cost too much of the put rate
 * (docs/design.md, "Schema").  bmap_node_blocks_scan() adds up for real;
 * check compares.
 *
 * Walks.  bmap_dir_list(), bmap_orphan_list(), bmap_ext_range() and
 * bmap_exts_all() call fn while their statement is active.  fn must not
 * call into the same handle; b->walking turns that mistake into an assert
 * failure instead of a silently reset cursor.  bmap_chunk_refs() calls fn
 * after its scan, and the upgrade's row() runs during its scan; both keep
 * the same rule so that callers need only one.
 *
 * Unsigned values.  SQLite integers are signed 64-bit.  Values that SQL
 * never compares (node inherit, inode size, meta values) are stored as the
 * same 64 bits (u64_bits/bits_u64), so every uint64_t round-trips exactly,
 * and so does every key of an equality match (an id above 2^63 simply
 * matches nothing).  Values SQL orders (ino, node ids, lblock, chunk ids)
 * stay below INT64_MAX: ids come from AUTOINCREMENT, lblocks are below
 * BMAP_LBLOCK_LIMIT, puts refuse larger chunk ids, and the bound of a range
 * query (after, below, from) is clamped to INT64_MAX, which is then exact.
 *
 * No index on extent(chunk, slot).  It would serve only garbage collection
 * and check, and cost the flush path a good part of its put rate
 * (docs/performance.md, "No index on chunk").  bmap_chunk_refs() therefore
 * scans the table once and adds up in a small hash table keyed by chunk id
 * (memory grows with the number of chunks, not of rows; a GROUP BY would
 * sort every row), and the extents of given chunks come from one scan of
 * every row (bmap_exts_all()), never from a scan per chunk.
 *
 * Upgrade from format 2 (bmap_upgrade_run, docs/design.md D6).  States, all
 * in the file: user_version 2 without meta.upgrade (nothing done);
 * user_version BMAP_UV_UPGRADING_2_3 with meta.upgrade = 1, table extent and
 * table upgrade_nblocks (the data blocks counted so far per node) and a
 * cursor (steps done: every old row before the cursor is in extent,
 * coalesced), which this code opens as format 2 and any older vsnapfs
 * refuses; user_version 3 (done, in the commit that drops bmap).  Each step
 * is one commit, after ops->sync().  Rows that continue the last extent
 * written by the step before extend that row, so the result is canonical
 * whatever the step size.
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
#include "vsnapfs/emap.h"

#define BMAP_APPLICATION_ID  0x76736e70     /* "vsnp" */
#define BMAP_BUSY_TIMEOUT_MS 5000
/* SQLite's page cache per connection, KiB.  The handle that writes keeps
 * 64 MiB (flushes walk the B-tree of the rows they change); the extra
 * readers (map page loads, GC and check scans) read through the host's
 * page cache and keep 8 MiB, enough for the interior pages of a large
 * index: their cache is memory the map cache's limit (-o map_cache) does
 * not see, and with 64 MiB each it doubled the daemon's RSS past it
 * (docs/performance.md, "Scale figures after step 7b"). */
#define BMAP_CACHE_KIB        65536
#define BMAP_READER_CACHE_KIB 8192
#define BMAP_UPGRADE_STEP_ROWS (1u << 20)   /* rows per upgrade step by default */
#define BMAP_MERGE_STEP_EXTS 4096           /* extents per step of bmap_node_merge */

/*
 * user_version of an index between the first and the last commit of
 * bmap_upgrade_run(): 0x76320003, "v2" then 3, format 2 on its way to 3.
 * From the first commit on an older vsnapfs must refuse the file: it would
 * write rows into bmap behind the cursor, which the resumed upgrade never
 * reads again (silent loss).  Format-2 code accepts user_version 1..2 only
 * (bmap_check_format), so any other value does that.  A value of its own
 * rather than 3 with meta.upgrade deciding: the header alone says which
 * table holds the blocks, as it does for every other format, so the check
 * at open stays one field, and code that knows only "3 = extents complete"
 * (an earlier build of format 3, a later format's upgrade) cannot take a
 * half-filled extent table for the whole map.  meta.upgrade keeps the
 * cursor; the two must agree (up_start).  Decimal: PRAGMA takes no hex.
 */
#define BMAP_UV_UPGRADING_2_3 1982988291
_Static_assert(BMAP_UV_UPGRADING_2_3 == 0x76320003, "v2 -> 3");

#define BMAP_STR_(x) #x
#define BMAP_STR(x)  BMAP_STR_(x)

_Static_assert(BMAP_LBLOCK_LIMIT == EMAP_LBLOCK_LIMIT, "bmap and emap share the lblock limit");

/*
 * Schema, version 3.  Created in one transaction by bmap_create(); the
 * comments are kept by SQLite in sqlite_schema, so `sqlite3 index.sqlite
 * .schema` shows them too.  Any change here needs a new BMAP_FORMAT_VERSION
 * and an upgrade.  Version 1 had no node.nrows; version 2 had one row per
 * block in table bmap (with a checksum) and node.nrows.  An index upgraded
 * from 2 keeps the text of its node table with the column renamed.
 */
static const char bmap_schema_sql[] =
	"CREATE TABLE meta (\n"
	"  key   TEXT PRIMARY KEY,   -- block_size, format_version, created_ns, next_chunk_id, ...\n"
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
	"  nblocks INTEGER NOT NULL DEFAULT 0  -- its data blocks (sum of nblocks of data extents), kept by bmap.c\n"
	");\n"
	"CREATE INDEX node_parent ON node(parent);\n"
	"\n"
	"CREATE TABLE extent (\n"
	"  node    INTEGER NOT NULL, -- node.id\n"
	"  lblock  INTEGER NOT NULL, -- first block inside the volume, < 2^48\n"
	"  nblocks INTEGER NOT NULL, -- >= 1; a data extent stays inside its chunk\n"
	"  chunk   INTEGER NOT NULL, -- chunk file id; 0: tombstone run, the blocks read as zeros\n"
	"  slot    INTEGER NOT NULL, -- first slot: block lblock+i is slot slot+i; 0 for a tombstone\n"
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

/*
 * Snapshot guids (issue 14; docs/design.md, "Snapshot identity"): a table
 * of its own, added without a new BMAP_FORMAT_VERSION because format-3
 * code that does not know it reads and writes the index correctly.
 * Created with a new index and by a writable open of an index without it
 * (guids_ensure), which also gives a guid to every snapshot without one
 * (made by such code) and drops the rows of snapshots it deleted.  Its
 * statements are prepared per call: they run once per snapshot taken,
 * sent or received, and a read-only handle of an index without the table
 * must still open.
 */
static const char bmap_guid_sql[] =
	"CREATE TABLE IF NOT EXISTS snapguid (\n"
	"  snap INTEGER PRIMARY KEY, -- snapshot.id\n"
	"  guid BLOB NOT NULL UNIQUE -- 16 random bytes, kept by send/receive across stores\n"
	");\n";

/*
 * Referenced blocks (issue 15; docs/design.md, "Referenced blocks"): per
 * node, the blocks it shows with data, its own and those its ancestors
 * give it: st_blocks of a live volume.  Kept by the volume layer, which
 * knows what each change replaced, and written with the log's REFS
 * records.  A node without a row is not counted (yet): the daemon counts
 * it in the background.  Additive like snapguid: created by a writable
 * open of a format-3 index without it, and by the upgrade; the trigger
 * drops a node's row with the node, whoever deletes it.
 */
static const char bmap_refs_sql[] =
	"CREATE TABLE IF NOT EXISTS refblocks (\n"
	"  node    INTEGER PRIMARY KEY, -- node.id\n"
	"  nblocks INTEGER NOT NULL     -- blocks it shows with data, own or inherited\n"
	");\n"
	"CREATE TRIGGER IF NOT EXISTS refblocks_gone AFTER DELETE ON node BEGIN\n"
	"  DELETE FROM refblocks WHERE node = old.id;\n"
	"END;\n";

/* The extent table as the upgrade creates it: the same text as above. */
static const char bmap_extent_sql[] =
	"CREATE TABLE extent (\n"
	"  node    INTEGER NOT NULL, -- node.id\n"
	"  lblock  INTEGER NOT NULL, -- first block inside the volume, < 2^48\n"
	"  nblocks INTEGER NOT NULL, -- >= 1; a data extent stays inside its chunk\n"
	"  chunk   INTEGER NOT NULL, -- chunk file id; 0: tombstone run, the blocks read as zeros\n"
	"  slot    INTEGER NOT NULL, -- first slot: block lblock+i is slot slot+i; 0 for a tombstone\n"
	"  PRIMARY KEY (node, lblock)\n"
	") WITHOUT ROWID;\n";

#define INODE_COLS "ino, parent, name, kind, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, size, node"
#define EXT_COLS   "lblock, nblocks, chunk, slot"

enum bmap_st {
	/* any format: the namespace, meta and transactions */
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
	ST_NODE_CHILDREN,
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
	ST_NODE_LIST,
	/* format 3 only: prepared once the index is format 3 */
	ST_F3_FIRST,
	ST_NODE_DELETE_EXTS = ST_F3_FIRST,
	ST_EXT_AT_OR_BEFORE,
	ST_EXT_WINDOW,
	ST_EXT_INSERT,
	ST_EXT_UPDATE,
	ST_EXT_DELETE,
	ST_EXT_DEL_FROM,
	ST_EXT_BLOCKS_FROM,
	ST_EXT_RANGE,
	ST_EXT_BLOCKS_IN,
	ST_EXT_NTH,
	ST_EXT_BELOW,
	ST_EXT_DEL_BELOW,
	ST_NODE_NBLOCKS,
	ST_NODE_NBLOCKS_ADD,
	ST_NODE_BLOCKS_SCAN,
	ST_NODE_EXTENTS,
	ST_CHUNK_SCAN,
	ST_EXTS_ALL,
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
	[ST_NODE_CHILDREN]    = "SELECT count(*) FROM node WHERE parent = ?1",

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
	[ST_NODE_LIST]        = "SELECT id, parent, inherit FROM node ORDER BY id",

	[ST_NODE_DELETE_EXTS] = "DELETE FROM extent WHERE node = ?1",
	/* The row covering block ?2, or the nearest before it: one descent. */
	[ST_EXT_AT_OR_BEFORE] = "SELECT " EXT_COLS " FROM extent WHERE node = ?1 AND lblock <= ?2"
				" ORDER BY lblock DESC LIMIT 1",
	/* the rows starting in [?2, ?3], the right neighbour included */
	[ST_EXT_WINDOW]       = "SELECT " EXT_COLS " FROM extent WHERE node = ?1 AND lblock >= ?2"
				" AND lblock <= ?3 ORDER BY lblock",
	[ST_EXT_INSERT]       = "INSERT INTO extent(node, lblock, nblocks, chunk, slot)"
				" VALUES(?1, ?2, ?3, ?4, ?5)",
	[ST_EXT_UPDATE]       = "UPDATE extent SET nblocks = ?3, chunk = ?4, slot = ?5"
				" WHERE node = ?1 AND lblock = ?2",
	[ST_EXT_DELETE]       = "DELETE FROM extent WHERE node = ?1 AND lblock = ?2",
	[ST_EXT_DEL_FROM]     = "DELETE FROM extent WHERE node = ?1 AND lblock >= ?2",
	[ST_EXT_BLOCKS_FROM]  = "SELECT coalesce(sum(nblocks), 0) FROM extent"
				" WHERE node = ?1 AND lblock >= ?2 AND chunk <> 0",
	[ST_EXT_RANGE]        = "SELECT " EXT_COLS " FROM extent WHERE node = ?1 AND lblock >= ?2"
				" AND lblock < ?3 ORDER BY lblock",
	/* data blocks of the rows starting in [?2, ?3) (bmap_ext_blocks) */
	[ST_EXT_BLOCKS_IN]    = "SELECT coalesce(sum(nblocks), 0) FROM extent"
				" WHERE node = ?1 AND lblock >= ?2 AND lblock < ?3 AND chunk <> 0",
	/* where a step of ?2 extents of a node ends (merge_some) */
	[ST_EXT_NTH]          = "SELECT lblock FROM extent WHERE node = ?1 ORDER BY lblock"
				" LIMIT 1 OFFSET ?2",
	[ST_EXT_BELOW]        = "SELECT " EXT_COLS " FROM extent WHERE node = ?1 AND lblock < ?2"
				" ORDER BY lblock",
	[ST_EXT_DEL_BELOW]    = "DELETE FROM extent WHERE node = ?1 AND lblock < ?2",
	[ST_NODE_NBLOCKS]     = "SELECT nblocks FROM node WHERE id = ?1",
	[ST_NODE_NBLOCKS_ADD] = "UPDATE node SET nblocks = nblocks + ?2 WHERE id = ?1",
	[ST_NODE_BLOCKS_SCAN] = "SELECT coalesce(sum(nblocks), 0) FROM extent"
				" WHERE node = ?1 AND chunk <> 0",
	[ST_NODE_EXTENTS]     = "SELECT count(*) FROM extent WHERE node = ?1",
	[ST_CHUNK_SCAN]       = "SELECT chunk, nblocks FROM extent WHERE chunk <> 0",
	[ST_EXTS_ALL]         = "SELECT node, " EXT_COLS " FROM extent WHERE chunk <> 0",
};

struct bmap {
	sqlite3 *db;
	sqlite3_stmt *st[ST_COUNT];     /* prepared at open (ST_F3_FIRST on: at format 3) */
	uint32_t block_size;            /* from meta, checked at open */
	int readonly;
	int format;                     /* 1 or 2 until upgraded (2 also mid-upgrade), or 3 */
	int upgrading;                  /* user_version is BMAP_UV_UPGRADING_2_3 */
	int upgraded_from;              /* the format bmap_upgrade_run upgraded, or 0 */
	int walking;                    /* a walk's fn is running: no call may enter */
	int has_refs;                   /* table refblocks seen (never dropped once made) */
	/* node.nblocks changes of put/del/relocate not yet written: a flush
	 * puts thousands of runs of one node, and one UPDATE of its count at
	 * commit costs less than one per put.  Dropped at rollback. */
	uint64_t pend_node;
	int64_t pend_delta;
	/* ext_edit's working set, reused by every call: the rows around the
	 * range as an emap, and the diff of the edit. */
	struct emap *em;
	struct emap_diff diff;
	struct bmap_ext *exts;          /* merge: the node's rows of one step */
	size_t nexts, exts_cap;
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

/* An extent from columns col .. col+3 (EXT_COLS). */
static void ext_from_cols(sqlite3_stmt *s, int col, struct bmap_ext *e)
{
	e->lblock = (uint64_t)sqlite3_column_int64(s, col);
	e->nblocks = (uint32_t)sqlite3_column_int64(s, col + 1);
	e->chunk = (uint64_t)sqlite3_column_int64(s, col + 2);
	e->slot = (uint32_t)sqlite3_column_int64(s, col + 3);
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
	emap_free(b->em);
	emap_diff_free(&b->diff);
	free(b->exts);
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
		"%s\n"
		"PRAGMA application_id = %d;\n"
		"PRAGMA user_version = %d;\n"
		"INSERT INTO meta(key, value) VALUES('block_size', %u), ('format_version', %d),"
		" ('created_ns', %lld), ('next_chunk_id', 1), ('ckpt_lsn', 0), ('ckpt_chunk', 1);\n"
		"INSERT INTO inode(ino, parent, name, kind, mode, uid, gid,"
		" atime_ns, mtime_ns, ctime_ns, size, node)"
		" VALUES(%d, 0, X'', %d, %d, %u, %u, %lld, %lld, %lld, 0, 0);\n"
		"COMMIT;",
		bmap_schema_sql, bmap_guid_sql, BMAP_APPLICATION_ID, BMAP_FORMAT_VERSION,
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
	if (v == BMAP_UV_UPGRADING_2_3) {
		b->format = 2;          /* bmap still holds the blocks */
		b->upgrading = 1;
	} else if (v < 1 || v > BMAP_FORMAT_VERSION) {
		return -EPROTONOSUPPORT;
	} else {
		b->format = (int)v;
	}
	if (!quick_check)
		return 0;
	/* O(size of the file); catches a damaged b-tree before we write. */
	rc = oneoff_text_is(b, "PRAGMA quick_check", "ok", &ok);
	if (rc)
		return rc;
	return ok ? 0 : -EUCLEAN;
}

/*
 * Bring a writable index of format 1 to format 2, in one transaction: a
 * crash leaves format 1, and the next open runs this again.  A read-only
 * open leaves the file as it is.  Format 2 goes to 3 only through
 * bmap_upgrade_run(), in steps.
 *
 * 1 -> 2: node.nrows, counted once here (one scan of the index).
 */
static int bmap_upgrade_1(struct bmap *b)
{
	int rc;

	if (b->format != 1)
		return 0;
	rc = exec_sql(b, "BEGIN IMMEDIATE;"
			 "ALTER TABLE node ADD COLUMN nrows INTEGER NOT NULL DEFAULT 0;"
			 "UPDATE node SET nrows = (SELECT count(*) FROM bmap"
			 " WHERE bmap.node = node.id AND chunk <> 0);"
			 "UPDATE meta SET value = 2 WHERE key = 'format_version';"
			 "PRAGMA user_version = 2;"
			 "COMMIT;");
	if (rc) {
		exec_sql(b, "ROLLBACK");
		return rc;
	}
	b->upgraded_from = b->format;
	b->format = 2;
	return 0;
}

/* Does the index have table snapguid?  1, 0 or a negative errno. */
static int guids_present(struct bmap *b)
{
	sqlite3_int64 n;
	int rc = oneoff_i64(b, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"
			    " AND name = 'snapguid'", &n);

	return rc ? rc : n > 0;
}

/*
 * A writable open: the guid table, a guid for every snapshot, no row of a
 * deleted one; one transaction, and only if something is to do, so that
 * an open of an index that has them all writes nothing.
 */
static int guids_ensure(struct bmap *b)
{
	sqlite3_int64 todo = 1;
	int rc = guids_present(b);

	if (rc == 1)
		rc = oneoff_i64(b, "SELECT (SELECT count(*) FROM snapshot WHERE id NOT IN"
				" (SELECT snap FROM snapguid)) + (SELECT count(*) FROM snapguid"
				" WHERE snap NOT IN (SELECT id FROM snapshot))", &todo);
	else if (rc == 0)
		todo = 1;
	if (rc < 0 || !todo)
		return rc < 0 ? rc : 0;
	rc = exec_sql(b, "BEGIN IMMEDIATE");
	if (!rc)
		rc = exec_sql(b, bmap_guid_sql);
	if (!rc)
		rc = exec_sql(b, "DELETE FROM snapguid WHERE snap NOT IN (SELECT id FROM snapshot);"
				 "INSERT INTO snapguid(snap, guid) SELECT id, randomblob(16)"
				 " FROM snapshot WHERE id NOT IN (SELECT snap FROM snapguid);"
				 "COMMIT");
	if (rc)
		exec_sql(b, "ROLLBACK");
	return rc;
}

/* 1 if the table and its trigger are there, 0 if not; remembered once seen,
 * so that a getattr or a REFS record does not read the schema. */
static int refs_present(struct bmap *b)
{
	sqlite3_int64 n;
	int rc;

	if (b->has_refs)
		return 1;
	rc = oneoff_i64(b, "SELECT count(*) FROM sqlite_schema WHERE (type = 'table'"
			" AND name = 'refblocks') OR (type = 'trigger' AND name = 'refblocks_gone')",
			&n);
	b->has_refs = !rc && n == 2;
	return rc ? rc : n == 2;
}

/* A writable open of a format-3 index, and the end of an upgrade: the
 * table and its trigger, in one transaction if either is missing. */
static int refs_ensure(struct bmap *b)
{
	int rc = refs_present(b);

	if (rc)
		return rc < 0 ? rc : 0;
	rc = exec_sql(b, "BEGIN IMMEDIATE");
	if (!rc)
		rc = exec_sql(b, bmap_refs_sql);
	if (!rc)
		rc = exec_sql(b, "DELETE FROM refblocks WHERE node NOT IN (SELECT id FROM node);"
				 "COMMIT");
	if (rc)
		exec_sql(b, "ROLLBACK");
	return rc;
}

/* Prepare statements [first, below) of b->st; see "Statements" at the top. */
static int prepare_range(struct bmap *b, int first, int below)
{
	int i, src;

	for (i = first; i < below; i++) {
		src = sqlite3_prepare_v3(b->db, bmap_st_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
					 &b->st[i], NULL);
		if (src != SQLITE_OK)
			return bmap_errno(b, src);
	}
	return 0;
}

int bmap_upgraded_from(struct bmap *b)
{
	return b->upgraded_from;
}

static int open_index(const char *path, int readonly, bool quick_check, int cache_kib,
		      struct bmap **out)
{
	struct bmap *b;
	sqlite3_int64 bs;
	int flags, src, match, rc;
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
			 "PRAGMA temp_store = MEMORY;");
	if (!rc) {
		char sql[64];

		snprintf(sql, sizeof(sql), "PRAGMA cache_size = -%d", cache_kib);
		rc = exec_sql(b, sql);
	}
	if (rc)
		goto fail;

	rc = oneoff_i64(b, "SELECT value FROM meta WHERE key = 'block_size'", &bs);
	if (rc == -ENOENT || (rc == 0 && !chunk_block_size_valid((uint64_t)bs)))
		rc = -EUCLEAN;
	if (rc)
		goto fail;
	b->block_size = (uint32_t)bs;

	b->em = emap_new(CHUNK_NSLOTS(b->block_size));
	if (!b->em) {
		rc = -ENOMEM;
		goto fail;
	}
	if (!readonly) {
		rc = bmap_upgrade_1(b);
		if (!rc)
			rc = guids_ensure(b);
		if (!rc && b->format == BMAP_FORMAT_VERSION)
			rc = refs_ensure(b);
		if (rc)
			goto fail;
	}
	rc = prepare_range(b, 0, ST_F3_FIRST);
	if (!rc && b->format == BMAP_FORMAT_VERSION)
		rc = prepare_range(b, ST_F3_FIRST, ST_COUNT);
	if (rc)
		goto fail;
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
	return open_index(path, readonly, true, BMAP_CACHE_KIB, out);
}

int bmap_open_reader(struct bmap *checked, struct bmap **out)
{
	const char *path = sqlite3_db_filename(checked->db, "main");

	*out = NULL;
	if (!path || !*path)
		return -EINVAL;
	return open_index(path, 1, false, BMAP_READER_CACHE_KIB, out);
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

/* ---- node.nblocks -------------------------------------------------------- */

/* Add delta to node's count now. */
static int nblocks_add_now(struct bmap *b, uint64_t node, int64_t delta)
{
	sqlite3_stmt *s;

	if (delta == 0)
		return 0;
	s = bmap_stmt(b, ST_NODE_NBLOCKS_ADD);
	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, delta);
	return stmt_run(b, s);
}

/* Write the pending change (see struct bmap). */
static int nblocks_apply(struct bmap *b)
{
	int64_t d = b->pend_delta;

	b->pend_delta = 0;
	return nblocks_add_now(b, b->pend_node, d);
}

/* Count blocks of node in or out when the transaction commits (or the
 * savepoint of a call made outside one, see in_own_savepoint). */
static int nblocks_add(struct bmap *b, uint64_t node, int64_t delta)
{
	int rc = 0;

	if (b->pend_node != node) {
		rc = nblocks_apply(b);
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
		rc = nblocks_apply(b);
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

/* The node row and its extents go together or not at all. */
int bmap_node_delete(struct bmap *b, uint64_t id)
{
	sqlite3_stmt *s;
	int rc;

	if (b->format != BMAP_FORMAT_VERSION)
		return -EPROTONOSUPPORT;
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

	s = bmap_stmt(b, ST_NODE_DELETE_EXTS);
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

/* ---- extents ------------------------------------------------------------ */

/* Block calls need the extent table: format 3 (bmap_upgrade_run). */
#define NEED_FORMAT_3(b) do { \
		if ((b)->format != BMAP_FORMAT_VERSION) \
			return -EPROTONOSUPPORT; \
	} while (0)

/*
 * put, del and relocate run several statements and count at commit.
 * Called outside a transaction (the tests do), they take a savepoint of
 * their own, so that the rows and the count commit together, at its
 * release.
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
		rc = nblocks_apply(b);
	b->pend_delta = 0;              /* rolled back if rc, written if not */
	return op_end(b, rc);
}

static uint64_t ext_end(const struct bmap_ext *e)
{
	return e->lblock + e->nblocks;
}

static uint64_t data_blocks(const struct emap_ext *e)
{
	return e->chunk ? e->nblocks : 0;
}

/* The row of node covering block lb, or the nearest before it; -ENOENT if
 * there is none. */
static int ext_at_or_before(struct bmap *b, uint64_t node, uint64_t lb, struct bmap_ext *out)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_EXT_AT_OR_BEFORE);
	int src, rc = 0;

	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, clamp_i64(lb));
	src = sqlite3_step(s);
	if (src == SQLITE_ROW)
		ext_from_cols(s, 0, out);
	else if (src == SQLITE_DONE)
		rc = -ENOENT;
	else
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

/* The row of node that starts before lb and reaches past it (covers
 * block lb - 1 and lb), or -ENOENT. */
static int ext_straddling(struct bmap *b, uint64_t node, uint64_t lb, struct bmap_ext *out)
{
	int rc = lb ? ext_at_or_before(b, node, lb - 1, out) : -ENOENT;

	return rc == 0 && ext_end(out) <= lb ? -ENOENT : rc;
}

/* Add a row read from the index to b->em; rows come in lblock order and
 * must be disjoint and valid, else the index is damaged. */
static int em_load(struct bmap *b, const struct bmap_ext *x, uint64_t *end)
{
	struct emap_ext e = { .lblock = x->lblock, .nblocks = x->nblocks,
			      .chunk = x->chunk, .slot = x->chunk ? x->slot : 0 };

	int rc;

	if (x->lblock < *end || x->nblocks == 0)
		return -EUCLEAN;
	*end = ext_end(x);
	rc = emap_put(b->em, &e, NULL);
	return rc == -EINVAL ? -EUCLEAN : rc;   /* past the limit, or out of its chunk */
}

/*
 * Load into b->em (emptied first) node's rows that overlap or touch
 * [lo, hi): the row at or before lo - 1 if it reaches lo, and every row
 * starting in [lo, hi].  That is all an edit of [lo, hi) can change or
 * merge with.
 */
static int load_window(struct bmap *b, uint64_t node, uint64_t lo, uint64_t hi)
{
	sqlite3_stmt *s;
	struct bmap_ext x;
	uint64_t end = 0;
	int src, rc = 0;

	emap_truncate(b->em, 0, NULL);  /* never fails: it only removes */
	if (lo > 0) {
		rc = ext_at_or_before(b, node, lo - 1, &x);
		if (rc == 0 && ext_end(&x) >= lo)
			rc = em_load(b, &x, &end);
		else if (rc == 0 || rc == -ENOENT)
			rc = 0;
		if (rc)
			return rc;
	}
	s = bmap_stmt(b, ST_EXT_WINDOW);
	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, clamp_i64(lo));
	bind_i64(s, 3, clamp_i64(hi));
	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		ext_from_cols(s, 0, &x);
		rc = em_load(b, &x, &end);
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	if (rc == -EUCLEAN)
		snprintf(b->errmsg, sizeof(b->errmsg), "node %" PRIu64 ": overlapping or empty"
			 " extent rows near block %" PRIu64, node, lo);
	return rc;
}

/* Bind (node, lblock, nblocks, chunk, slot) as ?1..?5. */
static void bind_ext(sqlite3_stmt *s, uint64_t node, const struct emap_ext *e)
{
	bind_i64(s, 1, (sqlite3_int64)node);
	bind_i64(s, 2, (sqlite3_int64)e->lblock);
	bind_i64(s, 3, e->nblocks);
	bind_i64(s, 4, (sqlite3_int64)e->chunk);
	bind_i64(s, 5, e->slot);
}

static int ext_row_delete(struct bmap *b, uint64_t node, uint64_t lblock)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_EXT_DELETE);

	bind_i64(s, 1, (sqlite3_int64)node);
	bind_i64(s, 2, (sqlite3_int64)lblock);
	return stmt_run(b, s);
}

/*
 * Write b->diff as row edits of node (emap.h, struct emap_diff): removed
 * rows whose key no added extent takes are deleted first, so that the
 * inserts never meet a key still in use; a key in both lists is one
 * UPDATE.  *delta: the data blocks the edit added minus those it removed.
 */
static int write_diff(struct bmap *b, uint64_t node, int64_t *delta)
{
	const struct emap_diff *d = &b->diff;
	size_t i, j;
	int rc = 0;

	*delta = 0;
	for (i = 0, j = 0; i < d->nremoved && rc == 0; i++) {
		*delta -= (int64_t)data_blocks(&d->removed[i]);
		while (j < d->nadded && d->added[j].lblock < d->removed[i].lblock)
			j++;
		if (j < d->nadded && d->added[j].lblock == d->removed[i].lblock)
			continue;       /* an UPDATE, below */
		rc = ext_row_delete(b, node, d->removed[i].lblock);
	}
	for (i = 0, j = 0; i < d->nadded && rc == 0; i++) {
		sqlite3_stmt *s;

		*delta += (int64_t)data_blocks(&d->added[i]);
		while (j < d->nremoved && d->removed[j].lblock < d->added[i].lblock)
			j++;
		if (j < d->nremoved && d->removed[j].lblock == d->added[i].lblock)
			s = bmap_stmt(b, ST_EXT_UPDATE);
		else
			s = bmap_stmt(b, ST_EXT_INSERT);
		bind_ext(s, node, &d->added[i]);
		rc = stmt_run(b, s);
	}
	return rc;
}

enum ext_op { EXT_PUT, EXT_DELETE };

/*
 * The one way a range of a node changes (see "Extents" at the top): load
 * the rows around [lo, hi), edit them in b->em, write the difference, and
 * count the data blocks it made or dropped.  put: e says what [lo, hi)
 * becomes.  *delta (may be NULL): the change of node.nblocks, already
 * counted.
 */
static int ext_edit(struct bmap *b, uint64_t node, enum ext_op op, uint64_t lo, uint64_t hi,
		    const struct bmap_ext *e, int64_t *delta)
{
	struct emap_ext x;
	int64_t dl = 0;
	int rc;

	rc = load_window(b, node, lo, hi);
	if (rc)
		return rc;
	if (op == EXT_PUT) {
		x = (struct emap_ext){ .lblock = lo, .nblocks = (uint32_t)(hi - lo),
				       .chunk = e->chunk, .slot = e->chunk ? e->slot : 0 };
		rc = emap_put(b->em, &x, &b->diff);
	} else {
		rc = emap_delete(b->em, lo, hi, &b->diff);
	}
	if (!rc)
		rc = write_diff(b, node, &dl);
	if (!rc)
		rc = nblocks_add(b, node, dl);
	if (delta)
		*delta = dl;
	return rc;
}

/* A run put may store: inside the lblock limit, and a data run inside its
 * chunk, with values SQL can order. */
static int ext_valid(struct bmap *b, uint64_t node, const struct bmap_ext *e)
{
	if (node > (uint64_t)INT64_MAX || e->nblocks == 0 || e->lblock > BMAP_LBLOCK_LIMIT ||
	    e->nblocks > BMAP_LBLOCK_LIMIT - e->lblock || e->chunk > (uint64_t)INT64_MAX)
		return -EINVAL;
	if (e->chunk && (uint64_t)e->slot + e->nblocks > CHUNK_NSLOTS(b->block_size))
		return -EINVAL;
	return 0;
}

int bmap_ext_put(struct bmap *b, uint64_t node, const struct bmap_ext *e)
{
	bool own;
	int rc;

	NEED_FORMAT_3(b);
	rc = ext_valid(b, node, e);
	if (rc)
		return rc;
	own = in_own_savepoint(b, &rc);
	if (rc)
		return rc;
	rc = ext_edit(b, node, EXT_PUT, e->lblock, ext_end(e), e, NULL);
	return own ? own_savepoint_end(b, rc) : rc;
}

int bmap_ext_del(struct bmap *b, uint64_t node, uint64_t lblock, uint64_t nblocks)
{
	uint64_t hi;
	bool own;
	int rc;

	NEED_FORMAT_3(b);
	/* nothing is mapped at or past the limit */
	if (lblock >= BMAP_LBLOCK_LIMIT || nblocks == 0)
		return 0;
	hi = nblocks > BMAP_LBLOCK_LIMIT - lblock ? BMAP_LBLOCK_LIMIT : lblock + nblocks;
	own = in_own_savepoint(b, &rc);
	if (rc)
		return rc;
	rc = ext_edit(b, node, EXT_DELETE, lblock, hi, NULL, NULL);
	return own ? own_savepoint_end(b, rc) : rc;
}

/*
 * Plain SQL, no emap: the row straddling from keeps its left part (a
 * right trim never makes two rows mergeable: a gap follows), every row
 * from there on goes.
 */
int bmap_ext_del_from(struct bmap *b, uint64_t node, uint64_t from)
{
	struct bmap_ext x;
	struct emap_ext t;
	sqlite3_stmt *s;
	uint64_t gone = 0;
	int64_t delta = 0;
	int rc;

	NEED_FORMAT_3(b);
	if (from >= BMAP_LBLOCK_LIMIT)
		return 0;
	rc = op_begin(b);
	if (rc)
		return rc;
	if (from > 0) {
		rc = ext_at_or_before(b, node, from - 1, &x);
		if (rc == 0 && ext_end(&x) > from) {
			if (x.chunk)
				delta -= (int64_t)(ext_end(&x) - from);
			t = (struct emap_ext){ .lblock = x.lblock, .nblocks = (uint32_t)(from - x.lblock),
					       .chunk = x.chunk, .slot = x.slot };
			s = bmap_stmt(b, ST_EXT_UPDATE);
			bind_ext(s, node, &t);
			rc = stmt_run(b, s);
		} else if (rc == -ENOENT) {
			rc = 0;
		}
	}
	if (!rc) {
		s = bmap_stmt(b, ST_EXT_BLOCKS_FROM);
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, (sqlite3_int64)from);
		rc = stmt_u64(b, s, &gone);
	}
	if (!rc) {
		s = bmap_stmt(b, ST_EXT_DEL_FROM);
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, (sqlite3_int64)from);
		rc = stmt_run(b, s);
	}
	if (!rc)
		rc = nblocks_add_now(b, node, delta - (int64_t)gone);
	return op_end(b, rc);
}

/* fn(x clipped to [from, below)), with the walk flag up. */
static int range_emit(struct bmap *b, struct bmap_ext x, uint64_t from, uint64_t below,
		      int (*fn)(void *ctx, const struct bmap_ext *e), void *ctx)
{
	int rc;

	if (x.lblock < from) {
		if (x.chunk)
			x.slot += (uint32_t)(from - x.lblock);
		x.nblocks -= (uint32_t)(from - x.lblock);
		x.lblock = from;
	}
	if (ext_end(&x) > below)
		x.nblocks = (uint32_t)(below - x.lblock);
	b->walking = 1;
	rc = fn(ctx, &x);
	b->walking = 0;
	return rc;
}

int bmap_ext_range(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
		   int (*fn)(void *ctx, const struct bmap_ext *e), void *ctx)
{
	struct bmap_ext x;
	sqlite3_stmt *s;
	int src, rc = 0;

	NEED_FORMAT_3(b);
	if (below > BMAP_LBLOCK_LIMIT)
		below = BMAP_LBLOCK_LIMIT;
	if (from >= below)
		return 0;
	/* the row that starts before from and reaches into the range */
	rc = ext_straddling(b, node, from, &x);
	if (rc == 0)
		rc = range_emit(b, x, from, below, fn, ctx);
	else if (rc == -ENOENT)
		rc = 0;
	if (rc)
		return rc;
	s = bmap_stmt(b, ST_EXT_RANGE);
	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, (sqlite3_int64)from);
	bind_i64(s, 3, (sqlite3_int64)below);
	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		ext_from_cols(s, 0, &x);
		rc = range_emit(b, x, from, below, fn, ctx);
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

/*
 * The rows starting in [from, below) summed in SQL, corrected at both ends:
 * the row before from that reaches into the range adds its part, and the
 * last row starting in the range, when it reaches past below, gives back
 * its part past it.  Three statements: the caller wanting one snapshot of
 * a changing index wraps them in bmap_snapshot_begin().
 */
int bmap_ext_blocks(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
		    uint64_t *count)
{
	struct bmap_ext x;
	sqlite3_stmt *s;
	uint64_t n = 0;
	int rc = 0;

	NEED_FORMAT_3(b);
	*count = 0;
	below = below < BMAP_LBLOCK_LIMIT ? below : BMAP_LBLOCK_LIMIT;
	if (from >= below)
		return 0;
	rc = ext_straddling(b, node, from, &x);
	if (rc == 0 && x.chunk)
		n += (ext_end(&x) < below ? ext_end(&x) : below) - from;
	if (rc == 0 || rc == -ENOENT) {
		s = bmap_stmt(b, ST_EXT_BLOCKS_IN);
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, (sqlite3_int64)from);
		bind_i64(s, 3, (sqlite3_int64)below);
		rc = stmt_u64(b, s, count);
	}
	if (!rc) {
		n += *count;
		rc = ext_straddling(b, node, below, &x);
		if (rc == 0 && x.chunk && x.lblock >= from)
			n -= ext_end(&x) - below;
	}
	if (rc == -ENOENT)
		rc = 0;
	*count = rc ? 0 : n;
	return rc;
}

int bmap_node_blocks(struct bmap *b, uint64_t node, uint64_t *count)
{
	sqlite3_stmt *s;
	int rc;

	NEED_FORMAT_3(b);
	rc = nblocks_apply(b);
	if (rc)
		return rc;
	s = bmap_stmt(b, ST_NODE_NBLOCKS);
	bind_i64(s, 1, u64_bits(node));
	rc = stmt_u64(b, s, count);
	if (rc == -ENOENT) {            /* no such node: no blocks */
		*count = 0;
		rc = 0;
	}
	return rc;
}

int bmap_node_blocks_scan(struct bmap *b, uint64_t node, uint64_t *count)
{
	sqlite3_stmt *s;

	NEED_FORMAT_3(b);
	s = bmap_stmt(b, ST_NODE_BLOCKS_SCAN);
	bind_i64(s, 1, u64_bits(node));
	return stmt_u64(b, s, count);
}

int bmap_node_extents(struct bmap *b, uint64_t node, uint64_t *count)
{
	sqlite3_stmt *s;

	NEED_FORMAT_3(b);
	s = bmap_stmt(b, ST_NODE_EXTENTS);
	bind_i64(s, 1, u64_bits(node));
	return stmt_u64(b, s, count);
}

/* ---- garbage collection and check --------------------------------------- */

/*
 * Covered slots per chunk id, in an open-addressing hash table (linear
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

/* Count n more slots of chunk; *hint caches the last slot, as rows of one
 * node come in runs of the same chunk. */
static int reftab_add(struct reftab *t, uint64_t chunk, uint64_t n, size_t *hint)
{
	size_t i;
	int rc;

	if (t->cap && t->e[*hint].chunk == chunk) {
		t->e[*hint].nrefs += n;
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
	t->e[i].nrefs += n;
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
	struct reftab t = { 0 };
	size_t hint = 0, i, n;
	sqlite3_stmt *s;
	int src, rc = 0;

	NEED_FORMAT_3(b);
	s = bmap_stmt(b, ST_CHUNK_SCAN);
	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		rc = reftab_add(&t, (uint64_t)sqlite3_column_int64(s, 0),
				(uint64_t)sqlite3_column_int64(s, 1), &hint);
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

int bmap_exts_all(struct bmap *b,
		  int (*fn)(void *ctx, uint64_t node, const struct bmap_ext *e), void *ctx)
{
	struct bmap_ext x;
	sqlite3_stmt *s;
	int src, rc = 0;

	NEED_FORMAT_3(b);
	s = bmap_stmt(b, ST_EXTS_ALL);
	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		ext_from_cols(s, 1, &x);
		b->walking = 1;
		rc = fn(ctx, (uint64_t)sqlite3_column_int64(s, 0), &x);
		b->walking = 0;
		if (rc)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
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

/* A statement of the guid table, prepared for one call (see bmap_guid_sql):
 * -ENOSYS if the index has no such table. */
static int guid_stmt(struct bmap *b, const char *sql, sqlite3_stmt **s)
{
	int src, rc;

	assert(!b->walking);
	*s = NULL;
	rc = guids_present(b);
	if (rc <= 0)
		return rc ? rc : -ENOSYS;
	src = sqlite3_prepare_v2(b->db, sql, -1, s, NULL);
	return src == SQLITE_OK ? 0 : bmap_errno(b, src);
}

/* The snapshot row, its inode rows and its guid go together or not at all. */
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
	if (rc == 0) {
		rc = guid_stmt(b, "DELETE FROM snapguid WHERE snap = ?1", &s);
		if (rc == 0) {
			bind_i64(s, 1, u64_bits(id));
			rc = stmt_run(b, s);
		} else if (rc == -ENOSYS) {
			rc = 0;         /* an index without guids (a writable open adds them) */
		}
		sqlite3_finalize(s);
	}
	return op_end(b, rc);
}

int bmap_snap_guid_set(struct bmap *b, uint64_t snap, const uint8_t *guid)
{
	sqlite3_stmt *s;
	int rc = guid_stmt(b, guid ? "INSERT INTO snapguid(snap, guid) VALUES(?1, ?2)"
				     " ON CONFLICT(snap) DO UPDATE SET guid = excluded.guid" :
				     "INSERT INTO snapguid(snap, guid)"
				     " VALUES(?1, randomblob(16)) ON CONFLICT(snap)"
				     " DO UPDATE SET guid = excluded.guid", &s);

	if (rc == 0) {
		bind_i64(s, 1, u64_bits(snap));
		if (guid)
			bind_name(s, 2, (const char *)guid, BMAP_GUID_BYTES);
		rc = stmt_run(b, s);
	}
	sqlite3_finalize(s);
	return rc;
}

int bmap_snap_guid_get(struct bmap *b, uint64_t snap, uint8_t *guid)
{
	sqlite3_stmt *s;
	int src, rc = guid_stmt(b, "SELECT guid FROM snapguid WHERE snap = ?1", &s);

	if (rc == 0) {
		bind_i64(s, 1, u64_bits(snap));
		src = sqlite3_step(s);
		if (src == SQLITE_ROW && sqlite3_column_bytes(s, 0) == BMAP_GUID_BYTES)
			memcpy(guid, sqlite3_column_blob(s, 0), BMAP_GUID_BYTES);
		else if (src == SQLITE_ROW)
			rc = -EUCLEAN;
		else
			rc = src == SQLITE_DONE ? -ENOENT : bmap_errno(b, src);
	}
	sqlite3_finalize(s);
	return rc;
}

int bmap_snap_by_guid(struct bmap *b, const uint8_t *guid, struct bmap_snap *out)
{
	sqlite3_stmt *s;
	int rc = guid_stmt(b, "SELECT s.id, s.dir, s.name, s.created_ns FROM snapguid g"
			   " JOIN snapshot s ON s.id = g.snap WHERE g.guid = ?1", &s);

	if (rc == 0) {
		bind_name(s, 1, (const char *)guid, BMAP_GUID_BYTES);
		rc = stmt_snap(b, s, out);
	}
	sqlite3_finalize(s);
	return rc;
}

/* ---- referenced blocks (refblocks) ------------------------------------------- */

/* -ENOENT for an index without the table (read-only, not yet ensured):
 * it has no count; set, copy and forget then keep nothing and return 0. */
static int refs_stmt(struct bmap *b, const char *sql, sqlite3_stmt **s)
{
	int src, rc;

	assert(!b->walking);
	*s = NULL;
	rc = refs_present(b);
	if (rc <= 0)
		return rc ? rc : -ENOENT;
	src = sqlite3_prepare_v2(b->db, sql, -1, s, NULL);
	return src == SQLITE_OK ? 0 : bmap_errno(b, src);
}

int bmap_refs_get(struct bmap *b, uint64_t node, uint64_t *nblocks)
{
	sqlite3_stmt *s;
	int rc = refs_stmt(b, "SELECT nblocks FROM refblocks WHERE node = ?1", &s);

	if (rc == 0) {
		bind_i64(s, 1, u64_bits(node));
		rc = stmt_u64(b, s, nblocks);
	}
	sqlite3_finalize(s);
	return rc;
}

int bmap_refs_set(struct bmap *b, uint64_t node, uint64_t nblocks)
{
	sqlite3_stmt *s;
	int rc = refs_stmt(b, "INSERT INTO refblocks(node, nblocks) SELECT ?1, ?2"
			   " WHERE EXISTS (SELECT 1 FROM node WHERE id = ?1)"
			   " ON CONFLICT(node) DO UPDATE SET nblocks = excluded.nblocks", &s);

	if (rc == 0) {
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, u64_bits(nblocks));
		rc = stmt_run(b, s);
	}
	sqlite3_finalize(s);
	return rc == -ENOENT && !s ? 0 : rc;
}

int bmap_refs_copy(struct bmap *b, uint64_t from, uint64_t to)
{
	sqlite3_stmt *s;
	int rc = bmap_refs_forget(b, to);

	if (!rc)
		rc = refs_stmt(b, "INSERT INTO refblocks(node, nblocks) SELECT ?2, nblocks"
			       " FROM refblocks WHERE node = ?1", &s);
	if (rc == 0) {
		bind_i64(s, 1, u64_bits(from));
		bind_i64(s, 2, u64_bits(to));
		rc = stmt_run(b, s);
		sqlite3_finalize(s);
	}
	return rc == -ENOENT ? 0 : rc;
}

int bmap_refs_forget(struct bmap *b, uint64_t node)
{
	sqlite3_stmt *s;
	int rc = refs_stmt(b, "DELETE FROM refblocks WHERE node = ?1", &s);

	if (rc == 0) {
		bind_i64(s, 1, u64_bits(node));
		rc = stmt_run(b, s);
	}
	sqlite3_finalize(s);
	return rc == -ENOENT && !s ? 0 : rc;
}

int bmap_refs_missing(struct bmap *b, uint64_t after, uint64_t *node, uint64_t *size)
{
	sqlite3_stmt *s;
	int src, rc = refs_stmt(b, "SELECT node, max(size) FROM (SELECT node, size FROM inode"
				" WHERE kind = 2 UNION ALL SELECT node, size FROM sinode WHERE kind = 2)"
				" WHERE node > ?1 AND node NOT IN (SELECT node FROM refblocks)"
				" GROUP BY node ORDER BY node LIMIT 1", &s);

	if (rc == 0) {
		bind_i64(s, 1, u64_bits(after));
		src = sqlite3_step(s);
		if (src == SQLITE_ROW) {
			*node = (uint64_t)sqlite3_column_int64(s, 0);
			*size = (uint64_t)sqlite3_column_int64(s, 1);
		} else {
			rc = src == SQLITE_DONE ? -ENOENT : bmap_errno(b, src);
		}
	}
	sqlite3_finalize(s);
	return rc;
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

/* Load node's rows with lblock < end into b->exts, in lblock order. */
static int load_below(struct bmap *b, uint64_t node, uint64_t end)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_EXT_BELOW);
	int src, rc = 0;

	b->nexts = 0;
	bind_i64(s, 1, u64_bits(node));
	bind_i64(s, 2, clamp_i64(end));
	while ((src = sqlite3_step(s)) == SQLITE_ROW) {
		if (ARRAY_RESERVE(b->exts, b->exts_cap, b->nexts, 256)) {
			rc = -ENOMEM;
			break;
		}
		ext_from_cols(s, 0, &b->exts[b->nexts++]);
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	return rc;
}

/*
 * One step of a merge: the node's extents in its lowest max_exts rows
 * (*all when that is every row left) go to the child where the child has
 * no extent of its own and below its inherit limit, piece by piece (a
 * node extent is cut around the child's), each piece put through the
 * child's canonical form so that it merges with a touching child extent;
 * then the node's rows of the step are deleted.  Each node extent loads
 * only the child's rows around it, so a step's work is bounded by its
 * extents and the child's rows they overlap, not by the child's size.
 */
static int merge_step(struct bmap *b, uint64_t node, const struct bmap_node *c,
		      uint64_t max_exts, bool *all)
{
	uint64_t end = INT64_MAX, lost = 0, xe, pos;
	int64_t gained = 0, dl;
	struct emap_run r;
	struct emap_ext piece;
	sqlite3_stmt *s;
	size_t i;
	int rc = 0;

	if (max_exts < INT64_MAX) {
		s = bmap_stmt(b, ST_EXT_NTH);
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, (int64_t)(max_exts ? max_exts : 1));
		rc = stmt_u64(b, s, &end);
		if (rc == -ENOENT) {    /* no more rows than that: the last step */
			end = INT64_MAX;
			rc = 0;
		}
	}
	*all = end == INT64_MAX;
	if (!rc)
		rc = load_below(b, node, end);
	for (i = 0; i < b->nexts && rc == 0; i++) {
		const struct bmap_ext *x = &b->exts[i];

		lost += x->chunk ? x->nblocks : 0;
		if (x->lblock >= c->inherit)
			continue;       /* the child cannot see it */
		xe = ext_end(x) < c->inherit ? ext_end(x) : c->inherit;
		rc = load_window(b, c->id, x->lblock, xe);
		for (pos = x->lblock; pos < xe && rc == 0; pos += r.nblocks) {
			emap_next(b->em, pos, xe, &r);
			if (r.kind != EMAP_UNMAPPED)
				continue;       /* the child's own block */
			piece = (struct emap_ext){ .lblock = pos, .nblocks = (uint32_t)r.nblocks,
						   .chunk = x->chunk,
						   .slot = x->chunk ? x->slot + (uint32_t)(pos - x->lblock) : 0 };
			rc = emap_put(b->em, &piece, &b->diff);
			if (!rc)
				rc = write_diff(b, c->id, &dl);
			gained += dl;
		}
	}
	if (!rc) {
		s = bmap_stmt(b, ST_EXT_DEL_BELOW);
		bind_i64(s, 1, u64_bits(node));
		bind_i64(s, 2, clamp_i64(end));
		rc = stmt_run(b, s);
	}
	if (!rc)
		rc = nblocks_add_now(b, node, -(int64_t)lost);
	if (!rc)
		rc = nblocks_add_now(b, c->id, gained);
	return rc;
}

/* Both nodes, and child still node's child. */
static int merge_nodes(struct bmap *b, uint64_t node, uint64_t child,
		       struct bmap_node *n, struct bmap_node *c)
{
	int rc = bmap_node_get(b, node, n);

	if (!rc)
		rc = bmap_node_get(b, child, c);
	if (!rc && c->parent != node)
		rc = -EINVAL;
	return rc;
}

/* The last step: the child takes the node's place. */
static int merge_finish(struct bmap *b, const struct bmap_node *n, struct bmap_node *c)
{
	sqlite3_stmt *s;
	int rc;

	/* blocks the node itself could not see stay invisible */
	c->parent = n->parent;
	if (n->inherit < c->inherit)
		c->inherit = n->inherit;
	rc = bmap_node_update(b, c);
	if (!rc) {
		s = bmap_stmt(b, ST_NODE_DELETE);
		bind_i64(s, 1, u64_bits(n->id));
		rc = stmt_run(b, s);
	}
	return rc;
}

/*
 * One step (merge_some), or steps until the node has no extent left
 * (merge: all in one savepoint, memory bounded by a step), then the child
 * takes the node's place.
 */
static int merge_run(struct bmap *b, uint64_t node, uint64_t child, uint64_t max_exts,
		     bool one_step, bool *done)
{
	struct bmap_node n, c;
	bool all = false;
	int rc;

	*done = false;
	NEED_FORMAT_3(b);
	rc = merge_nodes(b, node, child, &n, &c);
	if (rc)
		return rc;
	rc = op_begin(b);
	if (rc)
		return rc;
	do
		rc = merge_step(b, node, &c, max_exts, &all);
	while (rc == 0 && !all && !one_step);
	if (!rc && all)
		rc = merge_finish(b, &n, &c);
	rc = op_end(b, rc);
	*done = !rc && all;
	return rc;
}

int bmap_node_merge_some(struct bmap *b, uint64_t node, uint64_t child, uint64_t max_exts,
			 bool *done)
{
	return merge_run(b, node, child, max_exts, true, done);
}

int bmap_node_merge(struct bmap *b, uint64_t node, uint64_t child)
{
	bool done;

	return merge_run(b, node, child, BMAP_MERGE_STEP_EXTS, false, &done);
}

/*
 * The guard is the row covering from->lblock: it must be a data row of
 * from->chunk that covers the whole piece with the slots the scan saw.
 * Then the piece is an ordinary put of its new place, which splits the
 * row and merges the piece with neighbours already in to_chunk.
 */
int bmap_ext_relocate(struct bmap *b, uint64_t node, const struct bmap_ext *from,
		      uint64_t to_chunk, uint32_t to_slot)
{
	struct bmap_ext to = *from, x;
	bool own;
	int rc;

	NEED_FORMAT_3(b);
	to.chunk = to_chunk;
	to.slot = to_slot;
	if (from->chunk == 0 || to_chunk == 0)
		return -EINVAL;
	rc = ext_valid(b, node, from);
	if (!rc)
		rc = ext_valid(b, node, &to);
	if (rc)
		return rc;
	own = in_own_savepoint(b, &rc);
	if (rc)
		return rc;
	rc = ext_at_or_before(b, node, from->lblock, &x);
	if (rc == 0 && (x.chunk != from->chunk || ext_end(&x) < ext_end(from) ||
			(uint64_t)x.slot + (from->lblock - x.lblock) != from->slot))
		rc = -ENOENT;   /* a newer write won */
	if (rc == 0)
		rc = ext_edit(b, node, EXT_PUT, to.lblock, ext_end(&to), &to, NULL);
	return own ? own_savepoint_end(b, rc) : rc;
}

/* ---- upgrade from format 2 ------------------------------------------------ */

int bmap_format(struct bmap *b)
{
	return b->format;
}

enum up_st {
	UP_SCAN,                /* the old rows from the cursor on */
	UP_LAST_EXT,            /* the last extent before the cursor */
	UP_INSERT,
	UP_UPDATE,
	UP_COUNT_ADD,
	UP_NST
};

static const char *const up_sql[UP_NST] = {
	[UP_SCAN]      = "SELECT node, lblock, chunk, slot, cksum FROM bmap"
			 " WHERE (node, lblock) >= (?1, ?2) ORDER BY node, lblock",
	[UP_LAST_EXT]  = "SELECT " EXT_COLS " FROM extent WHERE node = ?1 AND lblock < ?2"
			 " ORDER BY lblock DESC LIMIT 1",
	[UP_INSERT]    = "INSERT INTO extent(node, lblock, nblocks, chunk, slot)"
			 " VALUES(?1, ?2, ?3, ?4, ?5)",
	[UP_UPDATE]    = "UPDATE extent SET nblocks = ?3 WHERE node = ?1 AND lblock = ?2",
	[UP_COUNT_ADD] = "INSERT INTO upgrade_nblocks(node, n) VALUES(?1, ?2)"
			 " ON CONFLICT(node) DO UPDATE SET n = n + excluded.n",
};

/* The first commit: from here on, meta.upgrade says a walk is under way,
 * and user_version BMAP_UV_UPGRADING_2_3 keeps older code out (up_start). */
static const char up_begin_sql[] =
	"BEGIN IMMEDIATE;"
	"CREATE TABLE IF NOT EXISTS upgrade_nblocks (node INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
	"INSERT INTO meta(key, value) VALUES('upgrade', 1), ('upgrade_cursor_node', 0),"
	" ('upgrade_cursor_lblock', 0), ('upgrade_rows_done', 0);"
	"PRAGMA user_version = " BMAP_STR(BMAP_UV_UPGRADING_2_3) ";";

/* The last commit, with the last step's extents: format 3 from here on. */
static const char up_finish_sql[] =
	"UPDATE node SET nrows = coalesce((SELECT n FROM upgrade_nblocks u WHERE u.node = node.id), 0);"
	"ALTER TABLE node RENAME COLUMN nrows TO nblocks;"
	"DROP TABLE upgrade_nblocks;"
	"DROP TABLE bmap;"
	"UPDATE meta SET value = 3 WHERE key = 'format_version';"
	"INSERT INTO meta(key, value) VALUES('ckpt_lsn', 0)"
	" ON CONFLICT(key) DO UPDATE SET value = excluded.value;"
	"INSERT INTO meta(key, value) SELECT 'ckpt_chunk', value FROM meta WHERE key = 'next_chunk_id'"
	" ON CONFLICT(key) DO UPDATE SET value = excluded.value;"
	"DELETE FROM meta WHERE key IN ('upgrade', 'upgrade_cursor_node', 'upgrade_cursor_lblock',"
	" 'upgrade_rows_done');"
	"PRAGMA user_version = 3;";

struct up_ext {                 /* an extent a step writes */
	uint64_t node;
	struct bmap_ext e;
	uint32_t nblocks_in_db;         /* > 0: the row exists with this length */
};

struct up_count {               /* data blocks a step found in one node */
	uint64_t node;
	uint64_t n;
};

struct upgrade {
	sqlite3_stmt *st[UP_NST];
	struct up_ext *v;
	size_t n, cap;
	struct up_count *c;
	size_t nc, ccap;
	uint64_t cur_node, cur_lblock;  /* the first old row not yet done */
	uint64_t rows_done, rows_total;
};

/* Does block (lblock, chunk, slot) continue e, so that canonical form
 * makes them one extent? */
static bool ext_continues(const struct bmap_ext *e, uint64_t lblock, uint64_t chunk, uint32_t slot)
{
	if (lblock != ext_end(e) || chunk != e->chunk)
		return false;
	return chunk ? slot == e->slot + e->nblocks : e->nblocks < EMAP_NBLOCKS_MAX;
}

/* Add one old row to the step's extents and counts. */
static int up_add(struct upgrade *u, uint64_t node, uint64_t lblock, uint64_t chunk, uint32_t slot)
{
	struct up_ext *top = u->n ? &u->v[u->n - 1] : NULL;

	if (chunk) {
		if (!u->nc || u->c[u->nc - 1].node != node) {
			if (ARRAY_RESERVE(u->c, u->ccap, u->nc, 64))
				return -ENOMEM;
			u->c[u->nc++] = (struct up_count){ .node = node };
		}
		u->c[u->nc - 1].n++;
	}
	if (top && top->node == node && ext_continues(&top->e, lblock, chunk, slot)) {
		top->e.nblocks++;
		return 0;
	}
	if (ARRAY_RESERVE(u->v, u->cap, u->n, 1024))
		return -ENOMEM;
	u->v[u->n++] = (struct up_ext){ .node = node,
		.e = { .lblock = lblock, .nblocks = 1, .chunk = chunk, .slot = slot } };
	return 0;
}

/* Read one step of old rows (ops->row for each data row) into u. */
static int up_read(struct bmap *b, struct upgrade *u, uint64_t step_rows,
		   const struct bmap_upgrade_ops *ops, bool *last)
{
	sqlite3_stmt *s = u->st[UP_LAST_EXT];
	uint64_t node, lblock, chunk, cksum, nrows = 0;
	uint32_t slot;
	int src, rc = 0;

	u->n = 0;
	u->nc = 0;
	/* the extent the step before ended with, which this one may extend */
	bind_i64(s, 1, u64_bits(u->cur_node));
	bind_i64(s, 2, clamp_i64(u->cur_lblock));
	src = sqlite3_step(s);
	if (src == SQLITE_ROW && ARRAY_RESERVE(u->v, u->cap, u->n, 1024) == 0) {
		u->v[0].node = u->cur_node;
		ext_from_cols(s, 0, &u->v[0].e);
		u->v[0].nblocks_in_db = u->v[0].e.nblocks;
		u->n = 1;
	} else if (src == SQLITE_ROW) {
		rc = -ENOMEM;
	} else if (src != SQLITE_DONE) {
		rc = bmap_errno(b, src);
	}
	sqlite3_reset(s);
	if (rc)
		return rc;

	s = u->st[UP_SCAN];
	bind_i64(s, 1, u64_bits(u->cur_node));
	bind_i64(s, 2, clamp_i64(u->cur_lblock));
	while (nrows < step_rows && (src = sqlite3_step(s)) == SQLITE_ROW) {
		node = (uint64_t)sqlite3_column_int64(s, 0);
		lblock = (uint64_t)sqlite3_column_int64(s, 1);
		chunk = (uint64_t)sqlite3_column_int64(s, 2);
		slot = (uint32_t)sqlite3_column_int64(s, 3);
		cksum = bits_u64(sqlite3_column_int64(s, 4));
		if (lblock >= BMAP_LBLOCK_LIMIT || (chunk && slot >= CHUNK_NSLOTS(b->block_size))) {
			snprintf(b->errmsg, sizeof(b->errmsg), "upgrade: node %" PRIu64 " block %"
				 PRIu64 ": row out of the format-3 range", node, lblock);
			rc = -EUCLEAN;
			break;
		}
		if (!chunk)
			slot = 0;
		if (chunk) {
			b->walking = 1;
			rc = ops->row(ops->ctx, node, lblock, chunk, slot, cksum);
			b->walking = 0;
		}
		if (!rc)
			rc = up_add(u, node, lblock, chunk, slot);
		if (rc)
			break;
		nrows++;
		u->cur_node = node;
		u->cur_lblock = lblock + 1;
	}
	/* stopped by the step size: the next step finds out whether more come */
	*last = rc == 0 && src == SQLITE_DONE;
	if (rc == 0 && src != SQLITE_DONE && src != SQLITE_ROW)
		rc = bmap_errno(b, src);
	sqlite3_reset(s);
	u->rows_done += nrows;
	return rc;
}

static int meta_put(struct bmap *b, const char *key, uint64_t value)
{
	sqlite3_stmt *s = bmap_stmt(b, ST_META_SET);

	bind_text(s, 1, key);
	bind_i64(s, 2, u64_bits(value));
	return stmt_run(b, s);
}

/* Write one step read into u, and the cursor after it, in one commit. */
static int up_write(struct bmap *b, struct upgrade *u, bool last)
{
	sqlite3_stmt *s;
	size_t i;
	int rc;

	rc = stmt_run(b, bmap_stmt(b, ST_BEGIN));
	for (i = 0; i < u->n && rc == 0; i++) {
		const struct up_ext *x = &u->v[i];

		if (x->nblocks_in_db == x->e.nblocks)
			continue;       /* the row before, not extended */
		s = u->st[x->nblocks_in_db ? UP_UPDATE : UP_INSERT];
		bind_i64(s, 1, (sqlite3_int64)x->node);
		bind_i64(s, 2, (sqlite3_int64)x->e.lblock);
		bind_i64(s, 3, x->e.nblocks);
		if (!x->nblocks_in_db) {
			bind_i64(s, 4, (sqlite3_int64)x->e.chunk);
			bind_i64(s, 5, x->e.slot);
		}
		rc = stmt_run(b, s);
	}
	for (i = 0; i < u->nc && rc == 0; i++) {
		s = u->st[UP_COUNT_ADD];
		bind_i64(s, 1, (sqlite3_int64)u->c[i].node);
		bind_i64(s, 2, (sqlite3_int64)u->c[i].n);
		rc = stmt_run(b, s);
	}
	if (!rc)
		rc = meta_put(b, "upgrade_cursor_node", u->cur_node);
	if (!rc)
		rc = meta_put(b, "upgrade_cursor_lblock", u->cur_lblock);
	if (!rc)
		rc = meta_put(b, "upgrade_rows_done", u->rows_done);
	if (!rc && last) {
		/* DROP TABLE refuses while a statement on it is prepared and
		 * active; ours are reset, and finalized now to be sure */
		for (i = 0; i < UP_NST; i++) {
			sqlite3_finalize(u->st[i]);
			u->st[i] = NULL;
		}
		rc = exec_sql(b, up_finish_sql);
	}
	if (!rc)
		rc = bmap_commit(b);
	else
		bmap_rollback(b);
	return rc;
}

/*
 * Rewrite the file without the old table's free pages: VACUUM in place.
 * In WAL mode that is one ordinary write transaction, so a crash leaves
 * the file before or after it, and every other connection (the daemon's
 * readers, a vsnapctl) stays coherent, which a VACUUM INTO and a rename
 * would not give: a connection open on the old file keeps reading it, and
 * shares the -wal and -shm names with the new one.  The copy is built in
 * a temporary file (temp_store FILE for this statement only, not in
 * memory), then goes through the WAL, which is truncated after.  It is
 * an optimization: a failure leaves a complete format-3 index, so it is
 * not reported (bmap_errmsg says why).
 */
static void up_compact(struct bmap *b)
{
	exec_sql(b, "PRAGMA temp_store = FILE");
	exec_sql(b, "VACUUM");
	exec_sql(b, "PRAGMA temp_store = MEMORY");
	exec_sql(b, "PRAGMA wal_checkpoint(TRUNCATE)");
}

static uint64_t up_step_rows(uint64_t step_rows)
{
	const char *env;
	unsigned long long v;
	char *end;

	if (step_rows)
		return step_rows;
	env = getenv("VSNAPFS_UPGRADE_STEP_ROWS");
	if (env && *env) {
		errno = 0;
		v = strtoull(env, &end, 10);
		if (errno == 0 && *end == '\0' && v > 0)
			return v;
	}
	return BMAP_UPGRADE_STEP_ROWS;
}

/*
 * Where a walk stands: set up by the first commit if none is under way.
 * user_version and meta.upgrade must agree: the version without the key
 * (a cursor lost) is -EUCLEAN; the key with user_version 2 is a walk an
 * earlier build of this code began, and gets the version before any step.
 */
static int up_start(struct bmap *b, struct upgrade *u)
{
	uint64_t v;
	sqlite3_int64 total;
	char *sql;
	int rc;

	rc = bmap_meta_get(b, "upgrade", &v);
	if (rc == -ENOENT && b->upgrading) {
		snprintf(b->errmsg, sizeof(b->errmsg), "upgrade: user_version says an upgrade is "
			 "under way, but meta has no upgrade cursor");
		return -EUCLEAN;
	} else if (rc == -ENOENT) {
		sql = sqlite3_mprintf("%s%sCOMMIT;", up_begin_sql, bmap_extent_sql);
		if (!sql)
			return -ENOMEM;
		rc = exec_sql(b, sql);
		sqlite3_free(sql);
		if (rc) {
			bmap_rollback(b);
			return rc;
		}
	} else if (rc == 0 && !b->upgrading) {
		rc = exec_sql(b, "PRAGMA user_version = " BMAP_STR(BMAP_UV_UPGRADING_2_3));
	}
	if (rc)
		return rc;
	b->upgrading = 1;
	rc = bmap_meta_get(b, "upgrade_cursor_node", &u->cur_node);
	if (!rc)
		rc = bmap_meta_get(b, "upgrade_cursor_lblock", &u->cur_lblock);
	if (!rc)
		rc = bmap_meta_get(b, "upgrade_rows_done", &u->rows_done);
	if (!rc)
		rc = oneoff_i64(b, "SELECT count(*) FROM bmap", &total);
	if (rc)
		return rc == -ENOENT ? -EUCLEAN : rc;
	u->rows_total = (uint64_t)total;
	for (int i = 0; i < UP_NST && rc == 0; i++) {
		int src = sqlite3_prepare_v2(b->db, up_sql[i], -1, &u->st[i], NULL);

		if (src != SQLITE_OK)
			rc = bmap_errno(b, src);
	}
	return rc;
}

int bmap_upgrade_run(struct bmap *b, uint64_t step_rows, const struct bmap_upgrade_ops *ops)
{
	struct upgrade u = { 0 };
	bool last = false;
	int rc;

	if (b->format == BMAP_FORMAT_VERSION)
		return 0;
	if (b->readonly)
		return -EROFS;
	if (b->format != 2)
		return -EPROTONOSUPPORT;        /* format 1 is upgraded by a writable open */
	if (!sqlite3_get_autocommit(b->db))
		return -EINVAL;
	step_rows = up_step_rows(step_rows);
	rc = up_start(b, &u);
	while (rc == 0 && !last) {
		rc = up_read(b, &u, step_rows, ops, &last);
		if (!rc)
			rc = ops->sync(ops->ctx);
		if (!rc)
			rc = up_write(b, &u, last);
		if (!rc && ops->progress)
			ops->progress(ops->ctx, u.rows_done, u.rows_total);
	}
	for (int i = 0; i < UP_NST; i++)
		sqlite3_finalize(u.st[i]);
	free(u.v);
	free(u.c);
	if (rc)
		return rc;
	rc = prepare_range(b, ST_F3_FIRST, ST_COUNT);
	if (rc)
		return rc;
	b->format = BMAP_FORMAT_VERSION;
	b->upgrading = 0;
	if (!b->upgraded_from)
		b->upgraded_from = 2;
	up_compact(b);
	return refs_ensure(b);
}

/* ---- counts and scrub results (issue 15: vsnapctl status) ---------------- */

int bmap_counts(struct bmap *b, struct bmap_counts *out)
{
	sqlite3_int64 v = 0, d = 0, s = 0;
	int rc = oneoff_i64(b, "SELECT count(*) FROM inode WHERE kind = 2 AND parent <> 0", &v);

	if (!rc)
		rc = oneoff_i64(b, "SELECT count(*) FROM inode WHERE kind = 1 AND ino <> 1"
				" AND parent <> 0", &d);
	if (!rc)
		rc = oneoff_i64(b, "SELECT count(*) FROM snapshot", &s);
	*out = (struct bmap_counts){ .volumes = (uint64_t)v, .dirs = (uint64_t)d,
				     .snapshots = (uint64_t)s };
	return rc;
}

/*
 * Scrub results: a table of its own, added like snapguid without a new
 * BMAP_FORMAT_VERSION (code that does not know it reads and writes the
 * index correctly).  Made by the first bmap_scrub_put; an index without it
 * has no result (-ENOENT).  The last BMAP_SCRUB_KEEP results are kept.
 */
static const char bmap_scrub_sql[] =
	"CREATE TABLE IF NOT EXISTS scrub (\n"
	"  id          INTEGER PRIMARY KEY AUTOINCREMENT,\n"
	"  at_ns       INTEGER NOT NULL, -- when it finished, ns since the epoch\n"
	"  duration_ns INTEGER NOT NULL, -- how long it ran\n"
	"  blocks      INTEGER NOT NULL, -- blocks read and verified\n"
	"  damaged     INTEGER NOT NULL  -- of those, damaged (checksum, short or unreadable)\n"
	");\n";

#define BMAP_SCRUB_KEEP 100

int bmap_scrub_put(struct bmap *b, const struct bmap_scrub *r)
{
	bool own = sqlite3_get_autocommit(b->db);
	sqlite3_stmt *s = NULL;
	int src, rc;

	if (b->readonly)
		return -EROFS;
	rc = own ? exec_sql(b, "BEGIN IMMEDIATE") : 0;
	if (!rc)
		rc = exec_sql(b, bmap_scrub_sql);
	if (!rc) {
		src = sqlite3_prepare_v2(b->db, "INSERT INTO scrub(at_ns, duration_ns, blocks, damaged)"
					 " VALUES(?1, ?2, ?3, ?4)", -1, &s, NULL);
		rc = src == SQLITE_OK ? 0 : bmap_errno(b, src);
	}
	if (!rc) {
		bind_i64(s, 1, r->at_ns);
		bind_i64(s, 2, r->duration_ns);
		bind_i64(s, 3, u64_bits(r->blocks));
		bind_i64(s, 4, u64_bits(r->damaged));
		rc = stmt_run(b, s);
	}
	sqlite3_finalize(s);
	if (!rc)
		rc = exec_sql(b, "DELETE FROM scrub WHERE id <= (SELECT max(id) FROM scrub) - "
			      BMAP_STR(BMAP_SCRUB_KEEP));
	if (own && !rc)
		rc = exec_sql(b, "COMMIT");
	if (own && rc)
		exec_sql(b, "ROLLBACK");
	return rc;
}

int bmap_scrub_last(struct bmap *b, struct bmap_scrub *out)
{
	sqlite3_stmt *s = NULL;
	sqlite3_int64 n;
	int src, rc = oneoff_i64(b, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"
				 " AND name = 'scrub'", &n);

	if (!rc && !n)
		rc = -ENOENT;
	if (!rc) {
		src = sqlite3_prepare_v2(b->db, "SELECT at_ns, duration_ns, blocks, damaged FROM scrub"
					 " ORDER BY id DESC LIMIT 1", -1, &s, NULL);
		rc = src == SQLITE_OK ? 0 : bmap_errno(b, src);
	}
	if (!rc) {
		src = sqlite3_step(s);
		if (src == SQLITE_ROW) {
			out->at_ns = sqlite3_column_int64(s, 0);
			out->duration_ns = sqlite3_column_int64(s, 1);
			out->blocks = (uint64_t)sqlite3_column_int64(s, 2);
			out->damaged = (uint64_t)sqlite3_column_int64(s, 3);
		} else {
			rc = src == SQLITE_DONE ? -ENOENT : bmap_errno(b, src);
		}
	}
	sqlite3_finalize(s);
	return rc;
}
