// End-to-end test of the payments API against a live database (PGHOST, PGPORT,
// PGUSER, PGDATABASE; the database has CREATE EXTENSION idempotency).
//
// The service runs on 127.0.0.1 behind a proxy that throws away ~30% of the
// responses after the service answered.  150 clients (50 keys x 3 clients per
// key, all at once) retry with the same key and body until they get an
// answer.  Afterwards: one payment per key, and every client of a key got the
// same 201 and the same body, whether first-hand or replayed.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';

import { callPayment, createApp, MAX_PAYMENT, SCHEMA, withRetries } from '../src/app.js';
import { startDroppingProxy } from './dropping-proxy.js';

const KEYS = 50;
const CLIENTS_PER_KEY = 3;
const MAX_ATTEMPTS = 40;
const ATTEMPT_TIMEOUT_MS = 3000;
const DROP_RATE = 0.3;
const RUN = randomUUID().slice(0, 8); // keys of earlier runs stay in idem_keys: use fresh ones
const PG_OPTIONS = '-c statement_timeout=10s -c lock_timeout=5s';

let pool;
let server;
let direct; // the service itself
let proxy; // the lossy proxy in front of it
const serverErrors = [];

before(async () => {
  pool = new pg.Pool({ max: 10, connectionTimeoutMillis: 5000, options: PG_OPTIONS });
  await pool.query('DROP TABLE IF EXISTS payments');
  await pool.query(SCHEMA);
  server = createApp({ pool, log: { error: (msg) => serverErrors.push(msg) } });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  direct = `http://127.0.0.1:${server.address().port}`;
  proxy = await startDroppingProxy({ targetPort: server.address().port, dropRate: DROP_RATE });
});

after(async () => {
  await proxy?.close();
  server?.closeAllConnections();
  await new Promise((resolve) => (server ? server.close(resolve) : resolve()));
  await pool?.end();
  assert.deepEqual(serverErrors, [], 'the service logged no internal errors');
});

async function post(base, { key, account, body, timeoutMs = ATTEMPT_TIMEOUT_MS }) {
  const headers = { 'Content-Type': 'application/json' };
  if (key !== undefined) headers['Idempotency-Key'] = key;
  if (account !== undefined) headers['X-Account-Id'] = account;
  const res = await fetch(`${base}/payments`, {
    method: 'POST',
    headers,
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

async function get(base, key, account) {
  const res = await fetch(`${base}/payments/${encodeURIComponent(key)}`, {
    headers: account ? { 'X-Account-Id': account } : {},
    signal: AbortSignal.timeout(ATTEMPT_TIMEOUT_MS),
  });
  return { status: res.status, body: await res.json() };
}

async function paymentRows(scope, key) {
  const { rows } = await pool.query(
    'SELECT id::int, amount::int, recipient FROM payments WHERE scope = $1 AND idempotency_key = $2',
    [scope, key],
  );
  return rows;
}

const jitter = (lo, hi) => sleep(lo + Math.floor(Math.random() * (hi - lo)));

test('clients retrying through a lossy proxy get exactly one payment per key', { timeout: 30_000 }, async (t) => {
  const account = 'acct-retry';
  const stats = { attempts: 0, lost: 0, inProgress: 0, serverErrors: 0, no409RetryAfter: 0 };

  // A client in the style of Stripe's: the same key and the same request on
  // every attempt, retry on a lost response, a 409 or a 5xx, give up after
  // MAX_ATTEMPTS.  (A 409's Retry-After says 1 s; the test waits less.)
  async function client(key, body) {
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      stats.attempts++;
      try {
        const res = await post(proxy.url, { key, account, body });
        if (res.status === 409) {
          stats.inProgress++;
          if (res.headers.get('retry-after') !== '1') stats.no409RetryAfter++;
          await jitter(10, 50);
          continue;
        }
        if (res.status >= 500) {
          stats.serverErrors++;
          await jitter(10, 50);
          continue;
        }
        return { key, attempt, ...res };
      } catch {
        stats.lost++; // reset by the proxy, or timed out
        await jitter(2, 20);
      }
    }
    return { key, attempt: MAX_ATTEMPTS, status: null };
  }

  const requests = new Map();
  const runs = [];
  for (let k = 0; k < KEYS; k++) {
    const key = `${RUN}-pay-${k}`;
    const payment = { amount: 100 + k, to: `acct_${k % 7}` };
    requests.set(key, payment);
    for (let c = 0; c < CLIENTS_PER_KEY; c++) {
      // The clients of a key serialise the same JSON differently (key order,
      // white space): the service fingerprints it as jsonb, so it is one request.
      const body = c % 2 === 0 ? JSON.stringify(payment) : `{ "to": "${payment.to}",  "amount": ${payment.amount} }`;
      runs.push(client(key, body));
    }
  }
  const started = Date.now();
  const results = await Promise.all(runs);
  const elapsed = Date.now() - started;

  const byKey = new Map();
  for (const r of results) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  let replayed = 0;
  for (const [key, got] of byKey) {
    assert.equal(got.length, CLIENTS_PER_KEY);
    for (const r of got) {
      assert.equal(r.status, 201, `key ${key}: every client got a 201 (${r.status}: ${r.text})`);
      assert.equal(r.text, got[0].text, `key ${key}: every client got the same body`);
      // the headers the first response had, replayed from the key's record
      assert.equal(r.headers.get('location'), `/payments/${encodeURIComponent(key)}`, `key ${key}: Location`);
      assert.equal(r.headers.get('content-type'), 'application/json', `key ${key}: Content-Type`);
      if (r.headers.get('idempotent-replayed') === 'true') replayed++;
    }
    const response = JSON.parse(got[0].text);
    const payment = requests.get(key);
    assert.equal(response.amount, payment.amount);
    assert.equal(response.to, payment.to);
    assert.equal(response.status, 'paid');
    const rows = await paymentRows(`payments:${account}`, key);
    assert.deepEqual(rows, [{ id: response.id, amount: payment.amount, recipient: payment.to }],
      `key ${key}: exactly one payment, the one in the response`);
  }
  const { rows: [{ count }] } = await pool.query('SELECT count(*)::int FROM payments WHERE scope = $1', [
    `payments:${account}`,
  ]);
  assert.equal(count, KEYS, 'no payment without a key record');

  // The service can say what it recorded for a key.
  const someKey = `${RUN}-pay-7`;
  const looked = await get(direct, someKey, account);
  assert.equal(looked.status, 200);
  assert.equal(looked.body.status, 'completed');
  assert.equal(looked.body.response_code, 201);
  assert.equal(JSON.stringify(looked.body.response_body), byKey.get(someKey)[0].text);
  assert.equal((await get(direct, `${RUN}-never-used`, account)).status, 404);

  t.diagnostic(`${results.length} clients, ${stats.attempts} attempts in ${elapsed} ms: ` +
    `${proxy.stats.dropped} responses dropped by the proxy, ${stats.lost} attempts lost, ` +
    `${stats.inProgress} x 409, ${replayed} final answers replayed, ` +
    `max ${Math.max(...results.map((r) => r.attempt))} attempts for one client`);
  assert.ok(proxy.stats.dropped > 0, 'the proxy dropped responses');
  assert.ok(replayed > 0, 'retries were answered from the record (Idempotent-Replayed: true)');
  assert.equal(stats.serverErrors, 0, 'no 5xx');
  assert.equal(stats.no409RetryAfter, 0, 'every 409 had Retry-After');
});

test('a POST without a usable Idempotency-Key gets 400 and does nothing', async () => {
  const body = { amount: 5, to: 'acct_1' };
  const account = 'acct-400';
  for (const key of [undefined, '', '   ', 'x'.repeat(256), '"unterminated', '"bad"quote"', 'tab\there']) {
    const res = await post(direct, { key, account, body });
    assert.equal(res.status, 400, `key ${JSON.stringify(key)}`);
    assert.equal(res.headers.get('content-type'), 'application/problem+json');
  }
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM payments WHERE scope = $1', [`payments:${account}`]);
  assert.equal(rows[0].n, 0);

  // A structured-field string "k" and the bare token k are the same key; 255
  // characters is the longest key.
  const long = `${RUN}-`.padEnd(255, 'x');
  assert.equal((await post(direct, { key: long, account, body })).status, 201);
  const quoted = await post(direct, { key: `"${long}"`, account, body });
  assert.equal(quoted.status, 201);
  assert.equal(quoted.headers.get('idempotent-replayed'), 'true');

  // An invalid body with a key is refused before the key is used, so the
  // corrected request with the same key goes through.
  const key = `${RUN}-fix-me`;
  assert.equal((await post(direct, { key, account, body: { amount: -1, to: 'acct_1' } })).status, 400);
  assert.equal((await post(direct, { key, account, body: '{"amount": 1,' })).status, 400);
  const fixed = await post(direct, { key, account, body });
  assert.equal(fixed.status, 201);
  assert.equal(fixed.headers.get('idempotent-replayed'), null);
});

test('the same key with a different body gets 422', async () => {
  const account = 'acct-422';
  const key = `${RUN}-reused`;
  const first = await post(direct, { key, account, body: { amount: 700, to: 'acct_2' } });
  assert.equal(first.status, 201);

  const other = await post(direct, { key, account, body: { amount: 701, to: 'acct_2' } });
  assert.equal(other.status, 422);
  assert.equal(other.headers.get('content-type'), 'application/problem+json');
  assert.ok(!other.text.includes('"id"'), 'the stored response is not shown to another request');

  // The original request, serialised differently, is still a replay.
  const again = await post(direct, { key, account, body: '{"to":"acct_2","amount":700}' });
  assert.equal(again.status, 201);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  assert.equal(again.text, first.text);
  assert.equal(again.headers.get('location'), first.headers.get('location'));
  assert.equal(again.headers.get('content-type'), first.headers.get('content-type'));
  assert.equal((await paymentRows(`payments:${account}`, key)).length, 1);

  // what the key's record holds: the status, the two headers, the body as
  // jsonb, whose serialisation is what the first response and the replay sent
  const { rows: [stored] } = await pool.query(
    `SELECT response_code, response_headers, response_body, response_bytes
       FROM idem_lookup_full($1, $2)`, [key, `payments:${account}`]);
  assert.deepEqual(stored, {
    response_code: 201,
    response_headers: { 'Content-Type': 'application/json', Location: `/payments/${key}` },
    response_body: JSON.parse(first.text),
    response_bytes: null,
  });
  assert.equal(JSON.stringify(stored.response_body), first.text);
});

test('a refusal by the work function is the key\'s response: stored and replayed', async () => {
  const account = 'acct-refused';
  const key = `${RUN}-too-much`;
  const body = { amount: MAX_PAYMENT + 1, to: 'acct_6' };
  const first = await post(direct, { key, account, body });
  assert.equal(first.status, 422);
  assert.equal(first.headers.get('content-type'), 'application/problem+json');
  assert.equal(JSON.parse(first.text).title, 'Payment refused');
  assert.equal(first.headers.get('idempotent-replayed'), null);

  const again = await post(direct, { key, account, body });
  assert.equal(again.status, 422);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  assert.equal(again.headers.get('content-type'), 'application/problem+json');
  assert.equal(again.text, first.text);
  assert.equal((await paymentRows(`payments:${account}`, key)).length, 0, 'no payment');

  // the key is used: a corrected amount under the same key is another request
  const other = await post(direct, { key, account, body: { amount: 10, to: 'acct_6' } });
  assert.equal(other.status, 422);
  assert.equal(JSON.parse(other.text).title, 'Idempotency-Key reused');
  const looked = await get(direct, key, account);
  assert.equal(looked.body.status, 'completed');
  assert.equal(looked.body.response_code, 422);
});

test('Location is the key, percent-encoded as encodeURIComponent does', async () => {
  const key = `${RUN} a/b?c%d&e'f(g)*~!`;
  const res = await post(direct, { key, account: 'acct-loc', body: { amount: 3, to: 'acct_7' } });
  assert.equal(res.status, 201);
  assert.equal(res.headers.get('location'), `/payments/${encodeURIComponent(key)}`);
  assert.equal((await get(direct, key, 'acct-loc')).body.status, 'completed');
});

test('a request whose key another transaction holds gets 409, then the real outcome', async () => {
  const account = 'acct-409';
  const scope = `payments:${account}`;
  const body = { amount: 42, to: 'acct_3' };
  const holder = new pg.Client({ options: PG_OPTIONS });
  await holder.connect();
  try {
    // Another attempt is in flight (begun, not finished) ...
    const key = `${RUN}-in-flight`;
    await holder.query('BEGIN');
    const { rows: [begun] } = await holder.query(
      'SELECT status FROM idem_begin($1, $2::jsonb, scope => $3)',
      [key, JSON.stringify(body), scope],
    );
    assert.equal(begun.status, 'started');
    const busy = await post(direct, { key, account, body });
    assert.equal(busy.status, 409);
    assert.equal(busy.headers.get('retry-after'), '1');
    // ... and rolls back: the retry does the work.
    await holder.query('ROLLBACK');
    const retry = await post(direct, { key, account, body });
    assert.equal(retry.status, 201);
    assert.equal(retry.headers.get('idempotent-replayed'), null);
    assert.equal((await paymentRows(scope, key)).length, 1);

    // Another attempt has finished but not yet committed: still 409; once it
    // commits, the retry gets its response.
    const key2 = `${RUN}-finishing`;
    await holder.query('BEGIN');
    await holder.query('SELECT status FROM idem_begin($1, $2::jsonb, scope => $3)', [key2, JSON.stringify(body), scope]);
    await holder.query(`SELECT idem_finish($1, 201, '{"id": -1, "by": "holder"}'::jsonb, scope => $2)`, [key2, scope]);
    assert.equal((await post(direct, { key: key2, account, body })).status, 409);
    await holder.query('COMMIT');
    const replay = await post(direct, { key: key2, account, body });
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(JSON.parse(replay.text), { id: -1, by: 'holder' });
  } finally {
    await holder.end();
  }
});

test('keys are scoped by account', async () => {
  const key = `${RUN}-shared-key`;
  const body = { amount: 9, to: 'acct_4' };
  const a = await post(direct, { key, account: 'acct-a', body });
  const b = await post(direct, { key, account: 'acct-b', body });
  assert.equal(a.status, 201);
  assert.equal(b.status, 201);
  assert.equal(b.headers.get('idempotent-replayed'), null);
  assert.notEqual(JSON.parse(a.text).id, JSON.parse(b.text).id);
  assert.equal((await get(direct, key, 'acct-c')).status, 404);
});

test('a serialization failure is retried, and the retry replays', async () => {
  // Under REPEATABLE READ, the POST's statement, had it waited for another
  // attempt at its key (wait => true), gets 40001 once that attempt commits: the
  // statement's snapshot predates the record.  The statement run again has a new
  // snapshot and replays.  (The service passes wait => false and does not wait,
  // but at REPEATABLE READ it meets 40001 too if the other attempt commits
  // between its snapshot and its look at the key.)
  const key = `${RUN}-rr`;
  const scope = 'payments:acct-rr';
  const text = JSON.stringify({ amount: 1, to: 'acct_5' });
  const holder = new pg.Client({ options: PG_OPTIONS });
  const rr = new pg.Client({ options: PG_OPTIONS });
  await holder.connect();
  await rr.connect();
  try {
    await rr.query("SET default_transaction_isolation = 'repeatable read'");
    await holder.query('BEGIN');
    const { rows: [begun] } = await holder.query('SELECT status FROM idem_begin($1, $2::jsonb, scope => $3)',
      [key, text, scope]);
    assert.equal(begun.status, 'started');

    const seen = [];
    const called = withRetries(async () => {
      try {
        const r = await callPayment(rr, { key, text, scope, wait: true });
        seen.push(r.status);
        return r;
      } catch (err) {
        seen.push(err.code);
        throw err;
      }
    });
    // once the statement waits for the holder's key, the holder commits
    for (let i = 0; ; i++) {
      const { rows: [a] } = await pool.query('SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1',
        [rr.processID]);
      if (a?.wait_event_type === 'Lock') break;
      assert.ok(i < 500, 'the statement waits for the key');
      await sleep(10);
    }
    await holder.query(`SELECT idem_finish($1, 201, '{"id": 1}'::jsonb, scope => $2)`, [key, scope]);
    await holder.query('COMMIT');
    const result = await called;
    assert.deepEqual(seen, ['40001', 'replay']);
    assert.equal(result.response_code, 201);
    assert.deepEqual(result.response_body, { id: 1 });
    assert.equal((await paymentRows(scope, key)).length, 0, 'the work did not run');
  } finally {
    await holder.end();
    await rr.end();
  }

  // Other errors are not retried, and the retries are bounded.
  let calls = 0;
  await assert.rejects(withRetries(async () => { calls++; await pool.query('SELECT 1/0'); }), { code: '22012' });
  assert.equal(calls, 1);
  calls = 0;
  await assert.rejects(
    withRetries(async () => { calls++; throw Object.assign(new Error('deadlock'), { code: '40P01' }); }),
    { code: '40P01' },
  );
  assert.equal(calls, 3);
});
