/*
 * fdio: one open file, driven by line commands on stdin, so that a shell
 * test can keep an open (and the kernel's page cache behind it) across
 * what other processes do to the same file.
 *
 *   fdio [-d] FILE          -d: open O_DIRECT (4 KiB aligned buffer)
 *
 * Prints "ready" once FILE is open (O_RDWR), then one line per command:
 *
 *   r OFF LEN BYTE   pread LEN bytes at OFF; "ok" if every one is BYTE
 *                    (two hex digits), else "mismatch at OFF: XX"
 *   w OFF LEN BYTE   pwrite LEN bytes of BYTE at OFF; "ok"
 *   h OFF LEN        pread LEN bytes at OFF; their FNV-1a 64 hash, in hex
 *   q                exit 0
 *
 * OFF and LEN are bytes, with an optional k or M suffix (KiB, MiB); with
 * -d they must suit O_DIRECT on FILE.  A failed call prints "error CALL:
 * ERRNO-NAME" and fdio goes on; bad input prints "usage: ..." and exits 2.
 * Output is flushed after every line.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUF_BYTES (1u << 20)

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s)
		return -1;
	if (*end == 'k')
		v <<= 10, end++;
	else if (*end == 'M')
		v <<= 20, end++;
	if (*end)
		return -1;
	*out = v;
	return 0;
}

/* Every byte of [off, off + len) through buf, one call per BUF_BYTES;
 * 0, or -errno of the failed call (a short read counts as EIO). */
static int each_chunk(int fd, char *buf, int is_write, uint64_t off, uint64_t len,
		      int (*fn)(const unsigned char *p, size_t n, uint64_t at, void *arg), void *arg)
{
	while (len) {
		size_t n = len < BUF_BYTES ? len : BUF_BYTES;
		ssize_t got = is_write ? pwrite(fd, buf, n, off) : pread(fd, buf, n, off);

		if (got < 0)
			return -errno;
		if ((size_t)got != n)
			return -EIO;
		if (fn) {
			int rc = fn((const unsigned char *)buf, n, off, arg);

			if (rc)
				return rc;
		}
		off += n;
		len -= n;
	}
	return 0;
}

struct want { unsigned char byte; uint64_t bad_off; unsigned char bad; };

static int check_byte(const unsigned char *p, size_t n, uint64_t at, void *arg)
{
	struct want *w = arg;

	for (size_t i = 0; i < n; i++) {
		if (p[i] != w->byte) {
			w->bad_off = at + i;
			w->bad = p[i];
			return 1;
		}
	}
	return 0;
}

static int fnv(const unsigned char *p, size_t n, uint64_t at, void *arg)
{
	uint64_t *h = arg;

	(void)at;
	for (size_t i = 0; i < n; i++)
		*h = (*h ^ p[i]) * 0x100000001b3ULL;
	return 0;
}

int main(int argc, char **argv)
{
	int direct = 0, fd, rc;
	char line[256], cmd, *buf;
	char a[64], b[64], c[64];
	uint64_t off, len;
	unsigned int byte;

	if (argc == 3 && !strcmp(argv[1], "-d"))
		direct = 1;
	else if (argc != 2) {
		fprintf(stderr, "usage: fdio [-d] FILE\n");
		return 2;
	}
	fd = open(argv[argc - 1], O_RDWR | (direct ? O_DIRECT : 0));
	if (fd < 0) {
		fprintf(stderr, "fdio: %s: %s\n", argv[argc - 1], strerror(errno));
		return 1;
	}
	if (posix_memalign((void **)&buf, 4096, BUF_BYTES)) {
		fprintf(stderr, "fdio: out of memory\n");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (fgets(line, sizeof(line), stdin)) {
		int n = sscanf(line, " %c %63s %63s %63s", &cmd, a, b, c);

		if (n == 1 && cmd == 'q')
			return 0;
		if (n < 3 || parse_size(a, &off) || parse_size(b, &len) ||
		    ((cmd == 'r' || cmd == 'w') && (n != 4 || sscanf(c, "%2x", &byte) != 1)) ||
		    (cmd == 'h' && n != 3) || !strchr("rwh", cmd)) {
			printf("usage: r|w OFF LEN BYTE, h OFF LEN, q: %s", line);
			return 2;
		}
		if (cmd == 'w') {
			memset(buf, (int)byte, BUF_BYTES);
			rc = each_chunk(fd, buf, 1, off, len, NULL, NULL);
			if (rc)
				printf("error pwrite: %s\n", strerrorname_np(-rc));
			else
				printf("ok\n");
		} else if (cmd == 'r') {
			struct want w = { .byte = (unsigned char)byte };

			rc = each_chunk(fd, buf, 0, off, len, check_byte, &w);
			if (rc == 1)
				printf("mismatch at %" PRIu64 ": %02x\n", w.bad_off, w.bad);
			else if (rc)
				printf("error pread: %s\n", strerrorname_np(-rc));
			else
				printf("ok\n");
		} else {
			uint64_t h = 0xcbf29ce484222325ULL;

			rc = each_chunk(fd, buf, 0, off, len, fnv, &h);
			if (rc)
				printf("error pread: %s\n", strerrorname_np(-rc));
			else
				printf("%016" PRIx64 "\n", h);
		}
	}
	return 0;
}
