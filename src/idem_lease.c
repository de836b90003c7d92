/*
 * idem_lease.c
 *	  Leases: keys whose work spans transactions.  idem_lease,
 *	  idem_checkpoint, and idem_finish / idem_release given a token.
 *
 * A leased key's record (state 'p') commits with the lease transaction, so
 * the key stays taken while its holder calls a payment provider or sends an
 * email between transactions.  The holder proves on every later call that
 * it still owns the key with a fencing token, a random uuid.  When a lease
 * runs out before its work is finished, the next idem_lease takes the key
 * over: it gets a new token, the attempt count, and the last recovery
 * point (phase and state) that an earlier holder committed with
 * idem_checkpoint, together with that phase's own writes.  From then on a
 * call with the old token is refused with 55000 and changes nothing.
 *
 * Every change to a leased record is made holding the key's lock
 * (idem_xact.c), after waiting for any transaction still writing the row:
 * two callers never both take a key over, and a checkpoint and a takeover
 * are serialized, the second seeing what the first committed.  After each
 * write the command counter is advanced, so that calls on the same key in
 * one statement (a lease and its finish in one SELECT) see each other's
 * writes as they would in two.  A leased key is never an open key of its
 * transaction, so the commit guard leaves it alone; the sweeper removes it
 * once its ttl has passed, like any other.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "idem_args.h"
#include "idem_fingerprint.h"
#include "idem_guc.h"
#include "idem_key.h"
#include "idem_lease.h"
#include "idem_response.h"
#include "idem_stats.h"
#include "idem_store.h"
#include "idem_xact.h"

/* Columns of the row idem_lease returns; 7 before 0.4.0. */
#define LEASE_RESULT_NATTS 10

/* Limit on a phase name, in bytes; it is a label, like a key. */
#define IDEM_PHASE_MAX_LEN 255

/* Values of the row idem_lease returns; a zero field is NULL. */
typedef struct LeaseResult
{
	IdemStatus	status;
	IdemStatKind counted_as;
	const pg_uuid_t *token;
	text	   *phase;
	Datum		state;
	int32		attempts;
	bool		code_isnull;
	int32		response_code;
	Datum		response_body;
	Datum		response_headers;
	Datum		response_bytes;
	text	   *last_error;
} LeaseResult;

PG_FUNCTION_INFO_V1(idem_lease);
PG_FUNCTION_INFO_V1(idem_checkpoint);

/* A fresh fencing token: a random (version 4) uuid, as gen_random_uuid(). */
void
IdemNewLeaseToken(pg_uuid_t *token)
{
	if (!pg_strong_random(token->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	token->data[6] = (token->data[6] & 0x0f) | 0x40;
	token->data[8] = (token->data[8] & 0x3f) | 0x80;
}

static bool
TokensEqual(const pg_uuid_t *a, const pg_uuid_t *b)
{
	return memcmp(a->data, b->data, UUID_LEN) == 0;
}

/*
 * Probe the key, waiting out its writers (without the key's lock, if
 * key_locked: see IdemProbeSettled): does it have a live record?
 */
static bool
ProbeSettled(IdemStore *store, const IdemKey *key, TimestampTz now,
			 bool key_locked, IdemRecord *rec, bool *stale)
{
	return IdemProbeSettled(store, key, now, true, key_locked, rec, stale) ==
		IDEM_PROBE_FOUND;
}

/*
 * Decide idem_lease's result for a live record, if it needs no change: erased,
 * dead, mismatch, replay, or in_progress while the lease runs.  Returns false
 * when the lease has run out and the caller should take the key over.
 */
static bool
DecideLive(const IdemRecord *rec, const IdemFingerprint *fp,
		   TimestampTz now, LeaseResult *res)
{
	if (rec->state == IDEM_STATE_ERASED)
	{
		res->status = IDEM_STATUS_ERASED;
		res->counted_as = IDEM_STAT_ERASED_REPLIES;
	}
	else if (rec->state == IDEM_STATE_DEAD)
	{
		/* its attempts ran out: the last recovery point and the reason */
		res->status = IDEM_STATUS_DEAD;
		res->counted_as = IDEM_STAT_DEAD_REPLIES;
		res->phase = rec->phase;
		res->state = rec->phase_state;
		res->attempts = rec->attempts;
		res->last_error = rec->last_error;
	}
	else if (!IdemFingerprintsMatch(&rec->fingerprint, fp))
	{
		res->status = IDEM_STATUS_MISMATCH;
		res->counted_as = IDEM_STAT_MISMATCH;
	}
	else if (rec->state != IDEM_STATE_LEASED)
	{
		res->status = IDEM_STATUS_REPLAY;
		res->counted_as = IDEM_STAT_REPLAY;
		res->code_isnull = rec->code_isnull;
		res->response_code = rec->response_code;
		res->response_body = rec->body_isnull ? (Datum) 0 : rec->response_body;
		res->response_headers = rec->response_headers;
		res->response_bytes = rec->response_bytes;
	}
	else if (rec->lease_expires_at > now)
	{
		res->status = IDEM_STATUS_IN_PROGRESS;
		res->counted_as = IDEM_STAT_IN_PROGRESS;
	}
	else
		return false;
	return true;
}

/* Build idem_lease's row. */
static Datum
MakeLeaseResult(IdemCallCache *cache, const LeaseResult *res)
{
	Datum		values[LEASE_RESULT_NATTS];
	bool		nulls[LEASE_RESULT_NATTS];

	values[0] = CStringGetTextDatum(IdemStatusWord(res->status));
	values[1] = UUIDPGetDatum(res->token);
	values[2] = PointerGetDatum(res->phase);
	values[3] = res->state;
	values[4] = Int32GetDatum(res->attempts);
	values[5] = Int32GetDatum(res->response_code);
	values[6] = res->response_body;
	nulls[0] = false;
	nulls[1] = (res->token == NULL);
	nulls[2] = (res->phase == NULL);
	nulls[3] = (res->state == (Datum) 0);
	nulls[4] = (res->attempts == 0);
	nulls[5] = res->code_isnull;
	nulls[6] = (res->response_body == (Datum) 0);
	/* the columns the installed SQL declares (7 before 0.4.0) */
	values[7] = res->response_headers;
	nulls[7] = (res->response_headers == (Datum) 0);
	values[8] = res->response_bytes;
	nulls[8] = (res->response_bytes == (Datum) 0);
	values[9] = PointerGetDatum(res->last_error);
	nulls[9] = (res->last_error == NULL);
	return HeapTupleGetDatum(heap_form_tuple(cache->result_desc, values, nulls));
}

/*
 * The lease duration is stored and added again at every renewal, at later
 * dates: an interval with a negative part, such as '1 month -29 days'
 * (positive from November, not from February), could then land before now.
 */
static void
RequireNoNegativePart(const Interval *lease)
{
	if (lease->month < 0 || lease->day < 0 || lease->time < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must not have a negative part"),
				 errdetail("The lease given was %s; it is added again at every renewal, where a negative part could bring it before now.",
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(lease))))));
}

/*
 * idem_lease(key text, request jsonb, scope text, ttl interval,
 *			  lease interval, max_attempts int)
 *
 * Begin a key whose in-progress record commits: started (a new key),
 * resumed (an earlier lease ran out: take it over), replay, mismatch,
 * in_progress (a live lease is held by someone else), erased, or dead (the
 * lease ran out on the last attempt max_attempts allows, now or before).
 */
Datum
idem_lease(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	TimestampTz expires_at;
	TimestampTz lease_until;
	Interval   *lease;
	IdemFingerprint fp;
	IdemStore	store;
	IdemRecord	rec;
	LeaseResult res;
	pg_uuid_t	token;
	bool		stale;
	int32		max_attempts = 0;

	IdemCallBeginKey(&call, fcinfo, true, 0, 2);
	expires_at = IdemGetTtlExpiry(fcinfo, 3, call.now);
	lease_until = IdemGetExpiry(fcinfo, 4, "lease", call.now);
	IdemCheckOperatorBound(call.now, lease_until, "lease", "idempotency.max_lease",
						   idem_max_lease_s);
	lease = PG_GETARG_INTERVAL_P(4);
	RequireNoNegativePart(lease);
	/* from 0.4.0: a bound on the attempts (leases taken) */
	if (PG_NARGS() > 5 && !PG_ARGISNULL(5))
		max_attempts = IdemGetMaxAttempts(fcinfo, 5);
	IdemCheckNotOpen(&call.key, "lease");
	fp.isnull = PG_ARGISNULL(1);
	fp.kind = IDEM_FP_KIND_JSONB;
	if (!fp.isnull)
		IdemFingerprintJsonb(PG_GETARG_JSONB_P(1), fp.bytes);

	memset(&res, 0, sizeof(res));
	res.code_isnull = true;
	IdemStoreOpen(&store, call.oids, true);
	IdemStoreRequireLeases(&store);

	/* a retry of a finished or running lease is answered without a lock */
	if (ProbeSettled(&store, &call.key, call.now, false, &rec, &stale))
	{
		IdemCheckRecordVisible(&rec, &call.key);
		if (DecideLive(&rec, &fp, call.now, &res))
			goto done;
	}

	PreventCommandIfReadOnly("idem_lease()");
	(void) IdemKeyLock(&call.key, true);
	for (;;)
	{
		if (!ProbeSettled(&store, &call.key, call.now, true, &rec, &stale))
		{
			/* a failed key's attempts, bound and reason go on with the lease */
			int32		prior_attempts = 0;
			int32		prior_max = 0;
			text	   *prior_error = NULL;

			if (IdemIsLiveFailure(&rec, stale, call.now))
			{
				prior_attempts = rec.attempts;
				prior_max = rec.max_attempts;
				prior_error = rec.last_error;
			}
			if (stale)
				IdemClearExpiredRecord(&store, &call.key, call.now);
			memset(&rec, 0, sizeof(rec));
			rec.max_attempts = max_attempts > 0 ? max_attempts : prior_max;
			rec.last_error = prior_error;
			if (rec.max_attempts > 0 && prior_attempts >= rec.max_attempts)
			{
				/* its attempts ran out already */
				rec.state = IDEM_STATE_DEAD;
				rec.fingerprint = fp;
				rec.created_at = call.now;
				rec.expires_at = expires_at;
				rec.code_isnull = true;
				rec.attempts = prior_attempts;
				rec.lease_duration = *lease;	/* idem_retry makes it a lease */
				IdemStoreInsert(&store, &call.key, &rec);
				CommandCounterIncrement();
				IdemStatsAdd(IDEM_STAT_DEAD, 1);
				(void) DecideLive(&rec, &fp, call.now, &res);
				break;
			}
			rec.state = IDEM_STATE_LEASED;
			rec.fingerprint = fp;
			rec.created_at = call.now;
			rec.expires_at = expires_at;
			rec.code_isnull = true;
			IdemNewLeaseToken(&rec.lease_token);
			/* a lease never runs past the key's ttl */
			rec.lease_expires_at = Min(lease_until, expires_at);
			rec.lease_duration = *lease;
			rec.attempts = prior_attempts + 1;
			IdemStoreInsert(&store, &call.key, &rec);
			CommandCounterIncrement();
			res.status = IDEM_STATUS_STARTED;
			res.counted_as = IDEM_STAT_STARTED;
			res.last_error = rec.last_error;	/* a failed key's, if it was
												 * one */
			break;
		}
		IdemCheckRecordVisible(&rec, &call.key);
		if (DecideLive(&rec, &fp, call.now, &res))
			break;

		/*
		 * The lease ran out.  If that was the last attempt the caller (or an
		 * earlier one) allows, the key is dead: it keeps its recovery point,
		 * and nothing takes it over again (idem_retry.c).
		 */
		if (max_attempts > 0)
			rec.max_attempts = max_attempts;
		if (rec.max_attempts > 0 && rec.attempts >= rec.max_attempts)
		{
			rec.state = IDEM_STATE_DEAD;
			if (rec.last_error == NULL)
				rec.last_error = cstring_to_text(rec.attempts == 1 ?
												 pstrdup("its lease ran out") :
												 psprintf("its lease ran out %d times", rec.attempts));
			if (!IdemStoreUpdate(&store, &call.key, &rec))
				continue;
			CommandCounterIncrement();
			IdemStatsAdd(IDEM_STAT_DEAD, 1);
			(void) DecideLive(&rec, &fp, call.now, &res);
			break;
		}

		/* take the key over from its recovery point */
		IdemNewLeaseToken(&rec.lease_token);
		rec.lease_expires_at = Min(lease_until, rec.expires_at);
		rec.lease_duration = *lease;
		rec.attempts++;
		if (!IdemStoreUpdate(&store, &call.key, &rec))
			continue;			/* a sweep took it meanwhile: look again */
		CommandCounterIncrement();
		res.status = IDEM_STATUS_RESUMED;
		res.counted_as = IDEM_STAT_RESUMED;
		res.phase = rec.phase;
		res.state = rec.phase_state;
		res.last_error = rec.last_error;	/* why an earlier attempt failed */
		break;
	}
	IdemKeyUnlock(&call.key);

	/* only the new holder learns the token */
	if (res.counted_as == IDEM_STAT_STARTED || res.counted_as == IDEM_STAT_RESUMED)
	{
		token = rec.lease_token;
		res.token = &token;
		res.attempts = rec.attempts;
	}

done:
	IdemStoreClose(&store);
	IdemStatsAdd(res.counted_as, 1);
	IdemStatsCallEnd(&call.timer);
	return MakeLeaseResult(call.cache, &res);
}

/*
 * Find the key's leased record held by token, with the key's lock held, or
 * raise 55000: the key was taken over, finished, released or swept (a
 * stale token), or was never leased.
 */
static void
RequireLease(IdemStore *store, const IdemKey *key, const pg_uuid_t *token,
			 const char *verb, TimestampTz now, IdemRecord *rec)
{
	IdemOpenKey *open = IdemOpenKeyFind(key);
	bool		stale;
	const char *state;

	if (ProbeSettled(store, key, now, true, rec, &stale) &&
		rec->state == IDEM_STATE_LEASED)
	{
		/*
		 * The token first: a stale one is refused (55000) whatever the
		 * caller's snapshot sees, rather than with a serialization failure
		 * that its retry logic would run the phase again for.  Neither the
		 * holder's token nor its attempt count goes into the message: the
		 * caller may be anyone.
		 */
		if (TokensEqual(&rec->lease_token, token))
		{
			IdemCheckRecordVisible(rec, key);
			return;
		}
		IdemStatsAdd(IDEM_STAT_STALE_TOKENS, 1);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s idempotency key %s because its lease is held by another token",
						verb, IdemKeyName(key)),
				 errdetail("A token stops applying when its lease runs out and idem_lease() takes the key over."),
				 errhint("Stop working on this key: its new holder resumes from the last checkpoint.")));
	}

	if (open != NULL && IdemOpenKeyState(open) == IDEM_OPEN_BEGUN)
		state = "begun by idem_begin() in this transaction, without a lease";
	else
	{
		state = IdemDescribeKeyState(store, key, open);
		IdemStatsAdd(IDEM_STAT_STALE_TOKENS, 1);
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s idempotency key %s with a lease token because it is %s",
					verb, IdemKeyName(key), state),
			 errhint("A token applies only while its lease holds the key: from idem_lease() until idem_finish() or idem_release(), or until another idem_lease() takes over a lease that ran out.")));
}

/*
 * idem_checkpoint(key text, token uuid, phase text, state jsonb,
 *				   scope text, extend interval)
 *
 * Record a recovery point in the caller's transaction, to commit with the
 * phase's own writes, and renew the lease: by extend, or by the lease's
 * length, but never past the key's ttl (when that passes the key is absent
 * and its recovery point gone).  Returns when the lease now runs out.
 */
Datum
idem_checkpoint(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	pg_uuid_t  *token;
	text	   *phase;
	Datum		state = (Datum) 0;
	IdemStore	store;
	IdemRecord	rec;
	TimestampTz renewed_until;

	IdemCallBeginKey(&call, fcinfo, false, 0, 4);
	IdemRequireArg(fcinfo, 1, "lease token");
	token = PG_GETARG_UUID_P(1);
	phase = IdemGetTextArg(fcinfo, 2, "phase", IDEM_PHASE_MAX_LEN, false);
	if (!PG_ARGISNULL(3))
		state = PointerGetDatum(PG_GETARG_JSONB_P(3));
	IdemCheckStateSize(state);
	if (!PG_ARGISNULL(5))
		IdemCheckOperatorBound(call.now, IdemGetExpiry(fcinfo, 5, "extend", call.now),
							   "extend", "idempotency.max_lease",
							   idem_max_lease_s);

	IdemStoreOpen(&store, call.oids, true);
	IdemStoreRequireLeases(&store);
	PreventCommandIfReadOnly("idem_checkpoint()");
	(void) IdemKeyLock(&call.key, true);
	do
	{
		RequireLease(&store, &call.key, token, "checkpoint", call.now, &rec);
		rec.phase = phase;
		rec.phase_state = state;

		/*
		 * A lease taken before 0.3.0 may be longer than 0.3.0 accepts; it
		 * runs to the key's ttl, which caps every lease anyway.
		 */
		if (!PG_ARGISNULL(5))
			renewed_until = IdemAddInterval(call.now, PG_GETARG_INTERVAL_P(5), "extend");
		else if (IdemIntervalTooLong(&rec.lease_duration))
			renewed_until = rec.expires_at;
		else
			renewed_until = IdemAddInterval(call.now, &rec.lease_duration, "lease");
		/* a lease taken before the operator's bound was set renews within it */
		renewed_until = Min(renewed_until, IdemOperatorBound(call.now, idem_max_lease_s));
		rec.lease_expires_at = Min(renewed_until, rec.expires_at);
	} while (!IdemStoreUpdate(&store, &call.key, &rec));
	CommandCounterIncrement();
	IdemKeyUnlock(&call.key);
	IdemStoreClose(&store);

	IdemStatsAdd(IDEM_STAT_CHECKPOINTS, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_TIMESTAMPTZ(rec.lease_expires_at);
}

/*
 * idem_finish with a token: the leased record becomes the completed one,
 * in the caller's transaction.  It keeps its attempt count.
 */
void
IdemLeaseFinish(IdemStore *store, const IdemKey *key, const pg_uuid_t *token,
				int32 response_code, Datum response_body,
				Datum response_headers, Datum response_bytes)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	IdemRecord	rec;

	IdemStoreRequireLeases(store);
	PreventCommandIfReadOnly("idem_finish()");
	(void) IdemKeyLock(key, true);
	do
	{
		RequireLease(store, key, token, "finish", now, &rec);
		rec.state = IDEM_STATE_COMPLETED;
		rec.code_isnull = false;
		rec.response_code = response_code;
		rec.response_body = response_body;
		rec.body_isnull = (response_body == (Datum) 0);
		rec.response_headers = response_headers;
		rec.response_bytes = response_bytes;
	} while (!IdemStoreUpdate(store, key, &rec));
	CommandCounterIncrement();
	IdemKeyUnlock(key);
}

/* idem_release with a token: the key is absent again. */
void
IdemLeaseRelease(IdemStore *store, const IdemKey *key, const pg_uuid_t *token)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	IdemRecord	rec;

	IdemStoreRequireLeases(store);
	PreventCommandIfReadOnly("idem_release()");
	(void) IdemKeyLock(key, true);
	do
		RequireLease(store, key, token, "release", now, &rec);
	while (!IdemStoreDelete(store, &rec.tid, true));
	CommandCounterIncrement();
	IdemKeyUnlock(key);
}

/*
 * idem_fail with a token: the holder reports a failed attempt.  The reason
 * is recorded; if the attempts the lease has taken reach the bound (the
 * caller's, or the one the key has), the key is dead, keeping its recovery
 * point; otherwise its lease ends now, so that the next idem_lease takes
 * it over at once.  Returns whether it is dead.
 */
bool
IdemLeaseFail(IdemStore *store, const IdemKey *key, const pg_uuid_t *token,
			  text *error, int32 max_attempts)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	IdemRecord	rec;
	bool		dead;

	IdemStoreRequireLeases(store);
	PreventCommandIfReadOnly("idem_fail()");
	(void) IdemKeyLock(key, true);
	do
	{
		RequireLease(store, key, token, "fail", now, &rec);
		rec.last_error = error;
		if (max_attempts > 0)
			rec.max_attempts = max_attempts;
		dead = (rec.max_attempts > 0 && rec.attempts >= rec.max_attempts);
		if (dead)
			rec.state = IDEM_STATE_DEAD;
		else
			rec.lease_expires_at = now;
	} while (!IdemStoreUpdate(store, key, &rec));
	CommandCounterIncrement();
	IdemKeyUnlock(key);
	if (dead)
		IdemStatsAdd(IDEM_STAT_DEAD, 1);
	return dead;
}
