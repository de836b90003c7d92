// A payments API that honours the Idempotency-Key request header
// (IETF draft "The Idempotency-Key HTTP Header Field"), with the key records
// kept by the idempotency extension in the same transaction as the payment.
//
//   POST /payments        {"amount": <int>, "to": "<account>"}   Idempotency-Key required
//   GET  /payments/:key   what the service recorded for that key  (idem_lookup_full)
//
// One POST is ONE statement in autocommit: one round trip, one transaction.
// idem_call begins the key, runs the work function create_payment(request)
// (created with the table, see SCHEMA) and finishes the key with the response
// the work returns:
//
//   idem_call(key, body::jsonb, 'create_payment(jsonb)', scope, wait => false)
//     done        -> the payment was made now: its response (201, Location, Content-Type),
//                    or the refusal the work returned (422), both stored with the key
//     replay      -> the stored status, headers and body, Idempotent-Replayed: true
//     mismatch    -> 422 (the key was used for another request)
//     in_progress -> 409 + Retry-After (another attempt holds the key right now)
//     dead/erased -> 410
//
// The key record and the payment commit or roll back together: an attempt that
// fails or whose connection dies before the statement commits leaves nothing
// behind, and the client's retry with the same key starts over.  An attempt
// that committed but whose response got lost is answered from the record by
// the retry.

import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

const MAX_BODY_BYTES = 16 * 1024;
const RETRY_AFTER_SECONDS = 1;
// The business rule of create_payment: a larger payment is refused (422), and
// the refusal is the key's response, stored and replayed like a success.
export const MAX_PAYMENT = 1_000_000;
// SQLSTATEs worth running the statement again for.  READ COMMITTED should not
// see them, but a pool configured for REPEATABLE READ / SERIALIZABLE gets 40001
// when a concurrent attempt completed the key after the statement's snapshot
// (the retry then gets `replay`), and a work function that locks rows can
// deadlock with other transactions (40P01).  Either error has rolled the whole
// attempt back (the key and the work), so running the statement again is safe.
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

// Run fn() again (bounded, with jittered backoff) when it fails with a
// serialization failure or a deadlock.  fn is one autocommit statement (one
// transaction), so running it again is retrying the transaction.
export async function withRetries(fn, { attempts = 3 } = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= attempts || !RETRYABLE.has(err.code)) throw err;
    }
    await sleep(Math.floor(Math.random() * 20 * attempt) + 5);
  }
}

// The whole POST, one statement.  A named statement: each pooled connection
// prepares it once, and the work's name is resolved to its OID then.
// create_payment(request) sees only the request; the key and the scope reach it
// through two settings that set_config(..., true) gives for this transaction
// only (the statement, in autocommit), evaluated as idem_call's arguments, so
// before the work runs.  The request alone is fingerprinted, as idem_begin
// would: a retry is recognised whichever code path made the record.
//   $2::jsonb: the fingerprint is computed on the parsed JSON, so a retry that
//   re-serialises the same body (key order, white space) still matches.
//   wait => $4 (false for the service): a concurrent attempt with the same key
//   gets `in_progress` at once (-> 409) instead of holding a pooled connection
//   while it waits.
const PAYMENT_CALL = {
  name: 'payments_call',
  text: `SELECT status, response_code, response_body, response_headers, response_bytes
           FROM idem_call(set_config('payments.idempotency_key', $1, true), $2::jsonb,
                          'create_payment(jsonb)',
                          scope => set_config('payments.scope', $3, true), wait => $4)`,
};

// Run the POST's statement on db (the pool, or a client).
export async function callPayment(db, { key, text, scope, wait = false }) {
  const { rows: [row] } = await db.query({ ...PAYMENT_CALL, values: [key, text, scope, wait] });
  return row;
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
  validatePayment(body.value); // create_payment reads the request's amount and to

  const called = await withRetries(() => callPayment(pool, { key, text: body.text, scope }));
  switch (called.status) {
    case 'done':
      return storedResponse(called, false);
    case 'replay':
      return storedResponse(called, true);
    case 'mismatch':
      throw new HttpError(422, 'Idempotency-Key reused', 'This key was already used for a different request.');
    case 'in_progress':
      throw new HttpError(409, 'Request in progress', 'An earlier request with this key is still being processed.', {
        'Retry-After': String(RETRY_AFTER_SECONDS),
      });
    case 'dead':
    case 'erased':
      throw new HttpError(410, 'Idempotency-Key no longer usable', `This key is ${called.status}; use a new key.`);
    default:
      throw new Error(`unexpected idem_call status ${called.status}`);
  }
}

// The response a key's record holds, as the client gets it: the first time
// (done) and on every replay the same status, headers and bytes.  The jsonb
// body is serialised by the same JSON.stringify of the same parsed value both
// times.  A record whose body was stored as bytes (by the earlier,
// multi-statement version of this service, or by other code) is sent as those
// bytes.
function storedResponse(row, replayed) {
  let headers = row.response_headers ?? {};
  let raw = Buffer.alloc(0);
  if (row.response_bytes !== null) {
    raw = row.response_bytes;
  } else if (row.response_body !== null) {
    raw = Buffer.from(JSON.stringify(row.response_body));
    if (!Object.keys(headers).some((name) => name.toLowerCase() === 'content-type')) {
      headers = { 'Content-Type': 'application/json', ...headers };
    }
  }
  if (replayed) headers = { ...headers, 'Idempotent-Replayed': 'true' };
  return { status: row.response_code, raw, headers };
}

async function lookupPayment(pool, req, key) {
  const scope = scopeFor(req);
  if (key.length === 0 || key.length > 255) throw new HttpError(404, 'Not found');
  const { rows: [found] } = await pool.query({
    name: 'payments_lookup',
    text: `SELECT status, response_code, response_body, response_bytes, created_at, expires_at
             FROM idem_lookup_full($1, scope => $2)`,
    values: [key, scope],
  });
  if (found.status === 'absent') throw new HttpError(404, 'Not found', 'No request with this key (or it expired).');
  if (found.status === 'in_progress') return { status: 200, body: { status: 'in_progress' } };
  return {
    status: 200,
    body: {
      status: 'completed',
      response_code: found.response_code,
      // a record made by the earlier version of this service holds its body as bytes
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
      if (result.raw !== undefined) sendRaw(res, result.status, result.raw, result.headers);
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

// The payments table, and the work idem_call runs for a new key.  There is
// deliberately no UNIQUE (scope, idempotency_key): the extension alone keeps it
// to one payment per key, and the test checks that.
//
// create_payment(request) runs inside the POST's statement, in the same
// transaction as the key's record: it makes the payment and returns the
// response to store and send (201 with Location and Content-Type), or refuses
// the payment by returning a 422, which is stored and replayed as well.  An
// error it raises rolls back the key with the payment, so a retry runs it
// again.  SET search_path FROM CURRENT: it finds payments and idem_response
// where this setup found them, whatever the caller's search_path.  PL/pgSQL
// keeps its plans across transactions.  The request was validated by the
// service (validatePayment) before the statement was sent.
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope           text NOT NULL,
    idempotency_key text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    recipient       text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION create_payment(request jsonb) RETURNS idem_response
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    -- set by the POST's statement for its own transaction (callPayment)
    req_key    text := current_setting('payments.idempotency_key', true);
    req_scope  text := current_setting('payments.scope', true);
    req_amount bigint := (request -> 'amount')::bigint;
    payment    payments;
BEGIN
    IF coalesce(req_key, '') = '' OR coalesce(req_scope, '') = '' THEN
        RAISE EXCEPTION 'create_payment() is run by the service''s idem_call, which sets payments.idempotency_key and payments.scope';
    END IF;
    IF req_amount > ${MAX_PAYMENT} THEN
        RETURN idem_response(422,
            jsonb_build_object('title', 'Payment refused', 'status', 422,
                               'detail', 'The amount is over the limit of ${MAX_PAYMENT} per payment.'),
            '{"Content-Type": "application/problem+json"}');
    END IF;
    INSERT INTO payments (scope, idempotency_key, amount, recipient)
    VALUES (req_scope, req_key, req_amount, request ->> 'to')
    RETURNING * INTO payment;
    RETURN idem_response(201,
        jsonb_build_object('id', payment.id, 'amount', payment.amount, 'to', payment.recipient,
                           'status', 'paid', 'created_at', payment.created_at),
        jsonb_build_object('Content-Type', 'application/json',
                           -- encodeURIComponent(key): the service takes printable ASCII keys only
                           'Location', '/payments/' || (
                               SELECT string_agg(CASE WHEN c ~ '[A-Za-z0-9_.!~*''()-]' THEN c
                                                      ELSE '%' || upper(to_hex(ascii(c))) END,
                                                 '' ORDER BY i)
                                 FROM regexp_split_to_table(req_key, '') WITH ORDINALITY AS t(c, i))));
END
$fn$;
`;
