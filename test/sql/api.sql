--
-- api: the happy path of every function, single session.
-- Times are never printed; they are compared with values captured earlier.
--
CREATE EXTENSION idempotency;
\set SHOW_CONTEXT never

-- the SQL API that was installed
SELECT p.oid::regprocedure AS function, p.prorettype::regtype AS returns,
       p.provolatile AS volatility, p.proisstrict AS strict, p.prosecdef AS secdef
FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotency')
  AND p.proname IN ('idem_begin', 'idem_finish', 'idem_release', 'idem_once',
                    'idem_lookup', 'idem_fingerprint', 'idem_sweep')
ORDER BY p.oid::regprocedure::text COLLATE "C";

------------------------------------------------------------------------
-- begin / finish / commit, then replay
------------------------------------------------------------------------
BEGIN;
SELECT status, response_code, response_body,
       created_at = now() AS created_now,
       expires_at - created_at = interval '24 hours' AS default_ttl
FROM idem_begin('req-1', '{"amount": 500, "to": "acct_42"}'::jsonb);
SELECT created_at AS c1, expires_at AS e1
FROM idem_lookup('req-1') \gset
SELECT idem_finish('req-1', 201, '{"id": 991, "state": "paid"}'::jsonb);
COMMIT;

-- a retry in a later transaction: the stored response, the first times
SELECT status, response_code, response_body,
       created_at = :'c1'::timestamptz AS same_created,
       expires_at = :'e1'::timestamptz AS same_expires
FROM idem_begin('req-1', '{"to": "acct_42", "amount": 500}'::jsonb);
-- and again: still the same
SELECT status, response_code, response_body,
       created_at = :'c1'::timestamptz AS same_created,
       expires_at = :'e1'::timestamptz AS same_expires
FROM idem_begin('req-1', '{"amount":500,"to":"acct_42"}'::jsonb);

-- a different request with the same key: mismatch, no response shown,
-- times of the stored key
SELECT status, response_code, response_body,
       created_at = :'c1'::timestamptz AS same_created,
       expires_at = :'e1'::timestamptz AS same_expires
FROM idem_begin('req-1', '{"amount": 501, "to": "acct_42"}'::jsonb);
SELECT status, response_code, response_body
FROM idem_begin('req-1');
-- a replay or mismatch opens nothing: committing is fine
BEGIN;
SELECT status FROM idem_begin('req-1', '{"amount": 500, "to": "acct_42"}'::jsonb);
SELECT status FROM idem_begin('req-1', '{"amount": 1}'::jsonb);
COMMIT;

-- the stored row
SELECT scope, key, state, response_code, response_body,
       fingerprint = '\x6a'::bytea || idem_fingerprint('{"amount": 500, "to": "acct_42"}'::jsonb) AS fp_ok,
       created_at = :'c1'::timestamptz AS same_created
FROM idem_keys;

-- ttl given explicitly (long enough not to pass while this file runs, however
-- slow the machine: the sweeps below count the keys that have expired)
BEGIN;
SELECT status, expires_at - created_at = interval '90 minutes' AS ttl_ok
FROM idem_begin('req-ttl', NULL::jsonb, ttl => '90 minutes');
SELECT idem_finish('req-ttl', 200);
COMMIT;
SELECT status, response_code, response_body IS NULL AS no_body,
       expires_at - created_at = interval '90 minutes' AS ttl_ok
FROM idem_begin('req-ttl');

-- finish with no body (default) and with a JSON null body
BEGIN;
SELECT status FROM idem_begin('req-nobody');
SELECT idem_finish('req-nobody', 204);
SELECT status FROM idem_begin('req-nullbody');
SELECT idem_finish('req-nullbody', 200, 'null'::jsonb);
COMMIT;
SELECT key, status, response_code, response_body, response_body IS NULL AS sql_null
FROM (VALUES ('req-nobody'), ('req-nullbody')) v(key), idem_begin(v.key)
ORDER BY key COLLATE "C";

-- response codes at both ends of the range
BEGIN;
SELECT status FROM idem_begin('code-100');
SELECT idem_finish('code-100', 100);
SELECT status FROM idem_begin('code-599');
SELECT idem_finish('code-599', 599);
COMMIT;
SELECT status, response_code FROM idem_begin('code-100');
SELECT status, response_code FROM idem_begin('code-599');

------------------------------------------------------------------------
-- rollback: the key is free again
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin('req-rb', '{"x": 1}'::jsonb);
SELECT idem_finish('req-rb', 200, '{"done": true}'::jsonb);
ROLLBACK;
SELECT status, response_code, response_body FROM idem_lookup('req-rb');
BEGIN;
SELECT status, response_code, response_body,
       created_at = now() AS created_now
FROM idem_begin('req-rb', '{"x": 2}'::jsonb);
SELECT idem_release('req-rb');
COMMIT;

------------------------------------------------------------------------
-- idem_release
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin('req-rel', '{"x": 1}'::jsonb);
SELECT status FROM idem_lookup('req-rel');
SELECT idem_release('req-rel');
SELECT status FROM idem_lookup('req-rel');
-- released keys may be begun again in the same transaction, with any request
SELECT status FROM idem_begin('req-rel', '{"x": 2}'::jsonb);
SELECT idem_finish('req-rel', 200, '{"x": 2}'::jsonb);
COMMIT;
SELECT status, response_code, response_body FROM idem_begin('req-rel', '{"x": 2}'::jsonb);
SELECT status FROM idem_begin('req-rel', '{"x": 1}'::jsonb);
-- a released key that is never begun again leaves nothing behind
BEGIN;
SELECT status FROM idem_begin('req-rel2');
SELECT idem_release('req-rel2');
COMMIT;
SELECT status FROM idem_lookup('req-rel2');
SELECT count(*) FROM idem_keys WHERE key = 'req-rel2';

------------------------------------------------------------------------
-- begin twice, and begin after finish, in one transaction
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin('req-twice', '{"a": 1}'::jsonb);
SELECT status FROM idem_begin('req-twice', '{"a": 1}'::jsonb);
ROLLBACK;
BEGIN;
SELECT status FROM idem_begin('req-twice', '{"a": 1}'::jsonb, scope => 'tenant-1');
SELECT status FROM idem_begin('req-twice', '{"a": 2}'::jsonb, scope => 'tenant-1', wait => false);
ROLLBACK;
BEGIN;
SELECT status, created_at AS c2 FROM idem_begin('req-again', '{"a": 1}'::jsonb) \gset
\echo :status
SELECT idem_finish('req-again', 200, '{"r": 1}'::jsonb);
SELECT status, response_code, response_body,
       created_at = :'c2'::timestamptz AS same_created
FROM idem_begin('req-again', '{"a": 1}'::jsonb);
SELECT status, response_code, response_body FROM idem_begin('req-again', '{"a": 2}'::jsonb);
SELECT status, response_code, response_body FROM idem_lookup('req-again');
COMMIT;
SELECT status, response_code, response_body,
       created_at = :'c2'::timestamptz AS same_created
FROM idem_begin('req-again', '{"a": 1}'::jsonb);

------------------------------------------------------------------------
-- idem_once
------------------------------------------------------------------------
BEGIN;
SELECT idem_once('msg-1') AS first, idem_once('msg-1') AS second;
SELECT idem_once('msg-1') AS third;
COMMIT;
SELECT idem_once('msg-1') AS redelivery;
-- (a ttl in days is added in the session's time zone, so across a change to
-- or from daylight saving time 7 days are 167 or 169 hours: the expiry is
-- compared with created_at + 7 days, not expires_at - created_at with 7 days)
SELECT status, response_code, response_body,
       expires_at = created_at + interval '7 days' AS default_ttl
FROM idem_lookup('msg-1');
-- a rolled-back consumer leaves the message unseen
BEGIN;
SELECT idem_once('msg-2', 'queue-a', '1 hour') AS first;
ROLLBACK;
SELECT idem_once('msg-2', 'queue-a', '1 hour') AS after_rollback;
SELECT idem_once('msg-2', 'queue-a', '1 hour') AS redelivery;
SELECT idem_once('msg-2', 'queue-b') AS other_scope;
SELECT expires_at - created_at = interval '1 hour' AS ttl_ok
FROM idem_lookup('msg-2', 'queue-a');
-- idem_once records "no body": idem_begin without a request replays it
SELECT status, response_code, response_body FROM idem_begin('msg-1');
SELECT status FROM idem_begin('msg-1', '{}'::jsonb);
-- and idem_once sees a key completed by idem_begin/idem_finish
BEGIN;
SELECT status FROM idem_begin('msg-3', '{"a": 1}'::jsonb);
SELECT idem_finish('msg-3', 200);
SELECT idem_once('msg-3') AS once_after_finish;
COMMIT;
SELECT idem_once('msg-3') AS once_later;

------------------------------------------------------------------------
-- idem_lookup: completed, in_progress (own open key), absent, expired
------------------------------------------------------------------------
SELECT status, response_code, response_body,
       created_at = :'c1'::timestamptz AS same_created,
       expires_at = :'e1'::timestamptz AS same_expires
FROM idem_lookup('req-1');
SELECT status, response_code, response_body, created_at, expires_at
FROM idem_lookup('no-such-key');
SELECT status FROM idem_lookup('req-1', 'some-scope');
BEGIN;
SELECT status FROM idem_begin('req-open', '{"a": 1}'::jsonb, ttl => '1 hour');
SELECT status, response_code, response_body,
       created_at = now() AS created_now,
       expires_at = now() + interval '1 hour' AS expires_ok
FROM idem_lookup('req-open');
SELECT idem_release('req-open');
SELECT status, response_code, response_body, created_at, expires_at
FROM idem_lookup('req-open');
COMMIT;

-- expired keys, written directly (as superuser) with times in the past
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'old-1', NULL, '{"old": 1}'),
       (now() - interval '2 days', now() - interval '1 hour', 200, 'c', '', 'old-2', NULL, '{"old": 2}'),
       (now() - interval '2 days', now() - interval '1 second', 200, 'c', 's', 'old-3', NULL, '{"old": 3}'),
       (now() - interval '2 days', now() - interval '1 second', 200, 'c', '', 'old-4', NULL, '{"old": 4}'),
       (now() - interval '1 day', now() + interval '1 day', 200, 'c', '', 'fresh-1', NULL, '{"fresh": 1}');
SELECT status, response_code, response_body, created_at, expires_at FROM idem_lookup('old-1');
SELECT status FROM idem_lookup('old-3', 's');
SELECT status, response_code, response_body FROM idem_lookup('fresh-1');
-- an expired key behaves as absent for idem_once and idem_begin too
SELECT idem_once('old-2') AS once_on_expired;
SELECT status, response_code, response_body,
       expires_at = created_at + interval '7 days' AS new_ttl,
       created_at > now() - interval '1 hour' AS new_created
FROM idem_lookup('old-2');
BEGIN;
SELECT status, response_code, response_body,
       created_at = now() AS created_now
FROM idem_begin('old-4');
SELECT idem_finish('old-4', 202, '{"new": 4}'::jsonb);
COMMIT;
SELECT status, response_code, response_body FROM idem_begin('old-4');

-- expiry is exact: expires_at = now() is expired, one microsecond later is not
BEGIN;
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '1 day', now(), 200, 'c', '', 'edge-now', NULL, NULL),
       (now() - interval '1 day', now() + interval '1 microsecond', 200, 'c', '', 'edge-later', NULL, NULL);
SELECT status FROM idem_lookup('edge-now');
SELECT status FROM idem_lookup('edge-later');
SELECT status FROM idem_begin('edge-later');
ROLLBACK;

------------------------------------------------------------------------
-- idem_sweep deletes expired keys only
------------------------------------------------------------------------
SELECT key, expires_at <= now() AS expired FROM idem_keys
WHERE key LIKE 'old-%' OR key LIKE 'fresh-%' ORDER BY scope COLLATE "C", key COLLATE "C";
SELECT count(*) AS before FROM idem_keys;
SELECT idem_sweep(1) AS swept_batch_of_1;
SELECT idem_sweep() AS swept;
SELECT idem_sweep() AS swept_again;
SELECT count(*) AS after FROM idem_keys;
SELECT scope, key FROM idem_keys WHERE expires_at <= now();
SELECT key, status, response_code, response_body
FROM (VALUES ('old-1'), ('old-2'), ('old-4'), ('fresh-1')) v(key), idem_lookup(v.key)
ORDER BY key COLLATE "C";
-- a key begun (not yet finished) in this transaction is not touched
BEGIN;
SELECT status FROM idem_begin('sweep-open');
SELECT idem_sweep() AS swept_nothing;
SELECT idem_finish('sweep-open', 200);
COMMIT;
SELECT status FROM idem_lookup('sweep-open');
-- a rolled-back sweep deletes nothing
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'old-5', NULL, NULL);
BEGIN;
SELECT idem_sweep() AS swept;
ROLLBACK;
SELECT count(*) FROM idem_keys WHERE key = 'old-5';
SELECT idem_sweep() AS swept;
-- a key with a 1 millisecond ttl, once that has passed
BEGIN;
SELECT status FROM idem_begin('short', ttl => '1 millisecond');
SELECT idem_finish('short', 200);
COMMIT;
SELECT pg_sleep(0.01);
SELECT status FROM idem_lookup('short');
SELECT idem_sweep() AS swept;
SELECT count(*) FROM idem_keys WHERE key = 'short';

------------------------------------------------------------------------
-- scopes isolate identical keys
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin('same', '{"n": 1}'::jsonb);
SELECT status FROM idem_begin('same', '{"n": 1}'::jsonb, scope => 'acct_1');
SELECT status FROM idem_begin('same', '{"n": 2}'::jsonb, scope => 'acct_2');
SELECT status FROM idem_begin('same', '{"n": 2}'::jsonb, scope => 'ACCT_2');
-- the split between scope and key is part of the identity
SELECT status FROM idem_begin('bc', scope => 'a');
SELECT status FROM idem_begin('c', scope => 'ab');
SELECT status FROM idem_begin('abc');
SELECT idem_finish('same', 200, '{"scope": ""}'::jsonb);
SELECT idem_finish('same', 201, '{"scope": "acct_1"}'::jsonb, 'acct_1');
SELECT idem_finish('same', 202, '{"scope": "acct_2"}'::jsonb, scope => 'acct_2');
SELECT idem_release('same', 'ACCT_2');
SELECT idem_finish('bc', 200, '"a/bc"', 'a');
SELECT idem_finish('c', 200, '"ab/c"', 'ab');
SELECT idem_finish('abc', 200, '"/abc"');
COMMIT;
SELECT s.scope, b.status, b.response_code, b.response_body
FROM (VALUES (''), ('acct_1'), ('acct_2'), ('ACCT_2'), ('acct_3')) s(scope),
     idem_lookup('same', s.scope) b
ORDER BY s.scope COLLATE "C";
SELECT status, response_code, response_body FROM idem_begin('same', '{"n": 2}'::jsonb, scope => 'acct_2');
SELECT status FROM idem_begin('same', '{"n": 2}'::jsonb, scope => 'acct_1');
SELECT status, response_body FROM idem_lookup('bc', 'a');
SELECT status, response_body FROM idem_lookup('c', 'ab');
SELECT status, response_body FROM idem_lookup('abc');
-- keys compare as exact bytes
SELECT status FROM idem_lookup('SAME');
SELECT status FROM idem_lookup('same ');
SELECT status FROM idem_lookup('abc', ' ');

------------------------------------------------------------------------
-- jsonb canonicalisation: equal jsonb values, same fingerprint
------------------------------------------------------------------------
SELECT n, a, b, a::jsonb = b::jsonb AS jsonb_equal,
       idem_fingerprint(a::jsonb) = idem_fingerprint(b::jsonb) AS same_fingerprint
FROM (VALUES
  (1, '{"a": 1, "b": 2}',            '{"b": 2, "a": 1}'),
  (2, '{"a":1,"b":[1,2]}',           E'{ "a" : 1 ,\n\t"b" : [ 1 , 2 ] }'),
  (3, '1.0',                         '1.00'),
  (4, '1',                           '1.000'),
  (5, '100',                         '1e2'),
  (6, '0',                           '-0.0'),
  (7, '{"p": 12.50}',                '{"p": 12.5}'),
  (8, '{"a": 1, "a": 2}',            '{"a": 2}'),
  (9, '[[1, 2], [3, [4.0]]]',        '[[1,2],[3,[4]]]'),
  (10, '{"x": {"z": 1, "y": [true, null]}}', '{"x":{"y":[true,null],"z":1.0}}'),
  (11, '"\u0041"',                    '"A"')
) v(n, a, b)
ORDER BY n;

-- different jsonb values, different fingerprints
SELECT n, a, b, a::jsonb = b::jsonb AS jsonb_equal,
       idem_fingerprint(a::jsonb) = idem_fingerprint(b::jsonb) AS same_fingerprint
FROM (VALUES
  (1, '[1, 2]',          '[2, 1]'),
  (2, '"1"',             '1'),
  (3, '{}',              '[]'),
  (4, '1',               '[1]'),
  (5, 'null',            '"null"'),
  (6, 'true',            '"true"'),
  (7, '[]',              '[null]'),
  (8, '""',              'null'),
  (9, '{"a": 1}',        '{"a": 1, "b": null}'),
  (10, '{"a": "b"}',      '["a", "b"]'),
  (11, '{"a": "b"}',      '{"b": "a"}'),
  (12, '[[1, 2]]',        '[[1], [2]]'),
  (13, '[[1], 2]',        '[1, [2]]'),
  (14, '["ab", "c"]',     '["a", "bc"]'),
  (15, '1.5',             '1.50001'),
  (16, '"A"',             '"a"')
) v(n, a, b)
ORDER BY n;

-- the same claims through idem_begin: replay for equal values, mismatch otherwise
BEGIN;
SELECT status FROM idem_begin('canon', '{"b": [1, [2, 3]], "a": 1.0, "a": 1.50}'::jsonb);
SELECT idem_finish('canon', 200, '{"ok": 1}'::jsonb);
COMMIT;
SELECT r, status FROM (VALUES
  (1, '{"a":1.5,"b":[1,[2,3]]}'),
  (2, E'{\n  "b" : [ 1.00, [ 2, 3.0 ] ],\n  "a" : 1.500\n}'),
  (3, '{"a":1.5,"b":[1,[3,2]]}'),
  (4, '{"a":"1.5","b":[1,[2,3]]}'),
  (5, '{"a":1.5,"b":[1,[2,3]],"c":null}'),
  (6, '[{"a":1.5,"b":[1,[2,3]]}]')
) v(r, req), idem_begin('canon', req::jsonb)
ORDER BY r;

-- NULL request ("no body") matches only NULL; JSON null is a body
BEGIN;
SELECT status FROM idem_begin('nobody');
SELECT idem_finish('nobody', 200);
SELECT status FROM idem_begin('jsonnull', 'null'::jsonb);
SELECT idem_finish('jsonnull', 200);
COMMIT;
SELECT status FROM idem_begin('nobody');
SELECT status FROM idem_begin('nobody', NULL::jsonb);
SELECT status FROM idem_begin('nobody', NULL::text);
SELECT status FROM idem_begin('nobody', NULL::bytea);
SELECT status FROM idem_begin('nobody', 'null'::jsonb);
SELECT status FROM idem_begin('nobody', ''::text);
SELECT status FROM idem_begin('nobody', ''::bytea);
SELECT status FROM idem_begin('jsonnull', 'null'::jsonb);
SELECT status FROM idem_begin('jsonnull');
SELECT idem_fingerprint(NULL::jsonb) IS NULL AS strict_jsonb,
       idem_fingerprint(NULL::text) IS NULL AS strict_text,
       idem_fingerprint(NULL::bytea) IS NULL AS strict_bytea;

------------------------------------------------------------------------
-- text and bytea requests: the exact bytes
------------------------------------------------------------------------
-- SHA-256 test vectors (FIPS 180-2)
SELECT idem_fingerprint(''::text) AS empty;
SELECT idem_fingerprint('abc'::text) AS abc;
SELECT idem_fingerprint('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'::text) AS abc448;
SELECT idem_fingerprint('\x616263'::bytea) = idem_fingerprint('abc'::text) AS bytea_is_bytes;
SELECT idem_fingerprint(repeat('a', 1000000)) =
       '\xcdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0'::bytea AS million_a;
SELECT length(idem_fingerprint('x'::text)) AS text_len,
       length(idem_fingerprint('{}'::jsonb)) AS jsonb_len;
-- the same as PostgreSQL's own sha256()
SELECT bool_and(idem_fingerprint(t) = sha256(convert_to(t, 'UTF8'))) AS matches_sha256
FROM (VALUES (''), ('a'), ('abc'), ('{"a": 1}'), (repeat('xyz', 10000))) v(t);
-- a jsonb fingerprint is not the sha256 of any text form of the value
SELECT idem_fingerprint('{"a": 1}'::jsonb) = idem_fingerprint('{"a": 1}'::text) AS jsonb_eq_text,
       idem_fingerprint('{"a": 1}'::jsonb) = idem_fingerprint('{"a":1}'::text) AS jsonb_eq_text2;
-- text: white space, key order and numeric scale all count
SELECT idem_fingerprint('{"a":1}'::text) = idem_fingerprint('{"a": 1}'::text) AS ws,
       idem_fingerprint('1.0'::text) = idem_fingerprint('1.00'::text) AS scale,
       idem_fingerprint('abc'::text) = idem_fingerprint('abc '::text) AS trailing_space;
-- bytea: every byte counts, including zero bytes
SELECT idem_fingerprint('\x00'::bytea) = idem_fingerprint('\x0000'::bytea) AS zeros,
       idem_fingerprint('\x00'::bytea) = idem_fingerprint(''::bytea) AS zero_vs_empty;

BEGIN;
SELECT status FROM idem_begin('txt', 'hello world'::text);
SELECT idem_finish('txt', 200, '"text"');
SELECT status FROM idem_begin('bin', '\xdeadbeef00'::bytea);
SELECT idem_finish('bin', 200, '"bytea"');
COMMIT;
SELECT status, response_body FROM idem_begin('txt', 'hello world'::text);
SELECT status FROM idem_begin('txt', 'hello  world'::text);
SELECT status FROM idem_begin('txt', 'Hello world'::text);
-- text and bytea bodies with the same bytes are the same request
SELECT status, response_body FROM idem_begin('txt', convert_to('hello world', 'UTF8'));
SELECT status, response_body FROM idem_begin('bin', '\xdeadbeef00'::bytea);
SELECT status FROM idem_begin('bin', '\xdeadbeef'::bytea);
SELECT status FROM idem_begin('bin', '\xdeadbeef0000'::bytea);
-- a jsonb body never matches a text body, whatever its spelling
BEGIN;
SELECT status FROM idem_begin('tj', '{"a": 1}'::jsonb);
SELECT idem_finish('tj', 200);
COMMIT;
SELECT status FROM idem_begin('tj', '{"a": 1}'::text);
SELECT status FROM idem_begin('tj', '{"a":1}'::text);
SELECT status FROM idem_begin('tj', '{"a":1}'::jsonb);

------------------------------------------------------------------------
-- overload resolution
------------------------------------------------------------------------
-- an untyped literal request goes to the text variant: exact bytes
BEGIN;
SELECT status FROM idem_begin('ov-1', '{"a":1}');
SELECT idem_finish('ov-1', 200, '{"v": 1}');
COMMIT;
SELECT status, response_body FROM idem_begin('ov-1', '{"a":1}');
SELECT status FROM idem_begin('ov-1', '{"a": 1}');
SELECT status, response_body FROM idem_begin('ov-1', '{"a":1}'::text);
-- cast to jsonb for canonical comparison
BEGIN;
SELECT status FROM idem_begin('ov-2', '{"a":1}'::jsonb);
SELECT idem_finish('ov-2', 200, '{"v": 2}');
COMMIT;
SELECT status, response_body FROM idem_begin('ov-2', '{"a": 1}'::jsonb);
SELECT status FROM idem_begin('ov-2', '{"a": 1}');
-- untyped literals go to idem_fingerprint(text) as well
SELECT idem_fingerprint('abc') = idem_fingerprint('abc'::text) AS untyped_is_text;
-- idem_begin('k') and idem_begin('k', NULL) both work
BEGIN;
SELECT status, response_code, response_body FROM idem_begin('ov-3');
SELECT idem_finish('ov-3', 200);
SELECT status, response_code, response_body FROM idem_begin('ov-4', NULL);
SELECT idem_finish('ov-4', 200);
COMMIT;
SELECT status, response_code FROM idem_begin('ov-3', NULL);
SELECT status, response_code FROM idem_begin('ov-4');
-- named arguments
BEGIN;
SELECT status FROM idem_begin(key => 'ov-5', request => '{"a":1}'::jsonb, scope => 's', ttl => '1 hour', wait => false);
SELECT idem_finish(key => 'ov-5', response_code => 200, response_body => '[]', scope => 's');
SELECT status FROM idem_begin(scope => 's', key => 'ov-6');
SELECT idem_release(scope => 's', key => 'ov-6');
COMMIT;
SELECT status, response_code, response_body,
       expires_at - created_at = interval '1 hour' AS ttl_ok
FROM idem_lookup(scope => 's', key => 'ov-5');
SELECT idem_once(key => 'ov-7', ttl => '1 minute', scope => 's') AS once;
SELECT idem_sweep(batch => 10) AS swept;
-- wait => false on a free key behaves like the default
BEGIN;
SELECT status FROM idem_begin('ov-8', wait => false);
SELECT idem_finish('ov-8', 200);
COMMIT;
SELECT status FROM idem_begin('ov-8', wait => false);

------------------------------------------------------------------------
-- a large batch in one transaction, with default settings
------------------------------------------------------------------------
-- (100,000 keys; test/valgrind.sh sets idem_test.batch_keys lower)
SELECT set_config('idem_test.batch_keys',
                  coalesce(current_setting('idem_test.batch_keys', true), '100000'), false) AS n \gset
-- (the default is 64 up to 18, 128 from 19)
SELECT setting = boot_val AS default_max_locks FROM pg_settings WHERE name = 'max_locks_per_transaction';
BEGIN;
DO $$
BEGIN
  FOR i IN 1..current_setting('idem_test.batch_keys')::int LOOP
    IF (SELECT status FROM idem_begin('batch-' || i, jsonb_build_object('i', i), scope => 'batch')) <> 'started' THEN
      RAISE EXCEPTION 'key % not started', i;
    END IF;
    PERFORM idem_finish('batch-' || i, 200, jsonb_build_object('i', i), scope => 'batch');
  END LOOP;
END
$$;
SELECT count(*) AS open_key_locks FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
COMMIT;
SELECT count(*) = :n AS all_rows, count(DISTINCT key) = :n AS all_keys, min(response_code), max(response_code)
FROM idem_keys WHERE scope = 'batch';
SELECT status, response_body FROM idem_begin('batch-7777', '{"i": 7777}'::jsonb, scope => 'batch');
SELECT count(*) FILTER (WHERE b.status = 'replay') = :n AS all_replayed
FROM generate_series(1, :n) g, idem_begin('batch-' || g, jsonb_build_object('i', g), scope => 'batch') b;
-- the same with generate_series: begin and finish row by row in one statement
BEGIN;
SELECT count(idem_finish('gs-' || g, 201, scope => 'gs')) = :n AS all_finished,
       count(*) FILTER (WHERE b.status = 'started') = :n AS all_started
FROM generate_series(1, :n) g, LATERAL idem_begin('gs-' || g, scope => 'gs') b;
COMMIT;
SELECT count(*) = :n AS all_rows FROM idem_keys WHERE scope = 'gs' AND response_code = 201;
-- keep the database small for the files that follow
DELETE FROM idem_keys WHERE scope IN ('batch', 'gs');

------------------------------------------------------------------------
-- two calls in one command that both remove the same expired record:
-- idem_once replaces it, the sweep in the same command skips it
------------------------------------------------------------------------
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'same-command', NULL, NULL);
-- (other keys of this file may expire meanwhile, so the sweep's count is not shown)
SELECT idem_once('same-command') AS first, idem_sweep() IS NOT NULL AS swept;
SELECT status, response_code FROM idem_lookup('same-command');
