/*
 * diff: the extents that differ between two volume or snapshot files of one
 * lineage, from the index alone (no data block is read).
 *
 *   vsnapctl diff [--json] A B
 *
 * A and B are paths in one mounted store (a live volume, or a file of a
 * snapshot: MNT/.snapshots/vm1.img@mon/vm1.img).  Each names a map node;
 * bmap_node_diff (src/bmap/chain.c, docs/design.md "Diff of two nodes")
 * gives the blocks where the two nodes show different content, with what B
 * shows there, at a cost that follows the extents written since their
 * common ancestor, not the volume size.  Here they become byte extents:
 * clipped at the smaller of the two sizes, then the tail up to the larger
 * size is changed as a whole (what B holds there if B is the longer; zeros,
 * past B's end, if B is the shorter).  Touching extents of one kind are one.
 *
 * Everything is read inside one read transaction (bmap_snapshot_begin), so
 * the namespace, the nodes and the extents are one committed state of the
 * index.  Snapshots are committed when taken, so a diff of two snapshots is
 * exact; a live volume's last writes reach the index with the daemon's next
 * flush (about a second), so a diff involving one may lag behind it.
 *
 * Two files of two lineages (no common ancestor node) are refused (exit 2).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/array.h"

struct out {
	uint64_t off, len;              /* the extent held back, len 0: none */
	bool data;
	uint64_t nextents, changed;
	uint32_t bs;
	uint64_t clip_lo, clip_hi;      /* bytes: what the block runs are cut to */
};

static void out_print(struct out *o)
{
	if (!o->len)
		return;
	if (json)
		printf("%s\n{\"offset_bytes\":%" PRIu64 ",\"length_bytes\":%" PRIu64
		       ",\"kind\":\"%s\"}", o->nextents ? "," : "", o->off, o->len,
		       o->data ? "data" : "zero");
	else
		printf("%20" PRIu64 " %20" PRIu64 " %s\n", o->off, o->len, o->data ? "data" : "zero");
	o->nextents++;
	o->changed += o->len;
	o->len = 0;
}

/* One byte extent; touching extents of one kind are printed as one. */
static void out_add(struct out *o, uint64_t off, uint64_t len, bool data)
{
	if (!len)
		return;
	if (o->len && o->off + o->len == off && o->data == data) {
		o->len += len;
		return;
	}
	out_print(o);
	*o = (struct out){ .off = off, .len = len, .data = data, .nextents = o->nextents,
			   .changed = o->changed, .bs = o->bs, .clip_lo = o->clip_lo,
			   .clip_hi = o->clip_hi };
}

/* A run of blocks, cut to [clip_lo, clip_hi) bytes. */
static int out_run(void *ctx, const struct bmap_run *r)
{
	struct out *o = ctx;
	uint64_t lo = r->lblock * o->bs, hi = (r->lblock + r->nblocks) * o->bs;

	if (lo < o->clip_lo)
		lo = o->clip_lo;
	if (hi > o->clip_hi)
		hi = o->clip_hi;
	if (lo < hi)
		out_add(o, lo, hi - lo, r->data);
	return 0;
}

struct runs {
	struct bmap_run *v;
	size_t n, cap;
};

static int runs_add(void *ctx, const struct bmap_run *r)
{
	struct runs *l = ctx;

	if (ARRAY_RESERVE(l->v, l->cap, l->n, 256))
		return -ENOMEM;
	l->v[l->n++] = *r;
	return 0;
}

static void diff_head(const struct store *st, const struct file *a, const struct file *b)
{
	if (json) {
		printf("{\"a\":");
		json_str(stdout, a->path);
		printf(",\"b\":");
		json_str(stdout, b->path);
		printf(",\"a_size_bytes\":%" PRIu64 ",\"b_size_bytes\":%" PRIu64
		       ",\"block_size_bytes\":%" PRIu32 ",\"extents\":[", a->size, b->size, st->bs);
	} else {
		printf("%20s %20s %s\n", "OFFSET", "LENGTH", "KIND");
	}
}

static void diff_tail(const struct out *o, const struct file *a, const struct file *b)
{
	char h[16];

	if (json) {
		printf("%s],\"extents_count\":%" PRIu64 ",\"changed_bytes\":%" PRIu64 "}\n",
		       o->nextents ? "\n" : "", o->nextents, o->changed);
		return;
	}
	human(o->changed, h, sizeof(h));
	printf("%s -> %s: %" PRIu64 " byte(s) (%s) changed in %" PRIu64 " extent(s)\n", a->path,
	       b->path, o->changed, h, o->nextents);
}

static int diff_run(struct store *st, const char *arg_a, const char *arg_b)
{
	struct model m = { 0 };
	const struct file *a = NULL, *b = NULL;
	struct out o = { .bs = st->bs };
	struct runs runs = { 0 };
	uint64_t lo, hi;
	int rc;

	rc = bmap_snapshot_begin(st->bm);
	if (rc)
		goto out;
	rc = model_load(st, &m, NULL);
	if (rc)
		goto out;
	a = file_at(&m, st->dir, arg_a, "diff");
	b = a ? file_at(&m, st->dir, arg_b, "diff") : NULL;
	if (!a || !b) {
		bmap_snapshot_end(st->bm);
		model_free(&m);
		return 2;
	}
	lo = a->size < b->size ? a->size : b->size;
	hi = a->size < b->size ? b->size : a->size;
	/* the runs first: a refusal prints nothing on stdout */
	rc = bmap_node_diff(st->bm, a->node_id, b->node_id, (hi + st->bs - 1) / st->bs, runs_add,
			    &runs);
	if (rc == -EXDEV) {
		fprintf(stderr, "vsnapctl: diff: %s and %s are not of one lineage (no common "
			"ancestor): nothing to compare\n", a->path, b->path);
		goto out;
	}
	if (rc)
		goto out;
	diff_head(st, a, b);
	o.clip_hi = lo;
	for (size_t i = 0; i < runs.n; i++)
		out_run(&o, &runs.v[i]);
	/* the tail: what B holds past A's end, or nothing past B's own */
	o.clip_lo = lo;
	o.clip_hi = hi;
	if (!rc && b->size > lo)
		rc = bmap_node_content(st->bm, b->node_id, lo / st->bs, (hi + st->bs - 1) / st->bs,
				       out_run, &o);
	else if (!rc && a->size > lo)
		out_add(&o, lo, hi - lo, false);
	if (!rc) {
		out_print(&o);
		diff_tail(&o, a, b);
	}
out:
	if (rc && rc != -EXDEV)
		fprintf(stderr, "vsnapctl: diff: %s\n", strerror(-rc));
	bmap_snapshot_end(st->bm);
	model_free(&m);
	free(runs.v);
	return rc ? 2 : 0;
}

static int diff_main(int argc, char **argv)
{
	struct cli c = { .cmd = &diff_cmd, .min_args = 2, .max_args = 2,
			 .missing = "needs two files, A and B" };
	struct store st = { 0 };
	int ch, rc;

	while ((ch = cli_next(&c, argc, argv)) >= 0)
		;
	if (ch == CLI_STOP)
		return c.exit;
	rc = store_open(argv[optind], false, &st) ? 2 : diff_run(&st, argv[optind], argv[optind + 1]);
	store_close(&st);
	return rc;
}

const struct cmd diff_cmd = {
	.name = "diff",
	.synopsis = "A B",
	.summary = "extents that differ between two volume or snapshot files of one lineage",
	.help = "A and B are files in a mount.  Prints offset, length, and data or zero: what B\n"
		"holds there; from the index alone.\n",
	.common = CLI_JSON,
	.run = diff_main,
};
