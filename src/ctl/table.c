/*
 * table: vsnapctl's tables and their JSON, through libsmartcols (what lsblk
 * and findmnt use; docs/dependencies.md says why).  The only caller of
 * scols_*.
 *
 * A command describes its columns once (struct table_col: the header that
 * -o takes, the JSON key with its unit, the kind of value) and fills rows
 * cell by cell with typed values; this file turns them into text as the
 * options say: sizes in 1024 steps ("8.0M") or exact bytes (-b), a table
 * whose widths fit its content or --raw (one line a row, fields separated
 * by one space, spaces and unprintable bytes escaped as \x20), with or
 * without the header (-n), or libsmartcols' JSON, where numbers are numbers,
 * a missing value is null, and every key is the column's json name.
 * Rates and latencies (iostat) are doubles: a few significant digits in a
 * table, exact with -b (latencies then in microseconds).
 *
 * Column widths come from the content, so a long path widens its column
 * instead of pushing the others out of line; libsmartcols measures
 * multibyte characters by their display width in a UTF-8 locale (main sets
 * LC_CTYPE from the environment) and escapes what it cannot print (\xNN),
 * so no name moves the columns after it.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <libsmartcols.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ctl/ctl_int.h"

struct table {
	struct libscols_table *tb;
	const struct table_col *cols;
	size_t ncols;
	struct libscols_column **shown;         /* per col: NULL if not selected */
	size_t *cell;                           /* per col: its index among the shown */
	struct libscols_line *ln;               /* the row being filled */
	bool bytes, raw;
	int rc;                                 /* the first error filling it (sticky) */
};

void table_help(const struct table_col *cols, size_t ncols, FILE *f)
{
	fprintf(f, "\ncolumns (-o; * shown by default):\n");
	for (size_t i = 0; i < ncols; i++)
		fprintf(f, "  %-12s %c %s (--json: %s)\n", cols[i].name, cols[i].dflt ? '*' : ' ',
			cols[i].help, cols[i].json);
}

static size_t col_find(const struct table_col *cols, size_t ncols, const char *name, size_t len)
{
	for (size_t i = 0; i < ncols; i++)
		if (strlen(cols[i].name) == len && !strncasecmp(cols[i].name, name, len))
			return i;
	return NONE;
}

static int col_add(struct table *t, size_t i)
{
	const struct table_col *c = &t->cols[i];
	bool num = c->type != TT_TEXT;
	struct libscols_column *cl;

	if (t->shown[i])
		return 0;               /* named twice: once is enough */
	/* under --json the column's name is its key (libsmartcols writes
	 * the header, lowercased) */
	cl = scols_table_new_column(t->tb, json ? c->json : c->name, c->wrap ? 0.3 : 0,
				    num ? SCOLS_FL_RIGHT : c->wrap && !json && !t->raw ? SCOLS_FL_WRAP : 0);
	if (!cl)
		return -ENOMEM;
	if (num && (json || c->type != TT_TIME))
		scols_column_set_json_type(cl, SCOLS_JSON_NUMBER);
	t->cell[i] = scols_table_get_ncols(t->tb) - 1;
	t->shown[i] = cl;
	return 0;
}

/* -o LIST: names separated by commas, any case; "+LIST" adds to the default. */
static int cols_select(struct table *t, const char *list, const struct cmd *cmd)
{
	bool add = list && *list == '+';
	int rc = 0;

	if (!list || add) {
		for (size_t i = 0; i < t->ncols && !rc; i++)
			if (t->cols[i].dflt || (json && !list))
				rc = col_add(t, i);
		if (!list || rc)
			return rc;
		list++;
	}
	for (const char *p = list; !rc; p += strcspn(p, ",") + 1) {
		size_t len = strcspn(p, ","), i = col_find(t->cols, t->ncols, p, len);

		if (i == NONE) {
			cli_bad(cmd, "unknown column '%.*s' (-o takes those --help lists)", (int)len, p);
			return -EINVAL;
		}
		rc = col_add(t, i);
		if (!p[len])
			break;
	}
	return rc;
}

int table_new(const char *name, const struct table_col *cols, size_t ncols,
	      const struct table_opts *o, const struct cmd *cmd, struct table **out)
{
	struct table *t = calloc(1, sizeof(*t));
	int rc = -ENOMEM;

	*out = t;
	if (!t)
		return rc;
	t->cols = cols;
	t->ncols = ncols;
	t->bytes = o->bytes;
	t->raw = o->raw;
	t->shown = calloc(ncols, sizeof(*t->shown));
	t->cell = calloc(ncols, sizeof(*t->cell));
	t->tb = scols_new_table();
	if (!t->shown || !t->cell || !t->tb)
		return rc;
	scols_table_set_name(t->tb, name);
	scols_table_enable_json(t->tb, json);
	scols_table_enable_raw(t->tb, o->raw);
	scols_table_enable_noheadings(t->tb, o->noheadings);
	return cols_select(t, o->columns, cmd);
}

void table_row(struct table *t)
{
	t->ln = t->rc ? NULL : scols_table_new_line(t->tb, NULL);
	if (!t->ln && !t->rc)
		t->rc = -ENOMEM;
}

void table_text(struct table *t, size_t col, const char *s)
{
	int rc;

	assert(col < t->ncols);
	if (!t->ln || !t->shown[col] || (!s && json))
		return;
	rc = scols_line_set_data(t->ln, t->cell[col], s ? s : "-");
	if (rc && !t->rc)
		t->rc = rc;
}

void table_u64(struct table *t, size_t col, uint64_t v)
{
	char buf[32];

	if (t->cols[col].type == TT_BYTES && !json && !t->bytes)
		human(v, buf, sizeof(buf));
	else
		snprintf(buf, sizeof(buf), "%" PRIu64, v);
	table_text(t, col, buf);
}

void table_time(struct table *t, size_t col, int64_t unix_ns)
{
	int64_t secs = unix_ns / 1000000000;
	char buf[64];

	if (json)
		snprintf(buf, sizeof(buf), "%" PRId64, secs);
	else
		local_time(secs, t->raw ? "%Y-%m-%dT%H:%M:%S%z" : "%Y-%m-%d %H:%M:%S", buf,
			   sizeof(buf));
	table_text(t, col, buf);
}

void table_double(struct table *t, size_t col, double v)
{
	enum table_type type = t->cols[col].type;
	bool exact = json || t->bytes;
	char buf[32];

	if (v < 0) {
		table_text(t, col, NULL);
		return;
	}
	if (type == TT_BYTES) {
		table_u64(t, col, (uint64_t)(v + 0.5));
		return;
	}
	if (isinf(v))
		snprintf(buf, sizeof(buf), "+Inf");
	else if (type == TT_RATE)
		snprintf(buf, sizeof(buf), exact || v < 10 ? "%.2f" : v < 100 ? "%.1f" : "%.0f", v);
	else if (json)
		snprintf(buf, sizeof(buf), "%.9g", v);
	else if (exact)
		snprintf(buf, sizeof(buf), "%.0f", v * 1e6);      /* microseconds */
	else if (v < 1e-3)
		snprintf(buf, sizeof(buf), "%.0fus", v * 1e6);
	else if (v < 1)
		snprintf(buf, sizeof(buf), "%.1fms", v * 1e3);
	else
		snprintf(buf, sizeof(buf), "%.2fs", v);
	table_text(t, col, buf);
}

int table_print(struct table *t)
{
	return t->rc ? t->rc : scols_print_table(t->tb);
}

void table_free(struct table *t)
{
	if (!t)
		return;
	scols_unref_table(t->tb);
	free(t->shown);
	free(t->cell);
	free(t);
}
