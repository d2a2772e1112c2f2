/*
 * iostat: per-volume I/O rates of a running daemon, like zpool iostat -v.
 *
 *   vsnapctl iostat [-o COLS] [-n] [-b] [--raw] [--json] [MOUNTPOINT|STORE]
 *                   [INTERVAL [COUNT]]
 *
 * The daemon counts, per volume and snapshot file opened since the mount,
 * reads, writes and fsyncs that returned, the bytes they moved, those that
 * failed, the sum of their latencies and a log2 histogram of them (src/ns/
 * stats.c); CTL_IOSTAT gives them a page at a time.  The first report is
 * over the time since the mount, each next one over the INTERVAL seconds
 * before it (COUNT reports in all, or until interrupted).  A first
 * argument of digits only is the interval, as with zpool iostat.
 *
 * The table comes from table.c (libsmartcols, what lsblk uses), with list's
 * -o, -n, -b and --raw; iostat's own -H and -p are -n and -b.  --json
 * prints iostat's own object per report, one a line (a report that repeats
 * is a stream; each object carries its interval and the totals since the
 * mount, which one table of columns would not), not the table's JSON.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/array.h"
#include "vsnapfs/ctlmsg.h"

const char *const vio_kind_name[VIO_KINDS] = { "read", "write", "fsync" };

void vio_set_free(struct vio_set *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i].path);
	free(s->v);
	*s = (struct vio_set){ 0 };
}

/* "a,b,c,...": exactly n numbers; -EBADMSG if not. */
static int parse_list(const char *s, uint64_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *end;

		errno = 0;
		v[i] = strtoull(s, &end, 10);
		if (errno || end == s || (*end && *end != ','))
			return -EBADMSG;
		if (!*end)
			return i + 1 == n ? 0 : -EBADMSG;
		s = end + 1;
	}
	return -EBADMSG;
}

/* One reply's volumes into s; *next set if the daemon has more. */
static int parse_page(const struct ctl_msg *m, struct vio_set *s, uint64_t *next, bool *more)
{
	char key[16], *val = malloc(CTL_BODY_MAX + 1);
	struct vio *v = NULL;
	size_t pos = 0;
	int rc = val ? 0 : -ENOMEM;

	*more = false;
	while (!rc && ctl_kv_next(m, &pos, key, sizeof(key), val, CTL_BODY_MAX + 1)) {
		int k = key[0] == 'r' ? VIO_READ : key[0] == 'w' ? VIO_WRITE : VIO_FSYNC;

		if (!strcmp(key, "uptime_ns")) {
			s->uptime_ns = strtoull(val, NULL, 10);
		} else if (!strcmp(key, "next")) {
			*next = strtoull(val, NULL, 10);
			*more = true;
		} else if (!strcmp(key, "v")) {
			if (ARRAY_RESERVE(s->v, s->cap, s->n, 16)) {
				rc = -ENOMEM;
				break;
			}
			v = &s->v[s->n++];
			*v = (struct vio){ .ino = strtoull(val, NULL, 10) };
		} else if (!v) {
			continue;               /* keys before the first volume */
		} else if (!strcmp(key, "path")) {
			if (!(v->path = strdup(val)))
				rc = -ENOMEM;
		} else if (!strcmp(key, "r") || !strcmp(key, "w") || !strcmp(key, "f")) {
			uint64_t f[4];

			rc = parse_list(val, f, 4);
			v->ops[k] = f[0];
			v->bytes[k] = f[1];
			v->errors[k] = f[2];
			v->lat_ns[k] = f[3];
		} else if (!strcmp(key, "rh") || !strcmp(key, "wh") || !strcmp(key, "fh")) {
			rc = parse_list(val, v->hist[k], CTL_LAT_BUCKETS);
		}
	}
	for (size_t i = 0; !rc && i < s->n; i++)
		if (!s->v[i].path)
			rc = -EBADMSG;
	free(val);
	return rc;
}

int iostat_fetch(const char *dir, struct vio_set *out)
{
	struct ctl_msg *req = malloc(sizeof(*req)), *rep = malloc(sizeof(*rep));
	uint64_t after = 0, next = 0;
	bool more = true;
	int rc = req && rep ? 0 : -ENOMEM;

	*out = (struct vio_set){ 0 };
	while (!rc && more) {
		ctl_msg_init(req, CTL_IOSTAT);
		ctl_kv_add(req, "after", "%" PRIu64, after);
		rc = chan_call(dir, req, rep, false);
		if (!rc)
			rc = parse_page(rep, out, &next, &more);
		if (!rc && more && next <= after)
			rc = -EBADMSG;           /* no progress: never loop */
		if (rc == -EBADMSG)
			fprintf(stderr, "vsnapctl: %s: the daemon's iostat reply is malformed\n", dir);
		after = next;
	}
	if (rc)
		vio_set_free(out);
	free(req);
	free(rep);
	return rc;
}

/* ---- rates -------------------------------------------------------------------------- */

struct rate {                           /* one row of a report */
	const char *volume;
	double secs;                    /* what it is over */
	uint64_t ops[VIO_KINDS], bytes[VIO_KINDS], errors[VIO_KINDS], lat_ns[VIO_KINDS];
	uint64_t hist[VIO_KINDS][CTL_LAT_BUCKETS];
	const struct vio *now;          /* totals since the mount; NULL: the total row */
};

/* The sample of ino in prev, or NULL. */
static const struct vio *find(const struct vio_set *prev, uint64_t ino)
{
	for (size_t i = 0; prev && i < prev->n; i++)
		if (prev->v[i].ino == ino)
			return &prev->v[i];
	return NULL;
}

static void rate_add(struct rate *r, const struct vio *now, const struct vio *was)
{
	for (int k = 0; k < VIO_KINDS; k++) {
		r->ops[k] += now->ops[k] - (was ? was->ops[k] : 0);
		r->bytes[k] += now->bytes[k] - (was ? was->bytes[k] : 0);
		r->errors[k] += now->errors[k] - (was ? was->errors[k] : 0);
		r->lat_ns[k] += now->lat_ns[k] - (was ? was->lat_ns[k] : 0);
		for (int b = 0; b < CTL_LAT_BUCKETS; b++)
			r->hist[k][b] += now->hist[k][b] - (was ? was->hist[k][b] : 0);
	}
}

/* Mean latency of kind k in seconds, -1 if none. */
static double lat_avg(const struct rate *r, int k)
{
	uint64_t n = r->ops[k] + r->errors[k];

	return n ? r->lat_ns[k] / 1e9 / n : -1;
}

/* The 99th percentile's bucket bound in seconds (bucket b: under 2^b us), -1 if none. */
static double lat_p99(const struct rate *r, int k)
{
	uint64_t n = 0, seen = 0;

	for (int b = 0; b < CTL_LAT_BUCKETS; b++)
		n += r->hist[k][b];
	for (int b = 0; n && b < CTL_LAT_BUCKETS; b++) {
		seen += r->hist[k][b];
		if (seen * 100 >= n * 99)
			return b == CTL_LAT_BUCKETS - 1 ? 1.0 / 0.0 : ldexp(1e-6, b);
	}
	return -1;
}

/* ---- output ------------------------------------------------------------------------- */

enum {
	COL_VOLUME, COL_READS, COL_WRITES, COL_RBYTES, COL_WBYTES, COL_RLAT, COL_WLAT, COL_FSYNCS,
	COL_FLAT, COL_ERRORS, COL_RP99, COL_WP99, COL_FP99,
};

/* The JSON keys are those of --json's rows (iostat prints its own JSON, below). */
static const struct table_col iostat_cols[] = {
	[COL_VOLUME] = { "VOLUME", "volume", TT_TEXT, true,
			 "the volume's or snapshot file's path in the mount; total", true },
	[COL_READS] = { "READS/s", "reads_per_second", TT_RATE, true, "reads per second" },
	[COL_WRITES] = { "WRITES/s", "writes_per_second", TT_RATE, true, "writes per second" },
	[COL_RBYTES] = { "RBYTES/s", "read_bytes_per_second", TT_BYTES, true,
			 "bytes read per second" },
	[COL_WBYTES] = { "WBYTES/s", "write_bytes_per_second", TT_BYTES, true,
			 "bytes written per second" },
	[COL_RLAT] = { "RLAT", "read_latency_avg_seconds", TT_LATENCY, true,
		       "mean latency of a read" },
	[COL_WLAT] = { "WLAT", "write_latency_avg_seconds", TT_LATENCY, true,
		       "mean latency of a write" },
	[COL_FSYNCS] = { "FSYNCS/s", "fsyncs_per_second", TT_RATE, true, "fsyncs per second" },
	[COL_FLAT] = { "FLAT", "fsync_latency_avg_seconds", TT_LATENCY, true,
		       "mean latency of an fsync" },
	[COL_ERRORS] = { "ERRORS", "errors", TT_COUNT, true,
			 "reads, writes and fsyncs that failed in the interval" },
	[COL_RP99] = { "RP99", "read_latency_p99_seconds", TT_LATENCY, false,
		       "99th percentile of read latency (its bucket's bound)" },
	[COL_WP99] = { "WP99", "write_latency_p99_seconds", TT_LATENCY, false,
		       "99th percentile of write latency" },
	[COL_FP99] = { "FP99", "fsync_latency_p99_seconds", TT_LATENCY, false,
		       "99th percentile of fsync latency" },
};

#define NCOLS (sizeof(iostat_cols) / sizeof(iostat_cols[0]))

static uint64_t rate_errors(const struct rate *r)
{
	return r->errors[VIO_READ] + r->errors[VIO_WRITE] + r->errors[VIO_FSYNC];
}

static void iostat_row(struct table *t, const struct rate *r)
{
	double s = r->secs > 0 ? r->secs : 1;

	table_row(t);
	table_text(t, COL_VOLUME, r->volume);
	table_double(t, COL_READS, r->ops[VIO_READ] / s);
	table_double(t, COL_WRITES, r->ops[VIO_WRITE] / s);
	table_double(t, COL_RBYTES, r->bytes[VIO_READ] / s);
	table_double(t, COL_WBYTES, r->bytes[VIO_WRITE] / s);
	table_double(t, COL_RLAT, lat_avg(r, VIO_READ));
	table_double(t, COL_WLAT, lat_avg(r, VIO_WRITE));
	table_double(t, COL_FSYNCS, r->ops[VIO_FSYNC] / s);
	table_double(t, COL_FLAT, lat_avg(r, VIO_FSYNC));
	table_u64(t, COL_ERRORS, rate_errors(r));
	table_double(t, COL_RP99, lat_p99(r, VIO_READ));
	table_double(t, COL_WP99, lat_p99(r, VIO_WRITE));
	table_double(t, COL_FP99, lat_p99(r, VIO_FSYNC));
}

/* null: none, or a p99 in the last bucket, which has no bound (JSON has
 * no infinity, and a string is no number) */
static void json_lat(const char *name, double v)
{
	if (v < 0 || isinf(v))
		printf(",\"%s\":null", name);
	else
		printf(",\"%s\":%.9g", name, v);
}

static void json_row(const struct rate *r, bool first)
{
	double s = r->secs > 0 ? r->secs : 1;

	printf("%s{\"volume\":", first ? "" : ",");
	json_str(stdout, r->volume);
	for (int k = 0; k < VIO_KINDS; k++) {
		const char *n = vio_kind_name[k];
		char name[64];

		if (r->now)
			printf(",\"%ss_total\":%" PRIu64 ",\"%s_errors_total\":%" PRIu64
			       ",\"%s_latency_seconds_total\":%.9g", n, r->now->ops[k], n,
			       r->now->errors[k], n, r->now->lat_ns[k] / 1e9);
		if (r->now && k != VIO_FSYNC)
			printf(",\"%s_bytes_total\":%" PRIu64, n, r->now->bytes[k]);
		printf(",\"%ss_per_second\":%.9g", n, r->ops[k] / s);
		if (k != VIO_FSYNC)
			printf(",\"%s_bytes_per_second\":%.9g", n, r->bytes[k] / s);
		snprintf(name, sizeof(name), "%s_latency_avg_seconds", n);
		json_lat(name, lat_avg(r, k));
		snprintf(name, sizeof(name), "%s_latency_p99_seconds", n);
		json_lat(name, lat_p99(r, k));
	}
	printf(",\"errors\":%" PRIu64 "}", rate_errors(r));
}

/* One report: cur against prev (NULL: since the mount). */
static int report(const char *dir, const struct vio_set *cur, const struct vio_set *prev,
		  const struct table_opts *o)
{
	double secs = (cur->uptime_ns - (prev ? prev->uptime_ns : 0)) / 1e9;
	struct rate total = { .volume = "total", .secs = secs };
	struct table *t = NULL;
	int rc = 0;

	if (json) {
		printf("{\"store\":");
		json_str(stdout, dir);
		printf(",\"interval_seconds\":%.9g,\"since_mount\":%s,\"volumes\":[", secs,
		       prev ? "false" : "true");
	} else {
		rc = table_new("volumes", iostat_cols, NCOLS, o, &iostat_cmd, &t);
	}
	for (size_t i = 0; i < cur->n && !rc; i++) {
		struct rate r = { .volume = cur->v[i].path, .secs = secs, .now = &cur->v[i] };
		const struct vio *was = find(prev, cur->v[i].ino);

		rate_add(&r, &cur->v[i], was);
		rate_add(&total, &cur->v[i], was);
		if (json)
			json_row(&r, i == 0);
		else
			iostat_row(t, &r);
	}
	if (json) {
		printf("],\"total\":");
		json_row(&total, true);
		printf("}\n");
	} else if (!rc) {
		iostat_row(t, &total);
		rc = table_print(t);
	}
	table_free(t);
	fflush(stdout);
	return rc;
}

static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

static int iostat_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "output", required_argument, NULL, 'o' },
		{ "noheadings", no_argument, NULL, 'n' },
		{ "no-headings", no_argument, NULL, 'n' },     /* -H's long name, as before */
		{ "bytes", no_argument, NULL, 'b' },
		{ "parsable", no_argument, NULL, 'b' },         /* -p's, the same */
		{ "raw", no_argument, NULL, 'r' },
		{ 0 }
	};
	struct cli c = { .cmd = &iostat_cmd, .shortopts = "o:nHbpr", .longopts = opts,
			 .max_args = 3 };
	struct table_opts o = { 0 };
	struct vio_set prev = { 0 }, cur = { 0 };
	const char *arg = ".";
	char dir[PATH_MAX];
	long interval = 0, count = -1;
	int ch, rc = 0, i;

	while ((ch = cli_next(&c, argc, argv)) >= 0) {
		switch (ch) {
		case 'o': o.columns = optarg; break;
		case 'n': case 'H': o.noheadings = true; break;
		case 'b': case 'p': o.bytes = true; break;
		case 'r': o.raw = true; break;
		}
	}
	if (ch == CLI_STOP)
		return c.exit;
	if (json && (o.columns || o.raw))
		return cli_bad(&iostat_cmd, "-o and --raw shape the table; --json prints every "
			       "field");
	i = optind;
	if (i < argc && !all_digits(argv[i]))
		arg = argv[i++];
	if (i < argc) {
		if (!all_digits(argv[i]) || (interval = atol(argv[i])) < 1)
			return cli_bad(&iostat_cmd, "INTERVAL is a whole number of seconds, at "
				       "least 1, not '%s'", argv[i]);
		i++;
	}
	if (i < argc) {
		if (!all_digits(argv[i]) || (count = atol(argv[i])) < 1)
			return cli_bad(&iostat_cmd, "COUNT is a whole number, at least 1, not '%s'",
				       argv[i]);
		i++;
	}
	if (i < argc)
		return cli_bad(&iostat_cmd, "unexpected argument '%s'", argv[i]);
	if (!interval)
		count = 1;
	if (ctl_mounted_store(arg, &iostat_cmd, dir, sizeof(dir)))
		return 2;
	for (long n = 0; count < 0 || n < count; n++) {
		if (n)
			sleep((unsigned)interval);
		rc = iostat_fetch(dir, &cur);
		if (rc) {
			vio_set_free(&prev);
			return 2;
		}
		/* a daemon started again since (its uptime went back): since the mount */
		rc = report(dir, &cur, n && cur.uptime_ns > prev.uptime_ns ? &prev : NULL, &o);
		vio_set_free(&prev);
		prev = cur;
		cur = (struct vio_set){ 0 };
		if (rc) {
			if (rc != -EINVAL)      /* -o: table_new said why */
				fprintf(stderr, "vsnapctl: iostat: %s\n", strerror(-rc));
			break;
		}
	}
	vio_set_free(&prev);
	return rc ? 2 : 0;
}

static void iostat_help_more(FILE *f)
{
	table_help(iostat_cols, NCOLS, f);
}

const struct cmd iostat_cmd = {
	.name = "iostat",
	.synopsis = "[-o COLS] [-n] [-b] [--raw] [MOUNTPOINT|STORE] [INTERVAL [COUNT]]",
	.summary = "per-volume reads, writes, fsyncs, bytes and latency per second",
	.help = "Per volume and snapshot file opened since the mount, and in all, of the\n"
		"running daemon.  The first report covers the time since the mount, each next\n"
		"one the INTERVAL seconds before it; COUNT reports in all (default: one without\n"
		"INTERVAL, else until interrupted).  A first operand of digits only is the\n"
		"INTERVAL.  The store must be mounted (default: the current directory).\n"
		"  -o, --output COLS          the columns, comma-separated (below); +COLS adds\n"
		"                             to the default\n"
		"  -n, -H, --noheadings       no header line\n"
		"  -b, -p, --bytes            exact numbers: bytes per second, rates with two\n"
		"                             decimals, latencies in whole microseconds\n"
		"  -r, --raw                  one line a row, fields separated by one space\n"
		"With --json: one object a line per report, {\"store\", \"interval_seconds\",\n"
		"\"since_mount\", \"volumes\": [{...}], \"total\": {...}}, every field (with\n"
		"the totals since the mount), numbers as numbers; keys in docs/operations.md.\n",
	.common = CLI_JSON,
	.help_more = iostat_help_more,
	.run = iostat_main,
};
