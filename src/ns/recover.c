/*
 * recover: bring the index up to the log at open (docs/design.md, D3,
 * "Crash recovery").
 *
 * The index says, in meta, the last batch it holds (ckpt_lsn = C) and the
 * chunk that batch is in (ckpt_chunk = K).  Every batch after C is in a
 * chunk >= K, in the slots of kind LOG.  So:
 *   1. read the log of every chunk file >= K, in id order, and in each the
 *      batches in slot order (chunk_log_read, wal_parse): this is the
 *      order they were written in;
 *   2. accept C+1, C+2, ... in that order, skipping what is invalid (torn,
 *      damaged, a spare's stale bytes) and what is <= C, and stop at the
 *      first gap: a batch is written only after the one before it was
 *      synced, so nothing valid follows a missing one;
 *   3. the batches after the last one's synced_lsn were written after the
 *      last sync that returned: their payloads may not have reached the
 *      disk.  Every block they bind is read and verified, and the ones
 *      that fail are dropped: those writes were never acknowledged, so the
 *      block reads old.  (Earlier batches' blocks were synced: they are
 *      not read.)
 *   4. apply all of them in one transaction that also moves ckpt_lsn, and
 *      sets ckpt_chunk to the first chunk this open will write: every
 *      batch so far is in the index.
 * A crash during recovery recovers again: ckpt_lsn moves with the rows.
 *
 * A store cleanly unmounted has no batch after C (the unmount checkpointed
 * before it set "clean"): nothing is read.  A store without ckpt_chunk
 * has no log to read either; it gets both keys.  A read-only open replays nothing: it
 * refuses a store whose index lacks batches.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ns/ns_int.h"
#include "vsnapfs/log.h"
#include "vsnapfs/wal.h"

#define VERIFY_RUN 256u                 /* blocks read per chunk_read at step 3 */

struct rec_state {
	struct ns *ns;
	uint64_t c;                     /* ckpt_lsn */
	uint64_t k;                     /* ckpt_chunk */
	uint8_t **bufs;                 /* the chunks' log bytes, kept while views point in */
	size_t nbufs, bufs_cap;
	struct wal_view *v;             /* accepted batches, in lsn order */
	uint64_t last;                  /* ckpt_lsn after the replay */
	size_t n, cap;
	bool gap;                       /* stop: nothing after a gap counts */
	uint64_t max_seen;              /* the highest lsn of any valid batch found */
	uint64_t chunks;                /* chunk files that held an accepted batch */
	uint64_t dropped;               /* blocks of step 3 that did not verify */
	uint64_t *stale;                /* nodes with such blocks: their REFS counted them */
	size_t nstale, stale_cap;
	uint8_t *blk;                   /* VERIFY_RUN blocks */
	int rc;
};

static int meta_or(struct bmap *bm, const char *key, uint64_t dflt, uint64_t *out, bool *found)
{
	int rc = bmap_meta_get(bm, key, out);

	if (found)
		*found = rc == 0;
	if (rc == -ENOENT) {
		*out = dflt;
		rc = 0;
	}
	return rc;
}

/* The next place in buf, at or after pos, where a batch may start: the
 * next magic.  A batch that does not parse (torn, damaged) says nothing
 * about where the next one is, so look for it. */
static size_t next_magic(const uint8_t *buf, size_t len, size_t pos)
{
	static const uint8_t magic[4] = { 0x56, 0x53, 0x4c, 0x47 };    /* WAL_MAGIC, LE */
	const uint8_t *p = pos < len ? memmem(buf + pos, len - pos, magic, 4) : NULL;

	return p ? (size_t)(p - buf) : len;
}

/* Step 1 and 2 for one chunk file. */
static int scan_chunk(void *ctx, uint64_t id, uint32_t nslots)
{
	struct rec_state *st = ctx;
	uint64_t expect;
	uint8_t *buf;
	size_t len, pos = 0;
	bool any = false;
	int rc;

	if (id < st->k)
		return 0;
	rc = chunk_log_read(st->ns->cs, id, &buf, &len);
	if (rc == -ENOENT)
		return 0;               /* removed meanwhile: nothing after C was in it */
	if (rc == -EIO) {
		/* damaged (its header, or a read failed): what it held is lost
		 * like its blocks; if a batch after C was in it, the gap stops
		 * the replay there (later batches need it) */
		vlog_at(LOG_ERR, &(struct log_where){ .chunk = id, .has_chunk = true },
			"chunk %016" PRIx64 ": cannot read its log: %s", id, log_strerror(rc));
		return 0;
	}
	if (rc)
		return rc;
	if (!buf)
		return 0;
	if (ARRAY_RESERVE(st->bufs, st->bufs_cap, st->nbufs, 16)) {
		free(buf);
		return -ENOMEM;
	}
	st->bufs[st->nbufs++] = buf;
	for (pos = next_magic(buf, len, 0); pos < len; pos = next_magic(buf, len, pos)) {
		struct wal_view v;

		if (wal_parse(buf + pos, len - pos, id, &v)) {
			pos++;
			continue;
		}
		pos += v.len;
		if (v.lsn > st->max_seen)
			st->max_seen = v.lsn;
		if (st->gap)
			continue;               /* only the highest lsn matters now */
		expect = st->n ? st->v[st->n - 1].lsn + 1 : st->c + 1;
		if (v.lsn < expect)
			continue;               /* in the index already */
		if (v.lsn > expect) {
			/* a lost or damaged batch: the ones after it cannot go
			 * to the index without it */
			vlog_at(LOG_CRIT, &(struct log_where){ .chunk = id, .has_chunk = true },
				"recovery: log batch %" PRIu64 " is missing or damaged (chunk "
				"%016" PRIx64 " holds %" PRIu64 "): it and later batches are not "
				"replayed, and the writes they hold are lost", expect, id, v.lsn);
			st->gap = true;
			continue;
		}
		if (ARRAY_RESERVE(st->v, st->cap, st->n, 64))
			return -ENOMEM;
		st->v[st->n++] = v;
		any = true;
	}
	st->chunks += any;
	return 0;
}

/* A block of node was dropped: the referenced-block counts the log holds
 * for it included the block, so the node is counted again (after mount, in
 * the background; docs/design.md, "Referenced blocks"). */
static int note_stale(struct rec_state *st, uint64_t node)
{
	if (st->nstale && st->stale[st->nstale - 1] == node)
		return 0;
	if (ARRAY_RESERVE(st->stale, st->stale_cap, st->nstale, 16))
		return -ENOMEM;
	st->stale[st->nstale++] = node;
	return 0;
}

/* Step 3: which blocks of a PUT read back whole. */
static int keep_verified(void *ctx, const struct wal_rec *r, uint8_t *ok)
{
	struct rec_state *st = ctx;
	struct chunk_loc locs[VERIFY_RUN];
	uint64_t dropped = st->dropped;

	for (uint32_t i = 0; i < r->nblocks;) {
		uint32_t n = r->nblocks - i < VERIFY_RUN ? r->nblocks - i : VERIFY_RUN;
		struct chunk_bad bad;
		int rc;

		for (uint32_t j = 0; j < n; j++)
			locs[j] = (struct chunk_loc){ .chunk_id = r->c, .slot = (uint32_t)r->d + i + j,
						      .lblock = r->b + i + j };
		rc = chunk_read(st->ns->cs, locs, n, st->blk, &bad);
		if (rc == 0) {
			memset(ok + i, 1, n);
			i += n;
		} else if (rc == -EBADMSG) {
			/* good up to the bad one; look again after it */
			memset(ok + i, 1, bad.index);
			ok[i + bad.index] = 0;
			st->dropped++;
			i += bad.index + 1;
		} else if (rc == -ENOENT || rc == -EIO || rc == -EINVAL) {
			memset(ok + i, 0, n);
			st->dropped += n;
			i += n;
		} else {
			return rc;
		}
	}
	return st->dropped != dropped ? note_stale(st, r->a) : 0;
}

/* Step 4. */
static int replay(struct rec_state *st)
{
	struct ns *ns = st->ns;
	uint64_t synced = st->n ? st->v[st->n - 1].synced_lsn : 0;
	struct wal_inodes inodes = { 0 };
	int rc;

	st->blk = malloc((size_t)VERIFY_RUN * ns->bs);
	if (!st->blk)
		return -ENOMEM;
	rc = bmap_begin(ns->bm);
	for (size_t i = 0; i < st->n && !rc; i++)
		rc = wal_apply_deferred(ns->bm, &st->v[i], st->v[i].lsn > synced ? keep_verified : NULL,
					st, &inodes);
	if (!rc)
		rc = wal_inodes_apply(ns->bm, &inodes);
	wal_inodes_free(&inodes);
	for (size_t i = 0; i < st->nstale && !rc; i++)
		rc = bmap_refs_forget(ns->bm, st->stale[i]);
	if (!rc)
		rc = bmap_meta_set(ns->bm, "ckpt_lsn", st->last);
	if (!rc)
		rc = bmap_meta_set(ns->bm, "ckpt_chunk", chunk_next_id(ns->cs));
	if (!rc)
		rc = bmap_meta_set(ns->bm, "next_chunk_id", chunk_next_id(ns->cs));
	if (!rc)
		rc = bmap_commit(ns->bm);
	if (rc)
		bmap_rollback(ns->bm);
	return rc;
}

int ns_recover(struct ns *ns, char *msg, size_t msglen)
{
	struct rec_state st = { .ns = ns };
	uint64_t clean;
	bool have_k;
	int rc;

	rc = meta_or(ns->bm, "ckpt_lsn", 0, &st.c, NULL);
	if (!rc)
		rc = meta_or(ns->bm, "ckpt_chunk", 0, &st.k, &have_k);
	if (!rc)
		rc = meta_or(ns->bm, "clean", 0, &clean, NULL);
	if (rc) {
		snprintf(msg, msglen, "cannot read the index: %s", log_strerror(rc));
		return rc;
	}
	ns->ckpt_lsn = st.c;
	ns->lsn_next = st.c + 1;
	ns->lsn_synced = st.c;
	if (!have_k) {
		/* no log anywhere yet: it starts in the next chunk */
		if (ns->readonly)
			return 0;
		rc = bmap_begin(ns->bm);
		if (!rc)
			rc = bmap_meta_set(ns->bm, "ckpt_lsn", st.c);
		if (!rc)
			rc = bmap_meta_set(ns->bm, "ckpt_chunk", chunk_next_id(ns->cs));
		if (!rc)
			rc = bmap_commit(ns->bm);
		if (rc) {
			bmap_rollback(ns->bm);
			snprintf(msg, msglen, "cannot update the index: %s", log_strerror(rc));
		}
		return rc;
	}

	/* a clean unmount checkpointed everything: no log to read */
	if (clean == 1)
		return 0;
	rc = chunk_foreach(ns->cs, scan_chunk, &st);
	if (rc) {
		snprintf(msg, msglen, "reading the log in the chunk files: %s", log_strerror(rc));
		goto out;
	}
	ns->log_gap = st.gap;
	if (ns->readonly) {
		if (st.n || st.gap) {
			rc = -EROFS;
			snprintf(msg, msglen, "%s was not cleanly unmounted and its log is not in its "
				 "index yet: mount it once read-write to replay it", ns->dir);
		}
		goto out;
	}
	/*
	 * Whatever was found, the index now says where the log goes on: past
	 * every lsn seen (never reused, even beyond a gap) and in chunks this
	 * daemon creates (an old chunk is never read again, so batches beyond
	 * a gap cannot come back after new ones).
	 */
	st.last = st.n ? st.v[st.n - 1].lsn : st.c;
	if (st.max_seen > st.last)
		st.last = st.max_seen;
	rc = replay(&st);
	if (rc) {
		snprintf(msg, msglen, "replaying the log into the index: %s (%s)", log_strerror(rc),
			 bmap_errmsg(ns->bm));
		goto out;
	}
	ns->ckpt_lsn = st.last;
	ns->lsn_next = st.last + 1;
	ns->lsn_synced = st.last;
	if (st.n)
		vlog(LOG_NOTICE, "recovery: replayed %zu log batch(es) (lsn %" PRIu64 "-%" PRIu64
		     ") from %" PRIu64 " chunk file(s)", st.n, st.v[0].lsn, st.v[st.n - 1].lsn,
		     st.chunks);
	if (st.dropped)
		vlog(LOG_NOTICE, "recovery: %" PRIu64 " block(s) of the last flush, never "
		     "acknowledged, did not reach the disk: they read as before it", st.dropped);
out:
	for (size_t i = 0; i < st.nbufs; i++)
		free(st.bufs[i]);
	free(st.bufs);
	free(st.v);
	free(st.blk);
	free(st.stale);
	return rc;
}
