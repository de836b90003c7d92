--
-- responses: whole responses.  A finish stores the
-- status, the headers the application keeps and one body, jsonb
-- (response_body) or bytes of any content type (response_bytes); a replay
-- returns them as they were, byte for byte: idem_begin_full,
-- idem_lookup_full and idem_lease_full return them (idem_begin and the
-- others keep the five columns they always had, and the jsonb body).
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
\i test/helpers/regress.sql

-- a JSON API's answer, with the headers a retry needs
BEGIN;
SELECT status FROM idem_begin_full('pay-1', '{"amount": 5}'::jsonb);
SELECT idem_finish('pay-1', 201, '{"id": 991}'::jsonb,
                   response_headers => '{"Location": "/payments/991", "Content-Type": "application/json", "X-Request-Id": "req-1"}');
COMMIT;
SELECT status, response_code, response_body, response_headers, response_bytes
FROM idem_begin_full('pay-1', '{"amount": 5}'::jsonb);

-- a body of another type: its bytes, exactly (every byte value, a NUL, CRLF)
SELECT decode(string_agg(lpad(to_hex(b), 2, '0'), '' ORDER BY b), 'hex') AS all_bytes
FROM generate_series(0, 255) b \gset
BEGIN;
SELECT status FROM idem_begin_full('pdf-1', 'GET /receipts/7'::text);
SELECT idem_finish('pdf-1', 200,
                   response_headers => '{"Content-Type": "application/pdf", "Content-Disposition": "attachment; filename=\"r7.pdf\""}',
                   response_bytes => '\x255044462d312e370d0a00ff'::bytea || :'all_bytes'::bytea);
COMMIT;
SELECT status, response_code, response_body IS NULL AS no_json,
       response_headers ->> 'Content-Type' AS content_type,
       response_bytes = '\x255044462d312e370d0a00ff'::bytea || :'all_bytes'::bytea AS same_bytes,
       length(response_bytes) AS bytes
FROM idem_begin_full('pdf-1', 'GET /receipts/7'::text);
-- plain text and XML are bytes too
BEGIN;
SELECT status FROM idem_begin_full('xml-1', '<order id="1"/>'::text);
SELECT idem_finish('xml-1', 202, response_headers => '{"Content-Type": "application/xml; charset=utf-8"}',
                   response_bytes => convert_to(E'<?xml version="1.0"?>\n<ok  id="1"/>\n', 'UTF8'));
COMMIT;
SELECT status, response_code, convert_from(response_bytes, 'UTF8') AS body
FROM idem_begin_full('xml-1', '<order id="1"/>'::text);
-- a field repeated keeps its values in order; a status with no body at all
BEGIN;
SELECT status FROM idem_begin_full('login-1');
SELECT idem_finish('login-1', 204,
                   response_headers => '{"Set-Cookie": ["a=1; Path=/", "b=2; Path=/; HttpOnly"], "Cache-Control": "no-store"}');
COMMIT;
SELECT status, response_code, response_headers -> 'Set-Cookie' AS cookies, response_body, response_bytes
FROM idem_begin_full('login-1');

-- idem_lookup shows the same; a mismatch shows nothing of it
SELECT status, response_code, response_headers ->> 'Location' AS location
FROM idem_lookup_full('pay-1');
SELECT status, response_code, response_body, response_headers, response_bytes
FROM idem_begin_full('pay-1', '{"amount": 6}'::jsonb);

-- a leased key's finish stores the whole response too, and idem_lease replays it
SELECT token AS t FROM idem_lease_full('job-1', '{"n": 1}'::jsonb) \gset
SELECT idem_finish('job-1', 201, token => :'t', response_headers => '{"Location": "/jobs/1"}',
                   response_bytes => '\x0102'::bytea);
SELECT status, response_code, response_headers, response_bytes
FROM idem_lease_full('job-1', '{"n": 1}'::jsonb);

-- idem_begin of before 0.4.0 returns its five columns, whatever was stored
SELECT * FROM idem_begin('pay-1', '{"amount": 5}'::jsonb) \gset plain_
SELECT :'plain_status' AS status, :'plain_response_code' AS response_code, :'plain_response_body' AS response_body;
-- (OUT parameters, or from 0.5.0 on for idem_begin the named row type
-- idem_begin_result: the same columns either way)
SELECT p.oid::regprocedure AS function,
       COALESCE(
         (SELECT string_agg(a.attname, ', ' ORDER BY a.attnum)
            FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
           WHERE t.oid = p.prorettype AND a.attnum > 0 AND NOT a.attisdropped),
         (SELECT string_agg(u.name, ', ' ORDER BY u.i)
            FROM unnest(p.proargnames, p.proargmodes) WITH ORDINALITY u(name, mode, i)
           WHERE u.mode = 'o')) AS returns
FROM pg_proc p
WHERE p.proname IN ('idem_begin', 'idem_lookup', 'idem_lease', 'idem_begin_full', 'idem_lookup_full', 'idem_lease_full')
ORDER BY p.oid::regprocedure::text COLLATE "C";

-- the calls of before 0.4.0 are unchanged: positional, no headers, jsonb body
BEGIN;
SELECT status FROM idem_begin_full('old-1', '{}'::jsonb, 'tenant');
SELECT idem_finish('old-1', 200, '{"ok": true}', 'tenant');
COMMIT;
SELECT status, response_code, response_body, response_headers, response_bytes
FROM idem_begin_full('old-1', '{}'::jsonb, 'tenant');

-- erasure takes the headers and the bytes with the rest
SELECT idem_erase('pdf-1') AS erased;
SELECT state, response_headers, response_bytes FROM idem_keys WHERE key = 'pdf-1';

------------------------------------------------------------------------
-- bad responses: 22023 (54000 for size), nothing changes, the key stays begun
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin_full('bad-1');
SELECT keys_state() AS s0 \gset
SELECT n, try(stmt) FROM (VALUES
  (1,  $$SELECT idem_finish('bad-1', 200, '{}'::jsonb, response_bytes => '\x00')$$),
  (2,  $$SELECT idem_finish('bad-1', 200, response_headers => '[]')$$),
  (3,  $$SELECT idem_finish('bad-1', 200, response_headers => '"Location: /x"')$$),
  (4,  $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-N": 1}')$$),
  (5,  $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-N": null}')$$),
  (6,  $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-N": {"a": "b"}}')$$),
  (7,  $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-N": [["a"]]}')$$),
  (8,  $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-N": []}')$$),
  (9,  $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-N": ["a", 2]}')$$),
  (10, $$SELECT idem_finish('bad-1', 200, response_headers => '{"": "a"}')$$),
  (11, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Bad Name": "a"}')$$),
  (12, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Location:": "a"}')$$),
  (13, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Location": "/a\r\nSet-Cookie: x=1"}')$$),
  (14, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Location": ["/a", "/b\n"]}')$$),
  (15, $$SELECT idem_finish('bad-1', 200, response_headers => jsonb_build_object('X-Big', repeat('v', 20000)))$$),
  (16, $$SELECT idem_finish('bad-1', 200, response_headers => 'not json')$$),
  (17, $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-A": "a\u0001b"}')$$),
  (18, $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-A": "a\u000bb"}')$$),
  (19, $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-A": ["ok", "a\u007fb"]}')$$),
  (20, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Location": "/a", "location": "/b"}')$$),
  (21, $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-A": "a", "Set-Cookie": "1", "SET-COOKIE": ["2"]}')$$),
  -- the fields that frame a message or belong to one connection
  (22, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Content-Length": "12"}')$$),
  (23, $$SELECT idem_finish('bad-1', 200, response_headers => '{"transfer-encoding": "chunked"}')$$),
  (24, $$SELECT idem_finish('bad-1', 200, response_headers => '{"X-A": "a", "CONNECTION": "close"}')$$),
  (25, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Keep-Alive": "timeout=5"}')$$),
  (26, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Proxy-Connection": "keep-alive"}')$$),
  (27, $$SELECT idem_finish('bad-1', 200, response_headers => '{"TE": "trailers"}')$$),
  (28, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Trailer": "Expires"}')$$),
  (29, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Upgrade": ["h2c"]}')$$),
  (30, $$SELECT idem_finish('bad-1', 200, response_headers => '{"Content_Length": "12"}')$$),
  (31, $$SELECT idem_finish('bad-1', 200, response_headers => '{"transfer_encoding": "chunked"}')$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
-- the key is still this transaction's to finish; a tab and non-ASCII text are fine
SELECT idem_finish('bad-1', 200, response_headers => jsonb_build_object('X-Ok', repeat('v', 1000),
                                                                        'X-Tab', E'a\tb', 'X-Name', 'Zoë',
                                                                        'Content-Type', 'text/plain',
                                                                        'X-Content-Length', '12'));
COMMIT;
SELECT status, length(response_headers ->> 'X-Ok') AS kept, response_headers ->> 'X-Tab' AS tab,
       response_headers ->> 'X-Name' AS name
FROM idem_begin_full('bad-1');

DROP FUNCTION try(text);
DROP FUNCTION keys_state();
TRUNCATE idem_keys;
