/*
 * vmap: the in-memory block map of one open volume, a radix tree keyed by
 * logical block number (up to VMAP_KEY_BITS bits).
 *
 * Four inner levels of 512 pointers, then leaves of 64 entries stored
 * packed: a leaf keeps a 64-bit presence mask and only the entries that
 * exist, so a volume written at scattered offsets costs about one entry
 * (16 bytes) per written block plus a small leaf header, not a page per
 * block.  vmap_next() skips empty subtrees, so SEEK_DATA/SEEK_HOLE and range
 * walks cost the number of entries visited, not the size of the range.
 *
 * Threads:   none of its own; the owning vol's lock protects it.
 * Pointers:  an entry pointer is valid until the next put or del.
 */
#ifndef VSNAPFS_VMAP_H
#define VSNAPFS_VMAP_H

#include <stdint.h>

#define VMAP_KEY_BITS 42

enum {
	VE_DIRTY = 1u << 0,     /* changed since the last vol_collect() */
	VE_ANC   = 1u << 1,     /* own zero entry: its row must stay as a tombstone */
	VE_FLAG_BITS = 3,
};

struct vmap_ent {
	uint64_t chunk;         /* 0: reads as zeros (tombstone, or pending delete) */
	uint32_t slot;
	uint32_t gf;            /* generation << VE_FLAG_BITS | flags; the generation
				 * is the low bits of the vol_collect() that took it
				 * (0 until one did) */
};

#define VE_GEN_MASK ((1u << (32 - VE_FLAG_BITS)) - 1)

static inline uint32_t ve_gen(const struct vmap_ent *e) { return e->gf >> VE_FLAG_BITS; }
static inline void ve_set_gen(struct vmap_ent *e, uint64_t seq)
{
	e->gf = (uint32_t)(seq & VE_GEN_MASK) << VE_FLAG_BITS | (e->gf & ((1u << VE_FLAG_BITS) - 1));
}
static inline uint32_t ve_flags(const struct vmap_ent *e) { return e->gf & ((1u << VE_FLAG_BITS) - 1); }

struct vmap;

struct vmap *vmap_new(void);
void vmap_free(struct vmap *m);

uint64_t vmap_count(const struct vmap *m);
/* Bytes of memory the map uses (for figures and tests). */
uint64_t vmap_mem_bytes(const struct vmap *m);

struct vmap_ent *vmap_get(struct vmap *m, uint64_t key);
/* Insert or replace.  0 or -ENOMEM. */
int vmap_put(struct vmap *m, uint64_t key, const struct vmap_ent *e);
void vmap_del(struct vmap *m, uint64_t key);
/* The entry with the smallest key >= key, or NULL; *found gets its key. */
struct vmap_ent *vmap_next(struct vmap *m, uint64_t key, uint64_t *found);
/* The same, only an entry below hi (NULL, *found untouched, if none): what
 * a range's lookups use, so that an empty map costs nothing. */
struct vmap_ent *vmap_next_below(struct vmap *m, uint64_t key, uint64_t hi, uint64_t *found);

#endif
