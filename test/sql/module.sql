--
-- module: the library as the server reports it.  From 18 on a module can
-- give its name and version to pg_get_loaded_modules(); the library's is
-- the control file's default_version.  module_1.out is the output of 15
-- to 17, which have no such function.
--
SELECT to_regprocedure('pg_get_loaded_modules()') IS NOT NULL AS reports_modules \gset
\echo reports_modules :reports_modules
\if :reports_modules
SELECT m.module_name, m.version = e.default_version AS is_default_version,
       m.file_name ~ '^idempotency' AS file
FROM pg_get_loaded_modules() m, pg_available_extensions e
WHERE e.name = 'idempotency' AND m.file_name ~ '^idempotency';
\endif
