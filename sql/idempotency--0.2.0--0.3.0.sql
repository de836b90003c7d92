/* idempotency--0.2.0--0.3.0.sql: what PUBLIC may run (docs/security.md) */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION idempotency UPDATE TO '0.3.0'" to load this file. \quit

-- idem_sweep is maintenance, not part of serving a request: a role that
-- runs it inside a transaction it keeps open holds every expired key it
-- deleted until that transaction ends, and each tenant that begins one of
-- those keys again waits for it.  The sweeper does the same work without
-- anyone's grant.  Only superusers, and the roles an administrator grants
-- EXECUTE to, may run it; grants made to roles before this update stay.
-- The functions that serve requests (idem_begin, idem_finish, idem_release,
-- idem_lease, idem_checkpoint, idem_once, idem_lookup, idem_fingerprint)
-- stay executable by PUBLIC: a caller reaches only the keys it names.
REVOKE EXECUTE ON FUNCTION @extschema@.idem_sweep(pg_catalog.int4) FROM PUBLIC;

-- A REVOKE run by an extension script records the function's whole ACL as
-- its initial privileges (pg_init_privs), grants the administrator made
-- since the install included; pg_dump leaves initial privileges out, so a
-- restore (CREATE EXTENSION at 0.3.0, which grants nobody) would lose them.
-- The initial privileges are set to those of a fresh 0.3.0 install: the
-- owner's alone.  The administrator's grants stay in proacl and are dumped.
UPDATE pg_catalog.pg_init_privs i
   SET initprivs = ARRAY[pg_catalog.makeaclitem(p.proowner, p.proowner, 'EXECUTE', false)]
  FROM pg_catalog.pg_proc p
 WHERE p.oid OPERATOR(pg_catalog.=) '@extschema@.idem_sweep(pg_catalog.int4)'::pg_catalog.regprocedure
   AND i.objoid OPERATOR(pg_catalog.=) p.oid
   AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
   AND i.objsubid OPERATOR(pg_catalog.=) 0;
