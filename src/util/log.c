/*
 * log: see include/vsnapfs/log.h.  State is a few ints set before the FUSE
 * loop starts and read afterwards; they are atomics only so that a test may
 * flip them at any time without a data race.
 *
 * Why these rules pick the journal (docs/design.md, "Logs"):
 *  - JOURNAL_STREAM is set by systemd for a unit whose stderr is the
 *    journal; it may be inherited by a program started from that unit whose
 *    stderr goes elsewhere, so it counts only when its device:inode is that
 *    of our stderr (the check systemd.exec(5) prescribes).  Writing to the
 *    journal natively then keeps the priority and adds the fields, where
 *    text on stderr would lose both.
 *  - NOTIFY_SOCKET says nothing about where logs go, so it is not used.
 *  - A detached daemon has no stderr; when systemd is the init
 *    (sd_booted()), journald is the system's log daemon and also owns
 *    /dev/log, so the journal loses nothing against syslog and gains the
 *    fields; journald forwards to a syslog daemon if one is configured.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#include "vsnapfs/log.h"

enum { DEST_STDERR, DEST_SYSLOG, DEST_JOURNAL };

static atomic_int dest = DEST_STDERR;
static atomic_int max_level = LOG_INFO;

/* JOURNAL_STREAM="DEV:INO" names our stderr. */
static bool stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	int n = 0;

	if (!e || sscanf(e, "%llu:%llu%n", &dev, &ino, &n) != 2 || e[n] != '\0')
		return false;
	if (fstat(STDERR_FILENO, &st) < 0)
		return false;
	return st.st_dev == (dev_t)dev && st.st_ino == (ino_t)ino;
}

void log_init(void)
{
	dest = stderr_is_journal() ? DEST_JOURNAL : DEST_STDERR;
}

void log_to_syslog(void)
{
	if (sd_booted() > 0) {
		dest = DEST_JOURNAL;
		return;
	}
	openlog("vsnapfs", LOG_PID, LOG_DAEMON);
	dest = DEST_SYSLOG;
}

void log_set_level(int level)
{
	max_level = level;
}

const char *log_strerror(int err)
{
	if (err < 0)
		err = -err;
	switch (err) {
	case EBADMSG:
		return "checksum mismatch";
	case EUCLEAN:
		return "the index is inconsistent";
	default:
		return strerror(err);
	}
}

/* The journal's fields: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and those of w. */
static void journal_send(int prio, const struct log_where *w, const char *line)
{
	char f[7][1100];
	struct iovec iov[7];
	int n = 0;

	snprintf(f[n++], sizeof(f[0]), "MESSAGE=%s", line);
	snprintf(f[n++], sizeof(f[0]), "PRIORITY=%d", prio);
	snprintf(f[n++], sizeof(f[0]), "SYSLOG_IDENTIFIER=vsnapfs");
	if (w && w->volume)
		snprintf(f[n++], sizeof(f[0]), "VOLUME=%s", w->volume);
	if (w && w->has_offset)
		snprintf(f[n++], sizeof(f[0]), "OFFSET=%llu", (unsigned long long)w->offset);
	if (w && w->has_chunk) {
		snprintf(f[n++], sizeof(f[0]), "CHUNK=%016llx", (unsigned long long)w->chunk);
		snprintf(f[n++], sizeof(f[0]), "SLOT=%u", w->slot);
	}
	for (int i = 0; i < n; i++) {
		iov[i].iov_base = f[i];
		iov[i].iov_len = strlen(f[i]);
	}
	/* no journald after all (its socket gone): stderr, which is the
	 * journal's stream or, once detached, /dev/null */
	if (sd_journal_sendv(iov, n) < 0)
		fprintf(stderr, "vsnapfs: %s\n", line);
}

static void vlog_va(int prio, const struct log_where *w, const char *fmt, va_list ap)
{
	char line[1024];

	if (prio > max_level)
		return;
	vsnprintf(line, sizeof(line), fmt, ap);
	switch (dest) {
	case DEST_JOURNAL:
		journal_send(prio, w, line);
		break;
	case DEST_SYSLOG:
		syslog(prio, "%s", line);
		break;
	default:
		fprintf(stderr, "vsnapfs: %s\n", line);
	}
}

void vlog(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog_va(prio, NULL, fmt, ap);
	va_end(ap);
}

void vlog_at(int prio, const struct log_where *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog_va(prio, w, fmt, ap);
	va_end(ap);
}
