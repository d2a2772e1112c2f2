/*
 * powercut: a disk with a volatile write cache, served as one FUSE file, that
 * can lose power.
 *
 *   powercut [-s SEED] [-k KEEP_PCT] [-f FLUSH_MS] [-l LIE_PCT] [-m MAX_MIB]
 *            IMAGE MOUNTPOINT
 *
 * MOUNTPOINT/disk is IMAGE (a host file; its size, a multiple of 4096, is the
 * disk's size; MOUNTPOINT cannot be listed, only looked up in).  Attach a
 * loop device to it and put a file system on that: then IMAGE holds what a
 * real disk would hold, and a power cut can be taken at any moment.  The
 * program runs in the foreground until MOUNTPOINT is unmounted (fusermount3
 * -u) or it gets SIGINT/SIGTERM.
 *
 * The model.  A write goes to an in-memory overlay of 4 KiB pages (a partial
 * page is filled from what the disk holds there), and reads see the overlay
 * over IMAGE.  Only a FUSE fsync -- what the loop driver sends for a flush
 * (REQ_PREFLUSH; FUA is emulated by the block layer as a flush) -- makes the
 * overlay durable: every page is written to IMAGE, IMAGE is fdatasync'ed, the
 * overlay is emptied, and only then does the fsync reply.  Past MAX_MIB of
 * overlay (default 256) the whole overlay is written to IMAGE, as a disk's
 * cache writes itself back when full: allowed, since unsynced data may
 * persist at any time.
 *
 * The cut.  SIGUSR1 cuts the power.  The handler only sets a flag; the loop
 * (serve()) applies the cut when the signal interrupts its wait for a
 * request, and in any case before it serves another one (or at exit), so the
 * cut falls between two requests: every request served before it counts,
 * none after it.  At the cut each unsynced page is kept (written to IMAGE)
 * with probability KEEP_PCT% (seeded by SEED; default 0: all are lost),
 * which models a cache that had written back part of itself, in any order,
 * at 4 KiB granularity (only the latest content of a page can survive, not
 * an older one).  After the cut every write and every fsync fails with EIO,
 * so nothing issued after it reaches IMAGE: what the host's page cache above
 * still held is lost too when that file system is then unmounted (reads
 * still work, from IMAGE, so that it can be).  A clean stop without a cut
 * drops the overlay as well (a disk switched off without a flush) and says
 * how much it dropped: after a clean unmount of the file system above it
 * must be 0.
 *
 * Making sure writes reach us: the file is opened with direct_io (no page
 * cache in the kernel for it), and FUSE's writeback cache is never enabled,
 * so a loop device's writes, direct I/O or not, arrive here as WRITE requests
 * before they complete.  The counters below show it.
 *
 * -f FLUSH_MS makes every flush take that long before it starts writing, as
 * a disk's does: a host file system flushes often and writes back its page
 * cache just before, so with quick flushes the cache is nearly always empty
 * when the cut comes; with slow ones a cut mostly falls while a flush waits,
 * with the data written before it unsynced (the flush then fails with EIO).
 *
 * -l LIE_PCT is for checking that a test notices a broken disk: that share of
 * flushes (seeded) reply success but lose what they should have made durable
 * (the overlay is dropped, as at a cut), like a disk that loses acknowledged
 * writes.
 *
 * SIGUSR2 prints the counters on stderr; they are printed at exit too, as
 *   powercut: reads R (B bytes) writes W (B bytes) fsyncs F (lied L) ...
 * The program is single-threaded (serve(), a fuse_session_loop that also
 * polls the signals): requests are served one at a time, so the overlay
 * needs no lock.
 *
 * Exit status: 0, or 1 on an I/O error on IMAGE or bad usage.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "rng.h"

#define PAGE       4096u
#define DISK_INO   2
#define DISK_NAME  "disk"
#define MAX_IOV    64

struct pc {
	int fd;                         /* IMAGE */
	uint64_t size_bytes;            /* IMAGE's size, a multiple of PAGE */
	uint64_t npages;
	unsigned char **page;           /* [npages]: overlay page or NULL */
	uint64_t *dirty;                /* page numbers with an overlay page */
	uint64_t ndirty;
	uint64_t max_dirty;             /* write back the overlay past this */
	uint64_t rng;
	unsigned keep_pct, lie_pct, flush_ms;
	bool cut;                       /* the power is off */
	bool in_flush;                  /* waiting in a flush (-f) */
	bool failed;                    /* an I/O error on IMAGE */

	/* counters */
	uint64_t nread, read_bytes, nwrite, write_bytes;
	uint64_t nfsync, nfsync_lied, pages_synced, nwriteback;
	uint64_t cut_pages, cut_kept, refused_writes, refused_fsyncs;
};

static volatile sig_atomic_t cut_requested, stats_requested;

static void on_usr1(int sig) { cut_requested = 1; }
static void on_usr2(int sig) { stats_requested = 1; }

static void stats_print(const struct pc *pc, const char *when)
{
	fprintf(stderr, "powercut: %s: reads %" PRIu64 " (%" PRIu64 " bytes) writes %" PRIu64
		" (%" PRIu64 " bytes) fsyncs %" PRIu64 " (lied %" PRIu64 ") pages synced %" PRIu64
		" writebacks %" PRIu64 " unsynced %" PRIu64 "%s",
		when, pc->nread, pc->read_bytes, pc->nwrite, pc->write_bytes, pc->nfsync,
		pc->nfsync_lied, pc->pages_synced, pc->nwriteback, pc->ndirty,
		pc->cut ? "" : "\n");
	if (pc->cut)
		fprintf(stderr, " cut: %" PRIu64 " pages kept %" PRIu64 " refused writes %" PRIu64
			" fsyncs %" PRIu64 "\n", pc->cut_pages, pc->cut_kept,
			pc->refused_writes, pc->refused_fsyncs);
}

static int full_pwrite(int fd, const struct iovec *iov, int n, off_t off)
{
	while (n > 0) {
		ssize_t w = pwritev(fd, iov, n, off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		/* short: rare on a regular file; finish page by page */
		if ((size_t)w != (size_t)n * PAGE) {
			for (int i = (int)((size_t)w / PAGE); i < n; i++) {
				if (pwrite(fd, iov[i].iov_base, PAGE, off + (off_t)i * PAGE) != PAGE)
					return -EIO;
			}
		}
		return 0;
	}
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Write the overlay pages for which keep() says yes to IMAGE (runs of
 * consecutive pages in one pwritev), fdatasync IMAGE, empty the overlay.
 * keep_pct 100 keeps all.  Returns 0 or a negative errno.
 */
static int overlay_drain(struct pc *pc, unsigned keep_pct, uint64_t *nkept)
{
	struct iovec iov[MAX_IOV];
	uint64_t run0 = 0;
	int n = 0, rc = 0;

	*nkept = 0;
	qsort(pc->dirty, pc->ndirty, sizeof(*pc->dirty), cmp_u64);
	for (uint64_t i = 0; i < pc->ndirty; i++) {
		uint64_t p = pc->dirty[i];
		bool keep = keep_pct >= 100 || rng_next(&pc->rng) % 100 < keep_pct;

		if (n && (!keep || p != run0 + (uint64_t)n || n == MAX_IOV)) {
			if (!rc)
				rc = full_pwrite(pc->fd, iov, n, (off_t)(run0 * PAGE));
			n = 0;
		}
		if (keep) {
			if (!n)
				run0 = p;
			iov[n].iov_base = pc->page[p];
			iov[n++].iov_len = PAGE;
			(*nkept)++;
		}
	}
	if (n && !rc)
		rc = full_pwrite(pc->fd, iov, n, (off_t)(run0 * PAGE));
	if (!rc && *nkept && fdatasync(pc->fd) != 0)
		rc = -errno;
	for (uint64_t i = 0; i < pc->ndirty; i++) {
		free(pc->page[pc->dirty[i]]);
		pc->page[pc->dirty[i]] = NULL;
	}
	pc->ndirty = 0;
	if (rc) {
		fprintf(stderr, "powercut: writing the image: %s\n", strerror(-rc));
		pc->failed = true;
	}
	return rc;
}

/* Apply a requested cut (once), and print requested counters. */
static void poll_signals(struct pc *pc)
{
	if (cut_requested && !pc->cut) {
		uint64_t n = pc->ndirty, kept;

		overlay_drain(pc, pc->keep_pct, &kept);
		pc->cut = true;
		pc->cut_pages = n;
		pc->cut_kept = kept;
		fprintf(stderr, "powercut: POWER CUT: %" PRIu64 " unsynced pages, %" PRIu64
			" kept, %" PRIu64 " lost%s\n", n, kept, n - kept,
			pc->in_flush ? " (during a flush)" : "");
	}
	if (stats_requested) {
		stats_requested = 0;
		stats_print(pc, "counters");
	}
}

static struct pc *pc_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static void fill_attr(const struct pc *pc, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
		st->st_size = (off_t)pc->size_bytes;
		st->st_blocks = (blkcnt_t)(pc->size_bytes / 512);
	}
	st->st_blksize = PAGE;
}

static void pc_init(void *userdata, struct fuse_conn_info *conn)
{
	/* write-through: every write is a WRITE request before it returns */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static void pc_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct pc *pc = pc_of(req);
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, DISK_NAME)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = DISK_INO;
	fill_attr(pc, DISK_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void pc_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct pc *pc = pc_of(req);
	struct stat st;

	fill_attr(pc, ino, &st);
	fuse_reply_attr(req, &st, 0);
}

/* Times and modes are accepted and ignored; the size is fixed. */
static void pc_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct pc *pc = pc_of(req);
	struct stat st;

	if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != pc->size_bytes) {
		fuse_reply_err(req, EPERM);
		return;
	}
	fill_attr(pc, ino, &st);
	fuse_reply_attr(req, &st, 0);
}

static void pc_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	pc_of(req);
	if (ino != DISK_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (fi->flags & O_TRUNC) {
		fuse_reply_err(req, EPERM);
		return;
	}
	fi->direct_io = 1;      /* no page cache: reads and writes all come here */
	fi->keep_cache = 0;
	fuse_reply_open(req, fi);
}

static void pc_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct pc *pc = pc_of(req);
	unsigned char *buf;
	size_t done = 0;

	if ((uint64_t)off >= pc->size_bytes) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > pc->size_bytes - (uint64_t)off)
		size = (size_t)(pc->size_bytes - (uint64_t)off);
	buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	while (done < size) {
		ssize_t r = pread(pc->fd, buf + done, size - done, off + (off_t)done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;

			free(buf);
			fuse_reply_err(req, e);
			return;
		}
		if (r == 0) {           /* IMAGE shorter than its size: zeros */
			memset(buf + done, 0, size - done);
			break;
		}
		done += (size_t)r;
	}
	/* the overlay over it */
	for (uint64_t p = (uint64_t)off / PAGE; p * PAGE < (uint64_t)off + size; p++) {
		uint64_t lo, hi;

		if (!pc->page[p])
			continue;
		lo = p * PAGE > (uint64_t)off ? p * PAGE : (uint64_t)off;
		hi = (p + 1) * PAGE < (uint64_t)off + size ? (p + 1) * PAGE : (uint64_t)off + size;
		memcpy(buf + (lo - (uint64_t)off), pc->page[p] + (lo - p * PAGE), hi - lo);
	}
	pc->nread++;
	pc->read_bytes += size;
	fuse_reply_buf(req, (const char *)buf, size);
	free(buf);
}

/* The overlay page of page p, made from IMAGE's content on first use. */
static unsigned char *overlay_page(struct pc *pc, uint64_t p)
{
	unsigned char *pg = pc->page[p];
	ssize_t r;

	if (pg)
		return pg;
	pg = malloc(PAGE);
	if (!pg)
		return NULL;
	r = pread(pc->fd, pg, PAGE, (off_t)(p * PAGE));
	if (r < 0) {
		free(pg);
		return NULL;
	}
	if (r < (ssize_t)PAGE)
		memset(pg + r, 0, PAGE - (size_t)r);
	pc->page[p] = pg;
	pc->dirty[pc->ndirty++] = p;
	return pg;
}

static void pc_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct pc *pc = pc_of(req);
	uint64_t end = (uint64_t)off + size, kept;

	if (pc->cut || pc->failed) {
		pc->refused_writes++;
		fuse_reply_err(req, EIO);
		return;
	}
	if (off < 0 || end > pc->size_bytes) {
		fuse_reply_err(req, ENOSPC);
		return;
	}
	for (uint64_t p = (uint64_t)off / PAGE; p * PAGE < end; p++) {
		uint64_t lo = p * PAGE > (uint64_t)off ? p * PAGE : (uint64_t)off;
		uint64_t hi = (p + 1) * PAGE < end ? (p + 1) * PAGE : end;
		unsigned char *pg = overlay_page(pc, p);

		if (!pg) {
			/* pages before p stay in the overlay: a torn write */
			fuse_reply_err(req, EIO);
			return;
		}
		memcpy(pg + (lo - p * PAGE), data + (lo - (uint64_t)off), hi - lo);
	}
	pc->nwrite++;
	pc->write_bytes += size;
	if (pc->ndirty > pc->max_dirty) {
		pc->nwriteback++;
		if (overlay_drain(pc, 100, &kept)) {
			fuse_reply_err(req, EIO);
			return;
		}
	}
	fuse_reply_write(req, size);
}

static void pc_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct pc *pc = pc_of(req);
	uint64_t n = pc->ndirty, kept;

	if (pc->cut || pc->failed) {
		pc->refused_fsyncs++;
		fuse_reply_err(req, EIO);
		return;
	}
	pc->nfsync++;
	if (pc->flush_ms) {
		struct timespec ts = { pc->flush_ms / 1000, (long)(pc->flush_ms % 1000) * 1000000 };

		pc->in_flush = true;
		while (!pc->cut && nanosleep(&ts, &ts) != 0 && errno == EINTR)
			poll_signals(pc);       /* the cut may come now */
		pc->in_flush = false;
		if (pc->cut) {
			pc->refused_fsyncs++;
			fuse_reply_err(req, EIO);
			return;
		}
	}
	if (pc->lie_pct && rng_next(&pc->rng) % 100 < pc->lie_pct) {
		pc->nfsync_lied++;
		overlay_drain(pc, 0, &kept);
		fuse_reply_err(req, 0);
		return;
	}
	if (overlay_drain(pc, 100, &kept)) {
		fuse_reply_err(req, EIO);
		return;
	}
	pc->pages_synced += n;
	fuse_reply_err(req, 0);
}

/* close(2): not a durability point */
static void pc_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	pc_of(req);
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops pc_ops = {
	.init = pc_init,
	.lookup = pc_lookup,
	.getattr = pc_getattr,
	.setattr = pc_setattr,
	.open = pc_open,
	.read = pc_read,
	.write = pc_write,
	.flush = pc_flush,
	.fsync = pc_fsync,
};

/*
 * fuse_session_loop, with the signals polled whenever the wait for a request
 * ends, so that a cut is applied as soon as it is asked for (the read of
 * /dev/fuse fails with EINTR), not only when the next request comes.
 */
static int serve(struct fuse_session *se, struct pc *pc)
{
	struct fuse_buf fbuf = { .mem = NULL };
	int res = 0;

	while (!fuse_session_exited(se)) {
		res = fuse_session_receive_buf(se, &fbuf);
		poll_signals(pc);
		if (res == -EINTR)
			continue;
		if (res <= 0)
			break;
		fuse_session_process_buf(se, &fbuf);
	}
	free(fbuf.mem);
	fuse_session_reset(se);
	return res < 0 ? 1 : 0;
}

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
	fprintf(stderr, "usage: powercut [-s SEED] [-k KEEP_PCT] [-f FLUSH_MS] [-l LIE_PCT] "
		"[-m MAX_MIB] IMAGE MOUNTPOINT\n");
	exit(1);
}

int main(int argc, char **argv)
{
	static struct pc pc;
	char *fargv[] = { argv[0], "-o", "fsname=powercut,subtype=powercut", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct fuse_session *se = NULL;
	struct sigaction sa;
	uint64_t max_mib = 256, seed = 1, kept;
	struct stat st;
	int c, rc = 1;

	while ((c = getopt(argc, argv, "s:k:f:l:m:")) != -1) {
		switch (c) {
		case 'f': pc.flush_ms = (unsigned)atoi(optarg); break;
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'k': pc.keep_pct = (unsigned)atoi(optarg); break;
		case 'l': pc.lie_pct = (unsigned)atoi(optarg); break;
		case 'm': max_mib = strtoull(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (argc - optind != 2 || pc.keep_pct > 100 || pc.lie_pct > 100 || !max_mib)
		usage();
	pc.rng = mix(seed);
	pc.fd = open(argv[optind], O_RDWR);
	if (pc.fd < 0 || fstat(pc.fd, &st) != 0) {
		fprintf(stderr, "powercut: %s: %s\n", argv[optind], strerror(errno));
		return 1;
	}
	if (!S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size % PAGE) {
		fprintf(stderr, "powercut: %s: not a regular file of a multiple of %u bytes\n",
			argv[optind], PAGE);
		return 1;
	}
	pc.size_bytes = (uint64_t)st.st_size;
	pc.npages = pc.size_bytes / PAGE;
	pc.max_dirty = max_mib * (1u << 20) / PAGE;
	pc.page = calloc(pc.npages, sizeof(*pc.page));
	pc.dirty = calloc(pc.npages, sizeof(*pc.dirty));
	if (!pc.page || !pc.dirty) {
		fprintf(stderr, "powercut: out of memory\n");
		return 1;
	}

	memset(&sa, 0, sizeof(sa));     /* no SA_RESTART: wake the loop's read */
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);

	se = fuse_session_new(&args, &pc_ops, sizeof(pc_ops), &pc);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, argv[optind + 1]) != 0)
		goto out_signals;
	fprintf(stderr, "powercut: serving %s (%" PRIu64 " MiB) as %s/" DISK_NAME
		", keep %u%%, flush %u ms, lie %u%%, seed %" PRIu64 "\n", argv[optind],
		pc.size_bytes >> 20, argv[optind + 1], pc.keep_pct, pc.flush_ms, pc.lie_pct, seed);
	rc = serve(se, &pc);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out:
	poll_signals(&pc);              /* a cut requested after the last request */
	if (!pc.cut && pc.ndirty) {
		uint64_t n = pc.ndirty;

		overlay_drain(&pc, 0, &kept);   /* switched off without a flush */
		fprintf(stderr, "powercut: stopped with %" PRIu64 " unsynced pages: dropped\n", n);
		pc.ndirty = n;                  /* for the counters below */
	}
	stats_print(&pc, "exit");
	if (pc.failed)
		rc = 1;
	return rc;
}
