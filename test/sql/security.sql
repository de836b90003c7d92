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
                    'idem_lookup', 'idem_fingerprint', 'idem_sweep')
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
VACUUM idem_keys;

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
SELECT idem_sweep() AS swept;
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
ORDER BY scope, key;

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
SELECT idem_sweep() AS swept;
RESET search_path;
RESET ROLE;
SELECT scope, key, response_code, response_body FROM public.idem_keys
ORDER BY scope, key;

-- a superuser with the same search_path is not fooled either
SET search_path = regress_evil, pg_catalog, public;
SELECT status, response_body FROM idem_lookup('forged', 'tenant-a');
SELECT status, response_body FROM idem_begin('lk-2', '{"a": 1}'::jsonb);
SELECT status FROM idem_begin('lk-2', '{"a": 3}'::jsonb);
RESET search_path;

DROP SCHEMA regress_evil CASCADE;
DROP ROLE regress_idem_app;
DROP FUNCTION try(text);
