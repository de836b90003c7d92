/*
 * idem_citus.c
 *	  Where a call's key lives on Citus: the shard of
 *	  idem_tenant_keys that holds the call's tenant, on this node.
 *
 * On a plain server every key is in the extension's own idem_keys.  Once
 * Citus is installed in the database, that table is the wrong place for
 * any key that guards writes to a distributed table: Citus commits a
 * worker's transaction apart from the coordinator's (with no two-phase
 * commit when one worker is written, since it does not see our writes),
 * so a crash between the two commits leaves the work done and the key
 * absent, and the retry does the work again.  So with Citus a call finds
 * its key in idem_tenant_keys, a distributed table colocated with the
 * tenant's table (idem_citus_setup() in the install script makes it and
 * has Citus delegate every call to the node of the call's scope), in the
 * shard that holds the tenant, on the node where the tenant's writes are,
 * in the same local transaction.  Anything else is refused, never guessed:
 *
 *	 - Citus without idem_tenant_keys: not set up (55000);
 *	 - a call on a node that holds no placement of the scope's shard, and
 *	   no copy of it either (0A000): Citus did not delegate it, as for a
 *	   call inside an expression or a PL/pgSQL IF, or it was made on the
 *	   wrong node;
 *	 - a shard that moved away, while the call waited for it or just before
 *	   Citus's call reached the node it left, whose old copy is still there
 *	   (40001: every refusal of a moved shard);
 *	 - an extension schema that a non-superuser owns or may create in
 *	   (42501), a key table a non-superuser owns (42809), a tenant type
 *	   whose text is not one spelling per tenant (0A000).
 *
 * The shard is found as Citus finds it (FindShardInterval): the scope is
 * read as a value of the tenant column's type, hashed with that type's
 * hash function under the column's collation, and looked up in the hash
 * ranges of pg_dist_shard.  Citus's own get_shard_id_for_distribution_column()
 * would need SELECT on idem_tenant_keys, which no application role has:
 * the keys hold every tenant's stored responses.
 *
 * Before it uses a shard, a call takes the lock that Citus's own writers
 * take on the shard's metadata: ShareLock on the advisory locktag of
 * Citus's SetLocktagForShardDistributionMetadata (resource_lock.h: class 8
 * with the colocation group and the shard's index, class 4 with the shard
 * id for a table in no group).  A shard move, split or tenant isolation
 * takes ExclusiveLock on it on every node before it switches the shard
 * over, so a key written here is either committed before the switch (and
 * copied with the shard) or refused after it: the placement is read again
 * once the lock is held.  The lock is taken before the placement decides
 * anything (see IdemCitusStoreFor), so a call on the shard's new node that
 * has not yet committed the move waits for it rather than being refused.
 *
 * Nothing here runs SQL: the catalogs are read through their indexes with
 * a fresh snapshot, so no operator, function or search_path of a user's
 * changes what is found.  What is read is kept per backend (the shard
 * map, below) until Citus's own invalidations say it changed.
 *
 * On the coordinator, one more thing.  The commit guard (idem_xact.c) runs
 * on the worker, at the worker's commit.  Citus commits a transaction
 * block that wrote one worker in one phase, and reports a failed remote
 * COMMIT as a warning carrying the worker's error, then an error of its own
 * with no SQLSTATE (XX000, "could not commit transaction for shard ...").
 * Nothing is committed either way, but the client would see XX000 where
 * the specification promises the guard's 55000.  So while this node commits, a
 * relayed warning of the guard is remembered, and the internal error that
 * follows it is reported as the guard's own: its SQLSTATE, message and
 * hint, with Citus's message as the detail.  That is done in emit_log_hook,
 * PostgreSQL's hook on every report, before the report leaves the server.
 * (Citus offers no public way to ask for two-phase commit, whose failed
 * PREPARE would carry the worker's error as it is.)
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "utils/acl.h"
#include "utils/elog.h"
#include "utils/memutils.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"

#include "idem_citus.h"
#include "idem_guc.h"
#include "idem_inval.h"
#include "idem_xact.h"

/*
 * Citus's advisory locktag classes for a shard's metadata
 * (distributed/resource_lock.h): ADV_LOCKTAG_CLASS_CITUS_SHARD_METADATA for
 * a shard of a table in no colocation group,
 * ADV_LOCKTAG_CLASS_CITUS_COLOCATED_SHARDS_METADATA for the shards at one
 * index of a colocation group (SetLocktagForShardDistributionMetadata).
 */
#define CITUS_SHARD_METADATA_LOCK_CLASS 4
#define CITUS_COLOCATED_SHARDS_METADATA_LOCK_CLASS 8


/*
 * Is Citus installed in this database?  Asked on every call, so kept; any
 * relation created or dropped (CREATE EXTENSION citus makes dozens) forgets
 * it.
 */
static struct
{
	bool		valid;
	bool		present;
}			citus_state;

static void
ForgetCitusState(Datum arg, int cacheid, uint32 hashvalue)
{
	citus_state.valid = false;
}

bool
IdemCitusPresent(void)
{
	static bool callback_registered = false;

	if (!callback_registered)
	{
		CacheRegisterSyscacheCallback(RELNAMENSP, ForgetCitusState, (Datum) 0);
		callback_registered = true;
	}
	if (!citus_state.valid)
	{
		citus_state.present = OidIsValid(get_extension_oid("citus", true));
		citus_state.valid = true;
	}
	return citus_state.present;
}

/*
 * The commit guard's report relayed by Citus, from a worker, while this
 * node commits (see the header).  Static, as a log hook must not fail.
 */
static struct
{
	bool		committing;		/* between our PRE_COMMIT and the end */
	bool		seen;
	char		message[512];
	char		hint[1024];
}			relayed_guard;

static emit_log_hook_type prev_emit_log_hook = NULL;

/* Is this report the commit guard's (idem_xact.c), from whichever node? */
static bool
IsGuardReport(const ErrorData *edata)
{
	size_t		len = strlen(edata->message ? edata->message : "");
	size_t		tail = strlen(IDEM_UNFINISHED_MSG_TAIL);

	return edata->sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE &&
		len > tail &&
		strcmp(edata->message + len - tail, IDEM_UNFINISHED_MSG_TAIL) == 0 &&
		strncmp(edata->message, "idempotency key ", 16) == 0;
}

/*
 * The guard's error, where this session has idempotency.unfinished =
 * release: this node's own guard would have released the key, so it was
 * another node's, and that node's session setting applied.  Say so, after
 * whatever detail the report has.
 */
#define IDEM_RELEASE_NOT_HERE_DETAIL \
	"idempotency.unfinished is \"release\" in this session, but the key was begun on another node of the Citus cluster, where the setting of Citus's own session applies."

static void
AddReleaseNotHereDetail(ErrorData *edata)
{
	if (idem_unfinished_action != IDEM_UNFINISHED_RELEASE)
		return;
	edata->detail = edata->detail ?
		psprintf("%s\n%s", edata->detail, IDEM_RELEASE_NOT_HERE_DETAIL) :
		pstrdup(IDEM_RELEASE_NOT_HERE_DETAIL);
}

static void
RestoreGuardReport(ErrorData *edata)
{
	if (relayed_guard.committing)
	{
		if (edata->elevel == WARNING && IsGuardReport(edata))
		{
			strlcpy(relayed_guard.message, edata->message, sizeof(relayed_guard.message));
			strlcpy(relayed_guard.hint, edata->hint ? edata->hint : "",
					sizeof(relayed_guard.hint));
			relayed_guard.seen = true;
		}
		else if (relayed_guard.seen && edata->elevel >= ERROR &&
				 edata->sqlerrcode == ERRCODE_INTERNAL_ERROR)
		{
			MemoryContext old = MemoryContextSwitchTo(ErrorContext);

			edata->detail = psprintf("Citus reported: %s", edata->message);
			edata->message = pstrdup(relayed_guard.message);
			edata->hint = relayed_guard.hint[0] ? pstrdup(relayed_guard.hint) : NULL;
			edata->sqlerrcode = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
			AddReleaseNotHereDetail(edata);
			MemoryContextSwitchTo(old);
			relayed_guard.seen = false;
		}
	}
	else if (edata->elevel >= ERROR && idem_unfinished_action == IDEM_UNFINISHED_RELEASE &&
			 IsGuardReport(edata))
	{
		/* a call Citus delegated in autocommit: the worker's own commit */
		MemoryContext old = MemoryContextSwitchTo(ErrorContext);

		AddReleaseNotHereDetail(edata);
		MemoryContextSwitchTo(old);
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * Runs before Citus's own callback at PRE_COMMIT: Citus is loaded first
 * (it insists), and a later callback is called earlier.
 */
static void
IdemCitusXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			relayed_guard.committing = true;
			relayed_guard.seen = false;
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			relayed_guard.committing = false;
			relayed_guard.seen = false;
			break;
		default:
			break;
	}
}

/*
 * ALTER EXTENSION idempotency UPDATE on a coordinator that is set up: the
 * functions are delegated again once the whole command has run, Citus's
 * part of it included.  Citus runs the update on the workers after the
 * coordinator's own command, event triggers and all (its utility hook sends
 * the command on when PostgreSQL's returns), and delegating a function the
 * workers do not have yet fails there ("function ... does not exist").  So
 * idem_citus_distribute(), which the setup's event trigger calls at the end
 * of the coordinator's part, only asks for it there
 * (idem_citus_distribute_later()), and this hook, which wraps Citus's (the
 * library is loaded after Citus), calls it again when the outermost such
 * command returns, in its transaction, on the connections Citus updated
 * the workers on.  If that fails, the command fails, and the
 * update is undone on every node: no version runs with functions Citus
 * does not delegate.
 */
static void CheckSchemaIsSuperusers(Oid nspid);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static int	alter_extension_depth = 0;	/* ALTER EXTENSION idempotency running */
static Oid	distribute_later_nsp = InvalidOid;	/* asked for, in this schema */

static bool
IsAlterOfThisExtension(Node *stmt)
{
	if (stmt == NULL)
		return false;
	if (IsA(stmt, AlterExtensionStmt))
		return strcmp(((AlterExtensionStmt *) stmt)->extname, "idempotency") == 0;
	if (IsA(stmt, AlterExtensionContentsStmt))
		return strcmp(((AlterExtensionContentsStmt *) stmt)->extname, "idempotency") == 0;
	return false;
}

static void
DistributeAgainContext(void *arg)
{
	errcontext("delegating the functions of extension \"idempotency\" again after ALTER EXTENSION");
}

/* Run nspid's idem_citus_distribute(), the extension's own. */
static void
DistributeAgain(Oid nspid)
{
	Oid			extoid = get_extension_oid("idempotency", true);
	char	   *nsp = get_namespace_name(nspid);
	Oid			fn;
	ErrorContextCallback errcb;

	if (!OidIsValid(extoid) || nsp == NULL)
		return;					/* dropped by the same command */
	fn = LookupFuncName(list_make2(makeString(nsp), makeString("idem_citus_distribute")),
						0, NULL, true);
	if (!OidIsValid(fn) || getExtensionOfObject(ProcedureRelationId, fn) != extoid)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s.idem_citus_distribute() of extension \"idempotency\" does not exist",
						quote_identifier(nsp))));
	CheckSchemaIsSuperusers(nspid);

	errcb.callback = DistributeAgainContext;
	errcb.arg = NULL;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(psprintf("SELECT pg_catalog.count(*) FROM %s.idem_citus_distribute()",
							 quote_identifier(nsp)), false, 0) != SPI_OK_SELECT)
		elog(ERROR, "idem_citus_distribute() failed");
	SPI_finish();
	error_context_stack = errcb.previous;
}

static void
IdemCitusProcessUtility(PlannedStmt *pstmt, const char *queryString,
						bool readOnlyTree, ProcessUtilityContext context,
						ParamListInfo params, QueryEnvironment *queryEnv,
						DestReceiver *dest, QueryCompletion *qc)
{
	volatile bool ours = IsAlterOfThisExtension(pstmt->utilityStmt);

	if (ours)
	{
		if (alter_extension_depth == 0)
			distribute_later_nsp = InvalidOid;
		alter_extension_depth++;
	}
	PG_TRY();
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		if (ours)
			alter_extension_depth--;
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (!ours)
		return;
	alter_extension_depth--;

	if (alter_extension_depth == 0 && OidIsValid(distribute_later_nsp))
	{
		Oid			nspid = distribute_later_nsp;

		distribute_later_nsp = InvalidOid;
		DistributeAgain(nspid);
	}
}

/*
 * idem_citus_distribute_later(): called first by idem_citus_distribute().
 * True inside ALTER EXTENSION idempotency (the event trigger's call, at the
 * end of the coordinator's part): this library calls idem_citus_distribute()
 * again once the command has run on every node, and the first call returns
 * at once.  False otherwise (the setup, this library's own call, or a
 * command that did not pass through this library, which was loaded during
 * it): idem_citus_distribute() delegates at once, as 0.6.0's did.
 */
PG_FUNCTION_INFO_V1(idem_citus_distribute_later);

Datum
idem_citus_distribute_later(PG_FUNCTION_ARGS)
{
	if (alter_extension_depth == 0)
		PG_RETURN_BOOL(false);
	distribute_later_nsp = get_func_namespace(fcinfo->flinfo->fn_oid);
	PG_RETURN_BOOL(true);
}

/*
 * The commit guard's hint on Citus (idem_xact.c), or NULL without Citus:
 * the guard runs on the node that holds the key, in the session Citus
 * opened there, where a SET on the coordinator does not reach.
 */
const char *
IdemCitusUnfinishedHint(bool prepare)
{
	if (!IdemCitusPresent())
		return NULL;
	return prepare ?
		"Call idem_finish() or idem_release() before PREPARE TRANSACTION. On Citus idempotency.unfinished is read on the node that holds the key, where a SET on the coordinator does not reach: set it with ALTER ROLE ... SET on the coordinator (Citus sets it on every node), or with SET LOCAL in the transaction block while citus.propagate_set_commands is \"local\"." :
		"Call idem_finish() or idem_release() before COMMIT. On Citus idempotency.unfinished is read on the node that holds the key, where a SET on the coordinator does not reach: set it with ALTER ROLE ... SET on the coordinator (Citus sets it on every node), or with SET LOCAL in the transaction block while citus.propagate_set_commands is \"local\".";
}

/*
 * Set up the hooks, in a backend where Citus's library is loaded: Citus
 * insists on coming first in shared_preload_libraries, so its settings
 * exist by the time this library loads.  Without it, no report is Citus's
 * to restore and no command Citus's to follow, and a server without Citus
 * runs none of this.
 */
void
IdemCitusInit(void)
{
	if (GetConfigOption("citus.shard_count", true, false) == NULL)
		return;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = RestoreGuardReport;
	RegisterXactCallback(IdemCitusXactCallback, NULL);
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = IdemCitusProcessUtility;
}

/* A relation of Citus's in pg_catalog (only a superuser can make one there). */
static Oid
CitusCatalog(const char *name, bool missing_ok)
{
	Oid			relid = get_relname_relid(name, PG_CATALOG_NAMESPACE);

	if (!OidIsValid(relid) && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("Citus catalog \"pg_catalog.%s\" does not exist", name),
				 errhint("This version of Citus is not one extension \"idempotency\" knows.")));
	return relid;
}

/* The number of a column of a Citus catalog, by name: they change between versions. */
static AttrNumber
CitusColumn(Relation rel, const char *name)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(rel), name);

	if (attnum == InvalidAttrNumber)
		elog(ERROR, "Citus catalog \"%s\" has no column \"%s\"",
			 RelationGetRelationName(rel), name);
	return attnum;
}

/* Begin a scan of a Citus catalog by one key, through its index if it has it. */
static SysScanDesc
BeginCatalogScan(Relation rel, const char *index, AttrNumber attnum,
				 RegProcedure eqproc, Datum value, Snapshot snapshot,
				 ScanKey skey)
{
	Oid			indexid = CitusCatalog(index, true);

	/* systable_beginscan maps the heap column to the index's */
	ScanKeyInit(skey, attnum, BTEqualStrategyNumber, eqproc, value);
	return systable_beginscan(rel, indexid, OidIsValid(indexid), snapshot, 1, skey);
}

/* The owner of a relation. */
static Oid
RelationOwner(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * The tenant types whose text is one spelling per value, in every session
 * (no time zone, DateStyle or locale in it), whose equality is that of the
 * text, and whose input, output and hash functions are PostgreSQL's own:
 * a key is (scope, key) with the scope the tenant's text, so for any other
 * type (numeric's 1.0 and 1, citext's Acme and ACME, a domain whose CHECK
 * a database owner wrote) one tenant could have two scopes, and one key two
 * records.  idem_citus_setup() refuses the others too.
 */
static void
CheckTenantType(Oid type, Oid collation)
{
	switch (type)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case UUIDOID:
			return;
		case TEXTOID:
		case VARCHAROID:
			if (!OidIsValid(collation) || get_collation_isdeterministic(collation))
				return;
			break;
		default:
			break;
	}
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("a tenant of type %s is not supported", format_type_be(type)),
			 errdetail("Tenants are smallint, integer, bigint, uuid, text or varchar (with a deterministic collation), whose text is one spelling per tenant.")));
}

/*
 * Raise 42501 unless only superusers may create in the extension's schema,
 * and a superuser owns it.  The setup's table, overloads and views are not
 * the extension's members (Citus would not make a member table's shell on
 * the workers), and a schema's owner may drop anything in it: the keys, or
 * an overload, to put one of hers in its place that every caller then
 * runs.  The schema public belongs to the database's owner.
 */
static Oid
EffectiveRole(Oid role)
{
	if (role == ROLE_PG_DATABASE_OWNER)
	{
		HeapTuple	tuple = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(MyDatabaseId));

		if (HeapTupleIsValid(tuple))
		{
			role = ((Form_pg_database) GETSTRUCT(tuple))->datdba;
			ReleaseSysCache(tuple);
		}
	}
	return role;
}

static bool
SchemaIsSuperusers(Oid nspid)
{
	HeapTuple	tuple = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nspid));
	Oid			owner;
	bool		others_create = false;
	bool		isnull;
	Datum		acl_datum;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for schema %u", nspid);
	owner = ((Form_pg_namespace) GETSTRUCT(tuple))->nspowner;
	acl_datum = SysCacheGetAttr(NAMESPACEOID, tuple, Anum_pg_namespace_nspacl, &isnull);
	if (!isnull)
	{
		Acl		   *acl = DatumGetAclP(acl_datum);
		AclItem    *items = ACL_DAT(acl);

		for (int i = 0; i < ACL_NUM(acl); i++)
		{
			Oid			grantee = items[i].ai_grantee;

			if ((ACLITEM_GET_PRIVS(items[i]) & ACL_CREATE) &&
				(grantee == ACL_ID_PUBLIC || !superuser_arg(EffectiveRole(grantee))))
			{
				others_create = true;	/* ACL_ID_PUBLIC is InvalidOid */
				break;
			}
		}
	}
	ReleaseSysCache(tuple);
	return superuser_arg(EffectiveRole(owner)) && !others_create;
}

static void
CheckSchemaIsSuperusers(Oid nspid)
{
	if (SchemaIsSuperusers(nspid))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("schema \"%s\" of extension \"idempotency\" is not a superuser's alone",
					get_namespace_name(nspid)),
			 errdetail("On Citus the keys and the overloads idem_citus_setup() makes live in it, and a role that owns it or may create in it could drop or replace them."),
			 errhint("Install the extension in a schema that a superuser owns and no one else may create in: CREATE SCHEMA idem; CREATE EXTENSION idempotency SCHEMA idem.")));
}

static void ReportNotSetUp(Oid nspid);

/*
 * What a call needs of Citus's metadata about idem_tenant_keys, read once
 * and kept: the hash range, index and locality of each shard, the
 * colocation group, and how to read a scope as a tenant.  Citus sends a
 * relcache invalidation of a distributed table whenever a row of it in
 * pg_dist_shard, pg_dist_placement or pg_dist_partition changes (the
 * triggers its own metadata cache relies on), and of pg_dist_local_group
 * when that changes; either forgets the map, as does any relation created,
 * dropped or renamed (ForgetCitusState).  A call reads the map again after
 * it holds the shard's lock (see IdemCitusStoreFor).
 */
typedef struct ShardMapEntry
{
	int32		min;			/* its hash range */
	int32		max;
	int64		shardid;
	int32		index;			/* its place among the shards, by range */
	bool		local;			/* this node holds a placement of it */
} ShardMapEntry;

static struct
{
	bool		valid;
	uint64		invalidations;	/* counted, for a build that one overtook */
	Oid			shell;			/* idem_tenant_keys */
	Oid			owner;			/* its owner, and its shards' */
	Oid			local_group_rel;	/* pg_dist_local_group */
	uint32		colocation;
	int			nshards;
	ShardMapEntry *shards;		/* sorted by min */
	Oid			type;			/* the tenant column's */
	int32		typmod;
	Oid			collation;
	Oid			infunc;
	Oid			ioparam;
	Oid			outfunc;
	FmgrInfo	hash;			/* the type's hash function */
	MemoryContext cxt;
}			shard_map;

static void
ForgetShardMap(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == shard_map.shell ||
		relid == shard_map.local_group_rel)
	{
		shard_map.valid = false;
		shard_map.invalidations++;
	}
}

/* The extension's schema changed owner or privileges: check it again. */
static void
ForgetShardMapSchema(Datum arg, int cacheid, uint32 hashvalue)
{
	shard_map.valid = false;
	shard_map.invalidations++;
}

static int
CompareShardMapEntries(const void *a, const void *b)
{
	int32		x = ((const ShardMapEntry *) a)->min;
	int32		y = ((const ShardMapEntry *) b)->min;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* One int32 column of the first row of a Citus catalog (pg_dist_local_group). */
static int32
FirstRowInt32(Relation rel, const char *column, Snapshot snapshot)
{
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, NULL);
	HeapTuple	tuple = systable_getnext(scan);
	int32		value = -1;
	bool		isnull = true;

	if (HeapTupleIsValid(tuple))
	{
		Datum		d = heap_getattr(tuple, CitusColumn(rel, column),
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			value = DatumGetInt32(d);
	}
	systable_endscan(scan);
	return value;
}

/* Read the shard map of idem_tenant_keys (shell) from Citus's catalogs. */
static void
BuildShardMap(Oid shell)
{
	static bool callback_registered = false;
	Snapshot	snapshot;
	Relation	rel;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	int32		group;
	int			maxshards = 32;
	MemoryContext old;
	TypeCacheEntry *tc;
	bool		varlena;
	uint64		before;

	if (!callback_registered)
	{
		IdemRegisterRelcacheCallback(ForgetShardMap);
		CacheRegisterSyscacheCallback(NAMESPACEOID, ForgetShardMapSchema, (Datum) 0);
		shard_map.cxt = AllocSetContextCreate(CacheMemoryContext,
											  "idempotency Citus shard map",
											  ALLOCSET_SMALL_SIZES);
		callback_registered = true;
	}
	MemoryContextReset(shard_map.cxt);
	shard_map.valid = false;
	before = shard_map.invalidations;
	/* a table of that name but not of idem_citus_setup()'s making */
	if (get_rel_relkind(shell) != RELKIND_RELATION ||
		get_attnum(shell, "tenant") != IDEM_TENANT_ATTNUM)
		ReportNotSetUp(get_rel_namespace(shell));
	shard_map.shell = shell;
	shard_map.owner = RelationOwner(shell);
	CheckSchemaIsSuperusers(get_rel_namespace(shell));
	shard_map.local_group_rel = CitusCatalog("pg_dist_local_group", false);

	/* the tenant: its type, and how to read, write and hash it */
	get_atttypetypmodcoll(shell, IDEM_TENANT_ATTNUM, &shard_map.type,
						  &shard_map.typmod, &shard_map.collation);
	CheckTenantType(shard_map.type, shard_map.collation);
	getTypeInputInfo(shard_map.type, &shard_map.infunc, &shard_map.ioparam);
	getTypeOutputInfo(shard_map.type, &shard_map.outfunc, &varlena);
	tc = lookup_type_cache(shard_map.type, TYPECACHE_HASH_PROC_FINFO);
	if (!OidIsValid(tc->hash_proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("type %s of the tenant column has no hash function",
						format_type_be(shard_map.type))));
	fmgr_info_copy(&shard_map.hash, &tc->hash_proc_finfo, shard_map.cxt);

	snapshot = RegisterSnapshot(GetLatestSnapshot());

	rel = table_open(shard_map.local_group_rel, AccessShareLock);
	group = FirstRowInt32(rel, "groupid", snapshot);
	table_close(rel, AccessShareLock);

	/* the colocation group: part of the shards' lock tag */
	rel = table_open(CitusCatalog("pg_dist_partition", false), AccessShareLock);
	scan = BeginCatalogScan(rel, "pg_dist_partition_logical_relid_index",
							CitusColumn(rel, "logicalrelid"), F_OIDEQ,
							ObjectIdGetDatum(shell), snapshot, &skey);
	shard_map.colocation = 0;
	if (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, CitusColumn(rel, "colocationid"),
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			shard_map.colocation = DatumGetUInt32(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	/* the shards and their hash ranges */
	old = MemoryContextSwitchTo(shard_map.cxt);
	shard_map.shards = palloc(maxshards * sizeof(ShardMapEntry));
	MemoryContextSwitchTo(old);
	shard_map.nshards = 0;
	rel = table_open(CitusCatalog("pg_dist_shard", false), AccessShareLock);
	{
		TupleDesc	desc = RelationGetDescr(rel);
		AttrNumber	shard_att = CitusColumn(rel, "shardid");
		AttrNumber	min_att = CitusColumn(rel, "shardminvalue");
		AttrNumber	max_att = CitusColumn(rel, "shardmaxvalue");

		scan = BeginCatalogScan(rel, "pg_dist_shard_logical_relid_index",
								CitusColumn(rel, "logicalrelid"), F_OIDEQ,
								ObjectIdGetDatum(shell), snapshot, &skey);
		while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		{
			bool		min_null,
						max_null,
						id_null;
			Datum		min_d = heap_getattr(tuple, min_att, desc, &min_null);
			Datum		max_d = heap_getattr(tuple, max_att, desc, &max_null);
			Datum		id = heap_getattr(tuple, shard_att, desc, &id_null);
			ShardMapEntry *e;

			CHECK_FOR_INTERRUPTS();
			if (min_null || max_null || id_null)
				continue;
			if (shard_map.nshards == maxshards)
			{
				maxshards *= 2;
				shard_map.shards = repalloc(shard_map.shards,
											maxshards * sizeof(ShardMapEntry));
			}
			e = &shard_map.shards[shard_map.nshards++];
			e->min = pg_strtoint32(TextDatumGetCString(min_d));
			e->max = pg_strtoint32(TextDatumGetCString(max_d));
			e->shardid = DatumGetInt64(id);
			e->local = false;
		}
		systable_endscan(scan);
	}
	table_close(rel, AccessShareLock);
	qsort(shard_map.shards, shard_map.nshards, sizeof(ShardMapEntry),
		  CompareShardMapEntries);

	/* which of them this node holds */
	rel = table_open(CitusCatalog("pg_dist_placement", false), AccessShareLock);
	{
		AttrNumber	shard_att = CitusColumn(rel, "shardid");
		AttrNumber	group_att = CitusColumn(rel, "groupid");

		for (int i = 0; i < shard_map.nshards; i++)
		{
			ShardMapEntry *e = &shard_map.shards[i];

			e->index = i;
			scan = BeginCatalogScan(rel, "pg_dist_placement_shardid_index", shard_att,
									F_INT8EQ, Int64GetDatum(e->shardid), snapshot, &skey);
			while (!e->local && HeapTupleIsValid(tuple = systable_getnext(scan)))
			{
				bool		isnull;
				Datum		d = heap_getattr(tuple, group_att, RelationGetDescr(rel), &isnull);

				e->local = !isnull && DatumGetInt32(d) == group;
			}
			systable_endscan(scan);
		}
	}
	table_close(rel, AccessShareLock);
	UnregisterSnapshot(snapshot);

	/*
	 * Opening the catalogs accepted invalidations: one that came after the
	 * snapshot (a move that committed meanwhile) means the map may be stale.
	 */
	shard_map.valid = (shard_map.invalidations == before);
}

/* The shard map, read again if an invalidation (or another shell) made it stale. */
static void
RequireShardMap(Oid shell)
{
	while (!shard_map.valid || shard_map.shell != shell)
	{
		CHECK_FOR_INTERRUPTS();
		BuildShardMap(shell);
	}
}

/* The shard whose hash range holds hash, or NULL: Citus's FindShardInterval. */
static const ShardMapEntry *
ShardForHash(int32 hash)
{
	int			lo = 0,
				hi = shard_map.nshards - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		const ShardMapEntry *e = &shard_map.shards[mid];

		if (hash < e->min)
			hi = mid - 1;
		else if (hash > e->max)
			lo = mid + 1;
		else
			return e;
	}
	return NULL;
}

/* The lock tag of a shard's metadata, as Citus's writers and moves lock it. */
static void
SetShardLockTag(LOCKTAG *tag, const ShardMapEntry *e)
{
	if (shard_map.colocation != 0)
		SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) e->index,
							 shard_map.colocation,
							 CITUS_COLOCATED_SHARDS_METADATA_LOCK_CLASS);
	else
		SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (e->shardid >> 32),
							 (uint32) e->shardid, CITUS_SHARD_METADATA_LOCK_CLASS);
}

/* The error context of reading a scope as a tenant. */
static void
ScopeAsTenantContext(void *arg)
{
	errcontext("reading idempotency scope %s as a tenant of idem_tenant_keys",
			   IdemQuoteName((const char *) arg, strlen((const char *) arg)));
}

/*
 * The scope as a value of the tenant column's type, and its hash as Citus
 * hashes it.  An input function runs as the caller and may raise its own
 * error (22P02 for "abc" as a bigint): the scope is not a tenant.
 */
static Datum
TenantOfScope(const text *scope, int32 *hash)
{
	char	   *cstr = text_to_cstring(scope);
	ErrorContextCallback errcb;
	Datum		tenant;

	errcb.callback = ScopeAsTenantContext;
	errcb.arg = cstr;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	tenant = OidInputFunctionCall(shard_map.infunc, cstr, shard_map.ioparam,
								  shard_map.typmod);
	error_context_stack = errcb.previous;
	*hash = DatumGetInt32(FunctionCall1Coll(&shard_map.hash, shard_map.collation,
											tenant));
	return tenant;
}


/*
 * Raise 42809 unless a superuser owns idem_tenant_keys (the one
 * idem_citus_setup() made): a database owner, or any role with CREATE on
 * the extension's schema, could make and distribute a table of that name,
 * and every call would keep its keys there, for that role to read and
 * forge.  A superuser's table is trusted as idem_keys is.
 */
static void
CheckTenantTableOwner(Oid nspid)
{
	if (!superuser_arg(shard_map.owner))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation \"%s.%s\" is not the extension's key table",
						get_namespace_name(nspid), IDEM_TENANT_TABLE_NAME),
				 errdetail("It is owned by role \"%s\", who is not a superuser; idem_citus_setup() makes it as a superuser.",
						   GetUserNameFromId(shard_map.owner, true)),
				 errhint("Drop or rename it, then run idem_citus_setup() as a superuser.")));
}

/* Raise 55000: Citus is here, and the keys have no table with their tenants. */
static void
ReportNotSetUp(Oid nspid)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("extension \"idempotency\" is not set up for Citus"),
			 errdetail("Citus is installed in this database: a key kept in this node's own table would commit apart from the writes to distributed tables that it guards."),
			 errhint("As a superuser on the coordinator, run SELECT %s.idem_citus_setup('<tenant table>'), naming the distributed table whose tenants the scopes are.",
					 quote_identifier(get_namespace_name(nspid)))));
}

/*
 * Is there, on this node, a table of idem_tenant_keys' shard shardid, or of
 * a shard that no longer exists, though the map places neither here?  That
 * is the copy a move or a split left behind, which Citus drops later
 * (citus.defer_shard_delete_interval): the tenant's shard was here a moment
 * ago.  Read only when a call is about to be refused.
 */
static bool
ShardLeftThisNode(Oid nspid, int64 shardid)
{
	IdemStoreOids oids;
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tuple;
	ScanKeyData skey;
	size_t		prefix = strlen(IDEM_TENANT_TABLE_NAME "_");
	bool		found = false;

	if (IdemStoreResolveShard(nspid, shardid, shard_map.owner, &oids))
		return true;

	/* a split: the shard that held the tenant has a new id, or several */
	rel = table_open(RelationRelationId, AccessShareLock);
	ScanKeyInit(&skey, Anum_pg_class_relnamespace, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(nspid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &skey);
	while (!found && HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_class form = (Form_pg_class) GETSTRUCT(tuple);
		const char *name = NameStr(form->relname);
		const char *digits = name + prefix;
		int64		id;
		bool		listed = false;

		if (form->relkind != RELKIND_RELATION || form->relowner != shard_map.owner ||
			strncmp(name, IDEM_TENANT_TABLE_NAME "_", prefix) != 0 ||
			*digits == '\0' || strspn(digits, "0123456789") != strlen(digits))
			continue;
		id = strtoi64(digits, NULL, 10);
		for (int i = 0; i < shard_map.nshards && !listed; i++)
			listed = (shard_map.shards[i].shardid == id);
		found = !listed;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* Raise 40001: the scope's shard is not here because it moved. */
static void
ReportShardMoved(const text *scope, bool waited)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 waited ?
			 errmsg("the shard of idempotency scope %s moved while this call waited for it",
					IdemQuoteName(VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope))) :
			 errmsg("the shard of idempotency scope %s moved away from this node",
					IdemQuoteName(VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope))),
			 waited ? 0 :
			 errdetail("The call was sent here before the move ended; the shard's old copy here is no longer used."),
			 errhint("Retry the transaction: Citus sends it to the shard's new node.")));
}

/*
 * Where the call's key lives: local (the extension's idem_keys) without
 * Citus, or on Citus the shard of the scope's tenant in *shard, locked
 * against moves until the transaction ends.  On Citus *scope becomes the
 * tenant's own text ('42' for '042' as a bigint), so that two spellings of
 * one tenant are one scope.
 *
 * The shard's lock is taken before the placement decides anything, whether
 * or not the map places the shard here: a move holds it (ExclusiveLock, on
 * every node) from before it switches the placement until it commits, and
 * a node commits the switch after the coordinator does (Citus's two-phase
 * commit), so the coordinator may already send the tenant's calls to the
 * new node while that node's own catalog still places the shard on the old
 * one.  Such a call waits here for the move to commit, and reads the map
 * again.  A call that finds the shard gone after all is refused: with
 * 40001 if the shard was here when it began, or if its old copy still is
 * (Citus sent the call on a placement that has just moved away), with
 * 0A000 otherwise (Citus did not delegate the call).
 */
const IdemStoreOids *
IdemCitusStoreFor(const IdemStoreOids *local, text **scope,
				  IdemStoreOids *shard)
{
	Oid			shell;
	Datum		tenant;
	int32		hash;
	const ShardMapEntry *e;
	int64		shardid;
	bool		was_local;
	bool		waited = false;
	LOCKTAG		tag;

	if (!IdemCitusPresent())
		return local;

	shell = get_relname_relid(IDEM_TENANT_TABLE_NAME, local->nspid);
	if (!OidIsValid(shell))
		ReportNotSetUp(local->nspid);
	RequireShardMap(shell);
	CheckTenantTableOwner(local->nspid);
	if (VARSIZE_ANY_EXHDR(*scope) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency scope must name a tenant on Citus"),
				 errdetail("A key lives with its tenant's shard; the empty scope is no tenant."),
				 errhint("Pass the tenant, the value of the distribution column of the table given to idem_citus_setup(), as the scope.")));

	tenant = TenantOfScope(*scope, &hash);
	*scope = cstring_to_text(OidOutputFunctionCall(shard_map.outfunc, tenant));
	if (VARSIZE_ANY_EXHDR(*scope) > IDEM_SCOPE_MAX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency scope is too long"),
				 errdetail("As a tenant it is %d bytes; the limit is %d bytes.",
						   (int) VARSIZE_ANY_EXHDR(*scope), IDEM_SCOPE_MAX_LEN)));
	e = ShardForHash(hash);
	if (e == NULL)
		ReportNotSetUp(local->nspid);	/* not distributed: made by hand */
	was_local = e->local;

	/*
	 * What Citus's writers take; a move or split takes ExclusiveLock.  Once
	 * the lock is ours, a move or split that held it has committed, and its
	 * invalidations came before the lock did: read the map again if they made
	 * it stale, and look again.  A split may give the tenant a shard of
	 * another index, whose lock is taken in turn.
	 */
	for (int tries = 0;; tries++)
	{
		shardid = e->shardid;
		SetShardLockTag(&tag, e);
		if (RecoveryInProgress() ||
			LockAcquire(&tag, ShareLock, false, false) == LOCKACQUIRE_ALREADY_HELD)
			break;
		waited = true;
		AcceptInvalidationMessages();
		RequireShardMap(shell);
		e = ShardForHash(hash);
		if (e == NULL)
			ReportShardMoved(*scope, true);
		if (e->shardid == shardid)
			break;
		if (tries >= 8)
			ReportShardMoved(*scope, true);
	}

	if (!e->local)
	{
		if (was_local)
			ReportShardMoved(*scope, waited);
		if (ShardLeftThisNode(local->nspid, shardid))
			ReportShardMoved(*scope, false);
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the key of idempotency scope %s is not on this node",
						IdemQuoteName(VARDATA_ANY(*scope), VARSIZE_ANY_EXHDR(*scope))),
				 errdetail("Its tenant's shard " INT64_FORMAT " has no placement on this node, so the key would commit apart from the tenant's writes.",
						   shardid),
				 errhint("Call the function from the coordinator in a statement of its own, SELECT f(...) or SELECT * FROM f(...), with the scope as a %s, so that Citus delegates it to the tenant's node; Citus does not delegate a call inside an expression or a PL/pgSQL condition.",
						 format_type_be(shard_map.type))));
	}

	if (!IdemStoreResolveShard(local->nspid, shardid, shard_map.owner, shard))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("shard " INT64_FORMAT " of \"%s\" has a placement on this node but no table",
						shardid, IDEM_TENANT_TABLE_NAME)));
	shard->tenant = tenant;
	return shard;
}

/*
 * The shards of idem_tenant_keys that this node holds: a list of palloc'd
 * IdemStoreOids.  Empty without Citus.
 */
static List *
LocalShards(const IdemStoreOids *local)
{
	Oid			shell;
	List	   *shards = NIL;

	if (!IdemCitusPresent())
		return NIL;
	shell = get_relname_relid(IDEM_TENANT_TABLE_NAME, local->nspid);
	if (!OidIsValid(shell) || !superuser_arg(RelationOwner(shell)) ||
		!SchemaIsSuperusers(local->nspid))
		return NIL;				/* not ours: see CheckTenantTableOwner */

	/* the shards placed here: not the copy a move left for Citus to drop */
	RequireShardMap(shell);
	for (int i = 0; i < shard_map.nshards; i++)
	{
		IdemStoreOids *oids;

		if (!shard_map.shards[i].local)
			continue;
		oids = palloc0(sizeof(IdemStoreOids));
		if (IdemStoreResolveShard(local->nspid, shard_map.shards[i].shardid,
								  shard_map.owner, oids))
			shards = lappend(shards, oids);
		else
			pfree(oids);
	}
	return shards;
}

/*
 * For the sweeper and idem_sweep(), after the extension's own table: up to
 * batch expired keys of the shards this node holds (none without Citus),
 * as IdemStoreSweep sweeps one store, from the start of each.
 */
int64
IdemCitusSweepShards(const IdemStoreOids *local, int64 batch, TimestampTz now,
					 bool *locked_out)
{
	int64		deleted = 0;
	ListCell   *lc;

	foreach(lc, LocalShards(local))
	{
		if (deleted >= batch)
			break;
		deleted += IdemStoreSweep(lfirst(lc), batch - deleted, now, NULL, locked_out);
	}
	return deleted;
}
