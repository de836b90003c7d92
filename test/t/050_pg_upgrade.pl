# pg_upgrade from an older major keeps every key working.
#
# A cluster of the older major (IDEM_UPGRADE_FROM, its install directory,
# e.g. /usr/lib/postgresql/17) gets completed keys of every kind, a key
# whose lease is live, one whose lease ran out after a checkpoint, keys that
# expired, and many expired keys for the sweeper.  pg_upgrade moves it to
# the major this test runs on.  Then every retry returns exactly what it
# returned before, mismatches stay mismatches, the live lease still fences
# its holder's token and stays in_progress for others, the run-out lease is
# resumed at its phase and state, and the sweeper empties the expired keys.
#
# Both majors need the extension installed: test/matrix.sh upgrade runs it
# in the sid chroot (17 from trixie beside 18).  Without IDEM_UPGRADE_FROM
# it is skipped.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use File::Temp qw(tempdir);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemPoll;
use IdemRequests;

my $from = $ENV{IDEM_UPGRADE_FROM};
plan skip_all => 'IDEM_UPGRADE_FROM (an older major\'s install directory) is not set; '
  . 'test/matrix.sh upgrade sets it'
  unless $from;

# The sweeper starts off on both, so that the expired keys are there to
# count after the upgrade; it is switched on for the end.
my $conf = q{
shared_preload_libraries = 'idempotency'
idempotency.sweep_interval = '1s'
idempotency.sweeper = off
};

# Checksums on both: 18's initdb turns them on by default, and pg_upgrade
# wants the two clusters alike.
my $old = PostgreSQL::Test::Cluster->new('old', install_path => $from);
$old->init(extra => ['--data-checksums']);
$old->append_conf('postgresql.conf', $conf);
$old->start;
my $old_version = $old->safe_psql('postgres', 'SHOW server_version');

# Some builds tag every user column with an attribute option, pg_attver
# (Debian's 15.20 and 17.12 do; it cannot be reset), that builds of a newer
# major from before it (18.6, 19~rc1) reject: pg_upgrade between such a
# pair fails for any table, with or without this extension.  Say so
# instead of failing on someone else's account.
my $tags = $old->safe_psql('postgres', q{
CREATE TEMP TABLE probe (a int);
SELECT count(*) FROM pg_attribute
WHERE attrelid = 'probe'::regclass AND attoptions::text LIKE '%pg_attver=%'});
if ($tags > 0)
{
	my $probe = PostgreSQL::Test::Cluster->new('probe');
	$probe->init;
	$probe->start;
	my ($ret, $out, $err) = $probe->psql('postgres',
		q{CREATE TEMP TABLE probe (a int); ALTER TABLE probe ALTER COLUMN a SET (pg_attver = 1)});
	my $new_version = $probe->safe_psql('postgres', 'SHOW server_version');
	$probe->stop;
	if ($ret != 0 && $err =~ /unrecognized parameter "pg_attver"/)
	{
		$old->stop;
		plan skip_all => "pg_upgrade from $old_version to $new_version cannot work on these builds: "
		  . "the old server tags every column with the attribute option pg_attver and the new "
		  . "one rejects it ($err); a plain table fails the same way";
	}
}
my $db = 'app';
$old->safe_psql('postgres', "CREATE DATABASE $db");
$old->safe_psql($db, "CREATE EXTENSION idempotency; $IdemRequests::schema");
my $ext_version =
  $old->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'});

# Completed keys of every kind, keys that expire at once, and 20,000
# expired ones for the sweeper.
is( $old->safe_psql(
		$db, IdemRequests::live_requests_sql('k', 25) . q{
INSERT INTO requests
SELECT '', 'k-expired-' || g, 'jsonb', jsonb_build_object('e', g), NULL, NULL, '1 millisecond',
       201, NULL, 'started'
FROM generate_series(1, 3) g;
SELECT count(*) FROM requests r, handle(r) s WHERE s <> 'started';}),
	'0', 'keys recorded on the old major');
ok( $old->poll_query_until(
		$db, q{
SELECT count(*) = 0 FROM requests r, idem_lookup(r.key, r.scope) l
WHERE r.expect = 'started' AND l.status <> 'absent'}),
	'short-lived keys expired');

# Leases: one live (an hour), one that runs out (a second) after a
# checkpoint; both tokens kept.
my ($live_token) = split /\|/, $old->safe_psql($db,
	q{SELECT token FROM idem_lease('lease-live', '{"job": 1}', lease => '1 hour')});
my ($lapsed_token) = split /\|/, $old->safe_psql($db,
	q{SELECT token FROM idem_lease('lease-lapsed', '{"job": 2}', lease => '1 second')});
$old->safe_psql($db,
	qq{SELECT idem_checkpoint('lease-live', '$live_token', 'charged', '{"charge": "ch_1"}')});
$old->safe_psql($db,
	qq{SELECT idem_checkpoint('lease-lapsed', '$lapsed_token', 'charged', '{"charge": "ch_2"}')});

add_expired($old, $db, 'swept-', 20000);

my $orders = $old->safe_psql($db, q{SELECT count(*) FROM orders});
my $retries = $old->safe_psql($db, $IdemRequests::retries);
my $mismatches = $old->safe_psql($db, $IdemRequests::mismatches);
like($retries, qr/replay/, 'retries replay on the old major');
is( $old->safe_psql(
		$db, q{
BEGIN;
SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status <> r.expect;
ROLLBACK;}),
	'0', 'live keys replay, expired ones start, on the old major');
like($mismatches, qr/mismatch/, 'other bodies are mismatches on the old major');
unlike($mismatches, qr/ (replay|started) /, 'and nothing else');
my $lease_live = $old->safe_psql($db, q{SELECT status FROM idem_lease('lease-live', '{"job": 1}')});
is($lease_live, 'in_progress', 'a live lease is in_progress for another caller');
$old->stop;

my $new = PostgreSQL::Test::Cluster->new('new');
$new->init(extra => ['--data-checksums']);
$new->append_conf('postgresql.conf', $conf);
my $new_version = $new->config_data('--version');
note "pg_upgrade from $old_version to $new_version";

# pg_upgrade writes its logs in the new data directory and needs a
# writable working directory.
my $cwd = tempdir(CLEANUP => 1);
chdir $cwd or die "chdir $cwd: $!";
command_ok(
	[
		'pg_upgrade', '--no-sync',
		'--old-datadir' => $old->data_dir,
		'--new-datadir' => $new->data_dir,
		'--old-bindir' => $old->config_data('--bindir'),
		'--new-bindir' => $new->config_data('--bindir'),
		'--socketdir' => $new->host,
		'--old-port' => $old->port,
		'--new-port' => $new->port,
		'--copy',
	],
	'pg_upgrade');
$new->start;

is( $new->safe_psql($db,
		q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
	$ext_version, 'the extension is at the same version');
is($new->safe_psql($db, $IdemRequests::retries), $retries,
	'every retry returns what it returned before the upgrade');
is($new->safe_psql($db, $IdemRequests::mismatches), $mismatches,
	'mismatches stay mismatches');
is( $new->safe_psql(
		$db, q{
SELECT count(*) FILTER (WHERE s = 'started') || ' ' || (SELECT count(*) FROM orders)
FROM requests r, handle(r) s WHERE r.expect = 'replay'}),
	"0 $orders", 'handling every live request again does no work twice');

# The live lease: still in_progress for others, its holder's token still
# fences (a checkpoint with it succeeds, a made-up one is refused).
is($new->safe_psql($db, q{SELECT status FROM idem_lease('lease-live', '{"job": 1}')}),
	'in_progress', 'the live lease is still in_progress for another caller');
my ($ret, $out, $err) = $new->psql($db,
	qq{SELECT idem_checkpoint('lease-live', gen_random_uuid(), 'x')});
like($err, qr/held by another token/, 'a checkpoint with another token is refused');
is($new->safe_psql($db,
		qq{SELECT idem_checkpoint('lease-live', '$live_token', 'shipped', '{"n": 3}') > now()}),
	't', 'the holder checkpoints with its token');
$new->safe_psql($db,
	qq{SELECT idem_finish('lease-live', 200, '{"done": 1}', token => '$live_token')});
is( $new->safe_psql(
		$db, q{SELECT status || ' ' || response_code FROM idem_lease('lease-live', '{"job": 1}')}),
	'replay 200', 'the holder finishes, and the key replays');

# The lapsed lease: resumed where its last checkpoint left it.
ok( $new->poll_query_until(
		$db, q{SELECT lease_expires_at < now() FROM idem_keys WHERE key = 'lease-lapsed'}),
	'the short lease has run out');
is( $new->safe_psql(
		$db, q{
SELECT status || ' ' || phase || ' ' || state::text || ' ' || attempts
FROM idem_lease('lease-lapsed', '{"job": 2}')}),
	'resumed charged {"charge": "ch_2"} 2', 'the run-out lease resumes at its phase and state');

# The sweeper: on again, it empties the expired keys.
is($new->safe_psql($db, q{SELECT count(*) FROM idem_keys WHERE key LIKE 'swept-%'}),
	'20000', 'the expired keys came across');
$new->safe_psql('postgres', q{ALTER SYSTEM SET idempotency.sweeper = on; SELECT pg_reload_conf()});
ok(poll($new, $db, q{SELECT count(*) FROM idem_keys WHERE expires_at < now()}, '0', 60),
	'the sweeper removes them on the new major');
ok( poll(
		$new, $db,
		qq{SELECT last_error IS NULL AND keys_removed > 0 FROM idem_sweeper_status() WHERE datname = '$db'},
		't'),
	'its status shows the visit');

chdir '/';
done_testing();
