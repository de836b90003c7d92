#!/usr/bin/env bash
# Test of the monitoring example; run by examples/run-tests.sh with
# PGHOST/PGPORT/PGUSER (a superuser)/PGDATABASE (a fresh database with the
# extension) set.  Makes a known set of calls, then runs every query of
# queries.yaml with psql as a role that is only a member of pg_monitor (set up
# as README.md says), and fails if a query fails, if its columns and its
# metrics list differ, if a value would not be a number for the exporter, or
# if the figures are not those of the calls made.  Also checks that
# alerts.yaml uses only metrics that queries.yaml exports.
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
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
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
    -c "SELECT pg_sleep(0.1)" >"$tmp/calls"
check "calls returned started, replay, mismatch, started, in_progress, started" \
    test "$(grep . "$tmp/calls" | tr '\n' ' ')" = "started replay mismatch started in_progress started "
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

# 4. every query as the monitoring role; what the exporter would export
if ROLE=$role /usr/bin/python3 -B - queries.yaml alerts.yaml "$tmp/metrics" <<'EOF'
import csv, io, json, os, re, subprocess, sys

def scalar(s):
    s = s.strip()
    if s.startswith('"'):
        return json.loads(s)        # the files use JSON-compatible escapes only
    if s.startswith("'"):
        return s[1:-1].replace("''", "'")
    s = re.sub(r'\s+#.*$', '', s)
    if s in ('true', 'True'):
        return True
    if s in ('false', 'False'):
        return False
    if s in ('', '~', 'null'):
        return None
    if re.fullmatch(r'[-+]?\d+', s):
        return int(s)
    return s

class MiniYaml:
    """The YAML that queries.yaml and alerts.yaml use: block mappings and
    sequences, plain and quoted scalars, |, |-, > and >- block scalars,
    full-line comments."""
    def __init__(self, text):
        self.lines = text.split('\n')
        self.i = 0
        self.over = None            # (indent, text) standing in for line i

    def peek(self):
        if self.over:
            return self.over
        while self.i < len(self.lines):
            line = self.lines[self.i]
            t = line.strip()
            if t and not t.startswith('#'):
                return (len(line) - len(line.lstrip(' ')), t)
            self.i += 1
        return None

    def advance(self):
        self.over = None
        self.i += 1

    def fail(self, what):
        raise ValueError('line %d: %s' % (self.i + 1, what))

    def parse(self):
        doc = self.node(0)
        if self.peek() is not None:
            self.fail('unexpected %r' % (self.peek()[1],))
        return doc

    def node(self, indent):
        p = self.peek()
        if p is None or p[0] < indent:
            return None
        if p[1] == '-' or p[1].startswith('- '):
            return self.seq(p[0])
        return self.map(p[0])

    @staticmethod
    def split_key(t):
        idx = t.find(': ')
        if idx < 0 and t.endswith(':'):
            idx = len(t) - 1
        if idx <= 0 or t[0] in '"\'{[|>&*!%@`':
            return None
        return t[:idx], t[idx + 1:].strip()

    def seq(self, indent):
        out = []
        while True:
            p = self.peek()
            if p is None or p[0] != indent or not (p[1] == '-' or p[1].startswith('- ')):
                return out
            rest = p[1][1:].lstrip()
            if not rest:
                self.advance()
                out.append(self.node(indent + 1))
            elif self.split_key(rest):
                self.over = (indent + len(p[1]) - len(rest), rest)
                out.append(self.map(self.over[0]))
            else:
                self.advance()
                out.append(scalar(rest))

    def map(self, indent):
        out = {}
        while True:
            p = self.peek()
            if p is None or p[0] != indent or p[1].startswith('- '):
                if p is not None and p[0] > indent:
                    self.fail('bad indentation')
                return out
            kv = self.split_key(p[1])
            if kv is None:
                self.fail('expected "key: value", got %r' % (p[1],))
            key, rest = kv
            if key in out:
                self.fail('duplicate key %r' % (key,))
            self.advance()
            if rest.startswith('#'):
                rest = ''
            if rest[:1] in ('|', '>'):
                out[key] = self.block(indent, rest)
            elif rest:
                out[key] = scalar(rest)
            else:
                n = self.peek()
                if n is not None and (n[0] > indent or (n[0] == indent and n[1].startswith('- '))):
                    out[key] = self.node(n[0])
                else:
                    out[key] = None
        return out

    def block(self, indent, header):
        if header not in ('|', '|-', '>', '>-'):
            self.fail('unsupported block scalar header %r' % (header,))
        lines, bi = [], None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() == '':
                lines.append('')
                self.i += 1
                continue
            li = len(line) - len(line.lstrip(' '))
            if bi is None:
                if li <= indent:
                    break
                bi = li
            if li < bi:
                break
            lines.append(line[bi:])
            self.i += 1
        while lines and lines[-1] == '':
            lines.pop()
        if header[0] == '|':
            text = '\n'.join(lines)
        else:
            text, sep = '', ''
            for line in lines:
                if line == '':
                    text += '\n'
                    sep = ''
                else:
                    text += sep + line
                    sep = ' '
        return text if header.endswith('-') or not text else text + '\n'

def load(path):
    text = open(path, encoding='utf-8').read()
    mini = MiniYaml(text).parse()
    try:
        import yaml
    except ImportError:
        print('# %s: PyYAML absent, parsed with the minimal parser' % path)
        return mini
    doc = yaml.safe_load(text)
    if doc != mini:
        print('FAILED - %s: the minimal parser disagrees with PyYAML' % path)
        sys.exit(1)
    print('ok - %s parses (PyYAML, and the minimal parser agrees)' % path)
    return doc

queries_path, alerts_path, metrics_path = sys.argv[1:4]
role = os.environ['ROLE']
failures = []
def check(problems, what):
    if problems:
        print('FAILED - %s: %s' % (what, '; '.join(problems)))
        failures.append(what)
    else:
        print('ok - ' + what)

queries = load(queries_path)
exported = set()
out = []
for ns, spec in queries.items():
    problems = []
    if not (isinstance(spec, dict) and isinstance(spec.get('query'), str)
            and isinstance(spec.get('metrics'), list)
            and set(spec) <= {'query', 'master', 'metrics', 'cache_seconds'}):
        check(['needs query and metrics, and nothing the exporter does not know'], ns)
        continue
    usage, order = {}, []
    for m in spec['metrics']:
        (col, d), = m.items()
        usage[col] = d.get('usage')
        order.append(col)
        if d.get('usage') not in ('LABEL', 'COUNTER', 'GAUGE') or not d.get('description'):
            problems.append('%s: needs usage LABEL, COUNTER or GAUGE and a description' % col)
    if len(order) != len(set(order)):
        problems.append('a column is listed twice')
    r = subprocess.run(['psql', '-X', '-q', '--csv', '-v', 'ON_ERROR_STOP=1', '-U', role,
                        '-c', spec['query']],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        check(problems + ['the query fails: ' + r.stderr.strip()], ns)
        continue
    rows = list(csv.reader(io.StringIO(r.stdout)))
    header, data = rows[0], rows[1:]
    extra = [c for c in header if c not in usage]
    missing = [c for c in order if c not in header]
    if extra:
        problems.append('returns columns the metrics list lacks: ' + ', '.join(extra))
    if missing:
        problems.append('the metrics list names columns it does not return: ' + ', '.join(missing))
    if len(header) != len(set(header)):
        problems.append('returns a column twice')
    labels = [c for c in header if usage.get(c) == 'LABEL']
    values = [c for c in header if c in usage and usage[c] != 'LABEL']
    exported.update('%s_%s' % (ns, c) for c in values)
    for row in data:
        v = dict(zip(header, row))
        lab = ','.join('%s="%s"' % (c, v[c]) for c in labels)
        problems += ['label %s is NULL' % c for c in labels if v[c] == '']
        for c in values:
            try:
                float(v[c])
            except ValueError:
                problems.append('%s = %r is no number' % (c, v[c]))
            out.append('%s_%s{%s} %s' % (ns, c, lab, v[c]))
    check(problems, '%s: runs as %s, %d row(s), columns = metrics list (%s)'
          % (ns, role, len(data), ', '.join(header)))
with open(metrics_path, 'w') as f:
    f.write('\n'.join(out) + '\n')

alerts = load(alerts_path)
names = []
for group in alerts.get('groups') or []:
    for rule in group.get('rules') or []:
        name = rule.get('alert')
        names.append(name)
        ann = rule.get('annotations') or {}
        problems = []
        if not (name and isinstance(rule.get('expr'), str)):
            problems.append('needs alert and expr')
        if (rule.get('labels') or {}).get('severity') not in ('info', 'warning', 'critical'):
            problems.append('needs labels.severity')
        if not (ann.get('summary') and ann.get('description')):
            problems.append('needs annotations.summary and .description')
        if not re.fullmatch(r'(\d+[smhd])?', str(rule.get('for') or '')):
            problems.append('bad for: %r' % (rule.get('for'),))
        used = set(re.findall(r'\bidem_[a-z_]+', rule.get('expr') or ''))
        unknown = sorted(used - exported)
        if not used or unknown:
            problems.append('uses metrics queries.yaml does not export: %s' % (', '.join(unknown) or 'none at all'))
        check(problems, 'alert %s (%s)' % (name, ', '.join(sorted(used))))
check([] if len(names) == len(set(names)) else ['duplicates'], 'alert names are unique')
sys.exit(1 if failures else 0)
EOF
then
    check "queries.yaml and alerts.yaml" true
else
    check "queries.yaml and alerts.yaml" false
fi
echo "--- what postgres_exporter would export:"
cat "$tmp/metrics"
echo "---"

# 5. the figures are those of the calls above
db=$(sql -c "SELECT current_database()")
value() { awk -v m="$1{datname=\"$db\"}" '$1 == m { print $2 }' "$tmp/metrics"; }
expect() {  # expect METRIC VALUE
    check "$1 = $2" test "$(value "$1")" = "$2"
}
expect idem_stats_started 3
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
check "idem_storage_table_bytes > 0" test "$(value idem_storage_table_bytes)" -gt 0
if [ "$sweeper_rows" = 1 ]; then
    expect idem_sweeper_status_last_error 0
    check "idem_sweeper_status_last_start_age_seconds is recent" \
        awk -v v="$(value idem_sweeper_status_last_start_age_seconds)" 'BEGIN { exit !(v >= 0 && v < 120) }'
else
    echo "# no sweeper pass over this database yet: idem_sweeper_status checked for its columns only"
fi
# this database's rows only, whatever the other databases of the cluster did
check "one idem_stats row, and no other database's rows" \
    test "$(grep -c '^idem_stats_started{' "$tmp/metrics")" -eq 1 -a \
         "$(grep -vc "{datname=\"$db\"}" "$tmp/metrics")" -eq 0

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
