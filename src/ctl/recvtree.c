/*
 * recvtree: vsnapctl receive of a directory stream (docs/design.md,
 * "Directory streams").
 *
 *   vsnapctl receive [--force] [--resume] MNT2/D < STREAM
 *
 * The steps are receive.c's, on a temporary directory instead of a
 * temporary volume: .vsnap-recv.TOKEN in D's parent, through the mount.
 * A full stream fills an empty one (D must not exist); an incremental one
 * starts from a linked clone of the base snapshot's tree (its entries from
 * the index, mkdir and copy_file_range per volume: no data is read; D
 * must exist, its .snapshots hold the base, and unless --force D must
 * still show the base).  Then the records: removes (rm -rf; already gone
 * is fine, so a resumed stream may apply one twice), each entry created
 * (after whatever was at its path is removed) or, BASE, taken as the
 * clone has it, sized with ftruncate, its data with pwrite and its zeros
 * with fallocate(PUNCH_HOLE).  Each path's components must be names the
 * mount takes (ns_name_check) before anything is done with it.  A volume
 * is fsynced when the next file record comes (and the current one before
 * every checkpoint), so the temporary directory's name, the position of
 * the last record applied, never claims more than is synced.  Owners (root
 * only), modes and times: a volume's when it is done; a directory's when
 * the pre-order leaves it (it is made u+rwx until then, so that what is in
 * it can be made).  A resumed stream restates the directories above the
 * place it goes on from, so they get theirs too; and it applies again the
 * records after the kept place, whatever was applied past it: every step
 * is idempotent from there (a BASE or restated entry is made u+rw / u+rwx
 * first, for a receiving user that is not root).  D's owner and mode are
 * set after the commit (rtree_done).  The commit is
 * receive.c's request with tree=1: the daemon makes the directory D (full)
 * or moves its entries into D (incremental) and takes the snapshot.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/recv_int.h"
#include "ns/names.h"                   /* the daemon's own name rules */
#include "vsnapfs/array.h"

/* Are owners set as the stream says?  Only by root: anyone else gets
 * EPERM for another owner, and the entries stay the receiving user's. */
static bool owner_set(void)
{
	return geteuid() == 0;
}

int rtree_names(struct recv *r)
{
	if (ns_name_check(r->sb.file))
		return refuse(r, "the stream's directory name '%s' is not a file name: a damaged or "
			      "foreign stream", r->efile);
	if (!snap_name_ok(r->sb.snap))
		return refuse(r, "the stream's snapshot name '%s' is not a directory snapshot's name "
			      "(1-255 bytes of A-Z a-z 0-9 . _ - + : , not starting with '.'): a "
			      "damaged or foreign stream", r->esnap);
	if (!stream_is_full(&r->sb) && !snap_name_ok(r->sb.base))
		return refuse(r, "the stream's base snapshot name '%s' is not a snapshot name: a "
			      "damaged or foreign stream", r->ebase);
	if (ns_name_check(r->name))
		return refuse(r, "%s: '%s' is not a name the mount takes", r->o->path, r->name);
	return 0;
}

/* Does D (live, at dpath) show exactly the tree of snapshot bs?  Entries,
 * kinds, sizes, and the volumes' data (from the index: no data read). */
static int tree_same(struct recv *r, const char *dpath, bool *same)
{
	struct stree t = { .s = r->bsnap };
	size_t dl = strlen(dpath), live = 0;
	int rc = stree_load(&r->st, &t);

	*same = !rc;
	for (size_t i = 0; i < r->m.nlive && !rc && *same; i++) {
		const struct file *f = &r->m.files[i];
		const struct tent *e;
		bool differs = false;

		if (strncmp(f->path, dpath, dl) || f->path[dl] != '/')
			continue;
		live++;
		e = stree_find(&t, f->path + dl + 1);
		if (!e || e->in.kind != f->kind || (f->kind == BMAP_VOL && e->in.size != f->size)) {
			*same = false;
			break;
		}
		if (f->kind != BMAP_VOL)
			continue;
		rc = bmap_node_diff(r->st.bm, e->in.node, f->node_id, f->size / r->st.bs + 1,
				    recv_any_run, &differs);
		if (rc == 1 || rc == -EXDEV) {
			rc = 0;
			differs = true;
		}
		*same = !differs;
	}
	if (!rc && live != t.n)
		*same = false;
	stree_free(&t);
	return rc;
}

int rtree_check(struct recv *r)
{
	char path[PATH_MAX + 300];
	const struct file *dst;
	bool same;
	int rc = recv_check_guid(r);

	if (rc)
		return rc;
	snprintf(path, sizeof(path), "%s/%s", r->st.rel, r->name);
	dst = file_by_path(&r->m, path);
	if (dst && (dst->kind != BMAP_DIR || dst->snap))
		return refuse(r, "%s is not a directory: a directory stream makes or updates one",
			      r->o->path);
	if (stream_is_full(&r->sb)) {
		if (dst)
			return refuse(r, "%s exists: a full stream creates a new directory (remove it, "
				      "or send an incremental stream)", r->o->path);
		return 0;
	}
	rc = bmap_snap_by_guid(r->st.bm, r->sb.base_guid, &r->bsnap);
	if (rc == -ENOENT)
		return refuse(r, "the stream applies to snapshot %s/.snapshots/%s, which is not in %s: "
			      "wrong base (send --from a snapshot the destination has)", r->efile,
			      r->ebase, r->st.dir);
	if (rc)
		return rc;
	if (!dst)
		return refuse(r, "%s does not exist: receive the full stream first", r->o->path);
	if (r->bsnap.dir != dst->ino || strchr(r->bsnap.name, '@'))
		return refuse(r, "the base snapshot %s is not a snapshot of directory %s", r->bsnap.name,
			      r->o->path);
	if (r->o->force)
		return 0;
	rc = tree_same(r, path, &same);
	if (!rc && !same)
		return refuse(r, "%s was written after snapshot %s; --force replaces it by the stream's "
			      "snapshot anyway (its later changes are lost)", r->o->path,
			      r->bsnap.name);
	return rc;
}

int rtree_resume(struct recv *r, struct stream_dec *d)
{
	struct recv_token t;
	struct stat st;
	int rc = recv_resume_part(r, d, &t);

	if (!rc && (stat(r->tmp, &st) || !S_ISDIR(st.st_mode)))
		rc = refuse(r, "the part kept, %s, is not a directory", r->tmpname);
	return rc;
}

/* The base snapshot's tree into the empty temporary directory: a linked
 * clone, through the mount. */
static int tree_clone(struct recv *r)
{
	struct stree t = { .s = r->bsnap };
	int rc = stree_load(&r->st, &t);

	for (size_t i = 0; i < t.n && !rc; i++) {
		const struct tent *e = &t.v[i];
		char *to = xasprintf("%s/%s", r->tmp, e->path);
		char *from = xasprintf("%s%s/%s/.snapshots/%s/%s", r->mnt, r->st.rel, r->name,
				       r->bsnap.name, e->path);
		int fd = -1;

		if (!to || !from)
			rc = -ENOMEM;
		else if (e->in.kind == BMAP_DIR)
			rc = mkdir(to, (e->in.mode & 07777) | 0700) ? -errno : 0;
		else if ((fd = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
				    (e->in.mode & 07777) | 0600)) < 0)
			rc = -errno;
		else
			rc = recv_clone(from, fd, e->in.size);
		if (fd >= 0 && close(fd) && !rc)
			rc = -errno;
		if (rc && rc != -ENOMEM)
			fprintf(stderr, "vsnapctl: receive: cloning the base's %s: %s\n", e->path,
				strerror(-rc));
		free(to);
		free(from);
	}
	stree_free(&t);
	return rc == -ENOMEM || !rc ? rc : -ECANCELED;
}

int rtree_tmp(struct recv *r, struct stream_dec *d)
{
	int rc = 0;

	if (r->o->resume)
		return 0;               /* rtree_resume found it */
	if (r->sb.resume_rec)
		return refuse(r, "a resumed stream (send --resume): receive it with receive --resume");
	/* what an earlier receive of this stream left: start over */
	tmp_name(r, NULL);
	for (size_t i = 0; i < r->m.nfiles && !rc; i++) {
		const char *n = tmp_in_dir(r, &r->m.files[i]);
		char path[PATH_MAX + 300];
		bool token;

		if (!n || r->m.files[i].kind != BMAP_DIR || strncmp(n, r->tmpname, strlen(r->tmpname)) ||
		    !recv_made(n + strlen(RECV_TMP_PREFIX), &token))
			continue;
		snprintf(path, sizeof(path), "%s/%s", r->dirpath, n);
		rc = recv_rm_rf(path);
	}
	/* D's own mode (with u+rwx, to fill it): a full stream's temporary
	 * becomes D */
	if (!rc && mkdir(r->tmp, (r->sb.dmode & 07777) | 0700))
		rc = -errno;
	if (rc)
		return rc;
	r->made_tmp = true;
	if (!stream_is_full(&r->sb))
		rc = tree_clone(r);
	/* named after the position at begin, resumable from now on */
	return rc ? rc : recv_ckpt(r, d, -1);
}

struct tdir {                           /* a directory's owner, mode and time, set at
					 * the end */
	char *path;
	uint32_t mode, uid, gid;
	int64_t mtime_ns;
};

struct tapply {
	struct recv *r;
	int fd;                         /* the volume being written, -1 none */
	uint32_t mode, uid, gid;        /* its owner, mode and time, set when it is done */
	int64_t mtime_ns;
	const char *cur;                /* the path of the current file record */
	struct tdir *dirs;
	size_t ndirs, dcap;
};

static void ts_of(int64_t ns, struct timespec ts[2])
{
	ts[0].tv_nsec = UTIME_OMIT;
	ts[1].tv_sec = ns / 1000000000;
	ts[1].tv_nsec = ns % 1000000000;
}

/* The volume being written is done: its owner, mode and time, synced,
 * closed. */
static int vol_done(struct tapply *a)
{
	struct timespec ts[2];
	int rc = 0;

	if (a->fd < 0)
		return 0;
	ts_of(a->mtime_ns, ts);
	/* the owner first: a chown clears the set-id bits */
	if ((owner_set() && fchown(a->fd, a->uid, a->gid)) || fchmod(a->fd, a->mode) ||
	    futimens(a->fd, ts) || fsync(a->fd))
		rc = -errno;
	if (close(a->fd) && !rc)
		rc = -errno;
	a->fd = -1;
	return rc;
}

/* Directories open in the pre-order walk whose subtree does not hold path
 * (NULL: all of them) are done: their mode and time. */
static int dirs_done(struct tapply *a, const char *path)
{
	int rc = 0;

	while (a->ndirs) {
		struct tdir *t = &a->dirs[a->ndirs - 1];
		size_t l = strlen(t->path);
		struct timespec ts[2];

		if (path && !strncmp(path, t->path, l) && path[l] == '/')
			break;
		ts_of(t->mtime_ns, ts);
		if (!rc && ((owner_set() && chown(t->path, t->uid, t->gid)) ||
			    chmod(t->path, t->mode & 07777) || utimensat(AT_FDCWD, t->path, ts, 0)))
			rc = -errno;
		free(t->path);
		a->ndirs--;
	}
	return rc;
}

/* Every component of a path from the stream is a name the mount takes. */
static bool path_names_ok(const char *path)
{
	char *p = strdup(path), *save = NULL;
	bool ok = p != NULL;

	for (char *c = p ? strtok_r(p, "/", &save) : NULL; c && ok; c = strtok_r(NULL, "/", &save))
		ok = !ns_name_check(c);
	free(p);
	return ok;
}

/* One file record: see the top. */
static int apply_file(struct tapply *a, const struct stream_file *f)
{
	struct recv *r = a->r;
	bool cont = f->flags & STREAM_FILE_CONT, base = f->flags & STREAM_FILE_BASE;
	char esc[TEXT_ESC_MAX(200)], *path;
	struct stat st;
	int rc = vol_done(a);

	if (rc)
		return rc;
	if (!path_names_ok(f->path))
		return refuse(r, "the stream's path '%s' has a name the mount does not take: a "
			      "damaged or foreign stream; nothing was applied",
			      text_esc(f->path, esc, sizeof(esc)));
	path = xasprintf("%s/%s", r->tmp, f->path);
	if (!path)
		return -ENOMEM;
	if (f->kind == STREAM_FILE_REMOVE || (!cont && !base))
		rc = recv_rm_rf(path);
	if (!rc && !cont && f->kind != STREAM_FILE_REMOVE)
		rc = dirs_done(a, path);
	if (!rc && (base || cont) && f->kind != STREAM_FILE_REMOVE &&
	    (lstat(path, &st) || !(f->kind == STREAM_FILE_DIR ? S_ISDIR(st.st_mode) :
				    S_ISREG(st.st_mode))))
		rc = refuse(r, "the stream's %s '%s' is not in the part received or the base: a "
			    "stream of another base", f->kind == STREAM_FILE_DIR ? "directory" :
			    "volume", text_esc(f->path, esc, sizeof(esc)));
	/* the receiver's user may write into what the walk has open (a
	 * replayed or restated entry may have had its final mode set already,
	 * as may the base's); the final modes come when the walk leaves it */
	if (!rc && (base || cont) && f->kind != STREAM_FILE_REMOVE) {
		mode_t u = S_ISDIR(st.st_mode) ? 0700 : 0600;

		if ((st.st_mode & u) != u && chmod(path, (st.st_mode & 07777) | u))
			rc = -errno;
	}
	if (!rc && f->kind == STREAM_FILE_DIR) {
		if (!base && !cont && mkdir(path, (f->mode & 07777) | 0700))
			rc = -errno;
		if (!rc && ARRAY_RESERVE(a->dirs, a->dcap, a->ndirs, 64))
			rc = -ENOMEM;
		if (!rc) {
			a->dirs[a->ndirs++] = (struct tdir){ .path = path, .mode = f->mode,
							     .uid = f->uid, .gid = f->gid,
							     .mtime_ns = f->mtime_ns };
			path = NULL;
		}
	} else if (!rc && f->kind == STREAM_FILE_VOL) {
		a->fd = open(path, O_RDWR | O_CLOEXEC | (base || cont ? 0 : O_CREAT | O_EXCL),
			     (f->mode & 07777) | 0600);
		if (a->fd < 0 || (!cont && ftruncate(a->fd, (off_t)f->size)))
			rc = -errno;
		a->mode = f->mode;
		a->uid = f->uid;
		a->gid = f->gid;
		a->mtime_ns = f->mtime_ns;
	}
	free(path);
	return rc;
}

int rtree_apply(struct recv *r, struct stream_dec *d)
{
	struct tapply a = { .r = r, .fd = -1 };
	struct stream_rec rec;
	struct progress pg;
	int rc, wrc = 0;

	progress_bytes(&pg, "receive", r->sb.size);
	while (!wrc && (rc = stream_dec_next(d, &rec)) == 1) {
		if (rec.type == STREAM_FILE) {
			a.cur = rec.file->path;
			wrc = apply_file(&a, rec.file);
		} else {
			wrc = recv_record(a.fd, &rec);
			pg.done += rec.len;
		}
		if (!wrc && stream_dec_bytes(d) - r->ckpt_bytes >= RECV_CKPT_BYTES &&
		    mono_ns() - r->ckpt_ns >= RECV_CKPT_NS)
			wrc = recv_ckpt(r, d, a.fd);
		progress_show(&pg);
	}
	progress_end(&pg);
	if (wrc == -ECANCELED) {
		rc = wrc;               /* a bad path: refused, said so */
	} else if (wrc) {
		char esc[TEXT_ESC_MAX(200)];

		/* the daemon gone, the disk full, a name too long: what was
		 * checkpointed stays; the message names the entry */
		r->keep = true;
		r->said = true;
		rc = wrc;
		fprintf(stderr, "vsnapctl: receive: %s/%s: %s; the part received up to its last "
			"checkpoint is kept (vsnapctl receive --token prints its token)\n",
			r->o->path, a.cur ? text_esc(a.cur, esc, sizeof(esc)) : "", strerror(-wrc));
	} else if (rc < 0) {
		rc = recv_stopped(r, d, a.fd, rc);
	} else {
		rc = vol_done(&a);
		if (!rc)
			rc = dirs_done(&a, NULL);
	}
	if (a.fd >= 0)
		close(a.fd);
	for (size_t i = 0; i < a.ndirs; i++)
		free(a.dirs[i].path);
	free(a.dirs);
	return rc;
}

int rtree_done(struct recv *r)
{
	int rc = 0;

	/* D keeps its inode through the commit (and a full stream's
	 * temporary is D): its owner and mode are set on it, through the
	 * mount, once committed */
	if ((owner_set() && chown(r->o->path, r->sb.duid, r->sb.dgid)) ||
	    chmod(r->o->path, r->sb.dmode & 07777)) {
		rc = -errno;
		r->said = true;
		fprintf(stderr, "vsnapctl: receive: %s: received, but its owner and mode (%u:%u "
			"%04o) could not be set: %s\n", r->o->path, r->sb.duid, r->sb.dgid,
			r->sb.dmode, strerror(-rc));
	}
	return rc;
}
