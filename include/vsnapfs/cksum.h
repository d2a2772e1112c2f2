/*
 * checksums: xxHash (XXH3, 64 bits) over block payloads and on-disk headers.
 * The only place that calls XXH*.
 *
 * Threads: pure functions, any thread.
 */
#ifndef VSNAPFS_CKSUM_H
#define VSNAPFS_CKSUM_H

#include <stddef.h>
#include <stdint.h>

/* XXH3_64bits of len bytes at buf. */
uint64_t cksum_buf(const void *buf, size_t len);

/* XXH3_64bits_withSeed of len bytes at buf. */
uint64_t cksum_seeded(const void *buf, size_t len, uint64_t seed);

/*
 * The seed of a slot of a chunk file of header version 2: XXH3_64 of the 20
 * bytes chunk_id (u64), slot (u32), lblock (u64), little-endian
 * (docs/on-disk-format.md, "Chunk file, header version 2").
 */
uint64_t cksum_slot_seed(uint64_t chunk_id, uint32_t slot, uint64_t lblock);

/* XXH3_64bits over a sequence of buffers (the send stream's checksum of
 * everything before its end record).  new: NULL out of memory. */
struct cksum_stream;
struct cksum_stream *cksum_stream_new(void);
void cksum_stream_add(struct cksum_stream *c, const void *buf, size_t len);
uint64_t cksum_stream_value(const struct cksum_stream *c);
void cksum_stream_free(struct cksum_stream *c);   /* NULL is fine */

#endif
