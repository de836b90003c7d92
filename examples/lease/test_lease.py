"""End-to-end test of worker.py and service.py against a live database (PG* environment).

Three orders, each processed by worker processes that crash or stall partway:

1. order-1: worker 1 is SIGKILLed right after its "charge" checkpoint commits.
   Worker 2 gets in_progress until the lease runs out, then resumes at
   "charge" (attempt 2) and runs only "email".  A third run replays.  Worker
   1's token is refused afterwards (55000).
2. order-2: worker 1 is SIGKILLed after the "charge" call but before its
   checkpoint commits (the window the database cannot close).  Worker 2
   resumes at "reserve", repeats the "charge" call, and the service answers it
   from its own idempotency record instead of charging twice.
3. order-3: worker A stalls (does not die) after "reserve"; worker B takes
   over, charges, and stalls after "charge" while holding a live lease; A
   wakes, repeats "charge" (deduplicated by the service), and its checkpoint
   is refused with 55000: it stops, and its business row rolls back.  B
   finishes.

Each time: the service executed every phase exactly once, and order_steps has
one row per phase.
"""

import datetime
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
DEADLINE = time.monotonic() + 50  # seconds; every wait below is bounded by it
LEASE = 2.0  # seconds
SCOPE = "orders"
PHASES = ["reserve", "charge", "email"]
REQUEST = {"sku": "book-42", "qty": 1, "card": "tok_visa", "amount": 1999,
           "email": "ada@example.com"}
RUN = uuid.uuid4().hex[:8]  # order keys of this run: the test can be rerun on one database
CONNECT = dict(autocommit=True, options="-c statement_timeout=10s -c lock_timeout=10s")

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok - {name}")
    else:
        failed += 1
        print(f"FAILED - {name} {detail}")


def remaining():
    return max(0.1, DEADLINE - time.monotonic())


class Proc:
    """A child process whose stdout lines are read by a thread, so that waiting
    for a line has a deadline."""

    running = []

    def __init__(self, args, stdin=None):
        Proc.running.append(self)
        self.p = subprocess.Popen(args, cwd=HERE, stdin=stdin, stdout=subprocess.PIPE,
                                  text=True)
        self.lines = queue.Queue()
        self.all = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self):
        try:
            line = self.lines.get(timeout=remaining())
        except queue.Empty:
            line = None
        if line is not None:
            self.all.append(line)
        return line

    def wait_for(self, pred):
        """Read lines until pred(line) holds; False at EOF or the deadline."""
        while (line := self.next_line()) is not None:
            if pred(line):
                return True
        return False

    def finish(self):
        """Wait for the exit; return (exit status, every stdout line)."""
        try:
            rc = self.p.wait(timeout=remaining())
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        while self.next_line() is not None:
            pass
        return rc, self.all


def worker(url, key, *flags, request=REQUEST, stdin=None):
    return Proc([sys.executable, "-B", "worker.py", "--service", url, "--lease", str(LEASE),
                 *flags, key, json.dumps(request)], stdin=stdin)


def run_worker(url, key, *flags, request=REQUEST):
    """Run a worker to its end; return (exit status, its events)."""
    rc, lines = worker(url, key, *flags, request=request).finish()
    return rc, [json.loads(line) for line in lines]


def events(evs, name):
    return [e for e in evs if e["event"] == name]


def service_log(url, key):
    """The service's executed and replayed calls of one order, as lists of phases."""
    with urllib.request.urlopen(f"{url}/log", timeout=5) as r:
        log = json.load(r)
    mine = lambda kind: [c["phase"] for c in log[kind]
                         if c["idempotency_key"].startswith(f"{key}:")]
    return mine("executed"), mine("replayed")


def lookup(conn, key):
    return conn.execute("SELECT status, response_code, response_body FROM idem_lookup(%s, %s)",
                        (key, SCOPE)).fetchone()


def recovery_point(conn, key):
    # The test peeks at the extension's table as a superuser to see what was
    # recorded; applications only ever use the functions.
    return conn.execute(
        "SELECT phase, phase_state, attempts, lease_token::text, lease_expires_at"
        " FROM idem_keys WHERE scope = %s AND key = %s", (SCOPE, key)).fetchone()


def steps(conn, key):
    return conn.execute("SELECT phase, attempt FROM order_steps WHERE order_key = %s ORDER BY id",
                        (key,)).fetchall()


def sqlstate_of(conn, sql, args):
    try:
        conn.execute(sql, args)
        return None
    except psycopg.Error as e:
        return e.sqlstate


def order_1(conn, url):
    """Crash after a checkpoint committed: the next worker resumes after it."""
    key = f"order-1-{RUN}"
    rc, ev1 = run_worker(url, key, "--crash-after", "charge")
    check("1: worker 1 was killed by SIGKILL", rc == -signal.SIGKILL, rc)
    leases = events(ev1, "lease")
    check("1: worker 1 started the order (attempt 1) and printed its token",
          len(leases) == 1 and leases[0]["status"] == "started" and leases[0]["attempts"] == 1,
          leases)
    token1 = leases[0]["token"] if leases else None
    check("1: worker 1 called and checkpointed reserve and charge, then crashed",
          [e["phase"] for e in events(ev1, "call")] == ["reserve", "charge"]
          and [e["phase"] for e in events(ev1, "checkpoint")] == ["reserve", "charge"]
          and ev1[-1] == {"event": "crash", "after": "checkpointed", "phase": "charge"}, ev1)
    check("1: the key is leased (idem_lookup: in_progress)",
          lookup(conn, key)[0] == "in_progress", lookup(conn, key))
    phase, state, attempts, token, expires = recovery_point(conn, key)
    check("1: recovery point 'charge' recorded with both results, under worker 1's token",
          phase == "charge" and set(state) == {"reserve", "charge"} and attempts == 1
          and token == token1, (phase, state, attempts, token))
    check("1: order_steps has the two committed phases",
          steps(conn, key) == [("reserve", 1), ("charge", 1)], steps(conn, key))
    check("1: the service executed reserve and charge",
          service_log(url, key) == (["reserve", "charge"], []), service_log(url, key))

    rc, ev2 = run_worker(url, key)
    check("1: worker 2 finished", rc == 0, ev2[-1:])
    leases = events(ev2, "lease")
    waits = [e for e in leases if e["status"] == "in_progress"]
    last = leases[-1] if leases else {}
    check("1: worker 2 got in_progress while worker 1's lease ran",
          waits and leases[:-1] == waits
          and all(datetime.datetime.fromisoformat(e["at"]) < expires for e in waits),
          [(e["status"], e["at"]) for e in leases])
    print(f"   worker 2 polled {len(waits)} times; lease ran out at {expires}, "
          f"resumed at {last.get('at')}")
    check("1: then resumed after the lease ran out, attempt 2, at phase charge, new token",
          last.get("status") == "resumed" and last.get("attempts") == 2
          and last.get("phase") == "charge" and last.get("token") not in (None, token1)
          and datetime.datetime.fromisoformat(last["at"]) >= expires, last)
    check("1: worker 2 ran only email", [e["phase"] for e in events(ev2, "call")] == ["email"])
    fin = events(ev2, "finished")
    response = fin[0]["response"] if fin else None
    charge1 = events(ev1, "call")[1]["result"]["charge"]
    check("1: the response carries worker 1's results through the recovery point",
          response and response["charge"] == charge1
          and response["reservation"] == events(ev1, "call")[0]["result"]["reservation"],
          response)
    check("1: the service executed each phase exactly once",
          service_log(url, key) == (PHASES, []), service_log(url, key))
    check("1: order_steps has one row per phase",
          steps(conn, key) == [("reserve", 1), ("charge", 1), ("email", 2)], steps(conn, key))
    check("1: idem_lookup shows the key completed with the response",
          lookup(conn, key) == ("completed", 201, response), lookup(conn, key))

    rc, ev3 = run_worker(url, key)
    check("1: a third run replays the stored response",
          rc == 0 and ev3 == [{"event": "replay", "code": 201, "response": response}], ev3)
    check("1: ... and calls nothing, writes nothing",
          service_log(url, key) == (PHASES, []) and len(steps(conn, key)) == 3)
    rc, ev4 = run_worker(url, key, request={**REQUEST, "amount": 1})
    check("1: the same key with another request is refused (mismatch)",
          rc == 5 and [e["event"] for e in ev4] == ["mismatch"], (rc, ev4))

    check("1: worker 1's old token is refused by idem_checkpoint (55000)",
          sqlstate_of(conn, "SELECT idem_checkpoint(%s, %s, 'email', scope => %s)",
                      (key, token1, SCOPE)) == "55000")
    check("1: ... and by idem_finish (55000)",
          sqlstate_of(conn, "SELECT idem_finish(%s, 200, scope => %s, token => %s)",
                      (key, SCOPE, token1)) == "55000")
    check("1: nothing changed", lookup(conn, key) == ("completed", 201, response))


def order_2(conn, url):
    """Crash between the external call and its checkpoint: the service deduplicates."""
    key = f"order-2-{RUN}"
    rc, ev1 = run_worker(url, key, "--crash-before-checkpoint", "charge")
    check("2: worker 1 was killed after calling charge, before its checkpoint",
          rc == -signal.SIGKILL
          and [e["phase"] for e in events(ev1, "call")] == ["reserve", "charge"]
          and [e["phase"] for e in events(ev1, "checkpoint")] == ["reserve"], (rc, ev1))
    check("2: recovery point is still 'reserve'",
          lookup(conn, key)[0] == "in_progress" and recovery_point(conn, key)[0] == "reserve")
    check("2: the charge was executed, but nothing of it is in order_steps",
          service_log(url, key) == (["reserve", "charge"], [])
          and steps(conn, key) == [("reserve", 1)])

    rc, ev2 = run_worker(url, key)
    last = events(ev2, "lease")[-1]
    check("2: worker 2 resumed at reserve (attempt 2) and finished",
          rc == 0 and last["status"] == "resumed" and last["phase"] == "reserve"
          and last["attempts"] == 2, (rc, last))
    calls = events(ev2, "call")
    charge1 = events(ev1, "call")[1]["result"]
    check("2: its charge call was answered from the service's record, the same charge",
          [(c["phase"], c["replayed"]) for c in calls] == [("charge", True), ("email", False)]
          and calls[0]["result"] == charge1, calls)
    check("2: the service executed each phase exactly once (charge replayed once)",
          service_log(url, key) == (PHASES, ["charge"]), service_log(url, key))
    check("2: order_steps has one row per phase",
          steps(conn, key) == [("reserve", 1), ("charge", 2), ("email", 2)], steps(conn, key))
    response = events(ev2, "finished")[0]["response"]
    check("2: the stored response names the one charge",
          response["charge"] == charge1["charge"]
          and lookup(conn, key) == ("completed", 201, response))


def order_3(conn, url):
    """A worker that stalls past its lease is fenced off when it wakes."""
    key = f"order-3-{RUN}"
    is_stall = lambda line: json.loads(line)["event"] == "stalled"
    a = worker(url, key, "--stall-after", "reserve", stdin=subprocess.PIPE)
    check("3: worker A stalls after its reserve checkpoint", a.wait_for(is_stall), a.all)
    b = worker(url, key, "--stall-after", "charge", stdin=subprocess.PIPE)
    check("3: worker B takes over, charges, and stalls holding a live lease",
          b.wait_for(is_stall), b.all)
    b_lease = [json.loads(line) for line in b.all if json.loads(line)["event"] == "lease"][-1]
    check("3: B resumed at reserve, attempt 2",
          b_lease["status"] == "resumed" and b_lease["phase"] == "reserve"
          and b_lease["attempts"] == 2, b_lease)

    a.p.stdin.write("go\n")
    a.p.stdin.close()
    rc, lines = a.finish()
    ev_a = [json.loads(line) for line in lines]
    fenced = events(ev_a, "fenced")
    check("3: woken A repeats charge (deduplicated by the service) and is fenced off",
          rc == 3 and [(e["phase"], e["replayed"]) for e in events(ev_a, "call")]
          == [("reserve", False), ("charge", True)]
          and fenced and fenced[0]["phase"] == "charge"
          and "another token" in fenced[0]["error"], (rc, ev_a[-3:]))
    print(f"   A was refused: {fenced[0]['error'] if fenced else None}")
    check("3: A's charge row rolled back with its refused checkpoint",
          steps(conn, key) == [("reserve", 1), ("charge", 2)], steps(conn, key))

    b.p.stdin.write("go\n")
    b.p.stdin.close()
    rc, lines = b.finish()
    ev_b = [json.loads(line) for line in lines]
    check("3: B finishes", rc == 0 and events(ev_b, "finished"), ev_b[-1:])
    check("3: the service executed each phase exactly once (charge replayed once)",
          service_log(url, key) == (PHASES, ["charge"]), service_log(url, key))
    check("3: order_steps has one row per phase",
          steps(conn, key) == [("reserve", 1), ("charge", 2), ("email", 2)], steps(conn, key))
    check("3: the key is completed", lookup(conn, key)[:2] == ("completed", 201))


def main():
    with psycopg.connect(**CONNECT) as conn:
        conn.execute("DROP TABLE IF EXISTS order_steps")
        conn.execute(
            "CREATE TABLE order_steps (id bigserial PRIMARY KEY, order_key text NOT NULL,"
            " phase text NOT NULL, attempt int NOT NULL, result jsonb NOT NULL,"
            " at timestamptz NOT NULL DEFAULT now())"
        )  # deliberately no UNIQUE (order_key, phase): a duplicate must show up as a row

        service = Proc([sys.executable, "-B", "service.py"])
        try:
            line = service.next_line() or ""
            check("the service started", line.startswith("listening "), line)
            url = line.split()[-1]
            for scenario in (order_1, order_2, order_3):
                if time.monotonic() < DEADLINE:
                    scenario(conn, url)
            check("finished before the deadline", time.monotonic() < DEADLINE)
        finally:
            for proc in Proc.running:  # the service, and any worker left behind by a failure
                if proc.p.poll() is None:
                    proc.p.kill()
                    proc.p.wait()

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
