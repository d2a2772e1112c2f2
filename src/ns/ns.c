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
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/log.h"

/* ---- attributes ------------------------------------------------------------ */

/*
 * Attributes of ino from the index, with the live state of an open volume.
 * A closed volume's allocation is its node's row count in the index.
 * Assumes db_mu.
 */
static int attr_of(struct ns *ns, const struct bmap_inode *in, struct ns_attr *out)
{
	struct ns_file *f;
	uint64_t nblocks = 0, node = in->node;
	int rc = 0;

	assert(lock_held(&ns->db_mu));
	lock_mutex_lock(&ns->files_mu);
	f = in->kind == BMAP_VOL ? ns_files_find(ns, in->ino) : NULL;
	/* an open volume counts its blocks itself (ns_attr_fill) */
	ns_attr_fill(ns, f ? &f->in : in, f, out);
	lock_mutex_unlock(&ns->files_mu);
	if (in->kind == BMAP_VOL && !f) {
		/* every block it shows, else (not counted yet) its own */
		rc = bmap_refs_get(ns->bm, node, &nblocks);
		if (rc == -ENOENT)
			rc = bmap_node_blocks(ns->bm, node, &nblocks);
		out->blocks = nblocks * (ns->bs / 512);
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


/* The snapshot and the directory (its original inode) that ino, a snapshot
 * root or a directory inside a snapshot, shows.  Assumes db_mu. */
static int snap_dir(struct ns *ns, uint64_t ino, uint64_t *snap, uint64_t *dir)
{
	struct bmap_snap s;
	struct bmap_inode in;
	int rc;

	assert(lock_held(&ns->db_mu));
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

	assert(lock_held(&ns->db_mu));
	switch (ino_kind(ino)) {
	case INO_LIVE:
		rc = bmap_inode_get(ns->bm, ino, &in);
		return rc ? rc : attr_of(ns, &in, out);
	case INO_CTL:
		rc = get_dir(ns, ino_payload(ino), &in);
		if (!rc)
			ns_ctl_attr(ns, &in, out);
		return rc;
	case INO_SROOT:
		rc = bmap_snap_get(ns->bm, ino_payload(ino), &s);
		if (!rc)
			rc = bmap_inode_get(ns->bm, s.dir, &in);
		if (!rc)
			ns_sroot_attr(ns, &s, &in, out);
		return rc;
	default:
		rc = bmap_sinode_get(ns->bm, ino_snap_id(ino), ino_snap_ino(ino), &in);
		if (!rc)
			ns_sinode_attr(ns, ino_snap_id(ino), &in, out);
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
	lock_mutex_lock(&ns->db_mu);
	switch (ino_kind(dir)) {
	case INO_LIVE:
		if (!strcmp(name, ".snapshots")) {
			rc = get_dir(ns, dir, &in);
			if (!rc)
				ns_ctl_attr(ns, &in, out);
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
			ns_sroot_attr(ns, &s, &in, out);
		break;
	default:
		/* a snapshot has no .snapshots of its own */
		rc = snap_dir(ns, dir, &snap, &sdir);
		if (!rc)
			rc = bmap_sinode_lookup(ns->bm, snap, sdir, name, &in);
		if (!rc)
			ns_sinode_attr(ns, snap, &in, out);
	}
	lock_mutex_unlock(&ns->db_mu);
	return rc;
}

int ns_getattr(struct ns *ns, uint64_t ino, struct ns_attr *out)
{
	struct ns_file *f;
	int rc;

	lock_mutex_lock(&ns->files_mu);
	f = ino_kind(ino) == INO_LIVE ? ns_files_find(ns, ino) : NULL;
	if (f)
		ns_attr_fill(ns, &f->in, f, out);
	lock_mutex_unlock(&ns->files_mu);
	if (f)
		return 0;
	lock_mutex_lock(&ns->db_mu);
	rc = attr_any(ns, ino, out);
	lock_mutex_unlock(&ns->db_mu);
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

	lock_mutex_lock(&ns->db_mu);
	rc = get_dir(ns, dir, &d);
	if (rc)
		goto out;
	rc = ns_txn_begin(ns);
	if (rc)
		goto out;
	if (kind == BMAP_VOL) {
		rc = bmap_node_create(ns->bm, &node);
		if (!rc)
			rc = bmap_refs_set(ns->bm, node.id, 0);
		in.node = node.id;
	}
	if (!rc)
		rc = bmap_inode_insert(ns->bm, &in);
	if (!rc) {
		d.mtime_ns = d.ctime_ns = in.ctime_ns;
		rc = bmap_inode_update(ns->bm, &d);
	}
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc)
		ns_txn_rollback(ns);
	else
		ns_attr_fill(ns, &in, NULL, out);
out:
	lock_mutex_unlock(&ns->db_mu);
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

/* Stamp a directory's mtime/ctime; assumes db_mu. */
int ns_touch_dir(struct ns *ns, uint64_t dir, int64_t now)
{
	struct bmap_inode d;
	int rc;

	assert(lock_held(&ns->db_mu));
	rc = bmap_inode_get(ns->bm, dir, &d);
	if (rc)
		return rc;
	d.mtime_ns = d.ctime_ns = now;
	return bmap_inode_update(ns->bm, &d);
}

/* The volumes being received in a directory (hidden: see ns_readdir); 1 if
 * it holds anything else. */
struct hidden_kids {
	uint64_t *ino;
	size_t n, cap;
};

/* A volume being received: listed nowhere, reached by its name only. */
static bool recv_hidden(const struct bmap_inode *in)
{
	return in->kind == BMAP_VOL && ctl_recv_tmp_name(in->name);
}

static int hidden_kid(void *ctx, const struct bmap_inode *in)
{
	struct hidden_kids *h = ctx;

	if (!recv_hidden(in))
		return 1;
	if (ARRAY_RESERVE(h->ino, h->cap, h->n, 8))
		return -ENOMEM;
	h->ino[h->n++] = in->ino;
	return 0;
}

/* Is directory dir empty but for volumes being received (into h)?  0, or
 * -ENOTEMPTY.  Assumes db_mu. */
static int hidden_only(struct ns *ns, uint64_t dir, struct hidden_kids *h)
{
	int rc = bmap_dir_list(ns->bm, dir, 0, hidden_kid, h);

	return rc == 1 ? -ENOTEMPTY : rc;
}

/*
 * May directory dir go (rmdir, or a rename over it)?  Not while it has
 * snapshots (D/.snapshots holds them: it is not empty); yes if it holds
 * nothing but volumes being received, which ls does not show, and which go
 * with it (into h) as unlinked volumes.  0, or -ENOTEMPTY.  Assumes db_mu.
 */
static int dir_removable(struct ns *ns, uint64_t dir, struct hidden_kids *h)
{
	uint64_t nsnap;
	int rc = bmap_snap_count(ns->bm, dir, &nsnap);

	if (!rc && nsnap)
		rc = -ENOTEMPTY;
	return rc ? rc : hidden_only(ns, dir, h);
}

/* Take them out of the tree, as unlinked volumes.  Assumes db_mu, in the
 * transaction that removes their directory. */
static int hidden_unlink(struct ns *ns, const struct hidden_kids *h)
{
	int rc = 0;

	for (size_t i = 0; i < h->n && !rc; i++)
		rc = bmap_inode_move(ns->bm, h->ino[i], 0, "");
	return rc;
}

/* After the commit: they are unlinked volumes now. */
static void hidden_detached(struct ns *ns, const struct hidden_kids *h)
{
	for (size_t i = 0; i < h->n; i++)
		ns_volume_detached(ns, h->ino[i]);
}

static int remove_entry(struct ns *ns, uint64_t dir, const char *name, bool want_dir)
{
	struct hidden_kids hk = { 0 };
	struct bmap_inode in;
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
		lock_mutex_lock(&ns->db_mu);
		rc = get_dir(ns, dir, &in);
		if (!rc)
			rc = bmap_snap_count(ns->bm, dir, &nsnap);
		lock_mutex_unlock(&ns->db_mu);
		return rc ? rc : nsnap ? -ENOTEMPTY : 0;
	}
	lock_mutex_lock(&ns->db_mu);
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
		rc = dir_removable(ns, in.ino, &hk);
		if (rc)
			goto out;
	}
	rc = ns_txn_begin(ns);
	if (rc)
		goto out;
	rc = hidden_unlink(ns, &hk);
	/* a volume keeps its inode, out of the tree (parent 0), until reaped */
	if (!rc)
		rc = want_dir ? bmap_inode_delete(ns->bm, in.ino) :
			bmap_inode_move(ns->bm, in.ino, 0, "");
	if (!rc)
		rc = ns_touch_dir(ns, dir, ns_now_ns());
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc)
		ns_txn_rollback(ns);
	else if (!want_dir)
		ns_volume_detached(ns, in.ino);
	if (!rc)
		hidden_detached(ns, &hk);
out:
	lock_mutex_unlock(&ns->db_mu);
	free(hk.ino);
	if (!rc && (!want_dir || hk.n))
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

	assert(lock_held(&ns->db_mu));
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
	struct hidden_kids hk = { 0 };
	struct bmap_inode src, dst, d;
	bool have_dst, loop;
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

	lock_mutex_lock(&ns->db_mu);
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
	else if (have_dst && dst.kind == BMAP_DIR)
		rc = dir_removable(ns, dst.ino, &hk);   /* as rmdir of it */
	if (!rc && src.kind == BMAP_DIR) {
		rc = is_ancestor(ns, src.ino, newdir, &loop);
		if (!rc && loop)
			rc = -EINVAL;
	}
	if (rc)
		goto out;

	rc = ns_txn_begin(ns);
	if (rc)
		goto out;
	rc = hidden_unlink(ns, &hk);
	if (!rc && have_dst)
		rc = dst.kind == BMAP_DIR ? bmap_inode_delete(ns->bm, dst.ino) :
					    bmap_inode_move(ns->bm, dst.ino, 0, "");
	if (!rc)
		rc = bmap_inode_move(ns->bm, src.ino, newdir, newname);
	if (!rc)
		rc = ns_touch_dir(ns, dir, now);
	if (!rc && newdir != dir)
		rc = ns_touch_dir(ns, newdir, now);
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc) {
		ns_txn_rollback(ns);
		goto out;
	}
	if (have_dst && dst.kind != BMAP_DIR)
		ns_volume_detached(ns, dst.ino);
	hidden_detached(ns, &hk);
	lock_mutex_lock(&ns->files_mu);
	struct ns_file *f = ns_files_find(ns, src.ino);
	if (f) {
		f->in.parent = newdir;
		snprintf(f->in.name, sizeof(f->in.name), "%s", newname);
		vol_set_label(f->v, newname);
	}
	lock_mutex_unlock(&ns->files_mu);
out:
	lock_mutex_unlock(&ns->db_mu);
	free(hk.ino);
	if (hk.n)
		pthread_cond_signal(&ns->bg_cond);
	return rc;
}

/* ---- attributes ---------------------------------------------------------- */

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
		rc = ns_may_change(ns, ino);
		if (!rc)
			rc = ns_open_file(ns, ino, O_WRONLY, &f);
		if (rc)
			return rc;
		if (a->size == 0) {
			rc = ns_truncate_zero(ns, f);
		} else {
			/* a cut inside a block rewrites it: an append GC waits for */
			int e = ns_change_begin(ns);

			rc = vol_truncate(f->v, a->size);
			ns_change_end(ns, e);
		}
		if (!rc)
			atomic_store(&f->wtime_ns, now);
	}
	/* flush_mu: no batch is being logged meanwhile, so none collected
	 * before this change can reach the index after it (each carries its
	 * volume's times); the transaction applies those already logged */
	lock_mutex_lock(&ns->flush_mu);
	lock_mutex_lock(&ns->db_mu);
	if (!rc)
		rc = ns_txn_begin(ns);
	if (rc) {
		lock_mutex_unlock(&ns->db_mu);
		lock_mutex_unlock(&ns->flush_mu);
		if (f)
			ns_release(ns, f);
		return rc;
	}
	rc = bmap_inode_get(ns->bm, ino, &in);
	if (!rc && (which & ~NS_SET_SIZE)) {
		lock_mutex_lock(&ns->files_mu);
		struct ns_file *cached = ns_files_find(ns, ino);
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
		lock_mutex_unlock(&ns->files_mu);
		rc = bmap_inode_update(ns->bm, &in);
	}
	if (!rc)
		rc = ns_txn_commit(ns);
	if (rc)
		ns_txn_rollback(ns);
	if (!rc)
		rc = attr_of(ns, &in, out);
	lock_mutex_unlock(&ns->db_mu);
	lock_mutex_unlock(&ns->flush_mu);
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

	if (recv_hidden(in))
		return 0;       /* not gathered: hidden ones never fill a reply */
	if (ARRAY_RESERVE(rd->ents, rd->cap, rd->n, 64))
		return -ENOMEM;
	rd->ents[rd->n++] = *in;
	/* one reply holds at most a few hundred entries: stop early */
	return rd->n >= 1024 ? 1 : 0;
}

static int rd_snap(void *ctx, const struct bmap_snap *s)
{
	struct rd *rd = ctx;
	struct ns_attr a;

	ns_sroot_attr(rd->ns, s, rd->dir, &a);
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

	lock_mutex_lock(&ns->db_mu);
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
			ns_ctl_attr(ns, &d, &a);
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
			ns_sinode_attr(ns, rd.snap, &rd.ents[i], &a);
		else
			rc = attr_of(ns, &rd.ents[i], &a);
		if (!rc && fn(ctx, rd.ents[i].name, &a, rd.ents[i].ino + rd.base))
			break;
	}
out:
	lock_mutex_unlock(&ns->db_mu);
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
	lock_mutex_lock(&ns->db_mu);
	lock_mutex_lock(&ns->files_mu);
	f = ns_files_find(ns, ino);
	/* a volume that lost its name (unlinked, or replaced by a receive)
	 * opens again only while it is open: a new open can come from a
	 * stale dentry, and its writes would be lost (or the volume deleted
	 * under it) */
	if (f && !f->opens && ino_kind(ino) == INO_LIVE &&
	    (bmap_inode_get(ns->bm, ino, &in) != 0 || in.parent == 0)) {
		lock_mutex_unlock(&ns->files_mu);
		f = NULL;
		rc = -ENOENT;
		goto out;
	}
	if (f) {
		f->refs++;
		f->opens++;
	}
	lock_mutex_unlock(&ns->files_mu);
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
	if (!rc && ino_kind(ino) == INO_LIVE && in.parent == 0)
		rc = -ENOENT;           /* lost its name and not open: see above */
	if (rc)
		goto out;
	f = calloc(1, sizeof(*f));
	if (!f) {
		rc = -ENOMEM;
		goto out;
	}
	f->ino = ino;
	f->in = in;
	f->st = ns_vstats_get(ns, ino);
	f->refs = f->opens = 1;
	f->unlinked = ino_kind(ino) == INO_LIVE && in.parent == 0;
	rc = vol_open(ns->cs, ns->bm, in.node, in.size,
		      ns->readonly || ino_kind(ino) != INO_LIVE, in.name, &f->v);
	if (!rc)
		vol_set_index(f->v, &ns->vix);
	if (rc) {
		vlog(LOG_ERR, "%s: cannot open the volume: %s", in.name, log_strerror(rc));
		ns_vstats_put(f->st);
		free(f);
		f = NULL;
		goto out;
	}
	lock_mutex_lock(&ns->files_mu);
	ns_files_insert(ns, f);
	lock_mutex_unlock(&ns->files_mu);
out:
	lock_mutex_unlock(&ns->db_mu);
	*out = f;
	return rc;
}

void ns_release(struct ns *ns, struct ns_file *f)
{
	lock_mutex_lock(&ns->files_mu);
	f->opens--;
	lock_mutex_unlock(&ns->files_mu);
	ns_file_unref(ns, f);
}
