/*
 * idem_lockkey.c
 *	  The name of a key's lock: a keyed hash of (scope, key) under a secret
 *	  of the cluster's.
 *
 * A key's lock is a heavyweight lock whose tag every role can read in
 * pg_locks.  A public hash of (scope, key) there would let a role read
 * low-entropy keys back from the tags, and, since a 64-bit hash without a
 * secret can be inverted, aim a key of its own (in its own scope) at the
 * lock of another application's key and hold it, so that the victim's
 * requests wait or answer in_progress.  The tag is therefore SipHash-2-4
 * (Aumasson and Bernstein, a pseudorandom function: without the secret no
 * output can be predicted or aimed at) of the scope's length, the scope and
 * the key, under a 128-bit secret.
 *
 * The secret is made once per cluster, from pg_strong_random(), into a file
 * in the data directory that only the server's operating-system user can
 * read, created atomically so that processes racing to make it agree.
 * Every session that may hold a key's lock must use the same secret for as
 * long as the server runs: between a key's begin and its finish its lock is
 * all that makes a second begin wait, so two sessions that named it
 * differently would both start the work.  So the postmaster reads it when
 * it preloads the library, and every backend inherits it; a file replaced
 * or removed while the server runs changes nothing until a restart.  A
 * backend of a server that does not preload the library reads the file at
 * its first call instead, and relies on the file staying as it is.  No key
 * lock outlives the server (a begun key refuses PREPARE TRANSACTION, and a
 * finish lets its lock go, the record guarding the key from then on), so a
 * restart may change the secret; the file keeps it anyway, and
 * pg_basebackup copies it.  No SQL reads it but a superuser's (or
 * pg_read_server_files') pg_read_binary_file.
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"

#include "idem_lockkey.h"

#define LOCK_KEY_FILE		"idempotency_lock.key"
#define LOCK_KEY_LEN		16

static uint8 lock_key[LOCK_KEY_LEN];
static bool lock_key_loaded = false;

/* SipHash-2-4, as its reference implementation (CC0) computes it. */
#define ROTL64(x, b)	(uint64) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND \
	do { \
		v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32); \
		v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2; \
		v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0; \
		v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32); \
	} while (0)

static inline uint64
Load64LE(const uint8 *p)
{
	return (uint64) p[0] | ((uint64) p[1] << 8) | ((uint64) p[2] << 16) |
		((uint64) p[3] << 24) | ((uint64) p[4] << 32) | ((uint64) p[5] << 40) |
		((uint64) p[6] << 48) | ((uint64) p[7] << 56);
}

/* The state of a SipHash-2-4 computation over input given in pieces. */
typedef struct SipState
{
	uint64		v0,
				v1,
				v2,
				v3;
	uint8		tail[8];		/* bytes not yet compressed */
	int			ntail;
	uint64		total;			/* bytes given so far */
} SipState;

static void
SipInit(SipState *s, const uint8 *key)
{
	uint64		k0 = Load64LE(key);
	uint64		k1 = Load64LE(key + 8);

	s->v0 = UINT64CONST(0x736f6d6570736575) ^ k0;
	s->v1 = UINT64CONST(0x646f72616e646f6d) ^ k1;
	s->v2 = UINT64CONST(0x6c7967656e657261) ^ k0;
	s->v3 = UINT64CONST(0x7465646279746573) ^ k1;
	s->ntail = 0;
	s->total = 0;
}

static inline void
SipCompress(SipState *s, uint64 m)
{
	uint64		v0 = s->v0,
				v1 = s->v1,
				v2 = s->v2,
				v3 = s->v3;

	v3 ^= m;
	SIPROUND;
	SIPROUND;
	v0 ^= m;
	s->v0 = v0;
	s->v1 = v1;
	s->v2 = v2;
	s->v3 = v3;
}

static void
SipUpdate(SipState *s, const uint8 *in, size_t len)
{
	s->total += len;
	while (len > 0)
	{
		if (s->ntail == 0 && len >= 8)
		{
			SipCompress(s, Load64LE(in));
			in += 8;
			len -= 8;
			continue;
		}
		s->tail[s->ntail++] = *in++;
		len--;
		if (s->ntail == 8)
		{
			SipCompress(s, Load64LE(s->tail));
			s->ntail = 0;
		}
	}
}

static uint64
SipFinal(SipState *s)
{
	uint64		b = s->total << 56;
	uint64		v0,
				v1,
				v2,
				v3;

	for (int i = 0; i < s->ntail; i++)
		b |= (uint64) s->tail[i] << (8 * i);
	SipCompress(s, b);
	v0 = s->v0;
	v1 = s->v1;
	v2 = s->v2 ^ 0xff;
	v3 = s->v3;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

#ifdef USE_ASSERT_CHECKING
/* The reference's own test: key 00..0f, message 00..0e. */
static bool
SipHashSelfTest(void)
{
	uint8		key[16];
	uint8		msg[15];
	SipState	s;

	for (int i = 0; i < 16; i++)
		key[i] = (uint8) i;
	for (int i = 0; i < 15; i++)
		msg[i] = (uint8) i;
	SipInit(&s, key);
	SipUpdate(&s, msg, 3);		/* in pieces, as the keys are given */
	SipUpdate(&s, msg + 3, 12);
	return SipFinal(&s) == UINT64CONST(0xa129ca6149be45e5);
}
#endif

/* Read the secret, making it first if the cluster has none. */
static void
LoadLockKey(void)
{
	char		path[MAXPGPATH];
	int			fd;
	int			n;

	snprintf(path, sizeof(path), "%s/%s", DataDir, LOCK_KEY_FILE);
	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0 && errno == ENOENT)
	{
		/*
		 * Write it under a name of this backend's own, then link it into
		 * place: link() fails if another backend's is there already, and
		 * either way every backend reads the one file that is.
		 */
		char		tmp[MAXPGPATH];
		uint8		fresh[LOCK_KEY_LEN];
		int			tfd;

		if (!pg_strong_random(fresh, sizeof(fresh)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate the idempotency key locks' secret")));
		snprintf(tmp, sizeof(tmp), "%s/%s.%d", DataDir, LOCK_KEY_FILE, MyProcPid);
		tfd = OpenTransientFile(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
		if (tfd < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not create file \"%s\": %m", tmp)));
		if (write(tfd, fresh, sizeof(fresh)) != sizeof(fresh) || pg_fsync(tfd) != 0)
		{
			int			save_errno = errno ? errno : ENOSPC;

			CloseTransientFile(tfd);
			unlink(tmp);
			errno = save_errno;
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not write file \"%s\": %m", tmp)));
		}
		CloseTransientFile(tfd);
		if (link(tmp, path) != 0 && errno != EEXIST)
		{
			int			save_errno = errno;

			unlink(tmp);
			errno = save_errno;
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not link file \"%s\" to \"%s\": %m", tmp, path)));
		}
		unlink(tmp);
		fsync_fname(DataDir, true);
		fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	}
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	n = read(fd, lock_key, sizeof(lock_key));
	CloseTransientFile(fd);
	if (n != sizeof(lock_key))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("file \"%s\" does not hold the idempotency key locks' secret", path),
				 errdetail("It has %d bytes, not %d.", n < 0 ? 0 : n, LOCK_KEY_LEN),
				 errhint("Stop the server, then remove it; the server makes another at its start.")));
	Assert(SipHashSelfTest());
	lock_key_loaded = true;
}

/*
 * Read (or make) the secret in the postmaster, when it preloads the
 * library: every backend it starts inherits it.
 */
void
IdemLockKeyInit(void)
{
	if (!lock_key_loaded)
		LoadLockKey();
}

/*
 * The hash that names the lock of (scope, key): the scope's length first,
 * so that the split between scope and key is part of what is hashed.
 */
uint64
IdemLockKeyHash(const char *scope, int scope_len, const char *key, int key_len)
{
	SipState	s;
	uint8		len[2];

	if (!lock_key_loaded)
		LoadLockKey();
	len[0] = (uint8) (scope_len & 0xff);
	len[1] = (uint8) (scope_len >> 8);
	SipInit(&s, lock_key);
	SipUpdate(&s, len, sizeof(len));
	SipUpdate(&s, (const uint8 *) scope, scope_len);
	SipUpdate(&s, (const uint8 *) key, key_len);
	return SipFinal(&s);
}
