--
-- limits: an operator's bounds on what a call may ask for
-- (idempotency.max_ttl, idempotency.max_lease,
-- idempotency.max_response_size), and idem_discard for a key in any state.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
DROP ROLE IF EXISTS regress_limits_app, regress_limits_dbowner;
RESET client_min_messages;
TRUNCATE idem_keys;

-- try(stmt): 'ok: <first column>' or 'SQLSTATE: message'
CREATE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r text;
BEGIN
  EXECUTE stmt INTO r;
  RETURN 'ok: ' || coalesce(r, 'NULL');
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION try(text) TO PUBLIC;
CREATE FUNCTION big_work(request jsonb) RETURNS idem_response
LANGUAGE sql AS $$ SELECT idem_response(200, jsonb_build_object('pad', repeat('x', 500))) $$;

------------------------------------------------------------------------
-- the settings: none by default, a superuser's alone
------------------------------------------------------------------------
SELECT name, setting, unit, context, vartype, min_val, max_val
FROM pg_settings WHERE name IN ('idempotency.max_ttl', 'idempotency.max_lease',
                                'idempotency.max_response_size')
ORDER BY name;
CREATE ROLE regress_limits_app;
CREATE ROLE regress_limits_dbowner CREATEDB;
SET ROLE regress_limits_app;
SELECT try('SET idempotency.max_ttl = 0') AS app_sets_ttl,
       try('SET idempotency.max_lease = 0') AS app_sets_lease,
       try('SET idempotency.max_response_size = 0') AS app_sets_size,
       try('ALTER ROLE regress_limits_app SET idempotency.max_ttl = 0') AS app_alters_itself;
RESET ROLE;
-- a database owner cannot lift them for its database
SELECT current_database() AS db \gset
ALTER DATABASE :"db" OWNER TO regress_limits_dbowner;
SET ROLE regress_limits_dbowner;
SELECT try(format('ALTER DATABASE %I SET idempotency.max_ttl = 0', current_database())) AS owner_alters_database;
RESET ROLE;
ALTER DATABASE :"db" OWNER TO CURRENT_USER;
SELECT left(try('SET idempotency.max_ttl = -1'), 5) AS negative;

------------------------------------------------------------------------
-- idempotency.max_ttl: every call that takes a ttl, and idem_keep
------------------------------------------------------------------------
SET idempotency.max_ttl = '1h';
SHOW idempotency.max_ttl;
SELECT c.name, try(c.stmt) AS outcome
FROM (VALUES
  ('idem_begin',      'SELECT status FROM idem_begin(''t1'', ''{}''::jsonb, '''', ''2 hours'')'),
  ('idem_begin text', 'SELECT status FROM idem_begin(''t1'', ''x''::text, '''', ''61 minutes'')'),
  ('idem_call',       'SELECT status FROM idem_call(''t1'', ''{}'', ''big_work(jsonb)'', '''', ''1 day'')'),
  ('idem_once',       'SELECT idem_once(''t1'', '''', ''7 days'')'),
  ('idem_once_batch', 'SELECT idem_once_batch(ARRAY[''t1''], '''', ''7 days'')'),
  ('idem_lease',      'SELECT status FROM idem_lease(''t1'', ''{}'', '''', ''1 day'', ''1 minute'')'),
  ('idem_fail',       'SELECT idem_fail(''t1'', ''boom'', '''', 3, ''1 day'')'),
  ('infinity',        'SELECT idem_once(''t1'', '''', ''1000 years'')')
) c(name, stmt);
-- nothing of it was written
SELECT count(*) AS keys FROM idem_keys;
-- within the bound, as before; at the bound exactly, too
SELECT idem_once('t1', '', '1 hour') AS at_bound, idem_once('t2', '', '5 minutes') AS within;
SELECT expires_at - created_at AS ttl FROM idem_keys WHERE key = 't1';
-- a key kept for good has no bound: refused while one is set, and unchanged
SELECT try('SELECT idem_keep(''t1'')') AS keep;
SELECT expires_at - created_at AS ttl FROM idem_keys WHERE key = 't1';
-- the default ttl of a call (24 hours) is a ttl too
SELECT try('SELECT status FROM idem_begin(''t3'')') AS default_ttl;
RESET idempotency.max_ttl;
SELECT idem_keep('t1') AS kept_without_bound;

------------------------------------------------------------------------
-- idempotency.max_lease: a lease, an extension; a renewal is cut to it
------------------------------------------------------------------------
SELECT status, token IS NOT NULL AS has_token FROM idem_lease('l1', '{}', '', '1 day', '30 minutes');
SELECT lease_token AS token FROM idem_keys WHERE key = 'l1' \gset
SET idempotency.max_lease = '10min';
SELECT try('SELECT status FROM idem_lease(''l2'', ''{}'', '''', ''1 day'', ''11 minutes'')') AS lease,
       try(format('SELECT idem_checkpoint(''l1'', %L, ''p'', NULL, '''', ''1 hour'')', :'token')) AS extend;
SELECT count(*) AS l2_keys FROM idem_keys WHERE key = 'l2';
-- the lease taken before the bound renews (by its own 30 minutes) only
-- as far as the bound: now() is the transaction's start in both
BEGIN;
SELECT idem_checkpoint('l1', :'token', 'p') - now() AS renewed_for;
SELECT lease_expires_at - now() AS lease_left FROM idem_keys WHERE key = 'l1';
COMMIT;
SELECT status FROM idem_lease('l3', '{}', '', '1 day', '10 minutes');
RESET idempotency.max_lease;

------------------------------------------------------------------------
-- idempotency.max_response_size: a finish of a larger response is refused
------------------------------------------------------------------------
SET idempotency.max_response_size = 200;
SHOW idempotency.max_response_size;
BEGIN;
SELECT status FROM idem_begin('r1', '{}'::jsonb);
SELECT idem_finish('r1', 200, jsonb_build_object('pad', repeat('x', 500)));
ROLLBACK;
BEGIN;
SELECT status FROM idem_begin('r2', '{}'::jsonb);
SELECT idem_finish('r2', 200, NULL, '', NULL, NULL, convert_to(repeat('x', 500), 'UTF8'));
ROLLBACK;
BEGIN;
SELECT status FROM idem_begin('r3', '{}'::jsonb);
SELECT idem_finish('r3', 200, NULL, '', NULL,
                   jsonb_build_object('x-pad', repeat('x', 500)));
ROLLBACK;
SELECT try('SELECT status FROM idem_call(''r4'', ''{}'', ''big_work(jsonb)'')') AS call;
-- a finish by a lease's holder too
SELECT token AS ltoken FROM idem_lease('r5', '{}') \gset
SELECT try(format('SELECT idem_finish(''r5'', 200, jsonb_build_object(''pad'', repeat(''x'', 500)), '''', %L)', :'ltoken')) AS lease_finish;
-- and a lease's recovery point, which every resume returns
SELECT try(format('SELECT idem_checkpoint(''r5'', %L, ''p'', jsonb_build_object(''pad'', repeat(''x'', 500)))', :'ltoken')) AS checkpoint_state;
SELECT phase, phase_state FROM idem_keys WHERE key = 'r5';
SELECT idem_checkpoint('r5', :'ltoken', 'p', '{"step": 1}') IS NOT NULL AS small_state_kept;
SELECT key, state FROM idem_keys WHERE key LIKE 'r%' ORDER BY key;
-- a smaller one is stored
BEGIN;
SELECT status FROM idem_begin('r6', '{}'::jsonb);
SELECT idem_finish('r6', 200, '{"ok":true}');
COMMIT;
RESET idempotency.max_response_size;
SELECT idem_release('r5', '', :'ltoken');

------------------------------------------------------------------------
-- idem_discard(key, scope, any_state => true): a key in any state
------------------------------------------------------------------------
TRUNCATE idem_keys;
BEGIN;
SELECT status FROM idem_begin('d-completed', '{"n":1}'::jsonb);
SELECT idem_finish('d-completed', 201, '{"paid":1}');
COMMIT;
-- a hostile lease, for as long as any bound allowed
SELECT token AS htoken FROM idem_lease('d-leased', '{}', '', '1000 years', '1000 years') \gset
SELECT idem_once('d-erased');
SELECT idem_erase('d-erased');
SELECT idem_fail('d-failed', 'boom');
-- the two-argument form still refuses what is not failed or dead
SELECT try('SELECT idem_discard(''d-completed'')') AS completed,
       try('SELECT idem_discard(''d-leased'')') AS leased;
-- with any_state, each goes
SELECT key, idem_discard(key, '', any_state => true)
FROM (VALUES ('d-completed'), ('d-leased'), ('d-erased'), ('d-failed')) v(key);
SELECT count(*) AS keys FROM idem_keys;
-- the completed key's retry runs its work again; the lease's holder has
-- lost it; a new lease can be taken at once
BEGIN;
SELECT status FROM idem_begin('d-completed', '{"n":1}'::jsonb);
SELECT idem_release('d-completed');
COMMIT;
SELECT try(format('SELECT idem_checkpoint(''d-leased'', %L, ''p'')', :'htoken')) AS old_holder;
SELECT status FROM idem_lease('d-leased', '{}');
-- an absent key: 55000; a NULL any_state: 22004; a key this transaction
-- has open: 55000; read-only: 25006; an application role: 42501
SELECT try('SELECT idem_discard(''nothing'', '''', true)') AS absent,
       try('SELECT idem_discard(''d-leased'', '''', NULL)') AS null_flag;
BEGIN;
SELECT status FROM idem_begin('d-open', '{}'::jsonb);
SELECT try('SELECT idem_discard(''d-open'', '''', true)') AS open_here;
ROLLBACK;
BEGIN READ ONLY;
SELECT try('SELECT idem_discard(''d-leased'', '''', true)') AS read_only;
ROLLBACK;
SET ROLE regress_limits_app;
SELECT try('SELECT idem_discard(''d-leased'', '''', true)') AS app_role;
RESET ROLE;
SELECT key, state FROM idem_keys ORDER BY key;

TRUNCATE idem_keys;
DROP FUNCTION big_work(jsonb);
DROP FUNCTION try(text);
DROP ROLE regress_limits_app, regress_limits_dbowner;
