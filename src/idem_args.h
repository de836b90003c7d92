/*
 * idem_args.h
 *	  Reading and checking the arguments of the SQL-callable functions
 *	  (idem_args.c).
 */
#ifndef IDEM_ARGS_H
#define IDEM_ARGS_H

#include "fmgr.h"
#include "access/tupdesc.h"
#include "datatype/timestamp.h"

#include "idem_stats.h"
#include "idem_store.h"

/* What a call site keeps between calls, in fn_extra. */
typedef struct IdemCallCache
{
	IdemStoreOids oids;
	TupleDesc	result_desc;	/* for functions returning a row */
	void	   *extra;			/* the function's own, in fn_mcxt */
} IdemCallCache;

/*
 * What every SQL function on a key (or on a whole scope) starts with: its
 * call site's cache, its timer, the transaction's start time that every
 * time of the call is, its key or scope argument, and where that key lives,
 * the scope's owner checked (IdemCallStore).
 */
typedef struct IdemCall
{
	IdemCallCache *cache;
	IdemCallTimer timer;
	TimestampTz now;
	IdemKey		key;			/* IdemCallBeginKey */
	text	   *scope;			/* IdemCallBeginScope */
	IdemStoreOids shard;		/* on Citus, the scope's shard */
	const IdemStoreOids *oids;	/* &cache->oids, or &shard */
} IdemCall;

extern IdemCallCache *IdemGetCallCache(FunctionCallInfo fcinfo, bool returns_row);
extern void IdemCallBeginKey(IdemCall *call, FunctionCallInfo fcinfo,
							 bool returns_row, int key_argno, int scope_argno);
extern void IdemCallBeginScope(IdemCall *call, FunctionCallInfo fcinfo,
							   bool returns_row, int scope_argno);
extern void IdemRequireArg(FunctionCallInfo fcinfo, int argno, const char *what);
extern text *IdemGetTextArg(FunctionCallInfo fcinfo, int argno, const char *what,
							int maxlen, bool allow_empty);
extern TimestampTz IdemGetTtlExpiry(FunctionCallInfo fcinfo, int argno,
									TimestampTz now);
extern TimestampTz IdemOperatorBound(TimestampTz now, int bound_s);
extern void IdemCheckOperatorBound(TimestampTz now, TimestampTz until,
								   const char *what, const char *setting,
								   int bound_s);
extern TimestampTz IdemGetExpiry(FunctionCallInfo fcinfo, int argno,
								 const char *what, TimestampTz now);

/* The largest max_attempts. */
#define IDEM_MAX_ATTEMPTS 1000000

extern int32 IdemGetMaxAttempts(FunctionCallInfo fcinfo, int argno);
extern bool IdemIntervalTooLong(const Interval *value);
extern TimestampTz IdemAddInterval(TimestampTz now, Interval *value,
								   const char *what);

#endif							/* IDEM_ARGS_H */
