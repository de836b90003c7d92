/* idempotency--0.4.0--0.5.0.sql: a request in one statement, one round trip (issue #12) */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.5.0'" to load this file. \quit

-- What an application's work function returns to idem_call: the response
-- to store and to send, a refusal (4xx) as much as a success.
CREATE TYPE @extschema@.idem_response AS (
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb,
    response_headers pg_catalog.jsonb);

-- idem_response(201, body) reads better than ROW(201, body, NULL)::...; the
-- body is parsed here, once, so no later search_path changes its meaning.
CREATE FUNCTION @extschema@.idem_response(
    code pg_catalog.int4,
    body pg_catalog.jsonb DEFAULT NULL,
    headers pg_catalog.jsonb DEFAULT NULL)
RETURNS @extschema@.idem_response
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ROW(code, body, headers)::@extschema@.idem_response;

-- The row idem_call returns, as a named type: the executor looks a named
-- row type up in the type cache, where a function's OUT parameters are
-- parsed into a new row type at the start of every statement.
CREATE TYPE @extschema@.idem_call_result AS (
    status pg_catalog.text,
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb,
    response_headers pg_catalog.jsonb,
    response_bytes pg_catalog.bytea,
    created_at pg_catalog.timestamptz,
    expires_at pg_catalog.timestamptz);

-- Begin the key, run work(request) and finish the key with the response it
-- returns, all in the caller's statement: in autocommit a whole request is
-- one round trip and one transaction.  A retry is answered from the stored
-- response without running the work; the other statuses are idem_begin's.
CREATE FUNCTION @extschema@.idem_call(
    key pg_catalog.text,
    request pg_catalog.jsonb,
    work pg_catalog.regprocedure,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true)
RETURNS @extschema@.idem_call_result
AS 'MODULE_PATHNAME', 'idem_call'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
-- It serves requests as idem_begin does, and takes the jsonb idem_begin's
-- privileges (below, where idem_begin is made again): an installation that
-- locked its request functions down stays locked down.


-- idem_begin returns the same five columns as a named row type, for the
-- same reason as idem_call (a replay is a few microseconds, and building
-- its row type was a twentieth of them).  A function's result type cannot
-- change in place, so the three variants are made again, each keeping the
-- privileges granted or revoked on it since the install and a fresh
-- install's initial privileges (pg_init_privs), as 0.4.0 did for
-- idem_finish.  An object of the user's that depends on one of them (a
-- view, a SQL-standard function body) makes the update fail, rather than
-- be dropped with it: DROP without CASCADE.  Code that calls them (SELECT *
-- FROM idem_begin(...), RETURN QUERY, a row variable) sees the same
-- columns.
CREATE TYPE @extschema@.idem_begin_result AS (
    status pg_catalog.text,
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb,
    created_at pg_catalog.timestamptz,
    expires_at pg_catalog.timestamptz);

DO LANGUAGE plpgsql $remake$
DECLARE
    v record;
    sig pg_catalog.text;
    call_sig pg_catalog.text := '@extschema@.idem_call(pg_catalog.text, pg_catalog.jsonb, pg_catalog.regprocedure, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)';
    target pg_catalog.text;
    old_acl pg_catalog.aclitem[];
    new_acl pg_catalog.aclitem[];
    fresh_init pg_catalog.aclitem[];
    new_oid pg_catalog.oid;
    owner_oid pg_catalog.oid;
    g record;
BEGIN
    FOR v IN
        SELECT * FROM (VALUES
            ('jsonb', 'idem_begin_jsonb', ' DEFAULT NULL'),
            ('text', 'idem_begin_text', ''),
            ('bytea', 'idem_begin_bytea', '')
        ) t(request_type, symbol, request_default)
    LOOP
        sig := pg_catalog.format('@extschema@.idem_begin(pg_catalog.text, pg_catalog.%s, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)',
                                 v.request_type);
        SELECT p.proacl INTO old_acl FROM pg_catalog.pg_proc p
         WHERE p.oid OPERATOR(pg_catalog.=) sig::pg_catalog.regprocedure;
        EXECUTE pg_catalog.format('DROP FUNCTION %s', sig);
        EXECUTE pg_catalog.format($sql$
CREATE FUNCTION @extschema@.idem_begin(
    key pg_catalog.text,
    request pg_catalog.%s%s,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true)
RETURNS @extschema@.idem_begin_result
AS 'MODULE_PATHNAME', %L
LANGUAGE C VOLATILE PARALLEL UNSAFE
$sql$, v.request_type, v.request_default, v.symbol);

        -- a fresh install's initial privileges of the new one, before the
        -- old privileges are granted (in this script, they would be recorded)
        SELECT i.initprivs INTO fresh_init FROM pg_catalog.pg_init_privs i
         WHERE i.objoid OPERATOR(pg_catalog.=) sig::pg_catalog.regprocedure
           AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND i.objsubid OPERATOR(pg_catalog.=) 0;

        -- the old privileges, if not the default, go to the new function,
        -- and the jsonb variant's to idem_call too (it has no initial
        -- privileges, as a fresh install's new functions have none)
        FOREACH target IN ARRAY CASE WHEN v.request_type OPERATOR(pg_catalog.=) 'jsonb'
                                     THEN ARRAY[sig, call_sig] ELSE ARRAY[sig] END
        LOOP
            IF old_acl IS NOT NULL THEN
                SELECT p.proowner, COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))
                  INTO owner_oid, new_acl
                  FROM pg_catalog.pg_proc p
                 WHERE p.oid OPERATOR(pg_catalog.=) target::pg_catalog.regprocedure;
                FOR g IN SELECT a.grantee, a.privilege_type FROM pg_catalog.aclexplode(new_acl) a
                          WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
                LOOP
                    EXECUTE pg_catalog.format('REVOKE %s ON FUNCTION %s FROM %s', g.privilege_type, target,
                        CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                             ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END);
                END LOOP;
                FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(old_acl) a
                          WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
                LOOP
                    EXECUTE pg_catalog.format('GRANT %s ON FUNCTION %s TO %s%s', g.privilege_type, target,
                        CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                             ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
                        CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
                END LOOP;
            END IF;
            new_oid := target::pg_catalog.regprocedure;
            IF target OPERATOR(pg_catalog.<>) sig OR fresh_init IS NULL THEN
                DELETE FROM pg_catalog.pg_init_privs i
                 WHERE i.objoid OPERATOR(pg_catalog.=) new_oid
                   AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
                   AND i.objsubid OPERATOR(pg_catalog.=) 0;
            ELSE
                UPDATE pg_catalog.pg_init_privs i SET initprivs = fresh_init
                 WHERE i.objoid OPERATOR(pg_catalog.=) new_oid
                   AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
                   AND i.objsubid OPERATOR(pg_catalog.=) 0;
            END IF;
        END LOOP;
    END LOOP;
END
$remake$;
