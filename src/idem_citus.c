/*
 * idem_citus.c
 *	  Where a call's key lives on Citus (issue #13): the shard of
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
 *	 - a call on a node that holds no placement of the scope's shard
 *	   (0A000): Citus did not delegate it, as for a call inside an
 *	   expression or a PL/pgSQL IF, or it was made on the wrong node;
 *	 - a shard that moved away while the call waited for it (40001).
 *
 * The shard is found as Citus finds it (FindShardInterval): the scope is
 * read as a value of the tenant column's type, hashed with that type's
 * hash function under the column's collation, and looked up in the hash
 * ranges of pg_dist_shard.  Citus's own get_shard_id_for_distribution_column()
 * would need SELECT on idem_tenant_keys, which no application role has:
 * the keys hold every tenant's stored responses.
 *
 * Before it uses a shard, a call takes the lock that Citus's own writers
 * take on the shard's metadata (ShareLock on an advisory locktag of class
 * 4, ADV_LOCKTAG_CLASS_CITUS_SHARD_METADATA in Citus's resource_lock.h).
 * A shard move, split or tenant isolation takes ExclusiveLock on it on
 * every node before it switches the shard over, so a key written here is
 * either committed before the switch (and copied with the shard) or
 * refused after it; the placement is read again once the lock is held.
 *
 * Nothing here runs SQL: the catalogs are read through their indexes with
 * a fresh snapshot, so no operator, function or search_path of a user's
 * changes what is found.
 *
 * On the coordinator, one more thing.  The commit guard (idem_xact.c) runs
 * on the worker, at the worker's commit.  Citus commits a transaction
 * block that wrote one worker in one phase, and reports a failed remote
 * COMMIT as a warning carrying the worker's error, then an error of its own
 * with no SQLSTATE (XX000, "could not commit transaction for shard ...").
 * Nothing is committed either way, but the client would see XX000 where
 * the contract promises the guard's 55000.  So while this node commits, a
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
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "idem_citus.h"
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

/* A shard as a call needs it. */
typedef struct TenantShard
{
	int64		shardid;		/* 0: none holds the hash */
	int32		shard_index;	/* its place among the table's, by hash range */
	int32		min;			/* its hash range's lower end */
}			TenantShard;

/*
 * Is Citus installed in this database?  Asked on every call, so kept; any
 * relation created or dropped (CREATE EXTENSION citus makes dozens) forgets it.
 */
static struct
{
	bool		valid;
	bool		present;
} citus_state;

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
	char		hint[512];
} relayed_guard;

static emit_log_hook_type prev_emit_log_hook = NULL;

static void
RestoreGuardReport(ErrorData *edata)
{
	if (relayed_guard.committing)
	{
		size_t		len = strlen(edata->message ? edata->message : "");
		size_t		tail = strlen(IDEM_UNFINISHED_MSG_TAIL);

		if (edata->elevel == WARNING &&
			edata->sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE &&
			len > tail &&
			strcmp(edata->message + len - tail, IDEM_UNFINISHED_MSG_TAIL) == 0 &&
			strncmp(edata->message, "idempotency key ", 16) == 0)
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
			MemoryContextSwitchTo(old);
			relayed_guard.seen = false;
		}
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

/* Set up the hooks (in every backend that loads the library). */
void
IdemCitusInit(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = RestoreGuardReport;
	RegisterXactCallback(IdemCitusXactCallback, NULL);
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

/* This node's group in Citus's metadata (0 for the coordinator). */
static int32
LocalGroupId(Snapshot snapshot)
{
	Relation	rel = table_open(CitusCatalog("pg_dist_local_group", false), AccessShareLock);
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, NULL);
	HeapTuple	tuple = systable_getnext(scan);
	int32		group = -1;
	bool		isnull = true;

	if (HeapTupleIsValid(tuple))
	{
		Datum		d = heap_getattr(tuple, CitusColumn(rel, "groupid"),
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			group = DatumGetInt32(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return group;
}

/* Has this node a placement of the shard? */
static bool
PlacementIsLocal(int64 shardid, Snapshot snapshot)
{
	int32		group = LocalGroupId(snapshot);
	Relation	rel = table_open(CitusCatalog("pg_dist_placement", false), AccessShareLock);
	AttrNumber	shard_att = CitusColumn(rel, "shardid");
	AttrNumber	group_att = CitusColumn(rel, "groupid");
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		local = false;

	scan = BeginCatalogScan(rel, "pg_dist_placement_shardid_index", shard_att,
							F_INT8EQ, Int64GetDatum(shardid), snapshot, &skey);
	while (!local && HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, group_att, RelationGetDescr(rel), &isnull);

		local = !isnull && DatumGetInt32(d) == group;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return local;
}

/*
 * The shard of a distributed table whose hash range holds hash (shardid 0
 * for none): what Citus's FindShardInterval finds for a hash-distributed
 * table, with its index in the table's shards sorted by range, as Citus's
 * metadata cache numbers them.
 */
static TenantShard
ShardOfHash(Oid table, int32 hash, Snapshot snapshot)
{
	Relation	rel = table_open(CitusCatalog("pg_dist_shard", false), AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	AttrNumber	shard_att = CitusColumn(rel, "shardid");
	AttrNumber	min_att = CitusColumn(rel, "shardminvalue");
	AttrNumber	max_att = CitusColumn(rel, "shardmaxvalue");
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	TenantShard found = {0, 0, 0};
	int			nmins = 0;
	int			maxmins = 64;
	int32	   *mins = palloc(maxmins * sizeof(int32));

	scan = BeginCatalogScan(rel, "pg_dist_shard_logical_relid_index",
							CitusColumn(rel, "logicalrelid"), F_OIDEQ,
							ObjectIdGetDatum(table), snapshot, &skey);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		min_null,
					max_null,
					id_null;
		Datum		min_d = heap_getattr(tuple, min_att, desc, &min_null);
		Datum		max_d = heap_getattr(tuple, max_att, desc, &max_null);
		Datum		id = heap_getattr(tuple, shard_att, desc, &id_null);
		int32		min;

		CHECK_FOR_INTERRUPTS();
		if (min_null || max_null || id_null)
			continue;
		min = pg_strtoint32(TextDatumGetCString(min_d));
		if (nmins == maxmins)
		{
			maxmins *= 2;
			mins = repalloc(mins, maxmins * sizeof(int32));
		}
		mins[nmins++] = min;
		if (found.shardid == 0 && min <= hash &&
			hash <= pg_strtoint32(TextDatumGetCString(max_d)))
		{
			found.shardid = DatumGetInt64(id);
			found.min = min;
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	/* hash ranges do not overlap: the index is the count of lower ranges */
	for (int i = 0; i < nmins; i++)
		if (mins[i] < found.min)
			found.shard_index++;
	pfree(mins);
	return found;
}

/* The colocation group of a distributed table (0 for none). */
static uint32
ColocationOf(Oid table, Snapshot snapshot)
{
	Relation	rel = table_open(CitusCatalog("pg_dist_partition", false), AccessShareLock);
	AttrNumber	colocation_att = CitusColumn(rel, "colocationid");
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	uint32		colocation = 0;

	scan = BeginCatalogScan(rel, "pg_dist_partition_logical_relid_index",
							CitusColumn(rel, "logicalrelid"), F_OIDEQ,
							ObjectIdGetDatum(table), snapshot, &skey);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, colocation_att, RelationGetDescr(rel), &isnull);

		if (!isnull)
			colocation = DatumGetUInt32(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return colocation;
}

/* The error context of reading a scope as a tenant. */
static void
ScopeAsTenantContext(void *arg)
{
	errcontext("reading idempotency scope \"%s\" as a tenant of idem_tenant_keys",
			   (const char *) arg);
}

/*
 * The scope as a value of the tenant column's type, and its hash as Citus
 * hashes it.  An input function runs as the caller and may raise its own
 * error (22P02 for "abc" as a bigint): the scope is not a tenant.
 */
static Datum
TenantOfScope(Oid shell, const text *scope, int32 *hash)
{
	Oid			type;
	int32		typmod;
	Oid			collation;
	Oid			infunc;
	Oid			ioparam;
	char	   *cstr = text_to_cstring(scope);
	ErrorContextCallback errcb;
	TypeCacheEntry *tc;
	Datum		tenant;

	get_atttypetypmodcoll(shell, IDEM_TENANT_ATTNUM, &type, &typmod, &collation);
	getTypeInputInfo(type, &infunc, &ioparam);
	errcb.callback = ScopeAsTenantContext;
	errcb.arg = cstr;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	tenant = OidInputFunctionCall(infunc, cstr, ioparam, typmod);
	error_context_stack = errcb.previous;

	tc = lookup_type_cache(type, TYPECACHE_HASH_PROC_FINFO);
	if (!OidIsValid(tc->hash_proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("type %s of the tenant column has no hash function",
						format_type_be(type))));
	*hash = DatumGetInt32(FunctionCall1Coll(&tc->hash_proc_finfo, collation, tenant));
	return tenant;
}

/*
 * The shard of a tenant hash, whether this node has a placement of it, and
 * the locktag that Citus's writers and shard moves lock it by.
 */
static int64
FindShard(Oid shell, int32 hash, bool *local, LOCKTAG *tag)
{
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	TenantShard shard = ShardOfHash(shell, hash, snapshot);
	uint32		colocation;

	*local = shard.shardid != 0 && PlacementIsLocal(shard.shardid, snapshot);
	colocation = ColocationOf(shell, snapshot);
	if (colocation != 0)
		SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) shard.shard_index,
							 colocation, CITUS_COLOCATED_SHARDS_METADATA_LOCK_CLASS);
	else
		SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (shard.shardid >> 32),
							 (uint32) shard.shardid, CITUS_SHARD_METADATA_LOCK_CLASS);
	UnregisterSnapshot(snapshot);
	return shard.shardid;
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
 * Where the call's key lives: local (the extension's idem_keys) without
 * Citus, or on Citus the shard of the scope's tenant in *shard, locked
 * against moves until the transaction ends.  On Citus *scope becomes the
 * tenant's own text ('42' for '042' as a bigint), so that two spellings of
 * one tenant are one scope.
 */
const IdemStoreOids *
IdemCitusStoreFor(const IdemStoreOids *local, text **scope,
				  IdemStoreOids *shard)
{
	Oid			shell;
	Datum		tenant;
	int32		hash;
	int64		shardid;
	bool		is_local;
	LOCKTAG		tag;
	Oid			outfunc;
	bool		varlena;

	if (!IdemCitusPresent())
		return local;

	shell = get_relname_relid(IDEM_TENANT_TABLE_NAME, local->nspid);
	if (!OidIsValid(shell) || get_rel_relkind(shell) != RELKIND_RELATION ||
		get_attnum(shell, "tenant") != IDEM_TENANT_ATTNUM)
		ReportNotSetUp(local->nspid);
	if (VARSIZE_ANY_EXHDR(*scope) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency scope must name a tenant on Citus"),
				 errdetail("A key lives with its tenant's shard; the empty scope is no tenant."),
				 errhint("Pass the tenant, the value of the distribution column of the table given to idem_citus_setup(), as the scope.")));

	tenant = TenantOfScope(shell, *scope, &hash);
	getTypeOutputInfo(get_atttype(shell, IDEM_TENANT_ATTNUM), &outfunc, &varlena);
	*scope = cstring_to_text(OidOutputFunctionCall(outfunc, tenant));
	if (VARSIZE_ANY_EXHDR(*scope) > IDEM_SCOPE_MAX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency scope is too long"),
				 errdetail("As a tenant it is %d bytes; the limit is %d bytes.",
						   (int) VARSIZE_ANY_EXHDR(*scope), IDEM_SCOPE_MAX_LEN)));
	shardid = FindShard(shell, hash, &is_local, &tag);
	if (shardid == 0)
		ReportNotSetUp(local->nspid);	/* not distributed: made by hand */
	if (!is_local)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the key of idempotency scope \"%s\" is not on this node",
						text_to_cstring(*scope)),
				 errdetail("Its tenant's shard " INT64_FORMAT " has no placement on this node, so the key would commit apart from the tenant's writes.",
						   shardid),
				 errhint("Call the function from the coordinator in a statement of its own, SELECT f(...) or SELECT * FROM f(...), with the scope as a %s, so that Citus delegates it to the tenant's node; Citus does not delegate a call inside an expression or a PL/pgSQL condition.",
						 format_type_be(get_atttype(shell, IDEM_TENANT_ATTNUM)))));

	/* what Citus's writers take; a move or split takes ExclusiveLock */
	if (!RecoveryInProgress() &&
		LockAcquire(&tag, ShareLock, false, false) != LOCKACQUIRE_ALREADY_HELD)
	{
		int64		again;
		LOCKTAG		tag_again;

		/* a move or split that held the lock has committed: look again */
		AcceptInvalidationMessages();
		again = FindShard(shell, hash, &is_local, &tag_again);
		if (again != shardid || !is_local)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("the shard of idempotency scope \"%s\" moved while this call waited for it",
							text_to_cstring(*scope)),
					 errhint("Retry the transaction: Citus sends it to the shard's new node.")));
	}

	if (!IdemStoreResolveShard(local->nspid, shardid, RelationOwner(shell), shard))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("shard " INT64_FORMAT " of \"%s\" has a placement on this node but no table",
						shardid, IDEM_TENANT_TABLE_NAME)));
	shard->tenant = tenant;
	return shard;
}

/*
 * The shards of idem_tenant_keys that this node holds, for the sweeper and
 * idem_sweep(): a list of palloc'd IdemStoreOids.  Empty without Citus.
 */
List *
IdemCitusLocalShards(const IdemStoreOids *local)
{
	Oid			shell;
	Oid			owner;
	Snapshot	snapshot;
	Relation	rel;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	AttrNumber	shard_att;
	List	   *shards = NIL;

	if (!IdemCitusPresent())
		return NIL;
	shell = get_relname_relid(IDEM_TENANT_TABLE_NAME, local->nspid);
	if (!OidIsValid(shell))
		return NIL;
	owner = RelationOwner(shell);

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	rel = table_open(CitusCatalog("pg_dist_shard", false), AccessShareLock);
	shard_att = CitusColumn(rel, "shardid");
	scan = BeginCatalogScan(rel, "pg_dist_shard_logical_relid_index",
							CitusColumn(rel, "logicalrelid"), F_OIDEQ,
							ObjectIdGetDatum(shell), snapshot, &skey);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		id = heap_getattr(tuple, shard_att, RelationGetDescr(rel), &isnull);
		IdemStoreOids *oids;

		CHECK_FOR_INTERRUPTS();
		if (isnull)
			continue;
		oids = palloc0(sizeof(IdemStoreOids));
		if (IdemStoreResolveShard(local->nspid, DatumGetInt64(id), owner, oids))
			shards = lappend(shards, oids);
		else
			pfree(oids);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	UnregisterSnapshot(snapshot);
	return shards;
}
