# The contention stress of 010_stress.pl, unchanged, through PgBouncer in
# transaction pooling mode.
#
# With transaction pooling a client gets a server connection for one
# transaction at a time, and consecutive transactions of one client run on
# different backends, while one backend serves transactions of many
# clients.  Nothing the extension does may depend on session state: a key
# begun, finished, released or rolled back in one transaction must leave
# nothing behind in the backend for the next client's transaction, and a
# retry must behave the same on any backend.  16 pgbench clients share 8
# server connections, with the simple query protocol (prepared statements
# do not survive transaction pooling in PgBouncer 1.18, and the script's
# untyped variables need the simple protocol anyway).  The invariants
# checked afterwards are those of 010_stress.pl (IdemStress.pm).  Before
# that, in a database of its own, a series of clients hand one pooled
# server connection over to each other after every way a transaction can
# leave a key: finished, released, rolled back, failed, refused by the
# commit guard, cancelled.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use IdemStress;

my $pgbouncer = '/usr/sbin/pgbouncer';
die "$pgbouncer not found: test/setup.sh installs the pgbouncer package\n"
  unless -x $pgbouncer;

my $t0 = time;
my $pool_size = 8;

my $node = PostgreSQL::Test::Cluster->new('bouncer');
$node->init;
$node->append_conf('postgresql.conf', $IdemStress::conf);
$node->start;
IdemStress::setup($node);
$node->safe_psql('postgres', 'CREATE DATABASE handover');
$node->safe_psql('handover', 'CREATE EXTENSION idempotency');

# PgBouncer in front of the node, listening on 127.0.0.1 only.  "postgres"
# pools $pool_size server connections; "single" (database handover) pools
# one, so that consecutive clients surely share a backend.
my $user = (getpwuid($<))[0];
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $host = $node->host;
my $nodeport = $node->port;
append_to_file("$dir/userlist.txt", qq{"$user" ""\n});
append_to_file(
	"$dir/pgbouncer.ini", qq{
[databases]
postgres = host=$host port=$nodeport dbname=postgres pool_size=$pool_size
single = host=$host port=$nodeport dbname=handover pool_size=1

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $user
pool_mode = transaction
max_client_conn = 100
default_pool_size = $pool_size
logfile = $dir/pgbouncer.log
pidfile =
});
my $bouncer = IPC::Run::start([ $pgbouncer, "$dir/pgbouncer.ini" ],
	'<', '/dev/null', '>', "$dir/pgbouncer.out", '2>', "$dir/pgbouncer.err",
	IPC::Run::timeout(300));
# if the test dies half way, do not leave PgBouncer running
END { eval { $bouncer->kill_kill(grace => 5) if $bouncer }; }

# psql through PgBouncer: (exit code, stdout, stderr).
sub bpsql
{
	my ($db, $sql) = @_;
	my ($out, $err) = ('', '');
	my $ret = IPC::Run::run(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1',
			'-p', $port, '-U', $user, '-d', $db
		],
		'<', \$sql, '>', \$out, '2>', \$err);
	$out =~ s/\n+$//;
	return ($ret ? 0 : 1, $out, $err);
}

# A SHOW command on PgBouncer's admin console: a list of hashes.
sub admin
{
	my ($cmd) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'psql', '-XAq', '-h', '127.0.0.1', '-p', $port, '-U', $user,
			'-d', 'pgbouncer', '-c', $cmd
		],
		'>', \$out, '2>', \$err)
	  or die "$cmd failed: $err";
	my ($head, @rows) = split /\n/, $out;
	my @cols = split /\|/, $head;
	my @result;
	for my $row (@rows)
	{
		next if $row =~ /^\(\d+ rows?\)$/;
		my @v = split /\|/, $row, -1;
		push @result, { map { $cols[$_] => $v[$_] } 0 .. $#cols };
	}
	return @result;
}

my ($ret, $out, $err);
my $deadline = time + 30;
while (time < $deadline)
{
	($ret, $out, $err) = bpsql('postgres', 'SELECT 1');
	last if $ret == 0;
	usleep(50_000);
}
is($ret, 0, 'PgBouncer accepts connections')
  or diag "$err\n" . slurp_file("$dir/pgbouncer.err");
# the node itself listens on its unix socket only: whatever answers on TCP
# port $port is PgBouncer
is($node->safe_psql('postgres', 'SHOW listen_addresses'), '',
	'the server has no TCP listener of its own');

subtest 'clients handing over one pooled server connection' => sub {
	my @steps = (
		# a key begun and left unfinished: the commit guard refuses the
		# commit; the next client on the same backend starts the key
		[ "BEGIN;\nSELECT status FROM idem_begin('h1');\nCOMMIT;",
			'started', qr/idempotency key "h1" was begun but neither finished nor released/ ],
		[ "BEGIN;\nSELECT status FROM idem_begin('h1', wait => false);\nROLLBACK;",
			'started' ],
		# a key begun in a transaction that rolls back
		[ "BEGIN;\nSELECT status FROM idem_begin('h2', '{\"a\": 1}'::jsonb);\nROLLBACK;",
			'started' ],
		[ "BEGIN;\nSELECT status FROM idem_begin('h2', '{\"a\": 1}'::jsonb, wait => false);\nSELECT idem_finish('h2', 201, '{\"ok\": 1}');\nCOMMIT;",
			'started' ],
		# ... finished and committed: the next clients replay or mismatch
		[ q{SELECT status, response_code, response_body FROM idem_begin('h2', '{"a": 1}'::jsonb)},
			'replay|201|{"ok": 1}' ],
		[ q{SELECT status, response_code FROM idem_begin('h2', '{"a": 2}'::jsonb)},
			'mismatch|' ],
		# a key released, then begun again by another client
		[ "BEGIN;\nSELECT status FROM idem_begin('h3');\nSELECT idem_release('h3');\nCOMMIT;",
			'started' ],
		[ "BEGIN;\nSELECT status FROM idem_begin('h3', wait => false);\nSELECT idem_finish('h3', 200);\nCOMMIT;",
			'started' ],
		# a key finished by a transaction that then failed, or rolled back
		[ "BEGIN;\nSELECT status FROM idem_begin('h4');\nSELECT idem_finish('h4', 200);\nSELECT 1/0;\nCOMMIT;",
			'started', qr/division by zero/ ],
		[ q{SELECT status FROM idem_lookup('h4')}, 'absent' ],
		[ "BEGIN;\nSELECT status FROM idem_begin('h4', wait => false);\nSELECT idem_finish('h4', 200);\nROLLBACK;",
			'started' ],
		[ q{SELECT status FROM idem_lookup('h4')}, 'absent' ],
		# a key still begun when a later statement is cancelled by
		# statement_timeout
		[ "BEGIN;\nSELECT status FROM idem_begin('h6');\nSET LOCAL statement_timeout = '10ms';\nSELECT pg_sleep(1);\nCOMMIT;",
			'started', qr/canceling statement due to statement timeout/ ],
		[ "BEGIN;\nSELECT status FROM idem_begin('h6', wait => false);\nROLLBACK;",
			'started' ],
		[ q{SELECT idem_once('h5')}, 't' ],
		[ q{SELECT idem_once('h5')}, 'f' ],
	);
	my %pids;
	for my $i (0 .. $#steps)
	{
		my ($sql, $expect, $error) = @{ $steps[$i] };
		# psql goes on after an error, so that every step ends its
		# transaction and prints the backend it ran on
		my ($r, $o, $e) = bpsql('single',
			"\\set ON_ERROR_STOP 0\n$sql;\nSELECT 'pid ' || pg_backend_pid();");
		$pids{$1} = 1 if $o =~ s/\n*pid (\d+)$//;
		$o =~ s/\n+$//;
		is($o, $expect, "step $i: $expect");
		if ($error)
		{
			like($e, $error, "step $i: the expected error");
		}
		else
		{
			is($e, '', "step $i: no error");
		}
	}
	is(scalar(keys %pids), 1, 'all the clients were served by one backend');
	is( $node->safe_psql(
			'handover',
			q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 18756}),
		'0', 'no key lock is left behind');
};

IdemStress::run(
	$node,
	file => '034_pgbouncer',
	label => ' through PgBouncer',
	pgbench => "-h 127.0.0.1 -p $port -U $user -M simple postgres");
IdemStress::check($node);

# PgBouncer's own account: it carried the transactions, on at most
# $pool_size server connections.
my ($stats) = grep { $_->{database} eq 'postgres' } admin('SHOW STATS');
note "PgBouncer counted $stats->{total_xact_count} transactions for database postgres";
cmp_ok($stats->{total_xact_count}, '>', 1000,
	'PgBouncer carried the pgbench transactions');
my @servers = grep { $_->{database} eq 'postgres' } admin('SHOW SERVERS');
note scalar(@servers) . " server connections for database postgres";
cmp_ok(scalar(@servers), '<=', $pool_size,
	"16 clients shared at most $pool_size server connections");

# SIGTERM: immediate shutdown
$bouncer->signal('TERM');
ok(eval { $bouncer->finish; 1 } // 0, 'PgBouncer shut down') or diag $@;
$bouncer = undef;
unlike(slurp_file("$dir/pgbouncer.log"), qr/\b(?:FATAL|ERROR)\b/,
	'no error in the PgBouncer log');

$node->stop;
note sprintf('%.1f s', time - $t0);
done_testing();
