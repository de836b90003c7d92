# idempotency: PGXS build

EXTENSION    = idempotency
MODULE_big   = idempotency
OBJS         = src/idempotency.o src/idem_guc.o src/idem_fingerprint.o \
               src/idem_lockkey.o src/idem_inval.o src/idem_store.o src/idem_citus.o src/idem_xact.o src/idem_args.o src/idem_scope.o src/idem_key.o \
               src/idem_api.o src/idem_once.o src/idem_lease.o src/idem_retention.o src/idem_retry.o src/idem_response.o src/idem_work.o src/idem_stats.o src/idem_sweeper.o
DATA         = $(wildcard sql/$(EXTENSION)--*.sql)
PGFILEDESC   = "idempotency - idempotency keys for PostgreSQL"

REGRESS        = $(patsubst test/sql/%.sql,%,$(sort $(wildcard test/sql/*.sql)))
ISOLATION      = $(patsubst test/specs/%.spec,%,$(sort $(wildcard test/specs/*.spec)))
ifeq ($(IDEM_RUNNING_SERVER),)
# each suite starts a throwaway cluster of its own with the library preloaded
REGRESS_OPTS   = --inputdir=test --temp-instance=./tmp_check --temp-config=./test/idempotency.conf
ISOLATION_OPTS = --inputdir=test --temp-instance=./tmp_check_iso --temp-config=./test/idempotency.conf
TAP_TESTS      = 1
PROVE_TESTS    = $(sort $(wildcard test/t/*.pl))
else
# IDEM_RUNNING_SERVER=1: pg_regress and isolation against the server that
# PGHOST/PGPORT name, which must preload the library with the settings of
# test/idempotency.conf (the Debian package's tests: pg_virtualenv makes it);
# the TAP tests make clusters of their own and are left out
REGRESS_OPTS   = --inputdir=test
ISOLATION_OPTS = --inputdir=test
endif

PG_CONFIG ?= pg_config
# the version pg_get_loaded_modules() shows (18 on): the control file's
IDEM_VERSION := $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)
PG_CPPFLAGS += -Isrc -DIDEM_VERSION='"$(IDEM_VERSION)"'
PG_CFLAGS   += -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
               -Wno-sign-compare $(IDEM_EXTRA_CFLAGS)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXN: a zip of the committed tree (HEAD), named from the control file's
# version, which test/dist.sh checks META.json agrees with
.PHONY: dist
dist:
	git archive --format zip --prefix=$(EXTENSION)-$(IDEM_VERSION)/ \
	  -o $(EXTENSION)-$(IDEM_VERSION).zip HEAD
