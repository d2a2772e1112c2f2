/*
 * output: what every command prints with.  JSON strings escaped by hand
 * (only '"', '\\' and control characters need it), sizes in 1024 steps, and
 * a progress bar on stderr that is drawn only when stderr is a TTY and the
 * output is not --json (the global progress), and erased when done.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctl/ctl_int.h"

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

void json_str(FILE *f, const char *s)
{
	putc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			putc(*s, f);
	}
	putc('"', f);
}

void human(uint64_t bytes, char *out, size_t len)
{
	const char *unit = "KMGTPE";
	double v = bytes;
	int u = -1;

	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(out, len, "%" PRIu64, bytes);
	else
		snprintf(out, len, "%.1f%c", v, unit[u]);
}


void progress_start(struct progress *p, const char *what, uint64_t total)
{
	*p = (struct progress){ .what = what, .total = total, .pct = -1 };
}

void progress_show(struct progress *p)
{
	static const char bar[] = "##############################";
	int pct;

	if (!progress || !p->total)
		return;
	pct = p->done >= p->total ? 100 : (int)(p->done * 100 / p->total);
	if (pct == p->pct)
		return;
	p->pct = pct;
	fprintf(stderr, "\r%s [%-30.*s] %3d%%", p->what, pct * 30 / 100, bar, pct);
	fflush(stderr);
}

void progress_end(struct progress *p)
{
	if (progress && p->pct >= 0)
		fprintf(stderr, "\r%*s\r", (int)strlen(p->what) + 38, "");
	p->pct = -1;
}
