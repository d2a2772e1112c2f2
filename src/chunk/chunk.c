/*
 * chunk store: append-only chunk files that hold block payloads.
 *
 * What it is for.  The volume layer appends every new block version here,
 * calls chunk_sync(), and only then records the returned (chunk, slot,
 * cksum) in the block map; reads come back through chunk_read() with that
 * loc.  Nothing here knows about volumes or the index; a block's lblock is
 * only a number it is given to record and to check.
 *
 * Files.  <dir>/%016llx.chunk: a 4096-byte header (drawn in
 * docs/on-disk-format.md), then, in header version 2 (all this store
 * writes), a slot table of 16-byte entries (checksum, lblock, kind), then
 * slots of block_size bytes from data_off, page-aligned.  Version 1 files
 * (index format 2 stores) have no table, slots from 4096; they are read,
 * never written, and <dir>/%016llx.slots, a sidecar written by the upgrade
 * (chunk_sidecar_put), holds their entries.  A file is created O_EXCL and
 * its header is written before any of its slots is handed out, so a reader
 * that finds the file also finds a whole header (in the page cache; on disk
 * once chunk_sync() has run, which fsyncs the directory too).
 *
 * Block identity (docs/design.md, D2).  An append writes each run's payload
 * and its entries; the checksum is seeded with (chunk id, slot, lblock).  A
 * read accepts a block only if its entry says DATA or RELOC, names the lblock
 * the caller expects, and matches the payload: so a lost write of either
 * half, a misdirected write, a spare's stale slot or a map pointing at the
 * wrong block reads EIO, never someone else's bytes.
 *
 * Invariants.
 *  - Ids only grow: next_id is above every id this store created or saw in
 *    the directory at open.  An id is spent as soon as we try to create it.
 *  - Only the active chunk hands out slots.  A chunk that stops being active
 *    never becomes active again, and each open starts a new one, so a chunk
 *    written by an earlier process (maybe with a torn tail) is never touched.
 *  - A slot goes to exactly one append: nused only grows, under mu.
 *  - A writer is marked dirty only after its pwrite returned, and the mark
 *    is set under mu before chunk_append() returns -- or, for a piece
 *    written behind, before the writer thread moves wb_done, which
 *    chunk_sync() waits for first (chunk_append() marks such a writer too,
 *    before the piece is written: harmless, the sync drains first).
 *    chunk_sync() clears marks under mu and fdatasyncs afterwards, so a
 *    sync that starts after an append returned either sees the mark or
 *    runs after a sync that cleared it -- and sync_mu makes us wait for
 *    that one to finish.
 *  - A writer (struct chunk_w and its O_RDWR fd) lives while it is active,
 *    dirty, or pinned (refs: appends writing into it, syncs syncing it).
 *    pwrite and fdatasync run without mu on a pinned writer, so its fd can
 *    not be closed under them.
 *
 * Reads go through a separate cache of O_RDONLY fds (a sorted array, id ->
 * fd) under an rwlock: readers hold it shared across their pread;
 * chunk_remove() holds it exclusive to close and unlink, so no fd is closed
 * (and its number reused) under a reader.  Writers' fds are not shared with
 * the cache: keeping the two lifetimes apart costs one fd per recent chunk
 * and saves a reference count.  The cache is bounded by half the fd limit
 * and evicts round-robin.
 *
 * A failed sync poisons the store (cs->poisoned): once fdatasync has
 * failed, Linux may have marked the pages it could not write clean, or
 * dropped them, and a later fdatasync that succeeds proves nothing about
 * them.  Syncing again and committing rows that point at those slots would
 * tell a client that data is durable when it may be gone.  So every later
 * chunk_sync() and chunk_append() fails with -EIO, reads go on, and the next
 * open (a new mount) starts from what the index committed before.  The same
 * for a failed fsync of the directory.  A chunk file deleted under us is not
 * that: what it held is lost for certain, not maybe, and only that.  The
 * sync fails once, the file is sealed, appends go to a new file, and rows
 * that point into the deleted one read EIO (SPEC: a chunk file missing means
 * EIO on the affected blocks only; t-120-damage).
 *
 * Spares.  A removed chunk file may be kept, renamed to <spare_dir>/%016llx.spare,
 * instead of unlinked, and the next new chunk is then made from it: renamed
 * to the new id and given a new header before its first slot is handed out.
 * Its old slots are never read again: rows name chunks by id, and ids are
 * never reused; should a lost write leave one under a new row, its old
 * entry was seeded with the old id and does not verify.  A spare of either
 * version becomes a version-2 chunk; a version-1 chunk's sidecar is deleted
 * when it is removed.  Overwriting the pages of a file that has them costs the
 * host file system no block allocation, no page-cache allocation and no
 * journal commit at fdatasync; appending to a new file costs all three (see
 * docs/design.md, "Spare chunk files").  A crash leaves a spare either where
 * it was or under its new name with whatever header; no row names it, and
 * garbage collection removes it like any unreferenced chunk.  A spare holds
 * host disk space that nothing else can use, so how many are kept is the
 * caller's to bound and to lower (chunk_spares_limit): the daemon keeps a
 * few while writes stream in and gives them all back when writes stop.
 *
 * Locks (ranks and order: vsnapfs/lock.h): sync_mu before mu; fd_lock is
 * never held together with another lock of this file; side_mu (sidecar
 * writes) and wb_mu (write-behind) are leaves, taken alone or, wb_mu, under
 * sync_mu.  Slow I/O runs with no mutex held; the
 * exception is creating a chunk file, once per 64 MiB of data: an open, a
 * 4 KiB header write and, from a spare, a write of its zeroed slot table
 * with the start of its writeback and, with direct writes on, dropping its
 * cached pages and asking cachestat whether any are left.  It is done
 * under mu so that appenders queued behind a full chunk wait for one new
 * chunk instead of racing to create several.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "vsnapfs/array.h"
#include "vsnapfs/chunk.h"
#include "vsnapfs/cksum.h"
#include "vsnapfs/le.h"
#include "vsnapfs/lock.h"
#include "vsnapfs/log.h"
#include "vsnapfs/tbuf.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Header layout, byte offsets; see docs/on-disk-format.md. */
#define CHUNK_MAGIC          "VSNAPCHK"
#define CHUNK_MAGIC_LEN      8u
#define CHUNK_VERSION_1      1u         /* read only: no slot table */
#define CHUNK_VERSION        2u         /* what this store writes */
#define HDR_OFF_MAGIC        0u
#define HDR_OFF_VERSION      8u
#define HDR_OFF_BLOCK_SIZE   12u
#define HDR_OFF_CHUNK_ID     16u
#define HDR_OFF_CREATED      24u
#define HDR_OFF_NSLOTS       32u        /* version 2 from here */
#define HDR_OFF_TABLE_OFF    36u
#define HDR_OFF_DATA_OFF     40u
#define HDR_OFF_RESERVED     48u
#define HDR_OFF_CKSUM        (CHUNK_HEADER_BYTES - 8u)
#define TABLE_OFF            CHUNK_HEADER_BYTES

/* Slot table (and sidecar) entry: cksum u64, lblock 48 bits, kind, flags. */
#define ENT_OFF_CKSUM        0u
#define ENT_OFF_LBLOCK       8u
#define ENT_OFF_KIND         14u
#define ENT_OFF_FLAGS        15u

/* Sidecar header of a version-1 chunk. */
#define SIDE_MAGIC           "VSNAPSLT"
#define SIDE_VERSION         1u
#define SIDE_OFF_VERSION     8u
#define SIDE_OFF_NSLOTS      12u
#define SIDE_OFF_CHUNK_ID    16u
#define SIDE_OFF_FLAGS       24u
#define SIDE_FLAG_LEGACY     1u         /* checksums are unseeded cksum_buf() */
#define SIDE_FD_MAX          64u        /* sidecar fds kept open for writing */
#define SIDE_PEND_MAX        256u       /* entries buffered in one run */

#define CHUNK_NAME_HEX       16u
#define CHUNK_NAME_SUFFIX    ".chunk"
#define CHUNK_NAME_LEN       (CHUNK_NAME_HEX + sizeof(CHUNK_NAME_SUFFIX) - 1)
#define SPARE_NAME_SUFFIX    ".spare"   /* as long as CHUNK_NAME_SUFFIX */
#define SIDE_NAME_SUFFIX     ".slots"   /* as long as CHUNK_NAME_SUFFIX */

/* A direct write's piece: what one copy into an aligned buffer, one
 * pwrite and one job of the write-behind ring hold. */
#define DIRECT_PIECE (1u << 20)

/* Write-behind jobs, at most (-o write_behind: 64 MiB). */
#define WB_JOBS_MAX 64u

/* Entries read on the stack by chunk_read; longer runs allocate. */
#define READ_ENTS_STACK      256u


/* Read cache bounds: never fewer than this many fds, never more than this. */
#define RFD_OPEN_MIN         8u
#define RFD_OPEN_MAX         (1u << 20)

struct chunk_w {                        /* a chunk this store has written */
	struct chunk_w *next;           /* mu: list of cs->writers */
	uint64_t id;                    /* const */
	int fd;                         /* const; O_RDWR, closed when freed */
	uint32_t nused;                 /* mu: slots handed out, <= nslots */
	uint32_t refs;                  /* mu: appends writing + syncs syncing */
	bool dirty;                     /* mu: written since its last good sync */
	bool from_spare;                /* const: made from a whole spare (spare_whole), not appended to */
	int dfd;                        /* const; O_WRONLY | O_DIRECT, or -1: see "Direct writes" */
};

struct chunk_rfd {                      /* one entry of the read cache */
	uint64_t id;                    /* first: id_lower_bound */
	int fd;                         /* O_RDONLY; -1 when bad */
	int sfd;                        /* version 1: its sidecar, O_RDONLY; -1: none */
	int dfd;                        /* O_RDONLY | O_DIRECT (chunk_direct_reads); -1: none */
	uint8_t version;                /* of the header; 0 when bad */
	bool bad;                       /* header failed validation: -EIO for good */
	bool no_ra;                     /* fd_lock: POSIX_FADV_RANDOM, see "Direct writes" */
	struct ent_pages *ents;         /* version 2: its slot table's cached pages; or NULL */
};

/*
 * The entry cache.  A read checks each block against its slot entry; with
 * the entries read from the file that is a second pread per read.  So the
 * pages of a chunk's slot table (4 KiB: ENT_PAGE_SLOTS entries) that are
 * whole -- every entry written, so none will change: an entry is written
 * once, with its slot, and a chunk id is never reused -- are kept in memory
 * beside the chunk's read fd, up to ent_max bytes for the store.  A page is
 * installed with a compare-and-swap under fd_lock held shared and freed
 * only with the entry, under fd_lock held exclusive, so a reader may use
 * what it loaded while it holds the lock.  An entry read from the cache
 * that does not verify its block is read again from the file before the
 * block is called bad (a page read while its last entry was being written
 * might hold a torn copy of it).  Tools that judge the table itself
 * (check, scrub: chunk_entries_read) always read the file.
 */
#define ENT_PAGE_SLOTS (4096u / CHUNK_ENTRY_BYTES)

struct ent_pages {
	uint32_t n;                     /* const: pages of the table */
	_Atomic(uint8_t *) pg[];        /* a whole page, or NULL */
};

struct side_w {                         /* a sidecar this store writes */
	uint64_t id;                    /* of its chunk; first: id_lower_bound */
	int fd;                         /* O_RDWR; -1 when closed (reopened by name) */
	bool dirty;                     /* written since the last good sidecar sync */
};

struct chunk_fault {                    /* test hook; atomics, no lock */
	atomic_int err;                 /* positive errno to fail with; 0 = off */
	atomic_llong left;              /* calls still allowed to succeed */
};

struct chunk_store {
	int dirfd;                      /* const: the chunk directory */
	uint32_t block_size;            /* const */
	uint32_t nslots;                /* const: CHUNK_NSLOTS(block_size) */
	uint64_t data_off;              /* const: CHUNK_DATA_OFF(block_size) */
	uint64_t first_own_id;          /* const: ids from here were made by this store */
	size_t rfd_open_max;            /* const after chunk_direct_reads(): read cache size
					 * that triggers eviction */

	struct lock_mutex sync_mu;      /* one chunk_sync() at a time */

	struct lock_mutex mu;           /* appends: the fields down to fd_lock */
	struct chunk_w *writers;        /* mu: active, dirty or pinned chunks */
	struct chunk_w *active;         /* mu: takes new slots; NULL before the first append */
	uint64_t next_id;               /* mu: id of the next chunk to create */
	atomic_uint_fast64_t sealed_below;      /* written under mu: no write reaches a
						 * chunk below it again (sealed_update_locked) */
	uint64_t nappends;              /* mu: chunk_append() calls that took slots */
	uint64_t log_chunk;             /* mu: chunk of the current log slot; 0: none */
	uint32_t log_slot;              /* mu: the current log slot */
	uint32_t log_fill;              /* mu: bytes of it in use */
	bool dir_dirty;                 /* mu: a chunk file was created since the last good sync */

	struct lock_rw fd_lock;         /* the read cache; held shared across pread */
	struct chunk_rfd *rfds;         /* fd_lock: sorted by id */
	size_t nrfds;                   /* fd_lock: entries in use */
	size_t rfds_cap;                /* fd_lock: entries allocated */
	size_t rfd_nopen;               /* fd_lock: entries with fd >= 0 */
	size_t rfd_evict_pos;           /* fd_lock (exclusive): round-robin eviction cursor */
	uint64_t rfd_gen;               /* fd_lock: bumped by every chunk_remove() */
	size_t ent_max;                 /* const after chunk_entry_cache_limit(): bytes */
	atomic_size_t ent_bytes;        /* held by the entry cache's pages */
	size_t direct_min;              /* const after chunk_direct_writes(): bytes; 0: never */
	bool direct_known;              /* const: chunk_direct_writes() was called (the daemon) */
	bool cachestat_ok;              /* const after chunk_direct_writes(): pages_left() works */
	bool direct_reads;              /* const after chunk_direct_reads() */
	atomic_bool direct_reads_failed;        /* O_DIRECT refused (open or read): no more */
	atomic_bool direct_failed;      /* an O_DIRECT write failed with EINVAL: no more */
	atomic_uint_fast64_t direct_bytes;      /* written with O_DIRECT */
	atomic_uint_fast64_t wb_bytes;  /* of those, written behind (chunk_write_behind) */

	int spare_dirfd;                /* const after chunk_spares_enable(); -1: no spares */
	uint32_t spare_max;             /* const after chunk_spares_enable() */
	uint32_t spare_limit;           /* mu: spares kept from now on, <= spare_max */
	struct chunk_spare *spares;     /* mu: a stack, newest last; spare_max entries */
	uint32_t nspares;               /* mu: entries in use */
	uint32_t spare_pending;         /* mu: removals renaming a file into a spare */
	uint64_t spare_seq;             /* mu: number of the next spare file */
	uint64_t spare_bytes;           /* mu: sum of the spares' sizes */
	uint64_t spares_prepared;       /* mu: added by chunk_spare_prepare() */
	uint64_t prepared_for;          /* mu: the active chunk a spare was last written ahead for */

	struct lock_mutex side_mu;      /* sidecar writes: the fields down to fault */
	struct side_w *sides;           /* side_mu: sorted by id; open or dirty */
	size_t nsides, sides_cap;       /* side_mu */
	size_t side_nopen;              /* side_mu: entries with fd >= 0 */
	size_t side_evict_pos;          /* side_mu: round-robin eviction cursor */
	uint64_t pend_id;               /* side_mu: the buffered run's chunk */
	uint32_t pend_slot, pend_n;     /* side_mu: its first slot and length */
	uint8_t pend[SIDE_PEND_MAX * CHUNK_ENTRY_BYTES];        /* side_mu */
	bool side_dir_dirty;            /* side_mu: a sidecar was created */
	bool side_poisoned;             /* side_mu: a sidecar sync failed */

	struct lock_mutex wb_mu;        /* write-behind: the fields down to wb_stop */
	pthread_cond_t wb_cv;           /* wb_mu: a job queued or done, or stop */
	struct wb_job *wb_jobs;         /* const after chunk_write_behind(): the ring */
	uint8_t *wb_bufs;               /* const after chunk_write_behind(): its buffers */
	uint32_t wb_n;                  /* const after chunk_write_behind(): its jobs; 0: off */
	uint64_t wb_queued;             /* wb_mu: sequence number of the last job reserved */
	uint64_t wb_done;               /* wb_mu: the last job written; all below it too */
	bool wb_stop;                   /* wb_mu: the writer thread is to end */
	atomic_uint wb_busy;            /* jobs reserved and not done (readers' fast path) */
	pthread_t wb_thread;            /* const after chunk_write_behind() */

	struct chunk_fault fault[CHUNK_FAULT_NOPS];
	chunk_test_fn *test_fn;         /* chunk_test_hook() */
	void *test_arg;
	atomic_bool poisoned;           /* a sync failed: see "A failed sync" above */
};

struct chunk_spare {                    /* a removed chunk file kept for reuse */
	uint64_t seq;                   /* its name: %016llx.spare */
	uint64_t bytes;                 /* its size */
};

struct wb_job {                         /* one piece written behind (see "Write-behind") */
	uint64_t seq;                   /* wb_mu: the job it holds; ready once set */
	uint64_t id;                    /* w's: wb_wait may look after w is unpinned */
	struct chunk_w *w;              /* pinned until written */
	uint8_t *buf;                   /* const: DIRECT_PIECE bytes of wb_bufs */
	size_t len;                     /* of the payload */
	uint32_t slot, nblocks;         /* the slots it fills */
	uint8_t ents[DIRECT_PIECE / CHUNK_BLOCK_MIN * CHUNK_ENTRY_BYTES];
};

struct chunk_run {                      /* part of one append that lands in one chunk */
	struct chunk_w *w;              /* pinned until the append is done */
	uint32_t slot;                  /* first slot in w */
	uint32_t first;                 /* index of its first block in the append */
	uint32_t nblocks;
};

/* --- names, header, whole-buffer I/O --------------------------------------- */

static void chunk_name(char name[CHUNK_NAME_LEN + 1], uint64_t id)
{
	snprintf(name, CHUNK_NAME_LEN + 1, "%016" PRIx64 CHUNK_NAME_SUFFIX, id);
}

static void spare_name(char name[CHUNK_NAME_LEN + 1], uint64_t seq)
{
	snprintf(name, CHUNK_NAME_LEN + 1, "%016" PRIx64 SPARE_NAME_SUFFIX, seq);
}

/* Only the exact form we create counts: 16 lower-case hex digits, ".chunk",
 * and an id >= 1.  Anything else in the directory is not ours to list. */
static bool chunk_name_parse(const char *name, uint64_t *id)
{
	uint64_t v = 0;

	if (strlen(name) != CHUNK_NAME_LEN ||
	    strcmp(name + CHUNK_NAME_HEX, CHUNK_NAME_SUFFIX) != 0)
		return false;
	for (unsigned i = 0; i < CHUNK_NAME_HEX; i++) {
		char c = name[i];
		unsigned d;

		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else
			return false;
		v = v << 4 | d;
	}
	if (v == 0)
		return false;
	*id = v;
	return true;
}

static void chunk_hdr_encode(uint8_t hdr[CHUNK_HEADER_BYTES], uint32_t block_size,
			     uint64_t id)
{
	struct timespec ts;
	uint64_t now_ns = 0;

	/* CLOCK_REALTIME can not fail with a valid clock id; 0 would do anyway,
	 * "created" is for people reading a dump, nothing depends on it. */
	if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
		now_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;

	memset(hdr, 0, CHUNK_HEADER_BYTES);
	memcpy(hdr + HDR_OFF_MAGIC, CHUNK_MAGIC, CHUNK_MAGIC_LEN);
	le32_put(hdr + HDR_OFF_VERSION, CHUNK_VERSION);
	le32_put(hdr + HDR_OFF_BLOCK_SIZE, block_size);
	le64_put(hdr + HDR_OFF_CHUNK_ID, id);
	le64_put(hdr + HDR_OFF_CREATED, now_ns);
	le32_put(hdr + HDR_OFF_NSLOTS, CHUNK_NSLOTS(block_size));
	le32_put(hdr + HDR_OFF_TABLE_OFF, TABLE_OFF);
	le64_put(hdr + HDR_OFF_DATA_OFF, CHUNK_DATA_OFF(block_size));
	le64_put(hdr + HDR_OFF_CKSUM, cksum_buf(hdr, HDR_OFF_CKSUM));
}

/* The header's version (1 or 2) if it is valid for a chunk "id" of this
 * store, else 0.  Reserved bytes are not checked: a later version that uses
 * them bumps the version, and a reader must not reject its own format for
 * spare bytes.  A version-2 header must give the layout this block size
 * implies: the fields are there for readers without our constants. */
static unsigned chunk_hdr_version(const uint8_t hdr[CHUNK_HEADER_BYTES], uint32_t block_size,
				  uint64_t id)
{
	uint32_t version = le32_get(hdr + HDR_OFF_VERSION);

	if (memcmp(hdr + HDR_OFF_MAGIC, CHUNK_MAGIC, CHUNK_MAGIC_LEN) != 0 ||
	    le64_get(hdr + HDR_OFF_CKSUM) != cksum_buf(hdr, HDR_OFF_CKSUM) ||
	    le32_get(hdr + HDR_OFF_BLOCK_SIZE) != block_size ||
	    le64_get(hdr + HDR_OFF_CHUNK_ID) != id)
		return 0;
	if (version == CHUNK_VERSION_1)
		return version;
	if (version == CHUNK_VERSION &&
	    le32_get(hdr + HDR_OFF_NSLOTS) == CHUNK_NSLOTS(block_size) &&
	    le32_get(hdr + HDR_OFF_TABLE_OFF) == TABLE_OFF &&
	    le64_get(hdr + HDR_OFF_DATA_OFF) == CHUNK_DATA_OFF(block_size))
		return version;
	return 0;
}

/* Where slot "slot" of a chunk of this header version starts. */
static off_t slot_off(const struct chunk_store *cs, unsigned version, uint32_t slot)
{
	off_t base = version == CHUNK_VERSION_1 ? CHUNK_HEADER_BYTES : (off_t)cs->data_off;

	return base + (off_t)slot * (off_t)cs->block_size;
}

/* Where the entry of slot "slot" is, in a slot table or a sidecar. */
static off_t entry_off(uint32_t slot)
{
	return (off_t)TABLE_OFF + (off_t)slot * CHUNK_ENTRY_BYTES;
}

static void entry_encode(uint8_t p[CHUNK_ENTRY_BYTES], uint64_t cksum, uint64_t lblock,
			 uint8_t kind)
{
	le64_put(p + ENT_OFF_CKSUM, cksum);
	for (unsigned i = 0; i < 6; i++)
		p[ENT_OFF_LBLOCK + i] = (uint8_t)(lblock >> (8 * i));
	p[ENT_OFF_KIND] = kind;
	p[ENT_OFF_FLAGS] = 0;
}

static void entry_decode(const uint8_t p[CHUNK_ENTRY_BYTES], struct chunk_entry *e)
{
	e->cksum = le64_get(p + ENT_OFF_CKSUM);
	e->lblock = 0;
	for (unsigned i = 0; i < 6; i++)
		e->lblock |= (uint64_t)p[ENT_OFF_LBLOCK + i] << (8 * i);
	e->kind = p[ENT_OFF_KIND];
	e->flags = p[ENT_OFF_FLAGS];
}

static void side_name(char name[CHUNK_NAME_LEN + 1], uint64_t id)
{
	snprintf(name, CHUNK_NAME_LEN + 1, "%016" PRIx64 SIDE_NAME_SUFFIX, id);
}

static void side_hdr_encode(uint8_t hdr[CHUNK_HEADER_BYTES], uint32_t nslots, uint64_t id)
{
	memset(hdr, 0, CHUNK_HEADER_BYTES);
	memcpy(hdr, SIDE_MAGIC, CHUNK_MAGIC_LEN);
	le32_put(hdr + SIDE_OFF_VERSION, SIDE_VERSION);
	le32_put(hdr + SIDE_OFF_NSLOTS, nslots);
	le64_put(hdr + SIDE_OFF_CHUNK_ID, id);
	le32_put(hdr + SIDE_OFF_FLAGS, SIDE_FLAG_LEGACY);
	le64_put(hdr + HDR_OFF_CKSUM, cksum_buf(hdr, HDR_OFF_CKSUM));
}

/* Only the form the upgrade writes (legacy checksums) is known. */
static bool side_hdr_valid(const uint8_t hdr[CHUNK_HEADER_BYTES], uint32_t nslots, uint64_t id)
{
	return memcmp(hdr, SIDE_MAGIC, CHUNK_MAGIC_LEN) == 0 &&
	       le64_get(hdr + HDR_OFF_CKSUM) == cksum_buf(hdr, HDR_OFF_CKSUM) &&
	       le32_get(hdr + SIDE_OFF_VERSION) == SIDE_VERSION &&
	       le32_get(hdr + SIDE_OFF_NSLOTS) == nslots &&
	       le64_get(hdr + SIDE_OFF_CHUNK_ID) == id &&
	       le32_get(hdr + SIDE_OFF_FLAGS) == SIDE_FLAG_LEGACY;
}

const char *chunk_bad_str(const struct chunk_bad *bad, uint64_t want_lblock, char *buf,
			  size_t len)
{
	switch (bad->why) {
	case CHUNK_BAD_CKSUM:
		snprintf(buf, len, "checksum mismatch");
		break;
	case CHUNK_BAD_UNWRITTEN:
		snprintf(buf, len, "slot never written");
		break;
	case CHUNK_BAD_KIND:
		snprintf(buf, len, "slot holds no data block");
		break;
	case CHUNK_BAD_LBLOCK:
		snprintf(buf, len, "slot holds block %" PRIu64 ", expected %" PRIu64,
			 bad->lblock, want_lblock);
		break;
	case CHUNK_BAD_NO_SIDECAR:
		snprintf(buf, len, "no sidecar (.slots) for this version-1 chunk file");
		break;
	default:
		snprintf(buf, len, "damaged");
		break;
	}
	return buf;
}

/* What a failed write tells the caller: -ENOSPC when the file system (or
 * quota) is full, else -EIO. */
static int write_err(int err)
{
	return (err == ENOSPC || err == EDQUOT) ? -ENOSPC : -EIO;
}

/* Write all of buf.  0 or write_err().  A short write is retried so the
 * kernel tells us why. */
static int pwrite_full(int fd, const void *buf, size_t len, off_t off)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, off);

		if (n < 0) {
			int err = errno;

			if (err == EINTR)
				continue;
			return write_err(err);
		}
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

/* Read up to len bytes; returns the count (short only at end of file) or
 * -EIO. */
static ssize_t pread_full(int fd, void *buf, size_t len, off_t off)
{
	uint8_t *p = buf;
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, p + done, len - done, off + (off_t)done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -EIO;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/* A DIR of our own on dirfd's directory: the store's dirfds are shared and
 * a DIR's offset is not. */
static int dir_stream(int dirfd, DIR **out)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;

	if (fd < 0)
		return -errno;
	*out = fdopendir(fd);
	if (!*out) {
		rc = -errno;
		close(fd);
		return rc;
	}
	return 0;
}

/* The ids of every chunk file in the directory, sorted; *idsp is the
 * caller's to free (NULL when there are none). */
static int chunk_dir_list(int dirfd, uint64_t **idsp, size_t *np)
{
	uint64_t *ids = NULL, id;
	size_t n = 0, cap = 0;
	struct dirent *de;
	DIR *d;
	int rc;

	rc = dir_stream(dirfd, &d);
	if (rc)
		return rc;
	for (;;) {
		errno = 0;
		de = readdir(d);
		if (!de) {
			rc = -errno;
			break;
		}
		if (!chunk_name_parse(de->d_name, &id))
			continue;
		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 64;
			uint64_t *nids = realloc(ids, ncap * sizeof(*ids));

			if (!nids) {
				rc = -ENOMEM;
				break;
			}
			ids = nids;
			cap = ncap;
		}
		ids[n++] = id;
	}
	closedir(d);
	if (rc) {
		free(ids);
		return rc;
	}
	if (n > 1)
		qsort(ids, n, sizeof(*ids), cmp_u64);
	*idsp = ids;
	*np = n;
	return 0;
}

/* --- fault injection ------------------------------------------------------- */

/* 0, or the injected error.  The two atomics are read separately: a call
 * racing with chunk_fault_set() may see the old or the new setting, which
 * is all a test can ask for. */
static int chunk_fault_hit(struct chunk_store *cs, int op)
{
	struct chunk_fault *f = &cs->fault[op];
	int err = atomic_load_explicit(&f->err, memory_order_acquire);

	if (err == 0)
		return 0;
	if (atomic_fetch_sub_explicit(&f->left, 1, memory_order_relaxed) > 0)
		return 0;
	return -err;
}

void chunk_test_hook(struct chunk_store *cs, chunk_test_fn *fn, void *arg)
{
	cs->test_fn = fn;
	cs->test_arg = arg;
}

static void test_point(struct chunk_store *cs, enum chunk_test_point at, uint64_t id, uint32_t n)
{
	if (cs->test_fn)
		cs->test_fn(cs, at, id, n, cs->test_arg);
}

void chunk_fault_set(struct chunk_store *cs, int op, uint32_t after, int err)
{
	struct chunk_fault *f;

	if (op < 0 || op >= CHUNK_FAULT_NOPS)
		return;
	f = &cs->fault[op];
	/* Off first, so no call counts against a half-written setting; and
	 * off is only that store, so that a test may switch a fault off while
	 * another thread closes the store it lets go on (WB_HOLD). */
	atomic_store_explicit(&f->err, 0, memory_order_release);
	if (err == 0)
		return;
	atomic_store_explicit(&f->left, (long long)after, memory_order_relaxed);
	atomic_store_explicit(&f->err, err < 0 ? -err : err, memory_order_release);
}

/* --- writers (all under mu) ------------------------------------------------ */

static void chunk_w_free(struct chunk_w *w)
{
	close(w->fd);
	if (w->dfd >= 0)
		close(w->dfd);
	free(w);
}

/*
 * The chunks no write will reach again: those below the oldest writer (ids
 * grow, and only a writer is written to; a chunk file that becomes a spare
 * is written again only under a new id, after chunk_remove() closed its read
 * fds).  Call after every change of cs->writers or cs->next_id.  Assumes mu
 * is held.
 */
static void sealed_update_locked(struct chunk_store *cs)
{
	uint64_t below = cs->next_id;

	assert(lock_held(&cs->mu));
	for (const struct chunk_w *w = cs->writers; w; w = w->next)
		if (w->id < below)
			below = w->id;
	atomic_store(&cs->sealed_below, below);
}

/* Free w if nothing needs it any more.  Assumes mu is held. */
static void chunk_w_reap_locked(struct chunk_store *cs, struct chunk_w *w)
{
	struct chunk_w **pp;

	assert(lock_held(&cs->mu));
	if (w == cs->active || w->refs > 0 || w->dirty)
		return;
	for (pp = &cs->writers; *pp != w; pp = &(*pp)->next)
		assert(*pp);
	*pp = w->next;
	chunk_w_free(w);
	sealed_update_locked(cs);
}

/* Drop a pin taken under mu.  Assumes mu is held. */
static void chunk_w_put_locked(struct chunk_store *cs, struct chunk_w *w)
{
	assert(lock_held(&cs->mu));
	assert(w->refs > 0);
	w->refs--;
	chunk_w_reap_locked(cs, w);
}

/* A spare as long as a full chunk file: one made from it never grows the
 * file.  A smaller one (a chunk left early, then removed) grows like a new
 * file, so it does not count as written ahead. */
static bool spare_whole(const struct chunk_store *cs, uint64_t bytes)
{
	return bytes >= CHUNK_FILE_MAX_BYTES(cs->block_size);
}

/*
 * Turn the newest spare into chunk file "name" and open it for writing: its
 * fd, or -1 (errno set) when there is no spare, the rename failed or the
 * open did; the caller then creates the file.  A spare whose rename failed
 * is forgotten (it stays in the spare directory until the next open adopts
 * it); one that was renamed but could not be opened is deleted.  *bytes:
 * the spare's size.  Assumes mu is held.
 */
static int spare_take_locked(struct chunk_store *cs, const char *name, uint64_t *bytes)
{
	char sname[CHUNK_NAME_LEN + 1];
	struct chunk_spare sp;
	int fd;

	assert(lock_held(&cs->mu));
	if (cs->nspares == 0) {
		errno = ENOENT;
		return -1;
	}
	sp = cs->spares[--cs->nspares];
	cs->spare_bytes -= sp.bytes;
	*bytes = sp.bytes;
	spare_name(sname, sp.seq);
	if (renameat2(cs->spare_dirfd, sname, cs->dirfd, name, RENAME_NOREPLACE) != 0) {
		vlog(LOG_WARNING, "spare chunk file %s: cannot reuse it: %s", sname,
		     strerror(errno));
		return -1;
	}
	fd = openat(cs->dirfd, name, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;

		/* nothing refers to it: drop it, so that the caller can create
		 * the file under this name */
		vlog(LOG_WARNING, "chunk %s: cannot open it: %s", name, strerror(err));
		unlinkat(cs->dirfd, name, 0);
		errno = err;
	}
	return fd;
}

/*
 * Direct writes.  A run of at least direct_min bytes (a guest's 1 MiB
 * write, a GC move) is written through a second fd of its chunk opened
 * with O_DIRECT, around the host's page cache: vsnapfs writes every block
 * to a new place, so through the cache each one takes a new page (its
 * allocation, its copy, its dirty accounting, its writeback later) that is
 * seldom read again; the guest caches what it reads itself.  Buffered, 1
 * MiB sequential writes into a fresh volume ran at 539-873 MiB/s and cost
 * 1.2-1.8 ms of daemon CPU per MiB here; direct, 1,191-1,348 MiB/s and
 * 0.34-0.39 ms (docs/performance.md, "Sequential writes around the page
 * cache").  Smaller runs stay buffered: a 4 KiB O_DIRECT write would wait
 * for the device.
 *
 * What does not change: the entries and the log stay buffered (other
 * pages: slots are page-aligned, and a block is a whole number of pages),
 * and chunk_sync() still fdatasyncs the chunk, which flushes the device's
 * cache and commits an appended file's allocation; so durability is what
 * it was.  Reads keep going through the read cache's buffered fds: the
 * kernel drops the cached pages of a range it writes directly, after the
 * write, and a slot is read only once its append has returned (and, if it
 * went behind, once it is written: wb_wait).  The data
 * goes through this thread's page-aligned TBUF_DIRECT buffer (FUSE hands a
 * write's data at an offset that is not), a MiB at a time.  A file system
 * that refuses O_DIRECT, at the open or at a write (EINVAL: alignment it
 * does not take), gets buffered writes from then on, with one notice in
 * the log.
 *
 * Direct and buffered writes of one file must not meet in one page-cache
 * folio: the kernel drops the cached folios of a range after writing it
 * directly, and one that a buffered write dirtied meanwhile cannot be
 * dropped, which the kernel reports as EIO at the next fdatasync (its
 * "page cache invalidation failure"): the store would be poisoned.  Slots
 * are whole pages and a buffered write's folios stay inside the range it
 * writes, but read-ahead and a spare's zeros (written a MiB at a time) make
 * large folios that span slots.  So the read cache's fds read no more
 * than they are asked (POSIX_FADV_RANDOM) while a direct write may still
 * come: in a daemon with direct writes on, until the chunk is sealed (below
 * every writer: sealed_update_locked), then they read ahead as any file
 * does, so that a cold sequential read of all but the newest chunks keeps
 * the host's read-ahead (without it, 2-4x slower: docs/performance.md,
 * "Cold reads without read-ahead"); and always in a process that did not
 * say (vsnapctl's, which may read a mounted store and cannot know its
 * writers).  A sealed chunk's file may become a spare, and so a chunk
 * again: with direct writes on, its cached pages are dropped when it is
 * kept (spare_drop_pages) and again when it becomes a chunk, which takes no
 * direct writes if any page is left (pages_left).  Direct writes are off
 * where the page size does not divide the slots' offsets.  A program
 * outside vsnapfs that reads a mounted store's chunk files with read-ahead
 * (a copy of the store's directory) can still make such a folio: back up
 * with vsnapctl send, or unmounted.
 */
static_assert(CHUNK_BLOCK_MIN % 4096 == 0 && DIRECT_PIECE % CHUNK_BLOCK_MAX == 0,
	      "a direct write's pieces are whole pages and whole blocks");

/* Direct writes (failed: &cs->direct_failed) or reads (&cs->direct_reads_failed)
 * are off from now on, said once. */
static void direct_refused(atomic_bool *failed, uint64_t id, const char *what, int err)
{
	if (!atomic_exchange(failed, true))
		vlog(LOG_NOTICE, "chunk %016" PRIx64 ": the host refused O_DIRECT (%s): "
		     "%s through its page cache from now on", id, strerror(err), what);
}

static int direct_open(struct chunk_store *cs, uint64_t id, const char *name)
{
	int fd;

	if (!cs->direct_min || atomic_load(&cs->direct_failed))
		return -1;
	fd = openat(cs->dirfd, name, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0 && (errno == EINVAL || errno == EOPNOTSUPP))
		direct_refused(&cs->direct_failed, id, "writing", errno);
	return fd;       /* any other failure: buffered writes for this chunk */
}

/* One piece, written directly: 0, -EINVAL when the host refuses it, or
 * write_err().  CHUNK_FAULT_DIRECT fails the pwrite itself, with its
 * errno. */
static int pwrite_direct(struct chunk_store *cs, int fd, const void *buf, size_t len, off_t off)
{
	ssize_t n;
	int fault;

	do {
		fault = chunk_fault_hit(cs, CHUNK_FAULT_DIRECT);
		errno = -fault;
		n = fault ? -1 : pwrite(fd, buf, len, off);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EINVAL ? -EINVAL : write_err(errno);
	/* short: write the rest, and the kernel says why if it fails again */
	return (size_t)n == len ? 0 : pwrite_full(fd, (const uint8_t *)buf + n, len - (size_t)n, off + n);
}

/* Write len bytes of payload at off of w: directly if they are a run long
 * enough and the buffer can be had, else (and for what a refused direct
 * write left) through the page cache. */
static int write_payload(struct chunk_store *cs, const struct chunk_w *w, const uint8_t *src,
			 size_t len, off_t off)
{
	size_t done = 0;

	if (w->dfd >= 0 && len >= cs->direct_min) {
		while (done < len && !atomic_load(&cs->direct_failed)) {
			size_t n = len - done < DIRECT_PIECE ? len - done : DIRECT_PIECE;
			void *b = tbuf_get(TBUF_DIRECT, DIRECT_PIECE);
			int rc;

			if (!b)
				break;
			memcpy(b, src + done, n);
			rc = pwrite_direct(cs, w->dfd, b, n, off + (off_t)done);
			if (rc == -EINVAL) {
				direct_refused(&cs->direct_failed, w->id, "writing", EINVAL);
				break;
			}
			if (rc)
				return rc;
			atomic_fetch_add(&cs->direct_bytes, n);
			done += n;
		}
	}
	return done == len ? 0 : pwrite_full(w->fd, src + done, len - done, off + (off_t)done);
}

/*
 * Write-behind (docs/design.md, "Write-behind").  A direct write returns
 * when the device has the data; at QD1 the caller's CPU and the device
 * would take turns.  So a piece of a run of DATA blocks that would be
 * written directly is copied into a job of a ring and written by the
 * store's writer thread, and chunk_append() returns without waiting for
 * the device.  (GC's RELOC runs are written by GC itself: a move may have
 * to fail for space, and must be able to fail cleanly.)
 *
 * Jobs are written in the order of their sequence numbers, so every job
 * up to wb_done is written.  A reader of a job's slots waits for it
 * (wb_wait), chunk_sync() waits for every job queued before it started
 * (wb_drain) and only then looks for dirty chunks, which the writer marks
 * before it moves wb_done.  The entries are written after the payload, as
 * in the caller's path, so a slot whose payload did not land has no entry
 * and reads EIO.  A job that fails poisons the store: its write had
 * returned, so only the next sync can say it was lost.  Back-pressure: an
 * append waits while the ring is full, so no writer gets more than the
 * ring ahead of the device.
 */
static bool wb_takes(const struct chunk_store *cs, const struct chunk_w *w, size_t len,
		     enum chunk_kind kind)
{
	return cs->wb_n && kind == CHUNK_KIND_DATA && w->dfd >= 0 && len >= cs->direct_min &&
	       !atomic_load(&cs->direct_failed);
}

static struct wb_job *wb_job(struct chunk_store *cs, uint64_t seq)
{
	return &cs->wb_jobs[seq % cs->wb_n];
}

/* Queue run's payload (src) and its entries (ents), a job per piece. */
static void wb_queue(struct chunk_store *cs, const struct chunk_run *run, const uint8_t *src,
		     const uint8_t *ents)
{
	const size_t bs = cs->block_size, len = (size_t)run->nblocks * bs;

	for (size_t done = 0; done < len;) {
		size_t n = len - done < DIRECT_PIECE ? len - done : DIRECT_PIECE;
		uint32_t first = (uint32_t)(done / bs);
		struct wb_job *j;
		uint64_t seq;

		lock_mutex_lock(&cs->mu);
		run->w->refs++;                 /* the job's pin: the writer drops it */
		lock_mutex_unlock(&cs->mu);

		lock_mutex_lock(&cs->wb_mu);
		seq = ++cs->wb_queued;
		atomic_fetch_add(&cs->wb_busy, 1);
		while (cs->wb_done + cs->wb_n < seq)   /* the ring is full */
			lock_cond_wait(&cs->wb_cv, &cs->wb_mu);
		lock_mutex_unlock(&cs->wb_mu);

		/* Ours until its seq is set: the writer is done with the job it
		 * held, and nobody looks at a job whose seq is not pending. */
		j = wb_job(cs, seq);
		j->id = run->w->id;
		j->w = run->w;
		j->len = n;
		j->slot = run->slot + first;
		j->nblocks = (uint32_t)(n / bs);
		memcpy(j->buf, src + done, n);
		memcpy(j->ents, ents + (size_t)first * CHUNK_ENTRY_BYTES,
		       (size_t)j->nblocks * CHUNK_ENTRY_BYTES);

		lock_mutex_lock(&cs->wb_mu);
		j->seq = seq;
		pthread_cond_broadcast(&cs->wb_cv);
		lock_mutex_unlock(&cs->wb_mu);
		done += n;
	}
}

/* Write job j's payload, then its entries.  A failure poisons the store. */
static int wb_write(struct chunk_store *cs, const struct wb_job *j)
{
	off_t off = slot_off(cs, CHUNK_VERSION, j->slot);
	int rc = atomic_load(&cs->direct_failed) ? -EINVAL
						 : pwrite_direct(cs, j->w->dfd, j->buf, j->len, off);

	if (rc == -EINVAL) {
		direct_refused(&cs->direct_failed, j->w->id, "writing", EINVAL);
		rc = pwrite_full(j->w->fd, j->buf, j->len, off);
	} else if (rc == 0) {
		atomic_fetch_add(&cs->direct_bytes, j->len);
		atomic_fetch_add(&cs->wb_bytes, j->len);
	}
	if (rc == 0)
		rc = pwrite_full(j->w->fd, j->ents, (size_t)j->nblocks * CHUNK_ENTRY_BYTES,
				 entry_off(j->slot));
	if (rc && !atomic_exchange(&cs->poisoned, true))
		vlog_at(LOG_CRIT, &(struct log_where){ .chunk = j->w->id, .has_chunk = true },
			"chunk %016" PRIx64 ": a write that had returned failed (%s): writes since "
			"the last successful fsync may be lost. No more writes are accepted and every "
			"fsync fails; reads go on. Unmount and mount again to go back to the last "
			"durable state", j->w->id, log_strerror(rc));
	return rc;
}

static void *wb_main(void *arg)
{
	struct chunk_store *cs = arg;

	lock_mutex_lock(&cs->wb_mu);
	for (;;) {
		uint64_t seq = cs->wb_done + 1;
		struct wb_job *j = wb_job(cs, seq);
		int rc;

		if (j->seq != seq) {
			if (cs->wb_stop && cs->wb_queued == cs->wb_done)
				break;
			lock_cond_wait(&cs->wb_cv, &cs->wb_mu);
			continue;
		}
		lock_mutex_unlock(&cs->wb_mu);

		while (chunk_fault_hit(cs, CHUNK_FAULT_WB_HOLD))   /* tests: hold the job */
			usleep(1000);
		rc = wb_write(cs, j);
		lock_mutex_lock(&cs->mu);
		if (rc == 0)
			j->w->dirty = true;
		chunk_w_put_locked(cs, j->w);
		lock_mutex_unlock(&cs->mu);

		lock_mutex_lock(&cs->wb_mu);
		cs->wb_done = seq;
		atomic_fetch_sub(&cs->wb_busy, 1);
		pthread_cond_broadcast(&cs->wb_cv);
	}
	lock_mutex_unlock(&cs->wb_mu);
	return NULL;
}

/* Wait until no job still has to write a slot of [slot, slot + n) of chunk
 * id; nowait: -EAGAIN instead of waiting. */
static int wb_wait(struct chunk_store *cs, uint64_t id, uint32_t slot, uint32_t n, bool nowait)
{
	int rc = 0;

	if (atomic_load(&cs->wb_busy) == 0)
		return 0;
	lock_mutex_lock(&cs->wb_mu);
	for (;;) {
		bool pending = false;

		for (uint64_t seq = cs->wb_done + 1; seq <= cs->wb_queued && !pending; seq++) {
			const struct wb_job *j = wb_job(cs, seq);

			pending = j->seq == seq && j->id == id && j->slot < slot + n &&
				  slot < j->slot + j->nblocks;
		}
		if (!pending)
			break;
		if (nowait) {
			rc = -EAGAIN;
			break;
		}
		lock_cond_wait(&cs->wb_cv, &cs->wb_mu);
	}
	lock_mutex_unlock(&cs->wb_mu);
	return rc;
}

/* Wait until every job queued so far is written. */
static void wb_drain(struct chunk_store *cs)
{
	uint64_t target;

	if (atomic_load(&cs->wb_busy) == 0)
		return;
	lock_mutex_lock(&cs->wb_mu);
	target = cs->wb_queued;
	while (cs->wb_done < target)
		lock_cond_wait(&cs->wb_cv, &cs->wb_mu);
	lock_mutex_unlock(&cs->wb_mu);
}

static void wb_free(struct chunk_store *cs)
{
	tbuf_huge_free(cs->wb_bufs, (size_t)cs->wb_n * DIRECT_PIECE);
	free(cs->wb_jobs);
	cs->wb_bufs = NULL;
	cs->wb_jobs = NULL;
	cs->wb_n = 0;
}

int chunk_write_behind(struct chunk_store *cs, size_t bytes)
{
	uint32_t n;
	int rc;

	if (cs->wb_n)
		return -EBUSY;
	if (bytes == 0 || !cs->direct_min)
		return 0;
	n = bytes / DIRECT_PIECE + (bytes % DIRECT_PIECE != 0);
	if (n > WB_JOBS_MAX)
		n = WB_JOBS_MAX;
	/* one mapping: two pieces to a huge page, each still one segment */
	cs->wb_n = n;
	cs->wb_jobs = calloc(n, sizeof(*cs->wb_jobs));
	cs->wb_bufs = tbuf_huge_alloc((size_t)n * DIRECT_PIECE);
	if (!cs->wb_jobs || !cs->wb_bufs) {
		wb_free(cs);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++)
		cs->wb_jobs[i].buf = cs->wb_bufs + (size_t)i * DIRECT_PIECE;
	rc = pthread_create(&cs->wb_thread, NULL, wb_main, cs);
	if (rc) {
		wb_free(cs);
		return -rc;
	}
	(void)pthread_setname_np(cs->wb_thread, "vsnapfs-wb");   /* for top and perf */
	return 0;
}

/* End the writer thread once every job is written. */
static void wb_stop(struct chunk_store *cs)
{
	if (!cs->wb_n)
		return;
	lock_mutex_lock(&cs->wb_mu);
	cs->wb_stop = true;
	pthread_cond_broadcast(&cs->wb_cv);
	lock_mutex_unlock(&cs->wb_mu);
	pthread_join(cs->wb_thread, NULL);
	wb_free(cs);
}

/*
 * How many of fd's file's pages are in the host's page cache.  A spare's
 * clean pages are dropped before it becomes a chunk that takes direct
 * writes, but POSIX_FADV_DONTNEED skips what it cannot drop at once (a
 * folio still being read ahead, one mapped by another process); such a
 * chunk is written through the page cache only (pages_left).  cachestat(2)
 * (Linux 6.5) says; where the kernel lacks it (-ENOSYS, probed by
 * chunk_direct_writes) no chunk is read ahead while direct writes are on,
 * as before sealed chunks were, and the drop is trusted.  Debian 12's
 * headers predate it: 451 is its number in the kernel's common table (an
 * architecture that numbers it otherwise, alpha or MIPS, gets -ENOSYS or
 * another error, which counts as lacking it).
 */
#if !defined(SYS_cachestat) && !defined(__alpha__) && !defined(__mips__)
#define SYS_cachestat 451
#endif
static int cachestat_pages(int fd, uint64_t *pages)
{
#ifdef SYS_cachestat
	struct { uint64_t off, len; } range = { 0, 0 };          /* 0: to the end */
	struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } st;

	if (syscall(SYS_cachestat, fd, &range, &st, 0) != 0)
		return -errno;
	*pages = st.nr_cache;
	return 0;
#else
	(void)fd;
	(void)pages;
	return -ENOSYS;
#endif
}

/* Does fd's file still have pages cached?  An error says yes: no direct
 * writes into it. */
static bool pages_left(int fd)
{
	uint64_t pages = 0;

	return cachestat_pages(fd, &pages) != 0 || pages > 0;
}

void chunk_direct_writes(struct chunk_store *cs, size_t min_bytes)
{
	long page = sysconf(_SC_PAGESIZE);
	uint64_t pages;

	if (page <= 0 || cs->data_off % (uint64_t)page || cs->block_size % (uint64_t)page)
		min_bytes = 0;          /* slots would share pages */
	cs->direct_min = min_bytes;
	cs->direct_known = true;
	cs->cachestat_ok = cachestat_pages(cs->dirfd, &pages) == 0;
}

uint64_t chunk_direct_bytes(struct chunk_store *cs)
{
	return atomic_load(&cs->direct_bytes);
}

uint64_t chunk_write_behind_bytes(struct chunk_store *cs)
{
	return atomic_load(&cs->wb_bytes);
}

uint64_t chunk_write_behind_pending(struct chunk_store *cs)
{
	return (uint64_t)atomic_load(&cs->wb_busy) * DIRECT_PIECE;
}

/* Zeros for a spare written ahead and a taken spare's table: .bss, never
 * written (not const, or it would take a MiB of the binary). */
static uint8_t zeros[1u << 20];
static_assert(CHUNK_DATA_OFF(CHUNK_BLOCK_MIN) - CHUNK_HEADER_BYTES <= sizeof(zeros),
	      "a slot table is zeroed in one write");

/* Create the next chunk file and make it active.  Assumes mu is held. */
static int chunk_w_create_locked(struct chunk_store *cs)
{
	uint8_t hdr[CHUNK_HEADER_BYTES];
	char name[CHUNK_NAME_LEN + 1];
	struct chunk_w *w, *old;
	uint64_t id = cs->next_id, spare_bytes = 0;
	bool spare, buffered_only = false;
	int fd, rc;

	assert(lock_held(&cs->mu));
	if (id == 0)                    /* next_id wrapped: ids are used up */
		return -EOVERFLOW;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->dfd = -1;
	chunk_name(name, id);
	/* Spent whatever happens next: a file may now exist under this id. */
	cs->next_id = id + 1;

	fd = spare_take_locked(cs, name, &spare_bytes);
	spare = fd >= 0;
	w->from_spare = spare && spare_whole(cs, spare_bytes);
	if (spare && cs->direct_min) {
		(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		/* without cachestat no chunk is read ahead while direct
		 * writes are on (read_ahead_safe), and the drop is trusted */
		buffered_only = cs->cachestat_ok && pages_left(fd);
	}
	if (fd < 0)
		fd = openat(cs->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		goto fail_free;
	}
	chunk_hdr_encode(hdr, cs->block_size, id);
	rc = pwrite_full(fd, hdr, sizeof(hdr), 0);
	/* A spare's table holds its old entries, on disk and maybe no longer
	 * in the page cache: each append's entries would then start with a
	 * read of the page they begin in (a device read per MiB written, on
	 * the write's path).  Zeros, in one write, make every table page
	 * whole in the cache, and leave no stale entry to read.  Their
	 * writeback starts now (best effort), not at the chunk's first sync,
	 * whose caller would wait for all of them. */
	if (!rc && spare) {
		rc = pwrite_full(fd, zeros, cs->data_off - CHUNK_HEADER_BYTES, TABLE_OFF);
		if (!rc)
			(void)sync_file_range(fd, 0, (off_t)cs->data_off, SYNC_FILE_RANGE_WRITE);
	}
	if (rc)
		goto fail_unlink;

	w->id = id;
	w->fd = fd;
	w->dfd = buffered_only ? -1 : direct_open(cs, id, name);
	w->dirty = true;                /* the header needs syncing too */
	w->next = cs->writers;
	cs->writers = w;
	old = cs->active;
	cs->active = w;
	sealed_update_locked(cs);
	cs->dir_dirty = true;
	if (old)
		chunk_w_reap_locked(cs, old);
	return 0;

fail_unlink:
	/* Best effort: nothing refers to this file, and a leftover one is only
	 * a chunk with a bad header that GC will find unreferenced. */
	unlinkat(cs->dirfd, name, 0);
	close(fd);
fail_free:
	free(w);
	return rc;
}

/* --- read cache (under fd_lock) -------------------------------------------- */

/* Index of the first of n elements of elem_bytes at base, sorted by a
 * uint64_t id that is their first field, with id >= id. */
static size_t id_lower_bound(const void *base, size_t n, size_t elem_bytes, uint64_t id)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		uint64_t x;

		memcpy(&x, (const char *)base + mid * elem_bytes, sizeof(x));
		if (x < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Index of the first entry with id >= id.  Assumes fd_lock is held. */
static size_t rfd_lower_bound(const struct chunk_store *cs, uint64_t id)
{
	assert(lock_held(&cs->fd_lock));
	return id_lower_bound(cs->rfds, cs->nrfds, sizeof(cs->rfds[0]), id);
}

/* Assumes fd_lock is held. */
static struct chunk_rfd *rfd_find(struct chunk_store *cs, uint64_t id)
{
	size_t i = rfd_lower_bound(cs, id);

	assert(lock_held(&cs->fd_lock));
	return (i < cs->nrfds && cs->rfds[i].id == id) ? &cs->rfds[i] : NULL;
}

static void ent_pages_free(struct chunk_store *cs, struct ent_pages *ep)
{
	if (!ep)
		return;
	for (uint32_t i = 0; i < ep->n; i++) {
		uint8_t *pg = atomic_load_explicit(&ep->pg[i], memory_order_relaxed);

		if (pg) {
			free(pg);
			atomic_fetch_sub(&cs->ent_bytes, 4096);
		}
	}
	free(ep);
}

/* Close and forget entry i.  Assumes fd_lock is held exclusive. */
static void rfd_delete(struct chunk_store *cs, size_t i)
{
	assert(lock_rw_wrheld(&cs->fd_lock));
	if (cs->rfds[i].fd >= 0) {
		close(cs->rfds[i].fd);
		cs->rfd_nopen--;
	}
	if (cs->rfds[i].sfd >= 0)
		close(cs->rfds[i].sfd);
	if (cs->rfds[i].dfd >= 0)
		close(cs->rfds[i].dfd);
	ent_pages_free(cs, cs->rfds[i].ents);
	memmove(&cs->rfds[i], &cs->rfds[i + 1], (cs->nrfds - i - 1) * sizeof(cs->rfds[0]));
	cs->nrfds--;
}

/* Close one cached fd to stay under the fd limit.  Round-robin rather than
 * LRU: an LRU would need a write under the shared lock on every read.  Bad
 * entries hold no fd and stay.  Assumes fd_lock is held exclusive. */
static void rfd_evict_one(struct chunk_store *cs)
{
	assert(lock_rw_wrheld(&cs->fd_lock));
	for (size_t k = 0; k < cs->nrfds; k++) {
		size_t i = (cs->rfd_evict_pos + k) % cs->nrfds;

		if (cs->rfds[i].fd >= 0) {
			rfd_delete(cs, i);
			cs->rfd_evict_pos = i;
			return;
		}
	}
}

/* Add e, which owns its fds (fd -1 for a bad chunk).  Assumes fd_lock is
 * held exclusive and e->id is not in the cache.  A sidecar fd is not
 * counted: sidecars are few, and only of old chunks. */
static int rfd_insert(struct chunk_store *cs, const struct chunk_rfd *e)
{
	size_t i;

	assert(lock_rw_wrheld(&cs->fd_lock));
	if (e->fd >= 0 && cs->rfd_nopen >= cs->rfd_open_max)
		rfd_evict_one(cs);
	if (cs->nrfds == cs->rfds_cap) {
		size_t ncap = cs->rfds_cap ? 2 * cs->rfds_cap : 64;
		struct chunk_rfd *n = realloc(cs->rfds, ncap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		cs->rfds = n;
		cs->rfds_cap = ncap;
	}
	i = rfd_lower_bound(cs, e->id);
	memmove(&cs->rfds[i + 1], &cs->rfds[i], (cs->nrfds - i) * sizeof(cs->rfds[0]));
	cs->rfds[i] = *e;
	cs->nrfds++;
	if (e->fd >= 0)
		cs->rfd_nopen++;
	return 0;
}

/*
 * Open the sidecar of version-1 chunk id for reading: 0 with *sfdp set (-1
 * if there is none); 1 if its header is bad (a chunk we cannot verify:
 * every read fails, as for a bad chunk header); or a negative errno.
 */
static int side_open_ro(struct chunk_store *cs, uint64_t id, int *sfdp)
{
	uint8_t hdr[CHUNK_HEADER_BYTES];
	char name[CHUNK_NAME_LEN + 1];
	ssize_t n;
	int fd;

	*sfdp = -1;
	side_name(name, id);
	fd = openat(cs->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	n = pread_full(fd, hdr, sizeof(hdr), 0);
	if (n < 0) {
		close(fd);
		return (int)n;
	}
	if ((size_t)n < sizeof(hdr) || !side_hdr_valid(hdr, cs->nslots, id)) {
		close(fd);
		return 1;
	}
	*sfdp = fd;
	return 0;
}

/* May chunk id's read fd read ahead, once it is in the read cache?  Not
 * where a direct write may still come (see "Direct writes"): in a daemon
 * that writes directly, while the chunk is not sealed, and always where the
 * kernel cannot say whether a spare's pages were all dropped (pages_left);
 * in a process that did not say (vsnapctl), never. */
static bool read_ahead_safe(struct chunk_store *cs, uint64_t id)
{
	return cs->direct_known &&
	       (!cs->direct_min || (cs->cachestat_ok && id < atomic_load(&cs->sealed_below)));
}

/*
 * Direct reads (chunk_direct_reads: vsnapctl scrub).  A reader that reads
 * every block of a store once gains nothing from the host's page cache and
 * costs it plenty: each MiB read through it takes new pages and pushes out
 * what the VMs' reads keep there.  So its runs are read through a second fd
 * of the chunk opened with O_DIRECT, into its own page-aligned buffer; the
 * entries (small, unaligned) and anything unaligned still go through the
 * read fd.  A direct read makes no page-cache folio, so it cannot meet a
 * direct write in one either; the kernel writes back a dirty range before
 * reading it directly.  A host that refuses O_DIRECT (EINVAL, at the open
 * or a read) gets buffered reads from then on, with one notice.  Each
 * cached entry may hold two fds, so the read cache holds half as many.
 * Reading around the cache also means reading the device: a scrub verifies
 * what the device holds, not a cached copy, and a warm store is scrubbed
 * no faster than a cold one.
 */
#define DIRECT_READ_ALIGN 4096u

/* Open chunk file name for reading, with flags added to O_RDONLY |
 * O_CLOEXEC, and without access-time updates (a profile showed them) where
 * we may ask: only the file's owner (or CAP_FOWNER) may. */
static int open_ro(struct chunk_store *cs, const char *name, int flags)
{
	int fd = openat(cs->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOATIME | flags);

	if (fd < 0 && errno == EPERM)
		fd = openat(cs->dirfd, name, O_RDONLY | O_CLOEXEC | flags);
	return fd;
}

static int open_direct_ro(struct chunk_store *cs, uint64_t id, const char *name)
{
	int fd = open_ro(cs, name, O_DIRECT);

	if (fd < 0 && (errno == EINVAL || errno == EOPNOTSUPP))
		direct_refused(&cs->direct_reads_failed, id, "reading", errno);
	return fd;              /* any other failure: buffered reads of this chunk */
}

void chunk_direct_reads(struct chunk_store *cs)
{
	cs->direct_reads = true;
	cs->rfd_open_max = cs->rfd_open_max / 2 > RFD_OPEN_MIN ? cs->rfd_open_max / 2 : RFD_OPEN_MIN;
}

/* Open a chunk (and the sidecar of a version-1 chunk) for reading and check
 * the headers.  0 with *e filled; 1 if a header is bad (e->bad: remember,
 * do not retry); or a negative errno that may be transient (-ENOENT,
 * -EMFILE, -EIO on a failed read). */
static int chunk_open_ro(struct chunk_store *cs, uint64_t id, struct chunk_rfd *e)
{
	uint8_t hdr[CHUNK_HEADER_BYTES];
	char name[CHUNK_NAME_LEN + 1];
	ssize_t n;
	int fd, rc;

	*e = (struct chunk_rfd){ .id = id, .fd = -1, .sfd = -1, .dfd = -1, .bad = true };
	chunk_name(name, id);
	fd = open_ro(cs, name, 0);
	if (fd < 0)
		return -errno;
	/* No read-ahead where direct writes may happen (see "Direct writes"),
	 * and none before the fd is in the read cache: until then a
	 * chunk_remove() may make its file a spare, and then a chunk. */
	e->no_ra = cs->direct_min || !cs->direct_known;
	if (e->no_ra)
		(void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
	n = pread_full(fd, hdr, sizeof(hdr), 0);
	if (n < 0) {
		close(fd);
		return (int)n;
	}
	if ((size_t)n < sizeof(hdr) || !(e->version = (uint8_t)chunk_hdr_version(hdr, cs->block_size, id))) {
		close(fd);
		return 1;
	}
	if (e->version == CHUNK_VERSION_1) {
		rc = side_open_ro(cs, id, &e->sfd);
		if (rc) {
			close(fd);
			e->version = 0;
			return rc;
		}
	}
	if (e->version != CHUNK_VERSION_1 && cs->ent_max) {
		uint32_t npages = (cs->nslots + ENT_PAGE_SLOTS - 1) / ENT_PAGE_SLOTS;

		/* without it the reads go to the file: no error */
		e->ents = calloc(1, sizeof(*e->ents) + npages * sizeof(e->ents->pg[0]));
		if (e->ents)
			e->ents->n = npages;
	}
	if (cs->direct_reads && !atomic_load(&cs->direct_reads_failed))
		e->dfd = open_direct_ro(cs, id, name);
	e->fd = fd;
	e->bad = false;
	return 0;
}

/* Chunk id is sealed, and its read fd is in the read cache (so that a
 * chunk_remove(), which renames its file, closes the fd first under
 * fd_lock): read ahead from now on (see "Direct writes"). */
static void rfd_read_ahead(struct chunk_store *cs, uint64_t id)
{
	struct chunk_rfd *e;

	lock_rw_wrlock(&cs->fd_lock);
	e = rfd_find(cs, id);
	if (e && e->no_ra) {
		if (e->fd >= 0)
			(void)posix_fadvise(e->fd, 0, 0, POSIX_FADV_NORMAL);
		e->no_ra = false;
	}
	lock_rw_unlock(&cs->fd_lock);
}

/*
 * Find (opening it on first use) the read fds of chunk id, copied to *out.
 * On 0, fd_lock is held shared and the caller releases it after its pread.
 * -EIO for a chunk with a bad header, -ENOENT when its file is missing.
 *
 * The open happens without the lock so readers of other chunks do not wait
 * on it.  If a chunk_remove() ran meanwhile (rfd_gen moved), the fd may be of
 * an unlinked file and is dropped; looking again then finds no file.
 */
static int chunk_rfd_acquire(struct chunk_store *cs, uint64_t id, struct chunk_rfd *out)
{
	for (;;) {
		struct chunk_rfd *e, ne;
		uint64_t gen;
		bool cached, bad;
		int rc;

		lock_rw_rdlock(&cs->fd_lock);
		e = rfd_find(cs, id);
		if (e && !e->bad && !(e->no_ra && read_ahead_safe(cs, id))) {
			*out = *e;
			return 0;
		}
		/* e points into cs->rfds, which an insert may move (realloc) or
		 * shift once the lock is let go: keep what it said, not e */
		cached = e != NULL;
		bad = e && e->bad;
		gen = cs->rfd_gen;
		lock_rw_unlock(&cs->fd_lock);
		test_point(cs, CHUNK_TEST_RFD_UNLOCKED, id, 0);
		if (cached && !bad) {
			rfd_read_ahead(cs, id);
			continue;
		}
		if (cached)
			return -EIO;

		rc = chunk_open_ro(cs, id, &ne);
		if (rc < 0)
			return rc;

		lock_rw_wrlock(&cs->fd_lock);
		if (cs->rfd_gen == gen && !rfd_find(cs, id))
			rc = rfd_insert(cs, &ne);
		else
			rc = -EAGAIN;           /* lost a race: look again */
		lock_rw_unlock(&cs->fd_lock);
		if (rc < 0) {
			if (ne.fd >= 0)
				close(ne.fd);
			if (ne.sfd >= 0)
				close(ne.sfd);
			if (ne.dfd >= 0)
				close(ne.dfd);
			free(ne.ents);
		}
		if (rc < 0 && rc != -EAGAIN)
			return rc;
	}
}

/* Forget the cached fds of chunk id: its sidecar was just created, and the
 * next read must see it. */
static void rfd_forget(struct chunk_store *cs, uint64_t id)
{
	size_t i;

	lock_rw_wrlock(&cs->fd_lock);
	i = rfd_lower_bound(cs, id);
	if (i < cs->nrfds && cs->rfds[i].id == id)
		rfd_delete(cs, i);
	cs->rfd_gen++;
	lock_rw_unlock(&cs->fd_lock);
}

/* --- open / close ---------------------------------------------------------- */

static pthread_once_t chunk_nofile_once = PTHREAD_ONCE_INIT;

/* A big store has thousands of chunk files and the read cache keeps them
 * open.  Best effort: on failure the cache sizes itself to the old limit. */
static void chunk_nofile_raise(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Half the fd limit: the rest is for writers, FUSE, SQLite and the caller. */
static size_t chunk_rfd_open_max(void)
{
	struct rlimit rl;
	rlim_t max = RFD_OPEN_MAX;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur / 2 < max)
		max = rl.rlim_cur / 2;
	return max < RFD_OPEN_MIN ? RFD_OPEN_MIN : (size_t)max;
}

int chunk_store_open(const char *dir, uint32_t block_size, uint64_t min_next_id,
		     struct chunk_store **out)
{
	struct chunk_store *cs;
	uint64_t *ids = NULL;
	size_t nids = 0;
	int rc;

	*out = NULL;
	if (!chunk_block_size_valid(block_size))
		return -EINVAL;
	pthread_once(&chunk_nofile_once, chunk_nofile_raise);

	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return -errno;
	cs = calloc(1, sizeof(*cs));
	if (!cs)
		return -ENOMEM;
	cs->block_size = block_size;
	cs->nslots = CHUNK_NSLOTS(block_size);
	cs->data_off = CHUNK_DATA_OFF(block_size);
	cs->rfd_open_max = chunk_rfd_open_max();
	cs->spare_dirfd = -1;
	for (int op = 0; op < CHUNK_FAULT_NOPS; op++) {
		atomic_init(&cs->fault[op].err, 0);
		atomic_init(&cs->fault[op].left, 0);
	}

	cs->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cs->dirfd < 0) {
		rc = -errno;
		goto fail_free;
	}
	rc = chunk_dir_list(cs->dirfd, &ids, &nids);
	if (rc)
		goto fail_close;
	cs->next_id = min_next_id ? min_next_id : 1;
	/* If the newest id is UINT64_MAX this wraps to 0, and the first append
	 * fails with -EOVERFLOW rather than reuse an id. */
	if (nids > 0 && ids[nids - 1] >= cs->next_id)
		cs->next_id = ids[nids - 1] + 1;
	cs->first_own_id = cs->next_id ? cs->next_id : UINT64_MAX;
	atomic_store(&cs->sealed_below, cs->next_id);
	free(ids);

	lock_mutex_init(&cs->sync_mu, LOCK_CHUNK_SYNC, "chunk.sync_mu");
	lock_mutex_init(&cs->mu, LOCK_CHUNK, "chunk.mu");
	/* glibc's default lets a steady stream of readers starve chunk_remove()
	 * and first opens; prefer the writer. */
	lock_rw_init(&cs->fd_lock, LOCK_CHUNK_FD, "chunk.fd_lock", true);
	lock_mutex_init(&cs->side_mu, LOCK_CHUNK_SIDE, "chunk.side_mu");
	lock_mutex_init(&cs->wb_mu, LOCK_CHUNK_WB, "chunk.wb_mu");
	pthread_cond_init(&cs->wb_cv, NULL);

	*out = cs;
	return 0;

fail_close:
	close(cs->dirfd);
fail_free:
	free(cs);
	return rc;
}

/*
 * The active chunk is never appended to again once the store closes, and a
 * chunk made from a spare is as long as the spare was: cut the slots it
 * never handed out, so that its tail does not stay on the host as data
 * nobody wrote (a kept spare's old bytes, or a spare's zeros).  No row
 * points past nused; a crash that loses the cut leaves the tail as it was.
 */
static void trim_active(struct chunk_store *cs)
{
	off_t want = (off_t)cs->data_off + (off_t)cs->active->nused * cs->block_size;
	struct stat st;

	if (fstat(cs->active->fd, &st) == 0 && st.st_size > want &&
	    ftruncate(cs->active->fd, want) != 0)
		vlog_at(LOG_WARNING, &(struct log_where){ .chunk = cs->active->id, .has_chunk = true },
			"chunk %016" PRIx64 ": cannot cut its unused tail: %s", cs->active->id,
			strerror(errno));
}

void chunk_store_close(struct chunk_store *cs)
{
	if (!cs)
		return;
	wb_stop(cs);
	if (cs->active && !atomic_load(&cs->poisoned))
		trim_active(cs);
	while (cs->writers) {
		struct chunk_w *w = cs->writers;

		assert(w->refs == 0);   /* no call may run during close */
		cs->writers = w->next;
		chunk_w_free(w);
	}
	for (size_t i = 0; i < cs->nrfds; i++) {
		if (cs->rfds[i].fd >= 0)
			close(cs->rfds[i].fd);
		if (cs->rfds[i].sfd >= 0)
			close(cs->rfds[i].sfd);
		if (cs->rfds[i].dfd >= 0)
			close(cs->rfds[i].dfd);
		ent_pages_free(cs, cs->rfds[i].ents);
	}
	free(cs->rfds);
	for (size_t i = 0; i < cs->nsides; i++)
		if (cs->sides[i].fd >= 0)
			close(cs->sides[i].fd);
	free(cs->sides);
	if (cs->spare_dirfd >= 0)
		close(cs->spare_dirfd);
	free(cs->spares);
	close(cs->dirfd);
	pthread_cond_destroy(&cs->wb_cv);
	lock_mutex_destroy(&cs->wb_mu);
	lock_mutex_destroy(&cs->side_mu);
	lock_rw_destroy(&cs->fd_lock);
	lock_mutex_destroy(&cs->mu);
	lock_mutex_destroy(&cs->sync_mu);
	free(cs);
}

void chunk_entry_cache_limit(struct chunk_store *cs, size_t bytes)
{
	cs->ent_max = bytes;
}

size_t chunk_entry_cache_bytes(struct chunk_store *cs)
{
	return atomic_load(&cs->ent_bytes);
}

/* --- spares ---------------------------------------------------------------- */

/* Parse "%016llx.spare"; like chunk_name_parse, only the exact form counts. */
static bool spare_name_parse(const char *name, uint64_t *seq)
{
	char buf[CHUNK_NAME_LEN + 1];
	size_t len = strlen(name);

	if (len != CHUNK_NAME_LEN || strcmp(name + CHUNK_NAME_HEX, SPARE_NAME_SUFFIX) != 0)
		return false;
	memcpy(buf, name, CHUNK_NAME_HEX);
	memcpy(buf + CHUNK_NAME_HEX, CHUNK_NAME_SUFFIX, sizeof(CHUNK_NAME_SUFFIX));
	return chunk_name_parse(buf, seq);
}

/* Adopt the spares an earlier daemon left, up to spare_max; delete the
 * rest.  Assumes nothing else uses cs yet. */
static int spare_adopt(struct chunk_store *cs)
{
	struct dirent *de;
	DIR *d;
	int rc;

	rc = dir_stream(cs->spare_dirfd, &d);
	if (rc)
		return rc;
	while ((errno = 0, de = readdir(d))) {
		struct stat st;
		uint64_t seq;

		if (!spare_name_parse(de->d_name, &seq) ||
		    fstatat(cs->spare_dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (seq >= cs->spare_seq)
			cs->spare_seq = seq + 1;
		if (cs->nspares == cs->spare_max || st.st_size <= (off_t)CHUNK_HEADER_BYTES) {
			unlinkat(cs->spare_dirfd, de->d_name, 0);
			continue;
		}
		cs->spares[cs->nspares++] = (struct chunk_spare){ seq, (uint64_t)st.st_size };
		cs->spare_bytes += (uint64_t)st.st_size;
	}
	if (errno)
		rc = -errno;
	closedir(d);
	return rc;
}

int chunk_spares_enable(struct chunk_store *cs, const char *dir, uint32_t max)
{
	int rc;

	if (cs->spare_dirfd >= 0)
		return -EBUSY;
	if (max == 0) {
		/* keep none, but delete what an earlier daemon kept */
		cs->spare_dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (cs->spare_dirfd < 0)
			return errno == ENOENT ? 0 : -errno;
		rc = spare_adopt(cs);
		close(cs->spare_dirfd);
		cs->spare_dirfd = -1;
		return rc;
	}
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return -errno;
	cs->spares = calloc(max, sizeof(*cs->spares));
	if (!cs->spares)
		return -ENOMEM;
	cs->spare_dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cs->spare_dirfd < 0) {
		rc = -errno;
		goto fail;
	}
	cs->spare_max = max;
	cs->spare_limit = max;
	cs->spare_seq = 1;
	rc = spare_adopt(cs);
	if (rc == 0)
		return 0;
	close(cs->spare_dirfd);
	cs->spare_dirfd = -1;
fail:
	free(cs->spares);
	cs->spares = NULL;
	cs->nspares = 0;
	cs->spare_bytes = 0;
	return rc;
}

/* *field, read under mu. */
static uint64_t mu_get(struct chunk_store *cs, const uint64_t *field)
{
	uint64_t v;

	lock_mutex_lock(&cs->mu);
	v = *field;
	lock_mutex_unlock(&cs->mu);
	return v;
}

uint64_t chunk_spare_bytes(struct chunk_store *cs)
{
	return mu_get(cs, &cs->spare_bytes);
}

uint64_t chunk_append_count(struct chunk_store *cs)
{
	return mu_get(cs, &cs->nappends);
}

uint64_t chunk_spares_prepared(struct chunk_store *cs)
{
	return mu_get(cs, &cs->spares_prepared);
}

/*
 * Spares written ahead.  An fdatasync after appending to a new file also
 * commits the host file system's journal (the file's new size and blocks);
 * after overwriting blocks the file already has, it does not: on ext4 here
 * 4 KiB writes + fdatasync ran 1.5-2x as fast into a file written before
 * as appended to a new one, and fallocate() alone did not help (its
 * unwritten extents are converted at the sync).  A store whose guests sync
 * after small writes pays that commit at every sync when no removed chunk
 * file is at hand, as when snapshots hold what it overwrites.  So the
 * background thread, when it sees such writes (src/ns/bg.c), has the next
 * chunk file written ahead: zeros, synced, kept as a spare, which
 * chunk_w_create_locked takes like any other.  Its zeros are never read: a
 * zero entry is not a DATA, RELOC or LOG entry.  At most one per active
 * chunk, so that a spare given back when writes pause is not written again
 * and again.  For an active chunk made from a spare, once that is half
 * used: the spare waits for it to fill.  For one appended to a new file
 * (the first after an open or a pause, or one that filled before the last
 * spare was ready), at once, and the active chunk is then left for it
 * (switch_to_spare_locked): each of its syncs pays the commit, however
 * many slots it has left.  Spares' bounds hold: one is written only under
 * the limit, so only while writes come in, and it is given back with the
 * others when they stop.
 */
static bool spare_wanted_locked(struct chunk_store *cs)
{
	const struct chunk_w *a = cs->active;

	assert(lock_held(&cs->mu));
	return cs->spare_dirfd >= 0 && !atomic_load(&cs->poisoned) &&
	       cs->nspares + cs->spare_pending == 0 && cs->spare_limit > 0 &&
	       a && cs->prepared_for != a->id && (!a->from_spare || a->nused >= cs->nslots / 2);
}

/*
 * A spare waits and the active chunk was appended to a new file (the one
 * the spare was written for, or one that filled meanwhile): make the next
 * chunk from the spare now.  The old chunk is left as a full one is:
 * appends that hold slots in it finish, its file is as long as what they
 * wrote, and the log's next batch starts in the new chunk.  A failure
 * leaves the old one active.
 */
static void switch_to_spare_locked(struct chunk_store *cs)
{
	uint64_t id;
	int rc;

	assert(lock_held(&cs->mu));
	/* a small spare would be left again at the next look */
	if (!cs->active || cs->active->from_spare || cs->nspares == 0 ||
	    !spare_whole(cs, cs->spares[cs->nspares - 1].bytes) || atomic_load(&cs->poisoned))
		return;
	id = cs->active->id;
	rc = chunk_w_create_locked(cs);
	if (rc)
		vlog(LOG_WARNING, "chunk %016" PRIx64 ": cannot leave it for a spare: %s", id,
		     strerror(-rc));
}

void chunk_spare_switch(struct chunk_store *cs)
{
	lock_mutex_lock(&cs->mu);
	switch_to_spare_locked(cs);
	lock_mutex_unlock(&cs->mu);
}

bool chunk_spare_wanted(struct chunk_store *cs)
{
	bool want;

	lock_mutex_lock(&cs->mu);
	want = spare_wanted_locked(cs);
	lock_mutex_unlock(&cs->mu);
	return want;
}

int chunk_spare_prepare(struct chunk_store *cs, bool (*stop)(void *ctx), void *ctx)
{
	uint64_t size = CHUNK_FILE_MAX_BYTES(cs->block_size);
	char name[CHUNK_NAME_LEN + 1];
	struct chunk_spare sp;
	bool kept = false;
	int fd, rc = 0;

	lock_mutex_lock(&cs->mu);
	if (!spare_wanted_locked(cs)) {
		lock_mutex_unlock(&cs->mu);
		return 0;
	}
	cs->spare_pending++;            /* holds the place, as a removal does */
	cs->prepared_for = cs->active->id;
	sp = (struct chunk_spare){ .seq = cs->spare_seq++, .bytes = size };
	lock_mutex_unlock(&cs->mu);

	spare_name(name, sp.seq);
	fd = openat(cs->spare_dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		rc = -errno;
	for (uint64_t off = 0; !rc && off < size; off += sizeof(zeros)) {
		size_t n = size - off < sizeof(zeros) ? size - off : sizeof(zeros);

		if ((stop && stop(ctx)) || atomic_load(&cs->poisoned))
			rc = -ECANCELED;
		else
			rc = pwrite_full(fd, zeros, n, (off_t)off);
		/* written back a MiB at a time, not all at the fdatasync: a
		 * guest's sync that commits the journal meanwhile would wait
		 * for all of it (ordered data; max fdatasync latency 26-32 ms
		 * against 12 ms measured).  Best effort: the fdatasync below
		 * is what counts. */
		if (!rc)
			(void)sync_file_range(fd, (off_t)off, (off_t)n, SYNC_FILE_RANGE_WAIT_BEFORE |
					      SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
	}
	if (!rc && fdatasync(fd) != 0)
		rc = -errno;
	if (fd >= 0)
		close(fd);

	lock_mutex_lock(&cs->mu);
	cs->spare_pending--;
	/* chunk_spares_limit() may have lowered the limit meanwhile */
	if (!rc && cs->nspares < cs->spare_limit) {
		cs->spares[cs->nspares++] = sp;
		cs->spare_bytes += sp.bytes;
		cs->spares_prepared++;
		kept = true;
		switch_to_spare_locked(cs);
	}
	lock_mutex_unlock(&cs->mu);
	if (!kept && fd >= 0 && unlinkat(cs->spare_dirfd, name, 0) != 0 && errno != ENOENT)
		vlog(LOG_WARNING, "spare chunk file %s: cannot delete it: %s", name, strerror(errno));
	return rc == -ECANCELED ? 0 : rc ? rc : kept;
}

/*
 * The oldest spares go first: the newest are the ones chunk_w_create_locked
 * takes next, and the likeliest to still have their pages cached.  They
 * leave the stack under mu and are unlinked without it: once off the stack
 * no one else can take them, and their names are never given again.
 */
int chunk_spares_limit(struct chunk_store *cs, uint32_t limit)
{
	char sname[CHUNK_NAME_LEN + 1];
	struct chunk_spare *drop = NULL;
	uint32_t ndrop = 0;
	int rc = 0;

	if (cs->spare_dirfd < 0)
		return 0;
	if (limit > cs->spare_max)
		limit = cs->spare_max;
	lock_mutex_lock(&cs->mu);
	cs->spare_limit = limit;
	if (cs->nspares > limit) {
		ndrop = cs->nspares - limit;
		drop = malloc(ndrop * sizeof(*drop));
		if (!drop) {
			ndrop = 0;
			rc = -ENOMEM;
		} else {
			memcpy(drop, cs->spares, ndrop * sizeof(*drop));
			memmove(cs->spares, cs->spares + ndrop, limit * sizeof(*drop));
			cs->nspares = limit;
			for (uint32_t i = 0; i < ndrop; i++)
				cs->spare_bytes -= drop[i].bytes;
		}
	}
	lock_mutex_unlock(&cs->mu);

	for (uint32_t i = 0; i < ndrop; i++) {
		spare_name(sname, drop[i].seq);
		if (unlinkat(cs->spare_dirfd, sname, 0) != 0 && errno != ENOENT && !rc)
			rc = -errno;
	}
	free(drop);
	return rc;
}

/* --- append / read / sync -------------------------------------------------- */

/*
 * The payload of a run and its slot entries are two pwrites into the page
 * cache of one file; chunk_sync()'s fdatasync of that file makes both
 * durable, in no particular order, which is all a reader needs: it accepts
 * a block only if payload and entry agree (the seed has chunk, slot and
 * lblock), so a crash that keeps one and loses the other reads EIO, never
 * wrong bytes, and the index never points at either before that sync.
 */
static int append(struct chunk_store *cs, const void *buf, uint32_t nblocks,
		  enum chunk_kind kind, struct chunk_loc *locs, bool may_behind);

int chunk_append(struct chunk_store *cs, const void *buf, uint32_t nblocks,
		 enum chunk_kind kind, struct chunk_loc *locs)
{
	return append(cs, buf, nblocks, kind, locs, true);
}

int chunk_append_now(struct chunk_store *cs, const void *buf, uint32_t nblocks,
		     enum chunk_kind kind, struct chunk_loc *locs)
{
	return append(cs, buf, nblocks, kind, locs, false);
}

static int append(struct chunk_store *cs, const void *buf, uint32_t nblocks,
		  enum chunk_kind kind, struct chunk_loc *locs, bool may_behind)
{
	const uint8_t *p = buf;
	const size_t bs = cs->block_size;
	struct chunk_run stack_runs[4], *runs = stack_runs;
	/* One run for the rest of the active chunk, then one per new chunk. */
	size_t max_runs = 2 + (size_t)nblocks / cs->nslots, nruns = 0;
	uint8_t stack_ents[READ_ENTS_STACK * CHUNK_ENTRY_BYTES], *ents = stack_ents;
	uint32_t done = 0;
	int rc = 0;

	if (nblocks == 0)
		return 0;
	if (kind != CHUNK_KIND_DATA && kind != CHUNK_KIND_RELOC)
		return -EINVAL;
	for (uint32_t i = 0; i < nblocks; i++)
		if (locs[i].lblock > CHUNK_LBLOCK_MAX)
			return -EINVAL;
	if (atomic_load(&cs->poisoned))
		return -EIO;
	test_point(cs, CHUNK_TEST_APPEND, 0, nblocks);
	if (max_runs > ARRAY_SIZE(stack_runs)) {
		runs = calloc(max_runs, sizeof(*runs));
		if (!runs)
			return -ENOMEM;
	}
	if (nblocks > READ_ENTS_STACK) {
		ents = malloc((size_t)nblocks * CHUNK_ENTRY_BYTES);
		if (!ents) {
			if (runs != stack_runs)
				free(runs);
			return -ENOMEM;
		}
	}

	/* Reserve every slot in one go, so that the run continues at slot 0 of
	 * the chunk created for it and not behind another thread's blocks. */
	lock_mutex_lock(&cs->mu);
	cs->nappends++;
	while (done < nblocks) {
		struct chunk_w *w = cs->active;
		uint32_t n;

		if (!w || w->nused == cs->nslots) {
			rc = chunk_w_create_locked(cs);
			if (rc)
				break;
			w = cs->active;
		}
		n = cs->nslots - w->nused;
		if (n > nblocks - done)
			n = nblocks - done;
		assert(nruns < max_runs);
		runs[nruns++] = (struct chunk_run){
			.w = w, .slot = w->nused, .first = done, .nblocks = n,
		};
		w->nused += n;
		w->refs++;
		done += n;
	}
	lock_mutex_unlock(&cs->mu);

	if (rc == 0)
		rc = chunk_fault_hit(cs, CHUNK_FAULT_APPEND);
	for (size_t r = 0; r < nruns && rc == 0; r++) {
		const struct chunk_run *run = &runs[r];

		/* Checksums without the lock (the CPU-heavy part), but after
		 * the reservation: the seed has the chunk and the slot. */
		for (uint32_t i = 0; i < run->nblocks; i++) {
			struct chunk_loc *l = &locs[run->first + i];
			uint64_t seed = cksum_slot_seed(run->w->id, run->slot + i, l->lblock);

			l->chunk_id = run->w->id;
			l->slot = run->slot + i;
			l->cksum = cksum_seeded(p + (size_t)(run->first + i) * bs, bs, seed);
			entry_encode(ents + (size_t)i * CHUNK_ENTRY_BYTES, l->cksum, l->lblock,
				     (uint8_t)kind);
		}
		if (may_behind && wb_takes(cs, run->w, (size_t)run->nblocks * bs, kind)) {
			wb_queue(cs, run, p + (size_t)run->first * bs, ents);
			continue;
		}
		rc = write_payload(cs, run->w, p + run->first * bs, run->nblocks * bs,
				   slot_off(cs, CHUNK_VERSION, run->slot));
		if (rc == 0)
			rc = pwrite_full(run->w->fd, ents, (size_t)run->nblocks * CHUNK_ENTRY_BYTES,
					 entry_off(run->slot));
	}

	lock_mutex_lock(&cs->mu);
	for (size_t r = 0; r < nruns; r++) {
		/* A failed append's blocks are referenced by nothing: no need
		 * to sync them. */
		if (rc == 0)
			runs[r].w->dirty = true;
		chunk_w_put_locked(cs, runs[r].w);
	}
	lock_mutex_unlock(&cs->mu);

	if (rc) {
		for (uint32_t i = 0; i < nblocks; i++) {
			locs[i].chunk_id = 0;
			locs[i].slot = 0;
			locs[i].cksum = 0;
		}
	}
	if (runs != stack_runs)
		free(runs);
	if (ents != stack_ents)
		free(ents);
	return rc;
}

/* --- the log ----------------------------------------------------------------- */

/* The entry of a LOG slot: its checksum field is the seeded hash of nothing,
 * so an entry left in a spare by another chunk does not verify. */
static uint64_t log_entry_cksum(uint64_t chunk_id, uint32_t slot)
{
	static const uint8_t none[1];

	return cksum_seeded(none, 0, cksum_slot_seed(chunk_id, slot, 0));
}

int chunk_log_append(struct chunk_store *cs, void *buf, size_t len,
		     void (*seal)(void *ctx, void *buf, uint64_t chunk_id), void *ctx,
		     uint64_t *chunk_id)
{
	const size_t bs = cs->block_size;
	uint32_t k = 0, slot = 0, fill = 0;
	struct chunk_w *w;
	uint8_t *ents = NULL, *pad = NULL;
	int rc = 0;

	if (len == 0 || len > (size_t)cs->nslots * bs)
		return -E2BIG;
	if (atomic_load(&cs->poisoned))
		return -EIO;
	lock_mutex_lock(&cs->mu);
	w = cs->active;
	if (w && cs->log_chunk == w->id && cs->log_fill + len <= bs) {
		slot = cs->log_slot;
		fill = cs->log_fill;
		cs->log_fill += (uint32_t)len;
	} else {
		k = (uint32_t)((len + bs - 1) / bs);
		if (!w || w->nused + k > cs->nslots) {
			rc = chunk_w_create_locked(cs);
			w = cs->active;
		}
		if (!rc) {
			slot = w->nused;
			w->nused += k;
			cs->log_chunk = w->id;
			cs->log_slot = slot + k - 1;
			cs->log_fill = (uint32_t)(len - (size_t)(k - 1) * bs);
		}
	}
	if (!rc)
		w->refs++;
	lock_mutex_unlock(&cs->mu);
	if (rc)
		return rc;

	seal(ctx, buf, w->id);
	rc = chunk_fault_hit(cs, CHUNK_FAULT_LOG);
	if (!rc && k) {
		size_t padlen = (size_t)k * bs - len;

		ents = calloc(k, CHUNK_ENTRY_BYTES);
		pad = calloc(1, padlen ? padlen : 1);
		rc = ents && pad ? 0 : -ENOMEM;
		for (uint32_t i = 0; i < k && !rc; i++)
			entry_encode(ents + (size_t)i * CHUNK_ENTRY_BYTES,
				     log_entry_cksum(w->id, slot + i), 0, CHUNK_KIND_LOG);
		if (!rc && padlen)
			rc = pwrite_full(w->fd, pad, padlen,
					 slot_off(cs, CHUNK_VERSION, slot) + (off_t)len);
		if (!rc)
			rc = pwrite_full(w->fd, ents, (size_t)k * CHUNK_ENTRY_BYTES, entry_off(slot));
	}
	if (!rc)
		rc = pwrite_full(w->fd, buf, len, slot_off(cs, CHUNK_VERSION, slot) + fill);

	lock_mutex_lock(&cs->mu);
	if (rc == 0)
		w->dirty = true;
	else if (cs->log_chunk == w->id)
		cs->log_chunk = 0;      /* the next batch starts new slots */
	if (!rc)
		*chunk_id = w->id;      /* not after the put: a sync may then free w */
	chunk_w_put_locked(cs, w);
	lock_mutex_unlock(&cs->mu);
	free(ents);
	free(pad);
	return rc;
}

int chunk_log_read(struct chunk_store *cs, uint64_t chunk_id, uint8_t **out, size_t *len)
{
	const size_t bs = cs->block_size;
	struct chunk_entry *ents;
	uint8_t *buf = NULL;
	size_t n = 0, nlog = 0;
	struct chunk_rfd e;
	int rc;

	*out = NULL;
	*len = 0;
	ents = calloc(cs->nslots, sizeof(*ents));
	if (!ents)
		return -ENOMEM;
	rc = chunk_entries_read(cs, chunk_id, 0, cs->nslots, ents);
	if (rc == -ENODATA) {
		rc = 0;                 /* version 1: no log */
		goto out;
	}
	for (uint32_t i = 0; i < cs->nslots && !rc; i++)
		nlog += ents[i].kind == CHUNK_KIND_LOG && ents[i].cksum == log_entry_cksum(chunk_id, i);
	if (rc || nlog == 0)
		goto out;
	buf = malloc(nlog * bs);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	rc = chunk_rfd_acquire(cs, chunk_id, &e);
	if (rc)
		goto out;
	for (uint32_t i = 0; i < cs->nslots && !rc; i++) {
		ssize_t got;

		if (ents[i].kind != CHUNK_KIND_LOG || ents[i].cksum != log_entry_cksum(chunk_id, i))
			continue;
		got = pread_full(e.fd, buf + n * bs, bs, slot_off(cs, e.version, i));
		if (got < 0)
			rc = -EIO;
		else
			memset(buf + n * bs + got, 0, bs - (size_t)got);
		n++;
	}
	lock_rw_unlock(&cs->fd_lock);
out:
	free(ents);
	if (rc) {
		free(buf);
		return rc;
	}
	*out = buf;
	*len = n * bs;
	return 0;
}

/* Read the entries of slots [slot, slot + n) of chunk e into ents: from
 * its slot table (version 2) or its sidecar.  Entries past the end of the
 * file read as zeros (kind 0).  0, -ENODATA (version 1 without a sidecar),
 * -EIO.  Assumes fd_lock is held (shared) and e came from it. */
static int entries_pread(struct chunk_store *cs, const struct chunk_rfd *e, uint32_t slot,
			 uint32_t n, uint8_t *ents)
{
	size_t len = (size_t)n * CHUNK_ENTRY_BYTES;
	int fd = e->version == CHUNK_VERSION_1 ? e->sfd : e->fd;
	ssize_t got;

	assert(lock_held(&cs->fd_lock));
	if (fd < 0)
		return -ENODATA;
	got = pread_full(fd, ents, len, entry_off(slot));
	if (got < 0)
		return -EIO;
	memset(ents + got, 0, len - (size_t)got);
	return 0;
}

/* Start loading the cached entry of slot, if there is one, into the CPU's
 * cache.  A random read's entry is a cache miss (~0.2 us of the daemon's
 * ~9 us per 4 KiB read here, docs/performance.md); asked for before the
 * payload's pread, it arrives while the kernel copies the data.  Assumes
 * fd_lock (e is its copy). */
static void ents_prefetch(const struct chunk_rfd *e, uint32_t slot)
{
	const uint8_t *pg;

	if (!e->ents)
		return;
	pg = atomic_load_explicit(&e->ents->pg[slot / ENT_PAGE_SLOTS], memory_order_acquire);
	if (pg)
		__builtin_prefetch(pg + (size_t)(slot % ENT_PAGE_SLOTS) * CHUNK_ENTRY_BYTES);
}

/* Entries of slots [slot, slot + n) from the entry cache, if every table
 * page they lie in is there.  Assumes fd_lock (e is its copy). */
static bool ents_cached(const struct chunk_rfd *e, uint32_t slot, uint32_t n, uint8_t *ents)
{
	if (!e->ents)
		return false;
	for (uint32_t i = 0; i < n;) {
		uint32_t s = slot + i, at = s % ENT_PAGE_SLOTS, k = ENT_PAGE_SLOTS - at;
		const uint8_t *pg = atomic_load_explicit(&e->ents->pg[s / ENT_PAGE_SLOTS],
							 memory_order_acquire);

		if (!pg)
			return false;
		if (k > n - i)
			k = n - i;
		memcpy(ents + (size_t)i * CHUNK_ENTRY_BYTES, pg + (size_t)at * CHUNK_ENTRY_BYTES,
		       (size_t)k * CHUNK_ENTRY_BYTES);
		i += k;
	}
	return true;
}

/* Keep table page pgno of e (its bytes at pg) if every entry of it is
 * written and the store's budget allows.  Assumes fd_lock. */
static void ent_page_keep(struct chunk_store *cs, const struct chunk_rfd *e, uint32_t pgno,
			  const uint8_t *pg)
{
	size_t cur = atomic_load(&cs->ent_bytes);
	uint8_t *copy, *none = NULL;

	for (uint32_t i = 0; i < ENT_PAGE_SLOTS; i++)
		if (pg[(size_t)i * CHUNK_ENTRY_BYTES + ENT_OFF_KIND] == CHUNK_KIND_NONE)
			return;         /* a slot not written yet (or never): may change */
	do {
		if (cur + 4096 > cs->ent_max)
			return;
	} while (!atomic_compare_exchange_weak(&cs->ent_bytes, &cur, cur + 4096));
	copy = malloc(4096);
	if (copy) {
		memcpy(copy, pg, 4096);
		if (atomic_compare_exchange_strong(&e->ents->pg[pgno], &none, copy))
			return;
		free(copy);     /* another reader kept it first */
	}
	atomic_fetch_sub(&cs->ent_bytes, 4096);
}

/* Entries of slots [slot, slot + n) of a version-2 chunk with an entry
 * cache, read from the file a whole table page at a time (as cheap as the
 * entries alone), and the whole pages kept.  Assumes fd_lock. */
static int entries_fill(struct chunk_store *cs, const struct chunk_rfd *e, uint32_t slot,
			uint32_t n, uint8_t *ents)
{
	uint32_t p0 = slot / ENT_PAGE_SLOTS, p1 = (slot + n - 1) / ENT_PAGE_SLOTS;
	size_t len = (size_t)(p1 - p0 + 1) * 4096;
	uint8_t stack[2 * 4096], *buf = len <= sizeof(stack) ? stack : malloc(len);
	ssize_t got;

	if (!buf)
		return entries_pread(cs, e, slot, n, ents);
	got = pread_full(e->fd, buf, len, (off_t)TABLE_OFF + (off_t)p0 * 4096);
	if (got < 0) {
		if (buf != stack)
			free(buf);
		return -EIO;
	}
	memset(buf + got, 0, len - (size_t)got);
	memcpy(ents, buf + (size_t)(slot % ENT_PAGE_SLOTS) * CHUNK_ENTRY_BYTES,
	       (size_t)n * CHUNK_ENTRY_BYTES);
	for (uint32_t p = p0; p <= p1 && p < e->ents->n; p++)
		ent_page_keep(cs, e, p, buf + (size_t)(p - p0) * 4096);
	if (buf != stack)
		free(buf);
	return 0;
}

/* Why block "blk" does not verify against its entry (ent NULL: a
 * version-1 chunk without a sidecar, which nothing can verify), or 0. */
static enum chunk_bad_why block_check(struct chunk_store *cs, unsigned version, const uint8_t *blk,
				      const uint8_t *ent, const struct chunk_loc *loc,
				      uint64_t *ent_lblock)
{
	struct chunk_entry e;
	uint64_t sum;

	if (!ent)
		return CHUNK_BAD_NO_SIDECAR;
	entry_decode(ent, &e);
	*ent_lblock = e.lblock;
	if (e.kind == CHUNK_KIND_NONE)
		return CHUNK_BAD_UNWRITTEN;
	if (e.kind != CHUNK_KIND_DATA && e.kind != CHUNK_KIND_RELOC)
		return CHUNK_BAD_KIND;
	if (e.lblock != loc->lblock)
		return CHUNK_BAD_LBLOCK;
	if (version == CHUNK_VERSION_1)
		sum = cksum_buf(blk, cs->block_size);
	else
		sum = cksum_seeded(blk, cs->block_size,
				   cksum_slot_seed(loc->chunk_id, loc->slot, loc->lblock));
	return sum == e.cksum ? 0 : CHUNK_BAD_CKSUM;
}

/* Check nblocks blocks at p against their entries (NULL: none to check
 * against): 0, or -EBADMSG with *bad (if not NULL) naming the first bad one. */
static int blocks_check(struct chunk_store *cs, unsigned version, const uint8_t *p,
			const uint8_t *ents, const struct chunk_loc *locs, uint32_t nblocks,
			struct chunk_bad *bad)
{
	for (uint32_t i = 0; i < nblocks; i++) {
		uint64_t ent_lblock = 0;
		enum chunk_bad_why why = block_check(cs, version, p + (size_t)i * cs->block_size,
						     ents ? ents + (size_t)i * CHUNK_ENTRY_BYTES : NULL,
						     &locs[i], &ent_lblock);

		if (why) {
			if (bad)
				*bad = (struct chunk_bad){ .index = i, .why = why, .lblock = ent_lblock };
			return -EBADMSG;
		}
	}
	return 0;
}

/* The payload of a run; nowait: only from the page cache (-EAGAIN if not
 * all there).  The length read, or a negative errno. */
static ssize_t payload_pread(int fd, void *buf, size_t len, off_t off, bool nowait)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	ssize_t n;

	if (!nowait)
		return pread_full(fd, buf, len, off);
	do
		n = preadv2(fd, &iov, 1, off, RWF_NOWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EOPNOTSUPP ? -EAGAIN : -errno;
	return (size_t)n < len ? -EAGAIN : n;   /* a part only: the rest is not cached */
}

/* The payload of a run: directly (see "Direct reads") where the buffer,
 * length and offset allow, and the rest (a short read at the end of the
 * file) or all of it (a refusal) through the page cache. */
static ssize_t payload_read(struct chunk_store *cs, const struct chunk_rfd *e, void *buf,
			    size_t len, off_t off, bool nowait)
{
	ssize_t n = 0, m;

	if (e->dfd >= 0 && !nowait && !atomic_load(&cs->direct_reads_failed) &&
	    ((uintptr_t)buf | len | (uint64_t)off) % DIRECT_READ_ALIGN == 0) {
		int fault;

		do {
			fault = chunk_fault_hit(cs, CHUNK_FAULT_DIRECT_READ);
			errno = -fault;
			n = fault ? -1 : pread(e->dfd, buf, len, off);
		} while (n < 0 && errno == EINTR);
		if (n < 0 && errno != EINVAL)
			return -EIO;
		if (n < 0) {
			direct_refused(&cs->direct_reads_failed, e->id, "reading", EINVAL);
			n = 0;
		}
		if ((size_t)n == len)
			return n;
	}
	m = payload_pread(e->fd, (uint8_t *)buf + n, len - (size_t)n, off + n, nowait);
	return m < 0 ? m : n + m;
}

static int read_run(struct chunk_store *cs, const struct chunk_loc *locs, uint32_t nblocks,
		    void *buf, struct chunk_bad *bad, bool nowait);

int chunk_read(struct chunk_store *cs, const struct chunk_loc *locs, uint32_t nblocks,
	       void *buf, struct chunk_bad *bad)
{
	return read_run(cs, locs, nblocks, buf, bad, false);
}

int chunk_read_cached(struct chunk_store *cs, const struct chunk_loc *locs, uint32_t nblocks,
		      void *buf, struct chunk_bad *bad)
{
	return read_run(cs, locs, nblocks, buf, bad, true);
}

static int read_run(struct chunk_store *cs, const struct chunk_loc *locs, uint32_t nblocks,
		    void *buf, struct chunk_bad *bad, bool nowait)
{
	const size_t bs = cs->block_size;
	uint8_t stack_ents[READ_ENTS_STACK * CHUNK_ENTRY_BYTES], *ents = stack_ents;
	struct chunk_rfd e;
	uint64_t id;
	uint32_t slot;
	uint8_t *p = buf;
	bool have_ents, cached;
	ssize_t n;
	int rc;

	if (nblocks == 0)
		return 0;
	id = locs[0].chunk_id;
	slot = locs[0].slot;
	/* locs come from the index, so they are input: refuse, do not assert. */
	if (id == 0 || (uint64_t)slot + nblocks > cs->nslots)
		return -EINVAL;
	for (uint32_t i = 1; i < nblocks; i++)
		if (locs[i].chunk_id != id || locs[i].slot != slot + i)
			return -EINVAL;

	rc = chunk_fault_hit(cs, CHUNK_FAULT_READ);
	if (!rc)
		rc = wb_wait(cs, id, slot, nblocks, nowait);
	if (rc)
		return rc;
	if (nblocks > READ_ENTS_STACK) {
		ents = malloc((size_t)nblocks * CHUNK_ENTRY_BYTES);
		if (!ents)
			return -ENOMEM;
	}
	rc = chunk_rfd_acquire(cs, id, &e);
	if (rc)
		goto out;
	ents_prefetch(&e, slot);
	n = payload_read(cs, &e, p, nblocks * bs, slot_off(cs, e.version, slot), nowait);
	if (n == -EAGAIN) {
		lock_rw_unlock(&cs->fd_lock);
		rc = -EAGAIN;
		goto out;
	}
	cached = ents_cached(&e, slot, nblocks, ents);
	if (!cached)
		rc = e.ents ? entries_fill(cs, &e, slot, nblocks, ents)
			    : entries_pread(cs, &e, slot, nblocks, ents);
	lock_rw_unlock(&cs->fd_lock);
	have_ents = rc == 0;
	if (rc == -ENODATA)
		rc = 0;
	if (rc == 0 && (n < 0 || (size_t)n != nblocks * bs))
		rc = -EIO;
	if (rc)
		goto out;

	rc = blocks_check(cs, e.version, p, have_ents ? ents : NULL, locs, nblocks, bad);
	if (rc && cached) {
		/* judged by the entry cache's copy: judge by the file's (see
		 * "The entry cache") */
		rc = chunk_rfd_acquire(cs, id, &e);
		if (rc)
			goto out;
		rc = entries_pread(cs, &e, slot, nblocks, ents);
		lock_rw_unlock(&cs->fd_lock);
		if (!rc)
			rc = blocks_check(cs, e.version, p, ents, locs, nblocks, bad);
	}
out:
	if (ents != stack_ents)
		free(ents);
	return rc;
}

int chunk_entries_read(struct chunk_store *cs, uint64_t chunk_id, uint32_t first_slot,
		       uint32_t n, struct chunk_entry *out)
{
	uint8_t *ents;
	struct chunk_rfd e;
	struct stat st;
	uint64_t whole = 0;
	int rc;

	if (n == 0)
		return 0;
	if (chunk_id == 0 || (uint64_t)first_slot + n > cs->nslots)
		return -EINVAL;
	(void)wb_wait(cs, chunk_id, first_slot, n, false);
	ents = malloc((size_t)n * CHUNK_ENTRY_BYTES);
	if (!ents)
		return -ENOMEM;
	rc = chunk_rfd_acquire(cs, chunk_id, &e);
	if (rc)
		goto out;
	rc = entries_pread(cs, &e, first_slot, n, ents);
	if (!rc && fstat(e.fd, &st) != 0)
		rc = -EIO;
	lock_rw_unlock(&cs->fd_lock);
	if (rc)
		goto out;
	/* an entry of a slot the file does not hold is not a block: a spare's
	 * stale table, or a table written ahead of a torn payload */
	if (st.st_size > slot_off(cs, e.version, 0))
		whole = ((uint64_t)st.st_size - (uint64_t)slot_off(cs, e.version, 0)) / cs->block_size;
	for (uint32_t i = 0; i < n; i++) {
		entry_decode(ents + (size_t)i * CHUNK_ENTRY_BYTES, &out[i]);
		if (first_slot + i >= whole)
			out[i] = (struct chunk_entry){ 0 };
	}
out:
	free(ents);
	return rc;
}

void chunk_prefetch(struct chunk_store *cs, const struct chunk_loc *loc, uint32_t nblocks)
{
	struct chunk_rfd e;

	if (nblocks == 0 || loc->chunk_id == 0 || (uint64_t)loc->slot + nblocks > cs->nslots ||
	    wb_wait(cs, loc->chunk_id, loc->slot, nblocks, true) != 0 ||
	    chunk_rfd_acquire(cs, loc->chunk_id, &e) != 0)
		return;                 /* only a hint: chunk_read reports errors */
	(void)posix_fadvise(e.fd, slot_off(cs, e.version, loc->slot),
			    (off_t)nblocks * cs->block_size, POSIX_FADV_WILLNEED);
	lock_rw_unlock(&cs->fd_lock);
}

struct chunk_sync_item {
	struct chunk_w *w;
	bool gone;                      /* the file was deleted under us */
};

/*
 * Snapshot and clear the dirty set under mu and sync without it.  A failed
 * fdatasync or fsync poisons the store (see "A failed sync" at the top):
 * this call returns what failed, every later one -EIO.  A chunk file
 * deleted under us fails this call with -EIO, and only this one.  Every
 * failure is logged here, once.
 */
int chunk_sync(struct chunk_store *cs)
{
	struct chunk_sync_item *items = NULL;
	size_t n = 0, ndirty = 0;
	struct chunk_w *w;
	bool dir, gone = false;
	int rc, failed;

	lock_mutex_lock(&cs->sync_mu);
	wb_drain(cs);   /* before the dirty marks: the writer sets them */
	if (atomic_load(&cs->poisoned)) {
		rc = -EIO;
		goto out;
	}

	lock_mutex_lock(&cs->mu);
	for (w = cs->writers; w; w = w->next)
		ndirty += w->dirty;
	if (ndirty > 0) {
		items = calloc(ndirty, sizeof(*items));
		if (!items) {
			lock_mutex_unlock(&cs->mu);
			vlog(LOG_ERR, "syncing chunk files: out of memory");
			rc = -ENOMEM;
			goto out;
		}
	}
	for (w = cs->writers; w; w = w->next) {
		if (!w->dirty)
			continue;
		w->dirty = false;
		w->refs++;
		items[n++].w = w;
	}
	dir = cs->dir_dirty;
	cs->dir_dirty = false;
	lock_mutex_unlock(&cs->mu);

	failed = chunk_fault_hit(cs, CHUNK_FAULT_SYNC);    /* as if fdatasync failed */
	for (size_t i = 0; i < n; i++) {
		struct statx st;

		if (!failed && fdatasync(items[i].w->fd) != 0)
			failed = -errno;
		/* The link count only: a stat that reports the change time
		 * makes the next write stamp a fine-grained one (multigrain
		 * timestamps, Linux 6.13+), which dirties the inode at every
		 * write, and the host's fdatasync then writes the inode too
		 * (ext4 without a journal: 30 % fewer fsync'd writes a second,
		 * docs/performance.md). */
		if (!statx(items[i].w->fd, "", AT_EMPTY_PATH, STATX_NLINK, &st) &&
		    (st.stx_mask & STATX_NLINK) && st.stx_nlink == 0) {
			vlog_at(LOG_ERR, &(struct log_where){ .chunk = items[i].w->id, .has_chunk = true },
				"chunk %016" PRIx64 " was deleted while in use: its blocks "
				"are lost; new data goes to a new chunk file", items[i].w->id);
			items[i].gone = true;
			gone = true;
		}
	}
	if (dir && !failed && fsync(cs->dirfd) != 0)
		failed = -errno;
	if (failed && !atomic_exchange(&cs->poisoned, true))
		vlog(LOG_CRIT, "syncing chunk files failed (%s): writes since the last successful "
		     "fsync may be lost, and a retry could not prove them durable. No more writes "
		     "are accepted and every fsync fails; reads go on. Unmount and mount again to "
		     "go back to the last durable state", log_strerror(failed));
	rc = failed ? failed : gone ? -EIO : 0;

	lock_mutex_lock(&cs->mu);
	for (size_t i = 0; i < n; i++) {
		if (items[i].gone) {
			items[i].w->nused = cs->nslots;    /* sealed: no more appends */
			if (cs->log_chunk == items[i].w->id)
				cs->log_chunk = 0;          /* nor log batches */
		}
		chunk_w_put_locked(cs, items[i].w);
	}
	lock_mutex_unlock(&cs->mu);
out:
	lock_mutex_unlock(&cs->sync_mu);
	free(items);
	return rc;
}

/* --- sidecars of version-1 chunks (under side_mu) ------------------------- */

/* Index of the first entry with id >= id.  Assumes side_mu is held. */
static size_t side_lower_bound(const struct chunk_store *cs, uint64_t id)
{
	assert(lock_held(&cs->side_mu));
	return id_lower_bound(cs->sides, cs->nsides, sizeof(cs->sides[0]), id);
}

/* Close one open sidecar fd to stay under SIDE_FD_MAX; a dirty one stays
 * listed and is reopened by name to be synced.  Assumes side_mu. */
static void side_evict_one(struct chunk_store *cs)
{
	assert(lock_held(&cs->side_mu));
	for (size_t k = 0; k < cs->nsides; k++) {
		size_t i = (cs->side_evict_pos + k) % cs->nsides;

		if (cs->sides[i].fd >= 0) {
			close(cs->sides[i].fd);
			cs->sides[i].fd = -1;
			cs->side_nopen--;
			cs->side_evict_pos = i + 1;
			return;
		}
	}
}

/*
 * Open (creating it with its header if needed) the sidecar of chunk id for
 * writing.  The chunk must exist with a valid version-1 header.  *created
 * says whether the file is new or its header was (re)written: the caller
 * then drops the chunk from the read cache.  Assumes side_mu.
 */
static int side_open_rw(struct chunk_store *cs, uint64_t id, int *fdp, bool *created)
{
	uint8_t hdr[CHUNK_HEADER_BYTES];
	char name[CHUNK_NAME_LEN + 1];
	ssize_t n;
	int fd, rc;

	assert(lock_held(&cs->side_mu));
	*created = false;
	chunk_name(name, id);
	fd = openat(cs->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = pread_full(fd, hdr, sizeof(hdr), 0);
	close(fd);
	if (n < 0)
		return (int)n;
	if ((size_t)n < sizeof(hdr) || chunk_hdr_version(hdr, cs->block_size, id) != CHUNK_VERSION_1)
		return -EINVAL;         /* a version-2 chunk has its own table */

	side_name(name, id);
	fd = openat(cs->dirfd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	n = pread_full(fd, hdr, sizeof(hdr), 0);
	if (n < 0) {
		rc = (int)n;
		goto fail;
	}
	/* new, or a header a crash tore before the first sidecar sync: no
	 * committed step relied on it, so it is rewritten */
	if ((size_t)n < sizeof(hdr) || !side_hdr_valid(hdr, cs->nslots, id)) {
		side_hdr_encode(hdr, cs->nslots, id);
		rc = pwrite_full(fd, hdr, sizeof(hdr), 0);
		if (rc)
			goto fail;
		*created = true;
		cs->side_dir_dirty = true;
	}
	*fdp = fd;
	return 0;
fail:
	close(fd);
	return rc;
}

/* The entry of chunk id, opened for writing (created on first use).
 * Assumes side_mu. */
static int side_get(struct chunk_store *cs, uint64_t id, struct side_w **out, bool *created)
{
	size_t i = side_lower_bound(cs, id);
	struct side_w *w;
	char name[CHUNK_NAME_LEN + 1];
	int fd, rc;

	assert(lock_held(&cs->side_mu));
	*created = false;
	w = i < cs->nsides && cs->sides[i].id == id ? &cs->sides[i] : NULL;
	if (w && w->fd >= 0) {
		*out = w;
		return 0;
	}
	if (w) {                        /* evicted: the file is there, reopen it */
		side_name(name, id);
		fd = openat(cs->dirfd, name, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return -errno;
	} else {
		rc = side_open_rw(cs, id, &fd, created);
		if (rc)
			return rc;
	}
	if (cs->side_nopen >= SIDE_FD_MAX)
		side_evict_one(cs);
	if (!w) {
		if (ARRAY_RESERVE(cs->sides, cs->sides_cap, cs->nsides, 16)) {
			close(fd);
			return -ENOMEM;
		}
		i = side_lower_bound(cs, id);
		memmove(&cs->sides[i + 1], &cs->sides[i], (cs->nsides - i) * sizeof(cs->sides[0]));
		cs->sides[i] = (struct side_w){ .id = id, .fd = -1 };
		cs->nsides++;
		w = &cs->sides[i];
	}
	w->fd = fd;
	cs->side_nopen++;
	*out = w;
	return 0;
}

/* Write the buffered run.  Assumes side_mu. */
static int side_flush_pending(struct chunk_store *cs, uint64_t *forget)
{
	struct side_w *w;
	bool created;
	int rc;

	assert(lock_held(&cs->side_mu));
	if (cs->pend_n == 0)
		return 0;
	rc = side_get(cs, cs->pend_id, &w, &created);
	if (created)
		*forget = cs->pend_id;
	if (rc == 0)
		rc = pwrite_full(w->fd, cs->pend, (size_t)cs->pend_n * CHUNK_ENTRY_BYTES,
				 entry_off(cs->pend_slot));
	if (rc == 0)
		w->dirty = true;
	cs->pend_n = 0;
	return rc;
}

/*
 * A run is buffered until a put that does not continue it; the file of the
 * new run is opened (and created) now, so that a missing or version-2
 * chunk is reported by the put that names it.
 */
int chunk_sidecar_put(struct chunk_store *cs, uint64_t chunk_id, uint32_t slot,
		      uint64_t lblock, uint64_t cksum)
{
	uint64_t forget = 0;
	int rc = 0;

	if (chunk_id == 0 || slot >= cs->nslots || lblock > CHUNK_LBLOCK_MAX)
		return -EINVAL;
	lock_mutex_lock(&cs->side_mu);
	if (cs->pend_n && (cs->pend_id != chunk_id || slot != cs->pend_slot + cs->pend_n ||
			   cs->pend_n == SIDE_PEND_MAX))
		rc = side_flush_pending(cs, &forget);
	if (rc == 0 && cs->pend_n == 0) {
		struct side_w *w;
		bool created;

		rc = side_get(cs, chunk_id, &w, &created);
		if (created)
			forget = chunk_id;
		cs->pend_id = chunk_id;
		cs->pend_slot = slot;
	}
	if (rc == 0) {
		entry_encode(cs->pend + (size_t)cs->pend_n * CHUNK_ENTRY_BYTES, cksum, lblock,
			     CHUNK_KIND_DATA);
		cs->pend_n++;
	}
	lock_mutex_unlock(&cs->side_mu);
	/* fd_lock ranks before side_mu: after it.  Only a reader that opened
	 * the chunk before the sidecar existed has anything to forget. */
	if (forget)
		rfd_forget(cs, forget);
	return rc;
}

/*
 * Holds side_mu across the fdatasyncs: sidecars are written by the upgrade
 * alone, before the store serves anything.  A failure is final, as for
 * chunk files (see "A failed sync"): every later sidecar sync fails too.
 */
int chunk_sidecar_sync(struct chunk_store *cs)
{
	uint64_t forget = 0;
	char name[CHUNK_NAME_LEN + 1];
	size_t k = 0;
	int rc;

	lock_mutex_lock(&cs->side_mu);
	rc = cs->side_poisoned ? -EIO : side_flush_pending(cs, &forget);
	for (size_t i = 0; i < cs->nsides && !rc; i++) {
		struct side_w *w = &cs->sides[i];
		int fd = w->fd;

		if (!w->dirty)
			continue;
		if (fd < 0) {
			side_name(name, w->id);
			fd = openat(cs->dirfd, name, O_RDONLY | O_CLOEXEC);
			if (fd < 0) {
				rc = -errno;
				break;
			}
		}
		if (fdatasync(fd) != 0)
			rc = -errno;
		if (fd != w->fd)
			close(fd);
		if (!rc)
			w->dirty = false;
	}
	if (!rc && cs->side_dir_dirty) {
		if (fsync(cs->dirfd) != 0)
			rc = -errno;
		else
			cs->side_dir_dirty = false;
	}
	if (rc && !cs->side_poisoned) {
		cs->side_poisoned = true;
		vlog(LOG_ERR, "syncing sidecar files failed: %s", log_strerror(rc));
	}
	/* keep only what is open or still dirty */
	for (size_t i = 0; i < cs->nsides; i++)
		if (cs->sides[i].fd >= 0 || cs->sides[i].dirty)
			cs->sides[k++] = cs->sides[i];
	cs->nsides = k;
	lock_mutex_unlock(&cs->side_mu);
	if (forget)
		rfd_forget(cs, forget);
	return rc;
}

/* chunk_remove: drop what this store holds of chunk id's sidecar (buffered
 * entries included: they describe a chunk that is going away). */
static void side_forget(struct chunk_store *cs, uint64_t id)
{
	size_t i;

	lock_mutex_lock(&cs->side_mu);
	if (cs->pend_n && cs->pend_id == id)
		cs->pend_n = 0;
	i = side_lower_bound(cs, id);
	if (i < cs->nsides && cs->sides[i].id == id) {
		if (cs->sides[i].fd >= 0) {
			close(cs->sides[i].fd);
			cs->side_nopen--;
		}
		memmove(&cs->sides[i], &cs->sides[i + 1],
			(cs->nsides - i - 1) * sizeof(cs->sides[0]));
		cs->nsides--;
	}
	lock_mutex_unlock(&cs->side_mu);
}

/* --- ids, listing, removal ------------------------------------------------- */

bool chunk_poisoned(struct chunk_store *cs)
{
	return atomic_load(&cs->poisoned);
}

bool chunk_present(struct chunk_store *cs, uint64_t chunk_id)
{
	char name[CHUNK_NAME_LEN + 1];
	struct stat st;

	chunk_name(name, chunk_id);
	return fstatat(cs->dirfd, name, &st, 0) == 0 || errno != ENOENT;
}

uint64_t chunk_active_id(struct chunk_store *cs)
{
	uint64_t id;

	lock_mutex_lock(&cs->mu);
	id = cs->active ? cs->active->id : 0;
	lock_mutex_unlock(&cs->mu);
	return id;
}

uint64_t chunk_next_id(struct chunk_store *cs)
{
	return mu_get(cs, &cs->next_id);
}

/*
 * The header version that decides where chunk file "name" (id) keeps its
 * slots: 1, or 2 for anything else (a file with a bad header reads EIO
 * whatever its layout).  Chunks this store made are version 2; for older
 * ones the read cache knows, or the header is read.
 */
static unsigned chunk_layout_version(struct chunk_store *cs, uint64_t id, const char *name)
{
	const struct chunk_rfd *e;
	unsigned version = 0;
	uint8_t v[4];
	int fd;

	if (id >= cs->first_own_id)
		return CHUNK_VERSION;
	lock_rw_rdlock(&cs->fd_lock);
	e = rfd_find(cs, id);
	if (e && !e->bad)
		version = e->version;
	lock_rw_unlock(&cs->fd_lock);
	if (version)
		return version;
	fd = openat(cs->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		/* GC may make the file a spare meanwhile: see "Direct writes" */
		(void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
		if (pread_full(fd, v, sizeof(v), HDR_OFF_VERSION) == (ssize_t)sizeof(v) &&
		    le32_get(v) == CHUNK_VERSION_1)
			version = CHUNK_VERSION_1;
		close(fd);
	}
	return version ? version : CHUNK_VERSION;
}

/* fn runs with no lock held: a garbage collector calls chunk_remove() from
 * it. */
int chunk_foreach(struct chunk_store *cs,
		  int (*fn)(void *ctx, uint64_t chunk_id, uint32_t nslots), void *ctx)
{
	char name[CHUNK_NAME_LEN + 1];
	uint64_t *ids = NULL;
	size_t nids = 0;
	int rc;

	rc = chunk_dir_list(cs->dirfd, &ids, &nids);
	if (rc)
		return rc;
	for (size_t i = 0; i < nids; i++) {
		struct stat st;
		uint64_t nslots = 0;
		off_t base;

		chunk_name(name, ids[i]);
		if (fstatat(cs->dirfd, name, &st, 0) != 0) {
			rc = -errno;
			if (rc == -ENOENT) {    /* removed since we listed it */
				rc = 0;
				continue;
			}
			break;
		}
		if (!S_ISREG(st.st_mode))
			continue;
		base = slot_off(cs, chunk_layout_version(cs, ids[i], name), 0);
		if (st.st_size > base)
			nslots = ((uint64_t)st.st_size - (uint64_t)base) / cs->block_size;
		if (nslots > UINT32_MAX)
			nslots = UINT32_MAX;
		rc = fn(ctx, ids[i], (uint32_t)nslots);
		if (rc)
			break;
	}
	free(ids);
	return rc;
}

/*
 * Rename chunk file "name" to spare sp->seq and set sp->bytes to its size
 * (0 when it was not kept).  0, or a negative errno (-ENOENT: no such
 * chunk).  Assumes fd_lock is held exclusive.
 */
static int spare_keep(struct chunk_store *cs, const char *name, struct chunk_spare *sp)
{
	char sname[CHUNK_NAME_LEN + 1];
	struct stat st;

	assert(lock_rw_wrheld(&cs->fd_lock));
	if (fstatat(cs->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || st.st_size <= (off_t)CHUNK_HEADER_BYTES)
		return -EINVAL;         /* nothing worth keeping: unlink it */
	spare_name(sname, sp->seq);
	if (renameat2(cs->dirfd, name, cs->spare_dirfd, sname, RENAME_NOREPLACE) != 0)
		return -errno;
	sp->bytes = (uint64_t)st.st_size;
	return 0;
}

/* A removed chunk just kept as spare seq was maybe read ahead: drop its
 * cached pages now, before it can be taken (see "Direct writes"). */
static void spare_drop_pages(struct chunk_store *cs, uint64_t seq)
{
	char sname[CHUNK_NAME_LEN + 1];
	int fd;

	spare_name(sname, seq);
	fd = openat(cs->spare_dirfd, sname, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
}

/*
 * -EBUSY also for a sealed chunk that an append is still writing or a sync
 * is still syncing: closing its fd under them would be a use after close.
 * A dirty but idle writer is dropped with its file: nothing is left to sync.
 * The unlink is not made durable: a file that comes back after a crash is
 * only unreferenced garbage for the next collection.
 */
int chunk_remove(struct chunk_store *cs, uint64_t chunk_id)
{
	char name[CHUNK_NAME_LEN + 1];
	struct chunk_w **pp, *w = NULL;
	struct chunk_spare sp = { 0 };
	bool keep;
	size_t i;
	int rc = 0;

	if (chunk_id == 0)
		return -EINVAL;

	lock_mutex_lock(&cs->mu);
	for (pp = &cs->writers; *pp; pp = &(*pp)->next)
		if ((*pp)->id == chunk_id)
			break;
	if (*pp) {
		if (*pp == cs->active || (*pp)->refs > 0) {
			rc = -EBUSY;
		} else {
			w = *pp;
			*pp = w->next;
			sealed_update_locked(cs);
		}
	}
	/* A place among the spares is taken now, as mu and fd_lock are never
	 * held together. */
	keep = !rc && cs->spare_dirfd >= 0 && cs->nspares + cs->spare_pending < cs->spare_limit;
	if (keep) {
		cs->spare_pending++;
		sp.seq = cs->spare_seq++;
	}
	lock_mutex_unlock(&cs->mu);
	if (rc)
		return rc;
	if (w)
		chunk_w_free(w);
	side_forget(cs, chunk_id);

	/* Exclusive: no reader is inside a pread on the fd we close, and an
	 * opener that raced with us sees rfd_gen move and drops its fd.  The
	 * sidecar goes first, so a crash leaves none without its chunk (a
	 * chunk without its sidecar is unreferenced: it was being removed). */
	side_name(name, chunk_id);
	lock_rw_wrlock(&cs->fd_lock);
	if (unlinkat(cs->dirfd, name, 0) != 0 && errno != ENOENT)
		vlog(LOG_WARNING, "%s: cannot delete it: %s", name, strerror(errno));
	chunk_name(name, chunk_id);
	i = rfd_lower_bound(cs, chunk_id);
	if (i < cs->nrfds && cs->rfds[i].id == chunk_id)
		rfd_delete(cs, i);
	if (keep)
		rc = spare_keep(cs, name, &sp);
	if (!keep || (rc && rc != -ENOENT)) {
		rc = 0;
		if (unlinkat(cs->dirfd, name, 0) != 0)
			rc = -errno;
	}
	cs->rfd_gen++;
	lock_rw_unlock(&cs->fd_lock);

	if (keep) {
		bool over;

		if (sp.bytes && cs->direct_min)
			spare_drop_pages(cs, sp.seq);
		lock_mutex_lock(&cs->mu);
		cs->spare_pending--;
		/* chunk_spares_limit() may have lowered the limit meanwhile */
		over = cs->nspares >= cs->spare_limit;
		if (sp.bytes && !over) {
			cs->spares[cs->nspares++] = sp;
			cs->spare_bytes += sp.bytes;
		}
		lock_mutex_unlock(&cs->mu);
		/* the chunk is gone either way; a spare left behind is
		 * adopted or deleted by the next open */
		if (sp.bytes && over) {
			spare_name(name, sp.seq);
			if (unlinkat(cs->spare_dirfd, name, 0) != 0 && errno != ENOENT)
				vlog(LOG_WARNING, "spare chunk file %s: cannot delete it: %s",
				     name, strerror(errno));
		}
	}
	return rc;
}
