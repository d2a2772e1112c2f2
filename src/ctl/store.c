/*
 * store: the store behind a command-line argument, opened read-only.
 *
 * An argument may be the store directory itself (it holds index.sqlite),
 * the mount point of a running vsnapfs, or (list, diff) any path inside
 * such a mount: the daemon mounts with fsname "vsnapfs:STORE", found in
 * /proc/self/mounts.  Names of the store's entries, the fsname and the lock
 * come from vsnapfs/storedir.h, as the daemon has them.
 *
 * On a mounted store the daemon is first asked to bring the index up to its
 * log (sync_mounts, through the control channel).  A store that a daemon holds is "in use": check reads
 * it twice (check.c).
 * Whether it is held is read from /proc/locks: taking the lock ourselves,
 * even briefly, could make a daemon starting at that moment refuse.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <mntent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/storedir.h"

/* The vsnapfs mount that holds real (a resolved path): its store into out,
 * real's path below the mount point into rel; -EMEDIUMTYPE if none. */
static int mount_lookup(const char *real, char *out, size_t outlen, char *rel, size_t rellen)
{
	size_t best = 0, prefix = strlen(STOREDIR_FSNAME_PREFIX);
	struct mntent *me;
	FILE *mf;
	int rc = -EMEDIUMTYPE;

	mf = setmntent("/proc/self/mounts", "r");
	if (!mf)
		return -errno;
	while ((me = getmntent(mf))) {
		size_t len = strlen(me->mnt_dir);

		if (strncmp(me->mnt_fsname, STOREDIR_FSNAME_PREFIX, prefix) || len <= best)
			continue;
		if (strcmp(me->mnt_dir, "/") &&
		    (strncmp(me->mnt_dir, real, len) || (real[len] && real[len] != '/')))
			continue;
		if (!strcmp(me->mnt_dir, "/"))
			len = 0;
		snprintf(out, outlen, "%s", me->mnt_fsname + prefix);
		snprintf(rel, rellen, "%s", real + len);
		best = len ? len : 1;
		rc = 0;
	}
	endmntent(mf);
	return rc;
}

int store_resolve(const char *arg, char *out, size_t outlen, char *rel, size_t rellen)
{
	char real[PATH_MAX], probe[PATH_MAX + 16];

	if (!realpath(arg, real))
		return -errno;
	snprintf(probe, sizeof(probe), "%s/" STOREDIR_INDEX, real);
	if (access(probe, F_OK) == 0) {
		snprintf(out, outlen, "%s", real);
		rel[0] = '\0';
		return 0;
	}
	if (errno == EACCES)
		return -EACCES;         /* a directory we may not look into */
	return mount_lookup(real, out, outlen, rel, rellen);
}

int store_resolve_mount(const char *arg, char *dir, size_t dirlen, char *rel, size_t rellen)
{
	char real[PATH_MAX];

	return realpath(arg, real) ? mount_lookup(real, dir, dirlen, rel, rellen) : -errno;
}

const char *store_why(int rc)
{
	switch (rc) {
	case -ENOENT:
		return "no such file or directory";
	case -EACCES:
		return "permission denied";
	case -EMEDIUMTYPE:
		return "not a vsnapfs store (no " STOREDIR_INDEX ") and not in a vsnapfs mount";
	case -ENOTCONN:
		return "in a vsnapfs mount whose daemon is gone (fusermount3 -u it, then mount "
		       "the store again)";
	default:
		return strerror(-rc);
	}
}

/* A daemon holds the store (when unsure, say yes; a missing directory is
 * held by nobody). */
static bool store_in_use(const char *dir)
{
	int rc = storedir_lock_holder(dir, NULL, 0);

	return rc == -ENOENT ? false : rc != 0;
}

/*
 * A mounted daemon keeps recent changes in its log until a checkpoint
 * writes them to the index (docs/design.md, D3): the control channel's
 * sync asks for one.  A daemon without the channel (an earlier vsnapfs)
 * is asked by an fsync of a directory of each mount of the store.  Errors
 * only warn: the index is then up to a second behind.
 */
static void sync_mounts(const char *store)
{
	size_t prefix = strlen(STOREDIR_FSNAME_PREFIX);
	struct ctl_msg *m = malloc(sizeof(*m));
	struct mntent *me;
	FILE *mf;
	int rc = -ENOMEM;

	if (m) {
		rc = chan_ask(store, CTL_SYNC, m, true);
		if (rc && rc != -ENOENT && rc != -ECONNREFUSED)
			fprintf(stderr, "vsnapctl: %s: cannot bring the index up to date: %s\n",
				store, strerror(-rc));
		free(m);
	}
	if (rc != -ENOENT && rc != -ECONNREFUSED && rc != -ENOMEM)
		return;
	mf = setmntent("/proc/self/mounts", "r");
	if (!mf)
		return;
	while ((me = getmntent(mf))) {
		int fd;

		if (strncmp(me->mnt_fsname, STOREDIR_FSNAME_PREFIX, prefix) ||
		    strcmp(me->mnt_fsname + prefix, store))
			continue;
		fd = open(me->mnt_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0 || fsync(fd))
			fprintf(stderr, "vsnapctl: %s: %s%s\n", me->mnt_dir, errno == ENOTCONN ?
				store_why(-ENOTCONN) : "cannot bring the index up to date: ",
				errno == ENOTCONN ? "" : strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	endmntent(mf);
}

int store_find(const char *arg, char *dir, size_t dirlen, char *rel, size_t rellen)
{
	int rc = store_resolve(arg, dir, dirlen, rel, rellen);

	if (rc)
		fprintf(stderr, "vsnapctl: %s: %s\n", arg, store_why(rc));
	return rc;
}

int store_open(const char *arg, bool chunks, struct store *st)
{
	char path[PATH_MAX + 32];
	uint64_t clean;
	int rc;

	rc = store_find(arg, st->dir, sizeof(st->dir), st->rel, sizeof(st->rel));
	if (rc)
		return rc;
	sync_mounts(st->dir);
	snprintf(path, sizeof(path), "%s/" STOREDIR_INDEX, st->dir);
	rc = bmap_open(path, 1, &st->bm);
	if (rc) {
		fprintf(stderr, "vsnapctl: %s: %s\n", path,
			rc == -EUCLEAN ? "damaged or not a vsnapfs index" :
			rc == -EPROTONOSUPPORT ? "unknown format version" : strerror(-rc));
		return rc;
	}
	if (bmap_format(st->bm) < BMAP_FORMAT_VERSION) {
		fprintf(stderr, "vsnapctl: %s: index format %d: mount the store once (read-write) "
			"to upgrade it to format %d\n", path, bmap_format(st->bm), BMAP_FORMAT_VERSION);
		return -EPROTONOSUPPORT;
	}
	st->bs = bmap_block_size(st->bm);
	st->in_use = store_in_use(st->dir);
	if (!st->in_use && bmap_meta_get(st->bm, "clean", &clean) == 0 && clean == 0)
		fprintf(stderr, "vsnapctl: %s was not cleanly unmounted: its last writes may be in "
			"its log, which the next mount replays; this reads the index without them\n",
			st->dir);
	if (!chunks)
		return 0;
	/* chunk_store_open would create a missing directory: look first */
	snprintf(path, sizeof(path), "%s/" STOREDIR_CHUNKS, st->dir);
	if (access(path, F_OK)) {
		rc = -errno;
		fprintf(stderr, "vsnapctl: %s: %s\n", path, strerror(-rc));
		return rc;
	}
	rc = chunk_store_open(path, st->bs, 1, &st->cs);
	if (rc)
		fprintf(stderr, "vsnapctl: %s: %s\n", path, strerror(-rc));
	return rc;
}

/*
 * Where status finds it (issue 15): a mounted store's daemon writes it
 * (CTL_SCRUB_DONE: it alone writes the index while it holds the store);
 * an unmounted one gets it from us, through a writable handle of our own
 * opened under the store's lock (an flock of the directory, as a daemon
 * takes it), so that no daemon mounts it in between.  A daemon that
 * mounted since we looked is asked instead.
 */
int store_record_scrub(struct store *st, const struct bmap_scrub *r)
{
	char path[PATH_MAX + 32];
	struct ctl_msg *m;
	struct bmap *bm = NULL;
	int dfd = -1, rc;

	if (!st->in_use) {
		dfd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0 || flock(dfd, LOCK_EX | LOCK_NB)) {
			rc = -errno;
			if (dfd >= 0)
				close(dfd);
			if (rc != -EWOULDBLOCK)
				return rc;
			st->in_use = true;      /* mounted meanwhile */
		}
	}
	if (!st->in_use) {
		snprintf(path, sizeof(path), "%s/" STOREDIR_INDEX, st->dir);
		rc = bmap_open(path, 0, &bm);
		if (!rc)
			rc = bmap_scrub_put(bm, r);
		bmap_close(bm);
		close(dfd);             /* and the lock with it */
		return rc;
	}
	m = malloc(sizeof(*m));
	if (!m)
		return -ENOMEM;
	ctl_msg_init(m, CTL_SCRUB_DONE);
	ctl_kv_add(m, "at_ns", "%" PRId64, r->at_ns);
	ctl_kv_add(m, "duration_ns", "%" PRId64, r->duration_ns);
	ctl_kv_add(m, "blocks", "%" PRIu64, r->blocks);
	ctl_kv_add(m, "damaged_blocks", "%" PRIu64, r->damaged);
	rc = chan_call(st->dir, m, m, true);    /* the caller's one line says why */
	free(m);
	return rc;
}

void store_close(struct store *st)
{
	chunk_store_close(st->cs);
	bmap_close(st->bm);
}
