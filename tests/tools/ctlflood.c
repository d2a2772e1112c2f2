/*
 * ctlflood: a control-channel client that sends requests and never reads
 * the replies, then holds the connection until it is killed.  t-97-ctl-gc
 * runs it to check that such a client cannot hold the daemon's control
 * thread (every other vsnapctl call, and unmount) hostage: the daemon must
 * drop it once its replies no longer fit.  The requests are 16 bytes of
 * garbage, which the daemon answers with "malformed request" like any
 * other reply.  Prints "sent N" once N were sent or the daemon hung up.
 *
 *   ctlflood SOCKET N
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char req[16];
	long n, i;
	int fd;

	if (argc != 3 || (n = atol(argv[2])) <= 0 || strlen(argv[1]) >= sizeof(a.sun_path)) {
		fprintf(stderr, "usage: ctlflood SOCKET N\n");
		return 2;
	}
	strcpy(a.sun_path, argv[1]);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		fprintf(stderr, "ctlflood: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	memset(req, 0x5a, sizeof(req));
	for (i = 0; i < n; i++)
		if (send(fd, req, sizeof(req), MSG_NOSIGNAL) != (ssize_t)sizeof(req))
			break;  /* the daemon hung up on us: what it should do */
	printf("sent %ld\n", i);
	fflush(stdout);
	for (;;)
		pause();
}
