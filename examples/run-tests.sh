#!/usr/bin/env bash
# Run the end-to-end test of every example client (examples/*/test.sh)
# against one throwaway cluster with the extension installed.  Run as root
# after test/setup.sh.  Each test.sh gets PGHOST, PGPORT, PGUSER and
# PGDATABASE (a database of its own, with the extension created) in its
# environment and must exit non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

. test/cluster.sh
port=${EXAMPLES_PORT:-54340}
cluster_init idempotency-examples
cluster_start "$port" "-c listen_addresses=127.0.0.1 -c max_connections=200"
bin=$PG_BIN
dir=$CLUSTER_DIR

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
