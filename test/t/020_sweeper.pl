# Tests of the background sweeper (src/idem_sweeper.c): the launcher and its
# per-database workers, their settings, and how they behave around live
# transactions, DROP DATABASE, hot standby, promotion and crashes.
#
# Each scenario runs on its own throwaway cluster.  Waits are polls with a
# deadline; the only waits that expect nothing to happen (sweeper off, hot
# standby) are bounded observations, explained where they are made.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FindBin;
use lib $FindBin::RealBin;
use IdemPoll;

# Deadline for things that should happen within a few 200 ms intervals; it
# is generous so that a loaded machine does not make the test flaky.
my $SOON = 10;

# Build a cluster with the library preloaded and a 200 ms sweep interval.
# %conf adds or overrides postgresql.conf settings (values are verbatim).
sub new_node
{
	my ($name, %conf) = @_;
	my $streaming = delete $conf{allows_streaming} // 0;
	my %settings = (
		shared_preload_libraries => "'idempotency'",
		'idempotency.sweep_interval' => "'200ms'",
		# %b names the backend type, so sweeper lines can be told apart
		log_line_prefix => "'%m [%p] %b %q%a '",
		log_statement => "'ddl'",
		%conf);
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => $streaming);
	$node->append_conf('postgresql.conf',
		join("\n", map { "$_ = $settings{$_}" } sort keys %settings));
	return $node;
}

# poll() and add_expired() are in IdemPoll.pm.

# The same, for a step the rest of the scenario cannot do without.
sub must_poll
{
	my ($node, $db, $sql, $expected, $secs, $what) = @_;
	poll($node, $db, $sql, $expected, $secs) or die "timed out: $what\n";
	return;
}

# The launcher is between passes: sleeping on its latch, no worker running.
my $LAUNCHER_IDLE = q{
SELECT count(*) FILTER (WHERE backend_type = 'idempotency sweeper') = 0
   AND count(*) FILTER (WHERE backend_type = 'idempotency sweeper launcher'
                          AND wait_event = 'Extension') = 1
FROM pg_stat_activity};

my $LAUNCHER_PID = q{
SELECT pid FROM pg_stat_activity
WHERE backend_type = 'idempotency sweeper launcher'};

# Turn the sweeper on or off with ALTER SYSTEM and a reload.  For "off",
# return only when no further pass can start: a new session sees the new
# value only after the postmaster has forwarded SIGHUP to its children, and
# a launcher then seen asleep between passes reloads before its next pass
# (and it reloads before each worker inside a pass).
sub set_sweeper
{
	my ($node, $value) = @_;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET idempotency.sweeper = $value;\n"
		  . "SELECT pg_reload_conf();");
	must_poll($node, 'postgres', 'SHOW idempotency.sweeper', $value, $SOON,
		"idempotency.sweeper = $value reaches new sessions");
	must_poll($node, 'postgres', $LAUNCHER_IDLE, 't', $SOON,
		'launcher idle after turning the sweeper off')
	  if $value eq 'off';
	return;
}

# The start of the last pass over $datname, '-infinity' if none yet.
sub last_start
{
	my ($node, $db, $datname) = @_;
	return $node->safe_psql($db,
		"SELECT coalesce(max(last_start), '-infinity') FROM idem_sweeper_status "
		  . "WHERE datname = '$datname'");
}

# Wait until $n more passes over $datname have finished.
sub wait_passes
{
	my ($node, $db, $datname, $n) = @_;
	for (1 .. $n)
	{
		my $prev = last_start($node, $db, $datname);
		return 0
		  unless poll($node, $db,
			"SELECT count(*) FROM idem_sweeper_status "
			  . "WHERE datname = '$datname' AND last_start > '$prev'",
			'1');
	}
	return 1;
}

# Record $n live keys $prefix1..$prefixN (ttl 7 days) with idem_once.
sub add_live
{
	my ($node, $db, $prefix, $n) = @_;
	$node->safe_psql($db,
		"SELECT count(*) FROM generate_series(1, $n) g, "
		  . "idem_once('$prefix' || g) AS x(o) WHERE o");
	return;
}

sub count_keys
{
	my ($node, $db, $where) = @_;
	return $node->safe_psql($db, "SELECT count(*) FROM idem_keys WHERE $where");
}

# Lines of the server log, shutdowns left out, that show the sweeper failing:
# a failed pass, an ERROR/FATAL/PANIC/WARNING reported by a sweeper process,
# a sweeper process exiting abnormally, or no slot for a worker.
sub sweeper_problems
{
	my ($node, $exclude) = @_;
	my ($stopping, @log) = (0);
	# a shutdown makes the launcher exit with code 1, like any bgworker
	for (split /\n/, slurp_file($node->logfile))
	{
		$stopping = 1 if /received (?:smart|fast|immediate) shutdown request/;
		$stopping = 0 if /database system is ready to accept connections/;
		push @log, $_ unless $stopping;
	}
	my @lines = grep {
		/idempotency sweeper: pass over database "[^"]*" failed/
		  || /\] idempotency sweeper(?: launcher)? +(?:WARNING|ERROR|FATAL|PANIC):/
		  || /background worker "idempotency sweeper[^"]*" \(PID \d+\) (?:exited with exit code [1-9]|was terminated)/
		  || /idempotency sweeper could not start a worker/
	} @log;
	@lines = grep { !/$exclude/ } @lines if defined $exclude;
	# a few lines are evidence enough; a loop may log thousands
	return join "\n", @lines if @lines <= 6;
	return join "\n", @lines[ 0 .. 5 ], '... and ' . (@lines - 6) . ' more';
}

# Run one scenario as a subtest; a die inside it fails the subtest without
# stopping the scenarios after it.
sub scenario
{
	my ($name, $code) = @_;
	subtest $name => sub {
		my $t0 = time;
		my $ok = eval { $code->(); 1 };
		fail("scenario died: $@") unless $ok;
		note sprintf("%s: %.1f s", $name, time - $t0);
	};
	return;
}

# ---------------------------------------------------------------------------
# 1. Two databases with the extension are swept; a third one without it,
#    holding a table (and a function) with the extension's names in public,
#    is left alone.  The status view reports the pass.
# ---------------------------------------------------------------------------
scenario 'two databases swept, one without the extension untouched' => sub {
	# A long interval: the only pass is the one at server start, so the
	# view's content is stable while it is checked.
	my $node = new_node('databases', 'idempotency.sweep_interval' => "'1h'");
	$node->start;

	for my $db (qw(db1 db2 db3))
	{
		$node->safe_psql('postgres', "CREATE DATABASE $db");
	}
	for my $db (qw(db1 db2))
	{
		$node->safe_psql($db, 'CREATE EXTENSION idempotency');
		add_live($node, $db, 'live', 20);
	}
	# db1: expired rows written directly, and leased keys (state 'p', whose
	# work was never finished): 5 with a 1 ms ttl, 3 live; db2: keys made
	# with a 1 ms ttl
	add_expired($node, 'db1', 'old', 300);
	$node->safe_psql('db1',
		"SELECT count(*) FROM generate_series(1, 5) g, "
		  . "idem_lease('lease' || g, ttl => '1 millisecond') AS l WHERE l.status = 'started';"
		  . "SELECT count(*) FROM generate_series(1, 3) g, "
		  . "idem_lease('live-lease' || g) AS l WHERE l.status = 'started'");
	must_poll($node, 'db1',
		"SELECT count(*) FROM idem_keys WHERE state = 'p' AND expires_at > now()", '3',
		$SOON, 'db1 leases with a 1 ms ttl expire');
	$node->safe_psql('db2',
		"SELECT count(*) FROM generate_series(1, 150) g, "
		  . "idem_once('old' || g, ttl => '1 millisecond') AS x(o) WHERE o");
	must_poll($node, 'db2',
		"SELECT count(*) FROM idem_keys WHERE expires_at > now()", '20',
		$SOON, 'db2 keys with a 1 ms ttl expire');

	# db3 has no extension, but a look-alike table full of expired-looking
	# rows, and an idem_sweep() that would empty it if it were ever called.
	$node->safe_psql('db3', q{
CREATE TABLE public.idem_keys (
    created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,
    response_code int, state "char" NOT NULL, scope text NOT NULL,
    key text NOT NULL, fingerprint bytea, response_body jsonb,
    PRIMARY KEY (scope, key));
CREATE INDEX ON public.idem_keys (expires_at);
CREATE FUNCTION public.idem_sweep(batch int) RETURNS bigint LANGUAGE sql
    AS 'WITH d AS (DELETE FROM public.idem_keys RETURNING 1) SELECT count(*) FROM d';});
	add_expired($node, 'db3', 'old', 100);

	# The pass at start-up sweeps everything.
	$node->restart;
	must_poll($node, 'db1',
		'SELECT count(*) FROM idem_sweeper_status', '2', $SOON,
		'both databases swept at start-up');
	must_poll($node, 'db1', $LAUNCHER_IDLE, 't', $SOON,
		'start-up pass over');

	is( $node->safe_psql('db1', q{
SELECT datname, keys_removed, last_error IS NULL,
       last_duration >= interval '0', last_start <= now()
FROM idem_sweeper_status ORDER BY datname}),
		"db1|305|t|t|t\ndb2|150|t|t|t",
		'view: one row per database with the extension, keys counted, no error');
	is( $node->safe_psql('db1', q{
SELECT datname, keys_swept FROM idem_stats
WHERE datname IN ('db1', 'db2') ORDER BY datname}),
		"db1|305\ndb2|150",
		'idem_stats counts the keys the sweeper removed, per database');
	my %live = (db1 => 23, db2 => 20);
	for my $db (qw(db1 db2))
	{
		is(count_keys($node, $db, 'expires_at <= now()'),
			'0', "$db: expired keys removed, leased ones too");
		is(count_keys($node, $db, 'expires_at > now()'),
			$live{$db}, "$db: live keys kept, leased ones too");
	}
	is(count_keys($node, 'db3', 'true'), '100',
		'db3 (no extension): its own idem_keys untouched');

	# Keep sweeping for a few passes at 200 ms: still nothing happens to db3.
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET idempotency.sweep_interval = '200ms';\n"
		  . "SELECT pg_reload_conf();");
	# pass k starts after the reload; pass k+1 lists databases after that and
	# is over once pass k+2 starts
	ok(wait_passes($node, 'db1', 'db1', 3), 'three more passes');
	is(count_keys($node, 'db3', 'true'), '100',
		'db3 still untouched after more passes');
	is(count_keys($node, 'db1', 'true') . '/' . count_keys($node, 'db2', 'true'),
		'23/20', 'live keys still there');
	is($node->safe_psql('db1',
			'SELECT string_agg(datname, \',\' ORDER BY datname) '
		  . 'FROM idem_sweeper_status WHERE last_error IS NULL'),
		'db1,db2', 'view lists only db1 and db2, without errors');
	is(sweeper_problems($node), '', 'no sweeper error in the log');
	$node->stop;
};

# ---------------------------------------------------------------------------
# 2. An extension created after the server started is swept within a couple
#    of intervals, in a database that existed at start and in a new one.
# ---------------------------------------------------------------------------
scenario 'extension created while the server runs' => sub {
	my $node = new_node('late');
	$node->start;
	must_poll($node, 'postgres', $LAUNCHER_IDLE, 't', $SOON, 'launcher up');
	my $deadline = 3;    # 15 intervals; a couple are enough on an idle box

	# in a database that existed when the server started
	$node->safe_psql('postgres', 'CREATE EXTENSION idempotency');
	add_live($node, 'postgres', 'live', 10);
	add_expired($node, 'postgres', 'old', 100);
	my $t0 = time;
	ok(poll($node, 'postgres',
		'SELECT count(*) FROM idem_keys WHERE expires_at <= now()', '0',
		$deadline), 'postgres: swept after CREATE EXTENSION');
	note sprintf('postgres: swept %.2f s after CREATE EXTENSION', time - $t0);

	# in a database created later, visited by a few passes before it gets
	# the extension
	$node->safe_psql('postgres', 'CREATE DATABASE late');
	ok(wait_passes($node, 'postgres', 'postgres', 3),
		'three passes with database "late" still without the extension');
	$node->safe_psql('late', 'CREATE EXTENSION idempotency');
	add_live($node, 'late', 'live', 10);
	add_expired($node, 'late', 'old', 100);
	$t0 = time;
	ok(poll($node, 'late',
		'SELECT count(*) FROM idem_keys WHERE expires_at <= now()', '0',
		$deadline), 'late: swept after CREATE EXTENSION');
	note sprintf('late: swept %.2f s after CREATE EXTENSION', time - $t0);

	is(count_keys($node, 'late', 'true') . '/' . count_keys($node, 'postgres', 'true'),
		'10/10', 'live keys kept');
	ok(poll($node, 'late',
		"SELECT string_agg(datname, ',' ORDER BY datname) "
		  . "FROM idem_sweeper_status WHERE last_error IS NULL",
		'late,postgres'), 'view shows both databases without error');
	is(sweeper_problems($node), '', 'no sweeper error in the log');
	$node->stop;
};

# ---------------------------------------------------------------------------
# 3. DROP DATABASE succeeds while workers are busy sweeping that database,
#    and the sweeper goes on with the other databases afterwards.
# ---------------------------------------------------------------------------
scenario 'DROP DATABASE while the sweeper works on it' => sub {
	# one key per transaction: a 150k backlog keeps workers busy for a few
	# seconds, each handing over to the next after its 1 s budget
	my $node = new_node('dropdb', 'idempotency.sweep_batch_size' => 1);
	$node->start;
	$node->safe_psql('postgres', 'CREATE DATABASE keep');
	$node->safe_psql('keep', 'CREATE EXTENSION idempotency');
	# a template (never swept) holding the backlog, copied for each round
	$node->safe_psql('postgres', 'CREATE DATABASE backlog IS_TEMPLATE true');
	$node->safe_psql('backlog', 'CREATE EXTENSION idempotency');
	add_expired($node, 'backlog', 'old', 150_000);

	my $rounds = 4;
	for my $round (1 .. $rounds)
	{
		$node->safe_psql('postgres', 'CREATE DATABASE dropme TEMPLATE backlog');
		# odd rounds: drop under the first worker; even rounds: under a worker
		# that continues the pass after a handover (the view has the first's
		# result)
		my $cond = "SELECT count(*) > 0 FROM pg_stat_activity "
		  . "WHERE datname = 'dropme' AND backend_type = 'idempotency sweeper'";
		$cond .= " AND EXISTS (SELECT FROM idem_sweeper_status "
		  . "WHERE datname = 'dropme')"
		  if $round % 2 == 0;
		must_poll($node, 'keep', $cond, 't', 20,
			"round $round: a worker sweeps dropme");
		my $t0 = time;
		my ($ret, $out, $err) =
		  $node->psql('postgres', 'DROP DATABASE dropme');
		is($ret, 0, "round $round: DROP DATABASE succeeds")
		  or diag $err;
		note sprintf('round %d: DROP DATABASE took %.2f s', $round, time - $t0);
		is($node->safe_psql('postgres',
				"SELECT count(*) FROM pg_database WHERE datname = 'dropme'"),
			'0', "round $round: dropme is gone");

		# the sweeper goes on with the other databases
		add_expired($node, 'keep', "round${round}_", 10);
		ok(poll($node, 'keep', 'SELECT count(*) FROM idem_keys', '0'),
			"round $round: sweeping goes on after the drop")
		  or do { diag sweeper_problems($node); die "the sweeper is stuck\n" };
	}

	ok(poll($node, 'keep',
		"SELECT string_agg(datname, ',') FROM idem_sweeper_status", 'keep'),
		'view lists only existing databases');
	# A worker the launcher starts just as the database goes away may fail
	# to connect (FATAL: database N does not exist); from 19 on DROP
	# DATABASE terminates a worker that is connected (FATAL: terminating
	# background worker ... due to administrator command): at most once
	# per drop.
	my $gone = qr/idempotency sweeper +FATAL: +(?:database (?:\d+|"dropme") does not exist|terminating background worker "idempotency sweeper" due to administrator command)|background worker "idempotency sweeper" \(PID \d+\) exited with exit code 1/;
	my @gone = grep { /$gone/ } split /\n/, slurp_file($node->logfile);
	cmp_ok(scalar(@gone), '<=', 2 * $rounds,
		'at most one failed worker start per dropped database');
	is(sweeper_problems($node, $gone), '', 'no other sweeper error in the log');
	$node->stop;
};

# ---------------------------------------------------------------------------
# 4. Reloaded settings: a shorter interval applies at once; sweeper = off
#    stops sweeping, on resumes it.
# ---------------------------------------------------------------------------
scenario 'reload: sweep_interval and sweeper on/off' => sub {
	my $node = new_node('reload', 'idempotency.sweep_interval' => "'1h'");
	$node->start;
	# the start-up pass is over; the next one is an hour away
	must_poll($node, 'postgres', $LAUNCHER_IDLE, 't', $SOON,
		'initial pass over');
	$node->safe_psql('postgres', 'CREATE EXTENSION idempotency');
	add_live($node, 'postgres', 'live', 10);
	add_expired($node, 'postgres', 'old', 100);

	$node->safe_psql('postgres',
		"ALTER SYSTEM SET idempotency.sweep_interval = '200ms';\n"
		  . "SELECT pg_reload_conf();");
	my $t0 = time;
	ok(poll($node, 'postgres',
		'SELECT count(*) FROM idem_keys WHERE expires_at <= now()', '0', 5),
		'interval shortened by reload: expired keys swept');
	note sprintf('swept %.2f s after the reload', time - $t0);

	set_sweeper($node, 'off');
	add_expired($node, 'postgres', 'off', 100);
	my $before = last_start($node, 'postgres', 'postgres');
	# Nothing to wait for when nothing should happen: watch for 1 s, five
	# intervals, that no worker shows up, no pass is recorded and the keys
	# stay.  (With the sweeper on, a pass would come every 200 ms.)
	my ($seen, $deadline) = ('', time + 1);
	while (time < $deadline && $seen eq '')
	{
		$seen = $node->safe_psql('postgres', qq{
SELECT concat_ws(' ',
    CASE WHEN count(*) FILTER (WHERE backend_type = 'idempotency sweeper') > 0
         THEN 'worker running' END,
    CASE WHEN (SELECT count(*) FROM idem_keys WHERE key LIKE 'off%') <> 100
         THEN 'keys removed' END,
    CASE WHEN (SELECT max(last_start) FROM idem_sweeper_status) > '$before'
         THEN 'pass recorded' END)
FROM pg_stat_activity});
		usleep(50_000);
	}
	is($seen, '', 'sweeper off: no worker, no pass, keys stay for 5 intervals');

	set_sweeper($node, 'on');
	ok(poll($node, 'postgres',
		'SELECT count(*) FROM idem_keys WHERE expires_at <= now()', '0', 5),
		'sweeper on again: swept');
	is(count_keys($node, 'postgres', 'true'), '10', 'live keys kept');
	is(sweeper_problems($node), '', 'no sweeper error in the log');
	$node->stop;
};

# ---------------------------------------------------------------------------
# 5. Live transactions holding keys whose rows are expired: the sweeper
#    neither waits for them nor takes their keys.
# ---------------------------------------------------------------------------
scenario 'live transactions holding expired keys' => sub {
	my $node = new_node('live');
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION idempotency');
	must_poll($node, 'postgres', 'SELECT count(*) FROM idem_sweeper_status',
		'1', $SOON, 'first pass');
	set_sweeper($node, 'off');    # so that the expired row waits for idem_begin
	add_expired($node, 'postgres', 'held', 1);

	# A re-begins key "held1", whose stored row has expired: idem_begin
	# deletes the old row (uncommitted) and holds the key.
	my $a = $node->background_psql('postgres');
	$a->query_safe('BEGIN');
	is($a->query_safe(q{SELECT status FROM idem_begin('held1', ttl => '1 day')}),
		'started', 'A: idem_begin on an expired key starts it');
	# B records a key with a 1 ms ttl and does not commit.
	my $b = $node->background_psql('postgres');
	$b->query_safe('BEGIN');
	is($b->query_safe(q{SELECT idem_once('once1', ttl => '1 millisecond')}),
		't', 'B: idem_once with a 1 ms ttl');
	set_sweeper($node, 'on');

	# The sweeper keeps working around them.
	add_expired($node, 'postgres', 'other', 200);
	ok(poll($node, 'postgres',
		"SELECT count(*) FROM idem_keys WHERE key LIKE 'other%'", '0'),
		'other expired keys are swept while A and B are open');
	ok(wait_passes($node, 'postgres', 'postgres', 3),
		'passes keep finishing (last_start advances)');
	is($node->safe_psql('postgres',
			'SELECT last_error IS NULL FROM idem_sweeper_status'),
		't', 'no error recorded');
	is(count_keys($node, 'postgres', "key = 'held1'"), '1',
		"A's expired row is still there (its deletion is A's, uncommitted)");
	is($node->safe_psql('postgres', q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE a.backend_type LIKE 'idempotency sweeper%' AND NOT l.granted}),
		'0', 'no sweeper process waits on a lock');

	# A finishes and commits: its key replays and survives further passes.
	$a->query_safe(q{SELECT idem_finish('held1', 201, '{"ok": true}')});
	$a->query_safe('COMMIT');
	ok(wait_passes($node, 'postgres', 'postgres', 2), 'two more passes');
	is($node->safe_psql('postgres',
			q{SELECT status, response_code, response_body FROM idem_begin('held1')}),
		'replay|201|{"ok": true}', "A's key replays after its commit");

	# B commits: its row is already expired, so a later pass may remove it
	# rightly; stop the sweeper first to see that B's commit left the row.
	set_sweeper($node, 'off');
	$b->query_safe('COMMIT');
	is(count_keys($node, 'postgres', "key = 'once1'"), '1',
		"B's key is there after its commit");
	is($node->safe_psql('postgres', q{SELECT status FROM idem_lookup('once1')}),
		'absent', '... and, expired, reads as absent');
	set_sweeper($node, 'on');
	ok(poll($node, 'postgres', "SELECT count(*) FROM idem_keys WHERE key = 'once1'", '0'),
		"B's committed, expired key is then swept");
	is(count_keys($node, 'postgres', "key = 'held1'"), '1', "A's key stays");
	$a->quit;
	$b->quit;
	is(sweeper_problems($node), '', 'no sweeper error in the log');
	$node->stop;
};

# ---------------------------------------------------------------------------
# 6. A streaming standby does not sweep; once promoted it does, without a
#    restart.
# ---------------------------------------------------------------------------
scenario 'hot standby, then promotion' => sub {
	my $primary = new_node('primary', allows_streaming => 1);
	$primary->start;
	$primary->safe_psql('postgres', 'CREATE EXTENSION idempotency');
	add_live($primary, 'postgres', 'live', 10);
	$primary->backup('b');
	# the standby's configuration (copied before the ALTER SYSTEM below,
	# which is not replicated) has the sweeper on with a 200 ms interval
	my $standby = PostgreSQL::Test::Cluster->new('standby');
	$standby->init_from_backup($primary, 'b', has_streaming => 1);
	$standby->start;

	set_sweeper($primary, 'off');
	add_expired($primary, 'postgres', 'old', 50);
	$primary->wait_for_catchup($standby);

	is($standby->safe_psql('postgres', 'SHOW idempotency.sweeper'),
		'on', 'standby: sweeper setting is on');
	is(count_keys($standby, 'postgres', 'expires_at <= now()'), '50',
		'standby: expired keys replicated');
	# Nothing to wait for: watch the standby for 1 s (5 intervals).
	my ($seen, $deadline) = ('', time + 1);
	while (time < $deadline && $seen eq '')
	{
		$seen = $standby->safe_psql('postgres', q{
SELECT concat_ws(' ',
    CASE WHEN count(*) > 0 THEN 'sweeper process: ' || string_agg(backend_type, ',') END,
    CASE WHEN (SELECT count(*) FROM idem_sweeper_status) > 0 THEN 'view not empty' END,
    CASE WHEN (SELECT count(*) FROM idem_keys WHERE key LIKE 'old%') <> 50
         THEN 'keys removed' END)
FROM pg_stat_activity WHERE backend_type LIKE 'idempotency sweeper%'});
		usleep(50_000);
	}
	is($seen, '', 'standby: no sweeper process, empty view, expired keys stay');

	$standby->promote;
	must_poll($standby, 'postgres', 'SELECT pg_is_in_recovery()', 'f', 30,
		'promotion');
	ok(poll($standby, 'postgres',
		'SELECT count(*) FROM idem_keys WHERE expires_at <= now()', '0'),
		'promoted: expired keys swept');
	is(count_keys($standby, 'postgres', 'true'), '10',
		'promoted: live keys kept');
	ok(poll($standby, 'postgres',
		"SELECT datname, last_error IS NULL FROM idem_sweeper_status",
		'postgres|t'), 'promoted: view shows the pass');
	is(count_keys($primary, 'postgres', 'expires_at <= now()'), '50',
		'old primary (sweeper off) still has its expired keys');
	is(sweeper_problems($standby), '', 'no sweeper error in the standby log');
	is(sweeper_problems($primary), '', 'no sweeper error in the primary log');
	$standby->stop;
	$primary->stop;
};

# ---------------------------------------------------------------------------
# 7. The launcher killed with SIGKILL: crash restart, the launcher is back,
#    committed keys survive, sweeping resumes.  SIGTERM stops it at once.
# ---------------------------------------------------------------------------
scenario 'launcher killed: SIGKILL and SIGTERM' => sub {
	my $node = new_node('crash', restart_after_crash => 'on',
		'idempotency.sweep_batch_size' => 1);
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION idempotency');
	add_live($node, 'postgres', 'c', 200);
	$node->safe_psql('postgres', q{
BEGIN;
SELECT status FROM idem_begin('resp', '{"order": 1}'::jsonb);
SELECT idem_finish('resp', 201, '{"id": 7}');
COMMIT;});
	add_expired($node, 'postgres', 'old', 50);
	ok(poll($node, 'postgres', "SELECT count(*) FROM idem_keys WHERE key LIKE 'old%'", '0'),
		'swept before the crash');

	my $pid1 = $node->safe_psql('postgres', $LAUNCHER_PID);
	like($pid1, qr/^\d+$/, 'one launcher');
	my $offset = -s $node->logfile;
	is(sweeper_problems($node), '', 'no sweeper error in the log before the kill');
	ok(kill('KILL', $pid1), 'SIGKILL the launcher');
	$offset = $node->wait_for_log(
		qr/all server processes terminated; reinitializing/, $offset);
	ok(poll($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity "
		  . "WHERE backend_type = 'idempotency sweeper launcher' AND pid <> $pid1",
		'1', 30), 'a new launcher after the crash restart');
	is(count_keys($node, 'postgres', "key LIKE 'c%'"), '200',
		'committed keys all there');
	is($node->safe_psql('postgres', q{
SELECT count(*) FROM generate_series(1, 200) g, idem_once('c' || g) AS x(o) WHERE o}),
		'0', '... and all replay');
	is($node->safe_psql('postgres',
			q{SELECT status, response_code, response_body FROM idem_begin('resp', '{"order": 1}'::jsonb)}),
		'replay|201|{"id": 7}', 'a finished response replays');
	add_expired($node, 'postgres', 'after', 50);
	ok(poll($node, 'postgres', "SELECT count(*) FROM idem_keys WHERE key LIKE 'after%'", '0'),
		'sweeping resumes after the crash restart');

	# SIGTERM while a pass is under way (a backlog, one key per transaction)
	add_expired($node, 'postgres', 'backlog', 60_000);
	must_poll($node, 'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'idempotency sweeper'",
		't', $SOON, 'a worker is sweeping the backlog');
	my $pid2 = $node->safe_psql('postgres', $LAUNCHER_PID);
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid2)"),
		't', 'pg_terminate_backend on the launcher');
	my $t0 = time;
	usleep(10_000) while kill(0, $pid2) && time < $t0 + 1;
	ok(!kill(0, $pid2), 'launcher gone within 1 s of SIGTERM');
	note sprintf('launcher exited %.3f s after SIGTERM', time - $t0);
	# bgw_restart_time is 5 s
	ok(poll($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity "
		  . "WHERE backend_type = 'idempotency sweeper launcher' AND pid <> $pid2",
		'1', 20), 'the postmaster starts the launcher again');
	# one key per transaction: about 15 s on an idle 2-core machine
	ok(poll($node, 'postgres', "SELECT count(*) FROM idem_keys WHERE key LIKE 'backlog%'", '0', 90),
		'backlog swept by the new launcher');
	is(count_keys($node, 'postgres', "key LIKE 'c%'"), '200', 'live keys kept');
	my $log = slurp_file($node->logfile);
	unlike($log, qr/idempotency sweeper: pass over database "[^"]*" failed/,
		'no failed pass in the log');
	$node->stop;
};

done_testing();
