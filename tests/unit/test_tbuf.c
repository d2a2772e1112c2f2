/*
 * Unit tests of the per-thread scratch buffers (src/util/tbuf.c): aligned
 * as O_DIRECT and the huge-page rule need, kept while a thread lives,
 * grown on demand, and a thread's own.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <sys/mman.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vsnapfs/tbuf.h"

#define MiB (1u << 20)

Test(tbuf, a_small_buffer_is_page_aligned_kept_and_grown_on_demand)
{
	uint8_t *a = tbuf_get(TBUF_READ, 4096), *b, *c;

	cr_assert(a);
	cr_assert_eq((uintptr_t)a % 4096, 0);
	memset(a, 0xa5, 4096);
	b = tbuf_get(TBUF_READ, 100);           /* smaller: the same buffer */
	cr_assert_eq(b, a);
	cr_assert_eq(b[4095], 0xa5, "the contents are kept while it does not grow");
	c = tbuf_get(TBUF_READ, 64 * 1024);
	cr_assert(c);
	cr_assert_eq((uintptr_t)c % 4096, 0);
	memset(c, 0, 64 * 1024);
}

/* Every page of [p, p + len) is mapped: mincore says ENOMEM otherwise. */
static void assert_mapped(void *p, size_t len)
{
	unsigned char vec[4 * MiB / 4096];

	cr_assert_leq(len / 4096, sizeof(vec));
	cr_assert_eq(mincore(p, len, vec), 0, "a page of the buffer is not mapped: %s",
		     strerror(errno));
}

Test(tbuf, a_buffer_of_a_mib_or_more_is_2mib_aligned_and_whole)
{
	uint8_t *a = tbuf_get(TBUF_DIRECT, MiB), *b;

	cr_assert(a);
	cr_assert_eq((uintptr_t)a % (2 * MiB), 0, "%p", (void *)a);
	memset(a, 1, 2 * MiB);                  /* rounded up to a whole huge page */
	assert_mapped(a, 2 * MiB);
	b = tbuf_get(TBUF_DIRECT, 2 * MiB);     /* fits: not reallocated */
	cr_assert_eq(b, a);
	b = tbuf_get(TBUF_DIRECT, 3 * MiB);
	cr_assert(b);
	cr_assert_eq((uintptr_t)b % (2 * MiB), 0);
	assert_mapped(b, 4 * MiB);
	memset(b, 2, 4 * MiB);
}

/* The VmFlags line of the mapping of /proc/self/smaps that holds p. */
static bool vmflags_of(const void *p, char *flags, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false, found = false;

	cr_assert(f);
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;

		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
			in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
		else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			strncpy(flags, line + 8, len - 1);
			flags[len - 1] = '\0';
			found = true;
		}
	}
	fclose(f);
	return found;
}

Test(tbuf, a_buffer_of_a_mib_or_more_is_asked_to_be_a_huge_page)
{
	uint8_t *a = tbuf_get(TBUF_DIRECT, MiB);
	char flags[512];

	if (access("/sys/kernel/mm/transparent_hugepage", F_OK) != 0)
		return;                 /* a kernel without THP: madvise says no */
	cr_assert(a);
	cr_assert(vmflags_of(a, flags, sizeof(flags)));
	cr_assert(strstr(flags, " hg"), "VmFlags:%s", flags);
}

Test(tbuf, a_buffer_grown_from_small_to_huge_and_on_is_freed_the_way_it_was_made)
{
	uint8_t *a = tbuf_get(TBUF_READ, 8192), *b, *c;

	cr_assert(a);
	memset(a, 3, 8192);
	b = tbuf_get(TBUF_READ, MiB - 100);     /* a MiB once rounded to pages: huge too */
	cr_assert(b);
	cr_assert_eq((uintptr_t)b % (2 * MiB), 0);
	memset(b, 3, 2 * MiB);
	c = tbuf_get(TBUF_READ, 3 * MiB);       /* huger: the huge one unmapped */
	cr_assert(c);
	memset(c, 4, 4 * MiB);
}

static void *other_thread(void *arg)
{
	(void)arg;
	return tbuf_get(TBUF_DIRECT, MiB);
}

Test(tbuf, each_thread_has_its_own_buffer)
{
	uint8_t *mine = tbuf_get(TBUF_DIRECT, MiB);
	pthread_t t;
	void *theirs;

	cr_assert_eq(pthread_create(&t, NULL, other_thread, NULL), 0);
	cr_assert_eq(pthread_join(t, &theirs), 0);
	cr_assert(mine);
	cr_assert(theirs);
	cr_assert_neq(theirs, (void *)mine);
}
