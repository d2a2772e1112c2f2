/*
 * flush: how writes become durable, and how they reach the index
 * (docs/design.md, D3: "One sync per fsync: the chunk files are the log").
 *
 * A flush, one at a time under flush_mu:
 *   1. collect: take the dirty blocks of every volume in use (vol_collect),
 *      and encode them with each volume's size and times as one log batch
 *      (vsnapfs/wal.h) numbered lsn_next;
 *   2. chunk_log_append() the batch into the active chunk, then
 *      chunk_sync(): one fdatasync makes the data and the batch durable
 *      together (two when a chunk filled meanwhile);
 *   3. queue the batch (logq) for the checkpoint.  No SQLite.
 * On failure before the sync every collected block is marked dirty again
 * and the lsn is not spent, so the next flush retries with it; a failed
 * sync poisons the store (chunk_sync).
 *
 * The checkpoint (ns_checkpoint, the background thread every flush
 * interval) applies the queued batches to the index in one transaction
 * that also records ckpt_lsn, the last batch in it, and ckpt_chunk, the
 * chunk that holds that batch, where crash recovery starts reading the
 * log (src/ns/recover.c).  The SAME transaction step, ns_txn_begin,
 * starts every other transaction of the index that changes it (snapshots,
 * clones, namespace calls, merges, GC moves): queued batches are applied
 * first, so the index is never changed "under" a batch that is not in it
 * yet, and a crash replays exactly what the checkpoint would have done
 * (rule L1).  A batch too big for the log (more than LOG_MAX_BYTES) goes
 * straight to the index the same way, after the sync.
 *
 * After a commit the applied batches are "settled" (ns_settle, under
 * flush_mu, without db_mu): their entries leave the volumes' deltas and
 * their files' references are dropped.  Until then the delta still shows
 * them, which is right: the index and the delta agree.
 *
 * Group commit: fsync() needs a flush that STARTED after the call began
 * (earlier ones may have collected before its writes).  Callers that arrive
 * while a flush runs wait for flush_mu; when they get it, if a flush that
 * started after their arrival has finished meanwhile, they are done.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ns/ns_int.h"
#include "vsnapfs/log.h"
#include "vsnapfs/wal.h"

#define LOG_MAX_BYTES (CHUNK_MAX_BYTES / 4)     /* a bigger batch goes straight to the index */
#define CKPT_WAKE_RECS 8192                     /* queued records that call for a checkpoint */

int ns_hold(struct ns *ns, struct holdset *hs, struct ns_file *f)
{
	assert(lock_held(&ns->files_mu));
	if (ARRAY_RESERVE(hs->h, hs->cap, hs->n, 16))
		return -ENOMEM;
	memset(&hs->h[hs->n], 0, sizeof(hs->h[0]));
	hs->h[hs->n++].f = f;
	f->refs++;
	return 0;
}

struct gathered {
	struct ns *ns;
	struct holdset hs;
};

static int gather_one(struct ns_file *f, void *ctx)
{
	struct gathered *g = ctx;

	if (!vol_is_dirty(f->v) && !f->attr_dirty && !atomic_load(&f->wtime_ns))
		return 0;
	return ns_hold(g->ns, &g->hs, f);
}

/* Files with anything to write, each with a reference taken. */
static int gather(struct ns *ns, struct held **out, size_t *n)
{
	struct gathered g = { .ns = ns };
	int rc;

	lock_mutex_lock(&ns->files_mu);
	rc = ns_files_foreach(ns, gather_one, &g);
	lock_mutex_unlock(&ns->files_mu);
	*out = g.hs.h;
	*n = g.hs.n;
	return rc;
}

int ns_held_collect(struct ns *ns, struct held *h)
{
	struct ns_file *f = h->f;
	int64_t w = atomic_exchange(&f->wtime_ns, 0);
	int rc = vol_collect(f->v, &h->b);

	lock_mutex_lock(&ns->files_mu);
	if (w > f->in.mtime_ns)
		f->in.mtime_ns = f->in.ctime_ns = w;
	if (!rc)
		f->in.size = h->b.size;
	f->attr_dirty = false;
	h->in = f->in;
	lock_mutex_unlock(&ns->files_mu);
	if (rc)
		atomic_store(&f->wtime_ns, w);
	return rc;
}

/* The log records of n collected volumes. */
static int held_encode(struct held *h, size_t n, struct wal_buf *w)
{
	int rc = wal_buf_init(w);

	for (size_t i = 0; i < n && !rc; i++) {
		rc = wal_put_vol(w, &h[i].b);
		if (!rc)
			rc = wal_put_inode(w, h[i].in.ino, h[i].in.size, h[i].in.mtime_ns,
					   h[i].in.ctime_ns);
	}
	return rc;
}

/* Apply w, a batch that does not go to the log, in the open transaction. */
static int apply_unlogged(struct ns *ns, struct wal_buf *w)
{
	struct wal_view v;

	wal_seal(w, 0, 0, 0);
	wal_view_of(w, &v);
	return wal_apply(ns->bm, &v, NULL, NULL);
}

int ns_held_apply(struct ns *ns, struct held *h, size_t n)
{
	struct wal_buf w = { 0 };
	int rc;

	assert(lock_held(&ns->db_mu));
	rc = held_encode(h, n, &w);
	if (!rc)
		rc = apply_unlogged(ns, &w);
	wal_buf_free(&w);
	return rc;
}

void ns_held_done(struct ns *ns, struct held *h, size_t n, int rc)
{
	for (size_t i = 0; i < n; i++) {
		if (rc) {
			lock_mutex_lock(&ns->files_mu);
			h[i].f->attr_dirty = true;
			lock_mutex_unlock(&ns->files_mu);
		}
		vol_batch_done(&h[i].b, rc);
		vol_batch_free(&h[i].b);
	}
}

/* ---- the queue of logged batches ------------------------------------------------ */

struct logent {
	uint64_t lsn;
	uint64_t chunk;                 /* the chunk holding it */
	struct held *h;                 /* its volumes, with references */
	size_t n;
	struct wal_buf w;
};

static int logq_push(struct logq *q, struct logent *e)
{
	if (ARRAY_RESERVE(q->v, q->cap, q->n, 64))
		return -ENOMEM;
	q->v[q->n++] = e;
	return 0;
}

/* Drop the first n entries of q (their pointers). */
static void logq_shift(struct logq *q, size_t n)
{
	memmove(q->v, q->v + n, (q->n - n) * sizeof(q->v[0]));
	q->n -= n;
}

/*
 * The first step of every transaction of the index that changes it:
 * begin, and apply every queued batch (L1).  Assumes db_mu.  The batches
 * stay queued until ns_txn_commit says the commit held.
 */
int ns_txn_begin(struct ns *ns)
{
	struct logent **take = NULL;
	struct wal_inodes inodes = { 0 };
	uint64_t lsn = 0, chunk = 0, in_doubt;
	size_t n;
	int rc;

	assert(lock_held(&ns->db_mu));
	rc = bmap_begin(ns->bm);
	if (rc)
		return rc;
	lock_mutex_lock(&ns->log_mu);
	n = ns->logq.n;
	if (n && !(take = malloc(n * sizeof(*take))))
		rc = -ENOMEM;
	else if (n)
		memcpy(take, ns->logq.v, n * sizeof(*take));
	in_doubt = ns->lsn_in_doubt;
	lock_mutex_unlock(&ns->log_mu);
	for (size_t i = 0; i < n && !rc; i++) {
		struct wal_view v;

		wal_view_of(&take[i]->w, &v);
		rc = wal_apply_deferred(ns->bm, &v, NULL, NULL, &inodes);
		lsn = take[i]->lsn;
		chunk = take[i]->chunk;
	}
	if (!rc)
		rc = wal_inodes_apply(ns->bm, &inodes);
	wal_inodes_free(&inodes);
	/* a batch whose sync failed may be on disk: recovery must not apply
	 * it on top of this transaction (nothing acknowledged it) */
	if (!rc && in_doubt > ns->ckpt_lsn && in_doubt > lsn)
		lsn = in_doubt;
	if (!rc && lsn) {
		rc = bmap_meta_set(ns->bm, "ckpt_lsn", lsn);
		if (!rc && chunk)
			rc = bmap_meta_set(ns->bm, "ckpt_chunk", chunk);
	}
	if (!rc)
		rc = bmap_meta_set(ns->bm, "next_chunk_id", chunk_next_id(ns->cs));
	free(take);
	if (rc) {
		bmap_rollback(ns->bm);
		return rc;
	}
	ns->txn_taken = n;
	ns->txn_lsn = lsn;
	return 0;
}

int ns_txn_commit(struct ns *ns)
{
	int rc = 0;

	assert(lock_held(&ns->db_mu));
	/* room on the settle list first (ns_settle never shrinks it), so
	 * that a committed batch always gets there */
	lock_mutex_lock(&ns->log_mu);
	while (!rc && ns->settle.cap < ns->settle.n + ns->txn_taken)
		rc = ARRAY_RESERVE(ns->settle.v, ns->settle.cap, ns->settle.cap, 64);
	lock_mutex_unlock(&ns->log_mu);
	if (!rc)
		rc = bmap_commit(ns->bm);
	if (rc)
		return rc;              /* the caller rolls back */
	if (ns->txn_lsn)
		ns->ckpt_lsn = ns->txn_lsn;
	if (ns->txn_taken) {
		/* the queue only grows at its end meanwhile (flush_mu holders
		 * push; only db_mu holders take, from the front) */
		lock_mutex_lock(&ns->log_mu);
		for (size_t i = 0; i < ns->txn_taken; i++) {
			ns->logq_recs -= ns->logq.v[i]->w.nrecs;
			rc = logq_push(&ns->settle, ns->logq.v[i]);     /* reserved */
			assert(!rc);
		}
		logq_shift(&ns->logq, ns->txn_taken);
		lock_mutex_unlock(&ns->log_mu);
	}
	ns->txn_taken = 0;
	ns->txn_lsn = 0;
	return 0;
}

void ns_txn_rollback(struct ns *ns)
{
	assert(lock_held(&ns->db_mu));
	bmap_rollback(ns->bm);
	ns->txn_taken = 0;
	ns->txn_lsn = 0;
}

/*
 * Batches in the index: drop their entries from the deltas and their
 * references, in the order they were committed.  Assumes flush_mu (which
 * keeps two settles from reordering one volume's batches) and not db_mu
 * (ns_file_unref takes it).
 */
void ns_settle(struct ns *ns)
{
	struct logent *take[64];
	size_t n;

	assert(lock_held(&ns->flush_mu));
	do {
		/* a few at a time, by copy: the list keeps its room (ns_txn_commit
		 * reserved it) */
		lock_mutex_lock(&ns->log_mu);
		n = ns->settle.n < 64 ? ns->settle.n : 64;
		if (n) {
			memcpy(take, ns->settle.v, n * sizeof(take[0]));
			logq_shift(&ns->settle, n);
		}
		lock_mutex_unlock(&ns->log_mu);
		for (size_t i = 0; i < n; i++) {
			struct logent *e = take[i];

			ns_held_done(ns, e->h, e->n, 0);
			for (size_t j = 0; j < e->n; j++)
				ns_file_unref(ns, e->h[j].f);
			free(e->h);
			wal_buf_free(&e->w);
			free(e);
		}
	} while (n);
}

static void logq_free(struct logq *q)
{
	for (size_t i = 0; i < q->n; i++) {
		for (size_t j = 0; j < q->v[i]->n; j++)
			vol_batch_free(&q->v[i]->h[j].b);
		free(q->v[i]->h);
		wal_buf_free(&q->v[i]->w);
		free(q->v[i]);
	}
	free(q->v);
	*q = (struct logq){ 0 };
}

void ns_log_free(struct ns *ns)
{
	logq_free(&ns->logq);
	logq_free(&ns->settle);
}

/*
 * One transaction with nothing of its own but the queued batches (and w,
 * a batch not logged, if not NULL): a checkpoint.  Takes db_mu; its
 * failure is logged with what.
 */
static int checkpoint_txn(struct ns *ns, struct wal_buf *w, const char *what)
{
	int rc;

	lock_mutex_lock(&ns->db_mu);
	rc = ns_txn_begin(ns);
	if (!rc && w)
		rc = apply_unlogged(ns, w);
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc) {
		ns_txn_rollback(ns);
		vlog(LOG_ERR, "%s: %s (%s)", what, log_strerror(rc), bmap_errmsg(ns->bm));
	}
	lock_mutex_unlock(&ns->db_mu);
	return rc;
}

/* One checkpoint: every queued batch into the index, then settle them. */
int ns_checkpoint(struct ns *ns)
{
	size_t queued;
	int rc = 0;

	lock_mutex_lock(&ns->log_mu);
	queued = ns->logq.n;
	lock_mutex_unlock(&ns->log_mu);
	if (queued)
		rc = checkpoint_txn(ns, NULL, "checkpoint of the log into the index (retried later)");
	lock_mutex_lock(&ns->flush_mu);
	ns_settle(ns);
	lock_mutex_unlock(&ns->flush_mu);
	return rc;
}

/* ---- a flush ---------------------------------------------------------------- */

struct seal_ctx {
	struct wal_buf *w;
	uint64_t lsn, synced;
};

static void seal_batch(void *ctx, void *buf, uint64_t chunk_id)
{
	struct seal_ctx *s = ctx;

	wal_seal(s->w, s->lsn, chunk_id, s->synced);
}

/*
 * A sync failed without poisoning the store: a chunk file was deleted
 * under the daemon.  The batches it held after ckpt_lsn can no longer be
 * read by a recovery, whose replay would stop at that gap before every
 * later, acknowledged batch.  So the index takes every queued batch now,
 * from memory.  Assumes flush_mu (db_mu after it is in order).
 */
static void checkpoint_after_loss(struct ns *ns)
{
	checkpoint_txn(ns, NULL, "checkpoint after a lost chunk file");
	ns_settle(ns);
}

/*
 * Steps 2 and 3 for the collected batches.  0 with the batches queued
 * (*queued) or committed, or an error with nothing queued.
 */
static int log_batches(struct ns *ns, struct held *h, size_t n, bool *queued)
{
	struct logent *e = calloc(1, sizeof(*e));
	struct seal_ctx sc = { .lsn = ns->lsn_next, .synced = ns->lsn_synced };
	size_t len;
	int rc;

	*queued = false;
	if (!e)
		return -ENOMEM;
	rc = held_encode(h, n, &e->w);
	len = wal_batch_bytes(&e->w);
	if (!rc && len > LOG_MAX_BYTES) {
		/* too big for the log: into the index now, after the data */
		rc = chunk_sync(ns->cs);
		if (!rc)
			rc = checkpoint_txn(ns, &e->w, "committing the index");
		wal_buf_free(&e->w);
		free(e);
		return rc;
	}
	sc.w = &e->w;
	/* room in the queue first: once the batch is synced it must be
	 * queued (only flush_mu holders push; takers never shrink it) */
	if (!rc) {
		lock_mutex_lock(&ns->log_mu);
		rc = ARRAY_RESERVE(ns->logq.v, ns->logq.cap, ns->logq.n, 64);
		lock_mutex_unlock(&ns->log_mu);
	}
	if (!rc)
		rc = chunk_log_append(ns->cs, e->w.p, len, seal_batch, &sc, &e->chunk);
	if (rc) {
		vlog(LOG_ERR, "writing the log: %s", log_strerror(rc));
		wal_buf_free(&e->w);
		free(e);
		return rc;
	}
	ns->lsn_next++;                 /* spent: it may be on disk */
	rc = chunk_sync(ns->cs);        /* logs its failures */
	if (rc && !chunk_poisoned(ns->cs) && !chunk_present(ns->cs, e->chunk)) {
		/* the chunk the batch went to was deleted under us (chunk_sync
		 * sealed it): no recovery can read the batch, so its lsn goes
		 * to the retry */
		ns->lsn_next--;
	} else if (rc) {
		lock_mutex_lock(&ns->log_mu);
		ns->lsn_in_doubt = sc.lsn;
		lock_mutex_unlock(&ns->log_mu);
	}
	if (rc && !chunk_poisoned(ns->cs))
		checkpoint_after_loss(ns);
	if (rc) {
		wal_buf_free(&e->w);
		free(e);
		return rc;
	}
	ns->lsn_synced = sc.lsn;
	e->lsn = sc.lsn;
	e->h = h;
	e->n = n;
	lock_mutex_lock(&ns->log_mu);
	rc = logq_push(&ns->logq, e);   /* cannot fail: reserved above */
	assert(!rc);
	ns->logq_recs += e->w.nrecs;
	lock_mutex_unlock(&ns->log_mu);
	*queued = true;
	return 0;
}

/* One flush; assumes flush_mu. */
static int flush_locked(struct ns *ns)
{
	struct held *h = NULL;
	size_t n = 0;
	bool queued = false;
	int rc;

	assert(lock_held(&ns->flush_mu));
	ns_settle(ns);
	/* after a failed sync nothing can be made durable: do not even
	 * collect (chunk_sync said so, once) */
	if (chunk_poisoned(ns->cs))
		return -EIO;
	rc = gather(ns, &h, &n);
	for (size_t i = 0; i < n && !rc; i++)
		rc = ns_held_collect(ns, &h[i]);
	if (!rc && n)
		rc = log_batches(ns, h, n, &queued);
	if (queued) {
		/* the references go with the batch, until it is settled */
		if (atomic_load(&ns->logq_recs) >= CKPT_WAKE_RECS)
			pthread_cond_signal(&ns->bg_cond);
		return 0;
	}
	ns_held_done(ns, h, n, rc);
	for (size_t i = 0; i < n; i++)
		ns_file_unref(ns, h[i].f);
	free(h);
	return rc;
}

int ns_flush(struct ns *ns)
{
	uint64_t target, seq;
	int rc;

	if (ns->readonly)
		return 0;
	lock_mutex_lock(&ns->seq_mu);
	target = ns->flush_started + 1;
	lock_mutex_unlock(&ns->seq_mu);

	lock_mutex_lock(&ns->flush_mu);
	lock_mutex_lock(&ns->seq_mu);
	if (ns->flush_done >= target) {
		rc = ns->flush_rc;      /* a flush that began after us has finished */
		lock_mutex_unlock(&ns->seq_mu);
		lock_mutex_unlock(&ns->flush_mu);
		return rc;
	}
	seq = ++ns->flush_started;
	lock_mutex_unlock(&ns->seq_mu);

	rc = flush_locked(ns);

	lock_mutex_lock(&ns->seq_mu);
	ns->flush_done = seq;
	ns->flush_rc = rc;
	lock_mutex_unlock(&ns->seq_mu);
	lock_mutex_unlock(&ns->flush_mu);
	return rc;
}

int ns_sync_index(struct ns *ns)
{
	int rc;

	if (ns->readonly)
		return 0;
	rc = ns_flush(ns);
	return rc ? rc : ns_checkpoint(ns);
}
