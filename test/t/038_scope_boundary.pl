# Scopes that belong to roles (idem_scope_owners), across sessions,
# servers and versions: what test/sql/scopes.sql shows in one session
# holds for roles that log in themselves, for every backend as soon as a
# change commits (each keeps the rules until the table's trigger says they
# changed), on a standby (the invalidation travels in the WAL), through
# pg_dump and pg_restore, and through the update from 0.7.0, whose
# idem_discard grants the new any_state form inherits.  A relation a role
# put under the table's name before the update is ignored, not obeyed; a
# logical replication subscriber's apply of a rule change reaches every
# session too (apply fires row triggers, not statement ones).
#
# Why this fails without the boundary: every call below that expects
# "permission denied for idempotency scope" reads or changes the other
# role's key instead.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('scopes');
$node->init(allows_streaming => 1);
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
idempotency.sweeper = off
wal_level = logical
});
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION idempotency;
CREATE ROLE app_a LOGIN;
CREATE ROLE app_b LOGIN;
CREATE ROLE rules_admin LOGIN;
GRANT SELECT, INSERT, DELETE ON idem_scope_owners TO rules_admin;
});

# Run SQL as a role that logs in; (stdout, stderr).
sub as_role
{
	my ($n, $role, $sql, $db) = @_;
	my ($ret, $out, $err) = $n->psql($db // 'postgres', $sql,
		extra_params => [ '-U', $role ]);
	return ($out, $err);
}

# Run SQL in a background session; (stdout, stderr of that query).
sub in_session
{
	my ($session, $sql) = @_;
	$session->{stderr} = '';
	my $out = $session->query($sql);
	my $err = $session->{stderr};
	$session->{stderr} = '';
	return ($out, $err);
}

my $denied = qr/permission denied for idempotency scope "a:1"/;

# tenant a stores a response; with no rules tenant b can read it (the
# default, unchanged)
as_role($node, 'app_a', q{
BEGIN;
SELECT status FROM idem_begin('pay-1', '{"n":1}'::jsonb, 'a:1');
SELECT idem_finish('pay-1', 201, '{"card":"a"}', 'a:1');
COMMIT;
});
my ($out, $err) = as_role($node, 'app_b',
	q{SELECT response_body FROM idem_lookup('pay-1', 'a:1')});
is($out, '{"card": "a"}', 'with no rules, another role reads the response');

# a session of tenant b's that has read the (empty) rules already
my $b = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'app_b' ]);
($out, $err) = in_session($b, q{SELECT status FROM idem_lookup('pay-1', 'a:1')});
is($out, 'completed', 'a session of tenant b reads the key before the rules exist');

# a role that may only manage the rules (no superuser) ties the prefixes
as_role($node, 'rules_admin', q{
INSERT INTO idem_scope_owners VALUES ('a:', 'app_a'), ('b:', 'app_b');
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_scope_owners}),
	'2', 'a granted role, not a superuser, tied the prefixes');

# every new session, and the one already open from its next transaction
($out, $err) = as_role($node, 'app_b',
	q{SELECT status FROM idem_lookup('pay-1', 'a:1')});
like($err, $denied, 'a new session of tenant b is refused');
($out, $err) = in_session($b, q{SELECT status FROM idem_lookup('pay-1', 'a:1')});
like($err, $denied, 'the session that had read the rules before is refused too');
foreach my $call (
	q{SELECT idem_once('m-1', 'a:1')},
	q{SELECT status FROM idem_begin('m-2', '{}'::jsonb, 'a:1')},
	q{SELECT status FROM idem_lease('pay-1', '{"n":1}', 'a:1', '1000 years', '1000 years')},
	q{SELECT idem_fail('pay-1', 'hostile', 'a:1', 1)},
	q{SELECT idem_keep('pay-1', 'a:1')},
	q{SELECT status FROM idem_lookup_full('pay-1', 'a:1')})
{
	($out, $err) = as_role($node, 'app_b', $call);
	like($err, $denied, "tenant b is refused: $call");
}
is($node->safe_psql('postgres', q{SELECT string_agg(key || ':' || state::text, ',' ORDER BY key) FROM idem_keys}),
	'pay-1:c', 'and changed nothing');
($out, $err) = as_role($node, 'app_a',
	q{SELECT response_body FROM idem_lookup('pay-1', 'a:1')});
is($out, '{"card": "a"}', 'tenant a reads its own response');

# a rule removed: every session may use the scope again from its next
# transaction
as_role($node, 'rules_admin', q{DELETE FROM idem_scope_owners WHERE scope_prefix = 'a:'});
($out, $err) = in_session($b, q{SELECT status FROM idem_lookup('pay-1', 'a:1')});
is($out, 'completed', 'the open session sees the rule gone');
as_role($node, 'rules_admin', q{INSERT INTO idem_scope_owners VALUES ('a:', 'app_a')});
($out, $err) = in_session($b, q{SELECT status FROM idem_lookup('pay-1', 'a:1')});
like($err, $denied, 'and back');
$b->quit;

# a standby enforces the primary's rules, and their changes as it replays
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('scopes_standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
($out, $err) = as_role($standby, 'app_b',
	q{SELECT status FROM idem_lookup('pay-1', 'a:1')});
like($err, $denied, 'a standby refuses tenant b');
my $sb = $standby->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'app_b' ]);
($out, $err) = in_session($sb, q{SELECT status FROM idem_lookup('pay-1', 'a:1')});
like($err, $denied, 'a standby session has read the rules');
as_role($node, 'rules_admin', q{DELETE FROM idem_scope_owners WHERE scope_prefix = 'a:'});
$node->wait_for_catchup($standby);
($out, $err) = in_session($sb, q{SELECT status FROM idem_lookup('pay-1', 'a:1')});
is($out, 'completed', 'the standby session sees the change once it is replayed');
$sb->quit;
as_role($node, 'rules_admin', q{INSERT INTO idem_scope_owners VALUES ('a:', 'app_a')});
$standby->stop;

# a subscriber that gets the rules by logical replication: its apply
# worker's changes reach the sessions already open
$node->safe_psql('postgres', q{
CREATE DATABASE sub;
CREATE PUBLICATION rules FOR TABLE idem_scope_owners;
SELECT pg_create_logical_replication_slot('rules', 'pgoutput');
});
$node->safe_psql('sub', 'CREATE EXTENSION idempotency');
(my $connstr = $node->connstr('postgres')) =~ s/'/''/g;
$node->safe_psql('sub', qq{
CREATE SUBSCRIPTION rules CONNECTION '$connstr' PUBLICATION rules
  WITH (create_slot = false, slot_name = 'rules', copy_data = true);
});
$node->poll_query_until('sub', q{SELECT count(*) = 2 FROM idem_scope_owners})
  or die 'the subscriber did not copy the rules';
my $sub = $node->background_psql('sub', on_error_stop => 0,
	extra_params => [ '-U', 'app_b' ]);
($out, $err) = in_session($sub, q{SELECT idem_once('e-1', 'e:1')});
is($out, 't', 'a subscriber session uses a scope no rule claims');
as_role($node, 'rules_admin', q{INSERT INTO idem_scope_owners VALUES ('e:', 'app_a')});
$node->poll_query_until('sub', q{SELECT count(*) = 3 FROM idem_scope_owners})
  or die 'the subscriber did not apply the rule';
($out, $err) = in_session($sub, q{SELECT idem_once('e-2', 'e:1')});
like($err, qr/permission denied for idempotency scope "e:1"/,
	'once the apply worker wrote the rule, the open session obeys it');
as_role($node, 'rules_admin', q{DELETE FROM idem_scope_owners WHERE scope_prefix = 'e:'});
$node->poll_query_until('sub', q{SELECT count(*) = 2 FROM idem_scope_owners})
  or die 'the subscriber did not apply the delete';
($out, $err) = in_session($sub, q{SELECT idem_once('e-2', 'e:1')});
is($out, 't', 'and its removal');
$sub->quit;
$node->safe_psql('sub', 'DROP SUBSCRIPTION rules');
$node->safe_psql('postgres', 'DROP PUBLICATION rules');

# pg_dump keeps the rules (the table is the extension's configuration)
my $tmp = PostgreSQL::Test::Utils::tempdir;
$node->command_ok([ 'pg_dump', '-Fc', '-d', 'postgres', '-f', "$tmp/db.dump" ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'restored', "$tmp/db.dump" ],
	'pg_restore');
is($node->safe_psql('restored',
		q{SELECT string_agg(scope_prefix || '=' || role::text, ',' ORDER BY scope_prefix) FROM idem_scope_owners}),
	'a:=app_a,b:=app_b', 'the restored database has the rules');
($out, $err) = as_role($node, 'app_b',
	q{SELECT status FROM idem_lookup('pay-1', 'a:1')}, 'restored');
like($err, $denied, 'and enforces them');
($out, $err) = as_role($node, 'app_a',
	q{SELECT status FROM idem_lookup('pay-1', 'a:1')}, 'restored');
is($out, 'completed', 'for its owner too');

# the update from 0.7.0: a squatter's table under the name is ignored by
# the library (it is no member of the extension) and makes the update fail; without it, the update makes the
# table and the new idem_discard form gets the old one's grants
$node->safe_psql('postgres', q{
CREATE DATABASE old;
CREATE ROLE squatter LOGIN;
CREATE ROLE operator LOGIN;
});
$node->safe_psql('old', q{
CREATE EXTENSION idempotency VERSION '0.7.0';
GRANT CREATE ON SCHEMA public TO squatter;
GRANT EXECUTE ON FUNCTION idem_discard(text, text) TO operator;
});
as_role($node, 'squatter', q{
CREATE TABLE public.idem_scope_owners (scope_prefix text, role regrole);
INSERT INTO public.idem_scope_owners VALUES ('', 'squatter');
}, 'old');
($out, $err) = as_role($node, 'app_a', q{SELECT idem_once('x', 'a:1')}, 'old');
is($out, 't', 'a squatter\'s table is ignored: not obeyed, and no call refused for it');
my ($ret, $uout, $uerr) = $node->psql('old', q{ALTER EXTENSION idempotency UPDATE TO '0.8.0'});
like($uerr, qr/already exists/, 'and the update fails on it');
$node->safe_psql('old', q{DROP TABLE public.idem_scope_owners});
$node->safe_psql('old', q{ALTER EXTENSION idempotency UPDATE TO '0.8.0'});
is($node->safe_psql('old', q{
SELECT has_function_privilege('operator', 'idem_discard(text, text, boolean)', 'EXECUTE'),
       has_function_privilege('app_a', 'idem_discard(text, text, boolean)', 'EXECUTE'),
       has_function_privilege('operator', 'idem_discard(text, text)', 'EXECUTE')}),
	't|f|t', 'the update gives the any_state form the grants of idem_discard');
$node->command_ok([ 'pg_dump', '-Fc', '-d', 'old', '-f', "$tmp/old.dump" ], 'pg_dump the updated database');
$node->safe_psql('postgres', 'CREATE DATABASE old_restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'old_restored', "$tmp/old.dump" ],
	'pg_restore it');
is($node->safe_psql('old_restored', q{
SELECT has_function_privilege('operator', 'idem_discard(text, text, boolean)', 'EXECUTE'),
       has_function_privilege('app_a', 'idem_discard(text, text, boolean)', 'EXECUTE')}),
	't|f', 'and a restore keeps them');

$node->stop;
done_testing();
