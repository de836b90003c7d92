/*
 * idem_store.c
 *	  The key store: direct heap and index access to idem_keys.
 *
 * Every call would otherwise go through SPI, the planner and the executor
 * for each statement; the whole point of doing this in C is that a begin is
 * one unique-index probe and a finish is one heap insert plus its index
 * entries, the least that any durable record can cost.
 *
 * The table is found through the namespace of the calling function, so the
 * store works in whatever schema the extension was installed in, and no
 * name is ever looked up through the caller's search_path.
 *
 * Probes use a dirty snapshot, as PostgreSQL's own unique checks do: they
 * see rows that other transactions are inserting or deleting right now and
 * report the transaction to wait for.  Visibility to the caller's MVCC
 * snapshot is decided by the caller (idem_api.c).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/itup.h"
#include "access/nbtree.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/indexing.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "optimizer/optimizer.h"
#include "rewrite/prs2lock.h"
#include "rewrite/rewriteDefine.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/syscache.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "idem_compat.h"
#include "idem_inval.h"
#include "idem_lockkey.h"
#include "idem_stats.h"
#include "idem_store.h"
#include "idem_xact.h"

/* Attribute numbers of idem_keys; must match the install script. */
#define Anum_created_at		1
#define Anum_expires_at		2
#define Anum_response_code	3
#define Anum_state			4
#define Anum_scope			5
#define Anum_key			6
#define Anum_fingerprint	7
#define Anum_response_body	8
/* added by version 0.2.0: leases */
#define Anum_lease_token	9
#define Anum_lease_expires_at 10
#define Anum_lease_duration 11
#define Anum_attempts		12
#define Anum_phase			13
#define Anum_phase_state	14
/* added by version 0.4.0: whole responses */
#define Anum_response_headers 15
#define Anum_response_bytes	16
/* and bounded retries */
#define Anum_max_attempts	17
#define Anum_last_error		18
#define Natts_idem_keys		18
#define Natts_idem_keys_0_2	14	/* 0.2.0 to 0.3.1 */
#define Natts_idem_keys_0_1	8

#define IDEM_TABLE_NAME		"idem_keys"
#define IDEM_PKEY_NAME		"idem_keys_pkey"
#define IDEM_EXPIRY_NAME	"idem_keys_expires_at"
#define IDEM_LEASES_NAME	"idem_keys_leases"

/*
 * The 64-bit hash of (scope, key) that names the key's lock: keyed by the
 * cluster's secret, so that no role can read a key back from pg_locks or
 * aim one of its own at another's lock (idem_lockkey.c).
 */
uint64
IdemKeyHash(const text *scope, const text *key)
{
	return IdemLockKeyHash(VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope),
						   VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key));
}

/*
 * How to make an index of the store again, after the owner of the
 * extension's schema dropped it (an index is no extension member, and a
 * schema's owner may drop what is in it): what the install scripts ran.
 * Never "drop and re-create the extension", which would drop the keys.
 */
static const char *
RecreateHint(const char *name)
{
	if (strcmp(name, IDEM_EXPIRY_NAME) == 0)
		return "CREATE INDEX idem_keys_expires_at ON idem_keys (expires_at)";
	return NULL;
}

/* Raise 42P01 for a relation of the store that is missing. */
static void
ReportMissingRelation(const char *name, Oid nspid)
{
	const char *recreate = RecreateHint(name);

	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_TABLE),
			 errmsg("relation \"%s.%s\" of extension \"idempotency\" does not exist",
					get_namespace_name(nspid), name),
			 recreate ?
			 errhint("Create it again, as a superuser with search_path set to the extension's schema: %s; do not drop the extension, which would drop its keys.",
					 recreate) :
			 errhint("Restore it from a backup; do not drop the extension, which would drop its keys.")));
}

/* Look up one of the store's relations in the extension's schema. */
static Oid
LookupStoreRelation(const char *name, Oid nspid)
{
	Oid			relid = get_relname_relid(name, nspid);

	if (!OidIsValid(relid))
		ReportMissingRelation(name, nspid);
	return relid;
}

/*
 * Is a relation found by name an index of the key table?  A role with
 * CREATE on the extension's schema could otherwise put an index of its own
 * table there under a name a later version of the extension will use
 * (idem_keys_leases before 0.2.0), and have the sweeper, running as
 * superuser, open it as ours.  Nobody but the table's owner can create an
 * index on the table itself.
 */
static bool
IsStoreIndex(Oid indexid, Oid heapid)
{
	return get_rel_relkind(indexid) == RELKIND_INDEX &&
		IndexGetRelation(indexid, true) == heapid;
}

/* Raise an error unless a relation found by name is an index of the key table. */
static void
CheckStoreIndex(Oid indexid, Oid heapid)
{
	if (!IsStoreIndex(indexid, heapid))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation \"%s.%s\" is not an index of the extension's key table",
						get_namespace_name(get_rel_namespace(indexid)),
						get_rel_name(indexid)),
				 errhint("Drop or rename it; the extension \"idempotency\" owns that name.")));
}

/*
 * Find the store's relations in a given schema (the extension's).
 */
static void
ResolveInSchema(Oid nspid, IdemStoreOids *oids)
{
	oids->heap = LookupStoreRelation(IDEM_TABLE_NAME, nspid);
	if (get_rel_relkind(oids->heap) != RELKIND_RELATION)
		elog(ERROR, "relation \"%s\" is not a table", IDEM_TABLE_NAME);
	oids->pkey = LookupStoreRelation(IDEM_PKEY_NAME, nspid);
	CheckStoreIndex(oids->pkey, oids->heap);
	oids->expiry = LookupStoreRelation(IDEM_EXPIRY_NAME, nspid);
	CheckStoreIndex(oids->expiry, oids->heap);

	/*
	 * Absent until the extension is updated to 0.2.0; anything else of that
	 * name (a squatter's index, see IsStoreIndex) is not ours and is left
	 * alone.  From 0.2.0 on the name is the extension's index's.
	 */
	oids->leases = get_relname_relid(IDEM_LEASES_NAME, nspid);
	if (OidIsValid(oids->leases) && !IsStoreIndex(oids->leases, oids->heap))
		oids->leases = InvalidOid;
	oids->nspid = nspid;
	oids->is_shard = false;
	oids->shardid = 0;
	oids->tenant = (Datum) 0;
}

/* One index of a shard of idem_tenant_keys: "<index>_<shard id>", as Citus names it. */
static Oid
LookupShardIndex(const char *index, int64 shardid, Oid nspid, Oid heap)
{
	char		name[NAMEDATALEN];
	Oid			relid;

	snprintf(name, sizeof(name), "%s_" INT64_FORMAT, index, shardid);
	relid = LookupStoreRelation(name, nspid);
	CheckStoreIndex(relid, heap);
	return relid;
}

/*
 * Find this node's shard shardid of idem_tenant_keys, the Citus table of
 * keys that live with their tenant, and its indexes.  Returns
 * false when this node has no such table.  A table of that name owned by
 * anyone but owner (the owner of idem_tenant_keys, whose tables Citus's
 * shards are) is not ours: a role with CREATE on the extension's schema
 * could make one.
 */
bool
IdemStoreResolveShard(Oid nspid, int64 shardid, Oid owner, IdemStoreOids *oids)
{
	char		name[NAMEDATALEN];
	Oid			heap;
	HeapTuple	tuple;
	bool		ours;

	snprintf(name, sizeof(name), "%s_" INT64_FORMAT, IDEM_TENANT_TABLE_NAME, shardid);
	heap = get_relname_relid(name, nspid);
	if (!OidIsValid(heap))
		return false;
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(heap));
	if (!HeapTupleIsValid(tuple))
		return false;			/* dropped just now */
	ours = ((Form_pg_class) GETSTRUCT(tuple))->relkind == RELKIND_RELATION &&
		((Form_pg_class) GETSTRUCT(tuple))->relowner == owner;
	ReleaseSysCache(tuple);
	if (!ours)
		return false;

	oids->heap = heap;
	oids->pkey = LookupShardIndex(IDEM_TENANT_TABLE_NAME "_pkey", shardid, nspid, heap);
	oids->expiry = LookupShardIndex(IDEM_TENANT_TABLE_NAME "_expires_at", shardid, nspid, heap);
	oids->leases = LookupShardIndex(IDEM_TENANT_TABLE_NAME "_leases", shardid, nspid, heap);
	/* the setup made it; writes need none of the indexes beyond these */
	(void) LookupShardIndex(IDEM_TENANT_TABLE_NAME "_failures", shardid, nspid, heap);
	oids->nspid = nspid;
	oids->is_shard = true;
	oids->shardid = shardid;
	oids->tenant = (Datum) 0;
	return true;
}

/*
 * The store last resolved in this backend, so that a statement does not
 * look its five relations up by name again (on the replay path
 * that was a tenth of the call).  A relcache invalidation of any of them,
 * or of all relations, forgets it (dropping or creating an index on
 * idem_keys sends one), and so does any change to a relation's name
 * (RELNAMENSP): a name that now means another relation is looked up again
 * before the next call uses it.
 */
static struct
{
	bool		valid;
	uint64		invalidations;	/* counted, for a lookup that one overtook */
	Oid			nspid;
	IdemStoreOids oids;
}			resolved_store;

static void
ForgetResolvedStore(Datum arg, Oid relid)
{
	const IdemStoreOids *o = &resolved_store.oids;

	/* while a lookup is under way (!valid), every invalidation counts */
	if (!resolved_store.valid || !OidIsValid(relid) ||
		relid == o->heap || relid == o->pkey ||
		relid == o->expiry || relid == o->leases)
	{
		resolved_store.valid = false;
		resolved_store.invalidations++;
	}
}

/*
 * A relation was created, dropped or renamed somewhere: a name the store
 * looked up may mean another relation now (an index renamed to
 * idem_keys_failures sends a relcache invalidation for itself only, not
 * for idem_keys), so look them all up again.
 */
static void
ForgetResolvedStoreNames(Datum arg, int cacheid, uint32 hashvalue)
{
	ForgetResolvedStore(arg, InvalidOid);
}

/*
 * Find the store's relations in the schema of the SQL function being called.
 */
void
IdemStoreResolve(FunctionCallInfo fcinfo, IdemStoreOids *oids)
{
	static bool callback_registered = false;
	Oid			nspid = get_func_namespace(fcinfo->flinfo->fn_oid);

	if (!callback_registered)
	{
		IdemRegisterRelcacheCallback(ForgetResolvedStore);
		CacheRegisterSyscacheCallback(RELNAMENSP, ForgetResolvedStoreNames, (Datum) 0);
		callback_registered = true;
	}
	if (!resolved_store.valid || resolved_store.nspid != nspid)
	{
		uint64		before = resolved_store.invalidations;

		resolved_store.valid = false;
		ResolveInSchema(nspid, oids);
		/* keep it only if no invalidation came in while we looked */
		if (resolved_store.invalidations == before)
		{
			resolved_store.oids = *oids;
			resolved_store.nspid = nspid;
			resolved_store.valid = true;
		}
		return;
	}
	*oids = resolved_store.oids;
}

/*
 * Find the store of the extension installed in the current database, for
 * code that is not called through one of the extension's functions (the
 * sweeper).  Reads pg_extension through its name index with the catalog's
 * own comparison function: nothing here goes through SQL, so no operator,
 * function or search_path of a database owner's can change what it finds.
 * An extension still being created, or dropped, is not committed and is
 * not seen.  Returns false when the extension is not installed.
 */
bool
IdemStoreResolveInstalled(IdemStoreOids *oids)
{
	Relation	rel;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			nspid = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&skey, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("idempotency"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &skey);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		nspid = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (!OidIsValid(nspid))
		return false;
	ResolveInSchema(nspid, oids);
	return true;
}

/*
 * Open the table and its primary key for a call.  A call that may write
 * (any begin may, if it finds an expired record to replace) takes
 * RowExclusiveLock as DML does; idem_lookup only reads and takes
 * AccessShareLock.  Both are fast-path locks, and both are allowed on a hot
 * standby.  What the writes need (every index, the triggers) is opened by
 * the first write; see BeginWrites.
 *
 * A library newer than the installed extension script still works: a 0.1.0
 * table has no lease columns (they read as NULL and are not written) and no
 * lease index, and only the lease functions, which 0.1.0 does not have,
 * need them; a table from before 0.4.0 has no headers or byte bodies, which
 * only 0.4.0's idem_finish can pass.
 */
/*
 * Open an index of the store by the OID resolved for it, if that OID still
 * names a valid index of the table once its lock is held; NULL if not.
 * REINDEX CONCURRENTLY builds the new index under a new OID, then marks
 * the old one invalid and drops it: a call that resolved the OID just
 * before (the invalidation arrives with a lock) would otherwise probe an
 * index no longer kept up to date, or fail to open one that is gone.
 */
static Relation
TryOpenStoreIndex(Oid indexid, Oid heapid, LOCKMODE lockmode)
{
	Relation	index = try_relation_open(indexid, lockmode);

	if (index == NULL)
		return NULL;
	if (index->rd_rel->relkind == RELKIND_INDEX &&
		index->rd_index->indrelid == heapid && index->rd_index->indisvalid)
		return index;
	relation_close(index, NoLock);
	return NULL;
}

/*
 * Find the store's relations again by name, into the store's own copy of
 * its OIDs, after an index they named was not a valid index of the table
 * (TryOpenStoreIndex).  The table itself is open and locked: its OID does
 * not change.
 *
 * The invalidations that have arrived are taken in first.  A transaction
 * that already holds a lock on an index does not take them in when it
 * opens the index again, and a name looked up afresh can then give the
 * index REINDEX CONCURRENTLY swapped in while the relcache still describes
 * it as the unfinished _ccnew copy: without them, the call would look again
 * for as long as its transaction lasted, and REINDEX would wait on it.
 */
static void
ResolveStoreAgain(IdemStore *store)
{
	IdemStoreOids again;
	const IdemStoreOids *oids = store->oids;

	CHECK_FOR_INTERRUPTS();
	AcceptInvalidationMessages();
	if (!oids->is_shard)
		ResolveInSchema(oids->nspid, &again);
	else if (!IdemStoreResolveShard(oids->nspid, oids->shardid,
									store->heap->rd_rel->relowner, &again))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the key table's shard changed while the call waited for it"),
				 errhint("Retry the transaction.")));
	again.tenant = oids->tenant;
	if (again.heap != oids->heap)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the key table was replaced while the call waited for it"),
				 errhint("Retry the transaction.")));
	store->resolved_again = again;
	store->oids = &store->resolved_again;
}

/*
 * Open the store's primary key (pkey) or expiry index, finding it again by
 * name for as long as the OID it had does not give a valid index of the
 * table.
 *
 * A committing transaction is seen in the catalogs a moment before its
 * invalidations are sent (CommitTransaction ends it in the proc array
 * first): a name looked up in that moment can give the index that REINDEX
 * CONCURRENTLY just swapped in, while the relcache, which only the
 * invalidations will correct, still holds it for the unfinished copy.  So a
 * failed open is retried, a millisecond apart, for up to a second; an index
 * that is still not valid then is not valid (a DBA's catalog edit, say),
 * which a longer wait does not change.
 */
#define STORE_INDEX_RETRY_MS	1000

static Relation
OpenStoreIndex(IdemStore *store, bool pkey, LOCKMODE lockmode)
{
	TimestampTz deadline = 0;

	for (;;)
	{
		Oid			indexid = pkey ? store->oids->pkey : store->oids->expiry;
		Relation	index = TryOpenStoreIndex(indexid, store->oids->heap, lockmode);

		if (index != NULL)
			return index;
		if (deadline == 0)
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   STORE_INDEX_RETRY_MS);
		else if (GetCurrentTimestamp() >= deadline)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("index \"%s\" of the key table is not valid",
							get_rel_name(indexid)),
					 errhint("Rebuild it with REINDEX INDEX CONCURRENTLY.")));
		else
			pg_usleep(1000L);
		ResolveStoreAgain(store);
	}
}

void
IdemStoreOpen(IdemStore *store, const IdemStoreOids *oids, bool may_write)
{
	LOCKMODE	lockmode = may_write ? RowExclusiveLock : AccessShareLock;
	int			natts;

	store->oids = oids;
	store->heap = table_open(oids->heap, lockmode);
	natts = RelationGetDescr(store->heap)->natts;
	if (oids->is_shard ? natts != IDEM_TENANT_ATTNUM :
		(natts != Natts_idem_keys && natts != Natts_idem_keys_0_2 &&
		 !(natts == Natts_idem_keys_0_1 && !OidIsValid(oids->leases))))
		elog(ERROR, "relation \"%s\" has %d columns, expected %d",
			 RelationGetRelationName(store->heap), natts, Natts_idem_keys);
	store->pkey = OpenStoreIndex(store, true, lockmode);
	store->slot = table_slot_create(store->heap, NULL);
	store->cxt = CurrentMemoryContext;
	store->estate = NULL;
	store->rri = NULL;
	store->write_slot = NULL;
	store->indexes_open = false;
	store->fire_triggers = false;
	store->check_constraints = false;
	store->checked = 0;
}

/* Raise an error unless the store has the lease columns (version 0.2.0). */
void
IdemStoreRequireLeases(IdemStore *store)
{
	if (RelationGetDescr(store->heap)->natts < Natts_idem_keys_0_2)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("leases need version 0.2.0 of extension \"idempotency\""),
				 errhint("Run ALTER EXTENSION idempotency UPDATE.")));
}

/* A detoasted copy of a column of the slot, in the current context. */
static inline Datum
CopyColumn(TupleTableSlot *slot, int attnum)
{
	return PointerGetDatum(PG_DETOAST_DATUM_COPY(slot->tts_values[attnum - 1]));
}

/* Copy the tuple in the store's slot into rec. */
static void
ReadRecord(IdemStore *store, bool want_body, IdemRecord *rec)
{
	TupleTableSlot *slot = store->slot;
	bool		should_free;
	HeapTuple	tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);

	Assert(!should_free);
	slot_getallattrs(slot);

	rec->tid = slot->tts_tid;
	rec->xmin = HeapTupleHeaderGetXmin(tuple->t_data);
	rec->created_at = DatumGetTimestampTz(slot->tts_values[Anum_created_at - 1]);
	rec->expires_at = DatumGetTimestampTz(slot->tts_values[Anum_expires_at - 1]);
	rec->code_isnull = slot->tts_isnull[Anum_response_code - 1];
	rec->response_code = rec->code_isnull ? 0 :
		DatumGetInt32(slot->tts_values[Anum_response_code - 1]);
	rec->state = DatumGetChar(slot->tts_values[Anum_state - 1]);

	rec->fingerprint.isnull = slot->tts_isnull[Anum_fingerprint - 1];
	rec->fingerprint.kind = IDEM_FP_KIND_NONE;
	if (!rec->fingerprint.isnull)
	{
		bytea	   *fp = DatumGetByteaPP(slot->tts_values[Anum_fingerprint - 1]);
		const char *data = VARDATA_ANY(fp);
		int			len = VARSIZE_ANY_EXHDR(fp);

		/* the kind byte, then the digest; before 0.3.0, the digest alone */
		if (len == IDEM_FINGERPRINT_LEN + 1 &&
			(data[0] == IDEM_FP_KIND_JSONB || data[0] == IDEM_FP_KIND_BYTES))
		{
			rec->fingerprint.kind = data[0];
			data++;
			len--;
		}
		if (len != IDEM_FINGERPRINT_LEN)
			elog(ERROR, "stored fingerprint has %d bytes, expected %d (or %d before 0.3.0)",
				 (int) VARSIZE_ANY_EXHDR(fp), IDEM_FINGERPRINT_LEN + 1,
				 IDEM_FINGERPRINT_LEN);
		memcpy(rec->fingerprint.bytes, data, IDEM_FINGERPRINT_LEN);
	}

	rec->body_isnull = slot->tts_isnull[Anum_response_body - 1];
	rec->response_body = (Datum) 0;
	if (want_body && !rec->body_isnull)
		rec->response_body = CopyColumn(slot, Anum_response_body);

	/* the headers and byte body; a table from before 0.4.0 has none */
	rec->response_headers = (Datum) 0;
	rec->response_bytes = (Datum) 0;
	if (want_body && slot->tts_nvalid >= Natts_idem_keys)
	{
		if (!slot->tts_isnull[Anum_response_headers - 1])
			rec->response_headers = CopyColumn(slot, Anum_response_headers);
		if (!slot->tts_isnull[Anum_response_bytes - 1])
			rec->response_bytes = CopyColumn(slot, Anum_response_bytes);
	}

	/*
	 * The lease columns; a 0.1.0 table has none.  A failed or dead key keeps
	 * its attempts, its recovery point and (a lease's) the lease's length.
	 */
	memset(&rec->lease_token, 0, sizeof(rec->lease_token));
	rec->lease_expires_at = 0;
	memset(&rec->lease_duration, 0, sizeof(rec->lease_duration));
	rec->attempts = 0;
	rec->phase = NULL;
	rec->phase_state = (Datum) 0;
	rec->max_attempts = 0;
	rec->last_error = NULL;
	if (slot->tts_nvalid < Natts_idem_keys_0_2)
		return;
	if (!slot->tts_isnull[Anum_attempts - 1])
		rec->attempts = DatumGetInt32(slot->tts_values[Anum_attempts - 1]);
	if (rec->state != IDEM_STATE_LEASED && !IDEM_STATE_IS_FAILURE(rec->state))
		return;
	if (slot->tts_nvalid >= Natts_idem_keys)
	{
		if (!slot->tts_isnull[Anum_max_attempts - 1])
			rec->max_attempts = DatumGetInt32(slot->tts_values[Anum_max_attempts - 1]);
		if (want_body && !slot->tts_isnull[Anum_last_error - 1])
			rec->last_error = DatumGetTextPCopy(slot->tts_values[Anum_last_error - 1]);
	}
	if (!slot->tts_isnull[Anum_lease_token - 1])
		rec->lease_token = *DatumGetUUIDP(slot->tts_values[Anum_lease_token - 1]);
	if (!slot->tts_isnull[Anum_lease_expires_at - 1])
		rec->lease_expires_at =
			DatumGetTimestampTz(slot->tts_values[Anum_lease_expires_at - 1]);
	if (!slot->tts_isnull[Anum_lease_duration - 1])
		rec->lease_duration =
			*DatumGetIntervalP(slot->tts_values[Anum_lease_duration - 1]);
	if (want_body && !slot->tts_isnull[Anum_phase - 1])
		rec->phase = DatumGetTextPCopy(slot->tts_values[Anum_phase - 1]);
	if (want_body && !slot->tts_isnull[Anum_phase_state - 1])
		rec->phase_state = CopyColumn(slot, Anum_phase_state);
}

/*
 * Look a key up through the primary key.
 *
 * With a dirty snapshot, a row that another live transaction is inserting or
 * deleting is reported as IDEM_PROBE_BUSY with that transaction's id in
 * *busy_xid; rec is then filled too, with rec->inserting telling an insert
 * from a delete.  A dirty snapshot can return more than one version of the
 * key (an expired row being deleted and its replacement being inserted):
 * a live row wins, then a row being inserted, then one being deleted.
 * With an MVCC snapshot, only FOUND or ABSENT come back.
 */
IdemProbeResult
IdemStoreProbe(IdemStore *store, const IdemKey *key, Snapshot snapshot,
			   bool want_body, IdemRecord *rec, TransactionId *busy_xid)
{
	ScanKeyData skeys[2];
	IndexScanDesc scan;
	IdemProbeResult result = IDEM_PROBE_ABSENT;

	ScanKeyEntryInitialize(&skeys[0], 0, 1, BTEqualStrategyNumber,
						   InvalidOid, store->pkey->rd_indcollation[0],
						   F_TEXTEQ, PointerGetDatum(key->scope));
	ScanKeyEntryInitialize(&skeys[1], 0, 2, BTEqualStrategyNumber,
						   InvalidOid, store->pkey->rd_indcollation[1],
						   F_TEXTEQ, PointerGetDatum(key->key));

	scan = index_beginscan_compat(store->heap, store->pkey, snapshot, 2, 0);
	index_rescan(scan, skeys, 2, NULL, 0);

	while (index_getnext_slot(scan, ForwardScanDirection, store->slot))
	{
		TransactionId xwait = InvalidTransactionId;
		bool		inserting = false;

		if (snapshot->snapshot_type == SNAPSHOT_DIRTY)
		{
			inserting = TransactionIdIsValid(snapshot->xmin);
			xwait = inserting ? snapshot->xmin : snapshot->xmax;
		}

		if (!TransactionIdIsValid(xwait))
		{
			ReadRecord(store, want_body, rec);
			rec->inserting = false;
			result = IDEM_PROBE_FOUND;
			break;
		}
		if (result == IDEM_PROBE_ABSENT || (inserting && !rec->inserting))
		{
			/* never detoast a row whose fate is open: its toast may go */
			ReadRecord(store, false, rec);
			rec->inserting = inserting;
			*busy_xid = xwait;
			result = IDEM_PROBE_BUSY;
		}
	}

	index_endscan(scan);
	ExecClearTuple(store->slot);
	return result;
}

/*
 * The keys of one scope, in the primary key's order, as a dirty snapshot
 * sees them: committed, or being written by a transaction still running
 * (the caller waits for it when it looks at the key).  A key may come more
 * than once (a row and the version replacing it).
 */
struct IdemScopeScan
{
	SnapshotData dirty;			/* the scan's snapshot: must outlive it */
	ScanKeyData skey;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	MemoryContext cxt;			/* what the scan allocates goes here */
};

IdemScopeScan *
IdemStoreBeginScopeScan(IdemStore *store, text *scope)
{
	IdemScopeScan *ss = palloc0(sizeof(IdemScopeScan));

	InitDirtySnapshot(ss->dirty);
	ScanKeyEntryInitialize(&ss->skey, 0, 1, BTEqualStrategyNumber,
						   InvalidOid, store->pkey->rd_indcollation[0],
						   F_TEXTEQ, PointerGetDatum(scope));
	ss->cxt = CurrentMemoryContext;
	ss->slot = table_slot_create(store->heap, NULL);
	ss->scan = index_beginscan_compat(store->heap, store->pkey, &ss->dirty, 1, 0);
	index_rescan(ss->scan, &ss->skey, 1, NULL, 0);
	return ss;
}

/* The next key of the scope, copied into the current context; NULL at the end. */
text *
IdemStoreNextScopeKey(IdemScopeScan *ss)
{
	bool		isnull;
	bool		found;
	text	   *key;
	MemoryContext old = MemoryContextSwitchTo(ss->cxt);

	/* the scan's own state lives as long as the scan, not the caller's key */
	found = index_getnext_slot(ss->scan, ForwardScanDirection, ss->slot);
	MemoryContextSwitchTo(old);
	if (!found)
		return NULL;
	key = DatumGetTextPCopy(slot_getattr(ss->slot, Anum_key, &isnull));
	ExecClearTuple(ss->slot);
	return key;
}

void
IdemStoreEndScopeScan(IdemScopeScan *ss)
{
	index_endscan(ss->scan);
	ExecDropSingleTupleTableSlot(ss->slot);
	pfree(ss);
}

/*
 * Form a record's tuple without its trailing NULL columns: a completed
 * key's record has none of the lease, failure and header columns, and a
 * tuple of eight attributes has a one-byte null bitmap and an eight-byte
 * smaller header than one of eighteen (eight bytes less heap
 * and WAL per request).  Readers see the missing attributes as NULL, as
 * for rows written before ALTER TABLE ADD COLUMN, unless a column added
 * later has a missing value (a fast default), which only a user's own
 * column could; then the whole tuple is formed.
 */
static HeapTuple
FormShortTuple(TupleDesc desc, Datum *values, bool *nulls)
{
	int			natts = desc->natts;
	TupleDesc	shortdesc;
	HeapTuple	tuple;

	while (natts > 1 && nulls[natts - 1])
		natts--;
	if (natts == desc->natts)
		return heap_form_tuple(desc, values, nulls);
	for (int i = natts; i < desc->natts; i++)
	{
		if (TupleDescAttr(desc, i)->atthasmissing)
			return heap_form_tuple(desc, values, nulls);
	}

	shortdesc = CreateTemplateTupleDesc(natts);
	for (int i = 0; i < natts; i++)
		TupleDescCopyEntry(shortdesc, i + 1, desc, i + 1);
	TupleDescFinalize(shortdesc);
	tuple = heap_form_tuple(shortdesc, values, nulls);
	FreeTupleDesc(shortdesc);
	return tuple;
}

/*
 * Build the heap tuple of a record.  Only the columns the table has are
 * filled (a 0.1.0 table stops after response_body); lease columns are NULL
 * unless the record is leased.
 */
static HeapTuple
FormRecordTuple(IdemStore *store, const IdemKey *key, const IdemRecord *rec)
{
	Datum		values[IDEM_TENANT_ATTNUM];
	bool		nulls[IDEM_TENANT_ATTNUM];
	bool		leased = (rec->state == IDEM_STATE_LEASED);
	bytea	   *fp;

	memset(nulls, true, sizeof(nulls));
	values[Anum_created_at - 1] = TimestampTzGetDatum(rec->created_at);
	nulls[Anum_created_at - 1] = false;
	values[Anum_expires_at - 1] = TimestampTzGetDatum(rec->expires_at);
	nulls[Anum_expires_at - 1] = false;
	values[Anum_response_code - 1] = Int32GetDatum(rec->response_code);
	nulls[Anum_response_code - 1] = rec->code_isnull;
	values[Anum_state - 1] = CharGetDatum(rec->state);
	nulls[Anum_state - 1] = false;
	values[Anum_scope - 1] = PointerGetDatum(key->scope);
	nulls[Anum_scope - 1] = false;
	values[Anum_key - 1] = PointerGetDatum(key->key);
	nulls[Anum_key - 1] = false;
	if (!rec->fingerprint.isnull)
	{
		/* a record read from before 0.3.0 is written back as it was */
		bool		has_kind = (rec->fingerprint.kind != IDEM_FP_KIND_NONE);
		int			len = IDEM_FINGERPRINT_LEN + (has_kind ? 1 : 0);
		char	   *data;

		fp = palloc(VARHDRSZ + len);
		SET_VARSIZE(fp, VARHDRSZ + len);
		data = VARDATA(fp);
		if (has_kind)
			*data++ = rec->fingerprint.kind;
		memcpy(data, rec->fingerprint.bytes, IDEM_FINGERPRINT_LEN);
		values[Anum_fingerprint - 1] = PointerGetDatum(fp);
		nulls[Anum_fingerprint - 1] = false;
	}
	values[Anum_response_body - 1] = rec->response_body;
	nulls[Anum_response_body - 1] = (rec->response_body == (Datum) 0);

	if (rec->response_headers != (Datum) 0 || rec->response_bytes != (Datum) 0)
	{
		Assert(RelationGetDescr(store->heap)->natts >= Natts_idem_keys);
		values[Anum_response_headers - 1] = rec->response_headers;
		nulls[Anum_response_headers - 1] = (rec->response_headers == (Datum) 0);
		values[Anum_response_bytes - 1] = rec->response_bytes;
		nulls[Anum_response_bytes - 1] = (rec->response_bytes == (Datum) 0);
	}

	if (leased)
	{
		Assert(RelationGetDescr(store->heap)->natts >= Natts_idem_keys_0_2);
		values[Anum_lease_token - 1] = UUIDPGetDatum(&rec->lease_token);
		values[Anum_lease_expires_at - 1] = TimestampTzGetDatum(rec->lease_expires_at);
		nulls[Anum_lease_token - 1] = false;
		nulls[Anum_lease_expires_at - 1] = false;
	}
	if (leased || IDEM_STATE_IS_FAILURE(rec->state))
	{
		/* a failed or dead key keeps its recovery point, and a lease's length */
		bool		no_duration = !IdemRecordHasLeaseDuration(rec);

		Assert(RelationGetDescr(store->heap)->natts >= Natts_idem_keys_0_2);
		values[Anum_lease_duration - 1] = IntervalPGetDatum(&rec->lease_duration);
		nulls[Anum_lease_duration - 1] = no_duration;
		values[Anum_phase - 1] = PointerGetDatum(rec->phase);
		nulls[Anum_phase - 1] = (rec->phase == NULL);
		values[Anum_phase_state - 1] = rec->phase_state;
		nulls[Anum_phase_state - 1] = (rec->phase_state == (Datum) 0);
		if (RelationGetDescr(store->heap)->natts >= Natts_idem_keys)
		{
			values[Anum_max_attempts - 1] = Int32GetDatum(rec->max_attempts);
			nulls[Anum_max_attempts - 1] = (rec->max_attempts == 0);
			values[Anum_last_error - 1] = PointerGetDatum(rec->last_error);
			nulls[Anum_last_error - 1] = (rec->last_error == NULL);
		}
	}
	if (RelationGetDescr(store->heap)->natts >= Natts_idem_keys_0_2)
	{
		/*
		 * every key that had attempts keeps their count (a finished lease
		 * too)
		 */
		values[Anum_attempts - 1] = Int32GetDatum(rec->attempts);
		nulls[Anum_attempts - 1] = (rec->attempts == 0);
	}
	if (store->oids->is_shard)
	{
		values[IDEM_TENANT_ATTNUM - 1] = store->oids->tenant;
		nulls[IDEM_TENANT_ATTNUM - 1] = false;
	}

	return FormShortTuple(RelationGetDescr(store->heap), values, nulls);
}

/*
 * Writes.
 *
 * Every row the store writes goes through the same steps as a row that an
 * INSERT, UPDATE or DELETE of the key table writes, taken from the
 * executor (nodeModifyTable.c) and from logical replication's apply worker,
 * which also writes rows without a plan (execReplication.c):
 *
 *	- every index of the table that is ready for inserts gets its entry
 *	  (ExecOpenIndices, ExecInsertIndexTuples): a DBA's own indexes, partial
 *	  and expression ones, and the copy that CREATE INDEX CONCURRENTLY or
 *	  REINDEX CONCURRENTLY is building, from the relation cache as it stands
 *	  once the table's lock is taken;
 *	- NOT NULL and CHECK constraints (ExecConstraints), unique and exclusion
 *	  constraints (in the index inserts), replica identity for a published
 *	  table (CheckCmdReplicaIdentity);
 *	- AFTER ... FOR EACH ROW triggers, including foreign keys' and deferred
 *	  constraint triggers, queued per row and fired when the call closes the
 *	  store, as at the end of a statement.  Tools that copy a table while it
 *	  is written (pg_repack) and audit triggers see every row this way.
 *
 * What the store cannot do as a statement would is refused rather than
 * skipped (CheckWritable): a BEFORE ROW trigger could change or drop the
 * record that the call goes on to report, and statement-level, column-list
 * and transition-table triggers and rules have no statement to belong to.
 * Row-level security does not apply: the extension's functions are the
 * only way application roles reach the table.
 */

/*
 * True while a row's constraints and index entries are being made: a
 * table owner's CHECK constraint or index expression runs then, in the
 * middle of a call, and must not call the extension again (the call's
 * bookkeeping of its key is not done yet).  AFTER triggers run when the
 * call closes the store, where calling the extension is safe.
 */
static bool writing_row = false;

/* Raise 55000 for a call of the extension from inside a row being written. */
void
IdemStoreCheckNotWritingRow(void)
{
	if (writing_row)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency functions cannot be called while a key is being written"),
				 errdetail("A constraint or index expression of the key table called one."),
				 errhint("Call it from an AFTER ... FOR EACH ROW trigger instead.")));
}

/* The one bit of IdemStore.checked for each kind of write. */
#define CHECKED_BIT(cmd)	((uint8) (1 << (int) (cmd)))

/* Would a trigger fire now, given session_replication_role (TriggerEnabled)? */
static bool
TriggerFiresNow(const Trigger *trigger)
{
	if (trigger->tgenabled == TRIGGER_DISABLED)
		return false;
	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return trigger->tgenabled != TRIGGER_FIRES_ON_ORIGIN;
	return trigger->tgenabled != TRIGGER_FIRES_ON_REPLICA;
}

/* Would a rewrite rule apply now, likewise (fireRIRrules, RewriteQuery)? */
static bool
RuleFiresNow(const RewriteRule *rule)
{
	if (rule->enabled == RULE_DISABLED)
		return false;
	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return rule->enabled != RULE_FIRES_ON_ORIGIN;
	return rule->enabled != RULE_FIRES_ON_REPLICA;
}

static const char *
CmdName(CmdType cmd)
{
	return cmd == CMD_INSERT ? "INSERT" : cmd == CMD_UPDATE ? "UPDATE" : "DELETE";
}

/*
 * Refuse a write of kind cmd that a trigger or rule on the key table would
 * make different from what the caller reports: see "Writes" above.  The
 * table's lock is held, and CREATE TRIGGER and CREATE RULE conflict with it,
 * so what is checked here holds until the call ends.
 */
static void
CheckWritable(IdemStore *store, CmdType cmd)
{
	Relation	heap = store->heap;
	TriggerDesc *trigdesc = heap->trigdesc;
	int16		event = cmd == CMD_INSERT ? TRIGGER_TYPE_INSERT :
		cmd == CMD_UPDATE ? TRIGGER_TYPE_UPDATE : TRIGGER_TYPE_DELETE;

	for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		const Trigger *trigger = &trigdesc->triggers[i];

		if ((trigger->tgtype & event) == 0 || !TriggerFiresNow(trigger))
			continue;
		if (TRIGGER_FOR_ROW(trigger->tgtype) && TRIGGER_FOR_AFTER(trigger->tgtype) &&
			trigger->tgnattr == 0 && trigger->tgoldtable == NULL &&
			trigger->tgnewtable == NULL)
			continue;			/* fired, after the row is written */
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("trigger \"%s\" on \"%s.%s\" prevents writing an idempotency key",
						trigger->tgname,
						get_namespace_name(RelationGetNamespace(heap)),
						RelationGetRelationName(heap)),
				 errdetail("The extension fires AFTER %s ... FOR EACH ROW triggers without a column list or transition tables on its key table; a BEFORE, statement-level, column-list or transition-table trigger cannot be honoured.",
						   CmdName(cmd)),
				 errhint("Drop or disable the trigger, or make it an AFTER ... FOR EACH ROW trigger.")));
	}

	for (int i = 0; heap->rd_rules != NULL && i < heap->rd_rules->numLocks; i++)
	{
		const RewriteRule *rule = heap->rd_rules->rules[i];

		if (rule->event != cmd || !RuleFiresNow(rule))
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("rule on %s to \"%s.%s\" prevents writing an idempotency key",
						CmdName(cmd),
						get_namespace_name(RelationGetNamespace(heap)),
						RelationGetRelationName(heap)),
				 errdetail("The extension writes its key table directly, where no rule applies."),
				 errhint("Drop or disable the rule.")));
	}

	/* a published table without replica identity refuses these, as in DML */
	if (cmd != CMD_INSERT)
		CheckCmdReplicaIdentity(heap, cmd);
}

/*
 * Could ExecConstraints refuse a record that FormRecordTuple makes?  Not
 * while the table's only constraints are NOT NULL on the columns every
 * record fills (the install script's): checking them would cost every row
 * of a batch for nothing.  A CHECK constraint, or NOT NULL on another
 * column, that a DBA added is checked.
 */
static bool
ConstraintsCanFail(Relation heap)
{
	TupleDesc	desc = RelationGetDescr(heap);

	if (desc->constr == NULL)
		return false;
	if (desc->constr->num_check > 0)
		return true;
	for (int i = 0; i < desc->natts; i++)
	{
		AttrNumber	attnum = TupleDescAttr(desc, i)->attnum;

		if (TupleDescAttr(desc, i)->attnotnull &&
			attnum != Anum_created_at && attnum != Anum_expires_at &&
			attnum != Anum_state && attnum != Anum_scope && attnum != Anum_key &&
			attnum != IDEM_TENANT_ATTNUM)
			return true;
	}
	return false;
}

/*
 * What ExecOpenIndices builds for each index of the key table, kept across
 * calls.  ExecOpenIndices makes every index's IndexInfo again for each
 * statement (copying its expression and predicate trees out of the
 * relcache), and ExecInsertIndexTuples compiles a partial index's predicate
 * once per executor state: for the key table's two partial indexes, and a
 * call that writes one row, that was most of what writing through the
 * executor cost over writing the known indexes directly.  Here each index's
 * IndexInfo is built once, with its predicate and expressions compiled as
 * the type cache compiles a domain's checks (ExecInitExpr with no parent,
 * in a context of the cache's own), and each call gets a shallow copy whose
 * index AM cache is its own.
 *
 * An entry is dropped when its index's relcache entry is invalidated (a
 * REINDEX, CREATE INDEX CONCURRENTLY marking it ready, a DROP, ...), and
 * every entry when any function changes (a compiled expression holds the
 * function as it was, which PostgreSQL would look up again for the next
 * statement).  An entry is built for one role: compiling an expression
 * checks the caller's EXECUTE on its functions, as each statement would.
 * An invalidation that arrives while an entry is being built (a catalog
 * lookup can take it in) makes the build start again.  Dropped memory may
 * still be in use by the call that was writing when the invalidation
 * arrived (one arrives whenever a lock is taken), so it is kept until the
 * transaction ends; so is that of a build that failed.
 */
typedef struct CachedIndexInfo
{
	Oid			indexid;		/* hash key */
	bool		valid;
	Oid			userid;			/* the role it was built for */
	MemoryContext cxt;			/* the IndexInfo, its trees and ExprStates */
	IndexInfo  *ii;
} CachedIndexInfo;

static HTAB *index_infos = NULL;
static MemoryContext index_info_cxt = NULL;
static MemoryContext retired_index_info_cxt = NULL;
static uint64 index_info_invalidations = 0;

static void
RetireIndexInfo(CachedIndexInfo *entry)
{
	if (entry->cxt != NULL)
		MemoryContextSetParent(entry->cxt, retired_index_info_cxt);
	entry->cxt = NULL;
	entry->ii = NULL;
	entry->valid = false;
}

static void
ForgetIndexInfos(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	CachedIndexInfo *entry;

	index_info_invalidations++;
	if (OidIsValid(relid))
	{
		entry = hash_search(index_infos, &relid, HASH_FIND, NULL);
		if (entry != NULL)
			RetireIndexInfo(entry);
		return;
	}
	hash_seq_init(&seq, index_infos);
	while ((entry = hash_seq_search(&seq)) != NULL)
		RetireIndexInfo(entry);
}

/* A function changed: every compiled expression may hold its old form. */
static void
ForgetIndexInfosOfFunctions(Datum arg, int cacheid, uint32 hashvalue)
{
	ForgetIndexInfos(arg, InvalidOid);
}

static void
FreeRetiredIndexInfos(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		MemoryContextReset(retired_index_info_cxt);
}

/* The IndexInfo of an open index of the key table, from the cache. */
static IndexInfo *
StoreIndexInfo(Relation index)
{
	Oid			indexid = RelationGetRelid(index);
	CachedIndexInfo *entry;
	bool		found;
	IndexInfo  *copy;

	if (index_infos == NULL)
	{
		HASHCTL		ctl;

		index_info_cxt = AllocSetContextCreate(CacheMemoryContext,
											   "idempotency index infos",
											   ALLOCSET_SMALL_SIZES);
		retired_index_info_cxt = AllocSetContextCreate(index_info_cxt,
													   "idempotency retired index infos",
													   ALLOCSET_SMALL_SIZES);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CachedIndexInfo);
		ctl.hcxt = index_info_cxt;
		index_infos = hash_create("idempotency index infos", 16, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		IdemRegisterRelcacheCallback(ForgetIndexInfos);
		CacheRegisterSyscacheCallback(PROCOID, ForgetIndexInfosOfFunctions, (Datum) 0);
		RegisterXactCallback(FreeRetiredIndexInfos, NULL);
	}
	entry = hash_search(index_infos, &indexid, HASH_ENTER, &found);
	if (!found)
	{
		entry->valid = false;
		entry->cxt = NULL;
		entry->ii = NULL;
	}
	if (entry->valid && entry->userid != GetUserId())
		RetireIndexInfo(entry);
	while (!entry->valid)
	{
		uint64		before = index_info_invalidations;
		MemoryContext cxt = AllocSetContextCreate(retired_index_info_cxt,
												  "idempotency index info",
												  ALLOCSET_SMALL_SIZES);
		MemoryContext old = MemoryContextSwitchTo(cxt);
		IndexInfo  *ii = BuildIndexInfo(index);

		if (ii->ii_Predicate != NIL)
			ii->ii_PredicateState =
				ExecInitQual((List *) expression_planner((Expr *) ii->ii_Predicate), NULL);
		if (ii->ii_Expressions != NIL)
		{
			ListCell   *lc;

			foreach(lc, ii->ii_Expressions)
				ii->ii_ExpressionsState =
				lappend(ii->ii_ExpressionsState,
						ExecInitExpr(expression_planner((Expr *) lfirst(lc)), NULL));
		}
		MemoryContextSwitchTo(old);
		if (index_info_invalidations != before)
			continue;			/* built from what may be stale: again */
		entry = hash_search(index_infos, &indexid, HASH_FIND, NULL);
		Assert(entry != NULL);
		MemoryContextSetParent(cxt, index_info_cxt);
		entry->cxt = cxt;
		entry->ii = ii;
		entry->userid = GetUserId();
		entry->valid = true;
	}
	copy = palloc(sizeof(IndexInfo));
	memcpy(copy, entry->ii, sizeof(IndexInfo));
	copy->ii_Context = CurrentMemoryContext;
	copy->ii_AmCache = NULL;
	return copy;
}

/*
 * ExecOpenIndices(rri, false), with each IndexInfo from the cache above:
 * every index of the table, ready or not (ExecInsertIndexTuples skips one
 * that is not ready for inserts, as it does for a statement).
 */
static void
OpenStoreIndices(ResultRelInfo *rri)
{
	Relation	heap = rri->ri_RelationDesc;
	List	   *indexoids;
	ListCell   *lc;
	int			i = 0;

	rri->ri_NumIndices = 0;
	if (!RelationGetForm(heap)->relhasindex)
		return;
	indexoids = RelationGetIndexList(heap);
	if (indexoids == NIL)
		return;
	rri->ri_IndexRelationDescs = palloc(sizeof(Relation) * list_length(indexoids));
	rri->ri_IndexRelationInfo = palloc(sizeof(IndexInfo *) * list_length(indexoids));
	rri->ri_NumIndices = list_length(indexoids);
	foreach(lc, indexoids)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);

		rri->ri_IndexRelationDescs[i] = index;
		rri->ri_IndexRelationInfo[i] = StoreIndexInfo(index);
		i++;
	}
	list_free(indexoids);
}

/*
 * Get ready for a write of kind cmd: at the first write of the call, make
 * the executor state a statement on the key table would have; at the first
 * write of each kind, check the table's triggers and rules for it; at the
 * first insert or update, open every index.
 */
static void
BeginWrites(IdemStore *store, CmdType cmd)
{
	MemoryContext old;

	if (store->estate == NULL)
	{
		EState	   *estate;
		ResultRelInfo *rri;

		old = MemoryContextSwitchTo(store->cxt);
		estate = CreateExecutorState();
		MemoryContextSwitchTo(estate->es_query_cxt);
		rri = makeNode(ResultRelInfo);
		InitResultRelInfo(rri, store->heap, 0, NULL, 0);
		/* where the trigger machinery looks for the target, and closes it */
		estate->es_opened_result_relations = list_make1(rri);
		estate->es_output_cid = GetCurrentCommandId(true);
		store->write_slot = ExecInitExtraTupleSlot(estate,
												   RelationGetDescr(store->heap),
												   &TTSOpsHeapTuple);
		store->fire_triggers = (rri->ri_TrigDesc != NULL);
		store->check_constraints = ConstraintsCanFail(store->heap);
		if (store->fire_triggers)
			AfterTriggerBeginQuery();
		store->estate = estate;
		store->rri = rri;
		MemoryContextSwitchTo(old);
	}
	if ((store->checked & CHECKED_BIT(cmd)) == 0)
	{
		CheckWritable(store, cmd);
		store->checked |= CHECKED_BIT(cmd);
	}
	if (cmd != CMD_DELETE && !store->indexes_open)
	{
		old = MemoryContextSwitchTo(store->estate->es_query_cxt);
		OpenStoreIndices(store->rri);
		MemoryContextSwitchTo(old);
		store->indexes_open = true;
	}
}

/*
 * The end of the call's writes: fire the AFTER ROW triggers they queued,
 * close the indexes, free the executor state.
 */
static void
EndWrites(IdemStore *store)
{
	EState	   *estate = store->estate;

	if (store->fire_triggers)
		AfterTriggerEndQuery(estate);
	ExecCloseResultRelations(estate);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	store->estate = NULL;
	store->rri = NULL;
	store->write_slot = NULL;
}

/*
 * The index entries and AFTER triggers of a row version just written (the
 * write slot holds it, with its TID; an update's replaces the one at otid).
 * An update makes index entries only when the table AM asks for them (not
 * for a HOT update), and only_summarizing limits them to summarizing
 * indexes, as in ExecUpdateEpilogue.  Memory of the per-row expressions is
 * freed, so that a batch of many keys through one store costs the memory
 * of one.
 */
static void
AfterRowWritten(IdemStore *store, CmdType cmd, ItemPointer otid,
				bool index_entries, bool only_summarizing)
{
	List	   *recheck = NIL;
	TupleTableSlot *slot = store->write_slot;

	if (index_entries && store->rri->ri_NumIndices > 0)
	{
		writing_row = true;
		PG_TRY();
		{
			recheck = ExecInsertIndexTuplesCompat(store->rri, slot, store->estate,
												  cmd == CMD_UPDATE, only_summarizing);
		}
		PG_FINALLY();
		{
			writing_row = false;
		}
		PG_END_TRY();
	}
	if (store->fire_triggers && cmd == CMD_INSERT)
		ExecARInsertTriggers(store->estate, store->rri, slot, recheck, NULL);
	else if (store->fire_triggers)
		ExecARUpdateTriggers(store->estate, store->rri, NULL, NULL, otid, NULL,
							 slot, recheck, NULL, false);
	list_free(recheck);
	ExecClearTuple(slot);
	ResetPerTupleExprContext(store->estate);
}

/* Put a record's tuple in the write slot and check the table's constraints. */
static TupleTableSlot *
PrepareRow(IdemStore *store, const IdemKey *key, const IdemRecord *rec)
{
	TupleTableSlot *slot = store->write_slot;

	ExecStoreHeapTuple(FormRecordTuple(store, key, rec), slot, true);
	if (store->check_constraints)
	{
		writing_row = true;
		PG_TRY();
		{
			ExecConstraints(store->rri, slot, store->estate);
		}
		PG_FINALLY();
		{
			writing_row = false;
		}
		PG_END_TRY();
	}
	return slot;
}

/* Insert one key record, as an INSERT would. */
void
IdemStoreInsert(IdemStore *store, const IdemKey *key, const IdemRecord *rec)
{
	TupleTableSlot *slot;

	BeginWrites(store, CMD_INSERT);
	slot = PrepareRow(store, key, rec);
	table_tuple_insert(store->heap, slot, store->estate->es_output_cid, 0, NULL);
	AfterRowWritten(store, CMD_INSERT, NULL, true, false);
}

/*
 * Replace the record at rec->tid with rec, as an UPDATE would.  Callers
 * hold the key's lock, so no other call of ours can be changing the row; a
 * transaction that locks it (SELECT ... FOR SHARE, a foreign key) or a
 * sweep deleting it is waited for, as an UPDATE would, under lock_timeout
 * and the deadlock detector (a lock of our own transaction is no obstacle).
 * Returns false when the row was changed or deleted meanwhile (a sweep);
 * the caller probes again.
 */
bool
IdemStoreUpdate(IdemStore *store, const IdemKey *key, const IdemRecord *rec)
{
	TupleTableSlot *slot;
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	TM_Result	result;
	ItemPointerData otid = rec->tid;
	bool		update_indexes;
	bool		only_summarizing;

	BeginWrites(store, CMD_UPDATE);
	slot = PrepareRow(store, key, rec);
	result = table_tuple_update_compat(store->heap, &otid, slot,
									   store->estate->es_output_cid, true, &tmfd,
									   &lockmode, &update_indexes,
									   &only_summarizing);
	switch (result)
	{
		case TM_Ok:
			break;
		case TM_SelfModified:
		case TM_Updated:
		case TM_Deleted:
			ExecClearTuple(slot);
			return false;
		default:
			elog(ERROR, "unexpected result %d updating an idempotency key",
				 (int) result);
	}
	AfterRowWritten(store, CMD_UPDATE, &otid, update_indexes, only_summarizing);
	return true;
}

/*
 * Delete one record, as a DELETE would.  With wait (callers that hold the
 * key's lock), a transaction that locks or is deleting the row is waited
 * for, as for IdemStoreUpdate; without it (the sweeper, which never waits),
 * such a row is left alone.  Returns false when the row was not deleted:
 * the caller probes again, or skips it.
 */
bool
IdemStoreDelete(IdemStore *store, ItemPointer tid, bool wait)
{
	TM_FailureData tmfd;
	TM_Result	result;

	BeginWrites(store, CMD_DELETE);
	result = table_tuple_delete_compat(store->heap, tid,
									   store->estate->es_output_cid, wait, &tmfd);
	switch (result)
	{
		case TM_Ok:
			if (store->fire_triggers)
				ExecARDeleteTriggers(store->estate, store->rri, tid, NULL, NULL,
									 false);
			return true;
		case TM_SelfModified:	/* an earlier call in this command took it */
		case TM_Updated:
		case TM_Deleted:
		case TM_BeingModified:
			return false;
		default:
			elog(ERROR, "unexpected result %d deleting an idempotency key",
				 (int) result);
	}
	pg_unreachable();
}

/*
 * Close what IdemStoreOpen and the writes opened; locks are kept until
 * transaction end.  The AFTER ROW triggers of the call's writes fire here,
 * at the end of the call, as they fire at the end of a statement.
 */
void
IdemStoreClose(IdemStore *store)
{
	if (store->estate != NULL)
		EndWrites(store);
	ExecDropSingleTupleTableSlot(store->slot);
	index_close(store->pkey, NoLock);
	table_close(store->heap, NoLock);
}

/*
 * Is the key of the record in the slot begun by another transaction right
 * now?  The sweeper leaves such a key alone: that transaction will replace
 * the expired record itself when it finishes.
 */
static bool
KeyHeldByOthers(TupleTableSlot *slot)
{
	IdemKey		key;
	bool		isnull;

	key.scope = DatumGetTextPP(slot_getattr(slot, Anum_scope, &isnull));
	key.key = DatumGetTextPP(slot_getattr(slot, Anum_key, &isnull));
	key.hash = IdemKeyHash(key.scope, key.key);
	return IdemKeyLockedByOthers(&key);
}

/*
 * Delete up to batch records whose expires_at <= now, walking the expiry
 * index in order.  A row that another transaction is deleting, has begun
 * again or has changed since our snapshot is skipped, never waited for.
 * Rows that are not yet committed are not visible to the snapshot and so
 * are never touched.
 *
 * With resume, the walk starts at the position in *resume and leaves
 * *resume at the last entry visited: a caller running batch after batch
 * (and worker after worker) then does not walk again over the index entries
 * of rows it already deleted, which, while some old snapshot keeps them
 * from being marked dead, would make a pass quadratic in the backlog.  The
 * scan can only be started at a key, so entries with the key of the
 * position are walked again; the index key (from the index tuple) and the
 * TID recognise those already visited before any heap access, which is
 * what made the walk over a million rows expiring at the same moment (one
 * transaction's keys) expensive.  That needs a btree that orders equal
 * keys by TID (heapkeyspace, every index built since PostgreSQL 12); for
 * any other index the equal-key entries are fetched again.  Rows skipped
 * below the resume point are left for a later walk from the start.
 */
static int64
SweepOpenStore(IdemStore *store, Relation expiry, int64 batch,
			   TimestampTz now, IdemSweepPosition *resume)
{
	ScanKeyData skeys[2];
	int			nkeys = 1;
	IndexScanDesc scan;
	int64		deleted = 0;
	Snapshot	snapshot = GetActiveSnapshot();
	MemoryContext row_cxt;
	bool		skip_by_tid = false;

	ScanKeyEntryInitialize(&skeys[0], 0, 1, BTLessEqualStrategyNumber,
						   InvalidOid, InvalidOid, F_TIMESTAMP_LE,
						   TimestampTzGetDatum(now));
	if (resume != NULL && resume->valid)
		ScanKeyEntryInitialize(&skeys[nkeys++], 0, 1, BTGreaterEqualStrategyNumber,
							   InvalidOid, InvalidOid, F_TIMESTAMP_GE,
							   TimestampTzGetDatum(resume->expires_at));

	/*
	 * What one row's checks allocate (GetLockConflicts() takes
	 * MaxBackends-sized arrays) goes into a context reset for every row, so a
	 * batch of a million rows costs the memory of one.
	 */
	row_cxt = AllocSetContextCreate(CurrentMemoryContext,
									"idempotency sweep row",
									ALLOCSET_SMALL_SIZES);

	if (resume != NULL)
	{
		bool		heapkeyspace = false;
		bool		allequalimage;

		if (expiry->rd_rel->relam == BTREE_AM_OID)
			_bt_metaversion(expiry, &heapkeyspace, &allequalimage);
		skip_by_tid = heapkeyspace;
	}

	scan = index_beginscan_compat(store->heap, expiry, snapshot, nkeys, 0);
	scan->xs_want_itup = skip_by_tid;
	index_rescan(scan, skeys, nkeys, NULL, 0);

	/* index_getnext_slot(), with a look at each entry before its heap fetch */
	while (deleted < batch)
	{
		MemoryContext old_cxt;
		bool		held;

		CHECK_FOR_INTERRUPTS();
		if (!scan->xs_heap_continue)
		{
			ItemPointer tid = index_getnext_tid(scan, ForwardScanDirection);

			if (tid == NULL)
				break;
			if (skip_by_tid && scan->xs_itup != NULL)
			{
				bool		isnull;
				TimestampTz key;

				key = DatumGetTimestampTz(index_getattr(scan->xs_itup, 1,
														scan->xs_itupdesc,
														&isnull));
				if (resume->valid && key == resume->expires_at &&
					ItemPointerCompare(tid, &resume->tid) <= 0)
					continue;	/* visited by an earlier batch */
				resume->valid = true;
				resume->expires_at = key;
				resume->tid = *tid;
			}
		}
		if (!index_fetch_heap(scan, store->slot))
			continue;
		if (resume != NULL && !skip_by_tid)
		{
			bool		isnull;

			/* without TID order, the position is the key of the last row seen */
			resume->valid = true;
			resume->expires_at = DatumGetTimestampTz(slot_getattr(store->slot,
																  Anum_expires_at,
																  &isnull));
			ItemPointerSetInvalid(&resume->tid);
		}

		old_cxt = MemoryContextSwitchTo(row_cxt);
		held = KeyHeldByOthers(store->slot);
		MemoryContextSwitchTo(old_cxt);
		MemoryContextReset(row_cxt);
		if (!held && IdemStoreDelete(store, &store->slot->tts_tid, false))
			deleted++;
	}

	index_endscan(scan);
	ExecClearTuple(store->slot);
	MemoryContextDelete(row_cxt);
	return deleted;
}

/*
 * A sweep in a security-restricted operation is the sweeper's, run as the
 * key table's owner (idem_sweeper.c).  Where that owner is a superuser,
 * the deletes may fire no trigger that a table owner or DBA wrote: its
 * code, and whatever it reaches (a table in a schema a database owner
 * controls, a function it calls), would run as a superuser that nobody
 * chose.  The triggers that constraints make (foreign keys) run fixed code
 * and are allowed.  idem_sweep() run by a role fires them as that role.
 */
static void
RefuseTriggersAsSuperuser(Relation heap)
{
	TriggerDesc *trigdesc = heap->trigdesc;

	for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		const Trigger *trigger = &trigdesc->triggers[i];

		if ((trigger->tgtype & TRIGGER_TYPE_DELETE) == 0 ||
			!TriggerFiresNow(trigger) || trigger->tgisinternal)
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the sweeper does not fire trigger \"%s\" on \"%s.%s\" as a superuser",
						trigger->tgname,
						get_namespace_name(RelationGetNamespace(heap)),
						RelationGetRelationName(heap)),
				 errdetail("The sweeper's deletes fire the key table's triggers as the table's owner, and that owner is a superuser."),
				 errhint("Make a role that is not a superuser the owner of the key table, or sweep with idem_sweep() run by a role of your choice while the trigger exists.")));
	}
}

/*
 * One sweep batch in the caller's transaction: see SweepOpenStore.  If
 * DDL holds the table or its expiry index (a lock we would queue behind),
 * does nothing and sets *locked_out; locks already taken stay until
 * transaction end, as usual.  Deletes open no index, so the other indexes
 * are not locked.
 */
int64
IdemStoreSweep(const IdemStoreOids *oids, int64 batch, TimestampTz now,
			   IdemSweepPosition *resume, bool *locked_out)
{
	IdemStore	store;
	Relation	expiry;
	int64		deleted;

	if (!ConditionalLockRelationOid(oids->heap, RowExclusiveLock) ||
		!ConditionalLockRelationOid(oids->pkey, RowExclusiveLock) ||
		!ConditionalLockRelationOid(oids->expiry, RowExclusiveLock))
	{
		if (locked_out != NULL)
			*locked_out = true;
		return 0;
	}
	IdemStoreOpen(&store, oids, true);
	if (InSecurityRestrictedOperation() && superuser())
		RefuseTriggersAsSuperuser(store.heap);
	expiry = OpenStoreIndex(&store, false, RowExclusiveLock);
	deleted = SweepOpenStore(&store, expiry, batch, now, resume);
	index_close(expiry, NoLock);
	IdemStoreClose(&store);
	IdemStatsAdd(IDEM_STAT_KEYS_SWEPT, deleted);
	return deleted;
}

/* The owner of the key table: whom its triggers run as when the sweeper deletes. */
Oid
IdemStoreOwner(const IdemStoreOids *oids)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(oids->heap));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", oids->heap);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}
