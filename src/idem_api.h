/*
 * idem_api.h
 *	  What the SQL-callable functions share: argument checks, messages and
 *	  the status logic helpers (idem_api.c), and the lease calls that
 *	  idem_finish and idem_release hand a token to (idem_lease.c).
 */
#ifndef IDEM_API_H
#define IDEM_API_H

#include "fmgr.h"
#include "access/tupdesc.h"

#include "idem_store.h"
#include "idem_xact.h"

/* What a call site keeps between calls, in fn_extra. */
typedef struct IdemCallCache
{
	IdemStoreOids oids;
	TupleDesc	result_desc;	/* for functions returning a row */
} IdemCallCache;

/* idem_api.c */
extern IdemCallCache *IdemGetCallCache(FunctionCallInfo fcinfo, bool returns_row);
extern void IdemRequireArg(FunctionCallInfo fcinfo, int argno, const char *what);
extern void IdemGetKeyArgs(FunctionCallInfo fcinfo, int key_argno,
						   int scope_argno, IdemKey *key);
extern TimestampTz IdemGetExpiry(FunctionCallInfo fcinfo, int argno,
								 const char *what, TimestampTz now);
extern bool IdemIntervalTooLong(const Interval *value);
extern TimestampTz IdemAddInterval(TimestampTz now, Interval *value,
								   const char *what);
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
extern const char *IdemDescribeKeyState(IdemStore *store, const IdemKey *key,
										IdemOpenKey *open);

/* idem_lease.c: idem_finish and idem_release of a leased key */
extern void IdemLeaseFinish(IdemStore *store, const IdemKey *key,
							const pg_uuid_t *token, int32 response_code,
							Datum response_body);
extern void IdemLeaseRelease(IdemStore *store, const IdemKey *key,
							 const pg_uuid_t *token);

#endif							/* IDEM_API_H */
