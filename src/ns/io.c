/*
 * io: the data path of an open volume.  Reads, writes, hole punches and
 * seeks go straight to its vol (src/vol); this layer adds what the
 * namespace decides: whether the volume may change at all, whether the
 * store has room, the write epoch GC waits on, the times, and fsync.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "ns/ns_int.h"


/* May the content of ino change (write, hole punch, size)?  Not in a
 * read-only mount or a snapshot; not after a failed sync, where nothing
 * can be made durable, zeros and holes neither (chunk_sync). */
int ns_may_change(struct ns *ns, uint64_t ino)
{
	if (ns->readonly || ino_kind(ino) != INO_LIVE)
		return -EROFS;
	return chunk_poisoned(ns->cs) ? -EIO : 0;
}

ssize_t ns_read(struct ns *ns, struct ns_file *f, void *buf, size_t len, uint64_t off)
{
	int64_t t0 = ns_mono_ns();
	ssize_t n = vol_read(f->v, buf, len, off);

	ns_io_count(f->st, NS_IO_READ, n, t0);
	return n;
}

/*
 * May len more bytes of data be written?  Free space (spare chunk files
 * included: they are filled first, and given back only once writes stop)
 * is measured at most every 100 ms or 8 MiB of writes; in between, what
 * was written counts as used.  Below the reserve data writes get ENOSPC
 * while the index, which needs the room to record deletions, keeps working.
 */
static bool space_ok(struct ns *ns, size_t len)
{
	int64_t now = ns_now_ns();
	int64_t used = atomic_fetch_add(&ns->space_used, (int64_t)len) + (int64_t)len;

	if (used > (8 << 20) || now - atomic_load(&ns->space_when_ns) > 100000000) {
		struct statvfs st;

		/* What is queued behind (docs/design.md, "Write-behind") was
		 * admitted and holds no blocks yet: not free.  Read before the
		 * file system's count, so that a piece written in between is
		 * counted twice rather than not at all. */
		int64_t queued = (int64_t)chunk_write_behind_pending(ns->cs);

		if (statvfs(ns->dir, &st) == 0) {
			atomic_store(&ns->space_free, (int64_t)(st.f_bavail * st.f_frsize +
								chunk_spare_bytes(ns->cs)) - queued);
			atomic_store(&ns->space_used, 0);
			atomic_store(&ns->space_when_ns, now);
			used = 0;
		}
	}
	return atomic_load(&ns->space_free) - used > ns->space_reserve;
}

bool ns_sync_failed(struct ns *ns)
{
	return chunk_poisoned(ns->cs);
}

ssize_t ns_write(struct ns *ns, struct ns_file *f, const void *buf, size_t len, uint64_t off)
{
	int64_t t0 = ns_mono_ns();
	ssize_t n;
	int e = ns_may_change(ns, f->ino);

	if (e) {
		ns_io_count(f->st, NS_IO_WRITE, e, t0);
		return e;
	}
	if (!space_ok(ns, len)) {
		/* maybe garbage collection can give some back */
		atomic_store(&ns->gc_wanted, true);
		pthread_cond_signal(&ns->bg_cond);
		ns_io_count(f->st, NS_IO_WRITE, -ENOSPC, t0);
		return -ENOSPC;
	}
	e = ns_change_begin(ns);
	n = vol_write(f->v, buf, len, off);
	ns_change_end(ns, e);
	ns_io_count(f->st, NS_IO_WRITE, n, t0);
	if (n > 0) {
		atomic_store(&f->wtime_ns, ns_now_ns());
		atomic_fetch_add_explicit(&ns->written, (uint64_t)n, memory_order_relaxed);
	}
	return n;
}

int ns_fallocate(struct ns *ns, struct ns_file *f, int mode, uint64_t off, uint64_t len)
{
	bool keep = mode & FALLOC_FL_KEEP_SIZE;
	uint64_t end;
	int rc, e;

	rc = ns_may_change(ns, f->ino);
	if (rc)
		return rc;
	if (off > VOL_MAX_BYTES || len > VOL_MAX_BYTES - off)
		return -EFBIG;
	end = off + len;
	e = ns_change_begin(ns);
	switch (mode & ~FALLOC_FL_KEEP_SIZE) {
	case 0:
		/* thin volumes: allocating only reserves the size */
		break;
	case FALLOC_FL_PUNCH_HOLE:
		if (!keep)
			rc = -EOPNOTSUPP;   /* fallocate(2): PUNCH_HOLE needs KEEP_SIZE */
		else
			rc = vol_punch(f->v, off, len);
		break;
	case FALLOC_FL_ZERO_RANGE:
		rc = vol_punch(f->v, off, len);
		break;
	default:
		rc = -EOPNOTSUPP;
	}
	if (!rc && !keep && end > vol_size(f->v))
		rc = vol_truncate(f->v, end);
	ns_change_end(ns, e);
	if (!rc && (mode & ~FALLOC_FL_KEEP_SIZE))
		atomic_store(&f->wtime_ns, ns_now_ns());
	return rc;
}

int ns_lseek(struct ns *ns, struct ns_file *f, uint64_t off, int whence, uint64_t *out)
{
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	return vol_seek(f->v, off, whence, out);
}

int ns_fsync(struct ns *ns, struct ns_file *f)
{
	int64_t t0 = ns_mono_ns();
	int rc;

	atomic_fetch_add_explicit(&ns->fsyncs, 1, memory_order_relaxed);
	rc = ns_flush(ns);
	ns_io_count(f->st, NS_IO_FSYNC, rc, t0);
	return rc;
}

/* The host's figures as they are: spare chunk files count as used, as they
 * do for every other program on the host, which cannot use their space. */
int ns_statfs(struct ns *ns, struct statvfs *out)
{
	if (statvfs(ns->dir, out))
		return -errno;
	out->f_namemax = BMAP_NAME_MAX;
	return 0;
}
