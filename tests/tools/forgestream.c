/*
 * forgestream: a send stream whose names are whatever it is given, for the
 * refusals of vsnapctl receive (t-99): what a damaged sender or a hostile
 * one could write, and vsnapctl send never does (its names are the mount's).
 *
 *   forgestream FILE SNAP [BASE] > STREAM
 *   forgestream --dir DIR SNAP PATH > STREAM
 *
 * A version 2 stream of a 4096-byte file, begin and end only, every record
 * checksummed as the encoder does it (src/stream), so that the decoder
 * takes it and only the names are wrong.  With BASE it is incremental (a
 * base id of 0x5b bytes, which no store has).  With --dir, a full
 * directory stream (version 3) of one directory entry at PATH, its file
 * record written raw (the encoder refuses a bad path).  Exit 0, or 2 and
 * one line.
 */
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <stdbool.h>

#include "vsnapfs/le.h"
#include "vsnapfs/stream.h"

static int out(void *ctx, const void *buf, size_t len)
{
	return fwrite(buf, 1, len, stdout) == len ? 0 : -EIO;
}

int main(int argc, char **argv)
{
	struct stream_begin b = { .version = STREAM_VERSION, .block_size = 4096, .size = 4096 };
	struct stream_enc *e = NULL;
	uint8_t rec[40 + STREAM_PATH_MAX] = { 0 };
	size_t plen = 0;
	bool dir = argc == 5 && !strcmp(argv[1], "--dir");
	int rc;

	if (dir) {
		plen = strlen(argv[4]);
		if (plen > STREAM_PATH_MAX)
			plen = STREAM_PATH_MAX;
		le32_put(rec, STREAM_FILE_DIR);
		le32_put(rec + 8, 0755);
		le32_put(rec + 12, (uint32_t)plen);
		memcpy(rec + 40, argv[4], plen);
		b.kind = STREAM_KIND_DIR;
		b.size = 0;
		argv++;
		argc = 3;
	}
	if (argc < 3 || argc > 4 || strlen(argv[1]) > STREAM_NAME_MAX ||
	    strlen(argv[2]) > STREAM_NAME_MAX || (argc == 4 && strlen(argv[3]) > STREAM_NAME_MAX)) {
		fprintf(stderr, "usage: forgestream FILE SNAP [BASE] > STREAM (names of 1-255 bytes)\n");
		return 2;
	}
	memset(b.guid, 0x5a, sizeof(b.guid));
	snprintf(b.file, sizeof(b.file), "%s", argv[1]);
	snprintf(b.snap, sizeof(b.snap), "%s", argv[2]);
	if (argc == 4) {
		memset(b.base_guid, 0x5b, sizeof(b.base_guid));
		snprintf(b.base, sizeof(b.base), "%s", argv[3]);
	}
	rc = stream_enc_new(out, NULL, &e);
	if (!rc)
		rc = stream_enc_begin(e, &b);
	if (!rc && dir)
		rc = stream_enc_raw(e, STREAM_FILE, STREAM_FLAG_MUST, rec, 40 + plen);
	if (!rc)
		rc = stream_enc_end(e);
	stream_enc_free(e);
	if (rc || fflush(stdout)) {
		fprintf(stderr, "forgestream: %s\n", rc ? strerror(-rc) : "writing the stream");
		return 2;
	}
	return 0;
}
