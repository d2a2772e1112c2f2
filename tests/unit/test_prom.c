/*
 * Unit tests of the Prometheus text format (src/util/prom.c): label values
 * and HELP text escaped as the exposition format says, samples with and
 * without labels, doubles that read back exactly.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "vsnapfs/prom.h"

static char *buf;
static size_t len;
static FILE *out;

static void setup(void)
{
	out = open_memstream(&buf, &len);
	cr_assert(out);
}

static const char *text(void)
{
	fflush(out);
	return buf;
}

static void teardown(void)
{
	fclose(out);
	free(buf);
}

TestSuite(prom, .init = setup, .fini = teardown);

Test(prom, label_value_escapes_backslash_quote_and_newline)
{
	prom_label_value(out, "a\\b\"c\nd/é");
	cr_assert_str_eq(text(), "a\\\\b\\\"c\\nd/é");
}

Test(prom, help_escapes_backslash_and_newline_but_not_quotes)
{
	prom_family(out, "vsnapfs_x_total", "counter", "say \"hi\"\\\nnext");
	cr_assert_str_eq(text(), "# HELP vsnapfs_x_total say \"hi\"\\\\\\nnext\n"
			 "# TYPE vsnapfs_x_total counter\n");
}

Test(prom, sample_with_labels_quotes_and_escapes_each_value)
{
	const char *l[] = { "store", "/s", "volume", "/we\"ird\n.img", NULL };

	prom_sample_u64(out, "vsnapfs_volume_reads_total", l, 18446744073709551615ULL);
	cr_assert_str_eq(text(), "vsnapfs_volume_reads_total{store=\"/s\",volume=\"/we\\\"ird\\n.img\"} "
			 "18446744073709551615\n");
}

Test(prom, sample_without_labels_has_no_braces)
{
	const char *none[] = { NULL };

	prom_sample_u64(out, "vsnapfs_up", NULL, 1);
	prom_sample_u64(out, "vsnapfs_up", none, 0);
	cr_assert_str_eq(text(), "vsnapfs_up 1\nvsnapfs_up 0\n");
}

Test(prom, doubles_are_shortest_exact_and_special_values_spelled)
{
	char s[40];

	prom_double(s, sizeof(s), 0.1);
	cr_assert_str_eq(s, "0.1");
	prom_double(s, sizeof(s), 1e-06);
	cr_assert_str_eq(s, "1e-06");
	prom_double(s, sizeof(s), 1.0 / 3);
	cr_assert_eq(strtod(s, NULL), 1.0 / 3);
	prom_double(s, sizeof(s), INFINITY);
	cr_assert_str_eq(s, "+Inf");
	prom_double(s, sizeof(s), -INFINITY);
	cr_assert_str_eq(s, "-Inf");
	prom_double(s, sizeof(s), NAN);
	cr_assert_str_eq(s, "NaN");
}

Test(prom, names_follow_the_grammar)
{
	cr_assert(prom_name_ok("vsnapfs_volume_read_bytes_total"));
	cr_assert(prom_name_ok("a:b_C9"));
	cr_assert(!prom_name_ok("9a"));
	cr_assert(!prom_name_ok("a-b"));
	cr_assert(!prom_name_ok(""));
}
