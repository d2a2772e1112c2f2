/*
 * Unit tests of the ranked locks (src/util/lock.c): the checker lets locks
 * be taken in increasing rank only, and knows who holds what.  Every test
 * switches the checker on itself, whatever the build.
 */
#include <criterion/criterion.h>
#include <signal.h>

#include "vsnapfs/lock.h"

static struct lock_mutex db, files, seq;
static struct lock_rw gate_a, gate_b, vlock;

static void setup(void)
{
	lock_check_set(true);
	lock_mutex_init(&db, LOCK_NS_DB, "ns.db_mu");
	lock_mutex_init(&files, LOCK_NS_FILES, "ns.files_mu");
	lock_mutex_init(&seq, LOCK_NS_SEQ, "ns.seq_mu");
	lock_rw_init(&gate_a, LOCK_VOL_GATE, "vol.gate", true);
	lock_rw_init(&gate_b, LOCK_VOL_GATE, "vol.gate", true);
	lock_rw_init(&vlock, LOCK_VOL, "vol.lock", false);
}

TestSuite(lock, .init = setup);

Test(lock, increasing_ranks_are_allowed_and_known_as_held)
{
	cr_assert(!lock_held(&db));
	lock_mutex_lock(&db);
	lock_rw_wrlock(&gate_a);
	lock_mutex_lock(&files);
	lock_rw_rdlock(&vlock);
	cr_assert(lock_held(&db));
	cr_assert(lock_held(&files));
	cr_assert(lock_rw_wrheld(&gate_a));
	cr_assert(lock_held(&vlock));
	cr_assert(!lock_rw_wrheld(&vlock), "a shared hold is not an exclusive one");
	/* release in any order */
	lock_mutex_unlock(&db);
	lock_rw_unlock(&vlock);
	lock_mutex_unlock(&files);
	lock_rw_unlock(&gate_a);
	cr_assert(!lock_held(&db));
	cr_assert(!lock_held(&files));
	cr_assert(!lock_held(&vlock));
	/* and again, now that nothing is held */
	lock_mutex_lock(&seq);
	lock_mutex_unlock(&seq);
}

Test(lock, a_lower_rank_after_a_higher_one_aborts, .signal = SIGABRT)
{
	lock_mutex_lock(&files);
	lock_mutex_lock(&db);           /* db_mu ranks before files_mu */
}

Test(lock, a_gate_after_files_mu_aborts, .signal = SIGABRT)
{
	lock_mutex_lock(&files);
	lock_rw_wrlock(&gate_a);
}

Test(lock, the_same_mutex_twice_aborts, .signal = SIGABRT)
{
	lock_mutex_lock(&db);
	lock_mutex_lock(&db);
}

Test(lock, a_second_lock_of_a_single_rank_aborts, .signal = SIGABRT)
{
	struct lock_rw other;

	lock_rw_init(&other, LOCK_VOL, "vol.lock", false);
	lock_rw_rdlock(&vlock);
	lock_rw_rdlock(&other);
}

Test(lock, several_gates_may_be_held_at_once)
{
	lock_mutex_lock(&db);
	lock_rw_wrlock(&gate_a);
	lock_rw_wrlock(&gate_b);
	cr_assert(lock_rw_wrheld(&gate_a) && lock_rw_wrheld(&gate_b));
	lock_mutex_lock(&files);
	lock_mutex_unlock(&files);
	lock_rw_unlock(&gate_b);
	lock_rw_unlock(&gate_a);
	lock_mutex_unlock(&db);
}

Test(lock, the_same_gate_twice_aborts, .signal = SIGABRT)
{
	lock_rw_wrlock(&gate_a);
	lock_rw_rdlock(&gate_a);
}

Test(lock, releasing_a_mutex_not_held_aborts, .signal = SIGABRT)
{
	lock_mutex_unlock(&db);
}

static void *hold_db(void *arg)
{
	lock_mutex_lock(&db);
	*(bool *)arg = lock_held(&db);
	lock_mutex_unlock(&db);
	return NULL;
}

Test(lock, a_lock_held_by_another_thread_is_not_held_here)
{
	pthread_t t;
	bool there = false;

	cr_assert_eq(pthread_create(&t, NULL, hold_db, &there), 0);
	pthread_join(t, NULL);
	cr_assert(there);
	cr_assert(!lock_held(&db));
	/* another thread's ranks do not count against this one's */
	lock_mutex_lock(&files);
	cr_assert_eq(pthread_create(&t, NULL, hold_db, &there), 0);
	pthread_join(t, NULL);
	lock_mutex_unlock(&files);
}

Test(lock, with_the_checker_off_nothing_is_checked)
{
	lock_check_set(false);
	lock_mutex_lock(&files);
	lock_mutex_lock(&db);
	cr_assert(lock_held(&seq), "off: lock_held is always true");
	lock_mutex_unlock(&db);
	lock_mutex_unlock(&files);
}

Test(lock, a_rwlock_held_shared_then_taken_exclusive_aborts, .signal = SIGABRT)
{
	lock_rw_rdlock(&gate_a);
	lock_rw_wrlock(&gate_a);        /* would wait for itself for ever */
}

Test(lock, releasing_an_rwlock_not_held_aborts, .signal = SIGABRT)
{
	lock_rw_rdlock(&gate_a);
	lock_rw_unlock(&gate_b);        /* same rank, another lock */
}

Test(lock, every_gate_held_shared_is_known_as_held)
{
	lock_rw_rdlock(&gate_a);
	lock_rw_rdlock(&gate_b);
	cr_assert(lock_held(&gate_a) && lock_held(&gate_b));
	lock_rw_unlock(&gate_b);
	cr_assert(lock_held(&gate_a), "the other gate is still held");
	cr_assert(!lock_held(&gate_b));
	lock_rw_unlock(&gate_a);
	cr_assert(!lock_held(&gate_a));
}

/* The map cache's mutex ranks between vol.lock and the chunk store (D4). */
Test(lock, mcache_mu_ranks_after_vol_lock_and_before_chunk_sync)
{
	struct lock_mutex mc, sync;

	lock_mutex_init(&mc, LOCK_MCACHE, "mcache.mu");
	lock_mutex_init(&sync, LOCK_CHUNK_SYNC, "chunk.sync_mu");
	cr_assert(LOCK_VOL < LOCK_MCACHE && LOCK_MCACHE < LOCK_CHUNK_SYNC);
	lock_rw_rdlock(&vlock);
	lock_mutex_lock(&mc);
	lock_mutex_lock(&sync);
	cr_assert(lock_held(&mc));
	lock_mutex_unlock(&sync);
	lock_mutex_unlock(&mc);
	lock_rw_unlock(&vlock);
}

Test(lock, vol_lock_after_mcache_mu_aborts, .signal = SIGABRT)
{
	struct lock_mutex mc;

	lock_mutex_init(&mc, LOCK_MCACHE, "mcache.mu");
	lock_mutex_lock(&mc);
	lock_rw_rdlock(&vlock);
}

/* A page load: a change holds its gate (and a clone db_mu) when it takes
 * load_mu, then inserts the page under vol.lock (src/vol/vol.c). */
Test(lock, load_mu_ranks_after_the_gate_and_files_mu_and_before_vol_lock)
{
	struct lock_mutex load;

	lock_mutex_init(&load, LOCK_NS_LOAD, "ns.load_mu");
	cr_assert(LOCK_NS_DB < LOCK_VOL_GATE && LOCK_NS_FILES < LOCK_NS_LOAD &&
		  LOCK_NS_LOAD < LOCK_VOL);
	lock_mutex_lock(&db);
	lock_rw_rdlock(&gate_a);
	lock_mutex_lock(&load);
	lock_rw_wrlock(&vlock);
	cr_assert(lock_held(&load));
	lock_rw_unlock(&vlock);
	lock_mutex_unlock(&load);
	lock_rw_unlock(&gate_a);
	lock_mutex_unlock(&db);
}

Test(lock, load_mu_under_vol_lock_aborts, .signal = SIGABRT)
{
	struct lock_mutex load;

	lock_mutex_init(&load, LOCK_NS_LOAD, "ns.load_mu");
	lock_rw_rdlock(&vlock);
	lock_mutex_lock(&load);
}

Test(lock, db_mu_under_load_mu_aborts, .signal = SIGABRT)
{
	struct lock_mutex load;

	lock_mutex_init(&load, LOCK_NS_LOAD, "ns.load_mu");
	lock_mutex_lock(&load);
	lock_mutex_lock(&db);
}
