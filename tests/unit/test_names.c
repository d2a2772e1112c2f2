/* names: which file and snapshot names are accepted, byte by byte. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ns/names.h"

static const struct { const char *name; int rc; } file_names[] = {
	{ "vm1.img", 0 },
	{ "disk with spaces.raw", 0 },
	{ "r\xc3\xa9seau.img", 0 },             /* é, 2 bytes */
	{ "\xe2\x82\xac", 0 },                  /* €, 3 bytes */
	{ "\xf0\x9f\x92\xbe", 0 },              /* a floppy disk, 4 bytes */
	{ "a@b", 0 },
	{ ".hidden", 0 },
	{ "", -EINVAL },
	{ ".", -EINVAL },
	{ "..", -EINVAL },
	{ ".snapshots", -EEXIST },
	{ "a/b", -EINVAL },
	{ "tab\there", -EINVAL },
	{ "new\nline", -EINVAL },
	{ "\x01", -EINVAL },
	{ "del\x7f", -EINVAL },
	{ "\xff", -EINVAL },                    /* never valid in UTF-8 */
	{ "\xc0\xaf", -EINVAL },                /* overlong '/' */
	{ "\xe0\x80\xaf", -EINVAL },            /* overlong, 3 bytes */
	{ "\xed\xa0\x80", -EINVAL },            /* a surrogate */
	{ "\xf4\x90\x80\x80", -EINVAL },        /* past U+10FFFF */
	{ "\xc2\x85", -EINVAL },                /* C1 control NEL */
	{ "\xc3", -EINVAL },                    /* truncated sequence */
	{ "\xe2\x82", -EINVAL },
	{ "\x80", -EINVAL },                    /* a lone continuation byte */
};

Test(names, file_names_are_accepted_or_refused_with_the_right_errno)
{
	for (size_t i = 0; i < sizeof(file_names) / sizeof(file_names[0]); i++)
		cr_expect_eq(ns_name_check(file_names[i].name), file_names[i].rc,
			     "name #%zu", i);
}

Test(names, file_names_of_255_bytes_pass_and_256_are_too_long)
{
	char name[300];

	memset(name, 'x', 255);
	name[255] = 0;
	cr_assert_eq(ns_name_check(name), 0);
	memset(name, 'x', 256);
	name[256] = 0;
	cr_assert_eq(ns_name_check(name), -ENAMETOOLONG);
}

static const struct { const char *name; int rc; const char *file; } snap_names[] = {
	{ "nightly", 0, NULL },
	{ "before-upgrade_2026.11.22+x:y,z", 0, NULL },
	{ "vm1.img@golden", 0, "vm1.img" },
	{ "a@b@c", 0, "a@b" },                  /* split at the last '@' */
	{ "", -EINVAL, NULL },
	{ ".hidden", -EINVAL, NULL },
	{ "vm1.img@.x", -EINVAL, NULL },
	{ "@name", -EINVAL, NULL },             /* no FILE */
	{ "vm1.img@", -EINVAL, NULL },          /* no NAME */
	{ "has space", -EINVAL, NULL },
	{ "slash/x", -EINVAL, NULL },
	{ "star*", -EINVAL, NULL },
	{ "nl\n", -EINVAL, NULL },
	{ "r\xc3\xa9", -EINVAL, NULL },         /* NAME is ASCII only */
};

Test(names, snapshot_names_split_at_the_last_at_and_refuse_bad_bytes)
{
	for (size_t i = 0; i < sizeof(snap_names) / sizeof(snap_names[0]); i++) {
		char *file = (char *)1;
		int rc = ns_snap_name_parse(snap_names[i].name, &file);

		cr_expect_eq(rc, snap_names[i].rc, "snapshot name #%zu", i);
		if (rc)
			continue;
		if (snap_names[i].file)
			cr_expect_str_eq(file, snap_names[i].file, "snapshot name #%zu", i);
		else
			cr_expect_null(file, "snapshot name #%zu", i);
		free(file);
	}
}

Test(names, snapshot_names_of_256_bytes_are_too_long)
{
	char name[300];
	char *file;

	memset(name, 'n', 255);
	name[255] = 0;
	cr_assert_eq(ns_snap_name_parse(name, &file), 0);
	memset(name, 'n', 256);
	name[256] = 0;
	cr_assert_eq(ns_snap_name_parse(name, &file), -ENAMETOOLONG);
}
