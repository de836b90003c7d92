-- Write path inside the server: 1,000 idem_once calls on new message ids in
-- one statement (one transaction), each a probe, a lock and an insert.
\set r random(1, 1000000000000000000)
SELECT count(*) FROM generate_series(1, 1000) g
 WHERE idem_once('o' || :tag || '-' || :client_id || '-' || :r || '-' || g);
