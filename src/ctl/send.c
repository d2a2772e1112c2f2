/*
 * send: a stream of one snapshot of a volume, full or incremental
 * (docs/design.md, "Send and receive"; the bytes in docs/on-disk-format.md,
 * "Send stream").
 *
 *   vsnapctl send [-n] [-v] [-c] [--from A] [--resume TOKEN] B > STREAM
 *
 * B (and A) are files of single-volume snapshots in a mount:
 * MNT/D/.snapshots/FILE@NAME/FILE; A may be written @NAME, a snapshot of
 * the same file.  A B that is a directory is a directory snapshot,
 * MNT/D/.snapshots/NAME: sendtree.c sends it (a directory stream), with
 * this file's plans and writer (plan_runs, send_runs, send_write).  What is sent comes from the index alone, in one read
 * transaction: a full stream holds B's data runs (bmap_node_content), an
 * incremental one the runs where A and B differ (bmap_node_diff: data, or
 * zeros where B reads zeros), the extents that vsnapctl diff prints.  So
 * the size of the stream is exact before a byte is read (-n prints it and
 * stops; -v prints it first).  -c compresses data records with zstd (each
 * one only if that makes it smaller): the size printed is then the most it
 * can be.  The data is read through the mount, where
 * the daemon checks every block's checksum: a damaged block fails the send.
 *
 * --resume TOKEN (what a cut receive printed, or receive --token: the
 * stream's guids, the record count K and offset OFF it kept, its chain
 * value) sends the records of the same stream after record K, chained on
 * from that value (docs/design.md, "Resume").  B must be the token's
 * snapshot; the base is the token's, found by its guid here (and --from, if
 * given, must name it); the plan's first K - 1 records must end exactly at
 * OFF, else the token is not of this stream.
 *
 * Exit status: 0 sent, 2 refused or failed (one line on stderr).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/array.h"
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/stream.h"

/* A snapshot's file and what the stream says of it. */
struct snapfile {
	const struct file *f;
	char file[BMAP_NAME_MAX + 1];   /* FILE of FILE@NAME */
	char name[BMAP_NAME_MAX + 1];   /* NAME */
	uint8_t guid[BMAP_GUID_BYTES];
	int64_t created_ns;
	uint64_t dir;                   /* the directory whose .snapshots holds it */
};

/* What the stream says of snapshot file sf->f (arg: how to name it). */
static int snapfile_of(struct store *st, const char *arg, struct snapfile *sf)
{
	struct bmap_snap s;
	const char *at;
	int rc;

	if (!sf->f->snap) {
		fprintf(stderr, "vsnapctl: send: %s is a live volume: send sends snapshots (take one "
			"with mkdir DIR/.snapshots/FILE@NAME)\n", arg);
		return -EINVAL;
	}
	rc = bmap_snap_get(st->bm, sf->f->snap, &s);
	if (rc)
		return rc;
	at = strrchr(s.name, '@');      /* the daemon's split: a file name may hold an @ */
	if (!at) {
		fprintf(stderr, "vsnapctl: send: %s is in snapshot %s of a whole directory: only "
			"snapshots of one volume (FILE@NAME) are sent so far\n", arg, s.name);
		return -EINVAL;
	}
	snprintf(sf->file, sizeof(sf->file), "%.*s", (int)(at - s.name), s.name);
	snprintf(sf->name, sizeof(sf->name), "%s", at + 1);
	sf->created_ns = s.created_ns;
	sf->dir = s.dir;
	rc = bmap_snap_guid_get(st->bm, s.id, sf->guid);
	if (rc == -ENOSYS || rc == -ENOENT)
		fprintf(stderr, "vsnapctl: send: snapshot %s has no id yet: mount %s once with this "
			"version of vsnapfs, which gives every snapshot one\n", s.name, st->dir);
	return rc;
}

/* The snapshot file at arg: a file of a single-volume snapshot, with a guid. */
static int snapfile_at(struct store *st, const struct model *m, const char *arg,
		       struct snapfile *sf)
{
	sf->f = file_at(m, st->dir, arg, "send");
	return sf->f ? snapfile_of(st, arg, sf) : -EINVAL;
}

/* The snapshot file of the snapshot with guid g (a resume's base). */
static int snapfile_by_guid(struct store *st, const struct model *m, const uint8_t *g,
			    struct snapfile *sf)
{
	struct bmap_snap s;
	int rc = bmap_snap_by_guid(st->bm, g, &s);

	if (rc == -ENOENT) {
		fprintf(stderr, "vsnapctl: send: --resume: the token's base snapshot is not in %s\n",
			st->dir);
		return -EINVAL;
	}
	if (!rc)
		sf->f = file_of_snap(m, s.id);
	if (!rc && !sf->f) {
		fprintf(stderr, "vsnapctl: send: --resume: the token's base %s is not a snapshot of "
			"one volume\n", s.name);
		return -EINVAL;
	}
	return rc ? rc : snapfile_of(st, s.name, sf);
}

/* --from @NAME: the same file in snapshot FILE@NAME of the same directory. */
static char *base_path(const char *b_arg, const struct snapfile *b, const char *from)
{
	const char *tail;
	size_t keep;

	if (from[0] != '@')
		return strdup(from);
	/* B is .../.snapshots/FILE@NAME/FILE: replace the last two components */
	tail = strrchr(b_arg, '/');
	if (!tail)
		return NULL;
	keep = tail - b_arg;
	while (keep && b_arg[keep - 1] != '/')
		keep--;
	return xasprintf("%.*s%s%s/%s", (int)keep, b_arg, b->file, from, b->file);
}

static int out_fd(void *ctx, const void *buf, size_t len)
{
	int fd = *(int *)ctx;
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* bmap_run callback: the run in bytes, cut to [lo, hi). */
static int plan_add(void *ctx, const struct bmap_run *r)
{
	struct plan *p = ctx;
	uint64_t a = r->lblock * p->bs, b = (r->lblock + r->nblocks) * p->bs;

	a = a < p->lo ? p->lo : a;
	b = b > p->hi ? p->hi : b;
	if (b <= a || (p->data_only && !r->data))
		return 0;
	if (ARRAY_RESERVE(p->v, p->cap, p->n, 256))
		return -ENOMEM;
	p->v[p->n++] = (struct bext){ .off = a, .len = b - a, .data = r->data };
	return 0;
}

/* The part of extent x at or past the resume offset; false if none. */
static bool from_resume(const struct bext *x, uint64_t resume, uint64_t *off, uint64_t *len)
{
	uint64_t a = x->off < resume ? resume : x->off, b = x->off + x->len;

	*off = a;
	*len = b > a ? b - a : 0;
	return b > a;
}

bool plan_fits(const struct plan *p, uint64_t before, uint64_t rec, uint64_t off)
{
	uint64_t n = before, end = 0;

	for (size_t i = 0; i < p->n && n < rec; i++) {
		uint64_t nrec = p->v[i].data ?
			(p->v[i].len + STREAM_DATA_MAX - 1) / STREAM_DATA_MAX : 1;

		if (n + nrec >= rec) {
			end = p->v[i].off + (p->v[i].data ? (rec - n) * STREAM_DATA_MAX : p->v[i].len);
			end = end > p->v[i].off + p->v[i].len ? p->v[i].off + p->v[i].len : end;
		}
		n += nrec;
	}
	return n >= rec && end == off;
}

uint64_t plan_nrec(const struct plan *p)
{
	uint64_t n = 0;

	for (size_t i = 0; i < p->n; i++)
		n += p->v[i].data ? (p->v[i].len + STREAM_DATA_MAX - 1) / STREAM_DATA_MAX : 1;
	return n;
}

/* The exact bytes of plan p's records from offset resume on. */
void plan_size(struct plan *p, uint64_t resume)
{
	for (size_t i = 0; i < p->n; i++) {
		uint64_t off, len;

		if (!from_resume(&p->v[i], resume, &off, &len))
			continue;
		if (p->v[i].data) {
			uint64_t nrec = (len + STREAM_DATA_MAX - 1) / STREAM_DATA_MAX;

			p->bytes += nrec * stream_data_bytes(0) + len;
			p->data_bytes += len;
			p->ndata += nrec;
		} else {
			p->bytes += stream_zero_bytes();
			p->nzero++;
		}
	}
}

/*
 * What to send of B against A (A NULL: a full stream).  The receiver
 * starts from A's content (or nothing) cut or extended to B's size, so
 * below the smaller size the diff's runs are sent (data, and zeros where B
 * reads zeros), and past it B's data runs (the receiver reads zeros there
 * already), as vsnapctl diff cuts them.
 */
int plan_runs(struct store *st, const struct file *a, const struct file *b, struct plan *p)
{
	uint64_t bs = st->bs, lo, nb;
	int rc;

	p->bs = st->bs;
	p->data_only = true;
	if (!a) {
		p->lo = 0;
		p->hi = b->size;
		return bmap_node_content(st->bm, b->node_id, 0, (b->size + bs - 1) / bs,
					 plan_add, p);
	}
	lo = a->size < b->size ? a->size : b->size;
	nb = ((a->size > b->size ? a->size : b->size) + bs - 1) / bs;
	p->lo = 0;
	p->hi = lo;
	p->data_only = false;
	rc = bmap_node_diff(st->bm, a->node_id, b->node_id, nb, plan_add, p);
	if (rc || b->size <= lo)
		return rc;
	p->lo = lo;
	p->hi = b->size;
	p->data_only = true;
	return bmap_node_content(st->bm, b->node_id, lo / bs, (b->size + bs - 1) / bs,
				 plan_add, p);
}

int send_runs(struct stream_enc *e, int fd, const struct plan *p, uint64_t resume,
	      struct progress *pg)
{
	uint8_t *buf = malloc(STREAM_DATA_MAX);
	int rc = buf ? 0 : -ENOMEM;

	for (size_t i = 0; i < p->n && !rc; i++) {
		uint64_t off, len;

		if (!from_resume(&p->v[i], resume, &off, &len))
			continue;
		if (!p->v[i].data) {
			rc = stream_enc_zero(e, off, len);
			continue;
		}
		while (len && !rc) {
			size_t n = len < STREAM_DATA_MAX ? len : STREAM_DATA_MAX;
			ssize_t got = pread(fd, buf, n, (off_t)off);

			if (got < 0)
				rc = -errno;
			else if ((size_t)got != n)
				rc = -EIO;      /* the snapshot file is shorter than its index says */
			else
				rc = stream_enc_data(e, off, buf, n);
			off += n;
			len -= n;
			pg->done = stream_enc_bytes(e);
			progress_show(pg);
		}
	}
	free(buf);
	return rc;
}

/* --resume: B must be the token's snapshot, and the base the token's (a
 * full stream if it names none): found by its guid when --from is not
 * given. */
static int send_resume_base(struct store *st, const struct model *m, const struct send_opts *o,
			    const struct recv_token *t, const struct snapfile *b,
			    struct snapfile *a)
{
	bool full = stream_guid_is_zero(t->base);

	if (memcmp(t->guid, b->guid, BMAP_GUID_BYTES)) {
		fprintf(stderr, "vsnapctl: send: --resume: the token is for another snapshot than "
			"%s\n", o->b);
		return -EINVAL;
	}
	if (o->from && (full || memcmp(t->base, a->guid, BMAP_GUID_BYTES))) {
		fprintf(stderr, "vsnapctl: send: --resume: the token is of a stream %s, not from "
			"%s\n", full ? "without a base (full)" : "from another base", o->from);
		return -EINVAL;
	}
	if (o->from || full)
		return 0;
	return snapfile_by_guid(st, m, t->base, a);
}

int send_write(const struct send_opts *o, const struct stream_begin *sb, uint64_t planned,
	       int (*body)(void *ctx, struct stream_enc *e, struct progress *pg), void *ctx)
{
	struct stream_enc *e = NULL;
	struct progress pg;
	int out = 1, rc;

	if (isatty(out)) {
		fprintf(stderr, "vsnapctl: send: refusing to write a stream to a terminal: redirect "
			"it to a file or a pipe\n");
		return -ECANCELED;
	}
	rc = stream_enc_new(out_fd, &out, &e);
	if (!rc && o->compress)
		rc = stream_enc_compress(e, 3);
	if (!rc)
		rc = stream_enc_begin(e, sb);
	progress_bytes(&pg, "send", planned);
	if (!rc)
		rc = body(ctx, e, &pg);
	if (!rc)
		rc = stream_enc_end(e);
	progress_end(&pg);
	if (!rc && (o->compress ? stream_enc_bytes(e) > planned : stream_enc_bytes(e) != planned)) {
		fprintf(stderr, "vsnapctl: send: wrote %" PRIu64 " bytes, planned %" PRIu64 "\n",
			stream_enc_bytes(e), planned);
		rc = -EIO;
	}
	if (rc && rc != -ECANCELED)
		fprintf(stderr, "vsnapctl: send: %s\n", rc == -EPIPE ? "the receiving end closed the "
			"stream" : rc == -EIO ? "reading the snapshot failed (a damaged block? see "
			"the daemon's log, vsnapctl scrub)" : strerror(-rc));
	stream_enc_free(e);
	return rc ? -ECANCELED : 0;     /* said why */
}

struct vol_runs {                       /* send_write's body for one volume */
	int fd;
	const struct plan *p;
	uint64_t resume;
};

static int vol_body(void *ctx, struct stream_enc *e, struct progress *pg)
{
	const struct vol_runs *v = ctx;

	return send_runs(e, v->fd, v->p, v->resume, pg);
}

int cmd_send(struct store *st, const struct send_opts *o)
{
	struct model m = { 0 };
	struct snapfile a = { 0 }, b = { 0 };
	struct recv_token tok;
	struct stream_begin sb = { .block_size = st->bs };
	struct plan p = { 0 };
	struct vol_runs vr;
	char *apath = NULL, h[16];
	int fd = -1, rc;
	bool txn = false;
	struct stat sst;

	if (!stat(o->b, &sst) && S_ISDIR(sst.st_mode))
		return send_tree(st, o);        /* a directory snapshot */
	if (o->resume && recv_token_parse(o->resume, &tok)) {
		fprintf(stderr, "vsnapctl: send: --resume %s: not a token of receive (GUID.BASE.K.OFF."
			"CHAIN; vsnapctl receive --token PATH prints it)\n", o->resume);
		return 2;
	}
	rc = bmap_snapshot_begin(st->bm);
	txn = !rc;
	if (!rc)
		rc = model_load(st, &m, NULL);
	if (!rc)
		rc = snapfile_at(st, &m, o->b, &b);
	if (!rc && o->from) {
		apath = base_path(o->b, &b, o->from);
		rc = apath ? snapfile_at(st, &m, apath, &a) : -ENOMEM;
	}
	if (!rc && o->from && !memcmp(a.guid, b.guid, BMAP_GUID_BYTES)) {
		fprintf(stderr, "vsnapctl: send: --from names the snapshot being sent\n");
		rc = -EINVAL;
	}
	if (!rc && o->resume)
		rc = send_resume_base(st, &m, o, &tok, &b, &a);
	if (!rc)
		rc = plan_runs(st, a.f, b.f, &p);
	if (rc == -EXDEV)
		fprintf(stderr, "vsnapctl: send: %s and %s are not of one lineage: no incremental "
			"stream between them\n", a.f->path, b.f->path);
	if (txn)
		bmap_snapshot_end(st->bm);
	if (rc)
		goto out;

	sb.size = b.f->size;
	memcpy(sb.guid, b.guid, BMAP_GUID_BYTES);
	sb.created_ns = b.created_ns;
	snprintf(sb.file, sizeof(sb.file), "%s", b.file);
	snprintf(sb.snap, sizeof(sb.snap), "%s", b.name);
	if (a.f) {
		memcpy(sb.base_guid, a.guid, BMAP_GUID_BYTES);
		snprintf(sb.base, sizeof(sb.base), "%s", a.name);
	}
	if (o->resume && (tok.dir || !plan_fits(&p, 1, tok.pos.rec, tok.pos.off))) {
		fprintf(stderr, "vsnapctl: send: --resume: record %" PRIu64 " of this stream does not "
			"end at byte %" PRIu64 ": the token is not of this stream\n", tok.pos.rec,
			tok.pos.off);
		rc = -EINVAL;
		goto out;
	}
	if (o->resume) {
		sb.resume_rec = tok.pos.rec;
		sb.resume_off = tok.pos.off;
		sb.resume_chain = tok.pos.chain;
	}
	p.bytes = stream_begin_bytes(&sb) + stream_end_bytes();
	plan_size(&p, sb.resume_off);
	if (o->dry || o->verbose) {
		human(p.bytes, h, sizeof(h));
		fprintf(o->dry ? stdout : stderr, "send %s@%s%s%s: %s%" PRIu64 " bytes (%s): %" PRIu64
			" data bytes in %" PRIu64 " record(s), %" PRIu64 " zero range(s)\n", b.file,
			b.name, a.f ? " from @" : " (full)", a.f ? a.name : "",
			o->compress ? "at most " : "", p.bytes, h,
			p.data_bytes, p.ndata, p.nzero);
	}
	if (o->dry)
		goto out;
	fd = open(o->b, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		fprintf(stderr, "vsnapctl: send: %s: %s\n", o->b, strerror(-rc));
		goto out;
	}
	vr = (struct vol_runs){ .fd = fd, .p = &p, .resume = sb.resume_off };
	rc = send_write(o, &sb, p.bytes, vol_body, &vr);
out:
	if (rc && rc != -EINVAL && rc != -EXDEV && rc != -ECANCELED && rc != -ENOSYS &&
	    rc != -ENOENT)
		fprintf(stderr, "vsnapctl: send: %s\n", strerror(-rc));
	if (fd >= 0)
		close(fd);
	free(apath);
	free(p.v);
	model_free(&m);
	return rc ? 2 : 0;
}

static int send_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "from", required_argument, NULL, 'F' },
		{ "resume", required_argument, NULL, 'R' },
		{ 0 }
	};
	struct cli c = { .cmd = &send_cmd, .shortopts = "nvc", .longopts = opts,
			 .min_args = 1, .max_args = 1, .missing = "needs a snapshot file" };
	struct send_opts so = { 0 };
	struct store st = { 0 };
	int ch, rc;

	while ((ch = cli_next(&c, argc, argv)) >= 0) {
		switch (ch) {
		case 'n': so.dry = true; break;
		case 'v': so.verbose = true; break;
		case 'c': so.compress = true; break;
		case 'F': so.from = optarg; break;
		case 'R': so.resume = optarg; break;
		}
	}
	if (ch == CLI_STOP)
		return c.exit;
	so.b = argv[optind];
	rc = store_open(so.b, false, &st) ? 2 : cmd_send(&st, &so);
	store_close(&st);
	return rc;
}

const struct cmd send_cmd = {
	.name = "send",
	.synopsis = "[-n] [-v] [-c] [--from A] [--resume TOKEN] B",
	.summary = "write a stream of a snapshot to stdout, full or incremental",
	.help = "B is a snapshot file in a mount (DIR/.snapshots/FILE@NAME/FILE), or a snapshot\n"
		"of a whole directory (DIR/.snapshots/NAME): a directory stream.\n"
		"  -n                         print the exact size of the stream only\n"
		"  -v                         print the size first\n"
		"  -c                         compress the data (zstd; the size printed is then an\n"
		"                             upper bound)\n"
		"      --from A               the changes since A (a path, or @NAME)\n"
		"      --resume TOKEN         only what lies past TOKEN, the place a cut receive\n"
		"                             printed (--from is then optional)\n",
	.common = CLI_PROGRESS,
	.run = send_main,
};
