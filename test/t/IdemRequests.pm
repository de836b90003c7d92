# Shared by the TAP tests that replay recorded requests (032, 033, 050, 051): the
# application side, created in a database after the extension.  requests
# records what was sent (kind jsonb, text, bytea or once; the body of its
# kind; ttl; the response to store; the status a retry must get);
# begin_request() sends a request again (with a different body if other);
# handle() is the request handler, recording one order per started key;
# $retries and $mismatches are what every retry, and every retry with
# another body, returns.
package IdemRequests;

use strict;
use warnings;

our $schema = q{
CREATE TABLE orders (scope text NOT NULL, key text NOT NULL);
CREATE TABLE requests (scope text NOT NULL, key text NOT NULL, kind text NOT NULL,
                       jbody jsonb, tbody text, bbody bytea, ttl interval NOT NULL,
                       code int NOT NULL, response jsonb, expect text NOT NULL,
                       PRIMARY KEY (scope, key));
CREATE FUNCTION begin_request(r requests, other boolean DEFAULT false)
RETURNS TABLE (status text, response_code int, response_body jsonb,
               created_at timestamptz, expires_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    IF r.kind = 'jsonb' THEN
        RETURN QUERY SELECT * FROM idem_begin(r.key,
            CASE WHEN other THEN coalesce(r.jbody, '{}') || '{"other": 1}' ELSE r.jbody END,
            r.scope, r.ttl);
    ELSIF r.kind = 'text' THEN
        RETURN QUERY SELECT * FROM idem_begin(r.key,
            CASE WHEN other THEN r.tbody || ' ' ELSE r.tbody END, r.scope, r.ttl);
    ELSIF r.kind = 'bytea' THEN
        RETURN QUERY SELECT * FROM idem_begin(r.key,
            CASE WHEN other THEN r.bbody || '\x00'::bytea ELSE r.bbody END, r.scope, r.ttl);
    ELSE
        RETURN QUERY SELECT CASE WHEN idem_once(r.key, r.scope, r.ttl)
                                 THEN 'started' ELSE 'replay' END,
                            NULL::int, NULL::jsonb, NULL::timestamptz, NULL::timestamptz;
    END IF;
END $$;
CREATE FUNCTION handle(r requests) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text;
BEGIN
    SELECT b.status INTO s FROM begin_request(r) b;
    IF s = 'started' AND r.kind <> 'once' THEN
        INSERT INTO orders VALUES (r.scope, r.key);
        PERFORM idem_finish(r.key, r.code, r.response, r.scope);
    END IF;
    RETURN s;
END $$;
};

# What every retry returns: the full row, the body as its md5, the times of
# started ones left out (they are now()).  Run in a transaction that rolls
# back, so that the expired keys started here stay as they are.
our $retries = q{
BEGIN;
SELECT string_agg(format('%s/%s %s %s %s %s %s', r.scope, r.key, b.status, b.response_code,
                         md5(b.response_body::text),
                         CASE WHEN b.status <> 'started' THEN b.created_at END,
                         CASE WHEN b.status <> 'started' THEN b.expires_at END),
                  E'\n' ORDER BY r.scope, r.key)
FROM requests r, begin_request(r) b;
ROLLBACK;};

# The same live keys sent with another body: every one a mismatch, with the
# stored times and no response.
our $mismatches = q{
BEGIN;
SELECT string_agg(format('%s/%s %s %s %s %s', r.scope, r.key, b.status, b.response_code,
                         b.created_at, b.expires_at), E'\n' ORDER BY r.scope, r.key)
FROM requests r, begin_request(r, true) b WHERE r.kind <> 'once' AND r.expect = 'replay';
ROLLBACK;};

# The INSERT of requests named $prefix-<kind>-<g>, g = 1..$n, for each of
# the four kinds: scopes, codes and responses vary with g, every one
# expected to replay.
sub live_requests_sql
{
	my ($prefix, $n) = @_;
	return qq{
INSERT INTO requests
SELECT CASE WHEN g % 3 = 0 THEN 'acct_' || g % 4 ELSE '' END, '$prefix-' || k || '-' || g, k,
       CASE WHEN k = 'jsonb' THEN jsonb_build_object('amount', g * 1.5, 'lines', jsonb_build_array(g, NULL)) END,
       CASE WHEN k = 'text' THEN '{"amount":' || g || '}' END,
       CASE WHEN k = 'bytea' THEN sha256(g::text::bytea) END,
       '1 day', CASE WHEN k = 'once' THEN 0 ELSE 200 + g % 3 END,
       CASE WHEN k = 'once' OR g % 4 = 0 THEN NULL ELSE jsonb_build_object('id', g, 'kind', k) END,
       'replay'
FROM generate_series(1, $n) g, unnest(ARRAY['jsonb', 'text', 'bytea', 'once']) k;};
}

1;
