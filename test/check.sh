#!/usr/bin/env bash
# Run every test, on every PostgreSQL major Debian ships here.  Run as root
# on a fresh Debian 12 machine: it installs its packages, builds with
# -Werror, then runs the server-side suites as the postgres user in a
# private copy of the tree (the server refuses root).
#
# Two lanes run side by side, one per core (the suites mostly wait on their
# servers, so neither lane is much slower for the other):
#
#   here, PostgreSQL 15 (Debian's packaged server): pg_regress, isolation
#     and TAP (each suite on its own throwaway cluster), the example clients'
#     end-to-end tests, the regression suite under valgrind, the Debian
#     package (built, installed, its autopkgtest run), the PGXN distribution,
#     and last 15 built with assertions from Debian's source (test/cassert.sh,
#     built in the background meanwhile): pg_regress, isolation and TAP;
#   in the background, 17, 18 and 19 (Debian's packages in debootstrap
#     chroots, test/matrix.sh, made first): pg_regress, isolation and TAP
#     each, then pg_upgrade from 17 to 18 and 18 to 19.  Its output is
#     printed when both lanes are done.
#
# Then pgindent's verdict on src/ (test/pgindent.sh --check, with the sid
# chroot's pgindent), a blue/green move by logical replication from 15 to
# 18, and the example clients against 18.
#
# SKIP_VALGRIND=1 leaves out the valgrind run, IDEM_MAJORS="18" (default
# "17 18 19") chooses the chroot majors and IDEM_MAJORS="" leaves them all
# out, with the upgrade and blue/green tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash test/setup.sh
majors=${IDEM_MAJORS-17 18 19}

# PostgreSQL 15 with assertions (test/cassert.sh) is built, or found in its
# cache, in the background at the lowest priority; its step waits for it.
cassert_log=$(mktemp /tmp/idempotency-cassert-build.XXXXXX)
set -m
nice -n 19 bash test/cassert.sh build </dev/null >"$cassert_log" 2>&1 &
cassert_pid=$!
set +m

work=$(mktemp -d /tmp/idempotency-check.XXXXXX)
lane_log=$(mktemp /tmp/idempotency-chroots.XXXXXX)
lane_pid=
cleanup() {
    # the background lane and the assertions build (each its own process group)
    [ -z "$lane_pid" ] || kill -- -"$lane_pid" 2>/dev/null || true
    [ -z "$cassert_pid" ] || kill -- -"$cassert_pid" 2>/dev/null || true
    bash test/matrix.sh green stop >/dev/null 2>&1 || true
    rm -rf "$work" "$cassert_log" "$lane_log" "$lane_log.counts"
}
trap cleanup EXIT
rsync -a --exclude .git --exclude node_modules ./ "$work/"
chown -R postgres "$work"

passed=0
failed=0
step() {
    local name=$1 t0=$SECONDS
    shift
    echo "##### $name"
    if "$@"; then
        passed=$((passed + 1))
        echo "##### $name: ok ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1))
        echo "##### $name: FAILED ($((SECONDS - t0)) s)"
    fi
}

# The chroots' lane: made (or found in the cache, between runs on one
# machine), then each major's suites, then pg_upgrade between them; its own
# counts go to a file for the summary.
chroot_lane() {
    passed=0
    failed=0
    prepare() {
        local v
        for v in $majors 18 19; do bash test/matrix.sh prepare "$v" || return 1; done
    }
    step "chroots for PostgreSQL $majors" prepare
    # TAP 041 sweeps 1,000 databases on 15; 250 on the other majors keep
    # every code path it tests in a minute less each
    for v in $majors; do
        step "PostgreSQL $v: build with -Werror, pg_regress, isolation and TAP suites" \
            env IDEM_TEST_DATABASES=${IDEM_TEST_DATABASES:-250} bash test/matrix.sh "$v"
    done
    # 17 to 18 says why it does not run with the archive's builds
    step "pg_upgrade from 17 to 18 and from 18 to 19" bash test/matrix.sh upgrade
    echo "$passed $failed" >"$lane_log.counts"
}
if [ -n "$majors" ]; then
    set -m
    chroot_lane </dev/null >"$lane_log" 2>&1 &
    lane_pid=$!
    set +m
fi

# make installcheck as postgres in the private copy, with make variables as
# arguments and environment settings in ENVS; the diffs and TAP logs on
# failure
installcheck() {
    local status=0
    su postgres -c "cd '$work' && ${ENVS:-} make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config installcheck $*" || status=$?
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

step "PostgreSQL 15: pg_regress, isolation and TAP suites" installcheck
step "PostgreSQL 15: example clients" bash examples/run-tests.sh
if [ -z "${SKIP_VALGRIND:-}" ]; then
    # the lease specs too (their waits and takeovers run only under
    # concurrency), 0.4.0's batches, erasures and dead keys, and 0.5.0's idem_call, that wait
    # for each other; all specs (SPECS=all) add about 30 s more under memcheck
    lease_specs=$(cd test/specs && ls race_lease_*.spec | sed 's/\.spec$//' | tr '\n' ' ')
    step "PostgreSQL 15: regression suite under valgrind" \
        env SPECS="$lease_specs race_batch race_erase race_dead race_call" bash test/valgrind.sh
fi
step "Debian package: build, install, autopkgtest" bash test/deb.sh
step "PGXN distribution" bash test/dist.sh

# last here, so that its build has had all the other steps' time
cassert() {
    local status=0
    wait "$cassert_pid" || status=$?
    cassert_pid=
    cat "$cassert_log"
    [ $status -eq 0 ] && bash test/cassert.sh
}
step "PostgreSQL 15 with assertions: pg_regress, isolation and TAP suites" cassert

if [ -n "$majors" ]; then
    lane_status=0
    wait "$lane_pid" || lane_status=$?
    lane_pid=
    echo "##### the chroots' lane, which ran beside the steps above"
    cat "$lane_log"
    if [ -f "$lane_log.counts" ]; then
        read -r lane_passed lane_failed <"$lane_log.counts"
        passed=$((passed + lane_passed))
        failed=$((failed + lane_failed))
    else
        failed=$((failed + 1))
        echo "##### the chroots' lane: FAILED (exit $lane_status before its end)"
    fi

    # src/ as pgindent leaves it, with pgindent from the sid chroot's 18
    step "pgindent: src/ is as pgindent leaves it" bash test/pgindent.sh --check

    # blue (15, the packaged server here) to green (18, the sid chroot) over
    # loopback; then the example clients against green
    green_port=54418
    bluegreen() {
        ENVS="IDEM_GREEN_PORT=$green_port" installcheck REGRESS= ISOLATION= PROVE_TESTS=test/t/051_blue_green.pl
    }
    if IDEM_GREEN_PORT=$green_port bash test/matrix.sh green start; then
        step "blue/green by logical replication from 15 to 18" bluegreen
        step "PostgreSQL 18: example clients" env EXAMPLES_SERVER=127.0.0.1:$green_port bash examples/run-tests.sh
        bash test/matrix.sh green stop
    else
        failed=$((failed + 1))
        echo "##### PostgreSQL 18 server for blue/green: FAILED"
    fi
fi

echo "suites: $passed passed, $failed failed (${SECONDS} s)"
[ "$failed" -eq 0 ]
