/*
 * idem_fingerprint.h
 *	  SHA-256 fingerprints of request bodies.
 */
#ifndef IDEM_FINGERPRINT_H
#define IDEM_FINGERPRINT_H

#include "utils/jsonb.h"

#define IDEM_FINGERPRINT_LEN 32

/*
 * The kind of body a fingerprint was made from.  A key stores it beside the
 * digest (one byte before it), and fingerprints of different kinds never
 * match: the jsonb encoding is a byte stream anyone can also send as bytea,
 * so the digests alone cannot keep the kinds apart.  Records written before
 * version 0.3.0 have no kind (IDEM_FP_KIND_NONE) and match by digest alone.
 */
#define IDEM_FP_KIND_NONE	'\0'
#define IDEM_FP_KIND_JSONB	'j'
#define IDEM_FP_KIND_BYTES	'b'

extern void IdemFingerprintBytes(const char *data, size_t len,
								 uint8 *dest);
extern void IdemFingerprintJsonb(Jsonb *jb, uint8 *dest);

#endif							/* IDEM_FINGERPRINT_H */
