/*
 * report: the problems and warnings check finds, as lines of text.  At
 * most REPORT_MAX of each are kept; the rest are only counted, so that a
 * store broken everywhere does not need memory for every line.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/array.h"



static void strv_free(struct strv *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	memset(s, 0, sizeof(*s));
}

void report_free(struct report *r)
{
	strv_free(&r->problems);
	strv_free(&r->warnings);
}

void report_add(struct report *r, bool warning, const char *fmt, ...)
{
	struct strv *s;
	va_list ap;
	char *line;

	if (!r)
		return;
	s = warning ? &r->warnings : &r->problems;
	if (s->total++ >= REPORT_MAX)
		return;
	va_start(ap, fmt);
	if (vasprintf(&line, fmt, ap) < 0)
		line = NULL;
	va_end(ap);
	if (!line || ARRAY_RESERVE(s->v, s->cap, s->n, 64)) {
		free(line);
		r->rc = -ENOMEM;
		return;
	}
	s->v[s->n++] = line;
}

