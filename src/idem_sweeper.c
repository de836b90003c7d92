/*
 * idem_sweeper.c
 *	  The TTL sweeper: keeps every database's key store bounded.
 *
 * A launcher, connected to no database, wakes every
 * idempotency.sweep_interval, lists the databases that allow connections,
 * and works through them with up to idempotency.sweep_workers short-lived
 * workers at a time.  A worker connects to one database, returns at once if
 * the extension is not installed (or the server is in recovery), and
 * otherwise sweeps the key store (as idem_sweep() does) in transactions of
 * idempotency.sweep_batch_size keys for about a second.  A database with
 * more left is visited again in the next pass, which then starts at once and
 * visits only such databases and those whose interval has come round, so a
 * backlog is worked off in one-second turns while every other database is
 * still swept every interval.
 *
 * The workers run as the bootstrap superuser in databases whose owners may
 * be hostile (docs/security.md), so they run no SQL at all: the extension is
 * found by a catalog index scan and the keys through the store's direct heap
 * and index access.  The database- and role-level settings a connection
 * picks up are overridden for every setting the worker's transactions
 * depend on, no lock is waited for (conditional locks, or lock_timeout for
 * the catalogs), and the launcher terminates a worker that runs past
 * idempotency.sweep_worker_timeout, recording the visit as failed.
 *
 * Workers never stay connected long: PostgreSQL before 19 makes DROP
 * DATABASE wait for (and fail after five seconds on) any background worker
 * connected to the database.
 *
 * The last pass over each database is kept in shared memory, in
 * idempotency.max_databases slots, for the idem_sweeper_status view; a
 * failed pass logs one line, a successful one logs nothing at the default
 * level.  Only the launcher writes the status table: each worker reports
 * into a slot of its own, which the launcher reads when the worker is gone.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "idem_citus.h"
#include "idem_compat.h"
#include "idem_guc.h"
#include "idem_store.h"
#include "idem_sweeper.h"

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
	char		last_error[SWEEPER_ERROR_LEN];	/* "" if none */
} SweepStatus;

/*
 * What one worker tells the launcher.  The launcher clears it and sets the
 * generation before starting the worker; the worker writes it only while
 * the generation is still its own, so that a worker outliving a launcher
 * that died cannot write into a report a new launcher has handed on.
 */
typedef struct WorkerReport
{
	uint64		generation;
	bool		finished;		/* the worker got to its end */
	bool		installed;		/* the extension is there */
	bool		more;			/* it stopped before the end of the backlog */
	bool		locked_out;		/* DDL held the store: nothing learnt */
	int64		keys_removed;	/* in committed batches, kept up to date */
	IdemSweepPosition resume;	/* where it stopped, if more */
	char		error[SWEEPER_ERROR_LEN];	/* "" if none */
} WorkerReport;

typedef struct SweeperShared
{
	LWLock	   *lock;
	int			ndbs;			/* idempotency.max_databases at start */
	uint64		generation;		/* of the last report handed out */
	WorkerReport reports[IDEM_MAX_SWEEP_WORKERS];
	SweepStatus dbs[FLEXIBLE_ARRAY_MEMBER];
} SweeperShared;

/* A database to visit in this pass. */
typedef struct SweepTarget
{
	Oid			dboid;
	NameData	datname;
} SweepTarget;

/*
 * What the launcher remembers of a database from one pass to the next (in
 * TopMemoryContext): when its last visit started, whether it has a backlog,
 * and where the last worker stopped in it.  The position is dropped when a
 * worker gets to the end, and at least once an interval (rows skipped on
 * the way, or committed late with an earlier expires_at, are behind it).
 */
typedef struct DatabaseState
{
	Oid			dboid;			/* hash key */
	TimestampTz last_visit;		/* start of the last worker, 0 if none */
	bool		backlog;		/* its last worker stopped with more to do */
	IdemSweepPosition resume;
	TimestampTz resume_since;	/* when the walk from the start began */
} DatabaseState;

/* A worker the launcher is waiting for. */
typedef struct RunningWorker
{
	BackgroundWorkerHandle *handle; /* NULL for a free place */
	SweepTarget *target;
	TimestampTz started;
	bool		terminated;		/* it ran out of time */
} RunningWorker;

/* What the launcher passes to a worker in bgw_extra. */
typedef struct WorkerArgs
{
	int			report_slot;
	uint64		generation;
	IdemSweepPosition resume;	/* where to start; invalid: from the start */
} WorkerArgs;

StaticAssertDecl(sizeof(WorkerArgs) <= BGW_EXTRALEN, "WorkerArgs must fit in bgw_extra");

static SweeperShared *sweeper_shared = NULL;
static HTAB *database_states = NULL;	/* the launcher's DatabaseState table */
static TimestampTz no_worker_logged_at = 0; /* rate limits of two log lines */
static TimestampTz no_status_logged_at = 0;

PGDLLEXPORT void idem_sweeper_launcher_main(Datum main_arg);
PGDLLEXPORT void idem_sweeper_worker_main(Datum main_arg);

PG_FUNCTION_INFO_V1(idem_sweeper_status);

/* Size of our shared memory, for idempotency.max_databases databases. */
static Size
SweeperShmemSize(void)
{
	return add_size(offsetof(SweeperShared, dbs),
					mul_size(idem_max_databases, sizeof(SweepStatus)));
}

/* Reserve the sweeper's shared memory and lock (idempotency.c's hook). */
void
IdemSweeperShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(SweeperShmemSize()));
	RequestNamedLWLockTranche("idempotency", 1);
}

/*
 * Create or attach to the sweeper's shared memory; idempotency.c's hook
 * calls it holding AddinShmemInitLock.
 */
void
IdemSweeperShmemInit(void)
{
	bool		found;

	sweeper_shared = ShmemInitStruct("idempotency sweeper", SweeperShmemSize(), &found);
	if (!found)
	{
		memset(sweeper_shared, 0, SweeperShmemSize());
		sweeper_shared->lock = &(GetNamedLWLockTranche("idempotency"))->lock;
		sweeper_shared->ndbs = idem_max_databases;
	}
}

/*
 * Called from _PG_init while shared_preload_libraries is processed:
 * register the launcher.
 */
void
IdemSweeperInit(void)
{
	BackgroundWorker worker;

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

	for (int i = 0; i < sweeper_shared->ndbs; i++)
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

/* Copy a message into a fixed buffer, clipped on a character boundary. */
static void
CopyMessage(char *dest, const char *msg)
{
	int			len = pg_mbcliplen(msg, strlen(msg), SWEEPER_ERROR_LEN - 1);

	memcpy(dest, msg, len);
	dest[len] = '\0';
}

/* Publish one visit in a status slot; lock held. */
static void
RecordVisit(SweepStatus *s, const SweepTarget *target, TimestampTz start,
			int64 duration_us, int64 keys_removed, const char *error)
{
	s->datname = target->datname;
	s->last_start = start;
	s->last_duration_us = duration_us;
	s->keys_removed = keys_removed;
	CopyMessage(s->last_error, error);
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

		CHECK_FOR_INTERRUPTS();
		/* -2 marks a database whose DROP was interrupted */
		if (!db->datallowconn || db->datistemplate || db->datconnlimit == -2)
			continue;
		old = MemoryContextSwitchTo(caller_cxt);
		target = palloc0(sizeof(SweepTarget));
		target->dboid = db->oid;
		target->datname = db->datname;
		targets = lappend(targets, target);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);

	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_cxt);	/* commit leaves TopMemoryContext */
	return targets;
}

/* Forget the status of databases that no longer exist (or allow no connections). */
static void
ForgetMissingDatabases(List *targets)
{
	HTAB	   *present;
	HASHCTL		ctl;
	ListCell   *lc;

	/* a hash, so that a pass over thousands of databases stays linear */
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(Oid);
	ctl.hcxt = CurrentMemoryContext;
	present = hash_create("idempotency sweeper databases",
						  Max(list_length(targets), 16), &ctl,
						  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	foreach(lc, targets)
		(void) hash_search(present, &((SweepTarget *) lfirst(lc))->dboid,
						   HASH_ENTER, NULL);

	LWLockAcquire(sweeper_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < sweeper_shared->ndbs; i++)
	{
		SweepStatus *s = &sweeper_shared->dbs[i];

		if (s->dboid != InvalidOid &&
			hash_search(present, &s->dboid, HASH_FIND, NULL) == NULL)
			s->dboid = InvalidOid;
	}
	LWLockRelease(sweeper_shared->lock);

	{
		HASH_SEQ_STATUS seq;
		DatabaseState *state;

		hash_seq_init(&seq, database_states);
		while ((state = hash_seq_search(&seq)) != NULL)
		{
			if (hash_search(present, &state->dboid, HASH_FIND, NULL) == NULL)
				(void) hash_search(database_states, &state->dboid, HASH_REMOVE, NULL);
		}
	}
	hash_destroy(present);
}

/* The launcher's state of a database, created empty on first use. */
static DatabaseState *
StateOf(Oid dboid)
{
	bool		found;
	DatabaseState *state = hash_search(database_states, &dboid, HASH_ENTER, &found);

	if (!found)
	{
		state->last_visit = 0;
		state->backlog = false;
		state->resume.valid = false;
		state->resume_since = 0;
	}
	return state;
}

/* When a database's next visit is due: at once for a backlog or a first visit. */
static TimestampTz
DueAt(Oid dboid)
{
	DatabaseState *state = hash_search(database_states, &dboid, HASH_FIND, NULL);

	if (state == NULL || state->backlog || state->last_visit == 0)
		return 0;
	return TimestampTzPlusMilliseconds(state->last_visit, idem_sweep_interval_ms);
}

/*
 * Start a worker for a database, reporting into report slot i.  Returns
 * false when no background worker slot is free.
 */
static bool
StartWorker(SweepTarget *target, int i, RunningWorker *running)
{
	BackgroundWorker worker;
	WorkerArgs	args;
	DatabaseState *state;

	memset(&worker, 0, sizeof(worker));
	/* CREATE, ALTER or DROP DATABASE of it may end a visit (19; 0 before) */
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION |
		BGWORKER_INTERRUPTIBLE;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotency");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_sweeper_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "idempotency sweeper for database %s",
			 NameStr(target->datname));
	snprintf(worker.bgw_type, BGW_MAXLEN, "idempotency sweeper");
	worker.bgw_main_arg = ObjectIdGetDatum(target->dboid);
	worker.bgw_notify_pid = MyProcPid;
	memset(&args, 0, sizeof(args));
	args.report_slot = i;
	state = StateOf(target->dboid);
	if (state->resume.valid &&
		TimestampDifferenceExceeds(state->resume_since, GetCurrentTimestamp(),
								   idem_sweep_interval_ms))
		state->resume.valid = false;	/* from the start again, once an
										 * interval */
	if (!state->resume.valid)
		state->resume_since = GetCurrentTimestamp();
	args.resume = state->resume;

	LWLockAcquire(sweeper_shared->lock, LW_EXCLUSIVE);
	memset(&sweeper_shared->reports[i], 0, sizeof(WorkerReport));
	args.generation = ++sweeper_shared->generation;
	sweeper_shared->reports[i].generation = args.generation;
	LWLockRelease(sweeper_shared->lock);
	memcpy(worker.bgw_extra, &args, sizeof(args));

	if (!RegisterDynamicBackgroundWorker(&worker, &running->handle))
	{
		running->handle = NULL;
		return false;
	}
	running->target = target;
	running->started = GetCurrentTimestamp();
	running->terminated = false;
	state->last_visit = running->started;
	return true;
}

/*
 * How long a worker waits for any lock, its connection's included, before
 * it gives up the visit (pinned_settings, idem_sweeper_worker_main).
 */
#define WORKER_LOCK_TIMEOUT "1s"

/* What a visit records when its database's lock was taken. */
#define SKIPPED_LOCKED_MSG \
	"skipped: another transaction holds a lock on the database (ALTER DATABASE or DROP DATABASE)"

/*
 * Would a connection to the database get its lock at once?  Connecting
 * takes a lock on the database that ALTER DATABASE ... RENAME (which its
 * owner may run inside a transaction and keep open) and DROP DATABASE
 * conflict with, and waits for it without any timeout; a worker started
 * then would hold its place until idempotency.sweep_worker_timeout.  Asked
 * without waiting, in a transaction of the launcher's own.
 */
static bool
DatabaseLockFree(Oid dboid)
{
	LOCKTAG		tag;
	bool		free;
	MemoryContext caller_cxt = CurrentMemoryContext;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, dboid, 0);
	StartTransactionCommand();
	free = LockAcquire(&tag, RowExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_cxt);	/* commit leaves TopMemoryContext */
	return free;
}

/*
 * A worker has exited: publish its visit in the status table, and keep or
 * drop its database's resume point.  Returns true when the database has
 * more to sweep.  *no_slot counts databases with the extension that found
 * no free status slot.
 */
static bool
HarvestWorker(RunningWorker *running, int i, int *no_slot)
{
	SweepTarget *target = running->target;
	WorkerReport report;
	SweepStatus *s;
	char		error[SWEEPER_ERROR_LEN];
	bool		more;
	DatabaseState *state;

	LWLockAcquire(sweeper_shared->lock, LW_SHARED);
	report = sweeper_shared->reports[i];
	LWLockRelease(sweeper_shared->lock);

	error[0] = '\0';
	if (running->terminated)
	{
		snprintf(error, sizeof(error),
				 "sweep did not finish within idempotency.sweep_worker_timeout (%d ms)",
				 idem_sweep_worker_timeout_ms);
		ereport(LOG,
				(errmsg("idempotency sweeper: pass over database \"%s\" failed: %s",
						NameStr(target->datname), error)));
	}
	else if (report.finished)
		strlcpy(error, report.error, sizeof(error));
	else if (!DatabaseLockFree(target->dboid))
	{
		/*
		 * It was started just before another transaction took the database's
		 * lock, and gave up connecting (lock_timeout, which it sets before
		 * connecting): the visit was skipped, as one started a moment later
		 * would have been.
		 */
		strlcpy(error, SKIPPED_LOCKED_MSG, sizeof(error));
	}
	else
	{
		/*
		 * It exited without finishing: the database was dropped or refused
		 * the connection, or the worker died.  Its log line says why; a
		 * database that had a status keeps it, with the failure.
		 */
		strlcpy(error, "sweeper worker exited before it could report (see the server log)",
				sizeof(error));
	}

	LWLockAcquire(sweeper_shared->lock, LW_EXCLUSIVE);
	s = StatusSlot(target->dboid, report.installed);
	if (s != NULL && report.finished && !report.installed && error[0] == '\0')
		s->dboid = InvalidOid;	/* the extension is not (or no longer) there */
	else if (s != NULL)
		RecordVisit(s, target, running->started,
					GetCurrentTimestamp() - running->started,
					report.keys_removed, error);
	else if (report.installed)
		(*no_slot)++;
	LWLockRelease(sweeper_shared->lock);

	/*
	 * A database with more to do resumes where this worker stopped, in the
	 * next pass; one that got to the end (or failed) starts from the
	 * beginning next time, so that rows skipped on the way are seen again. A
	 * worker that learnt nothing (DDL held the store, or it was stopped for
	 * its timeout) leaves the position as it was.
	 */
	more = report.finished && report.more && error[0] == '\0';
	state = hash_search(database_states, &target->dboid, HASH_FIND, NULL);
	if (state != NULL)
	{
		state->backlog = more;
		if (more)
			state->resume = report.resume;
		else if (!running->terminated && !report.locked_out)
			state->resume.valid = false;
	}

	running->handle = NULL;
	return more;
}

/* Record that a pass skipped a database whose lock was taken. */
static void
SkipLockedDatabase(SweepTarget *target)
{
	const char *error = SKIPPED_LOCKED_MSG;
	SweepStatus *s;
	DatabaseState *state;

	/* a visit: tried again when its interval comes round */
	state = StateOf(target->dboid);
	state->last_visit = GetCurrentTimestamp();
	state->backlog = false;

	/* not LOG: every DROP DATABASE would be reported; the status says it */
	ereport(DEBUG1,
			(errmsg_internal("idempotency sweeper: database \"%s\" %s",
							 NameStr(target->datname), error)));
	LWLockAcquire(sweeper_shared->lock, LW_EXCLUSIVE);
	s = StatusSlot(target->dboid, false);
	if (s != NULL)
		RecordVisit(s, target, GetCurrentTimestamp(), 0, 0, error);
	LWLockRelease(sweeper_shared->lock);
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

/* How long to wait before trying again when no worker slot was free. */
#define NO_SLOT_RETRY_MS		1000

/*
 * One pass: every database that is due, once, with up to
 * idempotency.sweep_workers workers at a time.  A database is due when its
 * last visit started an interval ago, when it has a backlog, and on its
 * first visit.  A worker past its timeout is terminated; the others go on
 * meanwhile.  Returns when the next pass should start: at once when some
 * database still has a backlog (it resumes where its worker stopped), else
 * when the first database is due again.  So a backlog is worked off in
 * one-second turns, pass after pass, while every other database is still
 * visited once an interval, and nothing else is visited more often.
 *
 * When no background worker slot is free (max_worker_processes taken by
 * parallel queries or other extensions), the pass waits and tries again
 * every second rather than giving up until the next interval; that is
 * logged at most once an interval.
 */
static TimestampTz
SweepAllDatabases(void)
{
	MemoryContext pass_cxt = AllocSetContextCreate(CurrentMemoryContext,
												   "idempotency sweeper pass",
												   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(pass_cxt);
	TimestampTz pass_start = GetCurrentTimestamp();
	List	   *listed = ListSweepTargets();
	List	   *queue = NIL;
	int			ndatabases;
	int			next = 0;
	int			started = 0;
	RunningWorker running[IDEM_MAX_SWEEP_WORKERS];
	int			nrunning = 0;
	TimestampTz no_slot_until = 0;
	bool		said_no_slot = false;
	bool		backlog = false;
	int			no_slot = 0;

	TimestampTz next_pass;
	ListCell   *lc;

	memset(running, 0, sizeof(running));
	ForgetMissingDatabases(listed);
	foreach(lc, listed)
	{
		SweepTarget *target = lfirst(lc);

		if (DueAt(target->dboid) <= pass_start)
			queue = lappend(queue, target);
	}
	ndatabases = list_length(queue);
	for (;;)
	{
		bool		stopping;
		bool		harvested = false;
		long		wait_ms = 1000;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		ReloadIfPending();
		stopping = !idem_sweeper_enabled || RecoveryInProgress();
		now = GetCurrentTimestamp();

		/* start workers while there are places and databases */
		for (int i = 0; i < idem_sweep_workers && !stopping && now >= no_slot_until &&
			 next < ndatabases; i++)
		{
			SweepTarget *target = list_nth(queue, next);

			if (running[i].handle != NULL)
				continue;
			if (!DatabaseLockFree(target->dboid))
			{
				SkipLockedDatabase(target);
				next++;
				i--;			/* the place is still free */
				continue;
			}
			if (!StartWorker(target, i, &running[i]))
			{
				if (!said_no_slot &&
					TimestampDifferenceExceeds(no_worker_logged_at, now, idem_sweep_interval_ms))
				{
					no_worker_logged_at = now;
					ereport(LOG,
							(errmsg("idempotency sweeper could not start a worker for database \"%s\"",
									NameStr(target->datname)),
							 errdetail("All of max_worker_processes (%d) are in use.",
									   max_worker_processes),
							 errhint("Keep max_parallel_workers and other extensions' workers below max_worker_processes by at least idempotency.sweep_workers + 1; the sweeper tries again every second.")));
				}
				said_no_slot = true;
				no_slot_until = TimestampTzPlusMilliseconds(now, NO_SLOT_RETRY_MS);
				break;
			}
			next++;
			started++;
			nrunning++;
		}
		if (nrunning == 0 && (stopping || next >= ndatabases))
			break;

		/* collect the workers that are done; stop those out of time */
		for (int i = 0; i < IDEM_MAX_SWEEP_WORKERS; i++)
		{
			pid_t		pid;
			BgwHandleStatus status;
			TimestampTz deadline;

			if (running[i].handle == NULL)
				continue;
			status = GetBackgroundWorkerPid(running[i].handle, &pid);
			if (status == BGWH_POSTMASTER_DIED)
				proc_exit(1);
			if (status == BGWH_STOPPED)
			{
				pfree(running[i].handle);
				if (HarvestWorker(&running[i], i, &no_slot))
					backlog = true;
				nrunning--;
				harvested = true;
				continue;
			}
			deadline = TimestampTzPlusMilliseconds(running[i].started,
												   idem_sweep_worker_timeout_ms);
			if (!running[i].terminated && now >= deadline)
			{
				TerminateBackgroundWorker(running[i].handle);
				running[i].terminated = true;
			}
			else if (!running[i].terminated)
				wait_ms = Min(wait_ms, TimestampDifferenceMilliseconds(now, deadline));
		}
		if (harvested)
			continue;
		if (no_slot_until > now && next < ndatabases)
			wait_ms = Min(wait_ms, TimestampDifferenceMilliseconds(now, no_slot_until));

		/* a worker's start or exit sets our latch (bgw_notify_pid) */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	/* for bench/databases.sh and anyone tuning sweep_workers */
	ereport(DEBUG1,
			(errmsg_internal("idempotency sweeper: pass over %d databases took %ld ms with %d workers (%d worker runs)",
							 ndatabases,
							 TimestampDifferenceMilliseconds(pass_start, GetCurrentTimestamp()),
							 idem_sweep_workers, started)));
	if (no_slot > 0 &&
		TimestampDifferenceExceeds(no_status_logged_at, GetCurrentTimestamp(),
								   idem_sweep_interval_ms))
	{
		no_status_logged_at = GetCurrentTimestamp();
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("idempotency sweeper: %d databases with the extension have no status in idem_sweeper_status",
						no_slot),
				 errdetail("They were swept; idempotency.max_databases (%d) limits how many are shown.",
						   sweeper_shared->ndbs),
				 errhint("Raise idempotency.max_databases and restart the server.")));
	}

	/* the next pass: at once for a backlog, else when a database is due */
	next_pass = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), idem_sweep_interval_ms);
	foreach(lc, listed)
		next_pass = Min(next_pass, DueAt(((SweepTarget *) lfirst(lc))->dboid));
	if (backlog)
		next_pass = 0;
	MemoryContextSwitchTo(old);
	MemoryContextDelete(pass_cxt);
	return next_pass;
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

	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(DatabaseState);
		database_states = hash_create("idempotency sweeper databases", 64, &ctl,
									  HASH_ELEM | HASH_BLOBS);
	}

	next_pass = GetCurrentTimestamp();
	for (;;)
	{
		TimestampTz now;
		long		wait_ms;
		bool		was_enabled = idem_sweeper_enabled;

		CHECK_FOR_INTERRUPTS();
		ReloadIfPending();
		/* switched on: a pass over every database at once */
		if (idem_sweeper_enabled && !was_enabled)
		{
			HASH_SEQ_STATUS seq;
			DatabaseState *state;

			hash_seq_init(&seq, database_states);
			while ((state = hash_seq_search(&seq)) != NULL)
				state->last_visit = 0;
			next_pass = GetCurrentTimestamp();
		}

		now = GetCurrentTimestamp();
		if (now >= next_pass)
		{
			if (idem_sweeper_enabled && !RecoveryInProgress())
				next_pass = SweepAllDatabases();
			else
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

/*
 * Settings a connection picks up from ALTER DATABASE ... SET (which a
 * database owner controls) and ALTER ROLE, overridden for the worker's
 * session.  The worker runs no SQL, so search_path and the like cannot
 * change what it does; these are the ones its transactions depend on:
 * isolation (SERIALIZABLE READ ONLY DEFERRABLE would wait in
 * GetSafeSnapshot for any open serializable transaction), read-only,
 * timeouts, and what an error becomes.  lock_timeout bounds the one kind of
 * wait left, on a catalog lock; every lock on the key store is conditional.
 * Settings this server version does not have are skipped.
 */
static const struct
{
	const char *name;
	const char *value;
}			pinned_settings[] =

{
	{"search_path", "pg_catalog, pg_temp"},
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_read_only", "off"},
	{"default_transaction_deferrable", "off"},
	{"statement_timeout", "0"},
	{"lock_timeout", WORKER_LOCK_TIMEOUT},
	{"idle_in_transaction_session_timeout", "0"},
	{"idle_session_timeout", "0"},
	{"transaction_timeout", "0"},
	{"exit_on_error", "off"},
	{"session_replication_role", "origin"},
	{"synchronous_commit", "local"},
};

/*
 * Override what the database and role settings set (see pinned_settings),
 * in a transaction of its own, since checking a role name reads the
 * catalogs.  A database owner can also set session_authorization and role,
 * which would make the worker's session another role's: they are set back
 * to the bootstrap superuser and none.
 */
static void
PinWorkerSettings(void)
{
	StartTransactionCommand();
	for (int i = 0; i < lengthof(pinned_settings); i++)
	{
		if (GetConfigOption(pinned_settings[i].name, true, false) == NULL)
			continue;
		SetConfigOption(pinned_settings[i].name, pinned_settings[i].value,
						PGC_SUSET, PGC_S_OVERRIDE);
	}
	/* after lock_timeout (the look-up reads pg_authid), before role */
	SetConfigOption("session_authorization",
					GetUserNameFromId(BOOTSTRAP_SUPERUSERID, false),
					PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("role", "none", PGC_SUSET, PGC_S_OVERRIDE);
	CommitTransactionCommand();
}

/* The worker's arguments, and its report as it stands (written to shared memory by PublishReport). */
static WorkerArgs worker_args;
static WorkerReport worker_report;

/*
 * Copy the worker's report into its slot, unless the slot has been handed
 * to another worker since (a new launcher after the one that started us
 * died).
 */
static void
PublishReport(void)
{
	WorkerReport *slot = &sweeper_shared->reports[worker_args.report_slot];

	LWLockAcquire(sweeper_shared->lock, LW_EXCLUSIVE);
	if (slot->generation == worker_args.generation)
	{
		*slot = worker_report;
		slot->generation = worker_args.generation;
	}
	LWLockRelease(sweeper_shared->lock);
}

/*
 * Sweep this database in transactions of one batch each, for about a
 * second, from where the last worker here stopped, publishing the report
 * after each committed batch (a worker terminated for its timeout still
 * counts what it did).  Sets worker_report's installed, more and resume.
 */
static void
SweepThisDatabase(void)
{
	TimestampTz start = GetCurrentTimestamp();
	IdemStoreOids oids;

	worker_report.resume = worker_args.resume;
	for (;;)
	{
		int64		deleted = 0;
		int			batch = idem_sweep_batch_size;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "idempotency sweep");

		/* only a committed, fully created extension is visible here */
		if (!worker_report.installed)
			worker_report.installed = IdemStoreResolveInstalled(&oids);
		if (worker_report.installed)
		{
			TimestampTz now = GetCurrentTransactionStartTimestamp();
			Oid			save_userid;
			int			save_sec_context;

			int			save_nestlevel;

			/*
			 * The deletes fire the key table's AFTER DELETE row triggers:
			 * they run as the table's owner in a security-restricted
			 * operation, as VACUUM runs a table's index expressions, and
			 * settings they change are undone with the batch.  Where the
			 * owner is a superuser, IdemStoreSweep refuses to fire them. An
			 * error restores the user and the settings.
			 */
			GetUserIdAndSecContext(&save_userid, &save_sec_context);
			SetUserIdAndSecContext(IdemStoreOwner(&oids),
								   save_sec_context | SECURITY_RESTRICTED_OPERATION);
			save_nestlevel = NewGUCNestLevel();
			deleted = IdemStoreSweep(&oids, batch, now, &worker_report.resume,
									 &worker_report.locked_out);
			/* on Citus, the shards of idem_tenant_keys this node holds */
			if (deleted < batch)
				deleted += IdemCitusSweepShards(&oids, batch - deleted, now,
												&worker_report.locked_out);
			AtEOXact_GUC(false, save_nestlevel);
			SetUserIdAndSecContext(save_userid, save_sec_context);
		}

		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(true);
		pgstat_report_activity(STATE_IDLE, NULL);

		worker_report.keys_removed += deleted;
		if (!worker_report.installed || deleted < batch)
			break;
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), WORKER_TIME_BUDGET_MS))
		{
			worker_report.more = true;
			break;
		}
		PublishReport();
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
	MemoryContext cxt;
	char	   *datname;

	memcpy(&worker_args, MyBgworkerEntry->bgw_extra, sizeof(worker_args));
	if (worker_args.report_slot < 0 || worker_args.report_slot >= IDEM_MAX_SWEEP_WORKERS)
		elog(FATAL, "idempotency sweeper: bad report slot %d", worker_args.report_slot);
	memset(&worker_report, 0, sizeof(worker_report));

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/*
	 * Connecting waits for the database's lock without end: an ALTER DATABASE
	 * ... RENAME that its owner keeps open, taken between the launcher's look
	 * at the lock (DatabaseLockFree) and this connection, would hold the
	 * worker, and its place, until sweep_worker_timeout. Give up after the
	 * same lock_timeout the visit runs with; the launcher records the visit
	 * as skipped.
	 */
	SetConfigOption("lock_timeout", WORKER_LOCK_TIMEOUT, PGC_SUSET, PGC_S_OVERRIDE);
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	PinWorkerSettings();

	if (RecoveryInProgress())
		proc_exit(0);

	StartTransactionCommand();
	datname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();

	cxt = CurrentMemoryContext;
	PG_TRY();
	{
		SweepThisDatabase();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* one line in the log; the pass is recorded as failed */
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(LOG,
				(errmsg("idempotency sweeper: pass over database \"%s\" failed: %s",
						datname, edata->message)));
		CopyMessage(worker_report.error, edata->message);
		worker_report.more = false;
	}
	PG_END_TRY();

	worker_report.finished = true;
	PublishReport();
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
	for (int i = 0; i < sweeper_shared->ndbs; i++)
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
