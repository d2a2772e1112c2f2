/*
 * torture: random writes, syncs, snapshots, clones and reverts on one vsnapfs
 * mount, carried on across daemon crashes, with a model on the host that
 * knows what each crash may and may not take away.
 *
 *   torture init   [-b NBLOCKS] [-s SEED] STATE MNT
 *   torture run    -s SEED -g GEN [-n STEPS] [-w KINDS] STATE MNT
 *   torture verify STATE MNT
 *
 * (run -n: stop after STEPS steps and exit 0, for a rerun without a crash;
 * -w: the kinds of writes to make, of "bdzp" (see W below), to narrow a
 * failure down.)
 *
 * The mount holds one volume MNT/vol of NBLOCKS blocks of 4096 bytes (a
 * fixed size), linked clones MNT/cK of it, and snapshots in MNT/.snapshots:
 * vol@sN (the volume alone) and dN (the whole root: vol and every clone).
 *
 * STATE is a directory on the host file system:
 *   base     what the last verify found, all of it durable: the image of
 *            vol, the live clones and snapshots with the image of each of
 *            their files, the next free numbers;
 *   img.I    immutable images (NBLOCKS * 4096 bytes), named by base and log;
 *   log      what run did since, one line per step, each written (write(2)
 *            with O_APPEND; only the daemon crashes, never the host) BEFORE
 *            the step is issued and, for steps that can be in flight at the
 *            kill, a second line once it returned:
 *              W KIND FD OFF LEN DSEED  a write (KIND b data, d data with
 *                                    O_DIRECT, z zeros, p PUNCH_HOLE) of LEN
 *                                    bytes from the generator DSEED (0:
 *                                    zeros) at OFF, through the buffered
 *                                    (FD b) or the O_DIRECT (d) descriptor
 *              s FD CALL / S         fdatasync or fsync issued / returned 0
 *              M N v I               mkdir .snapshots/vol@sN, vol = img.I
 *              M N d F NAME I ...    mkdir .snapshots/dN with F files
 *              m N                   that mkdir returned 0
 *              R N / r N             rmdir of snapshot N issued / returned
 *              K K I SRC / k K       clone cK (= img.I) from MNT/SRC by
 *                                    open(O_CREAT|O_EXCL) + copy_file_range
 *              U K / u K             unlink of cK issued / returned
 *              X I SRC / x           revert vol to img.I: open(O_TRUNC) +
 *                                    copy_file_range from MNT/SRC
 *
 * run: load base (the log must be empty: verify has run), then forever pick
 * a random step: writes of 1 B..256 KiB at random offsets (buffered or
 * O_DIRECT from a buffer with the same in-page offset, so that the kernel
 * never splits a request inside a block; sometimes block-aligned, sometimes
 * zeros or a punched hole), an fdatasync or fsync every 1..12 writes, and
 * now and then a snapshot (after an fdatasync, or without one: a snapshot
 * holds every write that returned before its mkdir, synced or not), an
 * rmdir, a linked clone of a snapshot's file or of the live volume, an
 * unlink of a clone, a revert of vol to a snapshot's file, a reopen of the
 * volume.  It stops when a call fails: exit 3 if the daemon is gone (what
 * the kill does), 1 if the daemon still answers (a real error, printed).
 *
 * verify (after a remount): replay the log onto base and check, reading
 * everything through MNT:
 *   - vol: each block holds its durable content (base, as changed by writes
 *     that an fdatasync, a returned mkdir or a returned revert made
 *     durable) or the content after one of the later writes touching it
 *     (writes to one block are applied in order: a prefix of them);
 *     with a revert in flight, exactly the snapshot's content or size 0
 *     (truncated, clone not yet committed) are fine too;
 *   - a snapshot whose mkdir returned exists and reads back exactly as
 *     taken (every file, nothing more) until its rmdir was issued; one whose
 *     mkdir or rmdir was in flight may or may not exist, but if it does it
 *     is exact; one whose rmdir returned is gone; nothing else is listed;
 *   - a clone whose copy_file_range returned reads back exactly (the SPEC:
 *     a clone is durable when the call returns); one in flight is missing,
 *     empty, or exact; an unlinked one is gone; nothing else is listed.
 * Then it settles what was in flight (an empty clone is unlinked, a
 * truncated vol is given its size back and fsynced) and writes the new
 * base: what it read is durable now.  Prints "torture: verify ..." lines
 * and one "torture-stats" line; exit 0 = all good, 1 = a violation (each
 * printed).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>

#include "rng.h"

#define BLK            4096u
#define MAX_WRITE      (256u * 1024)
#define MAX_LIVE_SNAPS 6
#define MAX_LIVE_CLONES 3
#define MAX_FILES      (1 + MAX_LIVE_CLONES + 1)   /* vol + clones (+1: slack) */
#define MAX_SNAPS      4096
#define MAX_CLONES     4096
#define FUSE_MAGIC     0x65735546

enum st { ST_CREATING = 1, ST_LIVE, ST_DELETING, ST_GONE };

struct snap {
	uint64_t n;
	enum st st;
	bool dir;                       /* dN (vol and clones) or vol@sN */
	int nf;
	char fname[MAX_FILES][24];
	uint64_t img[MAX_FILES];
};

struct clone {
	uint64_t k;
	enum st st;
	uint64_t img;
};

struct pw {                             /* a logged write (verify) */
	char kind;
	uint64_t off, len, dseed;
};

static const char *g_state, *g_mnt;
static const char *g_kinds = "bdzp";    /* run -w: the kinds of writes */
static uint64_t g_bytes, g_nblocks;     /* volume size */
static uint64_t next_snap = 1, next_clone = 1, next_img = 1;
static uint64_t vol_img;                /* base image of vol */
static struct snap *snaps;
static int nsnaps;
static struct clone *clones;
static int nclones;

/* ---- small helpers ------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "torture: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(1);
}

static uint64_t rng;
static uint64_t rnd(uint64_t n)
{
	return rng_next(&rng) % n;
}

/* The bytes of a write: len bytes from generator dseed (0: zeros). */
static void fill(unsigned char *p, uint64_t len, uint64_t dseed)
{
	uint64_t s = dseed, i;

	if (!dseed) {
		memset(p, 0, len);
		return;
	}
	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t x = rng_next(&s);
		memcpy(p + i, &x, 8);
	}
	if (i < len) {
		uint64_t x = rng_next(&s);
		memcpy(p + i, &x, len - i);
	}
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n);

	if (!p)
		die("out of memory");
	return p;
}

static char *path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *path(const char *fmt, ...)
{
	static char buf[8][PATH_MAX];
	static int i;
	char *p = buf[i++ % 8];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p, PATH_MAX, fmt, ap);
	va_end(ap);
	return p;
}

static char *img_path(uint64_t id)
{
	return path("%s/img.%" PRIu64, g_state, id);
}

static void img_read(uint64_t id, unsigned char *buf)
{
	FILE *f = fopen(img_path(id), "rb");

	if (!f || fread(buf, 1, g_bytes, f) != g_bytes)
		die("read %s: %s", img_path(id), f ? "short file" : strerror(errno));
	fclose(f);
}

/* A new image file with these bytes; returns its id.  Ids are never reused:
 * an id taken by a run that did not get to log it is skipped. */
static uint64_t img_new(const unsigned char *buf)
{
	uint64_t id;
	int fd;

	for (;;) {
		id = next_img++;
		fd = open(img_path(id), O_WRONLY | O_CREAT | O_EXCL, 0644);
		if (fd >= 0)
			break;
		if (errno != EEXIST)
			die("create %s: %s", img_path(id), strerror(errno));
	}
	if (write(fd, buf, g_bytes) != (ssize_t)g_bytes || close(fd))
		die("write %s: %s", img_path(id), strerror(errno));
	return id;
}

/* Read a whole file of the mount; returns its size (-errno on error). */
static int64_t read_file(const char *p, unsigned char *buf, uint64_t max)
{
	int fd = open(p, O_RDONLY);
	uint64_t done = 0;
	struct stat st;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size > max) {
		int rc = st.st_size > 0 ? -EFBIG : -errno;
		close(fd);
		return rc;
	}
	while (done < (uint64_t)st.st_size) {
		ssize_t n = pread(fd, buf + done, st.st_size - done, done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int rc = n < 0 ? -errno : -ENODATA;
			close(fd);
			return rc;
		}
		done += n;
	}
	close(fd);
	return st.st_size;
}

/* ---- state ---------------------------------------------------------------- */

static struct snap *snap_find(uint64_t n)
{
	for (int i = 0; i < nsnaps; i++)
		if (snaps[i].n == n)
			return &snaps[i];
	return NULL;
}

static struct clone *clone_find(uint64_t k)
{
	for (int i = 0; i < nclones; i++)
		if (clones[i].k == k)
			return &clones[i];
	return NULL;
}

static struct snap *snap_add(uint64_t n)
{
	if (nsnaps >= MAX_SNAPS)
		die("too many snapshots in one run");
	memset(&snaps[nsnaps], 0, sizeof(snaps[0]));
	snaps[nsnaps].n = n;
	return &snaps[nsnaps++];
}

static struct clone *clone_add(uint64_t k)
{
	if (nclones >= MAX_CLONES)
		die("too many clones in one run");
	memset(&clones[nclones], 0, sizeof(clones[0]));
	clones[nclones].k = k;
	return &clones[nclones++];
}

static void snap_name(const struct snap *s, char *buf, size_t len)
{
	if (s->dir)
		snprintf(buf, len, "d%" PRIu64, s->n);
	else
		snprintf(buf, len, "vol@s%" PRIu64, s->n);
}

static void base_load(void)
{
	FILE *f = fopen(path("%s/base", g_state), "r");
	char line[4096];
	int lno = 0;

	if (!f)
		die("%s/base: %s", g_state, strerror(errno));
	snaps = xmalloc(MAX_SNAPS * sizeof(*snaps));
	clones = xmalloc(MAX_CLONES * sizeof(*clones));
	while (fgets(line, sizeof(line), f)) {
		char *save = NULL, *w = strtok_r(line, " \n", &save);

		lno++;
		if (!w)
			continue;
		if (!strcmp(w, "torture-state")) {
			continue;
		} else if (!strcmp(w, "vol_bytes")) {
			g_bytes = strtoull(strtok_r(NULL, " \n", &save), NULL, 10);
			g_nblocks = g_bytes / BLK;
		} else if (!strcmp(w, "next")) {
			next_snap = strtoull(strtok_r(NULL, " \n", &save), NULL, 10);
			next_clone = strtoull(strtok_r(NULL, " \n", &save), NULL, 10);
			next_img = strtoull(strtok_r(NULL, " \n", &save), NULL, 10);
		} else if (!strcmp(w, "vol")) {
			vol_img = strtoull(strtok_r(NULL, " \n", &save), NULL, 10);
		} else if (!strcmp(w, "clone")) {
			struct clone *c = clone_add(strtoull(strtok_r(NULL, " \n", &save), NULL, 10));
			c->img = strtoull(strtok_r(NULL, " \n", &save), NULL, 10);
			c->st = ST_LIVE;
		} else if (!strcmp(w, "snap")) {
			struct snap *s = snap_add(strtoull(strtok_r(NULL, " \n", &save), NULL, 10));
			char *kind = strtok_r(NULL, " \n", &save);

			s->dir = kind && kind[0] == 'd';
			s->nf = atoi(strtok_r(NULL, " \n", &save));
			if (s->nf < 1 || s->nf > MAX_FILES)
				die("%s/base:%d: bad file count", g_state, lno);
			for (int i = 0; i < s->nf; i++) {
				char *nm = strtok_r(NULL, " \n", &save);
				char *im = strtok_r(NULL, " \n", &save);
				if (!nm || !im)
					die("%s/base:%d: short snap line", g_state, lno);
				snprintf(s->fname[i], sizeof(s->fname[i]), "%s", nm);
				s->img[i] = strtoull(im, NULL, 10);
			}
			s->st = ST_LIVE;
		} else {
			die("%s/base:%d: unknown line '%s'", g_state, lno, w);
		}
	}
	fclose(f);
	if (!g_bytes || g_bytes % BLK || !vol_img)
		die("%s/base: no volume", g_state);
}

/* Write base (only what is live) atomically, and remove unreferenced images. */
static void base_save(void)
{
	char *tmp = path("%s/base.tmp", g_state), *fin = path("%s/base", g_state);
	FILE *f = fopen(tmp, "w");
	DIR *d;
	struct dirent *de;
	uint64_t *used = xmalloc(sizeof(uint64_t) * (1 + nclones + nsnaps * MAX_FILES));
	size_t nused = 0;

	if (!f)
		die("%s: %s", tmp, strerror(errno));
	fprintf(f, "torture-state 1\nvol_bytes %" PRIu64 "\nnext %" PRIu64 " %" PRIu64 " %" PRIu64
		"\nvol %" PRIu64 "\n", g_bytes, next_snap, next_clone, next_img, vol_img);
	used[nused++] = vol_img;
	for (int i = 0; i < nclones; i++) {
		if (clones[i].st != ST_LIVE)
			continue;
		fprintf(f, "clone %" PRIu64 " %" PRIu64 "\n", clones[i].k, clones[i].img);
		used[nused++] = clones[i].img;
	}
	for (int i = 0; i < nsnaps; i++) {
		struct snap *s = &snaps[i];
		if (s->st != ST_LIVE)
			continue;
		fprintf(f, "snap %" PRIu64 " %c %d", s->n, s->dir ? 'd' : 'v', s->nf);
		for (int j = 0; j < s->nf; j++) {
			fprintf(f, " %s %" PRIu64, s->fname[j], s->img[j]);
			used[nused++] = s->img[j];
		}
		fprintf(f, "\n");
	}
	if (fflush(f) || fsync(fileno(f)) || fclose(f) || rename(tmp, fin))
		die("%s: %s", fin, strerror(errno));
	d = opendir(g_state);
	if (!d)
		die("%s: %s", g_state, strerror(errno));
	while ((de = readdir(d))) {
		uint64_t id;
		bool keep = false;

		if (strncmp(de->d_name, "img.", 4))
			continue;
		id = strtoull(de->d_name + 4, NULL, 10);
		for (size_t i = 0; i < nused; i++)
			keep |= used[i] == id;
		if (!keep)
			unlink(path("%s/%s", g_state, de->d_name));
	}
	closedir(d);
	free(used);
}

/* ---- init ------------------------------------------------------------------ */

static int do_init(uint64_t nblocks, uint64_t seed)
{
	unsigned char *buf;
	int fd;
	FILE *f;

	g_bytes = nblocks * BLK;
	g_nblocks = nblocks;
	buf = xmalloc(g_bytes);
	/* a volume with data in three quarters of its blocks, a hole in the rest */
	fill(buf, g_bytes, mix(seed) | 1);
	for (uint64_t b = 0; b < nblocks; b++)
		if (b % 4 == 3)
			memset(buf + b * BLK, 0, BLK);
	if (mkdir(g_state, 0755) && errno != EEXIST)
		die("mkdir %s: %s", g_state, strerror(errno));
	fd = open(path("%s/vol", g_mnt), O_RDWR | O_CREAT | O_EXCL, 0644);
	if (fd < 0)
		die("create %s/vol: %s", g_mnt, strerror(errno));
	if (pwrite(fd, buf, g_bytes, 0) != (ssize_t)g_bytes || fsync(fd) || close(fd))
		die("write %s/vol: %s", g_mnt, strerror(errno));
	vol_img = img_new(buf);
	snaps = xmalloc(sizeof(*snaps));
	clones = xmalloc(sizeof(*clones));
	base_save();
	f = fopen(path("%s/log", g_state), "w");
	if (!f || fclose(f))
		die("%s/log: %s", g_state, strerror(errno));
	printf("torture: init %s/vol: %" PRIu64 " blocks\n", g_mnt, nblocks);
	free(buf);
	return 0;
}

/* ---- run ------------------------------------------------------------------- */

static int logfd = -1;
static unsigned char *cur;              /* vol as written (the verifier knows what is durable) */
static int fd_b = -1, fd_d = -1;        /* vol, buffered and O_DIRECT */
static unsigned char *wbuf;             /* page-aligned, MAX_WRITE + BLK */
static uint64_t st_writes, st_wbytes, st_syncs, st_mkdir, st_rmdir, st_clone, st_unlink,
		st_revert, st_busy;

static void jlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void jlog(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n <= 0 || n >= (int)sizeof(line) - 1)
		die("log line too long");
	line[n++] = '\n';
	if (write(logfd, line, n) != n)
		die("write %s/log: %s", g_state, strerror(errno));
}

static void run_stats(const char *why, int err)
{
	printf("torture: run stopped in %s (%s): %" PRIu64 " writes (%" PRIu64 " bytes), %" PRIu64
	       " syncs, %" PRIu64 " mkdir, %" PRIu64 " rmdir (%" PRIu64 " EBUSY retries), %" PRIu64
	       " clones, %" PRIu64 " unlinks, %" PRIu64 " reverts\n",
	       why, err ? strerror(err) : "ok", st_writes, st_wbytes, st_syncs, st_mkdir, st_rmdir,
	       st_busy, st_clone, st_unlink, st_revert);
	fflush(stdout);
}

/* A call on the mount failed: exit 3 if the daemon is gone, else 1. */
static void failed(const char *what, int err) __attribute__((noreturn));
static void failed(const char *what, int err)
{
	struct statfs sf;
	bool gone = statfs(g_mnt, &sf) < 0 || sf.f_type != FUSE_MAGIC;

	run_stats(what, err);
	if (gone)
		exit(3);
	fprintf(stderr, "torture: %s failed with %s while the daemon still answers\n", what,
		strerror(err));
	exit(1);
}

static void vol_open(void)
{
	fd_b = open(path("%s/vol", g_mnt), O_RDWR);
	if (fd_b < 0)
		failed("open vol", errno);
	fd_d = open(path("%s/vol", g_mnt), O_RDWR | O_DIRECT);
	if (fd_d < 0)
		failed("open vol O_DIRECT", errno);
}

static void vol_close(void)
{
	if (close(fd_b) || close(fd_d))
		failed("close vol", errno);
}

static void op_sync(void)
{
	bool direct = rnd(2), full = rnd(4) == 0;
	int fd = direct ? fd_d : fd_b;

	jlog("s %c %s", direct ? 'd' : 'b', full ? "fsync" : "fdatasync");
	if ((full ? fsync(fd) : fdatasync(fd)) < 0)
		failed(full ? "fsync" : "fdatasync", errno);
	jlog("S");
	st_syncs++;
}

static void op_write(void)
{
	uint64_t off = rnd(g_bytes), len, dseed = rng_next(&rng) | 1, r = rnd(100);
	char kind;
	bool direct;
	unsigned char *p;
	ssize_t n;

	if (r < 30)
		len = 1 + rnd(BLK);
	else if (r < 50)
		len = 1 + rnd(MAX_WRITE);
	else
		len = 1 + rnd(64 * 1024);
	if (rnd(4) == 0) {                      /* whole blocks */
		off &= ~(uint64_t)(BLK - 1);
		len = (len + BLK - 1) & ~(uint64_t)(BLK - 1);
	}
	if (len > g_bytes - off)
		len = g_bytes - off;
	do {
		r = rnd(100);
		kind = r < 45 ? 'b' : r < 80 ? 'd' : r < 90 ? 'z' : 'p';
	} while (!strchr(g_kinds, kind));
	if (kind == 'z' || kind == 'p')
		dseed = 0;
	direct = kind == 'd' || (kind != 'b' && rnd(2));
	jlog("W %c %c %" PRIu64 " %" PRIu64 " %" PRIu64, kind, direct ? 'd' : 'b', off, len, dseed);
	/* the buffer starts at the same offset in its page as the write in
	 * the file: an O_DIRECT request is then only ever split by the kernel
	 * at block boundaries */
	p = wbuf + off % BLK;
	fill(p, len, dseed);
	if (kind == 'p') {
		if (fallocate(direct ? fd_d : fd_b, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      off, len) < 0)
			failed("fallocate(PUNCH_HOLE)", errno);
	} else {
		n = pwrite(direct ? fd_d : fd_b, p, len, off);
		if (n != (ssize_t)len)
			failed(kind == 'd' ? "O_DIRECT pwrite" : "pwrite", n < 0 ? errno : EIO);
	}
	memcpy(cur + off, p, len);
	st_writes++;
	st_wbytes += len;
}

static int live_snaps(struct snap **out)
{
	int n = 0;

	for (int i = 0; i < nsnaps; i++)
		if (snaps[i].st == ST_LIVE)
			out[n++] = &snaps[i];
	return n;
}

static int live_clones(struct clone **out)
{
	int n = 0;

	for (int i = 0; i < nclones; i++)
		if (clones[i].st == ST_LIVE)
			out[n++] = &clones[i];
	return n;
}

static void op_rmdir(void)
{
	struct snap *ls[MAX_SNAPS];
	int n = live_snaps(ls), tries = 0;
	char name[64];
	struct snap *s;

	if (!n)
		return;
	s = ls[rnd(n)];
	snap_name(s, name, sizeof(name));
	jlog("R %" PRIu64, s->n);
	/* the release of a file just cloned from reaches the daemon after
	 * close() returned: EBUSY for a moment is fine */
	while (rmdir(path("%s/.snapshots/%s", g_mnt, name)) < 0) {
		if (errno != EBUSY || ++tries > 200)
			failed("rmdir", errno);
		st_busy++;
		usleep(10000);
	}
	jlog("r %" PRIu64, s->n);
	s->st = ST_GONE;
	st_rmdir++;
}

static void op_mkdir(void)
{
	struct snap *ls[MAX_SNAPS], *s;
	struct clone *lc[MAX_CLONES];
	char line[1024], name[64];
	int nc, len;

	if (live_snaps(ls) >= MAX_LIVE_SNAPS) {
		op_rmdir();
		return;
	}
	if (rnd(2))
		op_sync();      /* else the unsynced writes are in it, and durable */
	s = snap_add(next_snap++);
	s->dir = rnd(2);
	s->st = ST_CREATING;
	snprintf(s->fname[0], sizeof(s->fname[0]), "vol");
	s->img[0] = img_new(cur);
	s->nf = 1;
	if (s->dir) {
		nc = live_clones(lc);
		for (int i = 0; i < nc; i++) {
			snprintf(s->fname[s->nf], sizeof(s->fname[0]), "c%" PRIu64, lc[i]->k);
			s->img[s->nf++] = lc[i]->img;
		}
	}
	len = snprintf(line, sizeof(line), "M %" PRIu64 " %c %d", s->n, s->dir ? 'd' : 'v', s->nf);
	for (int i = 0; i < s->nf; i++)
		len += snprintf(line + len, sizeof(line) - len, " %s %" PRIu64, s->fname[i],
				s->img[i]);
	jlog("%s", line);
	snap_name(s, name, sizeof(name));
	if (mkdir(path("%s/.snapshots/%s", g_mnt, name), 0755) < 0)
		failed("mkdir", errno);
	jlog("m %" PRIu64, s->n);
	s->st = ST_LIVE;
	st_mkdir++;
}

/* Pick a file of a live snapshot: its path below MNT and its image. */
static bool pick_snap_file(char *src, size_t len, uint64_t *img)
{
	struct snap *ls[MAX_SNAPS], *s;
	int n = live_snaps(ls), i;
	char name[64];

	if (!n)
		return false;
	s = ls[rnd(n)];
	i = rnd(s->nf);
	snap_name(s, name, sizeof(name));
	snprintf(src, len, ".snapshots/%s/%s", name, s->fname[i]);
	*img = s->img[i];
	return true;
}

/* copy_file_range all of src into dst (both open), as cp does. */
static int cfr_all(int sfd, int dfd)
{
	loff_t in = 0, out = 0;

	while ((uint64_t)in < g_bytes) {
		ssize_t n = copy_file_range(sfd, &in, dfd, &out, g_bytes - in, 0);
		if (n < 0)
			return errno;
		if (n == 0)
			return ENODATA;
	}
	return 0;
}

static void op_unlink(void)
{
	struct clone *lc[MAX_CLONES];
	int n = live_clones(lc);
	struct clone *c;

	if (!n)
		return;
	c = lc[rnd(n)];
	jlog("U %" PRIu64, c->k);
	if (unlink(path("%s/c%" PRIu64, g_mnt, c->k)) < 0)
		failed("unlink", errno);
	jlog("u %" PRIu64, c->k);
	c->st = ST_GONE;
	st_unlink++;
}

static void op_clone(void)
{
	struct clone *lc[MAX_CLONES], *c;
	char src[256];
	uint64_t img;
	int sfd, dfd, err;

	if (live_clones(lc) >= MAX_LIVE_CLONES) {
		op_unlink();
		return;
	}
	if (rnd(4) == 0) {
		/* a linked clone of the live volume: what it holds now */
		snprintf(src, sizeof(src), "vol");
		img = img_new(cur);
	} else if (!pick_snap_file(src, sizeof(src), &img)) {
		return;
	}
	c = clone_add(next_clone++);
	c->img = img;
	c->st = ST_CREATING;
	jlog("K %" PRIu64 " %" PRIu64 " %s", c->k, img, src);
	sfd = open(path("%s/%s", g_mnt, src), O_RDONLY);
	if (sfd < 0)
		failed("open clone source", errno);
	dfd = open(path("%s/c%" PRIu64, g_mnt, c->k), O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (dfd < 0)
		failed("create clone", errno);
	err = cfr_all(sfd, dfd);
	if (err)
		failed("copy_file_range (clone)", err);
	if (close(dfd) || close(sfd))
		failed("close clone", errno);
	jlog("k %" PRIu64, c->k);
	c->st = ST_LIVE;
	st_clone++;
}

static void op_revert(void)
{
	char src[256];
	uint64_t img;
	int sfd, dfd, err;

	if (!pick_snap_file(src, sizeof(src), &img))
		return;
	jlog("X %" PRIu64 " %s", img, src);
	sfd = open(path("%s/%s", g_mnt, src), O_RDONLY);
	if (sfd < 0)
		failed("open revert source", errno);
	dfd = open(path("%s/vol", g_mnt), O_WRONLY | O_TRUNC);
	if (dfd < 0)
		failed("open vol O_TRUNC", errno);
	err = cfr_all(sfd, dfd);
	if (err)
		failed("copy_file_range (revert)", err);
	if (close(dfd) || close(sfd))
		failed("close revert", errno);
	jlog("x");
	img_read(img, cur);
	st_revert++;
}

static int do_run(uint64_t seed, uint64_t gen, uint64_t nsteps)
{
	struct stat st;
	unsigned until_sync;

	base_load();
	logfd = open(path("%s/log", g_state), O_WRONLY | O_APPEND);
	if (logfd < 0 || fstat(logfd, &st) < 0)
		die("%s/log: %s", g_state, strerror(errno));
	if (st.st_size)
		die("%s/log is not empty: verify first", g_state);
	for (int i = 0; i < nsnaps; i++)
		if (snaps[i].n >= next_snap)
			die("base: snapshot number %" PRIu64 " not below next", snaps[i].n);
	cur = xmalloc(g_bytes);
	if (posix_memalign((void **)&wbuf, BLK, MAX_WRITE + 2 * BLK))
		die("out of memory");
	img_read(vol_img, cur);
	/* the kill comes at a random time anyway; the ops are from the seed */
	rng = mix(seed ^ mix(gen * 0x5851f42d4c957f2dull));
	printf("torture: run gen %" PRIu64 " on %s/vol (%" PRIu64 " blocks), %d snapshot(s), %d"
	       " clone(s)\n", gen, g_mnt, g_nblocks, nsnaps, nclones);
	fflush(stdout);
	vol_open();
	until_sync = 1 + rnd(12);
	for (uint64_t step = 0;; step++) {
		uint64_t r = rnd(1000);

		if (nsteps && step == nsteps) {
			vol_close();
			run_stats("none: step limit reached", 0);
			return 0;
		}

		if (r < 35)
			op_mkdir();
		else if (r < 60)
			op_rmdir();
		else if (r < 90)
			op_clone();
		else if (r < 100)
			op_unlink();
		else if (r < 110)
			op_revert();
		else if (r < 118) {
			vol_close();
			vol_open();
		} else {
			op_write();
			if (--until_sync == 0) {
				op_sync();
				until_sync = 1 + rnd(12);
			}
		}
	}
}

/* ---- verify ------------------------------------------------------------------ */

static uint64_t v_bad, v_bytes;

static void bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void bad(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "torture: VIOLATION: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	v_bad++;
}

static void apply(unsigned char *img, const struct pw *w, unsigned char *tmp)
{
	fill(tmp, w->len, w->dseed);
	memcpy(img + w->off, tmp, w->len);
}

/* Compare a file of the mount with an image.  1 same, 0 differs (said
 * why in *why), -errno if it cannot be read. */
static int file_is(const char *p, uint64_t img, unsigned char *got, unsigned char *want,
		   int64_t *size, char *why, size_t whylen)
{
	int64_t n = read_file(p, got, g_bytes);

	*size = n;
	if (n < 0)
		return (int)n;
	v_bytes += n;
	if ((uint64_t)n != g_bytes) {
		snprintf(why, whylen, "size %" PRId64 ", expected %" PRIu64, n, g_bytes);
		return 0;
	}
	img_read(img, want);
	if (memcmp(got, want, g_bytes)) {
		uint64_t i = 0, nbl = 0, first = 0;
		for (uint64_t b = 0; b < g_nblocks; b++)
			if (memcmp(got + b * BLK, want + b * BLK, BLK)) {
				if (!nbl++)
					first = b;
			}
		while (got[i] == want[i])
			i++;
		snprintf(why, whylen, "content differs from img.%" PRIu64 " in %" PRIu64
			 " block(s), first block %" PRIu64 " (first byte %" PRIu64 ")", img, nbl,
			 first, i);
		return 0;
	}
	return 1;
}

static const char *in_flight(const char *last)
{
	switch (last[0]) {
	case 'W': return "write";
	case 's': return "fsync";
	case 'M': return "mkdir";
	case 'R': return "rmdir";
	case 'K': return "clone";
	case 'U': return "unlink";
	case 'X': return "revert";
	default:  return "none";
	}
}

static int do_verify(void)
{
	FILE *lf;
	char line[4096], last[8] = "-";
	struct pw *pend = NULL;
	size_t npend = 0, cappend = 0;
	unsigned char *vdur, *work, *got, *want, *tmp;
	uint64_t revert_img = 0, ndur = 0, nnewer = 0, nsnap_ok = 0, nsnap_gone = 0,
		 nclone_ok = 0, nclone_gone = 0;
	bool *ok;
	int64_t size;
	int lno = 0, fd;
	DIR *d;
	struct dirent *de;
	char why[256];
	const char *settle = "nothing";

	base_load();
	vdur = xmalloc(g_bytes);
	work = xmalloc(g_bytes);
	got = xmalloc(g_bytes);
	want = xmalloc(g_bytes);
	tmp = xmalloc(MAX_WRITE);
	ok = xmalloc(g_nblocks * sizeof(*ok));
	img_read(vol_img, vdur);

	/* ---- replay the log onto base ---- */
	lf = fopen(path("%s/log", g_state), "r");
	if (!lf)
		die("%s/log: %s", g_state, strerror(errno));
	while (fgets(line, sizeof(line), lf)) {
		char *save = NULL, *w = strtok_r(line, " \n", &save), *a;

		lno++;
		if (!w)
			continue;
		snprintf(last, sizeof(last), "%s", w);
#define NEXT() ((a = strtok_r(NULL, " \n", &save)) ? a : (die("log:%d: short line", lno), a))
		switch (w[0]) {
		case 'W':
			if (npend == cappend) {
				cappend = cappend ? 2 * cappend : 64;
				pend = realloc(pend, cappend * sizeof(*pend));
				if (!pend)
					die("out of memory");
			}
			pend[npend].kind = NEXT()[0];
			NEXT();         /* through which fd */
			pend[npend].off = strtoull(NEXT(), NULL, 10);
			pend[npend].len = strtoull(NEXT(), NULL, 10);
			pend[npend].dseed = strtoull(NEXT(), NULL, 10);
			if (pend[npend].off + pend[npend].len > g_bytes || !pend[npend].len ||
			    pend[npend].len > MAX_WRITE)
				die("log:%d: write out of range", lno);
			npend++;
			break;
		case 's':
			break;
		case 'S':
		case 'm':
			/* durable: a sync returned, or a snapshot froze them */
			for (size_t i = 0; i < npend; i++)
				apply(vdur, &pend[i], tmp);
			npend = 0;
			if (w[0] == 'm') {
				struct snap *s = snap_find(strtoull(NEXT(), NULL, 10));
				if (!s || s->st != ST_CREATING)
					die("log:%d: m of an unknown snapshot", lno);
				s->st = ST_LIVE;
			}
			break;
		case 'M': {
			struct snap *s = snap_add(strtoull(NEXT(), NULL, 10));

			if (s->n >= next_snap)
				next_snap = s->n + 1;
			s->dir = NEXT()[0] == 'd';
			s->nf = atoi(NEXT());
			if (s->nf < 1 || s->nf > MAX_FILES)
				die("log:%d: bad file count", lno);
			for (int i = 0; i < s->nf; i++) {
				snprintf(s->fname[i], sizeof(s->fname[i]), "%s", NEXT());
				s->img[i] = strtoull(NEXT(), NULL, 10);
			}
			s->st = ST_CREATING;
			/* the tool's own consistency: vol's image is the volume
			 * with every write so far */
			memcpy(work, vdur, g_bytes);
			for (size_t i = 0; i < npend; i++)
				apply(work, &pend[i], tmp);
			img_read(s->img[0], want);
			if (memcmp(work, want, g_bytes))
				die("log:%d: the image of vol in snapshot %" PRIu64 " is not the"
				    " replayed volume (tool bug)", lno, s->n);
			break;
		}
		case 'R':
		case 'r': {
			struct snap *s = snap_find(strtoull(NEXT(), NULL, 10));

			if (!s || s->st != (w[0] == 'R' ? ST_LIVE : ST_DELETING))
				die("log:%d: %s of a snapshot not in that state", lno, w);
			s->st = w[0] == 'R' ? ST_DELETING : ST_GONE;
			break;
		}
		case 'K': {
			struct clone *c = clone_add(strtoull(NEXT(), NULL, 10));

			if (c->k >= next_clone)
				next_clone = c->k + 1;
			c->img = strtoull(NEXT(), NULL, 10);
			c->st = ST_CREATING;
			if (!strcmp(NEXT(), "vol")) {
				memcpy(work, vdur, g_bytes);
				for (size_t i = 0; i < npend; i++)
					apply(work, &pend[i], tmp);
				img_read(c->img, want);
				if (memcmp(work, want, g_bytes))
					die("log:%d: clone image is not the replayed volume", lno);
			}
			break;
		}
		case 'k':
		case 'U':
		case 'u': {
			struct clone *c = clone_find(strtoull(NEXT(), NULL, 10));
			enum st from = w[0] == 'k' ? ST_CREATING : w[0] == 'U' ? ST_LIVE : ST_DELETING;

			if (!c || c->st != from)
				die("log:%d: %s of a clone not in that state", lno, w);
			c->st = w[0] == 'k' ? ST_LIVE : w[0] == 'U' ? ST_DELETING : ST_GONE;
			break;
		}
		case 'X':
			revert_img = strtoull(NEXT(), NULL, 10);
			break;
		case 'x':
			if (!revert_img)
				die("log:%d: x without X", lno);
			img_read(revert_img, vdur);
			npend = 0;
			revert_img = 0;
			break;
		default:
			die("log:%d: unknown record '%s'", lno, w);
		}
#undef NEXT
	}
	fclose(lf);

	/* ---- the root: vol, clones, .snapshots and nothing else ---- */
	d = opendir(g_mnt);
	if (!d)
		die("opendir %s: %s", g_mnt, strerror(errno));
	while ((de = readdir(d))) {
		const char *nm = de->d_name;
		struct clone *c = NULL;

		if (!strcmp(nm, ".") || !strcmp(nm, "..") || !strcmp(nm, ".snapshots") ||
		    !strcmp(nm, "vol"))
			continue;
		if (nm[0] == 'c')
			c = clone_find(strtoull(nm + 1, NULL, 10));
		if (!c || c->st == ST_GONE)
			bad("%s/%s: listed, but %s", g_mnt, nm,
			    c ? "its unlink returned" : "never made");
	}
	closedir(d);

	/* ---- vol ---- */
	size = read_file(path("%s/vol", g_mnt), got, g_bytes);
	if (size < 0) {
		bad("%s/vol: cannot read: %s", g_mnt, strerror((int)-size));
		size = g_bytes;
		memcpy(got, vdur, g_bytes);
	} else {
		v_bytes += size;
	}
	if (revert_img && size == 0) {
		settle = "vol truncated by the revert in flight: size restored";
		memset(got, 0, g_bytes);
		fd = open(path("%s/vol", g_mnt), O_WRONLY);
		if (fd < 0 || ftruncate(fd, g_bytes) || fsync(fd) || close(fd))
			die("restore the size of %s/vol: %s", g_mnt, strerror(errno));
	} else if ((uint64_t)size != g_bytes) {
		bad("%s/vol: size %" PRId64 ", expected %" PRIu64 "%s", g_mnt, size, g_bytes,
		    revert_img ? " (or 0: a revert was in flight)" : "");
	} else if (revert_img && (img_read(revert_img, want), !memcmp(got, want, g_bytes))) {
		settle = "vol reverted by the revert in flight";
		ndur = g_nblocks;
	} else {
		/* each block: its durable content, or its content after one of
		 * the later writes that touched it */
		uint64_t nbadb = 0;

		memcpy(work, vdur, g_bytes);
		for (uint64_t b = 0; b < g_nblocks; b++) {
			ok[b] = !memcmp(got + b * BLK, vdur + b * BLK, BLK);
			ndur += ok[b];
		}
		for (size_t i = 0; i < npend; i++) {
			uint64_t b0 = pend[i].off / BLK, b1 = (pend[i].off + pend[i].len - 1) / BLK;

			apply(work, &pend[i], tmp);
			for (uint64_t b = b0; b <= b1; b++)
				if (!ok[b] && !memcmp(got + b * BLK, work + b * BLK, BLK)) {
					ok[b] = true;
					nnewer++;
				}
		}
		for (uint64_t b = 0; b < g_nblocks; b++) {
			uint64_t i = 0;

			if (ok[b])
				continue;
			if (nbadb++ >= 20)
				continue;
			while (i < BLK && got[b * BLK + i] == vdur[b * BLK + i])
				i++;
			bad("%s/vol block %" PRIu64 ": neither its durable content nor any later"
			    " write's (first byte off the durable content: %" PRIu64 ", got %02x,"
			    " durable %02x; %zu write(s) not synced)", g_mnt, b, i,
			    got[b * BLK + i], vdur[b * BLK + i], npend);
		}
		if (nbadb > 20)
			bad("... %" PRIu64 " bad blocks in all", nbadb);
	}
	/* what was read is what the index holds: durable from now on */
	if (memcmp(got, vdur, g_bytes) || revert_img)
		vol_img = img_new(got);
	else {
		img_read(vol_img, want);
		if (memcmp(got, want, g_bytes))
			vol_img = img_new(got);
	}

	/* ---- clones ---- */
	for (int i = 0; i < nclones; i++) {
		struct clone *c = &clones[i];
		char p[PATH_MAX];
		int r;

		snprintf(p, sizeof(p), "%s/c%" PRIu64, g_mnt, c->k);

		if (c->st == ST_GONE) {
			if (access(p, F_OK) == 0 || errno != ENOENT)
				bad("%s: still there (%s) although its unlink returned", p,
				    strerror(errno));
			continue;
		}
		r = file_is(p, c->img, got, want, &size, why, sizeof(why));
		if (r == -ENOENT && c->st != ST_LIVE) {
			c->st = ST_GONE;
			nclone_gone++;
		} else if (r == 1) {
			c->st = ST_LIVE;
			nclone_ok++;
		} else if (r == 0 && size == 0 && c->st == ST_CREATING) {
			if (unlink(p))
				die("unlink %s: %s", p, strerror(errno));
			c->st = ST_GONE;
			settle = "empty clone of the clone in flight unlinked";
			nclone_gone++;
		} else {
			bad("%s (%s): %s", p,
			    c->st == ST_LIVE ? "its copy_file_range returned" :
			    c->st == ST_CREATING ? "clone in flight" : "unlink in flight",
			    r < 0 ? strerror(-r) : why);
			c->st = ST_GONE;
		}
	}

	/* ---- snapshots ---- */
	d = opendir(path("%s/.snapshots", g_mnt));
	if (!d)
		die("opendir %s/.snapshots: %s", g_mnt, strerror(errno));
	while ((de = readdir(d))) {
		const char *nm = de->d_name;
		struct snap *s = NULL;

		if (!strcmp(nm, ".") || !strcmp(nm, ".."))
			continue;
		if (nm[0] == 'd')
			s = snap_find(strtoull(nm + 1, NULL, 10));
		else if (!strncmp(nm, "vol@s", 5))
			s = snap_find(strtoull(nm + 5, NULL, 10));
		if (s) {
			char want_name[64];
			snap_name(s, want_name, sizeof(want_name));
			if (strcmp(want_name, nm))
				s = NULL;
		}
		if (!s || s->st == ST_GONE)
			bad("%s/.snapshots/%s: listed, but %s", g_mnt, nm,
			    s ? "its rmdir returned" : "never made");
	}
	closedir(d);
	for (int i = 0; i < nsnaps; i++) {
		struct snap *s = &snaps[i];
		char name[64], sp[PATH_MAX];
		struct stat st;
		int nlisted = 0;
		bool exact = true;

		snap_name(s, name, sizeof(name));
		snprintf(sp, sizeof(sp), "%s/.snapshots/%s", g_mnt, name);
		if (stat(sp, &st) < 0) {
			if (errno != ENOENT)
				bad("%s: %s", sp, strerror(errno));
			else if (s->st == ST_LIVE)
				bad("%s: missing although its mkdir returned", sp);
			else if (s->st == ST_DELETING || s->st == ST_CREATING)
				nsnap_gone++;
			s->st = ST_GONE;
			continue;
		}
		if (s->st == ST_GONE) {
			bad("%s: still there although its rmdir returned", sp);
			continue;
		}
		/* the snapshot lists exactly its files, each exact */
		d = opendir(sp);
		if (!d) {
			bad("opendir %s: %s", sp, strerror(errno));
			s->st = ST_GONE;
			continue;
		}
		while ((de = readdir(d))) {
			bool known = false;

			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			for (int j = 0; j < s->nf; j++)
				known |= !strcmp(de->d_name, s->fname[j]);
			if (!known) {
				bad("%s/%s: listed, but the snapshot was taken without it", sp,
				    de->d_name);
				exact = false;
			}
			nlisted++;
		}
		closedir(d);
		if (nlisted != s->nf) {
			bad("%s: lists %d file(s), taken with %d", sp, nlisted, s->nf);
			exact = false;
		}
		for (int j = 0; j < s->nf; j++) {
			int r = file_is(path("%s/%s", sp, s->fname[j]), s->img[j], got, want, &size,
					why, sizeof(why));
			if (r != 1) {
				bad("%s/%s (%s): %s", sp, s->fname[j],
				    s->st == ST_LIVE ? "its mkdir returned" :
				    s->st == ST_CREATING ? "mkdir in flight" : "rmdir in flight",
				    r < 0 ? strerror(-r) : why);
				exact = false;
			}
		}
		if (exact)
			nsnap_ok++;
		s->st = exact ? ST_LIVE : ST_GONE;
	}

	printf("torture: verify: vol: %" PRIu64 " blocks as durable, %" PRIu64 " newer (%zu write(s)"
	       " after the last sync); %" PRIu64 " snapshot(s) exact, %" PRIu64 " in flight and"
	       " gone; %" PRIu64 " clone(s) exact, %" PRIu64 " in flight and gone; in flight at"
	       " the kill: %s; settled: %s; %" PRIu64 " bytes compared\n", ndur, nnewer, npend,
	       nsnap_ok, nsnap_gone, nclone_ok, nclone_gone, in_flight(last), settle, v_bytes);
	printf("torture-stats: bytes=%" PRIu64 " inflight=%s snaps=%" PRIu64 " clones=%" PRIu64
	       " bad=%" PRIu64 "\n", v_bytes, in_flight(last), nsnap_ok, nclone_ok, v_bad);
	if (v_bad) {
		fprintf(stderr, "torture: %" PRIu64 " violation(s); state and log kept in %s\n",
			v_bad, g_state);
		return 1;
	}
	base_save();
	fd = open(path("%s/log", g_state), O_WRONLY | O_TRUNC);
	if (fd < 0 || close(fd))
		die("%s/log: %s", g_state, strerror(errno));
	return 0;
}

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
	fprintf(stderr, "usage: torture init [-b NBLOCKS] [-s SEED] STATE MNT\n"
			"       torture run -s SEED -g GEN [-n STEPS] [-w KINDS] STATE MNT\n"
			"       torture verify STATE MNT\n");
	exit(2);
}

int main(int argc, char **argv)
{
	uint64_t seed = 1, gen = 0, nblocks = 1024, nsteps = 0;
	const char *mode;
	int c;

	if (argc < 2)
		usage();
	mode = argv[1];
	optind = 2;
	while ((c = getopt(argc, argv, "s:g:b:n:w:")) != -1) {
		switch (c) {
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'g': gen = strtoull(optarg, NULL, 0); break;
		case 'b': nblocks = strtoull(optarg, NULL, 0); break;
		case 'n': nsteps = strtoull(optarg, NULL, 0); break;
		case 'w': g_kinds = optarg; break;
		default: usage();
		}
	}
	if (argc - optind != 2)
		usage();
	g_state = argv[optind];
	g_mnt = argv[optind + 1];
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(mode, "init")) {
		if (!nblocks || nblocks > (1u << 20))
			usage();
		return do_init(nblocks, seed);
	}
	if (!strcmp(mode, "run")) {
		if (!gen || !*g_kinds || strspn(g_kinds, "bdzp") != strlen(g_kinds))
			usage();
		return do_run(seed, gen, nsteps);
	}
	if (!strcmp(mode, "verify"))
		return do_verify();
	usage();
}
