/*
 * idem_worker: handle requests that carry idempotency keys, with libpq.
 *
 * One transaction per request:
 *
 *   BEGIN ISOLATION LEVEL SERIALIZABLE
 *   idem_begin(key, request, scope, wait)
 *     started     -> INSERT the business row, idem_finish(key, 201, body), COMMIT
 *     replay      -> answer with the stored code and body, write nothing
 *     mismatch    -> answer 422, write nothing
 *     in_progress -> (only with wait => false) roll back, back off, try again
 *
 * The WHOLE transaction is retried, after a short random backoff, when any
 * statement (COMMIT included) fails with 40001 serialization_failure or
 * 40P01 deadlock_detected.  Under REPEATABLE READ or SERIALIZABLE, a request
 * that waited for a concurrent attempt of the same key gets 40001 once that
 * attempt commits (its snapshot cannot see the new record); the retry then
 * gets replay.
 *
 * usage: idem_worker [-n] [-d work_ms] [-a amount] [-s scope] worker_id key...
 *   -n  wait => false: a key held by another transaction is in_progress
 *   -d  sleep this long between idem_begin and idem_finish (simulated work)
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
#define INT4OID		23
#define TEXTOID		25
#define JSONBOID	3802

#define MAX_ATTEMPTS 20

typedef enum
{
	DONE,						/* the request got its answer */
	RETRY,						/* roll back, back off, run the transaction again */
	FAILED						/* give up on this key */
} Outcome;

typedef struct
{
	char		status[16];
	char		code[8];
	char	   *body;			/* malloc'd */
} Answer;

static int	nowait;
static int	work_ms;
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

/* Run a statement without parameters and check it. */
static Outcome
run(PGconn *conn, const char *sql)
{
	PGresult   *res = PQexec(conn, sql);
	Outcome		rc = check(res, sql);

	PQclear(res);
	return rc;
}

/* One attempt at the whole transaction for one key. */
static Outcome
attempt(PGconn *conn, const char *scope, const char *worker,
		const char *key, const char *request, Answer *ans)
{
	static const Oid begin_types[] = {TEXTOID, JSONBOID, TEXTOID, BOOLOID};
	static const Oid insert_types[] = {TEXTOID, INT4OID, JSONBOID};
	static const Oid finish_types[] = {TEXTOID, JSONBOID, TEXTOID};
	const char *begin_args[] = {key, request, scope, nowait ? "false" : "true"};
	const char *insert_args[] = {key, worker, request};
	const char *finish_args[3];
	PGresult   *res;
	Outcome		rc;

	if ((rc = run(conn, "BEGIN ISOLATION LEVEL SERIALIZABLE")) != DONE)
		return rc;

	/* explicit types: an untyped $2 would pick the text variant of idem_begin */
	res = PQexecParams(conn,
					   "SELECT status, response_code, response_body"
					   "  FROM idem_begin($1, $2, scope => $3, wait => $4)",
					   4, begin_types, begin_args, NULL, NULL, 0);
	if ((rc = check(res, "idem_begin")) != DONE)
	{
		PQclear(res);
		return rc;
	}
	snprintf(ans->status, sizeof(ans->status), "%s", PQgetvalue(res, 0, 0));

	if (strcmp(ans->status, "replay") == 0)
	{
		snprintf(ans->code, sizeof(ans->code), "%s", PQgetvalue(res, 0, 1));
		ans->body = strdup(PQgetvalue(res, 0, 2));
		PQclear(res);
		return run(conn, "ROLLBACK");	/* nothing to keep */
	}
	PQclear(res);
	if (strcmp(ans->status, "mismatch") == 0)
	{
		snprintf(ans->code, sizeof(ans->code), "422");
		ans->body = strdup("{\"error\": \"key reused with a different request\"}");
		return run(conn, "ROLLBACK");
	}
	if (strcmp(ans->status, "in_progress") == 0)
	{
		in_progress_retries++;
		return RETRY;			/* like HTTP 409: come back later */
	}
	if (strcmp(ans->status, "started") != 0)
	{
		fprintf(stderr, "unexpected status %s\n", ans->status);
		return FAILED;
	}

	/* started: do the work and record its response in the same transaction */
	if (work_ms > 0)
		sleep_ms(work_ms);
	res = PQexecParams(conn,
					   "INSERT INTO orders (key, worker, amount)"
					   " VALUES ($1, $2, ($3::jsonb ->> 'amount')::int)"
					   " RETURNING jsonb_build_object('order_id', id, 'worker', worker,"
					   "                              'amount', amount)",
					   3, insert_types, insert_args, NULL, NULL, 0);
	if ((rc = check(res, "INSERT")) != DONE)
	{
		PQclear(res);
		return rc;
	}
	ans->body = strdup(PQgetvalue(res, 0, 0));
	PQclear(res);

	finish_args[0] = key;
	finish_args[1] = ans->body;
	finish_args[2] = scope;
	res = PQexecParams(conn, "SELECT idem_finish($1, 201, $2, scope => $3)",
					   3, finish_types, finish_args, NULL, NULL, 0);
	rc = check(res, "idem_finish");
	PQclear(res);
	if (rc != DONE)
		return rc;
	snprintf(ans->code, sizeof(ans->code), "201");
	return run(conn, "COMMIT");	/* may fail with 40001 too */
}

/* Handle one key: retry the transaction until it is done, a bounded number of times. */
static int
handle(PGconn *conn, const char *scope, const char *worker,
	   const char *key, const char *request)
{
	Answer		ans;
	Outcome		rc = FAILED;
	int			n;

	for (n = 1; n <= MAX_ATTEMPTS; n++)
	{
		memset(&ans, 0, sizeof(ans));
		rc = attempt(conn, scope, worker, key, request, &ans);
		if (PQtransactionStatus(conn) != PQTRANS_IDLE)
			PQclear(PQexec(conn, "ROLLBACK"));
		if (rc != RETRY)
			break;
		free(ans.body);
		/* random backoff: up to 2, 4, 8 ... 256 ms */
		sleep_ms(1 + random() % (1L << (n < 8 ? n : 8)));
	}
	if (rc != DONE)
	{
		fprintf(stderr, "key %s: %s\n", key,
				rc == RETRY ? "gave up after too many retries" : "failed");
		free(ans.body);
		return 1;
	}
	printf("key=%s status=%s attempts=%d code=%s body=%s\n",
		   key, ans.status, n, ans.code, ans.body);
	free(ans.body);
	return 0;
}

int
main(int argc, char **argv)
{
	const char *scope = "orders-api";
	int			amount = 500;
	char		request[64];
	PGconn	   *conn;
	int			opt;
	int			failures = 0;

	while ((opt = getopt(argc, argv, "nd:a:s:")) != -1)
	{
		switch (opt)
		{
			case 'n':
				nowait = 1;
				break;
			case 'd':
				work_ms = atoi(optarg);
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
	for (int i = optind + 1; i < argc; i++)
		failures += handle(conn, scope, argv[optind], argv[i], request);
	printf("worker=%s serialization_retries=%d deadlock_retries=%d in_progress_retries=%d\n",
		   argv[optind], serialization_retries, deadlock_retries, in_progress_retries);
	PQfinish(conn);
	return failures ? 1 : 0;

usage:
	fprintf(stderr, "usage: %s [-n] [-d work_ms] [-a amount] [-s scope] worker_id key...\n",
			argv[0]);
	return 2;
}
