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
    wait pg_catalog.bool DEFAULT true,
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT response_headers pg_catalog.jsonb,
    OUT response_bytes pg_catalog.bytea,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_call'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- idem_call serves requests as idem_begin does: it takes idem_begin's
-- privileges, so an installation that locked its request functions down
-- stays locked down (as 0.4.0 did for its new request functions).
DO LANGUAGE plpgsql $copy_acl$
DECLARE
    new_fn pg_catalog.regprocedure := '@extschema@.idem_call(pg_catalog.text, pg_catalog.jsonb, pg_catalog.regprocedure, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)';
    old_fn pg_catalog.regprocedure := '@extschema@.idem_begin(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)';
    old_acl pg_catalog.aclitem[];
    new_acl pg_catalog.aclitem[];
    owner_oid pg_catalog.oid;
    g record;
BEGIN
    SELECT p.proacl INTO old_acl FROM pg_catalog.pg_proc p
     WHERE p.oid OPERATOR(pg_catalog.=) old_fn;
    IF old_acl IS NULL THEN
        RETURN;			-- the default, PUBLIC's: as the new one's
    END IF;
    SELECT p.proowner, COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))
      INTO owner_oid, new_acl
      FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) new_fn;
    FOR g IN SELECT a.grantee, a.privilege_type FROM pg_catalog.aclexplode(new_acl) a
              WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE %s ON FUNCTION %s FROM %s', g.privilege_type, new_fn,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END);
    END LOOP;
    FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(old_acl) a
              WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON FUNCTION %s TO %s%s', g.privilege_type, new_fn,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    DELETE FROM pg_catalog.pg_init_privs i
     WHERE i.objoid OPERATOR(pg_catalog.=) new_fn
       AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
       AND i.objsubid OPERATOR(pg_catalog.=) 0;
END
$copy_acl$;
