#!/usr/bin/env bash
# Soak benchmark: does the key table stay the same size under steady load?
#
# Throwaway cluster (as bench/run.sh) with the sweeper on and autovacuum at
# its defaults; pgbench runs the write path (scenarios/soak_write.sql:
# BEGIN; idem_begin(new key, ttl 5 s); INSERT payments; idem_finish; COMMIT)
# at full speed for SOAK_MINUTES.  Every PRINT_INTERVAL seconds it prints the
# size of idem_keys (pg_total_relation_size: heap + indexes + toast), of its
# heap and of each index, n_live_tup / n_dead_tup, the rows actually there
# (and how many of them are expired), autovacuum runs and the sweeper's last
# pass; then it truncates the business table (not measured).  At the end:
# PASS if the last total size <= 1.5 x the total size at 60 s, else FAIL.
#
# Run as root or as postgres, after `make install`.  Settings (environment):
#   SOAK_MINUTES    minutes of load                       (default 5)
#   PRINT_INTERVAL  seconds between reports; must divide 60 (default 30)
#   TTL             ttl of every key                      (default '5 seconds')
#   SWEEP_INTERVAL  idempotency.sweep_interval            (default '1s')
#   CLIENTS         pgbench -c and -j                     (default 2)
#   SYNC_COMMIT     synchronous_commit on|off             (default on)
#   PG_CONFIG, KEEP=1 as for run.sh
# Exit status: 0 when the run completed (PASS or FAIL is printed), 1 when
# the runner itself failed (pgbench error, client aborted, SQL error).
# Smoke test:  SOAK_MINUTES=1 PRINT_INTERVAL=10 bench/soak.sh
set -euo pipefail

SOAK_MINUTES=${SOAK_MINUTES:-5}
PRINT_INTERVAL=${PRINT_INTERVAL:-30}
TTL=${TTL:-5 seconds}
SWEEP_INTERVAL=${SWEEP_INTERVAL:-1s}
CLIENTS=${CLIENTS:-2}
SYNC_COMMIT=${SYNC_COMMIT:-on}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}

for v in SOAK_MINUTES PRINT_INTERVAL CLIENTS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "soak.sh: $v must be a positive integer" >&2; exit 1; }
done
((60 % PRINT_INTERVAL == 0)) || { echo "soak.sh: PRINT_INTERVAL must divide 60" >&2; exit 1; }
[[ $SYNC_COMMIT == on || $SYNC_COMMIT == off ]] || { echo "soak.sh: SYNC_COMMIT must be on or off" >&2; exit 1; }

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=soak.sh
BENCH_FAIL_RC=1
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_init
bench_workdir idem-soak scenarios

bench_start_cluster <<EOF
idempotency.sweeper = on
idempotency.sweep_interval = '$SWEEP_INTERVAL'
autovacuum = on
shared_buffers = 256MB
fsync = on
synchronous_commit = $SYNC_COMMIT
full_page_writes = on
EOF

psql_q "SET client_min_messages = warning;
        CREATE EXTENSION idempotency;
        -- the business table: truncated at every report, so no autovacuum
        CREATE TABLE payments (id bigserial PRIMARY KEY, key text, amount int)
          WITH (autovacuum_enabled = off);" >/dev/null

log "settings: autovacuum=$(psql_q 'SHOW autovacuum') naptime=$(psql_q 'SHOW autovacuum_naptime')" \
	"sweeper=$(psql_q 'SHOW idempotency.sweeper') sweep_interval=$(psql_q 'SHOW idempotency.sweep_interval')" \
	"sweep_batch_size=$(psql_q 'SHOW idempotency.sweep_batch_size') synchronous_commit=$(psql_q 'SHOW synchronous_commit')" \
	"fsync=$(psql_q 'SHOW fsync') shared_buffers=$(psql_q 'SHOW shared_buffers')"
log "reloptions: idem_keys $(psql_q "SELECT coalesce(reloptions::text, '{}') FROM pg_class WHERE oid = 'idem_keys'::regclass")"

TOTAL=$((SOAK_MINUTES * 60))
log "pgbench: -M prepared -n -c $CLIENTS -j $CLIENTS, ttl '$TTL', $SOAK_MINUTES min; a report every $PRINT_INTERVAL s"
log "sizes in kB; total = pg_total_relation_size(idem_keys) (heap + indexes + toast); rows = count(*), expired = of those, expires_at <= now()"
log "av = autovacuum runs on idem_keys so far; tps = pgbench's last interval; payments = business rows since the last report (then truncated)"
log "sweeper = its last pass (idem_sweeper_status): keys removed / duration"

# One report line; $1 = elapsed seconds.  Sets TOTAL_KB.
HDR=$(printf '%7s %9s %9s %9s %9s %9s %9s %9s %8s %5s %8s %8s %s' \
	elapsed total heap pkey expires live_tup dead_tup rows expired av tps payments sweeper)
report() {
	local line total heap pkey expi live dead rows expired av sweep tps
	line=$(psql_q "SELECT pg_total_relation_size(c.oid) / 1024,
	                      pg_relation_size(c.oid) / 1024,
	                      pg_relation_size('idem_keys_pkey') / 1024,
	                      pg_relation_size('idem_keys_expires_at') / 1024,
	                      s.n_live_tup, s.n_dead_tup,
	                      (SELECT count(*) FROM idem_keys),
	                      (SELECT count(*) FROM idem_keys WHERE expires_at <= now()),
	                      s.autovacuum_count,
	                      coalesce((SELECT keys_removed || '/' || round(extract(epoch FROM last_duration) * 1000) || 'ms'
	                                       || coalesce(' ERROR: ' || last_error, '')
	                                  FROM idem_sweeper_status WHERE datname = current_database()), '-')
	                 FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
	                WHERE c.oid = 'idem_keys'::regclass")
	IFS='|' read -r total heap pkey expi live dead rows expired av sweep <<<"$line"
	# pgbench -P prints the tps of the last interval on stderr
	tps=$(sed -n 's/^progress: \([0-9.]*\) s, \([0-9.]*\) tps.*/\2/p' "$WORK/pgbench.out" | tail -1)
	printf '%6ss %9s %9s %9s %9s %9s %9s %9s %8s %5s %8s %8s %s\n' "$1" "$total" "$heap" "$pkey" "$expi" \
		"$live" "$dead" "$rows" "$expired" "$av" "${tps:--}" "$PAYMENTS" "$sweep"
	TOTAL_KB=$total
}

# Load, a few seconds longer than the soak so that the last report is
# taken under load; the last report is at TOTAL.
START=$(date +%s.%N)
bench_bg "${AS_PG[@]}" "$BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared \
	-T $((TOTAL + 5)) -c "$CLIENTS" -j "$CLIENTS" -P "$PRINT_INTERVAL" -D "ttl=$TTL" \
	-f "$WORK/scenarios/soak_write.sql" bench >"$WORK/pgbench.out" 2>&1
PGBENCH_PID=$BG_PID

echo "$HDR"
REF_KB="" LAST_KB="" MAX_KB=0
for ((t = PRINT_INTERVAL; t <= TOTAL; t += PRINT_INTERVAL)); do
	now=$(date +%s.%N)
	# half a second late, so that pgbench has printed its progress line
	sleep "$(awk -v s="$START" -v t="$t" -v n="$now" 'BEGIN { d = s + t + 0.5 - n; printf "%.3f", (d > 0 ? d : 0) }')"
	if ! kill -0 "$PGBENCH_PID" 2>/dev/null; then
		cat "$WORK/pgbench.out" >&2
		log "soak.sh: pgbench stopped early" >&2
		exit 1
	fi
	PAYMENTS=$(psql_q "SELECT count(*) FROM payments")
	report "$t"
	((t == 60)) && REF_KB=$TOTAL_KB
	((TOTAL_KB > MAX_KB)) && MAX_KB=$TOTAL_KB
	LAST_KB=$TOTAL_KB
	# the business table is not measured; keep it small
	psql_q "TRUNCATE payments" >/dev/null
done

rc=0
bench_bg_done "$PGBENCH_PID" || rc=$?
out=$(cat "$WORK/pgbench.out")
txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
log "pgbench: exit $rc, $txns transactions, ${failed:-0} failed, tps $tps"
if [[ $rc -ne 0 || ${failed:-0} -ne 0 || ${txns:-0} -eq 0 ]]; then
	grep -Ei 'error|abort' <<<"$out" | head -5 >&2
	log "soak.sh: the load did not run cleanly" >&2
	exit 1
fi
err=$(psql_q "SELECT coalesce(string_agg(last_error, '; '), '') FROM idem_sweeper_status")
[[ -z $err ]] || log "note: the sweeper's last pass failed: $err"

verdict=$(awk -v l="$LAST_KB" -v r="$REF_KB" 'BEGIN { print (l <= 1.5 * r ? "PASS" : "FAIL") }')
log "size of idem_keys at 60 s: $REF_KB kB; last ($TOTAL s): $LAST_KB kB; max: $MAX_KB kB;" \
	"last / 60 s = $(awk -v l="$LAST_KB" -v r="$REF_KB" 'BEGIN { printf "%.2f", l / r }') (target <= 1.50)"
echo "$verdict: boundedness (last total size <= 1.5 x the size at 60 s)"
