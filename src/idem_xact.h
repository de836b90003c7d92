/*
 * idem_xact.h
 *	  Keys this transaction has begun: their locks and the commit guard.
 */
#ifndef IDEM_XACT_H
#define IDEM_XACT_H

#include "idem_store.h"

/*
 * The end of the commit guard's message, by which the coordinator of a
 * Citus cluster knows the guard's error when Citus relays it (idem_citus.c).
 */
#define IDEM_UNFINISHED_MSG_TAIL " was begun but neither finished nor released"

typedef enum IdemOpenState
{
	IDEM_OPEN_BEGUN,			/* begun, not yet finished or released */
	IDEM_OPEN_FINISHED,			/* finished in a deeper subtransaction */
	IDEM_OPEN_RELEASED			/* released in a deeper subtransaction */
} IdemOpenState;

/* What idem_finish needs to write the record that idem_begin started. */
typedef struct IdemOpenKey IdemOpenKey;

extern char *IdemQuoteName(const char *s, int len);
extern char *IdemQuoteKey(const char *scope, int scope_len,
						  const char *key, int key_len);
extern void IdemXactInit(void);
extern bool IdemKeyLock(const IdemKey *key, bool wait);
extern void IdemKeyUnlock(const IdemKey *key);
extern bool IdemKeyLockedByOthers(const IdemKey *key);
extern IdemOpenKey *IdemOpenKeyFind(const IdemKey *key);
extern void IdemOpenKeyAdd(const IdemKey *key,
						   const IdemFingerprint *fingerprint,
						   TimestampTz created_at, TimestampTz expires_at,
						   bool replaces);
extern IdemOpenState IdemOpenKeyState(const IdemOpenKey *open);
extern const IdemFingerprint *IdemOpenKeyFingerprint(const IdemOpenKey *open);
extern bool IdemOpenKeyReplaces(const IdemOpenKey *open);
extern void IdemOpenKeyTimes(const IdemOpenKey *open,
							 TimestampTz *created_at, TimestampTz *expires_at);
extern void IdemOpenKeyClose(IdemOpenKey *open, const IdemKey *key,
							 IdemOpenState how);

#endif							/* IDEM_XACT_H */
