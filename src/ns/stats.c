/*
 * stats: what a running daemon tells vsnapctl status, iostat and metrics
 * (docs/design.md, "Counters"; the keys in vsnapfs/ctlmsg.h).
 *
 * PER-VOLUME COUNTERS.  Every volume (and snapshot file) opened since the
 * mount has a struct ns_vstats in a hash table by inode number; each
 * ns_file points at its entry for its whole life, so the I/O path
 * (src/ns/io.c) only adds to atomics, with no lock and no lookup.  The
 * table's stats_mu (a leaf) is taken when a volume is opened and by the
 * reports.  An entry outlives the ns_file (a volume closed and opened again
 * keeps counting from where it was, since the mount); it goes when a
 * report finds its inode gone and no file pointing at it.  Inode numbers
 * are never reused, so a new volume never inherits an old one's figures.
 *
 * THE REPORTS are built by the control channel's threads: ns_ctl_status
 * takes db_mu (counts, format, last scrub), then files_mu, then bg_mu (the
 * last GC pass), one after the other; ns_ctl_iostat copies the entries
 * under stats_mu and names them under db_mu.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "ns/ns_int.h"
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/storedir.h"

#define PATH_DEPTH_MAX 4096             /* a loop in the index must not hang us */

/* ---- the table ------------------------------------------------------------------ */

static void prune_gone(struct ns *ns);

struct ns_vstats *ns_vstats_get(struct ns *ns, uint64_t ino)
{
	struct ns_vstats **b = &ns->vstats[ino % NS_STAT_BUCKETS], *s;
	bool prune;

	lock_mutex_lock(&ns->stats_mu);
	prune = ns->nvstats >= (ns->vstats_prune_at > ns->vstats_prune_min ? ns->vstats_prune_at
									     : ns->vstats_prune_min);
	lock_mutex_unlock(&ns->stats_mu);
	if (prune)
		prune_gone(ns);
	lock_mutex_lock(&ns->stats_mu);
	for (s = *b; s && s->ino != ino; s = s->next)
		;
	if (!s && (s = calloc(1, sizeof(*s)))) {
		s->ino = ino;
		s->next = *b;
		*b = s;
		ns->nvstats++;
	}
	if (!s)
		s = &ns->vstats_lost;
	atomic_fetch_add(&s->users, 1);
	lock_mutex_unlock(&ns->stats_mu);
	return s;
}

void ns_vstats_put(struct ns_vstats *s)
{
	atomic_fetch_sub(&s->users, 1);
}

void ns_vstats_free(struct ns *ns)
{
	for (unsigned i = 0; i < NS_STAT_BUCKETS; i++) {
		while (ns->vstats[i]) {
			struct ns_vstats *s = ns->vstats[i];

			ns->vstats[i] = s->next;
			free(s);
		}
	}
}

/* ---- status ---------------------------------------------------------------------- */

struct chunk_sum {
	uint64_t files, slots;
};

static int chunk_add(void *ctx, uint64_t id, uint32_t nslots)
{
	struct chunk_sum *c = ctx;

	c->files++;
	c->slots += nslots;
	return 0;
}

static int count_open(struct ns_file *f, void *ctx)
{
	*(uint64_t *)ctx += f->opens > 0;
	return 0;
}

static uint64_t file_bytes(int dirfd, const char *name)
{
	struct stat sb;

	return fstatat(dirfd, name, &sb, 0) ? 0 : (uint64_t)sb.st_size;
}

void ns_ctl_status(struct ns *ns, struct ctl_msg *rep)
{
	struct bmap_counts cnt = { 0 };
	struct bmap_scrub sc;
	struct chunk_sum cs = { 0 };
	struct ns_gc_stats gc;
	struct statvfs sv;
	uint64_t open = 0, passes;
	int64_t gc_at, gc_ns;
	int fmt, crc, src, gc_rc;

	lock_mutex_lock(&ns->db_mu);
	fmt = bmap_format(ns->bm);
	crc = bmap_counts(ns->bm, &cnt);
	src = bmap_scrub_last(ns->bm, &sc);
	lock_mutex_lock(&ns->files_mu);
	ns_files_foreach(ns, count_open, &open);
	lock_mutex_unlock(&ns->files_mu);
	lock_mutex_unlock(&ns->db_mu);
	lock_mutex_lock(&ns->bg_mu);
	passes = ns->gc_passes;
	gc = ns->gc_pass;
	gc_at = ns->gc_pass_at_ns;
	gc_ns = ns->gc_pass_ns;
	gc_rc = ns->gc_pass_rc;
	lock_mutex_unlock(&ns->bg_mu);
	chunk_foreach(ns->cs, chunk_add, &cs);

	ctl_kv_add(rep, "daemon.pid", "%ld", (long)getpid());
	ctl_kv_add(rep, "daemon.version", "%s", VSNAPFS_VERSION);
	ctl_kv_add(rep, "daemon.protocol", "%d", CTL_VERSION);
	ctl_kv_add(rep, "daemon.started_ns", "%" PRId64, ns->started_ns);
	ctl_kv_add(rep, "store.path", "%s", ns->dir);
	ctl_kv_add(rep, "store.block_size_bytes", "%" PRIu32, ns->bs);
	ctl_kv_add(rep, "store.format", "%d", fmt);
	ctl_kv_add(rep, "store.readonly", "%d", ns->readonly);
	ctl_kv_add(rep, "sync.failed", "%d", chunk_poisoned(ns->cs));
	ctl_kv_add(rep, "space.chunk_files", "%" PRIu64, cs.files);
	ctl_kv_add(rep, "space.data_bytes", "%" PRIu64, cs.slots * ns->bs);
	ctl_kv_add(rep, "space.spare_bytes", "%" PRIu64, chunk_spare_bytes(ns->cs));
	ctl_kv_add(rep, "space.spares_prepared", "%" PRIu64, chunk_spares_prepared(ns->cs));
	ctl_kv_add(rep, "store.direct_write_bytes", "%" PRIu64, chunk_direct_bytes(ns->cs));
	ctl_kv_add(rep, "store.write_behind_bytes", "%" PRIu64, chunk_write_behind_bytes(ns->cs));
	ctl_kv_add(rep, "space.index_bytes", "%" PRIu64, file_bytes(ns->dir_fd, STOREDIR_INDEX) +
		   file_bytes(ns->dir_fd, STOREDIR_INDEX "-wal"));
	ctl_kv_add(rep, "space.reserve_bytes", "%" PRId64, ns->space_reserve);
	if (!fstatvfs(ns->dir_fd, &sv)) {
		ctl_kv_add(rep, "space.host_size_bytes", "%" PRIu64,
			   (uint64_t)sv.f_blocks * sv.f_frsize);
		ctl_kv_add(rep, "space.host_free_bytes", "%" PRIu64,
			   (uint64_t)sv.f_bavail * sv.f_frsize);
	}
	if (!crc) {
		ctl_kv_add(rep, "count.volumes", "%" PRIu64, cnt.volumes);
		ctl_kv_add(rep, "count.directories", "%" PRIu64, cnt.dirs);
		ctl_kv_add(rep, "count.snapshots", "%" PRIu64, cnt.snapshots);
	}
	ctl_kv_add(rep, "count.open_volumes", "%" PRIu64, open);
	ctl_kv_add(rep, "gc.passes", "%" PRIu64, passes);
	if (gc_at) {
		ctl_kv_add(rep, "gc.last_ns", "%" PRId64, gc_at);
		ctl_kv_add(rep, "gc.last_duration_ns", "%" PRId64, gc_ns);
		ctl_kv_add(rep, "gc.last_moved_blocks", "%" PRIu64, gc.moved);
		ctl_kv_add(rep, "gc.last_removed_chunks", "%" PRIu64, gc.removed);
		ctl_kv_add(rep, "gc.last_freed_bytes", "%" PRIu64, gc.freed_slots * ns->bs);
		if (gc_rc)
			ctl_kv_add(rep, "gc.last_error", "%s", strerror(-gc_rc));
		else    /* a failed pass has no complete count */
			ctl_kv_add(rep, "gc.last_garbage_bytes", "%" PRIu64,
				   (gc.slots - gc.live) * ns->bs);
	}
	if (!src) {
		ctl_kv_add(rep, "scrub.last_ns", "%" PRId64, sc.at_ns);
		ctl_kv_add(rep, "scrub.last_duration_ns", "%" PRId64, sc.duration_ns);
		ctl_kv_add(rep, "scrub.last_blocks", "%" PRIu64, sc.blocks);
		ctl_kv_add(rep, "scrub.last_damaged_blocks", "%" PRIu64, sc.damaged);
	}
}

/* ---- iostat ---------------------------------------------------------------------- */

/* Prepend "/name" to the path being built backwards at out[*at ...). */
static int prepend(char *out, size_t *at, const char *name)
{
	size_t n = strlen(name);

	if (n + 1 > *at)
		return -ENAMETOOLONG;
	*at -= n;
	memcpy(out + *at, name, n);
	out[--*at] = '/';
	return 0;
}

/* Walk up from ino (live inodes, or those of snapshot snap) to stop. */
static int walk_up(struct ns *ns, uint64_t snap, uint64_t ino, uint64_t stop, char *out,
		   size_t *at)
{
	struct bmap_inode in;
	int rc = 0;

	for (int depth = 0; ino != stop && !rc; depth++) {
		rc = depth > PATH_DEPTH_MAX ? -ELOOP : snap ? bmap_sinode_get(ns->bm, snap, ino, &in) :
		     bmap_inode_get(ns->bm, ino, &in);
		if (!rc && !snap && in.parent == 0)
			rc = -ENOENT;           /* unlinked: no path */
		if (!rc)
			rc = prepend(out, at, in.name);
		ino = in.parent;
	}
	return rc;
}

/*
 * The path of inode ino in the mount ("/a/b.img", "/d/.snapshots/S/b.img")
 * into out; -ENOENT if it has none any more.  Assumes db_mu.
 */
static int ino_path(struct ns *ns, uint64_t ino, char *out, size_t len)
{
	size_t at = len - 1;
	struct bmap_snap s;
	int rc = 0;

	assert(lock_held(&ns->db_mu));
	out[at] = '\0';
	if (ino_kind(ino) == INO_SNAP) {
		rc = bmap_snap_get(ns->bm, ino_snap_id(ino), &s);
		if (!rc)
			rc = walk_up(ns, s.id, ino_snap_ino(ino), s.dir, out, &at);
		if (!rc)
			rc = prepend(out, &at, s.name);
		if (!rc)
			rc = prepend(out, &at, ".snapshots");
		ino = s.dir;
	}
	if (!rc)
		rc = walk_up(ns, 0, ino, NS_ROOT_INO, out, &at);
	if (!rc && at == len - 1)
		out[--at] = '/';
	if (!rc)
		memmove(out, out + at, len - at);
	return rc == -ENOENT || rc == -ELOOP || rc == -ENAMETOOLONG ? -ENOENT : rc;
}

struct vcopy {                          /* one entry as the report saw it */
	struct ns_vstats *s;
	uint64_t ino;
	unsigned users;
};

static int by_ino(const void *a, const void *b)
{
	const struct vcopy *x = a, *y = b;

	return x->ino < y->ino ? -1 : x->ino > y->ino;
}

/* Forget entry s if nothing points at it (its inode is gone).  Assumes
 * db_mu, so nobody opens the inode meanwhile. */
static void forget(struct ns *ns, struct ns_vstats *s)
{
	struct ns_vstats **pp = &ns->vstats[s->ino % NS_STAT_BUCKETS];

	lock_mutex_lock(&ns->stats_mu);
	if (atomic_load(&s->users) == 0) {
		while (*pp != s)
			pp = &(*pp)->next;
		*pp = s->next;
		free(s);
		ns->nvstats--;
	}
	lock_mutex_unlock(&ns->stats_mu);
}

/*
 * Forget the entries of inodes that are gone and that no file points at,
 * as an iostat report does, when the table has grown past twice what the
 * last look left: a daemon that opens new inodes all the time (the files
 * of nightly snapshots, each a new inode) keeps entries for the inodes
 * that exist, whether or not anybody asks for a report.  Assumes db_mu
 * (ns_open_file), so that nobody opens these inodes meanwhile.
 */
static void prune_gone(struct ns *ns)
{
	struct vcopy *v = NULL;
	size_t n = 0, cap = 0;
	char *path = malloc(PATH_MAX);

	assert(lock_held(&ns->db_mu));
	lock_mutex_lock(&ns->stats_mu);
	for (unsigned b = 0; b < NS_STAT_BUCKETS && path; b++)
		for (struct ns_vstats *s = ns->vstats[b]; s; s = s->next)
			if (!atomic_load(&s->users) && !ARRAY_RESERVE(v, cap, n, 64))
				v[n++] = (struct vcopy){ s, s->ino, 0 };
	lock_mutex_unlock(&ns->stats_mu);
	for (size_t i = 0; i < n; i++)
		if (ino_path(ns, v[i].ino, path, PATH_MAX) == -ENOENT)
			forget(ns, v[i].s);
	lock_mutex_lock(&ns->stats_mu);
	ns->vstats_prune_at = 2 * ns->nvstats;
	lock_mutex_unlock(&ns->stats_mu);
	free(v);
	free(path);
}

/* "a,b,c" of one kind's figures: ops, bytes, errors, latency sum. */
static int add_kind(struct ctl_msg *rep, const char *key, struct ns_vstats *s, int k)
{
	char h[NS_LAT_BUCKETS * 21 + 1];
	size_t n = 0;
	int rc;

	rc = ctl_kv_add(rep, key, "%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64,
			atomic_load_explicit(&s->ops[k], memory_order_relaxed),
			atomic_load_explicit(&s->bytes[k], memory_order_relaxed),
			atomic_load_explicit(&s->errors[k], memory_order_relaxed),
			atomic_load_explicit(&s->lat_ns[k], memory_order_relaxed));
	for (int b = 0; b < NS_LAT_BUCKETS; b++)
		n += snprintf(h + n, sizeof(h) - n, "%s%" PRIu64, b ? "," : "",
			      atomic_load_explicit(&s->hist[k][b], memory_order_relaxed));
	return rc ? rc : ctl_kv_add(rep, key[0] == 'r' ? "rh" : key[0] == 'w' ? "wh" : "fh",
				    "%s", h);
}

/* One volume's lines: v=, path=, then r=, w=, f= and their histograms. */
static int add_vol(struct ctl_msg *rep, struct ns_vstats *s, uint64_t ino, const char *path)
{
	int rc = ctl_kv_add(rep, "v", "%" PRIu64, ino);

	if (!rc)
		rc = ctl_kv_add(rep, "path", "%s", path);
	if (!rc)
		rc = add_kind(rep, "r", s, NS_IO_READ);
	if (!rc)
		rc = add_kind(rep, "w", s, NS_IO_WRITE);
	if (!rc)
		rc = add_kind(rep, "f", s, NS_IO_FSYNC);
	return rc;
}

void ns_ctl_iostat(struct ns *ns, const struct ctl_msg *req, struct ctl_msg *rep)
{
	struct vcopy *v = NULL;
	size_t n = 0, cap = 0, i;
	uint64_t after = 0, last;
	char *path = malloc(PATH_MAX);
	int rc = path ? 0 : -ENOMEM;

	if (ctl_kv_u64(req, "after", &after) == -EINVAL)
		rc = -EINVAL;
	lock_mutex_lock(&ns->db_mu);
	lock_mutex_lock(&ns->stats_mu);
	for (unsigned b = 0; b < NS_STAT_BUCKETS && !rc; b++) {
		for (struct ns_vstats *s = ns->vstats[b]; s && !rc; s = s->next) {
			if (s->ino <= after)
				continue;
			if (ARRAY_RESERVE(v, cap, n, 64))
				rc = -ENOMEM;
			else
				v[n++] = (struct vcopy){ s, s->ino, atomic_load(&s->users) };
		}
	}
	lock_mutex_unlock(&ns->stats_mu);
	last = after;
	if (!rc) {
		qsort(v, n, sizeof(*v), by_ino);
		ctl_kv_add(rep, "uptime_ns", "%" PRId64, ns_mono_ns() - ns->started_mono_ns);
	}
	for (i = 0; i < n && !rc; i++) {
		size_t mark = rep->len;
		int prc = ino_path(ns, v[i].ino, path, PATH_MAX);

		if (prc == -ENOENT && !v[i].users) {
			forget(ns, v[i].s);     /* deleted, and no file points at it */
			continue;
		}
		if (prc)
			snprintf(path, PATH_MAX, "(deleted, inode %" PRIu64 ")", ino_payload(v[i].ino));
		if (add_vol(rep, v[i].s, v[i].ino, path)) {
			/* the page is full: the client asks again from here */
			rep->len = mark;
			rep->body[mark] = '\0';
			ctl_kv_add(rep, "next", "%" PRIu64, last);
			break;
		}
		last = v[i].ino;
	}
	lock_mutex_unlock(&ns->db_mu);
	if (rc) {
		ctl_msg_init(rep, req->verb);
		rep->status = rc;
		ctl_kv_add(rep, "msg", "iostat: %s", strerror(-rc));
	}
	free(v);
	free(path);
}

/* ---- scrub results ---------------------------------------------------------------- */

void ns_ctl_scrub_done(struct ns *ns, const struct ctl_msg *req, struct ctl_msg *rep)
{
	struct bmap_scrub r;
	uint64_t at = 0, dur = 0;
	int rc;

	rc = ctl_kv_u64(req, "at_ns", &at);
	if (!rc)
		rc = ctl_kv_u64(req, "duration_ns", &dur);
	if (!rc)
		rc = ctl_kv_u64(req, "blocks", &r.blocks);
	if (!rc)
		rc = ctl_kv_u64(req, "damaged_blocks", &r.damaged);
	if (rc) {
		rep->status = -EPROTO;
		ctl_kv_add(rep, "msg", "scrub_done: a key is missing or malformed");
		return;
	}
	if (ns->readonly) {
		rep->status = -EROFS;
		ctl_kv_add(rep, "msg", "mounted read-only: the scrub's result is not recorded");
		return;
	}
	r.at_ns = (int64_t)at;
	r.duration_ns = (int64_t)dur;
	lock_mutex_lock(&ns->db_mu);
	rc = ns_txn_begin(ns);
	if (!rc) {
		rc = bmap_scrub_put(ns->bm, &r);
		if (!rc)
			rc = ns_txn_commit(ns);
		if (rc)
			ns_txn_rollback(ns);
	}
	lock_mutex_unlock(&ns->db_mu);
	if (rc) {
		rep->status = rc;
		ctl_kv_add(rep, "msg", "recording the scrub's result: %s", strerror(-rc));
	}
}
