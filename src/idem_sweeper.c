/*
 * idem_sweeper.c
 *	  The TTL sweeper: keeps every database's key store bounded.
 *
 * A launcher, connected to no database, wakes every
 * idempotency.sweep_interval, lists the databases that allow connections,
 * and for each starts one short-lived worker, one at a time.  The worker
 * connects, returns at once if the extension is not installed (or the
 * server is in recovery), and otherwise sweeps the key store (as
 * idem_sweep() does) in transactions of idempotency.sweep_batch_size keys
 * until the expired set is exhausted.
 *
 * Workers never stay connected long: PostgreSQL before 19 makes DROP
 * DATABASE wait for (and fail after five seconds on) any background worker
 * connected to the database, so a worker stops after about a second of
 * work and tells the launcher to start another one for the rest.
 *
 * The last pass over each database is kept in shared memory for the
 * idem_sweeper_status view; a failed pass logs one line, a successful one
 * logs nothing at the default level.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "idem_guc.h"
#include "idem_store.h"
#include "idem_sweeper.h"

#define SWEEPER_MAX_DATABASES	256
#define SWEEPER_ERROR_LEN		256

/* A worker hands its database over to the next worker after this long. */
#define WORKER_TIME_BUDGET_MS	1000

/* The last pass over one database. */
typedef struct SweepStatus
{
	Oid			dboid;			/* InvalidOid for a free slot */
	NameData	datname;
	TimestampTz last_start;
	int64		last_duration_us;
	int64		keys_removed;
	bool		more;			/* the worker stopped before the end */
	char		last_error[SWEEPER_ERROR_LEN];	/* "" if none */
} SweepStatus;

typedef struct SweeperShared
{
	LWLock	   *lock;
	SweepStatus dbs[SWEEPER_MAX_DATABASES];
} SweeperShared;

/* A database to visit. */
typedef struct SweepTarget
{
	Oid			dboid;
	NameData	datname;
} SweepTarget;

static SweeperShared *sweeper_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PGDLLEXPORT void idem_sweeper_launcher_main(Datum main_arg);
PGDLLEXPORT void idem_sweeper_worker_main(Datum main_arg);

PG_FUNCTION_INFO_V1(idem_sweeper_status);

/* Reserve our shared memory and lock. */
static void
SweeperShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(SweeperShared)));
	RequestNamedLWLockTranche("idempotency", 1);
}

/* Create or attach to our shared memory. */
static void
SweeperShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	sweeper_shared = ShmemInitStruct("idempotency sweeper", sizeof(SweeperShared), &found);
	if (!found)
	{
		memset(sweeper_shared, 0, sizeof(SweeperShared));
		sweeper_shared->lock = &(GetNamedLWLockTranche("idempotency"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Called from _PG_init while shared_preload_libraries is processed: ask for
 * shared memory and register the launcher.
 */
void
IdemSweeperInit(void)
{
	BackgroundWorker worker;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = SweeperShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = SweeperShmemStartup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotency");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_sweeper_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "idempotency sweeper launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "idempotency sweeper launcher");
	RegisterBackgroundWorker(&worker);
}

/* Find the status slot of a database, or claim a free one; lock held. */
static SweepStatus *
StatusSlot(Oid dboid, bool claim)
{
	SweepStatus *free_slot = NULL;

	for (int i = 0; i < SWEEPER_MAX_DATABASES; i++)
	{
		SweepStatus *s = &sweeper_shared->dbs[i];

		if (s->dboid == dboid)
			return s;
		if (s->dboid == InvalidOid && free_slot == NULL)
			free_slot = s;
	}
	if (claim && free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(SweepStatus));
		free_slot->dboid = dboid;
	}
	return claim ? free_slot : NULL;
}

/* The databases a pass visits: those that allow connections. */
static List *
ListSweepTargets(void)
{
	List	   *targets = NIL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);
		MemoryContext old;
		SweepTarget *target;

		/* -2 marks a database whose DROP was interrupted */
		if (!db->datallowconn || db->datistemplate || db->datconnlimit == -2)
			continue;
		old = MemoryContextSwitchTo(caller_cxt);
		target = palloc(sizeof(SweepTarget));
		target->dboid = db->oid;
		target->datname = db->datname;
		targets = lappend(targets, target);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);

	PopActiveSnapshot();
	CommitTransactionCommand();
	return targets;
}

/* Forget the status of databases that no longer exist. */
static void
ForgetMissingDatabases(List *targets)
{
	LWLockAcquire(sweeper_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < SWEEPER_MAX_DATABASES; i++)
	{
		SweepStatus *s = &sweeper_shared->dbs[i];
		bool		present = false;
		ListCell   *lc;

		if (s->dboid == InvalidOid)
			continue;
		foreach(lc, targets)
		{
			if (((SweepTarget *) lfirst(lc))->dboid == s->dboid)
				present = true;
		}
		if (!present)
			s->dboid = InvalidOid;
	}
	LWLockRelease(sweeper_shared->lock);
}

/*
 * Run one worker for a database and wait for it to exit.  Returns true if
 * it stopped before the end of the expired set.  "continuing" tells the
 * worker that it carries on a pass an earlier worker began.
 *
 * The launcher clears the "more" flag before each start, so a worker that
 * dies before reporting (its database was just dropped, say) ends the
 * database's turn instead of being started again and again.
 */
static bool
RunWorker(SweepTarget *target, bool continuing, bool *out_of_slots)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;
	bool		more = false;
	SweepStatus *s;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotency");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_sweeper_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "idempotency sweeper for database %s",
			 NameStr(target->datname));
	snprintf(worker.bgw_type, BGW_MAXLEN, "idempotency sweeper");
	worker.bgw_main_arg = ObjectIdGetDatum(target->dboid);
	memcpy(worker.bgw_extra, &continuing, sizeof(bool));
	worker.bgw_notify_pid = MyProcPid;

	LWLockAcquire(sweeper_shared->lock, LW_EXCLUSIVE);
	s = StatusSlot(target->dboid, false);
	if (s != NULL)
		s->more = false;
	LWLockRelease(sweeper_shared->lock);

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		if (!*out_of_slots)
			ereport(LOG,
					(errmsg("idempotency sweeper could not start a worker for database \"%s\"",
							NameStr(target->datname)),
					 errhint("Raise max_worker_processes; the sweeper will try again at its next pass.")));
		*out_of_slots = true;
		return false;
	}
	*out_of_slots = false;

	if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_POSTMASTER_DIED ||
		WaitForBackgroundWorkerShutdown(handle) == BGWH_POSTMASTER_DIED)
		proc_exit(1);
	pfree(handle);

	LWLockAcquire(sweeper_shared->lock, LW_SHARED);
	s = StatusSlot(target->dboid, false);
	if (s != NULL)
		more = s->more;
	LWLockRelease(sweeper_shared->lock);
	return more;
}

/* Reload the configuration if a SIGHUP came in. */
static void
ReloadIfPending(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* One pass: every database, until each has no expired keys left. */
static void
SweepAllDatabases(void)
{
	MemoryContext pass_cxt = AllocSetContextCreate(CurrentMemoryContext,
												   "idempotency sweeper pass",
												   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(pass_cxt);
	List	   *targets = ListSweepTargets();
	bool		out_of_slots = false;
	ListCell   *lc;

	ForgetMissingDatabases(targets);
	foreach(lc, targets)
	{
		SweepTarget *target = lfirst(lc);
		bool		continuing = false;

		for (;;)
		{
			CHECK_FOR_INTERRUPTS();
			ReloadIfPending();
			if (!idem_sweeper_enabled || RecoveryInProgress())
				goto done;
			if (!RunWorker(target, continuing, &out_of_slots))
				break;
			continuing = true;
		}
		if (out_of_slots)
			break;
	}
done:
	MemoryContextSwitchTo(old);
	MemoryContextDelete(pass_cxt);
}

/*
 * The launcher's main loop.
 */
void
idem_sweeper_launcher_main(Datum main_arg)
{
	TimestampTz next_pass;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: enough to read pg_database, and never blocks DROP DATABASE */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	next_pass = GetCurrentTimestamp();
	for (;;)
	{
		TimestampTz now;
		long		wait_ms;

		CHECK_FOR_INTERRUPTS();
		ReloadIfPending();

		now = GetCurrentTimestamp();
		if (now >= next_pass)
		{
			if (idem_sweeper_enabled && !RecoveryInProgress())
				SweepAllDatabases();
			next_pass = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													idem_sweep_interval_ms);
			continue;
		}

		/* a reload may have shortened the interval */
		next_pass = Min(next_pass,
						TimestampTzPlusMilliseconds(now, idem_sweep_interval_ms));
		wait_ms = TimestampDifferenceMilliseconds(now, next_pass);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Run one SQL query in the worker's open transaction; first column of the first row. */
static bool
RunScalarQuery(const char *sql, Datum *result)
{
	bool		isnull;

	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "idempotency sweeper: query failed: %s", sql);
	if (SPI_processed == 0)
		return false;
	*result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return !isnull;
}

/* Keys this worker removed in committed batches (kept across an error). */
static int64 worker_removed = 0;

/*
 * Sweep this database in transactions of one batch each, adding what each
 * committed batch removed to worker_removed.  Sets *installed and *more.
 */
static void
SweepThisDatabase(bool *installed, bool *more)
{
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz resume_from = DT_NOBEGIN;
	IdemStoreOids oids;

	*installed = false;
	*more = false;
	for (;;)
	{
		int64		deleted = 0;
		int			batch = idem_sweep_batch_size;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "idempotency sweep");

		if (!*installed)
		{
			Datum		nspid;

			/* only a committed, fully created extension is visible here */
			SPI_connect();
			*installed = RunScalarQuery("SELECT e.extnamespace FROM pg_catalog.pg_extension e"
										" WHERE e.extname = 'idempotency'",
										&nspid);
			SPI_finish();
			if (*installed)
				IdemStoreResolveInSchema(DatumGetObjectId(nspid), &oids);
		}
		if (*installed)
			deleted = IdemStoreSweep(&oids, batch,
									 GetCurrentTransactionStartTimestamp(),
									 &resume_from);

		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(true);
		pgstat_report_activity(STATE_IDLE, NULL);

		worker_removed += deleted;
		if (!*installed || deleted < batch)
			break;
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), WORKER_TIME_BUDGET_MS))
		{
			*more = true;
			break;
		}
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * A per-database worker: one visit, then exit.
 */
void
idem_sweeper_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	bool		continuing;
	TimestampTz start;
	MemoryContext cxt;
	char	   *datname;
	volatile bool installed = false;
	volatile bool more = false;
	char	   *volatile error = NULL;
	SweepStatus *s;

	memcpy(&continuing, MyBgworkerEntry->bgw_extra, sizeof(bool));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	if (RecoveryInProgress())
		proc_exit(0);

	StartTransactionCommand();
	datname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();

	start = GetCurrentTimestamp();
	cxt = CurrentMemoryContext;
	PG_TRY();
	{
		bool		found;
		bool		unfinished;

		SweepThisDatabase(&found, &unfinished);
		installed = found;
		more = unfinished;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* one line in the log; the pass is recorded as failed */
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		error = edata->message;
		installed = true;
		ereport(LOG,
				(errmsg("idempotency sweeper: pass over database \"%s\" failed: %s",
						datname, error)));
	}
	PG_END_TRY();

	LWLockAcquire(sweeper_shared->lock, LW_EXCLUSIVE);
	s = StatusSlot(dboid, installed);
	if (s != NULL && !installed)
		s->dboid = InvalidOid;	/* the extension was dropped */
	else if (s != NULL)
	{
		namestrcpy(&s->datname, datname);
		/* a worker that continues a pass adds to it */
		if (!continuing || s->last_start == 0)
		{
			s->last_start = start;
			s->keys_removed = 0;
			s->last_duration_us = 0;
		}
		s->keys_removed += worker_removed;
		s->last_duration_us += GetCurrentTimestamp() - start;
		s->more = more;
		/* clipped on a character boundary */
		s->last_error[0] = '\0';
		if (error)
		{
			int			len = pg_mbcliplen(error, strlen(error), SWEEPER_ERROR_LEN - 1);

			memcpy(s->last_error, error, len);
			s->last_error[len] = '\0';
		}
	}
	LWLockRelease(sweeper_shared->lock);

	proc_exit(0);
}

/*
 * idem_sweeper_status(): the last pass over each database.  Empty when the
 * library is not in shared_preload_libraries (there is no sweeper then).
 */
Datum
idem_sweeper_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (sweeper_shared == NULL)
		PG_RETURN_VOID();

	LWLockAcquire(sweeper_shared->lock, LW_SHARED);
	for (int i = 0; i < SWEEPER_MAX_DATABASES; i++)
	{
		SweepStatus *s = &sweeper_shared->dbs[i];
		Interval   *duration;
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		if (s->dboid == InvalidOid || s->last_start == 0)
			continue;
		values[0] = CStringGetTextDatum(NameStr(s->datname));
		values[1] = TimestampTzGetDatum(s->last_start);
		duration = palloc0(sizeof(Interval));
		duration->time = s->last_duration_us;
		values[2] = IntervalPGetDatum(duration);
		values[3] = Int64GetDatum(s->keys_removed);
		if (s->last_error[0] != '\0')
			values[4] = CStringGetTextDatum(s->last_error);
		else
			nulls[4] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(sweeper_shared->lock);

	PG_RETURN_VOID();
}
