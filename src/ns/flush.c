/*
 * flush: how writes become durable, and the background thread.
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
 *
 * The background thread flushes every flush_ms, evicts clean volumes
 * nobody has open, deletes unlinked volumes, releases map nodes nothing
 * needs, and runs garbage collection (src/ns/gc.c) after deletions, when
 * space runs low, every gc_interval seconds (30 by default), and after
 * every GC_AFTER_CHUNKS new chunk files, since overwrites make garbage as
 * fast as they write.  That last trigger is paced: a pass scans the whole
 * index, so the next one waits GC_PACE times as long as that scan took,
 * and so do the passes that follow one that found work; this keeps a big
 * store's collector to a fraction of one CPU.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ns/ns_int.h"
#include "vsnapfs/log.h"

#define GC_AFTER_CHUNKS 4               /* new chunk files (256 MiB) that call for a pass */
#define GC_PACE         3               /* wait after a paced pass, in units of its scan time */

/* Files with anything to write, each with a reference taken. */
static int gather(struct ns *ns, struct held **out, size_t *n)
{
	struct held *h = NULL;
	size_t cnt = 0, cap = 0;
	int rc = 0;

	pthread_mutex_lock(&ns->files_mu);
	for (unsigned i = 0; i < NS_FILE_BUCKETS && !rc; i++) {
		for (struct ns_file *f = ns->files[i]; f; f = f->next) {
			if (!vol_is_dirty(f->v) && !f->attr_dirty && !atomic_load(&f->wtime_ns))
				continue;
			if (cnt == cap) {
				size_t nc = cap ? cap * 2 : 16;
				struct held *nh = realloc(h, nc * sizeof(*nh));

				if (!nh) {
					rc = -ENOMEM;
					break;
				}
				h = nh;
				cap = nc;
			}
			memset(&h[cnt], 0, sizeof(h[cnt]));
			h[cnt].f = f;
			f->refs++;
			cnt++;
		}
	}
	pthread_mutex_unlock(&ns->files_mu);
	*out = h;
	*n = cnt;
	return rc;
}

int ns_held_collect(struct ns *ns, struct held *h)
{
	struct ns_file *f = h->f;
	int64_t w = atomic_exchange(&f->wtime_ns, 0);
	int rc = vol_collect(f->v, &h->b);

	pthread_mutex_lock(&ns->files_mu);
	if (w > f->in.mtime_ns)
		f->in.mtime_ns = f->in.ctime_ns = w;
	if (!rc)
		f->in.size = h->b.size;
	f->attr_dirty = false;
	h->in = f->in;
	pthread_mutex_unlock(&ns->files_mu);
	if (rc)
		atomic_store(&f->wtime_ns, w);
	return rc;
}

int ns_held_apply(struct ns *ns, struct held *h, size_t n)
{
	int rc = 0;

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
			pthread_mutex_lock(&ns->files_mu);
			h[i].f->attr_dirty = true;
			pthread_mutex_unlock(&ns->files_mu);
		}
		vol_batch_done(&h[i].b, rc);
		vol_batch_free(&h[i].b);
	}
}

/* Steps 2 and 3 for the collected batches. */
static int commit(struct ns *ns, struct held *h, size_t n)
{
	uint64_t changes;
	int rc;

	rc = chunk_sync(ns->cs);        /* logs its failures */
	if (rc)
		return rc;
	pthread_mutex_lock(&ns->db_mu);
	changes = bmap_changes(ns->bm);
	rc = bmap_begin(ns->bm);
	if (!rc)
		rc = ns_held_apply(ns, h, n);
	if (!rc)
		rc = bmap_commit(ns->bm);
	if (rc) {
		vlog(LOG_ERR, "committing the index: %s (%s)", strerror(-rc), bmap_errmsg(ns->bm));
		bmap_rollback(ns->bm);
	}
	/* the rows of loaded volumes only: no map being loaded is built from
	 * them (map_changes in store.c) */
	ns->quiet_changes += bmap_changes(ns->bm) - changes;
	pthread_mutex_unlock(&ns->db_mu);
	return rc;
}

/* One flush; assumes flush_mu. */
static int flush_locked(struct ns *ns)
{
	struct held *h = NULL;
	size_t n = 0;
	int rc;

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
	pthread_mutex_lock(&ns->seq_mu);
	target = ns->flush_started + 1;
	pthread_mutex_unlock(&ns->seq_mu);

	pthread_mutex_lock(&ns->flush_mu);
	pthread_mutex_lock(&ns->seq_mu);
	if (ns->flush_done >= target) {
		rc = ns->flush_rc;      /* a flush that began after us has finished */
		pthread_mutex_unlock(&ns->seq_mu);
		pthread_mutex_unlock(&ns->flush_mu);
		return rc;
	}
	seq = ++ns->flush_started;
	pthread_mutex_unlock(&ns->seq_mu);

	rc = flush_locked(ns);

	pthread_mutex_lock(&ns->seq_mu);
	ns->flush_done = seq;
	ns->flush_rc = rc;
	pthread_mutex_unlock(&ns->seq_mu);
	pthread_mutex_unlock(&ns->flush_mu);
	return rc;
}

/* Drop cached volumes that nobody uses and that have nothing to write. */
static void evict_clean(struct ns *ns)
{
	struct ns_file *dead = NULL;

	pthread_mutex_lock(&ns->db_mu);
	pthread_mutex_lock(&ns->files_mu);
	for (unsigned i = 0; i < NS_FILE_BUCKETS; i++) {
		struct ns_file **pp = &ns->files[i];

		while (*pp) {
			struct ns_file *f = *pp;

			if (f->refs || f->attr_dirty || atomic_load(&f->wtime_ns) ||
			    vol_is_dirty(f->v)) {
				pp = &f->next;
				continue;
			}
			*pp = f->next;
			f->next = dead;
			dead = f;
		}
	}
	pthread_mutex_unlock(&ns->files_mu);
	pthread_mutex_unlock(&ns->db_mu);
	while (dead) {
		struct ns_file *f = dead;

		dead = f->next;
		vol_close(f->v);
		free(f);
	}
}

/*
 * Fold node into its only child, NS_MERGE_ROWS rows per transaction, letting
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
	for (;;) {
		uint64_t refs, kids, only, changes = bmap_changes(ns->bm);
		bool done;
		int rc;

		rc = bmap_begin(ns->bm);
		if (!rc)
			rc = bmap_node_merge_some(ns->bm, id, child, NS_MERGE_ROWS, &done);
		if (!rc)
			rc = bmap_commit(ns->bm);
		if (rc)
			bmap_rollback(ns->bm);
		/* what any volume shows is the same: no map load need start over
		 * (map_changes in store.c) */
		ns->quiet_changes += bmap_changes(ns->bm) - changes;
		if (rc)
			return rc;
		if (done)
			return 0;
		/* a mutex is not fair: give a waiting caller the time to get it */
		pthread_mutex_unlock(&ns->db_mu);
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
		pthread_mutex_lock(&ns->db_mu);
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

	while (id && !rc) {
		struct bmap_node n, c;
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
			rc = bmap_begin(ns->bm);
			if (!rc)
				rc = bmap_node_delete(ns->bm, id);
			if (!rc)
				rc = bmap_commit(ns->bm);
			if (rc)
				bmap_rollback(ns->bm);
		} else {
			rc = bmap_node_only_child(ns->bm, id, &child);
			if (!rc)
				rc = merge_node(ns, id, child);
		}
		if (rc)
			break;
		atomic_store(&ns->gc_wanted, true);
		if (kids == 0) {
			id = n.parent;          /* it may have lost its last user */
			continue;
		}
		/* the child may be a live volume's node: its vol writes its
		 * inherit limit back at flush, so tell it the new one */
		if (bmap_node_get(ns->bm, child, &c) == 0) {
			pthread_mutex_lock(&ns->files_mu);
			for (unsigned i = 0; i < NS_FILE_BUCKETS; i++)
				for (struct ns_file *f = ns->files[i]; f; f = f->next)
					if (ino_kind(f->ino) == INO_LIVE && f->in.node == child)
						vol_inherit_lower(f->v, c.inherit);
			pthread_mutex_unlock(&ns->files_mu);
		}
		break;
	}
	if (rc)
		vlog(LOG_ERR, "releasing map node %" PRIu64 ": %s; retrying later", id, strerror(-rc));
	return rc;
}

int ns_release_queue(struct ns *ns, uint64_t node)
{
	if (ns->nrel == ns->rel_cap) {
		size_t cap = ns->rel_cap ? ns->rel_cap * 2 : 64;
		uint64_t *r = realloc(ns->rel, cap * sizeof(*r));

		if (!r)
			return -ENOMEM;
		ns->rel = r;
		ns->rel_cap = cap;
	}
	ns->rel[ns->nrel++] = node;
	return 0;
}

/*
 * Delete every queued unlinked volume (its inode, one transaction), then
 * release every queued node.  A crash half way leaves each step whole or
 * undone; nodes nobody names are found again at the next mount.
 */
int ns_reap_all(struct ns *ns)
{
	int rc = 0;

	pthread_mutex_lock(&ns->db_mu);
	while (ns->nreap && !rc) {
		uint64_t ino = ns->reap[ns->nreap - 1];
		struct bmap_inode in;

		rc = bmap_inode_get(ns->bm, ino, &in);
		if (rc == -ENOENT) {
			rc = 0;
			ns->nreap--;
			continue;
		}
		if (!rc)
			rc = bmap_inode_delete(ns->bm, ino);
		if (!rc && in.node)
			rc = ns_release_queue(ns, in.node);
		if (rc) {
			vlog(LOG_ERR, "deleting unlinked inode %" PRIu64 ": %s; retrying later", ino,
			     strerror(-rc));
			break;
		}
		ns->nreap--;
	}
	/* popped first: release_node lets go of db_mu, and others push */
	while (ns->nrel && !rc) {
		uint64_t id = ns->rel[--ns->nrel];

		rc = release_node(ns, id);
		if (rc && ns_release_queue(ns, id))
			vlog(LOG_ERR, "out of memory: node %" PRIu64 " is released at next mount", id);
	}
	pthread_mutex_unlock(&ns->db_mu);
	return rc;
}

/* ---- the background thread --------------------------------------------------- */

void *ns_bg_main(void *arg)
{
	struct ns *ns = arg;
	int64_t last_gc = 0, gc_ns = 0;     /* start and scan time of the last pass */
	uint64_t gc_chunk = 0;              /* next chunk id at its start */
	bool more = false;                  /* it did work: there may be more */

	pthread_mutex_lock(&ns->bg_mu);
	while (!ns->bg_stop) {
		struct timespec until;
		int64_t now;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += (long)(ns->flush_ms % 1000) * 1000000;
		until.tv_sec += ns->flush_ms / 1000 + until.tv_nsec / 1000000000;
		until.tv_nsec %= 1000000000;
		pthread_cond_timedwait(&ns->bg_cond, &ns->bg_mu, &until);
		if (ns->bg_stop)
			break;
		pthread_mutex_unlock(&ns->bg_mu);

		ns_flush(ns);
		evict_clean(ns);
		ns_reap_all(ns);
		now = ns_now_ns();
		/* no GC in a poisoned store: nothing may be moved (chunk_sync) */
		if (!chunk_poisoned(ns->cs) &&
		    (atomic_load(&ns->gc_wanted) ||
		     now - last_gc > (int64_t)ns->gc_interval_s * 1000000000 ||
		     ((more || chunk_next_id(ns->cs) - gc_chunk >= GC_AFTER_CHUNKS) &&
		      now - last_gc - gc_ns >= GC_PACE * gc_ns))) {
			int rc;

			atomic_store(&ns->gc_wanted, false);
			gc_chunk = chunk_next_id(ns->cs);
			rc = ns_gc(ns, &gc_ns);
			/* did work: there may be more, go on when the pace allows */
			more = rc > 0 || rc == -EAGAIN;
			last_gc = now;
		}
		pthread_mutex_lock(&ns->bg_mu);
	}
	pthread_mutex_unlock(&ns->bg_mu);
	return NULL;
}
