/*
 * log: errors in plain words; lines to stderr in the foreground.  (The
 * journal, and JOURNAL_STREAM naming another file than our stderr, are
 * checked end to end by t-15-systemd against a stand-in socket: here a
 * line meant for a journal that is not there falls back to stderr, so
 * stderr could not tell.)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <criterion/criterion.h>
#include <criterion/redirect.h>

#include "vsnapfs/log.h"

Test(log, own_error_codes_are_said_in_plain_words)
{
	cr_assert_str_eq(log_strerror(-EBADMSG), "checksum mismatch");
	cr_assert_str_eq(log_strerror(EBADMSG), "checksum mismatch");
	cr_assert_str_eq(log_strerror(-EUCLEAN), "the index is inconsistent");
}

Test(log, other_error_codes_keep_strerror_text)
{
	cr_assert_str_eq(log_strerror(-ENOENT), strerror(ENOENT));
	cr_assert_str_eq(log_strerror(EIO), strerror(EIO));
	cr_assert_str_eq(log_strerror(-ENOSPC), strerror(ENOSPC));
}

Test(log, lines_go_to_stderr_without_journal_stream, .init = cr_redirect_stderr)
{
	unsetenv("JOURNAL_STREAM");
	log_init();
	vlog(LOG_ERR, "hello %d", 7);
	vlog_at(LOG_ERR, &(struct log_where){ .volume = "/vm.img", .offset = 4096, .has_offset = true },
		"at %s", "/vm.img");
	vlog(LOG_DEBUG, "dropped below the level");
	fflush(stderr);
	cr_assert_stderr_eq_str("vsnapfs: hello 7\nvsnapfs: at /vm.img\n");
}
