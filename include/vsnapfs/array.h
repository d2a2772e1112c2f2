/*
 * array: the growing arrays of vsnapfs (lists of inodes, held files, dirty
 * blocks, queued ids), grown in one place.
 *
 * Errors:     0 or -ENOMEM (the array is then unchanged).
 * Threads:    as the array's owner says.
 */
#ifndef VSNAPFS_ARRAY_H
#define VSNAPFS_ARRAY_H

#include <stddef.h>

/*
 * Make room for element n of the array *arrayp (a pointer to the array's
 * pointer: &list->v) that has room for *cap elements of elem_bytes: no-op
 * while n < *cap, else grow to twice *cap, or to first_cap the first time.
 */
int array_reserve(void *arrayp, size_t *cap, size_t n, size_t elem_bytes, size_t first_cap);

/* The same, spelled for the array: ARRAY_RESERVE(list->v, list->cap, list->n, 64).
 * The common case, room left, costs a compare and no call: it runs once per
 * written block (vol.c's dirty list and flush batches). */
#define ARRAY_RESERVE(v, cap, n, first) \
	((n) < (cap) ? 0 : array_reserve(&(v), &(cap), (n), sizeof(*(v)), (first)))

#endif
