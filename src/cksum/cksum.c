/*
 * checksums: a thin wrapper so that the rest of vsnapfs never includes
 * xxhash.h.  XXH3_64bits is chosen for speed (tens of GB/s on one core) and
 * because Debian 12 ships it (libxxhash 0.8.1); the value is stored in every
 * slot table entry and chunk header (and, until index format 3, in the
 * index for every block).
 */
#include <xxhash.h>

#include "vsnapfs/cksum.h"

uint64_t cksum_buf(const void *buf, size_t len)
{
	return XXH3_64bits(buf, len);
}

uint64_t cksum_seeded(const void *buf, size_t len, uint64_t seed)
{
	return XXH3_64bits_withSeed(buf, len, seed);
}

/* Encoded byte by byte: the value is on disk, so it must not depend on the
 * host's byte order. */
uint64_t cksum_slot_seed(uint64_t chunk_id, uint32_t slot, uint64_t lblock)
{
	unsigned char b[20];

	for (unsigned i = 0; i < 8; i++)
		b[i] = (unsigned char)(chunk_id >> (8 * i));
	for (unsigned i = 0; i < 4; i++)
		b[8 + i] = (unsigned char)(slot >> (8 * i));
	for (unsigned i = 0; i < 8; i++)
		b[12 + i] = (unsigned char)(lblock >> (8 * i));
	return XXH3_64bits(b, sizeof(b));
}

struct cksum_stream *cksum_stream_new(void)
{
	XXH3_state_t *st = XXH3_createState();

	if (st && XXH3_64bits_reset(st) != XXH_OK) {
		XXH3_freeState(st);
		st = NULL;
	}
	return (struct cksum_stream *)st;
}

void cksum_stream_add(struct cksum_stream *c, const void *buf, size_t len)
{
	XXH3_64bits_update((XXH3_state_t *)c, buf, len);
}

uint64_t cksum_stream_value(const struct cksum_stream *c)
{
	return XXH3_64bits_digest((const XXH3_state_t *)c);
}

void cksum_stream_free(struct cksum_stream *c)
{
	if (c)
		XXH3_freeState((XXH3_state_t *)c);
}
