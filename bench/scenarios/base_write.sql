-- Write path, baseline: the same five round trips, with idem_begin replaced
-- by a primary-key probe of base_keys (same columns, indexes and collations
-- as idem_keys, including the expires_at index) and idem_finish by one plain
-- INSERT of a finished row.  The fingerprint is a constant 32-byte value (the
-- client is assumed to have hashed the request already; it is
-- idem_fingerprint of the request ext_write.sql sends): the cheapest record.
\set r random(1, 1000000000000000000)
BEGIN;
SELECT * FROM base_keys WHERE scope = '' AND key = 'b' || :tag || '-' || :client_id || '-' || :r;
INSERT INTO payments (key, amount) VALUES ('b' || :tag || '-' || :client_id || '-' || :r, 500);
INSERT INTO base_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now(), now() + interval '24 hours', 201, 'c', '', 'b' || :tag || '-' || :client_id || '-' || :r,
        '\x5d07348752511cacdeb1f27281cbbaee72bbb4e05c1ebf90c3891a7598651f29'::bytea, '{"id": 991, "state": "paid"}'::jsonb);
COMMIT;
