/*
 * idem_response.c
 *	  What a finish stores for a replay: the status code, the headers the
 *	  application chose to keep, and one body, jsonb or bytes of any
 *	  content type.
 *
 * Headers are a jsonb object from field name to a string, or to an array
 * of strings for a field that occurs more than once (Set-Cookie, Link), in
 * order.  jsonb does not keep the order of different field names, which
 * RFC 9110 section 5.3 says is not significant; it keeps every value's
 * characters exactly.  The application replays them into a response, so
 * they are held to what a proxy may safely pass on beside a body that the
 * replaying server frames itself:
 *
 * - a name is an RFC 9110 token, given once (ignoring case), and not one
 *   of the fields that frame the message or belong to one connection
 *   (Content-Length, Transfer-Encoding, Connection, Keep-Alive,
 *   Proxy-Connection, TE, Trailer, Upgrade; RFC 9112 6 and RFC 9110
 *   7.6.1), nor one with an underscore for a hyphen, which a CGI-style
 *   stack reads as the same: replayed beside another body or over another
 *   connection, they would let the requester's bytes be read as the next
 *   message;
 * - a value holds no control character but a tab (RFC 9110 5.5): no CR or
 *   LF, which would start a header or the body, no other C0 control or
 *   DEL, and, where the server encoding can say so, no C1 control (U+0085
 *   NEL is a line break to some decoders), no line or paragraph separator
 *   (U+2028, U+2029) and no bidirectional control (Unicode's Bidi_Control:
 *   U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069), which make a
 *   logged or displayed value read otherwise than it is.  In a SQL_ASCII
 *   database the bytes beyond ASCII have no encoding to read them by, and
 *   pass as the opaque obs-text of RFC 9110.
 *
 * The byte body is kept and returned exactly.
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#include "idem_guc.h"
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

/* Raise 54000 for a value to store larger than idempotency.max_response_size. */
static void
CheckStoredSize(Size size, const char *what, const char *hint)
{
	if (idem_max_response_size <= 0 || size <= (Size) idem_max_response_size)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("%s is too large to store", what),
			 errdetail("It is %zu bytes; idempotency.max_response_size is %s.",
					   size, GetConfigOptionByName("idempotency.max_response_size", NULL, false)),
			 errhint("%s", hint)));
}

/*
 * Raise 54000 for a response larger than idempotency.max_response_size: its
 * body (jsonb or bytes) and headers, as stored.  A replay holds a few times
 * the stored size in memory (docs/operations.md), so this bounds a
 * replay's memory as well.
 */
void
IdemCheckResponseSize(Datum body, Datum headers, Datum bytes)
{
	Size		size = 0;

	if (body != (Datum) 0)
		size += VARSIZE_ANY(DatumGetPointer(body));
	if (headers != (Datum) 0)
		size += VARSIZE_ANY(DatumGetPointer(headers));
	if (bytes != (Datum) 0)
		size += VARSIZE_ANY(DatumGetPointer(bytes));
	CheckStoredSize(size, "response",
					"Store a smaller response, or a reference to where the full one is kept.");
}

/*
 * The same for a lease's recovery point (idem_checkpoint's state), which
 * every resume and idem_failed_keys return as a replay returns a response.
 */
void
IdemCheckStateSize(Datum state)
{
	if (state != (Datum) 0)
		CheckStoredSize(VARSIZE_ANY(DatumGetPointer(state)), "checkpoint state",
						"Keep a smaller recovery point, or a reference to where the full one is kept.");
}

/* RFC 9110 section 5.6.2: tchar. */
static bool
IsTokenChar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return strchr("!#$%&'*+-.^_`|~", c) != NULL && c != '\0';
}

/*
 * A character beyond ASCII that a value may not hold: a C1 control, a line
 * or paragraph separator, a bidirectional embedding, override or isolate.
 */
static bool
IsRefusedCodePoint(pg_wchar cp)
{
	return (cp >= 0x80 && cp <= 0x9f) ||
		cp == 0x2028 || cp == 0x2029 ||
	/* Unicode's Bidi_Control: marks, embeddings, overrides, isolates */
		cp == 0x061c || cp == 0x200e || cp == 0x200f ||
		(cp >= 0x202a && cp <= 0x202e) ||
		(cp >= 0x2066 && cp <= 0x2069);
}

/*
 * Raise 22023 if a value holds a refused character beyond ASCII.  The
 * value is in the server encoding: a UTF-8 one is read as it is, another
 * is converted to UTF-8 first; SQL_ASCII says nothing of its bytes beyond
 * ASCII, which pass as the opaque obs-text of RFC 9110.
 */
static void
CheckHeaderCodePoints(const char *name, int namelen, const char *val, int len)
{
	const unsigned char *p;
	const unsigned char *end;
	char	   *utf8 = NULL;
	int			i;

	for (i = 0; i < len; i++)
		if ((unsigned char) val[i] >= 0x80)
			break;
	if (i == len || GetDatabaseEncoding() == PG_SQL_ASCII)
		return;
	if (GetDatabaseEncoding() != PG_UTF8)
		utf8 = pg_server_to_any(val, len, PG_UTF8);
	if (utf8 != NULL && utf8 != val)
	{
		p = (const unsigned char *) utf8;
		end = p + strlen(utf8);
	}
	else
	{
		p = (const unsigned char *) val;
		end = p + len;
	}
	while (p < end)
	{
		int			n = pg_utf_mblen(p);
		pg_wchar	cp;

		if (n > end - p)
			break;				/* the server encoding's checks saw to it */
		cp = utf8_to_unicode(p);
		if (IsRefusedCodePoint(cp))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("response header \"%.*s\" contains the character U+%04X",
							namelen, name, (unsigned int) cp),
					 errdetail("A field value may hold no C1 control, line or paragraph separator, or bidirectional control.")));
		p += n;
	}
	if (utf8 != NULL && utf8 != val)
		pfree(utf8);
}

/*
 * The fields that frame a message or belong to one connection (RFC 9112
 * section 6, RFC 9110 section 7.6.1): the server that replays a response
 * frames it and owns its connection.
 */
static const char *const framing_fields[] = {
	"Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
	"Proxy-Connection", "TE", "Trailer", "Upgrade"
};

/*
 * Does a field name match one of those, ignoring case and taking an
 * underscore for a hyphen, as a CGI-style stack that folds one into the
 * other would?
 */
static bool
IsFramingField(const char *name, int namelen, const char *field)
{
	if ((int) strlen(field) != namelen)
		return false;
	for (int i = 0; i < namelen; i++)
	{
		char		c = pg_tolower((unsigned char) name[i]);

		if (c == '_')
			c = '-';
		if (c != pg_tolower((unsigned char) field[i]))
			return false;
	}
	return true;
}

/* Raise 22023 for a field a replay may not carry. */
static void
CheckHeaderName(const char *name, int namelen)
{
	for (int i = 0; i < lengthof(framing_fields); i++)
		if (IsFramingField(name, namelen, framing_fields[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("response header \"%.*s\" cannot be stored", namelen, name),
					 errdetail("It frames the message or belongs to one connection: the server that replays the response sets it for the body it sends."),
					 errhint("Leave it out; keep only the headers a retry needs, such as Location or Content-Type.")));
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
	CheckHeaderCodePoints(name, namelen, v->val.string.val, v->val.string.len);
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
				CheckHeaderName(name, namelen);
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
