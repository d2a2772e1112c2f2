/*
 * checksums: a thin wrapper so that the rest of vsnapfs never includes
 * xxhash.h.  XXH3_64bits is chosen for speed (tens of GB/s on one core) and
 * because Debian 12 ships it (libxxhash 0.8.1); the value is stored in the
 * index for every block and in every chunk header.
 */
#include <xxhash.h>

#include "vsnapfs/cksum.h"

uint64_t cksum_buf(const void *buf, size_t len)
{
	return XXH3_64bits(buf, len);
}
