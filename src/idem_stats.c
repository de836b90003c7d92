/*
 * idem_stats.c
 *	  Per-database call counters in shared memory: the idem_stats view and
 *	  idem_stats_reset().
 *
 * Each database gets a slot of atomic counters, claimed the first time a
 * backend connected to it counts something; the backend keeps a pointer to
 * its slot, so counting is one atomic add on the write path, with no lock.
 * Counters count calls as they return, whether or not the calling
 * transaction later commits: they describe the traffic, and the key table
 * itself is the record of what committed.  They live as long as the server
 * (a restart zeroes them, like pg_stat_statements without its dump file),
 * and exist only when the library is in shared_preload_libraries.
 *
 * There are idempotency.max_databases slots.  They are not freed when a
 * database is dropped; when all are taken, the slot of a database that no
 * longer exists is reused, and a database that finds none logs so once per
 * backend.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "idem_compat.h"
#include "idem_guc.h"
#include "idem_stats.h"

#define STATS_COLUMNS		(3 + IDEM_STAT_NKINDS)	/* datid, datname, ...,
													 * stats_reset */
/* The columns of idem_stats before version 0.4.0 added kinds. */
#define STATS_KINDS_0_2		(IDEM_STAT_KEYS_SWEPT + 1)

typedef struct IdemDbStats
{
	Oid			dboid;			/* InvalidOid for a free slot */
	TimestampTz stats_reset;	/* 0 if never reset */
	pg_atomic_uint64 counters[IDEM_STAT_NKINDS];
} IdemDbStats;

typedef struct IdemStatsShared
{
	LWLock	   *lock;			/* protects dboid and stats_reset */
	int			ndbs;			/* idempotency.max_databases at start */
	IdemDbStats dbs[FLEXIBLE_ARRAY_MEMBER];
} IdemStatsShared;

static IdemStatsShared *stats_shared = NULL;
bool		idem_call_waited = false;
static IdemDbStats *my_db_stats = NULL; /* this backend's database's slot */

/*
 * When every slot belongs to a live database, this backend's database is not
 * counted; looking for a slot again (a catalog lookup a slot) is left until
 * this time, so that an uncounted database does not pay for it on every call.
 */
#define STATS_SLOT_RETRY_MS	10000
static TimestampTz no_slot_retry_at = 0;
static void StatsXactCallback(XactEvent event, void *arg);

PG_FUNCTION_INFO_V1(idem_stats);
PG_FUNCTION_INFO_V1(idem_stats_reset);

/* Size of our shared memory, for idempotency.max_databases databases. */
static Size
StatsShmemSize(void)
{
	return add_size(offsetof(IdemStatsShared, dbs),
					mul_size(idem_max_databases, sizeof(IdemDbStats)));
}

/* Reserve the counters' shared memory and lock (idempotency.c's hook). */
void
IdemStatsShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(StatsShmemSize()));
	RequestNamedLWLockTranche("idempotency stats", 1);
}

/*
 * Create or attach to the counters' shared memory; idempotency.c's hook
 * calls it holding AddinShmemInitLock.
 */
void
IdemStatsShmemInit(void)
{
	bool		found;

	stats_shared = ShmemInitStruct("idempotency stats", StatsShmemSize(), &found);
	if (!found)
	{
		memset(stats_shared, 0, StatsShmemSize());
		stats_shared->lock = &(GetNamedLWLockTranche("idempotency stats"))->lock;
		stats_shared->ndbs = idem_max_databases;
		for (int i = 0; i < stats_shared->ndbs; i++)
			for (int k = 0; k < IDEM_STAT_NKINDS; k++)
				pg_atomic_init_u64(&stats_shared->dbs[i].counters[k], 0);
	}
}

/* Called from _PG_init while shared_preload_libraries is processed. */
void
IdemStatsInit(void)
{
	RegisterXactCallback(StatsXactCallback, NULL);
}

/* Zero a slot's counters. */
static void
ClearSlot(IdemDbStats *slot)
{
	for (int k = 0; k < IDEM_STAT_NKINDS; k++)
		pg_atomic_write_u64(&slot->counters[k], 0);
}

/* The slot of a database, or a free one if claim; lock held. */
static IdemDbStats *
SlotOf(Oid dboid, bool claim)
{
	IdemDbStats *free_slot = NULL;

	for (int i = 0; i < stats_shared->ndbs; i++)
	{
		IdemDbStats *slot = &stats_shared->dbs[i];

		if (slot->dboid == dboid)
			return slot;
		if (slot->dboid == InvalidOid && free_slot == NULL)
			free_slot = slot;
	}
	return claim ? free_slot : NULL;
}

/*
 * Find this database's slot, claiming one if needed.  When none is free,
 * the slot of a dropped database is taken over; looking databases up in
 * the catalog needs a transaction (every caller is a SQL function or the
 * sweeper's batch) and is done without holding our lock.  Returns NULL if
 * every slot belongs to a live database.
 */
static IdemDbStats *
FindMySlot(void)
{
	IdemDbStats *slot;
	Oid			dropped = InvalidOid;

	LWLockAcquire(stats_shared->lock, LW_SHARED);
	slot = SlotOf(MyDatabaseId, true);
	LWLockRelease(stats_shared->lock);
	if (slot != NULL && slot->dboid == MyDatabaseId)
		return slot;

	if (slot == NULL)
	{
		for (int i = 0; i < stats_shared->ndbs && !OidIsValid(dropped); i++)
		{
			Oid			dboid = stats_shared->dbs[i].dboid;

			if (OidIsValid(dboid) &&
				!SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dboid)))
				dropped = dboid;
		}
		if (!OidIsValid(dropped))
			return NULL;
	}

	LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
	slot = SlotOf(MyDatabaseId, false);
	if (slot == NULL)
		slot = OidIsValid(dropped) ? SlotOf(dropped, false) : SlotOf(InvalidOid, false);
	if (slot != NULL && slot->dboid != MyDatabaseId)
	{
		ClearSlot(slot);
		slot->stats_reset = 0;
		slot->dboid = MyDatabaseId;
	}
	LWLockRelease(stats_shared->lock);
	return slot;
}

/* Add n to one of this database's counters. */
void
IdemStatsAdd(IdemStatKind kind, uint64 n)
{
	if (!idem_track_stats || stats_shared == NULL || !OidIsValid(MyDatabaseId))
		return;
	if (my_db_stats == NULL)
	{
		TimestampTz now = GetCurrentTransactionStartTimestamp();

		if (now < no_slot_retry_at)
			return;
		my_db_stats = FindMySlot();
		if (my_db_stats == NULL)
		{
			/* said once per backend: not silently, and not on every call */
			if (no_slot_retry_at == 0)
				ereport(LOG,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("idempotency calls in database \"%s\" are not counted in idem_stats",
								get_database_name(MyDatabaseId)),
						 errdetail("All %d slots for per-database counters belong to other databases.",
								   stats_shared->ndbs),
						 errhint("Raise idempotency.max_databases and restart the server.")));
			no_slot_retry_at = TimestampTzPlusMilliseconds(now, STATS_SLOT_RETRY_MS);
			return;
		}
	}
	pg_atomic_fetch_add_u64(&my_db_stats->counters[kind], n);
}

/*
 * Timed calls and their time, not yet added to the shared counters: they
 * are added once at the end of the transaction, so that a statement of a
 * thousand calls costs two atomic adds on the database's shared slot, not
 * two thousand (backends of one database share the slot's cache line).
 */
static uint64 pending_timed_calls = 0;
static uint64 pending_call_ns = 0;

/* Stop timing a call: its time is counted with one more timed call. */
void
IdemStatsCallEnd(IdemCallTimer *timer)
{
	instr_time	elapsed;

	if (!timer->on)
		return;
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, timer->start);
	pending_timed_calls++;
	pending_call_ns += INSTR_TIME_GET_NANOSEC(elapsed);
}

/*
 * At the end of every transaction, committed or not: add the pending times.
 * Before a commit the transaction can still look up the database's slot;
 * an aborting one cannot, and adds only to a slot it found already (every
 * call but idem_lookup has counted something by then).
 */
static void
StatsXactCallback(XactEvent event, void *arg)
{
	if (pending_timed_calls == 0)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			if (my_db_stats != NULL)
				break;
			pending_timed_calls = 0;
			pending_call_ns = 0;
			return;
		default:
			return;
	}
	IdemStatsAdd(IDEM_STAT_TIMED_CALLS, pending_timed_calls);
	IdemStatsAdd(IDEM_STAT_CALL_TIME, pending_call_ns);
	pending_timed_calls = 0;
	pending_call_ns = 0;
}

/*
 * Time a wait for another transaction.  Only calls that are about to block
 * come here, so reading the clock costs nothing next to the wait.
 */
void
IdemStatsWaitStart(IdemWaitTimer *timer)
{
	INSTR_TIME_SET_CURRENT(timer->start);
}

void
IdemStatsWaitEnd(IdemWaitTimer *timer)
{
	instr_time	elapsed;

	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, timer->start);

	/*
	 * a call that waits for the lock, then for the row, is one call that
	 * waited
	 */
	if (!idem_call_waited)
		IdemStatsAdd(IDEM_STAT_KEY_WAITS, 1);
	idem_call_waited = true;
	IdemStatsAdd(IDEM_STAT_KEY_WAIT_TIME, INSTR_TIME_GET_NANOSEC(elapsed));
}

/*
 * idem_stats(): one row per database that has counted something since the
 * server started.
 */
Datum
idem_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			nkinds;

	InitMaterializedSRF(fcinfo, 0);
	if (stats_shared == NULL)
		return (Datum) 0;

	/* a library newer than the installed SQL shows the columns SQL has */
	nkinds = rsinfo->setDesc->natts - 3;
	if (nkinds != IDEM_STAT_NKINDS && nkinds != STATS_KINDS_0_2)
		elog(ERROR, "idem_stats() returns %d columns, expected %d",
			 rsinfo->setDesc->natts, STATS_COLUMNS);

	for (int i = 0; i < stats_shared->ndbs; i++)
	{
		IdemDbStats *slot = &stats_shared->dbs[i];
		Datum		values[STATS_COLUMNS];
		bool		nulls[STATS_COLUMNS];
		Oid			dboid;
		TimestampTz stats_reset;
		char	   *datname;
		NameData	name;

		LWLockAcquire(stats_shared->lock, LW_SHARED);
		dboid = slot->dboid;
		stats_reset = slot->stats_reset;
		for (int k = 0; k < nkinds; k++)
		{
			uint64		n = pg_atomic_read_u64(&slot->counters[k]);

			values[2 + k] = IDEM_STAT_IS_TIME(k) ?
				Float8GetDatum((double) n / 1000000.0) : Int64GetDatum((int64) n);
		}
		LWLockRelease(stats_shared->lock);

		if (!OidIsValid(dboid) || (datname = get_database_name(dboid)) == NULL)
			continue;
		memset(nulls, false, sizeof(nulls));
		namestrcpy(&name, datname);
		values[0] = ObjectIdGetDatum(dboid);
		values[1] = NameGetDatum(&name);
		values[2 + nkinds] = TimestampTzGetDatum(stats_reset);
		nulls[2 + nkinds] = (stats_reset == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * idem_stats_reset(): zero the current database's counters, as
 * pg_stat_reset() does for PostgreSQL's own.
 */
Datum
idem_stats_reset(PG_FUNCTION_ARGS)
{
	IdemDbStats *slot;

	if (stats_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency statistics are not collected"),
				 errhint("Add idempotency to shared_preload_libraries and restart the server.")));
	slot = my_db_stats ? my_db_stats : FindMySlot();
	if (slot == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("idempotency statistics are not collected for database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errdetail("All %d slots for per-database counters belong to other databases.",
						   stats_shared->ndbs),
				 errhint("Raise idempotency.max_databases and restart the server.")));
		PG_RETURN_VOID();
	}
	my_db_stats = slot;
	LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
	ClearSlot(slot);
	slot->stats_reset = GetCurrentTimestamp();
	LWLockRelease(stats_shared->lock);
	PG_RETURN_VOID();
}
