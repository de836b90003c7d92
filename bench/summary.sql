-- Summarises one run's CSV (read from psql's stdin).  Used by run.sh.
\set ON_ERROR_STOP on
\pset footer off
\pset null '-'
CREATE TEMP TABLE r (
    round int, config text, pos int, scenario text, duration int, clients int,
    tps float8, txns bigint, failed bigint, wal_bytes numeric, ok boolean,
    lsn_start pg_lsn, lsn_end pg_lsn, note text);
\copy r FROM pstdin WITH (FORMAT csv, HEADER true)

CREATE TEMP VIEW cfg(config, cord) AS VALUES ('sync_commit_on', 1), ('sync_commit_off', 2);
CREATE TEMP VIEW scn(scenario, sord) AS
    VALUES ('ext_write', 1), ('ext_write_nocount', 2), ('base_write', 3), ('base_write_noexp', 4),
           ('ext_replay', 5), ('base_replay', 6);
CREATE TEMP VIEW med AS
    SELECT config, scenario, count(*) AS runs,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY tps) AS med,
           min(tps) AS min, max(tps) AS max,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY wal_bytes / nullif(txns, 0)) AS wal_per_txn,
           max(wal_bytes) AS max_wal_bytes,
           sum(txns) AS txns, sum(failed) AS failed, bool_and(ok) AS ok
      FROM r GROUP BY config, scenario;

\echo
\echo '== TPS per config x scenario (pgbench -M prepared -n; median, min, max over rounds) =='
SELECT m.config, m.scenario, m.runs,
       round(m.med::numeric, 1) AS median_tps, round(m.min::numeric, 1) AS min_tps,
       round(m.max::numeric, 1) AS max_tps,
       round(m.wal_per_txn::numeric, 1) AS wal_bytes_per_txn,
       m.txns, m.failed, m.ok AS checks_ok
  FROM med m JOIN cfg USING (config) JOIN scn USING (scenario)
 ORDER BY cord, sord;

\echo '== Ratios ext/base (ratio of medians; paired = median of per-round ratios) =='
WITH pairs(path, ext, base, target, note) AS (VALUES
        ('write',  'ext_write',  'base_write',       0.90, 'equivalent baseline (has expires_at index, like idem_keys)'),
        ('write',  'ext_write',  'base_write_noexp', 0.90, 'baseline without the expires_at index'),
        ('replay', 'ext_replay', 'base_replay',      0.90, 'bare primary-key SELECT'),
        ('counters', 'ext_write', 'ext_write_nocount', 0.98, 'idem_stats counting on / off: costs at most 2%')),
     paired AS (
        SELECT p.ext, p.base, e.config,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY e.tps / nullif(b.tps, 0)) AS pr
          FROM pairs p
          JOIN r e ON e.scenario = p.ext
          JOIN r b ON b.scenario = p.base AND b.config = e.config AND b.round = e.round
         GROUP BY 1, 2, 3)
SELECT c.config, p.path, p.ext || ' / ' || p.base AS ratio_of,
       round((me.med / nullif(mb.med, 0))::numeric, 3) AS ratio,
       round(pd.pr::numeric, 3) AS paired,
       '>= ' || p.target AS target,
       CASE WHEN me.med / nullif(mb.med, 0) >= p.target THEN 'PASS' ELSE 'FAIL' END AS verdict,
       p.note
  FROM pairs p CROSS JOIN cfg c
  JOIN med me ON me.scenario = p.ext AND me.config = c.config
  JOIN med mb ON mb.scenario = p.base AND mb.config = c.config
  JOIN paired pd ON pd.ext = p.ext AND pd.base = p.base AND pd.config = c.config
 ORDER BY c.cord, p.path DESC, p.base;

\echo '== Replay writes nothing: WAL bytes per replay transaction (pg_wal_lsn_diff around each run) =='
SELECT m.config, m.scenario,
       round(m.wal_per_txn::numeric, 4) AS median_wal_bytes_per_txn,
       m.max_wal_bytes AS max_wal_bytes_in_a_run,
       CASE WHEN m.wal_per_txn < 1 THEN 'PASS (~0)' ELSE 'FAIL' END AS verdict
  FROM med m JOIN cfg USING (config) JOIN scn USING (scenario)
 WHERE m.scenario LIKE '%replay'
 ORDER BY cord, sord;
