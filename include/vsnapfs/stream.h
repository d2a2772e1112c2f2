/*
 * stream: the send stream of vsnapctl send / receive, encoded and decoded
 * (the bytes are drawn in docs/on-disk-format.md, "Send stream").
 *
 * A stream is records: begin, then data and zero records in increasing
 * offset order, then end.  Every record carries an XXH3-64 of itself, and
 * end an XXH3-64 of the whole stream before it, the record count and the
 * data bytes.  The decoder hands out each record only after its checksum
 * and its place (order, bounds) were checked, and reports end only after
 * the stream's checksum matched and nothing follows; anything else is an
 * error with one line in msg.  So a caller that makes nothing visible
 * before STREAM_END never applies a damaged or truncated stream.
 *
 * Errors:     0 / 1 or a negative errno: -EBADMSG a damaged or misordered
 *             stream, -ENODATA one that ends before its end record (cut:
 *             what came before it was sound), -EPROTO a version or a record this code
 *             does not know and may not skip, an error of the I/O callback
 *             as it is.  After an error the handle is only good for _free.
 * Ownership:  the decoder's record data points into its buffer, valid until
 *             the next call.
 * Threads:    one handle per thread.
 */
#ifndef VSNAPFS_STREAM_H
#define VSNAPFS_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STREAM_VERSION      1
#define STREAM_MAGIC        "VSNAPSTR"
#define STREAM_GUID_BYTES   16
#define STREAM_NAME_MAX     255
#define STREAM_DATA_MAX     (1u << 20)          /* data bytes per record the encoder writes */
#define STREAM_PAYLOAD_MAX  ((16u << 20) + 64)  /* payload a decoder accepts */
#define STREAM_REC_OVERHEAD 24                  /* header + checksum of every record */
#define STREAM_FLAG_MUST    1u                  /* unknown: refuse, not skip */

enum stream_type {
	STREAM_BEGIN = 1, STREAM_DATA = 2, STREAM_ZERO = 3, STREAM_END = 4,
	STREAM_DATA_ZSTD = 5,           /* data, one zstd frame (stream_enc_compress) */
};

struct stream_begin {
	uint32_t version;               /* STREAM_VERSION (set by the encoder) */
	uint32_t block_size;            /* of the sending store */
	uint64_t size;                  /* bytes of the sent file */
	uint8_t guid[STREAM_GUID_BYTES];        /* the sent snapshot */
	uint8_t base_guid[STREAM_GUID_BYTES];   /* all zero: a full stream */
	int64_t created_ns;
	uint64_t resume_off;            /* records cover [resume_off, size) */
	char file[STREAM_NAME_MAX + 1]; /* volume name, snapshot name, base snapshot name */
	char snap[STREAM_NAME_MAX + 1];
	char base[STREAM_NAME_MAX + 1]; /* "" in a full stream */
};

/* Is this a full stream (no base)? */
bool stream_is_full(const struct stream_begin *b);

/* Bytes of each record on the wire: for the exact size before sending. */
uint64_t stream_begin_bytes(const struct stream_begin *b);
uint64_t stream_data_bytes(uint64_t len);       /* len: data bytes of one record (not
						 * compressed: compressed ones are smaller) */
uint64_t stream_zero_bytes(void);
uint64_t stream_end_bytes(void);

/* ---- encoder ------------------------------------------------------------- */

/* out(ctx, buf, len): write all of it, 0 or a negative errno. */
typedef int (*stream_out_fn)(void *ctx, const void *buf, size_t len);
struct stream_enc;

int stream_enc_new(stream_out_fn out, void *ctx, struct stream_enc **e);
void stream_enc_free(struct stream_enc *e);             /* NULL is fine */
/* Records in stream order; data: len 1..STREAM_DATA_MAX.  -EINVAL for a
 * record out of order or past the size (a bug of the caller). */
int stream_enc_begin(struct stream_enc *e, const struct stream_begin *b);
int stream_enc_data(struct stream_enc *e, uint64_t off, const void *buf, size_t len);
int stream_enc_zero(struct stream_enc *e, uint64_t off, uint64_t len);
int stream_enc_end(struct stream_enc *e);
/* A record of a type this version does not know (tests: skipping). */
int stream_enc_raw(struct stream_enc *e, uint32_t type, uint32_t flags, const void *payload,
		   size_t len);
/* Bytes written so far. */
uint64_t stream_enc_bytes(const struct stream_enc *e);
/* From now on compress data records with zstd at level (1..19; 0: off):
 * a record is written compressed (STREAM_DATA_ZSTD) only when that makes
 * it smaller.  -EINVAL for a level out of range, -ENOMEM. */
int stream_enc_compress(struct stream_enc *e, int level);

/* ---- decoder ------------------------------------------------------------- */

/* in(ctx, buf, len): read up to len bytes, the count (0 at end of input)
 * or a negative errno. */
typedef long (*stream_in_fn)(void *ctx, void *buf, size_t len);

struct stream_rec {
	uint32_t type;                  /* STREAM_DATA (compressed or not: decompressed
					 * and checked here) or STREAM_ZERO */
	uint64_t off, len;              /* bytes of the file */
	const uint8_t *data;            /* STREAM_DATA: len bytes */
};

struct stream_dec;
int stream_dec_new(stream_in_fn in, void *ctx, struct stream_dec **d);
void stream_dec_free(struct stream_dec *d);             /* NULL is fine */
/* The begin record (first call). */
int stream_dec_begin(struct stream_dec *d, struct stream_begin *b);
/* The next data or zero record: 1; or 0 once end has been verified and
 * the input has nothing after it. */
int stream_dec_next(struct stream_dec *d, struct stream_rec *r);
/* Why the last call failed: one line. */
const char *stream_dec_msg(const struct stream_dec *d);
/* Bytes read so far. */
uint64_t stream_dec_bytes(const struct stream_dec *d);

#endif
