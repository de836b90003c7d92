# Crash safety: the postmaster killed with SIGKILL in the middle of a write
# load, then crash recovery.
#
# Six psql clients each run a script of transactions
#     BEGIN; idem_begin(key, body::jsonb); INSERT the business row;
#     idem_finish(key, 201, response); COMMIT;
# with a key of their own per transaction.  A client prints "begin <key>"
# before the BEGIN and "ack <key>" only after COMMIT returned success (psql
# runs with ON_ERROR_STOP, so a failed COMMIT or a lost connection stops
# it before the "ack").  Mid-load the postmaster gets SIGKILL; once every
# process of the old server is gone it is started again and recovers.
#
# What must hold after recovery:
# - every acknowledged key is completed, with its stored response and
#   exactly one business row;
# - a key begun but not acknowledged (the transaction in flight at the
#   kill) has both its key record and its business row, or neither;
# - a begun key writes nothing, so nothing is left "in progress": the key
#   table holds only completed records, no key lock survives, and there are
#   exactly as many business rows as completed keys;
# - a retry of an acknowledged key replays the stored response; a retry of
#   an unacknowledged key replays if its transaction did commit and starts
#   (and can be completed) if it did not;
# - the load goes on after recovery: a second round of load and kill, and
#   the same checks over both rounds.
use strict;
use warnings;

use Cwd qw(abs_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $clients = 6;
my $per_client = 3000;      # far more than a client gets through before the kill
my $rounds = 2;
my $kill_after = 300;       # business rows committed in the round before the kill

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
idempotency.sweeper = off
max_connections = 30
log_statement = 'ddl'
});
$node->start;

# The business table has no unique constraint, so a duplicate would show.
# handle() is an application's request handler, used for the retries.
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION idempotency;
CREATE TABLE orders (key text NOT NULL, client int NOT NULL, n int NOT NULL);
CREATE TABLE seen (round int, client int, n int, key text PRIMARY KEY, acked bool NOT NULL);
CREATE FUNCTION request(client int, n int) RETURNS jsonb LANGUAGE sql IMMUTABLE
    AS $$ SELECT jsonb_build_object('client', client, 'n', n, 'items', jsonb_build_array(n, n + 1)) $$;
CREATE FUNCTION response(key text, n int) RETURNS jsonb LANGUAGE sql IMMUTABLE
    AS $$ SELECT jsonb_build_object('order', key, 'total', n * 10) $$;
CREATE FUNCTION handle(k text, c int, i int, OUT status text, OUT code int, OUT body jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT b.status, b.response_code, b.response_body INTO status, code, body
    FROM idem_begin(k, request(c, i)) b;
    IF status = 'started' THEN
        INSERT INTO orders VALUES (k, c, i);
        code := 201;
        body := response(k, i);
        PERFORM idem_finish(k, code, body);
    END IF;
END $$;
});

# The script of one client: literal SQL, as an application would send it.
sub client_script
{
	my ($round, $c) = @_;
	my $s = '';
	for my $i (1 .. $per_client)
	{
		my $key = "r$round-c$c-$i";
		my $total = $i * 10;
		my $next = $i + 1;
		$s .= qq{\\echo begin $key
BEGIN;
SELECT (status = 'started')::int AS started, status FROM idem_begin('$key', '{"client": $c, "n": $i, "items": [$i, $next]}'::jsonb) \\gset
\\if :started
\\else
\\echo odd $key :status
\\endif
INSERT INTO orders VALUES ('$key', $c, $i);
SELECT idem_finish('$key', 201, '{"order": "$key", "total": $total}'::jsonb);
COMMIT;
\\echo ack $key
};
	}
	return $s;
}

# Processes of the old server still alive: every postgres process has the
# data directory as its working directory.
sub server_processes
{
	my $dir = abs_path($node->data_dir);
	my @pids;
	opendir(my $dh, '/proc') or die "cannot read /proc: $!";
	for my $pid (grep { /^\d+$/ } readdir $dh)
	{
		my $cwd = readlink("/proc/$pid/cwd");
		push @pids, $pid if defined $cwd && $cwd eq $dir;
	}
	closedir $dh;
	return @pids;
}

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $t0 = time;

for my $round (1 .. $rounds)
{
	subtest "round $round: SIGKILL of the postmaster under load" => sub {
		my $rows_before =
		  $node->safe_psql('postgres', 'SELECT count(*) FROM orders');
		my (@h, @out, @err);
		for my $c (1 .. $clients)
		{
			my $file = "$tmp/r$round-c$c.sql";
			append_to_file($file, client_script($round, $c));
			$out[$c] = "$tmp/r$round-c$c.out";
			$err[$c] = "$tmp/r$round-c$c.err";
			$h[$c] = IPC::Run::start(
				[
					'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
					'-o', '/dev/null', '-f', $file,
					'-d', $node->connstr('postgres')
					  . " application_name=crashload"
				],
				'<', '/dev/null', '>', $out[$c], '2>', $err[$c],
				IPC::Run::timeout(120));
		}

		# Kill when the load has been running for a while and every client
		# is still connected, i.e. mid-load.
		my ($deadline, $done) = (time + 30, 'f');
		while ($done ne 't' && time < $deadline)
		{
			usleep(20_000);
			$done = $node->safe_psql(
				'postgres', qq{
SELECT (SELECT count(*) >= $rows_before + $kill_after FROM orders)
   AND (SELECT count(*) = $clients FROM pg_stat_activity WHERE application_name = 'crashload')});
		}
		is($done, 't', "$kill_after transactions committed, all clients connected");
		is( $node->safe_psql(
				'postgres',
				"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'crashload'"
			),
			$clients,
			'all clients still running at the kill');
		my $offset = -s $node->logfile;
		my $postmaster = $node->{_pid};
		$node->kill9;

		# The backends exit once they notice the postmaster is gone; the
		# new postmaster cannot start while any of them holds the old shared
		# memory.
		# The new postmaster also refuses to start while the old one's pid
		# exists, even as a zombie waiting for init to reap it.
		$deadline = time + 60;
		my @left;
		while (((@left = server_processes()) || kill(0, $postmaster))
			&& time < $deadline)
		{
			usleep(50_000);
		}
		is("@left", '', 'every process of the old server exited');
		ok(!kill(0, $postmaster), 'old postmaster is gone');

		for my $c (1 .. $clients)
		{
			eval { $h[$c]->finish; };
			diag "client $c: $@" if $@;
		}
		my $errors = join '', map { slurp_file($err[$_]) } 1 .. $clients;
		unlike($errors, qr/ERROR:/,
			'clients saw no SQL error, only the lost connection');

		$node->start;
		ok( $node->log_contains(
				qr/database system was interrupted|not properly shut down; automatic recovery in progress/,
				$offset),
			'the restart ran crash recovery');

		# Record what the clients saw.
		my ($acked, $begun, @rows) = (0, 0);
		for my $c (1 .. $clients)
		{
			my %st;
			for (split /\n/, slurp_file($out[$c]))
			{
				if (/^begin r\d+-c\d+-(\d+)$/) { $st{$1} //= 'false'; $begun++; }
				elsif (/^ack r\d+-c\d+-(\d+)$/) { $st{$1} = 'true'; $acked++; }
				else { fail("client $c printed: $_"); }
			}
			push @rows, map { "($round, $c, $_, 'r$round-c$c-$_', $st{$_})" }
			  sort { $a <=> $b } keys %st;
		}
		$node->safe_psql('postgres',
			'INSERT INTO seen VALUES ' . join(",\n", @rows));
		note "round $round: $begun keys begun, $acked acknowledged";
		cmp_ok($acked, '>=', $kill_after, 'clients saw commits acknowledged');
		cmp_ok($begun - $acked, '<=', $clients,
			'at most one unacknowledged key per client');
	};
}

subtest 'after recovery: records, business rows and retries' => sub {
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM seen s
LEFT JOIN idem_keys k ON k.scope = '' AND k.key = s.key
WHERE s.acked AND (k.key IS NULL OR k.state <> 'c' OR k.response_code <> 201
                   OR k.response_body <> response(s.key, s.n))}),
		'0',
		'every acknowledged key is completed with its response');
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM seen s
WHERE s.acked AND (SELECT count(*) FROM orders o WHERE o.key = s.key) <> 1}),
		'0',
		'every acknowledged key has exactly one business row');

	my $inflight = $node->safe_psql(
		'postgres', q{
SELECT s.key || ':' || (k.key IS NOT NULL) || ':' || (SELECT count(*) FROM orders o WHERE o.key = s.key)
FROM seen s LEFT JOIN idem_keys k ON k.scope = '' AND k.key = s.key
WHERE NOT s.acked ORDER BY s.key});
	note "unacknowledged keys (key:record:business rows): "
	  . join(' ', split /\n/, $inflight);
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM seen s
LEFT JOIN idem_keys k ON k.scope = '' AND k.key = s.key
WHERE NOT s.acked
  AND (k.key IS NOT NULL) <> EXISTS (SELECT FROM orders o WHERE o.key = s.key)}),
		'0',
		'each unacknowledged key has both its record and its business row, or neither');

	is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_keys WHERE state <> 'c'}),
		'0', 'the key table holds only completed records');
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM (SELECT key FROM orders GROUP BY key HAVING count(*) > 1) d}),
		'0', 'no key has two business rows');
	is( $node->safe_psql(
			'postgres', q{
SELECT (SELECT count(*) FROM orders) = (SELECT count(*) FROM idem_keys)
   AND NOT EXISTS (SELECT FROM orders o
                   WHERE NOT EXISTS (SELECT FROM idem_keys k WHERE k.scope = '' AND k.key = o.key))}),
		't', 'business rows and completed keys match one to one');
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756}),
		'0', 'no key lock survives the crash');
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM seen s, idem_lookup(s.key) l
WHERE NOT s.acked AND l.status NOT IN ('completed', 'absent')}),
		'0', 'unacknowledged keys are completed or absent, never in progress');

	# Retries, as the clients would send them after a timeout.
	is( $node->safe_psql(
			'postgres', q{
BEGIN;
SELECT count(*) FROM seen s, idem_begin(s.key, request(s.client, s.n)) b
WHERE s.acked
  AND (b.status, b.response_code, b.response_body) IS DISTINCT FROM ('replay', 201, response(s.key, s.n));
ROLLBACK;}),
		'0',
		'retries of acknowledged keys replay the stored responses');
	is( $node->safe_psql(
			'postgres', q{
BEGIN;
SELECT count(*) FROM seen s, idem_begin(s.key, request(s.client, s.n + 1)) b
WHERE s.acked AND b.status <> 'mismatch';
ROLLBACK;}),
		'0',
		'acknowledged keys with another body are a mismatch');

	my @unacked = split /\n/, $node->safe_psql(
		'postgres', q{
SELECT s.key, s.client, s.n, EXISTS (SELECT FROM orders o WHERE o.key = s.key)
FROM seen s WHERE NOT s.acked ORDER BY s.key});
	for my $row (@unacked)
	{
		my ($key, $c, $i, $committed) = split /\|/, $row;
		my $expect = $committed eq 't' ? 'replay' : 'started';
		is( $node->safe_psql(
				'postgres', "SELECT status, code, body = response('$key', $i) FROM handle('$key', $c, $i)"),
			"$expect|201|t",
			"unacknowledged $key (transaction "
			  . ($committed eq 't' ? 'committed' : 'lost')
			  . "): retry gives $expect");
	}
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM seen s, handle(s.key, s.client, s.n) h
WHERE NOT s.acked AND (h.status, h.code, h.body) IS DISTINCT FROM ('replay', 201, response(s.key, s.n))}),
		'0', 'after their retries, unacknowledged keys replay too');
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM seen s
WHERE (SELECT count(*) FROM orders o WHERE o.key = s.key) <> 1}),
		'0', 'every key begun by a client now has exactly one business row');

	is($node->safe_psql('postgres', q{SELECT status FROM handle('new-after-crash', 0, 1)}),
		'started', 'a new key starts');
	is($node->safe_psql('postgres', q{SELECT status FROM handle('new-after-crash', 0, 1)}),
		'replay', '... and replays');
};

note sprintf('%.1f s', time - $t0);
$node->stop;
done_testing();
