# The sweeper in a cluster of many databases (database-per-tenant SaaS):
#
# - 1,000 databases that all have the extension are swept completely within
#   one sweep_interval, each with its own row in idem_sweeper_status;
# - more databases than idempotency.max_databases are still swept, and the
#   log says which statuses and counters could not be kept (no silent drop);
# - one database's trouble holds up no other's: a worker that cannot get a
#   catalog lock fails after lock_timeout, a worker past
#   idempotency.sweep_worker_timeout is terminated, and the other databases
#   are swept meanwhile; a database with a backlog is finished in turns.
#
# IDEM_TEST_DATABASES overrides the 1,000 (each database is a file copy of
# a small template, about 7.5 MB).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FindBin;
use lib $FindBin::RealBin;
use IdemPoll;

my $N = $ENV{IDEM_TEST_DATABASES} // 1000;
$IdemPoll::SOON = 20;

# A cluster with the sweeper off, a template database "tpl" with the
# extension, one expired key and one live key, and $n copies of it named
# tenant_1 .. tenant_$n.
sub new_cluster
{
	my ($name, $n, %conf) = @_;
	my %settings = (
		shared_preload_libraries => "'idempotency'",
		'idempotency.sweeper' => 'off',
		fsync => 'off',
		log_line_prefix => "'%m [%p] %b '",
		%conf);
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		join("\n", map { "$_ = $settings{$_}" } sort keys %settings));
	$node->start;
	$node->safe_psql('postgres', 'CREATE DATABASE tpl');
	$node->safe_psql('tpl', q{
CREATE EXTENSION idempotency;
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key)
VALUES (now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'expired'),
       (now(), now() + interval '1 day', 200, 'c', '', 'live');});
	my $t0 = time;
	$node->safe_psql('postgres',
		join('', map { "CREATE DATABASE tenant_$_ TEMPLATE tpl STRATEGY file_copy;\n" } 1 .. $n));
	note sprintf('%d databases created in %.1f s', $n, time - $t0);
	return $node;
}

sub set_conf
{
	my ($node, %conf) = @_;
	$node->safe_psql('postgres',
		join('', map { "ALTER SYSTEM SET $_ = '$conf{$_}';\n" } sort keys %conf)
		  . 'SELECT pg_reload_conf();');
	return;
}

sub expired_left
{
	my ($node, $db, $prefix) = @_;
	return $node->safe_psql($db, "SELECT count(*) FROM idem_keys WHERE key LIKE '$prefix%'");
}

subtest "$N databases are swept within one sweep_interval" => sub {
	my $node = new_cluster('many', $N, 'idempotency.sweep_interval' => "'60s'");
	my $with_ext = $N + 1;    # the copies and tpl; not postgres
	my $t0 = time;
	set_conf($node, 'idempotency.sweeper' => 'on');
	ok(poll($node, 'tpl', q{
SELECT count(*) FROM idem_sweeper_status WHERE keys_removed = 1 AND last_error IS NULL},
			"$with_ext", 60),
		"every one of the $with_ext databases with the extension has a status: one key removed, no error");
	my $seen = time - $t0;
	my $pass = $node->safe_psql('tpl', q{
SELECT round(extract(epoch FROM max(last_start + last_duration) - min(last_start))::numeric, 2)
FROM idem_sweeper_status});
	note sprintf('first pass over %d databases: %.2f s from first start to last end '
		  . '(all statuses seen after %.1f s)', $N + 2, $pass, $seen);
	cmp_ok($pass, '<', 60, 'the pass took less than the 60 s sweep_interval');
	is($node->safe_psql('tpl', q{
SELECT count(*) FROM idem_sweeper_status WHERE datname = 'postgres'}), '0',
		'a database without the extension has no status');
	for my $i (1, int($N / 2), $N)
	{
		is($node->safe_psql("tenant_$i",
				q{SELECT string_agg(key, ',' ORDER BY key) FROM idem_keys}),
			'live', "tenant_$i: the expired key is gone, the live key stays");
	}
	$node->stop;
};

subtest 'databases beyond idempotency.max_databases are swept, and the log says what is not shown' => sub {
	my $n = 20;
	my $node = new_cluster('overflow', $n,
		'idempotency.max_databases' => 16,
		'idempotency.sweep_interval' => "'200ms'");
	set_conf($node, 'idempotency.sweeper' => 'on');
	for my $i (1 .. $n)
	{
		ok(poll($node, "tenant_$i", q{SELECT count(*) FROM idem_keys WHERE key = 'expired'}, '0'),
			"tenant_$i is swept");
	}
	is($node->safe_psql('tpl', 'SELECT count(*) FROM idem_sweeper_status'), '16',
		'16 statuses are kept');
	ok($node->wait_for_log(qr/\d+ databases with the extension have no status in idem_sweeper_status/),
		'the sweeper logs how many databases have no status');
	# counters: 17 databases count calls into 16 slots
	$node->safe_psql("tenant_$_", q{SELECT idem_once('m')}) for 1 .. 17;
	ok($node->wait_for_log(qr/idempotency calls in database "tenant_\d+" are not counted in idem_stats/),
		'a database whose calls find no counter slot says so in the log');
	$node->stop;
};

subtest 'one database\'s trouble holds up no other\'s' => sub {
	my $node = new_cluster('trouble', 4, 'idempotency.sweep_interval' => "'200ms'");
	set_conf($node, 'idempotency.sweeper' => 'on');
	ok(poll($node, 'tpl', q{SELECT count(*) FROM idem_sweeper_status WHERE last_error IS NULL}, '5'),
		'all five databases swept once');

	# a catalog lock the worker needs, held by an open transaction
	my $locker = $node->background_psql('tenant_1');
	$locker->query_safe('BEGIN');
	$locker->query_safe('LOCK pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE');
	ok(poll($node, 'tpl', q{
SELECT last_error LIKE '%lock timeout%' FROM idem_sweeper_status WHERE datname = 'tenant_1'}, 't'),
		'tenant_1: the pass fails after lock_timeout, and says so');
	add_expired($node, 'tenant_2', 'during-lock-', 10);
	ok(poll($node, 'tenant_2', q{SELECT count(*) FROM idem_keys WHERE key LIKE 'during-lock-%'}, '0'),
		'tenant_2 is swept meanwhile');
	$locker->query_safe('COMMIT');
	$locker->quit;
	ok(poll($node, 'tpl', q{
SELECT last_error IS NULL FROM idem_sweeper_status WHERE datname = 'tenant_1'}, 't'),
		'tenant_1: once the lock is gone its pass succeeds again');

	# a worker that runs past its timeout: one batch too big for it
	set_conf($node, 'idempotency.sweeper' => 'off');
	ok(poll($node, 'tpl',
			q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'idempotency sweeper'}, '0'),
		'no worker runs');
	add_expired($node, 'tenant_3', 'backlog-', 1_000_000);
	set_conf($node,
		'idempotency.sweep_batch_size' => 1_000_000,
		'idempotency.sweep_worker_timeout' => '100ms',
		'idempotency.sweeper' => 'on');
	ok(poll($node, 'tpl', q{
SELECT last_error LIKE 'sweep did not finish within idempotency.sweep_worker_timeout%'
FROM idem_sweeper_status WHERE datname = 'tenant_3'}, 't', 60),
		'tenant_3: a worker past sweep_worker_timeout is terminated, and the pass recorded as failed');
	ok($node->log_contains(qr/pass over database "tenant_3" failed: sweep did not finish/),
		'and logged');
	add_expired($node, 'tenant_4', 'during-timeout-', 10);
	ok(poll($node, 'tenant_4', q{SELECT count(*) FROM idem_keys WHERE key LIKE 'during-timeout-%'}, '0'),
		'tenant_4 is swept while tenant_3\'s workers keep running out of time');
	isnt(expired_left($node, 'tenant_3', 'backlog-'), '0',
		'tenant_3 keeps its backlog: a terminated batch rolls back');

	# with batches that fit, the backlog goes in turns of about a second each
	set_conf($node,
		'idempotency.sweep_batch_size' => 10_000,
		'idempotency.sweep_worker_timeout' => '60s');
	ok(poll($node, 'tenant_3', q{SELECT count(*) FROM idem_keys WHERE key LIKE 'backlog-%'}, '0', 120),
		'tenant_3\'s backlog is swept once its batches fit the timeout');
	is($node->safe_psql('tpl', q{
SELECT count(*) FROM idem_sweeper_status WHERE last_error IS NOT NULL}), '0',
		'no database has an error left');
	$node->stop;
};

subtest 'a backlog in one database is worked off in turns, every other database keeps its interval' => sub {
	# the backlog shares one expires_at (one transaction's keys) and an old
	# snapshot keeps its deleted index entries from being marked dead: the
	# case in which every batch used to walk them all again.  Small batches
	# make it last: passes follow one another while it does, and tenant_2
	# must still be swept every 2 s interval.
	my $node = new_cluster('backlog', 2,
		'idempotency.sweep_interval' => "'2s'",
		'idempotency.sweep_batch_size' => 1000);
	my $snapshot = $node->background_psql('tenant_1');
	# its timeout counts per query, not from its start: it stays idle for
	# as long as the backlog lasts, however slow the machine
	$snapshot->set_query_timer_restart();
	$snapshot->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$snapshot->query_safe('SELECT count(*) FROM idem_keys');
	add_expired($node, 'tenant_1', 'backlog-', 2_000_000);
	set_conf($node, 'idempotency.sweeper' => 'on');
	for my $round (1 .. 2)
	{
		ok(poll($node, 'tpl', q{SELECT count(*) FROM idem_sweeper_status WHERE datname = 'tenant_1'}, '1'),
			"round $round: tenant_1's backlog is being swept");
		add_expired($node, 'tenant_2', "while-$round-", 10);
		ok(poll($node, 'tenant_2', "SELECT count(*) FROM idem_keys WHERE key LIKE 'while-$round-%'", '0', 6),
			"round $round: tenant_2 is swept within its interval (and a little)");
		isnt(expired_left($node, 'tenant_1', 'backlog-'), '0',
			"round $round: ... while tenant_1 still has its backlog");
	}
	# however fast the machine: the backlog shrinks until it is gone, never
	# stalling for a minute
	my ($left, $last, $stalled_since) = (undef, undef, time);
	for (;;)
	{
		$left = expired_left($node, 'tenant_1', 'backlog-');
		last if $left eq '0';
		if (!defined $last || $left < $last) { ($last, $stalled_since) = ($left, time); }
		last if time - $stalled_since > 60;
		usleep(500_000);
	}
	is($left, '0', 'tenant_1\'s backlog is swept in the end, shrinking all the while');
	$snapshot->query_safe('COMMIT');
	$snapshot->quit;
	$node->stop;
};

subtest 'with fewer free worker slots than sweep_workers, a pass still visits every database' => sub {
	# the launcher, the logical replication launcher and one free slot
	my $node = new_cluster('slots', 6,
		max_worker_processes => 3,
		'idempotency.sweep_interval' => "'60s'");
	set_conf($node, 'idempotency.sweeper' => 'on');
	ok(poll($node, 'tpl', q{SELECT count(*) FROM idem_sweeper_status WHERE keys_removed = 1}, '7', 30),
		'all seven databases are swept in the first pass, one worker at a time');
	ok($node->log_contains(qr/idempotency sweeper could not start a worker/),
		'the log says a worker could not be started');
	my $lines = () = slurp_file($node->logfile) =~ /idempotency sweeper could not start a worker/g;
	is($lines, 1, 'once (at most once an interval), not once per database');
	$node->stop;
};

done_testing();
