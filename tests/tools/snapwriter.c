/*
 * snapwriter: take snapshots with mkdir while an O_DIRECT writer runs, and
 * check afterwards that each snapshot is one instant of the write sequence.
 *
 *   snapwriter run    [-l] -s SEED -b NBLOCKS -n NWRITES -k NSNAPS
 *                     -S MKDIR_TEMPLATE LOG FILE...
 *   snapwriter verify LOG SNAP|final FILE...
 *
 * Each FILE is seen as NBLOCKS blocks of 4096 bytes (it must exist and be at
 * least that big; it should read as zeros at the start).  One writer thread
 * writes whole blocks with O_DIRECT, one pwrite at a time, so the writes form
 * one sequence: write number i (0, 1, ...) puts a block image that names the
 * seed, file number, block number, generation and i, filled with bytes
 * derived from all of them.  Any block read back is therefore recognised
 * exactly as one write, as zeros (never written), or as garbage.
 *
 *   random mode (default): each write picks a file and a block at random
 *     (seeded); its generation is that block's write count.
 *   lockstep (-l): step G (1, 2, ...) picks a block b at random and writes
 *     generation G to block b of FILE 1, then of FILE 2, ... in order.
 *
 * A second thread takes NSNAPS snapshots while the writer runs: for snapshot
 * j (1..NSNAPS) it waits until the writer has completed a seeded number of
 * writes, reads DONE = the number of writes that have returned, calls
 * mkdir(MKDIR_TEMPLATE with "%d" replaced by j), and then reads STARTED = the
 * number of writes that had been issued.  The writer keeps going until
 * NWRITES are done and every snapshot is taken.
 *
 * LOG (a host file) gets one line per event, written when it happened:
 *   H seed nblocks nfiles mode             header
 *   W i file block gen                     after write i returned
 *   S j done started t_before_ns t_after_ns path    after mkdir j returned
 *   E j errno path                         mkdir j failed
 * (t_* are CLOCK_MONOTONIC before and after the mkdir.)
 *
 * verify: FILE... are the images of the same files in snapshot SNAP (or the
 * live files for "final", whose window is all the writes).  Every block must
 * be zeros or exactly one write of its own file and block, and the whole set
 * must equal the state after the first P writes for some P with
 * DONE <= P <= STARTED: every write that returned before mkdir started is
 * in, none that was issued after mkdir returned is, and nothing in between is
 * half in (a crash-consistent instant across all the files).  In lockstep
 * mode it also prints and checks the newest generation per file: file 1 has
 * G or G+1 when file 2 has G.
 *
 * Exit status: 0 good, 1 a violation or an I/O error (each is printed), 2
 * usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rng.h"

#define BLK     4096u
#define MAGIC   "VSSNAPW1"
#define MAXF    8

struct hdr {
	char     magic[8];
	uint64_t seed;
	uint32_t file;
	uint32_t block;
	uint64_t gen;
	uint64_t idx;
};

static void make_block(uint8_t *buf, uint64_t seed, uint32_t file, uint32_t block, uint64_t gen,
		       uint64_t idx)
{
	struct hdr h;
	uint64_t s = seed ^ mix(idx + 1) ^ ((uint64_t)file << 56) ^ ((uint64_t)block << 20) ^ gen;

	memcpy(h.magic, MAGIC, 8);
	h.seed = seed;
	h.file = file;
	h.block = block;
	h.gen = gen;
	h.idx = idx;
	for (size_t off = 0; off < BLK; off += 8) {
		uint64_t r = rng_next(&s);

		memcpy(buf + off, &r, 8);
	}
	memcpy(buf, &h, sizeof(h));
}

static void usage(void)
{
	fprintf(stderr, "usage: snapwriter run [-l] -s SEED -b NBLOCKS -n NWRITES -k NSNAPS "
			"-S MKDIR_TEMPLATE LOG FILE...\n"
			"       snapwriter verify LOG SNAP|final FILE...\n");
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* ---- run ------------------------------------------------------------------- */

static struct {
	uint64_t seed;
	uint32_t nblocks, nfiles, nsnaps;
	uint64_t nwrites;
	bool lockstep;
	const char *tmpl;
	FILE *log;
	int fd[MAXF];
	atomic_uint_fast64_t started;   /* writes issued */
	atomic_uint_fast64_t done;      /* writes returned */
	atomic_int snaps_left;
	atomic_int failed;
	pthread_mutex_t log_mu;
} R;

static void *snap_thread(void *arg)
{
	uint64_t rs = R.seed ^ 0x5a5a5a5a5a5aull;

	for (uint32_t j = 1; j <= R.nsnaps; j++) {
		/* the j-th snapshot somewhere in the j-th slice of the run */
		uint64_t slice = R.nwrites / (R.nsnaps + 1);
		uint64_t target = j * slice + (slice ? rng_next(&rs) % (slice / 2 + 1) : 0);
		char path[4096];
		uint64_t done, started, t0, t1;
		int rc, err = 0;

		while (atomic_load(&R.done) < target && !atomic_load(&R.failed))
			usleep(50);
		if (atomic_load(&R.failed))
			break;
		snprintf(path, sizeof(path), R.tmpl, (int)j);
		t0 = now_ns();
		done = atomic_load(&R.done);
		rc = mkdir(path, 0755);
		if (rc)
			err = errno;
		started = atomic_load(&R.started);
		t1 = now_ns();
		pthread_mutex_lock(&R.log_mu);
		if (rc) {
			fprintf(R.log, "E %u %d %s\n", j, err, path);
			fprintf(stderr, "snapwriter: mkdir %s: %s\n", path, strerror(err));
			atomic_store(&R.failed, 1);
		} else {
			fprintf(R.log, "S %u %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %s\n", j, done,
				started, t0, t1, path);
		}
		pthread_mutex_unlock(&R.log_mu);
		printf("snapwriter: snapshot %u: mkdir took %.3f ms, %" PRIu64
		       " writes returned before it, %" PRIu64 " issued by its return\n",
		       j, (t1 - t0) / 1e6, done, started);
		fflush(stdout);
		atomic_fetch_sub(&R.snaps_left, 1);
	}
	return arg;
}

static int cmd_run(int argc, char **argv)
{
	uint32_t *gens;
	uint8_t *buf;
	uint64_t rs, i = 0, step = 0;
	pthread_t th;
	int opt;

	while ((opt = getopt(argc, argv, "ls:b:n:k:S:")) != -1) {
		switch (opt) {
		case 'l': R.lockstep = true; break;
		case 's': R.seed = strtoull(optarg, NULL, 0); break;
		case 'b': R.nblocks = strtoul(optarg, NULL, 0); break;
		case 'n': R.nwrites = strtoull(optarg, NULL, 0); break;
		case 'k': R.nsnaps = strtoul(optarg, NULL, 0); break;
		case 'S': R.tmpl = optarg; break;
		default: usage();
		}
	}
	if (!R.nblocks || !R.nwrites || !R.tmpl || argc - optind < 2 || argc - optind - 1 > MAXF)
		usage();
	R.nfiles = argc - optind - 1;
	if (R.lockstep && R.nfiles < 2)
		usage();
	R.log = fopen(argv[optind], "w");
	if (!R.log) {
		perror(argv[optind]);
		return 1;
	}
	for (uint32_t f = 0; f < R.nfiles; f++) {
		R.fd[f] = open(argv[optind + 1 + f], O_RDWR | O_DIRECT);
		if (R.fd[f] < 0) {
			perror(argv[optind + 1 + f]);
			return 1;
		}
	}
	gens = calloc((size_t)R.nfiles * R.nblocks, sizeof(*gens));
	if (!gens || posix_memalign((void **)&buf, BLK, BLK))
		return 1;
	pthread_mutex_init(&R.log_mu, NULL);
	fprintf(R.log, "H %" PRIu64 " %u %u %s\n", R.seed, R.nblocks, R.nfiles,
		R.lockstep ? "lockstep" : "random");
	atomic_store(&R.snaps_left, (int)R.nsnaps);
	if (pthread_create(&th, NULL, snap_thread, NULL))
		return 1;

	rs = R.seed;
	while (!atomic_load(&R.failed) && (i < R.nwrites || atomic_load(&R.snaps_left) > 0)) {
		uint32_t nf = R.lockstep ? R.nfiles : 1, b = 0, f0 = 0;

		step++;
		if (R.lockstep) {
			b = rng_next(&rs) % R.nblocks;
		} else {
			f0 = rng_next(&rs) % R.nfiles;
			b = rng_next(&rs) % R.nblocks;
		}
		for (uint32_t k = 0; k < nf; k++, i++) {
			uint32_t f = f0 + k;
			uint64_t gen = R.lockstep ? step : ++gens[(size_t)f * R.nblocks + b];
			ssize_t n;

			make_block(buf, R.seed, f, b, gen, i);
			atomic_store(&R.started, i + 1);
			n = pwrite(R.fd[f], buf, BLK, (off_t)b * BLK);
			if (n != (ssize_t)BLK) {
				fprintf(stderr, "snapwriter: pwrite file %u block %u: %s\n", f, b,
					n < 0 ? strerror(errno) : "short write");
				atomic_store(&R.failed, 1);
				break;
			}
			atomic_store(&R.done, i + 1);
			pthread_mutex_lock(&R.log_mu);
			fprintf(R.log, "W %" PRIu64 " %u %u %" PRIu64 "\n", i, f, b, gen);
			pthread_mutex_unlock(&R.log_mu);
		}
	}
	pthread_join(th, NULL);
	for (uint32_t f = 0; f < R.nfiles; f++)
		if (close(R.fd[f])) {
			perror("close");
			atomic_store(&R.failed, 1);
		}
	if (fclose(R.log)) {
		perror("log");
		return 1;
	}
	printf("snapwriter: %" PRIu64 " writes, %u snapshots%s\n", i, R.nsnaps,
	       atomic_load(&R.failed) ? ", FAILED" : "");
	return atomic_load(&R.failed) ? 1 : 0;
}

/* ---- verify -------------------------------------------------------------- */

struct wr {
	uint32_t file, block;
	uint64_t gen;
};

static int cmd_verify(int argc, char **argv)
{
	const char *logp, *want;
	uint64_t seed = 0, done = 0, started = 0, nw = 0, cap = 1 << 16;
	uint32_t nblocks = 0, nfiles = 0;
	char mode[32] = "", line[8192];
	struct wr *w = malloc(cap * sizeof(*w));
	int64_t *snap, *state;
	uint8_t *buf, *exp;
	bool found_snap = false, lockstep;
	uint64_t nbad = 0, mism = 0, p, ok_p = UINT64_MAX;
	FILE *lf;

	if (argc < 4)
		usage();
	logp = argv[1];
	want = argv[2];
	lf = fopen(logp, "r");
	if (!lf || !w) {
		perror(logp);
		return 1;
	}
	while (fgets(line, sizeof(line), lf)) {
		uint64_t i, gen, d, s;
		uint32_t f, b, j;

		if (line[0] == 'H') {
			if (sscanf(line, "H %" SCNu64 " %u %u %31s", &seed, &nblocks, &nfiles, mode) != 4)
				goto bad_line;
		} else if (line[0] == 'W') {
			if (sscanf(line, "W %" SCNu64 " %u %u %" SCNu64, &i, &f, &b, &gen) != 4 || i != nw ||
			    f >= nfiles || b >= nblocks)
				goto bad_line;
			if (nw == cap && !(w = realloc(w, (cap *= 2) * sizeof(*w))))
				return 1;
			w[nw].file = f;
			w[nw].block = b;
			w[nw].gen = gen;
			nw++;
		} else if (line[0] == 'S') {
			if (sscanf(line, "S %u %" SCNu64 " %" SCNu64, &j, &d, &s) != 3)
				goto bad_line;
			if (strcmp(want, "final") && (uint32_t)strtoul(want, NULL, 10) == j) {
				done = d;
				started = s;
				found_snap = true;
			}
		} else if (line[0] == 'E') {
			fprintf(stderr, "snapwriter: log has a failed mkdir: %s", line);
			return 1;
		} else {
			goto bad_line;
		}
		continue;
bad_line:
		fprintf(stderr, "snapwriter: bad log line: %s", line);
		return 1;
	}
	fclose(lf);
	if (!nfiles || (uint32_t)(argc - 3) != nfiles) {
		fprintf(stderr, "snapwriter: the log names %u files, %d given\n", nfiles, argc - 3);
		return 2;
	}
	if (!strcmp(want, "final")) {
		done = started = nw;
	} else if (!found_snap) {
		fprintf(stderr, "snapwriter: snapshot %s is not in the log\n", want);
		return 1;
	}
	if (started > nw || done > started) {
		fprintf(stderr, "snapwriter: bad window [%" PRIu64 ", %" PRIu64 "]\n", done, started);
		return 1;
	}
	lockstep = !strcmp(mode, "lockstep");

	/* what each block of the images holds: -1 zeros, else a write number */
	snap = malloc((size_t)nfiles * nblocks * sizeof(*snap));
	state = malloc((size_t)nfiles * nblocks * sizeof(*state));
	buf = malloc(BLK);
	exp = malloc(BLK);
	if (!snap || !state || !buf || !exp)
		return 1;
	for (uint32_t f = 0; f < nfiles; f++) {
		int fd = open(argv[3 + f], O_RDONLY);

		if (fd < 0) {
			perror(argv[3 + f]);
			return 1;
		}
		for (uint32_t b = 0; b < nblocks; b++) {
			ssize_t n = pread(fd, buf, BLK, (off_t)b * BLK);
			int64_t *cell = &snap[(size_t)f * nblocks + b];
			struct hdr h;
			bool zero = true;

			if (n != (ssize_t)BLK) {
				fprintf(stderr, "snapwriter: %s block %u: %s\n", argv[3 + f], b,
					n < 0 ? strerror(errno) : "short read");
				return 1;
			}
			for (size_t k = 0; k < BLK && zero; k++)
				zero = !buf[k];
			if (zero) {
				*cell = -1;
				continue;
			}
			memcpy(&h, buf, sizeof(h));
			if (!memcmp(h.magic, MAGIC, 8) && h.seed == seed && h.idx < nw &&
			    w[h.idx].file == h.file && w[h.idx].block == h.block && w[h.idx].gen == h.gen) {
				make_block(exp, seed, h.file, h.block, h.gen, h.idx);
				if (!memcmp(exp, buf, BLK) && h.file == f && h.block == b) {
					*cell = (int64_t)h.idx;
					continue;
				}
			}
			*cell = -2;
			if (++nbad <= 20)
				printf("BAD %s block %u: garbage or another block's data "
				       "(magic %.8s file %u block %u gen %" PRIu64 " write %" PRIu64 ")\n",
				       argv[3 + f], b, h.magic, h.file, h.block, h.gen, h.idx);
		}
		close(fd);
	}
	if (nbad) {
		printf("snapwriter: %s: %" PRIu64 " garbage block(s)\n", want, nbad);
		return 1;
	}

	/* find P in [done, started] with state(P) == images */
	for (size_t c = 0; c < (size_t)nfiles * nblocks; c++) {
		state[c] = -1;
		mism += snap[c] != -1;
	}
	for (p = 0;; p++) {
		if (p >= done && !mism) {
			ok_p = p;
			break;
		}
		if (p == started || p == nw)
			break;
		size_t c = (size_t)w[p].file * nblocks + w[p].block;

		mism -= state[c] != snap[c];
		state[c] = (int64_t)p;
		mism += state[c] != snap[c];
	}
	if (ok_p == UINT64_MAX) {
		uint64_t shown = 0;

		/* explain: compare with the state when mkdir started */
		for (size_t c = 0; c < (size_t)nfiles * nblocks; c++)
			state[c] = -1;
		for (p = 0; p < done; p++)
			state[(size_t)w[p].file * nblocks + w[p].block] = (int64_t)p;
		for (size_t c = 0; c < (size_t)nfiles * nblocks && shown < 20; c++) {
			uint32_t f = c / nblocks, b = c % nblocks;

			if (snap[c] >= (int64_t)started) {
				printf("BAD %s block %u: holds write %" PRId64 ", issued after mkdir "
				       "returned (window %" PRIu64 "..%" PRIu64 ")\n",
				       argv[3 + f], b, snap[c], done, started);
				shown++;
			} else if (snap[c] < state[c]) {
				printf("BAD %s block %u: holds %s%" PRId64 ", but write %" PRId64
				       " had returned before mkdir started\n",
				       argv[3 + f], b, snap[c] < 0 ? "zeros " : "write ", snap[c],
				       state[c]);
				shown++;
			}
		}
		printf("snapwriter: %s: no instant in the window %" PRIu64 "..%" PRIu64
		       " matches the images%s\n", want, done, started,
		       shown ? "" : " (writes of the window are mixed: not one instant)");
		return 1;
	}
	printf("snapwriter: %s: the images are the state after %" PRIu64 " writes (window %" PRIu64
	       "..%" PRIu64 ")", want, ok_p, done, started);
	if (lockstep) {
		uint64_t g[MAXF] = { 0 };

		for (size_t c = 0; c < (size_t)nfiles * nblocks; c++)
			if (snap[c] >= 0 && w[snap[c]].gen > g[c / nblocks])
				g[c / nblocks] = w[snap[c]].gen;
		printf(", newest generation per file:");
		for (uint32_t f = 0; f < nfiles; f++)
			printf(" %" PRIu64, g[f]);
		for (uint32_t f = 1; f < nfiles; f++) {
			if (g[f - 1] < g[f] || g[f - 1] > g[f] + 1) {
				printf("\nBAD lockstep: file %u has generation %" PRIu64 ", file %u %" PRIu64
				       "\n", f, g[f - 1], f + 1, g[f]);
				return 1;
			}
		}
	}
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	if (!strcmp(argv[1], "run"))
		return cmd_run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "verify"))
		return cmd_verify(argc - 1, argv + 1);
	usage();
	return 2;
}
