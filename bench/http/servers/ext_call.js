// Variant `ext_call`: the extension's one-round-trip path.  The work is a SQL
// function created once (run.sh: create_payment(jsonb), which inserts the
// payment or returns the business error as an idem_response); per request ONE
// autocommit statement, prepared:
//
//   SELECT status, response_code, response_body
//     FROM idempotency.idem_call($1, $2::jsonb, 'create_payment(jsonb)'::regprocedure)
//
//   done, replay -> response_code / response_body;  mismatch -> 422;
//   in_progress -> 409;  dead, erased -> 410
//
// The function sees only the request jsonb, so the key travels inside it
// ({"amount": .., "to": .., "key": ..}); the fingerprint covers it too, which
// changes nothing (a retry sends the same key).
import { IDEM_SCHEMA, ident, makePool, replyForStatus, serve } from './common.js';

const S = ident(IDEM_SCHEMA);
const pool = makePool('ext_call');
const call = {
  name: 'ext_call',
  text: `SELECT status, response_code, response_body
           FROM ${S}.idem_call($1, $2::jsonb, 'create_payment(jsonb)'::regprocedure)`,
};

serve('ext_call', async ({ key, value }) => {
  const request = JSON.stringify({ ...value, key });
  const { rows: [r] } = await pool.query({ ...call, values: [key, request] });
  if (r.status === 'done') return { status: r.response_code, body: r.response_body };
  return replyForStatus(r);
});
