/*
 * stream: the send stream's encoder and decoder (vsnapfs/stream.h; the
 * bytes in docs/on-disk-format.md, "Send stream").
 *
 * Every record goes through one buffer: header, payload, then the XXH3-64
 * of both, written (or checked) as one piece.  In version 2 that checksum
 * is seeded with the one of the record before (the chain; begin's seed is
 * 0 and its checksum starts the chain), so each record checks both its
 * bytes and its place: a record dropped, repeated or swapped whole fails
 * at the next record, not only at end, and a verified prefix is a prefix
 * of the stream that was sent.  end's chain field repeats the value it is
 * seeded with.  A resumed stream's begin carries the position it goes on
 * from (records, offset, chain value), and the encoder and the decoder
 * start there.  Version 1 seeds every record with 0 and puts a running
 * XXH3-64 of every record before end into end; it is read and, if asked,
 * written.  Version 3 is a directory stream: begin carries the kind and
 * the file records before a resumed stream's first; file records name the
 * entry the data and zero records after them are of (offsets restart at
 * each), in the order of struct stream_file, which the encoder and the
 * decoder check alike (tree_place).  A resumed directory stream restates
 * the file it goes on in (STREAM_FILE_CONT) as its first record, checked
 * against the kept chain but not chained or counted, so a stream's record
 * numbers and chain do not depend on how often it was resumed.  An older
 * reader refuses version 3 by its number.  The decoder also refuses what a valid encoder never
 * writes: records out of order or past the size, a second begin, bytes
 * after end.  Unknown record types without STREAM_FLAG_MUST are skipped by
 * their length, checksum (and chain) checked, and count in end's record
 * count.
 *
 * Compression (zstd, the only caller of ZSTD_*): a compressed data record
 * carries its offset, its length uncompressed and one zstd frame; the
 * record's checksum covers the compressed bytes (so damage is caught
 * before the decompressor sees it), and the decompressed length must be
 * the one the record and the frame both state, at most STREAM_PAYLOAD_MAX
 * (no decompression bomb).  The stream's data count is of uncompressed
 * bytes.  Compression is per record, so a record that does not shrink is
 * written plain.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "vsnapfs/cksum.h"
#include "vsnapfs/le.h"
#include "vsnapfs/stream.h"

#define HDR        16
#define BEGIN_FIXED_V1 80
#define BEGIN_FIXED 96                  /* version 2: resume_rec, resume_chain */
#define BEGIN_FIXED_TREE 128            /* version 3: kind, D's mode, resume_file, D's
					 * uid and gid, 8 spare */
#define FILE_FIXED 40                   /* a file record before its path */

static const uint8_t zero_guid[STREAM_GUID_BYTES];

bool stream_guid_is_zero(const uint8_t *g)
{
	return !memcmp(g, zero_guid, sizeof(zero_guid));
}

bool stream_is_full(const struct stream_begin *b)
{
	return stream_guid_is_zero(b->base_guid);
}

static size_t begin_fixed(uint32_t version)
{
	return version == 1 ? BEGIN_FIXED_V1 : version == 2 ? BEGIN_FIXED : BEGIN_FIXED_TREE;
}

static uint32_t begin_version(const struct stream_begin *b)
{
	return b->kind == STREAM_KIND_DIR ? STREAM_VERSION_TREE : b->version == 1 ? 1 :
	       STREAM_VERSION;
}

int stream_path_cmp(const char *a, const char *b)
{
	for (;; a++, b++) {
		/* '/' ends a component: below every byte of a name */
		unsigned x = *a == '/' ? 1 : *a ? (unsigned char)*a + 1u : 0;
		unsigned y = *b == '/' ? 1 : *b ? (unsigned char)*b + 1u : 0;

		if (x != y)
			return x < y ? -1 : 1;
		if (!x)
			return 0;
	}
}

bool stream_path_ok(const char *p)
{
	size_t n = strlen(p);

	if (!n || n > STREAM_PATH_MAX)
		return false;
	for (const char *c = p;;) {
		const char *e = strchr(c, '/');
		size_t l = e ? (size_t)(e - c) : strlen(c);

		if (!l || (l == 1 && c[0] == '.') || (l == 2 && c[0] == '.' && c[1] == '.'))
			return false;
		if (!e)
			return true;
		c = e + 1;
	}
}

/*
 * The order of a directory stream's file records (stream.h): the state
 * the encoder and the decoder both keep.  dirs holds the open directories
 * of the pre-order walk, outermost first, as prefixes of one path.
 */
struct tree_ord {
	bool on;                        /* a directory stream */
	bool entries;                   /* an entry came: no remove after it */
	bool want_cont;                 /* resumed: the next record must restate (CONT) */
	bool may_cont;                  /* the last was a restated directory: another
					 * restated entry in it may follow */
	uint32_t kind;                  /* the current file's, 0 none */
	char last[STREAM_PATH_MAX + 1]; /* the last path ("" none) */
	char dirs[STREAM_PATH_MAX + 1];
	uint16_t lens[STREAM_PATH_MAX / 2 + 2];
	size_t ndirs;
};

static void tree_push(struct tree_ord *t, const char *path, size_t len)
{
	memcpy(t->dirs, path, len);
	t->dirs[len] = '\0';
	t->lens[t->ndirs++] = (uint16_t)len;
}

/* Is f's place right after the records so far (off: where the records
 * of the current file stand)?  NULL, or why not.  A resumed stream
 * restates, not counted, the chain of directories from the top down to
 * the file it goes on in, then that file (STREAM_FILE_CONT each; a remove
 * alone): so the receiver has the attributes of every directory open at
 * that place. */
static const char *tree_place(struct tree_ord *t, const struct stream_file *f, uint64_t off)
{
	bool cont = f->flags & STREAM_FILE_CONT;
	const char *slash;
	size_t parent, len = strlen(f->path);

	if (!t->on)
		return "a file record in the stream of one volume";
	if (f->kind < STREAM_FILE_DIR || f->kind > STREAM_FILE_REMOVE ||
	    (f->flags & ~(STREAM_FILE_BASE | STREAM_FILE_CONT)) || (f->mode & ~07777u) ||
	    (f->kind != STREAM_FILE_VOL && f->size) ||
	    (f->kind == STREAM_FILE_REMOVE && (f->flags & STREAM_FILE_BASE)))
		return "a file record inconsistent";
	if (!stream_path_ok(f->path))
		return "a path that is not below the directory (empty, '.' or '..' component)";
	slash = strrchr(f->path, '/');
	parent = slash ? (size_t)(slash - f->path) : 0;
	if (cont) {
		bool first = !t->may_cont;

		if (!t->want_cont && !t->may_cont)
			return "a restated file record that is not at a resumed stream's start";
		if (first)
			t->ndirs = 0;
		if (f->kind == STREAM_FILE_REMOVE ? !first || off :
		    parent != (t->ndirs ? t->lens[t->ndirs - 1] : 0) ||
		    (parent && memcmp(f->path, t->dirs, parent)))
			return f->kind == STREAM_FILE_REMOVE ? "a restated remove inside a restated "
			       "directory or inside a file" : "a restated entry whose directory was "
			       "not restated before it";
		if (f->kind == STREAM_FILE_VOL && off > f->size)
			return "a restated volume smaller than the place the stream resumes at";
		/* inside a file: the chain must go down to a volume */
		t->want_cont = off && f->kind == STREAM_FILE_DIR;
		t->may_cont = f->kind == STREAM_FILE_DIR;
		t->entries = f->kind != STREAM_FILE_REMOVE;
	} else if (t->want_cont) {
		return "a resumed stream that does not restate the file it goes on in";
	} else if (f->kind == STREAM_FILE_REMOVE) {
		t->may_cont = false;
		if (t->entries)
			return "a remove after the entries";
		if (t->last[0] && stream_path_cmp(f->path, t->last) >= 0)
			return "removes out of order (deepest first)";
	} else {
		t->may_cont = false;
		if (t->entries && stream_path_cmp(f->path, t->last) <= 0)
			return "entries out of order";
		while (t->ndirs && !(len > t->lens[t->ndirs - 1] &&
				     !memcmp(f->path, t->dirs, t->lens[t->ndirs - 1]) &&
				     f->path[t->lens[t->ndirs - 1]] == '/'))
			t->ndirs--;
		if (parent != (t->ndirs ? t->lens[t->ndirs - 1] : 0))
			return "an entry whose directory did not come before it";
		t->entries = true;
	}
	if (f->kind == STREAM_FILE_DIR)
		tree_push(t, f->path, len);
	memcpy(t->last, f->path, len + 1);
	t->kind = f->kind;
	return NULL;
}

uint64_t stream_begin_bytes(const struct stream_begin *b)
{
	return STREAM_REC_OVERHEAD + begin_fixed(begin_version(b)) + strlen(b->file) + strlen(b->snap) +
	       strlen(b->base);
}

uint64_t stream_data_bytes(uint64_t len) { return STREAM_REC_OVERHEAD + 8 + len; }
uint64_t stream_zero_bytes(void) { return STREAM_REC_OVERHEAD + 16; }
uint64_t stream_end_bytes(void) { return STREAM_REC_OVERHEAD + 24; }
uint64_t stream_file_bytes(const char *path)
{
	return STREAM_REC_OVERHEAD + FILE_FIXED + strlen(path);
}

/* ---- encoder ------------------------------------------------------------- */

struct stream_enc {
	stream_out_fn out;
	void *ctx;
	struct cksum_stream *all;       /* version 1: every byte before end */
	uint8_t *buf;                   /* one record */
	uint32_t version;
	uint64_t chain;                 /* version 2: the last record's checksum */
	uint64_t nrec, data_bytes, bytes;
	uint64_t size, next_off;        /* the file's size; records start at or past next_off */
	uint64_t file;                  /* file records so far */
	struct tree_ord tree;
	bool restate;                   /* the record being written is a CONT file record */
	int state;                      /* 0 new, 1 begun, 2 ended */
	int zlevel;                     /* 0: no compression */
	ZSTD_CCtx *zc;
	uint8_t *zbuf;                  /* one compressed record's frame */
	size_t zcap;
};

int stream_enc_new(stream_out_fn out, void *ctx, struct stream_enc **ep)
{
	struct stream_enc *e = calloc(1, sizeof(*e));

	*ep = NULL;
	if (!e)
		return -ENOMEM;
	e->out = out;
	e->ctx = ctx;
	e->all = cksum_stream_new();
	e->buf = malloc(HDR + 8 + STREAM_DATA_MAX + 8);
	if (!e->all || !e->buf) {
		stream_enc_free(e);
		return -ENOMEM;
	}
	*ep = e;
	return 0;
}

void stream_enc_free(struct stream_enc *e)
{
	if (!e)
		return;
	cksum_stream_free(e->all);
	free(e->buf);
	ZSTD_freeCCtx(e->zc);
	free(e->zbuf);
	free(e);
}

int stream_enc_compress(struct stream_enc *e, int level)
{
	if (level < 0 || level > ZSTD_maxCLevel() || level > 19)
		return -EINVAL;
	if (level && !e->zc) {
		e->zcap = ZSTD_compressBound(STREAM_DATA_MAX);
		e->zc = ZSTD_createCCtx();
		e->zbuf = malloc(e->zcap);
		if (!e->zc || !e->zbuf)
			return -ENOMEM;
	}
	e->zlevel = level;
	return 0;
}

uint64_t stream_enc_bytes(const struct stream_enc *e)
{
	return e->bytes;
}

void stream_enc_pos(const struct stream_enc *e, struct stream_pos *p)
{
	*p = (struct stream_pos){ .rec = e->nrec, .off = e->next_off, .chain = e->chain,
				  .data_bytes = e->data_bytes, .file = e->file };
}

/* The record in e->buf + HDR (len payload bytes): header, checksum, out. */
static int enc_emit(struct stream_enc *e, uint32_t type, uint32_t flags, size_t len)
{
	size_t n = HDR + len;
	int rc;

	uint64_t ck;

	le32_put(e->buf, type);
	le32_put(e->buf + 4, flags);
	le64_put(e->buf + 8, len);
	ck = cksum_seeded(e->buf, n, e->version == 1 || type == STREAM_BEGIN ? 0 : e->chain);
	le64_put(e->buf + n, ck);
	n += 8;
	rc = e->out(e->ctx, e->buf, n);
	if (rc)
		return rc;
	e->bytes += n;
	if (e->restate)
		return 0;               /* neither chained nor counted */
	if (type != STREAM_END && e->version == 1)
		cksum_stream_add(e->all, e->buf, n);
	if (type != STREAM_END)
		e->chain = ck;
	e->nrec++;
	return 0;
}

int stream_enc_begin(struct stream_enc *e, const struct stream_begin *b)
{
	size_t lf = strlen(b->file), ls = strlen(b->snap), lb = strlen(b->base);
	uint32_t version = begin_version(b);
	size_t fixed = begin_fixed(version);
	uint8_t *p = e->buf + HDR;
	bool tree = version == STREAM_VERSION_TREE;
	int rc;

	if (e->state || !lf || !ls || lf > STREAM_NAME_MAX || ls > STREAM_NAME_MAX ||
	    lb > STREAM_NAME_MAX || (lb == 0) != stream_is_full(b) ||
	    (!tree && b->resume_off > b->size) || b->kind > STREAM_KIND_DIR ||
	    (version == 1 && b->resume_rec) || (version >= 2 && !b->resume_rec && b->resume_off) ||
	    (!tree && b->resume_file) || (tree && (b->resume_file ? !b->resume_rec : b->resume_off)) ||
	    (b->dmode & ~07777u) || (!tree && (b->dmode || b->duid || b->dgid)))
		return -EINVAL;
	memset(p, 0, fixed);
	memcpy(p, STREAM_MAGIC, 8);
	le32_put(p + 8, version);
	le32_put(p + 12, b->block_size);
	le64_put(p + 16, b->size);
	memcpy(p + 24, b->guid, STREAM_GUID_BYTES);
	memcpy(p + 40, b->base_guid, STREAM_GUID_BYTES);
	le64_put(p + 56, (uint64_t)b->created_ns);
	le64_put(p + 64, b->resume_off);
	p[72] = (uint8_t)lf;
	p[73] = (uint8_t)(lf >> 8);
	p[74] = (uint8_t)ls;
	p[75] = (uint8_t)(ls >> 8);
	p[76] = (uint8_t)lb;
	p[77] = (uint8_t)(lb >> 8);
	if (version >= 2) {
		le64_put(p + 80, b->resume_rec);
		le64_put(p + 88, b->resume_chain);
	}
	if (tree) {
		le32_put(p + 96, b->kind);
		le32_put(p + 100, b->dmode);
		le64_put(p + 104, b->resume_file);
		le32_put(p + 112, b->duid);
		le32_put(p + 116, b->dgid);
	}
	memcpy(p + fixed, b->file, lf);
	memcpy(p + fixed + lf, b->snap, ls);
	memcpy(p + fixed + lf + ls, b->base, lb);
	e->state = 1;
	e->version = version;
	e->size = b->size;
	e->next_off = b->resume_off;
	e->tree.on = tree;
	e->tree.want_cont = b->resume_file != 0;
	e->file = b->resume_file;
	if (tree)
		e->size = 0;            /* no file yet */
	rc = enc_emit(e, STREAM_BEGIN, STREAM_FLAG_MUST, fixed + lf + ls + lb);
	if (!rc && b->resume_rec) {
		/* go on from where the resumed stream stands */
		e->nrec = b->resume_rec;
		e->chain = b->resume_chain;
	}
	return rc;
}

/* A data or zero record's range is in order and inside the file. */
static int enc_place(struct stream_enc *e, uint64_t off, uint64_t len)
{
	if (e->state != 1 || !len || off < e->next_off || off > e->size || len > e->size - off ||
	    (e->tree.on && e->tree.kind != STREAM_FILE_VOL))
		return -EINVAL;
	e->next_off = off + len;
	return 0;
}

int stream_enc_data(struct stream_enc *e, uint64_t off, const void *buf, size_t len)
{
	int rc = len > STREAM_DATA_MAX ? -EINVAL : enc_place(e, off, len);

	if (rc)
		return rc;
	e->data_bytes += len;
	le64_put(e->buf + HDR, off);
	if (e->zlevel) {
		size_t z = ZSTD_compressCCtx(e->zc, e->zbuf, e->zcap, buf, len, e->zlevel);

		if (ZSTD_isError(z))
			return -EIO;
		if (z + 8 < len) {
			le32_put(e->buf + HDR + 8, (uint32_t)len);
			le32_put(e->buf + HDR + 12, 0);
			memcpy(e->buf + HDR + 16, e->zbuf, z);
			return enc_emit(e, STREAM_DATA_ZSTD, STREAM_FLAG_MUST, 16 + z);
		}
	}
	memcpy(e->buf + HDR + 8, buf, len);
	return enc_emit(e, STREAM_DATA, STREAM_FLAG_MUST, 8 + len);
}

int stream_enc_zero(struct stream_enc *e, uint64_t off, uint64_t len)
{
	int rc = enc_place(e, off, len);

	if (rc)
		return rc;
	le64_put(e->buf + HDR, off);
	le64_put(e->buf + HDR + 8, len);
	return enc_emit(e, STREAM_ZERO, STREAM_FLAG_MUST, 16);
}

/* A file record's payload into buf: its length. */
static size_t file_put(uint8_t *p, const struct stream_file *f)
{
	size_t len = strlen(f->path);

	le32_put(p, f->kind);
	le32_put(p + 4, f->flags);
	le32_put(p + 8, f->mode);
	le32_put(p + 12, (uint32_t)len);
	le64_put(p + 16, f->size);
	le64_put(p + 24, (uint64_t)f->mtime_ns);
	le32_put(p + 32, f->uid);
	le32_put(p + 36, f->gid);
	memcpy(p + FILE_FIXED, f->path, len);
	return FILE_FIXED + len;
}

int stream_enc_file(struct stream_enc *e, const struct stream_file *f)
{
	bool cont = f->flags & STREAM_FILE_CONT;
	int rc;

	if (e->state != 1 || strnlen(f->path, STREAM_PATH_MAX + 1) > STREAM_PATH_MAX ||
	    tree_place(&e->tree, f, e->next_off))
		return -EINVAL;
	e->size = f->size;
	if (!cont) {
		e->next_off = 0;
		e->file++;
	}
	e->restate = cont;
	rc = enc_emit(e, STREAM_FILE, STREAM_FLAG_MUST, file_put(e->buf + HDR, f));
	e->restate = false;
	return rc;
}

int stream_enc_raw(struct stream_enc *e, uint32_t type, uint32_t flags, const void *payload,
		   size_t len)
{
	if (e->state != 1 || len > STREAM_DATA_MAX + 8)
		return -EINVAL;
	memcpy(e->buf + HDR, payload, len);
	return enc_emit(e, type, flags, len);
}

int stream_enc_end(struct stream_enc *e)
{
	int rc;

	if (e->state != 1)
		return -EINVAL;
	le64_put(e->buf + HDR, e->nrec);
	le64_put(e->buf + HDR + 8, e->data_bytes);
	le64_put(e->buf + HDR + 16, e->version == 1 ? cksum_stream_value(e->all) : e->chain);
	rc = enc_emit(e, STREAM_END, STREAM_FLAG_MUST, 24);
	if (!rc)
		e->state = 2;
	return rc;
}

/* ---- decoder ------------------------------------------------------------- */

struct stream_dec {
	stream_in_fn in;
	void *ctx;
	struct cksum_stream *all;       /* version 1: every byte before end */
	uint8_t *buf;                   /* one record */
	uint32_t version;               /* 0 until begin was read */
	uint64_t chain;                 /* version 2: the last record's checksum */
	uint64_t nrec, data_bytes, bytes;
	uint64_t size, next_off;        /* a directory stream: of the current file */
	uint64_t file, resume_file;     /* file records so far; begin's */
	struct tree_ord tree;
	struct stream_file f;           /* the last file record */
	int state;                      /* 0 new, 1 begun, 2 ended, 3 resumed: waits for
					 * stream_dec_continue, -1 failed */
	int err;                        /* the error that failed it */
	uint64_t first;                 /* byte of the first record after begin */
	bool resumed;                   /* begin said so */
	struct stream_pos good;         /* after the last record handed out or skipped */
	ZSTD_DCtx *zd;                  /* made at the first compressed record */
	uint8_t *zbuf;                  /* its data, decompressed */
	char msg[160];
};

int stream_dec_new(stream_in_fn in, void *ctx, struct stream_dec **dp)
{
	struct stream_dec *d = calloc(1, sizeof(*d));

	*dp = NULL;
	if (!d)
		return -ENOMEM;
	d->in = in;
	d->ctx = ctx;
	d->all = cksum_stream_new();
	d->buf = malloc(HDR + STREAM_PAYLOAD_MAX + 8);
	if (!d->all || !d->buf) {
		stream_dec_free(d);
		return -ENOMEM;
	}
	*dp = d;
	return 0;
}

void stream_dec_free(struct stream_dec *d)
{
	if (!d)
		return;
	cksum_stream_free(d->all);
	free(d->buf);
	ZSTD_freeDCtx(d->zd);
	free(d->zbuf);
	free(d);
}

static int dec_fail(struct stream_dec *d, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A compressed data record of len payload bytes, decompressed into
 * d->zbuf: its length, or 0 after dec_fail. */
static uint64_t dec_unzstd(struct stream_dec *d, uint64_t len)
{
	const uint8_t *p = d->buf + HDR;
	uint64_t raw = le32_get(p + 8);
	unsigned long long fcs;
	size_t n;

	if (len < 17 || raw == 0 || raw > STREAM_PAYLOAD_MAX) {
		dec_fail(d, -EBADMSG, "compressed record of %" PRIu64 " bytes for %" PRIu64
			 ": damaged", len, raw);
		return 0;
	}
	fcs = ZSTD_getFrameContentSize(p + 16, len - 16);
	if (fcs != raw) {
		dec_fail(d, -EBADMSG, "compressed record: its frame holds %llu bytes, the record "
			 "says %" PRIu64 ": damaged", fcs, raw);
		return 0;
	}
	if (!d->zd && !(d->zd = ZSTD_createDCtx())) {
		dec_fail(d, -ENOMEM, "out of memory");
		return 0;
	}
	if (!d->zbuf && !(d->zbuf = malloc(STREAM_PAYLOAD_MAX))) {
		dec_fail(d, -ENOMEM, "out of memory");
		return 0;
	}
	n = ZSTD_decompressDCtx(d->zd, d->zbuf, raw, p + 16, len - 16);
	if (ZSTD_isError(n) || n != raw) {
		dec_fail(d, -EBADMSG, "compressed record does not decompress (%s): damaged",
			 ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short");
		return 0;
	}
	return raw;
}

const char *stream_dec_msg(const struct stream_dec *d)
{
	return d->msg;
}

uint64_t stream_dec_bytes(const struct stream_dec *d)
{
	return d->bytes;
}

void stream_dec_pos(const struct stream_dec *d, struct stream_pos *p)
{
	*p = d->good;
}

/* The records so far are sound: a caller may keep what they did. */
static void dec_good(struct stream_dec *d)
{
	d->good = (struct stream_pos){ .rec = d->nrec, .off = d->next_off, .chain = d->chain,
				       .data_bytes = d->data_bytes, .file = d->file };
}

static int dec_fail(struct stream_dec *d, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(d->msg, sizeof(d->msg), fmt, ap);
	va_end(ap);
	d->state = -1;
	d->err = rc;
	return rc;
}

/* Read exactly len bytes: len, fewer at end of input, or a negative errno. */
static long dec_read(struct stream_dec *d, uint8_t *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		long n = d->in(d->ctx, buf + got, len - got);

		if (n < 0)
			return n;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	d->bytes += got;
	return (long)got;
}

/* One record into d->buf: its type, flags and payload length. */
static int dec_record(struct stream_dec *d, uint32_t *type, uint32_t *flags, uint64_t *len)
{
	uint64_t at = d->bytes, ck;
	long n;

	n = dec_read(d, d->buf, HDR);
	if (n < 0)
		return dec_fail(d, (int)n, "reading the stream: %s", strerror((int)-n));
	if (n < HDR)
		return dec_fail(d, -ENODATA, "the stream ends at byte %" PRIu64 " before its end "
				"record: truncated", d->bytes);
	*type = le32_get(d->buf);
	*flags = le32_get(d->buf + 4);
	*len = le64_get(d->buf + 8);
	if (*len > STREAM_PAYLOAD_MAX)
		return dec_fail(d, -EBADMSG, "record at byte %" PRIu64 " claims %" PRIu64
				" bytes: damaged", at, *len);
	n = dec_read(d, d->buf + HDR, *len + 8);
	if (n < 0)
		return dec_fail(d, (int)n, "reading the stream: %s", strerror((int)-n));
	if ((uint64_t)n < *len + 8)
		return dec_fail(d, -ENODATA, "the stream ends at byte %" PRIu64 " inside a record: "
				"truncated", d->bytes);
	ck = cksum_seeded(d->buf, HDR + *len, d->version >= 2 ? d->chain : 0);
	if (le64_get(d->buf + HDR + *len) != ck)
		return dec_fail(d, -EBADMSG, "record at byte %" PRIu64 " fails its checksum: "
				"%s", at, d->version < 2 ? "damaged" : at == d->first && d->resumed ?
				"not the continuation of the part kept (another stream, or a token "
				"of another receive)" : "damaged, or a record before it missing");
	if (*type != STREAM_END)
		d->chain = ck;
	return 0;
}

int stream_dec_begin(struct stream_dec *d, struct stream_begin *b)
{
	uint32_t type, flags, lf, ls, lb;
	uint64_t len;
	const uint8_t *p = d->buf + HDR;
	size_t fixed;
	int rc;

	if (d->state)
		return dec_fail(d, -EINVAL, "begin read twice");
	rc = dec_record(d, &type, &flags, &len);
	if (rc)
		return rc;
	if (type != STREAM_BEGIN || len < BEGIN_FIXED_V1 || memcmp(p, STREAM_MAGIC, 8))
		return dec_fail(d, -EBADMSG, "not a vsnapfs send stream (no begin record)");
	memset(b, 0, sizeof(*b));
	b->version = le32_get(p + 8);
	if (b->version > STREAM_VERSION_TREE)
		return dec_fail(d, -EPROTO, "stream version %" PRIu32 ": this vsnapctl reads "
				"versions 1 to %d", b->version, STREAM_VERSION_TREE);
	fixed = begin_fixed(b->version);
	if (b->version == 0 || len < fixed)
		return dec_fail(d, -EBADMSG, "begin record inconsistent: damaged");
	b->block_size = le32_get(p + 12);
	b->size = le64_get(p + 16);
	memcpy(b->guid, p + 24, STREAM_GUID_BYTES);
	memcpy(b->base_guid, p + 40, STREAM_GUID_BYTES);
	b->created_ns = (int64_t)le64_get(p + 56);
	b->resume_off = le64_get(p + 64);
	if (b->version >= 2) {
		b->resume_rec = le64_get(p + 80);
		b->resume_chain = le64_get(p + 88);
	}
	if (b->version == STREAM_VERSION_TREE) {
		b->kind = le32_get(p + 96);
		b->dmode = le32_get(p + 100);
		b->resume_file = le64_get(p + 104);
		b->duid = le32_get(p + 112);
		b->dgid = le32_get(p + 116);
		if (b->kind > STREAM_KIND_DIR)
			return dec_fail(d, -EPROTO, "a stream of kind %" PRIu32 ": this vsnapctl "
					"knows volumes and directories", b->kind);
	}
	lf = p[72] | p[73] << 8;
	ls = p[74] | p[75] << 8;
	lb = p[76] | p[77] << 8;
	if (!lf || !ls || lf > STREAM_NAME_MAX || ls > STREAM_NAME_MAX || lb > STREAM_NAME_MAX ||
	    len != fixed + lf + ls + lb || (lb == 0) != stream_is_full(b) ||
	    (b->kind != STREAM_KIND_DIR && b->resume_off > b->size) ||
	    memchr(p + fixed, 0, lf + ls + lb) ||
	    (b->version >= 2 && !b->resume_rec && b->resume_off) ||
	    (b->kind != STREAM_KIND_DIR && b->resume_file) || (b->dmode & ~07777u) ||
	    (b->kind == STREAM_KIND_DIR && (b->resume_file ? !b->resume_rec : b->resume_off)))
		return dec_fail(d, -EBADMSG, "begin record inconsistent: damaged");
	memcpy(b->file, p + fixed, lf);
	memcpy(b->snap, p + fixed + lf, ls);
	memcpy(b->base, p + fixed + lf + ls, lb);
	if (b->version == 1)
		cksum_stream_add(d->all, d->buf, HDR + len + 8);
	d->version = b->version;
	d->nrec = 1;
	d->first = d->bytes;
	d->size = b->size;
	d->next_off = b->resume_off;
	d->tree.on = b->kind == STREAM_KIND_DIR;
	d->tree.want_cont = b->resume_file != 0;
	d->file = d->resume_file = b->resume_file;
	if (d->tree.on)
		d->size = 0;            /* no file yet */
	d->state = 1;
	dec_good(d);
	if (b->resume_rec) {
		/* records only after stream_dec_continue, from the kept chain */
		d->nrec = b->resume_rec;
		d->resumed = true;
		d->state = 3;
	}
	return 0;
}

int stream_dec_continue(struct stream_dec *d, const struct stream_pos *kept)
{
	if (d->state != 3)
		return dec_fail(d, -EINVAL, "not a resumed stream");
	if (kept->rec != d->nrec || kept->off != d->next_off || kept->file != d->file)
		return dec_fail(d, -ESTALE, "the stream resumes at record %" PRIu64 " (byte %" PRIu64
				" of file %" PRIu64 "), the part kept ends at record %" PRIu64
				" (byte %" PRIu64 " of file %" PRIu64 "): not its continuation",
				d->nrec, d->next_off, d->file, kept->rec, kept->off, kept->file);
	d->chain = kept->chain;
	d->state = 1;
	dec_good(d);
	return 0;
}

/* end: the counts and the stream's checksum, then nothing after it. */
static int dec_end(struct stream_dec *d, uint64_t len)
{
	const uint8_t *p = d->buf + HDR;
	uint8_t extra;

	if (len != 24)
		return dec_fail(d, -EBADMSG, "end record of %" PRIu64 " bytes: damaged", len);
	if (le64_get(p) != d->nrec || le64_get(p + 8) != d->data_bytes)
		return dec_fail(d, -EBADMSG, "end record counts %" PRIu64 " records and %" PRIu64
				" data bytes, the stream had %" PRIu64 " and %" PRIu64 ": records "
				"missing or repeated", le64_get(p), le64_get(p + 8), d->nrec,
				d->data_bytes);
	/* version 2: the end record verified against the chain already */
	if (le64_get(p + 16) != (d->version == 1 ? cksum_stream_value(d->all) : d->chain))
		return dec_fail(d, -EBADMSG, "the stream's checksum does not match: damaged");
	if (dec_read(d, &extra, 1) != 0)
		return dec_fail(d, -EBADMSG, "bytes after the end record: not one stream");
	d->state = 2;
	return 0;
}

/* A file record of len payload bytes (chain: the value before it): its
 * fields and place checked, handed out. */
static int dec_file(struct stream_dec *d, uint64_t len, uint64_t chain, struct stream_rec *r)
{
	const uint8_t *p = d->buf + HDR;
	struct stream_file *f = &d->f;
	const char *why;
	uint64_t plen = len >= FILE_FIXED ? le32_get(p + 12) : 0;
	bool cont;

	if (len < FILE_FIXED + 1 || plen != len - FILE_FIXED || plen > STREAM_PATH_MAX ||
	    memchr(p + FILE_FIXED, 0, plen))
		return dec_fail(d, -EBADMSG, "file record of %" PRIu64 " bytes inconsistent: "
				"damaged", len);
	f->kind = le32_get(p);
	f->flags = le32_get(p + 4);
	f->mode = le32_get(p + 8);
	f->size = le64_get(p + 16);
	f->mtime_ns = (int64_t)le64_get(p + 24);
	f->uid = le32_get(p + 32);
	f->gid = le32_get(p + 36);
	memcpy(f->path, p + FILE_FIXED, plen);
	f->path[plen] = '\0';
	cont = f->flags & STREAM_FILE_CONT;
	if (cont) {
		/* restated: checked against the kept chain, which goes on as it was */
		d->chain = chain;
	}
	why = tree_place(&d->tree, f, d->next_off);
	if (why)
		return dec_fail(d, -EBADMSG, "file record %" PRIu64 ": %s: damaged or forged",
				d->file + !cont, why);
	d->size = f->size;
	if (!cont) {
		d->nrec++;
		d->file++;
		d->next_off = 0;
	}
	dec_good(d);
	*r = (struct stream_rec){ .type = STREAM_FILE, .file = f };
	return 1;
}

int stream_dec_next(struct stream_dec *d, struct stream_rec *r)
{
	for (;;) {
		uint32_t type, flags;
		uint64_t len, off, n, chain = d->chain;
		int rc;

		if (d->state == 2)
			return 0;
		if (d->state == 3)
			return dec_fail(d, -EINVAL, "a resumed stream: the part it continues was not "
					"given");
		if (d->state != 1)
			return dec_fail(d, -EINVAL, "no begin record read");
		rc = dec_record(d, &type, &flags, &len);
		if (rc)
			return rc;
		if (type == STREAM_END && d->tree.want_cont)
			return dec_fail(d, -EBADMSG, "a resumed stream that does not restate the file "
					"it goes on in: damaged");
		if (type == STREAM_END)
			return dec_end(d, len);
		if (type == STREAM_FILE)
			return dec_file(d, len, chain, r);
		if (d->version == 1)
			cksum_stream_add(d->all, d->buf, HDR + len + 8);
		d->nrec++;
		if (type != STREAM_DATA && type != STREAM_ZERO && type != STREAM_DATA_ZSTD) {
			if (type == STREAM_BEGIN)
				return dec_fail(d, -EBADMSG, "a second begin record: not one stream");
			if (flags & STREAM_FLAG_MUST)
				return dec_fail(d, -EPROTO, "record type %" PRIu32 " that this "
						"vsnapctl does not know", type);
			dec_good(d);
			continue;               /* skipped by its length */
		}
		if (d->tree.on && d->tree.kind != STREAM_FILE_VOL)
			return dec_fail(d, -EBADMSG, "a data or zero record %s: damaged",
					d->tree.want_cont ? "before the restated file of a resumed "
					"stream" : "that follows no volume's file record");
		if (type == STREAM_DATA ? len < 9 : type == STREAM_ZERO && len != 16)
			return dec_fail(d, -EBADMSG, "record of type %" PRIu32 " with %" PRIu64
					" bytes: damaged", type, len);
		off = le64_get(d->buf + HDR);
		if (type == STREAM_DATA_ZSTD && !(n = dec_unzstd(d, len)))
			return d->err;
		if (type != STREAM_DATA_ZSTD)
			n = type == STREAM_DATA ? len - 8 : le64_get(d->buf + HDR + 8);
		if (!n || off < d->next_off || off > d->size || n > d->size - off)
			return dec_fail(d, -EBADMSG, "record [%" PRIu64 ", +%" PRIu64 ") out of order "
					"or past the size %" PRIu64 ": damaged", off, n, d->size);
		d->next_off = off + n;
		if (type != STREAM_ZERO)
			d->data_bytes += n;
		dec_good(d);
		*r = (struct stream_rec){ .type = type == STREAM_ZERO ? STREAM_ZERO : STREAM_DATA,
					  .off = off, .len = n,
					  .data = type == STREAM_DATA ? d->buf + HDR + 8 :
						  type == STREAM_DATA_ZSTD ? d->zbuf : NULL };
		return 1;
	}
}
