--
-- lease: keys whose work spans transactions (idem_lease, idem_checkpoint,
-- idem_finish / idem_release with a token), single session.  Time passing
-- is simulated by moving lease_expires_at into the past as a superuser.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
\i test/helpers/regress.sql

-- the business table the phases write to
CREATE TABLE lease_effects (key text, phase text, attempt int);

------------------------------------------------------------------------
-- started: the in-progress record commits with the lease transaction
------------------------------------------------------------------------
BEGIN;
SELECT status, token, attempts,
       num_nulls(phase, state, response_code, response_body) = 4 AS rest_null
FROM idem_lease('pay-1', '{"amount": 500}') \gset first_
SELECT :'first_status' AS status, :'first_attempts' AS attempts, :'first_rest_null' AS rest_null;
SELECT lease_token = :'first_token' AS token_stored FROM idem_keys WHERE key = 'pay-1';
SELECT state, attempts, phase, phase_state,
       lease_expires_at = now() + interval '30 seconds' AS default_lease,
       expires_at = now() + interval '24 hours' AS default_ttl,
       lease_duration
FROM idem_keys WHERE key = 'pay-1';
-- (the calls below need the lease still running, and 30 seconds can pass
-- before they come on a slow machine: it is made to run an hour instead)
UPDATE idem_keys SET lease_expires_at = now() + interval '1 hour' WHERE key = 'pay-1';
COMMIT;
\set t1 :first_token

-- while the lease runs: nobody else starts, a different body is refused,
-- and nothing of the holder's (token, recovery point) is shown
SELECT * FROM idem_lease('pay-1', '{"amount": 500}');
SELECT * FROM idem_lease('pay-1', '{"amount": 501}');
SELECT status, response_code, response_body FROM idem_begin('pay-1', '{"amount": 500}'::jsonb);
SELECT status, response_code, response_body FROM idem_begin('pay-1', '{"amount": 501}'::jsonb, wait => false);
SELECT status, response_code, response_body FROM idem_lookup('pay-1');
SELECT idem_once('pay-1') AS once;

------------------------------------------------------------------------
-- phase 1: its writes and its recovery point commit together
------------------------------------------------------------------------
BEGIN;
INSERT INTO lease_effects VALUES ('pay-1', 'charged', 1);
SELECT idem_checkpoint('pay-1', :'t1', 'charged', '{"charge": "ch_1"}')
       = now() + interval '30 seconds' AS renewed_by_lease;
COMMIT;
SELECT phase, phase_state, attempts FROM idem_keys WHERE key = 'pay-1';

-- a recovery point that rolls back is not recorded
BEGIN;
INSERT INTO lease_effects VALUES ('pay-1', 'emailed', 1);
SELECT idem_checkpoint('pay-1', :'t1', 'emailed', '{"mail": "m_1"}', extend => '1 hour')
       = now() + interval '1 hour' AS renewed_by_extend;
ROLLBACK;
SELECT phase, phase_state FROM idem_keys WHERE key = 'pay-1';

-- an extend too long for any timestamp is a bad argument and changes nothing
SELECT keys_state() AS before_extend \gset
SELECT try(format($$SELECT idem_checkpoint('pay-1', %L, 'x', extend => '250000 years')$$, :'t1'));
SELECT try(format($$SELECT idem_checkpoint('pay-1', %L, 'x', extend => '1000 years 1 mon')$$, :'t1'));
SELECT keys_state() = :'before_extend' AS unchanged;
-- a lease taken before 0.3.0 may be longer than 0.3.0 accepts: renewed by
-- its own length, it runs to the key's ttl (which caps every lease)
BEGIN;
SELECT token AS old_token FROM idem_lease('old-lease', ttl => '1 hour', lease => '1 minute') \gset
COMMIT;
UPDATE idem_keys SET lease_duration = '5000 years' WHERE key = 'old-lease';
SELECT idem_checkpoint('old-lease', :'old_token', 'p1') = expires_at AS renewed_to_ttl
FROM idem_keys WHERE key = 'old-lease';
SELECT idem_release('old-lease', token => :'old_token');

------------------------------------------------------------------------
-- the holder dies; its lease runs out; the next caller resumes
------------------------------------------------------------------------
UPDATE idem_keys SET lease_expires_at = now() - interval '1 second' WHERE key = 'pay-1';
-- a different request is still refused
SELECT status, token FROM idem_lease('pay-1', '{"amount": 501}');
BEGIN;
SELECT status, token <> :'t1' AS new_token, phase, state, attempts
FROM idem_lease('pay-1', '{"amount": 500}', lease => '1 hour');
SELECT lease_token AS t2 FROM idem_keys WHERE key = 'pay-1' \gset
COMMIT;
SELECT lease_expires_at > now() AS lease_live, lease_duration, attempts
FROM idem_keys WHERE key = 'pay-1';

-- the old holder is fenced off: every call with its token fails with
-- 55000 and changes nothing
SELECT keys_state() AS before \gset
SELECT try(format($$SELECT idem_checkpoint('pay-1', %L, 'emailed')$$, :'t1'));
SELECT try(format($$SELECT idem_finish('pay-1', 200, token => %L)$$, :'t1'));
SELECT try(format($$SELECT idem_release('pay-1', token => %L)$$, :'t1'));
SELECT keys_state() = :'before' AS unchanged;

-- the new holder does the last phase and finishes, with its writes
BEGIN;
INSERT INTO lease_effects VALUES ('pay-1', 'emailed', 2);
SELECT idem_checkpoint('pay-1', :'t2', 'emailed', '{"mail": "m_2"}')
       = now() + interval '1 hour' AS renewed_by_new_lease;
SELECT idem_finish('pay-1', 201, '{"id": "pay_1"}', token => :'t2');
COMMIT;
SELECT state, response_code, response_body, attempts, lease_token, lease_expires_at,
       lease_duration, phase, phase_state
FROM idem_keys WHERE key = 'pay-1';
SELECT * FROM lease_effects ORDER BY attempt, phase COLLATE "C";

-- retries replay; tokens, old or new, no longer apply
SELECT * FROM idem_lease('pay-1', '{"amount": 500}');
SELECT status, response_code, response_body FROM idem_begin('pay-1', '{"amount": 500}'::jsonb);
SELECT status, response_code FROM idem_lookup('pay-1');
SELECT try(format($$SELECT idem_checkpoint('pay-1', %L, 'late')$$, :'t2'));
SELECT try(format($$SELECT idem_finish('pay-1', 200, token => %L)$$, :'t1'));

------------------------------------------------------------------------
-- lease, checkpoint and finish in one transaction; release; rollback
------------------------------------------------------------------------
BEGIN;
SELECT token AS t3 FROM idem_lease('one-txn', scope => 's') \gset
SELECT idem_checkpoint('one-txn', :'t3', 'a', scope => 's') > now() AS checkpointed;
SELECT idem_finish('one-txn', 200, scope => 's', token => :'t3');
COMMIT;
SELECT status, response_code FROM idem_lease('one-txn', scope => 's');

SELECT token AS t4 FROM idem_lease('given-up') \gset
SELECT idem_release('given-up', token => :'t4');
SELECT status, response_code FROM idem_lookup('given-up');
SELECT status, attempts FROM idem_lease('given-up', '{"again": true}');

BEGIN;
SELECT status FROM idem_lease('rolled-back');
ROLLBACK;
SELECT status FROM idem_lookup('rolled-back');

-- calls on one key in one statement see each other's writes
SELECT idem_finish('same-statement', 200, token => l.token)
FROM idem_lease('same-statement') l;
SELECT status, response_code FROM idem_lookup('same-statement');
WITH l AS (SELECT token FROM idem_lease('same-statement-2'))
SELECT idem_checkpoint('same-statement-2', l.token, 'one') IS NOT NULL AS one,
       idem_checkpoint('same-statement-2', l.token, 'two') IS NOT NULL AS two,
       idem_release('same-statement-2', token => l.token) IS NOT NULL AS released
FROM l;
SELECT status FROM idem_lookup('same-statement-2');

-- the commit guard does not apply: a leased key is meant to be committed
BEGIN;
SELECT status FROM idem_lease('left-leased');
COMMIT;
SELECT status FROM idem_lookup('left-leased');

------------------------------------------------------------------------
-- a lease whose ttl has passed is absent, and swept whatever its state
------------------------------------------------------------------------
SELECT status FROM idem_lease('short', ttl => '1 microsecond');
SELECT status, attempts FROM idem_lease('short', '{"new": "request"}');
SELECT status FROM idem_lease('short-2', ttl => '1 microsecond');
BEGIN;
SELECT idem_sweep() >= 1 AS swept;
SELECT count(*) AS left FROM idem_keys WHERE key = 'short-2';
COMMIT;
-- DDL holding the expiry index, which the sweep walks (here in a prepared
-- transaction): the sweep does nothing rather than wait for it; DDL on an
-- index the sweep does not read (deletes make no index entries) does not
-- stop it
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'short-3', NULL, NULL);
BEGIN;
ALTER INDEX idem_keys_leases SET TABLESPACE pg_default;
PREPARE TRANSACTION 'idem-lease-index-ddl';
SELECT idem_sweep() >= 1 AS swept_during_lease_index_ddl;
COMMIT PREPARED 'idem-lease-index-ddl';
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'short-3', NULL, NULL);
BEGIN;
ALTER INDEX idem_keys_expires_at SET TABLESPACE pg_default;
PREPARE TRANSACTION 'idem-lease-index-ddl';
SET lock_timeout = '100ms';
SELECT try($$SELECT idem_sweep()::text$$) AS sweep_during_ddl;
RESET lock_timeout;
COMMIT PREPARED 'idem-lease-index-ddl';
SELECT idem_sweep() >= 1 AS swept_after;

------------------------------------------------------------------------
-- a lease never runs past the key's ttl: the lease, a takeover and a
-- renewal end at expires_at at the latest
------------------------------------------------------------------------
BEGIN;
SELECT token AS ttl_token FROM idem_lease('short-ttl', ttl => '1 minute', lease => '1 hour') \gset
SELECT lease_expires_at = expires_at AS lease_ends_with_ttl, expires_at = now() + interval '1 minute' AS ttl
FROM idem_keys WHERE key = 'short-ttl';
SELECT idem_checkpoint('short-ttl', :'ttl_token', 'p1', extend => '2 days') = now() + interval '1 minute'
       AS renewal_ends_with_ttl;
SELECT idem_checkpoint('short-ttl', :'ttl_token', 'p2', extend => '10 seconds') = now() + interval '10 seconds'
       AS shorter_renewal_kept;
UPDATE idem_keys SET lease_expires_at = now() - interval '1 second' WHERE key = 'short-ttl';
SELECT status, attempts FROM idem_lease('short-ttl', lease => '2 hours');
SELECT lease_expires_at = expires_at AS takeover_ends_with_ttl FROM idem_keys WHERE key = 'short-ttl';
-- and idem_begin's in_progress for a leased key has the status only
SELECT * FROM idem_begin('short-ttl');
ROLLBACK;

------------------------------------------------------------------------
-- two-phase commit: a prepared lease, recovery point or finish is an
-- uncommitted write like any other; callers that wait, wait for COMMIT
-- PREPARED (shown by lock_timeout), the others see in_progress, the
-- sweeper passes it by, and ROLLBACK PREPARED leaves nothing of it
------------------------------------------------------------------------
BEGIN;
SELECT status, token AS tp_token FROM idem_lease('tp-lease', '{"n": 1}', lease => '1 hour') \gset
INSERT INTO lease_effects VALUES ('tp-lease', 'leased', 1);
PREPARE TRANSACTION 'idem-tp-lease-1';
SELECT gid FROM pg_prepared_xacts;
SET lock_timeout = '100ms';
SELECT try($$SELECT status FROM idem_lease('tp-lease', '{"n": 1}')$$);
SELECT try($$SELECT status FROM idem_begin('tp-lease', '{"n": 1}'::jsonb)$$);
SELECT try($$SELECT idem_once('tp-lease')::text$$);
SELECT try(format($$SELECT idem_checkpoint('tp-lease', %L, 'p1')$$, :'tp_token'));
SELECT status FROM idem_begin('tp-lease', '{"n": 1}'::jsonb, wait => false);
SELECT status FROM idem_lookup('tp-lease');
RESET lock_timeout;
SELECT idem_sweep() AS swept;
COMMIT PREPARED 'idem-tp-lease-1';
SELECT status FROM idem_lease('tp-lease', '{"n": 1}');
-- a recovery point prepared, then rolled back: the last committed one stands
SELECT idem_checkpoint('tp-lease', :'tp_token', 'p1', '{"done": 1}') IS NOT NULL AS p1;
BEGIN;
SELECT idem_checkpoint('tp-lease', :'tp_token', 'p2', '{"done": 2}') IS NOT NULL AS p2;
INSERT INTO lease_effects VALUES ('tp-lease', 'p2', 1);
PREPARE TRANSACTION 'idem-tp-lease-2';
SET lock_timeout = '100ms';
SELECT try(format($$SELECT idem_checkpoint('tp-lease', %L, 'p3')$$, :'tp_token'));
RESET lock_timeout;
ROLLBACK PREPARED 'idem-tp-lease-2';
SELECT phase, phase_state FROM idem_keys WHERE key = 'tp-lease';
-- a finish prepared, then committed: replay
BEGIN;
SELECT idem_finish('tp-lease', 201, '{"id": 1}'::jsonb, token => :'tp_token');
INSERT INTO lease_effects VALUES ('tp-lease', 'finished', 1);
PREPARE TRANSACTION 'idem-tp-lease-3';
SELECT status FROM idem_lookup('tp-lease');
COMMIT PREPARED 'idem-tp-lease-3';
SELECT status, response_code, response_body FROM idem_lease('tp-lease', '{"n": 1}');
SELECT phase FROM lease_effects WHERE key = 'tp-lease' ORDER BY phase COLLATE "C";

------------------------------------------------------------------------
-- row locks on idem_keys (SELECT ... FOR SHARE, a foreign key): the
-- caller's own are no obstacle; another transaction's is waited for, as an
-- UPDATE would, under lock_timeout (a statement timeout turns a busy loop
-- into an error here, with room for a slow machine)
------------------------------------------------------------------------
SET statement_timeout = '2min';
SELECT token AS rl_token FROM idem_lease('row-locked', lease => '1 hour') \gset
BEGIN;
SELECT key AS locked FROM idem_keys WHERE key = 'row-locked' FOR SHARE;
SELECT idem_checkpoint('row-locked', :'rl_token', 'p1') IS NOT NULL AS p1;
SELECT idem_finish('row-locked', 200, token => :'rl_token');
COMMIT;
SELECT status FROM idem_lookup('row-locked');
-- a takeover, a release and the removal of an expired record, each after
-- the caller locked the row
SELECT token AS rl_token FROM idem_lease('row-locked-2', lease => '1 hour') \gset
UPDATE idem_keys SET lease_expires_at = now() - interval '1 second' WHERE key = 'row-locked-2';
BEGIN;
SELECT key AS locked FROM idem_keys WHERE key = 'row-locked-2' FOR KEY SHARE;
SELECT status, attempts FROM idem_lease('row-locked-2') \gset rl_
SELECT :'rl_status' AS status, :'rl_attempts' AS attempts;
COMMIT;
SELECT lease_token AS rl_token FROM idem_keys WHERE key = 'row-locked-2' \gset
BEGIN;
SELECT key AS locked FROM idem_keys WHERE key = 'row-locked-2' FOR UPDATE;
SELECT idem_release('row-locked-2', token => :'rl_token');
COMMIT;
SELECT status FROM idem_lookup('row-locked-2');
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'row-locked-3', NULL, NULL);
BEGIN;
SELECT key AS locked FROM idem_keys WHERE key = 'row-locked-3' FOR SHARE;
SELECT idem_once('row-locked-3') AS once;
COMMIT;
-- another transaction's row lock (a prepared one, so that this session
-- can go on) is waited for
SELECT token AS rl_token FROM idem_lease('row-locked-4', lease => '1 hour') \gset
BEGIN;
SELECT key AS locked FROM idem_keys WHERE key = 'row-locked-4' FOR SHARE;
PREPARE TRANSACTION 'idem-row-lock';
SET lock_timeout = '100ms';
SELECT try(format($$SELECT idem_checkpoint('row-locked-4', %L, 'p1')$$, :'rl_token'));
SELECT try(format($$SELECT idem_release('row-locked-4', token => %L)$$, :'rl_token'));
RESET lock_timeout;
COMMIT PREPARED 'idem-row-lock';
SELECT idem_checkpoint('row-locked-4', :'rl_token', 'p1') IS NOT NULL AS p1;
SELECT idem_release('row-locked-4', token => :'rl_token');
RESET statement_timeout;

------------------------------------------------------------------------
-- tokens in the wrong place, and the token-less calls on a leased key
------------------------------------------------------------------------
SELECT lease_token AS t5 FROM idem_keys WHERE key = 'left-leased' \gset
SELECT keys_state() AS before \gset
SELECT try($$SELECT idem_finish('left-leased', 200)$$);
SELECT try($$SELECT idem_release('left-leased')$$);
SELECT try(format($$SELECT idem_finish('no-such-key', 200, token => %L)$$, :'t5'));
SELECT try(format($$SELECT idem_checkpoint('left-leased', %L, 'p', scope => 'other')$$, :'t5'));
SELECT try(format($$SELECT idem_finish('left-leased', 200, token => %L)$$, gen_random_uuid()));
BEGIN;
SELECT status FROM idem_begin('plain');
SELECT try(format($$SELECT idem_finish('plain', 200, token => %L)$$, :'t5'));
SELECT try($$SELECT status FROM idem_lease('plain')$$);
SELECT idem_release('plain');
COMMIT;
SELECT keys_state() = :'before' AS unchanged;

------------------------------------------------------------------------
-- bad arguments: precise SQLSTATEs, nothing changed
------------------------------------------------------------------------
SELECT try($$SELECT status FROM idem_lease(NULL)$$);
SELECT try($$SELECT status FROM idem_lease('')$$);
SELECT try($$SELECT status FROM idem_lease(repeat('k', 256))$$);
SELECT try($$SELECT status FROM idem_lease('k', scope => NULL)$$);
SELECT try($$SELECT status FROM idem_lease('k', ttl => NULL)$$);
SELECT try($$SELECT status FROM idem_lease('k', ttl => '0')$$);
SELECT try($$SELECT status FROM idem_lease('k', lease => NULL)$$);
SELECT try($$SELECT status FROM idem_lease('k', lease => '-1 second')$$);
SELECT try($$SELECT status FROM idem_lease('k', lease => '0')$$);
SELECT try($$SELECT status FROM idem_lease('k', lease => '1 month -29 days')$$);
SELECT try(format($$SELECT idem_checkpoint(NULL, %L, 'p')$$, :'t5'));
SELECT try($$SELECT idem_checkpoint('left-leased', NULL, 'p')$$);
SELECT try(format($$SELECT idem_checkpoint('left-leased', %L, NULL)$$, :'t5'));
SELECT try(format($$SELECT idem_checkpoint('left-leased', %L, '')$$, :'t5'));
SELECT try(format($$SELECT idem_checkpoint('left-leased', %L, repeat('p', 256))$$, :'t5'));
SELECT try(format($$SELECT idem_checkpoint('left-leased', %L, 'p', extend => '0')$$, :'t5'));
SELECT try(format($$SELECT idem_checkpoint('left-leased', %L, 'p', scope => NULL)$$, :'t5'));
SELECT try(format($$SELECT idem_finish('left-leased', 99, token => %L)$$, :'t5'));
SELECT try(format($$SELECT idem_finish('left-leased', NULL, token => %L)$$, :'t5'));
SELECT try($$SELECT idem_checkpoint('left-leased', 'not-a-uuid', 'p')$$);
SELECT keys_state() = :'before' AS unchanged;

DROP TABLE lease_effects;
DROP FUNCTION try(text);
DROP FUNCTION keys_state();
