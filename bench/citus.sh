#!/usr/bin/env bash
# The extension on Citus, against the same work without keys,
# on a throwaway cluster of a coordinator and two workers on this machine.
#
# Needs Citus installed for the server of PG_CONFIG (it is not in Debian's
# packages; docs/citus.md says how it was built for the figures in
# docs/benchmarks.md); without it, says so and exits 2.  The cluster: shared_preload_
# libraries = 'citus,idempotency', synchronous_commit = off (CPU-bound, as
# bench/scale.sh), payments distributed by a bigint tenant, the extension
# set up with idem_citus_setup('payments').  Each round runs six pgbench
# scenarios in rotated order against the coordinator, with random tenants
# (1..1000) and random keys:
#   call   ext   SELECT * FROM idem_call(key, request, 'pay(jsonb)', tenant):
#                 one statement, delegated to the tenant's node, where the
#                 work inserts the payment
#          base  SELECT pay_plain(tenant, request): the same insert in a
#                 delegated function, no key
#   block  ext   BEGIN; idem_begin; INSERT payment; idem_finish; COMMIT
#          base  BEGIN; INSERT payment; COMMIT
#   replay ext   idem_call of a key already done (no work runs)
#          base  SELECT of one payment by its key (a routed read)
# Per scenario the median of the per-round ratios ext/base with a
# distribution-free 95% interval (bench/lib.sh).  CSV in
# bench/results/citus-<ts>.csv (round,scenario,arm,tps).
#
# Run as root or as postgres, after `make install`.  Settings (environment):
#   DURATION  seconds per pgbench run   (default 10)
#   ROUNDS    rounds                    (default 3)
#   CLIENTS   pgbench -c and -j         (default 4)
#   PG_CONFIG, KEEP=1, RESULTS_DIR as for run.sh
# Smoke test:  DURATION=2 ROUNDS=1 bench/citus.sh
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-4}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}
for v in DURATION ROUNDS CLIENTS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "citus.sh: $v must be a positive integer" >&2; exit 2; }
done

SHAREDIR=$("$PG_CONFIG" --sharedir)
if [[ ! -e $SHAREDIR/extension/citus.control ]]; then
	echo "citus.sh: Citus is not installed for this server ($SHAREDIR/extension/citus.control is absent): nothing to measure" >&2
	exit 2
fi

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=citus.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_init
TS=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
mkdir -p "$RESULTS_DIR"
RESULTS=$RESULTS_DIR/citus-$TS.csv
bench_workdir idem-citus

# Three servers on ports PORT, PORT+1, PORT+2: unix sockets in $WORK for
# pgbench and psql, TCP on 127.0.0.1 for Citus's own connections.
NODES=(0 1 2)
stop_nodes() {
	for i in "${NODES[@]}"; do
		[[ -f $WORK/n$i/postmaster.pid ]] && "${AS_PG[@]}" "$BINDIR/pg_ctl" -D "$WORK/n$i" -m fast -w stop >/dev/null 2>&1
	done
	return 0
}
trap 'rc=$?; stop_nodes; (exit $rc); bench_cleanup' EXIT
for i in "${NODES[@]}"; do
	port=$((PORT + i))
	"${AS_PG[@]}" "$BINDIR/initdb" -D "$WORK/n$i" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$WORK/initdb$i.log" 2>&1 \
		|| { cat "$WORK/initdb$i.log" >&2; exit 1; }
	cat >>"$WORK/n$i/postgresql.conf" <<EOF

# --- idempotency Citus benchmark ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
port = $port
shared_preload_libraries = 'citus,idempotency'
max_prepared_transactions = 100
max_connections = 200
shared_buffers = 256MB
synchronous_commit = off
idempotency.sweeper = off
citus.shard_count = 8
EOF
	"${AS_PG[@]}" "$BINDIR/pg_ctl" -D "$WORK/n$i" -l "$WORK/server$i.log" -w start >/dev/null \
		|| { cat "$WORK/server$i.log" >&2; exit 1; }
	"${AS_PG[@]}" "$BINDIR/createdb" -h "$WORK" -p "$port" -U postgres bench
	"${AS_PG[@]}" "$BINDIR/psql" -X -q -h "$WORK" -p "$port" -U postgres -d bench -c 'CREATE EXTENSION citus'
done
log "3 nodes on ports $PORT..$((PORT + 2)) (PostgreSQL $("$BINDIR/postgres" --version | awk '{print $NF}'), Citus $(psql_q "SELECT extversion FROM pg_extension WHERE extname = 'citus'"), $(nproc) CPUs)"

psql_q "
SET client_min_messages = warning;
SELECT citus_set_coordinator_host('127.0.0.1', $PORT);
SELECT citus_add_node('127.0.0.1', $((PORT + 1)));
SELECT citus_add_node('127.0.0.1', $((PORT + 2)));
CREATE EXTENSION idempotency;
CREATE TABLE payments (tenant_id bigint, key text, amount int, PRIMARY KEY (tenant_id, key));
SELECT create_distributed_table('payments', 'tenant_id');
SELECT count(*) FROM idem_citus_setup('payments');" >/dev/null
# apart: Citus sends a function to the workers on connections of its own,
# which do not see the uncommitted table
psql_q "
-- the work idem_call runs: the tenant with its column's type, as Citus
-- wants inside a delegated call
CREATE FUNCTION pay(request jsonb) RETURNS idem_response LANGUAGE sql AS \$\$
  INSERT INTO payments VALUES ((request->>'t')::bigint, request->>'k', (request->>'amount')::int);
  SELECT idem_response(201, '{\"state\": \"paid\"}');
\$\$;
CREATE FUNCTION pay_plain(t bigint, request jsonb) RETURNS int LANGUAGE sql AS \$\$
  INSERT INTO payments VALUES (t, request->>'k', (request->>'amount')::int) RETURNING 201;
\$\$;
SELECT create_distributed_function('pay_plain(bigint,jsonb)', 't', colocate_with := 'payments', force_delegation := true);
" >/dev/null

mkdir -p "$WORK/citus"
cat >"$WORK/citus/call_ext.sql" <<'EOF'
\set t random(1, 1000)
\set r random(1, 9000000000000000000)
SELECT status FROM idem_call('c' || :r, jsonb_build_object('t', :t, 'k', 'c' || :r, 'amount', 500), 'pay(jsonb)'::regprocedure, :t::bigint);
EOF
cat >"$WORK/citus/call_base.sql" <<'EOF'
\set t random(1, 1000)
\set r random(1, 9000000000000000000)
SELECT pay_plain(:t::bigint, jsonb_build_object('k', 'p' || :r, 'amount', 500));
EOF
cat >"$WORK/citus/block_ext.sql" <<'EOF'
\set t random(1, 1000)
\set r random(1, 9000000000000000000)
BEGIN;
SELECT status FROM idem_begin('b' || :r, '{"amount": 500}'::jsonb, :t::bigint);
INSERT INTO payments VALUES (:t, 'b' || :r, 500);
SELECT idem_finish('b' || :r, 201, '{"state": "paid"}'::jsonb, :t::bigint);
COMMIT;
EOF
cat >"$WORK/citus/block_base.sql" <<'EOF'
\set t random(1, 1000)
\set r random(1, 9000000000000000000)
BEGIN;
INSERT INTO payments VALUES (:t, 'q' || :r, 500);
COMMIT;
EOF
# replays: 10,000 keys done beforehand, tenant = key mod 1000 + 1
cat >"$WORK/citus/replay_ext.sql" <<'EOF'
\set g random(1, 10000)
SELECT status FROM idem_call('r' || :g, jsonb_build_object('t', :g % 1000 + 1, 'k', 'r' || :g, 'amount', 500), 'pay(jsonb)'::regprocedure, (:g % 1000 + 1)::bigint);
EOF
cat >"$WORK/citus/replay_base.sql" <<'EOF'
\set g random(1, 10000)
SELECT amount FROM payments WHERE tenant_id = :g % 1000 + 1 AND key = 'r' || :g;
EOF
[[ ${#AS_PG[@]} -eq 0 ]] || chown -R postgres: "$WORK/citus"
log "10,000 keys to replay"
for g in $(seq 1 10000); do
	echo "SELECT status FROM idem_call('r$g', jsonb_build_object('t', $((g % 1000 + 1)), 'k', 'r$g', 'amount', 500), 'pay(jsonb)'::regprocedure, $((g % 1000 + 1))::bigint);"
done | "${AS_PG[@]}" "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d bench >/dev/null

run_one() {	# file -> tps
	"${AS_PG[@]}" "$BINDIR/pgbench" -n -h "$WORK" -p "$PORT" -U postgres -c "$CLIENTS" -j "$CLIENTS" \
		-T "$DURATION" -f "$WORK/citus/$1.sql" bench 2>"$WORK/pgbench.err" \
		| awk '/^tps = / { print $3; exit }'
}

echo "round,scenario,arm,tps" >"$RESULTS"
ARMS=(call_ext call_base block_ext block_base replay_ext replay_base)
for ((round = 1; round <= ROUNDS; round++)); do
	n=${#ARMS[@]}
	for ((i = 0; i < n; i++)); do
		arm=${ARMS[$(((i + round - 1) % n))]}
		tps=$(run_one "$arm")
		[[ -n $tps ]] || { cat "$WORK/pgbench.err" >&2; exit 1; }
		echo "$round,${arm%_*},${arm#*_},$tps" >>"$RESULTS"
		log "round $round $arm: $tps tps"
	done
done

echo
echo "Median tps (of $ROUNDS rounds, $CLIENTS clients, ${DURATION} s each):"
awk -F, 'NR > 1 { v[$2 "_" $3] = v[$2 "_" $3] " " $4 }
END {
	for (k in v) {
		n = split(v[k], a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { x = a[i]; a[i] = a[j]; a[j] = x }
		printf "  %-12s %9.0f\n", k, n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
}' "$RESULTS" | sort
echo "ext / base, per round (replay: a replay against a routed read):"
bench_paired "$RESULTS" ext base
echo "CSV: $RESULTS"
