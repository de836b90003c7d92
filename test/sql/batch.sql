--
-- batch: idem_once_batch, the ids of a consumer's batch in one call
-- (docs/specification.md, section 8).  Each id gets the answer and the
-- record idem_once would give it; the call returns the new ids in the
-- batch's order, each once.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
\i test/helpers/regress.sql

-- a batch of new ids: all of them, in the order given (not sorted)
SELECT idem_once_batch(ARRAY['m-3', 'm-1', 'm-2']);
-- redelivered with one more: only that one
SELECT idem_once_batch(ARRAY['m-2', 'm-4', 'm-1', 'm-3']);
-- the records are idem_once's: idem_once agrees, both ways
SELECT idem_once('m-4') AS once_m4, idem_once('m-5') AS once_m5;
SELECT idem_once_batch(ARRAY['m-5']);
-- (idem_once's ttl of 7 days is added in the session's time zone: across a
-- change to or from daylight saving time it is 167 or 169 hours, so the
-- expiry is compared with created_at + 7 days)
SELECT scope, key, state, fingerprint IS NULL AS no_request, response_code,
       expires_at = created_at + interval '7 days' AS ttl_7_days
FROM idem_keys ORDER BY key COLLATE "C";

-- an id repeated in the batch is new at its first place only
SELECT idem_once_batch(ARRAY['d-1', 'd-2', 'd-1', 'd-1', 'd-3', 'd-2']);
SELECT idem_once_batch(ARRAY['d-1', 'd-1']);

-- an empty batch, and one with a single id
SELECT idem_once_batch('{}'::text[]);
SELECT idem_once_batch(ARRAY['single']);

-- rollback: the records go with the transaction, and the redelivery is new
BEGIN;
SELECT idem_once_batch(ARRAY['r-1', 'r-2']);
SELECT idem_once_batch(ARRAY['r-2', 'r-3']) AS same_transaction;
ROLLBACK;
SELECT idem_once_batch(ARRAY['r-2', 'r-1']) AS after_rollback;
-- a savepoint rolled back takes only its own ids
BEGIN;
SELECT idem_once_batch(ARRAY['s-1']);
SAVEPOINT sp;
SELECT idem_once_batch(ARRAY['s-2']);
ROLLBACK TO sp;
SELECT idem_once_batch(ARRAY['s-1', 's-2']) AS after_savepoint;
COMMIT;

-- scopes and ttl
SELECT idem_once_batch(ARRAY['m-1', 'x'], 'queue-b') AS other_scope;
SELECT idem_once_batch(ARRAY['t-1'], ttl => '1 hour');
SELECT expires_at - created_at AS ttl FROM idem_keys WHERE key = 't-1';
-- an expired record is replaced, as idem_once replaces it (the next
-- transaction's now() is past a ttl of a microsecond)
SELECT idem_once_batch(ARRAY['e-1', 'e-2'], ttl => '1 microsecond');
BEGIN;
SELECT idem_once_batch(ARRAY['e-1', 'e-2', 'e-3']) AS expired_are_new;
SELECT count(*) AS records, bool_and(expires_at = created_at + interval '7 days') AS ttl_7_days
FROM idem_keys WHERE key LIKE 'e-%';
COMMIT;

-- large batches: the ids of a 1,000-message poll, then the same again
SELECT cardinality(idem_once_batch(ARRAY(SELECT 'big-' || g FROM generate_series(1, 1000) g))) AS new_first;
SELECT cardinality(idem_once_batch(ARRAY(SELECT 'big-' || g FROM generate_series(1, 1000) g))) AS new_again;
-- the limit is 10,000 ids
SELECT cardinality(idem_once_batch(ARRAY(SELECT 'lim-' || g FROM generate_series(1, 10000) g))) AS at_limit;

-- every id of the longest length works, ids are compared bytewise
SELECT cardinality(idem_once_batch(ARRAY[repeat('k', 255), 'A', 'a', 'é'])) AS bytewise;

------------------------------------------------------------------------
-- bad input: a precise error, and nothing changes
------------------------------------------------------------------------
SELECT keys_state() AS s0 \gset
SELECT n, try(stmt) FROM (VALUES
  (1,  $$SELECT idem_once_batch(NULL)::text$$),
  (2,  $$SELECT idem_once_batch(ARRAY['ok-1', NULL, 'ok-2'])::text$$),
  (3,  $$SELECT idem_once_batch(ARRAY['ok-1', ''])::text$$),
  (4,  $$SELECT idem_once_batch(ARRAY['ok-1', repeat('k', 256)])::text$$),
  (5,  $$SELECT idem_once_batch(ARRAY[ARRAY['a', 'b'], ARRAY['c', 'd']])::text$$),
  (6,  $$SELECT idem_once_batch(ARRAY(SELECT 'over-' || g FROM generate_series(1, 10001) g))::text$$),
  (7,  $$SELECT idem_once_batch(ARRAY['ok-1'], NULL)::text$$),
  (8,  $$SELECT idem_once_batch(ARRAY['ok-1'], repeat('s', 256))::text$$),
  (9,  $$SELECT idem_once_batch(ARRAY['ok-1'], ttl => NULL)::text$$),
  (10, $$SELECT idem_once_batch(ARRAY['ok-1'], ttl => '0')::text$$),
  (11, $$SELECT idem_once_batch(ARRAY['ok-1'], ttl => '-1 day')::text$$),
  (12, $$SELECT idem_once_batch(ARRAY['ok-1'], ttl => '1001 years')::text$$),
  (13, $$SELECT idem_once_batch('m-1')::text$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;

-- an id this transaction has begun as a request key: 55000, nothing recorded
BEGIN;
SELECT status FROM idem_begin('open-1');
SELECT try($$SELECT idem_once_batch(ARRAY['fresh-1', 'open-1'])::text$$);
SELECT count(*) AS fresh_recorded FROM idem_keys WHERE key = 'fresh-1';
SELECT idem_release('open-1');
COMMIT;

-- a read-only transaction: redeliveries only are answered, a new id is 25006
BEGIN READ ONLY;
SELECT idem_once_batch(ARRAY['m-1', 'm-2']) AS redeliveries_read_only;
SELECT try($$SELECT idem_once_batch(ARRAY['m-1', 'ro-new'])::text$$);
ROLLBACK;

-- counted in idem_stats as idem_once is, per id
SELECT idem_stats_reset();
SELECT idem_once_batch(ARRAY['c-1', 'c-2', 'c-1', 'm-1']);
SELECT once_true, once_false FROM idem_stats WHERE datname = current_database();

DROP FUNCTION try(text);
DROP FUNCTION keys_state();
TRUNCATE idem_keys;
