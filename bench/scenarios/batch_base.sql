-- Batch consumer, baseline: the same ids into base_once (idem_keys column
-- for column, with its primary key and expiry index) by one plain
-- INSERT ... ON CONFLICT DO NOTHING RETURNING, the usual hand-written
-- deduplication, in its own transaction.
\set r random(1, 1000000000000000000)
INSERT INTO base_once (created_at, expires_at, state, scope, key)
SELECT now(), now() + interval '7 days', 'c', '', id
  FROM unnest(ARRAY(SELECT 'y' || :tag || '-' || :client_id || '-' || :r || '-' || g
                      FROM generate_series(1, :n) g)) id
ON CONFLICT DO NOTHING
RETURNING key;
