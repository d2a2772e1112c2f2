/*
 * namespace: directories and volumes by inode number.
 *
 * The index holds every inode.  A volume in use also has a struct ns_file
 * in a hash table keyed by inode number; its vol holds the live size and
 * block map, its "in" the attributes as last written to the index.  An
 * attribute read prefers the ns_file (the live size and allocation) over
 * the index.
 *
 * Unlink and rename-over move the volume's inode out of the tree (parent 0)
 * instead of deleting it: a handle still open keeps reading and writing it,
 * and the background thread deletes it, and its blocks, once nothing uses
 * it.  A daemon that stops before that leaves it to the next mount (see
 * ns_open: unlinked inodes are queued for deletion at mount).
 *
 * Every change of the tree is its own index transaction, durable when the
 * call returns.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "ns/names.h"
#include "ns/ns_int.h"
#include "vsnapfs/log.h"

/* ---- attributes and the file table -------------------------------------- */

void ns_attr_fill(struct ns *ns, const struct bmap_inode *in, struct ns_file *f,
		  struct ns_attr *out)
{
	memset(out, 0, sizeof(*out));
	out->ino = in->ino;
	out->uid = in->uid;
	out->gid = in->gid;
	out->atime_ns = in->atime_ns;
	out->mtime_ns = in->mtime_ns;
	out->ctime_ns = in->ctime_ns;
	out->blksize = ns->bs > 65536 ? ns->bs : 65536;
	if (in->kind == BMAP_DIR) {
		out->mode = S_IFDIR | in->mode;
		out->nlink = 2;
		return;
	}
	out->mode = S_IFREG | in->mode;
	out->nlink = in->parent ? 1 : 0;
	out->size = in->size;
	if (f) {
		int64_t w = atomic_load(&f->wtime_ns);

		out->size = vol_size(f->v);
		/* not loaded yet: the caller counts in the index (attr_of) */
		out->blocks = vol_own_blocks(f->v) * (ns->bs / 512);
		if (w > out->mtime_ns)
			out->mtime_ns = out->ctime_ns = w;
	}
}

struct ns_file *ns_file_find(struct ns *ns, uint64_t ino)
{
	struct ns_file *f = ns->files[ino % NS_FILE_BUCKETS];

	while (f && f->ino != ino)
		f = f->next;
	return f;
}

static void file_unhash(struct ns *ns, struct ns_file *f)
{
	struct ns_file **pp = &ns->files[f->ino % NS_FILE_BUCKETS];

	while (*pp != f)
		pp = &(*pp)->next;
	*pp = f->next;
}

int ns_reap_queue(struct ns *ns, uint64_t ino)
{
	if (ns->nreap == ns->reap_cap) {
		size_t cap = ns->reap_cap ? ns->reap_cap * 2 : 64;
		uint64_t *r = realloc(ns->reap, cap * sizeof(*r));

		if (!r)
			return -ENOMEM;
		ns->reap = r;
		ns->reap_cap = cap;
	}
	ns->reap[ns->nreap++] = ino;
	return 0;
}

/*
 * Drop a reference.  The last one of an unlinked volume queues its
 * deletion; a linked one stays cached until the flusher finds it clean.
 */
void ns_file_unref(struct ns *ns, struct ns_file *f)
{
	bool gone;

	pthread_mutex_lock(&ns->db_mu);
	pthread_mutex_lock(&ns->files_mu);
	gone = --f->refs == 0 && f->unlinked;
	if (gone) {
		file_unhash(ns, f);
		if (ns_reap_queue(ns, f->ino))
			vlog(LOG_ERR, "inode %llu: out of memory; it is deleted at next mount",
			     (unsigned long long)f->ino);
	}
	pthread_mutex_unlock(&ns->files_mu);
	pthread_mutex_unlock(&ns->db_mu);
	if (gone) {
		vol_close(f->v);
		free(f);
		pthread_cond_signal(&ns->bg_cond);
	}
}

/*
 * Attributes of ino from the index, with the live state of an open volume.
 * A closed volume's allocation is its node's row count in the index.
 * Assumes db_mu.
 */
static int attr_of(struct ns *ns, const struct bmap_inode *in, struct ns_attr *out)
{
	struct ns_file *f;
	uint64_t nrows = 0;
	int rc = 0;

	uint64_t node = in->node;

	pthread_mutex_lock(&ns->files_mu);
	f = in->kind == BMAP_VOL ? ns_file_find(ns, in->ino) : NULL;
	ns_attr_fill(ns, f ? &f->in : in, f, out);
	if (f && !vol_loaded(f->v))
		node = vol_node(f->v);
	pthread_mutex_unlock(&ns->files_mu);
	if (in->kind == BMAP_VOL && (!f || !vol_loaded(f->v))) {
		rc = bmap_row_count(ns->bm, node, &nrows);
		out->blocks = nrows * (ns->bs / 512);
	}
	return rc;
}

static int get_dir(struct ns *ns, uint64_t ino, struct bmap_inode *out)
{
	int rc = bmap_inode_get(ns->bm, ino, out);

	if (!rc && out->kind != BMAP_DIR)
		rc = -ENOTDIR;
	return rc;
}

/* D/.snapshots: a directory owned like D. */
static void ctl_attr(struct ns *ns, const struct bmap_inode *d, struct ns_attr *out)
{
	ns_attr_fill(ns, d, NULL, out);
	out->ino = ino_ctl(d->ino);
	out->mode = S_IFDIR | 0755;
}

static void sroot_attr(struct ns *ns, const struct bmap_snap *s, const struct bmap_inode *d,
		       struct ns_attr *out)
{
	ns_attr_fill(ns, d, NULL, out);
	out->ino = ino_sroot(s->id);
	out->mode = S_IFDIR | 0555;
	out->atime_ns = out->mtime_ns = out->ctime_ns = s->created_ns;
}

/*
 * An inode inside a snapshot.  It keeps the mode it had (as ZFS snapshots
 * do): cp gives a clone its source's mode, and a clone of a disk must be
 * writable; every change fails with EROFS all the same.  A volume reports
 * every byte as allocated (st_blocks * 512 >= st_size), because coreutils
 * cp uses copy_file_range, which is how a linked clone is made, only for a
 * source that looks dense (see docs/snapshots.md).
 */
static void sinode_attr(struct ns *ns, uint64_t snap, const struct bmap_inode *in,
			struct ns_attr *out)
{
	ns_attr_fill(ns, in, NULL, out);
	out->ino = ino_snap(snap, in->ino);
	if (in->kind == BMAP_VOL) {
		out->nlink = 1;
		out->blocks = (in->size + 511) / 512;
	}
}

/* The snapshot and the directory (its original inode) that ino, a snapshot
 * root or a directory inside a snapshot, shows.  Assumes db_mu. */
static int snap_dir(struct ns *ns, uint64_t ino, uint64_t *snap, uint64_t *dir)
{
	struct bmap_snap s;
	struct bmap_inode in;
	int rc;

	if (ino_kind(ino) == INO_SROOT) {
		rc = bmap_snap_get(ns->bm, ino_payload(ino), &s);
		*snap = s.id;
		*dir = s.dir;
		return rc;
	}
	*snap = ino_snap_id(ino);
	*dir = ino_snap_ino(ino);
	rc = bmap_sinode_get(ns->bm, *snap, *dir, &in);
	if (!rc && in.kind != BMAP_DIR)
		rc = -ENOTDIR;
	return rc;
}

/* Attributes of any inode; assumes db_mu. */
static int attr_any(struct ns *ns, uint64_t ino, struct ns_attr *out)
{
	struct bmap_inode in;
	struct bmap_snap s;
	int rc;

	switch (ino_kind(ino)) {
	case INO_LIVE:
		rc = bmap_inode_get(ns->bm, ino, &in);
		return rc ? rc : attr_of(ns, &in, out);
	case INO_CTL:
		rc = get_dir(ns, ino_payload(ino), &in);
		if (!rc)
			ctl_attr(ns, &in, out);
		return rc;
	case INO_SROOT:
		rc = bmap_snap_get(ns->bm, ino_payload(ino), &s);
		if (!rc)
			rc = bmap_inode_get(ns->bm, s.dir, &in);
		if (!rc)
			sroot_attr(ns, &s, &in, out);
		return rc;
	default:
		rc = bmap_sinode_get(ns->bm, ino_snap_id(ino), ino_snap_ino(ino), &in);
		if (!rc)
			sinode_attr(ns, ino_snap_id(ino), &in, out);
		return rc;
	}
}

/* ---- lookups ------------------------------------------------------------- */

int ns_lookup(struct ns *ns, uint64_t dir, const char *name, struct ns_attr *out)
{
	struct bmap_inode in;
	int rc;

	struct bmap_snap s;
	uint64_t snap, sdir;

	if (strlen(name) > BMAP_NAME_MAX)
		return -ENAMETOOLONG;
	pthread_mutex_lock(&ns->db_mu);
	switch (ino_kind(dir)) {
	case INO_LIVE:
		if (!strcmp(name, ".snapshots")) {
			rc = get_dir(ns, dir, &in);
			if (!rc)
				ctl_attr(ns, &in, out);
			break;
		}
		rc = bmap_inode_lookup(ns->bm, dir, name, &in);
		if (!rc)
			rc = attr_of(ns, &in, out);
		break;
	case INO_CTL:
		rc = bmap_snap_lookup(ns->bm, ino_payload(dir), name, &s);
		if (!rc)
			rc = bmap_inode_get(ns->bm, s.dir, &in);
		if (!rc)
			sroot_attr(ns, &s, &in, out);
		break;
	default:
		/* a snapshot has no .snapshots of its own */
		rc = snap_dir(ns, dir, &snap, &sdir);
		if (!rc)
			rc = bmap_sinode_lookup(ns->bm, snap, sdir, name, &in);
		if (!rc)
			sinode_attr(ns, snap, &in, out);
	}
	pthread_mutex_unlock(&ns->db_mu);
	return rc;
}

int ns_getattr(struct ns *ns, uint64_t ino, struct ns_attr *out)
{
	struct ns_file *f;
	int rc;

	pthread_mutex_lock(&ns->files_mu);
	f = ino_kind(ino) == INO_LIVE ? ns_file_find(ns, ino) : NULL;
	if (f && !vol_loaded(f->v))
		f = NULL;               /* its allocation is counted in the index */
	if (f)
		ns_attr_fill(ns, &f->in, f, out);
	pthread_mutex_unlock(&ns->files_mu);
	if (f)
		return 0;
	pthread_mutex_lock(&ns->db_mu);
	rc = attr_any(ns, ino, out);
	pthread_mutex_unlock(&ns->db_mu);
	return rc;
}

/* ---- creating and removing ---------------------------------------------- */

static int make_inode(struct ns *ns, uint64_t dir, const char *name, uint32_t kind,
		      uint32_t mode, uint32_t uid, uint32_t gid, struct ns_attr *out)
{
	struct bmap_inode in = { .parent = dir, .kind = kind, .mode = mode & 07777,
				 .uid = uid, .gid = gid };
	struct bmap_inode d;
	struct bmap_node node = { 0 };
	int rc;

	if (ns->readonly || ino_kind(dir) == INO_SROOT || ino_kind(dir) == INO_SNAP)
		return -EROFS;
	if (ino_kind(dir) == INO_CTL)
		return kind == BMAP_DIR ? ns_snap_create(ns, ino_payload(dir), name, out) : -EPERM;
	rc = ns_name_check(name);
	if (rc)
		return rc;
	in.atime_ns = in.mtime_ns = in.ctime_ns = ns_now_ns();
	snprintf(in.name, sizeof(in.name), "%s", name);

	pthread_mutex_lock(&ns->db_mu);
	rc = get_dir(ns, dir, &d);
	if (rc)
		goto out;
	rc = bmap_begin(ns->bm);
	if (rc)
		goto out;
	if (kind == BMAP_VOL) {
		rc = bmap_node_create(ns->bm, &node);
		in.node = node.id;
	}
	if (!rc)
		rc = bmap_inode_insert(ns->bm, &in);
	if (!rc) {
		d.mtime_ns = d.ctime_ns = in.ctime_ns;
		rc = bmap_inode_update(ns->bm, &d);
	}
	if (!rc)
		rc = bmap_commit(ns->bm);
	if (rc)
		bmap_rollback(ns->bm);
	else
		ns_attr_fill(ns, &in, NULL, out);
out:
	pthread_mutex_unlock(&ns->db_mu);
	return rc;
}

int ns_mkdir(struct ns *ns, uint64_t dir, const char *name, uint32_t mode, uint32_t uid,
	     uint32_t gid, struct ns_attr *out)
{
	return make_inode(ns, dir, name, BMAP_DIR, mode, uid, gid, out);
}

int ns_create(struct ns *ns, uint64_t dir, const char *name, uint32_t mode, uint32_t uid,
	      uint32_t gid, struct ns_attr *out)
{
	return make_inode(ns, dir, name, BMAP_VOL, mode, uid, gid, out);
}

/*
 * Take volume "in" out of the tree: it keeps its inode (parent 0) while a
 * handle is open, and is queued for deletion otherwise.  Assumes db_mu and
 * an open transaction.
 */
static int detach_volume(struct ns *ns, const struct bmap_inode *in)
{
	struct ns_file *f;
	bool busy;
	int rc;

	rc = bmap_inode_move(ns->bm, in->ino, 0, "");
	if (rc)
		return rc;
	pthread_mutex_lock(&ns->files_mu);
	f = ns_file_find(ns, in->ino);
	busy = f && f->refs > 0;
	if (f) {
		f->unlinked = true;
		f->in.parent = 0;
		f->in.name[0] = 0;
	}
	if (f && !busy) {
		/* cached but unused: its unflushed changes no longer matter */
		file_unhash(ns, f);
	}
	pthread_mutex_unlock(&ns->files_mu);
	if (f && !busy) {
		vol_close(f->v);
		free(f);
	}
	if (!busy)
		rc = ns_reap_queue(ns, in->ino);
	return rc;
}

/* Stamp a directory's mtime/ctime; assumes db_mu. */
static int touch_dir(struct ns *ns, uint64_t dir, int64_t now)
{
	struct bmap_inode d;
	int rc = bmap_inode_get(ns->bm, dir, &d);

	if (rc)
		return rc;
	d.mtime_ns = d.ctime_ns = now;
	return bmap_inode_update(ns->bm, &d);
}

static int remove_entry(struct ns *ns, uint64_t dir, const char *name, bool want_dir)
{
	struct bmap_inode in;
	uint64_t n;
	int rc;

	if (ns->readonly || ino_kind(dir) == INO_SROOT || ino_kind(dir) == INO_SNAP)
		return -EROFS;
	if (ino_kind(dir) == INO_CTL)
		return want_dir ? ns_snap_delete(ns, ino_payload(dir), name) : -EISDIR;
	if (!strcmp(name, ".snapshots")) {
		/*
		 * It cannot go away, but an empty one may be "removed" (it stays):
		 * otherwise rm -r of any directory would fail on it.  With
		 * snapshots in it, it is not empty.
		 */
		uint64_t nsnap = 0;

		if (!want_dir)
			return -EISDIR;
		pthread_mutex_lock(&ns->db_mu);
		rc = get_dir(ns, dir, &in);
		if (!rc)
			rc = bmap_snap_count(ns->bm, dir, &nsnap);
		pthread_mutex_unlock(&ns->db_mu);
		return rc ? rc : nsnap ? -ENOTEMPTY : 0;
	}
	pthread_mutex_lock(&ns->db_mu);
	rc = bmap_inode_lookup(ns->bm, dir, name, &in);
	if (rc)
		goto out;
	if (want_dir && in.kind != BMAP_DIR) {
		rc = -ENOTDIR;
		goto out;
	}
	if (!want_dir && in.kind == BMAP_DIR) {
		rc = -EISDIR;
		goto out;
	}
	if (want_dir) {
		/* a directory with snapshots is not empty: D/.snapshots holds them */
		rc = bmap_dir_count(ns->bm, in.ino, &n);
		if (!rc && !n)
			rc = bmap_snap_count(ns->bm, in.ino, &n);
		if (!rc && n)
			rc = -ENOTEMPTY;
		if (rc)
			goto out;
	}
	rc = bmap_begin(ns->bm);
	if (rc)
		goto out;
	rc = want_dir ? bmap_inode_delete(ns->bm, in.ino) : detach_volume(ns, &in);
	if (!rc)
		rc = touch_dir(ns, dir, ns_now_ns());
	if (!rc)
		rc = bmap_commit(ns->bm);
	if (rc)
		bmap_rollback(ns->bm);
out:
	pthread_mutex_unlock(&ns->db_mu);
	if (!rc && !want_dir)
		pthread_cond_signal(&ns->bg_cond);
	return rc;
}

int ns_unlink(struct ns *ns, uint64_t dir, const char *name)
{
	return remove_entry(ns, dir, name, false);
}

int ns_rmdir(struct ns *ns, uint64_t dir, const char *name)
{
	return remove_entry(ns, dir, name, true);
}

/* Is "anc" dir or one of its ancestors?  Assumes db_mu. */
static int is_ancestor(struct ns *ns, uint64_t anc, uint64_t dir, bool *out)
{
	struct bmap_inode in;
	int rc = 0;

	*out = false;
	while (dir && !rc) {
		if (dir == anc) {
			*out = true;
			break;
		}
		rc = bmap_inode_get(ns->bm, dir, &in);
		dir = in.parent;
	}
	return rc;
}

int ns_rename(struct ns *ns, uint64_t dir, const char *name, uint64_t newdir,
	      const char *newname, unsigned flags)
{
	struct bmap_inode src, dst, d;
	bool have_dst, loop;
	uint64_t n;
	int64_t now = ns_now_ns();
	int rc;

	if (ns->readonly)
		return -EROFS;
	if (flags & ~RENAME_NOREPLACE)
		return -EINVAL;
	if (ino_kind(dir) >= INO_SROOT || ino_kind(newdir) >= INO_SROOT)
		return -EROFS;
	if (ino_kind(dir) == INO_CTL || ino_kind(newdir) == INO_CTL) {
		/* snapshots are renamed in place, never moved in or out */
		if (dir != newdir)
			return -EPERM;
		return ns_snap_rename(ns, ino_payload(dir), name, newname, flags);
	}
	if (!strcmp(name, ".snapshots"))
		return -EPERM;
	rc = ns_name_check(newname);
	if (rc)
		return rc;

	pthread_mutex_lock(&ns->db_mu);
	rc = bmap_inode_lookup(ns->bm, dir, name, &src);
	if (!rc)
		rc = get_dir(ns, newdir, &d);
	if (rc)
		goto out;
	rc = bmap_inode_lookup(ns->bm, newdir, newname, &dst);
	have_dst = rc == 0;
	if (rc && rc != -ENOENT)
		goto out;
	rc = 0;
	if (have_dst && dst.ino == src.ino)
		goto out;               /* rename to itself: nothing to do */
	if (have_dst && (flags & RENAME_NOREPLACE))
		rc = -EEXIST;
	else if (have_dst && src.kind == BMAP_DIR && dst.kind != BMAP_DIR)
		rc = -ENOTDIR;
	else if (have_dst && src.kind != BMAP_DIR && dst.kind == BMAP_DIR)
		rc = -EISDIR;
	else if (have_dst && dst.kind == BMAP_DIR &&
		 !(rc = bmap_dir_count(ns->bm, dst.ino, &n)) && n)
		rc = -ENOTEMPTY;
	if (!rc && src.kind == BMAP_DIR) {
		rc = is_ancestor(ns, src.ino, newdir, &loop);
		if (!rc && loop)
			rc = -EINVAL;
	}
	if (rc)
		goto out;

	rc = bmap_begin(ns->bm);
	if (rc)
		goto out;
	if (have_dst)
		rc = dst.kind == BMAP_DIR ? bmap_inode_delete(ns->bm, dst.ino) : detach_volume(ns, &dst);
	if (!rc)
		rc = bmap_inode_move(ns->bm, src.ino, newdir, newname);
	if (!rc)
		rc = touch_dir(ns, dir, now);
	if (!rc && newdir != dir)
		rc = touch_dir(ns, newdir, now);
	if (!rc)
		rc = bmap_commit(ns->bm);
	if (rc) {
		bmap_rollback(ns->bm);
		goto out;
	}
	pthread_mutex_lock(&ns->files_mu);
	struct ns_file *f = ns_file_find(ns, src.ino);
	if (f) {
		f->in.parent = newdir;
		snprintf(f->in.name, sizeof(f->in.name), "%s", newname);
		vol_set_label(f->v, newname);
	}
	pthread_mutex_unlock(&ns->files_mu);
out:
	pthread_mutex_unlock(&ns->db_mu);
	return rc;
}

/* ---- attributes ---------------------------------------------------------- */

/* May the content of ino change (write, hole punch, size)?  Not in a
 * read-only mount or a snapshot; not after a failed sync, where nothing
 * can be made durable, zeros and holes neither (chunk_sync). */
static int may_change(struct ns *ns, uint64_t ino)
{
	if (ns->readonly || ino_kind(ino) != INO_LIVE)
		return -EROFS;
	return chunk_poisoned(ns->cs) ? -EIO : 0;
}

int ns_setattr(struct ns *ns, uint64_t ino, const struct ns_attr *a, int which,
	       struct ns_attr *out)
{
	struct ns_file *f = NULL;
	struct bmap_inode in;
	int64_t now = ns_now_ns();
	int rc = 0;

	if (ns->readonly || ino_kind(ino) == INO_SROOT || ino_kind(ino) == INO_SNAP)
		return -EROFS;
	if (ino_kind(ino) == INO_CTL)
		return -EPERM;
	if (which & NS_SET_SIZE) {
		rc = may_change(ns, ino);
		if (!rc)
			rc = ns_open_file(ns, ino, O_WRONLY, &f);
		if (rc)
			return rc;
		rc = a->size == 0 ? ns_truncate_zero(ns, f) : vol_truncate(f->v, a->size);
		if (!rc)
			atomic_store(&f->wtime_ns, now);
	}
	pthread_mutex_lock(&ns->db_mu);
	if (!rc)
		rc = bmap_inode_get(ns->bm, ino, &in);
	if (!rc && (which & ~NS_SET_SIZE)) {
		pthread_mutex_lock(&ns->files_mu);
		struct ns_file *cached = ns_file_find(ns, ino);
		if (cached)
			in = cached->in;    /* the flushed size, never the live one */
		if (which & NS_SET_MODE)
			in.mode = a->mode & 07777;
		if (which & NS_SET_UID)
			in.uid = a->uid;
		if (which & NS_SET_GID)
			in.gid = a->gid;
		if (which & NS_SET_ATIME)
			in.atime_ns = a->atime_ns;
		if (which & NS_SET_MTIME) {
			in.mtime_ns = a->mtime_ns;
			if (cached)
				atomic_store(&cached->wtime_ns, 0);
		}
		in.ctime_ns = now;
		if (cached)
			cached->in = in;
		pthread_mutex_unlock(&ns->files_mu);
		rc = bmap_inode_update(ns->bm, &in);
	}
	if (!rc)
		rc = attr_of(ns, &in, out);
	pthread_mutex_unlock(&ns->db_mu);
	if (f)
		ns_release(ns, f);
	return rc;
}

/* ---- directories ---------------------------------------------------------- */

struct rd {
	struct ns *ns;
	ns_dirent_fn fn;
	void *ctx;
	uint64_t snap;                  /* listing inside this snapshot, or 0 */
	uint64_t base;                  /* cookie = ino + base */
	const struct bmap_inode *dir;   /* live or control directory listed */
	bool stopped;
	struct bmap_inode *ents;        /* gathered children */
	size_t n, cap;
};

/*
 * Cookies: 1 is ".", 2 is "..".  In a live directory 3 is ".snapshots" and
 * an inode's is its number + 3; in a control directory a snapshot's is its
 * id + 2; in a snapshot an inode's is its number + 2.
 */
/* Entries are gathered first and reported after the walk: reporting one
 * may query the index (a volume's allocation), which a walk forbids. */
static int rd_collect(void *ctx, const struct bmap_inode *in)
{
	struct rd *rd = ctx;

	if (rd->n == rd->cap) {
		size_t cap = rd->cap ? rd->cap * 2 : 64;
		struct bmap_inode *v = realloc(rd->ents, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		rd->ents = v;
		rd->cap = cap;
	}
	rd->ents[rd->n++] = *in;
	/* one reply holds at most a few hundred entries: stop early */
	return rd->n >= 1024 ? 1 : 0;
}

static int rd_snap(void *ctx, const struct bmap_snap *s)
{
	struct rd *rd = ctx;
	struct ns_attr a;

	sroot_attr(rd->ns, s, rd->dir, &a);
	if (rd->fn(rd->ctx, s->name, &a, s->id + 2)) {
		rd->stopped = true;
		return 1;
	}
	return 0;
}

int ns_readdir(struct ns *ns, uint64_t dir, uint64_t after, ns_dirent_fn fn, void *ctx)
{
	struct rd rd = { .ns = ns, .fn = fn, .ctx = ctx, .base = 2 };
	struct bmap_inode d, p;
	struct ns_attr a, self;
	uint64_t sdir = 0;
	int rc;

	pthread_mutex_lock(&ns->db_mu);
	rc = attr_any(ns, dir, &self);
	if (!rc && !S_ISDIR(self.mode))
		rc = -ENOTDIR;
	if (!rc && ino_kind(dir) >= INO_SROOT)
		rc = snap_dir(ns, dir, &rd.snap, &sdir);
	if (!rc && ino_kind(dir) <= INO_CTL)
		rc = get_dir(ns, ino_payload(dir), &d);
	if (rc)
		goto out;
	rd.dir = &d;
	if (after < 1 && fn(ctx, ".", &self, 1))
		goto out;
	if (after < 2) {
		/* "..": the kernel only uses its inode number for display */
		a = self;
		if (ino_kind(dir) == INO_LIVE && d.parent && bmap_inode_get(ns->bm, d.parent, &p) == 0)
			ns_attr_fill(ns, &p, NULL, &a);
		else if (ino_kind(dir) == INO_CTL)
			ns_attr_fill(ns, &d, NULL, &a);
		if (fn(ctx, "..", &a, 2))
			goto out;
	}
	switch (ino_kind(dir)) {
	case INO_LIVE:
		rd.base = 3;
		if (after < 3) {
			ctl_attr(ns, &d, &a);
			if (fn(ctx, ".snapshots", &a, 3))
				goto out;
		}
		rc = bmap_dir_list(ns->bm, dir, after > 3 ? after - 3 : 0, rd_collect, &rd);
		break;
	case INO_CTL:
		rc = bmap_snap_list(ns->bm, d.ino, after > 2 ? after - 2 : 0, rd_snap, &rd);
		break;
	default:
		rc = bmap_sinode_list(ns->bm, rd.snap, sdir, after > 2 ? after - 2 : 0, rd_collect,
				      &rd);
	}
	if (rc == 1 || rd.stopped)
		rc = 0;
	for (size_t i = 0; i < rd.n && !rc; i++) {
		if (rd.snap)
			sinode_attr(ns, rd.snap, &rd.ents[i], &a);
		else
			rc = attr_of(ns, &rd.ents[i], &a);
		if (!rc && fn(ctx, rd.ents[i].name, &a, rd.ents[i].ino + rd.base))
			break;
	}
out:
	pthread_mutex_unlock(&ns->db_mu);
	free(rd.ents);
	return rc;
}

/* ---- open volumes ---------------------------------------------------------- */

int ns_open_file(struct ns *ns, uint64_t ino, int flags, struct ns_file **out)
{
	struct ns_file *f;
	struct bmap_inode in;
	int rc = 0;

	if (ns->readonly && (flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	if (ino_kind(ino) == INO_SNAP && ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)))
		return -EROFS;
	pthread_mutex_lock(&ns->db_mu);
	pthread_mutex_lock(&ns->files_mu);
	f = ns_file_find(ns, ino);
	if (f) {
		f->refs++;
		f->opens++;
	}
	pthread_mutex_unlock(&ns->files_mu);
	if (f)
		goto out;

	/* only db_mu holders insert, so nobody races us to this ino */
	switch (ino_kind(ino)) {
	case INO_LIVE:
		rc = bmap_inode_get(ns->bm, ino, &in);
		break;
	case INO_SNAP:
		rc = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) ? -EROFS :
		     bmap_sinode_get(ns->bm, ino_snap_id(ino), ino_snap_ino(ino), &in);
		break;
	default:
		rc = -EISDIR;
	}
	if (!rc && in.kind != BMAP_VOL)
		rc = -EISDIR;
	if (rc)
		goto out;
	f = calloc(1, sizeof(*f));
	if (!f) {
		rc = -ENOMEM;
		goto out;
	}
	f->ino = ino;
	f->in = in;
	f->refs = f->opens = 1;
	f->unlinked = ino_kind(ino) == INO_LIVE && in.parent == 0;
	rc = vol_open(ns->cs, ns->bm, in.node, in.size,
		      ns->readonly || ino_kind(ino) != INO_LIVE, in.name, &f->v);
	if (!rc)
		vol_set_index(f->v, &ns->vix);
	if (rc) {
		vlog(LOG_ERR, "%s: cannot open the volume: %s", in.name, strerror(-rc));
		free(f);
		f = NULL;
		goto out;
	}
	pthread_mutex_lock(&ns->files_mu);
	f->next = ns->files[ino % NS_FILE_BUCKETS];
	ns->files[ino % NS_FILE_BUCKETS] = f;
	pthread_mutex_unlock(&ns->files_mu);
out:
	pthread_mutex_unlock(&ns->db_mu);
	*out = f;
	return rc;
}

void ns_release(struct ns *ns, struct ns_file *f)
{
	pthread_mutex_lock(&ns->files_mu);
	f->opens--;
	pthread_mutex_unlock(&ns->files_mu);
	ns_file_unref(ns, f);
}

ssize_t ns_read(struct ns *ns, struct ns_file *f, void *buf, size_t len, uint64_t off)
{
	return vol_read(f->v, buf, len, off);
}

/*
 * May len more bytes of data be written?  Free space (spare chunk files
 * included: they are filled first) is measured at most
 * every 100 ms or 8 MiB of writes; in between, what was written counts as
 * used.  Below the reserve data writes get ENOSPC while the index, which
 * needs the room to record deletions, keeps working.
 */
static bool space_ok(struct ns *ns, size_t len)
{
	int64_t now = ns_now_ns();
	int64_t used = atomic_fetch_add(&ns->space_used, (int64_t)len) + (int64_t)len;

	if (used > (8 << 20) || now - atomic_load(&ns->space_when_ns) > 100000000) {
		struct statvfs st;

		if (statvfs(ns->dir, &st) == 0) {
			atomic_store(&ns->space_free, (int64_t)(st.f_bavail * st.f_frsize +
								chunk_spare_bytes(ns->cs)));
			atomic_store(&ns->space_used, 0);
			atomic_store(&ns->space_when_ns, now);
			used = 0;
		}
	}
	return atomic_load(&ns->space_free) - used > ns->space_reserve;
}

bool ns_sync_failed(struct ns *ns)
{
	return chunk_poisoned(ns->cs);
}

ssize_t ns_write(struct ns *ns, struct ns_file *f, const void *buf, size_t len, uint64_t off)
{
	ssize_t n;
	int e = may_change(ns, f->ino);

	if (e)
		return e;
	if (!space_ok(ns, len)) {
		/* maybe garbage collection can give some back */
		atomic_store(&ns->gc_wanted, true);
		pthread_cond_signal(&ns->bg_cond);
		return -ENOSPC;
	}
	e = ns_change_begin(ns);
	n = vol_write(f->v, buf, len, off);
	ns_change_end(ns, e);
	if (n > 0)
		atomic_store(&f->wtime_ns, ns_now_ns());
	return n;
}

int ns_fallocate(struct ns *ns, struct ns_file *f, int mode, uint64_t off, uint64_t len)
{
	bool keep = mode & FALLOC_FL_KEEP_SIZE;
	uint64_t end;
	int rc, e;

	rc = may_change(ns, f->ino);
	if (rc)
		return rc;
	if (off > VOL_MAX_BYTES || len > VOL_MAX_BYTES - off)
		return -EFBIG;
	end = off + len;
	e = ns_change_begin(ns);
	switch (mode & ~FALLOC_FL_KEEP_SIZE) {
	case 0:
		/* thin volumes: allocating only reserves the size */
		break;
	case FALLOC_FL_PUNCH_HOLE:
		if (!keep)
			rc = -EOPNOTSUPP;   /* fallocate(2): PUNCH_HOLE needs KEEP_SIZE */
		else
			rc = vol_punch(f->v, off, len);
		break;
	case FALLOC_FL_ZERO_RANGE:
		rc = vol_punch(f->v, off, len);
		break;
	default:
		rc = -EOPNOTSUPP;
	}
	if (!rc && !keep && end > vol_size(f->v))
		rc = vol_truncate(f->v, end);
	ns_change_end(ns, e);
	if (!rc && (mode & ~FALLOC_FL_KEEP_SIZE))
		atomic_store(&f->wtime_ns, ns_now_ns());
	return rc;
}

int ns_lseek(struct ns *ns, struct ns_file *f, uint64_t off, int whence, uint64_t *out)
{
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	return vol_seek(f->v, off, whence, out);
}

int ns_fsync(struct ns *ns, struct ns_file *f)
{
	return ns_flush(ns);
}

int ns_statfs(struct ns *ns, struct statvfs *out)
{
	uint64_t spare;

	if (statvfs(ns->dir, out))
		return -errno;
	/* spare chunk files are filled before the store grows: free space */
	spare = ns->cs ? chunk_spare_bytes(ns->cs) / out->f_frsize : 0;
	out->f_bfree += spare;
	out->f_bavail += spare;
	out->f_namemax = BMAP_NAME_MAX;
	return 0;
}
