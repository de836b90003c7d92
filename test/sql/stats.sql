--
-- stats: the idem_stats counters and idem_storage, single session.
-- Counters count calls as they return, committed or not.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
\i test/helpers/regress.sql

-- counters of this database, as one row of text
CREATE FUNCTION counters() RETURNS TABLE (started int8, replay int8, mismatch int8,
    in_progress int8, resumed int8, finishes int8, releases int8, checkpoints int8,
    once_true int8, once_false int8, stale_tokens int8, keys_swept int8)
LANGUAGE sql AS $$
  SELECT started, replay, mismatch, in_progress, resumed, finishes, releases,
         checkpoints, once_true, once_false, stale_tokens, keys_swept
  FROM idem_stats WHERE datname = current_database()
$$;

SELECT idem_stats_reset();
SELECT stats_reset IS NOT NULL AS reset_recorded, stats_reset <= now() + interval '1 minute' AS reset_now
FROM idem_stats WHERE datname = current_database();
SELECT * FROM counters();

-- begins by outcome, finishes, releases
BEGIN;
SELECT status FROM idem_begin('a', '{"n": 1}'::jsonb);
SELECT idem_finish('a', 200);
SELECT status FROM idem_begin('b');
SELECT idem_release('b');
COMMIT;
SELECT status FROM idem_begin('a', '{"n": 1}'::jsonb);
SELECT status FROM idem_begin('a', '{"n": 2}'::jsonb);
SELECT * FROM counters();

-- messages
SELECT idem_once('m');
SELECT idem_once('m');
SELECT idem_once('m');
SELECT once_true, once_false FROM counters();

-- leases: started, in_progress, checkpoints, resumed, stale tokens (l2's
-- lease runs an hour, not the default 30 seconds, so that it is still
-- running for the next two calls however slow the machine)
SELECT token AS t1 FROM idem_lease('l', lease => '1 microsecond') \gset
SELECT status FROM idem_lease('l2', lease => '1 hour');
SELECT status FROM idem_lease('l2');
SELECT status FROM idem_begin('l2');
SELECT idem_checkpoint('l', :'t1', 'one') IS NOT NULL AS checkpointed;
SELECT token AS t2 FROM idem_lease('l') \gset
SELECT try(format($$SELECT idem_checkpoint('l', %L, 'two')$$, :'t1'));
SELECT try(format($$SELECT idem_finish('l', 200, token => %L)$$, :'t1'));
SELECT idem_finish('l', 201, token => :'t2');
SELECT try(format($$SELECT idem_release('l', token => %L)$$, :'t2'));
SELECT * FROM counters();

-- a call whose transaction rolls back is counted all the same
BEGIN;
SELECT status FROM idem_begin('rolled-back');
ROLLBACK;
SELECT started FROM counters();

-- a call that fails on its arguments is not a call that returned
SELECT try($$SELECT status FROM idem_begin('')$$);
SELECT started, mismatch FROM counters();

-- sweeps count the keys they remove
SELECT idem_once('short', ttl => '1 microsecond');
SELECT idem_once('short-2', ttl => '1 microsecond');
SELECT idem_sweep() AS swept \gset
SELECT keys_swept = :swept AS swept_counted, :swept >= 2 AS swept_both FROM counters();

-- counting can be turned off, by a superuser
SET idempotency.track_stats = off;
SELECT status FROM idem_begin('a', '{"n": 1}'::jsonb);
SELECT idem_once('m');
RESET idempotency.track_stats;
SELECT replay, once_false FROM counters();
CREATE ROLE regress_idem_stats_user;
SET ROLE regress_idem_stats_user;
SELECT try($$SET idempotency.track_stats = off$$);
SELECT try($$SET idempotency.track_timing = on$$);
RESET ROLE;
DROP ROLE regress_idem_stats_user;

-- the time calls spend inside the extension: only with track_timing (off
-- by default, as track_io_timing is); each timed call adds to both columns
SHOW idempotency.track_timing;
SELECT idem_stats_reset();
SELECT idem_once('timed-1');
SELECT timed_calls, call_time FROM idem_stats WHERE datname = current_database();
SET idempotency.track_timing = on;
SELECT idem_once('timed-2');
SELECT status FROM idem_begin('timed-2');
SELECT idem_once_batch(ARRAY['timed-3', 'timed-4']);
SELECT count(*) FROM idem_lookup('timed-2');
-- a call that fails is not timed
SELECT try($$SELECT idem_once('')::text$$);
RESET idempotency.track_timing;
SELECT idem_once('timed-5');
SELECT timed_calls, call_time > 0 AS some_time, call_time < 60000 AS under_a_minute,
       key_waits, key_wait_time
FROM idem_stats WHERE datname = current_database();

-- reset zeroes this database's counters
SELECT idem_stats_reset();
SELECT * FROM counters();

------------------------------------------------------------------------
-- idem_storage
------------------------------------------------------------------------
TRUNCATE idem_keys;
ANALYZE idem_keys;
SELECT * FROM idem_storage;
-- two live leases, one of them run out; three completed keys; two expired
-- (the live one runs an hour: 30 seconds could pass before the count on a
-- slow machine)
SELECT status FROM idem_lease('s-live', lease => '1 hour');
SELECT status FROM idem_lease('s-out', lease => '1 microsecond');
SELECT idem_once('s-' || i) FROM generate_series(1, 3) i;
SELECT idem_once('s-exp-' || i, ttl => '1 microsecond') FROM generate_series(1, 2) i;
VACUUM ANALYZE idem_keys;
SELECT completed_keys_estimate, leased_keys, leases_expired, expired_keys,
       expired_keys_capped, table_bytes > 0 AS has_table, index_bytes > 0 AS has_indexes,
       permanent_keys, permanent_keys_capped
FROM idem_storage;
-- one of the completed keys kept for good
SELECT idem_keep('s-1');
SELECT completed_keys_estimate, permanent_keys FROM idem_storage;
-- the counts can come from indexes, without a scan of the table (on a table
-- this small the planner would rather scan it, so it is told not to)
CREATE FUNCTION key_table_scans(query text) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
  line text;
BEGIN
  FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
    IF line ~ 'Scan.* on idem_keys' THEN
      RETURN NEXT regexp_replace(line, '^[ ->]*', '');
    END IF;
  END LOOP;
END
$$;
SET enable_seqscan = off;
SELECT key_table_scans('SELECT leased_keys, leases_expired, expired_keys, permanent_keys FROM idem_storage');
RESET enable_seqscan;
DROP FUNCTION key_table_scans(text);

DROP FUNCTION counters();
DROP FUNCTION try(text);
DROP FUNCTION keys_state();
