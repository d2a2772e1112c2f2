/*
 * ctlsrv: the control channel's server (docs/design.md, "Send and
 * receive", "The control channel"; the messages in vsnapfs/ctlmsg.h).
 *
 * An accept thread, started by ns_start after daemonizing and stopped
 * first thing by ns_close, takes connections on STORE/ctl.sock and gives
 * each a thread of its own, up to CTL_CONNS_MAX at once (one more is told
 * EBUSY and closed): a `vsnapctl iostat 1`, a gc pass that takes seconds
 * or a receive's commit does not hold up the others.  A connection may
 * carry several requests, each answered before the next is read, and
 * waits at most CTL_IDLE_MS for its next one.  A verb is an ordinary call
 * into the namespace (ns_sync_index, ns_gc_request, ns_recv_commit,
 * ns_ctl_status...), which takes its own ranked locks: the server holds no
 * lock of its own, so the lock order (vsnapfs/lock.h) is unchanged.  The
 * slots of the connection threads belong to the accept thread alone (a
 * thread closes its socket as it ends and says it is done through an
 * atomic flag; the accept thread joins it), so they need no lock.
 *
 * Stopping: one byte on the wake pipe, which nobody reads, wakes every
 * poll at once: the accept thread and every connection waiting for a
 * request; a connection in a request finishes it (a gc request also wakes
 * on ctl_stop).  The accept thread joins them all before it returns.
 *
 * Only uid 0 and the daemon's own uid are served (SO_PEERCRED), and the
 * socket is made 0600 right after bind; the check covers the moment
 * between the two.  The socket of a crashed daemon is unlinked before
 * bind: we hold the store's lock, so no daemon is serving it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ns/ns_int.h"
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/log.h"
#include "vsnapfs/storedir.h"

#define CTL_IDLE_MS    10000            /* a connection's wait for its next request */
#define CTL_CONNS_MAX  8                /* connections served at once */

struct ctlbuf {                         /* one connection's messages */
	struct ctl_msg req, rep;
	uint8_t wire[CTL_HDR_BYTES + CTL_BODY_MAX + 1];
};

struct ctl_conn {                       /* one slot; the accept thread's */
	struct ns *ns;
	bool busy;                      /* a thread was started on it */
	int fd;                         /* the connection: its thread closes it */
	pthread_t thread;
	atomic_bool done;               /* set by its thread as it ends: join it */
	struct ctlbuf *b;               /* allocated at its first use, kept */
};

static void reply_err(struct ctl_msg *rep, int rc, const char *msg)
{
	rep->status = rc;
	ctl_kv_add(rep, "msg", "%s", msg ? msg : strerror(-rc));
}

/* receive's commit: keys dir, tmp, tmp_ino (the volume the receive wrote),
 * name, snap, guid, created_ns, and for an incremental stream base_guid
 * (force=1 to replace a destination written after the base); tree=1 for a
 * directory stream (tmp is the directory the receive wrote, snap the name
 * of the snapshot of dir/name). */
static void recv_commit(struct ns *ns, const struct ctl_msg *req, struct ctl_msg *rep)
{
	char tmp[BMAP_NAME_MAX + 1], name[BMAP_NAME_MAX + 1], snap[BMAP_NAME_MAX + 1], msg[400];
	struct ns_recv r = { .tmp = tmp, .name = name, .snap = snap };
	uint64_t force = 0, created = 0, tree = 0;
	int rc;

	rc = ctl_kv_u64(req, "dir", &r.dir);
	if (!rc)
		rc = ctl_kv_get(req, "tmp", tmp, sizeof(tmp));
	if (!rc)
		rc = ctl_kv_u64(req, "tmp_ino", &r.tmp_ino);
	if (!rc)
		rc = ctl_kv_get(req, "name", name, sizeof(name));
	if (!rc)
		rc = ctl_kv_get(req, "snap", snap, sizeof(snap));
	if (!rc)
		rc = ctl_kv_hex(req, "guid", r.guid, sizeof(r.guid));
	if (!rc)
		rc = ctl_kv_u64(req, "created_ns", &created);
	if (!rc && ctl_kv_u64(req, "force", &force) == -EINVAL)
		rc = -EINVAL;
	if (!rc && ctl_kv_u64(req, "tree", &tree) == -EINVAL)
		rc = -EINVAL;
	if (!rc) {
		rc = ctl_kv_hex(req, "base_guid", r.base_guid, sizeof(r.base_guid));
		r.incremental = rc == 0;
		rc = rc == -ENOENT ? 0 : rc;
	}
	if (rc) {
		reply_err(rep, -EPROTO, "recv_commit: a key is missing or malformed");
		return;
	}
	r.force = force != 0;
	r.tree = tree != 0;
	r.created_ns = (int64_t)created;
	rc = ns_recv_commit(ns, &r, msg, sizeof(msg));
	if (rc)
		reply_err(rep, rc, msg);
}

/* One request into rep. */
static void serve_one(struct ns *ns, const struct ctl_msg *req, struct ctl_msg *rep)
{
	struct ns_gc_stats st;
	int rc;

	ctl_msg_init(rep, req->verb);
	if (req->version > CTL_VERSION) {
		reply_err(rep, -EPROTO, "protocol version not supported by this daemon");
		return;
	}
	switch (req->verb) {
	case CTL_HELLO:
		ctl_kv_add(rep, "version", "%d", CTL_VERSION);
		ctl_kv_add(rep, "pid", "%ld", (long)getpid());
		ctl_kv_add(rep, "store", "%s", ns->dir);
		ctl_kv_add(rep, "block_size_bytes", "%" PRIu32, ns->bs);
		ctl_kv_add(rep, "readonly", "%d", ns->readonly);
		break;
	case CTL_SYNC:
		rc = ns_sync_index(ns);
		if (rc)
			reply_err(rep, rc, NULL);
		break;
	case CTL_GC:
		rc = ns_gc_request(ns, &st);
		if (rc) {
			reply_err(rep, rc, rc == -EROFS ? "mounted read-only: no garbage collection" :
				  rc == -EIO ? "a sync of the store failed: no garbage collection until "
					       "it is mounted again" : NULL);
			break;
		}
		ctl_kv_add(rep, "moved_blocks", "%" PRIu64, st.moved);
		ctl_kv_add(rep, "removed_chunks", "%" PRIu64, st.removed);
		break;
	case CTL_RECV_COMMIT:
		recv_commit(ns, req, rep);
		break;
	case CTL_STATUS:
		ns_ctl_status(ns, rep);
		break;
	case CTL_IOSTAT:
		ns_ctl_iostat(ns, req, rep);
		break;
	case CTL_SCRUB_DONE:
		ns_ctl_scrub_done(ns, req, rep);
		break;
	default:
		reply_err(rep, -EOPNOTSUPP, "unknown request");
		break;
	}
}

static bool peer_allowed(int c)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &len))
		return false;
	return cr.uid == 0 || cr.uid == geteuid();
}

/* Serve one connection until it closes, idles or we stop. */
static void serve_conn(struct ns *ns, int c, struct ctlbuf *b)
{
	bool allowed = peer_allowed(c);

	for (;;) {
		struct pollfd p[2] = { { .fd = c, .events = POLLIN },
				       { .fd = ns->ctl_wake[0], .events = POLLIN } };
		ssize_t n;
		size_t len;

		if (poll(p, 2, CTL_IDLE_MS) <= 0 || p[1].revents)
			return;
		n = recv(c, b->wire, sizeof(b->wire), 0);
		if (n <= 0)
			return;
		if (ctl_msg_decode(b->wire, n, &b->req)) {
			ctl_msg_init(&b->rep, 0);
			reply_err(&b->rep, -EPROTO, "malformed request");
		} else if (!allowed) {
			ctl_msg_init(&b->rep, b->req.verb);
			reply_err(&b->rep, -EPERM, "only root and the daemon's user may use the "
				  "control channel");
		} else {
			serve_one(ns, &b->req, &b->rep);
		}
		len = ctl_msg_encode(&b->rep, b->wire);
		/* never wait on a client that does not read its replies: it
		 * would hold every other client, and unmount, for ever */
		if (send(c, b->wire, len, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len)
			return;
	}
}

static void *conn_main(void *arg)
{
	struct ctl_conn *k = arg;

	serve_conn(k->ns, k->fd, k->b);
	/* closed at once: a client blocked sending to us gets EPIPE */
	close(k->fd);
	atomic_store(&k->done, true);
	return NULL;
}

/* Join the connection threads that are done (all of them if wait). */
static void reap_conns(struct ctl_conn *k, bool wait)
{
	for (int i = 0; i < CTL_CONNS_MAX; i++) {
		if (!k[i].busy || (!wait && !atomic_load(&k[i].done)))
			continue;
		pthread_join(k[i].thread, NULL);
		k[i].busy = false;
	}
}

/* Serve c on a thread of its own, or tell it why not and close it. */
static void start_conn(struct ns *ns, struct ctl_conn *k, int c)
{
	struct ctl_conn *slot = NULL;
	struct ctl_msg *rep;
	const char *why = "too many control connections at once; try again";
	uint8_t *wire;

	reap_conns(k, false);
	for (int i = 0; i < CTL_CONNS_MAX && !slot; i++)
		if (!k[i].busy)
			slot = &k[i];
	if (slot && !slot->b && !(slot->b = malloc(sizeof(*slot->b))))
		why = "out of memory";
	if (slot && slot->b) {
		slot->fd = c;
		atomic_store(&slot->done, false);
		slot->busy = !pthread_create(&slot->thread, NULL, conn_main, slot);
		if (slot->busy)
			return;
		why = "cannot start a thread";
	}
	/* the refusal is the reply to whatever the client sends first */
	rep = malloc(sizeof(*rep));
	wire = malloc(CTL_HDR_BYTES + CTL_BODY_MAX);
	if (rep && wire) {
		size_t len;

		ctl_msg_init(rep, 0);
		reply_err(rep, -EBUSY, why);
		len = ctl_msg_encode(rep, wire);
		(void)!send(c, wire, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	free(rep);
	free(wire);
	close(c);
}

static void *ctl_main(void *arg)
{
	struct ns *ns = arg;
	struct ctl_conn *k = ns->ctl_conns;

	while (!atomic_load(&ns->ctl_stop)) {
		struct pollfd p[2] = { { .fd = ns->ctl_fd, .events = POLLIN },
				       { .fd = ns->ctl_wake[0], .events = POLLIN } };
		int c;

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		c = accept4(ns->ctl_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c >= 0)
			start_conn(ns, k, c);
	}
	reap_conns(k, true);
	return NULL;
}

void ns_ctl_start(struct ns *ns)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int rc;

	rc = ctl_sock_path(ns->dir_fd, sa.sun_path, sizeof(sa.sun_path));
	if (!rc && pipe2(ns->ctl_wake, O_CLOEXEC))
		rc = -errno;
	if (!rc && (ns->ctl_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)) < 0)
		rc = -errno;
	if (!rc && unlinkat(ns->dir_fd, STOREDIR_CTL_SOCK, 0) && errno != ENOENT)
		rc = -errno;
	if (!rc && bind(ns->ctl_fd, (struct sockaddr *)&sa, sizeof(sa)))
		rc = -errno;
	if (!rc && fchmodat(ns->dir_fd, STOREDIR_CTL_SOCK, 0600, 0))
		rc = -errno;
	if (!rc && listen(ns->ctl_fd, 16))
		rc = -errno;
	if (!rc && !(ns->ctl_conns = calloc(CTL_CONNS_MAX, sizeof(*ns->ctl_conns))))
		rc = -ENOMEM;
	for (int i = 0; !rc && i < CTL_CONNS_MAX; i++)
		ns->ctl_conns[i] = (struct ctl_conn){ .ns = ns, .fd = -1 };
	if (!rc)
		rc = -pthread_create(&ns->ctl_thread, NULL, ctl_main, ns);
	if (!rc) {
		ns->ctl_running = true;
		return;
	}
	vlog(LOG_ERR, "control channel %s/" STOREDIR_CTL_SOCK ": %s; vsnapctl gc, receive, "
	     "status, iostat, metrics are unavailable", ns->dir, log_strerror(rc));
	ns_ctl_stop(ns);
}

void ns_ctl_stop(struct ns *ns)
{
	atomic_store(&ns->ctl_stop, true);
	if (ns->ctl_running) {
		lock_mutex_lock(&ns->bg_mu);
		pthread_cond_broadcast(&ns->gc_cond);   /* a gc request waiting */
		lock_mutex_unlock(&ns->bg_mu);
		if (write(ns->ctl_wake[1], "x", 1) != 1)
			vlog(LOG_ERR, "control channel: cannot stop its thread: %s", strerror(errno));
		pthread_join(ns->ctl_thread, NULL);
		ns->ctl_running = false;
	}
	if (ns->ctl_fd >= 0) {
		close(ns->ctl_fd);
		unlinkat(ns->dir_fd, STOREDIR_CTL_SOCK, 0);
	}
	for (int i = 0; i < 2; i++)
		if (ns->ctl_wake[i] >= 0)
			close(ns->ctl_wake[i]);
	for (int i = 0; ns->ctl_conns && i < CTL_CONNS_MAX; i++)
		free(ns->ctl_conns[i].b);
	free(ns->ctl_conns);
	ns->ctl_conns = NULL;
	ns->ctl_fd = ns->ctl_wake[0] = ns->ctl_wake[1] = -1;
}
