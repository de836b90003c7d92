/* idempotency--0.6.0--0.7.0.sql: the key table written as DML writes a table; Citus updates and scale-out */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.7.0'" to load this file. \quit

-- The key table itself does not change: from 0.7.0 the library writes
-- idem_keys through the executor's own row machinery (every ready index,
-- constraints, AFTER ROW triggers), whatever version of the SQL objects is
-- installed.  What follows changes only the Citus functions, and takes no
-- lock on idem_keys (test/t/033_upgrade.pl).

-- On Citus, ALTER EXTENSION idempotency UPDATE on the coordinator runs the
-- update script there, fires the event triggers, and only then has Citus
-- run the same command on the workers.  Delegating a function at the end of
-- the coordinator's part, as 0.6.0's idem_citus_after_update() did, failed
-- for a function the workers did not have yet, and undid the delegation of
-- every function made again.  From 0.7.0 idem_citus_distribute(), which
-- the trigger calls, asks the library (idem_citus.c) to call it again once
-- the whole command has run, on every node, in its transaction:
-- idem_citus_distribute_later() is true when the library will.
CREATE FUNCTION @extschema@.idem_citus_distribute_later()
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_citus_distribute_later'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION @extschema@.idem_citus_distribute_later() FROM PUBLIC;

-- idem_citus_distribute() as 0.6.0 made it, but for its first step: when
-- the setup's event trigger, idem_citus_after_update(), calls it in
-- ALTER EXTENSION's own part, it leaves the work to the library, which
-- calls it again once the command has run on every node.  (The trigger
-- depends on its function, which stays as it is; this one nothing depends
-- on, and it is made again as the 0.2.0 and 0.4.0 scripts make a function
-- again.)
DROP FUNCTION @extschema@.idem_citus_distribute();

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
    -- called by the event trigger in ALTER EXTENSION's own part, before
    -- Citus has run the command on the workers: the library calls this
    -- again once it has (and then this returns false)
    IF @extschema@.idem_citus_distribute_later() THEN
        RETURN;
    END IF;
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

-- Scaling out a database that already has keys: idem_citus_setup() carries
-- the live keys of the coordinator's own idem_keys into idem_tenant_keys,
-- each to the shard of its tenant, and deletes them from idem_keys, in its
-- transaction.  A key left there would never be found again (on Citus every
-- call looks in its tenant's shard), and the retry of its request would run
-- the work again.  It refuses, with nothing changed, if a live key's scope
-- is not a tenant (the empty scope, 'abc' for a bigint tenant: on Citus no
-- call can name it), if two spellings of one tenant hold the same key, or
-- if a worker's own idem_keys has live keys.  Expired keys are left for
-- the sweeper.
CREATE FUNCTION @extschema@.idem_citus_carry_keys()
RETURNS TABLE (object pg_catalog.text, action pg_catalog.text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $carry$
DECLARE
    nsp pg_catalog.text;
    keys_rel pg_catalog.regclass;
    tenant record;
    s record;
    w record;
    dup record;
    canonical pg_catalog.text;
    scopes pg_catalog.text[] := '{}';
    tenants pg_catalog.text[] := '{}';
    unmapped pg_catalog.int8 := 0;
    example pg_catalog.text;
    latest pg_catalog.timestamptz;
    cols pg_catalog.text;
    kcols pg_catalog.text;
    carried pg_catalog.int8;
    deleted pg_catalog.int8;
BEGIN
    SELECT pg_catalog.quote_ident(n.nspname) INTO nsp
      FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'idempotency';
    keys_rel := pg_catalog.to_regclass(nsp || '.idem_tenant_keys');
    SELECT a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod) AS typname INTO tenant
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = keys_rel AND a.attname = 'tenant';

    -- the workers' own tables: the extension comes to a worker with Citus
    -- (or with this setup), and a call there is refused until the setup,
    -- but a node that had the extension before it joined may hold keys
    FOR w IN SELECT r.nodename, r.nodeport, r.success, r.result
               FROM pg_catalog.run_command_on_workers(pg_catalog.format(
                        'SELECT CASE WHEN pg_catalog.to_regclass(%L) IS NULL THEN 0 ELSE (pg_catalog.xpath(%L, pg_catalog.query_to_xml(%L, false, true, %L)))[1]::pg_catalog.text::pg_catalog.int8 END',
                        nsp || '.idem_keys', '/row/n/text()',
                        pg_catalog.format('SELECT pg_catalog.count(*) AS n FROM %s.idem_keys WHERE expires_at OPERATOR(pg_catalog.>) pg_catalog.now()', nsp),
                        '')) r
              WHERE NOT r.success OR r.result OPERATOR(pg_catalog.<>) '0'
    LOOP
        IF NOT w.success THEN
            RAISE EXCEPTION 'could not read the keys of worker %:%', w.nodename, w.nodeport
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = w.result;
        END IF;
        RAISE EXCEPTION 'worker %:% has % live keys in its own idem_keys', w.nodename, w.nodeport, w.result
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'idem_citus_setup() carries the coordinator''s keys only; on Citus no call looks for a key in a node''s own idem_keys.',
                  HINT = 'Let them expire, or once no retry of their requests can come delete them there, then run idem_citus_setup() again.';
    END LOOP;

    -- nothing writes idem_keys meanwhile (on Citus every call is refused
    -- until the setup is done), nor sweeps it
    EXECUTE pg_catalog.format('LOCK TABLE %s.idem_keys IN EXCLUSIVE MODE', nsp);

    -- each scope as the library reads it: a value of the tenant's type
    -- (its input function), whose text is the scope a call stores
    FOR s IN EXECUTE pg_catalog.format(
        'SELECT k.scope, pg_catalog.count(*) AS keys, pg_catalog.max(k.expires_at) AS last
           FROM %s.idem_keys k
          WHERE k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
          GROUP BY k.scope', nsp)
    LOOP
        canonical := NULL;
        IF s.scope OPERATOR(pg_catalog.<>) '' THEN
            BEGIN
                EXECUTE pg_catalog.format('SELECT (%L::%s)::pg_catalog.text', s.scope, tenant.typname)
                   INTO canonical;
            EXCEPTION WHEN data_exception THEN
                canonical := NULL;
            END;
            -- a cast to varchar(n) cuts a longer scope, where a call's
            -- reading of it fails: not a tenant either
            IF tenant.atttypid IN ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.varchar'::pg_catalog.regtype)
               AND canonical IS DISTINCT FROM s.scope THEN
                canonical := NULL;
            END IF;
        END IF;
        IF canonical IS NULL THEN
            unmapped := unmapped + s.keys;
            example := COALESCE(example, s.scope);
            latest := GREATEST(latest, s.last);
        ELSE
            scopes := scopes || s.scope;
            tenants := tenants || canonical;
        END IF;
    END LOOP;
    IF unmapped > 0 THEN
        RAISE EXCEPTION '% has % live keys whose scope is not a tenant', nsp || '.idem_keys', unmapped
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('On Citus a call''s scope is its tenant, a value of type %s, and its key is looked for in that tenant''s shard only: these keys could not be found again, and a retry of their requests would run the work again. One of them has the scope %L.',
                                             tenant.typname, example),
                  HINT = pg_catalog.format('Let them expire (the last at %s), or once no retry of their requests can come delete them (DELETE FROM %s.idem_keys WHERE scope = ...), then run idem_citus_setup() again.',
                                           latest, nsp);
    END IF;

    -- two spellings of one tenant ('042' and '42') are one scope on Citus
    EXECUTE pg_catalog.format(
        'SELECT m.tenant, k.key
           FROM %s.idem_keys k
           JOIN ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS m(scope, tenant) ON m.scope OPERATOR(pg_catalog.=) k.scope
          WHERE k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
          GROUP BY m.tenant, k.key
         HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1
          LIMIT 1', nsp)
       INTO dup USING scopes, tenants;
    IF dup IS NOT NULL THEN
        RAISE EXCEPTION 'key % of tenant % is in %.idem_keys under two spellings of its scope', pg_catalog.quote_literal(dup.key), dup.tenant, nsp
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'On Citus a scope is its tenant''s own text: the two would be one key.',
                  HINT = 'Delete the one no retry can come for, then run idem_citus_setup() again.';
    END IF;

    -- idem_keys' columns are idem_tenant_keys' but the tenant; the scope
    -- becomes the tenant's own text, as a call stores it
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname::pg_catalog.text), ', ' ORDER BY a.attnum),
           pg_catalog.string_agg('k.' || pg_catalog.quote_ident(a.attname::pg_catalog.text), ', ' ORDER BY a.attnum)
      INTO cols, kcols
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = keys_rel AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname NOT IN ('scope', 'tenant');
    EXECUTE pg_catalog.format(
        'INSERT INTO %1$s (scope, %2$s, tenant)
         SELECT m.tenant, %3$s, m.tenant::%4$s
           FROM %5$s.idem_keys k
           JOIN ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS m(scope, tenant) ON m.scope OPERATOR(pg_catalog.=) k.scope
          WHERE k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
         ON CONFLICT DO NOTHING',
        keys_rel, cols, kcols, tenant.typname, nsp)
       USING scopes, tenants;
    GET DIAGNOSTICS carried = ROW_COUNT;
    EXECUTE pg_catalog.format(
        'DELETE FROM %s.idem_keys k
          USING pg_catalog.unnest($1) AS m(scope)
          WHERE k.scope OPERATOR(pg_catalog.=) m.scope
            AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()', nsp)
       USING scopes;
    GET DIAGNOSTICS deleted = ROW_COUNT;

    object := nsp || '.idem_keys';
    action := CASE WHEN deleted = 0 THEN 'no live keys to carry'
                   WHEN carried = deleted THEN pg_catalog.format('%s live keys carried into idem_tenant_keys, each to its tenant''s shard', deleted)
                   ELSE pg_catalog.format('%s live keys carried into idem_tenant_keys, each to its tenant''s shard (%s of them were there already, and kept as they were)',
                                          deleted, deleted - carried) END;
    RETURN NEXT;
END
$carry$;

REVOKE ALL ON FUNCTION @extschema@.idem_citus_carry_keys() FROM PUBLIC;

-- idem_citus_setup() as 0.6.0 made it, and two things more: it carries the
-- keys of idem_keys into idem_tenant_keys (above), and says when pg_monitor
-- may not use the extension's schema, where the monitoring views are.
-- Made again, as the 0.2.0 and 0.4.0 scripts make a function again: no
-- object depends on it.
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
