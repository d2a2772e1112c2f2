/*
 * block map: the store's index in SQLite (index.sqlite, WAL mode).
 *
 * The index is the source of truth.  It holds the namespace (inodes), the
 * map nodes (a volume's blocks, snapshots and clones share them through a
 * parent link) and one row per mapped block of a node.  Every sqlite3_* call
 * of vsnapfs lives in src/bmap; the schema is in src/bmap/bmap.c and drawn
 * in docs/on-disk-format.md.
 *
 * Map nodes.  A node is a set of extents (node, lblock) -> (nblocks, chunk,
 * slot): blocks lblock .. lblock+nblocks-1 of the node live in slots slot ..
 * slot+nblocks-1 of chunk (format 3; docs/design.md, "D1. The extent
 * index").  A node also has a parent node and an inherit limit: the content
 * of node N at block b is N's own extent covering b if there is one, else,
 * when b < N.inherit and N has a parent, the content of the parent at b,
 * else zeros.  An extent whose chunk is 0 is a tombstone run: its blocks
 * read as zeros whatever the parent holds.  The extents of a node are
 * disjoint and in canonical form (src/emap: no two touching extents that
 * could be one), a data extent stays inside one chunk, and each (chunk,
 * slot) is covered by at most one extent.  The index keeps no checksum: the
 * chunk files do (vsnapfs/chunk.h).
 *
 * Errors:     calls returning int return 0 or a negative errno; SQLite codes
 *             are mapped in one place: FULL -> -ENOSPC, CONSTRAINT ->
 *             -EEXIST, BUSY/LOCKED -> -EBUSY, CORRUPT/NOTADB -> -EUCLEAN,
 *             NOMEM -> -ENOMEM, READONLY -> -EROFS, CANTOPEN -> the OS
 *             errno (-ENOENT, -EACCES), anything else -> -EIO.
 *             A missing row is -ENOENT.  Inside bmap_begin(), a call that
 *             fails may have made part of its edits: roll back.
 * Ownership:  the caller owns every struct passed in or out; nothing is kept.
 * Threads:    a struct bmap is NOT thread-safe: the caller serializes every
 *             call on one handle (the namespace layer holds its mutex).
 *             Several processes may open one index (one writer, readers).
 * Callbacks:  the fn of every call that takes one (the list, walk and
 *             scan calls) runs while the walk is under way: it must not
 *             call bmap_* on the same handle (an assert stops the process).
 * Durability: a change is durable when bmap_commit() returns 0
 *             (synchronous=FULL).  Outside bmap_begin()/bmap_commit() every
 *             call is its own transaction.
 */
#ifndef VSNAPFS_BMAP_H
#define VSNAPFS_BMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "vsnapfs/chunk.h"

#define BMAP_FORMAT_VERSION 3
#define BMAP_NAME_MAX       255
#define BMAP_ROOT_INO       1

struct bmap;                            /* opaque */

enum bmap_kind { BMAP_DIR = 1, BMAP_VOL = 2 };

struct bmap_inode {
	uint64_t ino;                   /* BMAP_ROOT_INO for the root */
	uint64_t parent;                /* 0: root, or an unlinked volume still open */
	char name[BMAP_NAME_MAX + 1];   /* NUL-terminated; "" for root and unlinked */
	uint32_t kind;                  /* enum bmap_kind */
	uint32_t mode;                  /* permission bits only (07777) */
	uint32_t uid, gid;
	int64_t atime_ns, mtime_ns, ctime_ns;   /* ns since the epoch */
	uint64_t size;                  /* volumes: size in bytes; dirs: 0 */
	uint64_t node;                  /* volumes: current map node; dirs: 0 */
};

struct bmap_node {
	uint64_t id;
	uint64_t parent;                /* 0: none */
	uint64_t inherit;               /* blocks [0, inherit) come from parent */
};

/* Create a new, empty index at path (must not exist: -EEXIST) for blocks of
 * block_size bytes, with the root directory (mode 0755, owned by uid/gid). */
int bmap_create(const char *path, uint32_t block_size, uint32_t uid, uint32_t gid);

/*
 * Open an existing index.  Checks, writing nothing: the file is a vsnapfs
 * index (else -EUCLEAN), of format 1 to BMAP_FORMAT_VERSION (else
 * -EPROTONOSUPPORT), and passes SQLite's quick_check (else -EUCLEAN).
 * -ENOENT if path does not exist.  readonly opens without write access.
 * An index of format 1 or 2 opens, but its blocks are usable only after
 * bmap_upgrade_run() (below); a writable open takes format 1 to 2 first
 * (one transaction).  A format-2 index whose upgrade has begun (its
 * user_version is no longer 2, so that older vsnapfs refuses it) opens as
 * format 2 too.
 */
int bmap_open(const char *path, int readonly, struct bmap **out);
/* One more read-only connection to the index that checked, a handle of
 * bmap_open, has open: the same checks but quick_check, which reads the
 * whole file and which checked has passed (a daemon opens three). */
int bmap_open_reader(struct bmap *checked, struct bmap **out);
/* The format version this handle upgraded the index from (1 by a writable
 * open, else 2 by bmap_upgrade_run()), or 0. */
int bmap_upgraded_from(struct bmap *b);
void bmap_close(struct bmap *b);        /* NULL is fine */

uint32_t bmap_block_size(struct bmap *b);

/* A one-line description of the last SQLite error, for logs. */
const char *bmap_errmsg(struct bmap *b);

/* Unsigned 64-bit values in the meta table ("next_chunk_id", ...).
 * get: -ENOENT if the key is missing. */
int bmap_meta_get(struct bmap *b, const char *key, uint64_t *value);
int bmap_meta_set(struct bmap *b, const char *key, uint64_t value);

/* One write transaction around several calls.  On rollback nothing of it
 * stays; a failed commit rolls back too.  Not nestable (-EINVAL); -EROFS on
 * a read-only handle.  rollback without a transaction does nothing. */
int bmap_begin(struct bmap *b);
int bmap_commit(struct bmap *b);
void bmap_rollback(struct bmap *b);
/* Fault injection for tests: the next "after" commits succeed, then every
 * commit rolls back and fails with -err, until cleared with err == 0. */
void bmap_fault_commit(struct bmap *b, uint32_t after, int err);
/* Rows inserted, updated or deleted through this handle since it was
 * opened, committed or not: a number that moves with every change. */
uint64_t bmap_changes(struct bmap *b);

/* A read snapshot, on a read-only handle too: until bmap_snapshot_end(),
 * every call sees the index as committed when bmap_snapshot_begin()
 * returned, whatever other connections commit meanwhile (SQLite WAL).
 * -EINVAL inside a transaction. */
int bmap_snapshot_begin(struct bmap *b);
void bmap_snapshot_end(struct bmap *b);

/* Inodes.  Names are compared bytewise.  insert fills in->ino (never reused)
 * and returns -EEXIST if (parent, name) exists. */
int bmap_inode_get(struct bmap *b, uint64_t ino, struct bmap_inode *out);
int bmap_inode_lookup(struct bmap *b, uint64_t parent, const char *name, struct bmap_inode *out);
int bmap_inode_insert(struct bmap *b, struct bmap_inode *in);
/* Rewrite every field but ino, parent and name. */
int bmap_inode_update(struct bmap *b, const struct bmap_inode *in);
/* Move to (parent, name); -EEXIST if taken.  parent 0 with name "" unlinks
 * the inode while keeping its row (an open volume). */
int bmap_inode_move(struct bmap *b, uint64_t ino, uint64_t parent, const char *name);
int bmap_inode_delete(struct bmap *b, uint64_t ino);
/* Children of dir with ino > after, in increasing ino order; fn returning
 * non-zero stops the walk and is returned. */
int bmap_dir_list(struct bmap *b, uint64_t dir, uint64_t after,
		  int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx);
int bmap_dir_count(struct bmap *b, uint64_t dir, uint64_t *count);
/* Inodes with parent 0 other than the root (unlinked while open). */
int bmap_orphan_list(struct bmap *b, int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx);
int bmap_inode_count(struct bmap *b, uint64_t *count);
/* Live volumes and directories (the root and unlinked inodes excluded),
 * and snapshots (vsnapctl status). */
struct bmap_counts {
	uint64_t volumes, dirs, snapshots;
};
int bmap_counts(struct bmap *b, struct bmap_counts *out);

/*
 * Scrub results (vsnapctl scrub, shown by vsnapctl status): table scrub,
 * added without a new format version (docs/on-disk-format.md).  put
 * creates the table if need be and keeps the last 100 results; inside the
 * caller's transaction if one is open, else in one of its own; -EROFS on a
 * read-only handle.  last: the newest, -ENOENT if none (or no table).
 */
struct bmap_scrub {
	int64_t at_ns;                  /* when it finished, ns since the epoch */
	int64_t duration_ns;
	uint64_t blocks;                /* blocks read and verified */
	uint64_t damaged;               /* of those, damaged */
};
int bmap_scrub_put(struct bmap *b, const struct bmap_scrub *r);
int bmap_scrub_last(struct bmap *b, struct bmap_scrub *out);

/* Map nodes.  create fills n->id.  delete removes the node and all its rows.
 * children: how many nodes have this one as parent. */
int bmap_node_create(struct bmap *b, struct bmap_node *n);
int bmap_node_get(struct bmap *b, uint64_t id, struct bmap_node *out);
int bmap_node_update(struct bmap *b, const struct bmap_node *n);
int bmap_node_delete(struct bmap *b, uint64_t id);
int bmap_node_children(struct bmap *b, uint64_t id, uint64_t *count);

/* ---- extents (format 3) -------------------------------------------------- */

struct bmap_ext {                       /* one extent of a node; a plain value */
	uint64_t lblock;                /* first block; lblock + nblocks <= BMAP_LBLOCK_LIMIT */
	uint32_t nblocks;               /* >= 1 */
	uint32_t slot;                  /* first slot; 0 for a tombstone */
	uint64_t chunk;                 /* chunk id; 0 = tombstone run */
};
#define BMAP_LBLOCK_LIMIT (1ULL << 48)  /* = EMAP_LBLOCK_LIMIT */

/*
 * Map e over node's blocks [e->lblock, +e->nblocks): what the node had there
 * (data or tombstones) is replaced; extents that straddle the ends are
 * trimmed (split in three when e lies inside one).  e->chunk 0 writes a
 * tombstone run.  A data run continuing its left or right neighbour (same
 * chunk, consecutive slots) merges with it.  node.nblocks moves by the
 * difference.  -EINVAL for a data run that leaves its chunk (slot + nblocks
 * > CHUNK_NSLOTS) or a range past BMAP_LBLOCK_LIMIT.
 */
int bmap_ext_put(struct bmap *b, uint64_t node, const struct bmap_ext *e);
/* Forget node's blocks [lblock, lblock+nblocks) (data and tombstones): they
 * show the parent again, or zeros.  Nothing there is not an error. */
int bmap_ext_del(struct bmap *b, uint64_t node, uint64_t lblock, uint64_t nblocks);
/* Forget every block of node >= from (an extent straddling from is trimmed). */
int bmap_ext_del_from(struct bmap *b, uint64_t node, uint64_t from);
/* node's extents (data and tombstones) that overlap [from, below), in
 * increasing lblock order, clipped to [from, below): fn sees only blocks in
 * the range, with slot moved along for a data extent clipped on the left. */
int bmap_ext_range(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
		   int (*fn)(void *ctx, const struct bmap_ext *e), void *ctx);
/* Data blocks of node in [from, below) (rows straddling either end count
 * their part inside): one aggregate over the rows starting in the range
 * and a descent at each end, no callback per row. */
int bmap_ext_blocks(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
		    uint64_t *count);
/* Number of data blocks of a node (0 for a node that does not exist):
 * node.nblocks, kept by every call that adds, removes or moves extents, so
 * O(1).  _scan adds up the extents themselves, O(extents): check compares
 * the two. */
int bmap_node_blocks(struct bmap *b, uint64_t node, uint64_t *count);
int bmap_node_blocks_scan(struct bmap *b, uint64_t node, uint64_t *count);
/* Number of extent rows of a node, data and tombstones (figures, tests). */
int bmap_node_extents(struct bmap *b, uint64_t node, uint64_t *count);

/* For garbage collection and check: fn(ctx, chunk_id, nblocks) for every
 * chunk that data extents cover, with the number of its slots they cover,
 * increasing chunk_id. */
int bmap_chunk_refs(struct bmap *b, int (*fn)(void *ctx, uint64_t chunk_id, uint64_t nrefs),
		    void *ctx);

/* ---- snapshots (format 1 includes these tables) --------------------------
 *
 * A snapshot belongs to the directory whose ".snapshots" holds it.  Its
 * frozen tree is a copy of the inode rows below that directory as they were
 * ("snapshot inodes", keyed by (snap, ino) with the original inode numbers;
 * the snapshot's root is the directory itself, so its top-level entries have
 * parent == snap.dir).  A volume's snapshot inode names the frozen map node.
 */
struct bmap_snap {
	uint64_t id;                    /* filled by insert; never reused */
	uint64_t dir;                   /* ino of the directory it belongs to */
	char name[BMAP_NAME_MAX + 1];   /* "NAME", or "FILE@NAME" for one volume */
	int64_t created_ns;
};

/* -EEXIST if (dir, name) exists. */
int bmap_snap_insert(struct bmap *b, struct bmap_snap *s);
int bmap_snap_get(struct bmap *b, uint64_t id, struct bmap_snap *out);
int bmap_snap_lookup(struct bmap *b, uint64_t dir, const char *name, struct bmap_snap *out);
/* Snapshots of dir with id > after, increasing id; dir 0: every snapshot. */
int bmap_snap_list(struct bmap *b, uint64_t dir, uint64_t after,
		   int (*fn)(void *ctx, const struct bmap_snap *s), void *ctx);
/* -EEXIST if the new name is taken in the same dir. */
int bmap_snap_rename(struct bmap *b, uint64_t id, const char *name);
/* Deletes the snapshot, all its snapshot inodes (not their nodes) and its guid. */
int bmap_snap_delete(struct bmap *b, uint64_t id);
/* Snapshots whose dir is dir (any), for rmdir of a directory that has them. */
int bmap_snap_count(struct bmap *b, uint64_t dir, uint64_t *count);

/*
 * Snapshot guids (docs/design.md, "Snapshot identity"): 16 bytes that
 * name a snapshot across stores (send/receive).  Every snapshot of an
 * index opened writable by this code has one; an index that no such open
 * has seen has none (-ENOSYS from every call).  set: guid NULL gives a new
 * random one; -EEXIST if another snapshot has guid.  get, by_guid:
 * -ENOENT if there is none.
 */
#define BMAP_GUID_BYTES 16
int bmap_snap_guid_set(struct bmap *b, uint64_t snap, const uint8_t *guid);
int bmap_snap_guid_get(struct bmap *b, uint64_t snap, uint8_t *guid);
int bmap_snap_by_guid(struct bmap *b, const uint8_t *guid, struct bmap_snap *out);

/*
 * Referenced blocks (table refblocks, issue 15): the blocks a node shows
 * with data, its own and its ancestors' (st_blocks of a live volume).  The
 * volume layer keeps the count; these only store it.  get: -ENOENT when
 * the node has no count (not counted yet, or an index without the table).
 * set: a node that does not exist gets no row.  copy: to's row becomes
 * from's (none if from has none).  missing: the first volume node (live or
 * in a snapshot) after `after` without a row, and the largest size that
 * names it; -ENOENT when there is none.
 */
int bmap_refs_get(struct bmap *b, uint64_t node, uint64_t *nblocks);
int bmap_refs_set(struct bmap *b, uint64_t node, uint64_t nblocks);
int bmap_refs_copy(struct bmap *b, uint64_t from, uint64_t to);
int bmap_refs_forget(struct bmap *b, uint64_t node);
int bmap_refs_missing(struct bmap *b, uint64_t after, uint64_t *node, uint64_t *size);
/* The blocks node shows with data in [from, below), its chain resolved
 * (bmap_node_content): O(extents of the chain there). */
int bmap_node_data_blocks(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
			  uint64_t *count);

/* Snapshot inodes: same struct as live ones, ino and parent as they were. */
int bmap_sinode_insert(struct bmap *b, uint64_t snap, const struct bmap_inode *in);
int bmap_sinode_get(struct bmap *b, uint64_t snap, uint64_t ino, struct bmap_inode *out);
int bmap_sinode_lookup(struct bmap *b, uint64_t snap, uint64_t parent, const char *name,
		       struct bmap_inode *out);
/* Children of parent in snap with ino > after, increasing ino. */
int bmap_sinode_list(struct bmap *b, uint64_t snap, uint64_t parent, uint64_t after,
		     int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx);
/* Every snapshot inode of snap (any parent), increasing ino. */
int bmap_sinode_all(struct bmap *b, uint64_t snap,
		    int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx);

/* Every live inode below dir (recursively, dir itself excluded), parents
 * before children. */
int bmap_subtree(struct bmap *b, uint64_t dir,
		 int (*fn)(void *ctx, const struct bmap_inode *in), void *ctx);

/* A list of inodes, filled by giving bmap_inodes_add (ctx: the list) to
 * one of the walks above; rc is -ENOMEM if an entry could not be added.
 * The caller frees v. */
struct bmap_inodes {
	struct bmap_inode *v;
	size_t n, cap;
	int rc;
};
int bmap_inodes_add(void *ctx, const struct bmap_inode *in);

/* ---- node lifetime --------------------------------------------------------- */

/* How many inodes and snapshot inodes name node. */
int bmap_node_refs(struct bmap *b, uint64_t node, uint64_t *count);
/* The child of a node that has exactly one (-ENOENT if none). */
int bmap_node_only_child(struct bmap *b, uint64_t node, uint64_t *child);
/*
 * Fold node into its only child: the node's blocks that the child does not
 * cover itself and that lie below the child's inherit limit become the
 * child's (its extents, trimmed where the child has its own), the rest are
 * deleted with the node; the child takes the node's parent and inherit =
 * min(child.inherit, node.inherit).  The caller is inside bmap_begin() and
 * has checked that node has exactly this one child.
 */
int bmap_node_merge(struct bmap *b, uint64_t node, uint64_t child);
/*
 * The same in steps that each hold the index for a bounded time: move or
 * drop the node's extents in its lowest max_exts extent rows (0 counts as
 * 1); the step that finds no more than that does the rest and sets *done.
 * Between two steps the child sees exactly what it saw before the first
 * (each of its blocks is in its own extent or, still, in the node's), so
 * each step can be its own transaction, and a crash between two leaves a
 * node that the next release merges on.  Each step checks that child is
 * still node's child.
 */
int bmap_node_merge_some(struct bmap *b, uint64_t node, uint64_t child, uint64_t max_exts,
			 bool *done);
/* Every node, increasing id (for check and tree). */
int bmap_node_list(struct bmap *b, int (*fn)(void *ctx, const struct bmap_node *n), void *ctx);
/*
 * Garbage collection moved blocks [from->lblock, +from->nblocks) of node,
 * slots [from->slot, ...) of from->chunk, to slots [to_slot, ...) of
 * to_chunk: repoint them if node still maps exactly those blocks there
 * (they may be part of a longer extent, which is split), else -ENOENT and
 * nothing changes (a newer write won; the copy is garbage).
 */
int bmap_ext_relocate(struct bmap *b, uint64_t node, const struct bmap_ext *from,
		      uint64_t to_chunk, uint32_t to_slot);
/* Every data extent of every node (check, scrub, gc): one scan, in no order. */
int bmap_exts_all(struct bmap *b,
		  int (*fn)(void *ctx, uint64_t node, const struct bmap_ext *e), void *ctx);

/* ---- upgrade from format 2 --------------------------------------------------
 *
 * A format-2 index (one row per block, with its checksum) is upgraded in
 * place by a writable open of the daemon, in steps (docs/design.md, "D6.
 * Upgrade from index format 2").  bmap_open() of a format-2 index succeeds
 * (read-only or not) but every call that reads or writes blocks (the
 * extent calls, node_blocks, node_extents, chunk_refs, exts_all, merge,
 * relocate, node_delete) fails with -EPROTONOSUPPORT until
 * bmap_upgrade_run() has finished; meta, transactions, inodes, snapshots,
 * snapshot inodes and node create/get/update/list/children/refs work at
 * format 1 and 2.  bmap_format() says which format the handle sees.
 *
 * bmap_upgrade_run() walks the old rows in (node, lblock) order from the
 * cursor kept in meta, in steps of step_rows rows (0: a default of 1 M, or
 * the env VSNAPFS_UPGRADE_STEP_ROWS).  For each step: ops->row() for every
 * data row (the caller writes the row's checksum and lblock beside its
 * chunk: chunk_sidecar_put), then ops->sync() (the caller makes those
 * durable), then one commit that inserts the step's extents and moves the
 * cursor.  The first commit, before any row(), already makes the file one
 * that older vsnapfs refuses (-EPROTONOSUPPORT there), as rows it wrote
 * into the old table behind the cursor would be lost; bmap_format() says 2
 * until the run ends.  A crash anywhere loses at most the step in progress:
 * the next run resumes at the cursor, and row() may see rows again (it
 * must be idempotent).  The last step drops the old table, sets the format to 3 in
 * the same commit, then rewrites the file compactly: VACUUM in place, one
 * ordinary WAL transaction, so a crash leaves the file before or after it
 * and other connections to the index stay coherent (a VACUUM INTO and a
 * rename would leave them on the old file, sharing its -wal and -shm
 * names); it needs free space for a copy in SQLite's temporary directory
 * and one in the WAL, which is truncated after.  A failed compaction is
 * not an error (the index is complete without it; bmap_errmsg() says why).
 * ops->progress() (may be NULL) is called after every step's commit with
 * rows done and the total (count(*) of the old table at the start of the
 * run).  0 if the index is format 3 already; -EROFS on a read-only handle;
 * -EINVAL inside bmap_begin(); -EUCLEAN if the file says an upgrade is
 * under way but has no cursor; an error of row() or sync() is returned as
 * it is, after nothing of that step was committed.  The handle stays
 * usable, at format 3; a handle opened before the run ends (a reader)
 * keeps the format it opened at: open readers after it.
 */
struct bmap_upgrade_ops {
	int (*row)(void *ctx, uint64_t node, uint64_t lblock, uint64_t chunk, uint32_t slot,
		   uint64_t cksum);
	int (*sync)(void *ctx);
	void (*progress)(void *ctx, uint64_t rows_done, uint64_t rows_total);
	void *ctx;
};
int bmap_format(struct bmap *b);
int bmap_upgrade_run(struct bmap *b, uint64_t step_rows, const struct bmap_upgrade_ops *ops);

/* ---- reading a node's chain (src/bmap/chain.c) ------------------------------
 *
 * Read-only queries built on the calls above (no SQL of their own), for
 * vsnapctl and its tests: what a node shows of its parent, what it shows
 * after its whole chain is resolved, and where two nodes of one lineage
 * differ.  The rules are the ones at the top of this file: a node shows its
 * own extent, else (below its inherit limit, with a parent) what the parent
 * shows, else zeros.  Each call reads the index as it is committed when
 * each of its statements runs: wrap it in bmap_snapshot_begin() for one
 * consistent view of a store that a daemon is writing.  fn runs after or
 * during the walk: it must not call bmap_* on the same handle.  A missing
 * parent node, or a parent loop, is -EUCLEAN.
 */

/*
 * The runs of [from, below) in which child shows what its parent shows:
 * below child->inherit and covered by no extent (data or tombstone) of the
 * child; fn(ctx, lblock, nblocks) for each, in increasing order.  Nothing
 * if child has no parent.  (A merge moves exactly these blocks of the
 * parent into the child; vsnapctl list counts a node's exclusive blocks as
 * those no child shows.)
 */
int bmap_node_shown(struct bmap *b, const struct bmap_node *child, uint64_t from,
		    uint64_t below, int (*fn)(void *ctx, uint64_t lblock, uint64_t nblocks),
		    void *ctx);

struct bmap_run {                       /* a run of resolved content; a plain value */
	uint64_t lblock, nblocks;
	bool data;                      /* false: reads as zeros (tombstone or nothing) */
};

/* What node shows over [from, below), its chain resolved: runs of data and
 * of zeros covering the range, in order, touching runs of one kind merged.
 * Cost: the extents of the chain's nodes inside the range, and one query
 * per node of the chain and piece of the range still unresolved. */
int bmap_node_content(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
		      int (*fn)(void *ctx, const struct bmap_run *r), void *ctx);

/*
 * The blocks of [0, below) where nodes node_a and node_b show different content,
 * from the extents alone (no data is read): fn(ctx, run) for each run, in
 * increasing order, touching runs merged, run->data saying what b shows
 * there.  Two blocks are the same when both read as zeros or both map to
 * the same (chunk, slot).  The algorithm (docs/design.md, "Diff of two
 * nodes") reads the extents of the nodes strictly between each of a and b
 * and their nearest common ancestor, and resolves that ancestor's content
 * only where one side's extents are tombstones, or where the two sides'
 * inherit limits differ: the cost follows what changed, not the volume
 * size.  -EXDEV if a and b have no common ancestor (two lineages).
 */
int bmap_node_diff(struct bmap *b, uint64_t node_a, uint64_t node_b, uint64_t below,
		   int (*fn)(void *ctx, const struct bmap_run *r), void *ctx);

#endif
