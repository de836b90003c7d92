/*
 * idem_worker: handle requests that carry idempotency keys, with libpq.
 *
 * One statement per request, in autocommit: one round trip, one transaction.
 * idem_call begins the key, runs the work function create_order(request)
 * (schema.sql) and finishes the key with the response the work returns:
 *
 *   SELECT status, response_code, response_body
 *     FROM idem_call(set_config('orders.key', $1, true), $2,
 *                    'create_order(jsonb)', scope => $3, wait => $4)
 *     done        -> the work ran now: its response (201 and the order)
 *     replay      -> the stored code and body, the work not run
 *     mismatch    -> answer 422
 *     in_progress -> (only with wait => false) back off, try again
 *     dead/erased -> answer 410
 *
 * The statement is run again, after a short random backoff, when it fails
 * with 40001 serialization_failure or 40P01 deadlock_detected: it is the
 * whole transaction, and the error rolled it back.  Under REPEATABLE READ or
 * SERIALIZABLE (default_transaction_isolation, e.g. through PGOPTIONS) a
 * request that waited for a concurrent attempt of the same key gets 40001
 * once that attempt commits (its snapshot cannot see the new record); the
 * retry then gets replay.  Under READ COMMITTED it gets replay directly.
 *
 * With -P the requests of all the keys are sent in libpq's pipeline mode
 * (PostgreSQL 14 and later): every statement is sent before any answer is
 * read, each followed by a sync so that each is a transaction of its own; the
 * ones to retry are sent again, together, after the backoff.
 *
 * usage: idem_worker [-n] [-P] [-d work_ms] [-a amount] [-s scope] worker_id key...
 *   -n  wait => false: a key held by another transaction is in_progress
 *   -P  pipeline mode
 *   -d  the work function sleeps this long (simulated work, holding the key)
 * Connection settings come from the PG* environment variables.
 * Prints one line per key and a summary line; exits 1 if any key failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

/* Built-in type OIDs (fixed in pg_type; libpq ships no header for them). */
#define BOOLOID		16
#define TEXTOID		25
#define JSONBOID	3802

#define MAX_ATTEMPTS 20

/*
 * The request, prepared once per connection; the work function is a literal,
 * resolved to its OID then.  Explicit parameter types, the request as jsonb
 * (compared as JSON, not as bytes; sent as unknown to idem_begin it would
 * pick the text variant).  The key reaches the work as orders.key, set for
 * this statement's transaction only by set_config(..., true), evaluated as
 * idem_call's argument, so before the work runs.
 */
#define CALL_NAME "idem_call"
#define CALL_SQL \
	"SELECT status, response_code, response_body" \
	"  FROM idem_call(set_config('orders.key', $1, true), $2," \
	"                 'create_order(jsonb)', scope => $3, wait => $4)"
static const Oid call_types[] = {TEXTOID, JSONBOID, TEXTOID, BOOLOID};

typedef enum
{
	DONE,						/* the request got its answer */
	RETRY,						/* back off, run the statement again */
	FAILED						/* give up on this key */
} Outcome;

typedef struct
{
	const char *key;
	Outcome		rc;
	int			attempts;
	char		status[16];
	char		code[8];
	char	   *body;			/* malloc'd */
} Request;

static int	nowait;
static int	serialization_retries;
static int	deadlock_retries;
static int	in_progress_retries;

/* Sleep for ms milliseconds. */
static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* Random backoff before attempt n + 1: up to 2, 4, 8 ... 256 ms. */
static void
backoff(int n)
{
	sleep_ms(1 + random() % (1L << (n < 8 ? n : 8)));
}

/* Check a result: DONE if it succeeded, RETRY on 40001/40P01, else FAILED. */
static Outcome
check(PGresult *res, const char *what)
{
	const char *sqlstate;
	ExecStatusType st = PQresultStatus(res);

	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
		return DONE;
	sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (sqlstate && strcmp(sqlstate, "40001") == 0)
	{
		serialization_retries++;
		return RETRY;
	}
	if (sqlstate && strcmp(sqlstate, "40P01") == 0)
	{
		deadlock_retries++;
		return RETRY;
	}
	fprintf(stderr, "%s failed: %s", what, PQresultErrorMessage(res));
	return FAILED;
}

/* Read the answer to one attempt at a request from its result. */
static Outcome
read_answer(PGresult *res, Request *req)
{
	Outcome		rc = check(res, "idem_call");
	const char *status;

	if (rc != DONE)
		return rc;
	status = PQgetvalue(res, 0, 0);
	snprintf(req->status, sizeof(req->status), "%s", status);
	free(req->body);
	req->body = NULL;
	if (strcmp(status, "done") == 0 || strcmp(status, "replay") == 0)
	{
		/* the same code and body, whoever did the work and whenever */
		snprintf(req->code, sizeof(req->code), "%s", PQgetvalue(res, 0, 1));
		req->body = strdup(PQgetvalue(res, 0, 2));
	}
	else if (strcmp(status, "mismatch") == 0)
	{
		snprintf(req->code, sizeof(req->code), "422");
		req->body = strdup("{\"error\": \"key reused with a different request\"}");
	}
	else if (strcmp(status, "in_progress") == 0)
	{
		in_progress_retries++;
		return RETRY;			/* like HTTP 409: come back later */
	}
	else if (strcmp(status, "dead") == 0 || strcmp(status, "erased") == 0)
	{
		snprintf(req->code, sizeof(req->code), "410");
		req->body = strdup("{\"error\": \"key no longer usable\"}");
	}
	else
	{
		fprintf(stderr, "unexpected status %s\n", status);
		return FAILED;
	}
	return DONE;
}

/* One request at a time: one round trip per attempt. */
static void
run_sequential(PGconn *conn, const char *scope, const char *request,
			   Request *reqs, int nreqs)
{
	for (int i = 0; i < nreqs; i++)
	{
		Request    *req = &reqs[i];
		const char *args[] = {req->key, request, scope, nowait ? "false" : "true"};

		for (req->attempts = 1;; req->attempts++)
		{
			PGresult   *res = PQexecPrepared(conn, CALL_NAME, 4, args, NULL, NULL, 0);

			req->rc = read_answer(res, req);
			PQclear(res);
			if (req->rc != RETRY || req->attempts == MAX_ATTEMPTS)
				break;
			backoff(req->attempts);
		}
	}
}

/*
 * Every request in one pipeline: send them all, then read every answer.  A
 * sync after each statement makes it its own implicit transaction (an error
 * in one does not abort the others).  The requests to retry go out together
 * in the next round, after the backoff.  Sending everything before reading
 * is fine for a few dozen requests; for thousands, read while sending
 * (PQsetnonblocking and PQconsumeInput), or both sides' buffers may fill.
 */
static void
run_pipelined(PGconn *conn, const char *scope, const char *request,
			  Request *reqs, int nreqs)
{
	const char *wait = nowait ? "false" : "true";
	int			pending = nreqs;

	if (!PQenterPipelineMode(conn))
	{
		fprintf(stderr, "cannot enter pipeline mode: %s", PQerrorMessage(conn));
		return;					/* every request stays FAILED */
	}
	for (int i = 0; i < nreqs; i++)
		reqs[i].rc = RETRY;
	for (int round = 1; pending > 0 && round <= MAX_ATTEMPTS; round++)
	{
		if (round > 1)
			backoff(round - 1);
		for (int i = 0; i < nreqs; i++)
		{
			const char *args[] = {reqs[i].key, request, scope, wait};

			if (reqs[i].rc != RETRY)
				continue;
			if (!PQsendQueryPrepared(conn, CALL_NAME, 4, args, NULL, NULL, 0) ||
				!PQpipelineSync(conn))	/* the sync also flushes */
			{
				fprintf(stderr, "sending failed: %s", PQerrorMessage(conn));
				goto out;
			}
		}
		/* the answers come back in the order the statements were sent */
		pending = 0;
		for (int i = 0; i < nreqs; i++)
		{
			PGresult   *res;

			if (reqs[i].rc != RETRY)
				continue;
			reqs[i].attempts++;
			res = PQgetResult(conn);
			if (res == NULL)
			{
				fprintf(stderr, "no result: %s", PQerrorMessage(conn));
				reqs[i].rc = FAILED;
				goto out;
			}
			reqs[i].rc = read_answer(res, &reqs[i]);
			PQclear(res);
			/* then the end of this statement's results, then its sync */
			while ((res = PQgetResult(conn)) != NULL)
				PQclear(res);
			res = PQgetResult(conn);
			if (PQresultStatus(res) != PGRES_PIPELINE_SYNC)
			{
				fprintf(stderr, "expected the end of a pipeline's sync: %s", PQerrorMessage(conn));
				PQclear(res);
				reqs[i].rc = FAILED;
				goto out;
			}
			PQclear(res);
			if (reqs[i].rc == RETRY)
				pending++;
		}
	}
out:
	if (!PQexitPipelineMode(conn))
		fprintf(stderr, "cannot leave pipeline mode: %s", PQerrorMessage(conn));
}

/* Run a statement with parameters (text, no types) and check it. */
static int
setup(PGconn *conn, const char *sql, int nparams, const char *const *args)
{
	PGresult   *res = PQexecParams(conn, sql, nparams, NULL, args, NULL, NULL, 0);
	int			ok = check(res, sql) == DONE;

	PQclear(res);
	return ok;
}

int
main(int argc, char **argv)
{
	const char *scope = "orders-api";
	const char *work_ms = "0";
	int			amount = 500;
	int			pipeline = 0;
	char		request[64];
	PGconn	   *conn;
	PGresult   *res;
	Request    *reqs;
	int			nreqs;
	int			opt;
	int			failures = 0;

	while ((opt = getopt(argc, argv, "nPd:a:s:")) != -1)
	{
		switch (opt)
		{
			case 'n':
				nowait = 1;
				break;
			case 'P':
				pipeline = 1;
				break;
			case 'd':
				work_ms = optarg;
				break;
			case 'a':
				amount = atoi(optarg);
				break;
			case 's':
				scope = optarg;
				break;
			default:
				goto usage;
		}
	}
	if (argc - optind < 2)
		goto usage;

	srandom((unsigned) getpid() ^ (unsigned) time(NULL));
	snprintf(request, sizeof(request), "{\"amount\": %d}", amount);

	conn = PQconnectdb("");
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "connection failed: %s", PQerrorMessage(conn));
		PQfinish(conn);
		return 1;
	}
	/* once per session: who we are, for the work function; then prepare */
	{
		const char *args[] = {argv[optind], work_ms};

		if (!setup(conn, "SELECT set_config('orders.worker', $1, false),"
				   "       set_config('orders.work_ms', $2, false)", 2, args))
		{
			PQfinish(conn);
			return 1;
		}
	}
	res = PQprepare(conn, CALL_NAME, CALL_SQL, 4, call_types);
	if (check(res, "PREPARE") != DONE)
	{
		PQclear(res);
		PQfinish(conn);
		return 1;
	}
	PQclear(res);

	nreqs = argc - optind - 1;
	reqs = calloc(nreqs, sizeof(Request));
	if (reqs == NULL)
	{
		PQfinish(conn);
		return 1;
	}
	for (int i = 0; i < nreqs; i++)
	{
		reqs[i].key = argv[optind + 1 + i];
		reqs[i].rc = FAILED;
	}
	if (pipeline)
		run_pipelined(conn, scope, request, reqs, nreqs);
	else
		run_sequential(conn, scope, request, reqs, nreqs);

	for (int i = 0; i < nreqs; i++)
	{
		if (reqs[i].rc == DONE)
			printf("key=%s status=%s attempts=%d code=%s body=%s\n",
				   reqs[i].key, reqs[i].status, reqs[i].attempts, reqs[i].code, reqs[i].body);
		else
		{
			fprintf(stderr, "key %s: %s\n", reqs[i].key,
					reqs[i].rc == RETRY ? "gave up after too many retries" : "failed");
			failures++;
		}
		free(reqs[i].body);
	}
	printf("worker=%s serialization_retries=%d deadlock_retries=%d in_progress_retries=%d\n",
		   argv[optind], serialization_retries, deadlock_retries, in_progress_retries);
	free(reqs);
	PQfinish(conn);
	return failures ? 1 : 0;

usage:
	fprintf(stderr, "usage: %s [-n] [-P] [-d work_ms] [-a amount] [-s scope] worker_id key...\n",
			argv[0]);
	return 2;
}
