--
-- errors: every bad argument of every function, with its SQLSTATE, and
-- every call in the wrong state.  After failing calls, nothing has changed.
--
\set SHOW_CONTEXT never
-- runs alone or after api; starts from an empty key store
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;

\i test/helpers/regress.sql

-- some keys to fail against
BEGIN;
SELECT status FROM idem_begin('done', '{"a": 1}'::jsonb);
SELECT idem_finish('done', 200, '{"r": 1}'::jsonb);
SELECT status FROM idem_begin('done', '{"a": 1}'::jsonb, scope => 's');
SELECT idem_finish('done', 201, '{"r": 2}'::jsonb, scope => 's');
COMMIT;
SELECT keys_state() AS s0 \gset

------------------------------------------------------------------------
-- idem_begin: key, scope, ttl, wait, for each request type
------------------------------------------------------------------------
SELECT stmt, try(stmt) FROM (VALUES
  ($$SELECT status FROM idem_begin(NULL)$$),
  ($$SELECT status FROM idem_begin(NULL, '{}'::jsonb)$$),
  ($$SELECT status FROM idem_begin(NULL, 'x'::text)$$),
  ($$SELECT status FROM idem_begin(NULL, 'x'::bytea)$$),
  ($$SELECT status FROM idem_begin(NULL::text, NULL)$$),
  ($$SELECT status FROM idem_begin('')$$),
  ($$SELECT status FROM idem_begin('', 'x'::text)$$),
  ($$SELECT status FROM idem_begin('', 'x'::bytea)$$),
  ($$SELECT status FROM idem_begin('k', scope => NULL)$$),
  ($$SELECT status FROM idem_begin('k', 'x'::text, NULL)$$),
  ($$SELECT status FROM idem_begin('k', 'x'::bytea, NULL)$$),
  ($$SELECT status FROM idem_begin('k', ttl => NULL)$$),
  ($$SELECT status FROM idem_begin('k', ttl => '0')$$),
  ($$SELECT status FROM idem_begin('k', ttl => '-1 second')$$),
  ($$SELECT status FROM idem_begin('k', ttl => '-1 day')$$),
  ($$SELECT status FROM idem_begin('k', ttl => '1 month -30 days')$$),
  ($$SELECT status FROM idem_begin('k', 'x'::text, ttl => '0')$$),
  ($$SELECT status FROM idem_begin('k', 'x'::bytea, ttl => '-1 microsecond')$$),
  ($$SELECT status FROM idem_begin('k', wait => NULL)$$),
  ($$SELECT status FROM idem_begin('k', 'x'::text, wait => NULL)$$),
  ($$SELECT status FROM idem_begin('k', 'x'::bytea, wait => NULL)$$),
  -- arguments are checked even when the key is completed
  ($$SELECT status FROM idem_begin('done', '{"a": 1}'::jsonb, ttl => '0')$$),
  ($$SELECT status FROM idem_begin('done', '{"a": 1}'::jsonb, wait => NULL)$$)
) v(stmt);
SELECT keys_state() = :'s0' AS unchanged;

-- lengths are in bytes: 255 is the limit for key and scope
SELECT octet_length(repeat('é', 127) || 'x') AS b255, octet_length(repeat('é', 128)) AS b256,
       octet_length(repeat('€', 85)) AS b255_3, octet_length(repeat('€', 86)) AS b258_3;
SELECT n, try(format('SELECT status FROM idem_begin(%L, scope => %L, ttl => %L)', k, s, t)) FROM (VALUES
  (1, repeat('k', 256), '', '1 hour'),
  (2, repeat('é', 128), '', '1 hour'),
  (3, repeat('€', 86), '', '1 hour'),
  (4, repeat('k', 10000), '', '1 hour'),
  (5, 'k', repeat('s', 256), '1 hour'),
  (6, 'k', repeat('é', 128), '1 hour'),
  (7, repeat('k', 256), repeat('s', 256), '1 hour'),
  -- the key is checked before the scope, the scope before the ttl
  (8, '', NULL, '0'),
  (9, 'k', repeat('s', 256), '0')
) v(n, k, s, t)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
-- and exactly at the limit it works
BEGIN;
SELECT n, octet_length(k) AS key_bytes, octet_length(s) AS scope_bytes, b.status
FROM (VALUES
  (1, repeat('k', 255), ''),
  (2, repeat('é', 127) || 'x', ''),
  (3, repeat('€', 85), ''),
  (4, 'k', repeat('s', 255)),
  (5, repeat('k', 255), repeat('é', 127) || 's'),
  (6, 'x', '')
) v(n, k, s), idem_begin(k, scope => s, ttl => '1 microsecond') b
ORDER BY n;
SELECT count(*) AS open_keys FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT idem_finish(repeat('k', 255), 200);
SELECT idem_finish(repeat('é', 127) || 'x', 200);
SELECT idem_finish(repeat('€', 85), 200);
SELECT idem_finish('k', 200, scope => repeat('s', 255));
SELECT idem_finish(repeat('k', 255), 200, scope => repeat('é', 127) || 's');
SELECT idem_release('x');
SELECT count(*) AS rows, max(octet_length(key)) AS max_key, max(octet_length(scope)) AS max_scope
FROM idem_keys WHERE expires_at = now() + interval '1 microsecond';
ROLLBACK;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- idem_finish
------------------------------------------------------------------------
SELECT stmt, try(stmt) FROM (VALUES
  ($$SELECT idem_finish(NULL, 200)$$),
  ($$SELECT idem_finish('', 200)$$),
  ($$SELECT idem_finish(repeat('k', 256), 200)$$),
  ($$SELECT idem_finish('k', 200, scope => NULL)$$),
  ($$SELECT idem_finish('k', 200, NULL, repeat('s', 256))$$),
  ($$SELECT idem_finish('k', NULL)$$),
  ($$SELECT idem_finish('k', 99)$$),
  ($$SELECT idem_finish('k', 600)$$),
  ($$SELECT idem_finish('k', 0)$$),
  ($$SELECT idem_finish('k', -200)$$),
  ($$SELECT idem_finish('k', 2147483647)$$),
  -- argument errors come before state errors
  ($$SELECT idem_finish('done', 99)$$),
  ($$SELECT idem_finish('done', NULL)$$),
  -- state: absent, completed (in any scope)
  ($$SELECT idem_finish('k', 200)$$),
  ($$SELECT idem_finish('k', 200, scope => 's')$$),
  ($$SELECT idem_finish('done', 200)$$),
  ($$SELECT idem_finish('done', 200, '{"r": 1}'::jsonb)$$),
  ($$SELECT idem_finish('done', 201, scope => 's')$$),
  ($$SELECT idem_finish('done', 200, scope => 'other')$$)
) v(stmt);
SELECT keys_state() = :'s0' AS unchanged;
SELECT status, response_code, response_body FROM idem_lookup('done');
SELECT status, response_code, response_body FROM idem_lookup('done', 's');

-- a bad response code leaves a begun key begun; 100 and 599 are fine
BEGIN;
SELECT status FROM idem_begin('f1');
SELECT try($$SELECT idem_finish('f1', NULL)$$);
SELECT try($$SELECT idem_finish('f1', 99)$$);
SELECT try($$SELECT idem_finish('f1', 600)$$);
SELECT try($$SELECT idem_finish('f1', 200, scope => NULL)$$);
SELECT status FROM idem_lookup('f1');
SELECT try($$SELECT idem_finish('f1', 100)$$);
SELECT status, response_code FROM idem_lookup('f1');
-- finished already in this transaction
SELECT try($$SELECT idem_finish('f1', 200)$$);
SELECT try($$SELECT idem_release('f1')$$);
SELECT status, response_code FROM idem_lookup('f1');
SELECT status FROM idem_begin('f2', scope => 'tenant');
SELECT try($$SELECT idem_finish('f2', 599, scope => 'tenant')$$);
SELECT try($$SELECT idem_finish('f2', 599, scope => 'tenant')$$);
SELECT try($$SELECT idem_finish('f2', 200)$$);
-- released in this transaction: the key is absent again
SELECT status FROM idem_begin('f3');
SELECT idem_release('f3');
SELECT try($$SELECT idem_finish('f3', 200)$$);
SELECT try($$SELECT idem_release('f3')$$);
SELECT status FROM idem_lookup('f3');
-- released in a subtransaction that is still open
SELECT status FROM idem_begin('f4');
SAVEPOINT a;
SELECT idem_release('f4');
SELECT try($$SELECT idem_finish('f4', 200)$$);
SELECT try($$SELECT idem_release('f4')$$);
SELECT try($$SELECT status FROM idem_begin('f4')$$);
SELECT try($$SELECT idem_once('f4')$$);
ROLLBACK TO a;
SELECT status FROM idem_lookup('f4');
SELECT idem_finish('f4', 200);
-- finished in a subtransaction that is still open
SELECT status FROM idem_begin('f5');
SAVEPOINT b;
SELECT idem_finish('f5', 200);
SELECT try($$SELECT idem_finish('f5', 200)$$);
SELECT try($$SELECT idem_release('f5')$$);
RELEASE SAVEPOINT b;
SELECT try($$SELECT idem_finish('f5', 200)$$);
COMMIT;
SELECT key, status, response_code
FROM (VALUES ('f1'), ('f2'), ('f3'), ('f4'), ('f5')) v(key), idem_lookup(v.key, CASE WHEN v.key = 'f2' THEN 'tenant' ELSE '' END)
ORDER BY key COLLATE "C";
SELECT count(*) FROM idem_keys WHERE key IN ('f1', 'f2', 'f3', 'f4', 'f5');
SELECT keys_state() AS s0 \gset

------------------------------------------------------------------------
-- idem_release
------------------------------------------------------------------------
SELECT stmt, try(stmt) FROM (VALUES
  ($$SELECT idem_release(NULL)$$),
  ($$SELECT idem_release('')$$),
  ($$SELECT idem_release(repeat('k', 256))$$),
  ($$SELECT idem_release('k', NULL)$$),
  ($$SELECT idem_release('k', repeat('s', 256))$$),
  ($$SELECT idem_release('k')$$),
  ($$SELECT idem_release('k', 's')$$),
  ($$SELECT idem_release('done')$$),
  ($$SELECT idem_release('done', 's')$$)
) v(stmt);
SELECT keys_state() = :'s0' AS unchanged;
BEGIN;
SELECT status FROM idem_begin('r1');
SELECT try($$SELECT idem_release('r1', NULL)$$);
SELECT try($$SELECT idem_release('r1', 'other')$$);
SELECT status FROM idem_lookup('r1');
SELECT idem_release('r1');
SELECT try($$SELECT idem_release('r1')$$);
SELECT try($$SELECT idem_finish('r1', 200)$$);
COMMIT;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- idem_once
------------------------------------------------------------------------
-- (é as its two UTF-8 bytes, so that the statements shown are ASCII: psql
-- pads a column by the width its client encoding gives each character, and
-- in a SQL_ASCII or LATIN1 database é is two)
SELECT stmt, try(stmt) FROM (VALUES
  ($$SELECT idem_once(NULL)$$),
  ($$SELECT idem_once('')$$),
  ($$SELECT idem_once(repeat('k', 256))$$),
  ($$SELECT idem_once(repeat(E'\xc3\xa9', 128))$$),
  ($$SELECT idem_once('k', NULL)$$),
  ($$SELECT idem_once('k', repeat('s', 256))$$),
  ($$SELECT idem_once('k', '', NULL)$$),
  ($$SELECT idem_once('k', '', '0')$$),
  ($$SELECT idem_once('k', '', '-7 days')$$),
  ($$SELECT idem_once('done', '', '0')$$)
) v(stmt);
SELECT keys_state() = :'s0' AS unchanged;
-- a key this transaction has begun cannot be recorded
BEGIN;
SELECT status FROM idem_begin('o1');
SELECT try($$SELECT idem_once('o1')$$);
SELECT status FROM idem_lookup('o1');
SELECT idem_release('o1');
SELECT idem_once('o1') AS once_after_release;
ROLLBACK;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- idem_lookup
------------------------------------------------------------------------
SELECT stmt, try(stmt) FROM (VALUES
  ($$SELECT status FROM idem_lookup(NULL)$$),
  ($$SELECT status FROM idem_lookup('')$$),
  ($$SELECT status FROM idem_lookup(repeat('k', 256))$$),
  ($$SELECT status FROM idem_lookup('k', NULL)$$),
  ($$SELECT status FROM idem_lookup('k', repeat('s', 256))$$),
  ($$SELECT status FROM idem_lookup(repeat('k', 255), repeat('s', 255))$$)
) v(stmt);

------------------------------------------------------------------------
-- idem_sweep
------------------------------------------------------------------------
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'expired', NULL, NULL);
SELECT keys_state() AS s0 \gset
SELECT stmt, try(stmt) FROM (VALUES
  ($$SELECT idem_sweep(NULL)$$),
  ($$SELECT idem_sweep(0)$$),
  ($$SELECT idem_sweep(-1)$$),
  ($$SELECT idem_sweep(-2147483648)$$)
) v(stmt);
SELECT keys_state() = :'s0' AS unchanged;
SELECT idem_sweep(2147483647) AS swept;
SELECT keys_state() AS s0 \gset

------------------------------------------------------------------------
-- idem_fingerprint is strict: NULL in, NULL out, never an error
------------------------------------------------------------------------
SELECT try($$SELECT idem_fingerprint(NULL::jsonb)$$) AS jsonb,
       try($$SELECT idem_fingerprint(NULL::text)$$) AS text,
       try($$SELECT idem_fingerprint(NULL::bytea)$$) AS bytea;
-- an untyped NULL goes to the text variant; there is no variant for other types
SELECT try($$SELECT idem_fingerprint(NULL)$$);
SELECT try($$SELECT idem_fingerprint(1)$$);
SELECT try($$SELECT status FROM idem_begin('k', 1)$$);
SELECT try($$SELECT status FROM idem_begin(1)$$);

-- psql shows the same codes for direct calls
SELECT idem_begin(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT idem_finish('nope', 200);
\echo :LAST_ERROR_SQLSTATE
SELECT idem_finish('nope', 99);
\echo :LAST_ERROR_SQLSTATE

-- an index of the store's name that is not an index of the key table is
-- never opened as the store's (only a superuser can swap one in there; the
-- squatted idem_keys_leases of a 0.1.0 schema is in test/t/040_attacks.pl)
BEGIN;
ALTER INDEX idem_keys_expires_at RENAME TO idem_keys_expires_at_real;
CREATE TABLE decoy (t timestamptz);
CREATE INDEX idem_keys_expires_at ON decoy (t);
SELECT try($$SELECT idem_once('decoy')::text$$);
ROLLBACK;

SELECT keys_state() = :'s0' AS unchanged;
DROP FUNCTION try(text);
DROP FUNCTION keys_state();
