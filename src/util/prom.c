/*
 * prom: the Prometheus text format; see include/vsnapfs/prom.h.
 */
#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vsnapfs/prom.h"

bool prom_name_ok(const char *s)
{
	if (!s || !*s || (*s >= '0' && *s <= '9'))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == ':'))
			return false;
	return true;
}

static void escaped(FILE *f, const char *s, bool quote)
{
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\\\", f);
		else if (*s == '\n')
			fputs("\\n", f);
		else if (*s == '"' && quote)
			fputs("\\\"", f);
		else
			putc(*s, f);
	}
}

void prom_label_value(FILE *f, const char *s)
{
	escaped(f, s, true);
}

void prom_family(FILE *f, const char *name, const char *type, const char *help)
{
	assert(prom_name_ok(name));
	fprintf(f, "# HELP %s ", name);
	escaped(f, help, false);
	fprintf(f, "\n# TYPE %s %s\n", name, type);
}

void prom_sample(FILE *f, const char *name, const char *const *labels, const char *value)
{
	assert(prom_name_ok(name));
	fputs(name, f);
	if (labels && labels[0]) {
		putc('{', f);
		for (size_t i = 0; labels[i]; i += 2) {
			assert(prom_name_ok(labels[i]) && labels[i + 1]);
			fprintf(f, "%s%s=\"", i ? "," : "", labels[i]);
			prom_label_value(f, labels[i + 1]);
			putc('"', f);
		}
		putc('}', f);
	}
	fprintf(f, " %s\n", value);
}

void prom_sample_u64(FILE *f, const char *name, const char *const *labels, uint64_t v)
{
	char s[24];

	snprintf(s, sizeof(s), "%" PRIu64, v);
	prom_sample(f, name, labels, s);
}

void prom_double(char *out, size_t len, double v)
{
	if (isnan(v)) {
		snprintf(out, len, "NaN");
		return;
	}
	if (isinf(v)) {
		snprintf(out, len, "%sInf", v > 0 ? "+" : "-");
		return;
	}
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(out, len, "%.*g", prec, v);
		if (strtod(out, NULL) == v)
			return;
	}
}

void prom_sample_double(FILE *f, const char *name, const char *const *labels, double v)
{
	char s[40];

	prom_double(s, sizeof(s), v);
	prom_sample(f, name, labels, s);
}
