/*
 * tbuf: see include/vsnapfs/tbuf.h.  One pthread key for every use; its
 * value, a thread's array of buffers, is freed by the key's destructor when
 * the thread ends.
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "vsnapfs/tbuf.h"

#define TBUF_HUGE_MIN (1u << 20)        /* see tbuf.h */
#define TBUF_HUGE     (2u << 20)        /* x86-64's and arm64's (4 KiB pages) PMD size */

struct tbufs {
	struct {
		void *p;
		size_t len;
	} b[TBUF_USES];
};

static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;
static int tbuf_key_rc;

static void tbufs_free(void *x)
{
	struct tbufs *t = x;

	for (int i = 0; i < TBUF_USES; i++)
		free(t->b[i].p);
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
		size_t align = size >= TBUF_HUGE_MIN ? TBUF_HUGE : 4096;

		size = (size + align - 1) & ~(align - 1);
		if (posix_memalign(&p, align, size) != 0)
			return NULL;
		if (align == TBUF_HUGE)
			(void)madvise(p, size, MADV_HUGEPAGE);  /* a wish: THP may be off */
		free(t->b[use].p);
		t->b[use].p = p;
		t->b[use].len = size;
	}
	return t->b[use].p;
}
