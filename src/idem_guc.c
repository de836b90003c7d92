/*
 * idem_guc.c
 *	  The extension's settings, all under the "idempotency." prefix.
 *
 * idempotency.unfinished decides what COMMIT and PREPARE TRANSACTION do with
 * a key that was begun but neither finished nor released
 * (docs/specification.md, section 4.3).  The sweeper settings are read by the
 * background worker and reloadable with SIGHUP.  idempotency.track_stats turns
 * the idem_stats counters off (superuser only, as pg_stat_statements.track
 * is); idempotency.track_timing also times every call (off by default and
 * superuser only, as track_io_timing is: reading the clock twice a call is the
 * one cost bench/overhead.sh measures).
 *
 * idempotency.max_ttl, idempotency.max_lease and
 * idempotency.max_response_size are an operator's bounds on what any call
 * may ask for: superuser only (a database owner cannot lift them for its
 * database, nor a role for its sessions), 0 for none.
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"

#include "idem_guc.h"

int			idem_unfinished_action = IDEM_UNFINISHED_ERROR;
bool		idem_sweeper_enabled = true;
int			idem_sweep_interval_ms = 60 * 1000;
int			idem_sweep_batch_size = 10000;
bool		idem_track_stats = true;
bool		idem_track_timing = false;
int			idem_sweep_workers = 2;
int			idem_sweep_worker_timeout_ms = 60 * 1000;
int			idem_max_databases = 1024;
int			idem_max_ttl_s = 0;
int			idem_max_lease_s = 0;
int			idem_max_response_size = 0;

static const struct config_enum_entry unfinished_options[] = {
	{"error", IDEM_UNFINISHED_ERROR, false},
	{"release", IDEM_UNFINISHED_RELEASE, false},
	{NULL, 0, false}
};

/*
 * Define the settings.  Called from _PG_init, so in every backend that loads
 * the library, preloaded or not.
 */
void
IdemGucInit(void)
{
	DefineCustomEnumVariable("idempotency.unfinished",
							 "What COMMIT does with a key that was begun but neither finished nor released.",
							 "\"error\" makes COMMIT and PREPARE TRANSACTION fail; "
							 "\"release\" releases such keys silently.",
							 &idem_unfinished_action,
							 IDEM_UNFINISHED_ERROR,
							 unfinished_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("idempotency.sweeper",
							 "Whether the background worker deletes expired keys.",
							 NULL,
							 &idem_sweeper_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.sweep_interval",
							"Time between two sweeps of expired keys.",
							NULL,
							&idem_sweep_interval_ms,
							60 * 1000,
							100,
							24 * 60 * 60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.sweep_batch_size",
							"Maximum number of expired keys deleted in one sweeper transaction.",
							NULL,
							&idem_sweep_batch_size,
							10000,
							1,
							1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("idempotency.track_stats",
							 "Whether calls are counted in the idem_stats view.",
							 NULL,
							 &idem_track_stats,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("idempotency.track_timing",
							 "Whether the time calls spend inside the extension is counted in idem_stats.",
							 "Waits for another transaction's key are counted and timed whatever this says.",
							 &idem_track_timing,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.sweep_workers",
							"How many databases the sweeper works on at the same time.",
							"Each takes one of max_worker_processes while it runs.",
							&idem_sweep_workers,
							2,
							1,
							IDEM_MAX_SWEEP_WORKERS,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.sweep_worker_timeout",
							"Longest time the sweeper gives one visit to one database.",
							"A worker still running then is terminated and the visit "
							"recorded as failed; other databases are not held up by it.",
							&idem_sweep_worker_timeout_ms,
							60 * 1000,
							100,
							60 * 60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.max_databases",
							"Databases whose sweeper status and call counters shared memory has room for.",
							"Databases beyond it are still swept, and a log line names what is not shown.",
							&idem_max_databases,
							1024,
							16,
							1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.max_ttl",
							"Longest ttl a call may give a key; 0 for no bound but 1000 years.",
							"A longer ttl, or a key kept for good (idem_keep, a ttl of infinity), is refused.",
							&idem_max_ttl_s,
							0,
							0,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.max_lease",
							"Longest lease or extension a call may ask for; 0 for no bound but 1000 years.",
							"A longer one is refused; a renewal by a lease's own length is cut to it.",
							&idem_max_lease_s,
							0,
							0,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("idempotency.max_response_size",
							"Largest response (body and headers) or checkpoint state a call may store; 0 for no bound.",
							"A replay or a resume holds a few times the stored size in memory.",
							&idem_max_response_size,
							0,
							0,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("idempotency");
}
