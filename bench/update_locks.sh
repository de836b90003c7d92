#!/usr/bin/env bash
# How long each update script stops calls on a big key table.
#
# One throwaway cluster.  The extension is created at the oldest version
# that has a base install script, KEYS completed keys are loaded straight
# into idem_keys (superuser INSERT ... SELECT), then the extension is taken
# along its update path one version at a time.  During each step a pgbench
# client keeps calling idem_once with new keys (a call that writes, so it
# takes RowExclusiveLock on idem_keys as every begin does).  For each step
# it prints:
#   - the wall time of the ALTER EXTENSION UPDATE transaction;
#   - the locks that transaction holds on idem_keys and its indexes at its
#     end (it keeps them until it commits) and whether any of them
#     conflicts with RowExclusiveLock, i.e. stops calls that write;
#   - the longest idem_once call during the step and the calls that took
#     over 100 ms, from pgbench's per-transaction log.
#
# Run as root or as postgres, after `make install`.  Settings (environment):
#   KEYS      completed keys loaded             (default 10000000)
#   PG_CONFIG, KEEP=1 as for run.sh
# Smoke test:  KEYS=100000 bench/update_locks.sh
set -euo pipefail

KEYS=${KEYS:-10000000}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}
[[ $KEYS =~ ^[1-9][0-9]*$ ]] || { echo "update_locks.sh: KEYS must be a positive integer" >&2; exit 2; }

PROG=update_locks.sh
# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
RESULTS=$RESULTS_DIR/update_locks-$(date +%Y%m%d-%H%M%S).csv

bench_workdir idem-update-locks
printf '%s\n' "idempotency.sweeper = off" "shared_buffers = 1GB" "maintenance_work_mem = 256MB" \
	"checkpoint_timeout = 1h" "max_wal_size = 16GB" "autovacuum = off" | bench_start_cluster

# the update path from the oldest version with a base script to the default
oldest=$(cd "$BENCH_DIR/../sql" && ls idempotency--*.sql | sed -n 's/^idempotency--\([0-9.]*\)\.sql$/\1/p' | sort -V | head -1)
default=$(psql_q "SELECT default_version FROM pg_available_extensions WHERE name = 'idempotency'")
path=$(psql_q "SELECT path FROM pg_extension_update_paths('idempotency') WHERE source = '$oldest' AND target = '$default'")
[[ -n $path ]] || { echo "update_locks.sh: no update path from $oldest to $default" >&2; exit 1; }
IFS=' ' read -r -a steps <<<"${path//--/ }"
log "update path: $path"

psql_q "CREATE EXTENSION idempotency VERSION '$oldest'" >/dev/null
t0=$SECONDS
# a 33-byte fingerprint (kind byte and digest, as written since 0.3.0) and
# a small response, the shape of a completed key
psql_q "INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
        SELECT now(), now() + interval '30 days', 201, 'c', '', 'loaded-' || g,
               '\\x01'::bytea || sha256(g::text::bytea), jsonb_build_object('id', g, 'state', 'paid')
        FROM generate_series(1, $KEYS) g" >/dev/null
psql_q "VACUUM (ANALYZE) idem_keys" >/dev/null
psql_q "CHECKPOINT" >/dev/null
log "$KEYS keys loaded in $((SECONDS - t0)) s: table $(psql_q "SELECT pg_size_pretty(pg_table_size('idem_keys'))"), indexes $(psql_q "SELECT pg_size_pretty(pg_indexes_size('idem_keys'))")"

# the client ends itself (a failing statement aborts it, and pgbench then
# writes out its log) once probe_stop says the step is over
psql_q "CREATE TABLE probe_stop (done boolean); INSERT INTO probe_stop VALUES (false)" >/dev/null
cat >"$WORK/call.sql" <<'EOF'
\set r random(1, 1000000000000000000)
SELECT idem_once('probe-' || :client_id || '-' || :r);
SELECT done FROM probe_stop \gset
\if :done
SELECT 1 / 0;
\endif
EOF
cat >"$WORK/step.sql" <<'EOF'
SELECT clock_timestamp() AS t0 \gset
BEGIN;
ALTER EXTENSION idempotency UPDATE TO :'target';
SELECT coalesce(string_agg(DISTINCT l.mode, '+' ORDER BY l.mode), '-') AS modes,
       coalesce(bool_or(l.mode NOT IN ('AccessShareLock', 'RowShareLock', 'RowExclusiveLock',
                                       'ShareUpdateExclusiveLock')), false) AS stops_writes
FROM pg_catalog.pg_locks l
WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation'
  AND l.relation IN (SELECT 'idem_keys'::regclass
                     UNION ALL SELECT indexrelid FROM pg_catalog.pg_index WHERE indrelid = 'idem_keys'::regclass) \gset
COMMIT;
SELECT round(extract(epoch FROM clock_timestamp() - :'t0')::numeric, 3) AS seconds \gset
\echo :seconds :modes :stops_writes
EOF
[[ ${#AS_PG[@]} -eq 0 ]] || chown postgres: "$WORK"/*.sql

mkdir -p "$RESULTS_DIR"
echo "from,to,keys,seconds,locks,stops_writes,max_call_ms,calls_over_100ms,calls" >"$RESULTS"
printf '%-8s %-8s %9s  %-60s %-5s %12s %10s\n' from to seconds "locks held on idem_keys and its indexes" stops "longest call" ">100ms"
for ((i = 1; i < ${#steps[@]}; i++)); do
	from=${steps[$((i - 1))]} to=${steps[$i]}
	mkdir -p "$WORK/log-$to"
	[[ ${#AS_PG[@]} -eq 0 ]] || chown postgres: "$WORK/log-$to"
	# the calls run from a second before the step until a second after it
	psql_q "UPDATE probe_stop SET done = false" >/dev/null
	bench_bg "${AS_PG[@]}" bash -c "cd '$WORK/log-$to' && exec '$BINDIR/pgbench' -h '$WORK' -p $PORT -U postgres -n -c 1 -T 3600 -l -f '$WORK/call.sql' bench >pgbench.out 2>&1"
	calls_pid=$BG_PID
	sleep 1
	read -r seconds modes stops < <("${AS_PG[@]}" "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -v target="$to" \
		-h "$WORK" -p "$PORT" -U postgres -d bench -f "$WORK/step.sql")
	sleep 1
	psql_q "UPDATE probe_stop SET done = true" >/dev/null
	bench_bg_done "$calls_pid" || true
	# pgbench -l: client, transaction, latency in microseconds, ...
	read -r max over calls < <(cat "$WORK/log-$to"/pgbench_log.* 2>/dev/null |
		awk '{ n++; if ($3 > m) m = $3; if ($3 > 100000) o++ } END { printf "%.1f %d %d\n", m / 1000, o, n }')
	printf '%-8s %-8s %9s  %-60s %-5s %9s ms %10s\n' "$from" "$to" "$seconds" "$modes" "$stops" "$max" "$over"
	echo "$from,$to,$KEYS,$seconds,$modes,$stops,$max,$over,$calls" >>"$RESULTS"
done
echo "results: $RESULTS"
