-- Replay path, extension: idem_begin on a completed key (p-1 .. p-N, loaded
-- by setup.sql), with the request it was completed with.  One statement, in
-- its own transaction.
\set k random(1, :nkeys)
SELECT * FROM idem_begin('p-' || :k, '{"amount": 500, "to": "acct_42"}'::jsonb);
