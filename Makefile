# vsnapfs: one non-recursive GNU Makefile.  Everything is built under $(B).
#
#   make            build the daemon and vsnapctl
#   make check      install missing Debian packages (as root), build, run every test
#   make asan       the same tests with AddressSanitizer + UBSan (in build-asan/)
#   make tsan       the daemon under ThreadSanitizer, driven by the e2e tests
#   make valgrind   the daemon under Valgrind memcheck, driven by e2e tests
#   make torture    the crash torture with 1000 SIGKILL cycles (TORTURE_CYCLES=N)
#   make fuzz       libFuzzer on the name parsers (FUZZ_SECONDS=60)
#   make bench      benchmark (see docs/performance.md)
#   make demo       create ./demo-store and mount it on ./demo-mnt
#   make install    PREFIX=/usr/local DESTDIR= (the paths below; make uninstall)

PREFIX   ?= /usr/local
DESTDIR  ?=
BINDIR   ?= $(PREFIX)/bin
MANDIR   ?= $(PREFIX)/share/man
DOCDIR   ?= $(PREFIX)/share/doc/vsnapfs
# mount(8) looks for mount.TYPE helpers in /sbin only, whatever PREFIX is
MOUNTHELPERDIR ?= /sbin
# systemd reads units from /usr/local/lib/systemd/system as from /usr/lib/...
UNITDIR  ?= $(PREFIX)/lib/systemd/system
# bash-completion's own directory under PREFIX (it also reads
# /usr/local/share/bash-completion/completions, through XDG_DATA_DIRS)
BASHCOMPDIR ?= $(or $(shell pkg-config --define-variable=prefix=$(PREFIX) \
	--variable=completionsdir bash-completion 2>/dev/null),$(PREFIX)/share/bash-completion/completions)
B        ?= build
SAN      ?=

PKGS     := fuse3 sqlite3 libxxhash libsystemd
# vsnapctl and the tests only (send streams, src/stream): the daemon does not link it
CTL_PKGS := libzstd
# vsnapctl only (its tables and their JSON, src/ctl/table.c)
TABLE_PKGS := smartcols
CC       ?= cc
CFLAGS   ?= -O2 -g
override CFLAGS += -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
	    -D_FILE_OFFSET_BITS=64 -D_GNU_SOURCE -Iinclude -Isrc $(SAN) \
	    $(shell pkg-config --cflags $(PKGS) $(CTL_PKGS) $(TABLE_PKGS))
LDLIBS   += $(shell pkg-config --libs $(PKGS)) -lpthread
override LDFLAGS += $(SAN)

VERSION  := 0.1.0
override CFLAGS += -DVSNAPFS_VERSION='"$(VERSION)"'

LIB_SRC  := $(sort $(wildcard src/*/*.c))
LIB_SRC  := $(filter-out src/ctl/%,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(B)/%.o)
LIB      := $(B)/libvsnapfs.a

DAEMON   := $(B)/vsnapfs
CTL      := $(B)/vsnapctl
CTL_SRC  := $(sort $(wildcard src/ctl/*.c))

UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
TOOL_SRC := $(sort $(wildcard tests/tools/*.c))
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(B)/tools/%)

UNIT     := $(B)/systemd/vsnapfs@.service

all: $(DAEMON) $(CTL) $(B)/mount.vsnapfs $(UNIT)

$(B)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(DAEMON): $(B)/src/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(CTL): $(CTL_SRC:%.c=$(B)/%.o) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(shell pkg-config --libs $(CTL_PKGS) $(TABLE_PKGS)) -lm

# The daemon's installed path goes into the helper and the unit; a change
# of BINDIR rebuilds them (the stamp holds it).
$(B)/bindir.stamp: FORCE
	@mkdir -p $(@D)
	@echo '$(BINDIR)' | cmp -s - $@ || echo '$(BINDIR)' >$@

$(B)/mount.vsnapfs: contrib/mount.vsnapfs $(B)/bindir.stamp
	@mkdir -p $(@D)
	sed 's|@BINDIR@|$(BINDIR)|g' $< >$@ && chmod 755 $@

$(UNIT): contrib/systemd/vsnapfs@.service.in $(B)/bindir.stamp
	@mkdir -p $(@D)
	sed 's|@BINDIR@|$(BINDIR)|g' $< >$@

$(B)/tests/%: tests/unit/%.c $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) $(shell pkg-config --libs $(CTL_PKGS)) \
		-lcriterion

# Test drivers, not code under test: built without the sanitizers, whose
# leak report at exit would replace the exit status the tests check.
$(B)/tools/%: tests/tools/%.c tests/tools/rng.h
	@mkdir -p $(@D)
	$(CC) $(filter-out $(SAN),$(CFLAGS)) -o $@ $< -lpthread

# forgestream writes send streams with the library's encoder (src/stream): it links
# the library as the unit tests do, sanitizers included.
$(B)/tools/forgestream: tests/tools/forgestream.c $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) \
		$(shell pkg-config --libs $(CTL_PKGS))

# powercut is a FUSE server (the disk under t-130-powercut): it needs libfuse.
$(B)/tools/powercut: tests/tools/powercut.c tests/tools/rng.h
	@mkdir -p $(@D)
	$(CC) $(filter-out $(SAN),$(CFLAGS)) $(shell pkg-config --cflags fuse3) -o $@ $< \
		$(shell pkg-config --libs fuse3)

# --- tests ------------------------------------------------------------------

deps:
	@tests/install-deps.sh

# The unit and end-to-end tests run with the lock-order checker on.
unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; VSNAPFS_LOCK_CHECK=1 $$t --jobs 2; done

e2e: all $(TOOL_BIN)
	@tests/e2e/run-all.sh $(B)

check: deps
	@$(MAKE) --no-print-directory all $(UNIT_BIN) $(TOOL_BIN)
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory e2e

# The debug builds (asan, tsan) compile the lock-order checker in
# (include/vsnapfs/lock.h); make check switches it on at run time.
DEBUG_CFLAGS := -O1 -g -fno-omit-frame-pointer -DVSNAPFS_LOCK_CHECK

asan:
	@$(MAKE) --no-print-directory B=build-asan CFLAGS="$(DEBUG_CFLAGS)" \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=all" check

# libFuzzer targets (clang) for the parsers of untrusted bytes.
FUZZ_SECONDS ?= 60
fuzz:
	@mkdir -p build-fuzz/corpus
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 -D_GNU_SOURCE -Iinclude -Isrc \
		-o build-fuzz/fuzz_names tests/fuzz/fuzz_names.c src/ns/names.c
	build-fuzz/fuzz_names -max_total_time=$(FUZZ_SECONDS) -max_len=600 build-fuzz/corpus

# The crash torture of make check (50 cycles), much longer.
torture: all $(TOOL_BIN)
	@TORTURE_CYCLES=$${TORTURE_CYCLES:-1000} VS_TIME_SCALE=$${VS_TIME_SCALE:-10} \
		tests/e2e/run-all.sh $(B) t-100-torture

# The daemon under ThreadSanitizer, driven by the end-to-end tests (Criterion
# does not start under TSan; the unit tests run under asan instead).
tsan:
	@$(MAKE) --no-print-directory B=build-tsan CFLAGS="$(DEBUG_CFLAGS)" \
		SAN="-fsanitize=thread" all $(TOOL_SRC:tests/tools/%.c=build-tsan/tools/%)
	@TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" VS_TIME_SCALE=$${VS_TIME_SCALE:-3} \
		tests/e2e/run-all.sh build-tsan

# The daemon under Valgrind's memcheck (tests/valgrind/vsnapfs), driven by
# end-to-end tests: a memory error or a leak makes the daemon exit 99, which
# fails the test (vs_umount).  VALGRIND_TESTS: which (a name fragment each).
VALGRIND_TESTS ?= t-10-basic t-20-qemu t-40-randio t-75-gc t-80-snapshots t-81-referenced \
	t-96-diff t-97-status t-98-send t-99-receive t-99-dirstream
valgrind: all $(TOOL_BIN)
	@command -v valgrind >/dev/null || { echo "make valgrind: apt-get install valgrind" >&2; exit 1; }
	@mkdir -p $(B)/valgrind
	@set -e; for t in $(VALGRIND_TESTS); do \
		VSNAPFS_REAL=$(CURDIR)/$(B)/vsnapfs VSNAPFS=$(CURDIR)/tests/valgrind/vsnapfs \
		VG_LOGDIR=$(CURDIR)/$(B)/valgrind VS_TIME_SCALE=$${VS_TIME_SCALE:-10} \
		tests/e2e/run-all.sh $(B) $$t; done

bench: all
	@tests/bench/run.sh $(B)

demo: deps
	@$(MAKE) --no-print-directory all
	@tests/demo.sh $(B)

# What make install puts, and make uninstall removes (no more, no less).
MANPAGES := docs/vsnapfs.8 docs/vsnapctl.8
DOCS     := README.md $(sort $(wildcard docs/*.md))
EXAMPLES := contrib/systemd/srv-vms.mount contrib/systemd/vsnapfs.conf.example

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MOUNTHELPERDIR) $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(DOCDIR)/examples
	install -m 755 $(DAEMON) $(CTL) $(DESTDIR)$(BINDIR)/
	install -m 755 $(B)/mount.vsnapfs $(DESTDIR)$(MOUNTHELPERDIR)/mount.vsnapfs
	ln -sf mount.vsnapfs $(DESTDIR)$(MOUNTHELPERDIR)/mount.fuse.vsnapfs
	install -m 644 $(MANPAGES) $(DESTDIR)$(MANDIR)/man8/
	install -m 644 $(UNIT) $(DESTDIR)$(UNITDIR)/
	install -m 644 contrib/bash-completion/vsnapctl $(DESTDIR)$(BASHCOMPDIR)/vsnapctl
	install -m 644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	install -m 644 $(EXAMPLES) $(DESTDIR)$(DOCDIR)/examples/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/vsnapfs $(DESTDIR)$(BINDIR)/vsnapctl \
		$(DESTDIR)$(MOUNTHELPERDIR)/mount.vsnapfs $(DESTDIR)$(MOUNTHELPERDIR)/mount.fuse.vsnapfs \
		$(addprefix $(DESTDIR)$(MANDIR)/man8/,$(notdir $(MANPAGES))) \
		$(DESTDIR)$(UNITDIR)/$(notdir $(UNIT)) $(DESTDIR)$(BASHCOMPDIR)/vsnapctl \
		$(addprefix $(DESTDIR)$(DOCDIR)/,$(notdir $(DOCS))) \
		$(addprefix $(DESTDIR)$(DOCDIR)/examples/,$(notdir $(EXAMPLES)))
	-rmdir $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR)

clean:
	rm -rf build build-asan build-tsan build-fuzz

.PHONY: all deps unit e2e check asan tsan valgrind torture fuzz bench demo install uninstall clean FORCE
.SECONDARY:

-include $(LIB_OBJ:.o=.d) $(CTL_SRC:%.c=$(B)/%.d) $(B)/src/main.d
