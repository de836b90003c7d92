# A blue/green move to a newer major by logical replication keeps every key.
#
# Blue is a cluster of the major this test runs on (15 outside the chroots); green
# is a server of a newer major that test/matrix.sh green start runs in the
# sid chroot (18), reached over loopback at 127.0.0.1:IDEM_GREEN_PORT.
# Blue completes keys, green subscribes to the key table and the
# application's tables, blue goes on completing keys (and checkpointing a
# lease) while replication runs, then writes stop, green catches up and
# becomes the primary.  On green every retry returns exactly what blue
# returned for it, created_at and expires_at included, mismatches stay
# mismatches, no work is done twice, the lease is resumed at its phase, and
# green's sweeper (off while it subscribes) then sweeps what expired.
#
# Without IDEM_GREEN_PORT it is skipped.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemPoll;
use IdemRequests;

my $green_port = $ENV{IDEM_GREEN_PORT};
plan skip_all => 'IDEM_GREEN_PORT (a newer server on 127.0.0.1) is not set; '
  . 'test/matrix.sh green start runs one'
  unless $green_port;

my $db = 'bluegreen';

# psql against green: one result, errors fatal unless $may_fail.
sub green
{
	my ($dbname, $sql, $may_fail) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1',
			'-d', "host=127.0.0.1 port=$green_port dbname=$dbname user=postgres",
			'-c', $sql
		],
		'>', \$out, '2>', \$err);
	chomp $out;
	die "green: $sql\n$err" if !$ok && !$may_fail;
	return wantarray ? ($ok, $out, $err) : $out;
}

# Poll green until $sql prints $expected.
sub green_poll
{
	my ($dbname, $sql, $expected, $secs) = @_;
	my $deadline = time + ($secs // 60);
	my $last;
	while (time < $deadline)
	{
		(undef, $last) = green($dbname, $sql, 1);
		return 1 if defined $last && $last eq $expected;
		select(undef, undef, undef, 0.1);
	}
	diag "green_poll timed out: $sql\nexpected $expected, last $last";
	return 0;
}

my $green_version = green('postgres', 'SHOW server_version_num');
note "green is PostgreSQL $green_version";

my $blue = PostgreSQL::Test::Cluster->new('blue');
$blue->init(allows_streaming => 'logical');
# Blue's sweeper is off too, so that the key that expires is still there to
# be swept by green.
$blue->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
idempotency.sweeper = off
listen_addresses = '127.0.0.1'
});
$blue->append_conf('pg_hba.conf', "host all all 127.0.0.1/32 trust\n");
$blue->start;
my $blue_version = $blue->safe_psql('postgres', 'SHOW server_version_num');
ok($green_version > $blue_version, "green ($green_version) is newer than blue ($blue_version)");

$blue->safe_psql('postgres', "CREATE DATABASE $db");
$blue->safe_psql($db, "CREATE EXTENSION idempotency; $IdemRequests::schema");

# Requests named $prefix-*, each handled once on blue.
sub record
{
	my ($prefix, $n) = @_;
	return $blue->safe_psql(
		$db, IdemRequests::live_requests_sql($prefix, $n) . qq{
SELECT count(*) FROM requests r, handle(r) s WHERE r.key LIKE '$prefix-%' AND s <> 'started';});
}
is(record('before', 50), '0', '200 keys completed on blue before replication');

# Green: the same schema, its sweeper off while it subscribes (a sweep on
# green of a key that blue then reuses would lose blue's update), then the
# subscription.
green('postgres', "DROP DATABASE IF EXISTS $db");
green('postgres', "CREATE DATABASE $db");
green($db, "CREATE EXTENSION idempotency; $IdemRequests::schema");
green('postgres', 'ALTER SYSTEM SET idempotency.sweeper = off');
green('postgres', 'SELECT pg_reload_conf()');

$blue->safe_psql($db, 'CREATE PUBLICATION blue_green FOR TABLE idem_keys, orders, requests');
my $blue_conn = 'host=127.0.0.1 port=' . $blue->port . " dbname=$db user=postgres";
green($db, "CREATE SUBSCRIPTION blue_green CONNECTION '$blue_conn' PUBLICATION blue_green");

# While the initial copy and then streaming run: more keys, a lease with a
# checkpoint, a key that expires.
my ($lease_token, $long_token) = ('', '');
for my $round (1 .. 5)
{
	is(record("during$round", 10), '0', "40 keys completed on blue during replication ($round)");
	if ($round == 2)
	{
		# one lease that runs out on green, one that is still held there
		$lease_token = $blue->safe_psql($db,
			q{SELECT token FROM idem_lease('job-1', '{"job": 1}', lease => '2 seconds')});
		$blue->safe_psql($db,
			qq{SELECT idem_checkpoint('job-1', '$lease_token', 'charged', '{"charge": "ch_9"}')});
		$long_token = $blue->safe_psql($db,
			q{SELECT token FROM idem_lease('job-2', '{"job": 2}', lease => '1 hour')});
		$blue->safe_psql($db,
			q{BEGIN; SELECT status FROM idem_begin('short', '{}', ttl => '1 second');
			  SELECT idem_finish('short', 200); COMMIT;});
	}
}

ok( green_poll($db,
		q{SELECT count(*) FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')}, '0'),
	'the initial copy finished');

# Cutover: writes stop on blue, green catches up, the subscription goes.
$blue->wait_for_catchup('blue_green');
my $blue_keys = $blue->safe_psql($db,
	q{SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', scope, key, state, created_at, expires_at,
	  response_code, fingerprint, response_body, lease_token, phase, phase_state),
	  ',' ORDER BY scope, key)) FROM idem_keys});
is(green($db,
		q{SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', scope, key, state, created_at, expires_at,
		  response_code, fingerprint, response_body, lease_token, phase, phase_state),
		  ',' ORDER BY scope, key)) FROM idem_keys}),
	$blue_keys, 'green has every key record of blue, byte for byte');
my $retries = $blue->safe_psql($db, $IdemRequests::retries);
my $mismatches = $blue->safe_psql($db, $IdemRequests::mismatches);
like($retries, qr/replay/, 'retries replay on blue');
unlike($retries, qr/ started /, 'no key starts again on blue');
like($mismatches, qr/mismatch/, 'other bodies are mismatches on blue');
unlike($mismatches, qr/ (replay|started) /, 'and nothing else');
green($db, 'DROP SUBSCRIPTION blue_green');
$blue->stop;

is(green($db, $IdemRequests::retries), $retries,
	'every retry on green returns what blue returned');
is(green($db, $IdemRequests::mismatches), $mismatches, 'mismatches stay mismatches');
is( green(
		$db, q{
SELECT count(*) FILTER (WHERE s = 'started') || ' ' || (SELECT count(*) FROM orders)
FROM requests r, handle(r) s}),
	'0 300', 'handling every request again on green does no work twice');

# The held lease: in_progress for others on green, its holder's token
# still fences (another is refused, its own checkpoints).
is(green($db, q{SELECT status FROM idem_lease('job-2', '{"job": 2}')}), 'in_progress',
	'a lease held on blue is in_progress for others on green');
my ($ok, $out, $err) = green($db, q{SELECT idem_checkpoint('job-2', gen_random_uuid(), 'x')}, 1);
like($err, qr/held by another token/, 'a checkpoint with another token is refused on green');
is(green($db, qq{SELECT idem_checkpoint('job-2', '$long_token', 'shipped') > now()}), 't',
	'the holder checkpoints on green with the token blue gave it');

# The short lease: runs out, then resumed at its checkpoint.
ok( green_poll($db, q{SELECT lease_expires_at < now() FROM idem_keys WHERE key = 'job-1'}, 't'),
	'the lease taken on blue runs out on green');
is( green(
		$db, q{
SELECT status || ' ' || phase || ' ' || state::text FROM idem_lease('job-1', '{"job": 1}')}),
	'resumed charged {"charge": "ch_9"}', 'the lease resumes on green at its phase and state');

# Green's sweeper on: the key that expired (nobody swept it yet) is swept.
is(green($db, q{SELECT count(*) FROM idem_keys WHERE key = 'short' AND expires_at < now()}), '1',
	'the key that expired came across unswept');
green('postgres', 'ALTER SYSTEM RESET idempotency.sweeper');
green('postgres', 'SELECT pg_reload_conf()');
ok(green_poll($db, q{SELECT count(*) FROM idem_keys WHERE key = 'short'}, '0'),
	'green sweeps what expired');
ok(green_poll($db,
		qq{SELECT keys_removed > 0 FROM idem_sweeper_status() WHERE datname = '$db'}, 't'),
	"green's sweeper says it removed it");

green('postgres', "DROP DATABASE $db");
done_testing();
