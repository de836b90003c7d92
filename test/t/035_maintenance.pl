# Routine maintenance of the key table, run while keys are written.
#
# A DBA rebuilds, adds and repacks indexes, rewrites the table, and hangs
# triggers on it without asking the extension.  Each of these runs here while
# background writers keep every write path of the extension busy: begin and
# finish with a jsonb, text or bytea body (responses as jsonb, as headers and
# bytes, and a 5xx), idem_call with a work function, idem_once,
# idem_once_batch (overlapping batches), leases with a checkpoint and a
# finish, a lease taken over from a holder whose token is then fenced off, a
# lease released, a failure retried (idem_fail), dead keys retried
# (idem_retry), discarded (idem_discard) or left dead, kept keys (idem_keep),
# erased keys (idem_erase), expired keys begun again, and keys that expire at
# once, which the sweeper and idem_sweep() delete while the operation runs.
# Hot keys that every writer sends, and retries of earlier requests, keep
# the writers meeting each other and their own past.
#
# Every request that completes records, in the same transaction, the
# business row of its work (payments, with no unique constraint, so work
# done twice shows) and what a retry of its key must answer from then on
# (expected: replay, dead or erased).  Keys that the checks look at all have
# a ttl of a day; only the separate population of keys that expire at once
# ("short") is left out of them, so that no check depends on timing.  The
# load runs until the operation is over, then until keys have completed
# after it and the sweeper has made a pass after it; the number of
# transactions does not matter.
#
# After each operation, with the writers stopped:
# - the writers saw no error and no retry that got another answer than its
#   first request (a retry that starts again would do the work twice);
# - every btree index of idem_keys, partial and DBA's ones included, passes
#   amcheck's bt_index_check(heapallindexed => true), and none is left
#   invalid;
# - every expected key is found through idem_keys_pkey (a nested loop of
#   index probes, its plan checked) and by a sequential scan, no key has
#   two rows, and each row is in the state its key must be in;
# - each key has exactly one business row (none for dead keys), and a retry
#   of every key through the function that made it (idem_begin with the
#   same body, idem_call, idem_once, idem_once_batch, idem_lease) gives its
#   expected answer without running the work again;
# - the DBA's new indexes hold every row: a scan through each counts what a
#   sequential scan counts.
#
# The operations: REINDEX INDEX and REINDEX INDEX CONCURRENTLY of each index
# of idem_keys (as pg_index lists them), REINDEX TABLE CONCURRENTLY (the
# concurrent ones three times over), CREATE INDEX and CREATE INDEX
# CONCURRENTLY of a plain, a partial and an expression index, pg_repack of
# the table and of its indexes only (skipped, saying so, where pg_repack is
# not installed for the server's major), VACUUM FULL, CLUSTER, a DBA's AFTER
# ROW audit trigger created under load (the audit log must replay into
# exactly the table's rows: every insert, update and delete was seen, the
# sweeper's too, which it fires as the table's owner, here a role that is
# not a superuser), and ALTER EXTENSION UPDATE from 0.5.0 under a load that
# uses only what 0.5.0 has.  A BEFORE ROW trigger, and the other triggers
# and rules a write cannot honour (statement-level, UPDATE OF a column,
# transition tables, a rule), make every kind of write fail with 55000,
# writing nothing, and once dropped the writes work again.
#
# Why this fails if the extension writes idem_keys as anything less than a
# statement would: an index that a write does not insert into (one being
# built by REINDEX or CREATE INDEX CONCURRENTLY, pg_repack's copies, a
# DBA's new index) misses the rows written meanwhile, which amcheck reports,
# and a missing primary key entry makes a retry start again (a second
# payments row and a second row for the key); a trigger that does not fire
# loses pg_repack's log of the rows written during the copy (keys lost or
# in an old state after the swap) and the audit's rows.  And a call that
# looked the store's indexes up just before REINDEX CONCURRENTLY swapped and
# dropped them must find them again, not fail opening the dropped one.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use IdemPoll;

my $t0 = time;

# Writers; the waits are polls, with a generous deadline.
my $clients = 3;
$IdemPoll::SOON = 60;

my $node = PostgreSQL::Test::Cluster->new('maintenance');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'idempotency'
idempotency.sweep_interval = '200ms'
max_connections = 40
log_line_prefix = '%m [%p] %b %q%a '
log_statement = 'ddl'
});
$node->start;

# The application: business rows, the ledger of what each key must answer,
# and the requests, one function per kind, used by the writers and by the
# retries alike.  Every name the audit trigger uses is qualified: the
# sweeper fires it with a search_path of its own.
my $APP = q{
CREATE TABLE control (halt boolean NOT NULL);
INSERT INTO control VALUES (true);
CREATE TABLE payments (scope text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL,
                       kind text NOT NULL);
CREATE TABLE expected (id bigserial, client int, kind text NOT NULL,
                       scope text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL,
                       expect text NOT NULL);
CREATE TABLE anomalies (scope text, key text, kind text, got text, want text);

CREATE FUNCTION req(kind text, s text, k text) RETURNS jsonb LANGUAGE sql IMMUTABLE
AS $$ SELECT jsonb_build_object('kind', kind, 'scope', s, 'key', k, 'amount', length(k) * 7,
                                'lines', jsonb_build_array(1, 2.50, NULL)) $$;

-- the business write of a request, and what its key answers from then on
-- (NULL: recorded later, by the step that makes the key's final state)
CREATE FUNCTION work(kind text, s text, k text, expect text DEFAULT 'replay') RETURNS void
LANGUAGE sql AS $$
INSERT INTO payments VALUES (s, k, kind);
INSERT INTO expected (client, kind, scope, key, expect)
SELECT nullif(current_setting('load.client', true), '')::int, kind, s, k, expect
WHERE expect IS NOT NULL;
$$;

-- the work of idem_call
CREATE FUNCTION pay(r jsonb) RETURNS idem_response LANGUAGE plpgsql AS $$
BEGIN
    PERFORM work(r ->> 'kind', r ->> 'scope', r ->> 'key');
    RETURN idem_response(201, jsonb_build_object('paid', r ->> 'key'),
                         '{"Location": "/payments/1"}');
END $$;

CREATE FUNCTION expect_status(s text, k text, kind text, got text, want text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF got IS DISTINCT FROM want THEN
        INSERT INTO anomalies VALUES (s, k, kind, got, want);
        RETURN false;
    END IF;
    RETURN true;
END $$;

-- One request of a kind, in the caller's transaction: 'started' (or
-- idem_call's 'done') when it did the work now, else what the key answered.
-- Kinds that end with a plain finish (fail, dead_retry, ...) begin with a
-- jsonb body; a lease kind's retry asks idem_lease.
CREATE FUNCTION request(kind text, s text, k text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r jsonb := req(kind, s, k);
    st text;
BEGIN
    IF kind = 'text' THEN
        SELECT b.status INTO st FROM idem_begin(k, r::text, s, '1 day') b;
        IF st = 'started' THEN
            PERFORM work(kind, s, k);
            PERFORM idem_finish(k, 200, NULL, s,
                response_headers => '{"Content-Type": "text/plain", "Set-Cookie": ["a=1", "b=2"]}',
                response_bytes => convert_to('paid ' || k, 'UTF8'));
        END IF;
    ELSIF kind = 'bytea' THEN
        SELECT b.status INTO st FROM idem_begin(k, sha256(convert_to(r::text, 'UTF8')), s, '1 day') b;
        IF st = 'started' THEN
            PERFORM work(kind, s, k);
            PERFORM idem_finish(k, 502, NULL, s);
        END IF;
    ELSIF kind = 'call' THEN
        SELECT c.status INTO st FROM idem_call(k, r, 'pay(jsonb)', s, '1 day') c;
    ELSIF kind = 'once' THEN
        st := CASE WHEN idem_once(k, s, '1 day') THEN 'started' ELSE 'replay' END;
        IF st = 'started' THEN
            PERFORM work(kind, s, k);
        END IF;
    ELSIF kind = 'batch' THEN
        st := CASE WHEN cardinality(idem_once_batch(ARRAY[k], s, '1 day')) = 1
                   THEN 'started' ELSE 'replay' END;
        IF st = 'started' THEN
            PERFORM work(kind, s, k);
        END IF;
    ELSIF kind IN ('lease', 'takeover') THEN
        SELECT l.status INTO st FROM idem_lease(k, r, s, '1 day') l;
    ELSE
        SELECT b.status INTO st FROM idem_begin(k, r, s, '1 day') b;
        IF st = 'started' THEN
            PERFORM work(kind, s, k, CASE WHEN kind = 'erase' THEN NULL ELSE 'replay' END);
            PERFORM idem_finish(k, 201, jsonb_build_object('paid', k), s);
        END IF;
    END IF;
    RETURN st;
END $$;

-- What a retry of a key of this kind must answer.
CREATE FUNCTION want(kind text) RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE kind WHEN 'dead' THEN 'dead' WHEN 'erase' THEN 'erased' ELSE 'replay' END $$;

-- One writer: a request of each kind in turn (one key per request), a
-- request for a hot key that every writer sends, and a retry of one of its
-- own earlier requests, each its own transaction, until control.halt (or
-- two minutes, should the test itself be gone).
CREATE PROCEDURE load(op text, client int) LANGUAGE plpgsql AS $$
DECLARE
    kinds text[] := ARRAY['jsonb', 'text', 'bytea', 'call', 'once', 'batch', 'lease', 'takeover',
                          'fail', 'dead_retry', 'dead_discard', 'dead', 'keep', 'erase', 'release',
                          'reuse', 'short'];
    hot_kinds text[] := ARRAY['jsonb', 'text', 'bytea', 'call', 'once', 'batch'];
    s text := CASE WHEN client % 2 = 0 THEN '' ELSE 'acct_' || client END;
    deadline timestamptz := clock_timestamp() + interval '2 minutes';
    i int := 0;
    j int;
    n int;
    tries int;
    kind text;
    k text;
    r jsonb;
    st text;
    tok uuid;
    tok2 uuid;
    expiry timestamptz;
    ids text[];
    halted boolean;
BEGIN
    PERFORM set_config('load.client', client::text, false);
    LOOP
        SELECT c.halt INTO halted FROM control c;
        EXIT WHEN halted OR clock_timestamp() > deadline;
        i := i + 1;
        kind := kinds[1 + (i + client) % cardinality(kinds)];
        k := op || ':' || client || ':' || i;
        r := req(kind, s, k);

        IF kind IN ('jsonb', 'text', 'bytea', 'call', 'once') THEN
            PERFORM expect_status(s, k, kind, request(kind, s, k),
                                  CASE kind WHEN 'call' THEN 'done' ELSE 'started' END);

        ELSIF kind = 'batch' THEN
            -- new ids, one of them twice, and ids that other writers' batches share
            ids := ARRAY[k || ':1', k || ':2', op || ':hb:' || (1 + floor(random() * 30))::int,
                         k || ':1', op || ':hb:' || (1 + floor(random() * 30))::int, k || ':3'];
            PERFORM work('batch', 'batch', id)
            FROM unnest(idem_once_batch(ids, 'batch', '1 day')) AS id;

        ELSIF kind = 'lease' THEN
            SELECT l.status, l.token INTO st, tok FROM idem_lease(k, r, s, '1 day', '10 minutes') l;
            IF expect_status(s, k, kind, st, 'started') THEN
                COMMIT;
                PERFORM idem_checkpoint(k, tok, 'charged', jsonb_build_object('charge', 'ch_' || i), s);
                COMMIT;
                PERFORM work(kind, s, k);
                PERFORM idem_finish(k, 201, jsonb_build_object('paid', k), s, tok);
                COMMIT;
                -- the token no longer holds the finished key
                BEGIN
                    PERFORM idem_checkpoint(k, tok, 'late', NULL, s);
                    PERFORM expect_status(s, k, kind, 'a late checkpoint accepted', '55000');
                EXCEPTION WHEN object_not_in_prerequisite_state THEN
                    NULL;
                END;
            END IF;

        ELSIF kind = 'takeover' THEN
            -- a lease of a microsecond has run out by the next transaction
            SELECT l.status, l.token INTO st, tok FROM idem_lease(k, r, s, '1 day', '1 microsecond') l;
            IF expect_status(s, k, kind, st, 'started') THEN
                COMMIT;
                tries := 0;
                LOOP
                    SELECT l.status, l.token INTO st, tok2
                    FROM idem_lease(k, r, s, '1 day', '10 minutes') l;
                    COMMIT;
                    tries := tries + 1;
                    EXIT WHEN st <> 'in_progress' OR tries > 1000;
                    PERFORM pg_sleep(0.001);
                END LOOP;
                IF expect_status(s, k, kind, st, 'resumed') THEN
                    -- the first holder is fenced off
                    BEGIN
                        PERFORM idem_checkpoint(k, tok, 'stale', NULL, s);
                        PERFORM expect_status(s, k, kind, 'a stale token accepted', '55000');
                    EXCEPTION WHEN object_not_in_prerequisite_state THEN
                        NULL;
                    END;
                    PERFORM idem_checkpoint(k, tok2, 'charged', '{"charge": 2}', s);
                    COMMIT;
                    PERFORM work(kind, s, k);
                    PERFORM idem_finish(k, 201, jsonb_build_object('paid', k), s, tok2);
                END IF;
            END IF;

        ELSIF kind = 'fail' THEN
            SELECT b.status INTO st FROM idem_begin(k, r, s, '1 day') b;
            IF expect_status(s, k, kind, st, 'started') THEN
                PERFORM work(kind, s, k);    -- the work fails: rolled back with the attempt
                ROLLBACK;
                PERFORM expect_status(s, k, kind, idem_fail(k, 'provider timeout', s, 3), 'failed');
                COMMIT;
                PERFORM expect_status(s, k, kind, request(kind, s, k), 'started');
            END IF;

        ELSIF kind IN ('dead', 'dead_retry', 'dead_discard') THEN
            SELECT b.status INTO st FROM idem_begin(k, r, s, '1 day') b;
            IF expect_status(s, k, kind, st, 'started') THEN
                ROLLBACK;
                PERFORM expect_status(s, k, kind, idem_fail(k, 'card declined', s, 1), 'dead');
                IF kind = 'dead' THEN
                    INSERT INTO expected (client, kind, scope, key, expect)
                    VALUES (client, kind, s, k, 'dead');
                ELSE
                    COMMIT;
                    IF kind = 'dead_retry' THEN
                        PERFORM expect_status(s, k, kind, idem_retry(k, s), 'failed');
                    ELSE
                        PERFORM expect_status(s, k, kind, idem_discard(k, s)::text, 'true');
                    END IF;
                    COMMIT;
                    PERFORM expect_status(s, k, kind, request(kind, s, k), 'started');
                END IF;
            END IF;

        ELSIF kind = 'keep' THEN
            IF expect_status(s, k, kind, request(kind, s, k), 'started') THEN
                IF i % 2 = 0 THEN
                    COMMIT;
                END IF;
                PERFORM idem_keep(k, s);
            END IF;

        ELSIF kind = 'erase' THEN
            IF expect_status(s, k, kind, request(kind, s, k), 'started') THEN
                COMMIT;
                PERFORM expect_status(s, k, kind, idem_erase(k, s)::text, 'true');
                INSERT INTO expected (client, kind, scope, key, expect)
                VALUES (client, kind, s, k, 'erased');
            END IF;

        ELSIF kind = 'release' THEN
            SELECT l.status, l.token INTO st, tok FROM idem_lease(k, r, s, '1 day', '10 minutes') l;
            IF expect_status(s, k, kind, st, 'started') THEN
                COMMIT;
                PERFORM idem_release(k, s, tok);
                COMMIT;
                PERFORM expect_status(s, k, kind, request(kind, s, k), 'started');
            END IF;

        ELSIF kind = 'reuse' THEN
            -- a key that expires at once, begun again by a transaction that
            -- starts after its expires_at: the old record is replaced
            SELECT b.status, b.expires_at INTO st, expiry FROM idem_begin(k, r, s, '1 microsecond') b;
            IF expect_status(s, k, kind, st, 'started') THEN
                PERFORM idem_finish(k, 201, '{"first": true}', s);
                COMMIT;
                WHILE clock_timestamp() <= expiry LOOP
                    PERFORM pg_sleep(0.0001);
                END LOOP;
                COMMIT;
                PERFORM expect_status(s, k, kind, request(kind, s, k), 'started');
            END IF;

        ELSE
            -- short: keys that expire at once, for the sweeper and idem_sweep
            PERFORM idem_once_batch(ARRAY[k || ':1', k || ':2', k || ':3', k || ':4'], 'short',
                                    '1 microsecond');
            SELECT b.status INTO st FROM idem_begin(k, r, 'short', '1 microsecond') b;
            IF st = 'started' THEN
                PERFORM idem_finish(k, 200, '{"short": true}', 'short');
            END IF;
        END IF;
        COMMIT;

        -- a hot key, sent by every writer: its work is done once
        n := 1 + floor(random() * 40)::int;
        PERFORM request(hot_kinds[1 + n % cardinality(hot_kinds)], 'hot', op || ':hot:' || n);
        COMMIT;

        -- a retry of one of this writer's earlier requests
        IF i > 1 THEN
            j := 1 + floor(random() * (i - 1))::int;
            kind := kinds[1 + (j + client) % cardinality(kinds)];
            k := op || ':' || client || ':' || j;
            IF kind NOT IN ('batch', 'short') THEN
                PERFORM expect_status(s, k, kind, request(kind, s, k), want(kind));
            END IF;
            COMMIT;
        END IF;

        IF i % 40 = 0 THEN
            PERFORM idem_sweep(50);
            COMMIT;
        END IF;
    END LOOP;
END $$;

-- A DBA's audit trigger: every row written, and as whom (the sweeper's
-- deletes fire it as the key table's owner).
CREATE TABLE audit (id bigserial, op text NOT NULL, scope text COLLATE "C" NOT NULL,
                    key text COLLATE "C" NOT NULL, state "char", expires_at timestamptz,
                    code int, by name NOT NULL DEFAULT current_user);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO public.audit (op, scope, key) VALUES (TG_OP, OLD.scope, OLD.key);
    ELSE
        INSERT INTO public.audit (op, scope, key, state, expires_at, code)
        VALUES (TG_OP, NEW.scope, NEW.key, NEW.state, NEW.expires_at, NEW.response_code);
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END $$;
};

# The checks' helpers: amcheck with the error caught, a plan on one line.
my $CHECKS = q{
CREATE EXTENSION amcheck;
CREATE FUNCTION index_check(index regclass) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bt_index_check(index, heapallindexed => true);
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLERRM;
END $$;
CREATE FUNCTION plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    plan text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
        plan := plan || line || ' / ';
    END LOOP;
    RETURN plan;
END $$;
};

$node->safe_psql('postgres', "CREATE EXTENSION idempotency;\n$CHECKS\n$APP");
my $schema = $node->safe_psql('postgres',
	q{SELECT quote_ident(extnamespace::regnamespace::text) FROM pg_extension WHERE extname = 'idempotency'});
my $keys = "$schema.idem_keys";

# pg_repack, from the server's own bindir, and its extension for this major.
my $major = int($node->safe_psql('postgres', 'SHOW server_version_num') / 10000);
my $repack = $node->config_data('--bindir') . '/pg_repack';
my $no_repack;
if (!-x $repack)
{
	$no_repack = "pg_repack is not installed for PostgreSQL $major (no $repack)";
}
elsif ($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_repack'}) eq '0')
{
	$no_repack = "the pg_repack extension is not installed for PostgreSQL $major";
}
else
{
	$node->safe_psql('postgres', 'CREATE EXTENSION pg_repack');
}

# Run $sql on $db: its output, or undef (and a diagnostic) if it failed.
sub query
{
	my ($db, $sql) = @_;
	my ($ret, $out, $err) = $node->psql($db, $sql);
	return $out if defined $ret && $ret == 0;
	diag "failed: $sql\n$err";
	return undef;
}

# The test $name passes if $sql runs and prints $want.
sub query_is
{
	my ($db, $sql, $want, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $got = query($db, $sql);
	return fail($name) unless defined $got;
	return is($got, $want, $name);
}

# The extension's own indexes of idem_keys, as pg_index lists them.
my @extension_indexes = split /\n/, $node->safe_psql(
	'postgres', qq{
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = '$keys'::regclass ORDER BY c.relname});
note 'indexes of idem_keys: ' . join(', ', @extension_indexes);

# Drop the indexes an earlier operation left on idem_keys (the DBA's, the
# copies of a REINDEX CONCURRENTLY that failed) and empty the key table and
# the application's, so that each operation starts from the extension's
# own indexes and its checks see only its own writes.
sub reset_tables
{
	my ($db) = @_;
	my $own = join ', ', map { "'$_'" } @extension_indexes;
	$node->safe_psql(
		$db, qq{
DO \$\$
DECLARE
    leftover text;
BEGIN
    FOR leftover IN SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                     WHERE i.indrelid = '$keys'::regclass AND c.relname NOT IN ($own) LOOP
        EXECUTE 'DROP INDEX ' || leftover;
    END LOOP;
END \$\$;
TRUNCATE $keys, payments, expected, anomalies, audit;
UPDATE control SET halt = false;});
	return;
}

my $SWEPT = q{SELECT coalesce((SELECT keys_swept FROM idem_stats WHERE datname = current_database()), 0)};

# Start the writers; they run until stop_load.
sub start_load
{
	my ($db, $op) = @_;
	my @w;
	for my $c (1 .. $clients)
	{
		my ($out, $err) = ('', '');
		my $h = IPC::Run::start(
			[
				'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
				'-d', $node->connstr($db) . ' application_name=idem_load',
				'-c', "CALL load('$op', $c)"
			],
			'<', '/dev/null', '>', \$out, '2>', \$err,
			IPC::Run::timeout(300));
		push @w, { h => $h, out => \$out, err => \$err, client => $c };
	}
	return \@w;
}

# Halt the writers and wait for them; pass if every one ended without error.
sub stop_load
{
	my ($db, $w) = @_;
	$node->safe_psql($db, 'UPDATE control SET halt = true');
	my @bad;
	for my $x (@$w)
	{
		my $ok = eval { $x->{h}->finish; 1 };
		if (!$ok)
		{
			$x->{h}->kill_kill;
			push @bad, "writer $x->{client}: $@";
		}
		elsif ($x->{h}->result != 0 || ${ $x->{err} } ne '')
		{
			push @bad, "writer $x->{client} exited with " . $x->{h}->result . ": ${ $x->{err} }";
		}
	}
	is(join("\n", @bad), '', 'the writers ran without an error');
	return;
}

# The checks after an operation (see the header); @dba: the DBA's indexes,
# each with a condition that a scan through it alone can answer.  Few psql
# runs: each query of a batch prints one line.
sub check_keys
{
	my ($db, @dba) = @_;

	# amcheck on every btree index, each error caught and reported
	my %amcheck = map { split /: /, $_, 2 } split /\n/, $node->safe_psql(
		$db, qq{
SELECT c.relname || ': ' || index_check(c.oid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = '$keys'::regclass AND i.indisvalid
  AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree')});
	is($amcheck{$_}, 'ok', "amcheck: $_ holds every row, in order") for sort keys %amcheck;

	my $total = $node->safe_psql($db, 'SELECT count(*) FROM expected');
	my $found = qq{
SELECT count(*) FROM expected e WHERE EXISTS (SELECT FROM $keys k WHERE k.scope = e.scope AND k.key = e.key)};
	my $no_index = 'SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off;';
	my @checks = (
		[ q{SELECT count(*) || coalesce(': ' || string_agg(format('%s %s/%s got %s, not %s', kind, scope, key, got, want), '; ')
                                      FILTER (WHERE n <= 5), '')
FROM (SELECT *, row_number() OVER () AS n FROM anomalies) a},
			'0', 'every request and retry of the writers got the answer it should' ],
		[ qq{SELECT coalesce(string_agg(c.relname, ','), '') FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = '$keys'::regclass AND NOT (i.indisvalid AND i.indisready)},
			'', 'no index of idem_keys is left invalid' ],
		[ q{SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_hashjoin = off;
SET enable_mergejoin = off; SET enable_material = off;}
			  . qq{SELECT plan_of(\$q\$$found\$q\$) ~ 'Nested Loop.*Index (Only )?Scan using idem_keys_pkey';},
			't', 'the lookup below probes idem_keys_pkey once per key' ],
		[ "$found; RESET ALL;", $total, "all $total completed keys found through idem_keys_pkey" ],
		[ "$no_index $found", $total, "all $total completed keys found by a sequential scan" ],
		[ "SELECT count(*) FROM (SELECT FROM $keys GROUP BY scope, key HAVING count(*) > 1) d",
			'0', 'no key has two rows (sequential scan)' ],
		[ qq{SELECT count(*) FROM expected e JOIN $keys k ON k.scope = e.scope AND k.key = e.key
WHERE k.state <> CASE e.expect WHEN 'replay' THEN 'c' WHEN 'dead' THEN 'd' ELSE 'e' END::"char"
   OR (k.expires_at = 'infinity') <> (e.kind = 'keep'); RESET ALL;},
			'0', 'every key is in its state (completed, dead, erased; kept for good)' ],
		[ q{SELECT count(*) FROM (SELECT FROM expected GROUP BY scope, key HAVING count(*) > 1) d},
			'0', 'no key completed twice' ],
		[ q{SELECT count(*) FROM expected e
LEFT JOIN (SELECT scope, key, count(*) AS n FROM payments GROUP BY 1, 2) p USING (scope, key)
WHERE coalesce(p.n, 0) <> CASE WHEN e.expect = 'dead' THEN 0 ELSE 1 END},
			'0', 'each completed key has one business row, a dead one none' ],
		[ q{SELECT count(*) FROM payments p
WHERE NOT EXISTS (SELECT FROM expected e WHERE e.scope = p.scope AND e.key = p.key)},
			'0', 'no business row without its completed key' ]);
	for my $ix (@dba)
	{
		my ($name, $cond) = @$ix;
		my $count = "SELECT count(*) FROM $keys WHERE $cond";
		push @checks,
		  [ "$no_index $count;", 'rows', "rows with $cond exist" ],
		  # statistics of the new index's expression, so that the planner
		  # does not prefer a whole scan of another index to it
		  [ "RESET ALL; ANALYZE $keys; SET enable_seqscan = off; SET enable_bitmapscan = off;"
			  . " SELECT plan_of(\$q\$$count\$q\$) ~ 'Index (Only )?Scan using $name ';",
			'plan', "the count of $cond scans $name" ],
		  [ "$count; RESET ALL;", 'same', "the DBA's $name holds every row ($cond)" ];
	}
	my @got = split /\n/, query($db, join "\n", map { $_->[0] =~ s/;?\s*$/;/r } @checks) // '', -1;
	my ($seq, $via_index);
	for my $i (0 .. $#checks)
	{
		my (undef, $want, $name) = @{ $checks[$i] };
		my $got = $got[$i] // '(no output)';
		if ($want eq 'rows') { $seq = $got; cmp_ok($got, '>', 0, $name); }
		# which path the planner takes for a count of every row depends on
		# the statistics ANALYZE sampled; amcheck above is what proves the
		# index holds every row, this count only says it again when it is
		# taken through the index
		elsif ($want eq 'plan')
		{
			$via_index = $got eq 't';
			note "$name: the planner took another path" unless $via_index;
		}
		elsif ($want eq 'same')
		{
			if ($via_index) { is($got, $seq, $name); }
			else { is($amcheck{$name =~ /DBA's (\S+)/ ? $1 : ''}, 'ok', "$name (amcheck)"); }
		}
		else { is($got, $want, $name); }
	}

	# the retries, in a transaction that is rolled back
	my $retries = query($db, q{
BEGIN;
CREATE TEMP TABLE paid_before AS SELECT count(*) AS n FROM payments;
SELECT count(*) || coalesce(': ' || string_agg(format('%s %s/%s got %s, not %s', kind, scope, key, got, expect), '; ')
                                      FILTER (WHERE n <= 5), '')
FROM (SELECT e.kind, e.scope, e.key, e.expect, r.got, row_number() OVER (ORDER BY e.id) AS n
      FROM expected e, LATERAL (SELECT request(e.kind, e.scope, e.key) AS got) r
      WHERE r.got IS DISTINCT FROM e.expect) x;
SELECT (SELECT count(*) FROM payments) - n FROM paid_before;
ROLLBACK;});
	is($retries, "0\n0",
		'a retry of every key gives its answer (replay, dead, erased) and runs no work again');
	return;
}

# One operation under load, as a subtest: the writers start, $code runs the
# operation once they all have completed keys, and they go on until keys
# have completed after it and the sweeper has made a pass after it (and
# %opt{until}, SQL, prints t); then the checks.  %opt: db, dba (for
# check_keys), after (code run after the checks).
sub under_load
{
	my ($name, $code, %opt) = @_;
	my $db = $opt{db} // 'postgres';
	subtest $name => sub {
		my $start = time;
		reset_tables($db);
		my $swept = $node->safe_psql($db, $SWEPT);
		(my $op = $name) =~ s/\W+/_/g;
		my $w = start_load($db, substr($op, 0, 40));
		ok(poll($node, $db, 'SELECT count(DISTINCT client) FROM expected', $clients),
			'every writer has completed keys');
		my $before = $node->safe_psql($db, 'SELECT coalesce(max(id), 0) FROM expected');
		my $op_start = time;
		$code->($db);
		my $op_secs = time - $op_start;
		my ($mark, $op_end, $swept_now) = split /\|/, $node->safe_psql($db,
			'SELECT coalesce(max(id), 0), now(), idem_sweep() >= 0 FROM expected');
		is($swept_now, 't', 'idem_sweep() under load');
		# (or until a writer is gone: stop_load says why)
		my $after = qq{(SELECT count(*) >= 20 * $clients FROM expected WHERE id > $mark)
   AND (SELECT coalesce(max(last_start) > '$op_end', false) FROM idem_sweeper_status
        WHERE datname = current_database())
   AND ($SWEPT) > $swept
   AND (} . ($opt{until} // 'true') . ')';
		poll($node, $db, qq{
SELECT ($after) OR (SELECT count(*) < $clients FROM pg_stat_activity
                    WHERE application_name = 'idem_load' AND datname = current_database())}, 't');
		query_is($db, "SELECT $after", 't',
			'keys completed after the operation, and the sweeper swept');
		stop_load($db, $w);
		note sprintf('%s: %.1f s, %s keys completed from just before it to just after it, %s in all',
			$name, $op_secs, split /\|/, $node->safe_psql($db, qq{
SELECT count(*) FILTER (WHERE id > $before AND id <= $mark), count(*) FROM expected}));
		check_keys($db, @{ $opt{dba} // [] });
		$opt{after}->($db) if $opt{after};
		note sprintf('%s: %.1f s in all', $name, time - $start);
	};
	return;
}

# An operation that must succeed.
sub run_ok
{
	my ($db, $sql) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($ret, $out, $err) = $node->psql($db, $sql);
	ok($ret == 0, $sql) or diag $err;
	return;
}

for my $index (@extension_indexes)
{
	under_load("REINDEX INDEX $index", sub { run_ok($_[0], "REINDEX INDEX $schema.$index") });
}
# Three times over: each ends by dropping the old index while calls that
# looked it up a moment before may be opening it.
for my $index (@extension_indexes)
{
	under_load("REINDEX INDEX CONCURRENTLY $index",
		sub { run_ok($_[0], "REINDEX INDEX CONCURRENTLY $schema.$index") for 1 .. 3 });
}
under_load('REINDEX TABLE CONCURRENTLY',
	sub { run_ok($_[0], "REINDEX TABLE CONCURRENTLY $keys") for 1 .. 3 });

# A DBA's indexes: plain, partial (the bytea requests answer 502) and on an
# expression, each with a condition that only it answers.
my @dba = (
	[ 'dba_created', q{created_at > '-infinity'} ],
	[ 'dba_server_errors', q{response_code >= 500 AND expires_at > '-infinity'} ],
	[ 'dba_lower_key', q{lower(key) > ''} ]);
my %dba_def = (
	dba_created => '(created_at)',
	dba_server_errors => '(expires_at) WHERE response_code >= 500',
	dba_lower_key => '((lower(key)))');
for my $how ('', 'CONCURRENTLY ')
{
	under_load(
		"CREATE INDEX ${how}plain, partial, expression",
		sub {
			my ($db) = @_;
			run_ok($db, "CREATE INDEX $how$_->[0] ON $keys $dba_def{$_->[0]}") for @dba;
		},
		dba => \@dba);
}

SKIP:
{
	skip $no_repack, 2 if $no_repack;
	for my $args ([ '-t', $keys ], [ '--only-indexes', '-t', $keys ])
	{
		my @cmd = ($repack, '-h', $node->host, '-p', $node->port, '-d', 'postgres', @$args);
		under_load(
			"pg_repack @$args",
			sub {
				my ($out, $err) = ('', '');
				my $ok = IPC::Run::run(\@cmd, '<', '/dev/null', '>', \$out, '2>', \$err,
					IPC::Run::timeout(120));
				ok($ok, "pg_repack @$args") or diag "$out\n$err";
			});
	}
}

under_load('VACUUM FULL', sub { run_ok($_[0], "VACUUM FULL $keys") });
under_load('CLUSTER', sub { run_ok($_[0], "CLUSTER $keys USING idem_keys_pkey") });

# The audit trigger, created under load, with the key table given to a role
# that is not a superuser: the sweeper fires a table's triggers as its
# owner, and as a superuser never.  In the same transaction, once CREATE
# TRIGGER holds its lock (no write can be under way), the table's rows and
# the count of keys swept are taken as they stand: the audit log applied to
# those rows must give the table's rows at the end.
my $owner = $node->safe_psql('postgres', "SELECT relowner::regrole FROM pg_class WHERE oid = '$keys'::regclass");
$node->safe_psql('postgres', q{
CREATE ROLE regress_idem_owner;
GRANT INSERT ON public.audit TO regress_idem_owner;
GRANT USAGE ON SEQUENCE public.audit_id_seq TO regress_idem_owner;});
under_load(
	'a DBA\'s AFTER ROW audit trigger',
	sub {
		run_ok(
			$_[0], qq{
BEGIN;
ALTER TABLE $keys OWNER TO regress_idem_owner;
CREATE TRIGGER dba_audit AFTER INSERT OR UPDATE OR DELETE ON $keys
    FOR EACH ROW EXECUTE FUNCTION public.audit_row();
CREATE TABLE audit_base AS SELECT scope, key, state, expires_at, response_code AS code FROM $keys;
CREATE TABLE audit_swept AS $SWEPT AS n;
COMMIT;});
	},
	until => q{EXISTS (SELECT FROM audit WHERE op = 'DELETE' AND by = 'regress_idem_owner')},
	after => sub {
		my ($db) = @_;
		is( query($db, qq{
WITH last AS (
    SELECT DISTINCT ON (scope, key) scope, key, op, state, expires_at, code
    FROM audit ORDER BY scope, key, id DESC),
replayed AS (
    SELECT scope, key, state, expires_at, code FROM last WHERE op <> 'DELETE'
    UNION ALL
    SELECT * FROM audit_base b
    WHERE NOT EXISTS (SELECT FROM last l WHERE l.scope = b.scope AND l.key = b.key)),
actual AS (SELECT scope, key, state, expires_at, response_code FROM $keys)
SELECT (SELECT count(*) FROM (SELECT * FROM replayed EXCEPT ALL SELECT * FROM actual) x) || ' '
    || (SELECT count(*) FROM (SELECT * FROM actual EXCEPT ALL SELECT * FROM replayed) y)}),
			'0 0',
			'the audit log replayed on the rows at CREATE TRIGGER gives the table\'s rows');
		is( query($db, q{
SELECT count(*) FROM expected e
WHERE NOT EXISTS (SELECT FROM audit_base b WHERE b.scope = e.scope AND b.key = e.key)
  AND NOT EXISTS (SELECT FROM audit a WHERE a.op = 'INSERT' AND a.scope = e.scope AND a.key = e.key)}),
			'0', 'every key written since has an INSERT audit row');
		is( query($db, q{
SELECT count(*) FROM expected e
WHERE e.kind IN ('lease', 'takeover', 'keep', 'erase')
  AND NOT EXISTS (SELECT FROM audit_base b WHERE b.scope = e.scope AND b.key = e.key)
  AND NOT EXISTS (SELECT FROM audit a WHERE a.op = 'UPDATE' AND a.scope = e.scope AND a.key = e.key)}),
			'0', 'every checkpointed, taken over, kept or erased key has an UPDATE audit row');
		is( query($db, q{
SELECT count(*) FROM expected e
WHERE e.kind IN ('release', 'dead_discard')
  AND NOT EXISTS (SELECT FROM audit_base b WHERE b.scope = e.scope AND b.key = e.key)
  -- the leased or dead record that goes was written after the trigger came
  -- (one written and deleted before it left nothing to audit)
  AND EXISTS (SELECT FROM audit a WHERE a.op = 'INSERT' AND a.state IN ('p', 'd')
                AND a.scope = e.scope AND a.key = e.key)
  AND NOT EXISTS (SELECT FROM audit a WHERE a.op = 'DELETE' AND a.scope = e.scope AND a.key = e.key)}),
			'0', 'every released or discarded key has a DELETE audit row');
		is( query($db, qq{
SELECT (SELECT count(*) FROM audit WHERE op = 'DELETE') >= ($SWEPT) - (SELECT n FROM audit_swept)}),
			't', 'every key the sweeper and idem_sweep() deleted has a DELETE audit row');
		is( query($db, q{SELECT count(*) > 0 FROM audit WHERE op = 'DELETE' AND by = 'regress_idem_owner'}),
			't', 'the sweeper\'s deletes fired the trigger, as the table\'s owner');
		$node->safe_psql($db,
			"DROP TRIGGER dba_audit ON $keys; DROP TABLE audit_base, audit_swept;"
			  . " ALTER TABLE $keys OWNER TO $owner");
	});

# Triggers and rules a write cannot honour: every kind of write is refused
# with 55000 and writes nothing; once they are gone, writes work again.
subtest 'a BEFORE ROW trigger refuses every write, and nothing is written' => sub {
	my $db = 'postgres';
	reset_tables($db);
	my ($token) = reverse split /\n/, $node->safe_psql(
		$db, q{
BEGIN; SELECT FROM idem_begin('pre-done', '{"a": 1}'::jsonb); SELECT idem_finish('pre-done', 201, '{"ok": 1}'); COMMIT;
BEGIN; SELECT FROM idem_begin('pre-dead', '{"d": 1}'::jsonb); ROLLBACK;
SELECT FROM idem_fail('pre-dead', 'declined', max_attempts => 1);
SELECT token FROM idem_lease('pre-lease', '{"l": 1}', lease => '10 minutes');});
	# the expired key and the trigger commit together: no sweep gets it first
	$node->safe_psql(
		$db, qq{
BEGIN;
SELECT idem_once('pre-old', ttl => '1 microsecond');
CREATE TRIGGER dba_before BEFORE INSERT OR UPDATE OR DELETE ON $keys
    FOR EACH ROW EXECUTE FUNCTION public.refuse_row();
COMMIT;});
	my $state = qq{SELECT count(*) || ' ' || md5(coalesce(string_agg(k::text, ',' ORDER BY scope, key), ''))
                   || ' ' || (SELECT count(*) FROM payments) FROM $keys k};
	my $before = $node->safe_psql($db, $state);
	my @writes = (
		[ 'idem_begin and idem_finish',
			q{BEGIN; SELECT status FROM idem_begin('new-1', '{"n": 1}'::jsonb); SELECT idem_finish('new-1', 201); COMMIT;} ],
		[ 'idem_call', q{SELECT status FROM idem_call('new-2', req('call', '', 'new-2'), 'pay(jsonb)')} ],
		[ 'idem_once', q{SELECT idem_once('new-3')} ],
		[ 'idem_once_batch', q{SELECT idem_once_batch(ARRAY['new-4', 'new-5'])} ],
		[ 'idem_lease', q{SELECT status FROM idem_lease('new-6')} ],
		[ 'idem_fail', q{SELECT idem_fail('new-7', 'timeout')} ],
		[ 'idem_checkpoint', qq{SELECT idem_checkpoint('pre-lease', '$token', 'charged')} ],
		[ 'idem_finish of a lease', qq{SELECT idem_finish('pre-lease', 201, token => '$token')} ],
		[ 'idem_release of a lease', qq{SELECT idem_release('pre-lease', token => '$token')} ],
		[ 'idem_keep', q{SELECT idem_keep('pre-done')} ],
		[ 'idem_erase', q{SELECT idem_erase('pre-done')} ],
		[ 'idem_retry', q{SELECT idem_retry('pre-dead')} ],
		[ 'idem_discard', q{SELECT idem_discard('pre-dead')} ],
		[ 'idem_begin of an expired key',
			q{BEGIN; SELECT status FROM idem_begin('pre-old'); SELECT idem_finish('pre-old', 200); COMMIT;} ],
		[ 'idem_sweep', q{SELECT idem_sweep()} ]);
	for my $w (@writes)
	{
		my ($what, $sql) = @$w;
		my ($ret, $out, $err) = $node->psql($db, "\\set VERBOSITY verbose\n$sql");
		like($err, qr/ERROR:  55000: .*dba_before/, "$what: refused with 55000, naming the trigger");
	}
	is($node->safe_psql($db, $state), $before, 'nothing was written, no work done');

	$node->safe_psql($db, "DROP TRIGGER dba_before ON $keys");
	my @again = (
		[ q{BEGIN; SELECT status FROM idem_begin('new-1', '{"n": 1}'::jsonb); SELECT count(*) FROM idem_finish('new-1', 201); COMMIT;},
			"started\n1" ],
		[ q{SELECT status FROM idem_call('new-2', req('call', '', 'new-2'), 'pay(jsonb)')}, 'done' ],
		[ q{SELECT idem_once('new-3')}, 't' ],
		[ q{SELECT idem_once_batch(ARRAY['new-4', 'new-5'])}, '{new-4,new-5}' ],
		[ q{SELECT status FROM idem_lease('new-6')}, 'started' ],
		[ q{SELECT idem_fail('new-7', 'timeout')}, 'failed' ],
		[ qq{SELECT idem_checkpoint('pre-lease', '$token', 'charged') > now()}, 't' ],
		[ qq{SELECT idem_finish('pre-lease', 201, token => '$token')}, '' ],
		[ q{SELECT idem_keep('pre-done')}, 'completed' ],
		[ q{SELECT idem_erase('pre-done')}, 't' ],
		[ q{SELECT idem_retry('pre-dead')}, 'failed' ],
		[ q{SELECT idem_discard('pre-dead')}, 't' ]);
	for my $w (@again)
	{
		my ($sql, $want) = @$w;
		query_is($db, $sql, $want, "without the trigger: $sql");
	}
	ok(poll($node, $db, "SELECT idem_sweep() >= 0 AND NOT EXISTS (SELECT FROM $keys WHERE key = 'pre-old')", 't'),
		'without the trigger the expired key is swept');

	# the others: a statement-level trigger, a column list, a transition
	# table, a rule
	my @refusing = (
		[ 'a statement-level trigger',
			"CREATE TRIGGER dba_refusing AFTER INSERT ON $keys FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_row()",
			q{SELECT idem_once('stmt-1')} ],
		[ 'an UPDATE OF trigger',
			"CREATE TRIGGER dba_refusing AFTER UPDATE OF state, expires_at ON $keys FOR EACH ROW EXECUTE FUNCTION public.refuse_row()",
			q{SELECT idem_keep('new-3')} ],
		[ 'a trigger with a transition table',
			"CREATE TRIGGER dba_refusing AFTER INSERT ON $keys REFERENCING NEW TABLE AS fresh FOR EACH ROW EXECUTE FUNCTION public.refuse_row()",
			q{SELECT idem_once('transition-1')} ],
		[ 'a rule',
			"CREATE RULE dba_refusing AS ON INSERT TO $keys DO ALSO NOTIFY idem_keys_written",
			q{SELECT idem_once('rule-1')} ]);
	for my $r (@refusing)
	{
		my ($what, $create, $sql) = @$r;
		$node->safe_psql($db, $create);
		my $at = $node->safe_psql($db, $state);
		my ($ret, $out, $err) = $node->psql($db, "\\set VERBOSITY verbose\n$sql");
		like($err, qr/ERROR:  55000: /, "$what: $sql refused with 55000");
		is($node->safe_psql($db, $state), $at, "$what: nothing written");
		$node->safe_psql($db,
			$what eq 'a rule' ? "DROP RULE dba_refusing ON $keys" : "DROP TRIGGER dba_refusing ON $keys");
		query_is($db, $sql, $sql =~ /idem_keep/ ? 'completed' : 't', "$what dropped: $sql works");
	}
};

# ALTER EXTENSION UPDATE under a load that uses only what 0.5.0 has.
my $default = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'idempotency'});
$node->safe_psql('postgres', 'CREATE DATABASE upd');
$node->safe_psql('upd', "CREATE EXTENSION idempotency VERSION '0.5.0';\n$CHECKS\n$APP");
under_load(
	"ALTER EXTENSION idempotency UPDATE from 0.5.0 to $default",
	sub {
		my ($db) = @_;
		run_ok($db, 'ALTER EXTENSION idempotency UPDATE');
		query_is($db, q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'},
			$default, "the extension is at $default");
	},
	db => 'upd');

$node->stop;
note sprintf('%.1f s', time - $t0);
done_testing();
