// node tools/summary.js <runs.csv> <checks.jsonl> <checks.csv>
// Prints the markdown tables of a run (throughput, latency, WAL; then the
// correctness checks), writes the checks as CSV, and exits 1 if a variant that
// claims exactly-once paid twice for a key.  Node built-ins only.
import { readFileSync, writeFileSync, existsSync } from 'node:fs';

const [runsCsv, checksJsonl, checksCsv] = process.argv.slice(2);
const ORDER = ['none', 'handwritten', 'ext_classic', 'ext_call', 'express_idempotency', 'node_idempotency'];
const EXACTLY_ONCE = new Set(['handwritten', 'ext_classic', 'ext_call']);

const lines = readFileSync(runsCsv, 'utf8').trim().split('\n');
const cols = lines[0].split(',');
const runs = lines.slice(1).filter(Boolean).map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i], v])));
const checks = existsSync(checksJsonl)
  ? readFileSync(checksJsonl, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l))
  : [];

const median = (xs) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const num = (x, d = 0) => (Number.isFinite(x) ? x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }) : '-');
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? (a / b).toFixed(2) : '-');
const sel = (v, path) => runs.filter((r) => r.variant === v && r.path === path);
const col = (rs, c) => rs.map((r) => Number(r[c])).filter(Number.isFinite);

const variants = [...new Set([...runs.map((r) => r.variant), ...checks.map((c) => c.variant)])].sort(
  (a, b) => ORDER.indexOf(a) - ORDER.indexOf(b),
);
const rounds = new Set(runs.map((r) => r.round)).size;
const noneWrite = median(col(sel('none', 'write'), 'rps'));
const noneP99 = median(col(sel('none', 'write'), 'p99_ms'));

const out = [];
out.push(`### Throughput (median of ${rounds} round${rounds === 1 ? '' : 's'}; min-max in brackets)`, '');
out.push('| variant | write req/s | write / none | p99 ms | p99 / none | replay req/s | replay / none write | errors | WAL B/write | WAL B/replay |');
out.push('|---|---|---|---|---|---|---|---|---|---|');
for (const v of variants) {
  const w = sel(v, 'write');
  const r = sel(v, 'replay');
  const wr = col(w, 'rps');
  const rr = col(r, 'rps');
  const errors = [...w, ...r].reduce((s, x) => s + Number(x.status_errors) + Number(x.socket_errors), 0);
  const range = (xs) => (xs.length > 1 ? ` [${num(Math.min(...xs))}-${num(Math.max(...xs))}]` : '');
  out.push(
    `| ${v} | ${num(median(wr))}${range(wr)} | ${ratio(median(wr), noneWrite)} | ${num(median(col(w, 'p99_ms')), 2)} | ` +
      `${ratio(median(col(w, 'p99_ms')), noneP99)} | ${rr.length ? num(median(rr)) + range(rr) : '-'} | ${ratio(median(rr), noneWrite)} | ` +
      `${w.length || r.length ? errors : '-'} | ${num(median(col(w, 'wal_per_req')), 1)} | ${rr.length ? num(median(col(r, 'wal_per_req')), 1) : '-'} |`,
  );
}

// CPU per request, where the run recorded it (run.sh's cpu_snapshot)
if (runs.length && 'cpu_pg_us' in runs[0]) {
  out.push('', '### Where the CPU goes (microseconds of CPU per request, medians; the machine\'s idle share)', '');
  out.push('| variant | path | postgres | node | redis | other (wrk, kernel) | total | idle |');
  out.push('|---|---|---|---|---|---|---|---|');
  for (const v of variants) {
    for (const path of ['write', 'replay']) {
      const rs = sel(v, path);
      if (!rs.length) continue;
      const m = (c) => median(col(rs, c));
      const total = m('cpu_pg_us') + m('cpu_node_us') + m('cpu_redis_us') + m('cpu_other_us');
      out.push(`| ${v} | ${path} | ${num(m('cpu_pg_us'))} | ${num(m('cpu_node_us'))} | ${num(m('cpu_redis_us'))} | ` +
        `${num(m('cpu_other_us'))} | ${num(total)} | ${num(m('idle_pct'))}% |`);
    }
  }
}

const failures = [];
if (checks.length) {
  out.push('', '### Correctness (contention: keys x identical requests at once; then one request at a time)', '');
  out.push('| variant | exactly-once claimed | keys paid once | max payments for a key | statuses under contention | replay same status+body | 422 replayed | same key, other body | same body reordered | no key | verdict |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const v of variants) {
    const c = checks.find((x) => x.variant === v);
    if (!c) continue;
    const claimed = EXACTLY_ONCE.has(v);
    const doubled = c.max_payments > 1 || c.payments_after_retries > 1 || c.business_payments > 0;
    let verdict;
    if (v === 'none') verdict = 'no idempotency (expected to pay again)';
    else if (!doubled) verdict = 'exactly once';
    else if (claimed) verdict = '**FAIL: paid more than once**';
    else verdict = `paid more than once (${c.keys_paid_more} of ${c.keys} keys)`;
    if (claimed && doubled) failures.push(v);
    const st = Object.entries(c.statuses).map(([s, n]) => `${s}: ${n}`).join(', ');
    out.push(
      `| ${v} | ${claimed ? 'yes' : v === 'none' ? 'no' : 'library says so'} | ${c.keys_once} / ${c.keys} | ${c.max_payments} | ${st} | ` +
        `${c.replay_same ? 'yes' : 'NO'} | ${c.business_first} then ${c.business_replay_same ? 'same' : 'DIFFERENT'} | ` +
        `${c.mismatch_status} | ${c.reordered_status} | ${c.missing_key_status} | ${verdict} |`,
    );
  }
  const header = 'variant,keys,copies,keys_once,keys_unpaid,keys_paid_more,max_payments,statuses,keys_diverging_201,replay_same,business_first,business_replay_same,business_payments,mismatch_status,reordered_status,payments_after_retries,missing_key_status,contention_ms';
  const csv = [header];
  for (const c of checks) {
    const st = Object.entries(c.statuses).map(([s, n]) => `${s}:${n}`).join(' ');
    csv.push([c.variant, c.keys, c.copies, c.keys_once, c.keys_unpaid, c.keys_paid_more, c.max_payments, st, c.keys_diverging_201,
      c.replay_same, c.business_first, c.business_replay_same, c.business_payments, c.mismatch_status, c.reordered_status,
      c.payments_after_retries, c.missing_key_status, c.contention_ms].join(','));
  }
  writeFileSync(checksCsv, csv.join('\n') + '\n');
}
console.log(out.join('\n'));
if (failures.length) {
  console.log(`\nFAIL: ${failures.join(', ')} paid more than once for a key`);
  process.exit(1);
}
