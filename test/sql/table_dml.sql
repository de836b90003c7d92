--
-- table_dml: the key table is written as INSERT, UPDATE and DELETE write a
-- table.  A DBA's own indexes (plain, partial, expression) get an entry for
-- every row, CHECK constraints hold, AFTER ROW triggers see every insert,
-- update and delete of every write path; what cannot be honoured outside a
-- statement (BEFORE ROW, statement-level, column-list and transition-table
-- triggers, rules) refuses the write with 55000 and changes nothing; the
-- extension cannot be called from inside a row being written.
--
\set SHOW_CONTEXT never
-- runs alone or after api; starts from an empty key store
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
\i test/helpers/regress.sql
TRUNCATE idem_keys;

------------------------------------------------------------------------
-- a DBA's indexes and an audit trigger
------------------------------------------------------------------------
CREATE INDEX dba_created ON idem_keys (created_at);
CREATE INDEX dba_partial ON idem_keys (expires_at) WHERE response_code >= 200;
CREATE INDEX dba_expr ON idem_keys (lower(key));
CREATE TABLE audit (n serial, op text, scope text, key text, state "char");
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, public AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO public.audit (op, scope, key, state) VALUES (TG_OP, OLD.scope, OLD.key, OLD.state);
  ELSE
    INSERT INTO public.audit (op, scope, key, state) VALUES (TG_OP, NEW.scope, NEW.key, NEW.state);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON idem_keys
  FOR EACH ROW EXECUTE FUNCTION audit_row();

-- every write path
BEGIN;
SELECT status FROM idem_begin('pay-1', '{"amount": 5}'::jsonb);
SELECT idem_finish('pay-1', 201, '{"id": 1}'::jsonb);
COMMIT;
CREATE FUNCTION work(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(201, req) $$;
SELECT status FROM idem_call('call-1', '{"a": 1}', 'work(jsonb)');
SELECT idem_once('msg-1');
SELECT cardinality(idem_once_batch(ARRAY['b-1', 'b-2', 'b-3']));
SELECT token AS lease_token FROM idem_lease('lease-1') \gset
SELECT idem_checkpoint('lease-1', :'lease_token', 'phase-1') IS NOT NULL AS checkpointed;
SELECT idem_finish('lease-1', 200, '{}'::jsonb, token => :'lease_token');
SELECT idem_fail('fail-1', 'boom', max_attempts => 1);
SELECT idem_retry('fail-1');
SELECT idem_fail('fail-2', 'boom');
SELECT idem_discard('fail-2');
SELECT idem_keep('msg-1');
SELECT idem_erase('b-3');
-- an expired key, replaced by a new begin (a delete and an insert), then swept
BEGIN;
SELECT idem_once('short', ttl => '1 microsecond');
COMMIT;
SELECT idem_once('short', ttl => '1 microsecond');
SELECT idem_sweep() AS swept;

SELECT op, key, state, count(*) FROM audit GROUP BY op, key, state
ORDER BY key COLLATE "C", op COLLATE "C", state;

-- every row is in every index: the same count through each
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS rows_by_created FROM idem_keys WHERE created_at > '-infinity';
SELECT count(*) AS rows_by_expr FROM idem_keys WHERE lower(key) > '';
SELECT count(*) AS rows_by_partial FROM idem_keys WHERE expires_at > '-infinity' AND response_code >= 200;
RESET enable_seqscan;
RESET enable_bitmapscan;
SELECT count(*) AS rows, count(*) FILTER (WHERE response_code >= 200) AS coded FROM idem_keys;

-- a CHECK constraint holds, and a refused write changes nothing
ALTER TABLE idem_keys ADD CONSTRAINT dba_no_forbidden CHECK (key <> 'forbidden');
SELECT keys_state() AS before \gset
-- (the error's detail shows the row, with its times: only its first part)
SELECT split_part(try($$SELECT idem_once('forbidden')::text$$), ' (', 1) AS try;
SELECT keys_state() = :'before' AS unchanged;
ALTER TABLE idem_keys DROP CONSTRAINT dba_no_forbidden;

------------------------------------------------------------------------
-- refused: each names what is in the way; nothing changes
------------------------------------------------------------------------
CREATE FUNCTION pass_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NEW; END $$;
CREATE TRIGGER dba_before BEFORE INSERT ON idem_keys FOR EACH ROW EXECUTE FUNCTION pass_row();
SELECT try($$SELECT idem_once('refused-1')::text$$);
-- a disabled trigger, and an ENABLE REPLICA one outside replication, are in nobody's way
ALTER TABLE idem_keys DISABLE TRIGGER dba_before;
SELECT idem_once('allowed-1');
ALTER TABLE idem_keys ENABLE REPLICA TRIGGER dba_before;
SELECT idem_once('allowed-2');
DROP TRIGGER dba_before ON idem_keys;
-- a BEFORE UPDATE trigger is in the way of updates only
CREATE TRIGGER dba_before_upd BEFORE UPDATE ON idem_keys FOR EACH ROW EXECUTE FUNCTION pass_row();
SELECT idem_once('allowed-3');
SELECT try($$SELECT idem_keep('allowed-3')$$);
DROP TRIGGER dba_before_upd ON idem_keys;
CREATE TRIGGER dba_statement AFTER INSERT ON idem_keys FOR EACH STATEMENT EXECUTE FUNCTION pass_row();
SELECT try($$SELECT idem_once('refused-2')::text$$);
DROP TRIGGER dba_statement ON idem_keys;
CREATE TRIGGER dba_columns AFTER UPDATE OF state ON idem_keys FOR EACH ROW EXECUTE FUNCTION pass_row();
SELECT try($$SELECT idem_keep('allowed-3')$$);
DROP TRIGGER dba_columns ON idem_keys;
CREATE TRIGGER dba_transition AFTER INSERT ON idem_keys REFERENCING NEW TABLE AS added
  FOR EACH ROW EXECUTE FUNCTION pass_row();
SELECT try($$SELECT idem_once('refused-4')::text$$);
DROP TRIGGER dba_transition ON idem_keys;
CREATE RULE dba_rule AS ON INSERT TO idem_keys DO ALSO NOTIFY idem_keys_inserted;
SELECT try($$SELECT idem_once('refused-3')::text$$);
DROP RULE dba_rule ON idem_keys;
SELECT count(*) AS refused_keys FROM idem_keys WHERE key LIKE 'refused-%';
SELECT key, state FROM idem_keys WHERE key LIKE 'allowed-%' ORDER BY key COLLATE "C";

------------------------------------------------------------------------
-- no call from inside a row being written; from an AFTER trigger, yes
------------------------------------------------------------------------
CREATE FUNCTION reenter(k text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF k = 'reenter' THEN PERFORM idem_once('inner'); END IF;
  RETURN true;
END $$;
ALTER TABLE idem_keys ADD CONSTRAINT dba_reenter CHECK (reenter(key));
SELECT try($$SELECT idem_once('reenter')::text$$);
ALTER TABLE idem_keys DROP CONSTRAINT dba_reenter;
CREATE FUNCTION reenter_after() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.key = 'outer' THEN PERFORM idem_once('inner-after'); END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER dba_reenter_after AFTER INSERT ON idem_keys FOR EACH ROW EXECUTE FUNCTION reenter_after();
SELECT idem_once('outer');
SELECT key FROM idem_keys WHERE key IN ('inner', 'inner-after', 'outer', 'reenter') ORDER BY key COLLATE "C";
DROP TRIGGER dba_reenter_after ON idem_keys;

------------------------------------------------------------------------
-- an index of the store that is not valid is refused, not waited on for
-- ever: the call looks for it again for a second, then names it (55000)
------------------------------------------------------------------------
SELECT idem_once('valid-1');
SELECT keys_state() AS before_invalid \gset
UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idem_keys_pkey'::regclass;
SELECT try($$SELECT idem_once('invalid-1')::text$$);
SELECT try($$SELECT status FROM idem_begin('invalid-2', '{}'::jsonb)$$);
SELECT try($$SELECT status FROM idem_lookup('valid-1')$$);
UPDATE pg_index SET indisvalid = true WHERE indexrelid = 'idem_keys_pkey'::regclass;
SELECT keys_state() = :'before_invalid' AS unchanged;
UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idem_keys_expires_at'::regclass;
SELECT try($$SELECT idem_sweep()$$);
UPDATE pg_index SET indisvalid = true WHERE indexrelid = 'idem_keys_expires_at'::regclass;
SELECT keys_state() = :'before_invalid' AS unchanged;
SELECT idem_once('valid-2');

------------------------------------------------------------------------
-- an index expression's functions are checked and looked up as for each
-- statement: the calling role's EXECUTE, the function's current definition
------------------------------------------------------------------------
CREATE FUNCTION dba_mark(k text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RAISE NOTICE 'v1 %', k;
  RETURN k;
END $$;
REVOKE EXECUTE ON FUNCTION dba_mark(text) FROM PUBLIC;
SET client_min_messages = warning;
CREATE INDEX dba_marked ON idem_keys (dba_mark(key));
RESET client_min_messages;
SELECT idem_once('mark-1');
CREATE ROLE regress_idem_dml;
SET ROLE regress_idem_dml;
SELECT try($$SELECT idem_once('mark-2')::text$$);
RESET ROLE;
SELECT idem_once('mark-3');
CREATE OR REPLACE FUNCTION dba_mark(k text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RAISE NOTICE 'v2 %', k;
  RETURN k;
END $$;
SELECT idem_once('mark-4');
DROP INDEX dba_marked;
DROP FUNCTION dba_mark(text);
DROP ROLE regress_idem_dml;

DROP TRIGGER audit_row ON idem_keys;
DROP INDEX dba_created, dba_partial, dba_expr;
DROP TABLE audit;
DROP FUNCTION audit_row(), pass_row(), reenter(text), reenter_after(), work(jsonb);
DROP FUNCTION try(text);
DROP FUNCTION keys_state();
TRUNCATE idem_keys;
