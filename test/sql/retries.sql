--
-- retries: attempts that are not forever.  The _full
-- variants of idem_begin, idem_lookup and idem_lease report the attempts
-- and the last error; idem_lease_full takes the bound.  idem_fail
-- records a failed attempt after its transaction rolled back; a lease that
-- keeps running out counts its attempts itself.  At the caller's bound the
-- key is dead: every later call answers so, with the attempts, the reason
-- and (a lease's) the last recovery point, and nothing starts the work
-- again until an operator retries or discards it.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
\i test/helpers/regress.sql
SELECT idem_stats_reset();

------------------------------------------------------------------------
-- a poison request: its transaction fails every time
------------------------------------------------------------------------
-- attempt 1: the work fails, the transaction rolls back, the failure is recorded
BEGIN;
SELECT status FROM idem_begin_full('req-1', '{"amount": 5}'::jsonb);
ROLLBACK;
SELECT idem_fail('req-1', 'insufficient funds: 22003', max_attempts => 3) AS state;
SELECT state, attempts, max_attempts, last_error, fingerprint IS NULL AS no_request
FROM idem_keys WHERE key = 'req-1';
-- attempt 2 starts again (a failed key is not a result), and fails again
BEGIN;
SELECT status, attempts FROM idem_begin_full('req-1', '{"amount": 5}'::jsonb);
ROLLBACK;
SELECT idem_fail('req-1', 'insufficient funds: 22003') AS state;
SELECT status, attempts, last_error FROM idem_lookup_full('req-1');
-- attempt 3 is the last the bound allows
BEGIN;
SELECT status FROM idem_begin_full('req-1', '{"amount": 5}'::jsonb);
ROLLBACK;
SELECT idem_fail('req-1', 'insufficient funds: 22003 (3)') AS state;
-- dead: every later call says so, whatever the request, and starts nothing
SELECT status, response_code, attempts, last_error FROM idem_begin_full('req-1', '{"amount": 5}'::jsonb);
SELECT status, attempts FROM idem_begin_full('req-1', '{"amount": 6}'::jsonb);
-- the functions of before 0.4.0 report it too, in the columns they have
SELECT status, response_code FROM idem_begin('req-1', '{"amount": 5}'::jsonb);
SELECT status FROM idem_lookup('req-1');
SELECT status, token, attempts FROM idem_lease('req-1', '{"amount": 5}'::jsonb);
SELECT status, attempts, last_error FROM idem_lookup_full('req-1');
SELECT status, token, attempts, last_error FROM idem_lease_full('req-1', '{"amount": 5}'::jsonb);
SELECT idem_once('req-1') AS once, idem_once_batch(ARRAY['req-1']) AS batch;
SELECT try($$SELECT idem_finish('req-1', 200)$$);
-- failing a dead key changes nothing
SELECT idem_fail('req-1', 'again') AS state;
SELECT attempts, last_error FROM idem_keys WHERE key = 'req-1';

-- an attempt that succeeds after failures replaces the failed record
SELECT idem_fail('req-2', 'timeout', max_attempts => 5) AS state;
BEGIN;
SELECT status FROM idem_begin_full('req-2', '{"n": 1}'::jsonb);
SELECT idem_finish('req-2', 201, '{"ok": true}');
COMMIT;
SELECT status, response_code, response_body, attempts, last_error FROM idem_begin_full('req-2', '{"n": 1}'::jsonb);
SELECT state, attempts, last_error, max_attempts FROM idem_keys WHERE key = 'req-2';
SELECT try($$SELECT idem_fail('req-2', 'too late')$$);

-- without a bound the failures are counted, and the key never dies
SELECT idem_fail('req-3', 'e') AS s1, idem_fail('req-3', 'e') AS s2, idem_fail('req-3', 'e') AS s3;
SELECT state, attempts, max_attempts FROM idem_keys WHERE key = 'req-3';
-- a bound of 1: the first failure is the last
SELECT idem_fail('req-4', 'not retryable: 400', max_attempts => 1) AS state;

------------------------------------------------------------------------
-- a poison message: idem_once, idem_once_batch
------------------------------------------------------------------------
BEGIN;
SELECT idem_once('msg-1') AS first;
ROLLBACK;
SELECT idem_fail('msg-1', 'bad payload', max_attempts => 2) AS state;
BEGIN;
SELECT idem_once_batch(ARRAY['msg-1', 'msg-2']) AS new_again;
ROLLBACK;
BEGIN;
SELECT idem_once('msg-1') AS retried;
ROLLBACK;
SELECT idem_fail('msg-1', 'bad payload') AS state;
-- dead: never new again
SELECT idem_once('msg-1') AS once, idem_once_batch(ARRAY['msg-1', 'msg-3']) AS batch;

------------------------------------------------------------------------
-- a lease whose holder keeps crashing: bounded by max_attempts
------------------------------------------------------------------------
SELECT status, attempts FROM idem_lease_full('job-1', '{"n": 1}'::jsonb, lease => '1 microsecond', max_attempts => 2);
SELECT status AS s1, token AS t1, attempts AS a1
FROM idem_lease_full('job-1', '{"n": 1}'::jsonb, lease => '1 microsecond') \gset
SELECT :'s1' AS status, :'a1' AS attempts;
SELECT idem_checkpoint('job-1', :'t1', 'charged', '{"charge": "ch_1"}'::jsonb, extend => '1 microsecond') IS NOT NULL AS checkpointed;
-- the lease ran out on the last attempt: dead, with its recovery point
SELECT status, token, phase, state, attempts, last_error FROM idem_lease_full('job-1', '{"n": 1}'::jsonb);
SELECT status, phase, state, attempts FROM idem_lease_full('job-1', '{"n": 1}'::jsonb, max_attempts => 10);
SELECT status, attempts, last_error FROM idem_begin_full('job-1', '{"n": 1}'::jsonb);
SELECT try(format($$SELECT idem_finish('job-1', 200, token => %L)$$, :'t1'));

-- a holder reports its failure with its token: the next lease takes over at once
SELECT token AS t2 FROM idem_lease_full('job-2', '{}'::jsonb, lease => '1 hour', max_attempts => 2) \gset
SELECT idem_fail('job-2', 'provider 503', token => :'t2') AS state;
SELECT status AS s3, token AS t3, attempts AS a3
FROM idem_lease_full('job-2', '{}'::jsonb) \gset
SELECT :'s3' AS status, :'a3' AS attempts;
SELECT idem_fail('job-2', 'provider 503 again', token => :'t3') AS state;
SELECT status, attempts, last_error FROM idem_lease_full('job-2', '{}'::jsonb);
-- a stale token cannot report a failure
SELECT try(format($$SELECT idem_fail('job-2', 'late', token => %L)$$, :'t2'));

------------------------------------------------------------------------
-- the operator: list, retry, discard
------------------------------------------------------------------------
SELECT scope, key, status, attempts, max_attempts, last_error, phase, lease
FROM idem_failed_keys ORDER BY key COLLATE "C";
SELECT failed_keys, dead_keys FROM idem_storage;
-- a dead request gets new attempts: failed again, and its next begin starts
SELECT idem_retry('req-1') AS state;
BEGIN;
SELECT status FROM idem_begin_full('req-1', '{"amount": 5}'::jsonb);
SELECT idem_finish('req-1', 201, '{"paid": true}');
COMMIT;
SELECT status, response_body FROM idem_begin_full('req-1', '{"amount": 5}'::jsonb);
-- a dead lease gets new attempts: the next lease resumes from the recovery point
SELECT idem_retry('job-1') AS state;
SELECT status, phase, state, attempts FROM idem_lease_full('job-1', '{"n": 1}'::jsonb);
-- discard forgets a dead or failed key: the next begin is a new key's
SELECT idem_discard('req-4') AS discarded, idem_discard('req-3') AS discarded_failed;
BEGIN;
SELECT status FROM idem_begin_full('req-4');
SELECT idem_release('req-4');
COMMIT;
SELECT count(*) AS rows_left FROM idem_keys WHERE key IN ('req-3', 'req-4');

-- a lease over a failed key goes on counting its attempts, with the
-- key's bound and reason
SELECT idem_fail('mixed-1', 'first try failed', max_attempts => 3) AS state;
SELECT status, attempts FROM idem_lease_full('mixed-1', lease => '1 microsecond');
SELECT status, attempts, last_error FROM idem_lease_full('mixed-1', lease => '1 microsecond');
SELECT status, attempts, last_error FROM idem_lease_full('mixed-1');
-- and one whose bound was reached already is dead at once
SELECT idem_fail('mixed-2', 'e1') AS s1, idem_fail('mixed-2', 'e2') AS s2;
SELECT status, token, attempts, last_error FROM idem_lease_full('mixed-2', max_attempts => 2);

-- erasing a failed key leaves a tombstone: its retries do not start again
SELECT idem_fail('er-f', 'card 4242 declined') AS state;
SELECT idem_erase('er-f') AS erased;
SELECT state, last_error FROM idem_keys WHERE key = 'er-f';
SELECT status FROM idem_begin('er-f');
-- keeping: a dead key is kept; a failed one has no result to keep
SELECT idem_keep('job-2') AS kept;
SELECT idem_fail('keep-f', 'e') AS state;
SELECT try($$SELECT idem_keep('keep-f')$$);

------------------------------------------------------------------------
-- bad input and wrong states: a precise error, nothing changes
------------------------------------------------------------------------
SELECT idem_fail('req-5', 'e') AS state;
SELECT keys_state() AS s0 \gset
SELECT n, try(stmt) FROM (VALUES
  (1,  $$SELECT idem_fail(NULL, 'e')$$),
  (2,  $$SELECT idem_fail('x', NULL)$$),
  (3,  $$SELECT idem_fail('x', '')$$),
  (4,  $$SELECT idem_fail('x', repeat('e', 8193))$$),
  (5,  $$SELECT idem_fail('x', 'e', max_attempts => 0)$$),
  (6,  $$SELECT idem_fail('x', 'e', max_attempts => -1)$$),
  (7,  $$SELECT idem_fail('x', 'e', max_attempts => 1000001)$$),
  (8,  $$SELECT idem_fail('x', 'e', ttl => '0')$$),
  (9,  $$SELECT idem_fail('x', 'e', ttl => NULL)$$),
  (10, $$SELECT idem_fail('x', 'e', NULL)$$),
  (11, $$SELECT idem_fail('req-2', 'e')$$),
  (12, $$SELECT idem_fail('job-1', 'e')$$),
  (13, $$SELECT idem_fail('x', 'e', token => gen_random_uuid())$$),
  (14, $$SELECT status FROM idem_lease_full('y', max_attempts => 0)$$),
  (15, $$SELECT idem_retry('req-2')$$),
  (16, $$SELECT idem_retry('never-seen')$$),
  (17, $$SELECT idem_retry('req-5')$$),
  (18, $$SELECT idem_discard('req-2')::text$$),
  (19, $$SELECT idem_discard('never-seen')::text$$),
  (20, $$SELECT idem_retry(NULL)$$),
  (21, $$SELECT idem_discard('x', NULL)::text$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
BEGIN;
SELECT status FROM idem_begin_full('open-1');
SELECT try($$SELECT idem_fail('open-1', 'e')$$);
SELECT idem_release('open-1');
ROLLBACK;
BEGIN READ ONLY;
SELECT try($$SELECT idem_fail('ro', 'e')$$);
SELECT try($$SELECT idem_retry('ro')$$);
ROLLBACK;

-- who may: PUBLIC reports failures; only granted roles retry, discard, list
CREATE ROLE regress_idem_app;
SET ROLE regress_idem_app;
SELECT idem_fail('app-1', 'e', max_attempts => 1) AS state;
SELECT try($$SELECT idem_retry('app-1')$$);
SELECT try($$SELECT idem_discard('app-1')::text$$);
SELECT try($$SELECT count(*)::text FROM idem_failed_keys$$);
RESET ROLE;
DROP ROLE regress_idem_app;

-- counted in idem_stats
SELECT failures, dead, dead_replies, retried, discarded FROM idem_stats WHERE datname = current_database();

-- the owner of the extension's schema may drop its indexes (they are no
-- extension members); writes keep whatever indexes the table has, so a
-- partial index that is gone stops nothing, while a call that needs one
-- (the primary key, the expiry index) fails and says how to make it
-- again, never to drop the extension (and its keys)
BEGIN;
DROP INDEX idem_keys_failures;
SELECT idem_fail('lost-index', 'e');
ROLLBACK;
BEGIN;
DROP INDEX idem_keys_expires_at;
SELECT idem_once('lost-index');
ROLLBACK;
SELECT idem_fail('after-rollback', 'e') AS indexes_back;

DROP FUNCTION try(text);
DROP FUNCTION keys_state();
TRUNCATE idem_keys;
