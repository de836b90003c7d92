// Variant `ext_classic`: the idempotency extension as examples/node used it up
// to 0.4.0 (begin and finish around the application's own statement), the key
// record in the same transaction as the payment:
//
//   BEGIN
//   SELECT status, response_code, response_body FROM idempotency.idem_begin($1, $2::jsonb)
//     started     -> INSERT the payment (nothing for the business error),
//                    idempotency.idem_finish($1, code, body), COMMIT
//     replay      -> the stored code and body, COMMIT
//     mismatch    -> 422; in_progress -> 409; dead, erased -> 410
//   COMMIT                                          (5 round trips for a new key)
//
// idem_begin's default wait => true: a concurrent attempt with the same key
// waits for the first one's transaction and then replays it (examples/node
// passes wait => false and answers 409 instead).  $2::jsonb: the fingerprint
// is of the parsed JSON, so a re-serialised body (key order, white space) is
// the same request.
import { IDEM_SCHEMA, ident, makePool, payOrRefuse, replyForStatus, serve, withTransaction } from './common.js';

const S = ident(IDEM_SCHEMA);
const pool = makePool('ext_classic');
const begin = {
  name: 'ext_begin',
  text: `SELECT status, response_code, response_body FROM ${S}.idem_begin($1, $2::jsonb)`,
};
const finish = { name: 'ext_finish', text: `SELECT ${S}.idem_finish($1, $2, $3::jsonb)` };

serve('ext_classic', ({ key, text, payment }) =>
  withTransaction(pool, async (client) => {
    const { rows: [begun] } = await client.query({ ...begin, values: [key, text] });
    switch (begun.status) {
      case 'started': {
        const answer = await payOrRefuse(client, key, payment);
        await client.query({ ...finish, values: [key, answer.status, JSON.stringify(answer.body)] });
        return answer;
      }
      default:
        return replyForStatus(begun);
    }
  }),
);
