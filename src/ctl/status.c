/*
 * status: what a store is and what its daemon is doing.
 *
 *   vsnapctl status [--json] [MOUNTPOINT|STORE]
 *
 * Mounted, everything comes from the daemon (CTL_STATUS, src/ns/stats.c):
 * pid and version, store, block size, format, the failed-sync state,
 * space, counts, the last GC pass and the last scrub.  Unmounted, from the
 * store itself: the index read-only (format, counts, the last scrub) and
 * the chunk directory.  Both end up as the same key=value lines, which one
 * table (fields[]) turns into "key: value" sections or JSON with the unit
 * in every field name (docs/operations.md says what each means).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/storedir.h"

enum fmt { F_TEXT, F_COUNT, F_BYTES, F_TIME, F_DURATION, F_BOOL };

static const struct field {
	const char *key;                /* on the wire: "section.name" */
	const char *label;              /* human; NULL: not in its section */
	const char *json;               /* JSON name inside its section */
	enum fmt fmt;
} fields[] = {
	{ "state.mounted", "mounted", "mounted", F_BOOL },
	{ "state.clean", "cleanly unmounted", "clean", F_BOOL },
	{ "daemon.pid", "pid", "pid", F_COUNT },
	{ "daemon.version", "version", "version", F_TEXT },
	{ "daemon.protocol", "control protocol", "protocol_version", F_COUNT },
	{ "daemon.started_ns", "started", "started_unix_s", F_TIME },
	{ "store.path", NULL, "path", F_TEXT },         /* the first line */
	{ "store.format", "index format", "format_version", F_COUNT },
	{ "store.block_size_bytes", "block size", "block_size_bytes", F_BYTES },
	{ "store.readonly", "mounted read-only", "readonly", F_BOOL },
	{ "sync.failed", "failed", "failed", F_BOOL },
	{ "space.data_bytes", "data in chunk files", "data_bytes", F_BYTES },
	{ "space.chunk_files", "chunk files", "chunk_files", F_COUNT },
	{ "space.spare_bytes", "spare chunk files", "spare_bytes", F_BYTES },
	{ "space.index_bytes", "index", "index_bytes", F_BYTES },
	{ "space.reserve_bytes", "reserve", "reserve_bytes", F_BYTES },
	{ "space.host_size_bytes", "host file system", "host_size_bytes", F_BYTES },
	{ "space.host_free_bytes", "host free", "host_free_bytes", F_BYTES },
	{ "count.volumes", "volumes", "volumes", F_COUNT },
	{ "count.directories", "directories", "directories", F_COUNT },
	{ "count.snapshots", "snapshots", "snapshots", F_COUNT },
	{ "count.open_volumes", "open volumes", "open_volumes", F_COUNT },
	{ "gc.passes", "passes since mount", "passes", F_COUNT },
	{ "gc.last_ns", "last pass", "last_unix_s", F_TIME },
	{ "gc.last_duration_ns", "took", "last_duration_seconds", F_DURATION },
	{ "gc.last_moved_blocks", "live blocks moved", "last_moved_blocks", F_COUNT },
	{ "gc.last_removed_chunks", "chunk files removed", "last_removed_chunks", F_COUNT },
	{ "gc.last_freed_bytes", "freed", "last_freed_bytes", F_BYTES },
	{ "gc.last_garbage_bytes", "garbage left", "last_garbage_bytes", F_BYTES },
	{ "gc.last_error", "error", "last_error", F_TEXT },
	{ "scrub.last_ns", "last scrub", "last_unix_s", F_TIME },
	{ "scrub.last_duration_ns", "took", "last_duration_seconds", F_DURATION },
	{ "scrub.last_blocks", "blocks verified", "last_blocks", F_COUNT },
	{ "scrub.last_damaged_blocks", "damaged blocks", "last_damaged_blocks", F_COUNT },
};

#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static const struct {
	const char *name, *title, *json;        /* on the wire, human, JSON */
} sections[] = {
	{ "state", "state", NULL }, { "daemon", "daemon", "daemon" }, { "store", "store", "store" },
	{ "sync", "sync", "sync" }, { "space", "space", "space" },
	{ "count", "contents", "counts" }, { "gc", "gc", "gc" }, { "scrub", "scrub", "scrub" },
};

int ctl_mounted_store(const char *arg, const struct cmd *cmd, char *dir, size_t len)
{
	char rel[PATH_MAX];

	if (store_find(arg, dir, len, rel, sizeof(rel)))
		return -1;
	if (storedir_lock_holder(dir, NULL, 0) == 0) {
		fprintf(stderr, "vsnapctl: %s: %s is not mounted: its figures are the running "
			"daemon's\n", cmd->name, dir);
		return -1;
	}
	return 0;
}

/* Is there a daemon with a control channel at dir? */
static bool has_daemon(const char *dir)
{
	char sock[PATH_MAX + 16];

	snprintf(sock, sizeof(sock), "%s/" STOREDIR_CTL_SOCK, dir);
	return storedir_lock_holder(dir, NULL, 0) != 0 && access(sock, F_OK) == 0;
}

static int chunk_add(void *ctx, uint64_t id, uint32_t nslots)
{
	uint64_t *c = ctx;

	c[0]++;
	c[1] += nslots;
	return 0;
}

static uint64_t file_size(const char *dir, const char *name)
{
	char path[PATH_MAX + 64];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return stat(path, &sb) ? 0 : (uint64_t)sb.st_size;
}

/* What an unmounted store says of itself, as the daemon's keys. */
static int local_status(struct store *st, struct ctl_msg *m)
{
	struct bmap_counts cnt;
	struct bmap_scrub sc;
	uint64_t chunks[2] = { 0, 0 }, clean = 1;
	int rc;

	ctl_msg_init(m, CTL_STATUS);
	ctl_kv_add(m, "state.mounted", "%d", st->in_use);
	if (!st->in_use && bmap_meta_get(st->bm, "clean", &clean) == 0)
		ctl_kv_add(m, "state.clean", "%d", clean != 0);
	ctl_kv_add(m, "store.path", "%s", st->dir);
	ctl_kv_add(m, "store.format", "%d", bmap_format(st->bm));
	ctl_kv_add(m, "store.block_size_bytes", "%" PRIu32, st->bs);
	rc = chunk_foreach(st->cs, chunk_add, chunks);
	if (!rc) {
		ctl_kv_add(m, "space.data_bytes", "%" PRIu64, chunks[1] * st->bs);
		ctl_kv_add(m, "space.chunk_files", "%" PRIu64, chunks[0]);
	}
	ctl_kv_add(m, "space.spare_bytes", "%" PRIu64, dir_bytes(st->dir, STOREDIR_SPARE));
	ctl_kv_add(m, "space.index_bytes", "%" PRIu64, file_size(st->dir, STOREDIR_INDEX) +
		   file_size(st->dir, STOREDIR_INDEX "-wal"));
	if (!rc)
		rc = bmap_counts(st->bm, &cnt);
	if (!rc) {
		ctl_kv_add(m, "count.volumes", "%" PRIu64, cnt.volumes);
		ctl_kv_add(m, "count.directories", "%" PRIu64, cnt.dirs);
		ctl_kv_add(m, "count.snapshots", "%" PRIu64, cnt.snapshots);
		rc = bmap_scrub_last(st->bm, &sc);
	}
	if (!rc) {
		ctl_kv_add(m, "scrub.last_ns", "%" PRId64, sc.at_ns);
		ctl_kv_add(m, "scrub.last_duration_ns", "%" PRId64, sc.duration_ns);
		ctl_kv_add(m, "scrub.last_blocks", "%" PRIu64, sc.blocks);
		ctl_kv_add(m, "scrub.last_damaged_blocks", "%" PRIu64, sc.damaged);
	}
	return rc == -ENOENT ? 0 : rc;
}

static void fmt_time(char *out, size_t len, int64_t ns)
{
	int64_t t = ns / 1000000000, ago = time(NULL) - t;
	char ts[64];

	local_time(t, "%Y-%m-%d %H:%M:%S %Z", ts, sizeof(ts));
	if (ago < 120)
		snprintf(out, len, "%s (%" PRId64 " s ago)", ts, ago);
	else if (ago < 7200)
		snprintf(out, len, "%s (%" PRId64 " min ago)", ts, ago / 60);
	else
		snprintf(out, len, "%s (%" PRId64 " h ago)", ts, ago / 3600);
}

static void print_value(const struct field *f, const char *v)
{
	uint64_t n = strtoull(v, NULL, 10);
	char buf[128];

	switch (f->fmt) {
	case F_BYTES:
		human(n, buf, sizeof(buf));
		printf(n < 1024 ? "%s bytes\n" : "%s (%" PRIu64 " bytes)\n", buf, n);
		break;
	case F_TIME:
		fmt_time(buf, sizeof(buf), (int64_t)n);
		printf("%s\n", buf);
		break;
	case F_DURATION:
		printf("%.3f s\n", n / 1e9);
		break;
	case F_BOOL:
		printf("%s\n", n ? "yes" : "no");
		break;
	default:
		printf("%s\n", v);
	}
}

/* The lines of one section, "    label: value", after its title. */
static void print_section(const struct ctl_msg *m, const char *sec, const char *title)
{
	char v[PATH_MAX + 64], *key;
	bool shown = false;

	for (size_t i = 0; i < NFIELDS; i++) {
		const struct field *f = &fields[i];
		size_t sl = strlen(sec);

		if (!f->label || strncmp(f->key, sec, sl) || f->key[sl] != '.' ||
		    ctl_kv_get(m, f->key, v, sizeof(v)))
			continue;
		if (!shown)
			printf("%s:\n", title);
		shown = true;
		key = xasprintf("%s:", f->label);
		printf("    %-22s", key ? key : f->label);
		free(key);
		print_value(f, v);
	}
}

/* What the admin should do, after the figures. */
static void print_actions(const struct ctl_msg *m)
{
	uint64_t failed = 0, damaged = 0, mounted = 0, clean = 1;

	ctl_kv_u64(m, "state.mounted", &mounted);
	ctl_kv_u64(m, "state.clean", &clean);
	ctl_kv_u64(m, "sync.failed", &failed);
	ctl_kv_u64(m, "scrub.last_damaged_blocks", &damaged);
	if (failed)
		printf("\nSYNC FAILED: a write to the store's disk could not be made durable\n"
		       "  (fdatasync failed).  Since then every write and fsync to this mount\n"
		       "  fails with EIO; reads go on.  What was fsynced before is safe.\n"
		       "action: look at the host's disk (dmesg, free space), then unmount\n"
		       "  (fusermount3 -u MOUNTPOINT) and mount again: the store comes back as of\n"
		       "  the last successful sync; run vsnapctl check on it.\n");
	if (damaged)
		printf("\nDAMAGE: the last scrub found damaged blocks.\n"
		       "action: run vsnapctl scrub again for the list of files and offsets;\n"
		       "  restore those files from a snapshot or a backup.\n");
	if (!mounted && !clean)
		printf("\nnote: not cleanly unmounted: its last writes are in its log, which the\n"
		       "  next mount replays; the figures above do not include them.\n");
}

static void print_human(const struct ctl_msg *m)
{
	char v[PATH_MAX + 64];
	uint64_t mounted = 0, clean = 1;

	ctl_kv_u64(m, "state.mounted", &mounted);
	ctl_kv_u64(m, "state.clean", &clean);
	if (!ctl_kv_get(m, "store.path", v, sizeof(v)))
		printf("store: %s\n", v);
	printf("state: %s\n", mounted ? "mounted" : clean ?
	       "not mounted, cleanly unmounted (figures read from the store)" :
	       "not mounted, NOT cleanly unmounted (figures read from the store)");
	for (size_t s = 1; s < sizeof(sections) / sizeof(sections[0]); s++)
		print_section(m, sections[s].name, sections[s].title);
	if (ctl_kv_get(m, "scrub.last_ns", v, sizeof(v)))
		printf("scrub:\n    %-22snever recorded\n", "last scrub:");
	print_actions(m);
}

static void print_json(const struct ctl_msg *m)
{
	char v[PATH_MAX + 64];

	printf("{");
	for (size_t s = 0; s < sizeof(sections) / sizeof(sections[0]); s++) {
		const char *sec = sections[s].name;
		size_t sl = strlen(sec);
		bool open = false;

		for (size_t i = 0; i < NFIELDS; i++) {
			const struct field *f = &fields[i];

			if (strncmp(f->key, sec, sl) || f->key[sl] != '.' ||
			    ctl_kv_get(m, f->key, v, sizeof(v)))
				continue;
			if (s == 0) {           /* state: at the top level */
				printf("%s\"%s\":", open ? "," : "", f->json);
			} else {
				printf(open ? "," : "%s\"%s\":{", s ? "," : "", sections[s].json);
				printf("\"%s\":", f->json);
			}
			open = true;
			if (f->fmt == F_TEXT)
				json_str(stdout, v);
			else if (f->fmt == F_BOOL)
				printf("%s", strcmp(v, "0") ? "true" : "false");
			else if (f->fmt == F_TIME || f->fmt == F_DURATION)
				printf("%.9f", strtoull(v, NULL, 10) / 1e9);
			else
				printf("%s", v);
		}
		if (open && s)
			printf("}");
	}
	printf("}\n");
}

static int status_main(int argc, char **argv)
{
	struct cli c = { .cmd = &status_cmd, .max_args = 1 };
	struct ctl_msg *m = NULL;
	struct store st = { 0 };
	char dir[PATH_MAX], rel[PATH_MAX];
	int rc = 2;

	if (cli_next(&c, argc, argv) == CLI_STOP)      /* none of its own: -1 or this */
		return c.exit;
	if (store_find(optind < argc ? argv[optind] : ".", dir, sizeof(dir), rel, sizeof(rel)))
		return 2;
	m = malloc(sizeof(*m));
	if (!m) {
		fprintf(stderr, "vsnapctl: status: out of memory\n");
		return 2;
	}
	if (has_daemon(dir)) {
		if (chan_ask(dir, CTL_STATUS, m, false))
			goto out;
		ctl_kv_add(m, "state.mounted", "1");
	} else {
		/* not mounted, or by a daemon without the channel: the store */
		if (store_open(dir, true, &st))
			goto out;
		rc = local_status(&st, m);
		if (rc) {
			fprintf(stderr, "vsnapctl: status: %s: %s\n", dir, strerror(-rc));
			rc = 2;
			goto out;
		}
	}
	if (json)
		print_json(m);
	else
		print_human(m);
	rc = 0;
out:
	store_close(&st);
	free(m);
	return rc;
}

const struct cmd status_cmd = {
	.name = "status",
	.synopsis = "[MOUNTPOINT|STORE]",
	.summary = "the store and its running daemon: space, GC, last scrub, failed-sync state",
	.help = "Mounted (a daemon serves the store): its pid, version and start, the store's\n"
		"format and block size, the failed-sync state, space (data, spare chunk files,\n"
		"index, reserve, host), volumes, directories and snapshots, the last GC pass\n"
		"and the last scrub, from the daemon.  Not mounted: what the store itself says\n"
		"(format, space, counts, the last scrub).  After the figures, what to do if a\n"
		"sync failed, the last scrub found damage, or the store was not cleanly\n"
		"unmounted.  The operand is a mount point, a path in a mount, or a store\n"
		"directory (default: the current directory).\n"
		"With --json: one object, the unit in every field name (docs/operations.md).\n",
	.common = CLI_JSON,
	.run = status_main,
};
