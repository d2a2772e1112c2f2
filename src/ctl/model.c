/*
 * model: the namespace of a store in memory, loaded before every command.
 *
 * The live inodes with their paths, the snapshots and their frozen inodes
 * ("sinodes") with the paths of their files (DIR/.snapshots/SNAP/below),
 * and every map node with its children and the files that name it.  That
 * is O(inodes + sinodes + nodes) memory; rows are never all loaded here.
 * What looks wrong on the way (a file naming a missing node, a snapshot of
 * a missing directory, a parent loop in a snapshot) goes to the report.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/array.h"




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

size_t node_find(const struct model *m, uint64_t id)
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

void model_free(struct model *m)
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

int model_load(struct store *st, struct model *m, struct report *rep)
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

int node_rows(struct store *st, struct mnode *x, uint64_t *nrows)
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
const char *node_label(const struct model *m, size_t x, char *buf, size_t len)
{
	if (x == NONE)
		return "(no map node)";
	if (m->nodes[x].nnames)
		return m->files[m->names[m->nodes[x].name0]].path;
	snprintf(buf, len, "(unnamed map node %" PRIu64 ")", m->nodes[x].n.id);
	return buf;
}

const struct file *file_by_path(const struct model *m, const char *path)
{
	for (size_t i = 0; i < m->nfiles; i++)
		if (!strcmp(m->files[i].path, path))
			return &m->files[i];
	return NULL;
}

const struct file *file_of_snap(const struct model *m, uint64_t snap)
{
	for (size_t i = 0; i < m->nfiles; i++)
		if (m->files[i].snap == snap && m->files[i].kind == BMAP_VOL)
			return &m->files[i];
	return NULL;
}

/* The volume or snapshot file at arg, in the model of the store dir. */
const struct file *file_at(const struct model *m, const char *dir, const char *arg,
			   const char *cmd)
{
	char sdir[PATH_MAX], rel[PATH_MAX];
	const struct file *f;

	int rc = store_resolve(arg, sdir, sizeof(sdir), rel, sizeof(rel));

	if (rc) {
		fprintf(stderr, "vsnapctl: %s: %s: %s\n", cmd, arg, rc == -EMEDIUMTYPE ?
			"not in a vsnapfs mount" : store_why(rc));
		return NULL;
	}
	if (strcmp(sdir, dir)) {
		fprintf(stderr, "vsnapctl: %s: %s is in store %s, not in %s: both files must be "
			"in one store\n", cmd, arg, sdir, dir);
		return NULL;
	}
	f = rel[0] ? file_by_path(m, rel) : NULL;
	if (!f || f->kind != BMAP_VOL || f->node == NONE) {
		fprintf(stderr, "vsnapctl: %s: %s is not a volume or a snapshot's file\n", cmd, arg);
		return NULL;
	}
	return f;
}
