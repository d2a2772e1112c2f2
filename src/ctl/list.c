/*
 * list: volumes and snapshot files with size, allocated and exclusive
 * bytes, and origin.
 *
 * exclusive.  A node's own data rows are freed by deleting the file that
 * names it unless a descendant can still see them.  A row is seen by a
 * child where the child shows its parent (bmap_node_shown: below its
 * inherit limit, and no row of its own there, data or tombstone, the rule a
 * merge follows); whatever a grandchild sees through the child, the child
 * sees.  So: mark the node's blocks each child shows, and count the rows no
 * child sees.  O(rows of the node + rows of its children).  A node named by
 * two files frees nothing when one of them goes.  Second-order effects of
 * the release (an internal parent left with one child is merged into it)
 * are not counted.
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
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/array.h"

struct excl {
	uint64_t *lb;                   /* the node's data rows, increasing lblock */
	uint8_t *seen;                  /* seen[i]: some child sees lb[i] */
	size_t n, cap, j;
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

/* A run of blocks the child shows of its parent: the node's blocks in it
 * are seen. */
static int excl_shown(void *ctx, uint64_t lblock, uint64_t nblocks)
{
	struct excl *e = ctx;

	while (e->j < e->n && e->lb[e->j] < lblock)
		e->j++;
	while (e->j < e->n && e->lb[e->j] < lblock + nblocks)
		e->seen[e->j++] = 1;
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
		rc = bmap_node_shown(st->bm, &c->n, 0, BMAP_LBLOCK_LIMIT, excl_shown, &e);
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

/* A volume being received: not listed, as the mount does not list it. */
static bool hidden(const char *path)
{
	const char *name = strrchr(path, '/');

	return name && ctl_recv_tmp_name(name + 1);
}

int cmd_list(struct store *st)
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
		if (m.files[i].kind == BMAP_VOL && under(m.files[i].path, st->rel) &&
		    !hidden(m.files[i].path))
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
