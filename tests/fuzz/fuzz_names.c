/*
 * libFuzzer target for the name parsers (src/ns/names.c), which see bytes
 * straight from users.  Besides ASan/UBSan findings it checks the contract:
 * an accepted file name is 1..255 bytes without '/', controls or bad
 * UTF-8; an accepted snapshot name splits into a non-empty FILE (if any)
 * and a NAME of the allowed ASCII set.
 *
 *   make fuzz FUZZ_SECONDS=60
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ns/names.h"

static int snap_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       (c && strchr("._-+:,", c));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *name = malloc(size + 1), *file = NULL;
	size_t len;

	if (!name)
		return 0;
	memcpy(name, data, size);
	name[size] = 0;
	len = strlen(name);

	if (ns_name_check(name) == 0) {
		assert(len >= 1 && len <= 255);
		assert(strcmp(name, ".") && strcmp(name, ".."));
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)name[i];

			assert(c >= 0x20 && c != 0x7f && c != '/');
			assert(c != 0xc0 && c != 0xc1 && c < 0xf5);   /* never in UTF-8 */
		}
	}
	if (ns_snap_name_parse(name, &file) == 0) {
		const char *at = strrchr(name, '@');
		const char *snap = at ? at + 1 : name;

		assert(len <= 255 && *snap && *snap != '.');
		for (const char *p = snap; *p; p++)
			assert(snap_char((unsigned char)*p));
		assert(!at == !file);
		if (file)
			assert(*file && strlen(file) == (size_t)(at - name));
		free(file);
	}
	free(name);
	return 0;
}
