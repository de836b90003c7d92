/*
 * idem_store.h
 *	  The key store: the idem_keys table and its two indexes.
 */
#ifndef IDEM_STORE_H
#define IDEM_STORE_H

#include "access/htup.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "nodes/execnodes.h"
#include "utils/rel.h"
#include "utils/snapshot.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "idem_fingerprint.h"

/* Limits of docs/specification.md, section 2, in bytes. */
#define IDEM_KEY_MAX_LEN	255
#define IDEM_SCOPE_MAX_LEN	255

/* Values of idem_keys.state. */
#define IDEM_STATE_COMPLETED	'c'
#define IDEM_STATE_LEASED		'p' /* committed while its work goes on */
#define IDEM_STATE_ERASED		'e' /* erased: the key stays, nothing else */
#define IDEM_STATE_FAILED		'f' /* attempts failed; the next may start */
#define IDEM_STATE_DEAD			'd' /* attempts ran out: nothing starts again */

/* A state that idem_keys_failures indexes. */
#define IDEM_STATE_IS_FAILURE(s) ((s) == IDEM_STATE_FAILED || (s) == IDEM_STATE_DEAD)

/* An identified (scope, key); both detoasted and validated. */
typedef struct IdemKey
{
	text	   *scope;
	text	   *key;
	uint64		hash;			/* of (scope, key); names the key's lock */
} IdemKey;

/* A request fingerprint, or none (a NULL request). */
typedef struct IdemFingerprint
{
	bool		isnull;
	char		kind;			/* IDEM_FP_KIND_*; NONE in old records */
	uint8		bytes[IDEM_FINGERPRINT_LEN];
} IdemFingerprint;

/*
 * One key record, as read from the table or to be written to it.  The lease
 * fields are set only for a leased key (state IDEM_STATE_LEASED).
 */
typedef struct IdemRecord
{
	ItemPointerData tid;
	TransactionId xmin;			/* inserting transaction (frozen-aware) */
	char		state;
	TimestampTz created_at;
	TimestampTz expires_at;
	bool		code_isnull;
	int32		response_code;
	IdemFingerprint fingerprint;
	bool		body_isnull;
	Datum		response_body;	/* detoasted copy, or 0 if not asked for */
	Datum		response_headers;	/* jsonb, likewise (from 0.4.0) */
	Datum		response_bytes; /* bytea, likewise: a body of any type */
	bool		inserting;		/* BUSY: the busy transaction inserts it */

	/* the lease and its last recovery point */
	pg_uuid_t	lease_token;
	TimestampTz lease_expires_at;
	Interval	lease_duration; /* all zero for none: not a lease's */
	int32		attempts;
	text	   *phase;			/* NULL for none (or not asked for) */
	Datum		phase_state;	/* detoasted copy, or 0 */

	/* bounded retries (from 0.4.0) */
	int32		max_attempts;	/* 0 for no bound */
	text	   *last_error;		/* NULL for none (or not asked for) */
} IdemRecord;

/* Was the record a lease's?  A lease's length is positive; zero means none. */
static inline bool
IdemRecordHasLeaseDuration(const IdemRecord *rec)
{
	return rec->lease_duration.month != 0 || rec->lease_duration.day != 0 ||
		rec->lease_duration.time != 0;
}

typedef enum IdemProbeResult
{
	IDEM_PROBE_ABSENT,			/* no live record */
	IDEM_PROBE_FOUND,			/* a committed record, or one of our own */
	IDEM_PROBE_BUSY				/* a record another live transaction is
								 * inserting or deleting */
} IdemProbeResult;

/* Where the store lives; resolved once per call site. */
typedef struct IdemStoreOids
{
	Oid			heap;
	Oid			pkey;
	Oid			expiry;
	Oid			leases;			/* InvalidOid before version 0.2.0 */
	Oid			nspid;			/* the extension's schema */

	/*
	 * On Citus, a shard of idem_tenant_keys: its last column is the tenant,
	 * the call's scope as a value of the tenant column's type, and the
	 * primary key is (scope, key, tenant).
	 */
	bool		is_shard;
	int64		shardid;
	Datum		tenant;			/* of the call; set by idem_citus.c */
} IdemStoreOids;

/* The distributed key table that idem_citus_setup() makes. */
#define IDEM_TENANT_TABLE_NAME	"idem_tenant_keys"
/* Its tenant column: the one after idem_keys' columns. */
#define IDEM_TENANT_ATTNUM		19

/*
 * Where a sweep stopped in the expiry index: the key and heap TID of the
 * last entry it visited (btree keeps equal keys in TID order).  A sweep
 * that resumes from it fetches no heap row of an entry at or before it
 * again; entries with the same key (many rows expiring at the same moment)
 * are still walked in the index, and recognised there.
 */
typedef struct IdemSweepPosition
{
	bool		valid;			/* false: from the start */
	TimestampTz expires_at;
	ItemPointerData tid;
} IdemSweepPosition;

/*
 * The store, opened for one call.  Its writes go through the executor's
 * own machinery for a table (see BeginWrites in idem_store.c): estate and
 * rri are made at the first write and torn down by IdemStoreClose.
 */
typedef struct IdemStore
{
	Relation	heap;
	Relation	pkey;
	const IdemStoreOids *oids;	/* the caller's, or resolved_again */
	IdemStoreOids resolved_again;	/* after an index was replaced */
	TupleTableSlot *slot;		/* for reads */
	MemoryContext cxt;			/* where it was opened */

	/* the writes of the call, as an INSERT, UPDATE or DELETE would make them */
	struct EState *estate;		/* NULL until the first write */
	struct ResultRelInfo *rri;	/* the key table, its indexes and triggers */
	TupleTableSlot *write_slot; /* the row being written */
	bool		indexes_open;	/* ExecOpenIndices done (inserts, updates) */
	bool		fire_triggers;	/* the table has row triggers to fire */
	bool		check_constraints;	/* a constraint could refuse a record */
	uint8		checked;		/* the CmdTypes whose triggers and rules were
								 * checked */
} IdemStore;

extern uint64 IdemKeyHash(const text *scope, const text *key);
extern void IdemStoreResolve(FunctionCallInfo fcinfo, IdemStoreOids *oids);
extern bool IdemStoreResolveInstalled(IdemStoreOids *oids);
extern bool IdemStoreResolveShard(Oid nspid, int64 shardid, Oid owner,
								  IdemStoreOids *oids);
extern void IdemStoreOpen(IdemStore *store, const IdemStoreOids *oids,
						  bool may_write);
extern void IdemStoreClose(IdemStore *store);
extern IdemProbeResult IdemStoreProbe(IdemStore *store, const IdemKey *key,
									  Snapshot snapshot, bool want_body,
									  IdemRecord *rec,
									  TransactionId *busy_xid);
extern void IdemStoreRequireLeases(IdemStore *store);
extern void IdemStoreInsert(IdemStore *store, const IdemKey *key,
							const IdemRecord *rec);
extern bool IdemStoreUpdate(IdemStore *store, const IdemKey *key,
							const IdemRecord *rec);
typedef struct IdemScopeScan IdemScopeScan;
extern IdemScopeScan *IdemStoreBeginScopeScan(IdemStore *store, text *scope);
extern text *IdemStoreNextScopeKey(IdemScopeScan *scan);
extern void IdemStoreEndScopeScan(IdemScopeScan *scan);
extern bool IdemStoreDelete(IdemStore *store, ItemPointer tid, bool wait);
extern Oid	IdemStoreOwner(const IdemStoreOids *oids);
extern void IdemStoreCheckNotWritingRow(void);
extern int64 IdemStoreSweep(const IdemStoreOids *oids, int64 batch,
							TimestampTz now, IdemSweepPosition *resume,
							bool *locked_out);

#endif							/* IDEM_STORE_H */
