-- Batch consumer, extension: one idem_once_batch of :n new message ids,
-- in its own transaction.  The ids are unique per transaction (run tag,
-- client, a random value, then 1..n); batch.sh checks that every one was
-- new and recorded.  The array is built server-side, by the same
-- expression as in batch_base.sql.
\set r random(1, 1000000000000000000)
SELECT cardinality(idem_once_batch(ARRAY(SELECT 'x' || :tag || '-' || :client_id || '-' || :r || '-' || g
                                         FROM generate_series(1, :n) g)));
