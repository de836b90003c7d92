-- Loads the benchmark database.  Run by bench/run.sh with psql -v nkeys=N.
\set ON_ERROR_STOP on
SET client_min_messages = warning;

CREATE EXTENSION idempotency;

-- The business table the write path inserts into.
CREATE TABLE payments (
    id     bigserial PRIMARY KEY,
    key    text,
    amount int
);

-- Baseline: the same columns, types, collations and indexes as the
-- extension's idem_keys (sql/idempotency--0.1.0.sql).
CREATE TABLE base_keys (
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    response_code int4,
    state         "char" NOT NULL,
    scope         text COLLATE "C" NOT NULL,
    key           text COLLATE "C" NOT NULL,
    fingerprint   bytea,
    response_body jsonb,
    PRIMARY KEY (scope, key)
);
-- idem_keys keeps this index for the sweeper; the baseline keeps it too.
CREATE INDEX base_keys_expires_at ON base_keys (expires_at);

-- Second baseline: the same table without the expires_at index.
CREATE TABLE base_keys_noexp (
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    response_code int4,
    state         "char" NOT NULL,
    scope         text COLLATE "C" NOT NULL,
    key           text COLLATE "C" NOT NULL,
    fingerprint   bytea,
    response_body jsonb,
    PRIMARY KEY (scope, key)
);

-- The same storage parameters as idem_keys (autovacuum settings), whatever
-- the installed version of the extension sets.
SELECT format('ALTER TABLE %I SET (%s)', t, array_to_string(c.reloptions, ', '))
  FROM pg_class c, unnest(ARRAY['base_keys', 'base_keys_noexp']) t
 WHERE c.oid = 'idem_keys'::regclass AND c.reloptions IS NOT NULL
\gexec

-- Completed keys p-1 .. p-N for the replay path, written by the extension
-- itself.  Each key is finished before the next is begun (an unfinished
-- key holds a lock until idem_finish).
SELECT set_config('bench.nkeys', :'nkeys', false);
DO $$
DECLARE
    n int := current_setting('bench.nkeys')::int;
    st text;
BEGIN
    FOR i IN 1..n LOOP
        SELECT status INTO st
          FROM idem_begin('p-' || i, '{"amount": 500, "to": "acct_42"}'::jsonb,
                          ttl => '30 days');
        IF st IS DISTINCT FROM 'started' THEN
            RAISE EXCEPTION 'preload: idem_begin(p-%) returned %', i, st;
        END IF;
        PERFORM idem_finish('p-' || i, 201, '{"id": 991, "state": "paid"}'::jsonb);
    END LOOP;
END
$$;

-- The same rows in both baseline tables.
INSERT INTO base_keys
SELECT created_at, expires_at, response_code, state, scope, key, fingerprint, response_body
  FROM idem_keys;
INSERT INTO base_keys_noexp
SELECT created_at, expires_at, response_code, state, scope, key, fingerprint, response_body
  FROM idem_keys;

VACUUM (FREEZE, ANALYZE) idem_keys, base_keys, base_keys_noexp, payments;
