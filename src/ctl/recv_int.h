/*
 * receive's private header: what receive.c (volumes, and the steps every
 * stream shares) and recvtree.c (directory streams) share.
 *
 * Errors as in ctl_int.h; a refusal has said its one line and is
 * -ECANCELED.
 */
#ifndef VSNAPCTL_RECV_INT_H
#define VSNAPCTL_RECV_INT_H

#include "ctl/ctl_int.h"
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/stream.h"

#define RECV_TMP_PREFIX CTL_RECV_TMP_PREFIX
#define RECV_CKPT_BYTES (8ull << 20)    /* at least this much stream between two */
#define RECV_CKPT_NS    1000000000ll    /* checkpoints, and at least this long: each
					 * costs an fsync and a rename (two flushes) */
#define TOKEN_MAX       160             /* GUID.BASE.K.OFF.CHAIN[.F], NUL included */

struct recv {
	const struct recv_opts *o;
	struct store st;
	struct model m;
	struct stream_begin sb;
	/* the stream's names as messages show them (text_esc) */
	char efile[TEXT_ESC_MAX(STREAM_NAME_MAX)], esnap[TEXT_ESC_MAX(STREAM_NAME_MAX)],
	     ebase[TEXT_ESC_MAX(STREAM_NAME_MAX)];
	char mnt[PATH_MAX];             /* the mount point */
	char dirpath[PATH_MAX];         /* PATH's directory, as given */
	char name[BMAP_NAME_MAX + 1];   /* PATH's last component */
	char tmp[PATH_MAX + 300];       /* the temporary volume's (or directory's) path */
	char tmpname[BMAP_NAME_MAX + 1];
	uint64_t dir_ino;
	uint64_t tmp_ino;               /* the temporary volume this receive wrote */
	const struct file *base;        /* incremental: the base snapshot's file */
	bool made_tmp;                  /* this receive made it: deleted if refused */
	bool keep;                      /* ... unless it holds a part worth resuming */
	uint64_t applied;               /* every byte below it is in the temporary volume */
	uint64_t ckpt_bytes;            /* stream bytes at the last checkpoint */
	int64_t ckpt_ns;                /* CLOCK_MONOTONIC then */
	bool tree;                      /* a directory stream: the temporary is a directory */
	int commit_rc;                  /* the daemon's answer to the commit, if refused */
	struct ctl_msg *reply;          /* ... and its reply (said once, recv_commit_refused) */
	bool said;                      /* an error was said with its entry's path */
	struct bmap_snap bsnap;         /* tree, incremental: the base snapshot */
};

/* One line "vsnapctl: receive: ..." on stderr; returns -ECANCELED. */
int refuse(struct recv *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* PATH's store, mount point, directory inode and name (recv_where). */
int recv_where(struct recv *r);
/* The name of f if it is a temporary volume or directory in PATH's
 * directory, else NULL. */
const char *tmp_in_dir(const struct recv *r, const struct file *f);
/* The kept part of this stream: 0 and its token, or -ENOENT. */
int recv_kept(const struct recv *r, struct recv_token *t);
/* Is s (a name after the prefix) one a receive makes? */
bool recv_made(const char *s, bool *token);
/* A snapshot's NAME (no '@'), by the daemon's rule. */
bool snap_name_ok(const char *name);
/* The temporary's name and path for token t (NULL: while being made). */
void tmp_name(struct recv *r, const struct recv_token *t);
/* Name the temporary after the position of the last record applied, fd
 * (-1: none) fsynced first. */
int recv_ckpt(struct recv *r, struct stream_dec *d, int fd);
/* One data or zero record into fd. */
int recv_record(int fd, const struct stream_rec *rec);
/* A stream the decoder refused: keep the verified part or not, say so. */
int recv_stopped(struct recv *r, struct stream_dec *d, int fd, int rc);
/* --resume: the kept part of this stream, checked to be what the stream
 * continues (the decoder continued from it), its name in r->tmp. */
int recv_resume_part(struct recv *r, struct stream_dec *d, struct recv_token *t);
/* Is the stream's snapshot here already (refused), or the store without
 * ids? */
int recv_check_guid(struct recv *r);
/* Copy [0, size) of the file at src into fd as a linked clone
 * (copy_file_range through the mount: no data is read). */
int recv_clone(const char *src, int fd, uint64_t size);
/* bmap_node_diff callback: *(bool *)ctx = true at the first run, stop. */
int recv_any_run(void *ctx, const struct bmap_run *run);
/* rm -rf path through the mount; 0 if it is not there. */
int recv_rm_rf(const char *path);

/* recvtree.c: the steps of a directory stream (receive.c calls them). */
int rtree_names(struct recv *r);
int rtree_check(struct recv *r);
int rtree_resume(struct recv *r, struct stream_dec *d);
int rtree_tmp(struct recv *r, struct stream_dec *d);
int rtree_apply(struct recv *r, struct stream_dec *d);
/* After the commit: D's owner (root only) and mode, as the stream says. */
int rtree_done(struct recv *r);

#endif
