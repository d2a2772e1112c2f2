/*
 * ctlmsg: messages of the control channel and the client's two calls; see
 * include/vsnapfs/ctlmsg.h.  The server is src/ns/ctlsrv.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/le.h"
#include "vsnapfs/storedir.h"

void ctl_msg_init(struct ctl_msg *m, uint16_t verb)
{
	m->version = CTL_VERSION;
	m->verb = verb;
	m->status = 0;
	m->len = 0;
	m->body[0] = '\0';
}

int ctl_kv_add(struct ctl_msg *m, const char *key, const char *fmt, ...)
{
	char val[CTL_BODY_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(val, sizeof(val), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(val))
		return -E2BIG;
	if (strchr(val, '\n') || strchr(key, '=') || strchr(key, '\n'))
		return -EINVAL;
	n = snprintf(m->body + m->len, sizeof(m->body) - m->len, "%s=%s\n", key, val);
	if (n < 0 || m->len + n > CTL_BODY_MAX) {
		m->body[m->len] = '\0';
		return -E2BIG;
	}
	m->len += n;
	return 0;
}

int ctl_kv_get(const struct ctl_msg *m, const char *key, char *out, size_t outlen)
{
	size_t klen = strlen(key);

	for (const char *l = m->body; *l; ) {
		const char *nl = strchr(l, '\n'), *end = nl ? nl : l + strlen(l);

		if ((size_t)(end - l) > klen && !strncmp(l, key, klen) && l[klen] == '=') {
			size_t vlen = end - l - klen - 1;

			if (vlen >= outlen)
				return -E2BIG;
			memcpy(out, l + klen + 1, vlen);
			out[vlen] = '\0';
			return 0;
		}
		l = nl ? nl + 1 : end;
	}
	return -ENOENT;
}

int ctl_kv_u64(const struct ctl_msg *m, const char *key, uint64_t *out)
{
	char v[32], *end;
	int rc = ctl_kv_get(m, key, v, sizeof(v));

	if (rc)
		return rc;
	errno = 0;
	*out = strtoull(v, &end, 10);
	return errno || end == v || *end || v[0] == '-' ? -EINVAL : 0;
}

int ctl_kv_next(const struct ctl_msg *m, size_t *pos, char *key, size_t keylen, char *val,
		size_t vallen)
{
	const char *l = m->body + *pos, *nl, *eq;

	if (*pos >= m->len || !*l)
		return 0;
	nl = strchr(l, '\n');
	if (!nl)
		nl = l + strlen(l);
	eq = memchr(l, '=', nl - l);
	if (!eq)
		eq = nl;
	snprintf(key, keylen, "%.*s", (int)(eq - l), l);
	snprintf(val, vallen, "%.*s", eq < nl ? (int)(nl - eq - 1) : 0, eq < nl ? eq + 1 : "");
	*pos = nl - m->body + (*nl ? 1 : 0);
	return 1;
}

void ctl_hex(const uint8_t *v, size_t n, char *out)
{
	static const char dig[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = dig[v[i] >> 4];
		out[2 * i + 1] = dig[v[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int ctl_unhex(const char *s, uint8_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int hi = hexval(s[2 * i]), lo = hi < 0 ? -1 : hexval(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		v[i] = (uint8_t)(hi << 4 | lo);
	}
	return s[2 * n] ? -EINVAL : 0;
}

int ctl_kv_hex(const struct ctl_msg *m, const char *key, uint8_t *v, size_t n)
{
	char s[2 * 64 + 2];
	int rc = n > 64 ? -EINVAL : ctl_kv_get(m, key, s, 2 * n + 2);

	return rc == -E2BIG ? -EINVAL : rc ? rc : ctl_unhex(s, v, n);
}

size_t ctl_msg_encode(const struct ctl_msg *m, uint8_t *buf)
{
	le32_put(buf, CTL_MAGIC);
	buf[4] = (uint8_t)m->version;
	buf[5] = (uint8_t)(m->version >> 8);
	buf[6] = (uint8_t)m->verb;
	buf[7] = (uint8_t)(m->verb >> 8);
	le32_put(buf + 8, (uint32_t)m->status);
	le32_put(buf + 12, (uint32_t)m->len);
	memcpy(buf + CTL_HDR_BYTES, m->body, m->len);
	return CTL_HDR_BYTES + m->len;
}

int ctl_msg_decode(const uint8_t *buf, size_t n, struct ctl_msg *m)
{
	uint32_t len;

	if (n < CTL_HDR_BYTES || le32_get(buf) != CTL_MAGIC)
		return -EPROTO;
	len = le32_get(buf + 12);
	if (len > CTL_BODY_MAX || len != n - CTL_HDR_BYTES ||
	    memchr(buf + CTL_HDR_BYTES, '\0', len))
		return -EPROTO;
	m->version = (uint16_t)(buf[4] | buf[5] << 8);
	m->verb = (uint16_t)(buf[6] | buf[7] << 8);
	m->status = (int32_t)le32_get(buf + 8);
	m->len = len;
	memcpy(m->body, buf + CTL_HDR_BYTES, len);
	m->body[len] = '\0';
	return 0;
}

int ctl_sock_path(int dirfd, char *out, size_t outlen)
{
	int n = snprintf(out, outlen, "/proc/self/fd/%d/" STOREDIR_CTL_SOCK, dirfd);

	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

int ctl_connect(const char *dir, int *fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int dfd, s = -1, rc;

	*fd = -1;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	rc = ctl_sock_path(dfd, sa.sun_path, sizeof(sa.sun_path));
	if (!rc) {
		s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (s < 0)
			rc = -errno;
	}
	if (!rc && connect(s, (struct sockaddr *)&sa, sizeof(sa)))
		rc = -errno;
	close(dfd);
	if (rc) {
		if (s >= 0)
			close(s);
		return rc;
	}
	*fd = s;
	return 0;
}

/*
 * One datagram.  A daemon that closed the connection with our request
 * unread (it refused us: too many connections) makes the kernel report
 * ECONNRESET once before the reply it queued; that reply is the answer.
 */
static ssize_t recv_reply(int fd, uint8_t *buf, int flags)
{
	ssize_t got = recv(fd, buf, CTL_HDR_BYTES + CTL_BODY_MAX + 1, flags);

	if (got < 0 && errno == ECONNRESET) {
		got = recv(fd, buf, CTL_HDR_BYTES + CTL_BODY_MAX + 1, MSG_DONTWAIT);
		if (got <= 0) {
			errno = ECONNRESET;
			got = -1;
		}
	}
	return got;
}

int ctl_call(int fd, const struct ctl_msg *req, struct ctl_msg *rep, int timeout_ms)
{
	uint8_t *buf = malloc(CTL_HDR_BYTES + CTL_BODY_MAX + 1);
	struct pollfd p = { .fd = fd, .events = POLLIN };
	size_t n;
	ssize_t got;
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	n = ctl_msg_encode(req, buf);
	if (send(fd, buf, n, MSG_NOSIGNAL) != (ssize_t)n) {
		rc = -errno;
		/* a daemon that refused us before reading (too many connections)
		 * left its reason queued: that is the answer */
		got = recv_reply(fd, buf, MSG_DONTWAIT);
		if (got > 0)
			rc = ctl_msg_decode(buf, got, rep);
		goto out;
	}
	rc = poll(&p, 1, timeout_ms ? timeout_ms : -1);
	if (rc <= 0) {
		rc = rc == 0 ? -ETIMEDOUT : -errno;
		goto out;
	}
	got = recv_reply(fd, buf, 0);
	if (got < 0)
		rc = -errno;
	else if (got == 0)
		rc = -ECONNRESET;       /* the daemon closed: refused or gone */
	else
		rc = ctl_msg_decode(buf, got, rep);
out:
	free(buf);
	return rc;
}
