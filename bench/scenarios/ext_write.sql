-- Write path, extension: BEGIN; idem_begin; business INSERT; idem_finish; COMMIT.
-- The key is unique per transaction: run tag (round/config) + client id +
-- a random value in 1..1e18.  A repeated key would make idem_begin return
-- replay and idem_finish fail, which aborts the client; run.sh also checks
-- that every transaction left exactly one key row and one payment.
\set r random(1, 1000000000000000000)
BEGIN;
SELECT * FROM idem_begin('e' || :tag || '-' || :client_id || '-' || :r, '{"amount": 500, "to": "acct_42"}'::jsonb);
INSERT INTO payments (key, amount) VALUES ('e' || :tag || '-' || :client_id || '-' || :r, 500);
SELECT idem_finish('e' || :tag || '-' || :client_id || '-' || :r, 201, '{"id": 991, "state": "paid"}'::jsonb);
COMMIT;
