#!/usr/bin/env bash
# Run the pg_regress suite against a server running under valgrind memcheck
# and fail if valgrind reports an error with a frame in the extension.
# Run as root after test/setup.sh (installs valgrind if missing).  Slow: a
# few minutes.  With SPECS="race_lease_stale ..." (or SPECS=all) it also runs
# those isolation specs under memcheck, for the paths only concurrency takes
# (waits, takeovers); test/check.sh leaves them out to stay within CI's time.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }

. test/cluster.sh
cluster_init idempotency-valgrind
bin=$PG_BIN
dir=$CLUSTER_DIR
rsync -a --exclude .git ./ "$dir/src-copy/"
chown -R postgres "$dir"
cat test/idempotency.conf >> "$dir/data/postgresql.conf"
cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$dir'
port = 54330
CONF

# Every server process runs under memcheck; one log file per process.
as_pg "valgrind --quiet --trace-children=yes --track-origins=no --leak-check=no \
    --error-exitcode=0 --num-callers=30 --log-file='$dir/vg.%p.log' \
    $bin/postgres -D '$dir/data' >'$dir/server.log' 2>&1 &"
for _ in $(seq 1 600); do
    as_pg "$bin/pg_isready -q -h '$dir' -p 54330" && break
    sleep 0.5
done

tests=$(cd test/sql && ls *.sql | sed 's/\.sql$//' | sort | tr '\n' ' ')
status=0
# Smaller sizes than the normal run, whose sizes are what it checks (the
# lock table, bodies of 100 MiB); under memcheck they only multiply the
# time: the one-transaction batches of api.sql and xact.sql at 10,000 keys
# instead of 100,000 and 20,000, hostile.sql's big bodies at 8 MiB.
as_pg "cd '$dir/src-copy' && PGOPTIONS='-c idem_test.batch_keys=10000 -c idem_test.body_mib=8' \
    /usr/lib/postgresql/$PG_MAJOR/lib/pgxs/src/test/regress/pg_regress \
    --host='$dir' --port=54330 --inputdir=test --outputdir='$dir/out' \
    --bindir=$bin $tests" || status=$?
specs=${SPECS:-}
[ "$specs" = all ] && specs=$(cd test/specs && ls *.spec | sed 's/\.spec$//' | sort | tr '\n' ' ')
if [ -n "$specs" ]; then
    as_pg "cd '$dir/src-copy' && /usr/lib/postgresql/$PG_MAJOR/lib/pgxs/src/test/isolation/pg_isolation_regress \
        --host='$dir' --port=54330 --inputdir=test --outputdir='$dir/out-iso' \
        --bindir=$bin $specs" || status=$?
fi
# The sweeper's launcher and workers under memcheck too: switched on, it
# must sweep the regression database's expired keys and report the pass,
# two workers at a time (postgres and regression), one of them skipped
# once for a lock held by an open ALTER DATABASE ... RENAME.
psql_vg() { as_pg "$bin/psql -X -q -At -v ON_ERROR_STOP=1 -h '$dir' -p 54330 $*"; }
sweeper_ok=0
left=unknown
seen=unknown
psql_vg "-d postgres -c 'CREATE DATABASE vg_locked'" &&
psql_vg "-d regression -c \"INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key) SELECT now() - interval '2 days', now() - interval '1 day', 200, 'c', 'vg', 'k' || g FROM generate_series(1, 1000) g\"" &&
psql_vg "-d postgres -c \"ALTER SYSTEM SET idempotency.sweep_interval = '500ms'\"" &&
psql_vg "-d postgres -c \"ALTER SYSTEM SET idempotency.sweeper = on\"" &&
psql_vg "-d postgres -c 'SELECT pg_reload_conf()'" >/dev/null &&
(echo "BEGIN; ALTER DATABASE vg_locked RENAME TO vg_renamed; SELECT pg_sleep(5); ROLLBACK;" |
    as_pg "$bin/psql -X -q -h '$dir' -p 54330 -d postgres" >/dev/null 2>&1 &) &&
for _ in $(seq 1 240); do
    left=$(psql_vg "-d regression -c \"SELECT count(*) FROM idem_keys WHERE scope = 'vg' AND key LIKE 'k%'\"" || echo x)
    seen=$(psql_vg "-d regression -c \"SELECT count(*) FROM idem_sweeper_status WHERE datname = 'regression' AND last_error IS NULL\"" || echo x)
    if [ "$left" = 0 ] && [ "$seen" = 1 ]; then sweeper_ok=1; break; fi
    sleep 0.5
done
if [ $sweeper_ok = 1 ]; then
    echo "valgrind: the sweeper swept the regression database under memcheck"
else
    echo "valgrind: the sweeper did not sweep the regression database within 120 s (left: $left, status rows: $seen)"
    status=1
fi
as_pg "$bin/pg_ctl -D '$dir/data' -m fast -w stop" >/dev/null || true

# Errors whose stack has a frame in our library (postgres itself is not
# built with valgrind support, so its own allocator noise is not ours).
ours=$(grep -l "idempotency.so" "$dir"/vg.*.log 2>/dev/null || true)
if [ -n "$ours" ]; then
    echo "valgrind reported errors in the extension:"
    cat $ours
    status=1
else
    errors=$(cat "$dir"/vg.*.log 2>/dev/null | grep -c "^==[0-9]*== [A-Z]" || true)
    echo "valgrind: no error with a frame in idempotency.so ($errors lines of other reports)"
fi
[ $status -eq 0 ] || cat "$dir"/out/regression.diffs "$dir"/out-iso/regression.diffs 2>/dev/null || true
exit $status
