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
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_collation.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "common/hashfn.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

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
#define Natts_idem_keys		8

#define IDEM_TABLE_NAME		"idem_keys"
#define IDEM_PKEY_NAME		"idem_keys_pkey"
#define IDEM_EXPIRY_NAME	"idem_keys_expires_at"

/*
 * The 64-bit hash of (scope, key) that names the key's lock.  Seeding the
 * key's hash with the scope's keeps the split between them unambiguous.
 */
uint64
IdemKeyHash(const text *scope, const text *key)
{
	uint64		scope_hash;

	scope_hash = hash_bytes_extended((const unsigned char *) VARDATA_ANY(scope),
									 VARSIZE_ANY_EXHDR(scope), 0);
	return hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
							   VARSIZE_ANY_EXHDR(key), scope_hash);
}

/* Look up one of the store's relations in the extension's schema. */
static Oid
LookupStoreRelation(const char *name, Oid nspid)
{
	Oid			relid = get_relname_relid(name, nspid);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s.%s\" of extension \"idempotency\" does not exist",
						get_namespace_name(nspid), name),
				 errhint("Drop and re-create the extension.")));
	return relid;
}

/*
 * Find the store's relations in the schema of the SQL function being called.
 */
void
IdemStoreResolve(FunctionCallInfo fcinfo, IdemStoreOids *oids)
{
	IdemStoreResolveInSchema(get_func_namespace(fcinfo->flinfo->fn_oid), oids);
}

/*
 * Find the store's relations in a given schema (the extension's).
 */
void
IdemStoreResolveInSchema(Oid nspid, IdemStoreOids *oids)
{
	oids->heap = LookupStoreRelation(IDEM_TABLE_NAME, nspid);
	oids->pkey = LookupStoreRelation(IDEM_PKEY_NAME, nspid);
	oids->expiry = LookupStoreRelation(IDEM_EXPIRY_NAME, nspid);
}

/*
 * Open the table and the indexes a call needs.  A call that may write (any
 * begin may, if it finds an expired record to replace) takes
 * RowExclusiveLock as DML does; idem_lookup only reads and takes
 * AccessShareLock.  Both are fast-path locks, and both are allowed on a hot
 * standby.  Only inserts need the expiry index.
 */
void
IdemStoreOpen(IdemStore *store, const IdemStoreOids *oids, bool may_write,
			  bool for_insert)
{
	LOCKMODE	lockmode = may_write ? RowExclusiveLock : AccessShareLock;

	store->heap = table_open(oids->heap, lockmode);
	if (RelationGetDescr(store->heap)->natts != Natts_idem_keys)
		elog(ERROR, "relation \"%s\" has %d columns, expected %d",
			 RelationGetRelationName(store->heap),
			 RelationGetDescr(store->heap)->natts, Natts_idem_keys);
	store->pkey = index_open(oids->pkey, lockmode);
	store->expiry = for_insert ? index_open(oids->expiry, lockmode) : NULL;
	store->slot = table_slot_create(store->heap, NULL);
}

/* Close what IdemStoreOpen opened; locks are kept until transaction end. */
void
IdemStoreClose(IdemStore *store)
{
	ExecDropSingleTupleTableSlot(store->slot);
	if (store->expiry)
		index_close(store->expiry, NoLock);
	index_close(store->pkey, NoLock);
	table_close(store->heap, NoLock);
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
	if (!rec->fingerprint.isnull)
	{
		bytea	   *fp = DatumGetByteaPP(slot->tts_values[Anum_fingerprint - 1]);

		if (VARSIZE_ANY_EXHDR(fp) != IDEM_FINGERPRINT_LEN)
			elog(ERROR, "stored fingerprint has %d bytes, expected %d",
				 (int) VARSIZE_ANY_EXHDR(fp), IDEM_FINGERPRINT_LEN);
		memcpy(rec->fingerprint.bytes, VARDATA_ANY(fp), IDEM_FINGERPRINT_LEN);
	}

	rec->body_isnull = slot->tts_isnull[Anum_response_body - 1];
	rec->response_body = (Datum) 0;
	if (want_body && !rec->body_isnull)
		rec->response_body = PointerGetDatum(
			PG_DETOAST_DATUM_COPY(slot->tts_values[Anum_response_body - 1]));
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

	scan = index_beginscan(store->heap, store->pkey, snapshot, 2, 0);
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
 * Insert one key record and its index entries.
 *
 * The primary key is checked for uniqueness as any insert would be; callers
 * hold the key's lock, so a violation here means a bug, and the error is
 * PostgreSQL's own unique_violation rather than a silent duplicate.
 */
void
IdemStoreInsert(IdemStore *store, const IdemKey *key, char state,
				const IdemFingerprint *fingerprint,
				TimestampTz created_at, TimestampTz expires_at,
				bool code_isnull, int32 response_code, Datum response_body)
{
	Datum		values[Natts_idem_keys];
	bool		nulls[Natts_idem_keys];
	Datum		index_values[2];
	bool		index_nulls[2] = {false, false};
	bytea	   *fp = NULL;
	HeapTuple	tuple;

	Assert(store->expiry != NULL);

	memset(nulls, false, sizeof(nulls));
	values[Anum_created_at - 1] = TimestampTzGetDatum(created_at);
	values[Anum_expires_at - 1] = TimestampTzGetDatum(expires_at);
	values[Anum_response_code - 1] = Int32GetDatum(response_code);
	nulls[Anum_response_code - 1] = code_isnull;
	values[Anum_state - 1] = CharGetDatum(state);
	values[Anum_scope - 1] = PointerGetDatum(key->scope);
	values[Anum_key - 1] = PointerGetDatum(key->key);
	if (fingerprint->isnull)
		nulls[Anum_fingerprint - 1] = true;
	else
	{
		fp = palloc(VARHDRSZ + IDEM_FINGERPRINT_LEN);
		SET_VARSIZE(fp, VARHDRSZ + IDEM_FINGERPRINT_LEN);
		memcpy(VARDATA(fp), fingerprint->bytes, IDEM_FINGERPRINT_LEN);
		values[Anum_fingerprint - 1] = PointerGetDatum(fp);
	}
	values[Anum_response_body - 1] = response_body;
	nulls[Anum_response_body - 1] = (response_body == (Datum) 0);

	tuple = heap_form_tuple(RelationGetDescr(store->heap), values, nulls);
	heap_insert(store->heap, tuple, GetCurrentCommandId(true), 0, NULL);

	index_values[0] = PointerGetDatum(key->scope);
	index_values[1] = PointerGetDatum(key->key);
	index_insert(store->pkey, index_values, index_nulls, &tuple->t_self,
				 store->heap, UNIQUE_CHECK_YES, false,
				 BuildIndexInfo(store->pkey));

	index_values[0] = TimestampTzGetDatum(expires_at);
	index_insert(store->expiry, index_values, index_nulls, &tuple->t_self,
				 store->heap, UNIQUE_CHECK_NO, false,
				 BuildIndexInfo(store->expiry));

	heap_freetuple(tuple);
	if (fp)
		pfree(fp);
}

/*
 * Delete one record without waiting on any other transaction.  Returns false
 * when another transaction has deleted or is deleting the row; the caller
 * probes again (a begin) or skips it (the sweeper).
 */
bool
IdemStoreDelete(IdemStore *store, ItemPointer tid)
{
	TM_FailureData tmfd;
	TM_Result	result;

	result = table_tuple_delete(store->heap, tid, GetCurrentCommandId(true),
								InvalidSnapshot, InvalidSnapshot,
								false, &tmfd, false);
	switch (result)
	{
		case TM_Ok:
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
 * again or has changed since our snapshot is skipped, never waited for.  Rows that
 * are not yet committed are not visible to the snapshot and so are never
 * touched.
 *
 * With resume_from, the walk starts at *resume_from and *resume_from is
 * advanced to the last expires_at visited: a caller running batch after
 * batch then does not walk again over the index entries of rows it already
 * deleted, which, while some old snapshot keeps them from being marked
 * dead, would make a pass quadratic in the backlog.  Rows skipped below the
 * resume point are left for the next pass.
 */
static int64
SweepOpenStore(IdemStore *store, int64 batch, TimestampTz now,
			   TimestampTz *resume_from)
{
	ScanKeyData skeys[2];
	int			nkeys = 1;
	IndexScanDesc scan;
	int64		deleted = 0;
	Snapshot	snapshot = GetActiveSnapshot();

	Assert(store->expiry != NULL);
	ScanKeyEntryInitialize(&skeys[0], 0, 1, BTLessEqualStrategyNumber,
						   InvalidOid, InvalidOid, F_TIMESTAMP_LE,
						   TimestampTzGetDatum(now));
	if (resume_from != NULL && *resume_from != DT_NOBEGIN)
		ScanKeyEntryInitialize(&skeys[nkeys++], 0, 1, BTGreaterEqualStrategyNumber,
							   InvalidOid, InvalidOid, F_TIMESTAMP_GE,
							   TimestampTzGetDatum(*resume_from));

	scan = index_beginscan(store->heap, store->expiry, snapshot, nkeys, 0);
	index_rescan(scan, skeys, nkeys, NULL, 0);

	while (deleted < batch &&
		   index_getnext_slot(scan, ForwardScanDirection, store->slot))
	{
		CHECK_FOR_INTERRUPTS();
		if (!KeyHeldByOthers(store->slot) &&
			IdemStoreDelete(store, &store->slot->tts_tid))
			deleted++;
		if (resume_from != NULL)
		{
			bool		isnull;

			*resume_from = DatumGetTimestampTz(slot_getattr(store->slot,
															Anum_expires_at,
															&isnull));
		}
	}

	index_endscan(scan);
	ExecClearTuple(store->slot);
	return deleted;
}

/*
 * One sweep batch in the caller's transaction: see SweepOpenStore.  If
 * DDL holds the table or an index (a lock we would queue behind), does
 * nothing; locks already taken stay until transaction end, as usual.
 */
int64
IdemStoreSweep(const IdemStoreOids *oids, int64 batch, TimestampTz now,
			   TimestampTz *resume_from)
{
	IdemStore	store;
	int64		deleted;

	if (!ConditionalLockRelationOid(oids->heap, RowExclusiveLock) ||
		!ConditionalLockRelationOid(oids->pkey, RowExclusiveLock) ||
		!ConditionalLockRelationOid(oids->expiry, RowExclusiveLock))
		return 0;
	IdemStoreOpen(&store, oids, true, true);
	deleted = SweepOpenStore(&store, batch, now, resume_from);
	IdemStoreClose(&store);
	return deleted;
}
