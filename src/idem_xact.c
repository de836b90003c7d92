/*
 * idem_xact.c
 *	  Keys this transaction has begun: their locks and the commit guard.
 *
 * A begun key writes nothing.  What keeps a second transaction from starting
 * the same key is a heavyweight lock on the key's 64-bit hash (an advisory
 * locktag with our own class in field4, so it never meets the locks of
 * pg_advisory_lock), held from idem_begin until idem_finish or
 * idem_release.  idem_finish inserts the completed record before it lets go
 * of the lock; from then on the unique index entry of that uncommitted row
 * is what a newcomer waits on.  So the write path costs one probe and one
 * insert, a transaction holds a lock only for the keys it has open right
 * now, and a batch that begins and finishes 100,000 keys in one transaction
 * never holds more than one.  Locks also give us deadlock detection,
 * lock_timeout and pg_locks for free.
 *
 * The open keys themselves live in a hash table in TopTransactionContext,
 * so the commit guard can name what was left open, and so subtransaction
 * aborts can forget what they began.  A lock can only be released by the
 * resource owner that holds it, so a key finished (or released) in a deeper
 * subtransaction than the one that began it keeps its lock until the
 * transaction ends, and goes back to "begun" if that subtransaction is
 * rolled back.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "idem_guc.h"
#include "idem_stats.h"
#include "idem_citus.h"
#include "idem_xact.h"

/* locktag_field4 of our advisory locks ("ID"); SQL's advisory locks use 1 and 2 */
#define IDEM_LOCKTAG_CLASS 0x4944

/* The identity of an open key: its hash, then the exact bytes. */
typedef struct IdemKeyTag
{
	uint64		hash;
	uint16		scope_len;
	uint16		key_len;
	char		data[IDEM_SCOPE_MAX_LEN + IDEM_KEY_MAX_LEN];
} IdemKeyTag;

struct IdemOpenKey
{
	IdemKeyTag	tag;			/* hash key; must be first */
	IdemOpenState state;
	SubTransactionId begin_subid;	/* whose resource owner holds the lock */
	SubTransactionId done_subid;	/* where it was finished or released */
	IdemFingerprint fingerprint;
	TimestampTz created_at;
	TimestampTz expires_at;
	bool		replaces;		/* an expired record must go first */
};

static HTAB *open_keys = NULL;

/* Fill the lock tag of the key whose (scope, key) hash is given. */
static void
SetKeyLockTag(LOCKTAG *tag, uint64 hash)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 (uint32) (hash >> 32), (uint32) hash,
						 IDEM_LOCKTAG_CLASS);
}

/*
 * Take the key's lock for this (sub)transaction.  Returns false, without
 * waiting, if wait is false and another transaction holds it.  A wait is
 * counted in idem_stats: it is first tried without one, which costs
 * nothing more when the key is free (the common case).
 *
 * The lock is taken on behalf of the current subtransaction's resource
 * owner, not the statement's portal: idem_finish, which lets it go, runs in
 * a later statement.  An error inside leaves CurrentResourceOwner changed,
 * which is harmless: every abort path resets it.
 */
bool
IdemKeyLock(const IdemKey *key, bool wait)
{
	ResourceOwner save = CurrentResourceOwner;
	LOCKTAG		tag;
	LockAcquireResult result;

	SetKeyLockTag(&tag, key->hash);
	CurrentResourceOwner = CurTransactionResourceOwner;
	result = LockAcquire(&tag, ExclusiveLock, false, true);
	if (result == LOCKACQUIRE_NOT_AVAIL && wait)
	{
		/* another transaction has the key: wait, and count the wait */
		IdemWaitTimer timer;

		IdemStatsWaitStart(&timer);
		result = LockAcquire(&tag, ExclusiveLock, false, false);
		IdemStatsWaitEnd(&timer);
	}
	CurrentResourceOwner = save;
	return result != LOCKACQUIRE_NOT_AVAIL;
}

/* Release a lock that IdemKeyLock took in this subtransaction. */
static void
ReleaseKeyLock(LOCKTAG *tag)
{
	ResourceOwner save = CurrentResourceOwner;
	bool		released;

	CurrentResourceOwner = CurTransactionResourceOwner;
	released = LockRelease(tag, ExclusiveLock, false);
	CurrentResourceOwner = save;
	if (!released)
		elog(ERROR, "idempotency key lock was not held");
}

/* Release the key's lock. */
void
IdemKeyUnlock(const IdemKey *key)
{
	LOCKTAG		tag;

	SetKeyLockTag(&tag, key->hash);
	ReleaseKeyLock(&tag);
}

/* Does another transaction hold the key's lock right now?  Takes nothing. */
bool
IdemKeyLockedByOthers(const IdemKey *key)
{
	LOCKTAG		tag;
	VirtualTransactionId *holders;

	SetKeyLockTag(&tag, key->hash);
	holders = GetLockConflicts(&tag, ExclusiveLock, NULL);
	return VirtualTransactionIdIsValid(holders[0]);
}

/* Hash function for IdemKeyTag: the key's own 64-bit hash, folded. */
static uint32
KeyTagHash(const void *key, Size keysize)
{
	const IdemKeyTag *tag = key;

	return (uint32) (tag->hash ^ (tag->hash >> 32));
}

/* Comparison function for IdemKeyTag: 0 when equal. */
static int
KeyTagCompare(const void *key1, const void *key2, Size keysize)
{
	const IdemKeyTag *a = key1;
	const IdemKeyTag *b = key2;

	if (a->hash != b->hash || a->scope_len != b->scope_len ||
		a->key_len != b->key_len)
		return 1;
	return memcmp(a->data, b->data, a->scope_len + a->key_len);
}

/* Copy a key's identity into a tag. */
static void
MakeKeyTag(IdemKeyTag *tag, const IdemKey *key)
{
	tag->hash = key->hash;
	tag->scope_len = VARSIZE_ANY_EXHDR(key->scope);
	tag->key_len = VARSIZE_ANY_EXHDR(key->key);
	memcpy(tag->data, VARDATA_ANY(key->scope), tag->scope_len);
	memcpy(tag->data + tag->scope_len, VARDATA_ANY(key->key), tag->key_len);
}

/* Find a key this transaction has open, or NULL. */
IdemOpenKey *
IdemOpenKeyFind(const IdemKey *key)
{
	IdemKeyTag	tag;

	if (open_keys == NULL)
		return NULL;
	MakeKeyTag(&tag, key);
	return hash_search(open_keys, &tag, HASH_FIND, NULL);
}

/*
 * Record that this transaction began a key; the caller holds its lock.
 */
void
IdemOpenKeyAdd(const IdemKey *key, const IdemFingerprint *fingerprint,
			   TimestampTz created_at, TimestampTz expires_at, bool replaces)
{
	IdemKeyTag	tag;
	IdemOpenKey *open;
	bool		found;

	if (open_keys == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(IdemKeyTag);
		ctl.entrysize = sizeof(IdemOpenKey);
		ctl.hash = KeyTagHash;
		ctl.match = KeyTagCompare;
		ctl.hcxt = TopTransactionContext;
		open_keys = hash_create("idempotency open keys", 16, &ctl,
								HASH_ELEM | HASH_FUNCTION | HASH_COMPARE |
								HASH_CONTEXT);
	}

	MakeKeyTag(&tag, key);
	open = hash_search(open_keys, &tag, HASH_ENTER, &found);
	Assert(!found);
	open->state = IDEM_OPEN_BEGUN;
	open->begin_subid = GetCurrentSubTransactionId();
	open->done_subid = InvalidSubTransactionId;
	open->fingerprint = *fingerprint;
	open->created_at = created_at;
	open->expires_at = expires_at;
	open->replaces = replaces;
}

/* Accessors, so callers need not know the struct. */
IdemOpenState
IdemOpenKeyState(const IdemOpenKey *open)
{
	return open->state;
}

const IdemFingerprint *
IdemOpenKeyFingerprint(const IdemOpenKey *open)
{
	return &open->fingerprint;
}

bool
IdemOpenKeyReplaces(const IdemOpenKey *open)
{
	return open->replaces;
}

void
IdemOpenKeyTimes(const IdemOpenKey *open,
				 TimestampTz *created_at, TimestampTz *expires_at)
{
	*created_at = open->created_at;
	*expires_at = open->expires_at;
}

/*
 * A begun key was finished or released.  If we are in the subtransaction
 * that owns the lock, let the lock go and forget the key: a finished key's
 * row now stands in for the lock.  Otherwise keep both until the
 * subtransaction's fate is known.
 */
void
IdemOpenKeyClose(IdemOpenKey *open, const IdemKey *key, IdemOpenState how)
{
	Assert(open->state == IDEM_OPEN_BEGUN && how != IDEM_OPEN_BEGUN);

	if (open->begin_subid == GetCurrentSubTransactionId())
	{
		IdemKeyUnlock(key);
		hash_search(open_keys, &open->tag, HASH_REMOVE, NULL);
	}
	else
	{
		open->state = how;
		open->done_subid = GetCurrentSubTransactionId();
	}
}

/*
 * A key or scope (len bytes of s) for a message: in double quotes, each
 * double quote in it doubled, as PostgreSQL quotes an identifier.  Keys and
 * scopes come from clients: a key such as pay-1" in scope "tenantA must not
 * read as another key in another scope.
 */
char *
IdemQuoteName(const char *s, int len)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '"');
	for (int i = 0; i < len; i++)
	{
		if (s[i] == '"')
			appendStringInfoChar(&buf, '"');
		appendStringInfoChar(&buf, s[i]);
	}
	appendStringInfoChar(&buf, '"');
	return buf.data;
}

/*
 * Name a key for a message: "key", or "key" in scope "scope", each quoted
 * by IdemQuoteName.  IdemKeyName and the commit guard both name keys so.
 */
char *
IdemQuoteKey(const char *scope, int scope_len, const char *key, int key_len)
{
	char	   *quoted = IdemQuoteName(key, key_len);

	if (scope_len == 0)
		return quoted;
	return psprintf("%s in scope %s", quoted, IdemQuoteName(scope, scope_len));
}

static char *
KeyTagName(const IdemKeyTag *tag)
{
	return IdemQuoteKey(tag->data, tag->scope_len,
						tag->data + tag->scope_len, tag->key_len);
}

/*
 * The commit guard (docs/specification.md, section 4.3): at COMMIT or PREPARE,
 * a key that is still only begun is an error, or with idempotency.unfinished =
 * release is let go.
 */
static void
CheckUnfinishedKeys(bool prepare)
{
	HASH_SEQ_STATUS status;
	IdemOpenKey *open;
	IdemOpenKey *first = NULL;
	long		unfinished = 0;

	hash_seq_init(&status, open_keys);
	while ((open = hash_seq_search(&status)) != NULL)
	{
		if (open->state != IDEM_OPEN_BEGUN)
			continue;
		if (first == NULL)
			first = open;
		unfinished++;
	}

	if (unfinished == 0)
		return;

	if (idem_unfinished_action == IDEM_UNFINISHED_ERROR)
	{
		const char *citus_hint = IdemCitusUnfinishedHint(prepare);

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency key %s" IDEM_UNFINISHED_MSG_TAIL,
						KeyTagName(&first->tag)),
				 unfinished > 1 ?
				 errdetail_plural("%ld key in this transaction is unfinished.",
								  "%ld keys in this transaction are unfinished.",
								  unfinished, unfinished) : 0,
				 citus_hint ? errhint("%s", citus_hint) :
				 errhint("Call idem_finish() or idem_release() before %s, or set idempotency.unfinished to \"release\".",
						 prepare ? "PREPARE TRANSACTION" : "COMMIT")));
	}

	/*
	 * Release.  A plain commit releases every lock anyway, but a prepared
	 * transaction would carry them until COMMIT PREPARED.
	 */
	if (prepare)
	{
		hash_seq_init(&status, open_keys);
		while ((open = hash_seq_search(&status)) != NULL)
		{
			LOCKTAG		tag;

			if (open->state != IDEM_OPEN_BEGUN)
				continue;
			SetKeyLockTag(&tag, open->tag.hash);
			ReleaseKeyLock(&tag);
		}
	}
}

/* Transaction callback: the guard before commit; forget everything after. */
static void
IdemXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			if (open_keys != NULL)
				CheckUnfinishedKeys(false);
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (open_keys != NULL)
				CheckUnfinishedKeys(true);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* the memory goes with TopTransactionContext */
			open_keys = NULL;
			break;
	}
}

/*
 * Subtransaction callback.  On commit, what the subtransaction did becomes
 * its parent's (as its locks do); a key finished or released there that now
 * sits at the level that began it is done for good, so its lock is let go
 * (it is held by the parent's resource owner) and it is forgotten.  On
 * abort, keys the subtransaction began are forgotten (its resource owner
 * releases their locks), and keys it finished or released are begun again,
 * since their row or release is rolled back.
 */
static void
IdemSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS status;
	IdemOpenKey *open;

	if (open_keys == NULL)
		return;
	if (event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB)
		return;

	hash_seq_init(&status, open_keys);
	while ((open = hash_seq_search(&status)) != NULL)
	{
		if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			if (open->begin_subid == mySubid)
				open->begin_subid = parentSubid;
			if (open->done_subid == mySubid)
			{
				open->done_subid = parentSubid;
				if (open->begin_subid == parentSubid)
				{
					ResourceOwner save = CurrentResourceOwner;
					LOCKTAG		tag;

					SetKeyLockTag(&tag, open->tag.hash);
					CurrentResourceOwner = ResourceOwnerGetParent(CurTransactionResourceOwner);
					LockRelease(&tag, ExclusiveLock, false);
					CurrentResourceOwner = save;
					hash_search(open_keys, &open->tag, HASH_REMOVE, NULL);
				}
			}
		}
		else if (open->begin_subid == mySubid)
			hash_search(open_keys, &open->tag, HASH_REMOVE, NULL);
		else if (open->done_subid == mySubid)
		{
			open->state = IDEM_OPEN_BEGUN;
			open->done_subid = InvalidSubTransactionId;
		}
	}
}

/* Register the callbacks; once per backend. */
void
IdemXactInit(void)
{
	RegisterXactCallback(IdemXactCallback, NULL);
	RegisterSubXactCallback(IdemSubXactCallback, NULL);
}
