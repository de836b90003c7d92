/*
 * idem_compat.h
 *	  Every difference between the PostgreSQL majors this tree builds
 *	  against, 15 to 19, in one place.
 *
 * Callers use the PostgreSQL 15 spelling with a _compat suffix where a
 * signature changed, and the newest name where an old version only lacks a
 * macro (backfilled here, as Citus's pg_version_compat.h does).  Each block
 * names the release that changed it.  Nothing outside this header tests
 * PG_VERSION_NUM.
 */
#ifndef IDEM_COMPAT_H
#define IDEM_COMPAT_H

#include "access/genam.h"
#include "access/heapam.h"
#include "access/tableam.h"
#include "datatype/timestamp.h"
#include "portability/instr_time.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "postmaster/bgworker.h"
#include "utils/acl.h"

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 200000
#error "idempotency builds against PostgreSQL 15 to 19"
#endif

#define PG16_GE (PG_VERSION_NUM >= 160000)
#define PG18_GE (PG_VERSION_NUM >= 180000)
#define PG19_GE (PG_VERSION_NUM >= 190000)

/*
 * 18 gives a module a name and version that pg_get_loaded_modules() shows;
 * IDEM_VERSION comes from the control file through the Makefile.
 */
#ifdef PG_MODULE_MAGIC_EXT
#define IDEM_MODULE_MAGIC PG_MODULE_MAGIC_EXT(.name = "idempotency", .version = IDEM_VERSION)
#else
#define IDEM_MODULE_MAGIC PG_MODULE_MAGIC
#endif

/*
 * 17 made interval able to hold +/-infinity.  Before it no interval is
 * infinite, which the backfilled macro says.
 */
#ifndef INTERVAL_NOT_FINITE
#define INTERVAL_NOT_FINITE(i) false
#define INTERVAL_IS_NOEND(i) false
#endif

/*
 * 19 lets CREATE DATABASE (from it as template), ALTER DATABASE and DROP
 * DATABASE terminate a worker connected to the database, as they do a
 * backend, instead of failing while the worker is there.  A sweep worker
 * can stop at any row, so it asks for that; before 19 it only keeps its
 * visits short.
 */
#ifndef BGWORKER_INTERRUPTIBLE
#define BGWORKER_INTERRUPTIBLE 0
#endif

/*
 * 18 added the instrumentation argument, 19 a flags word.  The store never
 * asks for either.
 */
static inline IndexScanDesc
index_beginscan_compat(Relation heap, Relation index, Snapshot snapshot,
					   int nkeys, int norderbys)
{
#if PG19_GE
	return index_beginscan(heap, index, snapshot, NULL, nkeys, norderbys, 0);
#elif PG18_GE
	return index_beginscan(heap, index, snapshot, NULL, nkeys, norderbys);
#else
	return index_beginscan(heap, index, snapshot, nkeys, norderbys);
#endif
}

/*
 * 16 made an update report which indexes want new entries as a
 * TU_UpdateIndexes (summarizing indexes take entries for a HOT update too);
 * 19 added an options word (TABLE_UPDATE_NO_LOGICAL).  *update_indexes
 * says whether any index wants an entry, *only_summarizing whether only
 * summarizing ones do; before 16 there are none.
 */
static inline TM_Result
table_tuple_update_compat(Relation rel, ItemPointer otid, TupleTableSlot *slot,
						  CommandId cid, bool wait, TM_FailureData *tmfd,
						  LockTupleMode *lockmode, bool *update_indexes,
						  bool *only_summarizing)
{
#if PG16_GE
	TU_UpdateIndexes which = TU_None;
	TM_Result	result;

#if PG19_GE
	result = table_tuple_update(rel, otid, slot, cid, 0, InvalidSnapshot,
								InvalidSnapshot, wait, tmfd, lockmode, &which);
#else
	result = table_tuple_update(rel, otid, slot, cid, InvalidSnapshot,
								InvalidSnapshot, wait, tmfd, lockmode, &which);
#endif
	*update_indexes = (which != TU_None);
	*only_summarizing = (which == TU_Summarizing);
	return result;
#else
	*only_summarizing = false;
	return table_tuple_update(rel, otid, slot, cid, InvalidSnapshot,
							  InvalidSnapshot, wait, tmfd, lockmode,
							  update_indexes);
#endif
}

/*
 * 16 added onlySummarizing to ExecInsertIndexTuples; 19 folded its flags
 * into one word and moved the slot after them.  The store never asks for
 * speculative insertion or arbiter indexes.
 */
static inline List *
ExecInsertIndexTuplesCompat(ResultRelInfo *rri, TupleTableSlot *slot,
							EState *estate, bool update, bool only_summarizing)
{
#if PG19_GE
	uint32		flags = (update ? EIIT_IS_UPDATE : 0) |
		(only_summarizing ? EIIT_ONLY_SUMMARIZING : 0);

	return ExecInsertIndexTuples(rri, estate, flags, slot, NIL, NULL);
#elif PG16_GE
	return ExecInsertIndexTuples(rri, slot, estate, update, false, NULL, NIL,
								 only_summarizing);
#else
	return ExecInsertIndexTuples(rri, slot, estate, update, false, NULL, NIL);
#endif
}

/*
 * 16 measures instr_time in nanoseconds and reads it with
 * INSTR_TIME_GET_NANOSEC; 15's is a struct timespec.
 */
#ifndef INSTR_TIME_GET_NANOSEC
#define INSTR_TIME_GET_NANOSEC(t) \
	(((uint64) (t).tv_sec * (uint64) 1000000000) + (uint64) (t).tv_nsec)
#endif

/*
 * 19 folded table_tuple_delete's changingPart argument into an options
 * word.  The store never moves a row between partitions.
 */
static inline TM_Result
table_tuple_delete_compat(Relation rel, ItemPointer tid, CommandId cid,
						  bool wait, TM_FailureData *tmfd)
{
#if PG19_GE
	return table_tuple_delete(rel, tid, cid, 0, InvalidSnapshot,
							  InvalidSnapshot, wait, tmfd);
#else
	return table_tuple_delete(rel, tid, cid, InvalidSnapshot, InvalidSnapshot,
							  wait, tmfd, false);
#endif
}

/*
 * 16 folded the per-kind ACL checks into object_aclcheck.
 */
static inline AclResult
proc_aclcheck_compat(Oid funcid, Oid roleid, AclMode mode)
{
#if PG16_GE
	return object_aclcheck(ProcedureRelationId, funcid, roleid, mode);
#else
	return pg_proc_aclcheck(funcid, roleid, mode);
#endif
}

static inline AclResult
namespace_aclcheck_compat(Oid nspid, Oid roleid, AclMode mode)
{
#if PG16_GE
	return object_aclcheck(NamespaceRelationId, nspid, roleid, mode);
#else
	return pg_namespace_aclcheck(nspid, roleid, mode);
#endif
}

/*
 * 19 caches attribute offsets in a tuple descriptor, which one built by
 * hand (CreateTemplateTupleDesc, TupleDescCopyEntry) must fill with
 * TupleDescFinalize before use; before 19 there is nothing to fill.
 */
#if !PG19_GE
#define TupleDescFinalize(tupdesc) ((void) (tupdesc))
#endif

#endif							/* IDEM_COMPAT_H */
