/*
 * scrub: read every block and verify its checksum (exit 1: damage).
 *
 * The rows come from rows.c, sorted by chunk and slot, and are read in runs
 * of consecutive slots.  A damaged block is looked up again before it is
 * reported (rewritten and its old chunk collected since the scan: not
 * damage), then named by the files that see it: the node's own names, then
 * down the children that show it (bmap_node_shown), breadth first.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"

#define SCRUB_RUN_BYTES (1u << 20)      /* one chunk_read of up to this much */
#define SEERS_MAX       8               /* files named per damaged block */

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

static int shown_one(void *ctx, uint64_t lblock, uint64_t nblocks)
{
	*(bool *)ctx = true;
	return 0;
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
			bool shows = false;

			rc = bmap_node_shown(s->st->bm, &m->nodes[c].n, lblock, lblock + 1, shown_one,
					     &shows);
			if (!rc && shows)
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
		printf(",\"offset_bytes\":%" PRIu64 ",\"chunk\":%" PRIu64 ",\"slot\":%u,\"node\":%" PRIu64
		       ",\"error\":\"%s\",\"seen_by\":[", off, row->chunk, row->slot, row->node, why);
		for (size_t i = 0; i < nseers; i++) {
			printf("%s", i ? "," : "");
			json_str(stdout, seers[i]);
		}
		printf("]}");
	} else if (s->bad <= REPORT_MAX) {
		progress_clear(&s->pg);
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

static int scrub_run_all(struct store *st)
{
	struct model m = { 0 };
	struct rowset rs = { .max = rows_per_pass() };
	struct scrub s = { .st = st, .m = &m };
	uint64_t lo = 0;
	int64_t start = mono_ns();              /* a duration: not moved by clock steps */
	void *buf;
	int rc;

	s.run_max = SCRUB_RUN_BYTES / st->bs ? SCRUB_RUN_BYTES / st->bs : 1;
	/* page-aligned: runs are read around the host's page cache, which a
	 * scrub would fill with blocks read once (chunk_direct_reads) */
	if (posix_memalign(&buf, 4096, (size_t)s.run_max * st->bs) == 0)
		s.buf = buf;
	s.locs = malloc(s.run_max * sizeof(*s.locs));
	rc = s.buf && s.locs ? 0 : -ENOMEM;
	chunk_direct_reads(st->cs);
	if (!rc)
		rc = model_load(st, &m, NULL);
	if (rc)
		goto out;
	progress_blocks(&s.pg, "scrub", 0, st->bs);
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
	if (!rc) {
		struct bmap_scrub r = { .at_ns = wall_ns(), .duration_ns = mono_ns() - start,
					.blocks = s.blocks, .damaged = s.bad };
		int wrc;

		wrc = store_record_scrub(st, &r);
		if (wrc)
			fprintf(stderr, "vsnapctl: scrub: the result is not recorded for status: %s\n",
				strerror(-wrc));
	}
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

const struct cmd scrub_cmd = {
	.name = "scrub",
	.synopsis = "[STORE|MOUNTPOINT]",
	.summary = "read every block and verify its checksum",
	.help = "STORE is a store directory, MOUNTPOINT a running vsnapfs (default: the current\n"
		"directory).  A damaged block is named by every file that shows it, with its\n"
		"offset, chunk file and slot.\n"
		"Exit status: 0 clean, 1 damaged blocks, 2 usage or I/O error.\n",
	.common = CLI_JSON | CLI_PROGRESS,
	.run_store = scrub_run_all,
	.chunks = true,
};
