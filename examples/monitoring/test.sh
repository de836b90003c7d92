#!/usr/bin/env bash
# Test of the monitoring example; run by examples/run-tests.sh with
# PGHOST/PGPORT/PGUSER (a superuser)/PGDATABASE (a fresh database with the
# extension) set.  Makes a known set of calls, then runs the real
# postgres_exporter (Debian's prometheus-postgres-exporter) with queries.yaml
# as a role that is only a member of pg_monitor (set up as README.md says),
# scrapes it once, and fails if the exporter reports an error, if a query's
# columns and its metrics list differ, if a metric is missing or has the
# wrong type, or if the figures are not those of the calls made.  Checks
# alerts.yaml with promtool: valid rules, on exported metrics only, and the
# unit tests of alerts_test.yaml (each alert fires when it should and not
# before).
#
# To get a sweeper pass over the new database without waiting for the next
# one, it sets idempotency.sweep_interval to 1s with ALTER SYSTEM for a few
# seconds, unless the cluster already sets it there.
set -euo pipefail
cd "$(dirname "$0")"
export PGOPTIONS='-c client_min_messages=warning'
role=idem_monitor_test
tmp=$(mktemp -d)
sped_up=false
exporter_pid=
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
    [ -z "$exporter_pid" ] || kill "$exporter_pid" 2>/dev/null || true
    if $sped_up; then
        sql -c "ALTER SYSTEM RESET idempotency.sweep_interval" -c "SELECT pg_reload_conf()" >/dev/null || true
    fi
    sql -c "DROP ROLE IF EXISTS $role" || true
    rm -rf "$tmp"
}
trap cleanup EXIT

passed=0 failed=0
check() {  # check NAME COMMAND...
    if "${@:2}"; then passed=$((passed + 1)); echo "ok - $1"
    else failed=$((failed + 1)); echo "FAILED - $1"; fi
}

# 1. the monitoring role, as README.md sets it up
schema=$(sql -c "SELECT quote_ident(n.nspname) FROM pg_extension e
                 JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'idempotency'")
sql -c "DROP ROLE IF EXISTS $role" \
    -c "CREATE ROLE $role LOGIN" \
    -c "GRANT pg_monitor TO $role" \
    -c "ALTER ROLE $role SET search_path = pg_catalog, $schema"
check "the role is no superuser and a member of pg_monitor only" \
    test "$(sql -c "SELECT r.rolsuper, string_agg(m.roleid::regrole::text, ',')
                    FROM pg_roles r LEFT JOIN pg_auth_members m ON m.member = r.oid
                    WHERE r.rolname = '$role' GROUP BY r.rolsuper")" = "f|pg_monitor"

# 2. known calls in this fresh database (each -c is a transaction of its own)
sql -c "BEGIN; SELECT status FROM idem_begin('m1', '{\"n\": 1}');
               SELECT idem_finish('m1', 200, '{}'); COMMIT" \
    -c "SELECT status FROM idem_begin('m1', '{\"n\": 1}')" \
    -c "SELECT status FROM idem_begin('m1', '{\"n\": 2}')" \
    -c "SELECT status FROM idem_lease('m2', lease => '1 hour')" \
    -c "SELECT status FROM idem_lease('m2')" \
    -c "SELECT status FROM idem_lease('m3', lease => '1 millisecond')" \
    -c "SELECT idem_once('m4'), idem_keep('m4')" \
    -c "SELECT idem_once('m5'), idem_erase('m5')" \
    -c "SELECT idem_fail('m7', 'bad payload', max_attempts => 1)" \
    -c "SELECT status FROM idem_begin('m5')" \
    -c "SET idempotency.track_timing = on; SELECT idem_once('m6'); SELECT idem_once('m6')" \
    -c "SELECT pg_sleep(0.1)" >"$tmp/calls"
check "calls returned started, replay, mismatch, started, in_progress, started, kept, erased, dead" \
    test "$(grep . "$tmp/calls" | tr '\n' ' ')" = "started replay mismatch started in_progress started t|completed t|t dead erased t f "
# a token that does not hold m2's lease: refused, counted in stale_tokens
if sql -c "SELECT idem_release('m2', token => gen_random_uuid())" 2>"$tmp/stale.err"; then
    check "a release with a foreign token is refused" false
else
    check "a release with a foreign token is refused" grep -q 'held by another token' "$tmp/stale.err"
fi

# 3. a sweeper pass over this database, for a row in idem_sweeper_status
row() { sql -c "SELECT count(*) FROM idem_sweeper_status WHERE datname = current_database()"; }
if [ "$(row)" = 0 ] && [ "$(sql -c "SELECT count(*) FROM pg_file_settings
        WHERE name = 'idempotency.sweep_interval' AND sourcefile LIKE '%postgresql.auto.conf'")" = 0 ]; then
    echo "# idempotency.sweep_interval = 1s for a moment, for a sweeper pass over this database"
    sped_up=true
    sql -c "ALTER SYSTEM SET idempotency.sweep_interval = '1s'" -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 1 40); do [ "$(row)" = 0 ] || break; sleep 0.5; done
    sql -c "ALTER SYSTEM RESET idempotency.sweep_interval" -c "SELECT pg_reload_conf()" >/dev/null
    sped_up=false
fi
sweeper_rows=$(row)

# 4. postgres_exporter (Debian's prometheus-postgres-exporter) with
# queries.yaml, connected as the monitoring role; one scrape of its /metrics.
# Only this example's queries: its built-in collectors are off (bookworm's
# 0.11 bgwriter collector reads columns that PostgreSQL 17 moved to
# pg_stat_checkpointer, and errs on 17 and later).
exporter=$(command -v prometheus-postgres-exporter || command -v postgres_exporter) ||
    { echo "FAILED - no postgres_exporter installed (test/setup.sh installs it)"; exit 1; }
listen=127.0.0.1:${EXPORTER_PORT:-19187}
DATA_SOURCE_NAME="host=$PGHOST port=$PGPORT user=$role dbname=$PGDATABASE sslmode=disable" \
    "$exporter" --extend.query-path=queries.yaml --web.listen-address="$listen" \
    --disable-default-metrics --disable-settings-metrics \
    --no-collector.database --no-collector.bgwriter >"$tmp/exporter.log" 2>&1 &
exporter_pid=$!
for _ in $(seq 1 100); do  # up to 10 s for it to listen
    curl -sf "http://$listen/metrics" >/dev/null 2>&1 && break
    kill -0 "$exporter_pid" 2>/dev/null || break
    sleep 0.1
done
curl -sf "http://$listen/metrics" >"$tmp/scrape" || echo "# no answer from the exporter"
kill "$exporter_pid" 2>/dev/null || true
wait "$exporter_pid" 2>/dev/null || true
exporter_pid=
exporter_ok=true
[ -s "$tmp/scrape" ] && ! grep -q 'level=error' "$tmp/exporter.log" || exporter_ok=false
check "the exporter answered and logged no error" $exporter_ok
$exporter_ok || cat "$tmp/exporter.log"

# what it exported: every column of queries.yaml's metrics lists, with the
# type the list gives, and nothing else
if /usr/bin/python3 -B - queries.yaml "$tmp/scrape" "$tmp/metrics" "$sweeper_rows" <<'EOF'
import re, sys, yaml

queries_path, scrape_path, metrics_path, sweeper_rows = sys.argv[1:5]
queries = yaml.safe_load(open(queries_path, encoding='utf-8'))
failures = []
def check(problems, what):
    print(('FAILED - %s: %s' % (what, '; '.join(problems))) if problems else 'ok - ' + what)
    if problems:
        failures.append(what)

known_keys = {'query', 'master', 'metrics', 'cache_seconds'}
types = {}      # metric name -> the type queries.yaml gives it
for ns, spec in queries.items():
    problems = []
    if set(spec) - known_keys:
        problems.append('keys the exporter does not know: %s' % sorted(set(spec) - known_keys))
    for m in spec['metrics']:
        (col, d), = m.items()
        if d.get('usage') not in ('LABEL', 'COUNTER', 'GAUGE') or not d.get('description'):
            problems.append('%s: needs usage LABEL, COUNTER or GAUGE and a description' % col)
        elif d['usage'] != 'LABEL':
            types['%s_%s' % (ns, col)] = d['usage'].lower()
    check(problems, '%s: every metric has a usage and a description' % ns)

helps, got_types, samples = {}, {}, []
for line in open(scrape_path, encoding='utf-8'):
    line = line.rstrip('\n')
    m = re.match(r'# (HELP|TYPE) (\S+) (.*)', line)
    if m:
        (helps if m.group(1) == 'HELP' else got_types)[m.group(2)] = m.group(3)
    elif line and not line.startswith('#'):
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ''))
        samples.append((m.group(1), labels, float(m.group(3))))

def values(name):
    return [v for n, _, v in samples if n == name]
def all_zero(name, what):
    v = values(name)
    check([] if v and set(v) == {0.0} else ['%s = %s' % (name, v)], what)
all_zero('pg_exporter_last_scrape_error', 'the scrape had no error')
all_zero('pg_exporter_user_queries_load_error', 'the exporter loaded queries.yaml')

exported = {n for n, _, _ in samples if n.startswith('idem_')}
unknown = sorted(n for n in exported if helps.get(n, '').startswith('Unknown metric'))
check(['returned by a query but not in its metrics list: ' + ', '.join(unknown)] if unknown else [],
      'every column the queries return is in their metrics list')
missing = sorted(set(types) - exported)
if sweeper_rows == '0':     # no pass over this database yet: no row to export
    missing = [n for n in missing if not n.startswith('idem_sweeper_status_')]
check(['not exported: ' + ', '.join(missing)] if missing else [],
      'every metric of queries.yaml is exported (%d)' % len(types))
wrong = ['%s is %s, not %s' % (n, got_types.get(n), t)
         for n, t in sorted(types.items()) if n in exported and got_types.get(n) != t]
check(wrong, 'each metric has the type queries.yaml gives it')
unlabelled = sorted({n for n, l, _ in samples if n in exported and not l.get('datname')})
check(['without a datname label: ' + ', '.join(unlabelled)] if unlabelled else [],
      'every idem_ sample has a datname label')

with open(metrics_path, 'w') as f:      # "metric datname value", one per sample
    for n, l, v in samples:
        if n in exported:
            f.write('%s %s %s\n' % (n, l.get('datname', ''), int(v) if v == int(v) else v))
sys.exit(1 if failures else 0)
EOF
then
    check "the exporter's metrics" true
else
    check "the exporter's metrics" false
fi
echo "--- what postgres_exporter exported:"
grep '^idem_' "$tmp/scrape" || true
echo "---"

# 5. the alerting rules: valid, on exported metrics only, and firing (or
# not) as alerts_test.yaml says
check "promtool check rules alerts.yaml" promtool check rules alerts.yaml
check "promtool test rules alerts_test.yaml" promtool test rules alerts_test.yaml
used=$(/usr/bin/python3 -c 'import sys, yaml
for g in yaml.safe_load(open(sys.argv[1]))["groups"]:
    for r in g["rules"]:
        print(r["expr"])' alerts.yaml | grep -o '\bidem_[a-z_]*' | sort -u)
unexported=$(comm -23 <(echo "$used") <(awk '{ print $1 }' "$tmp/metrics" | sort -u))
check "alerts.yaml uses only exported metrics${unexported:+ (not: $unexported)}" test -z "$unexported"

# 6. the figures are those of the calls above
db=$(sql -c "SELECT current_database()")
value() { awk -v m="$1" -v d="$db" '$1 == m && $2 == d { print $3 }' "$tmp/metrics"; }
expect() {  # expect METRIC VALUE
    check "$1 = $2" test "$(value "$1")" = "$2"
}
expect idem_stats_started 3  # m4..m6 are messages, counted in once_true
expect idem_stats_replay 1
expect idem_stats_mismatch 1
expect idem_stats_in_progress 1
expect idem_stats_resumed 0
expect idem_stats_finishes 1
expect idem_stats_stale_tokens 1
expect idem_storage_leased_keys 2
expect idem_storage_leases_expired 1
expect idem_storage_expired_keys 0
expect idem_storage_expired_keys_capped 0
expect idem_stats_kept 1
expect idem_stats_erased 1
expect idem_stats_erased_replies 1
expect idem_stats_timed_calls 2
expect idem_stats_key_waits 0
expect idem_storage_permanent_keys 1
expect idem_stats_failures 1
expect idem_stats_dead 1
expect idem_storage_dead_keys 1
expect idem_storage_failed_keys 0
check "idem_stats_call_seconds > 0" awk -v v="$(value idem_stats_call_seconds)" 'BEGIN { exit !(v > 0 && v < 10) }'
check "idem_storage_table_bytes > 0" test "$(value idem_storage_table_bytes)" -gt 0
if [ "$sweeper_rows" = 1 ]; then
    expect idem_sweeper_status_last_error 0
    check "idem_sweeper_status_last_start_age_seconds is recent" \
        awk -v v="$(value idem_sweeper_status_last_start_age_seconds)" 'BEGIN { exit !(v >= 0 && v < 120) }'
else
    echo "# no sweeper pass over this database yet: no idem_sweeper_status metrics to check"
fi
# this database's rows only, whatever the other databases of the cluster did
check "one idem_stats row, and no other database's rows" \
    test "$(grep -c '^idem_stats_started ' "$tmp/metrics")" -eq 1 -a \
         "$(awk -v d="$db" '$2 != d' "$tmp/metrics" | wc -l)" -eq 0

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
