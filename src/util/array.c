/*
 * array: see include/vsnapfs/array.h.  The array pointer is read and
 * written through memcpy, which is what "a pointer to any object pointer"
 * may be in C without breaking the aliasing rules.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vsnapfs/array.h"

int array_reserve(void *arrayp, size_t *cap, size_t n, size_t elem_bytes, size_t first_cap)
{
	size_t ncap;
	void *v;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : first_cap;
	if (ncap <= n || ncap > SIZE_MAX / elem_bytes)
		return -ENOMEM;
	memcpy(&v, arrayp, sizeof(v));
	v = realloc(v, ncap * elem_bytes);
	if (!v)
		return -ENOMEM;
	memcpy(arrayp, &v, sizeof(v));
	*cap = ncap;
	return 0;
}
