-- Soak load (bench/soak.sh): the write path of ext_write.sql with a short
-- ttl, so that keys expire and are swept while the load runs.  The business
-- table is truncated by soak.sh at every report; only idem_keys is measured.
\set r random(1, 1000000000000000000)
BEGIN;
SELECT * FROM idem_begin('s-' || :client_id || '-' || :r, '{"amount": 500, "to": "acct_42"}'::jsonb, ttl => :ttl);
INSERT INTO payments (key, amount) VALUES ('s-' || :client_id || '-' || :r, 500);
SELECT idem_finish('s-' || :client_id || '-' || :r, 201, '{"id": 991, "state": "paid"}'::jsonb);
COMMIT;
