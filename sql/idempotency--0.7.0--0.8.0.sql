/* idempotency--0.7.0--0.8.0.sql: every view over the key table a security barrier; scopes that belong to roles; an operator's bounds */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.8.0'" to load this file. \quit

-- A view that shows some rows of the key table to a role without privileges
-- on the table (idem_failed_keys: the failed and dead keys, for operators)
-- must not run that role's functions on the rows it hides: without a
-- security barrier, a cheap enough function in the role's WHERE clause is
-- evaluated below the view's own conditions, on every row of idem_keys, and
-- can print them (docs/security.md).  idem_storage shows only counts, which
-- no condition of a caller's can reach below; it is a barrier as well, so
-- that every view over the key table is one.  Setting the option takes a
-- lock on the view only, not on idem_keys.
ALTER VIEW @extschema@.idem_storage SET (security_barrier = true);

-- On Citus, idem_citus_setup() makes the same kind of view over every
-- node's tenant keys: a barrier too, where the setup already made it, and
-- from the setup itself (made again below, as 0.7.0 made it, but for that).
DO $barrier$
DECLARE
    v pg_catalog.regclass := pg_catalog.to_regclass(
        pg_catalog.quote_ident((SELECT n.nspname FROM pg_catalog.pg_namespace n
                                  JOIN pg_catalog.pg_extension e ON e.extnamespace OPERATOR(pg_catalog.=) n.oid
                                 WHERE e.extname OPERATOR(pg_catalog.=) 'idempotency'))
        OPERATOR(pg_catalog.||) '.idem_citus_failed_keys');
BEGIN
    IF v IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER VIEW %s SET (security_barrier = true)', v);
    END IF;
END
$barrier$;

-- idem_citus_setup() as 0.7.0 made it, but for the barrier on
-- idem_citus_failed_keys and its reader's scopes only (idem_scope_permitted,
-- evaluated on each node with that node's idem_scope_owners).
DROP FUNCTION @extschema@.idem_citus_setup(pg_catalog.regclass);

CREATE FUNCTION @extschema@.idem_citus_setup(tenant_table pg_catalog.regclass)
RETURNS TABLE (object pg_catalog.text, action pg_catalog.text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $setup$
DECLARE
    ext pg_catalog.oid;
    nsp pg_catalog.text;
    keys_name pg_catalog.text;
    tenant record;
    existing record;
    f record;
BEGIN
    IF tenant_table IS NULL THEN
        RAISE EXCEPTION 'tenant table must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Without Citus, extension "idempotency" needs no setup.';
    END IF;
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'permission denied to set up extension "idempotency" for Citus'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'It distributes the extension''s functions and makes a table in its schema.',
                  HINT = 'Run it as a superuser.';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'idem_citus_setup() must run on the coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    -- the coordinator's planner hook asks for two-phase commit, and every
    -- node sweeps its shards: the library must be loaded at start
    IF EXISTS (SELECT FROM pg_catalog.run_command_on_all_nodes(
                   'SELECT pg_catalog.current_setting(''shared_preload_libraries'')') r
                WHERE NOT r.success
                   OR NOT ('idempotency' = ANY (pg_catalog.string_to_array(
                              pg_catalog.replace(r.result, ' ', ''), ',')))) THEN
        RAISE EXCEPTION 'extension "idempotency" is not preloaded on every node'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Add idempotency after citus to shared_preload_libraries on the coordinator and every worker, and restart them.';
    END IF;

    SELECT e.oid, pg_catalog.quote_ident(n.nspname) INTO ext, nsp
      FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'idempotency';
    keys_name := nsp || '.idem_tenant_keys';

    -- The setup's objects are not the extension's members, and a schema's
    -- owner may drop anything in it: the schema must be a superuser's
    -- alone (the library checks the same at every call).  public belongs
    -- to the database's owner.
    IF EXISTS (
        WITH s AS (
            SELECT n.nspowner, n.nspacl,
                   (SELECT d.datdba FROM pg_catalog.pg_database d
                     WHERE d.datname = pg_catalog.current_database()) AS datdba
              FROM pg_catalog.pg_namespace n
             WHERE n.oid = (SELECT extnamespace FROM pg_catalog.pg_extension WHERE oid = ext))
        SELECT FROM s
         WHERE NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r
                     WHERE r.oid = CASE WHEN s.nspowner = 'pg_database_owner'::pg_catalog.regrole
                                        THEN s.datdba ELSE s.nspowner END)
            OR EXISTS (SELECT FROM pg_catalog.aclexplode(s.nspacl) a
                        WHERE a.privilege_type = 'CREATE'
                          AND (a.grantee = 0
                               OR NOT COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r
                                                 WHERE r.oid = CASE WHEN a.grantee = 'pg_database_owner'::pg_catalog.regrole
                                                                    THEN s.datdba ELSE a.grantee END), false)))) THEN
        RAISE EXCEPTION 'schema % of extension "idempotency" is not a superuser''s alone', nsp
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'The keys and the overloads idem_citus_setup() makes would live in it, and a role that owns it or may create in it could drop or replace them.',
                  HINT = 'Install the extension in a schema that a superuser owns and no one else may create in: CREATE SCHEMA idem; CREATE EXTENSION idempotency SCHEMA idem.';
    END IF;

    -- distributed DDL and function changes in one transaction need one
    -- connection per node (this lasts until the function returns)
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);

    -- the tenant: the distribution column of a hash-distributed table
    SELECT p.colocationid, a.attname, a.atttypid, a.atttypmod, a.attcollation,
           pg_catalog.format_type(a.atttypid, a.atttypmod) AS typname
      INTO tenant
      FROM pg_catalog.pg_dist_partition p
      JOIN pg_catalog.pg_attribute a
        ON a.attrelid = p.logicalrelid
       AND a.attname = pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
     WHERE p.logicalrelid = tenant_table AND p.partmethod = 'h';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not hash-distributed', tenant_table
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Name the distributed table whose distribution column holds the tenants, as create_distributed_table() made it.';
    END IF;
    -- one text per tenant, in every session (the library checks it too)
    IF tenant.atttypid NOT IN ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                               'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.uuid'::pg_catalog.regtype,
                               'pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.varchar'::pg_catalog.regtype)
       OR (tenant.attcollation <> 0
           AND NOT (SELECT c.collisdeterministic FROM pg_catalog.pg_collation c
                     WHERE c.oid = tenant.attcollation)) THEN
        RAISE EXCEPTION 'a tenant of type % is not supported', tenant.typname
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Tenants are smallint, integer, bigint, uuid, text or varchar (with a deterministic collation), whose text is one spelling per tenant.';
    END IF;

    -- the keys, colocated with the tenants
    SELECT p.colocationid, a.atttypid, c.oid INTO existing
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid = c.oid
      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant'
     WHERE c.relname = 'idem_tenant_keys'
       AND n.oid = (SELECT extnamespace FROM pg_catalog.pg_extension WHERE oid = ext);
    IF FOUND THEN
        PERFORM @extschema@.idem_citus_check_owner(existing.oid::pg_catalog.regclass);
        IF existing.colocationid IS DISTINCT FROM tenant.colocationid
           OR existing.atttypid IS DISTINCT FROM tenant.atttypid THEN
            RAISE EXCEPTION 'the keys already live with the tenants of another table'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = pg_catalog.format('%s is not colocated with %s, or its tenant is not of type %s.',
                                                 keys_name, tenant_table, tenant.typname),
                      HINT = 'Give the table idem_citus_setup() was first run with, or one colocated with it.';
        END IF;
        object := keys_name; action := 'kept'; RETURN NEXT;
    ELSE
        -- idem_keys' columns, in its order (the library reads them by
        -- number), and the tenant after them; Citus's unique indexes hold
        -- the distribution column, and a scope names one tenant, so
        -- (scope, key, tenant) is as unique as (scope, key)
        EXECUTE pg_catalog.format($ddl$
            CREATE TABLE %1$s.idem_tenant_keys (
                created_at       pg_catalog.timestamptz NOT NULL,
                expires_at       pg_catalog.timestamptz NOT NULL,
                response_code    pg_catalog.int4,
                state            pg_catalog."char" NOT NULL,
                scope            pg_catalog.text COLLATE pg_catalog."C" NOT NULL,
                key              pg_catalog.text COLLATE pg_catalog."C" NOT NULL,
                fingerprint      pg_catalog.bytea,
                response_body    pg_catalog.jsonb,
                lease_token      pg_catalog.uuid,
                lease_expires_at pg_catalog.timestamptz,
                lease_duration   pg_catalog.interval,
                attempts         pg_catalog.int4,
                phase            pg_catalog.text,
                phase_state      pg_catalog.jsonb,
                response_headers pg_catalog.jsonb,
                response_bytes   pg_catalog.bytea,
                max_attempts     pg_catalog.int4,
                last_error       pg_catalog.text,
                tenant           %2$s%3$s NOT NULL,
                CONSTRAINT idem_tenant_keys_pkey PRIMARY KEY (scope, key, tenant)
            ) USING heap
            WITH (autovacuum_vacuum_scale_factor = 0.02,
                  autovacuum_vacuum_threshold = 1000,
                  autovacuum_vacuum_cost_delay = 0)$ddl$,
            nsp, tenant.typname,
            CASE WHEN tenant.attcollation <> 0 THEN
                (SELECT pg_catalog.format(' COLLATE %I.%I', cn.nspname, c.collname)
                   FROM pg_catalog.pg_collation c
                   JOIN pg_catalog.pg_namespace cn ON cn.oid = c.collnamespace
                  WHERE c.oid = tenant.attcollation)
            ELSE '' END);
        EXECUTE pg_catalog.format('CREATE INDEX idem_tenant_keys_expires_at ON %s USING btree (expires_at)', keys_name);
        EXECUTE pg_catalog.format('CREATE INDEX idem_tenant_keys_leases ON %s USING btree (lease_expires_at) WHERE state = %L::pg_catalog."char"', keys_name, 'p');
        EXECUTE pg_catalog.format('CREATE INDEX idem_tenant_keys_failures ON %s USING btree (scope, key) WHERE state = ANY (%L::pg_catalog."char"[])', keys_name, '{f,d}');
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC', keys_name);
        PERFORM pg_catalog.create_distributed_table(keys_name::pg_catalog.regclass, 'tenant',
                                                    colocate_with := tenant_table::pg_catalog.text);
        object := keys_name; action := 'created, colocated with ' || tenant_table::pg_catalog.text; RETURN NEXT;
    END IF;

    -- the keys of the database before it was scaled out, each to its tenant
    RETURN QUERY SELECT * FROM @extschema@.idem_citus_carry_keys();

    RETURN QUERY SELECT * FROM @extschema@.idem_citus_distribute();

    -- the monitoring views, cluster-wide (docs/citus.md); replaced only
    -- if a superuser owns them, as the overloads
    PERFORM @extschema@.idem_citus_check_owner(
        pg_catalog.to_regclass(nsp || '.idem_citus_failed_keys'));
    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW %1$s.idem_citus_failed_keys WITH (security_barrier) AS
        SELECT k.tenant, k.scope, k.key,
               CASE WHEN k.state OPERATOR(pg_catalog.=) 'd' THEN 'dead' ELSE 'failed' END AS status,
               k.attempts, k.max_attempts, k.last_error, k.phase, k.phase_state,
               k.lease_duration IS NOT NULL AS lease, k.created_at, k.expires_at
          FROM %1$s.idem_tenant_keys k
         WHERE k.state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[])
           AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
           AND %1$s.idem_scope_permitted(k.scope)$v$, nsp);
    PERFORM @extschema@.idem_citus_check_owner(
        pg_catalog.to_regclass(nsp || '.idem_citus_failed_keys'));
    EXECUTE pg_catalog.format('REVOKE ALL ON %s.idem_citus_failed_keys FROM PUBLIC', nsp);
    object := nsp || '.idem_citus_failed_keys'; action := 'view of the failed and dead keys of every node'; RETURN NEXT;
    FOR f IN SELECT * FROM (VALUES ('idem_citus_stats', 'idem_stats'),
                                   ('idem_citus_sweeper_status', 'idem_sweeper_status')) v(name, local)
    LOOP
        PERFORM @extschema@.idem_citus_check_owner(
            pg_catalog.to_regclass(pg_catalog.format('%s.%I', nsp, f.name)));
        EXECUTE pg_catalog.format($v$
            CREATE OR REPLACE VIEW %1$s.%2$I AS
            SELECT r.nodeid, n.nodename, n.nodeport, r.success,
                   CASE WHEN NOT r.success THEN r.result END AS error, s.*
              FROM pg_catalog.run_command_on_all_nodes(%4$L) r
              LEFT JOIN pg_catalog.pg_dist_node n ON n.nodeid OPERATOR(pg_catalog.=) r.nodeid
              LEFT JOIN LATERAL pg_catalog.json_populate_recordset(NULL::%1$s.%3$I,
                   CASE WHEN r.success THEN r.result::pg_catalog.json END) s ON true$v$,
            nsp, f.name, f.local,
            pg_catalog.format('SELECT COALESCE(pg_catalog.json_agg(s), %L) FROM %s.%I s WHERE s.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()',
                              '[]', nsp, f.local));
        PERFORM @extschema@.idem_citus_check_owner(
            pg_catalog.to_regclass(pg_catalog.format('%s.%I', nsp, f.name)));
        EXECUTE pg_catalog.format('REVOKE ALL ON %s.%I FROM PUBLIC', nsp, f.name);
        EXECUTE pg_catalog.format('GRANT SELECT ON %s.%I TO pg_monitor', nsp, f.name);
        object := nsp || '.' || f.name; action := 'view of ' || f.local || ' on every node'; RETURN NEXT;
    END LOOP;

    -- an ALTER EXTENSION UPDATE that makes a function again (or a new one)
    -- has it delegated as before, at the end of the same command
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'idem_citus_after_update') THEN
        EXECUTE pg_catalog.format(
            'CREATE EVENT TRIGGER idem_citus_after_update ON ddl_command_end '
            'WHEN TAG IN (%L) EXECUTE FUNCTION %s.idem_citus_after_update()',
            'ALTER EXTENSION', nsp);
    END IF;
    object := 'event trigger idem_citus_after_update'; action := 'delegates the functions again after ALTER EXTENSION idempotency UPDATE'; RETURN NEXT;

    -- the views are read through the schema: pg_monitor's members need
    -- USAGE on it, which the setup does not grant (it would let them call
    -- every function of the extension that PUBLIC may call, with keys they
    -- can read in pg_stat_activity)
    IF NOT pg_catalog.has_schema_privilege('pg_monitor',
               (SELECT extnamespace FROM pg_catalog.pg_extension WHERE oid = ext), 'USAGE') THEN
        object := 'schema ' || nsp;
        action := pg_catalog.format('pg_monitor may not use it: a monitoring role reads the views after GRANT USAGE ON SCHEMA %s TO <that role>', nsp);
        RETURN NEXT;
    END IF;
END
$setup$;


REVOKE ALL ON FUNCTION @extschema@.idem_citus_setup(pg_catalog.regclass) FROM PUBLIC;

COMMENT ON FUNCTION @extschema@.idem_citus_setup(pg_catalog.regclass) IS
'On Citus: keep the keys with the tenants of the given distributed table, carry there the keys the database had, and delegate every call to its tenant''s node';


-- Scope boundaries (src/idem_scope.c): an operator ties scope prefixes to
-- roles; a scope belongs to the role of its longest matching prefix, and
-- only roles with that role's privileges may use its keys.  Empty: every
-- role may use every scope, as before.  Its rows are the installation's
-- own, so pg_dump dumps them; nobody but its owner may read or change it
-- until granted.
CREATE TABLE @extschema@.idem_scope_owners (
    scope_prefix pg_catalog.text PRIMARY KEY
        CONSTRAINT idem_scope_owners_prefix_length
        CHECK (pg_catalog.octet_length(scope_prefix) OPERATOR(pg_catalog.<=) 255),
    role pg_catalog.regrole NOT NULL
);

SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_scope_owners', '');

COMMENT ON TABLE @extschema@.idem_scope_owners IS
'Scope prefixes and the roles whose privileges a caller needs to use the keys of scopes that begin with them (the longest matching prefix decides)';

-- Every backend keeps the rules until the table changes: the triggers tell
-- them all, at commit, with an invalidation of the table.  For each row,
-- since a logical replication subscriber's apply fires no statement
-- trigger but TRUNCATE's; ALWAYS, so that neither that apply nor
-- session_replication_role = replica (a restore, a replication tool)
-- skips them.
CREATE FUNCTION @extschema@.idem_scope_owners_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'idem_scope_owners_changed'
LANGUAGE C;

REVOKE ALL ON FUNCTION @extschema@.idem_scope_owners_changed() FROM PUBLIC;

CREATE TRIGGER idem_scope_owners_changed
    AFTER INSERT OR UPDATE OR DELETE ON @extschema@.idem_scope_owners
    FOR EACH ROW EXECUTE FUNCTION @extschema@.idem_scope_owners_changed();

CREATE TRIGGER idem_scope_owners_truncated
    AFTER TRUNCATE ON @extschema@.idem_scope_owners
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.idem_scope_owners_changed();

ALTER TABLE @extschema@.idem_scope_owners ENABLE ALWAYS TRIGGER idem_scope_owners_changed;
ALTER TABLE @extschema@.idem_scope_owners ENABLE ALWAYS TRIGGER idem_scope_owners_truncated;

-- May the current role use the keys of a scope?  PUBLIC's: it tells a
-- caller only about itself.
CREATE FUNCTION @extschema@.idem_scope_permitted(scope pg_catalog.text)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_scope_permitted'
LANGUAGE C STRICT STABLE PARALLEL UNSAFE;

-- The operator's view lists only the keys of scopes its reader may use;
-- a security barrier, so that no function of the reader's runs first.
CREATE OR REPLACE VIEW @extschema@.idem_failed_keys WITH (security_barrier) AS
    SELECT k.scope, k.key,
           CASE WHEN k.state OPERATOR(pg_catalog.=) 'd' THEN 'dead' ELSE 'failed' END AS status,
           k.attempts, k.max_attempts, k.last_error, k.phase, k.phase_state,
           k.lease_duration IS NOT NULL AS lease,
           k.created_at, k.expires_at
      FROM @extschema@.idem_keys k
     WHERE k.state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[])
       AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
       AND @extschema@.idem_scope_permitted(k.scope);

-- The operator's tool for a key a hostile or broken client took: forget it
-- whatever its state.  idem_discard(key, scope) keeps forgetting only a
-- failed or dead key.  The new form gets the two-argument form's grants;
-- its initial privileges stay a fresh install's (none recorded), so that
-- pg_dump dumps the copied grants as the installation's own.
CREATE FUNCTION @extschema@.idem_discard(
    key pg_catalog.text,
    scope pg_catalog.text,
    any_state pg_catalog.bool)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_discard'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION @extschema@.idem_discard(pg_catalog.text, pg_catalog.text, pg_catalog.bool) FROM PUBLIC;

DO LANGUAGE plpgsql $copy_acl$
DECLARE
    new_fn pg_catalog.regprocedure := '@extschema@.idem_discard(pg_catalog.text, pg_catalog.text, pg_catalog.bool)';
    old_fn pg_catalog.regprocedure := '@extschema@.idem_discard(pg_catalog.text, pg_catalog.text)';
    old_acl pg_catalog.aclitem[];
    owner_oid pg_catalog.oid;
    copied pg_catalog.bool := false;
    g record;
BEGIN
    SELECT p.proacl, p.proowner INTO old_acl, owner_oid FROM pg_catalog.pg_proc p
     WHERE p.oid OPERATOR(pg_catalog.=) old_fn;
    FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(old_acl) a
              WHERE a.grantee OPERATOR(pg_catalog.<>) owner_oid
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON FUNCTION %s TO %s%s', g.privilege_type, new_fn,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        copied := true;
    END LOOP;
    IF copied THEN
        DELETE FROM pg_catalog.pg_init_privs i
         WHERE i.objoid OPERATOR(pg_catalog.=) new_fn
           AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND i.objsubid OPERATOR(pg_catalog.=) 0;
    END IF;
END
$copy_acl$;
