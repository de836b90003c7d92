# shellcheck shell=bash
# A throwaway cluster for test/demo.sh, test/valgrind.sh and
# examples/run-tests.sh.  Sourced, not run; the caller runs as root.
#
#   cluster_init PREFIX      initdb into a new /tmp/PREFIX.XXXXXX (CLUSTER_DIR),
#                            owned by postgres; an EXIT trap stops the server
#                            and removes the directory (KEEP=1 keeps it)
#   cluster_start PORT OPTS  start it on PORT with a unix socket in
#                            CLUSTER_DIR, the extension preloaded, and OPTS
#                            (more postgres command-line options)
#   as_pg CMD                run a shell command line as postgres

# Debian 12's 15, or PG_MAJOR's (test/matrix.sh 19 valgrind)
PG_MAJOR=${PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin

as_pg() { su postgres -c "$*"; }

cluster_cleanup() {
    as_pg "$PG_BIN/pg_ctl -D '$CLUSTER_DIR/data' -m immediate stop" >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] || rm -rf "$CLUSTER_DIR"
}

cluster_init() {
    CLUSTER_DIR=$(mktemp -d "/tmp/$1.XXXXXX")
    chown postgres "$CLUSTER_DIR"
    trap cluster_cleanup EXIT
    as_pg "$PG_BIN/initdb -D '$CLUSTER_DIR/data' -A trust -U postgres" >/dev/null
}

cluster_start() {
    CLUSTER_PORT=$1
    as_pg "$PG_BIN/pg_ctl -D '$CLUSTER_DIR/data' -l '$CLUSTER_DIR/server.log' -w start \
        -o \"-p $CLUSTER_PORT -k '$CLUSTER_DIR' -c shared_preload_libraries=idempotency $2\"" >/dev/null
}
