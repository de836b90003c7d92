/*
 * idem_inval.c
 *	  The extension's one relcache invalidation callback, which each of its
 *	  caches that a change to a relation makes stale shares.
 *
 * A backend has room for ten relcache callbacks (MAX_RELCACHE_CALLBACKS in
 * utils/cache/inval.c), for every library it loads together, and a library
 * that asks for one more fails every statement that needs it ("out of
 * relcache_callback_list slots").  Citus takes several.  So the store's
 * resolved relations and their IndexInfos (idem_store.c), the Citus shard
 * map (idem_citus.c) and the scope rules (idem_scope.c) register here, and
 * the extension takes one slot.
 */
#include "postgres.h"

#include "idem_inval.h"

/* More than the extension's caches, which register once each. */
#define IDEM_MAX_RELCACHE_CALLBACKS 8

static RelcacheCallbackFunction relcache_callbacks[IDEM_MAX_RELCACHE_CALLBACKS];
static int	n_relcache_callbacks = 0;

static void
CallRelcacheCallbacks(Datum arg, Oid relid)
{
	for (int i = 0; i < n_relcache_callbacks; i++)
		relcache_callbacks[i] (arg, relid);
}

/*
 * Have func called, with (Datum) 0, for every relcache invalidation this
 * backend takes in.  Call it once per cache, as CacheRegisterRelcacheCallback.
 */
void
IdemRegisterRelcacheCallback(RelcacheCallbackFunction func)
{
	if (n_relcache_callbacks == 0)
		CacheRegisterRelcacheCallback(CallRelcacheCallbacks, (Datum) 0);
	if (n_relcache_callbacks >= IDEM_MAX_RELCACHE_CALLBACKS)
		elog(FATAL, "out of idempotency relcache callback slots");
	relcache_callbacks[n_relcache_callbacks++] = func;
}
