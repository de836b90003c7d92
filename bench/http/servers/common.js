// What the variants share: the pool, the request parsing and validation, the
// responses.  Every variant serves the same API:
//
//   POST /payments   {"amount": <int>, "to": "<account>"}   Idempotency-Key required
//     201 {"id": .., "to": .., "amount": ..}   a new key: one row in payments
//     422 {"error": ..}                        amount <= 0 (a business error:
//                                              the idempotent variants store it
//                                              and replay it like any response)
//     400 {"error": ..}                        no key, bad JSON, bad payment
//                                              (never stored)
//
// A server listens on 127.0.0.1, on PORT (default 0: any free port) and, once
// listening, writes its port to PORT_FILE (if set), which is how run.sh finds
// it.  PostgreSQL comes from the libpq variables (PGHOST, PGPORT, ...).
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import pg from 'pg';

export const MAX_BODY_BYTES = 16 * 1024;
export const POOL_SIZE = Number(process.env.PGPOOL_MAX ?? 10);
// The schema the extension was created in (run.sh passes what pg_extension says).
export const IDEM_SCHEMA = process.env.IDEM_SCHEMA ?? 'idempotency';
export const BUSINESS_ERROR = { error: 'amount must be positive' };
export const MISMATCH_ERROR = { error: 'Idempotency-Key reused with a different request' };

// The answer to an extension status other than the one that did the work
// (idem_begin's started, idem_call's done): the stored response, or a refusal.
export function replyForStatus(r) {
  switch (r.status) {
    case 'replay':
      return { status: r.response_code, body: r.response_body, replayed: true };
    case 'mismatch':
      return { status: 422, body: MISMATCH_ERROR };
    case 'in_progress':
      return { status: 409, body: { error: 'request in progress' } };
    case 'dead':
    case 'erased':
      return { status: 410, body: { error: `key ${r.status}` } };
    default:
      throw new Error(`unexpected status ${r.status}`);
  }
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function makePool(name) {
  const pool = new pg.Pool({
    max: POOL_SIZE,
    connectionTimeoutMillis: 10000,
    idleTimeoutMillis: 0, // keep the connections (and their prepared statements) between runs
    options: '-c statement_timeout=30s -c lock_timeout=20s',
    application_name: `bench-http-${name}`,
  });
  pool.on('error', (err) => console.error(`${name}: idle pool client error: ${err.message}`));
  return pool;
}

// The payment, as every variant inserts it (one autocommit statement for the
// variants without a transaction of their own).  The response is the jsonb that
// PostgreSQL builds, so a first answer and its replays are the same bytes.
export const INSERT_PAYMENT = `INSERT INTO payments (idem_key, amount, to_account) VALUES ($1, $2, $3)
  RETURNING jsonb_build_object('id', id, 'amount', amount, 'to', to_account) AS response`;

// The work for a new key, as every variant that does it in Node does it: the
// payment (one INSERT on client, a pool or a pooled connection), or the
// business error.
export async function payOrRefuse(client, key, payment) {
  if (payment.amount <= 0) return { status: 422, body: BUSINESS_ERROR };
  const { rows: [row] } = await client.query({
    name: 'pay_insert', text: INSERT_PAYMENT, values: [key, payment.amount, payment.to],
  });
  return { status: 201, body: row.response };
}

// The header value as the key: 1 to 255 printable ASCII characters.
export function keyOf(req) {
  const raw = req.headers['idempotency-key'];
  if (raw === undefined) throw new HttpError(400, 'Idempotency-Key required');
  const key = raw.trim();
  if (key.length === 0 || key.length > 255 || !/^[\x20-\x7e]+$/.test(key)) {
    throw new HttpError(400, 'Idempotency-Key must be 1 to 255 printable ASCII characters');
  }
  return key;
}

// amount: an integer that fits int4 (<= 0 is the business error, decided by the
// variant); to: an account id.
export function validatePayment(value) {
  const { amount, to } = value ?? {};
  if (!Number.isSafeInteger(amount) || amount > 2147483647 || amount < -2147483648) {
    throw new HttpError(400, '"amount" must be an integer');
  }
  if (typeof to !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(to)) {
    throw new HttpError(400, '"to" must be an account id');
  }
  return { amount, to };
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'request body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return { text, value: JSON.parse(text) };
  } catch {
    throw new HttpError(400, 'invalid JSON body');
  }
}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

// A node:http server for POST /payments.  handle({key, text, value, payment})
// gets a request whose key and body are valid and returns {status, body,
// replayed}.
export function serve(name, handle) {
  const server = http.createServer(async (req, res) => {
    try {
      if (req.url !== '/payments') throw new HttpError(404, 'not found');
      if (req.method !== 'POST') throw new HttpError(405, 'method not allowed');
      const key = keyOf(req);
      const { text, value } = await readJson(req);
      const payment = validatePayment(value);
      const out = await handle({ key, text, value, payment });
      send(res, out.status, out.body, out.replayed ? { 'Idempotent-Replayed': 'true' } : {});
    } catch (err) {
      if (err instanceof HttpError) {
        send(res, err.status, { error: err.message });
      } else {
        console.error(`${name}: ${req.method} ${req.url}: ${err.stack ?? err}`);
        send(res, 500, { error: 'internal error' });
      }
    }
  });
  listen(name, server);
  return server;
}

export function listen(name, server, onClose = async () => {}) {
  server.keepAliveTimeout = 65000;
  server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
    const { port } = server.address();
    if (process.env.PORT_FILE) writeFileSync(process.env.PORT_FILE, `${port}\n`);
    console.log(`${name}: listening on 127.0.0.1:${port}`);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, () => {
      server.closeAllConnections?.();
      server.close();
      onClose().finally(() => process.exit(0));
      setTimeout(() => process.exit(0), 2000).unref();
    });
  }
}

// Run fn(client) in one transaction on a pooled connection.
export async function withTransaction(pool, fn) {
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
      broken = rollbackErr;
    }
    throw err;
  } finally {
    client.release(broken);
  }
}

// A quoted identifier, for the extension's schema in SQL text.
export function ident(name) {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replaceAll('"', '""')}"`;
}
