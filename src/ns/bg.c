/*
 * bg: the background thread, and the work it does between two waits.
 *
 * It flushes every flush_ms, evicts clean volumes
 * nobody has open, deletes unlinked volumes, releases map nodes nothing
 * needs, and runs garbage collection (src/ns/gc.c) after deletions, when
 * space runs low, every gc_interval seconds (NS_DEFAULT_GC_INTERVAL_S), and after
 * every GC_AFTER_CHUNKS new chunk files, since overwrites make garbage as
 * fast as they write.  That last trigger is paced: a pass scans the whole
 * index, so the next one waits GC_PACE times as long as that scan took,
 * and so do the passes that follow one that found work; this keeps a big
 * store's collector to a fraction of one CPU.  It also gives the spare
 * chunk files back once nothing has been appended for NS_SPARE_IDLE_MS
 * (spares_tick), and writes the next chunk file ahead for a store that
 * syncs often (chunk_spare_prepare).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "ns/ns_int.h"
#include "vsnapfs/log.h"

#define GC_AFTER_CHUNKS (NS_GC_AFTER_BYTES / CHUNK_MAX_BYTES)   /* new chunk files that call for a pass */
#define GC_PACE         3               /* wait after a paced pass, in units of its scan time */

static bool unused_and_clean(const struct ns_file *f, void *ctx)
{
	return !f->refs && !f->attr_dirty && !atomic_load(&f->wtime_ns) && !vol_is_dirty(f->v);
}

/* Drop cached volumes that nobody uses and that have nothing to write. */
static void evict_clean(struct ns *ns)
{
	struct ns_file *dead;

	lock_mutex_lock(&ns->db_mu);
	lock_mutex_lock(&ns->files_mu);
	dead = ns_files_take(ns, unused_and_clean, NULL);
	lock_mutex_unlock(&ns->files_mu);
	lock_mutex_unlock(&ns->db_mu);
	ns_file_free_list(dead);
}

/*
 * Fold node into its only child, NS_MERGE_EXTS extent rows per transaction, letting
 * go of db_mu between two so that namespace calls and flushes do not wait
 * for a merge of millions of rows.  In between the index is consistent (see
 * bmap_node_merge_some), but things may change: the merge goes on only
 * while nothing names the node and child is still its only child, and
 * returns 0 otherwise (whoever changed that queues the node again if need
 * be).  Assumes db_mu; background thread only, which also runs every other
 * release and GC, so no other merge or deletion of these nodes runs
 * meanwhile.
 */
static int merge_node(struct ns *ns, uint64_t id, uint64_t child)
{
	assert(lock_held(&ns->db_mu));
	for (;;) {
		uint64_t refs, kids, only;
		bool done;
		int rc;

		rc = ns_txn_begin(ns);
		if (!rc)
			rc = bmap_node_merge_some(ns->bm, id, child, NS_MERGE_EXTS, &done);
		if (!rc)
			rc = ns_txn_commit(ns);
		if (rc)
			ns_txn_rollback(ns);
		/* what any volume shows is the same: no map page need go (a
		 * page load reads one transaction, before or after this) */
		if (rc)
			return rc;
		if (done)
			return 0;
		/* a mutex is not fair: give a waiting caller the time to get it */
		lock_mutex_unlock(&ns->db_mu);
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
		lock_mutex_lock(&ns->db_mu);
		rc = bmap_node_refs(ns->bm, id, &refs);
		if (!rc)
			rc = bmap_node_children(ns->bm, id, &kids);
		if (!rc && kids == 1)
			rc = bmap_node_only_child(ns->bm, id, &only);
		if (rc == -ENOENT || (!rc && (refs || kids != 1 || only != child)))
			return 0;
		if (rc)
			return rc;
	}
}

static int tell_merged(struct ns_file *f, void *ctx)
{
	const struct bmap_node *child = ctx;

	if (ino_kind(f->ino) == INO_LIVE && f->in.node == child->id)
		vol_merged(f->v, child->inherit);
	return 0;
}

/*
 * Steps of a merge into child committed (all of them, or some before one
 * failed).  child may be a live volume's node: its vol writes its inherit
 * limit back at flush, so tell it the new one, and it counts its own
 * blocks again (st_blocks: the moved rows are its own now).  Assumes
 * db_mu, so that no flush commits meanwhile.
 */
static void merged_into(struct ns *ns, uint64_t child)
{
	struct bmap_node c;

	if (bmap_node_get(ns->bm, child, &c) == 0) {
		lock_mutex_lock(&ns->files_mu);
		ns_files_foreach(ns, tell_merged, &c);
		lock_mutex_unlock(&ns->files_mu);
	}
}

/*
 * Release a map node that may no longer be needed (assumes db_mu).  A node
 * that an inode or a snapshot inode names stays.  Otherwise: with no
 * children it is deleted with its rows, and its parent is looked at next;
 * with one child it is folded into it (merge_node, which lets go of db_mu
 * between its transactions); with more it stays until it has one.  Each
 * step is one transaction or more.
 */
static int release_node(struct ns *ns, uint64_t id)
{
	int rc = 0;

	assert(lock_held(&ns->db_mu));
	while (id && !rc) {
		struct bmap_node n;
		uint64_t refs, kids, child;

		rc = bmap_node_refs(ns->bm, id, &refs);
		if (!rc)
			rc = bmap_node_children(ns->bm, id, &kids);
		if (!rc)
			rc = bmap_node_get(ns->bm, id, &n);
		if (rc == -ENOENT)
			return 0;               /* already gone */
		if (rc || refs || kids > 1)
			break;
		if (kids == 0) {
			rc = ns_txn_begin(ns);
			if (!rc)
				rc = bmap_node_delete(ns->bm, id);
			if (!rc)
				rc = ns_txn_commit(ns);
			if (rc)
				ns_txn_rollback(ns);
		} else {
			rc = bmap_node_only_child(ns->bm, id, &child);
			if (!rc) {
				rc = merge_node(ns, id, child);
				merged_into(ns, child);
			}
		}
		if (rc)
			break;
		atomic_store(&ns->gc_wanted, true);
		if (kids == 0) {
			id = n.parent;          /* it may have lost its last user */
			continue;
		}
		break;
	}
	if (rc)
		vlog(LOG_ERR, "releasing map node %" PRIu64 ": %s; retrying later", id, log_strerror(rc));
	return rc;
}


/*
 * Delete every queued unlinked volume (its inode, one transaction), then
 * release every queued node.  A crash half way leaves each step whole or
 * undone; nodes nobody names are found again at the next mount.
 */
int ns_reap_all(struct ns *ns)
{
	int rc = 0;

	lock_mutex_lock(&ns->db_mu);
	while (ns->reap.n && !rc) {
		uint64_t ino = ns->reap.v[ns->reap.n - 1];
		struct bmap_inode in;

		rc = bmap_inode_get(ns->bm, ino, &in);
		if (rc == -ENOENT) {
			rc = 0;
			ns->reap.n--;
			continue;
		}
		if (!rc && (in.kind != BMAP_VOL || in.parent != 0)) {
			/* only a volume out of the tree is deleted: anything else
			 * queued here is a bug, and deleting it would lose data */
			vlog(LOG_CRIT, "inode %" PRIu64 " was queued for deletion but has a name; "
			     "keeping it", ino);
			ns->reap.n--;
			continue;
		}
		if (!rc)
			rc = bmap_inode_delete(ns->bm, ino);
		if (rc) {
			vlog(LOG_ERR, "deleting unlinked inode %" PRIu64 ": %s; retrying later", ino,
			     log_strerror(rc));
			break;
		}
		if (in.node)
			ns_release_later(ns, in.node);
		ns->reap.n--;
	}
	/* popped first: release_node lets go of db_mu, and others push */
	while (ns->rel.n && !rc) {
		uint64_t id = ns->rel.v[--ns->rel.n];

		rc = release_node(ns, id);
		if (rc)
			ns_release_later(ns, id);
	}
	lock_mutex_unlock(&ns->db_mu);
	return rc;
}

/* ---- the background thread --------------------------------------------------- */

int ns_gc_request(struct ns *ns, struct ns_gc_stats *st)
{
	uint64_t mine;
	int rc = -ESHUTDOWN;

	if (!ns->bg_running)
		return -EROFS;          /* read-only: no background thread, no GC */
	lock_mutex_lock(&ns->bg_mu);
	mine = ++ns->gc_req;
	pthread_cond_signal(&ns->bg_cond);
	while (ns->gc_done < mine && !ns->bg_stop && !atomic_load(&ns->ctl_stop)) {
		struct timespec until;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 1;
		lock_cond_timedwait(&ns->gc_cond, &ns->bg_mu, &until);
	}
	if (ns->gc_done >= mine) {
		/* a later request may have been answered by the same pass */
		*st = ns->gc_last;
		rc = ns->gc_last_rc;
	}
	lock_mutex_unlock(&ns->bg_mu);
	return rc;
}

/* What spares_tick saw at its last look. */
struct spare_watch {
	uint64_t appends;               /* chunk_append_count() */
	int64_t appends_ns;             /* when that last moved */
	uint64_t fsyncs, written;       /* ns->fsyncs, ns->written */
	int64_t at_ns;                  /* when these were read */
};

/* Room on the host for a spare written ahead, well above the space reserve
 * (a spare holds space that the host counts as used until it is filled). */
static bool prepare_room(struct ns *ns)
{
	uint64_t file = CHUNK_FILE_MAX_BYTES(ns->bs);
	struct statvfs st;

	return statvfs(ns->dir, &st) == 0 &&
	       (uint64_t)st.f_bavail * st.f_frsize >= (uint64_t)ns->space_reserve + 4 * file;
}

static bool bg_stopping(void *ctx)
{
	struct ns *ns = ctx;
	bool stop;

	lock_mutex_lock(&ns->bg_mu);
	stop = ns->bg_stop;
	lock_mutex_unlock(&ns->bg_mu);
	return stop;
}

/*
 * Do the guests sync after small writes?  Over the last dt_ns: at least
 * SPARE_PREP_FSYNCS_S fsyncs a second, with less than SPARE_PREP_BYTES
 * written per fsync.  The background flush's own syncs are not fsyncs: a
 * store that is written slowly but never fsynced pays no commit that a
 * spare would save.
 */
bool ns_small_synced_writes(uint64_t fsyncs, uint64_t written, int64_t dt_ns)
{
	return dt_ns > 0 && fsyncs >= SPARE_PREP_FSYNCS_S &&
	       (double)fsyncs * 1e9 / (double)dt_ns >= SPARE_PREP_FSYNCS_S &&
	       written < fsyncs * SPARE_PREP_BYTES;
}

/* ns_small_synced_writes() since the last look. */
static bool small_synced_writes(struct ns *ns, struct spare_watch *sw, int64_t now)
{
	uint64_t fsyncs = atomic_load(&ns->fsyncs), written = atomic_load(&ns->written);
	bool small = ns_small_synced_writes(fsyncs - sw->fsyncs, written - sw->written,
					    now - sw->at_ns);

	sw->fsyncs = fsyncs;
	sw->written = written;
	sw->at_ns = now;
	return small;
}

/*
 * Spare chunk files (docs/design.md) make a stream of writes cheaper, but
 * hold host space that nothing else can use, and that a deletion was meant
 * to give back.  So they are kept only while writes come in: once no
 * append has been seen for NS_SPARE_IDLE_MS, every spare is unlinked and a
 * removed chunk file is unlinked at once, until appends start again.  A
 * store whose guests sync after small writes also gets the next chunk file
 * written ahead (chunk_spare_prepare).
 */
static void spares_tick(struct ns *ns, struct spare_watch *sw, int64_t now)
{
	uint64_t n = chunk_append_count(ns->cs);
	bool small;
	int rc;

	if (n != sw->appends) {
		sw->appends = n;
		sw->appends_ns = now;
	}
	rc = chunk_spares_limit(ns->cs, now - sw->appends_ns < (int64_t)NS_SPARE_IDLE_MS * 1000000 ?
				ns->spare_max : 0);
	if (rc)
		vlog(LOG_WARNING, "giving back spare chunk files: %s", log_strerror(rc));
	small = small_synced_writes(ns, sw, now);
	if (small)
		chunk_spare_switch(ns->cs);     /* one waits: a removed chunk, or written for the last */
	if (small && chunk_spare_wanted(ns->cs) && prepare_room(ns)) {
		rc = chunk_spare_prepare(ns->cs, bg_stopping, ns);
		if (rc < 0)
			vlog(LOG_WARNING, "writing a spare chunk file ahead: %s", log_strerror(rc));
	}
}

/* How long to wait for: flush_ms, but spares are given back
 * NS_SPARE_IDLE_MS after the last append whatever flush_ms says, so look
 * at least every fifth of that while there are some.  Takes chunk.mu:
 * call it without bg_mu. */
/* ---- referenced blocks not counted yet ------------------------------------------ */

#define REFS_BUDGET_NS  (50 * 1000000)           /* counting per tick, at most (about) */
#define REFS_IDLE_NS    (30 * 1000000000LL)      /* a round that did nothing: the next one */
#define REFS_WINDOW     (1ull << 20)             /* blocks of the index counted at a time */
#define REFS_STEP_BLOCKS (1u << 16)              /* counted per vol_refs_count_step */

struct refs_scan {
	uint64_t after;                 /* nodes up to this one were looked at this round */
	int64_t idle_until;             /* ns_mono_ns: no round before this */
	bool worked;                    /* this round counted something */
	uint64_t counted;               /* nodes counted this round */
	uint64_t total;                 /* in earlier rounds */
	/* the node being counted from the index, a window per step, across
	 * ticks (0: none) */
	uint64_t node, nb, lo, sum, gen;
	uint64_t *failed;               /* nodes whose count failed: not again this mount */
	size_t nfailed, failed_cap;
};

struct user_of {
	uint64_t node;
	struct ns_file *f;
	char name[BMAP_NAME_MAX + 1];
};

static int node_user(struct ns_file *f, void *ctx)
{
	struct user_of *u = ctx;

	if (ino_kind(f->ino) != INO_LIVE || f->in.node != u->node)
		return 0;
	u->f = f;
	memcpy(u->name, f->in.name, sizeof(u->name));
	return 1;
}

/* The live volume in the files table that uses node (its count changes
 * with it), with a reference the caller drops (ns_file_unref) if take,
 * else NULL; its name then, and files_gen.  Assumes db_mu. */
static struct ns_file *user_of(struct ns *ns, struct user_of *u, uint64_t node, uint64_t *gen,
			       bool take)
{
	*u = (struct user_of){ .node = node };
	lock_mutex_lock(&ns->files_mu);
	ns_files_foreach(ns, node_user, u);
	if (u->f && take)
		u->f->refs++;
	*gen = ns->files_gen;
	lock_mutex_unlock(&ns->files_mu);
	return u->f;
}

static bool refs_failed(const struct refs_scan *rs, uint64_t node)
{
	for (size_t i = 0; i < rs->nfailed; i++)
		if (rs->failed[i] == node)
			return true;
	return false;
}

/* A count that failed (a broken chain: check names it) is said once and
 * not tried again until the next mount. */
static void refs_fail(struct refs_scan *rs, uint64_t node, const char *what, int rc)
{
	vlog(LOG_WARNING, "counting the referenced blocks of %s: %s; its st_blocks shows its own "
	     "blocks until the next mount", what, log_strerror(rc));
	if (!ARRAY_RESERVE(rs->failed, rs->failed_cap, rs->nfailed, 8))
		rs->failed[rs->nfailed++] = node;
}

/* Count a volume in use, a step at a time (each holds its I/O up for one
 * step) until it has its count or the deadline passes; its next flush
 * writes the count.  Did it count anything?  Assumes nothing held; u->f
 * is referenced. */
static bool count_in_use(struct refs_scan *rs, struct user_of *u, int64_t deadline)
{
	bool done = vol_refs_known(u->f->v), worked = !done;
	int rc = 0;

	while (!done && !rc && ns_mono_ns() < deadline)
		rc = vol_refs_count_step(u->f->v, REFS_STEP_BLOCKS, &done);
	if (rc)
		refs_fail(rs, u->node, u->name, rc);
	return worked;
}

/* The node of rs, counted: written if nothing could have changed it. */
static void refs_finish(struct ns *ns, struct refs_scan *rs)
{
	struct user_of u;
	uint64_t gen, have;
	int rc;

	lock_mutex_lock(&ns->db_mu);
	if (!user_of(ns, &u, rs->node, &gen, false) && gen == rs->gen &&
	    bmap_refs_get(ns->bm, rs->node, &have) == -ENOENT && !ns_txn_begin(ns)) {
		rc = bmap_refs_set(ns->bm, rs->node, rs->sum);
		if (!rc)
			rc = ns_txn_commit(ns);
		if (rc)
			ns_txn_rollback(ns);
		rs->counted += !rc;
	}
	lock_mutex_unlock(&ns->db_mu);
	rs->node = 0;
}

/*
 * Count the referenced blocks of volume nodes the index has none for
 * (docs/design.md, "Referenced blocks"): those of a store made before the
 * count existed, those a crash recovery dropped blocks of, a partial
 * clone.  A node no live volume in the files table uses: from the index
 * alone (bmap_node_data_blocks) on the background thread's own read
 * connection, without db_mu, a window of REFS_WINDOW blocks per step (so
 * that a tick stays short and no read transaction lasts long, whatever
 * the size), the node kept across ticks; the sum is written only if no
 * volume was taken into the files table meanwhile (one could have changed
 * the node and gone).  Between two windows only merges and GC change the
 * index for such a node, and neither changes what it shows.  A node such a
 * volume uses: by its vol, a step at a time (vol_refs_count_step: the
 * index lags behind the vol, which knows by how much), written by its next
 * flush.  Assumes nothing held.
 */
static void refs_tick(struct ns *ns, struct refs_scan *rs, int64_t budget_ns)
{
	int64_t start = ns_mono_ns();
	int64_t deadline = budget_ns > INT64_MAX - start ? INT64_MAX : start + budget_ns;

	if (ns->readonly || start < rs->idle_until)
		return;
	while (ns_mono_ns() < deadline) {
		uint64_t node, size, n, gen = 0;
		struct user_of u;
		int rc;

		if (rs->node) {
			uint64_t hi = rs->lo + REFS_WINDOW < rs->nb ? rs->lo + REFS_WINDOW : rs->nb;

			rc = rs->lo < hi ? bmap_snapshot_begin(ns->bm_scan) : 0;
			if (!rc && rs->lo < hi) {
				rc = bmap_node_data_blocks(ns->bm_scan, rs->node, rs->lo, hi, &n);
				bmap_snapshot_end(ns->bm_scan);
				rs->sum += rc ? 0 : n;
				rs->lo = hi;
			}
			if (rc) {
				char what[48];

				snprintf(what, sizeof(what), "map node %" PRIu64, rs->node);
				refs_fail(rs, rs->node, what, rc);
				rs->node = 0;
			} else if (rs->lo >= rs->nb) {
				refs_finish(ns, rs);
			}
			rs->worked = true;
			continue;
		}
		lock_mutex_lock(&ns->db_mu);
		rc = bmap_refs_missing(ns->bm, rs->after, &node, &size);
		if (!rc && !refs_failed(rs, node))
			user_of(ns, &u, node, &gen, true);
		else
			u.f = NULL;
		lock_mutex_unlock(&ns->db_mu);
		if (rc == -ENOENT) {
			if (rs->counted)
				vlog(LOG_INFO, "counted the referenced blocks of %" PRIu64 " volume "
				     "nodes", rs->counted);
			/* a round that did nothing: the rest waits */
			if (!rs->worked)
				rs->idle_until = start + REFS_IDLE_NS;
			rs->after = 0;
			rs->worked = false;
			rs->total += rs->counted;
			rs->counted = 0;
			return;
		}
		if (rc < 0)
			return;
		rs->after = node;
		if (refs_failed(rs, node))
			continue;
		if (u.f) {
			/* its vol counts itself (the index lags behind it) */
			rs->worked |= count_in_use(rs, &u, deadline);
			ns_file_unref(ns, u.f);
			continue;
		}
		*rs = (struct refs_scan){ .after = rs->after, .idle_until = rs->idle_until,
					  .worked = rs->worked, .counted = rs->counted,
					  .total = rs->total, .node = node,
					  .nb = (size + ns->bs - 1) / ns->bs, .gen = gen,
					  .failed = rs->failed, .nfailed = rs->nfailed,
					  .failed_cap = rs->failed_cap };
	}
}

uint64_t ns_refs_count_all(struct ns *ns)
{
	struct refs_scan rs = { 0 };

	refs_tick(ns, &rs, INT64_MAX);
	free(rs.failed);
	return rs.total + rs.counted;
}

static uint32_t next_wait_ms(struct ns *ns)
{
	if (chunk_spare_bytes(ns->cs) && ns->flush_ms > NS_SPARE_IDLE_MS / 5)
		return NS_SPARE_IDLE_MS / 5;
	return ns->flush_ms;
}

void *ns_bg_main(void *arg)
{
	struct ns *ns = arg;
	int64_t last_gc = 0, gc_ns = 0;     /* start and scan time of the last pass */
	uint64_t gc_chunk = 0;              /* next chunk id at its start */
	struct spare_watch sw = { .appends_ns = ns_now_ns(), .at_ns = ns_now_ns() };
	bool more = false;                  /* it did work: there may be more */
	uint64_t gc_answered = 0;           /* the last ns->gc_req answered */
	int64_t last_flush = ns_now_ns();
	uint32_t wait_ms = next_wait_ms(ns);
	struct refs_scan rs = { 0 };

	lock_mutex_lock(&ns->bg_mu);
	while (!ns->bg_stop) {
		struct timespec until;
		struct ns_gc_stats st = { 0 };
		int64_t pass_at = 0, pass_ns = 0;       /* a pass ran: its start and length */
		uint64_t asked;
		int64_t now;
		bool woken;
		int rc = -EIO;          /* a poisoned store runs no pass */

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += (long)(wait_ms % 1000) * 1000000;
		until.tv_sec += wait_ms / 1000 + until.tv_nsec / 1000000000;
		until.tv_nsec %= 1000000000;
		/* a GC request signalled while we were busy is not lost */
		woken = ns->gc_req != gc_answered ||
			lock_cond_timedwait(&ns->bg_cond, &ns->bg_mu, &until) == 0;
		if (ns->bg_stop)
			break;
		asked = ns->gc_req;     /* a pass that starts from here answers it */
		lock_mutex_unlock(&ns->bg_mu);

		now = ns_now_ns();
		if (!woken && now - last_flush < (int64_t)ns->flush_ms * 1000000) {
			spares_tick(ns, &sw, now);
			wait_ms = next_wait_ms(ns);
			lock_mutex_lock(&ns->bg_mu);
			continue;               /* only the spares were due */
		}
		last_flush = now;
		ns_flush(ns);
		ns_checkpoint(ns);
		evict_clean(ns);
		ns_reap_all(ns);
		refs_tick(ns, &rs, REFS_BUDGET_NS);
		now = ns_now_ns();
		spares_tick(ns, &sw, now);
		/* no GC in a poisoned store: nothing may be moved (chunk_sync) */
		if (!chunk_poisoned(ns->cs) &&
		    (atomic_load(&ns->gc_wanted) || asked != gc_answered ||
		     now - last_gc > (int64_t)ns->gc_interval_s * 1000000000 ||
		     ((more || chunk_next_id(ns->cs) - gc_chunk >= GC_AFTER_CHUNKS) &&
		      now - last_gc - gc_ns >= GC_PACE * gc_ns))) {
			atomic_store(&ns->gc_wanted, false);
			gc_chunk = chunk_next_id(ns->cs);
			pass_at = ns_now_ns();
			rc = ns_gc(ns, &st);
			pass_ns = ns_now_ns() - pass_at;
			gc_ns = st.work_ns;
			/* did work: there may be more, go on when the pace allows */
			more = rc > 0 || rc == -EAGAIN;
			last_gc = now;
		}
		wait_ms = next_wait_ms(ns);
		lock_mutex_lock(&ns->bg_mu);
		if (pass_at) {
			ns->gc_passes++;
			ns->gc_pass = st;
			ns->gc_pass_at_ns = pass_at;
			ns->gc_pass_ns = pass_ns;
			ns->gc_pass_rc = rc < 0 ? rc : 0;
		}
		if (asked != gc_answered) {
			gc_answered = asked;
			ns->gc_done = asked;
			ns->gc_last = st;
			ns->gc_last_rc = rc < 0 ? rc : 0;
			pthread_cond_broadcast(&ns->gc_cond);
		}
	}
	lock_mutex_unlock(&ns->bg_mu);
	free(rs.failed);
	return NULL;
}
