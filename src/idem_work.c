/*
 * idem_work.c
 *	  The application's work function that idem_call runs between the begin
 *	  and the finish of its key: checking that it is one idem_call may run
 *	  and that the caller may run it, calling it, and reading the response
 *	  it returns.
 *
 * A work function takes the request (jsonb) and returns the extension's
 * composite type idem_response (code, body, headers).  It runs as any
 * function call in a query does: as the calling role, or as its owner if
 * it is SECURITY DEFINER (fmgr_info arranges that, and its SET options);
 * the caller needs EXECUTE on it, and an object-access hook hears of the
 * call.  Nothing here runs SQL of its own.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "idem_compat.h"
#include "idem_response.h"
#include "idem_work.h"

/*
 * Counts changes to pg_proc rows (and cache resets): a call site that
 * outlives one (a PL/pgSQL expression within a transaction) checks its
 * work again, as a new plan would (REVOKE EXECUTE, ALTER FUNCTION ...
 * SECURITY DEFINER, CREATE OR REPLACE in another language).
 */
static uint64 proc_generation = 0;

static void
CountProcChange(Datum arg, int cacheid, uint32 hashvalue)
{
	proc_generation++;
}

/*
 * Check a work function once per call site (and again if the calling role
 * changes, or any function does), and look it up for calling.  caller is
 * idem_call's own OID; mcxt the call site's.  Raises 42883 for no such
 * function, 42809 for a procedure, aggregate or window function, 42P13
 * for one whose signature is not (jsonb) returning idem_response, and
 * 42501 without USAGE on its schema or EXECUTE on it: what SELECT
 * work(request) would need (a regprocedure given as a number skips the
 * schema's lookup, so USAGE is checked here).
 */
void
IdemWorkPrepare(IdemWork *work, Oid funcid, Oid caller, MemoryContext mcxt)
{
	static bool callback_registered = false;
	HeapTuple	tuple;
	Form_pg_proc proc;
	Oid			nspid;
	Oid			response_type;
	AclResult	aclresult;

	if (!callback_registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, CountProcChange, (Datum) 0);
		callback_registered = true;
	}
	if (work->funcid == funcid && work->roleid == GetUserId() &&
		work->generation == proc_generation)
		return;
	work->funcid = InvalidOid;
	work->generation = proc_generation;
	/* the type is the one in idem_call's own schema */
	nspid = get_func_namespace(caller);

	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("work function with OID %u does not exist", funcid)));
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	if (proc->prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("work %s is not a plain function", format_procedure(funcid)),
				 errdetail("idem_call() runs a function, not a procedure, aggregate or window function.")));
	response_type = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
									CStringGetDatum(IDEM_RESPONSE_TYPE_NAME),
									ObjectIdGetDatum(nspid));
	if (proc->pronargs != 1 || proc->proargtypes.values[0] != JSONBOID ||
		proc->proretset || !OidIsValid(response_type) ||
		proc->prorettype != response_type)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("work function %s must take one argument of type jsonb and return type %s",
						format_procedure(funcid),
						quote_qualified_identifier(get_namespace_name(nspid),
												   IDEM_RESPONSE_TYPE_NAME)),
				 errhint("Declare it as (request jsonb) RETURNS %s, one row.",
						 quote_qualified_identifier(get_namespace_name(nspid),
													IDEM_RESPONSE_TYPE_NAME))));
	aclresult = namespace_aclcheck_compat(proc->pronamespace, GetUserId(), ACL_USAGE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_SCHEMA, get_namespace_name(proc->pronamespace));
	ReleaseSysCache(tuple);

	aclresult = proc_aclcheck_compat(funcid, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(funcid));

	/* what the previous work left (a SQL function's plans, say) goes */
	if (work->cxt == NULL)
		work->cxt = AllocSetContextCreate(mcxt, "idempotency work function",
										  ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(work->cxt);
	fmgr_info_cxt(funcid, &work->flinfo, work->cxt);
	work->response_type = response_type;
	work->roleid = GetUserId();
	work->funcid = funcid;
}

/*
 * Run the work on the request, and check what it returned: 22004 for no
 * response or no code, 22023 for a code that is not an HTTP status or
 * headers idem_finish would refuse.  An error the work raises goes up as
 * it is, and rolls back the attempt with the key.
 */
void
IdemWorkRun(IdemWork *work, Datum request, bool request_isnull,
			IdemWorkResponse *response)
{
	LOCAL_FCINFO(wfcinfo, 1);
	PgStat_FunctionCallUsage fcusage;
	Datum		result = (Datum) 0;
	bool		isnull = true;
	HeapTupleHeader td;
	Datum		value;

	InvokeFunctionExecuteHook(work->funcid);
	InitFunctionCallInfoData(*wfcinfo, &work->flinfo, 1, InvalidOid, NULL, NULL);
	wfcinfo->args[0].value = request;
	wfcinfo->args[0].isnull = request_isnull;
	if (!(work->flinfo.fn_strict && request_isnull))
	{
		pgstat_init_function_usage(wfcinfo, &fcusage);
		result = FunctionCallInvoke(wfcinfo);
		isnull = wfcinfo->isnull;
		pgstat_end_function_usage(&fcusage, true);
	}
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("work function %s returned no response",
						format_procedure(work->funcid)),
				 errhint("Return idem_response(code, body, headers): a refusal (4xx) is a response too, stored and replayed; raise an error to roll the attempt back.")));

	td = DatumGetHeapTupleHeader(result);
	/* only a C function could return another row type than it declares */
	if (HeapTupleHeaderGetTypeId(td) != work->response_type)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("work function %s returned a row of type %s, not %s",
						format_procedure(work->funcid),
						format_type_be(HeapTupleHeaderGetTypeId(td)),
						format_type_be(work->response_type))));
	value = GetAttributeByNum(td, 1, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("work function %s returned a response with no code",
						format_procedure(work->funcid))));
	response->code = DatumGetInt32(value);
	IdemCheckResponseCode(response->code);
	value = GetAttributeByNum(td, 2, &isnull);
	response->body = isnull ? (Datum) 0 : PointerGetDatum(DatumGetJsonbP(value));
	value = GetAttributeByNum(td, 3, &isnull);
	response->headers = isnull ? (Datum) 0 :
		IdemCheckResponseHeaders(DatumGetJsonbP(value));
	IdemCheckResponseSize(response->body, response->headers, (Datum) 0);
}
