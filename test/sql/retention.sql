--
-- retention: keys kept for good (idem_keep) and erased on purpose
-- (idem_erase, idem_erase_scope).
--
-- A kept key's expires_at is infinity, on every version.  An erased key
-- keeps only its name and times: every later call answers "erased"
-- (idem_once: false), so the work is never done a second time, until its
-- ttl passes and the sweeper removes it.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
\i test/helpers/regress.sql

------------------------------------------------------------------------
-- idem_keep
------------------------------------------------------------------------
-- a completed key
BEGIN;
SELECT status FROM idem_begin('pay-1', '{"amount": 5}'::jsonb, scope => 'acct');
SELECT idem_finish('pay-1', 201, '{"id": 1}'::jsonb, scope => 'acct');
COMMIT;
SELECT idem_keep('pay-1', 'acct') AS kept;
SELECT status, response_code, response_body, expires_at
FROM idem_begin('pay-1', '{"amount": 5}'::jsonb, scope => 'acct');
-- kept twice is kept
SELECT idem_keep('pay-1', 'acct') AS kept_again;
-- finished in this transaction, in the same statement as the finish
BEGIN;
SELECT status FROM idem_begin('pay-2');
SELECT idem_finish('pay-2', 200), idem_keep('pay-2');
COMMIT;
SELECT key, expires_at FROM idem_keys WHERE key = 'pay-2';
-- a message id, in the same statement as idem_once
SELECT idem_once('msg-1') AS first, idem_keep('msg-1') AS kept;
-- a leased key: the key is kept, the lease still runs out as before
SELECT token AS t1 FROM idem_lease('job-1', lease => '1 hour') \gset
SELECT idem_keep('job-1') AS kept;
SELECT expires_at = 'infinity' AS key_kept, lease_expires_at < 'infinity' AS lease_finite
FROM idem_keys WHERE key = 'job-1';
SELECT idem_finish('job-1', 200, token => :'t1');
SELECT expires_at FROM idem_keys WHERE key = 'job-1';
-- rolled back, it is not kept
BEGIN;
SELECT idem_once('msg-2');
COMMIT;
BEGIN;
SELECT idem_keep('msg-2');
ROLLBACK;
SELECT expires_at = created_at + interval '7 days' AS ttl_7_days FROM idem_keys WHERE key = 'msg-2';

-- kept keys are never swept, and idem_storage counts them
SELECT idem_once('short', ttl => '1 microsecond');
SELECT idem_sweep() AS swept;
SELECT count(*) FILTER (WHERE expires_at = 'infinity') AS kept_rows, count(*) AS all_rows
FROM idem_keys;
SELECT permanent_keys, permanent_keys_capped FROM idem_storage;

-- what cannot be kept: 55000 and nothing changes
SELECT keys_state() AS s0 \gset
SELECT n, try(stmt) FROM (VALUES
  (1, $$SELECT idem_keep('never-seen')$$),
  (2, $$SELECT idem_keep('short')$$),
  (3, $$SELECT idem_keep(NULL)$$),
  (4, $$SELECT idem_keep('')$$),
  (5, $$SELECT idem_keep('pay-1', NULL)$$),
  (6, $$SELECT idem_keep(repeat('k', 256))$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
BEGIN;
SELECT status FROM idem_begin('open-1');
SELECT try($$SELECT idem_keep('open-1')$$);
SELECT idem_release('open-1');
ROLLBACK;
BEGIN READ ONLY;
SELECT try($$SELECT idem_keep('pay-1', 'acct')$$);
ROLLBACK;

------------------------------------------------------------------------
-- idem_erase
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin('er-1', '{"card": "4242"}'::jsonb, scope => 'tenant-a');
SELECT idem_finish('er-1', 201, '{"name": "Ada Lovelace"}'::jsonb, scope => 'tenant-a');
COMMIT;
SELECT created_at AS er1_created, expires_at AS er1_expires
FROM idem_keys WHERE key = 'er-1' \gset
SELECT idem_erase('er-1', 'tenant-a') AS erased;
-- only the name and the times are left
SELECT scope, key, state, fingerprint, response_code, response_body,
       created_at = :'er1_created' AS same_created, expires_at = :'er1_expires' AS same_expiry
FROM idem_keys WHERE key = 'er-1';
-- every later call: erased, whatever the request; the work is not started
SELECT status, response_code, response_body, expires_at = :'er1_expires' AS expiry_shown
FROM idem_begin('er-1', '{"card": "4242"}'::jsonb, scope => 'tenant-a');
SELECT status FROM idem_begin('er-1', '{"card": "other"}'::jsonb, scope => 'tenant-a');
SELECT status FROM idem_begin('er-1', 'text body', scope => 'tenant-a');
SELECT status FROM idem_begin('er-1', scope => 'tenant-a', wait => false);
SELECT status, response_code FROM idem_lookup('er-1', 'tenant-a');
SELECT status, token, phase, response_code FROM idem_lease('er-1', scope => 'tenant-a');
SELECT idem_once('er-1', 'tenant-a') AS once;
SELECT idem_once_batch(ARRAY['er-1'], 'tenant-a') AS batch;
SELECT idem_keep('er-1', 'tenant-a') AS keep_erased;
SELECT try($$SELECT idem_finish('er-1', 200, scope => 'tenant-a')$$);
-- erased twice: nothing more to erase
SELECT idem_erase('er-1', 'tenant-a') AS erased_again;
-- an absent key: nothing to erase, nothing written
SELECT idem_erase('never-seen') AS erased_absent;
SELECT count(*) AS rows_for_absent FROM idem_keys WHERE key = 'never-seen';
-- an expired key is deleted outright
SELECT idem_once('er-exp', ttl => '1 microsecond');
SELECT idem_erase('er-exp') AS erased_expired;
SELECT count(*) AS rows_for_expired FROM idem_keys WHERE key = 'er-exp';

-- a leased key: the holder's token stops applying, the recovery point goes
SELECT token AS t2 FROM idem_lease('er-job', '{"to": "ada@example.com"}'::jsonb) \gset
SELECT idem_checkpoint('er-job', :'t2', 'charged', '{"charge": "ch_1"}'::jsonb) IS NOT NULL AS checkpointed;
SELECT idem_erase('er-job') AS erased;
SELECT state, phase, phase_state, lease_token, attempts FROM idem_keys WHERE key = 'er-job';
SELECT try(format($$SELECT idem_checkpoint('er-job', %L, 'two')$$, :'t2'));
SELECT try(format($$SELECT idem_finish('er-job', 200, token => %L)$$, :'t2'));
SELECT try(format($$SELECT idem_release('er-job', token => %L)$$, :'t2'));

-- in the transaction that wrote the key, in the same statement
BEGIN;
SELECT idem_once('er-same'), idem_erase('er-same');
SELECT state FROM idem_keys WHERE key = 'er-same';
ROLLBACK;

-- rolled back, nothing was erased
SELECT idem_once('er-rb') AS recorded;
BEGIN;
SELECT idem_erase('er-rb');
ROLLBACK;
SELECT idem_once('er-rb') AS still_seen, state FROM idem_keys WHERE key = 'er-rb';

-- bad input and wrong states: a precise error, and nothing changes
SELECT keys_state() AS s1 \gset
SELECT n, try(stmt) FROM (VALUES
  (1, $$SELECT idem_erase(NULL)::text$$),
  (2, $$SELECT idem_erase('')::text$$),
  (3, $$SELECT idem_erase(repeat('k', 256))::text$$),
  (4, $$SELECT idem_erase('k', NULL)::text$$),
  (5, $$SELECT idem_erase_scope(NULL)::text$$),
  (6, $$SELECT idem_erase_scope(repeat('s', 256))::text$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s1' AS unchanged;
BEGIN;
SELECT status FROM idem_begin('open-2');
SELECT try($$SELECT idem_erase('open-2')::text$$);
SELECT idem_release('open-2');
ROLLBACK;
BEGIN READ ONLY;
SELECT try($$SELECT idem_erase('pay-1', 'acct')::text$$);
SELECT try($$SELECT idem_erase_scope('acct')::text$$);
ROLLBACK;

------------------------------------------------------------------------
-- idem_erase_scope: every key of one scope, no other
------------------------------------------------------------------------
SELECT idem_once_batch(ARRAY['t-1', 't-2', 't-3'], 'tenant-b') AS recorded;
SELECT token AS t3 FROM idem_lease('t-job', scope => 'tenant-b') \gset
SELECT idem_once('t-exp', 'tenant-b', ttl => '1 microsecond');
SELECT idem_once_batch(ARRAY['t-1', 't-2'], 'tenant-c') AS other_tenant;
SELECT idem_once_batch(ARRAY['t-1'], 'tenant-b-suffix') AS longer_scope;
SELECT idem_erase_scope('tenant-b') AS erased;
SELECT scope, key, state FROM idem_keys WHERE scope LIKE 'tenant-b%' OR scope = 'tenant-c'
ORDER BY scope COLLATE "C", key COLLATE "C";
SELECT idem_once_batch(ARRAY['t-1', 't-2', 't-new'], 'tenant-b') AS after_erasure;
-- a scope with nothing left to erase, and an empty scope's keys
SELECT idem_erase_scope('tenant-b') AS erased_again;
SELECT idem_erase_scope('no-such-tenant') AS erased_none;
-- a key this transaction has begun and not finished has no record yet: the
-- others are erased, and only in this transaction
BEGIN;
SELECT status FROM idem_begin('t-open', scope => 'tenant-c');
SELECT idem_erase_scope('tenant-c') AS erased;
SELECT idem_release('t-open', 'tenant-c');
ROLLBACK;
SELECT count(*) FILTER (WHERE state = 'e') AS erased_in_c FROM idem_keys WHERE scope = 'tenant-c';

------------------------------------------------------------------------
-- who may: PUBLIC may keep, not erase
------------------------------------------------------------------------
CREATE ROLE regress_idem_app;
CREATE ROLE regress_idem_ops;
GRANT EXECUTE ON FUNCTION idem_erase(text, text), idem_erase_scope(text) TO regress_idem_ops;
SET ROLE regress_idem_app;
SELECT idem_once('app-msg') AS recorded, idem_keep('app-msg') AS kept;
SELECT try($$SELECT idem_erase('app-msg')::text$$);
SELECT try($$SELECT idem_erase_scope('')::text$$);
RESET ROLE;
SET ROLE regress_idem_ops;
SELECT idem_erase('app-msg') AS erased_by_ops;
RESET ROLE;
DROP OWNED BY regress_idem_ops;
DROP ROLE regress_idem_app;
DROP ROLE regress_idem_ops;

-- counted in idem_stats
SELECT idem_stats_reset();
SELECT idem_once('c-1'), idem_keep('c-1'), idem_erase('c-1');
SELECT status FROM idem_begin('c-1');
SELECT idem_once('c-1');
SELECT kept, erased, erased_replies, once_false FROM idem_stats WHERE datname = current_database();

DROP FUNCTION try(text);
DROP FUNCTION keys_state();
TRUNCATE idem_keys;
