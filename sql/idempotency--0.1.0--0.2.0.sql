/* idempotency--0.1.0--0.2.0.sql: leases, recovery points, counters, storage */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.2.0'" to load this file. \quit

-- A leased key's record is committed while its work goes on ("p",
-- processing): the holder's fencing token, when its lease runs out, how long
-- a renewal lasts, how many leases were taken, and the last recovery point.
-- Nullable columns without a default: adding them rewrites nothing, and
-- completed keys (the bulk of the table) store none of them.
ALTER TABLE @extschema@.idem_keys
    ADD COLUMN lease_token      pg_catalog.uuid,
    ADD COLUMN lease_expires_at pg_catalog.timestamptz,
    ADD COLUMN lease_duration   pg_catalog.interval,
    ADD COLUMN attempts         pg_catalog.int4,
    ADD COLUMN phase            pg_catalog.text,
    ADD COLUMN phase_state      pg_catalog.jsonb;

-- Only leased keys, so it stays as small as the work in flight: it answers
-- "how many leases, how many ran out" (idem_storage) without a table scan.
CREATE INDEX idem_keys_leases ON @extschema@.idem_keys
    USING btree (lease_expires_at) WHERE state OPERATOR(pg_catalog.=) 'p';

CREATE FUNCTION @extschema@.idem_lease(
    key pg_catalog.text,
    request pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    lease pg_catalog.interval DEFAULT '30 seconds',
    OUT status pg_catalog.text,
    OUT token pg_catalog.uuid,
    OUT phase pg_catalog.text,
    OUT state pg_catalog.jsonb,
    OUT attempts pg_catalog.int4,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_lease'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_checkpoint(
    key pg_catalog.text,
    token pg_catalog.uuid,
    phase pg_catalog.text,
    state pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '',
    extend pg_catalog.interval DEFAULT NULL)
RETURNS pg_catalog.timestamptz
AS 'MODULE_PATHNAME', 'idem_checkpoint'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- idem_finish and idem_release gain a trailing token.  The old signatures
-- must go, or a call without a token would match two functions; the new
-- ones take over the EXECUTE privileges the old ones had, so an
-- installation that revoked them from PUBLIC stays locked down.  The C
-- functions read the token only when it is passed.
CREATE FUNCTION @extschema@.idem_finish(
    key pg_catalog.text,
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '',
    token pg_catalog.uuid DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_finish'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_release(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    token pg_catalog.uuid DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- The pairs are named by their exact signatures, which in this schema only
-- the extension's own functions can have.  A GRANT run by an extension
-- script is recorded in pg_init_privs as the extension's initial privilege,
-- which pg_dump leaves out, so a restore (CREATE EXTENSION at 0.2.0) would
-- give the functions PUBLIC's EXECUTE again; the copied privileges are the
-- installation's own, so that record is removed, as it would be missing
-- after a fresh install that the administrator then granted on.
DO LANGUAGE plpgsql $copy_acl$
DECLARE
    f record;
    g record;
BEGIN
    FOR f IN
        SELECT pair.old_fn, pair.new_fn
          FROM (VALUES
                ('@extschema@.idem_finish(pg_catalog.text, pg_catalog.int4, pg_catalog.jsonb, pg_catalog.text)'::pg_catalog.regprocedure,
                 '@extschema@.idem_finish(pg_catalog.text, pg_catalog.int4, pg_catalog.jsonb, pg_catalog.text, pg_catalog.uuid)'::pg_catalog.regprocedure),
                ('@extschema@.idem_release(pg_catalog.text, pg_catalog.text)'::pg_catalog.regprocedure,
                 '@extschema@.idem_release(pg_catalog.text, pg_catalog.text, pg_catalog.uuid)'::pg_catalog.regprocedure)
               ) AS pair(old_fn, new_fn)
          JOIN pg_catalog.pg_proc o ON o.oid OPERATOR(pg_catalog.=) pair.old_fn
         WHERE o.proacl IS NOT NULL
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f.new_fn);
        FOR g IN
            SELECT a.grantee, a.is_grantable
              FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
             WHERE p.oid OPERATOR(pg_catalog.=) f.old_fn
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s', f.new_fn,
                CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                     ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        DELETE FROM pg_catalog.pg_init_privs
         WHERE objoid OPERATOR(pg_catalog.=) f.new_fn
           AND classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND objsubid OPERATOR(pg_catalog.=) 0;
    END LOOP;
END
$copy_acl$;

DROP FUNCTION @extschema@.idem_finish(pg_catalog.text, pg_catalog.int4,
                                      pg_catalog.jsonb, pg_catalog.text);
DROP FUNCTION @extschema@.idem_release(pg_catalog.text, pg_catalog.text);

-- Counters in shared memory, per database (empty without
-- shared_preload_libraries = 'idempotency').  They count calls, whether or
-- not the calling transaction commits.
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
    OUT stats_reset pg_catalog.timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE VIEW @extschema@.idem_stats AS
    SELECT * FROM @extschema@.idem_stats();

-- Resets the current database's counters, as pg_stat_reset() does.
CREATE FUNCTION @extschema@.idem_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'idem_stats_reset'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION @extschema@.idem_stats_reset() FROM PUBLIC;

-- What the key store holds, cheaply enough to scrape every few seconds on a
-- table of 10^7 keys.  Leases are counted exactly through the partial index
-- idem_keys_leases, and expired keys through the expiry index up to a cap
-- (a sweeper that keeps up leaves few, and one that does not is what an
-- alert needs to know, not the exact figure).  Completed keys are the
-- planner's estimate: reltuples scaled to the table's current size, as the
-- planner itself does, less the counted rows.  The view reads the table as
-- its owner, so monitoring roles need no privilege on idem_keys.
CREATE VIEW @extschema@.idem_storage AS
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
        pg_catalog.pg_indexes_size('@extschema@.idem_keys'::pg_catalog.regclass) AS index_bytes
    FROM counted;

-- The monitoring views are for monitoring roles, as PostgreSQL's own
-- pg_stat_* views with other sessions' details are; the application roles
-- that call the functions need none of them.
REVOKE ALL ON FUNCTION @extschema@.idem_stats(),
                       @extschema@.idem_sweeper_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_stats(),
                          @extschema@.idem_sweeper_status() TO pg_monitor;
GRANT SELECT ON @extschema@.idem_stats, @extschema@.idem_storage,
                @extschema@.idem_sweeper_status TO pg_monitor;
