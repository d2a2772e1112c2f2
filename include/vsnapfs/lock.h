/*
 * lock: pthread mutexes and rwlocks that know their rank in the daemon's one
 * lock order, and check it at run time.
 *
 * THE LOCK ORDER.  This table is the only place it is written; ns.h,
 * ns_int.h, vol.h, chunk.h and docs/design.md point here.  A thread takes
 * locks in strictly increasing rank: while it holds a lock of rank r, it
 * may take only locks of a rank above r.  Locks may be released in any
 * order.  The one exception is a rank marked "several": a thread may hold
 * several locks of it at once, and the code that takes them says in which
 * order (for vol.gate: inode order, see hold_freeze in src/ns/snap.c).
 *
 *   rank  lock                 protects                                   several
 *   1     ns.flush_mu          one flush or GC pass at a time
 *   2     ns.db_mu             the index connection ns.bm, the reap and
 *                              release queues
 *   3     vol.gate             a volume's changes against a snapshot        yes
 *                              (shared by write/truncate/punch, exclusive
 *                              by a snapshot, a clone, a truncate to zero)
 *   4     ns.files_mu          the open-file table and each ns_file's
 *                              bookkeeping fields
 *   5     ns.load_mu           the page-load connection (ns.bm_load): one
 *                              map page read at a time (short); a vol
 *                              without one (unit tests) has vol.load_mu
 *   6     vol.lock             one volume's map, size, node, dirty list
 *   7     mcache.mu            the map cache's tables, LRU list and charge
 *                              (src/mcache; held for a lookup, an insert
 *                              or an edit of a page, never across I/O)
 *   8     chunk.sync_mu        one chunk_sync() at a time
 *   9     chunk.mu             the writable chunk files, spares, next id
 *   10    chunk.fd_lock        the read-only chunk fd cache
 *   11    chunk.side_mu        sidecar writes: their fd cache and buffered
 *                              run (a leaf)
 *   12    chunk.wb_mu          the write-behind ring; waited on by appends,
 *                              reads and syncs, maybe under volume locks
 *                              (a leaf)
 *   13    ns.log_mu            the log queue: batches synced and not yet in
 *                              the index, and those waiting to be settled
 *                              (a leaf)
 *   14    ns.seq_mu            flush sequence numbers (a leaf)
 *   15    ns.bg_mu             the background thread's wake-up and the GC
 *                              requests of the control channel (a leaf)
 *   16    ns.stats_mu          the table of per-volume I/O counters: taken
 *                              when a volume is opened and by the control
 *                              channel's reports, never on the I/O path
 *                              (the counters are atomics; a leaf)
 *
 * Why this order: a snapshot holds db_mu while it closes gates, and a
 * change holds its gate while it looks up open files; a volume reads a map
 * page under load_mu while a change holds its gate (and a clone asks the
 * index under db_mu), then inserts it under its own lock (page_load in
 * src/vol/vol.c), and nothing holding load_mu takes db_mu; a volume edits its cached map pages
 * while it holds its own lock, and the cache calls nothing (docs/design.md,
 * D4); nothing calls up from the chunk store.
 *
 * THE CHECKER is compiled in always and switched on by the build (debug
 * and sanitizer builds define VSNAPFS_LOCK_CHECK) or by the environment
 * (VSNAPFS_LOCK_CHECK=1; =0 switches it off).  When on, every lock call
 * checks the rank against the locks this thread holds, and lock_held()
 * tells whether this thread holds a given lock; a violation prints both
 * locks and aborts.  When off, lock_held() is always true and a lock call
 * costs one extra branch.
 *
 * Errors:     none: a failing pthread call on a valid lock is a bug; abort.
 * Threads:    any; the bookkeeping is per thread.
 */
#ifndef VSNAPFS_LOCK_H
#define VSNAPFS_LOCK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

enum lock_rank {
	LOCK_NS_FLUSH = 1,
	LOCK_NS_DB,
	LOCK_VOL_GATE,
	LOCK_NS_FILES,
	LOCK_NS_LOAD,
	LOCK_VOL,
	LOCK_MCACHE,
	LOCK_CHUNK_SYNC,
	LOCK_CHUNK,
	LOCK_CHUNK_FD,
	LOCK_CHUNK_SIDE,
	LOCK_CHUNK_WB,
	LOCK_NS_LOG,
	LOCK_NS_SEQ,
	LOCK_NS_BG,
	LOCK_NS_STATS,
	LOCK_RANKS
};

struct lock_mutex {
	pthread_mutex_t m;
	enum lock_rank rank;            /* constant */
	const char *name;               /* constant, static storage */
	atomic_int owner;               /* tid of the holder, 0: none (checker on) */
};

struct lock_rw {
	pthread_rwlock_t l;
	enum lock_rank rank;            /* constant */
	const char *name;               /* constant, static storage */
	atomic_int writer;              /* tid of the exclusive holder, 0: none */
};

/* A static lock_mutex, initialised as lock_mutex_init would. */
#define LOCK_MUTEX_INIT(rank_, name_) \
	{ .m = PTHREAD_MUTEX_INITIALIZER, .rank = (rank_), .name = (name_), .owner = 0 }

/* Is the checker on (see above)?  Decided once, at the first lock call. */
bool lock_check_enabled(void);
/* For tests: switch it on or off for every thread from now on, while no
 * thread holds a ranked lock (a lock taken before is unknown to the
 * checker, and releasing it would abort). */
void lock_check_set(bool on);

void lock_mutex_init(struct lock_mutex *mu, enum lock_rank rank, const char *name);
void lock_mutex_destroy(struct lock_mutex *mu);
void lock_mutex_lock(struct lock_mutex *mu);
void lock_mutex_unlock(struct lock_mutex *mu);
/* pthread_cond_wait on mu. */
void lock_cond_wait(pthread_cond_t *cond, struct lock_mutex *mu);
/* pthread_cond_timedwait on mu: 0 or ETIMEDOUT. */
int lock_cond_timedwait(pthread_cond_t *cond, struct lock_mutex *mu, const struct timespec *abs);

/* prefer_writer: a stream of readers cannot starve a writer. */
void lock_rw_init(struct lock_rw *rw, enum lock_rank rank, const char *name, bool prefer_writer);
void lock_rw_destroy(struct lock_rw *rw);
void lock_rw_rdlock(struct lock_rw *rw);
void lock_rw_wrlock(struct lock_rw *rw);
void lock_rw_unlock(struct lock_rw *rw);

/*
 * Does this thread hold the lock (lock_rw_held: in either mode;
 * lock_rw_wrheld: exclusive)?  Always true with the checker off, so that
 * "assert(lock_held(&x))" documents and, in checked builds, enforces what
 * a function assumes.
 */
bool lock_mutex_held(const struct lock_mutex *mu);
bool lock_rw_held(const struct lock_rw *rw);
bool lock_rw_wrheld(const struct lock_rw *rw);

#define lock_held(l) _Generic((l), \
	struct lock_mutex *: lock_mutex_held, const struct lock_mutex *: lock_mutex_held, \
	struct lock_rw *: lock_rw_held, const struct lock_rw *: lock_rw_held)(l)

#endif
