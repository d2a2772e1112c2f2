/*
 * names: which names vsnapfs accepts, for files, directories and
 * snapshots.  Names come straight from users (any bytes but '/' and NUL),
 * so these are parsers of untrusted input: they have a table test
 * (tests/unit/test_names.c) and a fuzz target (tests/fuzz/fuzz_names.c).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ns/names.h"
#include "vsnapfs/bmap.h"

/*
 * A name we accept: 1..255 bytes of valid UTF-8 without control characters
 * or '/', not "." or "..".  Hypervisor tooling never needs more, and
 * refusing the rest keeps every name printable in logs and tables.
 * ".snapshots" is taken in every directory.
 */
int ns_name_check(const char *name)
{
	const unsigned char *p = (const unsigned char *)name;
	size_t len = strlen(name);

	if (len == 0)
		return -EINVAL;
	if (len > BMAP_NAME_MAX)
		return -ENAMETOOLONG;
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return -EINVAL;
	if (!strcmp(name, ".snapshots"))
		return -EEXIST;
	while (*p) {
		int extra;
		uint32_t cp;

		if (*p < 0x20 || *p == 0x7f || *p == '/')
			return -EINVAL;
		if (*p < 0x80) {
			p++;
			continue;
		}
		if ((*p & 0xe0) == 0xc0) {
			extra = 1;
			cp = *p & 0x1f;
		} else if ((*p & 0xf0) == 0xe0) {
			extra = 2;
			cp = *p & 0x0f;
		} else if ((*p & 0xf8) == 0xf0) {
			extra = 3;
			cp = *p & 0x07;
		} else {
			return -EINVAL;
		}
		p++;
		for (int i = 0; i < extra; i++, p++) {
			if ((*p & 0xc0) != 0x80)
				return -EINVAL;
			cp = cp << 6 | (*p & 0x3f);
		}
		/* overlong forms, surrogates, past U+10FFFF, C1 controls */
		if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
		    (extra == 3 && cp < 0x10000) || (cp >= 0xd800 && cp <= 0xdfff) ||
		    cp > 0x10ffff || (cp >= 0x80 && cp < 0xa0))
			return -EINVAL;
	}
	return 0;
}

static bool snap_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       strchr("._-+:,", c) != NULL;
}

/*
 * Split "NAME" or "FILE@NAME" (at the last '@').  NAME: 1..255 bytes of
 * A-Z a-z 0-9 . _ - + : , not starting with '.'.  *file is set to NULL for
 * a directory snapshot, else to FILE (inside a copy the caller frees).
 */
int ns_snap_name_parse(const char *name, char **file)
{
	const char *at = strrchr(name, '@');
	const char *snap = at ? at + 1 : name;

	*file = NULL;
	if (strlen(name) > BMAP_NAME_MAX)
		return -ENAMETOOLONG;
	if (!*snap || *snap == '.')
		return -EINVAL;
	for (const char *p = snap; *p; p++)
		if (!snap_char(*p))
			return -EINVAL;
	if (!at)
		return 0;
	if (at == name)
		return -EINVAL;
	*file = strndup(name, at - name);
	return *file ? 0 : -ENOMEM;
}
