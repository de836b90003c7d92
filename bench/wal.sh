#!/usr/bin/env bash
# WAL per request, record by record (issue #12): the same payment made four
# ways at the database, each run after a CHECKPOINT and read back with
# pg_waldump --stats, so the bytes split into the records each way writes
# and the full-page images that the first change of a page after a
# checkpoint adds.
#
#   none         INSERT INTO payments ... (autocommit): no idempotency, the floor
#   ext_call     SELECT ... FROM idem_call(key, request, 'pay(jsonb)') (autocommit)
#   ext_classic  BEGIN; idem_begin; INSERT payments; idem_finish; COMMIT
#   handwritten  BEGIN; INSERT keys ON CONFLICT DO NOTHING; INSERT payments;
#                UPDATE keys SET response; COMMIT (a key table by hand)
#
# Every way stores the same response ({"id", "amount", "to"}), no headers.
# Run as root or postgres after make install.  Settings (environment):
#   REQUESTS  requests per client per way   (default 5000)
#   CLIENTS   pgbench -c and -j             (default 2)
#   PG_CONFIG, KEEP=1                       as for bench/run.sh
set -euo pipefail

REQUESTS=${REQUESTS:-5000}
CLIENTS=${CLIENTS:-2}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}
for v in REQUESTS CLIENTS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "wal.sh: $v must be a positive integer" >&2; exit 2; }
done

PROG=wal.sh
# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init
bench_workdir idem-wal
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
\set r random(1, 1000000000)
INSERT INTO payments (idem_key, amount, to_account) VALUES ('n' || :client_id || '-' || :r, 500, 'acct_42');
EOF
cat >"$WORK/ext_call.sql" <<'EOF'
\set r random(1, 1000000000)
SELECT status FROM idem_call('c' || :client_id || '-' || :r, jsonb_build_object('key', 'c' || :client_id || '-' || :r, 'amount', 500, 'to', 'acct_42'), 'pay(jsonb)');
EOF
cat >"$WORK/ext_classic.sql" <<'EOF'
\set r random(1, 1000000000)
BEGIN;
SELECT status FROM idem_begin('k' || :client_id || '-' || :r, '{"amount": 500, "to": "acct_42"}'::jsonb);
INSERT INTO payments (idem_key, amount, to_account) VALUES ('k' || :client_id || '-' || :r, 500, 'acct_42') RETURNING id \gset
SELECT idem_finish('k' || :client_id || '-' || :r, 201, jsonb_build_object('id', :id, 'amount', 500, 'to', 'acct_42'));
COMMIT;
EOF
cat >"$WORK/handwritten.sql" <<'EOF'
\set r random(1, 1000000000)
BEGIN;
INSERT INTO hand_keys (key, request) VALUES ('h' || :client_id || '-' || :r, '{"amount": 500, "to": "acct_42"}') ON CONFLICT DO NOTHING;
INSERT INTO payments (idem_key, amount, to_account) VALUES ('h' || :client_id || '-' || :r, 500, 'acct_42') RETURNING id \gset
UPDATE hand_keys SET response_code = 201, response_body = jsonb_build_object('id', :id, 'amount', 500, 'to', 'acct_42') WHERE key = 'h' || :client_id || '-' || :r;
COMMIT;
EOF
[[ ${#AS_PG[@]} -eq 0 ]] || chown postgres: "$WORK"/*.sql

# the same number of rows in every table before the measured runs, so that
# no way pays for the first pages of a table or index alone
warm() {	# way
	"${AS_PG[@]}" "$BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared \
		-t "$REQUESTS" -c "$CLIENTS" -j "$CLIENTS" -f "$WORK/$1.sql" bench >/dev/null 2>&1
}
WAYS=(none ext_call ext_classic handwritten)
for w in "${WAYS[@]}"; do warm "$w"; done

printf '\n%-12s %9s %9s %9s %9s %9s %9s %9s\n' way "WAL/req" records FPI heap btree commit other
for w in "${WAYS[@]}"; do
	psql_q "CHECKPOINT" >/dev/null
	lsn0=$(psql_q "SELECT pg_current_wal_lsn()")
	"${AS_PG[@]}" "$BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared \
		-t "$REQUESTS" -c "$CLIENTS" -j "$CLIENTS" -f "$WORK/$w.sql" bench >"$WORK/$w.out" 2>&1 \
		|| { cat "$WORK/$w.out" >&2; exit 1; }
	lsn1=$(psql_q "SELECT pg_current_wal_lsn()")
	n=$((REQUESTS * CLIENTS))
	# Type  N (%)  record size (%)  FPI size (%)  combined size (%)
	"${AS_PG[@]}" "$BINDIR/pg_waldump" -p "$DATA/pg_wal" -s "$lsn0" -e "$lsn1" --stats=record 2>/dev/null |
		awk -v w="$w" -v n="$n" '
		$1 ~ /\// && $2 ~ /^[0-9]+$/ {
			split($1, t, "/"); rec = $4; fpi = $6
			records += rec; fpis += fpi
			if (t[1] == "Heap" || t[1] == "Heap2") heap += rec
			else if (t[1] == "Btree") btree += rec
			else if (t[1] == "Transaction") commit += rec
			else other += rec
		}
		END {
			printf "%-12s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", w, (records + fpis) / n,
				records / n, fpis / n, heap / n, btree / n, commit / n, other / n
		}'
done
echo
echo "bytes per request; records = heap + btree + commit + other (sequence, ...); FPI: full-page"
echo "images after the CHECKPOINT before each way ($REQUESTS requests x $CLIENTS clients per way)"
