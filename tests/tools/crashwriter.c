/*
 * crashwriter: write versioned blocks, log what fsync made durable, and
 * check after a crash that it is all there.
 *
 *   crashwriter write  [-d] -s SEED -g GEN -b NBLOCKS VOLUME JOURNAL
 *   crashwriter verify      -s SEED      -b NBLOCKS VOLUME JOURNAL
 *
 * The volume is seen as NBLOCKS blocks of 4096 bytes.  Version v of block k
 * is a 4096-byte image derived from (SEED, k, v) that names its own seed,
 * block number and version and carries a checksum, so any block read back
 * is either recognised exactly, all zeros (never written), or garbage.
 *
 * write: forever (until killed, or until the volume fails, which is what
 * happens when the daemon is killed), write runs of 1..8 consecutive blocks
 * at random places, each block at a new version (GEN << 32 | counter, so a
 * later generation always has higher versions), with O_DIRECT if -d.  Every
 * 1..8 writes call fdatasync (sometimes fsync), and once it returned 0,
 * append to JOURNAL one line "D k v" per block written since the previous
 * sync and fsync the journal: from then on version v of k must survive.
 * Prints "crashwriter: synced N" lines as it goes (to stdout, flushed).
 *
 * verify: read the whole volume (any read error fails), and check that each
 * block k holds the durable version of the journal (the highest v of the
 * "D k v" lines) or a later version, or zeros if nothing was durable; never
 * an older version, another block's data, or garbage.  Then append what it
 * found as the new durable baseline ("D k v" for every non-zero block), as a
 * block read after a restart must not go back in time at the next crash.
 *
 * Exit status: verify 0 = all good, 1 = a violation (each one is printed).
 * write exits 3 when the volume fails (expected after the kill), 1 when the
 * journal fails, 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rng.h"

#define BLK        4096u
#define MAX_RUN    8u
#define MAGIC      "VSCWBLK1"

/* FNV-1a 64 over len bytes */
static uint64_t fnv(const unsigned char *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/*
 * Layout of one block: magic[8] seed[8] k[8] v[8] payload[4056] fnv[8];
 * payload from a generator seeded by (seed, k, v); fnv over all before it.
 */
static void make_block(unsigned char *p, uint64_t seed, uint64_t k, uint64_t v)
{
	uint64_t s = mix(seed ^ mix(k + 0x1234567ull) ^ mix(v * 0x9e3779b97f4a7c15ull));
	uint64_t h;

	memcpy(p, MAGIC, 8);
	memcpy(p + 8, &seed, 8);
	memcpy(p + 16, &k, 8);
	memcpy(p + 24, &v, 8);
	for (unsigned i = 32; i < BLK - 8; i += 8) {
		uint64_t x = rng_next(&s);
		memcpy(p + i, &x, 8);
	}
	h = fnv(p, BLK - 8);
	memcpy(p + BLK - 8, &h, 8);
}

enum blk_kind { BLK_ZERO, BLK_OK, BLK_GARBAGE, BLK_OTHER };

/* Recognise a block read back; *v gets its version for BLK_OK/BLK_OTHER. */
static enum blk_kind classify(const unsigned char *p, uint64_t seed, uint64_t k, uint64_t *v,
			      uint64_t *who)
{
	static unsigned char want[BLK];
	uint64_t s, kk;
	bool zero = true;

	for (unsigned i = 0; i < BLK; i++)
		if (p[i]) {
			zero = false;
			break;
		}
	if (zero)
		return BLK_ZERO;
	if (memcmp(p, MAGIC, 8))
		return BLK_GARBAGE;
	memcpy(&s, p + 8, 8);
	memcpy(&kk, p + 16, 8);
	memcpy(v, p + 24, 8);
	make_block(want, s, kk, *v);
	if (memcmp(want, p, BLK))
		return BLK_GARBAGE;
	*who = kk;
	if (s != seed || kk != k)
		return BLK_OTHER;
	return BLK_OK;
}

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
	fprintf(stderr, "usage: crashwriter write [-d] -s SEED -g GEN -b NBLOCKS VOLUME JOURNAL\n"
			"       crashwriter verify -s SEED -b NBLOCKS VOLUME JOURNAL\n");
	exit(2);
}

/* Highest durable version per block from the journal (missing file: none). */
static uint64_t *load_journal(const char *path, uint64_t nblocks)
{
	uint64_t *dur = calloc(nblocks, sizeof(*dur));
	FILE *f;
	uint64_t k, v;
	char line[128];

	if (!dur) {
		fprintf(stderr, "crashwriter: out of memory\n");
		exit(1);
	}
	f = fopen(path, "r");
	if (!f) {
		if (errno == ENOENT)
			return dur;
		fprintf(stderr, "crashwriter: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "D %" SCNu64 " %" SCNu64, &k, &v) != 2 || k >= nblocks) {
			fprintf(stderr, "crashwriter: %s: bad line: %s", path, line);
			exit(1);
		}
		if (v > dur[k])
			dur[k] = v;
	}
	fclose(f);
	return dur;
}

static void journal_append(int jfd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(jfd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "crashwriter: journal write: %s\n", strerror(errno));
			exit(1);
		}
		buf += n;
		len -= (size_t)n;
	}
}

static void journal_sync(int jfd)
{
	if (fsync(jfd) < 0) {
		fprintf(stderr, "crashwriter: journal fsync: %s\n", strerror(errno));
		exit(1);
	}
}

static int do_write(const char *vol, const char *journal, uint64_t seed, uint64_t gen,
		    uint64_t nblocks, bool direct)
{
	uint64_t *last = calloc(nblocks, sizeof(*last));   /* latest version written */
	uint64_t *pend = calloc(nblocks, sizeof(*pend));   /* blocks since last sync */
	size_t npend = 0;
	unsigned char *buf;
	char *jbuf;
	uint64_t rng = mix(seed ^ mix(gen + 77)), counter = 0, nsync = 0;
	int fd, jfd;
	unsigned until_sync;
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	rng ^= mix((uint64_t)ts.tv_nsec);   /* the kill moment is random anyway */
	if (!last || !pend || posix_memalign((void **)&buf, 4096, MAX_RUN * BLK) ||
	    !(jbuf = malloc(nblocks * 48 + 64))) {
		fprintf(stderr, "crashwriter: out of memory\n");
		return 1;
	}
	fd = open(vol, O_RDWR | (direct ? O_DIRECT : 0));
	if (fd < 0) {
		fprintf(stderr, "crashwriter: open %s: %s\n", vol, strerror(errno));
		return 3;
	}
	jfd = open(journal, O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (jfd < 0) {
		fprintf(stderr, "crashwriter: open %s: %s\n", journal, strerror(errno));
		return 1;
	}
	printf("crashwriter: writing %s, seed %" PRIu64 " gen %" PRIu64 " %s\n", vol, seed, gen,
	       direct ? "O_DIRECT" : "buffered");
	fflush(stdout);
	until_sync = 1 + (unsigned)(rng_next(&rng) % 8);
	for (;;) {
		uint64_t run = 1 + rng_next(&rng) % MAX_RUN;
		uint64_t k0 = rng_next(&rng) % nblocks;
		ssize_t n;

		if (k0 + run > nblocks)
			run = nblocks - k0;
		for (uint64_t i = 0; i < run; i++) {
			uint64_t v = (gen << 32) | ++counter;
			make_block(buf + i * BLK, seed, k0 + i, v);
			if (!last[k0 + i])
				pend[npend++] = k0 + i;
			last[k0 + i] = v;
		}
		n = pwrite(fd, buf, run * BLK, (off_t)(k0 * BLK));
		if (n != (ssize_t)(run * BLK)) {
			fprintf(stderr, "crashwriter: pwrite block %" PRIu64 " x%" PRIu64 ": %s\n", k0,
				run, n < 0 ? strerror(errno) : "short write");
			return 3;
		}
		if (--until_sync)
			continue;
		until_sync = 1 + (unsigned)(rng_next(&rng) % 8);
		if ((rng_next(&rng) % 4 ? fdatasync(fd) : fsync(fd)) < 0) {
			fprintf(stderr, "crashwriter: fdatasync: %s\n", strerror(errno));
			return 3;
		}
		/* everything written so far is durable now: log it */
		{
			size_t len = 0;
			for (size_t i = 0; i < npend; i++) {
				uint64_t k = pend[i];
				len += (size_t)sprintf(jbuf + len, "D %" PRIu64 " %" PRIu64 "\n", k,
						       last[k]);
				last[k] = 0;
			}
			journal_append(jfd, jbuf, len);
			journal_sync(jfd);
			npend = 0;
		}
		nsync++;
		if (nsync % 256 == 0) {
			printf("crashwriter: synced %" PRIu64 "\n", nsync);
			fflush(stdout);
		}
	}
}

static int do_verify(const char *vol, const char *journal, uint64_t seed, uint64_t nblocks)
{
	uint64_t *dur = load_journal(journal, nblocks);
	uint64_t *seen = calloc(nblocks, sizeof(*seen));
	unsigned char *buf;
	uint64_t nbad = 0, ndur = 0, nnewer = 0, nzero = 0;
	const size_t chunk = 256;      /* blocks per read */
	char *jbuf;
	size_t len = 0;
	int fd, jfd;

	if (!seen || posix_memalign((void **)&buf, 4096, chunk * BLK) ||
	    !(jbuf = malloc(nblocks * 48 + 64))) {
		fprintf(stderr, "crashwriter: out of memory\n");
		return 1;
	}
	fd = open(vol, O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "crashwriter: open %s: %s\n", vol, strerror(errno));
		return 1;
	}
	for (uint64_t k0 = 0; k0 < nblocks; k0 += chunk) {
		uint64_t n = nblocks - k0 < chunk ? nblocks - k0 : chunk;
		size_t done = 0;

		while (done < n * BLK) {
			ssize_t r = pread(fd, buf + done, n * BLK - done, (off_t)(k0 * BLK + done));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				fprintf(stderr, "crashwriter: read at block %" PRIu64 ": %s\n",
					k0 + done / BLK, r < 0 ? strerror(errno) : "end of file");
				return 1;
			}
			done += (size_t)r;
		}
		for (uint64_t i = 0; i < n; i++) {
			uint64_t k = k0 + i, v = 0, who = 0;
			enum blk_kind kind = classify(buf + i * BLK, seed, k, &v, &who);

			switch (kind) {
			case BLK_ZERO:
				nzero++;
				if (dur[k]) {
					fprintf(stderr, "crashwriter: block %" PRIu64 ": zeros, but"
						" version %#" PRIx64 " was durable\n", k, dur[k]);
					nbad++;
				}
				break;
			case BLK_GARBAGE:
				fprintf(stderr, "crashwriter: block %" PRIu64 ": garbage (durable"
					" version %#" PRIx64 "), first bytes %02x %02x %02x %02x\n",
					k, dur[k], buf[i * BLK], buf[i * BLK + 1], buf[i * BLK + 2],
					buf[i * BLK + 3]);
				nbad++;
				break;
			case BLK_OTHER:
				fprintf(stderr, "crashwriter: block %" PRIu64 ": holds block %" PRIu64
					" version %#" PRIx64 " (another place or seed)\n", k, who, v);
				nbad++;
				break;
			case BLK_OK:
				if (v < dur[k]) {
					fprintf(stderr, "crashwriter: block %" PRIu64 ": version %#"
						PRIx64 ", older than durable %#" PRIx64 "\n", k, v, dur[k]);
					nbad++;
				} else if (v == dur[k]) {
					ndur++;
				} else {
					nnewer++;
				}
				seen[k] = v;
				break;
			}
		}
	}
	close(fd);
	printf("crashwriter: verify %s: %" PRIu64 " blocks: %" PRIu64 " as durable, %" PRIu64
	       " newer than durable, %" PRIu64 " zero, %" PRIu64 " bad\n", vol, nblocks, ndur,
	       nnewer, nzero, nbad);
	if (nbad)
		return 1;
	jfd = open(journal, O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (jfd < 0) {
		fprintf(stderr, "crashwriter: open %s: %s\n", journal, strerror(errno));
		return 1;
	}
	for (uint64_t k = 0; k < nblocks; k++)
		if (seen[k] && seen[k] != dur[k])
			len += (size_t)sprintf(jbuf + len, "D %" PRIu64 " %" PRIu64 "\n", k, seen[k]);
	journal_append(jfd, jbuf, len);
	journal_sync(jfd);
	close(jfd);
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t seed = 0, gen = 0, nblocks = 0;
	bool direct = false, have_seed = false;
	const char *mode;
	int c;

	if (argc < 2)
		usage();
	mode = argv[1];
	optind = 2;
	while ((c = getopt(argc, argv, "ds:g:b:")) != -1) {
		switch (c) {
		case 'd': direct = true; break;
		case 's': seed = strtoull(optarg, NULL, 0); have_seed = true; break;
		case 'g': gen = strtoull(optarg, NULL, 0); break;
		case 'b': nblocks = strtoull(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (argc - optind != 2 || !have_seed || !nblocks)
		usage();
	if (!strcmp(mode, "write")) {
		if (!gen || gen >= (1ull << 31))
			usage();
		return do_write(argv[optind], argv[optind + 1], seed, gen, nblocks, direct);
	}
	if (!strcmp(mode, "verify"))
		return do_verify(argv[optind], argv[optind + 1], seed, nblocks);
	usage();
}
