/*
 * vsnapctl: inspect and maintain a store, mounted or not.
 *
 *   vsnapctl [--json] COMMAND [OPTION...] [ARG...]
 *   vsnapctl COMMAND --help          the command's options and operands
 *   vsnapctl --help | --version
 *
 * This file takes the options that come before the command and runs the
 * command's struct cmd from the table below.  A command is one file
 * (src/ctl/NAME.c: its struct cmd, with its --help text and its run
 * function, which parses its own options with cli_next; or, for a command
 * that only takes a store, its run_store) and one line of the table.
 *
 * Exit status: 0 clean, 1 problems (check), damage (scrub) or a refused
 * stream (receive), 2 usage or I/O error.
 */
#include <errno.h>
#include <getopt.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl_int.h"

bool json;
bool progress;
bool progress_plain;

/* In the order vsnapctl --help shows them. */
static const struct cmd *const cmds[] = {
	&list_cmd,
	&tree_cmd,
	&check_cmd,
	&scrub_cmd,
	&gc_cmd,
	&diff_cmd,
	&send_cmd,
	&receive_cmd,
	&status_cmd,
	&iostat_cmd,
	&metrics_cmd,
};

#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

static void usage(void)
{
	printf("usage: vsnapctl [--json] COMMAND [OPTION...] [ARG...]\n"
	       "       vsnapctl COMMAND --help\n\n"
	       "Inspect and maintain a vsnapfs store, mounted or not.\n\ncommands:\n");
	for (size_t i = 0; i < NCMDS; i++)
		printf("  %-8s %s\n", cmds[i]->name, cmds[i]->summary);
	printf("\nSTORE is a store directory; a MOUNTPOINT of a running vsnapfs, or a path in\n"
	       "it, names its store.  --json: machine-readable output, before or after the\n"
	       "command.  Exit status: 0 clean, 1 problems (check), damaged blocks (scrub) or\n"
	       "a stream refused (receive), 2 usage or I/O error.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "json", no_argument, NULL, 'j' },
		{ 0 }
	};
	const struct cmd *cmd = NULL;
	int ch, rc, before;
	char buf[8];

	/* the tables measure and escape names by the locale's character set;
	 * numbers stay in the C locale's form */
	setlocale(LC_CTYPE, "");
	opterr = 0;
	while ((before = optind, ch = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			usage();
			return 0;
		case 'V':
			printf("vsnapctl %s\n", VSNAPFS_VERSION);
			return 0;
		case 'j':
			json = true;
			break;
		default:
			fprintf(stderr, "vsnapctl: unknown option '%s'; see vsnapctl --help\n",
				cli_bad_word(argv, before, buf, sizeof(buf)));
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "vsnapctl: no command given; see vsnapctl --help\n");
		return 2;
	}
	for (size_t i = 0; i < NCMDS && !cmd; i++)
		if (!strcmp(argv[optind], cmds[i]->name))
			cmd = cmds[i];
	if (!cmd) {
		fprintf(stderr, "vsnapctl: unknown command '%s'; see vsnapctl --help\n", argv[optind]);
		return 2;
	}
	if (json && !(cmd->common & CLI_JSON))  /* as it says after the command */
		return cli_bad(cmd, "unknown option '--json'");
	rc = cmd->run ? cmd->run(argc - optind, argv + optind) :
		cli_store_main(cmd, argc - optind, argv + optind);
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "vsnapctl: writing output: %s\n", strerror(errno));
		return 2;
	}
	return rc;
}
