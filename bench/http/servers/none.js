// Variant `none`: no idempotency at all, the floor.  One autocommit INSERT per
// request; the key is only written into the payment row.  A retry pays again.
import { BUSINESS_ERROR, INSERT_PAYMENT, makePool, serve } from './common.js';

const pool = makePool('none');
const insert = { name: 'none_insert', text: INSERT_PAYMENT };

serve('none', async ({ key, payment }) => {
  if (payment.amount <= 0) return { status: 422, body: BUSINESS_ERROR };
  const { rows: [row] } = await pool.query({ ...insert, values: [key, payment.amount, payment.to] });
  return { status: 201, body: row.response };
});
