/* idempotency--0.3.1--0.4.0.sql: batches of message ids, keys kept for good or erased, overhead counters */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.4.0'" to load this file. \quit

-- idem_once for every id of a consumer's batch, in one call: the ids seen
-- for the first time, in the batch's order, each once.
CREATE FUNCTION @extschema@.idem_once_batch(
    ids pg_catalog.text[],
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '7 days')
RETURNS pg_catalog.text[]
AS 'MODULE_PATHNAME', 'idem_once_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- A key that never expires (expires_at = infinity), on every version; from
-- PostgreSQL 17 on a ttl of 'infinity' asks for the same.  Returns the
-- key's state: completed, in_progress (a lease) or erased.  For PUBLIC, as
-- the functions that serve requests are: a caller reaches only the keys it
-- names, and could ask for a ttl of 1000 years anyway.
CREATE FUNCTION @extschema@.idem_keep(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '')
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'idem_keep'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Erasure of stored requests and responses (personal data): the key stays
-- until its ttl and answers "erased" to every later call, so the work is
-- never done twice.  An operator's functions, not the application's: only
-- superusers and the roles an administrator grants EXECUTE to may run them.
CREATE FUNCTION @extschema@.idem_erase(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '')
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_erase'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_erase_scope(scope pg_catalog.text)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'idem_erase_scope'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION @extschema@.idem_erase(pg_catalog.text, pg_catalog.text),
                       @extschema@.idem_erase_scope(pg_catalog.text) FROM PUBLIC;

-- idem_stats gains columns: erasures, keys kept, waits for another
-- transaction's key and their time, and the time calls spend inside the
-- extension (with idempotency.track_timing).  A function's result columns
-- cannot change in place, so the function and its view are made again, as
-- pg_stat_statements' updates do; unlike those, the privileges granted on
-- them since the install (to a monitoring role, say) are carried over, and
-- recorded as the installation's own, not as the extension's initial
-- privileges that pg_dump leaves out.  A view of the user's over
-- idem_stats makes the update fail (DROP without CASCADE), rather than be
-- dropped with it.
DO LANGUAGE plpgsql $remake_stats$
DECLARE
    old_fn_acl pg_catalog.aclitem[];
    old_view_acl pg_catalog.aclitem[];
    init_fn pg_catalog.aclitem[];
    init_view pg_catalog.aclitem[];
    fn_oid pg_catalog.oid;
    view_oid pg_catalog.oid;
    g record;
BEGIN
    SELECT p.proacl INTO old_fn_acl FROM pg_catalog.pg_proc p
     WHERE p.oid OPERATOR(pg_catalog.=) '@extschema@.idem_stats()'::pg_catalog.regprocedure;
    SELECT c.relacl INTO old_view_acl FROM pg_catalog.pg_class c
     WHERE c.oid OPERATOR(pg_catalog.=) '@extschema@.idem_stats'::pg_catalog.regclass;

    EXECUTE 'DROP VIEW @extschema@.idem_stats';
    EXECUTE 'DROP FUNCTION @extschema@.idem_stats()';

    EXECUTE $create$
CREATE FUNCTION @extschema@.idem_stats(
    OUT datid pg_catalog.oid,
    OUT datname pg_catalog.name,
    OUT started pg_catalog.int8,
    OUT replay pg_catalog.int8,
    OUT mismatch pg_catalog.int8,
    OUT in_progress pg_catalog.int8,
    OUT resumed pg_catalog.int8,
    OUT finishes pg_catalog.int8,
    OUT releases pg_catalog.int8,
    OUT checkpoints pg_catalog.int8,
    OUT once_true pg_catalog.int8,
    OUT once_false pg_catalog.int8,
    OUT stale_tokens pg_catalog.int8,
    OUT keys_swept pg_catalog.int8,
    OUT erased pg_catalog.int8,
    OUT erased_replies pg_catalog.int8,
    OUT kept pg_catalog.int8,
    OUT key_waits pg_catalog.int8,
    OUT key_wait_time pg_catalog.float8,
    OUT timed_calls pg_catalog.int8,
    OUT call_time pg_catalog.float8,
    OUT stats_reset pg_catalog.timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats'
LANGUAGE C VOLATILE PARALLEL SAFE
$create$;
    EXECUTE 'CREATE VIEW @extschema@.idem_stats AS SELECT * FROM @extschema@.idem_stats()';
    EXECUTE 'REVOKE ALL ON FUNCTION @extschema@.idem_stats() FROM PUBLIC';
    EXECUTE 'GRANT EXECUTE ON FUNCTION @extschema@.idem_stats() TO pg_monitor';
    EXECUTE 'GRANT SELECT ON @extschema@.idem_stats TO pg_monitor';

    fn_oid := '@extschema@.idem_stats()'::pg_catalog.regprocedure;
    view_oid := '@extschema@.idem_stats'::pg_catalog.regclass;
    SELECT i.initprivs INTO init_fn FROM pg_catalog.pg_init_privs i
     WHERE i.objoid OPERATOR(pg_catalog.=) fn_oid
       AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
       AND i.objsubid OPERATOR(pg_catalog.=) 0;
    SELECT i.initprivs INTO init_view FROM pg_catalog.pg_init_privs i
     WHERE i.objoid OPERATOR(pg_catalog.=) view_oid
       AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND i.objsubid OPERATOR(pg_catalog.=) 0;

    -- the grants the old objects had, to the same roles; the owner's own
    -- privileges come with the new objects
    FOR g IN
        SELECT 'FUNCTION @extschema@.idem_stats()' AS obj, a.grantee, a.privilege_type, a.is_grantable
          FROM pg_catalog.aclexplode(old_fn_acl) a
         WHERE a.grantee OPERATOR(pg_catalog.<>) (SELECT p.proowner FROM pg_catalog.pg_proc p
                                                   WHERE p.oid OPERATOR(pg_catalog.=) fn_oid)
        UNION ALL
        SELECT '@extschema@.idem_stats', a.grantee, a.privilege_type, a.is_grantable
          FROM pg_catalog.aclexplode(old_view_acl) a
         WHERE a.grantee OPERATOR(pg_catalog.<>) (SELECT c.relowner FROM pg_catalog.pg_class c
                                                   WHERE c.oid OPERATOR(pg_catalog.=) view_oid)
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %s%s', g.privilege_type, g.obj,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    -- and none that the administrator had revoked (pg_monitor's)
    IF NOT EXISTS (SELECT FROM pg_catalog.aclexplode(old_fn_acl) a
                    WHERE a.grantee OPERATOR(pg_catalog.=) 'pg_monitor'::pg_catalog.regrole) THEN
        EXECUTE 'REVOKE EXECUTE ON FUNCTION @extschema@.idem_stats() FROM pg_monitor';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.aclexplode(old_view_acl) a
                    WHERE a.grantee OPERATOR(pg_catalog.=) 'pg_monitor'::pg_catalog.regrole) THEN
        EXECUTE 'REVOKE SELECT ON @extschema@.idem_stats FROM pg_monitor';
    END IF;

    -- the initial privileges stay those of a fresh install
    UPDATE pg_catalog.pg_init_privs i SET initprivs = init_fn
     WHERE i.objoid OPERATOR(pg_catalog.=) fn_oid
       AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
       AND i.objsubid OPERATOR(pg_catalog.=) 0;
    UPDATE pg_catalog.pg_init_privs i SET initprivs = init_view
     WHERE i.objoid OPERATOR(pg_catalog.=) view_oid
       AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND i.objsubid OPERATOR(pg_catalog.=) 0;
END
$remake_stats$;

-- What the key store holds, as before, and how many keys are kept for
-- good: counted through the expiry index up to the same cap as expired
-- keys.  CREATE OR REPLACE keeps the view's privileges; the new columns
-- come last.
CREATE OR REPLACE VIEW @extschema@.idem_storage AS
    WITH counted AS (
        SELECT
            (SELECT pg_catalog.count(*) FROM @extschema@.idem_keys k
              WHERE k.state OPERATOR(pg_catalog.=) 'p' AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
                AS leased_keys,
            (SELECT pg_catalog.count(*) FROM @extschema@.idem_keys k
              WHERE k.state OPERATOR(pg_catalog.=) 'p' AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
                AND k.lease_expires_at OPERATOR(pg_catalog.<=) pg_catalog.now())
                AS leases_expired,
            (SELECT pg_catalog.count(*) FROM
               (SELECT 1 FROM @extschema@.idem_keys k
                 WHERE k.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
                 LIMIT 100000) capped)
                AS expired_keys,
            (SELECT pg_catalog.count(*) FROM
               (SELECT 1 FROM @extschema@.idem_keys k
                 WHERE k.expires_at OPERATOR(pg_catalog.=) 'infinity'::pg_catalog.timestamptz
                 LIMIT 100000) capped)
                AS permanent_keys,
            (SELECT CASE WHEN c.relpages OPERATOR(pg_catalog.>) 0 AND c.reltuples OPERATOR(pg_catalog.>=) 0
                         THEN c.reltuples OPERATOR(pg_catalog./) c.relpages
                              OPERATOR(pg_catalog.*) (pg_catalog.pg_relation_size(c.oid)
                                                      OPERATOR(pg_catalog./)
                                                      pg_catalog.current_setting('block_size')::pg_catalog.int8)
                         ELSE 0 END
               FROM pg_catalog.pg_class c
              WHERE c.oid OPERATOR(pg_catalog.=) '@extschema@.idem_keys'::pg_catalog.regclass)
                AS rows_estimate
    )
    SELECT
        GREATEST(pg_catalog.round(rows_estimate)::pg_catalog.int8
                            OPERATOR(pg_catalog.-) leased_keys
                            OPERATOR(pg_catalog.-) expired_keys, 0) AS completed_keys_estimate,
        leased_keys,
        leases_expired,
        expired_keys,
        expired_keys OPERATOR(pg_catalog.>=) 100000 AS expired_keys_capped,
        pg_catalog.pg_table_size('@extschema@.idem_keys'::pg_catalog.regclass) AS table_bytes,
        pg_catalog.pg_indexes_size('@extschema@.idem_keys'::pg_catalog.regclass) AS index_bytes,
        permanent_keys,
        permanent_keys OPERATOR(pg_catalog.>=) 100000 AS permanent_keys_capped
    FROM counted;
