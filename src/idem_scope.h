/*
 * idem_scope.h
 *	  Scope boundaries: which roles may use which scopes (idem_scope.c).
 */
#ifndef IDEM_SCOPE_H
#define IDEM_SCOPE_H

#include "idem_store.h"

extern bool IdemScopePermitted(const IdemStoreOids *oids, const text *scope);
extern void IdemScopeCheck(const IdemStoreOids *oids, const text *scope);

#endif							/* IDEM_SCOPE_H */
