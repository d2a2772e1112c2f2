/*
 * volume I/O: byte ranges of one open volume onto blocks.
 *
 * A struct vol is the in-memory state of one volume (or frozen snapshot
 * image) while it is in use: its size, the map node it writes into, and a
 * flattened map of every block it can see (its own rows and those inherited
 * from ancestor nodes), so that a read never queries SQLite and costs the
 * same whatever the depth of the volume's history.
 *
 * Writes append whole blocks to the chunk store, then update the in-memory
 * map and mark the block dirty.  Dirty blocks reach the index in batches:
 * vol_collect() takes them, the caller syncs the chunk store, applies the
 * batch inside one bmap transaction and commits (see src/ns/flush.c).
 *
 * Errors:     0 / count or a negative errno.  -EIO for a block whose data
 *             does not match its checksum (logged with label, offset, chunk),
 *             -ENOSPC when the store's file system is full, -EROFS for a
 *             write to a read-only vol, -EFBIG past VOL_MAX_BYTES.
 * Ownership:  buffers stay the caller's.  vol_open() borrows cs and bm
 *             for the vol's lifetime (bm to load the map at first use).
 * Threads:    read/write/truncate/punch/seek/stat and vol_collect() may run
 *             concurrently on one vol.  vol_open() and vol_batch_apply() use
 *             the bmap handle: the caller serializes those with every other
 *             user of it.  vol_close() when nothing else uses the vol.
 * Locks:      (ranks and order: vsnapfs/lock.h)  Each vol has vol.gate and
 *             vol.lock.  Besides those, vol_read, vol_write, vol_truncate,
 *             vol_punch and vol_seek may load the map and then take the
 *             caller's vol_index locks, load_mu then db_mu (vol_set_index):
 *             call them holding neither, nor the gate.  The other calls
 *             take only vol.lock (and the chunk store's own locks), and may
 *             be called under db_mu and files_mu.  vol_switch_node,
 *             vol_reset and vol_attach need the gate closed by the caller.
 * Durability: none by itself: a write is durable once a batch collected
 *             after it returned has been applied and committed after a
 *             chunk_sync() that started after that collection.
 */
#ifndef VSNAPFS_VOL_H
#define VSNAPFS_VOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vsnapfs/bmap.h"
#include "vsnapfs/chunk.h"
#include "vsnapfs/lock.h"

#define VOL_MAX_BYTES (1ULL << 54)              /* 16 PiB: keys fit the map */

struct vol;                                     /* opaque */

/*
 * A vol of node with the given size; its map (its rows and its ancestors')
 * is loaded at first use, from bm or as vol_set_index() says.  readonly
 * vols refuse every change with -EROFS.  label names the volume in log
 * lines (copied).
 */
int vol_open(struct chunk_store *cs, struct bmap *bm, uint64_t node, uint64_t size,
	     bool readonly, const char *label, struct vol **out);
void vol_close(struct vol *v);                  /* NULL is fine; drops unflushed changes */
void vol_set_label(struct vol *v, const char *label);

/* Short at end of volume; 0 at or past it. */
ssize_t vol_read(struct vol *v, void *buf, size_t len, uint64_t off);
/* Extends the size when writing past it.  Returns len or an error (on error
 * some blocks of the range may already hold the new data). */
ssize_t vol_write(struct vol *v, const void *buf, size_t len, uint64_t off);
int vol_truncate(struct vol *v, uint64_t size);
/* Zero [off, off+len) clipped to the size; whole blocks become unallocated. */
int vol_punch(struct vol *v, uint64_t off, uint64_t len);
/* whence SEEK_DATA or SEEK_HOLE, block granularity; -ENXIO at or past end. */
int vol_seek(struct vol *v, uint64_t off, int whence, uint64_t *out);

uint64_t vol_size(struct vol *v);
uint64_t vol_node(struct vol *v);
/* Blocks held by its own node; meaningful only once vol_loaded(). */
uint64_t vol_own_blocks(struct vol *v);
/* The map is loaded at the first read, change or seek, not by vol_open. */
bool vol_loaded(struct vol *v);
bool vol_is_dirty(struct vol *v);               /* anything not yet collected */

/* ---- snapshots ---------------------------------------------------------- */

/*
 * Close the gate: wait for writes, truncates and punches in progress on v
 * to finish and hold new ones until vol_gate_open().  Reads go on.  With the
 * gate closed, a snapshot collects v, commits, and switches it.
 */
void vol_gate_close(struct vol *v);
void vol_gate_open(struct vol *v);

/*
 * With the gate closed and every change collected and committed: from now
 * on v writes into node (a new child of its old node that inherits blocks
 * [0, inherit)), and everything v shows counts as inherited.  Constant time.
 * -EBUSY if v has uncollected changes.
 */
int vol_switch_node(struct vol *v, uint64_t node, uint64_t inherit);

/*
 * Where a vol loads its map from at first use, and reloads it after
 * vol_attach.  The caller's, shared by its vols, outliving them.
 *   db_mu    the lock of bm, the handle every change to the index goes
 *            through (the one given to vol_open).
 *   load     a second handle on the same index (read-only is fine), or NULL.
 *            With it a map is read from a snapshot of the index without
 *            holding db_mu, so that a volume with millions of blocks does
 *            not stop every other user of the index for as long as that
 *            takes; it is installed under db_mu only if changes() did not
 *            move meanwhile, else read again, and after two such tries
 *            (or any error) read under db_mu.  Without it, under db_mu
 *            from bm.
 *   load_mu  serializes the users of load.
 *   changes  called under db_mu: a number that moves whenever a change is
 *            made to bm that may change where a map being built finds a
 *            block or what it shows.  Changes that need not count: a
 *            flush's (it writes the rows of loaded vols only) and a
 *            merge's (bmap_node_merge_some: rows move into the only child
 *            and show the same; the install reads the node's inherit
 *            limit and parent again).
 *   loaded   for tests, or NULL: called with no lock held after a map was
 *            read from the snapshot and before it is installed.
 * Without vol_set_index (unit tests) the load runs on bm, unlocked.
 */
struct vol_index {
	struct lock_mutex *db_mu;
	struct bmap *load;
	struct lock_mutex *load_mu;
	uint64_t (*changes)(void *ctx);
	void (*loaded)(void *ctx);
	void *ctx;
};

void vol_set_index(struct vol *v, const struct vol_index *ix);

/*
 * With the gate closed: forget every block and continue in node, a new
 * empty node without parent, at size 0 (a truncate to zero in constant
 * time; the caller deletes the old node).  Uncollected changes are dropped.
 */
void vol_reset(struct vol *v, uint64_t node);

/*
 * With the gate closed and every change collected and committed, after the
 * caller made v's node inherit blocks [0, inherit) from a parent in the
 * index: v now has that size, and reloads its map at next use (so this is
 * constant time).  -EBUSY if v has uncollected changes.
 */
int vol_attach(struct vol *v, uint64_t inherit, uint64_t size);

/* Garbage collection moved a block: if v sees lblock at from, it now reads
 * it at to (same content and lblock; to's checksum, seeded with its new
 * chunk and slot).  Any thread. */
void vol_relocate(struct vol *v, uint64_t lblock, const struct chunk_loc *from,
		  const struct chunk_loc *to);

/* The index lowered the inherit limit of v's node (a merge): follow it. */
void vol_inherit_lower(struct vol *v, uint64_t limit);

/* Does v map any block (own or inherited) at lblock >= from? */
bool vol_maps_from(struct vol *v, uint64_t from);

/* ---- flushing the index ------------------------------------------------ */

struct vol_rec {                                /* one block's row to write */
	uint64_t lblock;
	struct chunk_loc loc;                   /* chunk_id 0: zero block */
	bool anc;                               /* an ancestor holds data here */
};

struct vol_batch {                              /* what one vol_collect() took */
	struct vol *v;
	uint64_t node;                          /* the node the rows belong to */
	uint64_t size;                          /* the vol's size at collection */
	uint64_t trunc_from;                    /* delete rows >= this; UINT64_MAX: none */
	uint64_t inherit;                       /* the node's inherit limit */
	bool inherit_changed;
	struct vol_rec *recs;
	size_t nrecs, cap;
};

/* Take every dirty block of v into b (b is reset first). */
int vol_collect(struct vol *v, struct vol_batch *b);
/* Write b's rows and node changes; the caller is inside bmap_begin(). */
int vol_batch_apply(struct vol_batch *b, struct bmap *bm);
/* After commit (rc 0) or failure (rc < 0: the blocks become dirty again). */
void vol_batch_done(struct vol_batch *b, int rc);
void vol_batch_free(struct vol_batch *b);

#endif
