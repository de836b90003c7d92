/*
 * idem_key.c
 *	  The decisions about one key that every SQL surface shares: its name in
 *	  messages, whether two requests match, whether the caller's snapshot
 *	  may report its record, waiting until nobody else is writing it,
 *	  clearing an expired record before a write, refusing a key this
 *	  transaction has open, and describing its state for an error.
 *
 * idem_api.c (begin, finish, release, lookup), idem_once.c (messages),
 * idem_lease.c (lease, checkpoint) and idem_retention.c (keep, erase) sit
 * on this; it calls none of them.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

#include "idem_fingerprint.h"
#include "idem_key.h"
#include "idem_stats.h"

/* The word a result shows for a status. */
const char *
IdemStatusWord(IdemStatus status)
{
	switch (status)
	{
		case IDEM_STATUS_STARTED:
			return "started";
		case IDEM_STATUS_RESUMED:
			return "resumed";
		case IDEM_STATUS_REPLAY:
			return "replay";
		case IDEM_STATUS_MISMATCH:
			return "mismatch";
		case IDEM_STATUS_IN_PROGRESS:
			return "in_progress";
		case IDEM_STATUS_COMPLETED:
			return "completed";
		case IDEM_STATUS_FAILED:
			return "failed";
		case IDEM_STATUS_DEAD:
			return "dead";
		case IDEM_STATUS_ERASED:
			return "erased";
		case IDEM_STATUS_ABSENT:
			return "absent";
		case IDEM_STATUS_DONE:
			return "done";
	}
	elog(ERROR, "unknown idempotency status %d", (int) status);
	return NULL;				/* keep compiler quiet */
}

/*
 * A live record's status for a caller that shows what is stored whatever
 * the request (idem_lookup, idem_keep): a lease's is in_progress.
 */
IdemStatus
IdemStatusOfRecord(const IdemRecord *rec)
{
	switch (rec->state)
	{
		case IDEM_STATE_LEASED:
			return IDEM_STATUS_IN_PROGRESS;
		case IDEM_STATE_ERASED:
			return IDEM_STATUS_ERASED;
		case IDEM_STATE_FAILED:
			return IDEM_STATUS_FAILED;
		case IDEM_STATE_DEAD:
			return IDEM_STATUS_DEAD;
		default:
			return IDEM_STATUS_COMPLETED;
	}
}

/* Printable key and scope for messages. */
char *
IdemKeyName(const IdemKey *key)
{
	return IdemQuoteKey(VARDATA_ANY(key->scope), VARSIZE_ANY_EXHDR(key->scope),
						VARDATA_ANY(key->key), VARSIZE_ANY_EXHDR(key->key));
}

/*
 * Do two fingerprints match?  NULL (no body) matches only NULL, of any
 * kind.  Bodies of different kinds never match; a record from before 0.3.0
 * has no kind and matches by digest alone, as it did then.
 */
bool
IdemFingerprintsMatch(const IdemFingerprint *a, const IdemFingerprint *b)
{
	if (a->isnull || b->isnull)
		return a->isnull && b->isnull;
	if (a->kind != b->kind &&
		a->kind != IDEM_FP_KIND_NONE && b->kind != IDEM_FP_KIND_NONE)
		return false;
	return memcmp(a->bytes, b->bytes, IDEM_FINGERPRINT_LEN) == 0;
}

/*
 * Under REPEATABLE READ or SERIALIZABLE, a record committed by a transaction
 * our snapshot cannot see must not be reported: the caller's other reads
 * would disagree with it.  Raise a serialization failure, so the
 * application's ordinary retry runs again with a new snapshot
 * (docs/specification.md, section 5.5).
 */
void
IdemCheckRecordVisible(const IdemRecord *rec, const IdemKey *key)
{
	if (!IsolationUsesXactSnapshot())
		return;
	if (TransactionIdIsCurrentTransactionId(rec->xmin))
		return;
	if (XidInMVCCSnapshot(rec->xmin, GetTransactionSnapshot()))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to concurrent use of idempotency key %s",
						IdemKeyName(key)),
				 errdetail("The key was completed by a transaction that committed after this transaction's snapshot was taken."),
				 errhint("Retry the transaction; the retry will see the stored response.")));
}

/*
 * Probe the key once no other transaction is writing its record: wait for a
 * transaction still inserting it (or deleting it before it expired), or,
 * if !wait, return IDEM_PROBE_BUSY at once.  Otherwise IDEM_PROBE_FOUND
 * for a live record, IDEM_PROBE_ABSENT for none.  An expired record, one
 * a sweeper is deleting, or a failed key's (the next attempt may start:
 * idem_retry.c) counts as none, and *stale then says the caller must clear it
 * before inserting (IdemClearExpiredRecord); rec is that record.  With the
 * key's lock held, nobody else can change the record after the wait.
 *
 * A caller that holds the key's lock (key_locked) lets it go while it waits
 * and takes it again before probing again: the transaction waited for may
 * need the lock for its next call on the key (a lease holder that
 * checkpoints, then finishes), and would otherwise deadlock with us.
 */
IdemProbeResult
IdemProbeSettled(IdemStore *store, const IdemKey *key, TimestampTz now,
				 bool wait, bool key_locked, IdemRecord *rec, bool *stale)
{
	for (;;)
	{
		SnapshotData dirty;
		TransactionId xwait = InvalidTransactionId;
		IdemProbeResult probe;
		IdemWaitTimer timer;

		CHECK_FOR_INTERRUPTS();
		InitDirtySnapshot(dirty);
		probe = IdemStoreProbe(store, key, &dirty, true, rec, &xwait);
		if (probe == IDEM_PROBE_BUSY &&
			(rec->inserting || rec->expires_at > now))
		{
			/* finished by a transaction still running */
			if (!wait)
				return IDEM_PROBE_BUSY;
			if (key_locked)
				IdemKeyUnlock(key);
			IdemStatsWaitStart(&timer);
			XactLockTableWait(xwait, store->heap, &rec->tid,
							  XLTW_InsertIndexUnique);
			IdemStatsWaitEnd(&timer);
			if (key_locked)
				(void) IdemKeyLock(key, true);
			continue;
		}
		*stale = false;
		if (probe == IDEM_PROBE_FOUND && rec->expires_at > now &&
			rec->state != IDEM_STATE_FAILED)
			return IDEM_PROBE_FOUND;
		*stale = (probe != IDEM_PROBE_ABSENT);
		return IDEM_PROBE_ABSENT;
	}
}

/*
 * Before writing a key's record, remove the expired (or failed) record it
 * replaces.
 * Called only when IdemLockAndProbe saw one: while we hold the key's lock no
 * record can appear, so a key that was absent needs no second look.  The
 * only other transaction that can be at this row is one deleting it (a
 * sweep): wait for that one.
 */
void
IdemClearExpiredRecord(IdemStore *store, const IdemKey *key, TimestampTz now)
{
	for (;;)
	{
		SnapshotData dirty;
		IdemRecord	rec;
		TransactionId xwait = InvalidTransactionId;
		IdemProbeResult probe;

		CHECK_FOR_INTERRUPTS();
		InitDirtySnapshot(dirty);
		probe = IdemStoreProbe(store, key, &dirty, false, &rec, &xwait);
		if (probe == IDEM_PROBE_ABSENT)
			return;
		if (probe == IDEM_PROBE_BUSY)
		{
			IdemWaitTimer timer;

			IdemStatsWaitStart(&timer);
			XactLockTableWait(xwait, store->heap, &rec.tid, XLTW_Delete);
			IdemStatsWaitEnd(&timer);
		}
		else if (rec.expires_at <= now || rec.state == IDEM_STATE_FAILED)
			(void) IdemStoreDelete(store, &rec.tid, true);
		else
			elog(ERROR, "idempotency key %s has a live record while this transaction holds it",
				 IdemKeyName(key));
	}
}

/* Refuse to begin a key that this transaction has open. */
void
IdemCheckNotOpen(const IdemKey *key, const char *verb)
{
	IdemOpenKey *open = IdemOpenKeyFind(key);

	if (open == NULL || IdemOpenKeyState(open) == IDEM_OPEN_FINISHED)
		return;
	if (IdemOpenKeyState(open) == IDEM_OPEN_BEGUN)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s idempotency key %s because this transaction has already begun it",
						verb, IdemKeyName(key)),
				 errhint("Call idem_finish() or idem_release() first.")));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s idempotency key %s because a subtransaction still open released it",
					verb, IdemKeyName(key)),
			 errhint("Begin it again after RELEASE SAVEPOINT.")));
}

/* Describe the actual state of a key that the caller may not finish. */
const char *
IdemDescribeKeyState(IdemStore *store, const IdemKey *key, IdemOpenKey *open)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	SnapshotData dirty;
	IdemRecord	rec;
	TransactionId xwait;
	IdemProbeResult probe;

	if (open != NULL)
		return IdemOpenKeyState(open) == IDEM_OPEN_FINISHED ?
			"already finished in this transaction" :
			"already released in this transaction";

	if (IdemKeyLockedByOthers(key))
		return "in progress in another transaction";
	InitDirtySnapshot(dirty);
	probe = IdemStoreProbe(store, key, &dirty, false, &rec, &xwait);
	if (probe == IDEM_PROBE_BUSY && rec.inserting)
		return "in progress in another transaction";
	if (probe == IDEM_PROBE_FOUND && rec.expires_at > now &&
		rec.state == IDEM_STATE_ERASED)
		return "erased";
	if (probe == IDEM_PROBE_FOUND && rec.expires_at > now &&
		rec.state == IDEM_STATE_DEAD)
		return "dead (its attempts ran out)";
	if (probe == IDEM_PROBE_FOUND && rec.expires_at > now &&
		rec.state == IDEM_STATE_FAILED)
		return "failed and not begun in this transaction";
	if (probe == IDEM_PROBE_FOUND && rec.expires_at > now &&
		rec.state == IDEM_STATE_LEASED)
		return "leased (pass the token that idem_lease() returned)";
	if (probe == IDEM_PROBE_FOUND && rec.expires_at > now)
		return TransactionIdIsCurrentTransactionId(rec.xmin) ?
			"already finished in this transaction" : "completed";
	return "absent";
}

/*
 * Wait until the key is free and decide, holding its lock: a live record
 * gives replay or mismatch (and the lock is let go), no live record gives
 * "started" (and the lock is kept, for idem_begin).  A begin itself writes
 * nothing: an expired record is removed only when the key is written, so a
 * released key leaves nothing behind for others to wait on.  Returns false
 * for "in_progress" (only when !wait).
 */
bool
IdemLockAndProbe(IdemStore *store, const IdemKey *key, bool wait,
				 TimestampTz now, const char *caller, IdemRecord *rec,
				 bool *live, bool *stale)
{
	if (!IdemKeyLock(key, wait))
		return false;

	switch (IdemProbeSettled(store, key, now, wait, true, rec, stale))
	{
		case IDEM_PROBE_BUSY:
			IdemKeyUnlock(key);
			return false;
		case IDEM_PROBE_FOUND:
			IdemKeyUnlock(key);
			IdemCheckRecordVisible(rec, key);
			*live = true;
			return true;
		case IDEM_PROBE_ABSENT:
			break;
	}
	PreventCommandIfReadOnly(caller);
	*live = false;
	return true;
}

/*
 * Is there a live record for the key?  The common replay case is answered
 * from one probe, without taking any lock or writing anything.
 */
bool
IdemProbeLive(IdemStore *store, const IdemKey *key, TimestampTz now,
			  IdemRecord *rec)
{
	SnapshotData dirty;
	TransactionId xwait;

	InitDirtySnapshot(dirty);
	if (IdemStoreProbe(store, key, &dirty, true, rec, &xwait) == IDEM_PROBE_FOUND &&
		rec->expires_at > now && rec->state != IDEM_STATE_FAILED)
	{
		IdemCheckRecordVisible(rec, key);
		return true;
	}
	return false;
}

/*
 * Lock the key and wait until nobody else is writing it, for a call that
 * changes whatever record it has (keep, erase, fail, retry, discard): is
 * there a live record (in rec)?  *stale as for IdemProbeSettled.  The
 * caller's own writes earlier in this command are made ones it may change.
 */
bool
IdemLockSettled(IdemStore *store, const IdemKey *key, TimestampTz now,
				IdemRecord *rec, bool *stale)
{
	CommandCounterIncrement();
	(void) IdemKeyLock(key, true);
	return IdemProbeSettled(store, key, now, true, true, rec, stale) ==
		IDEM_PROBE_FOUND;
}
