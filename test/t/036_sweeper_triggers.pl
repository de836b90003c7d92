# The sweeper and the key table's triggers.  The sweeper's deletes fire the
# key table's AFTER DELETE row triggers as DELETE would, but as the table's
# owner in a security-restricted operation, and never as a superuser:
#
#  - owned by a superuser (the default), a table with such a trigger is not
#    swept; the pass fails with 42501 naming the trigger, which
#    idem_sweeper_status shows, and nothing is deleted;
#  - idem_sweep() run by a role of the operator's choice fires the trigger
#    as that role;
#  - owned by a role that is not a superuser, the sweeper fires the trigger
#    as that role, and a setting the trigger changes for the session is
#    undone after each batch.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemPoll;

$IdemPoll::SOON = 30;

my $node = PostgreSQL::Test::Cluster->new('sweeper_triggers');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
idempotency.sweep_interval = '200ms'
idempotency.sweep_batch_size = 1
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION idempotency;
CREATE ROLE regress_keyowner;
CREATE ROLE regress_sweeper LOGIN;
GRANT EXECUTE ON FUNCTION idem_sweep(int) TO regress_sweeper;
CREATE TABLE audit (op text, key text, who text, lock_timeout text);
GRANT INSERT ON audit TO PUBLIC;
-- records who fired it and the lock_timeout it found, then sets it to 0 for
-- the rest of the session
CREATE FUNCTION audit_delete() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog AS $$
BEGIN
  INSERT INTO public.audit VALUES (TG_OP, OLD.key, current_user, current_setting('lock_timeout'));
  PERFORM set_config('lock_timeout', '0', false);
  RETURN NULL;
END $$;
CREATE TRIGGER audit_delete AFTER DELETE ON idem_keys FOR EACH ROW EXECUTE FUNCTION audit_delete();
});

# owned by a superuser: not swept, and the status says why
add_expired($node, 'postgres', 'su-', 3);
ok( poll(
		$node, 'postgres',
		q{SELECT last_error FROM idem_sweeper_status WHERE datname = 'postgres'},
		'the sweeper does not fire trigger "audit_delete" on "public.idem_keys" as a superuser'),
	'a superuser-owned key table with an AFTER DELETE trigger is not swept, and the status names the trigger'
);
is( $node->safe_psql('postgres',
		q{SELECT (SELECT count(*) FROM idem_keys WHERE key LIKE 'su-%') || ' ' || (SELECT count(*) FROM audit)}),
	'3 0',
	'no key was deleted and the trigger never ran');

# idem_sweep() by a role of the operator's choice fires it as that role
is( $node->safe_psql(
		'postgres', q{SELECT idem_sweep(100)},
		extra_params => [ '-U', 'regress_sweeper' ]),
	'3',
	'idem_sweep() run by a granted role sweeps');
is( $node->safe_psql('postgres', q{SELECT string_agg(DISTINCT who, ',') || ' ' || count(*) FROM audit}),
	'regress_sweeper 3',
	'and the trigger ran as that role, once a row');

# owned by a role that is not a superuser: the sweeper fires it as that role
$node->safe_psql(
	'postgres', q{
TRUNCATE audit;
ALTER TABLE idem_keys OWNER TO regress_keyowner;
});
add_expired($node, 'postgres', 'owned-', 3);
ok( poll(
		$node, 'postgres',
		q{SELECT count(*) FROM idem_keys WHERE key LIKE 'owned-%'}, '0'),
	'owned by a role that is not a superuser, the key table is swept');
is( $node->safe_psql('postgres', q{SELECT string_agg(DISTINCT who, ',') || ' ' || count(*) FROM audit}),
	'regress_keyowner 3',
	'the trigger ran as the table owner, once a row');
is( $node->safe_psql('postgres', q{SELECT string_agg(DISTINCT lock_timeout, ',') FROM audit}),
	'1s',
	'every batch found the pinned lock_timeout: the trigger\'s change was undone after its batch');
is( $node->safe_psql('postgres',
		q{SELECT coalesce(last_error, '') FROM idem_sweeper_status WHERE datname = 'postgres'}),
	'',
	'the last pass failed nothing');

$node->stop;
done_testing();
