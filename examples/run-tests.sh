#!/usr/bin/env bash
# Run the end-to-end test of every example client (examples/*/test.sh)
# against one throwaway cluster with the extension installed.  Run as root
# after test/setup.sh.  Each test.sh gets PGHOST, PGPORT, PGUSER and
# PGDATABASE (a database of its own, with the extension created) in its
# environment and must exit non-zero on failure.
#
# With EXAMPLES_SERVER=host:port the examples run against that server
# instead (trust authentication for postgres, the extension's library
# preloaded): test/check.sh points it at the PostgreSQL 18 server of the
# sid chroot (test/matrix.sh green start), so the clients are tested
# against a newer major too.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

. test/cluster.sh
bin=$PG_BIN
if [ -n "${EXAMPLES_SERVER:-}" ]; then
    host=${EXAMPLES_SERVER%:*}
    port=${EXAMPLES_SERVER##*:}
    psql_admin() { "$bin/psql" -X -q -h "$host" -p "$port" -U postgres "$@"; }
    echo "examples against $(psql_admin -d postgres -Atc 'SELECT version()' | cut -d, -f1) at $host:$port"
else
    port=${EXAMPLES_PORT:-54340}
    cluster_init idempotency-examples
    cluster_start "$port" "-c listen_addresses=127.0.0.1 -c max_connections=200"
    host=$CLUSTER_DIR
    psql_admin() { as_pg "$bin/psql -X -q -h '$host' -p $port $(printf '%q ' "$@")"; }
fi

export PGHOST=$host PGPORT=$port PGUSER=postgres
passed=0
failed=0
for t in examples/*/test.sh; do
    name=$(basename "$(dirname "$t")")
    db="example_$name"
    psql_admin -d postgres -c "DROP DATABASE IF EXISTS $db"
    psql_admin -d postgres -c "CREATE DATABASE $db"
    psql_admin -d "$db" -c 'CREATE EXTENSION idempotency'
    echo "=== example $name"
    if (cd "$root/$(dirname "$t")" && PGDATABASE=$db bash ./test.sh); then
        echo "=== example $name: ok"
        passed=$((passed + 1))
    else
        echo "=== example $name: FAILED"
        failed=$((failed + 1))
    fi
done
echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
