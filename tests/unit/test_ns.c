/*
 * ns: the namespace layer driven through vsnapfs/ns.h on a temporary store,
 * without FUSE: what the FUSE front end (src/fs) asks of it, call by call.
 *
 * Each test states one behaviour of the SPEC: volumes, snapshots of a file
 * and of a directory, linked clones and reverts through ns_copy_range (what
 * copy_file_range maps to), unlink and rename of open volumes, flush and
 * garbage collection, a failed sync, close and reopen, and a crash (a child
 * process that exits without closing the store).  The model test at the end
 * runs thousands of random operations on the real namespace and on a plain
 * in-memory tree of byte arrays, and compares contents, sizes and listings.
 *
 * The background thread is not started (ns_start) except where a test says
 * so: flushes, reaps and GC passes run when a test calls them, so that what
 * a test checks does not depend on timing.  Nothing but ns_start needs it:
 * without it, unlinked volumes and released map nodes wait for the next
 * reap pass (or ns_close), and clean volumes stay cached until close.
 *
 * Store directories go under $TMPDIR (or /tmp).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vsnapfs/ns.h"
#include "vsnapfs/chunk.h"
#include "vsnapfs/log.h"
#include "vsnapfs/wal.h"
#include "../tools/rng.h"

/*
 * ---- the private calls -----------------------------------------------------
 *
 * src/ns is being reorganised; every call this file makes past ns.h is in
 * these functions, so a rename there is a change of one line here.
 */
#include "ns/ns_int.h"

/* What the background thread does each tick: flush every volume... */
static int test_flush(struct ns *ns)
{
	return ns_flush(ns);
}

/* ...bring the index up to the log (a logged batch holds its volume until
 * then), delete unlinked volumes nothing has open and release map nodes... */
static int test_reap(struct ns *ns)
{
	int rc = ns_checkpoint(ns);

	return rc ? rc : ns_reap_all(ns);
}

/* ...and now and then one garbage-collection pass: >= 0 or -errno (the
 * background thread's alone: only where it is not running); *st, if not
 * NULL, says what it did. */
static int test_gc_pass_stats(struct ns *ns, struct ns_gc_stats *st)
{
	struct ns_gc_stats mine;

	return ns_gc(ns, st ? st : &mine);
}

static int test_gc_pass(struct ns *ns)
{
	return test_gc_pass_stats(ns, NULL);
}

/* Have the next GC passes call fn(ctx) between their copies and their
 * repoint (NULL: no more). */
static void test_gc_hook(struct ns *ns, void (*fn)(void *ctx), void *ctx)
{
	ns->gc_copied = fn;
	ns->gc_copied_ctx = ctx;
}

/* Wait (10 s at most) for a flush that began after this call to finish, as
 * the background thread runs them: 0, its error, or -ETIMEDOUT. */
static int test_wait_background_flush(struct ns *ns)
{
	uint64_t target;
	int rc = -ETIMEDOUT;

	lock_mutex_lock(&ns->seq_mu);
	target = ns->flush_started + 1;
	lock_mutex_unlock(&ns->seq_mu);
	for (int ms = 0; ms < 10000 && rc == -ETIMEDOUT; ms += 5) {
		lock_mutex_lock(&ns->seq_mu);
		if (ns->flush_done >= target)
			rc = ns->flush_rc;
		lock_mutex_unlock(&ns->seq_mu);
		if (rc == -ETIMEDOUT)
			usleep(5000);
	}
	return rc;
}

/* The index connection, for fault injection. */
static struct bmap *test_bm(struct ns *ns)
{
	return ns->bm;
}

/* The chunk store under the namespace, for fault injection. */
static struct chunk_store *test_cs(struct ns *ns)
{
	return ns->cs;
}

/* Changes in flight that GC's barrier waits for (ns_change_begin). */
static int test_changes_in_flight(struct ns *ns)
{
	return atomic_load(&ns->inflight[0]) + atomic_load(&ns->inflight[1]);
}

/* ---- the store ---------------------------------------------------------------- */

static char g_tmp[256];
static char g_store[300];               /* the store: g_tmp/store */
static struct ns *g_ns;
static struct ns_opts g_opts;

static void open_store(void)
{
	char msg[512];
	bool created;
	int rc = ns_open(g_store, &g_opts, &g_ns, &created, msg, sizeof(msg));

	cr_assert_eq(rc, 0, "ns_open %s: %d (%s)", g_store, rc, msg);
}

static void close_store(void)
{
	int rc = ns_close(g_ns);

	g_ns = NULL;
	cr_assert_eq(rc, 0, "ns_close: %d", rc);
}

static void setup_bs(uint32_t bs)
{
	const char *t = getenv("TMPDIR");

	snprintf(g_tmp, sizeof(g_tmp), "%s/vsnap-ns-XXXXXX", t && *t ? t : "/tmp");
	cr_assert_not_null(mkdtemp(g_tmp));
	snprintf(g_store, sizeof(g_store), "%s/store", g_tmp);
	g_opts = (struct ns_opts){ .block_size = bs };
	/* the whole suite with a small map cache: VSNAPFS_TEST_MAP_CACHE=16384 */
	if ((t = getenv("VSNAPFS_TEST_MAP_CACHE")) && *t)
		g_opts.map_cache_bytes = strtoull(t, NULL, 0);
	open_store();
}

/* Remove the store directory (closed): the next open makes a new one. */
static int unlink_tree_store(void);

static void setup(void) { setup_bs(4096); }

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int unlink_tree_store(void)
{
	return nftw(g_store, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void teardown(void)
{
	if (g_ns)
		ns_close(g_ns);
	g_ns = NULL;
	nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * No .timeout: Criterion 2.4.1's watchdog (BoxFort's timeout-posix.c) then
 * leaks a 48-byte timeout request when a long test runs beside short ones
 * (--jobs 2), and LeakSanitizer fails make asan for it.
 */
TestSuite(ns, .init = setup, .fini = teardown);

/* ---- helpers: one assertion per namespace call ------------------------------------ */

/* len bytes that depend on seed and on the byte's offset in the volume, so
 * that data read from the wrong place or the wrong version shows. */
static void fill(void *buf, size_t len, uint64_t off, uint64_t seed)
{
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)mix(seed * 0x100000001b3ull + off + i);
}

static uint8_t *pattern(size_t len, uint64_t off, uint64_t seed)
{
	uint8_t *p = malloc(len ? len : 1);

	cr_assert_not_null(p);
	fill(p, len, off, seed);
	return p;
}

static uint64_t lookup(uint64_t dir, const char *name)
{
	struct ns_attr a;
	int rc = ns_lookup(g_ns, dir, name, &a);

	cr_assert_eq(rc, 0, "lookup %s in %" PRIx64 ": %d", name, dir, rc);
	return a.ino;
}

static int lookup_rc(uint64_t dir, const char *name)
{
	struct ns_attr a;

	return ns_lookup(g_ns, dir, name, &a);
}

/* Inode of a path from the root ("d/.snapshots/s1/disk.img"). */
static uint64_t path_ino(const char *path)
{
	char *copy = strdup(path), *save = NULL;
	uint64_t ino = NS_ROOT_INO;

	for (char *c = strtok_r(copy, "/", &save); c; c = strtok_r(NULL, "/", &save))
		ino = lookup(ino, c);
	free(copy);
	return ino;
}

static uint64_t make_dir(uint64_t dir, const char *name)
{
	struct ns_attr a;
	int rc = ns_mkdir(g_ns, dir, name, 0755, 0, 0, &a);

	cr_assert_eq(rc, 0, "mkdir %s: %d", name, rc);
	cr_assert(S_ISDIR(a.mode));
	return a.ino;
}

static uint64_t make_vol(uint64_t dir, const char *name)
{
	struct ns_attr a;
	int rc = ns_create(g_ns, dir, name, 0644, 0, 0, &a);

	cr_assert_eq(rc, 0, "create %s: %d", name, rc);
	cr_assert(S_ISREG(a.mode));
	cr_assert_eq(a.size, 0);
	return a.ino;
}

static struct ns_file *open_file(uint64_t ino, int flags)
{
	struct ns_file *f = NULL;
	int rc = ns_open_file(g_ns, ino, flags, &f);

	cr_assert_eq(rc, 0, "open %" PRIx64 ": %d", ino, rc);
	cr_assert_not_null(f);
	return f;
}

static void put(struct ns_file *f, const void *buf, size_t len, uint64_t off)
{
	ssize_t n = ns_write(g_ns, f, buf, len, off);

	cr_assert_eq(n, (ssize_t)len, "write %zu at %" PRIu64 ": %zd", len, off, n);
}

/* Write pattern(seed) over [off, off + len). */
static void put_pattern(struct ns_file *f, size_t len, uint64_t off, uint64_t seed)
{
	uint8_t *p = pattern(len, off, seed);

	put(f, p, len, off);
	free(p);
}

/* Read [off, off + len) and compare with want (NULL: zeros). */
static void expect(struct ns_file *f, const void *want, size_t len, uint64_t off, const char *what)
{
	uint8_t *buf = malloc(len ? len : 1);
	ssize_t n;

	cr_assert_not_null(buf);
	n = ns_read(g_ns, f, buf, len, off);
	cr_assert_eq(n, (ssize_t)len, "%s: read %zu at %" PRIu64 ": %zd", what, len, off, n);
	for (size_t i = 0; i < len; i++) {
		uint8_t w = want ? ((const uint8_t *)want)[i] : 0;

		if (buf[i] != w)
			cr_assert_fail("%s: byte %" PRIu64 " is %u, want %u", what, off + i, buf[i], w);
	}
	free(buf);
}

static void expect_pattern(struct ns_file *f, size_t len, uint64_t off, uint64_t seed,
			   const char *what)
{
	uint8_t *p = pattern(len, off, seed);

	expect(f, p, len, off, what);
	free(p);
}

static uint64_t size_of(uint64_t ino)
{
	struct ns_attr a;
	int rc = ns_getattr(g_ns, ino, &a);

	cr_assert_eq(rc, 0, "getattr %" PRIx64 ": %d", ino, rc);
	return a.size;
}

/* Take snapshot name of dir (mkdir dir/.snapshots/name); its root's inode. */
static uint64_t snap_take(uint64_t dir, const char *name)
{
	struct ns_attr a;
	int rc = ns_mkdir(g_ns, lookup(dir, ".snapshots"), name, 0755, 0, 0, &a);

	cr_assert_eq(rc, 0, "snapshot %s: %d", name, rc);
	cr_assert(S_ISDIR(a.mode));
	return a.ino;
}

/* Close and open the store again, then the first len bytes of the file at
 * path must be put_pattern(seed)'s. */
static void expect_after_reopen(const char *path, size_t len, uint64_t seed, const char *what)
{
	struct ns_file *f;

	close_store();
	open_store();
	f = open_file(path_ino(path), O_RDONLY);
	expect_pattern(f, len, 0, seed, what);
	ns_release(g_ns, f);
}

/* Copy all of src to a blank dst the way cp does (copy_file_range until
 * done); returns the bytes copied. */
static uint64_t copy_all(struct ns_file *src, uint64_t src_size, struct ns_file *dst)
{
	uint64_t done = 0;

	while (done < src_size) {
		ssize_t n = ns_copy_range(g_ns, src, done, dst, done, src_size - done);

		cr_assert_gt(n, 0, "copy_range at %" PRIu64 ": %zd", done, n);
		done += n;
	}
	return done;
}

struct names {
	char buf[4096];
	size_t len;
};

static int names_add(void *ctx, const char *name, const struct ns_attr *attr, uint64_t cookie)
{
	struct names *l = ctx;

	if (strcmp(name, ".") && strcmp(name, ".."))
		l->len += snprintf(l->buf + l->len, sizeof(l->buf) - l->len, "%s%s",
				   l->len ? " " : "", name);
	cr_assert_lt(l->len, sizeof(l->buf) - 1);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in dir but "." and "..", sorted, separated by one space. */
static char *listing(uint64_t dir)
{
	struct names l = { .len = 0 };
	char *v[256], *save = NULL, *out;
	size_t n = 0, len = 0;
	int rc = ns_readdir(g_ns, dir, 0, names_add, &l);

	cr_assert_eq(rc, 0, "readdir %" PRIx64 ": %d", dir, rc);
	for (char *c = strtok_r(l.buf, " ", &save); c && n < 256; c = strtok_r(NULL, " ", &save))
		v[n++] = c;
	qsort(v, n, sizeof(v[0]), cmp_str);
	out = calloc(1, sizeof(l.buf));
	for (size_t i = 0; i < n; i++)
		len += snprintf(out + len, sizeof(l.buf) - len, "%s%s", i ? " " : "", v[i]);
	return out;
}

static void expect_listing(uint64_t dir, const char *want)
{
	char *got = listing(dir);

	cr_assert_str_eq(got, want, "listing of %" PRIx64 ": \"%s\", want \"%s\"", dir, got, want);
	free(got);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The chunk files: their ids in order into ids (up to max; NULL for none),
 * their bytes in total into *bytes.  The bytes are what data writes add
 * to, as long as no chunk file is made from a spare (see chunk.h), that is,
 * until a GC pass removes one.  Returns how many there are.
 */
static size_t chunk_files(uint64_t *ids, size_t max, uint64_t *bytes)
{
	char path[600];
	struct dirent *de;
	size_t n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/chunks", g_store);
	d = opendir(path);
	cr_assert_not_null(d, "%s: %s", path, strerror(errno));
	if (bytes)
		*bytes = 0;
	while ((de = readdir(d))) {
		uint64_t id;
		struct stat st;
		char end[8];

		if (sscanf(de->d_name, "%16" SCNx64 "%7s", &id, end) != 2 || strcmp(end, ".chunk"))
			continue;
		if (ids && n < max)
			ids[n] = id;
		n++;
		if (bytes && fstatat(dirfd(d), de->d_name, &st, 0) == 0)
			*bytes += st.st_size;
	}
	closedir(d);
	if (ids)
		qsort(ids, n < max ? n : max, sizeof(ids[0]), cmp_u64);
	return n;
}

static uint64_t chunk_bytes(void)
{
	uint64_t bytes;

	chunk_files(NULL, 0, &bytes);
	return bytes;
}

/* Is there a chunk file named id? */
static bool chunk_exists(uint64_t id)
{
	char path[600];

	snprintf(path, sizeof(path), "%s/chunks/%016" PRIx64 ".chunk", g_store, id);
	return access(path, F_OK) == 0;
}

/*
 * Run fn in a child process that ends with _exit(0) without closing the
 * store, as a daemon killed with SIGKILL would: nothing at exit flushes.
 * The parent's store must be closed.  The child checks with child_check(),
 * never with a Criterion assertion: one failing there unwinds into the
 * test runner's code in the wrong process, and the run hangs.
 */
static void in_crashing_child(void (*fn)(void))
{
	pid_t pid;
	int st;

	cr_assert_null(g_ns);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char msg[512];
		bool created;

		if (ns_open(g_store, &g_opts, &g_ns, &created, msg, sizeof(msg))) {
			fprintf(stderr, "test_ns child: ns_open: %s\n", msg);
			_exit(1);
		}
		fn();
		_exit(0);
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child failed: status %d", st);
}

static void child_check(long rc, long want, const char *what)
{
	if (rc != want) {
		fprintf(stderr, "test_ns child: %s: %ld, want %ld\n", what, rc, want);
		_exit(1);
	}
}

/* In the child: create a volume in the root and open it. */
static struct ns_file *child_volume(const char *name)
{
	struct ns_file *f = NULL;
	struct ns_attr a;

	child_check(ns_create(g_ns, NS_ROOT_INO, name, 0644, 0, 0, &a), 0, "create");
	child_check(ns_open_file(g_ns, a.ino, O_RDWR, &f), 0, "open");
	return f;
}

/* In the child: put_pattern(). */
static void child_write(struct ns_file *f, size_t len, uint64_t off, uint64_t seed)
{
	uint8_t *p = malloc(len);

	child_check(p != NULL, 1, "malloc");
	fill(p, len, off, seed);
	child_check(ns_write(g_ns, f, p, len, off), len, "write");
	free(p);
}

/* ---- volumes ------------------------------------------------------------------------ */

Test(ns, created_volume_reads_back_unaligned_writes_with_zeros_between)
{
	uint64_t d = make_dir(NS_ROOT_INO, "vm");
	uint64_t ino = make_vol(d, "disk.img");
	struct ns_file *f = open_file(ino, O_RDWR);

	put_pattern(f, 5000, 100, 1);           /* crosses a block boundary */
	put_pattern(f, 3, 20000, 2);            /* past the end: grows it */
	put_pattern(f, 4096, 8192, 3);          /* one whole block */
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	expect(f, NULL, 100, 0, "before the first write");
	expect_pattern(f, 5000, 100, 1, "first write");
	expect(f, NULL, 8192 - 5100, 5100, "hole after it");
	expect_pattern(f, 4096, 8192, 3, "whole block");
	expect(f, NULL, 20000 - 12288, 12288, "hole before the last write");
	expect_pattern(f, 3, 20000, 2, "last write");
	cr_assert_eq(ns_read(g_ns, f, (char[8]){ 0 }, 8, 20003), 0, "a read at the end is empty");
	cr_assert_eq(size_of(ino), 20003);
	cr_assert_eq(lookup(d, "disk.img"), ino);
	expect_listing(d, ".snapshots disk.img");
	expect_listing(NS_ROOT_INO, ".snapshots vm");
	ns_release(g_ns, f);
}

Test(ns, holes_punched_and_truncates_read_as_zeros_and_seek_skips_them)
{
	uint64_t ino = make_vol(NS_ROOT_INO, "v.img");
	struct ns_file *f = open_file(ino, O_RDWR);
	struct ns_attr a = { .size = 3 * 4096 };
	uint64_t pos;

	put_pattern(f, 8 * 4096, 0, 7);
	cr_assert_eq(ns_fallocate(g_ns, f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096,
				  2 * 4096 + 10), 0);
	expect_pattern(f, 4096, 0, 7, "before the hole");
	expect(f, NULL, 2 * 4096 + 10, 4096, "the hole");
	expect_pattern(f, 5 * 4096 - 10, 3 * 4096 + 10, 7, "after the hole");
	cr_assert_eq(size_of(ino), 8 * 4096, "a hole keeps the size");
	/* SEEK_DATA from inside the two whole blocks punched lands after them */
	cr_assert_eq(ns_lseek(g_ns, f, 4096, SEEK_HOLE, &pos), 0);
	cr_assert_eq(pos, 4096);
	cr_assert_eq(ns_lseek(g_ns, f, 4096, SEEK_DATA, &pos), 0);
	cr_assert_eq(pos, 3 * 4096);

	/* shrink, then grow again: the cut-off bytes do not come back */
	cr_assert_eq(ns_setattr(g_ns, ino, &a, NS_SET_SIZE, &a), 0);
	cr_assert_eq(a.size, 3 * 4096);
	a.size = 8 * 4096;
	cr_assert_eq(ns_setattr(g_ns, ino, &a, NS_SET_SIZE, &a), 0);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	expect_pattern(f, 4096, 0, 7, "kept");
	expect(f, NULL, 2 * 4096, 4096, "still the hole");
	expect(f, NULL, 5 * 4096, 3 * 4096, "cut off, then grown");
	cr_assert_eq(ns_lseek(g_ns, f, 4096, SEEK_DATA, &pos), -ENXIO, "no data after block 0");
	ns_release(g_ns, f);
}

/* Appends seen, and how many of them had a change in flight that GC's
 * barrier waits for (ns_change_begin). */
struct append_seen {
	int appends, counted;
};

static void append_seen_fn(struct chunk_store *cs, enum chunk_test_point at, uint64_t id,
			   uint32_t nblocks, void *arg)
{
	struct append_seen *s = arg;

	(void)cs;
	(void)id;
	(void)nblocks;
	if (at != CHUNK_TEST_APPEND)
		return;
	s->appends++;
	s->counted += test_changes_in_flight(g_ns) > 0;
}

Test(ns, every_data_append_is_a_change_gc_waits_for_a_cut_inside_a_block_too)
{
	uint64_t ino = make_vol(NS_ROOT_INO, "v.img");
	struct ns_file *f = open_file(ino, O_RDWR);
	struct ns_attr a = { .size = 3 * 4096 + 100 };
	struct append_seen seen = { 0 };

	put_pattern(f, 8 * 4096, 0, 7);
	chunk_test_hook(test_cs(g_ns), append_seen_fn, &seen);
	put_pattern(f, 4096, 4096, 8);                          /* a write */
	cr_assert_eq(ns_fallocate(g_ns, f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				  5 * 4096 + 10, 100), 0);      /* rewrites block 5 */
	cr_assert_eq(ns_setattr(g_ns, ino, &a, NS_SET_SIZE, &a), 0);    /* rewrites block 3 */
	chunk_test_hook(test_cs(g_ns), NULL, NULL);
	cr_assert_eq(seen.appends, 3, "a write, a punch and a cut each append a block");
	cr_assert_eq(seen.counted, 3, "appends outside a change GC waits for: %d",
		     seen.appends - seen.counted);
	expect_pattern(f, 4096, 4096, 8, "written");
	expect_pattern(f, 100, 3 * 4096, 7, "the cut block's kept part");
	cr_assert_eq(size_of(ino), 3 * 4096 + 100);
	ns_release(g_ns, f);
}

Test(ns, fsynced_writes_survive_close_and_reopen_of_the_store)
{
	uint64_t d = make_dir(NS_ROOT_INO, "vm");
	uint64_t sub = make_dir(d, "sub");
	uint64_t ino = make_vol(sub, "disk.img");
	struct ns_file *f = open_file(ino, O_RDWR);

	put_pattern(f, 100000, 777, 11);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	ns_release(g_ns, f);
	close_store();
	open_store();
	cr_assert_eq(path_ino("vm/sub/disk.img"), ino, "inode numbers stay across mounts");
	cr_assert_eq(size_of(ino), 100777);
	f = open_file(ino, O_RDONLY);
	expect(f, NULL, 777, 0, "never written");
	expect_pattern(f, 100000, 777, 11, "after reopen");
	ns_release(g_ns, f);
}

static void crash_after_fsync(void)
{
	struct ns_file *f = child_volume("disk.img");

	child_write(f, 64 * 1024 + 5, 3, 21);
	child_check(ns_fsync(g_ns, f), 0, "fsync");
	child_write(f, 16 * 4096, 4096, 22);    /* not synced: either version per block */
}

Test(ns, fsynced_writes_survive_a_crash_and_unsynced_ones_are_old_or_new_per_block)
{
	uint8_t *synced = pattern(64 * 1024 + 8, 0, 21), *later = pattern(20 * 4096, 0, 22);
	uint8_t buf[4096];
	struct ns_file *f;

	close_store();
	in_crashing_child(crash_after_fsync);
	open_store();
	f = open_file(lookup(NS_ROOT_INO, "disk.img"), O_RDONLY);
	/* the synced write moved by its offset 3: pattern bytes are at off - 3 */
	fill(synced, 64 * 1024 + 5, 3, 21);
	expect(f, NULL, 3, 0, "before the synced write");
	expect(f, synced, 4096 - 3, 3, "first block, never rewritten");
	for (uint64_t b = 1; b < 16; b++) {
		cr_assert_eq(ns_read(g_ns, f, buf, 4096, b * 4096), 4096);
		fill(synced, 4096, b * 4096, 21);
		fill(later, 4096, b * 4096, 22);
		cr_assert(!memcmp(buf, synced, 4096) || !memcmp(buf, later, 4096),
			  "block %" PRIu64 " is neither the synced data nor the later write", b);
	}
	ns_release(g_ns, f);
	free(synced);
	free(later);
}

static void crash_after_background_flush(void)
{
	struct ns_file *f = child_volume("bg.img");

	child_check(ns_start(g_ns), 0, "ns_start");
	child_write(f, 10000, 0, 31);
	/* no fsync: the flusher (every 20 ms here) must commit it */
	child_check(test_wait_background_flush(g_ns), 0, "a background flush after the write");
}

Test(ns, the_background_flusher_makes_writes_durable_without_fsync)
{
	struct ns_file *f;

	close_store();
	g_opts.flush_interval_ms = 20;
	in_crashing_child(crash_after_background_flush);
	open_store();
	f = open_file(lookup(NS_ROOT_INO, "bg.img"), O_RDONLY);
	cr_assert_eq(size_of(lookup(NS_ROOT_INO, "bg.img")), 10000);
	expect_pattern(f, 10000, 0, 31, "flushed in the background");
	ns_release(g_ns, f);
}

struct resume {
	char names[16][32];
	uint64_t cookies[16];
	size_t n, stop_at;              /* stop (refuse the entry) once n reaches it */
};

static int resume_add(void *ctx, const char *name, const struct ns_attr *attr, uint64_t cookie)
{
	struct resume *r = ctx;

	if (r->n == r->stop_at)
		return 1;
	cr_assert_lt(r->n, 16);
	snprintf(r->names[r->n], sizeof(r->names[0]), "%s", name);
	r->cookies[r->n++] = cookie;
	return 0;
}

Test(ns, readdir_resumes_after_a_cookie_without_repeating_or_skipping_entries)
{
	struct resume all = { .stop_at = 16 }, part = { .stop_at = 4 };
	char name[32];

	for (int i = 0; i < 6; i++) {
		snprintf(name, sizeof(name), "v%d.img", i);
		make_vol(NS_ROOT_INO, name);
	}
	make_dir(NS_ROOT_INO, "dir");
	cr_assert_eq(ns_readdir(g_ns, NS_ROOT_INO, 0, resume_add, &all), 0);
	cr_assert_eq(all.n, 10, "., .., .snapshots, 6 volumes and a directory: %zu", all.n);
	/* a reader that takes 4 at a time, as FUSE does with a small buffer */
	while (part.n < all.n) {
		size_t before = part.n;

		cr_assert_eq(ns_readdir(g_ns, NS_ROOT_INO, before ? part.cookies[before - 1] : 0,
					resume_add, &part), 0);
		cr_assert_gt(part.n, before, "no progress after %zu entries", before);
		part.stop_at = part.n + 4;
	}
	cr_assert_eq(part.n, all.n);
	for (size_t i = 0; i < all.n; i++)
		cr_assert_str_eq(part.names[i], all.names[i], "entry %zu", i);
}

/* ---- unlink and rename ---------------------------------------------------------------- */

/* A volume that lost its name opens again only while it is open (through
 * /proc/PID/fd): a new open can only come from a stale dentry, and the
 * volume is being deleted (a review found receive's commit could race
 * such an open). */
Test(ns, an_unlinked_volume_not_open_does_not_open_again)
{
	uint64_t ino = make_vol(NS_ROOT_INO, "gone.img");
	struct ns_file *f = open_file(ino, O_RDWR), *g = NULL;

	put_pattern(f, 4096, 0, 45);
	cr_assert_eq(ns_unlink(g_ns, NS_ROOT_INO, "gone.img"), 0);
	cr_assert_eq(ns_open_file(g_ns, ino, O_RDONLY, &g), 0, "open while it is open");
	ns_release(g_ns, g);
	ns_release(g_ns, f);
	cr_assert_eq(ns_open_file(g_ns, ino, O_RDWR, &g), -ENOENT, "open after the last close");
	cr_assert_null(g);
	cr_assert_eq(test_reap(g_ns), 0);
	cr_assert_eq(ns_open_file(g_ns, ino, O_RDWR, &g), -ENOENT, "open after the reap");
}

Test(ns, unlinked_open_volume_keeps_its_data_until_closed_then_is_reaped)
{
	uint64_t ino = make_vol(NS_ROOT_INO, "gone.img");
	struct ns_file *f = open_file(ino, O_RDWR);
	struct ns_attr a;

	put_pattern(f, 30000, 0, 41);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	cr_assert_eq(ns_unlink(g_ns, NS_ROOT_INO, "gone.img"), 0);
	cr_assert_eq(lookup_rc(NS_ROOT_INO, "gone.img"), -ENOENT);
	expect_listing(NS_ROOT_INO, ".snapshots");

	/* the handle keeps working, reads and writes, through flushes and reaps */
	put_pattern(f, 5000, 30000, 42);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	cr_assert_eq(test_reap(g_ns), 0);
	expect_pattern(f, 30000, 0, 41, "unlinked, before close");
	expect_pattern(f, 5000, 30000, 42, "written after unlink");
	cr_assert_eq(ns_getattr(g_ns, ino, &a), 0);
	cr_assert_eq(a.nlink, 0);
	cr_assert_eq(a.size, 35000);

	/* last close: the inode goes at the next reap */
	ns_release(g_ns, f);
	cr_assert_eq(test_reap(g_ns), 0);
	cr_assert_eq(ns_getattr(g_ns, ino, &a), -ENOENT, "the unlinked inode was not reaped");
	cr_assert_eq(ns_open_file(g_ns, ino, O_RDONLY, &f), -ENOENT);
}

Test(ns, an_unlink_or_rename_over_whose_commit_fails_deletes_nothing)
{
	uint64_t a = make_vol(NS_ROOT_INO, "a.img"), b = make_vol(NS_ROOT_INO, "b.img");
	struct ns_file *f = open_file(a, O_RDWR), *g = open_file(b, O_RDWR);

	put_pattern(f, 20000, 0, 61);
	put_pattern(g, 20000, 0, 62);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	ns_release(g_ns, g);                    /* b cached but unused; a open */

	bmap_fault_commit(test_bm(g_ns), 0, EIO);
	cr_assert_eq(ns_unlink(g_ns, NS_ROOT_INO, "a.img"), -EIO);
	cr_assert_eq(ns_unlink(g_ns, NS_ROOT_INO, "b.img"), -EIO);
	cr_assert_eq(ns_rename(g_ns, NS_ROOT_INO, "a.img", NS_ROOT_INO, "b.img", 0), -EIO);
	bmap_fault_commit(test_bm(g_ns), 0, 0);

	/* nothing was unlinked: not by the reaper, the last close or a reopen */
	cr_assert_eq(test_reap(g_ns), 0);
	ns_release(g_ns, f);
	cr_assert_eq(test_reap(g_ns), 0);
	close_store();
	open_store();
	cr_assert_eq(path_ino("a.img"), a);
	cr_assert_eq(path_ino("b.img"), b);
	f = open_file(a, O_RDONLY);
	g = open_file(b, O_RDONLY);
	expect_pattern(f, 20000, 0, 61, "a after failed unlinks");
	expect_pattern(g, 20000, 0, 62, "b after failed unlinks");
	ns_release(g_ns, f);
	ns_release(g_ns, g);
}

Test(ns, volume_unlinked_while_open_is_deleted_at_the_next_mount_after_a_close)
{
	uint64_t ino = make_vol(NS_ROOT_INO, "gone.img");
	struct ns_file *f = open_file(ino, O_RDWR);
	struct ns_attr a;

	put_pattern(f, 5000, 0, 43);
	cr_assert_eq(ns_unlink(g_ns, NS_ROOT_INO, "gone.img"), 0);
	ns_release(g_ns, f);
	close_store();                          /* reaps what is queued */
	open_store();
	cr_assert_eq(ns_getattr(g_ns, ino, &a), -ENOENT);
	expect_listing(NS_ROOT_INO, ".snapshots");
}

Test(ns, rename_moves_an_open_volume_and_the_replaced_one_stays_readable_while_open)
{
	uint64_t d1 = make_dir(NS_ROOT_INO, "d1"), d2 = make_dir(NS_ROOT_INO, "d2");
	uint64_t a = make_vol(d1, "a.img"), b = make_vol(d2, "b.img");
	struct ns_file *fa = open_file(a, O_RDWR), *fb = open_file(b, O_RDWR);
	struct ns_attr at;

	put_pattern(fa, 9000, 0, 51);
	put_pattern(fb, 7000, 0, 52);
	cr_assert_eq(ns_rename(g_ns, d1, "a.img", d2, "b.img", RENAME_NOREPLACE), -EEXIST);
	cr_assert_eq(ns_rename(g_ns, d1, "a.img", d2, "b.img", 0), 0);
	cr_assert_eq(lookup_rc(d1, "a.img"), -ENOENT);
	cr_assert_eq(lookup(d2, "b.img"), a, "the name now leads to the moved volume");
	expect_listing(d1, ".snapshots");
	expect_listing(d2, ".snapshots b.img");
	cr_assert_eq(size_of(a), 9000);

	/* both handles keep working: the moved volume and the replaced one */
	put_pattern(fa, 100, 9000, 53);
	expect_pattern(fa, 9000, 0, 51, "renamed volume");
	expect_pattern(fb, 7000, 0, 52, "replaced volume, still open");
	cr_assert_eq(ns_getattr(g_ns, b, &at), 0);
	cr_assert_eq(at.nlink, 0);
	ns_release(g_ns, fb);
	cr_assert_eq(test_reap(g_ns), 0);
	cr_assert_eq(ns_getattr(g_ns, b, &at), -ENOENT);

	/* directories move too, but not into themselves; .snapshots does not */
	cr_assert_eq(ns_rename(g_ns, NS_ROOT_INO, "d2", d1, "moved", 0), 0);
	cr_assert_eq(path_ino("d1/moved/b.img"), a);
	cr_assert_eq(ns_rename(g_ns, NS_ROOT_INO, "d1", path_ino("d1/moved"), "x", 0), -EINVAL);
	cr_assert_eq(ns_rename(g_ns, NS_ROOT_INO, ".snapshots", NS_ROOT_INO, "s", 0), -EPERM);

	cr_assert_eq(ns_fsync(g_ns, fa), 0);
	ns_release(g_ns, fa);
	close_store();
	open_store();
	fa = open_file(path_ino("d1/moved/b.img"), O_RDONLY);
	expect_pattern(fa, 9000, 0, 51, "renamed, after reopen");
	expect_pattern(fa, 100, 9000, 53, "written after the rename, after reopen");
	ns_release(g_ns, fa);
}

/* ---- snapshots ---------------------------------------------------------------------- */

Test(ns, file_snapshot_freezes_the_volume_and_later_writes_do_not_show_in_it)
{
	uint64_t d = make_dir(NS_ROOT_INO, "vm");
	uint64_t ino = make_vol(d, "disk.img");
	struct ns_file *f = open_file(ino, O_RDWR), *s;
	uint64_t sroot, sino;
	struct ns_attr a;

	put_pattern(f, 40000, 0, 61);           /* not synced: a snapshot takes it all the same */
	sroot = snap_take(d, "disk.img@golden");
	cr_assert_eq(lookup(lookup(d, ".snapshots"), "disk.img@golden"), sroot);
	expect_listing(lookup(d, ".snapshots"), "disk.img@golden");
	expect_listing(sroot, "disk.img");
	sino = lookup(sroot, "disk.img");
	cr_assert_neq(sino, ino);

	put_pattern(f, 40000, 2000, 62);        /* overwrites and grows the live volume */
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	s = open_file(sino, O_RDONLY);
	cr_assert_eq(size_of(sino), 40000);
	expect_pattern(s, 40000, 0, 61, "the snapshot");
	expect_pattern(f, 2000, 0, 61, "live, unchanged part");
	expect_pattern(f, 40000, 2000, 62, "live, rewritten");
	cr_assert_eq(size_of(ino), 42000);

	/* a snapshot is read-only, whatever the way in */
	cr_assert_eq(ns_write(g_ns, s, "x", 1, 0), -EROFS);
	cr_assert_eq(ns_fallocate(g_ns, s, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096),
		     -EROFS);
	a.size = 0;
	cr_assert_eq(ns_setattr(g_ns, sino, &a, NS_SET_SIZE, &a), -EROFS);
	cr_assert_eq(ns_open_file(g_ns, sino, O_RDWR, &s), -EROFS);
	cr_assert_eq(ns_unlink(g_ns, sroot, "disk.img"), -EROFS);
	cr_assert_eq(ns_create(g_ns, sroot, "new.img", 0644, 0, 0, &a), -EROFS);
	cr_assert_eq(lookup_rc(sroot, ".snapshots"), -ENOENT, "no snapshots of snapshots");

	/* and it stays frozen across a reopen */
	ns_release(g_ns, s);
	ns_release(g_ns, f);
	expect_after_reopen("vm/.snapshots/disk.img@golden/disk.img", 40000, 61,
			    "the snapshot after reopen");
}

/* A receive's commit whose index transaction fails changes nothing: the
 * destination, the received volume (its name and its data, written but
 * not synced before) and the snapshots are as before, no guid is taken,
 * and the same commit then applies (SPEC: a control operation is never
 * half-applied). */
Test(ns, a_failed_receive_commit_changes_nothing_and_applies_when_retried)
{
	uint64_t d = make_dir(NS_ROOT_INO, "vm");
	uint64_t ino = make_vol(d, "disk.img"), tmp;
	struct ns_file *f = open_file(ino, O_RDWR), *t;
	struct ns_recv r = { .dir = d, .tmp = ".vsnap-recv.x", .name = "disk.img", .snap = "tue",
			     .incremental = true, .created_ns = 7 };
	struct bmap_snap bs;
	char msg[256];

	put_pattern(f, 40000, 0, 71);
	snap_take(d, "disk.img@mon");
	ns_release(g_ns, f);
	cr_assert_eq(bmap_snap_lookup(test_bm(g_ns), d, "disk.img@mon", &bs), 0);
	cr_assert_eq(bmap_snap_guid_get(test_bm(g_ns), bs.id, r.base_guid), 0);
	memset(r.guid, 0x55, sizeof(r.guid));
	tmp = make_vol(d, ".vsnap-recv.x");
	r.tmp_ino = tmp;
	t = open_file(tmp, O_RDWR);
	put_pattern(t, 9000, 0, 72);

	bmap_fault_commit(test_bm(g_ns), 0, EIO);
	cr_assert_neq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "the commit did not fail");
	bmap_fault_commit(test_bm(g_ns), 0, 0);
	cr_assert_eq(lookup(d, "disk.img"), ino, "the destination changed");
	cr_assert_eq(lookup(d, ".vsnap-recv.x"), tmp, "the received volume lost its name");
	cr_assert_eq(lookup_rc(lookup(d, ".snapshots"), "disk.img@tue"), -ENOENT);
	cr_assert_eq(bmap_snap_by_guid(test_bm(g_ns), r.guid, &bs), -ENOENT, "the guid was taken");
	expect_pattern(t, 9000, 0, 72, "the received volume after the failed commit");

	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "retried: %s", msg);
	cr_assert_eq(lookup(d, "disk.img"), tmp);
	ns_release(g_ns, t);
	expect_after_reopen("vm/.snapshots/disk.img@tue/disk.img", 9000, 72,
			    "the received snapshot after a reopen");
}

/* receive's commit (ns_recv_commit): the received volume takes the
 * destination's name and its snapshot appears with the stream's guid, in
 * one step; a destination open, or written after the base, or a guid
 * already there, is refused and nothing changes; --force replaces a
 * written destination. */
Test(ns, receive_commit_renames_and_snapshots_in_one_step_or_refuses)
{
	uint64_t d = make_dir(NS_ROOT_INO, "vm");
	uint64_t ino = make_vol(d, "disk.img"), tmp, sino, full;
	struct ns_file *f = open_file(ino, O_RDWR), *t, *s;
	struct ns_recv r = { .dir = d, .tmp = ".vsnap-recv.x", .name = "disk.img", .snap = "tue",
			     .incremental = true, .created_ns = 5 };
	struct bmap_snap bs;
	uint8_t g[BMAP_GUID_BYTES];
	char msg[256];

	put_pattern(f, 40000, 0, 61);
	snap_take(d, "disk.img@mon");
	cr_assert_eq(bmap_snap_lookup(test_bm(g_ns), d, "disk.img@mon", &bs), 0);
	cr_assert_eq(bmap_snap_guid_get(test_bm(g_ns), bs.id, r.base_guid), 0);
	memset(r.guid, 0x77, sizeof(r.guid));

	/* the temporary volume: a clone of @mon, then the stream's change (not synced) */
	tmp = make_vol(d, ".vsnap-recv.x");
	t = open_file(tmp, O_RDWR);
	s = open_file(path_ino("vm/.snapshots/disk.img@mon/disk.img"), O_RDONLY);
	copy_all(s, 40000, t);
	ns_release(g_ns, s);
	put_pattern(t, 5000, 4096, 62);

	/* what the daemon checks of the request itself (a review found each) */
	r.tmp_ino = tmp + 1000;                 /* another receive started over meanwhile */
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -ESTALE, "replaced: %s", msg);
	cr_assert(strstr(msg, "replaced meanwhile"), "%s", msg);
	r.tmp_ino = tmp;
	r.tmp = "disk.img";                     /* not a volume being received */
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EINVAL, "tmp = name: %s", msg);
	r.tmp = ".vsnap-recv.x";
	r.snap = "a@b";                         /* would name another file's snapshot */
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EINVAL, "snap with @: %s", msg);
	r.snap = "tue";
	cr_assert_eq(lookup(d, "disk.img"), ino, "refused: nothing changed");

	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EBUSY, "open: %s", msg);
	put_pattern(f, 100, 0, 63);             /* the destination written after @mon */
	ns_release(g_ns, f);
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -ESTALE, "written: %s", msg);
	cr_assert(strstr(msg, "was written after snapshot disk.img@mon"), "%s", msg);
	cr_assert_eq(lookup(d, "disk.img"), ino, "refused: nothing changed");
	cr_assert_eq(lookup_rc(lookup(d, ".snapshots"), "disk.img@tue"), -ENOENT);

	r.force = true;
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "forced: %s", msg);
	cr_assert_eq(lookup(d, "disk.img"), tmp);
	cr_assert_eq(lookup_rc(d, ".vsnap-recv.x"), -ENOENT);
	sino = path_ino("vm/.snapshots/disk.img@tue/disk.img");
	s = open_file(sino, O_RDONLY);
	expect_pattern(s, 4096, 0, 61, "received snapshot, base part");
	expect_pattern(s, 5000, 4096, 62, "received snapshot, the stream's part");
	ns_release(g_ns, s);
	put_pattern(t, 10, 0, 64);              /* the live volume goes on past its snapshot */
	ns_release(g_ns, t);
	cr_assert_eq(bmap_snap_lookup(test_bm(g_ns), d, "disk.img@tue", &bs), 0);
	cr_assert_eq(bmap_snap_guid_get(test_bm(g_ns), bs.id, g), 0);
	cr_assert_eq(memcmp(g, r.guid, sizeof(g)), 0, "the snapshot keeps the stream's guid");
	cr_assert_eq(bs.created_ns, 5);

	/* the same stream again, and a full stream onto an existing volume */
	full = make_vol(d, ".vsnap-recv.y");
	r.tmp = ".vsnap-recv.y";
	r.tmp_ino = full;
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EEXIST, "twice: %s", msg);
	memset(r.guid, 0x78, sizeof(r.guid));
	r.incremental = false;
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EEXIST, "full onto: %s", msg);
	r.name = "new.img";
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "full: %s", msg);
	cr_assert_eq(lookup(d, "new.img"), full);
	cr_assert_eq(test_reap(g_ns), 0);

	close_store();
	open_store();
	s = open_file(path_ino("vm/.snapshots/disk.img@tue/disk.img"), O_RDONLY);
	expect_pattern(s, 5000, 4096, 62, "received snapshot after reopen");
	ns_release(g_ns, s);
	s = open_file(path_ino("vm/disk.img"), O_RDONLY);
	expect_pattern(s, 10, 0, 64, "live volume after reopen");
	ns_release(g_ns, s);
	cr_assert_eq(path_ino("vm/.snapshots/new.img@tue") != 0, true);
}

/* ---- receive's commit of a directory stream ------------------------------------ */

/* A clone of file path into a new volume name of dir (what receive's
 * temporary tree starts from); the new volume, open for writing. */
static struct ns_file *clone_into(const char *path, uint64_t dir, const char *name)
{
	struct ns_file *src = open_file(path_ino(path), O_RDONLY);
	struct ns_file *dst = open_file(make_vol(dir, name), O_RDWR);

	copy_all(src, size_of(path_ino(path)), dst);
	ns_release(g_ns, src);
	return dst;
}

/* The file at path holds put_pattern(seed) at [off, off + len). */
static void expect_file(const char *path, size_t len, uint64_t off, uint64_t seed, const char *what)
{
	struct ns_file *f = open_file(path_ino(path), O_RDONLY);

	expect_pattern(f, len, off, seed, what);
	ns_release(g_ns, f);
}

static void guid_of(uint64_t dir, const char *snap, uint8_t *g)
{
	struct bmap_snap bs;

	cr_assert_eq(bmap_snap_lookup(test_bm(g_ns), dir, snap, &bs), 0, "snapshot %s", snap);
	cr_assert_eq(bmap_snap_guid_get(test_bm(g_ns), bs.id, g), 0);
}

/*
 * receive's commit of a directory (ns_recv_commit, tree): an incremental
 * stream's tree replaces the destination's entries and its snapshot
 * appears with the stream's guid, in one step; a destination with a volume
 * open, written after the base, with a subdirectory that has snapshots, or
 * with another base, is refused and nothing changes; --force replaces a
 * written destination; a full stream's tree becomes the new directory.
 * A volume of the received tree still open (the kernel's release on its
 * way) is carried over: its unsynced writes are in the snapshot, and it
 * goes on writing past it.
 */
Test(ns, receive_commit_of_a_tree_replaces_the_entries_and_snapshots_in_one_step_or_refuses)
{
	uint64_t web = make_dir(NS_ROOT_INO, "web");
	uint64_t root_img = make_vol(web, "root.img"), sub = make_dir(web, "sub");
	uint64_t tmp, sub2, old_xml;
	struct ns_file *f = open_file(root_img, O_RDWR), *t, *s;
	struct ns_recv r = { .dir = NS_ROOT_INO, .tmp = ".vsnap-recv.i", .name = "web",
			     .snap = "tue", .incremental = true, .created_ns = 9, .tree = true };
	struct bmap_snap bs;
	uint8_t g[BMAP_GUID_BYTES];
	char msg[256];

	put_pattern(f, 40000, 0, 81);
	s = open_file(make_vol(sub, "d.img"), O_RDWR);
	put_pattern(s, 5000, 0, 82);
	ns_release(g_ns, s);
	old_xml = make_vol(web, "old.xml");
	snap_take(web, "mon");
	guid_of(web, "mon", r.base_guid);
	memset(r.guid, 0x91, sizeof(r.guid));

	/* the received tree: mon's root.img changed, old.xml and sub gone, new.img
	 * and sub2/z.img new; root.img still open, its last write not synced */
	tmp = make_dir(NS_ROOT_INO, ".vsnap-recv.i");
	r.tmp_ino = tmp;
	t = clone_into("web/.snapshots/mon/root.img", tmp, "root.img");
	put_pattern(t, 5000, 4096, 83);
	s = open_file(make_vol(tmp, "new.img"), O_RDWR);
	put_pattern(s, 3000, 0, 84);
	ns_release(g_ns, s);
	sub2 = make_dir(tmp, "sub2");
	s = open_file(make_vol(sub2, "z.img"), O_RDWR);
	put_pattern(s, 7000, 0, 85);
	ns_release(g_ns, s);

	/* refused: a volume of the destination open; nothing changes */
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EBUSY, "open: %s", msg);
	cr_assert(strstr(msg, "web/root.img is open"), "%s", msg);
	ns_release(g_ns, f);
	r.tmp_ino = tmp + 1000;
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -ESTALE, "replaced: %s", msg);
	r.tmp_ino = tmp;
	r.snap = "x@tue";
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EINVAL, "FILE@NAME: %s", msg);
	r.snap = "tue";
	cr_assert_eq(lookup(web, "root.img"), root_img, "refused: nothing changed");
	cr_assert_eq(lookup(NS_ROOT_INO, ".vsnap-recv.i"), tmp);

	/* applied: web is mon exactly, so no force needed */
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "incremental: %s", msg);
	cr_assert_eq(lookup(NS_ROOT_INO, "web"), web, "the directory keeps its inode");
	cr_assert_eq(lookup_rc(NS_ROOT_INO, ".vsnap-recv.i"), -ENOENT, "the tree is used up");
	expect_listing(web, ".snapshots new.img root.img sub2");
	cr_assert_neq(lookup(web, "root.img"), root_img);
	cr_assert_eq(lookup(lookup(web, "sub2"), "z.img") != 0, true);
	cr_assert_eq(lookup_rc(web, "old.xml"), -ENOENT);
	(void)old_xml;
	expect_listing(lookup(web, ".snapshots"), "mon tue");
	expect_listing(path_ino("web/.snapshots/tue"), "new.img root.img sub2");
	expect_listing(path_ino("web/.snapshots/mon"), "old.xml root.img sub");
	guid_of(web, "tue", g);
	cr_assert_eq(memcmp(g, r.guid, sizeof(g)), 0, "the snapshot keeps the stream's guid");
	cr_assert_eq(bmap_snap_lookup(test_bm(g_ns), web, "tue", &bs), 0);
	cr_assert_eq(bs.created_ns, 9);
	expect_file("web/.snapshots/tue/root.img", 4096, 0, 81, "received snapshot, base part");
	expect_file("web/.snapshots/tue/root.img", 5000, 4096, 83, "received, unsynced write");
	put_pattern(t, 100, 0, 86);             /* the carried volume goes on past its snapshot */
	ns_release(g_ns, t);
	expect_file("web/.snapshots/tue/root.img", 4096, 0, 81, "snapshot, live written");
	cr_assert_eq(test_reap(g_ns), 0);

	/* the next one: refused while web was written after tue, or while a
	 * directory below it has snapshots of its own; then forced */
	r.tmp = ".vsnap-recv.j";
	r.snap = "wed";
	memcpy(r.base_guid, r.guid, sizeof(r.guid));
	memset(r.guid, 0x92, sizeof(r.guid));
	tmp = make_dir(NS_ROOT_INO, ".vsnap-recv.j");
	r.tmp_ino = tmp;
	s = clone_into("web/.snapshots/tue/new.img", tmp, "new.img");
	ns_release(g_ns, s);
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -ESTALE, "written: %s", msg);
	cr_assert(strstr(msg, "web was written after snapshot tue"), "%s", msg);
	r.force = true;
	snap_take(lookup(web, "sub2"), "own");
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -ENOTEMPTY, "own: %s", msg);
	cr_assert(strstr(msg, "web/sub2 has snapshots of its own"), "%s", msg);
	cr_assert_eq(ns_snap_delete(g_ns, lookup(web, "sub2"), "own"), 0);
	cr_assert_eq(lookup_rc(lookup(web, ".snapshots"), "wed"), -ENOENT, "refused: no snapshot");
	expect_listing(web, ".snapshots new.img root.img sub2");
	memcpy(g, r.base_guid, sizeof(g));
	memset(r.base_guid, 0x33, sizeof(r.base_guid));
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -ENOENT, "no base: %s", msg);
	memcpy(r.base_guid, g, sizeof(g));
	bmap_fault_commit(test_bm(g_ns), 0, EIO);
	cr_assert_neq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "the commit did not fail");
	bmap_fault_commit(test_bm(g_ns), 0, 0);
	expect_listing(web, ".snapshots new.img root.img sub2");
	cr_assert_eq(lookup(NS_ROOT_INO, ".vsnap-recv.j"), tmp, "failed: the tree is still there");
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "forced: %s", msg);
	expect_listing(web, ".snapshots new.img");
	expect_listing(lookup(web, ".snapshots"), "mon tue wed");

	/* a full stream: onto web refused, as a new directory applied */
	r.tmp = ".vsnap-recv.f";
	r.snap = "mon";
	r.incremental = r.force = false;
	memset(r.guid, 0x93, sizeof(r.guid));
	tmp = make_dir(NS_ROOT_INO, ".vsnap-recv.f");
	r.tmp_ino = tmp;
	s = open_file(make_vol(tmp, "a.img"), O_RDWR);
	put_pattern(s, 9000, 0, 87);
	ns_release(g_ns, s);
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EEXIST, "full onto: %s", msg);
	r.name = "copy";
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "full: %s", msg);
	cr_assert_eq(lookup(NS_ROOT_INO, "copy"), tmp, "the received tree is the directory");
	cr_assert_eq(test_reap(g_ns), 0);

	close_store();
	open_store();
	expect_file("web/.snapshots/tue/root.img", 5000, 4096, 83, "received snapshot after reopen");
	expect_file("web/.snapshots/tue/sub2/z.img", 7000, 0, 85, "new file, reopened");
	expect_file("web/.snapshots/mon/sub/d.img", 5000, 0, 82, "base keeps it");
	expect_file("web/new.img", 3000, 0, 84, "the live volume after reopen");
	expect_after_reopen("copy/.snapshots/mon/a.img", 9000, 87, "a full tree's snapshot");
}

/*
 * What a review found in the directory commit: the destination's sizes
 * are checked as the transaction sees them (a volume grown after the base,
 * closed, its change not yet in the index, is a change); a received
 * directory with snapshots of its own is not deleted under them; a message
 * names the nested entry it is about.
 */
Test(ns, receive_commit_of_a_tree_sees_late_changes_and_keeps_snapshots_whole)
{
	uint64_t web = make_dir(NS_ROOT_INO, "web"), sub = make_dir(web, "sub");
	uint64_t disk = make_vol(sub, "d.img"), tmp;
	struct ns_file *f = open_file(disk, O_RDWR), *t;
	struct ns_recv r = { .dir = NS_ROOT_INO, .tmp = ".vsnap-recv.i", .name = "web",
			     .snap = "tue", .incremental = true, .created_ns = 9, .tree = true };
	char msg[256];

	put_pattern(f, 8192, 0, 1);
	ns_release(g_ns, f);
	snap_take(web, "mon");
	guid_of(web, "mon", r.base_guid);
	memset(r.guid, 0x94, sizeof(r.guid));
	tmp = make_dir(NS_ROOT_INO, ".vsnap-recv.i");
	r.tmp_ino = tmp;
	t = clone_into("web/.snapshots/mon/sub/d.img", tmp, "d.img");
	ns_release(g_ns, t);

	f = open_file(disk, O_RDWR);
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -EBUSY, "open: %s", msg);
	cr_assert(strstr(msg, "web/sub/d.img is open"), "%s", msg);
	put_pattern(f, 65536, 1 << 20, 2);      /* grows it; closed, not flushed */
	ns_release(g_ns, f);
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -ESTALE, "grown: %s", msg);
	cr_assert_eq(size_of(lookup(lookup(web, "sub"), "d.img")), (1 << 20) + 65536);

	r.force = true;
	snap_take(tmp, "x");
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), -ENOTEMPTY, "tmp: %s", msg);
	cr_assert(strstr(msg, "has snapshots"), "%s", msg);
	cr_assert_eq(lookup(NS_ROOT_INO, ".vsnap-recv.i"), tmp);
	cr_assert_eq(ns_snap_delete(g_ns, tmp, "x"), 0);
	cr_assert_eq(ns_recv_commit(g_ns, &r, msg, sizeof(msg)), 0, "forced: %s", msg);
	expect_listing(web, ".snapshots d.img");
}

Test(ns, directory_snapshot_freezes_every_volume_below_it_at_one_instant)
{
	uint64_t d = make_dir(NS_ROOT_INO, "web"), sub = make_dir(d, "data");
	uint64_t r = make_vol(d, "root.img"), x = make_vol(sub, "x.img");
	struct ns_file *fr = open_file(r, O_RDWR), *fx = open_file(x, O_RDWR), *s;
	uint64_t sroot;

	make_vol(NS_ROOT_INO, "other.img");     /* outside web/: not in its snapshot */
	put_pattern(fr, 12345, 0, 71);
	put_pattern(fx, 4096 * 3, 4096, 72);
	ns_release(g_ns, fx);                   /* closed, but its changes not yet flushed */
	sroot = snap_take(d, "before-upgrade");
	put_pattern(fr, 12345, 0, 73);
	fx = open_file(x, O_RDWR);
	put_pattern(fx, 100, 4096, 74);
	cr_assert_eq(ns_fsync(g_ns, fr), 0);

	expect_listing(sroot, "data root.img");
	expect_listing(lookup(sroot, "data"), "x.img");
	cr_assert_eq(lookup_rc(sroot, "other.img"), -ENOENT, "outside the directory");
	s = open_file(lookup(sroot, "root.img"), O_RDONLY);
	expect_pattern(s, 12345, 0, 71, "root.img in the snapshot");
	ns_release(g_ns, s);
	s = open_file(path_ino("web/.snapshots/before-upgrade/data/x.img"), O_RDONLY);
	cr_assert_eq(size_of(path_ino("web/.snapshots/before-upgrade/data/x.img")), 4 * 4096);
	expect(s, NULL, 4096, 0, "x.img in the snapshot, the hole");
	expect_pattern(s, 3 * 4096, 4096, 72, "x.img in the snapshot");
	ns_release(g_ns, s);
	expect_pattern(fr, 12345, 0, 73, "root.img live");
	expect_pattern(fx, 100, 4096, 74, "x.img live");
	ns_release(g_ns, fr);
	ns_release(g_ns, fx);
}

Test(ns, snapshot_names_are_checked_and_snapshots_are_renamed_and_deleted)
{
	uint64_t d = make_dir(NS_ROOT_INO, "vm"), ctl, s;
	struct ns_attr a;
	struct ns_file *f;

	make_vol(d, "disk.img");
	ctl = lookup(d, ".snapshots");
	snap_take(d, "s1");
	cr_assert_eq(ns_mkdir(g_ns, ctl, "s1", 0755, 0, 0, &a), -EEXIST);
	cr_assert_eq(ns_mkdir(g_ns, ctl, ".hidden", 0755, 0, 0, &a), -EINVAL);
	cr_assert_eq(ns_mkdir(g_ns, ctl, "bad/name", 0755, 0, 0, &a), -EINVAL);
	cr_assert_eq(ns_mkdir(g_ns, ctl, "missing.img@s2", 0755, 0, 0, &a), -ENOENT);
	cr_assert_eq(ns_create(g_ns, ctl, "file", 0644, 0, 0, &a), -EPERM);
	cr_assert_eq(ns_mkdir(g_ns, d, ".snapshots", 0755, 0, 0, &a), -EEXIST);
	cr_assert_eq(ns_rmdir(g_ns, NS_ROOT_INO, "vm"), -ENOTEMPTY);

	cr_assert_eq(ns_rename(g_ns, ctl, "s1", ctl, "s2", 0), 0);
	expect_listing(ctl, "s2");
	snap_take(d, "disk.img@s3");
	cr_assert_eq(ns_rename(g_ns, ctl, "s2", ctl, "disk.img@s3", 0), -EINVAL,
		     "a directory snapshot cannot become a volume's");
	cr_assert_eq(ns_rename(g_ns, ctl, "disk.img@s3", ctl, "s2", 0), -EINVAL);

	/* rmdir of a snapshot with an open file: EBUSY; after close it goes */
	s = lookup(ctl, "s2");
	f = open_file(lookup(s, "disk.img"), O_RDONLY);
	cr_assert_eq(ns_rmdir(g_ns, ctl, "s2"), -EBUSY);
	ns_release(g_ns, f);
	cr_assert_eq(ns_rmdir(g_ns, ctl, "s2"), 0);
	cr_assert_eq(ns_rmdir(g_ns, ctl, "disk.img@s3"), 0);
	expect_listing(ctl, "");
	cr_assert_eq(test_reap(g_ns), 0);
	cr_assert_eq(ns_rmdir(g_ns, NS_ROOT_INO, "vm"), -ENOTEMPTY, "disk.img is still in it");
}

/* ---- clones and reverts through copy_file_range -------------------------------------------- */

Test(ns, clone_through_copy_range_shares_every_block_and_diverges_from_its_source)
{
	const uint64_t size = (1 << 20) + 1000;  /* a partial last block */
	uint64_t src = make_vol(NS_ROOT_INO, "golden.img"), cl, bytes;
	struct ns_file *f = open_file(src, O_RDWR), *s, *c;

	bytes = chunk_bytes();
	put_pattern(f, size, 0, 81);
	snap_take(NS_ROOT_INO, "golden.img@base");
	cr_assert_geq(chunk_bytes(), bytes + size, "chunk_bytes() does not see data writes");
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	s = open_file(path_ino(".snapshots/golden.img@base/golden.img"), O_RDONLY);
	cl = make_vol(NS_ROOT_INO, "clone.img");
	c = open_file(cl, O_RDWR);

	bytes = chunk_bytes();
	cr_assert_eq(copy_all(s, size, c), size);
	cr_assert_eq(ns_fsync(g_ns, c), 0);
	cr_assert_eq(chunk_bytes(), bytes, "a linked clone wrote data: %" PRIu64 " bytes",
		     chunk_bytes() - bytes);
	cr_assert_eq(size_of(cl), size);
	expect_pattern(c, size, 0, 81, "the clone");

	/* writes to the clone stay in the clone, and to the source in the source */
	put_pattern(c, 5000, 4000, 82);
	put_pattern(f, 5000, 100000, 83);
	cr_assert_eq(ns_fsync(g_ns, c), 0);
	expect_pattern(c, 5000, 4000, 82, "the clone, rewritten");
	expect_pattern(c, 5000, 100000, 81, "the clone where the source changed");
	expect_pattern(s, size, 0, 81, "the snapshot");
	expect_pattern(f, 5000, 4000, 81, "the source where the clone changed");

	/* the clone outlives its snapshot and its source */
	ns_release(g_ns, s);
	ns_release(g_ns, f);
	cr_assert_eq(ns_rmdir(g_ns, lookup(NS_ROOT_INO, ".snapshots"), "golden.img@base"), 0);
	cr_assert_eq(ns_unlink(g_ns, NS_ROOT_INO, "golden.img"), 0);
	cr_assert_eq(test_reap(g_ns), 0);
	cr_assert_geq(test_gc_pass(g_ns), 0);
	expect_pattern(c, 4000, 0, 81, "the clone after its origin went");
	ns_release(g_ns, c);
	close_store();
	open_store();
	c = open_file(lookup(NS_ROOT_INO, "clone.img"), O_RDONLY);
	expect_pattern(c, 4000, 0, 81, "the clone after reopen");
	expect_pattern(c, 5000, 4000, 82, "the clone's own write after reopen");
	expect_pattern(c, size - 9000, 9000, 81, "the clone after reopen, the rest");
	ns_release(g_ns, c);
}

/*
 * A clone continued after its destination was cut and grown back: the cut
 * lowered its inherit limit, which the index gets only at the next
 * checkpoint; continuing the clone must not raise it back over the cut
 * blocks (they read as zeros, not as the source).
 */
Test(ns, a_clone_continued_after_a_cut_keeps_the_cut_blocks_zero)
{
	uint64_t src = make_vol(NS_ROOT_INO, "src.img"), cl;
	struct ns_file *f = open_file(src, O_RDWR), *s, *c;
	struct ns_attr a = { .size = 4096 };

	put_pattern(f, 8 * 4096, 0, 191);
	snap_take(NS_ROOT_INO, "src.img@s");
	s = open_file(path_ino(".snapshots/src.img@s/src.img"), O_RDONLY);
	cl = make_vol(NS_ROOT_INO, "dst.img");
	c = open_file(cl, O_RDWR);
	cr_assert_eq(ns_copy_range(g_ns, s, 0, c, 0, 4 * 4096), 4 * 4096);
	cr_assert_eq(ns_fsync(g_ns, c), 0);
	cr_assert_eq(ns_setattr(g_ns, cl, &a, NS_SET_SIZE, &a), 0);
	a.size = 4 * 4096;                      /* where the clone stopped */
	cr_assert_eq(ns_setattr(g_ns, cl, &a, NS_SET_SIZE, &a), 0);
	cr_assert_eq(ns_fsync(g_ns, c), 0);
	cr_assert_eq(ns_copy_range(g_ns, s, 4 * 4096, c, 4 * 4096, 4 * 4096), 4 * 4096);
	expect_pattern(c, 4096, 0, 191, "block 0, kept");
	expect(c, NULL, 3 * 4096, 4096, "blocks 1-3, cut");
	expect_pattern(c, 4 * 4096, 4 * 4096, 191, "blocks 4-7, copied");
	ns_release(g_ns, s);
	ns_release(g_ns, c);
	ns_release(g_ns, f);
}

Test(ns, clone_of_a_live_volume_freezes_it_so_later_writes_do_not_show_in_the_clone)
{
	uint64_t src = make_vol(NS_ROOT_INO, "live.img"), bytes;
	struct ns_file *f = open_file(src, O_RDWR), *c;

	put_pattern(f, 64 * 4096, 0, 91);
	c = open_file(make_vol(NS_ROOT_INO, "copy.img"), O_RDWR);
	bytes = chunk_bytes();
	cr_assert_eq(copy_all(f, 64 * 4096, c), 64 * 4096);
	cr_assert_eq(chunk_bytes(), bytes, "cloning a live volume copied data");
	put_pattern(f, 64 * 4096, 0, 92);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	expect_pattern(c, 64 * 4096, 0, 91, "the clone");
	expect_pattern(f, 64 * 4096, 0, 92, "the source");
	ns_release(g_ns, c);
	ns_release(g_ns, f);
}

Test(ns, revert_by_truncate_and_copy_range_brings_the_snapshot_back_without_copying)
{
	const uint64_t size = 200 * 4096;
	uint64_t ino = make_vol(NS_ROOT_INO, "disk.img"), bytes;
	struct ns_attr a = { .size = 0 };
	struct ns_file *f = open_file(ino, O_RDWR), *s;

	put_pattern(f, size, 0, 101);
	snap_take(NS_ROOT_INO, "disk.img@good");
	put_pattern(f, size / 2, 1000, 102);    /* the change to undo */
	put_pattern(f, 10, size + 5, 103);      /* and it grew */
	cr_assert_eq(ns_fsync(g_ns, f), 0);

	/* cp .snapshots/disk.img@good/disk.img disk.img: O_TRUNC, then copy_file_range */
	bytes = chunk_bytes();
	cr_assert_eq(ns_setattr(g_ns, ino, &a, NS_SET_SIZE, &a), 0);
	cr_assert_eq(a.size, 0);
	s = open_file(path_ino(".snapshots/disk.img@good/disk.img"), O_RDONLY);
	cr_assert_eq(copy_all(s, size, f), size);
	ns_release(g_ns, s);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	cr_assert_eq(chunk_bytes(), bytes, "a revert wrote data");
	cr_assert_eq(size_of(ino), size);
	expect_pattern(f, size, 0, 101, "reverted");

	/* the reverted volume is writable, and the snapshot stays as it was */
	put_pattern(f, 3, 0, 104);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	ns_release(g_ns, f);
	close_store();
	open_store();
	f = open_file(ino, O_RDONLY);
	expect_pattern(f, 3, 0, 104, "reverted, then written, after reopen");
	expect_pattern(f, size - 3, 3, 101, "reverted, after reopen");
	ns_release(g_ns, f);
	s = open_file(path_ino(".snapshots/disk.img@good/disk.img"), O_RDONLY);
	expect_pattern(s, size, 0, 101, "the snapshot after the revert");
	ns_release(g_ns, s);
}

Test(ns, copy_range_at_other_offsets_copies_the_bytes)
{
	uint64_t a = make_vol(NS_ROOT_INO, "a.img"), b = make_vol(NS_ROOT_INO, "b.img");
	struct ns_file *fa = open_file(a, O_RDWR), *fb = open_file(b, O_RDWR);
	uint8_t *p = pattern(10000, 500, 111);

	put_pattern(fa, 20000, 0, 111);
	put_pattern(fb, 100, 0, 112);
	cr_assert_eq(ns_copy_range(g_ns, fa, 500, fb, 3, 10000), 10000);
	expect_pattern(fb, 3, 0, 112, "before the copy");
	expect(fb, p, 10000, 3, "the copied bytes");
	cr_assert_eq(size_of(b), 10003);
	cr_assert_eq(ns_copy_range(g_ns, fa, 19990, fb, 0, 100), 10, "clipped at the source's end");
	cr_assert_eq(ns_copy_range(g_ns, fa, 20000, fb, 0, 100), 0, "nothing past the end");
	free(p);
	ns_release(g_ns, fa);
	ns_release(g_ns, fb);
}

/* ---- flush and garbage collection ---------------------------------------------------------- */

Test(ns, gc_removes_the_chunks_of_deleted_data_and_compacts_mostly_dead_ones)
{
	uint64_t ids[16], a, b;
	struct ns_file *fa, *fb;
	struct ns_attr at;

	/* every open of the store starts a new chunk file: one each for a and b */
	a = make_vol(NS_ROOT_INO, "a.img");
	fa = open_file(a, O_RDWR);
	put_pattern(fa, 40 * 4096, 0, 121);
	ns_release(g_ns, fa);
	close_store();
	open_store();
	b = make_vol(NS_ROOT_INO, "b.img");
	fb = open_file(b, O_RDWR);
	put_pattern(fb, 40 * 4096, 0, 122);
	ns_release(g_ns, fb);
	close_store();
	open_store();
	cr_assert_eq(chunk_files(ids, 16, NULL), 2);

	/* a's data is dead once a is deleted: its chunk file goes */
	cr_assert_eq(ns_unlink(g_ns, NS_ROOT_INO, "a.img"), 0);
	cr_assert_eq(test_reap(g_ns), 0);
	cr_assert_eq(ns_getattr(g_ns, a, &at), -ENOENT);
	cr_assert_eq(test_gc_pass(g_ns), 1, "the pass found nothing to do");
	cr_assert(!chunk_exists(ids[0]), "the chunk of the deleted volume is still there");
	cr_assert(chunk_exists(ids[1]));

	/* 30 of b's 40 blocks rewritten: its old chunk is a quarter live and is
	 * compacted, the 10 live blocks moved, while b stays open */
	fb = open_file(b, O_RDWR);
	expect_pattern(fb, 40 * 4096, 0, 122, "b, loaded before the pass");
	put_pattern(fb, 30 * 4096, 5 * 4096, 123);
	cr_assert_eq(test_gc_pass(g_ns), 1, "the pass found nothing to do");
	cr_assert(!chunk_exists(ids[1]), "the mostly dead chunk was not compacted");
	expect_pattern(fb, 5 * 4096, 0, 122, "b's moved blocks, read through the open handle");
	expect_pattern(fb, 30 * 4096, 5 * 4096, 123, "b's rewritten blocks");
	expect_pattern(fb, 5 * 4096, 35 * 4096, 122, "b's moved blocks at the end");
	cr_assert_eq(test_gc_pass(g_ns), 0, "a second pass still found work");
	ns_release(g_ns, fb);
	close_store();
	open_store();
	fb = open_file(b, O_RDONLY);
	expect_pattern(fb, 5 * 4096, 0, 122, "b's moved blocks after reopen");
	expect_pattern(fb, 30 * 4096, 5 * 4096, 123, "b's rewritten blocks after reopen");
	expect_pattern(fb, 5 * 4096, 35 * 4096, 122, "b's moved blocks at the end after reopen");
	ns_release(g_ns, fb);
}

Test(ns, gc_keeps_blocks_that_only_a_snapshot_still_uses_and_frees_them_after_rmdir)
{
	uint64_t ids[16], v;
	struct ns_file *f, *s;

	v = make_vol(NS_ROOT_INO, "v.img");
	f = open_file(v, O_RDWR);
	put_pattern(f, 20 * 4096, 0, 131);
	snap_take(NS_ROOT_INO, "v.img@old");
	ns_release(g_ns, f);
	close_store();
	open_store();
	cr_assert_eq(chunk_files(ids, 16, NULL), 1);
	f = open_file(v, O_RDWR);
	put_pattern(f, 20 * 4096, 0, 132);      /* the live volume no longer uses them */
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	cr_assert_geq(test_gc_pass(g_ns), 0);
	cr_assert(chunk_exists(ids[0]), "GC removed blocks a snapshot uses");
	s = open_file(path_ino(".snapshots/v.img@old/v.img"), O_RDONLY);
	expect_pattern(s, 20 * 4096, 0, 131, "the snapshot after GC");
	ns_release(g_ns, s);

	cr_assert_eq(ns_rmdir(g_ns, lookup(NS_ROOT_INO, ".snapshots"), "v.img@old"), 0);
	cr_assert_eq(test_reap(g_ns), 0);       /* releases (merges) its node */
	cr_assert_eq(test_gc_pass(g_ns), 1);
	cr_assert(!chunk_exists(ids[0]), "the deleted snapshot's chunk is still there");
	expect_pattern(f, 20 * 4096, 0, 132, "the live volume after GC");
	ns_release(g_ns, f);
}

/*
 * v.img: 64 blocks written at once with seed a (one extent in chunk 1,
 * sealed by a reopen), then blocks 8-55 rewritten with seed b and fsynced.
 * The extent is split: [0, 8) and [56, 64) stay live in chunk 1, the slots
 * between are dead; a quarter live, so a GC pass compacts it.  Returns v
 * open for writing; *ino its inode, *chunk1 the old chunk's id.
 */
static struct ns_file *split_volume(uint64_t a, uint64_t b, uint64_t *ino, uint64_t *chunk1)
{
	struct ns_file *f;

	*ino = make_vol(NS_ROOT_INO, "v.img");
	f = open_file(*ino, O_RDWR);
	put_pattern(f, 64 * 4096, 0, a);
	ns_release(g_ns, f);
	close_store();
	open_store();
	cr_assert_eq(chunk_files(chunk1, 1, NULL), 1);
	f = open_file(*ino, O_RDWR);
	put_pattern(f, 48 * 4096, 8 * 4096, b);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	return f;
}

/*
 * The hook of the test below: between a GC pass's copies and its repoint,
 * block 2 of f is rewritten, fsynced and checkpointed, so that the row the
 * pass scanned ([0, 8) in the old chunk) is split in the index before the
 * pass repoints it.
 */
struct gc_race {
	struct ns_file *f;
	int calls;
};

static void gc_race_write(void *ctx)
{
	struct gc_race *r = ctx;

	if (r->calls++)
		return;
	put_pattern(r->f, 4096, 2 * 4096, 153);
	cr_assert_eq(ns_fsync(g_ns, r->f), 0);
	cr_assert_eq(test_reap(g_ns), 0);       /* the checkpoint: now in the index */
}

/* Blocks 0-1 and 3-7 and 56-63 of seed 151, 8-55 of 152, 2 of 153. */
static void expect_gc_race(struct ns_file *f, const char *what)
{
	char w[160];

	snprintf(w, sizeof(w), "%s: blocks 0-1", what);
	expect_pattern(f, 2 * 4096, 0, 151, w);
	snprintf(w, sizeof(w), "%s: block 2, written between the copy and the repoint", what);
	expect_pattern(f, 4096, 2 * 4096, 153, w);
	snprintf(w, sizeof(w), "%s: blocks 3-7", what);
	expect_pattern(f, 5 * 4096, 3 * 4096, 151, w);
	snprintf(w, sizeof(w), "%s: blocks 8-55", what);
	expect_pattern(f, 48 * 4096, 8 * 4096, 152, w);
	snprintf(w, sizeof(w), "%s: blocks 56-63", what);
	expect_pattern(f, 8 * 4096, 56 * 4096, 151, w);
}

Test(ns, a_relocation_that_loses_to_a_checkpointed_write_keeps_the_new_data_and_the_old_chunk)
{
	struct gc_race r = { 0 };
	struct ns_gc_stats st;
	uint64_t ids[1], v;
	struct ns_file *f = split_volume(151, 152, &v, ids);

	r.f = f;
	test_gc_hook(g_ns, gc_race_write, &r);
	cr_assert_eq(test_gc_pass_stats(g_ns, &st), 1, "the pass found nothing to do");
	test_gc_hook(g_ns, NULL, NULL);
	cr_assert_eq(r.calls, 1, "the hook ran %d times", r.calls);
	cr_assert_eq(st.relocates, 2, "%" PRIu64 " relocates for two pieces", st.relocates);
	cr_assert_eq(st.lost, 1, "%" PRIu64 " relocates lost; [0, 8) should have", st.lost);
	cr_assert_eq(st.moved, 8, "%" PRIu64 " blocks moved; only [56, 64) should be", st.moved);
	cr_assert(chunk_exists(ids[0]), "the old chunk was removed while [0, 2) and [3, 8) "
		  "still live there");
	expect_gc_race(f, "after the pass, through the open handle");
	ns_release(g_ns, f);
	close_store();
	open_store();
	f = open_file(v, O_RDONLY);
	expect_gc_race(f, "after a reopen");

	/* a later pass moves what is left, and the chunk goes */
	cr_assert_eq(test_gc_pass_stats(g_ns, &st), 1, "the second pass found nothing to do");
	cr_assert_eq(st.lost, 0);
	cr_assert_eq(st.moved, 7, "%" PRIu64 " blocks moved; [0, 2) and [3, 8) should be",
		     st.moved);
	cr_assert(!chunk_exists(ids[0]), "the old chunk is still there after the second pass");
	expect_gc_race(f, "after the second pass");
	ns_release(g_ns, f);
	close_store();
	open_store();
	f = open_file(v, O_RDONLY);
	expect_gc_race(f, "after the second pass and a reopen");
	ns_release(g_ns, f);
}

/*
 * A volume written in 1 MiB writes, then in every group of 4p blocks all
 * but the first p rewritten: its old chunks hold pieces of p live blocks
 * with 3p dead slots between, a quarter live.  One pass must copy each
 * piece as one run: one read and one relocate per piece.  The size and p
 * come from VSNAPFS_BENCH_GC_MIB (16) and VSNAPFS_BENCH_GC_PIECE (4); the
 * line it prints is the measurement of docs/performance.md, "GC copies
 * runs".
 */
static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *e = getenv(name);

	return e && *e ? strtoull(e, NULL, 0) : dflt;
}

static int64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

Test(ns, gc_copies_each_live_piece_of_a_split_extent_as_one_run)
{
	uint64_t mib = env_u64("VSNAPFS_BENCH_GC_MIB", 16), p = env_u64("VSNAPFS_BENCH_GC_PIECE", 4);
	uint64_t nblocks = mib << 8, pieces = nblocks / (4 * p), v;
	struct ns_gc_stats st;
	struct ns_file *f;
	int64_t t, cpu;

	cr_assert(p >= 1 && nblocks % (4 * p) == 0 && nblocks / 4 <= (64u << 20) / 4096);
	v = make_vol(NS_ROOT_INO, "v.img");
	f = open_file(v, O_RDWR);
	for (uint64_t off = 0; off < nblocks * 4096; off += 1 << 20)
		put_pattern(f, 1 << 20, off, 161);
	ns_release(g_ns, f);
	close_store();
	open_store();
	f = open_file(v, O_RDWR);
	for (uint64_t g = 0; g < pieces; g++)
		put_pattern(f, 3 * p * 4096, (g * 4 + 1) * p * 4096, 162);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	cr_assert_eq(test_reap(g_ns), 0);       /* out of the way of the timing */

	t = ns_now_ns();
	cpu = thread_cpu_ns();
	cr_assert_eq(test_gc_pass_stats(g_ns, &st), 1, "the pass found nothing to do");
	cpu = thread_cpu_ns() - cpu;
	t = ns_now_ns() - t;
	fprintf(stderr, "gc of %" PRIu64 " MiB in pieces of %" PRIu64 " blocks: %" PRIu64
		" live blocks in %" PRIu64 " pieces moved in %.3f s, %.3f s of CPU (copy %.3f s,"
		" sync %.3f s, repoint %.3f s):"
		" %" PRIu64 " reads, %" PRIu64 " appends, %" PRIu64 " relocates\n", mib, p,
		st.moved, pieces, t / 1e9, cpu / 1e9, st.copy_ns / 1e9, st.sync_ns / 1e9, st.repoint_ns / 1e9,
		st.reads,
		st.appends, st.relocates);
	cr_assert_eq(st.moved, nblocks / 4);
	/* a piece that crosses the end of the active chunk is two runs */
	cr_assert_leq(st.relocates, pieces + 1, "%" PRIu64 " relocates for %" PRIu64 " pieces",
		     st.relocates, pieces);
	cr_assert_leq(st.reads, pieces, "%" PRIu64 " reads for %" PRIu64 " pieces", st.reads,
		     pieces);
	cr_assert_eq(test_gc_pass_stats(g_ns, &st), 0, "a second pass still found work");
	ns_release(g_ns, f);
	close_store();
	open_store();
	f = open_file(v, O_RDONLY);
	for (uint64_t g = 0; g < pieces; g++) {
		expect_pattern(f, p * 4096, g * 4 * p * 4096, 161, "a moved piece");
		expect_pattern(f, 3 * p * 4096, (g * 4 + 1) * p * 4096, 162, "a rewritten part");
	}
	ns_release(g_ns, f);
}

/* A live piece whose copy crosses the end of the active chunk lands in two
 * chunks: two relocates, each naming its own chunk (gc.c, runs_landed;
 * a review found no test reached it).  The active chunk is filled to
 * about 50 slots from its end, and the piece is 96 blocks. */
Test(ns, gc_splits_a_copy_that_crosses_the_end_of_the_active_chunk)
{
	const uint64_t piece = 96, filler = CHUNK_NSLOTS(4096) - 160 - 50;
	struct ns_gc_stats st;
	struct ns_file *f, *w;
	uint64_t v, wv;

	v = make_vol(NS_ROOT_INO, "v.img");
	f = open_file(v, O_RDWR);
	put_pattern(f, 256 * 4096, 0, 171);
	ns_release(g_ns, f);
	close_store();
	open_store();                   /* its chunk is sealed now */
	f = open_file(v, O_RDWR);
	put_pattern(f, (256 - piece) * 4096, piece * 4096, 172);
	wv = make_vol(NS_ROOT_INO, "w.img");
	w = open_file(wv, O_RDWR);
	for (uint64_t b = 0; b < filler; b += 256) {
		uint64_t n = filler - b < 256 ? filler - b : 256;

		put_pattern(w, n * 4096, b * 4096, 173 + b);
	}
	cr_assert_eq(test_gc_pass_stats(g_ns, &st), 1, "the pass failed or found nothing to do");
	cr_assert_eq(st.moved, piece);
	cr_assert_eq(st.reads, 1);
	cr_assert_eq(st.relocates, 2, "%" PRIu64 " relocates: the copy did not cross the chunk's end"
		     " (the filler needs adjusting) or was not split", st.relocates);
	ns_release(g_ns, f);
	ns_release(g_ns, w);
	close_store();
	open_store();
	f = open_file(v, O_RDONLY);
	expect_pattern(f, piece * 4096, 0, 171, "the moved piece");
	expect_pattern(f, (256 - piece) * 4096, piece * 4096, 172, "the rewritten part");
	ns_release(g_ns, f);
	w = open_file(wv, O_RDONLY);
	expect_pattern(w, 256 * 4096, 0, 173, "the filler's first MiB");
	ns_release(g_ns, w);
}

/* ---- defrag (-o defrag) ---- */

/* Extent rows of ino's node. */
static uint64_t node_rows(uint64_t ino)
{
	struct bmap_inode in;
	uint64_t n;

	cr_assert_eq(bmap_inode_get(test_bm(g_ns), ino, &in), 0);
	cr_assert_eq(bmap_node_extents(test_bm(g_ns), in.node, &n), 0);
	return n;
}

/* v.img: 256 blocks written one at a time from the last to the first, in
 * one flush: consecutive slots hold descending blocks, so every block is
 * a row of its own (as random writes leave them).  Sealed by a reopen. */
static uint64_t write_backwards(void)
{
	uint64_t v = make_vol(NS_ROOT_INO, "v.img");
	struct ns_file *f = open_file(v, O_RDWR);

	for (int b = 255; b >= 0; b--)
		put_pattern(f, 4096, (uint64_t)b * 4096, 191);
	ns_release(g_ns, f);
	close_store();
	open_store();
	cr_assert_eq(node_rows(v), 256);
	return v;
}

Test(ns, with_defrag_gc_rewrites_a_window_of_a_row_per_block_as_one_row)
{
	struct ns_gc_stats st;
	uint64_t ids[1], v;
	struct ns_file *f;

	close_store();
	g_opts.defrag_min_exts = NS_DEFRAG_MIN_EXTS;
	open_store();
	v = write_backwards();
	cr_assert_eq(chunk_files(ids, 1, NULL), 1);
	cr_assert_eq(test_gc_pass_stats(g_ns, &st), 1, "the pass found nothing to do");
	cr_assert_eq(st.defrag_windows, 1);
	cr_assert_eq(st.moved, 256);
	cr_assert_eq(node_rows(v), 1, "%" PRIu64 " rows after defrag", node_rows(v));
	cr_assert(!chunk_exists(ids[0]), "the chunk the window left is still there");
	f = open_file(v, O_RDONLY);
	expect_pattern(f, 256 * 4096, 0, 191, "after defrag");
	ns_release(g_ns, f);
	cr_assert_eq(test_gc_pass_stats(g_ns, &st), 0, "a second pass still found work");
	close_store();
	open_store();
	f = open_file(v, O_RDONLY);
	expect_pattern(f, 256 * 4096, 0, 191, "after defrag and a reopen");
	ns_release(g_ns, f);
}

/* Every other block of a window written: 128 rows that copies cannot
 * merge (their blocks are not adjacent).  Defrag must leave them alone,
 * not rewrite them in every pass for ever (found by a review: 640 blocks
 * moved in 5 passes for 128 live). */
Test(ns, with_defrag_gc_leaves_a_window_that_rewriting_would_not_merge)
{
	struct ns_gc_stats st;
	uint64_t v;
	struct ns_file *f;

	close_store();
	g_opts.defrag_min_exts = NS_DEFRAG_MIN_EXTS;
	open_store();
	v = make_vol(NS_ROOT_INO, "v.img");
	f = open_file(v, O_RDWR);
	for (int b = 254; b >= 0; b -= 2)
		put_pattern(f, 4096, (uint64_t)b * 4096, 191);
	ns_release(g_ns, f);
	close_store();
	open_store();
	cr_assert_eq(node_rows(v), 128);
	for (int pass = 0; pass < 3; pass++) {
		test_gc_pass_stats(g_ns, &st);
		cr_assert_eq(st.defrag_windows, 0, "pass %d rewrote the window", pass);
		cr_assert_eq(st.moved, 0, "pass %d moved %" PRIu64 " blocks", pass, st.moved);
	}
	cr_assert_eq(node_rows(v), 128);
}

Test(ns, without_defrag_gc_leaves_a_fragmented_window_alone)
{
	uint64_t v;

	close_store();
	g_opts.defrag_min_exts = 0;
	open_store();
	v = write_backwards();

	cr_assert_eq(test_gc_pass(g_ns), 0);
	cr_assert_eq(node_rows(v), 256);
}

static void crash_after_flush_pass(void)
{
	struct ns_file *f = child_volume("v.img");

	child_write(f, 5000, 0, 141);
	ns_release(g_ns, f);                    /* no fsync: the volume stays cached, dirty */
	child_check(test_flush(g_ns), 0, "flush");
}

Test(ns, a_flush_pass_commits_the_changes_of_volumes_already_closed)
{
	struct ns_file *f;

	close_store();
	in_crashing_child(crash_after_flush_pass);
	open_store();
	f = open_file(lookup(NS_ROOT_INO, "v.img"), O_RDONLY);
	cr_assert_eq(size_of(lookup(NS_ROOT_INO, "v.img")), 5000);
	expect_pattern(f, 5000, 0, 141, "flushed before the crash");
	ns_release(g_ns, f);
}

/* ---- the log: crash recovery ---------------------------------------------------------------- */

/*
 * Two fsyncs and a crash: A (blocks 0-3) is in batch 1, B (blocks 4-7) in
 * batch 2, the last one.  Neither reached the index (no checkpoint ran: the
 * background thread is off), so the next open replays both from the log.
 */
static void crash_after_two_fsyncs(void)
{
	struct ns_file *f = child_volume("log.img");

	child_write(f, 4 * 4096, 0, 171);
	child_check(ns_fsync(g_ns, f), 0, "fsync A");
	child_write(f, 4 * 4096, 4 * 4096, 172);
	child_check(ns_fsync(g_ns, f), 0, "fsync B");
}

/* Call fn on the file offset of every slot of the store's chunk files
 * whose entry has the given kind (and, for data, an lblock in [lo, hi)). */
static int for_slots(uint8_t kind, uint64_t lo, uint64_t hi,
		     void (*fn)(const char *path, off_t off, void *ctx), void *ctx)
{
	char dir[400], path[450];
	struct chunk_store *cs;
	struct chunk_entry *e = calloc(CHUNK_NSLOTS(4096), sizeof(*e));
	int n = 0;

	snprintf(dir, sizeof(dir), "%s/chunks", g_store);
	cr_assert_eq(chunk_store_open(dir, 4096, 1, &cs), 0);
	for (uint64_t id = 1; id < 16; id++) {
		snprintf(path, sizeof(path), "%s/%016" PRIx64 ".chunk", dir, id);
		if (access(path, F_OK))
			continue;
		cr_assert_eq(chunk_entries_read(cs, id, 0, CHUNK_NSLOTS(4096), e), 0);
		for (uint32_t i = 0; i < CHUNK_NSLOTS(4096); i++)
			if (e[i].kind == kind && (kind == CHUNK_KIND_LOG ||
						  (e[i].lblock >= lo && e[i].lblock < hi))) {
				fn(path, (off_t)CHUNK_DATA_OFF(4096) + (off_t)i * 4096, ctx);
				n++;
			}
	}
	chunk_store_close(cs);
	free(e);
	return n;
}

/* A power cut that kept the log page but lost these blocks' payloads. */
static void zero_slot(const char *path, off_t off, void *ctx)
{
	int fd = open(path, O_WRONLY);

	cr_assert_geq(fd, 0);
	cr_assert_eq(pwrite(fd, (uint8_t[4096]){ 0 }, 4096, off), 4096);
	close(fd);
}

/* Break a batch of a LOG slot (its trailer), as a torn write or a bad
 * sector does.  ctx: int[3]: which batch (0 the first, -1 the last), the
 * LOG slots seen so far (counted here), and which of them to break (-1:
 * each). */
static void tear_batch(const char *path, off_t off, void *ctx)
{
	uint8_t slot[4096];
	int fd;
	size_t pos = 0, ends[64];
	int *which = ctx, n = 0, k;

	if (which[2] >= 0 && which[1]++ != which[2])
		return;
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pread(fd, slot, 4096, off), 4096);
	while (pos + 8 < 4096 && slot[pos] && n < 64) {
		/* find the batches by their length field (any chunk id) */
		uint32_t len = slot[pos + 4] | slot[pos + 5] << 8 | slot[pos + 6] << 16;

		cr_assert_gt(len, 0);
		pos += len;
		ends[n++] = pos;
	}
	cr_assert_gt(n, 0, "no batch in the log slot");
	k = which[0] < 0 ? n - 1 : which[0];
	cr_assert_lt(k, n);
	slot[ends[k] - 1] ^= 0xff;
	cr_assert_eq(pwrite(fd, slot, 4096, off), 4096);
	close(fd);
}

static struct ns_file *reopen_log_img(void)
{
	open_store();
	return open_file(lookup(NS_ROOT_INO, "log.img"), O_RDONLY);
}

Test(ns, recovery_replays_every_fsynced_batch_and_without_the_log_they_are_lost)
{
	struct ns_file *f;

	close_store();
	in_crashing_child(crash_after_two_fsyncs);
	f = reopen_log_img();
	cr_assert_eq(size_of(lookup(NS_ROOT_INO, "log.img")), 8 * 4096);
	expect_pattern(f, 4 * 4096, 0, 171, "A, from the log");
	expect_pattern(f, 4 * 4096, 4 * 4096, 172, "B, from the log");
	ns_release(g_ns, f);

	/* the same crash with the log pages wiped: the index alone has
	 * neither write (so it was the log that brought them back) */
	close_store();
	cr_assert_eq(unlink_tree_store(), 0);
	open_store();
	close_store();
	in_crashing_child(crash_after_two_fsyncs);
	cr_assert_gt(for_slots(CHUNK_KIND_LOG, 0, 0, zero_slot, NULL), 0);
	f = reopen_log_img();
	cr_assert_eq(size_of(lookup(NS_ROOT_INO, "log.img")), 0);
	ns_release(g_ns, f);
}

Test(ns, recovery_drops_the_blocks_of_the_last_flush_that_never_reached_the_disk)
{
	struct ns_file *f;

	close_store();
	in_crashing_child(crash_after_two_fsyncs);
	/* B's log page is on disk, its payloads are not */
	cr_assert_eq(for_slots(CHUNK_KIND_DATA, 4, 8, zero_slot, NULL), 4);
	f = reopen_log_img();
	expect_pattern(f, 4 * 4096, 0, 171, "A");
	expect(f, NULL, 4 * 4096, 4 * 4096, "B's blocks read as before it: a hole");
	ns_release(g_ns, f);
}

/* st_blocks of a volume, in blocks of 4096 bytes. */
static uint64_t blocks_of(uint64_t ino)
{
	struct ns_attr a;
	int rc = ns_getattr(g_ns, ino, &a);

	cr_assert_eq(rc, 0, "getattr %" PRIx64 ": %d", ino, rc);
	return a.blocks / 8;
}

/* The store closed: forget every referenced-block count, as in a store
 * made before they were kept. */
static void forget_refs(void)
{
	char path[400];
	sqlite3 *db;

	snprintf(path, sizeof(path), "%s/index.sqlite", g_store);
	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(db, "DELETE FROM refblocks", NULL, NULL, NULL), SQLITE_OK);
	cr_assert_gt(sqlite3_changes(db), 0, "no count was kept");
	sqlite3_close(db);
}

static uint64_t node_of(uint64_t ino)
{
	struct ns_file *f = open_file(ino, O_RDONLY);
	uint64_t node = f->in.node;

	ns_release(g_ns, f);
	return node;
}

/* Nodes without a count (made before, or by a recovery that dropped
 * blocks) show their own blocks until the background counts them: from
 * the chain in the index, or, for a volume in use, by its vol (the index
 * lags behind it), whose next flush writes the count. */
Test(ns, referenced_blocks_missing_from_the_index_are_counted_from_the_chain)
{
	uint64_t ino = make_vol(NS_ROOT_INO, "v.img"), have;
	struct ns_file *f = open_file(ino, O_RDWR);

	put_pattern(f, 8 * 4096, 0, 1);
	snap_take(NS_ROOT_INO, "v.img@s");
	put_pattern(f, 2 * 4096, 4 * 4096, 2);                  /* own, was shared: 8 */
	put(f, (uint8_t[4096]){ 0 }, 4096, 7 * 4096);           /* a shared one zeroed: 7 */
	put_pattern(f, 2 * 4096, 10 * 4096, 3);                 /* two new ones: 9 */
	cr_assert_eq(blocks_of(ino), 9, "referenced blocks, counted as they change");
	ns_release(g_ns, f);
	close_store();
	open_store();
	cr_assert_eq(blocks_of(ino), 9, "referenced blocks, kept in the index");
	close_store();

	forget_refs();
	open_store();
	cr_assert_eq(blocks_of(ino), 4, "not counted: its own blocks");
	f = open_file(ino, O_RDWR);
	put_pattern(f, 4096, 20 * 4096, 4);                     /* one more: 10 */
	cr_assert_eq(blocks_of(ino), 5, "not counted: its own blocks");
	ns_refs_count_all(g_ns);
	cr_assert_eq(blocks_of(ino), 10, "a volume in use, counted by its vol");
	cr_assert_eq(bmap_refs_get(g_ns->bm, f->in.node, &have), -ENOENT,
		     "the count of a volume in use reaches the index with its next flush");
	cr_assert_eq(bmap_refs_get(g_ns->bm, node_of(path_ino(".snapshots/v.img@s/v.img")), &have),
		     0, "the snapshot's node, counted from the index");
	cr_assert_eq(have, 8);
	ns_release(g_ns, f);
	close_store();
	open_store();
	cr_assert_eq(blocks_of(ino), 10, "the count its flush wrote");
	close_store();

	forget_refs();
	open_store();
	cr_assert_gt(ns_refs_count_all(g_ns), 0);
	cr_assert_eq(blocks_of(ino), 10, "a volume not in use, counted from the chain");
	close_store();

	/* a volume open and never written: its count is written all the same */
	forget_refs();
	open_store();
	f = open_file(ino, O_RDONLY);
	ns_refs_count_all(g_ns);
	cr_assert_eq(blocks_of(ino), 10, "a clean volume in use, counted by its vol");
	ns_release(g_ns, f);
	close_store();
	open_store();
	cr_assert_eq(bmap_refs_get(g_ns->bm, node_of(ino), &have), 0,
		     "the count of a clean volume reached the index");
	cr_assert_eq(have, 10);
}

/* The I/O counters of deleted volumes do not pile up when nobody asks for
 * an iostat report: the table is pruned when it has doubled. */
Test(ns, counters_of_deleted_volumes_are_pruned_without_a_report)
{
	char name[32];

	g_ns->vstats_prune_min = 8;
	for (int i = 0; i < 200; i++) {
		uint64_t ino;

		snprintf(name, sizeof(name), "v%d.img", i);
		ino = make_vol(NS_ROOT_INO, name);
		ns_release(g_ns, open_file(ino, O_RDWR));
		cr_assert_eq(ns_unlink(g_ns, NS_ROOT_INO, name), 0);
	}
	lock_mutex_lock(&g_ns->stats_mu);
	cr_assert_leq(g_ns->nvstats, 16, "%zu entries for 200 deleted volumes", g_ns->nvstats);
	lock_mutex_unlock(&g_ns->stats_mu);
}

/* A directory with snapshots is not empty: neither rmdir nor a rename over
 * it may take it (its snapshots would be lost with it). */
Test(ns, a_rename_over_a_directory_with_snapshots_is_refused)
{
	uint64_t a = make_dir(NS_ROOT_INO, "a"), b = make_dir(NS_ROOT_INO, "b");

	(void)a;
	make_vol(b, "x.img");
	snap_take(b, "s1");
	cr_assert_eq(ns_unlink(g_ns, b, "x.img"), 0);
	cr_assert_eq(ns_rmdir(g_ns, NS_ROOT_INO, "b"), -ENOTEMPTY, "rmdir of b");
	cr_assert_eq(ns_rename(g_ns, NS_ROOT_INO, "a", NS_ROOT_INO, "b", 0), -ENOTEMPTY,
		     "a rename over b");
	cr_assert_eq(lookup(lookup(b, ".snapshots"), "s1") != 0, true, "b's snapshot is there");
	close_store();
	open_store();
	cr_assert_eq(lookup_rc(lookup(NS_ROOT_INO, "b"), ".snapshots"), 0);
	cr_assert_eq(lookup_rc(lookup(lookup(NS_ROOT_INO, "b"), ".snapshots"), "s1"), 0,
		     "b's snapshot after a reopen");
}

Test(ns, recovery_forgets_the_count_of_a_volume_whose_blocks_it_dropped)
{
	struct ns_file *f;
	uint64_t have, ino;

	close_store();
	in_crashing_child(crash_after_two_fsyncs);
	cr_assert_eq(for_slots(CHUNK_KIND_DATA, 4, 8, zero_slot, NULL), 4);
	f = reopen_log_img();
	ino = lookup(NS_ROOT_INO, "log.img");
	cr_assert_eq(bmap_refs_get(g_ns->bm, f->in.node, &have), -ENOENT,
		     "the count in the log included the dropped blocks");
	ns_release(g_ns, f);
	close_store();
	open_store();
	ns_refs_count_all(g_ns);
	cr_assert_eq(blocks_of(ino), 4, "A's blocks, counted again");
}

Test(ns, recovery_keeps_a_synced_batch_whose_block_is_damaged_and_it_reads_eio)
{
	uint8_t buf[4096];
	struct ns_file *f;

	close_store();
	in_crashing_child(crash_after_two_fsyncs);
	/* A was synced before B was written: damage, not a lost write */
	cr_assert_eq(for_slots(CHUNK_KIND_DATA, 1, 2, zero_slot, NULL), 1);
	f = reopen_log_img();
	cr_assert_eq(ns_read(g_ns, f, buf, 4096, 4096), -EIO, "a damaged synced block");
	expect_pattern(f, 4096, 0, 171, "A's other blocks");
	expect_pattern(f, 4 * 4096, 4 * 4096, 172, "B");
	ns_release(g_ns, f);
}

Test(ns, recovery_stops_before_a_torn_last_batch)
{
	struct ns_file *f;
	int torn[3] = { -1, 0, -1 };

	close_store();
	in_crashing_child(crash_after_two_fsyncs);
	cr_assert_eq(for_slots(CHUNK_KIND_LOG, 0, 0, tear_batch, torn), 1);
	f = reopen_log_img();
	cr_assert_eq(size_of(lookup(NS_ROOT_INO, "log.img")), 4 * 4096, "B's batch was applied");
	expect_pattern(f, 4 * 4096, 0, 171, "A");
	ns_release(g_ns, f);
}

/* A write, its fsync, then the times set (cp -p, tar x, rsync -t). */
static void crash_after_utimens(void)
{
	struct ns_file *f = child_volume("times.img");
	struct ns_attr a = { .mtime_ns = 946684800LL * 1000000000, .atime_ns = 1 }, out;

	child_write(f, 4096, 0, 181);
	child_check(ns_fsync(g_ns, f), 0, "fsync");
	child_check(ns_setattr(g_ns, f->ino, &a, NS_SET_MTIME | NS_SET_ATIME, &out), 0, "setattr");
	child_check(out.mtime_ns == a.mtime_ns, 1, "mtime after setattr");
}

Test(ns, times_set_after_an_fsync_survive_a_crash_and_the_replay_of_the_log)
{
	struct ns_attr a;

	close_store();
	in_crashing_child(crash_after_utimens);
	open_store();
	cr_assert_eq(ns_getattr(g_ns, lookup(NS_ROOT_INO, "times.img"), &a), 0);
	cr_assert_eq(a.mtime_ns, 946684800LL * 1000000000, "the write's batch put back its time");
	cr_assert_eq(a.size, 4096);
}

/* As crash_after_two_fsyncs, but B is 120 blocks apart from each other
 * (every other one from block 16): its batch does not fit in the first
 * LOG slot after A's and starts slots of its own. */
static void crash_after_two_fsyncs_b_apart(void)
{
	struct ns_file *f = child_volume("log.img");

	child_write(f, 4 * 4096, 0, 171);
	child_check(ns_fsync(g_ns, f), 0, "fsync A");
	for (uint64_t b = 16; b < 16 + 240; b += 2)
		child_write(f, 4096, b * 4096, 172);
	child_check(ns_fsync(g_ns, f), 0, "fsync B");
}

static void crash_after_a_third_fsync(void)
{
	struct ns_file *f;

	child_check(ns_open_file(g_ns, path_ino("log.img"), O_RDWR, &f), 0, "open");
	child_write(f, 4096, 8 * 4096, 173);
	child_check(ns_fsync(g_ns, f), 0, "fsync C");
}

/*
 * Batch 1 damaged, batch 2 after it: recovery cannot replay either (a
 * gap), says so, and must move the log on past both, or the next
 * recovery would stop at the same gap before the new daemon's batches.
 */
Test(ns, after_a_gap_in_the_log_the_next_daemons_fsynced_writes_are_recovered)
{
	struct ns_file *f;
	int torn[3] = { 0, 0, 0 };

	close_store();
	in_crashing_child(crash_after_two_fsyncs_b_apart);
	cr_assert_gt(for_slots(CHUNK_KIND_LOG, 0, 0, tear_batch, torn), 1, "B in slots of its own");
	open_store();                           /* the gap: A and B are lost */
	cr_assert_eq(size_of(lookup(NS_ROOT_INO, "log.img")), 0);
	close_store();
	in_crashing_child(crash_after_a_third_fsync);
	f = reopen_log_img();
	cr_assert_eq(size_of(lookup(NS_ROOT_INO, "log.img")), 9 * 4096, "C, fsynced, was lost");
	expect_pattern(f, 4096, 8 * 4096, 173, "C");
	ns_release(g_ns, f);
}

/* The active chunk file deleted under the daemon: the fsync after it
 * fails (its batch went into the deleted file), the application writes
 * again and its fsync succeeds; then a crash. */
static void crash_after_the_active_chunk_was_deleted(void)
{
	struct ns_file *f = child_volume("del.img");
	char path[512];

	child_write(f, 4096, 0, 201);
	child_check(ns_fsync(g_ns, f), 0, "fsync A");
	snprintf(path, sizeof(path), "%s/chunks/%016" PRIx64 ".chunk", g_store,
		 chunk_active_id(test_cs(g_ns)));
	child_check(unlink(path), 0, "unlink the active chunk");
	child_write(f, 4096, 4096, 202);
	child_check(ns_fsync(g_ns, f), -EIO, "the fsync of a write into the deleted file");
	child_write(f, 4096, 4096, 202);
	child_check(ns_fsync(g_ns, f), 0, "the fsync of the write again");
}

Test(ns, writes_fsynced_after_the_active_chunk_was_deleted_survive_a_crash)
{
	struct ns_file *f;

	close_store();
	in_crashing_child(crash_after_the_active_chunk_was_deleted);
	open_store();
	f = open_file(lookup(NS_ROOT_INO, "del.img"), O_RDONLY);
	expect_pattern(f, 4096, 4096, 202, "written again and fsynced after the delete");
	ns_release(g_ns, f);
}

Test(ns, a_read_only_open_refuses_a_log_not_yet_replayed_and_a_read_write_one_replays_it)
{
	char msg[512];
	bool created;
	struct ns_file *f;

	close_store();
	in_crashing_child(crash_after_two_fsyncs);
	g_opts.readonly = true;
	cr_assert_eq(ns_open(g_store, &g_opts, &g_ns, &created, msg, sizeof(msg)), -EROFS);
	cr_assert_not_null(strstr(msg, "mount it once read-write"), "%s", msg);
	g_ns = NULL;
	g_opts.readonly = false;
	open_store();
	close_store();
	g_opts.readonly = true;
	f = reopen_log_img();
	expect_pattern(f, 4 * 4096, 4 * 4096, 172, "B, read-only after the replay");
	ns_release(g_ns, f);
}

/* GC (here, beside zero_slot): a block of a run that does not verify stays
 * where it is; the rest of its run moves. */
Test(ns, gc_leaves_a_damaged_block_where_it_is_and_moves_the_rest_of_its_run)
{
	struct ns_gc_stats st;
	uint64_t ids[1], v;
	struct ns_file *f = split_volume(181, 182, &v, ids);
	uint8_t buf[4096];

	cr_assert_eq(for_slots(CHUNK_KIND_DATA, 3, 4, zero_slot, NULL), 1);

	cr_assert_eq(test_gc_pass_stats(g_ns, &st), 1);
	cr_assert_eq(st.moved, 15, "%" PRIu64 " blocks moved; all but block 3 should be", st.moved);
	cr_assert_eq(st.relocates, 3, "[0, 3), [4, 8), [56, 64): %" PRIu64 " relocates",
		     st.relocates);
	cr_assert(chunk_exists(ids[0]), "the chunk of the damaged block was removed");
	for (int pass = 0; pass < 2; pass++) {
		expect_pattern(f, 3 * 4096, 0, 181, "blocks 0-2, moved");
		expect_pattern(f, 4 * 4096, 4 * 4096, 181, "blocks 4-7, moved");
		expect_pattern(f, 48 * 4096, 8 * 4096, 182, "blocks 8-55");
		expect_pattern(f, 8 * 4096, 56 * 4096, 181, "blocks 56-63, moved");
		cr_assert_eq(ns_read(g_ns, f, buf, 4096, 3 * 4096), -EIO, "the damaged block");
		ns_release(g_ns, f);
		close_store();
		open_store();
		f = open_file(v, O_RDONLY);
	}
	ns_release(g_ns, f);
}

/* ---- a failed sync -------------------------------------------------------------------------- */

Test(ns, a_failed_sync_fails_every_later_fsync_and_refuses_changes_until_reopen)
{
	uint64_t ino = make_vol(NS_ROOT_INO, "v.img");
	struct ns_file *f = open_file(ino, O_RDWR);
	struct ns_attr a = { .size = 100 };

	put_pattern(f, 8 * 4096, 0, 151);
	cr_assert_eq(ns_fsync(g_ns, f), 0);
	cr_assert(!ns_sync_failed(g_ns));
	put_pattern(f, 4 * 4096, 8 * 4096, 152);        /* lost with the failed sync */

	chunk_fault_set(test_cs(g_ns), CHUNK_FAULT_SYNC, 0, EIO);
	cr_assert_eq(ns_fsync(g_ns, f), -EIO);
	cr_assert(ns_sync_failed(g_ns));
	chunk_fault_set(test_cs(g_ns), CHUNK_FAULT_SYNC, 0, 0);  /* the disk works again */
	cr_assert_eq(ns_fsync(g_ns, f), -EIO, "a later fsync succeeded after a failed one");
	cr_assert_eq(test_flush(g_ns), -EIO);

	/* writes, zeros included, hole punches and size changes are refused */
	cr_assert_eq(ns_write(g_ns, f, "x", 1, 0), -EIO);
	cr_assert_eq(ns_write(g_ns, f, (char[4096]){ 0 }, 4096, 0), -EIO);
	cr_assert_eq(ns_fallocate(g_ns, f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096),
		     -EIO);
	cr_assert_eq(ns_fallocate(g_ns, f, FALLOC_FL_ZERO_RANGE, 0, 4096), -EIO);
	cr_assert_eq(ns_setattr(g_ns, ino, &a, NS_SET_SIZE, &a), -EIO);
	a.size = 0;
	cr_assert_eq(ns_setattr(g_ns, ino, &a, NS_SET_SIZE, &a), -EIO);
	/* ... and reads go on, of everything written */
	expect_pattern(f, 8 * 4096, 0, 151, "synced data after the failure");
	expect_pattern(f, 4 * 4096, 8 * 4096, 152, "unsynced data after the failure");
	cr_assert_eq(size_of(ino), 12 * 4096);
	ns_release(g_ns, f);

	/* a new mount keeps every write of the last successful fsync; the
	 * failed one's batch may be in the log, and recovery replays what of
	 * it verifies: each of those blocks reads old or new, never garbage */
	cr_assert_eq(ns_close(g_ns), -EIO, "the final flush of a poisoned store succeeded");
	g_ns = NULL;
	open_store();
	cr_assert(!ns_sync_failed(g_ns));
	cr_assert(size_of(ino) == 8 * 4096 || size_of(ino) == 12 * 4096);
	f = open_file(ino, O_RDWR);
	expect_pattern(f, 8 * 4096, 0, 151, "synced data after reopen");
	for (uint64_t b = 8; b < size_of(ino) / 4096; b++) {
		uint8_t buf[4096], *want = pattern(4096, b * 4096, 152);

		cr_assert_eq(ns_read(g_ns, f, buf, 4096, b * 4096), 4096);
		cr_assert(!memcmp(buf, want, 4096) || !memcmp(buf, (uint8_t[4096]){ 0 }, 4096),
			  "block %" PRIu64 " of the failed fsync is neither old nor new", b);
		free(want);
	}
	put_pattern(f, 100, 0, 153);
	cr_assert_eq(ns_fsync(g_ns, f), 0, "fsync after a new mount");
	expect_pattern(f, 100, 0, 153, "written after reopen");
	ns_release(g_ns, f);
}

Test(ns, a_failed_sync_fails_a_snapshot_of_an_open_volume_and_leaves_no_snapshot)
{
	uint64_t ino = make_vol(NS_ROOT_INO, "v.img");
	struct ns_file *f = open_file(ino, O_RDWR);
	struct ns_attr a;

	put_pattern(f, 4096, 0, 161);
	chunk_fault_set(test_cs(g_ns), CHUNK_FAULT_SYNC, 0, EIO);
	cr_assert_eq(ns_mkdir(g_ns, lookup(NS_ROOT_INO, ".snapshots"), "v.img@s", 0755, 0, 0, &a),
		     -EIO);
	expect_listing(lookup(NS_ROOT_INO, ".snapshots"), "");
	expect_pattern(f, 4096, 0, 161, "after the failed snapshot");
	ns_release(g_ns, f);
}

/* ---- the model test ---------------------------------------------------------------------------- */

/*
 * Thousands of random operations on the namespace and on a plain model: a
 * fixed tree of directories, volumes as byte arrays, snapshots as copies.
 * Every operation is checked as it returns; the touched volume is read back;
 * every 100 steps, after every GC pass and after every reopen of the store,
 * every listing, size and byte of the tree and of every snapshot is
 * compared.  The seed is printed; TEST_NS_SEED and TEST_NS_STEPS replay or
 * lengthen a run.
 */

#define M_DIRS    4
#define M_VOLS    10                    /* live volumes at most */
#define M_SNAPS   10
#define M_ORPHANS 6                     /* unlinked volumes kept open, at most */

static const struct { int parent; const char *name; } m_dir[M_DIRS] = {
	{ -1, "" }, { 0, "d1" }, { 0, "d2" }, { 1, "sub" },
};

struct mvol {
	char name[32];
	int dir;                        /* index in m_dir; -1: unlinked, still open */
	uint64_t ino;
	uint8_t *data;
	uint64_t size;
	struct ns_file *f;              /* open handle, or NULL */
};

struct msvol {                          /* one volume as a snapshot froze it */
	char name[32];
	int dir;
	uint8_t *data;
	uint64_t size;
};

struct msnap {
	char name[48];                  /* its name in m_dir[dir]/.snapshots */
	int dir;
	bool one;                       /* FILE@NAME */
	struct msvol *v;
	size_t n;
};

struct model {
	uint64_t seed, rng;
	uint32_t bs;
	uint64_t max_size;
	uint64_t dino[M_DIRS];
	struct mvol v[M_VOLS + M_ORPHANS + 1];  /* live, then unlinked but open */
	size_t nv;
	struct msnap s[M_SNAPS];
	size_t ns;
	unsigned next_name;
	unsigned step;
	const char *op;
	uint8_t *buf;                   /* scratch, 2 * max_size */
	struct { const char *op; unsigned n; } done[32];        /* steps run, per op */
};

/* Every assertion of the model test says where it was. */
#define MCHK(m, cond, fmt, ...) \
	cr_assert(cond, "seed %" PRIu64 " step %u (%s): " fmt, (m)->seed, (m)->step, (m)->op, \
		  ##__VA_ARGS__)

static uint64_t m_rand(struct model *m, uint64_t n)
{
	return n ? rng_next(&m->rng) % n : 0;
}

static bool m_chance(struct model *m, unsigned pct)
{
	return m_rand(m, 100) < pct;
}

static void m_resize(struct mvol *v, uint64_t size, uint64_t cap)
{
	if (!v->data)
		v->data = calloc(1, cap);
	if (size < v->size)
		memset(v->data + size, 0, v->size - size);
	v->size = size;
}

static bool m_below(int dir, int top)
{
	for (; dir >= 0; dir = m_dir[dir].parent)
		if (dir == top)
			return true;
	return false;
}

static struct ns_file *m_handle(struct model *m, struct mvol *v)
{
	if (!v->f) {
		int rc = ns_open_file(g_ns, v->ino, O_RDWR, &v->f);

		MCHK(m, rc == 0, "open %s: %d", v->name, rc);
	}
	return v->f;
}

/* A live volume at random, or NULL. */
static struct mvol *m_pick(struct model *m)
{
	size_t live = 0, k;

	for (size_t i = 0; i < m->nv; i++)
		live += m->v[i].dir >= 0;
	if (!live)
		return NULL;
	k = m_rand(m, live);
	for (size_t i = 0; i < m->nv; i++)
		if (m->v[i].dir >= 0 && k-- == 0)
			return &m->v[i];
	return NULL;
}

static struct mvol *m_pick_orphan(struct model *m)
{
	size_t k = m_rand(m, m->nv);

	for (size_t i = 0; i < m->nv; i++, k = (k + 1) % m->nv)
		if (m->v[k].dir < 0)
			return &m->v[k];
	return NULL;
}

static void m_drop(struct model *m, struct mvol *v)
{
	free(v->data);
	*v = m->v[--m->nv];
}

static size_t m_live(struct model *m)
{
	size_t n = 0;

	for (size_t i = 0; i < m->nv; i++)
		n += m->v[i].dir >= 0;
	return n;
}

/* Compare [off, off + len) of v with the model (reads are short at the end). */
static void m_check_range(struct model *m, struct mvol *v, uint64_t off, uint64_t len)
{
	uint64_t want = off >= v->size ? 0 : len < v->size - off ? len : v->size - off;
	ssize_t n = ns_read(g_ns, m_handle(m, v), m->buf, len, off);

	MCHK(m, n == (ssize_t)want, "%s: read %" PRIu64 " at %" PRIu64 ": %zd, want %" PRIu64,
	     v->name, len, off, n, want);
	if (memcmp(m->buf, v->data + off, want))
		for (uint64_t i = 0; i < want; i++)
			MCHK(m, m->buf[i] == v->data[off + i], "%s: byte %" PRIu64 " is %u, want %u",
			     v->name, off + i, m->buf[i], v->data[off + i]);
}

static void m_check_vol(struct model *m, struct mvol *v)
{
	struct ns_attr a;
	int rc = ns_getattr(g_ns, v->ino, &a);

	MCHK(m, rc == 0, "getattr %s: %d", v->name, rc);
	MCHK(m, a.size == v->size, "%s: size %" PRIu64 ", want %" PRIu64, v->name, a.size, v->size);
	MCHK(m, a.nlink == (v->dir >= 0 ? 1u : 0u), "%s: nlink %u", v->name, a.nlink);
	m_check_range(m, v, 0, v->size + 1);
	/* st_blocks: every block it shows with data, its own or shared */
	uint64_t data = 0;

	for (uint64_t b = 0; b * m->bs < v->size; b++) {
		const uint8_t *p = v->data + b * m->bs;
		uint64_t n = v->size - b * m->bs < m->bs ? v->size - b * m->bs : m->bs;

		data += p[0] || memcmp(p, p + 1, n - 1);
	}
	MCHK(m, a.blocks == data * (m->bs / 512), "%s: st_blocks %" PRIu64 ", want %" PRIu64
	     " (%" PRIu64 " blocks with data)", v->name, a.blocks, data * (m->bs / 512), data);
}

struct m_list {
	struct model *m;
	char names[64][48];
	uint64_t size[64];
	bool isdir[64];
	size_t n;
};

static int m_list_add(void *ctx, const char *name, const struct ns_attr *a, uint64_t cookie)
{
	struct m_list *l = ctx;

	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return 0;
	MCHK(l->m, l->n < 64, "too many entries");
	snprintf(l->names[l->n], sizeof(l->names[0]), "%s", name);
	l->size[l->n] = a->size;
	l->isdir[l->n] = S_ISDIR(a->mode);
	l->n++;
	return 0;
}

/* Is name in the listing, as a directory or with this size? Marks it seen. */
static bool m_list_take(struct m_list *l, const char *name, bool isdir, uint64_t size)
{
	for (size_t i = 0; i < l->n; i++) {
		if (strcmp(l->names[i], name))
			continue;
		if (l->isdir[i] != isdir || (!isdir && l->size[i] != size))
			return false;
		l->names[i][0] = 0;
		return true;
	}
	return false;
}

static void m_list_done(struct model *m, struct m_list *l, const char *what)
{
	for (size_t i = 0; i < l->n; i++)
		MCHK(m, !l->names[i][0], "%s lists \"%s\", which the model does not have", what,
		     l->names[i]);
}

/* The inode of model directory dir inside snapshot root sroot of top. */
static uint64_t m_snap_dir(struct model *m, uint64_t sroot, int top, int dir)
{
	uint64_t ino;

	if (dir == top)
		return sroot;
	ino = m_snap_dir(m, sroot, top, m_dir[dir].parent);
	return lookup(ino, m_dir[dir].name);
}

static void m_check_snap(struct model *m, struct msnap *s)
{
	uint64_t sroot = lookup(lookup(m->dino[s->dir], ".snapshots"), s->name);

	/* listings: each directory of the snapshot holds its volumes and subdirectories */
	for (int d = 0; d < M_DIRS; d++) {
		struct m_list l = { .m = m };
		int rc;

		if (s->one ? d != s->dir : !m_below(d, s->dir))
			continue;
		rc = ns_readdir(g_ns, m_snap_dir(m, sroot, s->dir, d), 0, m_list_add, &l);
		MCHK(m, rc == 0, "readdir in snapshot %s: %d", s->name, rc);
		for (size_t i = 0; i < s->n; i++)
			if (s->v[i].dir == d)
				MCHK(m, m_list_take(&l, s->v[i].name, false, s->v[i].size),
				     "snapshot %s: %s/%s missing or of another size", s->name,
				     m_dir[d].name, s->v[i].name);
		for (int c = 0; c < M_DIRS && !s->one; c++)
			if (m_dir[c].parent == d)
				MCHK(m, m_list_take(&l, m_dir[c].name, true, 0),
				     "snapshot %s: directory %s missing", s->name, m_dir[c].name);
		m_list_done(m, &l, s->name);
	}
	/* contents */
	for (size_t i = 0; i < s->n; i++) {
		struct msvol *sv = &s->v[i];
		uint64_t ino = lookup(m_snap_dir(m, sroot, s->dir, sv->dir), sv->name);
		struct ns_file *f = NULL;
		ssize_t n;
		int rc = ns_open_file(g_ns, ino, O_RDONLY, &f);

		MCHK(m, rc == 0, "open %s in snapshot %s: %d", sv->name, s->name, rc);
		n = ns_read(g_ns, f, m->buf, sv->size + 1, 0);
		MCHK(m, n == (ssize_t)sv->size, "snapshot %s: %s: read %zd of %" PRIu64, s->name,
		     sv->name, n, sv->size);
		if (memcmp(m->buf, sv->data, sv->size))
			for (uint64_t b = 0; b < sv->size; b++)
				MCHK(m, m->buf[b] == sv->data[b], "snapshot %s: %s: byte %" PRIu64
				     " is %u, want %u", s->name, sv->name, b, m->buf[b], sv->data[b]);
		ns_release(g_ns, f);
	}
}

/* Everything: every directory's listing, every volume, every snapshot. */
static void m_check_all(struct model *m)
{
	for (int d = 0; d < M_DIRS; d++) {
		struct m_list l = { .m = m };
		int rc = ns_readdir(g_ns, m->dino[d], 0, m_list_add, &l);

		MCHK(m, rc == 0, "readdir %s: %d", m_dir[d].name, rc);
		MCHK(m, m_list_take(&l, ".snapshots", true, 0), "no .snapshots in %s", m_dir[d].name);
		for (size_t i = 0; i < m->nv; i++)
			if (m->v[i].dir == d)
				MCHK(m, m_list_take(&l, m->v[i].name, false, m->v[i].size),
				     "%s/%s missing or of another size", m_dir[d].name, m->v[i].name);
		for (int c = 0; c < M_DIRS; c++)
			if (m_dir[c].parent == d)
				MCHK(m, m_list_take(&l, m_dir[c].name, true, 0),
				     "directory %s missing", m_dir[c].name);
		m_list_done(m, &l, m_dir[d].name);

		l = (struct m_list){ .m = m };
		rc = ns_readdir(g_ns, lookup(m->dino[d], ".snapshots"), 0, m_list_add, &l);
		MCHK(m, rc == 0, "readdir %s/.snapshots: %d", m_dir[d].name, rc);
		for (size_t i = 0; i < m->ns; i++)
			if (m->s[i].dir == d)
				MCHK(m, m_list_take(&l, m->s[i].name, true, 0), "snapshot %s missing",
				     m->s[i].name);
		m_list_done(m, &l, "a .snapshots");
	}
	for (size_t i = 0; i < m->nv; i++)
		m_check_vol(m, &m->v[i]);
	for (size_t i = 0; i < m->ns; i++)
		m_check_snap(m, &m->s[i]);
}

static struct mvol *m_new_vol(struct model *m, int dir)
{
	struct mvol *v = &m->v[m->nv++];
	struct ns_attr a;
	int rc;

	memset(v, 0, sizeof(*v));
	v->dir = dir;
	snprintf(v->name, sizeof(v->name), "v%u.img", m->next_name++);
	rc = ns_create(g_ns, m->dino[dir], v->name, 0644, 0, 0, &a);
	MCHK(m, rc == 0, "create %s: %d", v->name, rc);
	v->ino = a.ino;
	m_resize(v, 0, m->max_size);
	return v;
}

/* A volume lost its name: it stays open (an orphan the model keeps using)
 * or it is closed and gone. */
static void m_unlinked(struct model *m, struct mvol *v)
{
	if (v->f && m->nv - m_live(m) < M_ORPHANS && m_chance(m, 60)) {
		v->dir = -1;
		return;
	}
	if (v->f)
		ns_release(g_ns, v->f);
	m_drop(m, v);
}

/* A length for a write or punch: mostly small and unaligned, sometimes blocks. */
static uint64_t m_len(struct model *m)
{
	switch (m_rand(m, 10)) {
	case 0: case 1: case 2: case 3: case 4:
		return 1 + m_rand(m, 300);
	case 5: case 6: case 7:
		return 1 + m_rand(m, 2 * m->bs);
	default:
		return m->bs * (1 + m_rand(m, 8));
	}
}

static uint64_t m_off(struct model *m, uint64_t len)
{
	uint64_t off = m_rand(m, m->max_size - len + 1);

	return m_chance(m, 30) ? off / m->bs * m->bs : off;
}

static void m_op_write(struct model *m, struct mvol *v)
{
	uint64_t len = m_len(m), off = m_off(m, len);
	ssize_t n;

	if (m_chance(m, 15))
		memset(m->buf, 0, len);         /* zeros: whole blocks of them are holes */
	else
		fill(m->buf, len, off, m_rand(m, UINT32_MAX));
	n = ns_write(g_ns, m_handle(m, v), m->buf, len, off);
	MCHK(m, n == (ssize_t)len, "write %" PRIu64 " at %" PRIu64 ": %zd", len, off, n);
	if (off + len > v->size)
		m_resize(v, off + len, m->max_size);
	memcpy(v->data + off, m->buf, len);
	m_check_range(m, v, off > 100 ? off - 100 : 0, len + 200);
}

static void m_op_punch(struct model *m, struct mvol *v)
{
	uint64_t len = m_len(m), off = m_off(m, len), end;
	bool zero = m_chance(m, 30);
	int rc;

	rc = ns_fallocate(g_ns, m_handle(m, v),
			  zero ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			  off, len);
	MCHK(m, rc == 0, "%s %" PRIu64 " at %" PRIu64 ": %d", zero ? "zero" : "punch", len, off, rc);
	if (zero && off + len > v->size)
		m_resize(v, off + len, m->max_size);     /* ZERO_RANGE without KEEP_SIZE grows */
	end = off + len < v->size ? off + len : v->size;
	if (off < end)
		memset(v->data + off, 0, end - off);
	m_check_range(m, v, off > 100 ? off - 100 : 0, len + 200);
}

static void m_op_truncate(struct model *m, struct mvol *v)
{
	struct ns_attr a;
	uint64_t size = m_chance(m, 30) ? 0 : m_rand(m, m->max_size + 1);
	int rc;

	if (m_chance(m, 30))
		size = size / m->bs * m->bs;
	a.size = size;
	rc = ns_setattr(g_ns, v->ino, &a, NS_SET_SIZE, &a);
	MCHK(m, rc == 0 && a.size == size, "truncate %s to %" PRIu64 ": %d, size %" PRIu64,
	     v->name, size, rc, a.size);
	m_resize(v, size, m->max_size);
	m_check_range(m, v, size > 5000 ? size - 5000 : 0, 6000);
}

/* The first non-zero byte of p in [from, to), or to. */
static uint64_t m_nonzero(const uint8_t *p, uint64_t from, uint64_t to)
{
	while (from < to && !p[from])
		from++;
	return from;
}

static void m_op_seek(struct model *m, struct mvol *v)
{
	uint64_t off = m_rand(m, v->size + 1), pos, end, i;
	int rc = ns_lseek(g_ns, m_handle(m, v), off, SEEK_DATA, &pos);

	/* what SEEK_DATA skips reads as zeros */
	end = rc == -ENXIO ? v->size : pos;
	MCHK(m, rc == 0 || rc == -ENXIO, "SEEK_DATA at %" PRIu64 ": %d", off, rc);
	MCHK(m, rc || (pos >= off && pos < v->size), "SEEK_DATA at %" PRIu64 ": %" PRIu64, off, pos);
	i = m_nonzero(v->data, off, end);
	MCHK(m, i == end, "SEEK_DATA from %" PRIu64 " skipped data at %" PRIu64, off, i);
	/* SEEK_HOLE lands in a block that reads as zeros, or at the end */
	rc = ns_lseek(g_ns, v->f, off, SEEK_HOLE, &pos);
	if (off >= v->size) {
		MCHK(m, rc == -ENXIO, "SEEK_HOLE at the end: %d", rc);
		return;
	}
	MCHK(m, rc == 0 && pos >= off && pos <= v->size, "SEEK_HOLE at %" PRIu64 ": %d, %" PRIu64,
	     off, rc, pos);
	end = (pos / m->bs + 1) * m->bs;
	end = end < v->size ? end : v->size;
	i = m_nonzero(v->data, pos, end);
	MCHK(m, i >= end, "SEEK_HOLE from %" PRIu64 " gave %" PRIu64 ", data at %" PRIu64, off, pos,
	     i);
}

static void m_op_snapshot(struct model *m, struct mvol *one, int dir)
{
	struct msnap *s = &m->s[m->ns];
	struct ns_attr a;
	int rc;

	memset(s, 0, sizeof(*s));
	s->dir = one ? one->dir : dir;
	s->one = one != NULL;
	if (one)
		snprintf(s->name, sizeof(s->name), "%s@s%u", one->name, m->next_name++);
	else
		snprintf(s->name, sizeof(s->name), "s%u", m->next_name++);
	rc = ns_mkdir(g_ns, lookup(m->dino[s->dir], ".snapshots"), s->name, 0755, 0, 0, &a);
	MCHK(m, rc == 0, "snapshot %s: %d", s->name, rc);
	s->v = calloc(m->nv + 1, sizeof(*s->v));
	for (size_t i = 0; i < m->nv; i++) {
		struct mvol *v = &m->v[i];
		struct msvol *sv = &s->v[s->n];

		if (v->dir < 0 || (one ? v != one : !m_below(v->dir, s->dir)))
			continue;
		snprintf(sv->name, sizeof(sv->name), "%s", v->name);
		sv->dir = v->dir;
		sv->size = v->size;
		sv->data = malloc(v->size + 1);
		memcpy(sv->data, v->data, v->size);
		s->n++;
	}
	m->ns++;
}

static void m_snap_free(struct msnap *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i].data);
	free(s->v);
}

static void m_op_snap_delete(struct model *m)
{
	struct msnap *s = &m->s[m_rand(m, m->ns)];
	int rc = ns_rmdir(g_ns, lookup(m->dino[s->dir], ".snapshots"), s->name);

	MCHK(m, rc == 0, "rmdir snapshot %s: %d", s->name, rc);
	m_snap_free(s);
	*s = m->s[--m->ns];
}

/* Open a snapshot's volume: a random snapshot with volumes in it. */
static struct msvol *m_pick_snapvol(struct model *m, struct ns_file **f)
{
	struct msnap *s;
	struct msvol *sv;
	uint64_t sroot;
	int rc;

	if (!m->ns)
		return NULL;
	s = &m->s[m_rand(m, m->ns)];
	if (!s->n)
		return NULL;
	sv = &s->v[m_rand(m, s->n)];
	sroot = lookup(lookup(m->dino[s->dir], ".snapshots"), s->name);
	rc = ns_open_file(g_ns, lookup(m_snap_dir(m, sroot, s->dir, sv->dir), sv->name), O_RDONLY,
			  f);
	MCHK(m, rc == 0, "open %s in snapshot %s: %d", sv->name, s->name, rc);
	return sv;
}

/* cp: copy_file_range until done, into a blank volume. */
static void m_copy_into(struct model *m, struct ns_file *src, uint64_t size, struct mvol *dst)
{
	uint64_t done = 0;

	while (done < size) {
		ssize_t n = ns_copy_range(g_ns, src, done, m_handle(m, dst), done, size - done);

		MCHK(m, n > 0, "copy_range into %s at %" PRIu64 ": %zd", dst->name, done, n);
		done += n;
	}
}

static void m_op_clone(struct model *m)
{
	struct ns_file *src = NULL;
	struct msvol *sv = NULL;
	struct mvol *from = NULL, *v;

	if (m_chance(m, 70))
		sv = m_pick_snapvol(m, &src);
	if (!sv && !(from = m_pick(m))) {
		m->op = "nothing to do";
		return;
	}
	v = m_new_vol(m, m_rand(m, M_DIRS));
	if (from) {                             /* from a live volume: frozen first */
		m_copy_into(m, m_handle(m, from), from->size, v);
		m_resize(v, from->size, m->max_size);
		memcpy(v->data, from->data, from->size);
		m_check_vol(m, from);
	} else {
		m_copy_into(m, src, sv->size, v);
		ns_release(g_ns, src);
		m_resize(v, sv->size, m->max_size);
		memcpy(v->data, sv->data, sv->size);
	}
	m_check_vol(m, v);
}

static void m_op_revert(struct model *m, struct mvol *v)
{
	struct ns_file *src = NULL;
	struct msvol *sv = m_pick_snapvol(m, &src);
	struct ns_attr a = { .size = 0 };
	int rc;

	if (!sv) {
		m->op = "nothing to do";
		return;
	}
	rc = ns_setattr(g_ns, v->ino, &a, NS_SET_SIZE, &a);
	MCHK(m, rc == 0, "truncate %s to 0: %d", v->name, rc);
	m_resize(v, 0, m->max_size);
	m_copy_into(m, src, sv->size, v);
	ns_release(g_ns, src);
	m_resize(v, sv->size, m->max_size);
	memcpy(v->data, sv->data, sv->size);
	m_check_vol(m, v);
}

static void m_op_copy(struct model *m, struct mvol *a, struct mvol *b)
{
	uint64_t off_in = m_rand(m, a->size + 10), len = m_len(m), off_out = m_off(m, len), want;
	ssize_t n;

	if (a == b) {
		m->op = "nothing to do";
		return;
	}
	want = off_in >= a->size ? 0 : len < a->size - off_in ? len : a->size - off_in;
	n = ns_copy_range(g_ns, m_handle(m, a), off_in, m_handle(m, b), off_out, len);
	MCHK(m, n == (ssize_t)want, "copy %" PRIu64 " from %s@%" PRIu64 " to %s@%" PRIu64
	     ": %zd, want %" PRIu64, len, a->name, off_in, b->name, off_out, n, want);
	if (want && off_out + want > b->size)
		m_resize(b, off_out + want, m->max_size);
	memcpy(b->data + off_out, a->data + off_in, want);
	m_check_range(m, b, off_out, want + 10);
}

static void m_op_unlink(struct model *m, struct mvol *v)
{
	int rc = ns_unlink(g_ns, m->dino[v->dir], v->name);

	MCHK(m, rc == 0, "unlink %s: %d", v->name, rc);
	rc = lookup_rc(m->dino[v->dir], v->name);
	MCHK(m, rc == -ENOENT, "lookup after unlink: %d", rc);
	m_unlinked(m, v);
}

static void m_op_rename(struct model *m, struct mvol *v)
{
	int to = m_rand(m, M_DIRS);
	struct mvol *over = NULL;
	char name[32];
	uint64_t ino = v->ino;
	int rc;

	if (m_chance(m, 40)) {
		size_t k = m_rand(m, m->nv);

		for (size_t i = 0; i < m->nv && !over; i++, k = (k + 1) % m->nv)
			if (m->v[k].dir == to && &m->v[k] != v)
				over = &m->v[k];
	}
	if (over)
		snprintf(name, sizeof(name), "%s", over->name);
	else
		snprintf(name, sizeof(name), "v%u.img", m->next_name++);
	rc = ns_rename(g_ns, m->dino[v->dir], v->name, m->dino[to], name, 0);
	MCHK(m, rc == 0, "rename %s to %s/%s: %d", v->name, m_dir[to].name, name, rc);
	v->dir = to;
	snprintf(v->name, sizeof(v->name), "%s", name);
	if (over) {
		over->name[0] = 0;
		m_unlinked(m, over);            /* may move v in the array */
	}
	rc = ns_lookup(g_ns, m->dino[to], name, &(struct ns_attr){ 0 });
	MCHK(m, rc == 0, "lookup after rename: %d", rc);
	MCHK(m, lookup(m->dino[to], name) == ino, "the new name leads elsewhere");
}

/* An unlinked volume still open: use it, or close it and see it go. */
static void m_op_orphan(struct model *m, struct mvol *v)
{
	uint64_t ino = v->ino;
	struct ns_attr a;
	int rc;

	switch (m_rand(m, 3)) {
	case 0:
		m_op_write(m, v);
		break;
	case 1:
		m_check_vol(m, v);
		break;
	default:
		ns_release(g_ns, v->f);
		m_drop(m, v);
		rc = test_reap(g_ns);
		MCHK(m, rc == 0, "reap: %d", rc);
		rc = ns_getattr(g_ns, ino, &a);
		MCHK(m, rc == -ENOENT, "an unlinked volume survived its last close: %d", rc);
	}
}

static void m_release_all(struct model *m)
{
	for (size_t i = 0; i < m->nv;) {
		struct mvol *v = &m->v[i];

		if (v->f)
			ns_release(g_ns, v->f);
		v->f = NULL;
		if (v->dir < 0)
			m_drop(m, v);
		else
			i++;
	}
}

static void m_step(struct model *m)
{
	struct mvol *v = m_pick(m), *o = m_pick_orphan(m);
	unsigned r = m_rand(m, 1000);
	int rc;

	if (!v || (m_live(m) < 3 && r < 500)) {
		m->op = "create";
		m_new_vol(m, m_rand(m, M_DIRS));
		return;
	}
	if (r < 300) {
		m->op = "write";
		m_op_write(m, v);
	} else if (r < 380) {
		m->op = "punch";
		m_op_punch(m, v);
	} else if (r < 440) {
		m->op = "truncate";
		m_op_truncate(m, v);
	} else if (r < 490) {
		m->op = "read";
		m_check_vol(m, v);
	} else if (r < 520) {
		m->op = "seek";
		m_op_seek(m, v);
	} else if (r < 570) {
		m->op = "fsync";
		rc = ns_fsync(g_ns, m_handle(m, v));
		MCHK(m, rc == 0, "fsync: %d", rc);
	} else if (r < 610) {
		m->op = "snapshot of a volume";
		if (m->ns < M_SNAPS)
			m_op_snapshot(m, v, 0);
		else
			m_op_snap_delete(m);
	} else if (r < 640) {
		m->op = "snapshot of a directory";
		if (m->ns < M_SNAPS)
			m_op_snapshot(m, NULL, m_rand(m, M_DIRS));
		else
			m_op_snap_delete(m);
	} else if (r < 670) {
		m->op = m->ns ? "rmdir snapshot" : "nothing to do";
		if (m->ns)
			m_op_snap_delete(m);
	} else if (r < 710) {
		m->op = m_live(m) < M_VOLS ? "clone" : "nothing to do";
		if (m_live(m) < M_VOLS)
			m_op_clone(m);
	} else if (r < 750) {
		m->op = "revert";
		m_op_revert(m, v);
	} else if (r < 780) {
		m->op = "copy";
		m_op_copy(m, v, m_pick(m));
	} else if (r < 810) {
		m->op = m_live(m) < M_VOLS ? "create" : "nothing to do";
		if (m_live(m) < M_VOLS)
			m_new_vol(m, m_rand(m, M_DIRS));
	} else if (r < 840) {
		m->op = "unlink";
		m_op_unlink(m, v);
	} else if (r < 880) {
		m->op = "rename";
		m_op_rename(m, v);
	} else if (r < 910) {
		m->op = v->f ? "close" : "nothing to do";
		if (v->f)
			ns_release(g_ns, v->f);
		v->f = NULL;
	} else if (r < 950) {
		m->op = o ? "use or close an unlinked volume" : "nothing to do";
		if (o)
			m_op_orphan(m, o);
	} else if (r < 990) {
		m->op = "flush, reap and GC pass";
		rc = test_flush(g_ns);
		MCHK(m, rc == 0, "flush: %d", rc);
		rc = test_reap(g_ns);
		MCHK(m, rc == 0, "reap: %d", rc);
		if (m_chance(m, 50)) {
			rc = test_gc_pass(g_ns);
			MCHK(m, rc >= 0, "gc: %d", rc);
			m_check_all(m);
		}
	} else {
		m->op = "close and reopen the store";
		m_release_all(m);
		close_store();
		open_store();
		m_check_all(m);
	}
}

/* Count the step just run, by its op's name, to show what a run covered. */
static void m_count(struct model *m)
{
	size_t i = 0;

	while (i < 32 && m->done[i].op && m->done[i].op != m->op)
		i++;
	if (i < 32) {
		m->done[i].op = m->op;
		m->done[i].n++;
	}
}

static void model_run(uint32_t bs, uint64_t max_size, unsigned steps)
{
	struct model *m = calloc(1, sizeof(*m));
	const char *e;

	m->seed = 20261212;
	if ((e = getenv("TEST_NS_SEED")) && *e)
		m->seed = strtoull(e, NULL, 0);
	if ((e = getenv("TEST_NS_STEPS")) && *e)
		steps = strtoul(e, NULL, 0);
	log_set_level(LOG_NOTICE);              /* not a line per GC pass */
	fprintf(stderr, "test_ns model, %u-byte blocks: seed %" PRIu64 ", %u steps "
		"(TEST_NS_SEED, TEST_NS_STEPS to change)\n", bs, m->seed, steps);
	cr_assert_eq(ns_block_size(g_ns), bs);
	m->rng = m->seed;
	m->bs = bs;
	m->max_size = max_size;
	m->buf = malloc(2 * max_size + 16);
	m->op = "setup";
	m->dino[0] = NS_ROOT_INO;
	for (int d = 1; d < M_DIRS; d++)
		m->dino[d] = make_dir(m->dino[m_dir[d].parent], m_dir[d].name);
	for (m->step = 0; m->step < steps; m->step++) {
		m_step(m);
		m_count(m);
		if (m->step % 100 == 99) {
			m->op = "check of everything";
			m_check_all(m);
		}
	}
	fprintf(stderr, "test_ns model, %u-byte blocks: ran", bs);
	for (size_t i = 0; i < 32 && m->done[i].op; i++)
		fprintf(stderr, "%s %u %s", i ? "," : "", m->done[i].n, m->done[i].op);
	fprintf(stderr, "\n");
	m->op = "the end";
	m_release_all(m);
	close_store();
	open_store();
	m_check_all(m);
	m_release_all(m);
	for (size_t i = 0; i < m->nv; i++)
		free(m->v[i].data);
	for (size_t i = 0; i < m->ns; i++)
		m_snap_free(&m->s[i]);
	free(m->buf);
	free(m);
}

Test(ns, model_random_operations_match_a_plain_model_4k_blocks)
{
	model_run(4096, 96 * 4096, 3000);
}

/* A map cache of a few pages: every volume's pages are evicted and loaded
 * again all the time, across snapshots, clones, reverts and GC moves. */
Test(ns, model_random_operations_match_a_plain_model_with_a_tiny_map_cache)
{
	close_store();
	g_opts.map_cache_bytes = 16384;
	open_store();
	model_run(4096, 1024 * 4096, 2000);
}

static void setup64k(void) { setup_bs(65536); }

TestSuite(ns64k, .init = setup64k, .fini = teardown);

Test(ns64k, model_random_operations_match_a_plain_model_64k_blocks)
{
	model_run(65536, 16 * 65536, 1500);
}

Test(ns, a_spare_is_written_ahead_only_for_frequent_fsyncs_of_small_writes)
{
	const int64_t s = 1000000000;

	/* a guest database: 3,000 fsyncs a second, 4 KiB each */
	cr_assert(ns_small_synced_writes(3000, 3000 * 4096ull, s));
	/* 1 MiB per fsync: a commit per MiB costs little */
	cr_assert_not(ns_small_synced_writes(300, 300ull << 20, s));
	/* at the bounds */
	cr_assert(ns_small_synced_writes(SPARE_PREP_FSYNCS_S, 0, s));
	cr_assert_not(ns_small_synced_writes(SPARE_PREP_FSYNCS_S - 1, 0, s));
	cr_assert(ns_small_synced_writes(100, 100ull * SPARE_PREP_BYTES - 1, s));
	cr_assert_not(ns_small_synced_writes(100, 100ull * SPARE_PREP_BYTES, s),
		      "big runs between fsyncs: the journal commit is paid per run");
	/* written without fsyncs (the background flush's syncs are not fsyncs) */
	cr_assert_not(ns_small_synced_writes(0, 1 << 20, s));
	/* rare fsyncs over a long look: a file system committing every 5 s */
	cr_assert_not(ns_small_synced_writes(20, 20 * 4096ull, 30 * s));
	cr_assert_not(ns_small_synced_writes(100, 0, 0));
}
