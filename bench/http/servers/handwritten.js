// Variant `handwritten`: a key table of the application's own, brandur's design
// ("Implementing Stripe-like idempotency keys in Postgres") reduced to work
// that fits in one transaction.  Per request, on one pooled connection:
//
//   BEGIN
//   INSERT INTO hw_keys (idem_key, request) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true
//     a row came back (a new key):
//       INSERT the payment (or nothing, for the business error)
//       UPDATE hw_keys SET response_code, response_body WHERE idem_key = $1
//     no row (the key exists):
//       SELECT request = $2, response_code, response_body FROM hw_keys WHERE idem_key = $1 FOR UPDATE
//       -> replay, or 422 if the request differs
//   COMMIT                                          (5 round trips for a new key)
//
// Correct under concurrency at READ COMMITTED: a second INSERT of a key that an
// open transaction has inserted waits for that transaction; if it committed,
// the INSERT does nothing and the SELECT (a new snapshot) sees the stored
// response; if it rolled back, the INSERT goes ahead.  The key row and the
// payment commit or roll back together, so a key row is never seen without
// its response.  No expiry: the table keeps every key (a real one would also
// need a reaper).
import { MISMATCH_ERROR, makePool, payOrRefuse, serve, withTransaction } from './common.js';

const pool = makePool('handwritten');
const takeKey = {
  name: 'hw_take',
  text: 'INSERT INTO hw_keys (idem_key, request) VALUES ($1, $2::jsonb) ON CONFLICT (idem_key) DO NOTHING RETURNING true AS created',
};
const readKey = {
  name: 'hw_read',
  text: 'SELECT request = $2::jsonb AS same, response_code, response_body FROM hw_keys WHERE idem_key = $1 FOR UPDATE',
};
const finish = {
  name: 'hw_finish',
  text: 'UPDATE hw_keys SET response_code = $2, response_body = $3::jsonb WHERE idem_key = $1',
};

serve('handwritten', ({ key, text, payment }) =>
  withTransaction(pool, async (client) => {
    const { rowCount } = await client.query({ ...takeKey, values: [key, text] });
    if (rowCount === 1) {
      const answer = await payOrRefuse(client, key, payment);
      await client.query({ ...finish, values: [key, answer.status, JSON.stringify(answer.body)] });
      return answer;
    }
    const { rows: [stored] } = await client.query({ ...readKey, values: [key, text] });
    if (!stored) throw new Error(`key ${key} vanished`);
    if (!stored.same) return { status: 422, body: MISMATCH_ERROR };
    if (stored.response_code === null) return { status: 409, body: { error: 'request in progress' } };
    return { status: stored.response_code, body: stored.response_body, replayed: true };
  }),
);
