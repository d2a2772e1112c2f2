/*
 * prom: the Prometheus text exposition format (version 0.0.4), as
 * node_exporter's textfile collector reads it: what vsnapctl metrics
 * prints with (docs/operations.md, "vsnapctl metrics").
 *
 *   # HELP vsnapfs_volume_reads_total Reads that returned ...
 *   # TYPE vsnapfs_volume_reads_total counter
 *   vsnapfs_volume_reads_total{store="/srv/s",volume="/vm1.img"} 42
 *
 * A label value escapes backslash, double quote and newline (\\, \", \n);
 * HELP text escapes backslash and newline.  Metric and label names are the
 * caller's constants ([a-zA-Z_:][a-zA-Z0-9_:]*, checked by an assert).
 *
 * Errors:     none returned: the caller checks ferror() of f once at the end.
 * Ownership:  strings stay the caller's.
 * Threads:    any.
 */
#ifndef VSNAPFS_PROM_H
#define VSNAPFS_PROM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Is s a valid metric or label name? */
bool prom_name_ok(const char *s);
/* s escaped as a label value (no quotes around it). */
void prom_label_value(FILE *f, const char *s);
/* The "# HELP" and "# TYPE" lines of a family (type: counter, gauge, histogram). */
void prom_family(FILE *f, const char *name, const char *type, const char *help);
/*
 * One sample: name{k1="v1",...} value.  labels: key, value pairs, then NULL
 * (NULL or empty: no braces).  The value is given as text: an integer
 * printed exactly, or prom_double's.
 */
void prom_sample(FILE *f, const char *name, const char *const *labels, const char *value);
void prom_sample_u64(FILE *f, const char *name, const char *const *labels, uint64_t v);
void prom_sample_double(FILE *f, const char *name, const char *const *labels, double v);
/* A double as Prometheus writes one: "+Inf", "-Inf", "NaN", else %.17g
 * trimmed to the shortest that reads back the same. */
void prom_double(char *out, size_t len, double v);

#endif
