/*
 * namespace internals shared by the files of src/ns.  See include/vsnapfs/ns.h for
 * the contract.
 *
 * LOCKS.  The order and each lock's rank are written once, in
 * include/vsnapfs/lock.h; for the namespace they read:
 *
 *     flush_mu -> db_mu -> vol.gate -> files_mu -> load_mu -> vol.lock
 *              -> mcache.mu -> (chunk store locks) -> seq_mu, bg_mu, stats_mu
 *
 * A function that needs a lock held asserts it (assert(lock_held(...))),
 * which the lock checker verifies whenever it is on (lock.h: every test).
 *
 * FILES, each using only those listed before it:
 *   files.c   the open-file table, its references, the reap and release queues
 *   attr.c    attributes of every kind of inode
 *   flush.c   collecting changes, the log, checkpoints; ns_flush
 *   recover.c replaying the log at open
 *   gc.c      one garbage-collection pass
 *   io.c      the data path of an open volume: read, write, fallocate, seek, fsync
 *   snap.c    snapshots, clones, truncate to zero
 *   ns.c      the tree: lookup, create, unlink, rename, setattr, readdir, open
 *   bg.c      the background thread: flush, evict, reap, release, GC
 *   stats.c   per-volume I/O counters; the control channel's status and
 *             iostat replies
 *   ctlsrv.c  the control channel's server threads (vsnapfs/ctlmsg.h)
 *   store.c   opening, creating, locking and closing the store
 */
#ifndef VSNAPFS_NS_INT_H
#define VSNAPFS_NS_INT_H

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "vsnapfs/array.h"
#include "vsnapfs/bmap.h"
#include "vsnapfs/chunk.h"
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/lock.h"
#include "vsnapfs/ns.h"
#include "vsnapfs/vol.h"

#define NS_FILE_BUCKETS 1024
#define NS_MERGE_EXTS   2048    /* extent rows per transaction of a background node merge */
#define NS_STAT_BUCKETS 256     /* hash buckets of the I/O counter table */
#define NS_LAT_BUCKETS  CTL_LAT_BUCKETS        /* the latency histogram's (ctlmsg.h) */

/*
 * I/O counters of one volume (or snapshot file) since the mount (stats.c,
 * docs/design.md "Counters").  The I/O path adds to them with relaxed
 * atomics and takes no lock: an entry, once made, lives until its inode is
 * gone and no open file points at it.  Readers get figures that may be a
 * few operations apart from each other, never torn ones.
 */
enum ns_io_kind { NS_IO_READ, NS_IO_WRITE, NS_IO_FSYNC, NS_IO_KINDS };
struct ns_vstats {
	struct ns_vstats *next;         /* (stats_mu) hash chain */
	uint64_t ino;                   /* constant */
	atomic_uint users;              /* ns_files pointing here; raised under stats_mu */
	_Atomic uint64_t ops[NS_IO_KINDS];      /* calls that succeeded */
	_Atomic uint64_t errors[NS_IO_KINDS];   /* calls that failed */
	_Atomic uint64_t bytes[NS_IO_KINDS];    /* read, written (fsync: 0) */
	_Atomic uint64_t lat_ns[NS_IO_KINDS];   /* sum of the latencies of ops and errors */
	_Atomic uint64_t hist[NS_IO_KINDS][NS_LAT_BUCKETS];
};

/*
 * One volume in use: shared by every open handle of it, and kept after the
 * last close until the flusher has written its changes (then evicted).
 */
struct ns_file {
	struct ns_file *next;           /* (files_mu) hash chain; after ns_files_take: its list */
	uint64_t ino;                   /* constant */
	struct vol *v;                  /* constant; has its own lock */
	unsigned refs;                  /* (files_mu) open handles + flushes in progress */
	unsigned opens;                 /* (files_mu) open handles */
	bool unlinked;                  /* (files_mu) no name left: reap at last unref */
	struct bmap_inode in;           /* (files_mu) attributes as last written to the
					 * index; in.size is the last flushed size */
	bool attr_dirty;                /* (files_mu) in differs from the index */
	_Atomic int64_t wtime_ns;       /* last write (mtime and ctime), 0: none since flush */
	struct ns_vstats *st;           /* constant: its I/O counters (never NULL) */
};

/* Log batches (src/ns/flush.c). */
struct logent;
struct logq {
	struct logent **v;
	size_t n, cap;
};

/* gc.c: what one garbage-collection pass did, for its log line, the
 * background thread's pacing, the control channel's gc, the tests and the
 * bench. */
struct ns_gc_stats {
	int64_t work_ns;                /* its scans of the index and the chunk files */
	int64_t copy_ns;                /* reading and appending live blocks */
	int64_t sync_ns;                /* the chunk_sync() of the copies */
	int64_t repoint_ns;             /* the repoint transaction */
	uint64_t moved;                 /* live blocks moved */
	uint64_t reads;                 /* chunk_read() calls of the copy */
	uint64_t appends;               /* chunk_append() calls of the copy */
	uint64_t relocates;             /* bmap_ext_relocate() calls */
	uint64_t lost;                  /* of those, the ones a newer write won */
	uint64_t defrag_windows;        /* windows rewritten as one run (-o defrag) */
	uint64_t removed;               /* chunk files removed */
	uint64_t freed_slots;           /* slots of the chunk files removed */
	uint64_t slots, live;           /* slots of every chunk file, and those in use */
};

/* Inode or node numbers waiting for the background thread (db_mu). */
struct ns_queue {
	uint64_t *v;
	size_t n, cap;
};

struct ns {
	char *dir;                      /* constant: absolute store path */
	int dir_fd;                     /* constant: the store dir, flock()ed for our lifetime */
	int lock_fd;                    /* constant: STORE/lock, where our pid is written */
	uint32_t bs;                    /* constant */
	bool readonly;                  /* constant */
	uint32_t flush_ms;              /* constant */
	uint32_t gc_interval_s;         /* constant */
	uint32_t spare_max;             /* constant: spare chunk files kept while writing */
	uint32_t defrag_min_exts;       /* constant: GC rewrites windows this fragmented; 0: no */
	struct chunk_store *cs;         /* thread-safe by itself */

	struct lock_mutex db_mu;
	struct bmap *bm;                /* (db_mu) */
	/* A read-only connection of the background thread's own, for GC's
	 * full scans: WAL gives it a consistent snapshot without db_mu, so a
	 * scan of millions of rows does not hold up the namespace. */
	struct bmap *bm_scan;           /* background thread only */
	/* Where volumes read their map pages: a third connection, each page
	 * in one read transaction without db_mu (vol_set_index in
	 * vsnapfs/vol.h), so that a page load never waits for a flush. */
	struct bmap *bm_load;           /* (load_mu); NULL read-only: bm under db_mu */
	struct lock_mutex load_mu;
	/* The map pages of every open volume, under -o map_cache (D4). */
	struct mcache *mc;              /* thread-safe by itself; constant */
	struct vol_index vix;           /* constant after ns_open */
	struct ns_queue reap;           /* (db_mu) inos to delete in the background */
	struct ns_queue rel;            /* (db_mu) map nodes to release in the background */

	struct lock_mutex files_mu;
	struct ns_file *files[NS_FILE_BUCKETS];   /* (files_mu) */
	uint64_t files_gen;             /* (files_mu) moves with every insert (bg.c's counts) */

	/* The log (src/ns/flush.c, docs/design.md D3). */
	struct lock_mutex log_mu;
	struct logq logq;               /* (log_mu) batches synced, not yet in the index,
					 * in lsn order; taken by db_mu holders only */
	struct logq settle;             /* (log_mu) batches in the index, to settle */
	_Atomic uint64_t logq_recs;     /* records queued */
	uint64_t lsn_in_doubt;          /* (log_mu) a batch whose sync failed, or 0 */
	uint64_t lsn_next;              /* (flush_mu) the next batch's number */
	uint64_t lsn_synced;            /* (flush_mu) the last batch synced */
	uint64_t ckpt_lsn;              /* (db_mu) the last batch in the index */
	bool log_gap;                   /* constant after ns_open: recovery found a gap */
	size_t txn_taken;               /* (db_mu) queued batches the open transaction applied */
	uint64_t txn_lsn;               /* (db_mu) the last of them */

	struct lock_mutex flush_mu;     /* one flush (or GC pass) at a time */
	struct lock_mutex seq_mu;
	uint64_t flush_started;         /* (seq_mu) flushes begun */
	uint64_t flush_done;            /* (seq_mu) the latest finished flush's number */
	int flush_rc;                   /* (seq_mu) and its result */

	/* Writes in progress, counted in the epoch they started in.  GC flips
	 * the epoch and waits for the old one to drain: after that, every
	 * write that is not yet in the index appends to a chunk at or past
	 * the one active at the flip (see src/ns/gc.c). */
	atomic_int write_epoch;
	atomic_long inflight[2];

	/* Free space of the store's file system, as last measured, minus what
	 * was written since: data writes stop at the reserve, so that the
	 * index can always commit a flush, a snapshot or a deletion. */
	_Atomic int64_t space_free;     /* bytes at the last statvfs */
	_Atomic int64_t space_used;     /* bytes written since then */
	_Atomic int64_t space_when_ns;  /* time of the last statvfs */
	int64_t space_reserve;          /* constant after ns_open */
	atomic_bool gc_wanted;
	atomic_uint_fast64_t fsyncs;    /* fsyncs asked by clients (spares_tick) */
	atomic_uint_fast64_t written;   /* data bytes written by clients (spares_tick) */

	ns_inval_fn inval;              /* constant after ns_start: see ns_set_inval */
	void *inval_ctx;
	/* For tests, NULL otherwise: called by a GC pass with no lock held
	 * once its copies are synced, just before it repoints the rows, so
	 * that a test can change them in between (src/ns/gc.c). */
	void (*gc_copied)(void *ctx);
	void *gc_copied_ctx;

	struct lock_mutex bg_mu;
	pthread_cond_t bg_cond;         /* wakes the background thread */
	/* GC passes asked for through the control channel: the background
	 * thread answers gc_req by a pass that starts after it. */
	uint64_t gc_req;                /* (bg_mu) the last pass asked for */
	uint64_t gc_done;               /* (bg_mu) the last one answered */
	struct ns_gc_stats gc_last;     /* (bg_mu) what that pass did */
	int gc_last_rc;                 /* (bg_mu) and its result */
	pthread_cond_t gc_cond;         /* with bg_mu: gc_done moved, or ctl_stop */
	/* The last pass of any kind, for vsnapctl status. */
	uint64_t gc_passes;             /* (bg_mu) passes since the mount */
	struct ns_gc_stats gc_pass;     /* (bg_mu) what the last one did */
	int64_t gc_pass_at_ns;          /* (bg_mu) when it started (CLOCK_REALTIME), 0: none */
	int64_t gc_pass_ns;             /* (bg_mu) how long it took */
	int gc_pass_rc;                 /* (bg_mu) its result */
	/* Per-volume I/O counters (stats.c). */
	struct lock_mutex stats_mu;
	struct ns_vstats *vstats[NS_STAT_BUCKETS];      /* (stats_mu) */
	struct ns_vstats vstats_lost;   /* counters of volumes no entry could be made for */
	size_t nvstats;                 /* (stats_mu) entries in vstats */
	size_t vstats_prune_at;         /* (stats_mu) entries at which ns_vstats_get prunes */
	size_t vstats_prune_min;        /* constant after ns_open (tests lower it): no prune below */
	int64_t started_ns;             /* constant after ns_open: when it was opened */
	int64_t started_mono_ns;        /* constant after ns_open: the same, ns_mono_ns (uptime) */
	/* The control channel (src/ns/ctlsrv.c). */
	int ctl_fd;                     /* constant after ns_start: listening socket, -1 none */
	int ctl_wake[2];                /* constant after ns_start: a byte stops the server */
	atomic_bool ctl_stop;           /* the server is being stopped */
	bool ctl_running;               /* set/cleared by ns_start/ns_close only */
	pthread_t ctl_thread;
	struct ctl_conn *ctl_conns;     /* the server's accept thread only (ctlsrv.c) */
	bool bg_stop;                   /* (bg_mu) */
	bool bg_running;                /* set/cleared by ns_start/ns_close only */
	bool marked_in_use;             /* "clean" is 0 in the index: set it back at close */
	pthread_t bg_thread;
};

/*
 * Inode numbers.  The top two bits say what an inode is; live inodes are
 * the index's own numbers.  FUSE sees all four kinds.
 *
 *   00 | ino                      a live directory or volume
 *   01 | dir                      dir/.snapshots, the control directory
 *   10 | snap                     the root of snapshot snap
 *   11 | snap (26 bits) | ino (36 bits)   inode ino inside snapshot snap
 */
enum ino_kind { INO_LIVE = 0, INO_CTL = 1, INO_SROOT = 2, INO_SNAP = 3 };

#define INO_BITS_SNAPINO 36
#define INO_BITS_SNAPID  26

static inline enum ino_kind ino_kind(uint64_t ino) { return ino >> 62; }
static inline uint64_t ino_payload(uint64_t ino) { return ino & ((1ULL << 62) - 1); }
static inline uint64_t ino_ctl(uint64_t dir) { return 1ULL << 62 | dir; }
static inline uint64_t ino_sroot(uint64_t snap) { return 2ULL << 62 | snap; }
static inline uint64_t ino_snap(uint64_t snap, uint64_t ino)
{
	return 3ULL << 62 | snap << INO_BITS_SNAPINO | ino;
}
static inline uint64_t ino_snap_id(uint64_t ino)
{
	return (ino >> INO_BITS_SNAPINO) & ((1ULL << INO_BITS_SNAPID) - 1);
}
static inline uint64_t ino_snap_ino(uint64_t ino) { return ino & ((1ULL << INO_BITS_SNAPINO) - 1); }

int64_t ns_now_ns(void);
/* bg.c: count the referenced blocks of every volume node the index has
 * none for and no volume in the files table uses, now (tests; the
 * background thread does it a little at a time).  Returns how many. */
uint64_t ns_refs_count_all(struct ns *ns);

/* Bracket every change that may append data (see write_epoch). */
static inline int ns_change_begin(struct ns *ns)
{
	int e = atomic_load(&ns->write_epoch);

	atomic_fetch_add(&ns->inflight[e], 1);
	return e;
}

static inline void ns_change_end(struct ns *ns, int e)
{
	atomic_fetch_sub(&ns->inflight[e], 1);
}

/* One volume taken into a flush or a snapshot. */
struct held {
	struct ns_file *f;
	struct vol_batch b;
	struct bmap_inode in;           /* its inode row to write */
};

/* files.c: the open-file table.  Every call but ns_file_unref and
 * ns_file_free assumes files_mu. */
struct ns_file *ns_files_find(struct ns *ns, uint64_t ino);
void ns_files_insert(struct ns *ns, struct ns_file *f);
void ns_files_remove(struct ns *ns, struct ns_file *f);
/* Call fn on every file until it returns non-zero, which is returned. */
int ns_files_foreach(struct ns *ns, int (*fn)(struct ns_file *f, void *ctx), void *ctx);
/* Take every file for which take() is true out of the table: a list
 * through ->next, for ns_file_free_list (after files_mu is let go). */
struct ns_file *ns_files_take(struct ns *ns, bool (*take)(const struct ns_file *f, void *ctx),
			      void *ctx);
/* Close the vols and free a list of files taken out of the table. */
void ns_file_free_list(struct ns_file *list);
/* Drop a reference (takes db_mu and files_mu).  The last one of an
 * unlinked volume queues its deletion. */
void ns_file_unref(struct ns *ns, struct ns_file *f);
/* Queue an unlinked inode for deletion, or a map node for release, by the
 * background thread; assumes db_mu.  Out of memory, the work is left to
 * the next mount, which finds both again, and a line says so. */
int ns_queue_push(struct ns_queue *q, uint64_t id);
void ns_reap_later(struct ns *ns, uint64_t ino);
/* Volume ino lost its name in a committed transaction: keep it while it
 * is open, else queue its deletion (see files.c).  Assumes db_mu. */
void ns_volume_detached(struct ns *ns, uint64_t ino);
void ns_release_later(struct ns *ns, uint64_t node);

/* attr.c: attributes; f, if given, is the open volume (its live size, blocks). */
void ns_attr_fill(struct ns *ns, const struct bmap_inode *in, struct ns_file *f,
		  struct ns_attr *out);
void ns_ctl_attr(struct ns *ns, const struct bmap_inode *d, struct ns_attr *out);
void ns_sroot_attr(struct ns *ns, const struct bmap_snap *s, const struct bmap_inode *d,
		   struct ns_attr *out);
void ns_sinode_attr(struct ns *ns, uint64_t snap, const struct bmap_inode *in,
		    struct ns_attr *out);

/* ns.c: stamp a directory's mtime and ctime (its entries changed); assumes db_mu. */
int ns_touch_dir(struct ns *ns, uint64_t dir, int64_t now);

/* snap.c */
int ns_snap_create(struct ns *ns, uint64_t dir, const char *name, struct ns_attr *out);
int ns_snap_delete(struct ns *ns, uint64_t dir, const char *name);
int ns_snap_rename(struct ns *ns, uint64_t dir, const char *name, const char *newname,
		   unsigned flags);
/*
 * receive's commit (docs/design.md, "Send and receive"): in one index
 * transaction, the received volume dir/tmp becomes dir/name (a volume of
 * that name is unlinked: an incremental stream's destination, which must
 * still show the base snapshot exactly unless force) and snapshot
 * name@snap of it is taken with the stream's guid.  Refusals, with one
 * line in msg: -EEXIST (guid or snapshot there already, or a full stream
 * onto an existing volume), -ENOENT (the base snapshot, or the volume of
 * an incremental stream, is missing), -ESTALE (written after the base),
 * -EBUSY (the destination is open).  Takes flush_mu, db_mu, the gates.
 *
 * With tree set, the same for a directory (docs/design.md, "Directory
 * streams: the commit"): a full stream renames directory dir/tmp to
 * dir/name; an incremental one replaces the entries of directory dir/name
 * by tmp's (its volumes unlinked, its directories deleted; tmp goes) after
 * checking that dir/name still shows the base snapshot exactly unless
 * force; then snapshot dir/name/.snapshots/snap is taken with the guid.
 * Also refused: -EBUSY (a volume below dir/name is open), -ENOTEMPTY (a
 * directory below dir/name has snapshots of its own).
 */
struct ns_recv {
	uint64_t dir;                   /* live directory */
	const char *tmp, *name, *snap;  /* received volume, its final name, snapshot name */
	uint64_t tmp_ino;               /* the volume the receive wrote: tmp must still be it */
	uint8_t guid[BMAP_GUID_BYTES];
	bool incremental;
	uint8_t base_guid[BMAP_GUID_BYTES];     /* incremental: the base snapshot */
	bool force;                     /* replace a destination written after the base */
	int64_t created_ns;             /* the snapshot's, as the sender had it */
	bool tree;                      /* a directory stream: tmp is a directory, and
					 * snap names a snapshot of dir/name (NAME) */
};
int ns_recv_commit(struct ns *ns, const struct ns_recv *r, char *msg, size_t msglen);

/* Truncate an open volume to zero by giving it a new empty node. */
int ns_truncate_zero(struct ns *ns, struct ns_file *f);

/* flush.c */
struct holdset {                        /* volumes held by a flush or a snapshot */
	struct held *h;
	size_t n, cap;
};
/* Add f to hs with a reference taken (dropped by ns_file_unref); assumes files_mu. */
int ns_hold(struct ns *ns, struct holdset *hs, struct ns_file *f);
/* Collect h->f's changes into h (its gate closed or not). */
int ns_held_collect(struct ns *ns, struct held *h);
/* Write collected batches and inodes; assumes db_mu and an open transaction. */
int ns_held_apply(struct ns *ns, struct held *h, size_t n);
/* After commit or failure; frees the batches, keeps the references. */
void ns_held_done(struct ns *ns, struct held *h, size_t n, int rc);
/*
 * Every transaction that changes the index: ns_txn_begin (assumes db_mu)
 * opens it and applies the queued log batches first (rule L1, D3);
 * ns_txn_commit commits (the caller rolls back on failure) and hands those batches
 * to ns_settle; ns_txn_rollback gives them back to the queue.
 */
int ns_txn_begin(struct ns *ns);
int ns_txn_commit(struct ns *ns);
void ns_txn_rollback(struct ns *ns);
/* Batches committed: out of the deltas, references dropped.  Assumes
 * flush_mu, not db_mu. */
void ns_settle(struct ns *ns);
/* At close: forget batches still queued (a failed final checkpoint: the
 * next open replays them), without touching their files. */
void ns_log_free(struct ns *ns);
/* Every queued batch into the index, then settled.  Takes db_mu, then
 * flush_mu: call it holding neither. */
int ns_checkpoint(struct ns *ns);

/* recover.c: replay the log batches the index does not have (at open,
 * before anything else reads the index).  Read-only: -EROFS if there are
 * any (msg says what to do). */
int ns_recover(struct ns *ns, char *msg, size_t msglen);

/* io.c: may the content of ino change (write, hole punch, size)? */
int ns_may_change(struct ns *ns, uint64_t ino);

/* bg.c */
void *ns_bg_main(void *arg);

/* Spares written ahead (src/ns/bg.c): fsyncs and bytes written by clients
 * over dt_ns that call for one -- at least SPARE_PREP_FSYNCS_S fsyncs a
 * second, less than SPARE_PREP_BYTES written per fsync (a spare's zeros
 * then write at most a few times the bytes of the journal commits they
 * save; design.md, "Spares written ahead"). */
#define SPARE_PREP_FSYNCS_S 16u
#define SPARE_PREP_BYTES    (64u << 10)
bool ns_small_synced_writes(uint64_t fsyncs, uint64_t written, int64_t dt_ns);
/* Delete the queued unlinked volumes, then release the queued nodes. */
int ns_reap_all(struct ns *ns);

/* gc.c: one pass (background thread only): 1 if it moved or removed something
 * (there may be more), 0 if not, or -errno; *st says what it did. */
int ns_gc(struct ns *ns, struct ns_gc_stats *st);
/* bg.c: ask the background thread for a pass that starts after this call
 * and wait for it (the control channel's gc): its result, -EROFS on a
 * read-only store, -EIO on a poisoned one, -ESHUTDOWN when stopping. */
int ns_gc_request(struct ns *ns, struct ns_gc_stats *st);

/* stats.c: the counters of ino (made if need be, users raised; the store's
 * vstats_lost when out of memory), and the drop of a user.  Take stats_mu. */
#define NS_VSTATS_PRUNE_MIN 4096        /* entries below which the table is not pruned */
struct ns_vstats *ns_vstats_get(struct ns *ns, uint64_t ino);
void ns_vstats_put(struct ns_vstats *s);
/* At close: free every entry. */
void ns_vstats_free(struct ns *ns);

/* CLOCK_MONOTONIC, for latencies. */
static inline int64_t ns_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Count one call of kind that started at t0 (ns_mono_ns) and returned rc
 * (bytes, or a negative errno).  Lock-free: the I/O path. */
static inline void ns_io_count(struct ns_vstats *s, enum ns_io_kind kind, int64_t rc, int64_t t0)
{
	uint64_t lat = (uint64_t)(ns_mono_ns() - t0), us = lat / 1000;
	unsigned b = us ? 64 - __builtin_clzll(us) : 0;

	if (rc < 0) {
		atomic_fetch_add_explicit(&s->errors[kind], 1, memory_order_relaxed);
	} else {
		atomic_fetch_add_explicit(&s->ops[kind], 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&s->bytes[kind], (uint64_t)rc, memory_order_relaxed);
	}
	atomic_fetch_add_explicit(&s->lat_ns[kind], lat, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->hist[kind][b < NS_LAT_BUCKETS ? b : NS_LAT_BUCKETS - 1], 1,
				  memory_order_relaxed);
}

/* The control channel's status and iostat replies (docs/design.md,
 * "The control channel"; the keys in vsnapfs/ctlmsg.h).  Take db_mu,
 * bg_mu, stats_mu in turn. */
void ns_ctl_status(struct ns *ns, struct ctl_msg *rep);
void ns_ctl_iostat(struct ns *ns, const struct ctl_msg *req, struct ctl_msg *rep);
/* Record a scrub's result in the index (CTL_SCRUB_DONE). */
void ns_ctl_scrub_done(struct ns *ns, const struct ctl_msg *req, struct ctl_msg *rep);

/* ctlsrv.c: start the control channel's server (ns_start), stop it and
 * remove the socket (ns_close, first).  A failure to start is logged and
 * the daemon runs without the channel. */
void ns_ctl_start(struct ns *ns);
void ns_ctl_stop(struct ns *ns);

#endif
