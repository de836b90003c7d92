"""End-to-end test of consumer.py against a live database (PG* environment).

500 messages, each delivered 1-4 times, shuffled; some messages arrive as a
burst of 4 copies that the 4 consumer threads pick up at the same time; some
deliveries "crash" inside their one statement, after the effect is applied and
before it commits (half by raising, half by the session dying: its back end is
terminated), and are redelivered later.  Afterwards: exactly one ledger row per
message, the right balances, and a redelivery of everything changes nothing.

The crash is a test-only AFTER INSERT trigger on ledger that acts when the
session's setting consumer_test.crash says so: handle() itself has no hook, its
statement is the whole transaction.

With --batch the consumers take up to BATCH deliveries at a time and hand them
to handle_batch() (idem_once_batch): batches overlap across threads, hold
copies of the same message, and a crash rolls back and redelivers a whole batch.
"""

import collections
import queue
import random
import sys
import threading
import time

import psycopg

from consumer import SCOPE, Message, handle, handle_batch

MESSAGES, ACCOUNTS, THREADS, BATCH = 500, 10, 4, 20
BATCHED = "--batch" in sys.argv
DEADLINE = time.monotonic() + 25  # seconds; every wait below is bounded by it
CONNECT = dict(autocommit=True, options="-c statement_timeout=10s -c lock_timeout=10s")

passed = failed = 0
crash_kinds = []  # the mode of every simulated crash that happened (list.append is thread-safe)


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok - {name}")
    else:
        failed += 1
        print(f"FAILED - {name} {detail}")


# The crash: when the session's consumer_test.crash is set, the first ledger
# row a statement writes (the effect is applied: the account credited, the id
# recorded) ends it before it commits, by an error or by the session dying.
CRASH_SQL = """
CREATE OR REPLACE FUNCTION ledger_crash() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    CASE current_setting('consumer_test.crash', true)
    WHEN 'raise' THEN
        PERFORM pg_sleep(0.01);  -- hold the ids a little so concurrent copies queue up behind them
        RAISE EXCEPTION 'simulated crash';
    WHEN 'disconnect' THEN
        PERFORM pg_sleep(0.01);
        PERFORM pg_terminate_backend(pg_backend_pid());  -- the server rolls back as the session dies
        PERFORM pg_sleep(10);  -- where the termination takes effect
    ELSE
        NULL;
    END CASE;
    RETURN NULL;
END
$$;
CREATE TRIGGER ledger_crash AFTER INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_crash();
"""


def set_crash(conn, mode):
    """The crash the next statement of this session makes (a session setting: one
    more statement, for the test's crashing deliveries only)."""
    conn.execute("SELECT set_config('consumer_test.crash', %s, false)", (mode,))


def is_simulated_crash(err, mode):
    if mode == "raise":
        return isinstance(err, psycopg.errors.RaiseException) and "simulated crash" in str(err)
    # the server ended the session (psycopg reports it as an OperationalError)
    return (isinstance(err, psycopg.OperationalError)
            and "terminating connection due to administrator command" in str(err))


def deliveries(rng, messages):
    """Each message 1-4 times (every 10th as a burst of 4 adjacent copies), shuffled;
    about 8% of deliveries crash before COMMIT."""
    groups = []
    for i, m in enumerate(messages):
        if i % 10 == 0:
            groups.append([m] * 4)
        else:
            groups.extend([m] for _ in range(rng.randint(1, 4)))
    rng.shuffle(groups)
    out = []
    for g in groups:
        for m in g:
            r = rng.random()
            out.append((m, "raise" if r < 0.04 else "disconnect" if r < 0.08 else None))
    return out


def consume(q, results, errors):
    conn = psycopg.connect(**CONNECT)
    try:
        while time.monotonic() < DEADLINE:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                q.task_done()
                return
            batch = [item]
            while BATCHED and len(batch) < BATCH:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    q.put(None)  # for another thread (or this one, next time round)
                    q.task_done()
                    break
                batch.append(nxt)
            mode = next((m for _, m in batch if m), None)
            try:
                if mode:
                    set_crash(conn, mode)
                try:
                    if BATCHED:
                        applied = handle_batch(conn, [m for m, _ in batch])
                    else:
                        applied = [handle(conn, batch[0][0])]
                    results.extend((m.id, a) for (m, _), a in zip(batch, applied))
                except psycopg.Error as e:
                    if not (mode and is_simulated_crash(e, mode)):
                        raise
                    crash_kinds.append(mode)
                    for m, _ in batch:
                        results.append((m.id, "crash"))
                        q.put((m, None))  # the broker redelivers what was not acked
                if conn.closed or conn.broken:
                    conn.close()
                    conn = psycopg.connect(**CONNECT)
                elif mode:
                    set_crash(conn, "")
            except Exception as e:  # noqa: BLE001 - report anything else as a failure
                errors.append(f"{[m.id for m, _ in batch]}: {e!r}")
                if conn.closed or conn.broken:
                    conn = psycopg.connect(**CONNECT)
            finally:
                for _ in batch:
                    q.task_done()
    finally:
        conn.close()


def key_waits():
    """idem_stats.key_waits of this database: calls that waited for another
    transaction writing the same key (None if the library is not counting)."""
    with psycopg.connect(**CONNECT) as conn:
        row = conn.execute(
            "SELECT key_waits FROM idem_stats WHERE datname = current_database()"
        ).fetchone()
    return row[0] if row else None


def main():
    args = [a for a in sys.argv[1:] if a != "--batch"]
    rng = random.Random(int(args[0]) if args else 4)
    print(f"mode: {'batches of up to %d through idem_once_batch' % BATCH if BATCHED else 'one message at a time through idem_once'}")
    messages = [
        # ids of their own per mode: both runs share the database and the scope
        Message(f"{'batch' if BATCHED else 'msg'}-{i:04d}", rng.randrange(ACCOUNTS), rng.randint(1, 1000))
        for i in range(MESSAGES)
    ]
    with psycopg.connect(**CONNECT) as conn:
        conn.execute("DROP TABLE IF EXISTS ledger, accounts")
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute(
            "CREATE TABLE ledger (id bigserial PRIMARY KEY, message_id text NOT NULL,"
            " account int NOT NULL REFERENCES accounts, amount int NOT NULL)"
        )  # deliberately no UNIQUE (message_id): idem_once alone must prevent duplicates
        conn.execute(
            "INSERT INTO accounts SELECT g, 0 FROM generate_series(0, %s) g", (ACCOUNTS - 1,)
        )
        conn.execute(CRASH_SQL)

    q, results, errors = queue.Queue(), [], []
    plan = deliveries(rng, messages)
    for d in plan:
        q.put(d)
    waits_before = key_waits() or 0
    started = time.monotonic()
    threads = [
        threading.Thread(target=consume, args=(q, results, errors), daemon=True)
        for _ in range(THREADS)
    ]
    for t in threads:
        t.start()
    while q.unfinished_tasks and time.monotonic() < DEADLINE:
        time.sleep(0.02)
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join(max(0.1, DEADLINE - time.monotonic()))
    elapsed = time.monotonic() - started
    waits_after = key_waits()

    outcome = collections.Counter(r for _, r in results)
    crashes = outcome["crash"]
    print(
        f"{len(plan)} deliveries + {crashes} redeliveries in {elapsed:.1f}s by {THREADS} threads:"
        f" {outcome[True]} applied, {outcome[False]} duplicates, {crashes} crashes"
    )
    if waits_after is None:
        print("ok - (skipped: idem_stats is not counting here) concurrent copies met in idem_once")
    else:
        waited = waits_after - waits_before
        print(f"{waited} idem_once calls waited for a concurrent copy (idem_stats.key_waits)")
        check("concurrent copies of a message really met in idem_once", waited > 0)
    check("all deliveries processed in time", not q.unfinished_tasks and not any(t.is_alive() for t in threads))
    check("no unexpected errors", not errors, errors[:5])
    kinds = collections.Counter(crash_kinds)
    print(f"crashes: {kinds['raise']} raised, {kinds['disconnect']} sessions terminated")
    check("both kinds of crash were simulated", kinds["raise"] > 0 and kinds["disconnect"] > 0, kinds)
    applied = collections.Counter(mid for mid, r in results if r is True)
    check("handle() applied each message exactly once",
          len(applied) == MESSAGES and set(applied.values()) == {1})
    # every delivery in the plan ran to completion once (a crashed one through its
    # redelivery): MESSAGES of them applied, the rest were duplicates
    check("every other delivery was reported as a duplicate", outcome[False] == len(plan) - MESSAGES)

    expected = collections.Counter()
    for m in messages:
        expected[m.account] += m.amount
    with psycopg.connect(**CONNECT) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT message_id) FROM ledger"
        ).fetchone()
        check("one ledger row per message", rows == (MESSAGES, MESSAGES), rows)
        ledger = dict(conn.execute("SELECT message_id, amount FROM ledger").fetchall())
        check("ledger amounts match the messages",
              ledger == {m.id: m.amount for m in messages})
        balances = dict(conn.execute("SELECT id, balance FROM accounts").fetchall())
        check("final balances are correct",
              balances == {a: expected[a] for a in range(ACCOUNTS)}, balances)
        completed = conn.execute(
            "SELECT count(*) FROM unnest(%s::text[]) AS m(id), idem_lookup(m.id, %s) AS l"
            " WHERE l.status = 'completed'",
            ([m.id for m in messages], SCOPE),
        ).fetchone()[0]
        check("idem_lookup shows every message id completed", completed == MESSAGES, completed)

        again = handle_batch(conn, messages) if BATCHED else [handle(conn, m) for m in messages]
        check("a late redelivery of everything is a no-op", not any(again))
        after = dict(conn.execute("SELECT id, balance FROM accounts").fetchall())
        check("balances unchanged after the late redelivery", after == balances)

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
