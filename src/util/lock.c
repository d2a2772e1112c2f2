/*
 * lock: ranked locks and their checker (see include/vsnapfs/lock.h).
 *
 * Each thread keeps, per rank, how many locks of that rank it holds, and
 * the list of rwlocks it holds shared (a thread holds few: a gate, a
 * volume's lock, the chunk fd cache).  Taking a lock checks that no lock
 * of the same or a higher rank is held (the same rank is allowed for the
 * ranks marked "several", but not the same lock twice, in any mode).
 * Exclusive holders are recorded in the lock itself (owner, writer),
 * which is what lock_held() reads for mutexes and write locks; a shared
 * hold is found in the thread's list.  The per-thread state needs no
 * lock: only its own thread touches it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vsnapfs/lock.h"
#include "vsnapfs/log.h"

#ifdef VSNAPFS_LOCK_CHECK
#define CHECK_DEFAULT 1
#else
#define CHECK_DEFAULT 0
#endif

static const struct {
	const char *name;
	bool several;
} ranks[LOCK_RANKS] = {
	[LOCK_NS_FLUSH]   = { "ns.flush_mu", false },
	[LOCK_NS_LOAD]    = { "ns.load_mu", false },
	[LOCK_NS_DB]      = { "ns.db_mu", false },
	[LOCK_VOL_GATE]   = { "vol.gate", true },
	[LOCK_NS_FILES]   = { "ns.files_mu", false },
	[LOCK_VOL]        = { "vol.lock", false },
	[LOCK_MCACHE]     = { "mcache.mu", false },
	[LOCK_CHUNK_SYNC] = { "chunk.sync_mu", false },
	[LOCK_CHUNK]      = { "chunk.mu", false },
	[LOCK_CHUNK_FD]   = { "chunk.fd_lock", false },
	[LOCK_CHUNK_SIDE] = { "chunk.side_mu", false },
	[LOCK_CHUNK_WB]   = { "chunk.wb_mu", false },
	[LOCK_NS_LOG]     = { "ns.log_mu", false },
	[LOCK_NS_SEQ]     = { "ns.seq_mu", false },
	[LOCK_NS_BG]      = { "ns.bg_mu", false },
	[LOCK_NS_STATS]   = { "ns.stats_mu", false },
};

static atomic_int check_state = -1;     /* -1: not decided yet, 0 off, 1 on */

#define SHARED_MAX 16                   /* rwlocks one thread holds shared, at most */

struct held {                           /* this thread's locks */
	unsigned count[LOCK_RANKS];
	const struct lock_rw *shared[SHARED_MAX];
	unsigned nshared;
	int tid;
};

static __thread struct held me;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* A child of fork() is a new thread with the parent's thread-local copy:
 * its cached tid is the parent's.  (It holds no lock: the daemon forks
 * before it takes any, and tests fork with none held.) */
static void forget_tid(void)
{
	me.tid = 0;
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, forget_tid);
}

bool lock_check_enabled(void)
{
	int s = atomic_load_explicit(&check_state, memory_order_relaxed);

	if (s < 0) {
		const char *env = getenv("VSNAPFS_LOCK_CHECK");

		s = env && *env ? strcmp(env, "0") != 0 : CHECK_DEFAULT;
		atomic_store(&check_state, s);
	}
	return s;
}

void lock_check_set(bool on)
{
	atomic_store(&check_state, on);
}

static int self(void)
{
	if (!me.tid) {
		pthread_once(&atfork_once, register_atfork);
		me.tid = gettid();
	}
	return me.tid;
}

static void die(const char *what, const char *name, enum lock_rank rank)
{
	char line[512];
	int n = snprintf(line, sizeof(line), "lock order: %s %s (rank %d) while holding", what,
			 name, rank);

	for (int r = 1; r < LOCK_RANKS && n < (int)sizeof(line); r++)
		if (me.count[r])
			n += snprintf(line + n, sizeof(line) - n, " %s (rank %d)%s", ranks[r].name, r,
				      me.count[r] > 1 ? " x several" : "");
	vlog(LOG_CRIT, "%s", line);
	abort();
}

/* Before taking lock (of rank) in this thread. */
static void check_take(enum lock_rank rank, const char *name, int owner)
{
	if (rank <= 0 || rank >= LOCK_RANKS)
		die("taking unranked lock", name, rank);
	if (owner == self())
		die("taking again", name, rank);
	for (int r = rank + 1; r < LOCK_RANKS; r++)
		if (me.count[r])
			die("taking", name, rank);
	if (me.count[rank] && !ranks[rank].several)
		die("taking", name, rank);
}

static void note_take(enum lock_rank rank)
{
	me.count[rank]++;
}

static void note_release(enum lock_rank rank, const char *name)
{
	if (!me.count[rank])
		die("releasing a lock not held:", name, rank);
	me.count[rank]--;
}

/* Index of rw in this thread's shared holds, or -1. */
static int shared_find(const struct lock_rw *rw)
{
	for (unsigned i = 0; i < me.nshared; i++)
		if (me.shared[i] == rw)
			return (int)i;
	return -1;
}

static void must(int rc, const char *what, const char *name)
{
	if (rc) {
		vlog(LOG_CRIT, "%s %s: %s", what, name, strerror(rc));
		abort();
	}
}

/* ---- mutexes ------------------------------------------------------------------ */

void lock_mutex_init(struct lock_mutex *mu, enum lock_rank rank, const char *name)
{
	must(pthread_mutex_init(&mu->m, NULL), "initialising", name);
	mu->rank = rank;
	mu->name = name;
	atomic_init(&mu->owner, 0);
}

void lock_mutex_destroy(struct lock_mutex *mu)
{
	pthread_mutex_destroy(&mu->m);
}

void lock_mutex_lock(struct lock_mutex *mu)
{
	bool check = lock_check_enabled();

	if (check)
		check_take(mu->rank, mu->name, atomic_load(&mu->owner));
	must(pthread_mutex_lock(&mu->m), "locking", mu->name);
	if (check) {
		note_take(mu->rank);
		atomic_store(&mu->owner, self());
	}
}

void lock_mutex_unlock(struct lock_mutex *mu)
{
	if (lock_check_enabled()) {
		if (atomic_load(&mu->owner) != self())
			die("releasing a lock not held:", mu->name, mu->rank);
		atomic_store(&mu->owner, 0);
		note_release(mu->rank, mu->name);
	}
	must(pthread_mutex_unlock(&mu->m), "unlocking", mu->name);
}

void lock_cond_wait(pthread_cond_t *cond, struct lock_mutex *mu)
{
	bool check = lock_check_enabled();

	/* as lock_cond_timedwait */
	if (check)
		atomic_store(&mu->owner, 0);
	must(pthread_cond_wait(cond, &mu->m), "waiting on", mu->name);
	if (check)
		atomic_store(&mu->owner, self());
}

int lock_cond_timedwait(pthread_cond_t *cond, struct lock_mutex *mu, const struct timespec *abs)
{
	bool check = lock_check_enabled();
	int rc;

	/* the thread still counts the lock as held: it takes nothing while
	 * it waits, and has it again when the wait returns */
	if (check)
		atomic_store(&mu->owner, 0);
	rc = pthread_cond_timedwait(cond, &mu->m, abs);
	if (check)
		atomic_store(&mu->owner, self());
	if (rc && rc != ETIMEDOUT)
		must(rc, "waiting on", mu->name);
	return rc;
}

bool lock_mutex_held(const struct lock_mutex *mu)
{
	return !lock_check_enabled() || atomic_load(&mu->owner) == self();
}

/* ---- rwlocks ------------------------------------------------------------------- */

void lock_rw_init(struct lock_rw *rw, enum lock_rank rank, const char *name, bool prefer_writer)
{
	pthread_rwlockattr_t a;

	must(pthread_rwlockattr_init(&a), "initialising", name);
	if (prefer_writer)
		pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	must(pthread_rwlock_init(&rw->l, &a), "initialising", name);
	pthread_rwlockattr_destroy(&a);
	rw->rank = rank;
	rw->name = name;
	atomic_init(&rw->writer, 0);
}

void lock_rw_destroy(struct lock_rw *rw)
{
	pthread_rwlock_destroy(&rw->l);
}

/* Before taking rw in either mode: not already held here, in either mode. */
static void check_take_rw(struct lock_rw *rw)
{
	if (shared_find(rw) >= 0)
		die("taking again", rw->name, rw->rank);
	check_take(rw->rank, rw->name, atomic_load(&rw->writer));
}

void lock_rw_rdlock(struct lock_rw *rw)
{
	bool check = lock_check_enabled();

	if (check) {
		check_take_rw(rw);
		if (me.nshared == SHARED_MAX)
			die("taking one shared lock too many:", rw->name, rw->rank);
	}
	must(pthread_rwlock_rdlock(&rw->l), "read-locking", rw->name);
	if (check) {
		note_take(rw->rank);
		me.shared[me.nshared++] = rw;
	}
}

void lock_rw_wrlock(struct lock_rw *rw)
{
	bool check = lock_check_enabled();

	if (check)
		check_take_rw(rw);
	must(pthread_rwlock_wrlock(&rw->l), "write-locking", rw->name);
	if (check) {
		note_take(rw->rank);
		atomic_store(&rw->writer, self());
	}
}

void lock_rw_unlock(struct lock_rw *rw)
{
	if (lock_check_enabled()) {
		int i = shared_find(rw);

		if (atomic_load(&rw->writer) == self())
			atomic_store(&rw->writer, 0);
		else if (i >= 0)
			me.shared[i] = me.shared[--me.nshared];
		else
			die("releasing a lock not held:", rw->name, rw->rank);
		note_release(rw->rank, rw->name);
	}
	must(pthread_rwlock_unlock(&rw->l), "unlocking", rw->name);
}

bool lock_rw_held(const struct lock_rw *rw)
{
	return !lock_check_enabled() || atomic_load(&rw->writer) == self() || shared_find(rw) >= 0;
}

bool lock_rw_wrheld(const struct lock_rw *rw)
{
	return !lock_check_enabled() || atomic_load(&rw->writer) == self();
}
