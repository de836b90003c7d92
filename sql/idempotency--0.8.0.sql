/* idempotency--0.8.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION idempotency" to load this file. \quit

-- The whole extension: CREATE EXTENSION idempotency runs this script alone.
-- An installed extension is brought to the same state by the update
-- scripts (idempotency--A--B.sql), which must leave exactly the objects,
-- privileges and comments this script makes (test/t/033_upgrade.pl
-- compares the two).
--
-- Contents: the key store (idem_keys, idem_scope_owners), the row types,
-- the functions (requests, leases, messages and batches, retention and
-- retries, the operator's tools, scope boundaries, monitoring, Citus), the
-- views, and last what each role may use.


--------------------------------------------------------------------------
-- The key store
--------------------------------------------------------------------------

-- One row per key.  The library reads and writes a row by attribute
-- number (src/idem_store.c: these 18 columns, in this order), so the order
-- is part of the definition.  What every key has comes first, fixed-width
-- columns before the others so that reading a record needs no offset
-- computation; scope and key compare bytewise (COLLATE "C"), which is what
-- a key means and the fastest comparison btree has.  Then what only some
-- keys have, nullable without a default: a completed key (the bulk of the
-- table) stores none of it.  Only the extension's functions write the
-- table (they are C code that does not go through table privileges);
-- application roles get no privilege on it at all (see the end).
CREATE TABLE @extschema@.idem_keys (
    created_at       pg_catalog.timestamptz NOT NULL,
    expires_at       pg_catalog.timestamptz NOT NULL,
    response_code    pg_catalog.int4,
    state            pg_catalog."char" NOT NULL,
    scope            pg_catalog.text COLLATE pg_catalog."C" NOT NULL,
    key              pg_catalog.text COLLATE pg_catalog."C" NOT NULL,
    fingerprint      pg_catalog.bytea,
    response_body    pg_catalog.jsonb,
    -- a leased key's record is committed while its work goes on (state
    -- 'p', processing): the holder's fencing token, when its lease runs
    -- out, how long a renewal lasts, how many leases were taken, and the
    -- last recovery point
    lease_token      pg_catalog.uuid,
    lease_expires_at pg_catalog.timestamptz,
    lease_duration   pg_catalog.interval,
    attempts         pg_catalog.int4,
    phase            pg_catalog.text,
    phase_state      pg_catalog.jsonb,
    -- a whole response: the headers a finish keeps, and a body of any
    -- content type as bytes, beside the jsonb body
    response_headers pg_catalog.jsonb,
    response_bytes   pg_catalog.bytea,
    -- bounded retries: the most attempts the caller allows, and why the
    -- last one failed; set only on failed ('f'), dead ('d') and leased keys
    max_attempts     pg_catalog.int4,
    last_error       pg_catalog.text,
    CONSTRAINT idem_keys_pkey PRIMARY KEY (scope, key)
) USING heap
-- Expired keys are deleted continuously, by the sweeper or by a begin that
-- reuses the key, so dead rows arrive at a steady rate: vacuum after 2% of
-- the table (not the default 20%) and at full speed, so that space is
-- reused and the table and its indexes stay the same size under load.
WITH (autovacuum_vacuum_scale_factor = 0.02,
      autovacuum_vacuum_threshold = 1000,
      autovacuum_vacuum_cost_delay = 0);

-- The sweeper and idem_storage find expired keys through it.
CREATE INDEX idem_keys_expires_at ON @extschema@.idem_keys USING btree (expires_at);

-- Only leased keys, so it stays as small as the work in flight: it answers
-- "how many leases, how many ran out" (idem_storage) without a table scan.
CREATE INDEX idem_keys_leases ON @extschema@.idem_keys
    USING btree (lease_expires_at) WHERE state OPERATOR(pg_catalog.=) 'p';

-- Only failed and dead keys, so it stays as small as the trouble: it lists
-- them for the operator (idem_failed_keys) and counts them (idem_storage)
-- without a table scan.
CREATE INDEX idem_keys_failures ON @extschema@.idem_keys
    USING btree (scope, key) WHERE state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[]);

-- keys and their stored responses are application data: pg_dump keeps them
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_keys', '');

-- Scope boundaries (src/idem_scope.c): an operator ties scope prefixes to
-- roles; a scope belongs to the role of its longest matching prefix, and
-- only roles with that role's privileges may use its keys.  Empty: every
-- role may use every scope.  Its rows are the installation's own, so
-- pg_dump dumps them; nobody but its owner may read or change it until
-- granted.  Its triggers are made with their function, below.
CREATE TABLE @extschema@.idem_scope_owners (
    scope_prefix pg_catalog.text PRIMARY KEY
        CONSTRAINT idem_scope_owners_prefix_length
        CHECK (pg_catalog.octet_length(scope_prefix) OPERATOR(pg_catalog.<=) 255),
    role pg_catalog.regrole NOT NULL
);

SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_scope_owners', '');

COMMENT ON TABLE @extschema@.idem_scope_owners IS
'Scope prefixes and the roles whose privileges a caller needs to use the keys of scopes that begin with them (the longest matching prefix decides)';


--------------------------------------------------------------------------
-- Row types
--------------------------------------------------------------------------

-- What idem_begin returns, as a named row type: the executor looks a named
-- row type up in the type cache, where a function's OUT parameters are
-- parsed into a new row type at the start of every statement (a replay is
-- a few microseconds, and building its row type was a twentieth of them).
CREATE TYPE @extschema@.idem_begin_result AS (
    status pg_catalog.text,
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb,
    created_at pg_catalog.timestamptz,
    expires_at pg_catalog.timestamptz);

-- What an application's work function returns to idem_call: the response
-- to store and to send, a refusal (4xx) as much as a success.
CREATE TYPE @extschema@.idem_response AS (
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb,
    response_headers pg_catalog.jsonb);

-- The row idem_call returns, named for the same reason as idem_begin's.
CREATE TYPE @extschema@.idem_call_result AS (
    status pg_catalog.text,
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb,
    response_headers pg_catalog.jsonb,
    response_bytes pg_catalog.bytea,
    created_at pg_catalog.timestamptz,
    expires_at pg_catalog.timestamptz);


--------------------------------------------------------------------------
-- Requests: begin a key, do the work in the same transaction, finish it
-- with the response; a retry is answered from the stored response
--------------------------------------------------------------------------

-- idem_begin: three variants.  Only the jsonb one has a default for request,
-- so idem_begin('k') is not ambiguous; an untyped literal request resolves to
-- the text variant (string category), hashed as its exact bytes.
CREATE FUNCTION @extschema@.idem_begin(
    key pg_catalog.text,
    request pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true)
RETURNS @extschema@.idem_begin_result
AS 'MODULE_PATHNAME', 'idem_begin_jsonb'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_begin(
    key pg_catalog.text,
    request pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true)
RETURNS @extschema@.idem_begin_result
AS 'MODULE_PATHNAME', 'idem_begin_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_begin(
    key pg_catalog.text,
    request pg_catalog.bytea,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true)
RETURNS @extschema@.idem_begin_result
AS 'MODULE_PATHNAME', 'idem_begin_bytea'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- The _full variants take the same arguments and return the whole stored
-- response (headers, bytes), the attempts and the last error as well, what
-- whole responses and bounded retries need; idem_begin and idem_lookup
-- keep their five columns for the code written against them.
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

-- Store the response of a begun (or leased) key: a jsonb body, or headers
-- and a body of any content type as bytes.  A lease holder passes its
-- token; the library reads it only when it is passed.
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

-- Give a begun (or, with its token, leased) key up: it is absent again,
-- and the next begin starts the work.
CREATE FUNCTION @extschema@.idem_release(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    token pg_catalog.uuid DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- A key's state and stored response, for status endpoints; nothing is
-- written.
CREATE FUNCTION @extschema@.idem_lookup(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_lookup'
LANGUAGE C STABLE PARALLEL UNSAFE;

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

-- The fingerprint a begin compares a retry's request with: a jsonb request
-- by its value, a text or bytea one by its exact bytes.
CREATE FUNCTION @extschema@.idem_fingerprint(request pg_catalog.jsonb)
RETURNS pg_catalog.bytea
AS 'MODULE_PATHNAME', 'idem_fingerprint_jsonb'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.idem_fingerprint(request pg_catalog.text)
RETURNS pg_catalog.bytea
AS 'MODULE_PATHNAME', 'idem_fingerprint_bytes'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.idem_fingerprint(request pg_catalog.bytea)
RETURNS pg_catalog.bytea
AS 'MODULE_PATHNAME', 'idem_fingerprint_bytes'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

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
    wait pg_catalog.bool DEFAULT true)
RETURNS @extschema@.idem_call_result
AS 'MODULE_PATHNAME', 'idem_call'
LANGUAGE C VOLATILE PARALLEL UNSAFE;


--------------------------------------------------------------------------
-- Leases: work that outlives a transaction.  The key's record commits at
-- once (state 'p'), the holder's token fences out a holder whose lease ran
-- out, and recovery points let the next holder resume
--------------------------------------------------------------------------

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

-- idem_lease with a bound on the attempts, returning the whole stored
-- response and the last error as well.
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

-- Record a recovery point (phase and state) and renew the lease; returns
-- when the lease now runs out.
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


--------------------------------------------------------------------------
-- Messages and batches: a redelivered message done once
--------------------------------------------------------------------------

-- True the first time an id is seen, false after.
CREATE FUNCTION @extschema@.idem_once(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '7 days')
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_once'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- idem_once for every id of a consumer's batch, in one call: the ids seen
-- for the first time, in the batch's order, each once.
CREATE FUNCTION @extschema@.idem_once_batch(
    ids pg_catalog.text[],
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '7 days')
RETURNS pg_catalog.text[]
AS 'MODULE_PATHNAME', 'idem_once_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;


--------------------------------------------------------------------------
-- Retention and retries, the application's side
--------------------------------------------------------------------------

-- A key that never expires (expires_at = infinity), on every server
-- version; from PostgreSQL 17 on a ttl of 'infinity' asks for the same.
-- Returns the key's state: completed, in_progress (a lease) or erased.
CREATE FUNCTION @extschema@.idem_keep(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '')
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'idem_keep'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- A failed attempt, recorded after its transaction rolled back (or by a
-- lease holder, with its token): the key is 'failed' and its next begin
-- starts the work again, or, once max_attempts is reached, 'dead' and
-- nothing starts it again.
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

-- Delete up to batch expired keys, as the sweeper does; returns how many.
CREATE FUNCTION @extschema@.idem_sweep(batch pg_catalog.int4 DEFAULT 10000)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'idem_sweep'
LANGUAGE C VOLATILE PARALLEL UNSAFE;


--------------------------------------------------------------------------
-- The operator's tools: erasure of stored requests and responses, new
-- attempts for a dead key, forgetting a key
--------------------------------------------------------------------------

-- Erasure (personal data): the key stays until its ttl and answers
-- "erased" to every later call, so the work is never done twice.
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

-- New attempts for a dead key.
CREATE FUNCTION @extschema@.idem_retry(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '')
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'idem_retry'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Forget a failed or dead key.
CREATE FUNCTION @extschema@.idem_discard(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '')
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_discard'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Forget a key whatever its state (any_state = true), the tool for a key a
-- hostile or broken client took.
CREATE FUNCTION @extschema@.idem_discard(
    key pg_catalog.text,
    scope pg_catalog.text,
    any_state pg_catalog.bool)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_discard'
LANGUAGE C VOLATILE PARALLEL UNSAFE;


--------------------------------------------------------------------------
-- Scope boundaries: the rules of idem_scope_owners, as every call applies
-- them
--------------------------------------------------------------------------

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

CREATE TRIGGER idem_scope_owners_changed
    AFTER INSERT OR UPDATE OR DELETE ON @extschema@.idem_scope_owners
    FOR EACH ROW EXECUTE FUNCTION @extschema@.idem_scope_owners_changed();

CREATE TRIGGER idem_scope_owners_truncated
    AFTER TRUNCATE ON @extschema@.idem_scope_owners
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.idem_scope_owners_changed();

ALTER TABLE @extschema@.idem_scope_owners ENABLE ALWAYS TRIGGER idem_scope_owners_changed;
ALTER TABLE @extschema@.idem_scope_owners ENABLE ALWAYS TRIGGER idem_scope_owners_truncated;

-- May the current role use the keys of a scope?  idem_failed_keys shows
-- its reader only the keys of the scopes it may use.
CREATE FUNCTION @extschema@.idem_scope_permitted(scope pg_catalog.text)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_scope_permitted'
LANGUAGE C STRICT STABLE PARALLEL UNSAFE;


--------------------------------------------------------------------------
-- Monitoring: the sweeper's passes and counters in shared memory, per
-- database (both empty without shared_preload_libraries = 'idempotency');
-- the views over them are below
--------------------------------------------------------------------------

-- The sweeper's last pass over each database.
CREATE FUNCTION @extschema@.idem_sweeper_status(
    OUT datname pg_catalog.text,
    OUT last_start pg_catalog.timestamptz,
    OUT last_duration pg_catalog.interval,
    OUT keys_removed pg_catalog.int8,
    OUT last_error pg_catalog.text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_sweeper_status'
LANGUAGE C VOLATILE PARALLEL SAFE;

-- The counters count calls, whether or not the calling transaction
-- commits.
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

-- Resets the current database's counters, as pg_stat_reset() does.
CREATE FUNCTION @extschema@.idem_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'idem_stats_reset'
LANGUAGE C VOLATILE PARALLEL UNSAFE;


--------------------------------------------------------------------------
-- Citus (docs/citus.md): a key must commit in the same local transaction
-- as the writes it guards, on the node that holds the tenant's shard.  The
-- library refuses every call on Citus until idem_citus_setup() has been
-- run once, on the coordinator, as a superuser:
--
--   SELECT * FROM idempotency.idem_citus_setup('payments');
--
-- What the setup makes (idem_tenant_keys, the overloads for a tenant that
-- is not text, the cluster-wide views, the event trigger) is the setup's,
-- not the extension's members: an ALTER EXTENSION UPDATE leaves it, and
-- its distribution, as it is.  These functions are plpgsql, written to run
-- under a fixed search_path and to name every catalog object in full.
--------------------------------------------------------------------------

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

-- True when idem_citus_distribute() runs from the setup's event trigger,
-- in ALTER EXTENSION's own part on the coordinator, before Citus has run
-- the command on the workers: the library (src/idem_citus.c) then calls
-- idem_citus_distribute() again once the whole command has run, on every
-- node, in its transaction.
CREATE FUNCTION @extschema@.idem_citus_distribute_later()
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_citus_distribute_later'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

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

-- The event trigger idem_citus_setup() makes: after ALTER EXTENSION
-- idempotency UPDATE on the coordinator, delegate the functions again
-- (through idem_citus_distribute(), which leaves the work to the library
-- until the command has run on every node).  A failure here leaves the
-- update in place with a warning: an undelegated call is refused (0A000),
-- never run against the wrong node's keys.
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

-- The setup: it makes idem_tenant_keys, the keys as a distributed table
-- colocated with the given tenant table (so they move with its shards in a
-- move, a rebalance or a tenant isolation), carries there the keys the
-- database had (idem_citus_carry_keys), and has Citus delegate every
-- function that takes a scope to the node of that scope's tenant
-- (idem_citus_distribute).  It also makes the cluster-wide monitoring
-- views (idem_citus_failed_keys a security barrier that shows its reader
-- only the scopes it may use, evaluated on each node with that node's
-- idem_scope_owners; idem_citus_stats, idem_citus_sweeper_status) and the
-- event trigger, and says when pg_monitor may not use the extension's
-- schema, where those views are.  Running it again does what is missing
-- and changes nothing else.
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

COMMENT ON FUNCTION @extschema@.idem_citus_setup(pg_catalog.regclass) IS
'On Citus: keep the keys with the tenants of the given distributed table, carry there the keys the database had, and delegate every call to its tenant''s node';


--------------------------------------------------------------------------
-- Views
--------------------------------------------------------------------------

CREATE VIEW @extschema@.idem_sweeper_status AS
    SELECT datname, last_start, last_duration, keys_removed, last_error
    FROM @extschema@.idem_sweeper_status();

CREATE VIEW @extschema@.idem_stats AS SELECT * FROM @extschema@.idem_stats();

-- What the key store holds, cheaply enough to scrape every few seconds on a
-- table of 10^7 keys.  Leases are counted exactly through the partial index
-- idem_keys_leases, failed and dead keys through idem_keys_failures (hence
-- the condition on state = ANY ('{f,d}'), which is that index's), and
-- expired keys and keys kept for good through the expiry index up to a
-- cap (a sweeper that keeps up leaves few, and one that does not is what
-- an alert needs to know, not the exact figure).  Completed keys are the
-- planner's estimate: reltuples scaled to the table's current size, as the
-- planner itself does, less the counted rows.  The view reads the table as
-- its owner, so monitoring roles need no privilege on idem_keys; it shows
-- only counts, and is a security barrier as every view over the key table
-- is.  The last four columns come after the size columns: existing
-- queries know the view's columns in that order.
CREATE VIEW @extschema@.idem_storage WITH (security_barrier) AS
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

-- Failed and dead keys, through idem_keys_failures, with what the operator
-- needs to decide: attempts, the bound, the last reason, the recovery
-- point.  Only the keys of scopes its reader may use; a security barrier,
-- so that no function of the reader's (a cheap enough one in its WHERE
-- clause would be evaluated below the view's own conditions, on every row
-- of idem_keys) runs on the rows it hides (docs/security.md).
CREATE VIEW @extschema@.idem_failed_keys WITH (security_barrier) AS
    SELECT k.scope, k.key,
           CASE WHEN k.state OPERATOR(pg_catalog.=) 'd' THEN 'dead' ELSE 'failed' END AS status,
           k.attempts, k.max_attempts, k.last_error, k.phase, k.phase_state,
           k.lease_duration IS NOT NULL AS lease,
           k.created_at, k.expires_at
      FROM @extschema@.idem_keys k
     WHERE k.state OPERATOR(pg_catalog.=) ANY ('{f,d}'::pg_catalog."char"[])
       AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
       AND @extschema@.idem_scope_permitted(k.scope);


--------------------------------------------------------------------------
-- Who may use what (docs/security.md, "What PUBLIC may execute")
--------------------------------------------------------------------------

-- The functions that serve requests stay PUBLIC's, as a function is by
-- default: idem_begin, idem_begin_full, idem_finish, idem_release,
-- idem_lookup, idem_lookup_full, idem_fingerprint, idem_call, idem_lease,
-- idem_lease_full, idem_checkpoint, idem_once, idem_once_batch, idem_keep,
-- idem_fail.  Each reaches only the keys its caller names, in the scopes
-- the caller may use.  idem_scope_permitted is PUBLIC's too: it tells a
-- caller only about itself.
--
-- Every role writes work functions with the response type and its
-- constructor, whatever default privileges (ALTER DEFAULT PRIVILEGES ...
-- REVOKE ... FROM PUBLIC) the role that installs has: say so, rather than
-- inherit them.
GRANT USAGE ON TYPE @extschema@.idem_response TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_response(pg_catalog.int4, pg_catalog.jsonb, pg_catalog.jsonb) TO PUBLIC;

-- The key table: only the extension's functions read or write it.
REVOKE ALL ON TABLE @extschema@.idem_keys FROM PUBLIC;

-- idem_sweep is maintenance, not part of serving a request: a role that
-- runs it inside a transaction it keeps open holds every expired key it
-- deleted until that transaction ends, and each tenant that begins one of
-- those keys again waits for it.  The sweeper does the same work without
-- anyone's grant.  Only superusers, and the roles an administrator grants
-- EXECUTE to, may run it.
REVOKE ALL ON FUNCTION @extschema@.idem_sweep(pg_catalog.int4) FROM PUBLIC;

-- The operator's tools, and the view of failed and dead keys (their
-- reasons and recovery points are the application's data, so neither
-- PUBLIC's nor pg_monitor's: idem_storage counts those keys for
-- monitoring): only superusers and the roles an administrator grants them
-- to.  Resetting the counters is a superuser's, as pg_stat_reset() is.
REVOKE ALL ON FUNCTION @extschema@.idem_erase(pg_catalog.text, pg_catalog.text),
                       @extschema@.idem_erase_scope(pg_catalog.text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_retry(pg_catalog.text, pg_catalog.text),
                       @extschema@.idem_discard(pg_catalog.text, pg_catalog.text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_discard(pg_catalog.text, pg_catalog.text, pg_catalog.bool) FROM PUBLIC;
REVOKE ALL ON @extschema@.idem_failed_keys FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_stats_reset() FROM PUBLIC;

-- The monitoring views are for monitoring roles, as PostgreSQL's own
-- pg_stat_* views with other sessions' details are; the application roles
-- that call the functions need none of them.
REVOKE ALL ON FUNCTION @extschema@.idem_stats(),
                       @extschema@.idem_sweeper_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idem_stats(),
                          @extschema@.idem_sweeper_status() TO pg_monitor;
GRANT SELECT ON @extschema@.idem_stats, @extschema@.idem_storage,
                @extschema@.idem_sweeper_status TO pg_monitor;

-- The trigger function runs as a trigger only (otherwise 39P01), and the
-- Citus functions are the setup's, for a superuser: none is PUBLIC's.
REVOKE ALL ON FUNCTION @extschema@.idem_scope_owners_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_citus_check_owner(pg_catalog.oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_citus_distribute_later() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_citus_distribute() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_citus_carry_keys() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_citus_after_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idem_citus_setup(pg_catalog.regclass) FROM PUBLIC;
