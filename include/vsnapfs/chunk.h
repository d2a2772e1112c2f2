/*
 * chunk store: block payloads in append-only chunk files.
 *
 * A store directory holds chunk files named "%016llx.chunk" (lower-case hex
 * chunk id).  A chunk file is a 4096-byte header followed by up to
 * CHUNK_NSLOTS(block_size) slots of exactly block_size bytes each.  This
 * store writes header version 2: a slot table of 16-byte entries (checksum
 * seeded with chunk, slot and lblock; lblock; kind) at 4096, then slot i at
 * CHUNK_DATA_OFF(block_size) + i * block_size.  It still reads version 1
 * (slot i at 4096 + i * block_size, no table), with a sidecar
 * "%016llx.slots" holding the entries when there is one.  The formats are
 * drawn in docs/on-disk-format.md.  A chunk id is never reused.
 *
 * Every open of the store starts a new chunk for appends: a chunk written by
 * an earlier daemon is never appended to again, so a torn tail left by a
 * crash is simply never referenced by the index and is ignored.  A new
 * chunk may be made from a spare: a removed chunk file kept for reuse.
 *
 * Errors:     calls returning int return 0 or a negative errno.
 * Ownership:  buffers stay the caller's; nothing is kept after return.
 * Threads:    every call may run concurrently on one store, except
 *             chunk_store_close().  Its locks (sync_mu, mu, fd_lock, side_mu) rank after
 *             every lock of the namespace and the volumes (vsnapfs/lock.h),
 *             so any call may be made holding those; it calls nothing up.
 * Durability: an append (payload and slot entries) is durable once a
 *             chunk_sync() that started after the append returned has
 *             returned 0.  The block map must not point at a block before
 *             that (see docs/design.md).  Sidecar entries are durable once a
 *             chunk_sidecar_sync() that started after the put returned 0.
 */
#ifndef VSNAPFS_CHUNK_H
#define VSNAPFS_CHUNK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The block sizes a store may have: powers of two from 4 KiB to 1 MiB.
 * The one home of this range: the index, the daemon's options and the
 * volume layer take it from here. */
#define CHUNK_BLOCK_MIN    4096u
#define CHUNK_BLOCK_MAX    (1u << 20)

static inline bool chunk_block_size_valid(uint64_t bs)
{
	return bs >= CHUNK_BLOCK_MIN && bs <= CHUNK_BLOCK_MAX && (bs & (bs - 1)) == 0;
}

#define CHUNK_HEADER_BYTES 4096u
#define CHUNK_MAX_BYTES    (64u << 20)  /* payload bytes per chunk file */
#define CHUNK_NSLOTS(bs)   (CHUNK_MAX_BYTES / (bs))
#define CHUNK_ENTRY_BYTES  16u          /* one slot table (or sidecar) entry */
/* Header version 2: where slot 0 starts (the slot table rounded up to a
 * page, after the header), and the most bytes a full chunk file holds. */
#define CHUNK_DATA_OFF(bs) \
	(CHUNK_HEADER_BYTES + ((CHUNK_ENTRY_BYTES * CHUNK_NSLOTS(bs) + 4095u) & ~4095u))
#define CHUNK_FILE_MAX_BYTES(bs) ((uint64_t)CHUNK_DATA_OFF(bs) + CHUNK_MAX_BYTES)
#define CHUNK_LBLOCK_MAX   ((1ull << 48) - 1)   /* lblock has 48 bits on disk */

struct chunk_store;                     /* opaque */

struct chunk_loc {                      /* where one block lives; a plain value */
	uint64_t chunk_id;              /* chunk file number, >= 1; 0 = no block */
	uint32_t slot;                  /* block index inside that file */
	uint64_t cksum;                 /* output of chunk_append only: the
					 * checksum it wrote in the slot entry (for
					 * tests and tools); chunk_read ignores it,
					 * the index does not keep it */
	uint64_t lblock;                /* the volume block the payload was written
					 * for: the same for the block's whole life
					 * (clones share at the same offset, GC copies
					 * keep it); <= CHUNK_LBLOCK_MAX */
};

/* Slot table entry kinds (docs/on-disk-format.md). */
enum chunk_kind {
	CHUNK_KIND_NONE = 0,            /* never written */
	CHUNK_KIND_DATA = 1,            /* a write */
	CHUNK_KIND_RELOC = 2,           /* a copy made by garbage collection */
	CHUNK_KIND_LOG = 3,             /* a log page (issue 13, step 6) */
};

/* One slot table (or sidecar) entry, decoded. */
struct chunk_entry {
	uint64_t cksum;
	uint64_t lblock;
	uint8_t kind;                   /* enum chunk_kind, or anything found on disk */
	uint8_t flags;
};

/* Why chunk_read() refused a block (-EBADMSG). */
enum chunk_bad_why {
	CHUNK_BAD_CKSUM = 1,            /* the payload does not match its checksum */
	CHUNK_BAD_UNWRITTEN,            /* entry kind 0: the slot was never written */
	CHUNK_BAD_KIND,                 /* entry kind is not DATA or RELOC */
	CHUNK_BAD_LBLOCK,               /* the slot holds another volume block */
	CHUNK_BAD_NO_SIDECAR,           /* a version-1 chunk without its sidecar */
};

struct chunk_bad {
	uint32_t index;                 /* the first bad block of the run */
	enum chunk_bad_why why;
	uint64_t lblock;                /* CHUNK_BAD_LBLOCK: the entry's lblock */
};

/* A short text for a log line, e.g. "checksum mismatch", "slot holds block
 * 17, expected 12" (want_lblock: what the caller asked for).  Returns buf. */
const char *chunk_bad_str(const struct chunk_bad *bad, uint64_t want_lblock, char *buf,
			  size_t len);

/*
 * Open (creating "dir" if missing) a chunk store of blocks of block_size
 * bytes (a power of two, 4 KiB to 1 MiB).  The first chunk this store
 * creates gets an id >= min_next_id and greater than any chunk file already
 * in dir.  No chunk file is created until the first append.
 */
int chunk_store_open(const char *dir, uint32_t block_size, uint64_t min_next_id,
		     struct chunk_store **out);

/* Close every file; does not sync.  NULL is fine. */
void chunk_store_close(struct chunk_store *cs);

/*
 * Append nblocks blocks (nblocks * block_size bytes from buf) of the given
 * kind (CHUNK_KIND_DATA for a write, CHUNK_KIND_RELOC for a GC copy).
 * locs[i].lblock is input: the volume block of block i (<= CHUNK_LBLOCK_MAX).
 * The call fills chunk_id, slot and cksum (the seeded checksum, as in the
 * slot entry) of locs[0..nblocks-1].  Consecutive blocks land in
 * consecutive slots of one chunk whenever they fit; a run that crosses the
 * end of the active chunk continues at slot 0 of a new chunk.  Each run is
 * one pwrite of its payload and one of its slot entries.  On error no loc
 * is valid (chunk_id 0; slots already reserved are wasted, which is
 * harmless).  -EINVAL for a bad kind or lblock, -ENOSPC when the file
 * system is full, -EIO on a short or failed write.
 */
int chunk_append(struct chunk_store *cs, const void *buf, uint32_t nblocks,
		 enum chunk_kind kind, struct chunk_loc *locs);
/* The same, never written behind (chunk_write_behind): for an append that
 * must be able to fail at once, such as the read-modify-write of a partial
 * block that a hole punch or a truncate makes without a space check. */
int chunk_append_now(struct chunk_store *cs, const void *buf, uint32_t nblocks,
		     enum chunk_kind kind, struct chunk_loc *locs);

/*
 * Read nblocks blocks stored in consecutive slots of one chunk, starting at
 * locs[0] (locs[i].chunk_id == locs[0].chunk_id and locs[i].slot ==
 * locs[0].slot + i), into buf, and verify each one.  Version 2 chunks: the
 * run's slot entries are read too, and every block needs kind DATA or
 * RELOC, lblock == locs[i].lblock, and the seeded checksum of the payload
 * == the entry's.  Version 1 chunks: the same against the sidecar's
 * entries (unseeded checksum); a version-1 chunk without a sidecar
 * verifies nothing (CHUNK_BAD_NO_SIDECAR).
 * Returns 0; -EBADMSG if a block fails (*bad, if not NULL, says which and
 * why); -ENOENT if the chunk file is missing; -EIO if the file is too
 * short, its header (or its sidecar's) is bad, or a read fails.
 */
int chunk_read(struct chunk_store *cs, const struct chunk_loc *locs, uint32_t nblocks,
	       void *buf, struct chunk_bad *bad);

/* chunk_read() if the payload is all in the host's page cache; -EAGAIN
 * (nothing verified, buf undefined) if reading it would wait on the disk. */
int chunk_read_cached(struct chunk_store *cs, const struct chunk_loc *locs, uint32_t nblocks,
		      void *buf, struct chunk_bad *bad);

/*
 * The slot entries of slots [first_slot, first_slot + n) of a chunk, from
 * its slot table (version 2) or its sidecar (version 1), in one read.
 * Slots past the end of the file or the sidecar read as kind 0.  0;
 * -ENODATA for a version-1 chunk without a sidecar; -ENOENT if the chunk
 * file is missing; -EINVAL past CHUNK_NSLOTS; -EIO for a bad header or a
 * failed read.  For vsnapctl check: cheap, but not a verification.
 */
int chunk_entries_read(struct chunk_store *cs, uint64_t chunk_id, uint32_t first_slot,
		       uint32_t n, struct chunk_entry *out);

/*
 * Sidecars of version-1 chunks (issue 13, D6): the upgrade from index
 * format 2 records, for each row, the entry of its block.
 *
 * chunk_sidecar_put: record (kind DATA, lblock, cksum = the unseeded
 * cksum_buf() the index holds) for slot of chunk_id, a version-1 chunk.
 * Creates "%016llx.slots" with its header on first use.  Writes are
 * buffered (runs of consecutive slots) and go through a small fd cache;
 * putting the same entry again writes the same bytes (idempotent).  An
 * error may belong to an earlier put (a buffered run written now): the
 * caller then treats the puts since its last good chunk_sidecar_sync() as
 * failed.  -EINVAL (a version-2 chunk, slot or lblock out of range),
 * -ENOENT (no such chunk), -EIO, -ENOSPC.
 *
 * chunk_sidecar_sync: write what is buffered, fdatasync every sidecar
 * written since the last good sync, and fsync the chunk directory if one
 * was created.  Put entries are durable once it returns 0; a failure is
 * final (every later sidecar sync fails with -EIO), as for chunk_sync().
 * chunk_store_close() drops puts still buffered: only a sync makes them
 * count.
 *
 * chunk_remove() deletes a chunk's sidecar with it (before the chunk file:
 * a crash leaves no sidecar without its chunk).
 */
int chunk_sidecar_put(struct chunk_store *cs, uint64_t chunk_id, uint32_t slot,
		      uint64_t lblock, uint64_t cksum);
int chunk_sidecar_sync(struct chunk_store *cs);

/*
 * The log (docs/design.md, D3): bytes a flush appends to LOG slots of the
 * active chunk, so that one fdatasync makes a flush's data and its map
 * changes durable together.
 *
 * chunk_log_append: append len bytes (one log batch).  They go after the
 * previous batch in the current log slot when they fit there and that slot
 * is in the active chunk; otherwise to ceil(len / block_size) new
 * consecutive slots of the active chunk (a new chunk when it has no room),
 * written zero-padded to the slot's end, with slot entries of kind LOG.
 * Before anything is written, seal(ctx, buf, chunk_id) is called with the
 * chunk the bytes go to (a batch names its chunk).  In new slots the
 * padding and the entries are written before the batch, and the batch in
 * one pwrite, so a failed call never leaves a whole batch behind; after a
 * failure the next call starts new slots.  Durable once a chunk_sync() that
 * started after it returned.  *chunk_id: where the bytes went.  -E2BIG when
 * len is more than a chunk holds, -EIO when poisoned or a write fails,
 * -ENOSPC.  One caller at a time (the flush).
 *
 * chunk_log_read: the log bytes of a chunk: the payloads of its slots
 * whose entry says LOG (and verifies: a spare's stale entries do not), in
 * slot order, concatenated, each slot block_size bytes, so a batch written
 * over consecutive slots reads back whole.  *out is malloc'ed (NULL when
 * there is none).  -ENOENT for a missing chunk, -EIO.  A version-1 chunk
 * has no log: 0 and nothing.
 */
int chunk_log_append(struct chunk_store *cs, void *buf, size_t len,
		     void (*seal)(void *ctx, void *buf, uint64_t chunk_id), void *ctx,
		     uint64_t *chunk_id);
int chunk_log_read(struct chunk_store *cs, uint64_t chunk_id, uint8_t **out, size_t *len);

/*
 * Hint that nblocks blocks in consecutive slots from loc will be read soon:
 * the kernel starts reading what it does not have cached, without waiting.
 * A caller about to read several runs scattered over chunk files calls it
 * for each first, so the disk gets them all at once instead of one at a
 * time.  Errors are ignored (chunk_read reports them).
 */
void chunk_prefetch(struct chunk_store *cs, const struct chunk_loc *loc, uint32_t nblocks);

/* fdatasync every chunk file appended to since the last successful sync, and
 * the chunk directory if a chunk file was created since then.  The first
 * failure poisons the store: from then on chunk_sync() and chunk_append()
 * fail with -EIO (a retried fdatasync proves nothing about the pages the
 * failed one could not write); reads go on.  Only a new open clears it. */
int chunk_sync(struct chunk_store *cs);
bool chunk_poisoned(struct chunk_store *cs);

/* Whether chunk_id's file is in the directory (true when it cannot tell). */
bool chunk_present(struct chunk_store *cs, uint64_t chunk_id);

/* The id of the chunk currently taking appends, or 0 if none yet. */
uint64_t chunk_active_id(struct chunk_store *cs);

/* The next id this store will give a new chunk (persist it so ids are never
 * reused after the newest chunk file is deleted). */
uint64_t chunk_next_id(struct chunk_store *cs);

/*
 * Call fn(ctx, chunk_id, nslots) for every chunk file in the directory, in
 * increasing id order; nslots is the number of whole slots the file holds
 * (after the header, or the header and slot table of a version-2 file).
 * Stops and returns fn's value if fn returns non-zero.
 */
int chunk_foreach(struct chunk_store *cs,
		  int (*fn)(void *ctx, uint64_t chunk_id, uint32_t nslots), void *ctx);

/* Delete a chunk file (never the active one: -EBUSY), or keep it as a spare
 * (chunk_spares_enable); its id is gone either way.  Its sidecar, if any,
 * is deleted (a spare never keeps one).  Readers that already hold it open
 * finish their read first. */
int chunk_remove(struct chunk_store *cs, uint64_t chunk_id);

/*
 * Keep up to max removed chunk files in dir (created if missing) as spares,
 * and make new chunk files from them (see "Spares" in src/chunk/chunk.c).
 * Spares an earlier open left in dir are adopted, up to max; the rest are
 * deleted.  Call at most once, right after chunk_store_open(); without it
 * chunk_remove() unlinks.  max == 0 keeps none: it deletes the spares an
 * earlier open left (if dir exists) and removals unlink.
 */
int chunk_spares_enable(struct chunk_store *cs, const char *dir, uint32_t max);

/* Bytes held by spare files: space the store will fill before it grows,
 * but that the host file system counts as used. */
uint64_t chunk_spare_bytes(struct chunk_store *cs);

/*
 * Keep at most limit spares from now on (never more than the max given to
 * chunk_spares_enable(); 0 while spares are not enabled), and unlink the
 * ones beyond it now, oldest first.  A removal that was turning a chunk
 * file into a spare meanwhile unlinks it if the limit leaves no room.
 * 0, or the first unlink error (the spare is forgotten either way, and the
 * next open deletes what is left).  -ENOMEM leaves the spares as they were
 * but the limit set.
 */
int chunk_spares_limit(struct chunk_store *cs, uint32_t limit);

/*
 * Spares written ahead (see "Spares written ahead" in src/chunk/chunk.c).
 * True when one may be written now: spares are kept (a limit above 0), none
 * is waiting or being kept, and the active chunk got none yet and was
 * appended to a new file, or is at least half used.  Whether the store's
 * writes call for one is the caller's to judge.
 */
bool chunk_spare_wanted(struct chunk_store *cs);

/*
 * Write a spare ahead, filled with zeros and synced, if chunk_spare_wanted()
 * still says so, and make the next chunk from it at once if the active chunk
 * was appended to a new file (chunk_spare_switch()):
 * 1 when one was added; 0 when none was wanted, or the limit
 * fell, stop(ctx) said to stop or a sync failed meanwhile; or a negative
 * errno.  Nothing is left behind but an added spare.  Slow (a chunk file's
 * worth of writes and an fdatasync): call it from a background thread, with
 * no lock held; stop is asked between writes of a MiB.
 */
int chunk_spare_prepare(struct chunk_store *cs, bool (*stop)(void *ctx), void *ctx);

/*
 * If a spare waits and the active chunk was appended to a new file, make
 * the next chunk from the spare now (chunk_spare_prepare() does it too).
 * For a store whose guests sync after small writes.
 */
void chunk_spare_switch(struct chunk_store *cs);

/* How many spares chunk_spare_prepare() has added so far. */
uint64_t chunk_spares_prepared(struct chunk_store *cs);

/*
 * Keep up to bytes of slot-table pages in memory, so that a read does not
 * pread its blocks' entries (see "The entry cache" in src/chunk/chunk.c).
 * Call at most once, right after chunk_store_open(); without it (or with
 * 0) every read reads its entries from the file.
 */
void chunk_entry_cache_limit(struct chunk_store *cs, size_t bytes);

/*
 * Write every run of at least min_bytes (one chunk_append()'s blocks in one
 * chunk) with O_DIRECT, around the host's page cache (see "Direct writes" in
 * src/chunk/chunk.c); 0, never.  Only where the host file system takes it.
 * Call at most once, right after chunk_store_open().  With min_bytes above
 * 0, a chunk this store may still write is read without the host's
 * read-ahead; in a store that never calls this (another process may be
 * writing directly), every chunk is.
 */
void chunk_direct_writes(struct chunk_store *cs, size_t min_bytes);

/*
 * Write-behind (see "Write-behind" in src/chunk/chunk.c): a run of DATA
 * blocks that chunk_direct_writes() sends around the page cache is copied
 * into a ring of bytes / 1 MiB jobs (rounded up, at most 64) and written by
 * a thread of the store; chunk_append() then returns before the device has
 * it.  Reads of its slots wait for it, chunk_sync() covers it, and a failed
 * one poisons the store (the caller keeps room for it: docs/design.md).
 * Call once, after chunk_direct_writes() and before the first append;
 * bytes 0 or direct writes off: nothing.  0, -EBUSY (called twice),
 * -ENOMEM, or pthread_create's error; the store then writes as before.
 */
int chunk_write_behind(struct chunk_store *cs, size_t bytes);

/*
 * Read runs with O_DIRECT, around the host's page cache, where the caller's
 * buffer, the length and the offset are 4 KiB-aligned and the host allows
 * it (see "Direct reads" in src/chunk/chunk.c): for a reader that reads
 * each block once (vsnapctl scrub).  Call at most once, right after
 * chunk_store_open().
 */
void chunk_direct_reads(struct chunk_store *cs);

/* Bytes written with O_DIRECT so far; of those, written behind; at most
 * how many bytes are queued behind and not written yet (for a caller that
 * counts free space: they hold no blocks yet). */
uint64_t chunk_direct_bytes(struct chunk_store *cs);
uint64_t chunk_write_behind_bytes(struct chunk_store *cs);
uint64_t chunk_write_behind_pending(struct chunk_store *cs);

/* Bytes the entry cache holds now. */
size_t chunk_entry_cache_bytes(struct chunk_store *cs);

/* How many chunk_append() calls have taken slots so far: a caller that sees
 * it unchanged for a while knows the store is not being written. */
uint64_t chunk_append_count(struct chunk_store *cs);

/*
 * Fault injection for tests: the next "after" calls of op succeed, then every
 * call fails with -err until cleared with err == 0.  op is one of the
 * CHUNK_FAULT_* values.
 */
enum { CHUNK_FAULT_APPEND = 0, CHUNK_FAULT_READ = 1, CHUNK_FAULT_SYNC = 2, CHUNK_FAULT_LOG = 3,
       CHUNK_FAULT_DIRECT = 4,          /* a direct write, as if the host refused it */
       CHUNK_FAULT_DIRECT_READ = 5,     /* a direct read (chunk_direct_reads), the same */
       CHUNK_FAULT_WB_HOLD = 6,         /* the write-behind thread waits while it fires */
       CHUNK_FAULT_NOPS };
void chunk_fault_set(struct chunk_store *cs, int op, uint32_t after, int err);

/*
 * For tests: fn(cs, at, chunk_id, n, arg) runs at these points, in the
 * thread that reaches them, with no lock of the store held:
 *  - CHUNK_TEST_RFD_UNLOCKED: a reader of the read cache of fds has let the
 *    cache's lock go after a look that found no usable entry for chunk_id (a
 *    first open, a chunk switched to read-ahead), before it acts on what it
 *    found; fn may read other chunks meanwhile (n is 0);
 *  - CHUNK_TEST_APPEND: an append of n blocks is about to take its slots
 *    (chunk_id 0).
 * Set it before the store is shared between threads; NULL turns it off.
 */
enum chunk_test_point { CHUNK_TEST_RFD_UNLOCKED, CHUNK_TEST_APPEND };
typedef void chunk_test_fn(struct chunk_store *cs, enum chunk_test_point at, uint64_t chunk_id,
			   uint32_t n, void *arg);
void chunk_test_hook(struct chunk_store *cs, chunk_test_fn *fn, void *arg);

#endif
