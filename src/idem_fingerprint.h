/*
 * idem_fingerprint.h
 *	  SHA-256 fingerprints of request bodies.
 */
#ifndef IDEM_FINGERPRINT_H
#define IDEM_FINGERPRINT_H

#include "utils/jsonb.h"

#define IDEM_FINGERPRINT_LEN 32

extern void IdemFingerprintBytes(const char *data, size_t len,
								 uint8 *dest);
extern void IdemFingerprintJsonb(Jsonb *jb, uint8 *dest);

#endif							/* IDEM_FINGERPRINT_H */
