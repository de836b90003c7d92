#!/usr/bin/env bash
# Run the end-to-end test of every example client (examples/*/test.sh)
# against one throwaway cluster with the extension installed.  Run as root
# after test/setup.sh.  Each test.sh gets PGHOST, PGPORT, PGUSER and
# PGDATABASE (a database of its own, with the extension created) in its
# environment and must exit non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bin=/usr/lib/postgresql/15/bin
dir=$(mktemp -d /tmp/idempotency-examples.XXXXXX)
chown postgres "$dir"
as_pg() { su postgres -c "$*"; }
cleanup() {
    as_pg "$bin/pg_ctl -D '$dir/data' -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

port=${EXAMPLES_PORT:-54340}
as_pg "$bin/initdb -D '$dir/data' -A trust -U postgres" >/dev/null
as_pg "$bin/pg_ctl -D '$dir/data' -l '$dir/server.log' -w start -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c shared_preload_libraries=idempotency -c max_connections=200\"" >/dev/null

export PGHOST=$dir PGPORT=$port PGUSER=postgres
passed=0
failed=0
for t in examples/*/test.sh; do
    name=$(basename "$(dirname "$t")")
    db="example_$name"
    as_pg "$bin/psql -X -q -h '$dir' -p $port -d postgres -c 'CREATE DATABASE $db'"
    as_pg "$bin/psql -X -q -h '$dir' -p $port -d $db -c 'CREATE EXTENSION idempotency'"
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
