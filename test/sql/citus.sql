--
-- citus: the Citus setup on a server without Citus.  Every
-- call is refused with a clear error and changes nothing; the keys stay
-- in idem_keys; none of it is PUBLIC's.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS idempotency;
DROP ROLE IF EXISTS regress_idem_citus_app;
RESET client_min_messages;
CREATE ROLE regress_idem_citus_app;

\set VERBOSITY sqlstate
SELECT * FROM idem_citus_setup(NULL);
SELECT * FROM idem_citus_setup('idem_keys');
SELECT * FROM idem_citus_distribute();
\set VERBOSITY default
SELECT * FROM idem_citus_setup('idem_keys');

-- nothing was made
SELECT count(*) AS made FROM pg_class
 WHERE relname IN ('idem_tenant_keys', 'idem_citus_failed_keys', 'idem_citus_stats');
SELECT count(*) AS triggers FROM pg_event_trigger WHERE evtname = 'idem_citus_after_update';

-- without Citus, calls use idem_keys as before
BEGIN;
SELECT status FROM idem_begin('citus-1', '{"a": 1}'::jsonb, 'tenant-1');
SELECT idem_finish('citus-1', 201, NULL, 'tenant-1');
COMMIT;
SELECT scope, key, state FROM idem_keys WHERE key = 'citus-1';

-- the setup is a superuser's, its parts are no one else's
SELECT p.oid::regprocedure AS function,
       has_function_privilege('regress_idem_citus_app', p.oid, 'EXECUTE') AS app_may_call
  FROM pg_proc p
 WHERE p.proname IN ('idem_citus_setup', 'idem_citus_distribute', 'idem_citus_after_update',
                     'idem_citus_check_owner', 'idem_citus_distribute_later', 'idem_citus_carry_keys')
 ORDER BY p.proname;
SET ROLE regress_idem_citus_app;
\set VERBOSITY sqlstate
SELECT * FROM idem_citus_setup('idem_keys');
\set VERBOSITY default
RESET ROLE;

DELETE FROM idem_keys WHERE key = 'citus-1';
DROP ROLE regress_idem_citus_app;
