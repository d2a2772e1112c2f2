/*
 * check: the index against the chunk files (exit 1: problems).
 *
 * The node forest (parents exist, no loops, a live volume's node has no
 * children and no other name), each node's block count against its rows,
 * every row against its chunk file (the file exists and is long enough,
 * its header is sound, each slot has one owner, and the slot's entry says
 * it holds that block).  Data is scrub's to verify.
 *
 * A node that no file names and that has fewer than two children is a
 * warning, not a problem: deleting a snapshot or volume commits first and
 * releases its node in the background, and after a crash the next mount
 * releases whatever was left (src/ns/bg.c, src/ns/store.c).
 *
 * A mounted store changes under us, and bmap has no read transaction that
 * spans several calls, so two reads may see different commits (a chunk file
 * listed before a flush committed rows into it, a node created between the
 * node list and the row scan).  Chunk files are therefore listed after the
 * row scan, and a check that finds problems on a store that a daemon holds
 * runs again and reports only the problems both runs found.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/array.h"

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
 * A node's referenced-block count (table refblocks: st_blocks of a live
 * volume, list's REFERENCED) against the blocks its chain shows with data
 * below the largest size of the files naming it (bmap_node_data_blocks,
 * O(extents of the chain)).  A node without a count (not counted yet) is
 * not a problem: the daemon counts it.
 */
static int check_refs(struct store *st, struct model *m, size_t i, struct report *r)
{
	struct mnode *x = &m->nodes[i];
	uint64_t have, shown, size = 0;
	char buf[64];
	int rc;

	if (!x->nnames)
		return 0;               /* nobody's: nothing shows its count */
	/* a chain that loops or misses a parent is reported as such, and
	 * cannot be counted */
	for (size_t k = i, steps = 0; x->n.parent || k != i; steps++) {
		if (steps > m->nnodes)
			return 0;
		if (m->nodes[k].n.parent == 0)
			break;
		if (m->nodes[k].parent == NONE)
			return 0;
		k = m->nodes[k].parent;
	}
	rc = bmap_refs_get(st->bm, x->n.id, &have);
	if (rc)
		return rc == -ENOENT ? 0 : rc;
	for (size_t k = 0; k < x->nnames; k++) {
		const struct file *f = &m->files[m->names[x->name0 + k]];

		if (f->size > size)
			size = f->size;
	}
	rc = bmap_node_data_blocks(st->bm, x->n.id, 0, (size + st->bs - 1) / st->bs, &shown);
	if (rc == -EUCLEAN || rc == -ENOENT)
		return 0;               /* a broken chain: reported as such */
	if (rc)
		return rc;
	if (have != shown)
		PROBLEM(r, "map node %" PRIu64 " (%s): its referenced-block count is %" PRIu64
			", its chain shows %" PRIu64 " block(s) with data: its st_blocks is off, its "
			"data are not", x->n.id, node_label(m, i, buf, sizeof(buf)), have, shown);
	return 0;
}

/*
 * Each node's row count in the index (what st_blocks and list show) against
 * the rows the scan saw.  On a mounted store the two are read at different
 * moments, so a volume being written may differ here; the second run of a
 * mounted check keeps only what both runs found (check_run_all).
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
		rc = check_refs(st, m, i, r);
		if (rc)
			return rc;
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

	/* the total for the progress line costs a count per node: only if shown */
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
		progress_blocks(&pg, what, total, st->bs);
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

static int check_run_all(struct store *st)
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

const struct cmd check_cmd = {
	.name = "check",
	.synopsis = "[STORE|MOUNTPOINT]",
	.summary = "verify the index against the chunk files",
	.help = "STORE is a store directory, MOUNTPOINT a running vsnapfs (default: the current\n"
		"directory).  Reads no block data (scrub does).  A mounted store is checked\n"
		"twice and only what both runs find is reported.\n"
		"Exit status: 0 clean, 1 problems found, 2 usage or I/O error.\n",
	.common = CLI_JSON | CLI_PROGRESS,
	.run_store = check_run_all,
	.chunks = true,
};
