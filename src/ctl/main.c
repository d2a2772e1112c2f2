/*
 * vsnapctl: inspect and maintain a store, mounted or not.
 *
 *   vsnapctl list  [--json] [PATH]                volumes and snapshot files
 *   vsnapctl tree  [--json] STORE|MOUNTPOINT      the clone/snapshot genealogy
 *   vsnapctl check [--json] STORE|MOUNTPOINT      index against chunk files (exit 1: problems)
 *   vsnapctl scrub [--json] STORE|MOUNTPOINT      read and verify every block (exit 1: damage)
 *   vsnapctl diff  [--json] A B                   changed extents between two files of one lineage
 *   vsnapctl gc    [--json] [STORE|MOUNTPOINT]    a garbage-collection pass now (mounted)
 *   vsnapctl send  [-n] [-v] [-c] [--from A] [--resume TOKEN] B   a stream of snapshot B
 *   vsnapctl receive [--force] [--resume] PATH    apply a stream from stdin
 *   vsnapctl receive --token|--abort PATH         a cut receive's token; drop it
 *
 * Exit status: 0 clean, 1 problems (check) or damage (scrub), 2 usage or I/O
 * error.  --json may come anywhere on the command line.  This file parses
 * the command line and calls one cmd_* (one file each; the list is in
 * ctl_int.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl_int.h"

bool json;
bool progress;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: vsnapctl COMMAND [--json] [ARG...]\n"
		"\n"
		"  list  [PATH]               volumes and snapshot files: size, allocated, exclusive\n"
		"                             (freed if deleted) bytes, origin of clones; PATH inside\n"
		"                             a mount lists only what is below it\n"
		"  tree  STORE|MOUNTPOINT     the clone/snapshot genealogy of the map nodes\n"
		"  check STORE|MOUNTPOINT     verify the index against the chunk files\n"
		"  scrub STORE|MOUNTPOINT     read every block and verify its checksum\n"
		"  diff  A B                  extents that differ between two volume or snapshot\n"
		"                             files of one lineage in a mount (offset, length, data\n"
		"                             or zero: what B holds), from the index alone\n"
		"  gc    [STORE|MOUNTPOINT]   run a garbage-collection pass now in the daemon that\n"
		"                             has the store mounted; report what came back\n"
		"  send  [-n] [-v] [-c] [--from A] [--resume TOKEN] B\n"
		"                             write a stream of snapshot file B (DIR/.snapshots/\n"
		"                             FILE@NAME/FILE) to stdout: full, or the changes since\n"
		"                             A (a path, or @NAME); -n: print the exact size only;\n"
		"                             -v: print it first; -c: compress the data (zstd; the\n"
		"                             size printed is then an upper bound)\n"
		"  receive [--force] [--resume] PATH\n"
		"                             apply a stream from stdin to volume PATH of a mount:\n"
		"                             a full stream creates PATH and its snapshot, an\n"
		"                             incremental one adds the next; --force first reverts\n"
		"                             PATH to the base snapshot if it was written since;\n"
		"                             a cut stream keeps what it verified and prints a\n"
		"                             TOKEN: send --resume TOKEN | receive --resume PATH\n"
		"  receive --token|--abort PATH\n"
		"                             print the tokens of the cut receives kept in PATH's\n"
		"                             directory; remove them\n"
		"\n"
		"STORE is a store directory; a MOUNTPOINT of a running vsnapfs names its store.\n"
		"The argument defaults to the current directory.  --json: machine-readable output.\n"
		"Exit status: 0 clean, 1 problems (check), damaged blocks (scrub) or a stream refused\n"
		"(receive), 2 usage or I/O error.\n");
}

/* The value of an option that takes one, or NULL after saying why. */
static const char *optval(int argc, char **argv, int *i)
{
	if (*i + 1 >= argc) {
		fprintf(stderr, "vsnapctl: %s needs a value\n", argv[*i]);
		return NULL;
	}
	return argv[++*i];
}

int main(int argc, char **argv)
{
	struct store st = { 0 };
	struct send_opts so = { 0 };
	struct recv_opts ro = { 0 };
	const char *cmd = NULL, *arg = NULL, *arg2 = NULL;
	bool opts = true;
	int rc;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool sending = cmd && !strcmp(cmd, "send"), receiving = cmd && !strcmp(cmd, "receive");

		if (opts && !strcmp(a, "--")) {
			opts = false;
		} else if (opts && !strcmp(a, "--json")) {
			json = true;
		} else if (opts && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
			usage(stdout);
			return 0;
		} else if (opts && !strcmp(a, "--version")) {
			printf("vsnapctl %s\n", VSNAPFS_VERSION);
			return 0;
		} else if (opts && sending && !strcmp(a, "-n")) {
			so.dry = true;
		} else if (opts && sending && !strcmp(a, "-v")) {
			so.verbose = true;
		} else if (opts && sending && !strcmp(a, "-c")) {
			so.compress = true;
		} else if (opts && sending && !strcmp(a, "--from")) {
			if (!(so.from = optval(argc, argv, &i)))
				return 2;
		} else if (opts && sending && !strcmp(a, "--resume")) {
			if (!(so.resume = optval(argc, argv, &i)))
				return 2;
		} else if (opts && receiving && !strcmp(a, "--force")) {
			ro.force = true;
		} else if (opts && receiving && !strcmp(a, "--resume")) {
			ro.resume = true;
		} else if (opts && receiving && !strcmp(a, "--token")) {
			ro.token = true;
		} else if (opts && receiving && !strcmp(a, "--abort")) {
			ro.abort = true;
		} else if (opts && a[0] == '-' && a[1]) {
			fprintf(stderr, "vsnapctl: unknown option %s\n", a);
			usage(stderr);
			return 2;
		} else if (!cmd) {
			cmd = a;
		} else if (!arg) {
			arg = a;
		} else if (!arg2 && !strcmp(cmd, "diff")) {
			arg2 = a;
		} else {
			fprintf(stderr, "vsnapctl: too many arguments\n");
			usage(stderr);
			return 2;
		}
	}
	if (!cmd) {
		usage(stderr);
		return 2;
	}
	if (strcmp(cmd, "list") && strcmp(cmd, "tree") && strcmp(cmd, "check") &&
	    strcmp(cmd, "scrub") && strcmp(cmd, "diff") && strcmp(cmd, "gc") &&
	    strcmp(cmd, "send") && strcmp(cmd, "receive")) {
		fprintf(stderr, "vsnapctl: unknown command %s\n", cmd);
		usage(stderr);
		return 2;
	}
	if (!strcmp(cmd, "diff") && !arg2) {
		fprintf(stderr, "vsnapctl: diff needs two files, A and B\n");
		usage(stderr);
		return 2;
	}
	if ((!strcmp(cmd, "send") || !strcmp(cmd, "receive")) && !arg) {
		fprintf(stderr, "vsnapctl: %s needs a path\n", cmd);
		usage(stderr);
		return 2;
	}
	progress = isatty(2) && !json;
	if (!strcmp(cmd, "receive")) {
		ro.path = arg;
		rc = cmd_receive(&ro);
		goto out;
	}
	if (store_open(arg ? arg : ".", !strcmp(cmd, "check") || !strcmp(cmd, "scrub"), &st)) {
		store_close(&st);
		return 2;
	}
	if (strcmp(cmd, "list"))
		st.rel[0] = '\0';       /* only list filters by path */
	if (!strcmp(cmd, "list"))
		rc = cmd_list(&st);
	else if (!strcmp(cmd, "tree"))
		rc = cmd_tree(&st);
	else if (!strcmp(cmd, "check"))
		rc = cmd_check(&st);
	else if (!strcmp(cmd, "diff"))
		rc = cmd_diff(&st, arg, arg2);
	else if (!strcmp(cmd, "gc"))
		rc = cmd_gc(&st);
	else if (!strcmp(cmd, "send")) {
		so.b = arg;
		rc = cmd_send(&st, &so);
	} else
		rc = cmd_scrub(&st);
	store_close(&st);
out:
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "vsnapctl: writing output: %s\n", strerror(errno));
		return 2;
	}
	return rc;
}
