/*
 * wal: the log batches a flush writes into chunk files instead of the index
 * (docs/design.md, D3; the bytes: docs/on-disk-format.md, "Log batch").
 *
 * A batch is what one flush changed, as records the index can apply
 * without anything else: PUT (node, lblock, nblocks) -> (chunk, slot), a
 * tombstone when chunk is 0; DEL (node, lblock, nblocks); TRUNC (node,
 * rows >= lblock); INHERIT (node, limit: lowers it, never raises it);
 * INODE (ino, size, mtime, ctime); REFS (node, referenced blocks).
 * The same records go to the index at a checkpoint and at crash recovery,
 * by the same wal_apply(), so the path a crash takes is the one every
 * second takes.
 *
 *   header   40 bytes: magic "VSLG", total length, lsn, chunk id, synced lsn,
 *            record count, flags
 *   records  40 bytes each
 *   trailer  8 bytes: XXH3-64 of everything before it, seeded with the
 *            chunk id
 *
 * Errors:     0 or a negative errno (-ENOMEM; wal_parse: see there).
 * Ownership:  a wal_buf owns its bytes (wal_buf_free); a wal_view points
 *             into the caller's bytes.
 * Threads:    no shared state: a wal_buf is one caller's.
 * Durability: none here: chunk_log_append() and chunk_sync() make a batch
 *             durable; wal_apply() is one part of a caller's transaction.
 */
#ifndef VSNAPFS_WAL_H
#define VSNAPFS_WAL_H

#include <stddef.h>
#include <stdint.h>

#include "vsnapfs/bmap.h"
#include "vsnapfs/vol.h"

#define WAL_MAGIC      0x474c5356u      /* "VSLG" little-endian */
#define WAL_HDR_BYTES  40u
#define WAL_REC_BYTES  40u
#define WAL_TAIL_BYTES 8u

enum wal_rec_type {
	WAL_PUT = 1,                    /* a: node, b: lblock, c: chunk (0: tombstone), d: slot */
	WAL_DEL = 2,                    /* a: node, b: lblock */
	WAL_TRUNC = 3,                  /* a: node, b: first lblock deleted */
	WAL_INHERIT = 4,                /* a: node, b: inherit limit */
	WAL_INODE = 5,                  /* a: ino, b: size, c: mtime_ns, d: ctime_ns */
	WAL_REFS = 6,                   /* a: node, b: blocks it shows with data */
};

struct wal_rec {
	uint32_t type;                  /* enum wal_rec_type */
	uint32_t nblocks;               /* PUT, DEL */
	uint64_t a, b, c, d;
};

/* A batch being built: the header's room, then records. */
struct wal_buf {
	uint8_t *p;
	size_t len, cap;
	uint32_t nrecs;
};

/* Start an empty batch (frees nothing: call on a zeroed or reset buf). */
int wal_buf_init(struct wal_buf *w);
void wal_buf_free(struct wal_buf *w);

/*
 * The records of what vol_collect() took into b: TRUNC first (if any), then
 * one PUT or DEL per run of consecutive blocks written together (b's
 * records are sorted), then INHERIT if it changed, then REFS if the vol
 * knows its count.
 */
int wal_put_vol(struct wal_buf *w, const struct vol_batch *b);
int wal_put_inode(struct wal_buf *w, uint64_t ino, uint64_t size, int64_t mtime_ns,
		  int64_t ctime_ns);

/* Bytes the sealed batch will have. */
size_t wal_batch_bytes(const struct wal_buf *w);

/* Write the header and the trailer: the batch is then p[0, wal_batch_bytes). */
void wal_seal(struct wal_buf *w, uint64_t lsn, uint64_t chunk_id, uint64_t synced_lsn);

/* A batch read back: points into the bytes it was parsed from. */
struct wal_view {
	uint64_t lsn;
	uint64_t chunk_id;
	uint64_t synced_lsn;            /* every batch <= this was durable when it was written */
	uint32_t len;                   /* total bytes */
	uint32_t nrecs;
	const uint8_t *recs;
};

/*
 * Parse the batch at p (avail bytes readable).  0 and *v; -ENODATA when p
 * starts with a zero magic (nothing was written here); -EBADMSG when it is
 * not a whole, valid batch of chunk_id (torn, damaged, stale, another
 * chunk's).
 */
int wal_parse(const uint8_t *p, size_t avail, uint64_t chunk_id, struct wal_view *v);

/* Record i of v (i < v->nrecs). */
void wal_rec_get(const struct wal_view *v, uint32_t i, struct wal_rec *r);

/*
 * Apply v's records to the index, inside the caller's transaction.  keep,
 * if not NULL, is asked about every PUT with data (chunk != 0): it sets
 * ok[i] for each of its r->nblocks blocks, and only those are put (crash
 * recovery drops the blocks whose payload did not reach the disk).  An
 * INODE of an inode that is gone is skipped.
 */
typedef int (*wal_keep_fn)(void *ctx, const struct wal_rec *r, uint8_t *ok);
int wal_apply(struct bmap *bm, const struct wal_view *v, wal_keep_fn keep, void *ctx);

/*
 * Many batches in one transaction (a checkpoint, a recovery): a volume
 * written and synced a thousand times in a second has a thousand INODE
 * records, and only the last one matters (nothing else in a batch reads
 * or writes inode rows).  wal_apply_deferred() applies v as wal_apply()
 * does but keeps its INODE records in d, the last one per inode;
 * wal_inodes_apply() writes those and empties d; wal_inodes_free() frees
 * it (after an error too).
 */
struct wal_inodes {
	struct wal_rec *v;
	size_t n, cap;
};
int wal_apply_deferred(struct bmap *bm, const struct wal_view *v, wal_keep_fn keep, void *ctx,
		       struct wal_inodes *d);
int wal_inodes_apply(struct bmap *bm, struct wal_inodes *d);
void wal_inodes_free(struct wal_inodes *d);

/* The sealed batch in w as a view (no parse: the bytes are ours). */
void wal_view_of(const struct wal_buf *w, struct wal_view *v);

#endif
