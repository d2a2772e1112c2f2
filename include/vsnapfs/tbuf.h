/*
 * tbuf: 4 KiB-aligned scratch buffers, one per thread and use, kept while
 * the thread lives and freed when it ends (libfuse ends idle workers).
 *
 * For buffers a thread needs for every request and gives back before its
 * next one: a fresh 1 MiB allocation each time is an mmap that the kernel
 * faults in, zeroes and unmaps (docs/performance.md, "Read buffers").
 * Aligned to 4 KiB, so that O_DIRECT may read into or write from them.
 * One of 1 MiB or more (rounded to 4 KiB) is its own mapping,
 * 2 MiB-aligned, rounded up to 2 MiB and asked to be a transparent huge
 * page (MADV_HUGEPAGE; the host may say no, and where pages are not 4 KiB
 * a huge page is not 2 MiB): the kernel then pins it as one folio, not
 * 256 pages, for an O_DIRECT write or a FUSE reply, and a 1 MiB O_DIRECT
 * write from it is one segment, not more than a device takes in one
 * request (virtio-blk's 254 here): docs/performance.md, "Huge-page
 * buffers".
 *
 * Errors:     NULL when out of memory or size is over SIZE_MAX / 2 (the
 *             thread's old buffer stays).
 * Threads:    any; a buffer belongs to the thread that got it.
 */
#ifndef VSNAPFS_TBUF_H
#define VSNAPFS_TBUF_H

#include <stddef.h>

enum tbuf_use {
	TBUF_READ,              /* src/fs: the data of a read reply */
	TBUF_DIRECT,            /* src/chunk: a write's copy for O_DIRECT */
	TBUF_USES
};

/* This thread's buffer for use, at least size bytes (its old contents are
 * not kept when it grows). */
void *tbuf_get(enum tbuf_use use, size_t size);

/* A buffer of its own (not per thread): size rounded up to a whole 2 MiB,
 * 2 MiB-aligned and asked to be a huge page, as above; NULL when out of
 * memory.  Free it with tbuf_huge_free() and the same size. */
void *tbuf_huge_alloc(size_t size);
void tbuf_huge_free(void *p, size_t size);

#endif
