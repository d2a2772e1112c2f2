/*
 * log: one line per event, to one of three places (docs/design.md, "Logs"):
 *
 *   stderr      the foreground (-f, -d) and every program but the daemon;
 *   the journal (sd_journal_send) when stderr is already the journal's
 *               stream (a systemd unit, JOURNAL_STREAM), and for the
 *               detached daemon when systemd is the init (sd_booted()):
 *               then the volume, offset and chunk of a line are fields of
 *               their own (VOLUME=, OFFSET=, CHUNK=, SLOT=);
 *   syslog      for the detached daemon otherwise (ident "vsnapfs").
 *
 * Threads: any thread; a line is written with one call, so lines from
 * different threads do not interleave.
 */
#ifndef VSNAPFS_LOG_H
#define VSNAPFS_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>

/* At start: lines go to the journal if stderr is the journal's stream
 * (JOURNAL_STREAM names its device and inode), else to stderr. */
void log_init(void);
/* Detaching from the terminal: lines go to the journal if systemd is the
 * init, else to syslog. */
void log_to_syslog(void);
/* Lines of priority > level are dropped (default LOG_INFO; -d sets LOG_DEBUG). */
void log_set_level(int level);

void vlog(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* What a line is about, for the journal's fields (a plain value; the text
 * of the line says the same in words).  Fields left 0 / NULL are not sent,
 * except offset and chunk, which are sent when has_offset / has_chunk. */
struct log_where {
	const char *volume;     /* the volume's label (its path in the mount) */
	uint64_t offset;        /* byte offset in the volume */
	uint64_t chunk;         /* chunk file id */
	uint32_t slot;          /* block slot in that chunk file (with chunk) */
	bool has_offset, has_chunk;
};

void vlog_at(int prio, const struct log_where *w, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * An error code in plain words, for log lines: the codes with a meaning of
 * our own get it ("checksum mismatch" for EBADMSG, not "Bad message";
 * "the index is inconsistent" for EUCLEAN), the others strerror()'s text.
 * err may be positive or negative.
 */
const char *log_strerror(int err);

#endif
