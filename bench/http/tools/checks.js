// node tools/checks.js <variant> <base url> <tag> [keys=200] [copies=8] [inflight=16]
// Correctness checks of one variant's server; prints one JSON line.
//
// Contention: <keys> keys, <copies> identical requests per key sent at once
// (all copies of a key in the same tick, on their own sockets), <inflight> keys
// at a time.  Then, from PostgreSQL, the payments per key (exactly one is
// expected of an idempotent variant) and the HTTP statuses returned.
// Then, one key at a time: a retry of a completed request gets the same status
// and body; a retry of a business error (amount 0, 422) too, with no payment;
// the same key with another body is refused; the same body with its fields in
// another order and other white space (what is it?); no key (400).
import pg from 'pg';
import { BODY, inParallel, makeClient } from './client.js';

const [variant, base, tag, keysText = '200', copiesText = '8', inflightText = '16'] = process.argv.slice(2);
const KEYS = Number(keysText);
const COPIES = Number(copiesText);
const INFLIGHT = Number(inflightText);
const prefix = `c-${variant}-${tag}-`;
const client = makeClient(base, { sockets: COPIES * INFLIGHT });
const db = new pg.Client({ application_name: 'bench-http-checks' });
await db.connect();

const statuses = {};
const hist = (h, s) => { h[s] = (h[s] ?? 0) + 1; };
let diverging = 0; // keys whose 201 answers were not all the same body
const t0 = Date.now();
await inParallel(KEYS, INFLIGHT, async (i) => {
  const key = `${prefix}${i + 1}`;
  const answers = await Promise.all(Array.from({ length: COPIES }, () => client.post(key, BODY)));
  const created = new Set();
  for (const a of answers) {
    hist(statuses, a.status);
    if (a.status === 201) created.add(a.text);
  }
  if (created.size > 1) diverging++;
});
const contentionMs = Date.now() - t0;

async function payments(keyPrefix) {
  const { rows } = await db.query(
    'SELECT idem_key, count(*)::int AS n FROM payments WHERE starts_with(idem_key, $1) GROUP BY idem_key',
    [keyPrefix],
  );
  return rows;
}
const rows = await payments(prefix);
const once = rows.filter((r) => r.n === 1).length;
const max = rows.reduce((m, r) => Math.max(m, r.n), 0);
const twice = rows.filter((r) => r.n > 1).length;

// One key at a time.
const k = `x-${variant}-${tag}-`;
const first = await client.post(`${k}ok`, BODY);
const again = await client.post(`${k}ok`, BODY);
const negFirst = await client.post(`${k}neg`, { amount: 0, to: 'acct_42' });
const negAgain = await client.post(`${k}neg`, { amount: 0, to: 'acct_42' });
const other = await client.post(`${k}ok`, { amount: 501, to: 'acct_42' });
const reordered = await client.post(`${k}ok`, '{ "to" : "acct_42", "amount" : 500 }');
const noKey = await client.post(undefined, BODY);
const single = Object.fromEntries((await payments(k)).map((r) => [r.idem_key.slice(k.length), r.n]));
client.close();
await db.end();

const result = {
  variant,
  keys: KEYS,
  copies: COPIES,
  contention_ms: contentionMs,
  keys_once: once,
  keys_unpaid: KEYS - rows.length,
  keys_paid_more: twice,
  max_payments: max,
  statuses,
  keys_diverging_201: diverging,
  first: `${first.status} ${first.text}`,
  replay_same: again.status === first.status && again.text === first.text,
  replay: `${again.status} ${again.text}`,
  business_first: negFirst.status,
  business_replay_same: negAgain.status === negFirst.status && negAgain.text === negFirst.text,
  business_payments: single.neg ?? 0,
  mismatch_status: other.status,
  reordered_status: reordered.status,
  payments_after_retries: single.ok ?? 0, // the first, its retry, the other body, the reordered body
  missing_key_status: noKey.status,
};
console.log(JSON.stringify(result));
