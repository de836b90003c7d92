/* idempotency--0.4.0--0.5.0.sql: a request in one statement, one round trip */

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

-- Every role writes work functions with these, whatever default privileges
-- (ALTER DEFAULT PRIVILEGES ... REVOKE ... FROM PUBLIC) the role that
-- installs or updates has: say so, rather than inherit them.
GRANT USAGE ON TYPE @extschema@.idem_response TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_response(pg_catalog.int4, pg_catalog.jsonb, pg_catalog.jsonb) TO PUBLIC;

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
-- It begins and finishes keys: it takes the privileges of idem_begin and
-- idem_finish together (below, where idem_begin is made again), so an
-- installation that locked its request functions down stays locked down.


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

-- Give a function made by this script the privileges wanted (NULL: the
-- default, PUBLIC's), whatever default privileges (ALTER DEFAULT
-- PRIVILEGES) the updating role has, and a fresh install's initial
-- privileges (none recorded), so that pg_dump dumps the installation's
-- grants as its own.  Dropped at the end of this script (a function of
-- that name planted in the schema makes the update fail, not run it); it
-- runs as the superuser that updates, names every catalog object through
-- pg_catalog, and quotes every name it builds SQL from.
CREATE FUNCTION @extschema@.idem_0_5_0_set_acl(target pg_catalog.text, wanted pg_catalog.aclitem[])
RETURNS void LANGUAGE plpgsql AS $set_acl$
DECLARE
    fn pg_catalog.regprocedure := target::pg_catalog.regprocedure;
    owner_oid pg_catalog.oid;
    have pg_catalog.aclitem[];
    g record;
BEGIN
    SELECT p.proowner, p.proacl INTO owner_oid, have FROM pg_catalog.pg_proc p
     WHERE p.oid OPERATOR(pg_catalog.=) fn;
    IF wanted IS NULL AND have IS NULL THEN
        RETURN;
    END IF;
    wanted := COALESCE(wanted, pg_catalog.acldefault('f', owner_oid));
    have := COALESCE(have, pg_catalog.acldefault('f', owner_oid));
    FOR g IN SELECT a.grantee, a.privilege_type FROM pg_catalog.aclexplode(have) a
              WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE %s ON FUNCTION %s FROM %s', g.privilege_type, fn,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END);
    END LOOP;
    FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(wanted) a
              WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON FUNCTION %s TO %s%s', g.privilege_type, fn,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    DELETE FROM pg_catalog.pg_init_privs i
     WHERE i.objoid OPERATOR(pg_catalog.=) fn
       AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
       AND i.objsubid OPERATOR(pg_catalog.=) 0;
END
$set_acl$;

DO LANGUAGE plpgsql $remake$
DECLARE
    v record;
    sig pg_catalog.text;
    begin_sig pg_catalog.text := '@extschema@.idem_begin(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)';
    finish_sig pg_catalog.text := '@extschema@.idem_finish(pg_catalog.text, pg_catalog.int4, pg_catalog.jsonb, pg_catalog.text, pg_catalog.uuid, pg_catalog.jsonb, pg_catalog.bytea)';
    call_sig pg_catalog.text := '@extschema@.idem_call(pg_catalog.text, pg_catalog.jsonb, pg_catalog.regprocedure, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)';
    begin_acl pg_catalog.aclitem[];
    finish_acl pg_catalog.aclitem[];
    call_acl pg_catalog.aclitem[];
    wanted pg_catalog.aclitem[];
    owner_oid pg_catalog.oid;
BEGIN
    -- idem_call begins and finishes keys: the roles that may call both
    -- idem_begin (jsonb) and idem_finish may call it (PUBLIC on one side
    -- stands for every role the other side names).  Both untouched since
    -- the install: PUBLIC, as in a fresh install.
    SELECT p.proacl, p.proowner INTO begin_acl, owner_oid FROM pg_catalog.pg_proc p
     WHERE p.oid OPERATOR(pg_catalog.=) begin_sig::pg_catalog.regprocedure;
    SELECT p.proacl INTO finish_acl FROM pg_catalog.pg_proc p
     WHERE p.oid OPERATOR(pg_catalog.=) finish_sig::pg_catalog.regprocedure;
    IF begin_acl IS NOT NULL OR finish_acl IS NOT NULL THEN
        begin_acl := COALESCE(begin_acl, pg_catalog.acldefault('f', owner_oid));
        finish_acl := COALESCE(finish_acl, pg_catalog.acldefault('f', owner_oid));
        SELECT COALESCE(pg_catalog.array_agg(pg_catalog.makeaclitem(x.grantee, owner_oid, 'EXECUTE', x.grantable)),
                        '{}'::pg_catalog.aclitem[])
          INTO call_acl
          FROM (SELECT b.grantee, pg_catalog.bool_and(b.is_grantable AND f.is_grantable) AS grantable
                  FROM pg_catalog.aclexplode(begin_acl) b, pg_catalog.aclexplode(finish_acl) f
                 WHERE b.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                   AND f.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                   AND (b.grantee OPERATOR(pg_catalog.=) f.grantee
                        OR f.grantee OPERATOR(pg_catalog.=) 0)
                 GROUP BY b.grantee
                UNION
                SELECT f.grantee, pg_catalog.bool_and(f.is_grantable AND b.is_grantable)
                  FROM pg_catalog.aclexplode(begin_acl) b, pg_catalog.aclexplode(finish_acl) f
                 WHERE b.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                   AND f.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                   AND b.grantee OPERATOR(pg_catalog.=) 0
                 GROUP BY f.grantee) x;
    END IF;

    -- the three idem_begin variants, made again; each old one's privileges
    -- are remembered first
    FOR v IN
        SELECT * FROM (VALUES
            ('jsonb', 'idem_begin_jsonb', ' DEFAULT NULL'),
            ('text', 'idem_begin_text', ''),
            ('bytea', 'idem_begin_bytea', '')
        ) t(request_type, symbol, request_default)
    LOOP
        sig := pg_catalog.format('@extschema@.idem_begin(pg_catalog.text, pg_catalog.%s, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)',
                                 v.request_type);
        SELECT p.proacl INTO wanted FROM pg_catalog.pg_proc p
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
        PERFORM @extschema@.idem_0_5_0_set_acl(sig, wanted);
    END LOOP;
    PERFORM @extschema@.idem_0_5_0_set_acl(call_sig, call_acl);
END
$remake$;

DROP FUNCTION @extschema@.idem_0_5_0_set_acl(pg_catalog.text, pg_catalog.aclitem[]);
