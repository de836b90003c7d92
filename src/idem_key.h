/*
 * idem_key.h
 *	  Decisions about one key shared by every SQL surface (idem_key.c).
 */
#ifndef IDEM_KEY_H
#define IDEM_KEY_H

#include "idem_store.h"
#include "idem_xact.h"

/*
 * What a call answers about a key: the status words of the SQL functions'
 * results, one list for all of them (docs/specification.md, section 7.1).
 */
typedef enum IdemStatus
{
	IDEM_STATUS_STARTED,		/* this call's transaction does the work */
	IDEM_STATUS_RESUMED,		/* a lease taken over from its recovery point */
	IDEM_STATUS_REPLAY,			/* the stored response, for the same request */
	IDEM_STATUS_MISMATCH,		/* the key was used with another request */
	IDEM_STATUS_IN_PROGRESS,	/* another transaction or lease holds it */
	IDEM_STATUS_COMPLETED,		/* (lookup, keep) a stored response */
	IDEM_STATUS_FAILED,			/* attempts failed; the next may start */
	IDEM_STATUS_DEAD,			/* attempts ran out */
	IDEM_STATUS_ERASED,			/* an operator erased it */
	IDEM_STATUS_ABSENT,			/* (lookup) no live record */
	IDEM_STATUS_DONE			/* (idem_call) the work ran in this statement */
} IdemStatus;

extern const char *IdemStatusWord(IdemStatus status);
extern IdemStatus IdemStatusOfRecord(const IdemRecord *rec);
extern char *IdemKeyName(const IdemKey *key);
extern bool IdemFingerprintsMatch(const IdemFingerprint *a,
								  const IdemFingerprint *b);
extern void IdemCheckRecordVisible(const IdemRecord *rec, const IdemKey *key);
extern void IdemCheckNotOpen(const IdemKey *key, const char *verb);
extern IdemProbeResult IdemProbeSettled(IdemStore *store, const IdemKey *key,
										TimestampTz now, bool wait,
										bool key_locked, IdemRecord *rec,
										bool *stale);
extern void IdemClearExpiredRecord(IdemStore *store, const IdemKey *key,
								   TimestampTz now);
extern bool IdemLockAndProbe(IdemStore *store, const IdemKey *key, bool wait,
							 TimestampTz now, const char *caller,
							 IdemRecord *rec, bool *live, bool *stale);

/*
 * The record a probe reported as stale (absent) is a failed key's that is
 * still live: its next attempt may start, but its attempts count on.
 */
static inline bool
IdemIsLiveFailure(const IdemRecord *rec, bool stale, TimestampTz now)
{
	return stale && rec->state == IDEM_STATE_FAILED && rec->expires_at > now;
}

extern bool IdemLockSettled(IdemStore *store, const IdemKey *key,
							TimestampTz now, IdemRecord *rec, bool *stale);
extern bool IdemProbeLive(IdemStore *store, const IdemKey *key,
						  TimestampTz now, IdemRecord *rec);
extern const char *IdemDescribeKeyState(IdemStore *store, const IdemKey *key,
										IdemOpenKey *open);

#endif							/* IDEM_KEY_H */
