/*
 * idem_api.c
 *	  The SQL-callable functions of keys done in one transaction (begin,
 *	  finish, release, lookup, fingerprint, sweep): the status logic of
 *	  docs/specification.md, sections 4, 5 and 7.  Messages (idem_once) are
 *	  idem_once.c's.
 *
 * Statuses are decided here from what the key store reports and what this
 * transaction has open (idem_xact.c).  Arguments are read by idem_args.c,
 * the decisions about one key that leases share are idem_key.c's, and a
 * finish or release given a token goes to idem_lease.c.  Times are now():
 * the start of the calling transaction.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "idem_args.h"
#include "idem_citus.h"
#include "idem_fingerprint.h"
#include "idem_key.h"
#include "idem_lease.h"
#include "idem_response.h"
#include "idem_stats.h"
#include "idem_store.h"
#include "idem_work.h"
#include "idem_xact.h"

/*
 * Columns of the row idem_begin and idem_lookup return: 5 before 0.4.0
 * added response_headers, response_bytes, attempts and last_error.
 */
#define RESULT_NATTS 9
#define RESULT_NATTS_0_3 5

/* Values of the returned row. */
typedef struct IdemResult
{
	IdemStatus	status;
	bool		code_isnull;
	int32		response_code;
	Datum		response_body;	/* 0 for NULL */
	Datum		response_headers;	/* likewise */
	Datum		response_bytes; /* likewise */
	int32		attempts;		/* 0 for NULL */
	text	   *last_error;		/* NULL for NULL */
	bool		times_isnull;
	TimestampTz created_at;
	TimestampTz expires_at;
} IdemResult;

PG_FUNCTION_INFO_V1(idem_begin_jsonb);
PG_FUNCTION_INFO_V1(idem_begin_text);
PG_FUNCTION_INFO_V1(idem_begin_bytea);
PG_FUNCTION_INFO_V1(idem_finish);
PG_FUNCTION_INFO_V1(idem_call);
PG_FUNCTION_INFO_V1(idem_release);
PG_FUNCTION_INFO_V1(idem_lookup);
PG_FUNCTION_INFO_V1(idem_fingerprint_jsonb);
PG_FUNCTION_INFO_V1(idem_fingerprint_bytes);
PG_FUNCTION_INFO_V1(idem_sweep);

/*
 * Result for a live record: replay or mismatch, erased for a key an
 * operator erased (idem_retention.c), or for a leased key whose
 * work is still going on in some other transaction, in_progress.  A begin
 * cannot wait for a lease (it spans transactions); idem_lease takes over a
 * lease that ran out.
 */
static void
ResultFromRecord(const IdemRecord *rec, const IdemFingerprint *fp,
				 IdemResult *res)
{
	memset(res, 0, sizeof(*res));
	res->created_at = rec->created_at;
	res->expires_at = rec->expires_at;
	if (rec->state == IDEM_STATE_ERASED)
	{
		/* whatever the request: nothing of the first one is left to compare */
		res->status = IDEM_STATUS_ERASED;
		res->code_isnull = true;
	}
	else if (rec->state == IDEM_STATE_DEAD)
	{
		/*
		 * Attempts ran out: the work does not start again (idem_retry.c),
		 * whatever the request; idem_fail() does not see the request, so a
		 * dead key may have no fingerprint to compare.
		 */
		res->status = IDEM_STATUS_DEAD;
		res->code_isnull = true;
		res->attempts = rec->attempts;
		res->last_error = rec->last_error;
	}
	else if (rec->state == IDEM_STATE_LEASED && IdemFingerprintsMatch(&rec->fingerprint, fp))
	{
		/* only the status, as for a key held by another transaction */
		res->status = IDEM_STATUS_IN_PROGRESS;
		res->code_isnull = true;
		res->times_isnull = true;
	}
	else if (IdemFingerprintsMatch(&rec->fingerprint, fp))
	{
		res->status = IDEM_STATUS_REPLAY;
		res->code_isnull = rec->code_isnull;
		res->response_code = rec->response_code;
		res->response_body = rec->body_isnull ? (Datum) 0 : rec->response_body;
		res->response_headers = rec->response_headers;
		res->response_bytes = rec->response_bytes;
	}
	else
	{
		/* never show a response to a request that does not match it */
		res->status = IDEM_STATUS_MISMATCH;
		res->code_isnull = true;
	}
}

/* Result for a live record seen by idem_lookup: completed, leased or erased. */
static void
ResultCompleted(const IdemRecord *rec, IdemResult *res)
{
	memset(res, 0, sizeof(*res));
	res->status = IdemStatusOfRecord(rec);
	if (IDEM_STATE_IS_FAILURE(rec->state))
	{
		res->attempts = rec->attempts;
		res->last_error = rec->last_error;
	}
	res->code_isnull = rec->code_isnull;
	res->response_code = rec->response_code;
	res->response_body = rec->body_isnull ? (Datum) 0 : rec->response_body;
	res->response_headers = rec->response_headers;
	res->response_bytes = rec->response_bytes;
	res->created_at = rec->created_at;
	res->expires_at = rec->expires_at;
}

/* A result with a status and nothing else. */
static void
ResultStatusOnly(IdemStatus status, IdemResult *res)
{
	memset(res, 0, sizeof(*res));
	res->status = status;
	res->code_isnull = true;
	res->times_isnull = true;
}

/* Count a begin's outcome in idem_stats. */
static void
CountBeginResult(const IdemResult *res)
{
	IdemStatKind kind;

	switch (res->status)
	{
		case IDEM_STATUS_REPLAY:
			kind = IDEM_STAT_REPLAY;
			break;
		case IDEM_STATUS_STARTED:
			kind = IDEM_STAT_STARTED;
			break;
		case IDEM_STATUS_MISMATCH:
			kind = IDEM_STAT_MISMATCH;
			break;
		case IDEM_STATUS_ERASED:
			kind = IDEM_STAT_ERASED_REPLIES;
			break;
		case IDEM_STATUS_DEAD:
			kind = IDEM_STAT_DEAD_REPLIES;
			break;
		default:
			kind = IDEM_STAT_IN_PROGRESS;
			break;
	}
	IdemStatsAdd(kind, 1);
}

/*
 * Every column a result row may have, in the order of idem_begin_full's
 * row; each function's row takes some of them (ResultColumns).
 */
enum
{
	COL_STATUS, COL_CODE, COL_BODY, COL_CREATED, COL_EXPIRES, COL_HEADERS,
	COL_BYTES, COL_ATTEMPTS, COL_LAST_ERROR, NCOLS
};

/* Which columns idem_begin's and idem_lookup's rows have, and idem_call's. */
static const int begin_columns[RESULT_NATTS] = {
	COL_STATUS, COL_CODE, COL_BODY, COL_CREATED, COL_EXPIRES,
	/* from 0.4.0 */
	COL_HEADERS, COL_BYTES, COL_ATTEMPTS, COL_LAST_ERROR
};
#define CALL_RESULT_NATTS 7
static const int call_columns[CALL_RESULT_NATTS] = {
	COL_STATUS, COL_CODE, COL_BODY, COL_HEADERS, COL_BYTES, COL_CREATED, COL_EXPIRES
};

/*
 * Build the returned row: as many of the given columns as the installed
 * SQL declares (idem_begin's 5 before 0.4.0).
 */
static Datum
MakeResultDatum(IdemCallCache *cache, const IdemResult *res,
				const int *columns)
{
	Datum		all[NCOLS];
	bool		allnulls[NCOLS];
	Datum		values[RESULT_NATTS];
	bool		nulls[RESULT_NATTS];
	int			natts = cache->result_desc->natts;

	all[COL_STATUS] = CStringGetTextDatum(IdemStatusWord(res->status));
	allnulls[COL_STATUS] = false;
	all[COL_CODE] = Int32GetDatum(res->response_code);
	allnulls[COL_CODE] = res->code_isnull;
	all[COL_BODY] = res->response_body;
	allnulls[COL_BODY] = (res->response_body == (Datum) 0);
	all[COL_CREATED] = TimestampTzGetDatum(res->created_at);
	allnulls[COL_CREATED] = res->times_isnull;
	all[COL_EXPIRES] = TimestampTzGetDatum(res->expires_at);
	allnulls[COL_EXPIRES] = res->times_isnull;
	all[COL_HEADERS] = res->response_headers;
	allnulls[COL_HEADERS] = (res->response_headers == (Datum) 0);
	all[COL_BYTES] = res->response_bytes;
	allnulls[COL_BYTES] = (res->response_bytes == (Datum) 0);
	all[COL_ATTEMPTS] = Int32GetDatum(res->attempts);
	allnulls[COL_ATTEMPTS] = (res->attempts == 0);
	all[COL_LAST_ERROR] = PointerGetDatum(res->last_error);
	allnulls[COL_LAST_ERROR] = (res->last_error == NULL);

	/* a row type altered by hand (ALTER TYPE ... ADD ATTRIBUTE) is not ours */
	if (columns == call_columns ? natts != CALL_RESULT_NATTS :
		(natts != RESULT_NATTS && natts != RESULT_NATTS_0_3))
		elog(ERROR, "result row type has %d columns, not the extension's", natts);
	for (int i = 0; i < natts; i++)
	{
		values[i] = all[columns[i]];
		nulls[i] = allnulls[columns[i]];
	}
	return HeapTupleGetDatum(heap_form_tuple(cache->result_desc, values, nulls));
}

/* How an idem_begin variant fingerprints its request. */
typedef enum IdemBodyKind
{
	IDEM_BODY_JSONB,
	IDEM_BODY_BYTES				/* text or bytea: the exact bytes */
} IdemBodyKind;

/*
 * Begin a key, as idem_begin and idem_call do: the result for a live
 * record (replay, mismatch, in_progress, dead, erased), in_progress for a
 * key another transaction holds when !wait, or started, with the key open
 * in this transaction and locked.
 */
static void
StartKey(const IdemStoreOids *oids, const IdemKey *key,
		 const IdemFingerprint *fp, TimestampTz now, TimestampTz expires_at,
		 bool wait, const char *caller, IdemResult *res)
{
	IdemStore	store;
	IdemRecord	rec;
	bool		live;
	bool		stale = false;

	IdemStoreOpen(&store, oids, true);
	if (IdemProbeLive(&store, key, now, &rec))
		ResultFromRecord(&rec, fp, res);
	else if (!IdemLockAndProbe(&store, key, wait, now, caller, &rec, &live, &stale))
		ResultStatusOnly(IDEM_STATUS_IN_PROGRESS, res);
	else if (live)
		ResultFromRecord(&rec, fp, res);
	else
	{
		IdemOpenKeyAdd(key, fp, now, expires_at, stale);
		memset(res, 0, sizeof(*res));
		res->status = IDEM_STATUS_STARTED;
		res->code_isnull = true;
		res->created_at = now;
		res->expires_at = expires_at;
	}
	IdemStoreClose(&store);
}

/*
 * The body of the three idem_begin variants.  Every other argument is
 * checked before the body is hashed, so a bad call fails fast whatever the
 * body's size.
 */
static Datum
BeginKey(FunctionCallInfo fcinfo, IdemBodyKind kind)
{
	IdemCall	call;
	IdemFingerprint fingerprint;
	const IdemFingerprint *fp = &fingerprint;
	TimestampTz expires_at;
	bool		wait;
	IdemResult	res;

	IdemCallBeginKey(&call, fcinfo, true, 0, 2);
	expires_at = IdemGetTtlExpiry(fcinfo, 3, call.now);
	IdemRequireArg(fcinfo, 4, "wait");
	wait = PG_GETARG_BOOL(4);
	IdemCheckNotOpen(&call.key, "begin");

	fingerprint.isnull = PG_ARGISNULL(1);
	fingerprint.kind = kind == IDEM_BODY_JSONB ? IDEM_FP_KIND_JSONB : IDEM_FP_KIND_BYTES;
	if (!fingerprint.isnull && kind == IDEM_BODY_JSONB)
		IdemFingerprintJsonb(PG_GETARG_JSONB_P(1), fingerprint.bytes);
	else if (!fingerprint.isnull)
	{
		/* text and bytea share a representation */
		bytea	   *body = PG_GETARG_BYTEA_PP(1);

		IdemFingerprintBytes(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
							 fingerprint.bytes);
	}

	StartKey(call.oids, &call.key, fp, call.now, expires_at, wait, "idem_begin()", &res);
	CountBeginResult(&res);
	IdemStatsCallEnd(&call.timer);
	return MakeResultDatum(call.cache, &res, begin_columns);
}

/*
 * idem_begin(key text, request jsonb, scope text, ttl interval, wait bool)
 */
Datum
idem_begin_jsonb(PG_FUNCTION_ARGS)
{
	return BeginKey(fcinfo, IDEM_BODY_JSONB);
}

/*
 * idem_begin(key text, request text, ...): the body's exact bytes.
 */
Datum
idem_begin_text(PG_FUNCTION_ARGS)
{
	return BeginKey(fcinfo, IDEM_BODY_BYTES);
}

/*
 * idem_begin(key text, request bytea, ...): the body's exact bytes.
 */
Datum
idem_begin_bytea(PG_FUNCTION_ARGS)
{
	return BeginKey(fcinfo, IDEM_BODY_BYTES);
}

/*
 * Find the key this transaction began and has not finished, or raise 55000
 * naming the key and its actual state.
 */
static IdemOpenKey *
RequireBegunKey(IdemStore *store, const IdemKey *key, const char *verb)
{
	IdemOpenKey *open = IdemOpenKeyFind(key);

	if (open != NULL && IdemOpenKeyState(open) == IDEM_OPEN_BEGUN)
		return open;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s idempotency key %s because it is %s",
					verb, IdemKeyName(key), IdemDescribeKeyState(store, key, open)),
			 errhint("idem_%s() applies only to a key that this transaction began with idem_begin() and has neither finished nor released.",
					 verb)));
	return NULL;				/* keep compiler quiet */
}

/*
 * Write the completed record of a key this transaction began, and let its
 * lock go: the record, not yet committed, holds off every other writer
 * from now on.  Its times are the begin's.
 */
static void
FinishBegunKey(IdemStore *store, const IdemKey *key, IdemOpenKey *open,
			   int32 code, Datum body, Datum headers, Datum bytes)
{
	IdemRecord	rec;

	memset(&rec, 0, sizeof(rec));
	rec.state = IDEM_STATE_COMPLETED;
	rec.fingerprint = *IdemOpenKeyFingerprint(open);
	IdemOpenKeyTimes(open, &rec.created_at, &rec.expires_at);
	rec.response_code = code;
	rec.response_body = body;
	rec.response_headers = headers;
	rec.response_bytes = bytes;
	if (IdemOpenKeyReplaces(open))
		IdemClearExpiredRecord(store, key, rec.created_at);
	IdemStoreInsert(store, key, &rec);
	IdemOpenKeyClose(open, key, IDEM_OPEN_FINISHED);
}

/*
 * idem_finish(key text, response_code int, response_body jsonb, scope text,
 *			   token uuid, response_headers jsonb, response_bytes bytea): the
 *			   token, for a leased key, is passed only from version 0.2.0's
 *			   SQL definition, the headers and a body of any content type
 *			   (idem_response.c) from 0.4.0's.
 */
Datum
idem_finish(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	int32		code;
	Datum		body = (Datum) 0;
	Datum		headers = (Datum) 0;
	Datum		bytes = (Datum) 0;
	IdemOpenKey *open;
	IdemStore	store;

	IdemCallBeginKey(&call, fcinfo, false, 0, 3);
	IdemRequireArg(fcinfo, 1, "response code");
	code = PG_GETARG_INT32(1);
	IdemCheckResponseCode(code);
	if (!PG_ARGISNULL(2))
		body = PointerGetDatum(PG_GETARG_JSONB_P(2));
	if (PG_NARGS() > 6)
	{
		if (!PG_ARGISNULL(5))
			headers = IdemCheckResponseHeaders(PG_GETARG_JSONB_P(5));
		if (!PG_ARGISNULL(6))
			bytes = PointerGetDatum(PG_GETARG_BYTEA_P(6));
		if (body != (Datum) 0 && bytes != (Datum) 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a response has one body"),
					 errdetail("Both response_body and response_bytes were given."),
					 errhint("Pass a JSON body as response_body, any other as response_bytes with its Content-Type in response_headers.")));
	}

	IdemCheckResponseSize(body, headers, bytes);

	IdemStoreOpen(&store, call.oids, true);
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4))
		IdemLeaseFinish(&store, &call.key, PG_GETARG_UUID_P(4), code, body,
						headers, bytes);
	else
	{
		open = RequireBegunKey(&store, &call.key, "finish");
		PreventCommandIfReadOnly("idem_finish()");
		FinishBegunKey(&store, &call.key, open, code, body, headers, bytes);
	}
	IdemStoreClose(&store);

	IdemStatsAdd(IDEM_STAT_FINISHES, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_VOID();
}

/*
 * idem_call(key text, request jsonb, work regprocedure, scope text,
 *			 ttl interval, wait bool): begin the key, run the application's
 *			 work function on the request (idem_work.c) and finish the key
 *			 with the response it returns, in one statement, so that a
 *			 request made in autocommit costs one round trip.  A retry gets
 *			 the stored response (replay) without running the work; every
 *			 other outcome is idem_begin's.  An error the work raises
 *			 rolls the key back with the work.
 */
Datum
idem_call(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	IdemFingerprint fingerprint;
	TimestampTz expires_at;
	bool		wait;
	IdemWork   *work;
	IdemWorkResponse response;
	IdemOpenKey *open;
	TimestampTz created_at = 0;
	TimestampTz open_expires_at = 0;
	IdemStore	store;
	IdemResult	res;

	IdemCallBeginKey(&call, fcinfo, true, 0, 3);
	IdemRequireArg(fcinfo, 2, "work");
	expires_at = IdemGetTtlExpiry(fcinfo, 4, call.now);
	IdemRequireArg(fcinfo, 5, "wait");
	wait = PG_GETARG_BOOL(5);
	IdemCheckNotOpen(&call.key, "begin");

	/* a work function idem_call may not run changes nothing */
	if (call.cache->extra == NULL)
		call.cache->extra = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt,
												   sizeof(IdemWork));
	work = (IdemWork *) call.cache->extra;
	IdemWorkPrepare(work, PG_GETARG_OID(2), fcinfo->flinfo->fn_oid,
					fcinfo->flinfo->fn_mcxt);

	fingerprint.isnull = PG_ARGISNULL(1);
	fingerprint.kind = IDEM_FP_KIND_JSONB;
	if (!fingerprint.isnull)
		IdemFingerprintJsonb(PG_GETARG_JSONB_P(1), fingerprint.bytes);

	StartKey(call.oids, &call.key, &fingerprint, call.now, expires_at, wait,
			 "idem_call()", &res);
	CountBeginResult(&res);
	if (res.status != IDEM_STATUS_STARTED)
	{
		IdemStatsCallEnd(&call.timer);
		return MakeResultDatum(call.cache, &res, call_columns);
	}

	/* StartKey refused a new key in a read-only transaction (25006) */
	IdemStatsCallPause(&call.timer);
	IdemWorkRun(work, PG_GETARG_DATUM(1), PG_ARGISNULL(1), &response);
	IdemStatsCallResume(&call.timer);

	IdemStoreOpen(&store, call.oids, true);

	/*
	 * The key as this call began it: not finished or released by the work,
	 * nor released and begun again with another request or ttl.
	 */
	open = IdemOpenKeyFind(&call.key);
	if (open != NULL)
		IdemOpenKeyTimes(open, &created_at, &open_expires_at);
	if (open == NULL || IdemOpenKeyState(open) != IDEM_OPEN_BEGUN ||
		!IdemFingerprintsMatch(IdemOpenKeyFingerprint(open), &fingerprint) ||
		created_at != call.now || open_expires_at != expires_at)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("work function %s finished, released or began again idempotency key %s",
						format_procedure(work->funcid), IdemKeyName(&call.key)),
				 errhint("idem_call() finishes the key with the response the work returns; the work must leave it alone.")));
	FinishBegunKey(&store, &call.key, open, response.code, response.body,
				   response.headers, (Datum) 0);
	IdemStoreClose(&store);
	IdemStatsAdd(IDEM_STAT_FINISHES, 1);

	res.status = IDEM_STATUS_DONE;
	res.code_isnull = false;
	res.response_code = response.code;
	res.response_body = response.body;
	res.response_headers = response.headers;
	IdemStatsCallEnd(&call.timer);
	return MakeResultDatum(call.cache, &res, call_columns);
}

/*
 * idem_release(key text, scope text, token uuid): give up a begun key, or
 * with its token a leased one; it is absent again, for this and every other
 * transaction.
 */
Datum
idem_release(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	IdemOpenKey *open;
	IdemStore	store;

	IdemCallBeginKey(&call, fcinfo, false, 0, 1);
	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
	{
		IdemStoreOpen(&store, call.oids, true);
		IdemLeaseRelease(&store, &call.key, PG_GETARG_UUID_P(2));
		IdemStoreClose(&store);
	}
	else
	{
		IdemStoreOpen(&store, call.oids, false);
		open = RequireBegunKey(&store, &call.key, "release");
		IdemStoreClose(&store);
		IdemOpenKeyClose(open, &call.key, IDEM_OPEN_RELEASED);
	}

	IdemStatsAdd(IDEM_STAT_RELEASES, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_VOID();
}

/*
 * idem_lookup(key text, scope text): a read-only look at a key, for status
 * endpoints.  Status is completed, in_progress, failed, dead, erased or
 * absent.
 */
Datum
idem_lookup(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	IdemStore	store;
	IdemRecord	rec;
	IdemResult	res;
	IdemOpenKey *open;
	TransactionId xwait;
	SnapshotData dirty;

	IdemCallBeginKey(&call, fcinfo, true, 0, 1);
	open = IdemOpenKeyFind(&call.key);

	IdemStoreOpen(&store, call.oids, false);
	if (IdemStoreProbe(&store, &call.key, GetActiveSnapshot(), true, &rec, &xwait) == IDEM_PROBE_FOUND &&
		rec.expires_at > call.now)
		ResultCompleted(&rec, &res);
	else if (open != NULL && IdemOpenKeyState(open) == IDEM_OPEN_BEGUN)
	{
		ResultStatusOnly(IDEM_STATUS_IN_PROGRESS, &res);
		res.times_isnull = false;
		IdemOpenKeyTimes(open, &res.created_at, &res.expires_at);
	}
	else if (IdemKeyLockedByOthers(&call.key))
		ResultStatusOnly(IDEM_STATUS_IN_PROGRESS, &res);
	else
	{
		/*
		 * A key goes from its lock to its row: looking at the lock first,
		 * then at rows any transaction is writing, cannot miss both.  A row
		 * that committed after our snapshot is reported as idem_begin would.
		 */
		InitDirtySnapshot(dirty);
		switch (IdemStoreProbe(&store, &call.key, &dirty, true, &rec, &xwait))
		{
			case IDEM_PROBE_BUSY:
				ResultStatusOnly(rec.inserting ? IDEM_STATUS_IN_PROGRESS : IDEM_STATUS_ABSENT, &res);
				break;
			case IDEM_PROBE_FOUND:
				if (rec.expires_at > call.now)
				{
					IdemCheckRecordVisible(&rec, &call.key);
					ResultCompleted(&rec, &res);
				}
				else
					ResultStatusOnly(IDEM_STATUS_ABSENT, &res);
				break;
			case IDEM_PROBE_ABSENT:
				ResultStatusOnly(IDEM_STATUS_ABSENT, &res);
				break;
		}
	}
	IdemStoreClose(&store);

	IdemStatsCallEnd(&call.timer);
	return MakeResultDatum(call.cache, &res, begin_columns);
}

/* Return a fingerprint as a bytea. */
static Datum
FingerprintDatum(const uint8 *digest)
{
	bytea	   *result = palloc(VARHDRSZ + IDEM_FINGERPRINT_LEN);

	SET_VARSIZE(result, VARHDRSZ + IDEM_FINGERPRINT_LEN);
	memcpy(VARDATA(result), digest, IDEM_FINGERPRINT_LEN);
	PG_RETURN_BYTEA_P(result);
}

/*
 * idem_fingerprint(jsonb): SHA-256 of the canonical form.
 */
Datum
idem_fingerprint_jsonb(PG_FUNCTION_ARGS)
{
	uint8		digest[IDEM_FINGERPRINT_LEN];

	IdemFingerprintJsonb(PG_GETARG_JSONB_P(0), digest);
	return FingerprintDatum(digest);
}

/*
 * idem_fingerprint(bytea) and idem_fingerprint(text): SHA-256 of the bytes.
 */
Datum
idem_fingerprint_bytes(PG_FUNCTION_ARGS)
{
	uint8		digest[IDEM_FINGERPRINT_LEN];
	bytea	   *data = PG_GETARG_BYTEA_PP(0);

	IdemFingerprintBytes(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), digest);
	return FingerprintDatum(digest);
}

/*
 * idem_sweep(batch int): delete up to batch expired keys, waiting on no
 * lock that a live transaction holds; returns how many were deleted.
 */
Datum
idem_sweep(PG_FUNCTION_ARGS)
{
	IdemCallCache *cache = IdemGetCallCache(fcinfo, false);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	int32		batch;
	int64		deleted;

	IdemRequireArg(fcinfo, 0, "batch");
	batch = PG_GETARG_INT32(0);
	if (batch <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch must be positive"),
				 errdetail("The batch given was %d.", batch)));
	PreventCommandIfReadOnly("idem_sweep()");

	deleted = IdemStoreSweep(&cache->oids, batch, now, NULL, NULL);
	/* on Citus, and the shards of idem_tenant_keys this node holds too */
	if (deleted < batch)
		deleted += IdemCitusSweepShards(&cache->oids, batch - deleted, now, NULL);
	PG_RETURN_INT64(deleted);
}
