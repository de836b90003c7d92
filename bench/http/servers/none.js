// Variant `none`: no idempotency at all, the floor.  One autocommit INSERT per
// request; the key is only written into the payment row.  A retry pays again.
import { makePool, payOrRefuse, serve } from './common.js';

const pool = makePool('none');

serve('none', ({ key, payment }) => payOrRefuse(pool, key, payment));
