/*
 * vsnapctl: inspect and maintain a store, mounted or not.
 *
 *   vsnapctl list  [--json] [PATH]                volumes and snapshot files
 *   vsnapctl tree  [--json] STORE|MOUNTPOINT      the clone/snapshot genealogy
 *   vsnapctl check [--json] STORE|MOUNTPOINT      index against chunk files (exit 1: problems)
 *   vsnapctl scrub [--json] STORE|MOUNTPOINT      read and verify every block (exit 1: damage)
 *
 * Exit status: 0 clean, 1 problems (check) or damage (scrub), 2 usage or I/O
 * error.  --json may come anywhere on the command line.
 *
 * Access.  The index is opened read-only (SQLite WAL lets us read while the
 * daemon writes; every bmap call sees the last committed state) and chunk
 * files are read directly.  STORE may be the store directory, the mount
 * point of a running vsnapfs, or (list) any path inside such a mount: the
 * daemon mounts with fsname "vsnapfs:STORE", found in /proc/self/mounts.
 * vsnapctl calls only bmap_* and chunk_*, never SQLite.
 *
 * The model.  Every command first loads the namespace into memory: the live
 * inodes with their paths, the snapshots and their frozen inodes
 * ("sinodes") with the paths of their files (DIR/.snapshots/SNAP/below),
 * and every map node with its children and the files that name it.  That is
 * O(inodes + sinodes + nodes) memory; rows are never all loaded by list or
 * tree.
 *
 * exclusive (list).  A node's own data rows are freed by deleting the file
 * that names it unless a descendant can still see them.  A row is seen by a
 * child when it lies below the child's inherit limit and the child has no
 * row (data or tombstone) of its own there; whatever a grandchild sees
 * through the child, the child sees.  So: merge the node's rows with each
 * child's rows below its inherit limit, both in lblock order, and count the
 * rows no child sees.  O(rows of the node + rows of its children).  A node
 * named by two files frees nothing when one of them goes.  Second-order
 * effects of the release (an internal parent left with one child is merged
 * into it) are not counted.
 *
 * origin (list).  The nearest ancestor node named by a snapshot file of
 * another volume (the inode number tells: it is never reused, and a
 * volume's own snapshots keep it).  A clone of a live volume hangs below an
 * unnamed frozen node that says nothing of its source; the walk goes on
 * above it.
 *
 * check.  A node that no file names and that has fewer than two children
 * is a warning, not a problem: deleting a snapshot or volume commits first
 * and releases its node in the background, and after a crash the next
 * mount releases whatever was left (src/ns/bg.c, src/ns/store.c).
 *
 * check and scrub read the blocks with ONE scan (bmap_exts_all) into an array
 * sorted by (chunk, slot): a chunk's rows are then contiguous, duplicates
 * adjacent, and scrub reads each chunk front to back in runs of consecutive
 * slots.  The array costs 32 bytes a block; past ROWS_PER_PASS rows (or
 * $VSNAPCTL_ROWS_PER_PASS) the scan keeps only the lowest chunk ids that
 * fit and a further scan takes the next range, so memory stays bounded on
 * any store at the price of more scans.
 *
 * A mounted store changes under us, and bmap has no read transaction that
 * spans several calls, so two reads may see different commits (a chunk file
 * listed before a flush committed rows into it, a node created between the
 * node list and the row scan).  Chunk files are therefore listed after the
 * row scan, scrub looks a damaged row up again before reporting it, and a
 * check that finds problems on a store that a daemon holds runs again and
 * reports only the problems both runs found.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <mntent.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "vsnapfs/array.h"
#include "vsnapfs/bmap.h"
#include "vsnapfs/chunk.h"

#define NONE            SIZE_MAX
#define REPORT_MAX      1000            /* problem lines kept and printed */
#define ROWS_PER_PASS   (16u << 20)     /* 512 MiB of struct rowref */
#define SCRUB_RUN_BYTES (1u << 20)      /* one chunk_read of up to this much */
#define SEERS_MAX       8               /* files named per damaged block */

static bool json;
static bool progress;                   /* stderr is a TTY and not --json */

struct store {
	char dir[PATH_MAX];
	char rel[PATH_MAX];             /* path below the mount point, "" if none */
	struct bmap *bm;
	struct chunk_store *cs;         /* check and scrub only */
	uint32_t bs;
	bool in_use;                    /* a daemon holds the store (its directory's flock) */
};

/* ---- small helpers ---------------------------------------------------------- */

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

static void json_str(FILE *f, const char *s)
{
	putc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			putc(*s, f);
	}
	putc('"', f);
}

static void human(uint64_t bytes, char *out, size_t len)
{
	const char *unit = "KMGTPE";
	double v = bytes;
	int u = -1;

	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(out, len, "%" PRIu64, bytes);
	else
		snprintf(out, len, "%.1f%c", v, unit[u]);
}

/* ---- progress bar (stderr, only when it is a TTY) ---------------------------- */

struct progress {
	const char *what;
	uint64_t total, done;
	int pct;                        /* last shown, -1: nothing shown yet */
};

static void progress_start(struct progress *p, const char *what, uint64_t total)
{
	*p = (struct progress){ .what = what, .total = total, .pct = -1 };
}

static void progress_show(struct progress *p)
{
	static const char bar[] = "##############################";
	int pct;

	if (!progress || !p->total)
		return;
	pct = p->done >= p->total ? 100 : (int)(p->done * 100 / p->total);
	if (pct == p->pct)
		return;
	p->pct = pct;
	fprintf(stderr, "\r%s [%-30.*s] %3d%%", p->what, pct * 30 / 100, bar, pct);
	fflush(stderr);
}

static void progress_end(struct progress *p)
{
	if (progress && p->pct >= 0)
		fprintf(stderr, "\r%*s\r", (int)strlen(p->what) + 38, "");
	p->pct = -1;
}

/* ---- opening ----------------------------------------------------------------- */

/*
 * The store behind arg: arg itself if it holds index.sqlite, else the store
 * of the vsnapfs mounted at arg or at the nearest mount point above it; rel
 * gets the path of arg below that mount point ("" for the mount point).
 */
static int resolve_store(const char *arg, char *out, size_t outlen, char *rel, size_t rellen)
{
	char real[PATH_MAX], probe[PATH_MAX + 16];
	struct mntent *me;
	size_t best = 0;
	FILE *mf;
	int rc = -ENOENT;

	if (!realpath(arg, real))
		return -errno;
	snprintf(probe, sizeof(probe), "%s/index.sqlite", real);
	if (access(probe, F_OK) == 0) {
		snprintf(out, outlen, "%s", real);
		rel[0] = '\0';
		return 0;
	}
	mf = setmntent("/proc/self/mounts", "r");
	if (!mf)
		return -errno;
	while ((me = getmntent(mf))) {
		size_t len = strlen(me->mnt_dir);

		if (strncmp(me->mnt_fsname, "vsnapfs:", 8) || len <= best)
			continue;
		if (strcmp(me->mnt_dir, "/") &&
		    (strncmp(me->mnt_dir, real, len) || (real[len] && real[len] != '/')))
			continue;
		if (!strcmp(me->mnt_dir, "/"))
			len = 0;
		snprintf(out, outlen, "%s", me->mnt_fsname + 8);
		snprintf(rel, rellen, "%s", real + len);
		best = len ? len : 1;
		rc = 0;
	}
	endmntent(mf);
	return rc;
}

/* Whether some process holds a flock on the store directory (a mounted
 * daemon: src/ns/store.c locks the directory itself; STORE/lock only holds
 * its pid), from /proc/locks: taking the lock ourselves, even briefly, could
 * make a daemon starting at that moment refuse.  When unsure, say yes. */
static bool store_in_use(const char *dir)
{
	char line[256];
	struct stat sb;
	bool found = false;
	FILE *f;

	if (stat(dir, &sb))
		return errno != ENOENT;
	f = fopen("/proc/locks", "r");
	if (!f)
		return true;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned maj, min;
		unsigned long long ino;
		char type[16];

		if (strstr(line, "->"))
			continue;               /* a waiter, not a holder */
		if (sscanf(line, "%*d: %15s %*s %*s %*d %x:%x:%llu", type, &maj, &min, &ino) == 4 &&
		    !strcmp(type, "FLOCK") && maj == major(sb.st_dev) && min == minor(sb.st_dev) &&
		    ino == (unsigned long long)sb.st_ino)
			found = true;
	}
	fclose(f);
	return found;
}

/*
 * A mounted daemon keeps recent changes in its log until a checkpoint
 * writes them to the index (docs/design.md, D3); an fsync of a directory of
 * the mount asks for one.  Every mount of the store dir gets it.  Errors
 * only warn: the index is then up to a second behind.
 */
static void sync_mounts(const char *store)
{
	struct mntent *me;
	FILE *mf = setmntent("/proc/self/mounts", "r");

	if (!mf)
		return;
	while ((me = getmntent(mf))) {
		int fd;

		if (strncmp(me->mnt_fsname, "vsnapfs:", 8) || strcmp(me->mnt_fsname + 8, store))
			continue;
		fd = open(me->mnt_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0 || fsync(fd))
			fprintf(stderr, "vsnapctl: %s: cannot bring the index up to date: %s\n",
				me->mnt_dir, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	endmntent(mf);
}

static int store_open(const char *arg, bool chunks, struct store *st)
{
	char path[PATH_MAX + 32];
	int rc;

	rc = resolve_store(arg, st->dir, sizeof(st->dir), st->rel, sizeof(st->rel));
	if (rc) {
		fprintf(stderr, "vsnapctl: %s is neither a vsnapfs store nor in a vsnapfs mount\n", arg);
		return rc;
	}
	sync_mounts(st->dir);
	snprintf(path, sizeof(path), "%s/index.sqlite", st->dir);
	rc = bmap_open(path, 1, &st->bm);
	if (rc) {
		fprintf(stderr, "vsnapctl: %s: %s\n", path,
			rc == -EUCLEAN ? "damaged or not a vsnapfs index" :
			rc == -EPROTONOSUPPORT ? "unknown format version" : strerror(-rc));
		return rc;
	}
	if (bmap_format(st->bm) < BMAP_FORMAT_VERSION) {
		fprintf(stderr, "vsnapctl: %s: index format %d: mount the store once (read-write) "
			"to upgrade it to format %d\n", path, bmap_format(st->bm), BMAP_FORMAT_VERSION);
		return -EPROTONOSUPPORT;
	}
	st->bs = bmap_block_size(st->bm);
	if (!chunks)
		return 0;
	st->in_use = store_in_use(st->dir);
	/* chunk_store_open would create a missing directory: look first */
	snprintf(path, sizeof(path), "%s/chunks", st->dir);
	if (access(path, F_OK)) {
		rc = -errno;
		fprintf(stderr, "vsnapctl: %s: %s\n", path, strerror(-rc));
		return rc;
	}
	rc = chunk_store_open(path, st->bs, 1, &st->cs);
	if (rc)
		fprintf(stderr, "vsnapctl: %s: %s\n", path, strerror(-rc));
	return rc;
}

static void store_close(struct store *st)
{
	chunk_store_close(st->cs);
	bmap_close(st->bm);
}

/* ---- problems and warnings (check) ------------------------------------------- */

struct strv {
	char **v;
	size_t n, cap;
	uint64_t total;                 /* added, including those not kept */
};

struct report {
	struct strv problems, warnings;
	uint64_t blocks;                /* data rows */
	size_t nchunks;                 /* chunk files */
	size_t ninodes;                 /* live inodes (root excluded) */
	int rc;                         /* -ENOMEM while recording */
};

static void strv_free(struct strv *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	memset(s, 0, sizeof(*s));
}

static void report_free(struct report *r)
{
	strv_free(&r->problems);
	strv_free(&r->warnings);
}

static void report_add(struct report *r, bool warning, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void report_add(struct report *r, bool warning, const char *fmt, ...)
{
	struct strv *s;
	va_list ap;
	char *line;

	if (!r)
		return;
	s = warning ? &r->warnings : &r->problems;
	if (s->total++ >= REPORT_MAX)
		return;
	va_start(ap, fmt);
	if (vasprintf(&line, fmt, ap) < 0)
		line = NULL;
	va_end(ap);
	if (!line || ARRAY_RESERVE(s->v, s->cap, s->n, 64)) {
		free(line);
		r->rc = -ENOMEM;
		return;
	}
	s->v[s->n++] = line;
}

#define PROBLEM(r, ...) report_add((r), false, __VA_ARGS__)
#define WARNING(r, ...) report_add((r), true, __VA_ARGS__)

/* ---- the model: files, snapshots, nodes ---------------------------------------- */

struct file {
	char *path;                     /* "/a/b.img", "/d/.snapshots/S/b.img", "(unlinked N)" */
	uint64_t ino;                   /* as it was, for a snapshot's file */
	uint64_t size;                  /* bytes */
	uint64_t node_id;               /* the map node it names (volumes) */
	uint64_t snap;                  /* 0: a live inode, else the snapshot's id */
	size_t node;                    /* index in model.nodes, NONE if it names none */
	uint32_t kind;                  /* enum bmap_kind */
};

struct mnode {
	struct bmap_node n;
	size_t parent;                  /* index; NONE for none or a missing parent */
	size_t kid0, nkids;             /* children: model.kids[kid0 .. kid0 + nkids) */
	size_t name0, nnames;           /* files naming it: model.names[name0 ..) */
	uint64_t nrows;                 /* data rows, valid when nrows_known */
	bool nrows_known;
	uint64_t scanned;               /* check: its data rows the scan saw */
	uint8_t mark;                   /* cycle search: 0 new, 1 on the path, 2 done */
	bool shown;                     /* tree: printed */
};

struct model {
	struct file *files;             /* live inodes first (nlive), then snapshot volumes */
	size_t nfiles, files_cap, nlive;
	struct bmap_snap *snaps;
	size_t nsnaps, snaps_cap;
	struct mnode *nodes;            /* increasing id */
	size_t nnodes, nodes_cap;
	size_t *kids, *names;
	size_t *by_ino;                 /* live file indices by increasing ino */
	struct report *rep;             /* model problems go here; NULL: dropped */
	int rc;                         /* a callback's error */
};

/* Takes path (NULL: out of memory). */
static int file_push(struct model *m, const struct bmap_inode *in, uint64_t snap, char *path)
{
	if (!path || ARRAY_RESERVE(m->files, m->files_cap, m->nfiles, 64)) {
		free(path);
		return -ENOMEM;
	}
	m->files[m->nfiles++] = (struct file){
		.path = path, .ino = in->ino, .size = in->size, .node_id = in->node, .snap = snap,
		.node = NONE, .kind = in->kind,
	};
	return 0;
}

/* Every live inode under dir, depth first, with its path. */
static int walk(struct bmap *bm, struct model *m, uint64_t dir, const char *prefix, int depth)
{
	struct bmap_inodes k = { 0 };
	int rc;

	if (depth > 4096)
		return -ELOOP;
	rc = bmap_dir_list(bm, dir, 0, bmap_inodes_add, &k);
	if (!rc)
		rc = k.rc;
	for (size_t i = 0; i < k.n && !rc; i++) {
		char *path = xasprintf("%s/%s", prefix, k.v[i].name);

		rc = file_push(m, &k.v[i], 0, path);
		if (!rc && k.v[i].kind == BMAP_DIR)
			rc = walk(bm, m, k.v[i].ino, m->files[m->nfiles - 1].path, depth + 1);
	}
	free(k.v);
	return rc;
}

static int orphan_add(void *ctx, const struct bmap_inode *in)
{
	struct model *m = ctx;
	int rc = file_push(m, in, 0, xasprintf("(unlinked %" PRIu64 ")", in->ino));

	return rc ? (m->rc = rc) : 0;
}

static int cmp_ino(const void *a, const void *b, void *ctx)
{
	const struct file *f = ctx;
	uint64_t x = f[*(const size_t *)a].ino, y = f[*(const size_t *)b].ino;

	return x < y ? -1 : x > y;
}

static const struct file *live_find(const struct model *m, uint64_t ino)
{
	size_t lo = 0, hi = m->nlive;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const struct file *f = &m->files[m->by_ino[mid]];

		if (f->ino == ino)
			return f;
		if (f->ino < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static size_t node_find(const struct model *m, uint64_t id)
{
	size_t lo = 0, hi = m->nnodes;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (m->nodes[mid].n.id == id)
			return mid;
		if (m->nodes[mid].n.id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NONE;
}

static int snap_add(void *ctx, const struct bmap_snap *s)
{
	struct model *m = ctx;

	if (ARRAY_RESERVE(m->snaps, m->snaps_cap, m->nsnaps, 64))
		return m->rc = -ENOMEM;
	m->snaps[m->nsnaps++] = *s;
	return 0;
}

struct spaths {
	const struct bmap_snap *s;
	const char *prefix;             /* DIR/.snapshots/NAME */
	struct bmap_inodes l;                /* the snapshot's inodes, increasing ino */
	char **path;                    /* memo, NULL: not yet */
	struct report *rep;
};

static size_t sinode_find(const struct bmap_inodes *l, uint64_t ino)
{
	size_t lo = 0, hi = l->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (l->v[mid].ino == ino)
			return mid;
		if (l->v[mid].ino < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NONE;
}

/* The path of snapshot inode i; NULL only when out of memory. */
static const char *spath(struct spaths *sp, size_t i, size_t depth)
{
	const struct bmap_inode *in = &sp->l.v[i];
	const char *up;
	size_t p;

	if (sp->path[i])
		return sp->path[i];
	if (in->parent == sp->s->dir) {
		up = sp->prefix;
	} else if (depth > sp->l.n) {
		PROBLEM(sp->rep, "snapshot %s: its inode %" PRIu64 " is in a parent loop", sp->prefix,
			in->ino);
		up = sp->prefix;
	} else if ((p = sinode_find(&sp->l, in->parent)) == NONE || sp->l.v[p].kind != BMAP_DIR) {
		PROBLEM(sp->rep, "snapshot %s: the parent %" PRIu64 " of its inode %" PRIu64
			" (%s) is not a directory of the snapshot", sp->prefix, in->parent, in->ino,
			in->name);
		up = sp->prefix;
	} else if (!(up = spath(sp, p, depth + 1))) {
		return NULL;
	}
	sp->path[i] = xasprintf("%s/%s", up, in->name);
	return sp->path[i];
}

/* Add the volumes of snapshot s to the files, with their paths. */
static int load_snapshot(struct bmap *bm, struct model *m, const struct bmap_snap *s)
{
	struct spaths sp = { .s = s, .rep = m->rep };
	const struct file *d = NULL;
	char *prefix = NULL;
	int rc;

	if (s->dir != BMAP_ROOT_INO) {
		d = live_find(m, s->dir);
		if (!d || d->kind != BMAP_DIR)
			PROBLEM(m->rep, "snapshot %s (id %" PRIu64 ") belongs to directory inode %" PRIu64
				", which %s", s->name, s->id, s->dir,
				d ? "is not a directory" : "does not exist");
	}
	if (d && d->kind == BMAP_DIR)
		prefix = xasprintf("%s/.snapshots/%s", d->path, s->name);
	else if (s->dir == BMAP_ROOT_INO)
		prefix = xasprintf("/.snapshots/%s", s->name);
	else
		prefix = xasprintf("(directory %" PRIu64 ")/.snapshots/%s", s->dir, s->name);
	if (!prefix)
		return -ENOMEM;
	sp.prefix = prefix;
	rc = bmap_sinode_all(bm, s->id, bmap_inodes_add, &sp.l);
	if (!rc)
		rc = sp.l.rc;
	if (!rc && sp.l.n && !(sp.path = calloc(sp.l.n, sizeof(*sp.path))))
		rc = -ENOMEM;
	for (size_t i = 0; i < sp.l.n && !rc; i++) {
		if (sp.l.v[i].kind != BMAP_VOL)
			continue;
		if (!spath(&sp, i, 0))
			rc = -ENOMEM;
		else
			rc = file_push(m, &sp.l.v[i], s->id, strdup(sp.path[i]));
	}
	for (size_t i = 0; sp.path && i < sp.l.n; i++)
		free(sp.path[i]);
	free(sp.path);
	free(sp.l.v);
	free(prefix);
	return rc;
}

static int node_add(void *ctx, const struct bmap_node *n)
{
	struct model *m = ctx;

	if (ARRAY_RESERVE(m->nodes, m->nodes_cap, m->nnodes, 64))
		return m->rc = -ENOMEM;
	m->nodes[m->nnodes++] = (struct mnode){ .n = *n, .parent = NONE };
	return 0;
}

/* Children and names of every node, as ranges of one array each. */
static int link_nodes(struct model *m)
{
	size_t *fill;

	m->kids = malloc((m->nnodes + 1) * sizeof(*m->kids));
	m->names = malloc((m->nfiles + 1) * sizeof(*m->names));
	fill = calloc(m->nnodes + 1, sizeof(*fill));
	if (!m->kids || !m->names || !fill) {
		free(fill);
		return -ENOMEM;
	}
	for (size_t i = 0; i < m->nnodes; i++) {
		struct mnode *x = &m->nodes[i];

		x->parent = x->n.parent ? node_find(m, x->n.parent) : NONE;
		if (x->parent != NONE)
			m->nodes[x->parent].nkids++;
	}
	for (size_t i = 0; i < m->nfiles; i++) {
		struct file *f = &m->files[i];

		if (f->kind != BMAP_VOL)
			continue;
		f->node = f->node_id ? node_find(m, f->node_id) : NONE;
		if (f->node != NONE)
			m->nodes[f->node].nnames++;
		else
			PROBLEM(m->rep, "%s: names map node %" PRIu64 ", which does not exist", f->path,
				f->node_id);
	}
	for (size_t i = 0, k = 0, n = 0; i < m->nnodes; i++) {
		m->nodes[i].kid0 = k;
		m->nodes[i].name0 = n;
		k += m->nodes[i].nkids;
		n += m->nodes[i].nnames;
	}
	for (size_t i = 0; i < m->nnodes; i++) {
		size_t p = m->nodes[i].parent;

		if (p != NONE)
			m->kids[m->nodes[p].kid0 + fill[p]++] = i;
	}
	memset(fill, 0, (m->nnodes + 1) * sizeof(*fill));
	for (size_t i = 0; i < m->nfiles; i++) {
		size_t x = m->files[i].node;

		if (m->files[i].kind == BMAP_VOL && x != NONE)
			m->names[m->nodes[x].name0 + fill[x]++] = i;
	}
	free(fill);
	return 0;
}

static void model_free(struct model *m)
{
	for (size_t i = 0; i < m->nfiles; i++)
		free(m->files[i].path);
	free(m->files);
	free(m->snaps);
	free(m->nodes);
	free(m->kids);
	free(m->names);
	free(m->by_ino);
	memset(m, 0, sizeof(*m));
}

static int model_load(struct store *st, struct model *m, struct report *rep)
{
	int rc;

	memset(m, 0, sizeof(*m));
	m->rep = rep;
	rc = walk(st->bm, m, BMAP_ROOT_INO, "", 0);
	if (!rc)
		rc = bmap_orphan_list(st->bm, orphan_add, m);
	if (!rc)
		rc = m->rc;
	if (rc)
		return rc;
	m->nlive = m->nfiles;
	m->by_ino = malloc((m->nlive + 1) * sizeof(*m->by_ino));
	if (!m->by_ino)
		return -ENOMEM;
	for (size_t i = 0; i < m->nlive; i++)
		m->by_ino[i] = i;
	qsort_r(m->by_ino, m->nlive, sizeof(*m->by_ino), cmp_ino, m->files);

	rc = bmap_snap_list(st->bm, 0, 0, snap_add, m);
	if (!rc)
		rc = m->rc;
	for (size_t i = 0; i < m->nsnaps && !rc; i++)
		rc = load_snapshot(st->bm, m, &m->snaps[i]);
	if (!rc)
		rc = bmap_node_list(st->bm, node_add, m);
	if (!rc)
		rc = m->rc;
	if (!rc)
		rc = link_nodes(m);
	return rc;
}

static int node_rows(struct store *st, struct mnode *x, uint64_t *nrows)
{
	int rc = 0;

	if (!x->nrows_known) {
		rc = bmap_node_blocks(st->bm, x->n.id, &x->nrows);
		x->nrows_known = !rc;
	}
	*nrows = x->nrows;
	return rc;
}

/* How a node is named, for messages: its first file, or what it is. */
static const char *node_label(const struct model *m, size_t x, char *buf, size_t len)
{
	if (x == NONE)
		return "(no map node)";
	if (m->nodes[x].nnames)
		return m->files[m->names[m->nodes[x].name0]].path;
	snprintf(buf, len, "(unnamed map node %" PRIu64 ")", m->nodes[x].n.id);
	return buf;
}

/* ---- list -------------------------------------------------------------------- */

struct excl {
	uint64_t *lb;                   /* the node's data rows, increasing lblock */
	uint8_t *seen;                  /* seen[i]: some child sees lb[i] */
	size_t n, cap, j;
	uint64_t inherit;               /* of the child being merged */
};

static int excl_own(void *ctx, const struct bmap_ext *x)
{
	struct excl *e = ctx;

	if (!x->chunk)
		return 0;               /* a tombstone frees nothing */
	for (uint32_t i = 0; i < x->nblocks; i++) {
		if (ARRAY_RESERVE(e->lb, e->cap, e->n, 64))
			return -ENOMEM;
		e->lb[e->n++] = x->lblock + i;
	}
	return 0;
}

/* An extent of the child (below its inherit limit): the node's blocks
 * before it are seen by the child, those it covers are overridden. */
static int excl_child(void *ctx, const struct bmap_ext *x)
{
	struct excl *e = ctx;

	while (e->j < e->n && e->lb[e->j] < x->lblock)
		e->seen[e->j++] = 1;
	while (e->j < e->n && e->lb[e->j] < x->lblock + x->nblocks)
		e->j++;
	return 0;
}

/* Bytes freed if the one file naming node x went away (see the top). */
static int node_exclusive(struct store *st, struct model *m, size_t x, uint64_t *bytes)
{
	struct mnode *nd = &m->nodes[x];
	struct excl e = { 0 };
	uint64_t nrows, nfree = 0;
	int rc;

	*bytes = 0;
	if (nd->nnames > 1)
		return 0;
	if (!nd->nkids) {
		rc = node_rows(st, nd, &nrows);
		*bytes = nrows * st->bs;
		return rc;
	}
	rc = bmap_ext_range(st->bm, nd->n.id, 0, BMAP_LBLOCK_LIMIT, excl_own, &e);
	if (!rc && e.n && !(e.seen = calloc(e.n, 1)))
		rc = -ENOMEM;
	for (size_t k = 0; k < nd->nkids && e.n && !rc; k++) {
		const struct mnode *c = &m->nodes[m->kids[nd->kid0 + k]];

		e.j = 0;
		e.inherit = c->n.inherit;
		rc = bmap_ext_range(st->bm, c->n.id, 0, c->n.inherit, excl_child, &e);
		while (!rc && e.j < e.n && e.lb[e.j] < e.inherit)
			e.seen[e.j++] = 1;
	}
	for (size_t i = 0; i < e.n && !rc; i++)
		nfree += !e.seen[i];
	*bytes = nfree * st->bs;
	free(e.lb);
	free(e.seen);
	return rc;
}

/* The snapshot file this one was cloned from (see the top), or NULL. */
static const struct file *origin_of(const struct model *m, const struct file *f)
{
	size_t x = f->node == NONE ? NONE : m->nodes[f->node].parent;

	for (size_t steps = 0; x != NONE && steps < m->nnodes; steps++) {
		const struct mnode *a = &m->nodes[x];

		for (size_t k = 0; k < a->nnames; k++) {
			const struct file *g = &m->files[m->names[a->name0 + k]];

			if (g->snap && g->ino != f->ino)
				return g;
		}
		x = a->parent;
	}
	return NULL;
}

static bool under(const char *path, const char *rel)
{
	size_t len = strlen(rel);

	return !len || (!strncmp(path, rel, len) && (path[len] == '\0' || path[len] == '/'));
}

static int cmp_path(const void *a, const void *b, void *ctx)
{
	const struct file *f = ctx;

	return strcmp(f[*(const size_t *)a].path, f[*(const size_t *)b].path);
}

static int cmd_list(struct store *st)
{
	struct model m = { 0 };
	size_t *order = NULL, n = 0;
	bool first = true;
	int rc;

	rc = model_load(st, &m, NULL);
	if (!rc && !(order = malloc((m.nfiles + 1) * sizeof(*order))))
		rc = -ENOMEM;
	if (rc)
		goto out;
	for (size_t i = 0; i < m.nfiles; i++)
		if (m.files[i].kind == BMAP_VOL && under(m.files[i].path, st->rel))
			order[n++] = i;
	qsort_r(order, n, sizeof(*order), cmp_path, m.files);

	if (json)
		printf("[");
	else
		printf("%-40s %-8s %10s %10s %10s %s\n", "PATH", "KIND", "SIZE", "ALLOCATED",
		       "EXCLUSIVE", "ORIGIN");
	for (size_t i = 0; i < n && !rc; i++) {
		struct file *f = &m.files[order[i]];
		const struct file *o = origin_of(&m, f);
		const char *kind = f->snap ? "snapshot" : "volume";
		uint64_t nrows = 0, excl = 0, alloc;
		char s1[16], s2[16], s3[16];

		if (f->node != NONE) {
			rc = node_rows(st, &m.nodes[f->node], &nrows);
			if (!rc)
				rc = node_exclusive(st, &m, f->node, &excl);
			if (rc)
				break;
		}
		alloc = nrows * st->bs;
		if (json) {
			printf("%s\n{\"path\":", first ? "" : ",");
			json_str(stdout, f->path);
			printf(",\"kind\":\"%s\",\"size\":%" PRIu64 ",\"allocated\":%" PRIu64
			       ",\"exclusive\":%" PRIu64 ",\"origin\":", kind, f->size, alloc, excl);
			if (o)
				json_str(stdout, o->path);
			else
				printf("null");
			printf(",\"node\":%" PRIu64 "}", f->node_id);
		} else {
			human(f->size, s1, sizeof(s1));
			human(alloc, s2, sizeof(s2));
			human(excl, s3, sizeof(s3));
			printf("%-40s %-8s %10s %10s %10s %s\n", f->path, kind, s1, s2, s3,
			       o ? o->path : "-");
		}
		first = false;
	}
	if (json && !rc)
		printf("%s]\n", first ? "" : "\n");
out:
	if (rc)
		fprintf(stderr, "vsnapctl: list: %s\n", strerror(-rc));
	free(order);
	model_free(&m);
	return rc ? 2 : 0;
}

/* ---- tree -------------------------------------------------------------------- */

static const char *node_kind(const struct model *m, const struct mnode *x)
{
	if (!x->nnames)
		return "internal";
	return m->files[m->names[x->name0]].snap ? "snapshot" : "volume";
}

/* prefix: the tree lines of the levels above ("|   " or "    " each). */
static int tree_print(struct store *st, struct model *m, size_t x, char **prefix, size_t plen,
		      bool last, bool root, const char *note)
{
	struct mnode *nd = &m->nodes[x];
	uint64_t nrows;
	char sz[16];
	int rc;

	nd->shown = true;
	rc = node_rows(st, nd, &nrows);
	if (rc)
		return rc;
	if (json) {
		printf("{\"node\":%" PRIu64 ",\"kind\":\"%s\",\"names\":[", nd->n.id, node_kind(m, nd));
		for (size_t k = 0; k < nd->nnames; k++) {
			printf("%s", k ? "," : "");
			json_str(stdout, m->files[m->names[nd->name0 + k]].path);
		}
		printf("],\"allocated\":%" PRIu64 ",\"inherit\":%" PRIu64, nrows * st->bs,
		       nd->n.inherit);
		if (note) {
			printf(",\"note\":");
			json_str(stdout, note);
		}
		printf(",\"children\":[");
	} else {
		printf("%.*s%s", (int)plen, *prefix, root ? "" : last ? "`-- " : "|-- ");
		if (!nd->nnames)
			printf("(internal)");
		for (size_t k = 0; k < nd->nnames; k++)
			printf("%s%s", k ? ", " : "", m->files[m->names[nd->name0 + k]].path);
		human(nrows * st->bs, sz, sizeof(sz));
		printf("  [%s%snode %" PRIu64 ", %s allocated]%s%s\n", nd->nnames ? node_kind(m, nd) : "",
		       nd->nnames ? ", " : "", nd->n.id, sz, note ? " " : "", note ? note : "");
	}
	if (!root) {
		char *p = realloc(*prefix, plen + 5);

		if (!p)
			return -ENOMEM;
		*prefix = p;
		memcpy(p + plen, last ? "    " : "|   ", 5);
		plen += 4;
	}
	for (size_t k = 0, shown = 0; k < nd->nkids && !rc; k++) {
		size_t c = m->kids[nd->kid0 + k];

		if (m->nodes[c].shown)
			continue;       /* a parent loop */
		if (json && shown++)
			printf(",");
		rc = tree_print(st, m, c, prefix, plen, k + 1 == nd->nkids, false, NULL);
	}
	if (json)
		printf("]}");
	return rc;
}

static int cmd_tree(struct store *st)
{
	struct model m = { 0 };
	char *prefix = strdup("");
	size_t nroots = 0;
	int rc;

	rc = prefix ? model_load(st, &m, NULL) : -ENOMEM;
	if (json && !rc)
		printf("[");
	/* roots: no parent, or a parent that does not exist; then whatever a
	 * parent loop kept out of reach */
	for (int pass = 0; pass < 2 && !rc; pass++) {
		for (size_t i = 0; i < m.nnodes && !rc; i++) {
			const struct mnode *x = &m.nodes[i];
			const char *note = NULL;
			char buf[64];

			if (x->shown || (pass == 0 && x->n.parent && x->parent != NONE))
				continue;
			if (x->n.parent && x->parent == NONE) {
				snprintf(buf, sizeof(buf), "(parent node %" PRIu64 " missing)",
					 x->n.parent);
				note = buf;
			} else if (pass == 1) {
				note = "(in a parent loop)";
			}
			if (json)
				printf("%s\n", nroots ? "," : "");
			nroots++;
			rc = tree_print(st, &m, i, &prefix, 0, true, true, note);
		}
	}
	if (json && !rc)
		printf("%s]\n", nroots ? "\n" : "");
	if (rc)
		fprintf(stderr, "vsnapctl: tree: %s\n", strerror(-rc));
	free(prefix);
	model_free(&m);
	return rc ? 2 : 0;
}

/* ---- all rows, grouped by chunk (check, scrub) ----------------------------------- */

struct rowref {
	uint64_t chunk, node, lblock;
	uint32_t slot;
};

struct rowset {
	struct rowref *v;               /* rows with lo <= chunk < hi */
	size_t n, cap, max;
	uint64_t lo, hi;
	uint64_t seen;                  /* rows the scan went over */
	struct progress *pg;            /* NULL: none */
	/* called for every row of the scan, before the chunk filter */
	void (*each)(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc);
	void *each_ctx;
};

static int cmp_row(const void *a, const void *b)
{
	const struct rowref *x = a, *y = b;

	if (x->chunk != y->chunk)
		return x->chunk < y->chunk ? -1 : 1;
	if (x->slot != y->slot)
		return x->slot < y->slot ? -1 : 1;
	if (x->node != y->node)
		return x->node < y->node ? -1 : 1;
	return x->lblock < y->lblock ? -1 : x->lblock > y->lblock;
}

/* Full: keep the lower half of the chunk range.  A single chunk holds at
 * most CHUNK_NSLOTS rows unless the index is damaged; if one chunk alone
 * fills the array, the array grows instead. */
static void rowset_shrink(struct rowset *rs)
{
	size_t i, mid = rs->n / 2;
	uint64_t c;

	qsort(rs->v, rs->n, sizeof(*rs->v), cmp_row);
	c = rs->v[mid].chunk;
	for (i = mid; i > 0 && rs->v[i - 1].chunk == c; i--)
		;
	if (i == 0) {
		for (i = mid; i < rs->n && rs->v[i].chunk == c; i++)
			;
		if (i == rs->n) {
			rs->max *= 2;
			return;
		}
		c = rs->v[i].chunk;
	}
	rs->hi = c;
	rs->n = i;
}

static int rowset_add(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc)
{
	struct rowset *rs = ctx;

	rs->seen++;
	if (rs->pg) {
		rs->pg->done++;
		progress_show(rs->pg);
	}
	if (rs->each)
		rs->each(rs->each_ctx, node, lblock, loc);
	if (loc->chunk_id < rs->lo || loc->chunk_id >= rs->hi)
		return 0;
	if (rs->n == rs->max) {
		rowset_shrink(rs);
		if (loc->chunk_id >= rs->hi)
			return 0;
	}
	if (rs->n == rs->cap) {
		size_t cap = rs->cap ? rs->cap * 2 : 4096;
		struct rowref *v;

		if (cap > rs->max)
			cap = rs->max;
		v = realloc(rs->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		rs->v = v;
		rs->cap = cap;
	}
	rs->v[rs->n++] = (struct rowref){ loc->chunk_id, node, lblock, loc->slot };
	return 0;
}

struct blocks_of {
	int (*fn)(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc);
	void *ctx;
};

static int ext_blocks(void *ctx, uint64_t node, const struct bmap_ext *x)
{
	const struct blocks_of *bo = ctx;
	int rc = 0;

	for (uint32_t i = 0; i < x->nblocks && !rc; i++) {
		struct chunk_loc loc = { .chunk_id = x->chunk, .slot = x->slot + i,
					 .lblock = x->lblock + i };

		rc = bo->fn(bo->ctx, node, x->lblock + i, &loc);
	}
	return rc;
}

/* Every data block of every node, one call each, from one scan of the
 * extents (check and scrub work block by block). */
static int blocks_all(struct bmap *bm,
		      int (*fn)(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc),
		      void *ctx)
{
	struct blocks_of bo = { fn, ctx };

	return bmap_exts_all(bm, ext_blocks, &bo);
}

static size_t rows_per_pass(void)
{
	const char *e = getenv("VSNAPCTL_ROWS_PER_PASS");
	unsigned long long v = e ? strtoull(e, NULL, 10) : 0;

	return v >= 16 ? (size_t)v : ROWS_PER_PASS;
}

/* One scan: the rows with chunk >= lo, as many chunks as fit, sorted by
 * (chunk, slot).  rs->hi tells where the next pass starts (UINT64_MAX:
 * nothing left). */
static int rowset_scan(struct bmap *bm, struct rowset *rs, uint64_t lo)
{
	int rc;

	rs->lo = lo;
	rs->hi = UINT64_MAX;
	rs->n = 0;
	rs->seen = 0;
	rc = blocks_all(bm, rowset_add, rs);
	if (!rc && rs->n)               /* qsort(NULL, 0) is undefined */
		qsort(rs->v, rs->n, sizeof(*rs->v), cmp_row);
	return rc;
}

/* ---- check ------------------------------------------------------------------- */

struct chunkfile {
	uint64_t id;
	uint32_t nslots;
};

struct chunkfiles {
	struct chunkfile *v;
	size_t n, cap;
};

static int chunkfile_add(void *ctx, uint64_t id, uint32_t nslots)
{
	struct chunkfiles *cf = ctx;

	if (ARRAY_RESERVE(cf->v, cf->cap, cf->n, 64))
		return -ENOMEM;
	cf->v[cf->n++] = (struct chunkfile){ id, nslots };
	return 0;
}

static const struct chunkfile *chunkfile_find(const struct chunkfiles *cf, uint64_t id)
{
	size_t lo = 0, hi = cf->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (cf->v[mid].id == id)
			return &cf->v[mid];
		if (cf->v[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Rows per node during the scan; those whose node does not exist, listed. */
struct lost {
	struct model *m;
	size_t last;                    /* node index of the last row, for runs */
	uint64_t last_id;
	struct {
		uint64_t node, rows;
	} *v;
	size_t n, cap;
	bool nomem;
};

static void lost_row(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc)
{
	struct lost *l = ctx;

	if (node != l->last_id || l->last == NONE) {
		l->last_id = node;
		l->last = node_find(l->m, node);
	}
	if (l->last != NONE) {
		l->m->nodes[l->last].scanned++;
		return;
	}
	if (l->n && l->v[l->n - 1].node == node) {
		l->v[l->n - 1].rows++;
		return;
	}
	for (size_t i = 0; i < l->n; i++) {
		if (l->v[i].node == node) {
			l->v[i].rows++;
			return;
		}
	}
	if (ARRAY_RESERVE(l->v, l->cap, l->n, 64)) {
		l->nomem = true;
		return;
	}
	l->v[l->n].node = node;
	l->v[l->n++].rows = 1;
}

/* The node forest: parents exist, no loops, names make sense. */
static void check_nodes(struct model *m, struct report *r)
{
	char buf[64];

	for (size_t i = 0; i < m->nnodes; i++) {
		struct mnode *x = &m->nodes[i];

		if (x->n.parent && x->parent == NONE)
			PROBLEM(r, "map node %" PRIu64 "%s%s%s: its parent %" PRIu64 " does not exist",
				x->n.id, x->nnames ? " (" : "", x->nnames ? node_label(m, i, buf, sizeof(buf)) : "",
				x->nnames ? ")" : "", x->n.parent);
	}
	/* loops: follow parents from each node not yet done; a node met again
	 * on the current path closes a loop, reported once */
	for (size_t i = 0; i < m->nnodes; i++) {
		size_t x = i;

		while (x != NONE && m->nodes[x].mark == 0) {
			m->nodes[x].mark = 1;
			x = m->nodes[x].parent;
		}
		if (x != NONE && m->nodes[x].mark == 1) {
			char *ids = NULL, *t;
			size_t y = x, len = 0;

			do {
				t = xasprintf("%s%s%" PRIu64, ids ? ids : "", len ? " -> " : "",
					      m->nodes[y].n.id);
				free(ids);
				ids = t;
				y = m->nodes[y].parent;
			} while (ids && y != x && ++len < 20);
			PROBLEM(r, "map nodes form a parent loop: %s%s", ids ? ids : "?",
				y == x ? "" : " ...");
			free(ids);
		}
		for (x = i; x != NONE && m->nodes[x].mark == 1; x = m->nodes[x].parent)
			m->nodes[x].mark = 2;
	}
	for (size_t i = 0; i < m->nnodes; i++) {
		struct mnode *x = &m->nodes[i];
		size_t nlive = 0;

		for (size_t k = 0; k < x->nnames; k++)
			nlive += !m->files[m->names[x->name0 + k]].snap;
		if (nlive && (x->nnames > 1 || x->nkids))
			PROBLEM(r, "map node %" PRIu64 " is written by volume %s but is also %s",
				x->n.id, node_label(m, i, buf, sizeof(buf)),
				x->nnames > 1 ? "named by another file" : "the parent of other nodes");
		if (!x->nnames && x->nkids < 2)
			WARNING(r, "map node %" PRIu64 " is named by no file and has %s child: the "
				"daemon releases it (in the background, or at the next mount)",
				x->n.id, x->nkids ? "one" : "no");
	}
}

/*
 * Each node's row count in the index (what st_blocks and list show) against
 * the rows the scan saw.  On a mounted store the two are read at different
 * moments, so a volume being written may differ here; the second run of a
 * mounted check keeps only what both runs found (cmd_check).
 */
static int check_counts(struct store *st, struct model *m, struct report *r)
{
	char buf[64];

	for (size_t i = 0; i < m->nnodes; i++) {
		struct mnode *x = &m->nodes[i];
		uint64_t n;
		int rc;

		x->nrows_known = false;         /* read it now, next to the scan */
		rc = node_rows(st, x, &n);
		if (rc)
			return rc;
		if (n != x->scanned)
			PROBLEM(r, "map node %" PRIu64 " (%s): the index counts %" PRIu64 " block(s), "
				"its rows are %" PRIu64 ": its st_blocks is off, its data are not", x->n.id,
				node_label(m, i, buf, sizeof(buf)), n, x->scanned);
	}
	return 0;
}

/*
 * A chunk file's header (magic, version, block size, its own id, checksum)
 * is checked when the chunk store first opens it for reading: read one
 * block it holds.  A checksum mismatch of that block's data is scrub's to
 * report; anything else means the file as a whole cannot be trusted.
 */
static void check_header(struct store *st, const struct rowref *row, struct report *r)
{
	struct chunk_loc loc = { .chunk_id = row->chunk, .slot = row->slot, .lblock = row->lblock };
	uint8_t *buf = malloc(st->bs);
	int rc;

	if (!buf)
		return;
	rc = chunk_read(st->cs, &loc, 1, buf, NULL);
	if (rc && rc != -EBADMSG)
		PROBLEM(r, "chunks/%016" PRIx64 ".chunk: unreadable: %s", row->chunk,
			rc == -EIO ? "damaged header (magic, version, block size, id or checksum) "
				     "or a read error" : strerror(-rc));
	free(buf);
}

/*
 * The rows v[0 .. n) of one chunk (sorted by slot, all inside the file)
 * against its slot entries (slot table, or sidecar of a version-1 chunk),
 * read in one go: each must say DATA or RELOC and the row's lblock.  The
 * data itself is scrub's to verify.  A version-1 chunk without a sidecar
 * has nothing to compare; a chunk that cannot be read is check_header's.
 */
static int check_entries(struct model *m, const struct rowref *v, size_t n, struct store *st,
			 struct report *r)
{
	uint32_t first = v[0].slot, span = v[n - 1].slot - first + 1;
	struct chunk_entry *e = malloc(span * sizeof(*e));
	uint64_t nbad = 0;
	size_t bad_at = 0;
	char lbl[64], why[96];
	int rc;

	if (!e)
		return -ENOMEM;
	rc = chunk_entries_read(st->cs, v[0].chunk, first, span, e);
	if (rc) {
		free(e);
		return rc == -ENOMEM ? rc : 0;
	}
	for (size_t i = 0; i < n; i++) {
		const struct chunk_entry *x = &e[v[i].slot - first];

		if ((x->kind == CHUNK_KIND_DATA || x->kind == CHUNK_KIND_RELOC) &&
		    x->lblock == v[i].lblock)
			continue;
		if (nbad++ == 0)
			bad_at = i;
	}
	if (nbad) {
		const struct rowref *b = &v[bad_at];
		const struct chunk_entry *x = &e[b->slot - first];

		if (x->kind == CHUNK_KIND_NONE)
			snprintf(why, sizeof(why), "slot never written");
		else if (x->kind != CHUNK_KIND_DATA && x->kind != CHUNK_KIND_RELOC)
			snprintf(why, sizeof(why), "slot holds no data block (kind %u)", x->kind);
		else
			snprintf(why, sizeof(why), "slot holds block %" PRIu64 ", expected %" PRIu64,
				 x->lblock, b->lblock);
		PROBLEM(r, "chunks/%016" PRIx64 ".chunk: %" PRIu64 " block(s) whose slot entry "
			"does not match the index (first: slot %u, %s offset %" PRIu64 ": %s)",
			b->chunk, nbad, b->slot, node_label(m, node_find(m, b->node), lbl, sizeof(lbl)),
			b->lblock * st->bs, why);
	}
	free(e);
	return 0;
}

/* The rows of one pass against the chunk files. */
static int check_rows(struct model *m, const struct rowset *rs, const struct chunkfiles *cf,
		       struct store *st, struct report *r)
{
	char b1[64], b2[64];
	int rc;

	for (size_t a = 0, z; a < rs->n; a = z) {
		const struct rowref *v = rs->v;
		uint64_t chunk = v[a].chunk, past = 0;
		const struct chunkfile *f = chunkfile_find(cf, chunk);
		size_t first_past = NONE;

		for (z = a; z < rs->n && v[z].chunk == chunk; z++)
			;
		if (!f) {
			PROBLEM(r, "chunks/%016" PRIx64 ".chunk: file missing; %zu block(s) point "
				"into it (first: %s offset %" PRIu64 ")", chunk, z - a,
				node_label(m, node_find(m, v[a].node), b1, sizeof(b1)),
				v[a].lblock * st->bs);
			continue;
		}
		for (size_t i = a; i < z; i++) {
			if (v[i].slot >= f->nslots && past++ == 0)
				first_past = i;
			if (i > a && v[i].slot == v[i - 1].slot)
				PROBLEM(r, "chunks/%016" PRIx64 ".chunk slot %u has two owners: %s "
					"offset %" PRIu64 " and %s offset %" PRIu64, chunk, v[i].slot,
					node_label(m, node_find(m, v[i - 1].node), b1, sizeof(b1)),
					v[i - 1].lblock * st->bs,
					node_label(m, node_find(m, v[i].node), b2, sizeof(b2)),
					v[i].lblock * st->bs);
		}
		if (past)
			PROBLEM(r, "chunks/%016" PRIx64 ".chunk: %" PRIu64 " block(s) point past its "
				"end (%u slots; first: slot %u, %s offset %" PRIu64 ")", chunk, past,
				f->nslots, v[first_past].slot,
				node_label(m, node_find(m, v[first_past].node), b1, sizeof(b1)),
				v[first_past].lblock * st->bs);
		if (a < z && v[a].slot < f->nslots) {
			size_t inside = a;

			check_header(st, &v[a], r);
			while (inside < z && v[inside].slot < f->nslots)
				inside++;
			rc = check_entries(m, &v[a], inside - a, st, r);
			if (rc)
				return rc;
		}
	}
	return 0;
}

static int check_run(struct store *st, struct report *r)
{
	struct model m = { 0 };
	struct rowset rs = { .max = rows_per_pass() };
	struct chunkfiles cf = { 0 };
	struct lost lost = { .last = NONE };
	struct progress pg;
	uint64_t ninodes = 0, total = 0, lo = 0;
	int rc, pass = 0;

	memset(r, 0, sizeof(*r));
	rc = model_load(st, &m, r);
	if (rc)
		goto out;
	r->ninodes = m.nlive;
	check_nodes(&m, r);
	rc = bmap_inode_count(st->bm, &ninodes);
	if (rc)
		goto out;
	if (ninodes != m.nlive + 1)
		PROBLEM(r, "the index holds %" PRIu64 " inode(s), %zu reachable from the root or "
			"unlinked while open", ninodes, m.nlive + 1);

	/* the total for the progress bar costs a count per node: only on a TTY */
	for (size_t i = 0; progress && i < m.nnodes && !rc; i++) {
		uint64_t n;

		rc = node_rows(st, &m.nodes[i], &n);
		total += n;
	}
	lost.m = &m;
	rs.each = lost_row;
	rs.each_ctx = &lost;
	do {
		char what[32];

		snprintf(what, sizeof(what), pass ? "check (pass %d)" : "check", pass + 1);
		progress_start(&pg, what, total);
		rs.pg = &pg;
		rc = rowset_scan(st->bm, &rs, lo);
		progress_end(&pg);
		if (!rc && lost.nomem)
			rc = -ENOMEM;
		if (rc)
			break;
		if (pass == 0) {
			r->blocks = rs.seen;
			rs.each = NULL;
			for (size_t i = 0; i < lost.n; i++)
				PROBLEM(r, "%" PRIu64 " block(s) belong to map node %" PRIu64
					", which does not exist", lost.v[i].rows, lost.v[i].node);
			rc = check_counts(st, &m, r);
			if (rc)
				break;
		}
		/* listed after the scan: every row it saw was committed, so its
		 * data was synced into a file that is there now, unless damaged */
		cf.n = 0;
		rc = chunk_foreach(st->cs, chunkfile_add, &cf);
		if (rc)
			break;
		rc = check_rows(&m, &rs, &cf, st, r);
		if (rc)
			break;
		lo = rs.hi;
		pass++;
	} while (lo != UINT64_MAX);
	r->nchunks = cf.n;
	if (!rc)
		rc = r->rc;
out:
	free(rs.v);
	free(cf.v);
	free(lost.v);
	model_free(&m);
	return rc;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Keep in r2 only the problems r1 found too (a mounted store's transients). */
static void report_intersect(struct report *r1, struct report *r2)
{
	struct strv *p1 = &r1->problems, *p2 = &r2->problems;
	size_t k = 0;

	if (p1->n)
		qsort(p1->v, p1->n, sizeof(*p1->v), cmp_str);
	for (size_t i = 0; i < p2->n; i++) {
		if (p1->n && bsearch(&p2->v[i], p1->v, p1->n, sizeof(*p1->v), cmp_str))
			p2->v[k++] = p2->v[i];
		else
			free(p2->v[i]);
	}
	p2->total = k + (p2->total - p2->n);    /* those not kept: unknown, counted */
	p2->n = k;
}

static int cmd_check(struct store *st)
{
	struct report r1 = { 0 }, r2 = { 0 }, *r = &r1;
	int rc, status;

	rc = check_run(st, &r1);
	if (!rc && r1.problems.total && st->in_use) {
		/* a daemon holds the store: what changed between two of our
		 * reads may look broken once; report what is broken twice */
		rc = check_run(st, &r2);
		if (!rc) {
			report_intersect(&r1, &r2);
			r = &r2;
		}
	}
	if (rc) {
		fprintf(stderr, "vsnapctl: check: %s\n", strerror(-rc));
		goto out;
	}
	if (json) {
		printf("{\"store\":");
		json_str(stdout, st->dir);
		/* in use: checked twice, only problems both runs found reported */
		printf(",\"in_use\":%s", st->in_use ? "true" : "false");
		printf(",\"clean\":%s,\"problems\":[", r->problems.total ? "false" : "true");
		for (size_t i = 0; i < r->problems.n; i++) {
			printf("%s", i ? "," : "");
			json_str(stdout, r->problems.v[i]);
		}
		printf("],\"problem_count\":%" PRIu64 ",\"warnings\":[", r->problems.total);
		for (size_t i = 0; i < r->warnings.n; i++) {
			printf("%s", i ? "," : "");
			json_str(stdout, r->warnings.v[i]);
		}
		printf("],\"blocks\":%" PRIu64 ",\"chunks\":%zu,\"inodes\":%zu}\n", r->blocks,
		       r->nchunks, r->ninodes);
	} else {
		for (size_t i = 0; i < r->warnings.n; i++)
			printf("warning: %s\n", r->warnings.v[i]);
		if (r->warnings.total > r->warnings.n)
			printf("warning: ... and %" PRIu64 " more\n",
			       r->warnings.total - r->warnings.n);
		for (size_t i = 0; i < r->problems.n; i++)
			printf("problem: %s\n", r->problems.v[i]);
		if (r->problems.total > r->problems.n)
			printf("problem: ... and %" PRIu64 " more\n",
			       r->problems.total - r->problems.n);
		printf("%s: %" PRIu64 " block(s) in %zu chunk file(s), %zu inode(s): %s\n", st->dir,
		       r->blocks, r->nchunks, r->ninodes,
		       r->problems.total ? "PROBLEMS FOUND" : "clean");
	}
out:
	status = rc ? 2 : r->problems.total ? 1 : 0;
	report_free(&r1);
	report_free(&r2);
	return status;
}

/* ---- scrub ------------------------------------------------------------------- */

struct scrub {
	struct store *st;
	struct model *m;
	uint8_t *buf;
	struct chunk_loc *locs;
	uint32_t run_max;               /* blocks per chunk_read */
	uint64_t blocks, bad;
	struct progress pg;
};

static int found_row(void *ctx, const struct bmap_ext *x)
{
	struct chunk_loc *loc = ctx;

	/* clipped to the one block asked for */
	*loc = (struct chunk_loc){ .chunk_id = x->chunk, .slot = x->slot, .lblock = x->lblock };
	return 0;
}

/* The row (node, lblock) as the index holds it now; chunk_id 0 if none. */
static int row_now(struct bmap *bm, uint64_t node, uint64_t lblock, struct chunk_loc *loc)
{
	memset(loc, 0, sizeof(*loc));
	loc->chunk_id = UINT64_MAX;     /* "no row" until found */
	return bmap_ext_range(bm, node, lblock, lblock + 1, found_row, loc);
}

/*
 * The files that see block lblock of node x: the node's own names, then
 * down the children that inherit it (below their inherit limit, no row of
 * their own there), breadth first.  Fills up to SEERS_MAX paths in
 * seers[] and returns how many files in all (up to a bound).
 */
static int seers_of(struct scrub *s, size_t x, uint64_t lblock, const char **seers,
		    size_t *nseers, size_t *total)
{
	struct model *m = s->m;
	size_t *queue, qn = 0, qi = 0, cap = m->nnodes + 1;
	int rc = 0;

	*nseers = *total = 0;
	queue = malloc(cap * sizeof(*queue));
	if (!queue)
		return -ENOMEM;
	queue[qn++] = x;
	while (qi < qn && !rc) {
		const struct mnode *nd = &m->nodes[queue[qi++]];

		for (size_t k = 0; k < nd->nnames; k++) {
			if (*nseers < SEERS_MAX)
				seers[(*nseers)++] = m->files[m->names[nd->name0 + k]].path;
			++*total;
		}
		for (size_t k = 0; k < nd->nkids && !rc && qn < cap; k++) {
			size_t c = m->kids[nd->kid0 + k];
			struct chunk_loc own;

			if (lblock >= m->nodes[c].n.inherit)
				continue;
			rc = row_now(s->st->bm, m->nodes[c].n.id, lblock, &own);
			if (!rc && own.chunk_id == UINT64_MAX)
				queue[qn++] = c;
		}
	}
	free(queue);
	return rc;
}

/* bad: chunk_read()'s account of an -EBADMSG. */
static int scrub_damaged(struct scrub *s, const struct rowref *row, int err,
			 const struct chunk_bad *bad)
{
	const char *seers[SEERS_MAX], *why;
	char whybuf[96];
	size_t nseers, total, x;
	struct chunk_loc now;
	uint64_t off = row->lblock * s->st->bs;
	char buf[64];
	int rc;

	/* rewritten (and its old chunk collected) since the scan: not damage */
	rc = row_now(s->st->bm, row->node, row->lblock, &now);
	if (rc)
		return rc;
	if (now.chunk_id != row->chunk || now.slot != row->slot)
		return 0;
	x = node_find(s->m, row->node);
	if (x == NONE) {
		seers[0] = node_label(s->m, x, buf, sizeof(buf));
		nseers = total = 1;
	} else {
		rc = seers_of(s, x, row->lblock, seers, &nseers, &total);
		if (rc)
			return rc;
		if (!nseers) {
			seers[0] = node_label(s->m, x, buf, sizeof(buf));
			nseers = total = 1;
		}
	}
	why = err == -EBADMSG ? chunk_bad_str(bad, row->lblock, whybuf, sizeof(whybuf)) :
	      err == -ENOENT ? "chunk file missing" :
	      err == -EIO ? "chunk file short, its header damaged, or a read error" : strerror(-err);
	s->bad++;
	if (json) {
		printf("%s\n{\"path\":", s->bad > 1 ? "," : "");
		json_str(stdout, seers[0]);
		printf(",\"offset\":%" PRIu64 ",\"chunk\":%" PRIu64 ",\"slot\":%u,\"node\":%" PRIu64
		       ",\"error\":\"%s\",\"seen_by\":[", off, row->chunk, row->slot, row->node, why);
		for (size_t i = 0; i < nseers; i++) {
			printf("%s", i ? "," : "");
			json_str(stdout, seers[i]);
		}
		printf("]}");
	} else if (s->bad <= REPORT_MAX) {
		if (progress && s->pg.pct >= 0)
			fprintf(stderr, "\r%*s\r", (int)strlen(s->pg.what) + 38, "");
		s->pg.pct = -1;
		printf("damaged: %s offset %" PRIu64 ": chunks/%016" PRIx64 ".chunk slot %u: %s",
		       seers[0], off, row->chunk, row->slot, why);
		for (size_t i = 1; i < nseers; i++)
			printf("%s%s", i == 1 ? " (also seen by " : ", ", seers[i]);
		if (total > nseers)
			printf("%s%zu more", nseers > 1 ? " and " : " (also seen by ", total - nseers);
		printf("%s\n", total > 1 ? ")" : "");
		fflush(stdout);
	}
	return 0;
}

/* Verify rows v[0 .. n), consecutive slots of one chunk. */
static int scrub_run(struct scrub *s, const struct rowref *v, uint32_t n)
{
	struct chunk_bad bad;
	uint32_t done = 0;
	int rc = 0, err;

	for (uint32_t i = 0; i < n; i++)
		s->locs[i] = (struct chunk_loc){ .chunk_id = v[i].chunk, .slot = v[i].slot,
						 .lblock = v[i].lblock };
	while (done < n && !rc) {
		bad = (struct chunk_bad){ 0 };
		err = chunk_read(s->st->cs, s->locs + done, n - done, s->buf, &bad);
		if (!err) {
			s->blocks += n - done;
			done = n;
		} else if (err == -EBADMSG) {
			s->blocks += bad.index + 1;
			rc = scrub_damaged(s, &v[done + bad.index], err, &bad);
			done += bad.index + 1;
		} else if (err == -ENOENT || n - done == 1) {
			/* the whole file is gone, or this one block is unreadable */
			for (; done < n && !rc; done++) {
				s->blocks++;
				rc = scrub_damaged(s, &v[done], err, &bad);
			}
		} else {
			/* a short file or a read error somewhere in the run: block
			 * by block, to name exactly the blocks affected */
			for (uint32_t i = done; i < n && !rc; i++)
				rc = scrub_run(s, &v[i], 1);
			done = n;
		}
	}
	s->pg.done = s->blocks;
	progress_show(&s->pg);
	return rc;
}

static int cmd_scrub(struct store *st)
{
	struct model m = { 0 };
	struct rowset rs = { .max = rows_per_pass() };
	struct scrub s = { .st = st, .m = &m };
	uint64_t lo = 0;
	int rc;

	s.run_max = SCRUB_RUN_BYTES / st->bs ? SCRUB_RUN_BYTES / st->bs : 1;
	s.buf = malloc((size_t)s.run_max * st->bs);
	s.locs = malloc(s.run_max * sizeof(*s.locs));
	rc = s.buf && s.locs ? 0 : -ENOMEM;
	if (!rc)
		rc = model_load(st, &m, NULL);
	if (rc)
		goto out;
	progress_start(&s.pg, "scrub", 0);
	if (json) {
		printf("{\"store\":");
		json_str(stdout, st->dir);
		printf(",\"errors\":[");
	}
	do {
		rc = rowset_scan(st->bm, &rs, lo);
		if (rc)
			break;
		if (lo == 0)
			s.pg.total = rs.seen;   /* every row passes the first scan */
		for (size_t a = 0, z; a < rs.n && !rc; a = z) {
			for (z = a + 1; z < rs.n && z - a < s.run_max && rs.v[z].chunk == rs.v[a].chunk &&
			     rs.v[z].slot == rs.v[z - 1].slot + 1; z++)
				;
			rc = scrub_run(&s, &rs.v[a], (uint32_t)(z - a));
		}
		lo = rs.hi;
	} while (!rc && lo != UINT64_MAX);
	progress_end(&s.pg);
	if (json && !rc) {
		printf("%s],\"blocks\":%" PRIu64 ",\"damaged\":%" PRIu64 "}\n", s.bad ? "\n" : "",
		       s.blocks, s.bad);
	} else if (!rc) {
		if (s.bad > REPORT_MAX)
			printf("damaged: ... and %" PRIu64 " more\n", s.bad - REPORT_MAX);
		printf("%s: %" PRIu64 " block(s) verified, %" PRIu64 " damaged\n", st->dir, s.blocks,
		       s.bad);
	}
out:
	if (rc)
		fprintf(stderr, "vsnapctl: scrub: %s\n", strerror(-rc));
	free(s.buf);
	free(s.locs);
	free(rs.v);
	model_free(&m);
	return rc ? 2 : s.bad ? 1 : 0;
}

/* ---- main -------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: vsnapctl COMMAND [--json] [ARG]\n"
		"\n"
		"  list  [PATH]               volumes and snapshot files: size, allocated, exclusive\n"
		"                             (freed if deleted) bytes, origin of clones; PATH inside\n"
		"                             a mount lists only what is below it\n"
		"  tree  STORE|MOUNTPOINT     the clone/snapshot genealogy of the map nodes\n"
		"  check STORE|MOUNTPOINT     verify the index against the chunk files\n"
		"  scrub STORE|MOUNTPOINT     read every block and verify its checksum\n"
		"\n"
		"STORE is a store directory; a MOUNTPOINT of a running vsnapfs names its store.\n"
		"The argument defaults to the current directory.  --json: machine-readable output.\n"
		"Exit status: 0 clean, 1 problems (check) or damaged blocks (scrub), 2 usage or I/O\n"
		"error.\n");
}

int main(int argc, char **argv)
{
	struct store st = { 0 };
	const char *cmd = NULL, *arg = NULL;
	bool opts = true;
	int rc;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (opts && !strcmp(a, "--")) {
			opts = false;
		} else if (opts && !strcmp(a, "--json")) {
			json = true;
		} else if (opts && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
			usage(stdout);
			return 0;
		} else if (opts && !strcmp(a, "--version")) {
			printf("vsnapctl %s\n", VSNAPFS_VERSION);
			return 0;
		} else if (opts && a[0] == '-' && a[1]) {
			fprintf(stderr, "vsnapctl: unknown option %s\n", a);
			usage(stderr);
			return 2;
		} else if (!cmd) {
			cmd = a;
		} else if (!arg) {
			arg = a;
		} else {
			fprintf(stderr, "vsnapctl: too many arguments\n");
			usage(stderr);
			return 2;
		}
	}
	if (!cmd) {
		usage(stderr);
		return 2;
	}
	if (strcmp(cmd, "list") && strcmp(cmd, "tree") && strcmp(cmd, "check") &&
	    strcmp(cmd, "scrub")) {
		fprintf(stderr, "vsnapctl: unknown command %s\n", cmd);
		usage(stderr);
		return 2;
	}
	progress = isatty(2) && !json;
	if (store_open(arg ? arg : ".", !strcmp(cmd, "check") || !strcmp(cmd, "scrub"), &st)) {
		store_close(&st);
		return 2;
	}
	if (strcmp(cmd, "list"))
		st.rel[0] = '\0';       /* only list filters by path */
	if (!strcmp(cmd, "list"))
		rc = cmd_list(&st);
	else if (!strcmp(cmd, "tree"))
		rc = cmd_tree(&st);
	else if (!strcmp(cmd, "check"))
		rc = cmd_check(&st);
	else
		rc = cmd_scrub(&st);
	store_close(&st);
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "vsnapctl: writing output: %s\n", strerror(errno));
		return 2;
	}
	return rc;
}
