/*
 * idem_guc.h
 *	  The extension's settings (idempotency.*).
 */
#ifndef IDEM_GUC_H
#define IDEM_GUC_H

typedef enum IdemUnfinishedAction
{
	IDEM_UNFINISHED_ERROR,
	IDEM_UNFINISHED_RELEASE
} IdemUnfinishedAction;

extern int	idem_unfinished_action;
extern bool idem_sweeper_enabled;
extern int	idem_sweep_interval_ms;
extern int	idem_sweep_batch_size;
extern bool idem_track_stats;
extern bool idem_track_timing;
extern int	idem_sweep_workers;
extern int	idem_sweep_worker_timeout_ms;
extern int	idem_max_databases;
extern int	idem_max_ttl_s;
extern int	idem_max_lease_s;
extern int	idem_max_response_size;

/* The most workers idempotency.sweep_workers allows. */
#define IDEM_MAX_SWEEP_WORKERS 64

extern void IdemGucInit(void);

#endif							/* IDEM_GUC_H */
