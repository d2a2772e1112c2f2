/*
 * receive: apply a send stream to a mounted store (docs/design.md, "Send
 * and receive").
 *
 *   vsnapctl receive [--force] [--resume] PATH < STREAM
 *   vsnapctl receive --token PATH | --abort PATH
 *
 * PATH is the volume in a mount: a full stream creates it with snapshot
 * FILE@NAME, an incremental one adds the next snapshot to it.  A
 * directory stream (version 3) makes or updates the directory PATH:
 * recvtree.c does its steps, on a temporary directory, with this file's
 * names, tokens, checkpoints and commit (recv_int.h).  Nothing is
 * written behind the daemon's back: the data goes through the mount into a
 * hidden temporary volume next to PATH (.vsnap-recv.GUID: empty for a full
 * stream, a linked clone of the base snapshot for an incremental one), each
 * record applied only after its checksum was checked, and only when the
 * stream's end has been verified and the volume fsynced does one request
 * on the control channel (CTL_RECV_COMMIT, ns_recv_commit) make it PATH and
 * take its snapshot with the sender's guid, in one index transaction.  A
 * refused or failed receive deletes the temporary volume: PATH and its
 * snapshots are as before.
 *
 * Resume (docs/design.md, "Resume"; stream version 2): the temporary volume
 * is named after the stream's position it holds, .vsnap-recv.TOKEN, TOKEN
 * being GUID.BASE.K.OFF.CHAIN: renamed to the position of the last record
 * applied every RECV_CKPT_BYTES of stream (and RECV_CKPT_NS, so that a
 * fast link pays at most one per second) and when the stream is cut, each
 * time after an fsync, so the name never claims more than the volume
 * holds.  A cut receive keeps it and prints the token for send --resume;
 * receive --resume takes a resumed stream onto the kept part of its guid
 * only if the base is the kept part's and the stream starts at its record
 * and offset, and verifies the records against the kept chain value.  A
 * --resume receive never deletes the kept part; a fresh receive of the
 * stream starts over and deletes it.  --token prints the tokens of the
 * kept parts in PATH's directory, --abort deletes them.  The temporary
 * volumes are hidden from listings (the daemon's readdir); they are found
 * here through the index.
 *
 * Refused, with one line and exit 1: a damaged, truncated or unknown
 * stream; names in it that the mount would not take (recv_names; every
 * name from a stream is printed escaped, text_esc); PATH outside a mount;
 * a stream whose snapshot is here already; a full stream onto an
 * existing volume; an incremental stream whose base snapshot is not here,
 * or whose volume was written after it (--force: the temporary clone of
 * the base is the revert, and it replaces the volume).  Exit 2: usage or
 * I/O errors.  A stream received whole whose commit the daemon refuses for
 * a cause that can be fixed (-EBUSY: the destination open; -ESTALE: written
 * after the base; -ENOTEMPTY: snapshots below a directory) is kept, named
 * at its place before end: send --resume then writes begin and end only,
 * and receive --resume commits it (recv_commit_refused).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "ctl/recv_int.h"
#include "ns/names.h"                   /* the daemon's own name rules */
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/stream.h"

int refuse(struct recv *r, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "vsnapctl: receive: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return -ECANCELED;
}

static long in_fd(void *ctx, void *buf, size_t len)
{
	for (;;) {
		ssize_t n = read(*(int *)ctx, buf, len);

		if (n >= 0)
			return (long)n;
		if (errno != EINTR)
			return -errno;
	}
}

/*
 * Where PATH is: its store, mount point, directory inode and name.  PATH's
 * directory must be in a vsnapfs mount: a store's own directory resolves
 * to the same store, but a temporary volume made there would be a file of
 * the host next to index.sqlite, behind the daemon's back.
 */
int recv_where(struct recv *r)
{
	char *a = strdup(r->o->path), *b = strdup(r->o->path), real[PATH_MAX], dir[PATH_MAX],
	     rel[PATH_MAX];
	const struct file *d;
	size_t rl;
	int rc = 0;

	if (!a || !b) {
		rc = -ENOMEM;
		goto out;
	}
	snprintf(r->dirpath, sizeof(r->dirpath), "%s", dirname(a));
	snprintf(r->name, sizeof(r->name), "%s", basename(b));
	rc = store_resolve_mount(r->dirpath, dir, sizeof(dir), rel, sizeof(rel));
	if (rc == -EMEDIUMTYPE && !store_resolve(r->dirpath, dir, sizeof(dir), real, sizeof(real))) {
		rc = refuse(r, "%s is not in a vsnapfs mount: receive writes through a mount of "
			    "the store, not into its directory", r->dirpath);
		goto out;
	}
	if (rc) {
		fprintf(stderr, "vsnapctl: %s: %s\n", r->dirpath, store_why(rc));
		rc = -ENODEV;
		goto out;
	}
	/* the store directory itself: the mount's root may hold a volume
	 * named index.sqlite */
	if (store_open(dir, false, &r->st)) {
		rc = -ENODEV;           /* said why */
		goto out;
	}
	snprintf(r->st.rel, sizeof(r->st.rel), "%s", rel);
	if (!r->st.in_use) {
		rc = refuse(r, "%s is not mounted: receive writes through the mount", r->st.dir);
		goto out;
	}
	if (!realpath(r->dirpath, real)) {
		rc = -errno;
		goto out;
	}
	rl = strlen(r->st.rel);
	snprintf(r->mnt, sizeof(r->mnt), "%.*s", (int)(strlen(real) - rl), real);
	rc = model_load(&r->st, &r->m, NULL);
	if (rc)
		goto out;
	if (!r->st.rel[0]) {
		r->dir_ino = BMAP_ROOT_INO;
	} else if ((d = file_by_path(&r->m, r->st.rel)) && d->kind == BMAP_DIR && !d->snap) {
		r->dir_ino = d->ino;
	} else {
		rc = refuse(r, "%s is not a directory of the mount", r->dirpath);
	}
out:
	free(a);
	free(b);
	return rc;
}

/* ---- tokens and kept parts -------------------------------------------------- */

static void token_format(const struct recv_token *t, char *out, size_t len)
{
	char g[2 * STREAM_GUID_BYTES + 1], b[2 * STREAM_GUID_BYTES + 1];

	ctl_hex(t->guid, STREAM_GUID_BYTES, g);
	ctl_hex(t->base, STREAM_GUID_BYTES, b);
	snprintf(out, len, "%s.%s.%" PRIu64 ".%" PRIu64 ".%016" PRIx64, g, b, t->pos.rec,
		 t->pos.off, t->pos.chain);
	if (t->dir)
		snprintf(out + strlen(out), len - strlen(out), ".%" PRIu64, t->pos.file);
}

int recv_token_parse(const char *s, struct recv_token *t)
{
	char g[33], b[33], c[17], again[TOKEN_MAX];
	int n;

	memset(t, 0, sizeof(*t));
	if (strlen(s) >= TOKEN_MAX ||
	    (n = sscanf(s, "%32[0-9a-f].%32[0-9a-f].%" SCNu64 ".%" SCNu64 ".%16[0-9a-f].%" SCNu64,
			g, b, &t->pos.rec, &t->pos.off, c, &t->pos.file)) < 5 ||
	    ctl_unhex(g, t->guid, STREAM_GUID_BYTES) || ctl_unhex(b, t->base, STREAM_GUID_BYTES))
		return -EINVAL;
	t->pos.chain = strtoull(c, NULL, 16);
	t->dir = n == 6;
	token_format(t, again, sizeof(again));
	return t->pos.rec && !strcmp(again, s) ? 0 : -EINVAL;     /* one spelling only */
}

/* The name of f if it is a temporary volume in PATH's directory, else NULL. */
const char *tmp_in_dir(const struct recv *r, const struct file *f)
{
	size_t rl = strlen(r->st.rel);

	if (f->snap || (f->kind != BMAP_VOL && f->kind != BMAP_DIR) ||
	    strncmp(f->path, r->st.rel, rl) ||
	    f->path[rl] != '/' || strchr(f->path + rl + 1, '/') ||
	    strncmp(f->path + rl + 1, RECV_TMP_PREFIX, strlen(RECV_TMP_PREFIX)))
		return NULL;
	return f->path + rl + 1;
}

/* The kept part of this stream (a temporary volume of its guid named
 * after a position): 0 and its token, or -ENOENT. */
int recv_kept(const struct recv *r, struct recv_token *t)
{
	for (size_t i = 0; i < r->m.nfiles; i++) {
		const char *n = tmp_in_dir(r, &r->m.files[i]);

		if (n && !recv_token_parse(n + strlen(RECV_TMP_PREFIX), t) && t->dir == r->tree &&
		    (r->m.files[i].kind == BMAP_DIR) == r->tree &&
		    !memcmp(t->guid, r->sb.guid, STREAM_GUID_BYTES))
			return 0;
	}
	return -ENOENT;
}

/* Is s (a name after the prefix) one that a receive makes: a token, or,
 * while it makes the volume (a version 1 stream, always), the guid alone? */
bool recv_made(const char *s, bool *token)
{
	uint8_t g[STREAM_GUID_BYTES];
	char again[2 * STREAM_GUID_BYTES + 1];
	struct recv_token t;

	*token = !recv_token_parse(s, &t);
	if (*token)
		return true;
	if (ctl_unhex(s, g, STREAM_GUID_BYTES))
		return false;
	ctl_hex(g, STREAM_GUID_BYTES, again);
	return !strcmp(again, s);       /* one spelling only */
}

/* --token, --abort: the kept parts in PATH's directory, those a receive
 * made only (another file whose name has the prefix is no part). */
static int recv_parts(struct recv *r)
{
	char path[PATH_MAX + 300];
	size_t n = 0;
	int rc = 0;

	for (size_t i = 0; i < r->m.nfiles && !rc; i++) {
		const char *name = tmp_in_dir(r, &r->m.files[i]), *s;
		bool token;

		if (!name || !recv_made(s = name + strlen(RECV_TMP_PREFIX), &token))
			continue;
		if (r->o->token) {
			if (token) {
				printf("%s\n", s);
				n++;
			}
			continue;
		}
		n++;
		snprintf(path, sizeof(path), "%s/%s", r->dirpath, name);
		if (r->m.files[i].kind == BMAP_DIR)
			rc = recv_rm_rf(path);  /* a directory stream's part */
		else if (unlink(path))
			rc = -errno;
		if (!rc && r->m.files[i].kind == BMAP_DIR)
			printf("removed %s (a directory stream's part)\n", path);
		else if (!rc)
			printf("removed %s (%" PRIu64 " bytes)\n", path, r->m.files[i].size);
	}
	if (!rc && !n)
		rc = refuse(r, "no cut receive is kept in %s", r->dirpath);
	return rc;
}

/* A snapshot's NAME (of FILE@NAME, no '@'), by the daemon's rule. */
bool snap_name_ok(const char *name)
{
	char *file = NULL;
	bool ok = ns_snap_name_parse(name, &file) == 0 && !file;

	free(file);
	return ok;
}

/*
 * The stream's names come from the sender, trusted by nothing: before
 * anything is written they must be what the mount takes (ns/names.h, the
 * daemon's rules): FILE a file name, NAME and BASE snapshot names, and the
 * snapshot the commit makes, PATH's name @ NAME, whole.
 */
static int recv_names(struct recv *r)
{
	char full[2 * BMAP_NAME_MAX + 2], *file = NULL;
	bool ok;

	if (ns_name_check(r->sb.file))
		return refuse(r, "the stream's file name '%s' is not a file name: a damaged or "
			      "foreign stream", r->efile);
	if (!snap_name_ok(r->sb.snap))
		return refuse(r, "the stream's snapshot name '%s' is not a snapshot name (1-255 "
			      "bytes of A-Z a-z 0-9 . _ - + : , not starting with '.'): a damaged or "
			      "foreign stream", r->esnap);
	if (!stream_is_full(&r->sb) && !snap_name_ok(r->sb.base))
		return refuse(r, "the stream's base snapshot name '%s' is not a snapshot name: a "
			      "damaged or foreign stream", r->ebase);
	snprintf(full, sizeof(full), "%s@%s", r->name, r->sb.snap);
	ok = !ns_name_check(r->name) && !ns_snap_name_parse(full, &file) && file &&
	     !strcmp(file, r->name);
	free(file);
	if (!ok)
		return refuse(r, "%s@%s is not a snapshot name the mount takes (at most %d bytes, "
			      "%s a file name)", r->name, r->esnap, BMAP_NAME_MAX, r->name);
	return 0;
}

int recv_any_run(void *ctx, const struct bmap_run *run)
{
	*(bool *)ctx = true;
	return 1;                       /* one is enough */
}

int recv_check_guid(struct recv *r)
{
	struct bmap_snap s;
	int rc = bmap_snap_by_guid(r->st.bm, r->sb.guid, &s);

	if (rc == -ENOSYS)
		return refuse(r, "%s has no snapshot ids yet: mount it once with this version of "
			      "vsnapfs", r->st.dir);
	if (rc == 0)
		return refuse(r, "snapshot %s%s%s was received already (here it is %s)", r->efile,
			      r->tree ? "/.snapshots/" : "@", r->esnap, s.name);
	return rc == -ENOENT ? 0 : rc;
}

/* The checks against the destination index (read-only): see the top. */
static int recv_check(struct recv *r)
{
	char path[PATH_MAX + 300];
	struct bmap_snap s;
	const struct file *dst;
	bool differs = false;
	int rc = recv_check_guid(r);

	if (rc)
		return rc;
	snprintf(path, sizeof(path), "%s/%s", r->st.rel, r->name);
	dst = file_by_path(&r->m, path);
	if (dst && (dst->kind != BMAP_VOL || dst->snap))
		return refuse(r, "%s is not a volume", r->o->path);
	if (stream_is_full(&r->sb)) {
		if (dst)
			return refuse(r, "%s exists: a full stream creates a new volume (remove it, or "
				      "send an incremental stream)", r->o->path);
		return 0;
	}
	rc = bmap_snap_by_guid(r->st.bm, r->sb.base_guid, &s);
	if (rc == -ENOENT)
		return refuse(r, "the stream applies to snapshot %s@%s, which is not in %s: wrong "
			      "base (send --from a snapshot the destination has)", r->efile,
			      r->ebase, r->st.dir);
	if (rc)
		return rc;
	r->base = file_of_snap(&r->m, s.id);
	if (!r->base || s.dir != r->dir_ino)
		return refuse(r, "the base snapshot %s is not a snapshot of a volume in %s", s.name,
			      r->dirpath);
	if (!dst)
		return refuse(r, "%s does not exist: receive the full stream first", r->o->path);
	if (r->o->force)
		return 0;
	if (dst->size == r->base->size) {
		rc = bmap_node_diff(r->st.bm, r->base->node_id, dst->node_id,
				    dst->size / r->st.bs + 1, recv_any_run, &differs);
		if (rc == 1 || rc == -EXDEV) {
			differs = true;
			rc = 0;
		}
	}
	if (!rc && (differs || dst->size != r->base->size))
		return refuse(r, "%s was written after snapshot %s; --force reverts it to that "
			      "snapshot first (its later writes are lost)", r->o->path, s.name);
	return rc;
}

/* The temporary volume's name and path for token t (NULL: the name it has
 * while it is being made, which no resume takes). */
void tmp_name(struct recv *r, const struct recv_token *t)
{
	char tok[TOKEN_MAX], hex[2 * STREAM_GUID_BYTES + 1];

	ctl_hex(r->sb.guid, STREAM_GUID_BYTES, hex);
	if (t)
		token_format(t, tok, sizeof(tok));
	snprintf(r->tmpname, sizeof(r->tmpname), RECV_TMP_PREFIX "%s", t ? tok : hex);
	snprintf(r->tmp, sizeof(r->tmp), "%s/%s", r->dirpath, r->tmpname);
}

/* Name the temporary volume after the position of the last record
 * applied, once its data is synced: the name never claims more than the
 * volume holds (a rename is one durable index transaction). */
int recv_ckpt(struct recv *r, struct stream_dec *d, int fd)
{
	char old[sizeof(r->tmp)];
	struct recv_token t;

	memcpy(t.guid, r->sb.guid, STREAM_GUID_BYTES);
	memcpy(t.base, r->sb.base_guid, STREAM_GUID_BYTES);
	t.dir = r->tree;
	stream_dec_pos(d, &t.pos);
	r->ckpt_bytes = stream_dec_bytes(d);
	r->ckpt_ns = mono_ns();
	snprintf(old, sizeof(old), "%s", r->tmp);
	tmp_name(r, &t);
	if (!strcmp(old, r->tmp))
		return 0;
	if ((fd >= 0 && fsync(fd)) || rename(old, r->tmp)) {
		int rc = -errno;

		snprintf(r->tmp, sizeof(r->tmp), "%s", old);
		return rc;
	}
	return 0;
}

/* --resume: the kept part of this stream, checked to be what the stream
 * continues, opened.  Refusals leave it as it is. */
int recv_resume_part(struct recv *r, struct stream_dec *d, struct recv_token *tp)
{
	struct recv_token t;

	if (r->sb.version < 2)
		return refuse(r, "a stream of version %" PRIu32 " cannot be resumed: send the whole "
			      "stream", r->sb.version);
	if (!r->sb.resume_rec)
		return refuse(r, "not a resumed stream: --resume takes what vsnapctl send --resume "
			      "TOKEN writes (vsnapctl receive --token %s prints the token)", r->o->path);
	if (recv_kept(r, &t))
		return refuse(r, "no cut receive of %s%s%s is kept in %s: nothing to resume (send the "
			      "whole stream)", r->efile, r->tree ? "/.snapshots/" : "@", r->esnap,
			      r->dirpath);
	if (memcmp(t.base, r->sb.base_guid, STREAM_GUID_BYTES)) {
		char kb[2 * STREAM_GUID_BYTES + 1], sb[2 * STREAM_GUID_BYTES + 1];

		ctl_hex(t.base, STREAM_GUID_BYTES, kb);
		ctl_hex(r->sb.base_guid, STREAM_GUID_BYTES, sb);
		return refuse(r, "the part kept is of the stream from base %.12s, this one is from "
			      "%.12s: another base, not its continuation",
			      stream_guid_is_zero(t.base) ? "none" : kb,
			      stream_is_full(&r->sb) ? "none" : sb);
	}
	if (stream_dec_continue(d, &t.pos))
		return refuse(r, "%s; the part kept is as it was", stream_dec_msg(d));
	tmp_name(r, &t);
	*tp = t;
	return 0;
}

static int recv_resume(struct recv *r, struct stream_dec *d, int *fd)
{
	struct recv_token t;
	struct stat st;
	int rc = recv_resume_part(r, d, &t);

	if (rc)
		return rc;
	*fd = open(r->tmp, O_RDWR | O_CLOEXEC);
	if (*fd < 0)
		return -errno;
	if (fstat(*fd, &st))
		return -errno;
	if ((uint64_t)st.st_size != r->sb.size)
		return refuse(r, "the part kept, %s, is %jd bytes, the stream's file %" PRIu64 ": not "
			      "its continuation", r->tmpname, (intmax_t)st.st_size, r->sb.size);
	r->applied = t.pos.off;
	return 0;
}

int recv_clone(const char *src, int fd, uint64_t size)
{
	uint64_t done = 0;
	int rc = 0, sfd = open(src, O_RDONLY | O_CLOEXEC);

	if (sfd < 0)
		return -errno;
	/* a linked clone: no data is copied (ns_copy_range) */
	while (!rc && done < size) {
		loff_t in = (loff_t)done, out = (loff_t)done;
		ssize_t n = copy_file_range(sfd, &in, fd, &out, size - done, 0);

		if (n <= 0)
			rc = n < 0 ? -errno : -EIO;
		else
			done += (uint64_t)n;
	}
	close(sfd);
	return rc;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path) && errno != ENOENT ? errno : 0;
}

/* A directory the receiving user may not empty or not even list (its mode
 * set by the stream, and not root): made u+rwx, it is removed next. */
static int rm_open(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return (flag == FTW_D || flag == FTW_DNR) && (sb->st_mode & 0700) != 0700 &&
	       chmod(path, (sb->st_mode & 07777) | 0700) ? errno : 0;
}

/* nftw with fn returning 0 or a positive errno: 0 or a negative errno. */
static int walk(const char *path, __nftw_func_t fn, int flags)
{
	int rc = nftw(path, fn, 16, flags | FTW_PHYS);

	return rc > 0 ? -rc : rc < 0 ? -errno : 0;
}

int recv_rm_rf(const char *path)
{
	struct stat sb;
	int rc;

	/* gone, or a component of it no longer a directory (a resumed
	 * stream replays a remove below what became a volume): not there */
	if (lstat(path, &sb))
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	if (!S_ISDIR(sb.st_mode))
		return unlink(path) && errno != ENOENT ? -errno : 0;
	rc = walk(path, rm_one, FTW_DEPTH);
	/* a directory it could not list (FTW_DNR) is left not empty: each
	 * pass of rm_open opens one more level of unlistable ones */
	for (int pass = 0; pass < 64 && (rc == -EACCES || rc == -ENOTEMPTY); pass++) {
		int orc = walk(path, rm_open, 0);

		if (orc)
			return orc;
		rc = walk(path, rm_one, FTW_DEPTH);
	}
	return rc;
}

/* The temporary volume: empty, or a linked clone of the base, at the size. */
static int recv_tmp(struct recv *r, struct stream_dec *d, int *fd)
{
	char base[PATH_MAX + 300];
	int rc = 0;

	if (r->o->resume)
		return 0;               /* recv_resume opened it */
	if (r->sb.resume_rec || r->sb.resume_off)
		return refuse(r, "a resumed stream (send --resume): receive it with receive --resume");
	/* what an earlier receive of this stream left: start over */
	tmp_name(r, NULL);
	for (size_t i = 0; i < r->m.nfiles; i++) {
		const char *n = tmp_in_dir(r, &r->m.files[i]);
		char path[PATH_MAX + 300];
		bool token;

		if (!n || strncmp(n, r->tmpname, strlen(r->tmpname)) ||
		    !recv_made(n + strlen(RECV_TMP_PREFIX), &token))
			continue;
		snprintf(path, sizeof(path), "%s/%s", r->dirpath, n);
		if (unlink(path) && errno != ENOENT)
			return -errno;
	}
	*fd = open(r->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (*fd < 0)
		return -errno;
	r->made_tmp = true;
	if (r->base) {
		snprintf(base, sizeof(base), "%s%s", r->mnt, r->base->path);
		rc = recv_clone(base, *fd, r->base->size);
	}
	if (!rc && ftruncate(*fd, (off_t)r->sb.size))
		rc = -errno;
	/* version 2: named after the position at begin, resumable from now on */
	if (!rc && r->sb.version >= 2)
		rc = recv_ckpt(r, d, *fd);
	return rc;
}

/* One record into the temporary volume. */
int recv_record(int fd, const struct stream_rec *rec)
{
	const uint8_t *p = rec->data;
	uint64_t off = rec->off, len = rec->len;

	if (rec->type != STREAM_DATA)
		return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)rec->off,
				 (off_t)rec->len) ? -errno : 0;
	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);

		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

/* A refused stream: keep the verified part (a cut, or anything in a
 * --resume receive, of a version 2 stream) and say how to go on, or say
 * that nothing was applied. */
int recv_stopped(struct recv *r, struct stream_dec *d, int fd, int rc)
{
	struct stream_pos p;
	char msg[200];

	snprintf(msg, sizeof(msg), "%s", stream_dec_msg(d));
	if (r->sb.version < 2 || (rc != -ENODATA && !r->o->resume))
		return refuse(r, "%s; nothing was applied", msg);
	stream_dec_pos(d, &p);
	rc = recv_ckpt(r, d, fd);
	if (rc)
		return rc;
	r->keep = true;
	if (r->tree)
		return refuse(r, "%s; kept the first %" PRIu64 " records (%" PRIu64 " files, the last "
			      "up to byte %" PRIu64 "): vsnapctl send --resume %s ... | vsnapctl "
			      "receive --resume %s", msg, p.rec, p.file, p.off,
			      r->tmpname + strlen(RECV_TMP_PREFIX), r->o->path);
	return refuse(r, "%s; kept the first %" PRIu64 " records (the file up to byte %" PRIu64 "): "
		      "vsnapctl send --resume %s ... | vsnapctl receive --resume %s", msg, p.rec,
		      p.off, r->tmpname + strlen(RECV_TMP_PREFIX), r->o->path);
}

/* Every record into the temporary volume, then the stream's end checked. */
static int recv_apply(struct recv *r, struct stream_dec *d, int fd)
{
	struct stream_rec rec;
	struct progress pg;
	int rc, wrc = 0;

	/* by offset in the file: records come in offset order */
	progress_bytes(&pg, "receive", r->sb.size);
	while (!wrc && (rc = stream_dec_next(d, &rec)) == 1) {
		wrc = recv_record(fd, &rec);
		if (!wrc)
			r->applied = rec.off + rec.len;
		if (!wrc && r->sb.version >= 2 &&
		    stream_dec_bytes(d) - r->ckpt_bytes >= RECV_CKPT_BYTES &&
		    mono_ns() - r->ckpt_ns >= RECV_CKPT_NS)
			wrc = recv_ckpt(r, d, fd);
		pg.done = r->applied;
		progress_show(&pg);
	}
	progress_end(&pg);
	if (wrc) {
		/* the daemon gone, the disk full: what was checkpointed stays */
		r->keep = r->sb.version >= 2;
		return wrc;
	}
	if (rc < 0)
		return recv_stopped(r, d, fd, rc);
	return fsync(fd) ? -errno : 0;
}

static int recv_commit(struct recv *r)
{
	struct ctl_msg *q = malloc(sizeof(*q)), *a = r->reply = malloc(sizeof(*a));
	char guid[2 * STREAM_GUID_BYTES + 1], base[2 * STREAM_GUID_BYTES + 1];
	int rc = -ENOMEM;

	if (q && a) {
		ctl_hex(r->sb.guid, STREAM_GUID_BYTES, guid);
		ctl_hex(r->sb.base_guid, STREAM_GUID_BYTES, base);
		ctl_msg_init(q, CTL_RECV_COMMIT);
		/* -E2BIG or -EINVAL (a newline): never a request that says less */
		rc = ctl_kv_add(q, "dir", "%" PRIu64, r->dir_ino) ?:
		     ctl_kv_add(q, "tmp", "%s", r->tmpname) ?:
		     ctl_kv_add(q, "tmp_ino", "%" PRIu64, r->tmp_ino) ?:
		     ctl_kv_add(q, "name", "%s", r->name) ?:
		     ctl_kv_add(q, "snap", "%s", r->sb.snap) ?:
		     ctl_kv_add(q, "guid", "%s", guid) ?:
		     ctl_kv_add(q, "created_ns", "%" PRIu64, (uint64_t)r->sb.created_ns) ?:
		     (stream_is_full(&r->sb) ? 0 : ctl_kv_add(q, "base_guid", "%s", base)) ?:
		     ctl_kv_add(q, "force", "%d", r->o->force ? 1 : 0) ?:
		     (r->tree ? ctl_kv_add(q, "tree", "1") : 0);
		if (rc)
			rc = refuse(r, "the commit request cannot hold %s@%s: %s", r->name, r->esnap,
				    strerror(-rc));
		else if ((r->commit_rc = chan_call(r->st.dir, q, a, true)))
			rc = -ECANCELED;        /* said in one line by recv_commit_refused */
	}
	free(q);
	return rc;
}

/*
 * The daemon refused the commit of a stream received whole and synced,
 * for a cause that can be fixed (a volume open, the destination written
 * after the base, snapshots below it): keep the part, named at the
 * position before end, so that send --resume (begin and end only) and
 * receive --resume commit it without sending the data again.
 */
static void recv_commit_refused(struct recv *r, struct stream_dec *d)
{
	int rc = r->commit_rc;
	char tail[TOKEN_MAX + PATH_MAX + 200];
	struct stat st;

	tail[0] = '\0';
	if (r->sb.version < 2 || (rc != -EBUSY && rc != -ESTALE && rc != -ENOTEMPTY) ||
	    (!r->made_tmp && !r->o->resume))
		goto say;
	/* -ESTALE may also be another receive of the stream that started
	 * over: what has the name is then not this one's */
	if (lstat(r->tmp, &st) || (uint64_t)st.st_ino != r->tmp_ino)
		goto say;
	if (recv_ckpt(r, d, -1))
		goto say;               /* the part goes: nothing claims it */
	r->keep = true;
	snprintf(tail, sizeof(tail), "; the stream is kept whole: once that is fixed, vsnapctl "
		 "send --resume %s ... | vsnapctl receive --resume%s %s commits it without sending "
		 "the data again", r->tmpname + strlen(RECV_TMP_PREFIX),
		 rc == -ESTALE || r->o->force ? " --force" : "", r->o->path);
say:
	/* the daemon's reason and what is kept: one line */
	chan_report(r->st.dir, rc, r->reply, tail);
}

int cmd_receive(const struct recv_opts *o)
{
	struct recv r = { .o = o };
	struct stream_dec *d = NULL;
	int in = 0, fd = -1, rc;

	if (o->token || o->abort) {
		rc = recv_where(&r);
		if (!rc)
			rc = recv_parts(&r);
		goto out;
	}
	if (isatty(in)) {
		fprintf(stderr, "vsnapctl: receive: the stream comes on standard input (vsnapctl "
			"receive PATH < STREAM)\n");
		return 2;
	}
	rc = stream_dec_new(in_fd, &in, &d);
	if (!rc && stream_dec_begin(d, &r.sb))
		rc = refuse(&r, "%s", stream_dec_msg(d));
	if (!rc) {
		r.tree = r.sb.kind == STREAM_KIND_DIR;
		text_esc(r.sb.file, r.efile, sizeof(r.efile));
		text_esc(r.sb.snap, r.esnap, sizeof(r.esnap));
		text_esc(r.sb.base, r.ebase, sizeof(r.ebase));
		rc = recv_where(&r);
	}
	if (!rc)
		rc = r.tree ? rtree_names(&r) : recv_names(&r);
	/* --resume: first whether the stream continues the kept part */
	if (!rc && o->resume)
		rc = r.tree ? rtree_resume(&r, d) : recv_resume(&r, d, &fd);
	if (!rc) {
		bool txn = bmap_snapshot_begin(r.st.bm) == 0;

		rc = r.tree ? rtree_check(&r) : recv_check(&r);
		if (txn)
			bmap_snapshot_end(r.st.bm);
	}
	if (!rc)
		rc = r.tree ? rtree_tmp(&r, d) : recv_tmp(&r, d, &fd);
	if (!rc)
		rc = r.tree ? rtree_apply(&r, d) : recv_apply(&r, d, fd);
	if (!rc) {
		struct stat sb;

		/* the commit takes the temporary only if the name still is it */
		rc = (r.tree ? stat(r.tmp, &sb) : fstat(fd, &sb)) ? -errno : 0;
		r.tmp_ino = (uint64_t)sb.st_ino;
	}
	if (fd >= 0 && close(fd) && !rc)
		rc = -errno;
	if (!rc)
		rc = recv_commit(&r);
	if (!rc && r.tree)
		rc = rtree_done(&r);    /* the temporary is gone: no removal below */
	if (rc == -ECANCELED && r.commit_rc)
		recv_commit_refused(&r, d);
	if (rc && r.made_tmp && !r.keep)
		r.tree ? recv_rm_rf(r.tmp) : unlink(r.tmp);
	if (!rc && r.tree)
		printf("received %s/%s/.snapshots/%s (%s directory stream%s, %" PRIu64 " bytes)\n",
		       r.dirpath, r.name, r.esnap, stream_is_full(&r.sb) ? "full" : "incremental",
		       r.sb.resume_rec ? ", resumed" : "", stream_dec_bytes(d));
	else if (!rc)
		printf("received %s/%s@%s (%s stream%s, %" PRIu64 " bytes)\n", r.dirpath, r.name,
		       r.esnap, stream_is_full(&r.sb) ? "full" : "incremental",
		       r.sb.resume_rec ? ", resumed" : "", stream_dec_bytes(d));
	else if (rc != -ECANCELED && rc != -ENODEV && !r.said)
		fprintf(stderr, "vsnapctl: receive: %s: %s%s\n", r.o->path, strerror(-rc),
			r.keep ? "; the part received up to its last checkpoint is kept (vsnapctl "
			"receive --token prints its token)" : "");
out:
	stream_dec_free(d);
	free(r.reply);
	model_free(&r.m);
	store_close(&r.st);
	return rc == -ECANCELED ? 1 : rc ? 2 : 0;
}

static int receive_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "force", no_argument, NULL, 'F' },
		{ "resume", no_argument, NULL, 'R' },
		{ "token", no_argument, NULL, 'T' },
		{ "abort", no_argument, NULL, 'A' },
		{ 0 }
	};
	struct cli c = { .cmd = &receive_cmd, .longopts = opts, .min_args = 1, .max_args = 1,
			 .missing = "needs a path" };
	struct recv_opts ro = { 0 };
	int ch;

	while ((ch = cli_next(&c, argc, argv)) >= 0) {
		switch (ch) {
		case 'F': ro.force = true; break;
		case 'R': ro.resume = true; break;
		case 'T': ro.token = true; break;
		case 'A': ro.abort = true; break;
		}
	}
	if (ch == CLI_STOP)
		return c.exit;
	if (ro.token + ro.abort + ro.resume + ro.force > 1 && (ro.token || ro.abort))
		return cli_bad(&receive_cmd, "--token and --abort go alone");
	ro.path = argv[optind];
	return cmd_receive(&ro);
}

const struct cmd receive_cmd = {
	.name = "receive",
	.synopsis = "[--force] [--resume] PATH < STREAM | --token PATH | --abort PATH",
	.summary = "apply a stream from stdin to volume (or directory) PATH of a mount",
	.help = "A full stream creates PATH and its snapshot, an incremental one adds the next.\n"
		"PATH is a volume, or for a directory stream a directory.\n"
		"A cut stream keeps what it verified and prints a TOKEN: go on with\n"
		"vsnapctl send --resume TOKEN B | vsnapctl receive --resume PATH.\n"
		"      --force                first revert PATH to the base snapshot if it was\n"
		"                             written since\n"
		"      --resume               take only the continuation of the part kept for PATH\n"
		"      --token                print the tokens of the parts kept in PATH's directory\n"
		"      --abort                remove the parts kept in PATH's directory\n"
		"Exit status: 0 received, 1 the stream refused, 2 usage or I/O error.\n",
	.common = CLI_PROGRESS,
	.run = receive_main,
};
