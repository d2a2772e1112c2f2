/*
 * vsnapfs: the daemon.  Parses the command line, opens the store, mounts
 * it and serves FUSE requests until unmounted.
 *
 *   vsnapfs [-f] [-d] [-s] [-o OPT[,OPT...]] STORE MOUNTPOINT
 *
 * STARTUP ORDER, AND WHY
 *  1. Parse.  Our -o options are taken out; everything else is kept for
 *     libfuse, and a throw-away fuse_session_new() checks it now, so that
 *     a typo is reported before a new store is created for nothing.
 *  2. Fork (unless -f).  The child does all of the rest while its stderr
 *     is still the terminal; the parent waits on a pipe and exits 0 once
 *     the child is mounted and serving, or with the child's status if it
 *     gives up.  This is fuse_daemonize() turned inside out, because the
 *     store must not cross a fork: SQLite forbids using a connection in a
 *     child of the process that opened it, and POSIX record locks (SQLite's
 *     own) belong to the process that took them, so a parent exiting after
 *     ns_open() would silently drop them.  Refusals (double mount, not a
 *     store, damaged index) still print on the terminal.
 *  3. ns_open(), then the session, signal handlers and the mount.
 *  4. Record our pid in the lock file and start ns's background thread;
 *     only then detach (stdio to /dev/null, log to the journal or syslog:
 *     vsnapfs/log.h) and release the parent, so that every failure up to
 *     here reaches the caller.  Under systemd (Type=notify, NOTIFY_SOCKET
 *     set) READY=1 goes out now: from the daemon itself with -f, else from
 *     the parent as it exits, with MAINPID= the daemon.
 *  5. Serve until unmount (fusermount3 -u ends the loop normally) or
 *     SIGINT/SIGTERM/SIGHUP; unmount, tear down the session, and close the
 *     store last: ns_close() flushes everything.
 *
 * Exit status: 0 clean, 1 failure (message on stderr or in syslog),
 * 2 usage error.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include "vsnapfs/fs.h"
#include "vsnapfs/log.h"
#include "vsnapfs/chunk.h"
#include "vsnapfs/mcache.h"
#include "vsnapfs/ns.h"
#include "vsnapfs/storedir.h"

#define PROG "vsnapfs"

#define THREADS_DEFAULT         16u
#define THREADS_MAX             1024u
#define FLUSH_MS_MAX            3600000u        /* an hour */
#define MAP_CACHE_MIN           (1u << 20)
#define DIRECT_WRITES_MAX       (1ull << 30)
#define WRITE_BEHIND_MAX        (64ull << 20)

struct cmdline {
	const char *store;      /* as given; argv's */
	const char *mnt;        /* as given; argv's */
	struct ns_opts ns;
	unsigned int threads;
	bool foreground, debug, single, help, version;
	bool bad;               /* a value was rejected; the message is out */
	int nonopts;            /* positional arguments seen */
};

enum {
	KEY_BLOCK_SIZE, KEY_FLUSH_MS, KEY_GC_INTERVAL, KEY_SPARE_CHUNKS, KEY_THREADS,
	KEY_MAP_CACHE, KEY_DEFRAG, KEY_NOCREATE, KEY_DIRECT_WRITES, KEY_WRITE_BEHIND,
	KEY_FOREGROUND, KEY_DEBUG, KEY_SINGLE, KEY_HELP, KEY_VERSION,
	KEY_RO, KEY_OURS,
};

static const struct fuse_opt opt_spec[] = {
	FUSE_OPT_KEY("block_size=", KEY_BLOCK_SIZE),
	FUSE_OPT_KEY("flush_ms=", KEY_FLUSH_MS),
	FUSE_OPT_KEY("gc_interval=", KEY_GC_INTERVAL),
	FUSE_OPT_KEY("spare_chunks=", KEY_SPARE_CHUNKS),
	FUSE_OPT_KEY("map_cache=", KEY_MAP_CACHE),
	FUSE_OPT_KEY("direct_writes=", KEY_DIRECT_WRITES),
	FUSE_OPT_KEY("write_behind=", KEY_WRITE_BEHIND),
	FUSE_OPT_KEY("defrag", KEY_DEFRAG),
	FUSE_OPT_KEY("nocreate", KEY_NOCREATE),
	FUSE_OPT_KEY("threads=", KEY_THREADS),
	/* libfuse's fuse_parse_cmdline() spellings, which we do not use:
	 * take them rather than have fuse_session_new() call them unknown. */
	FUSE_OPT_KEY("max_threads=", KEY_THREADS),
	FUSE_OPT_KEY("clone_fd", KEY_OURS),
	FUSE_OPT_KEY("-f", KEY_FOREGROUND),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_KEY("-s", KEY_SINGLE),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("ro", KEY_RO),
	/* Always set by us (see add_fixed_opts and the loop setup in main); a
	 * second copy from the user or /etc/fstab is dropped, not passed. */
	FUSE_OPT_KEY("fsname=", KEY_OURS),
	FUSE_OPT_KEY("subtype=", KEY_OURS),
	FUSE_OPT_KEY("default_permissions", KEY_OURS),
	FUSE_OPT_END
};

static void usage(FILE *f)
{
	fprintf(f, "usage: " PROG " [-f] [-d] [-s] [-o OPT[,OPT...]] STORE MOUNTPOINT\n");
}

static void help(void)
{
	usage(stdout);
	printf("\n"
	       "Mount the vsnapfs store in the directory STORE on MOUNTPOINT.  A missing\n"
	       "or empty STORE directory becomes a new store.  Unmount with\n"
	       "'fusermount3 -u MOUNTPOINT'.\n"
	       "\n"
	       "General options:\n"
	       "    -f                     stay in the foreground, log to stderr\n"
	       "    -d, -o debug           debug log and FUSE request trace (implies -f)\n"
	       "    -s                     serve requests on one thread\n"
	       "    -h, --help             print this help and exit\n"
	       "    -V, --version          print versions and exit\n"
	       "\n"
	       "vsnapfs options:\n"
	       "    -o block_size=SIZE     block size of a new store: a power of two from\n"
	       "                           %uK to %uM, in bytes or with a k/K or m/M suffix\n"
	       "                           (default %u); ignored for an existing store\n"
	       "    -o flush_ms=N          interval of the background flusher in ms\n"
	       "                           (default %u)\n"
	       "    -o map_cache=SIZE      memory for the block-map pages of every open\n"
	       "                           volume, in bytes or with a k/K, m/M or g/G\n"
	       "                           suffix, at least 1M (default %zuM)\n"
	       "    -o gc_interval=S       run garbage collection at least every S\n"
	       "                           seconds (default %u; also after deletions,\n"
	       "                           when space runs low and after every %u MiB\n"
	       "                           written)\n"
	       "    -o defrag              garbage collection also rewrites ranges of\n"
	       "                           256 blocks written in 64 pieces or more as\n"
	       "                           one run (off by default)\n"
	       "    -o spare_chunks=N      keep up to N removed 64 MiB chunk files for\n"
	       "                           reuse while writes stream in, given back after\n"
	       "                           %u s without writes; at most 1/64 of the file\n"
	       "                           system (default %u; 0: none)\n"
	       "    -o direct_writes=SIZE  write runs of at least SIZE bytes around the\n"
	       "                           host's page cache (O_DIRECT), in bytes or with\n"
	       "                           a k/K, m/M or g/G suffix (default %zuK; 0:\n"
	       "                           never)\n"
	       "    -o write_behind=SIZE   let up to SIZE bytes of those writes go to the\n"
	       "                           device after the write returns (an fsync waits\n"
	       "                           for them; ext4 and XFS stores only; default\n"
	       "                           %zuM, at most 64M; 0: never)\n"
	       "    -o threads=N           at most N FUSE worker threads (default %u);\n"
	       "                           max_threads=N is the same\n"
	       "    -o nocreate            refuse to create a new store: a missing or\n"
	       "                           empty STORE fails (for fstab and units)\n"
	       "    -o ro                  mount read-only\n"
	       "\n"
	       "Always set: -o fsname=vsnapfs:STORE,subtype=vsnapfs,default_permissions\n"
	       "\n"
	       "FUSE options (passed through):\n",
	       CHUNK_BLOCK_MIN >> 10, CHUNK_BLOCK_MAX >> 20, NS_DEFAULT_BLOCK_SIZE,
	       NS_DEFAULT_FLUSH_MS, MCACHE_DEFAULT_BYTES >> 20, NS_DEFAULT_GC_INTERVAL_S, NS_GC_AFTER_BYTES >> 20,
	       NS_SPARE_IDLE_MS / 1000, NS_DEFAULT_SPARE_CHUNKS, (size_t)NS_DEFAULT_DIRECT_WRITES >> 10,
	       (size_t)NS_DEFAULT_WRITE_BEHIND >> 20,
	       THREADS_DEFAULT);
	fflush(stdout);
	fuse_lowlevel_help();
}

static void version(void)
{
	printf(PROG " %s\nlibfuse %s\n", VSNAPFS_VERSION, fuse_pkgversion());
	fflush(stdout);
	fuse_lowlevel_version();
}

/* "4096", "64k", "1M", "2G": bytes, with an optional binary suffix. */
static int parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned int shift = 0;
	char *end;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	if (*end == 'k' || *end == 'K')
		shift = 10;
	else if (*end == 'm' || *end == 'M')
		shift = 20;
	else if (*end == 'g' || *end == 'G')
		shift = 30;
	if (shift)
		end++;
	if (*end)
		return -EINVAL;
	if (v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_uint(const char *s, unsigned int min, unsigned int max, unsigned int *out)
{
	unsigned long v;
	char *end;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = (unsigned int)v;
	return 0;
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct cmdline *cl = data;
	const char *val = strchr(arg, '=');
	uint64_t size;

	val = val ? val + 1 : "";
	switch (key) {
	case KEY_BLOCK_SIZE:
		if (parse_size(val, &size) < 0 || !chunk_block_size_valid(size)) {
			fprintf(stderr, PROG ": block_size=%s: must be a power of two "
				"from %uK to %uM\n", val, CHUNK_BLOCK_MIN >> 10, CHUNK_BLOCK_MAX >> 20);
			cl->bad = true;
		} else {
			cl->ns.block_size = (uint32_t)size;
		}
		return 0;
	case KEY_FLUSH_MS:
		if (parse_uint(val, 1, FLUSH_MS_MAX, &cl->ns.flush_interval_ms) < 0) {
			fprintf(stderr, PROG ": flush_ms=%s: must be 1 to %u\n", val,
				FLUSH_MS_MAX);
			cl->bad = true;
		}
		return 0;
	case KEY_GC_INTERVAL:
		if (parse_uint(val, 1, 86400, &cl->ns.gc_interval_s) < 0) {
			fprintf(stderr, PROG ": gc_interval=%s: must be 1 to 86400\n", val);
			cl->bad = true;
		}
		return 0;
	case KEY_SPARE_CHUNKS:
		if (parse_uint(val, 0, NS_MAX_SPARE_CHUNKS, &cl->ns.spare_chunks) < 0) {
			fprintf(stderr, PROG ": spare_chunks=%s: must be 0 to %u\n", val,
				NS_MAX_SPARE_CHUNKS);
			cl->bad = true;
		}
		return 0;
	case KEY_MAP_CACHE:
		if (parse_size(val, &size) < 0 || size < MAP_CACHE_MIN || size > SIZE_MAX / 2) {
			fprintf(stderr, PROG ": map_cache=%s: must be at least 1M\n", val);
			cl->bad = true;
		} else {
			cl->ns.map_cache_bytes = (size_t)size;
		}
		return 0;
	case KEY_DIRECT_WRITES:
		if (parse_size(val, &size) < 0 || size > DIRECT_WRITES_MAX) {
			fprintf(stderr, PROG ": direct_writes=%s: must be 0 to 1G\n", val);
			cl->bad = true;
		} else {
			cl->ns.direct_write_bytes = (size_t)size;
		}
		return 0;
	case KEY_WRITE_BEHIND:
		if (parse_size(val, &size) < 0 || size > WRITE_BEHIND_MAX) {
			fprintf(stderr, PROG ": write_behind=%s: must be 0 to 64M\n", val);
			cl->bad = true;
		} else {
			cl->ns.write_behind_bytes = (size_t)size;
		}
		return 0;
	case KEY_THREADS:
		if (parse_uint(val, 1, THREADS_MAX, &cl->threads) < 0) {
			fprintf(stderr, PROG ": threads=%s: must be 1 to %u\n", val,
				THREADS_MAX);
			cl->bad = true;
		}
		return 0;
	case KEY_FOREGROUND:
		cl->foreground = true;
		return 0;
	case KEY_DEBUG:
		/* Handed back to libfuse after the option check (main). */
		cl->debug = true;
		cl->foreground = true;
		return 0;
	case KEY_SINGLE:
		cl->single = true;
		return 0;
	case KEY_HELP:
		cl->help = true;
		return 0;
	case KEY_VERSION:
		cl->version = true;
		return 0;
	case KEY_DEFRAG:
		cl->ns.defrag_min_exts = NS_DEFRAG_MIN_EXTS;
		return 0;
	case KEY_NOCREATE:
		cl->ns.nocreate = true;
		return 0;
	case KEY_RO:
		/* Both: ns refuses writes, the kernel shows the mount as ro. */
		cl->ns.readonly = true;
		return 1;
	case KEY_OURS:
		return 0;
	case FUSE_OPT_KEY_NONOPT:
		if (cl->nonopts == 0)
			cl->store = arg;
		else if (cl->nonopts == 1)
			cl->mnt = arg;
		cl->nonopts++;
		return 0;
	default:
		return 1;       /* FUSE's, or unknown: libfuse decides */
	}
}

/*
 * The store's absolute path, malloc'ed, or NULL with errno set.  The store
 * may not exist yet (ns_open creates it), so realpath() is only used when
 * it can be.
 */
static char *store_abs_path(const char *store)
{
	char cwd[PATH_MAX];
	char *p;
	size_t len;

	p = realpath(store, NULL);
	if (p || errno != ENOENT)
		return p;
	if (store[0] == '/') {
		p = strdup(store);
	} else {
		if (!getcwd(cwd, sizeof(cwd)))
			return NULL;
		if (asprintf(&p, "%s/%s", cwd, store) < 0)
			return NULL;
	}
	if (!p)
		return NULL;
	len = strlen(p);
	while (len > 1 && p[len - 1] == '/')
		p[--len] = '\0';
	return p;
}

/* A mountpoint of /dev/fd/N is a /dev/fuse descriptor that mount.fuse3's
 * drop_privileges passed in; libfuse takes it as it is. */
static bool is_fuse_fd(const char *mnt)
{
	unsigned int fd;
	int n = 0;

	return sscanf(mnt, "/dev/fd/%u%n", &fd, &n) == 1 && mnt[n] == '\0';
}

/* -o fsname=vsnapfs:STORE,subtype=vsnapfs,default_permissions */
static int add_fixed_opts(struct fuse_args *args, const char *store_abs)
{
	char *fsname = NULL;
	char *opts = NULL;
	int rc = -ENOMEM;

	if (asprintf(&fsname, "fsname=" STOREDIR_FSNAME_PREFIX "%s", store_abs) < 0) {
		fsname = NULL;
		goto out;
	}
	/* Escaped: a comma in the store's path must not split the option. */
	if (fuse_opt_add_opt_escaped(&opts, fsname) ||
	    fuse_opt_add_opt(&opts, "subtype=" PROG) ||
	    fuse_opt_add_opt(&opts, "default_permissions") ||
	    fuse_opt_add_arg(args, "-o") ||
	    fuse_opt_add_arg(args, opts))
		goto out;
	rc = 0;
out:
	free(opts);
	free(fsname);
	return rc;
}

/*
 * Let libfuse judge the options it will get, on a copy: fuse_session_new()
 * consumes its arguments.  It prints its own message on failure.
 */
static int check_fuse_opts(const struct fuse_args *args)
{
	struct fuse_args copy = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se;
	int i;

	for (i = 0; i < args->argc; i++) {
		if (fuse_opt_add_arg(&copy, args->argv[i])) {
			fuse_opt_free_args(&copy);
			return -ENOMEM;
		}
	}
	se = fuse_session_new(&copy, fs_ops(), sizeof(*fs_ops()), NULL);
	fuse_opt_free_args(&copy);
	if (!se)
		return -EINVAL;
	fuse_session_destroy(se);
	return 0;
}

/*
 * Detach from the caller, keeping the terminal for error messages until
 * daemon_ready().  Returns in the child only, with *ready_fd set; the
 * parent waits and exits: 0 once the child is ready, else the child's
 * exit status.
 */
static int daemon_start(int *ready_fd)
{
	int fds[2];
	int status;
	char c;
	pid_t pid;
	ssize_t n;

	if (pipe2(fds, O_CLOEXEC) < 0) {
		perror(PROG ": pipe");
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		perror(PROG ": fork");
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid > 0) {
		close(fds[1]);
		do
			n = read(fds[0], &c, 1);
		while (n < 0 && errno == EINTR);
		if (n == 1) {
			/* under systemd (Type=notify), the mount is up and
			 * the child is the service's main process from now on */
			sd_notifyf(0, "MAINPID=%ld\nREADY=1", (long)pid);
			_exit(0);
		}
		/* The child gave up (it said why on stderr) or died. */
		while (waitpid(pid, &status, 0) < 0) {
			if (errno != EINTR)
				_exit(1);
		}
		_exit(WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : 1);
	}
	close(fds[0]);
	/* A new session: no controlling terminal, so no SIGHUP when it goes. */
	if (setsid() < 0) {
		perror(PROG ": setsid");
		close(fds[1]);
		return -1;
	}
	*ready_fd = fds[1];
	return 0;
}

/* Mounted and serving: let go of the terminal and release the parent. */
static void daemon_ready(int ready_fd)
{
	int nullfd;
	char c = 0;

	log_to_syslog();
	nullfd = open("/dev/null", O_RDWR);
	if (nullfd >= 0) {
		dup2(nullfd, STDIN_FILENO);
		dup2(nullfd, STDOUT_FILENO);
		dup2(nullfd, STDERR_FILENO);
		if (nullfd > STDERR_FILENO)
			close(nullfd);
	}
	if (write(ready_fd, &c, 1) != 1)
		vlog(LOG_WARNING, "could not release the starting process: %m");
	close(ready_fd);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct cmdline cl = {
		.threads = THREADS_DEFAULT,
		.ns = { .spare_chunks = NS_DEFAULT_SPARE_CHUNKS,
			.direct_write_bytes = NS_DEFAULT_DIRECT_WRITES,
			.write_behind_bytes = NS_DEFAULT_WRITE_BEHIND },
	};
	struct fuse_loop_config *loop_cfg = NULL;
	struct fuse_session *se = NULL;
	struct ns *ns = NULL;
	char *store = NULL;
	char *mnt = NULL;
	char msg[512] = "";
	bool created = false;
	int ready_fd = -1;
	int status = 1;
	int rc;

	if (fuse_opt_parse(&args, &cl, opt_spec, opt_proc) < 0) {
		usage(stderr);
		status = 2;
		goto out_args;
	}
	if (cl.help) {
		help();
		status = 0;
		goto out_args;
	}
	if (cl.version) {
		version();
		status = 0;
		goto out_args;
	}
	if (cl.bad) {
		status = 2;
		goto out_args;
	}
	if (cl.nonopts != 2) {
		fprintf(stderr, PROG ": %s\n", cl.nonopts < 2 ? "STORE and MOUNTPOINT are required"
							     : "too many arguments");
		usage(stderr);
		fprintf(stderr, "Try '" PROG " --help' for more information.\n");
		status = 2;
		goto out_args;
	}
	if (cl.debug)
		log_set_level(LOG_DEBUG);
	log_init();

	/* Absolute, because the daemon runs in "/" so as not to pin the
	 * directory it was started from. */
	store = store_abs_path(cl.store);
	if (!store) {
		fprintf(stderr, PROG ": %s: %s\n", cl.store, strerror(errno));
		goto out_args;
	}
	mnt = is_fuse_fd(cl.mnt) ? strdup(cl.mnt) : realpath(cl.mnt, NULL);
	if (!mnt) {
		fprintf(stderr, PROG ": bad mount point '%s': %s\n", cl.mnt, strerror(errno));
		goto out_args;
	}
	if (add_fixed_opts(&args, store) < 0) {
		fprintf(stderr, PROG ": out of memory\n");
		goto out_args;
	}
	if (check_fuse_opts(&args) < 0) {
		status = 2;
		goto out_args;
	}
	/* Only now: checking the options twice would print the debug
	 * banner of libfuse twice. */
	if (cl.debug && fuse_opt_add_arg(&args, "-d")) {
		fprintf(stderr, PROG ": out of memory\n");
		goto out_args;
	}

	if (!cl.foreground && daemon_start(&ready_fd) < 0)
		goto out_args;

	rc = ns_open(store, &cl.ns, &ns, &created, msg, sizeof(msg));
	if (rc < 0) {
		fprintf(stderr, PROG ": %s\n", msg[0] ? msg : strerror(-rc));
		goto out_args;
	}
	if (created)
		fprintf(stderr, PROG ": created a new store in %s (block size %u)\n", store,
			ns_block_size(ns));

	se = fuse_session_new(&args, fs_ops(), sizeof(*fs_ops()), ns);
	if (!se)
		goto out_ns;
	if (fuse_set_signal_handlers(se) < 0)
		goto out_session;
	if (fuse_session_mount(se, mnt) < 0)
		goto out_signals;

	if (chdir("/") < 0)
		vlog(LOG_WARNING, "chdir /: %m");
	ns_set_pid(ns, getpid());
	ns_set_inval(ns, fs_inval_entry, se);
	rc = ns_start(ns);
	if (rc < 0) {
		fprintf(stderr, PROG ": cannot start the background thread: %s\n", strerror(-rc));
		goto out_unmount;
	}
	if (ready_fd >= 0) {
		daemon_ready(ready_fd);
		ready_fd = -1;
	} else {
		/* -f under systemd (Type=notify): mounted and serving.  Does
		 * nothing without NOTIFY_SOCKET. */
		sd_notifyf(0, "READY=1\nSTATUS=serving %s on %s", store, mnt);
	}
	vlog(LOG_INFO, "serving %s on %s", store, mnt);

	if (cl.single) {
		rc = fuse_session_loop(se);
	} else {
		loop_cfg = fuse_loop_cfg_create();
		if (!loop_cfg) {
			vlog(LOG_ERR, "out of memory");
			goto out_unmount;
		}
		fuse_loop_cfg_set_max_threads(loop_cfg, cl.threads);
		/* One /dev/fuse descriptor per worker: no contention on the
		 * one read queue, and replies go out on the reader's fd. */
		fuse_loop_cfg_set_clone_fd(loop_cfg, 1);
		rc = fuse_session_loop_mt(se, loop_cfg);
	}
	sd_notify(0, "STOPPING=1");
	/* 0: unmounted; > 0: the signal that stopped us; < 0: an error. */
	if (rc < 0)
		vlog(LOG_ERR, "FUSE loop failed: %s", log_strerror(rc));
	else
		status = 0;

out_unmount:
	/* no receive's commit may call into the session from here on */
	ns_stop_control(ns);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_ns:
	rc = ns_close(ns);
	if (rc < 0) {
		vlog(LOG_ERR, "closing the store %s failed: %s; changes since the last "
		     "flush may be lost", store, strerror(-rc));
		status = 1;
	} else if (status == 0) {
		vlog(LOG_INFO, "%s unmounted, store closed", mnt);
	}
out_args:
	fuse_loop_cfg_destroy(loop_cfg);
	fuse_opt_free_args(&args);
	free(mnt);
	free(store);
	return status;
}
