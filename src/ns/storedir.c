/*
 * storedir: who holds a store directory's lock (vsnapfs/storedir.h).
 *
 * /proc/locks lines look like "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0
 * EOF"; a waiter's line has "->" after the number.  The device is in hex,
 * major:minor, as the kernel prints it.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "vsnapfs/storedir.h"

int storedir_lock_holder(const char *dir, char *pid, size_t pidlen)
{
	char line[256];
	struct stat sb;
	int rc = 0;
	FILE *f;

	if (pid && pidlen)
		pid[0] = '\0';
	if (stat(dir, &sb))
		return -errno;
	f = fopen("/proc/locks", "re");
	if (!f)
		return -errno;
	while (!rc && fgets(line, sizeof(line), f)) {
		unsigned maj, min;
		unsigned long long ino;
		char kind[16];
		long p;

		if (strstr(line, "->"))
			continue;               /* a waiter, not a holder */
		if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", kind, &p, &maj, &min, &ino) == 5 &&
		    !strcmp(kind, "FLOCK") && maj == major(sb.st_dev) && min == minor(sb.st_dev) &&
		    ino == (unsigned long long)sb.st_ino) {
			if (pid && pidlen)
				snprintf(pid, pidlen, "%ld", p);
			rc = 1;
		}
	}
	fclose(f);
	return rc;
}
