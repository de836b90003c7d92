/* idempotency--0.1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION idempotency" to load this file. \quit

-- The key store.  Fixed-width columns come first so that reading a record
-- needs no offset computation; scope and key compare bytewise (COLLATE "C"),
-- which is what a key means and the fastest comparison btree has.  Only the
-- extension's functions write it (they are C code that does not go through
-- table privileges); application roles get no privilege on it at all.
CREATE TABLE @extschema@.idem_keys (
    created_at    pg_catalog.timestamptz NOT NULL,
    expires_at    pg_catalog.timestamptz NOT NULL,
    response_code pg_catalog.int4,
    state         pg_catalog."char" NOT NULL,
    scope         pg_catalog.text COLLATE pg_catalog."C" NOT NULL,
    key           pg_catalog.text COLLATE pg_catalog."C" NOT NULL,
    fingerprint   pg_catalog.bytea,
    response_body pg_catalog.jsonb,
    CONSTRAINT idem_keys_pkey PRIMARY KEY (scope, key)
) USING heap
-- Expired keys are deleted continuously, by the sweeper or by a begin that
-- reuses the key, so dead rows arrive at a steady rate: vacuum after 2% of
-- the table (not the default 20%) and at full speed, so that space is
-- reused and the table and its indexes stay the same size under load.
WITH (autovacuum_vacuum_scale_factor = 0.02,
      autovacuum_vacuum_threshold = 1000,
      autovacuum_vacuum_cost_delay = 0);

CREATE INDEX idem_keys_expires_at ON @extschema@.idem_keys USING btree (expires_at);

REVOKE ALL ON TABLE @extschema@.idem_keys FROM PUBLIC;

-- keys and their stored responses are application data: pg_dump keeps them
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idem_keys', '');

-- idem_begin: three variants.  Only the jsonb one has a default for request,
-- so idem_begin('k') is not ambiguous; an untyped literal request resolves to
-- the text variant (string category), hashed as its exact bytes.
CREATE FUNCTION @extschema@.idem_begin(
    key pg_catalog.text,
    request pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true,
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_begin_jsonb'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_begin(
    key pg_catalog.text,
    request pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true,
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_begin_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_begin(
    key pg_catalog.text,
    request pg_catalog.bytea,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '24 hours',
    wait pg_catalog.bool DEFAULT true,
    OUT status pg_catalog.text,
    OUT response_code pg_catalog.int4,
    OUT response_body pg_catalog.jsonb,
    OUT created_at pg_catalog.timestamptz,
    OUT expires_at pg_catalog.timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_begin_bytea'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_finish(
    key pg_catalog.text,
    response_code pg_catalog.int4,
    response_body pg_catalog.jsonb DEFAULT NULL,
    scope pg_catalog.text DEFAULT '')
RETURNS void
AS 'MODULE_PATHNAME', 'idem_finish'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_release(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '')
RETURNS void
AS 'MODULE_PATHNAME', 'idem_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.idem_once(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '7 days')
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_once'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

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

CREATE FUNCTION @extschema@.idem_sweep(batch pg_catalog.int4 DEFAULT 10000)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'idem_sweep'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- The sweeper's last pass over each database (empty without
-- shared_preload_libraries = 'idempotency').
CREATE FUNCTION @extschema@.idem_sweeper_status(
    OUT datname pg_catalog.text,
    OUT last_start pg_catalog.timestamptz,
    OUT last_duration pg_catalog.interval,
    OUT keys_removed pg_catalog.int8,
    OUT last_error pg_catalog.text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_sweeper_status'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE VIEW @extschema@.idem_sweeper_status AS
    SELECT datname, last_start, last_duration, keys_removed, last_error
    FROM @extschema@.idem_sweeper_status();
