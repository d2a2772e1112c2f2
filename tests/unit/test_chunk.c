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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vsnapfs/chunk.h"
#include "vsnapfs/cksum.h"

#define MiB (1u << 20)

static char g_tmp[64];
static char g_dir[128];                 /* the store directory, inside g_tmp */

static void setup(void)
{
	/* not /tmp: a tmpfs there would keep every page cached */
	strcpy(g_tmp, "/var/tmp/vsnapfs-test-chunk-XXXXXX");
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

/* Append one block made from seed, for volume block "seed"; returns its
 * loc. */
static struct chunk_loc append_one(struct chunk_store *cs, uint32_t bs, uint64_t seed)
{
	struct chunk_loc loc = { .lblock = seed & CHUNK_LBLOCK_MAX };
	void *buf = malloc(bs);
	int rc;

	fill_block(buf, bs, seed);
	rc = chunk_append(cs, buf, 1, CHUNK_KIND_DATA, &loc);
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
	struct chunk_loc locs[5] = { { 0 } }, one[1];
	uint8_t *buf = malloc((size_t)n * bs), *back = malloc((size_t)n * bs);
	struct chunk_bad bad = { .index = 77 };

	fill_blocks(buf, bs, n, 100);
	for (uint32_t i = 0; i < n; i++)
		locs[i].lblock = 1000 + i;
	cr_assert_eq(chunk_append(cs, buf, n, CHUNK_KIND_DATA, locs), 0);
	for (uint32_t i = 0; i < n; i++) {
		cr_assert_eq(locs[i].chunk_id, 1);
		cr_assert_eq(locs[i].slot, i);
		cr_assert_eq(locs[i].lblock, 1000 + i, "lblock is input, kept");
		/* docs/on-disk-format.md: XXH3_64(payload, XXH3_64(chunk, slot, lblock)) */
		cr_assert_eq(locs[i].cksum, cksum_seeded(buf + (size_t)i * bs, bs,
							 cksum_slot_seed(1, i, 1000 + i)));
	}
	cr_assert_eq(chunk_active_id(cs), 1);
	cr_assert_eq(chunk_next_id(cs), 2);

	one[0] = append_one(cs, bs, 500);
	cr_assert_eq(one[0].chunk_id, 1);
	cr_assert_eq(one[0].slot, n);

	cr_assert_eq(chunk_read(cs, locs, n, back, &bad), 0);
	cr_assert_eq(memcmp(buf, back, (size_t)n * bs), 0);
	cr_assert_eq(bad.index, 77, "bad touched on success");
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
	struct chunk_loc locs[5] = { { 0 } };
	uint8_t *buf = malloc(5 * (size_t)bs), *back = malloc(5 * (size_t)bs);

	cr_assert_eq(nslots, 64);
	for (uint32_t i = 0; i < nslots - 2; i++)
		cr_assert_eq(append_one(cs, bs, i).slot, i);

	fill_blocks(buf, bs, 5, 1000);
	cr_assert_eq(chunk_append(cs, buf, 5, CHUNK_KIND_DATA, locs), 0);
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
	struct chunk_loc locs[4] = { { 0 } };
	uint8_t *buf = malloc(4 * bs), *back = malloc(4 * bs);
	struct chunk_bad bad = { .index = 99 };

	fill_blocks(buf, bs, 4, 7);
	cr_assert_eq(chunk_append(cs, buf, 4, CHUNK_KIND_DATA, locs), 0);
	flip_byte(1, CHUNK_DATA_OFF(bs) + 2 * bs + 123);

	cr_assert_eq(chunk_read(cs, locs, 4, back, &bad), -EBADMSG);
	cr_assert_eq(bad.index, 2);
	cr_assert_eq(bad.why, CHUNK_BAD_CKSUM);
	cr_assert_eq(chunk_read(cs, &locs[1], 3, back, &bad), -EBADMSG);
	cr_assert_eq(bad.index, 1);
	cr_assert_eq(chunk_read(cs, &locs[2], 1, back, NULL), -EBADMSG);
	cr_assert_eq(chunk_read(cs, &locs[0], 2, back, NULL), 0);
	cr_assert_eq(memcmp(back, buf, 2 * bs), 0);
	cr_assert_eq(chunk_read(cs, &locs[3], 1, back, NULL), 0);
	cr_assert_eq(memcmp(back, buf + 3 * bs, bs), 0);
	/* the loc's checksum is append's output only: reads go by the entry */
	struct chunk_loc other = locs[0];
	other.cksum ^= 1;
	cr_assert_eq(chunk_read(cs, &other, 1, back, &bad), 0);

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
	struct chunk_loc locs[3] = { { 0 } };
	uint8_t *buf = malloc(3 * bs);
	struct seen s = { 0 };

	fill_blocks(buf, bs, 3, 0);
	/* ids 0x20 (3 slots), 0x21 (1 slot); then hand-made ones */
	cs = open_store(bs, 0x20);
	cr_assert_eq(chunk_append(cs, buf, 3, CHUNK_KIND_DATA, locs), 0);
	chunk_store_close(cs);
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, locs), 0);
	chunk_store_close(cs);

	touch("0000000000000003.chunk", 100);                  /* shorter than a header */
	touch("000000000000000a.chunk", CHUNK_DATA_OFF(bs) + 2 * bs + 100); /* torn tail */
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
	struct chunk_loc locs[2] = { { 0 } }, ok;

	fill_blocks(buf, bs, 2, 50);
	chunk_fault_set(cs, CHUNK_FAULT_APPEND, 2, ENOSPC);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, locs), 0);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, locs), 0);
	cr_assert_eq(chunk_append(cs, buf, 2, CHUNK_KIND_DATA, locs), -ENOSPC);
	cr_assert_eq(locs[0].chunk_id, 0, "a failed append leaves no valid loc");
	cr_assert_eq(locs[1].chunk_id, 0);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, locs), -ENOSPC);

	chunk_fault_set(cs, CHUNK_FAULT_APPEND, 0, EIO);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, locs), -EIO);
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
	struct chunk_loc synced = append_one(cs, bs, 1), unsynced, loc = { 0 };
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
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, &loc), -EIO);
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
		uint32_t n = 1 + (round + (uint32_t)w->t) % 4;
		struct chunk_bad bad = { 0 };
		int rc;

		if (n > PER_THREAD - i)
			n = PER_THREAD - i;
		for (uint32_t k = 0; k < n; k++)
			fill_block(buf + k * CONC_BS, CONC_BS, seed_of(w->t, i + k));
		for (uint32_t k = 0; k < n; k++)
			w->locs[i + k].lblock = seed_of(w->t, i + k) & CHUNK_LBLOCK_MAX;
		rc = chunk_append(w->cs, buf, n, CHUNK_KIND_DATA, &w->locs[i]);
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
			snprintf(w->what, sizeof(w->what), "read back at %u (bad %u)", i, bad.index);
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
	/* header, a slot table of 4096 entries (64 KiB), one slot */
	cr_assert_eq(st.st_size, 4096 + 65536 + bs);
	cr_assert_eq(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	close(fd);

	cr_assert_eq(memcmp(hdr, "VSNAPCHK", 8), 0);
	cr_assert_eq(le32(hdr + 8), 2);
	cr_assert_eq(le32(hdr + 12), bs);
	cr_assert_eq(le64(hdr + 16), 0xabc);
	cr_assert_geq(le64(hdr + 24), before);
	cr_assert_leq(le64(hdr + 24), after);
	cr_assert_eq(le32(hdr + 32), 4096, "nslots");
	cr_assert_eq(le32(hdr + 36), 4096, "table_off");
	cr_assert_eq(le64(hdr + 40), 4096 + 65536, "data_off");
	for (size_t i = 48; i < CHUNK_HEADER_BYTES - 8; i++)
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

/* Fill chunks until chunk id is the active one, append block seed to it,
 * and check that chunk id is the file of inode ino, the only spare there
 * was. */
static struct chunk_loc next_chunk_from(struct chunk_store *cs, uint32_t bs, uint64_t id, ino_t ino,
					const char *spare_dir, uint64_t seed)
{
	char path[256];
	struct chunk_loc c;

	fill_until(cs, id, seed * 1000);
	c = append_one(cs, bs, seed);
	cr_assert_eq(c.chunk_id, id);
	chunk_path(path, sizeof(path), id);
	cr_assert_eq(file_ino(path), ino, "chunk %" PRIu64 " was not made from the spare", id);
	cr_assert_eq(count_spares(spare_dir), 0);
	cr_assert_eq(chunk_spare_bytes(cs), 0);
	return c;
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
	cr_assert_eq(chunk_spare_bytes(cs), CHUNK_FILE_MAX_BYTES(bs));

	/* the next chunk is that file, with its own id and header */
	c = next_chunk_from(cs, bs, 3, ino1, spare_dir, 9);
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

static bool stop_now(void *ctx)
{
	int *calls = ctx;

	return ++*calls > 3;            /* after three MiB of zeros */
}

/* Chunk file id is "bytes" long. */
static void chunk_file_is(uint64_t id, uint64_t bytes)
{
	char path[256];
	struct stat st;

	chunk_path(path, sizeof(path), id);
	cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
	cr_assert_eq((uint64_t)st.st_size, bytes, "chunk %" PRIu64 " has %" PRIu64 " bytes",
		     id, (uint64_t)st.st_size);
}

Test(chunk, a_spare_is_written_ahead_at_once_for_an_appended_chunk_and_at_half_for_one_made_from_a_spare)
{
	const uint32_t bs = 64 << 10;           /* 1024 slots a chunk */
	const uint32_t half = CHUNK_NSLOTS(bs) / 2;
	char spare_dir[256], path[512];
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc a, b, c;
	struct stat st;
	int calls = 0;

	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 2), 0);
	cr_assert_not(chunk_spare_wanted(cs), "no chunk yet");
	a = append_one(cs, bs, 99);
	cr_assert_eq(a.chunk_id, 1);
	cr_assert(chunk_spare_wanted(cs), "chunk 1 was appended to a new file");
	cr_assert_eq(chunk_spares_limit(cs, 0), 0);
	cr_assert_not(chunk_spare_wanted(cs), "no spare is kept under a limit of 0");
	cr_assert_eq(chunk_spares_limit(cs, 2), 0);

	/* stopped after three MiB: nothing added, nothing left behind, chunk
	 * 1 still active, and not again for this chunk */
	cr_assert_eq(chunk_spare_prepare(cs, stop_now, &calls), 0);
	cr_assert_eq(count_spares(spare_dir), 0);
	cr_assert_eq(chunk_spare_bytes(cs), 0);
	cr_assert_not(chunk_spare_wanted(cs), "one was started for this chunk already");
	cr_assert_eq(append_one(cs, bs, 98).chunk_id, 1);

	/* chunk 2, appended too: one is written ahead, whole and synced, and
	 * chunk 2 is left for it at once */
	fill_until(cs, 2, 5000);
	b = append_one(cs, bs, 5555);
	cr_assert_eq(b.chunk_id, 2);
	cr_assert(chunk_spare_wanted(cs));
	cr_assert_eq(chunk_spare_prepare(cs, stop_now, &(int){ -1000 }), 1);
	cr_assert_eq(chunk_spares_prepared(cs), 1);
	cr_assert_eq(count_spares(spare_dir), 0, "taken by chunk 3");
	cr_assert_eq(chunk_spare_bytes(cs), 0);
	chunk_file_is(3, CHUNK_FILE_MAX_BYTES(bs));
	/* written, not sparse or merely reserved: overwriting it allocates nothing */
	chunk_path(path, sizeof(path), 3);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_geq((uint64_t)st.st_blocks * 512, CHUNK_FILE_MAX_BYTES(bs));
	c = append_one(cs, bs, 77);
	cr_assert_eq(c.chunk_id, 3, "the next append goes to the spare");
	chunk_file_is(2, CHUNK_DATA_OFF(bs) + (uint64_t)(b.slot + 1) * bs);
	cr_assert_eq(chunk_sync(cs), 0);
	assert_reads(cs, bs, &a, 99);
	assert_reads(cs, bs, &b, 5555);
	assert_reads(cs, bs, &c, 77);

	/* chunk 3 was made from a spare: the next waits for it to be half used */
	cr_assert_not(chunk_spare_wanted(cs), "chunk 3 is not half used");
	cr_assert_eq(chunk_spare_prepare(cs, NULL, NULL), 0);
	for (uint32_t i = c.slot + 1; i < half; i++)
		append_one(cs, bs, 200 + i);
	cr_assert(chunk_spare_wanted(cs));
	cr_assert_eq(chunk_spare_prepare(cs, NULL, NULL), 1);
	cr_assert_eq(chunk_spares_prepared(cs), 2);
	cr_assert_eq(count_spares(spare_dir), 1, "it waits for chunk 3 to fill");
	cr_assert_eq(append_one(cs, bs, 76).chunk_id, 3);
	cr_assert_not(chunk_spare_wanted(cs), "one is waiting");
	/* given back (writes paused) and wanted again: not for this chunk */
	cr_assert_eq(chunk_spares_limit(cs, 0), 0);
	cr_assert_eq(count_spares(spare_dir), 0);
	cr_assert_eq(chunk_spares_limit(cs, 2), 0);
	cr_assert_not(chunk_spare_wanted(cs), "a spare was written ahead for this chunk already");
	cr_assert_eq(chunk_spare_prepare(cs, NULL, NULL), 0);
	cr_assert_eq(chunk_spares_prepared(cs), 2);

	/* chunk 4, appended: one at once, and chunk 5 is made from it; closing
	 * the store cuts the zeros it never used */
	fill_until(cs, 4, 30000);
	cr_assert(chunk_spare_wanted(cs), "chunk 4 was appended to a new file");
	cr_assert_eq(chunk_spare_prepare(cs, NULL, NULL), 1);
	c = append_one(cs, bs, 75);
	cr_assert_eq(c.chunk_id, 5);
	cr_assert_eq(chunk_sync(cs), 0);
	assert_reads(cs, bs, &c, 75);
	chunk_store_close(cs);
	chunk_file_is(5, CHUNK_DATA_OFF(bs) + (uint64_t)(c.slot + 1) * bs);
	cs = open_store(bs, 0);
	assert_reads(cs, bs, &c, 75);
	assert_reads(cs, bs, &b, 5555);
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
	cr_assert_eq(chunk_spare_bytes(cs), 2 * (uint64_t)(CHUNK_FILE_MAX_BYTES(bs)));
	chunk_store_close(cs);

	/* a smaller limit next time: one is adopted, the other deleted */
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 1), 0);
	cr_assert_eq(count_spares(spare_dir), 1);
	cr_assert_eq(chunk_spare_bytes(cs), CHUNK_FILE_MAX_BYTES(bs));
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
	cr_assert_eq(chunk_spare_bytes(cs), CHUNK_FILE_MAX_BYTES(bs));

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

/* --- the slot table (header version 2): D2 of docs/design.md ---------------- */

/* Read or write the raw 16-byte slot table entry of a slot (table at 4096). */
static void entry_io(uint64_t id, uint32_t slot, uint8_t ent[16], bool write)
{
	char path[256];
	int fd;

	chunk_path(path, sizeof(path), id);
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	if (write)
		cr_assert_eq(pwrite(fd, ent, 16, 4096 + 16 * (off_t)slot), 16);
	else
		cr_assert_eq(pread(fd, ent, 16, 4096 + 16 * (off_t)slot), 16);
	close(fd);
}

static uint64_t le48(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40;
}

/* Swap len bytes at offsets a and b of chunk file id. */
static void swap_bytes(uint64_t id, off_t a, off_t b, size_t len)
{
	uint8_t *x = malloc(len), *y = malloc(len);
	char path[256];
	int fd;

	chunk_path(path, sizeof(path), id);
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pread(fd, x, len, a), (ssize_t)len);
	cr_assert_eq(pread(fd, y, len, b), (ssize_t)len);
	cr_assert_eq(pwrite(fd, x, len, b), (ssize_t)len);
	cr_assert_eq(pwrite(fd, y, len, a), (ssize_t)len);
	close(fd);
	free(x);
	free(y);
}

/* chunk_read of one block: its rc, *bad filled on -EBADMSG. */
static int read_one(struct chunk_store *cs, const struct chunk_loc *loc, struct chunk_bad *bad)
{
	uint8_t *buf = malloc(CHUNK_BLOCK_MAX);
	int rc;

	*bad = (struct chunk_bad){ 0 };
	rc = chunk_read(cs, loc, 1, buf, bad);
	free(buf);
	return rc;
}

static void assert_bad(struct chunk_store *cs, const struct chunk_loc *loc,
		       enum chunk_bad_why why, const char *what)
{
	struct chunk_bad bad;
	char text[96];
	int rc = read_one(cs, loc, &bad);

	cr_assert_eq(rc, -EBADMSG, "%s: chunk_read returned %d, want -EBADMSG", what, rc);
	cr_assert_eq(bad.why, why, "%s: reason %d (%s), want %d", what, bad.why,
		     chunk_bad_str(&bad, loc->lblock, text, sizeof(text)), why);
}

Test(chunk, append_writes_one_slot_entry_per_block_with_kind_lblock_and_seeded_checksum)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 7);
	struct chunk_loc locs[3] = { { .lblock = 40 }, { .lblock = 41 }, { .lblock = CHUNK_LBLOCK_MAX } };
	struct chunk_loc gc = { .lblock = 40 }, big = { .lblock = CHUNK_LBLOCK_MAX + 1 };
	struct chunk_entry e[6];
	uint8_t *buf = malloc(3 * bs), ent[16];

	fill_blocks(buf, bs, 3, 70);
	cr_assert_eq(chunk_append(cs, buf, 3, CHUNK_KIND_DATA, locs), 0);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_RELOC, &gc), 0);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, &big), -EINVAL, "lblock has 48 bits");
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_LOG, &gc), -EINVAL);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_NONE, &gc), -EINVAL);
	for (uint32_t i = 0; i < 3; i++) {
		entry_io(7, i, ent, false);
		cr_assert_eq(le64(ent), locs[i].cksum);
		cr_assert_eq(le64(ent), cksum_seeded(buf + i * bs, bs, cksum_slot_seed(7, i, locs[i].lblock)));
		cr_assert_eq(le48(ent + 8), locs[i].lblock);
		cr_assert_eq(ent[14], 1, "kind DATA");
		cr_assert_eq(ent[15], 0, "flags");
	}
	entry_io(7, 3, ent, false);
	cr_assert_eq(ent[14], 2, "kind RELOC");
	cr_assert_eq(gc.slot, 3);
	cr_assert_neq(gc.cksum, locs[0].cksum, "same payload and lblock, another slot: another checksum");

	/* the entries in bulk, for vsnapctl check; past the file's end: kind 0 */
	cr_assert_eq(chunk_entries_read(cs, 7, 0, 6, e), 0);
	for (uint32_t i = 0; i < 3; i++) {
		cr_assert_eq(e[i].kind, CHUNK_KIND_DATA);
		cr_assert_eq(e[i].lblock, locs[i].lblock);
		cr_assert_eq(e[i].cksum, locs[i].cksum);
	}
	cr_assert_eq(e[3].kind, CHUNK_KIND_RELOC);
	cr_assert_eq(e[4].kind, CHUNK_KIND_NONE);
	cr_assert_eq(e[5].kind, CHUNK_KIND_NONE);
	cr_assert_eq(chunk_entries_read(cs, 7, CHUNK_NSLOTS(bs) - 1, 2, e), -EINVAL);

	cr_assert_eq(chunk_read(cs, locs, 3, buf, NULL), 0);
	assert_reads(cs, bs, &gc, 70);
	free(buf);
	chunk_store_close(cs);
}

/* Each row of D2's fault table, made on purpose: the read refuses, and
 * says which check failed. */
Test(chunk, fault_table_flipped_payload_bit_is_a_checksum_mismatch)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc loc = append_one(cs, bs, 5);

	cr_assert_eq(chunk_sync(cs), 0);
	flip_byte(loc.chunk_id, CHUNK_DATA_OFF(bs) + 4000);
	assert_bad(cs, &loc, CHUNK_BAD_CKSUM, "flipped payload bit");
	chunk_store_close(cs);
}

Test(chunk, fault_table_lost_entry_write_reads_as_slot_never_written)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc a = append_one(cs, bs, 5), b = append_one(cs, bs, 6);
	uint8_t zero[16] = { 0 };

	entry_io(a.chunk_id, a.slot, zero, true);
	assert_bad(cs, &a, CHUNK_BAD_UNWRITTEN, "zeroed entry");
	assert_reads(cs, bs, &b, 6);            /* its neighbour is fine */
	chunk_store_close(cs);
}

Test(chunk, fault_table_entry_of_another_block_is_named_with_both_lblocks)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc loc = append_one(cs, bs, 5);
	struct chunk_bad bad;
	uint8_t ent[16];
	char text[96];

	entry_io(loc.chunk_id, loc.slot, ent, false);
	ent[8] = 9;                             /* lblock 5 -> 9, checksum kept */
	entry_io(loc.chunk_id, loc.slot, ent, true);
	assert_bad(cs, &loc, CHUNK_BAD_LBLOCK, "entry with another lblock");
	cr_assert_eq(read_one(cs, &loc, &bad), -EBADMSG);
	cr_assert_eq(bad.lblock, 9);
	cr_assert_str_eq(chunk_bad_str(&bad, loc.lblock, text, sizeof(text)),
			 "slot holds block 9, expected 5");
	chunk_store_close(cs);
}

Test(chunk, fault_table_the_map_asking_for_another_lblock_fails)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc loc = append_one(cs, bs, 5), wrong = loc;

	wrong.lblock = 6;                       /* a splitting bug in the map */
	assert_bad(cs, &wrong, CHUNK_BAD_LBLOCK, "wrong expected lblock");
	assert_reads(cs, bs, &loc, 5);
	chunk_store_close(cs);
}

/* Two versions of one volume block in slots 0 and 1: the payloads (or
 * payloads and entries) land in each other's slot. */
Test(chunk, fault_table_misdirected_writes_fail_even_for_the_same_lblock)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc a = { .lblock = 12 }, b = { .lblock = 12 };
	uint8_t *buf = malloc(bs);

	fill_block(buf, bs, 1);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, &a), 0);
	fill_block(buf, bs, 2);
	cr_assert_eq(chunk_append(cs, buf, 1, CHUNK_KIND_DATA, &b), 0);
	cr_assert_eq(a.chunk_id, b.chunk_id);

	swap_bytes(a.chunk_id, CHUNK_DATA_OFF(bs), CHUNK_DATA_OFF(bs) + bs, bs);
	assert_bad(cs, &a, CHUNK_BAD_CKSUM, "payloads swapped (slot 0)");
	assert_bad(cs, &b, CHUNK_BAD_CKSUM, "payloads swapped (slot 1)");
	/* payload and entry together in the other slot: a self-consistent
	 * pair, of the right lblock; the seed has the slot */
	swap_bytes(a.chunk_id, 4096, 4096 + 16, 16);
	assert_bad(cs, &a, CHUNK_BAD_CKSUM, "payload and entry swapped (slot 0)");
	assert_bad(cs, &b, CHUNK_BAD_CKSUM, "payload and entry swapped (slot 1)");
	/* both back: fine again */
	swap_bytes(a.chunk_id, CHUNK_DATA_OFF(bs), CHUNK_DATA_OFF(bs) + bs, bs);
	swap_bytes(a.chunk_id, 4096, 4096 + 16, 16);
	assert_reads(cs, bs, &a, 1);
	assert_reads(cs, bs, &b, 2);
	free(buf);
	chunk_store_close(cs);
}

/*
 * Both writes of a slot lost in a chunk made from a spare: the slot still
 * holds the old file's payload and entry, a self-consistent pair.  An index
 * that claims it (same lblock, the old checksum) must not get it: the seed
 * has the chunk id.
 */
Test(chunk, fault_table_stale_slot_of_a_reused_spare_fails_because_of_the_seed)
{
	const uint32_t bs = 4096;
	char spare_dir[256], path[256];
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc old[2] = { { .lblock = 30 }, { .lblock = 31 } }, b, stale;
	uint8_t *buf = malloc(2 * bs), ent[16], a_ent[16];

	fill_blocks(buf, bs, 2, 300);
	cr_assert_eq(chunk_append(cs, buf, 2, CHUNK_KIND_DATA, old), 0);
	cr_assert_eq(chunk_sync(cs), 0);
	chunk_store_close(cs);
	chunk_path(path, sizeof(path), old[0].chunk_id);
	ino_t ino = file_ino(path);

	cs = open_store(bs, 0);
	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 1), 0);
	memset(ent, 0xa5, sizeof(ent));         /* A's last entry: a table written to its end */
	entry_io(old[0].chunk_id, CHUNK_NSLOTS(bs) - 1, ent, true);
	entry_io(old[0].chunk_id, 1, a_ent, false);
	cr_assert_eq(a_ent[14], CHUNK_KIND_DATA);
	cr_assert_eq(le48(a_ent + 8), 31);
	cr_assert_eq(le64(a_ent), old[1].cksum);
	cr_assert_eq(chunk_remove(cs, old[0].chunk_id), 0);
	b = append_one(cs, bs, 400);            /* chunk B, made from A's file */
	chunk_path(path, sizeof(path), b.chunk_id);
	cr_assert_eq(file_ino(path), ino, "chunk B is not A's file");
	cr_assert_eq(b.slot, 0);

	/* B's table was zeroed when B was made, to its end: slot 1 and the
	 * last slot have no entry */
	entry_io(b.chunk_id, 1, ent, false);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(ent[i], 0, "byte %d of slot 1's entry is %u", i, ent[i]);
	entry_io(b.chunk_id, CHUNK_NSLOTS(bs) - 1, ent, false);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(ent[i], 0, "byte %d of the last slot's entry is %u", i, ent[i]);
	stale = (struct chunk_loc){ .chunk_id = b.chunk_id, .slot = 1, .lblock = 31,
				    .cksum = old[1].cksum };
	assert_bad(cs, &stale, CHUNK_BAD_UNWRITTEN, "A's slot under a zeroed entry");

	/* the zeros' write lost (a crash before the sync): slot 1 of B holds
	 * A's bytes, entry and payload agreeing with each other */
	entry_io(b.chunk_id, 1, a_ent, true);
	assert_bad(cs, &stale, CHUNK_BAD_CKSUM, "stale slot, the old checksum");
	stale.cksum = cksum_seeded(buf + bs, bs, cksum_slot_seed(b.chunk_id, 1, 31));
	assert_bad(cs, &stale, CHUNK_BAD_CKSUM, "stale slot, the checksum B would have");
	assert_reads(cs, bs, &b, 400);
	free(buf);
	chunk_store_close(cs);
}

/* --- version-1 chunks and their sidecars -------------------------------------- */

/* Write chunk file id by hand in the version-1 layout (docs/on-disk-format.md,
 * "Chunk files"): n blocks from seed0; cksums[i] = cksum_buf of block i. */
static void write_v1_chunk(uint64_t id, uint32_t bs, uint32_t n, uint64_t seed0, uint64_t *cksums)
{
	uint8_t hdr[4096] = { 0 }, *buf = malloc((size_t)n * bs);
	char path[256];
	int fd;

	cr_assert_eq(mkdir(g_dir, 0700) == 0 || errno == EEXIST, 1);
	memcpy(hdr, "VSNAPCHK", 8);
	for (int i = 0; i < 4; i++) {
		hdr[8 + i] = (uint8_t)(1u >> (8 * i));
		hdr[12 + i] = (uint8_t)(bs >> (8 * i));
	}
	for (int i = 0; i < 8; i++)
		hdr[16 + i] = (uint8_t)(id >> (8 * i));
	uint64_t ck = cksum_buf(hdr, 4088);
	for (int i = 0; i < 8; i++)
		hdr[4088 + i] = (uint8_t)(ck >> (8 * i));
	fill_blocks(buf, bs, n, seed0);
	for (uint32_t i = 0; i < n; i++)
		cksums[i] = cksum_buf(buf + (size_t)i * bs, bs);
	chunk_path(path, sizeof(path), id);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pwrite(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	cr_assert_eq(pwrite(fd, buf, (size_t)n * bs, 4096), (ssize_t)n * bs);
	close(fd);
	free(buf);
}

static void side_path(char *out, size_t len, uint64_t id)
{
	snprintf(out, len, "%s/%016" PRIx64 ".slots", g_dir, id);
}

/* How many fds of this process point at a deleted sidecar. */
static int deleted_sidecar_fds(void)
{
	char link[64], target[512];
	int n = 0;

	for (int fd = 0; fd < 1024; fd++) {
		ssize_t len;

		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		len = readlink(link, target, sizeof(target) - 1);
		if (len <= 0)
			continue;
		target[len] = 0;
		n += strstr(target, ".slots (deleted)") != NULL;
	}
	return n;
}

Test(chunk, a_version_1_chunk_without_sidecar_verifies_nothing_and_reads_fail)
{
	const uint32_t bs = 8192;
	uint64_t ck[3];
	struct chunk_store *cs;
	struct chunk_loc loc[3];
	struct chunk_entry e[3];
	struct seen s = { 0 };
	uint8_t *buf = malloc(3 * bs);

	write_v1_chunk(5, bs, 3, 50, ck);
	cs = open_store(bs, 0);
	for (uint32_t i = 0; i < 3; i++)
		loc[i] = (struct chunk_loc){ .chunk_id = 5, .slot = i, .cksum = ck[i], .lblock = 77 };
	/* the index keeps no checksum (format 3): without its sidecar nothing
	 * says what the payload should be, so nothing is returned */
	assert_bad(cs, &loc[1], CHUNK_BAD_NO_SIDECAR, "v1 without a sidecar");
	cr_assert_eq(chunk_read(cs, loc, 3, buf, NULL), -EBADMSG);
	cr_assert_eq(chunk_entries_read(cs, 5, 0, 3, e), -ENODATA);
	cr_assert_eq(chunk_foreach(cs, collect, &s), 0);
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.nslots[0], 3, "version 1: slots from 4096");
	/* new appends still go to a version-2 chunk */
	struct chunk_loc n = append_one(cs, bs, 9);
	cr_assert_eq(n.chunk_id, 6);
	assert_reads(cs, bs, &n, 9);
	free(buf);
	chunk_store_close(cs);
}

Test(chunk, a_version_1_chunk_with_a_sidecar_is_verified_against_its_entries)
{
	const uint32_t bs = 4096;
	uint64_t ck[3];
	struct chunk_store *cs;
	struct chunk_loc loc[3];
	struct chunk_entry e[3];
	uint8_t hdr[4096], ent[16], *buf = malloc(3 * bs);
	char path[256];
	struct stat st;
	int fd;

	write_v1_chunk(5, bs, 3, 50, ck);
	cs = open_store(bs, 0);
	for (uint32_t i = 0; i < 3; i++)
		loc[i] = (struct chunk_loc){ .chunk_id = 5, .slot = i, .cksum = ck[i], .lblock = 10 + i };
	/* read (and cached) before its sidecar exists: nothing to verify with */
	cr_assert_eq(chunk_read(cs, loc, 3, buf, NULL), -EBADMSG);

	cr_assert_eq(chunk_sidecar_put(cs, 5, 0, 10, ck[0]), 0);
	cr_assert_eq(chunk_sidecar_put(cs, 5, 1, 11, ck[1]), 0);
	cr_assert_eq(chunk_sidecar_put(cs, 5, 1, 11, ck[1]), 0, "idempotent");
	/* slot 2 left out: as a row the index does not have */
	cr_assert_eq(chunk_sidecar_sync(cs), 0);

	side_path(path, sizeof(path), 5);
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0, "no sidecar file");
	cr_assert_eq(fstat(fd, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	cr_assert_eq(st.st_size, 4096 + 2 * 16);
	cr_assert_eq(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	cr_assert_eq(pread(fd, ent, 16, 4096 + 16), 16);
	close(fd);
	cr_assert_eq(memcmp(hdr, "VSNAPSLT", 8), 0);
	cr_assert_eq(le32(hdr + 8), 1, "version");
	cr_assert_eq(le32(hdr + 12), CHUNK_NSLOTS(bs), "nslots");
	cr_assert_eq(le64(hdr + 16), 5, "chunk_id");
	cr_assert_eq(le32(hdr + 24), 1, "flags: legacy");
	cr_assert_eq(le64(hdr + 4088), cksum_buf(hdr, 4088));
	cr_assert_eq(le64(ent), ck[1]);
	cr_assert_eq(le48(ent + 8), 11);
	cr_assert_eq(ent[14], CHUNK_KIND_DATA);

	/* the read cache forgot the chunk: reads now check the entries */
	cr_assert_eq(chunk_read(cs, loc, 2, buf, NULL), 0);
	assert_bad(cs, &loc[2], CHUNK_BAD_UNWRITTEN, "v1, slot without a sidecar entry");
	struct chunk_loc other = loc[1];
	other.lblock = 99;
	assert_bad(cs, &other, CHUNK_BAD_LBLOCK, "v1 with sidecar, wrong lblock");
	cr_assert_eq(chunk_entries_read(cs, 5, 0, 3, e), 0);
	cr_assert_eq(e[0].kind, CHUNK_KIND_DATA);
	cr_assert_eq(e[0].lblock, 10);
	cr_assert_eq(e[1].lblock, 11);
	cr_assert_eq(e[2].kind, CHUNK_KIND_NONE);
	chunk_store_close(cs);

	/* a new open finds the sidecar too; a payload bit flipped is caught */
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_read(cs, loc, 2, buf, NULL), 0);
	flip_byte(5, 4096 + 100);
	assert_bad(cs, &loc[0], CHUNK_BAD_CKSUM, "v1 with sidecar, flipped bit");

	/* puts that make no sense */
	struct chunk_loc v2 = append_one(cs, bs, 1);
	cr_assert_eq(chunk_sidecar_put(cs, v2.chunk_id, 0, 1, 0), -EINVAL, "a version-2 chunk");
	cr_assert_eq(chunk_sidecar_put(cs, 99, 0, 1, 0), -ENOENT, "no such chunk");
	cr_assert_eq(chunk_sidecar_put(cs, 5, CHUNK_NSLOTS(bs), 1, 0), -EINVAL);
	cr_assert_eq(chunk_sidecar_put(cs, 5, 0, CHUNK_LBLOCK_MAX + 1, 0), -EINVAL);

	/* removal takes the sidecar with the chunk, and what the store held of
	 * it: a put still buffered, the fd it wrote through */
	cr_assert_eq(chunk_sidecar_put(cs, 5, 2, 12, ck[2]), 0);
	cr_assert_eq(chunk_remove(cs, 5), 0);
	cr_assert_not(chunk_file_exists(5));
	cr_assert_neq(access(path, F_OK), 0, "the sidecar outlived its chunk");
	cr_assert_eq(chunk_sidecar_sync(cs), 0);
	cr_assert_eq(deleted_sidecar_fds(), 0, "an fd of the removed sidecar is still open");
	free(buf);
	chunk_store_close(cs);
}

Test(chunk, sidecar_runs_over_many_chunks_are_durable_after_sync)
{
	const uint32_t bs = 4096, nchunks = 80, per = 40;   /* more chunks than cached fds */
	uint64_t ck[40];
	struct chunk_store *cs;
	struct chunk_entry e[40];

	for (uint32_t c = 0; c < nchunks; c++)
		write_v1_chunk(100 + c, bs, per, c * 1000, ck);
	cs = open_store(bs, 0);
	/* interleaved, as a walk of the index in (node, lblock) order does */
	for (uint32_t i = 0; i < per; i++)
		for (uint32_t c = 0; c < nchunks; c++)
			cr_assert_eq(chunk_sidecar_put(cs, 100 + c, i, c * 1000 + i, i), 0);
	cr_assert_eq(chunk_sidecar_sync(cs), 0);
	chunk_store_close(cs);

	cs = open_store(bs, 0);
	for (uint32_t c = 0; c < nchunks; c++) {
		cr_assert_eq(chunk_entries_read(cs, 100 + c, 0, per, e), 0);
		for (uint32_t i = 0; i < per; i++) {
			cr_assert_eq(e[i].kind, CHUNK_KIND_DATA, "chunk %u slot %u", c, i);
			cr_assert_eq(e[i].lblock, c * 1000 + i);
			cr_assert_eq(e[i].cksum, i);
		}
	}
	chunk_store_close(cs);
}

Test(chunk, a_spare_made_from_a_version_1_chunk_becomes_a_version_2_chunk)
{
	const uint32_t bs = 4096;
	char spare_dir[256], path[256];
	uint64_t ck[4];
	struct chunk_store *cs;
	struct chunk_loc b, stale;
	uint8_t hdr[64];
	int fd;

	write_v1_chunk(3, bs, 4, 30, ck);
	cs = open_store(bs, 0);
	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 1), 0);
	cr_assert_eq(chunk_sidecar_put(cs, 3, 0, 5, ck[0]), 0);
	cr_assert_eq(chunk_sidecar_sync(cs), 0);
	cr_assert_eq(chunk_remove(cs, 3), 0);
	side_path(path, sizeof(path), 3);
	cr_assert_neq(access(path, F_OK), 0, "a spare keeps no sidecar");
	cr_assert_eq(chunk_spare_bytes(cs), 4096 + 4 * bs);
	b = append_one(cs, bs, 8);
	cr_assert_eq(chunk_spare_bytes(cs), 0, "the spare was not reused");
	chunk_path(path, sizeof(path), b.chunk_id);
	fd = open(path, O_RDONLY);
	cr_assert_eq(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	close(fd);
	cr_assert_eq(le32(hdr + 8), 2);
	assert_reads(cs, bs, &b, 8);
	/* the old file's bytes under the new table: slot 1 has an entry of
	 * zeros or a v1 payload's bytes, never a valid one */
	stale = (struct chunk_loc){ .chunk_id = b.chunk_id, .slot = 1, .lblock = 5, .cksum = ck[1] };
	cr_assert_eq(read_one(cs, &stale, &(struct chunk_bad){ 0 }), -EIO, "past the end: short");
	chunk_store_close(cs);
}

/*
 * The entry cache ("The entry cache" in src/chunk/chunk.c): a read keeps
 * the slot-table page of its entry once every entry of the page is
 * written, reads later blocks' entries from it (a zeroed entry on disk
 * then does not matter: the block still verifies against the cached
 * copy), still verifies every payload against it, and judges by the
 * file's entry when the cached one does not verify.
 */
Test(chunk, the_entry_cache_keeps_whole_table_pages_and_still_verifies_every_block)
{
	const uint32_t bs = 4096, n = 300;     /* table page 0 whole, page 1 not */
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc *locs = calloc(n, sizeof(*locs)), nl;
	uint8_t *buf = malloc(bs), ent[16] = { 0 };
	struct chunk_bad bad;

	chunk_entry_cache_limit(cs, 1 << 20);
	for (uint32_t i = 0; i < n; i++)
		locs[i] = append_one(cs, bs, 1000 + i);
	cr_assert_eq(locs[n - 1].chunk_id, locs[0].chunk_id);
	cr_assert_eq(chunk_sync(cs), 0);
	cr_assert_eq(chunk_entry_cache_bytes(cs), 0);
	assert_reads(cs, bs, &locs[260], 1000 + 260);
	cr_assert_eq(chunk_entry_cache_bytes(cs), 0, "a page with unwritten entries was kept");
	assert_reads(cs, bs, &locs[5], 1000 + 5);
	cr_assert_eq(chunk_entry_cache_bytes(cs), 4096, "the whole page was not kept");

	/* read through the cache: the zeroed entry on disk is not read */
	entry_io(locs[7].chunk_id, locs[7].slot, ent, true);
	assert_reads(cs, bs, &locs[7], 1000 + 7);
	/* but every payload is still checked */
	flip_byte(locs[9].chunk_id, CHUNK_DATA_OFF(bs) + (off_t)locs[9].slot * bs + 100);
	assert_bad(cs, &locs[9], CHUNK_BAD_CKSUM, "flipped payload, cached entry");
	/* a cached entry that does not verify: the file's entry judges */
	nl = locs[11];
	fill_block(buf, bs, 4242);
	{
		char path[256];
		int fd;

		chunk_path(path, sizeof(path), nl.chunk_id);
		fd = open(path, O_RDWR);
		cr_assert_geq(fd, 0);
		cr_assert_eq(pwrite(fd, buf, bs, CHUNK_DATA_OFF(bs) + (off_t)nl.slot * bs), (ssize_t)bs);
		close(fd);
	}
	entry_io(nl.chunk_id, nl.slot, ent, false);
	{
		uint64_t sum = cksum_seeded(buf, bs, cksum_slot_seed(nl.chunk_id, nl.slot, nl.lblock));

		for (int b = 0; b < 8; b++)
			ent[b] = (uint8_t)(sum >> (8 * b));
	}
	entry_io(nl.chunk_id, nl.slot, ent, true);
	cr_assert_eq(read_one(cs, &nl, &bad), 0, "the file's entry was not read again");
	assert_reads(cs, bs, &nl, 4242);

	chunk_store_close(cs);
	free(buf);
	free(locs);
}

/* Drop the pages of file path from the page cache.  FADV_DONTNEED skips a
 * page the kernel has not put on its LRU lists yet (a per-CPU batch of
 * another CPU), so it is asked again until mincore says the first page is
 * gone; false if it never went. */
static bool drop_cached(const char *path)
{
	long pg = sysconf(_SC_PAGESIZE);
	int fd = open(path, O_RDONLY);
	bool gone = false;
	void *map;

	cr_assert_geq(fd, 0);
	map = mmap(NULL, pg, PROT_READ, MAP_SHARED, fd, 0);
	cr_assert_neq(map, MAP_FAILED);
	for (int i = 0; i < 100 && !gone; i++) {
		unsigned char vec = 1;

		cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
		cr_assert_eq(mincore(map, pg, &vec), 0);
		gone = !(vec & 1);
		if (!gone)
			nanosleep(&(struct timespec){ .tv_nsec = 10000000 }, NULL);
	}
	munmap(map, pg);
	close(fd);
	return gone;
}

/* chunk_read_cached reads a run only from the host's page cache: -EAGAIN
 * once the chunk file's pages are dropped, the data again after a
 * chunk_read brought them back. */
Test(chunk, read_cached_says_eagain_for_a_run_not_in_the_page_cache)
{
	const uint32_t bs = 4096;
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_loc loc = append_one(cs, bs, 31);
	uint8_t *buf = malloc(bs);
	struct chunk_bad bad;
	char path[256];
	int rc = 0;

	cr_assert_eq(chunk_sync(cs), 0);
	cr_assert_eq(chunk_read_cached(cs, &loc, 1, buf, &bad), 0);
	cr_assert(block_is(buf, bs, 31));
	chunk_path(path, sizeof(path), loc.chunk_id);
	/* RWF_NOWAIT starts reading what is missing: on a fast device the
	 * page may be back before the read looks again, so a few tries, each
	 * from a dropped cache; any answer but -EAGAIN must be the block */
	for (int tries = 0; rc != -EAGAIN; tries++) {
		cr_assert_lt(tries, 5, "chunk_read_cached never said -EAGAIN");
		cr_assert(drop_cached(path), "the kernel kept the chunk file's page in its cache");
		rc = chunk_read_cached(cs, &loc, 1, buf, &bad);
		cr_assert(rc == -EAGAIN || (rc == 0 && block_is(buf, bs, 31)), "rc %d", rc);
	}
	assert_reads(cs, bs, &loc, 31);
	cr_assert_eq(chunk_read_cached(cs, &loc, 1, buf, &bad), 0);
	cr_assert(block_is(buf, bs, 31));
	free(buf);
	chunk_store_close(cs);
}

/* Append n blocks seeded seed0 + i, for volume blocks lblock0 + i, in one
 * call, from a buffer 80 bytes past an allocation (where FUSE hands a
 * write's data); their locs go to locs. */
static void append_run(struct chunk_store *cs, uint32_t bs, uint32_t n, uint64_t seed0,
		       struct chunk_loc *locs)
{
	uint8_t *raw = malloc((size_t)n * bs + 80);
	int rc;

	fill_blocks(raw + 80, bs, n, seed0);
	for (uint32_t i = 0; i < n; i++)
		locs[i] = (struct chunk_loc){ .lblock = seed0 + i };
	rc = chunk_append(cs, raw + 80, n, CHUNK_KIND_DATA, locs);
	free(raw);
	cr_assert_eq(rc, 0, "chunk_append of %u blocks: %d", n, rc);
}

static void assert_run_reads(struct chunk_store *cs, uint32_t bs, uint32_t n, uint64_t seed0,
			     const struct chunk_loc *locs)
{
	for (uint32_t i = 0; i < n; i++)
		assert_reads(cs, bs, &locs[i], seed0 + i);
}

/* Does the test directory's file system take O_DIRECT writes of whole pages
 * (tmpfs before Linux 6.6 does not), and do slots of bs fill whole pages?
 * Where not, chunk_direct_writes() must leave every write buffered. */
static bool direct_expected(uint32_t bs)
{
	long page = sysconf(_SC_PAGESIZE);
	char path[256];
	void *buf = NULL;
	bool ok;
	int fd;

	snprintf(path, sizeof(path), "%s/direct-probe", g_tmp);
	fd = open(path, O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
	if (fd < 0)
		return false;
	cr_assert_eq(posix_memalign(&buf, 4096, 4096), 0);
	memset(buf, 0, 4096);
	ok = pwrite(fd, buf, 4096, 0) == 4096;
	free(buf);
	close(fd);
	unlink(path);
	return ok && page > 0 && CHUNK_DATA_OFF(bs) % (uint64_t)page == 0 && bs % (uint64_t)page == 0;
}

Test(chunk, runs_of_at_least_direct_min_go_around_the_page_cache_and_read_back)
{
	const uint32_t bs = 4096, big = 300, small = 8;   /* 1.17 MiB: a MiB piece and a rest */
	struct chunk_loc a[300], b[8], c[300], d[300];
	struct chunk_store *cs = open_store(bs, 0);

	chunk_direct_writes(cs, 256 << 10);
	append_run(cs, bs, big, 1000, a);
	if (!direct_expected(bs)) {
		/* the host refuses: buffered, and the data is all there */
		cr_assert_eq(chunk_direct_bytes(cs), 0);
		assert_run_reads(cs, bs, big, 1000, a);
		chunk_store_close(cs);
		return;
	}
	cr_assert_eq(chunk_direct_bytes(cs), (uint64_t)big * bs);
	append_run(cs, bs, small, 2000, b);
	cr_assert_eq(chunk_direct_bytes(cs), (uint64_t)big * bs, "32 KiB stays buffered");
	cr_assert_eq(b[0].chunk_id, a[0].chunk_id);
	cr_assert_eq(b[0].slot, a[big - 1].slot + 1);
	assert_run_reads(cs, bs, big, 1000, a);
	assert_run_reads(cs, bs, small, 2000, b);

	/* a host that refuses a direct write (here the run's second piece):
	 * the rest of the run and every later one buffered, nothing lost */
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT, 1, EINVAL);
	append_run(cs, bs, big, 3000, c);
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT, 0, 0);
	cr_assert_eq(chunk_direct_bytes(cs), (uint64_t)(big + 256) * bs);
	append_run(cs, bs, big, 4000, d);
	cr_assert_eq(chunk_direct_bytes(cs), (uint64_t)(big + 256) * bs);
	assert_run_reads(cs, bs, big, 3000, c);
	assert_run_reads(cs, bs, big, 4000, d);

	cr_assert_eq(chunk_sync(cs), 0);
	chunk_store_close(cs);
	cs = open_store(bs, 0);
	assert_run_reads(cs, bs, big, 1000, a);
	assert_run_reads(cs, bs, small, 2000, b);
	assert_run_reads(cs, bs, big, 3000, c);
	assert_run_reads(cs, bs, big, 4000, d);
	chunk_store_close(cs);
}

Test(chunk, a_failed_direct_write_fails_the_append)
{
	const uint32_t bs = 4096, big = 64;
	struct chunk_store *cs = open_store(bs, 0);
	uint8_t *buf = malloc((size_t)big * bs);
	struct chunk_loc locs[64];

	chunk_direct_writes(cs, 256 << 10);
	fill_blocks(buf, bs, big, 1);
	for (uint32_t i = 0; i < big; i++)
		locs[i] = (struct chunk_loc){ .lblock = i };
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT, 0, EIO);
	if (!direct_expected(bs)) {
		/* no direct fd, so no direct write to fail: buffered */
		cr_assert_eq(chunk_append(cs, buf, big, CHUNK_KIND_DATA, locs), 0);
		cr_assert_eq(chunk_direct_bytes(cs), 0);
		assert_run_reads(cs, bs, big, 1, locs);
		free(buf);
		chunk_store_close(cs);
		return;
	}
	cr_assert_eq(chunk_append(cs, buf, big, CHUNK_KIND_DATA, locs), -EIO);
	cr_assert_eq(locs[0].chunk_id, 0, "a failed append hands out no loc");
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT, 0, 0);
	cr_assert_eq(chunk_append(cs, buf, big, CHUNK_KIND_DATA, locs), 0);
	cr_assert_eq(chunk_direct_bytes(cs), (uint64_t)big * bs, "direct again after an EIO");
	assert_run_reads(cs, bs, big, 1, locs);
	free(buf);
	chunk_store_close(cs);
}

struct fill_meanwhile {
	struct chunk_store *cs;
	uint64_t upto;                  /* fill until this chunk is active */
	int calls;
};

/* chunk_spare_prepare's stop callback: at its first MiB, fill the active
 * chunk, so that the next one is appended to a new file while the spare is
 * being written. */
static bool fill_at_first_mib(void *ctx)
{
	struct fill_meanwhile *f = ctx;

	if (f->calls++ == 0)
		fill_until(f->cs, f->upto, 7000);
	return false;
}

Test(chunk, a_chunk_appended_while_its_predecessors_spare_was_written_is_left_for_that_spare)
{
	const uint32_t bs = 64 << 10;
	char spare_dir[256];
	struct chunk_store *cs = open_store(bs, 0);
	struct fill_meanwhile f = { .cs = cs, .upto = 2 };
	struct chunk_loc b, c;

	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 2), 0);
	cr_assert_eq(append_one(cs, bs, 1).chunk_id, 1);
	cr_assert(chunk_spare_wanted(cs));
	cr_assert_eq(chunk_spare_prepare(cs, fill_at_first_mib, &f), 1);
	/* chunk 2 was appended to a new file meanwhile: left for the spare */
	b = append_one(cs, bs, 2);
	cr_assert_eq(b.chunk_id, 3, "chunk %" PRIu64 ", not 3", b.chunk_id);
	chunk_file_is(3, CHUNK_FILE_MAX_BYTES(bs));
	cr_assert_eq(count_spares(spare_dir), 0);
	cr_assert_eq(chunk_sync(cs), 0);
	assert_reads(cs, bs, &b, 2);
	chunk_store_close(cs);

	/* a removed chunk kept as a spare, while an appended chunk is
	 * active: chunk_spare_switch() leaves the active one for it */
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 2), 0);
	fill_until(cs, 5, 9000);                /* chunk 4 full: this open's first */
	cr_assert_eq(chunk_sync(cs), 0);
	cr_assert_eq(chunk_remove(cs, 4), 0);
	cr_assert_eq(count_spares(spare_dir), 1);
	chunk_spare_switch(cs);
	c = append_one(cs, bs, 3);
	cr_assert_eq(c.chunk_id, 6, "chunk %" PRIu64 ", not 6", c.chunk_id);
	chunk_file_is(6, CHUNK_FILE_MAX_BYTES(bs));
	/* chunk 6 was made from a whole spare: no switch, no spare wanted yet */
	chunk_spare_switch(cs);
	cr_assert_eq(append_one(cs, bs, 4).chunk_id, 6);
	cr_assert_not(chunk_spare_wanted(cs));
	cr_assert_eq(chunk_sync(cs), 0);
	assert_reads(cs, bs, &c, 3);
	chunk_store_close(cs);
}

Test(chunk, a_chunk_made_from_a_small_spare_wants_one_at_once_and_no_small_spare_replaces_it)
{
	const uint32_t bs = 64 << 10;
	char spare_dir[256];
	struct chunk_store *cs = open_store(bs, 0);

	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 2), 0);
	cr_assert_eq(append_one(cs, bs, 1).chunk_id, 1);
	fill_until(cs, 2, 100);
	cr_assert_eq(append_one(cs, bs, 2).chunk_id, 2);
	cr_assert_eq(chunk_sync(cs), 0);
	chunk_store_close(cs);                  /* chunk 2: a new file, two slots long */
	cs = open_store(bs, 0);
	cr_assert_eq(append_one(cs, bs, 3).chunk_id, 3);
	cr_assert_eq(chunk_sync(cs), 0);
	chunk_store_close(cs);                  /* chunk 3: one slot */
	cs = open_store(bs, 0);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 2), 0);
	cr_assert_eq(chunk_remove(cs, 2), 0);   /* a small spare */
	cr_assert_eq(count_spares(spare_dir), 1);
	cr_assert_eq(append_one(cs, bs, 4).chunk_id, 4);
	chunk_file_is(4, CHUNK_DATA_OFF(bs) + 2 * (uint64_t)bs);      /* the spare's size */
	cr_assert(chunk_spare_wanted(cs), "chunk 4 grows past its spare's end");
	/* another small spare waits: chunk 4 is not left for it */
	cr_assert_eq(chunk_remove(cs, 3), 0);
	cr_assert_eq(count_spares(spare_dir), 1);
	chunk_spare_switch(cs);
	cr_assert_eq(append_one(cs, bs, 5).chunk_id, 4);
	chunk_store_close(cs);
}

/* Pages of [off, off + len) of a file that are in the page cache (read or
 * being read). */
static size_t pages_cached(const char *path, off_t off, size_t len)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t n = len / (size_t)pg, hits = 0;
	unsigned char *vec = calloc(n, 1);
	int fd = open(path, O_RDONLY);
	void *map;

	cr_assert_not_null(vec);
	cr_assert_geq(fd, 0);
	map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, off);
	cr_assert_neq(map, MAP_FAILED);
	cr_assert_eq(mincore(map, len, vec), 0);
	for (size_t i = 0; i < n; i++)
		hits += vec[i] & 1;
	munmap(map, len);
	close(fd);
	free(vec);
	return hits;
}

/* Drop a chunk file's cached pages, read n blocks of a run one after the
 * other, and say whether the host read anything beyond them (ahead). */
static bool reads_ahead(struct chunk_store *cs, uint32_t bs, const struct chunk_loc *locs,
			uint32_t n, uint64_t seed0)
{
	const struct chunk_loc *end = &locs[n];
	char path[256];
	int fd;

	chunk_path(path, sizeof(path), locs[0].chunk_id);
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	close(fd);
	assert_run_reads(cs, bs, n, seed0, locs);
	return pages_cached(path, (off_t)(CHUNK_DATA_OFF(bs) + (uint64_t)end->slot * bs),
			    (size_t)4 * bs) > 0;
}

/* Does the test directory's file system read ahead of sequential reads,
 * and drop clean pages when asked?  (tmpfs keeps every page.) */
static bool host_reads_ahead(void)
{
	const size_t len = 4 * MiB;
	char path[256];
	char *buf = calloc(1, len);
	bool ahead;
	int fd;

	snprintf(path, sizeof(path), "%s/ra-probe", g_tmp);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pwrite(fd, buf, len, 0), (ssize_t)len);
	cr_assert_eq(fsync(fd), 0);
	cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	ahead = pages_cached(path, 0, len) == 0;
	for (size_t off = 0; ahead && off < MiB; off += 64 << 10)
		cr_assert_eq(pread(fd, buf, 64 << 10, (off_t)off), 64 << 10);
	ahead = ahead && pages_cached(path, MiB, len - MiB) > 0;
	close(fd);
	unlink(path);
	free(buf);
	return ahead;
}

static bool kernel_has_cachestat(void);

Test(chunk, a_chunk_is_read_ahead_once_sealed_never_while_a_direct_write_may_reach_it)
{
	const uint32_t bs = 64 << 10, n = 48;
	struct chunk_loc a[48];
	struct chunk_store *cs = open_store(bs, 0);
	bool host = host_reads_ahead();
	/* where the kernel cannot say what a spare keeps cached, no chunk is
	 * read ahead while direct writes are on */
	bool sealed = host && kernel_has_cachestat();

	chunk_direct_writes(cs, 256 << 10);
	append_run(cs, bs, n, 100, a);
	cr_assert_eq(a[0].chunk_id, 1);
	if (sysconf(_SC_PAGESIZE) != 4096) {
		/* no direct writes where pages are bigger (and the slots'
		 * offsets would not map): nothing to keep apart */
		assert_run_reads(cs, bs, n, 100, a);
		chunk_store_close(cs);
		return;
	}
	cr_assert_eq(chunk_sync(cs), 0);
	if (host)
		cr_assert_not(reads_ahead(cs, bs, a, 16, 100), "the active chunk was read ahead");
	/* chunk 2 active, chunk 1 full but not synced: still a writer */
	fill_until(cs, 2, 1000);
	if (host)
		cr_assert_not(reads_ahead(cs, bs, a + 16, 16, 116), "a dirty chunk was read ahead");
	/* chunk 1 sealed: synced, no append in it */
	cr_assert_eq(chunk_sync(cs), 0);
	cr_assert_eq(reads_ahead(cs, bs, a + 16, 16, 116), sealed,
		     "a sealed chunk's open read fd reads ahead");
	chunk_store_close(cs);

	/* opened sealed */
	cs = open_store(bs, 0);
	chunk_direct_writes(cs, 256 << 10);
	cr_assert_eq(reads_ahead(cs, bs, a, 16, 100), sealed, "a sealed chunk reads ahead");
	chunk_store_close(cs);

	/* direct writes off: every chunk reads ahead */
	cs = open_store(bs, 0);
	chunk_direct_writes(cs, 0);
	cr_assert_eq(reads_ahead(cs, bs, a, 16, 100), host, "no read-ahead without direct writes");
	chunk_store_close(cs);

	/* a process that did not say whether it writes directly (vsnapctl's)
	 * never reads ahead: the daemon may be writing */
	cs = open_store(bs, 0);
	if (host)
		cr_assert_not(reads_ahead(cs, bs, a, 16, 100), "vsnapctl's reader read ahead");
	assert_run_reads(cs, bs, n, 100, a);
	chunk_store_close(cs);
}

/* Can this kernel say how much of a file is cached (cachestat, Linux 6.5)? */
static bool kernel_has_cachestat(void)
{
	struct { uint64_t off, len; } range = { 0, 0 };
	uint64_t st[5];
	int fd = open(g_tmp, O_RDONLY | O_DIRECTORY);
	long rc;

	cr_assert_geq(fd, 0);
	rc = syscall(451, fd, &range, st, 0);
	close(fd);
	return rc == 0;
}

/* While a first reader of chunk 61 has let the read cache's lock go
 * (chunk_test_hook), it reads chunk 60, whose header is bad, and
 * chunks 62-100: the array of fds shifts under it (60 takes 61's place)
 * and grows (moves). */
#define RACE_CHUNKS 100
struct rfd_race {
	const struct chunk_loc *locs;   /* one block per chunk, from seed = index */
	uint32_t bs;
	int calls, bad_rc, rc;
	bool busy;
};

static void rfd_race_move(struct chunk_store *cs, enum chunk_test_point at, uint64_t id,
			  uint32_t n, void *arg)
{
	struct rfd_race *r = arg;
	void *buf;

	(void)id;
	(void)n;
	if (at != CHUNK_TEST_RFD_UNLOCKED)
		return;

	/* the first call is chunk 61's first look (not cached yet), the
	 * second its switch to read-ahead, with its entry found */
	if (++r->calls != 2)
		return;         /* and the reads below pass here too */
	r->busy = true;
	buf = malloc(r->bs);
	cr_assert_not_null(buf);
	r->bad_rc = chunk_read(cs, &r->locs[59], 1, buf, NULL);
	for (uint32_t i = 61; i < RACE_CHUNKS && r->rc == 0; i++)
		r->rc = chunk_read(cs, &r->locs[i], 1, buf, NULL);
	free(buf);
}

Test(chunk, a_first_read_survives_the_read_cache_moving_while_it_does_not_hold_the_lock)
{
	const uint32_t bs = 4096;
	struct chunk_loc locs[RACE_CHUNKS];
	struct rfd_race r = { .locs = locs, .bs = bs };
	struct chunk_store *cs;
	/* the window is the switch of a sealed chunk to read-ahead, which
	 * needs cachestat (Linux 6.5) and direct writes (4 KiB pages);
	 * without them there is none to cross */
	bool window = kernel_has_cachestat() && sysconf(_SC_PAGESIZE) == 4096;

	/* a chunk per store opened: one block each, all sealed below */
	for (uint32_t i = 0; i < RACE_CHUNKS; i++) {
		cs = open_store(bs, 0);
		locs[i] = append_one(cs, bs, i);
		cr_assert_eq(locs[i].chunk_id, i + 1);
		cr_assert_eq(chunk_sync(cs), 0);
		chunk_store_close(cs);
	}
	flip_byte(60, 0);               /* chunk 60's header */
	cs = open_store(bs, 0);
	chunk_direct_writes(cs, 256 << 10);
	for (uint32_t i = 0; i < 59; i++)
		assert_reads(cs, bs, &locs[i], i);
	chunk_test_hook(cs, rfd_race_move, &r);
	assert_reads(cs, bs, &locs[60], 60);
	chunk_test_hook(cs, NULL, NULL);
	if (window)
		cr_assert(r.busy, "the window was crossed (%d calls)", r.calls);
	if (r.busy) {
		cr_assert_eq(r.bad_rc, -EIO, "chunk 60's bad header: %d", r.bad_rc);
		cr_assert_eq(r.rc, 0, "a read inside the window: %d", r.rc);
	}
	for (uint32_t i = 0; i < RACE_CHUNKS; i++)
		if (i != 59)
			assert_reads(cs, bs, &locs[i], i);
	chunk_store_close(cs);
}

/* Remove chunk id (sealed), kept as the only spare; its path. */
static void remove_into_spare(struct chunk_store *cs, uint64_t id, const char *spare_dir,
			      char *path, size_t len)
{
	cr_assert_eq(chunk_remove(cs, id), 0);
	cr_assert_eq(count_spares(spare_dir), 1);
	for (uint64_t seq = 1; seq < 64; seq++) {
		snprintf(path, len, "%s/%016" PRIx64 ".spare", spare_dir, seq);
		if (access(path, F_OK) == 0)
			return;
	}
	cr_assert_fail("no spare file");
}

Test(chunk, a_spare_whose_pages_cannot_be_dropped_becomes_a_chunk_written_through_the_page_cache)
{
	const uint32_t bs = 64 << 10, n = 16;
	long page = sysconf(_SC_PAGESIZE);
	char spare_dir[256], path[512];
	struct chunk_loc a[16], b[16];
	struct chunk_store *cs = open_store(bs, 0);
	uint64_t direct;
	void *map;
	int fd;

	if (!direct_expected(bs)) {
		chunk_store_close(cs);
		return;                 /* no direct writes here: nothing to guard */
	}
	snprintf(spare_dir, sizeof(spare_dir), "%s/spare", g_tmp);
	cr_assert_eq(chunk_spares_enable(cs, spare_dir, 1), 0);
	chunk_direct_writes(cs, 256 << 10);
	fill_until(cs, 2, 100);
	cr_assert_eq(chunk_sync(cs), 0);

	/* a page of the spare mapped by another reader: no drop can take it */
	remove_into_spare(cs, 1, spare_dir, path, sizeof(path));
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	map = mmap(NULL, (size_t)page, PROT_READ, MAP_SHARED, fd, (off_t)CHUNK_DATA_OFF(bs));
	cr_assert_neq(map, MAP_FAILED);
	(void)*(volatile uint8_t *)map;         /* faulted in: cached and mapped */
	fill_until(cs, 3, 2000);                /* chunk 3: the spare */
	direct = chunk_direct_bytes(cs);
	append_run(cs, bs, n, 3000, a);
	cr_assert_eq(a[0].chunk_id, 3);
	if (kernel_has_cachestat())
		cr_assert_eq(chunk_direct_bytes(cs), direct, "a run went directly into a chunk "
			     "whose file has cached pages");
	munmap(map, (size_t)page);
	close(fd);
	assert_run_reads(cs, bs, n, 3000, a);

	/* nothing mapped: the next spare's chunk takes direct writes */
	cr_assert_eq(chunk_sync(cs), 0);
	remove_into_spare(cs, 2, spare_dir, path, sizeof(path));
	fill_until(cs, 4, 4000);
	direct = chunk_direct_bytes(cs);
	append_run(cs, bs, n, 5000, b);
	cr_assert_eq(b[0].chunk_id, 4);
	cr_assert_eq(chunk_direct_bytes(cs), direct + (uint64_t)n * bs);
	/* a direct write that met a folio of the zeroed table (buffered)
	 * would fail the sync: the kernel could not drop that folio */
	cr_assert_eq(chunk_sync(cs), 0);
	assert_run_reads(cs, bs, n, 5000, b);
	assert_run_reads(cs, bs, n, 3000, a);
	chunk_store_close(cs);
}

/* Read n blocks of a run from locs into buf (any alignment) and check them. */
static void assert_run_into(struct chunk_store *cs, uint32_t bs, uint32_t n, uint64_t seed0,
			    const struct chunk_loc *locs, uint8_t *buf)
{
	cr_assert_eq(chunk_read(cs, locs, n, buf, NULL), 0);
	for (uint32_t i = 0; i < n; i++)
		cr_assert(block_is(buf + (size_t)i * bs, bs, seed0 + i), "block %u", i);
}

Test(chunk, direct_reads_go_around_the_page_cache_and_still_verify_every_block)
{
	const uint32_t bs = 4096, n = 64;
	struct chunk_loc a[64];
	struct chunk_store *cs = open_store(bs, 0);
	struct chunk_bad bad;
	uint8_t *buf = NULL;
	off_t data;
	char path[256];
	bool direct = direct_expected(bs);      /* the host takes O_DIRECT */
	bool seen;              /* can the test see what is cached? */
	int fd;

	chunk_direct_reads(cs);
	append_run(cs, bs, n, 500, a);          /* buffered: no direct writes asked */
	cr_assert_eq(chunk_sync(cs), 0);
	chunk_path(path, sizeof(path), a[0].chunk_id);
	data = (off_t)(CHUNK_DATA_OFF(bs) + (uint64_t)a[0].slot * bs);
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	close(fd);
	/* pages over 4 KiB do not map the slots' offsets; tmpfs keeps its
	 * pages; a host without O_DIRECT reads through the cache */
	seen = sysconf(_SC_PAGESIZE) == 4096 && direct &&
	       pages_cached(path, data, (size_t)n * bs) == 0;
	cr_assert_eq(posix_memalign((void **)&buf, 4096, (size_t)(n + 1) * bs), 0);

	/* an aligned buffer: read directly, nothing left in the page cache */
	assert_run_into(cs, bs, n, 500, a, buf);
	if (seen)
		cr_assert_eq(pages_cached(path, data, (size_t)n * bs), 0,
			     "a direct read left pages in the page cache");
	/* an unaligned one: through the page cache, as before */
	assert_run_into(cs, bs, n, 500, a, buf + 512);
	if (seen)
		cr_assert_gt(pages_cached(path, data, (size_t)n * bs), 0);

	/* a failed direct read fails the read */
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT_READ, 0, EIO);
	cr_assert_eq(chunk_read(cs, a, n, buf, NULL), direct ? -EIO : 0);
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT_READ, 0, 0);

	/* a damaged block is still found (the flip is a buffered write: the
	 * kernel writes it back before reading the range directly) */
	flip_byte(a[0].chunk_id, data + 20 * bs + 100);
	cr_assert_eq(chunk_read(cs, a, n, buf, &bad), -EBADMSG);
	cr_assert_eq(bad.index, 20);
	flip_byte(a[0].chunk_id, data + 20 * bs + 100);

	/* a chunk cut short in the middle of the run: the direct read is
	 * short, the rest (nothing) is read through the cache: -EIO */
	cr_assert_eq(truncate(path, data + 40 * (off_t)bs), 0);
	cr_assert_eq(chunk_read(cs, a, n, buf, NULL), -EIO);
	assert_run_into(cs, bs, 40, 500, a, buf);

	/* a host that refuses a direct read: buffered from then on, with the
	 * data all there */
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT_READ, 0, EINVAL);
	assert_run_into(cs, bs, 40, 500, a, buf);
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT_READ, 0, EIO);
	assert_run_into(cs, bs, 40, 500, a, buf);
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT_READ, 0, 0);
	free(buf);
	chunk_store_close(cs);
}

/* ---- write-behind --------------------------------------------------------- */

struct wb_call {                        /* a call that may wait for the ring, in a thread */
	struct chunk_store *cs;
	enum { WB_READ, WB_SYNC, WB_APPEND, WB_ENTRIES, WB_CLOSE } op;
	struct chunk_loc *locs;
	uint32_t n, bs;
	uint64_t seed0;
	int rc;
	atomic_bool done;
};

static void *wb_call_main(void *arg)
{
	struct wb_call *c = arg;
	uint8_t *buf = malloc((size_t)c->n * c->bs);

	if (c->op == WB_READ) {
		c->rc = chunk_read(c->cs, c->locs, c->n, buf, NULL);
		for (uint32_t i = 0; c->rc == 0 && i < c->n; i++)
			if (!block_is(buf + (size_t)i * c->bs, c->bs, c->seed0 + i))
				c->rc = 1;      /* not the bytes written */
	} else if (c->op == WB_SYNC) {
		c->rc = chunk_sync(c->cs);
	} else if (c->op == WB_ENTRIES) {
		struct chunk_entry *e = calloc(c->n, sizeof(*e));

		c->rc = chunk_entries_read(c->cs, c->locs[0].chunk_id, c->locs[0].slot, c->n, e);
		for (uint32_t i = 0; c->rc == 0 && i < c->n; i++)
			if (e[i].kind != CHUNK_KIND_DATA || e[i].cksum != c->locs[i].cksum)
				c->rc = 1;      /* not the entry written */
		free(e);
	} else if (c->op == WB_CLOSE) {
		chunk_store_close(c->cs);
		c->rc = 0;
	} else {
		fill_blocks(buf, c->bs, c->n, c->seed0);
		for (uint32_t i = 0; i < c->n; i++)
			c->locs[i] = (struct chunk_loc){ .lblock = c->seed0 + i };
		c->rc = chunk_append(c->cs, buf, c->n, CHUNK_KIND_DATA, c->locs);
	}
	free(buf);
	atomic_store(&c->done, true);
	return NULL;
}

/* Start c in a thread; after 100 ms it must still be waiting. */
static pthread_t wb_call_blocked(struct wb_call *c, const char *what)
{
	pthread_t t;

	atomic_init(&c->done, false);
	cr_assert_eq(pthread_create(&t, NULL, wb_call_main, c), 0);
	usleep(100 * 1000);
	cr_assert(!atomic_load(&c->done), "%s returned while the job was held", what);
	return t;
}

Test(chunk, write_behind_returns_first_and_reads_and_syncs_wait_for_the_job)
{
	const uint32_t bs = 4096, big = 300;     /* a MiB piece and a 176 KiB one */
	struct chunk_loc a[300], r[300], z[8], c[512];
	struct chunk_store *cs = open_store(bs, 0);
	uint8_t *buf = malloc((size_t)big * bs);
	struct wb_call rd = { .cs = cs, .op = WB_READ, .locs = a, .n = big, .bs = bs, .seed0 = 1000 };
	struct wb_call en = { .cs = cs, .op = WB_ENTRIES, .locs = a, .n = big, .bs = bs };
	struct wb_call sy = { .cs = cs, .op = WB_SYNC };
	pthread_t trd, ten, tsy;

	chunk_direct_writes(cs, 256 << 10);
	cr_assert_eq(chunk_write_behind(cs, 4 << 20), 0);
	if (!direct_expected(bs)) {
		append_run(cs, bs, big, 1000, a);       /* buffered, and all there */
		assert_run_reads(cs, bs, big, 1000, a);
		free(buf);
		chunk_store_close(cs);
		return;
	}
	cr_assert_eq(chunk_write_behind(cs, 4 << 20), -EBUSY);
	chunk_fault_set(cs, CHUNK_FAULT_WB_HOLD, 0, EAGAIN);
	append_run(cs, bs, big, 1000, a);
	cr_assert_eq(chunk_direct_bytes(cs), 0, "the append returned before its write");
	cr_assert_eq(chunk_write_behind_pending(cs), 2u << 20, "two pieces queued");
	/* 32 KiB after them, buffered: the file now holds the held slots
	 * (zeros), so a read that did not wait would find them */
	append_run(cs, bs, 8, 3000, z);
	cr_assert_eq(z[0].chunk_id, a[big - 1].chunk_id);
	cr_assert_eq(z[0].slot, a[big - 1].slot + 1);
	cr_assert_eq(chunk_read_cached(cs, a, big, buf, NULL), -EAGAIN,
		     "a read that may not wait misses");
	cr_assert_eq(chunk_read_cached(cs, &a[big - 1], 1, buf, NULL), -EAGAIN,
		     "the second piece is queued too");
	trd = wb_call_blocked(&rd, "a read of its slots");
	ten = wb_call_blocked(&en, "a read of its entries");
	tsy = wb_call_blocked(&sy, "chunk_sync");

	/* GC's moves are not written behind: they must be able to fail */
	for (uint32_t i = 0; i < 64; i++)
		r[i] = (struct chunk_loc){ .lblock = 5000 + i };
	fill_blocks(buf, bs, 64, 5000);
	cr_assert_eq(chunk_append(cs, buf, 64, CHUNK_KIND_RELOC, r), 0);
	cr_assert_eq(chunk_direct_bytes(cs), 64u * bs, "a RELOC run is written at once");

	chunk_fault_set(cs, CHUNK_FAULT_WB_HOLD, 0, 0);
	pthread_join(trd, NULL);
	pthread_join(ten, NULL);
	pthread_join(tsy, NULL);
	cr_assert_eq(rd.rc, 0, "the read after the job: %d", rd.rc);
	cr_assert_eq(en.rc, 0, "the entries after the job: %d", en.rc);
	cr_assert_eq(sy.rc, 0);
	cr_assert_eq(chunk_write_behind_pending(cs), 0);
	assert_run_reads(cs, bs, 8, 3000, z);
	cr_assert_eq(chunk_direct_bytes(cs), (uint64_t)(big + 64) * bs);
	cr_assert_eq(chunk_read_cached(cs, a, 1, buf, NULL) == -EAGAIN, false);

	/* a close writes what is queued: two pieces, one held, one behind it */
	chunk_fault_set(cs, CHUNK_FAULT_WB_HOLD, 0, EAGAIN);
	append_run(cs, bs, 512, 20000, c);
	{
		struct wb_call cl = { .cs = cs, .op = WB_CLOSE };
		pthread_t t = wb_call_blocked(&cl, "chunk_store_close");

		chunk_fault_set(cs, CHUNK_FAULT_WB_HOLD, 0, 0);
		pthread_join(t, NULL);
	}

	cs = open_store(bs, 0);
	assert_run_reads(cs, bs, big, 1000, a);
	assert_run_reads(cs, bs, 512, 20000, c);
	chunk_store_close(cs);
	free(buf);
}

Test(chunk, a_full_write_behind_ring_holds_the_append_back)
{
	const uint32_t bs = 4096, big = 512;     /* two pieces, a ring of one */
	struct chunk_loc a[512];
	struct chunk_store *cs = open_store(bs, 0);
	struct wb_call ap = { .cs = cs, .op = WB_APPEND, .locs = a, .n = big, .bs = bs, .seed0 = 7 };
	pthread_t t;

	chunk_direct_writes(cs, 256 << 10);
	cr_assert_eq(chunk_write_behind(cs, 1), 0);
	if (!direct_expected(bs)) {
		chunk_store_close(cs);
		return;
	}
	chunk_fault_set(cs, CHUNK_FAULT_WB_HOLD, 0, EAGAIN);
	t = wb_call_blocked(&ap, "an append of two pieces into a ring of one");
	chunk_fault_set(cs, CHUNK_FAULT_WB_HOLD, 0, 0);
	pthread_join(t, NULL);
	cr_assert_eq(ap.rc, 0);
	cr_assert_eq(chunk_sync(cs), 0);
	cr_assert_eq(chunk_direct_bytes(cs), (uint64_t)big * bs);
	assert_run_reads(cs, bs, big, 7, a);
	chunk_store_close(cs);
}

Test(chunk, a_failed_write_behind_fails_the_next_sync_and_its_blocks_read_eio)
{
	const uint32_t bs = 4096, big = 64;
	struct chunk_loc a[64], b[64];
	struct chunk_store *cs = open_store(bs, 0);
	uint8_t *buf = malloc((size_t)big * bs);
	int rc;

	chunk_direct_writes(cs, 256 << 10);
	cr_assert_eq(chunk_write_behind(cs, 4 << 20), 0);
	if (!direct_expected(bs)) {
		free(buf);
		chunk_store_close(cs);
		return;
	}
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT, 0, EIO);
	append_run(cs, bs, big, 100, a);        /* returns: the write is behind */
	cr_assert_eq(chunk_sync(cs), -EIO);
	chunk_fault_set(cs, CHUNK_FAULT_DIRECT, 0, 0);
	cr_assert(chunk_poisoned(cs), "a lost write that had returned poisons the store");
	cr_assert_eq(chunk_sync(cs), -EIO);
	for (uint32_t i = 0; i < big; i++)
		b[i] = (struct chunk_loc){ .lblock = 100 + i };
	fill_blocks(buf, bs, big, 100);
	cr_assert_eq(chunk_append(cs, buf, big, CHUNK_KIND_DATA, b), -EIO);
	for (uint32_t i = 0; i < big; i++) {
		rc = chunk_read(cs, &a[i], 1, buf, NULL);
		cr_assert(rc == -EIO || rc == -EBADMSG, "block %u of the lost write: %d", i, rc);
	}
	free(buf);
	chunk_store_close(cs);
}
