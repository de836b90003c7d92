"""Process one order in three phases that call an external service, resumably.

An order is (key, request).  Its work spans several transactions, because each
phase calls a service outside the database (reserve stock, charge the card,
email the receipt) and a transaction must not stay open across network calls.
idem_lease() records the key as in progress, committed, under a lease; after
each external call ONE transaction writes the phase's business row and its
recovery point (idem_checkpoint, which also renews the lease); the last phase's
transaction writes its row and the response (idem_finish).

  * idem_lease 'started': a new order; run every phase.
  * 'resumed': an earlier worker's lease ran out before it finished (it died, or
    stalled): take over with a new token and run the phases after the recovery
    point it committed, with the state it recorded.
  * 'in_progress': another worker holds a live lease; poll until it finishes
    (then 'replay') or its lease runs out (then 'resumed'), up to a deadline.
  * 'replay': done before; print the stored response.
  * 'mismatch': the key was used for another request; refuse.

Every call to the service carries "Idempotency-Key: <order key>:<phase>", so a
phase that is repeated (a worker died after the call but before its checkpoint
committed, or a stalled worker wakes up after another took over) gets the
stored answer instead of doing it twice.  A stale token (SQLSTATE 55000) means
another worker took the key over: the phase's transaction rolled back, stop.

    python3 worker.py --service URL [--lease SECONDS] [--wait SECONDS]
                      [--crash-after PHASE | --crash-before-checkpoint PHASE |
                       --stall-after PHASE] KEY REQUEST_JSON

It prints one JSON object per line for each event (the test reads them), and
exits 0 when the order is finished or replayed, 3 when fenced off by a stale
token, 4 when another worker still held the lease at the deadline, 5 on a
mismatch.  The database comes from the PG* environment variables.
"""

import argparse
import datetime
import json
import os
import signal
import sys
import time
import urllib.request

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

SCOPE = "orders"
PHASES = ("reserve", "charge", "email")
EXIT_FENCED, EXIT_BUSY, EXIT_MISMATCH = 3, 4, 5
CONNECT = dict(autocommit=True, options="-c statement_timeout=10s -c lock_timeout=10s")


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


def call_service(service, key, phase, body):
    """POST one phase; return (response, replayed)."""
    req = urllib.request.Request(
        f"{service}/{phase}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": f"{key}:{phase}"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r), r.headers.get("Idempotent-Replayed") == "true"


def phase_body(phase, request, state):
    """What each phase sends; later phases use what earlier ones returned (state)."""
    if phase == "reserve":
        return {"sku": request["sku"], "qty": request["qty"]}
    if phase == "charge":
        return {"card": request["card"], "amount": request["amount"],
                "reservation": state["reserve"]["reservation"]}
    return {"to": request["email"], "charge": state["charge"]["charge"]}


def final_response(key, state):
    return {"order": key, "status": "confirmed",
            "reservation": state["reserve"]["reservation"],
            "charge": state["charge"]["charge"],
            "receipt": state["email"]["message"]}


def no_fault(point, phase):
    pass


def lease(conn, key, request, lease_for, wait):
    """idem_lease, polling while another worker holds a live lease.  Returns the row (a dict)."""
    deadline = time.monotonic() + wait
    while True:
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "SELECT l.*, now() AS at FROM idem_lease(%s, %s, scope => %s, lease => %s) l",
                (key, Jsonb(request), SCOPE, lease_for),
            ).fetchone()
        if row["status"] != "in_progress" or time.monotonic() >= deadline:
            return row
        emit("lease", status="in_progress", at=row["at"])
        time.sleep(0.2)  # poll: the holder finishes, or its lease runs out


def process(conn, service, key, request, lease_seconds=2.0, wait=20.0, fault=no_fault):
    """Run the order to its end (or resume it).  Returns the exit code.

    conn must be in autocommit mode, so that conn.transaction() is the whole
    transaction.  fault(point, phase) is a hook for tests, called with point
    'called' after a phase's external call and 'checkpointed' after its
    transaction committed.
    """
    row = lease(conn, key, request, datetime.timedelta(seconds=lease_seconds), wait)
    status = row["status"]
    if status == "in_progress":
        emit("busy", detail="another worker still holds the lease")
        return EXIT_BUSY
    if status == "mismatch":
        emit("mismatch", detail="the key was used for another request")
        return EXIT_MISMATCH
    if status == "replay":
        emit("replay", code=row["response_code"], response=row["response_body"])
        return 0

    token, attempt = row["token"], row["attempts"]
    emit("lease", status=status, token=str(token), attempts=attempt,
         phase=row["phase"], state=row["state"], at=row["at"])
    state = dict(row["state"] or {})
    todo = PHASES[PHASES.index(row["phase"]) + 1:] if row["phase"] else PHASES

    for phase in todo:
        result, replayed = call_service(service, key, phase, phase_body(phase, request, state))
        emit("call", phase=phase, result=result, replayed=replayed)
        fault("called", phase)
        state[phase] = result
        try:
            # the phase's business write and its recovery point: both or neither
            with conn.transaction():
                conn.execute(
                    "INSERT INTO order_steps (order_key, phase, attempt, result)"
                    " VALUES (%s, %s, %s, %s)",
                    (key, phase, attempt, Jsonb(result)),
                )
                if phase != PHASES[-1]:
                    until = conn.execute(
                        "SELECT idem_checkpoint(%s, %s, %s, %s, scope => %s)",
                        (key, token, phase, Jsonb(state), SCOPE),
                    ).fetchone()[0]
                else:
                    response = final_response(key, state)
                    conn.execute(
                        "SELECT idem_finish(%s, 201, %s, scope => %s, token => %s)",
                        (key, Jsonb(response), SCOPE, token),
                    )
        except psycopg.errors.ObjectNotInPrerequisiteState as e:  # SQLSTATE 55000
            # another worker took the key over (our lease ran out) or finished
            # it; our phase write rolled back with the refused call
            emit("fenced", phase=phase, error=e.diag.message_primary)
            return EXIT_FENCED
        if phase != PHASES[-1]:
            emit("checkpoint", phase=phase, lease_until=until)
            fault("checkpointed", phase)
    emit("finished", code=201, response=response)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("key")
    p.add_argument("request", type=json.loads, help="the order as JSON")
    p.add_argument("--service", required=True, help="base URL of the external service")
    p.add_argument("--lease", type=float, default=2.0, help="lease in seconds (default 2)")
    p.add_argument("--wait", type=float, default=20.0,
                   help="how long to poll while another worker holds the lease (default 20)")
    faults = p.add_mutually_exclusive_group()
    faults.add_argument("--crash-after", choices=PHASES,
                        help="SIGKILL ourselves right after this phase's checkpoint commits")
    faults.add_argument("--crash-before-checkpoint", choices=PHASES,
                        help="SIGKILL ourselves after this phase's external call, before its checkpoint")
    faults.add_argument("--stall-after", choices=PHASES,
                        help="after this phase's checkpoint, stop until a line arrives on stdin")
    args = p.parse_args(argv)

    def fault(point, phase):
        if (point, phase) in (("checkpointed", args.crash_after),
                              ("called", args.crash_before_checkpoint)):
            emit("crash", after=point, phase=phase)
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no rollback, no goodbye
        if (point, phase) == ("checkpointed", args.stall_after):
            emit("stalled", phase=phase)
            sys.stdin.readline()  # a GC pause, a slow network, a suspended VM ...
            emit("woke", phase=phase)

    with psycopg.connect(**CONNECT) as conn:
        return process(conn, args.service, args.key, args.request,
                       lease_seconds=args.lease, wait=args.wait, fault=fault)


if __name__ == "__main__":
    sys.exit(main())
