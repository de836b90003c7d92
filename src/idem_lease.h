/*
 * idem_lease.h
 *	  What idem_finish and idem_release hand a token to: finishing and
 *	  releasing a leased key (idem_lease.c).
 */
#ifndef IDEM_LEASE_H
#define IDEM_LEASE_H

#include "utils/uuid.h"

#include "idem_store.h"

extern void IdemNewLeaseToken(pg_uuid_t *token);
extern void IdemLeaseFinish(IdemStore *store, const IdemKey *key,
							const pg_uuid_t *token, int32 response_code,
							Datum response_body, Datum response_headers,
							Datum response_bytes);
extern bool IdemLeaseFail(IdemStore *store, const IdemKey *key,
						  const pg_uuid_t *token, text *error,
						  int32 max_attempts);
extern void IdemLeaseRelease(IdemStore *store, const IdemKey *key,
							 const pg_uuid_t *token);

#endif							/* IDEM_LEASE_H */
