/*
 * dgramrecv: a datagram socket that stands in for systemd's notification
 * socket (NOTIFY_SOCKET) or for journald's native socket, for the tests of
 * vsnapfs's sd_notify() and sd_journal_send() (t-15-systemd).  Binds a Unix
 * datagram socket at SOCKET, prints "listening", then each datagram it
 * receives followed by a line "--", flushed at once.  With MOUNTPOINT, a
 * datagram with a line READY=1 is followed by "mounted: yes" if MOUNTPOINT
 * is a FUSE mount at that moment (statfs), else "mounted: no": readiness
 * must only be announced once the mount is there.  Runs until killed.
 *
 *   dgramrecv SOCKET [MOUNTPOINT]
 */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define FUSE_SUPER_MAGIC 0x65735546

int main(int argc, char **argv)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	static char buf[1 << 16];
	struct statfs sf;
	ssize_t n;
	int fd;

	if (argc < 2 || argc > 3 || strlen(argv[1]) >= sizeof(a.sun_path)) {
		fprintf(stderr, "usage: dgramrecv SOCKET [MOUNTPOINT]\n");
		return 2;
	}
	strcpy(a.sun_path, argv[1]);
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("dgramrecv: socket");
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	for (;;) {
		n = recv(fd, buf, sizeof(buf) - 1, 0);
		if (n < 0) {
			perror("dgramrecv: recv");
			return 1;
		}
		buf[n] = '\0';
		printf("%s%s--\n", buf, n && buf[n - 1] == '\n' ? "" : "\n");
		if (argc == 3 && (!strncmp(buf, "READY=1\n", 8) || strstr(buf, "\nREADY=1\n") ||
				  !strcmp(buf, "READY=1") || (n > 8 && !strcmp(buf + n - 8, "\nREADY=1"))))
			printf("mounted: %s\n", statfs(argv[2], &sf) == 0 &&
			       sf.f_type == FUSE_SUPER_MAGIC ? "yes" : "no");
		fflush(stdout);
	}
}
