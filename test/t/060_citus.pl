# On Citus (issue #13): a coordinator and two workers, with the extension set
# up by idem_citus_setup().  Keys live with their tenant's shard, commit in
# the worker's transaction with the tenant's writes, move with the shard
# (a move, a tenant isolation, a rebalance), and every call Citus does not
# delegate to the tenant's node is refused.  Runs wherever Citus is
# installed for the server under test; skipped, and says so, elsewhere
# (Citus is not in Debian's packages: docs/citus.md says how it was run).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemPoll;

my $sharedir = `pg_config --sharedir`;
chomp $sharedir;
plan skip_all => "Citus is not installed for this server ($sharedir/extension/citus.control "
  . "is absent): this test runs wherever it is"
  unless -e "$sharedir/extension/citus.control";

# --- the cluster -----------------------------------------------------------
my @nodes;
for my $name (qw(coordinator worker1 worker2))
{
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical');
	$node->append_conf(
		'postgresql.conf', q{
listen_addresses = '127.0.0.1'
shared_preload_libraries = 'citus,idempotency'
max_prepared_transactions = 20
max_connections = 100
citus.shard_count = 4
idempotency.sweep_interval = '1s'
});
	$node->start;
	# PostgreSQL's newer minors list the logical decoding plugins a
	# replication role may use; Citus's shard splits decode with "citus"
	if ($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'}) eq '1')
	{
		$node->append_conf('postgresql.conf',
			q{output_plugin_libraries = 'pgoutput, test_decoding, citus'});
		$node->reload;
	}
	push @nodes, $node;
}
my ($coord, @workers) = @nodes;
note 'Citus ' . $coord->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'citus'})
  . ' on PostgreSQL ' . $coord->safe_psql('postgres', 'SHOW server_version');

# A database with Citus on every node and the workers in its metadata.
sub citus_database
{
	my ($db, $owner) = @_;
	my $with = $owner ? " OWNER $owner" : '';
	for my $node (reverse @nodes)
	{
		$node->safe_psql('postgres', qq{CREATE DATABASE $db$with}) if $db ne 'postgres';
		$node->safe_psql($db, q{CREATE EXTENSION citus});
	}
	$coord->safe_psql($db, sprintf(q{SELECT citus_set_coordinator_host('127.0.0.1', %d)}, $coord->port));
	$coord->safe_psql($db, sprintf(q{SELECT citus_add_node('127.0.0.1', %d)}, $_->port))
	  for @workers;
	return;
}

# The SQLSTATE of the error $sql raises on $node, or what it printed.
sub sqlstate
{
	my ($node, $db, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, "\\set VERBOSITY verbose\n$sql", stdout => \$out, stderr => \$err);
	return $err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : "no error: $out";
}

# The node that holds the shard of $table for $tenant, and the shard's name.
sub shard_of
{
	my ($db, $table, $tenant) = @_;
	my ($port, $name) = split /\|/, $coord->safe_psql($db, qq{
SELECT p.nodeport, shard_name('$table', p.shardid)
  FROM pg_dist_shard_placement p
 WHERE p.shardid = get_shard_id_for_distribution_column('$table', $tenant)});
	my ($node) = grep { $_->port == $port } @nodes;
	return ($node, $name);
}

# --- before the setup --------------------------------------------------------
citus_database('postgres');
$coord->safe_psql('postgres', q{
CREATE EXTENSION idempotency;
CREATE TABLE payments (tenant_id bigint, id bigint, amount int, PRIMARY KEY (tenant_id, id));
SELECT create_distributed_table('payments', 'tenant_id');
CREATE TABLE plain (id int);
CREATE ROLE app LOGIN;
GRANT SELECT, INSERT ON payments TO app;
});

subtest 'Citus without the setup: every call is refused' => sub {
	is(sqlstate($coord, 'postgres', q{SELECT * FROM idem_begin('k', '{}'::jsonb, '42')}),
		'55000', 'idem_begin on the coordinator: 55000, not set up');
	is(sqlstate($workers[0], 'postgres', q{SELECT idem_once('m', '42')}),
		'55000', 'idem_once on a worker (the extension came with CREATE EXTENSION): 55000');
	my ($ret, $out, $err) = $coord->psql('postgres',
		q{SELECT * FROM idem_begin('k', '{}'::jsonb, '42')});
	like($err, qr/HINT:  As a superuser on the coordinator, run SELECT public.idem_citus_setup/,
		'the hint names the setup');
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM idem_keys}), '0',
		'nothing was written to the coordinator\'s own table');
};

subtest 'idem_citus_setup checks what it is given, and who runs it where' => sub {
	is(sqlstate($coord, 'postgres', q{SELECT * FROM idem_citus_setup(NULL)}), '22004', 'NULL: 22004');
	is(sqlstate($coord, 'postgres', q{SELECT * FROM idem_citus_setup('plain')}), '42809',
		'a local table: 42809');
	is(sqlstate($coord, 'postgres', q{SET ROLE app; SELECT * FROM idem_citus_setup('payments')}),
		'42501', 'an application role may not call it');
	is(sqlstate($workers[0], 'postgres', q{SELECT * FROM idem_citus_setup('payments')}),
		'55000', 'on a worker: 55000');
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname = 'idem_tenant_keys'}),
		'0', 'the refused calls made nothing');
};

my $setup = $coord->safe_psql('postgres', q{SELECT object || ': ' || action FROM idem_citus_setup('payments')});
like($setup, qr/^public\.idem_tenant_keys: created, colocated with public\.payments$/m, 'setup made the keys table');
like($setup, qr/^public\.idem_begin\(text,jsonb,bigint,interval,boolean\): delegated/m,
	'and a bigint overload of idem_begin, delegated');
is($coord->safe_psql('postgres', q{
SELECT count(*) FROM pg_dist_object o
 WHERE o.classid = 'pg_proc'::regclass AND o.force_delegation
   AND o.colocationid = (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'payments'::regclass)}),
	'22', 'every function that takes a scope is delegated with the tenants of payments');
like($coord->safe_psql('postgres', q{SELECT string_agg(DISTINCT action, ',') FROM idem_citus_setup('payments') WHERE object = 'public.idem_tenant_keys'}),
	qr/^kept$/, 'running it again keeps the table');

# --- the write path on the tenant's node -------------------------------------
subtest 'a key commits in the worker transaction of its tenant\'s writes' => sub {
	$coord->safe_psql('postgres', q{
BEGIN;
SELECT status FROM idem_begin('pay-1', '{"amount": 100}'::jsonb, 42::bigint);
INSERT INTO payments VALUES (42, 1, 100);
SELECT idem_finish('pay-1', 201, '{"paid": 1}'::jsonb, 42::bigint);
COMMIT;
});
	my ($node, $keys_shard) = shard_of('postgres', 'idem_tenant_keys', 42);
	my ($pnode, $pay_shard) = shard_of('postgres', 'payments', 42);
	is($node->name, $pnode->name, 'the keys of tenant 42 are on the node of its payments');
	is($node->safe_psql('postgres', qq{
SELECT k.xmin = p.xmin FROM $keys_shard k, $pay_shard p
 WHERE k.key = 'pay-1' AND k.tenant = 42 AND p.tenant_id = 42 AND p.id = 1}), 't',
		'the key and the payment were written by one transaction of that worker');
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM idem_keys}), '0',
		'and nothing by the coordinator');
	is($coord->safe_psql('postgres', q{SELECT status || ' ' || response_code || ' ' || response_body
		FROM idem_begin('pay-1', '{"amount": 100}'::jsonb, 42::bigint)}),
		'replay 201 {"paid": 1}', 'a retry gets the stored response');
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_begin('pay-1', '{"amount": 999}'::jsonb, 42::bigint)}),
		'mismatch', 'another body is a mismatch');
	is($coord->safe_psql('postgres', q{SELECT idem_once('msg-1', 42::bigint)})
		  . $coord->safe_psql('postgres', q{SELECT idem_once('msg-1', 42::bigint)}),
		'tf', 'idem_once is true once');
	$coord->safe_psql('postgres', q{
CREATE FUNCTION pay(request jsonb) RETURNS idem_response LANGUAGE sql AS $$
  -- Citus's rule inside a delegated call: the tenant with its column's type
  INSERT INTO payments VALUES (7::bigint, 1, (request->>'a')::int);
  SELECT idem_response(201, '{"ok": true}');
$$;
SELECT create_distributed_function('pay(jsonb)');
});
	is($coord->safe_psql('postgres', q{SELECT status || ' ' || response_code FROM idem_call('call-1', '{"a": 1}'::jsonb,
		'pay(jsonb)'::regprocedure, 7::bigint)}), 'done 201',
		'idem_call runs the work on the tenant\'s node, in one statement');
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_call('call-1', '{"a": 1}'::jsonb,
		'pay(jsonb)'::regprocedure, 7::bigint)}), 'replay', 'and its retry is a replay');
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments WHERE tenant_id = 7}), '1',
		'that paid once');
	is($coord->safe_psql('postgres', q{SET ROLE app; SELECT idem_once('app-1', 42::bigint)}),
		't', 'an application role calls it with no privilege on the keys table');
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_begin('pay-1', '{"amount": 100}'::jsonb, '042'::bigint)}),
		'replay', 'one tenant, one scope: 042 is 42');
};

subtest 'a call Citus does not delegate is refused, never run on the wrong node' => sub {
	is(sqlstate($coord, 'postgres', q{SELECT (idem_begin('pay-1', '{"amount": 100}'::jsonb, 42::bigint)).status}),
		'0A000', 'a call inside an expression: 0A000 (it used to answer "started")');
	is(sqlstate($coord, 'postgres', q{DO $$ BEGIN IF idem_once('msg-1', 42::bigint) THEN RAISE NOTICE 'again'; END IF; END $$}),
		'0A000', 'a PL/pgSQL condition: 0A000 (it used to answer true again)');
	is(sqlstate($coord, 'postgres', q{SELECT * FROM idem_begin('pay-1', '{"amount": 100}'::jsonb, '42')}),
		'0A000', 'a text scope for a bigint tenant (the extension\'s own function, not delegated): 0A000');
	my ($ret, $out, $err) = $coord->psql('postgres', q{SELECT * FROM idem_begin('pay-1', '{}'::jsonb, '42')});
	like($err, qr/with the scope as a bigint/, 'whose hint says how to pass the scope');
	is(sqlstate($coord, 'postgres', q{SELECT * FROM idem_begin('pay-1', '{}'::jsonb, 'abc')}),
		'22P02', 'a scope that is no tenant: the type\'s own 22P02');
	is(sqlstate($coord, 'postgres', q{SELECT * FROM idem_begin('pay-1', '{}'::jsonb)}),
		'22023', 'the empty scope: 22023');
	my ($other) = grep { $_->port != (shard_of('postgres', 'payments', 42))[0]->port } @workers;
	is(sqlstate($other, 'postgres', q{SELECT * FROM idem_begin('pay-1', '{}'::jsonb, '42')}),
		'0A000', 'called directly on a worker without the shard: 0A000');
};

subtest 'concurrent attempts: one runs, the other waits and replays' => sub {
	my $a = $coord->background_psql('postgres', on_error_stop => 1);
	my $b = $coord->background_psql('postgres', on_error_stop => 1);
	$a->query_safe(q{BEGIN});
	like($a->query_safe(q{SELECT status FROM idem_begin('race-1', '{"n": 1}'::jsonb, 42::bigint)}),
		qr/started/, 'the first attempt starts');
	$b->query_until(qr/sent/, qq{\\echo sent\nSELECT status FROM idem_begin('race-1', '{"n": 1}'::jsonb, 42::bigint);\n});
	my ($node) = shard_of('postgres', 'payments', 42);
	ok(poll($node, 'postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND objsubid = 18756 AND NOT granted}, '1'),
		'the second waits on the key\'s lock on the tenant\'s node');
	$a->query_safe(q{INSERT INTO payments VALUES (42, 2, 5)});
	$a->query_safe(q{SELECT idem_finish('race-1', 201, NULL, 42::bigint)});
	$a->query_safe(q{COMMIT});
	like($b->query_until(qr/replay|started/, ''), qr/replay/, 'then gets the replay');
	$a->quit;
	$b->quit;
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments WHERE tenant_id = 42 AND id = 2}),
		'1', 'one payment');
};

subtest 'the commit guard keeps its SQLSTATE through Citus' => sub {
	is(sqlstate($coord, 'postgres', q{BEGIN; SELECT * FROM idem_begin('open-1', NULL::jsonb, 42::bigint); COMMIT;}),
		'55000', 'in a transaction block (one-phase commit of one worker): 55000, not Citus\'s XX000');
	my ($ret, $out, $err) = $coord->psql('postgres',
		q{BEGIN; SELECT * FROM idem_begin('open-1', NULL::jsonb, 42::bigint); COMMIT;});
	like($err, qr/ERROR:  idempotency key "open-1" in scope "42" was begun but neither finished nor released\nDETAIL:  Citus reported: could not commit/,
		'with the guard\'s message, and Citus\'s as the detail');
	is(sqlstate($coord, 'postgres', q{SELECT * FROM idem_begin('open-2', NULL::jsonb, 42::bigint)}),
		'55000', 'in autocommit: 55000');
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_lookup('open-1', 42::bigint)}), 'absent',
		'nothing was committed');
};

# --- shards that move ----------------------------------------------------------
subtest 'a shard move takes the keys along, and waits for a key being written' => sub {
	my ($from, $shard) = shard_of('postgres', 'payments', 42);
	my ($to) = grep { $_->port != $from->port } @workers;
	my $shardid = $coord->safe_psql('postgres', q{SELECT get_shard_id_for_distribution_column('payments', 42)});

	# a lease commits its key on its own, with no write of the tenant's
	my $holder = $coord->background_psql('postgres', on_error_stop => 1);
	$holder->query_safe(q{BEGIN});
	like($holder->query_safe(q{SELECT status FROM idem_lease('lease-1', NULL, 42::bigint)}),
		qr/started/, 'a transaction writes a leased key');
	my $mover = $coord->background_psql('postgres', on_error_stop => 1);
	$mover->query_until(qr/moving/, sprintf(qq{\\echo moving\nSELECT citus_move_shard_placement(%s, '127.0.0.1', %d, '127.0.0.1', %d, shard_transfer_mode := 'block_writes');\n\\echo moved\n},
		$shardid, $from->port, $to->port));
	ok(poll($from, 'postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND objsubid = 8 AND mode = 'ExclusiveLock' AND NOT granted}, '1'),
		'the move waits for it on the shard\'s metadata lock');
	$holder->query_safe(q{COMMIT});
	$mover->query_until(qr/moved/, '');
	$holder->quit;
	$mover->quit;
	is((shard_of('postgres', 'idem_tenant_keys', 42))[0]->port, $to->port, 'the keys moved with the payments');
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_begin('pay-1', '{"amount": 100}'::jsonb, 42::bigint)}),
		'replay', 'a retry after the move is a replay');
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_lookup('lease-1', 42::bigint)}),
		'in_progress', 'and the key written while the move waited is there');

	# a move with logical replication, the default; the shard left behind
	# is kept (Citus drops it later) to show it is not used
	my (undef, $keys_shard) = shard_of('postgres', 'idem_tenant_keys', 42);
	$coord->safe_psql('postgres', q{ALTER SYSTEM SET citus.defer_shard_delete_interval = -1; SELECT pg_reload_conf()});
	$coord->safe_psql('postgres', sprintf(q{SELECT citus_move_shard_placement(%s, '127.0.0.1', %d, '127.0.0.1', %d)},
		$shardid, $to->port, $from->port));
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_begin('pay-1', '{"amount": 100}'::jsonb, 42::bigint)}),
		'replay', 'and after a move back by logical replication');
	is($to->safe_psql('postgres', qq{SELECT count(*) FROM $keys_shard WHERE key = 'msg-1'}), '1',
		'the node it left still has the old shard of the keys');
	is(sqlstate($to, 'postgres', q{SELECT idem_once('msg-1', '42')}), '0A000',
		'and refuses a call of that tenant there: the shard is not placed on it');
	$coord->safe_psql('postgres', q{ALTER SYSTEM RESET citus.defer_shard_delete_interval; SELECT pg_reload_conf()});
	$coord->safe_psql('postgres', q{CALL citus_cleanup_orphaned_resources()});
};

subtest 'tenant isolation and a rebalance take the keys along' => sub {
	$coord->safe_psql('postgres', q{SELECT isolate_tenant_to_new_shard('payments', 42, 'CASCADE')});
	is($coord->safe_psql('postgres', q{SELECT get_shard_id_for_distribution_column('payments', 42) <> 0
		AND (SELECT shardminvalue = shardmaxvalue FROM pg_dist_shard
		      WHERE shardid = get_shard_id_for_distribution_column('idem_tenant_keys', 42))}), 't',
		'tenant 42 has a shard of its own, for its keys too');
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_begin('pay-1', '{"amount": 100}'::jsonb, 42::bigint)}),
		'replay', 'its keys replay');
	is($coord->safe_psql('postgres', q{SELECT idem_once('msg-1', 42::bigint)}), 'f', 'and its messages stay consumed');
	$coord->safe_psql('postgres', q{SELECT rebalance_table_shards('payments')});
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_begin('pay-1', '{"amount": 100}'::jsonb, 42::bigint)})
		. $coord->safe_psql('postgres', q{SELECT status FROM idem_call('call-1', '{"a": 1}'::jsonb, 'pay(jsonb)'::regprocedure, 7::bigint)}),
		'replayreplay', 'after a rebalance too');
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments}), '3', 'and nothing was paid twice');
};

subtest 'a call that waited for a move and finds its shard gone is refused with 40001' => sub {
	my ($node) = shard_of('postgres', 'idem_tenant_keys', 42);
	my $shardid = $coord->safe_psql('postgres', q{SELECT get_shard_id_for_distribution_column('idem_tenant_keys', 42)});
	my $group = $node->safe_psql('postgres', q{SELECT groupid FROM pg_dist_local_group});
	# what a move does at its end, on the node it leaves: the shard's
	# metadata lock, then the placement away, committed together
	my $mover = $node->background_psql('postgres', on_error_stop => 1);
	$mover->query_safe(q{BEGIN});
	$mover->query_safe(qq{SELECT lock_shard_metadata(7, ARRAY[$shardid]::bigint[])});
	$mover->query_safe(qq{UPDATE pg_dist_placement SET groupid = 99 WHERE shardid = $shardid});
	my $caller = $node->background_psql('postgres', on_error_stop => 0);
	$caller->query_until(qr/calling/, qq{\\echo calling\n\\set VERBOSITY verbose\nSELECT idem_once('moved-1', '42');\n\\echo called\n});
	ok(poll($node, 'postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND objsubid = 8 AND mode = 'ShareLock' AND NOT granted}, '1'),
		'a call on the shard waits for the move');
	$mover->query_safe(q{COMMIT});
	$caller->query_until(qr/called/, '');
	like($caller->{stderr}, qr/ERROR:  40001: the shard of idempotency scope "42" moved while this call waited for it/,
		'then gets 40001: the placement is read again once the lock is held');
	$caller->quit;
	$mover->quit;
	$node->safe_psql('postgres', qq{UPDATE pg_dist_placement SET groupid = $group WHERE shardid = $shardid});
	is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_tenant_keys_} . $shardid . q{ WHERE key = 'moved-1'}),
		'0', 'and wrote nothing where the shard was');
	is($node->safe_psql('postgres', q{SELECT idem_once('moved-1', '42')}), 't',
		'with the placement back, the call works');
};

# --- operations ------------------------------------------------------------------
subtest 'monitoring reads every node' => sub {
	$coord->safe_psql('postgres', q{SELECT idem_fail('fail-1', 'card declined', 43::bigint)});
	is($coord->safe_psql('postgres', q{SELECT tenant || ' ' || key || ' ' || status || ' ' || last_error FROM idem_citus_failed_keys}),
		'43 fail-1 failed card declined', 'idem_citus_failed_keys shows a failed key of a worker');
	is($coord->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE success), sum(started) > 0 FROM idem_citus_stats}),
		'3|t', 'idem_citus_stats has a row of each node, with the workers\' counts');
	ok(poll($coord, 'postgres', q{SELECT count(*) FILTER (WHERE datname = 'postgres') FROM idem_citus_sweeper_status}, '3'),
		'idem_citus_sweeper_status, each node\'s sweeper');
	is(sqlstate($coord, 'postgres', q{SET ROLE app; SELECT * FROM idem_citus_stats}), '42501',
		'an application role reads none of them');
};

subtest 'each node sweeps the shards it holds' => sub {
	$coord->safe_psql('postgres', q{SELECT idem_once('exp-' || 1, 44::bigint, '1 millisecond')});
	$coord->safe_psql('postgres', q{SELECT idem_once('exp-2', 45::bigint, '1 millisecond')});
	ok(poll($coord, 'postgres', q{SELECT count(*) FROM idem_tenant_keys WHERE key LIKE 'exp-%'}, '0', 30),
		'the expired keys are swept');
};

# --- other tenant types, and ALTER EXTENSION UPDATE -------------------------------------
subtest 'a text tenant, set up after an update from 0.5.0, through later updates' => sub {
	citus_database('texts');
	$coord->safe_psql('texts', q{
CREATE EXTENSION idempotency VERSION '0.5.0';
ALTER EXTENSION idempotency UPDATE;
CREATE TABLE orders (tenant text, id int, PRIMARY KEY (tenant, id));
SELECT create_distributed_table('orders', 'tenant');
SELECT count(*) FROM idem_citus_setup('orders');
});
	is($workers[1]->safe_psql('texts', q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
		'0.6.0', 'the update reached the workers');
	my $pay = q{BEGIN;
SELECT status FROM idem_begin('o-%1$s', '{}'::jsonb, 'acme');
INSERT INTO orders VALUES ('acme', %1$s);
SELECT idem_finish('o-%1$s', 201, NULL, 'acme');
COMMIT;};
	$coord->safe_psql('texts', sprintf($pay, 1));
	is($coord->safe_psql('texts', q{SELECT status FROM idem_begin('o-1', '{}'::jsonb, 'acme')}),
		'replay', 'the extension\'s own functions are delegated for a text tenant');

	# What an update that makes idem_finish again does (as 0.2.0 did), on
	# every node, with the event trigger off: the new function is not
	# delegated, and a call of it is refused.
	$coord->safe_psql('texts', q{ALTER EVENT TRIGGER idem_citus_after_update DISABLE});
	my $remake = q{
SET citus.enable_ddl_propagation = off;
SELECT pg_get_functiondef('idem_finish(text,integer,jsonb,text,uuid,jsonb,bytea)'::regprocedure) AS def \gset
ALTER EXTENSION idempotency DROP FUNCTION idem_finish(text,integer,jsonb,text,uuid,jsonb,bytea);
DROP FUNCTION idem_finish(text,integer,jsonb,text,uuid,jsonb,bytea);
:def;
ALTER EXTENSION idempotency ADD FUNCTION idem_finish(text,integer,jsonb,text,uuid,jsonb,bytea);
};
	$_->safe_psql('texts', $remake) for reverse @nodes;
	is(sqlstate($coord, 'texts', sprintf($pay, 2)), '0A000',
		'a function made again and not delegated is refused: nothing runs on the coordinator');
	is($coord->safe_psql('texts', q{SELECT count(*) FROM orders WHERE id = 2}), '0', 'and nothing was written');
	# The same with the event trigger on: its ALTER EXTENSION idempotency
	# ADD FUNCTION on the coordinator (an ALTER EXTENSION UPDATE of a later
	# version fires it the same way, at its end) delegates it again.
	$coord->safe_psql('texts', q{ALTER EVENT TRIGGER idem_citus_after_update ENABLE});
	$_->safe_psql('texts', $remake) for reverse @nodes;
	$coord->safe_psql('texts', sprintf($pay, 3));
	is($coord->safe_psql('texts', q{SELECT status FROM idem_begin('o-3', '{}'::jsonb, 'acme')}),
		'replay', 'the event trigger delegates a function made again');
};

subtest 'a uuid tenant' => sub {
	citus_database('uuids');
	$coord->safe_psql('uuids', q{
CREATE EXTENSION idempotency;
CREATE TABLE accounts (tenant uuid, id int, PRIMARY KEY (tenant, id));
SELECT create_distributed_table('accounts', 'tenant');
SELECT count(*) FROM idem_citus_setup('accounts');
});
	my $t = '3f0e8c1a-6b9f-4c1e-9a2b-5d7e8f901234';
	$coord->safe_psql('uuids', qq{BEGIN;
SELECT status FROM idem_begin('a-1', '{}'::jsonb, '$t'::uuid);
INSERT INTO accounts VALUES ('$t', 1);
SELECT idem_finish('a-1', 200, NULL, '$t'::uuid);
COMMIT;});
	is($coord->safe_psql('uuids', qq{SELECT status FROM idem_begin('a-1', '{}'::jsonb, '$t'::uuid)}),
		'replay', 'replay');
	is($coord->safe_psql('uuids', qq{SELECT scope FROM idem_tenant_keys}), $t,
		'the scope is the tenant\'s own text');
};

subtest 'a database owner cannot plant the keys table or an overload' => sub {
	$coord->safe_psql('postgres', q{CREATE ROLE mallory LOGIN});
	my $planted_table = q{
CREATE TABLE %1$s.idem_tenant_keys (created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,
    response_code int, state "char" NOT NULL, scope text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL,
    fingerprint bytea, response_body jsonb, lease_token uuid, lease_expires_at timestamptz,
    lease_duration interval, attempts int, phase text, phase_state jsonb, response_headers jsonb,
    response_bytes bytea, max_attempts int, last_error text, tenant bigint NOT NULL,
    PRIMARY KEY (scope, key, tenant));
CREATE INDEX idem_tenant_keys_expires_at ON %1$s.idem_tenant_keys (expires_at);
CREATE INDEX idem_tenant_keys_leases ON %1$s.idem_tenant_keys (lease_expires_at) WHERE state = 'p';
CREATE INDEX idem_tenant_keys_failures ON %1$s.idem_tenant_keys (scope, key) WHERE state IN ('f', 'd');
SELECT create_distributed_table('%1$s.idem_tenant_keys', 'tenant', colocate_with := 'public.payments');
};
	my $planted_overload = q{
CREATE FUNCTION %1$s.idem_once(key text, scope bigint, ttl interval DEFAULT '7 days')
RETURNS boolean LANGUAGE sql AS 'SELECT true';
};

	# She owns the database, and so public, where the extension is: she
	# could drop whatever the setup made there.  Calls and the setup refuse.
	citus_database('attack', 'mallory');
	$coord->safe_psql('attack', q{
CREATE EXTENSION idempotency;
CREATE TABLE payments (tenant_id bigint, id bigint, PRIMARY KEY (tenant_id, id));
SELECT create_distributed_table('payments', 'tenant_id');
});
	$coord->safe_psql('attack', "SET ROLE mallory;\n" . sprintf($planted_table, 'public'));
	my $holder = $coord->safe_psql('attack', q{SELECT nodeport FROM pg_dist_shard_placement
		WHERE shardid = get_shard_id_for_distribution_column('public.idem_tenant_keys', 42)});
	my ($w) = grep { $_->port == $holder } @workers;
	is(sqlstate($coord, 'attack', q{SELECT idem_once('m', '42')}), '42501',
		'in a schema she owns, a call refuses her keys table (42501), on the coordinator');
	is(sqlstate($w, 'attack', q{SELECT idem_once('m', '42')}), '42501',
		'and on the worker that holds her shard');
	is($coord->safe_psql('attack', q{SELECT count(*) FROM public.idem_tenant_keys}), '0',
		'nothing was written to it');
	is(sqlstate($coord, 'attack', q{SELECT * FROM idem_citus_setup('payments')}), '42501',
		'and the setup refuses the schema');

	# In a schema a superuser owns, where she could create for a while: what
	# she made then is refused, not taken over.
	citus_database('attack2');
	$coord->safe_psql('attack2', q{
CREATE SCHEMA idem;
CREATE EXTENSION idempotency SCHEMA idem;
CREATE TABLE payments (tenant_id bigint, id bigint, PRIMARY KEY (tenant_id, id));
SELECT create_distributed_table('payments', 'tenant_id');
GRANT USAGE, CREATE ON SCHEMA idem TO mallory;
GRANT SELECT ON payments TO mallory;
});
	$coord->safe_psql('attack2', "SET ROLE mallory;\n" . sprintf($planted_overload, 'idem'));
	$coord->safe_psql('attack2', q{REVOKE CREATE ON SCHEMA idem FROM mallory});
	is(sqlstate($coord, 'attack2', q{SELECT * FROM idem.idem_citus_setup('public.payments')}), '42809',
		'the setup does not replace an overload she made (42809)');
	is($coord->safe_psql('attack2', q{SELECT prosrc FROM pg_proc WHERE proname = 'idem_once'
		AND proowner = 'mallory'::regrole}), 'SELECT true', 'which stays as she wrote it');
	is($coord->safe_psql('attack2', q{SELECT count(*) FROM pg_class WHERE relname = 'idem_tenant_keys'}),
		'0', 'and the refused setup left nothing behind');
	$coord->safe_psql('attack2', q{DROP FUNCTION idem.idem_once(text, bigint, interval); GRANT CREATE ON SCHEMA idem TO mallory});
	$coord->safe_psql('attack2', "SET ROLE mallory;\n" . sprintf($planted_table, 'idem'));
	$coord->safe_psql('attack2', q{REVOKE CREATE ON SCHEMA idem FROM mallory});
	is(sqlstate($coord, 'attack2', q{SELECT idem.idem_once('m', '42')}), '42809',
		'a call refuses a keys table she made (42809)');
	is(sqlstate($coord, 'attack2', q{SELECT * FROM idem.idem_citus_setup('public.payments')}), '42809',
		'and so does the setup');
	is($coord->safe_psql('attack2', q{SELECT count(*) FROM idem.idem_tenant_keys}), '0',
		'nothing was written to it');
};

subtest 'tenants whose text is not one spelling are refused' => sub {
	$coord->safe_psql('uuids', q{
CREATE TABLE amounts (tenant numeric, id int, PRIMARY KEY (tenant, id));
SELECT create_distributed_table('amounts', 'tenant');
});
	is(sqlstate($coord, 'uuids', q{SELECT * FROM idem_citus_setup('amounts')}), '0A000',
		'numeric (1.0 and 1 are one tenant, two texts): 0A000');
};

$_->stop for @nodes;
done_testing();
