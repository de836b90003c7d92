/*
 * idem_stats.h
 *	  Per-database call counters in shared memory (the idem_stats view).
 */
#ifndef IDEM_STATS_H
#define IDEM_STATS_H

#include "portability/instr_time.h"

#include "idem_guc.h"

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
	IDEM_STAT_STALE_TOKENS,		/* calls refused for a token that lost its
								 * lease */
	IDEM_STAT_KEYS_SWEPT,
	/* from version 0.4.0 */
	IDEM_STAT_ERASED,			/* keys erased (idem_erase, idem_erase_scope) */
	IDEM_STAT_ERASED_REPLIES,	/* calls answered "erased" */
	IDEM_STAT_KEPT,				/* keys made permanent (idem_keep) */
	IDEM_STAT_FAILURES,			/* failed attempts recorded (idem_fail) */
	IDEM_STAT_DEAD,				/* keys whose attempts ran out */
	IDEM_STAT_DEAD_REPLIES,		/* calls answered "dead" */
	IDEM_STAT_RETRIED,			/* dead keys given new attempts (idem_retry) */
	IDEM_STAT_DISCARDED,		/* failed or dead keys removed (idem_discard) */
	IDEM_STAT_KEY_WAITS,		/* calls that waited for another transaction */
	IDEM_STAT_KEY_WAIT_TIME,	/* nanoseconds of all their waits */
	IDEM_STAT_TIMED_CALLS,		/* calls timed (idempotency.track_timing) */
	IDEM_STAT_CALL_TIME,		/* nanoseconds inside them */
	IDEM_STAT_NKINDS
} IdemStatKind;

/* Kinds that count nanoseconds; idem_stats shows them in milliseconds. */
#define IDEM_STAT_IS_TIME(kind) \
	((kind) == IDEM_STAT_KEY_WAIT_TIME || (kind) == IDEM_STAT_CALL_TIME)

/* The time a call spends inside the extension, if idempotency.track_timing. */
typedef struct IdemCallTimer
{
	bool		on;
	instr_time	start;
	instr_time	paused;			/* when IdemStatsCallPause stopped it */
} IdemCallTimer;

/* A wait for another transaction: always counted, and timed. */
typedef struct IdemWaitTimer
{
	instr_time	start;
} IdemWaitTimer;

extern void IdemStatsInit(void);
extern void IdemStatsShmemRequest(void);
extern void IdemStatsShmemInit(void);
extern void IdemStatsAdd(IdemStatKind kind, uint64 n);
extern void IdemStatsCallEnd(IdemCallTimer *timer);
extern void IdemStatsWaitStart(IdemWaitTimer *timer);
extern void IdemStatsWaitEnd(IdemWaitTimer *timer);

/* Whether the call under way has waited (key_waits counts calls, not waits). */
extern bool idem_call_waited;

/* Start timing a call; as cheap as a test of a setting when it is off. */
static inline void
IdemStatsCallStart(IdemCallTimer *timer)
{
	idem_call_waited = false;
	timer->on = idem_track_timing && idem_track_stats;
	if (timer->on)
		INSTR_TIME_SET_CURRENT(timer->start);
}

/*
 * Leave out of a call's time what it spends in the application's code
 * (idem_call's work): call_time is the extension's cost.
 */
static inline void
IdemStatsCallPause(IdemCallTimer *timer)
{
	if (timer->on)
		INSTR_TIME_SET_CURRENT(timer->paused);
}

static inline void
IdemStatsCallResume(IdemCallTimer *timer)
{
	instr_time	now;

	if (!timer->on)
		return;
	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, timer->paused);
	INSTR_TIME_ADD(timer->start, now);
}

#endif							/* IDEM_STATS_H */
