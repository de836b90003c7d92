-- Write path, extension, with the idem_stats counters off (run.sh sets
-- idempotency.track_stats = off for this scenario through PGOPTIONS); otherwise
-- ext_write.sql, with its own key prefix so that run.sh can count its rows.
-- The key is unique per transaction: run tag (round/config) + client id +
-- a random value in 1..1e18.  A repeated key would make idem_begin return
-- replay and idem_finish fail, which aborts the client; run.sh also checks
-- that every transaction left exactly one key row and one payment.
\set r random(1, 1000000000000000000)
BEGIN;
SELECT * FROM idem_begin('c' || :tag || '-' || :client_id || '-' || :r, '{"amount": 500, "to": "acct_42"}'::jsonb);
INSERT INTO payments (key, amount) VALUES ('c' || :tag || '-' || :client_id || '-' || :r, 500);
SELECT idem_finish('c' || :tag || '-' || :client_id || '-' || :r, 201, '{"id": 991, "state": "paid"}'::jsonb);
COMMIT;
