/*
 * volume I/O: byte ranges of one open volume onto blocks.
 *
 * A struct vol is the in-memory state of one volume (or frozen snapshot
 * image) while it is in use: its size, the map node it writes into, and a
 * delta of the bindings it has not committed to the index yet.  Everything
 * else it shows comes from map pages (vsnapfs/mcache.h): 256 blocks of its
 * node and ancestors folded together, loaded from the index at first touch
 * and kept in a store-wide cache under a byte limit.  So opening a volume
 * costs the same whatever its size, a read costs one page lookup whatever
 * the depth of its history, and memory stays under the cache's limit plus
 * the deltas.
 *
 * Writes append whole blocks to the chunk store, then update the delta
 * (and the resident page) and mark the block dirty.  Dirty blocks reach
 * the index in batches: vol_collect() takes them, the caller logs and
 * syncs them, applies them to the index at a later checkpoint (see
 * src/ns/flush.c); vol_batch_done() then drops them from the delta.
 *
 * Errors:     0 / count or a negative errno.  -EIO for a block whose data
 *             does not match its checksum (logged with label, offset, chunk),
 *             -ENOSPC when the store's file system is full, -EROFS for a
 *             write to a read-only vol, -EFBIG past VOL_MAX_BYTES; a page
 *             that cannot be read from the index gives the index's error.
 * Ownership:  buffers stay the caller's.  vol_open() borrows cs and bm
 *             for the vol's lifetime.
 * Threads:    read/write/truncate/punch/seek/stat and vol_collect() may run
 *             concurrently on one vol.  vol_open() and vol_batch_apply() use
 *             bm: the caller serializes those with every other user of it.
 *             vol_close() when nothing else uses the vol.
 * Locks:      (ranks and order: vsnapfs/lock.h)  Each vol has vol.gate and
 *             vol.lock.  vol_read, vol_write, vol_truncate, vol_punch,
 *             vol_seek and vol_maps_from may load pages, under the
 *             vol_index's load_mu (ranked after vol.gate, before vol.lock):
 *             call them holding neither load_mu nor vol.lock.  The other
 *             calls take only vol.lock (and the cache's and chunk store's
 *             own locks), and may be called under db_mu and files_mu.
 *             vol_switch_node, vol_reset and vol_attach need the gate
 *             closed by the caller.
 * Durability: none by itself: a write is durable once a batch collected
 *             after it returned is durable somewhere the next mount reads:
 *             in the log, synced by a chunk_sync() that started after it
 *             was written there (src/ns/flush.c), or in the index.  Pages
 *             are a cache: a crash loses nothing but them.
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
 * A vol of node with the given size.  Reads nothing but the node's row and
 * block count (own_blocks): pages load at first touch, from bm or as
 * vol_set_index() says.  readonly vols refuse every change with -EROFS.
 * label names the volume in log lines (copied).
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
/* whence SEEK_DATA or SEEK_HOLE, block granularity; -ENXIO at or past end.
 * Both jump through the index: SEEK_HOLE loads no page, SEEK_DATA the page
 * of each candidate it finds there. */
int vol_seek(struct vol *v, uint64_t off, int whence, uint64_t *out);

uint64_t vol_size(struct vol *v);
uint64_t vol_node(struct vol *v);
/* Blocks holding data in its own node, as the vol shows them (st_blocks):
 * the index's count at open, kept up to date by every change. */
uint64_t vol_own_blocks(struct vol *v);
/* Blocks it shows with data, its own and those it shares with its
 * ancestors (SPEC's st_blocks of a live volume): the index's count at open
 * (table refblocks), kept by every change; its own blocks while the index
 * has no count for its node (vol_refs_known false: counted later). */
uint64_t vol_ref_blocks(struct vol *v);
bool vol_refs_known(struct vol *v);
/*
 * Without a count (vol_refs_known false): count up to max_blocks more
 * blocks from the index and the delta, holding the load lock and v->lock
 * meanwhile, so that the caller bounds how long I/O on v waits.  Changes
 * to blocks already counted move the count as they happen; a truncate
 * below them starts the count again.  *done once v has its count (its
 * next vol_collect carries it).  O(the extents of the chain in the range).
 */
int vol_refs_count_step(struct vol *v, uint64_t max_blocks, bool *done);
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
 * -EBUSY if v has uncollected changes; what was collected (and, the caller
 * says, committed) leaves the delta now.  Its pages stay
 * (mcache_bump_gen).
 */
int vol_switch_node(struct vol *v, uint64_t node, uint64_t inherit);

/*
 * Where a vol keeps and loads its map pages.  The caller's, shared by its
 * vols, outliving them.
 *   mc       the store-wide page cache (NULL: the vol keeps the cache of
 *            its own that vol_open made, MCACHE_DEFAULT_BYTES).
 *   load     a handle on the index pages are read from (read-only is fine:
 *            each page is read in one read transaction, without db_mu), or
 *            NULL: the bm given to vol_open, without a transaction.
 *   load_mu  serializes the users of load (or of bm when load is NULL), or
 *            NULL.  Ranked after vol.gate and before vol.lock: a change
 *            loads pages holding its gate, and a vol takes its own lock
 *            under it to insert a page.  Reads are short: one page, or
 *            up to 16 for a sequential reader (map read-ahead).
 *   loaded   for tests, or NULL: called with no lock held after a page was
 *            read from the index and before it is checked and inserted.
 *   loaded_held  the same for a page read holding the load lock and the
 *            vol's lock (after loads lost LOAD_TRIES races; src/vol/vol.c):
 *            it may only call into mc.
 * Without vol_set_index (unit tests) pages load from bm, unlocked.
 */
struct vol_index {
	struct mcache *mc;
	struct bmap *load;
	struct lock_mutex *load_mu;
	void (*loaded)(void *ctx);
	void (*loaded_held)(void *ctx);
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
 * index: v now has that size, and its pages are dropped (they load again
 * at next touch, so this is O(its resident pages)).  -EBUSY if v has
 * uncollected changes; what was collected (and committed) leaves the delta.
 * refs: the blocks it now shows with data, or NULL if the caller does not
 * know (not counted: see vol_ref_blocks).
 */
int vol_attach(struct vol *v, uint64_t inherit, uint64_t size, const uint64_t *refs);

/*
 * A merge moved rows of an ancestor into v's node, and the index may have
 * lowered the node's inherit limit to limit: follow it, count v's own
 * blocks again from the index and the delta (O(delta entries)), and drop
 * v's pages (they tagged the moved rows as inherited); a page load in
 * flight reads again.  Takes the load lock and v->lock; call it after the
 * merge's step committed, before the next commit of v (under db_mu).  A
 * failed count is logged and leaves the old one.
 */
void vol_merged(struct vol *v, uint64_t limit);

/* Does v map any block (own or inherited, data or tombstone) at lblock >=
 * from?  Asks the index for the first row past from (one descent per node
 * of the chain), loads no page; true when it cannot tell. */
bool vol_maps_from(struct vol *v, uint64_t from);

/* ---- flushing the index ------------------------------------------------ */

struct vol_rec {                                /* one block's row to write */
	uint64_t lblock;
	struct chunk_loc loc;                   /* chunk_id 0: zero block */
	bool anc;                               /* an ancestor holds data here */
};

#define VOL_NO_TRUNC UINT64_MAX                 /* vol_batch.trunc_from: no truncation */

struct vol_batch {                              /* what one vol_collect() took */
	struct vol *v;
	uint64_t seq;                           /* the vol's collections so far, this one too */
	uint64_t node;                          /* the node the rows belong to */
	uint64_t size;                          /* the vol's size at collection */
	uint64_t trunc_from;                    /* delete rows >= this; VOL_NO_TRUNC: none */
	uint64_t inherit;                       /* the node's inherit limit */
	bool inherit_changed;
	bool refs_known;                        /* refs holds the vol's count */
	uint64_t refs;                          /* blocks the vol shows with data (st_blocks) */
	struct vol_rec *recs;
	size_t nrecs, cap;
};

/*
 * Take every dirty block of v into b (b is reset first).  Several batches
 * of one vol may be collected before the first is done (a flush logs one
 * each second or fsync, the index takes them at the next checkpoint); the
 * delta keeps their entries until then, and page loads keep hiding own
 * rows past a truncation no batch done so far has applied.  The records go
 * to the index as log records (vsnapfs/wal.h, wal_put_vol).
 */
int vol_collect(struct vol *v, struct vol_batch *b);
/*
 * After b's records are in the index (rc 0): drop from the delta the
 * entries that still hold what b took.  After a failure (rc < 0, b is the
 * vol's latest batch and was never logged): they become dirty again.
 * Batches of one vol are done in the order they were collected.
 */
void vol_batch_done(struct vol_batch *b, int rc);
void vol_batch_free(struct vol_batch *b);

#endif
