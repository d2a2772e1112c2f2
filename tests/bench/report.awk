# report.awk: turn the bench's raw rows into results.md (on stdout), and
# the ratios into ratios_out (TSV: job ratio throughput p99 cpu_per_io
# sync_p99).  Called by tests/bench/run.sh:
#
#   awk -v date= -v elapsed= -v rt= -v disk= -v host= -v build= -v targets="a b .."
#       -v jobs="j1 j2 .." -v ratios_out=FILE -v problems=FILE
#       -f report.awk jobs.tsv kv.tsv joblog.tsv
#
# jobs.tsv: target job status mb_s iops p99_ms sync_p99_ms cpu_s ios runtime_s
#           writeback_s other_cpus kthread_cpus dev_reads bg_cpu_s
#           ("-" where a figure does not apply; status "failed": no figures)
# kv.tsv:   table row column value  (free-form tables, in order of appearance)
# joblog.tsv: target job line  (what a daemon logged during a job)

BEGIN {
	FS = "\t"
	nt = split(targets, T, " ")
	nj = split(jobs, J, " ")
	desc["seqread"] = "sequential read, 1 MiB, QD1"
	desc["coldread"] = "sequential read, 1 MiB, QD1, one pass after the host dropped its caches"
	desc["seqwrite"] = "sequential write, 1 MiB, QD1"
	desc["randread"] = "random read, 4 KiB, QD16"
	desc["randwrite"] = "random write, 4 KiB, QD16"
	desc["fsyncwrite"] = "random write, 4 KiB, QD1, fdatasync after every write"
	# numerator / denominator pairs, vsnapfs first, then context
	nr = split("vsnapfs/raw vsnapfs/fuse-passthrough vsnapfs/qsd-qcow2 " \
		   "vsnapfs-depth64/vsnapfs vsnapfs-depth64/vsnapfs-snap1 vsnapfs-snap1/vsnapfs " \
		   "vsnapfs-depth64/vsnapfs-frag64 vsnapfs-frag64/vsnapfs-snap1 " \
		   "vsnapfs-depth64/qsd-chain32 " \
		   "fuse-passthrough/raw qsd-chain32/qsd-qcow2", R, " ")
	title["startup"] = "Setup and start-up, per target"
	title["host"] = "The host file system alone (no FUSE): new pages and blocks against written ones"
	title["index"] = "Index (SQLite) size after unmount"
	for (j in desc)
		title["pairs-" j] = "Pairs, " j ": vsnapfs, fuse-passthrough, qsd-qcow2, fuse-null and raw side by side, slices in turn"
	title["ops"] = "Snapshot, linked clone and delete on vsnapfs (wall time of the command)"
	title["memory"] = "vsnapfs daemon memory"
	title["scale"] = "Scale (issue 13): index, first read and memory, the figures of the issue's table"
	title["scale-size"] = "Scale: a sparse volume, partly written, opened at growing sizes (fresh daemon each)"
}

# (by name: an empty file has no first line to count)
FNR == 1 { file = FILENAME == ARGV[1] ? 1 : FILENAME == ARGV[2] ? 2 : 3 }

file == 1 {
	k = $1 SUBSEP $2
	st[k] = $3
	if ($3 == "ok") {
		mb[k] = $4; iops[k] = $5; p99[k] = $6; sp99[k] = $7; cpu[k] = $8; ios[k] = $9
		wb[k] = $11; oth[k] = $12; kth[k] = $13; devr[k] = $14; bg[k] = $15
	}
	next
}

file == 2 {
	if (!($1 in tseen)) { tseen[$1] = 1; tord[++ntab] = $1 }
	if (!(($1, $2) in rseen)) { rseen[$1, $2] = 1; rord[$1, ++nrow[$1]] = $2 }
	if (!(($1, $3) in cseen)) { cseen[$1, $3] = 1; cord[$1, ++ncol[$1]] = $3 }
	val[$1, $2, $3] = $4
	next
}

# gc lines are summed per target and job; anything else is kept as is
file == 3 {
	k = $1 SUBSEP $2
	if (match($3, /gc: moved [0-9]+ live block\(s\), removed [0-9]+ chunk file\(s\)/)) {
		split(substr($3, RSTART, RLENGTH), w, " ")
		gcn[k]++; gcmoved[k] += w[3]; gcremoved[k] += w[7]
	} else if (nother[k]++ < 3) {
		other_line[k, nother[k]] = $3
	}
	next
}

function num(x) { return x != "" && x != "-" }
function fmt_mb(x) { return num(x) ? sprintf("%.1f", x) : "–" }
function fmt_iops(x) { return num(x) ? sprintf("%.0f", x) : "–" }
function fmt_ms(x) { return !num(x) ? "–" : (x < 10 ? sprintf("%.3f", x) : sprintf("%.1f", x)) }
function fmt_cpu(x) { return num(x) ? sprintf("%.2f", x) : "–" }
function fmt_r(x) { return x == "" ? "–" : sprintf("%.2f", x) }
function cpu_per_io(k) { return (num(cpu[k]) && ios[k] > 0) ? cpu[k] * 1e6 / ios[k] : "" }
function dev_per_io(k) { return (num(devr[k]) && ios[k] > 0) ? devr[k] / ios[k] : "" }
# text_col(TABLE, COL): true when a cell of the column is words, not a
# figure (then the column is aligned left)
function text_col(tb, col,   r, k) {
	for (r = 1; r <= nrow[tb]; r++) {
		k = tb SUBSEP rord[tb, r] SUBSEP col
		if ((k in val) && val[k] !~ /^([-+]?[0-9.]+( per GiB)?|–|-|n\/a|failed)$/) return 1
	}
	return 0
}
function ratio(a, b) { return (num(a) && num(b) && b + 0 > 0) ? a / b : "" }

END {
	printf "# vsnapfs bench results\n\n"
	printf "%s. `make bench` with BENCH_RUNTIME=%s (%s s per fio job), %s GiB disk; %s.\n", \
		date, rt, rt, disk, host
	printf "Daemon under test: %s.\n", build
	printf "Whole run: %d min %d s. All figures and ratios come from this one run.\n\n", \
		elapsed / 60, elapsed % 60

	# ---- summary: throughput ratios ----
	printf "## Throughput ratios (MB/s and IOPS; above 1 means the first is faster)\n\n"
	printf "| job |"
	for (r = 1; r <= nr; r++) { split(R[r], p, "/"); printf " %s / %s |", p[1], p[2] }
	printf "\n|---|"
	for (r = 1; r <= nr; r++) printf "---:|"
	printf "\n"
	for (j = 1; j <= nj; j++) {
		printf "| %s |", J[j]
		for (r = 1; r <= nr; r++) {
			split(R[r], p, "/")
			printf " %s |", fmt_r(ratio(iops[p[1], J[j]], iops[p[2], J[j]]))
		}
		printf "\n"
	}
	printf "\n"

	# ---- per job ----
	for (j = 1; j <= nj; j++) {
		jb = J[j]
		fs = (jb == "fsyncwrite")
		printf "## %s: %s\n\n", jb, desc[jb]
		printf "| target | MB/s | IOPS | p99 latency, ms |%s daemon CPU, s |", \
			fs ? " p99 fdatasync, ms |" : ""
		printf " daemon CPU per I/O, µs | device reads per I/O | writeback after, s |"
		printf " daemon CPU after, until idle, s |"
		printf " kernel threads, CPUs | other processes, CPUs |\n"
		printf "|---|---:|---:|---:|%s---:|---:|---:|---:|---:|---:|---:|\n", fs ? "---:|" : ""
		for (t = 1; t <= nt; t++) {
			k = T[t] SUBSEP jb
			if (!(k in st)) continue
			if (st[k] != "ok") {
				printf "| %s | FAILED | – | – |%s – | – | – | – | – | – | – |\n", T[t], fs ? " – |" : ""
				continue
			}
			c = cpu_per_io(k); d = dev_per_io(k)
			printf "| %s | %s | %s | %s |%s %s | %s | %s | %s | %s | %s | %s |\n", T[t], fmt_mb(mb[k]),
				fmt_iops(iops[k]), fmt_ms(p99[k]),
				fs ? " " fmt_ms(sp99[k]) " |" : "", fmt_cpu(cpu[k]),
				c == "" ? "–" : sprintf("%.1f", c), d == "" ? "–" : sprintf("%.3f", d),
				num(wb[k]) ? wb[k] : "–",
				num(bg[k]) ? bg[k] : "–",
				num(kth[k]) ? sprintf("%.2f", kth[k]) : "–",
				num(oth[k]) ? sprintf("%.2f", oth[k]) : "–"
		}
		for (r = 1; r <= nr; r++) {
			split(R[r], p, "/")
			a = p[1] SUBSEP jb; b = p[2] SUBSEP jb
			if (st[a] != "ok" || st[b] != "ok") continue
			rt_ = ratio(iops[a], iops[b]); rl = ratio(p99[a], p99[b])
			rs = ratio(sp99[a], sp99[b]); rc = ratio(cpu_per_io(a), cpu_per_io(b))
			printf "| *%s / %s* | *%s* | *%s* | *%s* |%s – | *%s* | – | – | – | – | – |\n", p[1], p[2],
				fmt_r(rt_), fmt_r(rt_), fmt_r(rl), fs ? " *" fmt_r(rs) "* |" : "",
				fmt_r(rc)
			printf "%s\t%s/%s\t%s\t%s\t%s\t%s\n", jb, p[1], p[2], rt_, rl, rc,
				fs ? rs : "" > ratios_out
		}
		printf "\n"
		nl = 0
		for (t = 1; t <= nt; t++) {
			k = T[t] SUBSEP jb
			if (!gcn[k] && !nother[k]) continue
			if (!nl++) printf "Logged by the daemon during this job:\n\n"
			if (gcn[k])
				printf "- %s: %d garbage-collection pass(es), %d live blocks moved, %d chunk files removed\n", \
					T[t], gcn[k], gcmoved[k], gcremoved[k]
			for (n = 1; n <= nother[k] && n <= 3; n++)
				printf "- %s: `%s`\n", T[t], other_line[k, n]
			if (nother[k] > 3) printf "- %s: … %d more lines (logs/)\n", T[t], nother[k] - 3
		}
		if (nl) printf "\n"
	}
	printf "" > ratios_out

	# ---- the other measurements ----
	for (i = 1; i <= ntab; i++) {
		tb = tord[i]
		printf "## %s\n\n| |", (tb in title) ? title[tb] : tb
		for (c = 1; c <= ncol[tb]; c++) printf " %s |", cord[tb, c]
		printf "\n|---|"
		for (c = 1; c <= ncol[tb]; c++) printf "%s|", text_col(tb, cord[tb, c]) ? "---" : "---:"
		printf "\n"
		for (r = 1; r <= nrow[tb]; r++) {
			printf "| %s |", rord[tb, r]
			for (c = 1; c <= ncol[tb]; c++) {
				k = tb SUBSEP rord[tb, r] SUBSEP cord[tb, c]
				printf " %s |", (k in val) ? val[k] : "–"
			}
			printf "\n"
		}
		printf "\n"
	}

	# ---- problems ----
	printf "## Problems\n\n"
	n = 0
	while ((getline line < problems) > 0) {
		if (line == "") continue
		gsub(/\|/, "\\|", line)
		printf "- %s\n", line
		n++
	}
	if (!n) printf "None: every job ran, every daemon exited with status 0, no daemon logged a warning or error.\n"
}
