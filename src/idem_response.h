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

extern Datum IdemCheckResponseHeaders(Jsonb *headers);

#endif							/* IDEM_RESPONSE_H */
