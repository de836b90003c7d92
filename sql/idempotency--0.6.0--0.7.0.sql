/* idempotency--0.6.0--0.7.0.sql: the key table written as DML writes a table */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.7.0'" to load this file. \quit

-- No SQL object changes: from 0.7.0 the library writes idem_keys through
-- the executor's own row machinery (every ready index, constraints, AFTER
-- ROW triggers), whatever version of the SQL objects is installed.
