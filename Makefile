# memdedup: plain Makefile. `make` builds everything into build/; `make check`
# runs the fast test tier; `make check-all` adds the slow tier; `make demo`
# runs two guests without and with memdedup.
CC      ?= cc
OPT     ?= -O2 -g
SAN     ?=
MD_CFLAGS := $(OPT) $(SAN) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wpointer-arith \
           -Wstrict-prototypes -Wmissing-prototypes -Wvla -Wformat=2 \
           -fno-strict-aliasing -fPIC -fvisibility=hidden -Iinclude -Icommon -Iengine -pthread
LDFLAGS += -pthread $(SAN)
B       := build

AGENT_SRC  := agent/agent.c agent/ours.c agent/regions.c agent/images.c agent/readshare.c \
              agent/accounting.c agent/memroom.c agent/scan.c agent/imagepages.c agent/unseen_io.c agent/writes.c common/stats_file.c common/log.c \
              common/sys.c common/rangeset.c common/policies.c
include engine/engine.mk
include daemon/daemon.mk
AGENT_SRC  += $(ENGINE_SRC) $(COMMON_DAEMON_SRC)
PRELOAD_SRC := agent/preload.c
CLI_SRC    := cli/main.c cli/cmd_run.c cli/elfcheck.c cli/cmd_status.c $(DAEMON_CLI_SRC)
JSON_CFLAGS := $(shell pkg-config --cflags jansson 2>/dev/null)
JSON_LIBS   := $(shell pkg-config --libs jansson 2>/dev/null || echo -ljansson)

AGENT_OBJ   := $(AGENT_SRC:%.c=$(B)/%.o)
PRELOAD_OBJ := $(PRELOAD_SRC:%.c=$(B)/%.o)
CLI_OBJ     := $(CLI_SRC:%.c=$(B)/%.o)

all: $(B)/memdedup $(B)/libmemdedup.so $(B)/libmemdedup-preload.so \
     $(B)/libmemdedup.a tests-build bench-build

$(B)/%.o: %.c $(wildcard include/*.h common/*.h agent/*.h engine/*.h daemon/*.h cli/*.h tests/*.h tests/daemon/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(MD_CFLAGS) $(CFLAGS) $(JSON_CFLAGS) -c -o $@ $<

# The dlopen interposers' real call must be a tail call, so that glibc
# takes the VMM, not us, as the caller ($ORIGIN, RUNPATH, the namespace):
# at -O1 (the sanitizers' tier) gcc makes none unless asked.
$(PRELOAD_OBJ): MD_CFLAGS += -foptimize-sibling-calls

# Made anew: ar r never drops a member, and an object of a file removed
# or renamed since would still be linked.
$(B)/libmemdedup.a: $(AGENT_OBJ)
	rm -f $@
	ar rcs $@ $^

# The library a VMM links: the API only, no interposed libc symbols.
$(B)/libmemdedup.so: $(AGENT_OBJ)
	$(CC) -shared -o $@ $^ $(LDFLAGS) -Wl,-soname,libmemdedup.so

# The library preloaded into an unmodified VMM: the API plus the interposers.
# Its soname is how `memdedup run` tells it from any other library.
$(B)/libmemdedup-preload.so: $(AGENT_OBJ) $(PRELOAD_OBJ)
	$(CC) -shared -o $@ $^ $(LDFLAGS) -ldl -Wl,-soname,libmemdedup-preload.so

$(B)/memdedup: $(CLI_OBJ) $(B)/libmemdedup.a
	$(CC) -o $@ $^ $(LDFLAGS) $(JSON_LIBS)

deps:
	scripts/install-deps.sh all

include tests/tests.mk
include bench/bench.mk
-include guest/guest.mk

demo:
	scripts/install-deps.sh all
	$(MAKE) all guest
	scripts/demo.sh

# Installs where `memdedup run` and the systemd unit look: the preload
# library in lib/memdedup beside nothing else, memdedupd in sbin. The docs
# as in the source tree, so that the README's links hold in share/doc; its
# include/memdedup.h a relative link to the header installed (with DESTDIR
# too).
PREFIX  ?= /usr/local
DESTDIR ?=
install: $(B)/memdedup $(B)/memdedupd $(B)/libmemdedup.so $(B)/libmemdedup-preload.so $(B)/libmemdedup.a
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/lib/memdedup \
	  $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/share/doc/memdedup/docs \
	  $(DESTDIR)$(PREFIX)/share/doc/memdedup/include $(DESTDIR)$(PREFIX)/lib/systemd/system
	install -m 0755 $(B)/memdedup $(DESTDIR)$(PREFIX)/bin/
	install -m 0755 $(B)/memdedupd $(DESTDIR)$(PREFIX)/sbin/
	install -m 0755 $(B)/libmemdedup-preload.so $(DESTDIR)$(PREFIX)/lib/memdedup/
	install -m 0755 $(B)/libmemdedup.so $(DESTDIR)$(PREFIX)/lib/
	install -m 0644 $(B)/libmemdedup.a $(DESTDIR)$(PREFIX)/lib/
	install -m 0644 include/memdedup.h $(DESTDIR)$(PREFIX)/include/
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/memdedup/
	install -m 0644 $(wildcard docs/*.md) $(DESTDIR)$(PREFIX)/share/doc/memdedup/docs/
	ln -sfn ../../../../include/memdedup.h $(DESTDIR)$(PREFIX)/share/doc/memdedup/include/memdedup.h
	sed 's|/usr/local/|$(PREFIX)/|g' daemon/memdedupd.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/memdedupd.service

# clean keeps build/guest: the downloaded kernel and built images are a cache.
clean:
	find $(B) -mindepth 1 -maxdepth 1 ! -name guest -exec rm -rf {} + 2>/dev/null || true

distclean:
	rm -rf $(B) build-asan

.PHONY: all deps demo install clean distclean
