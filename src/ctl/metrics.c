/*
 * metrics: the running daemon's figures in the Prometheus text format.
 *
 *   vsnapctl metrics [MOUNTPOINT|STORE]
 *
 * The same figures as status and iostat (CTL_STATUS, CTL_IOSTAT), every
 * name prefixed vsnapfs_, the unit as a suffix (_bytes, _seconds, _total
 * for counters), every sample labelled store="..." (so that several stores
 * of one host can share node_exporter's textfile directory) and, per
 * volume, volume="..." (its path in the mount).  Latencies are histograms
 * (le in seconds, the daemon's log2 buckets).  Both replies are fetched
 * before anything is printed: a store that is not mounted prints nothing
 * but one line on stderr, and exit status 2.  For the textfile collector:
 *
 *   vsnapctl metrics /srv/vm > /var/lib/node_exporter/vm.prom.$$ &&
 *       mv /var/lib/node_exporter/vm.prom.$$ /var/lib/node_exporter/vm.prom
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/prom.h"

static const struct gauge {
	const char *key;                /* in the status reply */
	const char *name, *type, *help;
	double scale;                   /* 1, or 1e-9 for ns -> seconds */
} gauges[] = {
	{ "daemon.started_ns", "vsnapfs_start_time_seconds", "gauge",
	  "When the daemon opened the store, seconds since the epoch.", 1e-9 },
	{ "store.block_size_bytes", "vsnapfs_block_size_bytes", "gauge",
	  "The store's block size.", 1 },
	{ "store.format", "vsnapfs_index_format", "gauge",
	  "The format version of the store's index.", 1 },
	{ "store.readonly", "vsnapfs_readonly", "gauge", "1 if mounted read-only.", 1 },
	{ "sync.failed", "vsnapfs_sync_failed", "gauge",
	  "1 once a sync of the store failed: every write and fsync fails with EIO until it "
	  "is mounted again.", 1 },
	{ "space.data_bytes", "vsnapfs_data_bytes", "gauge",
	  "Block data in chunk files, live and garbage.", 1 },
	{ "space.chunk_files", "vsnapfs_chunk_files", "gauge", "Chunk files.", 1 },
	{ "space.spare_bytes", "vsnapfs_spare_bytes", "gauge",
	  "Spare chunk files kept for reuse while writes stream in.", 1 },
	{ "space.spares_prepared", "vsnapfs_spares_prepared_total", "counter",
	  "Spare chunk files written ahead for a store that syncs often.", 1 },
	{ "store.direct_write_bytes", "vsnapfs_direct_write_bytes_total", "counter",
	  "Block data written to chunk files with O_DIRECT, around the host's page cache.", 1 },
	{ "store.write_behind_bytes", "vsnapfs_write_behind_bytes_total", "counter",
	  "Of those, written after the guest's write had returned (-o write_behind).", 1 },
	{ "space.index_bytes", "vsnapfs_index_bytes", "gauge",
	  "The index (index.sqlite and its WAL).", 1 },
	{ "space.reserve_bytes", "vsnapfs_reserve_bytes", "gauge",
	  "Free space below which data writes get ENOSPC.", 1 },
	{ "space.host_size_bytes", "vsnapfs_host_size_bytes", "gauge",
	  "Size of the file system that holds the store.", 1 },
	{ "space.host_free_bytes", "vsnapfs_host_free_bytes", "gauge",
	  "Free space of the file system that holds the store.", 1 },
	{ "count.volumes", "vsnapfs_volumes", "gauge", "Live volumes.", 1 },
	{ "count.directories", "vsnapfs_directories", "gauge",
	  "Directories, the root excluded.", 1 },
	{ "count.snapshots", "vsnapfs_snapshots", "gauge", "Snapshots.", 1 },
	{ "count.open_volumes", "vsnapfs_open_volumes", "gauge", "Volumes open now.", 1 },
	{ "gc.passes", "vsnapfs_gc_passes_total", "counter",
	  "Garbage-collection passes since the mount.", 1 },
	{ "gc.last_ns", "vsnapfs_gc_last_pass_timestamp_seconds", "gauge",
	  "When the last garbage-collection pass started, seconds since the epoch.", 1e-9 },
	{ "gc.last_duration_ns", "vsnapfs_gc_last_pass_duration_seconds", "gauge",
	  "How long the last garbage-collection pass took.", 1e-9 },
	{ "gc.last_moved_blocks", "vsnapfs_gc_last_pass_moved_blocks", "gauge",
	  "Live blocks the last pass moved out of mostly dead chunk files.", 1 },
	{ "gc.last_removed_chunks", "vsnapfs_gc_last_pass_removed_chunks", "gauge",
	  "Chunk files the last pass removed.", 1 },
	{ "gc.last_freed_bytes", "vsnapfs_gc_last_pass_freed_bytes", "gauge",
	  "Block data in the chunk files the last pass removed.", 1 },
	{ "gc.last_garbage_bytes", "vsnapfs_gc_garbage_bytes", "gauge",
	  "Dead block data left in chunk files after the last pass.", 1 },
	{ "scrub.last_ns", "vsnapfs_scrub_last_timestamp_seconds", "gauge",
	  "When the last recorded scrub finished, seconds since the epoch.", 1e-9 },
	{ "scrub.last_duration_ns", "vsnapfs_scrub_last_duration_seconds", "gauge",
	  "How long the last recorded scrub took.", 1e-9 },
	{ "scrub.last_blocks", "vsnapfs_scrub_last_blocks", "gauge",
	  "Blocks the last recorded scrub verified.", 1 },
	{ "scrub.last_damaged_blocks", "vsnapfs_scrub_last_damaged_blocks", "gauge",
	  "Damaged blocks the last recorded scrub found.", 1 },
};

/* Per-volume counters: field, kind (-1: every kind, labelled op=). */
enum vfield { V_OPS, V_BYTES, V_ERRORS };
static const struct counter {
	const char *name, *help;
	enum vfield what;
	int kind;
} counters[] = {
	{ "vsnapfs_volume_reads_total", "Reads that returned data.", V_OPS, VIO_READ },
	{ "vsnapfs_volume_writes_total", "Writes that succeeded.", V_OPS, VIO_WRITE },
	{ "vsnapfs_volume_fsyncs_total", "fsync and fdatasync calls that succeeded.", V_OPS,
	  VIO_FSYNC },
	{ "vsnapfs_volume_read_bytes_total", "Bytes read.", V_BYTES, VIO_READ },
	{ "vsnapfs_volume_written_bytes_total", "Bytes written.", V_BYTES, VIO_WRITE },
	{ "vsnapfs_volume_errors_total", "Calls that failed, by operation.", V_ERRORS, -1 },
};

static uint64_t vfield(const struct vio *v, enum vfield what, int k)
{
	return what == V_OPS ? v->ops[k] : what == V_BYTES ? v->bytes[k] : v->errors[k];
}

static void print_gauges(const struct ctl_msg *st, const char *store)
{
	const char *l[] = { "store", store, NULL };
	char v[64];

	for (size_t i = 0; i < sizeof(gauges) / sizeof(gauges[0]); i++) {
		const struct gauge *g = &gauges[i];

		if (ctl_kv_get(st, g->key, v, sizeof(v)))
			continue;
		prom_family(stdout, g->name, g->type, g->help);
		if (g->scale == 1)
			prom_sample(stdout, g->name, l, v);
		else
			prom_sample_double(stdout, g->name, l, strtoull(v, NULL, 10) * g->scale);
	}
}

static void print_volumes(const struct vio_set *s, const char *store)
{
	const char *name = "vsnapfs_volume_latency_seconds";
	char bucket[64], sum[64], count[64], le[40];

	for (size_t c = 0; c < sizeof(counters) / sizeof(counters[0]); c++) {
		const struct counter *k = &counters[c];

		prom_family(stdout, k->name, "counter", k->help);
		for (size_t i = 0; i < s->n; i++) {
			for (int op = 0; op < VIO_KINDS; op++) {
				const char *l[] = { "store", store, "volume", s->v[i].path, "op",
						    vio_kind_name[op], NULL };

				if (k->kind >= 0 && op != k->kind)
					continue;
				if (k->kind >= 0)
					l[4] = NULL;
				prom_sample_u64(stdout, k->name, l, vfield(&s->v[i], k->what, op));
			}
		}
	}
	prom_family(stdout, name, "histogram",
		    "Latency of reads, writes and fsyncs (those that failed included), as the "
		    "daemon measured them.");
	snprintf(bucket, sizeof(bucket), "%s_bucket", name);
	snprintf(sum, sizeof(sum), "%s_sum", name);
	snprintf(count, sizeof(count), "%s_count", name);
	for (size_t i = 0; i < s->n; i++) {
		for (int op = 0; op < VIO_KINDS; op++) {
			const struct vio *v = &s->v[i];
			const char *l[] = { "store", store, "volume", v->path, "op", vio_kind_name[op],
					    "le", le, NULL };
			uint64_t cum = 0;

			/* bucket b holds [2^(b-1), 2^b) us; the last one, what is above.
			 * +Inf and _count are the same sum: the daemon's counters are
			 * read one by one, so ops + errors may be behind the histogram */
			for (int b = 0; b < CTL_LAT_BUCKETS - 1; b++) {
				cum += v->hist[op][b];
				prom_double(le, sizeof(le), ldexp(1e-6, b));
				prom_sample_u64(stdout, bucket, l, cum);
			}
			cum += v->hist[op][CTL_LAT_BUCKETS - 1];
			snprintf(le, sizeof(le), "+Inf");
			prom_sample_u64(stdout, bucket, l, cum);
			l[6] = NULL;
			prom_sample_double(stdout, sum, l, v->lat_ns[op] / 1e9);
			prom_sample_u64(stdout, count, l, cum);
		}
	}
}

static int metrics_main(int argc, char **argv)
{
	struct cli c = { .cmd = &metrics_cmd, .max_args = 1 };
	struct ctl_msg *st = NULL;
	struct vio_set vs = { 0 };
	char dir[PATH_MAX];
	int rc = 2;

	if (cli_next(&c, argc, argv) == CLI_STOP)      /* none of its own: -1 or this */
		return c.exit;
	if (ctl_mounted_store(optind < argc ? argv[optind] : ".", &metrics_cmd, dir, sizeof(dir)))
		return 2;
	st = malloc(sizeof(*st));
	if (!st) {
		fprintf(stderr, "vsnapctl: metrics: out of memory\n");
		return 2;
	}
	if (chan_ask(dir, CTL_STATUS, st, false) || iostat_fetch(dir, &vs))
		goto out;
	print_gauges(st, dir);
	print_volumes(&vs, dir);
	rc = 0;
out:
	vio_set_free(&vs);
	free(st);
	return rc;
}

const struct cmd metrics_cmd = {
	.name = "metrics",
	.synopsis = "[MOUNTPOINT|STORE]",
	.summary = "the daemon's figures in the Prometheus text format",
	.help = "The figures of status and iostat (totals since the mount, latency histograms),\n"
		"every name vsnapfs_..., every sample labelled store=\"...\" and, per volume,\n"
		"volume=\"...\", for node_exporter's textfile collector.  The store must be\n"
		"mounted (default: the current directory); nothing is printed unless both of\n"
		"the daemon's replies came.  The names in docs/operations.md.\n",
	.run = metrics_main,
};
