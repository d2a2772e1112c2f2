/*
 * log: one line per event, to stderr in the foreground and to syslog once
 * the daemon has detached.
 *
 * Threads: any thread; a line is written with one call, so lines from
 * different threads do not interleave.
 */
#ifndef VSNAPFS_LOG_H
#define VSNAPFS_LOG_H

#include <syslog.h>

/* Route later lines to syslog (ident "vsnapfs") instead of stderr. */
void log_to_syslog(void);
/* Lines of priority > level are dropped (default LOG_INFO; -d sets LOG_DEBUG). */
void log_set_level(int level);

void vlog(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
