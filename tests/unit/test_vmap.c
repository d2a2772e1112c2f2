/* vmap: the radix tree against a plain array model. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "vol/vmap.h"

static struct vmap_ent ent(uint64_t v)
{
	return (struct vmap_ent){ .chunk = v + 1, .slot = (uint32_t)v };
}

Test(vmap, get_of_missing_key_is_null)
{
	struct vmap *m = vmap_new();

	cr_assert_null(vmap_get(m, 0));
	cr_assert_null(vmap_get(m, (1ULL << VMAP_KEY_BITS) - 1));
	cr_assert_eq(vmap_count(m), 0);
	vmap_free(m);
}

Test(vmap, put_get_replace_del_roundtrip_at_extreme_keys)
{
	struct vmap *m = vmap_new();
	uint64_t keys[] = { 0, 1, 63, 64, 65, 511, 4096, (1ULL << 33) + 5, (1ULL << VMAP_KEY_BITS) - 1 };
	size_t n = sizeof(keys) / sizeof(keys[0]);

	for (size_t i = 0; i < n; i++) {
		struct vmap_ent e = ent(i);
		cr_assert_eq(vmap_put(m, keys[i], &e), 0);
	}
	cr_assert_eq(vmap_count(m), n);
	for (size_t i = 0; i < n; i++) {
		struct vmap_ent *e = vmap_get(m, keys[i]);
		cr_assert_not_null(e);
		cr_assert_eq(e->chunk, i + 1);
	}
	struct vmap_ent r = ent(100);
	cr_assert_eq(vmap_put(m, keys[3], &r), 0);
	cr_assert_eq(vmap_count(m), n, "replace must not add an entry");
	cr_assert_eq(vmap_get(m, keys[3])->chunk, 101);
	for (size_t i = 0; i < n; i++)
		vmap_del(m, keys[i]);
	cr_assert_eq(vmap_count(m), 0);
	vmap_free(m);
}

Test(vmap, empty_map_frees_every_node_after_deletes)
{
	struct vmap *m = vmap_new();
	uint64_t base = vmap_mem_bytes(m);

	for (uint64_t k = 0; k < 100000; k += 37) {
		struct vmap_ent e = ent(k);
		cr_assert_eq(vmap_put(m, k * 1000, &e), 0);
	}
	cr_assert_gt(vmap_mem_bytes(m), base);
	for (uint64_t k = 0; k < 100000; k += 37)
		vmap_del(m, k * 1000);
	cr_assert_eq(vmap_mem_bytes(m), base);
	vmap_free(m);
}

Test(vmap, randomly_scattered_entries_cost_under_160_bytes_each)
{
	/* the density of 4 GiB of random 4 KiB writes over a 1 TiB volume:
	 * one written block in 256, here 65536 blocks over 2^24 */
	struct vmap *m = vmap_new();

	srand(7);
	for (uint64_t i = 0; i < 65536; i++) {
		struct vmap_ent e = ent(i);
		uint64_t key = ((uint64_t)rand() << 8 ^ (uint64_t)rand()) & ((1ULL << 24) - 1);
		cr_assert_eq(vmap_put(m, key, &e), 0);
	}
	double per = (double)vmap_mem_bytes(m) / (double)vmap_count(m);
	cr_log_info("%llu entries: %.1f bytes each", (unsigned long long)vmap_count(m), per);
	cr_assert_lt(per, 160.0);
	vmap_free(m);
}

Test(vmap, next_and_get_match_a_model_under_random_operations)
{
	enum { SPACE = 20000, OPS = 200000 };
	unsigned seed = 12345;
	char *present = calloc(SPACE, 1);
	uint64_t *val = calloc(SPACE, sizeof(*val));
	struct vmap *m = vmap_new();

	cr_log_info("seed %u", seed);
	srand(seed);
	for (int op = 0; op < OPS; op++) {
		/* keys in clusters far apart, to cross leaves and inner nodes */
		uint64_t k = (uint64_t)(rand() % SPACE);
		uint64_t key = (k / 100) * (1ULL << 20) + k % 100;
		int what = rand() % 3;

		if (what < 2) {
			struct vmap_ent e = ent(op);
			cr_assert_eq(vmap_put(m, key, &e), 0);
			present[k] = 1;
			val[k] = op + 1;
		} else {
			vmap_del(m, key);
			present[k] = 0;
		}
		if (op % 997 == 0) {
			uint64_t q = (uint64_t)(rand() % SPACE), found, want = SPACE;
			uint64_t qkey = (q / 100) * (1ULL << 20) + q % 100;
			for (uint64_t j = q; j < SPACE; j++)
				if (present[j]) { want = j; break; }
			struct vmap_ent *e = vmap_next(m, qkey, &found);
			if (want == SPACE) {
				cr_assert_null(e);
			} else {
				cr_assert_not_null(e);
				cr_assert_eq(found, (want / 100) * (1ULL << 20) + want % 100);
				cr_assert_eq(e->chunk, val[want]);
			}
		}
	}
	uint64_t n = 0;
	for (uint64_t k = 0; k < SPACE; k++) {
		uint64_t key = (k / 100) * (1ULL << 20) + k % 100;
		struct vmap_ent *e = vmap_get(m, key);
		cr_assert_eq(e != NULL, present[k] != 0, "key %llu", (unsigned long long)key);
		if (e)
			cr_assert_eq(e->chunk, val[k]);
		n += present[k];
	}
	cr_assert_eq(vmap_count(m), n);
	vmap_free(m);
	free(present);
	free(val);
}

/* vmap_next_below is vmap_next cut at hi: the entry it finds, if below hi,
 * else nothing (and the key it was given stays), over sparse and dense
 * keys, bounds inside and across subtrees. */
Test(vmap, next_below_is_next_cut_at_its_bound)
{
	struct vmap *m = vmap_new();
	unsigned seed = 20261203;
	uint64_t keys[64];

	cr_assert_not_null(m);
	for (int i = 0; i < 64; i++) {
		/* some close together, some in far subtrees */
		keys[i] = i % 2 ? (uint64_t)rand_r(&seed) % 4096 :
				  ((uint64_t)rand_r(&seed) << 17 | (uint64_t)rand_r(&seed)) %
					  (1ULL << 40);
		cr_assert_eq(vmap_put(m, keys[i], &(struct vmap_ent){ .chunk = i + 1 }), 0);
	}
	for (int t = 0; t < 20000; t++) {
		uint64_t key = (uint64_t)rand_r(&seed) % 5000, hi, f1 = 0, f2 = 777;
		struct vmap_ent *e1, *e2;

		if (t % 2)
			key = ((uint64_t)rand_r(&seed) << 17 | (uint64_t)rand_r(&seed)) % (1ULL << 40);
		hi = key + (uint64_t)rand_r(&seed) % (t % 3 ? 64 : 1ULL << 30);
		e1 = vmap_next(m, key, &f1);
		e2 = vmap_next_below(m, key, hi, &f2);
		if (e1 && f1 < hi) {
			cr_assert_eq(e2, e1, "key %llu hi %llu", (unsigned long long)key,
				     (unsigned long long)hi);
			cr_assert_eq(f2, f1);
		} else {
			cr_assert_null(e2, "key %llu hi %llu: found %llu", (unsigned long long)key,
				       (unsigned long long)hi, (unsigned long long)f2);
			cr_assert_eq(f2, 777, "the key is left as it was");
		}
	}
	cr_assert_null(vmap_next_below(m, 5, 5, &(uint64_t){ 0 }), "an empty range");
	vmap_free(m);
}
