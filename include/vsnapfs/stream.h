/*
 * stream: the send stream of vsnapctl send / receive, encoded and decoded
 * (the bytes are drawn in docs/on-disk-format.md, "Send stream").
 *
 * A stream is records: begin, then data and zero records in increasing
 * offset order, then end.  Version 2 chains them: every record's XXH3-64 is
 * seeded with the one of the record before it (begin's starts the chain),
 * so a record verifies only where it stands in its own stream: a record
 * dropped, repeated or taken from another stream fails at once, and the
 * first K records a receiver verified are the first K of that stream and
 * nothing else.  The chain value after K records (struct stream_pos) is
 * what a resumed stream starts from: its begin names the stream (guids),
 * the record count K, the offset and the chain value, and its records go
 * on seeded with that value.  end carries the record count, the data bytes
 * and the chain value.  Version 1 (read, and written on request for an
 * older receiver) checksums each record alone and puts an XXH3-64 of every
 * byte before end into end; it cannot be resumed.
 *
 * The decoder hands out each record only after its checksum and its place
 * (order, bounds) were checked, and reports end only after the stream's
 * end matched and nothing follows; anything else is an error with one line
 * in msg.  So a caller that makes nothing visible before STREAM_END never
 * applies a damaged or truncated stream, and a caller that keeps what it
 * applied keeps a verified prefix.
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

#define STREAM_VERSION      2                   /* written for a volume; 1 is read too */
#define STREAM_VERSION_TREE 3                   /* a directory stream: an older reader
						 * refuses it by its version */
#define STREAM_MAGIC        "VSNAPSTR"
#define STREAM_GUID_BYTES   16
#define STREAM_NAME_MAX     255
#define STREAM_DATA_MAX     (1u << 20)          /* data bytes per record the encoder writes */
#define STREAM_PAYLOAD_MAX  ((16u << 20) + 64)  /* payload a decoder accepts */
#define STREAM_REC_OVERHEAD 24                  /* header + checksum of every record */
#define STREAM_FLAG_MUST    1u                  /* unknown: refuse, not skip */
#define STREAM_PATH_MAX     4095                /* bytes of a file record's path */

enum stream_type {
	STREAM_BEGIN = 1, STREAM_DATA = 2, STREAM_ZERO = 3, STREAM_END = 4,
	STREAM_DATA_ZSTD = 5,           /* data, one zstd frame (stream_enc_compress) */
	STREAM_FILE = 6,                /* directory streams: the entry the records after it
					 * are of */
};

/* What a stream sends (begin's kind). */
enum stream_kind { STREAM_KIND_VOLUME = 0, STREAM_KIND_DIR = 1 };

struct stream_begin {
	uint32_t version;               /* STREAM_VERSION; the encoder writes 1 if asked
					 * (an older receiver), else 2 */
	uint32_t block_size;            /* of the sending store */
	uint32_t kind;                  /* enum stream_kind; a directory stream is version 3 */
	uint64_t size;                  /* bytes of the sent file (a directory: of all its
					 * volumes, informative) */
	uint8_t guid[STREAM_GUID_BYTES];        /* the sent snapshot */
	uint8_t base_guid[STREAM_GUID_BYTES];   /* all zero: a full stream */
	int64_t created_ns;
	uint64_t resume_off;            /* records cover [resume_off, size) (a directory:
					 * of file resume_file, then the files after it) */
	uint64_t resume_file;           /* directory, resumed: file records before this
					 * stream's first (0: none) */
	uint64_t resume_rec;            /* version 2, resumed: records before this
					 * stream's first, begin counted (0: not resumed) */
	uint64_t resume_chain;          /* version 2, resumed: the chain value there */
	uint32_t dmode, duid, dgid;     /* a directory: its own permission bits (07777)
					 * and owner; else 0 */
	char file[STREAM_NAME_MAX + 1]; /* volume name, snapshot name, base snapshot name
					 * (a directory: its name, and NAMEs of its snapshots) */
	char snap[STREAM_NAME_MAX + 1];
	char base[STREAM_NAME_MAX + 1]; /* "" in a full stream */
};

/* Where a stream stands after some records (version 2): the records so far
 * (begin counted), the end of the last one in the file, the chain value,
 * and the data bytes of the records this handle saw. */
struct stream_pos {
	uint64_t rec, off, chain, data_bytes;
	uint64_t file;                  /* directory streams: file records so far; off is
					 * then in the last one's file */
};

/*
 * A file record (directory streams): one entry of the directory, by its
 * path below it.  The removes come first, deepest first (paths strictly
 * decreasing in stream_path_cmp order), then every entry of the sent
 * snapshot in pre-order (strictly increasing; a directory before what is
 * in it), each volume's data and zero records after its file record,
 * offsets from 0, increasing, below its size.
 */
enum stream_file_kind { STREAM_FILE_DIR = 1, STREAM_FILE_VOL = 2, STREAM_FILE_REMOVE = 3 };
#define STREAM_FILE_BASE  1u            /* apply onto the base's entry at this path (a
					 * volume: the records are the diff); without it
					 * the entry starts empty, after whatever is at the
					 * path was removed */
#define STREAM_FILE_CONT  2u            /* a resumed stream's first records: the
					 * directories from the top down to the file it
					 * goes on in, and that file, restated (checked
					 * against the kept chain, neither counted nor
					 * chained); a remove is restated alone */

struct stream_file {
	uint32_t kind;                  /* enum stream_file_kind */
	uint32_t flags;                 /* STREAM_FILE_* */
	uint32_t mode;                  /* permission bits (07777) */
	uint32_t uid, gid;              /* owner */
	uint64_t size;                  /* volumes: bytes; else 0 */
	int64_t mtime_ns;
	char path[STREAM_PATH_MAX + 1]; /* "a/b": no empty, "." or ".." component */
};

/* Order of paths in a directory stream: component by component, each by
 * its bytes (so "a/b" < "a.b": pre-order of names sorted by strcmp). */
int stream_path_cmp(const char *a, const char *b);
/* Is p a path a file record may carry (see struct stream_file)? */
bool stream_path_ok(const char *p);

/* Is this a full stream (no base)? */
bool stream_is_full(const struct stream_begin *b);
/* Is g (STREAM_GUID_BYTES) all zero, the id of no snapshot? */
bool stream_guid_is_zero(const uint8_t *g);

/* Bytes of each record on the wire: for the exact size before sending. */
uint64_t stream_begin_bytes(const struct stream_begin *b);
uint64_t stream_data_bytes(uint64_t len);       /* len: data bytes of one record (not
						 * compressed: compressed ones are smaller) */
uint64_t stream_zero_bytes(void);
uint64_t stream_end_bytes(void);
uint64_t stream_file_bytes(const char *path);

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
/* Directory streams: a file record, in the order above (CONT: only first
 * after a resumed begin with resume_file, and then required). */
int stream_enc_file(struct stream_enc *e, const struct stream_file *f);
/* A record of a type this version does not know (tests: skipping). */
int stream_enc_raw(struct stream_enc *e, uint32_t type, uint32_t flags, const void *payload,
		   size_t len);
/* Bytes written so far. */
uint64_t stream_enc_bytes(const struct stream_enc *e);
/* Where the stream stands after the records written so far. */
void stream_enc_pos(const struct stream_enc *e, struct stream_pos *p);
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
					 * and checked here), STREAM_ZERO or STREAM_FILE */
	uint64_t off, len;              /* bytes of the file */
	const uint8_t *data;            /* STREAM_DATA: len bytes */
	const struct stream_file *file; /* STREAM_FILE: its order checked */
};

struct stream_dec;
int stream_dec_new(stream_in_fn in, void *ctx, struct stream_dec **d);
void stream_dec_free(struct stream_dec *d);             /* NULL is fine */
/* The begin record (first call).  A resumed stream (resume_rec != 0) needs
 * stream_dec_continue before its records. */
int stream_dec_begin(struct stream_dec *d, struct stream_begin *b);
/* A resumed stream goes on from the part the caller kept (its position as
 * stream_dec_pos gave it when it was applied): -ESTALE if the stream
 * resumes at another record or offset; the records then verify only
 * against kept->chain, so a stream whose sender went on from another chain
 * value (another stream, a token of another receive) is refused at its
 * first record.  begin's resume_chain is not trusted. */
int stream_dec_continue(struct stream_dec *d, const struct stream_pos *kept);
/* The next data, zero or file record: 1; or 0 once end has been verified and
 * the input has nothing after it. */
int stream_dec_next(struct stream_dec *d, struct stream_rec *r);
/* Why the last call failed: one line. */
const char *stream_dec_msg(const struct stream_dec *d);
/* Bytes read so far. */
uint64_t stream_dec_bytes(const struct stream_dec *d);
/* Where the stream stands after the last record handed out (or begin):
 * a caller that applied every record so far may resume from here. */
void stream_dec_pos(const struct stream_dec *d, struct stream_pos *p);

#endif
