/*
 * idem_fingerprint.c
 *	  SHA-256 fingerprints of request bodies: docs/specification.md,
 *	  section 3.
 *
 * text and bytea bodies are hashed as their exact bytes, so a client can
 * compute the same digest with any SHA-256 library.  jsonb bodies are hashed
 * over a canonical, unambiguous encoding of the value, so that two values
 * that are equal under jsonb "=" get the same fingerprint whatever their key
 * order, white space or numeric scale.  jsonb itself already stores object
 * keys sorted and de-duplicated; numerics are the one place where equal
 * values can differ in their stored form ('1.0' vs '1.00'), so each numeric
 * is written in normalised form (trailing fractional zeros stripped).
 *
 * The encoding is a stream of tagged tokens; strings and numerics carry a
 * 4-byte length, so no two different values can encode to the same bytes.
 * It starts with a version prefix, which keeps a jsonb fingerprint from
 * colliding with the fingerprint of a bytea body by accident.
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "miscadmin.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "idem_fingerprint.h"

/* Bump the version if the encoding below ever changes. */
#define JSONB_ENCODING_PREFIX "idempotency:jsonb:v1\n"

/* Tokens are gathered in a small buffer to keep hash update calls few. */
#define ENCODE_BUFFER_SIZE 8192

typedef struct FingerprintState
{
	pg_cryptohash_ctx *ctx;
	size_t		used;
	uint8		buffer[ENCODE_BUFFER_SIZE];
} FingerprintState;

/* Raise an error for a failed cryptohash call, freeing the context first. */
static void
HashFailed(pg_cryptohash_ctx *ctx)
{
	const char *detail = pg_cryptohash_error(ctx);

	pg_cryptohash_free(ctx);
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("could not compute SHA-256 fingerprint"),
			 errdetail_internal("%s", detail)));
}

/* Create and initialise a SHA-256 context. */
static pg_cryptohash_ctx *
HashStart(void)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	if (pg_cryptohash_init(ctx) < 0)
		HashFailed(ctx);
	return ctx;
}

/* Feed bytes to the hash. */
static void
HashUpdate(pg_cryptohash_ctx *ctx, const uint8 *data, size_t len)
{
	if (len > 0 && pg_cryptohash_update(ctx, data, len) < 0)
		HashFailed(ctx);
}

/* Write the digest to dest and free the context. */
static void
HashFinish(pg_cryptohash_ctx *ctx, uint8 *dest)
{
	if (pg_cryptohash_final(ctx, dest, IDEM_FINGERPRINT_LEN) < 0)
		HashFailed(ctx);
	pg_cryptohash_free(ctx);
}

/*
 * SHA-256 of the exact bytes of a text or bytea body.
 */
void
IdemFingerprintBytes(const char *data, size_t len, uint8 *dest)
{
	pg_cryptohash_ctx *ctx = HashStart();

	HashUpdate(ctx, (const uint8 *) data, len);
	HashFinish(ctx, dest);
}

/* Append bytes to the encoding buffer, hashing it whenever it fills. */
static void
EncodeBytes(FingerprintState *state, const void *data, size_t len)
{
	const uint8 *p = data;

	while (len > 0)
	{
		size_t		room = ENCODE_BUFFER_SIZE - state->used;
		size_t		n = Min(room, len);

		memcpy(state->buffer + state->used, p, n);
		state->used += n;
		p += n;
		len -= n;
		if (state->used == ENCODE_BUFFER_SIZE)
		{
			HashUpdate(state->ctx, state->buffer, state->used);
			state->used = 0;
		}
	}
}

/* Append a one-byte tag. */
static void
EncodeTag(FingerprintState *state, char tag)
{
	EncodeBytes(state, &tag, 1);
}

/* Append a tag followed by a length-prefixed byte string. */
static void
EncodeSized(FingerprintState *state, char tag, const char *data, uint32 len)
{
	uint8		lenbytes[4];

	/* big-endian, so the encoding does not depend on the machine */
	lenbytes[0] = (uint8) (len >> 24);
	lenbytes[1] = (uint8) (len >> 16);
	lenbytes[2] = (uint8) (len >> 8);
	lenbytes[3] = (uint8) len;
	EncodeTag(state, tag);
	EncodeBytes(state, lenbytes, 4);
	EncodeBytes(state, data, len);
}

/* Append one scalar jsonb value. */
static void
EncodeScalar(FingerprintState *state, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			EncodeTag(state, 'z');
			break;
		case jbvBool:
			EncodeTag(state, v->val.boolean ? 't' : 'f');
			break;
		case jbvString:
			EncodeSized(state, 's', v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			{
				char	   *normal = numeric_normalize(v->val.numeric);

				EncodeSized(state, 'n', normal, strlen(normal));
				pfree(normal);
				break;
			}
		default:
			elog(ERROR, "unexpected jsonb scalar type: %d", (int) v->type);
	}
}

/*
 * SHA-256 of the canonical encoding of a jsonb value.
 */
void
IdemFingerprintJsonb(Jsonb *jb, uint8 *dest)
{
	FingerprintState *state = palloc(sizeof(FingerprintState));
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;

	state->ctx = HashStart();
	state->used = 0;
	EncodeBytes(state, JSONB_ENCODING_PREFIX, strlen(JSONB_ENCODING_PREFIX));

	it = JsonbIteratorInit(&jb->root);
	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		CHECK_FOR_INTERRUPTS();
		switch (token)
		{
			case WJB_BEGIN_ARRAY:
				/* a top-level scalar is stored as a one-element raw array */
				EncodeTag(state, v.val.array.rawScalar ? '=' : '[');
				break;
			case WJB_END_ARRAY:
				EncodeTag(state, ']');
				break;
			case WJB_BEGIN_OBJECT:
				EncodeTag(state, '{');
				break;
			case WJB_END_OBJECT:
				EncodeTag(state, '}');
				break;
			case WJB_KEY:
				EncodeSized(state, 'k', v.val.string.val, v.val.string.len);
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				EncodeScalar(state, &v);
				break;
			default:
				elog(ERROR, "unexpected jsonb iterator token: %d", (int) token);
		}
	}

	HashUpdate(state->ctx, state->buffer, state->used);
	HashFinish(state->ctx, dest);
	pfree(state);
}
