/*
 * log: see include/vsnapfs/log.h.  State is two ints set before the FUSE
 * loop starts and read afterwards; they are atomics only so that a test may
 * flip them at any time without a data race.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include "vsnapfs/log.h"

static atomic_int use_syslog;
static atomic_int max_level = LOG_INFO;

void log_to_syslog(void)
{
	openlog("vsnapfs", LOG_PID, LOG_DAEMON);
	use_syslog = 1;
}

void log_set_level(int level)
{
	max_level = level;
}

void vlog(int prio, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	if (prio > max_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (use_syslog)
		syslog(prio, "%s", line);
	else
		fprintf(stderr, "vsnapfs: %s\n", line);
}
