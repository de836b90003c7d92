--
-- infinity: ttl, lease and extend of 'infinity' and '-infinity'.
--
-- From PostgreSQL 17 on an interval can be infinite; 15 and 16 refuse the
-- literal before any function runs (22007).  Where it gets through, every
-- function refuses it as 22023 "... must be finite" and changes nothing:
-- a ttl cannot ask for a key that is never swept on every version, so no
-- version takes one.  The expected output of 15 and 16 is infinity_1.out.
--
\set SHOW_CONTEXT never
-- runs alone or after api; starts from an empty key store
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;

-- try(stmt): 'ok: <first column>' or 'SQLSTATE: message (detail) [hint]'
CREATE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r text;
  st text;
  msg text;
  det text;
  hint text;
BEGIN
  EXECUTE stmt INTO r;
  RETURN 'ok: ' || coalesce(r, 'NULL');
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                          det = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
  RETURN st || ': ' || msg || CASE WHEN det <> '' THEN ' (' || det || ')' ELSE '' END
         || CASE WHEN hint <> '' THEN ' [' || hint || ']' ELSE '' END;
END
$$;

-- the stored keys, every row version
CREATE FUNCTION keys_state() RETURNS text LANGUAGE sql AS $$
  SELECT count(*) || ' rows, md5 ' ||
         coalesce(md5(string_agg(concat_ws('|', k.ctid, k.xmin, k.expires_at, k.state,
                                           k.lease_expires_at, k.key),
                                 ',' ORDER BY k.key)), '-')
  FROM idem_keys k
$$;

-- a leased key to extend
SELECT token FROM idem_lease('leased', '{}'::jsonb) \gset
SELECT keys_state() AS s0 \gset

SELECT n, try(stmt) FROM (VALUES
  (1,  $$SELECT status FROM idem_begin('k', ttl => 'infinity')$$),
  (2,  $$SELECT status FROM idem_begin('k', ttl => '-infinity')$$),
  (3,  $$SELECT status FROM idem_begin('k', 'text body', ttl => 'infinity')$$),
  (4,  $$SELECT idem_once('k', ttl => 'infinity')::text$$),
  (5,  $$SELECT idem_once('k', ttl => '-infinity')::text$$),
  (6,  $$SELECT status FROM idem_lease('k', ttl => 'infinity')$$),
  (7,  $$SELECT status FROM idem_lease('k', lease => 'infinity')$$),
  (8,  $$SELECT status FROM idem_lease('k', lease => '-infinity')$$),
  (9,  format($$SELECT idem_checkpoint('leased', %L, 'p', extend => 'infinity')::text$$, :'token')),
  (10, format($$SELECT idem_checkpoint('leased', %L, 'p', extend => '-infinity')::text$$, :'token'))
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;

-- the largest finite ttl still works
SELECT status, extract(year FROM expires_at) - extract(year FROM created_at) AS years
FROM idem_begin('far', ttl => '1000 years');
DROP FUNCTION try(text);
DROP FUNCTION keys_state();
TRUNCATE idem_keys;
