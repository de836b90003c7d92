/* idempotency--0.3.1--0.4.0.sql: whole responses, bounded retries, keys kept or erased, batches of message ids, overhead counters */

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

-- Whole responses: the headers a finish keeps, and a
-- body of any content type as bytes, beside the jsonb body.  Nullable, no
-- default: adding them rewrites nothing, and a key with a jsonb body (or
-- none) stores neither.
-- Bounded retries (part 2): the most attempts the caller allows, and why
-- the last one failed.  Set only on failed ('f'), dead ('d') and leased
-- keys.
ALTER TABLE @extschema@.idem_keys
    ADD COLUMN response_headers pg_catalog.jsonb,
    ADD COLUMN response_bytes   pg_catalog.bytea,
    ADD COLUMN max_attempts     pg_catalog.int4,
    ADD COLUMN last_error       pg_catalog.text;

-- Only failed and dead keys, so it stays as small as the trouble: it lists
-- them for the operator (idem_failed_keys) and counts them (idem_storage)
-- without a table scan.  Building it reads the table once, under a lock
-- that holds writes back for that long (CHANGELOG.md).
CREATE INDEX idem_keys_failures ON @extschema@.idem_keys
    USING btree (scope, key) WHERE state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[]);

-- idem_begin, idem_lookup and idem_lease keep the rows they return, so that
-- code written against them (RETURN QUERY SELECT * FROM idem_begin(...) in
-- a function that returns their five columns, say) works as before.  The
-- _full variants take the same arguments (idem_lease_full also a bound on
-- the attempts) and return the whole stored response, the attempts and
-- the last error as well: what whole responses and bounded retries need.
CREATE FUNCTION @extschema@.idem_begin_full(
    key pg_catalog.text,
    request pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true,
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz,
    OUT response_headers pg_catalog.jsonb,
    OUT response_bytes pg_catalog.bytea,
    OUT attempts pg_catalog.int4,
    OUT last_error pg_catalog.text)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_begin_jsonb'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_begin_full(
    key pg_catalog.text,
    request pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true,
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz,
    OUT response_headers pg_catalog.jsonb,
    OUT response_bytes pg_catalog.bytea,
    OUT attempts pg_catalog.int4,
    OUT last_error pg_catalog.text)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_begin_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_begin_full(
    key pg_catalog.text,
    request pg_catalog.bytea,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true,
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz,
    OUT response_headers pg_catalog.jsonb,
    OUT response_bytes pg_catalog.bytea,
    OUT attempts pg_catalog.int4,
    OUT last_error pg_catalog.text)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_begin_bytea'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_lookup_full(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz,
    OUT response_headers pg_catalog.jsonb,
    OUT response_bytes pg_catalog.bytea,
    OUT attempts pg_catalog.int4,
    OUT last_error pg_catalog.text)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_lookup'
LANGUAGE C STABLE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_lease_full(
    key pg_catalog.text,
    request pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    lease pg_catalog.interval DEFAULT '30 seconds',
    max_attempts pg_catalog.int4 DEFAULT NULL,
    OUT status pg_catalog.text,
    OUT token pg_catalog.uuid,
    OUT phase pg_catalog.text,
    OUT state pg_catalog.jsonb,
    OUT attempts pg_catalog.int4,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT response_headers pg_catalog.jsonb,
    OUT response_bytes pg_catalog.bytea,
    OUT last_error pg_catalog.text)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_lease'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- idem_finish gains two trailing arguments, and idem_stats result columns;
-- they are made again, with the idem_stats view over the function: a
-- function's result type cannot change in place, and a new argument list
-- is a new function (the old one would make every call without the new
-- arguments ambiguous).  Each keeps
-- the privileges granted or revoked on it since the install, and its
-- initial privileges (pg_init_privs, which pg_dump leaves out) stay those a
-- fresh install gives it: the administrator's grants are dumped and
-- restored as theirs.  An object of the user's that depends on one of them
-- (a view over idem_stats, a SQL function that calls idem_begin) makes the
-- update fail, rather than be dropped with it: DROP without CASCADE.
DO LANGUAGE plpgsql $remake$
DECLARE
    o record;
    old_acl pg_catalog.aclitem[];
    view_acl pg_catalog.aclitem[];
    new_acl pg_catalog.aclitem[];
    fresh_init pg_catalog.aclitem[];
    new_oid pg_catalog.oid;
    owner_oid pg_catalog.oid;
    catalog pg_catalog.regclass;
    kind text;
    g record;
BEGIN
    FOR o IN
        SELECT * FROM (VALUES
        (1, 'view', '@extschema@.idem_stats', NULL::text, NULL::text),
        (2, 'function', '@extschema@.idem_stats()', '@extschema@.idem_stats()', $sql$
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
    OUT failures pg_catalog.int8,
    OUT dead pg_catalog.int8,
    OUT dead_replies pg_catalog.int8,
    OUT retried pg_catalog.int8,
    OUT discarded pg_catalog.int8,
    OUT key_waits pg_catalog.int8,
    OUT key_wait_time pg_catalog.float8,
    OUT timed_calls pg_catalog.int8,
    OUT call_time pg_catalog.float8,
    OUT stats_reset pg_catalog.timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats'
LANGUAGE C VOLATILE PARALLEL SAFE;
REVOKE ALL ON FUNCTION @extschema@.idem_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_stats() TO pg_monitor;
$sql$),
        (3, 'function', '@extschema@.idem_finish(pg_catalog.text, pg_catalog.int4, pg_catalog.jsonb, pg_catalog.text, pg_catalog.uuid)',
            '@extschema@.idem_finish(pg_catalog.text, pg_catalog.int4, pg_catalog.jsonb, pg_catalog.text, pg_catalog.uuid, pg_catalog.jsonb, pg_catalog.bytea)', $sql$
CREATE FUNCTION @extschema@.idem_finish(
    key pg_catalog.text,
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '',
    token pg_catalog.uuid DEFAULT NULL,
    response_headers pg_catalog.jsonb DEFAULT NULL,
    response_bytes pg_catalog.bytea DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_finish'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
$sql$),
        (4, 'view', NULL, '@extschema@.idem_stats', $sql$
CREATE VIEW @extschema@.idem_stats AS SELECT * FROM @extschema@.idem_stats();
GRANT SELECT ON @extschema@.idem_stats TO pg_monitor;
$sql$)
        ) v(ord, kind, old_name, new_name, create_sql)
        ORDER BY ord
    LOOP
        kind := o.kind;
        catalog := CASE WHEN kind OPERATOR(pg_catalog.=) 'view' THEN 'pg_catalog.pg_class'::pg_catalog.regclass
                        ELSE 'pg_catalog.pg_proc'::pg_catalog.regclass END;

        -- the old object: remember its privileges (the view's are kept
        -- until it is made again, as the last step), and drop it
        IF o.old_name IS NOT NULL THEN
            IF kind OPERATOR(pg_catalog.=) 'view' THEN
                SELECT c.relacl INTO old_acl FROM pg_catalog.pg_class c
                 WHERE c.oid OPERATOR(pg_catalog.=) o.old_name::pg_catalog.regclass;
                view_acl := old_acl;
                EXECUTE pg_catalog.format('DROP VIEW %s', o.old_name);
            ELSE
                SELECT p.proacl INTO old_acl FROM pg_catalog.pg_proc p
                 WHERE p.oid OPERATOR(pg_catalog.=) o.old_name::pg_catalog.regprocedure;
                EXECUTE pg_catalog.format('DROP FUNCTION %s', o.old_name);
            END IF;
        END IF;
        IF o.create_sql IS NULL THEN
            CONTINUE;
        END IF;
        IF kind OPERATOR(pg_catalog.=) 'view' THEN
            old_acl := view_acl;
        END IF;

        -- the new object, with a fresh install's privileges
        EXECUTE o.create_sql;
        IF kind OPERATOR(pg_catalog.=) 'view' THEN
            new_oid := o.new_name::pg_catalog.regclass;
            SELECT c.relowner, COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner))
              INTO owner_oid, new_acl
              FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) new_oid;
        ELSE
            new_oid := o.new_name::pg_catalog.regprocedure;
            SELECT p.proowner, COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))
              INTO owner_oid, new_acl
              FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) new_oid;
        END IF;
        SELECT i.initprivs INTO fresh_init FROM pg_catalog.pg_init_privs i
         WHERE i.objoid OPERATOR(pg_catalog.=) new_oid
           AND i.classoid OPERATOR(pg_catalog.=) catalog
           AND i.objsubid OPERATOR(pg_catalog.=) 0;

        -- then the old one's privileges, if they were not the default
        IF old_acl IS NOT NULL THEN
            FOR g IN SELECT a.grantee, a.privilege_type FROM pg_catalog.aclexplode(new_acl) a
                      WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
            LOOP
                EXECUTE pg_catalog.format('REVOKE %s ON %s %s FROM %s', g.privilege_type,
                    CASE WHEN kind OPERATOR(pg_catalog.=) 'view' THEN 'TABLE' ELSE 'FUNCTION' END, o.new_name,
                    CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                         ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END);
            END LOOP;
            FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(old_acl) a
                      WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
            LOOP
                EXECUTE pg_catalog.format('GRANT %s ON %s %s TO %s%s', g.privilege_type,
                    CASE WHEN kind OPERATOR(pg_catalog.=) 'view' THEN 'TABLE' ELSE 'FUNCTION' END, o.new_name,
                    CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                         ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
                    CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
        END IF;

        -- and a fresh install's initial privileges
        IF fresh_init IS NULL THEN
            DELETE FROM pg_catalog.pg_init_privs i
             WHERE i.objoid OPERATOR(pg_catalog.=) new_oid
               AND i.classoid OPERATOR(pg_catalog.=) catalog
               AND i.objsubid OPERATOR(pg_catalog.=) 0;
        ELSE
            UPDATE pg_catalog.pg_init_privs i SET initprivs = fresh_init
             WHERE i.objoid OPERATOR(pg_catalog.=) new_oid
               AND i.classoid OPERATOR(pg_catalog.=) catalog
               AND i.objsubid OPERATOR(pg_catalog.=) 0;
        END IF;
    END LOOP;
END
$remake$;

-- A failed attempt, recorded after its transaction rolled back (or by a
-- lease holder, with its token): the key is 'failed' and its next begin
-- starts the work again, or, once max_attempts is reached, 'dead' and
-- nothing starts it again.  For PUBLIC: the application reports its own
-- failures, on the keys it names.
CREATE FUNCTION @extschema@.idem_fail(
    key pg_catalog.text,
    error pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    max_attempts pg_catalog.int4 DEFAULT NULL,
    ttl pg_catalog.interval DEFAULT '24 hours',
    token pg_catalog.uuid DEFAULT NULL)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'idem_fail'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- The operator's: new attempts for a dead key, or forget a failed or dead
-- one.  Not for PUBLIC.
CREATE FUNCTION @extschema@.idem_retry(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '')
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'idem_retry'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_discard(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '')
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_discard'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION @extschema@.idem_retry(pg_catalog.text, pg_catalog.text),
                       @extschema@.idem_discard(pg_catalog.text, pg_catalog.text) FROM PUBLIC;

-- The new functions that serve requests are PUBLIC's, as their older
-- counterparts are in a fresh install.  An installation that revoked those
-- counterparts from PUBLIC (and granted them to its application roles) gets
-- the same on the new ones: the _full variants take the privileges of the
-- function they extend, idem_once_batch idem_once's, and idem_fail and
-- idem_keep, which write a key as a finish does, idem_finish's.  Their
-- initial privileges stay a fresh install's (none recorded), so that
-- pg_dump dumps the copied grants as the installation's own.
DO LANGUAGE plpgsql $copy_acl$
DECLARE
    pair record;
    old_acl pg_catalog.aclitem[];
    new_acl pg_catalog.aclitem[];
    owner_oid pg_catalog.oid;
    g record;
BEGIN
    FOR pair IN
        SELECT v.new_fn::pg_catalog.regprocedure AS new_fn, v.old_fn::pg_catalog.regprocedure AS old_fn
          FROM (VALUES
            ('@extschema@.idem_begin_full(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)',
             '@extschema@.idem_begin(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)'),
            ('@extschema@.idem_begin_full(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)',
             '@extschema@.idem_begin(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)'),
            ('@extschema@.idem_begin_full(pg_catalog.text, pg_catalog.bytea, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)',
             '@extschema@.idem_begin(pg_catalog.text, pg_catalog.bytea, pg_catalog.text, pg_catalog.interval, pg_catalog.bool)'),
            ('@extschema@.idem_lookup_full(pg_catalog.text, pg_catalog.text)',
             '@extschema@.idem_lookup(pg_catalog.text, pg_catalog.text)'),
            ('@extschema@.idem_lease_full(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval, pg_catalog.interval, pg_catalog.int4)',
             '@extschema@.idem_lease(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval, pg_catalog.interval)'),
            ('@extschema@.idem_once_batch(pg_catalog.text[], pg_catalog.text, pg_catalog.interval)',
             '@extschema@.idem_once(pg_catalog.text, pg_catalog.text, pg_catalog.interval)'),
            ('@extschema@.idem_fail(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.interval, pg_catalog.uuid)',
             '@extschema@.idem_finish(pg_catalog.text, pg_catalog.int4, pg_catalog.jsonb, pg_catalog.text, pg_catalog.uuid, pg_catalog.jsonb, pg_catalog.bytea)'),
            ('@extschema@.idem_keep(pg_catalog.text, pg_catalog.text)',
             '@extschema@.idem_finish(pg_catalog.text, pg_catalog.int4, pg_catalog.jsonb, pg_catalog.text, pg_catalog.uuid, pg_catalog.jsonb, pg_catalog.bytea)')
          ) v(new_fn, old_fn)
    LOOP
        SELECT p.proacl INTO old_acl FROM pg_catalog.pg_proc p
         WHERE p.oid OPERATOR(pg_catalog.=) pair.old_fn;
        IF old_acl IS NULL THEN
            CONTINUE;			-- the default, PUBLIC's: as the new one's
        END IF;
        SELECT p.proowner, COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))
          INTO owner_oid, new_acl
          FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) pair.new_fn;
        FOR g IN SELECT a.grantee, a.privilege_type FROM pg_catalog.aclexplode(new_acl) a
                  WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
        LOOP
            EXECUTE pg_catalog.format('REVOKE %s ON FUNCTION %s FROM %s', g.privilege_type, pair.new_fn,
                CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                     ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END);
        END LOOP;
        FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(old_acl) a
                  WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
        LOOP
            EXECUTE pg_catalog.format('GRANT %s ON FUNCTION %s TO %s%s', g.privilege_type, pair.new_fn,
                CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                     ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        DELETE FROM pg_catalog.pg_init_privs i
         WHERE i.objoid OPERATOR(pg_catalog.=) pair.new_fn
           AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND i.objsubid OPERATOR(pg_catalog.=) 0;
    END LOOP;
END
$copy_acl$;

-- Failed and dead keys, through idem_keys_failures, with what the operator
-- needs to decide: attempts, the bound, the last reason, the recovery
-- point.  The reasons and recovery points are the application's data, so
-- the view is not for PUBLIC, nor for pg_monitor (idem_storage counts the
-- keys for monitoring).
CREATE VIEW @extschema@.idem_failed_keys AS
    SELECT k.scope, k.key,
           CASE WHEN k.state OPERATOR(pg_catalog.=) 'd' THEN 'dead' ELSE 'failed' END AS status,
           k.attempts, k.max_attempts, k.last_error, k.phase, k.phase_state,
           k.lease_duration IS NOT NULL AS lease,
           k.created_at, k.expires_at
      FROM @extschema@.idem_keys k
     WHERE k.state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[])
       AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now();

REVOKE ALL ON @extschema@.idem_failed_keys FROM PUBLIC;

-- What the key store holds, as before, how many keys are kept for good
-- (through the expiry index, up to the same cap as expired keys), and how
-- many are failed or dead (through idem_keys_failures).  CREATE OR REPLACE keeps the view's privileges; the new columns
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
            (SELECT pg_catalog.count(*) FROM @extschema@.idem_keys k
              WHERE k.state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[])
                AND k.state OPERATOR(pg_catalog.=) 'f' AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
                AS failed_keys,
            (SELECT pg_catalog.count(*) FROM @extschema@.idem_keys k
              WHERE k.state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[])
                AND k.state OPERATOR(pg_catalog.=) 'd' AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
                AS dead_keys,
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
                            OPERATOR(pg_catalog.-) expired_keys
                            OPERATOR(pg_catalog.-) failed_keys
                            OPERATOR(pg_catalog.-) dead_keys, 0) AS completed_keys_estimate,
        leased_keys,
        leases_expired,
        expired_keys,
        expired_keys OPERATOR(pg_catalog.>=) 100000 AS expired_keys_capped,
        pg_catalog.pg_table_size('@extschema@.idem_keys'::pg_catalog.regclass) AS table_bytes,
        pg_catalog.pg_indexes_size('@extschema@.idem_keys'::pg_catalog.regclass) AS index_bytes,
        permanent_keys,
        permanent_keys OPERATOR(pg_catalog.>=) 100000 AS permanent_keys_capped,
        failed_keys,
        dead_keys
    FROM counted;
