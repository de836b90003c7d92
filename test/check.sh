#!/usr/bin/env bash
# Run every test: pg_regress, isolation specs and TAP tests (each suite on
# its own throwaway cluster), the example clients' end-to-end tests, and
# the regression suite under valgrind.  Run as root on a fresh Debian 12
# machine: it installs its packages, builds with -Werror, then runs the
# server-side suites as the postgres user in a private copy of the tree
# (the server refuses root).  SKIP_VALGRIND=1 leaves out the slow last step.
set -euo pipefail
cd "$(dirname "$0")/.."

bash test/setup.sh

work=$(mktemp -d /tmp/idempotency-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
rsync -a --exclude .git --exclude node_modules ./ "$work/"
chown -R postgres "$work"

passed=0
failed=0
step() {
    local name=$1
    shift
    echo "##### $name"
    if "$@"; then
        passed=$((passed + 1))
        echo "##### $name: ok"
    else
        failed=$((failed + 1))
        echo "##### $name: FAILED"
    fi
}

installcheck() {
    local status=0
    su postgres -c "cd '$work' && make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config installcheck" || status=$?
    if [ $status -ne 0 ]; then
        for f in "$work"/regression.diffs "$work"/output_iso/regression.diffs; do
            [ -f "$f" ] && { echo "=== $f"; cat "$f"; }
        done
        for f in "$work"/tmp_check/log/regress_log_*; do
            [ -f "$f" ] && { echo "=== $f (tail)"; tail -n 60 "$f"; }
        done
    fi
    return $status
}

step "pg_regress, isolation and TAP suites" installcheck
step "example clients" bash examples/run-tests.sh
if [ -z "${SKIP_VALGRIND:-}" ]; then
    # the lease specs too (their waits and takeovers run only under
    # concurrency); all specs (SPECS=all) add about 30 s more under memcheck
    lease_specs=$(cd test/specs && ls race_lease_*.spec | sed 's/\.spec$//' | tr '\n' ' ')
    step "regression suite under valgrind" env SPECS="$lease_specs" bash test/valgrind.sh
fi

echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
