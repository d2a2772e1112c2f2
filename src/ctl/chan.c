/*
 * chan: vsnapctl's end of the control channel to a running daemon
 * (vsnapfs/ctlmsg.h; the server is src/ns/ctlsrv.c).  One connection per
 * call: requests are rare and short, and a fresh connection cannot carry
 * a stale reply.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/ctlmsg.h"

void chan_report(const char *dir, int rc, const struct ctl_msg *rep, const char *tail)
{
	char msg[512];

	if (!rc)
		return;
	if (rc != rep->status) {
		fprintf(stderr, "vsnapctl: %s: cannot reach the daemon's control channel: %s%s\n",
			dir, rc == -ENOENT || rc == -ECONNREFUSED ?
			"no daemon serves it (not mounted, or mounted by a vsnapfs without one)" :
			rc == -ECONNRESET || rc == -EPIPE ? "the daemon closed the connection" :
			strerror(-rc), tail);
		return;
	}
	if (ctl_kv_get(rep, "msg", msg, sizeof(msg)))
		snprintf(msg, sizeof(msg), "%s", strerror(-rep->status));
	fprintf(stderr, "vsnapctl: %s%s\n", msg, tail);
}

int chan_call(const char *dir, struct ctl_msg *req, struct ctl_msg *rep, bool quiet)
{
	int fd, rc;

	rc = ctl_connect(dir, &fd);
	if (!rc) {
		rc = ctl_call(fd, req, rep, 0);
		close(fd);
	}
	if (rc)
		rep->status = 0;        /* the channel's error, not the daemon's */
	else
		rc = rep->status;
	if (rc && !quiet)
		chan_report(dir, rc, rep, "");
	return rc;
}

int chan_ask(const char *dir, uint16_t verb, struct ctl_msg *m, bool quiet)
{
	ctl_msg_init(m, verb);
	return chan_call(dir, m, m, quiet);     /* the request is sent before the reply lands */
}
