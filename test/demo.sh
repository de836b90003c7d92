#!/usr/bin/env bash
# A walk through the extension on a throwaway cluster: started, replay,
# mismatch, in_progress, a consumer, and a request in one statement.  Run as root on a fresh Debian 12 machine: it
# installs packages, builds and installs the extension, starts a private
# cluster as the postgres user, and removes it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash test/setup.sh

. test/cluster.sh
cluster_init idempotency-demo
cluster_start 54329 "-c listen_addresses=''"
bin=$PG_BIN
dir=$CLUSTER_DIR

psql_demo() { as_pg "$bin/psql -X -q -h '$dir' -p 54329 -d postgres -v ON_ERROR_STOP=1 $*"; }

say() { printf '\n\033[1m-- %s\033[0m\n' "$*"; }

say "CREATE EXTENSION and a business table"
psql_demo <<'SQL'
CREATE EXTENSION idempotency;
CREATE TABLE payments (id bigserial PRIMARY KEY, idem_key text, amount int, to_account text);
SQL

say "1. First request: status started -> do the work and record the response, in one transaction"
psql_demo -e <<'SQL'
BEGIN;
SELECT status FROM idem_begin('req-7f3a', '{"amount": 500, "to": "acct_42"}'::jsonb, scope => 'acct_9');
INSERT INTO payments (idem_key, amount, to_account) VALUES ('req-7f3a', 500, 'acct_42');
SELECT idem_finish('req-7f3a', 201, '{"id": 1, "state": "paid"}'::jsonb, scope => 'acct_9');
COMMIT;
SQL

say "2. The client retries (same key, same body, keys in another order): status replay, stored response, no work"
psql_demo -e <<'SQL'
SELECT status, response_code, response_body
  FROM idem_begin('req-7f3a', '{"to": "acct_42", "amount": 500.0}'::jsonb, scope => 'acct_9');
SQL

say "3. The same key with a different body: status mismatch (HTTP 422)"
psql_demo -e <<'SQL'
SELECT status, response_code FROM idem_begin('req-7f3a', '{"amount": 900, "to": "acct_42"}'::jsonb, scope => 'acct_9');
SQL

say "4. A retry while the first attempt is still running: status in_progress (HTTP 409) with wait => false"
# the first attempt: begins a key and holds its transaction open
as_pg "$bin/psql -X -q -h '$dir' -p 54329 -d postgres -c \"BEGIN; SELECT status FROM idem_begin('req-9b21', '{\\\"amount\\\": 70}'::jsonb); SELECT pg_sleep(30); ROLLBACK;\"" >/dev/null 2>&1 &
first=$!
# wait until it holds the key (a condition with a deadline, not a fixed sleep)
for _ in $(seq 1 100); do
    n=$(as_pg "$bin/psql -X -At -h '$dir' -p 54329 -d postgres -c \"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756 AND granted\"")
    [ "$n" = "1" ] && break
    sleep 0.1
done
psql_demo -e <<'SQL'
SELECT status FROM idem_begin('req-9b21', '{"amount": 70}'::jsonb, wait => false);
SELECT status FROM idem_lookup('req-9b21');
SQL
as_pg "$bin/psql -X -q -h '$dir' -p 54329 -d postgres -c \"SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%req-9b21%' AND pid <> pg_backend_pid()\"" >/dev/null
wait "$first" || true

say "5. The first attempt rolled back: the retry starts the work itself"
psql_demo -e <<'SQL'
BEGIN;
SELECT status FROM idem_begin('req-9b21', '{"amount": 70}'::jsonb);
INSERT INTO payments (idem_key, amount, to_account) VALUES ('req-9b21', 70, 'acct_7');
SELECT idem_finish('req-9b21', 201, '{"id": 2}'::jsonb);
COMMIT;
SQL

say "6. A message consumer: idem_once is true the first time only"
psql_demo -e <<'SQL'
SELECT idem_once('msg-1') AS first, idem_once('msg-1') AS redelivered;
SQL

say "7. The whole request in one statement (one round trip in autocommit): idem_call runs your work function"
psql_demo -e <<'SQL'
CREATE FUNCTION pay(req jsonb) RETURNS idem_response LANGUAGE plpgsql AS $$
DECLARE p payments;
BEGIN
  IF (req->>'amount')::int <= 0 THEN
    RETURN idem_response(422, '{"error": "amount must be positive"}');
  END IF;
  INSERT INTO payments (idem_key, amount, to_account) VALUES (req->>'key', (req->>'amount')::int, req->>'to')
    RETURNING * INTO p;
  RETURN idem_response(201, jsonb_build_object('id', p.id));
END $$;
SELECT status, response_code, response_body FROM idem_call('req-c5d1', '{"key": "req-c5d1", "amount": 30, "to": "acct_5"}', 'pay(jsonb)');
SELECT status, response_code, response_body FROM idem_call('req-c5d1', '{"key": "req-c5d1", "amount": 30, "to": "acct_5"}', 'pay(jsonb)');
SELECT status, response_code, response_body FROM idem_call('req-0e77', '{"key": "req-0e77", "amount": 0, "to": "acct_5"}', 'pay(jsonb)');
SQL

say "Exactly one payment per request:"
psql_demo -e <<'SQL'
SELECT idem_key, count(*) FROM payments GROUP BY idem_key ORDER BY idem_key;
SQL
echo
echo "demo done; the throwaway cluster is removed."
