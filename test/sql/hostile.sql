--
-- hostile: malformed and extreme input for every function.  Each call
-- either works or fails with a precise SQLSTATE and message, and a failed
-- call leaves nothing behind: no row in idem_keys, no key lock.
--
-- Things errors.sql already covers (each function's NULL key/scope/ttl/
-- wait/batch, ASCII/2-byte/3-byte length limits, bad ttl, bad codes,
-- idem_begin(1)) are not repeated; this file covers what a fuzzer or a
-- broken client would send on top of that.
--
\set SHOW_CONTEXT never
-- PostgreSQL text cannot hold invalid UTF8 only in a UTF8 database; the temp
-- instance's encoding follows the locale of whoever runs the suite, so if it
-- is not UTF8, run in a UTF8 database of our own (no output either way)
SELECT getdatabaseencoding() <> 'UTF8' AS need_utf8_db, current_database() AS regress_db \gset
\if :need_utf8_db
CREATE DATABASE regress_idem_hostile TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C';
-- messages in English whatever the server's lc_messages, as pg_regress sets
-- it for its own database
ALTER DATABASE regress_idem_hostile SET lc_messages TO 'C';
\c regress_idem_hostile
\endif
-- runs alone or after api; starts from an empty key store
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
RESET client_min_messages;
TRUNCATE idem_keys;
SELECT getdatabaseencoding();

-- esc(t): t in printable ASCII; anything else as \uXXXX or \UXXXXXXXX
CREATE FUNCTION esc(t text) RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT coalesce(string_agg(CASE WHEN ascii(c) BETWEEN 32 AND 126 THEN c
                                  WHEN ascii(c) < 65536 THEN '\u' || lpad(to_hex(ascii(c)), 4, '0')
                                  ELSE '\U' || lpad(to_hex(ascii(c)), 8, '0') END, '' ORDER BY n), '')
  FROM regexp_split_to_table(t, '') WITH ORDINALITY AS s(c, n)
  WHERE c <> ''
$$;

-- try(stmt): 'ok: <first column>' ('ok' for void) or 'SQLSTATE: message (detail)', escaped;
-- without the detail of a 42883, PostgreSQL's own, which 19 added
CREATE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r text;
  st text;
  msg text;
  det text;
BEGIN
  EXECUTE stmt INTO r;
  RETURN CASE WHEN r = '' THEN 'ok' ELSE 'ok: ' || coalesce(esc(r), 'NULL') END;
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                          det = PG_EXCEPTION_DETAIL;
  RETURN st || ': ' || esc(msg) ||
         CASE WHEN det <> '' AND st <> '42883' THEN ' (' || esc(det) || ')' ELSE '' END;
END
$$;

-- code(stmt): the SQLSTATE alone, or 'ok: <first column>'
CREATE FUNCTION code(stmt text) RETURNS text LANGUAGE sql AS $$
  SELECT CASE WHEN r LIKE 'ok%' THEN r ELSE left(r, 5) END FROM try(stmt) r
$$;

-- everything an error must not change: the stored keys (every row version:
-- ctid and xmin change with any write) and our key locks.  The body goes in
-- by its fingerprint, so that a 100 MiB body is not turned into text here.
CREATE FUNCTION keys_state() RETURNS text LANGUAGE sql AS $$
  SELECT count(*) || ' rows, md5 ' ||
         coalesce(md5(string_agg(concat_ws('|', k.ctid, k.xmin, k.created_at, k.expires_at,
                                           k.response_code, k.state, k.scope, k.key, k.fingerprint,
                                           idem_fingerprint(k.response_body)),
                                 ',' ORDER BY k.scope, k.key)), '-') ||
         ', locks ' || (SELECT count(*) FROM pg_locks
                        WHERE locktype = 'advisory' AND objsubid = 18756
                          AND pid = pg_backend_pid())
  FROM idem_keys k
$$;

-- the code points of a string, for output that does not depend on fonts
CREATE FUNCTION cps(t text) RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT string_agg(upper(to_hex(ascii(c))), ' ' ORDER BY n)
  FROM regexp_split_to_table(t, '') WITH ORDINALITY AS s(c, n)
$$;

-- a completed key to fail against
BEGIN;
SELECT status FROM idem_begin('done', '{"a": 1}'::jsonb);
SELECT idem_finish('done', 200, '{"r": 1}'::jsonb);
COMMIT;
SELECT keys_state() AS s0 \gset

------------------------------------------------------------------------
-- invalid UTF8 and NUL never reach the extension: PostgreSQL rejects them
-- while reading the literal or converting the bytes (22021), and a NUL
-- cannot be written any other way either
------------------------------------------------------------------------
SELECT n, stmt, try(stmt) FROM (VALUES
  (1, $$SELECT status FROM idem_begin(E'k\xff')$$),
  (2, $$SELECT status FROM idem_begin(E'\xc3\x28')$$),
  (3, $$SELECT status FROM idem_begin(E'k\x00')$$),
  (4, $$SELECT status FROM idem_begin(convert_from('\x6b006b', 'UTF8'))$$),
  (5, $$SELECT status FROM idem_begin(convert_from('\xc0af', 'UTF8'))$$),
  (6, $$SELECT status FROM idem_begin(convert_from('\xeda080', 'UTF8'))$$),
  (7, $$SELECT status FROM idem_begin(convert_from('\xf4908080', 'UTF8'))$$),
  (8, $$SELECT status FROM idem_begin(convert_from('\xf880808080', 'UTF8'))$$),
  (9, $$SELECT status FROM idem_begin(convert_from('\xe282', 'UTF8'))$$),
  (10, $$SELECT status FROM idem_begin(chr(0))$$),
  (11, $$SELECT status FROM idem_begin(chr(55296))$$),
  (12, $$SELECT status FROM idem_begin(E'\u0000')$$),
  (13, $$SELECT status FROM idem_begin(E'\uD800')$$),
  (14, $$SELECT status FROM idem_begin('k', scope => E'\xff')$$),
  (15, $$SELECT status FROM idem_begin('k', E'\xfe'::text)$$),
  (16, $$SELECT status FROM idem_begin('k', '"\u0000"'::jsonb)$$),
  (17, $$SELECT status FROM idem_begin('k', '"\ud800"'::jsonb)$$),
  (18, $$SELECT status FROM idem_begin('k', E'"\xff"'::jsonb)$$),
  (19, $$SELECT idem_finish('done', 200, E'{"r": "\x80"}'::jsonb)$$),
  (20, $$SELECT idem_finish(convert_from('\xff', 'UTF8'), 200)$$),
  (21, $$SELECT idem_release(E'\xff')$$),
  (22, $$SELECT idem_once(E'\xff')$$),
  (23, $$SELECT idem_once('k', convert_from('\x00', 'UTF8'))$$),
  (24, $$SELECT status FROM idem_lookup(E'\xff')$$),
  (25, $$SELECT idem_fingerprint(E'\xff'::text)$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
-- the same bytes are fine as a bytea request, which holds any byte
BEGIN;
SELECT status FROM idem_begin('raw', '\xff00fec3'::bytea);
SELECT status FROM idem_begin('raw2', convert_to(E'\u00e9', 'LATIN1'));
SELECT idem_release('raw');
SELECT idem_release('raw2');
COMMIT;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- random bytes as keys: deterministic "random" byte strings of 1 to 40
-- bytes (SHA-256 output); those that are not UTF8 are refused by
-- PostgreSQL (22021), the others are valid keys
------------------------------------------------------------------------
CREATE TEMP TABLE rb AS
SELECT i, substring(sha256(int4send(i)) || sha256(int4send(-i)) from 1 for 1 + i % 40) AS b
FROM generate_series(1, 2000) i;
-- a few 1- and 2-byte strings of ASCII letters are bound to appear, and an
-- accepted one must be stored byte for byte
SELECT outcome, count(*)
FROM (SELECT code(format($$SELECT status FROM idem_lookup(convert_from(%L, 'UTF8'))$$, b)) AS outcome FROM rb) o
GROUP BY 1 ORDER BY outcome COLLATE "C";
-- every string with a zero byte is among the refused
SELECT count(*) AS with_zero_byte,
       count(*) FILTER (WHERE code(format($$SELECT idem_once(convert_from(%L, 'UTF8'))$$, b)) = '22021') AS refused
FROM rb WHERE position('\x00'::bytea in b) > 0;
BEGIN;
CREATE TEMP TABLE rb_ok ON COMMIT DROP AS
SELECT DISTINCT ON (b) i, convert_from(b, 'UTF8') AS key FROM rb
WHERE code(format($$SELECT convert_from(%L, 'UTF8')$$, b)) LIKE 'ok:%'
ORDER BY b, i;
SELECT count(*) AS valid, count(DISTINCT key) AS distinct_keys FROM rb_ok;
SELECT count(*) FILTER (WHERE b.status = 'started') AS started
FROM rb_ok, idem_begin(key, scope => 'rb') b;
SELECT count(*) AS finished FROM rb_ok, idem_finish(key, 200, to_jsonb(i), 'rb');
SELECT count(*) AS stored_exactly FROM rb_ok r JOIN idem_keys k
  ON k.scope = 'rb' AND convert_to(k.key, 'UTF8') = (SELECT b FROM rb WHERE rb.i = r.i)
     AND k.response_body = to_jsonb(r.i);
ROLLBACK;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- random UTF8 strings: deterministic pseudo-random code points from every
-- range (1-byte including control characters, 2-byte, 3-byte without
-- surrogates, 4-byte up to U+10FFFF), 1 to 150 characters; a key is
-- accepted exactly when it is at most 255 bytes, and the error reports the
-- exact byte count
------------------------------------------------------------------------
CREATE TEMP TABLE ru AS
SELECT i, string_agg(chr(cp), '' ORDER BY j) AS key
FROM generate_series(1, 600) i
CROSS JOIN LATERAL generate_series(1, 1 + get_byte(sha256(int4send(i)), 0) % 150) j
CROSS JOIN LATERAL (SELECT ('x' || encode(substring(sha256(int4send(i) || int4send(j)) from 1 for 4), 'hex'))::bit(32)::int & 2147483647 AS v) r
CROSS JOIN LATERAL (SELECT CASE v % 4
    WHEN 0 THEN 1 + (v / 4) % 127
    WHEN 1 THEN 128 + (v / 4) % 1920
    WHEN 2 THEN CASE WHEN 2048 + (v / 4) % 61440 >= 55296 THEN 4096 + (v / 4) % 61440
                     ELSE 2048 + (v / 4) % 61440 END
    ELSE 65536 + (v / 4) % 1048576 END AS cp) c
GROUP BY i;
SELECT min(length(key)) AS min_chars, max(length(key)) AS max_chars,
       min(octet_length(key)) AS min_bytes, max(octet_length(key)) AS max_bytes,
       count(*) FILTER (WHERE octet_length(key) <= 255) AS fit,
       count(*) FILTER (WHERE key ~ '[\x01-\x1f]') AS with_controls,
       count(*) FILTER (WHERE key ~ '[\U00010000-\U0010FFFF]') AS with_4_byte
FROM ru;
BEGIN;
CREATE TEMP TABLE ru_res ON COMMIT DROP AS
SELECT i, key, try(format('SELECT status FROM idem_begin(%L, scope => %L)', key, 'ru')) AS res
FROM ru;
-- accepted exactly when it fits; rejected with its own byte count otherwise
SELECT fits, outcome, count(*)
FROM (SELECT octet_length(key) <= 255 AS fits,
             CASE WHEN res = 'ok: started' THEN res
                  WHEN res = format('22023: idempotency key is too long (It is %s bytes; the limit is 255 bytes.)', octet_length(key))
                  THEN '22023 with the right byte count'
                  ELSE res END AS outcome
      FROM ru_res) o
GROUP BY 1, 2 ORDER BY fits, outcome COLLATE "C";
SELECT count(*) AS locks FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT count(*) AS finished
FROM (SELECT * FROM ru_res WHERE res = 'ok: started') r, idem_finish(r.key, 201, jsonb_build_object('k', r.key), 'ru');
SELECT count(*) AS replay_exact
FROM (SELECT * FROM ru_res WHERE res = 'ok: started') r, idem_begin(r.key, scope => 'ru') b
WHERE b.status = 'replay' AND b.response_body = jsonb_build_object('k', r.key);
-- and as scopes: the same rule
SELECT fits, outcome, count(*)
FROM (SELECT octet_length(key) <= 255 AS fits,
             code(format('SELECT status FROM idem_lookup(%L, %L)', 'k', key)) AS outcome FROM ru) o
GROUP BY 1, 2 ORDER BY fits, outcome COLLATE "C";
ROLLBACK;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- every Unicode plane, in keys, scopes and bodies: stored and replayed byte
-- for byte; no normalisation (NFC and NFD are two keys), nothing stripped
-- (BOM, zero-width space, variation selectors, tag characters)
------------------------------------------------------------------------
CREATE TEMP TABLE planes (n int, what text, key text);
INSERT INTO planes VALUES
  (1,  'BMP Latin-1 (NFC)',         E'caf\u00e9'),
  (2,  'BMP decomposed (NFD)',      E'cafe\u0301'),
  (3,  'BMP CJK',                   E'\u952e'),
  (4,  'BMP BOM, zero-width space', E'\ufeffk\u200b'),
  (5,  'BMP noncharacters',         E'\uffff\ufffe'),
  (6,  'BMP replacement char',      E'\ufffd'),
  (7,  'BMP right-to-left override', E'\u202ekey'),
  (8,  'ASCII control characters',  E'k\x01\x1f\x7f\t\r\n'),
  (9,  'SMP emoji',                 E'\U0001F600'),
  (10, 'SMP ZWJ sequence',          E'\U0001F468\u200d\U0001F469\u200d\U0001F467'),
  (11, 'SMP flag',                  E'\U0001F1FA\U0001F1F8'),
  (12, 'SIP CJK extension B',       E'\U00020000\U0002A6DF'),
  (13, 'TIP CJK extension G',       E'\U00030000'),
  (14, 'plane 14 tag characters',   E'k\U000E0001\U000E0020\U000E007F'),
  (15, 'plane 14 variation sel.',   E'k\U000E0100'),
  (16, 'plane 15 private use',      E'\U000F0000\U000FFFFD'),
  (17, 'plane 16 private use',      E'\U00100000\U0010FFFF'),
  (18, '1+2+3+4-byte characters',   E'a\u00e9\u20ac\U0001F600');
SELECT n, what, cps(key), length(key) AS chars, octet_length(key) AS bytes FROM planes ORDER BY n;
BEGIN;
-- key and scope from the same plane; the body carries it too
SELECT n, b.status FROM planes p, idem_begin(p.key, to_jsonb(p.key), scope => p.key) b ORDER BY n;
SELECT count(*) AS finished FROM planes p, idem_finish(p.key, 201, jsonb_build_object('k', p.key), p.key);
COMMIT;
SELECT n, b.status, b.response_code, b.response_body = jsonb_build_object('k', p.key) AS body_intact
FROM planes p, idem_begin(p.key, to_jsonb(p.key), scope => p.key) b ORDER BY n;
SELECT count(*) AS stored_exactly FROM planes p JOIN idem_keys k
  ON convert_to(k.key, 'UTF8') = convert_to(p.key, 'UTF8')
 AND convert_to(k.scope, 'UTF8') = convert_to(p.key, 'UTF8');
-- neighbours that differ by one invisible code point are other keys
SELECT v.what, b.status FROM (VALUES
  ('NFC scope, NFD key',           E'cafe\u0301', E'caf\u00e9'),
  ('without BOM and ZWSP',         'k',           E'\ufeffk\u200b'),
  ('without variation selector',   'k',           E'k\U000E0100'),
  ('without tag characters',       'k',           E'k\U000E0001\U000E0020\U000E007F'),
  ('without the override',         'key',         E'\u202ekey')
) v(what, key, scope), idem_lookup(v.key, v.scope) b;
-- a JSON escape and the character itself are the same jsonb request
SELECT b.status FROM idem_begin(E'\U0001F600', '"\ud83d\ude00"'::jsonb, scope => E'\U0001F600') b;
SELECT b.status FROM idem_begin(E'caf\u00e9', '"caf\u00e9"'::jsonb, scope => E'caf\u00e9') b;
-- messages name such keys as they are (escaped here for the output)
SELECT n, try(format('SELECT idem_finish(%L, 200, scope => %L)', key, key))
FROM planes WHERE n IN (1, 8, 10, 14, 17) ORDER BY n;
-- keys that look like format strings, quotes, SQL or escapes
SELECT try(format('SELECT idem_finish(%L, 200)', k)) FROM (VALUES
  ('%s%n%x%d%%'), ('a"b'), ('a" in scope "b'), ($$'; DROP TABLE idem_keys; --$$), ('\\x00'), (E'\\')
) v(k);
-- quotes inside a key are not escaped in messages: the key 'a" in scope "b'
-- reads exactly like the key 'a' in scope 'b'
SELECT try($$SELECT idem_finish('a', 200, scope => 'b')$$);
SELECT keys_state() <> :'s0' AS planes_stored;
DELETE FROM idem_keys WHERE key <> 'done';
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- byte limits with 4-byte characters and characters that straddle the
-- 255-byte line, for every function; keys first, then scopes
------------------------------------------------------------------------
CREATE TEMP TABLE lim (n int, s text);
INSERT INTO lim VALUES
  (1, repeat('x', 251) || E'\U0001F600'),        -- 255: ends in a 4-byte char
  (2, repeat('x', 252) || E'\U0001F600'),        -- 256: the 4-byte char straddles
  (3, repeat(E'\U0001F600', 63) || 'xyz'),       -- 255
  (4, repeat(E'\U0001F600', 64)),                -- 256
  (5, repeat(E'\U0010FFFF', 63) || E'\u20ac'),   -- 255: 63 x 4 + 3
  (6, repeat(E'\U00020000', 63) || E'\u00e9x'),  -- 255: 63 x 4 + 2 + 1
  (7, repeat('x', 254) || E'\u00e9'),            -- 256: a 2-byte char straddles
  (8, repeat('x', 253) || E'\u20ac'),            -- 256: a 3-byte char straddles
  (9, repeat(E'\U000E0100', 64));                -- 256: plane 14
SELECT n, length(s) AS chars, octet_length(s) AS bytes FROM lim ORDER BY n;
BEGIN;
SELECT n, octet_length(s) AS bytes,
       code(format($$SELECT status FROM idem_begin(%L, '{}'::jsonb, scope => 'bj')$$, s)) AS begin_jsonb,
       code(format($$SELECT status FROM idem_begin(%L, 'x'::text, scope => 'bt')$$, s)) AS begin_text,
       code(format($$SELECT status FROM idem_begin(%L, '\x00'::bytea, scope => 'bb')$$, s)) AS begin_bytea,
       code(format($$SELECT idem_finish(%L, 200, scope => 'bj')$$, s)) AS finish,
       code(format($$SELECT idem_release(%L, 'bt')$$, s)) AS release,
       code(format($$SELECT idem_once(%L, 'o')$$, s)) AS once,
       code(format($$SELECT status FROM idem_lookup(%L, 'bb')$$, s)) AS lookup
FROM lim ORDER BY n;
SELECT count(*) AS open_keys FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT scope, count(*) AS keys, max(octet_length(key)) AS max_key_bytes FROM idem_keys
WHERE key <> 'done' GROUP BY scope ORDER BY scope COLLATE "C";
ROLLBACK;
SELECT keys_state() = :'s0' AS unchanged;
BEGIN;
SELECT n, octet_length(s) AS bytes,
       code(format($$SELECT status FROM idem_begin('bj', '{}'::jsonb, scope => %L)$$, s)) AS begin_jsonb,
       code(format($$SELECT status FROM idem_begin('bt', 'x'::text, scope => %L)$$, s)) AS begin_text,
       code(format($$SELECT status FROM idem_begin('bb', '\x00'::bytea, scope => %L)$$, s)) AS begin_bytea,
       code(format($$SELECT idem_finish('bj', 200, scope => %L)$$, s)) AS finish,
       code(format($$SELECT idem_release('bt', %L)$$, s)) AS release,
       code(format($$SELECT idem_once('o', %L)$$, s)) AS once,
       code(format($$SELECT status FROM idem_lookup('bb', %L)$$, s)) AS lookup
FROM lim ORDER BY n;
ROLLBACK;
SELECT keys_state() = :'s0' AS unchanged;
-- the message counts bytes, not characters
SELECT try(format('SELECT idem_once(%L)', s)) FROM lim WHERE n = 4;
SELECT try(format('SELECT idem_once(%L, %L)', 'k', s)) FROM lim WHERE n = 9;

-- a 10 MiB key or scope, also arriving compressed from a table, for every function
CREATE TEMP TABLE huge AS SELECT repeat('k', 10 * 1024 * 1024) AS s;
SELECT pg_column_size(s) < octet_length(s) AS compressed FROM huge;
SELECT stmt, try(stmt) FROM (VALUES
  ($$SELECT status FROM idem_begin((SELECT s FROM huge))$$),
  ($$SELECT status FROM idem_begin((SELECT s FROM huge), 'x'::text)$$),
  ($$SELECT status FROM idem_begin((SELECT s FROM huge), 'x'::bytea)$$),
  ($$SELECT status FROM idem_begin('k', scope => (SELECT s FROM huge))$$),
  ($$SELECT idem_finish((SELECT s FROM huge), 200)$$),
  ($$SELECT idem_finish('k', 200, scope => (SELECT s FROM huge))$$),
  ($$SELECT idem_release((SELECT s FROM huge))$$),
  ($$SELECT idem_release('k', (SELECT s FROM huge))$$),
  ($$SELECT idem_once((SELECT s FROM huge))$$),
  ($$SELECT idem_once('k', (SELECT s FROM huge))$$),
  ($$SELECT status FROM idem_lookup((SELECT s FROM huge))$$),
  ($$SELECT status FROM idem_lookup('k', (SELECT s FROM huge))$$)
) v(stmt);
DROP TABLE huge;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- 100 MiB request and response bodies.  mib() is 1 MiB of deterministic
-- base64 text that pglz cannot compress (the worst case for storage);
-- body() and body_bytea() are idem_test.body_mib of it, 100 unless set
-- (test/valgrind.sh sets it lower: there the size only multiplies the time)
------------------------------------------------------------------------
SELECT set_config('idem_test.body_mib',
                  coalesce(current_setting('idem_test.body_mib', true), '100'), false) AS mb \gset
CREATE FUNCTION mib() RETURNS text LANGUAGE sql AS $$
  SELECT translate(encode(string_agg(sha256(int4send(i)), ''::bytea ORDER BY i), 'base64'), E'\n', '')
  FROM generate_series(1, 24576) i
$$;
-- n MiB of binary data, zero bytes included
CREATE FUNCTION mib_bytea(n int) RETURNS bytea LANGUAGE sql AS $$
  WITH m AS MATERIALIZED (SELECT string_agg(sha256(int4send(i)), ''::bytea ORDER BY i) AS b
                          FROM generate_series(1, 32768) i)
  SELECT string_agg(m.b, ''::bytea) FROM m, generate_series(1, n)
$$;
CREATE FUNCTION body() RETURNS text LANGUAGE sql AS $$
  SELECT repeat(mib(), current_setting('idem_test.body_mib')::int)
$$;
CREATE FUNCTION body_bytea() RETURNS bytea LANGUAGE sql AS $$
  SELECT mib_bytea(current_setting('idem_test.body_mib')::int)
$$;
SELECT octet_length(mib()) AS mib, octet_length(mib_bytea(1)) AS mib_bytea,
       position('\x00'::bytea in mib_bytea(1)) > 0 AS has_zero_bytes;

-- jsonb request: key order and numeric scale do not matter, one byte does
BEGIN;
SELECT status FROM idem_begin('big-jsonb', jsonb_build_object('n', 1, 'blob', body()));
SELECT idem_finish('big-jsonb', 201, '{"ok": 1}');
COMMIT;
SELECT status, response_code, response_body
FROM idem_begin('big-jsonb', jsonb_build_object('blob', body(), 'n', 1.000));
SELECT status, response_code, response_body
FROM idem_begin('big-jsonb', jsonb_build_object('n', 1, 'blob', left(body(), -1) || '!'));
-- text request: the exact 100 MiB
BEGIN;
SELECT status FROM idem_begin('big-text', body());
SELECT idem_finish('big-text', 201, '{"ok": 2}');
COMMIT;
SELECT status, response_body FROM idem_begin('big-text', body());
SELECT status, response_body FROM idem_begin('big-text', body() || ' ');
-- bytea request
BEGIN;
SELECT status FROM idem_begin('big-bytea', body_bytea());
SELECT idem_finish('big-bytea', 201, '{"ok": 3}');
COMMIT;
SELECT status, response_body FROM idem_begin('big-bytea', body_bytea());
SELECT status, response_body FROM idem_begin('big-bytea', body_bytea() || '\x00'::bytea);
-- a 100 MiB jsonb response: stored, replayed and looked up intact (compared
-- by fingerprint, which reads the body without another 100 MiB copy)
BEGIN;
SELECT status FROM idem_begin('big-response', '{"small": true}'::jsonb);
SELECT idem_fingerprint(r.body) AS big_fp
FROM (SELECT jsonb_build_object('blob', body()) AS body OFFSET 0) r,
     idem_finish('big-response', 200, r.body) \gset
COMMIT;
SELECT status, response_code, pg_column_size(response_body) - :mb * 1048576 AS jsonb_overhead_bytes,
       idem_fingerprint(response_body) = :'big_fp' AS body_intact
FROM idem_begin('big-response', '{"small": true}'::jsonb);
SELECT status, response_code, pg_column_size(response_body) - :mb * 1048576 AS jsonb_overhead_bytes,
       idem_fingerprint(response_body) = :'big_fp' AS body_intact
FROM idem_lookup('big-response');
SELECT count(*) AS rows, sum(pg_column_size(response_body)) > :mb * 1024 * 1024 AS stored_in_full
FROM idem_keys WHERE key = 'big-response';
SELECT keys_state() AS s1 \gset
-- bad arguments next to a 100 MiB body change nothing
SELECT try($$SELECT status FROM idem_begin(NULL, jsonb_build_object('blob', body()))$$);
SELECT try($$SELECT status FROM idem_begin('big-new', body(), ttl => '0')$$);
SELECT try($$SELECT idem_finish('big-new', 99, jsonb_build_object('blob', body()))$$);
SELECT keys_state() = :'s1' AS unchanged;
-- a statement cancelled in the middle of finishing with a 100 MiB body
-- leaves the key begun and writes nothing (QUERY_CANCELED is not caught
-- by PL/pgSQL's WHEN OTHERS, hence a savepoint)
BEGIN;
SELECT status FROM idem_begin('big-cancel');
SAVEPOINT s;
SET LOCAL statement_timeout = '10ms';
SELECT idem_finish('big-cancel', 200, jsonb_build_object('blob', body()));
ROLLBACK TO s;
SELECT status, created_at = now() AS begun_now FROM idem_lookup('big-cancel');
SELECT count(*) AS key_locks FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 18756 AND pid = pg_backend_pid();
SELECT count(*) AS rows FROM idem_keys WHERE key = 'big-cancel';
SELECT idem_finish('big-cancel', 200, '{"small": true}');
COMMIT;
SELECT status, response_body FROM idem_lookup('big-cancel');
-- start again from the one completed key (TRUNCATE frees the 100 MiB rows now)
TRUNCATE idem_keys;
BEGIN;
SELECT status FROM idem_begin('done', '{"a": 1}'::jsonb);
SELECT idem_finish('done', 200, '{"r": 1}'::jsonb);
COMMIT;
SELECT keys_state() AS s0 \gset

------------------------------------------------------------------------
-- jsonb nested 10,000 levels deep, as request and as response: equal
-- values give equal fingerprints whatever their spacing, numeric scale or
-- key order, and a change at the bottom changes the fingerprint
------------------------------------------------------------------------
CREATE FUNCTION deep(n int, leaf text, sp text DEFAULT '') RETURNS jsonb LANGUAGE sql AS $$
  SELECT (repeat('[' || sp, n) || leaf || repeat(sp || ']', n))::jsonb
$$;
CREATE FUNCTION deep_obj(n int, leaf text, sp text DEFAULT '') RETURNS jsonb LANGUAGE sql AS $$
  SELECT (repeat('{' || sp || '"k"' || sp || ':' || sp, n) || leaf || repeat(sp || '}', n))::jsonb
$$;
SELECT jsonb_path_query_first(deep(3, '1'), 'strict $[0][0][0]') AS three_levels,
       length(deep(10000, '1')::text) AS text_len,
       length(deep_obj(10000, '{"a": 1, "b": [true, null]}')::text) AS obj_text_len;
SELECT idem_fingerprint(deep(10000, '1')) = idem_fingerprint(deep(10000, '1.000', E' \n\t')) AS ws_and_scale,
       idem_fingerprint(deep(10000, '1')) = idem_fingerprint(deep(9999, '[1]')) AS same_value,
       idem_fingerprint(deep(10000, '1')) = idem_fingerprint(deep(10000, '2')) AS leaf_changed,
       idem_fingerprint(deep(10000, '1')) = idem_fingerprint(deep(9999, '1')) AS one_level_less,
       idem_fingerprint(deep(10000, '1')) = idem_fingerprint(deep(10000, '"1"')) AS string_vs_number,
       idem_fingerprint(deep(10000, '1')) = idem_fingerprint(deep_obj(10000, '1')) AS array_vs_object;
SELECT idem_fingerprint(deep_obj(10000, '{"a": 1, "b": [true, null]}')) =
       idem_fingerprint(deep_obj(10000, '{"b": [true, null], "a": 1.0, "a": 1}', ' ')) AS key_order_dups,
       idem_fingerprint(deep_obj(10000, '{"a": 1, "b": [true, null]}')) =
       idem_fingerprint(deep_obj(10000, '{"a": 1, "b": [null, true]}')) AS array_order;
-- the fingerprint agrees with jsonb equality
SELECT (deep_obj(10000, '{"a": 1}') = deep_obj(10000, '{"a": 1.00}')) AS jsonb_eq,
       idem_fingerprint(deep_obj(10000, '{"a": 1}')) = idem_fingerprint(deep_obj(10000, '{"a": 1.00}')) AS fp_eq;
BEGIN;
SELECT status FROM idem_begin('deep', deep_obj(10000, '{"a": 1, "b": [true, null]}'));
SELECT idem_finish('deep', 200, deep(10000, '{"z": "bottom"}'));
COMMIT;
SELECT status, response_body = deep(10000, '{"z": "bottom"}') AS body_intact,
       length(response_body::text) AS body_text_len
FROM idem_begin('deep', deep_obj(10000, '{"b": [true, null], "a": 1.0}', ' '));
SELECT status, response_body IS NULL AS no_body
FROM idem_begin('deep', deep_obj(10000, '{"a": 1, "b": [true, false]}'));
SELECT status FROM idem_begin('deep', deep_obj(9999, '{"a": 1, "b": [true, null]}'));
SELECT status, response_body = deep(10000, '{"z": "bottom"}') AS body_intact FROM idem_lookup('deep');
-- far deeper input is refused by PostgreSQL's JSON parser before any call
SELECT try($$SELECT status FROM idem_begin('deeper', deep(1000000, '1'))$$);
SELECT try($$SELECT idem_finish('deep', 200, deep(1000000, '1'))$$);
-- wide: 100,000 keys inserted in opposite orders
SELECT idem_fingerprint((SELECT jsonb_object_agg('k' || i, i ORDER BY i) FROM generate_series(1, 100000) i)) =
       idem_fingerprint((SELECT jsonb_object_agg('k' || i, i ORDER BY i DESC) FROM generate_series(1, 100000) i)) AS wide_order;
-- numbers at the edges of numeric
SELECT idem_fingerprint('1e1000'::jsonb) = idem_fingerprint(('1' || repeat('0', 1000))::jsonb) AS big_exp,
       idem_fingerprint('1e-1000'::jsonb) = idem_fingerprint(('0.' || repeat('0', 999) || '1')::jsonb) AS small_exp,
       idem_fingerprint('-0'::jsonb) = idem_fingerprint('0.000'::jsonb) AS minus_zero,
       idem_fingerprint('1e1000'::jsonb) = idem_fingerprint('1e999'::jsonb) AS exp_differs;
DELETE FROM idem_keys WHERE key = 'deep';
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- NULL in every position of every function, inside a transaction that has
-- a key begun ('open') and one finished ('fin'): each NULL that is not a
-- body is refused with 22004 before anything else, and neither key moves.
-- (idem_fingerprint and idem_sweep: see errors.sql)
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin('open', '{"a": 1}'::jsonb);
SELECT status FROM idem_begin('fin', '{"a": 1}'::jsonb);
SELECT idem_finish('fin', 200);
SELECT keys_state() AS s2 \gset
SELECT n, stmt, try(stmt) FROM (VALUES
  (1,  $$SELECT status FROM idem_begin(NULL::text, '{}'::jsonb, '', '1 hour', true)$$),
  (2,  $$SELECT status FROM idem_begin('open', '{}'::jsonb, NULL, '1 hour', true)$$),
  (3,  $$SELECT status FROM idem_begin('open', '{}'::jsonb, '', NULL, true)$$),
  (4,  $$SELECT status FROM idem_begin('open', '{}'::jsonb, '', '1 hour', NULL)$$),
  (5,  $$SELECT status FROM idem_begin(NULL::text, NULL::jsonb, NULL, NULL, NULL)$$),
  (6,  $$SELECT status FROM idem_begin(NULL::text, 'x'::text, '', '1 hour', true)$$),
  (7,  $$SELECT status FROM idem_begin('open', 'x'::text, NULL, '1 hour', true)$$),
  (8,  $$SELECT status FROM idem_begin('open', 'x'::text, '', NULL, true)$$),
  (9,  $$SELECT status FROM idem_begin('open', 'x'::text, '', '1 hour', NULL)$$),
  (10, $$SELECT status FROM idem_begin(NULL::text, NULL::text, NULL, NULL, NULL)$$),
  (11, $$SELECT status FROM idem_begin(NULL::text, 'x'::bytea, '', '1 hour', true)$$),
  (12, $$SELECT status FROM idem_begin('open', 'x'::bytea, NULL, '1 hour', true)$$),
  (13, $$SELECT status FROM idem_begin('open', 'x'::bytea, '', NULL, true)$$),
  (14, $$SELECT status FROM idem_begin('open', 'x'::bytea, '', '1 hour', NULL)$$),
  (15, $$SELECT status FROM idem_begin(NULL::text, NULL::bytea, NULL, NULL, NULL)$$),
  (16, $$SELECT idem_finish(NULL, 200, '{}', '')$$),
  (17, $$SELECT idem_finish('open', NULL, '{}', '')$$),
  (18, $$SELECT idem_finish('open', 200, '{}', NULL)$$),
  (19, $$SELECT idem_finish(NULL, NULL, NULL, NULL)$$),
  (20, $$SELECT idem_finish('fin', NULL, NULL, '')$$),
  (21, $$SELECT idem_release(NULL, '')$$),
  (22, $$SELECT idem_release('open', NULL)$$),
  (23, $$SELECT idem_release(NULL, NULL)$$),
  (24, $$SELECT idem_once(NULL, '', '1 day')$$),
  (25, $$SELECT idem_once('fin', NULL, '1 day')$$),
  (26, $$SELECT idem_once('fin', '', NULL)$$),
  (27, $$SELECT idem_once(NULL, NULL, NULL)$$),
  (28, $$SELECT status FROM idem_lookup(NULL, '')$$),
  (29, $$SELECT status FROM idem_lookup('open', NULL)$$),
  (30, $$SELECT status FROM idem_lookup(NULL, NULL)$$),
  -- a NULL request or response body is "no body": these work
  (31, $$SELECT status FROM idem_begin('fin', NULL::jsonb)$$),
  (32, $$SELECT status FROM idem_begin('fin', NULL::text)$$),
  (33, $$SELECT status FROM idem_begin('fin', NULL::bytea)$$),
  (34, $$SELECT status FROM idem_lookup('open')$$),
  (35, $$SELECT status FROM idem_lookup('fin')$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s2' AS unchanged;
-- both keys still where they were: 'open' can be finished with a NULL body
SELECT idem_finish('open', 204, NULL);
SELECT key, b.status, b.response_code, b.response_body IS NULL AS no_body
FROM (VALUES ('open'), ('fin')) v(key), idem_lookup(v.key) b;
-- a NULL request, of any type, matches only a NULL request
SELECT status FROM idem_begin('nul', NULL::bytea);
SELECT idem_finish('nul', 200, '"no body"');
SELECT v.req, b.status FROM (VALUES (1, 'NULL::jsonb'), (2, 'NULL::text'), (3, 'NULL::bytea'),
  (4, $$'null'::jsonb$$), (5, $$''::text$$), (6, $$''::bytea$$)) v(n, req),
  LATERAL (SELECT try(format('SELECT status FROM idem_begin(%L, %s)', 'nul', v.req)) AS status) b
ORDER BY v.n;
ROLLBACK;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- wrong types and malformed values: PostgreSQL refuses what it cannot
-- coerce (42883, 22P02, 22003, 22007, 22008, 42601); coercions it allows
-- reach the extension
------------------------------------------------------------------------
SELECT n, stmt, try(stmt) FROM (VALUES
  (1,  $$SELECT idem_finish('k', 'abc')$$),
  (2,  $$SELECT idem_finish('k', '2147483648')$$),
  (3,  $$SELECT idem_finish('k', 2147483648)$$),
  (4,  $$SELECT idem_finish('k', 200.0)$$),
  (5,  $$SELECT idem_finish('k', '1e3')$$),
  (6,  $$SELECT idem_finish('k', ' 200 ')$$),
  (7,  $$SELECT idem_finish('k', 200::smallint)$$),
  (8,  $$SELECT idem_finish('k', 200, 'not json')$$),
  (9,  $$SELECT idem_finish('k', 200, '{"a": 1}'::json)$$),
  (10, $$SELECT idem_finish('k', 200, '{"a": 1}'::text)$$),
  (11, $$SELECT idem_finish('k', 200, scope => 1)$$),
  (12, $$SELECT idem_sweep('x')$$),
  (13, $$SELECT idem_sweep('99999999999')$$),
  (14, $$SELECT idem_sweep(1.5)$$),
  (15, $$SELECT idem_sweep(10000000000)$$),
  (16, $$SELECT idem_sweep(true)$$),
  (17, $$SELECT idem_sweep(1, 2)$$),
  (18, $$SELECT status FROM idem_begin('k', scope => 1)$$),
  (19, $$SELECT status FROM idem_begin('k', '{}'::jsonb, 1)$$),
  (20, $$SELECT status FROM idem_begin('k', ttl => 3600)$$),
  (21, $$SELECT status FROM idem_begin('k', ttl => '1 hour'::text)$$),
  (22, $$SELECT status FROM idem_begin('k', ttl => 'forever')$$),
  -- 23, ttl => 'infinity': infinity.sql (the answer of 15 and 16 differs)
  (24, $$SELECT status FROM idem_begin('k', ttl => '200000000 years')$$),
  (25, $$SELECT status FROM idem_begin('k', ttl => '300000 years')$$),
  (26, $$SELECT status FROM idem_begin('k', wait => 'maybe')$$),
  (27, $$SELECT status FROM idem_begin('k', wait => 1)$$),
  (28, $$SELECT status FROM idem_begin('k', '{"a": 1}'::json)$$),
  (29, $$SELECT status FROM idem_begin('k', ARRAY[1])$$),
  (30, $$SELECT status FROM idem_begin(ARRAY['k'])$$),
  (31, $$SELECT status FROM idem_begin('k'::bytea)$$),
  (32, $$SELECT status FROM idem_begin('k', '{}'::jsonb, '', '1 hour', true, 'extra')$$),
  (33, $$SELECT status FROM idem_begin('k', bogus => 1)$$),
  (34, $$SELECT status FROM idem_begin('k', scope => 'a', scope => 'b')$$),
  (35, $$SELECT status FROM idem_begin(key => 'k', '{}')$$),
  (36, $$SELECT idem_release('k', 1)$$),
  (37, $$SELECT idem_once('k', 1)$$),
  (38, $$SELECT idem_once('k', ttl => 60)$$),
  (39, $$SELECT status FROM idem_lookup(1)$$),
  (40, $$SELECT status FROM idem_lookup('k', 1)$$),
  (41, $$SELECT idem_fingerprint('{"a": 1}'::json)$$),
  (42, $$SELECT idem_fingerprint('{"a": 1}'::jsonb, 'x')$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
-- coercions PostgreSQL applies on the way in: char(n) drops trailing
-- blanks (so 'ab '::char(3) is the key 'ab'), varchar and name do not
BEGIN;
SELECT status FROM idem_begin('ab '::char(3));
SELECT try($$SELECT status FROM idem_begin('ab')$$);
SELECT status FROM idem_begin('ab '::varchar);
SELECT status FROM idem_begin('ab '::name, scope => 'n');
SELECT '[' || key || ']' AS key FROM (VALUES ('ab'), ('ab ')) v(key), idem_lookup(v.key) b
WHERE b.status = 'in_progress' ORDER BY v.key COLLATE "C";
-- a ttl, lease or extend past 1000 years (in any of its parts) is 22023,
-- never an overflow; 1000 years works, and so do 366000 days (a little over
-- 1002 years).  The expiry is compared with now() plus the ttl, added in
-- the session's time zone as the extension adds it, not counted in calendar
-- years: those depend on the date (366000 days after a date late in
-- December fall 1003 calendar years later, not 1002)
SELECT status, created_at = now() AS created_now,
       expires_at = now() + interval '1000 years' AS expires_ok
FROM idem_begin('far', ttl => '1000 years');
SELECT status, created_at = now() AS created_now,
       expires_at = now() + interval '366000 days' AS expires_ok,
       expires_at > now() + interval '1002 years' AND
       expires_at < now() + interval '1003 years' AS past_1002_years
FROM idem_begin('far-days', ttl => '366000 days');
SELECT n, try(stmt) FROM (VALUES
  (1, $$SELECT status FROM idem_begin('far2', ttl => '1000 years 1 month')$$),
  (2, $$SELECT status FROM idem_begin('far2', ttl => '366001 days')$$),
  (3, $$SELECT status FROM idem_begin('far2', ttl => '8784025 hours')$$),
  (4, $$SELECT status FROM idem_begin('far2', ttl => '1000 years -366001 days')$$),
  (5, $$SELECT status FROM idem_begin('far2', ttl => '1001 years -366 days')$$),
  (6, $$SELECT idem_once('far2', ttl => '250000 years')::text$$),
  (7, $$SELECT status FROM idem_lease('far2', ttl => '250000 years')$$),
  (8, $$SELECT status FROM idem_lease('far2', lease => '250000 years')$$),
  (9, $$SELECT status FROM idem_lease('far2', ttl => '1 hour', lease => '1001 years')$$)
) t(n, stmt) ORDER BY n;
ROLLBACK;
SELECT keys_state() = :'s0' AS unchanged;

------------------------------------------------------------------------
-- fingerprint domains: the jsonb encoding is a byte stream anyone can send
-- as bytea, so its digest can be matched by hand; a key still never lets a
-- bytea or text request match a jsonb one (or the reverse)
------------------------------------------------------------------------
-- '{"a": 1}' encoded as idem_fingerprint.c does: prefix, '{', key "a", numeric 1, '}'
SELECT convert_to(E'idempotency:jsonb:v1\n', 'UTF8')
       || '\x7b6b00000001616e00000001317d'::bytea AS forged \gset
SELECT idem_fingerprint('{"a": 1}'::jsonb) = idem_fingerprint(:'forged'::bytea) AS digests_equal;
BEGIN;
SELECT status FROM idem_begin('fp-dom', '{"a": 1}'::jsonb);
SELECT idem_finish('fp-dom', 201, '{"secret": "jsonb"}');
COMMIT;
SELECT status, response_code, response_body FROM idem_begin('fp-dom', :'forged'::bytea);
SELECT status, response_code FROM idem_begin('fp-dom', '{"a": 1}'::jsonb);
-- the other way round: a bytea key, then its jsonb look-alike
BEGIN;
SELECT status FROM idem_begin('fp-dom-2', :'forged'::bytea);
SELECT idem_finish('fp-dom-2', 201, '{"secret": "bytea"}');
COMMIT;
SELECT status, response_code, response_body FROM idem_begin('fp-dom-2', '{"a": 1}'::jsonb);
SELECT status, response_code, response_body FROM idem_lease('fp-dom-2', '{"a": 1}');
SELECT status, response_code FROM idem_begin('fp-dom-2', :'forged'::bytea);
-- the kind is stored as the first byte, before the digest
SELECT key, encode(substring(fingerprint FROM 1 FOR 1), 'escape') AS kind, length(fingerprint) AS len
FROM idem_keys WHERE key LIKE 'fp-dom%' ORDER BY key COLLATE "C";
-- a record written before 0.3.0 (digest only) matches by digest, as it did
UPDATE idem_keys SET fingerprint = substring(fingerprint FROM 2) WHERE key = 'fp-dom';
SELECT status, response_code FROM idem_begin('fp-dom', '{"a": 1}'::jsonb);
SELECT status, response_code FROM idem_begin('fp-dom', '{"a": 2}'::jsonb);
DELETE FROM idem_keys WHERE key LIKE 'fp-dom%';

------------------------------------------------------------------------
-- header values: no C1 control, line or paragraph separator, or
-- bidirectional control (marks, embeddings, overrides, isolates); other
-- characters beyond ASCII are fine, whatever bytes encode them (U+00C5 is
-- C3 85 in UTF-8, U+2026 is E2 80 A6), a zero-width space too
------------------------------------------------------------------------
BEGIN;
SELECT status FROM idem_begin_full('hdr-cp');
SELECT keys_state() AS s0 \gset
SELECT n, esc(v) AS value, try(format('SELECT idem_finish(%L, 200, response_headers => jsonb_build_object(%L, %L))',
                                      'hdr-cp', 'X-V', v)) AS result
FROM (VALUES (1, 'a' || chr(133) || 'b'), (2, chr(128)), (3, chr(159)), (4, 'a' || chr(8232)),
             (5, chr(8233)), (6, 'x' || chr(8234)), (7, chr(8238) || 'txt.exe'), (8, chr(8294)),
             (9, chr(8297)), (10, 'a' || chr(8206)), (11, chr(8207)), (12, chr(1564))) t(n, v)
ORDER BY n;
SELECT n, try(stmt) FROM (VALUES
  (13, $$SELECT idem_finish('hdr-cp', 200, response_headers => jsonb_build_object('X-V', jsonb_build_array('ok', chr(133))))$$),
  (14, $$SELECT idem_finish('hdr-cp', 200, response_headers => '{"X-V": "\u2028"}')$$)
) v(n, stmt)
ORDER BY n;
SELECT keys_state() = :'s0' AS unchanged;
SELECT idem_finish('hdr-cp', 200, response_headers => jsonb_build_object(
  'X-Latin', chr(197) || chr(160) || 'é', 'X-Dots', chr(8230), 'X-Zwsp', chr(8203),
  'X-Emoji', chr(128512)));
COMMIT;
SELECT esc(response_headers ->> 'X-Latin') AS latin, esc(response_headers ->> 'X-Dots') AS dots,
       esc(response_headers ->> 'X-Zwsp') AS zwsp, esc(response_headers ->> 'X-Emoji') AS emoji
FROM idem_begin_full('hdr-cp');
DELETE FROM idem_keys WHERE key = 'hdr-cp';

DROP FUNCTION try(text);
DROP FUNCTION code(text);
DROP FUNCTION esc(text);
DROP FUNCTION cps(text);
DROP FUNCTION keys_state();
DROP FUNCTION body();
DROP FUNCTION body_bytea();
DROP FUNCTION mib();
DROP FUNCTION mib_bytea(int);
DROP FUNCTION deep(int, text, text);
DROP FUNCTION deep_obj(int, text, text);
TRUNCATE idem_keys;
\if :need_utf8_db
\c :regress_db
DROP DATABASE regress_idem_hostile;
\endif
