-- Helpers shared by the pg_regress files, which load them with
-- \i test/helpers/regress.sql (pg_regress runs from the top directory).

-- try(stmt): run stmt; 'ok: <first column>' or 'SQLSTATE: message (detail)'.
-- A 42883 ("function ... does not exist") is PostgreSQL's own, and so is
-- its detail, which 19 added: it is left out, so that one expected output
-- serves every version.
CREATE OR REPLACE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r text;
  st text;
  msg text;
  det text;
BEGIN
  EXECUTE stmt INTO r;
  RETURN 'ok: ' || coalesce(r, 'NULL');
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                          det = PG_EXCEPTION_DETAIL;
  RETURN st || ': ' || msg ||
         CASE WHEN det <> '' AND st <> '42883' THEN ' (' || det || ')' ELSE '' END;
END
$$;

-- everything an error must not change: the stored keys and our key locks
CREATE OR REPLACE FUNCTION keys_state() RETURNS text LANGUAGE sql AS $$
  SELECT count(*) || ' rows, md5 ' ||
         coalesce(md5(string_agg(k::text, ',' ORDER BY k.scope, k.key)), '-') ||
         ', locks ' || (SELECT count(*) FROM pg_locks
                        WHERE locktype = 'advisory' AND objsubid = 18756
                          AND pid = pg_backend_pid())
  FROM idem_keys k
$$;

