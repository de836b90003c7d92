/*
 * idem_response.h
 *	  What a finish stores for a replay (idem_response.c).
 */
#ifndef IDEM_RESPONSE_H
#define IDEM_RESPONSE_H

#include "fmgr.h"
#include "utils/jsonb.h"

/*
 * The most the kept headers may take, as jsonb: a retry needs a few of
 * them (Location, Content-Type, ETag, a request id), not a whole response's.
 */
#define IDEM_MAX_HEADERS_BYTES 16384

/* Response codes are HTTP status codes (RFC 9110, section 15). */
#define IDEM_MIN_RESPONSE_CODE 100
#define IDEM_MAX_RESPONSE_CODE 599

extern void IdemCheckResponseCode(int32 code);
extern Datum IdemCheckResponseHeaders(Jsonb *headers);
extern void IdemCheckResponseSize(Datum body, Datum headers, Datum bytes);
extern void IdemCheckStateSize(Datum state);

#endif							/* IDEM_RESPONSE_H */
