-- Write path, second baseline: as base_write.sql, but into base_keys_noexp,
-- which has no expires_at index (idem_keys keeps one for the sweeper).
\set r random(1, 1000000000000000000)
BEGIN;
SELECT * FROM base_keys_noexp WHERE scope = '' AND key = 'n' || :tag || '-' || :client_id || '-' || :r;
INSERT INTO payments (key, amount) VALUES ('n' || :tag || '-' || :client_id || '-' || :r, 500);
INSERT INTO base_keys_noexp (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now(), now() + interval '24 hours', 201, 'c', '', 'n' || :tag || '-' || :client_id || '-' || :r,
        '\x5d07348752511cacdeb1f27281cbbaee72bbb4e05c1ebf90c3891a7598651f29'::bytea, '{"id": 991, "state": "paid"}'::jsonb);
COMMIT;
