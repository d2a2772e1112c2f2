/*
 * vsnapctl's internal header: what its files share.
 *
 *   main.c     the command line: global options, the table of subcommands
 *   cli.c      one subcommand's command line: getopt_long, --help, errors
 *   output.c   small helpers for output: JSON strings, sizes, progress
 *   table.c    tables and their JSON (libsmartcols): columns, -o, -n, -b, --raw
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
 *   status.c   vsnapctl status; finding the daemon of a mounted store
 *   iostat.c   vsnapctl iostat; the daemon's per-volume counters
 *   metrics.c  vsnapctl metrics (Prometheus text format)
 *   send.c     vsnapctl send
 *   sendtree.c vsnapctl send of a directory snapshot (a directory stream)
 *   receive.c  vsnapctl receive
 *   recvtree.c vsnapctl receive of a directory stream
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

#include <getopt.h>
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
extern bool progress;                   /* show progress: stderr is a TTY and not
					 * --json, or --progress=plain */
extern bool progress_plain;             /* --progress=plain: lines, not redrawn */

/* ---- cli.c ---------------------------------------------------------------------- */

struct store;

/* Options a command shares with others (struct cmd.common). */
#define CLI_JSON        0x1             /* --json */
#define CLI_PROGRESS    0x2             /* --progress=auto|plain|none */

/*
 * A subcommand: one of these in its own file, one line in main.c's table.
 * run gets argv[0] = the name and returns the exit status; it parses its
 * options with cli_next().  A command with no options of its own and one
 * operand naming a store (default ".") gives run_store instead: main opens
 * the store (cli_store_main) and calls it.
 */
struct cmd {
	const char *name;
	const char *synopsis;           /* what follows the name: "[-n] [PATH]" */
	const char *summary;            /* one line, for vsnapctl --help */
	const char *help;               /* of vsnapctl NAME --help: operands, options */
	unsigned common;                /* CLI_* options it takes */
	void (*help_more)(FILE *f);     /* NULL, or prints more of --help (columns) */
	int (*run)(int argc, char **argv);
	int (*run_store)(struct store *st);     /* with no run */
	bool chunks;                    /* run_store: open the chunk store too */
};

#define CLI_OPTS_MAX    32
#define CLI_STOP        (-2)

struct cli {
	const struct cmd *cmd;
	const char *shortopts;          /* the command's own, getopt style; NULL: none */
	const struct option *longopts;  /* the command's own, {0}-terminated; NULL: none */
	int min_args, max_args;         /* operands */
	const char *missing;            /* what to say when operands are missing */
	int exit;                       /* after CLI_STOP: the exit status */
	/* cli_next's own */
	bool ready;
	struct option all[CLI_OPTS_MAX];
	char shorts[64];
};

/*
 * The next option of the command's own (getopt_long's value, optarg set),
 * -1 when the options are done and the operands argv[optind..] are within
 * min_args..max_args, or CLI_STOP: --help printed (c->exit 0) or one line
 * said what is wrong (c->exit 2).  The shared options are handled here.
 */
int cli_next(struct cli *c, int argc, char **argv);
/* The word to name for getopt's '?' (before: optind before the call):
 * "-x" in buf for a short option, else the word itself. */
const char *cli_bad_word(char **argv, int before, char *buf, size_t len);
/* "vsnapctl NAME: <what>; see vsnapctl NAME --help" on stderr; returns 2. */
int cli_bad(const struct cmd *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* vsnapctl NAME --help. */
void cli_help(const struct cmd *cmd, FILE *f);
/* A command of run_store: its options parsed, its store opened (a store,
 * mount point or path in a mount; default "."), run_store's exit status. */
int cli_store_main(const struct cmd *cmd, int argc, char **argv);

/* ---- output.c ------------------------------------------------------------------ */

char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* s as a JSON string, quotes included. */
void json_str(FILE *f, const char *s);
/* s for a message, with every byte the locale cannot print as a character
 * (controls, a sequence that is not one, and '\\') as \xNN: for names that
 * come from outside (a stream).  Cut to fit len (at least 6); returns out. */
#define TEXT_ESC_MAX(n) (4 * (n) + 1)   /* out's bytes for a string of n bytes */
const char *text_esc(const char *s, char *out, size_t len);
/* bytes as "123", "4.0K", "1.5G". */
void human(uint64_t bytes, char *out, size_t len);
/* unix_s as strftime's fmt says in local time; "@SECONDS" if it cannot. */
void local_time(int64_t unix_s, const char *fmt, char *out, size_t len);

struct progress {
	const char *what;
	uint64_t total, done;           /* in units */
	uint32_t unit;                  /* bytes a unit */
	int pct;                        /* last shown, -1: nothing shown yet */
	int64_t start_ns, shown_ns;     /* when it started, last shown */
};

#define PROGRESS_PLAIN_SECS 5           /* --progress=plain: a line this often */

/* Progress of a transfer of total bytes (set p->total later if unknown,
 * count p->done): the line shows bytes, rate and ETA. */
void progress_bytes(struct progress *p, const char *what, uint64_t total);
/* The same counted in blocks of block_bytes. */
void progress_blocks(struct progress *p, const char *what, uint64_t total, uint32_t block_bytes);
void progress_show(struct progress *p);
/* CLOCK_MONOTONIC, for how long something took; CLOCK_REALTIME, for when. */
int64_t mono_ns(void);
int64_t wall_ns(void);
/* Erase the line on a TTY, before printing something else. */
void progress_clear(struct progress *p);
/* Done: erased on a TTY; plain, a last line with the time taken. */
void progress_end(struct progress *p);

/* ---- table.c ------------------------------------------------------------------- */

enum table_type {
	TT_TEXT,
	TT_BYTES,                       /* "8.0M"; exact with -b; a number in JSON */
	TT_COUNT,                       /* a number */
	TT_TIME,                        /* local time; seconds since the epoch in JSON */
	TT_RATE,                        /* a count per second: "12.5"; exact with -b */
	TT_LATENCY,                     /* seconds: "250us", "1.5ms"; with -b whole
					 * microseconds; seconds in JSON */
};

struct table_col {                      /* a column, described once */
	const char *name;               /* the header, what -o takes: "SIZE" */
	const char *json;               /* its --json key, with its unit: "size_bytes" */
	enum table_type type;
	bool dflt;                      /* shown without -o (--json: every column) */
	const char *help;               /* a few words for --help */
	bool wrap;                      /* a path: wrapped in its cell when a table is
					 * wider than the terminal */
};

struct table_opts {
	const char *columns;            /* -o: "PATH,SIZE"; "+NODE" adds to the default; NULL */
	bool noheadings, bytes, raw;    /* -n, -b, --raw (--json is the global json) */
};

struct table;
/* A table named name (the key of its JSON array) of the columns o selects;
 * -EINVAL after saying in one line that -o names no such column.
 * table_free() in every case. */
int table_new(const char *name, const struct table_col *cols, size_t ncols,
	      const struct table_opts *o, const struct cmd *cmd, struct table **out);
/* A new row; the calls below fill its cells (columns not shown are
 * ignored).  An error filling the table is kept and returned by
 * table_print(), which then prints nothing. */
void table_row(struct table *t);
/* s NULL: no value ("-"; null in JSON). */
void table_text(struct table *t, size_t col, const char *s);
/* TT_BYTES or TT_COUNT. */
void table_u64(struct table *t, size_t col, uint64_t v);
void table_time(struct table *t, size_t col, int64_t unix_ns);
/* TT_RATE, TT_LATENCY, or TT_BYTES (rounded); v < 0: no value. */
void table_double(struct table *t, size_t col, double v);
/* To stdout: 0, the first error filling it, or libsmartcols'. */
int table_print(struct table *t);
void table_free(struct table *t);       /* NULL is fine */
/* The columns, for a command's --help (its struct cmd's help_more). */
void table_help(const struct table_col *cols, size_t ncols, FILE *f);

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
 * -EMEDIUMTYPE if there is none; -ENOENT, -EACCES, -ENOTCONN (a mount whose
 * daemon died), ... if arg cannot be resolved.
 */
int store_resolve(const char *arg, char *dir, size_t dirlen, char *rel, size_t rellen);
/* The same through mounts only (a store directory itself is -EMEDIUMTYPE):
 * for what must go through the daemon's mount (receive). */
int store_resolve_mount(const char *arg, char *dir, size_t dirlen, char *rel, size_t rellen);
/* What a store_resolve() error means, in a few words. */
const char *store_why(int rc);
/* store_resolve(), and when it fails one line on stderr saying why
 * ("vsnapctl: ARG: no such file or directory"), as every command says it. */
int store_find(const char *arg, char *dir, size_t dirlen, char *rel, size_t rellen);
/* The store behind arg (a store directory, a mount point, or a path inside
 * a mount), its index opened read-only, and its chunk store if chunks.
 * Says why on stderr when it fails; store_close() in every case. */
int store_open(const char *arg, bool chunks, struct store *st);
void store_close(struct store *st);
/* Record a scrub's result in the store, for status: through the daemon
 * when mounted, else in the index under the store's lock.  Says nothing:
 * the caller's one line says why it failed. */
int store_record_scrub(struct store *st, const struct bmap_scrub *r);

/* ---- chan.c -------------------------------------------------------------------- */

struct ctl_msg;
/* One request to the daemon serving the store dir, its reply in rep: 0, a
 * negative errno of the channel, or the daemon's status.  Unless quiet,
 * says why on stderr (the daemon's msg= line for a refusal). */
int chan_call(const char *dir, struct ctl_msg *req, struct ctl_msg *rep, bool quiet);
/* The line chan_call prints for its result rc (unless quiet), tail
 * appended: a caller that called it quiet says more on the same line. */
void chan_report(const char *dir, int rc, const struct ctl_msg *rep, const char *tail);
/* chan_call() of a request of verb with no fields; m gets the reply. */
int chan_ask(const char *dir, uint16_t verb, struct ctl_msg *m, bool quiet);

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
/* The first volume file of snapshot id snap (the one of a FILE@NAME
 * snapshot), or NULL. */
const struct file *file_of_snap(const struct model *m, uint64_t snap);
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

/* ---- status.c, iostat.c, metrics.c: the running daemon (issue 15) ------------------- */

#include "vsnapfs/ctlmsg.h"

enum { VIO_READ, VIO_WRITE, VIO_FSYNC, VIO_KINDS };
extern const char *const vio_kind_name[VIO_KINDS];     /* "read", "write", "fsync" */

struct vio {                            /* one volume's counters since the mount */
	uint64_t ino;
	char *path;                     /* in the mount, or "(deleted, inode N)" */
	uint64_t ops[VIO_KINDS], bytes[VIO_KINDS], errors[VIO_KINDS], lat_ns[VIO_KINDS];
	uint64_t hist[VIO_KINDS][CTL_LAT_BUCKETS];
};

struct vio_set {
	struct vio *v;                  /* in inode order */
	size_t n, cap;
	uint64_t uptime_ns;             /* the daemon's, when it answered */
};

/* Every volume's counters from the daemon serving dir (CTL_IOSTAT, page by
 * page); says why on stderr when it fails. */
int iostat_fetch(const char *dir, struct vio_set *out);
void vio_set_free(struct vio_set *s);
/* The store behind arg, into dir, if a daemon serves it; else one line
 * (store_find's, or "vsnapctl CMD: DIR is not mounted: ...") on stderr
 * and -1. */
int ctl_mounted_store(const char *arg, const struct cmd *cmd, char *dir, size_t len);
/* Host bytes of the files in dir/sub (st_blocks), 0 if it is missing (gc.c). */
uint64_t dir_bytes(const char *dir, const char *sub);

/* ---- the commands (main.c's table) ------------------------------------------------ */

extern const struct cmd list_cmd, tree_cmd, check_cmd, scrub_cmd, diff_cmd, gc_cmd, send_cmd,
       receive_cmd, status_cmd, iostat_cmd, metrics_cmd;

struct send_opts {
	const char *b, *from, *resume;  /* the snapshot's file, --from, --resume */
	bool dry, verbose;              /* -n, -v */
	bool compress;                  /* -c: zstd */
};
int cmd_send(struct store *st, const struct send_opts *o);

/* send.c, for sendtree.c: what to send of one volume. */
struct bext {                           /* a byte extent of the file: data, or zeros */
	uint64_t off, len;
	bool data;
};

struct plan {
	struct bext *v;                 /* in order, disjoint */
	size_t n, cap;
	uint32_t bs;
	uint64_t lo, hi;                /* bytes the runs being added are cut to */
	bool data_only;                 /* drop zero runs (a full stream, a tail) */
	uint64_t bytes, data_bytes, ndata, nzero;
};

/* The extents of B against A (A NULL: a full stream's), from the index;
 * -EXDEV (nothing said) if A and B have no common ancestor.  After an
 * error p->v is the caller's to free (and p to zero before another try). */
int plan_runs(struct store *st, const struct file *a, const struct file *b, struct plan *p);
/* Add the bytes and records of the plan's records from offset resume on. */
void plan_size(struct plan *p, uint64_t resume);
/* Records of the whole plan. */
uint64_t plan_nrec(const struct plan *p);
/* Do the plan's records, after before records of the stream, end exactly
 * at off with the stream's record rec? */
bool plan_fits(const struct plan *p, uint64_t before, uint64_t rec, uint64_t off);
/* The plan's records from offset resume on, the data read from fd. */
int send_runs(struct stream_enc *e, int fd, const struct plan *p, uint64_t resume,
	      struct progress *pg);
/* The stream to stdout: begin sb, body's records, end; planned bytes
 * exactly (at most, compressed).  0, or -ECANCELED after one line. */
int send_write(const struct send_opts *o, const struct stream_begin *sb, uint64_t planned,
	       int (*body)(void *ctx, struct stream_enc *e, struct progress *pg), void *ctx);
/* sendtree.c: B is a directory snapshot (MNT/D/.snapshots/NAME). */
int send_tree(struct store *st, const struct send_opts *o);

struct tent {                           /* an entry of a snapshot's tree */
	char *path;                     /* below the directory: "a/b" */
	struct bmap_inode in;           /* as the snapshot froze it */
};

struct stree {                          /* a directory snapshot's tree */
	struct bmap_snap s;
	uint8_t guid[BMAP_GUID_BYTES];
	struct tent *v;                 /* in stream order (stream_path_cmp) */
	size_t n;
};

/* Snapshot t->s's entries with their paths, from the index (one line and
 * -ECANCELED for a tree that does not hang together). */
int stree_load(struct store *st, struct stree *t);
void stree_free(struct stree *t);
const struct tent *stree_find(const struct stree *t, const char *path);

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
	struct stream_pos pos;          /* rec, off, chain, file; data_bytes unused */
	bool dir;                       /* of a directory stream: GUID.BASE.K.OFF.CHAIN.F,
					 * F the file records kept */
};
/* 0, or -EINVAL for text that is not a token. */
int recv_token_parse(const char *s, struct recv_token *t);
/* Opens the store behind path itself (path need not exist). */
int cmd_receive(const struct recv_opts *o);

#endif
