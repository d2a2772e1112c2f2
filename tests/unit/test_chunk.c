/*
 * Unit tests of the chunk store (src/chunk/chunk.c).
 *
 * Each test gets a fresh mkdtemp() directory under /tmp, removed in the
 * fixture's fini.  Block contents are generated from a seed, so a block can
 * be checked again without keeping a copy.  The chunk header is decoded here
 * with our own little-endian helpers, straight from docs/on-disk-format.md,
 * so the format is checked against the document rather than against the
 * code that writes it.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vsnapfs/chunk.h"
#include "vsnapfs/cksum.h"

#define MiB (1u << 20)

static char g_tmp[64];
static char g_dir[128];                 /* the store directory, inside g_tmp */

static void setup(void)
{
	strcpy(g_tmp, "/tmp/vsnapfs-test-chunk-XXXXXX");
	cr_assert_not_null(mkdtemp(g_tmp), "mkdtemp: %s", strerror(errno));
	snprintf(g_dir, sizeof(g_dir), "%s/chunks", g_tmp);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void teardown(void)
{
	nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(chunk, .init = setup, .fini = teardown, .timeout = 120);

/* --- helpers --------------------------------------------------------------- */

static void fill_block(void *buf, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
}

static void fill_blocks(void *buf, size_t bs, uint32_t n, uint64_t seed0)
{
	for (uint32_t i = 0; i < n; i++)
		fill_block((uint8_t *)buf + i * bs, bs, seed0 + i);
}

static bool block_is(const void *buf, size_t len, uint64_t seed)
{
	void *want = malloc(len);
	bool same;

	fill_block(want, len, seed);
	same = memcmp(buf, want, len) == 0;
	free(want);
	return same;
}

static void chunk_path(char *out, size_t len, uint64_t id)
{
	snprintf(out, len, "%s/%016" PRIx64 ".chunk", g_dir, id);
}

static bool chunk_file_exists(uint64_t id)
{
	char path[256];

	chunk_path(path, sizeof(path), id);
	return access(path, F_OK) == 0;
}

static struct chunk_store *open_store(uint32_t bs, uint64_t min_next_id)
{
	struct chunk_store *cs = NULL;
	int rc = chunk_store_open(g_dir, bs, min_next_id, &cs);

	cr_assert_eq(rc, 0, "chunk_store_open: %d", rc);
	cr_assert_not_null(cs);
	return cs;
}

/* Append one block made from seed; returns its loc. */
static struct chunk_loc append_one(struct chunk_store *cs, uint32_t bs, uint64_t seed)
{
	struct chunk_loc loc;
	void *buf = malloc(bs);
	int rc;

	fill_block(buf, bs, seed);
	rc = chunk_append(cs, buf, 1, &loc);
	free(buf);
	cr_assert_eq(rc, 0, "chunk_append: %d", rc);
	return loc;
}

static void assert_reads(struct chunk_store *cs, uint32_t bs, const struct chunk_loc *loc,
			 uint64_t seed)
{
	void *buf = malloc(bs);
	int rc = chunk_read(cs, loc, 1, buf, NULL);

	cr_assert_eq(rc, 0, "chunk_read of chunk %" PRIu64 " slot %u: %d",
		     loc->chunk_id, loc->slot, rc);
	cr_assert(block_is(buf, bs, seed));
	free(buf);
}

/* Flip one byte of a chunk file at a byte offset. */
static void flip_byte(uint64_t id, off_t off)
{
	char path[256];
	uint8_t b;
	int fd;

	chunk_path(path, sizeof(path), id);
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pread(fd, &b, 1, off), 1);
	b ^= 0x5a;
	cr_assert_eq(pwrite(fd, &b, 1, off), 1);
	close(fd);
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --- open ------------------------------------------------------------------ */

Test(chunk, open_rejects_block_sizes_that_are_not_powers_of_two_from_4k_to_1m)
{
	struct chunk_store *cs = (void *)1;

	cr_assert_eq(chunk_store_open(g_dir, 2048, 0, &cs), -EINVAL);
	cr_assert_null(cs);
	cr_assert_eq(chunk_store_open(g_dir, 2 * MiB, 0, &cs), -EINVAL);
	cr_assert_eq(chunk_store_open(g_dir, 12288, 0, &cs), -EINVAL);
}

Test(chunk, open_creates_missing_dir_0700_and_no_chunk_file_before_first_append)
{
	struct chunk_store *cs = open_store(4096, 0);
	struct stat st;
	int n = 0;

	cr_assert_eq(stat(g_dir, &st), 0);
	cr_assert(S_ISDIR(st.st_mode));
	cr_assert_eq(st.st_mode & 0777, 0700);
	cr_assert_eq(chunk_active_id(cs), 0);
	cr_assert_eq(chunk_next_id(cs), 1);
	cr_assert_eq(chunk_sync(cs), 0);
	cr_assert_eq(chunk_foreach(cs, NULL, NULL), 0);    /* fn never called */
	for (uint64_t id = 1; id < 4; id++)
		n += chunk_file_exists(id);
	cr_assert_eq(n, 0);
	chunk_store_close(cs);
	chunk_store_close(NULL);
}

/* --- append and read ------------------------------------------------------- */

static void roundtrip(uint32_t bs)
{
	struct chunk_store *cs = open_store(bs, 0);
	const uint32_t n = 5;
	struct chunk_loc locs[5], one[1];
	uint8_t *buf = malloc((size_t)n * bs), *back = malloc((size_t)n * bs);
	uint32_t bad = 77;

	fill_blocks(buf, bs, n, 100);
	cr_assert_eq(chunk_append(cs, buf, n, locs), 0);
	for (uint32_t i = 0; i < n; i++) {
		cr_assert_eq(locs[i].chunk_id, 1);
		cr_assert_eq(locs[i].slot, i);
		cr_assert_eq(locs[i].cksum, cksum_buf(buf + (size_t)i * bs, bs));
	}
	cr_assert_eq(chunk_active_id(cs), 1);
	cr_assert_eq(chunk_next_id(cs), 2);

	one[0] = append_one(cs, bs, 500);
	cr_assert_eq(one[0].chunk_id, 1);
	cr_assert_eq(one[0].slot, n);

	cr_assert_eq(chunk_read(cs, locs, n, back, &bad), 0);
	cr_assert_eq(memcmp(buf, back, (size_t)n * bs), 0);
	cr_assert_eq(bad, 77, "bad_index touched on success");
	/* a sub-run from the middle */
	cr_assert_eq(chunk_read(cs, &locs[2], 2, back, NULL), 0);
	cr_assert_eq(memcmp(buf + 2 * (size_t)bs, back, 2 * (size_t)bs), 0);
	assert_reads(cs, bs, &one[0], 500);

	free(buf);
	free(back);
	chunk_store_close(cs);
}

Test(chunk, append_then_read_roundtrips_with_checksums_4k_blocks)
{
	roundtrip(4096);
}

Test(chunk, append_then_read_roundtrips_with_checksums_64k_blocks)
{
	roundtrip(65536);
}

Test(chunk, append_then_read_roundtrips_with_checksums_1m_blocks)
{
	roundtrip(MiB);
}

Test(chunk, multi_block_append_crossing_chunk_end_continues_at_slot_0_of_new_chunk)
{
	const uint32_t bs = MiB, nslots = CHUNK_NSLOTS(MiB);
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc locs[5];
	uint8_t *buf = malloc(5 * (size_t)bs), *back = malloc(5 * (size_t)bs);

	cr_assert_eq(nslots, 64);
	for (uint32_t i = 0; i < nslots - 2; i++)
		cr_assert_eq(append_one(cs, bs, i).slot, i);

	fill_blocks(buf, bs, 5, 1000);
	cr_assert_eq(chunk_append(cs, buf, 5, locs), 0);
	cr_assert_eq(locs[0].chunk_id, 1);
	cr_assert_eq(locs[0].slot, 62);
	cr_assert_eq(locs[1].chunk_id, 1);
	cr_assert_eq(locs[1].slot, 63);
	for (uint32_t i = 2; i < 5; i++) {
		cr_assert_eq(locs[i].chunk_id, 2);
		cr_assert_eq(locs[i].slot, i - 2);
	}
	cr_assert_eq(chunk_active_id(cs), 2);

	/* each part reads back with one call per chunk */
	cr_assert_eq(chunk_read(cs, &locs[0], 2, back, NULL), 0);
	cr_assert_eq(chunk_read(cs, &locs[2], 3, back + 2 * (size_t)bs, NULL), 0);
	cr_assert_eq(memcmp(buf, back, 5 * (size_t)bs), 0);
	/* a run may not span chunks */
	cr_assert_eq(chunk_read(cs, &locs[0], 3, back, NULL), -EINVAL);
	cr_assert_eq(chunk_sync(cs), 0);

	free(buf);
	free(back);
	chunk_store_close(cs);
}

Test(chunk, read_detects_flipped_byte_with_ebadmsg_and_bad_index_and_others_still_read)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc locs[4];
	uint8_t *buf = malloc(4 * bs), *back = malloc(4 * bs);
	uint32_t bad = 99;

	fill_blocks(buf, bs, 4, 7);
	cr_assert_eq(chunk_append(cs, buf, 4, locs), 0);
	flip_byte(1, CHUNK_HEADER_BYTES + 2 * bs + 123);

	cr_assert_eq(chunk_read(cs, locs, 4, back, &bad), -EBADMSG);
	cr_assert_eq(bad, 2);
	cr_assert_eq(chunk_read(cs, &locs[1], 3, back, &bad), -EBADMSG);
	cr_assert_eq(bad, 1);
	cr_assert_eq(chunk_read(cs, &locs[2], 1, back, NULL), -EBADMSG);
	cr_assert_eq(chunk_read(cs, &locs[0], 2, back, NULL), 0);
	cr_assert_eq(memcmp(back, buf, 2 * bs), 0);
	cr_assert_eq(chunk_read(cs, &locs[3], 1, back, NULL), 0);
	cr_assert_eq(memcmp(back, buf + 3 * bs, bs), 0);
	/* a wrong checksum in the loc is the same as wrong data */
	struct chunk_loc wrong = locs[0];
	wrong.cksum ^= 1;
	cr_assert_eq(chunk_read(cs, &wrong, 1, back, &bad), -EBADMSG);
	cr_assert_eq(bad, 0);

	free(buf);
	free(back);
	chunk_store_close(cs);
}

Test(chunk, read_of_missing_chunk_file_returns_enoent)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc loc = { .chunk_id = 42, .slot = 0, .cksum = 0 };
	uint8_t *back = malloc(bs);

	cr_assert_eq(chunk_read(cs, &loc, 1, back, NULL), -ENOENT);
	/* a chunk deleted behind the store's back, never read before */
	loc = append_one(cs, bs, 1);
	chunk_store_close(cs);
	cs = open_store(bs, 0);
	char path[256];
	chunk_path(path, sizeof(path), loc.chunk_id);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(chunk_read(cs, &loc, 1, back, NULL), -ENOENT);

	free(back);
	chunk_store_close(cs);
}

Test(chunk, read_past_end_of_file_is_eio_and_bad_locs_are_einval)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc loc = append_one(cs, bs, 1), far = loc, zero = { 0 };
	uint8_t *back = malloc(bs);

	far.slot = 10;
	cr_assert_eq(chunk_read(cs, &far, 1, back, NULL), -EIO);
	far.slot = CHUNK_NSLOTS(bs);
	cr_assert_eq(chunk_read(cs, &far, 1, back, NULL), -EINVAL);
	cr_assert_eq(chunk_read(cs, &zero, 1, back, NULL), -EINVAL);
	cr_assert_eq(chunk_read(cs, &loc, 0, back, NULL), 0);

	free(back);
	chunk_store_close(cs);
}

Test(chunk, bad_header_makes_reads_fail_with_eio_and_is_remembered)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc loc = append_one(cs, bs, 3);
	uint8_t *back = malloc(bs);

	chunk_store_close(cs);
	flip_byte(loc.chunk_id, 40);            /* a reserved byte: header cksum breaks */
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_read(cs, &loc, 1, back, NULL), -EIO);
	flip_byte(loc.chunk_id, 40);            /* repaired on disk ... */
	cr_assert_eq(chunk_read(cs, &loc, 1, back, NULL), -EIO);   /* ... but remembered */
	chunk_store_close(cs);

	cs = open_store(bs, 0);                 /* a new store checks again */
	assert_reads(cs, bs, &loc, 3);
	chunk_store_close(cs);

	/* a store with another block size refuses the chunk */
	cr_assert_eq(chunk_store_open(g_dir, 8192, 0, &cs), 0);
	struct chunk_loc loc8 = loc;
	uint8_t *back8 = malloc(8192);
	cr_assert_eq(chunk_read(cs, &loc8, 1, back8, NULL), -EIO);
	free(back8);
	free(back);
	chunk_store_close(cs);
}

/* --- ids ------------------------------------------------------------------- */

Test(chunk, reopen_starts_a_new_chunk_with_a_larger_id_and_old_data_still_reads)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc a = append_one(cs, bs, 1), b;

	cr_assert_eq(chunk_sync(cs), 0);
	chunk_store_close(cs);

	cs = open_store(bs, 0);
	cr_assert_eq(chunk_active_id(cs), 0);
	cr_assert_eq(chunk_next_id(cs), a.chunk_id + 1);
	b = append_one(cs, bs, 2);
	cr_assert_gt(b.chunk_id, a.chunk_id);
	cr_assert_eq(b.slot, 0, "a reopened store must not append to an old chunk");
	assert_reads(cs, bs, &a, 1);
	assert_reads(cs, bs, &b, 2);
	chunk_store_close(cs);
}

Test(chunk, first_chunk_id_is_at_least_min_next_id_and_above_existing_files)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0x1000);
	struct chunk_loc a;

	cr_assert_eq(chunk_next_id(cs), 0x1000);
	a = append_one(cs, bs, 1);
	cr_assert_eq(a.chunk_id, 0x1000);
	cr_assert(chunk_file_exists(0x1000));
	chunk_store_close(cs);

	/* an existing file beats a smaller min_next_id */
	cs = open_store(bs, 5);
	cr_assert_eq(chunk_next_id(cs), 0x1001);
	cr_assert_eq(append_one(cs, bs, 2).chunk_id, 0x1001);
	chunk_store_close(cs);

	/* and a larger min_next_id beats the files */
	cs = open_store(bs, 0x5000);
	cr_assert_eq(append_one(cs, bs, 3).chunk_id, 0x5000);
	chunk_store_close(cs);
}

/* --- foreach --------------------------------------------------------------- */

struct seen {
	uint64_t ids[16];
	uint32_t nslots[16];
	int n;
	int stop_after;                 /* return 1 after this many; 0 = never */
};

static int collect(void *ctx, uint64_t id, uint32_t nslots)
{
	struct seen *s = ctx;

	cr_assert_lt(s->n, 16);
	s->ids[s->n] = id;
	s->nslots[s->n] = nslots;
	s->n++;
	return (s->stop_after && s->n == s->stop_after) ? 1 : 0;
}

static void touch(const char *name, size_t len)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", g_dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, (off_t)len), 0);
	close(fd);
}

Test(chunk, foreach_lists_chunk_files_in_id_order_with_whole_slot_counts)
{
	const uint32_t bs = 8192;
	struct chunk_store *cs;
	struct chunk_loc locs[3];
	uint8_t *buf = malloc(3 * bs);
	struct seen s = { 0 };

	fill_blocks(buf, bs, 3, 0);
	/* ids 0x20 (3 slots), 0x21 (1 slot); then hand-made ones */
	cs = open_store(bs, 0x20);
	cr_assert_eq(chunk_append(cs, buf, 3, locs), 0);
	chunk_store_close(cs);
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_append(cs, buf, 1, locs), 0);
	chunk_store_close(cs);

	touch("0000000000000003.chunk", 100);                  /* shorter than a header */
	touch("000000000000000a.chunk", CHUNK_HEADER_BYTES + 2 * bs + 100); /* torn tail */
	touch("notachunk", 0);
	touch("0000000000000004.chunk.tmp", 0);
	touch("000000000000000B.chunk", 0);                    /* upper case: not ours */
	touch("0000000000000000.chunk", 0);                    /* id 0 does not exist */
	touch("00000000000000051.chunk", 0);                   /* 17 digits */

	cs = open_store(bs, 0);
	cr_assert_eq(chunk_next_id(cs), 0x22);
	cr_assert_eq(chunk_foreach(cs, collect, &s), 0);
	cr_assert_eq(s.n, 4);
	cr_assert_eq(s.ids[0], 3);
	cr_assert_eq(s.nslots[0], 0);
	cr_assert_eq(s.ids[1], 0xa);
	cr_assert_eq(s.nslots[1], 2);
	cr_assert_eq(s.ids[2], 0x20);
	cr_assert_eq(s.nslots[2], 3);
	cr_assert_eq(s.ids[3], 0x21);
	cr_assert_eq(s.nslots[3], 1);

	/* fn's non-zero value stops the walk and is returned */
	memset(&s, 0, sizeof(s));
	s.stop_after = 2;
	cr_assert_eq(chunk_foreach(cs, collect, &s), 1);
	cr_assert_eq(s.n, 2);

	free(buf);
	chunk_store_close(cs);
}

/* --- remove ---------------------------------------------------------------- */

Test(chunk, remove_of_active_chunk_is_ebusy_and_of_a_sealed_one_deletes_its_file)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc a = append_one(cs, bs, 1), b;
	uint8_t *back = malloc(bs);

	cr_assert_eq(chunk_remove(cs, a.chunk_id), -EBUSY);
	cr_assert(chunk_file_exists(a.chunk_id));
	chunk_store_close(cs);

	cs = open_store(bs, 0);
	b = append_one(cs, bs, 2);
	assert_reads(cs, bs, &a, 1);            /* its fd is now cached */
	cr_assert_eq(chunk_remove(cs, a.chunk_id), 0);
	cr_assert_not(chunk_file_exists(a.chunk_id));
	cr_assert_eq(chunk_read(cs, &a, 1, back, NULL), -ENOENT);
	cr_assert_eq(chunk_remove(cs, a.chunk_id), -ENOENT);
	cr_assert_eq(chunk_remove(cs, 999), -ENOENT);
	assert_reads(cs, bs, &b, 2);
	cr_assert_eq(chunk_remove(cs, b.chunk_id), -EBUSY);

	free(back);
	chunk_store_close(cs);
}

Test(chunk, remove_of_a_chunk_sealed_by_this_store_before_sync_works)
{
	const uint32_t bs = MiB;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc last;

	for (uint32_t i = 0; i < CHUNK_NSLOTS(bs); i++)
		append_one(cs, bs, i);
	last = append_one(cs, bs, 1000);
	cr_assert_eq(last.chunk_id, 2);
	cr_assert_eq(chunk_remove(cs, 1), 0);   /* sealed, still dirty */
	cr_assert_not(chunk_file_exists(1));
	cr_assert_eq(chunk_sync(cs), 0);
	assert_reads(cs, bs, &last, 1000);
	chunk_store_close(cs);
}

/* --- faults ---------------------------------------------------------------- */

Test(chunk, injected_append_fault_fails_with_given_errno_after_n_successes)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	uint8_t *buf = malloc(2 * bs);
	struct chunk_loc locs[2], ok;

	fill_blocks(buf, bs, 2, 50);
	chunk_fault_set(cs, CHUNK_FAULT_APPEND, 2, ENOSPC);
	cr_assert_eq(chunk_append(cs, buf, 1, locs), 0);
	cr_assert_eq(chunk_append(cs, buf, 1, locs), 0);
	cr_assert_eq(chunk_append(cs, buf, 2, locs), -ENOSPC);
	cr_assert_eq(locs[0].chunk_id, 0, "a failed append leaves no valid loc");
	cr_assert_eq(locs[1].chunk_id, 0);
	cr_assert_eq(chunk_append(cs, buf, 1, locs), -ENOSPC);

	chunk_fault_set(cs, CHUNK_FAULT_APPEND, 0, EIO);
	cr_assert_eq(chunk_append(cs, buf, 1, locs), -EIO);
	chunk_fault_set(cs, CHUNK_FAULT_APPEND, 0, 0);
	ok = append_one(cs, bs, 50);
	cr_assert_eq(ok.chunk_id, 1);
	assert_reads(cs, bs, &ok, 50);
	cr_assert_eq(chunk_sync(cs), 0);

	free(buf);
	chunk_store_close(cs);
}

Test(chunk, injected_read_faults_fail_then_clear)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc loc = append_one(cs, bs, 8);
	uint8_t *back = malloc(bs);

	chunk_fault_set(cs, CHUNK_FAULT_READ, 1, EIO);
	cr_assert_eq(chunk_read(cs, &loc, 1, back, NULL), 0);
	cr_assert_eq(chunk_read(cs, &loc, 1, back, NULL), -EIO);
	chunk_fault_set(cs, CHUNK_FAULT_READ, 0, 0);
	assert_reads(cs, bs, &loc, 8);

	free(back);
	chunk_store_close(cs);
}

/*
 * The chunk file being appended to, deleted behind the store's back: what it
 * held is lost, for certain and only that.  That sync fails, the next one
 * does not, and new appends go to a new file: no poison (t-120-damage).
 */
Test(chunk, an_active_chunk_deleted_under_us_fails_one_sync_and_poisons_nothing)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc lost = append_one(cs, bs, 1), later;
	char path[256];

	chunk_path(path, sizeof(path), lost.chunk_id);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(chunk_sync(cs), -EIO);
	cr_assert_not(chunk_poisoned(cs));
	later = append_one(cs, bs, 2);
	cr_assert_neq(later.chunk_id, lost.chunk_id, "appends go to a new file");
	cr_assert_eq(chunk_sync(cs), 0);
	assert_reads(cs, bs, &later, 2);
	chunk_store_close(cs);
}

/*
 * A failed sync poisons the store: Linux may have dropped the pages it could
 * not write, so a later fdatasync that succeeds would prove nothing.  Every
 * later sync and append fails with EIO, even with the fault gone; reads go
 * on; a new open starts clean.
 */
Test(chunk, a_failed_sync_poisons_the_store_until_it_is_opened_again)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc synced = append_one(cs, bs, 1), unsynced, loc;
	uint8_t *buf = malloc(bs);

	cr_assert_eq(chunk_sync(cs), 0);
	unsynced = append_one(cs, bs, 2);
	cr_assert_not(chunk_poisoned(cs));
	chunk_fault_set(cs, CHUNK_FAULT_SYNC, 0, ENOSPC);
	cr_assert_eq(chunk_sync(cs), -ENOSPC, "the first failure says what failed");
	cr_assert(chunk_poisoned(cs));
	chunk_fault_set(cs, CHUNK_FAULT_SYNC, 0, 0);
	cr_assert_eq(chunk_sync(cs), -EIO, "a retry that would succeed must not");
	fill_block(buf, bs, 3);
	cr_assert_eq(chunk_append(cs, buf, 1, &loc), -EIO);
	cr_assert_eq(chunk_sync(cs), -EIO);
	assert_reads(cs, bs, &synced, 1);
	assert_reads(cs, bs, &unsynced, 2);     /* still in the page cache here */
	chunk_store_close(cs);

	cs = open_store(bs, 0);
	cr_assert_not(chunk_poisoned(cs));
	loc = append_one(cs, bs, 4);
	cr_assert_eq(chunk_sync(cs), 0);
	assert_reads(cs, bs, &loc, 4);
	assert_reads(cs, bs, &synced, 1);
	free(buf);
	chunk_store_close(cs);
}

/* --- concurrency ----------------------------------------------------------- */

#define NTHREADS     4
#define PER_THREAD   300
#define CONC_BS      65536u              /* 1024 slots a chunk: a few chunk ends */

struct worker {
	struct chunk_store *cs;
	int t;
	struct chunk_loc locs[PER_THREAD];
	int failed;                      /* first error seen; asserted in main */
	char what[96];
};

static uint64_t seed_of(int t, uint32_t i)
{
	return ((uint64_t)(t + 1) << 32) | i;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint8_t *buf = malloc(4 * (size_t)CONC_BS), *back = malloc(4 * (size_t)CONC_BS);
	uint32_t i = 0, round = 0;

	while (i < PER_THREAD && !w->failed) {
		uint32_t n = 1 + (round + (uint32_t)w->t) % 4, bad = 0;
		int rc;

		if (n > PER_THREAD - i)
			n = PER_THREAD - i;
		for (uint32_t k = 0; k < n; k++)
			fill_block(buf + k * CONC_BS, CONC_BS, seed_of(w->t, i + k));
		rc = chunk_append(w->cs, buf, n, &w->locs[i]);
		if (rc) {
			w->failed = rc;
			snprintf(w->what, sizeof(w->what), "append at %u", i);
			break;
		}
		/* read back what stayed in one chunk, while others write */
		uint32_t same = 1;
		while (same < n && w->locs[i + same].chunk_id == w->locs[i].chunk_id)
			same++;
		rc = chunk_read(w->cs, &w->locs[i], same, back, &bad);
		if (rc || memcmp(back, buf, same * (size_t)CONC_BS) != 0) {
			w->failed = rc ? rc : -EILSEQ;
			snprintf(w->what, sizeof(w->what), "read back at %u (bad %u)", i, bad);
			break;
		}
		if (round % 16 == 0 && (rc = chunk_sync(w->cs)) != 0) {
			w->failed = rc;
			snprintf(w->what, sizeof(w->what), "sync at %u", i);
			break;
		}
		i += n;
		round++;
	}
	free(buf);
	free(back);
	return NULL;
}

static int cmp_loc(const void *a, const void *b)
{
	const struct chunk_loc *x = a, *y = b;

	if (x->chunk_id != y->chunk_id)
		return x->chunk_id < y->chunk_id ? -1 : 1;
	return (x->slot > y->slot) - (x->slot < y->slot);
}

Test(chunk, concurrent_appends_from_4_threads_read_back_and_get_distinct_locs)
{
	struct chunk_store *cs = open_store(CONC_BS, 0);
	struct worker *w = calloc(NTHREADS, sizeof(*w));
	struct chunk_loc *all = malloc(NTHREADS * PER_THREAD * sizeof(*all));
	pthread_t th[NTHREADS];
	uint8_t *back = malloc(CONC_BS);

	for (int t = 0; t < NTHREADS; t++) {
		w[t].cs = cs;
		w[t].t = t;
		cr_assert_eq(pthread_create(&th[t], NULL, worker_main, &w[t]), 0);
	}
	for (int t = 0; t < NTHREADS; t++)
		pthread_join(th[t], NULL);
	for (int t = 0; t < NTHREADS; t++)
		cr_assert_eq(w[t].failed, 0, "thread %d: %s: %d", t, w[t].what, w[t].failed);
	cr_assert_eq(chunk_sync(cs), 0);

	for (int t = 0; t < NTHREADS; t++) {
		for (uint32_t i = 0; i < PER_THREAD; i++) {
			cr_assert_eq(chunk_read(cs, &w[t].locs[i], 1, back, NULL), 0);
			cr_assert(block_is(back, CONC_BS, seed_of(t, i)), "thread %d block %u", t, i);
			all[t * PER_THREAD + i] = w[t].locs[i];
		}
	}
	qsort(all, NTHREADS * PER_THREAD, sizeof(*all), cmp_loc);
	for (size_t k = 1; k < NTHREADS * PER_THREAD; k++)
		cr_assert_neq(cmp_loc(&all[k - 1], &all[k]), 0, "loc handed out twice");
	/* 1200 blocks of 1024 slots a chunk: at least two chunks were used */
	cr_assert_geq(all[NTHREADS * PER_THREAD - 1].chunk_id, 2);

	free(back);
	free(all);
	free(w);
	chunk_store_close(cs);
}

/* --- sync and the header --------------------------------------------------- */

Test(chunk, sync_returns_0_and_created_chunk_header_validates)
{
	const uint32_t bs = 16384;
	uint64_t before = now_ns(), after;
	struct chunk_store *cs = open_store(bs, 0xabc);
	struct chunk_loc loc = append_one(cs, bs, 1);
	uint8_t hdr[CHUNK_HEADER_BYTES];
	char path[256];
	struct stat st;
	int fd;

	cr_assert_eq(chunk_sync(cs), 0);
	cr_assert_eq(chunk_sync(cs), 0);        /* nothing dirty */
	after = now_ns();
	chunk_path(path, sizeof(path), loc.chunk_id);
	cr_assert_eq(loc.chunk_id, 0xabc);
	cr_assert(strstr(path, "/0000000000000abc.chunk"));

	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	cr_assert_eq(fstat(fd, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	cr_assert_eq(st.st_size, CHUNK_HEADER_BYTES + bs);
	cr_assert_eq(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	close(fd);

	cr_assert_eq(memcmp(hdr, "VSNAPCHK", 8), 0);
	cr_assert_eq(le32(hdr + 8), 1);
	cr_assert_eq(le32(hdr + 12), bs);
	cr_assert_eq(le64(hdr + 16), 0xabc);
	cr_assert_geq(le64(hdr + 24), before);
	cr_assert_leq(le64(hdr + 24), after);
	for (size_t i = 32; i < CHUNK_HEADER_BYTES - 8; i++)
		cr_assert_eq(hdr[i], 0, "reserved byte %zu", i);
	cr_assert_eq(le64(hdr + CHUNK_HEADER_BYTES - 8), cksum_buf(hdr, CHUNK_HEADER_BYTES - 8));

	chunk_store_close(cs);
}

/* --- fd limits ------------------------------------------------------------- */

Test(chunk, reads_of_more_chunks_than_the_fd_limit_allows_still_succeed)
{
	const uint32_t bs = 4096, nchunks = 60;
	struct chunk_loc locs[60];
	struct rlimit rl;
	struct chunk_store *cs;

	/* one block in each of 60 chunk files */
	for (uint32_t i = 0; i < nchunks; i++) {
		cs = open_store(bs, 0);
		locs[i] = append_one(cs, bs, i);
		chunk_store_close(cs);
	}
	/*
	 * Criterion runs each test in its own process: this limit dies with it.
	 * The store raised the soft limit once already (first open above) and
	 * does not again; the hard limit stays, as valgrind will not change it.
	 */
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	rl.rlim_cur = 40;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	cs = open_store(bs, 0);
	for (int pass = 0; pass < 2; pass++)
		for (uint32_t i = 0; i < nchunks; i++)
			assert_reads(cs, bs, &locs[i], i);
	chunk_store_close(cs);
}

/* --- spares ------------------------------------------------------------------ */

static ino_t file_ino(const char *path)
{
	struct stat st;

	cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
	return st.st_ino;
}

static int count_spares(const char *dir)
{
	char path[512];
	int n = 0;

	for (uint64_t seq = 1; seq < 64; seq++) {
		snprintf(path, sizeof(path), "%s/%016" PRIx64 ".spare", dir, seq);
		n += access(path, F_OK) == 0;
	}
	return n;
}

/* Fill chunk files with MiB blocks (64 per chunk) until the active one is
 * chunk "upto"; returns the loc of the last block, seeded with seed0 + i. */
static struct chunk_loc fill_until(struct chunk_store *cs, uint64_t upto, uint64_t seed0)
{
	struct chunk_loc last = { 0 };

	for (uint64_t i = 0; last.chunk_id < upto; i++)
		last = append_one(cs, MiB, seed0 + i);
	return last;
}

Test(chunk, a_removed_chunk_becomes_a_spare_and_the_next_chunk_reuses_its_file)
{
	const uint32_t bs = MiB;
	char spare_dir[256], path[256];
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc a, b, c;
	uint8_t *back = malloc(bs);
	ino_t ino1;

	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 1), 0);
	cr_assert_eq(chunk_spare_bytes(cs), 0);
	a = append_one(cs, bs, 1);
	cr_assert_eq(a.chunk_id, 1);
	fill_until(cs, 2, 100);                 /* chunk 1 full, chunk 2 active */
	b = append_one(cs, bs, 7);
	cr_assert_eq(chunk_sync(cs), 0);
	chunk_path(path, sizeof(path), 1);
	ino1 = file_ino(path);

	/* removal keeps the file (one spare allowed), under a spare name */
	cr_assert_eq(chunk_remove(cs, 1), 0);
	cr_assert_not(chunk_file_exists(1));
	cr_assert_eq(chunk_read(cs, &a, 1, back, NULL), -ENOENT);
	cr_assert_eq(chunk_remove(cs, 1), -ENOENT);
	cr_assert_eq(count_spares(spare_dir), 1);
	cr_assert_eq(chunk_spare_bytes(cs), CHUNK_HEADER_BYTES + CHUNK_MAX_BYTES);

	/* the next chunk is that file, with its own id and header */
	fill_until(cs, 3, 1000);
	c = append_one(cs, bs, 9);
	cr_assert_eq(c.chunk_id, 3);
	chunk_path(path, sizeof(path), 3);
	cr_assert_eq(file_ino(path), ino1, "chunk 3 was not made from the spare");
	cr_assert_eq(count_spares(spare_dir), 0);
	cr_assert_eq(chunk_spare_bytes(cs), 0);
	cr_assert_eq(chunk_sync(cs), 0);
	assert_reads(cs, bs, &c, 9);            /* also checks the header names id 3 */
	assert_reads(cs, bs, &b, 7);
	cr_assert_eq(chunk_read(cs, &a, 1, back, NULL), -ENOENT);

	/* and it stays readable from a new open, which validates the header */
	chunk_store_close(cs);
	cs = open_store(bs, 0);
	assert_reads(cs, bs, &c, 9);
	free(back);
	chunk_store_close(cs);
}

Test(chunk, spares_are_bounded_and_adopted_by_the_next_open)
{
	const uint32_t bs = MiB;
	char spare_dir[256];
	struct chunk_store *cs = open_store(bs, 0);

	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 2), 0);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 2), -EBUSY);
	fill_until(cs, 4, 0);
	cr_assert_eq(chunk_sync(cs), 0);
	for (uint64_t id = 1; id <= 3; id++) {
		cr_assert_eq(chunk_remove(cs, id), 0);
		cr_assert_not(chunk_file_exists(id));
	}
	cr_assert_eq(count_spares(spare_dir), 2, "the third removal must unlink");
	cr_assert_eq(chunk_spare_bytes(cs), 2 * (uint64_t)(CHUNK_HEADER_BYTES + CHUNK_MAX_BYTES));
	chunk_store_close(cs);

	/* a smaller limit next time: one is adopted, the other deleted */
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 1), 0);
	cr_assert_eq(count_spares(spare_dir), 1);
	cr_assert_eq(chunk_spare_bytes(cs), CHUNK_HEADER_BYTES + CHUNK_MAX_BYTES);
	fill_until(cs, 5, 0);                   /* chunk 5, the first of this open */
	cr_assert_eq(count_spares(spare_dir), 0);
	cr_assert(chunk_file_exists(5));
	chunk_store_close(cs);

	/* a limit of 0 deletes what an earlier open kept */
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 1), 0);
	cr_assert_eq(chunk_remove(cs, 4), 0);
	cr_assert_eq(count_spares(spare_dir), 1);
	chunk_store_close(cs);
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 0), 0);
	cr_assert_eq(count_spares(spare_dir), 0, "spare_chunks=0 must delete old spares");
	cr_assert_eq(chunk_spare_bytes(cs), 0);
	chunk_store_close(cs);

	/* without chunk_spares_enable, removal unlinks as before */
	cs = open_store(bs, 0);
	fill_until(cs, 7, 0);
	cr_assert_eq(chunk_remove(cs, 5), 0);
	cr_assert_not(chunk_file_exists(5));
	cr_assert_eq(count_spares(spare_dir), 0);
	chunk_store_close(cs);
}

Test(chunk, a_lowered_spare_limit_unlinks_the_oldest_spares_and_later_removals)
{
	const uint32_t bs = MiB;
	char spare_dir[256], path[512];
	struct chunk_store *cs = open_store(bs, 0);
	uint64_t n0;

	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_limit(cs, 0), 0, "no spares enabled: nothing to do");
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 3), 0);
	n0 = chunk_append_count(cs);
	fill_until(cs, 6, 0);
	cr_assert_gt(chunk_append_count(cs), n0, "appends are counted");
	cr_assert_eq(chunk_sync(cs), 0);
	for (uint64_t id = 1; id <= 3; id++)
		cr_assert_eq(chunk_remove(cs, id), 0);
	cr_assert_eq(count_spares(spare_dir), 3);

	/* down to one: the newest (spare 3) stays, it is the one reused next */
	cr_assert_eq(chunk_spares_limit(cs, 1), 0);
	cr_assert_eq(count_spares(spare_dir), 1);
	snprintf(path, sizeof(path), "%s/%016" PRIx64 ".spare", spare_dir, (uint64_t)3);
	cr_assert_eq(access(path, F_OK), 0, "the newest spare must stay");
	cr_assert_eq(chunk_spare_bytes(cs), CHUNK_HEADER_BYTES + CHUNK_MAX_BYTES);

	/* at 0 every spare goes, and a removal unlinks at once */
	cr_assert_eq(chunk_spares_limit(cs, 0), 0);
	cr_assert_eq(count_spares(spare_dir), 0);
	cr_assert_eq(chunk_spare_bytes(cs), 0);
	cr_assert_eq(chunk_remove(cs, 4), 0);
	cr_assert_not(chunk_file_exists(4));
	cr_assert_eq(count_spares(spare_dir), 0);

	/* raised again (never past the max given at enable): kept again */
	cr_assert_eq(chunk_spares_limit(cs, 100), 0);
	cr_assert_eq(chunk_remove(cs, 5), 0);
	cr_assert_eq(count_spares(spare_dir), 1);
	chunk_store_close(cs);
}
