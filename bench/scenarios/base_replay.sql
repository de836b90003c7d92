-- Replay path, baseline: a bare primary-key SELECT of the same row from the
-- equivalent table.
\set k random(1, :nkeys)
SELECT * FROM base_keys WHERE scope = '' AND key = 'p-' || :k;
