--
-- scopes: scope prefixes that belong to roles (idem_scope_owners).  Every
-- function that takes a scope, called by every kind of role, on a key in
-- every state: a role without the owner's privileges gets 42501 and
-- changes nothing; the owner, its members, BYPASSRLS roles and superusers
-- go on as before; with no rules, nothing is bound.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
DROP ROLE IF EXISTS regress_scope_a, regress_scope_b, regress_scope_a_worker,
  regress_scope_ops, regress_scope_gone;
RESET client_min_messages;
TRUNCATE idem_keys;

CREATE ROLE regress_scope_a;
CREATE ROLE regress_scope_b;
CREATE ROLE regress_scope_a_worker IN ROLE regress_scope_a;
CREATE ROLE regress_scope_ops BYPASSRLS;
-- the operator's functions too, so that only the boundary decides
GRANT EXECUTE ON FUNCTION idem_erase(text, text), idem_erase_scope(text),
  idem_retry(text, text), idem_discard(text, text),
  idem_discard(text, text, boolean)
  TO regress_scope_a, regress_scope_b, regress_scope_ops;
GRANT SELECT ON idem_failed_keys TO regress_scope_a, regress_scope_b, regress_scope_ops;

CREATE FUNCTION scope_work(request jsonb) RETURNS idem_response
LANGUAGE sql AS $$ SELECT idem_response(201, request) $$;

-- outcome(stmt, keep): 'ok' or the SQLSTATE; what the statement did is
-- rolled back unless keep
CREATE FUNCTION outcome(stmt text, keep boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    EXECUTE stmt;
    IF keep THEN
      RETURN 'ok';
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'ZZ000', MESSAGE = 'ok';
  EXCEPTION WHEN OTHERS THEN
    RETURN CASE WHEN SQLSTATE = 'ZZ000' THEN 'ok' ELSE SQLSTATE END;
  END;
END
$$;

-- every call that takes a scope; %1$L is the key, %2$L the scope, %3$L a
-- lease token
CREATE TABLE scope_calls (call_name text, call_stmt text);
INSERT INTO scope_calls VALUES
  ('idem_begin(jsonb)',    'SELECT idem_begin(%1$L, ''{"v":1}''::jsonb, %2$L)'),
  ('idem_begin(text)',     'SELECT idem_begin(%1$L, ''v''::text, %2$L)'),
  ('idem_begin(bytea)',    'SELECT idem_begin(%1$L, ''\x01''::bytea, %2$L)'),
  ('idem_begin_full',      'SELECT idem_begin_full(%1$L, ''{"v":1}''::jsonb, %2$L)'),
  ('idem_finish',          'SELECT idem_finish(%1$L, 200, NULL, %2$L)'),
  ('idem_finish(token)',   'SELECT idem_finish(%1$L, 200, NULL, %2$L, %3$L)'),
  ('idem_call',            'SELECT idem_call(%1$L, ''{"v":1}'', ''scope_work(jsonb)'', %2$L)'),
  ('idem_release',         'SELECT idem_release(%1$L, %2$L)'),
  ('idem_release(token)',  'SELECT idem_release(%1$L, %2$L, %3$L)'),
  ('idem_lookup',          'SELECT idem_lookup(%1$L, %2$L)'),
  ('idem_lookup_full',     'SELECT idem_lookup_full(%1$L, %2$L)'),
  ('idem_lease',           'SELECT idem_lease(%1$L, ''{"v":1}'', %2$L)'),
  ('idem_lease_full',      'SELECT idem_lease_full(%1$L, ''{"v":1}'', %2$L)'),
  ('idem_checkpoint',      'SELECT idem_checkpoint(%1$L, %3$L, ''p'', NULL, %2$L)'),
  ('idem_once',            'SELECT idem_once(%1$L, %2$L)'),
  ('idem_once_batch',      'SELECT idem_once_batch(ARRAY[%1$L], %2$L)'),
  ('idem_fail',            'SELECT idem_fail(%1$L, ''hostile'', %2$L, 1, ''1000 years'')'),
  ('idem_keep',            'SELECT idem_keep(%1$L, %2$L)'),
  ('idem_erase',           'SELECT idem_erase(%1$L, %2$L)'),
  ('idem_erase_scope',     'SELECT idem_erase_scope(%2$L)'),
  ('idem_retry',           'SELECT idem_retry(%1$L, %2$L)'),
  ('idem_discard',         'SELECT idem_discard(%1$L, %2$L)'),
  ('idem_discard(any)',    'SELECT idem_discard(%1$L, %2$L, true)');

-- one key in each state, in a scope of tenant a's, written by a superuser
CREATE FUNCTION make_keys(s text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM idem_begin('completed', '{"v":1}'::jsonb, s);
  PERFORM idem_finish('completed', 200, '{"secret":"a"}', s);
  PERFORM idem_lease('leased', '{"v":1}', s);
  PERFORM idem_fail('failed', 'boom', s);
  PERFORM idem_fail('dead', 'boom', s, 1);
  PERFORM idem_once('erased', s);
  PERFORM idem_erase('erased', s);
END
$$;
CREATE TABLE scope_states (state text);
INSERT INTO scope_states VALUES ('absent'), ('completed'), ('leased'),
  ('failed'), ('dead'), ('erased');
-- the store's rows as text, to tell whether anything changed
CREATE FUNCTION store_digest() RETURNS text LANGUAGE sql AS $$
  SELECT md5(coalesce(string_agg(k::text, ',' ORDER BY scope, key), ''))
  FROM idem_keys k
$$;
GRANT EXECUTE ON FUNCTION outcome(text, boolean), scope_work(jsonb) TO PUBLIC;

-- matrix(role, scope, keep): every call on every state's key, as the role
CREATE FUNCTION matrix(r text, s text, keep boolean DEFAULT false)
RETURNS TABLE (fn text, outcomes text) LANGUAGE plpgsql AS $$
DECLARE
  c record;
  st record;
  token uuid;
  res text;
BEGIN
  FOR c IN SELECT * FROM scope_calls ORDER BY call_name COLLATE "C" LOOP
    outcomes := '';
    FOR st IN SELECT * FROM scope_states LOOP
      SELECT k.lease_token INTO token FROM idem_keys k
       WHERE k.scope = s AND k.key = st.state;
      EXECUTE format('SET LOCAL ROLE %I', r);
      res := outcome(format(c.call_stmt, st.state, s, coalesce(token, gen_random_uuid())), keep);
      RESET ROLE;
      outcomes := outcomes || CASE WHEN outcomes = '' THEN '' ELSE ' ' END || res;
    END LOOP;
    fn := c.call_name;
    RETURN NEXT;
  END LOOP;
END
$$;

------------------------------------------------------------------------
-- no rules: every role may use every scope (the default, as before)
------------------------------------------------------------------------
SELECT make_keys('a:1');
SELECT count(*) AS rules FROM idem_scope_owners;
SET ROLE regress_scope_b;
SELECT status, response_body FROM idem_lookup('completed', 'a:1');
SELECT idem_scope_permitted('a:1');
RESET ROLE;

------------------------------------------------------------------------
-- the rules: tenant a's prefix, tenant b's, and a part of b's lent to a
------------------------------------------------------------------------
INSERT INTO idem_scope_owners VALUES
  ('a:', 'regress_scope_a'), ('b:', 'regress_scope_b'),
  ('b:lent:', 'regress_scope_a');
SELECT scope_prefix, role FROM idem_scope_owners ORDER BY scope_prefix COLLATE "C";

-- tenant b, on a's keys: every call, every state, refused, nothing changed
-- (what a call did would be kept)
SELECT store_digest() AS before \gset
SELECT * FROM matrix('regress_scope_b', 'a:1', true);
SELECT store_digest() = :'before' AS unchanged;

-- the same calls, each rolled back, by a's own role: what each state
-- gives (ok, or the state's own error)
CREATE TABLE owner_outcomes AS SELECT * FROM matrix('regress_scope_a', 'a:1');
SELECT * FROM owner_outcomes ORDER BY fn COLLATE "C";
-- and the same outcomes for a's member, an operator with BYPASSRLS and a
-- superuser
SELECT CASE WHEN r.name = current_user THEN 'a superuser' ELSE r.name END AS caller,
       count(*) AS calls,
       count(*) FILTER (WHERE m.outcomes IS DISTINCT FROM o.outcomes) AS differing
FROM (VALUES ('regress_scope_a_worker'), ('regress_scope_ops'), (current_user)) r(name),
     LATERAL matrix(r.name, 'a:1') m JOIN owner_outcomes o USING (fn)
GROUP BY r.name ORDER BY 1;
SELECT store_digest() = :'before' AS unchanged;

-- the longest prefix decides: b:lent: is a's, the rest of b: is b's
SET ROLE regress_scope_a;
SELECT idem_once('x', 'b:lent:1') AS a_in_lent, outcome('SELECT idem_once(''x'', ''b:2'')') AS a_in_b;
SELECT idem_scope_permitted('b:lent:1') AS lent, idem_scope_permitted('b:2') AS b,
       idem_scope_permitted('c:1') AS unclaimed, idem_scope_permitted('') AS empty;
RESET ROLE;
SET ROLE regress_scope_b;
SELECT outcome('SELECT idem_once(''y'', ''b:lent:1'')') AS b_in_lent, idem_once('y', 'b:2') AS b_in_b;
-- a scope no prefix matches stays everyone's
SELECT idem_once('z', 'c:1') AS unclaimed;
RESET ROLE;

-- the message names the scope as PostgreSQL quotes, and the owner
SET ROLE regress_scope_b;
\set VERBOSITY default
SELECT idem_lookup('completed', 'a:"1');
RESET ROLE;

-- the operator's view lists only the keys of scopes its reader may use
SELECT idem_fail('failed', 'boom', 'b:1');
SET ROLE regress_scope_a;
SELECT string_agg(scope || '/' || key, ' ' ORDER BY scope, key) AS a_lists FROM idem_failed_keys;
SET ROLE regress_scope_b;
SELECT string_agg(scope || '/' || key, ' ' ORDER BY scope, key) AS b_lists FROM idem_failed_keys;
SET ROLE regress_scope_ops;
SELECT string_agg(scope || '/' || key, ' ' ORDER BY scope, key) AS ops_lists FROM idem_failed_keys;
RESET ROLE;
-- a leaky function in the reader's WHERE sees no hidden key either
CREATE FUNCTION pg_temp.leak(s text, k text) RETURNS boolean
LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN RAISE NOTICE 'leaked %/%', s, k; RETURN true; END $$;
GRANT EXECUTE ON FUNCTION pg_temp.leak(text, text) TO regress_scope_b;
SET ROLE regress_scope_b;
SET enable_indexscan = off;
SET enable_bitmapscan = off;
SELECT count(*) FROM idem_failed_keys WHERE pg_temp.leak(scope, key);
RESET enable_indexscan;
RESET enable_bitmapscan;
RESET ROLE;

------------------------------------------------------------------------
-- the empty prefix claims every scope no other prefix matches
------------------------------------------------------------------------
INSERT INTO idem_scope_owners VALUES ('', 'regress_scope_ops');
SET ROLE regress_scope_b;
SELECT outcome('SELECT idem_once(''z2'', ''c:1'')') AS unclaimed_now,
       outcome('SELECT idem_once(''z3'', '''')') AS empty_scope,
       idem_once('z4', 'b:3') AS own;
RESET ROLE;
DELETE FROM idem_scope_owners WHERE scope_prefix = '';

------------------------------------------------------------------------
-- a change to the rules holds from this session's next command (the
-- triggers' invalidation; other sessions: test/t/038_scope_boundary.pl),
-- and a dropped owner leaves its prefix to nobody
------------------------------------------------------------------------
SET ROLE regress_scope_b;
SELECT outcome('SELECT idem_lookup(''completed'', ''a:1'')') AS before_delete;
RESET ROLE;
DELETE FROM idem_scope_owners WHERE scope_prefix = 'a:';
SET ROLE regress_scope_b;
SELECT outcome('SELECT idem_lookup(''completed'', ''a:1'')') AS after_delete;
RESET ROLE;
CREATE ROLE regress_scope_gone;
INSERT INTO idem_scope_owners VALUES ('gone:', 'regress_scope_gone');
DROP ROLE regress_scope_gone;
SELECT scope_prefix, role::oid <> 0 AS has_oid FROM idem_scope_owners
WHERE scope_prefix = 'gone:';
SET ROLE regress_scope_ops;
SELECT idem_once('g', 'gone:1') AS bypassrls;
RESET ROLE;
SET ROLE regress_scope_b;
SELECT idem_once('g', 'gone:1');
RESET ROLE;
-- TRUNCATE is a change too: no rules, no boundary
TRUNCATE idem_scope_owners;
SET ROLE regress_scope_b;
SELECT idem_once('g', 'gone:1') AS after_truncate;
RESET ROLE;
-- a rule added in a transaction holds in it at once; rolled back, it goes
BEGIN;
INSERT INTO idem_scope_owners VALUES ('a:', 'regress_scope_a');
SET LOCAL ROLE regress_scope_b;
SELECT outcome('SELECT idem_lookup(''completed'', ''a:1'')') AS in_transaction;
ROLLBACK;
SET ROLE regress_scope_b;
SELECT outcome('SELECT idem_lookup(''completed'', ''a:1'')') AS rolled_back;
RESET ROLE;

------------------------------------------------------------------------
-- the table of rules: the owner's alone, checked, dumped
------------------------------------------------------------------------
SET ROLE regress_scope_b;
SELECT outcome('SELECT count(*) FROM idem_scope_owners') AS read,
       outcome('INSERT INTO idem_scope_owners VALUES (''a:'', ''regress_scope_b'')') AS claim,
       outcome('DELETE FROM idem_scope_owners') AS clear;
RESET ROLE;
INSERT INTO idem_scope_owners VALUES (repeat('x', 256), 'regress_scope_a');
INSERT INTO idem_scope_owners VALUES ('n:', NULL);
INSERT INTO idem_scope_owners VALUES ('n:', 'regress_scope_nosuch');
INSERT INTO idem_scope_owners VALUES ('d:', 'regress_scope_a'), ('d:', 'regress_scope_b');
SELECT count(*) AS rules FROM idem_scope_owners;
SELECT c.relname, e.extconfig @> ARRAY[c.oid] AS dumped,
       (SELECT count(*) FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) AS other_grants
FROM pg_class c, pg_extension e
WHERE c.oid = 'idem_scope_owners'::regclass AND e.extname = 'idempotency';
SELECT tgname, tgenabled, tgtype FROM pg_trigger WHERE tgrelid = 'idem_scope_owners'::regclass ORDER BY tgname;
-- its trigger function is for its trigger only
SELECT outcome('SELECT idem_scope_owners_changed()') AS called_directly;
SELECT has_function_privilege('public', 'idem_scope_owners_changed()', 'EXECUTE') AS public_trigger,
       has_function_privilege('public', 'idem_scope_permitted(text)', 'EXECUTE') AS public_permitted;

DROP FUNCTION matrix(text, text, boolean), make_keys(text), store_digest(), scope_work(jsonb), outcome(text, boolean);
DROP TABLE scope_calls, scope_states, owner_outcomes;
DROP OWNED BY regress_scope_a, regress_scope_b, regress_scope_a_worker, regress_scope_ops;
DROP ROLE regress_scope_a_worker, regress_scope_a, regress_scope_b, regress_scope_ops;
TRUNCATE idem_keys;
