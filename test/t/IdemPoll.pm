# Shared by the sweeper's TAP tests (020, 040, 041): waiting for a condition
# with a deadline, and expired keys to sweep.
package IdemPoll;

use strict;
use warnings;

use Exporter 'import';
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(poll add_expired);

# The deadline of poll() when none is given; a test may set its own.
our $SOON = 10;

# Run $sql on $db until it prints $expected, or give up after $secs seconds
# (default $SOON).  Connection errors (a restarting server) count as "not yet".
sub poll
{
	my ($node, $db, $sql, $expected, $secs) = @_;
	$secs //= $SOON;
	my $deadline = time + $secs;
	my ($stdout, $stderr) = ('', '');
	for (;;)
	{
		my $ret = $node->psql($db, $sql, stdout => \$stdout, stderr => \$stderr);
		return 1 if defined $ret && $ret == 0 && $stdout eq $expected;
		last if time > $deadline;
		usleep(50_000);
	}
	diag "poll timed out after ${secs}s on "
	  . $node->name . "/$db: $sql\nexpected: $expected\n"
	  . "last stdout: $stdout\nlast stderr: $stderr";
	return 0;
}

# Insert $n completed keys named $prefix1..$prefixN that expired a day ago
# (one transaction: they share one expires_at).
sub add_expired
{
	my ($node, $db, $prefix, $n) = @_;
	$node->safe_psql($db, qq{
INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope,
                       key, fingerprint, response_body)
SELECT now() - interval '2 days', now() - interval '1 day', 200, 'c', '',
       '$prefix' || g, NULL, NULL
FROM generate_series(1, $n) g});
	return;
}

1;
