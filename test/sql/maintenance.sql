--
-- maintenance: a role that owns neither the key table nor the database
-- cannot run maintenance commands on the key table.  The commands that skip a
-- table they may not touch say so in a warning whose wording changed in
-- PostgreSQL 17; the expected output of 15 and 16 is maintenance_1.out.
--
\set SHOW_CONTEXT never
-- runs alone or after api
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
DROP ROLE IF EXISTS regress_idem_maint;
RESET client_min_messages;
CREATE ROLE regress_idem_maint;
SELECT relfilenode AS filenode0 FROM pg_class WHERE oid = 'idem_keys'::regclass \gset

SET ROLE regress_idem_maint;
VACUUM idem_keys;
ANALYZE idem_keys;
VACUUM (FULL) idem_keys;
CLUSTER idem_keys USING idem_keys_pkey;
\echo :LAST_ERROR_SQLSTATE
REINDEX TABLE idem_keys;
\echo :LAST_ERROR_SQLSTATE
REINDEX INDEX idem_keys_pkey;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- nothing was rewritten
SELECT relfilenode = :filenode0 AS same_file FROM pg_class WHERE oid = 'idem_keys'::regclass;
DROP ROLE regress_idem_maint;
