/*
 * ctlmsg: the control channel between vsnapctl and a running daemon
 * (docs/design.md, "Send and receive", "The control channel").
 *
 * A Unix socket STORE/ctl.sock (STOREDIR_CTL_SOCK), SOCK_SEQPACKET: one
 * request, one reply, each one datagram.  A message is a 16-byte header
 * and a payload of "key=value\n" lines (no NUL, no newline in a value):
 *
 *    0  u32  magic     CTL_MAGIC ("VSCT")
 *    4  u16  version   CTL_VERSION; a server refuses a higher one (EPROTO)
 *    6  u16  verb      enum ctl_verb (a reply repeats it)
 *    8  i32  status    reply: 0 or a negative errno; request: 0
 *   12  u32  len       payload bytes, at most CTL_BODY_MAX
 *
 * A reply with a non-zero status carries "msg=" with one line saying why.
 * Keys a reader does not know are ignored, so verbs and keys are added
 * without a new version (issue 15: status, iostat, metrics).
 *
 * The socket path is limited to 108 bytes: both sides reach it through
 * /proc/self/fd/N/ctl.sock, N an open fd of the store directory.
 *
 * Errors:     0 or a negative errno; -EPROTO for a malformed message.
 * Ownership:  messages are the caller's.
 * Threads:    pure functions but ctl_connect/ctl_call (one fd per thread).
 */
#ifndef VSNAPFS_CTLMSG_H
#define VSNAPFS_CTLMSG_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define CTL_MAGIC      0x54435356u      /* "VSCT" little-endian */
#define CTL_VERSION    1
#define CTL_HDR_BYTES  16
#define CTL_BODY_MAX   (64u << 10)
#define CTL_LAT_BUCKETS 24              /* CTL_IOSTAT's latency histograms: bucket b
					 * counts [2^(b-1), 2^b) us, bucket 0 under
					 * 1 us, the last everything above */

enum ctl_verb {
	CTL_HELLO = 1,          /* -> pid, store, block_size_bytes, version */
	CTL_SYNC = 2,           /* the index up to the log (ns_sync_index) */
	CTL_GC = 3,             /* a GC pass now -> moved_blocks, removed_chunks */
	CTL_RECV_COMMIT = 4,    /* receive's commit (ns_recv_commit) */
	/* issue 15, the live view (numbers 20-29; docs/design.md "Counters"): */
	CTL_STATUS = 20,        /* -> daemon.*, store.*, sync.*, space.*, count.*, gc.*, scrub.* */
	CTL_IOSTAT = 21,        /* after=INO -> uptime_ns, then per volume with a greater
				 * inode, in inode order: v=INO, path=, r=, w=, f= (ops,bytes,
				 * errors,latency_ns sums), rh=, wh=, fh= (latency histogram);
				 * next=INO when the page is full: ask again with after=INO */
	CTL_SCRUB_DONE = 22,    /* at_ns, duration_ns, blocks, damaged_blocks: recorded in
				 * the index for status */
};

/* The name every volume being received starts with (receive writes it, the
 * daemon's commit takes nothing else). */
#define CTL_RECV_TMP_PREFIX ".vsnap-recv."

/* Is name a volume being received (left out of directory listings and of
 * vsnapctl list; reached by its name only)? */
static inline bool ctl_recv_tmp_name(const char *name)
{
	return strncmp(name, CTL_RECV_TMP_PREFIX, sizeof(CTL_RECV_TMP_PREFIX) - 1) == 0;
}

struct ctl_msg {
	uint16_t version, verb;
	int32_t status;
	size_t len;                     /* bytes of body used */
	char body[CTL_BODY_MAX + 1];    /* NUL-terminated */
};

/* An empty message of verb. */
void ctl_msg_init(struct ctl_msg *m, uint16_t verb);
/* Append "key=value\n"; -E2BIG if it does not fit, -EINVAL if the value
 * holds a newline. */
int ctl_kv_add(struct ctl_msg *m, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The value of key (the first line that has it) into out; -ENOENT if
 * missing, -E2BIG if longer than outlen - 1. */
int ctl_kv_get(const struct ctl_msg *m, const char *key, char *out, size_t outlen);
/* The same as an unsigned number (decimal); -EINVAL if it is not one. */
int ctl_kv_u64(const struct ctl_msg *m, const char *key, uint64_t *out);
/* Every line in order (keys may repeat): from *pos (0 at first), the next
 * key and value into key and val (truncated to their lengths); 1 while
 * there is one, 0 at the end. */
int ctl_kv_next(const struct ctl_msg *m, size_t *pos, char *key, size_t keylen, char *val,
		size_t vallen);

/* n bytes as 2n lowercase hex digits and a NUL (out: 2n + 1 bytes), and
 * back: exactly 2n hex digits, else -EINVAL. */
void ctl_hex(const uint8_t *v, size_t n, char *out);
int ctl_unhex(const char *s, uint8_t *v, size_t n);
/* The value of key as n bytes in hex; -ENOENT, -EINVAL. */
int ctl_kv_hex(const struct ctl_msg *m, const char *key, uint8_t *v, size_t n);

/* Bytes of m on the wire into buf (CTL_HDR_BYTES + CTL_BODY_MAX). */
size_t ctl_msg_encode(const struct ctl_msg *m, uint8_t *buf);
/* A received datagram of n bytes; -EPROTO if malformed (bad magic, length,
 * a NUL in the body). A higher version decodes (the server refuses it). */
int ctl_msg_decode(const uint8_t *buf, size_t n, struct ctl_msg *m);

/* "/proc/self/fd/N/ctl.sock" for the store directory open as dirfd. */
int ctl_sock_path(int dirfd, char *out, size_t outlen);
/* Connect to the daemon serving the store at dir: -ENOENT (no socket: no
 * daemon, or one without the channel), -ECONNREFUSED (a stale socket),
 * -EACCES. */
int ctl_connect(const char *dir, int *fd);
/* One request and its reply, waiting at most timeout_ms for it (0: for
 * ever).  The reply's status is the daemon's answer, not this call's; a
 * daemon that refused the connection before reading the request (EBUSY:
 * too many at once) answered with a reply of verb 0. */
int ctl_call(int fd, const struct ctl_msg *req, struct ctl_msg *rep, int timeout_ms);

#endif
