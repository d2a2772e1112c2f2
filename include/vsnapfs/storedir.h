/*
 * storedir: the store directory as other programs see it: the names of its
 * entries, the file system name a mount carries, and whether a daemon holds
 * it.  One home for these facts, for the daemon (src/ns, src/main.c) and
 * for vsnapctl (src/ctl), so that the two cannot drift apart.
 *
 *   STORE/index.sqlite   the index (vsnapfs/bmap.h)
 *   STORE/chunks/        chunk files (vsnapfs/chunk.h)
 *   STORE/spare/         removed chunk files kept for reuse while writing
 *   STORE/lock           holds the pid of the daemon that has the store
 *   STORE/ctl.sock       the running daemon's control channel (vsnapfs/ctlmsg.h)
 *
 * The lock itself is an flock() on the store directory (not on STORE/lock,
 * which a user may delete or replace); a mount's fsname is "vsnapfs:STORE"
 * with STORE absolute.
 *
 * Errors:     calls returning int return 0 or a negative errno.
 * Threads:    any call from any thread; nothing is kept between calls.
 */
#ifndef VSNAPFS_STOREDIR_H
#define VSNAPFS_STOREDIR_H

#include <stdbool.h>
#include <stddef.h>

#define STOREDIR_INDEX          "index.sqlite"
#define STOREDIR_CHUNKS         "chunks"
#define STOREDIR_SPARE          "spare"
#define STOREDIR_LOCK           "lock"
#define STOREDIR_CTL_SOCK       "ctl.sock"      /* the control channel (vsnapfs/ctlmsg.h) */
#define STOREDIR_FSNAME_PREFIX  "vsnapfs:"      /* then the store's absolute path */

/*
 * Whether some process holds an flock() on the store directory dir (a
 * mounted daemon), read from /proc/locks: taking the lock, even briefly,
 * could make a daemon starting at that moment refuse.  1: held, with the
 * holder's pid in pid (may be NULL; "" if /proc/locks does not say);
 * 0: not held; negative errno: cannot tell (dir cannot be stat()ed or
 * /proc/locks read).  Waiters ("->" lines) are not holders.
 */
int storedir_lock_holder(const char *dir, char *pid, size_t pidlen);

#endif
