# Streaming replication and failover.
#
# Keys committed on the primary reach a hot standby by WAL replay.  On the
# standby a retry is read-only: idem_lookup reports the key completed and
# idem_begin replays the stored response (or reports a mismatch), while any
# call that would have to write (beginning a new or expired key, idem_once
# of a new message, idem_sweep) fails with 25006 read_only_sql_transaction.
# A key finished on the primary by a transaction not yet committed shows as
# in progress on the standby, and a standby retry waits for the primary's
# outcome.  After promotion the new primary replays every committed key,
# starts new ones, and treats a key whose transaction was still open on the
# old primary at failover as never done.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $t0 = time;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
});
$primary->start;

# requests: what the clients send (replicated with the rest).  handle() is
# the application's handler; retry() sends a request again with whichever
# idem_begin variant it was first sent with, and reports what came back.
$primary->safe_psql(
	'postgres', q{
CREATE EXTENSION idempotency;
CREATE TABLE orders (key text NOT NULL, scope text NOT NULL, amount int);
CREATE TABLE requests (scope text NOT NULL, key text NOT NULL, kind text NOT NULL,
                       jbody jsonb, tbody text, bbody bytea, code int, response jsonb,
                       PRIMARY KEY (scope, key));
CREATE FUNCTION begin_request(r requests, other boolean DEFAULT false)
RETURNS TABLE (status text, response_code int, response_body jsonb,
               created_at timestamptz, expires_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    IF r.kind = 'jsonb' THEN
        RETURN QUERY SELECT * FROM idem_begin(r.key,
            CASE WHEN other THEN coalesce(r.jbody, '{}') || '{"other": 1}' ELSE r.jbody END,
            r.scope);
    ELSIF r.kind = 'text' THEN
        RETURN QUERY SELECT * FROM idem_begin(r.key,
            CASE WHEN other THEN r.tbody || ' ' ELSE r.tbody END, r.scope);
    ELSE
        RETURN QUERY SELECT * FROM idem_begin(r.key,
            CASE WHEN other THEN r.bbody || '\x00'::bytea ELSE r.bbody END, r.scope);
    END IF;
END $$;
CREATE FUNCTION handle(r requests) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text;
BEGIN
    SELECT b.status INTO s FROM begin_request(r) b;
    IF s = 'started' THEN
        INSERT INTO orders VALUES (r.key, r.scope, (r.jbody ->> 'amount')::int);
        PERFORM idem_finish(r.key, r.code, r.response, r.scope);
    END IF;
    RETURN s;
END $$;
});

# Record requests and handle them: $n of each kind, numbered from $from.
# Returns how many did not start (0 expected).
sub add_requests
{
	my ($node, $prefix, $from, $n) = @_;
	return $node->safe_psql(
		'postgres', qq{
INSERT INTO requests
SELECT CASE WHEN g % 3 = 0 THEN 'acct_' || g % 7 ELSE '' END,
       '$prefix-' || k || '-' || g, k,
       CASE WHEN k = 'jsonb' THEN jsonb_build_object('amount', g, 'to', 'acct_' || g % 5) END,
       CASE WHEN k = 'text' THEN '{"amount":' || g || '}' END,
       CASE WHEN k = 'bytea' THEN sha256(g::text::bytea) END,
       200 + g % 3,
       CASE WHEN g % 4 = 0 THEN NULL ELSE jsonb_build_object('id', g, 'kind', k) END
FROM generate_series($from, $from + $n - 1) g, unnest(ARRAY['jsonb', 'text', 'bytea']) k;
SELECT count(*) FROM requests r, handle(r) s WHERE key LIKE '$prefix-%' AND s <> 'started';});
}

# Every request retried on $node, as a text table to compare between nodes.
my $RETRIES = q{
SELECT string_agg(format('%s/%s %s %s %s %s %s', r.scope, r.key, b.status,
                         b.response_code, b.response_body, b.created_at, b.expires_at),
                  E'\n' ORDER BY r.scope, r.key)
FROM requests r, begin_request(r) b};

# The SQLSTATE of a statement, or 'ok'.
sub sqlstate
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) =
	  $node->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	return 'ok' if $ret == 0;
	return $1 if $err =~ /ERROR:  ([0-9A-Z]{5}):/;
	return "failed without SQLSTATE: $err";
}

is(add_requests($primary, 'before', 1, 20), '0', 'primary: 60 requests started');
$primary->safe_psql('postgres', q{
SELECT idem_once('msg-' || g, 'consumer') FROM generate_series(1, 10) g;
SELECT idem_once('short', ttl => '1 millisecond');});

$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

# keys committed after the backup arrive by streaming
is(add_requests($primary, 'after', 21, 20), '0', 'primary: 60 more after the backup');
$primary->safe_psql('postgres', q{
SELECT idem_once('msg-' || g, 'consumer') FROM generate_series(11, 20) g;
CREATE FUNCTION call_work(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(201, req) $$;
SELECT status FROM idem_call('call-1', '{"n": 1}', 'call_work(jsonb)');});
# leases: one live, one run out (its worker died), one finished
my $lease_token = $primary->safe_psql('postgres', q{
SELECT status FROM idem_lease('lease-out', lease => '1 microsecond');
SELECT idem_finish('lease-done', 201, '{"id": "l"}', token => token)
FROM idem_lease('lease-done');
SELECT token FROM idem_lease('lease-live', lease => '1 hour');});
$lease_token = (split /\n/, $lease_token)[-1];
my $primary_retries = $primary->safe_psql('postgres', $RETRIES);
$primary->wait_for_catchup($standby);

subtest 'hot standby: completed keys replay, writes fail with 25006' => sub {
	is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'),
		't', 'standby is in recovery');
	is( $standby->safe_psql(
			'postgres', q{
SELECT count(*) FROM requests r, idem_lookup(r.key, r.scope) l
WHERE (l.status, l.response_code, l.response_body) IS DISTINCT FROM ('completed', r.code, r.response)}),
		'0',
		'standby: idem_lookup reports all 120 keys completed with their responses');
	is($standby->safe_psql('postgres', 'SELECT count(*) FROM requests'),
		'120', 'standby has all requests');
	my $retries = $standby->safe_psql('postgres', $RETRIES);
	is($retries, $primary_retries,
		'standby: retries replay exactly what they replay on the primary');
	is( $standby->safe_psql(
			'postgres',
			q{SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status <> 'replay'}),
		'0', 'standby: every retry is a replay');
	is( $standby->safe_psql(
			'postgres',
			q{SELECT count(*) FROM requests r, begin_request(r, true) b WHERE b.status <> 'mismatch' OR b.response_code IS NOT NULL}),
		'0', 'standby: a different body is a mismatch without the response');
	is( $standby->safe_psql(
			'postgres',
			q{SELECT count(*) FROM generate_series(1, 20) g WHERE idem_once('msg-' || g, 'consumer')}),
		'0', 'standby: idem_once of a recorded message is false');
	is( $standby->safe_psql(
			'postgres',
			q{BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status = 'replay';
COMMIT;}),
		'120', 'standby: replays under REPEATABLE READ too');

	is(sqlstate($standby, q{SELECT * FROM idem_begin('new-on-standby', '{"a": 1}'::jsonb)}),
		'25006', 'standby: idem_begin of a new key fails with 25006');
	is(sqlstate($standby, q{SELECT * FROM idem_begin('new-on-standby', 'x'::text, wait => false)}),
		'25006', 'standby: ... also with the text variant and wait => false');
	is(sqlstate($standby, q{SELECT * FROM idem_begin('short')}),
		'25006', 'standby: idem_begin of an expired key fails with 25006');
	is( $standby->safe_psql(
			'postgres', q{SELECT status || ':' || response_code || ':' || response_body
                  FROM idem_call('call-1', '{"n": 1}', 'call_work(jsonb)')}),
		'replay:201:{"n": 1}', 'standby: idem_call of a completed key replays');
	is(sqlstate($standby, q{SELECT * FROM idem_call('call-2', '{"n": 2}', 'call_work(jsonb)')}),
		'25006', 'standby: idem_call of a new key fails with 25006 before its work runs');
	is(sqlstate($standby, q{SELECT idem_once('new-msg', 'consumer')}),
		'25006', 'standby: idem_once of a new message fails with 25006');
	is(sqlstate($standby, q{SELECT idem_sweep()}),
		'25006', 'standby: idem_sweep fails with 25006');
	is( $standby->safe_psql(
			'postgres', q{
SELECT string_agg(l.status || coalesce(':' || l.response_code, ''), ',' ORDER BY k)
FROM unnest(ARRAY['lease-done', 'lease-live']) k, idem_lease(k) l}),
		'replay:201,in_progress',
		'standby: idem_lease replays a finished lease and reports a live one in progress');
	is(sqlstate($standby, q{SELECT * FROM idem_lease('lease-out')}),
		'25006', 'standby: taking over a lease that ran out fails with 25006');
	is(sqlstate($standby, q{SELECT * FROM idem_lease('lease-new')}),
		'25006', 'standby: a new lease fails with 25006');
	is(sqlstate($standby, qq{SELECT idem_checkpoint('lease-live', '$lease_token', 'p')}),
		'25006', 'standby: idem_checkpoint fails with 25006');
	is(sqlstate($standby, qq{SELECT idem_finish('lease-live', 200, token => '$lease_token')}),
		'25006', 'standby: idem_finish with a token fails with 25006');
	is( $standby->safe_psql(
			'postgres',
			q{SELECT status FROM idem_lookup('new-on-standby') UNION ALL SELECT status FROM idem_lookup('short')}),
		"absent\nabsent", 'standby: the new and the expired key are absent');
	is( $standby->safe_psql(
			'postgres',
			q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756}),
		'0', 'standby: the failed calls left no key lock');
};

subtest 'hot standby: a key finished on the primary but not committed' => sub {
	my $holder = $primary->background_psql('postgres');
	$holder->query_safe(q{BEGIN;
INSERT INTO requests VALUES ('', 'pending', 'jsonb', '{"amount": 5}', NULL, NULL, 201, '{"id": "p"}');
SELECT count(*) FROM requests r, handle(r) s WHERE key = 'pending' AND s = 'started';});
	# another transaction's commit flushes WAL past the holder's insert
	$primary->safe_psql('postgres', q{SELECT idem_once('flush')});
	$primary->wait_for_catchup($standby);

	is($standby->safe_psql('postgres', q{SELECT status FROM idem_lookup('pending')}),
		'in_progress', 'standby: idem_lookup reports it in progress');
	is( $standby->safe_psql(
			'postgres',
			q{SELECT status FROM idem_begin('pending', '{"amount": 5}'::jsonb, wait => false)}),
		'in_progress', 'standby: idem_begin with wait => false reports in_progress');

	# A retry on the standby waits for the primary's transaction to end.
	my $waiter = $standby->background_psql('postgres');
	$waiter->{stdin} .= q{SELECT 'result:' || status || ':' || response_code || ':' || response_body
FROM idem_begin('pending', '{"amount": 5}'::jsonb);
};
	my ($deadline, $active) = (time + 30, 'f');
	while (time < $deadline)
	{
		$waiter->{run}->pump_nb;
		last if $waiter->{stdout} ne '' || $waiter->{stderr} ne '';
		$active = $standby->safe_psql(
			'postgres', q{
SELECT count(*) = 1 FROM pg_stat_activity
WHERE state = 'active' AND query LIKE '%result:%' AND pid <> pg_backend_pid()});
		last if $active eq 't';
		usleep(20_000);
	}
	is($active, 't', 'standby: the retry is running')
	  or diag "stdout: $waiter->{stdout}\nstderr: $waiter->{stderr}";
	# Nothing to wait for when nothing should happen: look again after
	# 200 ms that the retry has not returned.
	usleep(200_000);
	$waiter->{run}->pump_nb;
	is($waiter->{stdout}, '', 'standby: the retry waits while the primary transaction is open');

	$holder->query_safe('COMMIT');
	$holder->quit;
	ok( pump_until(
			$waiter->{run}, $waiter->{timeout},
			\$waiter->{stdout}, qr/result:/),
		'standby: the retry returns once the commit is replayed');
	like($waiter->{stdout}, qr/^result:replay:201:\{"id": "p"\}$/m,
		'standby: ... with a replay of the response committed on the primary');
	$waiter->quit;
	$primary_retries = $primary->safe_psql('postgres', $RETRIES);
};

subtest 'promotion: the new primary replays old keys and starts new ones' => sub {
	# A transaction open on the old primary at failover: its key is finished
	# there but never commits.
	my $lost = $primary->background_psql('postgres');
	$lost->query_safe(q{BEGIN;
SELECT status FROM idem_begin('inflight', '{"amount": 9}'::jsonb);
INSERT INTO orders VALUES ('inflight', '', 9);
SELECT idem_finish('inflight', 201, '{"id": "lost"}');});
	$primary->safe_psql('postgres', q{SELECT idem_once('flush2')});
	$primary->wait_for_catchup($standby);
	is($standby->safe_psql('postgres', q{SELECT status FROM idem_lookup('inflight')}),
		'in_progress', 'standby: the open transaction key shows in progress before failover');

	$standby->promote;
	ok($standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'),
		'standby promoted');
	my $new = $standby;

	is($new->safe_psql('postgres', $RETRIES), $primary_retries,
		'new primary: every retry replays what the old primary stored');
	is( $new->safe_psql(
			'postgres',
			q{SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status <> 'replay'}),
		'0', 'new primary: every committed key replays');
	is( $new->safe_psql(
			'postgres',
			q{SELECT count(*) FROM requests r, begin_request(r, true) b WHERE b.status <> 'mismatch'}),
		'0', 'new primary: a different body is still a mismatch');
	is( $new->safe_psql(
			'postgres',
			q{SELECT count(*) FROM generate_series(1, 20) g WHERE idem_once('msg-' || g, 'consumer')}),
		'0', 'new primary: recorded messages are not seen again');

	is($new->safe_psql('postgres', q{SELECT status FROM idem_lookup('inflight')}),
		'absent', 'new primary: the key of the transaction lost in the failover is absent');
	is( $new->safe_psql(
			'postgres', q{
BEGIN;
SELECT status FROM idem_begin('inflight', '{"amount": 9}'::jsonb, wait => false);
INSERT INTO orders VALUES ('inflight', '', 9);
SELECT idem_finish('inflight', 201, '{"id": "again"}');
COMMIT;}),
		"started\n", 'new primary: ... and its retry starts without waiting');
	is( $new->safe_psql(
			'postgres',
			q{SELECT status, response_body FROM idem_begin('inflight', '{"amount": 9}'::jsonb)}),
		'replay|{"id": "again"}', 'new primary: ... then replays');

	is(add_requests($new, 'promoted', 41, 10), '0', 'new primary: 30 new requests started');
	is( $new->safe_psql(
			'postgres',
			q{SELECT count(*) FROM requests r, handle(r) s WHERE s <> 'replay'}),
		'0', 'new primary: new keys started, finished and now replay');
	is( $new->safe_psql(
			'postgres', q{
BEGIN;
SELECT status FROM idem_begin('short');
SELECT idem_finish('short', 200);
COMMIT;
SELECT status FROM idem_begin('short');}),
		"started\n\nreplay", 'new primary: an expired key starts again');
	is($new->safe_psql('postgres', q{SELECT idem_once('new-msg', 'consumer')}),
		't', 'new primary: idem_once of a new message is true');
	is( $new->safe_psql(
			'postgres', q{
SELECT count(*) FROM requests r
WHERE (SELECT count(*) FROM orders o WHERE o.key = r.key AND o.scope = r.scope) <> 1}),
		'0', 'new primary: one business row per request');
	is( $new->safe_psql(
			'postgres', q{
SELECT count(*) FROM orders o
WHERE NOT EXISTS (SELECT FROM idem_keys k WHERE k.scope = o.scope AND k.key = o.key AND k.state = 'c')}),
		'0', 'new primary: every business row has its completed key');
	$lost->quit;
};

$standby->stop;
$primary->stop;
note sprintf('%.1f s', time - $t0);
done_testing();
