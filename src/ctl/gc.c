/*
 * gc: a garbage-collection pass now, in the running daemon.
 *
 *   vsnapctl gc [--json] [STORE|MOUNTPOINT]
 *
 * Only the daemon may move or remove chunk files (it caches where blocks
 * are), so this asks it through the control channel (CTL_GC) and waits for
 * a pass that started after the request.  What came back is measured here:
 * the host space of the store's chunk files (chunks/ and spare/) before
 * and after.  Spare chunk files are given back by the daemon once writes
 * have stopped for a few seconds (docs/design.md, "Spare chunk files"), so
 * a pass during writes may show less than it will free.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ctl/ctl_int.h"
#include "vsnapfs/ctlmsg.h"
#include "vsnapfs/storedir.h"

uint64_t dir_bytes(const char *dir, const char *sub)
{
	char path[PATH_MAX + 300];
	uint64_t sum = 0;
	struct dirent *de;
	DIR *d;

	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	d = opendir(path);
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		struct stat sb;

		if (de->d_name[0] != '.' && !fstatat(dirfd(d), de->d_name, &sb, 0))
			sum += (uint64_t)sb.st_blocks * 512;
	}
	closedir(d);
	return sum;
}

static uint64_t store_bytes(const char *dir)
{
	return dir_bytes(dir, STOREDIR_CHUNKS) + dir_bytes(dir, STOREDIR_SPARE);
}

static int gc_run(struct store *st)
{
	struct ctl_msg *rep = malloc(sizeof(*rep));
	uint64_t before, after, moved = 0, removed = 0;
	char h1[16], h2[16], h3[16];
	int rc = 2;

	if (!rep) {
		fprintf(stderr, "vsnapctl: gc: out of memory\n");
		goto out;
	}
	if (!st->in_use) {
		fprintf(stderr, "vsnapctl: gc: %s is not mounted: garbage collection runs in the "
			"daemon (mount the store; it collects at once and then every 30 s)\n", st->dir);
		goto out;
	}
	before = store_bytes(st->dir);
	if (chan_ask(st->dir, CTL_GC, rep, false))
		goto out;
	if (ctl_kv_u64(rep, "moved_blocks", &moved) || ctl_kv_u64(rep, "removed_chunks", &removed)) {
		fprintf(stderr, "vsnapctl: gc: the daemon's reply lacks moved_blocks or "
			"removed_chunks\n");
		goto out;
	}
	after = store_bytes(st->dir);
	if (json) {
		printf("{\"store\":");
		json_str(stdout, st->dir);
		printf(",\"moved_blocks\":%" PRIu64 ",\"removed_chunks\":%" PRIu64
		       ",\"chunk_bytes_before\":%" PRIu64 ",\"chunk_bytes_after\":%" PRIu64
		       ",\"freed_bytes\":%" PRIu64 "}\n", moved, removed, before, after,
		       before > after ? before - after : 0);
	} else {
		human(before, h1, sizeof(h1));
		human(after, h2, sizeof(h2));
		human(before > after ? before - after : 0, h3, sizeof(h3));
		printf("gc: moved %" PRIu64 " live block(s), removed %" PRIu64 " chunk file(s); "
		       "chunk files %s -> %s (%s freed)\n", moved, removed, h1, h2, h3);
	}
	rc = 0;
out:
	free(rep);
	return rc;
}

const struct cmd gc_cmd = {
	.name = "gc",
	.synopsis = "[STORE|MOUNTPOINT]",
	.summary = "run a garbage-collection pass now in the daemon that has the store mounted",
	.help = "Waits for a pass that starts after the request and reports the live blocks it\n"
		"moved, the chunk files it removed and the host space freed.  The store must be\n"
		"mounted (default: the current directory).\n",
	.common = CLI_JSON,
	.run_store = gc_run,
};
