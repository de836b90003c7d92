/*
 * idempotency.c
 *	  Module entry point: _PG_init dispatches to each concern's set-up, and
 *	  the library's one pair of shared-memory hooks asks each concern that
 *	  keeps shared state (the counters, the sweeper) for its part.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"

#include "idem_citus.h"
#include "idem_compat.h"
#include "idem_guc.h"
#include "idem_lockkey.h"
#include "idem_stats.h"
#include "idem_sweeper.h"
#include "idem_xact.h"

IDEM_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Reserve the shared memory and locks of every concern that keeps some. */
static void
IdemShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	IdemStatsShmemRequest();
	IdemSweeperShmemRequest();
}

/* Create, or in a backend started later attach to, that shared memory. */
static void
IdemShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	IdemStatsShmemInit();
	IdemSweeperShmemInit();
	LWLockRelease(AddinShmemInitLock);
}

/* Set up settings and transaction callbacks in every backend that loads us,
 * and the counters, the sweeper and the key locks' secret when we are
 * preloaded. */
void
_PG_init(void)
{
	if (IsBinaryUpgrade)
		return;
	IdemGucInit();
	IdemXactInit();
	IdemCitusInit();
	if (process_shared_preload_libraries_in_progress)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = IdemShmemRequest;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = IdemShmemStartup;
		IdemStatsInit();
		IdemSweeperInit();
		IdemLockKeyInit();
	}
}
