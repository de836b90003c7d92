-- Replay path inside the server: 2,000 idem_begin calls on completed keys
-- (p-1 .. p-NKEYS, NKEYS >= 1000) in one statement, so that what is timed is
-- the calls and not the round trips: the cost of reading the clock is the
-- largest share it can be.  overhead.sh checks every call was timed.
\set base random(0, :nkeys - 1000)
SELECT count(*) FROM generate_series(1, 2000) g,
       LATERAL idem_begin('p-' || (:base + g % 1000 + 1), '{"amount": 500, "to": "acct_42"}'::jsonb) b
 WHERE b.status = 'replay';
