/*
 * idem_scope.c
 *	  Scope boundaries: which roles may use the keys of which scope.
 *
 * By default any role that may call the request functions may use every
 * scope: one application, whose scopes tell its tenants apart.  Where
 * several applications share a database, an operator ties scope prefixes
 * to roles in the extension's table idem_scope_owners.  A scope then
 * belongs to the role of its longest matching prefix, and only a role with
 * that role's privileges (has_privs_of_role, as for a policy's TO clause)
 * may begin, finish, call, release, lease, checkpoint, look up, use once,
 * keep, fail, erase, retry or discard its keys, or list them in
 * idem_failed_keys; anyone else gets 42501 before anything
 * is read or written.  A scope that no prefix matches stays everyone's
 * unless a row with the empty prefix claims it.  A role that was dropped
 * leaves its prefixes to nobody.  Superusers and roles with BYPASSRLS are
 * not bound, as row-level security does not bind them: an operator's role
 * that must reach every tenant's keys is given BYPASSRLS.
 *
 * Row-level security could not do this: the functions read and write the
 * key table's heap and indexes themselves, below the rewriter that applies
 * policies.  So every SQL function that takes a scope checks it here, in
 * IdemCallStore and IdemCallStoreForScope (idem_args.c), before the scope
 * reaches the store.
 *
 * The rules are read once per backend and kept until the table changes:
 * its triggers (idem_scope_owners_changed, for each row written and for a
 * TRUNCATE, enabled ALWAYS so that neither session_replication_role =
 * replica nor a logical replication subscriber's apply skips them; apply
 * fires no statement trigger but TRUNCATE's) send a relcache invalidation
 * for the table, which every backend takes in at its next transaction, as
 * for a catalog change.  With no rules, a call pays one test.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "idem_compat.h"
#include "idem_inval.h"
#include "idem_scope.h"
#include "idem_xact.h"

#define IDEM_SCOPE_OWNERS_NAME	"idem_scope_owners"
#define Anum_scope_prefix		1
#define Anum_scope_role			2

PG_FUNCTION_INFO_V1(idem_scope_permitted);
PG_FUNCTION_INFO_V1(idem_scope_owners_changed);

typedef struct ScopeRule
{
	char	   *prefix;
	int			len;
	Oid			role;
} ScopeRule;

/*
 * The rules of the extension's schema nspid, longest prefix first.  Kept
 * while valid; an invalidation that arrives during a load (counted) makes
 * the load's result used once and not kept.
 */
static struct
{
	bool		valid;
	uint64		invalidations;
	Oid			nspid;
	Oid			relid;			/* InvalidOid: no table (before 0.8.0) */
	int			nrules;
	ScopeRule  *rules;
	MemoryContext cxt;
}			scope_rules;

/* Whether the role last asked about is bound by the rules. */
static struct
{
	Oid			userid;			/* InvalidOid: nobody asked yet */
	bool		unbound;
}			bound_role;

static void
ForgetRules(Datum arg, Oid relid)
{
	if (!scope_rules.valid || !OidIsValid(relid) || relid == scope_rules.relid)
	{
		scope_rules.valid = false;
		scope_rules.invalidations++;
	}
}

/* A relation was created, dropped or renamed: the table may be another. */
static void
ForgetRulesByName(Datum arg, int cacheid, uint32 hashvalue)
{
	ForgetRules(arg, InvalidOid);
}

/* A role's attributes changed (SUPERUSER, BYPASSRLS). */
static void
ForgetBoundRole(Datum arg, int cacheid, uint32 hashvalue)
{
	bound_role.userid = InvalidOid;
}

static int
CompareRulesLongestFirst(const void *a, const void *b)
{
	const ScopeRule *ra = a;
	const ScopeRule *rb = b;

	return rb->len - ra->len;
}

/*
 * The table of rules in the extension's schema, or InvalidOid if there is
 * none: before the update to 0.8.0, or when a relation of that name is not
 * the extension's own (a role with CREATE on the schema could make one
 * before the update, which then fails on the name).  Such a relation is
 * ignored: before the update there are no rules, and neither obeying its
 * rows nor refusing every call because of it would be right.  Membership,
 * not ownership, tells the extension's table: an operator may give the key
 * table to another role.
 */
static Oid
LookupRulesTable(const IdemStoreOids *oids)
{
	Oid			relid = get_relname_relid(IDEM_SCOPE_OWNERS_NAME, oids->nspid);

	if (!OidIsValid(relid) || get_rel_relkind(relid) != RELKIND_RELATION)
		return InvalidOid;
	if (getExtensionOfObject(RelationRelationId, relid) !=
		get_extension_oid("idempotency", true))
		return InvalidOid;
	return relid;
}

/*
 * Read every rule of the table into the rules' context: a heap scan through
 * systable_beginscan, whose signature is the same on every version.
 */
static void
LoadRules(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, NULL);
	HeapTuple	tuple;
	int			allocated = 8;

	MemoryContextReset(scope_rules.cxt);
	scope_rules.rules = MemoryContextAlloc(scope_rules.cxt,
										   allocated * sizeof(ScopeRule));
	scope_rules.nrules = 0;
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		prefix;
		Datum		role;
		ScopeRule  *rule;
		text	   *t;

		CHECK_FOR_INTERRUPTS();
		prefix = heap_getattr(tuple, Anum_scope_prefix, desc, &isnull);
		if (isnull)
			continue;			/* the primary key refuses it */
		role = heap_getattr(tuple, Anum_scope_role, desc, &isnull);
		if (isnull)
			continue;			/* NOT NULL refuses it */
		if (scope_rules.nrules == allocated)
		{
			allocated *= 2;
			scope_rules.rules = repalloc(scope_rules.rules,
										 allocated * sizeof(ScopeRule));
		}
		rule = &scope_rules.rules[scope_rules.nrules++];
		t = DatumGetTextPP(prefix);
		rule->len = VARSIZE_ANY_EXHDR(t);
		rule->prefix = MemoryContextAlloc(scope_rules.cxt, rule->len + 1);
		memcpy(rule->prefix, VARDATA_ANY(t), rule->len);
		rule->prefix[rule->len] = '\0';
		rule->role = DatumGetObjectId(role);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, NoLock);
	qsort(scope_rules.rules, scope_rules.nrules, sizeof(ScopeRule),
		  CompareRulesLongestFirst);
}

/* Make sure the rules of the extension's schema are the table's. */
static void
EnsureRules(const IdemStoreOids *oids)
{
	static bool callbacks_registered = false;
	uint64		before;

	if (scope_rules.valid && scope_rules.nspid == oids->nspid)
		return;
	if (!callbacks_registered)
	{
		scope_rules.cxt = AllocSetContextCreate(TopMemoryContext,
												"idempotency scope owners",
												ALLOCSET_SMALL_SIZES);
		IdemRegisterRelcacheCallback(ForgetRules);
		CacheRegisterSyscacheCallback(RELNAMENSP, ForgetRulesByName, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, ForgetBoundRole, (Datum) 0);
		callbacks_registered = true;
	}
	before = scope_rules.invalidations;
	scope_rules.valid = false;
	scope_rules.nspid = oids->nspid;
	scope_rules.relid = LookupRulesTable(oids);
	if (OidIsValid(scope_rules.relid))
		LoadRules(scope_rules.relid);
	else
		scope_rules.nrules = 0;
	/* keep them only if nothing changed while they were read */
	scope_rules.valid = scope_rules.invalidations == before;
}

/* Is the current role bound by scope rules at all? */
static bool
RoleIsUnbound(Oid userid)
{
	if (bound_role.userid != userid)
	{
		bound_role.unbound = superuser_arg(userid) ||
			has_bypassrls_privilege(userid);
		bound_role.userid = userid;
	}
	return bound_role.unbound;
}

/* The rule of the scope's longest matching prefix, or NULL. */
static const ScopeRule *
FindRule(const text *scope)
{
	const char *s = VARDATA_ANY(scope);
	int			len = VARSIZE_ANY_EXHDR(scope);

	for (int i = 0; i < scope_rules.nrules; i++)
	{
		const ScopeRule *rule = &scope_rules.rules[i];

		if (rule->len <= len && memcmp(rule->prefix, s, rule->len) == 0)
			return rule;
	}
	return NULL;
}

/* May the current role use the keys of this scope? */
bool
IdemScopePermitted(const IdemStoreOids *oids, const text *scope)
{
	const ScopeRule *rule;
	Oid			userid;

	EnsureRules(oids);
	if (scope_rules.nrules == 0)
		return true;
	userid = GetUserId();
	if (RoleIsUnbound(userid))
		return true;
	rule = FindRule(scope);
	return rule == NULL || has_privs_of_role(userid, rule->role);
}

/* Raise 42501 unless the current role may use the keys of this scope. */
void
IdemScopeCheck(const IdemStoreOids *oids, const text *scope)
{
	const ScopeRule *rule;
	char	   *owner;

	if (IdemScopePermitted(oids, scope))
		return;
	rule = FindRule(scope);
	owner = GetUserNameFromId(rule->role, true);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for idempotency scope %s",
					IdemQuoteName(VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope))),
			 owner != NULL ?
			 errdetail("Scopes beginning with %s belong to role %s.",
					   IdemQuoteName(rule->prefix, rule->len), quote_identifier(owner)) :
			 errdetail("Scopes beginning with %s belong to a role that was dropped.",
					   IdemQuoteName(rule->prefix, rule->len)),
			 errhint("An operator ties scope prefixes to roles in the table %s.",
					 IDEM_SCOPE_OWNERS_NAME)));
}

/*
 * idem_scope_permitted(scope text): may the current role use the keys of
 * the scope?  idem_failed_keys lists only those.
 */
Datum
idem_scope_permitted(PG_FUNCTION_ARGS)
{
	IdemStoreOids oids;

	IdemStoreResolve(fcinfo, &oids);
	PG_RETURN_BOOL(IdemScopePermitted(&oids, PG_GETARG_TEXT_PP(0)));
}

/*
 * The triggers of idem_scope_owners: every backend reads the rules again
 * once the change commits (this one at its next command).  Invalidations
 * of one relation within a transaction are sent once, however many rows.
 */
Datum
idem_scope_owners_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("idem_scope_owners_changed() is a trigger function")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	PG_RETURN_POINTER(NULL);
}
