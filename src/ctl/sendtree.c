/*
 * sendtree: vsnapctl send of a directory snapshot, a directory stream
 * (docs/design.md, "Directory streams"; the bytes in
 * docs/on-disk-format.md, "Send stream").
 *
 *   vsnapctl send [-n] [-v] [-c] [--from A] [--resume TOKEN] MNT/D/.snapshots/NAME
 *
 * The trees of B (and of the base A, a snapshot of the same directory)
 * come from the index (bmap_sinode_all), in one read transaction with the
 * extents of every volume, so the stream's size is exact before a byte is
 * read.  The stream: begin (version 3, kind directory, D's name and the
 * snapshot NAMEs), a remove for every path of A that B lacks (deepest
 * first), then every entry of B in pre-order, each volume followed by its
 * records.  An entry at the same path with the same kind in A and B,
 * below a parent sent the same way, and for a volume with a node that has
 * a common ancestor with A's (not the inode number: a replica's differ),
 * is BASE: its records are the diff of its two nodes (bmap_node_diff, as
 * for one volume); any
 * other entry starts empty on the receiving side (which first removes
 * what is at its path) and its records are its content.  Data is read
 * through the mount from B's snapshot view, where the daemon checks every
 * block's checksum.
 *
 * --resume TOKEN (GUID.BASE.K.OFF.CHAIN.F): the records after record K,
 * which must be the one that ends at OFF in the F-th file record's file;
 * the directories above that file and its record are restated first
 * (STREAM_FILE_CONT).  begin carries D's own mode and owner (the live D:
 * a snapshot does not keep them).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/array.h"

struct srec {                           /* one file record and what follows it */
	const struct tent *t;           /* of B, or of A for a remove */
	uint32_t kind, flags;
	struct plan p;                  /* a volume's records */
	uint64_t before;                /* records of the stream before its file record */
};

struct tsend {
	struct store *st;
	const struct send_opts *o;
	struct model m;
	struct stree a, b;
	struct srec *r;
	size_t nr, rcap;
	char dpath[PATH_MAX];           /* D below the mount */
	char bpath[PATH_MAX];           /* B as given, without a trailing '/' */
	const char *dname;              /* D's name */
	const struct stream_begin *sb;  /* while sending */
};

static int cmp_ino(const void *x, const void *y)
{
	uint64_t a = ((const struct bmap_inode *)x)->ino, b = ((const struct bmap_inode *)y)->ino;

	return a < b ? -1 : a > b;
}

static int cmp_path(const void *x, const void *y)
{
	return stream_path_cmp(((const struct tent *)x)->path, ((const struct tent *)y)->path);
}

/* The path of l->v[i] below the snapshot's directory top (memo'd); NULL
 * for a tree that does not hang together, or out of memory. */
static const char *tpath(const struct bmap_inodes *l, char **memo, size_t i, uint64_t top,
			 size_t depth)
{
	const struct bmap_inode *in = &l->v[i], *up;
	const char *upp;
	struct bmap_inode key = { .ino = in->parent };

	if (memo[i])
		return memo[i];
	if (in->parent == top)
		return memo[i] = strdup(in->name);
	up = bsearch(&key, l->v, l->n, sizeof(*l->v), cmp_ino);
	if (!up || up->kind != BMAP_DIR || depth > l->n ||
	    !(upp = tpath(l, memo, (size_t)(up - l->v), top, depth + 1)))
		return NULL;
	return memo[i] = xasprintf("%s/%s", upp, in->name);
}

void stree_free(struct stree *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->v[i].path);
	free(t->v);
	t->v = NULL;
	t->n = 0;
}

int stree_load(struct store *st, struct stree *t)
{
	struct bmap_inodes l = { 0 };
	char **memo = NULL;
	int rc = bmap_sinode_all(st->bm, t->s.id, bmap_inodes_add, &l);

	if (!rc)
		rc = l.rc;
	if (!rc && l.n && (!(memo = calloc(l.n, sizeof(*memo))) ||
			   !(t->v = calloc(l.n, sizeof(*t->v)))))
		rc = -ENOMEM;
	if (!rc)
		qsort(l.v, l.n, sizeof(*l.v), cmp_ino);
	for (size_t i = 0; i < l.n && !rc; i++) {
		const char *p = tpath(&l, memo, i, t->s.dir, 0);

		if (!p) {
			fprintf(stderr, "vsnapctl: send: snapshot %s: its entry %s (inode %" PRIu64
				") hangs from no directory of it: run vsnapctl check\n", t->s.name,
				l.v[i].name, l.v[i].ino);
			rc = -ECANCELED;
		} else if (strlen(p) > STREAM_PATH_MAX) {
			/* a file record would cut it short: another entry's path */
			fprintf(stderr, "vsnapctl: send: snapshot %s: the path of its entry %s (inode %"
				PRIu64 ") is %zu bytes, more than a stream carries (%d)\n", t->s.name,
				l.v[i].name, l.v[i].ino, strlen(p), STREAM_PATH_MAX);
			rc = -ECANCELED;
		}
	}
	for (size_t i = 0; i < l.n && !rc; i++) {
		t->v[t->n++] = (struct tent){ .path = memo[i], .in = l.v[i] };
		memo[i] = NULL;
	}
	for (size_t i = 0; memo && i < l.n; i++)
		free(memo[i]);
	free(memo);
	free(l.v);
	if (!rc)
		qsort(t->v, t->n, sizeof(*t->v), cmp_path);
	return rc;
}

const struct tent *stree_find(const struct stree *t, const char *path)
{
	struct tent key = { .path = (char *)path };

	return t->n ? bsearch(&key, t->v, t->n, sizeof(*t->v), cmp_path) : NULL;
}

/*
 * The directory snapshot at arg: MNT/D/.snapshots/NAME of this store,
 * D not the mount's root (the stream names D), with a guid.
 */
static int tree_at(struct tsend *ts, const char *arg, struct stree *t)
{
	char sdir[PATH_MAX], rel[PATH_MAX], *slash, *name;
	const struct file *d;
	int rc = store_resolve(arg, sdir, sizeof(sdir), rel, sizeof(rel));

	if (rc || strcmp(sdir, ts->st->dir)) {
		fprintf(stderr, "vsnapctl: send: %s: %s\n", arg, rc ? store_why(rc) :
			"not in the store of the snapshot sent");
		return -ECANCELED;
	}
	slash = strrchr(rel, '/');
	name = slash ? slash + 1 : rel;
	if (!slash || slash - rel <= 11 || strncmp(slash - 11, "/.snapshots", 11)) {
		fprintf(stderr, "vsnapctl: send: %s is not a snapshot of a directory below the mount's "
			"root (MNT/DIR/.snapshots/NAME) nor a snapshot's file\n", arg);
		return -ECANCELED;
	}
	snprintf(ts->dpath, sizeof(ts->dpath), "%.*s", (int)(slash - 11 - rel), rel);
	d = file_by_path(&ts->m, ts->dpath);
	if (!d || d->kind != BMAP_DIR || d->snap) {
		fprintf(stderr, "vsnapctl: send: %s is not in a directory's .snapshots\n", arg);
		return -ECANCELED;
	}
	rc = bmap_snap_lookup(ts->st->bm, d->ino, name, &t->s);
	if (rc == -ENOENT || (!rc && strchr(t->s.name, '@'))) {
		fprintf(stderr, "vsnapctl: send: %s is not a snapshot of directory %s%s\n", arg,
			ts->dpath, rc ? "" : " (a snapshot of one volume: send the file in it)");
		return -ECANCELED;
	}
	if (!rc)
		rc = bmap_snap_guid_get(ts->st->bm, t->s.id, t->guid);
	if (rc == -ENOSYS || rc == -ENOENT) {
		fprintf(stderr, "vsnapctl: send: snapshot %s has no id yet: mount %s once with this "
			"version of vsnapfs\n", t->s.name, ts->st->dir);
		return -ECANCELED;
	}
	ts->dname = strrchr(ts->dpath, '/') + 1;
	return rc;
}

/* --from: @NAME (a snapshot of the same directory) or its path. */
static int tree_from(struct tsend *ts, const char *from, struct stree *a)
{
	char *path;
	uint64_t dir = ts->b.s.dir;
	int rc;

	if (from[0] != '@')
		path = strdup(from);
	else
		path = xasprintf("%.*s%s", (int)(strrchr(ts->bpath, '/') + 1 - ts->bpath), ts->bpath,
				 from + 1);
	if (!path)
		return -ENOMEM;
	rc = tree_at(ts, path, a);
	if (!rc && a->s.dir != dir) {
		fprintf(stderr, "vsnapctl: send: --from %s is a snapshot of another directory\n", from);
		rc = -ECANCELED;
	}
	free(path);
	return rc;
}

/* --resume: the token's base, by its guid (a full stream if none). */
static int tree_resume_base(struct tsend *ts, const struct recv_token *t)
{
	bool full = stream_guid_is_zero(t->base);
	int rc;

	if (memcmp(t->guid, ts->b.guid, BMAP_GUID_BYTES)) {
		fprintf(stderr, "vsnapctl: send: --resume: the token is for another snapshot than "
			"%s\n", ts->o->b);
		return -ECANCELED;
	}
	if (ts->o->from && (full || memcmp(t->base, ts->a.guid, BMAP_GUID_BYTES))) {
		fprintf(stderr, "vsnapctl: send: --resume: the token is of a stream %s, not from "
			"%s\n", full ? "without a base (full)" : "from another base", ts->o->from);
		return -ECANCELED;
	}
	if (ts->o->from || full)
		return 0;
	rc = bmap_snap_by_guid(ts->st->bm, t->base, &ts->a.s);
	if (rc == -ENOENT || (!rc && (ts->a.s.dir != ts->b.s.dir || strchr(ts->a.s.name, '@')))) {
		fprintf(stderr, "vsnapctl: send: --resume: the token's base snapshot is not a snapshot "
			"of %s here\n", ts->dpath);
		return -ECANCELED;
	}
	memcpy(ts->a.guid, t->base, BMAP_GUID_BYTES);
	return rc;
}

static struct srec *srec_add(struct tsend *ts, const struct tent *t, uint32_t kind)
{
	if (ARRAY_RESERVE(ts->r, ts->rcap, ts->nr, 64))
		return NULL;
	ts->r[ts->nr] = (struct srec){ .t = t, .kind = kind };
	return &ts->r[ts->nr++];
}

/* A snapshot entry as the struct file plan_runs takes. */
static struct file as_file(const struct tent *t)
{
	return (struct file){ .path = t->path, .ino = t->in.ino, .size = t->in.size,
			      .node_id = t->in.node, .kind = t->in.kind };
}

/* The file records and their plans: see the top. */
static int tree_plan(struct tsend *ts)
{
	bool incr = ts->a.s.id != 0;
	bool *based = calloc(ts->b.n + 1, sizeof(*based));  /* B's entries sent BASE */
	uint64_t before = 1;
	int rc = based ? 0 : -ENOMEM;

	for (size_t i = ts->a.n; incr && !rc && i-- > 0;)
		if (!stree_find(&ts->b, ts->a.v[i].path) &&
		    !srec_add(ts, &ts->a.v[i], STREAM_FILE_REMOVE))
			rc = -ENOMEM;
	for (size_t i = 0; i < ts->b.n && !rc; i++) {
		const struct tent *b = &ts->b.v[i], *a = incr ? stree_find(&ts->a, b->path) : NULL;
		const char *slash = strrchr(b->path, '/');
		bool up = true;         /* the parent is sent BASE (or is D) */
		struct srec *r;
		struct file fa, fb;

		if (slash) {
			char *parent = strndup(b->path, (size_t)(slash - b->path));
			const struct tent *p = parent ? stree_find(&ts->b, parent) : NULL;

			free(parent);
			up = p && based[p - ts->b.v];
		}
		r = srec_add(ts, b, b->in.kind == BMAP_DIR ? STREAM_FILE_DIR : STREAM_FILE_VOL);
		if (!r) {
			rc = -ENOMEM;
			break;
		}
		/* by path and kind; a volume also by lineage, its node and A's
		 * with a common ancestor (the diff A -> B applies to the
		 * receiver's copy of A whatever its inode: a replica's inodes
		 * are not the source's) */
		if (up && a && a->in.kind == b->in.kind) {
			r->flags = STREAM_FILE_BASE;
			based[i] = true;
		}
		if (b->in.kind != BMAP_VOL)
			continue;
		fb = as_file(b);
		if (r->flags & STREAM_FILE_BASE) {
			fa = as_file(a);
			rc = plan_runs(ts->st, &fa, &fb, &r->p);
			if (rc != -EXDEV)
				continue;
			/* a volume replaced by an unrelated one: whole */
			free(r->p.v);
			r->p = (struct plan){ 0 };
			r->flags = 0;
			based[i] = false;
		}
		rc = plan_runs(ts->st, NULL, &fb, &r->p);
	}
	for (size_t i = 0; i < ts->nr; i++) {
		ts->r[i].before = before;
		before += 1 + plan_nrec(&ts->r[i].p);
	}
	free(based);
	return rc;
}

/* The file record of r (restated: CONT). */
static void srec_file(const struct srec *r, bool cont, struct stream_file *f)
{
	f->kind = r->kind;
	f->flags = r->flags | (cont ? STREAM_FILE_CONT : 0);
	f->mode = r->kind == STREAM_FILE_REMOVE ? 0 : r->t->in.mode & 07777;
	f->size = r->kind == STREAM_FILE_VOL ? r->t->in.size : 0;
	f->mtime_ns = r->kind == STREAM_FILE_REMOVE ? 0 : r->t->in.mtime_ns;
	f->uid = r->kind == STREAM_FILE_REMOVE ? 0 : r->t->in.uid;
	f->gid = r->kind == STREAM_FILE_REMOVE ? 0 : r->t->in.gid;
	snprintf(f->path, sizeof(f->path), "%s", r->t->path);
}

/* A resumed stream's first records: the directories above the file it
 * goes on in (r), outermost first, then r, each restated (CONT): the
 * receiver gets the mode, owner and time of every directory open at that
 * place.  A remove is restated alone.  Sizes (e NULL) or sends. */
static int tree_restate(struct tsend *ts, struct stream_enc *e, size_t first, struct plan *total,
			struct stream_file *f)
{
	const struct srec *r = &ts->r[first];
	size_t *up = NULL, nup = 0;
	int rc = 0;

	if (r->kind != STREAM_FILE_REMOVE && !(up = calloc(strlen(r->t->path) + 1, sizeof(*up))))
		return -ENOMEM;
	/* its directories come before it in pre-order, nearest last */
	for (size_t j = first, l = strlen(r->t->path); up && j-- > 0;) {
		const char *p = ts->r[j].t->path;
		size_t pl = strlen(p);

		if (ts->r[j].kind == STREAM_FILE_DIR && pl < l && !strncmp(p, r->t->path, pl) &&
		    r->t->path[pl] == '/') {
			up[nup++] = j;
			l = pl;
		}
	}
	for (size_t k = nup + 1; k-- > 0 && !rc;) {
		srec_file(k ? &ts->r[up[k - 1]] : r, true, f);
		if (!e)
			total->bytes += stream_file_bytes(f->path);
		else
			rc = stream_enc_file(e, f);
	}
	free(up);
	return rc;
}

/* The records from begin's resume place on: sizes (e NULL) or sends. */
static int tree_records(struct tsend *ts, struct stream_enc *e, const struct stream_begin *sb,
			struct plan *total, struct progress *pg)
{
	size_t first = sb->resume_file ? sb->resume_file - 1 : 0;
	struct stream_file *f = malloc(sizeof(*f));
	int rc = f ? 0 : -ENOMEM;

	for (size_t i = first; i < ts->nr && !rc; i++) {
		struct srec *r = &ts->r[i];
		bool cont = sb->resume_file && i == first;
		uint64_t from = cont ? sb->resume_off : 0;
		char *path;
		int fd;

		if (cont)
			rc = tree_restate(ts, e, i, total, f);
		else
			srec_file(r, false, f);
		if (!e) {
			total->bytes += cont ? 0 : stream_file_bytes(f->path);
			plan_size(&r->p, from);
			total->bytes += r->p.bytes;
			total->data_bytes += r->p.data_bytes;
			total->ndata += r->p.ndata;
			total->nzero += r->p.nzero;
			continue;
		}
		if (!rc && !cont)
			rc = stream_enc_file(e, f);
		if (rc || !r->p.n)
			continue;
		path = xasprintf("%s/%s", ts->bpath, r->t->path);
		fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
		if (fd < 0) {
			rc = path ? -errno : -ENOMEM;
			fprintf(stderr, "vsnapctl: send: %s: %s\n", path ? path : ts->bpath,
				strerror(-rc));
		} else {
			rc = send_runs(e, fd, &r->p, from, pg);
			close(fd);
		}
		free(path);
	}
	free(f);
	return rc;
}

static int tree_body(void *ctx, struct stream_enc *e, struct progress *pg)
{
	struct tsend *ts = ctx;

	return tree_records(ts, e, ts->sb, NULL, pg);
}

/* Does the token's place fall where the stream has a record? */
static bool tree_fits(const struct tsend *ts, const struct stream_pos *p)
{
	const struct srec *r;

	if (!p->file)
		return p->rec == 1 && !p->off;
	if (p->file > ts->nr)
		return false;
	r = &ts->r[p->file - 1];
	return p->rec > r->before && plan_fits(&r->p, r->before + 1, p->rec, p->off);
}

int send_tree(struct store *st, const struct send_opts *o)
{
	struct tsend ts = { .st = st, .o = o };
	struct stream_begin sb = { .block_size = st->bs, .kind = STREAM_KIND_DIR };
	struct recv_token tok;
	struct plan total = { 0 };
	struct bmap_inode din;          /* D itself: its mode and owner (live: a
					 * snapshot does not keep D's own) */
	char h[16];
	int rc;
	bool txn;

	if (o->resume && (recv_token_parse(o->resume, &tok) || !tok.dir)) {
		fprintf(stderr, "vsnapctl: send: --resume %s: not a token of a directory's receive "
			"(GUID.BASE.K.OFF.CHAIN.F; vsnapctl receive --token PATH prints it)\n",
			o->resume);
		return 2;
	}
	snprintf(ts.bpath, sizeof(ts.bpath), "%s", o->b);
	for (size_t l = strlen(ts.bpath); l > 1 && ts.bpath[l - 1] == '/';)
		ts.bpath[--l] = '\0';
	rc = bmap_snapshot_begin(st->bm);
	txn = !rc;
	if (!rc)
		rc = model_load(st, &ts.m, NULL);
	if (!rc)
		rc = tree_at(&ts, ts.bpath, &ts.b);
	if (!rc && o->from)
		rc = tree_from(&ts, o->from, &ts.a);
	if (!rc && o->from && ts.a.s.id == ts.b.s.id) {
		fprintf(stderr, "vsnapctl: send: --from names the snapshot being sent\n");
		rc = -ECANCELED;
	}
	if (!rc && o->resume)
		rc = tree_resume_base(&ts, &tok);
	if (!rc)
		rc = stree_load(st, &ts.b);
	if (!rc)
		rc = bmap_inode_get(st->bm, ts.b.s.dir, &din);
	if (!rc && ts.a.s.id)
		rc = stree_load(st, &ts.a);
	if (!rc)
		rc = tree_plan(&ts);
	if (txn)
		bmap_snapshot_end(st->bm);
	if (rc)
		goto out;

	for (size_t i = 0; i < ts.b.n; i++)
		sb.size += ts.b.v[i].in.kind == BMAP_VOL ? ts.b.v[i].in.size : 0;
	memcpy(sb.guid, ts.b.guid, BMAP_GUID_BYTES);
	sb.dmode = din.mode & 07777;
	sb.duid = din.uid;
	sb.dgid = din.gid;
	sb.created_ns = ts.b.s.created_ns;
	snprintf(sb.file, sizeof(sb.file), "%s", ts.dname);
	snprintf(sb.snap, sizeof(sb.snap), "%s", ts.b.s.name);
	if (ts.a.s.id) {
		memcpy(sb.base_guid, ts.a.guid, BMAP_GUID_BYTES);
		snprintf(sb.base, sizeof(sb.base), "%s", ts.a.s.name);
	}
	if (o->resume && !tree_fits(&ts, &tok.pos)) {
		fprintf(stderr, "vsnapctl: send: --resume: record %" PRIu64 " of this stream does not "
			"end at byte %" PRIu64 " of its file %" PRIu64 ": the token is not of this "
			"stream\n", tok.pos.rec, tok.pos.off, tok.pos.file);
		rc = -ECANCELED;
		goto out;
	}
	if (o->resume) {
		sb.resume_rec = tok.pos.rec;
		sb.resume_off = tok.pos.off;
		sb.resume_chain = tok.pos.chain;
		sb.resume_file = tok.pos.file;
	}
	total.bytes = stream_begin_bytes(&sb) + stream_end_bytes();
	rc = tree_records(&ts, NULL, &sb, &total, NULL);
	if (rc)
		goto out;
	if (o->dry || o->verbose) {
		human(total.bytes, h, sizeof(h));
		fprintf(o->dry ? stdout : stderr, "send %s/.snapshots/%s%s%s: %s%" PRIu64 " bytes "
			"(%s): %zu entries, %" PRIu64 " data bytes in %" PRIu64 " record(s), %" PRIu64
			" zero range(s)\n", ts.dname, ts.b.s.name, ts.a.s.id ? " from @" : " (full)",
			ts.a.s.id ? ts.a.s.name : "", o->compress ? "at most " : "", total.bytes, h,
			ts.nr, total.data_bytes, total.ndata, total.nzero);
	}
	if (!o->dry) {
		ts.sb = &sb;
		rc = send_write(o, &sb, total.bytes, tree_body, &ts);
	}
out:
	if (rc && rc != -ECANCELED && rc != -EXDEV)
		fprintf(stderr, "vsnapctl: send: %s\n", strerror(-rc));
	for (size_t i = 0; i < ts.nr; i++)
		free(ts.r[i].p.v);
	free(ts.r);
	stree_free(&ts.a);
	stree_free(&ts.b);
	model_free(&ts.m);
	return rc ? 2 : 0;
}
