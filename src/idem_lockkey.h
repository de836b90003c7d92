/*
 * idem_lockkey.h
 *	  The name of a key's lock: a keyed hash under a secret of the cluster's.
 */
#ifndef IDEM_LOCKKEY_H
#define IDEM_LOCKKEY_H

extern void IdemLockKeyInit(void);
extern uint64 IdemLockKeyHash(const char *scope, int scope_len,
							  const char *key, int key_len);

#endif							/* IDEM_LOCKKEY_H */
