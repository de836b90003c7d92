/*
 * idem_inval.h
 *	  One relcache invalidation callback for all of the extension's caches
 *	  (idem_inval.c).
 */
#ifndef IDEM_INVAL_H
#define IDEM_INVAL_H

#include "utils/inval.h"

extern void IdemRegisterRelcacheCallback(RelcacheCallbackFunction func);

#endif							/* IDEM_INVAL_H */
