#!/usr/bin/env bash
# How long one scrape of the idem_storage view takes on a big key table.
#
# Loads NKEYS keys straight into idem_keys on a throwaway cluster (superuser
# INSERT ... SELECT, as bench/sweeper.sh does): completed keys with a 32-byte
# fingerprint and a small body, LEASED live leased keys of which half have
# run out (abandoned work), and EXPIRED keys the sweeper has not removed
# yet; then VACUUM ANALYZE.  Times SELECT * FROM idem_storage RUNS times
# (the first run and the median), prints what the view reports next to the
# exact figures, and, for scale, the time of one exact count(*) of the table,
# which is what the view avoids.
#
# Run as root or as postgres, after `make install`.  Settings (environment):
#   NKEYS    keys in the table                    (default 10000000)
#   LEASED   live leased keys among them          (default 10000)
#   EXPIRED  expired keys among them              (default 50000)
#   RUNS     timed scrapes                        (default 7)
#   PG_CONFIG, KEEP=1 as for run.sh
# Smoke test:  NKEYS=200000 bench/storage.sh
set -euo pipefail

NKEYS=${NKEYS:-10000000}
LEASED=${LEASED:-10000}
EXPIRED=${EXPIRED:-50000}
RUNS=${RUNS:-7}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}

for v in NKEYS LEASED EXPIRED RUNS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "storage.sh: $v must be a positive integer" >&2; exit 2; }
done
((LEASED + EXPIRED < NKEYS)) || { echo "storage.sh: LEASED + EXPIRED must be below NKEYS" >&2; exit 2; }

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=storage.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_init
bench_workdir idem-storage

# A read-only measurement: durability settings only speed the load up.
bench_start_cluster <<EOF
idempotency.sweeper = off
autovacuum = off
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 8GB
maintenance_work_mem = 512MB
EOF

psql_q "CREATE EXTENSION idempotency" >/dev/null
log "loading $NKEYS keys: $LEASED leased (half of their leases run out), $EXPIRED expired"
t0=$(date +%s)
psql_q "
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key,
                       fingerprint, response_body, lease_token, lease_expires_at,
                       lease_duration, attempts)
SELECT now() - interval '1 hour',
       CASE WHEN g <= $EXPIRED THEN now() - interval '1 minute' ELSE now() + interval '1 day' END,
       CASE WHEN leased THEN NULL ELSE 201 END,
       CASE WHEN leased THEN 'p' ELSE 'c' END,
       'tenant-' || (g % 100), 'req-' || lpad(g::text, 10, '0'),
       sha256(g::text::bytea),
       CASE WHEN leased THEN NULL ELSE jsonb_build_object('id', g, 'state', 'paid') END,
       CASE WHEN leased THEN gen_random_uuid() END,
       CASE WHEN leased THEN now() + CASE WHEN g % 2 = 0 THEN interval '1 hour' ELSE interval '-1 hour' END END,
       CASE WHEN leased THEN interval '30 seconds' END,
       CASE WHEN leased THEN 1 END
FROM generate_series(1, $NKEYS) g,
     LATERAL (SELECT g > $EXPIRED AND g <= $EXPIRED + $LEASED AS leased) l" >/dev/null
psql_q "VACUUM ANALYZE idem_keys" >/dev/null
psql_q "CHECKPOINT" >/dev/null
log "loaded in $(($(date +%s) - t0)) s; table $(psql_q "SELECT pg_size_pretty(pg_table_size('idem_keys'))"), indexes $(psql_q "SELECT pg_size_pretty(pg_indexes_size('idem_keys'))")"

log "idem_storage: $RUNS scrapes"
psql_q "
CREATE FUNCTION pg_temp.scrape_ms(runs int) RETURNS SETOF float8 LANGUAGE plpgsql AS \$\$
DECLARE
  t0 timestamptz;
BEGIN
  FOR i IN 1..runs LOOP
    t0 := clock_timestamp();
    PERFORM * FROM idem_storage;
    RETURN NEXT extract(epoch FROM clock_timestamp() - t0) * 1000;
  END LOOP;
END
\$\$;
SELECT format('first %s ms, median %s ms, max %s ms',
              round((array_agg(ms))[1]::numeric, 2),
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
              round(max(ms)::numeric, 2))
FROM pg_temp.scrape_ms($RUNS) ms" | sed 's/^/    /'

log "what the view reports"
"${AS_PG[@]}" "$BINDIR/psql" -X -q -h "$WORK" -p "$PORT" -U postgres -d bench -P pager=off \
	-c "SELECT * FROM idem_storage"
log "exact figures, for comparison (a full scan)"
"${AS_PG[@]}" "$BINDIR/psql" -X -q -h "$WORK" -p "$PORT" -U postgres -d bench -P pager=off <<'SQL'
\timing on
SELECT count(*) FILTER (WHERE state = 'c' AND expires_at > now()) AS completed_keys,
       count(*) FILTER (WHERE state = 'p' AND expires_at > now()) AS leased_keys,
       count(*) FILTER (WHERE state = 'p' AND expires_at > now() AND lease_expires_at <= now()) AS leases_expired,
       count(*) FILTER (WHERE expires_at <= now()) AS expired_keys
FROM idem_keys;
SQL
