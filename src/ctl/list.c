/*
 * list: volumes and snapshot files, one row each, with size, allocated and
 * exclusive bytes, origin, and for a snapshot's file its snapshot and when
 * it was taken (vsnapctl list --help; docs/vsnapctl.md, "list").
 *
 * Everything is read in one read transaction of the index, after the
 * daemon of a mounted store was asked for a checkpoint (store_open), so the
 * figures are those of one instant and not behind the mount.
 *
 * allocated.  The node's own data blocks (node.nblocks, O(1)): what was
 * written to the file since its snapshot or clone.  Blocks it shares with
 * its ancestors are not counted.
 *
 * exclusive.  What deleting the file would free: the node's own data rows
 * that no later view still shows.  A row is seen by a child where the child
 * shows its parent (bmap_node_shown: below its inherit limit, and no row of
 * its own there, data or tombstone, the rule a merge follows); whatever a
 * grandchild sees through the child, the child sees.  So: the node's data
 * extents go into an extent map (vsnapfs/emap.h, the daemon's extent
 * arithmetic), every run a child shows is cut out of it, and what is left
 * is exclusive.  O(E log E), E the extents of the node and the runs its
 * children show; a node without children (every live volume) frees its
 * own blocks, O(1).  A node named by two files frees nothing when one of
 * them goes.  Second-order effects of the release (an internal parent left
 * with one child is merged into it) are not counted.
 *
 * referenced.  Every block the file shows, its own or shared (SPEC's
 * "referenced", st_blocks of a volume): the daemon's count for its node
 * (table refblocks, docs/design.md "Referenced blocks"), O(1); none (null)
 * for a node the daemon has not counted yet (an older store, right after
 * its upgrade).
 *
 * origin.  The nearest ancestor node named by a snapshot file of another
 * volume (the inode number tells: it is never reused, and a volume's own
 * snapshots keep it).  A clone of a live volume hangs below an unnamed
 * frozen node that says nothing of its source; the walk goes on above it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/emap.h"
#include "vsnapfs/ctlmsg.h"

enum {
	COL_PATH, COL_TYPE, COL_SIZE, COL_REF, COL_ALLOC, COL_EXCL, COL_ORIGIN, COL_CREATED,
	COL_SNAPSHOT, COL_NODE, COL_INO,
};

static const struct table_col list_cols[] = {
	[COL_PATH] = { "PATH", "path", TT_TEXT, true, "the file's path in the mount", true },
	[COL_TYPE] = { "TYPE", "type", TT_TEXT, true,
		       "volume; snapshot (a snapshot's file); dir-snapshot (its files' totals)" },
	[COL_SIZE] = { "SIZE", "size_bytes", TT_BYTES, true, "its size" },
	[COL_REF] = { "REFERENCED", "referenced_bytes", TT_BYTES, true,
		      "every block it shows, own or shared (st_blocks of a volume)" },
	[COL_ALLOC] = { "ALLOCATED", "allocated_bytes", TT_BYTES, true,
			"its own layer: written since the snapshot or clone before it" },
	[COL_EXCL] = { "EXCLUSIVE", "exclusive_bytes", TT_BYTES, true,
		       "what deleting it frees: its own blocks no later view shows" },
	[COL_ORIGIN] = { "ORIGIN", "origin", TT_TEXT, true,
			 "the snapshot's file it was cloned from", true },
	[COL_CREATED] = { "CREATED", "created_unix_s", TT_TIME, true,
			  "when its snapshot was taken" },
	[COL_SNAPSHOT] = { "SNAPSHOT", "snapshot", TT_TEXT, false,
			   "its snapshot: FILE@NAME, or NAME of a directory's" },
	[COL_NODE] = { "NODE", "node_id", TT_COUNT, false, "the map node it names" },
	[COL_INO] = { "INO", "ino", TT_COUNT, false, "its inode number" },
};

#define NCOLS (sizeof(list_cols) / sizeof(list_cols[0]))

#define SHOW_VOLUMES    1
#define SHOW_SNAPSHOTS  2

struct list_opts {
	struct table_opts t;
	unsigned show;                  /* SHOW_* */
	const char *path;
};

static int excl_own(void *ctx, const struct bmap_ext *x)
{
	struct emap_ext e = { .lblock = x->lblock, .nblocks = x->nblocks, .slot = x->slot,
			      .chunk = x->chunk };

	return x->chunk ? emap_put(ctx, &e, NULL) : 0;  /* a tombstone frees nothing */
}

/* A run of blocks a child shows of its parent: not exclusive. */
static int excl_shown(void *ctx, uint64_t lblock, uint64_t nblocks)
{
	return emap_delete(ctx, lblock, lblock + nblocks, NULL);
}

/* Bytes freed if the one file naming node x went away (see the top). */
static int node_exclusive(struct store *st, struct model *m, size_t x, uint64_t *bytes)
{
	struct mnode *nd = &m->nodes[x];
	struct emap *own;
	uint64_t nrows;
	int rc;

	*bytes = 0;
	if (nd->nnames > 1)
		return 0;
	if (!nd->nkids) {
		rc = node_rows(st, nd, &nrows);
		*bytes = nrows * st->bs;
		return rc;
	}
	own = emap_new(CHUNK_NSLOTS(st->bs));
	if (!own)
		return -ENOMEM;
	rc = bmap_ext_range(st->bm, nd->n.id, 0, BMAP_LBLOCK_LIMIT, excl_own, own);
	for (size_t k = 0; k < nd->nkids && emap_count(own) && !rc; k++)
		rc = bmap_node_shown(st->bm, &m->nodes[m->kids[nd->kid0 + k]].n, 0,
				     BMAP_LBLOCK_LIMIT, excl_shown, own);
	*bytes = emap_data_blocks(own) * st->bs;
	emap_free(own);
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

/* The snapshot of id (m->snaps is in increasing id), or NULL. */
static const struct bmap_snap *snap_of(const struct model *m, uint64_t id)
{
	size_t lo = 0, hi = m->nsnaps;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (m->snaps[mid].id == id)
			return &m->snaps[mid];
		if (m->snaps[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static bool under(const char *path, const char *rel)
{
	size_t len = strlen(rel);

	return !len || (!strncmp(path, rel, len) && (path[len] == '\0' || path[len] == '/'));
}

/* A row of the listing: a file, or a directory snapshot (file NONE). */
struct lrow {
	const char *path;
	size_t file;
	const struct bmap_snap *snap;
	char *own;                      /* path, if the row made it */
};

static int cmp_path(const void *a, const void *b)
{
	return strcmp(((const struct lrow *)a)->path, ((const struct lrow *)b)->path);
}

/* What is being received: a temporary volume (the mount does not list
 * it), or anything in a directory stream's temporary directory (the
 * mount lists it, a dot name: what ls -a shows, not a file of the store's
 * yet). */
static bool hidden(const char *path)
{
	for (const char *c = strchr(path, '/'); c; c = strchr(c + 1, '/'))
		if (ctl_recv_tmp_name(c + 1))
			return true;
	return false;
}

/* A file's figures: blocks of its own layer, exclusive bytes, referenced
 * blocks (*counted false: the daemon has not counted its node yet). */
struct figures {
	uint64_t nrows, excl, refs;
	bool counted;
};

static int file_figures(struct store *st, struct model *m, const struct file *f,
			struct figures *g)
{
	int rc = 0;

	*g = (struct figures){ .counted = f->node == NONE };
	if (f->node == NONE)
		return 0;
	rc = node_rows(st, &m->nodes[f->node], &g->nrows);
	if (!rc)
		rc = node_exclusive(st, m, f->node, &g->excl);
	if (!rc) {
		rc = bmap_refs_get(st->bm, f->node_id, &g->refs);
		g->counted = rc == 0;
		if (rc == -ENOENT)
			rc = 0;         /* not counted yet: no value */
	}
	return rc;
}

static void figures_out(struct store *st, struct table *t, const struct figures *g)
{
	if (g->counted)
		table_u64(t, COL_REF, g->refs * st->bs);
	else
		table_text(t, COL_REF, NULL);
	table_u64(t, COL_ALLOC, g->nrows * st->bs);
	table_u64(t, COL_EXCL, g->excl);
}

/*
 * A directory snapshot's row: the totals of its files.  Deleting it (rmdir)
 * releases every node its files name, so EXCLUSIVE, their sum, is what it
 * frees: the dry run of that rmdir.
 */
static int dirsnap_row(struct store *st, struct model *m, struct table *t, const char *path,
		       const struct bmap_snap *s)
{
	struct figures sum = { .counted = true }, g;
	uint64_t size = 0;
	int rc = 0;

	for (size_t i = 0; i < m->nfiles && !rc; i++) {
		const struct file *f = &m->files[i];

		if (f->snap != s->id || f->kind != BMAP_VOL)
			continue;
		rc = file_figures(st, m, f, &g);
		size += f->size;
		sum.nrows += g.nrows;
		sum.excl += g.excl;
		sum.refs += g.refs;
		sum.counted &= g.counted;
	}
	if (rc)
		return rc;
	table_row(t);
	table_text(t, COL_PATH, path);
	table_text(t, COL_TYPE, "dir-snapshot");
	table_u64(t, COL_SIZE, size);
	figures_out(st, t, &sum);
	table_text(t, COL_ORIGIN, NULL);
	table_time(t, COL_CREATED, s->created_ns);
	table_text(t, COL_SNAPSHOT, s->name);
	table_text(t, COL_NODE, NULL);
	table_text(t, COL_INO, NULL);
	return 0;
}

/* The path of live directory ino ("" for the root), or NULL if it is gone. */
static const char *dir_path(const struct model *m, uint64_t ino)
{
	if (ino == BMAP_ROOT_INO)
		return "";
	for (size_t i = 0; i < m->nlive; i++)
		if (m->files[i].ino == ino && m->files[i].kind == BMAP_DIR)
			return m->files[i].path;
	return NULL;
}

/* One file's row. */
static int list_row(struct store *st, struct model *m, struct table *t, const struct file *f)
{
	const struct file *o = origin_of(m, f);
	const struct bmap_snap *s = f->snap ? snap_of(m, f->snap) : NULL;
	struct figures g;
	int rc = file_figures(st, m, f, &g);

	if (rc)
		return rc;
	table_row(t);
	table_text(t, COL_PATH, f->path);
	table_text(t, COL_TYPE, f->snap ? "snapshot" : "volume");
	table_u64(t, COL_SIZE, f->size);
	figures_out(st, t, &g);
	table_text(t, COL_ORIGIN, o ? o->path : NULL);
	if (s)
		table_time(t, COL_CREATED, s->created_ns);
	else
		table_text(t, COL_CREATED, NULL);
	table_text(t, COL_SNAPSHOT, s ? s->name : NULL);
	table_u64(t, COL_NODE, f->node_id);
	table_u64(t, COL_INO, f->ino);
	return 0;
}

static int list_run(struct store *st, const struct list_opts *o, const struct cmd *cmd)
{
	struct model m = { 0 };
	struct table *t = NULL;
	struct lrow *rows = NULL;
	size_t n = 0;
	bool txn;
	int rc;

	rc = table_new("files", list_cols, NCOLS, &o->t, cmd, &t);
	if (rc == -EINVAL)
		goto out;               /* a bad -o, said */
	txn = !rc && bmap_snapshot_begin(st->bm) == 0;
	if (!rc)
		rc = model_load(st, &m, NULL);
	if (!rc && !(rows = calloc(m.nfiles + m.nsnaps + 1, sizeof(*rows))))
		rc = -ENOMEM;
	for (size_t i = 0; i < m.nfiles && !rc; i++) {
		const struct file *f = &m.files[i];

		if (f->kind == BMAP_VOL && under(f->path, st->rel) && !hidden(f->path) &&
		    (o->show & (f->snap ? SHOW_SNAPSHOTS : SHOW_VOLUMES)))
			rows[n++] = (struct lrow){ .path = f->path, .file = i };
	}
	for (size_t i = 0; i < m.nsnaps && !rc && (o->show & SHOW_SNAPSHOTS); i++) {
		const struct bmap_snap *s = &m.snaps[i];
		const char *dir = dir_path(&m, s->dir);
		char *path;

		if (strchr(s->name, '@') || !dir)
			continue;       /* a volume's snapshot: its file's row */
		path = xasprintf("%s/.snapshots/%s", dir, s->name);
		if (!path)
			rc = -ENOMEM;
		else if (under(path, st->rel) && !hidden(path))
			rows[n++] = (struct lrow){ .path = path, .file = NONE, .snap = s, .own = path };
		else
			free(path);
	}
	if (!rc && n)
		qsort(rows, n, sizeof(*rows), cmp_path);
	for (size_t i = 0; i < n && !rc; i++)
		rc = rows[i].file == NONE ? dirsnap_row(st, &m, t, rows[i].path, rows[i].snap)
					  : list_row(st, &m, t, &m.files[rows[i].file]);
	if (txn)
		bmap_snapshot_end(st->bm);
	if (!rc)
		rc = table_print(t);
	if (rc)
		fprintf(stderr, "vsnapctl: list: %s\n", strerror(-rc));
out:
	table_free(t);
	for (size_t i = 0; i < n; i++)
		free(rows[i].own);
	free(rows);
	model_free(&m);
	return rc ? 2 : 0;
}

/* -t TYPE[,TYPE]: volume, snapshot, all (plurals too, as zfs takes them). */
static int parse_types(const char *s, unsigned *show)
{
	*show = 0;
	for (const char *p = s; ; p += strcspn(p, ",") + 1) {
		size_t len = strcspn(p, ",");

		if ((len == 6 && !strncmp(p, "volume", 6)) || (len == 7 && !strncmp(p, "volumes", 7)))
			*show |= SHOW_VOLUMES;
		else if ((len == 8 && !strncmp(p, "snapshot", 8)) ||
			 (len == 9 && !strncmp(p, "snapshots", 9)) || (len == 4 && !strncmp(p, "snap", 4)))
			*show |= SHOW_SNAPSHOTS;
		else if (len == 3 && !strncmp(p, "all", 3))
			*show |= SHOW_VOLUMES | SHOW_SNAPSHOTS;
		else
			return -EINVAL;
		if (!p[len])
			return 0;
	}
}

static int list_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "output", required_argument, NULL, 'o' },
		{ "noheadings", no_argument, NULL, 'n' },
		{ "bytes", no_argument, NULL, 'b' },
		{ "raw", no_argument, NULL, 'r' },
		{ "type", required_argument, NULL, 't' },
		{ 0 }
	};
	struct cli c = { .cmd = &list_cmd, .shortopts = "o:nbprt:", .longopts = opts,
			 .max_args = 1 };
	struct list_opts o = { .show = SHOW_VOLUMES | SHOW_SNAPSHOTS };
	struct store st = { 0 };
	int ch, rc;

	while ((ch = cli_next(&c, argc, argv)) >= 0) {
		switch (ch) {
		case 'o': o.t.columns = optarg; break;
		case 'n': o.t.noheadings = true; break;
		case 'b': case 'p': o.t.bytes = true; break;
		case 'r': o.t.raw = true; break;
		case 't':
			if (parse_types(optarg, &o.show))
				return cli_bad(&list_cmd, "-t takes volume, snapshot or all, not '%s'",
					       optarg);
			break;
		}
	}
	if (ch == CLI_STOP)
		return c.exit;
	rc = store_open(optind < argc ? argv[optind] : ".", false, &st) ? 2 :
		list_run(&st, &o, &list_cmd);
	store_close(&st);
	return rc;
}

static void list_help_more(FILE *f)
{
	table_help(list_cols, NCOLS, f);
}

const struct cmd list_cmd = {
	.name = "list",
	.synopsis = "[-t TYPE] [-o COLS] [-n] [-b] [--raw] [PATH]",
	.summary = "volumes and snapshots: size, allocated and exclusive bytes, origin, creation",
	.help = "PATH is a store directory, a mount point, or a path inside a mount: then only\n"
		"what is below it (default: the current directory).  A snapshot's files are\n"
		"rows of their own (type snapshot).  On a mounted store the daemon is first\n"
		"asked for a checkpoint, so nothing written before is missing.\n"
		"  -t, --type TYPE[,TYPE]     volume, snapshot or all (default)\n"
		"  -o, --output COLS          the columns, comma-separated (below); +COLS adds\n"
		"                             to the default\n"
		"  -n, --noheadings           no header line\n"
		"  -b, -p, --bytes            sizes in bytes, not 8.0M\n"
		"  -r, --raw                  one line a row, fields separated by one space,\n"
		"                             spaces and unprintable bytes as \\x20\n"
		"With --json: {\"files\": [{...}]}, every column (unless -o), numbers as\n"
		"numbers, a missing value null; keys and units in docs/vsnapctl.md.\n",
	.common = CLI_JSON,
	.help_more = list_help_more,
	.run = list_main,
};
