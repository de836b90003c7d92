--
-- security: what an application role (not a superuser) can and cannot do,
-- look-alike objects in its search_path, and pg_dump registration.
--
\set SHOW_CONTEXT never
-- runs alone or after api; starts from an empty key store
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
DROP ROLE IF EXISTS regress_idem_app;
RESET client_min_messages;
TRUNCATE idem_keys;

-- try(stmt): run stmt; 'ok: <first column>' or 'SQLSTATE: message'
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

------------------------------------------------------------------------
-- catalog: pg_dump registration, privileges
------------------------------------------------------------------------
SELECT extname, extrelocatable, extconfig::regclass[] AS extconfig, extcondition
FROM pg_extension WHERE extname = 'idempotency';
-- the table: nobody but its owner has any privilege
SELECT c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
       (SELECT count(*) FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) AS other_grants,
       (SELECT count(*) FROM aclexplode(c.relacl) a WHERE a.grantee = 0) AS public_grants
FROM pg_class c WHERE c.oid = 'idem_keys'::regclass;
-- key and scope compare bytewise
SELECT attname, atttypid::regtype, attnotnull, collname
FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE attrelid = 'idem_keys'::regclass AND attnum > 0 ORDER BY attnum;
SELECT indexrelid::regclass AS index, indisunique, indisprimary,
       pg_get_indexdef(indexrelid) ~ '\(scope, key\)|\(expires_at\)' AS columns_ok
FROM pg_index WHERE indrelid = 'idem_keys'::regclass ORDER BY indexrelid::regclass::text COLLATE "C";
-- functions: not SECURITY DEFINER, executable by PUBLIC
SELECT p.proname, count(*) AS variants, bool_or(p.prosecdef) AS secdef,
       bool_and(has_function_privilege('public', p.oid, 'EXECUTE')) AS public_execute
FROM pg_proc p
WHERE p.proname IN ('idem_begin', 'idem_finish', 'idem_release', 'idem_once',
                    'idem_lookup', 'idem_fingerprint', 'idem_sweep',
                    'idem_lease', 'idem_checkpoint', 'idem_stats',
                    'idem_stats_reset', 'idem_sweeper_status')
  AND p.pronamespace = 'public'::regnamespace
GROUP BY p.proname ORDER BY p.proname COLLATE "C";

------------------------------------------------------------------------
-- an application role
------------------------------------------------------------------------
CREATE ROLE regress_idem_app;
SELECT priv, has_table_privilege('regress_idem_app', 'idem_keys', priv) AS granted
FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) priv;

-- a key of tenant-a, stored by the superuser
BEGIN;
SELECT status FROM idem_begin('secret', '{"card": "4242"}'::jsonb, scope => 'tenant-a');
SELECT idem_finish('secret', 201, '{"token": "tok_a"}'::jsonb, scope => 'tenant-a');
COMMIT;

SET ROLE regress_idem_app;
SELECT rolname = 'regress_idem_app' AS is_app, rolsuper
FROM pg_roles WHERE rolname = current_user;

-- no direct access to the key table
SELECT try($$SELECT count(*) FROM idem_keys$$) AS "select";
SELECT try($$SELECT response_body FROM idem_keys WHERE key = 'secret'$$) AS select_body;
SELECT try($$INSERT INTO idem_keys VALUES (now(), now() + interval '1 day', 200, 'c', 'tenant-a', 'forged', NULL, '{}')$$) AS "insert";
SELECT try($$UPDATE idem_keys SET response_body = '{"token": "mine"}'$$) AS "update";
SELECT try($$DELETE FROM idem_keys$$) AS "delete";
SELECT try($$TRUNCATE idem_keys$$) AS "truncate";
SELECT try($$SELECT * FROM idem_keys FOR UPDATE$$) AS for_update;
SELECT try($$LOCK TABLE idem_keys IN ACCESS EXCLUSIVE MODE$$) AS lock_table;
SELECT try($$ALTER TABLE idem_keys ADD COLUMN x int$$) AS alter_table;
SELECT try($$DROP TABLE idem_keys$$) AS drop_table;
SELECT try($$CREATE INDEX ON idem_keys (key)$$) AS create_index;
SELECT try($$DROP EXTENSION idempotency$$) AS drop_extension;
SELECT try($$ALTER EXTENSION idempotency UPDATE$$) AS alter_extension;
COPY idem_keys TO STDOUT;
\echo :LAST_ERROR_SQLSTATE

-- but every function works
BEGIN;
SELECT status, response_code, response_body FROM idem_begin('app-1', '{"a": 1}'::jsonb, scope => 'tenant-b');
SELECT status, response_code FROM idem_lookup('app-1', 'tenant-b');
SELECT idem_finish('app-1', 200, '{"ok": true}'::jsonb, scope => 'tenant-b');
SELECT status FROM idem_begin('app-2', 'raw body'::text, scope => 'tenant-b');
SELECT idem_release('app-2', 'tenant-b');
SELECT status FROM idem_begin('app-3', '\x00ff'::bytea, scope => 'tenant-b');
SELECT idem_finish('app-3', 204, scope => 'tenant-b');
SELECT idem_once('msg-1', 'tenant-b') AS once;
SELECT length(idem_fingerprint('{"a": 1}'::jsonb)) AS fp_len;
COMMIT;
SELECT status, response_code, response_body FROM idem_begin('app-1', '{"a": 1}'::jsonb, scope => 'tenant-b');
SELECT status, response_code FROM idem_lookup('app-3', 'tenant-b');
SELECT idem_once('msg-1', 'tenant-b') AS once;
SELECT try($$SELECT idem_sweep()$$) AS sweep_is_maintenance;
-- leases work too; the monitoring views are not for application roles, and
-- resetting the counters is kept for superusers (as pg_stat_statements_reset is)
BEGIN;
CREATE TEMP TABLE app_lease ON COMMIT DROP AS
SELECT status, token FROM idem_lease('app-lease', '{"a": 1}', scope => 'tenant-b');
SELECT status FROM app_lease;
SELECT idem_checkpoint('app-lease', (SELECT token FROM app_lease), 'charged',
                       scope => 'tenant-b') > now() AS renewed;
SELECT idem_finish('app-lease', 201, scope => 'tenant-b',
                   token => (SELECT token FROM app_lease));
COMMIT;
SELECT status, response_code FROM idem_lease('app-lease', '{"a": 1}', scope => 'tenant-b');
SELECT try($$SELECT count(*) FROM idem_stats$$) AS stats;
SELECT try($$SELECT count(*) FROM idem_storage$$) AS storage;
SELECT try($$SELECT count(*) FROM idem_sweeper_status$$) AS sweeper_status;
SELECT try($$SELECT idem_stats_reset()$$) AS stats_reset;
RESET ROLE;
-- the monitoring views are for pg_monitor, as PostgreSQL's own are
CREATE ROLE regress_idem_monitor IN ROLE pg_monitor;
SET ROLE regress_idem_monitor;
SELECT count(*) > 0 AS stats_visible FROM idem_stats WHERE datname = current_database();
SELECT leased_keys, table_bytes > 0 AS sized FROM idem_storage;
SELECT count(*) >= 0 AS sweeper_status_visible FROM idem_sweeper_status;
SELECT try($$SELECT idem_stats_reset()$$) AS stats_reset;
SELECT try($$SELECT count(*) FROM idem_keys$$) AS "select";
RESET ROLE;
DROP ROLE regress_idem_monitor;
SET ROLE regress_idem_app;
-- the commit guard applies to the application role too
BEGIN;
SELECT status FROM idem_begin('app-4', scope => 'tenant-b');
COMMIT;

-- another scope's response: only with the right scope and key (and, for
-- idem_begin, the right request)
SELECT status, response_code, response_body FROM idem_lookup('secret');
SELECT status, response_code, response_body FROM idem_lookup('secret', 'tenant-b');
SELECT status, response_code, response_body FROM idem_lookup('Secret', 'tenant-a');
SELECT status, response_code, response_body FROM idem_begin('secret', '{"card": "1111"}'::jsonb, scope => 'tenant-a');
SELECT status, response_code, response_body FROM idem_begin('secret', scope => 'tenant-a');
SELECT status, response_code, response_body FROM idem_begin('secret', '{"card": "4242"}'::text, scope => 'tenant-a');
SELECT status, response_code, response_body FROM idem_lookup('secret', 'tenant-a');
SELECT status, response_code, response_body FROM idem_begin('secret', '{"card": "4242"}'::jsonb, scope => 'tenant-a');
-- the same key in the role's own scope is a different key
BEGIN;
SELECT status, response_code, response_body FROM idem_begin('secret', '{"card": "4242"}'::jsonb, scope => 'tenant-b');
SELECT try($$SELECT idem_finish('secret', 200, scope => 'tenant-a')$$);
SELECT try($$SELECT idem_release('secret', 'tenant-a')$$);
SELECT idem_release('secret', 'tenant-b');
COMMIT;
RESET ROLE;
SELECT scope, key, response_code, response_body FROM idem_keys
ORDER BY scope COLLATE "C", key COLLATE "C";

------------------------------------------------------------------------
-- look-alike objects in the role's search_path change nothing
------------------------------------------------------------------------
CREATE SCHEMA regress_evil AUTHORIZATION regress_idem_app;
SET ROLE regress_idem_app;
-- every text, bytea and jsonb equality, and every comparison, says "equal"
CREATE FUNCTION regress_evil.texteq(text, text) RETURNS boolean
  LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil.texteq);
CREATE FUNCTION regress_evil.jsonb_eq(jsonb, jsonb) RETURNS boolean
  LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = regress_evil.jsonb_eq);
CREATE FUNCTION regress_evil.byteaeq(bytea, bytea) RETURNS boolean
  LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = regress_evil.byteaeq);
CREATE FUNCTION regress_evil.timestamptz_gt(timestamptz, timestamptz) RETURNS boolean
  LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = regress_evil.timestamptz_gt);
CREATE FUNCTION regress_evil.interval_gt(interval, interval) RETURNS boolean
  LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil.> (LEFTARG = interval, RIGHTARG = interval, FUNCTION = regress_evil.interval_gt);
-- functions the extension might call by name
CREATE FUNCTION regress_evil.now() RETURNS timestamptz
  LANGUAGE sql AS $$SELECT '2000-01-01 00:00:00+00'::timestamptz$$;
CREATE FUNCTION regress_evil.sha256(bytea) RETURNS bytea
  LANGUAGE sql AS $$SELECT '\x00'::bytea$$;
CREATE FUNCTION regress_evil.pg_advisory_xact_lock(bigint) RETURNS void
  LANGUAGE sql AS 'SELECT';
CREATE FUNCTION regress_evil.hashtext(text) RETURNS integer
  LANGUAGE sql IMMUTABLE AS 'SELECT 0';
-- and a key table of its own, holding a forged response
CREATE TABLE regress_evil.idem_keys (
    created_at timestamptz, expires_at timestamptz, response_code int4, state "char",
    scope text, key text, fingerprint bytea, response_body jsonb);
INSERT INTO regress_evil.idem_keys
VALUES (now(), now() + interval '1 day', 200, 'c', 'tenant-a', 'forged', NULL, '{"forged": true}'),
       (now(), now() + interval '1 day', 200, 'c', 'tenant-a', 'secret', NULL, '{"forged": true}');
SET search_path = regress_evil, pg_catalog, public;
-- the planted objects are in effect for plain SQL
SELECT 'a'::text = 'b'::text AS text_eq, '1'::jsonb = '2'::jsonb AS jsonb_eq,
       '\x01'::bytea = '\x02'::bytea AS bytea_eq, now() = '2000-01-01 00:00:00+00' AS fake_now;
SELECT count(*) AS forged_rows FROM idem_keys;
-- but not for the extension
SELECT status, response_code, response_body FROM idem_lookup('forged', 'tenant-a');
SELECT status, response_code, response_body FROM idem_lookup('secret', 'tenant-a');
SELECT status FROM idem_begin('secret', '{"card": "1111"}'::jsonb, scope => 'tenant-a');
SELECT status FROM idem_begin('secret', '{"card": "4242"}'::text, scope => 'tenant-a');
SELECT status FROM idem_lookup('secrets', 'tenant-a');
BEGIN;
SELECT status, created_at OPERATOR(pg_catalog.=) pg_catalog.now() AS real_now,
       expires_at OPERATOR(pg_catalog.-) created_at OPERATOR(pg_catalog.=) interval '24 hours' AS real_ttl
FROM idem_begin('lk-1', '{"a": 1}'::jsonb);
SELECT status FROM idem_begin('lk-2', '{"a": 1}'::jsonb);
SELECT idem_finish('lk-1', 200, '{"r": 1}'::jsonb);
SELECT idem_finish('lk-2', 200, '{"r": 2}'::jsonb);
SELECT try($$SELECT status FROM idem_begin('lk-3', ttl => '0')$$);
SELECT try($$SELECT status FROM idem_begin('lk-3', ttl => '-1 day')$$);
COMMIT;
SELECT status, response_body FROM idem_begin('lk-1', '{"a": 1}'::jsonb);
SELECT status, response_body FROM idem_begin('lk-1', '{"a": 2}'::jsonb);
SELECT status FROM idem_begin('lk-1', '\x01'::bytea);
SELECT idem_fingerprint('abc'::text) AS abc;
SELECT idem_once('lk-9') AS once_first, idem_once('lk-9') AS once_again;
SELECT try($$SELECT idem_sweep()$$) AS sweep_is_maintenance;
RESET search_path;
RESET ROLE;
SELECT scope, key, response_code, response_body FROM public.idem_keys
ORDER BY scope COLLATE "C", key COLLATE "C";

-- a superuser with the same search_path is not fooled either
SET search_path = regress_evil, pg_catalog, public;
SELECT status, response_body FROM idem_lookup('forged', 'tenant-a');
SELECT status, response_body FROM idem_begin('lk-2', '{"a": 1}'::jsonb);
SELECT status FROM idem_begin('lk-2', '{"a": 3}'::jsonb);
RESET search_path;

------------------------------------------------------------------------
-- what the role cannot do to the extension itself: add objects to its
-- schema or to pg_catalog, replace, alter or drop its functions and view,
-- add objects to the extension, bind the C library to functions of its
-- own (language C is untrusted), or hang rules and policies on the table
------------------------------------------------------------------------
SET ROLE regress_idem_app;
SELECT stmt, try(stmt) FROM (VALUES
  ($$CREATE FUNCTION public.idem_begin(key varchar) RETURNS text LANGUAGE sql AS 'SELECT 1'$$),
  ($$CREATE OR REPLACE FUNCTION public.idem_sweep(batch int4 DEFAULT 10000) RETURNS int8 LANGUAGE sql AS 'SELECT 0'$$),
  ($$CREATE TABLE public.idem_keys_shadow (x int)$$),
  ($$CREATE OR REPLACE VIEW public.idem_sweeper_status AS SELECT 1 AS x$$),
  ($$CREATE FUNCTION pg_catalog.texteq(text, text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'$$),
  ($$CREATE OPERATOR pg_catalog.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_catalog.texteq)$$),
  ($$ALTER FUNCTION public.idem_lookup(text, text) SET search_path = regress_evil$$),
  ($$ALTER FUNCTION public.idem_lookup(text, text) RENAME TO idem_lookup_old$$),
  ($$ALTER FUNCTION public.idem_lookup(text, text) OWNER TO regress_idem_app$$),
  ($$ALTER FUNCTION public.idem_lookup(text, text) SECURITY DEFINER$$),
  ($$DROP FUNCTION public.idem_lookup(text, text)$$),
  ($$ALTER VIEW public.idem_sweeper_status RENAME TO x$$),
  ($$ALTER EXTENSION idempotency ADD SCHEMA regress_evil$$),
  ($$ALTER EXTENSION idempotency DROP FUNCTION public.idem_lookup(text, text)$$),
  ($$CREATE FUNCTION regress_evil.my_lookup(text, text) RETURNS record LANGUAGE c AS '$libdir/idempotency', 'idem_lookup'$$),
  ($$CREATE RULE r AS ON INSERT TO public.idem_keys DO INSTEAD NOTHING$$),
  ($$CREATE POLICY p ON public.idem_keys USING (true)$$),
  ($$ALTER TABLE public.idem_keys ENABLE ROW LEVEL SECURITY$$),
  ($$COMMENT ON FUNCTION public.idem_lookup(text, text) IS 'x'$$)
) v(stmt);
-- a REVOKE from someone who never granted anything does nothing
REVOKE EXECUTE ON FUNCTION public.idem_lookup(text, text) FROM PUBLIC;
RESET ROLE;
SELECT has_function_privilege('public', 'public.idem_lookup(text, text)', 'EXECUTE') AS public_execute;

------------------------------------------------------------------------
-- more look-alikes, in a second schema of the role's: every comparison
-- and computation the extension makes (response code range on int4,
-- expiry on timestamptz, ttl on interval, state on "char", key order on
-- text), the SQL names of the C functions behind them and of hashing and
-- clock functions, indexes named like the extension's, and a temporary
-- idem_keys (pg_temp comes first for tables whatever the search_path, and
-- in a pooled connection it outlives the client that created it)
------------------------------------------------------------------------
CREATE SCHEMA regress_evil2 AUTHORIZATION regress_idem_app;
SET ROLE regress_idem_app;
CREATE FUNCTION regress_evil2.yes(int4, int4) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil2.=  (LEFTARG = int4, RIGHTARG = int4, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.<  (LEFTARG = int4, RIGHTARG = int4, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.>  (LEFTARG = int4, RIGHTARG = int4, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.<= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.>= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = regress_evil2.yes);
CREATE FUNCTION regress_evil2.yes(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil2.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.<  (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.>  (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.<= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.>= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil2.yes);
CREATE FUNCTION regress_evil2.yes(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil2.=  (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.<  (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = regress_evil2.yes);
CREATE FUNCTION regress_evil2.yes(interval, interval) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil2.=  (LEFTARG = interval, RIGHTARG = interval, FUNCTION = regress_evil2.yes);
CREATE OPERATOR regress_evil2.<= (LEFTARG = interval, RIGHTARG = interval, FUNCTION = regress_evil2.yes);
CREATE FUNCTION regress_evil2.yes("char", "char") RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR regress_evil2.=  (LEFTARG = "char", RIGHTARG = "char", FUNCTION = regress_evil2.yes);
CREATE FUNCTION regress_evil2.y2k(timestamptz, interval) RETURNS timestamptz
  LANGUAGE sql IMMUTABLE AS $$SELECT '2000-01-01 00:00:00+00'::timestamptz$$;
CREATE OPERATOR regress_evil2.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = regress_evil2.y2k);
CREATE OPERATOR regress_evil2.- (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = regress_evil2.y2k);
CREATE FUNCTION regress_evil2.timestamptz_pl_interval(timestamptz, interval) RETURNS timestamptz
  LANGUAGE sql IMMUTABLE AS $$SELECT '2000-01-01 00:00:00+00'::timestamptz$$;
CREATE FUNCTION regress_evil2.transaction_timestamp() RETURNS timestamptz
  LANGUAGE sql AS $$SELECT '2000-01-01 00:00:00+00'::timestamptz$$;
CREATE FUNCTION regress_evil2.statement_timestamp() RETURNS timestamptz
  LANGUAGE sql AS $$SELECT '2000-01-01 00:00:00+00'::timestamptz$$;
CREATE FUNCTION regress_evil2.clock_timestamp() RETURNS timestamptz
  LANGUAGE sql AS $$SELECT '2000-01-01 00:00:00+00'::timestamptz$$;
CREATE FUNCTION regress_evil2.bttextcmp(text, text) RETURNS int4 LANGUAGE sql IMMUTABLE AS 'SELECT 0';
CREATE FUNCTION regress_evil2.jsonb_cmp(jsonb, jsonb) RETURNS int4 LANGUAGE sql IMMUTABLE AS 'SELECT 0';
CREATE FUNCTION regress_evil2.hashtextextended(text, int8) RETURNS int8 LANGUAGE sql IMMUTABLE AS 'SELECT 0';
CREATE FUNCTION regress_evil2.md5(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$SELECT '0'$$;
CREATE FUNCTION regress_evil2.sha512(bytea) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$SELECT '\x00'::bytea$$;
CREATE FUNCTION regress_evil2.digest(bytea, text) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$SELECT '\x00'::bytea$$;
CREATE FUNCTION regress_evil2.pg_try_advisory_xact_lock(int8) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE FUNCTION regress_evil2.pg_advisory_lock(int8) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE TABLE regress_evil2.idem_keys (LIKE regress_evil.idem_keys);
CREATE INDEX idem_keys_pkey ON regress_evil2.idem_keys (scope, key);
CREATE INDEX idem_keys_expires_at ON regress_evil2.idem_keys (expires_at);
CREATE TEMP TABLE idem_keys (LIKE regress_evil.idem_keys);
INSERT INTO pg_temp.idem_keys
VALUES (now(), now() + interval '1 day', 200, 'c', 'tenant-b', 'app-1', NULL, '{"temp": true}'),
       (now(), now() + interval '1 day', 200, 'c', 'tenant-b', 'sp-1', NULL, '{"temp": true}');
SET search_path = regress_evil2, regress_evil, pg_catalog, public;
-- in effect for plain SQL, and the temporary table is what idem_keys means
-- (the planted times compared, with the real operator, not shown: shown,
-- they would be in the session's time zone)
SELECT 1 = 2 AS int_eq, 'b'::text < 'a'::text AS text_lt,
       (now() + interval '1 day') OPERATOR(pg_catalog.=) '2000-01-01 00:00:00+00'::timestamptz AS plus_day_is_y2k,
       clock_timestamp() OPERATOR(pg_catalog.=) '2000-01-01 00:00:00+00'::timestamptz AS clock_is_y2k,
       md5('x') AS md5;
SELECT key, response_body FROM idem_keys ORDER BY key COLLATE "C";
-- the role's calls, every function: nothing of that reaches the extension
SELECT status, response_code, response_body FROM idem_lookup('app-1', 'tenant-b');
BEGIN;
SELECT status, created_at OPERATOR(pg_catalog.=) pg_catalog.now() AS real_now,
       expires_at OPERATOR(pg_catalog.-) created_at OPERATOR(pg_catalog.=) interval '2 hours' AS real_ttl
FROM idem_begin('sp-1', '{"a": 1}'::jsonb, scope => 'tenant-b', ttl => '2 hours');
SELECT try($$SELECT idem_finish('sp-1', 99, scope => 'tenant-b')$$);
SELECT try($$SELECT idem_finish('sp-1', 600, scope => 'tenant-b')$$);
SELECT try($$SELECT status FROM idem_begin('sp-x', ttl => '1 month -30 days')$$);
SELECT idem_finish('sp-1', 201, '{"r": "sp-1"}'::jsonb, 'tenant-b');
SELECT status FROM idem_begin('sp-2', 'body'::text, scope => 'tenant-b');
SELECT idem_release('sp-2', 'tenant-b');
SELECT try($$SELECT idem_release('sp-2', 'tenant-b')$$);
SELECT idem_once('sp-3', 'tenant-b') AS once_first, idem_once('sp-3', 'tenant-b') AS once_again;
COMMIT;
SELECT status, response_code, response_body FROM idem_begin('sp-1', '{"a": 1}'::jsonb, scope => 'tenant-b');
SELECT status, response_code, response_body FROM idem_begin('sp-1', '{"a": 2}'::jsonb, scope => 'tenant-b');
SELECT status FROM idem_lookup('sp-1', 'tenant-c');
SELECT status FROM idem_lookup('sp-0', 'tenant-b');
SELECT encode(idem_fingerprint('abc'::text), 'hex') AS abc;
SELECT try($$SELECT idem_sweep()$$) AS sweep_is_maintenance;
RESET search_path;
RESET ROLE;

-- a superuser in the same session (so with the same temporary idem_keys)
-- and with the same search_path
SET search_path = regress_evil2, regress_evil, pg_catalog, public;
SELECT key, response_body FROM idem_keys ORDER BY key COLLATE "C";
SELECT status, response_code, response_body FROM idem_lookup('sp-1', 'tenant-b');
BEGIN;
SELECT status, created_at OPERATOR(pg_catalog.=) pg_catalog.now() AS real_now,
       expires_at OPERATOR(pg_catalog.-) created_at OPERATOR(pg_catalog.=) interval '2 hours' AS real_ttl
FROM idem_begin('su-1', '{"a": 1}'::jsonb, ttl => '2 hours');
SELECT try($$SELECT idem_finish('su-1', 99)$$);
SELECT try($$SELECT status FROM idem_begin('su-x', ttl => '-1 day')$$);
SELECT idem_finish('su-1', 200, '{"r": "su-1"}'::jsonb);
SELECT status FROM idem_begin('su-2', '\x01'::bytea);
SELECT idem_release('su-2');
SELECT idem_once('su-3') AS once_first, idem_once('su-3') AS once_again;
COMMIT;
SELECT status, response_code, response_body FROM idem_begin('su-1', '{"a": 1}'::jsonb);
SELECT status FROM idem_begin('su-1', '{"a": 2}'::jsonb);
SELECT status FROM idem_lookup('su-1', 'tenant-a');
SELECT status FROM idem_lookup('su-2');
SELECT encode(idem_fingerprint('abc'::text), 'hex') AS abc;
SELECT idem_sweep() AS swept;
RESET search_path;
-- what was stored went to the extension's table; the look-alikes are untouched
SELECT scope, key, response_code, response_body FROM public.idem_keys
WHERE key LIKE 's_-_' ORDER BY scope COLLATE "C", key COLLATE "C";
SELECT count(*) AS temp_rows FROM pg_temp.idem_keys;
SELECT count(*) AS evil2_rows FROM regress_evil2.idem_keys;

------------------------------------------------------------------------
-- exact look-alikes of the extension's own functions: from this
-- search_path an unqualified call reaches the role's function (that is
-- how PostgreSQL resolves names, for any function; put only trusted
-- schemas before the extension's), but it runs with the role's own
-- privileges and cannot read the key table; a schema-qualified call
-- always reaches the extension
------------------------------------------------------------------------
SET ROLE regress_idem_app;
CREATE FUNCTION regress_evil2.idem_lookup(key text, scope text DEFAULT '',
    OUT status text, OUT response_code int4, OUT response_body jsonb,
    OUT created_at timestamptz, OUT expires_at timestamptz)
  LANGUAGE sql AS $$
    SELECT 'completed', k.response_code, k.response_body, k.created_at, k.expires_at
    FROM public.idem_keys k WHERE k.scope = $2 AND k.key = $1 $$;
SET search_path = regress_evil2, regress_evil, pg_catalog, public;
SELECT try($$SELECT response_body FROM idem_lookup('secret', 'tenant-a')$$) AS own_lookalike;
SELECT status, response_code FROM public.idem_lookup('sp-1', 'tenant-b');
RESET search_path;
RESET ROLE;
SET search_path = regress_evil2, regress_evil, pg_catalog, public;
SELECT status, response_code FROM public.idem_lookup('sp-1', 'tenant-b');
SELECT status, response_body FROM public.idem_begin('su-1', '{"a": 1}'::jsonb);
RESET search_path;

------------------------------------------------------------------------
-- the views over the key table are security barriers: an operator allowed
-- to read the failed and dead keys sees them alone, whatever function it
-- puts in its WHERE clause, however cheap
------------------------------------------------------------------------
SELECT c.relname, c.reloptions
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'
  AND c.relname LIKE 'idem%'
  AND EXISTS (SELECT FROM pg_depend d
              WHERE d.classid = 'pg_rewrite'::regclass
                AND d.objid IN (SELECT r.oid FROM pg_rewrite r WHERE r.ev_class = c.oid)
                AND d.refobjid = 'public.idem_keys'::regclass)
ORDER BY 1;
SELECT idem_once('barrier-done', 'tenant-secret');
SELECT idem_fail('barrier-failed', 'card declined', 'ops', 1);
GRANT SELECT ON idem_failed_keys TO regress_idem_app;
SET ROLE regress_idem_app;
CREATE FUNCTION pg_temp.leak(s text, k text) RETURNS boolean
LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN
  RAISE NOTICE 'seen: % %', s, k;
  RETURN true;
END $$;
SET enable_indexscan = off;
SET enable_bitmapscan = off;
SELECT scope, key, status FROM idem_failed_keys WHERE pg_temp.leak(scope, key);
RESET enable_indexscan;
RESET enable_bitmapscan;
RESET ROLE;
REVOKE SELECT ON idem_failed_keys FROM regress_idem_app;
DROP FUNCTION pg_temp.leak(text, text);

------------------------------------------------------------------------
-- a key or scope is quoted in messages as an identifier is, its double
-- quotes doubled: a key cannot read as another key in another scope
------------------------------------------------------------------------
SELECT try($$SELECT idem_finish('pay-1001" in scope "tenantA', 200)$$);
SELECT try($$SELECT idem_finish('pay-1001', 200, scope => 'tenantA')$$);
SELECT try($$SELECT idem_erase('k"', 'sc"ope')::text$$);
BEGIN;
SELECT status FROM idem_begin('unfinished" in scope "b', '{}'::jsonb, 'a');
COMMIT;

DROP TABLE pg_temp.idem_keys;
SET client_min_messages = warning;
DROP SCHEMA regress_evil2 CASCADE;
RESET client_min_messages;

DROP SCHEMA regress_evil CASCADE;
DROP ROLE regress_idem_app;
DROP FUNCTION try(text);
