/*
 * idem_stats.h
 *	  Per-database call counters in shared memory (the idem_stats view).
 */
#ifndef IDEM_STATS_H
#define IDEM_STATS_H

/* What is counted; the order is that of the idem_stats columns. */
typedef enum IdemStatKind
{
	IDEM_STAT_STARTED,			/* idem_begin / idem_lease outcomes */
	IDEM_STAT_REPLAY,
	IDEM_STAT_MISMATCH,
	IDEM_STAT_IN_PROGRESS,
	IDEM_STAT_RESUMED,
	IDEM_STAT_FINISHES,
	IDEM_STAT_RELEASES,
	IDEM_STAT_CHECKPOINTS,
	IDEM_STAT_ONCE_TRUE,
	IDEM_STAT_ONCE_FALSE,
	IDEM_STAT_STALE_TOKENS,		/* calls refused for a token that lost its lease */
	IDEM_STAT_KEYS_SWEPT,
	IDEM_STAT_NKINDS
} IdemStatKind;

extern void IdemStatsInit(void);
extern void IdemStatsAdd(IdemStatKind kind, uint64 n);

#endif							/* IDEM_STATS_H */
