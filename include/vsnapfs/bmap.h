/*
 * block map: the store's index in SQLite (index.sqlite, WAL mode).
 *
 * The index is the source of truth.  It holds the namespace (inodes), the
 * map nodes (a volume's blocks, snapshots and clones share them through a
 * parent link) and one row per mapped block of a node.  Every sqlite3_* call
 * of vsnapfs lives in src/bmap; the schema is in src/bmap/bmap.c and drawn
 * in docs/on-disk-format.md.
 *
 * Map nodes.  A node is a set of rows (node, lblock) -> (chunk, slot, cksum)
 * plus a parent node and an inherit limit: the content of node N at block b
 * is N's own row for b if there is one, else, when b < N.inherit and N has a
 * parent, the content of the parent at b, else zeros.  A row whose chunk is
 * 0 is a tombstone: the block reads as zeros whatever the parent holds.
 * Each (chunk, slot) is referenced by at most one row.
 *
 * Errors:     calls returning int return 0 or a negative errno; SQLite codes
 *             are mapped in one place: FULL -> -ENOSPC, CONSTRAINT ->
 *             -EEXIST, BUSY/LOCKED -> -EBUSY, CORRUPT/NOTADB -> -EUCLEAN,
 *             NOMEM -> -ENOMEM, READONLY -> -EROFS, CANTOPEN -> the OS
 *             errno (-ENOENT, -EACCES), anything else -> -EIO.
 *             A missing row is -ENOENT.
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

#define BMAP_FORMAT_VERSION 2
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
 * index (else -EUCLEAN), of format BMAP_FORMAT_VERSION (else
 * -EPROTONOSUPPORT), and passes SQLite's quick_check (else -EUCLEAN).
 * -ENOENT if path does not exist.  readonly opens without write access.
 */
int bmap_open(const char *path, int readonly, struct bmap **out);
/* One more read-only connection to the index that checked, a handle of
 * bmap_open, has open: the same checks but quick_check, which reads the
 * whole file and which checked has passed (a daemon opens three). */
int bmap_open_reader(struct bmap *checked, struct bmap **out);
/* The format version the open upgraded the index from (a writable open of
 * an older index upgrades it, docs/on-disk-format.md), or 0. */
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

/* Map nodes.  create fills n->id.  delete removes the node and all its rows.
 * children: how many nodes have this one as parent. */
int bmap_node_create(struct bmap *b, struct bmap_node *n);
int bmap_node_get(struct bmap *b, uint64_t id, struct bmap_node *out);
int bmap_node_update(struct bmap *b, const struct bmap_node *n);
int bmap_node_delete(struct bmap *b, uint64_t id);
int bmap_node_children(struct bmap *b, uint64_t id, uint64_t *count);

/* Rows.  put inserts or replaces (node, lblock); loc->chunk_id 0 writes a
 * tombstone.  lblock < 2^63 - 1 and chunk_id < 2^63, else -EINVAL.  del of
 * a missing row is not an error.  del_from removes every row with
 * lblock >= from. */
int bmap_row_put(struct bmap *b, uint64_t node, uint64_t lblock, const struct chunk_loc *loc);
int bmap_row_del(struct bmap *b, uint64_t node, uint64_t lblock);
int bmap_row_del_from(struct bmap *b, uint64_t node, uint64_t from);
/* Rows of node with lblock < below, increasing lblock order.  In every walk
 * of rows, loc->lblock is the row's lblock. */
int bmap_row_foreach(struct bmap *b, uint64_t node, uint64_t below,
		     int (*fn)(void *ctx, uint64_t lblock, const struct chunk_loc *loc), void *ctx);
/* Number of non-tombstone rows of a node (0 for a node that does not
 * exist): node.nrows, which every call that adds, removes or moves rows
 * keeps, so O(1); a scan on a read-only index of format 1.  _scan counts
 * the rows themselves, O(rows): check compares the two. */
int bmap_row_count(struct bmap *b, uint64_t node, uint64_t *count);
int bmap_row_count_scan(struct bmap *b, uint64_t node, uint64_t *count);

/* For garbage collection and check: fn(ctx, chunk_id, nrefs) for every chunk
 * referenced by at least one row, increasing chunk_id. */
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
/* Deletes the snapshot and all its snapshot inodes (not their nodes). */
int bmap_snap_delete(struct bmap *b, uint64_t id);
/* Snapshots whose dir is dir (any), for rmdir of a directory that has them. */
int bmap_snap_count(struct bmap *b, uint64_t dir, uint64_t *count);

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
 * Fold node into its only child: the node's rows that the child does not
 * have and that lie below the child's inherit limit move to the child, the
 * rest are deleted with the node; the child takes the node's parent and
 * inherit = min(child.inherit, node.inherit).  The caller is inside
 * bmap_begin() and has checked that node has exactly this one child.
 */
int bmap_node_merge(struct bmap *b, uint64_t node, uint64_t child);
/*
 * The same in steps that each hold the index for a bounded time: move or
 * drop the node's max_rows lowest rows; the step that finds no more than
 * that does the rest and sets *done.  Between two steps the child sees
 * exactly what it saw before the first (each of its blocks is in its own
 * row or, still, in the node's), so each step can be its own transaction,
 * and a crash between two leaves a node that the next release merges on.
 * Each step checks that child is still node's child.
 */
int bmap_node_merge_some(struct bmap *b, uint64_t node, uint64_t child, uint64_t max_rows,
			 bool *done);
/* Every node, increasing id (for check and tree). */
int bmap_node_list(struct bmap *b, int (*fn)(void *ctx, const struct bmap_node *n), void *ctx);
/* Point row (node, lblock) at to (chunk, slot and checksum) if it still
 * points at from's chunk and slot (garbage collection moved the block);
 * -ENOENT if the row changed meanwhile. */
int bmap_row_relocate(struct bmap *b, uint64_t node, uint64_t lblock,
		      const struct chunk_loc *from, const struct chunk_loc *to);
/* Every data row of every node (check, scrub): one scan, in no order. */
int bmap_rows_all(struct bmap *b,
		  int (*fn)(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc),
		  void *ctx);
/* Rows of node, data and tombstones, increasing lblock, with lblock in [from, below). */
int bmap_row_range(struct bmap *b, uint64_t node, uint64_t from, uint64_t below,
		   int (*fn)(void *ctx, uint64_t lblock, const struct chunk_loc *loc), void *ctx);

#endif
