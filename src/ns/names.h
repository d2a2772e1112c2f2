/*
 * names: validation of user-supplied names (see names.c).
 *
 * Threads: pure functions, any thread.
 */
#ifndef VSNAPFS_NS_NAMES_H
#define VSNAPFS_NS_NAMES_H

/*
 * A file or directory name: 1..255 bytes of valid UTF-8 (no overlong
 * forms, surrogates or C1 controls) without control characters or '/',
 * not "." or "..".  0, -EINVAL, -ENAMETOOLONG, or -EEXIST for
 * ".snapshots" (it exists in every directory).
 */
int ns_name_check(const char *name);

/*
 * A snapshot name: "NAME" or "FILE@NAME", split at the last '@'.  NAME is
 * 1..255 bytes of A-Z a-z 0-9 . _ - + : , not starting with '.'; FILE is
 * not empty.  0 with *file NULL (a directory snapshot) or a copy of FILE
 * the caller frees; -EINVAL, -ENAMETOOLONG, -ENOMEM.
 */
int ns_snap_name_parse(const char *name, char **file);

#endif
