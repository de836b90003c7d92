#!/usr/bin/env bash
# What each way of making a request idempotent costs at the database
# : throughput in interleaved pgbench rounds, as a ratio to the
# same request with no idempotency at all, and WAL per request record by
# record (pg_waldump --stats after a CHECKPOINT: the records each way
# writes, and the full-page images that the first change of a page after a
# checkpoint adds).  pgbench runs over the unix socket, so every statement
# is a round trip, as it is for an application.
#
#   none          INSERT INTO payments ... (autocommit): the floor, pays again on a retry
#   ext_call      SELECT ... FROM idem_call(key, request, 'pay(jsonb)') (autocommit): 1 round trip
#   ext_classic   BEGIN; idem_begin; INSERT payments; idem_finish; COMMIT: 5 round trips
#   handwritten   BEGIN; INSERT keys ON CONFLICT DO NOTHING; INSERT payments;
#                 UPDATE keys SET response; COMMIT (a key table by hand): 5
#   once_folded   INSERT INTO payments ... SELECT ... WHERE idem_once(id) (autocommit): 1
#   once_classic  BEGIN; SELECT idem_once(id); INSERT payments; COMMIT: 4
#
# Every way stores the same response ({"id", "amount", "to"}), no headers;
# the once ways store none (a consumer has no response).
# Run as root or postgres after make install.  Settings (environment):
#   DURATION  seconds per pgbench run        (default 5)
#   ROUNDS    interleaved rounds             (default 3)
#   REQUESTS  requests per client, WAL pass  (default 5000)
#   CLIENTS   pgbench -c and -j              (default 2)
#   WAYS      a subset of the ways above     (default: all)
#   PG_CONFIG, KEEP=1                        as for bench/run.sh
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-5000}
CLIENTS=${CLIENTS:-2}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}
for v in DURATION ROUNDS REQUESTS CLIENTS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "patterns.sh: $v must be a positive integer" >&2; exit 2; }
done

PROG=patterns.sh
# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init
bench_workdir idem-patterns
printf '%s\n' "idempotency.sweeper = off" "shared_buffers = 256MB" "fsync = on" \
	"checkpoint_timeout = 1h" "max_wal_size = 4GB" "autovacuum = off" | bench_start_cluster

psql_q "CREATE EXTENSION idempotency" >/dev/null
"${AS_PG[@]}" "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d bench <<'SQL'
CREATE TABLE payments (id bigserial PRIMARY KEY, idem_key text, amount int, to_account text);
CREATE FUNCTION pay(req jsonb) RETURNS idem_response LANGUAGE plpgsql AS $$
DECLARE p payments;
BEGIN
  INSERT INTO payments (idem_key, amount, to_account)
    VALUES (req ->> 'key', (req ->> 'amount')::int, req ->> 'to') RETURNING * INTO p;
  RETURN idem_response(201, jsonb_build_object('id', p.id, 'amount', p.amount, 'to', p.to_account));
END $$;
-- brandur's key table, as bench/http's handwritten variant has it
CREATE TABLE hand_keys (key text PRIMARY KEY, request jsonb NOT NULL, response_code int,
                        response_body jsonb, created_at timestamptz NOT NULL DEFAULT now());
SQL

cat >"$WORK/none.sql" <<'EOF'
\set r random(1, 9000000000000000000)
INSERT INTO payments (idem_key, amount, to_account) VALUES ('n' || :client_id || '-' || :r, 500, 'acct_42');
EOF
cat >"$WORK/ext_call.sql" <<'EOF'
\set r random(1, 9000000000000000000)
SELECT status FROM idem_call('c' || :client_id || '-' || :r, jsonb_build_object('key', 'c' || :client_id || '-' || :r, 'amount', 500, 'to', 'acct_42'), 'pay(jsonb)');
EOF
cat >"$WORK/ext_classic.sql" <<'EOF'
\set r random(1, 9000000000000000000)
BEGIN;
SELECT status FROM idem_begin('k' || :client_id || '-' || :r, '{"amount": 500, "to": "acct_42"}'::jsonb);
INSERT INTO payments (idem_key, amount, to_account) VALUES ('k' || :client_id || '-' || :r, 500, 'acct_42') RETURNING id \gset
SELECT idem_finish('k' || :client_id || '-' || :r, 201, jsonb_build_object('id', :id::bigint, 'amount', 500, 'to', 'acct_42'));
COMMIT;
EOF
cat >"$WORK/once_folded.sql" <<'EOF'
\set r random(1, 9000000000000000000)
INSERT INTO payments (idem_key, amount, to_account) SELECT 'o' || :client_id || '-' || :r, 500, 'acct_42' WHERE idem_once('o' || :client_id || '-' || :r);
EOF
cat >"$WORK/once_classic.sql" <<'EOF'
\set r random(1, 9000000000000000000)
BEGIN;
SELECT idem_once('q' || :client_id || '-' || :r);
INSERT INTO payments (idem_key, amount, to_account) VALUES ('q' || :client_id || '-' || :r, 500, 'acct_42');
COMMIT;
EOF
cat >"$WORK/handwritten.sql" <<'EOF'
\set r random(1, 9000000000000000000)
BEGIN;
INSERT INTO hand_keys (key, request) VALUES ('h' || :client_id || '-' || :r, '{"amount": 500, "to": "acct_42"}') ON CONFLICT DO NOTHING;
INSERT INTO payments (idem_key, amount, to_account) VALUES ('h' || :client_id || '-' || :r, 500, 'acct_42') RETURNING id \gset
UPDATE hand_keys SET response_code = 201, response_body = jsonb_build_object('id', :id::bigint, 'amount', 500, 'to', 'acct_42') WHERE key = 'h' || :client_id || '-' || :r;
COMMIT;
EOF
[[ ${#AS_PG[@]} -eq 0 ]] || chown postgres: "$WORK"/*.sql

# the same number of rows in every table before the measured runs, so that
# no way pays for the first pages of a table or index alone
ALL_WAYS=(none ext_call ext_classic handwritten once_folded once_classic)
read -r -a WAY_LIST <<<"${WAYS:-${ALL_WAYS[*]}}"
for w in "${WAY_LIST[@]}"; do
	[[ " ${ALL_WAYS[*]} " == *" $w "* ]] || { echo "patterns.sh: unknown way $w" >&2; exit 2; }
done
[[ ${WAY_LIST[0]} == none ]] || { echo "patterns.sh: WAYS must start with none (the floor)" >&2; exit 2; }
pgb() {	# way, pgbench options...
	local w=$1
	shift
	"${AS_PG[@]}" "$BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared \
		-c "$CLIENTS" -j "$CLIENTS" "$@" -f "$WORK/$w.sql" bench
}
for w in "${WAY_LIST[@]}"; do pgb "$w" -t "$REQUESTS" >/dev/null 2>&1; done

# throughput: every way once per round, in an order rotated per round
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
RESULTS=$RESULTS_DIR/patterns-$(date +%Y%m%d-%H%M%S).csv
mkdir -p "$RESULTS_DIR"
echo "round,way,tps,p99_ms" >"$RESULTS"
nways=${#WAY_LIST[@]}
log "pgbench -M prepared -T $DURATION -c $CLIENTS -j $CLIENTS; $ROUNDS rounds x $nways ways"
for ((round = 1; round <= ROUNDS; round++)); do
	for ((i = 0; i < nways; i++)); do
		w=${WAY_LIST[(i + round - 1) % nways]}
		psql_q "VACUUM (ANALYZE) payments, hand_keys, idem_keys" >/dev/null
		rm -f "$WORK"/pgbench_log.*
		out=$(cd "$WORK" && pgb "$w" -T "$DURATION" -l 2>&1) || { echo "$out" >&2; exit 1; }
		tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
		# per-transaction latencies (us, third field) from pgbench's log
		p99=$(cat "$WORK"/pgbench_log.* | awk '{ print $3 }' | sort -n |
			awk '{ a[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f", a[i] / 1000 }')
		echo "$round,$w,$tps,$p99" >>"$RESULTS"
		printf '  round %d %-13s tps=%9.1f p99=%6s ms\n' "$round" "$w" "$tps" "$p99"
	done
done

echo
echo "medians over $ROUNDS rounds; ratio = median of the per-round way/none ratios"
printf '%-13s %10s %8s %9s %10s\n' way tps ratio "p99 ms" "p99 ratio"
for w in "${WAY_LIST[@]}"; do
	awk -F, -v w="$w" '
	function median(a, n,   i, j, t) {
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	NR > 1 { tps[$1, $2] = $3; p99[$1, $2] = $4; rounds[$1] = 1 }
	END {
		for (r in rounds) {
			t[++n] = tps[r, w]; l[n] = p99[r, w]
			q[n] = tps[r, w] / tps[r, "none"]; pq[n] = p99[r, "none"] > 0 ? p99[r, w] / p99[r, "none"] : 0
		}
		printf "%-13s %10.0f %8.3f %9.2f %10.2f\n", w, median(t, n), median(q, n), median(l, n), median(pq, n)
	}' "$RESULTS"
done

printf '\nWAL per request (%d requests x %d clients per way, each after a CHECKPOINT)\n' "$REQUESTS" "$CLIENTS"
printf '%-13s %9s %9s %9s %9s %9s %9s %9s\n' way "WAL/req" records FPI heap btree commit other
for w in "${WAY_LIST[@]}"; do
	psql_q "CHECKPOINT" >/dev/null
	lsn0=$(psql_q "SELECT pg_current_wal_lsn()")
	pgb "$w" -t "$REQUESTS" >"$WORK/$w.out" 2>&1 || { cat "$WORK/$w.out" >&2; exit 1; }
	lsn1=$(psql_q "SELECT pg_current_wal_lsn()")
	n=$((REQUESTS * CLIENTS))
	# Type  N (%)  record size (%)  FPI size (%)  combined size (%)
	"${AS_PG[@]}" "$BINDIR/pg_waldump" -p "$DATA/pg_wal" -s "$lsn0" -e "$lsn1" --stats=record 2>/dev/null |
		awk -v w="$w" -v n="$n" '
		{ gsub(/\([^)]*\)/, "") }	# the percentages, "(  0.52)", out
		$1 ~ /\// && $2 ~ /^[0-9]+$/ {
			split($1, t, "/"); rec = $3; fpi = $4
			records += rec; fpis += fpi
			if (t[1] == "Heap" || t[1] == "Heap2") heap += rec
			else if (t[1] == "Btree") btree += rec
			else if (t[1] == "Transaction") commit += rec
			else other += rec
		}
		END {
			printf "%-13s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", w, (records + fpis) / n,
				records / n, fpis / n, heap / n, btree / n, commit / n, other / n
		}'
done
echo
echo "bytes per request; records = heap + btree + commit + other (sequence, ...); FPI: full-page"
echo "images of the first change of each page after the CHECKPOINT"
echo "results: $RESULTS"
