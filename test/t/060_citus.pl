# On Citus: a coordinator and two workers, with the extension set
# up by idem_citus_setup().  Keys live with their tenant's shard, commit in
# the worker's transaction with the tenant's writes, move with the shard
# (a move, a tenant isolation, a rebalance, a drain with writes running),
# and every call Citus does not delegate to the tenant's node is refused.
# ALTER EXTENSION UPDATE runs as Citus runs it: on the coordinator, then on
# the workers.  Runs wherever Citus is installed for the server under test;
# skipped, and says so, elsewhere (Citus is not in Debian's packages:
# docs/citus.md says how it was run).
use strict;
use warnings;

use File::Basename qw(basename dirname);
use File::Copy qw(copy);
use File::Path qw(make_path);
use FindBin;
use lib $FindBin::RealBin;
use POSIX qw(WNOHANG);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemPoll;

my %pgdir = map { my $d = `pg_config --$_`; chomp $d; ($_ => $d) } qw(bindir sharedir pkglibdir);
my $sharedir = $pgdir{sharedir};
plan skip_all => "Citus is not installed for this server ($sharedir/extension/citus.control "
  . "is absent): this test runs wherever it is"
  unless -e "$sharedir/extension/citus.control";

# --- the nodes' installation -------------------------------------------------
# The nodes run from an installation of the test's own, so that its share
# directory can hold a version of the extension that no one ships: a copy
# of the server's programs, beside which PostgreSQL finds its share
# directory and its libraries by their paths relative to the programs (the
# same paths as the server's, under a directory of the test's); there, links
# to the server's own files, and one file more.  That file is a made-up next
# version, whose update makes idem_once again and adds a function that takes
# a scope, as the 0.2.0 and 0.4.0 updates made functions again and added
# others.
my ($default) = slurp_file("$sharedir/extension/idempotency.control")
  =~ /^default_version\s*=\s*'([^']+)'/m;
my $next = "$default-next";
my $inst = PostgreSQL::Test::Utils::tempdir('install');
{
	my $bin = "$inst$pgdir{bindir}";
	make_path($bin, "$inst$sharedir/extension", dirname("$inst$pgdir{pkglibdir}"));
	for my $f (glob("$pgdir{bindir}/*"))
	{
		copy($f, "$bin/" . basename($f)) or die "copying $f: $!";
		chmod(0755, "$bin/" . basename($f)) or die "chmod $bin/" . basename($f) . ": $!";
	}
	-e "$inst$pgdir{pkglibdir}"
	  or symlink($pgdir{pkglibdir}, "$inst$pgdir{pkglibdir}")
	  or die "linking $pgdir{pkglibdir}: $!";
	for my $f (grep { basename($_) ne 'extension' } glob("$sharedir/*"), glob("$sharedir/extension/*"))
	{
		my $to = $inst . $f;
		symlink($f, $to) or die "linking $f: $!";
	}
	# (a file of that name in the server's own directory is not this one)
	unlink("$inst$sharedir/extension/idempotency--$default--$next.sql");
	append_to_file("$inst$sharedir/extension/idempotency--$default--$next.sql", <<'SQL');
-- A made-up next version, for test/t/060_citus.pl only: idem_once made
-- again, and a new function that takes a scope.
DROP FUNCTION @extschema@.idem_once(pg_catalog.text, pg_catalog.text, pg_catalog.interval);
CREATE FUNCTION @extschema@.idem_once(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '7 days')
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_once'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION @extschema@.idem_once_next(
    key pg_catalog.text,
    scope pg_catalog.text DEFAULT '',
    ttl pg_catalog.interval DEFAULT '7 days')
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'idem_once'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
SQL
}
my $install_path = dirname("$inst$pgdir{bindir}");

# --- the cluster -----------------------------------------------------------
my @nodes;
for my $name (qw(coordinator worker1 worker2))
{
	my $node = PostgreSQL::Test::Cluster->new($name, install_path => $install_path);
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

# What $sql prints on $node, or "ERROR <SQLSTATE>" if it fails.
sub result
{
	my ($node, $db, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, "\\set VERBOSITY verbose\n$sql", stdout => \$out, stderr => \$err);
	return $err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? "ERROR $1" : $out;
}

# The extension's version on every node, as Citus reads it.
sub versions
{
	my ($db) = @_;
	return $coord->safe_psql($db, q{SELECT string_agg(result, ' ' ORDER BY nodeid)
		FROM run_command_on_all_nodes($$SELECT extversion FROM pg_extension WHERE extname = 'idempotency'$$)});
}

# psql running $file on $db of $node in the background, its output and
# errors in files; returns the pid.
sub psql_file_start
{
	my ($node, $db, $file) = @_;
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null') or POSIX::_exit(1);
		open(STDOUT, '>', "$file.out") or POSIX::_exit(1);
		open(STDERR, '>', "$file.err") or POSIX::_exit(1);
		exec("$install_path/bin/psql", '-X', '-q', '-At', '-f', $file, '-d', $node->connstr($db))
		  or POSIX::_exit(127);
	}
	return $pid;
}

# The SQLSTATEs of the errors psql reported (with VERBOSITY verbose) in $file.
sub sqlstates_of
{
	my ($file) = @_;
	my $text = slurp_file($file);
	my %n;
	$n{$1}++ while $text =~ /ERROR:  ([0-9A-Z]{5}):/g;
	return \%n;
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
	'24', 'every function that takes a scope is delegated with the tenants of payments');
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

subtest 'scopes that belong to roles: checked on the node a call runs on, in both spellings' => sub {
	$coord->safe_psql('postgres', q{
CREATE ROLE owner42 LOGIN;
GRANT SELECT, INSERT ON payments TO owner42;
SELECT * FROM run_command_on_all_nodes($$INSERT INTO public.idem_scope_owners VALUES ('42', 'owner42')$$);
});
	is(sqlstate($coord, 'postgres', q{SET ROLE app; SELECT idem_once('owned-1', 42::bigint)}),
		'42501', 'a delegated call of another role is refused on the tenant\'s node');
	is($coord->safe_psql('postgres', q{SET ROLE owner42; SELECT idem_once('owned-1', 42::bigint)}),
		't', 'the owner\'s passes');
	my ($node) = shard_of('postgres', 'idem_tenant_keys', 42);
	is(sqlstate($node, 'postgres', q{SET ROLE app; SELECT idem_once('owned-2', '042')}),
		'42501', 'another spelling of the tenant, on its node, is refused too (it is tenant 42\'s)');
	is($node->safe_psql('postgres', q{SET ROLE owner42; SELECT idem_once('owned-2', '042')}),
		't', 'for the owner it is the tenant\'s scope');
	$coord->safe_psql('postgres', q{
SELECT * FROM run_command_on_all_nodes($$DELETE FROM public.idem_scope_owners$$);
});
	is($coord->safe_psql('postgres', q{SET ROLE app; SELECT idem_once('owned-3', 42::bigint)}),
		't', 'without rules, every role again');
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
	# what a call Citus sent there just before the move ended finds
	my ($ret, $out, $err) = $to->psql('postgres', "\\set VERBOSITY verbose\nSELECT idem_once('left-1', '42')");
	like($err, qr/ERROR:  40001: the shard of idempotency scope "42" moved away from this node/,
		'and answers a call of that tenant there with 40001 (it used to be 0A000): a retry goes to the new node');
	is($to->safe_psql('postgres', qq{SELECT count(*) FROM $keys_shard WHERE key = 'left-1'}), '0',
		'having written nothing to the old shard');
	is(sqlstate($coord, 'postgres', q{SELECT idem_once('left-1', '42')}), '0A000',
		'a node the shard never was on still answers 0A000: the call was not delegated');
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

subtest 'a call that reaches the shard\'s new node before that node commits the move waits for it' => sub {
	my ($node) = shard_of('postgres', 'idem_tenant_keys', 42);
	my ($other) = grep { $_->port != $node->port } @workers;
	my $shardid = $coord->safe_psql('postgres', q{SELECT get_shard_id_for_distribution_column('idem_tenant_keys', 42)});
	my $here = $node->safe_psql('postgres', q{SELECT groupid FROM pg_dist_local_group});
	my $there = $other->safe_psql('postgres', q{SELECT groupid FROM pg_dist_local_group});
	# Citus commits a move on the coordinator first, then on the nodes: the
	# coordinator may send a call to the new node while that node's catalog
	# still places the shard on the old one, and the move's transaction
	# there, about to place it here, holds the shard's metadata lock.
	$node->safe_psql('postgres', qq{UPDATE pg_dist_placement SET groupid = $there WHERE shardid = $shardid});
	my $mover = $node->background_psql('postgres', on_error_stop => 1);
	$mover->query_safe(q{BEGIN});
	$mover->query_safe(qq{SELECT lock_shard_metadata(7, ARRAY[$shardid]::bigint[])});
	$mover->query_safe(qq{UPDATE pg_dist_placement SET groupid = $here WHERE shardid = $shardid});
	my $caller = $node->background_psql('postgres', on_error_stop => 0);
	$caller->query_until(qr/calling/, qq{\\echo calling\n\\set VERBOSITY verbose\nSELECT idem_once('arrived-1', '42');\n\\echo called\n});
	ok(poll($node, 'postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND objsubid = 8 AND mode = 'ShareLock' AND NOT granted}, '1'),
		'the call waits for the move (it used to be refused at once, 0A000)');
	$mover->query_safe(q{COMMIT});
	like($caller->query_until(qr/called/, ''), qr/^t$/m, 'and once the move commits, runs there');
	is($caller->{stderr}, '', 'with no error');
	$caller->quit;
	$mover->quit;
	is($node->safe_psql('postgres', qq{SELECT count(*) FROM idem_tenant_keys_$shardid WHERE key = 'arrived-1'}),
		'1', 'the key is in the shard');
};

subtest 'a drain and a rebalance with writes running: every refusal is retryable, and each key pays once' => sub {
	$coord->safe_psql('postgres', q{
CREATE FUNCTION pay_load(request jsonb) RETURNS idem_response LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO payments VALUES ((request->>'t')::bigint, (request->>'id')::bigint, 1);
  RETURN idem_response(201, NULL);
END
$$;
SELECT create_distributed_function('pay_load(jsonb)');
});
	# two writers through the coordinator: idem_call, a statement that
	# Citus delegates, and a transaction block of idem_begin, the payment
	# and idem_finish; 24 tenants, on every shard
	my $n = 1500;
	my $dir = PostgreSQL::Test::Utils::tempdir('load');
	my ($calls, $blocks) = ("$dir/calls.sql", "$dir/blocks.sql");
	my ($sc, $sb) = ("\\set VERBOSITY verbose\n", "\\set VERBOSITY verbose\n");
	for my $i (1 .. $n)
	{
		my $t = 1 + $i % 24;
		$sc .= sprintf(qq{SELECT status FROM idem_call('load-c%d', '{"t": %d, "id": %d}'::jsonb, 'pay_load(jsonb)'::regprocedure, %d::bigint);\n},
			$i, $t, 100000 + $i, $t);
		$sb .= sprintf(qq{\\set go f\nBEGIN;\nSELECT status = 'started' AS go FROM idem_begin('load-b%d', '{}'::jsonb, %d::bigint) \\gset\n\\if :go\nINSERT INTO payments VALUES (%d, %d, 1);\nSELECT idem_finish('load-b%d', 201, NULL, %d::bigint);\n\\endif\nCOMMIT;\n},
			$i, $t, $t, 200000 + $i, $i, $t);
	}
	append_to_file($calls, $sc);
	append_to_file($blocks, $sb);

	# A move can be the transaction that Citus's distributed deadlock
	# detection cancels, when it and a writer wait for each other across
	# nodes: then it is run again, as an operator would.
	my $cancelled = 0;
	my $move = sub {
		my ($sql) = @_;
		for (;;)
		{
			my ($ret, $out, $err) = $coord->psql('postgres', $sql);
			return if $ret == 0;
			die "$sql: $err" unless $err =~ /involved in a distributed deadlock/ && $cancelled++ < 10;
		}
	};
	my %writing = map { (psql_file_start($coord, 'postgres', $_) => 1) } ($calls, $blocks);
	my ($cycles, $w2) = (0, $workers[1]->port);
	while (%writing)
	{
		my $mode = $cycles % 2 ? 'block_writes' : 'auto';
		$move->(qq{SELECT citus_drain_node('127.0.0.1', $w2, shard_transfer_mode := '$mode')});
		$move->(qq{SELECT citus_set_node_property('127.0.0.1', $w2, 'shouldhaveshards', true)});
		$move->(qq{SELECT rebalance_table_shards(shard_transfer_mode := '$mode')});
		$cycles++;
		waitpid($_, WNOHANG) == 0 or delete $writing{$_} for keys %writing;
	}
	note "$cycles drain and rebalance cycles ran while the writers wrote; "
	  . "Citus cancelled a move $cancelled times";
	my %codes;
	for my $f ($calls, $blocks)
	{
		my $c = sqlstates_of("$f.err");
		$codes{$_} += $c->{$_} for keys %$c;
	}
	note 'errors: ' . join(', ', map { "$_ x $codes{$_}" } sort keys %codes);
	is(join(',', grep { !/^(40001|40P01|25P02)$/ } sort keys %codes), '',
		'every call either worked or was refused with 40001 (a moved shard) or 40P01 (Citus\'s deadlock detection), both retryable');

	# the retries, with no move running
	waitpid(psql_file_start($coord, 'postgres', $_), 0) for ($calls, $blocks);
	is(join('', map { slurp_file("$_.err") } ($calls, $blocks)), '', 'every retry works');
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM payments WHERE id > 100000}), 2 * $n,
		'each key paid once');
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM idem_tenant_keys WHERE key LIKE 'load-%' AND state = 'c'}),
		2 * $n, 'and is completed');
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

subtest 'idempotency.unfinished on Citus: read where the key is, and set there' => sub {
	my ($ret, $out, $err) = $coord->psql('postgres', q{\set VERBOSITY verbose
SET idempotency.unfinished = 'release';
SELECT * FROM idem_begin('rel-1', NULL::jsonb, 42::bigint);});
	like($err, qr/ERROR:  55000: idempotency key "rel-1" in scope "42" was begun but neither finished nor released/,
		'a SET on the coordinator does not reach the node of the key: its commit guard refuses');
	like($err, qr/DETAIL:  idempotency.unfinished is "release" in this session, but the key was begun on another node/,
		'and the error says why');
	like($err, qr/HINT:  Call idem_finish\(\) or idem_release\(\) before COMMIT. On Citus idempotency.unfinished is read on the node that holds the key, where a SET on the coordinator does not reach: set it with ALTER ROLE ... SET on the coordinator \(Citus sets it on every node\), or with SET LOCAL in the transaction block while citus.propagate_set_commands is "local"./,
		'with a hint that names what reaches it (it used to suggest that very SET)');
	($ret, $out, $err) = $coord->psql('postgres', q{\set VERBOSITY verbose
SET idempotency.unfinished = 'release';
BEGIN; SELECT * FROM idem_begin('rel-2', NULL::jsonb, 42::bigint); COMMIT;});
	like($err, qr/ERROR:  55000: .*\nDETAIL:  Citus reported: could not commit.*\nidempotency.unfinished is "release" in this session/,
		'the same in a transaction block');
	is($coord->safe_psql('postgres', q{SET citus.propagate_set_commands = 'local';
BEGIN;
SET LOCAL idempotency.unfinished = 'release';
SELECT status FROM idem_begin('rel-3', NULL::jsonb, 42::bigint);
COMMIT;
SELECT status FROM idem_lookup('rel-3', 42::bigint);}), "started\nabsent",
		'SET LOCAL with citus.propagate_set_commands = local reaches it: the key is released');
	$coord->safe_psql('postgres', q{ALTER ROLE app SET idempotency.unfinished = 'release'});
	is($coord->safe_psql('postgres', q{SELECT status FROM idem_begin('rel-4', NULL::jsonb, 42::bigint);
SELECT status FROM idem_lookup('rel-4', 42::bigint);}, extra_params => [ '-U', 'app' ]), "started\nabsent",
		'so does ALTER ROLE ... SET, which Citus runs on every node');
	$coord->safe_psql('postgres', q{ALTER ROLE app RESET idempotency.unfinished});
};

subtest 'a work in SQL: what Citus plans in it, on the tenant\'s node' => sub {
	# Citus plans the statements of a LANGUAGE sql function without the
	# values of its parameters.  (Not tried here: an INSERT ... VALUES of
	# the request's values RETURNING a value that is not immutable, such as
	# jsonb_build_object(...), which crashes the worker's process on Citus
	# 14.0.1 unless citus.enable_local_fast_path_query_optimization is off;
	# docs/citus.md.)
	$coord->safe_psql('postgres', q{
CREATE FUNCTION pay_returning(request jsonb) RETURNS idem_response LANGUAGE sql
SET citus.enable_local_fast_path_query_optimization = off AS $$
  INSERT INTO payments VALUES ((request->>'t')::bigint, (request->>'id')::bigint, 1)
  RETURNING idem_response(201, jsonb_build_object('id', id));
$$;
CREATE FUNCTION pay_cte(request jsonb) RETURNS idem_response LANGUAGE sql AS $$
  WITH paid AS (INSERT INTO payments VALUES ((request->>'t')::bigint, (request->>'id')::bigint, 1) RETURNING id)
  SELECT idem_response(201, jsonb_build_object('id', paid.id)) FROM paid;
$$;
CREATE FUNCTION pay_count(request jsonb) RETURNS idem_response LANGUAGE sql AS $$
  SELECT idem_response(200, jsonb_build_object('n', count(*))) FROM payments
   WHERE tenant_id = (request->>'t')::bigint;
$$;
CREATE FUNCTION pay_two_statements(request jsonb) RETURNS idem_response LANGUAGE sql AS $$
  INSERT INTO payments VALUES ((request->>'t')::bigint, (request->>'id')::bigint, 1);
  SELECT idem_response(201, jsonb_build_object('id', (request->>'id')::bigint));
$$;
CREATE FUNCTION pay_returning_immutable(request jsonb) RETURNS idem_response LANGUAGE sql AS $$
  INSERT INTO payments VALUES ((request->>'t')::bigint, (request->>'id')::bigint, 1)
  RETURNING idem_response(201, NULL);
$$;
CREATE FUNCTION pay_plpgsql(request jsonb) RETURNS idem_response LANGUAGE plpgsql AS $$
DECLARE
  paid bigint;
BEGIN
  INSERT INTO payments VALUES ((request->>'t')::bigint, (request->>'id')::bigint, 1)
  RETURNING id INTO paid;
  RETURN idem_response(201, jsonb_build_object('id', paid));
END
$$;
SELECT create_distributed_function(f) FROM unnest(ARRAY['pay_returning(jsonb)', 'pay_cte(jsonb)', 'pay_count(jsonb)',
  'pay_two_statements(jsonb)', 'pay_returning_immutable(jsonb)', 'pay_plpgsql(jsonb)']::regprocedure[]) f;
});
	my $call = q{SELECT status || ' ' || response_code || ' ' || coalesce(response_body::text, '-')
		FROM idem_call('%s', '{"t": 8, "id": %d}'::jsonb, '%s(jsonb)'::regprocedure, 8::bigint)};
	my $n = 80;
	for my $work (qw(pay_returning pay_cte pay_count))
	{
		$n++;
		my ($ret, $out, $err) = $coord->psql('postgres', "\\set VERBOSITY verbose\n" . sprintf($call, "sql-$n", $n, $work));
		like($err, qr/ERROR:  0A000: could not create distributed plan/,
			"$work: Citus cannot plan it (0A000)");
		is($coord->safe_psql('postgres', qq{SELECT status FROM idem_lookup('sql-$n', 8::bigint)})
			  . $coord->safe_psql('postgres', qq{SELECT count(*) FROM payments WHERE tenant_id = 8 AND id = $n}),
			'absent0', "$work: nothing was paid or kept");
	}
	is($coord->safe_psql('postgres', sprintf($call, 'sql-84', 84, 'pay_two_statements')), 'done 201 {"id": 84}',
		'an INSERT with no RETURNING, the tenant from the request: works');
	is($coord->safe_psql('postgres', sprintf($call, 'sql-85', 85, 'pay_returning_immutable')), 'done 201 -',
		'an INSERT RETURNING only what is immutable: works');
	is($coord->safe_psql('postgres', sprintf($call, 'sql-86', 86, 'pay_plpgsql')), 'done 201 {"id": 86}',
		'INSERT ... RETURNING in PL/pgSQL: works');
	is($coord->safe_psql('postgres', sprintf($call, 'sql-86', 86, 'pay_plpgsql')), 'replay 201 {"id": 86}',
		'and replays');
};

# --- other tenant types, and ALTER EXTENSION UPDATE -------------------------------------
subtest 'a text tenant, set up after an update from 0.5.0' => sub {
	citus_database('texts');
	$coord->safe_psql('texts', q{
CREATE EXTENSION idempotency VERSION '0.5.0';
ALTER EXTENSION idempotency UPDATE;
CREATE TABLE public.orders (tenant text, id int, PRIMARY KEY (tenant, id));
SELECT create_distributed_table('public.orders', 'tenant');
SELECT count(*) FROM idem_citus_setup('public.orders');
});
	is(versions('texts'), "$default $default $default", 'the update reached the workers');
	my $pay = q{BEGIN;
SELECT status FROM idem_begin('o-%1$s', '{}'::jsonb, 'acme');
INSERT INTO public.orders VALUES ('acme', %1$s);
SELECT idem_finish('o-%1$s', 201, NULL, 'acme');
COMMIT;};
	$coord->safe_psql('texts', sprintf($pay, 1));
	is($coord->safe_psql('texts', q{SELECT status FROM idem_begin('o-1', '{}'::jsonb, 'acme')}),
		'replay', 'the extension\'s own functions are delegated for a text tenant');

	# A function made again by hand on the coordinator, with the event
	# trigger off: it is not delegated, and a call of it is refused.
	$coord->safe_psql('texts', q{ALTER EVENT TRIGGER idem_citus_after_update DISABLE});
	$coord->safe_psql('texts', q{
SET citus.enable_ddl_propagation = off;
SELECT pg_get_functiondef('idem_finish(text,integer,jsonb,text,uuid,jsonb,bytea)'::regprocedure) AS def \gset
ALTER EXTENSION idempotency DROP FUNCTION idem_finish(text,integer,jsonb,text,uuid,jsonb,bytea);
DROP FUNCTION idem_finish(text,integer,jsonb,text,uuid,jsonb,bytea);
:def;
ALTER EXTENSION idempotency ADD FUNCTION idem_finish(text,integer,jsonb,text,uuid,jsonb,bytea);
});
	is(sqlstate($coord, 'texts', sprintf($pay, 2)), '0A000',
		'a function made again and not delegated is refused: nothing runs on the coordinator');
	is($coord->safe_psql('texts', q{SELECT count(*) FROM public.orders WHERE id = 2}), '0', 'and nothing was written');
	$coord->safe_psql('texts', q{ALTER EVENT TRIGGER idem_citus_after_update ENABLE;
SELECT count(*) FROM idem_citus_setup('public.orders');});
	$coord->safe_psql('texts', sprintf($pay, 3));
	is($coord->safe_psql('texts', q{SELECT status FROM idem_begin('o-3', '{}'::jsonb, 'acme')}),
		'replay', 'idem_citus_setup() delegates it again');
};

subtest 'ALTER EXTENSION UPDATE as Citus runs it (coordinator, then workers): every call keeps working' => sub {
	# the made-up next version makes idem_once again and adds idem_once_next;
	# Citus runs the update on the workers after the coordinator's command
	# and its event triggers
	$coord->safe_psql('texts', qq{ALTER EXTENSION idempotency UPDATE TO '$next'});
	is(versions('texts'), "$next $next $next", 'the update ran on every node');
	is($coord->safe_psql('texts', q{SELECT string_agg(p.proname || ' ' || o.force_delegation, ', ' ORDER BY p.proname)
		FROM pg_dist_object o JOIN pg_proc p ON o.classid = 'pg_proc'::regclass AND o.objid = p.oid
		WHERE p.proname IN ('idem_once', 'idem_once_next')}),
		'idem_once true, idem_once_next true', 'the function it made again and the one it added are delegated');
	is(result($coord, 'texts', q{SELECT idem_once('n-1', 'acme')}) . result($coord, 'texts', q{SELECT idem_once('n-1', 'acme')}),
		'tf', 'idem_once, made again, works (it used to be refused, 0A000, until idem_citus_setup() ran again)');
	is(result($coord, 'texts', q{SELECT idem_once_next('n-2', 'acme')}), 't', 'and so does the new function');
	is($coord->safe_psql('texts', q{SELECT status FROM idem_begin('o-1', '{}'::jsonb, 'acme')}),
		'replay', 'and the keys from before replay');
};

subtest 'a uuid tenant, in a schema of its own, set up at 0.6.0 and updated' => sub {
	citus_database('uuids');
	$coord->safe_psql('uuids', q{
CREATE SCHEMA idem;
CREATE EXTENSION idempotency SCHEMA idem VERSION '0.6.0';
CREATE TABLE public.accounts (tenant uuid, id int, PRIMARY KEY (tenant, id));
SELECT create_distributed_table('public.accounts', 'tenant');
SELECT count(*) FROM idem.idem_citus_setup('public.accounts');
});
	my $t = '3f0e8c1a-6b9f-4c1e-9a2b-5d7e8f901234';
	$coord->safe_psql('uuids', qq{BEGIN;
SELECT status FROM idem.idem_begin('a-1', '{}'::jsonb, '$t'::uuid);
INSERT INTO public.accounts VALUES ('$t', 1);
SELECT idem.idem_finish('a-1', 200, NULL, '$t'::uuid);
COMMIT;});
	is($coord->safe_psql('uuids', qq{SELECT status FROM idem.idem_begin('a-1', '{}'::jsonb, '$t'::uuid)}),
		'replay', 'replay');
	is($coord->safe_psql('uuids', qq{SELECT scope FROM idem.idem_tenant_keys}), $t,
		'the scope is the tenant\'s own text');

	$coord->safe_psql('uuids', q{ALTER EXTENSION idempotency UPDATE});
	is(versions('uuids'), "$default $default $default", "from 0.6.0 to $default on every node");
	is($coord->safe_psql('uuids', qq{SELECT status FROM idem.idem_begin('a-1', '{}'::jsonb, '$t'::uuid)})
		  . ' ' . $coord->safe_psql('uuids', qq{SELECT idem.idem_once('a-2', '$t'::uuid)}),
		'replay t', 'calls work after it');

	# an update whose functions cannot all be delegated fails, on every
	# node: here an overload of the new function that a non-superuser owns
	$coord->safe_psql('uuids', q{CREATE ROLE eve;
CREATE FUNCTION idem.idem_once_next(key text, scope uuid, ttl interval DEFAULT '7 days')
RETURNS boolean LANGUAGE sql AS 'SELECT true';
ALTER FUNCTION idem.idem_once_next(text, uuid, interval) OWNER TO eve;});
	my ($ret, $out, $err) = $coord->psql('uuids', qq{\\set VERBOSITY verbose\nALTER EXTENSION idempotency UPDATE TO '$next'});
	like($err, qr/ERROR:  42809: function idem.idem_once_next\(text,uuid,interval\) is not idem_citus_setup\(\)'s/,
		'an update whose delegation fails is refused');
	like($err, qr/delegating the functions of extension "idempotency" again after ALTER EXTENSION/,
		'and says where it failed');
	is(versions('uuids'), "$default $default $default", 'and undone on every node');
	is(result($coord, 'uuids', qq{SELECT idem.idem_once('a-3', '$t'::uuid)}), 't', 'calls keep working');
	$coord->safe_psql('uuids', q{DROP FUNCTION idem.idem_once_next(text, uuid, interval)});
	$coord->psql('uuids', qq{ALTER EXTENSION idempotency UPDATE TO '$next'});
	is(versions('uuids'), "$next $next $next", 'then it runs');
	is(result($coord, 'uuids', qq{SELECT idem.idem_once_next('a-4', '$t'::uuid)})
		  . result($coord, 'uuids', qq{SELECT idem.idem_once_next('a-4', '$t'::uuid)})
		  . result($coord, 'uuids', qq{SELECT idem.idem_once('a-5', '$t'::uuid)}),
		'tft', 'with an overload of the new function for the uuid tenant, delegated, and idem_once made again');
};

subtest 'pg_monitor and a schema of the extension\'s own' => sub {
	like($coord->safe_psql('uuids', q{SELECT object || ': ' || action FROM idem.idem_citus_setup('public.accounts')}),
		qr/^schema idem: pg_monitor may not use it: a monitoring role reads the views after GRANT USAGE ON SCHEMA idem TO <that role>$/m,
		'the setup says what a monitoring role needs');
	$coord->safe_psql('uuids', q{CREATE ROLE watcher LOGIN IN ROLE pg_monitor});
	is(sqlstate($coord, 'uuids', q{SET ROLE watcher; SELECT * FROM idem.idem_citus_stats}), '42501',
		'a pg_monitor member without USAGE on the schema: 42501');
	$coord->safe_psql('uuids', q{GRANT USAGE ON SCHEMA idem TO watcher});
	is($coord->safe_psql('uuids', q{SET ROLE watcher;
SELECT count(*) FILTER (WHERE success) FROM idem.idem_citus_stats;
SELECT count(*) FILTER (WHERE success) FROM idem.idem_citus_sweeper_status;}), "3\n3",
		'with it, every node\'s row of each view');
	is(sqlstate($coord, 'uuids', q{SET ROLE watcher; SELECT * FROM idem.idem_citus_failed_keys}), '42501',
		'but not the failed keys (superusers only)');
};

subtest 'scaling out a database that has keys: the setup carries them to their tenants' => sub {
	for my $node (reverse @workers)
	{
		$node->safe_psql('postgres', q{CREATE DATABASE scaled});
		$node->safe_psql('scaled', q{CREATE EXTENSION citus});
	}
	$coord->safe_psql('postgres', q{CREATE DATABASE scaled});
	# a single server's database, with keys
	$coord->safe_psql('scaled', q{
CREATE EXTENSION idempotency;
CREATE TABLE public.payments (tenant_id bigint, id bigint, PRIMARY KEY (tenant_id, id));
BEGIN;
SELECT status FROM idem_begin('pay-1', '{"amount": 10}'::jsonb, '42');
INSERT INTO public.payments VALUES (42, 1);
SELECT idem_finish('pay-1', 201, '{"paid": 1}'::jsonb, '42');
COMMIT;
SELECT idem_once('msg-1', '007');
SELECT idem_once('gone-1', '7', '1 millisecond');
SELECT idem_once('all-1');
SELECT idem_once('twice', '5');
SELECT idem_once('twice', '05');
});
	# scaled out
	$coord->safe_psql('scaled', q{CREATE EXTENSION citus});
	$coord->safe_psql('scaled', sprintf(q{SELECT citus_set_coordinator_host('127.0.0.1', %d)}, $coord->port));
	$coord->safe_psql('scaled', sprintf(q{SELECT citus_add_node('127.0.0.1', %d)}, $_->port)) for @workers;
	$coord->safe_psql('scaled', q{SELECT create_distributed_table('public.payments', 'tenant_id')});

	my ($ret, $out, $err) = $coord->psql('scaled', q{\set VERBOSITY verbose
SELECT * FROM idem_citus_setup('public.payments')});
	like($err, qr/ERROR:  55000: public.idem_keys has 1 live keys whose scope is not a tenant/,
		'a live key whose scope is no tenant (the empty scope): the setup refuses');
	like($err, qr/HINT:  Let them expire \(the last at .*\), or once no retry of their requests can come delete them/,
		'and says what to do');
	is($coord->safe_psql('scaled', q{SELECT count(*) FROM pg_class WHERE relname = 'idem_tenant_keys'}), '0',
		'having made nothing');
	$coord->safe_psql('scaled', q{DELETE FROM idem_keys WHERE scope = ''});
	($ret, $out, $err) = $coord->psql('scaled', q{\set VERBOSITY verbose
SELECT * FROM idem_citus_setup('public.payments')});
	like($err, qr/ERROR:  55000: key 'twice' of tenant 5 is in public.idem_keys under two spellings of its scope/,
		'one key under two spellings of a tenant (5 and 05, one scope on Citus): refused');
	$coord->safe_psql('scaled', q{DELETE FROM idem_keys WHERE scope = '05'});
	like($coord->safe_psql('scaled', q{SELECT object || ': ' || action FROM idem_citus_setup('public.payments')}),
		qr/^public\.idem_keys: 3 live keys carried into idem_tenant_keys, each to its tenant's shard$/m,
		'then it carries the live keys');
	is(result($coord, 'scaled', q{SELECT status || ' ' || response_body FROM idem_begin('pay-1', '{"amount": 10}'::jsonb, 42::bigint)}),
		'replay {"paid": 1}', 'the retry of a request completed before the setup replays (it used to start, and pay again)');
	is($coord->safe_psql('scaled', q{SELECT idem_once('msg-1', 7::bigint)}), 'f',
		'a message consumed before stays consumed, under its tenant\'s own text (007 is 7)');
	is($coord->safe_psql('scaled', q{SELECT scope || ' ' || tenant FROM idem_tenant_keys WHERE key = 'msg-1'}), '7 7',
		'which is the scope it was carried under');
	is($coord->safe_psql('scaled', q{SELECT idem_once('gone-1', 7::bigint)}), 't', 'an expired key is not carried');
	is($coord->safe_psql('scaled', q{SELECT count(*) FROM idem_keys WHERE expires_at > now()}), '0',
		'no live key is left in idem_keys');
	like($coord->safe_psql('scaled', q{SELECT object || ': ' || action FROM idem_citus_setup('public.payments')}),
		qr/^public\.idem_keys: no live keys to carry$/m, 'running the setup again carries nothing');
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
CREATE TABLE public.payments (tenant_id bigint, id bigint, PRIMARY KEY (tenant_id, id));
SELECT create_distributed_table('public.payments', 'tenant_id');
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
	is(sqlstate($coord, 'attack', q{SELECT * FROM idem_citus_setup('public.payments')}), '42501',
		'and the setup refuses the schema');

	# In a schema a superuser owns, where she could create for a while: what
	# she made then is refused, not taken over.
	citus_database('attack2');
	$coord->safe_psql('attack2', q{
CREATE SCHEMA idem;
CREATE EXTENSION idempotency SCHEMA idem;
CREATE TABLE public.payments (tenant_id bigint, id bigint, PRIMARY KEY (tenant_id, id));
SELECT create_distributed_table('public.payments', 'tenant_id');
GRANT USAGE, CREATE ON SCHEMA idem TO mallory;
GRANT SELECT ON public.payments TO mallory;
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
CREATE TABLE public.amounts (tenant numeric, id int, PRIMARY KEY (tenant, id));
SELECT create_distributed_table('public.amounts', 'tenant');
});
	is(sqlstate($coord, 'uuids', q{SELECT * FROM idem.idem_citus_setup('public.amounts')}), '0A000',
		'numeric (1.0 and 1 are one tenant, two texts): 0A000');
};

$_->stop for @nodes;
done_testing();
