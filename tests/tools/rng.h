/*
 * splitmix64, the generator every test tool uses: a seed gives the same
 * sequence on every machine, so a failing run can be replayed.  mix() is
 * also a good hash of one 64-bit value.
 */
#ifndef VSNAPFS_TOOLS_RNG_H
#define VSNAPFS_TOOLS_RNG_H

#include <stdint.h>

static inline uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t rng_next(uint64_t *s)
{
	return mix(*s += 0x9e3779b97f4a7c15ull);
}

#endif
