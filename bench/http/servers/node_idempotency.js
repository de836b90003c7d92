// Variant `node_idempotency`: @node-idempotency/core with its Redis storage
// adapter (@node-idempotency/storage-adapter-redis), as an Express 5
// middleware; the payment is one autocommit INSERT in PostgreSQL inside the
// handler.
//
// The library's own Express integration, @node-idempotency/express, is not
// on the npm registry this benchmark can reach, so the middleware below is
// that package's (1.0.7, src/middleware.ts) written out in JavaScript on top of
// the core: onRequest() before the handler; on a new key, res.send is wrapped
// so that the response is stored with onResponse() (fire and forget, as
// there); a stored response is sent back with Idempotent-Replayed: true (an
// error body through next(), as there); IdempotencyError codes map to 422
// (fingerprint mismatch), 409 (in progress, with Retry-After: 1), 400 (no key
// or too long).  One change: an error that is not an IdempotencyError (Redis
// down) goes to next(err) instead of leaving the request unanswered.
//
// What the core does: SET key {IN_PROGRESS, fingerprint} NX PX ttl (atomic:
// exactly one concurrent first attempt wins); the others GET it and get 409
// (in progress) or the stored response.  enforceIdempotency: true makes a
// missing key a 400.  The fingerprint is a hash of JSON.stringify(body), so a
// retry whose body has its keys in another order is a mismatch.
import {
  Idempotency,
  IdempotencyError,
  IdempotencyErrorCodes,
} from '@node-idempotency/core';
import { RedisStorageAdapter } from '@node-idempotency/storage-adapter-redis';
import { createApp, start } from './express_app.js';

// @node-idempotency/shared: idempotency2HttpCodeMap, headers2Cache
const CODE_MAP = {
  [IdempotencyErrorCodes.IDEMPOTENCY_FINGERPRINT_MISSMATCH]: 422,
  [IdempotencyErrorCodes.IDEMPOTENCY_KEY_LEN_EXEEDED]: 400,
  [IdempotencyErrorCodes.IDEMPOTENCY_KEY_MISSING]: 400,
  [IdempotencyErrorCodes.REQUEST_IN_PROGRESS]: 409,
};
const HEADERS_TO_CACHE = ['Content-Type'];

const storage = new RedisStorageAdapter({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' });
await storage.connect();
const idempotency = new Idempotency(storage, { enforceIdempotency: true });

async function handleResponse(idempotencyReq, res, payload) {
  const { statusCode } = res;
  const headers = res.getHeaders();
  const additional = { statusCode };
  for (const header of HEADERS_TO_CACHE) {
    const value = headers[header] ?? headers[header.toLowerCase()];
    if (value) additional[header] = value;
  }
  try {
    const isJson = (headers['content-type'] ?? headers['Content-Type'])?.toString()?.toLowerCase()?.includes('application/json');
    if (isJson && typeof payload === 'string') payload = JSON.parse(payload);
  } catch {
    // as the plugin: keep the string
  }
  await idempotency.onResponse(idempotencyReq, {
    additional,
    ...(statusCode < 400 ? { body: payload } : { error: payload }),
  });
}

async function idempotencyMiddleware(req, res, next) {
  const idempotencyReq = { headers: req.headers, body: req.body, path: req.url, method: req.method };
  try {
    const stored = await idempotency.onRequest(idempotencyReq);
    if (!stored) {
      const originalSend = res.send.bind(res);
      res.send = (body) => {
        handleResponse(idempotencyReq, res, body).catch((err) => console.error(`node_idempotency: storing a response: ${err}`));
        return originalSend(body);
      };
      next();
      return;
    }
    if (stored.additional?.statusCode) res.status(stored.additional.statusCode);
    for (const header of HEADERS_TO_CACHE) {
      if (stored.additional?.[header]) res.header(header, stored.additional[header]);
    }
    res.header('Idempotent-Replayed', 'true');
    if (stored.body) res.send(stored.body);
    else next(stored.error);
  } catch (err) {
    if (err instanceof IdempotencyError) {
      if (err.code === IdempotencyErrorCodes.REQUEST_IN_PROGRESS) res.header('Retry-After', '1');
      res.status(CODE_MAP[err.code] ?? 500);
    }
    next(err);
  }
}

const { app, pool } = createApp('node_idempotency', [idempotencyMiddleware]);
start('node_idempotency', app, async () => {
  await pool.end();
  await storage.disconnect();
});
