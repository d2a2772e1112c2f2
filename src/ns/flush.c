/*
 * flush: how writes become durable.
 *
 * A flush, one at a time under flush_mu:
 *   1. collect: take the dirty blocks of every volume in use (vol_collect);
 *   2. chunk_sync(): every block those entries point at is on disk;
 *   3. one index transaction: the rows, each volume's size and times, the
 *      next chunk id; commit (synchronous=FULL: durable on return);
 *   4. on failure every collected block is marked dirty again, so the next
 *      flush retries it and nothing is silently dropped.
 * Step 2 before step 3 is what makes a committed row never point at data a
 * crash could lose (rule 2 in src/vol/vol.c).
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

int ns_held_apply(struct ns *ns, struct held *h, size_t n)
{
	int rc = 0;

	assert(lock_held(&ns->db_mu));
	for (size_t i = 0; i < n && !rc; i++) {
		rc = vol_batch_apply(&h[i].b, ns->bm);
		if (!rc)
			rc = bmap_inode_update(ns->bm, &h[i].in);
	}
	if (!rc)
		rc = bmap_meta_set(ns->bm, "next_chunk_id", chunk_next_id(ns->cs));
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

/* Steps 2 and 3 for the collected batches. */
static int commit(struct ns *ns, struct held *h, size_t n)
{
	int rc;

	rc = chunk_sync(ns->cs);        /* logs its failures */
	if (rc)
		return rc;
	lock_mutex_lock(&ns->db_mu);
	rc = bmap_begin(ns->bm);
	if (!rc)
		rc = ns_held_apply(ns, h, n);
	if (!rc)
		rc = bmap_commit(ns->bm);
	if (rc) {
		vlog(LOG_ERR, "committing the index: %s (%s)", strerror(-rc), bmap_errmsg(ns->bm));
		bmap_rollback(ns->bm);
	}
	lock_mutex_unlock(&ns->db_mu);
	return rc;
}

/* One flush; assumes flush_mu. */
static int flush_locked(struct ns *ns)
{
	struct held *h = NULL;
	size_t n = 0;
	int rc;

	assert(lock_held(&ns->flush_mu));
	/* after a failed sync nothing can be made durable: do not even
	 * collect (chunk_sync said so, once) */
	if (chunk_poisoned(ns->cs))
		return -EIO;
	rc = gather(ns, &h, &n);
	for (size_t i = 0; i < n && !rc; i++)
		rc = ns_held_collect(ns, &h[i]);
	if (!rc && n)
		rc = commit(ns, h, n);
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
