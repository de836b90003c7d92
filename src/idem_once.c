/*
 * idem_once.c
 *	  Consumers of at-least-once messages (docs/specification.md, section 8):
 *	  idem_once for one message id, idem_once_batch for the ids of a whole
 *	  batch.
 *
 * A message id's record is a completed key with no request and no
 * response, committed or rolled back with the consumer's own writes.  The
 * batch form makes, per id, exactly the decision idem_once makes, in one
 * call: its ids are taken in one order (their bytes), whatever the order
 * in which the broker delivered them, so two consumers handed overlapping
 * batches wait for each other one key at a time, never in a cycle, and
 * never hold more than one key's lock at once.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "idem_args.h"
#include "idem_key.h"
#include "idem_stats.h"
#include "idem_store.h"
#include "idem_xact.h"

/*
 * The most ids one batch takes: brokers hand out at most a few thousand
 * messages at a time, and the call's memory grows with the batch.
 */
#define IDEM_BATCH_MAX_IDS 10000

PG_FUNCTION_INFO_V1(idem_once);
PG_FUNCTION_INFO_V1(idem_once_batch);

/* Write the record of a message id seen for the first time. */
static void
RecordMessage(IdemStore *store, const IdemKey *key, TimestampTz now,
			  TimestampTz expires_at, bool stale)
{
	IdemRecord	rec;

	if (stale)
		IdemClearExpiredRecord(store, key, now);
	memset(&rec, 0, sizeof(rec));
	rec.state = IDEM_STATE_COMPLETED;
	rec.fingerprint.isnull = true;
	rec.created_at = now;
	rec.expires_at = expires_at;
	rec.code_isnull = true;
	IdemStoreInsert(store, key, &rec);
}

/*
 * idem_once(key text, scope text, ttl interval): true the first time a
 * message id is seen, false for every redelivery.  The record commits or
 * rolls back with the caller's transaction.
 */
Datum
idem_once(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	TimestampTz expires_at;
	IdemStore	store;
	IdemRecord	rec;
	bool		live = false;
	bool		stale = false;

	IdemCallBeginKey(&call, fcinfo, false, 0, 1);
	expires_at = IdemGetTtlExpiry(fcinfo, 2, call.now);
	IdemCheckNotOpen(&call.key, "record");

	IdemStoreOpen(&store, call.oids, true);
	if (IdemProbeLive(&store, &call.key, call.now, &rec))
		live = true;
	else
	{
		(void) IdemLockAndProbe(&store, &call.key, true, call.now, "idem_once()", &rec, &live, &stale);
		if (!live)
		{
			RecordMessage(&store, &call.key, call.now, expires_at, stale);
			IdemKeyUnlock(&call.key);
		}
	}
	IdemStoreClose(&store);

	IdemStatsAdd(live ? IDEM_STAT_ONCE_FALSE : IDEM_STAT_ONCE_TRUE, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_BOOL(!live);
}

/* One id of a batch. */
typedef struct BatchId
{
	text	   *id;
	int			pos;			/* in the array, from 0 */
} BatchId;

/* The order ids are taken in: their bytes, then their place in the batch. */
static int
CompareBatchIds(const void *a, const void *b)
{
	const BatchId *x = a;
	const BatchId *y = b;
	int			xlen = VARSIZE_ANY_EXHDR(x->id);
	int			ylen = VARSIZE_ANY_EXHDR(y->id);
	int			cmp = memcmp(VARDATA_ANY(x->id), VARDATA_ANY(y->id), Min(xlen, ylen));

	if (cmp != 0)
		return cmp;
	if (xlen != ylen)
		return xlen < ylen ? -1 : 1;
	return x->pos < y->pos ? -1 : (x->pos > y->pos);
}

static bool
SameId(const BatchId *a, const BatchId *b)
{
	return VARSIZE_ANY_EXHDR(a->id) == VARSIZE_ANY_EXHDR(b->id) &&
		memcmp(VARDATA_ANY(a->id), VARDATA_ANY(b->id), VARSIZE_ANY_EXHDR(a->id)) == 0;
}

/*
 * The ids of the array argument, checked as idem_once checks one key:
 * none NULL, empty or longer than a key may be, and not too many.
 */
static BatchId *
GetBatchIds(FunctionCallInfo fcinfo, int *nids)
{
	ArrayType  *array;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	BatchId    *ids;

	IdemRequireArg(fcinfo, 0, "message ids");
	array = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("message ids must be a one-dimensional array"),
				 errdetail("The array given has %d dimensions.", ARR_NDIM(array))));
	n = ArrayGetNItems(ARR_NDIM(array), ARR_DIMS(array));
	if (n > IDEM_BATCH_MAX_IDS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many message ids in one batch"),
				 errdetail("The batch has %d ids; the limit is %d.", n, IDEM_BATCH_MAX_IDS),
				 errhint("Split the batch.")));
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);

	ids = palloc(sizeof(BatchId) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		text	   *id;
		int			len;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("idempotency key must not be null"),
					 errdetail("Element %d of the message ids is null.", i + 1)));
		id = DatumGetTextPP(elems[i]);
		len = VARSIZE_ANY_EXHDR(id);
		if (len == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency key must not be empty"),
					 errdetail("Element %d of the message ids is empty.", i + 1)));
		if (len > IDEM_KEY_MAX_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency key is too long"),
					 errdetail("Element %d of the message ids is %d bytes; the limit is %d bytes.",
							   i + 1, len, IDEM_KEY_MAX_LEN)));
		ids[i].id = id;
		ids[i].pos = i;
	}
	*nids = n;
	return ids;
}

/*
 * idem_once_batch(ids text[], scope text, ttl interval): the ids seen for
 * the first time, in the order of the array, each once.  An id repeated in
 * the batch is new at its first place only.  Every id gets idem_once's
 * answer and record, in the caller's transaction.
 */
Datum
idem_once_batch(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	TimestampTz expires_at;
	BatchId    *ids;
	int			nids;
	bool	   *is_new;
	Datum	   *result;
	int			nnew = 0;
	IdemStore	store;
	MemoryContext id_cxt;
	MemoryContext old_cxt;

	IdemCallBeginScope(&call, fcinfo, false, 1);
	expires_at = IdemGetTtlExpiry(fcinfo, 2, call.now);
	ids = GetBatchIds(fcinfo, &nids);
	if (nids == 0)
	{
		IdemStatsCallEnd(&call.timer);
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));
	}

	qsort(ids, nids, sizeof(BatchId), CompareBatchIds);
	is_new = palloc0(sizeof(bool) * nids);

	/* what one id's probe and insert allocate is freed before the next */
	id_cxt = AllocSetContextCreate(CurrentMemoryContext,
								   "idempotency batch id",
								   ALLOCSET_SMALL_SIZES);
	IdemStoreOpen(&store, call.oids, true);
	for (int i = 0; i < nids; i++)
	{
		IdemKey		key;
		IdemRecord	rec;
		bool		stale = false;

		CHECK_FOR_INTERRUPTS();
		if (i > 0 && SameId(&ids[i], &ids[i - 1]))
			continue;			/* a repeat: new at its first place only */

		old_cxt = MemoryContextSwitchTo(id_cxt);
		key.scope = call.scope;
		key.key = ids[i].id;
		key.hash = IdemKeyHash(call.scope, ids[i].id);
		IdemCheckNotOpen(&key, "record");

		/*
		 * The key's lock first, then one probe: in a batch most ids are new,
		 * and the lock-free probe idem_once tries first would be one more
		 * index descent for each of them.
		 */
		(void) IdemKeyLock(&key, true);
		if (IdemProbeSettled(&store, &key, call.now, true, true, &rec, &stale) ==
			IDEM_PROBE_FOUND)
		{
			IdemKeyUnlock(&key);
			IdemCheckRecordVisible(&rec, &key);
		}
		else
		{
			PreventCommandIfReadOnly("idem_once_batch()");
			RecordMessage(&store, &key, call.now, expires_at, stale);
			IdemKeyUnlock(&key);
			is_new[ids[i].pos] = true;
			nnew++;
		}
		MemoryContextSwitchTo(old_cxt);
		MemoryContextReset(id_cxt);
	}
	IdemStoreClose(&store);
	MemoryContextDelete(id_cxt);

	/* the new ids, in the order the batch had them */
	result = palloc(sizeof(Datum) * Max(nnew, 1));
	{
		text	  **by_pos = palloc(sizeof(text *) * nids);
		int			j = 0;

		for (int i = 0; i < nids; i++)
			by_pos[ids[i].pos] = ids[i].id;
		for (int p = 0; p < nids; p++)
			if (is_new[p])
				result[j++] = PointerGetDatum(by_pos[p]);
	}

	IdemStatsAdd(IDEM_STAT_ONCE_TRUE, nnew);
	IdemStatsAdd(IDEM_STAT_ONCE_FALSE, nids - nnew);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_ARRAYTYPE_P(construct_array(result, nnew, TEXTOID, -1, false,
										  TYPALIGN_INT));
}
