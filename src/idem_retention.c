/*
 * idem_retention.c
 *	  How long a stored key is kept, decided after the fact: idem_keep keeps
 *	  one for good, idem_erase and idem_erase_scope erase what it stored.
 *
 * A kept key's expires_at is +infinity: every expiry test (an expired key
 * is absent, the sweeper's walk of the expiry index up to now) leaves it
 * alone, on every PostgreSQL version, whatever interval types the server
 * has.  From 17 on a ttl of 'infinity' asks for the same at the first call
 * (idem_args.c).
 *
 * An erased key keeps its (scope, key), created_at and expires_at and
 * nothing else: request fingerprint, response, recovery point and lease
 * are gone.  Every later call on it answers "erased" (idem_once: false),
 * so erasing a stored response never lets the work run a second time (a
 * failed key's included); the sweeper removes the key when its ttl passes,
 * as any other.  An erased key that was expired already is deleted
 * outright.
 *
 * Both change a record holding the key's lock, after waiting for any
 * transaction still writing it (a begin that has not finished, a lease
 * holder's checkpoint), as the lease functions do; the caller's own earlier
 * calls in the same statement are made visible first.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "idem_args.h"
#include "idem_guc.h"
#include "idem_key.h"
#include "idem_stats.h"
#include "idem_store.h"
#include "idem_xact.h"

PG_FUNCTION_INFO_V1(idem_keep);
PG_FUNCTION_INFO_V1(idem_erase);
PG_FUNCTION_INFO_V1(idem_erase_scope);

/*
 * idem_keep(key text, scope text): the key never expires.  Returns the
 * record's state after the call: completed, in_progress (a lease), dead or
 * erased.
 */
Datum
idem_keep(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	IdemStore	store;
	IdemRecord	rec;
	bool		stale;
	bool		changed = false;

	IdemCallBeginKey(&call, fcinfo, false, 0, 1);
	IdemCheckNotOpen(&call.key, "keep");
	/* a key kept for good has an infinite ttl, which the bound refuses */
	IdemCheckOperatorBound(call.now, DT_NOEND, "ttl", "idempotency.max_ttl",
						   idem_max_ttl_s);
	PreventCommandIfReadOnly("idem_keep()");

	IdemStoreOpen(&store, call.oids, true);
	IdemStoreRequireLeases(&store);
	for (;;)
	{
		if (!IdemLockSettled(&store, &call.key, call.now, &rec, &stale))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot keep idempotency key %s because it is %s",
							IdemKeyName(&call.key), IdemDescribeKeyState(&store, &call.key, NULL)),
					 errhint("Only a key with a result can be kept: one that is completed, leased, dead, or finished in this transaction.")));
		IdemCheckRecordVisible(&rec, &call.key);
		if (TIMESTAMP_IS_NOEND(rec.expires_at))
			break;				/* kept already */
		TIMESTAMP_NOEND(rec.expires_at);
		if (IdemStoreUpdate(&store, &call.key, &rec))
		{
			changed = true;
			break;
		}
		IdemKeyUnlock(&call.key);	/* a sweep took it meanwhile: look again */
	}
	CommandCounterIncrement();
	IdemKeyUnlock(&call.key);
	IdemStoreClose(&store);

	if (changed)
		IdemStatsAdd(IDEM_STAT_KEPT, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_TEXT_P(cstring_to_text(IdemStatusWord(IdemStatusOfRecord(&rec))));
}

/*
 * Erase one key: its live record becomes a tombstone, an expired one goes.
 * Returns whether anything was erased.  The caller has checked that this
 * transaction does not have the key open.
 */
static bool
EraseKey(IdemStore *store, const IdemKey *key, TimestampTz now)
{
	IdemRecord	rec;
	bool		stale;
	bool		erased = false;

	for (;;)
	{
		IdemRecord	tomb;

		if (!IdemLockSettled(store, key, now, &rec, &stale) &&
			!IdemIsLiveFailure(&rec, stale, now))
		{
			/* an expired record is nobody's any more: delete it */
			if (stale)
			{
				IdemClearExpiredRecord(store, key, now);
				erased = true;
			}
			break;
		}
		/* a live record, a failed key's too: its retries must not start again */
		IdemCheckRecordVisible(&rec, key);
		if (rec.state == IDEM_STATE_ERASED)
			break;

		memset(&tomb, 0, sizeof(tomb));
		tomb.tid = rec.tid;
		tomb.state = IDEM_STATE_ERASED;
		tomb.created_at = rec.created_at;
		tomb.expires_at = rec.expires_at;
		tomb.code_isnull = true;
		tomb.fingerprint.isnull = true;
		if (IdemStoreUpdate(store, key, &tomb))
		{
			erased = true;
			break;
		}
		IdemKeyUnlock(key);		/* a sweep took it meanwhile: look again */
	}
	CommandCounterIncrement();
	IdemKeyUnlock(key);
	return erased;
}

/*
 * idem_erase(key text, scope text): erase what the key stored.  Returns
 * true if there was something to erase.
 */
Datum
idem_erase(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	IdemStore	store;
	bool		erased;

	IdemCallBeginKey(&call, fcinfo, false, 0, 1);
	IdemCheckNotOpen(&call.key, "erase");
	PreventCommandIfReadOnly("idem_erase()");

	IdemStoreOpen(&store, call.oids, true);
	IdemStoreRequireLeases(&store);
	erased = EraseKey(&store, &call.key, GetCurrentTransactionStartTimestamp());
	IdemStoreClose(&store);

	if (erased)
		IdemStatsAdd(IDEM_STAT_ERASED, 1);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_BOOL(erased);
}

/*
 * idem_erase_scope(scope text): erase every key of the scope that has a
 * record, committed or being written; returns how many were erased.  The
 * scope's keys are walked in the primary key with a dirty snapshot, so a
 * record another transaction is writing right now is found and waited
 * for.  A key that another transaction has begun but not yet finished has
 * no record to find: a finish that commits after the erase leaves its
 * record (docs/operations.md: stop the scope's traffic first).
 */
Datum
idem_erase_scope(PG_FUNCTION_ARGS)
{
	IdemCall	call;
	IdemStore	store;
	IdemScopeScan *scan;
	MemoryContext key_cxt;
	MemoryContext old_cxt;
	int64		erased = 0;

	IdemCallBeginScope(&call, fcinfo, false, 0);
	PreventCommandIfReadOnly("idem_erase_scope()");

	IdemStoreOpen(&store, call.oids, true);
	IdemStoreRequireLeases(&store);
	scan = IdemStoreBeginScopeScan(&store, call.scope);

	/* what one key's erasure allocates is freed before the next */
	key_cxt = AllocSetContextCreate(CurrentMemoryContext,
									"idempotency erase key",
									ALLOCSET_SMALL_SIZES);
	old_cxt = MemoryContextSwitchTo(key_cxt);
	for (;;)
	{
		IdemKey		key;

		CHECK_FOR_INTERRUPTS();
		key.key = IdemStoreNextScopeKey(scan);
		if (key.key == NULL)
			break;
		key.scope = call.scope;
		key.hash = IdemKeyHash(key.scope, key.key);
		IdemCheckNotOpen(&key, "erase");
		if (EraseKey(&store, &key, call.now))
			erased++;
		MemoryContextReset(key_cxt);
	}
	MemoryContextSwitchTo(old_cxt);
	MemoryContextDelete(key_cxt);
	IdemStoreEndScopeScan(scan);
	IdemStoreClose(&store);

	IdemStatsAdd(IDEM_STAT_ERASED, erased);
	IdemStatsCallEnd(&call.timer);
	PG_RETURN_INT64(erased);
}
