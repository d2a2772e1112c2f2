/*
 * iostat: per-volume I/O rates of a running daemon, like zpool iostat -v.
 *
 *   vsnapctl iostat [-p] [-H] [--json] [MOUNTPOINT|STORE] [INTERVAL [COUNT]]
 *
 * The daemon counts, per volume and snapshot file opened since the mount,
 * reads, writes and fsyncs that returned, the bytes they moved, those that
 * failed, the sum of their latencies and a log2 histogram of them (src/ns/
 * stats.c); CTL_IOSTAT gives them a page at a time.  The first report is
 * over the time since the mount, each next one over the INTERVAL seconds
 * before it (COUNT reports in all, or until interrupted).  A first
 * argument of digits only is the interval, as with zpool iostat.
 *
 * The table comes from libsmartcols (what lsblk uses); --json prints one
 * object per report, with the totals since the mount and the rates.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libsmartcols.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/array.h"
#include "vsnapfs/ctlmsg.h"

static const char *const kind_name[VIO_KINDS] = { "read", "write", "fsync" };

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

struct iostat_opts {
	bool exact, noheadings;
};

static void fmt_rate(char *out, size_t len, double v, bool bytes, bool exact)
{
	if (exact)
		snprintf(out, len, bytes ? "%.0f" : "%.2f", v);
	else if (bytes)
		human((uint64_t)(v + 0.5), out, len);
	else
		snprintf(out, len, v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : "%.2f", v);
}

static void fmt_lat(char *out, size_t len, double secs, bool exact)
{
	if (secs < 0)
		snprintf(out, len, "-");
	else if (exact)
		snprintf(out, len, "%.0f", secs * 1e6);        /* microseconds */
	else if (secs < 1e-3)
		snprintf(out, len, "%.0fus", secs * 1e6);
	else if (secs < 1)
		snprintf(out, len, "%.1fms", secs * 1e3);
	else
		snprintf(out, len, "%.2fs", secs);
}

static const char *const cols[] = { "VOLUME", "READS/s", "WRITES/s", "RBYTES/s", "WBYTES/s",
				    "RLAT", "WLAT", "FSYNCS/s", "FLAT", "ERRORS" };

static void iostat_row(struct libscols_table *tb, const struct rate *r, bool exact)
{
	struct libscols_line *ln = scols_table_new_line(tb, NULL);
	double s = r->secs > 0 ? r->secs : 1;
	char c[16][32];
	int i = 0;

	if (!ln)
		return;
	scols_line_set_data(ln, i++, r->volume);
	fmt_rate(c[i], sizeof(c[i]), r->ops[VIO_READ] / s, false, exact), i++;
	fmt_rate(c[i], sizeof(c[i]), r->ops[VIO_WRITE] / s, false, exact), i++;
	fmt_rate(c[i], sizeof(c[i]), r->bytes[VIO_READ] / s, true, exact), i++;
	fmt_rate(c[i], sizeof(c[i]), r->bytes[VIO_WRITE] / s, true, exact), i++;
	fmt_lat(c[i], sizeof(c[i]), lat_avg(r, VIO_READ), exact), i++;
	fmt_lat(c[i], sizeof(c[i]), lat_avg(r, VIO_WRITE), exact), i++;
	fmt_rate(c[i], sizeof(c[i]), r->ops[VIO_FSYNC] / s, false, exact), i++;
	fmt_lat(c[i], sizeof(c[i]), lat_avg(r, VIO_FSYNC), exact), i++;
	snprintf(c[i], sizeof(c[i]), "%" PRIu64,
		 r->errors[VIO_READ] + r->errors[VIO_WRITE] + r->errors[VIO_FSYNC]), i++;
	for (int k = 1; k < i; k++)
		scols_line_set_data(ln, k, c[k]);
}

static void json_lat(const char *name, double v)
{
	if (v < 0)
		printf(",\"%s\":null", name);
	else if (v > 1e300)
		printf(",\"%s\":\"+Inf\"", name);
	else
		printf(",\"%s\":%.9g", name, v);
}

static void json_row(const struct rate *r, bool first)
{
	double s = r->secs > 0 ? r->secs : 1;

	printf("%s{\"volume\":", first ? "" : ",");
	json_str(stdout, r->volume);
	for (int k = 0; k < VIO_KINDS; k++) {
		const char *n = kind_name[k];
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
	printf("}");
}

/* One report: cur against prev (NULL: since the mount). */
static int report(const char *dir, const struct vio_set *cur, const struct vio_set *prev,
		  const struct iostat_opts *o)
{
	double secs = (cur->uptime_ns - (prev ? prev->uptime_ns : 0)) / 1e9;
	struct rate total = { .volume = "total", .secs = secs };
	struct libscols_table *tb = NULL;
	int rc = 0;

	if (json) {
		printf("{\"store\":");
		json_str(stdout, dir);
		printf(",\"interval_seconds\":%.9g,\"since_mount\":%s,\"volumes\":[", secs,
		       prev ? "false" : "true");
	} else {
		tb = scols_new_table();
		if (!tb)
			return -ENOMEM;
		scols_table_enable_noheadings(tb, o->noheadings);
		for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++)
			if (!scols_table_new_column(tb, cols[i], 0, i ? SCOLS_FL_RIGHT : 0))
				rc = -ENOMEM;
	}
	for (size_t i = 0; i < cur->n && !rc; i++) {
		struct rate r = { .volume = cur->v[i].path, .secs = secs, .now = &cur->v[i] };
		const struct vio *was = find(prev, cur->v[i].ino);

		rate_add(&r, &cur->v[i], was);
		rate_add(&total, &cur->v[i], was);
		if (json)
			json_row(&r, i == 0);
		else
			iostat_row(tb, &r, o->exact);
	}
	if (json) {
		printf("],\"total\":");
		json_row(&total, true);
		printf("}\n");
	} else if (!rc) {
		iostat_row(tb, &total, o->exact);
		scols_print_table(tb);
	}
	scols_unref_table(tb);
	fflush(stdout);
	return rc;
}

static void iostat_usage(FILE *f)
{
	fprintf(f, "usage: vsnapctl iostat [-p] [-H] [--json] [MOUNTPOINT|STORE] [INTERVAL [COUNT]]\n"
		"  per-volume reads, writes and fsyncs per second, bytes per second, mean latency\n"
		"  and errors of the running daemon; the first report covers the time since the\n"
		"  mount, each next one the INTERVAL seconds before it\n"
		"  -p, --parsable   exact numbers: bytes/s, latencies in microseconds\n"
		"  -H, --no-headings  no header line\n"
		"  --json           one JSON object per report (totals since the mount and rates)\n");
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

int cmd_iostat(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' }, { "parsable", no_argument, NULL, 'p' },
		{ "no-headings", no_argument, NULL, 'H' }, { "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct iostat_opts o = { 0 };
	struct vio_set prev = { 0 }, cur = { 0 };
	const char *arg = ".";
	char dir[PATH_MAX];
	long interval = 0, count = -1;
	int c, rc = 0, i;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "pHh", lo, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'p': o.exact = true; break;
		case 'H': o.noheadings = true; break;
		case 'h': iostat_usage(stdout); return 0;
		default: bad_option("iostat", argv); return 2;
		}
	}
	i = optind;
	if (i < argc && !all_digits(argv[i]))
		arg = argv[i++];
	if (i < argc) {
		if (!all_digits(argv[i]) || (interval = atol(argv[i])) < 1) {
			fprintf(stderr, "vsnapctl: iostat: INTERVAL is a whole number of seconds, "
				"at least 1: %s\n", argv[i]);
			return 2;
		}
		i++;
	}
	if (i < argc) {
		if (!all_digits(argv[i]) || (count = atol(argv[i])) < 1) {
			fprintf(stderr, "vsnapctl: iostat: COUNT is a whole number, at least 1: %s\n",
				argv[i]);
			return 2;
		}
		i++;
	}
	if (i < argc) {
		fprintf(stderr, "vsnapctl: iostat: too many arguments\n");
		return 2;
	}
	if (!interval)
		count = 1;
	if (ctl_mounted_store(arg, "iostat", dir, sizeof(dir)))
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
			fprintf(stderr, "vsnapctl: iostat: %s\n", strerror(-rc));
			break;
		}
	}
	vio_set_free(&prev);
	return rc ? 2 : 0;
}

const struct cmd iostat_cmd = {
	.name = "iostat",
	.synopsis = "[-p] [-H] [--json] [MOUNTPOINT|STORE] [INTERVAL [COUNT]]",
	.summary = "per-volume reads, writes, fsyncs, bytes and latency per second",
	.run = cmd_iostat,
};
