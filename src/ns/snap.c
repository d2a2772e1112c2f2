/*
 * snapshots, linked clones and truncate-to-zero: the operations that move
 * volumes between map nodes instead of copying data.
 *
 * Taking a snapshot of directory D (or of one volume in it):
 *   1. under flush_mu and db_mu, list the inodes below D;
 *   2. close the write gate of every one of them that is open (in inode
 *      order), so that no write is half done, and collect their changes;
 *   3. chunk_sync(), then one transaction: their rows, the snapshot, a copy
 *      of every inode row, and for every volume a new node (child of its
 *      current one, which the snapshot now names);
 *   4. switch the open volumes to their new nodes and open the gates.
 * All volumes are frozen at one instant: every write that returned before
 * the mkdir is in, none that started after it returned.  Nothing is copied
 * but inode rows, so the cost is the number of inodes, not their data.
 *
 * A linked clone (copy_file_range from a snapshot or volume into a fresh
 * volume, block-aligned, same offset) makes the destination's empty node a
 * child of the source's frozen node.  A live source is frozen first, like a
 * snapshot without a name.  The kernel splits a large copy_file_range into
 * several FUSE requests (the reply carries a 32-bit count), so a later call
 * may extend the clone where the previous one stopped.  Anything else is
 * copied with read and write.
 *
 * Truncating a volume to zero gives it a new, empty node and releases the
 * old one in the background, so that a revert (cp with O_TRUNC, then a
 * clone) costs the same whatever the volume held.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ns/names.h"
#include "ns/ns_int.h"
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/log.h"

/* ---- holding open volumes --------------------------------------------------- */

static int cmp_held(const void *a, const void *b)
{
	uint64_t x = ((const struct held *)a)->f->ino, y = ((const struct held *)b)->f->ino;

	return x < y ? -1 : x > y;
}

/* Take a reference on the open volume ino, if it is open; assumes files_mu. */
static int hold_if_open(struct ns *ns, struct holdset *hs, uint64_t ino)
{
	struct ns_file *f = ns_files_find(ns, ino);   /* asserts files_mu */

	return f ? ns_hold(ns, hs, f) : 0;
}

static struct held *held_find(struct holdset *hs, uint64_t ino)
{
	for (size_t i = 0; i < hs->n; i++)
		if (hs->h[i].f->ino == ino)
			return &hs->h[i];
	return NULL;
}

/* Close the gates (inode order) and collect. */
static int hold_freeze(struct ns *ns, struct holdset *hs)
{
	int rc = 0;

	if (hs->n)                      /* qsort(NULL, 0) is undefined */
		qsort(hs->h, hs->n, sizeof(hs->h[0]), cmp_held);
	for (size_t i = 0; i < hs->n; i++)
		vol_gate_close(hs->h[i].f->v);
	for (size_t i = 0; i < hs->n && !rc; i++)
		rc = ns_held_collect(ns, &hs->h[i]);
	return rc;
}

static void hold_thaw(struct ns *ns, struct holdset *hs, int rc)
{
	ns_held_done(ns, hs->h, hs->n, rc);
	for (size_t i = 0; i < hs->n; i++)
		vol_gate_open(hs->h[i].f->v);
}

/* Freeze the held volumes, sync, open a transaction and apply their
 * collected changes in it; on failure no transaction is left open (the
 * caller thaws). */
static int freeze_begin(struct ns *ns, struct holdset *hs)
{
	int rc = hold_freeze(ns, hs);

	if (!rc && hs->n)
		rc = chunk_sync(ns->cs);
	if (!rc)
		rc = ns_txn_begin(ns);
	if (rc)
		return rc;
	rc = ns_held_apply(ns, hs->h, hs->n);
	if (rc)
		ns_txn_rollback(ns);
	return rc;
}

/* Drop the references; call without db_mu. */
static void hold_release(struct ns *ns, struct holdset *hs)
{
	for (size_t i = 0; i < hs->n; i++)
		ns_file_unref(ns, hs->h[i].f);
	free(hs->h);
}

/* ---- snapshot create ---------------------------------------------------------- */

/* New nodes for the frozen volumes, filled in the transaction, used after. */
struct switched {
	struct held *h;
	uint64_t node, inherit;
};

static uint64_t nblocks(struct ns *ns, uint64_t size)
{
	return (size + ns->bs - 1) / ns->bs;
}

/*
 * Step 3 for each inode: copy it into the snapshot and, for a volume, give
 * the live inode a new node below the one the snapshot keeps.  Assumes
 * db_mu and an open transaction.
 */
static int freeze_inodes(struct ns *ns, uint64_t snap, struct bmap_inodes *l, struct holdset *hs,
			 struct switched *sw)
{
	int rc = 0;

	assert(lock_held(&ns->db_mu));
	for (size_t i = 0; i < l->n && !rc; i++) {
		struct bmap_inode in = l->v[i];
		struct held *h = in.kind == BMAP_VOL ? held_find(hs, in.ino) : NULL;
		struct bmap_node n = { 0 };

		if (in.ino >= 1ULL << INO_BITS_SNAPINO)
			return -EOVERFLOW;
		if (h)
			in = h->in;             /* the live size and times, as collected */
		rc = bmap_sinode_insert(ns->bm, snap, &in);
		if (rc || in.kind != BMAP_VOL)
			continue;
		n.parent = in.node;
		n.inherit = nblocks(ns, in.size);
		rc = bmap_node_create(ns->bm, &n);
		if (!rc)        /* the live volume shows what the frozen node shows */
			rc = bmap_refs_copy(ns->bm, in.node, n.id);
		if (rc)
			break;
		in.node = n.id;
		rc = bmap_inode_update(ns->bm, &in);
		if (h) {
			sw[h - hs->h] = (struct switched){ h, n.id, n.inherit };
			h->in.node = n.id;
		}
	}
	return rc;
}

/* Insert snapshot s with guid (NULL: a new one) and freeze the inodes l
 * into it (freeze_inodes).  Assumes db_mu and an open transaction. */
static int snap_insert_frozen(struct ns *ns, struct bmap_snap *s, const uint8_t *guid,
			      struct bmap_inodes *l, struct holdset *hs, struct switched *sw)
{
	int rc = bmap_snap_insert(ns->bm, s);

	if (!rc && s->id >= 1ULL << INO_BITS_SNAPID)
		rc = -EOVERFLOW;
	if (!rc)
		rc = bmap_snap_guid_set(ns->bm, s->id, guid);
	if (!rc)
		rc = freeze_inodes(ns, s->id, l, hs, sw);
	return rc;
}

int ns_snap_create(struct ns *ns, uint64_t dir, const char *name, struct ns_attr *out)
{
	struct bmap_inodes l = { 0 };
	struct holdset hs = { 0 };
	struct switched *sw = NULL;
	struct bmap_snap s = { .dir = dir };
	struct bmap_inode d, one;
	char *file;
	int rc;

	if (ns->readonly)
		return -EROFS;
	rc = ns_snap_name_parse(name, &file);
	if (rc)
		return rc;
	snprintf(s.name, sizeof(s.name), "%s", name);

	lock_mutex_lock(&ns->flush_mu);
	lock_mutex_lock(&ns->db_mu);
	rc = bmap_inode_get(ns->bm, dir, &d);
	if (!rc && d.kind != BMAP_DIR)
		rc = -ENOTDIR;
	if (!rc && bmap_snap_lookup(ns->bm, dir, name, &s) == 0)
		rc = -EEXIST;
	if (rc)
		goto unlock;
	if (file) {
		rc = bmap_inode_lookup(ns->bm, dir, file, &one);
		if (!rc && one.kind != BMAP_VOL)
			rc = -EINVAL;           /* FILE@NAME names one volume */
		if (!rc)
			rc = bmap_inodes_add(&l, &one);
	} else {
		rc = bmap_subtree(ns->bm, dir, bmap_inodes_add, &l);
		if (!rc)
			rc = l.rc;
	}
	if (rc)
		goto unlock;

	lock_mutex_lock(&ns->files_mu);
	for (size_t i = 0; i < l.n && !rc; i++)
		if (l.v[i].kind == BMAP_VOL)
			rc = hold_if_open(ns, &hs, l.v[i].ino);
	lock_mutex_unlock(&ns->files_mu);
	if (!rc && hs.n && !(sw = calloc(hs.n, sizeof(*sw))))
		rc = -ENOMEM;
	if (rc)
		goto unlock;

	rc = freeze_begin(ns, &hs);
	if (!rc) {
		s.created_ns = ns_now_ns();
		rc = snap_insert_frozen(ns, &s, NULL, &l, &hs, sw);
		if (!rc)
			rc = ns_txn_commit(ns);
		if (rc)
			ns_txn_rollback(ns);
	}
	if (!rc) {
		for (size_t i = 0; i < hs.n; i++) {
			/* cannot fail: the gate is closed and everything collected */
			int src = vol_switch_node(sw[i].h->f->v, sw[i].node, sw[i].inherit);

			if (src)
				vlog(LOG_CRIT, "snapshot %s: switching a volume failed: %s", name,
				     log_strerror(src));
			lock_mutex_lock(&ns->files_mu);
			sw[i].h->f->in.node = sw[i].node;
			lock_mutex_unlock(&ns->files_mu);
		}
		ns_sroot_attr(ns, &s, &d, out);
	} else {
		/* the collected nodes stay the live ones: undo the bookkeeping */
		for (size_t i = 0; i < hs.n; i++) {
			lock_mutex_lock(&ns->files_mu);
			hs.h[i].f->in.node = vol_node(hs.h[i].f->v);
			lock_mutex_unlock(&ns->files_mu);
		}
	}
	hold_thaw(ns, &hs, rc);
unlock:
	lock_mutex_unlock(&ns->db_mu);
	lock_mutex_unlock(&ns->flush_mu);
	hold_release(ns, &hs);
	free(sw);
	free(l.v);
	free(file);
	return rc;
}

/* ---- snapshot delete and rename ---------------------------------------------- */

static int node_of(void *ctx, const struct bmap_inode *in)
{
	struct bmap_inodes *l = ctx;

	return in->kind == BMAP_VOL ? bmap_inodes_add(l, in) : 0;
}

static bool in_snap(const struct ns_file *f, void *ctx)
{
	return ino_kind(f->ino) == INO_SNAP && ino_snap_id(f->ino) == *(const uint64_t *)ctx;
}

static int open_in_snap(struct ns_file *f, void *ctx)
{
	return in_snap(f, ctx) && f->refs;
}

int ns_snap_delete(struct ns *ns, uint64_t dir, const char *name)
{
	struct bmap_snap s;
	struct bmap_inodes l = { 0 };
	struct ns_file *dead = NULL;
	bool busy;
	int rc;

	if (ns->readonly)
		return -EROFS;
	lock_mutex_lock(&ns->db_mu);
	rc = bmap_snap_lookup(ns->bm, dir, name, &s);
	if (rc)
		goto out;

	/* open files of it: EBUSY; cached but closed ones: drop */
	lock_mutex_lock(&ns->files_mu);
	busy = ns_files_foreach(ns, open_in_snap, &s.id) != 0;
	if (!busy)
		dead = ns_files_take(ns, in_snap, &s.id);
	lock_mutex_unlock(&ns->files_mu);
	if (busy) {
		rc = -EBUSY;
		goto out;
	}

	rc = bmap_sinode_all(ns->bm, s.id, node_of, &l);
	if (!rc)
		rc = l.rc;
	if (!rc)
		rc = ns_txn_begin(ns);
	if (!rc) {
		rc = bmap_snap_delete(ns->bm, s.id);
		if (!rc)
			rc = ns_txn_commit(ns);
		if (rc)
			ns_txn_rollback(ns);
	}
	/* its nodes go in the background; a crash before that leaves nodes
	 * that nothing names, released at the next mount */
	for (size_t i = 0; i < l.n && !rc; i++)
		ns_release_later(ns, l.v[i].node);
out:
	lock_mutex_unlock(&ns->db_mu);
	ns_file_free_list(dead);
	free(l.v);
	if (!rc)
		pthread_cond_signal(&ns->bg_cond);
	return rc;
}

int ns_snap_rename(struct ns *ns, uint64_t dir, const char *name, const char *newname,
		   unsigned flags)
{
	struct bmap_snap s, t;
	char *f1 = NULL, *f2 = NULL;
	int rc;

	if (ns->readonly)
		return -EROFS;
	rc = ns_snap_name_parse(newname, &f2);
	if (!rc)
		rc = ns_snap_name_parse(name, &f1);
	/* a volume snapshot stays one, of the same volume */
	if (!rc && ((f1 == NULL) != (f2 == NULL) || (f1 && strcmp(f1, f2))))
		rc = -EINVAL;
	free(f1);
	free(f2);
	if (rc)
		return rc;
	lock_mutex_lock(&ns->db_mu);
	rc = bmap_snap_lookup(ns->bm, dir, name, &s);
	if (!rc && bmap_snap_lookup(ns->bm, dir, newname, &t) == 0)
		rc = t.id == s.id ? 0 : -EEXIST;        /* never replace a snapshot */
	else if (!rc)
		rc = bmap_snap_rename(ns->bm, s.id, newname);
	lock_mutex_unlock(&ns->db_mu);
	return rc;
}

/* ---- receive's commit ------------------------------------------------------- */

struct first_vol {
	struct bmap_inode in;
	bool found;
};

static int first_vol(void *ctx, const struct bmap_inode *in)
{
	struct first_vol *fv = ctx;

	if (in->kind != BMAP_VOL || fv->found)
		return 0;
	fv->in = *in;
	fv->found = true;
	return 0;
}

static int diff_any(void *ctx, const struct bmap_run *r)
{
	*(bool *)ctx = true;
	return 1;                       /* one is enough */
}

/*
 * The checks of ns_recv_commit that need the index as the transaction
 * sees it (the held volumes' changes applied): the destination still shows
 * the base snapshot exactly, unless forced.  Assumes db_mu, in the
 * transaction.
 */
static int recv_check_dest(struct ns *ns, const struct ns_recv *r, const struct bmap_inode *dst,
			   char *msg, size_t msglen)
{
	struct bmap_snap base;
	struct first_vol fv = { 0 };
	struct bmap_inode cur;
	bool differs = false;
	uint64_t nb;
	int rc;

	assert(lock_held(&ns->db_mu));
	rc = bmap_snap_by_guid(ns->bm, r->base_guid, &base);
	if (rc == -ENOENT) {
		snprintf(msg, msglen, "the base snapshot of the stream is not in this store");
		return -ENOENT;
	}
	if (!rc)
		rc = bmap_sinode_all(ns->bm, base.id, first_vol, &fv);
	if (!rc && !fv.found)
		rc = -EUCLEAN;
	if (!rc)
		rc = bmap_inode_get(ns->bm, dst->ino, &cur);   /* its size as just applied */
	if (rc || r->force)
		return rc;
	nb = (cur.size > fv.in.size ? cur.size : fv.in.size) / ns->bs + 1;
	rc = bmap_node_diff(ns->bm, fv.in.node, cur.node, nb, diff_any, &differs);
	if (rc == 1 || rc == -EXDEV) {
		rc = 0;
		differs = true;
	}
	if (!rc && (differs || cur.size != fv.in.size)) {
		snprintf(msg, msglen, "%s was written after snapshot %s; receive --force reverts it "
			 "to that snapshot first (its later writes are lost)", r->name, base.name);
		rc = -ESTALE;
	}
	return rc;
}

/*
 * The checks every commit makes first: r->dir is a directory and r->tmp in
 * it is still what the receive wrote (a volume, or a directory for a tree;
 * the same inode).  Assumes db_mu.
 */
static int recv_tmp_find(struct ns *ns, const struct ns_recv *r, struct bmap_inode *tmp,
			 char *msg, size_t msglen)
{
	const char *what = r->tree ? "directory" : "volume";
	struct bmap_inode d;
	int rc;

	assert(lock_held(&ns->db_mu));
	if (!ctl_recv_tmp_name(r->tmp) || strcmp(r->tmp, r->name) == 0) {
		snprintf(msg, msglen, "%s is not a %s being received", r->tmp, what);
		return -EINVAL;
	}
	rc = bmap_inode_get(ns->bm, r->dir, &d);
	if (!rc && d.kind != BMAP_DIR)
		rc = -ENOTDIR;
	if (!rc)
		rc = bmap_inode_lookup(ns->bm, r->dir, r->tmp, tmp);
	if (!rc && tmp->kind != (r->tree ? BMAP_DIR : BMAP_VOL))
		rc = -EINVAL;
	if (rc) {
		snprintf(msg, msglen, "the received %s %s is gone", what, r->tmp);
		return rc;
	}
	if (tmp->ino != r->tmp_ino) {
		/* another receive of the same stream started over meanwhile:
		 * this one's was deleted, and what has the name now is that
		 * receive's, not complete */
		snprintf(msg, msglen, "the received %s %s was replaced meanwhile (another receive "
			 "of this stream?): nothing was applied", what, r->tmp);
		return -ESTALE;
	}
	return 0;
}

/* Neither the stream's guid nor the name sname in sdir/.snapshots is taken.
 * Assumes db_mu. */
static int recv_snap_free(struct ns *ns, const struct ns_recv *r, uint64_t sdir, const char *sname,
			  char *msg, size_t msglen)
{
	struct bmap_snap other;
	int rc = bmap_snap_by_guid(ns->bm, r->guid, &other);

	if (!rc) {
		snprintf(msg, msglen, "this snapshot was received already (it is %s)", other.name);
		return -EEXIST;
	}
	if (rc != -ENOENT)
		return rc;
	if (bmap_snap_lookup(ns->bm, sdir, sname, &other) == 0) {
		snprintf(msg, msglen, "snapshot %s exists already", sname);
		return -EEXIST;
	}
	return 0;
}

static int recv_commit_tree(struct ns *ns, const struct ns_recv *r, char *msg, size_t msglen);

int ns_recv_commit(struct ns *ns, const struct ns_recv *r, char *msg, size_t msglen)
{
	struct holdset hs = { 0 };
	struct switched sw = { 0 };
	struct bmap_inodes l = { 0 };
	struct bmap_snap s = { .dir = r->dir, .created_ns = r->created_ns };
	struct bmap_inode tmp, dst;
	struct ns_file *fd = NULL;
	char *file = NULL;
	bool have_dst = false;
	int rc;

	msg[0] = '\0';
	if (ns->readonly)
		return -EROFS;
	if (r->tree)
		return recv_commit_tree(ns, r, msg, msglen);
	if (snprintf(s.name, sizeof(s.name), "%s@%s", r->name, r->snap) >= (int)sizeof(s.name))
		return -ENAMETOOLONG;
	rc = ns_snap_name_parse(s.name, &file);
	/* the name must come back whole: a volume name with an @ would
	 * make another file's snapshot */
	if (!rc && strcmp(file, r->name) != 0)
		rc = -EINVAL;
	free(file);
	if (!rc)
		rc = ns_name_check(r->name);
	if (rc) {
		snprintf(msg, msglen, "bad volume or snapshot name %s", s.name);
		return rc;
	}
	lock_mutex_lock(&ns->flush_mu);
	lock_mutex_lock(&ns->db_mu);
	rc = recv_tmp_find(ns, r, &tmp, msg, msglen);
	if (rc)
		goto unlock;
	rc = recv_snap_free(ns, r, r->dir, s.name, msg, msglen);
	if (rc)
		goto unlock;
	rc = bmap_inode_lookup(ns->bm, r->dir, r->name, &dst);
	have_dst = rc == 0;
	if (rc && rc != -ENOENT)
		goto unlock;
	rc = have_dst && dst.ino == tmp.ino ? -EINVAL : 0;
	if (rc) {
		snprintf(msg, msglen, "%s is not a volume being received", r->tmp);
		goto unlock;
	}
	if (have_dst && (!r->incremental || dst.kind != BMAP_VOL)) {
		snprintf(msg, msglen, "%s exists: a full stream creates a new volume", r->name);
		rc = -EEXIST;
	} else if (!have_dst && r->incremental) {
		snprintf(msg, msglen, "%s does not exist: receive the full stream first", r->name);
		rc = -ENOENT;
	}
	if (rc)
		goto unlock;
	rc = bmap_inodes_add(&l, &tmp);
	if (rc)
		goto unlock;

	lock_mutex_lock(&ns->files_mu);
	rc = hold_if_open(ns, &hs, tmp.ino);
	if (!rc && have_dst && (fd = ns_files_find(ns, dst.ino)) && fd->opens) {
		snprintf(msg, msglen, "%s is open: stop what uses it first", r->name);
		rc = -EBUSY;
	}
	if (!rc && fd)
		rc = ns_hold(ns, &hs, fd);
	lock_mutex_unlock(&ns->files_mu);
	if (rc)
		goto unlock;

	rc = freeze_begin(ns, &hs);
	if (rc)
		goto thaw;
	if (have_dst)
		rc = recv_check_dest(ns, r, &dst, msg, msglen);
	if (!rc && have_dst)
		rc = bmap_inode_move(ns->bm, dst.ino, 0, "");
	if (!rc)
		rc = bmap_inode_move(ns->bm, tmp.ino, r->dir, r->name);
	if (!rc) {
		struct held *h = held_find(&hs, tmp.ino);

		snprintf(l.v[0].name, sizeof(l.v[0].name), "%s", r->name);
		if (h)
			snprintf(h->in.name, sizeof(h->in.name), "%s", r->name);
	}
	if (!rc) {
		/* freeze_inodes fills sw for a held tmp only: at most one entry */
		struct switched sws[2] = { { 0 } };

		rc = snap_insert_frozen(ns, &s, r->guid, &l, &hs, sws);
		for (size_t i = 0; i < hs.n; i++)
			if (sws[i].h)
				sw = sws[i];
	}
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc)
		ns_txn_rollback(ns);
thaw:
	for (size_t i = 0; i < hs.n; i++) {
		struct ns_file *f = hs.h[i].f;

		lock_mutex_lock(&ns->files_mu);
		if (!rc && f->ino == tmp.ino) {
			f->in.parent = r->dir;
			snprintf(f->in.name, sizeof(f->in.name), "%s", r->name);
			vol_set_label(f->v, r->name);
		}
		lock_mutex_unlock(&ns->files_mu);
	}
	if (!rc && sw.h) {
		int src = vol_switch_node(sw.h->f->v, sw.node, sw.inherit);

		if (src)
			vlog(LOG_CRIT, "receive %s: switching a volume failed: %s", s.name,
			     log_strerror(src));
		lock_mutex_lock(&ns->files_mu);
		sw.h->f->in.node = sw.node;
		lock_mutex_unlock(&ns->files_mu);
	} else if (rc) {
		for (size_t i = 0; i < hs.n; i++) {
			lock_mutex_lock(&ns->files_mu);
			hs.h[i].f->in.node = vol_node(hs.h[i].f->v);
			lock_mutex_unlock(&ns->files_mu);
		}
	}
	hold_thaw(ns, &hs, rc);
	if (!rc && have_dst)
		ns_volume_detached(ns, dst.ino);
unlock:
	lock_mutex_unlock(&ns->db_mu);
	lock_mutex_unlock(&ns->flush_mu);
	hold_release(ns, &hs);
	free(l.v);
	if (!rc && have_dst)
		pthread_cond_signal(&ns->bg_cond);      /* the old volume's node to release */
	if (!rc && ns->inval) {
		/* the kernel saw neither the rename nor the snapshot */
		ns->inval(ns->inval_ctx, r->dir, r->tmp);
		ns->inval(ns->inval_ctx, r->dir, r->name);
		ns->inval(ns->inval_ctx, ino_ctl(r->dir), s.name);
	}
	if (rc && !msg[0])
		snprintf(msg, msglen, "%s", strerror(-rc));
	return rc;
}

/* ---- receive's commit of a directory ------------------------------------------ */

static int cmp_ino(const void *a, const void *b)
{
	uint64_t x = ((const struct bmap_inode *)a)->ino, y = ((const struct bmap_inode *)b)->ino;

	return x < y ? -1 : x > y;
}

/* Does one entry of the live tree show what its frozen copy showed: place,
 * name, kind, mode, size and data?  Assumes db_mu. */
static int entry_same(struct ns *ns, const struct bmap_inode *was, const struct bmap_inode *is,
		      bool *same)
{
	bool differs = false;
	int rc = 0;

	*same = was->ino == is->ino && was->parent == is->parent && was->kind == is->kind &&
		was->mode == is->mode && !strcmp(was->name, is->name) &&
		(is->kind != BMAP_VOL || was->size == is->size);
	if (!*same || is->kind != BMAP_VOL)
		return 0;
	rc = bmap_node_diff(ns->bm, was->node, is->node, is->size / ns->bs + 1, diff_any, &differs);
	if (rc == 1 || rc == -EXDEV) {
		rc = 0;
		differs = true;
	}
	*same = !differs;
	return rc;
}

/*
 * Does the tree below the destination (live) still show the base snapshot
 * exactly?  The snapshot kept the inodes' numbers,
 * so the two lists pair up by ino.  0, or -ESTALE with msg.  Assumes db_mu,
 * in the transaction (the held volumes' changes applied).
 */
static int recv_check_tree(struct ns *ns, const struct ns_recv *r, const struct bmap_snap *base,
			   const struct bmap_inodes *live, char *msg, size_t msglen)
{
	struct bmap_inodes was = { 0 };
	struct bmap_inode *is = NULL;
	bool same = true;
	int rc;

	assert(lock_held(&ns->db_mu));
	rc = bmap_sinode_all(ns->bm, base->id, bmap_inodes_add, &was);      /* ino order */
	if (!rc)
		rc = was.rc;
	if (!rc && was.n != live->n)
		same = false;
	if (!rc && same && live->n) {
		if (!(is = malloc(live->n * sizeof(*is))))
			rc = -ENOMEM;
		else {
			memcpy(is, live->v, live->n * sizeof(*is));
			qsort(is, live->n, sizeof(*is), cmp_ino);
		}
	}
	for (size_t i = 0; !rc && same && i < live->n; i++)
		rc = entry_same(ns, &was.v[i], &is[i], &same);
	free(is);
	free(was.v);
	if (!rc && !same) {
		snprintf(msg, msglen, "%s was written after snapshot %s; receive --force replaces it "
			 "by the received snapshot anyway (its later changes are lost)", r->name,
			 base->name);
		rc = -ESTALE;
	}
	return rc;
}

/* The path of inode ino below the tree l lists (its parents are in l, up
 * to one that is not), for a message: "sub/d.img". */
static void tree_rel(const struct bmap_inodes *l, uint64_t ino, char *out, size_t len)
{
	char tmp[PATH_MAX];

	out[0] = '\0';
	for (size_t depth = 0; depth <= l->n; depth++) {
		size_t i = 0;

		while (i < l->n && l->v[i].ino != ino)
			i++;
		if (i == l->n)
			return;
		snprintf(tmp, sizeof(tmp), "%s%s%s", l->v[i].name, out[0] ? "/" : "", out);
		snprintf(out, len, "%s", tmp);
		ino = l->v[i].parent;
	}
}

/*
 * Take the destination's entries out of the tree, in the transaction:
 * volumes unlinked (released in the background, as by rm), directories
 * deleted.  A directory with snapshots of its own stops it (-ENOTEMPTY: its
 * snapshots would lose their directory).  Assumes db_mu.
 */
static int tree_detach(struct ns *ns, const struct ns_recv *r, const struct bmap_inodes *l,
		       char *msg, size_t msglen)
{
	int rc = 0;

	assert(lock_held(&ns->db_mu));
	for (size_t i = 0; i < l->n && !rc; i++) {
		const struct bmap_inode *in = &l->v[i];
		uint64_t nsnap = 0;

		if (in->kind == BMAP_VOL) {
			rc = bmap_inode_move(ns->bm, in->ino, 0, "");
			continue;
		}
		rc = bmap_snap_count(ns->bm, in->ino, &nsnap);
		if (!rc && nsnap) {
			char rel[PATH_MAX];

			tree_rel(l, in->ino, rel, sizeof(rel));
			snprintf(msg, msglen, "%s/%s has snapshots of its own: delete them first, or "
				 "receive elsewhere", r->name, rel);
			rc = -ENOTEMPTY;
		}
	}
	/* directories last, deepest first (l has parents before children) */
	for (size_t i = l->n; i-- > 0 && !rc;)
		if (l->v[i].kind == BMAP_DIR)
			rc = bmap_inode_delete(ns->bm, l->v[i].ino);
	return rc;
}

/* Move the children of directory from into directory to, in the
 * transaction; a held volume's row to write moves with it.  Assumes db_mu. */
static int tree_move_kids(struct ns *ns, uint64_t from, uint64_t to, struct holdset *hs)
{
	struct bmap_inodes kids = { 0 };
	int rc = bmap_dir_list(ns->bm, from, 0, bmap_inodes_add, &kids);

	if (!rc)
		rc = kids.rc;
	for (size_t i = 0; i < kids.n && !rc; i++) {
		struct held *h = held_find(hs, kids.v[i].ino);

		rc = bmap_inode_move(ns->bm, kids.v[i].ino, to, kids.v[i].name);
		if (h)
			h->in.parent = to;
	}
	free(kids.v);
	return rc;
}

/*
 * Which volumes to hold: those below tmp that are open (vsnapctl closed
 * them, but the kernel's release may still be on its way), and every one
 * below the destination the daemon knows, provided none is open: they are
 * about to be unlinked.  Assumes files_mu.
 */
static int tree_hold(struct ns *ns, const struct ns_recv *r, const struct bmap_inodes *in_tmp,
		     const struct bmap_inodes *in_dst, struct holdset *hs, char *msg, size_t msglen)
{
	int rc = 0;

	for (size_t i = 0; i < in_tmp->n && !rc; i++)
		if (in_tmp->v[i].kind == BMAP_VOL)
			rc = hold_if_open(ns, hs, in_tmp->v[i].ino);
	for (size_t i = 0; i < in_dst->n && !rc; i++) {
		struct ns_file *f;

		if (in_dst->v[i].kind != BMAP_VOL || !(f = ns_files_find(ns, in_dst->v[i].ino)))
			continue;
		if (f->opens) {
			char rel[PATH_MAX];

			tree_rel(in_dst, in_dst->v[i].ino, rel, sizeof(rel));
			snprintf(msg, msglen, "%s/%s is open: stop what uses it first", r->name, rel);
			return -EBUSY;
		}
		rc = ns_hold(ns, hs, f);
	}
	return rc;
}

/* The directory-stream commit of ns_recv_commit (see ns_int.h). */
static int recv_commit_tree(struct ns *ns, const struct ns_recv *r, char *msg, size_t msglen)
{
	struct bmap_inodes in_tmp = { 0 }, in_dst = { 0 }, l = { 0 };
	struct bmap_snap s = { .created_ns = r->created_ns }, base;
	struct bmap_inode tmp, dst;
	struct holdset hs = { 0 };
	struct switched *sw = NULL;
	bool have_dst = false;
	char *file = NULL;
	int rc;

	rc = ns_snap_name_parse(r->snap, &file);
	if (!rc && file)
		rc = -EINVAL;           /* a directory's snapshot is NAME, not FILE@NAME */
	free(file);
	if (!rc)
		rc = ns_name_check(r->name);
	if (rc) {
		snprintf(msg, msglen, "bad directory or snapshot name %s, %s", r->name, r->snap);
		return rc;
	}
	snprintf(s.name, sizeof(s.name), "%s", r->snap);

	lock_mutex_lock(&ns->flush_mu);
	lock_mutex_lock(&ns->db_mu);
	rc = recv_tmp_find(ns, r, &tmp, msg, msglen);
	if (rc)
		goto unlock;
	rc = bmap_inode_lookup(ns->bm, r->dir, r->name, &dst);
	have_dst = rc == 0;
	if (rc && rc != -ENOENT)
		goto unlock;
	rc = 0;
	if (have_dst && !r->incremental) {
		snprintf(msg, msglen, "%s exists: a full stream creates a new directory", r->name);
		rc = -EEXIST;
	} else if (have_dst && dst.kind != BMAP_DIR) {
		snprintf(msg, msglen, "%s is not a directory: the stream is of a directory", r->name);
		rc = -ENOTDIR;
	} else if (!have_dst && r->incremental) {
		snprintf(msg, msglen, "%s does not exist: receive the full stream first", r->name);
		rc = -ENOENT;
	}
	if (!rc && have_dst) {
		/* its entries move out and its inode goes: its snapshots would
		 * be left without their directory */
		uint64_t nsnap = 0;

		rc = bmap_snap_count(ns->bm, tmp.ino, &nsnap);
		if (!rc && nsnap) {
			snprintf(msg, msglen, "the received directory %s has snapshots: delete them "
				 "first", r->tmp);
			rc = -ENOTEMPTY;
		}
	}
	if (!rc && r->incremental) {
		rc = bmap_snap_by_guid(ns->bm, r->base_guid, &base);
		if (!rc && (base.dir != dst.ino || strchr(base.name, '@')))
			rc = -ENOENT;
		if (rc == -ENOENT)
			snprintf(msg, msglen, "the base snapshot of the stream is not a snapshot of %s "
				 "in this store", r->name);
	}
	if (!rc)
		rc = recv_snap_free(ns, r, have_dst ? dst.ino : tmp.ino, s.name, msg, msglen);
	if (!rc)
		rc = bmap_subtree(ns->bm, tmp.ino, bmap_inodes_add, &in_tmp);
	if (!rc)
		rc = in_tmp.rc;
	if (!rc && have_dst)
		rc = bmap_subtree(ns->bm, dst.ino, bmap_inodes_add, &in_dst);
	if (!rc)
		rc = in_dst.rc;
	if (rc)
		goto unlock;

	lock_mutex_lock(&ns->files_mu);
	rc = tree_hold(ns, r, &in_tmp, &in_dst, &hs, msg, msglen);
	lock_mutex_unlock(&ns->files_mu);
	if (!rc && hs.n && !(sw = calloc(hs.n, sizeof(*sw))))
		rc = -ENOMEM;   /* one per held volume, as ns_snap_create */
	if (rc)
		goto unlock;

	rc = freeze_begin(ns, &hs);
	if (rc)
		goto thaw;
	if (have_dst) {
		/* again, as the transaction sees it: the held volumes' changes
		 * and the log's applied (sizes; the entries are the same, under
		 * db_mu all along) */
		in_dst.n = 0;
		rc = bmap_subtree(ns->bm, dst.ino, bmap_inodes_add, &in_dst);
		if (!rc)
			rc = in_dst.rc;
	}
	if (!rc && have_dst && !r->force)
		rc = recv_check_tree(ns, r, &base, &in_dst, msg, msglen);
	if (!have_dst) {
		/* a full stream: the received directory itself becomes it */
		if (!rc)
			rc = bmap_inode_move(ns->bm, tmp.ino, r->dir, r->name);
		dst = tmp;
	} else {
		if (!rc)
			rc = tree_detach(ns, r, &in_dst, msg, msglen);
		if (!rc)
			rc = tree_move_kids(ns, tmp.ino, dst.ino, &hs);
		if (!rc)
			rc = bmap_inode_delete(ns->bm, tmp.ino);
	}
	if (!rc)        /* the directory whose entries changed */
		rc = ns_touch_dir(ns, have_dst ? dst.ino : r->dir, ns_now_ns());
	s.dir = dst.ino;
	if (!rc)
		rc = bmap_subtree(ns->bm, dst.ino, bmap_inodes_add, &l);
	if (!rc)
		rc = l.rc;
	if (!rc)
		rc = snap_insert_frozen(ns, &s, r->guid, &l, &hs, sw);
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc)
		ns_txn_rollback(ns);
thaw:
	for (size_t i = 0; i < hs.n; i++) {
		struct ns_file *f = hs.h[i].f;

		/* cannot fail: the gate is closed and everything collected */
		if (!rc && sw[i].h && vol_switch_node(f->v, sw[i].node, sw[i].inherit))
			vlog(LOG_CRIT, "receive %s: switching a volume failed", s.name);
		lock_mutex_lock(&ns->files_mu);
		if (!rc)
			f->in.parent = hs.h[i].in.parent;       /* moved into dst, or not */
		f->in.node = !rc && sw[i].h ? sw[i].node : vol_node(f->v);
		lock_mutex_unlock(&ns->files_mu);
	}
	hold_thaw(ns, &hs, rc);
	for (size_t i = 0; !rc && have_dst && i < in_dst.n; i++)
		if (in_dst.v[i].kind == BMAP_VOL)
			ns_volume_detached(ns, in_dst.v[i].ino);
unlock:
	lock_mutex_unlock(&ns->db_mu);
	lock_mutex_unlock(&ns->flush_mu);
	hold_release(ns, &hs);
	if (!rc && have_dst)
		pthread_cond_signal(&ns->bg_cond);      /* the old volumes' nodes to release */
	if (!rc && ns->inval) {
		/* the kernel saw none of it: the names that changed */
		ns->inval(ns->inval_ctx, r->dir, r->tmp);
		ns->inval(ns->inval_ctx, r->dir, r->name);
		for (size_t i = 0; have_dst && i < in_dst.n; i++)
			if (in_dst.v[i].parent == dst.ino)
				ns->inval(ns->inval_ctx, dst.ino, in_dst.v[i].name);
		for (size_t i = 0; have_dst && i < in_tmp.n; i++)
			if (in_tmp.v[i].parent == tmp.ino)
				ns->inval(ns->inval_ctx, dst.ino, in_tmp.v[i].name);
		ns->inval(ns->inval_ctx, ino_ctl(dst.ino), s.name);
	}
	free(sw);
	free(l.v);
	free(in_tmp.v);
	free(in_dst.v);
	if (rc && !msg[0])
		snprintf(msg, msglen, "%s", strerror(-rc));
	return rc;
}

/* ---- truncate to zero -------------------------------------------------------- */

int ns_truncate_zero(struct ns *ns, struct ns_file *f)
{
	struct bmap_node n = { 0 }, cur;
	struct bmap_inode in;
	uint64_t old;
	int rc;

	lock_mutex_lock(&ns->flush_mu);
	lock_mutex_lock(&ns->db_mu);
	vol_gate_close(f->v);
	old = vol_node(f->v);
	rc = bmap_node_get(ns->bm, old, &cur);
	if (!rc && cur.parent == 0 && vol_size(f->v) == 0) {
		/* nothing to drop: an ordinary truncate is as cheap.  It takes
		 * the gate shared, which this holds exclusive: let go of it
		 * (and of the others, it needs none) first */
		vol_gate_open(f->v);
		lock_mutex_unlock(&ns->db_mu);
		lock_mutex_unlock(&ns->flush_mu);
		return vol_truncate(f->v, 0);
	}
	if (!rc)
		rc = ns_txn_begin(ns);
	if (!rc) {
		rc = bmap_node_create(ns->bm, &n);
		if (!rc)
			rc = bmap_refs_set(ns->bm, n.id, 0);
		lock_mutex_lock(&ns->files_mu);
		in = f->in;
		lock_mutex_unlock(&ns->files_mu);
		in.node = n.id;
		in.size = 0;
		in.mtime_ns = in.ctime_ns = ns_now_ns();
		if (!rc)
			rc = bmap_inode_update(ns->bm, &in);
		if (!rc)
			rc = ns_txn_commit(ns);
		if (rc)
			ns_txn_rollback(ns);
	}
	if (!rc) {
		vol_reset(f->v, n.id);
		lock_mutex_lock(&ns->files_mu);
		f->in = in;
		lock_mutex_unlock(&ns->files_mu);
		atomic_store(&f->wtime_ns, 0);
		ns_release_later(ns, old);
	}
	vol_gate_open(f->v);
	lock_mutex_unlock(&ns->db_mu);
	lock_mutex_unlock(&ns->flush_mu);
	if (!rc)
		pthread_cond_signal(&ns->bg_cond);
	return rc;
}

/* ---- copy_file_range ---------------------------------------------------------- */

/*
 * Share [off, off + len) of src with dst if dst is a blank continuation:
 * either empty (no parent, nothing mapped, size 0, off 0) or a clone of
 * the same frozen node that ends exactly at off.  Returns the bytes shared
 * (whole blocks, and the last partial block when the range ends at the
 * source's end), 0 when sharing does not apply, or a negative errno.
 */
static ssize_t share_range(struct ns *ns, struct ns_file *src, struct ns_file *dst,
			   uint64_t off, uint64_t len)
{
	struct holdset hs = { 0 };
	struct bmap_node dn, sn = { 0 };
	uint64_t src_size = vol_size(src->v), end = off + len, nb_end, frozen;
	bool live_src = ino_kind(src->ino) == INO_LIVE, refs_known = false;
	uint64_t refs = 0;
	ssize_t shared = 0;
	int rc;

	nb_end = end == src_size ? nblocks(ns, end) : end / ns->bs;
	if (nb_end <= off / ns->bs)
		return 0;

	lock_mutex_lock(&ns->flush_mu);
	lock_mutex_lock(&ns->db_mu);
	frozen = vol_node(src->v);
	rc = bmap_node_get(ns->bm, vol_node(dst->v), &dn);
	if (rc)
		goto unlock;
	if (off == 0 ? dn.parent || vol_size(dst->v) || vol_maps_from(dst->v, 0)
		     : dn.parent != frozen || dn.inherit * ns->bs != off ||
		       vol_size(dst->v) != off || vol_maps_from(dst->v, off / ns->bs))
		goto unlock;            /* not blank: copy the data instead */

	lock_mutex_lock(&ns->files_mu);
	rc = hold_if_open(ns, &hs, dst->ino);
	if (!rc && live_src)
		rc = hold_if_open(ns, &hs, src->ino);
	lock_mutex_unlock(&ns->files_mu);
	if (!rc)
		rc = hold_freeze(ns, &hs);
	if (!rc)
		rc = chunk_sync(ns->cs);
	if (!rc)
		rc = ns_txn_begin(ns);
	if (rc)
		goto thaw;
	rc = ns_held_apply(ns, hs.h, hs.n);
	/* dn was read before the queued and collected changes of dst reached
	 * the index (a truncate lowers its inherit limit): look again */
	if (!rc)
		rc = bmap_node_get(ns->bm, vol_node(dst->v), &dn);
	if (!rc && (off == 0 ? dn.parent != 0
			     : dn.parent != frozen || dn.inherit * ns->bs != off)) {
		ns_txn_rollback(ns);
		hold_thaw(ns, &hs, -EAGAIN);    /* collected changes go back */
		goto unlock;                    /* not blank: copy the data instead */
	}
	if (!rc && live_src) {
		/* freeze the source: it continues in a new child node */
		struct held *h = held_find(&hs, src->ino);

		sn.parent = frozen;
		sn.inherit = nblocks(ns, h->in.size);
		rc = bmap_node_create(ns->bm, &sn);
		if (!rc)
			rc = bmap_refs_copy(ns->bm, frozen, sn.id);
		h->in.node = sn.id;
		if (!rc)
			rc = bmap_inode_update(ns->bm, &h->in);
	}
	if (!rc) {
		struct held *h = held_find(&hs, dst->ino);

		dn.parent = frozen;
		dn.inherit = nb_end;
		shared = (nb_end * ns->bs < src_size ? nb_end * ns->bs : src_size) - off;
		h->in.size = off + shared;
		rc = bmap_node_update(ns->bm, &dn);
		if (!rc)
			rc = bmap_inode_update(ns->bm, &h->in);
		/* the whole source shared: dst shows what it shows; a part:
		 * counted later, in the background (O(extents), not here) */
		if (!rc && nb_end >= nblocks(ns, src_size))
			rc = bmap_refs_copy(ns->bm, frozen, dn.id);
		else if (!rc)
			rc = bmap_refs_forget(ns->bm, dn.id);
		if (!rc)
			refs_known = bmap_refs_get(ns->bm, dn.id, &refs) == 0;
	}
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc)
		ns_txn_rollback(ns);
thaw:
	if (!rc) {
		if (live_src)
			rc = vol_switch_node(src->v, sn.id, sn.inherit);
		if (!rc)
			rc = vol_attach(dst->v, nb_end, off + shared, refs_known ? &refs : NULL);
		if (rc)
			vlog(LOG_CRIT, "clone: switching volumes failed: %s", log_strerror(rc));
	}
	for (size_t i = 0; i < hs.n; i++) {
		struct ns_file *f = hs.h[i].f;

		lock_mutex_lock(&ns->files_mu);
		f->in.node = vol_node(f->v);
		if (!rc)
			f->in.size = hs.h[i].in.size;
		lock_mutex_unlock(&ns->files_mu);
	}
	hold_thaw(ns, &hs, rc);
unlock:
	lock_mutex_unlock(&ns->db_mu);
	lock_mutex_unlock(&ns->flush_mu);
	hold_release(ns, &hs);
	return rc ? rc : shared;
}

ssize_t ns_copy_range(struct ns *ns, struct ns_file *src, uint64_t off_in, struct ns_file *dst,
		      uint64_t off_out, uint64_t len)
{
	uint64_t size = vol_size(src->v), done = 0;
	ssize_t n = 0;
	uint8_t *buf = NULL;

	if (ns->readonly || ino_kind(dst->ino) != INO_LIVE)
		return -EROFS;
	if (off_in >= size)
		return 0;
	if (len > size - off_in)
		len = size - off_in;
	if (src != dst && off_in == off_out && off_in % ns->bs == 0) {
		n = share_range(ns, src, dst, off_in, len);
		if (n < 0)
			return n;
		done = n;
	}
	/* the rest, byte by byte as the kernel would */
	while (done < len) {
		uint64_t step = len - done < (1u << 20) ? len - done : (1u << 20);

		if (!buf && !(buf = malloc(1u << 20)))
			return done ? (ssize_t)done : -ENOMEM;
		n = vol_read(src->v, buf, step, off_in + done);
		if (n > 0)
			n = ns_write(ns, dst, buf, n, off_out + done);
		if (n <= 0)
			break;
		done += n;
	}
	free(buf);
	return done ? (ssize_t)done : n;
}
