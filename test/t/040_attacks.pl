# Attacks on the sweeper and the maintenance functions by roles that are
# not superusers (docs/security.md, "How each claim is tested").
#
# The attacker is a role with nothing but LOGIN and CREATEDB.  It owns two
# databases: "mine", without the extension, and "tenant", where a superuser
# installed it.  A third database, "victim", belongs to the superuser.  In
# its databases the attacker plants every object and setting it can that
# could change what a superuser's code does there: a schema of operators on
# every type the extension compares and of functions named like the
# catalog's, all of which escalate the attacker to superuser and leave a
# mark if a superuser ever runs them; search_path through that schema; and
# database-level settings for isolation, read-only, deferrable, timeouts,
# errors, role and session authorization.  It then keeps a SERIALIZABLE
# READ WRITE transaction open.  The sweeper must go on sweeping every
# database within a few intervals, run none of the planted code, and leave
# the attacker as it was.
#
# Then: the memory of idem_sweep() and of a worker batch over 10^6 expired
# keys stays bounded (the per-row lock check used to keep ~1 kB a row until
# the batch ended); a role without grants cannot hold expired keys with
# idem_sweep(); and an index squatted under a name a later version uses is
# not opened as the extension's.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FindBin;
use lib $FindBin::RealBin;
use IdemPoll ();

my $SOON = 20;

my $node = PostgreSQL::Test::Cluster->new('attacks');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
idempotency.sweep_interval = '200ms'
log_line_prefix = '%m [%p] %b %q%a '
});
$node->start;
my $su = $node->safe_psql('postgres', 'SELECT current_user');

# A superuser session in a database whose owner set hostile defaults: the
# client's own options come before the database's settings.
my $SU_OPTIONS = join ' ',
  "-c session_authorization=$su", '-c role=none', '-c exit_on_error=off',
  '-c default_transaction_read_only=off',
  '-c default_transaction_isolation=read\ committed',
  '-c default_transaction_deferrable=off', '-c idle_session_timeout=0',
  '-c idle_in_transaction_session_timeout=0', '-c statement_timeout=0',
  '-c lock_timeout=0', '-c search_path=public';

sub su_psql
{
	my ($db, $sql) = @_;
	local $ENV{PGOPTIONS} = $SU_OPTIONS;
	return $node->safe_psql($db, $sql);
}

# IdemPoll's poll() and add_expired(), as a superuser who overrides the
# attacker's database settings.
sub poll
{
	my ($db, $sql, $expected, $secs) = @_;
	local $ENV{PGOPTIONS} = $SU_OPTIONS;
	return IdemPoll::poll($node, $db, $sql, $expected, $secs // $SOON);
}

sub add_expired
{
	my ($db, $prefix, $n) = @_;
	local $ENV{PGOPTIONS} = $SU_OPTIONS;
	IdemPoll::add_expired($node, $db, $prefix, $n);
	return;
}

# Expired keys put into $db now are gone within $secs seconds.
my $round = 0;
sub swept_soon
{
	my ($db, $name, $secs) = @_;
	my $prefix = $name . ++$round . '-';
	add_expired($db, $prefix, 10);
	return poll($db, "SELECT count(*) FROM idem_keys WHERE key LIKE '$prefix%'",
		'0', $secs);
}

# The attacker is still what it was, and nothing planted ran as superuser.
sub attacker_unchanged
{
	my ($what) = @_;
	is($node->safe_psql('postgres',
			q{SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls
			  FROM pg_roles WHERE rolname = 'regress_attacker'}),
		'f|f|f|f', "$what: the attacker's role is unchanged");
	for my $db ('mine', 'tenant')
	{
		is(su_psql($db, 'SELECT count(*) FROM public.pwned'), '0',
			"$what: no planted object ran as superuser in $db");
	}
	return;
}

$node->safe_psql('postgres', q{
CREATE ROLE regress_attacker LOGIN CREATEDB;
CREATE ROLE regress_app LOGIN;
CREATE DATABASE victim;
SET ROLE regress_attacker;
CREATE DATABASE mine;
CREATE DATABASE tenant;
});
$node->safe_psql('victim', 'CREATE EXTENSION idempotency');
$node->safe_psql('tenant', 'CREATE EXTENSION idempotency');
ok(poll('victim', q{SELECT count(*) FROM idem_sweeper_status WHERE last_error IS NULL}, '2'),
	'before the attack: victim and tenant are swept');

# The trap: any call by a superuser makes the attacker one and leaves a mark.
# Operators on every type the extension compares, and functions named like
# the catalog's that a careless query might call through search_path.
my $TRAP = q{
CREATE TABLE public.pwned (who text, how text);
GRANT ALL ON public.pwned TO PUBLIC;
CREATE SCHEMA s;
CREATE FUNCTION s.trap(how text) RETURNS bool LANGUAGE plpgsql AS $t$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user) THEN
        EXECUTE 'ALTER ROLE regress_attacker SUPERUSER';
        INSERT INTO public.pwned VALUES (current_user, how);
    END IF;
    RETURN true;
END $t$;
DO $d$
DECLARE
    t text;
    op record;
BEGIN
    FOREACH t IN ARRAY ARRAY['name', 'text', 'oid', 'timestamptz', 'timestamp', '"char"',
                             'int4', 'int8', 'int2', 'interval', 'bytea', 'jsonb', 'bool',
                             'uuid', 'regclass', 'regproc', 'xid', 'tid']
    LOOP
        FOR op IN SELECT * FROM (VALUES ('=', 'eq'), ('<>', 'ne'), ('<', 'lt'), ('<=', 'le'),
                                        ('>', 'gt'), ('>=', 'ge')) v(sym, fn)
        LOOP
            EXECUTE pg_catalog.format(
                'CREATE FUNCTION s.%s_%s(%s, %s) RETURNS bool LANGUAGE sql AS %L',
                op.fn, pg_catalog.md5(t), t, t,
                pg_catalog.format('SELECT s.trap(%L)', op.sym || ' ' || t));
            EXECUTE pg_catalog.format(
                'CREATE OPERATOR s.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = s.%s_%s)',
                op.sym, t, t, op.fn, pg_catalog.md5(t));
        END LOOP;
    END LOOP;
END $d$;
CREATE FUNCTION s.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT s.trap('now'); SELECT pg_catalog.now() $$;
CREATE FUNCTION s.current_database() RETURNS name LANGUAGE sql
    AS $$ SELECT s.trap('current_database'); SELECT pg_catalog.current_database() $$;
CREATE FUNCTION s.count(anyelement) RETURNS bigint LANGUAGE sql AS $$ SELECT s.trap('count')::int8 $$;
CREATE FUNCTION s.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT s.trap('lower')::text $$;
CREATE FUNCTION s.format(text) RETURNS text LANGUAGE sql AS $$ SELECT s.trap('format')::text $$;
CREATE FUNCTION s.pg_try_advisory_lock(int8) RETURNS bool LANGUAGE sql AS $$ SELECT s.trap('advisory') $$;
CREATE FUNCTION s.clock_timestamp() RETURNS timestamptz LANGUAGE sql
    AS $$ SELECT s.trap('clock_timestamp'); SELECT pg_catalog.clock_timestamp() $$;
CREATE FUNCTION s.to_regclass(text) RETURNS regclass LANGUAGE sql
    AS $$ SELECT s.trap('to_regclass'); SELECT NULL::regclass $$;
CREATE TABLE s.pg_extension (extname name, extnamespace oid);
CREATE TABLE s.idem_keys (x int);
CREATE TABLE s.pg_database (datname name);
};

# Settings a database owner may attach to its database, as hostile as they
# get.  The first group changes what SQL means (the way in for the planted
# objects); the second changes how a transaction runs: a worker that took
# them on would wait in GetSafeSnapshot for the attacker's open SERIALIZABLE
# transaction, fail, or run as another role (which would also keep the
# first group's trap from firing, hence two steps).  Those it may not set
# (superuser-only, or fixed at start) are tried too and must be refused.
my @HIJACK = (
	'search_path = s, pg_catalog, public',
	q{TimeZone = 'America/New_York'},
	'DateStyle = SQL, DMY',
	'IntervalStyle = iso_8601',
	'check_function_bodies = off',
	'client_min_messages = error',
	'jit = on',
	q{work_mem = '64kB'},
	q{maintenance_work_mem = '1MB'},
	q{temp_buffers = '800kB'},
	'enable_indexscan = off',
	'enable_bitmapscan = off',
	'enable_seqscan = off',
	'default_toast_compression = pglz');
my @STALL = (
	'default_transaction_isolation = serializable',
	'default_transaction_read_only = on',
	'default_transaction_deferrable = on',
	q{statement_timeout = '1ms'},
	q{lock_timeout = '1ms'},
	q{idle_in_transaction_session_timeout = '1ms'},
	q{idle_session_timeout = '1ms'},
	'exit_on_error = on',
	'synchronous_commit = remote_apply',
	'role = regress_attacker',
	'session_authorization = regress_attacker');
my @REFUSED = (
	'session_replication_role = replica',
	'idempotency.track_stats = off',
	'idempotency.sweeper = off',
	'idempotency.sweep_batch_size = 1',
	'idempotency.sweep_worker_timeout = 1000',
	'ignore_system_indexes = on',
	'zero_damaged_pages = on');

# The attacker attaches @settings to both of its databases, in one session
# (each takes effect in the sessions that follow).
sub attach_settings
{
	my @settings = @_;
	for my $db ('mine', 'tenant')
	{
		local $ENV{PGOPTIONS} = $SU_OPTIONS;
		$node->safe_psql($db, "SET ROLE regress_attacker;\n"
			  . join('', map { "ALTER DATABASE $db SET $_;\n" } @settings));
	}
	return;
}

# Every database with the extension is swept again after $what.
sub sweeping_goes_on
{
	my ($what) = @_;
	my $t0 = time;
	ok(swept_soon('victim', 'v-'), "$what: victim is swept");
	ok(swept_soon('tenant', 't-'), "$what: the attacker's own database with the extension is swept");
	note sprintf('%s: both swept within %.1f s', $what, time - $t0);
	my $before = su_psql('victim', 'SELECT max(last_start) FROM idem_sweeper_status');
	ok(poll('victim',
			qq{SELECT count(*) FROM idem_sweeper_status WHERE last_start > '$before' AND last_error IS NULL},
			'2'),
		"$what: later passes over victim and tenant go on, without error");
	return;
}

subtest 'a database owner\'s operators, functions and search_path do not reach the sweeper' => sub {
	for my $db ('mine', 'tenant')
	{
		$node->safe_psql($db, "SET ROLE regress_attacker;\n$TRAP");
		local $ENV{PGOPTIONS} = $SU_OPTIONS;
		for my $set (@REFUSED)
		{
			my ($ret, $out, $err) = $node->psql($db,
				"SET ROLE regress_attacker; ALTER DATABASE $db SET $set");
			like($err, qr/permission denied|cannot be (set|changed)/,
				"$db: the attacker may not set $set");
		}
		# role-level settings reach the worker's role (the bootstrap
		# superuser) only through ALTER ROLE of that role or of ALL (ALTER
		# ROLE ALL IN DATABASE is ALTER DATABASE ... SET, attached below)
		for my $stmt ("ALTER ROLE \"$su\" SET search_path = s, pg_catalog",
			"ALTER ROLE \"$su\" IN DATABASE $db SET search_path = s, pg_catalog",
			"ALTER ROLE ALL SET default_transaction_deferrable = on")
		{
			my ($ret, $out, $err) = $node->psql($db, "SET ROLE regress_attacker; $stmt");
			like($err, qr/permission denied|must be superuser|only superusers/,
				"$db: the attacker may not run $stmt");
		}
	}
	attach_settings(@HIJACK);
	# the trap works: a superuser's plain query through that search_path
	# would run it (shown without running it: the operator is there)
	is($node->safe_psql('mine', q{SELECT count(*) FROM pg_catalog.pg_operator o
		WHERE o.oprnamespace OPERATOR(pg_catalog.=) 's'::regnamespace
		  AND o.oprname OPERATOR(pg_catalog.=) '='}), '18',
		'the trap has an = on each of 18 types');
	is($node->safe_psql('mine', q{SELECT current_setting('search_path')}),
		's, pg_catalog, public', 'a new session in "mine" gets the attacker\'s search_path');
	sweeping_goes_on('with the trap set');
	attacker_unchanged('after the sweeper visited the trapped databases');
};

subtest 'a database owner\'s transaction settings and an open SERIALIZABLE transaction stall nothing' => sub {
	attach_settings(@STALL);
	# the stall: a SERIALIZABLE READ WRITE transaction that stays open, which
	# a worker taking a SERIALIZABLE READ ONLY DEFERRABLE snapshot waits out
	local $ENV{PGOPTIONS} = '-c idle_in_transaction_session_timeout=0 -c idle_session_timeout=0 '
	  . '-c statement_timeout=0 -c exit_on_error=off';
	my @stall;
	for my $db ('tenant', 'mine')
	{
		my $h = $node->background_psql($db, on_error_stop => 1,
			extra_params => [ '-U', 'regress_attacker' ]);
		$h->query_safe(q{BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE});
		$h->query_safe(q{SELECT count(*) FROM pg_class});
		push @stall, $h;
	}
	local $ENV{PGOPTIONS};

	sweeping_goes_on('with the stall in place');
	is(su_psql('tenant',
			q{SELECT last_error IS NULL FROM idem_sweeper_status WHERE datname = 'tenant'}),
		't', 'tenant\'s last pass recorded no error');
	is(su_psql('victim',
			q{SELECT count(*) FROM pg_stat_activity
			  WHERE backend_type LIKE 'idempotency sweeper%' AND wait_event = 'SafeSnapshot'}),
		'0', 'no sweeper process waits for a safe snapshot');
	attacker_unchanged('after the sweeper visited the stalled databases');
	$_->quit for @stall;
};

subtest 'a database owner\'s open ALTER DATABASE ... RENAME holds up no worker' => sub {
	# connecting to a database waits, with no timeout, for the lock that
	# ALTER DATABASE ... RENAME holds until its transaction ends
	my $renamer = $node->background_psql('postgres', on_error_stop => 1,
		extra_params => [ '-U', 'regress_attacker' ]);
	$renamer->query_safe('BEGIN');
	$renamer->query_safe('ALTER DATABASE tenant RENAME TO tenant_renamed');
	ok(poll('victim', q{SELECT last_error LIKE 'skipped: another transaction holds a lock on the database%'
		FROM idem_sweeper_status WHERE datname = 'tenant'}, 't'),
		'the locked database is skipped, and its status says why');
	ok(swept_soon('victim', 'r-'), 'victim is swept meanwhile');
	is(su_psql('victim', q{SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
		WHERE a.backend_type LIKE 'idempotency sweeper%' AND NOT l.granted}), '0',
		'no sweeper process waits on a lock');
	$renamer->query_safe('ROLLBACK');
	$renamer->quit;
	ok(poll('victim', q{SELECT last_error IS NULL FROM idem_sweeper_status WHERE datname = 'tenant'}, 't'),
		'once the transaction ends the database is swept again');
};

subtest 'idem_sweep() and a worker batch over 10^6 expired keys use bounded memory' => sub {
	my $N = 1_000_000;
	su_psql('victim', q{ALTER SYSTEM SET idempotency.sweeper = off; SELECT pg_reload_conf()});
	ok(poll('victim', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'idempotency sweeper'}, '0'),
		'no worker runs');
	add_expired('victim', 'm-', $N);

	# the private memory (RssAnon: heap, not shared buffers) of one process
	my $rss_anon = sub {
		my ($pid) = @_;
		open(my $fh, '<', "/proc/$pid/status") or return undef;
		while (<$fh>) { return $1 if /^RssAnon:\s+(\d+) kB/; }
		return undef;
	};

	# idem_sweep by a role granted EXECUTE (the default is superusers only)
	su_psql('victim', 'GRANT EXECUTE ON FUNCTION idem_sweep(int) TO regress_app');
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ $node->installed_command('psql'), '-X', '-A', '-t', '-d', $node->connstr('victim') . ' user=regress_app application_name=sweepmem',
		  '-c', 'SELECT pg_sleep(0.3)', '-c', 'SELECT idem_sweep(2147483647)' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(600));
	my $pid;
	my $deadline = time + $SOON;
	while (!$pid && time < $deadline)
	{
		$pid = su_psql('victim', q{SELECT pid FROM pg_stat_activity WHERE application_name = 'sweepmem'});
		usleep(20_000) unless $pid;
	}
	ok($pid, 'the sweeping session is there');
	my $base = $rss_anon->($pid);
	my $peak = $base;
	while ($h->pumpable)
	{
		my $kb = $rss_anon->($pid);
		$peak = $kb if defined $kb && $kb > $peak;
		$h->pump_nb;
		usleep(5_000);
	}
	$h->finish;
	is((split /\n/, $out)[-1], $N, "idem_sweep removed all $N keys");
	my $grew = ($peak - $base) / 1024;
	note sprintf('idem_sweep over %d expired keys: backend private memory %d kB before, peak %d kB (+%.1f MB)',
		$N, $base, $peak, $grew);
	cmp_ok($grew, '<', 32, 'idem_sweep: peak private memory grew by less than 32 MB');

	# a worker batch of 10^6
	add_expired('victim', 'w-', $N);
	su_psql('victim', q{ALTER SYSTEM SET idempotency.sweep_batch_size = 1000000;
ALTER SYSTEM SET idempotency.sweeper = on; SELECT pg_reload_conf()});
	my %base;
	my %peak;
	$deadline = time + 300;
	for (;;)
	{
		for my $w (split /\n/, su_psql('victim',
				q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'idempotency sweeper'}))
		{
			my $kb = $rss_anon->($w) // next;
			$base{$w} //= $kb;
			$peak{$w} = $kb if !defined $peak{$w} || $kb > $peak{$w};
		}
		last if su_psql('victim', q{SELECT count(*) FROM idem_keys WHERE key LIKE 'w-%'}) eq '0';
		last if time > $deadline;
		usleep(5_000);
	}
	is(su_psql('victim', q{SELECT count(*) FROM idem_keys WHERE key LIKE 'w-%'}), '0',
		'the worker swept them');
	my ($worst) = sort { $b <=> $a } map { ($peak{$_} - $base{$_}) / 1024 } keys %peak;
	ok(defined $worst, 'a worker was seen while it swept');
	note sprintf('worker batch of %d: worst private memory growth seen +%.1f MB over %d workers',
		$N, $worst // -1, scalar keys %peak);
	cmp_ok($worst // 0, '<', 32, 'worker: peak private memory grew by less than 32 MB');
	su_psql('victim', q{ALTER SYSTEM RESET idempotency.sweep_batch_size; SELECT pg_reload_conf()});
};

subtest 'a role without grants cannot hold expired keys with idem_sweep()' => sub {
	su_psql('victim', 'REVOKE EXECUTE ON FUNCTION idem_sweep(int) FROM regress_app');
	su_psql('victim', q{ALTER SYSTEM SET idempotency.sweeper = off; SELECT pg_reload_conf()});
	ok(poll('victim', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'idempotency sweeper'}, '0'),
		'no worker runs');
	add_expired('victim', 'hold-', 100);

	my $holder = $node->background_psql('victim', on_error_stop => 0);
	$holder->query_safe('SET ROLE regress_app');
	$holder->query_safe('BEGIN');
	my $res = $holder->query('SELECT idem_sweep(1000000)');
	like($holder->{stderr}, qr/permission denied for function idem_sweep/,
		'an application role gets 42501 from idem_sweep');
	# the holder's transaction stays open; a tenant's retry of an expired key
	# must not wait for it
	is(su_psql('victim', q{
SET lock_timeout = '5s';
BEGIN;
SELECT status FROM idem_begin('hold-1', '{"a": 1}'::jsonb);
SELECT idem_finish('hold-1', 201);
COMMIT;}),
		"started\n", 'a begin and finish of an expired key do not wait for the would-be holder');
	$holder->quit;
	su_psql('victim', q{ALTER SYSTEM SET idempotency.sweeper = on; SELECT pg_reload_conf()});
};

subtest 'indexes squatted under later versions\' names are not opened as the extension\'s' => sub {
	$node->safe_psql('postgres', 'CREATE DATABASE old; CREATE ROLE regress_squatter');
	$node->safe_psql('old', q{
CREATE EXTENSION idempotency VERSION '0.1.0';
GRANT CREATE ON SCHEMA public TO regress_squatter;
SET ROLE regress_squatter;
CREATE TABLE public.t (x timestamptz);
CREATE INDEX idem_keys_leases ON public.t (x);
CREATE INDEX idem_keys_failures ON public.t (x);});
	ok(swept_soon('old', 'o-'), 'a 0.1.0 database with a squatted idem_keys_leases is swept');
	is(su_psql('old', q{SELECT last_error IS NULL FROM idem_sweeper_status WHERE datname = 'old'}),
		't', 'without error');
	# calls there do not open it either
	is(su_psql('old', q{SELECT idem_once('o-new')}), 't', 'idem_once works there');
	my ($ret, $out, $err) = $node->psql('old', 'ALTER EXTENSION idempotency UPDATE');
	like($err, qr/relation "idem_keys_leases" already exists/,
		'the update refuses to run over the squatter (drop it first)');
};

# The install and update scripts run as a superuser in the extension's
# schema: a database owner who planted operators and functions there (on
# every type the scripts compare, and named like the catalog functions they
# call) gets none of them run, through every update to the newest, 0.4.0's
# re-creation of functions and privileges included.
subtest 'the install and update scripts run nothing a database owner planted in the extension\'s schema' => sub {
	$node->safe_psql('postgres', 'CREATE DATABASE trapped OWNER regress_attacker');
	(my $trap = $TRAP) =~ s/^CREATE TABLE s\.(idem_keys|pg_extension|pg_database) .*\n//mg;
	$node->safe_psql('trapped', "SET ROLE regress_attacker;\n$trap");
	su_psql('trapped', q{
CREATE EXTENSION idempotency VERSION '0.1.0' SCHEMA s;
ALTER EXTENSION idempotency UPDATE;});
	is(su_psql('trapped', q{SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'idempotency'}),
		su_psql('postgres', q{SELECT default_version FROM pg_available_extensions WHERE name = 'idempotency'}),
		'updated to the default version');
	is(su_psql('trapped', 'SELECT count(*) FROM public.pwned'), '0',
		'no planted object ran during the install and the updates');
	is(su_psql('trapped', q{SELECT s.idem_once_batch(ARRAY['a', 'b'])::text}), '{a,b}',
		'the functions work there');
	is(su_psql('trapped', 'SELECT count(*) FROM public.pwned'), '0', 'and run nothing planted either');
};

attacker_unchanged('at the end');
$node->stop;
done_testing();
