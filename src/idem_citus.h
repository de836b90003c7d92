/*
 * idem_citus.h
 *	  Where a key lives on Citus: its tenant's shard (idem_citus.c).
 */
#ifndef IDEM_CITUS_H
#define IDEM_CITUS_H

#include "idem_store.h"

extern void IdemCitusInit(void);
extern bool IdemCitusPresent(void);
extern const char *IdemCitusUnfinishedHint(bool prepare);
extern const IdemStoreOids *IdemCitusStoreFor(const IdemStoreOids *local,
											  text **scope,
											  IdemStoreOids *shard);
extern int64 IdemCitusSweepShards(const IdemStoreOids *local, int64 batch,
								  TimestampTz now, bool *locked_out);

#endif							/* IDEM_CITUS_H */
