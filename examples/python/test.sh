#!/usr/bin/env bash
# End-to-end test of the Python consumer example; run by examples/run-tests.sh
# with PGHOST/PGPORT/PGUSER/PGDATABASE set.  Uses Debian's python3-psycopg, so
# call the system interpreter rather than whatever python3 is first on PATH.
set -euo pipefail
cd "$(dirname "$0")"
timeout 60 /usr/bin/python3 -B test_consumer.py "$@"
# the same deliveries, consumed in batches through idem_once_batch
exec timeout 60 /usr/bin/python3 -B test_consumer.py "$@" --batch
