# The contention stress of docs/specification.md, section 5, shared by 010_stress.pl
# (pgbench connected straight to the server) and 034_pgbouncer.pl (the same
# pgbench script through PgBouncer in transaction pooling mode).  See
# 010_stress.pl for why the assertions in check() catch two transactions
# that both get "started" for one key.

package IdemStress;

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

our $clients = 16;
our $keys = 20;
our $rounds = 10;
our $seconds = 2;

# postgresql.conf lines for the node under test.
# (PostgreSQL::Test::Cluster logs every statement; the load's tens of
# thousands would only cost the run its time)
our $conf = qq{
shared_preload_libraries = 'idempotency'
idempotency.sweeper = off
max_connections = 50
log_statement = 'ddl'
};

# The extension, the business table and the outcome counters.
sub setup
{
	my ($node) = @_;
	$node->safe_psql(
		'postgres', q{
CREATE EXTENSION idempotency;
CREATE TABLE effects (key text, attempt int);
CREATE TABLE oddities (key text, status text);
CREATE SEQUENCE started_seq;
CREATE SEQUENCE replay_seq;
CREATE SEQUENCE busy_seq;
});
	return;
}

# One transaction per script run.  The key is 'r<round>-<slice>-<k>': the
# slice changes every 50 ms, so a fresh set of hot keys comes up 20 times a
# second and the clients keep meeting keys that are begun but unfinished or
# finished but uncommitted.  The holder naps up to 2 ms between idem_begin
# and idem_finish to widen that window.  1 in 8 begins use wait => false:
# their in_progress answers show that the contention did happen.
# Sequences are not transactional, so they count every outcome, including
# those rolled back.  Any other status (mismatch cannot happen: no request
# body; in_progress only with wait => false) is recorded in oddities.
our $script = q{
\set k random(1, } . $keys . q{)
\set attempt random(1, 2000000000)
\set giveup random(1, 4)
\set late random(1, 8)
\set nowait random(1, 8)
\set nap random(0, 2000)
SELECT (extract(epoch FROM clock_timestamp()) * 20)::bigint AS slice \gset
BEGIN;
SELECT status, (status = 'started')::int AS started, (status = 'replay')::int AS replay, (status = 'in_progress' AND :nowait = 1)::int AS busy FROM idem_begin('r' || :round || '-' || :slice || '-' || :k, wait => :nowait <> 1) \gset
\if :started
SELECT nextval('started_seq');
\if :giveup = 1
ROLLBACK;
\else
\sleep :nap us
INSERT INTO effects VALUES ('r' || :round || '-' || :slice || '-' || :k, :attempt);
SELECT idem_finish('r' || :round || '-' || :slice || '-' || :k, 201, jsonb_build_object('attempt', :attempt));
\if :late = 1
ROLLBACK;
\else
COMMIT;
\endif
\endif
\elif :replay
SELECT nextval('replay_seq');
COMMIT;
\elif :busy
SELECT nextval('busy_seq');
ROLLBACK;
\else
INSERT INTO oddities VALUES ('r' || :round || '-' || :slice || '-' || :k, ':status');
COMMIT;
\endif
};

# Run the rounds of pgbench.  %opt: file => prefix of the script file names
# (unique per test), pgbench => extra pgbench options (where to connect,
# protocol) as a string or a code ref called with the round number,
# label => appended to each round's test name.
sub run
{
	my ($node, %opt) = @_;
	my $file = $opt{file};
	my $label = $opt{label} // '';

	my $start = time();
	for my $round (1 .. $rounds)
	{
		my $extra =
		  ref $opt{pgbench} eq 'CODE'
		  ? $opt{pgbench}->($round)
		  : ($opt{pgbench} // '');
		$node->pgbench(
			"--no-vacuum --client=$clients --jobs=4 --time=$seconds --define=round=$round $extra",
			0,
			[
				qr{actually processed: [1-9]},
				qr{number of failed transactions: 0 \(}
			],
			[qr{^$}],
			"pgbench round $round$label: no failed transaction, no aborted client",
			{ "${file}_$round" => $script });
	}
	note sprintf("%d rounds of pgbench took %d s", $rounds, time() - $start);
	return;
}

# The invariants, checked on the server itself.
sub check
{
	my ($node) = @_;

	my ($started, $replays, $busy, $completed, $effects) = split /\|/,
	  $node->safe_psql(
		'postgres', q{
SELECT (SELECT last_value FROM started_seq),
       (SELECT last_value FROM replay_seq),
       (SELECT last_value FROM busy_seq),
       (SELECT count(*) FROM idem_keys),
       (SELECT count(*) FROM effects)});
	note "started $started times, replayed $replays times, "
	  . "in_progress (wait => false) $busy times, "
	  . "$completed keys completed, $effects effects rows";

	is($node->safe_psql('postgres', 'SELECT count(*) FROM oddities'),
		'0', 'every idem_begin returned started or replay (or in_progress with wait => false)');

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM (SELECT key FROM effects GROUP BY key HAVING count(*) > 1) d}
		),
		'0',
		'no key has more than one effects row');

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*)
FROM idem_keys k
LEFT JOIN (SELECT key, count(*) AS n FROM effects GROUP BY key) e ON e.key = k.key
WHERE k.state = 'c' AND coalesce(e.n, 0) <> 1}
		),
		'0',
		'every completed key has exactly one effects row');

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*)
FROM effects e
LEFT JOIN idem_keys k ON k.scope = '' AND k.key = e.key AND k.state = 'c'
WHERE k.key IS NULL}
		),
		'0',
		'every effects row has a completed key');

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM idem_keys k JOIN effects e ON e.key = k.key
WHERE k.response_code <> 201
   OR (k.response_body ->> 'attempt')::int <> e.attempt}
		),
		'0',
		'each stored response belongs to the transaction that did the work');

	# The run must really have exercised the races: keys completed, keys
	# taken again after a rollback (more "started" than completed keys), and
	# begins that found a key held by another transaction.
	cmp_ok($completed, '>=', $rounds * $keys, 'keys were completed');
	cmp_ok($started, '>', $completed, 'some started keys were rolled back and begun again');
	cmp_ok($replays, '>', 0, 'some begins replayed');
	cmp_ok($busy, '>', 0, 'some begins met a key in progress');
	return;
}

1;
