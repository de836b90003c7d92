/*
 * idem_retry.c
 *	  Retries that are not forever: idem_fail records a
 *	  failed attempt that survives its transaction's rollback, and the
 *	  operator's idem_retry and idem_discard act on keys whose attempts ran
 *	  out.
 *
 * A request or message whose work fails rolls back everything its
 * transaction wrote, the key's record included, so nothing would stop it
 * from failing the same way forever.  After the rollback the caller
 * records the failure in a transaction of its own with idem_fail: the key
 * gets a record of state 'f' (failed) with the attempt count, the reason
 * and the bound the caller sets.  The next begin of the key starts the work
 * again (the failed record is replaced when it finishes); once the count
 * reaches the bound the key is 'd' (dead): every later call answers "dead"
 * (idem_once: false) with the count and the reason, and nothing starts it
 * again until an operator calls idem_retry (new attempts) or idem_discard
 * (forget the key), or its ttl passes.  A lease holder reports its failure
 * with its token (idem_lease.c); a lease that keeps running out reaches its
 * bound in idem_lease itself, and a dead lease keeps its recovery point.
 *
 * Every change is made holding the key's lock after waiting for its
 * writers, so two failures reported at once count twice, and the one that
 * reaches the bound is the one that makes the key dead.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "idem_args.h"
#include "idem_key.h"
#include "idem_lease.h"
#include "idem_stats.h"
#include "idem_store.h"
#include "idem_xact.h"

/* The longest reason recorded, in bytes. */
#define IDEM_MAX_ERROR_LEN 8192

PG_FUNCTION_INFO_V1(idem_fail);
PG_FUNCTION_INFO_V1(idem_retry);
PG_FUNCTION_INFO_V1(idem_discard);

/* Raise 55000: the key is not in a state the function applies to. */
static void
RefuseState(IdemStore *store, const IdemKey *key, const char *verb,
			const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s idempotency key %s because it is %s",
					verb, IdemKeyName(key), IdemDescribeKeyState(store, key, NULL)),
			 errhint("%s", hint)));
}

/*
 * idem_fail(key text, error text, scope text, max_attempts int,
 *			 ttl interval, token uuid): record a failed attempt.  Returns
 * 'failed' (the next attempt may start) or 'dead'.
 */
Datum
idem_fail(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	text	   *error;
	int32		max_attempts = 0;
	TimestampTz expires_at;
	IdemStore	store;
	IdemRecord	rec;
	bool		stale;
	bool		existing;
	bool		dead;

	IdemCallBeginKey(&call, fcinfo, false, 0, 2);
	error = IdemGetTextArg(fcinfo, 1, "error", IDEM_MAX_ERROR_LEN, false);
	if (!PG_ARGISNULL(3))
		max_attempts = IdemGetMaxAttempts(fcinfo, 3);
	expires_at = IdemGetTtlExpiry(fcinfo, 4, call.now);
	IdemCheckNotOpen(&call.key, "fail");
	PreventCommandIfReadOnly("idem_fail()");

	IdemStoreOpen(&store, call.oids, true);
	IdemStoreRequireLeases(&store);
	if (!PG_ARGISNULL(5))
	{
		dead = IdemLeaseFail(&store, &call.key, PG_GETARG_UUID_P(5), error, max_attempts);
		goto done;
	}

	for (;;)
	{
		if (IdemLockSettled(&store, &call.key, call.now, &rec, &stale))
		{
			IdemCheckRecordVisible(&rec, &call.key);
			if (rec.state == IDEM_STATE_DEAD)
			{
				dead = true;	/* dead already: it stays as it is */
				break;
			}
			if (rec.state == IDEM_STATE_LEASED)
				RefuseState(&store, &call.key, "fail",
							"A leased key's failure is reported by its holder: pass the token that idem_lease() returned.");
			RefuseState(&store, &call.key, "fail",
						"idem_fail() records a failed attempt at a key that has no result: call it after the attempt's transaction rolled back.");
		}
		existing = IdemIsLiveFailure(&rec, stale, call.now);
		if (existing)
		{
			/* one more failed attempt */
			IdemCheckRecordVisible(&rec, &call.key);
			rec.attempts++;
		}
		else
		{
			/* the first: an expired record goes, a failed one is made */
			if (stale)
				IdemClearExpiredRecord(&store, &call.key, call.now);
			memset(&rec, 0, sizeof(rec));
			rec.created_at = call.now;
			rec.expires_at = expires_at;
			rec.code_isnull = true;
			rec.fingerprint.isnull = true;
			rec.attempts = 1;
		}
		rec.last_error = error;
		if (max_attempts > 0)
			rec.max_attempts = max_attempts;
		dead = (rec.max_attempts > 0 && rec.attempts >= rec.max_attempts);
		rec.state = dead ? IDEM_STATE_DEAD : IDEM_STATE_FAILED;
		if (!existing)
			IdemStoreInsert(&store, &call.key, &rec);
		else if (!IdemStoreUpdate(&store, &call.key, &rec))
		{
			IdemKeyUnlock(&call.key);	/* a sweep took it meanwhile: look
										 * again */
			continue;
		}
		if (dead)
			IdemStatsAdd(IDEM_STAT_DEAD, 1);
		break;
	}
	CommandCounterIncrement();
	IdemKeyUnlock(&call.key);

done:
	IdemStoreClose(&store);
	IdemStatsAdd(IDEM_STAT_FAILURES, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_TEXT_P(cstring_to_text(IdemStatusWord(dead ? IDEM_STATUS_DEAD : IDEM_STATUS_FAILED)));
}

/*
 * idem_retry(key text, scope text): give a dead key new attempts, as many
 * as its bound allows.  A dead lease can be taken over at once by the next
 * idem_lease, from its last recovery point; any other dead key is failed
 * again, and its next begin starts the work.  Returns the key's new state:
 * 'in_progress' (a lease to take over) or 'failed'.
 */
Datum
idem_retry(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	IdemStore	store;
	IdemRecord	rec;
	bool		stale;
	bool		was_lease;

	IdemCallBeginKey(&call, fcinfo, false, 0, 1);
	IdemCheckNotOpen(&call.key, "retry");
	PreventCommandIfReadOnly("idem_retry()");

	IdemStoreOpen(&store, call.oids, true);
	IdemStoreRequireLeases(&store);
	for (;;)
	{
		if (!IdemLockSettled(&store, &call.key, call.now, &rec, &stale) ||
			rec.state != IDEM_STATE_DEAD)
			RefuseState(&store, &call.key, "retry",
						"idem_retry() gives new attempts to a dead key: one whose attempts ran out.");
		IdemCheckRecordVisible(&rec, &call.key);
		/* a lease's record keeps the lease's length */
		was_lease = IdemRecordHasLeaseDuration(&rec);
		rec.attempts = 0;
		if (was_lease)
		{
			/* no holder: the token is nobody's, and the lease has run out */
			rec.state = IDEM_STATE_LEASED;
			IdemNewLeaseToken(&rec.lease_token);
			rec.lease_expires_at = call.now;
		}
		else
			rec.state = IDEM_STATE_FAILED;
		if (IdemStoreUpdate(&store, &call.key, &rec))
			break;
		IdemKeyUnlock(&call.key);	/* a sweep took it meanwhile: look again */
	}
	CommandCounterIncrement();
	IdemKeyUnlock(&call.key);
	IdemStoreClose(&store);

	IdemStatsAdd(IDEM_STAT_RETRIED, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_TEXT_P(cstring_to_text(IdemStatusWord(was_lease ? IDEM_STATUS_IN_PROGRESS : IDEM_STATUS_FAILED)));
}

/*
 * idem_discard(key text, scope text[, any_state boolean]): forget a failed
 * or dead key and everything it recorded; the key is absent, and its next
 * begin starts the work as for a new key.  With any_state (0.8.0) the key
 * goes whatever its state: a completed one (its retry runs the work
 * again), an erased one's tombstone, or a lease (its holder's token no
 * longer counts), so that an operator can clear a key a hostile or broken
 * client took for as long as its ttl allowed.  A key another transaction
 * is writing is waited for first, as for every change.
 */
Datum
idem_discard(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	IdemStore	store;
	IdemRecord	rec;
	bool		stale;
	bool		any_state = false;

	IdemCallBeginKey(&call, fcinfo, false, 0, 1);
	if (PG_NARGS() > 2)
	{
		IdemRequireArg(fcinfo, 2, "any_state");
		any_state = PG_GETARG_BOOL(2);
	}
	IdemCheckNotOpen(&call.key, "discard");
	PreventCommandIfReadOnly("idem_discard()");

	IdemStoreOpen(&store, call.oids, true);
	IdemStoreRequireLeases(&store);
	for (;;)
	{
		bool		found = IdemLockSettled(&store, &call.key, call.now, &rec, &stale);

		if (found && rec.state != IDEM_STATE_DEAD && !any_state)
			found = false;
		if (!found && !IdemIsLiveFailure(&rec, stale, call.now))
			RefuseState(&store, &call.key, "discard",
						any_state ?
						"idem_discard() forgets a key that has a record." :
						"idem_discard() forgets a failed or dead key; with any_state => true, a key in any state.");
		IdemCheckRecordVisible(&rec, &call.key);
		if (IdemStoreDelete(&store, &rec.tid, true))
			break;
		IdemKeyUnlock(&call.key);	/* a sweep took it meanwhile: look again */
	}
	CommandCounterIncrement();
	IdemKeyUnlock(&call.key);
	IdemStoreClose(&store);

	IdemStatsAdd(IDEM_STAT_DISCARDED, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_BOOL(true);
}
