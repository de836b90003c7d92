# pg_dump and restore of an application database that uses the extension.
#
# The key records are application data (pg_extension_config_dump), so a
# dump carries them with the business tables.  Database "app" holds the
# extension, a business table and keys of every kind: jsonb, text and bytea
# requests, scopes, idem_once messages, a NULL body, requests and responses
# of a few megabytes (TOASTed), and keys that have expired but were not
# swept.  It is dumped in custom format and restored with pg_restore into
# "restored", and dumped as plain SQL and loaded with psql into "plain".
# In every copy: each request replays exactly the row it replays in "app"
# (status, code, body, times), a different body stays a mismatch, expired
# keys stay absent (and start again), new keys start, and the key table
# keeps its definition, privileges and place in the extension.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use IdemRequests;
use Time::HiRes qw(time);

my $t0 = time;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
# sweeper off: the expired keys must still be in the table when it is dumped
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
idempotency.sweeper = off
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE app');

# The application (IdemRequests.pm): requests records every request sent so
# far and what a retry must get; begin_request() sends one again.  Both are
# dumped with the application.
$node->safe_psql(
	'app', "CREATE EXTENSION idempotency;\n" . $IdemRequests::schema . q{

-- 50 of each variant, a third of them scoped; some without a response body
INSERT INTO requests
SELECT CASE WHEN g % 3 = 0 THEN 'acct_' || g % 7 ELSE '' END, k || '-' || g, k,
       CASE WHEN k = 'jsonb' THEN jsonb_build_object('amount', g * 1.50, 'to', 'acct_' || g % 5,
                                                     'lines', jsonb_build_array(g, 'x', NULL, true)) END,
       CASE WHEN k = 'text' THEN '{"amount":' || g || '}' END,
       CASE WHEN k = 'bytea' THEN sha256(g::text::bytea) || '\x00ff'::bytea END,
       '1 day', 200 + g % 5,
       CASE WHEN g % 4 = 0 THEN NULL
            ELSE jsonb_build_object('id', g, 'kind', k, 'ok', true, 'price', g / 3.0) END,
       'replay'
FROM generate_series(1, 50) g, unnest(ARRAY['jsonb', 'text', 'bytea']) k;
-- no request body at all, and messages of a consumer
INSERT INTO requests VALUES ('', 'no-body', 'jsonb', NULL, NULL, NULL, '1 day', 204, NULL, 'replay');
INSERT INTO requests
SELECT 'consumer', 'msg-' || g, 'once', NULL, NULL, NULL, '7 days', 0, NULL, 'replay'
FROM generate_series(1, 20) g;
-- big bodies: a request of ~2 MB, a response of ~1.3 MB, both
-- incompressible enough to be stored out of line
INSERT INTO requests
SELECT '', 'big-' || g, 'jsonb',
       jsonb_build_object('blob', (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 60000) i)),
       NULL, NULL, '1 day', 201,
       jsonb_build_object('items', (SELECT jsonb_agg(jsonb_build_object('n', i, 'h', md5(i::text || g)))
                                    FROM generate_series(1, 20000) i)),
       'replay'
FROM generate_series(1, 3) g;
-- keys that expire at once
INSERT INTO requests
SELECT '', 'expired-' || g, CASE WHEN g % 2 = 0 THEN 'jsonb' ELSE 'once' END,
       CASE WHEN g % 2 = 0 THEN jsonb_build_object('g', g) END, NULL, NULL,
       '1 millisecond', 201, '{"old": true}', 'started'
FROM generate_series(1, 10) g;
});
is( $node->safe_psql(
		'app', q{SELECT count(*) FROM requests r, handle(r) s WHERE s <> 'started'}),
	'0', 'app: every request started');
ok( $node->poll_query_until(
		'app',
		q{SELECT count(*) = 0 FROM requests r, idem_lookup(r.key, r.scope) l
WHERE r.expect = 'started' AND l.status <> 'absent'}),
	'app: the short-lived keys have expired');
is($node->safe_psql('app', q{SELECT count(*) FROM idem_keys WHERE expires_at <= now()}),
	'10', 'app: ... and are still in the key table');
is( $node->safe_psql(
		'app', q{
SELECT count(*) FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE c.relname = 'idem_keys' AND pg_relation_size(t.oid) > 0}),
	'1', 'app: the big bodies are stored out of line');

my $RETRIES = $IdemRequests::retries;
my $MISMATCHES = $IdemRequests::mismatches;
# The key table's definition, as far as a restore could change it.
my $DEFINITION = q{
SELECT concat_ws(E'\n',
  (SELECT string_agg(format('%s %s %s %s', attname, format_type(atttypid, atttypmod),
                            attnotnull, attcollation::regcollation), ', ' ORDER BY attnum)
   FROM pg_attribute WHERE attrelid = 'idem_keys'::regclass AND attnum > 0),
  (SELECT string_agg(pg_get_indexdef(indexrelid), ', ' ORDER BY indexrelid::regclass::text)
   FROM pg_index WHERE indrelid = 'idem_keys'::regclass),
  (SELECT array_to_string(reloptions, ',') || ' ' || coalesce(relacl::text, 'default acl')
   FROM pg_class WHERE oid = 'idem_keys'::regclass),
  (SELECT extconfig::regclass[]::text || ' ' || extversion FROM pg_extension WHERE extname = 'idempotency'),
  (SELECT count(*) || ' extension members'
   FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
     AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotency')),
  (SELECT count(*) || ' key rows, ' || count(*) FILTER (WHERE expires_at <= now()) || ' expired, '
          || sum(octet_length(response_body::text)) || ' body bytes' FROM idem_keys))};

my $retries = $node->safe_psql('app', $RETRIES);
my $mismatches = $node->safe_psql('app', $MISMATCHES);
my $definition = $node->safe_psql('app', $DEFINITION);
note "key table in app:\n$definition";
is(scalar(split /\n/, $retries),
	$node->safe_psql('app', 'SELECT count(*) FROM requests'),
	'app: one retry line per request');
like($retries, qr{^/big-1 replay 201 [0-9a-f]{32} \d{4}-}m,
	'app: the retry of a big request replays its big response');
is( $node->safe_psql(
		'app', q{
BEGIN;
SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status <> r.expect;
ROLLBACK;}),
	'0', 'app: live keys replay, expired keys start');

my $tmp = PostgreSQL::Test::Utils::tempdir;
$node->command_ok([ 'pg_dump', '-Fc', '-d', 'app', '-f', "$tmp/app.dump" ],
	'pg_dump -Fc');
$node->command_ok([ 'pg_dump', '-Fp', '-d', 'app', '-f', "$tmp/app.sql" ],
	'pg_dump plain SQL');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->safe_psql('postgres', 'CREATE DATABASE plain');
$node->command_checks_all(
	[ 'pg_restore', '--exit-on-error', '-d', 'restored', "$tmp/app.dump" ],
	0, [qr/^$/], [qr/^$/], 'pg_restore without error or warning');
$node->command_checks_all(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-o', '/dev/null', '-d', 'plain', '-f', "$tmp/app.sql" ],
	0, [qr/^$/], [qr/^$/], 'plain dump loads with psql without error or warning');

for my $db (qw(restored plain))
{
	subtest "database $db" => sub {
		is($node->safe_psql($db, $DEFINITION), $definition,
			"$db: key table, indexes, privileges, options, extension membership and rows as in app");
		is($node->safe_psql($db, $RETRIES), $retries,
			"$db: every retry returns what it returns in app");
		is( $node->safe_psql(
				$db, q{
BEGIN;
SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status <> r.expect;
ROLLBACK;}),
			'0', "$db: live keys replay, expired keys start");
		is( $node->safe_psql(
				$db, q{
SELECT count(*) FROM requests r, idem_lookup(r.key, r.scope) l
WHERE (l.status, l.response_code, l.response_body) IS DISTINCT FROM
      (CASE WHEN r.expect = 'replay' THEN 'completed' ELSE 'absent' END,
       CASE WHEN r.expect = 'replay' THEN nullif(r.code, 0) END,
       CASE WHEN r.expect = 'replay' THEN r.response END)}),
			'0', "$db: idem_lookup: live keys completed with their responses, expired absent");
		is($node->safe_psql($db, $MISMATCHES), $mismatches,
			"$db: a different body is the same mismatch as in app");
		is( $node->safe_psql(
				$db, q{
BEGIN;
SELECT count(*) FROM requests r, begin_request(r, true) b
WHERE r.kind <> 'once' AND r.expect = 'replay' AND b.status <> 'mismatch';
ROLLBACK;}),
			'0', "$db: ... which is a mismatch for every live key");

		# expired keys start again and are completed, this time for a day
		is( $node->safe_psql(
				$db, q{
UPDATE requests SET ttl = '1 day' WHERE expect = 'started';
SELECT count(*) FROM requests r, handle(r) s WHERE r.expect = 'started' AND s <> 'started';}),
			'0', "$db: expired keys start again");
		# new keys start
		$node->safe_psql(
			$db, q{
INSERT INTO requests
SELECT '', 'new-' || g, 'jsonb', jsonb_build_object('g', g), NULL, NULL, '1 day', 201,
       jsonb_build_object('new', g), 'replay'
FROM generate_series(1, 10) g;
INSERT INTO requests VALUES ('consumer', 'new-msg', 'once', NULL, NULL, NULL, '7 days', 0, NULL, 'replay');});
		is( $node->safe_psql(
				$db,
				q{SELECT count(*) FROM requests r, handle(r) s WHERE r.key LIKE 'new-%' AND s <> 'started'}),
			'0', "$db: new keys start");
		is( $node->safe_psql(
				$db,
				q{SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status <> 'replay'}),
			'0', "$db: and now every request replays");
		is( $node->safe_psql(
				$db, q{
SELECT count(*) FROM requests r
WHERE r.kind <> 'once'
  AND (SELECT count(*) FROM orders o WHERE o.scope = r.scope AND o.key = r.key)
      <> CASE WHEN r.expect = 'started' THEN 2 ELSE 1 END}),
			'0', "$db: one business row per request (two for an expired key done again)");
	};
}

$node->stop;
note sprintf('%.1f s', time - $t0);
done_testing();
