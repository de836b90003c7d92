/* idempotency--0.3.0--0.3.1.sql: PostgreSQL 15 to 19 from one tree (CHANGELOG.md) */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.3.1'" to load this file. \quit

-- No SQL object changes: the library changed (src/idem_compat.h; ttl,
-- lease and extend refuse +/-infinity where the server accepts them).
