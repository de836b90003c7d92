/*
 * idem_args.c
 *	  The arguments of the SQL-callable functions: the call site's cache, the
 *	  NULL check, key and scope (docs/specification.md, section 2), and the
 *	  intervals (ttl, lease, extend) turned into times.
 *
 * Every SQL surface (idem_api.c, idem_lease.c) reads its arguments through
 * here, so a bad argument gets the same SQLSTATE and message from every
 * function.
 */
#include "postgres.h"

#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "idem_args.h"
#include "idem_citus.h"
#include "idem_compat.h"
#include "idem_guc.h"
#include "idem_scope.h"

static void IdemGetKeyArgs(FunctionCallInfo fcinfo, int key_argno,
						   int scope_argno, IdemKey *key);
static text *IdemGetScopeArg(FunctionCallInfo fcinfo, int scope_argno);
static const IdemStoreOids *IdemCallStore(IdemCallCache *cache, IdemKey *key,
										  IdemStoreOids *shard);
static const IdemStoreOids *IdemCallStoreForScope(IdemCallCache *cache,
												  text **scope,
												  IdemStoreOids *shard);

/*
 * The row type of each function returning a row, built once per backend:
 * building it from pg_proc's OUT parameters and blessing it took a
 * twentieth of a replay.  A change to the function's pg_proc
 * row has it checked again.  Entries live in CacheMemoryContext.
 */
typedef struct ResultDescEntry
{
	Oid			fn_oid;			/* hash key */
	uint32		hashvalue;		/* of its PROCOID syscache entry */
	bool		valid;
	TupleDesc	desc;
} ResultDescEntry;

static HTAB *result_descs = NULL;

static void
ForgetResultDescs(Datum arg, int cacheid, uint32 hashvalue)
{
	HASH_SEQ_STATUS status;
	ResultDescEntry *entry;

	hash_seq_init(&status, result_descs);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (hashvalue == 0 || entry->hashvalue == hashvalue)
			entry->valid = false;
	}
}

static TupleDesc
GetResultDesc(FunctionCallInfo fcinfo)
{
	Oid			fn_oid = fcinfo->flinfo->fn_oid;
	ResultDescEntry *entry;
	bool		found;
	TupleDesc	desc;
	MemoryContext oldcxt;

	if (result_descs == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(ResultDescEntry);
		ctl.hcxt = CacheMemoryContext;
		result_descs = hash_create("idempotency result types", 32, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterSyscacheCallback(PROCOID, ForgetResultDescs, (Datum) 0);
	}
	entry = hash_search(result_descs, &fn_oid, HASH_ENTER, &found);
	if (found && entry->valid)
		return entry->desc;
	if (!found)
		entry->desc = NULL;
	entry->valid = false;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	/*
	 * Most invalidations change nothing of the row type (any change to the
	 * pg_proc row, or a reset of every cache): keep the one built before. One
	 * that did change may still be in a call site of the statement under way,
	 * so it is left, not freed; that takes an update of the extension that
	 * redefines the function.
	 */
	if (entry->desc == NULL || !equalTupleDescs(entry->desc, desc))
	{
		oldcxt = MemoryContextSwitchTo(CacheMemoryContext);
		entry->desc = BlessTupleDesc(CreateTupleDescCopy(desc));
		MemoryContextSwitchTo(oldcxt);
	}
	entry->hashvalue = GetSysCacheHashValue1(PROCOID, ObjectIdGetDatum(fn_oid));
	entry->valid = true;
	return entry->desc;
}

/* The call site's cache, built on first use. */
IdemCallCache *
IdemGetCallCache(FunctionCallInfo fcinfo, bool returns_row)
{
	IdemCallCache *cache = fcinfo->flinfo->fn_extra;

	IdemStoreCheckNotWritingRow();
	if (cache == NULL)
	{
		cache = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt,
									   sizeof(IdemCallCache));
		IdemStoreResolve(fcinfo, &cache->oids);
		if (returns_row)
			cache->result_desc = GetResultDesc(fcinfo);
		fcinfo->flinfo->fn_extra = cache;
	}
	return cache;
}

/*
 * Begin a call on the key and scope of the given arguments: the timer runs
 * from here, and a bad key or scope, or a scope another role owns, is
 * refused before anything is read.
 */
void
IdemCallBeginKey(IdemCall *call, FunctionCallInfo fcinfo, bool returns_row,
				 int key_argno, int scope_argno)
{
	call->cache = IdemGetCallCache(fcinfo, returns_row);
	call->now = GetCurrentTransactionStartTimestamp();
	IdemStatsCallStart(&call->timer);
	IdemGetKeyArgs(fcinfo, key_argno, scope_argno, &call->key);
	call->oids = IdemCallStore(call->cache, &call->key, &call->shard);
	call->scope = call->key.scope;	/* as the store spells it */
}

/* The same for a call on a whole scope (a batch of ids, an erasure). */
void
IdemCallBeginScope(IdemCall *call, FunctionCallInfo fcinfo, bool returns_row,
				   int scope_argno)
{
	call->cache = IdemGetCallCache(fcinfo, returns_row);
	call->now = GetCurrentTransactionStartTimestamp();
	IdemStatsCallStart(&call->timer);
	call->scope = IdemGetScopeArg(fcinfo, scope_argno);
	call->oids = IdemCallStoreForScope(call->cache, &call->scope, &call->shard);
}

/* Raise 22004 for a NULL argument. */
void
IdemRequireArg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
}

/*
 * A text argument of at most maxlen bytes, not NULL, and not empty unless
 * allow_empty: a key or scope (docs/specification.md, section 2), a phase, an
 * error.
 */
text *
IdemGetTextArg(FunctionCallInfo fcinfo, int argno, const char *what,
			   int maxlen, bool allow_empty)
{
	text	   *value;
	int			len;

	IdemRequireArg(fcinfo, argno, what);
	value = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(value);
	if (len == 0 && !allow_empty)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (len > maxlen)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("It is %d bytes; the limit is %d bytes.", len, maxlen)));
	return value;
}

/* The (scope, key) of a call. */
static void
IdemGetKeyArgs(FunctionCallInfo fcinfo, int key_argno, int scope_argno,
			   IdemKey *key)
{
	key->key = IdemGetTextArg(fcinfo, key_argno, "idempotency key",
							  IDEM_KEY_MAX_LEN, false);
	key->scope = IdemGetScopeArg(fcinfo, scope_argno);
	key->hash = IdemKeyHash(key->scope, key->key);
}

/* A scope argument alone (a batch of keys, or a whole scope). */
static text *
IdemGetScopeArg(FunctionCallInfo fcinfo, int scope_argno)
{
	return IdemGetTextArg(fcinfo, scope_argno, "idempotency scope",
						  IDEM_SCOPE_MAX_LEN, true);
}

/*
 * Where a call's keys live: the extension's own table, or on Citus the
 * shard of the scope's tenant on this node (idem_citus.c), described in
 * *shard.  Call it before the key is used: on Citus the scope is rewritten
 * to the tenant's own spelling, and the key's hash with it.  A scope that
 * belongs to a role the caller does not have the privileges of is refused
 * here (idem_scope.c), before anything of it is read: as the call spells
 * it, and on Citus as the tenant's own spelling too, so that another
 * spelling of a tenant ('01' for 1) is no way around its owner's prefix.
 */
static const IdemStoreOids *
IdemCallStore(IdemCallCache *cache, IdemKey *key, IdemStoreOids *shard)
{
	const IdemStoreOids *oids;

	IdemScopeCheck(&cache->oids, key->scope);
	oids = IdemCitusStoreFor(&cache->oids, &key->scope, shard);
	if (oids != &cache->oids)
	{
		/* the tenant's own spelling is checked too: '01' is tenant 1's */
		IdemScopeCheck(&cache->oids, key->scope);
		key->hash = IdemKeyHash(key->scope, key->key);
	}
	return oids;
}

/* The same for a call that names a scope and no key. */
static const IdemStoreOids *
IdemCallStoreForScope(IdemCallCache *cache, text **scope, IdemStoreOids *shard)
{
	const IdemStoreOids *oids;

	IdemScopeCheck(&cache->oids, *scope);
	oids = IdemCitusStoreFor(&cache->oids, scope, shard);
	if (oids != &cache->oids)
		IdemScopeCheck(&cache->oids, *scope);	/* as IdemCallStore */
	return oids;
}

/* Raise 22023 for a ttl (or lease) that is not positive. */
static void
RejectInterval(const char *what, Interval *value)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s must be positive", what),
			 errdetail("The %s given was %s.", what,
					   DatumGetCString(DirectFunctionCall1(interval_out,
														   IntervalPGetDatum(value))))));
}

/*
 * now() + ttl (or another interval argument, named what), checked to be
 * positive.  A mixed interval such as
 * '1 month -29 days' compares as positive (a month counts as 30 days) yet
 * can land before now() in a short month or across a DST change, so the
 * resulting time is checked too.
 */
TimestampTz
IdemGetExpiry(FunctionCallInfo fcinfo, int argno, const char *what,
			  TimestampTz now)
{
	IdemRequireArg(fcinfo, argno, what);
	return IdemAddInterval(now, PG_GETARG_INTERVAL_P(argno), what);
}

/*
 * now() + ttl, or +infinity for a ttl of 'infinity' (17 on): a key kept for
 * good, as idem_keep() makes one on every version.  '-infinity' is refused
 * as any other ttl that is not positive.
 */
TimestampTz
IdemGetTtlExpiry(FunctionCallInfo fcinfo, int argno, TimestampTz now)
{
	TimestampTz expires_at;

	IdemRequireArg(fcinfo, argno, "ttl");
	if (INTERVAL_IS_NOEND(PG_GETARG_INTERVAL_P(argno)))
		expires_at = DT_NOEND;
	else
		expires_at = IdemAddInterval(now, PG_GETARG_INTERVAL_P(argno), "ttl");
	IdemCheckOperatorBound(now, expires_at, "ttl", "idempotency.max_ttl",
						   idem_max_ttl_s);
	return expires_at;
}

/*
 * The latest time an operator's bound (idempotency.max_ttl or max_lease, in
 * seconds, 0 for none) lets a call reach from now.
 */
TimestampTz
IdemOperatorBound(TimestampTz now, int bound_s)
{
	if (bound_s <= 0)
		return DT_NOEND;
	return now + (int64) bound_s * USECS_PER_SEC;
}

/*
 * Raise 22023 for a ttl or lease (what) that ends later than the operator's
 * bound (the setting's name and value) lets it: a role that can call the
 * functions cannot hold a key, or keep others from taking over its lease,
 * for longer than the operator decided.
 */
void
IdemCheckOperatorBound(TimestampTz now, TimestampTz until, const char *what,
					   const char *setting, int bound_s)
{
	if (until <= IdemOperatorBound(now, bound_s))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s is longer than %s allows", what, setting),
			 errdetail("%s is %s.", setting, GetConfigOptionByName(setting, NULL, false)),
			 errhint("A superuser sets %s; 0 lifts the bound.", setting)));
}

/*
 * The longest ttl, lease or extend, in years.  Each part of the interval
 * (months, days, time) is bounded by it, so now() plus the interval stays
 * far inside the timestamp range whatever the signs of the parts, and a
 * value past it is a bad argument (22023) rather than an overflow (22008).
 */
#define IDEM_MAX_INTERVAL_YEARS 1000

/* Has any part of the interval more than IDEM_MAX_INTERVAL_YEARS? */
bool
IdemIntervalTooLong(const Interval *value)
{
	const int64 max_days = (int64) IDEM_MAX_INTERVAL_YEARS * 366;

	const int64 max_months = (int64) IDEM_MAX_INTERVAL_YEARS * MONTHS_PER_YEAR;

	return value->month > max_months || value->month < -max_months ||
		value->day > max_days || value->day < -max_days ||
		value->time > max_days * USECS_PER_DAY ||
		value->time < -max_days * USECS_PER_DAY;
}

/* now + value, which must be positive, not too long, and land after now. */
TimestampTz
IdemAddInterval(TimestampTz now, Interval *value, const char *what)
{
	Interval	zero;
	TimestampTz result;

	/*
	 * From 17 on an interval may be +/-infinity.  A lease or an extension
	 * that never runs out would keep a crashed holder's key from ever being
	 * taken over; a ttl of 'infinity' is IdemGetTtlExpiry's.
	 */
	if (INTERVAL_NOT_FINITE(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be finite", what),
				 errdetail("The %s given was %s.", what,
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(value)))),
				 errhint("Each part of a %s (months, days, time) is at most %d years.",
						 what, IDEM_MAX_INTERVAL_YEARS)));
	memset(&zero, 0, sizeof(zero));
	if (!DatumGetBool(DirectFunctionCall2(interval_gt, IntervalPGetDatum(value),
										  IntervalPGetDatum(&zero))))
		RejectInterval(what, value);
	if (IdemIntervalTooLong(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("The %s given was %s; the limit is %d years.", what,
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(value))),
						   IDEM_MAX_INTERVAL_YEARS)));
	result = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													 TimestampTzGetDatum(now),
													 IntervalPGetDatum(value)));
	if (result <= now)
		RejectInterval(what, value);
	return result;
}

/*
 * A bound on the attempts at a key (idem_lease, idem_fail): 1 or more, at
 * most IDEM_MAX_ATTEMPTS.
 */
int32
IdemGetMaxAttempts(FunctionCallInfo fcinfo, int argno)
{
	int32		max_attempts = PG_GETARG_INT32(argno);

	if (max_attempts < 1 || max_attempts > IDEM_MAX_ATTEMPTS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be between 1 and %d", IDEM_MAX_ATTEMPTS),
				 errdetail("The max_attempts given was %d.", max_attempts)));
	return max_attempts;
}
