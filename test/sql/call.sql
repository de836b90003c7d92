--
-- call: a whole request in one statement.  idem_call begins
-- the key, runs the application's work function on the request and
-- finishes the key with the response the work returns, in the caller's
-- statement: a new key runs the work once ("done"), a retry gets the
-- stored response ("replay") without running it, a refusal (4xx) the work
-- returns is stored like any response, and an error it raises rolls back
-- the key with the work.  Every bad argument and every work function that
-- idem_call may not run is refused before anything changes.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
\i test/helpers/regress.sql

CREATE TABLE call_payments (id int PRIMARY KEY, amount int NOT NULL);
CREATE SEQUENCE call_ids;
-- the application's work: a refusal is a response, a failure raises
CREATE FUNCTION pay(req jsonb) RETURNS idem_response LANGUAGE plpgsql AS $$
DECLARE
  id int;
BEGIN
  IF (req ->> 'amount')::int <= 0 THEN
    RETURN idem_response(422, jsonb_build_object('error', 'amount must be positive'));
  END IF;
  IF req ? 'fail' THEN
    RAISE EXCEPTION 'card network down' USING ERRCODE = 'P0001';
  END IF;
  INSERT INTO call_payments VALUES (nextval('call_ids'), (req ->> 'amount')::int)
    RETURNING call_payments.id INTO id;
  RETURN idem_response(201, jsonb_build_object('id', id, 'amount', (req ->> 'amount')::int),
                       jsonb_build_object('Location', '/payments/' || id));
END
$$;

-- a new key: the work runs once, its response is stored and returned
SELECT status, response_code, response_body, response_headers, response_bytes,
       created_at = now() AS created_now, expires_at = now() + interval '24 hours' AS default_ttl
FROM idem_call('c-1', '{"amount": 5}', 'pay(jsonb)');
-- the retry: the same response, the work not run again (one payment)
SELECT status, response_code, response_body, response_headers
FROM idem_call('c-1', '{"amount": 5}', 'pay(jsonb)');
SELECT count(*) AS payments FROM call_payments;
-- the body is compared as jsonb, as idem_begin's jsonb variant does
SELECT status, response_code FROM idem_call('c-1', '{ "amount" : 5 }', 'pay(jsonb)');
-- and the record is idem_begin's and idem_finish's: every surface agrees
SELECT status, response_code, response_body FROM idem_begin('c-1', '{"amount": 5}'::jsonb);
SELECT status, response_code, response_headers FROM idem_lookup_full('c-1');
-- a key begun and finished the long way replays through idem_call too
BEGIN;
SELECT status FROM idem_begin('c-2', '{"amount": 7}'::jsonb);
SELECT idem_finish('c-2', 200, '{"id": 2}', response_headers => '{"ETag": "\"v1\""}');
COMMIT;
SELECT status, response_code, response_body, response_headers FROM idem_call('c-2', '{"amount": 7}', 'pay(jsonb)');
-- so does a byte body
BEGIN;
SELECT status FROM idem_begin('c-3', '{"amount": 8}'::jsonb);
SELECT idem_finish('c-3', 200, response_bytes => '\x00ff'::bytea);
COMMIT;
SELECT status, response_code, response_body, response_bytes FROM idem_call('c-3', '{"amount": 8}', 'pay(jsonb)');

-- another body under a used key: mismatch, nothing shown, nothing run
SELECT status, response_code, response_body, response_headers
FROM idem_call('c-1', '{"amount": 6}', 'pay(jsonb)');
SELECT count(*) AS payments FROM call_payments;

-- a refusal the work returns is the key's response: stored, replayed
SELECT status, response_code, response_body FROM idem_call('c-4', '{"amount": 0}', 'pay(jsonb)');
SELECT status, response_code, response_body FROM idem_call('c-4', '{"amount": 0}', 'pay(jsonb)');

-- an error the work raises rolls back the attempt, key and work together:
-- no record, no payment, and the key is free for the retry
SELECT keys_state() AS before \gset
SELECT try($$SELECT status FROM idem_call('c-5', '{"amount": 9, "fail": true}', 'pay(jsonb)')$$);
SELECT keys_state() = :'before' AS unchanged, count(*) AS payments FROM call_payments;
SELECT status, response_code FROM idem_call('c-5', '{"amount": 9}', 'pay(jsonb)');
SELECT count(*) AS payments FROM call_payments;
-- caught in a subtransaction, the attempt is undone and the key can run again
DO $$
BEGIN
  BEGIN
    PERFORM idem_call('c-6', '{"amount": 3, "fail": true}', 'pay(jsonb)');
  EXCEPTION WHEN raise_exception THEN
    RAISE NOTICE 'first attempt failed: %', SQLERRM;
  END;
  RAISE NOTICE 'second attempt: %', (SELECT status FROM idem_call('c-6', '{"amount": 3}', 'pay(jsonb)'));
END
$$;

-- inside a transaction the call is one step of it: a rollback takes the key
-- and the payment back
BEGIN;
SELECT status FROM idem_call('c-7', '{"amount": 4}', 'pay(jsonb)');
-- the key is finished: a second call in the same transaction replays it
SELECT status, response_code FROM idem_call('c-7', '{"amount": 4}', 'pay(jsonb)');
ROLLBACK;
SELECT status FROM idem_lookup('c-7');

-- a record is stored without its trailing NULL columns: a completed key
-- without headers has eight attributes and a 24-byte header, one with
-- headers fifteen (pageinspect: the tuples as they are on the page)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pageinspect;
RESET client_min_messages;
SELECT k.key, i.t_infomask2 & 2047 AS natts, i.t_hoff
FROM idem_keys k,
     heap_page_items(get_raw_page('idem_keys', (k.ctid::text::point)[0]::int)) i
WHERE k.key IN ('c-1', 'c-3', 'c-4') AND k.scope = '' AND i.lp = (k.ctid::text::point)[1]::int
ORDER BY k.key COLLATE "C";

-- scope, ttl and wait are idem_begin's
SELECT status, expires_at = now() + interval '1 hour' AS ttl
FROM idem_call('c-1', '{"amount": 5}', 'pay(jsonb)', scope => 'tenant-2', ttl => '1 hour');
SELECT status FROM idem_call('c-1', '{"amount": 5}', 'pay(jsonb)', scope => 'tenant-2', wait => false);
-- a request with no body is NULL, as in idem_begin; a strict work is not
-- run on it and has given no response
CREATE FUNCTION no_body(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(204, NULL, NULL) $$;
CREATE FUNCTION strict_work(req jsonb) RETURNS idem_response LANGUAGE sql STRICT AS $$
  SELECT idem_response(200, req) $$;
SELECT status, response_code FROM idem_call('c-8', NULL, 'no_body(jsonb)');
SELECT status, response_code FROM idem_call('c-8', NULL, 'no_body(jsonb)');
SELECT status FROM idem_call('c-8', '{}', 'no_body(jsonb)');

-- a key this transaction has begun is not called
BEGIN;
SELECT status FROM idem_begin('c-9', '{"amount": 1}'::jsonb);
SELECT try($$SELECT status FROM idem_call('c-9', '{"amount": 1}', 'pay(jsonb)')$$);
ROLLBACK;

-- bad arguments: a precise SQLSTATE each, and nothing changes
CREATE FUNCTION not_a_response(req jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT req $$;
CREATE FUNCTION two_args(req jsonb, extra int) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(200) $$;
CREATE FUNCTION text_arg(req text) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(200) $$;
CREATE FUNCTION many(req jsonb) RETURNS SETOF idem_response LANGUAGE sql AS $$
  SELECT idem_response(200) $$;
CREATE PROCEDURE proc_work(req jsonb) LANGUAGE sql AS $$ SELECT 1 $$;
CREATE AGGREGATE agg_work(jsonb) (sfunc = jsonb_concat, stype = jsonb);
CREATE FUNCTION returns_null(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT NULL::idem_response $$;
CREATE FUNCTION no_code(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(NULL, '{}') $$;
CREATE FUNCTION bad_code(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(600, '{}') $$;
CREATE FUNCTION bad_headers(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(200, '{}', jsonb_build_object('Set-Cookie', E'a=1\r\nX-Evil: 1')) $$;
CREATE FUNCTION headers_not_object(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(200, '{}', '[1]') $$;
CREATE FUNCTION finishes_itself(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_finish('c-10', 200); SELECT idem_response(200) $$;
CREATE FUNCTION releases_itself(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_release('c-10'); SELECT idem_response(200) $$;
CREATE FUNCTION begins_again(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_release('c-10'); SELECT status FROM idem_begin('c-10', '{"other": 1}'::jsonb);
  SELECT idem_response(200) $$;
CREATE FUNCTION calls_itself(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT (idem_call('c-10', req, 'pay(jsonb)')).response_code, NULL::jsonb, NULL::jsonb $$;
-- a type of the same name and shape in another schema is not the extension's
CREATE SCHEMA call_fake;
CREATE TYPE call_fake.idem_response AS (response_code int4, response_body jsonb, response_headers jsonb);
CREATE FUNCTION call_fake.work(req jsonb) RETURNS call_fake.idem_response LANGUAGE sql AS $$
  SELECT ROW(200, NULL, NULL)::call_fake.idem_response $$;
SELECT keys_state() AS before \gset
SELECT n, try(stmt) FROM (VALUES
  (1, $$SELECT status FROM idem_call(NULL, '{}', 'pay(jsonb)')$$),
  (2, $$SELECT status FROM idem_call('', '{}', 'pay(jsonb)')$$),
  (3, $$SELECT status FROM idem_call(repeat('k', 1001), '{}', 'pay(jsonb)')$$),
  (4, $$SELECT status FROM idem_call('c-10', '{}', NULL)$$),
  (5, $$SELECT status FROM idem_call('c-10', '{}', 'pay(jsonb)', scope => NULL)$$),
  (6, $$SELECT status FROM idem_call('c-10', '{}', 'pay(jsonb)', ttl => NULL)$$),
  (7, $$SELECT status FROM idem_call('c-10', '{}', 'pay(jsonb)', ttl => '-1 hour')$$),
  (8, $$SELECT status FROM idem_call('c-10', '{}', 'pay(jsonb)', wait => NULL)$$),
  (9, $$SELECT status FROM idem_call('c-10', '{}', 'no_such_work(jsonb)')$$),
  (10, $$SELECT status FROM idem_call('c-10', '{}', 4294967295::oid::regprocedure)$$),
  (11, $$SELECT status FROM idem_call('c-10', '{}', 'not_a_response(jsonb)')$$),
  (12, $$SELECT status FROM idem_call('c-10', '{}', 'two_args(jsonb, int)')$$),
  (13, $$SELECT status FROM idem_call('c-10', '{}', 'text_arg(text)')$$),
  (14, $$SELECT status FROM idem_call('c-10', '{}', 'many(jsonb)')$$),
  (15, $$SELECT status FROM idem_call('c-10', '{}', 'proc_work(jsonb)')$$),
  (16, $$SELECT status FROM idem_call('c-10', '{}', 'agg_work(jsonb)')$$),
  (17, $$SELECT status FROM idem_call('c-10', '{}', 'returns_null(jsonb)')$$),
  (18, $$SELECT status FROM idem_call('c-10', NULL, 'strict_work(jsonb)')$$),
  (19, $$SELECT status FROM idem_call('c-10', '{}', 'no_code(jsonb)')$$),
  (20, $$SELECT status FROM idem_call('c-10', '{}', 'bad_code(jsonb)')$$),
  (21, $$SELECT status FROM idem_call('c-10', '{}', 'bad_headers(jsonb)')$$),
  (22, $$SELECT status FROM idem_call('c-10', '{}', 'headers_not_object(jsonb)')$$),
  (23, $$SELECT status FROM idem_call('c-10', '{}', 'finishes_itself(jsonb)')$$),
  (24, $$SELECT status FROM idem_call('c-10', '{}', 'releases_itself(jsonb)')$$),
  (25, $$SELECT status FROM idem_call('c-10', '{"amount": 1}', 'calls_itself(jsonb)')$$),
  (26, $$SELECT status FROM idem_call('c-10', '{}', 'call_fake.work(jsonb)')$$),
  (27, $$SELECT status FROM idem_call('c-10', '{}', 'begins_again(jsonb)')$$)
) t(n, stmt) ORDER BY n;
SELECT keys_state() = :'before' AS unchanged;
SELECT count(*) AS payments FROM call_payments;

-- a read-only transaction replays, and refuses to run the work
BEGIN READ ONLY;
SELECT status, response_code FROM idem_call('c-1', '{"amount": 5}', 'pay(jsonb)');
SELECT try($$SELECT status FROM idem_call('c-11', '{"amount": 5}', 'pay(jsonb)')$$);
ROLLBACK;

-- the caller needs EXECUTE on the work; a SECURITY DEFINER work runs as
-- its owner, so the application role may write only through it
CREATE ROLE call_app;
GRANT USAGE ON SCHEMA public TO call_app;
CREATE FUNCTION pay_definer(req jsonb) RETURNS idem_response LANGUAGE plpgsql
  SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  INSERT INTO call_payments VALUES (nextval('call_ids'), (req ->> 'amount')::int);
  RETURN idem_response(201, jsonb_build_object('by', current_user::text));
END
$$;
REVOKE EXECUTE ON FUNCTION pay_definer(jsonb) FROM PUBLIC;
SET ROLE call_app;
SELECT try($$SELECT status FROM idem_call('c-12', '{"amount": 2}', 'pay(jsonb)')$$);
SELECT try($$SELECT status FROM idem_call('c-12', '{"amount": 2}', 'pay_definer(jsonb)')$$);
RESET ROLE;
GRANT EXECUTE ON FUNCTION pay_definer(jsonb) TO call_app;
SET ROLE call_app;
SELECT status, response_code, response_body FROM idem_call('c-12', '{"amount": 2}', 'pay_definer(jsonb)');
RESET ROLE;
-- the check is per role: the same statement under another role is checked again
PREPARE call_as_role AS SELECT status FROM idem_call('c-13', '{"amount": 2}', 'pay_definer(jsonb)');
REVOKE EXECUTE ON FUNCTION pay_definer(jsonb) FROM call_app;
SET ROLE call_app;
SELECT try($$EXECUTE call_as_role$$);
RESET ROLE;
DEALLOCATE call_as_role;

-- a work in a schema the role may not use is refused, even named by its
-- OID (which needs no lookup in the schema), as SELECT work(...) would be
CREATE SCHEMA call_private;
CREATE FUNCTION call_private.work(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(200) $$;
SELECT 'call_private.work(jsonb)'::regprocedure::oid AS private_work \gset
SET ROLE call_app;
SELECT try(format($$SELECT status FROM idem_call('c-15', '{}', %s::oid::regprocedure)$$, :private_work));
RESET ROLE;
DROP SCHEMA call_private CASCADE;

-- one call site across a change to its work: a work replaced within the
-- transaction runs as replaced (the call site checks and looks it up again)
CREATE FUNCTION changing(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(201) $$;
GRANT EXECUTE ON FUNCTION changing(jsonb) TO call_app;
DO $$
DECLARE
  codes text := '';
BEGIN
  FOR i IN 1..3 LOOP
    IF i = 2 THEN
      CREATE OR REPLACE FUNCTION changing(req jsonb) RETURNS idem_response LANGUAGE sql AS $f$
        SELECT idem_response(202) $f$;
    END IF;
    codes := codes || (idem_call('chg-' || i, '{}', 'changing(jsonb)')).response_code || ' ';
  END LOOP;
  RAISE NOTICE 'codes: %', codes;
END
$$;
-- works that change from row to row, each run as itself
CREATE FUNCTION other_work(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(203) $$;
SELECT g, (idem_call('alt-' || g, '{}',
                     CASE WHEN g % 2 = 0 THEN 'changing(jsonb)' ELSE 'other_work(jsonb)' END::regprocedure)).response_code
FROM generate_series(1, 4) g ORDER BY g;
DROP FUNCTION changing(jsonb), other_work(jsonb);

-- an index renamed away and back is seen by this session's next call (the
-- store's relations are looked up again when a relation's name changes)
ALTER INDEX idem_keys_expires_at RENAME TO call_expiry_away;
SELECT try($$SELECT idem_fail('c-16', 'boom')$$);
ALTER INDEX call_expiry_away RENAME TO idem_keys_expires_at;
SELECT idem_fail('c-16', 'boom') AS state;

-- counters: a call that ran the work is a start and a finish, a retry a replay
SELECT idem_stats_reset();
SELECT status FROM idem_call('c-14', '{"amount": 1}', 'pay(jsonb)');
SELECT status FROM idem_call('c-14', '{"amount": 1}', 'pay(jsonb)');
SELECT status FROM idem_call('c-14', '{"amount": 2}', 'pay(jsonb)');
SELECT started, finishes, replay, mismatch FROM idem_stats WHERE datname = current_database();

DROP FUNCTION pay_definer(jsonb);
REVOKE USAGE ON SCHEMA public FROM call_app;
DROP ROLE call_app;
DROP FUNCTION pay(jsonb), no_body(jsonb), strict_work(jsonb), not_a_response(jsonb),
  two_args(jsonb, int), text_arg(text), many(jsonb), returns_null(jsonb), no_code(jsonb),
  bad_code(jsonb), bad_headers(jsonb), headers_not_object(jsonb), finishes_itself(jsonb),
  releases_itself(jsonb), calls_itself(jsonb), begins_again(jsonb);
DROP SCHEMA call_fake CASCADE;
DROP EXTENSION pageinspect;
DROP PROCEDURE proc_work(jsonb);
DROP AGGREGATE agg_work(jsonb);
DROP TABLE call_payments;
DROP SEQUENCE call_ids;
TRUNCATE idem_keys;
