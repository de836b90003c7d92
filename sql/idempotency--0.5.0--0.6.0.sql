/* idempotency--0.5.0--0.6.0.sql: keys that live with their tenant on Citus */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.6.0'" to load this file. \quit

-- Raise 42809 if an object the setup would use or replace (a relation or
-- a function, NULL for none) is owned by a role that is not a superuser:
-- CREATE OR REPLACE keeps an object's owner, and a database owner who made
-- it first could change it again later (CVE-2022-2625's lesson, outside
-- the scripts).  The library checks idem_tenant_keys' owner the same way.
CREATE FUNCTION @extschema@.idem_citus_check_owner(obj pg_catalog.oid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $check$
DECLARE
    owner pg_catalog.oid;
    what pg_catalog.text;
BEGIN
    SELECT c.relowner, 'relation ' || obj::pg_catalog.regclass::pg_catalog.text INTO owner, what
      FROM pg_catalog.pg_class c WHERE c.oid = obj;
    IF NOT FOUND THEN
        SELECT p.proowner, 'function ' || obj::pg_catalog.regprocedure::pg_catalog.text INTO owner, what
          FROM pg_catalog.pg_proc p WHERE p.oid = obj;
    END IF;
    IF owner IS NOT NULL
       AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = owner) THEN
        RAISE EXCEPTION '% is not idem_citus_setup()''s', what
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = pg_catalog.format('It is owned by role %s, who is not a superuser.',
                                             pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(owner))),
                  HINT = 'Drop or rename it, then run idem_citus_setup() again.';
    END IF;
END
$check$;

REVOKE ALL ON FUNCTION @extschema@.idem_citus_check_owner(pg_catalog.oid) FROM PUBLIC;

-- Have Citus delegate every function of the extension that takes a scope
-- to the node of the scope's tenant, colocated with idem_tenant_keys: for a
-- text tenant the function itself, for any other an overload whose scope
-- has the tenant's type.  Run by idem_citus_setup() and again after every
-- ALTER EXTENSION idempotency UPDATE (idem_citus_after_update), so that a
-- function an update makes again or anew is delegated as the others.
CREATE FUNCTION @extschema@.idem_citus_distribute()
RETURNS TABLE (object pg_catalog.text, action pg_catalog.text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $distribute$
DECLARE
    ext pg_catalog.oid;
    nsp pg_catalog.text;
    keys_name pg_catalog.text;
    tenant record;
    f record;
    args pg_catalog.text;
    call_args pg_catalog.text;
    sig pg_catalog.text;
    fn pg_catalog.regprocedure;
    body pg_catalog.text;
    n pg_catalog.int4;
    dflt pg_catalog.text;
    after_scope pg_catalog.bool;
    acl record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT e.oid, pg_catalog.quote_ident(ns.nspname) INTO ext, nsp
      FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace
     WHERE e.extname = 'idempotency';
    keys_name := nsp || '.idem_tenant_keys';
    SELECT a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod) AS typname, c.oid
      INTO tenant
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant'
      JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid = c.oid AND p.partmethod = 'h'
     WHERE c.relname = 'idem_tenant_keys'
       AND c.relnamespace = (SELECT extnamespace FROM pg_catalog.pg_extension WHERE oid = ext);
    IF FOUND THEN
        PERFORM @extschema@.idem_citus_check_owner(tenant.oid);
    ELSE
        RAISE EXCEPTION 'extension "idempotency" is not set up for Citus'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run idem_citus_setup() first.';
    END IF;
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);

    FOR f IN
        SELECT p.oid, p.proname, p.proargnames AS names,
               COALESCE(p.proallargtypes,
                        ARRAY(SELECT pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]))) AS types,
               p.proargmodes AS modes, p.proacl, p.proowner,
               pg_catalog.pg_get_function_result(p.oid) AS result
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_depend d
            ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
           AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND d.refobjid = ext AND d.deptype = 'e'
         WHERE p.prokind = 'f' AND 'scope' = ANY (p.proargnames)
         ORDER BY p.proname, p.oid
    LOOP
        IF tenant.atttypid = 'pg_catalog.text'::pg_catalog.regtype THEN
            fn := f.oid;
        ELSE
            -- an overload whose scope has the tenant's type; the arguments
            -- before the scope lose their defaults (a call passes a scope)
            IF f.modes IS NOT NULL AND NOT (f.modes <@ ARRAY['i', 'o']::pg_catalog."char"[]) THEN
                RAISE EXCEPTION 'function %.% has an INOUT, VARIADIC or TABLE argument', nsp, f.proname
                    USING ERRCODE = 'feature_not_supported',
                          DETAIL = 'idem_citus_distribute() makes overloads of functions with IN arguments, then OUT ones.';
            END IF;
            args := ''; call_args := ''; sig := ''; after_scope := false;
            FOR n IN 1 .. pg_catalog.array_length(f.types, 1) LOOP
                IF args <> '' THEN args := args || ', '; END IF;
                IF f.modes IS NOT NULL AND f.modes[n] = 'o' THEN
                    args := args || pg_catalog.format('OUT %I %s', f.names[n],
                                                      pg_catalog.format_type(f.types[n], NULL));
                    CONTINUE;
                END IF;
                IF call_args <> '' THEN call_args := call_args || ', '; sig := sig || ', '; END IF;
                IF f.names[n] = 'scope' THEN
                    args := args || pg_catalog.format('scope %s', tenant.typname);
                    call_args := call_args || pg_catalog.format('$%s::pg_catalog.text', n);
                    sig := sig || tenant.typname;
                    after_scope := true;
                ELSE
                    dflt := CASE WHEN after_scope THEN pg_catalog.pg_get_function_arg_default(f.oid, n) END;
                    args := args || pg_catalog.format('%I %s', f.names[n],
                                                      pg_catalog.format_type(f.types[n], NULL))
                                 || COALESCE(' DEFAULT ' || dflt, '');
                    call_args := call_args || pg_catalog.format('$%s', n);
                    sig := sig || pg_catalog.format_type(f.types[n], NULL);
                END IF;
            END LOOP;
            -- SELECT * FROM, whatever the result: a body with a FROM
            -- clause is never inlined by the planner, and Citus looks for
            -- the call to delegate after the planner ran.  No SET clause:
            -- idem_call's work runs under the caller's search_path.
            -- replace only the setup's own: a function of that signature
            -- that a non-superuser made (a role with CREATE on this schema)
            -- would keep its owner, who could make it anything later
            PERFORM @extschema@.idem_citus_check_owner(
                pg_catalog.to_regprocedure(pg_catalog.format('%s.%I(%s)', nsp, f.proname, sig)));
            body := pg_catalog.format('SELECT * FROM %s.%I(%s)', nsp, f.proname, call_args);
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE FUNCTION %s.%I(%s) RETURNS %s LANGUAGE sql VOLATILE PARALLEL UNSAFE AS %L',
                nsp, f.proname, args, f.result, body);
            fn := pg_catalog.format('%s.%I(%s)', nsp, f.proname, sig)::pg_catalog.regprocedure;
            -- and again, for one made between the check and the replace
            PERFORM @extschema@.idem_citus_check_owner(fn);
            EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', fn::pg_catalog.text,
                pg_catalog.format('%s with a scope of the tenant type %s, for Citus (made by idem_citus_setup())',
                                  f.proname, tenant.typname));
            -- who may call it: whoever may call the function it calls,
            -- whatever default privileges the role running this has
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn::pg_catalog.text);
            FOR acl IN SELECT a.grantee
                         FROM pg_catalog.aclexplode(COALESCE(f.proacl,
                                  pg_catalog.acldefault('f', f.proowner))) a
                        WHERE a.privilege_type = 'EXECUTE'
            LOOP
                EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s', fn::pg_catalog.text,
                    CASE WHEN acl.grantee = 0 THEN 'PUBLIC'
                         ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(acl.grantee)) END);
            END LOOP;
        END IF;
        PERFORM pg_catalog.create_distributed_function(fn, 'scope',
                                                       colocate_with := keys_name,
                                                       force_delegation := true);
        object := fn::pg_catalog.text; action := 'delegated to the tenant''s node'; RETURN NEXT;
    END LOOP;
END
$distribute$;

REVOKE ALL ON FUNCTION @extschema@.idem_citus_distribute() FROM PUBLIC;

-- The event trigger idem_citus_setup() makes: after ALTER EXTENSION
-- idempotency UPDATE on the coordinator (Citus has run the update on the
-- workers before), delegate the functions again.  A failure here leaves
-- the update in place with a warning: an undelegated call is refused
-- (0A000), never run against the wrong node's keys.
CREATE FUNCTION @extschema@.idem_citus_after_update()
RETURNS pg_catalog.event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $after$
DECLARE
    coordinator pg_catalog.bool;
BEGIN
    -- Citus's functions only once Citus is known to be there: the trigger
    -- fires for every ALTER EXTENSION in the database, Citus dropped or not
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() c
                    WHERE c.object_type = 'extension' AND c.object_identity = 'idempotency')
       OR NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO coordinator;
    IF NOT coordinator THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM @extschema@.idem_citus_distribute();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'could not delegate the functions of extension "idempotency" again: %', SQLERRM
            USING HINT = 'Run SELECT * FROM idem_citus_setup(...) again; until then calls of them on the coordinator are refused.';
    END;
END
$after$;

REVOKE ALL ON FUNCTION @extschema@.idem_citus_after_update() FROM PUBLIC;

-- On Citus a key must commit in the same local transaction as the writes
-- it guards, on the node that holds the tenant's shard.  From this version
-- the library refuses every call on Citus until this has been run once, on
-- the coordinator, as a superuser:
--
--   SELECT * FROM idempotency.idem_citus_setup('payments');
--
-- It makes idem_tenant_keys, the keys as a distributed table colocated with
-- the given tenant table (so they move with its shards in a move, a
-- rebalance or a tenant isolation), and has Citus delegate every function
-- that takes a scope to the node of that scope's tenant.  Citus delegates
-- a call only when its distribution argument has the type of the tenant
-- column; for a tenant that is not text it makes an overload of each such
-- function whose scope has the tenant's type, in this schema, calling the
-- extension's own.  Those overloads and the table are the setup's, not the
-- extension's members: an ALTER EXTENSION UPDATE leaves them, and their
-- distribution, as they are.  Running it again does what is missing and
-- changes nothing else.  See docs/citus.md.
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

    RETURN QUERY SELECT * FROM @extschema@.idem_citus_distribute();

    -- the monitoring views, cluster-wide (docs/citus.md); replaced only
    -- if a superuser owns them, as the overloads
    PERFORM @extschema@.idem_citus_check_owner(
        pg_catalog.to_regclass(nsp || '.idem_citus_failed_keys'));
    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW %1$s.idem_citus_failed_keys AS
        SELECT k.tenant, k.scope, k.key,
               CASE WHEN k.state OPERATOR(pg_catalog.=) 'd' THEN 'dead' ELSE 'failed' END AS status,
               k.attempts, k.max_attempts, k.last_error, k.phase, k.phase_state,
               k.lease_duration IS NOT NULL AS lease, k.created_at, k.expires_at
          FROM %1$s.idem_tenant_keys k
         WHERE k.state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[])
           AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()$v$, nsp);
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
END
$setup$;

REVOKE ALL ON FUNCTION @extschema@.idem_citus_setup(pg_catalog.regclass) FROM PUBLIC;

COMMENT ON FUNCTION @extschema@.idem_citus_setup(pg_catalog.regclass) IS
'On Citus: keep the keys with the tenants of the given distributed table, and delegate every call to its tenant''s node';
