#!/usr/bin/env bash
# End-to-end test of the lease example; run by examples/run-tests.sh with
# PGHOST/PGPORT/PGUSER/PGDATABASE set.  Uses Debian's python3-psycopg, so call
# the system interpreter rather than whatever python3 is first on PATH.
set -euo pipefail
cd "$(dirname "$0")"
exec timeout 60 /usr/bin/python3 -B test_lease.py "$@"
