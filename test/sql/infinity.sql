--
-- infinity: ttl, lease and extend of 'infinity' and '-infinity'.
--
-- From PostgreSQL 17 on an interval can be infinite; 15 and 16 refuse the
-- literal before any function runs (22007).  Where it gets through, a ttl
-- of 'infinity' is a key kept for good (expires_at = infinity, as
-- idem_keep makes one on every version: retention.sql); a ttl of
-- '-infinity', and a lease or extension of either, are refused as 22023
-- and change nothing: a lease that never ran out could never be taken
-- over.  The expected output of 15 and 16 is infinity_1.out.
--
\set SHOW_CONTEXT never
-- runs alone or after api; starts from an empty key store
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;

\i test/helpers/regress.sql

-- a leased key to extend
SELECT token FROM idem_lease('leased', '{}'::jsonb) \gset
SELECT keys_state() AS s0 \gset

SELECT n, try(stmt) FROM (VALUES
  (2,  $$SELECT status FROM idem_begin('k', ttl => '-infinity')$$),
  (5,  $$SELECT idem_once('k', ttl => '-infinity')::text$$),
  (7,  $$SELECT status FROM idem_lease('k', lease => 'infinity')$$),
  (8,  $$SELECT status FROM idem_lease('k', lease => '-infinity')$$),
  (9,  format($$SELECT idem_checkpoint('leased', %L, 'p', extend => 'infinity')::text$$, :'token')),
  (10, format($$SELECT idem_checkpoint('leased', %L, 'p', extend => '-infinity')::text$$, :'token'))
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
-- the whole error, hint included
\set VERBOSITY default
SELECT status FROM idem_lease('k', lease => 'infinity');
\set VERBOSITY terse

-- a ttl of 'infinity': kept for good, by every function that takes a ttl
BEGIN;
SELECT status, expires_at FROM idem_begin('kb', ttl => 'infinity');
SELECT idem_finish('kb', 200);
SELECT status, expires_at FROM idem_begin('kt', 'text body', ttl => 'infinity');
SELECT idem_release('kt');
SELECT idem_once('ko', ttl => 'infinity');
SELECT idem_once_batch(ARRAY['kx'], ttl => 'infinity');
SELECT status, attempts FROM idem_lease('kl', ttl => 'infinity', lease => '1 minute');
SELECT key, expires_at, lease_expires_at < 'infinity' AS lease_finite
FROM idem_keys WHERE key <> 'leased' ORDER BY key COLLATE "C";
SELECT permanent_keys FROM idem_storage;
ROLLBACK;

-- the largest finite ttl still works (the expiry compared with now() plus
-- the ttl, added in the session's time zone as the extension adds it)
BEGIN;
SELECT status, expires_at = now() + interval '1000 years' AS expires_ok
FROM idem_begin('far', ttl => '1000 years');
ROLLBACK;
DROP FUNCTION try(text);
DROP FUNCTION keys_state();
TRUNCATE idem_keys;
