/*
 * tree: the clone/snapshot genealogy of the map nodes, as an indented tree
 * (roots first: nodes without a parent, or whose parent is missing; then
 * whatever a parent loop kept out of reach) or as nested --json.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl_int.h"

static const char *node_kind(const struct model *m, const struct mnode *x)
{
	if (!x->nnames)
		return "internal";
	return m->files[m->names[x->name0]].snap ? "snapshot" : "volume";
}

/* prefix: the tree lines of the levels above ("|   " or "    " each). */
static int tree_print(struct store *st, struct model *m, size_t x, char **prefix, size_t plen,
		      bool last, bool root, const char *note)
{
	struct mnode *nd = &m->nodes[x];
	uint64_t nrows;
	char sz[16];
	int rc;

	nd->shown = true;
	rc = node_rows(st, nd, &nrows);
	if (rc)
		return rc;
	if (json) {
		printf("{\"node\":%" PRIu64 ",\"kind\":\"%s\",\"names\":[", nd->n.id, node_kind(m, nd));
		for (size_t k = 0; k < nd->nnames; k++) {
			printf("%s", k ? "," : "");
			json_str(stdout, m->files[m->names[nd->name0 + k]].path);
		}
		printf("],\"allocated_bytes\":%" PRIu64 ",\"inherit_blocks\":%" PRIu64, nrows * st->bs,
		       nd->n.inherit);
		if (note) {
			printf(",\"note\":");
			json_str(stdout, note);
		}
		printf(",\"children\":[");
	} else {
		printf("%.*s%s", (int)plen, *prefix, root ? "" : last ? "`-- " : "|-- ");
		if (!nd->nnames)
			printf("(internal)");
		for (size_t k = 0; k < nd->nnames; k++)
			printf("%s%s", k ? ", " : "", m->files[m->names[nd->name0 + k]].path);
		human(nrows * st->bs, sz, sizeof(sz));
		printf("  [%s%snode %" PRIu64 ", %s allocated]%s%s\n", nd->nnames ? node_kind(m, nd) : "",
		       nd->nnames ? ", " : "", nd->n.id, sz, note ? " " : "", note ? note : "");
	}
	if (!root) {
		char *p = realloc(*prefix, plen + 5);

		if (!p)
			return -ENOMEM;
		*prefix = p;
		memcpy(p + plen, last ? "    " : "|   ", 5);
		plen += 4;
	}
	for (size_t k = 0, shown = 0; k < nd->nkids && !rc; k++) {
		size_t c = m->kids[nd->kid0 + k];

		if (m->nodes[c].shown)
			continue;       /* a parent loop */
		if (json && shown++)
			printf(",");
		rc = tree_print(st, m, c, prefix, plen, k + 1 == nd->nkids, false, NULL);
	}
	if (json)
		printf("]}");
	return rc;
}

static int tree_run(struct store *st)
{
	struct model m = { 0 };
	char *prefix = strdup("");
	size_t nroots = 0;
	int rc;

	rc = prefix ? model_load(st, &m, NULL) : -ENOMEM;
	if (json && !rc)
		printf("[");
	/* roots: no parent, or a parent that does not exist; then whatever a
	 * parent loop kept out of reach */
	for (int pass = 0; pass < 2 && !rc; pass++) {
		for (size_t i = 0; i < m.nnodes && !rc; i++) {
			const struct mnode *x = &m.nodes[i];
			const char *note = NULL;
			char buf[64];

			if (x->shown || (pass == 0 && x->n.parent && x->parent != NONE))
				continue;
			if (x->n.parent && x->parent == NONE) {
				snprintf(buf, sizeof(buf), "(parent node %" PRIu64 " missing)",
					 x->n.parent);
				note = buf;
			} else if (pass == 1) {
				note = "(in a parent loop)";
			}
			if (json)
				printf("%s\n", nroots ? "," : "");
			nroots++;
			rc = tree_print(st, &m, i, &prefix, 0, true, true, note);
		}
	}
	if (json && !rc)
		printf("%s]\n", nroots ? "\n" : "");
	if (rc)
		fprintf(stderr, "vsnapctl: tree: %s\n", strerror(-rc));
	free(prefix);
	model_free(&m);
	return rc ? 2 : 0;
}

const struct cmd tree_cmd = {
	.name = "tree",
	.synopsis = "[STORE|MOUNTPOINT]",
	.summary = "the clone/snapshot genealogy of the map nodes",
	.help = "STORE is a store directory, MOUNTPOINT a running vsnapfs (default: the current\n"
		"directory).  Each node shows the files that name it and its allocated bytes.\n",
	.common = CLI_JSON,
	.run_store = tree_run,
};
