/*
 * attr: the attributes of every kind of inode the namespace shows (see the
 * inode kinds in ns_int.h), from what the caller read.  No index query and
 * no namespace lock; an open volume's live size and allocation are read
 * under its vol.lock (vol_size, vol_ref_blocks).
 */
#include <string.h>
#include <sys/stat.h>

#include "ns/ns_int.h"

void ns_attr_fill(struct ns *ns, const struct bmap_inode *in, struct ns_file *f,
		  struct ns_attr *out)
{
	memset(out, 0, sizeof(*out));
	out->ino = in->ino;
	out->uid = in->uid;
	out->gid = in->gid;
	out->atime_ns = in->atime_ns;
	out->mtime_ns = in->mtime_ns;
	out->ctime_ns = in->ctime_ns;
	out->blksize = ns->bs > 65536 ? ns->bs : 65536;
	if (in->kind == BMAP_DIR) {
		out->mode = S_IFDIR | in->mode;
		out->nlink = 2;
		return;
	}
	out->mode = S_IFREG | in->mode;
	out->nlink = in->parent ? 1 : 0;
	out->size = in->size;
	if (f) {
		int64_t w = atomic_load(&f->wtime_ns);

		out->size = vol_size(f->v);
		/* not loaded yet: the caller counts in the index (attr_of in ns.c) */
		out->blocks = vol_ref_blocks(f->v) * (ns->bs / 512);
		if (w > out->mtime_ns)
			out->mtime_ns = out->ctime_ns = w;
	}
}

/* D/.snapshots: a directory owned like D. */
void ns_ctl_attr(struct ns *ns, const struct bmap_inode *d, struct ns_attr *out)
{
	ns_attr_fill(ns, d, NULL, out);
	out->ino = ino_ctl(d->ino);
	out->mode = S_IFDIR | 0755;
}

/* D/.snapshots/S: read-only, owned like D, with the snapshot's time. */
void ns_sroot_attr(struct ns *ns, const struct bmap_snap *s, const struct bmap_inode *d,
		   struct ns_attr *out)
{
	ns_attr_fill(ns, d, NULL, out);
	out->ino = ino_sroot(s->id);
	out->mode = S_IFDIR | 0555;
	out->atime_ns = out->mtime_ns = out->ctime_ns = s->created_ns;
}

/*
 * An inode inside a snapshot.  It keeps the mode it had (as ZFS snapshots
 * do): cp gives a clone its source's mode, and a clone of a disk must be
 * writable; every change fails with EROFS all the same.  A volume reports
 * every byte as allocated (st_blocks * 512 >= st_size), because coreutils
 * cp uses copy_file_range, which is how a linked clone is made, only for a
 * source that looks dense (see docs/snapshots.md).
 */
void ns_sinode_attr(struct ns *ns, uint64_t snap, const struct bmap_inode *in,
		    struct ns_attr *out)
{
	ns_attr_fill(ns, in, NULL, out);
	out->ino = ino_snap(snap, in->ino);
	if (in->kind == BMAP_VOL) {
		out->nlink = 1;
		out->blocks = (in->size + 511) / 512;
	}
}
