/*
 * vsnapctl: inspect and maintain a store, mounted or not.
 *
 * It opens the index read-only (SQLite WAL lets it read while the daemon
 * writes; it sees the last committed state) and reads chunk files directly.
 * A STORE argument may be the store directory or the mount point of a
 * running vsnapfs (found through /proc/self/mounts: the daemon mounts with
 * fsname "vsnapfs:STORE").
 *
 *   vsnapctl [--json] list  [STORE|MOUNTPOINT]   volumes: size, allocated
 *   vsnapctl check STORE|MOUNTPOINT             index against chunk files; exit 1 on problems
 *   vsnapctl scrub STORE|MOUNTPOINT             read and verify every block; exit 1 on damage
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <limits.h>
#include <mntent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vsnapfs/bmap.h"
#include "vsnapfs/chunk.h"

static bool json;
static bool progress;

struct store {
	char dir[PATH_MAX];
	struct bmap *bm;
	struct chunk_store *cs;
	uint32_t bs;
};

/* ---- opening --------------------------------------------------------------- */

/* The store behind arg: arg itself if it holds index.sqlite, else the store
 * of the vsnapfs mounted at arg. */
static int resolve_store(const char *arg, char *out, size_t outlen)
{
	char real[PATH_MAX], probe[PATH_MAX + 16];
	struct mntent *me;
	FILE *mf;
	int rc = -ENOENT;

	if (!realpath(arg, real))
		return -errno;
	snprintf(probe, sizeof(probe), "%s/index.sqlite", real);
	if (access(probe, F_OK) == 0) {
		snprintf(out, outlen, "%s", real);
		return 0;
	}
	mf = setmntent("/proc/self/mounts", "r");
	if (!mf)
		return -errno;
	while ((me = getmntent(mf))) {
		if (strcmp(me->mnt_dir, real) || strncmp(me->mnt_fsname, "vsnapfs:", 8))
			continue;
		snprintf(out, outlen, "%s", me->mnt_fsname + 8);
		rc = 0;
	}
	endmntent(mf);
	return rc;
}

static int store_open(const char *arg, struct store *st)
{
	char path[PATH_MAX + 32];
	int rc;

	rc = resolve_store(arg, st->dir, sizeof(st->dir));
	if (rc) {
		fprintf(stderr, "vsnapctl: %s is neither a vsnapfs store nor a vsnapfs mount point\n", arg);
		return rc;
	}
	snprintf(path, sizeof(path), "%s/index.sqlite", st->dir);
	rc = bmap_open(path, 1, &st->bm);
	if (rc) {
		fprintf(stderr, "vsnapctl: %s: %s\n", path,
			rc == -EUCLEAN ? "damaged or not a vsnapfs index" :
			rc == -EPROTONOSUPPORT ? "unknown format version" : strerror(-rc));
		return rc;
	}
	st->bs = bmap_block_size(st->bm);
	snprintf(path, sizeof(path), "%s/chunks", st->dir);
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

/* ---- the namespace as a flat list ---------------------------------------- */

struct entry {
	struct bmap_inode in;
	char path[PATH_MAX];
};

struct entries {
	struct entry *v;
	size_t n, cap;
	int rc;
};

static int entries_push(struct entries *es, const struct bmap_inode *in, const char *path)
{
	if (es->n == es->cap) {
		size_t cap = es->cap ? es->cap * 2 : 64;
		struct entry *v = realloc(es->v, cap * sizeof(*v));

		if (!v)
			return es->rc = -ENOMEM;
		es->v = v;
		es->cap = cap;
	}
	es->v[es->n].in = *in;
	snprintf(es->v[es->n].path, sizeof(es->v[es->n].path), "%s", path);
	es->n++;
	return 0;
}

struct kids {
	struct bmap_inode *v;
	size_t n, cap;
	int rc;
};

static int kid_add(void *ctx, const struct bmap_inode *in)
{
	struct kids *k = ctx;

	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 32;
		struct bmap_inode *v = realloc(k->v, cap * sizeof(*v));

		if (!v)
			return k->rc = -ENOMEM;
		k->v = v;
		k->cap = cap;
	}
	k->v[k->n++] = *in;
	return 0;
}

/* Every inode under dir (depth first), with its path. */
static int walk(struct bmap *bm, uint64_t dir, const char *prefix, struct entries *es, int depth)
{
	struct kids k = { 0 };
	int rc;

	if (depth > 4096)
		return -ELOOP;
	rc = bmap_dir_list(bm, dir, 0, kid_add, &k);
	if (!rc)
		rc = k.rc;
	for (size_t i = 0; i < k.n && !rc; i++) {
		char path[PATH_MAX];

		snprintf(path, sizeof(path), "%s/%s", prefix, k.v[i].name);
		rc = entries_push(es, &k.v[i], path);
		if (!rc && k.v[i].kind == BMAP_DIR)
			rc = walk(bm, k.v[i].ino, path, es, depth + 1);
	}
	free(k.v);
	return rc;
}

static int orphan_add(void *ctx, const struct bmap_inode *in)
{
	return entries_push(ctx, in, "(unlinked)");
}

static int all_entries(struct store *st, struct entries *es)
{
	int rc = walk(st->bm, BMAP_ROOT_INO, "", es, 0);

	if (!rc)
		rc = bmap_orphan_list(st->bm, orphan_add, es);
	return rc ? rc : es->rc;
}

/* ---- list ----------------------------------------------------------------- */

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
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

static int cmd_list(struct store *st)
{
	struct entries es = { 0 };
	int rc = all_entries(st, &es);
	bool first = true;

	if (rc) {
		fprintf(stderr, "vsnapctl: listing: %s\n", strerror(-rc));
		goto out;
	}
	if (json)
		printf("[");
	else
		printf("%-40s %10s %10s %10s %s\n", "VOLUME", "SIZE", "ALLOCATED", "EXCLUSIVE", "ORIGIN");
	for (size_t i = 0; i < es.n; i++) {
		struct entry *e = &es.v[i];
		uint64_t nrows = 0, alloc;
		char s1[16], s2[16];

		if (e->in.kind != BMAP_VOL)
			continue;
		rc = bmap_row_count(st->bm, e->in.node, &nrows);
		if (rc)
			goto out;
		/* nothing is shared yet: a volume's own blocks are all exclusive */
		alloc = nrows * st->bs;
		if (json) {
			printf("%s{\"path\":", first ? "" : ",");
			json_str(e->path);
			printf(",\"kind\":\"volume\",\"size\":%" PRIu64 ",\"allocated\":%" PRIu64
			       ",\"exclusive\":%" PRIu64 ",\"origin\":null}", e->in.size, alloc, alloc);
		} else {
			human(e->in.size, s1, sizeof(s1));
			human(alloc, s2, sizeof(s2));
			printf("%-40s %10s %10s %10s %s\n", e->path, s1, s2, s2, "-");
		}
		first = false;
	}
	if (json)
		printf("]\n");
out:
	free(es.v);
	return rc ? 2 : 0;
}

/* ---- check ---------------------------------------------------------------- */

struct chunkfile {
	uint64_t id;
	uint32_t nslots;
};

struct check {
	struct store *st;
	struct chunkfile *files;
	size_t nfiles, cap;
	uint32_t *slots;                /* slots referenced in the chunk being checked */
	size_t nslots, slots_cap;
	uint64_t problems;
	uint64_t rows;
	int rc;
};

static void problem(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(struct check *c, const char *fmt, ...)
{
	va_list ap;

	if (c->problems++ < 1000) {
		va_start(ap, fmt);
		printf("problem: ");
		vprintf(fmt, ap);
		printf("\n");
		va_end(ap);
	}
}

static int file_add(void *ctx, uint64_t id, uint32_t nslots)
{
	struct check *c = ctx;

	if (c->nfiles == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 64;
		struct chunkfile *v = realloc(c->files, cap * sizeof(*v));

		if (!v)
			return c->rc = -ENOMEM;
		c->files = v;
		c->cap = cap;
	}
	c->files[c->nfiles++] = (struct chunkfile){ id, nslots };
	return 0;
}

static const struct chunkfile *file_find(struct check *c, uint64_t id)
{
	size_t lo = 0, hi = c->nfiles;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (c->files[mid].id == id)
			return &c->files[mid];
		if (c->files[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

struct refd {
	uint64_t *ids, *counts;
	size_t n, cap;
	int rc;
};

static int refd_add(void *ctx, uint64_t id, uint64_t count)
{
	struct refd *r = ctx;

	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 64;
		uint64_t *a = realloc(r->ids, cap * sizeof(*a));
		uint64_t *b = a ? realloc(r->counts, cap * sizeof(*b)) : NULL;

		if (a)
			r->ids = a;
		if (!a || !b)
			return r->rc = -ENOMEM;
		r->counts = b;
		r->cap = cap;
	}
	r->ids[r->n] = id;
	r->counts[r->n++] = count;
	return 0;
}

static int slot_add(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc)
{
	struct check *c = ctx;

	if (c->nslots == c->slots_cap) {
		size_t cap = c->slots_cap ? c->slots_cap * 2 : 1024;
		uint32_t *v = realloc(c->slots, cap * sizeof(*v));

		if (!v)
			return c->rc = -ENOMEM;
		c->slots = v;
		c->slots_cap = cap;
	}
	c->slots[c->nslots++] = loc->slot;
	c->rows++;
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Node ids that exist, as found by walking from every volume. */
static int check_nodes(struct check *c, struct entries *es)
{
	for (size_t i = 0; i < es->n; i++) {
		const struct bmap_inode *in = &es->v[i].in;
		uint64_t id = in->node, depth = 0;
		struct bmap_node n;

		if (in->kind != BMAP_VOL)
			continue;
		while (id) {
			int rc = bmap_node_get(c->st->bm, id, &n);

			if (rc == -ENOENT) {
				problem(c, "%s: map node %" PRIu64 " does not exist", es->v[i].path, id);
				break;
			}
			if (rc)
				return rc;
			if (++depth > (1u << 20)) {
				problem(c, "%s: the ancestors of map node %" PRIu64 " form a loop",
					es->v[i].path, in->node);
				break;
			}
			id = n.parent;
		}
	}
	return 0;
}

static int cmd_check(struct store *st)
{
	struct check c = { .st = st };
	struct refd r = { 0 };
	struct entries es = { 0 };
	int rc;

	rc = chunk_foreach(st->cs, file_add, &c);
	if (!rc)
		rc = c.rc;
	if (!rc)
		rc = bmap_chunk_refs(st->bm, refd_add, &r);
	if (!rc)
		rc = r.rc;
	for (size_t i = 0; i < r.n && !rc; i++) {
		const struct chunkfile *f = file_find(&c, r.ids[i]);

		c.nslots = 0;
		rc = bmap_chunk_rows(st->bm, r.ids[i], slot_add, &c);
		if (!rc)
			rc = c.rc;
		if (rc)
			break;
		if (!f) {
			problem(&c, "chunk %016" PRIx64 ": file missing; %zu block(s) point into it",
				r.ids[i], c.nslots);
			continue;
		}
		qsort(c.slots, c.nslots, sizeof(c.slots[0]), cmp_u32);
		for (size_t j = 0; j < c.nslots; j++) {
			if (c.slots[j] >= f->nslots) {
				problem(&c, "chunk %016" PRIx64 ": slot %u is past the end of the file "
					"(%u slots)", r.ids[i], c.slots[j], f->nslots);
			}
			if (j && c.slots[j] == c.slots[j - 1])
				problem(&c, "chunk %016" PRIx64 ": slot %u has two owners", r.ids[i],
					c.slots[j]);
		}
	}
	if (!rc)
		rc = all_entries(st, &es);
	if (!rc)
		rc = check_nodes(&c, &es);
	if (rc) {
		fprintf(stderr, "vsnapctl: check: %s\n", strerror(-rc));
	} else if (json) {
		printf("{\"problems\":%" PRIu64 ",\"blocks\":%" PRIu64 ",\"chunks\":%zu,\"inodes\":%zu}\n",
		       c.problems, c.rows, c.nfiles, es.n);
	} else {
		printf("%s: %" PRIu64 " block(s) in %zu chunk file(s), %zu inode(s): %s\n", st->dir,
		       c.rows, c.nfiles, es.n, c.problems ? "PROBLEMS FOUND" : "clean");
	}
	free(c.files);
	free(c.slots);
	free(r.ids);
	free(r.counts);
	free(es.v);
	return rc ? 2 : c.problems ? 1 : 0;
}

/* ---- scrub ---------------------------------------------------------------- */

struct scrub {
	struct store *st;
	struct entries *es;
	uint8_t *buf;
	uint64_t blocks, bad, done_rows, total_rows;
};

static const char *owner_of(struct scrub *s, uint64_t node)
{
	for (size_t i = 0; i < s->es->n; i++)
		if (s->es->v[i].in.kind == BMAP_VOL && s->es->v[i].in.node == node)
			return s->es->v[i].path;
	return "(no volume: a frozen node)";
}

static int scrub_row(void *ctx, uint64_t node, uint64_t lblock, const struct chunk_loc *loc)
{
	struct scrub *s = ctx;
	int rc = chunk_read(s->st->cs, loc, 1, s->buf, NULL);

	s->blocks++;
	if (rc) {
		s->bad++;
		printf("damaged: %s offset %" PRIu64 ": chunk %016" PRIx64 " slot %u: %s\n",
		       owner_of(s, node), lblock * s->st->bs, loc->chunk_id, loc->slot,
		       rc == -EBADMSG ? "checksum mismatch" :
		       rc == -ENOENT ? "chunk file missing" : strerror(-rc));
	}
	if (progress && (s->blocks & 4095) == 0 && s->total_rows)
		fprintf(stderr, "\rscrub: %3" PRIu64 "%%", s->blocks * 100 / s->total_rows);
	return 0;
}

static int cmd_scrub(struct store *st)
{
	struct refd r = { 0 };
	struct entries es = { 0 };
	struct scrub s = { .st = st, .es = &es };
	int rc;

	s.buf = malloc(st->bs);
	if (!s.buf)
		return 2;
	rc = all_entries(st, &es);
	if (!rc)
		rc = bmap_chunk_refs(st->bm, refd_add, &r);
	if (!rc)
		rc = r.rc;
	for (size_t i = 0; i < r.n; i++)
		s.total_rows += r.counts[i];
	for (size_t i = 0; i < r.n && !rc; i++)
		rc = bmap_chunk_rows(st->bm, r.ids[i], scrub_row, &s);
	if (progress)
		fprintf(stderr, "\r              \r");
	if (rc)
		fprintf(stderr, "vsnapctl: scrub: %s\n", strerror(-rc));
	else if (json)
		printf("{\"blocks\":%" PRIu64 ",\"damaged\":%" PRIu64 "}\n", s.blocks, s.bad);
	else
		printf("%s: %" PRIu64 " block(s) verified, %" PRIu64 " damaged\n", st->dir, s.blocks,
		       s.bad);
	free(s.buf);
	free(r.ids);
	free(r.counts);
	free(es.v);
	return rc ? 2 : s.bad ? 1 : 0;
}

/* ---- main ----------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: vsnapctl [--json] COMMAND [ARGS]\n"
		"\n"
		"  list  [STORE|MOUNTPOINT]   volumes with size and allocated bytes\n"
		"  check STORE|MOUNTPOINT     verify the index against the chunk files (exit 1: problems)\n"
		"  scrub STORE|MOUNTPOINT     read every block and verify its checksum (exit 1: damage)\n"
		"\n"
		"STORE is a store directory; a MOUNTPOINT of a running vsnapfs names its store.\n");
}

int main(int argc, char **argv)
{
	struct store st = { 0 };
	const char *cmd, *arg;
	int i = 1, rc;

	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--version")) {
			printf("vsnapctl %s\n", VSNAPFS_VERSION);
			return 0;
		} else {
			fprintf(stderr, "vsnapctl: unknown option %s\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return 2;
	}
	cmd = argv[i++];
	arg = i < argc ? argv[i] : ".";
	progress = isatty(2) && !json;
	if (strcmp(cmd, "list") && strcmp(cmd, "check") && strcmp(cmd, "scrub")) {
		fprintf(stderr, "vsnapctl: unknown command %s\n", cmd);
		usage(stderr);
		return 2;
	}
	if (store_open(arg, &st)) {
		store_close(&st);
		return 2;
	}
	if (!strcmp(cmd, "list"))
		rc = cmd_list(&st);
	else if (!strcmp(cmd, "check"))
		rc = cmd_check(&st);
	else
		rc = cmd_scrub(&st);
	store_close(&st);
	return rc;
}
