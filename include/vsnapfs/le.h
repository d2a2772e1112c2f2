/*
 * le: little-endian integers in on-disk bytes (chunk headers, slot tables,
 * log batches).  Byte by byte, so neither alignment nor the host's byte
 * order matters.
 *
 * Threads: pure functions, any thread.
 */
#ifndef VSNAPFS_LE_H
#define VSNAPFS_LE_H

#include <stdint.h>

static inline void le32_put(uint8_t *p, uint32_t v)
{
	for (unsigned i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void le64_put(uint8_t *p, uint64_t v)
{
	for (unsigned i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t le32_get(const uint8_t *p)
{
	uint32_t v = 0;

	for (unsigned i = 0; i < 4; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

static inline uint64_t le64_get(const uint8_t *p)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

#endif
