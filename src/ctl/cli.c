/*
 * cli: the command line of one subcommand.
 *
 * Each subcommand is a struct cmd in its own file (name, synopsis, one
 * line of summary, the text of its --help, and its run function) and one
 * line of main.c's table.  Its run function parses its own options with
 * cli_next(), a getopt_long loop that also takes the options every
 * command shares (-h/--help, and those its struct cmd asks for: --json,
 * --progress), says what is wrong in one line ("vsnapctl list:
 * unknown option '--frob'; see vsnapctl list --help"), and checks the
 * number of operands once the options are done.  GNU getopt permutes, so
 * options may follow operands; "--" ends them.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl_int.h"

enum { OPT_JSON = 0x100, OPT_PROGRESS };

/* The options every command of cmd->common takes, and how --help says them. */
static const struct {
	unsigned flag;
	struct option opt;
	const char *help;
} common_opts[] = {
	{ CLI_JSON, { "json", no_argument, NULL, OPT_JSON },
	  "      --json                 machine-readable output\n" },
	{ CLI_PROGRESS, { "progress", required_argument, NULL, OPT_PROGRESS },
	  "      --progress=WHEN        auto: a line redrawn on a TTY (bytes, rate, ETA),\n"
	  "                             none in a pipe (default); plain: a line every few\n"
	  "                             seconds and one at the end, for logs; none\n" },
};

static enum { PROGRESS_AUTO, PROGRESS_PLAIN, PROGRESS_NONE } progress_mode;

void cli_help(const struct cmd *cmd, FILE *f)
{
	fprintf(f, "usage: vsnapctl %s%s%s\n%s\n", cmd->name, *cmd->synopsis ? " " : "",
		cmd->synopsis, cmd->summary);
	if (cmd->help && *cmd->help)
		fprintf(f, "\n%s", cmd->help);
	fprintf(f, "\n  -h, --help                 this help\n");
	for (size_t i = 0; i < sizeof(common_opts) / sizeof(common_opts[0]); i++)
		if (cmd->common & common_opts[i].flag)
			fputs(common_opts[i].help, f);
	if (cmd->help_more)
		cmd->help_more(f);
}

int cli_bad(const struct cmd *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "vsnapctl %s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "; see vsnapctl %s --help\n", cmd->name);
	return 2;
}

/* The merged option tables, built on the first call. */
static void cli_setup(struct cli *c)
{
	size_t n = 0;

	c->all[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	for (size_t i = 0; i < sizeof(common_opts) / sizeof(common_opts[0]); i++)
		if (c->cmd->common & common_opts[i].flag)
			c->all[n++] = common_opts[i].opt;
	for (const struct option *o = c->longopts; o && o->name; o++) {
		assert(n + 1 < CLI_OPTS_MAX);
		c->all[n++] = *o;
	}
	c->all[n] = (struct option){ 0 };
	assert(strlen(c->shortopts ? c->shortopts : "") + 3 < sizeof(c->shorts));
	snprintf(c->shorts, sizeof(c->shorts), ":h%s", c->shortopts ? c->shortopts : "");
	c->ready = true;
	optind = 0;                     /* glibc: start afresh, argv[0] is the command */
	opterr = 0;                     /* we say what is wrong */
}

const char *cli_bad_word(char **argv, int before, char *buf, size_t len)
{
	/* a short option inside a group (-xb) leaves optind on its word, so
	 * argv[optind - 1] is the word before; a non-option that getopt
	 * skipped to reach it never starts with "--" */
	if (optopt > 0 && optopt < 0x100 && (optind == before || strncmp(argv[optind - 1], "--", 2))) {
		snprintf(buf, len, "-%c", optopt);
		return buf;
	}
	return argv[optind - 1];
}

int cli_next(struct cli *c, int argc, char **argv)
{
	int ch, nargs, before;
	const char *word;
	char buf[8];

	if (!c->ready)
		cli_setup(c);
	while ((before = optind, ch = getopt_long(argc, argv, c->shorts, c->all, NULL)) != -1) {
		switch (ch) {
		case 'h':
			cli_help(c->cmd, stdout);
			c->exit = 0;
			return CLI_STOP;
		case OPT_JSON:
			json = true;
			continue;
		case OPT_PROGRESS:
			if (!strcmp(optarg, "auto") || !strcmp(optarg, "plain") ||
			    !strcmp(optarg, "none")) {
				progress_mode = optarg[0] == 'a' ? PROGRESS_AUTO :
						optarg[0] == 'p' ? PROGRESS_PLAIN : PROGRESS_NONE;
				continue;
			}
			c->exit = cli_bad(c->cmd, "--progress takes auto, plain or none, not '%s'",
					  optarg);
			return CLI_STOP;
		case ':':
			c->exit = cli_bad(c->cmd, "option '%s' needs a value", argv[optind - 1]);
			return CLI_STOP;
		case '?':
			/* a long option's trouble: the word is it */
			word = cli_bad_word(argv, before, buf, sizeof(buf));
			if (word != buf && optopt && strchr(word, '='))
				c->exit = cli_bad(c->cmd, "option '%.*s' takes no value",
						  (int)strcspn(word, "="), word);
			else
				c->exit = cli_bad(c->cmd, "unknown option '%s'", word);
			return CLI_STOP;
		default:
			return ch;
		}
	}
	nargs = argc - optind;
	if (nargs < c->min_args) {
		c->exit = cli_bad(c->cmd, "%s", c->missing ? c->missing :
				  "missing arguments");
		return CLI_STOP;
	}
	if (nargs > c->max_args) {
		c->exit = cli_bad(c->cmd, "unexpected argument '%s'", argv[optind + c->max_args]);
		return CLI_STOP;
	}
	progress_plain = progress_mode == PROGRESS_PLAIN;
	progress = progress_plain || (progress_mode == PROGRESS_AUTO && isatty(2) && !json);
	return -1;
}

int cli_store_main(const struct cmd *cmd, int argc, char **argv)
{
	struct cli c = { .cmd = cmd, .max_args = 1 };
	struct store st = { 0 };
	int rc;

	if (cli_next(&c, argc, argv) == CLI_STOP)      /* none of its own: -1 or this */
		return c.exit;
	rc = store_open(optind < argc ? argv[optind] : ".", cmd->chunks, &st) ? 2 :
		cmd->run_store(&st);
	store_close(&st);
	return rc;
}
