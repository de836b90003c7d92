/*
 * idem_sweeper.h
 *	  The TTL sweeper: a launcher and short-lived per-database workers.
 */
#ifndef IDEM_SWEEPER_H
#define IDEM_SWEEPER_H

extern void IdemSweeperInit(void);
extern void IdemSweeperShmemRequest(void);
extern void IdemSweeperShmemInit(void);

#endif							/* IDEM_SWEEPER_H */
