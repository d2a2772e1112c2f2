/*
 * mapcheck: how mmap(MAP_SHARED) of a file goes, opened buffered and with
 * O_DIRECT.  Prints one line: "buffered=RESULT direct=RESULT", each
 * "mapped" or the errno name (ENODEV, ...).  On vsnapfs an O_DIRECT open
 * is direct_io with parallel writes (src/fs/fs.c), which the kernel does
 * not map shared: t-40-randio checks "buffered=mapped direct=ENODEV".
 *
 *   mapcheck FILE        (FILE at least 4 KiB)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *try_map(const char *path, int flags)
{
	static char buf[32];
	int fd = open(path, O_RDWR | flags);
	void *p;

	if (fd < 0) {
		snprintf(buf, sizeof(buf), "open:%s", strerrorname_np(errno));
		return buf;
	}
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		snprintf(buf, sizeof(buf), "%s", strerrorname_np(errno));
	} else {
		snprintf(buf, sizeof(buf), "mapped");
		munmap(p, 4096);
	}
	close(fd);
	return buf;
}

int main(int argc, char **argv)
{
	char b[32];

	if (argc != 2) {
		fprintf(stderr, "usage: mapcheck FILE\n");
		return 2;
	}
	snprintf(b, sizeof(b), "%s", try_map(argv[1], 0));
	printf("buffered=%s direct=%s\n", b, try_map(argv[1], O_DIRECT));
	return 0;
}
