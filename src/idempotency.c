/*
 * idempotency.c
 *	  Module entry point: _PG_init dispatches to each concern's set-up.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "idem_citus.h"
#include "idem_compat.h"
#include "idem_guc.h"
#include "idem_lockkey.h"
#include "idem_stats.h"
#include "idem_sweeper.h"
#include "idem_xact.h"

IDEM_MODULE_MAGIC;

void		_PG_init(void);

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
		IdemStatsInit();
		IdemSweeperInit();
		IdemLockKeyInit();
	}
}
