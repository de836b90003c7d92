# A key's lock is named by a keyed hash under a secret of the cluster's,
# which no role can read: pg_locks shows tags that no one can compute from a
# key, nor invert to one, nor aim a key of their own at.  The secret is a
# file in the data directory, read (or made) by the postmaster when it
# preloads the library, so that every backend has the same one for as long
# as the server runs, whatever happens to the file, and kept after a
# restart.
#
# No key lock outlives its transaction into a restart: PREPARE TRANSACTION
# refuses a key that is begun and not finished, and a finish lets the key's
# lock go (its record guards it from then on); the last check shows it.
#
# Why this fails without the keyed hash: the tag is then the public
# hashtextextended() of scope and key, which the first check computes in
# SQL.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('key_locks');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
idempotency.sweeper = off
max_prepared_transactions = 5
});
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION idempotency;
CREATE ROLE regress_reader LOGIN;
-- the tag a key's lock had with the unkeyed hash of 0.7.0
CREATE FUNCTION public_tag(s text, k text) RETURNS bigint LANGUAGE sql AS
$$ SELECT hashtextextended(k, hashtextextended(s, 0)) $$;
-- the tag of a key lock in pg_locks, as one 64-bit number
CREATE FUNCTION tag_of(l pg_locks) RETURNS bigint LANGUAGE sql AS
$$ SELECT (l.classid::bigint << 32) | l.objid::bigint $$;
});

my $file = $node->data_dir . '/idempotency_lock.key';

# The tag of the lock this session holds for a key it has begun.
sub tag
{
	my ($scope, $key) = @_;
	return $node->safe_psql('postgres', qq{
BEGIN;
SELECT status FROM idem_begin('$key', '{}'::jsonb, '$scope') \\gset
SELECT tag_of(l) FROM pg_locks l
  WHERE l.locktype = 'advisory' AND l.objsubid = 18756 AND l.pid = pg_backend_pid();
ROLLBACK;
});
}

my $tag = tag('tenant-a', 'pay-1');
like($tag, qr/^-?\d+$/, 'a begun key holds one key lock');
isnt($tag, $node->safe_psql('postgres', q{SELECT public_tag('tenant-a', 'pay-1')}),
	'its tag is not the unkeyed hash anyone can compute');
isnt(tag('tenant-b', 'pay-1'), $tag, 'the same key in another scope names another lock');
isnt(tag('tenant-a', 'pay-2'), $tag, 'another key in the same scope names another lock');

ok(-f $file, 'the secret is a file in the data directory');
is(-s $file, 16, 'of 16 bytes');
is((stat $file)[2] & 077, 0, 'that no other operating-system user may read');
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET ROLE regress_reader; SELECT pg_read_binary_file('idempotency_lock.key')});
like($err, qr/permission denied/, 'a role without pg_read_server_files cannot read it');

my $secret = slurp_file($file);
$node->restart;
is(tag('tenant-a', 'pay-1'), $tag, 'a key names the same lock after a restart');
is(slurp_file($file), $secret, 'the secret is kept');

# the postmaster read the secret at its start: a file removed while the
# server runs changes no session's, so a session started after the removal
# still waits for one that began the key before it
my $holder = $node->background_psql('postgres', on_error_stop => 1);
$holder->query_safe(q{BEGIN});
like($holder->query_safe(q{SELECT status FROM idem_begin('split', '{}'::jsonb, 'tenant-a')}),
	qr/started/, 'a session begins a key');
unlink $file or die "unlink $file: $!";
is($node->safe_psql('postgres', q{SELECT status FROM idem_begin('split', '{}'::jsonb, 'tenant-a', wait => false)}),
	'in_progress', 'a session started after the secret file was removed finds the key held');
$holder->query_safe(q{ROLLBACK});
$holder->quit;
$node->restart;
ok(-f $file, 'the next start makes another');

# what could outlive a restart holds no key lock
$node->safe_psql('postgres', q{
BEGIN;
SELECT status FROM idem_begin('pay-3', '{}'::jsonb, 'tenant-a');
SELECT idem_finish('pay-3', 201, '{"id": 3}'::jsonb, 'tenant-a');
PREPARE TRANSACTION 'p1';
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756}),
	'0', 'a prepared transaction holds no key lock: its finished key let it go');
($ret, $out, $err) = $node->psql('postgres', q{
BEGIN;
SELECT status FROM idem_begin('pay-4', '{}'::jsonb, 'tenant-a');
PREPARE TRANSACTION 'p2';
});
like($err, qr/was begun but neither finished nor released/, 'and a begun key cannot be prepared');
$node->safe_psql('postgres', q{COMMIT PREPARED 'p1'});

$node->stop;
done_testing();
