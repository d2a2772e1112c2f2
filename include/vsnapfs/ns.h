/*
 * namespace: the store as a tree of directories and volumes, by inode
 * number.  It owns the store directory (index, chunks, lock file), the open
 * volumes, flushing the index, and the background thread that flushes,
 * reaps unlinked volumes and collects garbage.  The FUSE front end
 * (src/fs) maps each request to one call here.
 *
 * Inode numbers are the index's and stay the same across mounts; the root
 * is NS_ROOT_INO.  Every directory D also has D/.snapshots, whose entries
 * are snapshots: mkdir, rmdir and rename there take, delete and rename
 * them; their contents are read-only (EROFS).  Those inodes have numbers of
 * their own (see src/ns/ns_int.h).  Names are 1..255 bytes of valid UTF-8
 * without control characters or '/', not "." or ".." (EINVAL).
 *
 * Errors:     0 / count or a negative errno, as the FUSE reply should carry.
 * Ownership:  strings and buffers stay the caller's.
 * Threads:    every call but ns_open/ns_start/ns_close may run concurrently.
 *             The lock order is written in vsnapfs/lock.h.
 * Durability: ns_fsync() makes every write to the file that returned before
 *             it durable, with its size; metadata changes (create, mkdir,
 *             rename, unlink, chmod, chown, utimens, snapshots, clones) are
 *             durable when they return.  Everything else within a second (the flusher).
 */
#ifndef VSNAPFS_NS_H
#define VSNAPFS_NS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#define NS_ROOT_INO 1

struct ns;                              /* opaque */

struct ns_opts {
	uint32_t block_size;            /* for a new store; 0: the default */
	uint32_t flush_interval_ms;     /* 0: NS_DEFAULT_FLUSH_MS */
	uint32_t gc_interval_s;         /* 0: NS_DEFAULT_GC_INTERVAL_S */
	/* Removed chunk files kept for reuse while writes stream in, at most
	 * (and at most 1/64 of the file system); 0: none.  Not "0: the
	 * default": a caller starts from NS_DEFAULT_SPARE_CHUNKS. */
	uint32_t spare_chunks;
	/* The map page cache's limit in bytes (-o map_cache); 0: the default,
	 * MCACHE_DEFAULT_BYTES. */
	size_t map_cache_bytes;
	/* GC also rewrites each window of 256 blocks in which this many data
	 * extents or more start as one run (-o defrag: NS_DEFRAG_MIN_EXTS;
	 * docs/design.md, D5 point 4); 0, the default: it does not. */
	uint32_t defrag_min_exts;
	/* Runs of at least this many bytes are written around the host's
	 * page cache (-o direct_writes; chunk_direct_writes()); 0: none.
	 * Default NS_DEFAULT_DIRECT_WRITES. */
	size_t direct_write_bytes;
	/* Bytes of those writes that may still be on their way to the device
	 * when the write returns (-o write_behind; chunk_write_behind()), on a
	 * store whose file system is ext4 or XFS; 0: none.  Default
	 * NS_DEFAULT_WRITE_BEHIND. */
	size_t write_behind_bytes;
	bool readonly;
	/* Refuse (-ENOENT) instead of creating a store in a missing or empty
	 * dir (-o nocreate: a typo in fstab or a unit must fail). */
	bool nocreate;
};

#define NS_DEFAULT_BLOCK_SIZE     4096u
#define NS_DEFAULT_FLUSH_MS       1000u         /* the background flush */
#define NS_DEFAULT_GC_INTERVAL_S  30u           /* GC runs at least this often */
#define NS_GC_AFTER_BYTES         (256u << 20)  /* and after this much was written */
#define NS_DEFAULT_SPARE_CHUNKS   4u            /* 256 MiB of chunk files */
#define NS_MAX_SPARE_CHUNKS       1024u
#define NS_SPARE_IDLE_MS          5000u         /* no appends this long: spares are given back */
#define NS_DEFRAG_MIN_EXTS        64u           /* -o defrag: extents per 256 blocks (16 KiB average) */
#define NS_DEFAULT_DIRECT_WRITES  (256u << 10) /* -o direct_writes (docs/design.md) */
#define NS_DEFAULT_WRITE_BEHIND   (4u << 20)   /* -o write_behind (docs/design.md) */

struct ns_attr {
	uint64_t ino;
	uint32_t mode;                  /* S_IFDIR or S_IFREG | permissions */
	uint32_t nlink, uid, gid;
	uint64_t size;
	uint64_t blocks;                /* 512-byte units actually allocated */
	uint32_t blksize;               /* preferred I/O size */
	int64_t atime_ns, mtime_ns, ctime_ns;
};

/* setattr: which fields of struct ns_attr to apply */
enum {
	NS_SET_MODE = 1, NS_SET_UID = 2, NS_SET_GID = 4, NS_SET_SIZE = 8,
	NS_SET_ATIME = 16, NS_SET_MTIME = 32,
};

/*
 * Open the store at dir: create it when dir is missing or empty (*created
 * set), else check it is a store of a known version with a sound index, and
 * take its lock.  On refusal nothing is written and msg gets one line
 * saying why (-EEXIST: another daemon holds it, with its pid; -ENOTDIR /
 * -EINVAL: not a store; -EPROTONOSUPPORT: unknown version; -EUCLEAN: damaged;
 * -ENOENT: missing or empty with opts->nocreate).
 */
int ns_open(const char *dir, const struct ns_opts *opts, struct ns **out, bool *created,
	    char *msg, size_t msglen);
/* Start the background thread (after daemonizing). */
int ns_start(struct ns *ns);
/* Stop the thread, flush everything, release the lock.  NULL is fine. */
int ns_close(struct ns *ns);
/* Stop serving the control channel (and remove its socket), waiting for a
 * request in flight: call before the FUSE session the inval callback
 * uses goes away.  ns_close does it too; a second call does nothing. */
void ns_stop_control(struct ns *ns);
/*
 * An entry the namespace changed behind the kernel's back (receive's
 * commit, from the control channel): fn(ctx, dir, name) asks the kernel
 * to forget what it cached of dir/name.  Called with no lock held.  Set
 * before ns_start; NULL (the default, unit tests) calls nothing.
 */
typedef void (*ns_inval_fn)(void *ctx, uint64_t dir, const char *name);
void ns_set_inval(struct ns *ns, ns_inval_fn fn, void *ctx);

/* Write the daemon's pid into the lock file (after daemonizing). */
void ns_set_pid(struct ns *ns, pid_t pid);

uint32_t ns_block_size(struct ns *ns);

int ns_lookup(struct ns *ns, uint64_t dir, const char *name, struct ns_attr *out);
int ns_getattr(struct ns *ns, uint64_t ino, struct ns_attr *out);
int ns_setattr(struct ns *ns, uint64_t ino, const struct ns_attr *in, int which,
	       struct ns_attr *out);
int ns_mkdir(struct ns *ns, uint64_t dir, const char *name, uint32_t mode, uint32_t uid,
	     uint32_t gid, struct ns_attr *out);
/* Create a volume (mode: permission bits). */
int ns_create(struct ns *ns, uint64_t dir, const char *name, uint32_t mode, uint32_t uid,
	      uint32_t gid, struct ns_attr *out);
int ns_unlink(struct ns *ns, uint64_t dir, const char *name);
int ns_rmdir(struct ns *ns, uint64_t dir, const char *name);
/* flags: RENAME_NOREPLACE, RENAME_EXCHANGE (-EINVAL) */
int ns_rename(struct ns *ns, uint64_t dir, const char *name, uint64_t newdir,
	      const char *newname, unsigned flags);

/* One directory entry; fn returns non-zero to stop (the entry is not
 * consumed).  cookie: pass it back as "after" to continue past the entry. */
typedef int (*ns_dirent_fn)(void *ctx, const char *name, const struct ns_attr *attr,
			    uint64_t cookie);
/* Entries after cookie "after" (0: from the start, "." and ".." included). */
int ns_readdir(struct ns *ns, uint64_t dir, uint64_t after, ns_dirent_fn fn, void *ctx);

/* Open volumes.  A handle is valid until ns_release(). */
struct ns_file;
int ns_open_file(struct ns *ns, uint64_t ino, int flags, struct ns_file **out);
void ns_release(struct ns *ns, struct ns_file *f);
ssize_t ns_read(struct ns *ns, struct ns_file *f, void *buf, size_t len, uint64_t off);
ssize_t ns_write(struct ns *ns, struct ns_file *f, const void *buf, size_t len, uint64_t off);
/* mode: fallocate(2) flags; supports 0 (allocate: only grows the size unless
 * FALLOC_FL_KEEP_SIZE), PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE. */
int ns_fallocate(struct ns *ns, struct ns_file *f, int mode, uint64_t off, uint64_t len);
int ns_lseek(struct ns *ns, struct ns_file *f, uint64_t off, int whence, uint64_t *out);
int ns_fsync(struct ns *ns, struct ns_file *f);

/*
 * copy_file_range: block-aligned ranges at the same offset into a blank
 * destination share blocks (a linked clone, constant cost); the rest is
 * copied.  Returns the bytes copied.
 */
ssize_t ns_copy_range(struct ns *ns, struct ns_file *src, uint64_t off_in, struct ns_file *dst,
		      uint64_t off_out, uint64_t len);

/* Flush every volume's pending changes: data and a log batch, synced
 * (docs/design.md, D3); the index gets them at the next checkpoint. */
int ns_flush(struct ns *ns);
/* Flush, then bring the index up to the log (a checkpoint): what
 * index.sqlite says is then what the mount shows.  fsync of a directory in
 * the mount does this, so that vsnapctl, which reads the index, is not
 * behind the daemon. */
int ns_sync_index(struct ns *ns);
/* A sync of the chunk files failed: from then on every write and fsync
 * fails with EIO until the store is opened again (chunk_sync). */
bool ns_sync_failed(struct ns *ns);

int ns_statfs(struct ns *ns, struct statvfs *out);

#endif
