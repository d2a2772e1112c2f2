/*
 * namespace internals shared by the files of src/ns.  See include/vsnapfs/ns.h for
 * the contract and the lock order:
 *
 *     flush_mu -> db_mu -> files_mu -> (vol lock)
 *
 * seq_mu and bg_mu are leaves: nothing else is taken while holding them.
 */
#ifndef VSNAPFS_NS_INT_H
#define VSNAPFS_NS_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "vsnapfs/bmap.h"
#include "vsnapfs/chunk.h"
#include "vsnapfs/ns.h"
#include "vsnapfs/vol.h"

#define NS_FILE_BUCKETS 1024
#define NS_SPARE_CHUNKS 64      /* removed chunk files kept for reuse, at most */
#define NS_MERGE_ROWS   2048    /* rows per transaction of a background node merge */

/*
 * One volume in use: shared by every open handle of it, and kept after the
 * last close until the flusher has written its changes (then evicted).
 */
struct ns_file {
	struct ns_file *next;           /* (files_mu) hash chain */
	uint64_t ino;                   /* constant */
	struct vol *v;                  /* constant; has its own lock */
	unsigned refs;                  /* (files_mu) open handles + flushes in progress */
	unsigned opens;                 /* (files_mu) open handles */
	bool unlinked;                  /* (files_mu) no name left: reap at last unref */
	struct bmap_inode in;           /* (files_mu) attributes as last written to the
					 * index; in.size is the last flushed size */
	bool attr_dirty;                /* (files_mu) in differs from the index */
	_Atomic int64_t wtime_ns;       /* last write (mtime and ctime), 0: none since flush */
};

struct ns {
	char *dir;                      /* constant: absolute store path */
	int dir_fd;                     /* constant: the store dir, flock()ed for our lifetime */
	int lock_fd;                    /* constant: STORE/lock, where our pid is written */
	uint32_t bs;                    /* constant */
	bool readonly;                  /* constant */
	uint32_t flush_ms;              /* constant */
	uint32_t gc_interval_s;         /* constant */
	struct chunk_store *cs;         /* thread-safe by itself */

	pthread_mutex_t db_mu;
	struct bmap *bm;                /* (db_mu) */
	/* A read-only connection of the background thread's own, for GC's
	 * full scans: WAL gives it a consistent snapshot without db_mu, so a
	 * scan of millions of rows does not hold up the namespace. */
	struct bmap *bm_scan;           /* background thread only */
	/* Where volumes load their block maps: a third connection, read from a
	 * snapshot without db_mu (vol_set_index in vsnapfs/vol.h), so that
	 * opening a big volume does not hold up every flush and fsync. */
	struct bmap *bm_load;           /* (load_mu); NULL read-only: under db_mu */
	pthread_mutex_t load_mu;
	/* (db_mu) bmap_changes(bm) that change no map being loaded: a
	 * flush's and a merge's (see map_changes in store.c) */
	uint64_t quiet_changes;
	struct vol_index vix;           /* constant after ns_open */
	uint64_t *reap;                 /* (db_mu) inos to delete in the background */
	size_t nreap, reap_cap;         /* (db_mu) */
	uint64_t *rel;                  /* (db_mu) map nodes to release in the background */
	size_t nrel, rel_cap;           /* (db_mu) */

	pthread_mutex_t files_mu;
	struct ns_file *files[NS_FILE_BUCKETS];   /* (files_mu) */

	pthread_mutex_t flush_mu;       /* one flush (or GC pass) at a time */
	pthread_mutex_t seq_mu;
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

	pthread_mutex_t bg_mu;
	pthread_cond_t bg_cond;         /* wakes the background thread */
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

/* ns.c */
void ns_attr_fill(struct ns *ns, const struct bmap_inode *in, struct ns_file *f,
		  struct ns_attr *out);
struct ns_file *ns_file_find(struct ns *ns, uint64_t ino);      /* assumes files_mu */
void ns_file_unref(struct ns *ns, struct ns_file *f);
/* Queue an unlinked inode for deletion; assumes db_mu. */
int ns_reap_queue(struct ns *ns, uint64_t ino);

/* snap.c */
int ns_snap_create(struct ns *ns, uint64_t dir, const char *name, struct ns_attr *out);
int ns_snap_delete(struct ns *ns, uint64_t dir, const char *name);
int ns_snap_rename(struct ns *ns, uint64_t dir, const char *name, const char *newname,
		   unsigned flags);
/* Truncate an open volume to zero by giving it a new empty node. */
int ns_truncate_zero(struct ns *ns, struct ns_file *f);

/* flush.c */
/* Collect h->f's changes into h (its gate closed or not). */
int ns_held_collect(struct ns *ns, struct held *h);
/* Write collected batches and inodes; assumes db_mu and an open transaction. */
int ns_held_apply(struct ns *ns, struct held *h, size_t n);
/* After commit or failure; frees the batches, keeps the references. */
void ns_held_done(struct ns *ns, struct held *h, size_t n, int rc);
/* Queue a map node for release in the background; assumes db_mu. */
int ns_release_queue(struct ns *ns, uint64_t node);
void *ns_bg_main(void *arg);
int ns_reap_all(struct ns *ns);

/* gc.c: one garbage-collection pass (background thread only): 1 if it
 * moved or removed something (there may be more), 0 if not, or -errno.
 * *work_ns: how long its scans of the index and the chunk files took. */
int ns_gc(struct ns *ns, int64_t *work_ns);

#endif
