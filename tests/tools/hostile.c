/*
 * hostile: one system call with raw bytes in its names, and its errno
 * checked.  For the tests that throw bad names and bad calls at a mount.
 *
 *   hostile [-e EXPECT] OP ARGS...
 *
 * EXPECT is OK (the call must succeed) or errno names separated by '|'
 * ("EINVAL", "EPERM|EROFS"); without -e any result is fine (printed).
 * NAME arguments are passed to the *at() call exactly as given, after
 * decoding the escapes \xHH and \\, so a name may hold any byte but NUL:
 * control characters, invalid UTF-8, '/' (which the kernel then walks as
 * a path: the file system never sees a '/' in a name).  DIR arguments are
 * opened with O_PATH|O_DIRECTORY and used as the *at() directory.
 *
 *   mkdir DIR NAME            mkdirat(.., 0755)
 *   rmdir DIR NAME            unlinkat(.., AT_REMOVEDIR)
 *   unlink DIR NAME           unlinkat(.., 0)
 *   creat DIR NAME            openat(O_CREAT|O_EXCL|O_WRONLY, 0644), close
 *   open DIR NAME FLAGS       openat with FLAGS of r w rw t(O_TRUNC)
 *                             a(O_APPEND) c(O_CREAT) d(O_DIRECTORY), close
 *   mknod DIR NAME TYPE       mknodat, TYPE: reg fifo chr sock
 *   rename DIR1 NAME1 DIR2 NAME2 [FLAGS]  renameat2, FLAGS: 0 noreplace
 *                             exchange whiteout
 *   link DIR1 NAME1 DIR2 NAME2            linkat(.., 0)
 *   symlink TARGET DIR NAME               symlinkat
 *   chmod DIR NAME MODE       fchmodat (MODE octal)
 *   chown DIR NAME UID GID    fchownat(.., AT_SYMLINK_NOFOLLOW)
 *   utime DIR NAME            utimensat: both times to 1 s after the epoch
 *   touch DIR NAME            utimensat: both times to now
 *   truncate DIR NAME SIZE    truncate(2) of DIR/NAME (no open)
 *   stat DIR NAME             fstatat
 *   setxattr DIR NAME KEY VAL setxattr on the joined path
 *
 * Two scenarios, each a sequence of calls that must all work (EXPECT OK):
 *   unlinked-io DIR NAME      open DIR/NAME (a volume) read-write, unlink
 *                             it, then through the handle: write 1 MiB and
 *                             a block past 16 MiB, fsync, read back, fstat
 *                             (nlink 0, size), ftruncate; meanwhile a new
 *                             DIR/NAME is created with other bytes, and a
 *                             snapshot DIR/.snapshots/unlinked-open is
 *                             taken: it must hold the new file, not the
 *                             unlinked one; close.
 *   renamed-io DIR NAME NEW   open DIR/NAME read-write, rename it to NEW,
 *                             write 1 MiB through the handle, fsync, close;
 *                             DIR/NEW then reads exactly that.
 *
 * Prints "OP NAME...: OK" or "OP NAME...: EXXX (text)" to stdout; exit 0
 * when the result is what EXPECT says, 1 if not (with a line on stderr),
 * 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

static int dirfd_of(const char *dir);

static int sc_fail;                     /* a scenario step went wrong */

static void step(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "hostile: scenario step failed: %s (errno %s)\n", what,
			strerrorname_np(errno) ? strerrorname_np(errno) : "0");
		sc_fail = 1;
	}
}

static void pattern(unsigned char *p, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)((i * 131 + seed * 7 + (i >> 12)) ^ seed);
}

/* Read all of fd from offset off into buf; 1 if it equals want. */
static int reads_as(int fd, off_t off, const unsigned char *want, size_t len, unsigned char *buf)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, buf + done, len - done, off + done);
		if (n <= 0)
			return 0;
		done += n;
	}
	return !memcmp(buf, want, len);
}

static int scenario_unlinked(const char *dir, const char *name)
{
	const size_t len = 1 << 20;
	unsigned char *a = malloc(len), *b = malloc(len), *buf = malloc(len);
	char snap[PATH_MAX];
	struct stat st;
	int dfd = dirfd_of(dir), fd, fd2;

	if (!a || !b || !buf)
		return ENOMEM;
	pattern(a, len, 1);
	pattern(b, len, 2);
	fd = openat(dfd, name, O_RDWR);
	if (fd < 0)
		return errno;
	step(unlinkat(dfd, name, 0) == 0, "unlink while open");
	step(pwrite(fd, a, len, 0) == (ssize_t)len, "write 1 MiB through the unlinked handle");
	step(pwrite(fd, a, 4096, 16 << 20) == 4096, "write past 16 MiB through the unlinked handle");
	step(fsync(fd) == 0, "fsync of the unlinked handle");
	step(fstat(fd, &st) == 0 && st.st_nlink == 0 && st.st_size == (16 << 20) + 4096,
	     "fstat of the unlinked handle: nlink 0, size 16 MiB + 4 KiB");
	step(reads_as(fd, 0, a, len, buf), "read back through the unlinked handle");
	step(reads_as(fd, 16 << 20, a, 4096, buf), "read back past 16 MiB");
	/* a new file of the same name is another volume */
	fd2 = openat(dfd, name, O_RDWR | O_CREAT | O_EXCL, 0644);
	step(fd2 >= 0, "create a new file of the unlinked name");
	step(pwrite(fd2, b, len, 0) == (ssize_t)len && fsync(fd2) == 0, "write the new file");
	step(reads_as(fd, 0, a, len, buf), "the unlinked handle after the new file was written");
	/* a snapshot of the directory holds the new file, not the unlinked one */
	snprintf(snap, sizeof(snap), "%s/.snapshots/unlinked-open", dir);
	step(mkdir(snap, 0755) == 0, "snapshot of the directory while an unlinked volume is open");
	{
		char p[2 * PATH_MAX + 2];
		int sfd;

		snprintf(p, sizeof(p), "%s/%s", snap, name);
		sfd = open(p, O_RDONLY);
		step(sfd >= 0 && reads_as(sfd, 0, b, len, buf) && fstat(sfd, &st) == 0 &&
		     st.st_size == (off_t)len, "the snapshot's copy of the name is the new file");
		if (sfd >= 0)
			close(sfd);
	}
	step(ftruncate(fd, 8192) == 0 && fstat(fd, &st) == 0 && st.st_size == 8192,
	     "ftruncate of the unlinked handle");
	step(reads_as(fd, 0, a, 8192, buf), "read after ftruncate");
	step(close(fd) == 0, "close of the unlinked handle");
	step(fd2 >= 0 && reads_as(fd2, 0, b, len, buf), "the new file after the close");
	if (fd2 >= 0)
		close(fd2);
	free(a);
	free(b);
	free(buf);
	return sc_fail ? EIO : 0;
}

static int scenario_renamed(const char *dir, const char *name, const char *newname)
{
	const size_t len = 1 << 20;
	unsigned char *a = malloc(len), *buf = malloc(len);
	int dfd = dirfd_of(dir), fd;

	if (!a || !buf)
		return ENOMEM;
	pattern(a, len, 3);
	fd = openat(dfd, name, O_RDWR);
	if (fd < 0)
		return errno;
	step(renameat(dfd, name, dfd, newname) == 0, "rename while open");
	step(pwrite(fd, a, len, 0) == (ssize_t)len, "write through the renamed handle");
	step(fsync(fd) == 0, "fsync of the renamed handle");
	step(close(fd) == 0, "close");
	fd = openat(dfd, newname, O_RDONLY);
	step(fd >= 0 && reads_as(fd, 0, a, len, buf), "the new name reads what was written");
	if (fd >= 0)
		close(fd);
	step(faccessat(dfd, name, F_OK, 0) < 0 && errno == ENOENT, "the old name is gone");
	free(a);
	free(buf);
	return sc_fail ? EIO : 0;
}

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
	fprintf(stderr, "usage: hostile [-e OK|ERRNO[|ERRNO...]] OP ARGS... (see the source)\n");
	exit(2);
}

/* Decode \xHH and \\ in place (NUL is refused: it would end the name). */
static char *unescape(char *s)
{
	char *r = s, *w = s;

	while (*r) {
		if (r[0] == '\\' && r[1] == '\\') {
			*w++ = '\\';
			r += 2;
		} else if (r[0] == '\\' && r[1] == 'x' && r[2] && r[3]) {
			char hex[3] = { r[2], r[3], 0 }, *end;
			long v = strtol(hex, &end, 16);

			if (*end || v == 0) {
				fprintf(stderr, "hostile: bad escape in '%s'\n", s);
				exit(2);
			}
			*w++ = (char)v;
			r += 4;
		} else {
			*w++ = *r++;
		}
	}
	*w = 0;
	return s;
}

/* Printable form of a name for the messages: escapes as given, and long
 * names shortened. */
static const char *shown(const char *s)
{
	static char buf[4][128];
	static int i;
	char *b = buf[i++ % 4];
	size_t len = strlen(s), o = 0;

	for (size_t k = 0; k < len && o < sizeof(buf[0]) - 24; k++) {
		unsigned char c = (unsigned char)s[k];
		if (c < 0x20 || c >= 0x7f || c == '\\')
			o += snprintf(b + o, sizeof(buf[0]) - o, "\\x%02x", c);
		else
			b[o++] = (char)c;
	}
	if (o >= sizeof(buf[0]) - 24)
		o += snprintf(b + o, sizeof(buf[0]) - o, "...(%zu bytes)", len);
	b[o] = 0;
	return b;
}

static int dirfd_of(const char *dir)
{
	int fd = open(dir, O_PATH | O_DIRECTORY);

	if (fd < 0) {
		fprintf(stderr, "hostile: open directory %s: %s\n", dir, strerror(errno));
		exit(2);
	}
	return fd;
}

static char *joined(const char *dir, const char *name)
{
	static char buf[2 * PATH_MAX];

	snprintf(buf, sizeof(buf), "%s/%s", dir, name);
	return buf;
}

/* Does errno name e appear in the '|' list? */
static int expected(const char *list, const char *e)
{
	size_t n = strlen(e);

	while (list && *list) {
		const char *bar = strchr(list, '|');
		size_t len = bar ? (size_t)(bar - list) : strlen(list);

		if (len == n && !strncmp(list, e, n))
			return 1;
		list = bar ? bar + 1 : NULL;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *expect = NULL, *op;
	char desc[1024];
	int rc = 0, err = 0, i = 1;

	if (argc > 2 && !strcmp(argv[1], "-e")) {
		expect = argv[2];
		i = 3;
	}
	if (argc - i < 1)
		usage();
	op = argv[i++];
	argv += i;
	argc -= i;
	for (int k = 0; k < argc; k++)
		unescape(argv[k]);
	/* the names, not the directories: DIR NAME [DIR NAME] */
	snprintf(desc, sizeof(desc), "%s %s%s%s", op, argc > 1 ? shown(argv[1]) : "",
		 argc > 3 ? " -> " : "", argc > 3 ? shown(argv[3]) : "");

#define NEED(n) do { if (argc != (n)) usage(); } while (0)
	if (!strcmp(op, "mkdir")) {
		NEED(2);
		rc = mkdirat(dirfd_of(argv[0]), argv[1], 0755);
	} else if (!strcmp(op, "rmdir")) {
		NEED(2);
		rc = unlinkat(dirfd_of(argv[0]), argv[1], AT_REMOVEDIR);
	} else if (!strcmp(op, "unlink")) {
		NEED(2);
		rc = unlinkat(dirfd_of(argv[0]), argv[1], 0);
	} else if (!strcmp(op, "creat")) {
		NEED(2);
		rc = openat(dirfd_of(argv[0]), argv[1], O_CREAT | O_EXCL | O_WRONLY, 0644);
		if (rc >= 0)
			rc = close(rc);
	} else if (!strcmp(op, "open")) {
		int fl = 0;
		const char *f;

		NEED(3);
		f = argv[2];
		if (!strcmp(f, "r") || f[0] == 'r')
			fl = strchr(f, 'w') ? O_RDWR : O_RDONLY;
		else if (f[0] == 'w')
			fl = O_WRONLY;
		else
			usage();
		if (strchr(f, 't'))
			fl |= O_TRUNC;
		if (strchr(f, 'a'))
			fl |= O_APPEND;
		if (strchr(f, 'c'))
			fl |= O_CREAT;
		if (strchr(f, 'd'))
			fl |= O_DIRECTORY;
		rc = openat(dirfd_of(argv[0]), argv[1], fl, 0644);
		if (rc >= 0)
			rc = close(rc);
	} else if (!strcmp(op, "mknod")) {
		mode_t m;

		NEED(3);
		m = !strcmp(argv[2], "reg") ? S_IFREG : !strcmp(argv[2], "fifo") ? S_IFIFO :
		    !strcmp(argv[2], "chr") ? S_IFCHR : !strcmp(argv[2], "sock") ? S_IFSOCK : 0;
		if (!m)
			usage();
		rc = mknodat(dirfd_of(argv[0]), argv[1], m | 0644, m == S_IFCHR ? makedev(1, 3) : 0);
	} else if (!strcmp(op, "rename")) {
		unsigned fl = 0;

		if (argc != 4 && argc != 5)
			usage();
		if (argc == 5) {
			if (!strcmp(argv[4], "noreplace"))
				fl = RENAME_NOREPLACE;
			else if (!strcmp(argv[4], "exchange"))
				fl = RENAME_EXCHANGE;
			else if (!strcmp(argv[4], "whiteout"))
				fl = RENAME_WHITEOUT;
			else if (strcmp(argv[4], "0"))
				usage();
		}
		rc = renameat2(dirfd_of(argv[0]), argv[1], dirfd_of(argv[2]), argv[3], fl);
	} else if (!strcmp(op, "link")) {
		NEED(4);
		rc = linkat(dirfd_of(argv[0]), argv[1], dirfd_of(argv[2]), argv[3], 0);
	} else if (!strcmp(op, "symlink")) {
		NEED(3);
		rc = symlinkat(argv[0], dirfd_of(argv[1]), argv[2]);
		snprintf(desc, sizeof(desc), "symlink %s", shown(argv[2]));
	} else if (!strcmp(op, "chmod")) {
		NEED(3);
		rc = fchmodat(dirfd_of(argv[0]), argv[1], (mode_t)strtoul(argv[2], NULL, 8), 0);
	} else if (!strcmp(op, "chown")) {
		NEED(4);
		rc = fchownat(dirfd_of(argv[0]), argv[1], (uid_t)atoi(argv[2]), (gid_t)atoi(argv[3]),
			      AT_SYMLINK_NOFOLLOW);
	} else if (!strcmp(op, "utime") || !strcmp(op, "touch")) {
		struct timespec ts[2] = { { 1, 0 }, { 1, 0 } };

		NEED(2);
		if (!strcmp(op, "touch"))
			ts[0].tv_nsec = ts[1].tv_nsec = UTIME_NOW;
		rc = utimensat(dirfd_of(argv[0]), argv[1], ts, 0);
	} else if (!strcmp(op, "truncate")) {
		NEED(3);
		rc = truncate(joined(argv[0], argv[1]), (off_t)strtoll(argv[2], NULL, 0));
	} else if (!strcmp(op, "stat")) {
		struct stat st;

		NEED(2);
		rc = fstatat(dirfd_of(argv[0]), argv[1], &st, AT_SYMLINK_NOFOLLOW);
	} else if (!strcmp(op, "setxattr")) {
		NEED(4);
		rc = setxattr(joined(argv[0], argv[1]), argv[2], argv[3], strlen(argv[3]), 0);
	} else if (!strcmp(op, "unlinked-io")) {
		NEED(2);
		err = scenario_unlinked(argv[0], argv[1]);
	} else if (!strcmp(op, "renamed-io")) {
		NEED(3);
		err = scenario_renamed(argv[0], argv[1], argv[2]);
	} else {
		usage();
	}
#undef NEED
	if (rc < 0 && !err)
		err = errno;
	if (!err)
		printf("%s: OK\n", desc);
	else
		printf("%s: %s (%s)\n", desc, strerrorname_np(err), strerror(err));
	if (!expect)
		return 0;
	if (err ? expected(expect, strerrorname_np(err)) : !strcmp(expect, "OK"))
		return 0;
	fprintf(stderr, "hostile: %s: got %s, expected %s\n", desc, err ? strerrorname_np(err) : "OK",
		expect);
	return 1;
}
