/*
 * FUSE front end: one libfuse low-level callback per request, each a thin
 * translation onto one namespace call (vsnapfs/ns.h).
 *
 * WHAT LIVES HERE
 * The errno sign (ns returns -errno, fuse_reply_err() wants +errno), the
 * struct ns_attr -> struct stat conversion, the readdir reply buffer and
 * the connection settings negotiated at init.  There is no state of its
 * own: inode numbers are the index's and live as long as the index says,
 * so lookup counts are not kept and forget is a no-op; an open file is the
 * struct ns_file * kept in fi->fh from open/create to release.
 *
 * CONCURRENCY
 * No lock here.  Each callback calls ns, which takes and drops its own
 * locks, and replies only once ns has returned, so no lock is ever held
 * across a reply (a reply can block on the kernel).  The readdir filler
 * runs inside ns_readdir(), possibly under ns locks, and therefore only
 * copies into a private buffer; the reply goes out after ns_readdir().
 *
 * CONNECTION (fs_init)
 *  - max_write 1 MiB: libfuse 3.14 derives the kernel's max_pages from it
 *    and already sizes its request buffer for FUSE_MAX_MAX_PAGES, so a
 *    guest's 1 MiB write arrives as one request (the kernel still caps it
 *    at /proc/sys/fs/fuse/max_pages_limit, 1 MiB by default).
 *  - no writeback cache: a write must have reached ns when write(2)
 *    returns, or a snapshot taken right after would miss it, and
 *    fsync durability would depend on the kernel flushing pages first.
 *  - no atomic O_TRUNC (libfuse turns it on by default): the kernel then
 *    strips O_TRUNC from OPEN and sends SETATTR(size=0) itself, which
 *    fs_setattr already handles; one truncate path, not two.
 *  - no HANDLE_KILLPRIV (also a libfuse default): ns does not clear
 *    setuid/setgid bits on write or chown, so the kernel must, by sending
 *    an explicit SETATTR of the mode.
 *  - readdirplus is not offered (no readdirplus op): it would make the
 *    kernel keep lookup counts we do not need, for little gain on
 *    directories that hold a handful of disk images.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <linux/fuse.h>
#include <sys/uio.h>

#include "vsnapfs/fs.h"
#include "vsnapfs/log.h"
#include "vsnapfs/ns.h"
#include "vsnapfs/tbuf.h"

/* How long the kernel may trust an entry or attributes without asking.
 * Every change goes through this mount, and the kernel updates its cache
 * on its own changes, so a second costs no coherence and saves a GETATTR
 * per stat(2). */
#define FS_TIMEOUT_S 1.0

#define NSEC_PER_SEC 1000000000LL

_Static_assert(FUSE_ROOT_ID == NS_ROOT_INO, "FUSE and ns must agree on the root inode");

static struct ns *req_ns(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct ns_file *fi_file(const struct fuse_file_info *fi)
{
	return (struct ns_file *)(uintptr_t)fi->fh;
}

static struct timespec ns_to_timespec(int64_t t_ns)
{
	struct timespec ts = {
		.tv_sec = t_ns / NSEC_PER_SEC,
		.tv_nsec = t_ns % NSEC_PER_SEC,
	};

	/* C division truncates towards zero; times before 1970 need a
	 * non-negative tv_nsec. */
	if (ts.tv_nsec < 0) {
		ts.tv_nsec += NSEC_PER_SEC;
		ts.tv_sec--;
	}
	return ts;
}

static int64_t timespec_to_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * NSEC_PER_SEC + ts->tv_nsec;
}

static void attr_to_stat(const struct ns_attr *a, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = a->ino;
	st->st_mode = a->mode;
	st->st_nlink = a->nlink;
	st->st_uid = a->uid;
	st->st_gid = a->gid;
	st->st_size = (off_t)a->size;
	st->st_blocks = (blkcnt_t)a->blocks;
	st->st_blksize = a->blksize;
	st->st_atim = ns_to_timespec(a->atime_ns);
	st->st_mtim = ns_to_timespec(a->mtime_ns);
	st->st_ctim = ns_to_timespec(a->ctime_ns);
}

/* Errors a user can cause (ENOENT, EEXIST, EROFS, ENOSPC, ...) are the
 * normal traffic of a file system; these point at damage or a bug. */
static bool err_is_unexpected(int err)
{
	switch (err) {
	case EIO:
	case ENOMEM:
	case EUCLEAN:
	case EBADMSG:
	case EFAULT:
	case EPROTO:
		return true;
	default:
		return false;
	}
}

/*
 * Reply with the error of a failed ns call; rc is a negative errno.  op
 * and ino only name the request in the log.
 */
static void reply_fail(fuse_req_t req, int rc, const char *op, uint64_t ino)
{
	int err = -rc;

	if (rc >= 0) {
		/* ns broke its contract; an error reply of 0 would be taken
		 * as success with an empty payload. */
		vlog(LOG_ERR, "%s ino %" PRIu64 ": ns returned %d where an error was due",
		     op, ino, rc);
		err = EIO;
	} else if (err_is_unexpected(err) && !(err == EIO && ns_sync_failed(req_ns(req)))) {
		/* (after a failed sync every write and fsync fails: said once) */
		vlog(LOG_ERR, "%s ino %" PRIu64 ": %s", op, ino, log_strerror(err));
	}
	fuse_reply_err(req, err);
}

static void entry_fill(const struct ns_attr *a, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = a->ino;
	/* Generation 0: ns never reuses an inode number (AUTOINCREMENT). */
	e->generation = 0;
	e->attr_timeout = FS_TIMEOUT_S;
	e->entry_timeout = FS_TIMEOUT_S;
	attr_to_stat(a, &e->attr);
}

static void reply_entry(fuse_req_t req, const struct ns_attr *a)
{
	struct fuse_entry_param e;

	entry_fill(a, &e);
	fuse_reply_entry(req, &e);
}

static void reply_attr(fuse_req_t req, const struct ns_attr *a)
{
	struct stat st;

	attr_to_stat(a, &st);
	fuse_reply_attr(req, &st, FS_TIMEOUT_S);
}

/* --- session ------------------------------------------------------------ */

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	conn->max_write = FS_MAX_WRITE_BYTES;
	/* The kernel keeps the smaller of this and the mount's bdi
	 * read_ahead_kb (128 KiB unless raised in /sys/class/bdi). */
	conn->max_readahead = FS_MAX_READAHEAD_BYTES;
	conn->time_gran = 1;
	conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_ATOMIC_O_TRUNC |
			FUSE_CAP_HANDLE_KILLPRIV);
	vlog(LOG_DEBUG, "FUSE protocol %u.%u, max_write %u, want 0x%x of 0x%x",
	     conn->proto_major, conn->proto_minor, conn->max_write, conn->want,
	     conn->capable);
}

static void fs_destroy(void *userdata)
{
	/* Nothing: main calls ns_close() after the session, and that flushes
	 * everything, whether the loop ended by unmount or by a signal. */
}

/* --- names ---------------------------------------------------------------- */

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ns_attr a;
	int rc;

	/* A miss is answered with ENOENT, not a cached negative entry: names
	 * can also appear without the kernel's knowledge (vsnapctl works
	 * through the daemon), and a stale "no such file" is worse than a
	 * lookup. */
	rc = ns_lookup(req_ns(req), parent, name, &a);
	if (rc < 0) {
		reply_fail(req, rc, "lookup", parent);
		return;
	}
	reply_entry(req, &a);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	fuse_reply_none(req);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ns_attr a;
	int rc;

	rc = ns_getattr(req_ns(req), ino, &a);
	if (rc < 0) {
		reply_fail(req, rc, "getattr", ino);
		return;
	}
	reply_attr(req, &a);
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *st, int to_set,
		       struct fuse_file_info *fi)
{
	struct ns_attr in, out;
	struct timespec now;
	int which = 0;
	int rc;

	memset(&in, 0, sizeof(in));
	if (to_set & FUSE_SET_ATTR_MODE) {
		in.mode = st->st_mode;
		which |= NS_SET_MODE;
	}
	if (to_set & FUSE_SET_ATTR_UID) {
		in.uid = st->st_uid;
		which |= NS_SET_UID;
	}
	if (to_set & FUSE_SET_ATTR_GID) {
		in.gid = st->st_gid;
		which |= NS_SET_GID;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (st->st_size < 0) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		/* ftruncate(2) comes with fi, truncate(2) without; ns
		 * truncates by inode either way, which also covers an
		 * open file that has been unlinked. */
		in.size = (uint64_t)st->st_size;
		which |= NS_SET_SIZE;
	}
	if (to_set & (FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW))
		clock_gettime(CLOCK_REALTIME, &now);
	/* UTIME_NOW arrives as ATIME|ATIME_NOW with an undefined st_atim. */
	if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
		in.atime_ns = timespec_to_ns(&now);
		which |= NS_SET_ATIME;
	} else if (to_set & FUSE_SET_ATTR_ATIME) {
		in.atime_ns = timespec_to_ns(&st->st_atim);
		which |= NS_SET_ATIME;
	}
	if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
		in.mtime_ns = timespec_to_ns(&now);
		which |= NS_SET_MTIME;
	} else if (to_set & FUSE_SET_ATTR_MTIME) {
		in.mtime_ns = timespec_to_ns(&st->st_mtim);
		which |= NS_SET_MTIME;
	}

	/* Anything else (CTIME, KILL_SUID...) changes nothing we store: ns
	 * sets ctime itself.  Still answer with the current attributes. */
	if (which)
		rc = ns_setattr(req_ns(req), ino, &in, which, &out);
	else
		rc = ns_getattr(req_ns(req), ino, &out);
	if (rc < 0) {
		reply_fail(req, rc, "setattr", ino);
		return;
	}
	reply_attr(req, &out);
}

static void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct ns_attr a;
	int rc;

	/* Every regular file is a volume; devices, FIFOs and sockets have
	 * no place in a store of disk images. */
	if (!S_ISREG(mode)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	rc = ns_create(req_ns(req), parent, name, mode & 07777, ctx->uid, ctx->gid, &a);
	if (rc < 0) {
		reply_fail(req, rc, "mknod", parent);
		return;
	}
	reply_entry(req, &a);
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct ns_attr a;
	int rc;

	rc = ns_mkdir(req_ns(req), parent, name, mode & 07777, ctx->uid, ctx->gid, &a);
	if (rc < 0) {
		reply_fail(req, rc, "mkdir", parent);
		return;
	}
	reply_entry(req, &a);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	int rc;

	rc = ns_unlink(req_ns(req), parent, name);
	if (rc < 0) {
		reply_fail(req, rc, "unlink", parent);
		return;
	}
	fuse_reply_err(req, 0);
}

static void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	int rc;

	rc = ns_rmdir(req_ns(req), parent, name);
	if (rc < 0) {
		reply_fail(req, rc, "rmdir", parent);
		return;
	}
	fuse_reply_err(req, 0);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	int rc;

	/* RENAME_EXCHANGE and RENAME_WHITEOUT are not offered. */
	if (flags & ~(unsigned int)RENAME_NOREPLACE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	rc = ns_rename(req_ns(req), parent, name, newparent, newname, flags);
	if (rc < 0) {
		reply_fail(req, rc, "rename", parent);
		return;
	}
	fuse_reply_err(req, 0);
}

/* Hard and symbolic links have no meaning in a tree of volumes and
 * snapshots; EPERM is what link(2) and symlink(2) return where the file
 * system does not allow them (ENOSYS would read "not implemented"). */
static void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	fuse_reply_err(req, EPERM);
}

static void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, EPERM);
}

/* --- open files ------------------------------------------------------------ */

/*
 * Reply to OPEN or CREATE.  If the reply fails with ENOENT the open(2) was
 * interrupted meanwhile and the kernel will never send RELEASE for this
 * handle, so it is released here; a leaked handle would pin the volume
 * (and make rmdir of its snapshot fail with EBUSY) until unmount.
 */
static void reply_opened(fuse_req_t req, struct ns_file *f, struct fuse_file_info *fi,
			 const struct ns_attr *created)
{
	struct fuse_entry_param e;
	int rc;

	fi->fh = (uint64_t)(uintptr_t)f;
	/* The page cache is dropped at each open; keeping it would be safe
	 * only while nothing changes volumes behind the kernel's back. */
	fi->keep_cache = 0;
	fi->direct_io = 0;
	/*
	 * An O_DIRECT open (QEMU's cache=none) gets FOPEN_DIRECT_IO with
	 * FOPEN_PARALLEL_DIRECT_WRITES: without them the kernel takes the
	 * file's inode lock for every write, so the guest's writer threads on
	 * one disk run one at a time (docs/performance.md, "Parallel O_DIRECT
	 * writes ... FOPEN_PARALLEL_DIRECT_WRITES measured").  libfuse 3.14 has
	 * no fuse_file_info bit for the second flag, so the reply is written
	 * here, as the kernel defines it.  What changes for such an fd:
	 * mmap(MAP_SHARED) fails with ENODEV; I/O of any alignment still
	 * reaches the daemon as it is.  A file created with O_DIRECT gets the
	 * flags from its next open.
	 */
	if (!created && (fi->flags & O_DIRECT)) {
		struct fuse_open_out o = {
			.fh = fi->fh,
			.open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES,
		};
		struct iovec iov = { .iov_base = &o, .iov_len = sizeof(o) };

		rc = fuse_reply_iov(req, &iov, 1);
		if (rc == -ENOENT)
			ns_release(req_ns(req), f);
		return;
	}
	if (created) {
		entry_fill(created, &e);
		rc = fuse_reply_create(req, &e, fi);
	} else {
		rc = fuse_reply_open(req, fi);
	}
	if (rc == -ENOENT)
		ns_release(req_ns(req), f);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ns *ns = req_ns(req);
	struct ns_file *f;
	struct ns_attr a;
	int rc;

	rc = ns_open_file(ns, ino, fi->flags, &f);
	if (rc < 0)
		goto fail;
	/* Not reached while atomic O_TRUNC stays off (see fs_init): the
	 * kernel then strips O_TRUNC and truncates with SETATTR.  Kept so
	 * that turning it on cannot silently skip a truncate. */
	if ((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY) {
		memset(&a, 0, sizeof(a));
		rc = ns_setattr(ns, ino, &a, NS_SET_SIZE, &a);
		if (rc < 0)
			goto fail_release;
	}
	reply_opened(req, f, fi, NULL);
	return;

fail_release:
	ns_release(ns, f);
fail:
	reply_fail(req, rc, "open", ino);
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct ns *ns = req_ns(req);
	struct ns_file *f;
	struct ns_attr a;
	int rc;

	rc = ns_create(ns, parent, name, mode & 07777, ctx->uid, ctx->gid, &a);
	if (rc < 0) {
		reply_fail(req, rc, "create", parent);
		return;
	}
	/* If this fails the volume stays, empty, as after a creat(2) that
	 * was interrupted; removing it again could race with another opener
	 * that found it by name meanwhile. */
	/* The kernel passes open(2)'s flags as they were; the creation ones
	 * are spent, and ns should see what an OPEN would carry. */
	rc = ns_open_file(ns, a.ino, fi->flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC), &f);
	if (rc < 0) {
		reply_fail(req, rc, "create", a.ino);
		return;
	}
	reply_opened(req, f, fi, &a);
}

/* A read is served from this thread's TBUF_READ buffer (vsnapfs/tbuf.h):
 * a fresh 1 MiB allocation per read was a fifth of the daemon's CPU on
 * sequential reads (docs/performance.md, "Read buffers").  The reply copies
 * it before the next request of the thread is read. */
static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	void *buf = NULL;
	ssize_t n;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* the kernel bounds size by max_read/max_pages (1 MiB) */
	if (size && !(buf = tbuf_get(TBUF_READ, size))) {
		reply_fail(req, -ENOMEM, "read", ino);
		return;
	}
	n = ns_read(req_ns(req), fi_file(fi), buf, size, (uint64_t)off);
	if (n < 0)
		reply_fail(req, (int)n, "read", ino);
	else
		fuse_reply_buf(req, buf, (size_t)n);
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	ssize_t n;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	n = ns_write(req_ns(req), fi_file(fi), buf, size, (uint64_t)off);
	if (n < 0) {
		reply_fail(req, (int)n, "write", ino);
		return;
	}
	fuse_reply_write(req, (size_t)n);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	/* close(2) promises no durability and there is no write-back cache to
	 * drain: nothing to do. */
	fuse_reply_err(req, 0);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	ns_release(req_ns(req), fi_file(fi));
	fuse_reply_err(req, 0);
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	int rc;

	/* fdatasync is fsync: the size is committed together with the data,
	 * which is what fdatasync must do anyway, and the rest is cheap. */
	rc = ns_fsync(req_ns(req), fi_file(fi));
	if (rc < 0) {
		reply_fail(req, rc, "fsync", ino);
		return;
	}
	fuse_reply_err(req, 0);
}

static void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	const int known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
	int rc;

	/* COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE, ... move or copy
	 * blocks; a hypervisor never asks for them. */
	if ((mode & ~known) ||
	    ((mode & FALLOC_FL_PUNCH_HOLE) &&
	     mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	rc = ns_fallocate(req_ns(req), fi_file(fi), mode, (uint64_t)off, (uint64_t)len);
	if (rc < 0) {
		reply_fail(req, rc, "fallocate", ino);
		return;
	}
	fuse_reply_err(req, 0);
}

static void fs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	struct ns_attr a;
	uint64_t pos;
	int rc;

	/*
	 * The kernel answers SEEK_SET/CUR/END itself and sends only
	 * SEEK_DATA and SEEK_HOLE.  The others are answered sensibly anyway,
	 * except SEEK_CUR: the position lives in the kernel's struct file.
	 */
	switch (whence) {
	case SEEK_DATA:
	case SEEK_HOLE:
		if (off < 0) {
			fuse_reply_err(req, ENXIO);
			return;
		}
		rc = ns_lseek(req_ns(req), fi_file(fi), (uint64_t)off, whence, &pos);
		if (rc < 0) {
			reply_fail(req, rc, "lseek", ino);
			return;
		}
		fuse_reply_lseek(req, (off_t)pos);
		return;
	case SEEK_SET:
		if (off < 0) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		fuse_reply_lseek(req, off);
		return;
	case SEEK_END:
		rc = ns_getattr(req_ns(req), ino, &a);
		if (rc < 0) {
			reply_fail(req, rc, "lseek", ino);
			return;
		}
		/* 0 - (uint64_t)off: the magnitude, even of INT64_MIN */
		if ((off < 0 && 0 - (uint64_t)off > a.size) ||
		    (off > 0 && (uint64_t)off > (uint64_t)INT64_MAX - a.size)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		fuse_reply_lseek(req, (off_t)(a.size + (uint64_t)off));
		return;
	default:
		fuse_reply_err(req, EINVAL);
		return;
	}
}

static void fs_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			       struct fuse_file_info *fi_out, size_t len, int flags)
{
	ssize_t n;

	if (off_in < 0 || off_out < 0 || flags) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* aligned ranges into a blank volume share blocks (a linked clone);
	 * ns copies the rest itself */
	n = ns_copy_range(req_ns(req), fi_file(fi_in), (uint64_t)off_in, fi_file(fi_out),
			  (uint64_t)off_out, len);
	if (n < 0) {
		reply_fail(req, (int)n, "copy_file_range", ino_out);
		return;
	}
	fuse_reply_write(req, (size_t)n);
}

/* --- directories ----------------------------------------------------------- */

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	/* Directory handles carry nothing: readdir resumes from the cookie
	 * the kernel passes as the offset. */
	fi->fh = 0;
	fuse_reply_open(req, fi);
}

struct dirbuf {
	fuse_req_t req;
	char *buf;
	size_t size;            /* bytes the kernel accepts in this reply */
	size_t used;
};

/* ns_dirent_fn: append one entry, or stop when it does not fit.  Runs under
 * ns locks: formatting into our buffer only. */
static int dirbuf_add(void *ctx, const char *name, const struct ns_attr *attr, uint64_t cookie)
{
	struct dirbuf *d = ctx;
	struct stat st;
	size_t len;

	/* fuse_add_direntry() reads only st_ino and the type bits. */
	memset(&st, 0, sizeof(st));
	st.st_ino = attr->ino;
	st.st_mode = attr->mode;
	/* The offset stored with an entry is where the next readdir resumes:
	 * past this entry, which is what cookie names. */
	len = fuse_add_direntry(d->req, d->buf + d->used, d->size - d->used, name, &st,
				(off_t)cookie);
	if (len > d->size - d->used)
		return 1;       /* did not fit: not added, not consumed */
	d->used += len;
	return 0;
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct dirbuf d = { .req = req, .size = size };
	int rc;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	d.buf = malloc(size ? size : 1);
	if (!d.buf) {
		reply_fail(req, -ENOMEM, "readdir", ino);
		return;
	}
	rc = ns_readdir(req_ns(req), ino, (uint64_t)off, dirbuf_add, &d);
	/* An error after some entries: hand those out; the next call resumes
	 * after them and meets the error again if it persists. */
	if (rc < 0 && d.used == 0)
		reply_fail(req, rc, "readdir", ino);
	else
		fuse_reply_buf(req, d.buf, d.used);
	free(d.buf);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static void fs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	/* Namespace changes are durable when they return (ns.h); this also
	 * brings the index up to the log, for vsnapctl (ns_sync_index) */
	fuse_reply_err(req, -ns_sync_index(req_ns(req)));
}

/* --- file system ------------------------------------------------------------- */

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;
	int rc;

	rc = ns_statfs(req_ns(req), &sv);
	if (rc < 0) {
		reply_fail(req, rc, "statfs", ino);
		return;
	}
	fuse_reply_statfs(req, &sv);
}

/*
 * Extended attributes are left out on purpose (NULL ops): libfuse answers
 * ENOSYS, after which the kernel stops asking and reports EOPNOTSUPP to
 * applications for the rest of the mount.  Locks (getlk/setlk/flock) are
 * likewise left to the kernel, which then handles them locally: correct
 * for a single-host file system, and what QEMU's image locking needs.
 */
static const struct fuse_lowlevel_ops fs_ops_table = {
	.init            = fs_init,
	.destroy         = fs_destroy,
	.lookup          = fs_lookup,
	.forget          = fs_forget,
	.forget_multi    = fs_forget_multi,
	.getattr         = fs_getattr,
	.setattr         = fs_setattr,
	.mknod           = fs_mknod,
	.mkdir           = fs_mkdir,
	.unlink          = fs_unlink,
	.rmdir           = fs_rmdir,
	.rename          = fs_rename,
	.link            = fs_link,
	.symlink         = fs_symlink,
	.open            = fs_open,
	.create          = fs_create,
	.read            = fs_read,
	.write           = fs_write,
	.flush           = fs_flush,
	.release         = fs_release,
	.fsync           = fs_fsync,
	.opendir         = fs_opendir,
	.readdir         = fs_readdir,
	.releasedir      = fs_releasedir,
	.fsyncdir        = fs_fsyncdir,
	.statfs          = fs_statfs,
	.fallocate       = fs_fallocate,
	.lseek           = fs_lseek,
	.copy_file_range = fs_copy_file_range,
};

const struct fuse_lowlevel_ops *fs_ops(void)
{
	return &fs_ops_table;
}

void fs_inval_entry(void *se, uint64_t dir, const char *name)
{
	/* -ENOENT: the kernel had nothing cached; nothing else is ours to fix */
	fuse_lowlevel_notify_inval_entry(se, dir, name, strlen(name));
}
