
# Stress test for docs/specification.md, section 5: "two transactions that begin the same
# (scope, key) never both get started".
#
# 16 pgbench clients hammer 20 hot keys.  Each round uses a new key prefix, so
# every round starts with all keys absent and the clients contend for keys
# that are begun but not yet finished (the key's lock) or finished but not yet
# committed (the uncommitted row), not only for completed keys.  A client
# that gets "started" does the business write (a row in effects, a table with
# NO unique constraint, so a duplicate would show), records the response and
# commits; but 1 in 4 roll back instead of doing the work, and 1 in 8 of the
# rest roll back after idem_finish, so keys are freed and taken again.
#
# Why this fails if the extension ever lets two transactions both get
# "started" for one key: each of them inserts an effects row for the key.
# If both commit, the key has two effects rows (checked below), or the second
# idem_finish hits the primary key of idem_keys with a unique violation, which
# fails that pgbench transaction and aborts its client (checked below too).
# Only when one of the pair rolls back does the duplicate go unseen, and over
# hundreds of contended begins that cannot hide it every time.  Checked by
# hand: a variant of the script that replaces idem_begin by a naive
# "SELECT NOT EXISTS (... FROM effects ...)" check (and drops idem_finish)
# leaves keys with several effects rows and fails the "at most one effects
# row per key" test in every run.
#
# The pgbench script and the checks live in IdemStress.pm, which
# 034_pgbouncer.pl runs unchanged through PgBouncer.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemStress;

my $node = PostgreSQL::Test::Cluster->new('stress');
$node->init;
$node->append_conf('postgresql.conf', $IdemStress::conf);
$node->start;

IdemStress::setup($node);
IdemStress::run($node, file => '010_stress');
IdemStress::check($node);

$node->stop;
done_testing();
