/*
 * iomodel: random I/O against a file and a plain model file, compared.
 *
 *   iomodel [-d] [-a ALIGN] [-t THREADS] [-n OPS] [-k EVERY] [-S SIZE]
 *           [-s SEED] [-r] [-c] FILE MODEL
 *
 * Every operation is applied to FILE (on the file system under test) and to
 * MODEL (a file on a trusted file system, written only with pwrite, so its
 * contents are simply "what the bytes must be").  Reads from FILE are checked
 * against MODEL as they happen; every EVERY operations (per thread) all
 * threads stop and the whole of FILE is compared with MODEL, its size too,
 * and its holes (SEEK_HOLE/SEEK_DATA) are checked: a range reported as a hole
 * must read as zeros.  At the end one more full comparison.
 *
 * Operations: write (random bytes, all zeros, or a repeated byte; offsets and
 * lengths chosen to cross 4 KiB and 64 KiB boundaries), read, fallocate
 * PUNCH_HOLE and ZERO_RANGE, SEEK_DATA/SEEK_HOLE probes, fdatasync; and,
 * between rounds when every thread is stopped, ftruncate shrink and grow
 * (to sizes that are not block multiples) and back to SIZE.
 *
 * Threads: thread i works only on its region [i*SIZE/T, (i+1)*SIZE/T); with
 * -r the inner region boundaries are moved off block boundaries so that
 * neighbours write different bytes of one block at the same time.
 *
 *   -d        open FILE with O_DIRECT; buffers are 4 KiB aligned and every
 *             offset and length a multiple of ALIGN (default 4096)
 *   -a ALIGN  offset/length granularity (default 1 buffered, 4096 direct)
 *   -c        continue: do not reset the files; they must already be equal
 *   -s SEED   default: from the clock; printed either way
 *
 * Exit status 0 when everything matched; 1 with a report of the first
 * difference and each thread's last operations; 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>

#include "rng.h"

#define MAX_THREADS 64
#define RING        32          /* operations remembered per thread */
#define RING_TEXT   160
#define BUF_BYTES   (1u << 20)  /* largest single operation */
#define CMP_BYTES   (1u << 20)

struct worker {
	int id;
	pthread_t tid;
	uint64_t rng;
	uint64_t lo, hi;            /* region [lo, hi) */
	unsigned char *buf, *mbuf;  /* aligned op buffers */
	char ring[RING][RING_TEXT];
	unsigned nops;
};

static struct {
	const char *path, *model_path;
	int fd, mfd;
	bool direct, cont, ragged;
	uint64_t align, size, seed;
	unsigned nthreads, ops, every;
	pthread_barrier_t start, done;
	volatile bool stop;
	struct worker w[MAX_THREADS];
	pthread_mutex_t report_mu;
} g;

static uint64_t rng_below(uint64_t *s, uint64_t n)
{
	return n ? rng_next(s) % n : 0;
}

static void dump_rings(void)
{
	for (unsigned t = 0; t < g.nthreads; t++) {
		struct worker *w = &g.w[t];
		unsigned n = w->nops < RING ? w->nops : RING;
		fprintf(stderr, "iomodel: last %u ops of thread %u:\n", n, t);
		for (unsigned i = w->nops - n; i < w->nops; i++)
			fprintf(stderr, "  #%u %s\n", i, w->ring[i % RING]);
	}
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&g.report_mu);
	fprintf(stderr, "iomodel: FAIL (seed %" PRIu64 "): ", g.seed);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	dump_rings();
	fflush(stderr);
	_exit(1);
}

static void record(struct worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void record(struct worker *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->ring[w->nops % RING], RING_TEXT, fmt, ap);
	va_end(ap);
	w->nops++;
}

static void full_pwrite(int fd, const void *buf, size_t len, uint64_t off, const char *what)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("pwrite %s off %" PRIu64 " len %zu: %s", what, off + done, len - done,
			    strerror(errno));
		if (n == 0)
			die("pwrite %s off %" PRIu64 ": wrote 0 bytes", what, off + done);
		if (g.direct && fd == g.fd && (size_t)n != len - done)
			die("pwrite %s off %" PRIu64 " len %zu: short O_DIRECT write %zd", what,
			    off + done, len - done, n);
		done += (size_t)n;
	}
}

/* Read up to len bytes; a short count only at end of file. */
static size_t full_pread(int fd, void *buf, size_t len, uint64_t off, const char *what)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("pread %s off %" PRIu64 " len %zu: %s", what, off + done, len - done,
			    strerror(errno));
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return done;
}

static uint64_t file_size(int fd, const char *what)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		die("fstat %s: %s", what, strerror(errno));
	return (uint64_t)st.st_size;
}

static void compare_range(const unsigned char *a, const unsigned char *b, size_t len,
			  uint64_t off, const char *ctx)
{
	if (memcmp(a, b, len) == 0)
		return;
	for (size_t i = 0; i < len; i++) {
		if (a[i] != b[i]) {
			size_t j = i;
			while (j < len && a[j] != b[j])
				j++;
			die("%s: file differs from model at offset %" PRIu64
			    " (0x%" PRIx64 "): file byte 0x%02x, model 0x%02x; %zu differing bytes"
			    " from there", ctx, off + i, off + i, a[i], b[i], j - i);
		}
	}
}

static bool all_zero(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

/* [from, to) was reported a hole: the model must hold zeros there. */
static void check_model_zero(struct worker *w, uint64_t from, uint64_t to, const char *ctx)
{
	while (from < to) {
		size_t n = to - from > BUF_BYTES ? BUF_BYTES : (size_t)(to - from);
		size_t got = full_pread(g.mfd, w->mbuf, n, from, "model");
		if (!all_zero(w->mbuf, got)) {
			size_t i = 0;
			while (!w->mbuf[i])
				i++;
			die("%s: range reported as a hole holds data: model byte at %" PRIu64
			    " is 0x%02x", ctx, from + i, w->mbuf[i]);
		}
		if (got < n)
			break;
		from += n;
	}
}

/* ---- operations ---------------------------------------------------------- */

static uint64_t align_down(uint64_t x) { return x / g.align * g.align; }

/*
 * A random [off, off+len) inside [lo, hi): often placed across a 4 KiB or a
 * 64 KiB boundary, lengths mostly small, sometimes large.
 */
static void pick_range(struct worker *w, uint64_t maxlen, uint64_t *off, uint64_t *len)
{
	uint64_t lo = w->lo, hi = w->hi, o, l;
	uint64_t r = rng_below(&w->rng, 100);

	if (r < 45)
		l = 1 + rng_below(&w->rng, 9000);
	else if (r < 80)
		l = 1 + rng_below(&w->rng, 70000);
	else
		l = 1 + rng_below(&w->rng, maxlen);
	r = rng_below(&w->rng, 100);
	if (r < 30) {
		uint64_t b = 4096 * (1 + rng_below(&w->rng, (hi - lo) / 4096));
		o = lo + b - rng_below(&w->rng, l < 4096 ? l : 4096);
	} else if (r < 55) {
		uint64_t b = 65536 * (1 + rng_below(&w->rng, (hi - lo) / 65536 + 1));
		o = lo + b - rng_below(&w->rng, l < 65536 ? l : 65536);
	} else {
		o = lo + rng_below(&w->rng, hi - lo);
	}
	/* clamp into the region, then to the alignment */
	if (o < lo)
		o = lo;
	if (o >= hi)
		o = hi - 1;
	if (l > hi - o)
		l = hi - o;
	if (g.align > 1) {
		uint64_t e = align_down(o + l);
		o = align_down(o);     /* lo and hi are multiples of align */
		if (e <= o)
			e = o + g.align;
		l = e - o;
	}
	*off = o;
	*len = l;
}

static void fill(struct worker *w, unsigned char *p, size_t len, int kind)
{
	if (kind == 0) {
		memset(p, 0, len);
	} else if (kind == 1) {
		memset(p, (int)(1 + rng_below(&w->rng, 255)), len);
	} else {
		size_t i = 0;
		for (; i + 8 <= len; i += 8) {
			uint64_t v = rng_next(&w->rng);
			memcpy(p + i, &v, 8);
		}
		for (; i < len; i++)
			p[i] = (unsigned char)rng_next(&w->rng);
	}
}

static void op_write(struct worker *w)
{
	uint64_t off, len;
	uint64_t r = rng_below(&w->rng, 100);
	int kind = r < 12 ? 0 : r < 25 ? 1 : 2;

	pick_range(w, BUF_BYTES, &off, &len);
	fill(w, w->buf, len, kind);
	record(w, "write off %" PRIu64 " len %" PRIu64 " kind %s", off, len,
	       kind == 0 ? "zeros" : kind == 1 ? "byte" : "random");
	full_pwrite(g.fd, w->buf, len, off, "file");
	full_pwrite(g.mfd, w->buf, len, off, "model");
}

static void op_read(struct worker *w)
{
	uint64_t off, len;
	size_t a, b;
	char ctx[96];

	pick_range(w, BUF_BYTES, &off, &len);
	record(w, "read off %" PRIu64 " len %" PRIu64, off, len);
	a = full_pread(g.fd, w->buf, len, off, "file");
	b = full_pread(g.mfd, w->mbuf, len, off, "model");
	if (a != b)
		die("read off %" PRIu64 " len %" PRIu64 ": file gave %zu bytes, model %zu",
		    off, len, a, b);
	snprintf(ctx, sizeof(ctx), "read off %" PRIu64 " len %" PRIu64, off, len);
	compare_range(w->buf, w->mbuf, a, off, ctx);
}

static void op_fallocate(struct worker *w, bool punch)
{
	uint64_t off, len;
	int mode = punch ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE;

	pick_range(w, 4 * BUF_BYTES, &off, &len);
	if (!punch && rng_below(&w->rng, 2))
		mode |= FALLOC_FL_KEEP_SIZE;
	record(w, "fallocate %s%s off %" PRIu64 " len %" PRIu64,
	       punch ? "PUNCH_HOLE" : "ZERO_RANGE",
	       (mode & FALLOC_FL_KEEP_SIZE) && !punch ? "|KEEP_SIZE" : "", off, len);
	if (fallocate(g.fd, mode, (off_t)off, (off_t)len) < 0)
		die("fallocate %s off %" PRIu64 " len %" PRIu64 ": %s",
		    punch ? "PUNCH_HOLE" : "ZERO_RANGE", off, len, strerror(errno));
	/* the model just gets zeros written */
	while (len) {
		size_t n = len > BUF_BYTES ? BUF_BYTES : (size_t)len;
		memset(w->mbuf, 0, n);
		full_pwrite(g.mfd, w->mbuf, n, off, "model");
		off += n;
		len -= n;
	}
}

/*
 * Probe SEEK_DATA and SEEK_HOLE at a random offset of the region.  What the
 * file system says is a hole (clipped to our region: other threads' regions
 * change under us) must be zeros in the model.  Claiming data where the model
 * has zeros is allowed (block granularity, zeros written as data).
 */
static void op_seek(struct worker *w)
{
	uint64_t off = w->lo + rng_below(&w->rng, w->hi - w->lo);
	off_t d, h;
	char ctx[128];

	record(w, "seek probe off %" PRIu64, off);
	d = lseek(g.fd, (off_t)off, SEEK_DATA);
	if (d < 0 && errno != ENXIO)
		die("lseek(%" PRIu64 ", SEEK_DATA): %s", off, strerror(errno));
	if (d >= 0 && (uint64_t)d < off)
		die("lseek(%" PRIu64 ", SEEK_DATA) = %jd, before the offset", off, (intmax_t)d);
	snprintf(ctx, sizeof(ctx), "SEEK_DATA(%" PRIu64 ") = %jd", off,
		 (intmax_t)(d < 0 ? -1 : d));
	check_model_zero(w, off, d < 0 ? w->hi : ((uint64_t)d < w->hi ? (uint64_t)d : w->hi), ctx);

	h = lseek(g.fd, (off_t)off, SEEK_HOLE);
	if (h < 0)
		die("lseek(%" PRIu64 ", SEEK_HOLE) inside the file: %s", off, strerror(errno));
	if ((uint64_t)h < off)
		die("lseek(%" PRIu64 ", SEEK_HOLE) = %jd, before the offset", off, (intmax_t)h);
	if ((uint64_t)h < w->hi) {
		/* a hole starts at h and lasts until the next data */
		d = lseek(g.fd, h, SEEK_DATA);
		if (d < 0 && errno != ENXIO)
			die("lseek(%jd, SEEK_DATA): %s", (intmax_t)h, strerror(errno));
		if (d >= 0 && d <= h)
			die("SEEK_HOLE(%" PRIu64 ") = %jd but SEEK_DATA(%jd) = %jd", off,
			    (intmax_t)h, (intmax_t)h, (intmax_t)d);
		snprintf(ctx, sizeof(ctx), "SEEK_HOLE(%" PRIu64 ") = %jd, next SEEK_DATA = %jd",
			 off, (intmax_t)h, (intmax_t)(d < 0 ? -1 : d));
		check_model_zero(w, (uint64_t)h,
				 d < 0 || (uint64_t)d > w->hi ? w->hi : (uint64_t)d, ctx);
	}
}

static void op_sync(struct worker *w)
{
	record(w, "fdatasync");
	if (fdatasync(g.fd) < 0)
		die("fdatasync: %s", strerror(errno));
}

static void one_op(struct worker *w)
{
	uint64_t r = rng_below(&w->rng, 100);

	if (r < 55)
		op_write(w);
	else if (r < 75)
		op_read(w);
	else if (r < 82)
		op_fallocate(w, true);
	else if (r < 89)
		op_fallocate(w, false);
	else if (r < 98)
		op_seek(w);
	else
		op_sync(w);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	unsigned done = 0;

	for (;;) {
		pthread_barrier_wait(&g.start);
		if (g.stop)
			break;
		for (unsigned i = 0; i < g.every && done < g.ops; i++, done++)
			one_op(w);
		pthread_barrier_wait(&g.done);
	}
	return NULL;
}

/* ---- whole-file checks (all threads stopped) ------------------------------ */

static void compare_all(const char *when)
{
	struct worker *w = &g.w[0];
	uint64_t fsz = file_size(g.fd, "file"), msz = file_size(g.mfd, "model");
	uint64_t off = 0, pos;
	char ctx[96];

	if (fsz != msz)
		die("%s: file size %" PRIu64 ", model size %" PRIu64, when, fsz, msz);
	snprintf(ctx, sizeof(ctx), "%s: full compare", when);
	for (;;) {
		size_t a = full_pread(g.fd, w->buf, CMP_BYTES, off, "file");
		size_t b = full_pread(g.mfd, w->mbuf, CMP_BYTES, off, "model");
		if (a != b)
			die("%s: at %" PRIu64 " file gave %zu bytes, model %zu", ctx, off, a, b);
		compare_range(w->buf, w->mbuf, a, off, ctx);
		off += a;
		if (a < CMP_BYTES)
			break;
	}
	if (off != fsz)
		die("%s: read %" PRIu64 " bytes of a %" PRIu64 "-byte file", ctx, off, fsz);

	/* walk every hole: each must be zeros in the model */
	pos = 0;
	while (pos < fsz) {
		off_t h = lseek(g.fd, (off_t)pos, SEEK_HOLE), d;
		if (h < 0)
			die("%s: lseek(%" PRIu64 ", SEEK_HOLE): %s", when, pos, strerror(errno));
		if ((uint64_t)h < pos || (uint64_t)h > fsz)
			die("%s: lseek(%" PRIu64 ", SEEK_HOLE) = %jd, size %" PRIu64, when, pos,
			    (intmax_t)h, fsz);
		if ((uint64_t)h == fsz)
			break;
		d = lseek(g.fd, h, SEEK_DATA);
		if (d < 0 && errno != ENXIO)
			die("%s: lseek(%jd, SEEK_DATA): %s", when, (intmax_t)h, strerror(errno));
		if (d >= 0 && ((uint64_t)d <= (uint64_t)h || (uint64_t)d > fsz))
			die("%s: lseek(%jd, SEEK_DATA) = %jd, size %" PRIu64, when,
			    (intmax_t)h, (intmax_t)d, fsz);
		snprintf(ctx, sizeof(ctx), "%s: hole [%jd, %jd)", when, (intmax_t)h,
			 (intmax_t)(d < 0 ? (off_t)fsz : d));
		check_model_zero(w, (uint64_t)h, d < 0 ? fsz : (uint64_t)d, ctx);
		pos = d < 0 ? fsz : (uint64_t)d;
	}
}

static void truncate_both(uint64_t size, const char *why)
{
	record(&g.w[0], "ftruncate %" PRIu64 " (%s)", size, why);
	if (ftruncate(g.fd, (off_t)size) < 0)
		die("ftruncate file to %" PRIu64 " (%s): %s", size, why, strerror(errno));
	if (ftruncate(g.mfd, (off_t)size) < 0)
		die("ftruncate model to %" PRIu64 ": %s", size, strerror(errno));
}

/* Shrink or grow to a size that is not a block multiple, check, restore. */
static void truncate_round(uint64_t *rng)
{
	uint64_t r = rng_below(rng, 3), sz;

	if (r == 0)
		return;
	if (r == 1)
		sz = g.size / 2 + rng_below(rng, g.size / 2);
	else
		sz = g.size + 1 + rng_below(rng, 3 * 65536);
	if (g.direct)
		sz = sz / 512 * 512;   /* O_DIRECT reads need not end mid-sector */
	truncate_both(sz, r == 1 ? "shrink" : "grow");
	compare_all(r == 1 ? "after shrink" : "after grow");
	truncate_both(g.size, "restore");
}

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 0);

	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	default: break;
	}
	if (*end) {
		fprintf(stderr, "iomodel: bad size '%s'\n", s);
		exit(2);
	}
	return v;
}

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
	fprintf(stderr, "usage: iomodel [-d] [-a ALIGN] [-t THREADS] [-n OPS] [-k EVERY]"
		" [-S SIZE] [-s SEED] [-r] [-c] FILE MODEL\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int c, flags;
	bool have_seed = false;
	uint64_t trng;

	g.align = 0;
	g.nthreads = 1;
	g.ops = 1000;
	g.every = 100;
	g.size = 64u << 20;
	pthread_mutex_init(&g.report_mu, NULL);
	while ((c = getopt(argc, argv, "da:t:n:k:S:s:rc")) != -1) {
		switch (c) {
		case 'd': g.direct = true; break;
		case 'a': g.align = parse_size(optarg); break;
		case 't': g.nthreads = (unsigned)atoi(optarg); break;
		case 'n': g.ops = (unsigned)atoi(optarg); break;
		case 'k': g.every = (unsigned)atoi(optarg); break;
		case 'S': g.size = parse_size(optarg); break;
		case 's': g.seed = strtoull(optarg, NULL, 0); have_seed = true; break;
		case 'r': g.ragged = true; break;
		case 'c': g.cont = true; break;
		default: usage();
		}
	}
	if (argc - optind != 2 || g.nthreads < 1 || g.nthreads > MAX_THREADS || g.every < 1)
		usage();
	if (!g.align)
		g.align = g.direct ? 4096 : 1;
	if (g.size < g.nthreads * (uint64_t)2 * 65536 || g.size % 65536)
		usage();
	g.path = argv[optind];
	g.model_path = argv[optind + 1];
	if (!have_seed) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		g.seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid();
	}
	printf("iomodel: seed %" PRIu64 " file %s threads %u ops %u every %u size %" PRIu64
	       " %s align %" PRIu64 "%s\n", g.seed, g.path, g.nthreads, g.ops, g.every, g.size,
	       g.direct ? "O_DIRECT" : "buffered", g.align, g.ragged ? " ragged" : "");
	fflush(stdout);

	flags = O_RDWR | (g.cont ? 0 : O_CREAT) | (g.direct ? O_DIRECT : 0);
	g.fd = open(g.path, flags, 0644);
	if (g.fd < 0) {
		fprintf(stderr, "iomodel: open %s: %s\n", g.path, strerror(errno));
		return 1;
	}
	g.mfd = open(g.model_path, O_RDWR | (g.cont ? 0 : O_CREAT), 0644);
	if (g.mfd < 0) {
		fprintf(stderr, "iomodel: open %s: %s\n", g.model_path, strerror(errno));
		return 1;
	}

	for (unsigned t = 0; t < g.nthreads; t++) {
		struct worker *w = &g.w[t];
		w->id = (int)t;
		w->rng = g.seed ^ (0x5851f42d4c957f2dull * (t + 1));
		w->lo = g.size / g.nthreads * t;
		w->hi = t + 1 == g.nthreads ? g.size : g.size / g.nthreads * (t + 1);
		if (g.ragged && t > 0)
			w->lo += 2560;
		if (g.ragged && t + 1 < g.nthreads)
			w->hi += 2560;
		if (w->lo % g.align || w->hi % g.align) {
			fprintf(stderr, "iomodel: region bounds must be multiples of -a %" PRIu64
				" (with -r use -a 512 or less)\n", g.align);
			return 2;
		}
		if (posix_memalign((void **)&w->buf, 4096, 4 * BUF_BYTES) ||
		    posix_memalign((void **)&w->mbuf, 4096, 4 * BUF_BYTES)) {
			fprintf(stderr, "iomodel: out of memory\n");
			return 1;
		}
	}

	if (g.cont) {
		if (file_size(g.fd, "file") != g.size)
			die("-c: file size %" PRIu64 " is not -S %" PRIu64,
			    file_size(g.fd, "file"), g.size);
	} else {
		truncate_both(0, "reset");
		truncate_both(g.size, "initial size");
	}
	compare_all("at start");

	pthread_barrier_init(&g.start, NULL, g.nthreads + 1);
	pthread_barrier_init(&g.done, NULL, g.nthreads + 1);
	for (unsigned t = 0; t < g.nthreads; t++)
		if (pthread_create(&g.w[t].tid, NULL, worker_main, &g.w[t])) {
			fprintf(stderr, "iomodel: pthread_create failed\n");
			return 1;
		}
	trng = g.seed ^ 0xabcdefull;
	for (unsigned done = 0; done < g.ops; done += g.every) {
		char when[64];

		pthread_barrier_wait(&g.start);
		pthread_barrier_wait(&g.done);
		snprintf(when, sizeof(when), "after %u ops per thread",
			 done + g.every < g.ops ? done + g.every : g.ops);
		compare_all(when);
		truncate_round(&trng);
	}
	g.stop = true;
	pthread_barrier_wait(&g.start);
	for (unsigned t = 0; t < g.nthreads; t++)
		pthread_join(g.w[t].tid, NULL);

	if (fsync(g.fd) < 0)
		die("fsync: %s", strerror(errno));
	compare_all("at end");
	if (close(g.fd) < 0)
		die("close file: %s", strerror(errno));
	if (fsync(g.mfd) < 0 || close(g.mfd) < 0)
		die("close model: %s", strerror(errno));
	printf("iomodel: ok, %u ops x %u threads, seed %" PRIu64 "\n", g.ops, g.nthreads, g.seed);
	return 0;
}
