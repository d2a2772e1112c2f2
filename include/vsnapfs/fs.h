/*
 * FUSE front end: the libfuse low-level operations table of vsnapfs.
 *
 * Every request maps onto one call of the namespace layer (vsnapfs/ns.h);
 * FUSE inode numbers are the namespace's, the root is FUSE_ROOT_ID ==
 * NS_ROOT_INO.  The session's userdata must be the struct ns * the
 * operations serve; it stays the caller's (main opens and closes it).
 *
 * Only src/fs and src/main.c include libfuse's headers, and they do so
 * through this file, so that the API version is chosen in one place.
 *
 * Threads:    the table is constant; its operations may run on any number
 *             of FUSE worker threads at once.
 */
#ifndef VSNAPFS_FS_H
#define VSNAPFS_FS_H

/* 3.14 is what Debian 12 ships; it selects fuse_loop_cfg_*() and the
 * 3.12+ fuse_session_loop_mt(). */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#define FS_MAX_WRITE_BYTES      (1u << 20)  /* largest read/write request we ask for */
#define FS_MAX_READAHEAD_BYTES  (1u << 20)

/* The operations; pass sizeof(*fs_ops()) as op_size to fuse_session_new(). */
const struct fuse_lowlevel_ops *fs_ops(void);

/* An ns_inval_fn (vsnapfs/ns.h) for the session se: the kernel forgets
 * its cached entry dir/name (fuse_lowlevel_notify_inval_entry). */
void fs_inval_entry(void *se, uint64_t dir, const char *name);

#endif
