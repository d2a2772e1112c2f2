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
#include <time.h>

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

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void progress_bytes(struct progress *p, const char *what, uint64_t total)
{
	progress_start(p, what, total);
	p->bytes = true;
	p->start_ns = mono_ns();
}

/* "12.0M/100.0M 30.1M/s ETA 0:03", at most every 200 ms. */
static void progress_rate(struct progress *p, int pct)
{
	int64_t now = mono_ns();
	double secs = (now - p->start_ns) / 1e9, rate;
	char done[16], total[16], r[16];
	uint64_t eta;

	if (p->pct >= 0 && pct < 100 && now - p->shown_ns < 200000000)
		return;
	p->shown_ns = now;
	p->pct = pct;
	rate = secs > 0 ? p->done / secs : 0;
	eta = rate > 0 && p->total > p->done ? (uint64_t)((p->total - p->done) / rate) : 0;
	human(p->done, done, sizeof(done));
	human(p->total, total, sizeof(total));
	human((uint64_t)rate, r, sizeof(r));
	fprintf(stderr, "\r%s %3d%% %s/%s %s/s ETA %" PRIu64 ":%02" PRIu64 "   ", p->what, pct,
		done, total, r, eta / 60, eta % 60);
	fflush(stderr);
}

void progress_show(struct progress *p)
{
	static const char bar[] = "##############################";
	int pct;

	if (!progress || !p->total)
		return;
	pct = p->done >= p->total ? 100 : (int)(p->done * 100 / p->total);
	if (p->bytes) {
		progress_rate(p, pct);
		return;
	}
	if (pct == p->pct)
		return;
	p->pct = pct;
	fprintf(stderr, "\r%s [%-30.*s] %3d%%", p->what, pct * 30 / 100, bar, pct);
	fflush(stderr);
}

void progress_end(struct progress *p)
{
	if (progress && p->pct >= 0)
		fprintf(stderr, "\r%*s\r", (int)strlen(p->what) + 60, "");
	p->pct = -1;
}
