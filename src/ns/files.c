/*
 * files: the table of volumes in use, by inode number, and the queues of
 * work left to the background thread.
 *
 * A volume in use has one struct ns_file, shared by every open handle of
 * it and by flushes and snapshots that hold it (refs).  It stays in the
 * table after its last close until the background thread finds it clean
 * (bg.c), or until it is unlinked, when the last reference queues its
 * deletion.  Everything here that touches the table assumes files_mu; the
 * walkers of src/ns use ns_files_foreach and ns_files_take, never the
 * buckets themselves.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "ns/ns_int.h"
#include "vsnapfs/log.h"

static struct ns_file **bucket(struct ns *ns, uint64_t ino)
{
	return &ns->files[ino % NS_FILE_BUCKETS];
}

struct ns_file *ns_files_find(struct ns *ns, uint64_t ino)
{
	struct ns_file *f;

	assert(lock_held(&ns->files_mu));
	for (f = *bucket(ns, ino); f && f->ino != ino; f = f->next)
		;
	return f;
}

void ns_files_insert(struct ns *ns, struct ns_file *f)
{
	struct ns_file **b = bucket(ns, f->ino);

	assert(lock_held(&ns->files_mu));
	f->next = *b;
	*b = f;
	ns->files_gen++;
}

void ns_files_remove(struct ns *ns, struct ns_file *f)
{
	struct ns_file **pp = bucket(ns, f->ino);

	assert(lock_held(&ns->files_mu));
	while (*pp != f)
		pp = &(*pp)->next;
	*pp = f->next;
	f->next = NULL;
}

int ns_files_foreach(struct ns *ns, int (*fn)(struct ns_file *f, void *ctx), void *ctx)
{
	assert(lock_held(&ns->files_mu));
	for (unsigned i = 0; i < NS_FILE_BUCKETS; i++) {
		for (struct ns_file *f = ns->files[i]; f; f = f->next) {
			int rc = fn(f, ctx);

			if (rc)
				return rc;
		}
	}
	return 0;
}

struct ns_file *ns_files_take(struct ns *ns, bool (*take)(const struct ns_file *f, void *ctx),
			      void *ctx)
{
	struct ns_file *list = NULL;

	assert(lock_held(&ns->files_mu));
	for (unsigned i = 0; i < NS_FILE_BUCKETS; i++) {
		struct ns_file **pp = &ns->files[i];

		while (*pp) {
			struct ns_file *f = *pp;

			if (!take(f, ctx)) {
				pp = &f->next;
				continue;
			}
			*pp = f->next;
			f->next = list;
			list = f;
		}
	}
	return list;
}

void ns_file_free_list(struct ns_file *list)
{
	while (list) {
		struct ns_file *f = list;

		list = f->next;
		vol_close(f->v);
		ns_vstats_put(f->st);
		free(f);
	}
}

void ns_file_unref(struct ns *ns, struct ns_file *f)
{
	bool gone;

	lock_mutex_lock(&ns->db_mu);
	lock_mutex_lock(&ns->files_mu);
	gone = --f->refs == 0 && f->unlinked;
	if (gone) {
		ns_files_remove(ns, f);
		ns_reap_later(ns, f->ino);
	}
	lock_mutex_unlock(&ns->files_mu);
	lock_mutex_unlock(&ns->db_mu);
	if (gone) {
		ns_file_free_list(f);
		pthread_cond_signal(&ns->bg_cond);
	}
}

/* ---- work for the background thread -------------------------------------------- */

int ns_queue_push(struct ns_queue *q, uint64_t id)
{
	if (ARRAY_RESERVE(q->v, q->cap, q->n, 64))
		return -ENOMEM;
	q->v[q->n++] = id;
	return 0;
}

void ns_reap_later(struct ns *ns, uint64_t ino)
{
	assert(lock_held(&ns->db_mu));
	if (ns_queue_push(&ns->reap, ino))
		vlog(LOG_ERR, "out of memory: unlinked inode %" PRIu64 " is deleted at next mount",
		     ino);
}

void ns_release_later(struct ns *ns, uint64_t node)
{
	assert(lock_held(&ns->db_mu));
	if (ns_queue_push(&ns->rel, node))
		vlog(LOG_ERR, "out of memory: node %" PRIu64 " is released at next mount", node);
}

/*
 * Volume ino lost its name in a transaction that has committed: it keeps
 * its inode (parent 0) while a handle is open, and is queued for deletion
 * otherwise.  Only after the commit: a rolled-back unlink must leave the
 * open-file table and the reap queue as they were, or the background
 * thread would delete a volume that still has its name.  Assumes db_mu,
 * held since the commit, so nobody opens ino in between.
 */
void ns_volume_detached(struct ns *ns, uint64_t ino)
{
	struct ns_file *f;
	bool busy;

	assert(lock_held(&ns->db_mu));
	lock_mutex_lock(&ns->files_mu);
	f = ns_files_find(ns, ino);
	busy = f && f->refs > 0;
	if (f) {
		f->unlinked = true;
		f->in.parent = 0;
		f->in.name[0] = 0;
	}
	if (f && !busy) {
		/* cached but unused: its unflushed changes no longer matter */
		ns_files_remove(ns, f);
	}
	lock_mutex_unlock(&ns->files_mu);
	if (f && !busy)
		ns_file_free_list(f);
	if (!busy)
		ns_reap_later(ns, ino);
}
