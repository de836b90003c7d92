#!/usr/bin/env bash
# End-to-end test of the Node.js payments example; run by examples/run-tests.sh
# with PGHOST/PGPORT/PGUSER/PGDATABASE set (a database with the extension).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules ]; then
    npm ci --no-audit --no-fund
fi
exec timeout 90 node --test test/payments.test.js "$@"
