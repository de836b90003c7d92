--
-- xact: the commit guard, savepoints, two-phase commit, the key locks,
-- isolation levels and read-only transactions, in one session.
--
\set SHOW_CONTEXT never
-- runs alone or after api; starts from an empty key store
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
-- nothing here may wait on a lock: turn a hang into an error (the statement
-- timeout leaves room for the batches below under valgrind on a busy machine)
SET lock_timeout = '10s';
SET statement_timeout = '2min';

-- the key locks of this session, and of prepared transactions
CREATE FUNCTION key_locks(OUT mine bigint, OUT prepared bigint) LANGUAGE sql AS $$
  SELECT count(*) FILTER (WHERE pid = pg_backend_pid()),
         count(*) FILTER (WHERE pid IS NULL)
  FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756
$$;
CREATE TABLE work (id int PRIMARY KEY, note text);

------------------------------------------------------------------------
-- key locks: one per open key, none once finished or released
------------------------------------------------------------------------
SELECT * FROM key_locks();
BEGIN;
SELECT status FROM idem_begin('lk-1');
SELECT locktype, mode, granted, objsubid FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT * FROM key_locks();
SELECT status FROM idem_begin('lk-2', scope => 's');
SELECT status FROM idem_begin('lk-3');
SELECT * FROM key_locks();
SELECT idem_finish('lk-1', 200);
SELECT * FROM key_locks();
SELECT idem_release('lk-2', 's');
SELECT * FROM key_locks();
SELECT idem_finish('lk-3', 200);
SELECT * FROM key_locks();
-- replay, mismatch and lookup take no lock
SELECT status FROM idem_begin('lk-1');
SELECT status FROM idem_begin('lk-1', '{}'::jsonb);
SELECT status FROM idem_lookup('lk-2', 's');
SELECT idem_once('lk-4') AS once;
SELECT * FROM key_locks();
COMMIT;
SELECT * FROM key_locks();
-- SQL advisory locks are a different lock space
BEGIN;
SELECT status FROM idem_begin('lk-5');
SELECT pg_try_advisory_xact_lock(0) AS sql_lock;
SELECT objsubid, count(*) FROM pg_locks
WHERE locktype = 'advisory' AND pid = pg_backend_pid() GROUP BY objsubid ORDER BY objsubid;
ROLLBACK;
SELECT * FROM key_locks();

------------------------------------------------------------------------
-- the commit guard
------------------------------------------------------------------------
BEGIN;
INSERT INTO work VALUES (1, 'guarded');
SELECT status FROM idem_begin('g-1', '{"n": 1}'::jsonb);
COMMIT;
\echo :LAST_ERROR_SQLSTATE
-- the whole transaction rolled back: no work, no key, no lock
SELECT count(*) AS work_rows FROM work;
SELECT status FROM idem_lookup('g-1');
SELECT * FROM key_locks();
-- the message names the scope too
BEGIN;
SELECT status FROM idem_begin('g-2', scope => 'tenant-9');
COMMIT;
-- in an implicit transaction as well
SELECT status FROM idem_begin('g-3');
\echo :LAST_ERROR_SQLSTATE
SELECT status FROM idem_lookup('g-3');
-- finished and released keys pass the guard
BEGIN;
SELECT status FROM idem_begin('g-4');
SELECT status FROM idem_begin('g-5');
SELECT idem_finish('g-4', 200);
SELECT idem_release('g-5');
COMMIT;
SELECT status FROM idem_lookup('g-4');
-- two unfinished keys: the message names one of them, the detail counts them
BEGIN;
SELECT status FROM idem_begin('g-6');
SELECT status FROM idem_begin('g-7');
SELECT status FROM idem_begin('g-8');
SELECT idem_finish('g-8', 200);
\set VERBOSITY sqlstate
COMMIT;
\set VERBOSITY default
SELECT :'LAST_ERROR_MESSAGE' IN (
  'idempotency key "g-6" was begun but neither finished nor released',
  'idempotency key "g-7" was begun but neither finished nor released') AS names_a_key;
SELECT key, status FROM (VALUES ('g-6'), ('g-7'), ('g-8')) v(key), idem_lookup(v.key)
ORDER BY key COLLATE "C";
-- a transaction that failed anyway just rolls back
BEGIN;
SELECT status FROM idem_begin('g-9');
SELECT 1 / 0;
COMMIT;
SELECT status FROM idem_lookup('g-9');
-- ROLLBACK is always fine
BEGIN;
SELECT status FROM idem_begin('g-10');
ROLLBACK;

-- idempotency.unfinished = 'release' turns the guard into a silent release
SHOW idempotency.unfinished;
SET idempotency.unfinished = 'release';
BEGIN;
INSERT INTO work VALUES (2, 'released at commit');
SELECT status FROM idem_begin('u-1', '{"n": 1}'::jsonb);
SELECT status FROM idem_begin('u-2');
SELECT status FROM idem_begin('u-3');
SELECT idem_finish('u-3', 200);
COMMIT;
SELECT id, note FROM work ORDER BY id;
SELECT key, status FROM (VALUES ('u-1'), ('u-2'), ('u-3')) v(key), idem_lookup(v.key)
ORDER BY key COLLATE "C";
SELECT * FROM key_locks();
SELECT status FROM idem_begin('u-4');
SELECT status FROM idem_lookup('u-4');
RESET idempotency.unfinished;
-- SET LOCAL works for one transaction
BEGIN;
SET LOCAL idempotency.unfinished = 'release';
SELECT status FROM idem_begin('u-5');
COMMIT;
SHOW idempotency.unfinished;
BEGIN;
SELECT status FROM idem_begin('u-5');
COMMIT;
-- only the two values exist
SET idempotency.unfinished = 'ignore';
\echo :LAST_ERROR_SQLSTATE
SET idempotency.unfinished = 'ERROR';
SHOW idempotency.unfinished;
RESET idempotency.unfinished;
-- who may change it: any role for its own sessions, and a database's owner
-- for the database (docs/security.md); no other idempotency.* setting
SELECT current_database() AS db, datdba::regrole AS owner0
FROM pg_database WHERE datname = current_database() \gset
CREATE ROLE regress_idem_dbowner;
ALTER DATABASE :"db" OWNER TO regress_idem_dbowner;
SET ROLE regress_idem_dbowner;
SET idempotency.unfinished = 'release';
SHOW idempotency.unfinished;
RESET idempotency.unfinished;
ALTER DATABASE :"db" SET idempotency.unfinished = 'release';
SELECT c AS database_setting
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) c
WHERE d.datname = current_database() AND s.setrole = 0 AND c LIKE 'idempotency.%';
ALTER DATABASE :"db" RESET idempotency.unfinished;
\set VERBOSITY sqlstate
ALTER DATABASE :"db" SET idempotency.track_stats = off;
SET idempotency.track_stats = off;
\set VERBOSITY default
RESET ROLE;
ALTER DATABASE :"db" OWNER TO :"owner0";
DROP ROLE regress_idem_dbowner;

------------------------------------------------------------------------
-- savepoints
------------------------------------------------------------------------
-- begun in a savepoint that rolls back: free again, and COMMIT passes
BEGIN;
SAVEPOINT a;
SELECT status FROM idem_begin('sp-1');
SELECT status FROM idem_lookup('sp-1');
ROLLBACK TO a;
SELECT status FROM idem_lookup('sp-1');
SELECT * FROM key_locks();
COMMIT;
SELECT status FROM idem_lookup('sp-1');
-- begun in a savepoint, which is then released: still begun, guard applies
BEGIN;
SAVEPOINT a;
SELECT status FROM idem_begin('sp-2');
RELEASE SAVEPOINT a;
SELECT status FROM idem_lookup('sp-2');
COMMIT;
SELECT status FROM idem_lookup('sp-2');
-- ... and finishing it in the outer transaction lets its lock go
BEGIN;
SAVEPOINT a;
SELECT status FROM idem_begin('sp-3');
RELEASE SAVEPOINT a;
SELECT idem_finish('sp-3', 200);
SELECT * FROM key_locks();
COMMIT;
SELECT status, response_code FROM idem_lookup('sp-3');
-- finished in a savepoint that rolls back: begun again, and COMMIT fails
BEGIN;
INSERT INTO work VALUES (3, 'finish rolled back');
SELECT status FROM idem_begin('sp-4');
SAVEPOINT a;
SELECT idem_finish('sp-4', 200, '{"v": 1}'::jsonb);
SELECT status, response_code FROM idem_lookup('sp-4');
ROLLBACK TO a;
SELECT status, response_code FROM idem_lookup('sp-4');
SELECT * FROM key_locks();
SELECT status FROM idem_begin('sp-4');
ROLLBACK TO a;
COMMIT;
SELECT status FROM idem_lookup('sp-4');
SELECT count(*) AS work_rows FROM work WHERE id = 3;
-- ... or is finished again, and COMMIT passes
BEGIN;
SELECT status FROM idem_begin('sp-5');
SAVEPOINT a;
SELECT idem_finish('sp-5', 200, '{"v": 1}'::jsonb);
ROLLBACK TO a;
SELECT idem_finish('sp-5', 201, '{"v": 2}'::jsonb);
-- ROLLBACK TO keeps savepoint a open, so the lock stays until it ends
SELECT * FROM key_locks();
RELEASE SAVEPOINT a;
SELECT * FROM key_locks();
COMMIT;
SELECT status, response_code, response_body FROM idem_lookup('sp-5');
-- finished in a savepoint that is released: finished, and its lock is let go
BEGIN;
SELECT status FROM idem_begin('sp-6');
SAVEPOINT a;
SELECT idem_finish('sp-6', 200);
RELEASE SAVEPOINT a;
SELECT status FROM idem_lookup('sp-6');
SELECT status FROM idem_begin('sp-6');
SELECT * FROM key_locks();
COMMIT;
SELECT status FROM idem_lookup('sp-6');
-- released in a savepoint that rolls back: begun again
BEGIN;
SELECT status FROM idem_begin('sp-7');
SAVEPOINT a;
SELECT idem_release('sp-7');
SELECT status FROM idem_lookup('sp-7');
ROLLBACK TO a;
SELECT status FROM idem_lookup('sp-7');
COMMIT;
SELECT status FROM idem_lookup('sp-7');
-- released in a savepoint that is released: absent, may be begun again
BEGIN;
SELECT status FROM idem_begin('sp-8', '{"v": 1}'::jsonb);
SAVEPOINT a;
SELECT idem_release('sp-8');
RELEASE SAVEPOINT a;
SELECT status FROM idem_lookup('sp-8');
SELECT status FROM idem_begin('sp-8', '{"v": 2}'::jsonb);
SELECT idem_finish('sp-8', 200);
COMMIT;
SELECT status FROM idem_begin('sp-8', '{"v": 2}'::jsonb);
-- nested savepoints
BEGIN;
SAVEPOINT a;
SELECT status FROM idem_begin('sp-9');
SAVEPOINT b;
SELECT idem_finish('sp-9', 200);
SAVEPOINT c;
SELECT status FROM idem_begin('sp-10');
ROLLBACK TO b;
SELECT key, status FROM (VALUES ('sp-9'), ('sp-10')) v(key), idem_lookup(v.key)
ORDER BY key COLLATE "C";
ROLLBACK TO a;
SELECT key, status FROM (VALUES ('sp-9'), ('sp-10')) v(key), idem_lookup(v.key)
ORDER BY key COLLATE "C";
SELECT * FROM key_locks();
COMMIT;
-- an error inside a savepoint
BEGIN;
SAVEPOINT a;
SELECT status FROM idem_begin('sp-11');
SELECT 1 / 0;
ROLLBACK TO a;
SELECT status FROM idem_begin('sp-11');
SELECT idem_finish('sp-11', 200);
COMMIT;
SELECT status FROM idem_lookup('sp-11');

-- PL/pgSQL exception blocks are savepoints
BEGIN;
DO $$
BEGIN
  BEGIN
    PERFORM idem_begin('pl-1');
    INSERT INTO work VALUES (4, 'in exception block');
    RAISE EXCEPTION 'payment declined';
  EXCEPTION WHEN raise_exception THEN
    RAISE NOTICE 'caught: %', SQLERRM;
  END;
END
$$;
SELECT status FROM idem_lookup('pl-1');
SELECT * FROM key_locks();
COMMIT;
SELECT status FROM idem_lookup('pl-1');
SELECT count(*) AS work_rows FROM work WHERE id = 4;
-- an error after idem_finish in the block undoes the finish
BEGIN;
SELECT status FROM idem_begin('pl-2');
DO $$
BEGIN
  BEGIN
    PERFORM idem_finish('pl-2', 200);
    RAISE EXCEPTION 'late failure';
  EXCEPTION WHEN raise_exception THEN
    RAISE NOTICE 'caught: %', SQLERRM;
  END;
END
$$;
SELECT status FROM idem_lookup('pl-2');
SELECT idem_finish('pl-2', 500, '{"error": "late failure"}'::jsonb);
COMMIT;
SELECT status, response_code, response_body FROM idem_lookup('pl-2');
-- a batch where each item is finished inside its own exception block:
-- every finish lets its key's lock go once the block has succeeded
-- (20,000 keys, more than the lock table holds if they kept their locks;
-- test/valgrind.sh sets idem_test.batch_keys lower)
SELECT set_config('idem_test.batch_keys',
                  coalesce(current_setting('idem_test.batch_keys', true), '20000'), false) AS n \gset
BEGIN;
DO $$
BEGIN
  FOR i IN 1..current_setting('idem_test.batch_keys')::int LOOP
    PERFORM idem_begin('pl-batch-' || i);
    BEGIN
      PERFORM idem_finish('pl-batch-' || i, 200);
    EXCEPTION WHEN OTHERS THEN
      RAISE;
    END;
  END LOOP;
END
$$;
SELECT * FROM key_locks();
COMMIT;
SELECT count(*) = :n AS all_batch_rows FROM idem_keys WHERE key LIKE 'pl-batch-%';
-- and where each item has its own exception block around begin and finish
BEGIN;
DO $$
BEGIN
  FOR i IN 1..current_setting('idem_test.batch_keys')::int LOOP
    BEGIN
      PERFORM idem_begin('pl-item-' || i);
      PERFORM idem_finish('pl-item-' || i, 200);
    EXCEPTION WHEN OTHERS THEN
      RAISE;
    END;
  END LOOP;
END
$$;
SELECT * FROM key_locks();
COMMIT;
SELECT count(*) = :n AS all_item_rows FROM idem_keys WHERE key LIKE 'pl-item-%';
DELETE FROM idem_keys WHERE key LIKE 'pl-batch-%' OR key LIKE 'pl-item-%';

------------------------------------------------------------------------
-- two-phase commit
------------------------------------------------------------------------
-- an unfinished key: PREPARE fails and the transaction rolls back
BEGIN;
INSERT INTO work VALUES (5, 'never prepared');
SELECT status FROM idem_begin('tp-1');
PREPARE TRANSACTION 'idem-tp-1';
\echo :LAST_ERROR_SQLSTATE
SELECT gid FROM pg_prepared_xacts;
SELECT status FROM idem_lookup('tp-1');
SELECT count(*) AS work_rows FROM work WHERE id = 5;
SELECT * FROM key_locks();

-- finished, prepared, committed: replay
BEGIN;
SELECT status FROM idem_begin('tp-2', '{"n": 2}'::jsonb);
SELECT idem_finish('tp-2', 201, '{"id": 2}'::jsonb);
PREPARE TRANSACTION 'idem-tp-2';
SELECT gid FROM pg_prepared_xacts;
SELECT * FROM key_locks();
-- while prepared, the key is in progress in another transaction
SELECT status, response_code, response_body, created_at FROM idem_lookup('tp-2');
SELECT status, response_code, response_body, created_at
FROM idem_begin('tp-2', '{"n": 2}'::jsonb, wait => false);
BEGIN;
SELECT status FROM idem_begin('tp-2', '{"n": 2}'::jsonb, wait => false);
SELECT idem_finish('tp-2', 200);
ROLLBACK;
BEGIN;
SELECT idem_release('tp-2');
ROLLBACK;
-- idem_once and idem_begin with wait => true wait for it
SET lock_timeout = '100ms';
SELECT idem_once('tp-2') AS once;
\echo :LAST_ERROR_SQLSTATE
SELECT status FROM idem_begin('tp-2', '{"n": 2}'::jsonb);
SET lock_timeout = '10s';
-- and the sweeper neither waits nor touches it
SELECT idem_sweep() AS swept;
COMMIT PREPARED 'idem-tp-2';
SELECT status, response_code, response_body FROM idem_begin('tp-2', '{"n": 2}'::jsonb);
SELECT status FROM idem_begin('tp-2', '{"n": 3}'::jsonb);
SELECT status, response_code, response_body FROM idem_lookup('tp-2');

-- finished, prepared, rolled back: absent, started again
BEGIN;
SELECT status FROM idem_begin('tp-3', '{"n": 3}'::jsonb);
SELECT idem_finish('tp-3', 201, '{"id": 3}'::jsonb);
PREPARE TRANSACTION 'idem-tp-3';
SELECT status FROM idem_lookup('tp-3');
ROLLBACK PREPARED 'idem-tp-3';
SELECT status FROM idem_lookup('tp-3');
BEGIN;
SELECT status, response_code, response_body FROM idem_begin('tp-3', '{"n": 4}'::jsonb);
SELECT idem_release('tp-3');
COMMIT;

-- with idempotency.unfinished = 'release', PREPARE releases the key
SET idempotency.unfinished = 'release';
BEGIN;
INSERT INTO work VALUES (6, 'prepared with a released key');
SELECT status FROM idem_begin('tp-4');
SELECT status FROM idem_begin('tp-5');
SELECT idem_finish('tp-5', 200);
PREPARE TRANSACTION 'idem-tp-4';
RESET idempotency.unfinished;
SELECT gid FROM pg_prepared_xacts;
-- the prepared transaction holds no key lock: tp-4 is free
SELECT * FROM key_locks();
SELECT status FROM idem_lookup('tp-4');
SELECT status FROM idem_lookup('tp-5');
BEGIN;
SELECT status FROM idem_begin('tp-4', wait => false);
SELECT idem_release('tp-4');
COMMIT;
COMMIT PREPARED 'idem-tp-4';
SELECT status FROM idem_lookup('tp-4');
SELECT status FROM idem_lookup('tp-5');
SELECT count(*) AS work_rows FROM work WHERE id = 6;

-- a prepared transaction that re-began an expired key
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'tp-6', NULL, '{"old": true}');
BEGIN;
SELECT status FROM idem_begin('tp-6');
SELECT idem_finish('tp-6', 202, '{"new": true}'::jsonb);
PREPARE TRANSACTION 'idem-tp-6';
-- the expired row it deleted is skipped by the sweep, without waiting
SELECT idem_sweep() AS swept;
-- the key is in progress in another transaction, for every function
SELECT status FROM idem_begin('tp-6', wait => false);
SELECT status FROM idem_lookup('tp-6');
BEGIN;
SELECT idem_finish('tp-6', 200);
ROLLBACK;
BEGIN;
SELECT idem_release('tp-6');
ROLLBACK;
SET lock_timeout = '100ms';
SELECT idem_once('tp-6') AS once;
SET lock_timeout = '10s';
ROLLBACK PREPARED 'idem-tp-6';
-- the expired row is back, still expired, and can now be swept
SELECT status FROM idem_lookup('tp-6');
SELECT idem_sweep() AS swept;
SELECT count(*) FROM idem_keys WHERE key = 'tp-6';
SELECT gid FROM pg_prepared_xacts;

------------------------------------------------------------------------
-- REPEATABLE READ and SERIALIZABLE, one session
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin('rr-1', '{"n": 1}'::jsonb);
SELECT idem_finish('rr-1', 200, '{"v": 1}'::jsonb);
COMMIT;
-- a key completed before the snapshot: replay
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM work;
SELECT status, response_code, response_body FROM idem_begin('rr-1', '{"n": 1}'::jsonb);
SELECT status FROM idem_begin('rr-1', '{"n": 2}'::jsonb);
SELECT status, response_code FROM idem_lookup('rr-1');
SELECT idem_once('rr-1') AS once;
-- own keys, finished in this transaction: replay
SELECT status FROM idem_begin('rr-2', '{"n": 2}'::jsonb);
SELECT idem_finish('rr-2', 201, '{"v": 2}'::jsonb);
SELECT status, response_code, response_body FROM idem_begin('rr-2', '{"n": 2}'::jsonb);
SELECT status FROM idem_begin('rr-2', '{"n": 3}'::jsonb);
SELECT status, response_code FROM idem_lookup('rr-2');
-- ... also when finished in a released savepoint
SAVEPOINT a;
SELECT status FROM idem_begin('rr-3');
SELECT idem_finish('rr-3', 202);
RELEASE SAVEPOINT a;
SELECT status, response_code FROM idem_begin('rr-3');
SELECT idem_once('rr-4') AS once_first, idem_once('rr-4') AS once_again;
COMMIT;
SELECT key, status, response_code FROM (VALUES ('rr-2'), ('rr-3'), ('rr-4')) v(key), idem_lookup(v.key)
ORDER BY key COLLATE "C";
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT count(*) FROM work;
SELECT status, response_code FROM idem_begin('rr-2', '{"n": 2}'::jsonb);
SELECT status FROM idem_begin('sr-1');
SELECT idem_finish('sr-1', 200);
SELECT status, response_code FROM idem_begin('sr-1');
COMMIT;
SELECT status FROM idem_lookup('sr-1');

------------------------------------------------------------------------
-- read-only transactions
------------------------------------------------------------------------
BEGIN READ ONLY;
SELECT status, response_code FROM idem_begin('rr-1', '{"n": 1}'::jsonb);
SELECT status FROM idem_begin('rr-1', '{"n": 9}'::jsonb);
SELECT status FROM idem_lookup('ro-1');
SELECT idem_once('rr-1') AS once;
ROLLBACK;
BEGIN READ ONLY;
SELECT status FROM idem_begin('ro-1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN READ ONLY;
SELECT idem_once('ro-1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN READ ONLY;
SELECT idem_sweep();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT status FROM idem_lookup('ro-1');
SELECT * FROM key_locks();

DROP TABLE work;
DROP FUNCTION key_locks();
