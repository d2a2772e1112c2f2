/*
 * Unit tests of the control channel's messages (src/util/ctlmsg.c): what
 * is encoded decodes to the same message, keys are found whole, and every
 * malformed datagram (short, bad magic, a length that disagrees, a NUL in
 * the body) is refused with -EPROTO.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vsnapfs/ctlmsg.h"

static struct ctl_msg a, b;
static uint8_t wire[CTL_HDR_BYTES + CTL_BODY_MAX + 1];

Test(ctlmsg, encoded_message_decodes_to_the_same)
{
	size_t n;
	uint64_t v;
	char s[64];

	ctl_msg_init(&a, CTL_GC);
	a.status = -ENOSPC;
	cr_assert_eq(ctl_kv_add(&a, "moved_blocks", "%d", 42), 0);
	cr_assert_eq(ctl_kv_add(&a, "msg", "%s", "a b=c"), 0);
	n = ctl_msg_encode(&a, wire);
	cr_assert_eq(n, CTL_HDR_BYTES + a.len);
	cr_assert_eq(ctl_msg_decode(wire, n, &b), 0);
	cr_assert_eq(b.version, CTL_VERSION);
	cr_assert_eq(b.verb, CTL_GC);
	cr_assert_eq(b.status, -ENOSPC);
	cr_assert_eq(ctl_kv_u64(&b, "moved_blocks", &v), 0);
	cr_assert_eq(v, 42);
	cr_assert_eq(ctl_kv_get(&b, "msg", s, sizeof(s)), 0);
	cr_assert_str_eq(s, "a b=c");
}

Test(ctlmsg, keys_match_whole_and_missing_ones_are_enoent)
{
	char s[16];
	uint64_t v;

	ctl_msg_init(&a, CTL_HELLO);
	ctl_kv_add(&a, "pidx", "1");
	ctl_kv_add(&a, "pid", "2");
	ctl_kv_add(&a, "neg", "-3");
	cr_assert_eq(ctl_kv_u64(&a, "pid", &v), 0);
	cr_assert_eq(v, 2);
	cr_assert_eq(ctl_kv_get(&a, "pi", s, sizeof(s)), -ENOENT);
	cr_assert_eq(ctl_kv_u64(&a, "neg", &v), -EINVAL);
	cr_assert_eq(ctl_kv_get(&a, "pidx", s, 1), -E2BIG);
}

Test(ctlmsg, a_value_with_a_newline_or_too_long_is_refused)
{
	char *big = malloc(CTL_BODY_MAX);

	ctl_msg_init(&a, CTL_SYNC);
	cr_assert_eq(ctl_kv_add(&a, "k", "a\nb=c"), -EINVAL);
	memset(big, 'x', CTL_BODY_MAX - 1);
	big[CTL_BODY_MAX - 1] = 0;
	cr_assert_eq(ctl_kv_add(&a, "k", "%s", big), -E2BIG);
	cr_assert_eq(a.len, 0);
	free(big);
}

Test(ctlmsg, malformed_datagrams_are_eproto)
{
	size_t n;

	ctl_msg_init(&a, CTL_SYNC);
	ctl_kv_add(&a, "k", "v");
	n = ctl_msg_encode(&a, wire);
	cr_assert_eq(ctl_msg_decode(wire, CTL_HDR_BYTES - 1, &b), -EPROTO);
	cr_assert_eq(ctl_msg_decode(wire, n - 1, &b), -EPROTO);   /* length disagrees */
	wire[CTL_HDR_BYTES] = 0;
	cr_assert_eq(ctl_msg_decode(wire, n, &b), -EPROTO);       /* NUL in the body */
	wire[CTL_HDR_BYTES] = 'k';
	cr_assert_eq(ctl_msg_decode(wire, n, &b), 0);
	wire[0] ^= 1;
	cr_assert_eq(ctl_msg_decode(wire, n, &b), -EPROTO);       /* magic */
}

Test(ctlmsg, kv_next_walks_every_line_in_order_repeated_keys_included)
{
	char k[16], v[64];
	size_t pos = 0;

	ctl_msg_init(&a, CTL_IOSTAT);
	cr_assert_eq(ctl_kv_add(&a, "v", "%d", 5), 0);
	cr_assert_eq(ctl_kv_add(&a, "path", "%s", "/a=b.img"), 0);
	cr_assert_eq(ctl_kv_add(&a, "v", "%d", 7), 0);
	cr_assert_eq(ctl_kv_add(&a, "empty", "%s", ""), 0);
	cr_assert_eq(ctl_kv_next(&a, &pos, k, sizeof(k), v, sizeof(v)), 1);
	cr_assert_str_eq(k, "v");
	cr_assert_str_eq(v, "5");
	cr_assert_eq(ctl_kv_next(&a, &pos, k, sizeof(k), v, sizeof(v)), 1);
	cr_assert_str_eq(k, "path");
	cr_assert_str_eq(v, "/a=b.img", "the value is everything after the first '='");
	cr_assert_eq(ctl_kv_next(&a, &pos, k, sizeof(k), v, sizeof(v)), 1);
	cr_assert_str_eq(v, "7");
	cr_assert_eq(ctl_kv_next(&a, &pos, k, sizeof(k), v, sizeof(v)), 1);
	cr_assert_str_eq(k, "empty");
	cr_assert_str_eq(v, "");
	cr_assert_eq(ctl_kv_next(&a, &pos, k, sizeof(k), v, sizeof(v)), 0);
	cr_assert_eq(ctl_kv_next(&a, &pos, k, sizeof(k), v, sizeof(v)), 0);
}
