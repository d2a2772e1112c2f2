/*
 * passthrough: the FUSE ceiling of the benchmark (tests/bench/run.sh).
 *
 *   passthrough BACKING_FILE MOUNTPOINT [-o FUSE_OPTS]
 *
 * A minimal multi-threaded libfuse3 low-level file system whose root holds
 * one regular file, "disk", backed by BACKING_FILE: a read is a pread(), a
 * write a pwrite(), fsync an fsync()/fdatasync() of one backing fd.  It has
 * no index, no checksum, no copy-on-write: whatever vsnapfs costs beyond
 * this is the price of vsnapfs, not of FUSE.  It runs in the foreground
 * (the bench script starts it in the background and keeps its pid) and
 * exits on unmount or SIGINT/SIGTERM.
 *
 * To be a fair ceiling it negotiates what vsnapfs negotiates (src/fs/fs.c,
 * src/main.c): max_write 1 MiB, max_readahead 1 MiB, no writeback cache,
 * no atomic O_TRUNC, O_DIRECT opens direct_io with parallel direct writes,
 * 16 worker threads with one cloned /dev/fuse fd each, attribute and entry
 * timeouts of 1 s, default_permissions, and buffered I/O on the backing
 * file (vsnapfs's chunk files are buffered too; a client's O_DIRECT still
 * bypasses the page cache of the FUSE mount).  PT_PARALLEL_DIRECT_WRITES=0
 * in the environment replies to an O_DIRECT open as to any other (no
 * FOPEN_ flags), for an A/B of that flag.
 *
 * PT_NULL=1 in the environment makes it the floor instead of the ceiling
 * (the bench's fuse-null side of pairs): a read replies zeros from one
 * buffer zeroed at start-up (short at the size the file had then), a
 * write replies "done" and fsync "synced", without a system call.  What
 * is left is libfuse's loop and the kernel's FUSE round trip, which every
 * FUSE daemon pays.  (A truncate still truncates the backing file.)
 *
 * THREADS: the callbacks share only the backing fd, which pread/pwrite
 * use without a lock; nothing else is mutable after start-up (the null
 * buffer and size are set once, before the loop starts).
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#define PT_NAME         "disk"
#define PT_FILE_INO     2
#define PT_TIMEOUT_S    1.0
#define PT_MAX_WRITE    (1u << 20)
#define PT_THREADS      16

static int backing_fd = -1;     /* const after main() opened it */
static int parallel_dio = 1;    /* const after main(): PT_PARALLEL_DIRECT_WRITES */
static const char *null_buf;    /* const after main(): PT_NULL's zeros, or NULL */
static off_t null_size;         /* const after main(): the backing file's size then */

static int pt_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	if (ino == FUSE_ROOT_ID) {
		st->st_ino = FUSE_ROOT_ID;
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	}
	if (ino != PT_FILE_INO)
		return ENOENT;
	if (fstat(backing_fd, st) < 0)
		return errno;
	st->st_ino = PT_FILE_INO;
	st->st_nlink = 1;
	return 0;
}

static void pt_init(void *userdata, struct fuse_conn_info *conn)
{
	conn->max_write = PT_MAX_WRITE;
	conn->max_readahead = PT_MAX_WRITE;
	conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_ATOMIC_O_TRUNC);
}

static void pt_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int rc;

	if (parent != FUSE_ROOT_ID || strcmp(name, PT_NAME)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	rc = pt_stat(PT_FILE_INO, &e.attr);
	if (rc) {
		fuse_reply_err(req, rc);
		return;
	}
	e.ino = PT_FILE_INO;
	e.attr_timeout = PT_TIMEOUT_S;
	e.entry_timeout = PT_TIMEOUT_S;
	fuse_reply_entry(req, &e);
}

static void pt_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int rc = pt_stat(ino, &st);

	if (rc)
		fuse_reply_err(req, rc);
	else
		fuse_reply_attr(req, &st, PT_TIMEOUT_S);
}

static void pt_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct stat st;
	int rc;

	if (ino != PT_FILE_INO) {
		fuse_reply_err(req, EPERM);
		return;
	}
	/* Only the size means something here; mode, owner and times are the
	 * backing file's and are left alone. */
	if ((to_set & FUSE_SET_ATTR_SIZE) && ftruncate(backing_fd, attr->st_size) < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	rc = pt_stat(ino, &st);
	if (rc)
		fuse_reply_err(req, rc);
	else
		fuse_reply_attr(req, &st, PT_TIMEOUT_S);
}

static void pt_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != PT_FILE_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->fh = 0;
	fi->keep_cache = 0;
	fi->direct_io = 0;
	/* As vsnapfs (reply_opened in src/fs/fs.c): an O_DIRECT open gets
	 * FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES, written by hand
	 * because libfuse 3.14 has no fuse_file_info bit for the second.
	 * PT_PARALLEL_DIRECT_WRITES=0 in the environment turns that off, for
	 * an A/B (tests/bench/direct-writers.sh). */
	if (parallel_dio && (fi->flags & O_DIRECT)) {
		struct fuse_open_out o = {
			.fh = fi->fh,
			.open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES,
		};
		struct iovec iov = { .iov_base = &o, .iov_len = sizeof(o) };

		fuse_reply_iov(req, &iov, 1);
		return;
	}
	fuse_reply_open(req, fi);
}

static void pt_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	void *buf = NULL;
	ssize_t n;

	if (null_buf) {
		off_t left = off < null_size ? null_size - off : 0;

		if ((off_t)size > left)
			size = (size_t)left;
		fuse_reply_buf(req, null_buf, size < PT_MAX_WRITE ? size : PT_MAX_WRITE);
		return;
	}
	/* Page-aligned, like vsnapfs's read buffer. */
	if (posix_memalign(&buf, 4096, size ? size : 1)) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = pread(backing_fd, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void pt_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		     off_t off, struct fuse_file_info *fi)
{
	size_t done = null_buf ? size : 0;

	while (done < size) {
		ssize_t n = pwrite(backing_fd, buf + done, size - done, off + (off_t)done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (!done) {
				fuse_reply_err(req, errno);
				return;
			}
			break;
		}
		done += (size_t)n;
	}
	fuse_reply_write(req, done);
}

static void pt_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static void pt_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static void pt_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	int rc = null_buf ? 0 : datasync ? fdatasync(backing_fd) : fsync(backing_fd);

	fuse_reply_err(req, rc < 0 ? errno : 0);
}

static void pt_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != FUSE_ROOT_ID)
		fuse_reply_err(req, ENOTDIR);
	else
		fuse_reply_open(req, fi);
}

static void pt_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	static const struct { const char *name; fuse_ino_t ino; mode_t mode; } ent[] = {
		{ ".", FUSE_ROOT_ID, S_IFDIR }, { "..", FUSE_ROOT_ID, S_IFDIR },
		{ PT_NAME, PT_FILE_INO, S_IFREG },
	};
	char buf[512];
	size_t used = 0;

	if (size > sizeof(buf))
		size = sizeof(buf);
	for (off_t i = off; i < (off_t)(sizeof(ent) / sizeof(ent[0])); i++) {
		struct stat st = { .st_ino = ent[i].ino, .st_mode = ent[i].mode };
		size_t n = fuse_add_direntry(req, buf + used, size - used, ent[i].name, &st,
					     i + 1);

		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static void pt_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	if (fstatvfs(backing_fd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops pt_ops = {
	.init = pt_init,
	.lookup = pt_lookup,
	.getattr = pt_getattr,
	.setattr = pt_setattr,
	.open = pt_open,
	.read = pt_read,
	.write = pt_write,
	.flush = pt_flush,
	.release = pt_release,
	.fsync = pt_fsync,
	.opendir = pt_opendir,
	.readdir = pt_readdir,
	.statfs = pt_statfs,
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *cfg = NULL;
	struct fuse_session *se = NULL;
	int status = 1, i;

	if (argc < 3) {
		fprintf(stderr, "usage: %s BACKING_FILE MOUNTPOINT [-o FUSE_OPTS]\n", argv[0]);
		return 2;
	}
	if (getenv("PT_PARALLEL_DIRECT_WRITES") && !strcmp(getenv("PT_PARALLEL_DIRECT_WRITES"), "0"))
		parallel_dio = 0;
	if (getenv("PT_NULL") && !strcmp(getenv("PT_NULL"), "1") &&
	    !(null_buf = calloc(1, PT_MAX_WRITE))) {
		fprintf(stderr, "passthrough: out of memory\n");
		return 1;
	}
	backing_fd = open(argv[1], O_RDWR | O_CLOEXEC);
	if (backing_fd < 0) {
		fprintf(stderr, "passthrough: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (null_buf) {
		struct stat st;

		if (fstat(backing_fd, &st) < 0) {
			fprintf(stderr, "passthrough: %s: %s\n", argv[1], strerror(errno));
			close(backing_fd);
			return 1;
		}
		null_size = st.st_size;
	}
	if (fuse_opt_add_arg(&args, argv[0]) ||
	    fuse_opt_add_arg(&args, "-ofsname=bench-passthrough,subtype=passthrough,"
				    "default_permissions"))
		goto out;
	for (i = 3; i < argc; i++)
		if (fuse_opt_add_arg(&args, argv[i]))
			goto out;

	se = fuse_session_new(&args, &pt_ops, sizeof(pt_ops), NULL);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) < 0)
		goto out_session;
	if (fuse_session_mount(se, argv[2]) < 0)
		goto out_signals;
	cfg = fuse_loop_cfg_create();
	if (!cfg)
		goto out_unmount;
	fuse_loop_cfg_set_max_threads(cfg, PT_THREADS);
	fuse_loop_cfg_set_clone_fd(cfg, 1);
	status = fuse_session_loop_mt(se, cfg) < 0 ? 1 : 0;
	fuse_loop_cfg_destroy(cfg);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out:
	fuse_opt_free_args(&args);
	close(backing_fd);
	free((void *)null_buf);
	return status;
}
