// A payments API that honours the Idempotency-Key request header
// (IETF draft "The Idempotency-Key HTTP Header Field"), with the key records
// kept by the idempotency extension in the same transaction as the payment.
//
//   POST /payments        {"amount": <int>, "to": "<account>"}   Idempotency-Key required
//   GET  /payments/:key   what the service recorded for that key  (idem_lookup_full)
//
// One POST is one transaction:
//
//   BEGIN
//   idem_begin_full(key, body::jsonb, scope, wait => false)
//     started     -> INSERT the payment, idem_finish(key, 201, headers, bytes), COMMIT, 201
//     replay      -> the stored status, headers (Location, Content-Type) and the
//                    body's exact bytes, Idempotent-Replayed: true
//     mismatch    -> 422 (the key was used for another request)
//     in_progress -> 409 + Retry-After (another attempt holds the key right now)
//
// The key record and the payment commit or roll back together: an attempt that
// fails or crashes before COMMIT leaves nothing behind, and the client's retry
// with the same key starts over.  An attempt that committed but whose response
// got lost is answered from the record by the retry.

import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

const MAX_BODY_BYTES = 16 * 1024;
const RETRY_AFTER_SECONDS = 1;
// SQLSTATEs worth retrying the whole transaction for.  READ COMMITTED with one
// key per transaction should not see them, but a pool configured for
// REPEATABLE READ / SERIALIZABLE gets 40001 when a concurrent attempt completed
// the key after our snapshot (the retry then gets `replay`), and a handler that
// begins several keys can deadlock (40P01).
const RETRYABLE = new Set(['40001', '40P01']);

class HttpError extends Error {
  constructor(status, title, detail, headers = {}) {
    super(detail ?? title);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.headers = headers;
  }
}

// Idempotency-Key is a Structured Field String (RFC 8941): "abc".  Clients in the
// wild (Stripe's, for one) send the bare token abc; accept both as the same key.
// The extension takes keys of 1..255 bytes; we also keep them printable ASCII
// (what an sf-string allows), so bytes and characters are the same thing.
export function parseIdempotencyKey(raw) {
  if (raw === undefined) return null;
  let key = raw.trim();
  if (key.startsWith('"')) key = unquote(key);
  if (key.length === 0 || key.length > 255 || !/^[\x20-\x7e]+$/.test(key)) {
    throw new HttpError(400, 'Invalid Idempotency-Key', 'The key must be 1 to 255 printable ASCII characters.');
  }
  return key;
}

// sf-string: "..." where \" and \\ are the only escapes.
function unquote(quoted) {
  let out = '';
  for (let i = 1; i < quoted.length; i++) {
    const c = quoted[i];
    if (c === '\\' && (quoted[i + 1] === '"' || quoted[i + 1] === '\\')) {
      out += quoted[++i];
    } else if (c === '"' && i === quoted.length - 1) {
      return out;
    } else if (c === '"' || c === '\\') {
      break;
    } else {
      out += c;
    }
  }
  throw new HttpError(400, 'Invalid Idempotency-Key', 'The header is not a valid structured-field string.');
}

// The scope keeps different clients' keys apart: two accounts may both send
// "order-1", and neither can ever be served the other's stored response.  A
// real service takes the account from its authentication (API key, token);
// this example trusts an X-Account-Id header for that.  The endpoint is part of
// the scope too, so a key reused on another endpoint is another key.
export function scopeFor(req) {
  const account = req.headers['x-account-id'] ?? 'anonymous';
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(account)) {
    throw new HttpError(400, 'Invalid X-Account-Id', 'The account id must be 1 to 64 of [A-Za-z0-9_.-].');
  }
  return `payments:${account}`;
}

// Run fn(client) in one transaction on a pooled connection; retry the whole
// transaction (bounded, with jittered backoff) on serialization failures and
// deadlocks.
export async function withTransaction(pool, fn, { attempts = 3 } = {}) {
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken;
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch (rollbackErr) {
        broken = rollbackErr; // the connection is unusable: do not put it back
      }
      if (attempt >= attempts || !RETRYABLE.has(err.code)) throw err;
    } finally {
      client.release(broken);
    }
    await sleep(Math.floor(Math.random() * 20 * attempt) + 5);
  }
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'Request body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return { text, value: JSON.parse(text) };
  } catch {
    throw new HttpError(400, 'Invalid JSON body');
  }
}

function validatePayment(value) {
  const { amount, to } = value ?? {};
  if (!Number.isSafeInteger(amount) || amount <= 0) {
    throw new HttpError(400, 'Invalid payment', '"amount" must be a positive integer (minor units).');
  }
  if (typeof to !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(to)) {
    throw new HttpError(400, 'Invalid payment', '"to" must be an account id.');
  }
  return { amount, to };
}

async function createPayment(pool, req) {
  // Validation failures are answered before the key is touched, so they are
  // not recorded: a corrected retry with the same key is processed normally.
  const key = parseIdempotencyKey(req.headers['idempotency-key']);
  if (key === null) {
    throw new HttpError(400, 'Idempotency-Key required', 'POST /payments needs an Idempotency-Key header.');
  }
  const scope = scopeFor(req);
  const body = await readJson(req);
  const payment = validatePayment(body.value);

  return withTransaction(pool, async (client) => {
    // $2::jsonb: the request fingerprint is computed on the parsed JSON, so a
    // retry that re-serialises the same body (key order, white space) still
    // matches.  An UNTYPED parameter here would resolve to idem_begin's text
    // variant, which fingerprints the exact bytes instead.
    // wait => false: a concurrent attempt with the same key gets `in_progress`
    // at once (-> 409) instead of holding a pooled connection while it waits.
    const { rows: [begun] } = await client.query(
      `SELECT status, response_code, response_body, response_headers, response_bytes
         FROM idem_begin_full($1, $2::jsonb, scope => $3, wait => false)`,
      [key, body.text, scope],
    );
    switch (begun.status) {
      case 'started': {
        const { rows: [row] } = await client.query(
          `INSERT INTO payments (scope, idempotency_key, amount, recipient)
           VALUES ($1, $2, $3, $4)
           RETURNING jsonb_build_object('id', id, 'amount', amount, 'to', recipient,
                                        'status', 'paid', 'created_at', created_at) AS response`,
          [scope, key, payment.amount, payment.to],
        );
        // The whole response is stored: the headers a retry needs and the
        // body's bytes, so that every replay is the first response exactly.
        const raw = Buffer.from(JSON.stringify(row.response));
        const headers = { 'Content-Type': 'application/json', Location: `/payments/${encodeURIComponent(key)}` };
        await client.query(
          'SELECT idem_finish($1, 201, scope => $2, response_headers => $3::jsonb, response_bytes => $4::bytea)',
          [key, scope, JSON.stringify(headers), raw],
        );
        return { status: 201, raw, headers };
      }
      case 'replay':
        if (begun.response_bytes !== null) {
          return {
            status: begun.response_code,
            raw: begun.response_bytes,
            headers: { ...begun.response_headers, 'Idempotent-Replayed': 'true' },
          };
        }
        // a record finished with a jsonb body only (by other code)
        return { status: begun.response_code, body: begun.response_body, headers: { 'Idempotent-Replayed': 'true' } };
      case 'mismatch':
        throw new HttpError(422, 'Idempotency-Key reused', 'This key was already used for a different request.');
      case 'in_progress':
        throw new HttpError(409, 'Request in progress', 'An earlier request with this key is still being processed.', {
          'Retry-After': String(RETRY_AFTER_SECONDS),
        });
      default:
        throw new Error(`unexpected idem_begin status ${begun.status}`);
    }
  });
}

async function lookupPayment(pool, req, key) {
  const scope = scopeFor(req);
  if (key.length === 0 || key.length > 255) throw new HttpError(404, 'Not found');
  const { rows: [found] } = await pool.query(
    `SELECT status, response_code, response_body, response_bytes, created_at, expires_at
       FROM idem_lookup_full($1, scope => $2)`,
    [key, scope],
  );
  if (found.status === 'absent') throw new HttpError(404, 'Not found', 'No request with this key (or it expired).');
  if (found.status === 'in_progress') return { status: 200, body: { status: 'in_progress' } };
  return {
    status: 200,
    body: {
      status: 'completed',
      response_code: found.response_code,
      // this service stores its JSON responses as bytes (see createPayment)
      response_body: found.response_bytes !== null ? JSON.parse(found.response_bytes.toString('utf8')) : found.response_body,
      created_at: found.created_at,
      expires_at: found.expires_at,
    },
  };
}

function send(res, status, body, headers = {}, type = 'application/json') {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

// A stored response, as it was: its headers and the exact bytes of its body.
function sendRaw(res, status, raw, headers) {
  res.writeHead(status, { ...headers, 'Content-Length': raw.length });
  res.end(raw);
}

// An http.Server for the API; the caller owns the pool and calls listen().
export function createApp({ pool, log = console }) {
  return http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://localhost');
      let result;
      if (url.pathname === '/payments') {
        if (req.method !== 'POST') throw new HttpError(405, 'Method not allowed', undefined, { Allow: 'POST' });
        result = await createPayment(pool, req);
      } else if (url.pathname.startsWith('/payments/')) {
        if (req.method !== 'GET') throw new HttpError(405, 'Method not allowed', undefined, { Allow: 'GET' });
        let key;
        try {
          key = decodeURIComponent(url.pathname.slice('/payments/'.length));
        } catch {
          throw new HttpError(404, 'Not found');
        }
        result = await lookupPayment(pool, req, key);
      } else {
        throw new HttpError(404, 'Not found');
      }
      if (result.raw) sendRaw(res, result.status, result.raw, result.headers);
      else send(res, result.status, result.body, result.headers);
    } catch (err) {
      if (err instanceof HttpError) {
        // RFC 9457 problem details, as the draft suggests for these errors.
        const problem = { title: err.title, status: err.status, ...(err.detail && { detail: err.detail }) };
        send(res, err.status, problem, err.headers, 'application/problem+json');
      } else if (err.code?.startsWith('22')) {
        // Data exception from PostgreSQL, e.g. JSON that jsonb refuses (\u0000).
        send(res, 400, { title: 'Invalid request', status: 400, detail: err.message }, {}, 'application/problem+json');
      } else {
        log.error?.(`${req.method} ${req.url}: ${err.stack ?? err}`);
        send(res, 500, { title: 'Internal error', status: 500 }, {}, 'application/problem+json');
      }
    }
  });
}

// The payments table.  There is deliberately no UNIQUE (scope, idempotency_key):
// the extension alone keeps it to one payment per key, and the test checks that.
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope           text NOT NULL,
    idempotency_key text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    recipient       text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
)`;
