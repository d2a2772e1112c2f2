/*
 * stridecopy SRC DST MODEL BLOCK STRIDE FIRST COUNT
 *
 * For every group of STRIDE blocks of BLOCK bytes, copy blocks FIRST ..
 * FIRST+COUNT-1 of the group from SRC into DST and MODEL at the same
 * offsets (in place, no truncation): a strided overwrite that dd cannot do
 * in one call.  Exit 0 on success.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct stat st;
	long bs, stride, first, count;
	char *buf;
	int src, dst, model;

	if (argc != 8) {
		fprintf(stderr, "usage: stridecopy SRC DST MODEL BLOCK STRIDE FIRST COUNT\n");
		return 2;
	}
	bs = atol(argv[4]);
	stride = atol(argv[5]);
	first = atol(argv[6]);
	count = atol(argv[7]);
	src = open(argv[1], O_RDONLY);
	dst = open(argv[2], O_WRONLY);
	model = open(argv[3], O_WRONLY);
	buf = malloc(bs * count);
	if (src < 0 || dst < 0 || model < 0 || !buf || fstat(src, &st)) {
		perror("stridecopy");
		return 1;
	}
	for (off_t g = 0; g + stride * bs <= st.st_size; g += stride * bs) {
		off_t off = g + first * bs;
		ssize_t len = bs * count;

		if (pread(src, buf, len, off) != len || pwrite(dst, buf, len, off) != len ||
		    pwrite(model, buf, len, off) != len) {
			perror("stridecopy");
			return 1;
		}
	}
	if (fsync(dst) || fsync(model)) {
		perror("stridecopy: fsync");
		return 1;
	}
	free(buf);
	close(src);
	close(dst);
	close(model);
	return 0;
}
