// Variant `express_idempotency`: the express-idempotency middleware (npm, the
// most downloaded one) with its Redis data adapter
// (express-idempotency-redis-adapter); the payment is one autocommit INSERT in
// PostgreSQL inside the handler.  Configured as its README shows, plus:
//  - a responseValidator that also keeps the business error (422): the
//    default keeps 2xx only, and the API says a 422 is replayed like any
//    response (400s are not kept, as in the other variants);
//  - reportError() when the handler fails (a 500), as the README says, so the
//    key is free again.
// What the library does by itself: GET the key; if absent, SET it (the
// request), call the handler, and once the response is sent, SET it again
// with the response (fire and forget).  GET-then-SET is not atomic: two
// concurrent first attempts can both find nothing and both pay.  A reused key
// with another body: 417.  A request while the first is running: 409.  No key:
// the middleware does nothing; the handler answers 400.
import expressIdempotency from 'express-idempotency';
import redisAdapterModule from 'express-idempotency-redis-adapter';
import { createApp, start } from './express_app.js';

const RedisAdapter = redisAdapterModule.default;
const adapter = new RedisAdapter({ connectionConfig: { url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' } });
await adapter.connect();

const middleware = expressIdempotency.idempotency({
  dataAdapter: adapter,
  responseValidator: {
    isValidForPersistence: (response) => (response.statusCode >= 200 && response.statusCode < 300) || response.statusCode === 422,
  },
});
const service = expressIdempotency.getSharedIdempotencyService();

const { app, pool } = createApp('express_idempotency', [middleware], {
  skip: (req) => service.isHit(req),
  onError: (req) => service.reportError(req),
});
start('express_idempotency', app, async () => {
  await pool.end();
  await adapter.disconnect();
});
