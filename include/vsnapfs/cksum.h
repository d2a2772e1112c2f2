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

#endif
