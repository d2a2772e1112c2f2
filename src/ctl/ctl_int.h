/*
 * vsnapctl's internal header: what its files share.
 *
 *   main.c     the command line: options, dispatch, usage
 *   output.c   small helpers for output: JSON strings, sizes, the progress bar
 *   store.c    finding the store behind a path, opening it read-only
 *   report.c   the problems and warnings check collects
 *   model.c    the namespace in memory: files, snapshots, map nodes
 *   list.c     vsnapctl list (exclusive bytes, origin of clones)
 *   tree.c     vsnapctl tree
 *   rows.c     every data block of the store, grouped by chunk (check, scrub)
 *   check.c    vsnapctl check
 *   scrub.c    vsnapctl scrub
 *   diff.c     vsnapctl diff
 *   chan.c     the control channel to a running daemon (vsnapfs/ctlmsg.h)
 *   gc.c       vsnapctl gc
 *   send.c     vsnapctl send
 *   receive.c  vsnapctl receive
 *
 * Access.  The index is opened read-only (SQLite WAL lets us read while the
 * daemon writes; every bmap call sees the last committed state) and chunk
 * files are read directly.  vsnapctl calls only bmap_* and chunk_*, never
 * SQLite; what a store directory holds and who has its lock come from
 * vsnapfs/storedir.h, what a node shows from the chain queries of
 * vsnapfs/bmap.h: the daemon's own rules, not copies.
 *
 * Errors: calls returning int return 0 or a negative errno; the cmd_*
 * functions return the exit status (0 clean, 1 problems or damage, 2 usage
 * or I/O error) and have said why on stderr.
 */
#ifndef VSNAPCTL_CTL_INT_H
#define VSNAPCTL_CTL_INT_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "vsnapfs/bmap.h"
#include "vsnapfs/stream.h"
#include "vsnapfs/chunk.h"

#define NONE            SIZE_MAX
#define REPORT_MAX      1000            /* problem lines kept and printed */

extern bool json;                       /* --json */
extern bool progress;                   /* stderr is a TTY and not --json */

/* ---- output.c ------------------------------------------------------------------ */

char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* s as a JSON string, quotes included. */
void json_str(FILE *f, const char *s);
/* bytes as "123", "4.0K", "1.5G". */
void human(uint64_t bytes, char *out, size_t len);

struct progress {
	const char *what;
	uint64_t total, done;
	int pct;                        /* last shown, -1: nothing shown yet */
	bool bytes;                     /* progress_bytes: done/total are bytes */
	int64_t start_ns, shown_ns;     /* progress_bytes: when it started, last drawn */
};

void progress_start(struct progress *p, const char *what, uint64_t total);
/* The same for a transfer: the line shows bytes, rate and ETA. */
void progress_bytes(struct progress *p, const char *what, uint64_t total);
void progress_show(struct progress *p);
void progress_end(struct progress *p);

/* ---- store.c ------------------------------------------------------------------- */

struct store {
	char dir[PATH_MAX];
	char rel[PATH_MAX];             /* path below the mount point, "" if none */
	struct bmap *bm;
	struct chunk_store *cs;         /* check and scrub only */
	uint32_t bs;
	bool in_use;                    /* a daemon holds the store (its directory's flock) */
};

/*
 * The store behind arg: arg itself if it holds index.sqlite, else the store
 * of the vsnapfs mounted at arg or at the nearest mount point above it; rel
 * gets the path of arg below that mount point ("" for the mount point).
 * -ENOENT if there is none.
 */
int store_resolve(const char *arg, char *dir, size_t dirlen, char *rel, size_t rellen);
/* The store behind arg (a store directory, a mount point, or a path inside
 * a mount), its index opened read-only, and its chunk store if chunks.
 * Says why on stderr when it fails; store_close() in every case. */
int store_open(const char *arg, bool chunks, struct store *st);
void store_close(struct store *st);

/* ---- chan.c -------------------------------------------------------------------- */

struct ctl_msg;
/* One request to the daemon serving the store dir, its reply in rep: 0, a
 * negative errno of the channel, or the daemon's status.  Unless quiet,
 * says why on stderr (the daemon's msg= line for a refusal). */
int chan_call(const char *dir, struct ctl_msg *req, struct ctl_msg *rep, bool quiet);

/* ---- report.c ------------------------------------------------------------------ */

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

void report_free(struct report *r);
/* One line; r NULL drops it.  Past REPORT_MAX lines only counted. */
void report_add(struct report *r, bool warning, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define PROBLEM(r, ...) report_add((r), false, __VA_ARGS__)
#define WARNING(r, ...) report_add((r), true, __VA_ARGS__)

/* ---- model.c ------------------------------------------------------------------- */

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

/* Load the namespace (see model.c); problems it finds go to rep (may be
 * NULL).  model_free() in every case. */
int model_load(struct store *st, struct model *m, struct report *rep);
void model_free(struct model *m);
/* The index of node id in m->nodes, or NONE. */
size_t node_find(const struct model *m, uint64_t id);
/* The node's data blocks (node.nblocks), read once. */
int node_rows(struct store *st, struct mnode *x, uint64_t *nrows);
/* How a node is named, for messages: its first file, or what it is. */
const char *node_label(const struct model *m, size_t x, char *buf, size_t len);
/* The file whose path is path (as list shows it), or NULL. */
const struct file *file_by_path(const struct model *m, const char *path);
/* The volume or snapshot file at arg (a path in a mount of the store dir),
 * or NULL after one line on stderr saying why (cmd: the command's name). */
const struct file *file_at(const struct model *m, const char *dir, const char *arg,
			   const char *cmd);

/* ---- rows.c -------------------------------------------------------------------- */

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

/* Rows a rowset holds at most: $VSNAPCTL_ROWS_PER_PASS, else 16 M. */
size_t rows_per_pass(void);
/* One scan: the rows with chunk >= lo, as many chunks as fit, sorted by
 * (chunk, slot).  rs->hi tells where the next pass starts (UINT64_MAX:
 * nothing left). */
int rowset_scan(struct bmap *bm, struct rowset *rs, uint64_t lo);

/* ---- the commands ---------------------------------------------------------------- */

int cmd_list(struct store *st);
int cmd_tree(struct store *st);
int cmd_check(struct store *st);
int cmd_scrub(struct store *st);
int cmd_gc(struct store *st);

struct send_opts {
	const char *b, *from, *resume;  /* the snapshot's file, --from, --resume */
	bool dry, verbose;              /* -n, -v */
	bool compress;                  /* -c: zstd */
};
int cmd_send(struct store *st, const struct send_opts *o);

struct recv_opts {
	const char *path;               /* the volume in a mount */
	bool force;                     /* --force */
	bool resume;                    /* --resume */
	bool token, abort;              /* --token, --abort: the kept parts in PATH's directory */
};

/* What a cut receive kept, as its temporary volume's name (after
 * CTL_RECV_TMP_PREFIX) and its resume token say: GUID.BASE.K.OFF.CHAIN
 * (docs/design.md, "Resume"). */
struct recv_token {
	uint8_t guid[STREAM_GUID_BYTES], base[STREAM_GUID_BYTES];     /* base all 0: full */
	struct stream_pos pos;          /* rec, off, chain; data_bytes unused */
};
/* 0, or -EINVAL for text that is not a token. */
int recv_token_parse(const char *s, struct recv_token *t);
/* Opens the store behind path itself (path need not exist). */
int cmd_receive(const struct recv_opts *o);
/* a and b: two paths in one store, already opened as st (from a). */
int cmd_diff(struct store *st, const char *a, const char *b);

#endif
