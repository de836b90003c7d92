#!/usr/bin/env bash
# Run every test: pg_regress, isolation specs and TAP tests, each suite on
# its own throwaway cluster.  Run as root on a fresh Debian 12 machine: it
# installs its packages, builds with -Werror, then runs the tests as the
# postgres user in a private copy of the tree (the server refuses root).
set -euo pipefail
cd "$(dirname "$0")/.."

bash test/setup.sh

work=$(mktemp -d /tmp/idempotency-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
rsync -a --exclude .git ./ "$work/"
chown -R postgres "$work"

status=0
su postgres -c "cd '$work' && make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config installcheck" || status=$?
if [ $status -ne 0 ]; then
    for f in "$work"/regression.diffs "$work"/output_iso/regression.diffs; do
        [ -f "$f" ] && { echo "=== $f"; cat "$f"; }
    done
    for f in "$work"/tmp_check/log/regress_log_*; do
        [ -f "$f" ] && { echo "=== $f (tail)"; tail -n 60 "$f"; }
    done
fi
exit $status
