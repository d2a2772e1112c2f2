/*
 * store: the store directory as a whole, opened or created, and locked.
 *
 *   STORE/index.sqlite   the index (src/bmap)
 *   STORE/chunks/        chunk files (src/chunk)
 *   STORE/lock           flock()ed by the mounted daemon, holds its pid
 *
 * Refusals write nothing: the checks that decide whether a directory is a
 * store we may use are all reads, and the lock file is only written (with
 * our pid) once the mount is going ahead.  A directory is created as a
 * store only when it is missing or empty.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "ns/ns_int.h"
#include "vsnapfs/mcache.h"
#include "vsnapfs/log.h"
#include "vsnapfs/storedir.h"

int64_t ns_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* 1: dir has no entries, 0: it has some, negative errno: cannot tell. */
static int dir_is_empty(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int rc = 1;

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			rc = 0;
			break;
		}
	}
	closedir(d);
	return rc;
}

/*
 * One daemon per store: flock() on the store directory itself, so that
 * deleting or replacing STORE/lock while mounted cannot let a second daemon
 * in.  STORE/lock only carries the holder's pid, for the refusal message.
 */
static int take_lock(struct ns *ns, char *msg, size_t msglen)
{
	char path[PATH_MAX], pid[32] = "";
	ssize_t n;
	int rc, fd;

	ns->dir_fd = open(ns->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ns->dir_fd < 0) {
		rc = -errno;
		snprintf(msg, msglen, "cannot open %s: %s", ns->dir, strerror(-rc));
		return rc;
	}
	snprintf(path, sizeof(path), "%s/" STOREDIR_LOCK, ns->dir);
	/* a daemon that was just unmounted may still be closing the store:
	 * give it a moment before calling the store taken */
	for (int i = 0; i < 60 && flock(ns->dir_fd, LOCK_EX | LOCK_NB) && errno == EWOULDBLOCK; i++)
		usleep(50000);
	if (flock(ns->dir_fd, LOCK_EX | LOCK_NB) == 0) {
		ns->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (ns->lock_fd < 0) {
			rc = -errno;
			snprintf(msg, msglen, "cannot open %s: %s", path, strerror(-rc));
			return rc;
		}
		return 0;
	}
	rc = -errno;
	if (rc != -EWOULDBLOCK) {
		snprintf(msg, msglen, "cannot lock %s: %s", ns->dir, strerror(-rc));
		return rc;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	n = fd >= 0 ? pread(fd, pid, sizeof(pid) - 1, 0) : -1;
	if (fd >= 0)
		close(fd);
	pid[n > 0 ? n : 0] = 0;
	pid[strcspn(pid, "\n")] = 0;
	if (!pid[0])
		storedir_lock_holder(ns->dir, pid, sizeof(pid));
	snprintf(msg, msglen, "store %s is already mounted by vsnapfs pid %s", ns->dir,
		 pid[0] ? pid : "(unknown)");
	return -EEXIST;
}

void ns_set_pid(struct ns *ns, pid_t pid)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);

	if (ftruncate(ns->lock_fd, 0) || pwrite(ns->lock_fd, buf, n, 0) != n)
		vlog(LOG_WARNING, "cannot write pid to %s/" STOREDIR_LOCK ": %s", ns->dir, strerror(errno));
}

static int create_store(struct ns *ns, uint32_t bs, char *msg, size_t msglen)
{
	char path[PATH_MAX];
	int rc;

	snprintf(path, sizeof(path), "%s/" STOREDIR_CHUNKS, ns->dir);
	if (mkdir(path, 0700) && errno != EEXIST) {
		rc = -errno;
		snprintf(msg, msglen, "cannot create %s: %s", path, strerror(-rc));
		return rc;
	}
	snprintf(path, sizeof(path), "%s/" STOREDIR_INDEX, ns->dir);
	rc = bmap_create(path, bs, getuid(), getgid());
	if (rc)
		snprintf(msg, msglen, "cannot create %s: %s", path, strerror(-rc));
	return rc;
}

static int open_index(struct ns *ns, char *msg, size_t msglen)
{
	char path[PATH_MAX];
	int rc;

	snprintf(path, sizeof(path), "%s/" STOREDIR_INDEX, ns->dir);
	rc = bmap_open(path, ns->readonly, &ns->bm);
	switch (rc) {
	case 0:
		break;
	case -EPROTONOSUPPORT:
		snprintf(msg, msglen, "%s: unknown store format version (this vsnapfs reads versions "
			 "1 to %d)", path, BMAP_FORMAT_VERSION);
		break;
	case -EUCLEAN:
		snprintf(msg, msglen, "%s: damaged or not a vsnapfs index; refusing to mount", path);
		break;
	default:
		snprintf(msg, msglen, "%s: cannot open: %s", path, strerror(-rc));
	}
	return rc;
}

/* ---- upgrade from index format 2 (docs/design.md, D6) ---------------------- */

struct upgrade {
	struct ns *ns;
	int64_t start_ns, last_ns;      /* of the run, of the last progress line */
	uint64_t missing;               /* rows whose chunk file is missing */
	uint64_t rows, kill_row;        /* test hook: see upgrade_index */
};

/* A block row of the old index: its checksum and block number go beside
 * its chunk, where format 3 keeps them (the chunk's sidecar). */
static int upgrade_row(void *ctx, uint64_t node, uint64_t lblock, uint64_t chunk, uint32_t slot,
		       uint64_t cksum)
{
	struct upgrade *u = ctx;
	int rc;

	if (++u->rows == u->kill_row)
		raise(SIGKILL);         /* a crash in the middle of a step */
	rc = chunk_sidecar_put(u->ns->cs, chunk, slot, lblock, cksum);

	/* its block reads EIO as before; vsnapctl check names the file */
	if (rc == -ENOENT && !u->missing++)
		vlog_at(LOG_WARNING, &(struct log_where){ .chunk = chunk, .slot = slot, .has_chunk = true },
			"upgrade: chunk %016" PRIx64 " is missing (a block of map node %"
			PRIu64 " at block %" PRIu64 "): its blocks stay unreadable", chunk, node, lblock);
	return rc == -ENOENT ? 0 : rc;
}

static int upgrade_sync(void *ctx)
{
	struct upgrade *u = ctx;

	return chunk_sidecar_sync(u->ns->cs);
}

/* stderr, at most once a second, and at the end */
static void upgrade_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct upgrade *u = ctx;
	int64_t now = ns_now_ns();
	double secs = (now - u->start_ns) / 1e9;

	if (done < total && now - u->last_ns < 1000000000)
		return;
	u->last_ns = now;
	fprintf(stderr, "vsnapfs: upgrading index format 2 to %d: %" PRIu64 " of %" PRIu64
		" blocks (%.0f%%), %.0f s", BMAP_FORMAT_VERSION, done, total,
		total ? 100.0 * done / total : 100.0, secs);
	if (done && done < total)
		fprintf(stderr, ", about %.0f s left", secs * (total - done) / done);
	fputc('\n', stderr);
}

/* Before anything reads a block: crash-safe, resumed by the next mount. */
static int upgrade_index(struct ns *ns, char *msg, size_t msglen)
{
	/* VSNAPFS_TEST_UPGRADE_KILL_ROW=N: the daemon kills itself at the Nth
	 * block row of this run, before that step is synced or committed
	 * (t-140-upgrade); unset or 0 in every real use */
	const char *kill = getenv("VSNAPFS_TEST_UPGRADE_KILL_ROW");
	struct upgrade u = { .ns = ns, .start_ns = ns_now_ns(),
			     .kill_row = kill ? strtoull(kill, NULL, 10) : 0 };
	struct bmap_upgrade_ops ops = {
		.row = upgrade_row, .sync = upgrade_sync, .progress = upgrade_progress, .ctx = &u,
	};
	int from = bmap_format(ns->bm), rc;

	rc = bmap_upgrade_run(ns->bm, 0, &ops);
	if (rc) {
		snprintf(msg, msglen, "%s/" STOREDIR_INDEX ": upgrading the index from format %d: %s "
			 "(nothing is lost; the next mount goes on)", ns->dir, from, log_strerror(rc));
		return rc;
	}
	vlog(LOG_NOTICE, "%s/" STOREDIR_INDEX ": upgraded from format version %d to %d in %.1f s; "
	     "older vsnapfs versions cannot mount this store any more", ns->dir, from,
	     BMAP_FORMAT_VERSION, (ns_now_ns() - u.start_ns) / 1e9);
	return 0;
}

/* single-threaded here: ns_open runs before any other thread exists */
static int queue_orphan(void *ctx, const struct bmap_inode *in)
{
	return ns_queue_push(&((struct ns *)ctx)->reap, in->ino);
}

static int queue_node(void *ctx, const struct bmap_node *n)
{
	return ns_queue_push(&((struct ns *)ctx)->rel, n->id);
}

/*
 * Queue for release every node that no inode or snapshot inode names: a
 * daemon that stopped between deleting a snapshot or volume and releasing
 * its node leaves such nodes (release keeps those that still have several
 * children).  Costs one query per node, at mount only.
 */
static int queue_unnamed_nodes(struct ns *ns)
{
	size_t n;
	int rc = bmap_node_list(ns->bm, queue_node, ns);

	for (n = 0; !rc && n < ns->rel.n;) {
		uint64_t refs;

		rc = bmap_node_refs(ns->bm, ns->rel.v[n], &refs);
		if (!rc && refs)
			ns->rel.v[n] = ns->rel.v[--ns->rel.n];  /* named: keep it */
		else
			n++;
	}
	return rc;
}

/*
 * "clean" in the index is 1 only between a clean unmount and the next
 * mount.  Mounting a store that was not cleanly unmounted says, in one
 * line, what recovery does: SQLite has already rolled its log forward to
 * the last commit; unlinked volumes and map nodes nothing names are
 * deleted in the background; chunk data never indexed is left to GC.
 */
static int note_recovery(struct ns *ns, bool created)
{
	uint64_t clean = 1;
	int rc = bmap_meta_get(ns->bm, "clean", &clean);

	if (rc == -ENOENT)
		clean = 1;              /* never mounted before */
	else if (rc)
		return rc;
	if (!clean && !created)
		vlog(LOG_WARNING, "%s was not cleanly unmounted: recovered %s (the index and its "
		     "log); deleting %zu unlinked volume(s) and %zu unused map node(s); unindexed "
		     "chunk data goes to garbage collection", ns->dir,
		     ns->log_gap ? "what the damaged log still holds" : "every fsync'ed write",
		     ns->reap.n, ns->rel.n);
	rc = bmap_meta_set(ns->bm, "clean", 0);
	ns->marked_in_use = rc == 0;
	return rc;
}

/* Size of the file system the store is on; 0 if unknown. */
static uint64_t fs_bytes(const struct ns *ns)
{
	struct statvfs sv;

	return statvfs(ns->dir, &sv) == 0 ? (uint64_t)sv.f_blocks * sv.f_frsize : 0;
}

/*
 * How many removed chunk files to keep for reuse while writes stream in
 * (see "Spare chunk files" in docs/design.md): what the option says, but
 * never more than 1/64 of the file system, so that one under 4 GiB keeps
 * none.  They hold host space, so the background thread gives them back
 * when writes stop (NS_SPARE_IDLE_MS).
 */
static uint32_t spare_max(const struct ns *ns, uint32_t want)
{
	uint64_t n = fs_bytes(ns) / 64 / CHUNK_FILE_MAX_BYTES(ns->bs);

	return n < want ? (uint32_t)n : want;
}

/*
 * Write-behind (docs/design.md) only on ext4 and XFS, where a write that
 * space_ok() admitted (src/ns/io.c: the reserve stays free) gets its
 * blocks.  A copy-on-write file system (btrfs, ZFS) allocates at every
 * overwrite, of spares and of its own metadata, and a write that fails
 * after it returned can only fail the next fsync and poison the store.
 * Anything else writes as before.
 */
static void write_behind(struct ns *ns, const char *chunk_dir, size_t bytes)
{
	struct statfs sf;
	int rc;

	if (bytes == 0)
		return;
	if (statfs(chunk_dir, &sf) != 0 ||
	    (sf.f_type != EXT4_SUPER_MAGIC && sf.f_type != XFS_SUPER_MAGIC)) {
		vlog(LOG_INFO, "write-behind off: the store is not on ext4 or XFS");
		return;
	}
	rc = chunk_write_behind(ns->cs, bytes);
	if (rc)
		vlog(LOG_WARNING, "write-behind off: %s", strerror(-rc));
}

int ns_open(const char *dir, const struct ns_opts *opts, struct ns **out, bool *created,
	    char *msg, size_t msglen)
{
	struct ns *ns;
	struct stat st;
	char path[PATH_MAX];
	uint64_t next_chunk = 1;
	bool create = false;
	int rc;

	*created = false;
	msg[0] = 0;
	ns = calloc(1, sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	ns->lock_fd = -1;
	ns->dir_fd = -1;
	ns->readonly = opts->readonly;
	ns->flush_ms = opts->flush_interval_ms ? opts->flush_interval_ms : NS_DEFAULT_FLUSH_MS;
	ns->gc_interval_s = opts->gc_interval_s ? opts->gc_interval_s : NS_DEFAULT_GC_INTERVAL_S;
	ns->defrag_min_exts = opts->defrag_min_exts;
	lock_mutex_init(&ns->flush_mu, LOCK_NS_FLUSH, "ns.flush_mu");
	lock_mutex_init(&ns->load_mu, LOCK_NS_LOAD, "ns.load_mu");
	lock_mutex_init(&ns->db_mu, LOCK_NS_DB, "ns.db_mu");
	lock_mutex_init(&ns->files_mu, LOCK_NS_FILES, "ns.files_mu");
	lock_mutex_init(&ns->log_mu, LOCK_NS_LOG, "ns.log_mu");
	lock_mutex_init(&ns->seq_mu, LOCK_NS_SEQ, "ns.seq_mu");
	lock_mutex_init(&ns->bg_mu, LOCK_NS_BG, "ns.bg_mu");
	lock_mutex_init(&ns->stats_mu, LOCK_NS_STATS, "ns.stats_mu");
	ns->started_ns = ns_now_ns();
	ns->started_mono_ns = ns_mono_ns();
	ns->vstats_prune_min = NS_VSTATS_PRUNE_MIN;
	pthread_cond_init(&ns->bg_cond, NULL);
	pthread_cond_init(&ns->gc_cond, NULL);
	ns->ctl_fd = -1;
	ns->ctl_wake[0] = ns->ctl_wake[1] = -1;
	ns->dir = realpath(dir, NULL);

	if (!ns->dir) {
		rc = -errno;
		if (rc == -ENOENT && opts->nocreate) {
			snprintf(msg, msglen, "%s: no such directory, and -o nocreate forbids "
				 "creating a store", dir);
			goto fail;
		}
		if (rc != -ENOENT || opts->readonly) {
			snprintf(msg, msglen, "%s: %s", dir, strerror(-rc));
			goto fail;
		}
		if (mkdir(dir, 0700)) {
			rc = -errno;
			snprintf(msg, msglen, "cannot create %s: %s", dir, strerror(-rc));
			goto fail;
		}
		ns->dir = realpath(dir, NULL);
		create = true;
		if (!ns->dir) {
			rc = -errno;
			goto fail;
		}
	} else if (stat(ns->dir, &st) || !S_ISDIR(st.st_mode)) {
		rc = -ENOTDIR;
		snprintf(msg, msglen, "%s is not a directory", dir);
		goto fail;
	} else {
		snprintf(path, sizeof(path), "%s/" STOREDIR_INDEX, ns->dir);
		if (access(path, F_OK)) {
			rc = dir_is_empty(ns->dir);
			if (rc < 0) {
				snprintf(msg, msglen, "%s: %s", dir, strerror(-rc));
				goto fail;
			}
			if (rc == 0) {
				rc = -EINVAL;
				snprintf(msg, msglen,
					 "%s is not a vsnapfs store (no index.sqlite) and not empty; "
					 "refusing to touch it", dir);
				goto fail;
			}
			create = true;
		}
	}
	if (create && opts->nocreate) {
		rc = -ENOENT;
		snprintf(msg, msglen, "%s is empty, and -o nocreate forbids creating a store "
			 "there", dir);
		goto fail;
	}
	if (create && opts->readonly) {
		rc = -EROFS;
		snprintf(msg, msglen, "%s is empty: nothing to mount read-only", dir);
		goto fail;
	}

	rc = take_lock(ns, msg, msglen);
	if (rc)
		goto fail;
	if (create) {
		rc = create_store(ns, opts->block_size ? opts->block_size : NS_DEFAULT_BLOCK_SIZE,
				  msg, msglen);
		if (rc)
			goto fail;
	}
	rc = open_index(ns, msg, msglen);
	if (rc)
		goto fail;
	ns->bs = bmap_block_size(ns->bm);
	if (ns->readonly && bmap_format(ns->bm) < BMAP_FORMAT_VERSION) {
		rc = -EPROTONOSUPPORT;
		snprintf(msg, msglen, "%s/" STOREDIR_INDEX ": index format %d: mount it once read-write "
			 "to upgrade it to format %d", ns->dir, bmap_format(ns->bm),
			 BMAP_FORMAT_VERSION);
		goto fail;
	}
	/* 1% of the file system, at least 16 MiB, at most 1 GiB */
	ns->space_reserve = (int64_t)(fs_bytes(ns) / 100);
	if (ns->space_reserve < (16 << 20))
		ns->space_reserve = 16 << 20;
	if (ns->space_reserve > (1 << 30))
		ns->space_reserve = 1 << 30;
	if (bmap_meta_get(ns->bm, "next_chunk_id", &next_chunk) == 0 && next_chunk == 0)
		next_chunk = 1;

	snprintf(path, sizeof(path), "%s/" STOREDIR_CHUNKS, ns->dir);
	rc = chunk_store_open(path, ns->bs, next_chunk, &ns->cs);
	if (rc) {
		snprintf(msg, msglen, "%s: cannot open chunk store: %s", path, strerror(-rc));
		goto fail;
	}
	/* slot-table pages, so that a read does one pread, not two: an eighth
	 * of map_cache on top of it (vsnapfs.8) */
	chunk_entry_cache_limit(ns->cs, (opts->map_cache_bytes ? opts->map_cache_bytes
							       : MCACHE_DEFAULT_BYTES) / 8);
	chunk_direct_writes(ns->cs, opts->direct_write_bytes);
	if (!ns->readonly)
		write_behind(ns, path, opts->write_behind_bytes);
	if (!ns->readonly) {
		snprintf(path, sizeof(path), "%s/" STOREDIR_SPARE, ns->dir);
		ns->spare_max = spare_max(ns, opts->spare_chunks);
		rc = chunk_spares_enable(ns->cs, path, ns->spare_max);
		if (rc) {
			snprintf(msg, msglen, "%s: %s", path, strerror(-rc));
			goto fail;
		}
	}
	if (bmap_format(ns->bm) < BMAP_FORMAT_VERSION) {
		rc = upgrade_index(ns, msg, msglen);
		if (rc)
			goto fail;
	}
	rc = ns_recover(ns, msg, msglen);
	if (rc)
		goto fail;
	if (!ns->readonly) {
		/* checked once, by the open above */
		snprintf(path, sizeof(path), "%s/" STOREDIR_INDEX, ns->dir);
		rc = bmap_open_reader(ns->bm, &ns->bm_scan);
		if (!rc)
			rc = bmap_open_reader(ns->bm, &ns->bm_load);
		if (rc) {
			snprintf(msg, msglen, "%s: cannot open a second connection: %s", path,
				 strerror(-rc));
			goto fail;
		}
	}
	/* map pages load on bm_load under load_mu; read-only, on bm under
	 * db_mu (nothing then holds db_mu across a read or a seek) */
	ns->mc = mcache_new(opts->map_cache_bytes ? opts->map_cache_bytes : MCACHE_DEFAULT_BYTES);
	if (!ns->mc) {
		rc = -ENOMEM;
		goto fail;
	}
	ns->vix = (struct vol_index){
		.mc = ns->mc, .load = ns->bm_load,
		.load_mu = ns->bm_load ? &ns->load_mu : &ns->db_mu,
	};
	/* volumes unlinked while open when the last daemon stopped */
	if (!ns->readonly) {
		rc = bmap_orphan_list(ns->bm, queue_orphan, ns);
		if (!rc)
			rc = queue_unnamed_nodes(ns);
		if (rc) {
			snprintf(msg, msglen, "cannot list unlinked volumes and unused map nodes: %s", strerror(-rc));
			goto fail;
		}
	}
	if (!ns->readonly) {
		rc = note_recovery(ns, create);
		if (rc) {
			snprintf(msg, msglen, "cannot update the index: %s", strerror(-rc));
			goto fail;
		}
	}
	*created = create;
	*out = ns;
	return 0;
fail:
	ns_close(ns);
	return rc;
}

void ns_stop_control(struct ns *ns)
{
	ns_ctl_stop(ns);
}

void ns_set_inval(struct ns *ns, ns_inval_fn fn, void *ctx)
{
	ns->inval = fn;
	ns->inval_ctx = ctx;
}

int ns_start(struct ns *ns)
{
	int rc;

	ns_ctl_start(ns);
	if (ns->readonly)
		return 0;
	rc = -pthread_create(&ns->bg_thread, NULL, ns_bg_main, ns);
	if (!rc)
		ns->bg_running = true;
	return rc;
}

static bool every_file(const struct ns_file *f, void *ctx)
{
	return true;
}

int ns_close(struct ns *ns)
{
	struct ns_file *dead;
	int rc = 0;

	if (!ns)
		return 0;
	ns_ctl_stop(ns);
	if (ns->bg_running) {
		lock_mutex_lock(&ns->bg_mu);
		ns->bg_stop = true;
		pthread_cond_signal(&ns->bg_cond);
		lock_mutex_unlock(&ns->bg_mu);
		pthread_join(ns->bg_thread, NULL);
		ns->bg_running = false;
	}
	if (ns->bm && ns->cs && !ns->readonly && ns->marked_in_use) {
		rc = ns_flush(ns);
		if (!rc)
			rc = ns_checkpoint(ns);
		if (!rc)
			rc = ns_reap_all(ns);
		if (!rc)
			rc = bmap_meta_set(ns->bm, "clean", 1);
		if (rc)
			vlog(LOG_ERR, "final flush failed: %s; unsynced writes are lost", log_strerror(rc));
	}
	/* an unmounted store holds no space it does not need */
	if (ns->cs && !ns->readonly)
		chunk_spares_limit(ns->cs, 0);
	ns_log_free(ns);
	lock_mutex_lock(&ns->files_mu);
	dead = ns_files_take(ns, every_file, NULL);
	lock_mutex_unlock(&ns->files_mu);
	ns_file_free_list(dead);
	ns_vstats_free(ns);
	mcache_free(ns->mc);
	chunk_store_close(ns->cs);
	bmap_close(ns->bm_scan);
	bmap_close(ns->bm_load);
	bmap_close(ns->bm);
	if (ns->lock_fd >= 0)
		close(ns->lock_fd);
	if (ns->dir_fd >= 0)
		close(ns->dir_fd);
	free(ns->reap.v);
	free(ns->rel.v);
	free(ns->dir);
	lock_mutex_destroy(&ns->flush_mu);
	lock_mutex_destroy(&ns->load_mu);
	lock_mutex_destroy(&ns->db_mu);
	lock_mutex_destroy(&ns->files_mu);
	lock_mutex_destroy(&ns->log_mu);
	lock_mutex_destroy(&ns->seq_mu);
	lock_mutex_destroy(&ns->bg_mu);
	lock_mutex_destroy(&ns->stats_mu);
	pthread_cond_destroy(&ns->bg_cond);
	pthread_cond_destroy(&ns->gc_cond);
	free(ns);
	return rc;
}

uint32_t ns_block_size(struct ns *ns)
{
	return ns->bs;
}
