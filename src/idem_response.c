/*
 * idem_response.c
 *	  What a finish stores for a replay: the status code, the headers the
 *	  application chose to keep, and one body, jsonb or bytes of any
 *	  content type (issue #11 part 1).
 *
 * Headers are a jsonb object from field name to a string, or to an array
 * of strings for a field that occurs more than once (Set-Cookie, Link), in
 * order.  jsonb does not keep the order of different field names, which
 * RFC 9110 section 5.3 says is not significant; it keeps every value's
 * characters exactly.  A name must be an RFC 9110 token, given once
 * (ignoring case), and a value must hold no control character but a tab:
 * the application replays them into a response, where a line break would
 * start a header (or a body) of the requester's choosing, and a stricter
 * HTTP stack would refuse the whole response.  The byte body is kept and returned exactly.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "idem_response.h"

/* Raise 22023 for a code that is not an HTTP status code. */
void
IdemCheckResponseCode(int32 code)
{
	if (code < IDEM_MIN_RESPONSE_CODE || code > IDEM_MAX_RESPONSE_CODE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("response code %d is out of range", code),
				 errdetail("Response codes are HTTP status codes, from %d to %d.",
						   IDEM_MIN_RESPONSE_CODE, IDEM_MAX_RESPONSE_CODE)));
}

/* RFC 9110 section 5.6.2: tchar. */
static bool
IsTokenChar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return strchr("!#$%&'*+-.^_`|~", c) != NULL && c != '\0';
}

/* Raise 22023 unless a header value can go into a response as it is. */
static void
CheckHeaderValue(const char *name, int namelen, const JsonbValue *v)
{
	if (v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("response header \"%.*s\" must be a string or an array of strings",
						namelen, name)));
	for (int i = 0; i < v->val.string.len; i++)
	{
		unsigned char c = (unsigned char) v->val.string.val[i];

		if (c == '\r' || c == '\n')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("response header \"%.*s\" contains a line break", namelen, name),
					 errdetail("A replayed header with CR or LF would start another header or the body.")));
		/* RFC 9110 5.5: no control character in a value but HTAB */
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("response header \"%.*s\" contains a control character", namelen, name),
					 errdetail("Byte 0x%02x at offset %d; a field value may hold no control character but a tab.",
							   c, i)));
	}
}

/*
 * Field names are case-insensitive (RFC 9110 5.1): jsonb keeps "Location"
 * and "location" apart, and a replay would send both.  The names are few
 * (the headers are at most IDEM_MAX_HEADERS_BYTES), so each is compared
 * with those before it.
 */
static void
CheckNameOnce(const char *name, int namelen, JsonbValue **seen, int *nseen)
{
	for (int i = 0; i < *nseen; i++)
		if ((*seen)[i].val.string.len == namelen &&
			pg_strncasecmp((*seen)[i].val.string.val, name, namelen) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("response header \"%.*s\" is given twice", namelen, name),
					 errdetail("Field names are case-insensitive: \"%.*s\" is the same field.",
							   (*seen)[i].val.string.len, (*seen)[i].val.string.val),
					 errhint("Give a field that occurs more than once as one name with an array of values.")));
	*seen = *seen == NULL ? palloc(sizeof(JsonbValue) * 16) :
		(*nseen % 16 == 0 ? repalloc(*seen, sizeof(JsonbValue) * (*nseen + 16)) : *seen);
	(*seen)[*nseen].val.string.val = (char *) name;
	(*seen)[*nseen].val.string.len = namelen;
	(*nseen)++;
}

/*
 * Check the headers a finish was given; returns them, or (Datum) 0 for
 * none.  Every problem is 22023, before anything is written.
 */
Datum
IdemCheckResponseHeaders(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			depth = 0;
	char	   *name = NULL;
	int			namelen = 0;
	JsonbValue *seen = NULL;	/* the names so far */
	int			nseen = 0;

	if (VARSIZE(headers) > IDEM_MAX_HEADERS_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("response headers are too large"),
				 errdetail("They take %d bytes; the limit is %d bytes.",
						   (int) VARSIZE(headers), IDEM_MAX_HEADERS_BYTES),
				 errhint("Keep only the headers a retry needs, such as Location or Content-Type.")));
	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("response headers must be a JSON object"),
				 errhint("Map each field name to a string, or to an array of strings for a field that occurs more than once.")));

	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		CHECK_FOR_INTERRUPTS();
		switch (tok)
		{
			case WJB_BEGIN_OBJECT:
				if (depth++ > 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("response header \"%.*s\" must be a string or an array of strings",
									namelen, name)));
				break;
			case WJB_BEGIN_ARRAY:
				if (depth++ > 1)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("response header \"%.*s\" must be a string or an array of strings",
									namelen, name)));
				if (v.val.array.nElems == 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("response header \"%.*s\" has no value", namelen, name)));
				break;
			case WJB_END_OBJECT:
			case WJB_END_ARRAY:
				depth--;
				break;
			case WJB_KEY:
				name = v.val.string.val;
				namelen = v.val.string.len;
				CheckNameOnce(name, namelen, &seen, &nseen);
				if (namelen == 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("response header names must not be empty")));
				for (int i = 0; i < namelen; i++)
					if (!IsTokenChar((unsigned char) name[i]))
						ereport(ERROR,
								(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
								 errmsg("response header name \"%.*s\" is not a valid field name",
										namelen, name),
								 errdetail("A field name is a token of RFC 9110: letters, digits and !#$%%&'*+-.^_`|~.")));
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				CheckHeaderValue(name, namelen, &v);
				break;
			default:
				break;
		}
	}
	return PointerGetDatum(headers);
}
