/*
 * Unit tests of the send stream (src/stream/stream.c): what the encoder
 * writes decodes to the same records; every byte flipped, every cut, a
 * record dropped or repeated, a higher version, an unknown record that may
 * not be skipped and bytes after the end are refused (the decoder never
 * reports a verified end for them); an unknown record that may be skipped
 * is; the encoder refuses records out of order.  The chain (version 2): a
 * record dropped or taken from another stream fails at the next record,
 * not at end; a stream resumed from a prefix's position continues it byte
 * for byte and decodes to its end; a resumed stream from another position
 * or chain value is refused at its first record; a version 1 stream is
 * still read.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vsnapfs/cksum.h"
#include "vsnapfs/le.h"
#include "vsnapfs/stream.h"

struct mem {
	uint8_t *p;
	size_t n, cap, pos;
};

static int mem_out(void *ctx, const void *buf, size_t len)
{
	struct mem *m = ctx;

	if (m->n + len > m->cap) {
		m->cap = (m->n + len) * 2;
		m->p = realloc(m->p, m->cap);
		cr_assert_not_null(m->p);
	}
	memcpy(m->p + m->n, buf, len);
	m->n += len;
	return 0;
}

static long mem_in(void *ctx, void *buf, size_t len)
{
	struct mem *m = ctx;
	size_t k = m->n - m->pos < len ? m->n - m->pos : len;

	/* hand out odd pieces, as a pipe would */
	if (k > 7)
		k = k / 2 + 1;
	memcpy(buf, m->p + m->pos, k);
	m->pos += k;
	return (long)k;
}

static uint8_t data1[5000], data2[333];

static struct stream_begin incr_begin(void)
{
	struct stream_begin b = { .block_size = 4096, .size = 1 << 20, .created_ns = 77 };

	memset(b.guid, 0xab, sizeof(b.guid));
	memset(b.base_guid, 0xcd, sizeof(b.base_guid));
	strcpy(b.file, "vm1.img");
	strcpy(b.snap, "tue");
	strcpy(b.base, "mon");
	return b;
}

/* The sample stream: begin, data, zero, data, end. */
static void sample(struct mem *m, const struct stream_begin *b)
{
	struct stream_enc *e;

	for (size_t i = 0; i < sizeof(data1); i++)
		data1[i] = (uint8_t)(i * 7 + 3);
	memset(data2, 0x42, sizeof(data2));
	cr_assert_eq(stream_enc_new(mem_out, m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, b), 0);
	cr_assert_eq(stream_enc_data(e, 4096, data1, sizeof(data1)), 0);
	cr_assert_eq(stream_enc_zero(e, 16384, 65536), 0);
	cr_assert_eq(stream_enc_data(e, (1 << 20) - sizeof(data2), data2, sizeof(data2)), 0);
	cr_assert_eq(stream_enc_end(e), 0);
	cr_assert_eq(stream_enc_bytes(e), m->n);
	cr_assert_eq(m->n, stream_begin_bytes(b) + stream_data_bytes(sizeof(data1)) +
		     stream_zero_bytes() + stream_data_bytes(sizeof(data2)) + stream_end_bytes(),
		     "the exact size is known before sending");
	stream_enc_free(e);
}

/* Decode all of m (a resumed stream from kept): 0 if it ended verified,
 * else the error. */
static int decode_from(struct mem *m, const struct stream_pos *kept, int *nrec)
{
	struct stream_dec *d;
	struct stream_begin b;
	struct stream_rec r;
	int rc;

	m->pos = 0;
	*nrec = 0;
	cr_assert_eq(stream_dec_new(mem_in, m, &d), 0);
	rc = stream_dec_begin(d, &b);
	if (!rc && kept)
		rc = stream_dec_continue(d, kept);
	while (!rc && (rc = stream_dec_next(d, &r)) == 1) {
		(*nrec)++;
		rc = 0;
	}
	if (rc < 0)
		cr_assert_neq(stream_dec_msg(d)[0], 0, "a refusal says why");
	stream_dec_free(d);
	return rc;
}

static int decode_all(struct mem *m, int *nrec)
{
	return decode_from(m, NULL, nrec);
}

/* The next record of d is data: len bytes at off, as buf. */
static void expect_data(struct stream_dec *d, uint64_t off, const void *buf, size_t len)
{
	struct stream_rec r;

	cr_assert_eq(stream_dec_next(d, &r), 1);
	cr_assert_eq(r.type, STREAM_DATA);
	cr_assert_eq(r.off, off);
	cr_assert_eq(r.len, len);
	cr_assert_eq(memcmp(r.data, buf, len), 0);
}

Test(stream, what_is_encoded_decodes_to_the_same_records)
{
	struct stream_begin b = incr_begin(), o;
	struct mem m = { 0 };
	struct stream_dec *d;
	struct stream_rec r;

	sample(&m, &b);
	cr_assert_eq(stream_dec_new(mem_in, &m, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	cr_assert_eq(o.version, STREAM_VERSION);
	cr_assert_eq(o.size, b.size);
	cr_assert_eq(o.block_size, 4096);
	cr_assert_eq(o.created_ns, 77);
	cr_assert_eq(memcmp(o.guid, b.guid, 16), 0);
	cr_assert_eq(memcmp(o.base_guid, b.base_guid, 16), 0);
	cr_assert_str_eq(o.file, "vm1.img");
	cr_assert_str_eq(o.snap, "tue");
	cr_assert_str_eq(o.base, "mon");
	cr_assert(!stream_is_full(&o));
	expect_data(d, 4096, data1, sizeof(data1));
	cr_assert_eq(stream_dec_next(d, &r), 1);
	cr_assert_eq(r.type, STREAM_ZERO);
	cr_assert_eq(r.off, 16384);
	cr_assert_eq(r.len, 65536);
	cr_assert_eq(stream_dec_next(d, &r), 1);
	cr_assert_eq(r.type, STREAM_DATA);
	cr_assert_eq(r.len, sizeof(data2));
	cr_assert_eq(stream_dec_next(d, &r), 0);
	cr_assert_eq(stream_dec_next(d, &r), 0);
	cr_assert_eq(stream_dec_bytes(d), m.n);
	stream_dec_free(d);
	free(m.p);
}

Test(stream, every_flipped_byte_is_refused)
{
	struct stream_begin b = incr_begin();
	struct mem m = { 0 };
	int n;

	sample(&m, &b);
	for (size_t i = 0; i < m.n; i++) {
		for (int bit = 0; bit < 8; bit += 7) {
			m.p[i] ^= (uint8_t)(1 << bit);
			cr_assert_lt(decode_all(&m, &n), 0, "byte %zu bit %d flipped was accepted", i,
				     bit);
			m.p[i] ^= (uint8_t)(1 << bit);
		}
	}
	cr_assert_eq(decode_all(&m, &n), 0);
	free(m.p);
}

Test(stream, every_cut_is_refused_as_truncated)
{
	struct stream_begin b = incr_begin();
	struct mem m = { 0 };
	size_t full;
	int n, rc;

	sample(&m, &b);
	full = m.n;
	for (size_t cut = 0; cut < full; cut++) {
		m.n = cut;
		rc = decode_all(&m, &n);
		cr_assert_eq(rc, -ENODATA, "the stream cut at %zu of %zu: %d", cut, full, rc);
	}
	m.n = full;
	free(m.p);
}

/* Offsets of the records of m. */
static size_t record_starts(const struct mem *m, size_t *at, size_t max)
{
	size_t k = 0;

	for (size_t p = 0; p < m->n && k < max; p += 24 + le64_get(m->p + p + 8))
		at[k++] = p;
	return k;
}

Test(stream, a_record_dropped_or_repeated_is_refused_at_the_next_record)
{
	struct stream_begin b = incr_begin();
	struct mem m = { 0 }, x = { 0 };
	size_t at[8], k;
	int n;

	sample(&m, &b);
	k = record_starts(&m, at, 8);
	cr_assert_eq(k, 5);
	/* drop the zero record (the third): the chain breaks at the fourth,
	 * so only the record before the gap was handed out */
	mem_out(&x, m.p, at[2]);
	mem_out(&x, m.p + at[3], m.n - at[3]);
	cr_assert_eq(decode_all(&x, &n), -EBADMSG);
	cr_assert_eq(n, 1, "records handed out past a dropped one: %d", n);
	/* repeat the last data record: out of order */
	x.n = 0;
	mem_out(&x, m.p, at[4]);
	mem_out(&x, m.p + at[3], at[4] - at[3]);
	mem_out(&x, m.p + at[4], m.n - at[4]);
	cr_assert_eq(decode_all(&x, &n), -EBADMSG);
	/* bytes after the end */
	x.n = 0;
	mem_out(&x, m.p, m.n);
	mem_out(&x, "x", 1);
	cr_assert_eq(decode_all(&x, &n), -EBADMSG);
	/* two streams one after the other */
	x.n = 0;
	mem_out(&x, m.p, m.n);
	mem_out(&x, m.p, m.n);
	cr_assert_eq(decode_all(&x, &n), -EBADMSG);
	free(m.p);
	free(x.p);
}

Test(stream, unknown_records_are_skipped_unless_marked_must)
{
	struct stream_begin b = incr_begin();
	struct stream_enc *e;
	struct mem m = { 0 };
	int n;

	cr_assert_eq(stream_enc_new(mem_out, &m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, &b), 0);
	cr_assert_eq(stream_enc_raw(e, 99, 0, "later", 5), 0);
	cr_assert_eq(stream_enc_zero(e, 0, 4096), 0);
	cr_assert_eq(stream_enc_end(e), 0);
	stream_enc_free(e);
	cr_assert_eq(decode_all(&m, &n), 0);
	cr_assert_eq(n, 1, "the unknown record is skipped, the zero record seen");

	m.n = 0;
	cr_assert_eq(stream_enc_new(mem_out, &m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, &b), 0);
	cr_assert_eq(stream_enc_raw(e, 99, STREAM_FLAG_MUST, "later", 5), 0);
	cr_assert_eq(stream_enc_end(e), 0);
	stream_enc_free(e);
	cr_assert_eq(decode_all(&m, &n), -EPROTO);
	free(m.p);
}

Test(stream, a_higher_version_is_eproto)
{
	struct stream_begin b = incr_begin();
	struct mem m = { 0 };
	int n;

	sample(&m, &b);
	/* version is at payload byte 8; then fix the record's checksum */
	le32_put(m.p + 16 + 8, STREAM_VERSION_TREE + 1);
	le64_put(m.p + 16 + le64_get(m.p + 8), cksum_buf(m.p, 16 + le64_get(m.p + 8)));
	cr_assert_eq(decode_all(&m, &n), -EPROTO);
	free(m.p);
}

Test(stream, the_encoder_refuses_records_out_of_order_or_past_the_size)
{
	struct stream_begin b = incr_begin();
	struct stream_enc *e;
	struct mem m = { 0 };

	cr_assert_eq(stream_enc_new(mem_out, &m, &e), 0);
	cr_assert_eq(stream_enc_zero(e, 0, 1), -EINVAL, "before begin");
	cr_assert_eq(stream_enc_begin(e, &b), 0);
	cr_assert_eq(stream_enc_zero(e, 8192, 4096), 0);
	cr_assert_eq(stream_enc_zero(e, 4096, 4096), -EINVAL);
	cr_assert_eq(stream_enc_zero(e, b.size - 1, 2), -EINVAL);
	cr_assert_eq(stream_enc_zero(e, 1 << 19, 0), -EINVAL);
	stream_enc_free(e);
	free(m.p);
}

/* A record valid by itself, taken from another stream of the same shape:
 * the chain tells at once (version 1: only end's checksum could). */
Test(stream, a_record_from_another_stream_is_refused)
{
	struct stream_begin b = incr_begin();
	struct mem m = { 0 }, o = { 0 };
	size_t at[8], ot[8];
	int n;

	sample(&m, &b);
	sample(&o, &b);
	cr_assert_eq(memcmp(m.p, o.p, m.n), 0);
	o.n = 0;
	data1[0] ^= 1;          /* the other stream's first data record differs */
	{
		struct stream_enc *e;

		cr_assert_eq(stream_enc_new(mem_out, &o, &e), 0);
		cr_assert_eq(stream_enc_begin(e, &b), 0);
		cr_assert_eq(stream_enc_data(e, 4096, data1, sizeof(data1)), 0);
		stream_enc_free(e);
	}
	record_starts(&m, at, 8);
	cr_assert_eq(record_starts(&o, ot, 8), 2);
	cr_assert_eq(o.n - ot[1], at[2] - at[1]);
	memcpy(m.p + at[1], o.p + ot[1], at[2] - at[1]);
	cr_assert_eq(decode_all(&m, &n), -EBADMSG);
	/* in its place it is valid (same begin, same seed); the next is not */
	cr_assert_eq(n, 1, "records handed out past the foreign one: %d", n);
	free(m.p);
	free(o.p);
}

/* ---- compression ---------------------------------------------------------- */

static uint8_t big[256 * 1024];

/* begin, one compressible data record (a repeated pattern), end. */
static void zsample(struct mem *m, const struct stream_begin *b, int level, bool random)
{
	struct stream_enc *e;

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = random ? (uint8_t)rand() : (uint8_t)(i % 251 < 7 ? i : 0x11);
	cr_assert_eq(stream_enc_new(mem_out, m, &e), 0);
	cr_assert_eq(stream_enc_compress(e, level), 0);
	cr_assert_eq(stream_enc_begin(e, b), 0);
	cr_assert_eq(stream_enc_data(e, 8192, big, sizeof(big)), 0);
	cr_assert_eq(stream_enc_end(e), 0);
	stream_enc_free(e);
}

Test(stream, compressed_data_decodes_to_the_same_and_only_shrinks)
{
	struct stream_begin b = incr_begin(), o;
	struct mem m = { 0 };
	struct stream_dec *d;
	struct stream_rec r;
	uint64_t plain = stream_begin_bytes(&b) + stream_data_bytes(sizeof(big)) + stream_end_bytes();

	zsample(&m, &b, 3, false);
	cr_assert_lt(m.n, plain / 4, "a repetitive record is stored compressed (%zu bytes)", m.n);
	cr_assert_eq(stream_dec_new(mem_in, &m, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	expect_data(d, 8192, big, sizeof(big));
	cr_assert_eq(stream_dec_next(d, &r), 0);
	stream_dec_free(d);

	m.n = 0;
	zsample(&m, &b, 3, true);
	cr_assert_eq(m.n, plain, "random data is written plain");
	free(m.p);
}

Test(stream, every_flipped_byte_of_a_compressed_stream_is_refused)
{
	struct stream_begin b = incr_begin();
	struct mem m = { 0 };
	int n;

	zsample(&m, &b, 1, false);
	for (size_t i = 0; i < m.n; i++) {
		m.p[i] ^= 0x10;
		cr_assert_lt(decode_all(&m, &n), 0, "byte %zu flipped was accepted", i);
		m.p[i] ^= 0x10;
	}
	cr_assert_eq(decode_all(&m, &n), 0);
	free(m.p);
}

/* A record whose stated length disagrees with its frame (a bomb, or a bug
 * of a sender), its own checksum made valid: refused before anything is
 * decompressed into a buffer of the wrong size. */
Test(stream, a_compressed_record_whose_length_lies_is_refused)
{
	struct stream_begin b = incr_begin(), o;
	struct mem m = { 0 };
	struct stream_dec *d;
	struct stream_rec r;
	size_t at[4];
	uint64_t len;

	zsample(&m, &b, 3, false);
	cr_assert_eq(record_starts(&m, at, 4), 3);
	cr_assert_eq(le32_get(m.p + at[1]), STREAM_DATA_ZSTD);
	len = le64_get(m.p + at[1] + 8);
	le32_put(m.p + at[1] + 16 + 8, 15u << 20);      /* raw length: 15 MiB */
	le64_put(m.p + at[1] + 16 + len, cksum_seeded(m.p + at[1], 16 + len,
						      le64_get(m.p + at[1] - 8)));
	cr_assert_eq(stream_dec_new(mem_in, &m, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	cr_assert_eq(stream_dec_next(d, &r), -EBADMSG);
	cr_assert(strstr(stream_dec_msg(d), "compressed record"), "%s", stream_dec_msg(d));
	stream_dec_free(d);
	free(m.p);
}

/* ---- the chain and resume ------------------------------------------------------ */

/* The records of the sample after the first k-1 (k counts begin), written
 * as a stream resumed from pos. */
static void sample_resumed(struct mem *m, const struct stream_begin *b0,
			   const struct stream_pos *pos, int k)
{
	struct stream_begin b = *b0;
	struct stream_enc *e;

	b.resume_rec = pos->rec;
	b.resume_off = pos->off;
	b.resume_chain = pos->chain;
	cr_assert_eq(stream_enc_new(mem_out, m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, &b), 0);
	if (k <= 1)
		cr_assert_eq(stream_enc_data(e, 4096, data1, sizeof(data1)), 0);
	if (k <= 2)
		cr_assert_eq(stream_enc_zero(e, 16384, 65536), 0);
	if (k <= 3)
		cr_assert_eq(stream_enc_data(e, (1 << 20) - sizeof(data2), data2, sizeof(data2)), 0);
	cr_assert_eq(stream_enc_end(e), 0);
	stream_enc_free(e);
}

/* Decode the first k records of m (begin counted) and return the position. */
static struct stream_pos prefix_pos(struct mem *m, int k)
{
	struct stream_dec *d;
	struct stream_begin o;
	struct stream_rec r;
	struct stream_pos p;

	m->pos = 0;
	cr_assert_eq(stream_dec_new(mem_in, m, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	for (int i = 1; i < k; i++)
		cr_assert_eq(stream_dec_next(d, &r), 1);
	stream_dec_pos(d, &p);
	stream_dec_free(d);
	cr_assert_eq(p.rec, (uint64_t)k);
	return p;
}

Test(stream, a_resumed_stream_continues_the_prefix_byte_for_byte)
{
	struct stream_begin b = incr_begin();
	struct mem m = { 0 }, x = { 0 };
	size_t at[8];
	int n;

	sample(&m, &b);
	record_starts(&m, at, 8);
	for (int k = 1; k <= 4; k++) {
		struct stream_pos p = prefix_pos(&m, k);
		size_t rb;

		x.n = 0;
		sample_resumed(&x, &b, &p, k);
		rb = 24 + le64_get(x.p + 8);            /* the resumed begin */
		cr_assert_eq(x.n - rb, m.n - at[k], "k=%d: the tail's length", k);
		/* end differs: its data bytes are of the resumed part */
		cr_assert_eq(memcmp(x.p + rb, m.p + at[k], at[4] - at[k]), 0,
			     "k=%d: the resumed records are the original's, chain and all", k);
		cr_assert_eq(decode_all(&x, &n), -EINVAL, "k=%d: no kept part given", k);
		cr_assert_eq(decode_from(&x, &p, &n), 0, "k=%d", k);
		cr_assert_eq(n, 4 - k, "k=%d: records of the resumed part", k);
	}
	free(m.p);
	free(x.p);
}

Test(stream, a_resumed_stream_from_another_place_or_chain_is_refused_at_once)
{
	struct stream_begin b = incr_begin(), o;
	struct mem m = { 0 }, x = { 0 };
	struct stream_dec *d;
	struct stream_rec r;
	struct stream_pos p, q;
	int n;

	sample(&m, &b);
	p = prefix_pos(&m, 2);
	/* a chain value that is not this prefix's (a token of another receive) */
	q = p;
	q.chain ^= 1;
	sample_resumed(&x, &b, &q, 2);
	cr_assert_eq(stream_dec_new(mem_in, &x, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	cr_assert_eq(o.resume_rec, 2);
	cr_assert_eq(o.resume_chain, q.chain);
	cr_assert_eq(stream_dec_continue(d, &p), 0, "the place fits, the chain is checked next");
	cr_assert_eq(stream_dec_next(d, &r), -EBADMSG, "the first record is not handed out");
	cr_assert(strstr(stream_dec_msg(d), "not the continuation"), "%s", stream_dec_msg(d));
	stream_dec_free(d);
	/* the right chain value, but the stream of another base: its begin
	 * starts another chain, so the prefix's value does not continue it */
	x.n = 0;
	memset(b.base_guid, 0xee, sizeof(b.base_guid));
	sample(&x, &b);
	q = prefix_pos(&x, 2);
	cr_assert_neq(q.chain, p.chain, "two streams of other bases, one chain value");
	/* the records of a stream resumed at a record that the prefix did not
	 * reach (record 3 against a prefix of 2) do not verify either */
	x.n = 0;
	b = incr_begin();
	q = prefix_pos(&m, 3);
	sample_resumed(&x, &b, &q, 3);
	cr_assert_eq(decode_from(&x, &p, &n), -ESTALE, "resumes at 3, kept 2");
	/* and a stream resumed with the place faked to fit: the chain */
	x.n = 0;
	q.rec = p.rec;
	q.off = p.off;
	sample_resumed(&x, &b, &q, 3);
	cr_assert_eq(decode_from(&x, &p, &n), -EBADMSG);
	free(m.p);
	free(x.p);
}

Test(stream, after_a_refusal_the_position_is_the_last_verified_record)
{
	struct stream_begin b = incr_begin(), o;
	struct mem m = { 0 }, x = { 0 };
	struct stream_dec *d;
	struct stream_rec r;
	struct stream_pos p, want;
	size_t at[8];

	sample(&m, &b);
	record_starts(&m, at, 8);
	want = prefix_pos(&m, 2);
	/* record 3 dropped, then the stream cut inside record 4 */
	mem_out(&x, m.p, at[2]);
	mem_out(&x, m.p + at[3], 30);
	cr_assert_eq(stream_dec_new(mem_in, &x, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	cr_assert_eq(stream_dec_next(d, &r), 1);
	cr_assert_eq(stream_dec_next(d, &r), -ENODATA);
	stream_dec_pos(d, &p);
	cr_assert_eq(memcmp(&p, &want, sizeof(p)), 0, "the kept part ends where it was verified");
	stream_dec_free(d);
	/* the same with record 4 whole: the chain refuses it */
	x.n = 0;
	mem_out(&x, m.p, at[2]);
	mem_out(&x, m.p + at[3], m.n - at[3]);
	x.pos = 0;
	cr_assert_eq(stream_dec_new(mem_in, &x, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	cr_assert_eq(stream_dec_next(d, &r), 1);
	cr_assert_eq(stream_dec_next(d, &r), -EBADMSG);
	stream_dec_pos(d, &p);
	cr_assert_eq(memcmp(&p, &want, sizeof(p)), 0);
	stream_dec_free(d);
	/* a record sound by its chain but out of order (a sender's bug) is not
	 * counted in the position either */
	x.n = 0;
	mem_out(&x, m.p, m.n);
	le64_put(x.p + at[2] + 16, 0);                  /* the zero record at 0 */
	le64_put(x.p + at[2] + 16 + 16, cksum_seeded(x.p + at[2], 16 + 16,
						     le64_get(x.p + at[2] - 8)));
	x.pos = 0;
	cr_assert_eq(stream_dec_new(mem_in, &x, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	cr_assert_eq(stream_dec_next(d, &r), 1);
	cr_assert_eq(stream_dec_next(d, &r), -EBADMSG);
	cr_assert(strstr(stream_dec_msg(d), "out of order"), "%s", stream_dec_msg(d));
	stream_dec_pos(d, &p);
	cr_assert_eq(memcmp(&p, &want, sizeof(p)), 0);
	stream_dec_free(d);
	free(m.p);
	free(x.p);
}

Test(stream, the_encoder_and_the_decoder_agree_on_the_position)
{
	struct stream_begin b = incr_begin(), o;
	struct stream_enc *e;
	struct stream_dec *d;
	struct stream_rec r;
	struct stream_pos pe[4], pd;
	struct mem m = { 0 };

	cr_assert_eq(stream_enc_new(mem_out, &m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, &b), 0);
	stream_enc_pos(e, &pe[0]);
	cr_assert_eq(stream_enc_data(e, 4096, data1, sizeof(data1)), 0);
	stream_enc_pos(e, &pe[1]);
	cr_assert_eq(stream_enc_zero(e, 16384, 65536), 0);
	stream_enc_pos(e, &pe[2]);
	cr_assert_eq(stream_enc_end(e), 0);
	stream_enc_free(e);
	cr_assert_eq(pe[1].rec, 2);
	cr_assert_eq(pe[1].off, 4096 + sizeof(data1));
	cr_assert_eq(pe[2].off, 16384 + 65536);
	cr_assert_eq(pe[2].data_bytes, sizeof(data1));
	cr_assert_eq(stream_dec_new(mem_in, &m, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	for (int i = 0; i < 3; i++) {
		stream_dec_pos(d, &pd);
		cr_assert_eq(memcmp(&pd, &pe[i], sizeof(pd)), 0, "record %d", i);
		cr_assert_eq(stream_dec_next(d, &r), i < 2 ? 1 : 0);
	}
	stream_dec_free(d);
	free(m.p);
}

Test(stream, a_version_1_stream_is_still_read)
{
	struct stream_begin b = incr_begin(), o;
	struct mem m = { 0 }, x = { 0 };
	struct stream_dec *d;
	size_t at[8];
	int n;

	b.version = 1;
	sample(&m, &b);
	cr_assert_eq(decode_all(&m, &n), 0);
	cr_assert_eq(n, 3);
	m.pos = 0;
	cr_assert_eq(stream_dec_new(mem_in, &m, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	cr_assert_eq(o.version, 1);
	cr_assert_eq(o.resume_rec, 0);
	stream_dec_free(d);
	for (size_t i = 0; i < m.n; i++) {
		m.p[i] ^= 0x80;
		cr_assert_lt(decode_all(&m, &n), 0, "v1: byte %zu flipped was accepted", i);
		m.p[i] ^= 0x80;
	}
	/* a dropped record: version 1 sees it at end only */
	record_starts(&m, at, 8);
	mem_out(&x, m.p, at[2]);
	mem_out(&x, m.p + at[3], m.n - at[3]);
	cr_assert_eq(decode_all(&x, &n), -EBADMSG);
	cr_assert_eq(n, 2);
	/* the encoder writes no resumed version 1 stream */
	b.resume_rec = 2;
	b.resume_off = 8192;
	{
		struct stream_enc *e;

		cr_assert_eq(stream_enc_new(mem_out, &x, &e), 0);
		cr_assert_eq(stream_enc_begin(e, &b), -EINVAL);
		stream_enc_free(e);
	}
	free(m.p);
	free(x.p);
}

/* ---- directory streams (version 3, file records) ---------------------------------- */

static struct stream_begin dir_begin(void)
{
	struct stream_begin b = incr_begin();

	b.kind = STREAM_KIND_DIR;
	b.size = 0;
	b.dmode = 0700;
	b.duid = 1234;
	b.dgid = 2345;
	strcpy(b.file, "web");
	return b;
}

/* data1 and data2 as sample() fills them. */
static void fill_data(void)
{
	struct stream_begin b = incr_begin();
	struct mem m = { 0 };

	sample(&m, &b);
	free(m.p);
}

static struct stream_file sfile(uint32_t kind, uint32_t flags, uint64_t size, const char *path)
{
	struct stream_file f = { .kind = kind, .flags = flags, .mode = 0640, .size = size,
				 .mtime_ns = 1234567890123, .uid = 1234, .gid = 2345 };

	snprintf(f.path, sizeof(f.path), "%s", path);
	return f;
}

/* The sample directory stream's records after begin, in order: a file
 * record (path set), or data (len) or zero at off of the file before. */
static const struct drec {
	uint32_t kind, flags;
	uint64_t size;
	const char *path;
	uint64_t off, len;
	bool zero;
} drecs[] = {
	{ STREAM_FILE_REMOVE, 0, 0, "z/y", 0, 0, false },                    /* deepest first */
	{ STREAM_FILE_REMOVE, 0, 0, "z", 0, 0, false },
	{ STREAM_FILE_DIR, STREAM_FILE_BASE, 0, "a", 0, 0, false },
	{ STREAM_FILE_VOL, STREAM_FILE_BASE, 8192, "a/v.img", 0, 0, false },
	{ 0, 0, 0, NULL, 0, 4096, false },
	{ 0, 0, 0, NULL, 4096, 4096, true },
	{ STREAM_FILE_VOL, 0, 333, "a.b", 0, 0, false },                     /* "a/..." < "a.b" */
	{ 0, 0, 0, NULL, 0, 333, false },
	{ STREAM_FILE_DIR, 0, 0, "b", 0, 0, false },
};
#define NDRECS (sizeof(drecs) / sizeof(drecs[0]))

static int drec_put(struct stream_enc *e, size_t i, uint32_t more)
{
	const struct drec *x = &drecs[i];
	struct stream_file f;

	if (x->path) {
		f = sfile(x->kind, x->flags | more, x->size, x->path);
		return stream_enc_file(e, &f);
	}
	if (x->zero)
		return stream_enc_zero(e, x->off, x->len);
	return stream_enc_data(e, x->off, x->len == 333 ? data2 : data1, x->len);
}

/* The records a stream resumed after the first from records restates:
 * the file record they end in and its directories, outermost first (a
 * remove alone); their indexes into idx, their count. */
static size_t dir_restated(size_t from, size_t idx[NDRECS])
{
	size_t n = 0, f = from, l;

	while (f > 0 && !drecs[f - 1].path)
		f--;
	if (!f--)
		return 0;
	idx[n++] = f;
	l = strlen(drecs[f].path);
	for (size_t j = f; drecs[f].kind != STREAM_FILE_REMOVE && j-- > 0;) {
		if (drecs[j].path && drecs[j].kind == STREAM_FILE_DIR &&
		    strlen(drecs[j].path) < l && !strncmp(drecs[j].path, drecs[f].path,
							   strlen(drecs[j].path)) &&
		    drecs[f].path[strlen(drecs[j].path)] == '/') {
			idx[n++] = j;
			l = strlen(drecs[j].path);
		}
	}
	for (size_t i = 0; i < n / 2; i++) {
		size_t t = idx[i];

		idx[i] = idx[n - 1 - i];
		idx[n - 1 - i] = t;
	}
	return n;
}

/* The sample directory stream, or (pos) the stream resumed after its
 * first pos->rec records: the file they end in and its directories
 * restated, then the rest. */
static void dir_sample(struct mem *m, const struct stream_begin *b0, const struct stream_pos *pos)
{
	struct stream_begin b = *b0;
	struct stream_enc *e;
	size_t from = pos ? pos->rec - 1 : 0, idx[NDRECS], n = 0;

	fill_data();
	if (pos) {
		b.resume_rec = pos->rec;
		b.resume_off = pos->off;
		b.resume_chain = pos->chain;
		b.resume_file = pos->file;
		n = dir_restated(from, idx);
	}
	cr_assert_eq(stream_enc_new(mem_out, m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, &b), 0);
	if (n > 1)
		cr_assert_eq(drec_put(e, idx[n - 1], STREAM_FILE_CONT), -EINVAL,
			     "%s restated without its directories", drecs[idx[n - 1]].path);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(drec_put(e, idx[i], STREAM_FILE_CONT), 0, "the restated %s",
			     drecs[idx[i]].path);
	for (size_t i = from; i < NDRECS; i++)
		cr_assert_eq(drec_put(e, i, 0), 0, "record %zu", i);
	cr_assert_eq(stream_enc_end(e), 0);
	cr_assert_eq(stream_enc_bytes(e), m->n);
	stream_enc_free(e);
}

Test(stream, a_directory_stream_decodes_to_its_file_records_and_their_data)
{
	struct stream_begin b = dir_begin(), o;
	struct mem m = { 0 };
	struct stream_dec *d;
	struct stream_rec r;
	uint64_t bytes = 0;

	dir_sample(&m, &b, NULL);
	bytes = stream_begin_bytes(&b) + stream_end_bytes();
	for (size_t i = 0; i < NDRECS; i++)
		bytes += drecs[i].path ? stream_file_bytes(drecs[i].path) : drecs[i].zero ?
			 stream_zero_bytes() : stream_data_bytes(drecs[i].len);
	cr_assert_eq(m.n, bytes, "the exact size is known before sending");
	cr_assert_eq(le32_get(m.p + 16 + 8), STREAM_VERSION_TREE, "an older reader refuses it");
	cr_assert_eq(stream_dec_new(mem_in, &m, &d), 0);
	cr_assert_eq(stream_dec_begin(d, &o), 0);
	cr_assert_eq(o.kind, STREAM_KIND_DIR);
	cr_assert_str_eq(o.file, "web");
	cr_assert_eq(o.dmode, 0700, "the directory's own mode and owner are carried");
	cr_assert_eq(o.duid, 1234);
	cr_assert_eq(o.dgid, 2345);
	for (size_t i = 0; i < NDRECS; i++) {
		cr_assert_eq(stream_dec_next(d, &r), 1, "record %zu: %s", i, stream_dec_msg(d));
		if (drecs[i].path) {
			cr_assert_eq(r.type, STREAM_FILE);
			cr_assert_str_eq(r.file->path, drecs[i].path);
			cr_assert_eq(r.file->kind, drecs[i].kind);
			cr_assert_eq(r.file->flags, drecs[i].flags);
			cr_assert_eq(r.file->size, drecs[i].size);
			cr_assert_eq(r.file->mode, 0640);
			cr_assert_eq(r.file->mtime_ns, 1234567890123);
			cr_assert_eq(r.file->uid, 1234, "the owner is carried");
			cr_assert_eq(r.file->gid, 2345);
		} else {
			cr_assert_eq(r.type, drecs[i].zero ? STREAM_ZERO : STREAM_DATA);
			cr_assert_eq(r.off, drecs[i].off);
			cr_assert_eq(r.len, drecs[i].len);
		}
	}
	cr_assert_eq(stream_dec_next(d, &r), 0, "%s", stream_dec_msg(d));
	stream_dec_free(d);
	free(m.p);
}

Test(stream, every_flipped_byte_of_a_directory_stream_is_refused)
{
	struct stream_begin b = dir_begin();
	struct mem m = { 0 };
	int n;

	dir_sample(&m, &b, NULL);
	for (size_t i = 0; i < m.n; i++) {
		m.p[i] ^= 0x10;
		cr_assert_lt(decode_all(&m, &n), 0, "byte %zu flipped", i);
		m.p[i] ^= 0x10;
	}
	cr_assert_eq(decode_all(&m, &n), 0);
	free(m.p);
}

/* A directory stream of begin, the file records of paths (kinds: 'd'
 * directory, 'v' empty volume, 'r' remove),
 * written raw (the encoder would refuse it): decode_all's answer. */
static int raw_tree(const char *kinds, const char *const *paths, int *n)
{
	struct stream_begin b = dir_begin();
	struct mem m = { 0 };
	struct stream_enc *e;
	uint8_t rec[40 + STREAM_PATH_MAX];
	int rc;

	fill_data();
	cr_assert_eq(stream_enc_new(mem_out, &m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, &b), 0);
	for (size_t i = 0; kinds[i]; i++) {
		size_t l = strlen(paths[i]);

		memset(rec, 0, 40);
		le32_put(rec, kinds[i] == 'd' ? STREAM_FILE_DIR : kinds[i] == 'v' ? STREAM_FILE_VOL :
			 STREAM_FILE_REMOVE);
		le32_put(rec + 12, (uint32_t)l);
		memcpy(rec + 40, paths[i], l);
		cr_assert_eq(stream_enc_raw(e, STREAM_FILE, STREAM_FLAG_MUST, rec, 40 + l), 0);
	}
	cr_assert_eq(stream_enc_end(e), 0);
	stream_enc_free(e);
	rc = decode_all(&m, n);
	free(m.p);
	return rc;
}

Test(stream, the_decoder_checks_the_order_of_file_records)
{
	int n;

	cr_assert_eq(raw_tree("rrdvd", (const char *[]){ "z/y", "z", "a", "a/v", "b" }, &n), 0,
		     "the raw writer writes what the encoder does");
	cr_assert_eq(n, 5);
	cr_assert_eq(raw_tree("dd", (const char *[]){ "b", "a" }, &n), -EBADMSG, "entries out of order");
	cr_assert_eq(raw_tree("dd", (const char *[]){ "a", "a" }, &n), -EBADMSG, "an entry twice");
	cr_assert_eq(raw_tree("v", (const char *[]){ "x/v" }, &n), -EBADMSG,
		     "an entry before its directory");
	cr_assert_eq(raw_tree("vv", (const char *[]){ "x", "x/v" }, &n), -EBADMSG,
		     "an entry in a volume");
	cr_assert_eq(raw_tree("dvdv", (const char *[]){ "a", "a/v", "b", "a/w" }, &n), -EBADMSG,
		     "back into a directory left");
	cr_assert_eq(raw_tree("dr", (const char *[]){ "a", "z" }, &n), -EBADMSG,
		     "a remove after the entries");
	cr_assert_eq(raw_tree("rr", (const char *[]){ "z", "z/y" }, &n), -EBADMSG,
		     "removes not deepest first");
}

Test(stream, the_decoder_refuses_paths_that_leave_the_directory)
{
	static const char *const bad[] = { "..", "a/../b", "../a", ".", "a/.", "/a", "a/",
					   "a//b" };
	int n;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_not(stream_path_ok(bad[i]), "%s", bad[i]);
		cr_assert_eq(raw_tree("d", (const char *[]){ bad[i] }, &n), -EBADMSG, "%s", bad[i]);
	}
	cr_assert(stream_path_ok("a/..b/.c"));
	cr_assert_eq(raw_tree("d", (const char *[]){ "" }, &n), -EBADMSG, "an empty path");
}

Test(stream, the_encoder_refuses_file_records_out_of_order_or_data_outside_a_volume)
{
	struct stream_begin b = dir_begin(), v = incr_begin();
	struct stream_file f;
	struct mem m = { 0 };
	struct stream_enc *e;

	cr_assert_eq(stream_enc_new(mem_out, &m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, &b), 0);
	cr_assert_eq(stream_enc_zero(e, 0, 4096), -EINVAL, "data before any file record");
	f = sfile(STREAM_FILE_DIR, 0, 0, "a/../b");
	cr_assert_eq(stream_enc_file(e, &f), -EINVAL, "a path with ..");
	f = sfile(STREAM_FILE_DIR, 0, 0, "x/y");
	cr_assert_eq(stream_enc_file(e, &f), -EINVAL, "an entry before its directory");
	f = sfile(STREAM_FILE_DIR, STREAM_FILE_CONT, 0, "x");
	cr_assert_eq(stream_enc_file(e, &f), -EINVAL, "a restated file in a whole stream");
	f = sfile(STREAM_FILE_DIR, 0, 0, "b");
	cr_assert_eq(stream_enc_file(e, &f), 0);
	cr_assert_eq(stream_enc_zero(e, 0, 4096), -EINVAL, "data in a directory's record");
	f = sfile(STREAM_FILE_VOL, 0, 8192, "b/v");
	cr_assert_eq(stream_enc_file(e, &f), 0);
	cr_assert_eq(stream_enc_zero(e, 4096, 8192), -EINVAL, "past the file's size");
	cr_assert_eq(stream_enc_zero(e, 4096, 4096), 0);
	cr_assert_eq(stream_enc_zero(e, 0, 4096), -EINVAL, "back in the file");
	f = sfile(STREAM_FILE_REMOVE, 0, 0, "a");
	cr_assert_eq(stream_enc_file(e, &f), -EINVAL, "a remove after the entries");
	f = sfile(STREAM_FILE_DIR, 0, 0, "a");
	cr_assert_eq(stream_enc_file(e, &f), -EINVAL, "an entry out of order");
	stream_enc_free(e);
	m.n = 0;
	cr_assert_eq(stream_enc_new(mem_out, &m, &e), 0);
	cr_assert_eq(stream_enc_begin(e, &v), 0);
	f = sfile(STREAM_FILE_DIR, 0, 0, "a");
	cr_assert_eq(stream_enc_file(e, &f), -EINVAL, "a file record in a volume's stream");
	stream_enc_free(e);
	free(m.p);
}

Test(stream, a_resumed_directory_stream_restates_its_file_and_decodes_to_the_end)
{
	struct stream_begin b = dir_begin();
	struct mem m = { 0 }, x = { 0 };
	int n;

	dir_sample(&m, &b, NULL);
	for (int k = 1; k <= (int)NDRECS + 1; k++) {
		struct stream_pos p = prefix_pos(&m, k);
		size_t files = 0, idx[NDRECS], up = dir_restated((size_t)k - 1, idx);

		for (int i = 0; i < k - 1; i++)
			files += drecs[i].path != NULL;
		cr_assert_eq(p.file, files, "k=%d: the file records kept", k);
		x.n = 0;
		dir_sample(&x, &b, &p);
		cr_assert_eq(decode_from(&x, &p, &n), 0, "k=%d", k);
		cr_assert_eq(n, (int)NDRECS + 1 - k + (int)up,
			     "k=%d: the records after the kept part, and the restated file and its "
			     "directories", k);
		if (up > 1) {
			/* the outermost restated directory cut out (each restated
			 * record checks against the kept chain alone): refused,
			 * its mode would be missing */
			struct stream_begin rb = b;
			struct mem y = { 0 };
			uint64_t at, len;

			rb.resume_rec = p.rec;
			rb.resume_off = p.off;
			rb.resume_file = p.file;
			at = stream_begin_bytes(&rb);
			len = stream_file_bytes(drecs[idx[0]].path);
			mem_out(&y, x.p, at);
			mem_out(&y, x.p + at + len, x.n - at - len);
			cr_assert_eq(decode_from(&y, &p, &n), -EBADMSG,
				     "k=%d: a directory above the file not restated", k);
			free(y.p);
		}
		p.chain ^= 1;
		cr_assert_eq(decode_from(&x, &p, &n), -EBADMSG, "k=%d: another chain value", k);
		p.chain ^= 1;
		if (files) {
			p.file--;
			cr_assert_eq(decode_from(&x, &p, &n), -ESTALE, "k=%d: another file", k);
		}
	}
	free(m.p);
	free(x.p);
}
