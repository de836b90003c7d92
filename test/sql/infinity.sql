--
-- infinity: ttl, lease and extend of 'infinity' and '-infinity'.
--
-- From PostgreSQL 17 on an interval can be infinite; 15 and 16 refuse the
-- literal before any function runs (22007).  Where it gets through, every
-- function refuses it as 22023 "... must be finite" and changes nothing:
-- a ttl cannot ask for a key that is never swept on every version, so no
-- version takes one.  The expected output of 15 and 16 is infinity_1.out.
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
  (1,  $$SELECT status FROM idem_begin('k', ttl => 'infinity')$$),
  (2,  $$SELECT status FROM idem_begin('k', ttl => '-infinity')$$),
  (3,  $$SELECT status FROM idem_begin('k', 'text body', ttl => 'infinity')$$),
  (4,  $$SELECT idem_once('k', ttl => 'infinity')::text$$),
  (5,  $$SELECT idem_once('k', ttl => '-infinity')::text$$),
  (6,  $$SELECT status FROM idem_lease('k', ttl => 'infinity')$$),
  (7,  $$SELECT status FROM idem_lease('k', lease => 'infinity')$$),
  (8,  $$SELECT status FROM idem_lease('k', lease => '-infinity')$$),
  (9,  format($$SELECT idem_checkpoint('leased', %L, 'p', extend => 'infinity')::text$$, :'token')),
  (10, format($$SELECT idem_checkpoint('leased', %L, 'p', extend => '-infinity')::text$$, :'token'))
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
-- the whole error, hint included
\set VERBOSITY default
SELECT status FROM idem_begin('k', ttl => 'infinity');

-- the largest finite ttl still works
BEGIN;
SELECT status, extract(year FROM expires_at) - extract(year FROM created_at) AS years
FROM idem_begin('far', ttl => '1000 years');
ROLLBACK;
DROP FUNCTION try(text);
DROP FUNCTION keys_state();
TRUNCATE idem_keys;
