/*
 * tbuf: see include/vsnapfs/tbuf.h.  One pthread key for every use; its
 * value, a thread's array of buffers, is freed by the key's destructor when
 * the thread ends.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vsnapfs/tbuf.h"

#define TBUF_HUGE_MIN (1u << 20)        /* see tbuf.h */
#define TBUF_HUGE     (2u << 20)        /* x86-64's and arm64's (4 KiB pages) PMD size */

struct tbufs {
	struct {
		void *p;
		size_t len;
		bool huge;              /* p is its own mapping (huge_alloc) */
	} b[TBUF_USES];
};

static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;
static int tbuf_key_rc;

/*
 * A buffer of at least TBUF_HUGE_MIN bytes is its own mapping, TBUF_HUGE-
 * aligned and a whole number of TBUF_HUGE: mapped a huge page longer and
 * trimmed.  Not posix_memalign: glibc would serve it from an arena once its
 * mmap threshold has risen past it (it does when a mapped block is freed),
 * and MADV_HUGEPAGE would then outlive the buffer on arena memory.
 */
static void *huge_alloc(size_t len)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t page = pg > 0 && pg < TBUF_HUGE ? (size_t)pg : 4096, extra = TBUF_HUGE - page, head;
	uint8_t *m = mmap(NULL, len + extra, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (m == MAP_FAILED)
		return NULL;
	head = (TBUF_HUGE - (uintptr_t)m % TBUF_HUGE) % TBUF_HUGE;
	/* a trim that fails (the map count at its limit) only leaves
	 * address space mapped that nothing touches */
	if (head)
		munmap(m, head);
	if (extra - head)
		munmap(m + head + len, extra - head);
	(void)madvise(m + head, len, MADV_HUGEPAGE);    /* a wish: THP may be off */
	return m + head;
}

static void buf_free(void *p, size_t len, bool huge)
{
	if (huge)
		munmap(p, len);
	else
		free(p);
}

static size_t huge_len(size_t size)
{
	return (size + TBUF_HUGE - 1) & ~((size_t)TBUF_HUGE - 1);
}

void *tbuf_huge_alloc(size_t size)
{
	return size && size <= SIZE_MAX / 2 ? huge_alloc(huge_len(size)) : NULL;
}

void tbuf_huge_free(void *p, size_t size)
{
	if (p)
		munmap(p, huge_len(size));
}

static void tbufs_free(void *x)
{
	struct tbufs *t = x;

	for (int i = 0; i < TBUF_USES; i++)
		buf_free(t->b[i].p, t->b[i].len, t->b[i].huge);
	free(t);
}

static void tbuf_init(void)
{
	tbuf_key_rc = pthread_key_create(&tbuf_key, tbufs_free);
}

void *tbuf_get(enum tbuf_use use, size_t size)
{
	struct tbufs *t;
	void *p;

	if (pthread_once(&tbuf_once, tbuf_init) || tbuf_key_rc)
		return NULL;
	t = pthread_getspecific(tbuf_key);
	if (!t) {
		if (!(t = calloc(1, sizeof(*t))))
			return NULL;
		if (pthread_setspecific(tbuf_key, t)) {
			free(t);
			return NULL;
		}
	}
	if (t->b[use].len < size) {
		bool huge;

		if (size > SIZE_MAX / 2)
			return NULL;
		size = (size + 4095) & ~(size_t)4095;
		huge = size >= TBUF_HUGE_MIN;   /* so every buffer this long is huge */
		if (huge) {
			size = huge_len(size);
			p = huge_alloc(size);
		} else if (posix_memalign(&p, 4096, size) != 0) {
			p = NULL;
		}
		if (!p)
			return NULL;
		buf_free(t->b[use].p, t->b[use].len, t->b[use].huge);
		t->b[use].p = p;
		t->b[use].len = size;
		t->b[use].huge = huge;
	}
	return t->b[use].p;
}
