# Extension upgrades keep the keys.
#
# For every version V that has a base install script sql/idempotency--V.sql
# and an update path to the default version (pg_extension_update_paths), in
# a database of its own: CREATE EXTENSION idempotency VERSION 'V', record
# keys of every kind, ALTER EXTENSION idempotency UPDATE, then check that
# every retry returns exactly what it returned before the update, mismatches
# stay mismatches, expired keys stay absent, new keys start, and the
# extension's objects are the same as those of a fresh install of the
# default version.  The versions come from the sql/ directory and the
# server's catalogs, so a new release script (say
# sql/idempotency--0.1.0--0.2.0.sql with default_version = '0.2.0') is
# covered without touching this test.  With a single version the loop runs
# the no-update case: V is the default and ALTER EXTENSION UPDATE has
# nothing to do.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use IdemRequests;

my $t0 = time;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
});
$node->start;

# Versions with a base install script in the source tree.
my $sqldir = "$FindBin::RealBin/../../sql";
opendir(my $dh, $sqldir) or die "cannot open $sqldir: $!";
my @base = sort map { /^idempotency--(.+)\.sql$/ && $1 !~ /--/ ? ($1) : () }
  readdir $dh;
closedir $dh;
ok(scalar(@base) > 0, 'sql/ has base install scripts: ' . join(', ', @base));

my $default = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'idempotency'});
my %available = map { $_ => 1 } split /\n/,
  $node->safe_psql('postgres',
	q{SELECT version FROM pg_available_extension_versions WHERE name = 'idempotency'});
note "default version $default; installed versions: "
  . join(', ', sort keys %available);
ok($available{$_}, "version $_ is installed") for @base;
ok((grep { $_ eq $default } keys %available), 'the default version is installed');

# The application side (IdemRequests.pm), created in each database after the
# extension.
my $APP = $IdemRequests::schema;

# Requests named $prefix-*: every variant, scopes, no body, a big body,
# messages, and (if $expired) keys that expire at once.
sub requests_sql
{
	my ($prefix, $expired) = @_;
	my $sql = IdemRequests::live_requests_sql($prefix, 10) . qq{
INSERT INTO requests VALUES ('', '$prefix-no-body', 'jsonb', NULL, NULL, NULL, '1 day', 204, NULL, 'replay');
INSERT INTO requests
SELECT '', '$prefix-big', 'jsonb',
       jsonb_build_object('blob', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 30000) i)),
       NULL, NULL, '1 day', 201,
       (SELECT jsonb_agg(jsonb_build_object('n', i, 'h', md5(i::text))) FROM generate_series(1, 10000) i),
       'replay';
};
	$sql .= qq{
INSERT INTO requests
SELECT '', '$prefix-expired-' || g, CASE WHEN g = 1 THEN 'jsonb' ELSE 'once' END,
       CASE WHEN g = 1 THEN '{"e": 1}'::jsonb END, NULL, NULL, '1 millisecond',
       CASE WHEN g = 1 THEN 201 ELSE 0 END, NULL, 'started'
FROM generate_series(1, 2) g;
} if $expired;
	$sql .= qq{
SELECT count(*) FROM requests r, handle(r) s WHERE r.key LIKE '$prefix-%' AND s <> 'started';};
	return $sql;
}

my $RETRIES = $IdemRequests::retries;
my $MISMATCHES = $IdemRequests::mismatches;

# The extension's objects and their definitions.
my $CATALOG = q{
WITH m AS (
    SELECT classid, objid, objsubid FROM pg_depend
    WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
      AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotency')),
rel AS (SELECT c.* FROM pg_class c JOIN m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid)
SELECT string_agg(d, E'\n' ORDER BY d) FROM (
    SELECT 'member ' || pg_describe_object(classid, objid, objsubid) FROM m
    UNION ALL
    SELECT format('function %s returns %s (%s) volatile=%s parallel=%s strict=%s secdef=%s config=%s src=%s bin=%s acl=%s',
                  p.oid::regprocedure, pg_get_function_result(p.oid), pg_get_function_arguments(p.oid),
                  p.provolatile, p.proparallel, p.proisstrict, p.prosecdef, p.proconfig,
                  p.prosrc, p.probin, p.proacl)
    FROM pg_proc p JOIN m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT format('column %s.%s %s notnull=%s collation=%s default=%s', rel.relname, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attcollation::regcollation,
                  pg_get_expr(ad.adbin, ad.adrelid))
    FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    UNION ALL
    SELECT format('relation %s kind=%s persistence=%s options=%s acl=%s', relname, relkind,
                  relpersistence, reloptions, relacl) FROM rel
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rel ON rel.oid = i.indrelid
    UNION ALL
    SELECT format('constraint %s on %s: %s', conname, rel.relname, pg_get_constraintdef(con.oid))
    FROM pg_constraint con JOIN rel ON rel.oid = con.conrelid
    UNION ALL
    SELECT 'view ' || relname || ': ' || pg_get_viewdef(oid) FROM rel WHERE relkind = 'v'
    UNION ALL
    SELECT format('config %s %s', extconfig::regclass[], extcondition)
    FROM pg_extension WHERE extname = 'idempotency'
    UNION ALL
    SELECT format('initial privileges of %s: %s', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
                  ip.initprivs)
    FROM pg_init_privs ip JOIN m ON m.classid = ip.classoid AND m.objid = ip.objoid
) s(d)};

# Compare two catalog descriptions; on a difference, show only the lines
# that differ.
sub same_catalog
{
	my ($got, $want, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return pass($name) if $got eq $want;
	my %g = map { $_ => 1 } split /\n/, $got;
	my %w = map { $_ => 1 } split /\n/, $want;
	fail($name);
	diag "only after the update: $_" for grep { !$w{$_} } sort keys %g;
	diag "only in a fresh install: $_" for grep { !$g{$_} } sort keys %w;
	return 0;
}

# A fresh install of the default version, the reference for the catalog.
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION idempotency');
my $fresh_catalog = $node->safe_psql('fresh', $CATALOG);

# Every version the server has, not only those with a base script: a
# version reached by update scripts alone (0.2.0) is created through them
# and updated from there.
my $tested = 0;
for my $v (sort keys %available)
{
	my $path = $node->safe_psql(
		'postgres', qq{
SELECT coalesce(path, '(none)') FROM pg_extension_update_paths('idempotency')
WHERE source = '$v' AND target = '$default'});
	if ($v ne $default && $path eq '(none)')
	{
		note "version $v: no update path to $default, not tested";
		next;
	}
	$tested++;
	if ($v eq $default)
	{
		note "version $v is the default version: no update to run "
		  . "(ALTER EXTENSION UPDATE must keep everything as it is)";
	}
	else
	{
		note "version $v: update path $path";
	}

	(my $db = "v_$v") =~ s/[^A-Za-z0-9_]/_/g;
	subtest "from version $v to $default" => sub {
		$node->safe_psql('postgres', qq{CREATE DATABASE "$db"});
		$node->safe_psql($db, qq{CREATE EXTENSION idempotency VERSION '$v';$APP});
		is($node->safe_psql($db,
				q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
			$v, "created at version $v");
		is($node->safe_psql($db, requests_sql('old', 1)), '0',
			"keys recorded at version $v");
		ok( $node->poll_query_until(
				$db, q{
SELECT count(*) = 0 FROM requests r, idem_lookup(r.key, r.scope) l
WHERE r.expect = 'started' AND l.status <> 'absent'}),
			'short-lived keys expired');
		my $retries = $node->safe_psql($db, $RETRIES);
		my $mismatches = $node->safe_psql($db, $MISMATCHES);
		is( $node->safe_psql(
				$db, q{
BEGIN;
SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status <> r.expect;
ROLLBACK;}),
			'0', "at version $v: live keys replay, expired keys start");

		$node->safe_psql($db,
			"SET client_min_messages = warning;\nALTER EXTENSION idempotency UPDATE;");
		is($node->safe_psql($db,
				q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
			$default, "updated to $default");
		same_catalog($node->safe_psql($db, $CATALOG), $fresh_catalog,
			"the extension's objects are those of a fresh install of $default");

		is($node->safe_psql($db, $RETRIES), $retries,
			'after the update every retry returns what it returned before');
		is($node->safe_psql($db, $MISMATCHES), $mismatches,
			'after the update a different body is the same mismatch');
		is( $node->safe_psql(
				$db, q{
BEGIN;
SELECT count(*) FROM requests r, begin_request(r, true) b
WHERE r.kind <> 'once' AND r.expect = 'replay' AND b.status <> 'mismatch';
ROLLBACK;}),
			'0', '... a mismatch for every live key');
		is( $node->safe_psql(
				$db, q{
SELECT count(*) FROM requests r, idem_lookup(r.key, r.scope) l
WHERE (l.status, l.response_code, l.response_body) IS DISTINCT FROM
      (CASE WHEN r.expect = 'replay' THEN 'completed' ELSE 'absent' END,
       CASE WHEN r.expect = 'replay' THEN nullif(r.code, 0) END,
       CASE WHEN r.expect = 'replay' THEN r.response END)}),
			'0', 'idem_lookup: live keys completed with their responses, expired absent');

		# new keys, and the expired ones again, start and then replay
		is( $node->safe_psql(
				$db,
				requests_sql('new', 0)
				  . q{
UPDATE requests SET ttl = '1 day' WHERE expect = 'started';
SELECT count(*) FROM requests r, handle(r) s WHERE r.expect = 'started' AND s <> 'started';}),
			"0\n0", 'after the update new keys and expired keys start');
		is( $node->safe_psql(
				$db,
				q{SELECT count(*) FROM requests r, begin_request(r) b WHERE b.status <> 'replay'}),
			'0', 'and every request replays');
		is( $node->safe_psql(
				$db, q{
SELECT count(*) FROM requests r
WHERE r.kind <> 'once'
  AND (SELECT count(*) FROM orders o WHERE o.scope = r.scope AND o.key = r.key)
      <> CASE WHEN r.expect = 'started' THEN 2 ELSE 1 END}),
			'0', 'one business row per request (two for an expired key done again)');
	};
}
# pg_dump $db in plain format and restore it into a new database $restored.
sub dump_and_restore
{
	my ($db, $restored) = @_;
	my $dump = $node->basedir . "/$db.sql";
	$node->command_ok([ 'pg_dump', '-Fp', '-d', $db, '-f', $dump ], "pg_dump $db");
	$node->safe_psql('postgres', "CREATE DATABASE $restored");
	$node->command_ok(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $restored, '-f', $dump ],
		"restore into $restored");
	return;
}

# 0.2.0 replaces idem_finish and idem_release (a trailing token): the new
# functions must keep the privileges the old ones had, so an installation
# that locked them down stays locked down, also through pg_dump and a
# restore; and only the extension's own functions count.
if (grep { $_ eq '0.1.0' } @base)
{
	my $privileges = q{
SELECT string_agg(format('%s public=%s payments=%s', p.oid::regprocedure,
                         has_function_privilege('public', p.oid, 'EXECUTE'),
                         has_function_privilege('regress_idem_payments', p.oid, 'EXECUTE')),
                  ' / ' ORDER BY p.proname)
FROM pg_proc p WHERE p.proname IN ('idem_finish', 'idem_release')
  AND EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                        AND d.deptype = 'e')};
	my $locked_down = 'idem_finish(text,integer,jsonb,text,uuid) public=f payments=t / '
	  . 'idem_release(text,text,uuid) public=f payments=t';
	$node->safe_psql('postgres', 'CREATE ROLE regress_idem_payments');

	# a new database with the extension at 0.1.0, $before run there, then
	# updated to 0.2.0
	my $updated_db = sub {
		my ($db, $before) = @_;
		$node->safe_psql('postgres', qq{CREATE DATABASE "$db"});
		$node->safe_psql($db,
			"CREATE EXTENSION idempotency VERSION '0.1.0';\n$before\n"
			  . "SET client_min_messages = warning;\n"
			  . "ALTER EXTENSION idempotency UPDATE TO '0.2.0';");
	};

	subtest 'update to 0.2.0 keeps the privileges of idem_finish and idem_release' => sub {
		my $db = 'acl_0_1_0';
		$updated_db->(
			$db, q{
REVOKE EXECUTE ON FUNCTION idem_finish(text, int, jsonb, text), idem_release(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idem_finish(text, int, jsonb, text), idem_release(text, text) TO regress_idem_payments;});
		is($node->safe_psql($db, $privileges), $locked_down,
			'the new signatures carry the old grants, and only they exist');
		is( $node->safe_psql(
				$db, q{
SELECT count(*) FROM pg_init_privs
WHERE objoid IN ('idem_finish(text,int,jsonb,text,uuid)'::regprocedure,
                 'idem_release(text,text,uuid)'::regprocedure)}),
			'0', 'the copied grants are not recorded as the extension\'s initial privileges');
		is( $node->safe_psql(
				$db, q{
BEGIN;
SELECT status FROM idem_lease('after-update');
ROLLBACK;}),
			'started', 'leases work after the update');

		# on to the default version (0.4.0 makes idem_finish again, with two
		# more arguments): still locked down.  A restore creates the
		# extension at the default version, so it is dumped from there.
		$node->safe_psql($db, 'ALTER EXTENSION idempotency UPDATE');
		my $locked_down_default = $locked_down;
		my $finish_default = $node->safe_psql('fresh',
			q{SELECT oid::regprocedure FROM pg_proc WHERE proname = 'idem_finish'});
		$locked_down_default =~ s/idem_finish\([^)]*\)/$finish_default/;
		is($node->safe_psql($db, $privileges), $locked_down_default,
			"after the update to $default still locked down");
		dump_and_restore($db, 'acl_restored');
		is($node->safe_psql('acl_restored', $privileges), $locked_down_default,
			'after pg_dump and a restore the functions are still locked down');
		$node->safe_psql('postgres', qq{DROP DATABASE "$db"; DROP DATABASE acl_restored});
	};

	subtest 'functions of the same names that are not the extension\'s lend it no privileges' => sub {
		my $db = 'acl_decoy';
		$updated_db->(
			$db, q{
CREATE ROLE regress_idem_decoy;
GRANT CREATE ON SCHEMA public TO regress_idem_decoy;
SET ROLE regress_idem_decoy;
CREATE FUNCTION public.idem_finish(text, text, text, text) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION public.idem_finish(text, int, jsonb, text, text) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION public.idem_release(text, text, text) RETURNS void LANGUAGE sql AS '';
REVOKE ALL ON FUNCTION public.idem_finish(text, text, text, text),
                       public.idem_finish(text, int, jsonb, text, text),
                       public.idem_release(text, text, text) FROM PUBLIC;
RESET ROLE;});
		is( $node->safe_psql($db, $privileges),
			'idem_finish(text,integer,jsonb,text,uuid) public=t payments=t / '
			  . 'idem_release(text,text,uuid) public=t payments=t',
			'the extension\'s new functions keep the default privileges');
		$node->safe_psql('postgres', qq{DROP DATABASE "$db"; DROP ROLE regress_idem_decoy});
	};
	$node->safe_psql('postgres', 'DROP ROLE regress_idem_payments');
}

# 0.3.0 takes idem_sweep from PUBLIC (docs/security.md): an update does so
# too, a grant made to a role before it stays, and both survive pg_dump and
# a restore (which creates the extension at 0.3.0).
if ($available{'0.2.0'} && $available{'0.3.0'})
{
	subtest 'update to 0.3.0 takes idem_sweep from PUBLIC and keeps grants to roles' => sub {
		my $sweep_acl = q{
SELECT format('public=%s ops=%s app=%s',
              has_function_privilege('public', 'idem_sweep(int)', 'EXECUTE'),
              has_function_privilege('regress_idem_ops', 'idem_sweep(int)', 'EXECUTE'),
              has_function_privilege('regress_idem_app', 'idem_sweep(int)', 'EXECUTE'))};
		my $db = 'acl_sweep';
		$node->safe_psql('postgres', qq{
CREATE ROLE regress_idem_ops; CREATE ROLE regress_idem_app; CREATE DATABASE $db});
		$node->safe_psql($db, q{
CREATE EXTENSION idempotency VERSION '0.2.0';
GRANT EXECUTE ON FUNCTION idem_sweep(int) TO regress_idem_ops;});
		is($node->safe_psql($db, $sweep_acl), 'public=t ops=t app=t',
			'at 0.2.0 PUBLIC may sweep');
		$node->safe_psql($db, q{ALTER EXTENSION idempotency UPDATE TO '0.3.0'});
		is($node->safe_psql($db, $sweep_acl), 'public=f ops=t app=f',
			'after the update only the granted role may');
		my ($ret, $out, $err) = $node->psql($db,
			'SET ROLE regress_idem_app; SELECT idem_sweep()');
		like($err, qr/permission denied for function idem_sweep/,
			'an application role gets 42501');
		is($node->safe_psql($db, 'SET ROLE regress_idem_ops; SELECT idem_sweep()'), '0',
			'the granted role sweeps');

		dump_and_restore($db, 'acl_sweep_restored');
		is($node->safe_psql('acl_sweep_restored', $sweep_acl), 'public=f ops=t app=f',
			'after pg_dump and a restore too');
		$node->safe_psql('postgres', qq{
DROP DATABASE $db; DROP DATABASE acl_sweep_restored;
DROP ROLE regress_idem_ops; DROP ROLE regress_idem_app});
	};
}

# 0.4.0 makes idem_finish (two more arguments) and idem_stats (more
# columns, and its view) again: what an installation granted or revoked on
# them stays, through pg_dump and a restore too; the request functions 0.4.0
# adds take their counterparts' privileges, the operators' functions none.  A role's view over idem_stats
# makes the update fail and change nothing, rather than be dropped.
if ($available{'0.3.1'} && $available{'0.4.0'})
{
	subtest 'update to 0.4.0 keeps the privileges of idem_finish and idem_stats' => sub {
		my $acl = q{
SELECT format('finish public=%s app=%s / stats fn mon=%s pg_monitor=%s / stats view mon=%s pg_monitor=%s / retry public=%s ops=%s / fail public=%s app=%s / keep public=%s / lookup_full public=%s app=%s / begin_full public=%s',
              has_function_privilege('public', 'idem_finish(text,int,jsonb,text,uuid,jsonb,bytea)', 'EXECUTE'),
              has_function_privilege('regress_idem_app', 'idem_finish(text,int,jsonb,text,uuid,jsonb,bytea)', 'EXECUTE'),
              has_function_privilege('regress_idem_mon', 'idem_stats()', 'EXECUTE'),
              has_function_privilege('pg_monitor', 'idem_stats()', 'EXECUTE'),
              has_table_privilege('regress_idem_mon', 'idem_stats', 'SELECT'),
              has_table_privilege('pg_monitor', 'idem_stats', 'SELECT'),
              has_function_privilege('public', 'idem_retry(text,text)', 'EXECUTE'),
              has_function_privilege('regress_idem_ops', 'idem_retry(text,text)', 'EXECUTE'),
              has_function_privilege('public', 'idem_fail(text,text,text,int,interval,uuid)', 'EXECUTE'),
              has_function_privilege('regress_idem_app', 'idem_fail(text,text,text,int,interval,uuid)', 'EXECUTE'),
              has_function_privilege('public', 'idem_keep(text,text)', 'EXECUTE'),
              has_function_privilege('public', 'idem_lookup_full(text,text)', 'EXECUTE'),
              has_function_privilege('regress_idem_app', 'idem_lookup_full(text,text)', 'EXECUTE'),
              has_function_privilege('public', 'idem_begin_full(text,jsonb,text,interval,boolean)', 'EXECUTE'))};
		# new functions that serve requests follow their counterparts: the
		# lookup and the finish were locked down, the begin was not
		my $want = 'finish public=f app=t / stats fn mon=t pg_monitor=t / stats view mon=t pg_monitor=t'
		  . ' / retry public=f ops=t / fail public=f app=t / keep public=f / lookup_full public=f app=t'
		  . ' / begin_full public=t';
		my $db = 'acl_0_4_0';
		$node->safe_psql('postgres', qq{
CREATE ROLE regress_idem_app; CREATE ROLE regress_idem_mon; CREATE ROLE regress_idem_ops;
CREATE DATABASE $db});
		$node->safe_psql($db, q{
CREATE EXTENSION idempotency VERSION '0.3.1';
REVOKE EXECUTE ON FUNCTION idem_finish(text, int, jsonb, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idem_finish(text, int, jsonb, text, uuid) TO regress_idem_app;
REVOKE EXECUTE ON FUNCTION idem_lookup(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idem_lookup(text, text) TO regress_idem_app;
GRANT EXECUTE ON FUNCTION idem_stats() TO regress_idem_mon;
GRANT SELECT ON idem_stats TO regress_idem_mon;
CREATE VIEW my_stats AS SELECT datname, started FROM idem_stats;});

		# a view of the user's over idem_stats: the update refuses, changes nothing
		my ($ret, $out, $err) = $node->psql($db, q{ALTER EXTENSION idempotency UPDATE TO '0.4.0'});
		isnt($ret, 0, 'the update fails while a view depends on idem_stats');
		like($err, qr/cannot drop view idem_stats because other objects depend on it/,
			'and says which object is in the way');
		is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
			'0.3.1', 'the extension is still at 0.3.1');
		is($node->safe_psql($db, q{SELECT to_regclass('my_stats') IS NOT NULL}), 't', 'the view is still there');

		$node->safe_psql($db, q{
DROP VIEW my_stats;
ALTER EXTENSION idempotency UPDATE TO '0.4.0';
GRANT EXECUTE ON FUNCTION idem_retry(text, text) TO regress_idem_ops;});
		is($node->safe_psql($db, $acl), $want, 'after the update the grants and revokes stay');
		is( $node->safe_psql(
				$db, q{
SELECT string_agg(pg_describe_object(classoid, objoid, objsubid) || ' ' || initprivs::text, ' / '
                  ORDER BY pg_describe_object(classoid, objoid, objsubid))
FROM pg_init_privs
WHERE objoid IN ('idem_finish(text,int,jsonb,text,uuid,jsonb,bytea)'::regprocedure,
                 'idem_stats()'::regprocedure, 'idem_stats'::regclass)}),
			$node->safe_psql(
				'fresh', q{
SELECT string_agg(pg_describe_object(classoid, objoid, objsubid) || ' ' || initprivs::text, ' / '
                  ORDER BY pg_describe_object(classoid, objoid, objsubid))
FROM pg_init_privs
WHERE objoid IN ('idem_finish(text,int,jsonb,text,uuid,jsonb,bytea)'::regprocedure,
                 'idem_stats()'::regprocedure, 'idem_stats'::regclass)}),
			'their initial privileges are a fresh install\'s');
		my ($r2, $o2, $e2) = $node->psql($db, q{
SET ROLE regress_idem_app;
BEGIN; SELECT status FROM idem_begin('k'); SELECT idem_finish('k', 200); COMMIT;
SET ROLE regress_idem_mon; SELECT finishes FROM idem_stats WHERE datname = current_database();});
		is($r2, 0, 'the granted roles call the new functions') or diag $e2;

		dump_and_restore($db, 'acl_0_4_0_restored');
		is($node->safe_psql('acl_0_4_0_restored', $acl), $want, 'after pg_dump and a restore too');
		$node->safe_psql('postgres', qq{
DROP DATABASE $db; DROP DATABASE acl_0_4_0_restored;
DROP ROLE regress_idem_app; DROP ROLE regress_idem_mon; DROP ROLE regress_idem_ops});
	};
}

# 0.5.0 makes the three idem_begin variants again (a named row type for the
# same columns) and adds idem_call, which serves requests as idem_begin does:
# grants and revokes on each variant stay, idem_call takes the jsonb
# variant's, and their initial privileges are a fresh install's, through
# pg_dump and a restore too.  A view of the user's over idem_begin makes the
# update fail and change nothing.
if ($available{'0.4.0'} && $available{'0.5.0'})
{
	subtest 'update to 0.5.0 keeps the privileges of idem_begin and gives them to idem_call' => sub {
		my $acl = q{
SELECT format('begin jsonb public=%s app=%s other=%s / begin text public=%s / begin bytea public=%s app=%s / call public=%s app=%s other=%s',
              has_function_privilege('public', 'idem_begin(text,jsonb,text,interval,boolean)', 'EXECUTE'),
              has_function_privilege('regress_idem_app', 'idem_begin(text,jsonb,text,interval,boolean)', 'EXECUTE'),
              has_function_privilege('regress_idem_other', 'idem_begin(text,jsonb,text,interval,boolean)', 'EXECUTE'),
              has_function_privilege('public', 'idem_begin(text,text,text,interval,boolean)', 'EXECUTE'),
              has_function_privilege('public', 'idem_begin(text,bytea,text,interval,boolean)', 'EXECUTE'),
              has_function_privilege('regress_idem_app', 'idem_begin(text,bytea,text,interval,boolean)', 'EXECUTE'),
              has_function_privilege('public', 'idem_call(text,jsonb,regprocedure,text,interval,boolean)', 'EXECUTE'),
              has_function_privilege('regress_idem_app', 'idem_call(text,jsonb,regprocedure,text,interval,boolean)', 'EXECUTE'),
              has_function_privilege('regress_idem_other', 'idem_call(text,jsonb,regprocedure,text,interval,boolean)', 'EXECUTE'))};
		# idem_call: the roles that may both begin and finish (other may
		# begin only); the text variant stays PUBLIC's although the
		# updating role's default privileges no longer give PUBLIC EXECUTE
		my $want = 'begin jsonb public=f app=t other=t / begin text public=t / begin bytea public=f app=f'
		  . ' / call public=f app=t other=f';
		my $init = q{
SELECT string_agg(pg_describe_object(classoid, objoid, objsubid) || ' ' || initprivs::text, ' / '
                  ORDER BY pg_describe_object(classoid, objoid, objsubid))
FROM pg_init_privs
WHERE classoid = 'pg_proc'::regclass
  AND objoid IN (SELECT oid FROM pg_proc WHERE proname IN ('idem_begin', 'idem_call'))};
		my $db = 'acl_0_5_0';
		$node->safe_psql('postgres', qq{CREATE ROLE regress_idem_app; CREATE ROLE regress_idem_other; CREATE DATABASE $db});
		$node->safe_psql($db, q{
CREATE EXTENSION idempotency VERSION '0.4.0';
REVOKE EXECUTE ON FUNCTION idem_begin(text, jsonb, text, interval, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idem_begin(text, jsonb, text, interval, boolean) TO regress_idem_app, regress_idem_other;
REVOKE EXECUTE ON FUNCTION idem_finish(text, int, jsonb, text, uuid, jsonb, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idem_finish(text, int, jsonb, text, uuid, jsonb, bytea) TO regress_idem_app;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION idem_begin(text, bytea, text, interval, boolean) FROM PUBLIC;
CREATE VIEW my_begin AS SELECT status FROM idem_begin('k', '{}'::jsonb);});

		my ($ret, $out, $err) = $node->psql($db, q{ALTER EXTENSION idempotency UPDATE TO '0.5.0'});
		isnt($ret, 0, 'the update fails while a view depends on idem_begin');
		like($err, qr/cannot drop function idem_begin\(.*\) because other objects depend on it/,
			'and says which object is in the way');
		is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
			'0.4.0', 'the extension is still at 0.4.0');

		$node->safe_psql($db, q{DROP VIEW my_begin; ALTER EXTENSION idempotency UPDATE TO '0.5.0'});
		is($node->safe_psql($db, $acl), $want, 'after the update the grants and revokes stay, and idem_call follows idem_begin');
		is($node->safe_psql($db, $init), $node->safe_psql('fresh', $init),
			'their initial privileges are a fresh install\'s');
		is( $node->safe_psql(
				$db, q{
SELECT pg_get_function_result('idem_begin(text,jsonb,text,interval,boolean)'::regprocedure)
       || ' ' || (SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
                   WHERE attrelid = 'idem_begin_result'::regclass AND attnum > 0)}),
			'idem_begin_result status,response_code,response_body,created_at,expires_at',
			'idem_begin returns the same five columns');
		my ($r2, $o2, $e2) = $node->psql($db, q{
CREATE TABLE t (n int);
GRANT INSERT ON t TO regress_idem_app;
CREATE FUNCTION w(req jsonb) RETURNS idem_response LANGUAGE sql AS $$
  INSERT INTO t VALUES (1); SELECT idem_response(201, req) $$;
GRANT EXECUTE ON FUNCTION w(jsonb) TO regress_idem_app;
SET ROLE regress_idem_app;
SELECT status FROM idem_call('k', '{"a": 1}', 'w(jsonb)');
SELECT status FROM idem_begin('k', '{"a": 1}'::jsonb);});
		is($r2, 0, 'the granted role calls idem_call and idem_begin') or diag $e2;
		is($o2, "done\nreplay", 'and they share the key');

		dump_and_restore($db, 'acl_0_5_0_restored');
		is($node->safe_psql('acl_0_5_0_restored', $acl), $want, 'after pg_dump and a restore too');
		$node->safe_psql('postgres', qq{
DROP DATABASE $db; DROP DATABASE acl_0_5_0_restored; DROP ROLE regress_idem_app; DROP ROLE regress_idem_other});
	};
}

# From 0.7.0 on, no update step may stop calls while it runs: on a table of
# millions of keys, an index build (ShareLock) or a table rewrite
# (AccessExclusiveLock) would hold every write back for as long as it reads
# the table (docs/operations.md has the figures of the steps before 0.7.0).
# Every direct step to a version after 0.6.0 is run in a transaction that
# then lists the locks it holds on idem_keys and its indexes: none may
# conflict with the RowExclusiveLock that every call that writes takes.
# An index a later version needs is built by the operator with CREATE
# INDEX CONCURRENTLY before the update, which the update script then checks
# for (docs/operations.md, "Updating").
my @steps = split /\n/, $node->safe_psql('postgres', q{
SELECT source || ' ' || target FROM pg_extension_update_paths('idempotency')
WHERE path = source || '--' || target
  AND string_to_array(target, '.')::int[] > '{0,6,0}'
ORDER BY string_to_array(target, '.')::int[], string_to_array(source, '.')::int[]});
ok(scalar(@steps) > 0, 'there are update steps after 0.6.0: ' . join(', ', @steps));
foreach my $step (@steps)
{
	my ($from, $to) = split / /, $step;
	my $db = "locks_$to" =~ s/\./_/gr;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, "CREATE EXTENSION idempotency VERSION '$from'");
	my $held = $node->safe_psql($db, qq{
SET client_min_messages = warning;
BEGIN;
ALTER EXTENSION idempotency UPDATE TO '$to';
SELECT coalesce(string_agg(DISTINCT l.mode, ' ' ORDER BY l.mode), '')
FROM pg_locks l
WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation'
  AND l.mode NOT IN ('AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock')
  AND l.relation IN (SELECT 'idem_keys'::regclass
                     UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid = 'idem_keys'::regclass);
ROLLBACK;});
	is($held, '', "the update from $from to $to takes no lock on idem_keys that stops calls");
	$node->safe_psql('postgres', "DROP DATABASE $db");
}

cmp_ok($tested, '>', 0, 'at least one version tested');
if (@base == 1 && $base[0] eq $default)
{
	note "only version $default exists: the loop ran the no-update case "
	  . "(CREATE EXTENSION at $default, ALTER EXTENSION UPDATE is a no-op); "
	  . "a new sql/idempotency--$default--<next>.sql is picked up automatically";
}

$node->stop;
note sprintf('%.1f s', time - $t0);
done_testing();
