/*
 * output: what every command prints with.  JSON strings escaped by hand
 * (only '"', '\\' and control characters need it), sizes in 1024 steps, and
 * progress on stderr (bytes, rate, ETA): by default a line redrawn in
 * place when stderr is a TTY and the output is not --json, erased when
 * done; with --progress=plain a line every few seconds and one at the end,
 * for logs; none with --progress=none or in a pipe.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wchar.h>
#include <wctype.h>

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

const char *text_esc(const char *s, char *out, size_t len)
{
	mbstate_t st = { 0 };
	size_t o = 0;

	while (*s && o + 5 < len) {
		wchar_t wc;
		size_t n = mbrtowc(&wc, s, MB_CUR_MAX, &st);

		if (n == (size_t)-1 || n == (size_t)-2 || !iswprint((wint_t)wc) || *s == '\\') {
			o += (size_t)snprintf(out + o, len - o, "\\x%02x", (unsigned char)*s++);
			memset(&st, 0, sizeof(st));
		} else if (o + n < len) {
			memcpy(out + o, s, n);
			o += n;
			s += n;
		} else {
			break;
		}
	}
	out[o] = '\0';
	return out;
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

void local_time(int64_t unix_s, const char *fmt, char *out, size_t len)
{
	time_t t = (time_t)unix_s;
	struct tm tm;

	if (!localtime_r(&t, &tm) || !strftime(out, len, fmt, &tm))
		snprintf(out, len, "@%" PRId64, unix_s);
}

static int64_t clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t mono_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

int64_t wall_ns(void)
{
	return clock_ns(CLOCK_REALTIME);
}

void progress_bytes(struct progress *p, const char *what, uint64_t total)
{
	*p = (struct progress){ .what = what, .total = total, .unit = 1, .pct = -1,
				.start_ns = mono_ns() };
}

void progress_blocks(struct progress *p, const char *what, uint64_t total, uint32_t block_bytes)
{
	progress_bytes(p, what, total);
	p->unit = block_bytes;
}

/* "12.0M/100.0M 30.1M/s ETA 0:03" (done: "12.0M in 0:03, 4.0M/s"). */
static void progress_line(const struct progress *p, int64_t now, bool done, char *out, size_t len)
{
	double secs = (now - p->start_ns) / 1e9, rate;
	uint64_t bytes = p->done * p->unit, total = p->total * p->unit, eta;
	char b[16], t[16], r[16];

	rate = secs > 0 ? bytes / secs : 0;
	human(bytes, b, sizeof(b));
	human(total, t, sizeof(t));
	human((uint64_t)rate, r, sizeof(r));
	if (done) {
		eta = (uint64_t)secs;
		snprintf(out, len, "%s in %" PRIu64 ":%02" PRIu64 ", %s/s", b, eta / 60, eta % 60, r);
		return;
	}
	eta = rate > 0 && total > bytes ? (uint64_t)((total - bytes) / rate) : 0;
	snprintf(out, len, "%s/%s %s/s ETA %" PRIu64 ":%02" PRIu64, b, t, r, eta / 60, eta % 60);
}

/* On a TTY one line redrawn at most every 200 ms; plain, a line every
 * PROGRESS_PLAIN_SECS (and the first at once). */
void progress_show(struct progress *p)
{
	int64_t now, every = progress_plain ? PROGRESS_PLAIN_SECS * 1000000000LL : 200000000;
	char line[96];
	int pct;

	if (!progress || !p->total)
		return;
	now = mono_ns();
	pct = p->done >= p->total ? 100 : (int)(p->done * 100 / p->total);
	if (p->pct >= 0 && now - p->shown_ns < every && (progress_plain || pct < 100))
		return;
	p->shown_ns = now;
	p->pct = pct;
	progress_line(p, now, false, line, sizeof(line));
	if (progress_plain)
		fprintf(stderr, "%s: %d%% %s\n", p->what, pct, line);
	else
		fprintf(stderr, "\r%s %3d%% %s   ", p->what, pct, line);
	fflush(stderr);
}

void progress_clear(struct progress *p)
{
	if (progress && !progress_plain && p->pct >= 0) {
		fprintf(stderr, "\r%*s\r", (int)strlen(p->what) + 60, "");
		p->pct = -1;
	}
}

void progress_end(struct progress *p)
{
	char line[96];

	if (progress_plain && progress && p->total) {
		progress_line(p, mono_ns(), true, line, sizeof(line));
		fprintf(stderr, "%s: done, %s\n", p->what, line);
	}
	progress_clear(p);
	p->pct = -1;
}
